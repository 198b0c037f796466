/* SPDX-License-Identifier: MIT */
/*
 * Description: channels opened with chan_open_mem() and a bell (a doorbell
 * shared by every channel of the region, as an ivshmem device's interrupt
 * is between two VMs), emulated by two eventfds: each side's interrupt, and
 * a ring that writes the other's. A stream verified byte by byte in the
 * sleep-only mode (every wait is on the bell), an idle wait that sleeps
 * once (no polling), two threads blocked on two channels of one bell each
 * woken for its own ring, a non-blocking reader on chan_fd(), and a
 * shutdown that ends a reader blocked on the bell.
 */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include "chan/chan.h"
#include "chan/shm_layout.h"
#include "transport/transport.h"
#include "helpers.h"
#include "t_chan.h"

#define RING   16384u
#define SLOT   (IVMC_SHM_HDR_SIZE + 2 * RING) /* one region */
#define NCHAN  6
#define FILESZ (NCHAN * SLOT)
#define STREAM (1u << 20)
#define ROUNDS 300
#define SEED   0x5be11

static int fd, irq[2]; /* irq[s]: side s's interrupt */
static uint8_t *mem;
static struct chan_bell *bell;
static int my_side;

/* The peer's "device": one write of its eventfd. */
static int ring_peer(void *arg)
{
	static const uint64_t one = 1;
	int peer = *(int *)arg;

	return write(peer, &one, sizeof(one)) == sizeof(one) ? 0 : -EAGAIN;
}

static void bell_side(int side)
{
	static int peer;

	my_side = side;
	peer = irq[1 - side];
	T_ASSERT_OK(chan_bell_new(irq[side], ring_peer, &peer, &bell));
}

static struct chan *open_at(int idx, int mode, bool nonblock)
{
	struct chan_cfg cfg = { .side = my_side, .side_fd = -1,
				.wait_mode = mode, .nonblock = nonblock,
				.bell = bell };
	uint64_t off = (uint64_t)idx * SLOT;
	struct chan *c;
	int err = chan_open_mem(&cfg, fd, off, FILESZ - off, &c);

	if (err)
		t_fail("chan_open_mem(side %d, chan %d): %s", my_side, idx,
		       t_strerror(err));
	return c;
}

/* ---- a stream, every wait on the bell ---- */

static void reader(void *p)
{
	static uint8_t buf[7000]; /* not a divisor of the ring: wraps */
	struct iovec iov = { buf, sizeof(buf) };
	struct chan_stats st;
	struct chan *c;
	uint64_t got = 0;
	ssize_t r;

	bell_side(1);
	c = open_at(*(int *)p, CHAN_WAIT_SLEEP, false);
	while ((r = chan_recvv(c, &iov, 1, 0)) > 0) {
		if (t_verify(SEED, got, buf, (size_t)r))
			t_fail("reader: bad bytes at %llu",
			       (unsigned long long)got);
		got += (uint64_t)r;
	}
	if (r < 0 || got != STREAM)
		t_fail("reader: %zd after %llu bytes", r,
		       (unsigned long long)got);
	chan_stats(c, &st);
	T_ASSERT(st.wakeups_sent > 0); /* it rang us for room */
	chan_close(c);
}

static void stream(int idx)
{
	struct chan_stats st;
	struct chan *c;
	pid_t pid = t_fork(reader, &idx);

	c = open_at(idx, CHAN_WAIT_SLEEP, false);
	T_ASSERT_EQ(chan_fd(c), irq[0]);
	t_chan_send_stream(c, SEED, STREAM, 0);
	T_ASSERT_OK(chan_shutdown(c, SHUT_WR));
	T_ASSERT_EQ(t_wait(pid, 30000), 0);
	chan_stats(c, &st);
	T_ASSERT(st.wakeups_sent > 0 && st.sleeps > 0);
	chan_close(c);
}

/* ---- idle: one sleep on the bell, not a polling loop ---- */

static void late_sender(void *p)
{
	struct chan *c;
	uint8_t b = 0x5a;
	struct iovec iov = { &b, 1 };

	bell_side(1);
	c = open_at(*(int *)p, CHAN_WAIT_SLEEP, false);
	usleep(300000);
	T_ASSERT_EQ(chan_sendv(c, &iov, 1, 0), 1);
	chan_close(c);
}

static void idle(int idx)
{
	struct chan *c = open_at(idx, CHAN_WAIT_SLEEP, false);
	uint8_t b = 0;
	struct iovec iov = { &b, 1 };
	struct chan_stats st;
	pid_t pid = t_fork(late_sender, &idx);

	T_ASSERT_EQ(chan_recvv(c, &iov, 1, 0), 1);
	T_ASSERT_EQ(b, 0x5a);
	chan_stats(c, &st);
	/* Polling would have slept hundreds of times in 300 ms. */
	if (st.sleeps > 3)
		t_fail("an idle wait slept %llu times: it polls",
		       (unsigned long long)st.sleeps);
	T_ASSERT_EQ(t_wait(pid, 30000), 0);
	chan_close(c);
}

/* ---- two threads, two channels, one bell ---- */

struct echo_arg {
	int idx;
	struct chan *c;
};

/* Echo every byte back until end of stream. */
static void *echo_thread(void *p)
{
	struct echo_arg *a = p;
	uint8_t b;
	struct iovec iov = { &b, 1 };
	ssize_t r;

	while ((r = chan_recvv(a->c, &iov, 1, 0)) == 1)
		if (chan_sendv(a->c, &iov, 1, 0) != 1)
			t_fail("echo %d: send", a->idx);
	if (r)
		t_fail("echo %d: %s", a->idx, t_strerror(r));
	return NULL;
}

static void echoes(void *p)
{
	struct echo_arg a[2] = { { ((int *)p)[0], NULL },
				 { ((int *)p)[1], NULL } };
	pthread_t t[2];

	bell_side(1);
	for (int i = 0; i < 2; i++) {
		a[i].c = open_at(a[i].idx, CHAN_WAIT_SLEEP, false);
		T_ASSERT_EQ(pthread_create(&t[i], NULL, echo_thread, &a[i]), 0);
	}
	for (int i = 0; i < 2; i++) {
		pthread_join(t[i], NULL);
		chan_close(a[i].c);
	}
}

/* Rounds on either channel at random: whichever thread polls the bell, the
 * other one's ring must reach it. */
static void shared(int i0, int i1)
{
	int idx[2] = { i0, i1 };
	struct chan *c[2] = { open_at(i0, CHAN_WAIT_SLEEP, false),
			      open_at(i1, CHAN_WAIT_SLEEP, false) };
	uint64_t rnd = 42;
	pid_t pid = t_fork(echoes, idx);

	for (int n = 0; n < ROUNDS; n++) {
		int k = (int)(t_rand64(&rnd) & 1);
		uint8_t out = (uint8_t)n, in = 0;
		struct iovec o = { &out, 1 }, i = { &in, 1 };

		T_ASSERT_EQ(chan_sendv(c[k], &o, 1, 0), 1);
		T_ASSERT_EQ(chan_recvv(c[k], &i, 1, 0), 1);
		if (in != out)
			t_fail("round %d on channel %d: %u back", n, idx[k], in);
	}
	for (int k = 0; k < 2; k++)
		T_ASSERT_OK(chan_shutdown(c[k], SHUT_WR));
	T_ASSERT_EQ(t_wait(pid, 30000), 0);
	for (int k = 0; k < 2; k++)
		chan_close(c[k]);
}

/* ---- non-blocking, in an event loop on chan_fd() ---- */

static void nb_reader(void *p)
{
	static uint8_t buf[7000];
	struct iovec iov = { buf, sizeof(buf) };
	struct chan *c;
	uint64_t got = 0;
	int polls = 0;

	bell_side(1);
	c = open_at(*(int *)p, CHAN_WAIT_SLEEP, true);
	for (;;) {
		ssize_t r = chan_recvv(c, &iov, 1, 0);
		struct pollfd pf = { chan_fd(c), POLLIN, 0 };

		if (r == -EAGAIN) {
			polls++;
			if (poll(&pf, 1, 10000) != 1)
				t_fail("nb reader: no wake-up in 10 s at %llu",
				       (unsigned long long)got);
			continue;
		}
		if (r < 0)
			t_fail("nb reader: %s", t_strerror(r));
		if (!r)
			break;
		if (t_verify(SEED, got, buf, (size_t)r))
			t_fail("nb reader: bad bytes at %llu",
			       (unsigned long long)got);
		got += (uint64_t)r;
	}
	T_ASSERT_EQ(got, STREAM);
	T_ASSERT(polls > 0);
	chan_close(c);
}

static void nonblocking(int idx)
{
	struct chan *c = open_at(idx, CHAN_WAIT_SLEEP, false);
	pid_t pid = t_fork(nb_reader, &idx);

	t_chan_send_stream(c, SEED, STREAM, 2000); /* let the reader go idle */
	T_ASSERT_OK(chan_shutdown(c, SHUT_WR));
	T_ASSERT_EQ(t_wait(pid, 30000), 0);
	chan_close(c);
}

/* ---- a local shutdown ends a reader asleep on the bell ---- */

static void *blocked_reader(void *p)
{
	uint8_t b;
	struct iovec iov = { &b, 1 };

	return (void *)(intptr_t)chan_recvv(p, &iov, 1, 0);
}

static void shutdown_wakes(int idx)
{
	struct chan *c = open_at(idx, CHAN_WAIT_SLEEP, false);
	pthread_t t;
	void *r;

	T_ASSERT_EQ(pthread_create(&t, NULL, blocked_reader, c), 0);
	usleep(100000); /* asleep on the bell by now (else: no sleep) */
	T_ASSERT_OK(chan_shutdown(c, SHUT_RD));
	pthread_join(t, &r);
	T_ASSERT_EQ((intptr_t)r, 0);
	chan_close(c);
}

int main(void)
{
	t_alarm(60);
	T_ASSERT_OK(xport_memfd_create(FILESZ, &fd));
	T_ASSERT_OK(xport_map(fd, 0, FILESZ, (void **)&mem));
	for (int i = 0; i < NCHAN; i++)
		T_ASSERT_OK(chan_region_init(mem + (uint64_t)i * SLOT, SLOT,
					     RING, false, 0));
	for (int s = 0; s < 2; s++) {
		irq[s] = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
		T_ASSERT(irq[s] >= 0);
	}
	bell_side(0);
	stream(0);
	idle(1);
	shared(2, 3);
	nonblocking(4);
	shutdown_wakes(5);
	chan_bell_free(bell);
	munmap(mem, FILESZ);
	close(fd);
	return T_PASS;
}
