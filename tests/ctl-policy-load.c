/* SPDX-License-Identifier: MIT */
/*
 * Description: policy_load(): a missing file is the default policy with
 * missing_ok and -ENOENT without; a file is read whole and parsed (errors
 * carry the line); exactly 1 MiB is accepted and one byte more refused.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ctl/policy.h"
#include "helpers.h"

static char dir[] = "/tmp/ivmc-policy-load.XXXXXX";
static char path[sizeof(dir) + 32];

static void put_file(const char *text, size_t len)
{
	FILE *f = fopen(path, "w");

	T_ASSERT(f);
	T_ASSERT_EQ(fwrite(text, 1, len, f), len);
	T_ASSERT(!fclose(f));
}

/* Comment lines of 1024 bytes, then len % 1024 more bytes of comment. */
static void put_big(size_t len)
{
	char *t = malloc(len);

	T_ASSERT(t);
	memset(t, '#', len);
	for (size_t i = 1023; i < len; i += 1024)
		t[i] = '\n';
	put_file(t, len);
	free(t);
}

static int load(bool missing_ok, struct policy **p, char *err, size_t errlen)
{
	*p = NULL;
	err[0] = '\0';
	return policy_load(path, missing_ok, p, err, errlen);
}

int main(void)
{
	struct pol_end a = { 1000, 1, 1, 1 }, b = { 1001, 1, 1, 1 };
	struct pol_verdict v;
	struct policy *p;
	char err[512];
	int rc;

	T_ASSERT(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/ivmcd.conf", dir);

	/* Missing: the default policy, or -ENOENT naming the file. */
	T_ASSERT_OK(load(true, &p, err, sizeof(err)));
	T_ASSERT(p);
	T_ASSERT_EQ(policy_quota_channels(p), 4096);
	T_ASSERT_EQ(policy_quota_bytes(p), 4ull << 30);
	policy_decide(p, &a, &b, 0, NULL, &v);
	T_ASSERT(!v.allow && v.line == 0 && v.ring_size == 64 * 1024);
	policy_free(p);
	rc = load(false, &p, err, sizeof(err));
	T_ASSERT_EQ(rc, -ENOENT);
	T_ASSERT(!p && strstr(err, path));

	put_file("quota channels 5\nallow uid=1000,1001\n", 37);
	T_ASSERT_OK(load(false, &p, err, sizeof(err)));
	T_ASSERT_EQ(policy_quota_channels(p), 5);
	policy_decide(p, &a, &b, 0, NULL, &v);
	T_ASSERT(v.allow && v.line == 2);
	policy_free(p);

	put_file("\n\nquota channels x\n", 19);
	rc = load(true, &p, err, sizeof(err));
	T_ASSERT_EQ(rc, -EINVAL);
	T_ASSERT(!p && !strncmp(err, "line 3: ", 8));

	put_big(1u << 20);
	T_ASSERT_OK(load(false, &p, err, sizeof(err)));
	policy_free(p);
	put_big((1u << 20) + 1);
	rc = load(false, &p, err, sizeof(err));
	T_ASSERT_EQ(rc, -EFBIG);
	T_ASSERT(!p && strstr(err, path));

	/* A directory is an I/O error, not the default. */
	T_ASSERT(!unlink(path));
	snprintf(path, sizeof(path), "%s", dir);
	rc = load(true, &p, err, sizeof(err));
	T_ASSERT_EQ(rc, -EISDIR);
	T_ASSERT(!rmdir(dir));
	return T_PASS;
}
