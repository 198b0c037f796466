/* SPDX-License-Identifier: MIT */
/*
 * Description: a process gets a channel only for a connection it is an
 * end of. Through one ivmcd:
 *  (1) with the library, on loopback: a UDP socket whose addresses mirror
 *      a TCP connection, a unix socket, a listening socket, a connection
 *      the peer has closed, and the second wrap of a socket never attach,
 *      while the real two ends of the connection pair normally and move
 *      verified bytes; a registration left behind by a socket that was
 *      closed (without ivmc_close) never pairs with a new connection that
 *      reuses its 4-tuple;
 *  (2) on a raw control connection: listening, UDP, unix, unconnected,
 *      half-closed TCP sockets and a pipe get NOCHAN not_tcp, the same
 *      socket or the same token twice NOCHAN duplicate, and never a CHAN;
 *  (3) fork: a connection registered and then shared by fork() is
 *      cancelled in both processes (-ECANCELED) even when its channel is
 *      already on its way; nobody gets a channel and the stream, written
 *      by one process and then the other, stays correct on TCP. A socket
 *      inherited and then wrapped by both processes gets no channel;
 *  (4) across namespaces: a third party (uid 65534) builds, in namespaces
 *      of its own, a connection whose 4-tuple mirrors a root process's
 *      connection to a server that does not use ivmc, and registers its
 *      end: it must never be paired with the root process's end (nor read
 *      a byte of its stream).
 */
#include <grp.h>
#include <netinet/in.h>
#include <sys/un.h>

#include "ctl/proto.h"
#include "transport/transport.h"
#include "t_netns.h"

#define CHUNK	  1000
#define PENDING_MS 1500
#define IP_V	  "10.81.0.1" /* the victim's address, and the forger's */
#define IP_S	  "10.81.0.2" /* the server's address, and the forger's */
#define PORT_S	  7000
#define NOBODY	  65534

/* ---- (1) the library, in one process ------------------------------------- */

static void exchange(struct ivmc_chan *a, struct ivmc_chan *b, uint64_t *off,
		     int rounds)
{
	char buf[CHUNK], got[CHUNK];

	for (int i = 0; i < rounds; i++) {
		t_fill(1, *off, buf, CHUNK);
		t_send_all(a, buf, CHUNK);
		t_recv_all(b, got, CHUNK);
		if (t_verify(1, *off, got, CHUNK))
			t_fail("a->b corrupt at %llu", (unsigned long long)*off);
		t_fill(2, *off, buf, CHUNK);
		t_send_all(b, buf, CHUNK);
		t_recv_all(a, got, CHUNK);
		if (t_verify(2, *off, got, CHUNK))
			t_fail("b->a corrupt at %llu", (unsigned long long)*off);
		*off += CHUNK;
	}
}

/* Poll every handle until none is pending (bounded). */
static void settle(struct ivmc_chan **h, int n, int ms)
{
	for (int t = 0; t < ms; t++) {
		int pending = 0;

		for (int i = 0; i < n; i++)
			pending += ivmc_tcp_state(h[i]) == 0;
		if (!pending)
			return;
		usleep(1000);
	}
}

static struct sockaddr_in addr_of(int fd, bool peer)
{
	struct sockaddr_in a;
	socklen_t len = sizeof(a);

	if (peer ? getpeername(fd, (struct sockaddr *)&a, &len)
		 : getsockname(fd, (struct sockaddr *)&a, &len))
		t_fail("get%sname: %s", peer ? "peer" : "sock", strerror(errno));
	return a;
}

/* A loopback connection to lfd: *c the client end, *s the server end. */
static void conn(int lfd, int *c, int *s)
{
	struct sockaddr_in a = addr_of(lfd, false);
	char ip[INET_ADDRSTRLEN];

	inet_ntop(AF_INET, &a.sin_addr, ip, sizeof(ip));
	*c = t_connect_to(ip, ntohs(a.sin_port), NULL, 0);
	*s = t_accept(lfd);
}

static void test_library(void)
{
	struct ivmc_chan *ha, *hb, *hu, *hx, *hl, *hc, *hd1, *hd2, *hpeer;
	struct ivmc_chan *all[9];
	struct ivmc_stats sa, sb;
	struct sockaddr_in la, ra;
	uint16_t lport = 0;
	uint64_t off = 0;
	int lfd = t_listen_on("127.0.0.1", &lport);
	int a, b, u, ux[2], cc, cs, d1, d2;

	conn(lfd, &a, &b);
	/* A UDP socket with A's connection's addresses the other way round:
	 * the 4-tuple of B, but not TCP. */
	la = addr_of(a, false);
	ra = addr_of(a, true);
	u = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (u < 0 || bind(u, (struct sockaddr *)&ra, sizeof(ra)) ||
	    connect(u, (struct sockaddr *)&la, sizeof(la)))
		t_fail("udp mirror: %s", strerror(errno));
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, ux))
		t_fail("socketpair: %s", strerror(errno));
	/* A connection whose peer has gone: CLOSE_WAIT on our side. */
	conn(lfd, &cc, &cs);
	close(cs);
	{
		char c;

		if (recv(cc, &c, 1, 0) != 0) /* we have seen its FIN */
			t_fail("closed connection: no end of stream");
	}
	/* A socket wrapped twice (its peer wraps once, later). */
	conn(lfd, &d1, &d2);

	T_ASSERT_OK(ivmc_tcp(a, NULL, &ha));
	T_ASSERT_OK(ivmc_tcp(u, NULL, &hu));
	T_ASSERT_OK(ivmc_tcp(ux[0], NULL, &hx));
	T_ASSERT_OK(ivmc_tcp(lfd, NULL, &hl));
	T_ASSERT_OK(ivmc_tcp(cc, NULL, &hc));
	T_ASSERT_OK(ivmc_tcp(d1, NULL, &hd1));
	T_ASSERT_OK(ivmc_tcp(d1, NULL, &hd2));
	T_ASSERT_OK(ivmc_tcp(b, NULL, &hb));
	T_ASSERT_OK(ivmc_tcp(d2, NULL, &hpeer));
	all[0] = ha, all[1] = hb, all[2] = hu, all[3] = hx, all[4] = hl;
	all[5] = hc, all[6] = hd1, all[7] = hd2, all[8] = hpeer;
	exchange(ha, hb, &off, 50);
	settle(all, 9, PENDING_MS + 5000);
	exchange(ha, hb, &off, 50);

	if (ivmc_tcp_state(ha) != 1 || ivmc_tcp_state(hb) != 1)
		t_fail("the real pair did not attach: %d %d", ivmc_tcp_state(ha),
		       ivmc_tcp_state(hb));
	T_ASSERT_OK(ivmc_stats(ha, &sa));
	T_ASSERT_OK(ivmc_stats(hb, &sb));
	T_ASSERT_EQ(sa.on_ring, 3);
	T_ASSERT_EQ(sb.on_ring, 3);
	T_ASSERT_EQ(sa.bytes_sent, off);
	T_ASSERT_EQ(sb.bytes_received, off);
	{
		const char *name[] = { "udp mirror", "unix", "listening",
				       "half-closed" };
		struct ivmc_chan *h[] = { hu, hx, hl, hc };

		for (int i = 0; i < 4; i++) {
			int st = ivmc_tcp_state(h[i]);

			printf("%s: %d (%s)\n", name[i], st, t_strerror(st));
			if (st >= 0)
				t_fail("%s socket: state %d", name[i], st);
		}
	}
	/* Wrapped twice: the second registration is refused; whatever
	 * happens to the first, the two handles never both attach. */
	{
		int s1 = ivmc_tcp_state(hd1), s2 = ivmc_tcp_state(hd2);
		int sp = ivmc_tcp_state(hpeer);

		printf("wrapped twice: first %d (%s), second %d (%s), peer %d\n",
		       s1, t_strerror(s1), s2, t_strerror(s2), sp);
		if (s2 >= 0)
			t_fail("the second wrap of one socket got state %d", s2);
		if (s1 == 1 && sp != 1)
			t_fail("first wrap attached, its peer %d", sp);
		if (s1 == 1)
			printf("note: one process wrapped a socket twice: the "
			       "first handle attached, the second stays on "
			       "TCP over the same fd (the caller's misuse)\n");
	}
	for (int i = 0; i < 9; i++)
		T_ASSERT_OK(ivmc_close(all[i]));
	close(a), close(b), close(u), close(ux[0]), close(ux[1]), close(cc);
	close(d1), close(d2);
	close(lfd);
}

/* A registration left behind by a socket closed without ivmc_close():
 * a new connection with the same 4-tuple must pair with its own peer. */
static void test_stale(void)
{
	static char out[65536];
	struct ivmc_chan *hs, *hc, *hs2;
	struct linger lin = { 1, 0 };
	/* The client's port is below the ephemeral range (32768 and up by
	 * default): no other connect() on the machine takes it between the
	 * close and the reuse (an ephemeral one was, once, in CI). */
	uint16_t lport = 0, cport = (uint16_t)(20000 + getpid() % 10000);
	uint64_t off = 0;
	int lfd = t_listen_on("127.0.0.1", &lport), c, s, st;

	c = t_connect_to("127.0.0.1", lport, "127.0.0.1", cport);
	s = t_accept(lfd);
	T_ASSERT_OK(ivmc_tcp(s, NULL, &hs)); /* waits for c, which never comes */
	T_ASSERT_EQ(ivmc_tcp_state(hs), 0);
	/* ivmcd has read its facts (an established socket) before it goes. */
	for (int i = 0; i < 200; i++) {
		t_ivmcctl(out, sizeof(out), "--json status");
		if (strstr(out, "\"pending\":1,"))
			break;
		usleep(10000);
	}
	if (!strstr(out, "\"pending\":1,"))
		t_fail("stale: the registration is not pending: %s", out);
	/* An abortive close on both sides: no TIME_WAIT, the tuple is free. */
	setsockopt(s, SOL_SOCKET, SO_LINGER, &lin, sizeof(lin));
	setsockopt(c, SOL_SOCKET, SO_LINGER, &lin, sizeof(lin));
	close(s);
	close(c);
	c = t_connect_to("127.0.0.1", lport, "127.0.0.1", cport);
	s = t_accept(lfd);
	T_ASSERT_OK(ivmc_tcp(c, NULL, &hc));
	T_ASSERT_OK(ivmc_tcp(s, NULL, &hs2));
	exchange(hc, hs2, &off, 20);
	st = t_tcp_settle(hc, hs2, 5000);
	exchange(hc, hs2, &off, 20);
	if (st != 1 || ivmc_tcp_state(hs2) != 1)
		t_fail("the new connection on a reused 4-tuple: %d %d", st,
		       ivmc_tcp_state(hs2));
	/* (Its handle is never told: it stays 0, pending, for good.) */
	printf("stale registration of a closed socket: %d (%s)\n",
	       ivmc_tcp_state(hs), t_strerror(ivmc_tcp_state(hs)));
	T_ASSERT(ivmc_tcp_state(hs) != 1);
	T_ASSERT_OK(ivmc_close(hs));
	T_ASSERT_OK(ivmc_close(hc));
	T_ASSERT_OK(ivmc_close(hs2));
	close(c);
	close(s);
	close(lfd);
}

/* ---- (2) a raw control connection ---------------------------------------- */

static int raw_open(void)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	union { struct ctl_welcome w; char b[CTL_MSG_MAX]; } m;
	struct ctl_hello h = { 0 };
	struct pollfd p;
	int fd, fds[2], nfds = 2;
	ssize_t n;

	if (strlen(t_sock) >= sizeof(sa.sun_path))
		t_fail("socket path too long");
	memcpy(sa.sun_path, t_sock, strlen(t_sock));
	fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)))
		t_fail("raw connect: %s", strerror(errno));
	ctl_hdr_init(&h.h, CTL_HELLO, 0);
	T_ASSERT_OK(xport_send_fds(fd, &h, sizeof(h), NULL, 0));
	p = (struct pollfd){ fd, POLLIN, 0 };
	if (poll(&p, 1, 5000) != 1)
		t_fail("raw: no WELCOME");
	n = xport_recv_fds(fd, &m, sizeof(m), fds, &nfds, 0);
	if (n != (ssize_t)sizeof(struct ctl_welcome) || m.w.h.type != CTL_WELCOME)
		t_fail("raw: not a WELCOME (%zd)", n);
	for (int i = 0; i < nfds; i++)
		close(fds[i]);
	return fd;
}

static void raw_reg(int fd, uint64_t token, int sock)
{
	struct ctl_reg r = { 0 };

	ctl_hdr_init(&r.h, CTL_REG_CONN, 0);
	r.token = token;
	T_ASSERT_OK(xport_send_fds(fd, &r, sizeof(r), &sock, 1));
}

#define RAW_TOKENS 10

/* Take in the daemon's answers for at most ms: reason[token] of the last
 * NOCHAN, count of NOCHANs; any CHAN fails. */
static void raw_answers(int fd, int ms, int *reason, int *count)
{
	uint64_t end = t_now_ns() + (uint64_t)ms * 1000000ull;

	while (t_now_ns() < end) {
		union { struct ctl_hdr h; struct ctl_chan c; struct ctl_nochan n;
			char b[CTL_MSG_MAX]; } m;
		struct pollfd p = { fd, POLLIN, 0 };
		int fds[2], nfds = 2;
		ssize_t n;

		if (poll(&p, 1, 20) != 1)
			continue;
		n = xport_recv_fds(fd, &m, sizeof(m), fds, &nfds, MSG_DONTWAIT);
		for (int i = 0; i < nfds; i++)
			close(fds[i]);
		if (n <= 0)
			t_fail("raw: daemon hung up (%zd)", n);
		if (m.h.type == CTL_CHAN)
			t_fail("raw: a CHAN for token %llu",
			       (unsigned long long)m.c.token);
		if (m.h.type != CTL_NOCHAN || m.n.token >= RAW_TOKENS)
			t_fail("raw: unexpected message type %u", m.h.type);
		reason[m.n.token] = (int)m.n.reason;
		count[m.n.token]++;
	}
}

static void test_raw(void)
{
	int reason[RAW_TOKENS] = { 0 }, count[RAW_TOKENS] = { 0 };
	uint16_t lport = 0;
	int lfd = t_listen_on("127.0.0.1", &lport);
	int fd = raw_open(), u, ux[2], t, cc, cs, x, y, z, zp, pp[2];
	const char *name[] = { "", "listening", "udp", "unix", "unconnected",
			       "half-closed", "pipe" };

	u = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	{
		struct sockaddr_in a = t_sin("127.0.0.1", lport);

		if (u < 0 || connect(u, (struct sockaddr *)&a, sizeof(a)))
			t_fail("udp: %s", strerror(errno));
	}
	T_ASSERT(!socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, ux));
	t = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	T_ASSERT(t >= 0);
	conn(lfd, &cc, &cs);
	close(cs);
	T_ASSERT(!pipe2(pp, O_CLOEXEC));
	conn(lfd, &x, &y);
	conn(lfd, &z, &zp);

	raw_reg(fd, 1, lfd);
	raw_reg(fd, 2, u);
	raw_reg(fd, 3, ux[0]);
	raw_reg(fd, 4, t);
	usleep(100000); /* cc has seen the FIN (for the record: not needed) */
	raw_reg(fd, 5, cc);
	raw_reg(fd, 6, pp[0]);
	raw_reg(fd, 7, x); /* its peer never registers */
	raw_reg(fd, 8, x); /* the same socket again */
	raw_reg(fd, 7, z); /* the same token again */
	raw_answers(fd, PENDING_MS + 1500, reason, count);
	for (int i = 1; i <= 6; i++) {
		printf("raw %s: NOCHAN reason %d\n", name[i], reason[i]);
		if (count[i] != 1 || reason[i] != CTL_R_NOT_TCP)
			t_fail("raw %s: %d NOCHAN, reason %d (want 1, not_tcp %d)",
			       name[i], count[i], reason[i], CTL_R_NOT_TCP);
	}
	if (count[8] != 1 || reason[8] != CTL_R_DUPLICATE)
		t_fail("raw same socket twice: %d NOCHAN, reason %d", count[8],
		       reason[8]);
	/* Token 7: refused as a duplicate token, then its first
	 * registration expires (or is refused with the duplicate socket). */
	if (count[7] != 2 || (reason[7] != CTL_R_EXPIRED &&
			      reason[7] != CTL_R_DUPLICATE))
		t_fail("raw token twice: %d NOCHAN, last reason %d", count[7],
		       reason[7]);
	printf("raw: the same socket twice: duplicate; token 7: %d answers\n",
	       count[7]);
	close(fd);
	close(u), close(ux[0]), close(ux[1]), close(t), close(cc);
	close(pp[0]), close(pp[1]), close(x), close(y), close(z), close(zp);
	close(lfd);
}

/* ---- (3) fork ---------------------------------------------------------------- */

enum { FORK_PENDING, FORK_IN_FLIGHT, FORK_BEFORE_WRAP };

struct fk {
	struct t_pipe up, down, srv_up, srv_down;
	uint16_t port;
	int kind;
};

/* The server: accept, wrap when told, answer until the end. */
static void fk_server(void *arg)
{
	struct fk *f = arg;
	struct t_end e = { NULL, -1, 50 };
	uint16_t port = 0;
	int l = t_listen_on("127.0.0.1", &port);
	struct t_report r;
	char go;

	t_put(&f->srv_up, &port, sizeof(port));
	e.fd = t_accept(l);
	t_get(&f->srv_down, &go, 1, 20000);
	T_ASSERT_OK(ivmc_tcp(e.fd, NULL, &e.h));
	t_put(&f->srv_up, "w", 1);
	t_serve(&e);
	t_report_of(&e, 0, &r);
	t_put(&f->srv_up, &r, sizeof(r));
	t_get(&f->srv_down, &go, 1, 20000);
	T_ASSERT_OK(ivmc_close(e.h));
	close(e.fd);
	close(l);
}

/* The client: wrap, fork, write the stream half in each process. Sends
 * up: "w" when wrapped, then its report and the child's. */
static void fk_client(void *arg)
{
	struct fk *f = arg;
	struct t_end e = { NULL, -1, 50 };
	struct t_pipe hand, back;
	struct t_report r, rq;
	uint64_t off = 0;
	pid_t q;
	char go;

	e.fd = t_connect_to("127.0.0.1", f->port, NULL, 0);
	t_pipe_make(&hand);
	t_pipe_make(&back);
	if (f->kind != FORK_BEFORE_WRAP) {
		T_ASSERT_OK(ivmc_tcp(e.fd, NULL, &e.h));
		t_put(&f->up, "w", 1);
		t_get(&f->down, &go, 1, 20000); /* fork now */
	}
	fflush(stdout);
	fflush(stderr);
	q = fork();
	if (q < 0)
		t_fail("fork: %s", strerror(errno));
	if (q == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		alarm(15);
		if (f->kind == FORK_BEFORE_WRAP) {
			/* Wrap the inherited socket after the parent has. */
			t_get(&hand, &go, 1, 20000);
			T_ASSERT_OK(ivmc_tcp(e.fd, NULL, &e.h));
			t_put(&f->up, "c", 1);
		}
		t_report_of(&e, ivmc_tcp_state(e.h), &rq);
		/* Our turn on the stream: the parent's offset. */
		t_get(&hand, &off, sizeof(off), 20000);
		t_talk(&e, &off, 100);
		t_talk_end(&e);
		t_report_of(&e, rq.first, &rq);
		t_put(&back, &rq, sizeof(rq));
		fflush(stdout);
		_exit(0);
	}
	alarm(15);
	if (f->kind == FORK_BEFORE_WRAP) {
		T_ASSERT_OK(ivmc_tcp(e.fd, NULL, &e.h));
		t_put(&f->up, "w", 1);
		t_put(&hand, "w", 1);
	} else {
		t_put(&f->up, "k", 1); /* forked */
	}
	t_get(&f->down, &go, 1, 20000); /* the server has wrapped: talk */
	r.first = ivmc_tcp_state(e.h);
	t_talk(&e, &off, 100);
	t_put(&hand, &off, sizeof(off));
	t_get(&back, &rq, sizeof(rq), 20000);
	if (waitpid(q, NULL, 0) != q)
		t_fail("waitpid");
	t_report_of(&e, r.first, &r);
	t_put(&f->up, &r, sizeof(r));
	t_put(&f->up, &rq, sizeof(rq));
	T_ASSERT_OK(ivmc_close(e.h));
	close(e.fd);
}

static bool has_channel(const char *s)
{
	return strstr(s, "\"channels\":[{") != NULL;
}

static void test_fork(int kind, const char *what)
{
	static char out[65536];
	struct t_report rp, rq, rs;
	struct fk f;
	pid_t sp, cp;
	char w;

	out[0] = 0;
	memset(&f, 0, sizeof(f));
	f.kind = kind;
	t_pipe_make(&f.up);
	t_pipe_make(&f.down);
	t_pipe_make(&f.srv_up);
	t_pipe_make(&f.srv_down);
	sp = t_ns_fork(NULL, fk_server, &f);
	t_get(&f.srv_up, &f.port, sizeof(f.port), 10000);
	cp = t_ns_fork(NULL, fk_client, &f);
	if (kind == FORK_IN_FLIGHT) {
		/* The server first; then the client's wrap pairs at once, and
		 * the client forks before it has taken in its half. */
		t_put(&f.srv_down, "w", 1);
		t_get(&f.srv_up, &w, 1, 20000);
		t_get(&f.up, &w, 1, 20000);
		for (int i = 0; i < 300; i++) {
			t_ivmcctl(out, sizeof(out), "--json status");
			if (has_channel(out))
				break;
			usleep(10000);
		}
		if (!has_channel(out))
			t_fail("%s: no channel made: %s", what, out);
		t_put(&f.down, "f", 1);
		t_get(&f.up, &w, 1, 20000); /* forked */
	} else if (kind == FORK_PENDING) {
		t_get(&f.up, &w, 1, 20000);
		t_put(&f.down, "f", 1);
		t_get(&f.up, &w, 1, 20000); /* forked */
		/* The server registers only after the fork. */
		t_put(&f.srv_down, "w", 1);
		t_get(&f.srv_up, &w, 1, 20000);
	} else {
		t_get(&f.up, &w, 1, 20000); /* parent wrapped */
		t_get(&f.up, &w, 1, 20000); /* child wrapped */
		t_put(&f.srv_down, "w", 1);
		t_get(&f.srv_up, &w, 1, 20000);
		/* ivmcd has seen one socket from two processes: it must not
		 * make a channel for it (the stream would break as soon as
		 * the other process writes on TCP). */
		for (int i = 0; i < 50 && !has_channel(out); i++) {
			t_ivmcctl(out, sizeof(out), "--json status");
			usleep(10000);
		}
		if (has_channel(out)) {
			t_late_fail("BUG: %s: a socket registered by two "
				    "processes (duplicate) got a channel for "
				    "the first one: %s", what, out);
			t_ns_kill(cp);
			t_ns_kill(sp);
			t_ns_expect_none_left(false);
			goto out;
		}
	}
	t_put(&f.down, "t", 1);
	t_get(&f.up, &rp, sizeof(rp), 20000);
	t_get(&f.up, &rq, sizeof(rq), 20000);
	t_get(&f.srv_up, &rs, sizeof(rs), 20000);
	t_put(&f.srv_down, "q", 1);
	T_ASSERT_EQ(t_ns_wait(cp, 20000), 0);
	T_ASSERT_EQ(t_ns_wait(sp, 20000), 0);
	printf("%s: parent %d then %d (%s), child %d then %d (%s), server %d "
	       "(%s) on_ring %d\n", what, rp.first, rp.state,
	       t_strerror(rp.state), rq.first, rq.state, t_strerror(rq.state),
	       rs.state, t_strerror(rs.state), rs.on_ring);
	/* The stream, half from each process, was verified by the server;
	 * here: what was written is what was read. */
	T_ASSERT_EQ(rs.received, 200 * T_CHUNK);
	T_ASSERT_EQ(rs.sent, 200 * T_CHUNK);
	if (kind == FORK_BEFORE_WRAP) {
		if (rq.first == 1)
			t_fail("%s: the second wrap attached", what);
		if (rp.state == 1 || rq.state == 1)
			t_late_fail("BUG?: %s: a socket held by two processes got "
				    "a channel: parent %d, child %d", what,
				    rp.state, rq.state);
	} else {
		if (rp.first != -ECANCELED || rp.state != -ECANCELED ||
		    rq.first != -ECANCELED || rq.state != -ECANCELED)
			t_fail("%s: want -ECANCELED in both processes", what);
		/* The server end never carried a byte on a ring. */
		if (rs.on_ring != 0)
			t_fail("%s: the server moved to the ring (%d) though "
			       "its peer cancelled", what, rs.on_ring);
		/* (It ends its stream while it waits: -ECANCELED, or
		 * -ETIMEDOUT if it waited that long.) */
		if (kind == FORK_PENDING && rs.state >= 0)
			t_fail("%s: server %d, want < 0", what, rs.state);
	}
	t_ns_expect_none_left(false); /* (we are a client ourselves) */
out:
	close(f.up.rd), close(f.up.wr), close(f.down.rd), close(f.down.wr);
	close(f.srv_up.rd), close(f.srv_up.wr), close(f.srv_down.rd);
	close(f.srv_down.wr);
}

/* ---- (4) a forged mirror across namespaces ----------------------------------- */

static const char *ns_v, *ns_s, *ns_f1, *ns_f2; /* victim, server, forger */

struct forge {
	struct t_pipe v_up, v_down, f_up, f_down, c_down, srv_up, srv_down;
	uint16_t vport;
};

/* The server: no ivmc at all; answers the victim on TCP. */
static void plain_server(void *arg)
{
	struct forge *g = arg;
	struct t_end e = { NULL, -1, 60 };
	uint16_t port = PORT_S;
	int l = t_listen_on(IP_S, &port);
	char go;

	t_put(&g->srv_up, "r", 1);
	e.fd = t_accept(l);
	t_serve(&e);
	t_get(&g->srv_down, &go, 1, 20000);
	close(e.fd);
	close(l);
}

/* The victim, root: connects to the server, says its port, wraps when
 * told, then talks (t) or sends one chunk and stops (s). */
static void victim(void *arg)
{
	struct forge *g = arg;
	struct t_end e = { NULL, -1, 60 };
	struct t_report r;
	uint64_t off = 0;
	char cmd;
	int first;

	e.fd = t_connect_to(IP_S, PORT_S, NULL, 0);
	g->vport = t_local_port(e.fd);
	t_put(&g->v_up, &g->vport, sizeof(g->vport));
	t_get(&g->v_down, &cmd, 1, 20000);
	T_ASSERT_OK(ivmc_tcp(e.fd, NULL, &e.h));
	first = ivmc_tcp_state(e.h);
	t_put(&g->v_up, &first, sizeof(first));
	t_get(&g->v_down, &cmd, 1, 20000);
	if (cmd == 's') {
		char buf[CHUNK];

		t_fill(T_SEED_C2S + e.seed, 0, buf, CHUNK);
		(void)ivmc_send(e.h, buf, CHUNK, IVMC_NONBLOCK);
		t_get(&g->v_down, &cmd, 1, 20000);
		_exit(0);
	}
	t_talk(&e, &off, 100);
	t_talk_end(&e);
	t_report_of(&e, first, &r);
	t_put(&g->v_up, &r, sizeof(r));
	T_ASSERT_OK(ivmc_close(e.h));
	close(e.fd);
}

static void become_nobody(void)
{
	if (setgroups(0, NULL) || setgid(NOBODY) || setuid(NOBODY))
		t_fail("setuid(%d): %s", NOBODY, strerror(errno));
	prctl(PR_SET_PDEATHSIG, SIGKILL); /* cleared by setuid */
}

/* The forger's end in its namespace with the server's address: announce a
 * listener (so that ivmcd knows that address), accept the forged
 * connection, wrap it. Reports its state; if ever attached, reads what
 * arrives for up to 3 s and reports the bytes of the victim's stream. */
static void forger(void *arg)
{
	struct forge *g = arg;
	struct t_end e = { NULL, -1, 60 };
	uint16_t port = PORT_S;
	int l = t_listen_on(IP_S, &port), st = 0;
	uint64_t got = 0;
	char buf[CHUNK];

	become_nobody();
	T_ASSERT_OK(ivmc_tcp_listen(l));
	t_put(&g->f_up, "r", 1);
	e.fd = t_accept(l);
	T_ASSERT_OK(ivmc_tcp(e.fd, NULL, &e.h));
	for (int i = 0; i < 5000 && !st; i++) {
		st = ivmc_tcp_state(e.h);
		usleep(1000);
	}
	t_put(&g->f_up, &st, sizeof(st));
	if (st == 1) {
		uint64_t end = t_now_ns() + 3000000000ull;

		while (got < CHUNK && t_now_ns() < end) {
			ssize_t n = ivmc_recv(e.h, buf + got, CHUNK - got,
					      IVMC_NONBLOCK);

			if (n > 0)
				got += (uint64_t)n;
			else
				usleep(1000);
		}
		if (got && t_verify(T_SEED_C2S + e.seed, 0, buf, got))
			got = 0; /* not the victim's bytes */
	}
	t_put(&g->f_up, &got, sizeof(got));
	t_get(&g->f_down, buf, 1, 20000);
	ivmc_close(e.h);
	close(e.fd);
	close(l);
}

/* The forger's other end, with the victim's address: connect from the
 * victim's port. */
static void forger_client(void *arg)
{
	struct forge *g = arg;
	char go;
	int fd;

	become_nobody();
	t_get(&g->c_down, &g->vport, sizeof(g->vport), 20000);
	fd = t_connect_to(IP_S, PORT_S, IP_V, g->vport);
	t_get(&g->c_down, &go, 1, 20000);
	close(fd);
}

static bool forged_settled(const char *s)
{
	return has_channel(s) || strstr(s, "\"pending\":2,");
}

static void test_forge(void)
{
	static char out[65536];
	struct t_pipe *p[7];
	struct t_report vr;
	struct forge g;
	pid_t sp, vp, fp, cp;
	int vfirst, fst;
	uint64_t leaked;
	char r;

	memset(&g, 0, sizeof(g));
	p[0] = &g.v_up, p[1] = &g.v_down, p[2] = &g.f_up, p[3] = &g.f_down;
	p[4] = &g.c_down, p[5] = &g.srv_up, p[6] = &g.srv_down;
	for (int i = 0; i < 7; i++)
		t_pipe_make(p[i]);
	/* uid 65534 may reach the socket (0666) through our directory. */
	if (chmod(t_dir, 0711))
		t_fail("chmod %s: %s", t_dir, strerror(errno));

	fp = t_ns_fork(ns_f1, forger, &g);
	t_get(&g.f_up, &r, 1, 10000);
	sp = t_ns_fork(ns_s, plain_server, &g);
	t_get(&g.srv_up, &r, 1, 10000);
	vp = t_ns_fork(ns_v, victim, &g);
	t_get(&g.v_up, &g.vport, sizeof(g.vport), 10000);
	t_put(&g.v_down, "w", 1);
	t_get(&g.v_up, &vfirst, sizeof(vfirst), 10000);
	printf("forge: victim %s:%u -> %s:%d (no ivmc there), state %d (%s)\n",
	       IP_V, g.vport, IP_S, PORT_S, vfirst, t_strerror(vfirst));
	cp = t_ns_fork(ns_f2, forger_client, &g);
	t_put(&g.c_down, &g.vport, sizeof(g.vport));
	t_get(&g.f_up, &fst, sizeof(fst), 20000);
	if (!vfirst) { /* the victim's registration reached ivmcd */
		for (int i = 0; i < 100; i++) {
			t_ivmcctl(out, sizeof(out), "--json status");
			if (forged_settled(out))
				break;
			usleep(10000);
		}
	}
	printf("forge: the forger's end (uid %d): %d (%s)\n", NOBODY, fst,
	       t_strerror(fst));
	if (fst == 1 || has_channel(out)) {
		/* Show what it means: the victim's next bytes. */
		t_put(&g.v_down, "s", 1);
		t_get(&g.f_up, &leaked, sizeof(leaked), 20000);
		t_fail("BUG: forged pairing: uid %d paired its own connection "
		       "(%s <-> %s, namespaces %s/%s) with a root process's "
		       "connection of the same 4-tuple (%s -> %s), and read %llu "
		       "bytes of its stream. Status: %s", NOBODY, IP_S, IP_V,
		       ns_f1, ns_f2, ns_v, ns_s, (unsigned long long)leaked,
		       out);
	}
	t_get(&g.f_up, &leaked, sizeof(leaked), 20000);
	T_ASSERT_EQ(leaked, 0);
	/* The victim talks to its real server, on TCP. */
	t_put(&g.v_down, "t", 1);
	t_get(&g.v_up, &vr, sizeof(vr), 20000);
	if (vr.state == 1)
		t_fail("forge: the victim attached (to whom?)");
	T_ASSERT_EQ(vr.on_ring, 0);
	t_put(&g.srv_down, "q", 1);
	t_put(&g.f_down, "q", 1);
	t_put(&g.c_down, "q", 1);
	T_ASSERT_EQ(t_ns_wait(vp, 20000), 0);
	T_ASSERT_EQ(t_ns_wait(sp, 20000), 0);
	T_ASSERT_EQ(t_ns_wait(fp, 20000), 0);
	T_ASSERT_EQ(t_ns_wait(cp, 20000), 0);
	for (int i = 0; i < 7; i++)
		close(p[i]->rd), close(p[i]->wr);
	printf("forge: victim %d (%s), forger %d (%s): never paired\n",
	       vr.state, t_strerror(vr.state), fst, t_strerror(fst));
}

int main(void)
{
	char conf[64];
	int st;

	t_ns_setup(60);
	ns_v = t_ns_add("iv");
	ns_s = t_ns_add("is");
	ns_f1 = t_ns_add("if1");
	ns_f2 = t_ns_add("if2");
	t_sh("ip -n %s link add eth0 type veth peer name eth0 netns %s", ns_v,
	     ns_s);
	t_sh("ip -n %s link add eth0 type veth peer name eth0 netns %s", ns_f2,
	     ns_f1);
	t_sh("ip -n %s addr add " IP_V "/24 dev eth0 && ip -n %s link set eth0 up",
	     ns_v, ns_v);
	t_sh("ip -n %s addr add " IP_S "/24 dev eth0 && ip -n %s link set eth0 up",
	     ns_s, ns_s);
	t_sh("ip -n %s addr add " IP_V "/24 dev eth0 && ip -n %s link set eth0 up",
	     ns_f2, ns_f2);
	t_sh("ip -n %s addr add " IP_S "/24 dev eth0 && ip -n %s link set eth0 up",
	     ns_f1, ns_f1);
	snprintf(conf, sizeof(conf), "pending_timeout %dms\n", PENDING_MS);
	t_daemon_start(conf);

	test_library();
	test_stale();
	test_raw();
	test_fork(FORK_PENDING, "fork while pending");
	test_fork(FORK_IN_FLIGHT, "fork with the channel in flight");
	test_fork(FORK_BEFORE_WRAP, "fork, then both wrap");
	test_forge();

	st = t_ns_daemon_stop();
	T_ASSERT(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	return t_late_failures ? T_FAIL : T_PASS;
}
