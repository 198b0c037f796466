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
 * or with a wrong cookie or netns, and kfacts_link_check() says the two
 * are joined. Then two bridged networks and two veth pairs, all with the
 * same addresses, a veth within one netns and routers: kfacts_link_check()
 * says yes for a veth pair, two ports of one bridge and a port of the
 * other end's bridge (also through a gateway that is the other end); no
 * for ends of different networks with the same addresses and for a router
 * namespace in the way; no, that end being dead, for no route and a veth
 * within one netns. Its cost per call is printed. Last, SO_PEERPIDFD on a
 * socketpair.
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

#define LK_MAX 12 /* namespaces of the link tests */
#define LK_CALLS 1000

static pid_t main_pid, server_pid;
static char ns_name[32], ns_path[64];
static volatile sig_atomic_t ns_made;
static char lk_name[LK_MAX][32], lk_path[LK_MAX][64];
static volatile sig_atomic_t lk_made;
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

/* kfacts_link_check() both ways round: want, and the dead ends. */
static void expect_link(int nsa, const struct kconn *a, int nsb,
			const struct kconn *b, int want, unsigned int want_dead,
			const char *what)
{
	unsigned int dead = 99, swapped = 0;
	int r = kfacts_link_check(nsa, a, nsb, b, &dead);

	if (want_dead & KLINK_DEAD_A)
		swapped |= KLINK_DEAD_B;
	if (want_dead & KLINK_DEAD_B)
		swapped |= KLINK_DEAD_A;

	if (r != want || dead != want_dead)
		t_fail("%s: kfacts_link_check gave %d (%s), dead %u; want %d, "
		       "dead %u",
		       what, r, t_strerror(r), dead, want, want_dead);
	r = kfacts_link_check(nsb, b, nsa, a, &dead);
	if (r != want || dead != swapped)
		t_fail("%s, the other way round: kfacts_link_check gave %d (%s), "
		       "dead %u; want %d, dead %u",
		       what, r, t_strerror(r), dead, want, swapped);
	T_ASSERT_EQ(kfacts_link_check(nsa, a, nsb, b, NULL), want);
}

/* What a check costs (printed, never asserted: a shared machine). */
static void time_link(int nsa, const struct kconn *a, int nsb,
		      const struct kconn *b, const char *what)
{
	int want = kfacts_link_check(nsa, a, nsb, b, NULL);
	uint64_t t0 = t_now_ns();

	for (int i = 0; i < LK_CALLS; i++)
		T_ASSERT_EQ(kfacts_link_check(nsa, a, nsb, b, NULL), want);
	printf("kfacts_link_check, %s (%d): %.1f us per call\n", what, want,
	       (double)(t_now_ns() - t0) / LK_CALLS / 1000.0);
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

static void lk_remove(void)
{
	if (getpid() != main_pid)
		return;
	for (int i = 0; i < lk_made; i++) {
		umount2(lk_path[i], MNT_DETACH);
		unlink(lk_path[i]);
	}
	lk_made = 0;
}

static void on_signal(int sig)
{
	static const char msg[] = "ctl-kfacts: timeout or killed\n";
	ssize_t r;

	(void)sig;
	ns_remove();
	lk_remove();
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
	expect_link(ns_out, &kc, ns_in, &ks, 1, 0, "veth host <-> netns");
	time_link(ns_out, &kc, ns_in, &ks, "veth pair with the host");

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

/* ---- (4) links between namespaces ---------------------------------------- */

static int lk_ns(const char *tag)
{
	int i = lk_made, fd;

	if (i == LK_MAX)
		t_fail("too many namespaces");
	snprintf(lk_name[i], sizeof(lk_name[i]), "ivmc-kf%s-%d", tag,
		 (int)main_pid);
	snprintf(lk_path[i], sizeof(lk_path[i]), NETNS_DIR "/%s", lk_name[i]);
	lk_made = i + 1; /* before the command: a half-made one goes too */
	sh("ip netns add %s && ip -n %s link set lo up", lk_name[i],
	   lk_name[i]);
	fd = open(lk_path[i], O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		t_fail("open %s: %s", lk_path[i], strerror(errno));
	return fd;
}

/* An IPv4 TCP socket made in the netns behind nsfd. */
static int lk_socket(int nsfd)
{
	int one = 1, fd = socket_in(nsfd, AF_INET, SOCK_STREAM, 0);

	if (fd < 0)
		t_fail("socket in a netns: %s", t_strerror(fd));
	set_timeouts(fd);
	T_ASSERT(!setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)));
	return fd;
}

static int lk_listen(int nsfd, const char *ip, uint16_t port)
{
	struct sockaddr_storage ss;
	socklen_t len = sa_fill(&ss, AF_INET, ip, port);
	int fd = lk_socket(nsfd);

	if (bind(fd, (struct sockaddr *)&ss, len) || listen(fd, 8))
		t_fail("bind/listen %s:%u: %s", ip, port, strerror(errno));
	return fd;
}

/* Connect from src:sport (sport 0: any); a fresh link may take a moment
 * to carry packets, so retry briefly. */
static int lk_connect(int nsfd, const char *src, uint16_t sport,
		      const char *dst, uint16_t dport)
{
	struct sockaddr_storage sa, da;
	socklen_t slen = sa_fill(&sa, AF_INET, src, sport);
	socklen_t dlen = sa_fill(&da, AF_INET, dst, dport);

	for (int i = 0;; i++) {
		int fd = lk_socket(nsfd);

		if (bind(fd, (struct sockaddr *)&sa, slen))
			t_fail("bind %s:%u: %s", src, sport, strerror(errno));
		if (!connect(fd, (struct sockaddr *)&da, dlen))
			return fd;
		if (i == 100 || (errno != ECONNREFUSED &&
				 errno != ENETUNREACH && errno != EHOSTUNREACH))
			t_fail("connect %s -> %s:%u: %s", src, dst, dport,
			       strerror(errno));
		close(fd);
		usleep(20000);
	}
}

/* A connection src -> dst:dport from the netns behind nc to a listener
 * in the one behind ns: *c and *s its ends, kc and ks their facts. */
static void lk_conn(int nc, const char *src, uint16_t sport, int ns,
		    const char *dst, uint16_t dport, int *c, int *s,
		    struct kconn *kc, struct kconn *ks, const char *what)
{
	int l = lk_listen(ns, dst, dport);

	*c = lk_connect(nc, src, sport, dst, dport);
	*s = tcp_accept(l);
	close(l);
	conn_pair(*c, *s, kc, ks, what);
}

/* A made-up end: the check reads addresses only. */
static struct kconn lk_fake(const char *local, uint16_t lport,
			    const char *remote, uint16_t rport)
{
	struct kconn k = { .local = kaddr_of(local, lport),
			   .remote = kaddr_of(remote, rport) };

	return k;
}

static void test_links(void)
{
	enum { BR, N1, N2, L1, L2, M1, M2, DD, BR2, O1, O2 };
	char ip[8][40], a6[40], b6[40];
	int fd[LK_MAX], c[4], s[4];
	struct kconn kc[4], ks[4], x, y;
	uint16_t sport, dport = 7000;
	unsigned int S = subnet;

	fd[BR] = lk_ns("br");
	fd[N1] = lk_ns("n1");
	fd[N2] = lk_ns("n2");
	fd[L1] = lk_ns("l1");
	fd[L2] = lk_ns("l2");
	fd[M1] = lk_ns("m1");
	fd[M2] = lk_ns("m2");
	fd[DD] = lk_ns("dd");
	fd[BR2] = lk_ns("br2");
	fd[O1] = lk_ns("o1");
	fd[O2] = lk_ns("o2");
	/* Ids that differ between n2 and br for the same namespace: a port
	 * in br asked through n2 names its peer's netns by n2's ids (what
	 * bridged() relies on), not by br's. */
	sh("ip -n %s netns set %s 7 && ip -n %s netns set %s 8", lk_name[N2],
	   lk_name[N1], lk_name[N2], lk_name[BR]);
	sh("ip -n %s netns set %s 3 && ip -n %s netns set %s 4", lk_name[BR],
	   lk_name[N1], lk_name[BR], lk_name[N2]);
	snprintf(ip[0], sizeof(ip[0]), "10.214.%u.254", S);
	snprintf(ip[1], sizeof(ip[1]), "10.214.%u.1", S);
	snprintf(ip[2], sizeof(ip[2]), "10.214.%u.2", S);
	snprintf(ip[3], sizeof(ip[3]), "10.215.%u.254", S); /* br's, on lo */
	snprintf(ip[4], sizeof(ip[4]), "10.216.%u.254", S); /* br's, on lo */
	snprintf(a6, sizeof(a6), "fd00:214:%x::1", S);
	snprintf(b6, sizeof(b6), "fd00:214:%x::2", S);
	/* n1 and n2 on br0 in br, which has an address on it too; o1 and o2
	 * the same way on br2, with the same addresses. */
	for (int j = 0; j < 2; j++) {
		int b = j ? BR2 : BR;

		sh("ip -n %s link add br0 type bridge && ip -n %s link set br0 "
		   "up && ip -n %s addr add %s/24 dev br0",
		   lk_name[b], lk_name[b], lk_name[b], ip[0]);
		for (int i = 1; i <= 2; i++) {
			sh("ip -n %s link add p%d type veth peer name eth0 netns "
			   "%s && ip -n %s link set p%d master br0 up",
			   lk_name[b], i, lk_name[b + i], lk_name[b], i);
			sh("ip -n %s addr add %s/24 dev eth0 && ip -n %s addr "
			   "add %s/64 dev eth0 nodad && ip -n %s link set eth0 up",
			   lk_name[b + i], ip[i], lk_name[b + i],
			   i == 1 ? a6 : b6, lk_name[b + i]);
		}
	}
	/* Two more networks with the same addresses: veth pairs l1-l2 and
	 * m1-m2. */
	for (int i = L1; i <= M1; i += 2) {
		sh("ip -n %s link add eth0 type veth peer name eth0 netns %s",
		   lk_name[i], lk_name[i + 1]);
		sh("ip -n %s addr add %s/24 dev eth0 && ip -n %s link set eth0 up",
		   lk_name[i], ip[1], lk_name[i]);
		sh("ip -n %s addr add %s/24 dev eth0 && ip -n %s link set eth0 up",
		   lk_name[i + 1], ip[2], lk_name[i + 1]);
	}
	/* dd: n1's address on a veth whose peer is in dd too. */
	sh("ip -n %s link add d0 type veth peer name d1 && ip -n %s addr add "
	   "%s/24 dev d0 && ip -n %s link set d0 up && ip -n %s link set d1 up",
	   lk_name[DD], lk_name[DD], ip[1], lk_name[DD], lk_name[DD]);
	/* From n1, br's other addresses: through br's own address, or
	 * through n2 (a router namespace). */
	sh("ip -n %s addr add %s/32 dev lo && ip -n %s addr add %s/32 dev lo",
	   lk_name[BR], ip[3], lk_name[BR], ip[4]);
	sh("ip -n %s route add %s via %s && ip -n %s route add %s via %s",
	   lk_name[N1], ip[3], ip[0], lk_name[N1], ip[4], ip[2]);

	/* Ports of one bridge in a third netns; a port of the other end's
	 * bridge. */
	lk_conn(fd[N1], ip[1], 0, fd[N2], ip[2], dport, &c[0], &s[0], &kc[0],
		&ks[0], "n1 -> n2");
	sport = kc[0].local.port;
	expect_link(fd[N1], &kc[0], fd[N2], &ks[0], 1, 0,
		    "bridge in a third netns");
	lk_conn(fd[N1], ip[1], 0, fd[BR], ip[0], dport, &c[1], &s[1], &kc[1],
		&ks[1], "n1 -> br");
	expect_link(fd[N1], &kc[1], fd[BR], &ks[1], 1, 0,
		    "bridge of the other end");
	/* The same 4-tuple as n1 -> n2 in l1-l2 and in m1-m2. */
	lk_conn(fd[L1], ip[1], sport, fd[L2], ip[2], dport, &c[2], &s[2],
		&kc[2], &ks[2], "l1 -> l2");
	lk_conn(fd[M1], ip[1], sport, fd[M2], ip[2], dport, &c[3], &s[3],
		&kc[3], &ks[3], "m1 -> m2");
	T_ASSERT(kaddr_eq(&kc[2].local, &kc[0].local) &&
		 kaddr_eq(&kc[3].remote, &kc[0].remote));
	expect_link(fd[L1], &kc[2], fd[L2], &ks[2], 1, 0, "veth pair l1-l2");
	expect_link(fd[M1], &kc[3], fd[M2], &ks[3], 1, 0, "veth pair m1-m2");
	expect_link(fd[L1], &kc[2], fd[M2], &ks[3], 0, 0,
		    "lookalike l1 <-> m2");
	expect_link(fd[M1], &kc[3], fd[L2], &ks[2], 0, 0,
		    "lookalike m1 <-> l2");
	expect_link(fd[N1], &kc[0], fd[L2], &ks[2], 0, 0,
		    "lookalike n1 <-> l2");
	expect_link(fd[L1], &kc[2], fd[N2], &ks[0], 0, 0,
		    "lookalike l1 <-> n2");
	/* n2's end, said to be in br (where its address is not): no route
	 * from there. */
	expect_link(fd[N1], &kc[0], fd[BR], &ks[0], 0, KLINK_DEAD_B,
		    "n1 <-> n2's end in br");
	/* Two bridged networks alike (their devices likely have the same
	 * indexes too). */
	expect_link(fd[O1], &kc[0], fd[O2], &ks[0], 1, 0, "bridge br2");
	expect_link(fd[N1], &kc[0], fd[O2], &ks[0], 0, 0,
		    "lookalike n1 <-> o2");
	expect_link(fd[O1], &kc[0], fd[N2], &ks[0], 0, 0,
		    "lookalike o1 <-> n2");
	expect_link(fd[O1], &kc[1], fd[BR], &ks[1], 0, 0,
		    "lookalike o1 <-> br");
	/* IPv6 on the bridge, made-up ends. */
	x = lk_fake(a6, 40000, b6, 7000);
	y = lk_fake(b6, 7000, a6, 40000);
	expect_link(fd[N1], &x, fd[N2], &y, 1, 0,
		    "IPv6, bridge in a third netns");
	/* Through br's own address as a gateway: yes; through n2: no. */
	x = lk_fake(ip[1], 40000, ip[3], 7000);
	y = lk_fake(ip[3], 7000, ip[1], 40000);
	expect_link(fd[N1], &x, fd[BR], &y, 1, 0, "gateway: the other end");
	x = lk_fake(ip[1], 40000, ip[4], 7000);
	y = lk_fake(ip[4], 7000, ip[1], 40000);
	expect_link(fd[N1], &x, fd[BR], &y, 0, 0, "gateway: a router netns");
	/* A veth into its own netns, no route at all: those ends are dead. */
	x = lk_fake(ip[1], sport, ip[2], dport);
	expect_link(fd[DD], &x, fd[N2], &ks[0], 0, KLINK_DEAD_A,
		    "veth within one netns");
	y = lk_fake(ip[2], dport, "10.217.0.1", sport);
	expect_link(fd[N1], &kc[0], fd[N2], &y, 0, KLINK_DEAD_B, "no route");
	time_link(fd[N1], &kc[0], fd[N2], &ks[0], "bridge in a third netns");
	time_link(fd[N1], &kc[1], fd[BR], &ks[1], "bridge of the other end");
	time_link(fd[L1], &kc[2], fd[L2], &ks[2], "veth pair");
	time_link(fd[L1], &kc[2], fd[M2], &ks[3], "lookalike");
	for (int i = 0; i < 4; i++)
		close(c[i]), close(s[i]);
	for (int i = 0; i <= O2; i++)
		close(fd[i]);
	lk_remove();
	printf("links: veth pairs, bridges, gateways, lookalikes: ok\n");
}

/* ---- (5) SO_PEERPIDFD ----------------------------------------------------- */

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
	atexit(lk_remove);
	alarm(60);

	test_loopback();
	test_listener();
	test_not_tcp();
	test_pidfd();
	test_netns();
	test_links();
	close(own_nsfd);
	return T_PASS;
}
