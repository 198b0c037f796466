/* SPDX-License-Identifier: MIT */
/*
 * Description: ivmcd --guest on the host, without VMs: two network
 * namespaces stand in for two guests, each with stand-in PCI devices for
 * its control region and the one pair region (t_guest.h). Two guest
 * daemons, one per VM, then pair TCP connections between the namespaces
 * over the pair region exactly as between two VMs (docs/vm.md, "The
 * guest's ivmcd"):
 * (1) a verified conversation attaches on both ends, in a slot of the
 *     allocating side's half, shown by both daemons' status; the slot is
 *     free again once both ends closed;
 * (2) twenty connections one after the other reuse the slots (a new
 *     generation each time) and all attach and verify;
 * (3) the host marks the peer VM gone in one control region: that side's
 *     reader gets every byte the peer sent before, then the end, while
 *     the TCP connection underneath is still up;
 * (4) unmodified socat under ivmc-run, one way (-u), in each "VM": the
 *     file arrives intact, and the slot's rings carried most of it.
 */
#include "t_guest.h"

#define IP_A	  "10.78.0.1"
#define IP_B	  "10.78.0.2"
#define PAIR_SIZE T_GUEST_PAIR_SIZE
#define RING	  T_GUEST_RING
#define GONE_BYTES 50000

/* The allocating VM: the end whose address:port sorts first (IP_A). */
#define ALLOC_VM 0

static void test_conv(int n)
{
	static char out[65536];

	for (int i = 0; i < n; i++) {
		struct t_report cr, sr;
		struct t_conv c;
		pid_t sp, cp;

		t_conv_init(&c, IP_B, T_CONV_CLIENT_FIRST);
		c.seed = (uint64_t)i;
		sp = t_ns_fork(tg.ns[1], t_guest_srv_b, &c);
		t_get(&c.srv_up, &c.port, sizeof(c.port), 10000);
		t_get(&c.srv_up, &c.port2, sizeof(c.port2), 10000);
		cp = t_ns_fork(tg.ns[0], t_guest_cli_a, &c);
		t_get(&c.cli_up, &cr, sizeof(cr), 20000);
		if (cr.state != 1 || cr.on_ring != 3)
			t_fail("connection %d: client state %d (%s), on_ring %d; "
			       "logs %s %s", i, cr.state, t_strerror(cr.state),
			       cr.on_ring, tg.dlog[0], tg.dlog[1]);
		if (i == 0) {
			/* Both daemons list the channel; the slot is in the
			 * allocator's half. */
			for (int v = 0; v < 2; v++) {
				t_guest_status(v, true, out, sizeof(out));
				if (!strstr(out, "\"netns\":\"peer VM\"") ||
				    !strstr(out, "\"a_to_b\":{\"mode\":\"ring\"") ||
				    !strstr(out, "\"b_to_a\":{\"mode\":\"ring\""))
					t_fail("VM %d: no ring channel to the peer VM: %s",
					       v, out);
			}
			t_guest_expect_slots(ALLOC_VM, 1);
			t_guest_status(0, false, out, sizeof(out));
			if (!strstr(out, "(peer VM)") || !strstr(out, "guest-b"))
				t_fail("text status: %s", out);
		}
		t_put(&c.cli_down, "g", 1);
		t_get(&c.cli_up, &cr, sizeof(cr), 20000);
		t_get(&c.srv_up, &sr, sizeof(sr), 20000);
		t_put(&c.srv_down, "q", 1);
		T_ASSERT_EQ(t_ns_wait(cp, 20000), 0);
		T_ASSERT_EQ(t_ns_wait(sp, 20000), 0);
		t_conv_close(&c);
		T_ASSERT_EQ(sr.state, 1);
		T_ASSERT_EQ(cr.sent, sr.received);
		T_ASSERT_EQ(sr.sent, cr.received);
	}
	/* Both ends closed: the slot is free again, and nothing is left. */
	t_guest_expect_slots(ALLOC_VM, 0);
	for (int v = 0; v < 2; v++) {
		for (int i = 0; i < 300; i++) {
			t_guest_status(v, true, out, sizeof(out));
			if (strstr(out, "\"channels\":[]"))
				break;
			usleep(10000);
		}
		if (!strstr(out, "\"channels\":[]"))
			t_fail("VM %d: channels left: %s", v, out);
	}
}

/* (3) The peer VM gone: the reader in A gets what B sent, then the end. */
struct gone {
	struct t_pipe srv_up, srv_down, cli_up, cli_down;
	uint16_t port;
};

static void gone_server(void *arg)
{
	struct gone *g = arg;
	uint16_t port = 0;
	int l = t_listen_on(IP_B, &port), fd;
	struct ivmc_chan *h;
	char buf[GONE_BYTES], x;

	setenv("IVMC_SOCKET", tg.sock[1], 1);
	t_put(&g->srv_up, &port, sizeof(port));
	fd = t_accept(l);
	T_ASSERT_OK(ivmc_tcp(fd, NULL, &h));
	/* Echo one byte at a time until the client is attached. */
	for (;;) {
		ssize_t r = ivmc_recv(h, &x, 1, 0);

		T_ASSERT_EQ(r, 1);
		if (x == 'Q')
			break;
		t_send_all(h, &x, 1);
	}
	t_fill(77, 0, buf, sizeof(buf));
	t_send_all(h, buf, sizeof(buf));
	t_put(&g->srv_up, "s", 1);
	t_get(&g->srv_down, &x, 1, 30000); /* hold the connection open */
	ivmc_close(h);
	close(fd);
	close(l);
}

static void gone_client(void *arg)
{
	struct gone *g = arg;
	int fd = t_connect_to(IP_B, g->port, NULL, 0);
	struct ivmc_chan *h;
	struct ivmc_stats st;
	char buf[GONE_BYTES], x = 'p';
	size_t got = 0;
	ssize_t r;

	setenv("IVMC_SOCKET", tg.sock[0], 1);
	T_ASSERT_OK(ivmc_tcp(fd, NULL, &h));
	for (int i = 0; i < 20000; i++) {
		T_ASSERT_OK(ivmc_stats(h, &st));
		if (ivmc_tcp_state(h) == 1 && st.on_ring == 3)
			break;
		t_send_all(h, &x, 1);
		T_ASSERT_EQ(ivmc_recv(h, &x, 1, 0), 1);
		if (i > 50)
			usleep(1000);
	}
	T_ASSERT_OK(ivmc_stats(h, &st));
	if (ivmc_tcp_state(h) != 1 || st.on_ring != 3)
		t_fail("not attached: %d, on_ring %u", ivmc_tcp_state(h),
		       (unsigned int)st.on_ring);
	t_send_all(h, "Q", 1);
	t_put(&g->cli_up, "a", 1);
	t_get(&g->cli_down, &x, 1, 30000); /* the host said "gone" */
	while (got < sizeof(buf)) {
		r = ivmc_recv(h, buf + got, sizeof(buf) - got, 0);
		if (r <= 0)
			t_fail("after %zu of %zu bytes: %s", got, sizeof(buf),
			       t_strerror(r));
		got += (size_t)r;
	}
	T_ASSERT_OK(t_verify(77, 0, buf, sizeof(buf)));
	r = ivmc_recv(h, buf, sizeof(buf), 0);
	if (r != 0 && r != -ECONNRESET)
		t_fail("after the peer VM went: %s, want the end",
		       t_strerror(r));
	ivmc_close(h);
	close(fd);
}

static void test_gone(void)
{
	struct gone g;
	pid_t sp, cp;
	char x;

	t_pipe_make(&g.srv_up);
	t_pipe_make(&g.srv_down);
	t_pipe_make(&g.cli_up);
	t_pipe_make(&g.cli_down);
	sp = t_ns_fork(tg.ns[1], gone_server, &g);
	t_get(&g.srv_up, &g.port, sizeof(g.port), 10000);
	cp = t_ns_fork(tg.ns[0], gone_client, &g);
	t_get(&g.cli_up, &x, 1, 20000); /* attached */
	t_get(&g.srv_up, &x, 1, 20000); /* sent GONE_BYTES after that */
	t_guest_set_peer(0, IVMC_VM_PEER_GONE, 0);
	t_put(&g.cli_down, "g", 1);
	T_ASSERT_EQ(t_ns_wait(cp, 20000), 0);
	t_put(&g.srv_down, "q", 1);
	T_ASSERT_EQ(t_ns_wait(sp, 20000), 0);
}

/* The most bytes any slot's latest channel moved one way (the slot
 * headers in the pair region, as `ivmcctl vm slots` reads them). */
static uint32_t slot_bytes_max(void)
{
	int fd = open(tg.pairfile, O_RDONLY | O_CLOEXEC);
	uint64_t rsz, base;
	uint32_t n, best = 0;
	uint8_t *m;

	T_ASSERT(fd >= 0);
	m = mmap(NULL, PAIR_SIZE, PROT_READ, MAP_SHARED, fd, 0);
	T_ASSERT(m != MAP_FAILED);
	close(fd);
	T_ASSERT_OK(chan_region_size(RING, 0, &rsz));
	ivmc_vm_carve(PAIR_SIZE, IVMC_VM_PAIR_HDR, 1, rsz, &base, &n);
	for (int side = 0; side < 2; side++)
		for (uint32_t k = 0; k < n; k++) {
			const struct ivmc_shm_hdr *h =
				(const void *)(m + ivmc_vm_slot_off(base, n, rsz,
								    side, k));

			if (h->magic != IVMC_SHM_MAGIC)
				continue;
			for (int d = 0; d < 2; d++) {
				uint32_t b = ivmc_w_ctr(atomic_load(&h->dir[d].prod)) -
					     h->init_ctr[d];

				if (b > best)
					best = b;
			}
		}
	munmap(m, PAIR_SIZE);
	return best;
}

static void run_socat(const char *ns, int v, const char *a1, const char *a2,
		      const char *log)
{
	char run[PATH_MAX];
	pid_t pid;

	t_bin(run, sizeof(run), "ivmc-run");
	fflush(stdout);
	pid = fork();
	T_ASSERT(pid >= 0);
	if (pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		t_ns_enter(ns);
		setenv("IVMC_SOCKET", tg.sock[v], 1);
		setenv("IVMC_LOG", "debug", 1);
		setenv("IVMC_LOG_FILE", log, 1);
		execl(run, "ivmc-run", "socat", "-u", a1, a2, (char *)NULL);
		_exit(127);
	}
	t_ns_adopt(pid);
}

static void test_socat(void)
{
	static uint8_t buf[8u << 20], got[8u << 20];
	char src[160], dst[160], a1[200], a2[200], l1[160], l2[160];
	pid_t rp, sp;
	int fd;

	if (system("socat -V >/dev/null 2>&1") != 0) {
		printf("socat: not installed, case skipped\n");
		return;
	}
	snprintf(src, sizeof(src), "%s/src", tg.dir);
	snprintf(dst, sizeof(dst), "%s/dst", tg.dir);
	snprintf(l1, sizeof(l1), "%s/socat-recv.log", tg.dir);
	snprintf(l2, sizeof(l2), "%s/socat-send.log", tg.dir);
	t_fill(5, 0, buf, sizeof(buf));
	t_write_file(src, buf, sizeof(buf));
	snprintf(a1, sizeof(a1), "TCP-LISTEN:7777,bind=%s,reuseaddr", IP_B);
	snprintf(a2, sizeof(a2), "OPEN:%s,creat,trunc", dst);
	run_socat(tg.ns[1], 1, a1, a2, l1);
	rp = t_ns.kid[t_ns.nkids - 1];
	snprintf(a1, sizeof(a1), "OPEN:%s", src);
	snprintf(a2, sizeof(a2), "TCP:%s:7777,retry=200,interval=0.05", IP_B);
	run_socat(tg.ns[0], 0, a1, a2, l2);
	sp = t_ns.kid[t_ns.nkids - 1];
	T_ASSERT_EQ(t_ns_wait(sp, 60000), 0);
	T_ASSERT_EQ(t_ns_wait(rp, 60000), 0);
	fd = open(dst, O_RDONLY | O_CLOEXEC);
	T_ASSERT(fd >= 0);
	T_ASSERT_EQ(read(fd, got, sizeof(got)), (ssize_t)sizeof(got));
	close(fd);
	if (memcmp(got, buf, sizeof(buf)))
		t_fail("socat: the file arrived changed");
	if (slot_bytes_max() < sizeof(buf) / 2) {
		char cmd[600];

		snprintf(cmd, sizeof(cmd), "tail -n 20 %s %s %s %s", l1, l2,
			 tg.dlog[0], tg.dlog[1]);
		(void)!system(cmd);
		t_fail("socat: the rings carried %u of %zu bytes",
		       slot_bytes_max(), sizeof(buf));
	}
}

int main(void)
{
	static const char *const ips[2][T_GUEST_IPS + 1] = { { IP_A },
							     { IP_B } };

	t_ns_setup(180);
	t_guest_setup(ips);
	t_guest_start(0);
	t_guest_start(1);
	test_conv(1);
	test_conv(20);
	test_socat();
	test_gone(); /* last: the pair stays down in A */
	return t_late_failures ? T_FAIL : T_PASS;
}
