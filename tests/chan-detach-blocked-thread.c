/* SPDX-License-Identifier: MIT */
/*
 * Description: a switch is not held hostage by a blocked call. While
 * another thread of the end is blocked in recv on an empty ring (the peer
 * idle) or in send on a full ring (the peer stalled), chan_detach() of that
 * direction returns within 3 s, and so does chan_attach() while a thread is
 * blocked on the side stream; the blocked call then carries on (a blocked
 * send finishes on the side stream without the peer reading) and every
 * byte arrives once, in order. DESIGN.md: detach works "at any moment ...
 * even with a full ring or a stalled peer", which evacuation relies on.
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>

#include "helpers.h"
#include "t_chan.h"

#define RING 4096u
#define SEED 0xb10c
#define WAIT_MS 3000

static int soft_failures;

struct call {
	struct chan *c;
	int kind; /* 0 recv n bytes, 1 send n bytes, 2 detach, 3 attach */
	enum chan_dir dir;
	uint64_t off; /* stream offset of the first byte */
	size_t n;
	ssize_t ret;
	atomic_int done;
	pthread_t th;
};

static void *call_thread(void *arg)
{
	struct call *k = arg;
	uint8_t *buf = k->n ? malloc(k->n) : NULL;
	size_t got = 0;

	if (k->kind == 0) {
		while (got < k->n) {
			ssize_t r = t_recv(k->c, buf + got, k->n - got, 0);

			if (r <= 0)
				t_fail("blocked recv at %llu: %zd (%s)",
				       (unsigned long long)(k->off + got), r,
				       t_strerror(r));
			got += (size_t)r;
		}
		if (t_verify(SEED, k->off, buf, k->n))
			t_fail("blocked recv: wrong bytes");
		k->ret = (ssize_t)got;
	} else if (k->kind == 1) {
		t_fill(SEED, k->off, buf, k->n);
		k->ret = t_send(k->c, buf, k->n, 0);
	} else {
		k->ret = k->kind == 2 ? chan_detach(k->c, k->dir) :
					chan_attach(k->c, k->dir);
	}
	free(buf);
	atomic_store(&k->done, 1);
	return NULL;
}

static void start(struct call *k)
{
	atomic_store(&k->done, 0);
	T_ASSERT_EQ(pthread_create(&k->th, NULL, call_thread, k), 0);
}

static bool finished_within(struct call *k, int ms)
{
	for (int i = 0; i < ms && !atomic_load(&k->done); i++)
		usleep(1000);
	return atomic_load(&k->done);
}

static void join(struct call *k, const char *what)
{
	if (!finished_within(k, 20000))
		t_fail("%s: still blocked after 20 s", what);
	T_ASSERT_EQ(pthread_join(k->th, NULL), 0);
}

/* Send n bytes (blocking) from this thread and count them. */
static void send_now(struct chan *c, uint64_t *off, size_t n)
{
	uint8_t *buf = malloc(n);
	ssize_t r;

	T_ASSERT(buf);
	t_fill(SEED, *off, buf, n);
	r = t_send(c, buf, n, 0);
	if (r != (ssize_t)n)
		t_fail("send of %zu at %llu: %zd (%s)", n,
		       (unsigned long long)*off, r, t_strerror(r));
	*off += n;
	free(buf);
}

static void recv_now(struct chan *c, uint64_t *off, size_t n)
{
	uint8_t *buf = malloc(n);
	size_t got = 0;

	T_ASSERT(buf);
	while (got < n) {
		ssize_t r = t_recv(c, buf + got, n - got, 0);

		if (r <= 0)
			t_fail("recv at %llu: %zd (%s)",
			       (unsigned long long)(*off + got), r,
			       t_strerror(r));
		got += (size_t)r;
	}
	if (t_verify(SEED, *off, buf, n))
		t_fail("recv at %llu: wrong bytes", (unsigned long long)*off);
	*off += n;
	free(buf);
}

/* Our switch (detach or attach) from a third thread, within WAIT_MS. */
static bool switch_in_time(struct call *sw, const char *what)
{
	start(sw);
	if (finished_within(sw, WAIT_MS)) {
		if (sw->ret)
			t_fail("%s: %d (%s)", what, (int)sw->ret,
			       t_strerror(sw->ret));
		return true;
	}
	fprintf(stderr, "FAIL: %s did not return within %d ms\n", what,
		WAIT_MS);
	soft_failures++;
	return false;
}

/* Receiver blocked on an empty ring (peer idle): detach RX. */
static void case_recv_blocked_detach(void)
{
	const char *what =
		"chan_detach(RX) while another thread is blocked in recv on an empty ring (peer idle)";
	struct call rx, sw = { .kind = 2, .dir = CHAN_RX };
	uint64_t off = 0, roff = 0;
	struct t_pair p;

	t_chan_pair(&p, RING, true, 0, CHAN_WAIT_ADAPTIVE);
	send_now(p.a, &off, 10); /* the ring is in use */
	recv_now(p.b, &roff, 10);
	rx = (struct call){ .c = p.b, .kind = 0, .off = roff, .n = 3 * RING };
	start(&rx);
	usleep(100000); /* asleep in recv by now */
	sw.c = p.b;
	switch_in_time(&sw, what);
	/* The peer wakes up: everything arrives, detached or not. */
	send_now(p.a, &off, 3 * RING);
	join(&rx, "blocked recv");
	join(&sw, what);
	T_ASSERT_EQ(rx.ret, 3 * RING);
	t_chan_pair_close(&p);
}

/* Sender blocked on a full ring (peer stalled): detach TX. The rest of the
 * send goes on the side stream, so it finishes with the peer still away. */
static void case_send_blocked_detach(void)
{
	const char *what =
		"chan_detach(TX) while another thread is blocked in send on a full ring (peer stalled)";
	struct call tx, sw = { .kind = 2, .dir = CHAN_TX };
	uint64_t off = 0, roff = 0;
	struct t_pair p;

	t_chan_pair(&p, RING, true, 0, CHAN_WAIT_ADAPTIVE);
	send_now(p.a, &off, 10);
	recv_now(p.b, &roff, 10);
	tx = (struct call){ .c = p.a, .kind = 1, .off = off, .n = 4 * RING };
	start(&tx);
	usleep(100000); /* ring full, blocked in send */
	sw.c = p.a;
	if (switch_in_time(&sw, what) && !finished_within(&tx, WAIT_MS)) {
		fprintf(stderr,
			"FAIL: after chan_detach(TX), the blocked send did not finish on the side stream within %d ms (the peer is not reading)\n",
			WAIT_MS);
		soft_failures++;
	}
	recv_now(p.b, &roff, 4 * RING); /* the peer comes back */
	join(&tx, "blocked send");
	join(&sw, what);
	T_ASSERT_EQ(tx.ret, 4 * RING);
	t_chan_pair_close(&p);
}

/* Receiver blocked on the side stream (detached, peer idle): attach RX. */
static void case_recv_blocked_attach(void)
{
	const char *what =
		"chan_attach(RX) while another thread is blocked in recv on the side stream (peer idle)";
	struct call rx, sw = { .kind = 3, .dir = CHAN_RX };
	uint64_t off = 0, roff = 0;
	struct chan_stats st;
	struct t_pair p;

	t_chan_pair(&p, RING, true, 0, CHAN_WAIT_ADAPTIVE);
	T_ASSERT_OK(chan_detach(p.b, CHAN_RX));
	send_now(p.a, &off, 10);
	recv_now(p.b, &roff, 10);
	rx = (struct call){ .c = p.b, .kind = 0, .off = roff, .n = 2 * RING };
	start(&rx);
	usleep(100000);
	sw.c = p.b;
	switch_in_time(&sw, what);
	send_now(p.a, &off, 2 * RING);
	join(&rx, "blocked recv");
	join(&sw, what);
	roff += rx.n;
	/* Attached: the next sends use the ring again. */
	send_now(p.a, &off, 10);
	recv_now(p.b, &roff, 10);
	send_now(p.a, &off, 10);
	chan_stats(p.a, &st);
	if (!st.tx_on_ring)
		t_fail("%s: not back on the ring after attach", what);
	recv_now(p.b, &roff, 10);
	t_chan_pair_close(&p);
}

/* Sender blocked on a full side stream (detached): attach TX. */
static void case_send_blocked_attach(void)
{
	const char *what =
		"chan_attach(TX) while another thread is blocked in send on a full side stream (peer stalled)";
	struct call tx, sw = { .kind = 3, .dir = CHAN_TX };
	uint64_t off = 0, roff = 0;
	size_t n = 8u << 20; /* more than the socket buffers */
	struct t_pair p;

	t_chan_pair(&p, RING, true, 0, CHAN_WAIT_ADAPTIVE);
	T_ASSERT_OK(chan_detach(p.a, CHAN_TX));
	tx = (struct call){ .c = p.a, .kind = 1, .off = off, .n = n };
	start(&tx);
	usleep(100000);
	sw.c = p.a;
	switch_in_time(&sw, what);
	recv_now(p.b, &roff, n);
	join(&tx, "blocked send");
	join(&sw, what);
	T_ASSERT_EQ(tx.ret, (ssize_t)n);
	t_chan_pair_close(&p);
}

int main(void)
{
	t_alarm(55);
	case_recv_blocked_detach();
	case_send_blocked_detach();
	case_recv_blocked_attach();
	case_send_blocked_attach();
	if (soft_failures)
		t_fail("%d check(s) failed, see above", soft_failures);
	return T_PASS;
}
