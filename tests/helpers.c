/* SPDX-License-Identifier: MIT */
/*
 * Description: helpers shared by the test programs (see helpers.h).
 */
#include <endian.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "helpers.h"

void t_fail_at(const char *file, int line, const char *fmt, ...)
{
	va_list ap;

	fflush(stdout);
	fprintf(stderr, "%s:%d: ", file, line);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(T_FAIL);
}

void t_skip(const char *reason)
{
	/* Flush stdout first so the reason really is the last line. */
	fflush(stdout);
	fprintf(stderr, "%s\n", reason);
	exit(T_SKIP);
}

const char *t_strerror(long long ret)
{
	if (ret >= 0)
		return "OK";
	if (ret < -4095)
		return "not an errno";
	return strerror((int)-ret);
}

uint64_t t_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

/* The splitmix64 output function: a bijection on 64-bit values. */
static uint64_t mix64(uint64_t z)
{
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

uint64_t t_rand64(uint64_t *state)
{
	*state += 0x9e3779b97f4a7c15ULL;
	return mix64(*state);
}

uint64_t t_checksum(uint64_t h, const void *buf, size_t n)
{
	const unsigned char *p = buf;

	for (size_t i = 0; i < n; i++) {
		h ^= p[i];
		h *= 0x100000001b3ULL;
	}
	return h;
}

/*
 * Stream seed, byte k: byte k % 8 (little-endian) of word(seed, k / 8).
 * word() is a bijection of idx for a fixed seed, so a slice delivered at the
 * wrong offset never verifies by accident.
 */
static uint64_t stream_word(uint64_t seed, uint64_t idx)
{
	return mix64(mix64(seed) + idx * 0x9e3779b97f4a7c15ULL);
}

static unsigned char stream_byte(uint64_t seed, uint64_t k)
{
	return (unsigned char)(stream_word(seed, k / 8) >> (8 * (k % 8)));
}

void t_fill(uint64_t seed, uint64_t off, void *buf, size_t n)
{
	unsigned char *p = buf;
	size_t i = 0;

	for (; i < n && (off + i) % 8; i++)
		p[i] = stream_byte(seed, off + i);
	for (; n - i >= 8; i += 8) {
		uint64_t w = htole64(stream_word(seed, (off + i) / 8));

		memcpy(p + i, &w, 8);
	}
	for (; i < n; i++)
		p[i] = stream_byte(seed, off + i);
}

int t_verify(uint64_t seed, uint64_t off, const void *buf, size_t n)
{
	const unsigned char *p = buf;

	for (size_t i = 0; i < n; i++) {
		unsigned char want;

		/* Whole words first: the common, matching case stays cheap. */
		if ((off + i) % 8 == 0 && n - i >= 8) {
			uint64_t w = htole64(stream_word(seed, (off + i) / 8));

			if (!memcmp(p + i, &w, 8)) {
				i += 7;
				continue;
			}
		}
		want = stream_byte(seed, off + i);
		if (p[i] != want) {
			fflush(stdout);
			fprintf(stderr,
				"t_verify: stream %#llx offset %llu: got 0x%02x, want 0x%02x\n",
				(unsigned long long)seed,
				(unsigned long long)(off + i), p[i], want);
			return -1;
		}
	}
	return 0;
}

pid_t t_fork(void (*fn)(void *), void *arg)
{
	pid_t pid;

	/* Unflushed stdio would otherwise be written twice. */
	fflush(stdout);
	fflush(stderr);
	pid = fork();
	if (pid < 0)
		t_fail("fork: %s", strerror(errno));
	if (pid == 0) {
		fn(arg);
		fflush(stdout);
		fflush(stderr);
		_exit(0);
	}
	return pid;
}

static int reap(pid_t pid, int status)
{
	if (WIFEXITED(status))
		return WEXITSTATUS(status);
	if (WIFSIGNALED(status))
		fprintf(stderr, "t_wait: child %d killed by signal %d (%s)\n",
			(int)pid, WTERMSIG(status),
			strsignal(WTERMSIG(status)));
	return -1;
}

int t_wait(pid_t pid, int timeout_ms)
{
	uint64_t deadline = t_now_ns() + (uint64_t)timeout_ms * 1000000ULL;
	long nap_us = 100;
	int status;

	for (;;) {
		pid_t r = waitpid(pid, &status, timeout_ms < 0 ? 0 : WNOHANG);

		if (r == pid)
			return reap(pid, status);
		if (r < 0 && errno != EINTR) {
			fprintf(stderr, "t_wait: waitpid(%d): %s\n", (int)pid,
				strerror(errno));
			return -1;
		}
		if (r == 0 && t_now_ns() >= deadline)
			break;
		if (r == 0) {
			/* Back off from 0.1 ms to 10 ms between polls. */
			usleep((useconds_t)nap_us);
			nap_us = nap_us < 10000 ? nap_us * 2 : 10000;
		}
	}
	fprintf(stderr,
		"t_wait: child %d still running after %d ms, killing it\n",
		(int)pid, timeout_ms);
	kill(pid, SIGKILL);
	while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
		;
	return -1;
}

static void on_alarm(int sig)
{
	static const char msg[] = "timeout\n";
	ssize_t r;

	(void)sig;
	r = write(STDERR_FILENO, msg, sizeof(msg) - 1);
	(void)r;
	_exit(T_FAIL);
}

void t_alarm(unsigned int seconds)
{
	struct sigaction sa;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_alarm;
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGALRM, &sa, NULL))
		t_fail("sigaction(SIGALRM): %s", strerror(errno));
	alarm(seconds);
}

int t_long(void)
{
	const char *v = getenv("IVMC_LONG");

	return v && *v && strcmp(v, "0") != 0;
}

unsigned int t_slow(void)
{
	const char *v = getenv("IVMC_TEST_WRAPPER");

	return v && *v ? 8 : 1;
}

uint64_t t_cpu_ns(void)
{
	struct rusage ru;

	getrusage(RUSAGE_SELF, &ru);
	return (uint64_t)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) *
		       1000000000ull +
	       (uint64_t)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1000ull;
}

void t_loopback_pair(int fd[2])
{
	struct sockaddr_in a = { .sin_family = AF_INET,
				 .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t len = sizeof(a);
	int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof(a)) ||
	    listen(l, 1) || getsockname(l, (struct sockaddr *)&a, &len))
		t_skip("no TCP on loopback");
	fd[0] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	T_ASSERT(fd[0] >= 0);
	T_ASSERT(connect(fd[0], (struct sockaddr *)&a, sizeof(a)) == 0);
	fd[1] = accept4(l, NULL, NULL, SOCK_CLOEXEC);
	T_ASSERT(fd[1] >= 0);
	close(l);
}
