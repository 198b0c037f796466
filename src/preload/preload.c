/* SPDX-License-Identifier: MIT */
/*
 * Description: libivmc-preload.so, the socket calls: which fds carry an
 * ivmc connection, and the data path through the channel for them. Every
 * TCP connection of the application starts as plain TCP, exactly as asked;
 * a connected one whose peer may be co-located is handed to ivmc_tcp()
 * (on the application's fd; on a private duplicate once it has two, see
 * struct pl_conn), and moves onto a channel when ivmcd
 * pairs it with its other end (which runs under ivmc-run too). Anything
 * else — no daemon, a remote peer, policy — stays plain TCP, untouched.
 *
 * Readiness (poll, select, epoll) is in events.c. The rules and the gaps
 * are in man/ivmc-run.1.
 */
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/close_range.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/sendfile.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "../api/api.h"
#include "../ctl/client.h"
#include "../ring/atomics.h"
#include "../transport/transport.h"
#include "preload.h"

struct pl_real pl_real;
_Atomic int pl_nconns;
static _Atomic int pl_nunseen; /* K_UNSEEN fds were ever made: count bytes */
static _Atomic int64_t pl_unseen_until; /* the last K_UNSEEN window ends */
_Atomic unsigned int pl_gen;
unsigned int pl_spin_ns = IVMC_SPIN_DEFAULT_NS;

/* ---- configuration (ivmc-run(1), ENVIRONMENT) ---------------------------- */

#define MAX_PORT_RULES 32

static struct {
	bool disabled;
	int log_level; /* 0 errors, 1 info, 2 debug */
	FILE *log;
	struct ivmc_opts opts;
	int nports[2]; /* [0] include, [1] exclude */
	uint16_t ports[2][MAX_PORT_RULES][2];
} cfg;

static pthread_once_t init_once = PTHREAD_ONCE_INIT;

static void plog(int level, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

static void plog(int level, const char *fmt, ...)
{
	va_list ap;

	if (level > cfg.log_level || !cfg.log)
		return;
	fprintf(cfg.log, "ivmc-preload[%d]: ", (int)getpid());
	va_start(ap, fmt);
	vfprintf(cfg.log, fmt, ap); /* NOLINT(clang-analyzer-valist.Uninitialized): va_start above; clang-tidy 14 mixes up TUs */
	va_end(ap);
	fputc('\n', cfg.log);
	fflush(cfg.log);
}

/* "80,8000-8100" into rules; false (and nothing kept) on any error. */
static bool parse_ports(const char *s, int which)
{
	int n = 0;

	while (s && *s) {
		char *end;
		unsigned long a = strtoul(s, &end, 10), b = a;

		if (end == s || a > 65535)
			return false;
		if (*end == '-') {
			s = end + 1;
			b = strtoul(s, &end, 10);
			if (end == s || b > 65535 || b < a)
				return false;
		}
		if (n == MAX_PORT_RULES || (*end && *end != ','))
			return false;
		cfg.ports[which][n][0] = (uint16_t)a;
		cfg.ports[which][n][1] = (uint16_t)b;
		n++;
		s = *end ? end + 1 : end;
	}
	cfg.nports[which] = n;
	return true;
}

static unsigned long env_num(const char *name, unsigned long def,
			     unsigned long max)
{
	const char *s = getenv(name);
	char *end;
	unsigned long v;

	if (!s || !*s)
		return def;
	errno = 0;
	v = strtoul(s, &end, 0);
	if (errno || *end || v > max || s[0] == '-') {
		plog(0, "%s=%s: not a number up to %lu, ignored", name, s, max);
		return def;
	}
	return v;
}

static void mark_ours(int fd);

#define RESOLVE(name) \
	(pl_real.name = (__typeof__(pl_real.name))dlsym(RTLD_NEXT, #name))

static void init(void)
{
	const char *s;
	struct rlimit rl;

	RESOLVE(socket); RESOLVE(connect); RESOLVE(listen); RESOLVE(accept);
	RESOLVE(accept4); RESOLVE(close); RESOLVE(shutdown); RESOLVE(read);
	RESOLVE(write); RESOLVE(readv); RESOLVE(writev); RESOLVE(recv);
	RESOLVE(recvfrom); RESOLVE(recvmsg); RESOLVE(send); RESOLVE(sendto);
	RESOLVE(sendmsg); RESOLVE(sendfile); RESOLVE(dup); RESOLVE(dup2);
	RESOLVE(dup3); RESOLVE(fcntl); RESOLVE(ioctl); RESOLVE(setsockopt);
	RESOLVE(getsockopt); RESOLVE(poll); RESOLVE(ppoll); RESOLVE(select);
	RESOLVE(pselect); RESOLVE(epoll_create); RESOLVE(epoll_create1);
	RESOLVE(epoll_ctl); RESOLVE(epoll_wait); RESOLVE(epoll_pwait);
	RESOLVE(execve); RESOLVE(execveat); RESOLVE(fexecve); RESOLVE(execvpe);
	RESOLVE(posix_spawn); RESOLVE(posix_spawnp);

	cfg.log = stderr;
	s = getenv("IVMC_LOG_FILE");
	if (s && *s) {
		FILE *f = fopen(s, "ae");

		if (f)
			cfg.log = f;
	}
	s = getenv("IVMC_LOG");
	if (s && !strcmp(s, "info"))
		cfg.log_level = 1;
	else if (s && !strcmp(s, "debug"))
		cfg.log_level = 2;
	s = getenv("IVMC_DISABLE");
	cfg.disabled = s && *s && strcmp(s, "0") != 0;
	cfg.opts.ring_size = env_num("IVMC_RING_SIZE", 0, 1ul << 30);
	if (cfg.opts.ring_size &&
	    (cfg.opts.ring_size < 4096 ||
	     (cfg.opts.ring_size & (cfg.opts.ring_size - 1)))) {
		plog(0, "IVMC_RING_SIZE: not a power of two >= 4096, ignored");
		cfg.opts.ring_size = 0;
	}
	cfg.opts.spin_ns = (unsigned int)env_num("IVMC_SPIN_NS", 0,
						 IVMC_SPIN_MAX_NS);
	if (cfg.opts.spin_ns)
		pl_spin_ns = cfg.opts.spin_ns;
	s = getenv("IVMC_WAIT");
	if (s && !strcmp(s, "spin"))
		cfg.opts.wait_mode = IVMC_WAIT_SPIN;
	else if (s && !strcmp(s, "sleep"))
		cfg.opts.wait_mode = IVMC_WAIT_SLEEP, pl_spin_ns = 0;
	else if (s && *s && strcmp(s, "adaptive") != 0)
		plog(0, "IVMC_WAIT=%s: adaptive, spin or sleep; adaptive", s);
	if (!parse_ports(getenv("IVMC_PORTS"), 0)) {
		plog(0, "IVMC_PORTS: bad list, ignored (e.g. 80,8000-8100)");
		cfg.nports[0] = 0;
	}
	if (!parse_ports(getenv("IVMC_EXCLUDE_PORTS"), 1)) {
		plog(0, "IVMC_EXCLUDE_PORTS: bad list, ignored");
		cfg.nports[1] = 0;
	}
	/* Our own fds (control socket, doorbells, duplicates) live in the
	 * top half of the fd space, out of the application's way. */
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur >= 256)
		xport_fd_floor = (int)(rl.rlim_cur > INT_MAX ? INT_MAX / 2
							     : rl.rlim_cur / 2);
	xport_fd_hook = mark_ours;
	ctl_env_snapshot(); /* the settings survive a cleared environment */
	plog(1, "loaded%s", cfg.disabled ? " (IVMC_DISABLE: off)" : "");
}

void pl_init(void)
{
	pthread_once(&init_once, init);
}

/* libc without one of the functions we interpose (not glibc): nothing
 * sensible to fall back on, so say so and stop. */
__attribute__((noreturn)) static void missing(const char *name)
{
	static const char msg[] = "ivmc-preload: libc lacks ";

	(void)!write(2, msg, sizeof(msg) - 1);
	(void)!write(2, name, strlen(name));
	(void)!write(2, "; run without ivmc-run\n", 23);
	abort();
}

/* Call the real function, resolving it first if a call comes in before
 * our constructor (another library's constructor, say). */
#define REAL(name)                                                     \
	(pl_real.name ? pl_real.name                                   \
		      : (pl_init(), pl_real.name ? pl_real.name        \
						 : (missing(#name), pl_real.name)))

__attribute__((constructor)) static void ctor(void)
{
	pl_init();
}

/* ---- the fd table ------------------------------------------------------ */

#define PAGE_BITS 12
#define PAGE_SIZE_ (1 << PAGE_BITS)
#define NPAGES 1024 /* fds up to 4M */

/* K_UNSEEN: connected, the daemon's table did not list the peer (a
 * namespace it has not seen yet may appear): look again at its calls, at
 * most every UNSEEN_EVERY_MS, for UNSEEN_MS, then K_PLAIN. */
/* K_OURS: one of the library's own fds (kept out of close_range). */
enum { K_NONE, K_TCP, K_LISTEN, K_PLAIN, K_UNSEEN, K_EPOLL, K_OURS };
#define UNSEEN_MS	2000
#define UNSEEN_EVERY_MS 1

struct slot {
	struct pl_conn *_Atomic conn;
	_Atomic unsigned char kind;
	int64_t unseen_next, unseen_end; /* K_UNSEEN: ms (CLOCK_MONOTONIC) */
	uint64_t moved[2];	/* K_UNSEEN: bytes sent [0], received [1] */
};

/* A K_UNSEEN fd's bytes are counted as they pass (every call that moves
 * them is ours; splice and stdio make it K_PLAIN), so a handle made late
 * starts at the right stream offsets. */

static struct slot *_Atomic pages[NPAGES];
static pthread_mutex_t tab_mu = PTHREAD_MUTEX_INITIALIZER;

static struct slot *slot_of(int fd, bool create)
{
	struct slot *p;

	if (fd < 0 || fd >= NPAGES * PAGE_SIZE_)
		return NULL;
	p = atomic_load_explicit(&pages[fd >> PAGE_BITS], memory_order_acquire);
	if (!p && create) {
		pthread_mutex_lock(&tab_mu);
		p = atomic_load_explicit(&pages[fd >> PAGE_BITS],
					 memory_order_relaxed);
		if (!p) {
			p = calloc(PAGE_SIZE_, sizeof(*p));
			if (p)
				atomic_store_explicit(&pages[fd >> PAGE_BITS], p,
						      memory_order_release);
		}
		pthread_mutex_unlock(&tab_mu);
	}
	return p ? &p[fd & (PAGE_SIZE_ - 1)] : NULL;
}

static void set_kind(int fd, int kind)
{
	struct slot *s = slot_of(fd, kind != K_NONE);

	if (s)
		atomic_store_explicit(&s->kind, (unsigned char)kind,
				      memory_order_relaxed);
}

static void mark_ours(int fd)
{
	set_kind(fd, K_OURS);
}

static int kind_of(int fd)
{
	struct slot *s = slot_of(fd, false);

	return s ? atomic_load_explicit(&s->kind, memory_order_relaxed) : 0;
}

struct pl_conn *pl_peek(int fd)
{
	struct slot *s = slot_of(fd, false);
	struct pl_conn *c;

	if (!s)
		return NULL;
	c = atomic_load_explicit(&s->conn, memory_order_acquire);
	return c && c->h ? c : NULL;
}

/* Point fd at c (NULL: at nothing); returns what it pointed at. */
static struct pl_conn *bind_fd(int fd, struct pl_conn *c)
{
	struct slot *s = slot_of(fd, c != NULL);
	struct pl_conn *old;

	if (!s)
		return NULL;
	if (c)
		atomic_fetch_add(&c->refs, 1);
	old = atomic_exchange(&s->conn, c);
	if (old && !c)
		atomic_fetch_sub(&pl_nconns, 1);
	if (c && !old)
		atomic_fetch_add(&pl_nconns, 1);
	return old;
}

/* An application fd stopped naming c: the last one closes the handle
 * (the channel detaches to TCP first) and our duplicate, if any. Called
 * while that fd is still the socket (close() and dup2() over it call the
 * real one after). */
static void conn_put(struct pl_conn *c)
{
	if (atomic_fetch_sub(&c->refs, 1) != 1)
		return;
	if (c->h)
		ivmc_close(c->h);
	if (c->priv >= 0)
		REAL(close)(c->priv);
	free(c);
}

/* fd is about to name c too (a dup): c must outlive any one of its fds,
 * so the handle moves onto a duplicate of our own, once. Returns false
 * if none can be had (no fd to spare): the caller gives c back to TCP. */
static bool conn_own_fd(struct pl_conn *c, int fd)
{
	int none = -1, priv;

	if (!c->h || atomic_load(&c->priv) >= 0)
		goto moved;
	priv = REAL(fcntl)(fd, F_DUPFD_CLOEXEC,
			   xport_fd_floor > 0 ? xport_fd_floor : 3);
	if (priv < 0)
		return false;
	if (!atomic_compare_exchange_strong(&c->priv, &none, priv)) {
		REAL(close)(priv); /* another thread's dup was first */
		goto moved;
	}
	mark_ours(priv);
	tcp_set_fd(c->h, priv);
	atomic_store(&c->sock, priv);
	plog(2, "fd %d: a second fd: the handle moves to priv %d", fd, priv);
	return true;
moved:
	/* The winner of a race of two dups may still be moving it: the
	 * application may close fd as soon as we return. */
	for (int i = 0; i < 100000 && c->h &&
			pl_sock(c) != atomic_load(&c->priv); i++)
		sched_yield();
	return true;
}

/* ---- wrapping a connection --------------------------------------------- */

static bool port_in(int which, uint16_t p)
{
	for (int i = 0; i < cfg.nports[which]; i++)
		if (p >= cfg.ports[which][i][0] && p <= cfg.ports[which][i][1])
			return true;
	return false;
}

static uint16_t port_of(const struct sockaddr_storage *ss)
{
	if (ss->ss_family == AF_INET)
		return ntohs(((const struct sockaddr_in *)ss)->sin_port);
	if (ss->ss_family == AF_INET6)
		return ntohs(((const struct sockaddr_in6 *)ss)->sin6_port);
	return 0;
}

/* IVMC_PORTS / IVMC_EXCLUDE_PORTS: the connection's local or peer port. */
static bool ports_allow(int fd)
{
	struct sockaddr_storage a = { 0 }, b = { 0 };
	socklen_t la = sizeof(a), lb = sizeof(b);
	uint16_t pa, pb;

	if (!cfg.nports[0] && !cfg.nports[1])
		return true;
	if (getsockname(fd, (struct sockaddr *)&a, &la) ||
	    getpeername(fd, (struct sockaddr *)&b, &lb))
		return false;
	pa = port_of(&a);
	pb = port_of(&b);
	if (port_in(1, pa) || port_in(1, pb))
		return false;
	return !cfg.nports[0] || port_in(0, pa) || port_in(0, pb);
}

static int64_t now_ms(void);

/*
 * io_uring moves a socket's bytes in the kernel, where the preload never
 * sees them: a connection on a channel read or written through a ring would
 * lose its stream. So a process that has an io_uring instance keeps its new
 * connections on TCP. It is found in /proc/self/fd (an anon inode named
 * [io_uring]), looked at when a connection is wrapped, at most once per
 * URING_LOOK_MS (a scan costs a readlink per open fd); once seen, for good.
 * Not seen: a ring made after a connection moved to its channel (within that
 * period, or after the last wrap), and rings without an fd
 * (IORING_SETUP_REGISTERED_FD_ONLY). man/ivmc-run.1, BUGS.
 */
#define URING_LOOK_MS 1000

static bool uring_in_process(void)
{
	static _Atomic bool seen;
	static _Atomic int64_t next;
	int64_t now = now_ms();
	struct dirent *e;
	char buf[32];
	DIR *d;

	if (atomic_load_explicit(&seen, memory_order_relaxed))
		return true;
	if (now < atomic_load_explicit(&next, memory_order_relaxed))
		return false;
	atomic_store_explicit(&next, now + URING_LOOK_MS, memory_order_relaxed);
	d = opendir("/proc/self/fd");
	if (!d)
		return false;
	while ((e = readdir(d))) {
		ssize_t n = readlinkat(dirfd(d), e->d_name, buf, sizeof(buf) - 1);

		if (n > 0) {
			buf[n] = 0;
			if (!strcmp(buf, "anon_inode:[io_uring]")) {
				atomic_store(&seen, true);
				break;
			}
		}
	}
	closedir(d);
	return atomic_load(&seen);
}

/* A connected TCP socket of ours: give it to ivmc_tcp() if its peer may
 * be co-located. Returns the connection, or NULL (then plain for good). */

static struct pl_conn *wrap(int fd)
{
	struct pl_conn *c;
	int fl, err, where;
	struct slot *s;
	uint64_t moved[2] = { 0, 0 };

	if (cfg.disabled || !ports_allow(fd)) {
		if (!cfg.disabled)
			plog(2, "fd %d: port excluded (IVMC_PORTS, "
				"IVMC_EXCLUDE_PORTS): plain TCP", fd);
		set_kind(fd, K_PLAIN);
		return NULL;
	}
	if (uring_in_process()) {
		plog(2, "fd %d: the process has an io_uring instance: plain TCP",
		     fd);
		set_kind(fd, K_PLAIN);
		return NULL;
	}
	where = tcp_colocated(fd);
	if (where <= 0) {
		s = slot_of(fd, true);
		if (where == 0)
			plog(2, "fd %d: peer not co-located (ivmcd's table): "
				"plain TCP", fd);
		if (where < 0 && s) {
			int64_t now = now_ms();

			if (atomic_load(&s->kind) != K_UNSEEN) {
				s->unseen_end = now + UNSEEN_MS;
				if (atomic_load(&pl_unseen_until) < s->unseen_end)
					atomic_store(&pl_unseen_until,
						     s->unseen_end);
				s->moved[0] = s->moved[1] = 0;
				atomic_store(&pl_nunseen, 1);
				atomic_store(&s->kind, K_UNSEEN);
			}
			s->unseen_next = now + UNSEEN_EVERY_MS;
		} else {
			set_kind(fd, K_PLAIN);
		}
		return NULL;
	}
	c = calloc(1, sizeof(*c));
	if (!c)
		return NULL;
	fl = REAL(fcntl)(fd, F_GETFL);
	cfg.opts.flags = fl >= 0 && (fl & O_NONBLOCK) ? IVMC_NONBLOCK : 0;
	s = slot_of(fd, false);
	if (s && atomic_load(&s->kind) == K_UNSEEN) {
		moved[0] = s->moved[0];
		moved[1] = s->moved[1];
	}
	err = ivmc_tcp(fd, &cfg.opts, &c->h);
	if (!err && (moved[0] || moved[1]))
		tcp_set_offsets(c->h, moved[0], moved[1]);
	if (err) {
		plog(1, "fd %d: ivmc_tcp: %s; plain TCP", fd, strerror(-err));
		free(c);
		set_kind(fd, K_PLAIN);
		return NULL;
	}
	c->priv = -1;
	c->sock = fd;
	plog(2, "fd %d: registered", fd);
	if (bind_fd(fd, c)) /* cannot happen: the slot was free */
		plog(0, "fd %d: was bound twice", fd);
	pl_events_adopt(fd, c); /* registered in epoll while connecting */
	return c;
}

struct pl_conn *pl_conn(int fd)
{
	struct slot *s = slot_of(fd, false);
	struct pl_conn *c;
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);

	if (!s)
		return NULL;
	c = atomic_load_explicit(&s->conn, memory_order_acquire);
	if (c)
		return c->h ? c : NULL;
	switch (atomic_load_explicit(&s->kind, memory_order_relaxed)) {
	case K_TCP:
		break;
	case K_UNSEEN: {
		int64_t now = now_ms();

		if (now > s->unseen_end) {
			atomic_store(&s->kind, K_PLAIN);
			return NULL;
		}
		if (now < s->unseen_next)
			return NULL;
		return wrap(fd);
	}
	default:
		return NULL;
	}
	/* A connect() that was in progress: wrap once it is done. */
	if (getpeername(fd, (struct sockaddr *)&ss, &len) < 0)
		return NULL;
	return wrap(fd);
}

bool pl_unseen_live(void)
{
	return atomic_load_explicit(&pl_nunseen, memory_order_relaxed) &&
	       now_ms() <= atomic_load_explicit(&pl_unseen_until,
						memory_order_relaxed);
}

void pl_unseen_poke(int fd)
{
	if (kind_of(fd) == K_UNSEEN)
		(void)pl_conn(fd);
}

bool pl_attached(struct pl_conn *c)
{
	bool now = c->h && ivmc_load_acquire(&c->h->c) != NULL;
	bool tx = now && api_tx_on_ring(c->h);

	if (now != c->attached || tx != c->tx_ring) {
		c->attached = now;
		c->tx_ring = tx;
		atomic_fetch_add(&c->gen, 1);
		atomic_fetch_add(&pl_gen, 1);
		plog(2, "sock %d: %s", pl_sock(c), now ? "on the channel" : "off");
	}
	return now;
}

/* Give the connection back to plain TCP for good, for every fd naming it
 * (exec, fd passing, MSG_OOB, splice...). */
static void release(struct pl_conn *c)
{
	struct ivmc_chan *h = c->h;

	if (!h)
		return;
	c->h = NULL;
	atomic_fetch_add(&pl_gen, 1);
	/* Unread ring bytes are given back: the peer resends them on TCP. */
	if (ivmc_close(h) == -ECONNABORTED)
		plog(1, "sock %d: released as the peer did: bytes it left in "
			"the ring are lost", pl_sock(c));
	plog(2, "sock %d: released to plain TCP", pl_sock(c));
}

/* ---- the data path -------------------------------------------------------- */

/* A call on a plain fd moved r bytes (dir 0 sent, 1 received): a K_UNSEEN
 * fd counts them (see struct slot). */
static ssize_t counted(int fd, int dir, ssize_t r)
{
	struct slot *s;

	if (r <= 0 || !atomic_load_explicit(&pl_nunseen, memory_order_relaxed))
		return r;
	s = slot_of(fd, false);
	if (dir < 2 && s &&
	    atomic_load_explicit(&s->kind, memory_order_relaxed) == K_UNSEEN)
		s->moved[dir] += (uint64_t)r;
	return r;
}

static ssize_t fail(int err)
{
	errno = err;
	return -1;
}

static int64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Sleep until c may be ready for ev, or ms pass (-1: no limit). Returns
 * 0, -EINTR or -EAGAIN (time is up). */
static int wait_ready(struct pl_conn *c, short ev, int ms)
{
	struct pollfd p[2];
	int n, r;

	if (pl_ready(c, ev))
		return 0;
	n = pl_wait_fds(c, ev, p);
	if (c->attached && p[1].fd < 0 && (ms < 0 || ms > 1))
		ms = 1; /* no doorbell (between VMs): the caller looks again */
	r = REAL(poll)(p, (nfds_t)n, ms);
	if (r < 0)
		return -errno;
	return r ? 0 : -EAGAIN;
}

/* A blocking call with SO_RCVTIMEO/SO_SNDTIMEO: tries without waiting
 * and sleeps in between, for at most ms in all. */
static ssize_t timed(struct pl_conn *c, bool tx, const struct iovec *iov,
		     int n, unsigned int f, int ms)
{
	int64_t end = now_ms() + ms;

	for (;;) {
		ssize_t r = tx ? ivmc_sendv(c->h, iov, n, f | IVMC_NONBLOCK)
			       : ivmc_recvv(c->h, iov, n, f | IVMC_NONBLOCK);
		int64_t left = end - now_ms();
		int err;

		if (r != -EAGAIN)
			return r;
		if (left <= 0)
			return -EAGAIN;
		err = wait_ready(c, tx ? POLLOUT : POLLIN, (int)left);
		if (err == -EINTR)
			return err;
	}
}

/* MSG_PEEK: the ring's bytes if it is there, else the socket's (before a
 * channel, or while the stream is still on TCP), without waiting in
 * either; a blocking peek sleeps on both. */
static ssize_t peek(struct pl_conn *c, const struct iovec *iov, int n,
		    int flags)
{
	bool nb = (flags & MSG_DONTWAIT) || (REAL(fcntl)(pl_sock(c), F_GETFL) &
					       O_NONBLOCK);
	int64_t end = c->rcvtimeo_ms ? now_ms() + c->rcvtimeo_ms : -1;

	for (;;) {
		ssize_t r = -EOPNOTSUPP;
		int err;

		if (pl_attached(c)) {
			struct chan *ch = api_chan(c->h);

			/* A copy of all the ring holds, not one piece: it may
			 * be split where the ring grew (docs/protocol.md 3.7). */
			r = ch ? chan_peekv(ch, iov, n) : -EOPNOTSUPP;
			if (r >= 0 || (r != -EAGAIN && r != -EOPNOTSUPP))
				return r;
		}
		if (r == -EOPNOTSUPP) {
			struct msghdr m = { .msg_iov = (struct iovec *)iov,
					    .msg_iovlen = (size_t)n };
			ssize_t k = REAL(recvmsg)(pl_sock(c), &m,
						  (flags & ~MSG_WAITALL) |
							  MSG_PEEK | MSG_DONTWAIT);

			if (k >= 0)
				return k;
			if (errno != EAGAIN)
				return -errno;
		}
		if (nb)
			return -EAGAIN;
		if (end >= 0 && now_ms() >= end)
			return -EAGAIN;
		err = wait_ready(c, POLLIN,
				 end < 0 ? -1 : (int)(end - now_ms()));
		if (err == -EINTR)
			return err;
	}
}

static size_t iov_total(const struct iovec *iov, int n)
{
	size_t t = 0;

	for (int i = 0; i < n; i++)
		t += iov[i].iov_len;
	return t;
}

static ssize_t do_recv(struct pl_conn *c, const struct iovec *iov,
		       int n, int flags)
{
	unsigned int f = 0;
	ssize_t r;

	if (flags & MSG_OOB) {
		release(c);
		return -EOPNOTSUPP; /* caller redoes it on the socket */
	}
	if (flags & MSG_DONTWAIT)
		f |= IVMC_NONBLOCK;
	if (flags & MSG_WAITALL)
		f |= IVMC_WAITALL;
	if (flags & MSG_PEEK)
		return peek(c, iov, n, flags);
	if (c->rcvtimeo_ms && !(f & IVMC_NONBLOCK))
		r = timed(c, false, iov, n, f, c->rcvtimeo_ms);
	else
		r = ivmc_recvv(c->h, iov, n, f);
	pl_attached(c);
	if (r <= 0 && r != -EAGAIN && cfg.log_level >= 2)
		plog(2, "sock %d: recv -> %zd (%s)", pl_sock(c), r,
		     r ? strerror((int)-r) : "end of stream");
	/* EAGAIN, or less than asked (an EPOLLET application like nginx
	 * takes that as drained): the next data is a new edge. */
	if (r == -EAGAIN || (r >= 0 && !(flags & MSG_PEEK) &&
			     (size_t)r < iov_total(iov, n)))
		atomic_fetch_add_explicit(&c->eagain[0], 1, memory_order_relaxed);
	return r;
}

static ssize_t do_send(struct pl_conn *c, const struct iovec *iov, int n,
		       int flags)
{
	unsigned int f = 0;
	ssize_t r;

	if (flags & MSG_DONTWAIT)
		f |= IVMC_NONBLOCK;
	if (flags & MSG_MORE)
		f |= IVMC_MORE;
	if (c->sndtimeo_ms && !(f & IVMC_NONBLOCK))
		r = timed(c, true, iov, n, f, c->sndtimeo_ms);
	else
		r = ivmc_sendv(c->h, iov, n, f);
	pl_attached(c);
	if (r == -EAGAIN || (r >= 0 && (size_t)r < iov_total(iov, n)))
		atomic_fetch_add_explicit(&c->eagain[1], 1, memory_order_relaxed);
	if (r == -EPIPE && !(flags & MSG_NOSIGNAL))
		pthread_kill(pthread_self(), SIGPIPE);
	return r;
}

#define RET(r) ((r) < 0 ? fail((int)-(r)) : (r))

PL_API ssize_t read(int fd, void *buf, size_t len)
{
	struct pl_conn *c = pl_conn(fd);
	struct iovec v = { buf, len };
	ssize_t r;

	if (!c)
		return counted(fd, 1, REAL(read)(fd, buf, len));
	r = do_recv(c, &v, 1, 0);
	return RET(r);
}

PL_API ssize_t __read_chk(int fd, void *buf, size_t len, size_t buflen)
{
	if (len > buflen)
		abort(); /* what glibc's check does (__chk_fail) */
	return read(fd, buf, len);
}

PL_API ssize_t write(int fd, const void *buf, size_t len)
{
	struct pl_conn *c = pl_conn(fd);
	struct iovec v = { (void *)buf, len };
	ssize_t r;

	if (!c)
		return counted(fd, 0, REAL(write)(fd, buf, len));
	r = do_send(c, &v, 1, 0);
	return RET(r);
}

PL_API ssize_t readv(int fd, const struct iovec *iov, int n)
{
	struct pl_conn *c = pl_conn(fd);
	ssize_t r;

	if (!c)
		return counted(fd, 1, REAL(readv)(fd, iov, n));
	r = do_recv(c, iov, n, 0);
	return RET(r);
}

PL_API ssize_t writev(int fd, const struct iovec *iov, int n)
{
	struct pl_conn *c = pl_conn(fd);
	ssize_t r;

	if (!c)
		return counted(fd, 0, REAL(writev)(fd, iov, n));
	r = do_send(c, iov, n, 0);
	return RET(r);
}

PL_API ssize_t recv(int fd, void *buf, size_t len, int flags)
{
	struct pl_conn *c = pl_conn(fd);
	struct iovec v = { buf, len };
	ssize_t r;

	if (!c)
		return counted(fd, (flags & MSG_PEEK) ? 2 : 1,
			       REAL(recv)(fd, buf, len, flags));
	r = do_recv(c, &v, 1, flags);
	if (r == -EOPNOTSUPP && (flags & MSG_OOB))
		return REAL(recv)(fd, buf, len, flags);
	return RET(r);
}

PL_API ssize_t __recv_chk(int fd, void *buf, size_t len, size_t buflen,
			  int flags)
{
	if (len > buflen)
		abort();
	return recv(fd, buf, len, flags);
}

PL_API ssize_t recvfrom(int fd, void *buf, size_t len, int flags,
			struct sockaddr *sa, socklen_t *salen)
{
	struct pl_conn *c = pl_conn(fd);
	struct iovec v = { buf, len };
	ssize_t r;

	if (!c)
		return counted(fd, (flags & MSG_PEEK) ? 2 : 1,
			       REAL(recvfrom)(fd, buf, len, flags, sa, salen));
	r = do_recv(c, &v, 1, flags);
	if (r == -EOPNOTSUPP && (flags & MSG_OOB))
		return REAL(recvfrom)(fd, buf, len, flags, sa, salen);
	if (r >= 0 && salen)
		*salen = 0; /* TCP gives no source address */
	return RET(r);
}

PL_API ssize_t __recvfrom_chk(int fd, void *buf, size_t len, size_t buflen,
			      int flags, struct sockaddr *sa, socklen_t *salen)
{
	if (len > buflen)
		abort();
	return recvfrom(fd, buf, len, flags, sa, salen);
}

PL_API ssize_t recvmsg(int fd, struct msghdr *m, int flags)
{
	struct pl_conn *c = pl_conn(fd);
	ssize_t r;

	if (!c)
		return counted(fd, (flags & MSG_PEEK) ? 2 : 1,
			       REAL(recvmsg)(fd, m, flags));
	if (!m || (m->msg_iovlen && !m->msg_iov) || m->msg_iovlen > IOV_MAX)
		return fail(m ? EMSGSIZE : EFAULT);
	r = do_recv(c, m->msg_iov, (int)m->msg_iovlen, flags);
	if (r == -EOPNOTSUPP && (flags & MSG_OOB))
		return REAL(recvmsg)(fd, m, flags);
	if (r >= 0) {
		m->msg_namelen = 0;
		m->msg_controllen = 0;
		m->msg_flags = 0;
	}
	return RET(r);
}

PL_API ssize_t send(int fd, const void *buf, size_t len, int flags)
{
	struct pl_conn *c = pl_conn(fd);
	struct iovec v = { (void *)buf, len };
	ssize_t r;

	if (c && (flags & MSG_OOB))
		release(c), c = NULL;
	if (!c)
		return counted(fd, 0, REAL(send)(fd, buf, len, flags));
	r = do_send(c, &v, 1, flags);
	return RET(r);
}

PL_API ssize_t sendto(int fd, const void *buf, size_t len, int flags,
		      const struct sockaddr *sa, socklen_t salen)
{
	struct pl_conn *c = pl_conn(fd);
	struct iovec v = { (void *)buf, len };
	ssize_t r;

	if (c && (flags & MSG_OOB))
		release(c), c = NULL;
	if (!c)
		return counted(fd, 0, REAL(sendto)(fd, buf, len, flags, sa, salen));
	r = do_send(c, &v, 1, flags); /* connected TCP ignores the address */
	return RET(r);
}

/* fds passed with SCM_RIGHTS leave for another process: plain TCP first. */
static void release_passed(const struct msghdr *m)
{
	if (!m || !m->msg_control || !atomic_load(&pl_nconns))
		return;
	for (struct cmsghdr *cm = CMSG_FIRSTHDR((struct msghdr *)m); cm;
	     cm = CMSG_NXTHDR((struct msghdr *)m, cm)) {
		size_t n;
		const int *fds = (const int *)(const void *)CMSG_DATA(cm);

		if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS ||
		    cm->cmsg_len < CMSG_LEN(0))
			continue;
		n = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
		for (size_t i = 0; i < n; i++) {
			int pfd;
			struct pl_conn *c;

			memcpy(&pfd, fds + i, sizeof(pfd));
			c = pl_peek(pfd);
			if (c)
				release(c);
		}
	}
}

PL_API ssize_t sendmsg(int fd, const struct msghdr *m, int flags)
{
	struct pl_conn *c;
	ssize_t r;

	release_passed(m);
	c = pl_conn(fd);
	if (c && (flags & MSG_OOB))
		release(c), c = NULL;
	if (!c)
		return counted(fd, 0, REAL(sendmsg)(fd, m, flags));
	if (!m || (m->msg_iovlen && !m->msg_iov) || m->msg_iovlen > IOV_MAX)
		return fail(m ? EMSGSIZE : EFAULT);
	r = do_send(c, m->msg_iov, (int)m->msg_iovlen, flags);
	return RET(r);
}

/* sendfile to an accelerated socket: through a buffer, the way the kernel
 * would for a socket that cannot splice. */
PL_API ssize_t sendfile(int out, int in, off_t *off, size_t count)
{
	struct pl_conn *c = pl_conn(out);
	char buf[65536];
	size_t done = 0;
	int err = 0;

	if (!c)
		return counted(out, 0, REAL(sendfile)(out, in, off, count));
	while (done < count) {
		size_t want = count - done < sizeof(buf) ? count - done
							  : sizeof(buf);
		ssize_t n = off ? pread(in, buf, want, *off)
				: REAL(read)(in, buf, want);
		struct iovec v = { buf, 0 };
		ssize_t w;

		if (n <= 0) {
			err = n < 0 ? errno : 0;
			break;
		}
		v.iov_len = (size_t)n;
		w = do_send(c, &v, 1, done ? MSG_DONTWAIT : 0);
		if (w < 0) {
			if (!off)
				(void)lseek(in, -n, SEEK_CUR);
			err = (int)-w;
			break;
		}
		if (off)
			*off += w;
		else if (w < n)
			(void)lseek(in, w - n, SEEK_CUR);
		done += (size_t)w;
		if (w < n)
			break;
	}
	if (!done && err)
		return fail(err == EAGAIN && done ? 0 : err);
	return (ssize_t)done;
}

PL_API ssize_t sendfile64(int out, int in, off_t *off, size_t count)
{
	return sendfile(out, in, off, count);
}

/* ---- sockets, connections ------------------------------------------------ */

static void forget(int fd);

PL_API int socket(int domain, int type, int proto)
{
	int fd = REAL(socket)(domain, type, proto);

	if (fd >= 0) {
		bool tcp = (domain == AF_INET || domain == AF_INET6) &&
			   (type & 0xf) == SOCK_STREAM &&
			   (proto == 0 || proto == IPPROTO_TCP);

		forget(fd); /* a number closed behind our back */
		set_kind(fd, tcp ? K_TCP : K_NONE);
		if (tcp && !cfg.disabled) {
			int e = errno;

			tcp_warmup(); /* ivmcd learns our namespace early */
			errno = e;
		}
	}
	return fd;
}

/* An fd we did not create (inherited, or from before we were loaded):
 * learn once whether it is a TCP socket. */
static int probe(int fd)
{
	int dom = 0, type = 0, proto = 0;
	socklen_t l1 = sizeof(dom), l2 = sizeof(type), l3 = sizeof(proto);
	int k = K_PLAIN;

	if (REAL(getsockopt)(fd, SOL_SOCKET, SO_DOMAIN, &dom, &l1) == 0 &&
	    REAL(getsockopt)(fd, SOL_SOCKET, SO_TYPE, &type, &l2) == 0 &&
	    REAL(getsockopt)(fd, SOL_SOCKET, SO_PROTOCOL, &proto, &l3) == 0 &&
	    (dom == AF_INET || dom == AF_INET6) && type == SOCK_STREAM &&
	    proto == IPPROTO_TCP)
		k = K_TCP;
	set_kind(fd, k);
	return k;
}

PL_API int connect(int fd, const struct sockaddr *sa, socklen_t len)
{
	int r = REAL(connect)(fd, sa, len);
	int k;

	if (r < 0)
		return r;
	k = kind_of(fd);
	if (k == K_NONE)
		k = probe(fd);
	if (k == K_TCP) {
		int e = errno;

		wrap(fd);
		errno = e;
	}
	return r;
}

PL_API int listen(int fd, int backlog)
{
	int r = REAL(listen)(fd, backlog);

	if (r == 0 && (kind_of(fd) == K_TCP ||
		       (kind_of(fd) == K_NONE && probe(fd) == K_TCP)))
		set_kind(fd, K_LISTEN);
	return r;
}

static int accepted(int lfd, int fd)
{
	int k = kind_of(lfd);

	if (fd < 0)
		return fd;
	if (k == K_NONE) {
		/* An inherited listener. */
		k = probe(lfd);
		if (k == K_TCP)
			set_kind(lfd, k = K_LISTEN);
	}
	forget(fd); /* a number closed behind our back */
	if (k == K_LISTEN) {
		int e = errno;

		set_kind(fd, K_TCP);
		wrap(fd);
		errno = e;
	} else {
		set_kind(fd, K_NONE);
	}
	return fd;
}

PL_API int accept(int fd, struct sockaddr *sa, socklen_t *len)
{
	return accepted(fd, REAL(accept)(fd, sa, len));
}

PL_API int accept4(int fd, struct sockaddr *sa, socklen_t *len, int flags)
{
	return accepted(fd, REAL(accept4)(fd, sa, len, flags));
}

bool pl_may_wrap(int fd)
{
	int k = kind_of(fd);

	return k == K_TCP || k == K_UNSEEN;
}

/* fd's bytes are about to move where the preload cannot see them (splice,
 * stdio): its connection goes back to TCP, or it stays plain for good. */
static void go_plain(int fd)
{
	struct pl_conn *c = pl_peek(fd);

	if (c)
		release(c);
	else if (pl_may_wrap(fd))
		set_kind(fd, K_PLAIN);
}

/* fd is going away (close, or dup2 over it): unbind it everywhere. */
static void forget(int fd)
{
	struct pl_conn *c;
	/* It may have been remembered by an epoll set while it could still
	 * have become a connection. */
	bool later = pl_may_wrap(fd) || kind_of(fd) == K_PLAIN;

	if (!atomic_load_explicit(&pl_nconns, memory_order_relaxed) &&
	    kind_of(fd) == K_NONE)
		return;
	set_kind(fd, K_NONE);
	c = bind_fd(fd, NULL);
	if (c || later)
		pl_events_forget_fd(fd); /* members, remembered registrations */
	if (c)
		conn_put(c);
}

/* An epoll fd events.c keeps state for: closing it drops that state.
 * (Looked up by kind, so closing any other fd takes no lock of events.c:
 * the library closes fds while events.c holds a set's lock.) */
static void forget_epfd(int fd)
{
	if (kind_of(fd) == K_EPOLL) {
		set_kind(fd, K_NONE);
		pl_events_close_epfd(fd);
	}
}

void pl_mark_epfd(int epfd)
{
	set_kind(epfd, K_EPOLL);
}

/* A new epoll fd: whatever a closed one of that number left goes. */
PL_API int epoll_create(int size)
{
	int fd = REAL(epoll_create)(size);

	if (fd >= 0) {
		forget_epfd(fd);
		forget(fd);
	}
	return fd;
}

PL_API int epoll_create1(int flags)
{
	int fd = REAL(epoll_create1)(flags);

	if (fd >= 0) {
		forget_epfd(fd);
		forget(fd);
	}
	return fd;
}

PL_API int close(int fd)
{
	forget_epfd(fd);
	forget(fd);
	return REAL(close)(fd);
}

/* close_range(2) and closefrom(3) close the application's fds in the
 * range, never the library's (its daemon connection, socket duplicates,
 * doorbells): those are skipped, the gaps between them closed. */
static int close_range_ours(unsigned int first, unsigned int last, int flags)
{
	static int (*real_cr)(unsigned int, unsigned int, int);
	unsigned int lo = first;
	int r = 0;

	if (!real_cr)
		real_cr = (int (*)(unsigned int, unsigned int, int))dlsym(RTLD_NEXT,
									"close_range");
	if (!real_cr) {
		errno = ENOSYS;
		return -1;
	}
	if (first > last || (flags & CLOSE_RANGE_CLOEXEC))
		return real_cr(first, last, flags);
	for (int p = 0; p < NPAGES; p++) {
		struct slot *s = atomic_load(&pages[p]);
		unsigned int base = (unsigned int)p << PAGE_BITS;

		if (!s || base + PAGE_SIZE_ - 1 < first)
			continue;
		if (base > last)
			break;
		for (int i = 0; i < PAGE_SIZE_; i++) {
			unsigned int fd = base + (unsigned int)i;
			int k;

			if (fd < first || fd > last)
				continue;
			k = atomic_load_explicit(&s[i].kind, memory_order_relaxed);
			if (k == K_OURS) {
				if (fd > lo && real_cr(lo, fd - 1, flags) < 0)
					r = -1;
				lo = fd + 1;
			} else if (k != K_NONE || atomic_load(&s[i].conn)) {
				forget_epfd((int)fd);
				forget((int)fd);
			}
		}
	}
	if (lo <= last && lo >= first && real_cr(lo, last, flags) < 0)
		r = -1;
	return r;
}

PL_API int close_range(unsigned int first, unsigned int last, int flags)
{
	return close_range_ours(first, last, flags);
}

PL_API void closefrom(int lowfd)
{
	(void)close_range_ours(lowfd < 0 ? 0 : (unsigned int)lowfd, ~0u, 0);
}

PL_API int shutdown(int fd, int how)
{
	struct pl_conn *c = pl_conn(fd);
	int r;

	if (!c)
		return REAL(shutdown)(fd, how);
	r = ivmc_shutdown(c->h, how);
	if (r == -EINVAL)
		return (int)fail(EINVAL);
	/* The socket itself learns it too: its own readers and the peer. */
	pl_attached(c);
	return r ? (int)fail(-r) : 0;
}

/* A new fd names what old names. A connection that cannot have a
 * duplicate of its own goes back to TCP first (see conn_own_fd()). */
static void dup_to(int old, int nfd)
{
	struct pl_conn *c = pl_peek(old);
	int k = kind_of(old);

	set_kind(nfd, k == K_EPOLL ? K_NONE : k);
	if (!c)
		return;
	if (!conn_own_fd(c, old)) {
		plog(1, "fd %d: no fd to spare for its dup %d: plain TCP", old,
		     nfd);
		release(c);
	}
	bind_fd(nfd, c);
}

PL_API int dup(int fd)
{
	int r = REAL(dup)(fd);

	if (r >= 0) {
		forget(r);
		dup_to(fd, r);
	}
	return r;
}

/* dup2/dup3 over nfd: if nfd carries a connection, let go of it while nfd
 * is still its socket (its handle may run on that very fd). */
static void before_dup_over(int old, int nfd)
{
	if (pl_peek(nfd) && REAL(fcntl)(old, F_GETFD) >= 0) {
		forget_epfd(nfd);
		forget(nfd);
	}
}

PL_API int dup2(int old, int nfd)
{
	int r;

	if (old == nfd)
		return REAL(dup2)(old, nfd);
	before_dup_over(old, nfd);
	r = REAL(dup2)(old, nfd);
	if (r >= 0) {
		forget_epfd(nfd);
		forget(nfd);
		dup_to(old, nfd);
	}
	return r;
}

PL_API int dup3(int old, int nfd, int flags)
{
	int r;

	if (old != nfd)
		before_dup_over(old, nfd);
	r = REAL(dup3)(old, nfd, flags);
	if (r >= 0) {
		forget_epfd(nfd);
		forget(nfd);
		dup_to(old, nfd);
	}
	return r;
}

PL_API int fcntl(int fd, int cmd, ...)
{
	va_list ap;
	long arg;
	int r;

	va_start(ap, cmd);
	arg = va_arg(ap, long);
	va_end(ap);
	r = REAL(fcntl)(fd, cmd, arg);
	if (r < 0)
		return r;
	if (cmd == F_DUPFD || cmd == F_DUPFD_CLOEXEC) {
		forget(r);
		dup_to(fd, r);
	} else if (cmd == F_SETFL) {
		struct pl_conn *c = pl_peek(fd);

		if (c)
			ivmc_set_nonblock(c->h, (arg & O_NONBLOCK) != 0);
	}
	return r;
}

PL_API int fcntl64(int fd, int cmd, ...)
{
	va_list ap;
	long arg;

	va_start(ap, cmd);
	arg = va_arg(ap, long);
	va_end(ap);
	return fcntl(fd, cmd, arg);
}

PL_API int ioctl(int fd, unsigned long req, ...)
{
	va_list ap;
	void *arg;
	struct pl_conn *c;
	int r;

	va_start(ap, req);
	arg = va_arg(ap, void *);
	va_end(ap);
	c = pl_peek(fd);
	if (c && req == FIONREAD && pl_attached(c)) {
		struct chan *ch = api_chan(c->h);
		ssize_t n = ch ? chan_nread(ch) : 0;
		int k = 0;

		if (n < 0) /* empty (-EAGAIN), on the side stream, or an error */
			n = 0;
		/* Bytes on the ring (all of them), else on the socket. */
		if (!n && REAL(ioctl)(pl_sock(c), FIONREAD, &k) == 0)
			n = k;
		if (!arg)
			return (int)fail(EFAULT);
		*(int *)arg = n > INT_MAX ? INT_MAX : (int)n;
		return 0;
	}
	r = REAL(ioctl)(fd, req, arg);
	if (r == 0 && c && req == FIONBIO && arg)
		ivmc_set_nonblock(c->h, *(const int *)arg != 0);
	return r;
}

static int tv_ms(const void *v, socklen_t len)
{
	struct timeval tv;
	long long ms;

	if (!v || len < sizeof(tv))
		return 0;
	memcpy(&tv, v, sizeof(tv));
	ms = (long long)tv.tv_sec * 1000 + (tv.tv_usec + 999) / 1000;
	return ms > INT_MAX ? INT_MAX : (int)ms;
}

PL_API int setsockopt(int fd, int level, int name, const void *v,
		      socklen_t len)
{
	int r = REAL(setsockopt)(fd, level, name, v, len);
	struct pl_conn *c;

	if (r == 0 && level == SOL_SOCKET &&
	    (name == SO_RCVTIMEO || name == SO_SNDTIMEO) &&
	    (c = pl_peek(fd)) != NULL) {
		if (name == SO_RCVTIMEO)
			c->rcvtimeo_ms = tv_ms(v, len);
		else
			c->sndtimeo_ms = tv_ms(v, len);
	}
	return r;
}

PL_API int getsockopt(int fd, int level, int name, void *v, socklen_t *len)
{
	int r = REAL(getsockopt)(fd, level, name, v, len);

	/* A non-blocking connect() that completed: wrap it now. */
	if (r == 0 && level == SOL_SOCKET && name == SO_ERROR && v &&
	    len && *len >= sizeof(int) && *(int *)v == 0 &&
	    kind_of(fd) == K_TCP) {
		int e = errno;

		(void)pl_conn(fd);
		errno = e;
	}
	return r;
}

/* splice moves bytes the preload does not see: its fds go plain. */
PL_API ssize_t splice(int in, loff_t *oin, int out, loff_t *oout, size_t len,
		      unsigned int flags)
{
	static ssize_t (*real_splice)(int, loff_t *, int, loff_t *, size_t,
				      unsigned int);

	if (!real_splice)
		real_splice = (ssize_t (*)(int, loff_t *, int, loff_t *, size_t,
					   unsigned int))dlsym(RTLD_NEXT, "splice");
	go_plain(in);
	go_plain(out);
	if (!real_splice) {
		errno = ENOSYS;
		return -1;
	}
	return real_splice(in, oin, out, oout, len, flags);
}

/* stdio reads and writes a FILE's fd with libc's internal calls, which no
 * preload sees: a socket handed to fdopen() goes back to plain TCP. */
PL_API FILE *fdopen(int fd, const char *mode)
{
	static FILE *(*real_fdopen)(int, const char *);

	if (!real_fdopen)
		real_fdopen = (FILE * (*)(int, const char *))dlsym(RTLD_NEXT, "fdopen");
	go_plain(fd);
	if (!real_fdopen) {
		errno = ENOSYS;
		return NULL;
	}
	return real_fdopen(fd, mode);
}

/* ---- exec, spawn ---------------------------------------------------------- */

/* Before a new image or process takes the fds: every connection on an fd
 * it inherits goes back to plain TCP. */
static void before_exec(void)
{
	if (!atomic_load(&pl_nconns))
		return;
	for (int p = 0; p < NPAGES; p++) {
		struct slot *s = atomic_load(&pages[p]);

		for (int i = 0; s && i < PAGE_SIZE_; i++) {
			struct pl_conn *c = atomic_load(&s[i].conn);
			int fd = (p << PAGE_BITS) | i, fl;

			if (!c || !c->h)
				continue;
			fl = REAL(fcntl)(fd, F_GETFD);
			if (fl >= 0 && !(fl & FD_CLOEXEC))
				release(c);
		}
	}
}

PL_API int execve(const char *path, char *const argv[], char *const envp[])
{
	before_exec();
	return REAL(execve)(path, argv, envp);
}

PL_API int execveat(int dfd, const char *path, char *const argv[],
		    char *const envp[], int flags)
{
	before_exec();
	return REAL(execveat)(dfd, path, argv, envp, flags);
}

PL_API int fexecve(int fd, char *const argv[], char *const envp[])
{
	before_exec();
	return REAL(fexecve)(fd, argv, envp);
}

PL_API int execvpe(const char *file, char *const argv[], char *const envp[])
{
	before_exec();
	return REAL(execvpe)(file, argv, envp);
}

PL_API int execv(const char *path, char *const argv[])
{
	return execve(path, argv, environ);
}

PL_API int execvp(const char *file, char *const argv[])
{
	return execvpe(file, argv, environ);
}

/* execl, execlp, execle: collect the arguments (at most MAX_EXEC_ARGS),
 * then the above. */
#define MAX_EXEC_ARGS 4096

static bool collect(char **argv, const char *first, va_list *ap)
{
	int n = 0;

	argv[n++] = (char *)first;
	/* NOLINTNEXTLINE(clang-analyzer-valist.Uninitialized): the caller's va_start */
	while (n < MAX_EXEC_ARGS && (argv[n] = va_arg(*ap, char *)) != NULL)
		n++;
	if (n == MAX_EXEC_ARGS) {
		errno = E2BIG;
		return false;
	}
	return true;
}

PL_API int execl(const char *path, const char *arg, ...)
{
	static __thread char *argv[MAX_EXEC_ARGS + 1];
	va_list ap;
	bool ok;

	va_start(ap, arg);
	ok = collect(argv, arg, &ap);
	va_end(ap);
	return ok ? execve(path, argv, environ) : -1;
}

PL_API int execlp(const char *file, const char *arg, ...)
{
	static __thread char *argv[MAX_EXEC_ARGS + 1];
	va_list ap;
	bool ok;

	va_start(ap, arg);
	ok = collect(argv, arg, &ap);
	va_end(ap);
	return ok ? execvpe(file, argv, environ) : -1;
}

PL_API int execle(const char *path, const char *arg, ...)
{
	static __thread char *argv[MAX_EXEC_ARGS + 1];
	char **envp = NULL;
	va_list ap;
	bool ok;

	va_start(ap, arg);
	ok = collect(argv, arg, &ap);
	if (ok)
		envp = va_arg(ap, char **);
	va_end(ap);
	return ok ? execve(path, argv, envp) : -1;
}

/* system() and popen() spawn inside libc, unseen: the same first. */
PL_API int system(const char *cmd)
{
	static int (*real_system)(const char *);

	if (!real_system)
		real_system = (int (*)(const char *))dlsym(RTLD_NEXT, "system");
	if (cmd)
		before_exec();
	return real_system ? real_system(cmd) : -1;
}

PL_API FILE *popen(const char *cmd, const char *mode)
{
	static FILE *(*real_popen)(const char *, const char *);

	if (!real_popen)
		real_popen = (FILE * (*)(const char *, const char *))dlsym(RTLD_NEXT,
									"popen");
	before_exec();
	if (!real_popen) {
		errno = ENOSYS;
		return NULL;
	}
	return real_popen(cmd, mode);
}

PL_API int posix_spawn(pid_t *pid, const char *path, const void *fa,
		       const void *attr, char *const argv[], char *const envp[])
{
	before_exec();
	return REAL(posix_spawn)(pid, path, fa, attr, argv, envp);
}

PL_API int posix_spawnp(pid_t *pid, const char *file, const void *fa,
			const void *attr, char *const argv[],
			char *const envp[])
{
	before_exec();
	return REAL(posix_spawnp)(pid, file, fa, attr, argv, envp);
}

/* ---- the library's own calls ------------------------------------------- */

/*
 * Inside this .so the library's objects call these instead of the libc
 * functions of the same names (the build renames them, with objcopy and
 * src/preload/direct.syms): the library's calls on a connection's socket
 * go to the kernel, never back into the wrappers above, though the handle
 * runs on the application's own fd. close() is not among them: ours go
 * through the wrapper, which keeps the fd table right.
 */
#define DIRECT(ret, name, params, args)                                  \
	ret ivmc_direct_##name params;                                   \
	ret ivmc_direct_##name params                                    \
	{                                                                \
		return REAL(name) args; /* NOLINT(bugprone-macro-parentheses) */ \
	}

DIRECT(int, accept4, (int fd, struct sockaddr *sa, socklen_t *l, int fl),
       (fd, sa, l, fl))
DIRECT(int, connect, (int fd, const struct sockaddr *sa, socklen_t l),
       (fd, sa, l))
DIRECT(int, epoll_create1, (int fl), (fl))
DIRECT(int, epoll_ctl, (int ep, int op, int fd, struct epoll_event *ev),
       (ep, op, fd, ev))
DIRECT(int, epoll_wait, (int ep, struct epoll_event *ev, int n, int ms),
       (ep, ev, n, ms))
DIRECT(int, getsockopt, (int fd, int lv, int nm, void *v, socklen_t *l),
       (fd, lv, nm, v, l))
DIRECT(int, listen, (int fd, int n), (fd, n))
DIRECT(int, poll, (struct pollfd *p, nfds_t n, int ms), (p, n, ms))
DIRECT(int, ppoll, (struct pollfd *p, nfds_t n, const struct timespec *ts,
		    const sigset_t *m), (p, n, ts, m))
DIRECT(ssize_t, read, (int fd, void *b, size_t n), (fd, b, n))
DIRECT(ssize_t, recv, (int fd, void *b, size_t n, int fl), (fd, b, n, fl))
DIRECT(ssize_t, recvmsg, (int fd, struct msghdr *m, int fl), (fd, m, fl))
DIRECT(ssize_t, send, (int fd, const void *b, size_t n, int fl),
       (fd, b, n, fl))
DIRECT(ssize_t, sendmsg, (int fd, const struct msghdr *m, int fl),
       (fd, m, fl))
DIRECT(int, shutdown, (int fd, int how), (fd, how))
DIRECT(int, socket, (int d, int t, int p), (d, t, p))
DIRECT(ssize_t, write, (int fd, const void *b, size_t n), (fd, b, n))

int ivmc_direct_fcntl(int fd, int cmd, ...);
int ivmc_direct_fcntl(int fd, int cmd, ...)
{
	va_list ap;
	long arg;

	va_start(ap, cmd);
	arg = va_arg(ap, long);
	va_end(ap);
	return REAL(fcntl)(fd, cmd, arg);
}
