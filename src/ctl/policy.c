/* SPDX-License-Identifier: MIT */
/*
 * Description: ivmcd's policy (ivmcd.conf(5)): parse a config whole or not
 * at all, decide for a pair of ends, and write the policy back as config
 * text or JSON that parses to the same policy.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ctl/policy.h"

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

#define LINE_MAX_LEN 1024 /* bytes before a comment */
#define RULES_MAX 4096
#define FILE_MAX (1u << 20)
/* policy_parse() takes twice what a file may hold: the text policy_write()
 * makes of a full file is longer (up to 16 bytes of "  # line N" a rule, and
 * every setting written out), and must parse again. */
#define TEXT_MAX (2u << 20)
#define NAME_MAX_LEN 64
#define RING_MIN (4u << 10)
#define RING_MAX (1u << 30)
#define SHOW_MAX 40 /* a token quoted in an error message, with "..." */

enum dflt { D_SAME_UID, D_ALLOW, D_DENY };
static const char *const dflt_names[] = { "same-uid", "allow", "deny" };

/* How a value is written: each kind parses and prints one way only, so
 * that written text parses back to the same number. */
enum kind { K_RING, K_MS, K_NUM, K_BYTES, K_DFLT };

enum glob { G_RING, G_GROW, G_TIMEOUT, G_PMAX, G_QCHAN, G_QMEM, G_DFLT, NGLOBAL };

static const struct global {
	const char *kw, *kw2, *name, *json, *want;
	enum kind kind;
	uint64_t min, max, dflt;
} globals[NGLOBAL] = {
	[G_RING] = { "ring_size", NULL, "ring_size", "ring_size",
		     "a power of two in 4K..1G", K_RING, RING_MIN, RING_MAX,
		     64u << 10 },
	[G_GROW] = { "ring_grow", NULL, "ring_grow", "ring_grow",
		     "0 or a power of two in 4K..1G", K_RING, 0, RING_MAX,
		     4u << 20 },
	[G_TIMEOUT] = { "pending_timeout", NULL, "pending_timeout",
			"pending_timeout_ms", "a time in 1ms..3600s", K_MS, 1,
			3600000, 10000 },
	[G_PMAX] = { "pending_max", NULL, "pending_max", "pending_max",
		     "a number in 1..1000000", K_NUM, 1, 1000000, 4096 },
	[G_QCHAN] = { "quota", "channels", "quota channels", "quota_channels",
		      "a number in 0..4294967295", K_NUM, 0, UINT32_MAX, 4096 },
	[G_QMEM] = { "quota", "memory", "quota memory", "quota_bytes",
		     "a size (K, M or G)", K_BYTES, 0, UINT64_MAX, 4ull << 30 },
	[G_DFLT] = { "default", NULL, "default", "default",
		     "same-uid, allow or deny", K_DFLT, 0, D_DENY, D_SAME_UID },
};

struct tok {
	const char *s;
	size_t n;
};

struct pol_ns {
	uint64_t ino; /* 0: resolve name when deciding */
	char name[NAME_MAX_LEN + 1];
};

struct pol_port {
	uint16_t lo, hi;
};

struct ps;
enum sel { S_UID, S_GID, S_NS, S_PORT, NSEL };

static int item_id(struct ps *ps, const struct tok *t, void *el);
static int item_ns(struct ps *ps, const struct tok *t, void *el);
static int item_port(struct ps *ps, const struct tok *t, void *el);

/* List selectors: the key is the same in the config and in JSON. */
static const struct selector {
	const char *key;
	size_t size;
	int (*item)(struct ps *ps, const struct tok *t, void *el);
} sels[NSEL] = {
	[S_UID] = { "uid", sizeof(uint32_t), item_id },
	[S_GID] = { "gid", sizeof(uint32_t), item_id },
	[S_NS] = { "netns", sizeof(struct pol_ns), item_ns },
	[S_PORT] = { "port", sizeof(struct pol_port), item_port },
};

struct pol_list {
	void *v; /* non-NULL once given: a list is never empty */
	unsigned int n;
};

struct pol_rule {
	unsigned int line;
	bool allow, same_uid;
	uint32_t ring; /* 0: the global ring_size */
	struct pol_list sel[NSEL];
};

struct policy {
	uint64_t g[NGLOBAL];
	unsigned int nrules;
	struct pol_rule *rules;
};

/* Parser state. */
struct ps {
	struct policy *p;
	unsigned int line, cap;
	unsigned int seen[NGLOBAL]; /* line that set each global, 0 = none */
	char *err;
	size_t errlen;
};

__attribute__((format(printf, 2, 3))) static int perr(struct ps *ps,
						       const char *fmt, ...)
{
	va_list ap;
	int n;

	if (!ps->errlen)
		return -EINVAL;
	n = snprintf(ps->err, ps->errlen, "line %u: ", ps->line);
	if (n < 0 || (size_t)n >= ps->errlen)
		return -EINVAL;
	va_start(ap, fmt);
	/* clang 14's va_list checker misreads va_start here after it has
	 * seen another file (make lint). */
	/* NOLINTNEXTLINE(clang-analyzer-valist.Uninitialized) */
	vsnprintf(ps->err + n, ps->errlen - (size_t)n, fmt, ap);
	va_end(ap);
	return -EINVAL;
}

/* A token made safe to print: the text is hostile and not a C string. */
static const char *show(const struct tok *t, char *buf)
{
	size_t n = t->n < SHOW_MAX - 4 ? t->n : SHOW_MAX - 4;

	for (size_t i = 0; i < n; i++)
		buf[i] = t->s[i] > ' ' && t->s[i] < 0x7f ? t->s[i] : '?';
	snprintf(buf + n, SHOW_MAX - n, "%s", t->n > n ? "..." : "");
	return buf;
}

static bool tok_is(const struct tok *t, const char *word)
{
	return t->n == strlen(word) && !memcmp(t->s, word, t->n);
}

/* '\r' counts as a blank so that a file with CRLF line ends parses. */
static bool blank(char c)
{
	return c == ' ' || c == '\t' || c == '\r';
}

/* The next token of [*pos, end), moving *pos past it. */
static bool next_tok(const char **pos, const char *end, struct tok *t)
{
	const char *p = *pos;

	while (p < end && blank(*p))
		p++;
	if (p == end)
		return false;
	t->s = p;
	while (p < end && !blank(*p))
		p++;
	t->n = (size_t)(p - t->s);
	*pos = p;
	return true;
}

/* Leading decimal digits of t into *v: how many, or 0 (none, overflow). */
static size_t digits(const struct tok *t, uint64_t *v)
{
	size_t i;

	*v = 0;
	for (i = 0; i < t->n && t->s[i] >= '0' && t->s[i] <= '9'; i++) {
		unsigned int d = (unsigned int)(t->s[i] - '0');

		if (*v > (UINT64_MAX - d) / 10)
			return 0;
		*v = *v * 10 + d;
	}
	return i;
}

/* A whole token as a decimal number in [min, max]. */
static bool number(const struct tok *t, uint64_t min, uint64_t max, uint64_t *v)
{
	size_t n = digits(t, v);

	return n && n == t->n && *v >= min && *v <= max;
}

struct unit {
	const char *sfx;
	uint64_t mult;
};

static const struct unit size_units[] = { { "", 1 },
					  { "K", 1u << 10 },
					  { "M", 1u << 20 },
					  { "G", 1u << 30 },
					  { 0 } };
static const struct unit time_units[] = { { "ms", 1 }, { "s", 1000 }, { 0 } };
static const struct unit no_unit[] = { { "", 1 }, { 0 } };
static const struct unit *const units[] = {
	[K_RING] = size_units, [K_BYTES] = size_units, [K_MS] = time_units,
	[K_NUM] = no_unit,     [K_DFLT] = no_unit,
};

/* A global's value, or ring='s, as its kind spells it, in range. */
static bool value(const struct global *g, const struct tok *t, uint64_t *v)
{
	const struct unit *u = units[g->kind];
	size_t n = digits(t, v);
	struct tok rest = { t->s + n, t->n - n };

	if (g->kind == K_DFLT) {
		for (*v = 0; *v < ARRAY_SIZE(dflt_names); (*v)++)
			if (tok_is(t, dflt_names[*v]))
				return true;
		return false;
	}
	while (u->sfx && !tok_is(&rest, u->sfx))
		u++;
	if (!n || !u->sfx || *v > UINT64_MAX / u->mult)
		return false;
	*v *= u->mult;
	if (g->kind == K_RING && ((*v & (*v - 1)) || (*v && *v < RING_MIN)))
		return false;
	return *v >= g->min && *v <= g->max;
}

/* A name as `ip netns` has it: a plain file name. */
static bool name_ok(const struct tok *t)
{
	if (!t->n || t->n > NAME_MAX_LEN || tok_is(t, ".") || tok_is(t, ".."))
		return false;
	for (size_t i = 0; i < t->n; i++) {
		char c = t->s[i];

		if (!(c >= 'a' && c <= 'z') && !(c >= 'A' && c <= 'Z') &&
		    !(c >= '0' && c <= '9') && c != '_' && c != '.' && c != '-')
			return false;
	}
	return true;
}

/* uid and gid lists take numbers only: resolving names would mean NSS
 * calls (maybe LDAP) in the daemon's loop at every reload, and a name
 * written back as its number could outgrow the line. (uid_t)-1 is no id. */
static int item_id(struct ps *ps, const struct tok *t, void *el)
{
	char b[SHOW_MAX];
	uint64_t v;

	if (!number(t, 0, UINT32_MAX - 1, &v))
		return perr(ps, "bad id '%s'", show(t, b));
	*(uint32_t *)el = (uint32_t)v;
	return 0;
}

/* inode:N, or a name (including "host") the resolver maps when deciding. */
static int item_ns(struct ps *ps, const struct tok *t, void *el)
{
	static const char pfx[] = "inode:";
	const size_t np = sizeof(pfx) - 1;
	struct pol_ns *ns = el;
	char b[SHOW_MAX];

	if (t->n >= np && !memcmp(t->s, pfx, np)) {
		struct tok num = { t->s + np, t->n - np };

		if (!number(&num, 1, UINT64_MAX, &ns->ino))
			return perr(ps, "bad netns inode '%s'", show(t, b));
		return 0;
	}
	if (!name_ok(t))
		return perr(ps, "bad netns name '%s'", show(t, b));
	memcpy(ns->name, t->s, t->n);
	return 0;
}

static int item_port(struct ps *ps, const struct tok *t, void *el)
{
	const char *dash = memchr(t->s, '-', t->n);
	size_t n = dash ? (size_t)(dash - t->s) : t->n;
	struct tok lo = { t->s, n }, hi = lo;
	struct pol_port *pp = el;
	uint64_t a, z;
	char b[SHOW_MAX];

	if (dash)
		hi = (struct tok){ dash + 1, t->n - n - 1 };
	if (!number(&lo, 1, 65535, &a) || !number(&hi, a, 65535, &z))
		return perr(ps, "bad port or range '%s'", show(t, b));
	pp->lo = (uint16_t)a;
	pp->hi = (uint16_t)z;
	return 0;
}

/* key=a,b,c: one array of items, allocated once for all of them. */
static int parse_sel(struct ps *ps, struct pol_rule *r, enum sel s,
		     const struct tok *val)
{
	const struct selector *sl = &sels[s];
	struct pol_list *l = &r->sel[s];
	const char *p = val->s, *end = val->s + val->n;
	size_t n = 1;

	if (l->v)
		return perr(ps, "%s= given twice", sl->key);
	for (size_t i = 0; i < val->n; i++)
		n += val->s[i] == ',';
	l->v = calloc(n, sl->size);
	if (!l->v)
		return -ENOMEM;
	for (; l->n < n; p++) {
		const char *comma = memchr(p, ',', (size_t)(end - p));
		struct tok item = { p, (size_t)((comma ? comma : end) - p) };
		int rc;

		if (!item.n)
			return perr(ps, "%s=: empty item in list", sl->key);
		rc = sl->item(ps, &item, (char *)l->v + l->n * sl->size);
		if (rc)
			return rc;
		l->n++;
		p += item.n;
	}
	return 0;
}

static int rule_word(struct ps *ps, struct pol_rule *r, const struct tok *t,
		     bool *any)
{
	const char *eq = memchr(t->s, '=', t->n);
	struct tok key = { t->s, eq ? (size_t)(eq - t->s) : t->n }, val;
	char b[SHOW_MAX];
	uint64_t v;

	if (tok_is(t, "any") || tok_is(t, "same-uid")) {
		bool *flag = tok_is(t, "any") ? any : &r->same_uid;

		if (*flag)
			return perr(ps, "%s given twice", show(t, b));
		*flag = true;
		return 0;
	}
	if (!eq)
		return perr(ps, "unknown selector '%s'", show(t, b));
	val = (struct tok){ eq + 1, t->n - key.n - 1 };
	if (!val.n)
		return perr(ps, "%s=: empty value", show(&key, b));
	if (tok_is(&key, "ring")) {
		if (r->ring)
			return perr(ps, "ring= given twice");
		if (!value(&globals[G_RING], &val, &v))
			return perr(ps, "ring=%s: want %s", show(&val, b),
				    globals[G_RING].want);
		r->ring = (uint32_t)v;
		return 0;
	}
	for (int s = 0; s < NSEL; s++)
		if (tok_is(&key, sels[s].key))
			return parse_sel(ps, r, s, &val);
	return perr(ps, "unknown selector '%s='", show(&key, b));
}

static bool has_sel(const struct pol_rule *r)
{
	for (int s = 0; s < NSEL; s++)
		if (r->sel[s].n)
			return true;
	return r->same_uid;
}

static void rule_free(struct pol_rule *r)
{
	for (int s = 0; s < NSEL; s++)
		free(r->sel[s].v);
}

static int rule_add(struct ps *ps, const struct pol_rule *r)
{
	struct policy *p = ps->p;

	if (p->nrules == RULES_MAX)
		return perr(ps, "more than %u rules", RULES_MAX);
	if (p->nrules == ps->cap) {
		unsigned int cap = ps->cap ? 2 * ps->cap : 16;
		struct pol_rule *v = realloc(p->rules, cap * sizeof(*v));

		if (!v)
			return -ENOMEM;
		p->rules = v;
		ps->cap = cap;
	}
	p->rules[p->nrules++] = *r;
	return 0;
}

static int parse_rule(struct ps *ps, const char *pos, const char *end,
		      bool allow)
{
	struct pol_rule r = { .line = ps->line, .allow = allow };
	bool any = false;
	struct tok t;
	int rc = 0;

	while (!rc && next_tok(&pos, end, &t))
		rc = rule_word(ps, &r, &t, &any);
	if (!rc && any && has_sel(&r))
		rc = perr(ps, "any must be the only selector");
	else if (!rc && !any && !has_sel(&r))
		rc = perr(ps, "rule without a selector (use any)");
	else if (!rc && !allow && r.ring)
		rc = perr(ps, "ring= on a deny rule");
	if (!rc)
		rc = rule_add(ps, &r);
	if (rc)
		rule_free(&r);
	return rc;
}

static int parse_global(struct ps *ps, const char *pos, const char *end,
			const struct tok *kw)
{
	struct tok sub = { "", 0 }, val, extra;
	char b[SHOW_MAX];
	int i;

	if (tok_is(kw, "quota"))
		next_tok(&pos, end, &sub);
	for (i = 0; i < NGLOBAL; i++)
		if (tok_is(kw, globals[i].kw) &&
		    (!globals[i].kw2 || tok_is(&sub, globals[i].kw2)))
			break;
	if (i == NGLOBAL && tok_is(kw, "quota"))
		return perr(ps, "quota: want channels or memory, not '%s'",
			    show(&sub, b));
	if (i == NGLOBAL)
		return perr(ps, "unknown keyword '%s'", show(kw, b));
	if (ps->seen[i])
		return perr(ps, "%s given twice (first on line %u)",
			    globals[i].name, ps->seen[i]);
	if (!next_tok(&pos, end, &val))
		return perr(ps, "%s: missing value", globals[i].name);
	if (next_tok(&pos, end, &extra))
		return perr(ps, "trailing '%s'", show(&extra, b));
	if (!value(&globals[i], &val, &ps->p->g[i]))
		return perr(ps, "%s: '%s' is not %s", globals[i].name,
			    show(&val, b), globals[i].want);
	ps->seen[i] = ps->line;
	return 0;
}

/* One line of n bytes (no '\n'), which ends at end_off in the text. The
 * length limit leaves out a comment and the blanks before it: written text
 * adds "  # line N" to every rule, and a rule never comes out longer than
 * it went in. */
static int parse_line(struct ps *ps, const char *s, size_t n, size_t end_off)
{
	const char *hash = memchr(s, '#', n);
	const char *end = hash ? hash : s + n;
	struct tok t;

	while (end > s && blank(end[-1]))
		end--;

	if (end_off > TEXT_MAX)
		return perr(ps, "text longer than %u bytes", TEXT_MAX);
	if (end - s > LINE_MAX_LEN)
		return perr(ps, "longer than %u bytes (before any comment)",
			    LINE_MAX_LEN);
	if (memchr(s, '\0', n))
		return perr(ps, "NUL byte");
	if (!next_tok(&s, end, &t))
		return 0;
	if (tok_is(&t, "allow") || tok_is(&t, "deny"))
		return parse_rule(ps, s, end, tok_is(&t, "allow"));
	return parse_global(ps, s, end, &t);
}

int policy_parse(const char *text, size_t len, struct policy **out, char *err,
		 size_t errlen)
{
	struct ps ps = { .err = err, .errlen = errlen };
	size_t off = 0;
	int rc = policy_default(&ps.p);

	while (!rc && off < len) {
		const char *s = text + off;
		const char *nl = memchr(s, '\n', len - off);
		size_t n = nl ? (size_t)(nl - s) : len - off;

		ps.line++;
		rc = parse_line(&ps, s, n, off + n + !!nl);
		off += n + 1;
	}
	if (rc == -ENOMEM && errlen)
		snprintf(err, errlen, "line %u: out of memory", ps.line);
	if (rc) {
		policy_free(ps.p);
		return rc;
	}
	*out = ps.p;
	return 0;
}

static int io_err(char *err, size_t errlen, const char *path, int rc)
{
	if (errlen)
		snprintf(err, errlen, "%s: %s", path, strerror(-rc));
	return rc;
}

/* The whole file, or -EFBIG past FILE_MAX bytes. */
static int read_all(int fd, char **buf, size_t *len)
{
	char *b = malloc(FILE_MAX + 1);
	size_t n = 0;
	ssize_t r = 1;

	if (!b)
		return -ENOMEM;
	while (n <= FILE_MAX && r) {
		r = read(fd, b + n, FILE_MAX + 1 - n);
		if (r < 0 && errno != EINTR) {
			int rc = -errno;

			free(b);
			return rc;
		}
		n += r > 0 ? (size_t)r : 0;
	}
	if (n > FILE_MAX) {
		free(b);
		return -EFBIG;
	}
	*buf = b;
	*len = n;
	return 0;
}

int policy_load(const char *path, bool missing_ok, struct policy **out,
		char *err, size_t errlen)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	char *buf = NULL;
	size_t len = 0;
	int rc;

	if (fd < 0 && errno == ENOENT && missing_ok)
		return policy_default(out);
	if (fd < 0)
		return io_err(err, errlen, path, -errno);
	rc = read_all(fd, &buf, &len);
	close(fd);
	if (rc)
		return io_err(err, errlen, path, rc);
	rc = policy_parse(buf, len, out, err, errlen);
	free(buf);
	return rc;
}

int policy_default(struct policy **out)
{
	struct policy *p = calloc(1, sizeof(*p));

	if (!p)
		return -ENOMEM;
	for (int i = 0; i < NGLOBAL; i++)
		p->g[i] = globals[i].dflt;
	*out = p;
	return 0;
}

void policy_free(struct policy *p)
{
	if (!p)
		return;
	for (unsigned int i = 0; i < p->nrules; i++)
		rule_free(&p->rules[i]);
	free(p->rules);
	free(p);
}

static bool has_id(const struct pol_list *l, uint32_t id)
{
	const uint32_t *v = l->v;

	for (unsigned int i = 0; i < l->n; i++)
		if (v[i] == id)
			return true;
	return false;
}

static bool has_port(const struct pol_list *l, uint16_t port)
{
	const struct pol_port *v = l->v;

	for (unsigned int i = 0; i < l->n; i++)
		if (port >= v[i].lo && port <= v[i].hi)
			return true;
	return false;
}

/* Both inodes in the list. Names are resolved once per decision, and an
 * inode of 0 (unknown, or a name that resolves to nothing) never matches. */
static bool both_ns(const struct pol_list *l, uint64_t a, uint64_t b,
		    pol_ns_resolver resolve)
{
	const struct pol_ns *v = l->v;
	bool fa = false, fb = false;

	for (unsigned int i = 0; i < l->n && !(fa && fb); i++) {
		uint64_t ino = v[i].ino;

		if (!ino && resolve)
			ino = resolve(v[i].name);
		fa |= ino && ino == a;
		fb |= ino && ino == b;
	}
	return fa && fb;
}

/* Every selector the rule has must match; the netns, which may cost a
 * stat() per name, is tried last. */
static bool rule_matches(const struct pol_rule *r, const struct pol_end *a,
			 const struct pol_end *b, pol_ns_resolver ns)
{
	const struct pol_list *l = r->sel;

	if (l[S_UID].n &&
	    !(has_id(&l[S_UID], a->uid) && has_id(&l[S_UID], b->uid)))
		return false;
	if (l[S_GID].n &&
	    !(has_id(&l[S_GID], a->gid) && has_id(&l[S_GID], b->gid)))
		return false;
	if (r->same_uid && a->uid != b->uid)
		return false;
	if (l[S_PORT].n && !has_port(&l[S_PORT], a->port) &&
	    !has_port(&l[S_PORT], b->port))
		return false;
	return !l[S_NS].n || both_ns(&l[S_NS], a->netns_ino, b->netns_ino, ns);
}

void policy_decide(const struct policy *p, const struct pol_end *a,
		   const struct pol_end *b, uint32_t ring_wish,
		   pol_ns_resolver ns, struct pol_verdict *v)
{
	const struct pol_rule *r = NULL;

	for (unsigned int i = 0; i < p->nrules && !r; i++)
		if (rule_matches(&p->rules[i], a, b, ns))
			r = &p->rules[i];
	v->ring_size = (uint32_t)p->g[G_RING];
	if (r) {
		v->allow = r->allow;
		v->line = r->line;
		if (r->ring)
			v->ring_size = r->ring;
	} else {
		v->allow = p->g[G_DFLT] == D_ALLOW ||
			   (p->g[G_DFLT] == D_SAME_UID &&
			    (a->uid == b->uid || !a->uid || !b->uid));
		v->line = 0;
	}
	if (ring_wish && ring_wish < v->ring_size) {
		uint32_t size = RING_MIN;

		while (size < ring_wish) /* < ring_size <= 1G: no overflow */
			size <<= 1;
		v->ring_size = size;
	}
	/* A large area no larger than the ring would add nothing. */
	v->deep_size = p->g[G_GROW] > v->ring_size ? (uint32_t)p->g[G_GROW] : 0;
}

uint32_t policy_quota_channels(const struct policy *p)
{
	return (uint32_t)p->g[G_QCHAN];
}

uint64_t policy_quota_bytes(const struct policy *p)
{
	return p->g[G_QMEM];
}

uint32_t policy_pending_ms(const struct policy *p)
{
	return (uint32_t)p->g[G_TIMEOUT];
}

uint32_t policy_pending_max(const struct policy *p)
{
	return (uint32_t)p->g[G_PMAX];
}

/* Sizes with the largest suffix that is exact, as value() parses them. */
static void put_size(FILE *f, uint64_t v)
{
	static const char sfx[] = "GMK";

	for (int i = 0; i < 3; i++) {
		unsigned int shift = 30 - 10 * i;

		if (v && !(v & ((1ull << shift) - 1))) {
			fprintf(f, "%" PRIu64 "%c", v >> shift, sfx[i]);
			return;
		}
	}
	fprintf(f, "%" PRIu64, v);
}

static void put_value(FILE *f, const struct global *g, uint64_t v)
{
	if (g->kind == K_RING || g->kind == K_BYTES)
		put_size(f, v);
	else if (g->kind == K_MS && v % 1000)
		fprintf(f, "%" PRIu64 "ms", v);
	else if (g->kind == K_MS)
		fprintf(f, "%" PRIu64 "s", v / 1000);
	else if (g->kind == K_DFLT)
		fputs(dflt_names[v], f);
	else
		fprintf(f, "%" PRIu64, v);
}

/* Names are restricted to a plain file name's characters; escape anyway,
 * so that the output stays JSON whatever a name holds. */
static void put_json_str(FILE *f, const char *s)
{
	fputc('"', f);
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;

		if (c == '"' || c == '\\')
			fprintf(f, "\\%c", c);
		else if (c < 0x20 || c > 0x7e)
			fprintf(f, "\\u%04x", c);
		else
			fputc(c, f);
	}
	fputc('"', f);
}

static void put_item(FILE *f, enum sel s, const void *el, bool json)
{
	const struct pol_port *pp = el;
	const struct pol_ns *ns = el;

	if (s == S_UID || s == S_GID) {
		fprintf(f, "%" PRIu32, *(const uint32_t *)el);
	} else if (s == S_PORT && json) {
		fprintf(f, "[%u,%u]", pp->lo, pp->hi);
	} else if (s == S_PORT) {
		fprintf(f, pp->lo == pp->hi ? "%u" : "%u-%u", pp->lo, pp->hi);
	} else if (ns->ino) {
		fprintf(f, json ? "\"inode:%" PRIu64 "\"" : "inode:%" PRIu64,
			ns->ino);
	} else if (json) {
		put_json_str(f, ns->name);
	} else {
		fputs(ns->name, f);
	}
}

static void put_list(FILE *f, enum sel s, const struct pol_list *l, bool json)
{
	for (unsigned int i = 0; i < l->n; i++) {
		if (i)
			fputc(',', f);
		put_item(f, s, (const char *)l->v + i * sels[s].size, json);
	}
}

static void put_rule_text(FILE *f, const struct pol_rule *r)
{
	fputs(r->allow ? "allow" : "deny", f);
	for (int s = 0; s < NSEL; s++) {
		if (!r->sel[s].n)
			continue;
		fprintf(f, " %s=", sels[s].key);
		put_list(f, s, &r->sel[s], false);
	}
	if (r->same_uid)
		fputs(" same-uid", f);
	if (!has_sel(r))
		fputs(" any", f);
	if (r->ring) {
		fputs(" ring=", f);
		put_size(f, r->ring);
	}
	fprintf(f, "  # line %u\n", r->line);
}

static void put_rule_json(FILE *f, const struct pol_rule *r)
{
	fprintf(f, "{\"line\":%u,\"verdict\":\"%s\"", r->line,
		r->allow ? "allow" : "deny");
	for (int s = 0; s < NSEL; s++) {
		fprintf(f, ",\"%s\":[", sels[s].key);
		put_list(f, s, &r->sel[s], true);
		fputc(']', f);
	}
	fprintf(f, ",\"same_uid\":%s,\"ring_size\":%" PRIu32 "}",
		r->same_uid ? "true" : "false", r->ring);
}

static void put_text(FILE *f, const struct policy *p)
{
	fputs("# ivmcd policy in force (ivmcd.conf(5))\n", f);
	for (int i = 0; i < NGLOBAL; i++) {
		fprintf(f, "%s ", globals[i].name);
		put_value(f, &globals[i], p->g[i]);
		fputc('\n', f);
	}
	for (unsigned int i = 0; i < p->nrules; i++)
		put_rule_text(f, &p->rules[i]);
}

static void put_json(FILE *f, const struct policy *p)
{
	fputc('{', f);
	for (int i = 0; i < NGLOBAL; i++) {
		fprintf(f, "\"%s\":", globals[i].json);
		if (globals[i].kind == K_DFLT)
			fprintf(f, "\"%s\",", dflt_names[p->g[i]]);
		else
			fprintf(f, "%" PRIu64 ",", p->g[i]);
	}
	fputs("\"rules\":[", f);
	for (unsigned int i = 0; i < p->nrules; i++) {
		fputs(i ? ",\n" : "\n", f);
		put_rule_json(f, &p->rules[i]);
	}
	fputs("]}\n", f);
}

int policy_write(const struct policy *p, FILE *f, bool json)
{
	if (json)
		put_json(f, p);
	else
		put_text(f, p);
	return fflush(f) || ferror(f) ? -EIO : 0;
}
