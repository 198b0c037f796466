/* SPDX-License-Identifier: MIT */
/*
 * Description: ivmc-vmd's configuration file (ivmc-vmd(8), FILES): VMs with
 * their addresses, which pairs may talk, the pair regions' size and
 * layout. Parsed line by line; every error names its line. Written back
 * whole (ivmcctl vm add/remove/allow/deny), atomically.
 */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "chan/chan.h"
#include "ivmc-vmd.h"

#define WORDS_MAX 12

void conf_init(struct conf *c)
{
	memset(c, 0, sizeof(*c));
	c->pairs_all = true;
	c->pair_size = VMD_PAIR_SIZE_DEF;
	c->pair_ring = VMD_PAIR_RING_DEF;
	c->pair_chans = VMD_PAIR_CHANS_DEF;
}

bool conf_name_ok(const char *s)
{
	size_t n = strlen(s);

	if (!n || n >= IVMC_VM_NAME_MAX || !isalnum((unsigned char)s[0]))
		return false;
	for (size_t i = 0; i < n; i++)
		if (!isalnum((unsigned char)s[i]) && s[i] != '-' && s[i] != '_')
			return false;
	return true;
}

int conf_addr(const char *s, struct ivmc_shm_vm_addr *a)
{
	memset(a, 0, sizeof(*a));
	if (inet_pton(AF_INET, s, a->addr) == 1) {
		a->family = 4;
		return 0;
	}
	if (inet_pton(AF_INET6, s, a->addr) == 1) {
		a->family = 6;
		return 0;
	}
	return -EINVAL;
}

const char *conf_addr_str(const struct ivmc_shm_vm_addr *a, char *buf)
{
	if (!inet_ntop(a->family == 4 ? AF_INET : AF_INET6, a->addr, buf,
		       INET6_ADDRSTRLEN))
		snprintf(buf, INET6_ADDRSTRLEN, "?");
	return buf;
}

int conf_find(const struct conf *c, const char *name)
{
	for (unsigned int i = 0; i < c->nvm; i++)
		if (!strcmp(c->vm[i].name, name))
			return (int)i;
	return -1;
}

static bool rule_hits(const struct conf_rule *r, const char *x, const char *y)
{
	return !strcmp(r->a, x) && (!strcmp(r->b, "*") || !strcmp(r->b, y));
}

bool conf_allowed(const struct conf *c, unsigned int a, unsigned int b)
{
	const char *x = c->vm[a].name, *y = c->vm[b].name;
	bool ok = c->pairs_all;

	if (a == b)
		return false;
	/* In file order, the last rule naming the pair decides. */
	for (unsigned int i = 0; i < c->nrule; i++)
		if (rule_hits(&c->rule[i], x, y) || rule_hits(&c->rule[i], y, x))
			ok = c->rule[i].allow;
	return ok;
}

__attribute__((format(printf, 4, 5))) static int bad(char *err, size_t len,
						     unsigned int line,
						     const char *fmt, ...)
{
	int n = line ? snprintf(err, len, "line %u: ", line) : 0;
	va_list ap;

	if (n < 0 || (size_t)n >= len)
		n = 0;
	va_start(ap, fmt);
	/* NOLINTNEXTLINE(clang-analyzer-valist.Uninitialized) */
	vsnprintf(err + n, len - (size_t)n, fmt, ap);
	va_end(ap);
	return -EINVAL;
}

/* A size: decimal bytes, or with K, M or G. */
static int parse_size(const char *s, uint64_t max, uint64_t *v)
{
	char *end;
	unsigned long long n;

	if (!isdigit((unsigned char)*s))
		return -EINVAL;
	errno = 0;
	n = strtoull(s, &end, 10);
	if (errno)
		return -EINVAL;
	if (*end && !end[1] && strchr("KMG", *end))
		for (const char *u = "KMG"; *u; u++) {
			if (n > max)
				return -EINVAL;
			n <<= 10;
			if (*u == *end)
				break;
		}
	else if (*end)
		return -EINVAL;
	if (n > max)
		return -EINVAL;
	*v = n;
	return 0;
}

/* Split line (modified) into at most WORDS_MAX words; '#' starts a
 * comment. Returns the count, or -1 when there are too many. */
static int split(char *line, char **w)
{
	int n = 0;
	char *p = strchr(line, '#');

	if (p)
		*p = 0;
	for (p = strtok(line, " \t\r"); p; p = strtok(NULL, " \t\r")) {
		if (n == WORDS_MAX)
			return -1;
		w[n++] = p;
	}
	return n;
}

static int parse_vm(struct conf *c, char **w, int n, unsigned int line,
		    char *err, size_t len)
{
	struct conf_vm *v;

	if (n < 3)
		return bad(err, len, line, "vm NAME ADDR... (at least one address)");
	if (n - 2 > IVMC_VM_ADDR_MAX)
		return bad(err, len, line, "at most %d addresses", IVMC_VM_ADDR_MAX);
	if (!conf_name_ok(w[1]))
		return bad(err, len, line, "bad VM name '%s' (1 to %d of A-Z a-z 0-9 - _)",
			   w[1], IVMC_VM_NAME_MAX - 1);
	if (conf_find(c, w[1]) >= 0)
		return bad(err, len, line, "VM '%s' defined twice", w[1]);
	if (c->nvm == VMD_VM_MAX)
		return bad(err, len, line, "more than %d VMs", VMD_VM_MAX);
	v = &c->vm[c->nvm];
	memset(v, 0, sizeof(*v));
	snprintf(v->name, sizeof(v->name), "%s", w[1]);
	for (int i = 2; i < n; i++) {
		if (conf_addr(w[i], &v->addr[v->naddr]))
			return bad(err, len, line, "bad address '%s'", w[i]);
		for (unsigned int j = 0; j < v->naddr; j++)
			if (!memcmp(&v->addr[j], &v->addr[v->naddr],
				    sizeof(v->addr[j])))
				return bad(err, len, line, "address '%s' twice", w[i]);
		v->naddr++;
	}
	c->nvm++;
	return 0;
}

static int parse_rule(struct conf *c, char **w, int n, unsigned int line,
		      char *err, size_t len)
{
	struct conf_rule *r;

	if (n != 3)
		return bad(err, len, line, "%s NAME NAME|*", w[0]);
	if (!conf_name_ok(w[1]) || (strcmp(w[2], "*") != 0 && !conf_name_ok(w[2])))
		return bad(err, len, line, "bad VM name in '%s %s %s'", w[0],
			   w[1], w[2]);
	if (!strcmp(w[1], w[2]))
		return bad(err, len, line, "a VM never pairs with itself");
	if (c->nrule == VMD_RULE_MAX)
		return bad(err, len, line, "more than %d rules", VMD_RULE_MAX);
	r = &c->rule[c->nrule++];
	r->allow = w[0][0] == 'a';
	snprintf(r->a, sizeof(r->a), "%s", w[1]);
	snprintf(r->b, sizeof(r->b), "%s", w[2]);
	return 0;
}

static int parse_line(struct conf *c, char **w, int n, unsigned int line,
		      char *err, size_t len)
{
	uint64_t v;

	if (!strcmp(w[0], "vm"))
		return parse_vm(c, w, n, line, err, len);
	if (!strcmp(w[0], "allow") || !strcmp(w[0], "deny"))
		return parse_rule(c, w, n, line, err, len);
	if (n != 2)
		return bad(err, len, line, "'%s' takes one value, or is unknown", w[0]);
	if (!strcmp(w[0], "pairs")) {
		if (strcmp(w[1], "all") != 0 && strcmp(w[1], "none") != 0)
			return bad(err, len, line, "pairs all|none");
		c->pairs_all = w[1][0] == 'a';
	} else if (!strcmp(w[0], "pair-size")) {
		if (parse_size(w[1], 1ull << 30, &v) || v < 65536 || (v & (v - 1)))
			return bad(err, len, line, "pair-size: a power of two, 64K to 1G");
		c->pair_size = v;
	} else if (!strcmp(w[0], "pair-ring")) {
		uint64_t rsz;

		if (parse_size(w[1], 1ull << 30, &v) ||
		    chan_region_size((uint32_t)v, 0, &rsz))
			return bad(err, len, line, "pair-ring: a power of two, 4K to 1G");
		c->pair_ring = (uint32_t)v;
	} else if (!strcmp(w[0], "pair-channels")) {
		if (parse_size(w[1], 1024, &v) || !v)
			return bad(err, len, line, "pair-channels: 1 to 1024");
		c->pair_chans = (uint32_t)v;
	} else {
		return bad(err, len, line, "unknown keyword '%s'", w[0]);
	}
	return 0;
}

int conf_parse(const char *text, struct conf *c, char *err, size_t errlen)
{
	const char *p = text;
	char buf[1024], *w[WORDS_MAX];
	unsigned int line = 0;

	conf_init(c);
	while (*p) {
		const char *nl = strchr(p, '\n');
		size_t n = nl ? (size_t)(nl - p) : strlen(p);
		int nw;

		line++;
		if (n >= sizeof(buf))
			return bad(err, errlen, line, "longer than %zu bytes",
				   sizeof(buf) - 1);
		memcpy(buf, p, n);
		buf[n] = 0;
		p += n + (nl ? 1 : 0);
		if (memchr(buf, 0, n))
			return bad(err, errlen, line, "a NUL byte");
		nw = split(buf, w);
		if (nw < 0)
			return bad(err, errlen, line, "more than %d words", WORDS_MAX);
		if (nw && parse_line(c, w, nw, line, err, errlen))
			return -EINVAL;
	}
	return conf_check(c, err, errlen);
}

int conf_check(const struct conf *c, char *err, size_t errlen)
{
	uint64_t rsz;

	for (unsigned int i = 0; i < c->nrule; i++) {
		const struct conf_rule *r = &c->rule[i];

		if (conf_find(c, r->a) < 0 ||
		    (strcmp(r->b, "*") != 0 && conf_find(c, r->b) < 0))
			return bad(err, errlen, 0, "rule '%s %s %s' names a VM not defined",
				   r->allow ? "allow" : "deny", r->a, r->b);
	}
	if (chan_region_size(c->pair_ring, 0, &rsz) ||
	    IVMC_VM_PAIR_HDR + rsz * c->pair_chans > c->pair_size)
		return bad(err, errlen, 0,
			   "%u channels of %u-byte rings do not fit a pair-size of %llu",
			   c->pair_chans, c->pair_ring,
			   (unsigned long long)c->pair_size);
	return 0;
}

int conf_load(const char *path, struct conf *c, char *err, size_t errlen)
{
	char *text;
	ssize_t n;
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	if (fd < 0 && errno == ENOENT) {
		conf_init(c);
		return 0;
	}
	if (fd < 0) {
		int e = errno;

		bad(err, errlen, 0, "%s: %s", path, strerror(e));
		return -e;
	}
	text = malloc(VMD_CONF_MAX + 1);
	if (!text) {
		close(fd);
		return -ENOMEM;
	}
	n = read(fd, text, VMD_CONF_MAX + 1);
	close(fd);
	if (n < 0 || n > VMD_CONF_MAX) {
		free(text);
		return bad(err, errlen, 0, "%s: %s", path,
			   n < 0 ? strerror(errno) : "larger than 64 KiB");
	}
	text[n] = 0;
	n = conf_parse(text, c, err, errlen);
	free(text);
	return (int)n;
}

static void write_conf(FILE *f, const struct conf *c)
{
	char a[INET6_ADDRSTRLEN];

	fprintf(f, "# ivmc-vmd(8) configuration; ivmcctl vm add/remove/allow/deny rewrite it\n");
	fprintf(f, "pair-size %llu\npair-ring %u\npair-channels %u\npairs %s\n",
		(unsigned long long)c->pair_size, c->pair_ring, c->pair_chans,
		c->pairs_all ? "all" : "none");
	for (unsigned int i = 0; i < c->nvm; i++) {
		fprintf(f, "vm %s", c->vm[i].name);
		for (unsigned int j = 0; j < c->vm[i].naddr; j++)
			fprintf(f, " %s", conf_addr_str(&c->vm[i].addr[j], a));
		fputc('\n', f);
	}
	for (unsigned int i = 0; i < c->nrule; i++)
		fprintf(f, "%s %s %s\n", c->rule[i].allow ? "allow" : "deny",
			c->rule[i].a, c->rule[i].b);
}

int conf_save(const char *path, const struct conf *c)
{
	char tmp[4096];
	FILE *f;
	int fd, err = 0;

	if (snprintf(tmp, sizeof(tmp), "%s.tmp", path) >= (int)sizeof(tmp))
		return -ENAMETOOLONG;
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW,
		  0600);
	if (fd < 0)
		return -errno;
	f = fdopen(fd, "w");
	if (!f) {
		err = -errno;
		close(fd);
		unlink(tmp);
		return err;
	}
	write_conf(f, c);
	if (fflush(f) || fsync(fd))
		err = -errno;
	if (fclose(f) && !err)
		err = -errno;
	if (!err && rename(tmp, path) < 0)
		err = -errno;
	if (err)
		unlink(tmp);
	return err;
}
