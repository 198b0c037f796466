/* SPDX-License-Identifier: MIT */
/*
 * Description: the test helpers themselves: t_fill/t_verify agree on every
 * slice and catch a flipped byte, t_checksum chains, t_fork/t_wait report a
 * child's exit code, a signal and a timeout.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "helpers.h"

#define BUF_SIZE 4096

static void test_fill_verify(void)
{
	static unsigned char buf[BUF_SIZE], slice[BUF_SIZE];
	uint64_t rng = 42;

	t_fill(7, 0, buf, sizeof(buf));
	T_ASSERT_EQ(t_verify(7, 0, buf, sizeof(buf)), 0);
	for (int i = 0; i < 1000; i++) {
		size_t off = t_rand64(&rng) % BUF_SIZE;
		size_t len = t_rand64(&rng) % (BUF_SIZE - off + 1);

		/* Any slice of the stream, filled on its own, is that slice. */
		t_fill(7, off, slice, len);
		T_ASSERT(!memcmp(slice, buf + off, len));
		T_ASSERT_EQ(t_verify(7, off, buf + off, len), 0);
	}

	/* Another seed, or right bytes at the wrong offset, do not verify. */
	t_fill(8, 0, slice, 64);
	T_ASSERT(memcmp(slice, buf, 64) != 0);
	printf("expected t_verify mismatches follow\n");
	fflush(stdout);
	T_ASSERT_EQ(t_verify(7, 1, buf, 64), -1);
	T_ASSERT_EQ(t_verify(7, 8, buf, 64), -1);

	for (size_t k = 0; k < 70; k++) {
		buf[k] ^= 0x10;
		T_ASSERT_EQ(t_verify(7, 0, buf, 70), -1);
		buf[k] ^= 0x10;
	}
	T_ASSERT_EQ(t_verify(7, 0, buf, 70), 0);
}

static void test_checksum(void)
{
	unsigned char buf[1000];

	/* FNV-1a 64 reference values. */
	T_ASSERT(t_checksum(T_CHECKSUM_INIT, "", 0) == T_CHECKSUM_INIT);
	T_ASSERT(t_checksum(T_CHECKSUM_INIT, "a", 1) == 0xaf63dc4c8601ec8cULL);
	T_ASSERT(t_checksum(T_CHECKSUM_INIT, "foobar", 6) ==
		 0x85944171f73967e8ULL);

	t_fill(3, 0, buf, sizeof(buf));
	for (size_t cut = 0; cut <= sizeof(buf); cut += 37) {
		uint64_t whole = t_checksum(T_CHECKSUM_INIT, buf, sizeof(buf));
		uint64_t h = t_checksum(T_CHECKSUM_INIT, buf, cut);

		h = t_checksum(h, buf + cut, sizeof(buf) - cut);
		T_ASSERT(h == whole);
	}
}

static void test_rand(void)
{
	uint64_t a = 1, b = 1, c = 2;
	uint64_t x = t_rand64(&a);

	T_ASSERT(x == t_rand64(&b));
	T_ASSERT(x != t_rand64(&c));
	T_ASSERT(t_rand64(&a) != x);
}

static void child_exit7(void *arg)
{
	(void)arg;
	_exit(7);
}

static void child_return(void *arg)
{
	*(int *)arg = 1; /* the parent's copy must not change */
}

static void child_abort(void *arg)
{
	(void)arg;
	signal(SIGABRT, SIG_DFL);
	abort();
}

static void child_hang(void *arg)
{
	(void)arg;
	for (;;)
		pause();
}

static void test_fork_wait(void)
{
	int flag = 0;
	uint64_t t0;

	T_ASSERT_EQ(t_wait(t_fork(child_exit7, NULL), 10000), 7);
	T_ASSERT_EQ(t_wait(t_fork(child_return, &flag), 10000), 0);
	T_ASSERT_EQ(flag, 0);
	T_ASSERT_EQ(t_wait(t_fork(child_abort, NULL), 10000), -1);
	T_ASSERT_EQ(t_wait(t_fork(child_exit7, NULL), -1), 7);

	t0 = t_now_ns();
	T_ASSERT_EQ(t_wait(t_fork(child_hang, NULL), 50), -1);
	T_ASSERT(t_now_ns() > t0);
}

int main(void)
{
	t_alarm(60);
	test_fill_verify();
	test_checksum();
	test_rand();
	test_fork_wait();
	return T_PASS;
}
