/* SPDX-License-Identifier: MIT */
/*
 * Description: fuzz target: ivmcd.conf parsing (src/ctl/policy.c). The
 * input is a config text, not NUL-terminated. Asserts: a refused text gets
 * -EINVAL and a printable "line N: ..." with N within the text; an accepted
 * one decides for a few pairs, and its written text parses again to the same
 * policy: the same text and JSON but for each rule's line number (where it
 * was, which differs in the written text), the same verdicts; and from then
 * on a fixed point: writing the policy parsed from written text gives that
 * text byte for byte. No crash, no read past the input (ASan), no leak.
 */
#include <errno.h>

#include "ctl/policy.h"
#include "fuzz.h"

/* Not used here: the policy touches no shared memory. */
uint64_t ivmc_fuzz_shm(const volatile void *p, uint64_t v, size_t size)
{
	(void)p;
	(void)size;
	return v;
}

/* Every name is some netns: 1..3 by its first and last letters, so that
 * names match ends now and then; "host" is 1. */
static uint64_t resolver(const char *name)
{
	size_t n = strlen(name);

	return n ? 1 + ((unsigned char)name[0] + (unsigned char)name[n - 1]) %
				       3 :
		   0;
}

static const struct pol_end ends[] = {
	{ 0, 0, 1, 22 },     { 1000, 100, 1, 80 },	 { 1000, 100, 2, 8080 },
	{ 1001, 100, 3, 1 }, { 65534, 65534, 0, 65535 },
};

#define NENDS (sizeof(ends) / sizeof(ends[0]))

static void verdicts(const struct policy *p, struct pol_verdict *v)
{
	static const uint32_t wish[] = { 0, 1, 5000, 1u << 20 };

	for (size_t i = 0; i < NENDS * NENDS; i++) {
		struct pol_verdict *x = &v[i];
		uint32_t w = wish[i % 4];

		policy_decide(p, &ends[i / NENDS], &ends[i % NENDS], w,
			      resolver, x);
		FZ_ASSERT(x->ring_size >= 4096 && x->ring_size <= (1u << 30) &&
				  !(x->ring_size & (x->ring_size - 1)),
			  "ring_size %u", x->ring_size);
		FZ_ASSERT(!w || x->ring_size <= 4096 || x->ring_size < 2 * w,
			  "ring_size %u for a wish of %u", x->ring_size, w);
	}
}

static char *write_str(const struct policy *p, bool json, size_t *len)
{
	char *s = NULL;
	FILE *f = open_memstream(&s, len);

	FZ_ASSERT(f, "open_memstream");
	FZ_ASSERT(!policy_write(p, f, json), "policy_write");
	FZ_ASSERT(!fclose(f), "fclose");
	return s;
}

static struct policy *reparse(const char *text, size_t len)
{
	struct policy *p = NULL;
	char err[160] = "";
	int rc = policy_parse(text, len, &p, err, sizeof(err));

	FZ_ASSERT(!rc, "written text refused (%d, %s):\n%s", rc, err, text);
	return p;
}

/* Equal but for the number after each tag: the line of each rule. */
static bool same_but_lines(const char *a, const char *b, const char *tag)
{
	size_t n = strlen(tag);

	while (*a && *b) {
		if (!strncmp(a, tag, n) && !strncmp(b, tag, n)) {
			a += n + strspn(a + n, "0123456789");
			b += n + strspn(b + n, "0123456789");
			continue;
		}
		if (*a++ != *b++)
			return false;
	}
	return !*a && !*b;
}

static void check_refused(int rc, const char *err, const uint8_t *data,
			  size_t size)
{
	unsigned long line = strtoul(err + 5, NULL, 10), lines = 1;

	FZ_ASSERT(rc == -EINVAL, "rc %d", rc);
	FZ_ASSERT(!strncmp(err, "line ", 5) && err[5] >= '1' && err[5] <= '9',
		  "err \"%s\"", err);
	for (size_t i = 0; i < size; i++)
		lines += data[i] == '\n';
	FZ_ASSERT(line <= lines, "err \"%s\" but %lu lines", err, lines);
	for (const char *c = err; *c; c++)
		FZ_ASSERT(*c >= ' ' && *c < 0x7f, "unprintable err \"%s\"",
			  err);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct pol_verdict v1[NENDS * NENDS], v2[NENDS * NENDS];
	struct policy *p1 = NULL, *p2, *p3;
	char err[160] = "", *w1, *w2, *w3, *j1, *j2;
	size_t n1, n2, n3, nj;
	int rc = policy_parse((const char *)data, size, &p1, err, sizeof(err));

	if (rc) {
		FZ_ASSERT(!p1, "*out set on error");
		check_refused(rc, err, data, size);
		return 0;
	}
	verdicts(p1, v1);
	w1 = write_str(p1, false, &n1);
	p2 = reparse(w1, n1);
	w2 = write_str(p2, false, &n2);
	FZ_ASSERT(same_but_lines(w1, w2, "  # line "),
		  "round trip changed:\n%s---\n%s", w1, w2);
	verdicts(p2, v2);
	for (size_t i = 0; i < NENDS * NENDS; i++)
		FZ_ASSERT(v1[i].allow == v2[i].allow &&
				  v1[i].ring_size == v2[i].ring_size &&
				  !v1[i].line == !v2[i].line,
			  "pair %zu decided differently after a round trip", i);
	p3 = reparse(w2, n2);
	w3 = write_str(p3, false, &n3);
	FZ_ASSERT(n2 == n3 && !memcmp(w2, w3, n2),
		  "not a fixed point:\n%s---\n%s", w2, w3);
	j1 = write_str(p1, true, &nj);
	j2 = write_str(p2, true, &nj);
	FZ_ASSERT(same_but_lines(j1, j2, "{\"line\":"),
		  "round trip changed:\n%s---\n%s", j1, j2);
	FZ_ASSERT(nj > 2 && j2[0] == '{' && j2[nj - 2] == '}', "json %s", j2);
	free(j1);
	free(j2);
	free(w1);
	free(w2);
	free(w3);
	policy_free(p1);
	policy_free(p2);
	policy_free(p3);
	return 0;
}
