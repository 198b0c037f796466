/* SPDX-License-Identifier: MIT */
/*
 * Description: a hostile peer that got its channel through ivmcd, against
 * a native-API victim. For each behaviour of tests/hostile/ivmc-hostile
 * (honest, control socket closed after or before the CHAN, producer
 * counter past S with the deep word saying S holds everything, past S + L,
 * or backwards, consumer counter past the victim's producer, a counter
 * flipped valid/invalid while read, garbage in both directions' words, a
 * ring that never drains (the victim must block with S + L full), a stall,
 * a doorbell flood, death mid-record, and lies in the deep word: X far from
 * the counters, more than S holds before X or more than L holds after it,
 * while going deep or while reading L, back to S where the victim is not,
 * garbage above DEEP, the word flipped between the truth and lies while
 * published honestly), a fresh victim process listens on loopback, serves an
 * honest peer (ivmc_tcp on both ends, attached, a verified echoed stream)
 * and then the hostile program, whose connection it wraps with ivmc_tcp()
 * and echoes. The victim must stay alive; the honest connection must keep
 * carrying verified data on the ring; the bad connection must end, with
 * end of stream or -ECONNRESET/-EPIPE (an error where the peer broke the
 * layout), within a bound; and the thread blocked on it must not spin (its
 * CPU time stays under a generous bound). The hostile program itself
 * checks that it could not resize or write-seal the region.
 */
#include <time.h>

#include "t_hostile.h"

#define CASE_MS (12000 * (int)t_slow())
#define END_MS (8000 * (int)t_slow()) /* the bad connection must end within this */
#define WAIT_MS (5000 * (int)t_slow()) /* the honest peer's steps */

/* ---- the victim's echo threads ---- */

struct echo {
	struct ivmc_chan *h;
	pthread_t t;
	_Atomic bool done;
	ssize_t r;	 /* how it ended: 0, or the error */
	uint64_t bytes, cpu_ns, wall_ns;
};

static uint64_t thread_cpu_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void *echo_thread(void *arg)
{
	static __thread char buf[65536];
	struct echo *e = arg;
	uint64_t c0 = thread_cpu_ns(), t0 = t_now_ns();
	ssize_t r;

	for (;;) {
		r = ivmc_recv(e->h, buf, sizeof(buf), 0);
		if (r <= 0)
			break;
		e->bytes += (uint64_t)r;
		r = ivmc_send(e->h, buf, (size_t)r, 0);
		if (r < 0)
			break;
	}
	if (r == 0) /* echo the end of stream too */
		(void)ivmc_shutdown(e->h, SHUT_WR);
	e->r = r;
	e->cpu_ns = thread_cpu_ns() - c0;
	e->wall_ns = t_now_ns() - t0;
	e->done = true;
	return NULL;
}

static void echo_start(struct echo *e, int lfd)
{
	int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);

	if (fd < 0)
		t_fail("accept: %s", strerror(errno));
	T_ASSERT_OK(ivmc_tcp(fd, NULL, &e->h));
	T_ASSERT(pthread_create(&e->t, NULL, echo_thread, e) == 0);
}

static bool wait_done(struct echo *e, int ms)
{
	for (int i = 0; i < ms && !e->done; i++)
		usleep(1000);
	return e->done;
}

/* ---- one case, in a victim process of its own ---- */

static void run_case(void *arg)
{
	const struct hcase *hc = arg;
	struct echo good = { 0 }, bad = { 0 };
	struct sockaddr_in a;
	socklen_t len = sizeof(a);
	int lfd, up[2], down[2], st;
	pid_t honest, hostile;
	uint64_t moved;
	uint16_t port;
	char c;

	t_alarm(CASE_MS / 1000 + 3);
	lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	a = (struct sockaddr_in){ .sin_family = AF_INET,
				  .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	if (bind(lfd, (struct sockaddr *)&a, sizeof(a)) || listen(lfd, 4) ||
	    getsockname(lfd, (struct sockaddr *)&a, &len))
		t_fail("listen: %s", strerror(errno));
	port = ntohs(a.sin_port);
	T_ASSERT(pipe2(up, O_CLOEXEC) == 0 && pipe2(down, O_CLOEXEC) == 0);
	fflush(stdout);
	honest = fork();
	if (honest == 0)
		honest_peer(port, up[1], down[0], 200, 20 * t_slow());
	echo_start(&good, lfd);
	{
		struct pollfd p = { up[0], POLLIN, 0 };

		if (poll(&p, 1, WAIT_MS) != 1 || read(up[0], &c, 1) != 1)
			t_fail("the honest connection did not attach");
	}

	hostile = start_hostile(hc->mode, port);
	echo_start(&bad, lfd);
	if (!wait_done(&bad, END_MS))
		t_fail("%s: the bad connection did not end within %d ms",
		       hc->mode, END_MS);
	pthread_join(bad.t, NULL);
	st = reap(hostile, 3000 * (int)t_slow());
	printf("  %s: ended %zd (%s) after %.2f s, %llu bytes echoed, "
	       "CPU %.3f s, state %d, hostile status 0x%x\n", hc->mode, bad.r,
	       t_strerror(bad.r), (double)bad.wall_ns / 1e9,
	       (unsigned long long)bad.bytes, (double)bad.cpu_ns / 1e9,
	       ivmc_tcp_state(bad.h), st);
	if (bad.r != 0 && bad.r != -ECONNRESET && bad.r != -EPIPE)
		t_fail("%s: ended with %zd", hc->mode, bad.r);
	if (hc->must_err && bad.r == 0)
		t_fail("%s: a broken layout ended as a clean end of stream",
		       hc->mode);
	/* Not a timing goal: a spinning thread would use about its wall. */
	if (!cpu_ok(hc, (double)bad.cpu_ns / 1e9, (double)bad.wall_ns / 1e9))
		t_fail("%s: the victim's thread used %.3f s of CPU in %.3f s",
		       hc->mode, (double)bad.cpu_ns / 1e9,
		       (double)bad.wall_ns / 1e9);
	if (hc->peer_dies ? !WIFSIGNALED(st) : st != 0)
		t_fail("%s: the hostile program's status 0x%x", hc->mode, st);
	ivmc_close(bad.h);

	/* The honest connection went on throughout. */
	T_ASSERT(!good.done);
	T_ASSERT(write(down[1], "q", 1) == 1);
	{
		struct pollfd p = { up[0], POLLIN, 0 };

		if (poll(&p, 1, WAIT_MS) != 1 ||
		    read(up[0], &moved, sizeof(moved)) != sizeof(moved))
			t_fail("the honest peer did not finish");
	}
	T_ASSERT(wait_done(&good, WAIT_MS));
	pthread_join(good.t, NULL);
	T_ASSERT_EQ(good.r, 0);
	T_ASSERT_EQ(good.bytes, moved);
	T_ASSERT_EQ(t_wait(honest, WAIT_MS), 0);
	ivmc_close(good.h);
	printf("  %s: honest connection: %llu bytes verified\n", hc->mode,
	       (unsigned long long)moved);
	fflush(stdout);
}

int main(int argc, char **argv)
{
	int failed = 0, ran = 0;

	signal(SIGPIPE, SIG_IGN);
	t_daemon_start("pending_timeout 2s\n");
	for (size_t i = 0; i < N_CASES; i++) {
		uint64_t t0 = t_now_ns();
		int st;

		if (argc > 1 && strcmp(cases[i].mode, argv[1]))
			continue;
		fflush(stdout);
		st = t_wait(t_fork(run_case, (void *)&cases[i]), CASE_MS + 4000);
		ran++;
		printf("%s %s (%.2f s)\n", st ? "FAIL" : "ok  ", cases[i].mode,
		       (double)(t_now_ns() - t0) / 1e9);
		if (st)
			failed++;
	}
	if (kill(t_dpid, 0))
		t_fail("ivmcd died");
	t_daemon_stop(t_dpid);
	printf("%d of %d cases failed\n", failed, ran);
	return failed ? T_FAIL : T_PASS;
}
