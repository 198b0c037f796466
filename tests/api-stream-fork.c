/* SPDX-License-Identifier: MIT */
/*
 * Description: native API end to end across two processes: listen, accept,
 * connect, a checksummed stream each way at once with random send and
 * receive sizes, then end of stream each way.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "helpers.h"
#include "ivmc.h"

#define SEED_A 0x1111
#define SEED_B 0x2222

static uint64_t total = 64ull << 20;
static char path[64];

/* Send total bytes of stream seed with random sizes, then shut down. */
static void pump_out(struct ivmc_chan *c, uint64_t seed, uint64_t rs)
{
	static uint8_t buf[200000];
	uint64_t off = 0;

	while (off < total) {
		size_t n = 1 + t_rand64(&rs) % sizeof(buf);

		if (n > total - off)
			n = total - off;
		t_fill(seed, off, buf, n);
		ssize_t r = ivmc_send(c, buf, n, 0);
		if (r != (ssize_t)n) {
			ssize_t r2 = ivmc_send(c, buf + r, n - r, 0);
			t_fail("short send %zd of %zu at %llu, then %zd",
			       r, n, (unsigned long long)off, r2);
		}
		off += n;
	}
	T_ASSERT_OK(ivmc_shutdown(c, SHUT_WR));
}

/* Receive and verify the stream, then expect end of stream. */
static void pump_in(struct ivmc_chan *c, uint64_t seed, uint64_t rs)
{
	static uint8_t buf[300000];
	uint64_t off = 0;

	for (;;) {
		size_t n = 1 + t_rand64(&rs) % sizeof(buf);
		ssize_t r = ivmc_recv(c, buf, n, 0);

		T_ASSERT_OK(r);
		if (r == 0)
			break;
		T_ASSERT(t_verify(seed, off, buf, (size_t)r) == 0);
		off += (uint64_t)r;
	}
	T_ASSERT_EQ(off, total);
}

static void *in_thread(void *arg)
{
	pump_in(arg, SEED_A, 7);
	return NULL;
}

static void *out_thread(void *arg)
{
	pump_out(arg, SEED_A, 7);
	return NULL;
}

static void child(void *arg)
{
	struct ivmc_opts o = { .ring_size = 64 * 1024 };
	struct ivmc_chan *c;

	(void)arg;
	T_ASSERT_OK(ivmc_connect(path, &o, &c));
	pthread_t t;
	pthread_create(&t, NULL, in_thread, c);
	pump_out(c, SEED_B, 3);
	pthread_join(t, NULL);
	ivmc_close(c);
}

int main(void)
{
	struct ivmc_listener *l;
	struct ivmc_chan *c;
	pid_t pid;

	t_alarm(100);
	if (getenv("IVMC_LONG"))
		total = 1ull << 30;
	snprintf(path, sizeof(path), "/tmp/ivmc-test-%d.sock", getpid());
	T_ASSERT_OK(ivmc_listen(path, NULL, &l));
	pid = t_fork(child, NULL);
	T_ASSERT_OK(ivmc_accept(l, 0, &c));
	pthread_t t;
	pthread_create(&t, NULL, out_thread, c);
	pump_in(c, SEED_B, 3);
	pthread_join(t, NULL);
	T_ASSERT_EQ(t_wait(pid, 60000), 0);
	ivmc_close(c);
	ivmc_listener_close(l);
	return T_PASS;
}
