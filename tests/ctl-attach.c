/* SPDX-License-Identifier: MIT */
/*
 * Description: two ends of a loopback TCP connection, each wrapped with
 * ivmc_tcp(), attach through a private ivmcd: bytes sent before, during
 * and after the attach arrive once and in order, both directions end up
 * on the ring, and ivmcctl status lists the channel; three rings sent
 * without reading go on into the large area and back (status shows both).
 * Over IPv4 and IPv6,
 * with the daemon's defaults and again with --linger-us=0 (a wake-up per
 * message; ctl-linger tests lingering itself).
 */
#include "t_ctl.h"

#define CHUNK 1000
#define ROUNDS 200

/* With the daemon's default ring_grow: a sends three 64 KiB rings that b
 * does not read, without waiting (a goes on into the large area), and
 * status says "deep"; b reads them; a's next call (a receive) brings it
 * back to the ring, and status says so. */
static void grow(struct ivmc_chan *a, struct ivmc_chan *b, uint64_t *off)
{
	static char big[3 << 16], got[3 << 16], json[65536];
	ssize_t r;

	t_fill(4, *off, big, sizeof(big));
	r = ivmc_send(a, big, sizeof(big), IVMC_NONBLOCK);
	if (r != (ssize_t)sizeof(big))
		t_fail("a non-blocking send of 3 rings: %zd (%s)", r,
		       t_strerror(r));
	t_ivmcctl(json, sizeof(json), "--json status");
	if (!strstr(json, "\"deep\":true") ||
	    !strstr(json, "\"ring_grow\":4194304"))
		t_fail("status does not show the ring grown: %s", json);
	t_recv_all(b, got, sizeof(got));
	if (t_verify(4, *off, got, sizeof(got)))
		t_fail("bytes through the large area corrupt");
	*off += sizeof(big);
	T_ASSERT_EQ(ivmc_recv(a, got, 1, IVMC_NONBLOCK), -EAGAIN);
	t_ivmcctl(json, sizeof(json), "--json status");
	if (strstr(json, "\"deep\":true"))
		t_fail("status shows a ring still grown once read: %s", json);
}

static void one(bool v6)
{
	struct ivmc_chan *a, *b;
	struct ivmc_stats sa, sb;
	uint64_t off = 0;
	int lfd, cfd, afd, st;

	t_tcp_pair(v6, &lfd, &cfd, &afd);
	T_ASSERT_OK(ivmc_tcp(cfd, NULL, &a));
	/* Bytes flow on TCP before the other end even registers. */
	T_ASSERT_EQ(ivmc_tcp_state(a), 0);
	{
		char buf[CHUNK];

		t_fill(1, 0, buf, CHUNK);
		t_send_all(a, buf, CHUNK);
	}
	T_ASSERT_OK(ivmc_tcp(afd, NULL, &b));
	{
		char got[CHUNK];

		t_recv_all(b, got, CHUNK);
		if (t_verify(1, 0, got, CHUNK))
			t_fail("first chunk corrupt");
		t_fill(2, 0, got, CHUNK);
		t_send_all(b, got, CHUNK);
		t_recv_all(a, got, CHUNK);
		if (t_verify(2, 0, got, CHUNK))
			t_fail("first reply corrupt");
		off = CHUNK;
	}
	/* Keep talking while the attach happens under us. */
	for (int i = 0; i < ROUNDS; i++)
		t_exchange(a, b, &off, CHUNK, "ctl-attach");
	st = t_tcp_settle(a, b, 5000);
	if (st != 1 || ivmc_tcp_state(b) != 1)
		t_fail("%s: not attached: a %d b %d", v6 ? "v6" : "v4", st,
		       ivmc_tcp_state(b));
	for (int i = 0; i < ROUNDS; i++)
		t_exchange(a, b, &off, CHUNK, "ctl-attach");
	T_ASSERT_OK(ivmc_stats(a, &sa));
	T_ASSERT_OK(ivmc_stats(b, &sb));
	T_ASSERT_EQ(sa.on_ring, 3);
	T_ASSERT_EQ(sb.on_ring, 3);
	T_ASSERT_EQ(sa.bytes_sent, off);
	T_ASSERT_EQ(sb.bytes_received, off);
	grow(a, b, &off);
	/* Half-close: b reads a's bytes, then end of stream. */
	{
		char buf[CHUNK], got[CHUNK];

		t_fill(1, off, buf, CHUNK);
		t_send_all(a, buf, CHUNK);
		T_ASSERT_OK(ivmc_shutdown(a, SHUT_WR));
		t_recv_all(b, got, CHUNK);
		if (t_verify(1, off, got, CHUNK))
			t_fail("last chunk corrupt");
		T_ASSERT_EQ(ivmc_recv(b, got, 1, 0), 0);
	}
	T_ASSERT_OK(ivmc_close(a));
	T_ASSERT_OK(ivmc_close(b));
	close(cfd);
	close(afd);
	close(lfd);
}

int main(void)
{
	pid_t d;
	char cmd[2 * PATH_MAX + 64], bin[PATH_MAX];
	int st;

	t_alarm(60);
	d = t_daemon_start(NULL);
	one(false);
	one(true);
	/* Status shows the daemon and is valid for both formats. */
	t_bin(bin, sizeof(bin), "ivmcctl");
	snprintf(cmd, sizeof(cmd), "%s status >/dev/null && %s --json status | grep -q '\"paired\":2'",
		 bin, bin);
	if (system(cmd) != 0)
		t_fail("ivmcctl status: %s", cmd);
	st = t_daemon_stop(d);
	T_ASSERT(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	/* The same through a daemon that never lingers. */
	t_dextra = "--linger-us=0";
	d = t_daemon_start(NULL);
	one(false);
	one(true);
	st = t_daemon_stop(d);
	T_ASSERT(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	return T_PASS;
}
