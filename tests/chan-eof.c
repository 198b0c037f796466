/* SPDX-License-Identifier: MIT */
/*
 * Description: end of stream. After chan_shutdown(SHUT_WR) the reader gets
 * every byte sent, then 0, again and again (blocking or not), and a reader
 * asleep in recv wakes up for it; the writer then gets -EPIPE (send,
 * reserve) while the other direction still works (half close); SHUT_RD
 * makes recv and peek return 0. Ring-only, and with a side stream with the
 * data on the ring, on the side stream, and split across a switch.
 */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "helpers.h"
#include "t_chan.h"

#define RING 4096u
#define SEED 0xe0f

/* Where the bytes before the shutdown travel. */
enum path {
	P_RING, /* ring-only channel */
	P_SIDE_RING, /* side stream channel, attached (ring) */
	P_SIDE_SIDE, /* side stream channel, producer detached first */
	P_SIDE_SPLIT, /* first half on the ring, second half on the side */
	P_SIDE_CONS, /* consumer detached mid-way (it closes the epoch) */
	P_MAX
};

static const char *const path_name[P_MAX] = { "ring-only", "side+ring",
					      "side+side", "side+split",
					      "side+consumer-close" };

static uint8_t buf[4 * RING];
static int soft_failures; /* checks that let the other cases still run */

static void send_all(struct chan *c, uint64_t *off, size_t n, const char *what)
{
	ssize_t r;

	t_fill(SEED, *off, buf, n);
	r = t_send(c, buf, n, 0);
	if (r != (ssize_t)n)
		t_fail("%s: send of %zu at offset %llu: %zd (%s)", what, n,
		       (unsigned long long)*off, r, t_strerror(r));
	*off += n;
}

/* Read until end of stream; every byte must be there, in order. */
static void recv_to_eof(struct chan *c, uint64_t want, unsigned int flags,
			const char *what)
{
	uint64_t off = 0;

	for (int calls = 0;; calls++) {
		ssize_t r = t_recv(c, buf, sizeof(buf), flags);

		if (calls > 100000)
			t_fail("%s: no end of stream after %d calls", what,
			       calls);
		if (r == -EAGAIN && (flags & CHAN_NONBLOCK))
			t_fail("%s: -EAGAIN at offset %llu of %llu after the writer shut down",
			       what, (unsigned long long)off,
			       (unsigned long long)want);
		if (r < 0)
			t_fail("%s: recv at offset %llu: %zd (%s)", what,
			       (unsigned long long)off, r, t_strerror(r));
		if (r == 0)
			break;
		if (off + (uint64_t)r > want ||
		    t_verify(SEED, off, buf, (size_t)r))
			t_fail("%s: bad %zd bytes at offset %llu (want %llu in all)",
			       what, r, (unsigned long long)off,
			       (unsigned long long)want);
		off += (uint64_t)r;
	}
	if (off != want)
		t_fail("%s: end of stream after %llu bytes, %llu were sent",
		       what, (unsigned long long)off, (unsigned long long)want);
	/* End of stream is sticky, for every kind of call. */
	for (int i = 0; i < 3; i++) {
		ssize_t r =
			t_recv(c, buf, sizeof(buf), i == 1 ? CHAN_NONBLOCK : 0);

		if (r != 0)
			t_fail("%s: recv %d after end of stream: %zd (%s), want 0",
			       what, i, r, t_strerror(r));
	}
	if (chan_poll_arm(c, POLLIN) != POLLIN)
		t_fail("%s: chan_poll_arm(POLLIN) after end of stream is not ready",
		       what);
}

static void expect_epipe(struct chan *c, const char *what)
{
	void *p;
	ssize_t r;

	for (int i = 0; i < 2; i++) {
		r = t_send(c, "x", 1, i ? CHAN_NONBLOCK : 0);
		if (r != -EPIPE)
			t_fail("%s: %s send after SHUT_WR: %zd (%s), want -EPIPE",
			       what, i ? "non-blocking" : "blocking", r,
			       t_strerror(r));
	}
	r = chan_reserve(c, &p, CHAN_NONBLOCK);
	if (r != -EPIPE)
		t_fail("%s: reserve after SHUT_WR: %zd (%s), want -EPIPE", what,
		       r, t_strerror(r));
	/* A second shutdown is harmless. */
	T_ASSERT_EQ(chan_shutdown(c, SHUT_WR), 0);
}

/* a sends n bytes by path, shuts down; b reads them then end of stream. */
static void case_shut_wr(enum path path, size_t n, unsigned int rflags)
{
	char what[96];
	struct t_pair p;
	uint64_t off = 0;
	ssize_t r;

	snprintf(what, sizeof(what), "SHUT_WR %s, %zu bytes, %s reader",
		 path_name[path], n, rflags ? "non-blocking" : "blocking");
	t_chan_pair(&p, RING, path != P_RING, 0, CHAN_WAIT_ADAPTIVE);
	if (path == P_SIDE_SIDE)
		T_ASSERT_OK(chan_detach(p.a, CHAN_TX));
	send_all(p.a, &off, n / 2, what);
	if (path == P_SIDE_SPLIT)
		T_ASSERT_OK(chan_detach(p.a, CHAN_TX));
	if (path == P_SIDE_CONS)
		T_ASSERT_OK(chan_detach(p.b, CHAN_RX));
	send_all(p.a, &off, n - n / 2, what);
	T_ASSERT_EQ(chan_shutdown(p.a, SHUT_WR), 0);
	expect_epipe(p.a, what);
	recv_to_eof(p.b, n, rflags, what);

	/* Half close: the other direction still works, then ends too. */
	r = t_send(p.b, "ok", 2, 0);
	T_ASSERT_EQ(r, 2);
	T_ASSERT_EQ(chan_shutdown(p.b, SHUT_WR), 0);
	r = t_recv(p.a, buf, sizeof(buf), 0);
	if (r != 2 || memcmp(buf, "ok", 2))
		t_fail("%s: reverse direction after SHUT_WR: %zd (%s)", what, r,
		       t_strerror(r));
	T_ASSERT_EQ(t_recv(p.a, buf, sizeof(buf), 0), 0);
	t_chan_pair_close(&p);
}

struct late_shut {
	struct chan *c;
	uint64_t n;
};

/* Send n bytes, give the reader time to fall asleep, then shut down. */
static void *late_shut_thread(void *arg)
{
	struct late_shut *ls = arg;
	uint64_t off = 0;
	static uint8_t tbuf[3 * RING];

	while (off < ls->n) {
		size_t k = ls->n - off < sizeof(tbuf) ? ls->n - off :
							sizeof(tbuf);
		ssize_t r;

		t_fill(SEED, off, tbuf, k);
		r = t_send(ls->c, tbuf, k, 0);
		if (r != (ssize_t)k)
			t_fail("late shut: send %zu at %llu: %zd (%s)", k,
			       (unsigned long long)off, r, t_strerror(r));
		off += k;
	}
	usleep(100000);
	T_ASSERT_EQ(chan_shutdown(ls->c, SHUT_WR), 0);
	return NULL;
}

/* The reader is asleep in recv (empty ring) when the shutdown comes. */
static void case_sleeping_reader(bool with_side, int wait_mode)
{
	char what[96];
	struct late_shut ls;
	struct t_pair p;
	pthread_t th;

	snprintf(what, sizeof(what),
		 "SHUT_WR to a sleeping reader (%s, wait mode %d)",
		 with_side ? "side" : "ring-only", wait_mode);
	t_chan_pair(&p, RING, with_side, 0, wait_mode);
	ls = (struct late_shut){ p.a, 1 << 20 };
	T_ASSERT_EQ(pthread_create(&th, NULL, late_shut_thread, &ls), 0);
	recv_to_eof(p.b, ls.n, 0, what);
	T_ASSERT_EQ(pthread_join(th, NULL), 0);
	t_chan_pair_close(&p);
}

/* SHUT_RD: recv and peek return 0 even with bytes waiting. */
static void case_shut_rd(bool with_side, int how)
{
	const void *pp;
	struct t_pair p;
	uint64_t off = 0;
	ssize_t r;

	t_chan_pair(&p, RING, with_side, 0, CHAN_WAIT_ADAPTIVE);
	send_all(p.a, &off, 100, "SHUT_RD");
	T_ASSERT_EQ(chan_shutdown(p.b, how), 0);
	for (int i = 0; i < 3; i++) {
		r = t_recv(p.b, buf, sizeof(buf), i == 1 ? CHAN_NONBLOCK : 0);
		if (r != 0)
			t_fail("%s (%s): recv %d: %zd (%s), want 0",
			       how == SHUT_RD ? "SHUT_RD" : "SHUT_RDWR",
			       with_side ? "side" : "ring-only", i, r,
			       t_strerror(r));
	}
	r = chan_peek(p.b, &pp, CHAN_NONBLOCK);
	if (r != 0) {
		fprintf(stderr,
			"FAIL: %s (%s): chan_peek after shutdown: %zd (%s), want 0 like recv\n",
			how == SHUT_RD ? "SHUT_RD" : "SHUT_RDWR",
			with_side ? "side" : "ring-only", r, t_strerror(r));
		soft_failures++;
	}
	if (how == SHUT_RDWR)
		expect_epipe(p.b, "SHUT_RDWR");
	else /* the write side of b is untouched */
		T_ASSERT_EQ(t_send(p.b, "y", 1, 0), 1);
	t_chan_pair_close(&p);
}

/* The peer rang far more than one drain takes (a burst, or a flood),
 * then went away: a non-blocking receive still reaches the end at once,
 * without an -EAGAIN while the hang-up waits behind the rings (found by
 * fuzz-chan-consumer: 116 rings, then a close). */
static void case_rings_then_gone(bool with_side)
{
	static const char burst[300]; /* ARMS_MAX (8) drains of 64 take 512 */
	struct t_pair p;
	char buf[64];
	ssize_t r;

	t_chan_pair(&p, RING, with_side, 0, CHAN_WAIT_ADAPTIVE);
	T_ASSERT_EQ(t_send(p.b, "0123456789", 10, 0), 10);
	T_ASSERT_EQ(send(chan_fd(p.b), burst, sizeof(burst), MSG_DONTWAIT),
		    (ssize_t)sizeof(burst));
	chan_close(p.b);
	p.b = NULL;
	if (p.side[1] >= 0) {
		close(p.side[1]);
		p.side[1] = -1;
	}
	T_ASSERT_EQ(t_recv(p.a, buf, sizeof(buf), CHAN_NONBLOCK), 10);
	r = t_recv(p.a, buf, sizeof(buf), CHAN_NONBLOCK);
	if (r != 0 && r != -ECONNRESET)
		t_fail("%s: after the peer's rings and close, recv gave %zd",
		       with_side ? "side" : "ring only", r);
	t_chan_pair_close(&p);
}

int main(void)
{
	size_t sizes[] = { 0, 1, RING - 1, RING, 3 * RING + 7 };

	t_alarm(50);
	for (int path = 0; path < P_MAX; path++)
		for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
			/* More than the ring holds needs a reader running. */
			if (sizes[i] > RING && path != P_SIDE_SIDE)
				continue;
			case_shut_wr(path, sizes[i], 0);
			case_shut_wr(path, sizes[i], CHAN_NONBLOCK);
		}
	for (int mode = CHAN_WAIT_ADAPTIVE; mode <= CHAN_WAIT_SLEEP; mode++) {
		case_sleeping_reader(false, mode);
		case_sleeping_reader(true, mode);
	}
	case_shut_rd(false, SHUT_RD);
	case_shut_rd(true, SHUT_RD);
	case_shut_rd(false, SHUT_RDWR);
	case_shut_rd(true, SHUT_RDWR);
	case_rings_then_gone(false);
	case_rings_then_gone(true);
	if (soft_failures)
		t_fail("%d check(s) failed, see above", soft_failures);
	return T_PASS;
}
