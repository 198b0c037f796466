/* SPDX-License-Identifier: MIT */
/*
 * Description: ivmc-bench — round-trip latency and one-way throughput of ivmc
 * channels side by side with TCP, AF_UNIX, TCP across network namespaces and
 * raw shared-memory references, interleaved in rounds between two processes
 * pinned to two CPUs; plus the idle cost of a blocked pair (--idle) and
 * behaviour under CPU contention (--hog).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "ivmc.h"

#define BENCH_VERSION "0.1"
#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define MIN(a, b) ((a) < (b) ? (a) : (b))
#define MAX(a, b) ((a) > (b) ? (a) : (b))

#define MAX_ROUNDS 32
#define NSIZES 5
#define SIZE_64K 3 /* index of 64 KiB in tput_sizes */
#define RECV_CHUNK (256u * 1024) /* receiver's read size */
#define BATCH 64 /* messages per ivmc_sendv */
#define CACHELINE 64
#define NSEC 1000000000ull
#define MSEC 1000000ull
#define SETUP_MS 5000 /* connect/accept/handshake bound */
#define REAP_MS 5000 /* wait for a child to exit, then kill */
#define RAW_WAIT_NS (10 * NSEC) /* longest single raw spin-wait */
#define SPIN_CHECK 1023u /* raw spin: check time every 1024 */
#define HOG_MAX_S 120 /* burners exit by themselves */
#define MIN_MSGS 16L /* throughput: messages per slice */
#define MAX_KIDS 8

static const size_t tput_sizes[NSIZES] = { 64, 1024, 16384, 65536, 1048576 };

enum kind { K_IVMC, K_TCP, K_UNIX, K_NETNS, K_RAWLINE, K_RAWRING, K_MEMCPY };
enum { T_LAT = 1, T_TPUT = 2 };
enum { XS_OK, XS_UNAVAIL, XS_FAILED };
enum {
	XI_IVMC,
	XI_SPIN,
	XI_SLEEP,
	XI_BATCH,
	XI_TCP,
	XI_UNIX,
	XI_NETNS,
	XI_RAWSHM,
	XI_RAWRING,
	XI_MEMCPY,
	NX
};

struct xport {
	const char *name;
	const char *alias; /* --transports group that also selects it */
	enum kind kind;
	unsigned int tests;
	int wait_mode;
	int batched;
};

static const struct xport xports[NX] = {
	[XI_IVMC] = { "ivmc", NULL, K_IVMC, T_LAT | T_TPUT, IVMC_WAIT_ADAPTIVE,
		      0 },
	[XI_SPIN] = { "ivmc-spin", NULL, K_IVMC, T_LAT | T_TPUT, IVMC_WAIT_SPIN,
		      0 },
	[XI_SLEEP] = { "ivmc-sleep", NULL, K_IVMC, T_LAT | T_TPUT,
		       IVMC_WAIT_SLEEP, 0 },
	[XI_BATCH] = { "ivmc-batched", "ivmc", K_IVMC, T_TPUT,
		       IVMC_WAIT_ADAPTIVE, 1 },
	[XI_TCP] = { "tcp", NULL, K_TCP, T_LAT | T_TPUT, 0, 0 },
	[XI_UNIX] = { "unix", NULL, K_UNIX, T_LAT | T_TPUT, 0, 0 },
	[XI_NETNS] = { "tcp-netns", NULL, K_NETNS, T_LAT | T_TPUT, 0, 0 },
	[XI_RAWSHM] = { "raw-shm", "raw", K_RAWLINE, T_LAT, 0, 0 },
	[XI_RAWRING] = { "raw-ring", "raw", K_RAWRING, T_LAT | T_TPUT, 0, 0 },
	[XI_MEMCPY] = { "memcpy", "raw", K_MEMCPY, T_TPUT, 0, 0 },
};

#define XMASK_DEFAULT (((1u << NX) - 1) & ~(1u << XI_NETNS))

struct opts {
	size_t lat_size;
	long lat_n;
	size_t tput_bytes;
	size_t ring;
	int rounds;
	unsigned int xmask;
	unsigned int size_mask;
	int xlist; /* --transports given */
	const char *json;
	int quick, netns, hog, idle_s, pin, no_lat, no_tput;
	int timeout_s;
};

/* Process-wide state; the signal path reads it, so it stays simple. */
static struct {
	pid_t main_pid;
	int pinned;
	int one_cpu; /* raw spinners yield: the peer needs this CPU */
	int cpu[2]; /* [0] measuring parent, [1] server child */
	char tmpdir[64];
	char cur_path[108]; /* listener path in use, for the signal path */
	unsigned int seq;
	volatile pid_t kids[MAX_KIDS];
	volatile sig_atomic_t ns_up;
	char ns[2][32];
	char veth[2][16];
	int ns_fd[2];
	int ns_orig;
	char ip[32];
	unsigned int timeout_s;
} g = { .ns_fd = { -1, -1 }, .ns_orig = -1 };

/*
 * The raw references are the bench's own and must not depend on the code
 * they measure, so they do not include src/ring/atomics.h; they follow its
 * names and its pairing rule: each release below pairs with the acquire of
 * the same word on the other side.
 */
#define raw_load_acquire(p) atomic_load_explicit((p), memory_order_acquire)
#define raw_store_release(p, v) \
	atomic_store_explicit((p), (v), memory_order_release)

/* ---------------------------------------------------------------- utils */

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * NSEC + (uint64_t)ts.tv_nsec;
}

static void sleep_ns(uint64_t ns)
{
	struct timespec ts = { .tv_sec = ns / NSEC, .tv_nsec = ns % NSEC };

	while (nanosleep(&ts, &ts) && errno == EINTR)
		;
}

static void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
	__builtin_ia32_pause();
#elif defined(__aarch64__)
	__asm__ __volatile__("yield" ::: "memory");
#else
	__asm__ __volatile__("" ::: "memory");
#endif
}

static void __attribute__((format(printf, 1, 2))) msg(const char *fmt, ...)
{
	va_list ap;

	fputs("ivmc-bench: ", stderr);
	va_start(ap, fmt);
	/* clang 14's va_list checker misreads va_start here. */
	/* NOLINTNEXTLINE(clang-analyzer-valist.Uninitialized) */
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

/* Reports err (negative errno) for transport x; returns err. */
static int xerr(const struct xport *x, const char *what, int err)
{
	msg("%s: %s: %s", x->name, what, strerror(-err));
	return err;
}

static void say(const char *s)
{
	ssize_t n = write(STDERR_FILENO, s, strlen(s));

	(void)n;
}

/*
 * Memory the parent keeps across the many fork()s: not inherited, so that
 * fork does not write-protect it and the parent's next write to each page
 * is not a copy-on-write fault inside a timed loop.
 */
static void *mem_private(size_t len)
{
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (p == MAP_FAILED)
		return NULL;
	if (madvise(p, len, MADV_DONTFORK)) {
		munmap(p, len);
		return NULL;
	}
	memset(p, 0, len);
	return p;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

static int cmp_dbl(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

/* Nearest-rank percentile of sorted v[0..n), n > 0. */
static uint64_t pct(const uint64_t *v, long n, double p)
{
	long i = (long)ceil(p * (double)n) - 1;

	return v[MIN(MAX(i, 0L), n - 1)];
}

/* Median of the non-NaN values of v[0..n); NaN when there are none. */
static double median(const double *v, int n)
{
	double t[MAX_ROUNDS];
	int i, m = 0;

	for (i = 0; i < n; i++)
		if (!isnan(v[i]))
			t[m++] = v[i];
	if (!m)
		return NAN;
	qsort(t, m, sizeof(t[0]), cmp_dbl);
	return m & 1 ? t[m / 2] : (t[m / 2 - 1] + t[m / 2]) / 2;
}

/* Median over rounds of a[r] / b[r]: a per-round ratio cancels the host's
 * slow phases, which hit both transports of one round alike. */
static double ratio_med(const double *a, const double *b, int n)
{
	double t[MAX_ROUNDS];
	int i;

	for (i = 0; i < n; i++)
		t[i] = isnan(a[i]) || isnan(b[i]) || b[i] <= 0 ? NAN :
								 a[i] / b[i];
	return median(t, n);
}

/* ------------------------------------------------- children and signals */

static void kid_add(pid_t pid)
{
	size_t i;

	for (i = 0; i < MAX_KIDS; i++) {
		if (!g.kids[i]) {
			g.kids[i] = pid;
			return;
		}
	}
}

static void kid_del(pid_t pid)
{
	size_t i;

	for (i = 0; i < MAX_KIDS; i++)
		if (g.kids[i] == pid)
			g.kids[i] = 0;
}

static void kids_kill(void)
{
	size_t i;

	for (i = 0; i < MAX_KIDS; i++) {
		if (g.kids[i] > 0) {
			kill(g.kids[i], SIGKILL);
			waitpid(g.kids[i], NULL, 0);
			g.kids[i] = 0;
		}
	}
}

/* Nonzero when our child kid has exited; does not reap it. */
static int kid_exited(pid_t kid)
{
	siginfo_t si;

	if (kid <= 0)
		return 0;
	memset(&si, 0, sizeof(si));
	if (waitid(P_PID, kid, &si, WEXITED | WNOHANG | WNOWAIT))
		return 0;
	return si.si_pid == kid;
}

/* Waits up to ms for kid, then kills it. Returns its exit status, or -1
 * when it died of a signal or had to be killed. */
static int reap(pid_t kid, unsigned int ms)
{
	unsigned int i;
	int st = 0;
	pid_t r;

	for (i = 0; i < ms * 10; i++) {
		r = waitpid(kid, &st, WNOHANG);
		if (r == kid || (r < 0 && errno != EINTR))
			break;
		sleep_ns(100000);
	}
	if (i == ms * 10) {
		kill(kid, SIGKILL);
		while (waitpid(kid, &st, 0) < 0 && errno == EINTR)
			;
		st = -1;
	}
	kid_del(kid);
	return st >= 0 && WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

#define IP(...) ((const char *const[]){ "ip", __VA_ARGS__, NULL })

/*
 * Runs the ip(8) found at start-up with argv (from IP(...)). Only
 * async-signal-safe calls, so that the signal path can use it to delete
 * the namespaces. Returns 0 or -errno (-EIO: ip failed).
 */
static int ip_run(int quiet, const char *const *argv)
{
	int st, fd;
	pid_t pid;

	pid = fork();
	if (pid < 0)
		return -errno;
	if (pid == 0) {
		fd = quiet ? open("/dev/null", O_WRONLY) : -1;
		if (fd >= 0 && (dup2(fd, 1) < 0 || dup2(fd, 2) < 0))
			_exit(127);
		execv(g.ip, (char *const *)argv);
		_exit(127);
	}
	while (waitpid(pid, &st, 0) < 0)
		if (errno != EINTR)
			return -errno;
	return WIFEXITED(st) && !WEXITSTATUS(st) ? 0 : -EIO;
}

/* Deletes the two namespaces (and with them the veth pair). Signal-safe. */
static void netns_cleanup(void)
{
	int i;

	if (!g.ns_up)
		return;
	g.ns_up = 0;
	for (i = 0; i < 2; i++) {
		if (g.ns_fd[i] >= 0)
			close(g.ns_fd[i]);
		g.ns_fd[i] = -1;
		ip_run(1, IP("netns", "del", g.ns[i]));
	}
}

static void cleanup_all(void)
{
	kids_kill();
	netns_cleanup();
	if (g.cur_path[0])
		unlink(g.cur_path);
	if (g.tmpdir[0])
		rmdir(g.tmpdir);
}

static void on_signal(int sig)
{
	if (getpid() != g.main_pid)
		_exit(128 + sig);
	say(sig == SIGALRM ? "ivmc-bench: watchdog expired, stopping\n" :
			     "ivmc-bench: interrupted, stopping\n");
	cleanup_all();
	_exit(sig == SIGALRM ? 3 : 128 + sig);
}

static const int fatal_sigs[] = { SIGINT, SIGTERM, SIGHUP, SIGALRM };

static void signals_setup(void)
{
	struct sigaction sa;
	size_t i;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;
	sigfillset(&sa.sa_mask);
	for (i = 0; i < ARRAY_SIZE(fatal_sigs); i++)
		sigaction(fatal_sigs[i], &sa, NULL);
	signal(SIGPIPE, SIG_IGN);
}

/* Pins the calling process to the CPU of role 0 (parent) or 1 (server). */
static void pin_to(int role)
{
	cpu_set_t set;

	if (!g.pinned)
		return;
	CPU_ZERO(&set);
	CPU_SET(g.cpu[role], &set);
	if (sched_setaffinity(0, sizeof(set), &set))
		msg("sched_setaffinity(CPU %d): %s", g.cpu[role],
		    strerror(errno));
}

static void pin_setup(int want)
{
	cpu_set_t set;
	int c, n = 0;

	if (!want || sched_getaffinity(0, sizeof(set), &set))
		return;
	for (c = 0; c < CPU_SETSIZE && n < 2; c++)
		if (CPU_ISSET(c, &set))
			g.cpu[n++] = c;
	if (n < 2) {
		g.one_cpu = 1;
		msg("only one CPU available: not pinning; both share it");
		return;
	}
	g.pinned = 1;
	pin_to(0);
}

/* Every child: dies with the bench, and by itself at the watchdog. */
static void child_init(int role)
{
	size_t i;

	for (i = 0; i < ARRAY_SIZE(fatal_sigs); i++)
		signal(fatal_sigs[i], SIG_DFL);
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	if (getppid() != g.main_pid)
		_exit(1);
	alarm(g.timeout_s);
	pin_to(role);
}

/* ---------------------------------------------------------- connections */

struct rring {
	_Alignas(CACHELINE) _Atomic uint64_t prod; /* producer writes */
	_Alignas(CACHELINE) _Atomic uint64_t cons; /* consumer writes */
};

struct rr_end {
	struct rring *r;
	unsigned char *data;
	uint64_t cap;
	uint64_t pos; /* own counter: kept here, published, never read back */
	uint64_t peer; /* cached peer counter, refreshed on empty/full */
};

struct raw_hdr {
	_Alignas(CACHELINE) atomic_int closed; /* either side, on close */
};

struct conn;

struct conn_ops {
	ssize_t (*send)(struct conn *c, const void *buf, size_t len);
	ssize_t (*recv)(struct conn *c, void *buf, size_t len);
	void (*close)(struct conn *c);
};

struct conn {
	const struct conn_ops *ops;
	int fd;
	struct ivmc_chan *ch;
	struct raw_hdr *hdr;
	unsigned char *tx_line, *rx_line;
	size_t line;
	uint64_t rx_last;
	struct rr_end tx, rx;
};

static ssize_t fd_send(struct conn *c, const void *buf, size_t len)
{
	ssize_t n = send(c->fd, buf, len, MSG_NOSIGNAL);

	return n < 0 ? -errno : n;
}

static ssize_t fd_recv(struct conn *c, void *buf, size_t len)
{
	ssize_t n = recv(c->fd, buf, len, 0);

	return n < 0 ? -errno : n;
}

static void fd_close(struct conn *c)
{
	close(c->fd);
	c->fd = -1;
}

static ssize_t iv_send(struct conn *c, const void *buf, size_t len)
{
	return ivmc_send(c->ch, buf, len, 0);
}

static ssize_t iv_recv(struct conn *c, void *buf, size_t len)
{
	return ivmc_recv(c->ch, buf, len, 0);
}

static void iv_close(struct conn *c)
{
	ivmc_close(c->ch);
	c->ch = NULL;
}

/* One step of a raw spin-wait: -EPIPE once the peer closed, -ETIMEDOUT
 * after RAW_WAIT_NS; time is read once every 1024 steps only. */
static int raw_spin(struct conn *c, unsigned int *spins, uint64_t *end)
{
	if (g.one_cpu)
		sched_yield();
	else
		cpu_relax();
	if (++*spins & SPIN_CHECK)
		return 0;
	if (raw_load_acquire(&c->hdr->closed))
		return -EPIPE;
	if (!*end)
		*end = now_ns() + RAW_WAIT_NS;
	else if (now_ns() > *end)
		return -ETIMEDOUT;
	return 0;
}

static void raw_close(struct conn *c)
{
	raw_store_release(&c->hdr->closed, 1);
}

/*
 * raw-shm: a message is one line; its first 8 bytes (the sequence number
 * the caller stamped) are stored last, with release, and spun on.
 */
static ssize_t line_send(struct conn *c, const void *buf, size_t len)
{
	uint64_t seq;

	if (len < 8 || len > c->line)
		return -EMSGSIZE;
	memcpy(c->tx_line + 8, (const unsigned char *)buf + 8, len - 8);
	memcpy(&seq, buf, 8);
	raw_store_release((_Atomic uint64_t *)c->tx_line, seq);
	return len;
}

static ssize_t line_recv(struct conn *c, void *buf, size_t len)
{
	_Atomic uint64_t *w = (_Atomic uint64_t *)c->rx_line;
	unsigned int spins = 0;
	uint64_t seq, end = 0;
	int err;

	if (len < 8 || len > c->line)
		return -EMSGSIZE;
	while ((seq = raw_load_acquire(w)) == c->rx_last) {
		err = raw_spin(c, &spins, &end);
		if (err && raw_load_acquire(w) == c->rx_last)
			return err == -EPIPE ? 0 : err;
	}
	c->rx_last = seq;
	memcpy(buf, &seq, 8);
	memcpy((unsigned char *)buf + 8, c->rx_line + 8, len - 8);
	return len;
}

/*
 * raw-ring: the minimal SPSC byte ring, one publish per call. The peer
 * counter is validated (0 <= prod - cons <= cap) like any ring must.
 */
static void rr_copy_in(struct rr_end *e, const unsigned char *p, size_t n)
{
	size_t off = e->pos & (e->cap - 1), first = MIN(n, e->cap - off);

	memcpy(e->data + off, p, first);
	memcpy(e->data, p + first, n - first);
}

static void rr_copy_out(struct rr_end *e, unsigned char *p, size_t n)
{
	size_t off = e->pos & (e->cap - 1), first = MIN(n, e->cap - off);

	memcpy(p, e->data + off, first);
	memcpy(p + first, e->data, n - first);
}

static ssize_t rr_send(struct conn *c, const void *buf, size_t len)
{
	struct rr_end *e = &c->tx;
	unsigned int spins = 0;
	uint64_t end = 0;
	size_t n;
	int err;

	if (e->cap - (e->pos - e->peer) < len)
		e->peer = raw_load_acquire(&e->r->cons);
	while (e->pos - e->peer == e->cap) {
		err = raw_spin(c, &spins, &end);
		if (err)
			return err;
		e->peer = raw_load_acquire(&e->r->cons);
	}
	if (e->pos - e->peer > e->cap)
		return -EPROTO;
	n = MIN(len, e->cap - (e->pos - e->peer));
	rr_copy_in(e, buf, n);
	e->pos += n;
	raw_store_release(&e->r->prod, e->pos);
	return n;
}

static ssize_t rr_recv(struct conn *c, void *buf, size_t len)
{
	struct rr_end *e = &c->rx;
	unsigned int spins = 0;
	uint64_t end = 0;
	size_t n;
	int err;

	if (e->peer == e->pos)
		e->peer = raw_load_acquire(&e->r->prod);
	while (e->peer == e->pos) {
		err = raw_spin(c, &spins, &end);
		e->peer = raw_load_acquire(&e->r->prod);
		if (err && e->peer == e->pos)
			return err == -EPIPE ? 0 : err;
	}
	if (e->peer - e->pos > e->cap)
		return -EPROTO;
	n = MIN(len, e->peer - e->pos);
	rr_copy_out(e, buf, n);
	e->pos += n;
	raw_store_release(&e->r->cons, e->pos);
	return n;
}

static const struct conn_ops fd_ops = { fd_send, fd_recv, fd_close };
static const struct conn_ops iv_ops = { iv_send, iv_recv, iv_close };
static const struct conn_ops line_ops = { line_send, line_recv, raw_close };
static const struct conn_ops ring_ops = { rr_send, rr_recv, raw_close };

static int send_all(struct conn *c, const void *buf, size_t len)
{
	const unsigned char *p = buf;
	ssize_t n;

	while (len) {
		n = c->ops->send(c, p, len);
		if (n == -EINTR)
			continue;
		if (n <= 0)
			return n ? (int)n : -EIO;
		p += n;
		len -= n;
	}
	return 0;
}

/* Receives exactly len bytes. Returns 0, 1 at a clean end of stream (before
 * the first byte), or -errno (-EPIPE: the stream ended inside a message). */
static int recv_msg(struct conn *c, void *buf, size_t len)
{
	unsigned char *p = buf;
	size_t got = 0;
	ssize_t n;

	while (got < len) {
		n = c->ops->recv(c, p + got, len - got);
		if (n == -EINTR)
			continue;
		if (n < 0)
			return (int)n;
		if (n == 0)
			return got ? -EPIPE : 1;
		got += n;
	}
	return 0;
}

static void iov_advance(struct iovec **iov, int *cnt, size_t n)
{
	while (*cnt && n >= (*iov)->iov_len) {
		n -= (*iov)->iov_len;
		(*iov)++;
		(*cnt)--;
	}
	if (*cnt) {
		(*iov)->iov_base = (unsigned char *)(*iov)->iov_base + n;
		(*iov)->iov_len -= n;
	}
}

static int sendv_all(struct conn *c, struct iovec *iov, int cnt)
{
	ssize_t n;

	while (cnt > 0) {
		n = ivmc_sendv(c->ch, iov, cnt, 0);
		if (n == -EINTR)
			continue;
		if (n <= 0)
			return n ? (int)n : -EIO;
		iov_advance(&iov, &cnt, n);
	}
	return 0;
}

/* ---------------------------------------------------------------- pairs */

/* What the parent prepares before fork for one connection. */
struct pair {
	const struct xport *x;
	size_t ring_opt; /* --ring, 0 = library default */
	size_t ring; /* effective ring size (raw-ring) */
	size_t lat_size;
	struct ivmc_listener *l;
	char path[108];
	int lfd;
	struct sockaddr_in sin;
	int sv[2];
	unsigned char *shm;
	size_t shm_len, line;
};

struct kind_ops {
	int (*prep)(struct pair *p);
	int (*child)(struct pair *p, struct conn *c);
	int (*parent)(struct pair *p, struct conn *c, pid_t kid);
	void (*cleanup)(struct pair *p);
	const char *prep_what;
};

/* Waits for fd to become readable, at most SETUP_MS; fails early when kid
 * (our child, the peer; 0 if none) has exited. */
static int wait_fd(int fd, pid_t kid)
{
	struct pollfd pfd = { .fd = fd, .events = POLLIN };
	int i, n;

	for (i = 0; i < SETUP_MS / 50; i++) {
		n = poll(&pfd, 1, 50);
		if (n > 0)
			return 0;
		if (n < 0 && errno != EINTR)
			return -errno;
		if (kid_exited(kid))
			return -ECHILD;
	}
	return -ETIMEDOUT;
}

static struct ivmc_opts iv_opts(const struct pair *p)
{
	struct ivmc_opts o;

	memset(&o, 0, sizeof(o));
	o.ring_size = p->ring_opt;
	o.wait_mode = p->x->wait_mode;
	return o;
}

static int iv_prep(struct pair *p)
{
	struct ivmc_opts o = iv_opts(p);

	snprintf(p->path, sizeof(p->path), "%s/ch%u.sock", g.tmpdir, g.seq++);
	memcpy(g.cur_path, p->path, sizeof(g.cur_path));
	return ivmc_listen(p->path, &o, &p->l);
}

static int iv_child(struct pair *p, struct conn *c)
{
	struct ivmc_opts o = iv_opts(p);
	int err = ivmc_connect(p->path, &o, &c->ch);

	if (err)
		return xerr(p->x, "ivmc_connect", err);
	c->ops = &iv_ops;
	return 0;
}

static int iv_accept(struct pair *p, struct conn *c, pid_t kid)
{
	uint64_t end = now_ns() + SETUP_MS * MSEC;
	int err;

	do {
		err = wait_fd(ivmc_listener_fd(p->l), kid);
		if (!err)
			err = ivmc_accept(p->l, IVMC_NONBLOCK, &c->ch);
	} while ((err == -EAGAIN || err == -EINTR) && now_ns() < end);
	return err;
}

static int iv_parent(struct pair *p, struct conn *c, pid_t kid)
{
	int err = iv_accept(p, c, kid);

	if (err)
		return xerr(p->x, "ivmc_accept", err);
	/* IVMC_NONBLOCK was for the accept; the bench blocks on the channel */
	err = ivmc_set_nonblock(c->ch, 0);
	if (err) {
		ivmc_close(c->ch);
		return xerr(p->x, "ivmc_set_nonblock", err);
	}
	c->ops = &iv_ops;
	return 0;
}

static void iv_cleanup(struct pair *p)
{
	if (p->l)
		ivmc_listener_close(p->l);
	p->l = NULL;
	g.cur_path[0] = '\0';
}

static int fd_conn(struct conn *c, int fd, int nodelay)
{
	int one = 1;

	if (nodelay &&
	    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one))) {
		close(fd);
		return -errno;
	}
	c->fd = fd;
	c->ops = &fd_ops;
	return 0;
}

/* Binds fd to ip, port 0, and listens; the chosen address goes to p->sin. */
static int tcp_bind_listen(struct pair *p, int fd, const char *ip)
{
	socklen_t len = sizeof(p->sin);
	int err;

	if (fd < 0)
		return fd;
	memset(&p->sin, 0, sizeof(p->sin));
	p->sin.sin_family = AF_INET;
	inet_pton(AF_INET, ip, &p->sin.sin_addr);
	if (bind(fd, (struct sockaddr *)&p->sin, sizeof(p->sin)) ||
	    listen(fd, 4) ||
	    getsockname(fd, (struct sockaddr *)&p->sin, &len)) {
		err = -errno;
		close(fd);
		return err;
	}
	p->lfd = fd;
	return 0;
}

static int tcp_socket(void)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	return fd < 0 ? -errno : fd;
}

static int tcp_prep(struct pair *p)
{
	return tcp_bind_listen(p, tcp_socket(), "127.0.0.1");
}

/* A socket created in namespace nsfd; the parent itself stays where it is. */
static int tcp_socket_in(int nsfd)
{
	int fd;

	if (setns(nsfd, CLONE_NEWNET))
		return -errno;
	fd = tcp_socket();
	if (setns(g.ns_orig, CLONE_NEWNET)) {
		msg("setns back to the original namespace: %s",
		    strerror(errno));
		cleanup_all();
		_exit(1);
	}
	return fd;
}

static int netns_prep(struct pair *p)
{
	return tcp_bind_listen(p, tcp_socket_in(g.ns_fd[0]), "10.199.0.1");
}

static int tcp_child(struct pair *p, struct conn *c)
{
	int fd, err;

	close(p->lfd);
	fd = tcp_socket();
	if (fd < 0)
		return xerr(p->x, "socket", fd);
	if (connect(fd, (struct sockaddr *)&p->sin, sizeof(p->sin))) {
		err = -errno;
		close(fd);
		return xerr(p->x, "connect", err);
	}
	err = fd_conn(c, fd, 1);
	return err ? xerr(p->x, "TCP_NODELAY", err) : 0;
}

static int netns_child(struct pair *p, struct conn *c)
{
	if (setns(g.ns_fd[1], CLONE_NEWNET))
		return xerr(p->x, "setns", -errno);
	return tcp_child(p, c);
}

static int tcp_parent(struct pair *p, struct conn *c, pid_t kid)
{
	int err = wait_fd(p->lfd, kid), fd;

	if (err)
		return xerr(p->x, "accept", err);
	fd = accept4(p->lfd, NULL, NULL, SOCK_CLOEXEC);
	if (fd < 0)
		return xerr(p->x, "accept", -errno);
	err = fd_conn(c, fd, 1);
	return err ? xerr(p->x, "TCP_NODELAY", err) : 0;
}

static void tcp_cleanup(struct pair *p)
{
	if (p->lfd >= 0)
		close(p->lfd);
	p->lfd = -1;
}

static int unix_prep(struct pair *p)
{
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, p->sv))
		return -errno;
	return 0;
}

static int unix_child(struct pair *p, struct conn *c)
{
	close(p->sv[0]);
	return fd_conn(c, p->sv[1], 0);
}

static int unix_parent(struct pair *p, struct conn *c, pid_t kid)
{
	int fd = p->sv[0];

	(void)kid;
	close(p->sv[1]);
	p->sv[0] = p->sv[1] = -1;
	return fd_conn(c, fd, 0);
}

static void unix_cleanup(struct pair *p)
{
	if (p->sv[0] >= 0)
		close(p->sv[0]);
	if (p->sv[1] >= 0)
		close(p->sv[1]);
	p->sv[0] = p->sv[1] = -1;
}

/* Raw region, shared anonymous memory mapped before fork:
 * header line | line 0 | line 1 | ring 0 | ring 1 (side 0 sends on 0). */
static int raw_prep(struct pair *p)
{
	size_t rsz = sizeof(struct rring) + p->ring;

	p->line = (MAX(p->lat_size, (size_t)CACHELINE) + CACHELINE - 1) &
		  ~(size_t)(CACHELINE - 1);
	p->shm_len = CACHELINE + 2 * p->line + 2 * rsz;
	p->shm = mmap(NULL, p->shm_len, PROT_READ | PROT_WRITE,
		      MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (p->shm == MAP_FAILED) {
		p->shm = NULL;
		return -errno;
	}
	return 0;
}

static void rr_init(struct rr_end *e, unsigned char *base, size_t cap)
{
	memset(e, 0, sizeof(*e));
	e->r = (struct rring *)base;
	e->data = base + sizeof(struct rring);
	e->cap = cap;
}

static void raw_conn(struct pair *p, struct conn *c, int side)
{
	unsigned char *lines = p->shm + CACHELINE;
	unsigned char *rings = lines + 2 * p->line;
	size_t rsz = sizeof(struct rring) + p->ring;

	memset(c, 0, sizeof(*c));
	c->hdr = (struct raw_hdr *)p->shm;
	c->line = p->line;
	c->tx_line = lines + side * p->line;
	c->rx_line = lines + (1 - side) * p->line;
	rr_init(&c->tx, rings + side * rsz, p->ring);
	rr_init(&c->rx, rings + (1 - side) * rsz, p->ring);
	c->ops = p->x->kind == K_RAWLINE ? &line_ops : &ring_ops;
}

static int raw_child(struct pair *p, struct conn *c)
{
	raw_conn(p, c, 1);
	return 0;
}

static int raw_parent(struct pair *p, struct conn *c, pid_t kid)
{
	(void)kid;
	raw_conn(p, c, 0);
	return 0;
}

static void raw_cleanup(struct pair *p)
{
	if (p->shm)
		munmap(p->shm, p->shm_len);
	p->shm = NULL;
}

static const struct kind_ops kinds[] = {
	[K_IVMC] = { iv_prep, iv_child, iv_parent, iv_cleanup, "ivmc_listen" },
	[K_TCP] = { tcp_prep, tcp_child, tcp_parent, tcp_cleanup, "listen" },
	[K_UNIX] = { unix_prep, unix_child, unix_parent, unix_cleanup,
		     "socketpair" },
	[K_NETNS] = { netns_prep, netns_child, tcp_parent, tcp_cleanup,
		      "listen in netns" },
	[K_RAWLINE] = { raw_prep, raw_child, raw_parent, raw_cleanup, "mmap" },
	[K_RAWRING] = { raw_prep, raw_child, raw_parent, raw_cleanup, "mmap" },
};

static void pair_init(struct pair *p, const struct xport *x, size_t ring_opt,
		      size_t ring, size_t lat_size)
{
	memset(p, 0, sizeof(*p));
	p->x = x;
	p->ring_opt = ring_opt;
	p->ring = ring;
	p->lat_size = lat_size;
	p->lfd = -1;
	p->sv[0] = p->sv[1] = -1;
}

/* ----------------------------------------------------------------- jobs */

/* One slice: one transport, one test, one round, one fresh connection. */
struct job {
	const struct xport *x;
	int test;
	size_t size;
	size_t ring_opt, ring;
	long count, warm;
	uint64_t cap_ns; /* time bound of the measured loop */
	uint64_t *out; /* latency samples, ns */
	long nout;
	double secs; /* throughput: measured seconds */
	const char *what; /* set when set-up failed */
};

/* Message stamp: the index in the first and the last 8 bytes. */
static void stamp(unsigned char *m, size_t size, uint64_t idx)
{
	memcpy(m, &idx, 8);
	memcpy(m + size - 8, &idx, 8);
}

static int stamp_ok(const unsigned char *m, size_t size, uint64_t idx)
{
	uint64_t a, b;

	memcpy(&a, m, 8);
	memcpy(&b, m + size - 8, 8);
	return a == idx && b == idx;
}

/* Parent: timed round trips, first j->warm not recorded. */
static int lat_measure(struct conn *c, struct job *j)
{
	unsigned char *buf = calloc(1, j->size);
	uint64_t t0, t1, end = now_ns() + j->cap_ns;
	long i, total = j->warm + j->count;
	int err = buf ? 0 : -ENOMEM;

	for (i = 0; i < total && !err; i++) {
		stamp(buf, j->size, i + 1);
		t0 = now_ns();
		err = send_all(c, buf, j->size);
		if (!err)
			err = recv_msg(c, buf, j->size);
		t1 = now_ns();
		if (err == 1)
			err = -EPIPE;
		else if (!err && !stamp_ok(buf, j->size, i + 1))
			err = -EBADMSG;
		if (!err && i >= j->warm)
			j->out[j->nout++] = t1 - t0;
		if (t1 > end)
			break;
	}
	free(buf);
	return err ? xerr(j->x, "round trip", err) : 0;
}

/* Server: echo every message until the parent closes. */
static int lat_serve(struct conn *c, struct job *j)
{
	unsigned char *buf = malloc(j->size);
	long i, max = j->warm + j->count + 1;
	int err = buf ? 0 : -ENOMEM;

	for (i = 0; i < max && !err; i++) {
		err = recv_msg(c, buf, j->size);
		if (!err)
			err = send_all(c, buf, j->size);
	}
	free(buf);
	if (err == 1)
		return 0;
	return err ? xerr(j->x, "echo", err) : 0;
}

static int tput_send(struct conn *c, struct job *j, unsigned char *buf,
		     long from, long to)
{
	uint64_t end = now_ns() + j->cap_ns;
	int err = 0;
	long i;

	for (i = from; i < to && !err; i++) {
		stamp(buf, j->size, i);
		err = send_all(c, buf, j->size);
		if (!(i & 1023) && now_ns() > end)
			err = -ETIMEDOUT;
	}
	return err;
}

/* ivmc-batched: BATCH messages per ivmc_sendv, one publish for them all. */
static int tput_sendv(struct conn *c, struct job *j, unsigned char *buf,
		      long from, long to)
{
	uint64_t end = now_ns() + j->cap_ns;
	struct iovec iov[BATCH];
	long i, k, n;
	int err = 0;

	for (i = from; i < to && !err; i += n) {
		n = MIN((long)BATCH, to - i);
		for (k = 0; k < n; k++) {
			iov[k].iov_base = buf + k * j->size;
			iov[k].iov_len = j->size;
			stamp(iov[k].iov_base, j->size, i + k);
		}
		err = sendv_all(c, iov, (int)n);
		if (!(i & 8191) && now_ns() > end)
			err = -ETIMEDOUT;
	}
	return err;
}

/* The receiver acknowledges each phase with its byte count so far. */
static int ack_wait(struct conn *c, struct job *j, long msgs)
{
	uint64_t ack, want = (uint64_t)msgs * j->size;
	int err = recv_msg(c, &ack, sizeof(ack));

	if (err == 1)
		err = -EPIPE;
	if (err)
		return xerr(j->x, "waiting for the receiver's acknowledgement",
			    err);
	if (ack != want) {
		msg("%s: receiver counted %llu bytes, sender sent %llu",
		    j->x->name, (unsigned long long)ack,
		    (unsigned long long)want);
		return -EBADMSG;
	}
	return 0;
}

static int tput_phase(struct conn *c, struct job *j, unsigned char *buf,
		      long from, long to)
{
	int err;

	if (j->x->batched)
		err = tput_sendv(c, j, buf, from, to);
	else
		err = tput_send(c, j, buf, from, to);
	if (err)
		return xerr(j->x, "send", err);
	return ack_wait(c, j, to);
}

/* Parent: warm-up phase, then the timed phase up to its acknowledgement. */
static int tput_measure(struct conn *c, struct job *j)
{
	size_t len = j->x->batched ? BATCH * j->size : j->size;
	unsigned char *buf = malloc(len);
	uint64_t t0;
	int err;

	if (!buf)
		return -ENOMEM;
	memset(buf, 0xa5, len); /* real pages, not the shared zero page */
	err = tput_phase(c, j, buf, 0, j->warm);
	t0 = now_ns();
	if (!err)
		err = tput_phase(c, j, buf, j->warm, j->warm + j->count);
	j->secs = (double)(now_ns() - t0) / 1e9;
	free(buf);
	return err;
}

/* Receiver's check of the stream: message boundaries fall anywhere in the
 * chunks read, so the first and last 8 bytes are gathered as they pass. */
struct chk {
	size_t size, pos;
	uint64_t idx, got;
	unsigned char head[8], tail[8];
};

static void chk_copy(struct chk *k, const unsigned char *p, size_t n)
{
	size_t lo = k->size - 8, s;

	if (k->pos < 8)
		memcpy(k->head + k->pos, p, MIN(8 - k->pos, n));
	if (k->pos + n > lo) {
		s = MAX(k->pos, lo);
		memcpy(k->tail + (s - lo), p + (s - k->pos), k->pos + n - s);
	}
}

static int chk_feed(struct chk *k, const unsigned char *p, size_t n)
{
	size_t m;

	while (n) {
		if (!k->pos && n >= k->size) { /* whole message in view */
			if (!stamp_ok(p, k->size, k->idx))
				return -EBADMSG;
			m = k->size;
		} else {
			m = MIN(n, k->size - k->pos);
			chk_copy(k, p, m);
			if (k->pos + m < k->size) {
				k->pos += m;
				return 0;
			}
			if (memcmp(k->head, &k->idx, 8) != 0 ||
			    memcmp(k->tail, &k->idx, 8) != 0)
				return -EBADMSG;
			k->pos = 0;
		}
		k->idx++;
		p += m;
		n -= m;
	}
	return 0;
}

static int sink_phase(struct conn *c, struct job *j, struct chk *k,
		      unsigned char *buf, long upto)
{
	uint64_t want = (uint64_t)upto * j->size, ack;
	ssize_t n;
	int err;

	while (k->got < want) {
		n = c->ops->recv(c, buf,
				 MIN((uint64_t)RECV_CHUNK, want - k->got));
		if (n == -EINTR)
			continue;
		if (n <= 0)
			return xerr(j->x, "recv", n ? (int)n : -EPIPE);
		if (chk_feed(k, buf, n)) {
			msg("%s: message %llu arrived corrupted", j->x->name,
			    (unsigned long long)k->idx);
			return -EBADMSG;
		}
		k->got += n;
	}
	ack = k->got;
	err = send_all(c, &ack, sizeof(ack));
	return err ? xerr(j->x, "send acknowledgement", err) : 0;
}

static int wait_eof(struct conn *c, const struct xport *x)
{
	unsigned char b;
	ssize_t n;

	do
		n = c->ops->recv(c, &b, 1);
	while (n == -EINTR);
	if (n > 0)
		n = -EBADMSG;
	return n ? xerr(x, "waiting for end of stream", (int)n) : 0;
}

/* Server: read everything, check it, acknowledge each phase. */
static int tput_serve(struct conn *c, struct job *j)
{
	struct chk k = { .size = j->size };
	unsigned char *buf = malloc(RECV_CHUNK);
	int err = buf ? 0 : -ENOMEM;

	if (!err)
		err = sink_phase(c, j, &k, buf, j->warm);
	if (!err)
		err = sink_phase(c, j, &k, buf, j->warm + j->count);
	if (!err)
		err = wait_eof(c, j->x);
	free(buf);
	return err;
}

static size_t memcpy_buf_len(void)
{
	long l2 = sysconf(_SC_LEVEL2_CACHE_SIZE);

	return MAX((size_t)(l2 > 0 ? l2 : 1 << 20) * 4, (size_t)16 << 20);
}

/* The ceiling: one process, memcpy of each message between two buffers
 * larger than L2, walking through them as a stream would. */
static int memcpy_job(struct job *j)
{
	static unsigned char *src, *dst;
	size_t len = memcpy_buf_len(), off = 0;
	long i, total = j->warm + j->count;
	uint64_t t0 = 0;

	if (!src) {
		src = mem_private(len);
		dst = mem_private(len);
		if (!src || !dst)
			return xerr(j->x, "mmap", -ENOMEM);
		memset(src, 0x5a, len);
	}
	for (i = 0; i < total; i++) {
		if (i == j->warm)
			t0 = now_ns();
		memcpy(dst + off, src + off, j->size);
		__asm__ __volatile__("" : : "r"(dst) : "memory");
		off = off + 2 * j->size <= len ? off + j->size : 0;
	}
	j->secs = (double)(now_ns() - t0) / 1e9;
	return 0;
}

static void __attribute__((noreturn)) serve_main(struct pair *p, struct job *j)
{
	struct conn c;
	int err;

	child_init(1);
	memset(&c, 0, sizeof(c));
	err = kinds[j->x->kind].child(p, &c);
	if (!err) {
		err = j->test == T_LAT ? lat_serve(&c, j) : tput_serve(&c, j);
		c.ops->close(&c);
	}
	_exit(err ? 1 : 0);
}

static int run_conn(struct pair *p, struct job *j, pid_t kid)
{
	struct conn c;
	int err;

	memset(&c, 0, sizeof(c));
	err = kinds[j->x->kind].parent(p, &c, kid);
	if (err)
		return err;
	err = j->test == T_LAT ? lat_measure(&c, j) : tput_measure(&c, j);
	c.ops->close(&c);
	return err;
}

/* Forks the server, measures, reaps. Returns 0 or -errno; j->what names
 * the set-up step when that is what failed. */
static int run_job(struct job *j)
{
	const struct kind_ops *k = &kinds[j->x->kind];
	struct pair p;
	pid_t kid;
	int err, st;

	if (j->x->kind == K_MEMCPY)
		return memcpy_job(j);
	pair_init(&p, j->x, j->ring_opt, j->ring, j->size);
	err = k->prep(&p);
	if (err) {
		j->what = k->prep_what;
		goto out;
	}
	fflush(NULL);
	kid = fork();
	if (kid < 0) {
		err = xerr(j->x, "fork", -errno);
		goto out;
	}
	if (kid == 0)
		serve_main(&p, j);
	kid_add(kid);
	err = run_conn(&p, j, kid);
	if (err)
		kill(kid, SIGKILL);
	st = reap(kid, REAP_MS);
	if (!err && st)
		err = xerr(j->x, "server process", st < 0 ? -EINTR : -EIO);
out:
	k->cleanup(&p);
	return err;
}

/* ------------------------------------------------------------- the runs */

struct xres {
	const struct xport *x;
	int on, state;
	char why[160];
	uint64_t *lat; /* all latency samples, ns */
	size_t lat_len;
	long nlat;
	double p50[MAX_ROUNDS]; /* per-round p50, µs */
	double mbs[NSIZES][MAX_ROUNDS];
	double mps[NSIZES][MAX_ROUNDS];
};

struct run {
	struct xres xr[NX];
	size_t lat_size, ring_opt, ring;
	long lat_per_round;
	size_t tput_bytes;
	unsigned int size_mask;
	int rounds;
	uint64_t cap_ns;
	const char *label;
};

static int run_init(struct run *r, const struct opts *o, unsigned int xmask)
{
	int i, s, k;

	memset(r, 0, sizeof(*r));
	r->lat_size = o->lat_size;
	r->ring_opt = o->ring;
	r->ring = o->ring ? o->ring : IVMC_RING_DEFAULT;
	r->rounds = o->rounds;
	r->lat_per_round = MAX(1L, (o->lat_n + o->rounds - 1) / o->rounds);
	r->tput_bytes = o->tput_bytes;
	r->size_mask = o->size_mask;
	r->cap_ns = 120 * NSEC;
	r->label = "";
	for (i = 0; i < NX; i++) {
		struct xres *x = &r->xr[i];

		x->x = &xports[i];
		x->on = !!(xmask & (1u << i));
		for (k = 0; k < MAX_ROUNDS; k++) {
			x->p50[k] = NAN;
			for (s = 0; s < NSIZES; s++)
				x->mbs[s][k] = x->mps[s][k] = NAN;
		}
		if (x->on && (x->x->tests & T_LAT) && !o->no_lat) {
			x->lat_len =
				r->lat_per_round * r->rounds * sizeof(*x->lat);
			x->lat = mem_private(x->lat_len);
			if (!x->lat)
				return -ENOMEM;
		}
	}
	return 0;
}

static void run_free(struct run *r)
{
	int i;

	for (i = 0; i < NX; i++)
		if (r->xr[i].lat)
			munmap(r->xr[i].lat, r->xr[i].lat_len);
}

static int unavailable_err(int err)
{
	return err == -ENOSYS || err == -EAFNOSUPPORT ||
	       err == -EPROTONOSUPPORT || err == -EOPNOTSUPP;
}

/* Takes x out of the run: unavailable (set-up not supported) or failed. */
static void x_fail(struct xres *x, const struct job *j, int err, int round)
{
	x->on = 0;
	if (j->what)
		snprintf(x->why, sizeof(x->why), "%s: %s", j->what,
			 strerror(-err));
	else
		snprintf(x->why, sizeof(x->why), "%s %zu B, round %d: %s",
			 j->test == T_LAT ? "latency" : "throughput", j->size,
			 round + 1, strerror(-err));
	if (j->what && unavailable_err(err)) {
		x->state = XS_UNAVAIL;
		msg("%s: unavailable (%s); continuing without it", x->x->name,
		    x->why);
		return;
	}
	x->state = XS_FAILED;
	if (j->what)
		msg("%s: %s", x->x->name, x->why);
	msg("%s: failed; continuing without it", x->x->name);
}

static void job_init(const struct run *r, const struct xres *x, struct job *j,
		     int test, size_t size)
{
	memset(j, 0, sizeof(*j));
	j->x = x->x;
	j->test = test;
	j->size = size;
	j->ring_opt = r->ring_opt;
	j->ring = r->ring;
	j->cap_ns = r->cap_ns;
}

static void lat_slice(struct run *r, struct xres *x, int round)
{
	struct job j;
	int err;

	job_init(r, x, &j, T_LAT, r->lat_size);
	j.count = r->lat_per_round;
	j.warm = MIN(MAX(j.count / 10, 10L), 2000L);
	j.out = x->lat + x->nlat;
	err = run_job(&j);
	if (err) {
		x_fail(x, &j, err, round);
		return;
	}
	if (!j.nout)
		return;
	qsort(j.out, j.nout, sizeof(*j.out), cmp_u64);
	x->p50[round] = (double)pct(j.out, j.nout, 0.50) / 1e3;
	x->nlat += j.nout;
}

static void tput_slice(struct run *r, struct xres *x, int si, int round)
{
	size_t size = tput_sizes[si];
	struct job j;
	int err;

	if (x->x->batched && size != 64)
		return;
	job_init(r, x, &j, T_TPUT, size);
	j.count = MAX(MIN_MSGS, (long)(r->tput_bytes / size / r->rounds));
	/* warm-up: 10 %, and at least twice round the ring (first touch) */
	j.warm = MAX(j.count / 10, (long)((2 * r->ring + size - 1) / size));
	err = run_job(&j);
	if (err) {
		x_fail(x, &j, err, round);
		return;
	}
	if (j.secs <= 0)
		return;
	x->mbs[si][round] = (double)j.count * size / j.secs / 1e6;
	x->mps[si][round] = (double)j.count / j.secs;
}

static void progress(const struct run *r, const char *what, int round)
{
	if (isatty(STDERR_FILENO))
		fprintf(stderr, "\rivmc-bench: %s%s round %d/%d   ", r->label,
			what, round + 1, r->rounds);
}

static void progress_done(void)
{
	if (isatty(STDERR_FILENO))
		fprintf(stderr, "\r%60s\r", "");
}

/* Rounds A B C A B C ...; the order rotates so no transport always runs
 * right after the same one. si < 0: latency. */
static void run_rounds(struct run *r, int si)
{
	char what[48];
	int round, k;

	if (si < 0)
		snprintf(what, sizeof(what), "latency");
	else
		snprintf(what, sizeof(what), "throughput %zu B",
			 tput_sizes[si]);
	for (round = 0; round < r->rounds; round++) {
		progress(r, what, round);
		for (k = 0; k < NX; k++) {
			struct xres *x = &r->xr[(k + round) % NX];

			if (!x->on)
				continue;
			if (si < 0 && (x->x->tests & T_LAT))
				lat_slice(r, x, round);
			else if (si >= 0 && (x->x->tests & T_TPUT))
				tput_slice(r, x, si, round);
		}
	}
	progress_done();
}

static void run_tput(struct run *r)
{
	int si;

	for (si = 0; si < NSIZES; si++)
		if (r->size_mask & (1u << si))
			run_rounds(r, si);
}

/* ------------------------------------------------------------- summaries */

struct lat_sum {
	long n;
	double p50, p99, p999, max; /* µs */
	double vs_tcp, vs_raw; /* median of per-round p50 ratios */
};

static void lat_summarize(struct run *r, struct xres *x, struct lat_sum *s)
{
	s->n = x->nlat;
	s->p50 = s->p99 = s->p999 = s->max = NAN;
	s->vs_tcp = ratio_med(x->p50, r->xr[XI_TCP].p50, r->rounds);
	s->vs_raw = ratio_med(x->p50, r->xr[XI_RAWSHM].p50, r->rounds);
	if (!s->n)
		return;
	qsort(x->lat, x->nlat, sizeof(*x->lat), cmp_u64);
	s->p50 = (double)pct(x->lat, x->nlat, 0.50) / 1e3;
	s->p99 = (double)pct(x->lat, x->nlat, 0.99) / 1e3;
	s->p999 = (double)pct(x->lat, x->nlat, 0.999) / 1e3;
	s->max = (double)x->lat[x->nlat - 1] / 1e3;
}

struct tput_sum {
	double mbs, mps, vs_tcp, vs_ring, vs_memcpy;
};

static void tput_summarize(struct run *r, struct xres *x, int si,
			   struct tput_sum *s)
{
	int n = r->rounds;

	s->mbs = median(x->mbs[si], n);
	s->mps = median(x->mps[si], n);
	s->vs_tcp = ratio_med(x->mbs[si], r->xr[XI_TCP].mbs[si], n);
	s->vs_ring = ratio_med(x->mbs[si], r->xr[XI_RAWRING].mbs[si], n);
	s->vs_memcpy = ratio_med(x->mbs[si], r->xr[XI_MEMCPY].mbs[si], n);
}

static const char *num(char *b, size_t n, const char *fmt, double v)
{
	if (isnan(v))
		snprintf(b, n, "n/a");
	else
		snprintf(b, n, fmt, v);
	return b;
}

static const char *rate(char *b, size_t n, double v)
{
	if (isnan(v))
		return num(b, n, "", v);
	if (v >= 1e6)
		snprintf(b, n, "%.2fM", v / 1e6);
	else if (v >= 1e3)
		snprintf(b, n, "%.1fk", v / 1e3);
	else
		snprintf(b, n, "%.0f", v);
	return b;
}

static const char *size_str(char *b, size_t n, size_t v)
{
	if (v >= (1u << 20) && !(v & ((1u << 20) - 1)))
		snprintf(b, n, "%zu MiB", v >> 20);
	else if (v >= 1024 && !(v & 1023))
		snprintf(b, n, "%zu KiB", v >> 10);
	else
		snprintf(b, n, "%zu B", v);
	return b;
}

static int has_lat(const struct xres *x)
{
	return (x->x->tests & T_LAT) && x->nlat > 0;
}

static void print_lat(FILE *f, struct run *r)
{
	char a[5][24], b[2][24];
	struct lat_sum s;
	int i;

	fprintf(f, "\n## Latency: %zu-byte round trip (µs)\n\n", r->lat_size);
	fprintf(f, "| transport | p50 | p99 | p99.9 | max | p50 vs tcp "
		   "| p50 vs raw-shm | round trips |\n");
	fprintf(f, "|---|---:|---:|---:|---:|---:|---:|---:|\n");
	for (i = 0; i < NX; i++) {
		if (!has_lat(&r->xr[i]))
			continue;
		lat_summarize(r, &r->xr[i], &s);
		fprintf(f, "| %s | %s | %s | %s | %s | %s | %s | %ld |\n",
			xports[i].name, num(a[0], 24, "%.2f", s.p50),
			num(a[1], 24, "%.2f", s.p99),
			num(a[2], 24, "%.2f", s.p999),
			num(a[3], 24, "%.1f", s.max),
			num(b[0], 24, "%.3f", s.vs_tcp),
			num(b[1], 24, "%.3f", s.vs_raw), s.n);
	}
}

static int has_tput(const struct run *r, const struct xres *x, int si)
{
	int k;

	for (k = 0; k < r->rounds; k++)
		if (!isnan(x->mbs[si][k]))
			return 1;
	return 0;
}

static void print_tput_row(FILE *f, struct run *r, int i, int si)
{
	char a[6][24];
	struct tput_sum s;

	tput_summarize(r, &r->xr[i], si, &s);
	fprintf(f, "| %s | %s | %s | %s | %s | %s | %s |\n", xports[i].name,
		size_str(a[0], 24, tput_sizes[si]),
		num(a[1], 24, "%.0f", s.mbs), rate(a[2], 24, s.mps),
		num(a[3], 24, "%.2f", s.vs_tcp),
		num(a[4], 24, "%.2f", s.vs_ring),
		num(a[5], 24, "%.2f", s.vs_memcpy));
}

static void print_tput(FILE *f, struct run *r)
{
	int i, si;

	fprintf(f, "\n## Throughput: one-way stream (MB = 10^6 bytes; "
		   "median of rounds)\n\n");
	fprintf(f, "| transport | size | MB/s | msgs/s | vs tcp | vs raw-ring "
		   "| vs memcpy |\n");
	fprintf(f, "|---|---:|---:|---:|---:|---:|---:|\n");
	for (si = 0; si < NSIZES; si++)
		for (i = 0; i < NX; i++)
			if (has_tput(r, &r->xr[i], si))
				print_tput_row(f, r, i, si);
}

static void print_failures(FILE *f, const struct run *r)
{
	int i, n = 0;

	for (i = 0; i < NX; i++) {
		const struct xres *x = &r->xr[i];

		if (x->state == XS_OK)
			continue;
		if (!n++)
			fprintf(f, "\n%sNot measured:\n\n", r->label);
		fprintf(f, "- %s: %s (%s)\n", x->x->name,
			x->state == XS_UNAVAIL ? "unavailable" : "failed",
			x->why);
	}
}

/* ----------------------------------------------------------------- idle */

struct pstat {
	double cpu_ms; /* utime + stime */
	double run_us; /* schedstat on-CPU time, or NaN */
	unsigned long vcs, ics; /* context switches */
};

static int pstat_cpu(pid_t pid, struct pstat *s)
{
	unsigned long ut, st;
	char path[64], buf[1024], *p;
	FILE *f;
	int n;

	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	f = fopen(path, "r");
	if (!f)
		return -errno;
	p = fgets(buf, sizeof(buf), f);
	fclose(f);
	p = p ? strrchr(buf, ')') : NULL;
	if (!p)
		return -EIO;
	n = sscanf(p + 1,
		   " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut,
		   &st);
	if (n != 2)
		return -EIO;
	s->cpu_ms = (double)(ut + st) * 1e3 / (double)sysconf(_SC_CLK_TCK);
	return 0;
}

static void pstat_sched(pid_t pid, struct pstat *s)
{
	unsigned long long ns;
	char path[64];
	FILE *f;

	s->run_us = NAN;
	snprintf(path, sizeof(path), "/proc/%d/schedstat", (int)pid);
	f = fopen(path, "r");
	if (!f)
		return;
	/* 0 for a process that has run: not accounted by this kernel */
	if (fscanf(f, "%llu", &ns) == 1 && ns)
		s->run_us = (double)ns / 1e3;
	fclose(f);
}

static int pstat_ctx(pid_t pid, struct pstat *s)
{
	char path[64], line[256];
	int found = 0;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	f = fopen(path, "r");
	if (!f)
		return -errno;
	while (fgets(line, sizeof(line), f)) {
		found += sscanf(line, "voluntary_ctxt_switches: %lu", &s->vcs);
		found += sscanf(line, "nonvoluntary_ctxt_switches: %lu",
				&s->ics);
	}
	fclose(f);
	return found == 2 ? 0 : -EIO;
}

static int pstat_read(pid_t pid, struct pstat *s)
{
	int err = pstat_cpu(pid, s);

	if (!err)
		err = pstat_ctx(pid, s);
	pstat_sched(pid, s);
	return err;
}

static void pstat_sub(struct pstat *d, const struct pstat *b,
		      const struct pstat *a)
{
	d->cpu_ms = b->cpu_ms - a->cpu_ms;
	d->run_us = b->run_us - a->run_us;
	d->vcs = b->vcs - a->vcs;
	d->ics = b->ics - a->ics;
}

struct idle_res {
	const struct xport *x;
	int ok;
	char why[96];
	double secs;
	struct pstat d[2]; /* [0] accepting side, [1] connecting side */
	const char *peer_death; /* what the survivor saw */
	double peer_ms;
};

/* One side of the idle pair: connect, report, block in recv. */
static void __attribute__((noreturn))
idle_side(struct pair *p, int role, int wfd)
{
	const struct kind_ops *k = &kinds[p->x->kind];
	struct conn c;
	ssize_t n;
	char b;

	child_init(role);
	memset(&c, 0, sizeof(c));
	if (role ? k->child(p, &c) : k->parent(p, &c, 0))
		_exit(2);
	if (write(wfd, "C", 1) != 1)
		_exit(2);
	do
		n = c.ops->recv(&c, &b, 1);
	while (n == -EINTR);
	_exit(n == 0 ? 0 : n > 0 ? 4 : 3);
}

static pid_t idle_spawn(struct pair *p, int role, int wfd)
{
	pid_t pid;

	fflush(NULL);
	pid = fork();
	if (pid == 0)
		idle_side(p, role, wfd);
	if (pid > 0)
		kid_add(pid);
	return pid;
}

/* Waits for both sides' "connected" byte, at most SETUP_MS. */
static int idle_wait_ready(int rfd)
{
	struct pollfd pfd = { .fd = rfd, .events = POLLIN };
	int got = 0;
	char b[2];
	ssize_t n;

	while (got < 2) {
		if (poll(&pfd, 1, SETUP_MS) <= 0)
			return -ETIMEDOUT;
		n = read(rfd, b, sizeof(b) - got);
		if (n <= 0)
			return -EPIPE;
		got += n;
	}
	return 0;
}

static int idle_measure(struct idle_res *res, const pid_t pid[2],
			unsigned int secs)
{
	struct pstat a[2], b[2];
	uint64_t t0;
	int i, err = 0;

	sleep_ns(200 * MSEC); /* let both sides reach their sleep */
	t0 = now_ns();
	for (i = 0; i < 2 && !err; i++)
		err = pstat_read(pid[i], &a[i]);
	sleep_ns((uint64_t)secs * NSEC);
	for (i = 0; i < 2 && !err; i++)
		err = pstat_read(pid[i], &b[i]);
	res->secs = (double)(now_ns() - t0) / 1e9;
	for (i = 0; i < 2 && !err; i++)
		pstat_sub(&res->d[i], &b[i], &a[i]);
	return err;
}

/* Kill the connecting side; does the blocked survivor notice? */
static void idle_peer_death(struct idle_res *res, const pid_t pid[2])
{
	uint64_t t0 = now_ns();
	int st;

	kill(pid[1], SIGKILL);
	reap(pid[1], REAP_MS);
	st = reap(pid[0], 2000);
	res->peer_ms = (double)(now_ns() - t0) / 1e6;
	res->peer_death = st == 0 ? "end of stream" :
			  st == 3 ? "error" :
			  st == 4 ? "unexpected data" :
				    "nothing within 2 s";
}

static int idle_pair(struct pair *p, struct idle_res *res, unsigned int secs)
{
	pid_t pid[2] = { -1, -1 };
	int fds[2], err, i;

	if (pipe2(fds, O_CLOEXEC))
		return -errno;
	pid[1] = idle_spawn(p, 1, fds[1]);
	if (pid[1] > 0)
		pid[0] = idle_spawn(p, 0, fds[1]);
	close(fds[1]);
	err = pid[0] < 0 || pid[1] < 0 ? -EAGAIN : idle_wait_ready(fds[0]);
	close(fds[0]);
	kinds[p->x->kind].cleanup(p);
	if (!err)
		err = idle_measure(res, pid, secs);
	if (!err)
		idle_peer_death(res, pid);
	for (i = 0; i < 2; i++)
		if (pid[i] > 0 && err)
			reap(pid[i], 0);
	return err;
}

static void idle_run(const struct opts *o, int xi, struct idle_res *res)
{
	const struct kind_ops *k = &kinds[xports[xi].kind];
	struct pair p;
	int err;

	memset(res, 0, sizeof(*res));
	res->x = &xports[xi];
	pair_init(&p, res->x, o->ring, o->ring ? o->ring : IVMC_RING_DEFAULT,
		  o->lat_size);
	err = k->prep(&p);
	if (err) {
		snprintf(res->why, sizeof(res->why), "%s: %s", k->prep_what,
			 strerror(-err));
		k->cleanup(&p);
		return;
	}
	err = idle_pair(&p, res, o->idle_s);
	if (err)
		snprintf(res->why, sizeof(res->why), "%s", strerror(-err));
	res->ok = !err;
}

static void print_idle(FILE *f, const struct idle_res *res, int n, int secs)
{
	char a[4][24];
	int i;

	fprintf(f,
		"\n## Idle: connected pair, both sides blocked in recv "
		"for %d s\n\n",
		secs);
	fprintf(f, "| transport | CPU ms (accepting / connecting) "
		   "| on-CPU µs, both | context switches, both | "
		   "peer killed: survivor sees |\n");
	fprintf(f, "|---|---:|---:|---:|---|\n");
	for (i = 0; i < n; i++, res++) {
		if (!res->ok) {
			fprintf(f, "| %s | n/a (%s) | | | |\n", res->x->name,
				res->why);
			continue;
		}
		fprintf(f, "| %s | %s / %s | %s | %lu | %s after %.1f ms |\n",
			res->x->name, num(a[0], 24, "%.0f", res->d[0].cpu_ms),
			num(a[1], 24, "%.0f", res->d[1].cpu_ms),
			num(a[2], 24, "%.0f",
			    res->d[0].run_us + res->d[1].run_us),
			res->d[0].vcs + res->d[0].ics + res->d[1].vcs +
				res->d[1].ics,
			res->peer_death, res->peer_ms);
	}
}

/* ------------------------------------------------------------------ hog */

static void __attribute__((noreturn)) hog_burn(int role)
{
	uint64_t end;
	volatile uint64_t x = 0;
	unsigned int i;

	child_init(role);
	setpriority(PRIO_PROCESS, 0, 0);
	end = now_ns() + HOG_MAX_S * NSEC;
	while (now_ns() < end)
		for (i = 0; i < 1000000; i++)
			x += i;
	_exit(0);
}

static int hogs_start(pid_t hog[2])
{
	int i;

	fflush(NULL);
	for (i = 0; i < 2; i++) {
		hog[i] = fork();
		if (hog[i] < 0)
			return -errno;
		if (hog[i] == 0)
			hog_burn(i);
		kid_add(hog[i]);
	}
	return 0;
}

static void hogs_stop(pid_t hog[2])
{
	int i;

	for (i = 0; i < 2; i++) {
		if (hog[i] > 0) {
			kill(hog[i], SIGKILL);
			reap(hog[i], REAP_MS);
		}
	}
}

/* Same latency and 64 KiB throughput for ivmc and tcp, two burners on. */
static int hog_run(const struct opts *o, const struct run *base, struct run *h)
{
	unsigned int mask = 0;
	pid_t hog[2] = { -1, -1 };
	int err;

	if (base->xr[XI_IVMC].on)
		mask |= 1u << XI_IVMC;
	if (base->xr[XI_TCP].on)
		mask |= 1u << XI_TCP;
	err = run_init(h, o, mask);
	if (err)
		return err;
	h->label = "hog: ";
	h->size_mask = 1u << SIZE_64K;
	h->cap_ns = (o->quick ? 2 : 5) * NSEC;
	err = hogs_start(hog);
	if (!err) {
		if (!o->no_lat)
			run_rounds(h, -1);
		if (!o->no_tput)
			run_tput(h);
	}
	hogs_stop(hog);
	return err;
}

static void print_hog_row(FILE *f, struct run *h, const struct run *base,
			  int xi)
{
	struct xres *x = &h->xr[xi];
	const struct xres *bx = &base->xr[xi];
	struct lat_sum s;
	struct tput_sum t;
	char a[7][24];

	if (!has_lat(x) && !has_tput(h, x, SIZE_64K))
		return;
	lat_summarize(h, x, &s);
	tput_summarize(h, x, SIZE_64K, &t);
	fprintf(f, "| %s | %s | %s | %s | %s | %ld | %s | %s | %s |\n",
		x->x->name, num(a[0], 24, "%.2f", s.p50),
		num(a[1], 24, "%.2f", s.p99), num(a[2], 24, "%.2f", s.p999),
		num(a[3], 24, "%.1f", s.max), s.n,
		num(a[4], 24, "%.2f", s.p50 / median(bx->p50, base->rounds)),
		num(a[5], 24, "%.0f", t.mbs),
		num(a[6], 24, "%.2f",
		    t.mbs / median(bx->mbs[SIZE_64K], base->rounds)));
}

static void print_hog(FILE *f, struct run *h, const struct run *base)
{
	char a[2][24];
	int n = h->rounds;

	fprintf(f, "\n## Under CPU contention (--hog: one burner per CPU, "
		   "nice 0)\n\n");
	fprintf(f, "| transport | p50 µs | p99 µs | p99.9 µs | max µs "
		   "| round trips | p50 vs no hog | 64 KiB MB/s "
		   "| MB/s vs no hog |\n");
	fprintf(f, "|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
	print_hog_row(f, h, base, XI_IVMC);
	print_hog_row(f, h, base, XI_TCP);
	fprintf(f,
		"\nivmc / tcp under hog (median of per-round ratios): "
		"p50 latency %s, 64 KiB throughput %s\n",
		num(a[0], 24, "%.3f",
		    ratio_med(h->xr[XI_IVMC].p50, h->xr[XI_TCP].p50, n)),
		num(a[1], 24, "%.2f",
		    ratio_med(h->xr[XI_IVMC].mbs[SIZE_64K],
			      h->xr[XI_TCP].mbs[SIZE_64K], n)));
	print_failures(f, h);
}

/* ----------------------------------------------------------------- JSON */

static void json_str(FILE *f, const char *s)
{
	fputc('"', f);
	for (; *s; s++) {
		if (*s == '"' || *s == '\\')
			fputc('\\', f);
		if ((unsigned char)*s >= 0x20)
			fputc(*s, f);
	}
	fputc('"', f);
}

static void json_num(FILE *f, double v)
{
	if (isnan(v) || isinf(v))
		fputs("null", f);
	else
		fprintf(f, "%.6g", v);
}

static void json_kv(FILE *f, const char *k, double v, const char *sep)
{
	fprintf(f, "\"%s\": ", k);
	json_num(f, v);
	fputs(sep, f);
}

static void json_arr(FILE *f, const char *k, const double *v, int n)
{
	int i;

	fprintf(f, "\"%s\": [", k);
	for (i = 0; i < n; i++) {
		json_num(f, v[i]);
		fputs(i + 1 < n ? ", " : "", f);
	}
	fputs("]", f);
}

static void json_lat(FILE *f, struct run *r)
{
	struct lat_sum s;
	const char *sep = "";
	int i;

	fputs("  \"latency\": [", f);
	for (i = 0; i < NX; i++) {
		if (!has_lat(&r->xr[i]))
			continue;
		lat_summarize(r, &r->xr[i], &s);
		fprintf(f, "%s\n    {\"transport\": ", sep);
		json_str(f, xports[i].name);
		fprintf(f, ", \"size\": %zu, \"round_trips\": %ld, ",
			r->lat_size, s.n);
		json_kv(f, "p50_us", s.p50, ", ");
		json_kv(f, "p99_us", s.p99, ", ");
		json_kv(f, "p999_us", s.p999, ", ");
		json_kv(f, "max_us", s.max, ", ");
		json_kv(f, "p50_vs_tcp", s.vs_tcp, ", ");
		json_kv(f, "p50_vs_raw_shm", s.vs_raw, ", ");
		json_arr(f, "round_p50_us", r->xr[i].p50, r->rounds);
		fputs("}", f);
		sep = ",";
	}
	fputs("\n  ],\n", f);
}

static void json_tput_row(FILE *f, struct run *r, int i, int si)
{
	struct tput_sum s;

	tput_summarize(r, &r->xr[i], si, &s);
	fputs("\n    {\"transport\": ", f);
	json_str(f, xports[i].name);
	fprintf(f, ", \"size\": %zu, ", tput_sizes[si]);
	json_kv(f, "mb_s", s.mbs, ", ");
	json_kv(f, "msgs_s", s.mps, ", ");
	json_kv(f, "vs_tcp", s.vs_tcp, ", ");
	json_kv(f, "vs_raw_ring", s.vs_ring, ", ");
	json_kv(f, "vs_memcpy", s.vs_memcpy, ", ");
	json_arr(f, "round_mb_s", r->xr[i].mbs[si], r->rounds);
	fputs("}", f);
}

static void json_tput(FILE *f, struct run *r)
{
	const char *sep = "";
	int i, si;

	fputs("  \"throughput\": [", f);
	for (si = 0; si < NSIZES; si++) {
		for (i = 0; i < NX; i++) {
			if (!has_tput(r, &r->xr[i], si))
				continue;
			fputs(sep, f);
			json_tput_row(f, r, i, si);
			sep = ",";
		}
	}
	fputs("\n  ],\n", f);
}

static void json_failures(FILE *f, const struct run *r)
{
	const char *sep = "";
	int i;

	fputs("  \"not_measured\": [", f);
	for (i = 0; i < NX; i++) {
		if (r->xr[i].state == XS_OK)
			continue;
		fprintf(f, "%s\n    {\"transport\": ", sep);
		json_str(f, xports[i].name);
		fprintf(f, ", \"state\": \"%s\", \"reason\": ",
			r->xr[i].state == XS_UNAVAIL ? "unavailable" :
						       "failed");
		json_str(f, r->xr[i].why);
		fputs("}", f);
		sep = ",";
	}
	fputs("\n  ]", f);
}

static void json_idle(FILE *f, const struct idle_res *res, int n)
{
	int i;

	fputs(",\n  \"idle\": [", f);
	for (i = 0; i < n; i++, res++) {
		fprintf(f, "%s\n    {\"transport\": ", i ? "," : "");
		json_str(f, res->x->name);
		fprintf(f, ", \"ok\": %s, ", res->ok ? "true" : "false");
		json_kv(f, "seconds", res->secs, ", ");
		json_kv(f, "cpu_ms_accepting", res->d[0].cpu_ms, ", ");
		json_kv(f, "cpu_ms_connecting", res->d[1].cpu_ms, ", ");
		json_kv(f, "on_cpu_us_both",
			res->d[0].run_us + res->d[1].run_us, ", ");
		fprintf(f, "\"ctx_switches_both\": %lu, \"peer_death\": ",
			res->d[0].vcs + res->d[0].ics + res->d[1].vcs +
				res->d[1].ics);
		json_str(f, res->ok ? res->peer_death : res->why);
		fputs(", ", f);
		json_kv(f, "peer_death_ms", res->ok ? res->peer_ms : NAN, "}");
	}
	fputs("\n  ]", f);
}

static void json_hog(FILE *f, struct run *h)
{
	int n = h->rounds;

	fputs(",\n  \"hog\": {\n", f);
	json_lat(f, h);
	json_tput(f, h);
	fputs("  ", f);
	json_kv(f, "ivmc_vs_tcp_p50",
		ratio_med(h->xr[XI_IVMC].p50, h->xr[XI_TCP].p50, n), ",\n  ");
	json_kv(f, "ivmc_vs_tcp_64k_mb_s",
		ratio_med(h->xr[XI_IVMC].mbs[SIZE_64K],
			  h->xr[XI_TCP].mbs[SIZE_64K], n),
		"\n  }");
}

static void date_str(char *b, size_t n)
{
	time_t t = time(NULL);
	struct tm tm;

	localtime_r(&t, &tm);
	strftime(b, n, "%Y-%m-%dT%H:%M:%S%z", &tm);
}

static void json_head(FILE *f, const struct opts *o, const struct run *r)
{
	struct utsname u;
	char date[64];

	uname(&u);
	date_str(date, sizeof(date));
	fprintf(f, "{\n  \"tool\": \"ivmc-bench\", \"version\": \"%s\",\n",
		BENCH_VERSION);
	fprintf(f, "  \"date\": \"%s\", \"kernel\": ", date);
	json_str(f, u.release);
	fprintf(f,
		", \"cpus_online\": %ld, \"pinned\": %s, "
		"\"cpus\": [%d, %d],\n",
		sysconf(_SC_NPROCESSORS_ONLN), g.pinned ? "true" : "false",
		g.cpu[0], g.cpu[1]);
	fprintf(f,
		"  \"config\": {\"quick\": %s, \"rounds\": %d, "
		"\"latency_size\": %zu, \"round_trips_per_round\": %ld, "
		"\"throughput_bytes\": %zu, \"ring\": %zu, "
		"\"memcpy_buffer\": %zu},\n",
		o->quick ? "true" : "false", r->rounds, r->lat_size,
		r->lat_per_round, r->tput_bytes, r->ring, memcpy_buf_len());
}

struct report {
	const struct opts *o;
	struct run *base;
	struct run *hog;
	struct idle_res idle[2];
	int nidle;
};

static int json_write(const char *path, struct report *rp)
{
	FILE *f = fopen(path, "w");
	int err;

	if (!f)
		return -errno;
	json_head(f, rp->o, rp->base);
	json_lat(f, rp->base);
	json_tput(f, rp->base);
	json_failures(f, rp->base);
	if (rp->nidle)
		json_idle(f, rp->idle, rp->nidle);
	if (rp->hog)
		json_hog(f, rp->hog);
	fputs("\n}\n", f);
	err = ferror(f) ? -EIO : 0;
	if (fclose(f) && !err)
		err = -errno;
	return err;
}

/* --------------------------------------------------------------- set-up */

static int ip_find(void)
{
	static const char *const paths[] = { "/usr/sbin/ip", "/sbin/ip",
					     "/usr/bin/ip", "/bin/ip" };
	size_t i;

	for (i = 0; i < ARRAY_SIZE(paths); i++) {
		if (!access(paths[i], X_OK)) {
			snprintf(g.ip, sizeof(g.ip), "%s", paths[i]);
			return 0;
		}
	}
	return -ENOENT;
}

/* Address and link up for side i of the veth pair, inside its namespace. */
static int netns_side_up(int i, const char *addr)
{
	int err;

	err = ip_run(0,
		     IP("-n", g.ns[i], "addr", "add", addr, "dev", g.veth[i]));
	if (!err)
		err = ip_run(0,
			     IP("-n", g.ns[i], "link", "set", g.veth[i], "up"));
	if (!err)
		err = ip_run(0, IP("-n", g.ns[i], "link", "set", "lo", "up"));
	return err;
}

static int netns_open(void)
{
	char path[64];
	int i;

	for (i = 0; i < 2; i++) {
		snprintf(path, sizeof(path), "/run/netns/%s", g.ns[i]);
		g.ns_fd[i] = open(path, O_RDONLY | O_CLOEXEC);
		if (g.ns_fd[i] < 0)
			return -errno;
	}
	g.ns_orig = open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC);
	return g.ns_orig < 0 ? -errno : 0;
}

/*
 * Two namespaces of our own, one veth pair created directly inside them
 * (it never exists in the caller's namespace), 10.199.0.1/30 and
 * 10.199.0.2/30 on it and nowhere else. Deleting the namespaces deletes
 * the pair.
 */
static int netns_setup(void)
{
	int pid = (int)getpid(), err;

	if (geteuid())
		return -EPERM;
	if (ip_find())
		return -ENOENT;
	snprintf(g.ns[0], sizeof(g.ns[0]), "ivmcb-%d-a", pid);
	snprintf(g.ns[1], sizeof(g.ns[1]), "ivmcb-%d-b", pid);
	snprintf(g.veth[0], sizeof(g.veth[0]), "ivb%da", pid);
	snprintf(g.veth[1], sizeof(g.veth[1]), "ivb%db", pid);
	g.ns_up = 1;
	err = ip_run(0, IP("netns", "add", g.ns[0]));
	if (!err)
		err = ip_run(0, IP("netns", "add", g.ns[1]));
	if (!err)
		err = ip_run(0, IP("link", "add", g.veth[0], "netns", g.ns[0],
				   "type", "veth", "peer", "name", g.veth[1],
				   "netns", g.ns[1]));
	if (!err)
		err = netns_side_up(0, "10.199.0.1/30");
	if (!err)
		err = netns_side_up(1, "10.199.0.2/30");
	if (!err)
		err = netns_open();
	if (err)
		netns_cleanup();
	return err;
}

static int tmpdir_setup(void)
{
	const char *t = getenv("TMPDIR");

	if (!t || !*t || strlen(t) > 40)
		t = "/tmp";
	snprintf(g.tmpdir, sizeof(g.tmpdir), "%s/ivmc-bench.XXXXXX", t);
	if (!mkdtemp(g.tmpdir)) {
		g.tmpdir[0] = '\0';
		return -errno;
	}
	return 0;
}

/* --------------------------------------------------------------- options */

static void usage(FILE *f)
{
	static const char *const lines[] = {
		"usage: ivmc-bench [options]",
		"  -q, --quick           20k round trips, 32 MiB per size",
		"  -s, --size BYTES      latency message size (64; 8..1M)",
		"  -n, --iterations N    round trips per transport (100000)",
		"  -b, --bytes BYTES     throughput bytes per size and",
		"                        transport (256M)",
		"      --sizes LIST      throughput sizes among",
		"                        64,1K,16K,64K,1M (all)",
		"  -r, --ring BYTES      ring per direction (library's)",
		"  -R, --rounds N        interleaved rounds (5, max 32)",
		"  -t, --transports LIST ivmc ivmc-spin ivmc-sleep",
		"                        ivmc-batched tcp unix tcp-netns",
		"                        raw-shm raw-ring memcpy; raw, all",
		"  -j, --json FILE       also write the results as JSON",
		"      --netns           add tcp-netns (root only)",
		"      --idle[=SECONDS]  idle cost of a blocked pair (10)",
		"      --hog             ivmc and tcp under 2 CPU burners",
		"      --no-latency      skip the latency test",
		"      --no-throughput   skip the throughput test",
		"      --no-pin          do not pin the two processes",
		"      --timeout SECONDS watchdog for the whole run (600)",
		"  -h, --help            this text",
		"  -V, --version         print the version",
	};
	size_t i;

	for (i = 0; i < ARRAY_SIZE(lines); i++)
		fprintf(f, "%s\n", lines[i]);
}

/* Bytes with an optional K/M/G (binary) suffix. */
static int parse_size(const char *s, size_t *out)
{
	unsigned long long v;
	char *end;

	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno || end == s || *s == '-')
		return -EINVAL;
	switch (*end) {
	case 'k':
	case 'K':
		v <<= 10;
		end++;
		break;
	case 'm':
	case 'M':
		v <<= 20;
		end++;
		break;
	case 'g':
	case 'G':
		v <<= 30;
		end++;
		break;
	}
	if (*end == 'i' && end[1] == 'B')
		end += 2;
	else if (*end == 'B')
		end++;
	if (*end)
		return -EINVAL;
	*out = v;
	return 0;
}

static int parse_long(const char *s, long lo, long hi, long *out)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(s, &end, 10);
	if (errno || end == s || *end || v < lo || v > hi)
		return -EINVAL;
	*out = v;
	return 0;
}

static unsigned int match_xport(const char *name)
{
	unsigned int m = 0;
	int i;

	if (!strcmp(name, "all"))
		return XMASK_DEFAULT;
	for (i = 0; i < NX; i++)
		if (!strcmp(name, xports[i].name) ||
		    (xports[i].alias && !strcmp(name, xports[i].alias)))
			m |= 1u << i;
	return m;
}

static int parse_transports(const char *list, unsigned int *mask)
{
	char buf[256], *tok, *save;
	unsigned int m;

	if (snprintf(buf, sizeof(buf), "%s", list) >= (int)sizeof(buf))
		return -EINVAL;
	*mask = 0;
	for (tok = strtok_r(buf, ",", &save); tok;
	     tok = strtok_r(NULL, ",", &save)) {
		m = match_xport(tok);
		if (!m) {
			msg("unknown transport '%s'", tok);
			return -EINVAL;
		}
		*mask |= m;
	}
	return *mask ? 0 : -EINVAL;
}

static int parse_sizes(const char *list, unsigned int *mask)
{
	char buf[128], *tok, *save;
	size_t v;
	int i;

	if (snprintf(buf, sizeof(buf), "%s", list) >= (int)sizeof(buf))
		return -EINVAL;
	*mask = 0;
	for (tok = strtok_r(buf, ",", &save); tok;
	     tok = strtok_r(NULL, ",", &save)) {
		if (parse_size(tok, &v))
			return -EINVAL;
		for (i = 0; i < NSIZES && tput_sizes[i] != v; i++)
			;
		if (i == NSIZES) {
			msg("throughput size %s not one of 64,1K,16K,64K,1M",
			    tok);
			return -EINVAL;
		}
		*mask |= 1u << i;
	}
	return *mask ? 0 : -EINVAL;
}

static int parse_ring(const char *s, size_t *out)
{
	size_t v;

	if (parse_size(s, &v) || v < 4096 || v > (1ul << 30) || (v & (v - 1)))
		return -EINVAL;
	*out = v;
	return 0;
}

/* --idle takes an optional value, as --idle=5 or --idle 5. */
static int parse_idle(struct opts *o, const char *arg, int argc, char **argv)
{
	long v = 10;

	if (!arg && optind < argc && argv[optind][0] >= '0' &&
	    argv[optind][0] <= '9')
		arg = argv[optind++];
	if (arg && parse_long(arg, 1, 3600, &v))
		return -EINVAL;
	o->idle_s = (int)v;
	return 0;
}

enum {
	OPT_NETNS = 256,
	OPT_IDLE,
	OPT_HOG,
	OPT_NOLAT,
	OPT_NOTPUT,
	OPT_NOPIN,
	OPT_TIMEOUT,
	OPT_SIZES
};

static const struct option lopts[] = {
	{ "quick", no_argument, NULL, 'q' },
	{ "size", required_argument, NULL, 's' },
	{ "iterations", required_argument, NULL, 'n' },
	{ "bytes", required_argument, NULL, 'b' },
	{ "ring", required_argument, NULL, 'r' },
	{ "rounds", required_argument, NULL, 'R' },
	{ "transports", required_argument, NULL, 't' },
	{ "json", required_argument, NULL, 'j' },
	{ "netns", no_argument, NULL, OPT_NETNS },
	{ "idle", optional_argument, NULL, OPT_IDLE },
	{ "hog", no_argument, NULL, OPT_HOG },
	{ "no-latency", no_argument, NULL, OPT_NOLAT },
	{ "no-throughput", no_argument, NULL, OPT_NOTPUT },
	{ "no-pin", no_argument, NULL, OPT_NOPIN },
	{ "timeout", required_argument, NULL, OPT_TIMEOUT },
	{ "sizes", required_argument, NULL, OPT_SIZES },
	{ "help", no_argument, NULL, 'h' },
	{ "version", no_argument, NULL, 'V' },
	{ NULL, 0, NULL, 0 }
};

/* Options without a value: which int of struct opts they set, to what. */
static const struct {
	int c;
	size_t off;
	int val;
} flag_opts[] = {
	{ 'q', offsetof(struct opts, quick), 1 },
	{ OPT_NETNS, offsetof(struct opts, netns), 1 },
	{ OPT_HOG, offsetof(struct opts, hog), 1 },
	{ OPT_NOLAT, offsetof(struct opts, no_lat), 1 },
	{ OPT_NOTPUT, offsetof(struct opts, no_tput), 1 },
	{ OPT_NOPIN, offsetof(struct opts, pin), 0 },
};

static int parse_flag(struct opts *o, int c)
{
	size_t i;

	for (i = 0; i < ARRAY_SIZE(flag_opts); i++) {
		if (flag_opts[i].c == c) {
			*(int *)((char *)o + flag_opts[i].off) =
				flag_opts[i].val;
			return 0;
		}
	}
	return -EINVAL;
}

static int parse_int(const char *s, long lo, long hi, int *out)
{
	long v;

	if (parse_long(s, lo, hi, &v))
		return -EINVAL;
	*out = (int)v;
	return 0;
}

/* One option; returns 0, -EINVAL (bad value) or 1 (done: help/version). */
static int parse_one(struct opts *o, int c, int argc, char **argv)
{
	switch (c) {
	case 's':
		return parse_size(optarg, &o->lat_size);
	case 'n':
		return parse_long(optarg, 1, 100000000, &o->lat_n);
	case 'b':
		return parse_size(optarg, &o->tput_bytes);
	case 'r':
		return parse_ring(optarg, &o->ring);
	case 'j':
		o->json = optarg;
		return 0;
	case 'R':
		return parse_int(optarg, 1, MAX_ROUNDS, &o->rounds);
	case 't':
		o->xlist = 1;
		return parse_transports(optarg, &o->xmask);
	case OPT_SIZES:
		return parse_sizes(optarg, &o->size_mask);
	case OPT_IDLE:
		return parse_idle(o, optarg, argc, argv);
	case OPT_TIMEOUT:
		return parse_int(optarg, 10, 86400, &o->timeout_s);
	case 'h':
		usage(stdout);
		return 1;
	case 'V':
		printf("ivmc-bench %s\n", BENCH_VERSION);
		return 1;
	default:
		return parse_flag(o, c);
	}
}

/* Defaults that depend on --quick and on what was given explicitly. */
static int opts_finish(struct opts *o)
{
	if (!o->lat_n)
		o->lat_n = o->quick ? 20000 : 100000;
	if (!o->tput_bytes)
		o->tput_bytes = (size_t)(o->quick ? 32 : 256) << 20;
	if (!o->lat_size)
		o->lat_size = 64;
	if (!o->size_mask)
		o->size_mask = (1u << NSIZES) - 1;
	if (o->lat_size < 8 || o->lat_size > (1u << 20)) {
		msg("--size must be 8..1M");
		return -EINVAL;
	}
	if (!o->xlist)
		o->xmask = XMASK_DEFAULT | (o->netns ? 1u << XI_NETNS : 0);
	if (o->xmask & (1u << XI_NETNS))
		o->netns = 1;
	return 0;
}

/* Returns 0 to run, 1 when done (help), 2 on bad usage. */
static int parse_opts(int argc, char **argv, struct opts *o)
{
	int c, err;

	memset(o, 0, sizeof(*o));
	o->rounds = 5;
	o->pin = 1;
	o->timeout_s = 600;
	while ((c = getopt_long(argc, argv, "qs:n:b:r:R:t:j:hV", lopts,
				NULL)) != -1) {
		err = parse_one(o, c, argc, argv);
		if (err == 1)
			return 1;
		if (err) {
			if (c != '?')
				msg("bad value: %s", argv[optind - 1]);
			usage(stderr);
			return 2;
		}
	}
	if (optind < argc) {
		msg("unexpected argument '%s'", argv[optind]);
		usage(stderr);
		return 2;
	}
	return opts_finish(o) ? 2 : 0;
}

/* ----------------------------------------------------------------- main */

static void print_header(FILE *f, const struct opts *o, const struct run *r)
{
	struct utsname u;
	char date[64], b[24];

	uname(&u);
	date_str(date, sizeof(date));
	fprintf(f, "# ivmc-bench %s — %s\n\n", BENCH_VERSION, date);
	fprintf(f, "- host: %s %s %s, %ld CPUs online\n", u.sysname, u.release,
		u.machine, sysconf(_SC_NPROCESSORS_ONLN));
	if (g.pinned)
		fprintf(f,
			"- pinning: measuring parent on CPU %d, server "
			"child on CPU %d\n",
			g.cpu[0], g.cpu[1]);
	else
		fprintf(f, "- pinning: none (%s)\n",
			o->pin ? "only one CPU available; raw references "
				 "yield instead of spinning" :
				 "--no-pin");
	fprintf(f, "- ring: %zu bytes per direction (ivmc%s, raw-ring)\n",
		r->ring, r->ring_opt ? "" : " default");
	if (!o->no_lat)
		fprintf(f,
			"- latency: %zu-byte messages, %ld round trips per "
			"transport in %d interleaved rounds (+10%% warm-up)\n",
			r->lat_size, r->lat_per_round * r->rounds, r->rounds);
	if (!o->no_tput)
		fprintf(f,
			"- throughput: %s per message size per transport in "
			"%d interleaved rounds (+10%% warm-up); memcpy over "
			"%zu MiB buffers\n",
			size_str(b, sizeof(b), r->tput_bytes), r->rounds,
			memcpy_buf_len() >> 20);
	fprintf(f, "- ratios: median over rounds of the per-round ratio\n");
}

static int process_setup(const struct opts *o)
{
	int err;

	g.main_pid = getpid();
	g.timeout_s = (unsigned int)o->timeout_s;
	signals_setup();
	alarm(g.timeout_s);
	pin_setup(o->pin);
	err = tmpdir_setup();
	if (err)
		msg("mkdtemp: %s", strerror(-err));
	return err;
}

/* tcp-netns needs root and ip(8); without them it is only unavailable. */
static void netns_prepare(const struct opts *o, struct run *r)
{
	struct xres *x = &r->xr[XI_NETNS];
	int err;

	if (!o->netns || !x->on)
		return;
	err = netns_setup();
	if (!err)
		return;
	x->on = 0;
	x->state = XS_UNAVAIL;
	snprintf(x->why, sizeof(x->why), "%s",
		 err == -EPERM	? "needs root" :
		 err == -ENOENT ? "no ip(8)" :
				  "namespace set-up failed");
	msg("tcp-netns: unavailable (%s); continuing without it", x->why);
}

static void run_idle(const struct opts *o, struct report *rp)
{
	static const int xi[] = { XI_IVMC, XI_TCP };
	size_t i;

	for (i = 0; i < ARRAY_SIZE(xi); i++) {
		if (isatty(STDERR_FILENO))
			fprintf(stderr, "\rivmc-bench: idle %s (%d s)   ",
				xports[xi[i]].name, o->idle_s);
		idle_run(o, xi[i], &rp->idle[rp->nidle++]);
	}
	progress_done();
	print_idle(stdout, rp->idle, rp->nidle, o->idle_s);
}

static int any_failed(const struct run *r)
{
	int i;

	for (i = 0; r && i < NX; i++)
		if (r->xr[i].state == XS_FAILED)
			return 1;
	return 0;
}

static void run_main(const struct opts *o, struct report *rp)
{
	struct run *r = rp->base;

	print_header(stdout, o, r);
	fflush(stdout);
	if (!o->no_lat) {
		run_rounds(r, -1);
		print_lat(stdout, r);
		fflush(stdout);
	}
	if (!o->no_tput) {
		run_tput(r);
		print_tput(stdout, r);
	}
	print_failures(stdout, r);
	fflush(stdout);
}

int main(int argc, char **argv)
{
	static struct run base, hog;
	struct report rp = { 0 };
	struct opts o;
	int rc, err;

	rc = parse_opts(argc, argv, &o);
	if (rc)
		return rc == 1 ? 0 : 2;
	if (process_setup(&o))
		return 1;
	rp.o = &o;
	rp.base = &base;
	err = run_init(&base, &o, o.xmask);
	if (!err) {
		netns_prepare(&o, &base);
		run_main(&o, &rp);
		if (o.idle_s)
			run_idle(&o, &rp);
		if (o.hog && !hog_run(&o, &base, &hog)) {
			rp.hog = &hog;
			print_hog(stdout, &hog, &base);
		}
	}
	if (!err && o.json && (err = json_write(o.json, &rp)))
		msg("%s: %s", o.json, strerror(-err));
	cleanup_all();
	rc = err || any_failed(&base) || any_failed(rp.hog) ? 1 : 0;
	run_free(&base);
	run_free(&hog);
	return rc;
}
