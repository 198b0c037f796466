/* SPDX-License-Identifier: MIT */
/*
 * Description: ivmcd killed (SIGKILL) while channels are open and
 * restarted on the same socket path. Attached channels keep moving
 * verified data throughout; a handle still waiting for its other end
 * gives up (-ECONNREFUSED) once the process notices; connections made
 * while the daemon is down stay on TCP (-ECONNREFUSED) and work; the lock
 * frees with the dead daemon, so a new one starts on the same path; the
 * client reconnects by itself on its next ivmc_tcp() (after the
 * IVMC_CTL_RETRY_MS back-off if it had found the daemon gone, at once if
 * it had not noticed), new connections attach again, ivmcctl status
 * answers, and announced listeners are registered again with the new
 * daemon.
 */
#include <sys/un.h>

#include "t_ctl.h"

#define CHUNK 1000
#define RETRY_MS 100

struct pair {
	int lfd, cfd, afd;
	struct ivmc_chan *a, *b;
	uint64_t off;
};

static void daemon_kill_at_exit(void)
{
	if (t_dpid > 0 && getpid() == t_dir_owner)
		kill(t_dpid, SIGKILL);
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

/* A new loopback pair, both ends wrapped; returns the settled state: 1
 * (both attached) or an end's reason to stay on TCP. An end may register
 * while the other found no daemon (the back-off ended between the two
 * calls): it would wait for its pending_timeout, so do not wait for it. */
static int pair_open(struct pair *p)
{
	int s = 0;

	memset(p, 0, sizeof(*p));
	t_tcp_pair(false, &p->lfd, &p->cfd, &p->afd);
	T_ASSERT_OK(ivmc_tcp(p->cfd, NULL, &p->a));
	T_ASSERT_OK(ivmc_tcp(p->afd, NULL, &p->b));
	exchange(p, 5);
	for (int i = 0; i < 5000; i++) {
		int sa = ivmc_tcp_state(p->a), sb = ivmc_tcp_state(p->b);

		s = sa < 0 ? sa : sb < 0 ? sb : sa;
		if (s < 0 || (sa == 1 && sb == 1))
			break;
		usleep(1000);
	}
	return s;
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

static void daemon_kill(pid_t d)
{
	int st;

	T_ASSERT(kill(d, SIGKILL) == 0);
	T_ASSERT(waitpid(d, &st, 0) == d);
	T_ASSERT(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);
	t_dpid = 0;
}

/* Is the listener on port shown by ivmcctl status? */
static bool listed(uint16_t port)
{
	char out[65536], want[64];

	if (t_ivmcctl_run("--json status", out, sizeof(out)))
		t_fail("ivmcctl status: %s", out);
	snprintf(want, sizeof(want), "\"address\":\"127.0.0.1:%u\"", port);
	return strstr(out, want) != NULL;
}

/* A listener announced with ivmc_tcp_listen(); returns its port. */
static uint16_t announce(int *lfd)
{
	struct sockaddr_in sa = { .sin_family = AF_INET,
				  .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t len = sizeof(sa);

	*lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (*lfd < 0 || bind(*lfd, (struct sockaddr *)&sa, len) ||
	    listen(*lfd, 4) || getsockname(*lfd, (struct sockaddr *)&sa, &len))
		t_fail("listen: %s", strerror(errno));
	T_ASSERT_OK(ivmc_tcp_listen(*lfd));
	return ntohs(sa.sin_port);
}

/* Pairs until one attaches (the client may still be in its back-off);
 * returns how many it took, fails past max. */
static int attach_again(int max)
{
	for (int i = 1; i <= max; i++) {
		struct pair p;
		int st = pair_open(&p);

		if (st == 1) {
			T_ASSERT_EQ(ivmc_tcp_state(p.b), 1);
			exchange(&p, 50);
			T_ASSERT_EQ(on_ring(p.a), 3);
			T_ASSERT_EQ(on_ring(p.b), 3);
			pair_close(&p);
			return i;
		}
		/* Not yet: it stays TCP, and TCP is correct. */
		T_ASSERT_EQ(st, -ECONNREFUSED);
		exchange(&p, 5);
		pair_close(&p);
		usleep(RETRY_MS * 1000 + 20000);
	}
	t_fail("no attach in %d tries after the restart", max);
}

int main(void)
{
	struct pair p1, pend, down;
	struct ivmc_chan *lonely;
	char out[65536];
	pid_t d;
	int lfd, st, tries;
	uint16_t lport;

	t_alarm(90);
	setenv("IVMC_CTL_BUDGET_US", "1000000", 0);
	setenv("IVMC_CTL_RETRY_MS", "100", 1);
	d = t_daemon_start(NULL);
	atexit(daemon_kill_at_exit);

	/* Before: an attached pair, an announced listener, and a handle
	 * whose other end has not called ivmc_tcp() (it stays plain TCP). */
	T_ASSERT_EQ(pair_open(&p1), 1);
	exchange(&p1, 20);
	T_ASSERT_EQ(on_ring(p1.a), 3);
	lport = announce(&lfd);
	T_ASSERT(listed(lport));
	memset(&pend, 0, sizeof(pend));
	t_tcp_pair(false, &pend.lfd, &pend.cfd, &pend.afd);
	T_ASSERT_OK(ivmc_tcp(pend.cfd, NULL, &lonely));
	T_ASSERT_EQ(ivmc_tcp_state(lonely), 0);

	/* Down. */
	daemon_kill(d);
	exchange(&p1, 200);
	T_ASSERT_EQ(on_ring(p1.a), 3);
	T_ASSERT_EQ(on_ring(p1.b), 3);
	st = ivmc_tcp_state(lonely);
	printf("waiting handle, daemon just killed: state %d\n", st);
	T_ASSERT(st == 0 || st == -ECONNREFUSED);
	T_ASSERT(t_ivmcctl_run("status", out, sizeof(out)) != 0);
	printf("ivmcctl status while down: %s", out);
	/* New connections while down: TCP, -ECONNREFUSED, correct. */
	T_ASSERT_EQ(pair_open(&down), -ECONNREFUSED);
	T_ASSERT_EQ(ivmc_tcp_state(down.b), -ECONNREFUSED);
	exchange(&down, 100);
	/* That call found the daemon gone: the waiting handle gave up. */
	st = ivmc_tcp_state(lonely);
	printf("waiting handle, after a new ivmc_tcp(): state %d\n", st);
	T_ASSERT_EQ(st, -ECONNREFUSED);
	{
		char buf[CHUNK], got[CHUNK];

		t_fill(3, 0, buf, CHUNK);
		t_send_all(lonely, buf, CHUNK);
		T_ASSERT_EQ(recv(pend.afd, got, CHUNK, MSG_WAITALL), CHUNK);
		T_ASSERT(!t_verify(3, 0, got, CHUNK));
	}
	exchange(&p1, 50);

	/* Up again on the same path: the lock went with the dead daemon. */
	T_ASSERT(!t_daemon_answers());
	d = t_daemon_restart();
	/* Channels made before the restart are unknown to the new daemon;
	 * they go on as they were. */
	exchange(&p1, 100);
	T_ASSERT_EQ(on_ring(p1.a), 3);
	exchange(&down, 20);
	T_ASSERT_EQ(ivmc_tcp_state(down.a), -ECONNREFUSED);
	/* Not re-announced yet: nothing has talked to the new daemon. */
	printf("listener listed right after restart: %s\n",
	       listed(lport) ? "yes" : "no");
	tries = attach_again(20);
	printf("attached again after the restart on try %d\n", tries);
	T_ASSERT(listed(lport));
	T_ASSERT_EQ(t_ivmcctl_run("status", out, sizeof(out)), 0);

	/* Killed and restarted before the process notices: its next
	 * ivmc_tcp() finds the old connection dead and reconnects at once
	 * (no back-off), announcing the listener again. */
	daemon_kill(d);
	T_ASSERT(!t_daemon_answers());
	d = t_daemon_restart();
	T_ASSERT(!listed(lport));
	tries = attach_again(1);
	T_ASSERT(listed(lport));
	exchange(&p1, 100);
	T_ASSERT_EQ(on_ring(p1.a), 3);

	/* Unlisten reaches the new daemon. */
	T_ASSERT_OK(ivmc_tcp_unlisten(lfd));
	for (int i = 0; i < 100 && listed(lport); i++)
		usleep(10000);
	T_ASSERT(!listed(lport));
	close(lfd);

	pair_close(&down);
	T_ASSERT_OK(ivmc_close(lonely));
	close(pend.cfd);
	close(pend.afd);
	close(pend.lfd);
	/* p1 ends cleanly: end of stream after the last bytes. */
	{
		char buf[CHUNK], got[CHUNK];

		t_fill(1, p1.off, buf, CHUNK);
		t_send_all(p1.a, buf, CHUNK);
		T_ASSERT_OK(ivmc_shutdown(p1.a, SHUT_WR));
		t_recv_all(p1.b, got, CHUNK);
		T_ASSERT(!t_verify(1, p1.off, got, CHUNK));
		T_ASSERT_EQ(ivmc_recv(p1.b, got, 1, 0), 0);
	}
	pair_close(&p1);
	st = t_daemon_stop(d);
	t_dpid = 0;
	T_ASSERT(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	return T_PASS;
}
