/* SPDX-License-Identifier: MIT */
/*
 * Description: the preload's semantics against an oracle (issue 4). One
 * program, two parts. Run with no arguments it is the driver: it starts a
 * private ivmcd and runs every scenario twice, plain (this program exec'd
 * as client and server, nothing preloaded) and accelerated (both exec'd
 * through ivmc-run), and requires the two runs to leave the same
 * transcripts. Run as `preload-oracle --scenario NAME --role client|server
 * --port P --out FILE` it is one participant of a scenario.
 *
 * A transcript holds only what TCP itself guarantees: the bytes and their
 * order (as totals and checksums), end of stream, return values that do
 * not depend on timing, errno classes, readiness that must (or must not)
 * be there. Never how reads are split or exactly when EAGAIN comes. Lines
 * starting with '~' are notes: a difference there is printed, not failed.
 *
 * Each participant first exchanges 1 MB each way (attach happens during
 * it), says "ready" to the driver on a pipe and waits for "go". In the
 * accelerated run the driver says go only once ivmcd's "paired" counter has
 * grown (bounded, 5 s): the scenario proper then runs on the channel. A run
 * in which nothing was paired fails ("not accelerated").
 *
 * fds of a participant: 3 from the driver (go), 4 to the driver (ready),
 * 5 from the peer participant, 6 to it (pipes, never accelerated).
 *
 * Environment: IVMC_ORACLE_ONLY=NAME[,NAME...] runs only those scenarios;
 * IVMC_ORACLE_KEEP=1 keeps the transcripts (the directory is printed).
 * Built with ASan the accelerated half runs only if the ASan runtime
 * accepts the preload in front of it (verify_asan_link_order=0); else that
 * half is skipped and said so.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>

#include "t_ctl.h"

#define FD_GO	   3
#define FD_READY   4
#define FD_PEER_RX 5
#define FD_PEER_TX 6

#define WARMUP_BYTES (1u << 20)
#define WATCHDOG_S   25

/* ======================================================================
 * participant
 * ====================================================================== */

static FILE *tr;	     /* the transcript */
static const char *role;     /* "client" or "server" */
static bool is_client;
static uint64_t rng = 0x5eed;
static pthread_mutex_t tr_mu = PTHREAD_MUTEX_INITIALIZER;

__attribute__((format(printf, 1, 2))) static void rec(const char *fmt, ...)
{
	va_list ap;

	pthread_mutex_lock(&tr_mu);
	va_start(ap, fmt);
	vfprintf(tr, fmt, ap);
	va_end(ap);
	fputc('\n', tr);
	fflush(tr);
	pthread_mutex_unlock(&tr_mu);
}

/* A participant that cannot go on: say why in the transcript, exit 2. */
__attribute__((noreturn, format(printf, 1, 2))) static void die(const char *fmt, ...)
{
	va_list ap;

	pthread_mutex_lock(&tr_mu);
	fprintf(tr, "ABORT: ");
	va_start(ap, fmt);
	vfprintf(tr, fmt, ap);
	va_end(ap);
	fputc('\n', tr);
	fflush(tr);
	fprintf(stderr, "%s: ABORT: ", role);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	_exit(2);
}

static void on_watchdog(int sig)
{
	static const char m[] = "ABORT: watchdog: scenario did not finish\n";

	(void)sig;
	if (tr)
		(void)!write(fileno(tr), m, sizeof(m) - 1);
	_exit(3);
}

static void watchdog(void)
{
	struct sigaction sa = { 0 };

	sa.sa_handler = on_watchdog;
	sigaction(SIGALRM, &sa, NULL);
	alarm(WATCHDOG_S);
}

/* errno as a class name: what the transcripts compare. */
static const char *ecls(int e)
{
	static __thread char buf[32];

	switch (e) {
	case 0: return "OK";
	case EAGAIN: return "EAGAIN";
	case EINTR: return "EINTR";
	case EPIPE: return "EPIPE";
	case ECONNRESET: return "ECONNRESET";
	case EBADF: return "EBADF";
	case EINVAL: return "EINVAL";
	case ENOTCONN: return "ENOTCONN";
	case EFAULT: return "EFAULT";
	case ETIMEDOUT: return "ETIMEDOUT";
	case EOPNOTSUPP: return "EOPNOTSUPP";
	default:
		snprintf(buf, sizeof(buf), "errno%d", e);
		return buf;
	}
}

/* "r=N" for a non-negative return, "-1 CLASS" otherwise. */
static const char *rstr(ssize_t r, int e)
{
	static __thread char buf[48];

	if (r >= 0)
		snprintf(buf, sizeof(buf), "%zd", r);
	else
		snprintf(buf, sizeof(buf), "-1 %s", ecls(e));
	return buf;
}

static const char *pollstr(int re)
{
	static __thread char buf[96];

	snprintf(buf, sizeof(buf), "%s%s%s%s%s%s", re & POLLIN ? "IN|" : "",
		 re & POLLOUT ? "OUT|" : "", re & POLLRDHUP ? "RDHUP|" : "",
		 re & POLLHUP ? "HUP|" : "", re & POLLERR ? "ERR|" : "",
		 re & POLLNVAL ? "NVAL|" : "");
	if (!buf[0])
		strcpy(buf, "0");
	else
		buf[strlen(buf) - 1] = 0;
	return buf;
}

static uint64_t rnd(uint64_t n)
{
	return n ? t_rand64(&rng) % n : 0;
}

static int64_t ms_now(void)
{
	return (int64_t)(t_now_ns() / 1000000);
}

/* Blocking helpers that do not care how the stream is split. */
static void write_all(int fd, const void *buf, size_t n)
{
	const char *p = buf;

	while (n) {
		ssize_t w = write(fd, p, n);

		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			die("write_all: %s", rstr(w, errno));
		p += w;
		n -= (size_t)w;
	}
}

/* Up to n bytes until end of stream: returns how many came. */
static size_t read_full(int fd, void *buf, size_t n)
{
	char *p = buf;
	size_t got = 0;

	while (got < n) {
		ssize_t r = read(fd, p + got, n - got);

		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			die("read_full: %s", rstr(r, errno));
		if (r == 0)
			break;
		got += (size_t)r;
	}
	return got;
}

/* n bytes of stream seed from offset off, in chunks; checked. */
static void send_stream(int fd, uint64_t seed, uint64_t off, size_t n)
{
	static char buf[65536];

	while (n) {
		size_t k = n < sizeof(buf) ? n : sizeof(buf);

		t_fill(seed, off, buf, k);
		write_all(fd, buf, k);
		off += k;
		n -= k;
	}
}

/* Read n bytes of stream seed at off: how many were right (stops at the
 * first wrong byte or at end of stream). */
static size_t recv_stream(int fd, uint64_t seed, uint64_t off, size_t n)
{
	static char buf[65536];
	size_t done = 0;

	while (done < n) {
		size_t k = n - done < sizeof(buf) ? n - done : sizeof(buf);
		size_t got = read_full(fd, buf, k);

		if (t_verify(seed, off + done, buf, got))
			return done;
		done += got;
		if (got < k)
			break;
	}
	return done;
}

static void pipe_put(int fd, char c)
{
	if (write(fd, &c, 1) != 1)
		die("pipe write: %s", strerror(errno));
}

static char pipe_get(int fd)
{
	char c;
	ssize_t r;

	do
		r = read(fd, &c, 1);
	while (r < 0 && errno == EINTR);
	if (r != 1)
		die("pipe read: %s", r ? strerror(errno) : "closed");
	return c;
}

static void nodelay(int fd)
{
	int one = 1;

	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

static int do_connect(int port)
{
	struct sockaddr_in a = { .sin_family = AF_INET,
				 .sin_port = htons((uint16_t)port),
				 .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	int64_t end = ms_now() + 5000;

	for (;;) {
		int fd = socket(AF_INET, SOCK_STREAM, 0);

		if (fd < 0)
			die("socket: %s", strerror(errno));
		if (connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0) {
			nodelay(fd);
			return fd;
		}
		if (errno != ECONNREFUSED || ms_now() > end)
			die("connect: %s", strerror(errno));
		close(fd);
		usleep(5000);
	}
}

static int do_accept(int port)
{
	struct sockaddr_in a = { .sin_family = AF_INET,
				 .sin_port = htons((uint16_t)port),
				 .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	int one = 1, lfd, fd;

	lfd = socket(AF_INET, SOCK_STREAM, 0);
	if (lfd < 0)
		die("socket: %s", strerror(errno));
	setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(lfd, (struct sockaddr *)&a, sizeof(a)) || listen(lfd, 4))
		die("bind/listen port %d: %s", port, strerror(errno));
	fd = accept(lfd, NULL, NULL);
	if (fd < 0)
		die("accept: %s", strerror(errno));
	close(lfd);
	nodelay(fd);
	return fd;
}

/* 1 MB each way, then ready/go with the driver. */
static void warmup(int fd)
{
	size_t n;

	if (is_client) {
		send_stream(fd, 901, 0, WARMUP_BYTES);
		n = recv_stream(fd, 902, 0, WARMUP_BYTES);
	} else {
		n = recv_stream(fd, 901, 0, WARMUP_BYTES);
		send_stream(fd, 902, 0, WARMUP_BYTES);
	}
	rec("warmup received %zu", n);
	if (n != WARMUP_BYTES)
		die("warm-up stream broken");
	pipe_put(FD_READY, 'R');
	if (pipe_get(FD_GO) != 'G')
		die("driver said no-go");
}

/* ---- 1. stream: blocking calls of every kind, both ways at once ---------- */

#define S1_BYTES (8u << 20)

struct s1_arg {
	int fd;
	uint64_t seed;
	uint64_t seed_rng;
	size_t bytes;
	int short_writes;
	int ops[8];
};

static void *s1_writer(void *p)
{
	struct s1_arg *a = p;
	uint64_t r = a->seed_rng;
	static __thread char buf[262144];
	size_t off = 0;

	while (off < a->bytes) {
		size_t k = 1 + t_rand64(&r) % sizeof(buf);
		int op = (int)(t_rand64(&r) % 4);
		ssize_t w;

		if (k > a->bytes - off)
			k = a->bytes - off;
		t_fill(a->seed, off, buf, k);
		if (op == 0) {
			w = write(a->fd, buf, k);
		} else if (op == 1) {
			size_t k1 = k / 3, k2 = k / 3;
			struct iovec v[3] = { { buf, k1 }, { buf + k1, k2 },
					      { buf + k1 + k2, k - k1 - k2 } };

			w = writev(a->fd, v, 3);
		} else if (op == 2) {
			w = send(a->fd, buf, k, 0);
		} else {
			struct iovec v[2] = { { buf, k / 2 },
					      { buf + k / 2, k - k / 2 } };
			struct msghdr m = { .msg_iov = v, .msg_iovlen = 2 };

			w = sendmsg(a->fd, &m, 0);
		}
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			die("stream op %d: %s", op, rstr(w, errno));
		if ((size_t)w < k)
			a->short_writes++;
		a->ops[op]++;
		off += (size_t)w;
	}
	if (shutdown(a->fd, SHUT_WR))
		die("shutdown: %s", strerror(errno));
	return NULL;
}

static void *s1_reader(void *p)
{
	struct s1_arg *a = p;
	uint64_t r = a->seed_rng;
	static __thread char buf[262144];
	size_t off = 0;
	bool bad = false;
	ssize_t n;

	for (;;) {
		size_t k = 1 + t_rand64(&r) % sizeof(buf);
		int op = (int)(t_rand64(&r) % 5);

		if (op == 0) {
			n = read(a->fd, buf, k);
		} else if (op == 1) {
			size_t k1 = k / 2;
			struct iovec v[2] = { { buf, k1 }, { buf + k1, k - k1 } };

			n = readv(a->fd, v, 2);
		} else if (op == 2) {
			n = recv(a->fd, buf, k, 0);
		} else if (op == 3) {
			struct iovec v[3] = { { buf, k / 4 },
					      { buf + k / 4, k / 4 },
					      { buf + 2 * (k / 4), k - 2 * (k / 4) } };
			struct msghdr m = { .msg_iov = v, .msg_iovlen = 3 };

			n = recvmsg(a->fd, &m, 0);
			if (n > 0 && (m.msg_flags & MSG_TRUNC))
				bad = true;
		} else {
			n = recvfrom(a->fd, buf, k, 0, NULL, NULL);
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			die("stream read op %d: %s", op, rstr(n, errno));
		if (n == 0)
			break;
		a->ops[op]++;
		if (!bad && t_verify(a->seed, off, buf, (size_t)n))
			bad = true;
		off += (size_t)n;
	}
	a->bytes = off;
	a->short_writes = bad;
	return NULL;
}

static void sc_stream(int fd)
{
	struct s1_arg w = { fd, is_client ? 11 : 12, is_client ? 3 : 4,
			    S1_BYTES, 0, { 0 } };
	struct s1_arg r = { fd, is_client ? 12 : 11, is_client ? 5 : 6, 0, 0,
			    { 0 } };
	pthread_t tw, trd;

	if (pthread_create(&tw, NULL, s1_writer, &w) ||
	    pthread_create(&trd, NULL, s1_reader, &r))
		die("pthread_create");
	pthread_join(tw, NULL);
	pthread_join(trd, NULL);
	rec("sent %zu bytes", w.bytes);
	rec("received %zu bytes to EOF, content %s", r.bytes,
	    r.short_writes ? "WRONG" : "ok");
	rec("~short blocking writes %d", w.short_writes);
	rec("~ops w %d/%d/%d/%d r %d/%d/%d/%d/%d", w.ops[0], w.ops[1], w.ops[2],
	    w.ops[3], r.ops[0], r.ops[1], r.ops[2], r.ops[3], r.ops[4]);
}

/* ---- 2. peek, waitall, dontwait, FIONREAD -------------------------------- */

static void sc_peek(int fd)
{
	static char big[200000], big2[200000];
	char a[64], b[64];
	struct pollfd p = { fd, POLLIN, 0 };
	ssize_t r;
	int n = -1;

	if (!is_client) {
		/* 1: a short message. */
		pipe_get(FD_PEER_RX);
		write_all(fd, "hello, peek world", 17);
		/* 2: 200000 bytes in pieces with pauses, for MSG_WAITALL. */
		pipe_get(FD_PEER_RX);
		t_fill(21, 0, big, sizeof(big));
		for (size_t off = 0; off < sizeof(big); off += 20000) {
			write_all(fd, big + off, 20000);
			usleep(2000);
		}
		/* 3: another short one, for recvmsg+MSG_PEEK over iovecs */
		pipe_get(FD_PEER_RX);
		write_all(fd, "0123456789abcdefghij", 20);
		/* end */
		pipe_get(FD_PEER_RX);
		r = read(fd, a, sizeof(a));
		rec("server: read after client's shutdown: %s", rstr(r, errno));
		return;
	}
	/* MSG_DONTWAIT on an empty socket. */
	r = recv(fd, a, sizeof(a), MSG_DONTWAIT);
	rec("recv DONTWAIT empty: %s", rstr(r, errno));
	r = recv(fd, a, sizeof(a), MSG_DONTWAIT | MSG_PEEK);
	rec("recv DONTWAIT|PEEK empty: %s", rstr(r, errno));
	r = ioctl(fd, FIONREAD, &n);
	rec("FIONREAD empty: %s n=%d", rstr(r, errno), n);
	p.revents = 0;
	r = poll(&p, 1, 0);
	rec("poll empty: %s %s", rstr(r, errno), pollstr(p.revents));

	pipe_put(FD_PEER_TX, '1');
	r = poll(&p, 1, 5000);
	rec("poll: %s %s", rstr(r, errno), pollstr(p.revents));
	/* A 17-byte write on loopback arrives whole. */
	n = -1;
	r = ioctl(fd, FIONREAD, &n);
	rec("FIONREAD: %s n=%d", rstr(r, errno), n);
	r = recv(fd, a, 5, MSG_PEEK);
	rec("peek 5: %s '%.*s'", rstr(r, errno), r > 0 ? (int)r : 0, a);
	r = recv(fd, a, sizeof(a), MSG_PEEK);
	rec("peek all: %s '%.*s'", rstr(r, errno), r > 0 ? (int)r : 0, a);
	r = recv(fd, a, sizeof(a), MSG_PEEK | MSG_DONTWAIT);
	rec("peek all dontwait: %s '%.*s'", rstr(r, errno), r > 0 ? (int)r : 0, a);
	n = -1;
	r = ioctl(fd, FIONREAD, &n);
	rec("FIONREAD after peeks: %s n=%d", rstr(r, errno), n);
	r = read(fd, b, 3);
	rec("read 3: %s '%.*s'", rstr(r, errno), r > 0 ? (int)r : 0, b);
	r = recv(fd, a, sizeof(a), MSG_PEEK);
	rec("peek rest: %s '%.*s'", rstr(r, errno), r > 0 ? (int)r : 0, a);
	r = recv(fd, b, 14, MSG_WAITALL);
	rec("recv WAITALL 14: %s '%.*s'", rstr(r, errno), r > 0 ? (int)r : 0, b);
	r = recv(fd, a, sizeof(a), MSG_DONTWAIT);
	rec("recv DONTWAIT drained: %s", rstr(r, errno));
	p.revents = 0;
	r = poll(&p, 1, 0);
	rec("poll drained: %s %s", rstr(r, errno), pollstr(p.revents));

	pipe_put(FD_PEER_TX, '2');
	memset(big2, 0, sizeof(big2));
	r = recv(fd, big2, sizeof(big2), MSG_WAITALL);
	rec("recv WAITALL 200000: %s content %s", rstr(r, errno),
	    r == (ssize_t)sizeof(big2) && !t_verify(21, 0, big2, sizeof(big2))
		    ? "ok" : "WRONG");
	r = recv(fd, a, sizeof(a), MSG_DONTWAIT);
	rec("recv DONTWAIT after: %s", rstr(r, errno));

	pipe_put(FD_PEER_TX, '3');
	{
		char x1[4], x2[6], y[32];
		struct iovec v[2] = { { x1, sizeof(x1) }, { x2, sizeof(x2) } };
		struct msghdr m = { .msg_iov = v, .msg_iovlen = 2 };

		r = poll(&p, 1, 5000);
		r = recvmsg(fd, &m, MSG_PEEK);
		rec("recvmsg PEEK 4+6: %s '%.4s' '%.6s' flags %#x", rstr(r, errno),
		    x1, x2, r >= 0 ? m.msg_flags : 0);
		r = recvfrom(fd, y, 10, MSG_PEEK, NULL, NULL);
		rec("recvfrom PEEK 10: %s '%.*s'", rstr(r, errno),
		    r > 0 ? (int)r : 0, y);
		r = recv(fd, y, 20, MSG_WAITALL);
		rec("recv WAITALL 20: %s '%.*s'", rstr(r, errno),
		    r > 0 ? (int)r : 0, y);
	}
	shutdown(fd, SHUT_WR);
	pipe_put(FD_PEER_TX, '4');
	r = recv(fd, a, sizeof(a), MSG_WAITALL);
	rec("recv WAITALL at EOF: %s", rstr(r, errno));
	r = recv(fd, a, sizeof(a), MSG_PEEK);
	rec("recv PEEK at EOF: %s", rstr(r, errno));
	r = recv(fd, a, sizeof(a), MSG_DONTWAIT);
	rec("recv DONTWAIT at EOF: %s", rstr(r, errno));
}

/* ---- 3. non-blocking: fill to EAGAIN, drain, POLLOUT -------------------- */

#define S3_TOTAL (24u << 20)

/* Writer of one phase: fill until EAGAIN, tell the reader, go on with
 * POLLOUT to S3_TOTAL, then shut the direction. */
static void s3_write(int fd, uint64_t seed, const char *how)
{
	static char buf[65536];
	size_t off = 0, at_eagain = 0;
	bool eagain = false, told = false;
	int polls = 0, pollout_bad = 0;

	while (off < S3_TOTAL) {
		size_t k = sizeof(buf) < S3_TOTAL - off ? sizeof(buf)
							: S3_TOTAL - off;
		ssize_t w;

		t_fill(seed, off, buf, k);
		w = write(fd, buf, k);
		if (w > 0) {
			off += (size_t)w;
			continue;
		}
		if (w == 0 || errno != EAGAIN)
			die("%s write: %s", how, rstr(w, errno));
		if (!told) {
			eagain = true;
			at_eagain = off;
			told = true;
			rec("%s: write until full: -1 %s", how, ecls(errno));
			pipe_put(FD_PEER_TX, 'D'); /* reader: drain now */
		}
		{
			struct pollfd p = { fd, POLLOUT, 0 };
			int r = poll(&p, 1, 5000);

			polls++;
			if (r != 1 || !(p.revents & POLLOUT))
				pollout_bad++;
			if (r == 0)
				die("%s: no POLLOUT within 5 s (%zu written)",
				    how, off);
		}
	}
	if (!told)
		pipe_put(FD_PEER_TX, 'D');
	rec("%s: EAGAIN before %u bytes: %s", how, S3_TOTAL,
	    eagain ? "yes" : "no");
	rec("%s: poll POLLOUT without POLLOUT: %d", how, pollout_bad);
	rec("~%s: first EAGAIN after %zu bytes, %d polls", how, at_eagain, polls);
	rec("%s: wrote %zu", how, off);
	if (shutdown(fd, SHUT_WR))
		die("shutdown: %s", strerror(errno));
}

static void s3_read(int fd, uint64_t seed, const char *how)
{
	size_t n;

	pipe_get(FD_PEER_RX);
	n = recv_stream(fd, seed, 0, S3_TOTAL + 1);
	rec("%s: read %zu good bytes to EOF", how, n);
}

static void sc_nonblock(int fd)
{
	int fl = fcntl(fd, F_GETFL), on = 1, off = 0;

	/* Phase A: client -> server, client non-blocking by fcntl. */
	if (is_client) {
		rec("fcntl O_NONBLOCK: %d", fcntl(fd, F_SETFL, fl | O_NONBLOCK));
		rec("F_GETFL has O_NONBLOCK: %d", !!(fcntl(fd, F_GETFL) & O_NONBLOCK));
		s3_write(fd, 31, "fcntl");
		rec("fcntl clear: %d", fcntl(fd, F_SETFL, fl));
	} else {
		s3_read(fd, 31, "fcntl");
	}
	/* Phase B: server -> client, server non-blocking by FIONBIO. */
	if (!is_client) {
		rec("ioctl FIONBIO: %d", ioctl(fd, FIONBIO, &on));
		rec("F_GETFL has O_NONBLOCK: %d", !!(fcntl(fd, F_GETFL) & O_NONBLOCK));
		s3_write(fd, 32, "fionbio");
		rec("ioctl FIONBIO off: %d", ioctl(fd, FIONBIO, &off));
	} else {
		/* Blocking again: reads must block, not EAGAIN. */
		s3_read(fd, 32, "fionbio");
	}
}

/* ---- 4. readiness: poll, select, epoll LT/ET/ONESHOT/two sets ---------- */

#define S4_ROUNDS 2000

enum { M_POLL, M_SELECT, M_LT, M_ET, M_TWO, M_ONESHOT, M_N };
static const char *const mname[M_N] = { "poll", "select", "epoll-lt",
					"epoll-et", "epoll-two-sets",
					"epoll-oneshot" };

/* Wait for the fd to be readable by mode m: 1 ready, 0 timeout. */
static int s4_wait(int m, int fd, int ep1, int ep2, int round, int *bad)
{
	struct epoll_event ev[4];
	int r;

	if (m == M_POLL) {
		struct pollfd p = { fd, POLLIN, 0 };

		r = poll(&p, 1, 5000);
		if (r == 1 && !(p.revents & POLLIN))
			(*bad)++;
		return r;
	}
	if (m == M_SELECT) {
		fd_set rd;
		struct timeval tv = { 5, 0 };

		FD_ZERO(&rd);
		FD_SET(fd, &rd);
		r = select(fd + 1, &rd, NULL, NULL, &tv);
		if (r == 1 && !FD_ISSET(fd, &rd))
			(*bad)++;
		return r;
	}
	r = epoll_wait(m == M_TWO && (round & 1) ? ep2 : ep1, ev, 4, 5000);
	if (r < 0 && errno == EINTR)
		return 0;
	if (r > 1 || (r == 1 && (ev[0].data.u32 != 77 ||
				 !(ev[0].events & EPOLLIN))))
		(*bad)++;
	if (r == 1 && m == M_TWO) {
		/* Level-triggered in the other set too while unread (within
		 * 100 ms: plain TCP on a loaded machine is not always at 0). */
		int r2 = epoll_wait((round & 1) ? ep1 : ep2, ev, 4, 100);

		if (r2 != 1)
			(*bad)++;
	}
	if (r == 1 && m == M_ONESHOT) {
		/* Disarmed until MOD, data or not. */
		if (epoll_wait(ep1, ev, 4, 0) != 0)
			(*bad)++;
	}
	return r;
}

static void s4_mode(int fd, int m, uint64_t *off)
{
	static char req[4096], got[4096];
	int ep1 = -1, ep2 = -1, bad = 0, spurious = 0, idle_ready = 0;
	int rounds = 0;
	struct epoll_event ev = { EPOLLIN, { .u32 = 77 } };

	if (m >= M_LT) {
		ep1 = epoll_create1(EPOLL_CLOEXEC);
		if (m == M_ET)
			ev.events |= EPOLLET;
		if (m == M_ONESHOT)
			ev.events |= EPOLLONESHOT;
		if (ep1 < 0 || epoll_ctl(ep1, EPOLL_CTL_ADD, fd, &ev))
			die("epoll: %s", strerror(errno));
		if (m == M_TWO) {
			ep2 = epoll_create1(EPOLL_CLOEXEC);
			if (ep2 < 0 || epoll_ctl(ep2, EPOLL_CTL_ADD, fd, &ev))
				die("epoll 2: %s", strerror(errno));
		}
	}
	for (; rounds < S4_ROUNDS; rounds++) {
		size_t s = 1 + rnd(sizeof(req)), have = 0;
		bool first = true;

		t_fill(41, *off, req, s);
		*off += s;
		for (size_t w = 0; w < s;) {
			ssize_t k = write(fd, req + w, s - w);

			if (k > 0) {
				w += (size_t)k;
			} else if (k < 0 && errno == EAGAIN) {
				struct pollfd p = { fd, POLLOUT, 0 };

				if (poll(&p, 1, 5000) != 1)
					die("%s: no POLLOUT", mname[m]);
			} else {
				die("%s write: %s", mname[m], rstr(k, errno));
			}
		}
		while (have < s) {
			ssize_t k;
			int r = s4_wait(m, fd, ep1, ep2, rounds, &bad);

			if (r < 0)
				die("%s wait: %s", mname[m], strerror(errno));
			if (r == 0) {
				rec("%s: round %d: TIMEOUT waiting for readable (%zu of %zu)",
				    mname[m], rounds, have, s);
				goto out;
			}
			do {
				/* ET: read on until EAGAIN, even when all
				 * came (into a scratch buffer then). */
				if (have == s) {
					char x[64];

					k = read(fd, x, sizeof(x));
					if (k > 0)
						die("%s: more than echoed", mname[m]);
					if (k < 0 && errno == EAGAIN)
						break;
				} else {
					k = read(fd, got + have, s - have);
				}
				if (k > 0)
					have += (size_t)k;
				else if (k < 0 && errno == EAGAIN && first)
					spurious++;
				else if (k == 0)
					die("%s: EOF", mname[m]);
				else if (k < 0 && errno != EAGAIN)
					die("%s read: %s", mname[m], rstr(k, errno));
				first = false;
			} while (m == M_ET && k > 0);
			if (m == M_ONESHOT &&
			    epoll_ctl(ep1, EPOLL_CTL_MOD, fd, &ev))
				die("epoll MOD: %s", strerror(errno));
			first = true;
		}
		if (memcmp(req, got, s)) {
			rec("%s: round %d: echo WRONG", mname[m], rounds);
			goto out;
		}
		/* Nothing in flight now: no readiness. */
		if (m == M_POLL) {
			struct pollfd p = { fd, POLLIN, 0 };

			idle_ready += poll(&p, 1, 0) != 0;
		} else if (m == M_SELECT) {
			fd_set rd;
			struct timeval tv = { 0, 0 };

			FD_ZERO(&rd);
			FD_SET(fd, &rd);
			idle_ready += select(fd + 1, &rd, NULL, NULL, &tv) != 0;
		} else {
			struct epoll_event e2[4];

			idle_ready += epoll_wait(ep1, e2, 4, 0) != 0;
			if (ep2 >= 0)
				idle_ready += epoll_wait(ep2, e2, 4, 0) != 0;
		}
	}
out:
	rec("%s: %d rounds echoed, wrong readiness %d, ready while idle %d",
	    mname[m], rounds, bad, idle_ready);
	rec("~%s: readable but first read EAGAIN: %d", mname[m], spurious);
	if (ep1 >= 0)
		close(ep1);
	if (ep2 >= 0)
		close(ep2);
}

static void sc_readiness(int fd)
{
	static char buf[65536];
	uint64_t off = 0;
	size_t total = 0;

	if (!is_client) {
		/* Echo until EOF, blocking. */
		for (;;) {
			ssize_t r = read(fd, buf, sizeof(buf));

			if (r < 0 && errno == EINTR)
				continue;
			if (r < 0)
				die("echo read: %s", rstr(r, errno));
			if (r == 0)
				break;
			write_all(fd, buf, (size_t)r);
			total += (size_t)r;
		}
		rec("echoed %zu bytes to EOF", total);
		return;
	}
	if (fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK))
		die("fcntl: %s", strerror(errno));
	for (int m = 0; m < M_N; m++)
		s4_mode(fd, m, &off);
	shutdown(fd, SHUT_WR);
	{
		struct pollfd p = { fd, POLLIN, 0 };
		ssize_t r;

		poll(&p, 1, 5000);
		r = read(fd, buf, sizeof(buf));
		rec("client: after SHUT_WR read: %s", rstr(r, errno));
	}
	rec("client: sent %llu", (unsigned long long)off);
}

/* ---- 5. shutdown(SHUT_WR), RDHUP ----------------------------------------- */

#define RDHUP_MASK (POLLIN | POLLOUT | POLLRDHUP | POLLHUP | POLLERR)

static void sc_shutdown(int fd)
{
	static char buf[65536];
	struct pollfd p = { fd, POLLIN | POLLOUT | POLLRDHUP, 0 };
	ssize_t r;
	int n;

	if (is_client) {
		send_stream(fd, 51, 0, 100000);
		r = shutdown(fd, SHUT_WR);
		rec("shutdown WR: %s", rstr(r, errno));
		r = send(fd, "x", 1, MSG_NOSIGNAL);
		rec("send after SHUT_WR: %s", rstr(r, errno));
		n = (int)recv_stream(fd, 52, 0, 50000);
		rec("reply %d good bytes", n);
		r = read(fd, buf, sizeof(buf));
		rec("read at EOF: %s", rstr(r, errno));
		r = read(fd, buf, sizeof(buf));
		rec("read at EOF again: %s", rstr(r, errno));
		pipe_get(FD_PEER_RX); /* the server has closed */
		p.revents = 0;
		r = poll(&p, 1, 5000);
		rec("poll after both ends shut: %s %s", rstr(r, errno),
		    pollstr(p.revents & RDHUP_MASK));
		{
			int ep = epoll_create1(0);
			struct epoll_event ev = { EPOLLIN | EPOLLOUT | EPOLLRDHUP, { .u32 = 5 } }, o[2];

			epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
			r = epoll_wait(ep, o, 2, 5000);
			rec("epoll after both ends shut: %s %s", rstr(r, errno),
			    pollstr(r == 1 ? (int)(o[0].events & RDHUP_MASK) : 0));
			close(ep);
		}
		return;
	}
	/* server */
	{
		int ep = epoll_create1(0);
		struct epoll_event ev = { EPOLLIN | EPOLLRDHUP, { .u32 = 5 } }, o[2];
		size_t got = 0;
		bool rdhup_poll = false, rdhup_epoll = false;
		int64_t end = ms_now() + 10000;

		epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
		/* Read to EOF through epoll (LT), noting RDHUP on the way. */
		for (;;) {
			r = epoll_wait(ep, o, 2, 5000);
			if (r != 1)
				die("epoll_wait: %s", rstr(r, errno));
			if (o[0].events & EPOLLRDHUP)
				rdhup_epoll = true;
			r = read(fd, buf, sizeof(buf));
			if (r < 0)
				die("read: %s", rstr(r, errno));
			if (r == 0)
				break;
			if (t_verify(51, got, buf, (size_t)r))
				die("stream wrong");
			got += (size_t)r;
			if (ms_now() > end)
				die("no EOF");
		}
		rec("read %zu to EOF", got);
		rec("EPOLLRDHUP seen by the time of EOF: %d", rdhup_epoll);
		r = epoll_wait(ep, o, 2, 0);
		rec("epoll after EOF: %s %s", rstr(r, errno),
		    pollstr(r == 1 ? (int)(o[0].events & RDHUP_MASK) : 0));
		p.revents = 0;
		r = poll(&p, 1, 0);
		rdhup_poll = p.revents & POLLRDHUP;
		rec("poll after EOF: %s %s", rstr(r, errno),
		    pollstr(p.revents & RDHUP_MASK));
		rec("POLLRDHUP: %d", rdhup_poll);
		r = read(fd, buf, sizeof(buf));
		rec("read at EOF again: %s", rstr(r, errno));
		close(ep);
	}
	send_stream(fd, 52, 0, 50000);
	r = close(fd);
	rec("close: %s", rstr(r, errno));
	pipe_put(FD_PEER_TX, 'C');
}

/* ---- 6. write to a closed peer: EPIPE, SIGPIPE --------------------------- */

static volatile sig_atomic_t sigpipes;

static void on_sigpipe(int sig)
{
	(void)sig;
	sigpipes++;
}

static void sc_peerclose(int fd)
{
	char buf[4096];
	ssize_t r;
	int i, e = 0;

	if (!is_client) {
		r = close(fd);
		rec("server close: %s", rstr(r, errno));
		pipe_put(FD_PEER_TX, 'C');
		return;
	}
	{
		struct sigaction sa = { 0 };

		sa.sa_handler = on_sigpipe;
		sigaction(SIGPIPE, &sa, NULL);
	}
	pipe_get(FD_PEER_RX);
	r = read(fd, buf, sizeof(buf));
	rec("read: %s", rstr(r, errno));
	/* The first write may still go out (the RST comes back for it). */
	memset(buf, 'p', sizeof(buf));
	for (i = 0; i < 500; i++) {
		r = send(fd, buf, 100, MSG_NOSIGNAL);
		if (r < 0) {
			e = errno;
			break;
		}
		usleep(2000);
	}
	rec("send NOSIGNAL until error: -1 %s, SIGPIPE %d", ecls(e),
	    (int)sigpipes);
	r = send(fd, buf, 100, MSG_NOSIGNAL);
	rec("send NOSIGNAL again: %s, SIGPIPE %d", rstr(r, errno), (int)sigpipes);
	r = write(fd, buf, 100);
	e = errno;
	rec("write: %s, SIGPIPE %d", rstr(r, e), (int)sigpipes);
	r = send(fd, buf, 100, 0);
	e = errno;
	rec("send: %s, SIGPIPE %d", rstr(r, e), (int)sigpipes);
	{
		struct iovec v = { buf, 10 };
		struct msghdr m = { .msg_iov = &v, .msg_iovlen = 1 };

		r = sendmsg(fd, &m, 0);
		e = errno;
		rec("sendmsg: %s, SIGPIPE %d", rstr(r, e), (int)sigpipes);
		r = writev(fd, &v, 1);
		e = errno;
		rec("writev: %s, SIGPIPE %d", rstr(r, e), (int)sigpipes);
	}
	r = read(fd, buf, sizeof(buf));
	rec("read after: %s", rstr(r, errno));
	{
		struct pollfd p = { fd, POLLIN | POLLOUT | POLLRDHUP, 0 };

		r = poll(&p, 1, 1000);
		rec("poll: %s %s", rstr(r, errno), pollstr(p.revents & RDHUP_MASK));
	}
}

/* ---- 7. SO_RCVTIMEO ------------------------------------------------------ */

static void sc_rcvtimeo(int fd)
{
	char buf[64];
	struct timeval tv = { 0, 200000 }, tv2 = { 0, 0 };
	socklen_t l = sizeof(tv2);
	int64_t t0, dt;
	ssize_t r;

	if (!is_client) {
		r = read(fd, buf, 1);
		rec("server read: %s", rstr(r, errno));
		write_all(fd, "pong", 4);
		r = read(fd, buf, 1);
		rec("server read at end: %s", rstr(r, errno));
		return;
	}
	r = setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	rec("setsockopt: %s", rstr(r, errno));
	r = getsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv2, &l);
	rec("getsockopt: %s %ld.%06ld", rstr(r, errno), (long)tv2.tv_sec,
	    (long)tv2.tv_usec);
	t0 = ms_now();
	r = recv(fd, buf, sizeof(buf), 0);
	dt = ms_now() - t0;
	rec("recv idle: %s after >=190ms: %d", rstr(r, errno), dt >= 190);
	rec("~recv idle took %lld ms", (long long)dt);
	t0 = ms_now();
	r = read(fd, buf, sizeof(buf));
	dt = ms_now() - t0;
	rec("read idle: %s after >=190ms: %d", rstr(r, errno), dt >= 190);
	t0 = ms_now();
	r = recv(fd, buf, sizeof(buf), MSG_WAITALL);
	dt = ms_now() - t0;
	rec("recv WAITALL idle: %s after >=190ms: %d", rstr(r, errno), dt >= 190);
	t0 = ms_now();
	r = recv(fd, buf, sizeof(buf), MSG_PEEK);
	dt = ms_now() - t0;
	rec("recv PEEK idle: %s after >=190ms: %d", rstr(r, errno), dt >= 190);
	write_all(fd, "p", 1);
	r = recv(fd, buf, 4, MSG_WAITALL);
	rec("recv pong: %s '%.*s'", rstr(r, errno), r > 0 ? (int)r : 0, buf);
	/* Data then idle: WAITALL with a timeout returns what came. */
	tv.tv_usec = 0;
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)); /* off */
	shutdown(fd, SHUT_WR);
}

/* ---- 8. fork after connect ------------------------------------------------ */

#define S8_CHUNK (512u << 10)
#define S8_CHUNKS 8

static void sc_fork(int fd)
{
	size_t n;

	if (!is_client) {
		char ack[32];

		n = recv_stream(fd, 81, 0, (S8_CHUNKS + 2) * S8_CHUNK);
		rec("server got %zu good bytes", n);
		snprintf(ack, sizeof(ack), "%zu", n);
		write_all(fd, ack, strlen(ack));
		shutdown(fd, SHUT_WR);
		n = recv_stream(fd, 81, 0, 1); /* EOF */
		rec("server: then EOF: %s", n == 0 ? "yes" : "no");
		return;
	}
	{
		int p2c[2], c2p[2], st = 0;
		pid_t pid;

		if (pipe(p2c) || pipe(c2p))
			die("pipe");
		pid = fork();
		if (pid < 0)
			die("fork");
		if (pid == 0) {
			for (int i = 0; i < S8_CHUNKS; i += 2) {
				send_stream(fd, 81, (uint64_t)i * S8_CHUNK, S8_CHUNK);
				pipe_put(c2p[1], 'c');
				if (i + 2 < S8_CHUNKS)
					pipe_get(p2c[0]);
			}
			close(fd);
			_exit(0);
		}
		for (int i = 1; i < S8_CHUNKS; i += 2) {
			pipe_get(c2p[0]);
			send_stream(fd, 81, (uint64_t)i * S8_CHUNK, S8_CHUNK);
			if (i + 1 < S8_CHUNKS)
				pipe_put(p2c[1], 'p');
		}
		if (waitpid(pid, &st, 0) != pid)
			die("waitpid");
		rec("child exit: %d", WIFEXITED(st) ? WEXITSTATUS(st) : -1);
		/* The child closed its fd and exited: the connection goes on. */
		send_stream(fd, 81, (uint64_t)S8_CHUNKS * S8_CHUNK, 2 * S8_CHUNK);
	}
	{
		char ack[32] = { 0 };

		n = read_full(fd, ack, sizeof(ack) - 1);
		rec("ack '%s' then EOF", ack);
	}
	shutdown(fd, SHUT_WR);
}

/* ---- 8a. both ends send before either reads ------------------------------ */

/* 2 MiB: more than a ring (64 KiB by default, 256 KiB before rings grew),
 * below what loopback TCP buffers (some 4 MB here) and what a ring that
 * grows does (S + L, 4.06 MiB by default, docs/protocol.md 3.7): both sends
 * must complete before any read. A fixed ring stopped at its size. */
#define S8A_BYTES (2u << 20)

static void sc_bothsend(int fd)
{
	uint64_t mine = is_client ? 81 : 82, theirs = is_client ? 82 : 81;

	send_stream(fd, mine, 0, S8A_BYTES);
	rec("sent %u bytes without reading", S8A_BYTES);
	rec("then read %zu good bytes", recv_stream(fd, theirs, 0, S8A_BYTES));
}

/* ---- 8b. exec with unread bytes ------------------------------------------ */

#define S8B_BYTES (48u << 10)
#define S8B_OWN	  1000u

/* The exec'd reader (argv: --exec-reader N SEED OFF): reads N bytes from
 * fd 0, a plain TCP socket now, and says on stdout how many were right. */
static int exec_reader(size_t n, uint64_t seed, uint64_t off)
{
	size_t got = recv_stream(0, seed, off, n);

	printf("%zu", got);
	return got == n ? 0 : 1;
}

/* The client of 8b and 8c: n bytes of stream seed, "sent" to the server
 * on the pipe, then its answer to the end. */
static void send_then_ack(int fd, uint64_t seed, size_t n)
{
	char ack[32] = { 0 };

	send_stream(fd, seed, 0, n);
	pipe_put(FD_PEER_TX, 's');
	rec("client: ack '%s' then EOF",
	    (read_full(fd, ack, sizeof(ack) - 1), ack));
	shutdown(fd, SHUT_WR);
}

/* The server has not read what the client sent (it is in the ring) when
 * it execs a reader with the socket as stdin and no preload: the reader
 * must get every byte, in order. */
static void sc_exec(int fd)
{
	if (is_client) {
		send_then_ack(fd, 85, S8B_BYTES);
		return;
	}
	{
		int out[2], st = 0;
		char got[32] = { 0 }, a1[24], a2[24], a3[24];
		pid_t pid;

		pipe_get(FD_PEER_RX); /* all sent: in the ring, or on TCP */
		rec("server: read %zu good bytes itself",
		    recv_stream(fd, 85, 0, S8B_OWN));
		if (pipe(out))
			die("pipe");
		pid = fork();
		if (pid < 0)
			die("fork");
		if (pid == 0) {
			snprintf(a1, sizeof(a1), "%u", S8B_BYTES - S8B_OWN);
			snprintf(a2, sizeof(a2), "%d", 85);
			snprintf(a3, sizeof(a3), "%u", S8B_OWN);
			dup2(fd, 0);
			dup2(out[1], 1);
			unsetenv("LD_PRELOAD"); /* a program that cannot hold it */
			execl("/proc/self/exe", "preload-oracle", "--exec-reader",
			      a1, a2, a3, (char *)NULL);
			_exit(127);
		}
		close(out[1]);
		(void)read_full(out[0], got, sizeof(got) - 1);
		close(out[0]);
		if (waitpid(pid, &st, 0) != pid)
			die("waitpid");
		rec("server: exec'd reader got %s good bytes, exit %d", got,
		    WIFEXITED(st) ? WEXITSTATUS(st) : -1);
		write_all(fd, "done", 4);
		shutdown(fd, SHUT_WR);
	}
}

/* ---- 8c. splice with unread bytes ----------------------------------------- */

#define S8C_BYTES (200u * 1000)

/* The server reads a little itself, then splices the rest from the socket
 * into a pipe (bytes the preload does not see: the connection goes back to
 * TCP, what was in the ring comes again on it) and checks what comes out
 * of the pipe. */
static void sc_splice(int fd)
{
	static char buf[65536];
	size_t off, good;
	int p[2];

	if (is_client) {
		send_then_ack(fd, 86, S8C_BYTES);
		return;
	}
	pipe_get(FD_PEER_RX);
	off = recv_stream(fd, 86, 0, S8B_OWN);
	rec("server: read %zu good bytes itself", off);
	if (pipe(p))
		die("pipe");
	good = off;
	while (off < S8C_BYTES) {
		ssize_t n = splice(fd, NULL, p[1], NULL, S8C_BYTES - off, 0);

		if (n <= 0) {
			rec("server: splice at %zu: %s", off, rstr(n, errno));
			break;
		}
		if (read_full(p[0], buf, (size_t)n) != (size_t)n)
			die("read from the pipe");
		if (good == off && !t_verify(86, off, buf, (size_t)n))
			good += (size_t)n;
		off += (size_t)n;
	}
	rec("server: spliced up to %zu, good up to %zu", off, good);
	close(p[0]);
	close(p[1]);
	write_all(fd, "done", 4);
	shutdown(fd, SHUT_WR);
}

/* ---- 9. dup, dup2, close ------------------------------------------------- */

static void sc_dup(int fd)
{
	char buf[64];
	ssize_t r;

	if (!is_client) {
		r = (ssize_t)read_full(fd, buf, 9);
		rec("server: '%.*s'", (int)r, buf);
		rec("server: %zu good bytes", recv_stream(fd, 91, 0, 1u << 20));
		r = (ssize_t)read_full(fd, buf, 10);
		rec("server: '%.*s'", (int)r, buf);
		write_all(fd, "reply", 5);
		r = (ssize_t)read_full(fd, buf, 11);
		rec("server: '%.*s'", (int)r, buf);
		r = read(fd, buf, sizeof(buf));
		rec("server: after dup2 over the last fd: %s", rstr(r, errno));
		return;
	}
	{
		int b = dup(fd), c, d, nul;

		rec("dup: %s", b >= 0 ? "ok" : ecls(errno));
		r = close(fd);
		rec("close original: %s", rstr(r, errno));
		write_all(b, "via dup, ", 9);
		send_stream(b, 91, 0, 1u << 20);
		nul = open("/dev/null", O_RDWR | O_CLOEXEC);
		c = open("/dev/null", O_RDWR);
		r = dup2(b, c);
		rec("dup2 onto another fd: %s", r == c ? "ok" : ecls(errno));
		r = close(b);
		rec("close dup: %s", rstr(r, errno));
		write_all(c, "via dup2, ", 10);
		r = (ssize_t)read_full(c, buf, 5);
		rec("read via dup2'd fd: '%.*s'", (int)r, buf);
		d = fcntl(c, F_DUPFD_CLOEXEC, 50);
		rec("F_DUPFD_CLOEXEC >= 50: %d", d >= 50);
		r = close(c);
		rec("close: %s", rstr(r, errno));
		write_all(d, "via dupfd, ", 11);
		r = write(c, "x", 1);
		rec("write to the closed number: %s", rstr(r, errno));
		/* dup2 /dev/null over the last fd naming the socket: closed. */
		r = dup2(nul, d);
		rec("dup2 over the socket: %s", r == d ? "ok" : ecls(errno));
		r = write(d, "xyz", 3);
		rec("write to /dev/null there: %s", rstr(r, errno));
		close(d);
		close(nul);
	}
}

/* ---- 10. EINTR ----------------------------------------------------------- */

static volatile sig_atomic_t alarms;

static void on_alrm(int sig)
{
	(void)sig;
	alarms++;
}

static void sc_eintr(int fd)
{
	char buf[64];
	ssize_t r;

	if (!is_client) {
		pipe_get(FD_PEER_RX);
		write_all(fd, "after the signal", 16);
		r = read(fd, buf, 1);
		rec("server read at end: %s", rstr(r, errno));
		return;
	}
	{
		struct sigaction sa = { 0 };
		struct itimerval it = { { 0, 0 }, { 0, 100000 } };

		alarm(0);
		sa.sa_handler = on_alrm; /* no SA_RESTART */
		sigaction(SIGALRM, &sa, NULL);
		setitimer(ITIMER_REAL, &it, NULL);
		r = recv(fd, buf, sizeof(buf), 0);
		rec("recv interrupted: %s, alarms %d", rstr(r, errno), (int)alarms);
		it.it_value.tv_usec = 100000;
		setitimer(ITIMER_REAL, &it, NULL);
		r = read(fd, buf, sizeof(buf));
		rec("read interrupted: %s, alarms %d", rstr(r, errno), (int)alarms);
		it.it_value.tv_usec = 100000;
		setitimer(ITIMER_REAL, &it, NULL);
		{
			struct pollfd p = { fd, POLLIN, 0 };

			r = poll(&p, 1, 5000);
			rec("poll interrupted: %s, alarms %d", rstr(r, errno),
			    (int)alarms);
		}
		it.it_value.tv_usec = 100000;
		setitimer(ITIMER_REAL, &it, NULL);
		{
			int ep = epoll_create1(0);
			struct epoll_event ev = { EPOLLIN, { .u32 = 1 } }, o;

			epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
			r = epoll_wait(ep, &o, 1, 5000);
			rec("epoll_wait interrupted: %s, alarms %d", rstr(r, errno),
			    (int)alarms);
			close(ep);
		}
		it.it_value.tv_usec = 100000;
		setitimer(ITIMER_REAL, &it, NULL);
		r = recv(fd, buf, sizeof(buf), MSG_WAITALL);
		rec("recv WAITALL interrupted: %s, alarms %d", rstr(r, errno),
		    (int)alarms);
		watchdog();
	}
	pipe_put(FD_PEER_TX, 'S');
	r = recv(fd, buf, 16, MSG_WAITALL);
	rec("then: %s '%.*s'", rstr(r, errno), r > 0 ? (int)r : 0, buf);
	shutdown(fd, SHUT_WR);
}

/* ---- 11. select/poll as a sleep with a connection open ------------------- */

static void sc_sleep(int fd)
{
	char buf[8];
	int zero = 0, ok_sel = 0, ok_sel_fd = 0, ok_poll = 0;
	int64_t t0 = ms_now();
	ssize_t r;

	if (!is_client) {
		r = read(fd, buf, 1);
		rec("server read at end: %s", rstr(r, errno));
		return;
	}
	for (int i = 0; i < 100; i++) {
		struct timeval tv = { 0, 1000 };

		ok_sel += select(0, NULL, NULL, NULL, &tv) == 0;
	}
	for (int i = 0; i < 100; i++) {
		struct timeval tv = { 0, 1000 };
		fd_set rd;

		FD_ZERO(&rd);
		FD_SET(fd, &rd);
		ok_sel_fd += select(fd + 1, &rd, NULL, NULL, &tv) == 0 &&
			     !FD_ISSET(fd, &rd);
	}
	for (int i = 0; i < 100; i++) {
		struct pollfd p = { fd, POLLIN, 0 };

		ok_poll += poll(&p, 1, 1) == 0;
		ok_poll -= poll(NULL, 0, 1) != 0;
	}
	rec("select() sleeps returning 0: %d/100", ok_sel);
	rec("select(idle socket) returning 0: %d/100", ok_sel_fd);
	rec("poll(idle socket)/poll(none) returning 0: %d/100", ok_poll);
	rec("took at least 300 ms: %d", ms_now() - t0 >= 300);
	(void)zero;
	shutdown(fd, SHUT_WR);
}

/* ---- the scenario table -------------------------------------------------- */

struct scenario {
	const char *name;
	void (*fn)(int fd);
};

static const struct scenario scenarios[] = {
	{ "stream", sc_stream },     { "peek", sc_peek },
	{ "nonblock", sc_nonblock }, { "readiness", sc_readiness },
	{ "shutdown", sc_shutdown }, { "peerclose", sc_peerclose },
	{ "rcvtimeo", sc_rcvtimeo }, { "fork", sc_fork },
	{ "dup", sc_dup },	     { "eintr", sc_eintr },
	{ "sleep", sc_sleep },	     { "bothsend", sc_bothsend },
	{ "exec", sc_exec },	     { "splice", sc_splice },
};
#define NSCEN (int)(sizeof(scenarios) / sizeof(scenarios[0]))

static int participant(const char *name, const char *rl, int port,
		       const char *out)
{
	const struct scenario *sc = NULL;
	int fd;

	for (int i = 0; i < NSCEN; i++)
		if (!strcmp(scenarios[i].name, name))
			sc = &scenarios[i];
	role = rl;
	is_client = !strcmp(rl, "client");
	tr = fopen(out, "w");
	if (!sc || !tr || (!is_client && strcmp(rl, "server")))
		return 2;
	rng = 0x1234 + (uint64_t)is_client;
	signal(SIGPIPE, SIG_IGN);
	watchdog();
	fd = is_client ? do_connect(port) : do_accept(port);
	rec("%s connected", role);
	warmup(fd);
	sc->fn(fd);
	rec("end");
	fclose(tr);
	return 0;
}

/* ======================================================================
 * driver
 * ====================================================================== */

static char self[PATH_MAX], runbin[PATH_MAX], ctlbin[PATH_MAX];

static int free_port(void)
{
	struct sockaddr_in a = { .sin_family = AF_INET,
				 .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t l = sizeof(a);
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), port;

	if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) ||
	    getsockname(fd, (struct sockaddr *)&a, &l))
		t_fail("free port: %s", strerror(errno));
	port = ntohs(a.sin_port);
	close(fd);
	return port;
}

/* "paired" from ivmcctl --json status, or -1. */
static long long paired(void)
{
	char cmd[PATH_MAX * 2 + 64], buf[8192];
	FILE *f;
	size_t n;
	const char *p;

	snprintf(cmd, sizeof(cmd), "%s -s %s --json status 2>/dev/null", ctlbin,
		 t_sock);
	f = popen(cmd, "r");
	if (!f)
		return -1;
	n = fread(buf, 1, sizeof(buf) - 1, f);
	pclose(f);
	buf[n] = 0;
	p = strstr(buf, "\"paired\":");
	return p ? atoll(p + 9) : -1;
}

/* Move fds from[0..n) to 3..3+n in a child about to exec. */
static void place_fds(const int *from, int n)
{
	int tmp[8];

	for (int i = 0; i < n; i++)
		tmp[i] = fcntl(from[i], F_DUPFD, 100);
	for (int i = 0; i < n; i++) {
		dup2(tmp[i], 3 + i);
		close(tmp[i]);
	}
}

static pid_t spawn(bool accel, const char *scen, const char *rl, int port,
		   const char *out, const int fds[4])
{
	pid_t pid = fork();
	char ps[16];

	if (pid < 0)
		t_fail("fork");
	if (pid)
		return pid;
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	place_fds(fds, 4);
	snprintf(ps, sizeof(ps), "%d", port);
	if (accel)
		execl(runbin, "ivmc-run", self, "--scenario", scen, "--role", rl,
		      "--port", ps, "--out", out, (char *)NULL);
	else
		execl(self, "preload-oracle", "--scenario", scen, "--role", rl,
		      "--port", ps, "--out", out, (char *)NULL);
	_exit(127);
}

static char *slurp(const char *path)
{
	FILE *f = fopen(path, "r");
	char *buf;
	size_t n;

	if (!f)
		return strdup("(no transcript)\n");
	buf = calloc(1, 1 << 16);
	n = fread(buf, 1, (1 << 16) - 1, f);
	buf[n] = 0;
	fclose(f);
	return buf;
}

/* Compare line by line; print differences. Returns hard differences. */
static int compare(const char *what, char *a, char *b)
{
	char *sa, *sb, *la, *lb;
	int hard = 0, lineno = 0;

	la = strtok_r(a, "\n", &sa);
	lb = strtok_r(b, "\n", &sb);
	while (la || lb) {
		lineno++;
		if (!la || !lb || strcmp(la, lb)) {
			bool soft = la && lb && la[0] == '~' && lb[0] == '~';

			printf("    %s %s line %d:\n      plain: %s\n      ivmc:  %s\n",
			       soft ? "note" : "DIFF", what, lineno,
			       la ? la : "(none)", lb ? lb : "(none)");
			hard += !soft;
		}
		if (la)
			la = strtok_r(NULL, "\n", &sa);
		if (lb)
			lb = strtok_r(NULL, "\n", &sb);
	}
	return hard;
}

struct run {
	int st[2];	  /* exit status: client, server */
	bool accel_ok;	  /* paired grew before "go" */
	long long paired; /* growth over the run */
	char out[2][PATH_MAX];
};

static void one_run(const char *scen, bool accel, struct run *R)
{
	int go[2][2], ready[2][2], c2s[2], s2c[2], fds[2][4];
	pid_t pid[2];
	int port = free_port();
	long long p0 = accel ? paired() : 0, p1 = p0;
	const char *rl[2] = { "client", "server" };

	memset(R, 0, sizeof(*R));
	for (int i = 0; i < 2; i++) {
		char name[64];

		snprintf(name, sizeof(name), "%s-%s-%s.tr", scen,
			 accel ? "ivmc" : "plain", rl[i]);
		t_path(R->out[i], sizeof(R->out[i]), name);
		if (pipe2(go[i], O_CLOEXEC) || pipe2(ready[i], O_CLOEXEC))
			t_fail("pipe");
	}
	if (pipe2(c2s, O_CLOEXEC) || pipe2(s2c, O_CLOEXEC))
		t_fail("pipe");
	/* go (read), ready (write), from peer, to peer */
	fds[0][0] = go[0][0], fds[0][1] = ready[0][1];
	fds[0][2] = s2c[0], fds[0][3] = c2s[1];
	fds[1][0] = go[1][0], fds[1][1] = ready[1][1];
	fds[1][2] = c2s[0], fds[1][3] = s2c[1];
	pid[1] = spawn(accel, scen, rl[1], port, R->out[1], fds[1]);
	pid[0] = spawn(accel, scen, rl[0], port, R->out[0], fds[0]);
	for (int i = 0; i < 2; i++) {
		close(go[i][0]);
		close(ready[i][1]);
	}
	close(c2s[0]), close(c2s[1]), close(s2c[0]), close(s2c[1]);
	/* Both ready (or dead), then wait for the pairing, then go. */
	{
		bool ok = true;

		for (int i = 0; i < 2; i++) {
			struct pollfd p = { ready[i][0], POLLIN, 0 };
			char c;

			if (poll(&p, 1, 20000) != 1 || read(ready[i][0], &c, 1) != 1)
				ok = false;
		}
		if (ok && accel) {
			for (int i = 0; i < 5000 && p1 <= p0; i++) {
				usleep(1000);
				p1 = paired();
			}
			R->accel_ok = p1 > p0;
			if (!R->accel_ok) {
				char cmd[PATH_MAX * 2 + 64];

				printf("    ivmcctl status when the wait for a pair ended:\n");
				fflush(stdout);
				snprintf(cmd, sizeof(cmd),
					 "%s -s %s status 2>&1 | head -n 12 | sed 's/^/      /'",
					 ctlbin, t_sock);
				(void)!system(cmd);
			}
		}
		for (int i = 0; i < 2; i++) {
			(void)!write(go[i][1], "G", 1);
			close(go[i][1]);
			close(ready[i][0]);
		}
	}
	for (int i = 0; i < 2; i++) {
		int st = t_wait(pid[i], (WATCHDOG_S + 5) * 1000);

		R->st[i] = st;
	}
	if (accel)
		R->paired = paired() - p0;
}

/* The oracle's own run must be clean: else the test is wrong. */
static bool plain_bad(const char *path)
{
	char *t = slurp(path);
	bool bad = strstr(t, "WRONG") || strstr(t, "TIMEOUT") ||
		   strstr(t, "ABORT") || !strstr(t, "\nend\n");

	free(t);
	return bad;
}

static int asan_accel_ok(void)
{
#if defined(__SANITIZE_ADDRESS__)
	return 0;
#else
	return 1;
#endif
}

int main(int argc, char **argv)
{
	const char *only = getenv("IVMC_ORACLE_ONLY");
	bool accel = true;
	int failures = 0, nrun = 0;
	char fails[1024] = "";

	if (argc == 5 && !strcmp(argv[1], "--exec-reader"))
		return exec_reader(strtoul(argv[2], NULL, 10),
				   strtoull(argv[3], NULL, 10),
				   strtoull(argv[4], NULL, 10));
	if (argc == 9 && !strcmp(argv[1], "--scenario"))
		return participant(argv[2], argv[4], atoi(argv[6]), argv[8]);
	if (argc != 1) {
		fprintf(stderr, "usage: preload-oracle\n"
				"       preload-oracle --scenario NAME --role client|server --port P --out FILE\n");
		return 2;
	}
	t_alarm(110);
	signal(SIGPIPE, SIG_IGN);
	{
		ssize_t k = readlink("/proc/self/exe", self, sizeof(self) - 1);

		if (k < 0)
			t_fail("readlink");
		self[k] = 0;
	}
	t_bin(runbin, sizeof(runbin), "ivmc-run");
	t_bin(ctlbin, sizeof(ctlbin), "ivmcctl");
	if (access(runbin, X_OK)) {
		printf("%s missing: plain runs only\n", runbin);
		accel = false;
	}
	if (!asan_accel_ok()) {
		/* An ASan program refuses a preloaded library in front of
		 * its runtime; see the header. */
		const char *o = getenv("ASAN_OPTIONS");
		static char buf[512];

		snprintf(buf, sizeof(buf), "%s%sverify_asan_link_order=0",
			 o ? o : "", o && *o ? ":" : "");
		setenv("ASAN_OPTIONS", buf, 1);
		printf("built with ASan: the preload runs with %s\n", buf);
	}
	t_daemon_start(NULL);
	printf("ivmcd on %s, transcripts in %s\n", t_sock, t_dir);
	if (accel && paired() < 0)
		t_fail("ivmcctl --json status gives no \"paired\"");
	for (int i = 0; i < NSCEN; i++) {
		const char *name = scenarios[i].name;
		struct run P, A;
		char *a, *b;
		int d = 0;
		uint64_t t0;

		if (only && *only) {
			const char *p = strstr(only, name);
			size_t l = strlen(name);

			if (!p || (p != only && p[-1] != ',') ||
			    (p[l] && p[l] != ','))
				continue;
		}
		nrun++;
		t0 = t_now_ns();
		one_run(name, false, &P);
		printf("%-10s plain: client %d server %d (%.2f s)\n", name, P.st[0],
		       P.st[1], (double)(t_now_ns() - t0) / 1e9);
		if (P.st[0] || P.st[1] || plain_bad(P.out[0]) ||
		    plain_bad(P.out[1])) {
			printf("  plain run failed (a bug in the test):\n%s%s",
			       slurp(P.out[0]), slurp(P.out[1]));
			failures++;
			snprintf(fails + strlen(fails), sizeof(fails) - strlen(fails),
				 " %s(plain)", name);
			continue;
		}
		if (!accel)
			continue;
		t0 = t_now_ns();
		one_run(name, true, &A);
		printf("%-10s ivmc:  client %d server %d, paired +%lld%s (%.2f s)\n",
		       name, A.st[0], A.st[1], A.paired,
		       A.accel_ok ? "" : " NOT ACCELERATED before go",
		       (double)(t_now_ns() - t0) / 1e9);
		for (int r = 0; r < 2; r++) {
			a = slurp(P.out[r]);
			b = slurp(A.out[r]);
			d += compare(r ? "server" : "client", a, b);
			free(a);
			free(b);
		}
		if (A.st[0] || A.st[1]) {
			printf("    ivmc participants exited %d/%d\n", A.st[0], A.st[1]);
			d++;
		}
		if (!A.accel_ok) {
			printf("    not accelerated: ivmcd paired nothing within 5 s of the warm-up\n");
			d++;
		}
		if (d) {
			failures++;
			snprintf(fails + strlen(fails), sizeof(fails) - strlen(fails),
				 " %s", name);
		}
	}
	t_daemon_stop(t_dpid);
	if (getenv("IVMC_ORACLE_KEEP"))
		t_dir[0] = 0; /* keep the directory */
	if (failures) {
		fprintf(stderr, "preload-oracle: %d of %d scenarios differ:%s\n",
			failures, nrun, fails);
		return T_FAIL;
	}
	printf("%d scenarios, plain and ivmc transcripts agree\n", nrun);
	return T_PASS;
}
