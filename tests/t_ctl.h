/* SPDX-License-Identifier: MIT */
/*
 * Description: helpers for the control-plane tests: start a private ivmcd
 * (build/bin/ivmcd next to the test binaries) on a socket in the test's
 * temporary directory, point the library at it, stop it; loopback TCP
 * pairs; wait for ivmc_tcp() handles to attach.
 */
#ifndef IVMC_TESTS_T_CTL_H
#define IVMC_TESTS_T_CTL_H

#include <arpa/inet.h>
#include <dirent.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>

#include "t_api.h"

static char t_sock[128];
static pid_t t_dpid;
static const char *t_dextra, *t_dextra2; /* ivmcd arguments, e.g. "--linger-us=0" */

/* Path of a binary built beside the tests: ../bin/NAME. */
static inline void t_bin(char *buf, size_t n, const char *name)
{
	char self[PATH_MAX];
	ssize_t k = readlink("/proc/self/exe", self, sizeof(self) - 1);
	char *slash;

	if (k < 0)
		t_fail("readlink /proc/self/exe");
	self[k] = 0;
	slash = strrchr(self, '/');
	if (slash)
		*slash = 0;
	if ((size_t)snprintf(buf, n, "%s/../bin/%s", self, name) >= n)
		t_fail("path too long");
}

static char t_dconf[PATH_MAX], t_dlog[PATH_MAX]; /* t_daemon_start()'s */

/* fork and exec ivmcd in the foreground on t_sock, t_dconf, t_dlog. */
static inline pid_t t_daemon_spawn(void)
{
	char bin[PATH_MAX];
	pid_t pid;

	t_bin(bin, sizeof(bin), "ivmcd");
	fflush(stdout);
	fflush(stderr);
	pid = fork();
	if (pid < 0)
		t_fail("fork");
	if (pid == 0) {
		/* A test that dies (failure, timeout) takes its daemon along. */
		prctl(PR_SET_PDEATHSIG, SIGTERM);
		execl(bin, "ivmcd", "-f", "-s", t_sock, "-c", t_dconf, "-l",
		      "debug", "-L", t_dlog, t_dextra, t_dextra2, (char *)NULL);
		_exit(127);
	}
	return pid;
}

/* Does an ivmcd answer a connect on t_sock? */
static inline bool t_daemon_answers(void)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	bool ok;

	T_ASSERT(fd >= 0 && strlen(t_sock) < sizeof(sa.sun_path));
	memcpy(sa.sun_path, t_sock, strlen(t_sock));
	ok = connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0;
	close(fd);
	return ok;
}

/* Spawn ivmcd (t_daemon_spawn()) and wait (bounded) until it takes a
 * connection: its socket path proves nothing, since it appears at bind(),
 * before listen(), and a dead daemon's stays. what names it in failures.
 * Returns its pid, also in t_dpid. */
static inline pid_t t_daemon_launch(const char *what)
{
	pid_t pid = t_daemon_spawn();

	for (int i = 0; i < 500; i++) {
		int st;

		if (waitpid(pid, &st, WNOHANG) == pid)
			t_fail("%s exited (status %#x), see %s", what, st,
			       t_dlog);
		if (t_daemon_answers()) {
			t_dpid = pid;
			return pid;
		}
		usleep(10000);
	}
	t_fail("%s did not answer within 5 s", what);
}

/* Start ivmcd in the foreground on t_dir/ivmcd.sock with config conf (NULL:
 * none, the default policy) and wait (bounded) until it answers. Exports
 * IVMC_SOCKET. Returns its pid. */
static inline pid_t t_daemon_start(const char *conf)
{
	t_tmpdir();
	t_path(t_sock, sizeof(t_sock), "ivmcd.sock");
	t_path(t_dlog, sizeof(t_dlog), "ivmcd.log");
	t_path(t_dconf, sizeof(t_dconf), conf ? "ivmcd.conf" : "no-such.conf");
	if (conf) {
		FILE *f = fopen(t_dconf, "w");

		if (!f || fputs(conf, f) < 0 || fclose(f))
			t_fail("write %s", t_dconf);
	}
	setenv("IVMC_SOCKET", t_sock, 1);
	/* A loaded CI machine may take more than the default 2 ms to say
	 * hello; tests of that bound set their own. */
	setenv("IVMC_CTL_BUDGET_US", "1000000", 0);
	return t_daemon_launch("ivmcd");
}

/* Start ivmcd again (the last one was killed) as t_daemon_start() did.
 * Returns its pid, also in t_dpid. */
static inline pid_t t_daemon_restart(void)
{
	return t_daemon_launch("restarted ivmcd");
}

/* How many fds pid has open. */
static inline int t_proc_fds(pid_t pid)
{
	char p[64];
	struct dirent *e;
	int n = 0;
	DIR *d;

	snprintf(p, sizeof(p), "/proc/%d/fd", (int)pid);
	d = opendir(p);
	if (!d)
		t_fail("opendir(%s): %s", p, strerror(errno));
	while ((e = readdir(d)))
		if (e->d_name[0] != '.')
			n++;
	closedir(d);
	return n;
}

/* SIGTERM the daemon and reap it (bounded). Returns its exit status. */
static inline int t_daemon_stop(pid_t pid)
{
	int st = 0;

	kill(pid, SIGCONT);
	kill(pid, SIGTERM);
	for (int i = 0; i < 500; i++) {
		if (waitpid(pid, &st, WNOHANG) == pid)
			return st;
		usleep(10000);
	}
	kill(pid, SIGKILL);
	waitpid(pid, &st, 0);
	t_fail("ivmcd did not stop on SIGTERM within 5 s");
}

/* Run this binary under ivmc-run as "SELF role port a b", its stdout on
 * out (if >= 0). Returns the pid. */
static inline pid_t t_ivmc_self(const char *role, int port, const char *a,
				const char *b, int out)
{
	char self[PATH_MAX], run[PATH_MAX], ps[32];
	ssize_t k = readlink("/proc/self/exe", self, sizeof(self) - 1);
	pid_t pid;

	if (k < 0)
		t_fail("readlink");
	self[k] = 0;
	t_bin(run, sizeof(run), "ivmc-run");
	snprintf(ps, sizeof(ps), "%d", port);
	pid = fork();
	if (pid < 0)
		t_fail("fork");
	if (pid == 0) {
		if (out >= 0)
			dup2(out, 1);
		execl(run, run, self, role, ps, a, b, (char *)NULL);
		_exit(127);
	}
	return pid;
}

/* The preload tests' driver (ivmcd started): this binary under ivmc-run as
 * "--server 0 a b", which says the port it listens on in the first line of
 * its stdout, then as "--client PORT a b". Both must exit 0 (each bounded
 * by an alarm of its own). */
static inline void t_ivmc_self_pair(const char *a, const char *b)
{
	char line[64] = { 0 };
	int p[2], st, sst = 0;
	pid_t s, c;
	FILE *f;

	if (pipe(p))
		t_fail("pipe");
	s = t_ivmc_self("--server", 0, a, b, p[1]);
	close(p[1]);
	f = fdopen(p[0], "r");
	if (!f || !fgets(line, sizeof(line), f))
		t_fail("server did not say its port");
	fclose(f);
	c = t_ivmc_self("--client", atoi(line), a, b, -1);
	if (waitpid(c, &st, 0) != c || !WIFEXITED(st) || WEXITSTATUS(st)) {
		kill(s, SIGTERM);
		waitpid(s, &sst, 0);
		t_fail("client failed (%#x; server %#x)", st, sst);
	}
	if (waitpid(s, &st, 0) != s || !WIFEXITED(st) || WEXITSTATUS(st))
		t_fail("server failed (%#x)", st);
}

/* Has ivmcd paired exactly n connections so far (ivmcctl --json status)?
 * When not, its status goes to stderr. */
static inline bool t_paired_exactly(int n)
{
	char cmd[PATH_MAX + 128], bin[PATH_MAX];

	t_bin(bin, sizeof(bin), "ivmcctl");
	snprintf(cmd, sizeof(cmd), "%s --json status | grep -q '\"paired\":%d,'",
		 bin, n);
	if (system(cmd) == 0)
		return true;
	snprintf(cmd, sizeof(cmd), "%s status >&2", bin);
	(void)!system(cmd);
	return false;
}

/* Run ivmcctl (-t 5000) with args; returns its exit status, its output
 * (stdout and stderr, NUL-terminated) in out. */
static inline int t_ivmcctl_run(const char *args, char *out, size_t len)
{
	char bin[PATH_MAX], cmd[PATH_MAX + 256];
	FILE *f;
	size_t n = 0;
	int st;

	t_bin(bin, sizeof(bin), "ivmcctl");
	snprintf(cmd, sizeof(cmd), "%s -t 5000 %s 2>&1", bin, args);
	fflush(stdout);
	f = popen(cmd, "r");
	T_ASSERT(f);
	while (n + 1 < len) {
		size_t k = fread(out + n, 1, len - 1 - n, f);

		if (!k)
			break;
		n += k;
	}
	out[n] = 0;
	st = pclose(f);
	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* The same for a command that must succeed, its output whole. */
static inline void t_ivmcctl(char *out, size_t len, const char *args)
{
	int st = t_ivmcctl_run(args, out, len);

	if (st != 0)
		t_fail("ivmcctl %s: status %d:\n%s", args, st, out);
	if (strlen(out) + 1 >= len)
		t_fail("ivmcctl %s: output too long", args);
}

/* Print what pid's fds are (their links), to stderr. */
static inline void t_show_fds(pid_t pid)
{
	char p[64], c[384], l[256];
	struct dirent *e;
	DIR *d;

	snprintf(p, sizeof(p), "/proc/%d/fd", (int)pid);
	d = opendir(p);
	while (d && (e = readdir(d))) {
		ssize_t k;

		if (e->d_name[0] == '.')
			continue;
		snprintf(c, sizeof(c), "%s/%s", p, e->d_name);
		k = readlink(c, l, sizeof(l) - 1);
		l[k > 0 ? k : 0] = 0;
		fprintf(stderr, "  fd %s -> %s\n", e->d_name, l);
	}
	if (d)
		closedir(d);
}

/* chunk bytes (4096 at most) each way between a and b, the same stream
 * offsets each way, verified; *off moves on. what names the case. */
static inline void t_exchange(struct ivmc_chan *a, struct ivmc_chan *b,
			      uint64_t *off, size_t chunk, const char *what)
{
	char buf[4096], got[4096];

	T_ASSERT(chunk <= sizeof(buf));
	t_fill(1, *off, buf, chunk);
	t_send_all(a, buf, chunk);
	t_recv_all(b, got, chunk);
	if (t_verify(1, *off, got, chunk))
		t_fail("%s: a->b corrupt at %llu", what, (unsigned long long)*off);
	t_fill(2, *off, buf, chunk);
	t_send_all(b, buf, chunk);
	t_recv_all(a, got, chunk);
	if (t_verify(2, *off, got, chunk))
		t_fail("%s: b->a corrupt at %llu", what, (unsigned long long)*off);
	*off += chunk;
}

/* A loopback TCP connection: *lfd listening (kept), *cfd and *afd its two
 * ends. v6: over ::1. */
static inline void t_tcp_pair(bool v6, int *lfd, int *cfd, int *afd)
{
	struct sockaddr_storage ss = { 0 };
	socklen_t len;
	int one = 1;

	if (v6) {
		struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;

		a->sin6_family = AF_INET6;
		a->sin6_addr = in6addr_loopback;
		len = sizeof(*a);
	} else {
		struct sockaddr_in *a = (struct sockaddr_in *)&ss;

		a->sin_family = AF_INET;
		a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		len = sizeof(*a);
	}
	*lfd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (*lfd < 0 || bind(*lfd, (struct sockaddr *)&ss, len) ||
	    listen(*lfd, 16) || getsockname(*lfd, (struct sockaddr *)&ss, &len))
		t_fail("listen: %s", strerror(errno));
	*cfd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (*cfd < 0 || connect(*cfd, (struct sockaddr *)&ss, len))
		t_fail("connect: %s", strerror(errno));
	*afd = accept4(*lfd, NULL, NULL, SOCK_CLOEXEC);
	if (*afd < 0)
		t_fail("accept: %s", strerror(errno));
	setsockopt(*cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	setsockopt(*afd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

/* Poll ivmc_tcp_state() of both handles (b may be NULL) every step_us
 * until neither is pending (at most ms). Returns the state of a (both
 * must agree for an attach). */
static inline int t_tcp_settle_every(struct ivmc_chan *a, struct ivmc_chan *b,
				     int ms, unsigned int step_us)
{
	int sa = 0, sb = 0;

	for (long i = 0; i < (long)ms * 1000 / step_us; i++) {
		sa = ivmc_tcp_state(a);
		sb = b ? ivmc_tcp_state(b) : 1;
		if (sa != 0 && sb != 0)
			break;
		usleep(step_us);
	}
	return sa;
}

/* The same, every millisecond. */
static inline int t_tcp_settle(struct ivmc_chan *a, struct ivmc_chan *b,
			       int ms)
{
	return t_tcp_settle_every(a, b, ms, 1000);
}

#endif
