/* SPDX-License-Identifier: MIT */
/*
 * Description: a TCP connection between two network namespaces joined by
 * a veth pair, both ends wrapped with ivmc_tcp() in their own processes,
 * attaches through one ivmcd: a server in netns B (setns, listen, accept)
 * and a client in netns A. Bytes both ways are verified before the server
 * even registers, while the attach happens and after it; both ends end up
 * on the ring; `ivmcctl --json status` shows the channel between the two
 * namespaces by name. Listeners announced with ivmc_tcp_listen() on B's
 * address and on 0.0.0.0 show in `ivmcctl status` LISTENERS, and go with
 * ivmc_tcp_unlisten() and with their process.
 *
 * Then the orders a real deployment meets: the server wraps its end
 * before the client's process has ever spoken to ivmcd, and a client
 * connects to an address B gained after ivmcd had read B's addresses.
 * Both must still attach.
 */
#include "t_netns.h"

#define IP_A  "10.77.0.1"
#define IP_B  "10.77.0.2"
#define IP_B2 "10.77.0.12" /* added later */

static const char *ns_a, *ns_b;

/* (1) Client in A, server in B; status and listeners while attached. */
static void test_attach(void)
{
	static char out[65536];
	struct t_report cr, sr;
	char a1[64], a2[64], u;
	struct t_conv c;
	pid_t sp, cp;

	t_conv_init(&c, IP_B, T_CONV_CLIENT_FIRST);
	c.listeners = true;
	sp = t_conv_start_server(&c, ns_b);
	cp = t_ns_fork(ns_a, t_conv_client, &c);
	t_get(&c.cli_up, &cr, sizeof(cr), 20000);
	if (cr.first != 0 || cr.state != 1)
		t_fail("client: %d (%s) at first, then %d (%s); want 0, 1",
		       cr.first, t_strerror(cr.first), cr.state,
		       t_strerror(cr.state));
	T_ASSERT_EQ(cr.on_ring, 3);

	/* The channel, between the two namespaces by name. */
	t_ivmcctl(out, sizeof(out), "--json status");
	if (t_json_chans_between(out, ns_a, ns_b) != 1)
		t_fail("no ring channel between %s and %s in: %s", ns_a, ns_b,
		       out);
	/* Both listeners, in B, in the table and in JSON. */
	snprintf(a1, sizeof(a1), "%s:%u", IP_B, c.port);
	snprintf(a2, sizeof(a2), "0.0.0.0:%u", c.port2);
	t_ivmcctl(out, sizeof(out), "status");
	if (!strstr(out, "LISTENERS") ||
	    !t_has_line(strstr(out, "LISTENERS"), ns_b, a1) ||
	    !t_has_line(strstr(out, "LISTENERS"), ns_b, a2))
		t_fail("listeners %s and %s in %s not shown:\n%s", a1, a2, ns_b,
		       out);
	t_ivmcctl(out, sizeof(out), "--json status");
	if (!strstr(out, a1) || !strstr(out, a2))
		t_fail("listeners not in the JSON status: %s", out);

	t_put(&c.cli_down, "g", 1);
	t_get(&c.cli_up, &cr, sizeof(cr), 20000);
	t_get(&c.srv_up, &sr, sizeof(sr), 20000);
	t_conv_expect_attached(&cr, &sr, "veth");
	T_ASSERT(sr.first == 0 || sr.first == 1);
	printf("attach: %s <-> %s, %llu bytes each way verified\n", ns_a, ns_b,
	       (unsigned long long)cr.sent);

	/* Unlisten takes the wildcard one away; the other stays. */
	t_get(&c.srv_up, &u, 1, 10000);
	t_ivmcctl(out, sizeof(out), "status");
	if (!t_has_line(out, ns_b, a1) || t_has_line(out, ns_b, a2))
		t_fail("after unlisten of %s:\n%s", a2, out);
	t_put(&c.srv_down, "q", 1);
	T_ASSERT_EQ(t_ns_wait(cp, 20000), 0);
	T_ASSERT_EQ(t_ns_wait(sp, 20000), 0);
	t_ns_expect_none_left(true);
	t_conv_close(&c);
}

/* (2) The server wraps first, while the client's process has never spoken
 * to ivmcd (so A is a namespace ivmcd does not know yet); (3) the client
 * connects to an address B gained after ivmcd read B's addresses. */
static void test_order(const char *ip, bool server_first, const char *what)
{
	struct t_report cr, sr;
	struct t_conv c;
	pid_t sp, cp;
	char w;

	t_conv_init(&c, ip, T_CONV_GATED);
	sp = t_conv_start_server(&c, ns_b);
	cp = t_ns_fork(ns_a, t_conv_client, &c);
	if (server_first) {
		t_put(&c.srv_down, "w", 1);
		t_get(&c.srv_up, &w, 1, 20000);
	}
	t_put(&c.cli_down, "w", 1);
	t_get(&c.cli_up, &w, 1, 20000);
	if (!server_first) {
		t_put(&c.srv_down, "w", 1);
		t_get(&c.srv_up, &w, 1, 20000);
	}
	t_put(&c.cli_down, "t", 1); /* talk */
	t_get(&c.cli_up, &cr, sizeof(cr), 20000);
	t_put(&c.cli_down, "g", 1);
	t_get(&c.cli_up, &cr, sizeof(cr), 20000);
	t_get(&c.srv_up, &sr, sizeof(sr), 20000);
	t_put(&c.srv_down, "q", 1);
	T_ASSERT_EQ(t_ns_wait(cp, 20000), 0);
	T_ASSERT_EQ(t_ns_wait(sp, 20000), 0);
	t_conv_close(&c);
	/* The bytes were right either way (both ends verified them). */
	printf("%s: client %d (%s) at first, then %d (%s); server %d (%s) "
	       "at first, then %d (%s)\n", what, cr.first, t_strerror(cr.first),
	       cr.state, t_strerror(cr.state), sr.first, t_strerror(sr.first),
	       sr.state, t_strerror(sr.state));
	if (cr.state != 1 || sr.state != 1)
		t_late_fail("BUG: %s: stayed on TCP: client %d (%s), server %d (%s)",
			    what, cr.state, t_strerror(cr.state), sr.state,
			    t_strerror(sr.state));
	else
		t_conv_expect_attached(&cr, &sr, what);
	t_ns_expect_none_left(false);
}

int main(void)
{
	struct t_conv keep;
	pid_t kp;
	int st;

	t_ns_setup(60);
	ns_a = t_ns_add("va");
	ns_b = t_ns_add("vb");
	t_ns_veth(ns_a, IP_A, ns_b, IP_B);
	t_daemon_start("pending_timeout 1500ms\n");

	test_attach();
	test_order(IP_B, true, "server wraps first");

	/* B gains an address while a process of B is known to ivmcd (it
	 * announced a listener and stays). */
	t_conv_init(&keep, IP_B, T_CONV_GATED);
	keep.listeners = true;
	kp = t_conv_start_server(&keep, ns_b);
	t_sh("ip -n %s addr add " IP_B2 "/24 dev v1", ns_b);
	test_order(IP_B2, false, "address added later");
	t_ns_kill(kp);
	t_conv_close(&keep);

	st = t_ns_daemon_stop();
	T_ASSERT(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	return t_late_failures ? T_FAIL : T_PASS;
}
