/* SPDX-License-Identifier: MIT */
/*
 * Description: two processes stream 256 MiB (IVMC_LONG: 4 GiB) each way at
 * once over a ring-only channel of 16 KiB rings, with random send and
 * receive sizes of 1..3 x ring (random vectors, CHAN_MORE, CHAN_WAITALL);
 * every byte is verified in order, and each direction ends with
 * chan_shutdown(SHUT_WR) seen as end of stream.
 */
#include <pthread.h>
#include <stdio.h>

#include "helpers.h"
#include "t_chan.h"
#include "t_stream.h"

#define RING (16u * 1024)
#define SEED_AB 0xab01
#define SEED_BA 0xba02

static uint64_t total;
static uint64_t deadline_ns;

/* One end: a thread sends, the calling thread receives. */
static void run_end(struct chan *c, const char *name_tx, uint64_t seed_tx,
		    const char *name_rx, uint64_t seed_rx, uint64_t rng)
{
	struct t_pump tx = { .c = c,
			     .name = name_tx,
			     .seed = seed_tx,
			     .end = total,
			     .rng = rng,
			     .max_io = 3 * RING,
			     .deadline_ns = deadline_ns,
			     .shut = true };
	struct t_pump rx = { .c = c,
			     .name = name_rx,
			     .seed = seed_rx,
			     .end = total,
			     .rng = rng ^ 0x5555,
			     .max_io = 3 * RING,
			     .deadline_ns = deadline_ns,
			     .shut = true };
	pthread_t th;

	T_ASSERT_EQ(pthread_create(&th, NULL, t_pump_send_thread, &tx), 0);
	t_pump_recv(&rx);
	T_ASSERT_EQ(pthread_join(th, NULL), 0);
	printf("%s: %llu sends, %s: %llu receives\n", name_tx,
	       (unsigned long long)tx.calls, name_rx,
	       (unsigned long long)rx.calls);
}

static struct t_pair pair;

static void child(void *arg)
{
	(void)arg;
	t_alarm(t_long() ? 850 : 55);
	chan_close(pair.a);
	pair.a = NULL;
	run_end(pair.b, "b->a send", SEED_BA, "a->b recv", SEED_AB, 2);
	chan_close(pair.b);
}

int main(void)
{
	pid_t pid;

	t_alarm(t_long() ? 870 : 58);
	total = t_long() ? 4ull << 30 : 256ull << 20;
	deadline_ns = t_now_ns() + (t_long() ? 800ull : 50ull) * 1000000000ull;
	t_chan_pair(&pair, RING, false, 0, CHAN_WAIT_ADAPTIVE);
	pid = t_fork(child, NULL);
	chan_close(pair.b);
	pair.b = NULL;
	run_end(pair.a, "a->b send", SEED_AB, "b->a recv", SEED_BA, 1);
	T_ASSERT_EQ(t_wait(pid, 20000), 0);
	t_chan_pair_close(&pair);
	return T_PASS;
}
