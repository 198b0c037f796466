/* SPDX-License-Identifier: MIT */
/*
 * Description: policy by network namespace (issue 5, authorisation). Two
 * namespaces joined by a veth pair; ivmcd's policy allows pairs only
 * within namespace A (`default deny`, `allow netns=A`). A connection from
 * A to a server in B, both ends calling ivmc_tcp(), never gets a channel:
 * both handles say -EACCES, every byte goes over TCP and is verified, no
 * channel is listed, and `ivmcctl status` lists both ends under STAYED ON
 * TCP with reason "denied". After `ivmcctl reload` with B allowed too, the
 * same kind of connection attaches (so the refusal was the policy's).
 */
#include "t_netns.h"

#define IP_A "10.78.0.1"
#define IP_B "10.78.0.2"

static const char *ns_a, *ns_b;

static void conf(const char *text)
{
	char path[PATH_MAX];
	FILE *f;

	t_path(path, sizeof(path), "ivmcd.conf");
	f = fopen(path, "w");
	if (!f || fputs(text, f) < 0 || fclose(f))
		t_fail("write %s", path);
}

/* One conversation, client in A, server in B; both reports. */
static void converse(struct t_report *cr, struct t_report *sr, uint64_t seed)
{
	struct t_conv c;

	t_conv_init(&c, IP_B, T_CONV_CLIENT_FIRST);
	c.seed = seed;
	t_conv_run(&c, 1, &ns_b, &ns_a, cr, sr);
}

int main(void)
{
	static char out[65536];
	char text[512];
	struct t_report cr, sr;
	const char *recent;
	int st;

	t_ns_setup(60);
	ns_a = t_ns_add("pa");
	ns_b = t_ns_add("pb");
	t_ns_veth(ns_a, IP_A, ns_b, IP_B);
	snprintf(text, sizeof(text),
		 "pending_timeout 1500ms\ndefault deny\nallow netns=%s\n", ns_a);
	t_daemon_start(text);

	/* A <-> B: not allowed. */
	converse(&cr, &sr, 500);
	if (cr.state != -EACCES || sr.state != -EACCES)
		t_fail("A <-> B with only A allowed: client %d (%s), server %d "
		       "(%s); want -EACCES both", cr.state,
		       t_strerror(cr.state), sr.state, t_strerror(sr.state));
	T_ASSERT_EQ(cr.on_ring, 0);
	T_ASSERT_EQ(sr.on_ring, 0);
	T_ASSERT(cr.sent > 0 && cr.sent == cr.received);
	t_ivmcctl(out, sizeof(out), "--json status");
	recent = strstr(out, "\"stayed_on_tcp_recent\":[");
	if (!recent || !strstr(recent, "\"reason\":\"denied\"") ||
	    !strstr(recent, IP_A) || !strstr(recent, IP_B))
		t_fail("the denied pair is not in the recent fallbacks: %s", out);
	if (!strstr(out, "\"channels\":[]"))
		t_fail("a channel listed for a denied pair: %s", out);
	printf("denied: %s <-> %s stays TCP (%s), %llu bytes each way verified\n",
	       ns_a, ns_b, t_strerror(cr.state), (unsigned long long)cr.sent);
	t_ns_expect_none_left(true);

	/* B allowed too: the same connection attaches. */
	snprintf(text, sizeof(text),
		 "pending_timeout 1500ms\ndefault deny\nallow netns=%s,%s\n",
		 ns_a, ns_b);
	conf(text);
	t_ivmcctl(out, sizeof(out), "reload");
	converse(&cr, &sr, 501);
	t_conv_expect_attached(&cr, &sr, "after the reload");
	printf("after reload allowing %s too: attached, %llu bytes verified\n",
	       ns_b, (unsigned long long)cr.sent);
	t_ns_expect_none_left(true);

	st = t_ns_daemon_stop();
	T_ASSERT(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	return t_late_failures ? T_FAIL : T_PASS;
}
