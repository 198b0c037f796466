/* SPDX-License-Identifier: MIT */
/*
 * Description: ivmcd's policy: which pairs of endpoints may share memory,
 * quotas and ring sizes, parsed from a config file (ivmcd.conf(5)). A
 * config is parsed whole or not at all: on any error the caller keeps the
 * policy it had.
 */
#ifndef IVMC_CTL_POLICY_H
#define IVMC_CTL_POLICY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define POLICY_PATH_DEFAULT "/etc/ivmc/ivmcd.conf"

struct policy;

/* One end of a connection, from kernel facts. */
struct pol_end {
	uint32_t uid, gid;
	uint64_t netns_ino; /* inode of the end's network namespace */
	uint16_t port;	    /* the end's local port */
};

struct pol_verdict {
	bool allow;
	unsigned int line;  /* rule that decided (config line), 0 = default */
	uint32_t ring_size; /* bytes per direction for this channel */
	uint32_t deep_size; /* its large area (ring_grow), 0 for none */
};

/* Resolve a netns name (as `ip netns` names it, /run/netns/NAME) to its
 * inode; 0 when there is none. The daemon passes one that stats. */
typedef uint64_t (*pol_ns_resolver)(const char *name);

/* Parse a whole config text. Returns 0 and *out, or -EINVAL with a message
 * "line N: ..." in err (NUL-terminated, at most errlen bytes), or -ENOMEM.
 * Never reads past len; text need not be NUL-terminated. */
int policy_parse(const char *text, size_t len, struct policy **out,
		 char *err, size_t errlen);

/* Read and parse a file (at most 1 MiB). A missing file gives the default
 * policy when missing_ok. Errors as policy_parse(), -errno for I/O (with
 * err filled). */
int policy_load(const char *path, bool missing_ok, struct policy **out,
		char *err, size_t errlen);

/* The built-in policy: allow a pair when both ends have one uid or either
 * is root; no quotas beyond the defaults. */
int policy_default(struct policy **out);

void policy_free(struct policy *p);

/* Decide for a pair (first matching rule wins, else the default rule).
 * ring_wish (0 = none) is capped by the policy's ring size. */
void policy_decide(const struct policy *p, const struct pol_end *a,
		   const struct pol_end *b, uint32_t ring_wish,
		   pol_ns_resolver ns, struct pol_verdict *v);

/* Limits, per domain (one uid in one network namespace). */
uint32_t policy_quota_channels(const struct policy *p);
uint64_t policy_quota_bytes(const struct policy *p);
/* How long an unpaired registration waits for its other end, in ms. */
uint32_t policy_pending_ms(const struct policy *p);
/* Registrations one client may have waiting at once. */
uint32_t policy_pending_max(const struct policy *p);

/* Write the policy in force, as config text (json false) or as one JSON
 * object (json true). Returns 0 or -errno. */
int policy_write(const struct policy *p, FILE *f, bool json);

#endif
