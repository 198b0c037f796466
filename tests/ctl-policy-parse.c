/* SPDX-License-Identifier: MIT */
/*
 * Description: ivmcd.conf parsing and decisions (src/ctl/policy.c): a config
 * using every feature gives the expected verdict for a table of pairs (uid,
 * gid, netns through a fake resolver, ports and ranges, the default rule
 * with root, first match wins, ring= and ring_wish); every kind of bad line
 * is refused with its line number and leaves *out alone; the text is never
 * read past len (no trailing newline, a NUL, a cut mid-line); written text
 * parses back to the same policy and JSON output is well-formed JSON.
 */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ctl/policy.h"
#include "helpers.h"

#define K 1024u
#define M (1024u * 1024)

static const char good[] =
	"# every feature\n"
	"ring_size 128K\n"
	"pending_timeout 1500ms\n"
	"pending_max 7\n"
	"quota channels 0   # unlimited\n"
	"\n"
	"default same-uid\n"
	"\t \n"
	/* rules: lines 9 to 15 */
	"allow uid=1000,1001 netns=red,blue port=80,8000-8100 ring=1M\n"
	"deny  netns=inode:4026532000\n"
	"allow gid=50 same-uid ring=16K\n"
	"deny uid=2000\n"
	"allow netns=host,ghost port=22\n"
	"allow uid=0,3000 gid=0,3000\n"
	"\tdeny\tport=9-9\t# tabs\n"
	"quota memory 3M\n";

/* The fake `ip netns`: "ghost" does not exist. */
static unsigned int resolves;

static uint64_t resolver(const char *name)
{
	resolves++;
	if (!strcmp(name, "red"))
		return 101;
	if (!strcmp(name, "blue"))
		return 102;
	if (!strcmp(name, "host"))
		return 1;
	return 0;
}

struct pair {
	struct pol_end a, b;
	uint32_t wish;
	bool allow;
	unsigned int line;
	uint32_t ring;
};

#define E(u, g, ns, port) { u, g, ns, port }
#define NS10		  4026532000ull /* the inode of rule 10 */

static const struct pair pairs[] = {
	/* rule 9: uid, netns names, either end's port, ring= and wishes */
	{ E(1000, 1, 101, 80), E(1001, 1, 102, 40000), 0, true, 9, M },
	{ E(1000, 1, 101, 40000), E(1001, 1, 102, 8050), 0, true, 9, M },
	{ E(1000, 1, 101, 8100), E(1000, 1, 101, 1), 5000, true, 9, 8 * K },
	{ E(1000, 1, 101, 80), E(1000, 1, 101, 1), 100, true, 9, 4 * K },
	{ E(1000, 1, 101, 80), E(1000, 1, 101, 1), 2 * M, true, 9, M },
	{ E(1000, 1, 101, 80), E(1000, 1, 101, 1), M, true, 9, M },
	/* ...not when one uid, netns or both ports are outside its lists:
	 * the default (same-uid) decides then */
	{ E(1000, 1, 101, 80), E(1002, 1, 102, 80), 0, false, 0, 128 * K },
	{ E(1000, 1, 101, 80), E(1000, 1, 999, 80), 0, true, 0, 128 * K },
	{ E(1000, 1, 101, 79), E(1000, 1, 101, 8101), 0, true, 0, 128 * K },
	/* rule 10: both ends in an inode */
	{ E(5, 1, NS10, 1), E(6, 1, NS10, 1), 0, false, 10, 128 * K },
	{ E(5, 1, NS10, 1), E(5, 1, NS10 + 1, 1), 0, true, 0, 128 * K },
	/* rule 11: gid and same-uid; first match wins over rule 15 */
	{ E(7, 50, 0, 9), E(7, 50, 0, 9), 0, true, 11, 16 * K },
	{ E(7, 50, 0, 9), E(7, 50, 0, 9), 64 * K, true, 11, 16 * K },
	{ E(7, 50, 0, 1), E(8, 50, 0, 1), 0, false, 0, 128 * K },
	{ E(7, 50, 0, 1), E(7, 51, 0, 1), 0, true, 0, 128 * K },
	/* rule 12 beats the default, which would allow one uid */
	{ E(2000, 1, 0, 1), E(2000, 1, 0, 1), 0, false, 12, 128 * K },
	/* rule 13: host, resolved when deciding */
	{ E(9, 1, 1, 22), E(10, 1, 1, 5), 0, true, 13, 128 * K },
	{ E(9, 1, 1, 22), E(10, 1, 2, 5), 0, false, 0, 128 * K },
	/* an unknown netns (0) never matches, not even a name that is gone */
	{ E(9, 1, 0, 22), E(10, 1, 0, 22), 0, false, 0, 128 * K },
	/* rule 14: root is a uid like any other in a list */
	{ E(0, 0, 0, 1), E(3000, 3000, 0, 1), 0, true, 14, 128 * K },
	/* the default: same uid, or either end root */
	{ E(0, 5, 0, 1), E(4000, 5, 0, 1), 0, true, 0, 128 * K },
	{ E(4000, 5, 0, 1), E(0, 6, 0, 1), 0, true, 0, 128 * K },
	{ E(4000, 5, 0, 1), E(4001, 5, 0, 1), 0, false, 0, 128 * K },
	{ E(4000, 5, 0, 1), E(4001, 5, 0, 9), 0, false, 15, 128 * K },
};

static struct policy *parse_ok(const char *text, size_t len)
{
	struct policy *p = NULL;
	char err[256] = "";
	int rc = policy_parse(text, len, &p, err, sizeof(err));

	if (rc)
		t_fail("policy_parse(\"%.60s\"...) = %d (%s)", text, rc, err);
	return p;
}

static void check_pairs(const struct policy *p, bool same_lines)
{
	for (size_t i = 0; i < sizeof(pairs) / sizeof(pairs[0]); i++) {
		const struct pair *c = &pairs[i];
		struct pol_verdict v = { 0 };

		policy_decide(p, &c->a, &c->b, c->wish, resolver, &v);
		if (v.allow != c->allow || v.ring_size != c->ring ||
		    (same_lines ? v.line != c->line : !v.line != !c->line))
			t_fail("pair %zu: allow/line/ring %d/%u/%u, want %d/%u/%u",
			       i, v.allow, v.line, v.ring_size, c->allow,
			       c->line, c->ring);
	}
}

static void check_good(void)
{
	struct policy *p = parse_ok(good, strlen(good));
	struct pol_verdict v;

	T_ASSERT_EQ(policy_pending_ms(p), 1500);
	T_ASSERT_EQ(policy_pending_max(p), 7);
	T_ASSERT_EQ(policy_quota_channels(p), 0);
	T_ASSERT_EQ(policy_quota_bytes(p), 3 * M);
	resolves = 0;
	check_pairs(p, true);
	T_ASSERT(resolves > 0);
	/* Without a resolver, names never match: rule 9 is skipped. */
	policy_decide(p, &pairs[0].a, &pairs[0].b, 0, NULL, &v);
	T_ASSERT(!v.allow && v.line == 0);
	policy_free(p);
}

/* Default verdicts, and any. */
static void check_defaults(void)
{
	static const struct {
		const char *text;
		uint32_t ua, ub;
		bool allow;
		unsigned int line;
	} t[] = {
		{ "", 1, 1, true, 0 },
		{ "", 0, 1, true, 0 },
		{ "", 1, 2, false, 0 },
		{ "default deny\n", 1, 1, false, 0 },
		{ "default allow", 1, 2, true, 0 },
		{ "default allow\nallow same-uid\ndeny any", 1, 2, false, 3 },
		{ "allow same-uid\ndeny any\n", 0, 1, false, 2 },
		{ "allow any ring=4K\n", 0, 1, true, 1 },
	};

	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		struct policy *p = parse_ok(t[i].text, strlen(t[i].text));
		struct pol_end a = { t[i].ua, 0, 1, 1 };
		struct pol_end b = { t[i].ub, 0, 1, 1 };
		struct pol_verdict v;

		policy_decide(p, &a, &b, 0, resolver, &v);
		if (v.allow != t[i].allow || v.line != t[i].line)
			t_fail("defaults %zu: allow %d line %u", i, v.allow,
			       v.line);
		T_ASSERT_EQ(v.ring_size, strstr(t[i].text, "4K") ? 4 * K
								 : 64 * K);
		policy_free(p);
	}
}

/* Each bad text: -EINVAL, "line N: " and *out untouched. */
static void expect_bad(const char *text, size_t len, unsigned int line)
{
	struct policy *sentinel = (struct policy *)&line, *p = sentinel;
	char err[256] = "", want[32];
	int rc = policy_parse(text, len, &p, err, sizeof(err));

	snprintf(want, sizeof(want), "line %u: ", line);
	if (rc != -EINVAL || strncmp(err, want, strlen(want)) != 0 ||
	    strlen(err) == strlen(want))
		t_fail("\"%.60s\": rc %d err \"%s\", want -EINVAL \"%s...\"",
		       text, rc, err, want);
	if (p != sentinel)
		t_fail("\"%.60s\": *out changed on error", text);
}

static void check_bad_lines(void)
{
	static const char *const bad[] = {
		"ring_size 3K", "ring_size 2K", "ring_size 2G",
		"ring_size 256k", "ring_size 256KB", "ring_size",
		"ring_size 4K 8K", "ring_size -4K",
		"ring_size 99999999999999999999K", "pending_timeout 0ms",
		"pending_timeout 3601s", "pending_timeout 10",
		"pending_timeout 10m", "pending_timeout 1.5s", "pending_max 0",
		"pending_max 1000001", "pending_max -1", "pending_max 1x",
		"pending_max 0x10", "quota channels 4294967296",
		"quota bytes 1", "quota", "quota memory 1T", "quota memory",
		"quota memory 17179869184G", "default maybe", "default",
		"Allow any", "permit any", "allow", "deny",
		"allow any same-uid", "allow port=1 any", "allow any any",
		"allow same-uid same-uid", "allow uid=1 uid=2", "allow uid=",
		"allow uid=1,", "allow uid=,1", "allow uid=1,,2",
		"allow uid=4294967295", "allow uid=-1",
		"allow uid=99999999999999999999999", "allow uid=1x",
		"allow uid=root", "allow gid=wheel", "allow gid=1 y",
		"allow netns=a/b", "allow netns=.", "allow netns=..",
		"allow netns=inode:", "allow netns=inode:0",
		"allow netns=inode:x", "allow netns=inode:-1",
		"allow netns=aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
		"allow port=0", "allow port=65536", "allow port=10-5",
		"allow port=1-", "allow port=-5", "allow port=1-2-3",
		"allow port=1--2", "allow any ring=2K", "allow any ring=3M",
		"allow any ring=2G", "allow any ring=", "deny any ring=1M",
		"allow any ring=1M ring=1M", "allow foo=1", "allow sameuid",
		"allow any extra", "allow =1", "allow any\x01", "allow\xff any",
	};
	char buf[128];

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		/* alone, and as line 3 after good lines */
		expect_bad(bad[i], strlen(bad[i]), 1);
		snprintf(buf, sizeof(buf), "allow any\n# x\n%s\nallow any\n",
			 bad[i]);
		expect_bad(buf, strlen(buf), 3);
	}
	expect_bad("ring_size 4K\nring_size 4K", 25, 2);
	expect_bad("quota memory 1G\n#\nquota memory 1G\n", 35, 3);
	expect_bad("default deny\nallow any\ndefault allow", 36, 3);
}

/* Limits that take bigger texts: line length, rule count, file size. */
static void check_limits(void)
{
	size_t cap = 128 * 1024, n;
	char *t = malloc(cap);

	T_ASSERT(t);
	/* The 1 KiB line limit leaves out a comment and the blanks before
	 * it: "allow ... any" of 1024 bytes is fine, of 1025 not. */
	memset(t, ' ', 3000);
	memcpy(t + 2, "allow", 5);
	memcpy(t + 1023, "any", 3);
	t[2000] = '#';
	t[0] = t[1] = '\n';
	policy_free(parse_ok(t, 3000));
	memcpy(t + 1023, " any", 4);
	expect_bad(t, 3000, 3);

	n = 0;
	for (int i = 0; i < 4096; i++)
		n += (size_t)sprintf(t + n, "allow port=%d\n", i + 1);
	policy_free(parse_ok(t, n));
	n += (size_t)sprintf(t + n, "# comment\ndeny any\n");
	expect_bad(t, n, 4098);

	/* A text may be 2 MiB (files 1 MiB: ctl-policy-load), no more. */
	free(t);
	t = malloc((2u << 20) + 1);
	T_ASSERT(t);
	memset(t, '\n', (2u << 20) + 1);
	policy_free(parse_ok(t, 2u << 20));
	expect_bad(t, (2u << 20) + 1, (2u << 20) + 1);
	free(t);
}

/* A copy of exactly len bytes on the heap, so that ASan (make check-asan)
 * sees any read past len. */
static char *exact(const char *s, size_t len)
{
	char *p = malloc(len ? len : 1);

	T_ASSERT(p);
	memcpy(p, s, len);
	return p;
}

static void check_edges(void)
{
	static const char nul[] = "allow any\n# a\0b\n";
	static const char cut[] = "ring_size 4K\nallow port=80\n";
	struct pol_end a = { 1, 1, 1, 8 }, b = { 2, 2, 2, 1 };
	struct pol_verdict v;
	struct policy *p;
	char *t;

	t = exact("pending_max 3", 13); /* no trailing newline */
	p = parse_ok(t, 13);
	T_ASSERT_EQ(policy_pending_max(p), 3);
	policy_free(p);
	free(t);

	t = exact("ring_size 8K\r\nallow any\r\n", 25); /* CRLF */
	policy_free(parse_ok(t, 25));
	free(t);

	t = exact(nul, sizeof(nul) - 1);
	expect_bad(t, sizeof(nul) - 1, 2);
	free(t);
	expect_bad("\0", 1, 1);

	/* Cut mid-line: "ring_size 4" is out of range; "port=8" matches 8. */
	t = exact(cut, 11);
	expect_bad(t, 11, 1);
	free(t);
	t = exact(cut, 25);
	p = parse_ok(t, 25);
	free(t);
	policy_decide(p, &a, &b, 0, resolver, &v);
	T_ASSERT(v.allow && v.line == 2 && v.ring_size == 4 * K);
	a.port = 80;
	policy_decide(p, &a, &b, 0, resolver, &v);
	T_ASSERT(!v.allow && v.line == 0);
	policy_free(p);

	policy_free(parse_ok(NULL, 0));
}

static char *write_str(const struct policy *p, bool json)
{
	char *s = NULL;
	size_t n = 0;
	FILE *f = open_memstream(&s, &n);

	T_ASSERT(f);
	T_ASSERT_OK(policy_write(p, f, json));
	T_ASSERT(!fclose(f));
	return s;
}

/* The text with each rule's "  # line N" dropped: the line numbers are
 * where a rule was, not part of what it says. */
static void strip_lines(char *s)
{
	char *o = s;

	for (char *l = s; *l;) {
		char *nl = strchr(l, '\n'), *c = strstr(l, "  # line ");
		size_t n = nl ? (size_t)(nl - l) : strlen(l);

		memmove(o, l, c && c < l + n ? (size_t)(c - l) : n);
		o += c && c < l + n ? (size_t)(c - l) : n;
		if (nl)
			*o++ = '\n';
		l += n + !!nl;
	}
	*o = '\0';
}

/* The longest rule there is, far down a file, already as policy_write()
 * writes it: written back with "  # line 1000001" it must still parse. */
static void check_long_rule(void)
{
	size_t n = 1000000;
	char *t = malloc(n + 1100), *w;
	struct policy *p;

	T_ASSERT(t);
	memset(t, '\n', n);
	n += (size_t)sprintf(t + n, "allow port=1");
	for (int i = 0; i < 168; i++)
		n += (size_t)sprintf(t + n, ",65535");
	n += (size_t)sprintf(t + n, ",999 \t # comment");
	p = parse_ok(t, n);
	w = write_str(p, false);
	T_ASSERT(strstr(w, ",999  # line 1000001\n"));
	T_ASSERT_EQ(strchr(strstr(w, "allow"), '#') - strstr(w, "allow"),
		    1024 + 2);
	policy_free(p);
	policy_free(parse_ok(w, strlen(w)));
	free(w);
	/* One more byte is too long, wherever it goes. */
	memcpy(t + 1000000, " allow", 6);
	expect_bad(t, n, 1000001);
	free(t);
}

static void check_round_trip(const char *text)
{
	struct policy *p1 = parse_ok(text, strlen(text)), *p2, *p3;
	char *w1 = write_str(p1, false), *w2, *w3;

	p2 = parse_ok(w1, strlen(w1));
	w2 = write_str(p2, false);
	p3 = parse_ok(w2, strlen(w2));
	w3 = write_str(p3, false);
	if (strcmp(w2, w3) != 0)
		t_fail("write(parse(write)) changed:\n%s---\n%s", w2, w3);
	strip_lines(w1);
	strip_lines(w2);
	if (strcmp(w1, w2) != 0)
		t_fail("round trip changed the policy:\n%s---\n%s", w1, w2);
	T_ASSERT_EQ(policy_pending_ms(p1), policy_pending_ms(p2));
	T_ASSERT_EQ(policy_pending_max(p1), policy_pending_max(p2));
	T_ASSERT_EQ(policy_quota_channels(p1), policy_quota_channels(p2));
	T_ASSERT_EQ(policy_quota_bytes(p1), policy_quota_bytes(p2));
	if (text == good)
		check_pairs(p2, false);
	free(w1);
	free(w2);
	free(w3);
	policy_free(p1);
	policy_free(p2);
	policy_free(p3);
}

/* A small JSON checker (RFC 8259): each returns the end of what it read,
 * or NULL if that is not JSON. */
static const char *json_value(const char *s, int depth);

static const char *json_ws(const char *s)
{
	while (*s == ' ' || *s == '\t' || *s == '\n' || *s == '\r')
		s++;
	return s;
}

static const char *json_string(const char *s)
{
	if (*s++ != '"')
		return NULL;
	while (*s != '"') {
		if ((unsigned char)*s < 0x20) /* control, or the end */
			return NULL;
		if (*s++ != '\\')
			continue;
		if (*s == 'u') {
			for (int i = 1; i <= 4; i++)
				if (!isxdigit((unsigned char)s[i]))
					return NULL;
			s += 5;
		} else if (*s && strchr("\"\\/bfnrt", *s)) {
			s++;
		} else {
			return NULL;
		}
	}
	return s + 1;
}

/* Integers only: policy_write() writes no other numbers. */
static const char *json_number(const char *s)
{
	const char *p = s + (*s == '-');

	if (*p == '0')
		return p + 1;
	if (*p < '1' || *p > '9')
		return NULL;
	while (*p >= '0' && *p <= '9')
		p++;
	return p;
}

/* Object or array: members separated by commas, no trailing comma. */
static const char *json_seq(const char *s, char close, bool object,
			    int depth)
{
	s = json_ws(s + 1);
	if (*s == close)
		return s + 1;
	for (;;) {
		if (object) {
			s = json_string(json_ws(s));
			if (!s || *(s = json_ws(s)) != ':')
				return NULL;
			s++;
		}
		s = json_value(s, depth + 1);
		if (!s)
			return NULL;
		s = json_ws(s);
		if (*s == close)
			return s + 1;
		if (*s++ != ',')
			return NULL;
	}
}

static const char *json_value(const char *s, int depth)
{
	s = json_ws(s);
	if (depth > 32)
		return NULL;
	if (*s == '{')
		return json_seq(s, '}', true, depth);
	if (*s == '[')
		return json_seq(s, ']', false, depth);
	if (*s == '"')
		return json_string(s);
	if (!strncmp(s, "true", 4) || !strncmp(s, "null", 4))
		return s + 4;
	if (!strncmp(s, "false", 5))
		return s + 5;
	return json_number(s);
}

static void check_json(void)
{
	static const char *const want[] = {
		"{\"ring_size\":131072,\"ring_grow\":4194304,"
		"\"pending_timeout_ms\":1500,"
		"\"pending_max\":7,\"quota_channels\":0,"
		"\"quota_bytes\":3145728,"
		"\"default\":\"same-uid\",\"rules\":[",
		"{\"line\":9,\"verdict\":\"allow\",\"uid\":[1000,1001],"
		"\"gid\":[],\"netns\":[\"red\",\"blue\"],"
		"\"port\":[[80,80],[8000,8100]],\"same_uid\":false,"
		"\"ring_size\":1048576}",
		"\"netns\":[\"inode:4026532000\"]",
		"\"verdict\":\"deny\",\"uid\":[],\"gid\":[],\"netns\":[],"
		"\"port\":[[9,9]],\"same_uid\":false,\"ring_size\":0}",
		"\"gid\":[50],\"netns\":[],\"port\":[],\"same_uid\":true",
	};
	struct policy *p = parse_ok(good, strlen(good));
	char *j = write_str(p, true);
	const char *end = json_value(j, 0);

	if (!end || *json_ws(end))
		t_fail("not one JSON value:\n%s", j);
	for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++)
		if (!strstr(j, want[i]))
			t_fail("JSON lacks %s:\n%s", want[i], j);
	/* The checker itself must refuse broken JSON. */
	T_ASSERT(!json_value("{\"a\":[1,]}", 0));
	T_ASSERT(!json_value("{\"a\" 1}", 0));
	T_ASSERT(!json_value("[\"x]", 0));
	T_ASSERT(!json_value("[\"\\q\"]", 0));
	T_ASSERT(json_value("[\"\\u00e9\",-1,{}]", 0));
	free(j);
	policy_free(p);
}

/* A write that fails (a full disk) is reported. */
static void check_write_error(void)
{
	FILE *f = fopen("/dev/full", "w");
	struct policy *p;

	if (!f)
		return;
	T_ASSERT_OK(policy_default(&p));
	T_ASSERT_EQ(policy_write(p, f, false), -EIO);
	fclose(f);
	policy_free(p);
}

int main(void)
{
	struct policy *p;

	check_good();
	check_defaults();
	check_bad_lines();
	check_limits();
	check_edges();
	check_long_rule();
	check_round_trip(good);
	check_round_trip("");
	check_round_trip("quota memory 1000\nring_size 1G\n"
			 "pending_timeout 3600s\nallow any ring=4096\n");
	T_ASSERT_OK(policy_default(&p));
	T_ASSERT_EQ(policy_quota_channels(p), 4096);
	T_ASSERT_EQ(policy_quota_bytes(p), 4ull << 30);
	T_ASSERT_EQ(policy_pending_ms(p), 10000);
	T_ASSERT_EQ(policy_pending_max(p), 4096);
	policy_free(p);
	check_json();
	check_write_error();
	return T_PASS;
}
