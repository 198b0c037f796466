/* SPDX-License-Identifier: MIT */
/*
 * Description: a peer process SIGKILLed mid-stream. A writer killed while
 * it streams: the reader gets exactly a prefix of the stream (no garbage,
 * no gap, at most one ring more than it had read when it killed the
 * writer), then 0 or -ECONNRESET, in bounded time, blocking or non-blocking
 * with poll() on chan_fd(). A reader killed while the writer is blocked on
 * a full ring: the writer gets -EPIPE in bounded time. Ring-only and with a
 * side stream (data on the ring, or on the side stream).
 */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "helpers.h"
#include "t_chan.h"

#define RING (16u * 1024)
#define SEED 0xdead

enum cfg { C_RING, C_SIDE_RING, C_SIDE_SIDE, C_MAX };
static const char *const cfg_name[C_MAX] = { "ring-only", "side+ring",
					     "side+side" };

static struct t_pair pair;
static int soft_failures;

/* The child keeps end b: close what belongs to the parent's end. */
static void child_setup(enum cfg cfg)
{
	chan_close(pair.a);
	pair.a = NULL;
	if (pair.side[0] >= 0)
		close(pair.side[0]);
	if (cfg == C_SIDE_SIDE)
		T_ASSERT_OK(chan_detach(pair.b, CHAN_TX));
}

static void parent_setup(void)
{
	chan_close(pair.b);
	pair.b = NULL;
	if (pair.side[1] >= 0) {
		close(pair.side[1]);
		pair.side[1] = -1;
	}
}

static enum cfg child_cfg;

/* Stream forever (bounded) in random sizes until killed. */
static void writer_child(void *arg)
{
	static uint8_t buf[3 * RING];
	uint64_t off = 0, rng = 3;

	(void)arg;
	t_alarm(30);
	child_setup(child_cfg);
	for (int i = 0; i < 10000000; i++) {
		size_t n = 1 + t_rand64(&rng) % sizeof(buf);
		ssize_t r;

		t_fill(SEED, off, buf, n);
		r = t_send(pair.b, buf, n, 0);
		if (r != (ssize_t)n)
			t_fail("writer child: send %zu at %llu: %zd (%s)", n,
			       (unsigned long long)off, r, t_strerror(r));
		off += n;
	}
	t_fail("writer child: never killed");
}

/* Wait for chan_fd() to become readable; a wake must come within 5 s. */
static void poll_fd(struct chan *c, const char *what, uint64_t off)
{
	struct pollfd pf = { chan_fd(c), POLLIN, 0 };
	int r = poll(&pf, 1, 5000);

	if (r < 0 && errno != EINTR)
		t_fail("%s: poll: %s", what, strerror(errno));
	if (r == 0)
		t_fail("%s: chan_fd() not readable within 5 s at offset %llu after -EAGAIN",
		       what, (unsigned long long)off);
}

/*
 * Read from the killed writer until the end. Returns 0 when the end came as
 * 0 or -ECONNRESET, -1 (after printing why) when a non-blocking reader saw
 * no end within the bounds (it spins: the fd readable, recv -EAGAIN).
 */
static int read_rest(struct chan *c, uint64_t *off, bool nb, const char *what)
{
	static uint8_t buf[4 * RING];
	uint64_t t_end = t_now_ns() + 10000000000ull;
	long eagains = 0;

	for (long calls = 0;; calls++) {
		ssize_t r = t_recv(c, buf, sizeof(buf), nb ? CHAN_NONBLOCK : 0);

		if (r == 0 || r == -ECONNRESET)
			return 0;
		if (r == -EAGAIN && nb) {
			if (++eagains > 10000 || t_now_ns() > t_end) {
				fprintf(stderr,
					"FAIL: %s: non-blocking reader never sees the end: after the writer was killed, recv returned -EAGAIN %ld times over %.1f s at offset %llu while chan_fd() polls readable\n",
					what, eagains,
					(double)(t_now_ns() + 10000000000ull -
						 t_end) /
						1e9,
					(unsigned long long)*off);
				return -1;
			}
			poll_fd(c, what, *off);
			continue;
		}
		if (r < 0)
			t_fail("%s: recv at offset %llu: %zd (%s), want data, 0 or -ECONNRESET",
			       what, (unsigned long long)*off, r,
			       t_strerror(r));
		if (t_verify(SEED, *off, buf, (size_t)r))
			t_fail("%s: garbage in [%llu, %llu) from the killed writer",
			       what, (unsigned long long)*off,
			       (unsigned long long)(*off + (uint64_t)r));
		*off += (uint64_t)r;
		if (calls > 1000000 || t_now_ns() > t_end)
			t_fail("%s: still reading at offset %llu", what,
			       (unsigned long long)*off);
	}
}

static void case_writer_killed(enum cfg cfg, bool nb, uint64_t kill_at)
{
	static uint8_t buf[4 * RING];
	char what[128];
	uint64_t off = 0, at_kill;
	pid_t pid;

	snprintf(what, sizeof(what),
		 "writer killed after %llu bytes (%s, %s reader)",
		 (unsigned long long)kill_at, cfg_name[cfg],
		 nb ? "non-blocking" : "blocking");
	t_chan_pair(&pair, RING, cfg != C_RING, 0, CHAN_WAIT_ADAPTIVE);
	child_cfg = cfg;
	pid = t_fork(writer_child, NULL);
	parent_setup();
	while (off < kill_at) {
		ssize_t r = t_recv(pair.a, buf, sizeof(buf), 0);

		if (r <= 0)
			t_fail("%s: recv at %llu before the kill: %zd (%s)",
			       what, (unsigned long long)off, r, t_strerror(r));
		if (t_verify(SEED, off, buf, (size_t)r))
			t_fail("%s: wrong bytes at %llu", what,
			       (unsigned long long)off);
		off += (uint64_t)r;
	}
	at_kill = off;
	T_ASSERT_EQ(kill(pid, SIGKILL), 0);
	T_ASSERT_EQ(t_wait(pid, 10000), -1); /* killed by the signal */
	if (read_rest(pair.a, &off, nb, what))
		soft_failures++;
	/* What was in flight: at most a ring (plus the side buffer). */
	if (cfg != C_SIDE_SIDE && off - at_kill > RING)
		t_fail("%s: %llu bytes after the kill, more than a ring of %u",
		       what, (unsigned long long)(off - at_kill), RING);
	printf("%s: %llu bytes in flight at the kill\n", what,
	       (unsigned long long)(off - at_kill));
	t_chan_pair_close(&pair);
}

/* Read a little, then stop reading and die. */
static void reader_child(void *arg)
{
	static uint8_t buf[RING];

	(void)arg;
	t_alarm(30);
	child_setup(child_cfg);
	T_ASSERT(t_recv(pair.b, buf, sizeof(buf), 0) > 0);
	usleep(200000); /* the writer fills the ring and blocks */
	raise(SIGKILL);
}

static void case_reader_killed(enum cfg cfg)
{
	static uint8_t buf[8 * RING];
	uint64_t t0, sent = 0;
	char what[96];
	ssize_t r = 0;
	pid_t pid;
	int i;

	snprintf(what, sizeof(what), "reader killed, writer blocked (%s)",
		 cfg_name[cfg]);
	t_chan_pair(&pair, RING, cfg != C_RING, 0, CHAN_WAIT_ADAPTIVE);
	if (cfg == C_SIDE_SIDE)
		T_ASSERT_OK(chan_detach(pair.a, CHAN_TX));
	child_cfg = C_RING; /* the child only reads */
	pid = t_fork(reader_child, NULL);
	parent_setup();
	t0 = t_now_ns();
	/* Blocking sends: the ring (and the side buffer) fill, we block, the
	 * reader dies; a send returns a partial count or -EPIPE, and -EPIPE
	 * soon. The side stream buffers a few hundred KiB. */
	for (i = 0; i < 1000; i++) {
		t_fill(SEED, sent, buf, sizeof(buf));
		r = t_send(pair.a, buf, sizeof(buf), 0);
		if (r <= 0)
			break;
		sent += (uint64_t)r;
	}
	if (r != -EPIPE)
		t_fail("%s: send after %llu bytes (%d calls): %zd (%s), want -EPIPE",
		       what, (unsigned long long)sent, i, r, t_strerror(r));
	T_ASSERT_EQ(t_wait(pid, 10000), -1);
	/* And it stays -EPIPE, without blocking. */
	r = t_send(pair.a, buf, 1, 0);
	if (r != -EPIPE)
		t_fail("%s: send after -EPIPE: %zd (%s)", what, r,
		       t_strerror(r));
	printf("%s: -EPIPE after %.2f s, %llu bytes sent\n", what,
	       (double)(t_now_ns() - t0) / 1e9, (unsigned long long)sent);
	t_chan_pair_close(&pair);
}

int main(void)
{
	t_alarm(55);
	for (int cfg = 0; cfg < C_MAX; cfg++) {
		case_writer_killed(cfg, false, 1 << 20);
		case_writer_killed(cfg, false, 1 + cfg * 7777);
		case_writer_killed(cfg, true, 3 << 20);
		case_reader_killed(cfg);
	}
	if (soft_failures)
		t_fail("%d case(s) failed, see above", soft_failures);
	return T_PASS;
}
