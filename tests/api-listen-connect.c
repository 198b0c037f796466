/* SPDX-License-Identifier: MIT */
/*
 * Description: ivmc_listen/ivmc_accept/ivmc_connect: echo both ways across
 * two processes, the listener fd polls readable with a connector pending,
 * non-blocking accept, argument checking (-EINVAL, -ENAMETOOLONG,
 * -EADDRINUSE), missing listeners, the ring size wish (capped by the
 * listener's size), abstract names, IVMC_NONBLOCK channels, and no fd left
 * behind.
 */
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>

#include "t_api.h"

static char path[128];
static const size_t echo_sizes[] = { 1, 100, 4096, 70000, 300000 };

#define N_ECHO (sizeof(echo_sizes) / sizeof(echo_sizes[0]))

/* Receive one message of n bytes and send it straight back. */
static void echo_one(struct ivmc_chan *c, uint8_t *buf, size_t n)
{
	t_recv_all(c, buf, n);
	t_send_all(c, buf, n);
}

/* Send stream seed's first n bytes, expect them back unchanged. */
static void ping(struct ivmc_chan *c, uint64_t seed, uint8_t *buf, size_t n)
{
	t_fill(seed, 0, buf, n);
	t_send_all(c, buf, n);
	memset(buf, 0, n);
	t_recv_all(c, buf, n);
	if (t_verify(seed, 0, buf, n))
		t_fail("echo of %zu bytes (stream %#llx) came back wrong", n,
		       (unsigned long long)seed);
}

static void connector(void *arg)
{
	static uint8_t buf[300000];
	struct ivmc_chan *c;
	const char *p = arg;

	T_ASSERT_OK(ivmc_connect(p, NULL, &c));
	for (size_t i = 0; i < N_ECHO; i++)
		echo_one(c, buf, echo_sizes[i]);
	for (size_t i = 0; i < N_ECHO; i++)
		ping(c, 0x200 + i, buf, echo_sizes[i]);
	/* The listener shuts down after the last echo: end of stream. */
	T_ASSERT_EQ(ivmc_recv(c, buf, 1, 0), 0);
	T_ASSERT_OK(ivmc_close(c));
}

static void nb_accept_child(void *arg)
{
	struct ivmc_chan *c;
	int r = ivmc_accept(arg, IVMC_NONBLOCK, &c);

	if (r != -EAGAIN)
		t_fail("ivmc_accept(IVMC_NONBLOCK) with nobody pending: %d (%s), want -EAGAIN",
		       r, t_strerror(r));
}

/* Non-blocking accept with nobody pending: -EAGAIN at once. In a child,
 * so that an accept that blocks is reported and does not hang the test. */
static void nb_accept_check(struct ivmc_listener *l)
{
	int r = t_wait(t_fork(nb_accept_child, l), 1000);

	if (r != 0) {
		t_late_fail(
			"ivmc_accept(l, IVMC_NONBLOCK) with nobody pending did not return -EAGAIN at once (child status %d; -1: still blocked after 1 s)",
			r);
	}
}

/* The listener side of the echo test, on path p (filesystem or abstract). */
static void echo_test(const char *p)
{
	static uint8_t buf[300000];
	struct ivmc_listener *l;
	struct ivmc_chan *c;
	struct pollfd pfd;
	pid_t pid;

	T_ASSERT_OK(ivmc_listen(p, NULL, &l));
	pfd = (struct pollfd){ ivmc_listener_fd(l), POLLIN, 0 };
	T_ASSERT(pfd.fd >= 0);
	T_ASSERT_EQ(poll(&pfd, 1, 0), 0);
	nb_accept_check(l);
	pid = t_fork(connector, (void *)p);
	/* The connector waits for our answer: it is pending now. */
	if (poll(&pfd, 1, 5000) != 1 || !(pfd.revents & POLLIN))
		t_fail("listener fd not readable with a connector pending (revents %#x)",
		       pfd.revents);
	T_ASSERT_OK(ivmc_accept(l, 0, &c));
	for (size_t i = 0; i < N_ECHO; i++)
		ping(c, 0x100 + i, buf, echo_sizes[i]);
	for (size_t i = 0; i < N_ECHO; i++)
		echo_one(c, buf, echo_sizes[i]);
	T_ASSERT_OK(ivmc_shutdown(c, SHUT_WR));
	T_ASSERT_EQ(t_wait(pid, 20000), 0);
	/* The connector closed: end of stream here too. */
	T_ASSERT_EQ(ivmc_recv(c, buf, 1, 0), 0);
	T_ASSERT_OK(ivmc_close(c));
	T_ASSERT_EQ(poll(&pfd, 1, 0), 0);
	nb_accept_check(l);
	T_ASSERT_OK(ivmc_listener_close(l));
}

/* Every option that opts_check() must refuse, for listen and connect. */
static void bad_opts(void)
{
	static const struct {
		const char *what;
		struct ivmc_opts o;
	} bad[] = {
		{ "ring_size 5000 (not a power of two)",
		  { .ring_size = 5000 } },
		{ "ring_size 4097", { .ring_size = 4097 } },
		{ "ring_size 2048 (too small)", { .ring_size = 2048 } },
		{ "ring_size 1 (too small)", { .ring_size = 1 } },
		{ "ring_size 2 GiB (too large)", { .ring_size = 1ul << 31 } },
		{ "ring_size 2^40 (too large)", { .ring_size = 1ul << 40 } },
		{ "flags IVMC_MORE", { .flags = IVMC_MORE } },
		{ "flags 0x80000000", { .flags = 0x80000000u } },
		{ "wait_mode -1", { .wait_mode = -1 } },
		{ "wait_mode 3", { .wait_mode = IVMC_WAIT_SLEEP + 1 } },
		{ "spin_ns too large", { .spin_ns = IVMC_SPIN_MAX_NS + 1 } },
		{ "n_allow_uids without a list", { .n_allow_uids = 1 } },
		{ "n_allow_gids without a list", { .n_allow_gids = 1 } },
	};
	struct ivmc_listener *l = NULL;
	struct ivmc_chan *c = NULL;
	char p[128];

	t_path(p, sizeof(p), "bad.sock");
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		int r = ivmc_listen(p, &bad[i].o, &l);

		if (r != -EINVAL)
			t_fail("ivmc_listen with %s: %d (%s), want -EINVAL",
			       bad[i].what, r, t_strerror(r));
		if (access(p, F_OK) == 0)
			t_fail("ivmc_listen with %s left %s behind",
			       bad[i].what, p);
		r = ivmc_connect(p, &bad[i].o, &c);
		if (r != -EINVAL)
			t_fail("ivmc_connect with %s: %d (%s), want -EINVAL",
			       bad[i].what, r, t_strerror(r));
	}
	/* Boundary values are fine. */
	{
		struct ivmc_opts ok = { .ring_size = 4096,
					.spin_ns = IVMC_SPIN_MAX_NS,
					.wait_mode = IVMC_WAIT_SLEEP };

		T_ASSERT_OK(ivmc_listen(p, &ok, &l));
		T_ASSERT_OK(ivmc_listener_close(l));
		ok.ring_size = 1u << 30;
		T_ASSERT_OK(ivmc_listen(p, &ok, &l));
		T_ASSERT_OK(ivmc_listener_close(l));
	}
}

/* ivmc_listen(path, opts, NULL) must refuse, not write through NULL. */
static void listen_null_out(void *arg)
{
	int r = ivmc_listen(arg, NULL, NULL);

	if (r != -EINVAL)
		t_fail("ivmc_listen(path, NULL, NULL): %d (%s), want -EINVAL",
		       r, t_strerror(r));
}

static void bad_args(void)
{
	struct ivmc_listener *l;
	struct ivmc_chan *c;
	char p[128], longp[200];
	int r;

	T_ASSERT_EQ(ivmc_listen(NULL, NULL, &l), -EINVAL);
	T_ASSERT_EQ(ivmc_listen("", NULL, &l), -EINVAL);
	T_ASSERT_EQ(ivmc_connect(NULL, NULL, &c), -EINVAL);
	T_ASSERT_EQ(ivmc_connect("", NULL, &c), -EINVAL);
	T_ASSERT_EQ(ivmc_accept(NULL, 0, &c), -EINVAL);
	T_ASSERT_EQ(ivmc_listener_fd(NULL), -EINVAL);
	T_ASSERT_EQ(ivmc_listener_close(NULL), -EINVAL);
	bad_opts();

	/* sun_path holds 107 characters and a NUL. */
	memset(longp, 'x', sizeof(longp));
	longp[0] = '/';
	longp[108] = 0;
	T_ASSERT_EQ(ivmc_listen(longp, NULL, &l), -ENAMETOOLONG);
	T_ASSERT_EQ(ivmc_connect(longp, NULL, &c), -ENAMETOOLONG);

	t_path(p, sizeof(p), "args.sock");
	T_ASSERT_OK(ivmc_listen(p, NULL, &l));
	T_ASSERT_EQ(ivmc_listen(p, NULL, &l), -EADDRINUSE);
	T_ASSERT_EQ(ivmc_connect(p, NULL, NULL), -EINVAL);
	T_ASSERT_EQ(ivmc_accept(l, 0, NULL), -EINVAL);
	T_ASSERT_EQ(ivmc_accept(l, IVMC_MORE, &c), -EINVAL);
	T_ASSERT_EQ(ivmc_accept(l, 0x100, &c), -EINVAL);
	T_ASSERT_OK(ivmc_listener_close(l));
	if (access(p, F_OK) == 0)
		t_fail("ivmc_listener_close() did not unlink %s", p);

	/* In a child: a crash here must not hide the other checks. */
	t_path(p, sizeof(p), "null-out.sock");
	r = t_wait(t_fork(listen_null_out, p), 5000);
	unlink(p);
	if (r != 0) {
		t_late_fail(
			"ivmc_listen(path, NULL, out = NULL) crashed or failed in a child (status %d); want -EINVAL",
			r);
	}
}

static void missing_listener(void)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct ivmc_chan *c;
	char p[128];
	int fd, r;

	t_path(p, sizeof(p), "nobody.sock");
	r = ivmc_connect(p, NULL, &c);
	if (r != -ENOENT && r != -ECONNREFUSED)
		t_fail("connect to a missing path: %d (%s)", r, t_strerror(r));

	/* A socket file nobody listens on. */
	fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	T_ASSERT(fd >= 0);
	strcpy(sa.sun_path, p);
	T_ASSERT(bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0);
	r = ivmc_connect(p, NULL, &c);
	if (r != -ECONNREFUSED)
		t_fail("connect to a bound, non-listening socket: %d (%s)", r,
		       t_strerror(r));
	close(fd);
	unlink(p);

	/* An abstract name nobody holds. */
	snprintf(p, sizeof(p), "@ivmc-t-missing-%d", (int)getpid());
	r = ivmc_connect(p, NULL, &c);
	if (r != -ENOENT && r != -ECONNREFUSED)
		t_fail("connect to a missing abstract name: %d (%s)", r,
		       t_strerror(r));
}

struct pump {
	struct ivmc_chan *c;
	uint64_t seed;
	size_t n;
};

static void *pump_thread(void *arg)
{
	static uint8_t buf[3 * 65536];
	struct pump *pu = arg;

	t_fill(pu->seed, 0, buf, pu->n);
	t_send_all(pu->c, buf, pu->n);
	return NULL;
}

/* n bytes from -> to, with a sender thread; the ring may be smaller. */
static void stream_across(struct ivmc_chan *from, struct ivmc_chan *to,
			  uint64_t seed, size_t n)
{
	static uint8_t buf[3 * 65536];
	struct pump pu = { from, seed, n };
	pthread_t t;

	T_ASSERT(pthread_create(&t, NULL, pump_thread, &pu) == 0);
	t_recv_all(to, buf, n);
	T_ASSERT(pthread_join(t, NULL) == 0);
	if (t_verify(seed, 0, buf, n))
		t_fail("stream of %zu bytes arrived wrong", n);
}

/* Listener ring lrs, connector wish crs: both ends must report want. */
static void ring_size_case(size_t lrs, size_t crs, unsigned int want)
{
	struct ivmc_opts lo = { .ring_size = lrs }, co = { .ring_size = crs };
	struct ivmc_chan *a, *b;
	struct ivmc_stats sa, sb;
	size_t n = 3 * (size_t)want;
	char p[128];

	if (n > 3 * 65536)
		n = 3 * 65536;
	t_path(p, sizeof(p), "rs.sock");
	t_api_pair(p, &lo, &co, &a, &b);
	T_ASSERT_OK(ivmc_stats(a, &sa));
	T_ASSERT_OK(ivmc_stats(b, &sb));
	if (sa.ring_size != want || sb.ring_size != want)
		t_fail("listener ring %zu, connector wish %zu: ring_size %u/%u, want %u",
		       lrs, crs, sa.ring_size, sb.ring_size, want);
	/* More than the ring holds, both ways: the stream wraps it. */
	stream_across(a, b, 0x300 + want, n);
	stream_across(b, a, 0x400 + want, n);
	T_ASSERT_OK(ivmc_close(a));
	T_ASSERT_OK(ivmc_close(b));
}

/* The connector's size is a wish, granted up to the listener's size (a
 * peer must not make the listener map more than it chose to offer). */
static void ring_sizes(void)
{
	ring_size_case(0, 0, IVMC_RING_DEFAULT);
	ring_size_case(0, 16384, 16384);
	ring_size_case(8192, 0, 8192);
	ring_size_case(65536, 4096, 4096);
	ring_size_case(8192, 65536, 8192);
	ring_size_case(0, 1u << 20, IVMC_RING_DEFAULT);
}

/* A listener (or connector) with IVMC_NONBLOCK in opts gives channels that
 * start non-blocking (that side only). */
static void nonblock_opts(void)
{
	struct ivmc_opts nb = { .flags = IVMC_NONBLOCK, .ring_size = 4096 };
	struct ivmc_opts bl = { .ring_size = 4096 };
	struct ivmc_chan *a, *b;
	char p[128], x = 'x';

	t_path(p, sizeof(p), "nb.sock");
	t_api_pair(p, &nb, &bl, &a, &b);
	T_ASSERT_EQ(ivmc_recv(a, &x, 1, 0), -EAGAIN);
	T_ASSERT_OK(ivmc_close(a));
	T_ASSERT_OK(ivmc_close(b));
	t_api_pair(p, &bl, &nb, &a, &b);
	T_ASSERT_EQ(ivmc_recv(b, &x, 1, 0), -EAGAIN);
	T_ASSERT_EQ(ivmc_send(a, &x, 1, 0), 1);
	T_ASSERT_EQ(ivmc_recv(b, &x, 1, 0), 1);
	T_ASSERT_OK(ivmc_close(a));
	T_ASSERT_OK(ivmc_close(b));
}

/* Abstract names: taken while held, free again after close, and a
 * channel through one works like through a path. */
static void abstract_names(void)
{
	struct ivmc_listener *l, *l2;
	char p[128];

	snprintf(p, sizeof(p), "@ivmc-t-abs-%d-%llx", (int)getpid(),
		 (unsigned long long)t_now_ns());
	T_ASSERT_OK(ivmc_listen(p, NULL, &l));
	T_ASSERT_EQ(ivmc_listen(p, NULL, &l2), -EADDRINUSE);
	T_ASSERT_OK(ivmc_listener_close(l));
	T_ASSERT_OK(ivmc_listen(p, NULL, &l));
	T_ASSERT_OK(ivmc_listener_close(l));
	echo_test(p);
}

int main(void)
{
	int fds0;

	t_alarm(50);
	t_tmpdir();
	fds0 = t_count_fds();

	bad_args();
	missing_listener();
	t_path(path, sizeof(path), "echo.sock");
	echo_test(path);
	if (access(path, F_OK) == 0)
		t_fail("%s still exists after ivmc_listener_close()", path);
	abstract_names();
	ring_sizes();
	nonblock_opts();

	T_ASSERT_EQ(t_count_fds(), fds0);
	return t_late_failures ? T_FAIL : T_PASS;
}
