/* SPDX-License-Identifier: MIT */
/*
 * Description: one end shared by two processes after fork(), like a TCP
 * socket. With end b in a third process (the peer): the parent writes on
 * end a while the child reads from it, then the child writes while the
 * parent reads; both streams stay whole and in order. The child closing
 * its handle (and exiting) ends nothing: the peer keeps sending and
 * receiving. Only when the parent, the last holder, closes does the peer
 * see end of stream (and its sends -EPIPE). Ring-only and with a side
 * stream.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <unistd.h>

#include "helpers.h"
#include "t_chan.h"
#include "t_stream.h"

#define RING (16u * 1024)
#define SEED_AB 0xf0ab
#define SEED_BA 0xf0ba

static uint64_t n; /* bytes per phase and direction */
static uint64_t deadline_ns;
static struct t_pair pair;
static int sync_cp[2], sync_pc[2]; /* child -> parent, parent -> child */

static struct t_pump pump(struct chan *c, const char *name, uint64_t seed,
			  uint64_t from, uint64_t to, uint64_t rng)
{
	return (struct t_pump){ .c = c,
				.name = name,
				.seed = seed,
				.off = from,
				.end = to,
				.rng = rng,
				.max_io = 3 * RING,
				.deadline_ns = deadline_ns };
}

static void token_send(int fd)
{
	T_ASSERT_EQ(write(fd, "t", 1), 1);
}

static void token_wait(int fd, const char *what)
{
	char t;

	if (read(fd, &t, 1) != 1)
		t_fail("waiting for %s: the other process is gone", what);
}

/* The peer: b. Sends S_BA [0, 3n) and reads S_AB [0, 3n), then expects
 * end of stream (nobody shut down: it comes from the last close). */
static void peer(void *arg)
{
	struct t_pump tx = pump(pair.b, "peer send b->a", SEED_BA, 0, 3 * n, 1);
	struct t_pump rx = pump(pair.b, "peer recv a->b", SEED_AB, 0, 3 * n, 2);
	static uint8_t buf[4 * RING];
	pthread_t th;
	ssize_t r = 0;
	int i;

	(void)arg;
	t_alarm(55);
	chan_close(pair.a);
	pair.a = NULL;
	if (pair.side[0] >= 0)
		close(pair.side[0]);
	T_ASSERT_EQ(pthread_create(&th, NULL, t_pump_send_thread, &tx), 0);
	t_pump_recv(&rx);
	T_ASSERT_EQ(pthread_join(th, NULL), 0);
	r = t_recv(pair.b, buf, sizeof(buf), 0);
	if (r != 0)
		t_fail("peer: after the last holder closed: recv %zd (%s), want 0",
		       r, t_strerror(r));
	/* Sending to a closed end: -EPIPE, possibly after a partial send. */
	for (i = 0; i < 8; i++) {
		r = t_send(pair.b, buf, sizeof(buf), 0);
		if (r < 0)
			break;
	}
	if (r != -EPIPE)
		t_fail("peer: send %d after the last holder closed: %zd (%s), want -EPIPE",
		       i, r, t_strerror(r));
	chan_close(pair.b);
}

/* The sharing child: reads S_BA [0, n) while the parent writes S_AB
 * [0, n); then writes S_AB [n, 2n) while the parent reads S_BA [n, 2n). */
static void sharer(void *arg)
{
	struct t_pump rx = pump(pair.a, "child recv b->a", SEED_BA, 0, n, 3);
	struct t_pump tx =
		pump(pair.a, "child send a->b", SEED_AB, n, 2 * n, 4);

	(void)arg;
	t_alarm(55);
	close(sync_cp[0]);
	close(sync_pc[1]);
	t_pump_recv(&rx);
	token_send(sync_cp[1]); /* phase 1 read done */
	token_wait(sync_pc[0], "parent's phase 1 writes");
	t_pump_send(&tx);
	token_send(sync_cp[1]); /* phase 2 written */
	chan_close(pair.a); /* one holder less */
	if (pair.side[0] >= 0)
		close(pair.side[0]);
}

static void run(bool with_side)
{
	struct t_pump tx1 =
		pump(NULL, "parent send a->b (phase 1)", SEED_AB, 0, n, 5);
	struct t_pump rx2 =
		pump(NULL, "parent recv b->a (phase 2)", SEED_BA, n, 2 * n, 6);
	struct t_pump tx3 = pump(NULL, "parent send a->b (phase 3)", SEED_AB,
				 2 * n, 3 * n, 7);
	struct t_pump rx3 = pump(NULL, "parent recv b->a (phase 3)", SEED_BA,
				 2 * n, 3 * n, 8);
	pid_t peer_pid, child_pid;
	pthread_t th;

	t_chan_pair(&pair, RING, with_side, 0, CHAN_WAIT_ADAPTIVE);
	tx1.c = rx2.c = tx3.c = rx3.c = pair.a;
	peer_pid = t_fork(peer, NULL);
	chan_close(pair.b);
	pair.b = NULL;
	if (pair.side[1] >= 0) {
		close(pair.side[1]);
		pair.side[1] = -1;
	}
	T_ASSERT_EQ(pipe(sync_cp), 0);
	T_ASSERT_EQ(pipe(sync_pc), 0);
	child_pid = t_fork(sharer, NULL);
	close(sync_cp[1]);
	close(sync_pc[0]);

	/* Phase 1: we write on a, the child reads from a. */
	t_pump_send(&tx1);
	token_wait(sync_cp[0], "child's phase 1 reads");
	token_send(sync_pc[1]);
	/* Phase 2: the child writes on a, we read from a. */
	t_pump_recv(&rx2);
	token_wait(sync_cp[0], "child's phase 2 writes");
	if (t_wait(child_pid, 20000) != 0)
		t_fail("sharing child failed");
	/* Phase 3: the child is gone; the peer must not have noticed. */
	T_ASSERT_EQ(pthread_create(&th, NULL, t_pump_send_thread, &tx3), 0);
	t_pump_recv(&rx3);
	T_ASSERT_EQ(pthread_join(th, NULL), 0);
	/* Phase 4: the last holder closes, without a shutdown. */
	chan_close(pair.a);
	pair.a = NULL;
	if (pair.side[0] >= 0) {
		close(pair.side[0]);
		pair.side[0] = -1;
	}
	if (t_wait(peer_pid, 20000) != 0)
		t_fail("peer failed (%s)",
		       with_side ? "with side stream" : "ring-only");
	close(sync_cp[0]);
	close(sync_pc[1]);
	t_chan_pair_close(&pair);
	printf("%s: 3 x %llu bytes each way, shared end ok\n",
	       with_side ? "with side stream" : "ring-only",
	       (unsigned long long)n);
}

int main(void)
{
	t_alarm(58);
	n = t_long() ? 256ull << 20 : 16ull << 20;
	deadline_ns = t_now_ns() + 50ull * 1000000000ull;
	run(false);
	run(true);
	return T_PASS;
}
