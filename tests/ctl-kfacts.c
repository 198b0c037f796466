/* SPDX-License-Identifier: MIT */
/*
 * Description: ivmcd's facts from the kernel (tools/ivmcd/kfacts.c), as
 * root, on real sockets. Loopback pairs over IPv4, IPv6 and both mixes of
 * IPv4 with a dual-stack socket give mirrored 4-tuples (v4 equal to
 * v4-mapped), one netns and distinct cookies; listeners, UDP, unix, MPTCP,
 * pipes and unconnected or half-closed TCP give their errors. Then a named
 * netns joined by a veth pair: a server inside it hands its accepted socket
 * over SCM_RIGHTS, and both ends must show the other netns, the right local
 * addresses, names, and sock_diag answers that turn to "no" after a close
 * or with a wrong cookie or netns. Last, SO_PEERPIDFD on a socketpair.
 */
#include "../tools/ivmcd/kfacts.c"

#include <signal.h>
#include <stdarg.h>
#include <sys/mount.h>
#include <sys/utsname.h>
#include <sys/wait.h>

#include "helpers.h"

#ifndef IPPROTO_MPTCP
#define IPPROTO_MPTCP 262
#endif

#define MAX_LOCAL 64

static pid_t main_pid, server_pid;
static char ns_name[32], ns_path[64];
static volatile sig_atomic_t ns_made;
static uint64_t own_ino;
static int own_nsfd;

/* Poll expr every 10 ms for up to 5 s; true once it holds. */
#define WAIT_UNTIL(expr)                                            \
	({                                                          \
		bool ok_ = false;                                   \
		for (int i_ = 0; i_ < 500 && !(ok_ = (expr)); i_++) \
			usleep(10000);                              \
		ok_;                                                \
	})

/* ---- sockets ------------------------------------------------------------ */

static socklen_t sa_fill(struct sockaddr_storage *ss, int fam, const char *addr,
			 uint16_t port)
{
	struct sockaddr_in *s4 = (struct sockaddr_in *)ss;
	struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)ss;

	memset(ss, 0, sizeof(*ss));
	ss->ss_family = (sa_family_t)fam;
	if (fam == AF_INET) {
		s4->sin_port = htons(port);
		T_ASSERT(inet_pton(AF_INET, addr, &s4->sin_addr) == 1);
		return sizeof(*s4);
	}
	s6->sin6_port = htons(port);
	T_ASSERT(inet_pton(AF_INET6, addr, &s6->sin6_addr) == 1);
	return sizeof(*s6);
}

static void set_timeouts(int fd)
{
	struct timeval tv = { .tv_sec = 10 };

	T_ASSERT(!setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)));
	T_ASSERT(!setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)));
}

static int tcp_socket(int fam)
{
	int fd = socket(fam, SOCK_STREAM | SOCK_CLOEXEC, 0), off = 0;

	if (fd < 0)
		t_fail("socket: %s", strerror(errno));
	if (fam == AF_INET6)
		T_ASSERT(!setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &off,
				     sizeof(off)));
	set_timeouts(fd);
	return fd;
}

static uint16_t port_of(int fd)
{
	struct kaddr a = { .port = 0 };

	T_ASSERT_OK(sock_addr(fd, false, &a));
	return a.port;
}

static int tcp_listen(int fam, const char *addr)
{
	struct sockaddr_storage ss;
	socklen_t len = sa_fill(&ss, fam, addr, 0);
	int fd = tcp_socket(fam);

	if (bind(fd, (struct sockaddr *)&ss, len) || listen(fd, 8))
		t_fail("bind/listen %s: %s", addr, strerror(errno));
	return fd;
}

static int tcp_connect(int fam, const char *addr, uint16_t port)
{
	struct sockaddr_storage ss;
	socklen_t len = sa_fill(&ss, fam, addr, port);
	int fd = tcp_socket(fam);

	if (connect(fd, (struct sockaddr *)&ss, len))
		t_fail("connect %s port %u: %s", addr, port, strerror(errno));
	return fd;
}

static int tcp_accept(int lfd)
{
	int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);

	if (fd < 0)
		t_fail("accept: %s", strerror(errno));
	return fd;
}

static int sock_family(int fd, bool peer)
{
	struct sockaddr_storage ss = { .ss_family = AF_UNSPEC };
	socklen_t len = sizeof(ss);

	T_ASSERT(!(peer ? getpeername(fd, (struct sockaddr *)&ss, &len) :
			  getsockname(fd, (struct sockaddr *)&ss, &len)));
	return ss.ss_family;
}

static void send_fd(int sv, int fd)
{
	char cbuf[CMSG_SPACE(sizeof(int))] = { 0 }, c = 'F';
	struct iovec iov = { .iov_base = &c, .iov_len = 1 };
	struct msghdr m = { .msg_iov = &iov,
			    .msg_iovlen = 1,
			    .msg_control = cbuf,
			    .msg_controllen = sizeof(cbuf) };
	struct cmsghdr *cm = CMSG_FIRSTHDR(&m);

	cm->cmsg_level = SOL_SOCKET;
	cm->cmsg_type = SCM_RIGHTS;
	cm->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(cm), &fd, sizeof(int));
	if (sendmsg(sv, &m, 0) != 1)
		t_fail("sendmsg(SCM_RIGHTS): %s", strerror(errno));
}

static int recv_fd(int sv)
{
	char cbuf[CMSG_SPACE(sizeof(int))], c;
	struct iovec iov = { .iov_base = &c, .iov_len = 1 };
	struct msghdr m = { .msg_iov = &iov,
			    .msg_iovlen = 1,
			    .msg_control = cbuf,
			    .msg_controllen = sizeof(cbuf) };
	struct cmsghdr *cm;
	int fd;

	if (recvmsg(sv, &m, MSG_CMSG_CLOEXEC) != 1)
		t_fail("recvmsg(SCM_RIGHTS): %s", strerror(errno));
	cm = CMSG_FIRSTHDR(&m);
	if (!cm || cm->cmsg_type != SCM_RIGHTS ||
	    cm->cmsg_len != CMSG_LEN(sizeof(int)))
		t_fail("no fd in the server's message");
	memcpy(&fd, CMSG_DATA(cm), sizeof(int));
	return fd;
}

/* ---- checks ------------------------------------------------------------- */

static struct kaddr kaddr_of(const char *ip, uint16_t port)
{
	struct kaddr a = { .port = port };
	uint8_t v4[4];

	if (inet_pton(AF_INET, ip, v4) == 1)
		put_addr(a.a, v4, 4);
	else
		T_ASSERT(inet_pton(AF_INET6, ip, a.a) == 1);
	return a;
}

static void expect_str(const struct kaddr *a, const char *ip)
{
	char got[KADDR_STRLEN], want[KADDR_STRLEN];
	bool v6 = strchr(ip, ':') != NULL;

	snprintf(want, sizeof(want), "%s%s%s:%u", v6 ? "[" : "", ip,
		 v6 ? "]" : "", a->port);
	kaddr_str(a, got, sizeof(got));
	if (strcmp(got, want) != 0)
		t_fail("kaddr_str gave \"%s\", want \"%s\"", got, want);
}

static void expect_addr(const struct kaddr *a, const char *ip, uint16_t port,
			const char *what)
{
	struct kaddr want = kaddr_of(ip, port);
	char g[KADDR_STRLEN], w[KADDR_STRLEN];

	if (!kaddr_eq(a, &want))
		t_fail("%s: address %s, want %s", what,
		       kaddr_str(a, g, sizeof(g)),
		       kaddr_str(&want, w, sizeof(w)));
	expect_str(a, strncmp(ip, "::ffff:", 7) ? ip : ip + 7);
}

/* Two ends of one connection, as kfacts_conn() sees them. */
static void expect_mirror(const struct kconn *c, const struct kconn *s,
			  const char *what)
{
	if (!kaddr_eq(&c->local, &s->remote) ||
	    !kaddr_eq(&c->remote, &s->local))
		t_fail("%s: the 4-tuples of the two ends do not mirror", what);
	T_ASSERT(c->sock_cookie && s->sock_cookie);
	T_ASSERT(c->sock_cookie != s->sock_cookie);
	T_ASSERT(c->netns_cookie && s->netns_cookie && c->netns_ino &&
		 s->netns_ino);
	T_ASSERT(!c->listening && !s->listening);
}

static void conn_pair(int c, int s, struct kconn *kc, struct kconn *ks,
		      const char *what)
{
	int r = kfacts_conn(c, kc);

	if (r)
		t_fail("%s: kfacts_conn(client): %s", what, t_strerror(r));
	r = kfacts_conn(s, ks);
	if (r)
		t_fail("%s: kfacts_conn(server): %s", what, t_strerror(r));
	expect_mirror(kc, ks, what);
}

static void expect_diag(int nsfd, const struct kconn *k, int want,
			const char *what)
{
	int r = kfacts_diag_check(nsfd, k);

	if (r != want)
		t_fail("%s: kfacts_diag_check gave %d (%s), want %d", what, r,
		       t_strerror(r), want);
}

/* ---- (1) loopback pairs in our own netns ---------------------------------- */

struct lo_case {
	int lfam;
	const char *laddr; /* listen on */
	int cfam;
	const char *caddr; /* connect to, and what the client sees */
	const char *saddr; /* what the server sees of both ends */
};

static const struct lo_case lo_cases[] = {
	{ AF_INET, "127.0.0.1", AF_INET, "127.0.0.1", "127.0.0.1" },
	{ AF_INET6, "::1", AF_INET6, "::1", "::1" },
	/* dual-stack client: getpeername gives ::ffff:127.0.0.1 */
	{ AF_INET, "127.0.0.1", AF_INET6, "::ffff:127.0.0.1", "127.0.0.1" },
	/* dual-stack server: the accepted socket is AF_INET6, v4-mapped */
	{ AF_INET6, "::", AF_INET, "127.0.0.1", "::ffff:127.0.0.1" },
};

static void test_lo_case(const struct lo_case *t)
{
	int l = tcp_listen(t->lfam, t->laddr);
	uint16_t port = port_of(l);
	int c = tcp_connect(t->cfam, t->caddr, port), s = tcp_accept(l);
	struct kconn kc, ks;
	char what[96];

	snprintf(what, sizeof(what), "%s -> %s", t->caddr, t->laddr);
	T_ASSERT_EQ(sock_family(c, true), t->cfam);
	conn_pair(c, s, &kc, &ks, what);
	expect_addr(&kc.remote, t->caddr, port, what);
	expect_addr(&ks.local, t->saddr, port, what);
	T_ASSERT_EQ(kc.netns_cookie, ks.netns_cookie);
	T_ASSERT_EQ(kc.netns_ino, own_ino);
	T_ASSERT_EQ(ks.netns_ino, own_ino);
	expect_diag(own_nsfd, &kc, 1, what);
	expect_diag(own_nsfd, &ks, 1, what);

	/* Half-closed is no longer ESTABLISHED, on either side. */
	T_ASSERT(!shutdown(c, SHUT_WR));
	T_ASSERT_EQ(kfacts_conn(c, &kc), -ENOTCONN);
	expect_diag(own_nsfd, &kc, 0, "after shutdown (client)");
	if (!WAIT_UNTIL(kfacts_conn(s, &ks) == -ENOTCONN))
		t_fail("%s: server end still ESTABLISHED after FIN", what);
	close(c);
	close(s);
	close(l);
}

static void test_loopback(void)
{
	for (size_t i = 0; i < sizeof(lo_cases) / sizeof(lo_cases[0]); i++)
		test_lo_case(&lo_cases[i]);
	/* The mixed cases: the two ends' sockaddrs really differ in family. */
	{
		int l = tcp_listen(AF_INET, "127.0.0.1");
		int c = tcp_connect(AF_INET6, "::ffff:127.0.0.1", port_of(l));
		int s = tcp_accept(l);
		struct kconn kc, ks;

		T_ASSERT_EQ(sock_family(c, true), AF_INET6);
		T_ASSERT_EQ(sock_family(s, false), AF_INET);
		conn_pair(c, s, &kc, &ks, "v4-mapped vs v4");
		T_ASSERT(is_v4mapped(kc.remote.a) && is_v4mapped(ks.local.a));
		close(c);
		close(s);
		close(l);
	}
	printf("loopback pairs: ok\n");
}

/* ---- (2) what is not an established TCP socket -------------------------- */

static void expect_err(int fd, int conn_err, int lis_err, const char *what)
{
	struct kconn k;
	int r = kfacts_conn(fd, &k);

	if (r != conn_err)
		t_fail("%s: kfacts_conn gave %d (%s), want %d (%s)", what, r,
		       t_strerror(r), conn_err, t_strerror(conn_err));
	r = kfacts_listener(fd, &k);
	if (r != lis_err)
		t_fail("%s: kfacts_listener gave %d (%s), want %d (%s)", what,
		       r, t_strerror(r), lis_err, t_strerror(lis_err));
}

static void test_listener(void)
{
	int l = tcp_listen(AF_INET6, "::1");
	int c = tcp_connect(AF_INET6, "::1", port_of(l)), s = tcp_accept(l);
	struct kconn k;
	uint8_t zero[16] = { 0 };

	T_ASSERT_OK(kfacts_listener(l, &k));
	T_ASSERT(k.listening && k.sock_cookie && k.netns_cookie);
	T_ASSERT_EQ(k.netns_ino, own_ino);
	expect_addr(&k.local, "::1", port_of(l), "listener");
	T_ASSERT(!memcmp(k.remote.a, zero, 16) && !k.remote.port);
	T_ASSERT_EQ(kfacts_conn(l, &k), -ENOTCONN);
	T_ASSERT_EQ(kfacts_listener(c, &k), -EINVAL);
	T_ASSERT_EQ(kfacts_listener(s, &k), -EINVAL);
	close(c);
	close(s);
	close(l);
}

static void test_not_tcp(void)
{
	struct sockaddr_storage ss;
	socklen_t len = sa_fill(&ss, AF_INET, "127.0.0.1", 9);
	int u = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0), sv[2], p[2];
	int mp = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, IPPROTO_MPTCP);
	int t = tcp_socket(AF_INET);

	T_ASSERT(u >= 0 && !connect(u, (struct sockaddr *)&ss, len));
	expect_err(u, -EPROTOTYPE, -EPROTOTYPE, "connected UDP");
	T_ASSERT(!socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv));
	expect_err(sv[0], -EPROTOTYPE, -EPROTOTYPE, "unix socketpair");
	T_ASSERT(!pipe2(p, O_CLOEXEC));
	expect_err(p[0], -ENOTSOCK, -ENOTSOCK, "pipe");
	T_ASSERT_EQ(kfacts_netns_fd(p[0]), -ENOTTY);
	expect_err(t, -ENOTCONN, -EINVAL, "unconnected TCP");
	if (mp >= 0) /* kernels without MPTCP refuse the socket */
		expect_err(mp, -EPROTOTYPE, -EPROTOTYPE, "MPTCP");
	close(p[1]);
	expect_err(p[1], -EBADF, -EBADF, "closed fd");
	if (mp >= 0)
		close(mp);
	close(t);
	close(p[0]);
	close(sv[0]);
	close(sv[1]);
	close(u);
	printf("errors: ok%s\n", mp >= 0 ? "" : " (no MPTCP here)");
}

/* ---- (3) two network namespaces ------------------------------------------ */

/* Async-signal-safe: runs at exit and from SIGTERM/SIGALRM. */
static void ns_remove(void)
{
	if (getpid() != main_pid || !ns_made)
		return;
	if (server_pid > 0)
		kill(server_pid, SIGKILL);
	/* What `ip netns del` does; the veth pair dies with the netns. */
	umount2(ns_path, MNT_DETACH);
	unlink(ns_path);
	ns_made = 0;
}

static void on_signal(int sig)
{
	static const char msg[] = "ctl-kfacts: timeout or killed\n";
	ssize_t r;

	(void)sig;
	ns_remove();
	r = write(STDERR_FILENO, msg, sizeof(msg) - 1);
	(void)r;
	_exit(T_FAIL);
}

static void sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void sh(const char *fmt, ...)
{
	char cmd[512];
	va_list ap;
	int r;

	va_start(ap, fmt);
	vsnprintf(cmd, sizeof(cmd), fmt, ap);
	va_end(ap);
	r = system(cmd);
	if (r != 0)
		t_fail("\"%s\" failed (status %d)", cmd, r);
}

static unsigned int subnet; /* X in 10.213.X.0/24 */
static char ip_out[16], ip_in[16];

static void ns_setup(void)
{
	unsigned int id = (unsigned int)main_pid % 100000;

	snprintf(ns_name, sizeof(ns_name), "ivmc-kf-%d", (int)main_pid);
	snprintf(ns_path, sizeof(ns_path), NETNS_DIR "/%s", ns_name);
	subnet = (unsigned int)main_pid % 250 + 1;
	snprintf(ip_out, sizeof(ip_out), "10.213.%u.1", subnet);
	snprintf(ip_in, sizeof(ip_in), "10.213.%u.2", subnet);
	ns_made = 1; /* before the command: a half-made netns is removed too */
	sh("ip netns add %s", ns_name);
	sh("ip -n %s link set lo up", ns_name);
	sh("ip link add ivkfa%u type veth peer name ivkfb%u netns %s", id, id,
	   ns_name);
	sh("ip addr add %s/24 dev ivkfa%u && ip link set ivkfa%u up", ip_out,
	   id, id);
	sh("ip -n %s addr add %s/24 dev ivkfb%u && ip -n %s link set ivkfb%u up",
	   ns_name, ip_in, id, ns_name, id);
	sh("ip -n %s addr add 10.213.%u.5 peer 10.213.%u.6/32 dev ivkfb%u",
	   ns_name, subnet, subnet, id);
}

/* The server, in its own process inside the netns: listen, tell the port,
 * accept one connection and hand it over, as a client hands one to ivmcd. */
static void serve(void *arg)
{
	int sv = *(int *)arg, nsfd = open(ns_path, O_RDONLY | O_CLOEXEC);
	int l, s;
	uint16_t port;

	if (nsfd < 0 || setns(nsfd, CLONE_NEWNET))
		t_fail("server: setns %s: %s", ns_path, strerror(errno));
	l = tcp_listen(AF_INET, ip_in);
	port = port_of(l);
	if (write(sv, &port, sizeof(port)) != sizeof(port))
		t_fail("server: write port: %s", strerror(errno));
	s = tcp_accept(l);
	send_fd(sv, s); /* an fd in flight keeps the socket alive */
	close(s);
	close(l);
	close(nsfd);
	close(sv);
}

static int local_addrs(int nsfd, struct klocal *l)
{
	int n = kfacts_local_addrs(nsfd, l, MAX_LOCAL);

	if (n < 0)
		t_fail("kfacts_local_addrs: %s", t_strerror(n));
	return n;
}

static bool has_local(const struct klocal *l, int n, const char *ip)
{
	struct kaddr a = kaddr_of(ip, 0);

	return kfacts_is_local(l, n, a.a);
}

/* lo is up in both; each side has its veth address, not the other's. */
static void expect_locals(int nsfd, const char *mine, const char *theirs)
{
	struct klocal l[MAX_LOCAL];
	int n = local_addrs(nsfd, l);
	bool lo_seen = false;

	for (int i = 0; i < n; i++)
		if (l[i].loopback && l[i].prefix == 8 &&
		    !memcmp(l[i].a, kaddr_of("127.0.0.1", 0).a, 16))
			lo_seen = true;
	if (!lo_seen || !has_local(l, n, mine) || has_local(l, n, theirs))
		t_fail("local addresses (%d) wrong: 127.0.0.1/8 on lo %d, "
		       "%s %d, %s %d",
		       n, lo_seen, mine, has_local(l, n, mine), theirs,
		       has_local(l, n, theirs));
	T_ASSERT(has_local(l, n, "127.0.0.1") && has_local(l, n, "127.3.2.1"));
	T_ASSERT(has_local(l, n, "::1") && !has_local(l, n, "::2"));
	T_ASSERT(!has_local(l, n, "10.213.0.0"));
	T_ASSERT_EQ(kfacts_local_addrs(nsfd, l, 1), 1);
	T_ASSERT_EQ(kfacts_local_addrs(nsfd, l, 0), 0);
}

/* A point-to-point address: IFA_LOCAL is ours, IFA_ADDRESS the peer's. */
static void expect_ptp(int nsfd)
{
	struct klocal l[MAX_LOCAL];
	int n = local_addrs(nsfd, l);
	char mine[16], peer[16];

	snprintf(mine, sizeof(mine), "10.213.%u.5", subnet);
	snprintf(peer, sizeof(peer), "10.213.%u.6", subnet);
	if (!has_local(l, n, mine) || has_local(l, n, peer))
		t_fail("point-to-point: %s local %d (want 1), peer %s %d (want 0)",
		       mine, has_local(l, n, mine), peer,
		       has_local(l, n, peer));
}

static void expect_names(const struct kconn *kin, const struct kconn *kout)
{
	char name[64];

	T_ASSERT_EQ(kfacts_netns_ino(ns_name), kin->netns_ino);
	T_ASSERT_EQ(kfacts_netns_ino("host"), kout->netns_ino);
	T_ASSERT_EQ(kfacts_netns_ino("ivmc-kf-no-such-netns"), 0);
	T_ASSERT_EQ(kfacts_netns_ino(".."), 0);
	T_ASSERT_EQ(kfacts_netns_ino("../netns"), 0);
	T_ASSERT_OK(kfacts_netns_name(kin->netns_ino, name, sizeof(name)));
	if (strcmp(name, ns_name) != 0)
		t_fail("kfacts_netns_name gave \"%s\", want \"%s\"", name,
		       ns_name);
	T_ASSERT_EQ(kfacts_netns_name(kin->netns_ino, name, 4), -ENAMETOOLONG);
	T_ASSERT_OK(kfacts_netns_name(kout->netns_ino, name, sizeof(name)));
	T_ASSERT(strcmp(name, ns_name) != 0);
	T_ASSERT_EQ(kfacts_netns_name(12345, name, sizeof(name)), -ENOENT);
}

static void expect_diags(int ns_out, int ns_in, struct kconn *kc,
			 struct kconn *ks)
{
	struct kconn forged = *kc;

	expect_diag(ns_out, kc, 1, "outside end");
	expect_diag(ns_in, ks, 1, "inside end");
	expect_diag(ns_in, kc, 0, "outside end looked up inside");
	expect_diag(ns_out, ks, 0, "inside end looked up outside");
	forged.sock_cookie++;
	expect_diag(ns_out, &forged, 0, "changed cookie");
	forged.sock_cookie = ~0ull; /* "no cookie" to the kernel */
	expect_diag(ns_out, &forged, 0, "cookie ~0");
	forged = *kc;
	forged.remote.port ^= 1;
	expect_diag(ns_out, &forged, 0, "changed port");
}

static void test_netns(void)
{
	int sv[2], c, s, ns_out, ns_in;
	struct kconn kc, ks;
	uint16_t port;

	ns_setup();
	T_ASSERT(!socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv));
	set_timeouts(sv[0]);
	server_pid = t_fork(serve, &sv[1]);
	close(sv[1]);
	if (read(sv[0], &port, sizeof(port)) != sizeof(port))
		t_fail("no port from the server: %s", strerror(errno));
	c = tcp_connect(AF_INET, ip_in, port);
	s = recv_fd(sv[0]);
	T_ASSERT_EQ(t_wait(server_pid, 10000), 0);
	server_pid = 0;
	close(sv[0]);

	conn_pair(c, s, &kc, &ks, "across the veth");
	expect_addr(&kc.local, ip_out, kc.local.port, "outside end");
	expect_addr(&kc.remote, ip_in, port, "outside end");
	T_ASSERT_EQ(kc.netns_ino, own_ino);
	T_ASSERT(ks.netns_ino != own_ino);
	T_ASSERT(ks.netns_cookie != kc.netns_cookie);
	expect_names(&ks, &kc);

	ns_out = kfacts_netns_fd(c);
	ns_in = kfacts_netns_fd(s);
	T_ASSERT(ns_out >= 0 && ns_in >= 0);
	T_ASSERT(fcntl(ns_in, F_GETFD) & FD_CLOEXEC);
	expect_locals(ns_out, ip_out, ip_in);
	expect_locals(ns_in, ip_in, ip_out);
	expect_ptp(ns_in);
	expect_diags(ns_out, ns_in, &kc, &ks);

	close(c);
	expect_diag(ns_out, &kc, 0, "outside end after close");
	if (!WAIT_UNTIL(kfacts_diag_check(ns_in, &ks) == 0))
		t_fail("inside end still ESTABLISHED after the peer closed");
	T_ASSERT_EQ(kfacts_conn(s, &ks), -ENOTCONN);
	close(s);
	close(ns_out);
	close(ns_in);
	printf("netns %s, 10.213.%u.0/24: ok\n", ns_name, subnet);
}

/* ---- (4) SO_PEERPIDFD ----------------------------------------------------- */

static bool kernel_before(int major, int minor)
{
	struct utsname u;
	int ma = 0, mi = 0;

	T_ASSERT(!uname(&u));
	if (sscanf(u.release, "%d.%d", &ma, &mi) != 2)
		return false;
	return ma < major || (ma == major && mi < minor);
}

static void test_pidfd(void)
{
	char path[64], line[128];
	int sv[2], fd, t = tcp_socket(AF_INET);
	bool seen = false;
	FILE *f;

	T_ASSERT(!socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv));
	fd = kfacts_peer_pidfd(sv[0]);
	if (fd == -ENOPROTOOPT && kernel_before(6, 5)) {
		printf("SO_PEERPIDFD: not in this kernel\n");
		goto out;
	}
	T_ASSERT_OK(fd);
	T_ASSERT(fcntl(fd, F_GETFD) & FD_CLOEXEC);
	snprintf(path, sizeof(path), "/proc/self/fdinfo/%d", fd);
	f = fopen(path, "r");
	T_ASSERT(f != NULL);
	while (fgets(line, sizeof(line), f))
		if (!strncmp(line, "Pid:", 4))
			seen = atoi(line + 4) == (int)getpid();
	fclose(f);
	if (!seen)
		t_fail("the pidfd is not for this process (%s)", path);
	close(fd);
	T_ASSERT(kfacts_peer_pidfd(t) < 0); /* TCP has no peer pid */
	printf("SO_PEERPIDFD: ok\n");
out:
	close(t);
	close(sv[0]);
	close(sv[1]);
}

int main(void)
{
	struct sigaction sa = { .sa_handler = on_signal };
	struct stat st;

	main_pid = getpid();
	if (geteuid() != 0)
		t_skip("needs root (SIOCGSKNS, setns, ip netns)");
	if (system("ip -V >/dev/null 2>&1") != 0)
		t_skip("needs ip(8) from iproute2");
	T_ASSERT(!stat("/proc/self/ns/net", &st));
	own_ino = st.st_ino;
	own_nsfd = open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC);
	T_ASSERT(own_nsfd >= 0);
	sigemptyset(&sa.sa_mask);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGALRM, &sa, NULL);
	atexit(ns_remove);
	alarm(60);

	test_loopback();
	test_listener();
	test_not_tcp();
	test_pidfd();
	test_netns();
	close(own_nsfd);
	return T_PASS;
}
