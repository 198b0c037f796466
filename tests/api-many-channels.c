/* SPDX-License-Identifier: MIT */
/*
 * Description: one process holds 300 channels at once, all connected from
 * one forked child. Each channel carries its own checksummed message each
 * way (read in a different order than written, so crosstalk shows), then
 * all are closed and neither side has an fd or a mapping left over.
 */
#include <sys/resource.h>

#include "t_api.h"

#define N_CHAN 300
#define RING 4096
#define MAX_PAYLOAD 3000 /* header + payload fit in one ring: no blocking */

struct msg_hdr {
	uint32_t idx, len;
	uint64_t sum;
};

static char path[128];

static uint64_t seed_of(int i, int dir)
{
	return (dir ? 0xb0000000ull : 0xa0000000ull) + (uint64_t)i;
}

static uint32_t len_of(int i, int dir)
{
	return 1 + (uint32_t)((i * 97 + dir * 1231) % MAX_PAYLOAD);
}

static void send_msg(struct ivmc_chan *c, int i, int dir)
{
	static uint8_t buf[sizeof(struct msg_hdr) + MAX_PAYLOAD];
	struct msg_hdr h = { (uint32_t)i, len_of(i, dir), 0 };

	t_fill(seed_of(i, dir), 0, buf + sizeof(h), h.len);
	h.sum = t_checksum(T_CHECKSUM_INIT, buf + sizeof(h), h.len);
	memcpy(buf, &h, sizeof(h));
	t_send_all(c, buf, sizeof(h) + h.len);
}

static void recv_msg(struct ivmc_chan *c, int i, int dir)
{
	static uint8_t buf[MAX_PAYLOAD];
	struct msg_hdr h;

	t_recv_all(c, &h, sizeof(h));
	if (h.idx != (uint32_t)i || h.len != len_of(i, dir))
		t_fail("channel %d carried the message of channel %u (len %u)",
		       i, h.idx, h.len);
	t_recv_all(c, buf, h.len);
	if (t_checksum(T_CHECKSUM_INIT, buf, h.len) != h.sum ||
	    t_verify(seed_of(i, dir), 0, buf, h.len))
		t_fail("channel %d: message %d corrupted", i, dir);
}

/* A permutation of [0, N_CHAN) from a seed. */
static void shuffle(int *order, uint64_t seed)
{
	for (int i = 0; i < N_CHAN; i++)
		order[i] = i;
	for (int i = N_CHAN - 1; i > 0; i--) {
		int j = (int)(t_rand64(&seed) % (uint64_t)(i + 1));
		int t = order[i];

		order[i] = order[j];
		order[j] = t;
	}
}

static void child(void *arg)
{
	static struct ivmc_chan *c[N_CHAN];
	struct ivmc_opts o = { .ring_size = RING };
	int order[N_CHAN], fds0 = t_count_fds(), maps0 = t_count_maps();

	(void)arg;
	for (int i = 0; i < N_CHAN; i++) {
		int r = ivmc_connect(path, &o, &c[i]);

		if (r)
			t_fail("connect #%d: %d (%s)", i, r, t_strerror(r));
	}
	if (t_count_fds() < fds0 + N_CHAN)
		t_fail("%d channels but only %d more fds", N_CHAN,
		       t_count_fds() - fds0);
	for (int i = N_CHAN - 1; i >= 0; i--)
		recv_msg(c[i], i, 0);
	shuffle(order, 7);
	for (int k = 0; k < N_CHAN; k++)
		send_msg(c[order[k]], order[k], 1);
	for (int i = 0; i < N_CHAN; i++)
		T_ASSERT_OK(ivmc_close(c[i]));
	T_ASSERT_EQ(t_count_fds(), fds0);
	T_ASSERT_EQ(t_count_maps(), maps0);
}

static void raise_nofile(rlim_t want)
{
	struct rlimit rl;

	T_ASSERT(getrlimit(RLIMIT_NOFILE, &rl) == 0);
	if (rl.rlim_cur >= want)
		return;
	if (rl.rlim_max < want)
		rl.rlim_max = want; /* needs CAP_SYS_RESOURCE */
	rl.rlim_cur = want;
	if (setrlimit(RLIMIT_NOFILE, &rl))
		t_skip("RLIMIT_NOFILE too low for 300 channels and cannot be raised");
}

int main(void)
{
	static struct ivmc_chan *c[N_CHAN];
	struct ivmc_listener *l;
	int order[N_CHAN], fds0, maps0;
	pid_t pid;
	char x;

	t_alarm(50);
	raise_nofile(2 * N_CHAN + 64);
	t_tmpdir();
	t_path(path, sizeof(path), "many.sock");
	fds0 = t_count_fds();
	maps0 = t_count_maps();

	T_ASSERT_OK(ivmc_listen(path, NULL, &l));
	pid = t_fork(child, NULL);
	for (int i = 0; i < N_CHAN; i++) {
		int r = ivmc_accept(l, 0, &c[i]);

		if (r)
			t_fail("accept #%d: %d (%s)", i, r, t_strerror(r));
	}
	T_ASSERT_OK(ivmc_listener_close(l));
	/* All open at once: every one still has its own message to carry. */
	for (int i = 0; i < N_CHAN; i++)
		send_msg(c[i], i, 0);
	shuffle(order, 11);
	for (int k = 0; k < N_CHAN; k++)
		recv_msg(c[order[k]], order[k], 1);
	T_ASSERT_EQ(t_wait(pid, 30000), 0);
	/* The child closed every channel: end of stream on each. */
	for (int i = 0; i < N_CHAN; i++) {
		ssize_t r = ivmc_recv(c[i], &x, 1, 0);

		if (r != 0)
			t_fail("channel %d after the peer closed: %zd (%s), want 0",
			       i, r, t_strerror(r));
		T_ASSERT_OK(ivmc_close(c[i]));
	}
	T_ASSERT_EQ(t_count_fds(), fds0);
	T_ASSERT_EQ(t_count_maps(), maps0);
	return T_PASS;
}
