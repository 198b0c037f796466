/* SPDX-License-Identifier: MIT */
/*
 * Description: helpers shared by the test programs: exit codes, assertions,
 * deterministic data streams, checksums, and forked children with timeouts.
 */
#ifndef IVMC_TESTS_HELPERS_H
#define IVMC_TESTS_HELPERS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* Exit codes understood by tests/run.sh. */
#define T_PASS 0
#define T_FAIL 1
#define T_SKIP 77

/* Start value for t_checksum() (the FNV-1a 64 offset basis). */
#define T_CHECKSUM_INIT 0xcbf29ce484222325ULL

/* Print "file:line: message" to stderr and exit(T_FAIL). */
#define t_fail(...) t_fail_at(__FILE__, __LINE__, __VA_ARGS__)

/* Fail with file:line and the expression text unless cond is true. */
#define T_ASSERT(cond)                                         \
	do {                                                   \
		if (!(cond))                                   \
			t_fail("assertion failed: %s", #cond); \
	} while (0)

/* Fail unless a == b, printing both expressions and both values (long long). */
#define T_ASSERT_EQ(a, b)                                                   \
	do {                                                                \
		long long t_a_ = (long long)(a), t_b_ = (long long)(b);     \
		if (t_a_ != t_b_)                                           \
			t_fail("assertion failed: %s == %s (%lld != %lld)", \
			       #a, #b, t_a_, t_b_);                         \
	} while (0)

/* Fail unless expr >= 0 (negative errno convention), naming the error. */
#define T_ASSERT_OK(expr)                                           \
	do {                                                        \
		long long t_r_ = (long long)(expr);                 \
		if (t_r_ < 0)                                       \
			t_fail("%s failed: %lld (%s)", #expr, t_r_, \
			       t_strerror(t_r_));                   \
	} while (0)

/* Backend of t_fail(): print "file:line: fmt..." to stderr, exit(T_FAIL). */
__attribute__((noreturn, format(printf, 3, 4))) void
t_fail_at(const char *file, int line, const char *fmt, ...);

/* Print reason as the last stderr line (run.sh shows it), exit(T_SKIP). */
__attribute__((noreturn)) void t_skip(const char *reason);

/* strerror(-ret) for a negative-errno return value; "OK" if ret >= 0. */
const char *t_strerror(long long ret);

/* Monotonic clock in nanoseconds. */
uint64_t t_now_ns(void);

/* CPU time (user + system) of this process, all threads, in ns. */
uint64_t t_cpu_ns(void);

/* Next value of a deterministic PRNG (splitmix64); any seed, including 0. */
uint64_t t_rand64(uint64_t *state);

/* FNV-1a 64 of buf, chained from h (start: T_CHECKSUM_INIT). */
uint64_t t_checksum(uint64_t h, const void *buf, size_t n);

/* Fill buf with bytes [off, off + n) of the stream named by seed. */
void t_fill(uint64_t seed, uint64_t off, void *buf, size_t n);

/* 0 if buf is bytes [off, off + n) of stream seed; else print, -1. */
int t_verify(uint64_t seed, uint64_t off, const void *buf, size_t n);

/* Fork a child that runs fn(arg) then _exit(0); returns its pid. */
pid_t t_fork(void (*fn)(void *), void *arg);

/* A connected loopback TCP pair, both ends blocking (skips the test if
 * there is no TCP on loopback). */
void t_loopback_pair(int fd[2]);

/* Child's exit status, or -1 on timeout (SIGKILLed) or death by signal. */
int t_wait(pid_t pid, int timeout_ms); /* timeout_ms < 0: forever */

/* After seconds, print "timeout" and _exit(T_FAIL) (SIGALRM). */
void t_alarm(unsigned int seconds);

/* Non-zero when IVMC_LONG is set (make check-long): run longer. */
int t_long(void);
/* How many times slower than native the test runs: 8 under a wrapper
 * (IVMC_TEST_WRAPPER: valgrind), else 1. For bounds, never for asserts. */
unsigned int t_slow(void);

#endif
