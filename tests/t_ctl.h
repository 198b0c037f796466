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
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "t_api.h"

static char t_sock[128];
static pid_t t_dpid;
static const char *t_dextra; /* one more ivmcd argument, e.g. "--linger-us=200" */

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

/* Start ivmcd in the foreground on t_dir/ivmcd.sock with config conf (NULL:
 * none, the default policy) and wait (bounded) until it answers. Exports
 * IVMC_SOCKET. Returns its pid. */
static inline pid_t t_daemon_start(const char *conf)
{
	char bin[PATH_MAX], cpath[PATH_MAX], lpath[PATH_MAX];
	pid_t pid;

	t_tmpdir();
	t_path(t_sock, sizeof(t_sock), "ivmcd.sock");
	t_path(lpath, sizeof(lpath), "ivmcd.log");
	t_path(cpath, sizeof(cpath), conf ? "ivmcd.conf" : "no-such.conf");
	if (conf) {
		FILE *f = fopen(cpath, "w");

		if (!f || fputs(conf, f) < 0 || fclose(f))
			t_fail("write %s", cpath);
	}
	t_bin(bin, sizeof(bin), "ivmcd");
	setenv("IVMC_SOCKET", t_sock, 1);
	/* A loaded CI machine may take more than the default 2 ms to say
	 * hello; tests of that bound set their own. */
	setenv("IVMC_CTL_BUDGET_US", "1000000", 0);
	pid = fork();
	if (pid < 0)
		t_fail("fork");
	if (pid == 0) {
		/* A test that dies (failure, timeout) takes its daemon along. */
		prctl(PR_SET_PDEATHSIG, SIGTERM);
		execl(bin, "ivmcd", "-f", "-s", t_sock, "-c", cpath, "-l",
		      "debug", "-L", lpath, t_dextra, (char *)NULL);
		_exit(127);
	}
	for (int i = 0; i < 500; i++) {
		struct stat st;

		if (stat(t_sock, &st) == 0) {
			t_dpid = pid;
			return pid;
		}
		if (waitpid(pid, NULL, WNOHANG) == pid)
			t_fail("ivmcd exited at start (see %s)", lpath);
		usleep(10000);
	}
	t_fail("ivmcd did not start within 5 s");
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

/* Poll ivmc_tcp_state() of both handles until neither is pending (at most
 * ms). Returns the state of a (both must agree for an attach). */
static inline int t_tcp_settle(struct ivmc_chan *a, struct ivmc_chan *b,
			       int ms)
{
	int sa = 0, sb = 0;

	for (int i = 0; i < ms; i++) {
		sa = ivmc_tcp_state(a);
		sb = b ? ivmc_tcp_state(b) : 1;
		if (sa != 0 && sb != 0)
			break;
		usleep(1000);
	}
	return sa;
}

#endif
