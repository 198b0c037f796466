/* SPDX-License-Identifier: MIT */
/*
 * Description: what the hostile-peer tests share: the behaviours of
 * tests/hostile/ivmc-hostile and what a victim must see for each, an
 * honest peer that keeps a verified echoed stream going over an ivmc_tcp()
 * connection, and starting and reaping the hostile program.
 */
#ifndef IVMC_TESTS_T_HOSTILE_H
#define IVMC_TESTS_T_HOSTILE_H

#include <poll.h>

#include "t_ctl.h"

#define SEED_G 0x600d
#define CHUNK 1000

struct hcase {
	const char *mode;
	bool must_err;	/* the victim must see an error, not an end */
	bool peer_dies; /* the hostile kills itself */
	/* CPU the victim's thread may use on the bad connection, in s; 0:
	 * half its wall time plus 0.3 s (a blocked thread must sleep). A
	 * doorbell flood wakes it until WAKE_NOPROGRESS_MAX (2000) wake-ups
	 * poison the channel, napping 1 ms each past the 64th and reading at
	 * most 64 doorbell bytes each: about 0.2 s of CPU in 2.3 s here. */
	double cpu_budget_s;
};

/* Whether cpu (s) is within hc's bound for a thread that ran wall s. */
static inline bool cpu_ok(const struct hcase *hc, double cpu, double wall)
{
	return cpu <= (hc->cpu_budget_s ? hc->cpu_budget_s : wall / 2 + 0.3);
}

static const struct hcase cases[] = {
	{ .mode = "honest" },
	{ .mode = "ctl-closed" },
	{ .mode = "ctl-early" },
	{ .mode = "prod-past-cap", .must_err = true },
	{ .mode = "prod-past-total", .must_err = true },
	{ .mode = "prod-back", .must_err = true },
	{ .mode = "cons-past", .must_err = true },
	{ .mode = "flip" },
	{ .mode = "garbage" },
	{ .mode = "never-drains" },
	{ .mode = "stall" },
	{ .mode = "flood", .must_err = true, .cpu_budget_s = 1.0 },
	{ .mode = "die-mid-record", .peer_dies = true },
	/* Lies in the deep word (docs/protocol.md 3.7), each refused by
	 * the victim's check of it against the counts. */
	{ .mode = "deep-x-far", .must_err = true },
	{ .mode = "deep-past-s", .must_err = true },
	{ .mode = "deep-past-l", .must_err = true },
	{ .mode = "deep-past-l-reading", .must_err = true },
	{ .mode = "deep-back-early", .must_err = true },
	{ .mode = "deep-garbage", .must_err = true },
	{ .mode = "deep-flip", .must_err = true },
};

#define N_CASES (sizeof(cases) / sizeof(cases[0]))

/* ---- the honest peer ---- */

/* Connect to 127.0.0.1:port, wrap with ivmc_tcp() and move a verified
 * echoed stream (a chunk, then pause_us) until a byte comes on down (or
 * max_s). Writes 'a' on up once attached, then the bytes moved; fails
 * unless still on the ring at the end. Exits. */
static inline void honest_peer(uint16_t port, int up, int down,
			       unsigned int pause_us, unsigned int max_s)
{
	struct pollfd p = { down, POLLIN, 0 };
	struct ivmc_chan *h;
	char buf[CHUNK], got[CHUNK];
	uint64_t off = 0, t0 = t_now_ns();
	bool said = false;
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_in a = { .sin_family = AF_INET,
				 .sin_port = htons(port),
				 .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };

	/* Dies with its victim: an orphan would print a stray failure into
	 * the next case's output. */
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof(a)))
		t_fail("honest: connect: %s", strerror(errno));
	T_ASSERT_OK(ivmc_tcp(fd, NULL, &h));
	while (poll(&p, 1, 0) == 0 &&
	       t_now_ns() - t0 < max_s * 1000000000ull) {
		t_fill(SEED_G, off, buf, CHUNK);
		t_send_all(h, buf, CHUNK);
		t_recv_all(h, got, CHUNK);
		if (t_verify(SEED_G, off, got, CHUNK))
			t_fail("honest connection: wrong echo at %llu",
			       (unsigned long long)off);
		off += CHUNK;
		if (!said && ivmc_tcp_state(h) == 1 && off > 20 * CHUNK) {
			said = true;
			T_ASSERT(write(up, "a", 1) == 1);
		}
		usleep(pause_us);
	}
	if (ivmc_tcp_state(h) != 1)
		t_fail("honest connection not on the ring at the end (%d)",
		       ivmc_tcp_state(h));
	T_ASSERT_OK(ivmc_shutdown(h, SHUT_WR));
	T_ASSERT_EQ(ivmc_recv(h, buf, 1, 0), 0);
	T_ASSERT(write(up, &off, sizeof(off)) == sizeof(off));
	ivmc_close(h);
	close(fd);
	_exit(0);
}

/* Fork and exec hostile/ivmc-hostile MODE PORT (beside this binary). */
static inline pid_t start_hostile(const char *mode, uint16_t port)
{
	char self[PATH_MAX], bin[PATH_MAX + 32], p[8];
	ssize_t k = readlink("/proc/self/exe", self, sizeof(self) - 1);
	pid_t pid;

	if (k < 0)
		t_fail("readlink");
	self[k] = 0;
	*strrchr(self, '/') = 0;
	snprintf(bin, sizeof(bin), "%s/hostile/ivmc-hostile", self);
	snprintf(p, sizeof(p), "%u", port);
	fflush(stdout);
	pid = fork();
	if (pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		execl(bin, "ivmc-hostile", mode, p, (char *)NULL);
		_exit(127);
	}
	return pid;
}

/* Wait for the hostile program (it may die by a signal): its status. */
static inline int reap(pid_t pid, int ms)
{
	int st;

	for (int i = 0; i < ms; i++) {
		if (waitpid(pid, &st, WNOHANG) == pid)
			return st;
		usleep(1000);
	}
	kill(pid, SIGKILL);
	waitpid(pid, &st, 0);
	return -1;
}

#endif
