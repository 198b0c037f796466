/* SPDX-License-Identifier: MIT */
/*
 * Description: a hostile peer that got its channel through ivmcd, against
 * an unmodified program under the preload: a threaded Python echo server
 * started with ivmc-run (one thread per connection, blocking recv and
 * sendall). One server for all the behaviours of tests/hostile/ivmc-hostile
 * (t_hostile.h), one after the other, while an honest client (ivmc_tcp(),
 * attached) keeps a verified echoed stream going through the same server.
 * For each: the server stays alive, the honest stream stays correct and on
 * the ring, the bad connection's thread ends (end of stream, or
 * ECONNRESET/EPIPE; an error where the peer broke the layout) within a
 * bound, and that thread's CPU time (Python's time.thread_time()) stays
 * under a generous bound. Skips without python3.
 */
#include "t_hostile.h"

#define END_MS 8000

static const char server_py[] =
	"import errno, socket, sys, threading, time\n"
	"l = socket.socket()\n"
	"l.bind(('127.0.0.1', 0))\n"
	"l.listen(8)\n"
	"lock = threading.Lock()\n"
	"def say(s):\n"
	"    with lock:\n"
	"        sys.stdout.write(s + '\\n')\n"
	"        sys.stdout.flush()\n"
	"say('port %d' % l.getsockname()[1])\n"
	"def echo(c, port):\n"
	"    t0, c0, n, how = time.monotonic(), time.thread_time(), 0, 'eof'\n"
	"    try:\n"
	"        while True:\n"
	"            d = c.recv(65536)\n"
	"            if not d:\n"
	"                break\n"
	"            n += len(d)\n"
	"            c.sendall(d)\n"
	"    except OSError as e:\n"
	"        how = errno.errorcode.get(e.errno, str(e.errno))\n"
	"    try:\n"
	"        c.shutdown(socket.SHUT_WR)\n"
	"    except OSError:\n"
	"        pass\n"
	"    say('end %d %s %d %.3f %.3f' % (port, how, n,\n"
	"        time.monotonic() - t0, time.thread_time() - c0))\n"
	"    c.close()\n"
	"while True:\n"
	"    c, a = l.accept()\n"
	"    say('accept %d' % a[1])\n"
	"    threading.Thread(target=echo, args=(c, a[1]), daemon=True).start()\n";

static int srv_fd = -1;
static pid_t srv_pid;
static char srv_buf[4096];
static size_t srv_len;

/* The server's next line (without the newline), waiting up to ms; NULL on
 * timeout or end of file. */
static char *srv_line(char *buf, size_t n, int ms)
{
	uint64_t end = t_now_ns() + (uint64_t)ms * 1000000ull;

	for (;;) {
		char *nl = memchr(srv_buf, '\n', srv_len);
		struct pollfd p = { srv_fd, POLLIN, 0 };
		ssize_t r;

		if (nl) {
			size_t k = (size_t)(nl - srv_buf) + 1;

			snprintf(buf, n, "%.*s", (int)(k - 1), srv_buf);
			memmove(srv_buf, srv_buf + k, srv_len - k);
			srv_len -= k;
			return buf;
		}
		if (srv_len == sizeof(srv_buf) || t_now_ns() >= end ||
		    poll(&p, 1, (int)((end - t_now_ns()) / 1000000) + 1) != 1)
			return NULL;
		r = read(srv_fd, srv_buf + srv_len, sizeof(srv_buf) - srv_len);
		if (r <= 0)
			return NULL;
		srv_len += (size_t)r;
	}
}

static void start_server(void)
{
	char path[PATH_MAX], run[PATH_MAX];
	int out[2];

	t_path(path, sizeof(path), "echo-server.py");
	{
		FILE *f = fopen(path, "w");

		if (!f || fputs(server_py, f) < 0 || fclose(f))
			t_fail("write %s", path);
	}
	t_bin(run, sizeof(run), "ivmc-run");
	T_ASSERT(pipe2(out, O_CLOEXEC) == 0);
	fflush(stdout);
	srv_pid = fork();
	if (srv_pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		dup2(out[1], 1);
		execl(run, "ivmc-run", "python3", "-u", path, (char *)NULL);
		_exit(127);
	}
	close(out[1]);
	srv_fd = out[0];
}

/* One hostile behaviour against the running server. */
static bool one_case(const struct hcase *hc, uint16_t port)
{
	char line[256], how[32];
	unsigned int aport = 0, eport = 0;
	unsigned long long n = 0;
	double wall = 0, cpu = 0;
	uint64_t t0 = t_now_ns();
	pid_t hostile = start_hostile(hc->mode, port);
	int st;
	bool ok = true;

	/* Its accept, then its end (the honest connection is quiet). */
	while (!aport && srv_line(line, sizeof(line), 5000))
		sscanf(line, "accept %u", &aport);
	while (aport && !eport && t_now_ns() - t0 < END_MS * 1000000ull &&
	       srv_line(line, sizeof(line), END_MS)) {
		if (sscanf(line, "end %u %31s %llu %lf %lf", &eport, how, &n,
			   &wall, &cpu) == 5 && eport != aport)
			t_fail("%s: another connection ended: %s", hc->mode,
			       line);
	}
	st = reap(hostile, 3000);
	if (!aport || !eport) {
		fprintf(stderr, "FAIL: %s: the bad connection did not end within %d ms\n",
			hc->mode, END_MS);
		return false;
	}
	printf("  %s: server thread ended %s after %.2f s, %llu bytes echoed, "
	       "CPU %.3f s, hostile status 0x%x\n", hc->mode, how, wall, n,
	       cpu, st);
	if (strcmp(how, "eof") && strcmp(how, "ECONNRESET") &&
	    strcmp(how, "EPIPE")) {
		fprintf(stderr, "FAIL: %s: ended with %s\n", hc->mode, how);
		ok = false;
	}
	if (hc->must_err && !strcmp(how, "eof")) {
		fprintf(stderr, "FAIL: %s: a broken layout ended as a clean end of stream\n",
			hc->mode);
		ok = false;
	}
	if (!cpu_ok(hc, cpu, wall)) {
		fprintf(stderr, "FAIL: %s: the thread used %.3f s of CPU in %.3f s\n",
			hc->mode, cpu, wall);
		ok = false;
	}
	if (hc->peer_dies ? !WIFSIGNALED(st) : st != 0) {
		fprintf(stderr, "FAIL: %s: the hostile program's status 0x%x\n",
			hc->mode, st);
		ok = false;
	}
	if (waitpid(srv_pid, &st, WNOHANG) == srv_pid)
		t_fail("%s: the server died (status 0x%x)", hc->mode, st);
	return ok;
}

int main(int argc, char **argv)
{
	char line[256];
	unsigned int port = 0;
	int up[2], down[2], failed = 0, ran = 0;
	uint64_t moved;
	pid_t honest;
	char c;

	if (system("python3 -c 'import threading' > /dev/null 2>&1"))
		t_skip("python3 not found");
	signal(SIGPIPE, SIG_IGN);
	t_alarm(60);
	t_daemon_start("pending_timeout 2s\n");
	start_server();
	if (!srv_line(line, sizeof(line), 10000) ||
	    sscanf(line, "port %u", &port) != 1)
		t_fail("the server did not start");

	/* The honest client, slow enough that the server's CPU is its own. */
	T_ASSERT(pipe2(up, O_CLOEXEC) == 0 && pipe2(down, O_CLOEXEC) == 0);
	fflush(stdout);
	honest = fork();
	if (honest == 0)
		honest_peer((uint16_t)port, up[1], down[0], 5000, 55);
	{
		struct pollfd p = { up[0], POLLIN, 0 };

		if (poll(&p, 1, 10000) != 1 || read(up[0], &c, 1) != 1)
			t_fail("the honest connection did not attach");
	}
	if (!srv_line(line, sizeof(line), 1000) || strncmp(line, "accept", 6))
		t_fail("no accept line for the honest client");

	for (size_t i = 0; i < N_CASES; i++) {
		uint64_t t0 = t_now_ns();
		bool ok;

		if (argc > 1 && strcmp(cases[i].mode, argv[1]))
			continue;
		ok = one_case(&cases[i], (uint16_t)port);
		ran++;
		failed += !ok;
		printf("%s %s (%.2f s)\n", ok ? "ok  " : "FAIL", cases[i].mode,
		       (double)(t_now_ns() - t0) / 1e9);
		fflush(stdout);
	}

	/* The honest stream went on throughout, on the ring. */
	T_ASSERT(write(down[1], "q", 1) == 1);
	{
		struct pollfd p = { up[0], POLLIN, 0 };

		if (poll(&p, 1, 10000) != 1 ||
		    read(up[0], &moved, sizeof(moved)) != sizeof(moved))
			t_fail("the honest client did not finish");
	}
	T_ASSERT_EQ(t_wait(honest, 5000), 0);
	printf("honest connection: %llu bytes verified through the server\n",
	       (unsigned long long)moved);
	kill(srv_pid, SIGTERM);
	reap(srv_pid, 5000);
	if (kill(t_dpid, 0))
		t_fail("ivmcd died");
	t_daemon_stop(t_dpid);
	printf("%d of %d cases failed\n", failed, ran);
	return failed ? T_FAIL : T_PASS;
}
