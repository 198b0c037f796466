/* SPDX-License-Identifier: MIT */
/*
 * Description: non-blocking calls and the pollable fd. -EAGAIN on an empty
 * recv and a full send, with CHAN_NONBLOCK, with chan_set_nonblock() and
 * with cfg.nonblock; a send larger than the space returns the space; after
 * -EAGAIN (or chan_poll_arm() returning 0), chan_fd() polls readable when
 * the peer sends (data), receives (space), shuts down or closes, within 5 s;
 * chan_poll_arm() returns the events already ready; and once a wake-up has
 * been consumed, an idle armed fd goes quiet again (an event loop must not
 * spin on an idle channel).
 */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

#include "helpers.h"
#include "t_chan.h"

#define RING 4096u
#define SEED 0x0b10c

static uint8_t buf[4 * RING];
static int soft_failures;

#define SOFT_FAIL(...)                                 \
	do {                                           \
		fprintf(stderr, "FAIL: " __VA_ARGS__); \
		fputc('\n', stderr);                   \
		soft_failures++;                       \
	} while (0)

/* Is chan_fd(c) readable within ms? */
static bool fd_readable(struct chan *c, int ms)
{
	struct pollfd pf = { chan_fd(c), POLLIN, 0 };
	int r;

	do
		r = poll(&pf, 1, ms);
	while (r < 0 && errno == EINTR);
	T_ASSERT(r >= 0);
	return r > 0;
}

static void expect_wake(struct chan *c, const char *what)
{
	if (!fd_readable(c, 5000))
		t_fail("%s: chan_fd() not readable within 5 s", what);
}

static ssize_t fill(struct chan *c, unsigned int flags)
{
	ssize_t total = 0, r;

	for (int i = 0; i < 100; i++) {
		t_fill(SEED, 0, buf, sizeof(buf));
		r = t_send(c, buf, sizeof(buf), flags);
		if (r == -EAGAIN)
			return total;
		if (r <= 0)
			t_fail("fill: send: %zd (%s)", r, t_strerror(r));
		total += r;
	}
	t_fail("fill: the ring never filled");
}

/* How the non-blocking mode is asked for. */
enum nbmode { NB_FLAG, NB_SET, NB_CFG, NB_MAX };
static const char *const nb_name[NB_MAX] = { "CHAN_NONBLOCK",
					     "chan_set_nonblock()",
					     "cfg.nonblock" };

/* A pair whose ends are non-blocking per mode; returns the flags to pass. */
static unsigned int nb_pair(struct t_pair *p, enum nbmode m)
{
	t_chan_pair(p, RING, false, 0, CHAN_WAIT_ADAPTIVE);
	if (m == NB_FLAG)
		return CHAN_NONBLOCK;
	if (m == NB_SET) {
		chan_set_nonblock(p->a, true);
		chan_set_nonblock(p->b, true);
		return 0;
	}
	/* cfg.nonblock: open two more ends on the same region. */
	{
		struct chan_cfg ca = { .side = 0,
				       .side_fd = -1,
				       .nonblock = true };
		struct chan_cfg cb = ca;
		int db[2];

		cb.side = 1;
		chan_close(p->a);
		chan_close(p->b);
		T_ASSERT(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0,
				    db) == 0);
		T_ASSERT_OK(chan_open(&ca, p->region, db[0], &p->a));
		T_ASSERT_OK(chan_open(&cb, p->region, db[1], &p->b));
	}
	return 0;
}

static void case_eagain(enum nbmode m)
{
	unsigned int fl;
	struct t_pair p;
	ssize_t r;

	fl = nb_pair(&p, m);
	r = t_recv(p.b, buf, sizeof(buf), fl);
	if (r != -EAGAIN)
		t_fail("%s: recv on an empty ring: %zd (%s)", nb_name[m], r,
		       t_strerror(r));
	/* Partial write: the space, not the request. */
	t_fill(SEED, 0, buf, sizeof(buf));
	r = t_send(p.a, buf, 100, fl);
	T_ASSERT_EQ(r, 100);
	r = t_send(p.a, buf + 100, sizeof(buf) - 100, fl);
	if (r != RING - 100)
		t_fail("%s: send of %zu with %u free: %zd (%s), want the space",
		       nb_name[m], sizeof(buf) - 100, RING - 100, r,
		       t_strerror(r));
	r = t_send(p.a, buf, 1, fl);
	if (r != -EAGAIN)
		t_fail("%s: send on a full ring: %zd (%s)", nb_name[m], r,
		       t_strerror(r));
	r = t_recv(p.b, buf, sizeof(buf), fl);
	T_ASSERT_EQ(r, RING);
	T_ASSERT_EQ(t_verify(SEED, 0, buf, RING), 0);
	if (m == NB_SET) { /* and back to blocking: data there, no wait */
		chan_set_nonblock(p.a, false);
		chan_set_nonblock(p.b, false);
		T_ASSERT_EQ(t_send(p.a, "z", 1, 0), 1);
		T_ASSERT_EQ(t_recv(p.b, buf, 1, 0), 1);
	}
	t_chan_pair_close(&p);
}

/* After -EAGAIN on recv: not readable until the peer sends, then readable. */
static void case_wake_data(void)
{
	struct t_pair p;
	ssize_t r;

	t_chan_pair(&p, RING, false, 0, CHAN_WAIT_ADAPTIVE);
	T_ASSERT_EQ(t_recv(p.b, buf, sizeof(buf), CHAN_NONBLOCK), -EAGAIN);
	if (fd_readable(p.b, 0))
		t_fail("data: chan_fd() readable before the peer did anything");
	T_ASSERT_EQ(t_send(p.a, "abc", 3, CHAN_NONBLOCK), 3);
	expect_wake(p.b, "data after -EAGAIN");
	r = t_recv(p.b, buf, sizeof(buf), CHAN_NONBLOCK);
	T_ASSERT_EQ(r, 3);
	t_chan_pair_close(&p);
}

/* After -EAGAIN on send (ring full): readable when the peer receives. */
static void case_wake_space(void)
{
	struct t_pair p;

	t_chan_pair(&p, RING, false, 0, CHAN_WAIT_ADAPTIVE);
	T_ASSERT_EQ(fill(p.a, CHAN_NONBLOCK), RING);
	if (fd_readable(p.a, 0))
		t_fail("space: chan_fd() readable before the peer did anything");
	T_ASSERT_EQ(t_recv(p.b, buf, 10, CHAN_NONBLOCK), 10);
	expect_wake(p.a, "space after -EAGAIN");
	T_ASSERT_EQ(t_send(p.a, buf, sizeof(buf), CHAN_NONBLOCK), 10);
	t_chan_pair_close(&p);
}

struct later {
	struct chan *c;
	int what; /* 0 send, 1 recv, 2 shutdown, 3 close */
};

static void *later_thread(void *arg)
{
	struct later *l = arg;
	static uint8_t tbuf[64];

	usleep(100000); /* the main thread is in poll() by now */
	if (l->what == 0)
		T_ASSERT_EQ(t_send(l->c, "late", 4, 0), 4);
	else if (l->what == 1)
		T_ASSERT_EQ(t_recv(l->c, tbuf, sizeof(tbuf), 0),
			    (ssize_t)sizeof(tbuf));
	else if (l->what == 2)
		T_ASSERT_EQ(chan_shutdown(l->c, SHUT_WR), 0);
	else
		chan_close(l->c);
	return NULL;
}

/* Armed with chan_poll_arm(), asleep in poll(), the peer acts later. */
static void case_arm_then_peer(int what)
{
	static const char *const names[] = { "send", "recv", "shutdown",
					     "close" };
	struct t_pair p;
	struct later l;
	pthread_t th;
	short ev = what == 1 ? POLLOUT : POLLIN;
	struct chan *me;
	int r;

	t_chan_pair(&p, RING, false, 0, CHAN_WAIT_SLEEP);
	me = what == 1 ? p.a : p.b;
	if (what == 1)
		T_ASSERT_EQ(fill(p.a, CHAN_NONBLOCK), RING);
	r = chan_poll_arm(me, ev);
	if (r != 0)
		t_fail("arm before peer %s: chan_poll_arm(%s) = %d, want 0 (armed)",
		       names[what], ev == POLLIN ? "POLLIN" : "POLLOUT", r);
	l = (struct later){ what == 1 ? p.b : p.a, what };
	T_ASSERT_EQ(pthread_create(&th, NULL, later_thread, &l), 0);
	if (!fd_readable(me, 5000))
		t_fail("armed, peer %s: chan_fd() not readable within 5 s",
		       names[what]);
	T_ASSERT_EQ(pthread_join(th, NULL), 0);
	if (what == 3)
		p.a = NULL;
	r = chan_poll_arm(me, ev);
	if (r != ev && what == 3)
		SOFT_FAIL(
			"after the peer closed (fd readable with POLLHUP): chan_poll_arm(POLLIN) = %d, want %d (ready: end of stream)",
			r, ev);
	else if (r != ev)
		t_fail("after peer %s: chan_poll_arm() = %d, want %d (ready)",
		       names[what], r, ev);
	if (what == 0)
		T_ASSERT_EQ(t_recv(me, buf, sizeof(buf), CHAN_NONBLOCK), 4);
	if (what == 2)
		T_ASSERT_EQ(t_recv(me, buf, sizeof(buf), CHAN_NONBLOCK), 0);
	if (what == 3) {
		ssize_t n = t_recv(me, buf, sizeof(buf), CHAN_NONBLOCK);

		if (n != 0 && n != -ECONNRESET)
			SOFT_FAIL(
				"peer closed: non-blocking recv after the wake-up: %zd (%s), want 0 or -ECONNRESET",
				n, t_strerror(n));
	}
	t_chan_pair_close(&p);
}

/* chan_poll_arm() returns what is ready now, 0 when it armed. */
static void case_poll_arm_ready(void)
{
	struct t_pair p;
	int r;

	t_chan_pair(&p, RING, false, 0, CHAN_WAIT_ADAPTIVE);
	T_ASSERT_EQ(chan_poll_arm(p.b, POLLIN), 0);
	T_ASSERT_EQ(chan_poll_arm(p.b, POLLOUT), POLLOUT); /* empty: space */
	T_ASSERT_EQ(chan_poll_arm(p.b, POLLIN | POLLOUT), POLLOUT);
	T_ASSERT_EQ(t_send(p.a, "x", 1, CHAN_NONBLOCK), 1);
	T_ASSERT_EQ(chan_poll_arm(p.b, POLLIN), POLLIN);
	T_ASSERT_EQ(chan_poll_arm(p.b, POLLIN | POLLOUT), POLLIN | POLLOUT);
	T_ASSERT_EQ(fill(p.a, CHAN_NONBLOCK), RING - 1);
	r = chan_poll_arm(p.a, POLLOUT);
	if (r != 0)
		t_fail("full ring: chan_poll_arm(POLLOUT) = %d, want 0", r);
	T_ASSERT_EQ(chan_poll_arm(p.a, POLLIN), 0);
	T_ASSERT_EQ(t_recv(p.b, buf, 1, CHAN_NONBLOCK), 1);
	T_ASSERT_EQ(chan_poll_arm(p.a, POLLOUT), POLLOUT);
	t_chan_pair_close(&p);
}

/*
 * A non-blocking event loop: wait on chan_fd(), call until -EAGAIN, wait
 * again. After the peer's burst is consumed, the idle loop must sleep in
 * poll(), not find the fd readable for ever.
 */
static void case_idle_goes_quiet(void)
{
	struct t_pair p;
	int spurious = 0;
	ssize_t r;

	t_chan_pair(&p, RING, false, 0, CHAN_WAIT_ADAPTIVE);
	T_ASSERT_EQ(t_recv(p.b, buf, sizeof(buf), CHAN_NONBLOCK), -EAGAIN);
	T_ASSERT_EQ(t_send(p.a, "abc", 3, CHAN_NONBLOCK), 3);
	expect_wake(p.b, "idle loop: first wake");
	r = t_recv(p.b, buf, sizeof(buf), CHAN_NONBLOCK);
	T_ASSERT_EQ(r, 3);
	/* Idle now. A few spurious wake-ups are allowed, not endless ones. */
	for (int i = 0; i < 5; i++) {
		r = t_recv(p.b, buf, sizeof(buf), CHAN_NONBLOCK);
		T_ASSERT_EQ(r, -EAGAIN);
		r = chan_poll_arm(p.b, POLLIN);
		T_ASSERT_EQ(r, 0);
		if (!fd_readable(p.b, 200))
			break;
		spurious++;
	}
	if (spurious >= 5)
		SOFT_FAIL(
			"idle channel: after one wake-up, chan_fd() stays readable for ever (%d polls in a row readable, recv -EAGAIN and chan_poll_arm() = 0 each time): nothing on the non-blocking path drains the doorbell, so an event loop spins",
			spurious);
	/* And the next real event still wakes it. */
	T_ASSERT_EQ(t_send(p.a, "d", 1, CHAN_NONBLOCK), 1);
	expect_wake(p.b, "idle loop: second wake");
	T_ASSERT_EQ(t_recv(p.b, buf, sizeof(buf), CHAN_NONBLOCK), 1);
	t_chan_pair_close(&p);
}

/* Bursts through a small ring, both ends driven only by poll(). */
static void case_poll_loop(void)
{
	uint64_t tx = 0, rx = 0, total = 4 << 20;
	struct t_pair p;

	t_chan_pair(&p, RING, false, 0, CHAN_WAIT_ADAPTIVE);
	for (int iter = 0; rx < total; iter++) {
		struct pollfd pf[2] = { { chan_fd(p.a), POLLIN, 0 },
					{ chan_fd(p.b), POLLIN, 0 } };
		ssize_t r;
		int armed = 0;

		if (iter > 1000000)
			t_fail("poll loop: no end (%llu/%llu)",
			       (unsigned long long)rx,
			       (unsigned long long)total);
		while (tx < total) {
			size_t n = total - tx < sizeof(buf) ? total - tx :
							      sizeof(buf);

			t_fill(SEED, tx, buf, n);
			r = t_send(p.a, buf, n, CHAN_NONBLOCK);
			if (r == -EAGAIN) {
				armed |= 1;
				break;
			}
			T_ASSERT(r > 0);
			tx += (uint64_t)r;
		}
		for (;;) {
			r = t_recv(p.b, buf, sizeof(buf), CHAN_NONBLOCK);
			if (r == -EAGAIN) {
				armed |= 2;
				break;
			}
			T_ASSERT(r > 0);
			T_ASSERT_EQ(t_verify(SEED, rx, buf, (size_t)r), 0);
			rx += (uint64_t)r;
		}
		if (rx == total)
			break;
		/* Both sides armed: one of the fds must be readable now. */
		if (armed == 3 && poll(pf, 2, 5000) == 0)
			t_fail("poll loop: both armed, no fd readable within 5 s at %llu",
			       (unsigned long long)rx);
	}
	t_chan_pair_close(&p);
}

int main(void)
{
	t_alarm(50);
	for (int m = 0; m < NB_MAX; m++)
		case_eagain(m);
	case_wake_data();
	case_wake_space();
	case_poll_arm_ready();
	for (int what = 0; what < 4; what++)
		case_arm_then_peer(what);
	case_poll_loop();
	case_idle_goes_quiet();
	if (soft_failures)
		t_fail("%d check(s) failed, see above", soft_failures);
	return T_PASS;
}
