/* SPDX-License-Identifier: MIT */
/*
 * Description: ivmcd stopped (SIGSTOP), not dead. ivmc_tcp() on new
 * connections still returns at once (the worst wall time over 50 pairs is
 * printed; only a generous bound is asserted), the handles wait (state 0:
 * their registrations sit in the control socket) and data flows on TCP,
 * verified. A fresh process pays at most its hello budget
 * (IVMC_CTL_BUDGET_US) once and then uses TCP (-ECONNREFUSED). Many more
 * registrations than the socket holds: the rest stay on TCP. After SIGCONT
 * the waiting pairs attach, and later connections attach.
 */
#include "t_ctl.h"

#define CHUNK	  1000
#define NPAIRS	  50
#define NFLOOD	  300
#define BOUND_NS  500000000ull /* per ivmc_tcp() call: generous */

struct pair {
	int lfd, cfd, afd;
	struct ivmc_chan *a, *b;
	uint64_t off;
};

static void daemon_kill_at_exit(void)
{
	if (t_dpid > 0 && getpid() == t_dir_owner) {
		kill(t_dpid, SIGCONT);
		kill(t_dpid, SIGKILL);
	}
}

static void exchange(struct pair *p, int rounds)
{
	char buf[CHUNK], got[CHUNK];

	for (int i = 0; i < rounds; i++) {
		t_fill(1, p->off, buf, CHUNK);
		t_send_all(p->a, buf, CHUNK);
		t_recv_all(p->b, got, CHUNK);
		if (t_verify(1, p->off, got, CHUNK))
			t_fail("a->b corrupt at %llu", (unsigned long long)p->off);
		t_fill(2, p->off, buf, CHUNK);
		t_send_all(p->b, buf, CHUNK);
		t_recv_all(p->a, got, CHUNK);
		if (t_verify(2, p->off, got, CHUNK))
			t_fail("b->a corrupt at %llu", (unsigned long long)p->off);
		p->off += CHUNK;
	}
}

/* Open a pair; *worst: the longest ivmc_tcp() call so far (ns). */
static void pair_open(struct pair *p, uint64_t *worst, uint64_t *sum)
{
	uint64_t t0, t1, t2;

	memset(p, 0, sizeof(*p));
	t_tcp_pair(false, &p->lfd, &p->cfd, &p->afd);
	t0 = t_now_ns();
	T_ASSERT_OK(ivmc_tcp(p->cfd, NULL, &p->a));
	t1 = t_now_ns();
	T_ASSERT_OK(ivmc_tcp(p->afd, NULL, &p->b));
	t2 = t_now_ns();
	if (t1 - t0 > *worst)
		*worst = t1 - t0;
	if (t2 - t1 > *worst)
		*worst = t2 - t1;
	*sum += t2 - t0;
}

static void pair_close(struct pair *p)
{
	T_ASSERT_OK(ivmc_close(p->a));
	T_ASSERT_OK(ivmc_close(p->b));
	close(p->cfd);
	close(p->afd);
	close(p->lfd);
}

static int on_ring(struct ivmc_chan *c)
{
	struct ivmc_stats st;

	T_ASSERT_OK(ivmc_stats(c, &st));
	return (int)st.on_ring;
}

/* The state letter of pid in /proc/PID/stat (R, S, T...). */
static char proc_state(pid_t pid)
{
	char path[64], buf[512], *rp;
	FILE *f;
	size_t n;

	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	f = fopen(path, "re");
	if (!f)
		return '?';
	n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = 0;
	rp = strrchr(buf, ')');
	return rp && rp[1] == ' ' ? rp[2] : '?';
}

static void wait_state(pid_t pid, bool stopped)
{
	for (int i = 0; i < 500; i++) {
		char s = proc_state(pid);

		if (stopped ? s == 'T' : (s != 'T' && s != 't'))
			return;
		usleep(10000);
	}
	t_fail("ivmcd did not %s within 5 s", stopped ? "stop" : "continue");
}

/* A process that starts while the daemon is stopped: its first
 * ivmc_tcp() waits for the hello at most its budget, the rest are TCP
 * at once. Exits 0 on success. */
struct fresh_arg {
	unsigned long budget_us;
	int go; /* read end: one byte when the daemon is stopped */
};

static void fresh(void *arg)
{
	const struct fresh_arg *fa = arg;
	struct pair p;
	uint64_t worst = 0, sum = 0;
	unsigned long budget_us = fa->budget_us;
	char b[32];

	if (read(fa->go, b, 1) != 1)
		t_fail("fresh process: no go");
	snprintf(b, sizeof(b), "%lu", budget_us);
	setenv("IVMC_CTL_BUDGET_US", b, 1);
	pair_open(&p, &worst, &sum);
	printf("fresh process (budget %lu us): slowest ivmc_tcp %.3f ms, "
	       "states %d %d\n", budget_us, (double)worst / 1e6,
	       ivmc_tcp_state(p.a), ivmc_tcp_state(p.b));
	T_ASSERT_EQ(ivmc_tcp_state(p.a), -ECONNREFUSED);
	T_ASSERT_EQ(ivmc_tcp_state(p.b), -ECONNREFUSED);
	/* Generous: the budget plus scheduling noise. */
	T_ASSERT(worst < budget_us * 1000ull + BOUND_NS);
	exchange(&p, 50);
	pair_close(&p);
}

int main(void)
{
	static struct pair ps[NPAIRS];
	static bool waiting[NPAIRS]; /* both ends pending while stopped */
	struct pair p;
	uint64_t worst = 0, sum = 0;
	struct fresh_arg fa = { .budget_us = 2000 };
	int go[2];
	int npend = 0, nref = 0, nother = 0, natt = 0;
	pid_t d, kid;

	t_alarm(90);
	if (pipe2(go, O_CLOEXEC))
		t_fail("pipe: %s", strerror(errno));
	fa.go = go[0];
	/* Our own hello happens while the daemon runs: give a slow machine
	 * room (the fresh process below uses the default budget). */
	setenv("IVMC_CTL_BUDGET_US", "1000000", 0);
	d = t_daemon_start(NULL);
	atexit(daemon_kill_at_exit);
	/* The fresh process is forked now, before any handle waits: a fork
	 * cancels the waiting ones (-ECANCELED, see atfork_prepare). Its
	 * control connection is made when it first calls ivmc_tcp(). */
	kid = t_fork(fresh, &fa);
	close(go[0]);
	pair_open(&p, &worst, &sum);
	exchange(&p, 10);
	T_ASSERT_EQ(t_tcp_settle(p.a, p.b, 5000), 1);

	T_ASSERT(kill(d, SIGSTOP) == 0);
	wait_state(d, true);
	/* The attached pair does not notice. */
	exchange(&p, 100);
	T_ASSERT_EQ(on_ring(p.a), 3);

	worst = sum = 0;
	for (int i = 0; i < NPAIRS; i++) {
		pair_open(&ps[i], &worst, &sum);
		exchange(&ps[i], 5);
		waiting[i] = true;
		for (int k = 0; k < 2; k++) {
			int s = ivmc_tcp_state(k ? ps[i].b : ps[i].a);

			npend += s == 0;
			nref += s == -ECONNREFUSED;
			nother += s != 0 && s != -ECONNREFUSED;
			waiting[i] &= s == 0;
		}
	}
	printf("daemon stopped: %d ivmc_tcp calls, slowest %.3f ms, mean %.3f ms; "
	       "states: %d pending, %d refused, %d other\n", 2 * NPAIRS,
	       (double)worst / 1e6, (double)sum / 2e6 / NPAIRS, npend, nref,
	       nother);
	T_ASSERT(worst < BOUND_NS);
	T_ASSERT_EQ(nother, 0);

	/* A process started now pays its budget once, then TCP. */
	T_ASSERT(write(go[1], "g", 1) == 1);
	close(go[1]);
	if (t_wait(kid, 30000) != 0)
		t_fail("fresh process failed");

	/* Far more registrations than the control socket holds: ivmc_tcp()
	 * still returns at once; what does not fit stays on TCP. */
	worst = sum = 0;
	npend = nref = nother = 0;
	for (int i = 0; i < NFLOOD; i++) {
		struct pair q;
		int s;

		pair_open(&q, &worst, &sum);
		exchange(&q, 1);
		s = ivmc_tcp_state(q.a);
		npend += s == 0;
		nref += s == -ECONNREFUSED;
		nother += s != 0 && s != -ECONNREFUSED;
		pair_close(&q);
	}
	printf("daemon stopped, %d more pairs opened and closed: slowest %.3f ms, "
	       "mean %.3f ms; first ends: %d pending, %d refused, %d other\n",
	       NFLOOD, (double)worst / 1e6, (double)sum / 2e6 / NFLOOD, npend,
	       nref, nother);
	T_ASSERT(worst < BOUND_NS);
	T_ASSERT_EQ(nother, 0);
	for (int i = 0; i < NPAIRS; i++)
		exchange(&ps[i], 5);

	T_ASSERT(kill(d, SIGCONT) == 0);
	wait_state(d, false);
	/* The registrations it finds queued pair up now. */
	npend = natt = 0;
	for (int i = 0; i < NPAIRS; i++) {
		int s, sb;

		if (!waiting[i]) { /* an end did not fit in the socket */
			exchange(&ps[i], 20);
			continue;
		}
		npend++;
		s = t_tcp_settle(ps[i].a, ps[i].b, 5000);
		sb = ivmc_tcp_state(ps[i].b);
		if (s != 1 || sb != 1)
			t_fail("pair %d, both ends waiting, after SIGCONT: %d %d",
			       i, s, sb);
		natt++;
		exchange(&ps[i], 20);
		T_ASSERT_EQ(on_ring(ps[i].a), 3);
	}
	printf("after SIGCONT: %d of %d pairs whose ends both waited attached\n",
	       natt, npend);
	for (int i = 0; i < NPAIRS; i++)
		pair_close(&ps[i]);

	/* New connections attach. */
	for (int i = 0; i < 5; i++) {
		struct pair q;

		pair_open(&q, &worst, &sum);
		exchange(&q, 5);
		T_ASSERT_EQ(t_tcp_settle(q.a, q.b, 5000), 1);
		T_ASSERT_EQ(ivmc_tcp_state(q.b), 1);
		exchange(&q, 50);
		T_ASSERT_EQ(on_ring(q.a), 3);
		pair_close(&q);
	}
	exchange(&p, 10);
	T_ASSERT_EQ(on_ring(p.a), 3);
	pair_close(&p);
	T_ASSERT_EQ(t_daemon_stop(d), 0);
	t_dpid = 0;
	return T_PASS;
}
