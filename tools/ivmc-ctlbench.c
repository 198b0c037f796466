/* SPDX-License-Identifier: MIT */
/*
 * Description: ivmc-ctlbench — what the control plane costs: connection
 * set-up with ivmc_tcp() next to plain TCP (ivmcd running, absent, peer not
 * co-located), the time from connect() to both ends on shared memory, and
 * ivmcd holding N live channels (status time, memory and fds per channel).
 * Runs its own ivmcd on a private socket.
 */
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
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
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "ivmc.h"

#define BENCH_VERSION "0.1"
#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define MIN(a, b) ((a) < (b) ? (a) : (b))
#define MAX(a, b) ((a) > (b) ? (a) : (b))

#define NSEC 1000000000ull
#define MSEC 1000000ull
#define PHASE_S 120 /* any one phase longer than this aborts the run */
#define MAX_ROUNDS 32
#define MAX_PROCS 64
#define MAX_KIDS (MAX_PROCS + 8)
#define SETTLE_MS 3000 /* one pair's attach */
#define START_MS 5000 /* ivmcd must answer within this */
#define STOP_MS 5000 /* ... and stop within this */
#define CTL_RUNS 3 /* ivmcctl status runs of each kind */
#define FDS_PER_CONN 6 /* 2 TCP + per end a doorbell and a kick eventfd */
#define VMAS_PER_CONN 12 /* per end: header, 2 x 2 ring mirrors, endpoint */
#define WHY_LEN 160 /* a child's reason */
#define RWHY_LEN (WHY_LEN + 40) /* a result's: the child's, prefixed */

/* Process-wide state; the signal path reads it, so it stays simple. */
static struct {
	pid_t main_pid;
	volatile pid_t daemon;
	volatile pid_t kids[MAX_KIDS];
	char dir[64];
	char sock[108], absent[108], conf[96], log[96];
	char out_txt[96], out_json[96];
	char bindir[PATH_MAX];
	char ip[32];
	volatile sig_atomic_t ns_up;
	char ns[2][32];
	char veth[2][16];
	int ns_fd[2];
	int ns_orig;
	unsigned int timeout_s;
	int keep;
	long dfds0; /* ivmcd's open fds when it had just started */
	int ncpu; /* CPUs in our affinity mask, up to 2 kept in cpu[] */
	int cpu[2];
	cpu_set_t all; /* our mask at start: ivmcd's outside split rounds */
} g = { .ns_fd = { -1, -1 }, .ns_orig = -1 };

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

static void __attribute__((format(printf, 1, 2))) msg(const char *fmt, ...)
{
	va_list ap;

	fputs("ivmc-ctlbench: ", stderr);
	va_start(ap, fmt);
	/* NOLINTNEXTLINE(clang-analyzer-valist.Uninitialized) */
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

static void say(const char *s)
{
	ssize_t n = write(STDERR_FILENO, s, strlen(s));

	(void)n;
}

/* Shared with the children: they write their samples and reports here. */
static void *mem_shared(size_t len)
{
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE,
		       MAP_SHARED | MAP_ANONYMOUS, -1, 0);

	return p == MAP_FAILED ? NULL : p;
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

/* Median over rounds of a[r] / b[r] (div) or a[r] - b[r]: a per-round
 * comparison cancels the host's slow phases, which hit both cases of one
 * round alike. */
static double round_cmp(const double *a, const double *b, int n, int div)
{
	double t[MAX_ROUNDS];
	int i;

	for (i = 0; i < n; i++) {
		if (isnan(a[i]) || isnan(b[i]) || (div && b[i] <= 0))
			t[i] = NAN;
		else
			t[i] = div ? a[i] / b[i] : a[i] - b[i];
	}
	return median(t, n);
}

struct dist {
	long n;
	double p50, p90, p99, max, mean; /* microseconds */
};

/* Sorts v[0..n) (nanoseconds) and summarises it in microseconds. */
static void dist_of(uint64_t *v, long n, struct dist *d)
{
	double sum = 0;
	long i;

	memset(d, 0, sizeof(*d));
	d->n = n;
	if (n <= 0) {
		d->p50 = d->p90 = d->p99 = d->max = d->mean = NAN;
		return;
	}
	qsort(v, n, sizeof(v[0]), cmp_u64);
	for (i = 0; i < n; i++)
		sum += (double)v[i];
	d->p50 = pct(v, n, 0.50) / 1e3;
	d->p90 = pct(v, n, 0.90) / 1e3;
	d->p99 = pct(v, n, 0.99) / 1e3;
	d->max = v[n - 1] / 1e3;
	d->mean = sum / (double)n / 1e3;
}

static const char *num(char *b, size_t n, const char *fmt, double v)
{
	if (isnan(v))
		snprintf(b, n, "n/a");
	else
		snprintf(b, n, fmt, v);
	return b;
}

/* ------------------------------------------------- children and signals */

static void kid_add(pid_t pid)
{
	for (size_t i = 0; i < MAX_KIDS; i++) {
		if (!g.kids[i]) {
			g.kids[i] = pid;
			return;
		}
	}
}

static void kid_del(pid_t pid)
{
	for (size_t i = 0; i < MAX_KIDS; i++)
		if (g.kids[i] == pid)
			g.kids[i] = 0;
}

static void kids_kill(void)
{
	for (size_t i = 0; i < MAX_KIDS; i++) {
		if (g.kids[i] > 0) {
			kill(g.kids[i], SIGKILL);
			waitpid(g.kids[i], NULL, 0);
			g.kids[i] = 0;
		}
	}
}

/* Waits up to ms for kid, then kills it. Returns its exit status, or -1
 * when it died of a signal or had to be killed. Signal-safe. */
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

/* Runs ip(8) with argv. Signal-safe. Returns 0 or -errno (-EIO: failed). */
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
	if (!g.ns_up)
		return;
	g.ns_up = 0;
	for (int i = 0; i < 2; i++) {
		if (g.ns_fd[i] >= 0)
			close(g.ns_fd[i]);
		g.ns_fd[i] = -1;
		ip_run(1, IP("netns", "del", g.ns[i]));
	}
}

/* SIGTERM, then SIGKILL after STOP_MS. Returns the wait status or -1. */
static int daemon_stop(void)
{
	pid_t pid = g.daemon;
	int st = -1;

	if (pid <= 0)
		return -1;
	g.daemon = 0;
	kill(pid, SIGTERM);
	for (unsigned int i = 0; i < STOP_MS * 10; i++) {
		if (waitpid(pid, &st, WNOHANG) == pid)
			return st;
		sleep_ns(100000);
	}
	kill(pid, SIGKILL);
	waitpid(pid, NULL, 0);
	return -1;
}

static void files_cleanup(void)
{
	const char *const files[] = { g.sock, g.conf, g.log, g.out_txt,
				      g.out_json };
	char lock[128];

	if (!g.dir[0] || g.keep)
		return;
	for (size_t i = 0; i < ARRAY_SIZE(files); i++)
		if (files[i][0])
			unlink(files[i]);
	if (g.sock[0] && (size_t)snprintf(lock, sizeof(lock), "%s.lock",
					  g.sock) < sizeof(lock))
		unlink(lock);
	rmdir(g.dir);
}

static void cleanup_all(void)
{
	kids_kill();
	daemon_stop();
	netns_cleanup();
	files_cleanup();
}

static void on_signal(int sig)
{
	if (getpid() != g.main_pid)
		_exit(128 + sig);
	say(sig == SIGALRM ? "ivmc-ctlbench: watchdog expired, stopping\n" :
			     "ivmc-ctlbench: interrupted, stopping\n");
	g.keep = 1; /* the daemon's log tells what happened */
	cleanup_all();
	_exit(sig == SIGALRM ? 3 : 128 + sig);
}

static const int fatal_sigs[] = { SIGINT, SIGTERM, SIGHUP, SIGALRM };

static void signals_setup(void)
{
	struct sigaction sa;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;
	sigfillset(&sa.sa_mask);
	for (size_t i = 0; i < ARRAY_SIZE(fatal_sigs); i++)
		sigaction(fatal_sigs[i], &sa, NULL);
	signal(SIGPIPE, SIG_IGN);
}

/* Every child: dies with the bench, and by itself at the phase limit. */
static void child_init(void)
{
	for (size_t i = 0; i < ARRAY_SIZE(fatal_sigs); i++)
		signal(fatal_sigs[i], SIG_DFL);
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	if (getppid() != g.main_pid)
		_exit(1);
	alarm(PHASE_S + 30);
}

/* Forks a child that runs fn(arg) and exits with its return value. */
static pid_t spawn(int (*fn)(void *), void *arg)
{
	pid_t pid;

	fflush(NULL);
	pid = fork();
	if (pid < 0)
		return -errno;
	if (pid == 0) {
		child_init();
		_exit(fn(arg) ? 1 : 0);
	}
	kid_add(pid);
	return pid;
}

/* ------------------------------------------------------------- the host */

/* The CPUs we may use; the split case needs two. */
static void cpus_find(void)
{
	if (sched_getaffinity(0, sizeof(g.all), &g.all))
		return;
	for (int c = 0; c < CPU_SETSIZE && g.ncpu < 2; c++)
		if (CPU_ISSET(c, &g.all))
			g.cpu[g.ncpu++] = c;
	for (int c = g.cpu[1] + 1; c < CPU_SETSIZE; c++)
		if (CPU_ISSET(c, &g.all))
			g.ncpu++;
}

/* Pins pid (0: the caller) to our i-th CPU. */
static void pin(pid_t pid, int i)
{
	cpu_set_t set;

	CPU_ZERO(&set);
	CPU_SET(g.cpu[i], &set);
	if (sched_setaffinity(pid, sizeof(set), &set))
		msg("sched_setaffinity(CPU %d): %s", g.cpu[i], strerror(errno));
}

struct machine {
	char kernel[128], arch[72], cpu[128];
	long cpus;
	long mem_mb;
	double load_start[3], load_end[3];
};

static void cpu_model(char *b, size_t n)
{
	char line[256], *v;
	FILE *f = fopen("/proc/cpuinfo", "r");

	snprintf(b, n, "unknown");
	while (f && fgets(line, sizeof(line), f)) {
		if (strncmp(line, "model name", 10) != 0 &&
		    strncmp(line, "Processor", 9) != 0)
			continue;
		v = strchr(line, ':');
		if (!v)
			continue;
		v += strspn(v + 1, " \t") + 1;
		v[strcspn(v, "\n")] = 0;
		snprintf(b, n, "%s", v);
		break;
	}
	if (f)
		fclose(f);
}

/* A "Key: N kB" line of /proc/meminfo; -1 when missing. */
static long meminfo_kb(const char *key)
{
	char line[256];
	size_t k = strlen(key);
	long v = -1;
	FILE *f = fopen("/proc/meminfo", "r");

	while (f && fgets(line, sizeof(line), f))
		if (!strncmp(line, key, k) && line[k] == ':')
			v = strtol(line + k + 1, NULL, 10);
	if (f)
		fclose(f);
	return v;
}

static void loadavg(double l[3])
{
	FILE *f = fopen("/proc/loadavg", "r");

	l[0] = l[1] = l[2] = NAN;
	if (f && fscanf(f, "%lf %lf %lf", &l[0], &l[1], &l[2]) != 3)
		l[0] = l[1] = l[2] = NAN;
	if (f)
		fclose(f);
}

static void machine_get(struct machine *m)
{
	struct utsname u;

	uname(&u);
	snprintf(m->kernel, sizeof(m->kernel), "%s", u.release);
	snprintf(m->arch, sizeof(m->arch), "%s", u.machine);
	cpu_model(m->cpu, sizeof(m->cpu));
	m->cpus = sysconf(_SC_NPROCESSORS_ONLN);
	m->mem_mb = meminfo_kb("MemTotal") / 1024;
	loadavg(m->load_start);
}

/* ------------------------------------------------ /proc of a process */

struct pmem {
	long vmrss, rss, pss, pss_shmem, shared, private; /* kB */
	long fds, vmas;
	int ok;
};

static long count_fds(pid_t pid)
{
	char path[64];
	const struct dirent *e;
	DIR *d;
	long n = 0;

	snprintf(path, sizeof(path), "/proc/%d/fd", (int)pid);
	d = opendir(path);
	if (!d)
		return -1;
	while ((e = readdir(d)))
		if (e->d_name[0] != '.')
			n++;
	closedir(d);
	return n;
}

/* Waits (at most ms) until ivmcd has closed what earlier tests left it:
 * its last client's hang-up and close messages come after that client's
 * exit. Returns 0, or -ETIMEDOUT. */
static int daemon_idle(unsigned int ms)
{
	uint64_t limit = now_ns() + ms * MSEC;

	while (now_ns() < limit) {
		long fds = count_fds(g.daemon);

		if (fds < 0 || fds <= g.dfds0 + 2)
			return 0;
		sleep_ns(MSEC);
	}
	return -ETIMEDOUT;
}

static long count_lines(const char *path)
{
	char buf[65536];
	long n = 0;
	ssize_t k;
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		return -1;
	while ((k = read(fd, buf, sizeof(buf))) > 0)
		for (ssize_t i = 0; i < k; i++)
			n += buf[i] == '\n';
	close(fd);
	return n;
}

/* Time pid has spent on a CPU (schedstat), in ns; 0 when unknown. */
static uint64_t oncpu_ns(pid_t pid)
{
	char path[64];
	unsigned long long v = 0;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/schedstat", (int)pid);
	f = fopen(path, "r");
	if (f && fscanf(f, "%llu", &v) != 1)
		v = 0;
	if (f)
		fclose(f);
	return v;
}

static void rollup_line(struct pmem *m, const char *line)
{
	static const struct {
		const char *key;
		size_t off;
	} keys[] = {
		{ "Rss:", offsetof(struct pmem, rss) },
		{ "Pss:", offsetof(struct pmem, pss) },
		{ "Pss_Shmem:", offsetof(struct pmem, pss_shmem) },
		{ "Shared_Clean:", offsetof(struct pmem, shared) },
		{ "Shared_Dirty:", offsetof(struct pmem, shared) },
		{ "Private_Clean:", offsetof(struct pmem, private) },
		{ "Private_Dirty:", offsetof(struct pmem, private) },
	};

	for (size_t i = 0; i < ARRAY_SIZE(keys); i++) {
		size_t k = strlen(keys[i].key);

		if (!strncmp(line, keys[i].key, k))
			*(long *)((char *)m + keys[i].off) +=
				strtol(line + k, NULL, 10);
	}
}

/* Memory (smaps_rollup, VmRSS), open fds and mappings of pid. */
static int pmem_read(pid_t pid, struct pmem *m)
{
	char path[64], line[256];
	FILE *f;

	memset(m, 0, sizeof(*m));
	snprintf(path, sizeof(path), "/proc/%d/smaps_rollup", (int)pid);
	f = fopen(path, "r");
	if (!f)
		return -errno;
	while (fgets(line, sizeof(line), f))
		rollup_line(m, line);
	fclose(f);
	snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	f = fopen(path, "r");
	while (f && fgets(line, sizeof(line), f))
		if (!strncmp(line, "VmRSS:", 6))
			m->vmrss = strtol(line + 6, NULL, 10);
	if (f)
		fclose(f);
	m->fds = count_fds(pid);
	snprintf(path, sizeof(path), "/proc/%d/maps", (int)pid);
	m->vmas = count_lines(path);
	m->ok = 1;
	return 0;
}

/* --------------------------------------------------------------- ivmcd */

/* Test 2 polls with sched_yield() between calls (default) or spins. */
static int poll_spin;

struct opts {
	long setup_n, attach_n, chans;
	int rounds, procs, window;
	size_t ring;
	size_t grow; /* ring_grow, or SIZE_MAX: ivmcd's default */
	int quick, netns, no_setup, no_attach, no_scale, scale_netns;
	int daemon_batch;
	long linger_us, tick_us; /* passed to ivmcd; -1: its default */
	int timeout_s;
	const char *json, *log_level;
};

static int conf_write(const struct opts *o)
{
	FILE *f = fopen(g.conf, "w");
	int err;

	if (!f)
		return -errno;
	fprintf(f,
		"# written by ivmc-ctlbench: no quotas, room for every "
		"registration\n"
		"ring_size %zuK\nquota channels 0\nquota memory 0\n"
		"pending_max 100000\n",
		o->ring >> 10);
	if (o->grow != SIZE_MAX)
		fprintf(f, "ring_grow %zuK\n", o->grow >> 10);
	err = ferror(f) ? -EIO : 0;
	if (fclose(f) && !err)
		err = -errno;
	return err;
}

static int sock_answers(const char *path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0), r;

	if (fd < 0)
		return 0;
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
	r = connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0;
	close(fd);
	return r;
}

/* ivmcd (next to this binary) in the foreground on our private socket. */
static int daemon_start(const struct opts *o)
{
	char bin[PATH_MAX + 8];
	pid_t pid;

	snprintf(bin, sizeof(bin), "%s/ivmcd", g.bindir);
	if (access(bin, X_OK)) {
		msg("%s: %s (build it with make)", bin, strerror(errno));
		return -ENOENT;
	}
	pid = fork();
	if (pid < 0)
		return -errno;
	if (pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGTERM);
		char lg[32], tk[32];
		const char *argv[16] = { "ivmcd", "-f", "-s", g.sock, "-c",
					 g.conf, "-l", o->log_level, "-L",
					 g.log };
		int k = 10;

		snprintf(lg, sizeof(lg), "--linger-us=%ld", o->linger_us);
		snprintf(tk, sizeof(tk), "--tick-us=%ld", o->tick_us);
		if (o->linger_us >= 0)
			argv[k++] = lg;
		if (o->tick_us >= 0)
			argv[k++] = tk;
		execv(bin, (char *const *)argv);
		_exit(127);
	}
	g.daemon = pid;
	if (o->daemon_batch &&
	    sched_setscheduler(pid, SCHED_BATCH, &(struct sched_param){ 0 }))
		msg("SCHED_BATCH for ivmcd: %s", strerror(errno));
	for (int i = 0; i < START_MS / 5; i++) {
		if (sock_answers(g.sock)) {
			g.dfds0 = count_fds(pid);
			return 0;
		}
		if (waitpid(pid, NULL, WNOHANG) == pid) {
			g.daemon = 0;
			msg("ivmcd exited at start (see %s)", g.log);
			return -ECHILD;
		}
		sleep_ns(5 * MSEC);
	}
	msg("ivmcd did not answer within %d ms", START_MS);
	return -ETIMEDOUT;
}

/* ------------------------------------------------------------ netns */

static int ip_find(void)
{
	static const char *const paths[] = { "/usr/sbin/ip", "/sbin/ip",
					     "/usr/bin/ip", "/bin/ip" };

	for (size_t i = 0; i < ARRAY_SIZE(paths); i++) {
		if (!access(paths[i], X_OK)) {
			snprintf(g.ip, sizeof(g.ip), "%s", paths[i]);
			return 0;
		}
	}
	return -ENOENT;
}

#define NS_ADDR_A "10.199.2.1"
#define NS_ADDR_B "10.199.2.2"

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

	for (int i = 0; i < 2; i++) {
		snprintf(path, sizeof(path), "/run/netns/%s", g.ns[i]);
		g.ns_fd[i] = open(path, O_RDONLY | O_CLOEXEC);
		if (g.ns_fd[i] < 0)
			return -errno;
	}
	g.ns_orig = open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC);
	return g.ns_orig < 0 ? -errno : 0;
}

/*
 * Two namespaces of our own joined by a veth pair created inside them (it
 * never exists in the caller's namespace), 10.199.2.1/30 in A and
 * 10.199.2.2/30 in B and nowhere else. No ivmc client ever lives in B, so
 * ivmcd's table does not list B's address.
 */
static int netns_setup(void)
{
	int pid = (int)getpid(), err;

	if (geteuid())
		return -EPERM;
	if (ip_find())
		return -ENOENT;
	snprintf(g.ns[0], sizeof(g.ns[0]), "ivmccb-%d-a", pid);
	snprintf(g.ns[1], sizeof(g.ns[1]), "ivmccb-%d-b", pid);
	snprintf(g.veth[0], sizeof(g.veth[0]), "icb%da", pid);
	snprintf(g.veth[1], sizeof(g.veth[1]), "icb%db", pid);
	g.ns_up = 1;
	err = ip_run(0, IP("netns", "add", g.ns[0]));
	if (!err)
		err = ip_run(0, IP("netns", "add", g.ns[1]));
	if (!err)
		err = ip_run(0, IP("link", "add", g.veth[0], "netns", g.ns[0],
				   "type", "veth", "peer", "name", g.veth[1],
				   "netns", g.ns[1]));
	if (!err)
		err = netns_side_up(0, NS_ADDR_A "/30");
	if (!err)
		err = netns_side_up(1, NS_ADDR_B "/30");
	if (!err)
		err = netns_open();
	if (err)
		netns_cleanup();
	return err;
}

/* ------------------------------------------------------------- sockets */

struct lis {
	int fd;
	struct sockaddr_in sa;
};

/* A TCP socket made in namespace nsfd (-1: ours). */
static int tcp_socket_in(int nsfd)
{
	int s, err;

	if (nsfd < 0) {
		s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
		return s < 0 ? -errno : s;
	}
	if (setns(nsfd, CLONE_NEWNET))
		return -errno;
	s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	err = s < 0 ? -errno : s;
	if (setns(g.ns_orig, CLONE_NEWNET)) {
		if (s >= 0)
			close(s);
		return -errno;
	}
	return err;
}

static int lis_open(struct lis *l, int nsfd, const char *ip)
{
	socklen_t len = sizeof(l->sa);
	int fd = tcp_socket_in(nsfd);

	if (fd < 0)
		return fd;
	memset(&l->sa, 0, sizeof(l->sa));
	l->sa.sin_family = AF_INET;
	inet_pton(AF_INET, ip, &l->sa.sin_addr);
	if (bind(fd, (struct sockaddr *)&l->sa, sizeof(l->sa)) ||
	    listen(fd, 4096) ||
	    getsockname(fd, (struct sockaddr *)&l->sa, &len)) {
		int err = -errno;

		close(fd);
		return err;
	}
	l->fd = fd;
	return 0;
}

/* Close with a reset: no TIME_WAIT left over to fill the port space. */
static void close_rst(int fd)
{
	struct linger lg = { .l_onoff = 1, .l_linger = 0 };

	if (fd < 0)
		return;
	setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
	close(fd);
}

enum { ST_ATTACHED, ST_PENDING, ST_REFUSED, ST_NOTLOCAL, ST_OTHER, NST };
static const char *const st_names[NST] = { "attached", "pending", "refused",
					   "not_local", "other" };

static int st_index(int s)
{
	switch (s) {
	case 1:
		return ST_ATTACHED;
	case 0:
		return ST_PENDING;
	case -ECONNREFUSED:
		return ST_REFUSED;
	case -EADDRNOTAVAIL:
		return ST_NOTLOCAL;
	default:
		return ST_OTHER;
	}
}

/* Polls h until it is no longer pending, at most until limit (ns). */
static int settle(struct ivmc_chan *h, uint64_t limit)
{
	int s;

	while ((s = ivmc_tcp_state(h)) == 0 && now_ns() < limit)
		;
	return s;
}

static void kid_why(char *why, const char *what, int err)
{
	snprintf(why, WHY_LEN, "%s: %s", what, strerror(-err));
}

/* -------------------------------------------- 1. connection set-up */

enum { SC_TCP, SC_IVMC, SC_SPLIT, SC_NODAEMON, SC_NSTCP, SC_NOTLOCAL, NSC };
enum { XS_OFF, XS_OK, XS_UNAVAIL, XS_FAILED };

static const struct scase {
	const char *name, *what;
	int ends; /* ends wrapped with ivmc_tcp(): 0, 1 (accepting), 2 */
	int netns; /* connector in namespace B, listener in A (veth) */
	int daemon; /* IVMC_SOCKET names the running ivmcd */
	int base; /* compared with */
	int split; /* caller pinned to one CPU, ivmcd to another */
} scases[NSC] = {
	[SC_TCP] = { "tcp", "connect()+accept(), 127.0.0.1", 0, 0, 1, SC_TCP },
	[SC_IVMC] = { "ivmc", "+ ivmc_tcp() both ends, ivmcd running", 2, 0, 1,
		      SC_TCP },
	[SC_SPLIT] = { "ivmc-split",
		       "the same, caller and ivmcd pinned to 2 CPUs", 2, 0, 1,
		       SC_TCP, 1 },
	[SC_NODAEMON] = { "ivmc-nodaemon", "+ ivmc_tcp() both ends, no ivmcd",
			  2, 0, 0, SC_TCP },
	[SC_NSTCP] = { "tcp-veth", "connect()+accept(), netns B -> A (veth)", 0,
		       1, 1, SC_NSTCP },
	[SC_NOTLOCAL] = { "ivmc-notlocal",
			  "+ ivmc_tcp() accepting end, peer not co-located", 1,
			  1, 1, SC_NSTCP },
};

struct sc_out { /* one child's report, in shared memory */
	int err;
	char why[WHY_LEN];
	long st[NST];
};

struct sc_res {
	int state;
	char why[RWHY_LEN];
	uint64_t *ns; /* rounds x per_round samples, shared */
	struct sc_out *out; /* one per round, shared */
	double p50r[MAX_ROUNDS];
	double dcpu[MAX_ROUNDS]; /* ivmcd on-CPU us per connection */
	long st[NST];
	struct dist d;
	double vs_base, extra_us, dcpu_us;
};

struct setup_run {
	long per_round, warm;
	int rounds;
	struct sc_res r[NSC];
	struct lis lis[2]; /* [0] loopback, [1] in namespace A */
};

struct sc_job {
	struct setup_run *s;
	int c, round;
};

/* One connection of case c; *ns: its set-up time. Untimed after: wait for
 * the attach (ivmc), count the handles' states, close everything. */
static int sc_one(int c, const struct lis *l, uint64_t *ns, long st[NST])
{
	const struct scase *sc = &scases[c];
	struct ivmc_chan *hc = NULL, *ha = NULL;
	int cfd, afd = -1, err = 0;
	uint64_t t0, limit;

	cfd = tcp_socket_in(sc->netns ? g.ns_fd[1] : -1);
	if (cfd < 0)
		return cfd;
	t0 = now_ns();
	if (connect(cfd, (const struct sockaddr *)&l->sa, sizeof(l->sa)))
		err = -errno;
	if (!err && (afd = accept4(l->fd, NULL, NULL, SOCK_CLOEXEC)) < 0)
		err = -errno;
	if (!err && sc->ends == 2)
		err = ivmc_tcp(cfd, NULL, &hc);
	if (!err && sc->ends >= 1)
		err = ivmc_tcp(afd, NULL, &ha);
	*ns = now_ns() - t0;
	limit = now_ns() + SETTLE_MS * MSEC;
	if (hc)
		st[st_index(settle(hc, limit))]++;
	if (ha)
		st[st_index(settle(ha, limit))]++;
	if (hc)
		ivmc_close(hc);
	if (ha)
		ivmc_close(ha);
	close_rst(cfd);
	close_rst(afd);
	return err;
}

static int sc_child(void *arg)
{
	const struct sc_job *j = arg;
	struct setup_run *s = j->s;
	const struct scase *sc = &scases[j->c];
	struct sc_out *o = &s->r[j->c].out[j->round];
	uint64_t *v = s->r[j->c].ns + (size_t)j->round * s->per_round, t;
	const struct lis *l = &s->lis[sc->netns];
	long st[NST] = { 0 };
	int err = 0;

	if (!sc->daemon)
		setenv("IVMC_SOCKET", g.absent, 1);
	if (sc->split)
		pin(0, 0);
	for (long i = 0; i < s->warm && !err; i++)
		err = sc_one(j->c, l, &t, st);
	memset(st, 0, sizeof(st));
	for (long i = 0; i < s->per_round && !err; i++)
		err = sc_one(j->c, l, &v[i], st);
	memcpy(o->st, st, sizeof(st));
	if (err)
		kid_why(o->why, "connect/accept/ivmc_tcp", err);
	o->err = err;
	return err;
}

static void sc_fail(struct sc_res *r, int c, int round, const char *why)
{
	r->state = XS_FAILED;
	snprintf(r->why, sizeof(r->why), "round %d: %s", round + 1, why);
	msg("%s: %s", scases[c].name, r->why);
}

static void sc_round(struct setup_run *s, int c, int round)
{
	struct sc_res *r = &s->r[c];
	struct sc_job j = { s, c, round };
	uint64_t d0;
	pid_t pid;
	int rc;

	if (scases[c].split)
		pin(g.daemon, 1);
	d0 = oncpu_ns(g.daemon);
	pid = spawn(sc_child, &j);
	rc = pid < 0 ? -1 : reap(pid, PHASE_S * 1000);
	(void)daemon_idle(5000);
	r->dcpu[round] = d0 ? (oncpu_ns(g.daemon) - d0) / 1e3 /
					 (double)(s->warm + s->per_round) :
			      NAN;
	if (scases[c].split)
		sched_setaffinity(g.daemon, sizeof(g.all), &g.all);
	if (pid < 0)
		sc_fail(r, c, round, "fork failed");
	else if (rc)
		sc_fail(r, c, round,
			r->out[round].err ? r->out[round].why :
					    "child died or took > 120 s");
}

static void sc_summarise(struct setup_run *s)
{
	uint64_t *tmp = malloc(sizeof(uint64_t) * s->per_round);

	for (int c = 0; c < NSC; c++) {
		struct sc_res *r = &s->r[c];

		if (r->state != XS_OK)
			continue;
		for (int k = 0; k < s->rounds; k++) {
			memcpy(tmp, r->ns + (size_t)k * s->per_round,
			       sizeof(uint64_t) * s->per_round);
			qsort(tmp, s->per_round, sizeof(tmp[0]), cmp_u64);
			r->p50r[k] = pct(tmp, s->per_round, 0.5) / 1e3;
			for (int i = 0; i < NST; i++)
				r->st[i] += r->out[k].st[i];
		}
		dist_of(r->ns, s->per_round * s->rounds, &r->d);
		r->dcpu_us = median(r->dcpu, s->rounds);
	}
	for (int c = 0; c < NSC; c++) {
		struct sc_res *r = &s->r[c], *b = &s->r[scases[c].base];

		r->vs_base = r->extra_us = NAN;
		if (r->state != XS_OK || b->state != XS_OK || b == r)
			continue;
		r->vs_base = round_cmp(r->p50r, b->p50r, s->rounds, 1);
		r->extra_us = round_cmp(r->p50r, b->p50r, s->rounds, 0);
	}
	free(tmp);
}

static int setup_init(struct setup_run *s, const struct opts *o)
{
	int err;

	s->rounds = o->rounds;
	s->per_round = MAX(1, o->setup_n / o->rounds);
	s->warm = MAX(20, s->per_round / 10);
	for (int c = 0; c < NSC; c++) {
		struct sc_res *r = &s->r[c];

		r->state = XS_OK;
		r->ns = mem_shared(sizeof(uint64_t) * s->per_round * s->rounds);
		r->out = mem_shared(sizeof(*r->out) * s->rounds);
		if (!r->ns || !r->out)
			return -ENOMEM;
	}
	if (g.ncpu < 2) {
		s->r[SC_SPLIT].state = XS_UNAVAIL;
		snprintf(s->r[SC_SPLIT].why, RWHY_LEN, "one CPU");
	}
	err = lis_open(&s->lis[0], -1, "127.0.0.1");
	if (err)
		return err;
	if (!g.ns_up) {
		const char *why = !o->netns ? "--no-netns" :
				  geteuid() ? "needs root" :
					      "namespace set-up failed";

		for (int c = 0; c < NSC; c++) {
			if (!scases[c].netns)
				continue;
			s->r[c].state = XS_UNAVAIL;
			snprintf(s->r[c].why, RWHY_LEN, "%s", why);
		}
		return 0;
	}
	return lis_open(&s->lis[1], g.ns_fd[0], NS_ADDR_A);
}

static void setup_free(struct setup_run *s)
{
	for (int c = 0; c < NSC; c++) {
		if (s->r[c].ns)
			munmap(s->r[c].ns,
			       sizeof(uint64_t) * s->per_round * s->rounds);
		if (s->r[c].out)
			munmap(s->r[c].out, sizeof(*s->r[c].out) * s->rounds);
	}
	for (int i = 0; i < 2; i++)
		if (s->lis[i].fd > 0)
			close(s->lis[i].fd);
}

static void progress(const char *what, int round, int rounds)
{
	if (isatty(STDERR_FILENO))
		fprintf(stderr, "\rivmc-ctlbench: %s, round %d/%d   ", what,
			round + 1, rounds);
}

static void progress_done(void)
{
	if (isatty(STDERR_FILENO))
		fprintf(stderr, "\r%60s\r", "");
}

static int setup_run(struct setup_run *s, const struct opts *o)
{
	int err = setup_init(s, o);

	if (err) {
		msg("set-up test: %s", strerror(-err));
		return err;
	}
	for (int k = 0; k < s->rounds; k++) {
		progress("connection set-up", k, s->rounds);
		for (int i = 0; i < NSC; i++) {
			int c = (i + k) % NSC;

			if (s->r[c].state == XS_OK)
				sc_round(s, c, k);
		}
	}
	progress_done();
	sc_summarise(s);
	return 0;
}

/* ------------------------------------- 2. from connect() to attached */

enum { A_CONNECT, A_REGISTER, A_PAIR, A_OPEN, A_TOTAL, A_INSTALL, NAS };
static const char *const as_names[NAS] = {
	[A_CONNECT] = "connect+accept",
	[A_REGISTER] = "ivmc_tcp() x2",
	[A_PAIR] = "ivmcd pairing",
	[A_OPEN] = "channel open",
	[A_TOTAL] = "total",
	[A_INSTALL] = "install call",
};
static const char *const as_keys[NAS] = {
	"connect_accept", "register", "pairing", "open", "total", "install",
};

struct att_out { /* in shared memory */
	int err;
	char why[WHY_LEN];
	long n, failed;
	long st[NST];
	uint64_t *v[NAS]; /* n samples each; A_INSTALL has 2n */
};

/* What the accepting thread hands over for one connection. */
struct att_slot {
	_Atomic long ready; /* connection i done: i + 1 */
	int afd, state, err;
	struct ivmc_chan *ha;
	uint64_t t_acc, t_reg, t_fin, t_done;
};

struct att_ctx {
	const struct lis *l;
	long total;
	struct att_slot slot;
};

/* Polls until attached (or failed, or limit); *fin: when the last call,
 * the one that found the channel, began. */
static int poll_attach(struct ivmc_chan *h, uint64_t limit, uint64_t *fin)
{
	uint64_t t;
	int s;

	for (;;) {
		t = now_ns();
		s = ivmc_tcp_state(h);
		if (s || t >= limit)
			break;
		if (!poll_spin)
			sched_yield();
	}
	*fin = t;
	return s;
}

static void *att_acceptor(void *arg)
{
	struct att_ctx *x = arg;
	struct att_slot *sl = &x->slot;

	for (long i = 0; i < x->total; i++) {
		sl->ha = NULL;
		sl->err = 0;
		sl->afd = accept4(x->l->fd, NULL, NULL, SOCK_CLOEXEC);
		sl->t_acc = now_ns();
		if (sl->afd < 0)
			sl->err = -errno;
		if (!sl->err)
			sl->err = ivmc_tcp(sl->afd, NULL, &sl->ha);
		sl->t_reg = now_ns();
		if (!sl->err)
			sl->state = poll_attach(sl->ha,
						sl->t_reg + SETTLE_MS * MSEC,
						&sl->t_fin);
		sl->t_done = now_ns();
		atomic_store_explicit(&sl->ready, i + 1, memory_order_release);
		if (sl->err)
			return NULL;
	}
	return NULL;
}

struct att_times {
	uint64_t t0, t_conn, t_reg, t_fin, t_done;
	int state;
};

static void att_record(struct att_out *o, const struct att_times *c,
		       const struct att_slot *a)
{
	uint64_t conn = MAX(c->t_conn, a->t_acc), reg = MAX(c->t_reg, a->t_reg);
	uint64_t fin = MIN(c->t_fin, a->t_fin),
		 done = MAX(c->t_done, a->t_done);
	long n = o->n++;

	o->v[A_CONNECT][n] = conn - c->t0;
	o->v[A_REGISTER][n] = reg - conn;
	o->v[A_PAIR][n] = fin > reg ? fin - reg : 0;
	o->v[A_OPEN][n] = done - fin;
	o->v[A_TOTAL][n] = done - c->t0;
	o->v[A_INSTALL][2 * n] = c->t_done - c->t_fin;
	o->v[A_INSTALL][2 * n + 1] = a->t_done - a->t_fin;
}

/* The connecting side of connection i; the acceptor runs beside it. */
static int att_one(struct att_ctx *x, struct att_out *o, long i, int keep)
{
	struct att_slot *sl = &x->slot;
	struct ivmc_chan *hc = NULL;
	struct att_times c = { 0 };
	int cfd = tcp_socket_in(-1), err = 0;
	uint64_t limit;

	if (cfd < 0)
		return cfd;
	c.t0 = now_ns();
	if (connect(cfd, (const struct sockaddr *)&x->l->sa, sizeof(x->l->sa)))
		err = -errno;
	c.t_conn = now_ns();
	if (!err)
		err = ivmc_tcp(cfd, NULL, &hc);
	c.t_reg = now_ns();
	if (!err)
		c.state = poll_attach(hc, c.t_reg + SETTLE_MS * MSEC, &c.t_fin);
	c.t_done = now_ns();
	limit = now_ns() + 2 * SETTLE_MS * MSEC;
	while (!err &&
	       atomic_load_explicit(&sl->ready, memory_order_acquire) <= i) {
		if (now_ns() > limit)
			err = -ETIMEDOUT;
		sched_yield();
	}
	if (!err)
		err = sl->err;
	if (!err && keep) {
		o->st[st_index(c.state)]++;
		o->st[st_index(sl->state)]++;
		if (c.state == 1 && sl->state == 1)
			att_record(o, &c, sl);
		else
			o->failed++;
	}
	if (hc)
		ivmc_close(hc);
	if (!err && sl->ha)
		ivmc_close(sl->ha);
	close_rst(cfd);
	if (!err)
		close_rst(sl->afd);
	return err;
}

struct att_job {
	struct att_out *o;
	long n, warm;
};

static int att_child(void *arg)
{
	struct att_job *j = arg;
	struct att_ctx x = { 0 };
	struct lis l;
	pthread_t th;
	int err = lis_open(&l, -1, "127.0.0.1");

	if (err) {
		kid_why(j->o->why, "listen", err);
		return j->o->err = err;
	}
	x.l = &l;
	x.total = j->n + j->warm;
	if (pthread_create(&th, NULL, att_acceptor, &x)) {
		kid_why(j->o->why, "pthread_create", -EAGAIN);
		return j->o->err = -EAGAIN;
	}
	for (long i = 0; i < x.total && !err; i++)
		err = att_one(&x, j->o, i, i >= j->warm);
	if (err) {
		kid_why(j->o->why, "connection", err);
		j->o->err = err;
		_exit(1); /* the acceptor may sit in accept() */
	}
	pthread_join(th, NULL);
	return 0;
}

struct att_res {
	int state;
	char why[RWHY_LEN];
	long n, failed;
	long st[NST];
	struct dist d[NAS];
};

static int att_run(struct att_res *r, const struct opts *o)
{
	struct att_job j = { .n = o->attach_n,
			     .warm = MAX(10, o->attach_n / 20) };
	size_t sz = sizeof(*j.o) + sizeof(uint64_t) * (NAS + 1) * j.n;
	pid_t pid;
	int rc;

	j.o = mem_shared(sz);
	if (!j.o)
		return -ENOMEM;
	for (int k = 0; k < NAS; k++)
		j.o->v[k] = (uint64_t *)(j.o + 1) + (size_t)k * j.n;
	if (isatty(STDERR_FILENO))
		fprintf(stderr,
			"ivmc-ctlbench: connect to attached, %ld "
			"connections\r",
			j.n);
	pid = spawn(att_child, &j);
	rc = pid < 0 ? -1 : reap(pid, PHASE_S * 1000);
	progress_done();
	r->state = XS_OK;
	if (rc) {
		r->state = XS_FAILED;
		snprintf(r->why, sizeof(r->why), "%s",
			 j.o->err ? j.o->why : "child died or took > 120 s");
		msg("attach: %s", r->why);
	}
	r->n = j.o->n;
	r->failed = j.o->failed;
	memcpy(r->st, j.o->st, sizeof(r->st));
	for (int k = 0; k < NAS; k++)
		dist_of(j.o->v[k], k == A_INSTALL ? 2 * r->n : r->n, &r->d[k]);
	munmap(j.o, sz);
	return 0;
}

/* ------------------------------------------------------- 3. scale */

struct sk_out { /* one scale worker's report, in shared memory */
	int err;
	char why[WHY_LEN];
	long made;
	long st[NST]; /* per end */
	uint64_t made_ns, settled_ns, close_ns;
	struct pmem m0, m1; /* its own, before and after */
};

struct sk_job {
	struct sk_out *o;
	long n;
	int window, go_fd, ready_fd, nsfd;
	int nclose, close[2 * MAX_PROCS + 2]; /* the parent's pipe ends */
};

struct sk_conn {
	int fd[2];
	struct ivmc_chan *h[2];
};

/* Keeps at most window ends waiting for ivmcd: polls the oldest (ivmcd
 * pairs in order of arrival). */
static void sk_pace(struct sk_conn *c, long made, long *cur, int window,
		    uint64_t limit)
{
	while (2 * made - *cur > 2L * window && now_ns() < limit) {
		if (ivmc_tcp_state(c[*cur / 2].h[*cur % 2]))
			(*cur)++;
	}
}

static int sk_make(struct sk_job *j, struct sk_conn *c, const struct lis *l,
		   uint64_t limit)
{
	long cur = 0;
	int err = 0;

	for (long i = 0; i < j->n && !err; i++) {
		c[i].fd[1] = -1;
		c[i].fd[0] = tcp_socket_in(-1);
		if (c[i].fd[0] < 0)
			return c[i].fd[0];
		j->o->made = i + 1;
		if (connect(c[i].fd[0], (const struct sockaddr *)&l->sa,
			    sizeof(l->sa)))
			return -errno;
		c[i].fd[1] = accept4(l->fd, NULL, NULL, SOCK_CLOEXEC);
		if (c[i].fd[1] < 0)
			return -errno;
		err = ivmc_tcp(c[i].fd[0], NULL, &c[i].h[0]);
		if (!err)
			err = ivmc_tcp(c[i].fd[1], NULL, &c[i].h[1]);
		if (j->window)
			sk_pace(c, i + 1, &cur, j->window, limit);
		if (now_ns() > limit)
			return -ETIMEDOUT;
	}
	return err;
}

static void sk_settle(struct sk_job *j, struct sk_conn *c, uint64_t limit)
{
	for (long i = 0; i < j->n; i++)
		for (int e = 0; e < 2; e++)
			j->o->st[st_index(settle(c[i].h[e], limit))]++;
}

static void sk_close(struct sk_conn *c, long n)
{
	for (long i = 0; i < n; i++) {
		for (int e = 0; e < 2; e++) {
			if (c[i].h[e])
				ivmc_close(c[i].h[e]);
			close_rst(c[i].fd[e]);
		}
	}
}

static int sk_worker(void *arg)
{
	struct sk_job *j = arg;
	struct sk_out *o = j->o;
	struct sk_conn *c = calloc(j->n, sizeof(*c));
	uint64_t t0 = now_ns(), limit = t0 + PHASE_S * NSEC;
	struct lis l;
	char b;
	int err = c ? 0 : -ENOMEM;

	/* --scale-netns: the whole process lives in namespace A. */
	if (!err && j->nsfd >= 0 && setns(j->nsfd, CLONE_NEWNET))
		err = -errno;
	if (!err)
		err = lis_open(&l, -1, "127.0.0.1");

	/* Hold no write end of any go pipe: EOF on ours is the signal. */
	for (int i = 0; i < j->nclose; i++)
		close(j->close[i]);
	pmem_read(getpid(), &o->m0);
	if (!err)
		err = sk_make(j, c, &l, limit);
	o->made_ns = now_ns() - t0;
	if (!err)
		sk_settle(j, c, limit);
	o->settled_ns = now_ns() - t0;
	pmem_read(getpid(), &o->m1);
	if (err)
		kid_why(o->why,
			err == -ETIMEDOUT ? "connections (120 s)" :
					    "connect/accept/ivmc_tcp",
			err);
	o->err = err;
	b = 1;
	(void)!write(j->ready_fd, &b, 1);
	close(j->ready_fd);
	/* Hold everything until the parent has measured. */
	while (read(j->go_fd, &b, 1) < 0 && errno == EINTR)
		;
	t0 = now_ns();
	if (c)
		sk_close(c, o->made);
	o->close_ns = now_ns() - t0;
	return err;
}

struct ctl_run {
	uint64_t ns, dcpu_ns; /* wall time; ivmcd's on-CPU time meanwhile */
	long bytes, chans;
	int rc;
};

struct scale_res {
	int state;
	char why[RWHY_LEN];
	long n, per_proc;
	int procs, window, netns;
	long nofile_soft, nofile_hard, max_map;
	struct sk_out *o;
	uint64_t ready_ns, exit_ns, drain_ns;
	struct pmem d0, d1, d2;
	long shmem0, shmem1;
	struct ctl_run ctl[2][CTL_RUNS];
	long st[NST];
	long live; /* channels with both ends attached */
	uint64_t dcpu_ns; /* ivmcd's on-CPU time while they were made */
	uint64_t made_max_ns, settled_max_ns, close_max_ns;
};

/* Channels in ivmcctl's answer: "channels N" in the text header line,
 * "channels":N in the JSON daemon object (the first one). */
static long ctl_count(const char *path, int json)
{
	const char *key = json ? "\"channels\":" : ", channels ";
	char buf[4096], *p;
	ssize_t n;
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		return -1;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return -1;
	buf[n] = 0;
	p = strstr(buf, key);
	return p ? strtol(p + strlen(key), NULL, 10) : -1;
}

static void ctl_exec(int json, const char *out)
{
	char bin[PATH_MAX + 16];
	int fd = open(out, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);

	if (fd < 0 || dup2(fd, 1) < 0)
		_exit(126);
	snprintf(bin, sizeof(bin), "%s/ivmcctl", g.bindir);
	if (json)
		execl(bin, "ivmcctl", "-s", g.sock, "-t", "120000", "--json",
		      "status", (char *)NULL);
	else
		execl(bin, "ivmcctl", "-s", g.sock, "-t", "120000", "status",
		      (char *)NULL);
	_exit(127);
}

/* One `ivmcctl [--json] status`, timed from fork to exit. */
static void ctl_time(int json, struct ctl_run *r)
{
	const char *out = json ? g.out_json : g.out_txt;
	struct stat st;
	uint64_t d0 = oncpu_ns(g.daemon), t0 = now_ns();
	pid_t pid = fork();

	if (pid == 0)
		ctl_exec(json, out);
	if (pid < 0) {
		r->rc = -1;
		return;
	}
	kid_add(pid);
	r->rc = reap(pid, PHASE_S * 1000);
	r->ns = now_ns() - t0;
	r->dcpu_ns = d0 ? oncpu_ns(g.daemon) - d0 : 0;
	r->bytes = stat(out, &st) ? -1 : (long)st.st_size;
	r->chans = ctl_count(out, json);
}

static int nofile_raise(long need)
{
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl))
		return -errno;
	if (rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		(void)setrlimit(RLIMIT_NOFILE, &rl);
	}
	if ((long)rl.rlim_max < need) { /* root may raise the hard limit */
		struct rlimit up = { (rlim_t)need, (rlim_t)need };

		(void)setrlimit(RLIMIT_NOFILE, &up);
	}
	return 0;
}

static int scale_check(struct scale_res *s)
{
	long need = s->per_proc * FDS_PER_CONN + 64;
	struct rlimit rl;
	FILE *f = fopen("/proc/sys/vm/max_map_count", "r");

	s->max_map = 65530;
	if (f && fscanf(f, "%ld", &s->max_map) != 1)
		s->max_map = 65530;
	if (f)
		fclose(f);
	nofile_raise(MAX(need, s->n + 256));
	getrlimit(RLIMIT_NOFILE, &rl);
	s->nofile_soft = (long)rl.rlim_cur;
	s->nofile_hard = (long)rl.rlim_max;
	if (need > s->nofile_soft) {
		snprintf(s->why, RWHY_LEN,
			 "%ld connections per process need %ld fds, "
			 "RLIMIT_NOFILE is %ld: use more --procs",
			 s->per_proc, need, s->nofile_soft);
		return -EMFILE;
	}
	if (s->per_proc * VMAS_PER_CONN + 1000 > s->max_map) {
		snprintf(s->why, RWHY_LEN,
			 "%ld connections per process need ~%ld mappings, "
			 "vm.max_map_count is %ld: use more --procs",
			 s->per_proc, s->per_proc * VMAS_PER_CONN, s->max_map);
		return -ENOMEM;
	}
	return 0;
}

/* Waits for one ready byte from each worker, at most PHASE_S (+ slack). */
static int sk_wait_ready(const int *rfd, int n)
{
	uint64_t limit = now_ns() + (PHASE_S + 10) * NSEC;
	struct pollfd p[MAX_PROCS];
	int left = n;

	for (int i = 0; i < n; i++)
		p[i] = (struct pollfd){ rfd[i], POLLIN, 0 };
	while (left > 0) {
		int64_t ms = (int64_t)(limit - MIN(now_ns(), limit)) / 1000000;
		int r = poll(p, n, (int)ms);

		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return -ETIMEDOUT;
		for (int i = 0; i < n; i++) {
			if (p[i].revents) {
				p[i].fd = -1;
				left--;
			}
		}
	}
	return 0;
}

/* After the workers exit: until ivmcd's fd count is back to where it was. */
static uint64_t sk_drain(const struct scale_res *s)
{
	uint64_t t0 = now_ns(), limit = t0 + PHASE_S * NSEC;

	while (now_ns() < limit) {
		long fds = count_fds(g.daemon);

		if (fds >= 0 && fds <= s->d0.fds + 2)
			return now_ns() - t0;
		sleep_ns(MSEC);
	}
	return 0;
}

static int sk_spawn(struct scale_res *s, const struct opts *o, pid_t *pid,
		    int *rfd, int *gofd)
{
	for (int i = 0; i < s->procs; i++) {
		struct sk_job j = { .o = &s->o[i], .window = o->window };

		j.nsfd = o->scale_netns ? g.ns_fd[0] : -1;
		int rp[2], gp[2];

		j.n = s->n / s->procs + (i < s->n % s->procs ? 1 : 0);
		if (pipe2(rp, O_CLOEXEC) || pipe2(gp, O_CLOEXEC))
			return -errno;
		j.ready_fd = rp[1];
		j.go_fd = gp[0];
		for (int k = 0; k < i; k++) {
			j.close[j.nclose++] = rfd[k];
			j.close[j.nclose++] = gofd[k];
		}
		j.close[j.nclose++] = rp[0];
		j.close[j.nclose++] = gp[1];
		pid[i] = spawn(sk_worker, &j);
		close(rp[1]);
		close(gp[0]);
		rfd[i] = rp[0];
		gofd[i] = gp[1];
		if (pid[i] < 0)
			return pid[i];
	}
	return 0;
}

static void sk_tally(struct scale_res *s)
{
	for (int i = 0; i < s->procs; i++) {
		const struct sk_out *w = &s->o[i];

		for (int k = 0; k < NST; k++)
			s->st[k] += w->st[k];
		s->made_max_ns = MAX(s->made_max_ns, w->made_ns);
		s->settled_max_ns = MAX(s->settled_max_ns, w->settled_ns);
		s->close_max_ns = MAX(s->close_max_ns, w->close_ns);
		s->live = s->st[ST_ATTACHED] / 2;
		if (w->err && s->state == XS_OK) {
			s->state = XS_FAILED;
			snprintf(s->why, RWHY_LEN, "worker %d: %s", i, w->why);
		}
	}
}

/* Memory after the status runs: they map each channel's header page
 * into ivmcd (read-only, shared), as any status query does. */
static void sk_measure(struct scale_res *s)
{
	for (int k = 0; k < CTL_RUNS; k++) {
		if (isatty(STDERR_FILENO))
			fprintf(stderr,
				"\rivmc-ctlbench: scale, ivmcctl "
				"status (%d/%d)   ",
				k + 1, CTL_RUNS);
		ctl_time(0, &s->ctl[0][k]);
		ctl_time(1, &s->ctl[1][k]);
	}
	pmem_read(g.daemon, &s->d1);
	s->shmem1 = meminfo_kb("Shmem");
}

static void sk_finish(struct scale_res *s, const pid_t *pid, int *gofd)
{
	uint64_t t0 = now_ns();

	for (int i = 0; i < s->procs; i++) {
		close(gofd[i]);
		gofd[i] = -1;
	}
	for (int i = 0; i < s->procs; i++)
		if (pid[i] > 0)
			reap(pid[i], PHASE_S * 1000);
	s->exit_ns = now_ns() - t0;
	s->drain_ns = sk_drain(s);
	pmem_read(g.daemon, &s->d2);
}

static int scale_run(struct scale_res *s, const struct opts *o)
{
	pid_t pid[MAX_PROCS] = { 0 };
	int rfd[MAX_PROCS], gofd[MAX_PROCS], err;
	uint64_t t0, d0;

	s->n = o->chans;
	s->procs = o->procs;
	s->window = o->window;
	s->per_proc = (s->n + s->procs - 1) / s->procs;
	s->state = XS_OK;
	for (int i = 0; i < MAX_PROCS; i++)
		rfd[i] = gofd[i] = -1;
	s->netns = o->scale_netns;
	err = scale_check(s);
	if (!err && s->netns && !g.ns_up) {
		snprintf(s->why, RWHY_LEN, "--scale-netns: no namespaces (%s)",
			 geteuid() ? "needs root" : "set-up failed");
		err = -EPERM;
	}
	if (!err) {
		s->o = mem_shared(sizeof(*s->o) * s->procs);
		err = s->o ? 0 : -ENOMEM;
	}
	if (err) {
		s->state = XS_FAILED;
		if (!s->why[0])
			kid_why(s->why, "set-up", err);
		msg("scale: %s", s->why);
		return err;
	}
	if (daemon_idle(PHASE_S * 1000))
		msg("scale: ivmcd still busy with earlier tests after %d s",
		    PHASE_S);
	pmem_read(g.daemon, &s->d0);
	s->shmem0 = meminfo_kb("Shmem");
	if (isatty(STDERR_FILENO))
		fprintf(stderr,
			"\rivmc-ctlbench: scale, %ld channels in %d "
			"processes   ",
			s->n, s->procs);
	d0 = oncpu_ns(g.daemon);
	t0 = now_ns();
	err = sk_spawn(s, o, pid, rfd, gofd);
	if (!err)
		err = sk_wait_ready(rfd, s->procs);
	s->ready_ns = now_ns() - t0;
	s->dcpu_ns = d0 ? oncpu_ns(g.daemon) - d0 : 0;
	if (!err)
		sk_measure(s);
	sk_finish(s, pid, gofd);
	progress_done();
	for (int i = 0; i < s->procs; i++)
		if (rfd[i] >= 0)
			close(rfd[i]);
	sk_tally(s);
	if (err && s->state == XS_OK) {
		s->state = XS_FAILED;
		snprintf(s->why, RWHY_LEN, "workers not ready within %d s",
			 PHASE_S);
	}
	if (s->state != XS_OK)
		msg("scale: %s", s->why);
	return 0;
}

/* ---------------------------------------------------------------- report */

struct report {
	const struct opts *o;
	struct machine m;
	char date[64];
	struct setup_run *setup;
	struct att_res *att;
	struct scale_res *scale;
	int daemon_status;
};

static void date_str(char *b, size_t n)
{
	time_t t = time(NULL);
	struct tm tm;

	localtime_r(&t, &tm);
	strftime(b, n, "%Y-%m-%dT%H:%M:%S%z", &tm);
}

static void print_header(FILE *f, const struct report *rp)
{
	const struct machine *m = &rp->m;
	const struct opts *o = rp->o;

	fprintf(f, "# ivmc-ctlbench %s — %s\n\n", BENCH_VERSION, rp->date);
	fprintf(f, "- host: Linux %s %s, %ld CPUs online, %s, %ld MiB\n",
		m->kernel, m->arch, m->cpus, m->cpu, m->mem_mb);
	fprintf(f, "- load average at start: %.2f %.2f %.2f\n",
		m->load_start[0], m->load_start[1], m->load_start[2]);
	char lg[24], tk[24];

	snprintf(lg, sizeof(lg), "%ld", o->linger_us);
	snprintf(tk, sizeof(tk), "%ld", o->tick_us);
	fprintf(f,
		"- ivmcd: %s/ivmcd, private socket, log level %s%s, "
		"--linger-us %s, --tick-us %s; config "
		"ring_size %zuK, quota channels 0, quota memory 0, "
		"pending_max 100000\n",
		g.bindir, o->log_level, o->daemon_batch ? ", SCHED_BATCH" : "",
		o->linger_us >= 0 ? lg : "default",
		o->tick_us >= 0 ? tk : "default", o->ring >> 10);
	fprintf(f, "- ratios: median over rounds of the per-round ratio of "
		   "p50s\n");
}

static void print_setup(FILE *f, const struct setup_run *s)
{
	char b[7][24];

	fprintf(f,
		"\n## Connection set-up (%ld per case in %d interleaved "
		"rounds, +%ld warm-up per round; microseconds per pair)\n\n",
		s->per_round * s->rounds, s->rounds, s->warm);
	fprintf(f, "| case | what | p50 | p90 | p99 | max | vs base (p50) "
		   "| extra p50 | ivmcd CPU |\n"
		   "|---|---|---:|---:|---:|---:|---:|---:|---:|\n");
	for (int c = 0; c < NSC; c++) {
		const struct sc_res *r = &s->r[c];

		if (r->state != XS_OK)
			continue;
		fprintf(f, "| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n",
			scases[c].name, scases[c].what,
			num(b[0], 24, "%.1f", r->d.p50),
			num(b[1], 24, "%.1f", r->d.p90),
			num(b[2], 24, "%.1f", r->d.p99),
			num(b[3], 24, "%.0f", r->d.max),
			c == scases[c].base ?
				"base" :
				num(b[4], 24, "%.2fx", r->vs_base),
			c == scases[c].base ?
				"" :
				num(b[5], 24, "%+.1f", r->extra_us),
			num(b[6], 24, "%.1f", r->dcpu_us));
	}
	fprintf(f, "\nivmcd CPU: the daemon's on-CPU time per connection "
		   "(schedstat), including its share of the untimed attach "
		   "and close.\nHandle states after the timing (ivmc: polled "
		   "until settled, untimed):\n\n");
	for (int c = 0; c < NSC; c++) {
		const struct sc_res *r = &s->r[c];

		if (r->state == XS_OK && scases[c].ends) {
			fprintf(f, "- %s:", scases[c].name);
			for (int k = 0; k < NST; k++)
				if (r->st[k])
					fprintf(f, " %s %ld", st_names[k],
						r->st[k]);
			fputc('\n', f);
		}
	}
	for (int c = 0; c < NSC; c++)
		if (s->r[c].state != XS_OK)
			fprintf(f, "- %s: %s (%s)\n", scases[c].name,
				s->r[c].state == XS_UNAVAIL ? "not measured" :
							      "FAILED",
				s->r[c].why);
}

static void print_att(FILE *f, const struct att_res *r)
{
	char b[5][24];

	fprintf(f,
		"\n## From connect() to both ends attached (%ld connections; "
		"microseconds)\n\n",
		r->n + r->failed);
	fprintf(f, "| stage | p50 | p90 | p99 | max | mean |\n"
		   "|---|---:|---:|---:|---:|---:|\n");
	for (int k = 0; k < NAS; k++)
		fprintf(f, "| %s | %s | %s | %s | %s | %s |\n", as_names[k],
			num(b[0], 24, "%.1f", r->d[k].p50),
			num(b[1], 24, "%.1f", r->d[k].p90),
			num(b[2], 24, "%.1f", r->d[k].p99),
			num(b[3], 24, "%.0f", r->d[k].max),
			num(b[4], 24, "%.1f", r->d[k].mean));
	fprintf(f,
		"\nStages: connect+accept = connect() start until both "
		"connect() and accept() returned; ivmc_tcp() x2 = then until "
		"both registrations were sent; ivmcd pairing = then until the "
		"first end found its channel (start of its last "
		"ivmc_tcp_state() poll); channel open = then until both ends "
		"were attached. Install call = the duration of that last "
		"poll, per end (takes in the CHAN message and opens the "
		"channel). Connecting side in one thread, accepting side in "
		"another, both polling without sleeping (%s).\n",
		poll_spin ? "spinning" : "sched_yield() between polls");
	fprintf(f, "\nAttached: %ld of %ld", r->n, r->n + r->failed);
	if (r->failed) {
		fprintf(f, " (ends:");
		for (int k = 0; k < NST; k++)
			if (r->st[k])
				fprintf(f, " %s %ld", st_names[k], r->st[k]);
		fprintf(f, ")");
	}
	fputc('\n', f);
	if (r->state != XS_OK)
		fprintf(f, "FAILED: %s\n", r->why);
}

static double per(long a, long b, long n)
{
	return n > 0 ? (double)(a - b) / (double)n : NAN;
}

static void print_ctl(FILE *f, const struct scale_res *s)
{
	for (int j = 0; j < 2; j++) {
		fprintf(f, "- `ivmcctl %sstatus`:", j ? "--json " : "");
		for (int k = 0; k < CTL_RUNS; k++) {
			const struct ctl_run *c = &s->ctl[j][k];

			fprintf(f, "%s %.1f ms (ivmcd %.1f)", k ? "," : "",
				c->ns / 1e6, c->dcpu_ns / 1e6);
			if (c->rc)
				fprintf(f, " (exit %d)", c->rc);
		}
		fprintf(f, " — %ld bytes, %ld channels listed\n",
			s->ctl[j][0].bytes, s->ctl[j][0].chans);
	}
}

static void sk_worker_sum(const struct scale_res *s, struct pmem *a,
			  struct pmem *b)
{
	memset(a, 0, sizeof(*a));
	memset(b, 0, sizeof(*b));
	for (int i = 0; i < s->procs; i++) {
		const struct pmem *x = &s->o[i].m0, *y = &s->o[i].m1;

		a->private += x->private, b->private += y->private;
		a->pss += x->pss, b->pss += y->pss;
		a->rss += x->rss, b->rss += y->rss;
		a->fds += x->fds, b->fds += y->fds;
		a->vmas += x->vmas, b->vmas += y->vmas;
	}
}

static void print_scale_mem(FILE *f, const struct scale_res *s)
{
	const struct pmem *d0 = &s->d0, *d1 = &s->d1;
	struct pmem w0, w1;
	long n = s->live;

	sk_worker_sum(s, &w0, &w1);
	fprintf(f,
		"\n| per live channel (%ld) | ivmcd | the %d processes "
		"(both ends) |\n|---|---:|---:|\n",
		n, s->procs);
	fprintf(f, "| private memory (KiB) | %.2f | %.2f |\n",
		per(d1->private, d0->private, n),
		per(w1.private, w0.private, n));
	fprintf(f, "| PSS (KiB) | %.2f | %.2f |\n", per(d1->pss, d0->pss, n),
		per(w1.pss, w0.pss, n));
	fprintf(f, "| of which shmem PSS (KiB) | %.2f | |\n",
		per(d1->pss_shmem, d0->pss_shmem, n));
	fprintf(f, "| RSS (KiB) | %.2f | %.2f |\n", per(d1->rss, d0->rss, n),
		per(w1.rss, w0.rss, n));
	fprintf(f, "| open fds | %.2f | %.2f |\n", per(d1->fds, d0->fds, n),
		per(w1.fds, w0.fds, n));
	fprintf(f, "| mappings | %.2f | %.2f |\n", per(d1->vmas, d0->vmas, n),
		per(w1.vmas, w0.vmas, n));
	fprintf(f,
		"\nivmcd (measured after the status runs, which map each "
		"channel's header page into it): VmRSS %ld -> %ld KiB, "
		"private %ld -> %ld KiB, PSS "
		"%ld -> %ld KiB, fds %ld -> %ld; after teardown VmRSS %ld "
		"KiB, private %ld KiB, fds %ld.\n",
		d0->vmrss, d1->vmrss, d0->private, d1->private, d0->pss,
		d1->pss, d0->fds, d1->fds, s->d2.vmrss, s->d2.private,
		s->d2.fds);
	fprintf(f,
		"System Shmem (/proc/meminfo, whole host): %+ld KiB, %.2f "
		"KiB per channel (the regions' touched pages and the "
		"endpoint pages).\n",
		s->shmem1 - s->shmem0, per(s->shmem1, s->shmem0, n));
}

static void print_scale(FILE *f, const struct scale_res *s)
{
	fprintf(f,
		"\n## Scale: %ld channels over %d processes (%ld each, "
		"window %d)\n\n",
		s->n, s->procs, s->per_proc, s->window);
	fprintf(f,
		"- limits: RLIMIT_NOFILE %ld (hard %ld), "
		"vm.max_map_count %ld\n",
		s->nofile_soft, s->nofile_hard, s->max_map);
	if (s->netns)
		fprintf(f,
			"- the processes live in network namespace %s "
			"(loopback inside it)\n",
			g.ns[0]);
	if (!s->o) {
		fprintf(f, "- FAILED: %s\n", s->why);
		return;
	}
	fprintf(f,
		"- made in %.2f s (slowest process), all settled at %.2f s; "
		"%.0f connections/s overall\n",
		s->made_max_ns / 1e9, s->settled_max_ns / 1e9,
		s->settled_max_ns ? s->n / (s->settled_max_ns / 1e9) : 0.0);
	fprintf(f, "- ends:");
	for (int k = 0; k < NST; k++)
		if (s->st[k])
			fprintf(f, " %s %ld", st_names[k], s->st[k]);
	fprintf(f, " (of %ld)\n", 2 * s->n);
	fprintf(f,
		"- ivmcd on-CPU while they were made: %.2f s, %.1f us "
		"per channel\n",
		s->dcpu_ns / 1e9, s->n ? s->dcpu_ns / 1e3 / s->n : 0.0);
	print_ctl(f, s);
	fprintf(f,
		"- teardown: processes closed their handles in %.2f s "
		"(slowest) and exited %.2f s after being told; ivmcd back "
		"to its fds %.2f s later\n",
		s->close_max_ns / 1e9, s->exit_ns / 1e9, s->drain_ns / 1e9);
	print_scale_mem(f, s);
	if (s->state != XS_OK)
		fprintf(f, "\nFAILED: %s\n", s->why);
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

static void json_dist(FILE *f, const struct dist *d)
{
	fprintf(f, "\"n\": %ld, ", d->n);
	json_kv(f, "p50_us", d->p50, ", ");
	json_kv(f, "p90_us", d->p90, ", ");
	json_kv(f, "p99_us", d->p99, ", ");
	json_kv(f, "max_us", d->max, ", ");
	json_kv(f, "mean_us", d->mean, "");
}

static void json_states(FILE *f, const long st[NST])
{
	fputs("\"states\": {", f);
	for (int k = 0; k < NST; k++)
		fprintf(f, "%s\"%s\": %ld", k ? ", " : "", st_names[k], st[k]);
	fputs("}", f);
}

static void json_setup(FILE *f, const struct setup_run *s)
{
	fprintf(f,
		",\n  \"setup\": {\"rounds\": %d, \"per_round\": %ld, "
		"\"cases\": [",
		s->rounds, s->per_round);
	for (int c = 0; c < NSC; c++) {
		const struct sc_res *r = &s->r[c];

		fprintf(f, "%s\n    {\"case\": ", c ? "," : "");
		json_str(f, scases[c].name);
		fputs(", \"what\": ", f);
		json_str(f, scases[c].what);
		fprintf(f, ", \"base\": \"%s\", ", scases[scases[c].base].name);
		if (r->state != XS_OK) {
			fputs("\"measured\": false, \"why\": ", f);
			json_str(f, r->why);
			fputs("}", f);
			continue;
		}
		fputs("\"measured\": true, ", f);
		json_dist(f, &r->d);
		fputs(", ", f);
		json_kv(f, "vs_base_p50", r->vs_base, ", ");
		json_kv(f, "extra_p50_us", r->extra_us, ", ");
		json_kv(f, "ivmcd_cpu_us_per_conn", r->dcpu_us, ", ");
		fputs("\"round_p50_us\": [", f);
		for (int k = 0; k < s->rounds; k++) {
			json_num(f, r->p50r[k]);
			fputs(k + 1 < s->rounds ? ", " : "], ", f);
		}
		json_states(f, r->st);
		fputs("}", f);
	}
	fputs("\n  ]}", f);
}

static void json_att(FILE *f, const struct att_res *r)
{
	fprintf(f,
		",\n  \"attach\": {\"ok\": %s, \"attached\": %ld, "
		"\"failed\": %ld, ",
		r->state == XS_OK ? "true" : "false", r->n, r->failed);
	json_states(f, r->st);
	fputs(", \"stages\": [", f);
	for (int k = 0; k < NAS; k++) {
		fprintf(f, "%s\n    {\"stage\": \"%s\", ", k ? "," : "",
			as_keys[k]);
		json_dist(f, &r->d[k]);
		fputs("}", f);
	}
	fputs("\n  ]}", f);
}

static void json_pmem(FILE *f, const char *k, const struct pmem *m,
		      const char *sep)
{
	fprintf(f,
		"\"%s\": {\"vmrss_kb\": %ld, \"rss_kb\": %ld, \"pss_kb\": "
		"%ld, \"pss_shmem_kb\": %ld, \"shared_kb\": %ld, "
		"\"private_kb\": %ld, \"fds\": %ld, \"mappings\": %ld}%s",
		k, m->vmrss, m->rss, m->pss, m->pss_shmem, m->shared,
		m->private, m->fds, m->vmas, sep);
}

static void json_scale(FILE *f, const struct scale_res *s)
{
	struct pmem w0, w1;

	fprintf(f, ",\n  \"scale\": {\"ok\": %s, ",
		s->state == XS_OK ? "true" : "false");
	if (s->why[0]) {
		fputs("\"why\": ", f);
		json_str(f, s->why);
		fputs(", ", f);
	}
	fprintf(f, "\"in_netns\": %s, ", s->netns ? "true" : "false");
	fprintf(f,
		"\"channels\": %ld, \"live\": %ld, \"procs\": %d, "
		"\"window\": %d, "
		"\"nofile\": %ld, \"max_map_count\": %ld",
		s->n, s->live, s->procs, s->window, s->nofile_soft, s->max_map);
	if (!s->o) {
		fputs("}", f);
		return;
	}
	fputs(",\n    ", f);
	json_states(f, s->st);
	fprintf(f, ",\n    \"ivmcd_cpu_s\": %.3f", s->dcpu_ns / 1e9);
	fprintf(f,
		",\n    \"made_s\": %.3f, \"settled_s\": %.3f, "
		"\"close_s\": %.3f, \"exit_s\": %.3f, \"drain_s\": %.3f,\n",
		s->made_max_ns / 1e9, s->settled_max_ns / 1e9,
		s->close_max_ns / 1e9, s->exit_ns / 1e9, s->drain_ns / 1e9);
	for (int j = 0; j < 2; j++) {
		fprintf(f, "    \"%s\": [", j ? "status_json" : "status_text");
		for (int k = 0; k < CTL_RUNS; k++)
			fprintf(f,
				"%s{\"ms\": %.3f, \"ivmcd_cpu_ms\": %.3f, "
				"\"exit\": %d, \"bytes\": %ld, "
				"\"channels\": %ld}",
				k ? ", " : "", s->ctl[j][k].ns / 1e6,
				s->ctl[j][k].dcpu_ns / 1e6, s->ctl[j][k].rc,
				s->ctl[j][k].bytes, s->ctl[j][k].chans);
		fputs("],\n", f);
	}
	fputs("    \"ivmcd\": {", f);
	json_pmem(f, "before", &s->d0, ", ");
	json_pmem(f, "live", &s->d1, ", ");
	json_pmem(f, "after", &s->d2, "},\n");
	sk_worker_sum(s, &w0, &w1);
	fputs("    \"processes\": {", f);
	json_pmem(f, "before", &w0, ", ");
	json_pmem(f, "live", &w1, "},\n");
	fprintf(f, "    \"host_shmem_kb\": {\"before\": %ld, \"live\": %ld}}",
		s->shmem0, s->shmem1);
}

static void json_machine(FILE *f, const struct report *rp)
{
	const struct machine *m = &rp->m;

	fprintf(f,
		"{\n  \"tool\": \"ivmc-ctlbench\", \"version\": \"%s\", "
		"\"date\": \"%s\",\n  \"machine\": {\"kernel\": ",
		BENCH_VERSION, rp->date);
	json_str(f, m->kernel);
	fputs(", \"arch\": ", f);
	json_str(f, m->arch);
	fputs(", \"cpu\": ", f);
	json_str(f, m->cpu);
	fprintf(f,
		", \"cpus_online\": %ld, \"mem_mb\": %ld, "
		"\"load_start\": [%.2f, %.2f, %.2f], "
		"\"load_end\": [%.2f, %.2f, %.2f]},\n",
		m->cpus, m->mem_mb, m->load_start[0], m->load_start[1],
		m->load_start[2], m->load_end[0], m->load_end[1],
		m->load_end[2]);
	fprintf(f, "  \"config\": {\"daemon_batch\": %s, ",
		rp->o->daemon_batch ? "true" : "false");
	fprintf(f,
		"\"quick\": %s, \"ring_size\": %zu, "
		"\"log_level\": \"%s\", \"daemon_exit\": %d}",
		rp->o->quick ? "true" : "false", rp->o->ring, rp->o->log_level,
		rp->daemon_status);
}

static int json_write(const char *path, const struct report *rp)
{
	FILE *f = fopen(path, "w");
	int err;

	if (!f)
		return -errno;
	json_machine(f, rp);
	if (rp->setup)
		json_setup(f, rp->setup);
	if (rp->att)
		json_att(f, rp->att);
	if (rp->scale)
		json_scale(f, rp->scale);
	fputs("\n}\n", f);
	err = ferror(f) ? -EIO : 0;
	if (fclose(f) && !err)
		err = -errno;
	return err;
}

/* --------------------------------------------------------------- options */

static void usage(FILE *f)
{
	static const char *const lines[] = {
		"usage: ivmc-ctlbench [options]",
		"  -q, --quick            about 20 s: 2000 set-ups per case,",
		"                         200 attaches, 1000 channels",
		"  -n, --connections N    set-ups per case (20000)",
		"  -a, --attach N         connections timed to attached (1000)",
		"  -c, --channels N       live channels for the scale test",
		"                         (10000)",
		"  -p, --procs P          processes holding them (4, max 64)",
		"  -w, --window W         registrations each process keeps",
		"                         waiting for ivmcd (64; 0: no limit)",
		"  -r, --ring BYTES       ring_size in ivmcd's config (64K)",
		"  -g, --ring-grow BYTES  ring_grow in it (0 or 4K..1G; ivmcd's)",
		"  -R, --rounds N         interleaved rounds (5, max 32)",
		"  -j, --json FILE        also write the results as JSON",
		"      --no-netns         skip the cases across namespaces",
		"      --no-setup         skip test 1 (connection set-up)",
		"      --no-attach        skip test 2 (connect to attached)",
		"      --no-scale         skip test 3 (N live channels)",
		"      --log-level L      ivmcd's (info)",
		"      --spin             test 2 polls without sched_yield()",
		"      --scale-netns      test 3 in a named netns (root)",
		"      --daemon-batch     run ivmcd as SCHED_BATCH",
		"      --linger-us N      ivmcd --linger-us N (its default)",
		"      --tick-us N        ivmcd --tick-us N (its default)",
		"      --keep             keep the temporary directory (log)",
		"      --timeout SECONDS  watchdog for the whole run (900)",
		"  -h, --help             this text",
		"  -V, --version          print the version",
	};

	for (size_t i = 0; i < ARRAY_SIZE(lines); i++)
		fprintf(f, "%s\n", lines[i]);
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

static int parse_int(const char *s, long lo, long hi, int *out)
{
	long v;

	if (parse_long(s, lo, hi, &v))
		return -EINVAL;
	*out = (int)v;
	return 0;
}

/* A power of two in 4K..1G, with an optional K/M/G. */
static int parse_ring(const char *s, size_t *out)
{
	char *end;
	unsigned long long v;

	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno || end == s || *s == '-')
		return -EINVAL;
	if (*end == 'k' || *end == 'K')
		v <<= 10, end++;
	else if (*end == 'm' || *end == 'M')
		v <<= 20, end++;
	else if (*end == 'g' || *end == 'G')
		v <<= 30, end++;
	if (*end || v < 4096 || v > (1ull << 30) || (v & (v - 1)))
		return -EINVAL;
	*out = v;
	return 0;
}

enum {
	OPT_NONETNS = 256,
	OPT_NOSETUP,
	OPT_NOATTACH,
	OPT_NOSCALE,
	OPT_LOGLEVEL,
	OPT_KEEP,
	OPT_TIMEOUT,
	OPT_SPIN,
	OPT_SCALENS,
	OPT_BATCH,
	OPT_LINGER,
	OPT_TICK
};

static const struct option lopts[] = {
	{ "quick", no_argument, NULL, 'q' },
	{ "connections", required_argument, NULL, 'n' },
	{ "attach", required_argument, NULL, 'a' },
	{ "channels", required_argument, NULL, 'c' },
	{ "procs", required_argument, NULL, 'p' },
	{ "window", required_argument, NULL, 'w' },
	{ "ring", required_argument, NULL, 'r' },
	{ "ring-grow", required_argument, NULL, 'g' },
	{ "rounds", required_argument, NULL, 'R' },
	{ "json", required_argument, NULL, 'j' },
	{ "no-netns", no_argument, NULL, OPT_NONETNS },
	{ "no-setup", no_argument, NULL, OPT_NOSETUP },
	{ "no-attach", no_argument, NULL, OPT_NOATTACH },
	{ "no-scale", no_argument, NULL, OPT_NOSCALE },
	{ "log-level", required_argument, NULL, OPT_LOGLEVEL },
	{ "keep", no_argument, NULL, OPT_KEEP },
	{ "spin", no_argument, NULL, OPT_SPIN },
	{ "scale-netns", no_argument, NULL, OPT_SCALENS },
	{ "daemon-batch", no_argument, NULL, OPT_BATCH },
	{ "linger-us", required_argument, NULL, OPT_LINGER },
	{ "tick-us", required_argument, NULL, OPT_TICK },
	{ "timeout", required_argument, NULL, OPT_TIMEOUT },
	{ "help", no_argument, NULL, 'h' },
	{ "version", no_argument, NULL, 'V' },
	{ NULL, 0, NULL, 0 }
};

static int parse_level(const char *s)
{
	static const char *const levels[] = { "error", "warn", "info",
					      "debug" };

	for (size_t i = 0; i < ARRAY_SIZE(levels); i++)
		if (!strcmp(s, levels[i]))
			return 0;
	return -EINVAL;
}

/* One option; returns 0, -EINVAL (bad value) or 1 (done: help/version). */
static int parse_one(struct opts *o, int c)
{
	switch (c) {
	case 'q':
		o->quick = 1;
		return 0;
	case 'n':
		return parse_long(optarg, 10, 10000000, &o->setup_n);
	case 'a':
		return parse_long(optarg, 1, 1000000, &o->attach_n);
	case 'c':
		return parse_long(optarg, 1, 1000000, &o->chans);
	case 'p':
		return parse_int(optarg, 1, MAX_PROCS, &o->procs);
	case 'w':
		return parse_int(optarg, 0, 1000000, &o->window);
	case 'r':
		return parse_ring(optarg, &o->ring);
	case 'g':
		if (!strcmp(optarg, "0"))
			return o->grow = 0, 0;
		return parse_ring(optarg, &o->grow);
	case 'R':
		return parse_int(optarg, 1, MAX_ROUNDS, &o->rounds);
	case 'j':
		o->json = optarg;
		return 0;
	case OPT_NONETNS:
		o->netns = 0;
		return 0;
	case OPT_NOSETUP:
		o->no_setup = 1;
		return 0;
	case OPT_NOATTACH:
		o->no_attach = 1;
		return 0;
	case OPT_NOSCALE:
		o->no_scale = 1;
		return 0;
	case OPT_LOGLEVEL:
		o->log_level = optarg;
		return parse_level(optarg);
	case OPT_KEEP:
		g.keep = 1;
		return 0;
	case OPT_SPIN:
		poll_spin = 1;
		return 0;
	case OPT_SCALENS:
		o->scale_netns = 1;
		return 0;
	case OPT_BATCH:
		o->daemon_batch = 1;
		return 0;
	case OPT_LINGER:
		return parse_long(optarg, 0, 1000000, &o->linger_us);
	case OPT_TICK:
		return parse_long(optarg, 0, 10000, &o->tick_us);
	case OPT_TIMEOUT:
		return parse_int(optarg, 10, 86400, &o->timeout_s);
	case 'h':
		usage(stdout);
		return 1;
	case 'V':
		printf("ivmc-ctlbench %s\n", BENCH_VERSION);
		return 1;
	default:
		return -EINVAL;
	}
}

/* Returns 0 to run, 1 when done (help), 2 on bad usage. */
static int parse_opts(int argc, char **argv, struct opts *o)
{
	int c, err;

	memset(o, 0, sizeof(*o));
	o->rounds = 5;
	o->procs = 4;
	o->window = 64;
	o->ring = 64 << 10;
	o->grow = SIZE_MAX;
	o->netns = 1;
	o->timeout_s = 900;
	o->log_level = "info";
	o->linger_us = o->tick_us = -1;
	while ((c = getopt_long(argc, argv, "qn:a:c:p:w:r:g:R:j:hV", lopts,
				NULL)) != -1) {
		err = parse_one(o, c);
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
	if (!o->setup_n)
		o->setup_n = o->quick ? 2000 : 20000;
	if (!o->attach_n)
		o->attach_n = o->quick ? 200 : 1000;
	if (!o->chans)
		o->chans = o->quick ? 1000 : 10000;
	o->procs = (int)MIN((long)o->procs, o->chans);
	return 0;
}

/* ----------------------------------------------------------------- main */

static int bindir_find(void)
{
	ssize_t k = readlink("/proc/self/exe", g.bindir, sizeof(g.bindir) - 1);
	char *slash;

	if (k < 0)
		return -errno;
	g.bindir[k] = 0;
	slash = strrchr(g.bindir, '/');
	if (slash)
		*slash = 0;
	return 0;
}

static int dir_setup(void)
{
	snprintf(g.dir, sizeof(g.dir), "/tmp/ivmc-ctlbench.XXXXXX");
	if (!mkdtemp(g.dir)) {
		g.dir[0] = 0;
		return -errno;
	}
	snprintf(g.sock, sizeof(g.sock), "%s/ivmcd.sock", g.dir);
	snprintf(g.absent, sizeof(g.absent), "%s/absent.sock", g.dir);
	snprintf(g.conf, sizeof(g.conf), "%s/ivmcd.conf", g.dir);
	snprintf(g.log, sizeof(g.log), "%s/ivmcd.log", g.dir);
	snprintf(g.out_txt, sizeof(g.out_txt), "%s/status.txt", g.dir);
	snprintf(g.out_json, sizeof(g.out_json), "%s/status.json", g.dir);
	return 0;
}

static int process_setup(const struct opts *o)
{
	int err;

	g.main_pid = getpid();
	g.timeout_s = (unsigned int)o->timeout_s;
	cpus_find();
	signals_setup();
	alarm(g.timeout_s);
	err = bindir_find();
	if (!err)
		err = dir_setup();
	if (!err)
		err = conf_write(o);
	if (err) {
		msg("set-up: %s", strerror(-err));
		return err;
	}
	/* Before ivmcd starts: it inherits the limit and raises its own. */
	nofile_raise(o->no_scale ? 0 : o->chans * 2 + 1024);
	err = daemon_start(o);
	if (err)
		return err;
	setenv("IVMC_SOCKET", g.sock, 1);
	/* The first call of a process waits for the hello: on a busy host
	 * 2 ms is not always enough, and a miss would mean 1 s on TCP. */
	setenv("IVMC_CTL_BUDGET_US", "1000000", 1);
	return 0;
}

static int run_all(const struct opts *o, struct report *rp)
{
	static struct setup_run setup;
	static struct att_res att;
	static struct scale_res scale;
	int bad = 0;

	print_header(stdout, rp);
	fflush(stdout);
	if (o->netns && (!o->no_setup || (!o->no_scale && o->scale_netns)) &&
	    netns_setup())
		msg("network namespaces: %s; continuing without them",
		    geteuid() ? "needs root" : "set-up failed");
	if (!o->no_setup) {
		rp->setup = &setup;
		if (setup_run(&setup, o))
			return 1;
		print_setup(stdout, &setup);
		fflush(stdout);
		setup_free(&setup);
		for (int c = 0; c < NSC; c++)
			bad |= setup.r[c].state == XS_FAILED;
	}
	if (!o->no_attach) {
		rp->att = &att;
		if (att_run(&att, o))
			return 1;
		print_att(stdout, &att);
		fflush(stdout);
		bad |= att.state != XS_OK;
	}
	if (!o->no_scale) {
		rp->scale = &scale;
		scale_run(&scale, o);
		print_scale(stdout, &scale);
		fflush(stdout);
		bad |= scale.state != XS_OK;
	}
	return bad;
}

int main(int argc, char **argv)
{
	struct report rp = { 0 };
	struct opts o;
	int rc, err;

	rc = parse_opts(argc, argv, &o);
	if (rc)
		return rc == 1 ? 0 : 2;
	rp.o = &o;
	machine_get(&rp.m);
	date_str(rp.date, sizeof(rp.date));
	if (process_setup(&o)) {
		g.keep = 1;
		cleanup_all();
		return 1;
	}
	rc = run_all(&o, &rp);
	netns_cleanup();
	rp.daemon_status = daemon_stop();
	if (rp.daemon_status != 0) {
		msg("ivmcd did not exit cleanly (wait status %d); log: %s",
		    rp.daemon_status, g.log);
		rc = 1;
	}
	loadavg(rp.m.load_end);
	printf("\n- load average at end: %.2f %.2f %.2f\n", rp.m.load_end[0],
	       rp.m.load_end[1], rp.m.load_end[2]);
	if (o.json && (err = json_write(o.json, &rp))) {
		msg("%s: %s", o.json, strerror(-err));
		rc = 1;
	}
	if (rc) {
		g.keep = 1;
		msg("kept %s (ivmcd.log)", g.dir);
	}
	cleanup_all();
	return rc;
}
