/* SPDX-License-Identifier: MIT */
/*
 * Description: an attached ivmc_tcp() handle whose directions are still
 * on TCP (no epoch opened yet) arms for poll instead of reporting ready
 * at once, and the event loop of ivmc_tcp(3) — ivmc_poll_arm(), then
 * poll() on ivmc_fd() and the TCP fd — wakes for data that comes over
 * TCP and for data that comes through the ring, with nothing lost.
 */
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>

#include "t_ctl.h"

/* Receive n bytes non-blocking with the documented loop. */
static void recv_polled(struct ivmc_chan *h, int tcp, uint64_t seed,
			uint64_t off, size_t n, int *sleeps)
{
	char buf[4096];
	size_t got = 0;

	for (int guard = 0; got < n && guard < 100000; guard++) {
		ssize_t r = ivmc_recv(h, buf, n - got < sizeof(buf) ? n - got
							       : sizeof(buf),
				      IVMC_NONBLOCK);

		if (r > 0) {
			if (t_verify(seed, off + got, buf, (size_t)r))
				t_fail("corrupt at %llu", (unsigned long long)(off + got));
			got += (size_t)r;
			continue;
		}
		if (r != -EAGAIN)
			t_fail("recv: %s", t_strerror(r));
		r = ivmc_poll_arm(h, POLLIN);
		if (r < 0)
			t_fail("poll_arm: %s", t_strerror(r));
		if (r == 0) {
			struct pollfd p[2] = { { ivmc_fd(h), POLLIN, 0 },
					       { tcp, POLLIN, 0 } };

			if (poll(p, 2, 10000) <= 0)
				t_fail("poll: nothing in 10 s");
			(*sleeps)++;
		}
	}
	if (got != n)
		t_fail("short: %zu of %zu", got, n);
}

#define ROUNDS 50

static _Atomic int turn; /* the round the sender may send */

/* b's side: each round waits for the receiver to be about to sleep, then
 * a little more, then sends, so that the receiver really polls. */
static void *sender(void *arg)
{
	struct ivmc_chan *b = arg;
	char buf[1000];

	for (int round = 0; round < ROUNDS; round++) {
		for (int k = 0; k < 10000 && atomic_load(&turn) <= round; k++)
			usleep(100);
		usleep(round % 2 ? 2000 : 200);
		t_fill(7, (uint64_t)round * sizeof(buf), buf, sizeof(buf));
		t_send_all(b, buf, sizeof(buf));
	}
	return NULL;
}

int main(void)
{
	pthread_t th;
	struct ivmc_chan *a, *b;
	char buf[1000];
	struct ivmc_stats st;
	int lfd, cfd, afd, sleeps = 0, armed = 0;
	uint64_t off = 0;
	pid_t d;

	t_alarm(60);
	d = t_daemon_start(NULL);
	t_tcp_pair(false, &lfd, &cfd, &afd);
	T_ASSERT_OK(ivmc_tcp(cfd, NULL, &a));
	T_ASSERT_OK(ivmc_tcp(afd, NULL, &b));
	if (t_tcp_settle(a, b, 5000) != 1 || ivmc_tcp_state(b) != 1)
		t_fail("not attached");
	/* Attached, nothing sent: no epoch yet, both read TCP. Armed, not
	 * ready (this spun before: it said POLLIN at once). */
	for (int i = 0; i < 3; i++)
		armed += ivmc_poll_arm(a, POLLIN) == 0;
	T_ASSERT_EQ(armed, 3);
	T_ASSERT_EQ(ivmc_poll_arm(a, POLLOUT), POLLOUT); /* TCP has room */
	/* Data from b wakes a, whichever path it takes (the first chunk
	 * goes on TCP, the rest through the ring once an epoch opens). */
	if (pthread_create(&th, NULL, sender, b))
		t_fail("pthread_create");
	for (int round = 0; round < ROUNDS; round++) {
		atomic_store(&turn, round + 1);
		recv_polled(a, cfd, 7, off, sizeof(buf), &sleeps);
		off += sizeof(buf);
	}
	pthread_join(th, NULL);
	printf("%d rounds, %d sleeps in poll\n", ROUNDS, sleeps);
	/* Each round sent after a delay: the loop must have slept, not spun
	 * (the bug: ivmc_poll_arm() said ready at once, never 0). */
	T_ASSERT(sleeps >= ROUNDS / 2);
	T_ASSERT_EQ(ivmc_stats(a, &st), 0);
	T_ASSERT(st.on_ring & 2); /* b -> a came through the ring */
	T_ASSERT_OK(ivmc_close(a));
	T_ASSERT_OK(ivmc_close(b));
	close(cfd);
	close(afd);
	close(lfd);
	t_daemon_stop(d);
	return T_PASS;
}
