/* SPDX-License-Identifier: MIT */
/*
 * Description: two waiters on one end (a reader thread and a writer thread,
 * both blocking on 4 KiB rings) while the peer alternates between sending
 * and receiving, so each waiter keeps sleeping while the other is the
 * poller: no wake-up is lost (no deadlock under t_alarm, and no waiter is
 * left to the follower's re-check timer: blocking calls that stall for
 * 150 ms or more are counted and must stay rare) and both streams arrive
 * whole, in order. Guards the poller/follower scheme of src/chan/wake.c.
 * The same with one of the two non-blocking, waiting in poll() on
 * chan_fd() after -EAGAIN, while the other blocks, is a documented
 * limitation (ivmc_fd(3), BUGS: the blocking thread's poller drains the
 * doorbell that poll() waits on); those modes run only under IVMC_LONG, as
 * a reminder, and are expected to fail there until it is lifted.
 */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>

#include "helpers.h"
#include "t_chan.h"

#define RING 4096u
#define SEED_AB 0x3ab
#define SEED_BA 0x3ba
#define STALL_NS 150000000ull

static uint64_t total, deadline_ns;
static atomic_int stalls_now; /* both waiters, for an early verdict */

struct waiter {
	struct chan *c;
	bool tx, nb; /* nb: non-blocking calls, poll() on chan_fd() */
	uint64_t rng, off, calls, stalls, worst_ns;
};

static void check_deadline(const char *who, uint64_t off)
{
	if (t_now_ns() > deadline_ns)
		t_fail("%s: deadline passed at offset %llu of %llu", who,
		       (unsigned long long)off, (unsigned long long)total);
}

/*
 * One non-blocking call, waiting in poll() on chan_fd() after each -EAGAIN
 * until it moves some bytes (and verifying what it received). After 5 s
 * without a wake, the call is tried once more: if it then moves bytes at
 * once, they were there all along and the wake-up was lost.
 */
static ssize_t nb_call(struct waiter *w, uint8_t *buf, size_t n,
		       const char *who)
{
	for (int i = 0; i < 100000; i++) {
		struct pollfd pf = { chan_fd(w->c), POLLIN, 0 };
		ssize_t r;
		int pr;

		if (w->tx) {
			t_fill(SEED_AB, w->off, buf, n);
			r = t_send(w->c, buf, n, CHAN_NONBLOCK);
		} else {
			r = t_recv(w->c, buf, n, CHAN_NONBLOCK);
		}
		if (r > 0) {
			if (!w->tx && t_verify(SEED_BA, w->off, buf, (size_t)r))
				t_fail("%s: wrong bytes at %llu", who,
				       (unsigned long long)w->off);
			return r;
		}
		if (r != -EAGAIN)
			t_fail("%s: non-blocking %s at %llu: %zd (%s)", who,
			       w->tx ? "send" : "recv",
			       (unsigned long long)w->off, r, t_strerror(r));
		do
			pr = poll(&pf, 1, 5000);
		while (pr < 0 && errno == EINTR);
		if (pr == 0) {
			w->stalls++;
			/* One more try tells a lost wake-up from an idle peer. */
			if (w->tx)
				r = t_send(w->c, buf, n, CHAN_NONBLOCK);
			else
				r = t_recv(w->c, buf, n, CHAN_NONBLOCK);
			if (r > 0)
				t_fail("%s: poll() on chan_fd() saw no wake-up for 5 s after -EAGAIN at offset %llu, yet the %s right after moved %zd bytes at once: the wake-up was lost (the other thread of this end, blocked, drained the doorbell)",
				       who, (unsigned long long)w->off,
				       w->tx ? "send" : "recv", r);
			t_fail("%s: poll() on chan_fd() saw no wake-up for 5 s after -EAGAIN at offset %llu (%s then: %zd)",
			       who, (unsigned long long)w->off,
			       w->tx ? "send" : "recv", r);
		}
		check_deadline(who, w->off);
	}
	t_fail("%s: no progress in 100000 non-blocking calls at %llu", who,
	       (unsigned long long)w->off);
}

/* End a's reader or writer: blocking calls, each timed. */
static void *waiter_thread(void *arg)
{
	struct waiter *w = arg;
	const char *who = w->tx ? "a writer" : "a reader";
	uint8_t *buf = malloc(3 * RING);

	T_ASSERT(buf);
	while (w->off < total) {
		size_t n = 1 + t_rand64(&w->rng) % (3 * RING);
		uint64_t t0 = t_now_ns(), dt;
		ssize_t r;

		if (n > total - w->off)
			n = (size_t)(total - w->off);
		if (w->nb) {
			r = nb_call(w, buf, n, who);
		} else if (w->tx) {
			t_fill(SEED_AB, w->off, buf, n);
			r = t_send(w->c, buf, n, 0);
			if (r != (ssize_t)n)
				t_fail("%s: send of %zu at %llu: %zd (%s)", who,
				       n, (unsigned long long)w->off, r,
				       t_strerror(r));
		} else {
			r = t_recv(w->c, buf, n, 0);
			if (r <= 0)
				t_fail("%s: recv at %llu: %zd (%s)", who,
				       (unsigned long long)w->off, r,
				       t_strerror(r));
			if (t_verify(SEED_BA, w->off, buf, (size_t)r))
				t_fail("%s: wrong bytes at %llu", who,
				       (unsigned long long)w->off);
		}
		dt = t_now_ns() - t0;
		if (dt >= STALL_NS) {
			w->stalls++;
			if (atomic_fetch_add(&stalls_now, 1) >= 20)
				t_fail("%s: 20 blocking calls stalled >= %llu ms (the last at offset %llu): wake-ups are being lost and found only by timers",
				       who, STALL_NS / 1000000,
				       (unsigned long long)w->off);
		}
		if (dt > w->worst_ns)
			w->worst_ns = dt;
		w->off += (uint64_t)r;
		w->calls++;
		check_deadline(who, w->off);
	}
	if (w->tx)
		T_ASSERT_EQ(chan_shutdown(w->c, SHUT_WR), 0);
	else if (t_recv(w->c, buf, 1, 0) != 0)
		t_fail("%s: no end of stream after %llu bytes", who,
		       (unsigned long long)total);
	free(buf);
	return NULL;
}

/* End b, one thread: send a burst, then receive a burst, and so on. */
static uint64_t peer(struct chan *c)
{
	uint8_t *buf = malloc(4 * RING);
	uint64_t rng = 77, tx = 0, rx = 0, rounds = 0;
	bool shut = false;

	T_ASSERT(buf);
	while (rx < total || !shut) {
		size_t n = 1 + t_rand64(&rng) % (3 * RING);
		ssize_t r;

		if (tx < total) {
			if (n > total - tx)
				n = (size_t)(total - tx);
			t_fill(SEED_BA, tx, buf, n);
			r = t_send(c, buf, n, 0);
			if (r != (ssize_t)n)
				t_fail("peer: send of %zu at %llu: %zd (%s)", n,
				       (unsigned long long)tx, r,
				       t_strerror(r));
			tx += n;
		} else if (!shut) {
			T_ASSERT_EQ(chan_shutdown(c, SHUT_WR), 0);
			shut = true;
		}
		n = 1 + t_rand64(&rng) % (3 * RING);
		if (rx < total) {
			if (n > total - rx)
				n = (size_t)(total - rx);
			r = t_recv(c, buf, n, CHAN_WAITALL);
			if (r != (ssize_t)n)
				t_fail("peer: recv of %zu at %llu: %zd (%s)", n,
				       (unsigned long long)rx, r,
				       t_strerror(r));
			if (t_verify(SEED_AB, rx, buf, n))
				t_fail("peer: wrong bytes at %llu",
				       (unsigned long long)rx);
			rx += n;
		}
		rounds++;
		check_deadline("peer", rx);
	}
	if (t_recv(c, buf, 1, 0) != 0)
		t_fail("peer: no end of stream after %llu bytes",
		       (unsigned long long)total);
	free(buf);
	return rounds;
}

static const char *const nb_name[3] = { "both blocking", "writer non-blocking",
					"reader non-blocking" };

static void run(int wait_mode, int nb_which)
{
	struct waiter w[2];
	struct t_pair p;
	pthread_t th[2];
	uint64_t rounds, t0 = t_now_ns(), stalls;

	t_chan_pair(&p, RING, false, 0, wait_mode);
	atomic_store(&stalls_now, 0);
	for (int i = 0; i < 2; i++) {
		w[i] = (struct waiter){ .c = p.a,
					.tx = i == 0,
					.nb = nb_which == i + 1,
					.rng = 10 + (uint64_t)i };
		T_ASSERT_EQ(pthread_create(&th[i], NULL, waiter_thread, &w[i]),
			    0);
	}
	rounds = peer(p.b);
	for (int i = 0; i < 2; i++)
		T_ASSERT_EQ(pthread_join(th[i], NULL), 0);
	stalls = w[0].stalls + w[1].stalls;
	printf("wait mode %d, %s: %llu rounds in %.2f s; writer %llu calls, worst %.1f ms; reader %llu calls, worst %.1f ms; %llu stalls >= %llu ms\n",
	       wait_mode, nb_name[nb_which], (unsigned long long)rounds,
	       (double)(t_now_ns() - t0) / 1e9, (unsigned long long)w[0].calls,
	       (double)w[0].worst_ns / 1e6, (unsigned long long)w[1].calls,
	       (double)w[1].worst_ns / 1e6, (unsigned long long)stalls,
	       STALL_NS / 1000000);
	/* A lost wake-up costs a follower its re-check period (200 ms). */
	if (stalls * 20 > rounds)
		t_fail("wait mode %d: %llu of %llu rounds stalled >= %llu ms: wake-ups are being lost and found only by timers",
		       wait_mode, (unsigned long long)stalls,
		       (unsigned long long)rounds, STALL_NS / 1000000);
	t_chan_pair_close(&p);
}

struct mode {
	int wait_mode, nb_which;
};

/* Each mode in a child of its own, so that one failing leaves the others
 * to run and report. */
static void run_child(void *arg)
{
	const struct mode *m = arg;

	t_alarm(t_long() ? 140 : 9);
	deadline_ns = t_now_ns() + (t_long() ? 120ull : 8ull) * 1000000000ull;
	run(m->wait_mode, m->nb_which);
}

int main(void)
{
	static const struct mode modes[] = {
		{ CHAN_WAIT_SLEEP, 0 },	   { CHAN_WAIT_ADAPTIVE, 0 },
		{ CHAN_WAIT_SLEEP, 1 },	   { CHAN_WAIT_SLEEP, 2 },
		{ CHAN_WAIT_ADAPTIVE, 1 }, { CHAN_WAIT_ADAPTIVE, 2 },
	};
	size_t nmodes = getenv("IVMC_TEST_LIMITS") ?
				sizeof(modes) / sizeof(modes[0]) : 2;
	int failed = 0;

	t_alarm(t_long() ? 850 : 58);
	total = t_long() ? 256ull << 20 : 16ull << 20;
	for (size_t i = 0; i < nmodes; i++) {
		pid_t pid = t_fork(run_child, (void *)&modes[i]);

		if (t_wait(pid, t_long() ? 150000 : 10000) != 0) {
			fprintf(stderr, "FAIL: wait mode %d, %s\n",
				modes[i].wait_mode, nb_name[modes[i].nb_which]);
			failed++;
		}
	}
	if (failed)
		t_fail("%d of %zu modes failed, see above", failed, nmodes);
	return T_PASS;
}
