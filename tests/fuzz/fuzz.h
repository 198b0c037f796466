/* SPDX-License-Identifier: MIT */
/*
 * Description: helpers shared by the fuzz targets (built by mk/fuzz.mk):
 * an input reader, assertions that abort (so libFuzzer keeps the input),
 * the stream pattern and an fd-leak counter.
 */
#ifndef IVMC_TESTS_FUZZ_H
#define IVMC_TESTS_FUZZ_H

#include <dirent.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Abort with a message: libFuzzer reports a crash and writes the input. */
#define FZ_FAIL(...)                                                   \
	do {                                                           \
		fprintf(stderr, "%s:%d: FUZZ FAIL: ", __FILE__, __LINE__); \
		fprintf(stderr, __VA_ARGS__);                          \
		fputc('\n', stderr);                                   \
		abort();                                               \
	} while (0)

/* FZ_ASSERT(cond, "format", args...): the format must be a literal. */
#define FZ_ASSERT(cond, ...)                                \
	do {                                                \
		if (!(cond))                                \
			FZ_FAIL("(" #cond ") " __VA_ARGS__); \
	} while (0)

/* Reads the input front to back; past its end every read gives zeros. */
struct fz_in {
	const uint8_t *p;
	size_t n;
};

static inline bool fz_left(const struct fz_in *in)
{
	return in->n > 0;
}

static inline uint8_t fz_u8(struct fz_in *in)
{
	if (!in->n)
		return 0;
	in->n--;
	return *in->p++;
}

static inline uint16_t fz_u16(struct fz_in *in)
{
	return (uint16_t)(fz_u8(in) | fz_u8(in) << 8);
}

static inline uint64_t fz_u64(struct fz_in *in)
{
	uint64_t v = 0;

	for (int i = 0; i < 8; i++)
		v |= (uint64_t)fz_u8(in) << (8 * i);
	return v;
}

/* Byte off of the stream of direction dir: neighbours differ, and so do
 * bytes one ring (4 KiB) apart, so a stale or misplaced read shows. */
static inline uint8_t fz_pattern(int dir, uint64_t off)
{
	uint32_t x = (uint32_t)off * 0x9e3779b1u + (uint32_t)(off >> 32);

	return (uint8_t)((x >> 24) ^ (x >> 11) ^ (uint32_t)(dir * 0x5b));
}

static inline void fz_fill(int dir, uint64_t off, uint8_t *buf, size_t n)
{
	for (size_t i = 0; i < n; i++)
		buf[i] = fz_pattern(dir, off + i);
}

/* Index of the first byte that is not the stream, or -1. */
static inline long fz_check(int dir, uint64_t off, const uint8_t *buf, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (buf[i] != fz_pattern(dir, off + i))
			return (long)i;
	return -1;
}

/* Open descriptors of this process (compare before and after an input). */
static inline int fz_fd_count(void)
{
	DIR *d = opendir("/proc/self/fd");
	int n = 0;

	if (!d)
		FZ_FAIL("opendir /proc/self/fd");
	while (readdir(d))
		n++;
	closedir(d);
	return n;
}

#endif
