/* SPDX-License-Identifier: MIT */
/*
 * Description: ivmcd's linger (--linger-us, --tick-us). A stream of
 * connections, one at a time, both ends wrapped with ivmc_tcp(), each
 * until attached, makes the daemon linger: registrations then only queue
 * and are taken at its next look, not when they wake it. Every
 * connection must attach and carry verified bytes both ways
 * (nothing a look picks up late is lost); status must count the lingers
 * and the fruitful looks; and once the burst is over the daemon must stop
 * looking (its look counter stands still while it is idle): a daemon that
 * kept ticking would burn CPU for nothing. Run with ticks, and with
 * --tick-us=0 (looks that yield instead of sleeping).
 */
#include <sys/resource.h>

#include "t_ctl.h"

#define N 150
#define CHUNK 512

/* A number after "key": in a JSON status; -1 if absent. */
static long long json_num(const char *js, const char *key)
{
	char k[64];
	const char *p;

	snprintf(k, sizeof(k), "\"%s\":", key);
	p = strstr(js, k);
	return p ? strtoll(p + strlen(k), NULL, 10) : -1;
}

static void counters(long long *lingers, long long *looks, long long *hits)
{
	static char out[1 << 18]; /* 150 channels of JSON */

	t_ivmcctl(out, sizeof(out), "--json status");
	*lingers = json_num(out, "lingers");
	*looks = json_num(out, "looks");
	*hits = json_num(out, "fruitful_looks");
	if (*lingers < 0 || *looks < 0 || *hits < 0)
		t_fail("status lacks the linger counters:\n%.400s", out);
}

static void burst(const char *extra)
{
	static struct ivmc_chan *h[N][2];
	static int fd[N][2];
	long long l0, k0, f0, l1, k1, f1, l2, k2, f2;
	struct sockaddr_in a = { .sin_family = AF_INET,
				 .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t len = sizeof(a);
	uint64_t t0;
	int lfd, st;
	pid_t d;

	/* A linger window far wider than the default 2 ms, so that a slow
	 * machine (or ASan) still counts 8 events within it: this test is
	 * about what lingering does, not when it starts. */
	t_dextra = "--linger-us=50000";
	t_dextra2 = extra;
	d = t_daemon_start(NULL);
	lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (lfd < 0 || bind(lfd, (struct sockaddr *)&a, sizeof(a)) ||
	    listen(lfd, N) || getsockname(lfd, (struct sockaddr *)&a, &len))
		t_fail("listen: %s", strerror(errno));
	counters(&l0, &k0, &f0);
	t0 = t_now_ns();
	/* The stream: a connection at a time, each until attached, as a
	 * client making one connection per request would; the daemon keeps
	 * up, so without lingering it would sleep between registrations. */
	for (int i = 0; i < N; i++) {
		fd[i][0] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (fd[i][0] < 0 ||
		    connect(fd[i][0], (struct sockaddr *)&a, sizeof(a)) ||
		    (fd[i][1] = accept4(lfd, NULL, NULL, SOCK_CLOEXEC)) < 0)
			t_fail("connection %d: %s", i, strerror(errno));
		T_ASSERT_OK(ivmc_tcp(fd[i][0], NULL, &h[i][0]));
		T_ASSERT_OK(ivmc_tcp(fd[i][1], NULL, &h[i][1]));
		/* polled finely: the next connection follows closely */
		st = t_tcp_settle_every(h[i][0], h[i][1],
					10000 * (int)t_slow(), 50);
		if (st != 1 || ivmc_tcp_state(h[i][1]) != 1)
			t_fail("%s: connection %d not attached: %d %d", extra,
			       i, st, ivmc_tcp_state(h[i][1]));
	}
	t0 = t_now_ns() - t0;
	for (int i = 0; i < N; i++) {
		uint64_t off = 0;

		for (int k = 0; k < 4; k++)
			t_exchange(h[i][0], h[i][1], &off, CHUNK, "ctl-linger");
	}
	counters(&l1, &k1, &f1);
	printf("%s: %d connections in %.1f ms, attached; lingers %lld, looks %lld, "
	       "fruitful %lld\n", extra, N, (double)t0 / 1e6, l1 - l0, k1 - k0, f1 - f0);
	/* Dense enough to linger (two or more registrations a connection,
	 * a connection every few hundred us), unless a wrapper (valgrind) slows every
	 * registration down to a rate that never is. */
	if (t_slow() == 1 && (l1 - l0 < 1 || f1 - f0 < 1))
		t_fail("%s: the stream never made the daemon linger", extra);
	for (int i = 0; i < N; i++) {
		ivmc_close(h[i][0]);
		ivmc_close(h[i][1]);
		close(fd[i][0]);
		close(fd[i][1]);
	}
	close(lfd);
	/* Idle now: after a linger's length (50 ms here; 200 ms is plenty)
	 * the daemon must sleep until woken. Our status requests are three
	 * events each, too few to start a linger. */
	usleep(200000);
	counters(&l1, &k1, &f1);
	usleep(500000);
	counters(&l2, &k2, &f2);
	printf("%s: idle 500 ms: lingers %lld, looks %lld\n", extra, l2 - l1,
	       k2 - k1);
	if (l2 != l1 || k2 - k1 > 2)
		t_fail("%s: an idle daemon kept looking (%lld looks, %lld "
		       "lingers in 500 ms)", extra, k2 - k1, l2 - l1);
	st = t_daemon_stop(d);
	T_ASSERT(WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

int main(void)
{
	struct rlimit rl = { 4096, 4096 };

	t_alarm(120 * t_slow());
	(void)setrlimit(RLIMIT_NOFILE, &rl);
	burst("--tick-us=100");
	burst("--tick-us=0");
	return T_PASS;
}
