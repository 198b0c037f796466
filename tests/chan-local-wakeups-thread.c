/* SPDX-License-Identifier: MIT */
/*
 * Description: changes made on this end reach this end's own sleepers:
 * SHUT_RD ends a blocked recv (0), in another thread or in a fork child
 * that shares the end (also after this thread slept as the poller, so the
 * child inherits the parent's kick set), a poison found by one thread ends the
 * other thread's blocked recv (-ECONNRESET), on ring-only channels (no side
 * stream to wake them); ivmc_poll_arm-style arming reports this end's own
 * shutdown as ready; a region fd opened read-only is refused.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <sys/mman.h>
#include <sys/wait.h>

#include "helpers.h"
#include "t_chan.h"
#include "transport/transport.h"

static struct t_pair p;
static _Atomic ssize_t blocked_ret; /* written by the blocked thread */

static void *blocked_recv(void *arg)
{
	char b[16];

	(void)arg;
	blocked_ret = t_recv(p.a, b, sizeof(b), 0);
	return NULL;
}

/* Start a thread blocked in recv on end a; after settle_ms it must still be
 * blocked (nothing was sent). */
static pthread_t start_blocked(void)
{
	pthread_t th;

	blocked_ret = 1000;
	T_ASSERT_EQ(pthread_create(&th, NULL, blocked_recv, NULL), 0);
	poll(NULL, 0, 200);
	T_ASSERT_EQ(blocked_ret, 1000);
	return th;
}

/* The blocked thread must return within 3 s. */
static void join_within(pthread_t th, const char *what)
{
	for (int i = 0; i < 300 && blocked_ret == 1000; i++)
		poll(NULL, 0, 10);
	if (blocked_ret == 1000)
		t_fail("%s: the blocked recv did not return within 3 s", what);
	T_ASSERT_EQ(pthread_join(th, NULL), 0);
}

static void shut_rd_wakes(void)
{
	pthread_t th;

	t_chan_pair(&p, 4096, false, 0, CHAN_WAIT_SLEEP);
	th = start_blocked();
	T_ASSERT_OK(chan_shutdown(p.a, SHUT_RD));
	join_within(th, "SHUT_RD");
	T_ASSERT_EQ(blocked_ret, 0);
	t_chan_pair_close(&p);
}

/* A child blocked in recv on the end it shares with us: our SHUT_RD ends
 * it. First this thread sleeps as a poller once (ended by a send from a
 * sibling), so that the child is forked with our kick set in hand. */
static void *send_later(void *arg)
{
	poll(NULL, 0, 100);
	T_ASSERT_EQ(t_send(arg, "x", 1, 0), 1);
	return NULL;
}

static void shut_rd_wakes_fork_child(void)
{
	struct t_pair q;
	pthread_t th;
	char b[16];
	pid_t pid;
	int st;

	t_chan_pair(&q, 4096, false, 0, CHAN_WAIT_SLEEP);
	T_ASSERT_EQ(pthread_create(&th, NULL, send_later, q.b), 0);
	T_ASSERT_EQ(t_recv(q.a, b, sizeof(b), 0), 1);
	T_ASSERT_EQ(pthread_join(th, NULL), 0);
	t_chan_pair_close(&q);

	t_chan_pair(&p, 4096, false, 0, CHAN_WAIT_SLEEP);
	pid = fork();
	T_ASSERT(pid >= 0);
	if (pid == 0) {
		alarm(5);
		_exit(t_recv(p.a, b, sizeof(b), 0) == 0 ? 0 : 1);
	}
	poll(NULL, 0, 200);
	T_ASSERT_EQ(waitpid(pid, &st, WNOHANG), 0); /* still blocked */
	T_ASSERT_OK(chan_shutdown(p.a, SHUT_RD));
	T_ASSERT_EQ(waitpid(pid, &st, 0), pid);
	if (!WIFEXITED(st) || WEXITSTATUS(st))
		t_fail("fork child: the blocked recv did not end with 0 "
		       "(status %#x; SIGALRM: it hung)", st);
	t_chan_pair_close(&p);
}

static void poison_wakes_sibling(void)
{
	struct ivmc_shm_hdr *h;
	pthread_t th;
	char b[8] = { 0 };

	t_chan_pair(&p, 4096, false, 0, CHAN_WAIT_SLEEP);
	th = start_blocked();
	/* Forge CLOSED in a's own producer word (a ring-only channel cannot
	 * close): a's next publish finds it and poisons the channel. */
	T_ASSERT_OK(xport_map(p.region, 0, IVMC_SHM_HDR_SIZE, (void **)&h));
	atomic_fetch_or(&h->dir[0].prod, IVMC_PW_CLOSED);
	T_ASSERT_EQ(t_send(p.a, b, sizeof(b), 0), -ECONNRESET);
	join_within(th, "poison");
	T_ASSERT_EQ(blocked_ret, -ECONNRESET);
	munmap(h, IVMC_SHM_HDR_SIZE);
	t_chan_pair_close(&p);
}

static void arm_sees_own_shutdown(void)
{
	static char fill[4096];

	t_chan_pair(&p, 4096, false, 0, CHAN_WAIT_ADAPTIVE);
	T_ASSERT_EQ(chan_poll_arm(p.a, POLLIN), 0); /* nothing yet: armed */
	T_ASSERT_OK(chan_shutdown(p.a, SHUT_RD));
	T_ASSERT_EQ(chan_poll_arm(p.a, POLLIN), POLLIN);
	T_ASSERT_EQ(t_send(p.a, fill, sizeof(fill), 0), (ssize_t)sizeof(fill));
	T_ASSERT_EQ(chan_poll_arm(p.a, POLLOUT), 0); /* full: armed */
	T_ASSERT_OK(chan_shutdown(p.a, SHUT_WR));
	T_ASSERT_EQ(chan_poll_arm(p.a, POLLOUT), POLLOUT);
	T_ASSERT_EQ(t_send(p.a, fill, 1, 0), -EPIPE);
	t_chan_pair_close(&p);
}

static void read_only_region_refused(void)
{
	struct chan_cfg cfg = { .side = 1, .side_fd = -1 };
	char path[64];
	struct chan *c;
	int sv[2], ro;

	t_chan_pair(&p, 4096, false, 0, CHAN_WAIT_ADAPTIVE);
	snprintf(path, sizeof(path), "/proc/self/fd/%d", p.region);
	ro = open(path, O_RDONLY | O_CLOEXEC);
	T_ASSERT(ro >= 0);
	T_ASSERT(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
	T_ASSERT_EQ(chan_open(&cfg, ro, sv[0], &c), -EBADFD);
	close(ro);
	close(sv[0]);
	close(sv[1]);
	t_chan_pair_close(&p);
}

int main(void)
{
	t_alarm(30);
	shut_rd_wakes();
	shut_rd_wakes_fork_child();
	poison_wakes_sibling();
	arm_sees_own_shutdown();
	read_only_region_refused();
	return T_PASS;
}
