/* SPDX-License-Identifier: MIT */
/*
 * Description: hostile clients on ivmcd's control socket. Forked children
 * connect straight to the SOCK_SEQPACKET socket and send thousands of
 * random and mutated messages (deterministic seed, bounded count and time):
 * random bytes, valid messages built with ctl/proto.h and then mutated
 * (size, type, version, magic, reserved fields, length of the packet),
 * daemon-only types, oversized and zero-length packets, registrations
 * before HELLO, HELLO twice, 0/1/2/5 fds of the wrong kinds (pipes,
 * regular files, unix, UDP and listening sockets, bad mailboxes), floods
 * that never read. Afterwards the daemon is alive, a normal pair still
 * attaches and moves verified data, ivmcctl status answers, the daemon's
 * fd count is back to where it was, and its log shows no crash. A client
 * that keeps sending bad messages is hung up on.
 */
#include <grp.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/un.h>

#include "ctl/proto.h"
#include "t_ctl.h"

#define NCHILD	   8
#define CHILD_MSGS 5000 /* per child: 40000 in all (x10 IVMC_LONG) */
#define CHILD_MS   20000
#define SEED	   0x5eedc71ull
#define CHUNK	   1000
#define MAX_BAD	   16 /* tools/ivmcd/ivmcd.h MAX_BAD_MSGS */

/* ---- the daemon, from outside ---------------------------------------- */

/* A failing test must not leave its daemon behind. */
static void daemon_kill_at_exit(void)
{
	if (t_dpid > 0 && getpid() == t_dir_owner)
		kill(t_dpid, SIGKILL);
}

static void daemon_alive(pid_t pid)
{
	int st;

	if (waitpid(pid, &st, WNOHANG) == pid)
		t_fail("ivmcd died: %s %d", WIFSIGNALED(st) ? "signal" : "exit",
		       WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st));
	T_ASSERT(kill(pid, 0) == 0);
}

/* No sign of a crash or a sanitizer report in the daemon's log. */
static void log_clean(void)
{
	static const char *const bad[] = { "AddressSanitizer", "runtime error",
					   "LeakSanitizer", "Segmentation",
					   "abort", "epoll_wait:", "start:" };
	char path[PATH_MAX], line[1024];
	FILE *f;
	int n = 0;

	t_path(path, sizeof(path), "ivmcd.log");
	f = fopen(path, "re");
	if (!f)
		t_fail("open %s", path);
	while (fgets(line, sizeof(line), f)) {
		n++;
		for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
			if (strstr(line, bad[i]))
				t_fail("ivmcd log: %s", line);
	}
	fclose(f);
	T_ASSERT(n > 0);
}

static int ctl_connect(void)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK,
			0);

	if (fd < 0)
		t_fail("socket: %s", strerror(errno));
	if (strlen(t_sock) >= sizeof(sa.sun_path))
		t_fail("socket path too long");
	memcpy(sa.sun_path, t_sock, strlen(t_sock));
	for (int i = 0; i < 200; i++) {
		if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0)
			return fd;
		if (errno != EAGAIN)
			t_fail("connect %s: %s", t_sock, strerror(errno));
		usleep(5000); /* backlog full: the daemon is busy */
	}
	t_fail("connect %s: backlog full for 1 s", t_sock);
}

/* ---- the fds a hostile client hands over ------------------------------ */

/* F_MBOX..F_MBOX_RDONLY in this order (HELLO picks among them); F_CTL: a
 * control connection of our own, handed to the daemon itself. */
enum { F_PIPE_R, F_PIPE_W, F_FILE, F_UNIX, F_UDP, F_LISTEN, F_TCP, F_TCP2,
       F_MBOX, F_MBOX_UNSEALED, F_MBOX_SMALL, F_MBOX_RDONLY, F_EVENTFD,
       F_EPOLL, F_DEVNULL, F_DIR, F_OPATH, F_CTL, NFDKIND };

static int pool[NFDKIND];

static int memfd(size_t size, unsigned int seals)
{
	int fd = memfd_create("garbage", MFD_CLOEXEC | MFD_ALLOW_SEALING);

	if (fd < 0 || ftruncate(fd, (off_t)size) ||
	    (seals && fcntl(fd, F_ADD_SEALS, seals)))
		t_fail("memfd: %s", strerror(errno));
	return fd;
}

static void pool_make(int idx)
{
	const unsigned int seals = F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL;
	struct sockaddr_in sa = { .sin_family = AF_INET,
				  .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	char path[PATH_MAX];
	int p[2], sv[2], lfd, cfd, afd;

	if (pipe2(p, O_CLOEXEC) ||
	    socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv))
		t_fail("pipe: %s", strerror(errno));
	pool[F_PIPE_R] = p[0];
	pool[F_PIPE_W] = p[1];
	pool[F_UNIX] = sv[0];
	close(sv[1]);
	snprintf(path, sizeof(path), "%s/regular.%d", t_dir, idx);
	pool[F_FILE] = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (pool[F_FILE] < 0 || ftruncate(pool[F_FILE], CTL_MAILBOX_SIZE))
		t_fail("open %s", path);
	pool[F_UDP] = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (pool[F_UDP] < 0 ||
	    bind(pool[F_UDP], (struct sockaddr *)&sa, sizeof(sa)))
		t_fail("udp: %s", strerror(errno));
	/* A real connection: registering it is valid, even from a fuzzer. */
	t_tcp_pair(false, &lfd, &cfd, &afd);
	pool[F_LISTEN] = lfd;
	pool[F_TCP] = cfd;
	pool[F_TCP2] = afd;
	pool[F_MBOX] = memfd(CTL_MAILBOX_SIZE, seals);
	pool[F_MBOX_UNSEALED] = memfd(CTL_MAILBOX_SIZE, 0);
	pool[F_MBOX_SMALL] = memfd(64, seals);
	snprintf(path, sizeof(path), "/proc/self/fd/%d", pool[F_MBOX]);
	pool[F_MBOX_RDONLY] = open(path, O_RDONLY | O_CLOEXEC);
	pool[F_EVENTFD] = eventfd(0, EFD_CLOEXEC);
	pool[F_EPOLL] = epoll_create1(EPOLL_CLOEXEC);
	pool[F_DEVNULL] = open("/dev/null", O_RDWR | O_CLOEXEC);
	pool[F_DIR] = open(t_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	pool[F_OPATH] = open(t_dir, O_PATH | O_CLOEXEC);
	pool[F_CTL] = ctl_connect();
	for (int i = 0; i < NFDKIND; i++)
		if (pool[i] < 0)
			t_fail("fd kind %d: %s", i, strerror(errno));
}

/* ---- messages ------------------------------------------------------------ */

struct gen {
	uint64_t rs;
	char buf[70000];
	size_t len;
	int fds[5], nfds;
};

static uint32_t rnd(struct gen *g, uint32_t n)
{
	return (uint32_t)(t_rand64(&g->rs) % n);
}

static void rand_bytes(struct gen *g, void *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		((uint8_t *)p)[i] = (uint8_t)t_rand64(&g->rs);
}

static const uint32_t client_types[] = { CTL_HELLO, CTL_REG_CONN,
					 CTL_REG_LISTEN, CTL_UNREG, CTL_QUERY,
					 CTL_EVACUATE, CTL_RELOAD };
static const uint32_t daemon_types[] = { CTL_WELCOME, CTL_CHAN, CTL_NOCHAN,
					 CTL_DETACH, CTL_RESULT };

/* A well-formed message of type, its fields plausible. */
static void valid(struct gen *g, uint32_t type)
{
	struct ctl_hdr *h = (struct ctl_hdr *)g->buf;

	memset(g->buf, 0, CTL_MSG_MAX + 64);
	ctl_hdr_init(h, type, 0);
	g->len = h->size;
	switch (type) {
	case CTL_REG_CONN:
	case CTL_REG_LISTEN: {
		struct ctl_reg *r = (struct ctl_reg *)g->buf;

		r->token = rnd(g, 8);
		r->ring_size = rnd(g, 2) ? 0 : 4096u << rnd(g, 6);
		break;
	}
	case CTL_UNREG:
		((struct ctl_unreg *)g->buf)->token = rnd(g, 8);
		break;
	case CTL_QUERY:
		((struct ctl_query *)g->buf)->what = 1 + rnd(g, 2);
		h->flags = rnd(g, 2) ? CTL_Q_JSON : 0;
		break;
	case CTL_EVACUATE: {
		struct ctl_evacuate *e = (struct ctl_evacuate *)g->buf;

		/* A uid nobody here runs as: nothing is detached. */
		e->uid = 4000000000u + rnd(g, 1000);
		e->has_uid = 1;
		break;
	}
	default:
		break;
	}
}

static void mutate(struct gen *g)
{
	struct ctl_hdr *h = (struct ctl_hdr *)g->buf;

	switch (rnd(g, 10)) {
	case 0: /* one bit anywhere in the message */
		if (g->len)
			g->buf[rnd(g, (uint32_t)g->len)] ^=
				(char)(1u << rnd(g, 8));
		break;
	case 1: /* the size field lies */
		h->size = rnd(g, 2) ? (uint32_t)t_rand64(&g->rs)
				    : h->size + 1 - 2 * rnd(g, 2);
		break;
	case 2: /* the packet is shorter or longer than the header says */
		g->len = rnd(g, 2) && g->len ? rnd(g, (uint32_t)g->len)
					     : g->len + 1 + rnd(g, 64);
		break;
	case 3: /* unknown or daemon-only type */
		h->type = (uint16_t)(rnd(g, 2) ? rnd(g, 40) : t_rand64(&g->rs));
		break;
	case 4:
		h->version = (uint16_t)(rnd(g, 2) ? CTL_VERSION + 1
						  : t_rand64(&g->rs));
		break;
	case 5:
		h->magic ^= 1u << rnd(g, 32);
		break;
	case 6: /* unknown flag bits */
		h->flags |= 1u << rnd(g, 32);
		break;
	case 7: /* a reserved field, or any byte past the header */
		if (g->len > sizeof(*h)) {
			uint32_t at = rnd(g, (uint32_t)(g->len - sizeof(*h)));

			g->buf[sizeof(*h) + at] = (char)(1 + rnd(g, 255));
		}
		break;
	default: /* a few random bytes */
		for (uint32_t i = 0, n = 1 + rnd(g, 4); i < n && g->len; i++)
			g->buf[rnd(g, (uint32_t)g->len)] =
				(char)t_rand64(&g->rs);
		break;
	}
}

static void pick_fds(struct gen *g)
{
	static const int counts[] = { 0, 0, 0, 1, 1, 1, 2, 5 };

	g->nfds = counts[rnd(g, 8)];
	for (int i = 0; i < g->nfds; i++)
		g->fds[i] = pool[rnd(g, NFDKIND)];
}

/* The next message of a client's sequence. */
static void gen_msg(struct gen *g)
{
	uint32_t k = rnd(g, 100);
	struct ctl_hdr *h = (struct ctl_hdr *)g->buf;

	g->nfds = 0;
	if (k < 15) { /* random bytes */
		g->len = rnd(g, CTL_MSG_MAX + 32);
		rand_bytes(g, g->buf, g->len);
		if (rnd(g, 2) && g->len >= sizeof(*h)) {
			h->magic = CTL_MAGIC; /* get past the first check */
			h->version = CTL_VERSION;
		}
		pick_fds(g);
	} else if (k < 55) { /* a client message, mutated */
		valid(g, client_types[rnd(g, 7)]);
		for (uint32_t i = 0, n = 1 + rnd(g, 3); i < n; i++)
			mutate(g);
		pick_fds(g);
	} else if (k < 75) { /* a valid message with wrong fds */
		valid(g, client_types[rnd(g, 6)]);
		pick_fds(g);
	} else if (k < 82) { /* what only the daemon sends */
		valid(g, daemon_types[rnd(g, 5)]);
		pick_fds(g);
	} else if (k < 86) { /* oversized */
		g->len = CTL_MSG_MAX + 1 + rnd(g, 65000);
		rand_bytes(g, g->buf, 64);
		valid(g, CTL_QUERY);
		g->len = CTL_MSG_MAX + 1 + rnd(g, 65000);
	} else if (k < 88) { /* zero length: the daemon takes it for EOF */
		g->len = 0;
	} else if (k < 94) { /* HELLO, again and again, with a mailbox or not */
		valid(g, CTL_HELLO);
		g->nfds = (int)rnd(g, 2);
		g->fds[0] = pool[F_MBOX + rnd(g, 4)];
	} else { /* a register with one fd of any kind (TCP ones are valid) */
		valid(g, rnd(g, 2) ? CTL_REG_CONN : CTL_REG_LISTEN);
		g->nfds = 1;
		g->fds[0] = pool[rnd(g, NFDKIND)];
	}
}

/* Send without blocking. Returns 0, -EAGAIN, or -errno (EPIPE...). */
static int send_msg(int fd, const struct gen *g)
{
	char cbuf[CMSG_SPACE(sizeof(int) * 5)];
	struct iovec iov = { .iov_base = (void *)g->buf, .iov_len = g->len };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };

	if (g->nfds) {
		struct cmsghdr *cm;

		memset(cbuf, 0, sizeof(cbuf));
		mh.msg_control = cbuf;
		mh.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)g->nfds);
		cm = CMSG_FIRSTHDR(&mh);
		cm->cmsg_level = SOL_SOCKET;
		cm->cmsg_type = SCM_RIGHTS;
		cm->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)g->nfds);
		memcpy(CMSG_DATA(cm), g->fds, sizeof(int) * (size_t)g->nfds);
	}
	if (sendmsg(fd, &mh, MSG_DONTWAIT | MSG_NOSIGNAL) >= 0)
		return 0;
	return -errno;
}

/* Read what the daemon answered, closing any fds. Returns the number of
 * messages, or -1 at end of stream / reset. */
static int drain(int fd, int max)
{
	char buf[CTL_MSG_MAX + 64], cbuf[CMSG_SPACE(sizeof(int) * 16)];
	int n = 0;

	while (n < max) {
		struct iovec iov = { buf, sizeof(buf) };
		struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1,
				     .msg_control = cbuf,
				     .msg_controllen = sizeof(cbuf) };
		ssize_t r = recvmsg(fd, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);

		if (r < 0)
			return errno == EAGAIN ? n : -1;
		for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm;
		     cm = CMSG_NXTHDR(&mh, cm)) {
			size_t k = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
			const unsigned char *d = CMSG_DATA(cm);

			for (size_t i = 0; i < k; i++) {
				int x;

				memcpy(&x, d + i * sizeof(int), sizeof(x));
				close(x);
			}
		}
		if (r == 0)
			return -1;
		n++;
	}
	return n;
}

/* ---- the hostile children -------------------------------------------- */

struct child {
	int idx;
	bool nobody; /* runs as uid 65534: not privileged */
};

static void fuzz_child(void *arg)
{
	const struct child *c = arg;
	static struct gen g;
	uint64_t end = t_now_ns() + (uint64_t)CHILD_MS * 1000000ull;
	int idle[8], nidle = 0, sent = 0, dropped = 0;

	g.rs = SEED + (uint64_t)c->idx;
	pool_make(c->idx);
	if (c->nobody && (setgroups(0, NULL) || setgid(65534) || setuid(65534)))
		t_fail("setuid(65534): %s", strerror(errno));
	while (sent < CHILD_MSGS * (t_long() ? 10 : 1) && t_now_ns() < end) {
		int fd = ctl_connect();
		uint32_t mode = rnd(&g, 10);
		int per = 1 + (int)rnd(&g, 60);

		if (mode == 0) { /* connect and go away */
			close(fd);
			continue;
		}
		if (mode == 1 && nidle < 8) { /* a connection that idles */
			idle[nidle++] = fd;
			continue;
		}
		if (mode == 2) { /* a proper hello first */
			valid(&g, CTL_HELLO);
			g.nfds = 1;
			g.fds[0] = pool[F_MBOX];
			(void)send_msg(fd, &g);
		}
		for (int i = 0; i < per; i++) {
			int r;

			gen_msg(&g);
			r = send_msg(fd, &g);
			sent++;
			for (int k = 0; r == -EAGAIN && k < 100; k++) {
				struct pollfd p = { fd, POLLOUT, 0 };

				if (mode != 3 && drain(fd, 64) < 0)
					break;
				(void)poll(&p, 1, 10);
				r = send_msg(fd, &g);
			}
			/* 4-6: in step with the daemon, so that its state (hello,
			 * registrations) moves along with ours */
			if (mode >= 4 && mode <= 6 && r == 0) {
				struct pollfd p = { fd, POLLIN, 0 };

				(void)poll(&p, 1, 5);
			}
			/* mode 3 floods and never reads */
			if (r == -EPIPE || r == -ECONNRESET ||
			    (mode != 3 && drain(fd, 64) < 0)) {
				dropped++;
				break;
			}
		}
		if (rnd(&g, 2))
			(void)drain(fd, 1000);
		close(fd);
	}
	for (int i = 0; i < nidle; i++)
		close(idle[i]);
	printf("child %d: %d messages, hung up on %d times\n", c->idx, sent,
	       dropped);
}

/* Valid messages only (status queries), as fast as the socket takes them,
 * never reading the answers: the daemon must neither block on us nor hang
 * up, and must keep serving everybody else meanwhile. */
static void query_flood(void *arg)
{
	struct gen *g = calloc(1, sizeof(*g));
	uint64_t end = t_now_ns() + 2000000000ull;
	int fd = ctl_connect(), sent = 0, full = 0;

	(void)arg;
	T_ASSERT(g);
	valid(g, CTL_HELLO);
	g->nfds = 0;
	T_ASSERT_OK(send_msg(fd, g));
	while (sent < 200000 && t_now_ns() < end) {
		struct pollfd p = { fd, POLLOUT, 0 };
		int r;

		valid(g, CTL_QUERY);
		((struct ctl_query *)g->buf)->what = CTL_Q_STATUS;
		r = send_msg(fd, g);
		if (r == -EAGAIN) {
			full++;
			(void)poll(&p, 1, 10);
			continue;
		}
		if (r)
			t_fail("query flood: hung up on after %d valid messages: %s",
			       sent, strerror(-r));
		sent++;
	}
	printf("query flood: %d queries sent, socket full %d times\n", sent, full);
	close(fd);
	free(g);
}

/* The next answer on fd (bounded wait) must be a RESULT with err and a
 * text containing what. */
static void expect_result(int fd, int err, const char *what)
{
	union { struct ctl_result r; char b[CTL_MSG_MAX + 64]; } m;
	struct pollfd p = { fd, POLLIN, 0 };
	ssize_t n;

	T_ASSERT(poll(&p, 1, 5000) == 1);
	n = recv(fd, &m, sizeof(m), MSG_DONTWAIT);
	if (n != (ssize_t)sizeof(m.r) || m.r.h.magic != CTL_MAGIC ||
	    m.r.h.type != CTL_RESULT)
		t_fail("expected a RESULT (%s), got %zd bytes type %u", what, n,
		       n >= (ssize_t)sizeof(m.r.h) ? m.r.h.type : 0);
	m.r.text[CTL_TEXT_MAX - 1] = 0;
	if (m.r.err != err || !strstr(m.r.text, what))
		t_fail("expected RESULT %d '%s', got %d '%s'", err, what, m.r.err,
		       m.r.text);
}

/* Messages out of order get a precise error and change nothing. */
static void sequence_check(void)
{
	struct gen *g = calloc(1, sizeof(*g));
	int fd = ctl_connect(), lfd, cfd, afd, hellos = 0;

	T_ASSERT(g);
	t_tcp_pair(false, &lfd, &cfd, &afd);
	/* A registration (of a real connection) before HELLO. */
	valid(g, CTL_REG_CONN);
	g->nfds = 1;
	g->fds[0] = cfd;
	T_ASSERT_OK(send_msg(fd, g));
	expect_result(fd, EPROTO, "before HELLO");
	valid(g, CTL_UNREG);
	g->nfds = 0;
	T_ASSERT_OK(send_msg(fd, g));
	expect_result(fd, EPROTO, "before HELLO");
	/* A daemon-only type, an unknown one. */
	valid(g, CTL_WELCOME);
	T_ASSERT_OK(send_msg(fd, g));
	expect_result(fd, EPROTO, "not a client message type");
	valid(g, CTL_QUERY);
	((struct ctl_hdr *)g->buf)->type = CTL_TYPE_MAX;
	T_ASSERT_OK(send_msg(fd, g));
	expect_result(fd, EPROTO, "wrong size");
	/* HELLO, then HELLO again: the second is refused. How many a client
	 * may send before it is hung up on is printed, not asserted. */
	valid(g, CTL_HELLO);
	T_ASSERT_OK(send_msg(fd, g));
	{
		union { struct ctl_welcome w; char b[CTL_MSG_MAX + 64]; } m;
		char cbuf[CMSG_SPACE(sizeof(int) * 4)];
		struct iovec iov = { &m, sizeof(m) };
		struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1,
				     .msg_control = cbuf,
				     .msg_controllen = sizeof(cbuf) };
		struct pollfd p = { fd, POLLIN, 0 };
		struct cmsghdr *cm;
		int tfd;

		T_ASSERT(poll(&p, 1, 5000) == 1);
		T_ASSERT_EQ(recvmsg(fd, &mh, MSG_CMSG_CLOEXEC), sizeof(m.w));
		T_ASSERT_EQ(m.w.h.type, CTL_WELCOME);
		cm = CMSG_FIRSTHDR(&mh);
		T_ASSERT(cm && cm->cmsg_type == SCM_RIGHTS &&
			 cm->cmsg_len == CMSG_LEN(sizeof(int)));
		memcpy(&tfd, CMSG_DATA(cm), sizeof(tfd));
		/* The table is read-only for us. */
		T_ASSERT_EQ(fcntl(tfd, F_GETFL) & O_ACCMODE, O_RDONLY);
		close(tfd);
	}
	for (hellos = 0; hellos < 40; hellos++) {
		valid(g, CTL_HELLO);
		if (send_msg(fd, g))
			break;
		expect_result(fd, EPROTO, "second HELLO");
	}
	printf("sequence: %d more HELLOs answered, still connected\n", hellos);
	close(fd);
	close(cfd);
	close(afd);
	close(lfd);
	free(g);
}

/* Bad messages only, as fast as the socket takes them, never reading:
 * after MAX_BAD the daemon hangs up. */
static void flood_check(void)
{
	struct gen *g = calloc(1, sizeof(*g));
	int fd = ctl_connect(), sent = 0, replies = -1, epipe = 0;
	uint64_t end = t_now_ns() + 10000000000ull;

	T_ASSERT(g);
	g->rs = SEED ^ 0xf100d;
	while (sent < 1000 && t_now_ns() < end) {
		int r;

		valid(g, CTL_QUERY);
		g->buf[0] ^= 0x55; /* bad magic */
		r = send_msg(fd, g);
		if (r == -EPIPE || r == -ECONNRESET) {
			epipe = 1;
			break;
		}
		if (r == -EAGAIN) {
			usleep(1000);
			continue;
		}
		T_ASSERT_OK(r);
		sent++;
	}
	/* What came back: at most MAX_BAD error replies, then end of stream. */
	for (int n = 0, i = 0; i < 10000; i++) {
		char buf[CTL_MSG_MAX + 64];
		ssize_t r = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);

		if (r > 0) {
			n++;
			continue;
		}
		if (r == 0 || (r < 0 && errno == ECONNRESET)) {
			replies = n;
			break;
		}
		usleep(1000);
	}
	printf("flood: %d sent, %s, then %d replies and end of stream\n", sent,
	       epipe ? "EPIPE" : "no EPIPE", replies);
	if (replies < 0)
		t_fail("flooding client not hung up on");
	T_ASSERT(replies <= MAX_BAD);
	close(fd);
	free(g);
}

/* Many clients at once: each says HELLO with a proper mailbox, then all
 * hang up together (what a crashing fleet of processes looks like). */
static void conn_storm(void)
{
	static int fds[400];
	struct gen *g = calloc(1, sizeof(*g));
	int n = 0, welcomed = 0;

	T_ASSERT(g);
	pool_make(100);
	for (int i = 0; i < 400; i++) {
		fds[n] = ctl_connect();
		valid(g, CTL_HELLO);
		g->nfds = 1;
		g->fds[0] = pool[F_MBOX];
		if (send_msg(fds[n], g) == 0)
			n++;
		else
			close(fds[n]);
	}
	for (int i = 0; i < n; i++) {
		struct pollfd p = { fds[i], POLLIN, 0 };

		if (poll(&p, 1, 5000) == 1 && drain(fds[i], 4) == 1)
			welcomed++;
		close(fds[i]);
	}
	printf("storm: %d clients said HELLO, %d welcomed\n", n, welcomed);
	T_ASSERT_EQ(welcomed, n);
	for (int i = 0; i < NFDKIND; i++)
		close(pool[i]);
	free(g);
}

/* CPU time (user + system) of pid so far, in clock ticks. */
static long long cpu_ticks(pid_t pid)
{
	char path[64], buf[1024], *rp;
	long long ut = 0, st = 0;
	FILE *f;
	size_t n;

	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	f = fopen(path, "re");
	if (!f)
		t_fail("open %s", path);
	n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = 0;
	rp = strrchr(buf, ')');
	/* After ")": state is field 3; utime and stime are 14 and 15. */
	if (!rp || sscanf(rp + 2,
			  "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lld %lld",
			  &ut, &st) != 2)
		t_fail("parse %s", path);
	return ut + st;
}

/* The daemon out of fds (its RLIMIT_NOFILE lowered to what it holds plus
 * a few): clients it cannot accept wait in the backlog; it must not spin
 * on the listening socket meanwhile, and it serves again once they go. */
static void fd_exhaustion(pid_t d)
{
	static int fds[60];
	struct rlimit old, low;
	long long t0, t1, hz = sysconf(_SC_CLK_TCK);

	T_ASSERT(prlimit(d, RLIMIT_NOFILE, NULL, &old) == 0);
	/* The soft limit only: raising a hard one back needs
	 * CAP_SYS_RESOURCE, which a container may not give root. */
	low.rlim_cur = (rlim_t)t_proc_fds(d) + 8;
	low.rlim_max = old.rlim_max;
	T_ASSERT(prlimit(d, RLIMIT_NOFILE, &low, NULL) == 0);
	for (int i = 0; i < 60; i++)
		fds[i] = ctl_connect();
	usleep(100000);
	t0 = cpu_ticks(d);
	usleep(1000000);
	t1 = cpu_ticks(d);
	printf("daemon at its fd limit (%llu), 60 clients: %lld ms of CPU in 1 s\n",
	       (unsigned long long)low.rlim_cur, (t1 - t0) * 1000 / hz);
	if ((t1 - t0) * 5 > hz)
		t_late_fail("ivmcd busy-loops while accept() fails (EMFILE): "
			    "%lld ms of CPU in 1 s", (t1 - t0) * 1000 / hz);
	for (int i = 0; i < 60; i++)
		close(fds[i]);
	if (prlimit(d, RLIMIT_NOFILE, &old, NULL))
		t_fail("prlimit(%llu): %s", (unsigned long long)old.rlim_cur,
		       strerror(errno));
}

/* ---- a normal client, before and after ------------------------------- */

/* on_ring: check that both directions ended on the ring (not during
 * the storm: a fuzzed EVACUATE may legitimately detach everything). */
static void normal_pair(bool on_ring)
{
	struct ivmc_chan *a, *b;
	struct ivmc_stats sa;
	uint64_t off = 0;
	int lfd, cfd, afd, st;

	t_tcp_pair(false, &lfd, &cfd, &afd);
	T_ASSERT_OK(ivmc_tcp(cfd, NULL, &a));
	T_ASSERT_OK(ivmc_tcp(afd, NULL, &b));
	for (int i = 0; i < 20; i++)
		t_exchange(a, b, &off, CHUNK, "ctl-garbage");
	st = t_tcp_settle(a, b, 5000);
	if (st != 1 || ivmc_tcp_state(b) != 1)
		t_fail("not attached: a %d b %d", st, ivmc_tcp_state(b));
	for (int i = 0; i < 50; i++)
		t_exchange(a, b, &off, CHUNK, "ctl-garbage");
	T_ASSERT_OK(ivmc_stats(a, &sa));
	if (on_ring)
		T_ASSERT_EQ(sa.on_ring, 3);
	T_ASSERT_EQ(sa.bytes_sent, off);
	T_ASSERT_OK(ivmc_close(a));
	T_ASSERT_OK(ivmc_close(b));
	close(cfd);
	close(afd);
	close(lfd);
}

static void status_answers(const char *extra)
{
	char bin[PATH_MAX], cmd[2 * PATH_MAX + 128];

	t_bin(bin, sizeof(bin), "ivmcctl");
	snprintf(cmd, sizeof(cmd), "%s -t 5000 status | head -4 && %s -t 5000 --json status | grep -q '%s'",
		 bin, bin, extra);
	fflush(stdout);
	if (system(cmd) != 0)
		t_fail("ivmcctl status: %s", cmd);
}

/* The daemon's fd count comes back to base once the bad clients are gone
 * (it handles their hang-ups asynchronously: wait, bounded). */
static void fds_back(pid_t d, int base)
{
	int n = 0;

	for (int i = 0; i < 500; i++) {
		n = t_proc_fds(d);
		if (n <= base)
			break;
		usleep(10000);
	}
	printf("daemon fds: %d before, %d after\n", base, n);
	if (n > base)
		t_show_fds(d);
	if (n > base)
		t_fail("ivmcd leaks fds: %d before, %d after", base, n);
}

int main(void)
{
	struct child kids[NCHILD];
	pid_t d, pids[NCHILD], qpid;
	int base;

	t_alarm(100);
	/* Behaviour, not timing: a slow daemon (sanitizers, valgrind, a busy
	 * machine) must still get our hello in. */
	setenv("IVMC_CTL_BUDGET_US", "1000000", 0);
	d = t_daemon_start(NULL);
	atexit(daemon_kill_at_exit);
	/* uid 65534 children must reach the socket (0666) in t_dir. */
	if (chmod(t_dir, 0711))
		t_fail("chmod %s: %s", t_dir, strerror(errno));
	/* Warm up: our own control connection, its netns, the daemon's
	 * lazily opened fds, then the count to come back to. */
	normal_pair(true);
	status_answers("\"paired\":1");
	/* ivmcctl's connection may not be gone yet: the least of a few
	 * looks. */
	base = t_proc_fds(d);
	for (int i = 0; i < 20; i++) {
		usleep(10000);
		if (t_proc_fds(d) < base)
			base = t_proc_fds(d);
	}

	sequence_check();
	conn_storm();
	flood_check();
	daemon_alive(d);
	for (int i = 0; i < NCHILD; i++) {
		kids[i].idx = i;
		kids[i].nobody = i & 1;
		pids[i] = t_fork(fuzz_child, &kids[i]);
	}
	qpid = t_fork(query_flood, NULL);
	/* Served while the storm goes on. */
	normal_pair(false);
	status_answers("\"daemon\"");
	for (int i = 0; i < NCHILD; i++)
		if (t_wait(pids[i], 60000) != 0)
			t_fail("fuzz child %d failed", i);
	if (t_wait(qpid, 60000) != 0)
		t_fail("query flood failed");

	daemon_alive(d);
	normal_pair(true);
	fd_exhaustion(d);
	daemon_alive(d);
	normal_pair(true);
	status_answers("\"bad_messages\":[1-9]");
	fds_back(d, base);
	daemon_alive(d);
	log_clean();
	{
		char path[PATH_MAX];
		struct stat st;

		t_path(path, sizeof(path), "ivmcd.log");
		if (stat(path, &st) == 0)
			printf("daemon log: %lld bytes\n", (long long)st.st_size);
	}
	T_ASSERT_EQ(t_daemon_stop(d), 0);
	t_dpid = 0;
	log_clean();
	return t_late_failures ? T_FAIL : T_PASS;
}
