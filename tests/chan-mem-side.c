/* SPDX-License-Identifier: MIT */
/*
 * Description: channels in caller memory with a TCP side stream, as the
 * preload would run them between two VMs: regions laid out by
 * chan_region_init(with_side) at page offsets of a memfd, opened with
 * chan_open_mem() on a loopback TCP connection (no doorbell: waiters poll).
 * (a) side bytes before the open (tx_off0/rx_off0), then 64 MiB each way
 * under random detaches, attaches and rewinds, every byte checked, both
 * paths used; (b) waiters blocked on the side stream woken by it (with a
 * 1 s poll cap; the nap alone never looks at the socket); (c) SHUT_WR then
 * end of stream on the ring and on the side stream, a half-close that is
 * not taken for a death, and a rewind whose producer waits in a receive;
 * (d) the peer SIGKILLed under a blocked or non-blocking reader (a
 * verified prefix, then 0 or -ECONNRESET) and writer (-EPIPE); (e)
 * chan_peer_gone() ends blocked calls after what was published is read
 * (ring-only too); (f) refusals. Built a second time as chan-mem-side-bell
 * (T_BELL): every end then has a bell (an eventfd per end, each ringing the
 * other's), as between guests that take the device's interrupt, every
 * wait straight on the bell (IVMC_POLL_BELL_US=0), and (g) checks that a
 * blocked reader, which naps 2 ms first, is rung by its peer.
 */
#include <errno.h>
#include <netinet/in.h>
#include <linux/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
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
#include "t_stream.h"

#define RING	 (64u * 1024)
#define SLOT	 (IVMC_SHM_HDR_SIZE + 2 * (uint64_t)RING)
#define NSLOT	 24
#define FILESZ	 (IVMC_SHM_HDR_SIZE + NSLOT * SLOT) /* 3.1 MiB */
#define TOTAL	 (64ull << 20)
#define PRE	 20000u /* raw side bytes each way before the open */
#define PRE_READ 7000u	/* of them read raw before the open */
#define SEED_AB	 0x3ab
#define SEED_BA	 0x3ba

static int mfd;
static uint8_t *mem;
static int slots;

#include "t_bell.h"

/* A fresh region at a nonzero page offset. */
static uint64_t slot_new(bool side, uint32_t init_ctr)
{
	uint64_t off = IVMC_SHM_HDR_SIZE + (uint64_t)slots++ * SLOT;

	T_ASSERT(slots <= NSLOT);
	T_ASSERT_OK(chan_region_init(mem + off, SLOT, RING, side, init_ctr));
	return off;
}


static int try_open(uint64_t off, int side, int side_fd, unsigned int poll_us,
		    uint64_t tx0, uint64_t rx0, struct chan **c)
{
	struct chan_cfg cfg = { .side = side, .side_fd = side_fd,
				.wait_mode = CHAN_WAIT_ADAPTIVE,
				.poll_max_us = poll_us, .tx_off0 = tx0,
				.rx_off0 = rx0, .bell = BELL(side) };

	return chan_open_mem(&cfg, mfd, off, FILESZ - off, c);
}

static struct chan *open_end(uint64_t off, int side, int side_fd,
			     unsigned int poll_us, uint64_t tx0, uint64_t rx0)
{
	struct chan *c;
	int err = try_open(off, side, side_fd, poll_us, tx0, rx0, &c);

	if (err)
		t_fail("chan_open_mem(side %d at %llu): %s", side,
		       (unsigned long long)off, t_strerror(err));
	return c;
}

/* Both ends opened here (both READY before any send), to be split by a
 * fork: the child keeps b, the parent a (keep()). */
static struct t_pair pr;
static int hs[2]; /* the split's handshake */

static void pair_open(unsigned int poll_us)
{
	uint64_t off = slot_new(true, 0);

	t_loopback_pair(pr.side);
	T_ASSERT(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, hs) == 0);
	pr.a = open_end(off, 0, pr.side[0], poll_us, 0, 0);
	pr.b = open_end(off, 1, pr.side[1], poll_us, 0, 0);
}

/* Close the other process's end and socket, the child first, and neither
 * goes on before both did: the endpoint page is shared across fork, and a
 * chan_close() pays a SHUT_WR its end owes (its owner's, if it came). */
static void keep(bool b)
{
	char x = 'x';

	if (!b)
		T_ASSERT_EQ(read(hs[0], &x, 1), 1);
	chan_close(b ? pr.a : pr.b);
	close(pr.side[b ? 0 : 1]);
	if (b)
		pr.a = NULL;
	else
		pr.b = NULL;
	pr.side[b ? 0 : 1] = -1;
	T_ASSERT_EQ(write(hs[b], &x, 1), 1);
	if (b)
		T_ASSERT_EQ(read(hs[1], &x, 1), 1);
	close(hs[0]);
	close(hs[1]);
}

static void pair_close(void)
{
	for (int i = 0; i < 2; i++) {
		struct chan *c = i ? pr.b : pr.a;

		if (c)
			chan_close(c);
		if (pr.side[i] >= 0)
			close(pr.side[i]);
	}
	memset(&pr, 0, sizeof(pr));
}

/* ---- (a) a stream under random switches ---- */

/* Send PRE bytes raw, read PRE_READ of the peer's raw, as a connection
 * that ran on TCP before its channel came. */
static void pre_phase(int fd, uint64_t seed_tx, uint64_t seed_rx)
{
	static uint8_t buf[PRE];
	uint64_t got = 0;

	t_fill(seed_tx, 0, buf, PRE);
	T_ASSERT_EQ(send(fd, buf, PRE, MSG_NOSIGNAL), PRE);
	while (got < PRE_READ) {
		ssize_t r = recv(fd, buf, PRE_READ - got, 0);

		if (r <= 0 || t_verify(seed_rx, got, buf, (size_t)r))
			t_fail("raw read before the open at %llu: %zd",
			       (unsigned long long)got, r);
		got += (uint64_t)r;
	}
}

static void stream_end(int side, int fd, uint64_t off, uint64_t deadline)
{
	uint64_t stx = side ? SEED_BA : SEED_AB, srx = side ? SEED_AB : SEED_BA;
	struct t_pump tx = { .name = side ? "b send" : "a send", .seed = stx,
			     .off = PRE, .end = TOTAL, .rng = 10 + side,
			     .max_io = 3 * RING, .deadline_ns = deadline,
			     .shut = true };
	struct t_pump rx = { .name = side ? "b recv" : "a recv", .seed = srx,
			     .off = PRE_READ, .end = TOTAL, .rng = 20 + side,
			     .max_io = 3 * RING, .deadline_ns = deadline,
			     .shut = true };
	struct t_switcher k = { .name = side ? "b switch" : "a switch",
				.rng = 30 + side, .deadline_ns = deadline,
				.gap_min_us = 50, .gap_span_us = 500 };
	struct chan_stats st;
	pthread_t th_tx, th_k;

	pre_phase(fd, stx, srx);
	tx.c = rx.c = k.c = open_end(off, side, fd, 200, PRE, PRE_READ);
	chan_stats(tx.c, &st);
	T_ASSERT(st.tx_offset == PRE && st.rx_offset == PRE_READ);
	T_ASSERT_EQ(pthread_create(&th_tx, NULL, t_pump_send_thread, &tx), 0);
	T_ASSERT_EQ(pthread_create(&th_k, NULL, t_switcher_run, &k), 0);
	t_pump_recv(&rx);
	T_ASSERT_EQ(pthread_join(th_tx, NULL), 0);
	atomic_store(&k.stop, 1);
	T_ASSERT_EQ(pthread_join(th_k, NULL), 0);
	printf("%s: %d detach TX, %d attach TX, %d detach RX (%d rewinds), %d attach RX\n",
	       k.name, k.ops[0], k.ops[1], k.ops[2], k.rewinds, k.ops[3]);
	if (!k.ops[0] || !k.ops[2])
		t_fail("%s: never detached both ways", k.name);
	/* Close as ivmc_close() closes a TCP handle: the peer's switcher may
	 * still rewind, and only a producer that left the ring first (or
	 * settles what it gave back) keeps the bytes and the FIN in order;
	 * chan_close() alone pays an owed SHUT_WR at once. */
	(void)chan_detach(tx.c, CHAN_TX);
	T_ASSERT_OK(chan_settle(tx.c));
	chan_close(tx.c);
}

struct stream_arg {
	int fd[2];
	uint64_t off, deadline;
};

static void stream_child(void *p)
{
	const struct stream_arg *a = p;

	t_alarm(50);
	close(a->fd[0]);
	stream_end(1, a->fd[1], a->off, a->deadline);
}

/* Stream bytes the side stream carried each way at fd (TCP_INFO: [0]
 * sent and acknowledged, [1] received); false if the kernel does not say. */
static bool side_bytes(int fd, uint64_t n[2])
{
	struct tcp_info ti;
	socklen_t len = sizeof(ti);

	memset(&ti, 0, sizeof(ti));
	if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) ||
	    len < offsetof(struct tcp_info, tcpi_bytes_received) + 8)
		return false;
	n[0] = ti.tcpi_bytes_acked;
	n[1] = ti.tcpi_bytes_received;
	return true;
}

/* Both paths carried data each way: the ring's producer words (the bytes
 * its epochs kept, a free-running count from the start value; what a
 * rewind gave back is not in it) and the socket's counters, which add up
 * to the whole stream (TCP_INFO counts a SYN or FIN too). How much each
 * carried depends on where the switches fall. */
static void check_paths(uint64_t off, uint32_t init_ctr, int fd)
{
	const struct ivmc_shm_hdr *h = (const void *)(mem + off);
	uint64_t side[2];
	bool known = side_bytes(fd, side);

	for (int d = 0; d < 2; d++) {
		uint64_t pw = ivmc_load_acquire(&h->dir[d].prod);
		uint32_t ring = ivmc_w_ctr(pw) - init_ctr;

		printf("(a) %s: %u epochs, ring %u bytes, side %llu of %llu\n",
		       d ? "b->a" : "a->b", ivmc_w_epoch(pw), ring,
		       known ? (unsigned long long)side[d] : 0ull,
		       (unsigned long long)TOTAL);
		if (!ivmc_w_epoch(pw) || !ring)
			t_fail("(a) %s: the ring carried %u bytes in %u epochs",
			       d ? "b->a" : "a->b", ring, ivmc_w_epoch(pw));
		if (known && (side[d] <= PRE || side[d] + ring < TOTAL))
			t_fail("(a) %s: side %llu + ring %u bytes of %llu",
			       d ? "b->a" : "a->b",
			       (unsigned long long)side[d], ring,
			       (unsigned long long)TOTAL);
	}
}

static void case_stream(void)
{
	/* Ring counters 3000 bytes short of 2^32: they wrap early on. */
	uint32_t init_ctr = (uint32_t)-3000;
	uint64_t off = slot_new(true, init_ctr);
	struct stream_arg a = { .off = off };
	pid_t pid;

	a.deadline = t_now_ns() + 45000000000ull;
	t_loopback_pair(a.fd);
	pid = t_fork(stream_child, &a);
	close(a.fd[1]);
	stream_end(0, a.fd[0], off, a.deadline);
	T_ASSERT_EQ(t_wait(pid, 30000), 0);
	check_paths(off, init_ctr, a.fd[0]);
	close(a.fd[0]);
}

/* ---- (b) waiters on the side stream ---- */

#define ROUNDS 30

/* Echo ROUNDS messages, some after a pause, all on the side stream. */
static void echo_child(void *arg)
{
	uint8_t m[100];

	(void)arg;
	t_alarm(30);
	keep(true);
	T_ASSERT_OK(chan_detach(pr.b, CHAN_TX));
	for (int i = 0; i < ROUNDS; i++) {
		size_t n = 1 + (size_t)i * 3;

		if (t_recv(pr.b, m, n, CHAN_WAITALL) != (ssize_t)n)
			t_fail("(b) echo: round %d", i);
		if (i % 2)
			usleep(5000); /* the parent blocks in its receive */
		if (t_send(pr.b, m, n, 0) != (ssize_t)n)
			t_fail("(b) echo: send %d", i);
	}
	chan_close(pr.b);
}

static void case_side_wake(void)
{
	struct chan_stats st;
	uint8_t out[100], in[100];
	pid_t pid;

	/* A 1 s cap: a wake the nap had to find would cost up to a second
	 * per round; and the nap alone never looks at the socket at all. */
	pair_open(1000000);
	pid = t_fork(echo_child, NULL);
	keep(false);
	T_ASSERT_OK(chan_detach(pr.a, CHAN_TX));
	for (int i = 0; i < ROUNDS; i++) {
		size_t n = 1 + (size_t)i * 3;

		memset(out, i, n);
		T_ASSERT_EQ(t_send(pr.a, out, n, 0), n);
		T_ASSERT_EQ(t_recv(pr.a, in, n, CHAN_WAITALL), n);
		T_ASSERT(!memcmp(in, out, n));
	}
	chan_stats(pr.a, &st);
	T_ASSERT(!st.tx_on_ring && !st.rx_on_ring);
	/* Each blocking receive waited once or so: no waiter that spins
	 * on a socket that stays ready. */
	printf("(b) %d round trips on the side stream, %llu waits\n", ROUNDS,
	       (unsigned long long)st.sleeps);
	T_ASSERT(st.sleeps > 0 && st.sleeps <= 4 * ROUNDS);
	T_ASSERT_EQ(t_wait(pid, 20000), 0);
	pair_close();
}

/* ---- (c) shutdown, end of stream, a half-close ---- */

#define SHUT_N	 (RING + 5000)
#define REPLY_N	 (4 * RING)

static bool on_side;

/* Send SHUT_N bytes, shut down, then read a reply slowly: the parent
 * blocks on a full ring while our FIN is on its side stream. */
static void shut_child(void *arg)
{
	static uint8_t buf[8192];
	uint64_t got = 0;
	ssize_t r;

	(void)arg;
	t_alarm(30);
	keep(true);
	if (on_side)
		T_ASSERT_OK(chan_detach(pr.b, CHAN_TX));
	t_chan_send_stream(pr.b, SEED_BA, SHUT_N, 0);
	T_ASSERT_OK(chan_shutdown(pr.b, SHUT_WR));
	while ((r = t_recv(pr.b, buf, sizeof(buf), 0)) > 0) {
		if (t_verify(SEED_AB, got, buf, (size_t)r))
			t_fail("(c) reply: wrong bytes at %llu",
			       (unsigned long long)got);
		got += (uint64_t)r;
		usleep(2000);
	}
	if (r || got != REPLY_N)
		t_fail("(c) reply: %zd after %llu bytes", r,
		       (unsigned long long)got);
	chan_close(pr.b);
}

static void case_shutdown(bool side)
{
	static uint8_t buf[8192];
	struct chan_stats st;
	uint64_t got = 0, sleeps;
	ssize_t r;
	pid_t pid;

	on_side = side;
	pair_open(1000);
	pid = t_fork(shut_child, NULL);
	keep(false);
	while ((r = t_recv(pr.a, buf, sizeof(buf), 0)) > 0) {
		if (t_verify(SEED_BA, got, buf, (size_t)r))
			t_fail("(c) wrong bytes at %llu",
			       (unsigned long long)got);
		got += (uint64_t)r;
	}
	T_ASSERT_EQ(r, 0);
	T_ASSERT_EQ(got, SHUT_N);
	T_ASSERT_EQ(t_recv(pr.a, buf, 1, 0), 0);
	T_ASSERT_EQ(t_recv(pr.a, buf, 1, CHAN_NONBLOCK), 0);
	/* The peer shut down writing, not reading: our stream goes on, and
	 * a sender blocked on the full ring with the peer's FIN in its side
	 * stream waits as usual (once per read of the peer, or so), never
	 * spins on it. */
	chan_stats(pr.a, &st);
	sleeps = st.sleeps;
	t_chan_send_stream(pr.a, SEED_AB, REPLY_N, 0);
	chan_stats(pr.a, &st);
	printf("(c) %s: reply sent in %llu waits\n", side ? "side" : "ring",
	       (unsigned long long)(st.sleeps - sleeps));
	T_ASSERT(st.sleeps - sleeps <= 4 * REPLY_N / 8192 + 16);
	T_ASSERT_OK(chan_shutdown(pr.a, SHUT_WR));
	T_ASSERT_EQ(t_wait(pid, 20000), 0);
	pair_close();
}

/* A producer that shut down and waits in a receive, whose consumer gives
 * back what it has not read and closes (as ivmc_close() of a TCP handle):
 * with no doorbell to ring, the waiting producer must still send the bytes
 * given back and its owed FIN on the side stream, for a reader of the
 * socket alone. */
#define REWIND_N (RING - 1000) /* all of it in the ring */

static int ctl[2]; /* between parent and child */

static void rewind_child(void *arg)
{
	char b = 's';

	(void)arg;
	t_alarm(30);
	keep(true);
	close(ctl[1]);
	t_chan_send_stream(pr.b, SEED_BA, REWIND_N, 0);
	T_ASSERT_OK(chan_shutdown(pr.b, SHUT_WR));
	T_ASSERT_EQ(write(ctl[0], &b, 1), 1);
	T_ASSERT_EQ(t_recv(pr.b, &b, 1, 0), 1);
	T_ASSERT_EQ(b, 'k');
	chan_close(pr.b);
}

static void case_rewind_waiting(void)
{
	static uint8_t buf[8192];
	uint64_t got = 0;
	ssize_t r;
	pid_t pid;

	pair_open(1000);
	T_ASSERT(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, ctl) == 0);
	pid = t_fork(rewind_child, NULL);
	keep(false);
	close(ctl[0]);
	T_ASSERT_EQ(read(ctl[1], buf, 1), 1); /* all sent, shut down */
	usleep(20000); /* in its receive, most likely: not required */
	while (got < 3000) {
		r = t_recv(pr.a, buf, 3000 - got, 0);
		T_ASSERT(r > 0 && !t_verify(SEED_BA, got, buf, (size_t)r));
		got += (uint64_t)r;
	}
	(void)chan_detach(pr.a, CHAN_TX);
	T_ASSERT_OK(chan_rewind(pr.a));
	T_ASSERT_OK(chan_settle(pr.a));
	chan_close(pr.a);
	pr.a = NULL;
	while ((r = recv(pr.side[0], buf, sizeof(buf), 0)) > 0) {
		if (t_verify(SEED_BA, got, buf, (size_t)r))
			t_fail("(c) raw read after the rewind: wrong bytes at %llu",
			       (unsigned long long)got);
		got += (uint64_t)r;
	}
	T_ASSERT_EQ(r, 0);
	T_ASSERT_EQ(got, REWIND_N);
	T_ASSERT_EQ(send(pr.side[0], "k", 1, MSG_NOSIGNAL), 1);
	T_ASSERT_EQ(t_wait(pid, 10000), 0);
	close(ctl[1]);
	pair_close();
}

/* ---- (d) the peer SIGKILLed ---- */

static void writer_child(void *arg)
{
	static uint8_t buf[3 * RING];
	uint64_t off = 0, rng = 5;

	t_alarm(30);
	keep(true);
	if (*(bool *)arg)
		T_ASSERT_OK(chan_detach(pr.b, CHAN_TX));
	for (;;) {
		size_t n = 1 + t_rand64(&rng) % sizeof(buf);

		t_fill(SEED_BA, off, buf, n);
		if (t_send(pr.b, buf, n, 0) != (ssize_t)n)
			t_fail("(d) writer: send at %llu",
			       (unsigned long long)off);
		off += n;
	}
}

/* Read until the end: a prefix, then 0 or -ECONNRESET, in bounded time
 * (non-blocking: a bounded number of -EAGAIN, 1 ms apart). */
static void read_to_end(uint64_t *off, bool nb, const char *what)
{
	static uint8_t buf[4 * RING];

	for (long i = 0; i < 20000; i++) {
		ssize_t r = t_recv(pr.a, buf, sizeof(buf),
				   nb ? CHAN_NONBLOCK : 0);

		if (r == 0 || r == -ECONNRESET)
			return;
		if (r == -EAGAIN && nb) {
			usleep(1000);
			continue;
		}
		if (r < 0)
			t_fail("%s: recv at %llu: %zd (%s)", what,
			       (unsigned long long)*off, r, t_strerror(r));
		if (t_verify(SEED_BA, *off, buf, (size_t)r))
			t_fail("%s: garbage at %llu", what,
			       (unsigned long long)*off);
		*off += (uint64_t)r;
	}
	t_fail("%s: no end of stream at %llu", what, (unsigned long long)*off);
}

static void case_writer_killed(bool side, bool nb)
{
	char what[96];
	uint64_t off = 0, at_kill;
	pid_t pid;

	snprintf(what, sizeof(what), "(d) writer killed (%s, %s reader)",
		 side ? "side stream" : "ring",
		 nb ? "non-blocking" : "blocking");
	pair_open(1000);
	pid = t_fork(writer_child, &side);
	keep(false);
	while (off < 3 * RING) {
		static uint8_t buf[RING];
		ssize_t r = t_recv(pr.a, buf, sizeof(buf), 0);

		if (r <= 0 || t_verify(SEED_BA, off, buf, (size_t)r))
			t_fail("%s: before the kill, at %llu: %zd", what,
			       (unsigned long long)off, r);
		off += (uint64_t)r;
	}
	at_kill = off;
	T_ASSERT_EQ(kill(pid, SIGKILL), 0);
	T_ASSERT_EQ(t_wait(pid, 10000), -1);
	read_to_end(&off, nb, what);
	printf("%s: %llu bytes, %llu after the kill\n", what,
	       (unsigned long long)off, (unsigned long long)(off - at_kill));
	if (!side && off - at_kill > RING) /* in flight: at most a ring */
		t_fail("%s: %llu bytes after the kill", what,
		       (unsigned long long)(off - at_kill));
	pair_close();
}

/* Read one piece, then die with the rest unread. */
static void reader_child(void *arg)
{
	static uint8_t buf[RING];

	(void)arg;
	t_alarm(30);
	keep(true);
	T_ASSERT(t_recv(pr.b, buf, sizeof(buf), 0) > 0);
	usleep(100000); /* the writer fills the ring and blocks */
	raise(SIGKILL);
}

static void case_reader_killed(bool side, bool nb)
{
	static uint8_t buf[2 * RING];
	ssize_t r = 0;
	pid_t pid;
	int i;

	pair_open(1000);
	if (side)
		T_ASSERT_OK(chan_detach(pr.a, CHAN_TX));
	pid = t_fork(reader_child, NULL);
	keep(false);
	/* Up to some MiB of socket buffers on the side stream, a ring on
	 * the ring; then -EPIPE (non-blocking: after -EAGAIN, 1 ms apart). */
	for (i = 0; i < 20000; i++) {
		r = t_send(pr.a, buf, sizeof(buf), nb ? CHAN_NONBLOCK : 0);
		if (r == -EAGAIN && nb)
			usleep(1000);
		else if (r <= 0)
			break;
	}
	if (r != -EPIPE)
		t_fail("(d) reader killed (%s, %s writer): send %d: %zd (%s), want -EPIPE",
		       side ? "side stream" : "ring",
		       nb ? "non-blocking" : "blocking", i, r, t_strerror(r));
	T_ASSERT_EQ(t_send(pr.a, buf, 1, 0), -EPIPE);
	T_ASSERT_EQ(t_wait(pid, 10000), -1);
	pair_close();
}

/* ---- (e) chan_peer_gone() ---- */

#define GONE_N (RING / 2 + 333)

/* Publish GONE_N bytes (ring, or side stream), say so, and stay alive
 * with the socket open: no FIN, no reset, as a VM that vanished. */
static void gone_child(void *arg)
{
	char b = 'p';

	t_alarm(30);
	keep(true);
	close(ctl[1]);
	if (*(bool *)arg)
		T_ASSERT_OK(chan_detach(pr.b, CHAN_TX));
	t_chan_send_stream(pr.b, SEED_BA, GONE_N, 0);
	T_ASSERT_EQ(write(ctl[0], &b, 1), 1);
	(void)read(ctl[0], &b, 1);
	chan_close(pr.b);
}

struct gone_reader {
	_Atomic uint64_t got;
	ssize_t end;
};

static void *gone_read(void *arg)
{
	static uint8_t buf[4096];
	struct gone_reader *g = arg;
	ssize_t r;

	while ((r = t_recv(pr.a, buf, sizeof(buf), 0)) > 0) {
		if (t_verify(SEED_BA, g->got, buf, (size_t)r))
			t_fail("(e) wrong bytes at %llu",
			       (unsigned long long)g->got);
		g->got += (uint64_t)r;
	}
	g->end = r;
	return NULL;
}

static void *gone_write(void *arg)
{
	static uint8_t buf[RING];
	ssize_t r;

	while ((r = t_send(pr.a, buf, sizeof(buf), 0)) > 0)
		;
	*(ssize_t *)arg = r;
	return NULL;
}

/* blocked: the reader reads the published bytes and blocks, a writer
 * blocks on a full ring (or side stream), then chan_peer_gone(); else
 * chan_peer_gone() first, then the reads. */
static void case_peer_gone(bool side, bool blocked)
{
	struct gone_reader g = { 0, 1 };
	pthread_t th[2];
	ssize_t wr = 1;
	char b;
	pid_t pid;

	pair_open(100000);
	T_ASSERT(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, ctl) == 0);
	pid = t_fork(gone_child, &side);
	keep(false);
	close(ctl[0]);
	T_ASSERT_EQ(read(ctl[1], &b, 1), 1); /* all of it published */
	if (!blocked)
		chan_peer_gone(pr.a);
	if (side)
		T_ASSERT_OK(chan_detach(pr.a, CHAN_TX));
	T_ASSERT_EQ(pthread_create(&th[0], NULL, gone_read, &g), 0);
	T_ASSERT_EQ(pthread_create(&th[1], NULL, gone_write, &wr), 0);
	if (blocked) {
		while (g.got < GONE_N)
			usleep(1000);
		usleep(50000); /* both blocked, most likely: not required */
		chan_peer_gone(pr.a);
	}
	T_ASSERT_EQ(pthread_join(th[0], NULL), 0);
	T_ASSERT_EQ(pthread_join(th[1], NULL), 0);
	if (g.got != GONE_N || g.end != 0 || wr != -EPIPE)
		t_fail("(e) peer gone (%s, %s): read %llu of %u then %zd, send %zd (%s)",
		       side ? "side stream" : "ring",
		       blocked ? "blocked" : "before",
		       (unsigned long long)g.got, GONE_N, g.end, wr,
		       t_strerror(wr));
	T_ASSERT_EQ(chan_poll_peek(pr.a, POLLIN | POLLOUT), POLLIN | POLLOUT);
	close(ctl[1]);
	T_ASSERT_EQ(t_wait(pid, 10000), 0);
	pair_close();
}

/* A ring-only memory channel learns of its peer's death only so: both
 * ends here, the peer alive and silent. */
static void case_peer_gone_ring_only(void)
{
	uint64_t off = slot_new(false, 0);
	struct gone_reader g = { 0, 1 };
	pthread_t th[2];
	ssize_t wr = 1;

	pr.side[0] = pr.side[1] = -1;
	pr.a = open_end(off, 0, -1, 100000, 0, 0);
	pr.b = open_end(off, 1, -1, 100000, 0, 0);
	t_chan_send_stream(pr.b, SEED_BA, GONE_N, 0);
	T_ASSERT_EQ(pthread_create(&th[0], NULL, gone_read, &g), 0);
	T_ASSERT_EQ(pthread_create(&th[1], NULL, gone_write, &wr), 0);
	while (g.got < GONE_N)
		usleep(1000);
	usleep(50000); /* both blocked, most likely: not required */
	chan_peer_gone(pr.a);
	T_ASSERT_EQ(pthread_join(th[0], NULL), 0);
	T_ASSERT_EQ(pthread_join(th[1], NULL), 0);
	if (g.got != GONE_N || g.end != 0 || wr != -EPIPE)
		t_fail("(e) peer gone, ring-only: read %llu of %u then %zd, send %zd (%s)",
		       (unsigned long long)g.got, GONE_N, g.end, wr,
		       t_strerror(wr));
	pair_close();
}

/* ---- (f) refusals ---- */

static int ring_nothing(void *arg)
{
	(void)arg;
	return 0;
}

static void refusals(void)
{
	uint64_t side_off = slot_new(true, 5), ring_off = slot_new(false, 0);
	const struct ivmc_shm_hdr *h = (const void *)(mem + side_off);
	struct chan_cfg cfg = { .side_fd = -1 };
	struct chan_bell *bell;
	struct chan *c;
	int fd[2], efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);

	T_ASSERT(h->flags == IVMC_SHM_F_SIDE && h->init_ctr[1] == 5 &&
		 h->deep_size == 0);
	t_loopback_pair(fd);
	T_ASSERT_EQ(try_open(side_off, 0, -1, 0, 0, 0, &c), -EPROTO);
	T_ASSERT_EQ(try_open(ring_off, 0, fd[0], 0, 0, 0, &c), -EPROTO);
	T_ASSERT_OK(try_open(side_off, 0, fd[0], 0, 0, 0, &c));
	chan_close(c);
	T_ASSERT(efd >= 0);
	T_ASSERT_OK(chan_bell_new(efd, ring_nothing, NULL, &bell));
	/* A bell with a side stream is what guests with interrupts use. */
	cfg.bell = bell;
	cfg.side_fd = fd[0];
	T_ASSERT_OK(chan_open_mem(&cfg, mfd, side_off, FILESZ - side_off, &c));
	T_ASSERT_EQ(chan_fd(c), efd);
	chan_close(c);
	cfg.side_fd = -1;
	T_ASSERT_OK(chan_open_mem(&cfg, mfd, ring_off, FILESZ - ring_off, &c));
	chan_close(c);
	chan_bell_free(bell);
	close(efd);
	close(fd[0]);
	close(fd[1]);
}

/* ---- (g) the peer rings a blocked reader (bells only) ---- */

static int g_ctl[2];

static void late_child(void *arg)
{
	struct chan_stats st;
	char x;

	(void)arg;
	t_alarm(20);
	keep(true);
	T_ASSERT_EQ(read(g_ctl[1], &x, 1), 1); /* the parent is about to block */
	usleep(200000);
	T_ASSERT_EQ(t_send(pr.b, "late", 4, 0), 4);
	chan_stats(pr.b, &st);
	/* The reader was asleep with its flag up: the send rang it (a bell),
	 * or did not (no bell: it polls). */
	printf("(g) sender rang %llu time(s)\n",
	       (unsigned long long)st.wakeups_sent);
	if (BELL(0) ? st.wakeups_sent < 1 : st.wakeups_sent != 0)
		t_fail("(g) %llu rings", (unsigned long long)st.wakeups_sent);
	chan_close(pr.b);
}

static void case_late_ring(void)
{
	char in[4];
	pid_t pid;

	setenv("IVMC_POLL_BELL_US", "2000", 1); /* naps, then the bell */
	pair_open(1000);
	if (BELL(0))
		setenv("IVMC_POLL_BELL_US", "0", 1);
	T_ASSERT(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, g_ctl) == 0);
	pid = t_fork(late_child, NULL);
	keep(false);
	T_ASSERT_EQ(write(g_ctl[0], "g", 1), 1);
	T_ASSERT_EQ(t_recv(pr.a, in, 4, CHAN_WAITALL), 4);
	T_ASSERT(!memcmp(in, "late", 4));
	T_ASSERT_EQ(t_wait(pid, 20000), 0);
	close(g_ctl[0]);
	close(g_ctl[1]);
	pair_close();
}

int main(void)
{
	t_alarm(110);
	T_ASSERT_OK(xport_memfd_create(FILESZ, &mfd));
	T_ASSERT_OK(xport_map(mfd, 0, FILESZ, (void **)&mem));
#ifdef T_BELL
	/* Every wait on the bell at once; (g) with the nap phase first. */
	setenv("IVMC_POLL_BELL_US", "0", 1);
	bells_init();
#endif
	refusals();
	case_side_wake();
	case_late_ring();
	for (int side = 0; side < 2; side++) {
		case_shutdown(side);
		if (!side)
			case_rewind_waiting();
		case_writer_killed(side, false);
		case_writer_killed(side, true);
		case_reader_killed(side, false);
		case_reader_killed(side, true);
		case_peer_gone(side, false);
		case_peer_gone(side, true);
	}
	case_peer_gone_ring_only();
	case_stream();
	munmap(mem, FILESZ);
	close(mfd);
	return T_PASS;
}
