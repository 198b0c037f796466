/* SPDX-License-Identifier: MIT */
/*
 * Description: the threaded twin of chan-switch-random (for TSan): both
 * ends in one process, a sender, a receiver and a controller thread per
 * end; the controllers call chan_detach()/chan_attach() for TX and RX at
 * random moments while 32 MiB go each way; every byte arrives once, in
 * order, and a counting relay in the side stream proves both paths
 * carried data. Twice: with rings of fixed size, then with rings that
 * grow (docs/protocol.md 3.7).
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>

#include "helpers.h"
#include "t_chan.h"
#include "t_stream.h"

#define RING (16u * 1024)


static void run(uint64_t total, uint64_t deadline_ns)
{
	static const char *const names[4] = { "a->b send", "a->b recv",
					      "b->a send", "b->a recv" };
	struct t_pump pumps[4];
	struct t_switcher k[2];
	struct t_relay relay;
	struct t_pair p;
	pthread_t th[4], kt[2];

	t_chan_pair(&p, RING, true, 0, CHAN_WAIT_ADAPTIVE);
	t_relay_insert(&p, &relay);
	t_relay_start(&relay, deadline_ns);
	for (int i = 0; i < 4; i++) {
		bool ab = i < 2, tx = !(i & 1);

		pumps[i] = (struct t_pump){
			.c = (ab == tx) ? p.a : p.b,
			.name = names[i],
			.seed = ab ? 0x7ab : 0x7ba,
			.end = total,
			.rng = 300 + (uint64_t)i,
			.max_io = 3 * RING,
			.deadline_ns = deadline_ns,
			.shut = true,
		};
		T_ASSERT_EQ(pthread_create(&th[i], NULL,
					   tx ? t_pump_send_thread :
						t_pump_recv_thread,
					   &pumps[i]),
			    0);
	}
	for (int i = 0; i < 2; i++) {
		k[i] = (struct t_switcher){ .c = i ? p.b : p.a,
				     .name = i ? "b controller" :
						 "a controller",
				     .rng = 400 + (uint64_t)i,
				     .deadline_ns = deadline_ns,
				     .gap_min_us = 50, .gap_span_us = 1000 };
		T_ASSERT_EQ(pthread_create(&kt[i], NULL, t_switcher_run, &k[i]), 0);
	}
	for (int i = 0; i < 4; i++)
		T_ASSERT_EQ(pthread_join(th[i], NULL), 0);
	for (int i = 0; i < 2; i++) {
		atomic_store(&k[i].stop, 1);
		T_ASSERT_EQ(pthread_join(kt[i], NULL), 0);
		printf("%s: %d detach TX, %d attach TX, %d detach RX, %d attach RX\n",
		       k[i].name, k[i].ops[0], k[i].ops[1], k[i].ops[2],
		       k[i].ops[3]);
	}
	/* Closing pays a SHUT_WR still owed to the side stream (a rewind
	 * might have wanted it): the relay then sees both ends. */
	chan_close(p.a);
	chan_close(p.b);
	p.a = p.b = NULL;
	t_relay_join(&relay);
	printf("side stream carried a->b %llu of %llu bytes, b->a %llu of %llu\n",
	       (unsigned long long)relay.bytes[0], (unsigned long long)total,
	       (unsigned long long)relay.bytes[1], (unsigned long long)total);
	for (int d = 0; d < 2; d++)
		if (!relay.bytes[d] || relay.bytes[d] >= total)
			t_fail("%s: side stream carried %llu of %llu bytes: want both paths used",
			       d ? "b->a" : "a->b",
			       (unsigned long long)relay.bytes[d],
			       (unsigned long long)total);
	t_chan_pair_close(&p);
}

int main(void)
{
	uint64_t total = t_long() ? 512ull << 20 : 32ull << 20;
	uint64_t deadline_ns =
		t_now_ns() + (t_long() ? 800ull : 50ull) * 1000000000ull;

	t_alarm(t_long() ? 850 : 55);
	for (int deep = 0; deep < 2; deep++) {
		t_deep_size = deep ? 4 * RING : 0;
		printf("-- rings %s\n", deep ? "that grow" : "of fixed size");
		run(total, deadline_ns);
	}
	return T_PASS;
}
