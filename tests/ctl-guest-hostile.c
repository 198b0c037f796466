/* SPDX-License-Identifier: MIT */
/*
 * Description: a hostile peer VM on the guests' link cannot harm a guest's
 * ivmcd or its other connections (docs/vm.md, "The guest's ivmcd";
 * docs/SECURITY.md G16). Two network namespaces stand in for two VMs
 * (t_guest.h); only VM A runs ivmcd --guest. The test itself is VM B's
 * daemon: it opens the link (channel 0 of the pair region) as side 1,
 * ring-only and non-blocking, as guest.c's peer_up() does, and writes
 * what it likes. A has two addresses: its connections from A1 sort first
 * (A allocates their slots), those from A2 sort after B's (B does). A
 * genuine connection is a client in A wrapped with ivmc_tcp() talking to a
 * plain TCP server in B, its stream verified both ways.
 * (a) garbage (wrong magic, pad, unknown types, addresses that are not
 *     the VMs', a REG or CHAN from the wrong end) is counted in
 *     "msgs_bad", one each, and A goes on pairing;
 * (b) a CHAN for a connection A never registered: A answers FREE of that
 *     slot and generation, hands nothing out, and does not hold the slot;
 * (c) a CHAN with a slot out of range, the wrong ring size, or a slot A
 *     holds for another live connection: refused (that connection goes
 *     to TCP with its data intact), the live one unharmed and its slot
 *     given back (FREE) only when its client is done;
 * (d) a FREE of the wrong generation, of a slot A does not hold, or out
 *     of range: ignored, the slot stays in use even with A's own end
 *     gone, until the right FREE;
 * (e) more REGs than A keeps (4096): the rest answered NOCHAN LIMIT, A's
 *     memory bounded, and A still pairs;
 * (f) lies in the link ring's producer word (far ahead, backwards): the
 *     link is poisoned and the pair down, A's new connections to B stay
 *     on TCP with their data intact, A serves on; a new session (the host
 *     lays the region out again) brings the pair back;
 * (g) a link B never reads: A's queue fills, its new connections go to
 *     TCP at once (-ENOBUFS) with their data intact, the losses are
 *     counted but not logged one by one, A does not spin, and once B reads
 *     again A pairs again.
 */
#include "../src/ctl/proto.h"
#include "t_guest.h"

#define IP_A1	   "10.79.0.1" /* A's first address: sorts before B's */
#define IP_B	   "10.79.0.2"
#define IP_A2	   "10.79.0.3" /* A's second: sorts after B's */
#define REMOTE_MAX 4096	       /* G_REMOTE_MAX in tools/ivmcd/guest.c */
#define LQ_MAX	   16384       /* messages read, not yet looked at */

typedef struct ivmc_shm_vm_msg msg_t;

/* VM B's end of the link, and what it read. */
static struct {
	int fd;
	uint8_t *map;		   /* the pair region */
	struct ivmc_shm_hdr *hdr;  /* the link's header in it */
	struct chan *c;
	uint64_t epoch, slot_size, base;
	uint32_t nslots, tag;
	bool no_read;		   /* (g): B reads nothing */
	msg_t q[LQ_MAX];
	unsigned int qh, qt;
	uint8_t part[IVMC_VM_MSG_SIZE];
	size_t partlen;
} L;

static uint64_t conn_seq;

/* ---- VM B's link ------------------------------------------------------ */

static void lk_open(void)
{
	struct chan_cfg cfg = { .side = 1, .side_fd = -1, .nonblock = true,
				.wait_mode = CHAN_WAIT_SLEEP };

	L.fd = open(tg.pairfile, O_RDWR | O_CLOEXEC);
	T_ASSERT(L.fd >= 0);
	L.map = t_guest_map_pair();
	L.hdr = (void *)(L.map + IVMC_VM_PAIR_HDR);
	T_ASSERT_OK(chan_open_mem(&cfg, L.fd, IVMC_VM_PAIR_HDR,
				  T_GUEST_PAIR_SIZE - IVMC_VM_PAIR_HDR, &L.c));
	T_ASSERT_OK(chan_region_size(T_GUEST_RING, 0, &L.slot_size));
	ivmc_vm_carve(T_GUEST_PAIR_SIZE, IVMC_VM_PAIR_HDR, 1, L.slot_size,
		      &L.base, &L.nslots);
	T_ASSERT(L.nslots > 8);
	L.qh = L.qt = 0;
	L.partlen = 0;
}

static void lk_close(void)
{
	chan_close(L.c);
	munmap(L.map, T_GUEST_PAIR_SIZE);
	close(L.fd);
}

/* Take in whatever A has written. */
static void lk_pump(void)
{
	for (;;) {
		struct iovec iov = { L.part + L.partlen,
				     sizeof(L.part) - L.partlen };
		ssize_t n = chan_recvv(L.c, &iov, 1, CHAN_NONBLOCK);

		if (n == -EAGAIN)
			return;
		if (n <= 0)
			t_fail("link: %s", n ? t_strerror(n) : "end of stream");
		L.partlen += (size_t)n;
		if (L.partlen < sizeof(L.part))
			continue;
		if (L.qt - L.qh == LQ_MAX)
			t_fail("link: more than %d messages unread", LQ_MAX);
		memcpy(&L.q[L.qt++ % LQ_MAX], L.part, sizeof(L.part));
		L.partlen = 0;
	}
}

/* The next message from A, within ms; false if none came. */
static bool lk_next(msg_t *m, int ms)
{
	uint64_t end = t_now_ns() + (uint64_t)ms * 1000000u;

	while (L.qh == L.qt) {
		lk_pump();
		if (L.qh != L.qt)
			break;
		if (t_now_ns() > end)
			return false;
		usleep(500);
	}
	*m = L.q[L.qh++ % LQ_MAX];
	return true;
}

/* Read and drop what A sends until it has sent nothing for quiet_ms
 * (A flushes its queue at every tick, 100 ms apart at most). Returns how
 * many messages that was, those read before included. */
static unsigned int lk_drain(int quiet_ms)
{
	unsigned int n = L.qt - L.qh;
	msg_t m;

	while (lk_next(&m, quiet_ms))
		n++;
	L.qh = L.qt;
	return n;
}

/* Write one message (A drains the link every 1-100 ms). */
static void lk_send(const msg_t *m)
{
	size_t off = 0;

	for (int i = 0; off < sizeof(*m); i++) {
		struct iovec iov = { (char *)m + off, sizeof(*m) - off };
		ssize_t n = chan_sendv(L.c, &iov, 1, CHAN_NONBLOCK);

		if (n > 0) {
			off += (size_t)n;
			continue;
		}
		if (n != -EAGAIN)
			t_fail("link send: %s", t_strerror(n));
		if (i > 20000)
			t_fail("link send: A took nothing for 10 s");
		if (!L.no_read)
			lk_pump();
		usleep(500);
	}
}

static void addr_of(uint8_t a[16], const char *ip)
{
	memset(a, 0, 16);
	a[10] = a[11] = 0xff; /* IPv4-mapped, as struct kaddr */
	if (inet_pton(AF_INET, ip, a + 12) != 1)
		t_fail("address %s", ip);
}

/* A message from B about connection B ip:port <-> A ip:port. */
static void msg_make(msg_t *m, int type, const char *b_ip, uint16_t b_port,
		     const char *a_ip, uint16_t a_port)
{
	memset(m, 0, sizeof(*m));
	m->magic = IVMC_VM_MSG_MAGIC;
	m->type = (uint16_t)type;
	addr_of(m->la, b_ip);
	addr_of(m->ra, a_ip);
	m->lport = b_port;
	m->rport = a_port;
}

/* B's message about the connection A announced with its REG a. */
static void msg_mirror(msg_t *m, int type, const msg_t *a)
{
	memset(m, 0, sizeof(*m));
	m->magic = IVMC_VM_MSG_MAGIC;
	m->type = (uint16_t)type;
	memcpy(m->la, a->ra, 16);
	memcpy(m->ra, a->la, 16);
	m->lport = a->rport;
	m->rport = a->lport;
}

static void send_chan(const msg_t *a, uint32_t slot, uint32_t gen,
		      uint32_t ring)
{
	msg_t m;

	msg_mirror(&m, IVMC_VM_MSG_CHAN, a);
	m.slot = slot;
	m.gen = gen;
	m.ring_size = ring;
	lk_send(&m);
}

static void send_free(uint32_t slot, uint32_t gen)
{
	msg_t m;

	memset(&m, 0, sizeof(m));
	m.magic = IVMC_VM_MSG_MAGIC;
	m.type = IVMC_VM_MSG_FREE;
	m.slot = slot;
	m.gen = gen;
	lk_send(&m);
}

/* What A sent before a ping's answer. */
struct seen {
	unsigned int n[5];	 /* by type (0: unknown) */
	unsigned int nochan_limit;
	uint32_t free_slot[64], free_gen[64];
	unsigned int nfree;
};

static void seen_add(struct seen *s, const msg_t *m)
{
	s->n[m->type <= IVMC_VM_MSG_FREE ? m->type : 0]++;
	if (m->type == IVMC_VM_MSG_NOCHAN && m->reason == CTL_R_LIMIT)
		s->nochan_limit++;
	if (m->type == IVMC_VM_MSG_FREE && s->nfree < 64) {
		s->free_slot[s->nfree] = m->slot;
		s->free_gen[s->nfree++] = m->gen;
	}
}

static bool seen_free(const struct seen *s, uint32_t slot, uint32_t gen)
{
	for (unsigned int i = 0; i < s->nfree; i++)
		if (s->free_slot[i] == slot && (gen == UINT32_MAX ||
						s->free_gen[i] == gen))
			return true;
	return false;
}

/*
 * A CHAN A answers at once and always the same way: for a connection it
 * never registered, in B's last slot (never handed out here), it sends
 * FREE of that slot and the generation we chose. A handles the link in
 * order, so once the answer is read, A has handled everything sent before
 * and all it sent on the way is in *s (if s).
 */
static void lk_ping(struct seen *s)
{
	uint32_t gen = 0x50000000u + ++L.tag;
	msg_t m;

	msg_make(&m, IVMC_VM_MSG_CHAN, IP_B, 1, IP_A2, 1);
	m.slot = L.nslots - 1;
	m.gen = gen;
	m.ring_size = T_GUEST_RING;
	lk_send(&m);
	for (int i = 0;; i++) {
		if (!lk_next(&m, 10000))
			t_fail("no answer to ping %u", L.tag);
		if (m.type == IVMC_VM_MSG_FREE && m.gen == gen &&
		    m.slot == L.nslots - 1)
			return;
		if (s)
			seen_add(s, &m);
	}
}

/* ---- A, as the host sees it ------------------------------------------- */

static uint64_t bad(void)
{
	return t_guest_status_num(0, "msgs_bad");
}

static long rss_kb(pid_t pid)
{
	char path[64], line[256];
	long kb = -1;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	f = fopen(path, "r");
	T_ASSERT(f);
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "VmRSS: %ld kB", &kb) == 1)
			break;
	fclose(f);
	return kb;
}

/* utime + stime in clock ticks. */
static unsigned long long cpu_ticks(pid_t pid)
{
	char path[64], buf[1024], *p;
	unsigned long long ut, st;
	ssize_t n;
	int fd;

	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	T_ASSERT(fd >= 0);
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	T_ASSERT(n > 0);
	buf[n] = 0;
	p = strrchr(buf, ')'); /* after the command name */
	T_ASSERT(p);
	/* state ppid pgrp session tty tpgid flags minflt cminflt majflt
	 * cmajflt utime stime */
	if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u "
		   "%llu %llu", &ut, &st) != 2)
		t_fail("%s: %s", path, buf);
	return ut + st;
}

/* Lines of A's log containing s. */
static int log_lines(const char *s)
{
	char line[1024];
	FILE *f = fopen(tg.dlog[0], "r");
	int n = 0;

	T_ASSERT(f);
	while (fgets(line, sizeof(line), f))
		n += strstr(line, s) != NULL;
	fclose(f);
	return n;
}

/* The host starts a new session of the pair: VM B gone, the region laid
 * out again, B back with epoch + 1. */
static void new_session(void)
{
	char pat[64];

	lk_close();
	t_guest_set_peer(0, IVMC_VM_PEER_GONE, 0);
	t_guest_expect(0, "\"link\":false");
	t_guest_make_pair(++L.epoch);
	t_guest_set_peer(0, IVMC_VM_PEER_UP, L.epoch);
	snprintf(pat, sizeof(pat), "\"link\":true,\"epoch\":%llu,",
		 (unsigned long long)L.epoch);
	t_guest_expect(0, pat);
	lk_open();
}

/* ---- genuine connections ---------------------------------------------- */

/* A client in A (from src) wrapped with ivmc_tcp(), a plain server in B;
 * a is A's REG of it. */
struct gconn {
	struct t_conv c;
	pid_t sp, cp;
	msg_t a;
	struct t_report cr, sr;
};

static void gconn_start(struct gconn *g, const char *src, int settle_ms)
{
	char w;

	t_conv_init(&g->c, IP_B, T_CONV_GATED);
	g->c.src = src;
	g->c.srv_plain = true;
	g->c.cli_close_aborts = true;
	g->c.seed = ++conn_seq;
	g->c.settle_ms = settle_ms;
	g->sp = t_conv_start_server(&g->c, tg.ns[1]);
	g->cp = t_ns_fork(tg.ns[0], t_guest_cli_a, &g->c);
	t_put(&g->c.srv_down, "g", 1);
	t_get(&g->c.srv_up, &w, 1, 10000); /* accepted */
	t_put(&g->c.cli_down, "g", 1);
	t_get(&g->c.cli_up, &w, 1, 10000); /* wrapped: its REG_CONN is sent */
}

/* A's REG of g on the link: it names the connection as A sees it. */
static void gconn_reg(struct gconn *g)
{
	uint8_t a[16], b[16];
	msg_t m;

	addr_of(a, g->c.src);
	addr_of(b, IP_B);
	for (;;) {
		if (!lk_next(&m, 10000))
			t_fail("no REG from A for the connection to port %u",
			       g->c.port);
		if (m.type == IVMC_VM_MSG_REG && m.rport == g->c.port)
			break;
	}
	if (memcmp(m.la, a, 16) || memcmp(m.ra, b, 16) || !m.lport || m.slot ||
	    m.gen || m.ring_size || m.reason || m.vec || m.pad)
		t_fail("A's REG does not name its connection");
	g->a = m;
}

/* Let the client settle and talk; its state then. */
static int gconn_talk(struct gconn *g)
{
	t_put(&g->c.cli_down, "g", 1);
	t_get(&g->c.cli_up, &g->cr, sizeof(g->cr), 20000);
	return g->cr.state;
}

/* The rest of the conversation, every byte verified, and both ends gone. */
static void gconn_end(struct gconn *g)
{
	t_put(&g->c.cli_down, "g", 1);
	t_get(&g->c.cli_up, &g->cr, sizeof(g->cr), 20000);
	t_get(&g->c.srv_up, &g->sr, sizeof(g->sr), 20000);
	t_put(&g->c.srv_down, "q", 1);
	T_ASSERT_EQ(t_ns_wait(g->cp, 20000), 0);
	T_ASSERT_EQ(t_ns_wait(g->sp, 20000), 0);
	t_conv_close(&g->c);
	/* Each end verified every chunk it got (or failed); the server is
	 * plain, so only the client counts. */
	T_ASSERT_EQ(g->cr.sent, g->cr.received);
	T_ASSERT(g->cr.sent >= 2 * T_CONV_ROUNDS * T_CHUNK);
}

/* A connection A allocates (from A1), paired honestly: B's REG, then A's
 * CHAN, whose slot and generation are returned; the client on it. */
static void gconn_pair_a(struct gconn *g, uint32_t *slot, uint32_t *gen)
{
	const struct ivmc_shm_hdr *h;
	msg_t m;

	gconn_start(g, IP_A1, 10000);
	gconn_reg(g);
	msg_mirror(&m, IVMC_VM_MSG_REG, &g->a);
	lk_send(&m);
	for (;;) {
		if (!lk_next(&m, 10000))
			t_fail("no CHAN from A");
		if (m.type == IVMC_VM_MSG_CHAN && m.rport == g->c.port)
			break;
	}
	if (m.slot >= L.nslots || m.ring_size != T_GUEST_RING ||
	    memcmp(m.la, g->a.la, 16) || m.lport != g->a.lport)
		t_fail("A's CHAN: slot %u of %u, ring %u", m.slot, L.nslots,
		       m.ring_size);
	/* A formatted the slot of its half before it said so. */
	h = (const void *)(L.map + ivmc_vm_slot_off(L.base, L.nslots,
						     L.slot_size, 0, m.slot));
	if (h->magic != IVMC_SHM_MAGIC || h->init_ctr[0] != m.gen << 20)
		t_fail("A's slot %u is not formatted for generation %u",
		       m.slot, m.gen);
	*slot = m.slot;
	*gen = m.gen;
	if (gconn_talk(g) != 1)
		t_fail("connection A allocated: state %d (%s), see %s",
		       g->cr.state, t_strerror(g->cr.state), tg.dlog[0]);
}

/* Done with a connection A allocated: the client closes, B frees. */
static void gconn_done_a(struct gconn *g, uint32_t slot, uint32_t gen)
{
	gconn_end(g);
	send_free(slot, gen);
	t_guest_expect_slots(0, 0);
}

/* ---- the cases -------------------------------------------------------- */

static void test_garbage(void)
{
	static const struct {
		const char *b_ip, *a_ip;
		int type;
		int how; /* 0: as is, 1: magic, 2: pad, 3: vec 5 */
	} lie[] = {
		{ IP_B, IP_A1, IVMC_VM_MSG_REG, 1 },
		{ IP_B, IP_A1, IVMC_VM_MSG_REG, 2 },
		/* A slot's vector A would not give it (A takes no interrupts). */
		{ IP_B, IP_A2, IVMC_VM_MSG_CHAN, 3 },
		{ IP_B, IP_A1, 0, 0 },
		{ IP_B, IP_A1, 5, 0 },
		{ IP_B, IP_A1, 0xffff, 0 },
		/* A REG from the end that does not allocate (B < A2). */
		{ IP_B, IP_A2, IVMC_VM_MSG_REG, 0 },
		/* A CHAN from the end that does not allocate (A1 < B). */
		{ IP_B, IP_A1, IVMC_VM_MSG_CHAN, 0 },
		/* B's address is not B's (it is A's). */
		{ IP_A2, IP_A1, IVMC_VM_MSG_REG, 0 },
		{ IP_A1, IP_A2, IVMC_VM_MSG_CHAN, 0 },
		/* A's address is not A's: sorts first, but nobody's. */
		{ IP_B, "10.0.0.1", IVMC_VM_MSG_REG, 0 },
		{ IP_B, "10.79.0.9", IVMC_VM_MSG_CHAN, 0 },
		{ IP_B, "10.0.0.1", IVMC_VM_MSG_NOCHAN, 0 },
	};
	const int n = (int)(sizeof(lie) / sizeof(lie[0]));
	uint64_t b0 = bad(), b1;
	struct gconn g;
	uint32_t slot, gen;
	msg_t m;

	for (int i = 0; i < n; i++) {
		msg_make(&m, lie[i].type, lie[i].b_ip, (uint16_t)(4000 + i),
			 lie[i].a_ip, (uint16_t)(5000 + i));
		m.slot = 2;
		m.gen = 1;
		m.ring_size = T_GUEST_RING;
		if (lie[i].how == 1)
			m.magic ^= 1u << 31;
		else if (lie[i].how == 2)
			m.pad = 1;
		else if (lie[i].how == 3)
			m.vec = 5;
		lk_send(&m);
	}
	lk_ping(NULL);
	b1 = bad();
	if (b1 - b0 != (uint64_t)n)
		t_fail("garbage: %llu counted bad of %d", (unsigned long long)
		       (b1 - b0), n);
	t_guest_expect(0, "\"channels\":[]");
	t_guest_expect_slots(0, 0);
	/* A goes on pairing. */
	gconn_pair_a(&g, &slot, &gen);
	t_guest_expect_slots(0, 1);
	gconn_done_a(&g, slot, gen);
	T_ASSERT_EQ(bad(), b1);
	printf("(a) %d kinds of garbage counted bad; A paired after them\n", n);
}

static void test_stray_chan(void)
{
	uint64_t b0 = bad();
	msg_t m;

	msg_make(&m, IVMC_VM_MSG_CHAN, IP_B, 7001, IP_A2, 7002);
	m.slot = 3;
	m.gen = 77;
	m.ring_size = T_GUEST_RING;
	lk_send(&m);
	if (!lk_next(&m, 10000) || m.type != IVMC_VM_MSG_FREE || m.slot != 3 ||
	    m.gen != 77)
		t_fail("stray CHAN: A's answer is not FREE of slot 3, gen 77 "
		       "(type %u slot %u gen %u)", m.type, m.slot, m.gen);
	T_ASSERT_EQ(bad(), b0);
	t_guest_expect(0, "\"channels\":[]");
	printf("(b) a CHAN for no connection of A's: FREE of its slot\n");
}

/* A connection B allocates (from A2), A's REG read. */
static void gconn_start_b(struct gconn *g)
{
	gconn_start(g, IP_A2, 10000);
	gconn_reg(g);
}

static void test_bad_chan(void)
{
	const uint32_t s = 3; /* (b) sent a stray CHAN for it: still free */
	struct gconn live, x[3];
	uint64_t b0 = bad();
	struct seen seen = { 0 };
	uint8_t *slot;
	msg_t m;

	/* The live connection, in slot s of B's half, generation 1. */
	gconn_start_b(&live);
	slot = L.map + ivmc_vm_slot_off(L.base, L.nslots, L.slot_size, 1, s);
	T_ASSERT_OK(chan_region_init(slot, L.slot_size, T_GUEST_RING, true,
				     1u << 20));
	send_chan(&live.a, s, 1, T_GUEST_RING);
	if (gconn_talk(&live) != 1)
		t_fail("live connection: state %d (%s)", live.cr.state,
		       t_strerror(live.cr.state));
	t_guest_expect(0, "\"netns\":\"peer VM\"");
	/* Three more, each offered a bad CHAN. */
	for (int i = 0; i < 3; i++)
		gconn_start_b(&x[i]);
	send_chan(&x[0].a, L.nslots, 1, T_GUEST_RING);	/* out of range */
	send_chan(&x[1].a, 4, 1, 2 * T_GUEST_RING);	/* wrong ring */
	send_chan(&x[2].a, s, 2, T_GUEST_RING);		/* live's */
	lk_ping(&seen);
	T_ASSERT_EQ(bad() - b0, 3);
	if (!seen_free(&seen, 4, 1) || seen_free(&seen, s, UINT32_MAX) ||
	    seen.n[IVMC_VM_MSG_CHAN] || seen.n[0])
		t_fail("answers to the bad CHANs: FREE of slot 4 %s, of slot "
		       "%u %s", seen_free(&seen, 4, 1) ? "yes" : "no", s,
		       seen_free(&seen, s, UINT32_MAX) ? "yes" : "no");
	for (int i = 0; i < 3; i++) {
		if (gconn_talk(&x[i]) != -ECONNABORTED)
			t_fail("bad CHAN %d: state %d (%s), want ECONNABORTED",
			       i, x[i].cr.state, t_strerror(x[i].cr.state));
		gconn_end(&x[i]);
	}
	/* The live one: talks on, and A gives slot s back once it is done. */
	gconn_end(&live);
	T_ASSERT_EQ(live.cr.state, 1);
	for (;;) {
		if (!lk_next(&m, 10000))
			t_fail("no FREE of slot %u after its connection", s);
		if (m.type == IVMC_VM_MSG_FREE && m.slot == s) {
			T_ASSERT_EQ(m.gen, 1);
			break;
		}
	}
	t_guest_expect(0, "\"channels\":[]");
	printf("(c) out of range, wrong ring, slot held: refused; the live "
	       "connection unharmed\n");
}

static void test_bad_free(void)
{
	struct gconn g;
	uint32_t slot, gen;
	uint64_t b0;

	gconn_pair_a(&g, &slot, &gen);
	t_guest_expect_slots(0, 1);
	gconn_end(&g); /* A's own end is gone: only B's FREE is missing */
	t_guest_expect(0, "\"channels\":[]");
	b0 = bad();
	send_free(slot, gen + 1);
	send_free(slot, gen - 1);
	send_free((slot + 1) % L.nslots, gen);
	send_free(L.nslots, gen);
	send_free(UINT32_MAX, gen);
	lk_ping(NULL);
	T_ASSERT_EQ(bad() - b0, 5);
	t_guest_expect_slots(0, 1);
	send_free(slot, gen);
	t_guest_expect_slots(0, 0);
	printf("(d) FREEs of the wrong generation or slot ignored\n");
}

static void test_reg_flood(void)
{
	const int n = REMOTE_MAX + 1000;
	long rss0 = rss_kb(tg.dpid[0]), rss1;
	uint64_t t0 = t_now_ns(), ms;
	struct seen seen = { 0 };
	struct gconn g;
	uint32_t slot, gen;
	msg_t m;

	for (int i = 0; i < n; i++) {
		msg_make(&m, IVMC_VM_MSG_REG, IP_B, (uint16_t)(10000 + i / 50),
			 IP_A1, (uint16_t)(20000 + i % 50));
		lk_send(&m);
	}
	lk_ping(&seen);
	ms = (t_now_ns() - t0) / 1000000;
	rss1 = rss_kb(tg.dpid[0]);
	printf("(e) %d REGs in %llu ms: %u NOCHAN LIMIT, VmRSS %ld -> %ld kB\n",
	       n, (unsigned long long)ms, seen.nochan_limit, rss0, rss1);
	/* Each REG kept waits pending_timeout (10 s): none expired yet
	 * unless the flood took that long. */
	if (seen.nochan_limit > (unsigned int)(n - REMOTE_MAX) ||
	    !seen.nochan_limit ||
	    (ms < 8000 && seen.nochan_limit != (unsigned int)(n - REMOTE_MAX)))
		t_fail("REG flood: %u NOCHAN LIMIT, want %d", seen.nochan_limit,
		       n - REMOTE_MAX);
	if (seen.n[IVMC_VM_MSG_NOCHAN] != seen.nochan_limit ||
	    seen.n[IVMC_VM_MSG_CHAN] || seen.n[0])
		t_fail("REG flood: other answers");
	if (rss1 > rss0 + 16 * 1024)
		t_fail("REG flood: A grew from %ld to %ld kB", rss0, rss1);
	gconn_pair_a(&g, &slot, &gen);
	gconn_done_a(&g, slot, gen);
}

/* A's pair is down: a new connection to B stays on TCP, intact. */
static void expect_tcp_only(const char *what)
{
	struct gconn g;
	int st;

	gconn_start(&g, IP_A1, 3000);
	st = gconn_talk(&g);
	gconn_end(&g);
	if (st == 1)
		t_fail("%s: a connection attached with the pair down", what);
	t_guest_expect(0, "\"link\":false");
	printf("(f) %s: link down, a new connection on TCP (state %d), "
	       "intact\n", what, st);
}

static void test_ring_lies(void)
{
	_Atomic uint64_t *prod = &L.hdr->dir[1].prod;
	uint64_t w;

	/* Far ahead: more than the ring holds. */
	lk_ping(NULL);
	w = atomic_load(prod);
	atomic_store(prod, ivmc_w_make(ivmc_w_epoch(w),
				       ivmc_w_ctr(w) + 2 * T_GUEST_RING));
	t_guest_expect(0, "\"link\":false");
	expect_tcp_only("producer counter far ahead");
	new_session();
	/* Backwards, once A has read everything. */
	lk_ping(NULL);
	for (int i = 0; i < 1000; i++) {
		uint64_t c = atomic_load(&L.hdr->dir[1].cons);

		w = atomic_load(prod);
		if (ivmc_w_ctr(c) == ivmc_w_ctr(w))
			break;
		usleep(1000);
	}
	atomic_store(prod, ivmc_w_make(ivmc_w_epoch(w),
				       ivmc_w_ctr(w) - IVMC_VM_MSG_SIZE));
	t_guest_expect(0, "\"link\":false");
	expect_tcp_only("producer counter backwards");
	new_session();
}

static void test_full_link(void)
{
	const int n = 3000; /* each answered FREE: more than A can queue */
	uint64_t in0 = t_guest_status_num(0, "msgs_in");
	int lost0 = log_lines("lost"), lost;
	long hz = sysconf(_SC_CLK_TCK);
	unsigned long long c0, c1;
	struct gconn g;
	uint32_t slot, gen;
	msg_t m;
	int st;

	L.no_read = true;
	for (int i = 0; i < n; i++) {
		msg_make(&m, IVMC_VM_MSG_CHAN, IP_B, (uint16_t)(30000 + i),
			 IP_A2, (uint16_t)(40000 + i));
		m.slot = (uint32_t)i % (L.nslots - 1);
		m.gen = 1;
		m.ring_size = T_GUEST_RING;
		lk_send(&m);
	}
	for (int i = 0; i < 1000; i++) {
		if (t_guest_status_num(0, "msgs_in") >= in0 + (uint64_t)n)
			break;
		usleep(10000);
	}
	T_ASSERT(t_guest_status_num(0, "msgs_in") >= in0 + (uint64_t)n);
	/* A new connection: A cannot announce it, so it goes to TCP now. */
	gconn_start(&g, IP_A1, 10000);
	st = gconn_talk(&g);
	gconn_end(&g);
	if (st != -ENOBUFS)
		t_fail("full link: state %d (%s), want ENOBUFS", st,
		       t_strerror(st));
	lost = log_lines("lost") - lost0;
	if (lost > 4)
		t_fail("full link: %d log lines for lost messages", lost);
	T_ASSERT(t_guest_status_num(0, "msgs_lost") > 0);
	/* Idle with a full link: A naps, it does not spin. */
	c0 = cpu_ticks(tg.dpid[0]);
	usleep(2000000);
	c1 = cpu_ticks(tg.dpid[0]);
	printf("(g) full link: ENOBUFS at once, %d log line(s) for %llu lost, "
	       "A used %.2f s of CPU in 2 s\n", lost,
	       (unsigned long long)t_guest_status_num(0, "msgs_lost"),
	       (double)(c1 - c0) / (double)hz);
	if (c1 - c0 > (unsigned long long)hz / 2)
		t_fail("full link: A used %llu ticks of %ld in 2 s", c1 - c0,
		       2 * hz);
	/* B reads again: A's queue drains (every message it could not
	 * queue counted lost: the FREEs, and the REG of that connection),
	 * and it pairs again. */
	L.no_read = false;
	T_ASSERT_EQ(lk_drain(500) + t_guest_status_num(0, "msgs_lost"), n + 1);
	lk_ping(NULL);
	gconn_pair_a(&g, &slot, &gen);
	gconn_done_a(&g, slot, gen);
}

int main(void)
{
	static const char *const ips[2][T_GUEST_IPS + 1] = {
		{ IP_A1, IP_A2 }, { IP_B } };
	int st;

	t_ns_setup(150);
	t_guest_setup(ips);
	t_guest_start(0);
	t_guest_expect(0, "\"link\":true,\"epoch\":1,");
	L.epoch = 1;
	lk_open();
	test_garbage();
	test_stray_chan();
	test_bad_chan();
	test_bad_free();
	test_reg_flood();
	test_ring_lies();
	test_full_link();
	/* A lived through all of it. */
	T_ASSERT_EQ(waitpid(tg.dpid[0], &st, WNOHANG), 0);
	t_guest_expect(0, "\"link\":true");
	lk_close();
	return t_late_failures ? T_FAIL : T_PASS;
}
