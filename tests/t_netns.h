/* SPDX-License-Identifier: MIT */
/*
 * Description: helpers for the control-plane tests that build network
 * namespaces with ip(8): shell commands; namespaces with unique names
 * (the pid) that the process which made them removes at exit and on
 * SIGTERM/SIGINT/SIGALRM, together with the children it started and its
 * ivmcd; children that run inside a namespace; lock-step pipes between
 * processes; a verified request/reply conversation over an ivmc_tcp()
 * handle or a plain socket; and ivmcctl's output.
 *
 * Only 10.x addresses, and only on links the test made. Links live in
 * the test's own namespaces where possible: they die with them.
 */
#ifndef IVMC_TESTS_T_NETNS_H
#define IVMC_TESTS_T_NETNS_H

#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <stdarg.h>
#include <sys/mount.h>
#include <sys/prctl.h>

#include "t_ctl.h"

#define T_NS_MAX     8
#define T_NS_KIDS    64
#define T_NS_LINKS   4
#define T_NS_DIR     "/run/netns"
#define T_CHUNK	     1000
#define T_SEED_C2S   0xc25ull /* client to server stream */
#define T_SEED_S2C   0x52cull /* server to client stream */
#define T_KID_ALARM  40	      /* seconds a child may live */

static struct {
	pid_t owner;
	int nns, nkids, nlinks;
	char name[T_NS_MAX][40];
	char path[T_NS_MAX][64];
	pid_t kid[T_NS_KIDS];
	int kst[T_NS_KIDS]; /* exit status once reaped early */
	char link[T_NS_LINKS][16];
} t_ns;

/* Kill what we started and remove our namespaces (what `ip netns del`
 * does; veth pairs and bridges inside die with them). Async-signal-safe;
 * only the process that made them does anything. */
static inline void t_ns_remove(void)
{
	if (!t_ns.owner || getpid() != t_ns.owner)
		return;
	for (int i = 0; i < t_ns.nkids; i++) /* not the reaped: pids recycle */
		if (t_ns.kid[i] > 0 && t_ns.kst[i] == INT32_MIN)
			kill(t_ns.kid[i], SIGKILL);
	if (t_dpid > 0)
		kill(t_dpid, SIGKILL);
	for (int i = 0; i < t_ns.nns; i++) {
		umount2(t_ns.path[i], MNT_DETACH);
		unlink(t_ns.path[i]);
	}
	t_ns.nns = 0;
}

static inline void t_ns_on_signal(int sig)
{
	static const char msg[] = "timeout or killed: namespaces removed\n";
	ssize_t r;

	(void)sig;
	t_ns_remove();
	r = write(STDERR_FILENO, msg, sizeof(msg) - 1);
	(void)r;
	_exit(T_FAIL);
}

static inline int t_sh_rc(const char *fmt, ...)
	__attribute__((format(printf, 1, 2)));

/* Run a shell command; its exit status (-1: it did not run or died). */
static inline int t_sh_rc(const char *fmt, ...)
{
	char cmd[1024];
	va_list ap;
	int r;

	va_start(ap, fmt);
	vsnprintf(cmd, sizeof(cmd), fmt, ap);
	va_end(ap);
	fflush(stdout);
	fflush(stderr);
	r = system(cmd);
	return r != -1 && WIFEXITED(r) ? WEXITSTATUS(r) : -1;
}

/* Run a shell command; fail the test unless it exits 0. */
#define t_sh(...)                                                   \
	do {                                                        \
		char t_cmd_[1024];                                  \
		snprintf(t_cmd_, sizeof(t_cmd_), __VA_ARGS__);      \
		if (t_sh_rc("%s", t_cmd_) != 0)                     \
			t_fail("command failed: %s", t_cmd_);       \
	} while (0)

/* The links we made in our own namespace (not in one of ours): removed at
 * a normal exit; on a signal they die with the namespace of their peer. */
static inline void t_ns_exit(void)
{
	if (!t_ns.owner || getpid() != t_ns.owner)
		return;
	t_ns_remove();
	for (int i = 0; i < t_ns.nkids; i++)
		if (t_ns.kid[i] > 0 && t_ns.kst[i] == INT32_MIN)
			waitpid(t_ns.kid[i], NULL, 0);
	t_ns.nkids = 0;
	if (t_dpid > 0)
		waitpid(t_dpid, NULL, 0);
	t_dpid = 0;
	for (int i = 0; i < t_ns.nlinks; i++)
		t_sh_rc("ip link del %s 2>/dev/null", t_ns.link[i]);
	t_ns.nlinks = 0;
}

/* Start of every netns test: root and ip(8) or skip; cleanup at exit and
 * on signals; the whole test bounded by secs. The control connection may
 * take up to a second to say hello on a loaded machine. */
static inline void t_ns_setup(unsigned int secs)
{
	struct sigaction sa;

	if (geteuid() != 0)
		t_skip("needs root (ip netns, setns, a private ivmcd)");
	if (system("ip -V >/dev/null 2>&1") != 0)
		t_skip("needs ip(8) from iproute2");
	t_ns.owner = getpid();
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = t_ns_on_signal;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGALRM, &sa, NULL);
	atexit(t_ns_exit);
	alarm(secs);
	setenv("IVMC_CTL_BUDGET_US", "1000000", 1);
	setvbuf(stdout, NULL, _IOLBF, 0);
}

/* A new namespace "ivmc-TAG-PID" with lo up. Returns its name. */
static inline const char *t_ns_add(const char *tag)
{
	int i = t_ns.nns;

	if (i == T_NS_MAX)
		t_fail("too many namespaces");
	snprintf(t_ns.name[i], sizeof(t_ns.name[i]), "ivmc-%s-%d", tag,
		 (int)getpid());
	snprintf(t_ns.path[i], sizeof(t_ns.path[i]), T_NS_DIR "/ivmc-%s-%d",
		 tag, (int)getpid());
	t_ns.nns++; /* before the command: a half-made one is removed too */
	t_sh("ip netns add %s", t_ns.name[i]);
	t_sh("ip -n %s link set lo up", t_ns.name[i]);
	return t_ns.name[i];
}

/* Remember a link of our own namespace to delete at exit. */
static inline void t_ns_link(const char *ifname)
{
	if (t_ns.nlinks == T_NS_LINKS)
		t_fail("too many links");
	snprintf(t_ns.link[t_ns.nlinks++], sizeof(t_ns.link[0]), "%s", ifname);
}

/* Move this process into namespace name (single-threaded callers). */
static inline void t_ns_enter(const char *name)
{
	char path[128];
	int fd;

	snprintf(path, sizeof(path), T_NS_DIR "/%s", name);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0 || setns(fd, CLONE_NEWNET))
		t_fail("setns %s: %s", path, strerror(errno));
	close(fd);
}

/* Fork a child that enters namespace ns (NULL: stays), runs fn(arg) and
 * exits 0; it dies with us and within T_KID_ALARM seconds. Returns its
 * pid, which the cleanup kills if still running. */
static inline pid_t t_ns_fork(const char *ns, void (*fn)(void *), void *arg)
{
	pid_t parent = getpid(), pid;

	if (t_ns.nkids == T_NS_KIDS)
		t_fail("too many children");
	fflush(stdout);
	fflush(stderr);
	pid = fork();
	if (pid < 0)
		t_fail("fork: %s", strerror(errno));
	if (pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (getppid() != parent)
			_exit(T_FAIL);
		alarm(T_KID_ALARM);
		if (ns)
			t_ns_enter(ns);
		fn(arg);
		fflush(stdout);
		fflush(stderr);
		_exit(0);
	}
	t_ns.kst[t_ns.nkids] = INT32_MIN;
	t_ns.kid[t_ns.nkids++] = pid;
	return pid;
}

/* Have the cleanup kill (and t_ns_wait() reap) a child we forked
 * ourselves. */
static inline void t_ns_adopt(pid_t pid)
{
	if (t_ns.nkids == T_NS_KIDS)
		t_fail("too many children");
	t_ns.kst[t_ns.nkids] = INT32_MIN;
	t_ns.kid[t_ns.nkids++] = pid;
}

/* In the parent: fail at once when a child has failed (rather than wait
 * for what it will never send); remember the ones that exited 0. */
static inline void t_ns_check_kids(void)
{
	if (getpid() != t_ns.owner)
		return;
	for (int i = 0; i < t_ns.nkids; i++) {
		int st;

		if (t_ns.kid[i] <= 0 || t_ns.kst[i] != INT32_MIN ||
		    waitpid(t_ns.kid[i], &st, WNOHANG) != t_ns.kid[i])
			continue;
		t_ns.kst[i] = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
		if (t_ns.kst[i] != 0)
			t_fail("child %d failed (wait status 0x%x)",
			       (int)t_ns.kid[i], st);
	}
}

/* Wait for a child of t_ns_fork() (at most ms); its exit status, -1 on
 * timeout or signal. */
static inline int t_ns_wait(pid_t pid, int ms)
{
	int st = INT32_MIN;

	for (int i = 0; i < t_ns.nkids; i++) {
		if (t_ns.kid[i] != pid)
			continue;
		st = t_ns.kst[i];
		t_ns.kid[i] = 0;
	}
	return st != INT32_MIN ? st : t_wait(pid, ms);
}

/* SIGKILL a child of t_ns_fork() and reap it. */
static inline void t_ns_kill(pid_t pid)
{
	for (int i = 0; i < t_ns.nkids; i++) {
		if (t_ns.kid[i] != pid)
			continue;
		t_ns.kid[i] = 0;
		if (t_ns.kst[i] == INT32_MIN) {
			kill(pid, SIGKILL);
			waitpid(pid, NULL, 0);
		}
	}
}

/* Stop our ivmcd (SIGTERM); its wait status. */
static inline int t_ns_daemon_stop(void)
{
	int st = t_daemon_stop(t_dpid);

	t_dpid = 0;
	return st;
}

/* ---- lock-step pipes ------------------------------------------------------ */

struct t_pipe {
	int rd, wr;
};

static inline void t_pipe_make(struct t_pipe *p)
{
	int fd[2];

	if (pipe2(fd, O_CLOEXEC))
		t_fail("pipe: %s", strerror(errno));
	p->rd = fd[0];
	p->wr = fd[1];
}

static inline void t_put(const struct t_pipe *p, const void *buf, size_t n)
{
	if (write(p->wr, buf, n) != (ssize_t)n)
		t_fail("pipe write: %s", strerror(errno));
}

/* Read exactly n bytes within ms, or fail (end of file too). */
static inline void t_get(const struct t_pipe *p, void *buf, size_t n, int ms)
{
	size_t got = 0;
	uint64_t end = t_now_ns() + (uint64_t)ms * 1000000ull;

	while (got < n) {
		struct pollfd pf = { p->rd, POLLIN, 0 };
		int64_t left = (int64_t)(end - t_now_ns()) / 1000000;
		ssize_t r;

		t_ns_check_kids();
		if (left < 0)
			t_fail("pipe read: nothing within %d ms", ms);
		if (poll(&pf, 1, left > 50 ? 50 : (int)left) == 0)
			continue;
		r = read(p->rd, (char *)buf + got, n - got);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			t_fail("pipe read: %s", r ? strerror(errno) : "end of file");
		got += (size_t)r;
	}
}

/* ---- sockets ---------------------------------------------------------------- */

static inline struct sockaddr_in t_sin(const char *ip, uint16_t port)
{
	struct sockaddr_in a = { .sin_family = AF_INET,
				 .sin_port = htons(port) };

	if (inet_pton(AF_INET, ip, &a.sin_addr) != 1)
		t_fail("bad address %s", ip);
	return a;
}

/* A listening TCP socket on ip:port (port 0: any); *port gets it. */
static inline int t_listen_on(const char *ip, uint16_t *port)
{
	struct sockaddr_in a = t_sin(ip, *port);
	socklen_t len = sizeof(a);
	int one = 1, fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) ||
	    bind(fd, (struct sockaddr *)&a, len) || listen(fd, 16) ||
	    getsockname(fd, (struct sockaddr *)&a, &len))
		t_fail("listen on %s:%u: %s", ip, *port, strerror(errno));
	*port = ntohs(a.sin_port);
	return fd;
}

/* Connect to ip:port, from src:sport when src is not NULL (sport 0: any). */
static inline int t_connect_to(const char *ip, uint16_t port, const char *src,
			       uint16_t sport)
{
	struct sockaddr_in a = t_sin(ip, port);
	int one = 1, fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	if (fd < 0)
		t_fail("socket: %s", strerror(errno));
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	if (src) {
		struct sockaddr_in s = t_sin(src, sport);

		setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
		/* A port just freed by an abortive close may take a moment to
		 * be free for bind(): retry briefly. */
		for (int i = 0; bind(fd, (struct sockaddr *)&s, sizeof(s)); i++) {
			if (errno != EADDRINUSE || i == 100)
				t_fail("bind %s:%u: %s", src, sport,
				       strerror(errno));
			usleep(20000);
		}
	}
	/* A fresh veth may take a moment to carry packets: retry briefly. */
	for (int i = 0;; i++) {
		if (!connect(fd, (struct sockaddr *)&a, sizeof(a)))
			return fd;
		if (i == 100 || (errno != ECONNREFUSED && errno != ENETUNREACH &&
				 errno != EHOSTUNREACH && errno != ETIMEDOUT))
			t_fail("connect %s:%u: %s", ip, port, strerror(errno));
		usleep(20000);
	}
}

static inline int t_accept(int lfd)
{
	int one = 1, fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);

	if (fd < 0)
		t_fail("accept: %s", strerror(errno));
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	return fd;
}

static inline uint16_t t_local_port(int fd)
{
	struct sockaddr_in a;
	socklen_t len = sizeof(a);

	if (getsockname(fd, (struct sockaddr *)&a, &len))
		t_fail("getsockname: %s", strerror(errno));
	return ntohs(a.sin_port);
}

/* ---- a verified conversation ---------------------------------------------- */

/* One end: an ivmc_tcp() handle, or (h NULL) a plain socket. seed names
 * the connection's two streams, so that bytes of another connection are
 * seen as corrupt. */
struct t_end {
	struct ivmc_chan *h;
	int fd;
	uint64_t seed;
};

static inline void t_end_send(const struct t_end *e, const void *buf, size_t n)
{
	if (e->h) {
		t_send_all(e->h, buf, n);
		return;
	}
	for (size_t off = 0; off < n;) {
		ssize_t r = send(e->fd, (const char *)buf + off, n - off,
				 MSG_NOSIGNAL);

		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			t_fail("send: %s", strerror(errno));
		off += (size_t)r;
	}
}

/* Exactly n bytes; 0 at a clean end of stream before any byte. */
static inline size_t t_end_recv(const struct t_end *e, void *buf, size_t n)
{
	size_t off = 0;

	while (off < n) {
		ssize_t r;

		if (e->h) {
			r = ivmc_recv(e->h, (char *)buf + off, n - off,
				      IVMC_WAITALL);
			if (r == -EINTR)
				continue;
			if (r < 0)
				t_fail("ivmc_recv: %s", t_strerror(r));
		} else {
			r = recv(e->fd, (char *)buf + off, n - off, MSG_WAITALL);
			if (r < 0 && errno == EINTR)
				continue;
			if (r < 0)
				t_fail("recv: %s", strerror(errno));
		}
		if (r == 0)
			break;
		off += (size_t)r;
	}
	if (off && off != n)
		t_fail("stream ended after %zu of %zu bytes", off, n);
	return off;
}

/* Client side: rounds of one chunk there, one chunk back, both verified
 * at the stream offset *off. */
static inline void t_talk(const struct t_end *e, uint64_t *off, int rounds)
{
	char buf[T_CHUNK];

	for (int i = 0; i < rounds; i++) {
		t_fill(T_SEED_C2S + e->seed, *off, buf, T_CHUNK);
		t_end_send(e, buf, T_CHUNK);
		if (t_end_recv(e, buf, T_CHUNK) != T_CHUNK)
			t_fail("server hung up at %llu",
			       (unsigned long long)*off);
		if (t_verify(T_SEED_S2C + e->seed, *off, buf, T_CHUNK))
			t_fail("server to client corrupt at %llu (bytes of "
			       "another connection?)", (unsigned long long)*off);
		*off += T_CHUNK;
	}
}

/* Server side: answer every chunk until the client's end of stream, then
 * end ours. Returns the bytes taken in. */
static inline uint64_t t_serve(const struct t_end *e)
{
	char buf[T_CHUNK];
	uint64_t off = 0;

	for (int i = 0; i < 1000000; i++) {
		if (!t_end_recv(e, buf, T_CHUNK))
			break;
		if (t_verify(T_SEED_C2S + e->seed, off, buf, T_CHUNK))
			t_fail("client to server corrupt at %llu (bytes of "
			       "another connection?)", (unsigned long long)off);
		t_fill(T_SEED_S2C + e->seed, off, buf, T_CHUNK);
		t_end_send(e, buf, T_CHUNK);
		off += T_CHUNK;
	}
	if (e->h)
		T_ASSERT_OK(ivmc_shutdown(e->h, SHUT_WR));
	else if (shutdown(e->fd, SHUT_WR))
		t_fail("shutdown: %s", strerror(errno));
	return off;
}

/* Client side, at the end: end our stream, see the server's end. */
static inline void t_talk_end(const struct t_end *e)
{
	char c;

	if (e->h)
		T_ASSERT_OK(ivmc_shutdown(e->h, SHUT_WR));
	else if (shutdown(e->fd, SHUT_WR))
		t_fail("shutdown: %s", strerror(errno));
	if (t_end_recv(e, &c, 1) != 0)
		t_fail("bytes after the server's last answer");
}

/* Talk until e's handle is no longer pending (bounded in rounds and
 * time); its state. */
static inline int t_talk_settle(const struct t_end *e, uint64_t *off,
				int max_ms)
{
	uint64_t end = t_now_ns() + (uint64_t)max_ms * 1000000ull;
	int st = 0;

	if (!e->h)
		return INT32_MIN;
	for (int i = 0; i < 100000 && t_now_ns() < end; i++) {
		st = ivmc_tcp_state(e->h);
		if (st != 0)
			break;
		t_talk(e, off, 1);
		if (i > 50)
			usleep(1000);
	}
	return st;
}

/* What an end says about itself. state: INT32_MIN for a plain socket. */
struct t_report {
	int state, tcp_state, on_ring;
	int first; /* state right after ivmc_tcp() */
	uint64_t sent, received;
};

static inline void t_report_of(const struct t_end *e, int first,
			       struct t_report *r)
{
	struct ivmc_stats st;

	memset(r, 0, sizeof(*r));
	r->first = first;
	if (!e->h) {
		r->state = INT32_MIN;
		return;
	}
	r->state = ivmc_tcp_state(e->h);
	T_ASSERT_OK(ivmc_stats(e->h, &st));
	r->tcp_state = st.tcp_state;
	r->on_ring = (int)st.on_ring;
	r->sent = st.bytes_sent;
	r->received = st.bytes_received;
}

/*
 * A connection between a server and a client process, driven by the
 * parent over pipes:
 *
 *   server: listen on listen_ip (or ip):want_port and on 0.0.0.0:any,
 *	     announce both (listeners), send the two ports up; accept.
 *   client: connect to ip:port (from src:sport if src).
 *   T_CONV_CLIENT_FIRST: the client wraps and sends T_CONV_PRE chunks on
 *	     TCP, then tells the server (c2s), which wraps and answers.
 *   T_CONV_GATED: each end wraps when the parent says so (a byte down)
 *	     and says "w" up when it has; the client talks when told.
 *   then:   the client talks until its handle settles (settle_ms), then
 *	     T_CONV_ROUNDS, reports up, waits for a byte, talks
 *	     T_CONV_ROUNDS more, ends the stream and reports again. The
 *	     server answers until the end, reports up (after "w" in gated
 *	     mode), withdraws the wildcard listener ("u" up, if listeners)
 *	     and waits for a byte to quit.
 * *_plain: that end never calls ivmc_tcp() (a peer without ivmc).
 */
#define T_CONV_PRE    5
#define T_CONV_ROUNDS 200
enum { T_CONV_CLIENT_FIRST, T_CONV_GATED };

struct t_conv {
	struct t_pipe srv_up, srv_down, cli_up, cli_down, c2s;
	const char *ip, *listen_ip, *src;
	uint16_t want_port, sport;
	uint16_t port, port2; /* the server's, set by the parent */
	uint64_t seed;
	int mode, settle_ms;
	bool listeners, srv_plain, cli_plain;
	/* The client's channel has a plain TCP end behind it (a hostile peer
	 * VM paired it): that end's FIN reads as its death, so ivmc_close()
	 * may say -ECONNABORTED (closed all the same). */
	bool cli_close_aborts;
};

static inline void t_conv_init(struct t_conv *c, const char *ip, int mode)
{
	memset(c, 0, sizeof(*c));
	t_pipe_make(&c->srv_up);
	t_pipe_make(&c->srv_down);
	t_pipe_make(&c->cli_up);
	t_pipe_make(&c->cli_down);
	t_pipe_make(&c->c2s);
	c->ip = ip;
	c->mode = mode;
	c->settle_ms = 10000;
}

static inline void t_conv_close(struct t_conv *c)
{
	struct t_pipe *p[] = { &c->srv_up, &c->srv_down, &c->cli_up,
			       &c->cli_down, &c->c2s };

	for (size_t i = 0; i < sizeof(p) / sizeof(p[0]); i++) {
		close(p[i]->rd);
		close(p[i]->wr);
	}
}

static inline void t_conv_server(void *arg)
{
	struct t_conv *c = arg;
	struct t_end e = { NULL, -1, c->seed };
	struct t_report r;
	uint16_t p1 = c->want_port, p2 = 0;
	int l1 = t_listen_on(c->listen_ip ? c->listen_ip : c->ip, &p1);
	int l2 = t_listen_on("0.0.0.0", &p2), first = INT32_MIN;
	char go;

	if (c->listeners) {
		T_ASSERT_OK(ivmc_tcp_listen(l1));
		T_ASSERT_OK(ivmc_tcp_listen(l2));
	}
	t_put(&c->srv_up, &p1, sizeof(p1));
	t_put(&c->srv_up, &p2, sizeof(p2));
	e.fd = t_accept(l1);
	if (c->mode == T_CONV_CLIENT_FIRST)
		t_get(&c->c2s, &go, 1, 20000); /* the client has sent PRE */
	else
		t_get(&c->srv_down, &go, 1, 20000);
	if (!c->srv_plain) {
		T_ASSERT_OK(ivmc_tcp(e.fd, NULL, &e.h));
		first = ivmc_tcp_state(e.h);
	}
	if (c->mode == T_CONV_GATED)
		t_put(&c->srv_up, "w", 1);
	t_serve(&e);
	t_report_of(&e, first, &r);
	t_put(&c->srv_up, &r, sizeof(r));
	if (c->listeners) {
		T_ASSERT_OK(ivmc_tcp_unlisten(l2));
		T_ASSERT_EQ(ivmc_tcp_unlisten(l2), -ENOENT);
		t_put(&c->srv_up, "u", 1);
	}
	t_get(&c->srv_down, &go, 1, 30000);
	if (e.h)
		T_ASSERT_OK(ivmc_close(e.h));
	close(e.fd);
	close(l1);
	close(l2);
}

static inline void t_conv_client(void *arg)
{
	struct t_conv *c = arg;
	struct t_end e = { NULL, -1, c->seed };
	struct t_report r;
	char buf[T_CHUNK], go;
	uint64_t off = 0;
	int st, first = INT32_MIN;

	e.fd = t_connect_to(c->ip, c->port, c->src, c->sport);
	if (c->mode == T_CONV_GATED)
		t_get(&c->cli_down, &go, 1, 20000);
	if (!c->cli_plain) {
		T_ASSERT_OK(ivmc_tcp(e.fd, NULL, &e.h));
		first = ivmc_tcp_state(e.h);
	}
	if (c->mode == T_CONV_GATED) {
		t_put(&c->cli_up, "w", 1);
		t_get(&c->cli_down, &go, 1, 20000);
	} else {
		/* The server has not even registered: all of this is TCP. */
		for (int i = 0; i < T_CONV_PRE; i++) {
			t_fill(T_SEED_C2S + e.seed, (uint64_t)i * T_CHUNK, buf,
			       T_CHUNK);
			t_end_send(&e, buf, T_CHUNK);
		}
		if (e.h && first == 0 && ivmc_tcp_state(e.h) != 0)
			t_fail("attached before the server registered: %d",
			       ivmc_tcp_state(e.h));
		t_put(&c->c2s, "g", 1);
		for (int i = 0; i < T_CONV_PRE; i++)
			if (t_end_recv(&e, buf, T_CHUNK) != T_CHUNK ||
			    t_verify(T_SEED_S2C + e.seed, (uint64_t)i * T_CHUNK,
				     buf, T_CHUNK))
				t_fail("reply %d before the attach is wrong", i);
		off = T_CONV_PRE * T_CHUNK;
	}
	st = t_talk_settle(&e, &off, c->settle_ms);
	t_talk(&e, &off, T_CONV_ROUNDS);
	t_report_of(&e, first, &r);
	r.state = st;
	t_put(&c->cli_up, &r, sizeof(r));
	t_get(&c->cli_down, &go, 1, 30000);
	t_talk(&e, &off, T_CONV_ROUNDS);
	t_talk_end(&e);
	t_report_of(&e, first, &r);
	t_put(&c->cli_up, &r, sizeof(r));
	if (e.h) {
		int err = ivmc_close(e.h);

		if (err && !(c->cli_close_aborts && err == -ECONNABORTED))
			t_fail("ivmc_close: %s", t_strerror(err));
	}
	close(e.fd);
}

/* Fork the server into ns_srv and take its ports. */
static inline pid_t t_conv_start_server(struct t_conv *c, const char *ns_srv)
{
	pid_t pid = t_ns_fork(ns_srv, t_conv_server, c);

	t_get(&c->srv_up, &c->port, sizeof(c->port), 10000);
	t_get(&c->srv_up, &c->port2, sizeof(c->port2), 10000);
	return pid;
}

/* Run n client-first conversations to their end at once: server i in
 * ns_srv[i], client i in ns_cli[i]; their final reports in cr[i], sr[i]. */
static inline void t_conv_run(struct t_conv *c, int n,
			      const char *const *ns_srv,
			      const char *const *ns_cli, struct t_report *cr,
			      struct t_report *sr)
{
	pid_t sp[8], cp[8];

	if (n > 8)
		t_fail("t_conv_run: %d conversations, 8 at most", n);
	for (int i = 0; i < n; i++)
		sp[i] = t_conv_start_server(&c[i], ns_srv[i]);
	for (int i = 0; i < n; i++)
		cp[i] = t_ns_fork(ns_cli[i], t_conv_client, &c[i]);
	for (int i = 0; i < n; i++) {
		t_get(&c[i].cli_up, &cr[i], sizeof(cr[i]), 20000);
		t_put(&c[i].cli_down, "g", 1);
		t_get(&c[i].cli_up, &cr[i], sizeof(cr[i]), 20000);
		t_get(&c[i].srv_up, &sr[i], sizeof(sr[i]), 20000);
		if (c[i].listeners) {
			char u;

			t_get(&c[i].srv_up, &u, 1, 10000);
		}
		t_put(&c[i].srv_down, "q", 1);
	}
	for (int i = 0; i < n; i++) {
		T_ASSERT_EQ(t_ns_wait(cp[i], 20000), 0);
		T_ASSERT_EQ(t_ns_wait(sp[i], 20000), 0);
		t_conv_close(&c[i]);
	}
}

/* Join namespaces a and b with a veth pair (v0 in a, v1 in b), ip_a and
 * ip_b on it (/24), both up. */
static inline void t_ns_veth(const char *a, const char *ip_a, const char *b,
			     const char *ip_b)
{
	t_sh("ip -n %s link add v0 type veth peer name v1 netns %s", a, b);
	t_sh("ip -n %s addr add %s/24 dev v0 && ip -n %s link set v0 up", a,
	     ip_a, a);
	t_sh("ip -n %s addr add %s/24 dev v1 && ip -n %s link set v1 up", b,
	     ip_b, b);
}

/* Both ends on the ring, every byte accounted for. */
static inline void t_conv_expect_attached(const struct t_report *cr,
					  const struct t_report *sr,
					  const char *what)
{
	if (cr->state != 1 || sr->state != 1)
		t_fail("%s: not attached: client %d (%s), server %d (%s)", what,
		       cr->state, t_strerror(cr->state), sr->state,
		       t_strerror(sr->state));
	T_ASSERT_EQ(cr->on_ring, 3);
	T_ASSERT_EQ(sr->on_ring, 3);
	T_ASSERT_EQ(cr->sent, cr->received);
	T_ASSERT_EQ(sr->received, cr->sent);
	T_ASSERT_EQ(sr->sent, cr->received);
}

/* ---- ivmcctl ------------------------------------------------------------------ */

/* In the JSON status, the channel objects that name both netns a and b
 * (one per end), with both directions on the ring. Returns how many. */
static inline int t_json_chans_between(const char *json, const char *a,
				       const char *b)
{
	const char *p = strstr(json, "\"channels\":[");
	char na[96], nb[96];
	int n = 0;

	if (!p)
		t_fail("no channels in the status: %s", json);
	snprintf(na, sizeof(na), "\"netns\":\"%s\"", a);
	snprintf(nb, sizeof(nb), "\"netns\":\"%s\"", b);
	while ((p = strstr(p, "{\"id\":"))) {
		const char *next = strstr(p + 1, "{\"id\":");
		const char *end = next ? next : p + strlen(p);
		const char *x = strstr(p, na), *y = strstr(p, nb);
		const char *m1 = strstr(p, "\"a_to_b\":{\"mode\":\"ring\"");
		const char *m2 = strstr(p, "\"b_to_a\":{\"mode\":\"ring\"");

		if (!strcmp(a, b) && x) /* one namespace: both ends name it */
			y = strstr(x + 1, na);
		if (x && x < end && y && y < end && m1 && m1 < end && m2 &&
		    m2 < end)
			n++;
		p = end;
		if (!next)
			break;
	}
	return n;
}

/* Poll the JSON status until it has no channel left and, if all, no
 * listener and no client but the query itself: the daemon sees
 * processes go in its own time. */
static inline void t_ns_expect_none_left(bool all)
{
	static char out[65536];

	for (int i = 0; i < 300; i++) {
		t_ivmcctl(out, sizeof(out), "--json status");
		if (strstr(out, "\"channels\":[]") &&
		    (!all || (strstr(out, "\"listeners\":[]") &&
			      strstr(out, "\"clients\":1,"))))
			return;
		usleep(10000);
	}
	t_fail("channels, listeners or clients left after their processes: "
	       "%s", out);
}

/* Does line-oriented text have a line containing both s1 and s2? */
static inline bool t_has_line(const char *text, const char *s1, const char *s2)
{
	const char *p = text;

	while (p && *p) {
		const char *nl = strchr(p, '\n');
		size_t len = nl ? (size_t)(nl - p) : strlen(p);
		char line[512];

		if (len >= sizeof(line))
			len = sizeof(line) - 1;
		memcpy(line, p, len);
		line[len] = 0;
		if (strstr(line, s1) && (!s2 || strstr(line, s2)))
			return true;
		p = nl ? nl + 1 : NULL;
	}
	return false;
}

#endif
