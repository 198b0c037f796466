/* SPDX-License-Identifier: MIT */
/*
 * Description: the threaded twin of ring-random-fork (for TSan): both ends
 * in one process, four threads stream 32 MiB each way at once over 16 KiB
 * rings with random sizes of 1..3 x ring (random vectors, CHAN_MORE,
 * CHAN_WAITALL), in each wait mode, then with rings that grow; every byte
 * is verified in order and each direction ends with chan_shutdown(SHUT_WR)
 * seen as end of stream.
 */
#include <pthread.h>
#include <stdio.h>

#include "helpers.h"
#include "t_chan.h"
#include "t_stream.h"

#define RING (16u * 1024)

static void run(int wait_mode, uint64_t total, uint64_t deadline_ns)
{
	struct t_pump pumps[4];
	struct t_pair p;
	pthread_t th[4];
	uint64_t t0 = t_now_ns();

	t_chan_pair(&p, RING, false, 0, wait_mode);
	/* a->b send, a->b recv, b->a send, b->a recv */
	for (int i = 0; i < 4; i++) {
		bool ab = i < 2, tx = !(i & 1);

		pumps[i] = (struct t_pump){
			.c = (ab == tx) ? p.a : p.b,
			.name = ab ? (tx ? "a->b send" : "a->b recv") :
				     (tx ? "b->a send" : "b->a recv"),
			.seed = ab ? 0xab11 : 0xba22,
			.end = total,
			.rng = 100 + (uint64_t)i,
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
	for (int i = 0; i < 4; i++)
		T_ASSERT_EQ(pthread_join(th[i], NULL), 0);
	printf("wait mode %d: %llu MiB each way in %.2f s\n", wait_mode,
	       (unsigned long long)(total >> 20),
	       (double)(t_now_ns() - t0) / 1e9);
	t_chan_pair_close(&p);
}

int main(void)
{
	uint64_t total = t_long() ? 512ull << 20 : 32ull << 20;
	uint64_t deadline_ns =
		t_now_ns() + (t_long() ? 800ull : 50ull) * 1000000000ull;

	t_alarm(t_long() ? 850 : 55);
	run(CHAN_WAIT_ADAPTIVE, total, deadline_ns);
	run(CHAN_WAIT_SLEEP, total / 2, deadline_ns);
	run(CHAN_WAIT_SPIN, total / 4, deadline_ns);
	t_deep_size = 4 * RING; /* S full: on into L (docs/protocol.md 3.7) */
	run(CHAN_WAIT_ADAPTIVE, total / 2, deadline_ns);
	return T_PASS;
}
