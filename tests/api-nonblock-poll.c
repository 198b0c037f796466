/* SPDX-License-Identifier: MIT */
/*
 * Description: non-blocking use and readiness. IVMC_NONBLOCK per call and
 * ivmc_set_nonblock(); after -EAGAIN from recv, ivmc_fd() polls readable
 * once the peer sends, and after -EAGAIN from send (ring full) once the peer
 * drains; an idle fd does not stay readable; a peer that closes without
 * shutdown is seen by a non-blocking reader; ivmc_poll_arm() returns what is
 * ready or 0 when armed; and an epoll loop in one thread echoes checksummed
 * streams on several channels from another process.
 */
#include <poll.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/wait.h>

#include "t_api.h"

#define RING 4096
#define SEED 0xabc

static char path[128];

/* Is fd readable within ms? */
static bool readable(int fd, int ms)
{
	struct pollfd p = { fd, POLLIN, 0 };

	return poll(&p, 1, ms) == 1 && (p.revents & POLLIN);
}

static struct ivmc_chan *pair_a, *pair_b;

static void pair(void)
{
	struct ivmc_opts o = { .ring_size = RING };

	t_api_pair(path, &o, &o, &pair_a, &pair_b);
}

static void unpair(void)
{
	T_ASSERT_OK(ivmc_close(pair_a));
	T_ASSERT_OK(ivmc_close(pair_b));
}

/* A peer thread that does one thing after a delay. */
struct later {
	pthread_t t;
	int delay_ms;
	struct ivmc_chan *c;
	size_t n; /* send n bytes (stream SEED at off) / receive n bytes */
	uint64_t off;
	bool recv;
};

static void *later_fn(void *arg)
{
	static uint8_t buf[RING];
	struct later *lt = arg;

	usleep((useconds_t)lt->delay_ms * 1000);
	if (lt->recv) {
		t_recv_all(lt->c, buf, lt->n);
	} else {
		t_fill(SEED, lt->off, buf, lt->n);
		t_send_all(lt->c, buf, lt->n);
	}
	return NULL;
}

static void later_start(struct later *lt)
{
	T_ASSERT(pthread_create(&lt->t, NULL, later_fn, lt) == 0);
}

static void later_join(struct later *lt)
{
	T_ASSERT(pthread_join(lt->t, NULL) == 0);
}

/* After -EAGAIN with nothing going on, how many of count polls of fd (each
 * up to ms) say readable while recv still has nothing? */
static int idle_wakeups(struct ivmc_chan *c, int count, int ms)
{
	uint8_t x;
	int n = 0;

	for (int i = 0; i < count; i++) {
		ssize_t r = ivmc_recv(c, &x, 1, IVMC_NONBLOCK);

		if (r != -EAGAIN)
			t_fail("idle channel: recv %zd (%s), want -EAGAIN", r,
			       t_strerror(r));
		n += readable(ivmc_fd(c), ms);
	}
	return n;
}

static void nonblock_flags(void)
{
	static uint8_t buf[3 * RING];
	struct later lt = { 0 };
	ssize_t r;

	pair();
	T_ASSERT_EQ(ivmc_recv(pair_b, buf, 1, IVMC_NONBLOCK), -EAGAIN);
	/* Non-blocking send: what fits, then -EAGAIN. */
	t_fill(SEED, 0, buf, sizeof(buf));
	r = ivmc_send(pair_a, buf, sizeof(buf), IVMC_NONBLOCK);
	T_ASSERT_EQ(r, RING);
	T_ASSERT_EQ(ivmc_send(pair_a, buf + RING, 1, IVMC_NONBLOCK), -EAGAIN);
	/* ivmc_set_nonblock(): the same without the flag. */
	T_ASSERT_OK(ivmc_set_nonblock(pair_a, 1));
	T_ASSERT_EQ(ivmc_send(pair_a, buf + RING, 1, 0), -EAGAIN);
	T_ASSERT_OK(ivmc_set_nonblock(pair_b, 1));
	memset(buf, 0, sizeof(buf));
	t_recv_all(pair_b, buf, RING); /* WAITALL, data all there */
	T_ASSERT(t_verify(SEED, 0, buf, RING) == 0);
	T_ASSERT_EQ(ivmc_recv(pair_b, buf, 1, 0), -EAGAIN);
	T_ASSERT_EQ(ivmc_recv(pair_b, buf, 1, IVMC_WAITALL), -EAGAIN);
	T_ASSERT_EQ(ivmc_set_nonblock(NULL, 1), -EINVAL);
	/* Blocking again: recv waits for the peer's send. */
	T_ASSERT_OK(ivmc_set_nonblock(pair_b, 0));
	T_ASSERT_OK(ivmc_set_nonblock(pair_a, 0));
	lt = (struct later){
		.delay_ms = 100, .c = pair_a, .n = 10, .off = RING
	};
	later_start(&lt);
	T_ASSERT_EQ(ivmc_recv(pair_b, buf, 10, IVMC_WAITALL), 10);
	T_ASSERT(t_verify(SEED, RING, buf, 10) == 0);
	later_join(&lt);
	unpair();
}

static void poll_after_eagain(void)
{
	static uint8_t buf[2 * RING];
	struct later lt;
	int spurious;

	pair();
	/* recv: -EAGAIN, then readable once the peer sends. */
	T_ASSERT_EQ(ivmc_recv(pair_b, buf, 1, IVMC_NONBLOCK), -EAGAIN);
	lt = (struct later){ .delay_ms = 100, .c = pair_a, .n = 100 };
	later_start(&lt);
	if (!readable(ivmc_fd(pair_b), 5000))
		t_fail("ivmc_fd() not readable 5 s after the peer sent");
	later_join(&lt);
	T_ASSERT_EQ(ivmc_recv(pair_b, buf, sizeof(buf), IVMC_NONBLOCK), 100);
	T_ASSERT(t_verify(SEED, 0, buf, 100) == 0);

	/* Nothing more comes: the fd may wake spuriously, but must not stay
	 * readable (an event loop would spin on it). */
	spurious = idle_wakeups(pair_b, 10, 20);
	if (spurious > 2)
		t_late_fail(
			"ivmc_fd() of an idle channel polled readable %d times out of 10 after the data was read, each time recv gave -EAGAIN: an epoll/poll loop spins",
			spurious);

	/* send: -EAGAIN on a full ring, then readable once the peer drains. */
	t_fill(SEED, 100, buf, RING);
	T_ASSERT_EQ(ivmc_send(pair_a, buf, RING, IVMC_NONBLOCK), RING);
	T_ASSERT_EQ(ivmc_send(pair_a, buf, 1, IVMC_NONBLOCK), -EAGAIN);
	lt = (struct later){
		.delay_ms = 100, .c = pair_b, .n = RING, .recv = true
	};
	later_start(&lt);
	if (!readable(ivmc_fd(pair_a), 5000))
		t_fail("ivmc_fd() not readable 5 s after the peer drained a full ring");
	later_join(&lt);
	T_ASSERT_EQ(ivmc_send(pair_a, buf, RING, IVMC_NONBLOCK), RING);
	unpair();
}

/* ivmc_poll_arm(): the events ready now, or 0 when armed. */
static void poll_arm(void)
{
	static uint8_t buf[RING];
	struct later lt;
	int r;

	pair();
	T_ASSERT_EQ(ivmc_poll_arm(pair_b, 0), -EINVAL);
	T_ASSERT_EQ(ivmc_poll_arm(pair_b, POLLPRI), -EINVAL);
	T_ASSERT_EQ(ivmc_poll_arm(pair_b, POLLIN | POLLHUP), -EINVAL);
	T_ASSERT_EQ(ivmc_poll_arm(NULL, POLLIN), -EINVAL);
	T_ASSERT_EQ(ivmc_poll_arm(pair_a, POLLOUT), POLLOUT);
	T_ASSERT_EQ(ivmc_poll_arm(pair_b, POLLIN | POLLOUT), POLLOUT);
	T_ASSERT_EQ(ivmc_poll_arm(pair_b, POLLIN), 0);
	/* Armed: the peer's send makes the fd readable. */
	lt = (struct later){ .delay_ms = 50, .c = pair_a, .n = 10 };
	later_start(&lt);
	if (!readable(ivmc_fd(pair_b), 5000))
		t_fail("armed for POLLIN, the peer sent, ivmc_fd() not readable after 5 s");
	later_join(&lt);
	T_ASSERT_EQ(ivmc_poll_arm(pair_b, POLLIN), POLLIN);
	T_ASSERT_EQ(ivmc_poll_arm(pair_b, POLLIN | POLLOUT), POLLIN | POLLOUT);
	T_ASSERT_EQ(ivmc_recv(pair_b, buf, sizeof(buf), 0), 10);

	/* A full ring: POLLOUT armed, ready again once the peer drains. */
	t_fill(SEED, 10, buf, RING);
	T_ASSERT_EQ(ivmc_send(pair_a, buf, RING, IVMC_NONBLOCK), RING);
	T_ASSERT_EQ(ivmc_poll_arm(pair_a, POLLOUT), 0);
	lt = (struct later){
		.delay_ms = 50, .c = pair_b, .n = RING, .recv = true
	};
	later_start(&lt);
	if (!readable(ivmc_fd(pair_a), 5000))
		t_fail("armed for POLLOUT, the peer drained, ivmc_fd() not readable after 5 s");
	later_join(&lt);
	T_ASSERT_EQ(ivmc_poll_arm(pair_a, POLLOUT), POLLOUT);

	/* End of stream is an event too. */
	T_ASSERT_EQ(ivmc_poll_arm(pair_b, POLLIN), 0);
	T_ASSERT_OK(ivmc_shutdown(pair_a, SHUT_WR));
	if (!readable(ivmc_fd(pair_b), 5000))
		t_fail("armed for POLLIN, the peer shut down, ivmc_fd() not readable after 5 s");
	r = ivmc_poll_arm(pair_b, POLLIN);
	T_ASSERT_EQ(r, POLLIN);
	T_ASSERT_EQ(ivmc_recv(pair_b, buf, 1, IVMC_NONBLOCK), 0);
	unpair();
}

/* ---- a peer that goes away without shutdown ---- */

static void peer_closes(void *arg)
{
	struct ivmc_chan *c;
	uint8_t buf[100];

	(void)arg;
	T_ASSERT_OK(ivmc_connect(path, NULL, &c));
	t_fill(SEED, 0, buf, sizeof(buf));
	t_send_all(c, buf, sizeof(buf));
	T_ASSERT_OK(ivmc_close(c)); /* no shutdown */
}

static void peer_killed(void *arg)
{
	peer_closes(arg);
	raise(SIGKILL);
}

/* A non-blocking reader must learn of the end: after the bytes that were
 * sent, 0 (or -ECONNRESET), not -EAGAIN for ever. */
static void peer_gone(void (*peer)(void *), const char *how)
{
	struct ivmc_listener *l;
	struct ivmc_chan *c;
	uint8_t buf[200];
	ssize_t r = 0;
	int got = 0, tries = 0, st;
	pid_t pid;

	T_ASSERT_OK(ivmc_listen(path, NULL, &l));
	pid = t_fork(peer, NULL);
	T_ASSERT_OK(ivmc_accept(l, 0, &c));
	T_ASSERT_OK(ivmc_listener_close(l));
	/* Gone for good (quietly: one of them dies by SIGKILL). */
	T_ASSERT(waitpid(pid, &st, 0) == pid);
	if (peer == peer_closes ? !WIFEXITED(st) || WEXITSTATUS(st) :
				  !WIFSIGNALED(st))
		t_fail("the peer that %s failed (status %#x)", how, st);
	T_ASSERT_OK(ivmc_set_nonblock(c, 1));
	for (; tries < 50; tries++) {
		r = ivmc_recv(c, buf + got, sizeof(buf) - (size_t)got, 0);
		if (r > 0) {
			got += (int)r;
			continue;
		}
		if (r != -EAGAIN)
			break;
		readable(ivmc_fd(c), 20);
	}
	T_ASSERT_EQ(got, 100);
	T_ASSERT(t_verify(SEED, 0, buf, 100) == 0);
	if (r == -EAGAIN) {
		t_late_fail(
			"peer %s without shutdown: non-blocking recv still -EAGAIN after %d tries (ivmc_fd() readable: %d, ivmc_poll_arm(POLLIN) = %d); want 0 or -ECONNRESET",
			how, tries, readable(ivmc_fd(c), 0),
			ivmc_poll_arm(c, POLLIN));
		/* A blocking recv does see it: */
		T_ASSERT_OK(ivmc_set_nonblock(c, 0));
		r = ivmc_recv(c, buf, 1, 0);
	}
	if (r != 0 && r != -ECONNRESET)
		t_fail("peer %s: recv %zd (%s), want 0 or -ECONNRESET", how, r,
		       t_strerror(r));
	T_ASSERT_OK(ivmc_close(c));
}

/* ---- epoll echo server ---- */

#define N_ECHO_CHAN 4
#define ECHO_BUF 20000

struct conn {
	struct ivmc_chan *c;
	uint8_t buf[ECHO_BUF];
	size_t len;
	bool eof, done;
};

static uint64_t echo_total(void)
{
	return t_long() ? 256u << 20 : 8u << 20;
}

struct pumparg {
	struct ivmc_chan *c;
	uint64_t seed;
};

static void *echo_sender(void *arg)
{
	static __thread uint8_t buf[30000];
	struct pumparg *pa = arg;
	uint64_t off = 0, rng = pa->seed, total = echo_total();

	while (off < total) {
		size_t k = 1 + (size_t)(t_rand64(&rng) % sizeof(buf));

		if (k > total - off)
			k = (size_t)(total - off);
		t_fill(pa->seed, off, buf, k);
		t_send_all(pa->c, buf, k);
		off += k;
	}
	T_ASSERT_OK(ivmc_shutdown(pa->c, SHUT_WR));
	return NULL;
}

static void *echo_receiver(void *arg)
{
	static __thread uint8_t buf[30000];
	struct pumparg *pa = arg;
	uint64_t off = 0, total = echo_total();
	uint64_t sum = T_CHECKSUM_INIT, want = T_CHECKSUM_INIT;

	for (;;) {
		ssize_t r = ivmc_recv(pa->c, buf, sizeof(buf), 0);

		if (r == 0)
			break;
		if (r < 0)
			t_fail("echo receiver: %zd (%s)", r, t_strerror(r));
		if (t_verify(pa->seed, off, buf, (size_t)r))
			t_fail("echo of stream %#llx wrong at %llu",
			       (unsigned long long)pa->seed,
			       (unsigned long long)off);
		sum = t_checksum(sum, buf, (size_t)r);
		off += (uint64_t)r;
	}
	if (off != total)
		t_fail("echo of stream %#llx: %llu of %llu bytes",
		       (unsigned long long)pa->seed, (unsigned long long)off,
		       (unsigned long long)total);
	for (uint64_t o = 0; o < total; o += sizeof(buf)) {
		size_t k = total - o < sizeof(buf) ? (size_t)(total - o) :
						     sizeof(buf);

		t_fill(pa->seed, o, buf, k);
		want = t_checksum(want, buf, k);
	}
	T_ASSERT_EQ(sum, want);
	return NULL;
}

static void echo_client(void *arg)
{
	struct ivmc_opts o = { .ring_size = 16384 };
	struct ivmc_chan *c[N_ECHO_CHAN];
	struct pumparg pa[N_ECHO_CHAN];
	pthread_t ts[N_ECHO_CHAN], tr[N_ECHO_CHAN];

	(void)arg;
	for (int i = 0; i < N_ECHO_CHAN; i++) {
		T_ASSERT_OK(ivmc_connect(path, &o, &c[i]));
		pa[i] = (struct pumparg){ c[i], 0xec000 + (uint64_t)i };
		T_ASSERT(pthread_create(&ts[i], NULL, echo_sender, &pa[i]) ==
			 0);
		T_ASSERT(pthread_create(&tr[i], NULL, echo_receiver, &pa[i]) ==
			 0);
	}
	for (int i = 0; i < N_ECHO_CHAN; i++) {
		T_ASSERT(pthread_join(ts[i], NULL) == 0);
		T_ASSERT(pthread_join(tr[i], NULL) == 0);
		T_ASSERT_OK(ivmc_close(c[i]));
	}
}

/* Move what can move now on one connection; true if anything did. */
static bool service(struct conn *k)
{
	bool moved = false;
	ssize_t r;

	if (!k->eof && k->len < ECHO_BUF) {
		r = ivmc_recv(k->c, k->buf + k->len, ECHO_BUF - k->len, 0);
		if (r > 0) {
			k->len += (size_t)r;
			moved = true;
		} else if (r == 0) {
			k->eof = moved = true;
		} else if (r != -EAGAIN) {
			t_fail("echo server recv: %zd (%s)", r, t_strerror(r));
		}
	}
	if (k->len) {
		r = ivmc_send(k->c, k->buf, k->len, 0);
		if (r > 0) {
			memmove(k->buf, k->buf + r, k->len - (size_t)r);
			k->len -= (size_t)r;
			moved = true;
		} else if (r != -EAGAIN) {
			t_fail("echo server send: %zd (%s)", r, t_strerror(r));
		}
	}
	if (k->eof && !k->len && !k->done) {
		T_ASSERT_OK(ivmc_shutdown(k->c, SHUT_WR));
		k->done = moved = true;
	}
	return moved;
}

/* Arm what each connection waits for; true if something is ready now. */
static bool arm_all(struct conn *conns)
{
	for (int i = 0; i < N_ECHO_CHAN; i++) {
		struct conn *k = &conns[i];
		short ev = (short)((!k->eof && k->len < ECHO_BUF ? POLLIN : 0) |
				   (k->len ? POLLOUT : 0));
		int r;

		if (k->done || !ev)
			continue;
		r = ivmc_poll_arm(k->c, ev);
		if (r < 0)
			t_fail("ivmc_poll_arm: %d (%s)", r, t_strerror(r));
		if (r)
			return true;
	}
	return false;
}

static void epoll_echo(void)
{
	static struct conn conns[N_ECHO_CHAN];
	struct ivmc_opts o = { .flags = IVMC_NONBLOCK };
	uint64_t deadline = t_now_ns() + 40000000000ull;
	unsigned long waits = 0, empty_waits = 0;
	struct ivmc_listener *l;
	int ep = epoll_create1(EPOLL_CLOEXEC), left = N_ECHO_CHAN;
	pid_t pid;

	T_ASSERT(ep >= 0);
	T_ASSERT_OK(ivmc_listen(path, &o, &l));
	pid = t_fork(echo_client, NULL);
	for (int i = 0; i < N_ECHO_CHAN; i++) {
		struct epoll_event ev = { .events = EPOLLIN,
					  .data.u32 = (uint32_t)i };

		memset(&conns[i], 0, sizeof(conns[i]));
		T_ASSERT_OK(ivmc_accept(l, 0, &conns[i].c));
		T_ASSERT(epoll_ctl(ep, EPOLL_CTL_ADD, ivmc_fd(conns[i].c),
				   &ev) == 0);
	}
	T_ASSERT_OK(ivmc_listener_close(l));
	while (left) {
		struct epoll_event evs[N_ECHO_CHAN];
		bool moved = false;
		int n;

		if (t_now_ns() > deadline)
			t_fail("epoll echo: not done after 40 s (%d channels left)",
			       left);
		for (int i = 0; i < N_ECHO_CHAN; i++) {
			bool was_done = conns[i].done;

			moved |= service(&conns[i]);
			left -= !was_done && conns[i].done;
		}
		if (moved || !left || arm_all(conns))
			continue;
		n = epoll_wait(ep, evs, N_ECHO_CHAN, 1000);
		waits++;
		empty_waits += n == 0;
	}
	T_ASSERT_EQ(t_wait(pid, 30000), 0);
	printf("epoll echo: %lu epoll_wait calls, %lu timed out\n", waits,
	       empty_waits);
	for (int i = 0; i < N_ECHO_CHAN; i++)
		T_ASSERT_OK(ivmc_close(conns[i].c));
	close(ep);
}

int main(void)
{
	int fds0;

	t_alarm(t_long() ? 600 : 55);
	t_tmpdir();
	t_path(path, sizeof(path), "nb.sock");
	fds0 = t_count_fds();
	nonblock_flags();
	poll_after_eagain();
	poll_arm();
	peer_gone(peer_closes, "closed");
	peer_gone(peer_killed, "was killed");
	epoll_echo();
	T_ASSERT_EQ(t_count_fds(), fds0);
	return t_late_failures ? T_FAIL : T_PASS;
}
