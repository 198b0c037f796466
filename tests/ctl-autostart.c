/* SPDX-License-Identifier: MIT */
/*
 * Description: IVMC_AUTOSTART=1 with no daemon at IVMC_SOCKET (a path in
 * the test's directory): eight processes start at once, each wraps a
 * loopback pair with ivmc_tcp() and retries (bounded) until it attaches.
 * Each spawns `ivmcd -d -s SOCKET` when it finds no daemon; exactly one
 * ends up serving the path, every other one exits with status 3 (the
 * lock), later connections attach, and the one daemon is stopped at the
 * end (found through /proc: only the ivmcd whose -s is our socket).
 * IVMC_DAEMON points at a wrapper script that records each spawned
 * ivmcd's exit status and then runs build/bin/ivmcd.
 */
#include <sys/stat.h>

#include "t_ctl.h"

#define NPROC 8
#define CHUNK 1000

static char exits_path[PATH_MAX];

/* Pids of the ivmcd processes serving t_sock: argv[0] ends in "ivmcd"
 * and "-s" t_sock is among the arguments (the wrapper shell's argv[0] is
 * the shell). */
static int find_daemons(pid_t *out, int max)
{
	DIR *d = opendir("/proc");
	struct dirent *e;
	int n = 0;

	if (!d)
		t_fail("opendir /proc");
	while ((e = readdir(d))) {
		char path[300], buf[4096], *p, *end, *a0;
		bool ours = false;
		ssize_t k;
		int fd;

		if (e->d_name[0] < '1' || e->d_name[0] > '9')
			continue;
		snprintf(path, sizeof(path), "/proc/%s/cmdline", e->d_name);
		fd = open(path, O_RDONLY | O_CLOEXEC);
		if (fd < 0)
			continue;
		k = read(fd, buf, sizeof(buf) - 1);
		close(fd);
		if (k <= 0)
			continue; /* a zombie, or gone */
		buf[k] = 0;
		end = buf + k;
		a0 = strrchr(buf, '/');
		a0 = a0 ? a0 + 1 : buf;
		if (strcmp(a0, "ivmcd"))
			continue;
		for (p = buf; p < end; p += strlen(p) + 1)
			if (!strcmp(p, "-s") && p + 3 < end &&
			    !strcmp(p + 3, t_sock))
				ours = true;
		if (ours && n < max)
			out[n++] = (pid_t)atoi(e->d_name);
	}
	closedir(d);
	return n;
}

/* Gone, or a zombie waiting for a reaper that is not us. */
static bool gone(pid_t pid)
{
	char path[64], buf[512], *rp;
	FILE *f;
	size_t n;

	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	f = fopen(path, "re");
	if (!f)
		return true;
	n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = 0;
	rp = strrchr(buf, ')');
	return !rp || (rp[1] == ' ' && (rp[2] == 'Z' || rp[2] == 'X'));
}

/* Stop every ivmcd on our socket (SIGTERM, then SIGKILL); bounded. */
static int stop_daemons(void)
{
	pid_t pids[16];
	int n = find_daemons(pids, 16);

	for (int i = 0; i < n; i++)
		kill(pids[i], SIGTERM);
	for (int i = 0; i < n; i++) {
		for (int k = 0; k < 500 && !gone(pids[i]); k++)
			usleep(10000);
		if (!gone(pids[i]))
			kill(pids[i], SIGKILL);
	}
	return n;
}

static void cleanup(void)
{
	if (t_sock[0] && getpid() == t_dir_owner)
		(void)stop_daemons();
}

/* One pair; returns its settled state (data verified either way). */
static int try_pair(void)
{
	struct ivmc_chan *a, *b;
	struct ivmc_stats st;
	uint64_t off = 0;
	int lfd, cfd, afd, s;

	t_tcp_pair(false, &lfd, &cfd, &afd);
	T_ASSERT_OK(ivmc_tcp(cfd, NULL, &a));
	T_ASSERT_OK(ivmc_tcp(afd, NULL, &b));
	for (int i = 0; i < 5; i++)
		t_exchange(a, b, &off, CHUNK, "ctl-autostart");
	/* Settled: both attached, or either end on TCP for good (an end
	 * that registered while the other found no daemon waits for its
	 * pending_timeout: no need to wait for that). */
	for (int i = 0; i < 5000; i++) {
		int sa = ivmc_tcp_state(a), sb = ivmc_tcp_state(b);

		s = sa < 0 ? sa : sb < 0 ? sb : sa;
		if (s < 0 || (sa == 1 && sb == 1))
			break;
		usleep(1000);
	}
	if (s == 1) {
		T_ASSERT_EQ(ivmc_tcp_state(b), 1);
		for (int i = 0; i < 20; i++)
			t_exchange(a, b, &off, CHUNK, "ctl-autostart");
		T_ASSERT_OK(ivmc_stats(a, &st));
		T_ASSERT_EQ(st.on_ring, 3);
	}
	T_ASSERT_OK(ivmc_close(a));
	T_ASSERT_OK(ivmc_close(b));
	close(cfd);
	close(afd);
	close(lfd);
	return s;
}

/* A process started at the same moment as the others (go: a pipe that
 * ends when the parent closes it). Exits 0 once a pair attached. */
static void racer(void *arg)
{
	const int *go = arg;
	uint64_t end;
	bool attached = false;
	int tries;
	char c;

	close(go[1]);
	(void)!read(go[0], &c, 1);
	end = t_now_ns() + 30000000000ull;
	for (tries = 1; tries <= 100 && t_now_ns() < end; tries++) {
		int s = try_pair();

		if (s == 1) {
			attached = true;
			break;
		}
		if (s != -ECONNREFUSED)
			t_fail("racer: state %d", s);
		usleep(20000);
	}
	if (!attached)
		t_fail("racer %d: never attached", (int)getpid());
	printf("racer %d: attached on try %d, %.1f ms after the start\n",
	       (int)getpid(), tries, (double)(t_now_ns() - (end - 30000000000ull)) / 1e6);
}

int main(void)
{
	char bin[PATH_MAX], wrap[PATH_MAX], line[64];
	pid_t kids[NPROC], pids[16];
	int go[2], n, zero = 0, three = 0, other = 0;
	uint64_t t0;
	FILE *f;

	t_alarm(90);
	t_tmpdir();
	atexit(cleanup);
	t_path(t_sock, sizeof(t_sock), "ivmcd.sock");
	t_path(exits_path, sizeof(exits_path), "exits");
	t_path(wrap, sizeof(wrap), "ivmcd-wrap");
	t_bin(bin, sizeof(bin), "ivmcd");
	f = fopen(wrap, "w");
	if (!f || fprintf(f, "#!/bin/sh\n\"%s\" \"$@\"\necho $? >> \"%s\"\n", bin,
			  exits_path) < 0 || fclose(f) || chmod(wrap, 0755))
		t_fail("write %s", wrap);
	setenv("IVMC_SOCKET", t_sock, 1);
	setenv("IVMC_AUTOSTART", "1", 1);
	setenv("IVMC_DAEMON", wrap, 1);
	setenv("IVMC_CTL_RETRY_MS", "50", 1);
	setenv("IVMC_CTL_BUDGET_US", "1000000", 0);
	T_ASSERT_EQ(find_daemons(pids, 16), 0);

	if (pipe2(go, O_CLOEXEC))
		t_fail("pipe");
	for (int i = 0; i < NPROC; i++)
		kids[i] = t_fork(racer, go);
	close(go[0]);
	t0 = t_now_ns();
	close(go[1]); /* all at once */
	for (int i = 0; i < NPROC; i++)
		if (t_wait(kids[i], 60000) != 0)
			t_fail("racer %d failed", i);

	/* A late loser (spawned just before its racer attached) or the
	 * winner's foreground half may still be on its way out. */
	n = find_daemons(pids, 16);
	for (int i = 0; i < 200 && n > 1; i++) {
		usleep(10000);
		n = find_daemons(pids, 16);
	}
	printf("ivmcd processes serving %s: %d\n", t_sock, n);
	T_ASSERT_EQ(n, 1);
	/* Every spawned ivmcd has exited by now but the one serving (its
	 * foreground half exited 0 once the socket was ready). */
	for (int i = 0; i < 500; i++) {
		int lines = 0;

		f = fopen(exits_path, "re");
		zero = three = other = 0;
		while (f && fgets(line, sizeof(line), f)) {
			int v = atoi(line);

			lines++;
			zero += v == 0;
			three += v == 3;
			other += v != 0 && v != 3;
		}
		if (f)
			fclose(f);
		if (lines && find_daemons(pids, 16) == 1 && zero == 1)
			break;
		usleep(10000);
	}
	printf("spawned: %d exited 0 (the one that serves), %d exited 3, %d other "
	       "(%.1f ms)\n", zero, three, other, (double)(t_now_ns() - t0) / 1e6);
	T_ASSERT_EQ(zero, 1);
	T_ASSERT_EQ(other, 0);

	/* Later connections, from a process that did not start it, attach. */
	for (int i = 0; i < 3; i++)
		T_ASSERT_EQ(try_pair(), 1);
	T_ASSERT_EQ(find_daemons(pids, 16), 1);
	{
		char cmd[2 * PATH_MAX];

		t_bin(bin, sizeof(bin), "ivmcctl");
		snprintf(cmd, sizeof(cmd), "%s -t 5000 status >/dev/null", bin);
		T_ASSERT_EQ(system(cmd), 0);
	}
	printf("later pairs attached (%.1f ms)\n", (double)(t_now_ns() - t0) / 1e6);
	T_ASSERT_EQ(stop_daemons(), 1);
	printf("stopped (%.1f ms)\n", (double)(t_now_ns() - t0) / 1e6);
	T_ASSERT_EQ(find_daemons(pids, 16), 0);
	return T_PASS;
}
