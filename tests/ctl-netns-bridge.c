/* SPDX-License-Identifier: MIT */
/*
 * Description: namespaces on a bridge, through one ivmcd. Three
 * namespaces, each with a veth into a bridge that lives in a fourth, on
 * 10.78.0.0/24: a connection between every two of them attaches (all
 * three at once), every byte verified, and `ivmcctl --json status` shows
 * the three channels by namespace name. Connections that must stay on
 * TCP do, with the right state, and their bytes still arrive:
 *  - a peer that never calls ivmc_tcp(): -ETIMEDOUT after the config's
 *    pending_timeout when its namespace is known to ivmcd, -EADDRNOTAVAIL
 *    at once when it is not;
 *  - a port forward through the bridge namespace (DNAT + masquerade with
 *    nft, when nft is installed): both ends call ivmc_tcp() and neither
 *    is ever paired;
 *  - two separate networks with the same addresses (two veth pairs, both
 *    10.79.0.1 <-> 10.79.0.2) carrying connections with the same
 *    4-tuple: an end of one must never be paired with an end of the
 *    other.
 */
#include "t_netns.h"

#define NET	 "10.78.0."
#define IP_BR	 NET "254"
#define OVL_X	 "10.79.0.1"
#define OVL_Y	 "10.79.0.2"
#define NPAIRS	 3
#define NAT_PORT  8080 /* our namespaces are fresh: any port is free */
#define OVL_DPORT 9090
#define OVL_SPORT 40000

static const char *ns_n[3], *ns_br, *ns_x[2], *ns_y[2];
static char ip_n[3][16];

/* The status until cond(out) holds (bounded). Returns whether it did. */
static bool status_until(char *out, size_t n, bool (*cond)(const char *))
{
	for (int i = 0; i < 300; i++) {
		t_ivmcctl(out, n, "--json status");
		if (cond(out))
			return true;
		usleep(10000);
	}
	return false;
}

/* (1) n1 -> n2, n2 -> n3, n3 -> n1, all at once. */
static void test_triangle(void)
{
	static char out[65536];
	struct t_conv c[NPAIRS];
	struct t_report cr[NPAIRS], sr[NPAIRS];
	pid_t sp[NPAIRS], cp[NPAIRS];

	for (int i = 0; i < NPAIRS; i++) {
		int j = (i + 1) % NPAIRS;

		t_conv_init(&c[i], ip_n[j], T_CONV_CLIENT_FIRST);
		c[i].listeners = true;
		c[i].seed = 100 + (uint64_t)i;
		sp[i] = t_conv_start_server(&c[i], ns_n[j]);
	}
	for (int i = 0; i < NPAIRS; i++)
		cp[i] = t_ns_fork(ns_n[i], t_conv_client, &c[i]);
	for (int i = 0; i < NPAIRS; i++) {
		t_get(&c[i].cli_up, &cr[i], sizeof(cr[i]), 20000);
		if (cr[i].first != 0 || cr[i].state != 1)
			t_fail("%s -> %s: %d (%s) at first, then %d (%s)",
			       ns_n[i], ns_n[(i + 1) % NPAIRS], cr[i].first,
			       t_strerror(cr[i].first), cr[i].state,
			       t_strerror(cr[i].state));
	}
	t_ivmcctl(out, sizeof(out), "--json status");
	for (int i = 0; i < NPAIRS; i++)
		if (t_json_chans_between(out, ns_n[i], ns_n[(i + 1) % NPAIRS]) != 1)
			t_fail("no ring channel %s <-> %s in: %s", ns_n[i],
			       ns_n[(i + 1) % NPAIRS], out);
	for (int i = 0; i < NPAIRS; i++)
		t_put(&c[i].cli_down, "g", 1);
	for (int i = 0; i < NPAIRS; i++) {
		t_get(&c[i].cli_up, &cr[i], sizeof(cr[i]), 20000);
		t_get(&c[i].srv_up, &sr[i], sizeof(sr[i]), 20000);
		t_conv_expect_attached(&cr[i], &sr[i], ns_n[i]);
	}
	for (int i = 0; i < NPAIRS; i++) {
		char u;

		t_get(&c[i].srv_up, &u, 1, 10000);
		t_put(&c[i].srv_down, "q", 1);
	}
	for (int i = 0; i < NPAIRS; i++) {
		T_ASSERT_EQ(t_ns_wait(cp[i], 20000), 0);
		T_ASSERT_EQ(t_ns_wait(sp[i], 20000), 0);
		t_conv_close(&c[i]);
	}
	t_ns_expect_none_left(true);
	printf("bridge: 3 pairs attached, %llu bytes each way each\n",
	       (unsigned long long)cr[0].sent);
}

/* (2) Peers that never call ivmc_tcp(): in a namespace ivmcd knows (the
 * server announced its listener) the client waits and expires; in one it
 * does not know, the client does not even register. */
static void test_plain_peer(void)
{
	struct t_conv c[2];
	struct t_report cr[2], sr[2];
	const char *srv[2] = { ns_n[1], ns_n[2] }, *cli[2] = { ns_n[0], ns_n[0] };

	t_conv_init(&c[0], ip_n[1], T_CONV_CLIENT_FIRST);
	c[0].listeners = true;
	c[0].srv_plain = true;
	c[0].seed = 200;
	t_conv_init(&c[1], ip_n[2], T_CONV_CLIENT_FIRST);
	c[1].srv_plain = true;
	c[1].seed = 201;
	t_conv_run(c, 2, srv, cli, cr, sr);
	if (cr[0].first != 0 || cr[0].state != -ETIMEDOUT)
		t_fail("peer without ivmc, known netns: %d then %d (%s), want "
		       "0 then -ETIMEDOUT", cr[0].first, cr[0].state,
		       t_strerror(cr[0].state));
	/* Not in the table: the handle looks again for a while (0), then
	 * settles on -EADDRNOTAVAIL. */
	if ((cr[1].first != 0 && cr[1].first != -EADDRNOTAVAIL) ||
	    cr[1].state != -EADDRNOTAVAIL)
		t_fail("peer without ivmc, unknown netns: %d then %d (%s), "
		       "want (0 or -EADDRNOTAVAIL) then -EADDRNOTAVAIL",
		       cr[1].first, cr[1].state,
		       t_strerror(cr[1].state));
	for (int i = 0; i < 2; i++) {
		T_ASSERT_EQ(cr[i].on_ring, 0);
		T_ASSERT_EQ(cr[i].sent, cr[i].received);
		T_ASSERT(cr[i].sent > 0);
	}
	/* ivmcd says which connection stayed on TCP, and why. */
	{
		static char out[65536], text[65536];
		char want[96];
		const char *recent;

		snprintf(want, sizeof(want), "\"remote\":\"%s:%u\",\"reason\":\"expired\"",
			 ip_n[1], (unsigned int)c[0].port);
		t_ivmcctl(out, sizeof(out), "--json status");
		recent = strstr(out, "\"stayed_on_tcp_recent\":[");
		if (!recent || !strstr(recent, want))
			t_fail("no %s in the recent fallbacks: %s", want, out);
		t_ivmcctl(text, sizeof(text), "status");
		if (!t_has_line(text, ip_n[1], "expired"))
			t_fail("no expired line for %s in: %s", ip_n[1], text);
	}
	t_ns_expect_none_left(true);
	printf("peer without ivmc: stays TCP (%s, %s), bytes verified\n",
	       t_strerror(cr[0].state), t_strerror(cr[1].state));
}

static bool have_nft(void)
{
	return t_sh_rc("nft --version >/dev/null 2>&1") == 0;
}

/* (3) n1 connects to the bridge namespace's address; nft there forwards
 * the port to n2 and masquerades. Both ends call ivmc_tcp(); a namespace
 * process in the bridge namespace makes its addresses known to ivmcd, so
 * both ends register and wait. Neither may be paired. */
static void test_nat(void)
{
	struct t_conv c, w;
	struct t_report cr, sr;
	pid_t wp, sp, cp;

	if (!have_nft()) {
		printf("NAT: skipped, nft(8) is not installed\n");
		return;
	}
	t_sh("ip netns exec %s sh -c 'echo 1 > /proc/sys/net/ipv4/ip_forward'",
	     ns_br);
	/* A witness in the bridge namespace: it announces a listener and
	 * never accepts. */
	t_conv_init(&w, IP_BR, T_CONV_GATED);
	w.listeners = true;
	wp = t_conv_start_server(&w, ns_br);

	t_conv_init(&c, ip_n[1], T_CONV_CLIENT_FIRST);
	c.seed = 300;
	/* The server listens on n2's address; the client goes to the same
	 * port on the bridge's address, forwarded by nft. (Our namespaces
	 * are fresh: any port is free.) */
	c.want_port = NAT_PORT;
	t_sh("ip netns exec %s nft -f - <<'EOF'\n"
	     "table ip ivmc_nat {\n"
	     " chain pre { type nat hook prerouting priority dstnat;"
	     " ip daddr " IP_BR " tcp dport %u dnat to %s; }\n"
	     " chain post { type nat hook postrouting priority srcnat;"
	     " ip daddr %s tcp dport %u masquerade; }\n"
	     "}\nEOF", ns_br, c.want_port, ip_n[1], ip_n[1], c.want_port);
	c.ip = IP_BR;
	c.listen_ip = ip_n[1];
	sp = t_conv_start_server(&c, ns_n[1]);
	cp = t_ns_fork(ns_n[0], t_conv_client, &c);
	t_get(&c.cli_up, &cr, sizeof(cr), 20000);
	t_put(&c.cli_down, "g", 1);
	t_get(&c.cli_up, &cr, sizeof(cr), 20000);
	t_get(&c.srv_up, &sr, sizeof(sr), 20000);
	t_put(&c.srv_down, "q", 1);
	T_ASSERT_EQ(t_ns_wait(cp, 20000), 0);
	T_ASSERT_EQ(t_ns_wait(sp, 20000), 0);
	t_conv_close(&c);
	t_ns_kill(wp);
	t_conv_close(&w);
	printf("NAT: client %d (%s) at first, then %d (%s); server %d (%s) "
	       "at first, then %d (%s)\n", cr.first, t_strerror(cr.first),
	       cr.state, t_strerror(cr.state), sr.first, t_strerror(sr.first),
	       sr.state, t_strerror(sr.state));
	/* Both registered (nothing told them "not co-located"), neither
	 * was paired: they expired. */
	if (cr.first != 0 || sr.first != 0)
		t_fail("NAT: an end did not register: client %d, server %d",
		       cr.first, sr.first);
	if (cr.state != -ETIMEDOUT || sr.state != -ETIMEDOUT)
		t_fail("NAT: client %d (%s), server %d (%s); want -ETIMEDOUT",
		       cr.state, t_strerror(cr.state), sr.state,
		       t_strerror(sr.state));
	T_ASSERT_EQ(cr.on_ring, 0);
	T_ASSERT_EQ(sr.on_ring, 0);
	T_ASSERT_EQ(sr.received, cr.sent);
	T_ASSERT_EQ(sr.sent, cr.received);
	t_ns_expect_none_left(true);
}

static bool two_pending(const char *s)
{
	return strstr(s, "\"pending\":2,") || !strstr(s, "\"channels\":[]");
}

/* (4) Two networks with the same addresses, two connections with the same
 * 4-tuple (10.79.0.1:P -> 10.79.0.2:Q), one in x1/y1, one in x2/y2. The
 * client end of the first and the server end of the second register
 * first: to ivmcd they look like the two ends of one connection. */
static void test_overlap(void)
{
	static char out[65536];
	struct t_conv c[2];
	struct t_report cr[2], sr[2];
	pid_t sp[2], cp[2];
	char w;

	for (int i = 0; i < 2; i++) {
		t_conv_init(&c[i], OVL_Y, T_CONV_GATED);
		c[i].listeners = true;
		c[i].want_port = OVL_DPORT;
		c[i].src = OVL_X;
		c[i].sport = OVL_SPORT;
		c[i].seed = 400 + (uint64_t)i;
		sp[i] = t_conv_start_server(&c[i], ns_y[i]);
	}
	for (int i = 0; i < 2; i++)
		cp[i] = t_ns_fork(ns_x[i], t_conv_client, &c[i]);
	/* x1's client end, then y2's server end. */
	t_put(&c[0].cli_down, "w", 1);
	t_get(&c[0].cli_up, &w, 1, 20000);
	t_put(&c[1].srv_down, "w", 1);
	t_get(&c[1].srv_up, &w, 1, 20000);
	if (!status_until(out, sizeof(out), two_pending))
		t_fail("overlap: ivmcd never took in both registrations: %s", out);
	if (t_json_chans_between(out, ns_x[0], ns_y[1]) ||
	    !strstr(out, "\"channels\":[]"))
		t_fail("BUG: overlap: %s (client of one connection) was paired "
		       "with %s (server of another connection with the same "
		       "4-tuple): %s", ns_x[0], ns_y[1], out);
	/* The other two ends; then everybody talks. */
	t_put(&c[0].srv_down, "w", 1);
	t_get(&c[0].srv_up, &w, 1, 20000);
	t_put(&c[1].cli_down, "w", 1);
	t_get(&c[1].cli_up, &w, 1, 20000);
	for (int i = 0; i < 2; i++)
		t_put(&c[i].cli_down, "t", 1);
	for (int i = 0; i < 2; i++) {
		t_get(&c[i].cli_up, &cr[i], sizeof(cr[i]), 20000);
		t_put(&c[i].cli_down, "g", 1);
		t_get(&c[i].cli_up, &cr[i], sizeof(cr[i]), 20000);
		t_get(&c[i].srv_up, &sr[i], sizeof(sr[i]), 20000);
		t_get(&c[i].srv_up, &w, 1, 10000);
		t_put(&c[i].srv_down, "q", 1);
	}
	for (int i = 0; i < 2; i++) {
		T_ASSERT_EQ(t_ns_wait(cp[i], 20000), 0);
		T_ASSERT_EQ(t_ns_wait(sp[i], 20000), 0);
		t_conv_close(&c[i]);
		/* Attached to its real peer, or TCP: the bytes said which. */
		if (cr[i].state == 1)
			t_conv_expect_attached(&cr[i], &sr[i], ns_x[i]);
		printf("overlap %d: client %d (%s), server %d (%s)\n", i,
		       cr[i].state, t_strerror(cr[i].state), sr[i].state,
		       t_strerror(sr[i].state));
	}
	t_ns_expect_none_left(true);
}

int main(void)
{
	int st;

	t_ns_setup(60);
	ns_br = t_ns_add("bbr");
	t_sh("ip -n %s link add br0 type bridge && ip -n %s link set br0 up",
	     ns_br, ns_br);
	t_sh("ip -n %s addr add " IP_BR "/24 dev br0", ns_br);
	for (int i = 0; i < 3; i++) {
		char tag[8];

		snprintf(tag, sizeof(tag), "bn%d", i + 1);
		ns_n[i] = t_ns_add(tag);
		snprintf(ip_n[i], sizeof(ip_n[i]), NET "%d", i + 1);
		t_sh("ip -n %s link add p%d type veth peer name eth0 netns %s",
		     ns_br, i + 1, ns_n[i]);
		t_sh("ip -n %s link set p%d master br0 && ip -n %s link set p%d up",
		     ns_br, i + 1, ns_br, i + 1);
		t_sh("ip -n %s addr add %s/24 dev eth0 && ip -n %s link set eth0 up",
		     ns_n[i], ip_n[i], ns_n[i]);
	}
	for (int i = 0; i < 2; i++) {
		char tag[8];

		snprintf(tag, sizeof(tag), "bx%d", i + 1);
		ns_x[i] = t_ns_add(tag);
		snprintf(tag, sizeof(tag), "by%d", i + 1);
		ns_y[i] = t_ns_add(tag);
		t_sh("ip -n %s link add eth0 type veth peer name eth0 netns %s",
		     ns_x[i], ns_y[i]);
		t_sh("ip -n %s addr add " OVL_X "/24 dev eth0 && ip -n %s link set eth0 up",
		     ns_x[i], ns_x[i]);
		t_sh("ip -n %s addr add " OVL_Y "/24 dev eth0 && ip -n %s link set eth0 up",
		     ns_y[i], ns_y[i]);
	}
	t_daemon_start("pending_timeout 1500ms\n");

	test_triangle();
	test_plain_peer();
	test_nat();
	test_overlap();

	st = t_ns_daemon_stop();
	T_ASSERT(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	return T_PASS;
}
