/* SPDX-License-Identifier: MIT */
/*
 * Description: fuzz target: ivmcd --guest against a hostile peer VM on the
 * link between the two guests' daemons (tools/ivmcd/guest.c; ivmcd's
 * objects linked in as for fuzz-ctl-daemon). The daemon is VM A on
 * stand-in devices in a scratch directory ($IVMC_SYSFS_PCI, as in
 * tests/ctl-guest.c: a control region, and a 256 KiB pair region with
 * 4 KiB rings: the link and 10 slots a side), driven through its own entry
 * points only: guest_init() once, guest_tick() as its timer would,
 * reg_conn() and reg_unreg() for a client's registrations of four loopback
 * connections to the peer VM's address (from 127.0.0.1: A allocates their
 * slots; from 127.0.0.3: the peer does). The target plays VM B's daemon:
 * it writes fuzzer-chosen 64-byte messages, whole or in part, into the
 * link, reads what A sends, and has the shared-memory hook change what
 * A's loads of the link's ring words see (src/ring/atomics.h, as
 * fuzz-chan-consumer does): a peer that rewrote a word just before and
 * again just after the load.
 *
 * Input: ops until it ends, each one byte then its operands:
 *   0 MSG    fix (2 bytes), 64 bytes: a message into the link, after the
 *            fixes the fix bits ask for (below); 1 the same, then a tick;
 *   2 PART   n, bytes: the first n % 64 bytes of a message (framing);
 *   3 REG    i: the client registers connection i % 4 (a new token);
 *   4 UNREG  k: the client withdraws its token k % tokens (pending or on
 *            a channel);
 *   5 TICK   A's timer: control region, link, expiries;
 *   6 READ   B reads what A sent;
 *   7 LIE    field, count, mode, arg (2 bytes): the count-th load A
 *            makes of that word of the link's header in the next ticks
 *            sees it changed by mode.
 * Fix bits: 0 magic, 1 zero pads, 2 a known type, 3 the addresses of
 * connection (bits 6-7), 4 a slot in range (or just past it), 5 the ring
 * size, and a FREE's generation the last one A gave that slot; 8 valid
 * addresses (ours and the peer's, bit 9 picks ours) with the message's
 * own ports.
 *
 * Asserts: every message A sends is well formed, names a connection its
 * client registered (REG, CHAN) or the VMs' addresses (NOCHAN), a CHAN a
 * slot of A's half with the generation after the slot's last one and
 * only if B freed the last one (both relaxed once A counts a message
 * lost: B never saw that CHAN), a FREE a slot in range; every answer to
 * the client (CHAN_MEM, NOCHAN, PEER_GONE) is for a token that waits for
 * it (or has a channel), a CHAN_MEM's offset is a slot of the half the
 * allocating end owns, never one a live channel of this client holds,
 * for a connection A allocates matches a CHAN A sent and for one B
 * allocates a CHAN B sent; the link stays up unless a load was changed;
 * once the client is dropped and a new session starts, the daemon holds
 * no registration, channel or domain, and no descriptor leaked.
 * After a changed load the link's bytes may be anything: only the checks
 * on the client's answers stay. Each input starts a new session (the host
 * lays the region out again), so inputs are independent. A crash leaves
 * the scratch directory behind (/tmp/fuzz-guest-link.*).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stddef.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ctl/proto.h"
#include "chan/chan.h"
#include "chan/shm_layout.h"
#include "transport/ivshmem_vm.h"
#include "transport/transport.h"
#include "../tools/ivmcd/ivmcd.h"
#include "fuzz.h"
#include "../t_fakepci.h"

#define PAIR_SIZE  (256u << 10)
#define RING	   4096u
#define NCONN	   4
#define MAX_TOKENS 256
#define MAX_SLOTS  64
#define WS_MAX	   (64u << 10) /* B writes at most an input's size */
#define MSG	   IVMC_VM_MSG_SIZE

#define TRACE(...)                                    \
	do {                                          \
		if (trace)                            \
			fprintf(stderr, __VA_ARGS__); \
	} while (0)

typedef struct ivmc_shm_vm_msg msg_t;

static bool trace;
static char dir[64], ctl_path[128], pair_path[128];
static struct ivmc_shm_vm_ctl *ctl; /* the host's view, writable */
static uint8_t *pair;		    /* the region, as the host and B see it */
static int pair_fd;
static uint64_t epoch, slot_size, base;
static uint32_t nslots;

/* The connections: A's view of each (from getsockname/getpeername). */
static int cfd[NCONN], afd[NCONN], lis;
static struct kaddr c_local[NCONN], c_remote[NCONN];

/* B's end of the link, and what went through it in this input. */
static struct {
	struct chan *c;
	bool tx_ok, rx_ok;
	uint8_t ws[WS_MAX]; /* the byte stream B wrote: A frames it by 64 */
	size_t wlen;
	uint8_t part[MSG];
	size_t plen;
	uint32_t gen[MAX_SLOTS]; /* the last generation A gave each slot */
	bool chan_of[NCONN][MAX_SLOTS]; /* A sent CHAN (conn, slot) */
} B;

/* The client and its tokens. */
enum { T_PENDING, T_LIVE, T_DONE };
static struct {
	struct client *cl;
	int fd; /* our end */
	int ntok;
	struct {
		int conn, state;
		uint64_t off; /* T_LIVE: the slot's offset */
		uint32_t side;
	} t[MAX_TOKENS];
	bool gone_seen; /* a PEER_GONE came: the pair is down */
} C;

/* The lie armed for the next ticks' loads. */
static struct {
	bool on, armed;
	int field;
	uint32_t count, arg;
	uint8_t mode;
} lie;
static bool tainted; /* a load saw a lie: the link's bytes may be anything */
static uint64_t lost0; /* A's count of lost messages before this input */

/* ---- the shared-memory hook ------------------------------------------- */

static const struct {
	size_t off, size;
} fields[] = {
	{ offsetof(struct ivmc_shm_dir, prod), 8 },
	{ offsetof(struct ivmc_shm_dir, attach), 8 },
	{ offsetof(struct ivmc_shm_dir, fin), 8 },
	{ offsetof(struct ivmc_shm_dir, deep), 8 },
	{ offsetof(struct ivmc_shm_dir, cons), 8 },
	{ offsetof(struct ivmc_shm_dir, cons_wait), 4 },
	{ offsetof(struct ivmc_shm_dir, cons_cpu), 4 },
	{ offsetof(struct ivmc_shm_dir, prod_wait), 4 },
	{ offsetof(struct ivmc_shm_dir, prod_cpu), 4 },
};
#define NFIELDS ((int)(sizeof(fields) / sizeof(fields[0])))

/* Which word of a header page off is in (dir * NFIELDS + field), or -1. */
static int field_at(size_t off, size_t size)
{
	size_t d0 = offsetof(struct ivmc_shm_hdr, dir), at;
	size_t d;

	if (off < d0)
		return -1;
	d = (off - d0) / sizeof(struct ivmc_shm_dir);
	at = (off - d0) % sizeof(struct ivmc_shm_dir);
	if (d > 1)
		return -1;
	for (int i = 0; i < NFIELDS; i++)
		if (fields[i].off == at && fields[i].size == size)
			return (int)d * NFIELDS + i;
	return -1;
}

static uint64_t mutate(uint64_t v, size_t size, uint8_t mode, uint32_t arg)
{
	uint64_t hi = v & ~(uint64_t)UINT32_MAX;
	uint32_t ctr = (uint32_t)v;
	uint64_t r;

	switch (mode % 8) {
	case 0: r = v + arg; break;
	case 1: r = v - arg; break;
	case 2: r = v ^ (1ull << (arg % (size * 8))); break;
	case 3: r = hi | (uint32_t)(ctr + RING); break;
	case 4: r = hi | (uint32_t)(ctr + RING + 1 + arg % RING); break;
	case 5: r = hi | (uint32_t)(ctr - 1 - arg % RING); break;
	case 6: r = v ^ IVMC_PW_CLOSED; break;
	default: r = (uint64_t)arg * 0x9e3779b97f4a7c15ull; break;
	}
	return size == 4 ? (uint32_t)r : r;
}

uint64_t ivmc_fuzz_shm(const volatile void *p, uint64_t v, size_t size)
{
	size_t off;

	if (!lie.armed || !lie.on || !chan_fuzz_shm_find(p, &off) ||
	    field_at(off, size) != lie.field)
		return v;
	if (lie.count) {
		lie.count--;
		return v;
	}
	lie.on = false;
	tainted = true;
	TRACE("  A's load of field %d changed (mode %u)\n", lie.field,
	      lie.mode % 8);
	return mutate(v, size, lie.mode, lie.arg);
}

/* ---- the stand-in VM ---------------------------------------------------- */

static const char *const bdfs[2] = { "0000:00:04.0", "0000:00:05.0" };

static void fake_dev(int i, uint32_t id, const char *region)
{
	char d[160];
	const char *what;
	int err;

	snprintf(d, sizeof(d), "%s/pci", dir);
	err = t_fakepci_dev(d, bdfs[i], id, region, &what);
	FZ_ASSERT(!err, "%s/%s/%s: %s", d, bdfs[i], what, strerror(-err));
}

static void cleanup(void)
{
	char p[256];

	for (int i = 0; i < 2; i++) {
		for (size_t f = 0; f < sizeof(t_fakepci_files) /
					       sizeof(*t_fakepci_files); f++) {
			snprintf(p, sizeof(p), "%s/pci/%s/%s", dir, bdfs[i],
				 t_fakepci_files[f]);
			unlink(p);
		}
		snprintf(p, sizeof(p), "%s/pci/%s", dir, bdfs[i]);
		rmdir(p);
	}
	snprintf(p, sizeof(p), "%s/pci", dir);
	rmdir(p);
	unlink(ctl_path);
	unlink(pair_path);
	rmdir(dir);
}

static void addr4(struct ivmc_shm_vm_addr *a, const char *ip)
{
	memset(a, 0, sizeof(*a));
	a->family = 4;
	FZ_ASSERT(inet_pton(AF_INET, ip, a->addr) == 1, "%s", ip);
}

/* The control region of VM A ("guest-a": 127.0.0.1 and 127.0.0.3), paired
 * with "guest-b" (127.0.0.2), side 0. */
static void make_ctl(void)
{
	struct ivmc_shm_vm_pair *p;
	int fd;

	fd = open(ctl_path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	FZ_ASSERT(fd >= 0 && !ftruncate(fd, IVMC_VM_CTL_SIZE), "ctl");
	ctl = mmap(NULL, IVMC_VM_CTL_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED,
		   fd, 0);
	FZ_ASSERT(ctl != MAP_FAILED, "mmap ctl");
	close(fd);
	ctl->magic = IVMC_VM_CTL_MAGIC;
	ctl->version = IVMC_VM_CTL_VERSION;
	ctl->size = sizeof(*ctl);
	ctl->heartbeat_ms = 250;
	atomic_store(&ctl->seq, 2);
	ctl->host_id = 42;
	ctl->vm_gen = 1;
	snprintf(ctl->name, sizeof(ctl->name), "guest-a");
	ctl->naddr = 2;
	addr4(&ctl->addr[0], "127.0.0.1");
	addr4(&ctl->addr[1], "127.0.0.3");
	ctl->npair = 1;
	p = &ctl->pair[0];
	snprintf(p->peer, sizeof(p->peer), "guest-b");
	p->side = 0;
	p->id = ivmc_vm_pair_id(1, 0);
	p->peer_id = ivmc_vm_pair_id(1, 1);
	p->attached = 1;
	p->peer_state = IVMC_VM_PEER_UP;
	p->naddr = 1;
	p->epoch = epoch;
	p->peer_gen = 1;
	p->region_size = PAIR_SIZE;
	p->chan_off = IVMC_VM_PAIR_HDR;
	p->nchan = 1;
	p->ring_size = RING;
	addr4(&p->addr[0], "127.0.0.2");
}

/* The host's new session: the region zeroed and laid out again, the
 * epoch moved on (a seqlock write). */
static void host_new_session(void)
{
	struct ivmc_shm_vm_pairhdr *h = (void *)pair;

	memset(pair, 0, PAIR_SIZE);
	h->magic = IVMC_VM_PAIR_MAGIC;
	h->version = IVMC_VM_PAIR_VERSION;
	atomic_store(&h->epoch, ++epoch);
	h->chan_off = IVMC_VM_PAIR_HDR;
	h->nchan = 1;
	h->ring_size = RING;
	FZ_ASSERT(!chan_region_init(pair + IVMC_VM_PAIR_HDR,
				    PAIR_SIZE - IVMC_VM_PAIR_HDR, RING, false,
				    0), "link layout");
	atomic_fetch_add(&ctl->seq, 1);
	ctl->pair[0].epoch = epoch;
	atomic_fetch_add(&ctl->seq, 1);
}

static void tcp_conns(void)
{
	struct sockaddr_in sa = { .sin_family = AF_INET };
	socklen_t len = sizeof(sa);
	int one = 1;

	lis = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	sa.sin_addr.s_addr = htonl(0x7f000002);
	FZ_ASSERT(lis >= 0 && !bind(lis, (struct sockaddr *)&sa, len) &&
			  !listen(lis, NCONN) &&
			  !getsockname(lis, (struct sockaddr *)&sa, &len),
		  "listen: %s", strerror(errno));
	for (int i = 0; i < NCONN; i++) {
		struct sockaddr_in src = { .sin_family = AF_INET };
		struct sockaddr_in l, r;
		socklen_t ll = sizeof(l), rl = sizeof(r);

		/* Even: from 127.0.0.1 (sorts first: A allocates); odd:
		 * from 127.0.0.3 (B does). */
		src.sin_addr.s_addr = htonl(i % 2 ? 0x7f000003 : 0x7f000001);
		cfd[i] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
		FZ_ASSERT(cfd[i] >= 0 &&
				  !setsockopt(cfd[i], SOL_SOCKET, SO_REUSEADDR,
					      &one, sizeof(one)) &&
				  !bind(cfd[i], (struct sockaddr *)&src,
					sizeof(src)) &&
				  !connect(cfd[i], (struct sockaddr *)&sa, len),
			  "connect: %s", strerror(errno));
		afd[i] = accept4(lis, NULL, NULL, SOCK_CLOEXEC);
		FZ_ASSERT(afd[i] >= 0 &&
				  !getsockname(cfd[i], (struct sockaddr *)&l,
					       &ll) &&
				  !getpeername(cfd[i], (struct sockaddr *)&r,
					       &rl),
			  "accept: %s", strerror(errno));
		memset(&c_local[i], 0, sizeof(c_local[i]));
		memset(&c_remote[i], 0, sizeof(c_remote[i]));
		c_local[i].a[10] = c_local[i].a[11] = 0xff;
		c_remote[i].a[10] = c_remote[i].a[11] = 0xff;
		memcpy(c_local[i].a + 12, &l.sin_addr, 4);
		memcpy(c_remote[i].a + 12, &r.sin_addr, 4);
		c_local[i].port = ntohs(l.sin_port);
		c_remote[i].port = ntohs(r.sin_port);
	}
}

static void round_end(void)
{
	if (D.table_dirty) {
		D.table_dirty = false;
		table_rebuild();
	}
	netns_reap();
}

/* pending_timeout long enough that nothing expires within an input; eight
 * waiting registrations, and a quota of twelve channels: more than one
 * half's ten slots (a connection registered again and again while its
 * channels live fills them), less than both halves'. */
static void daemon_init(void)
{
	static char conf[64];
	static const char text[] = "pending_max 8\nquota channels 12\n"
				   "pending_timeout 60s\n";
	char msg[CTL_TEXT_MAX];
	int fd = memfd_create("fuzz-guest-link.conf", MFD_CLOEXEC);

	FZ_ASSERT(fd >= 0 && write(fd, text, sizeof(text) - 1) ==
				     (ssize_t)sizeof(text) - 1, "config");
	snprintf(conf, sizeof(conf), "/proc/self/fd/%d", fd);
	FZ_ASSERT(!daemon_lists_init(1u << 12), "lists");
	D.id = 43;
	D.sock_path = "/run/ivmc/fuzz-guest.sock";
	D.conf_path = conf;
	D.lfd = D.sfd = D.tfd = D.lockfd = -1;
	D.own_netns_ino = kfacts_netns_ino("host");
	D.epfd = epoll_create1(EPOLL_CLOEXEC);
	D.guest = true;
	FZ_ASSERT(D.epfd >= 0, "init");
	FZ_ASSERT(!policy_load(D.conf_path, false, &D.pol, msg, sizeof(msg)),
		  "config: %s", msg);
	D.pol_gen = 1;
	FZ_ASSERT(!table_create(), "table_create");
}

/* A number from the pair's JSON status ("key":N). */
static uint64_t status_num(const char *key)
{
	char *buf = NULL, pat[32];
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);
	const char *p;
	uint64_t v;

	FZ_ASSERT(f, "memstream");
	guest_status(f, true);
	fclose(f);
	snprintf(pat, sizeof(pat), "\"%s\":", key);
	p = strstr(buf, pat);
	FZ_ASSERT(p, "status: no %s: %s", key, buf);
	v = strtoull(p + strlen(pat), NULL, 10);
	free(buf);
	return v;
}

/* ---- B's end of the link -------------------------------------------------- */

static void b_open(void)
{
	struct chan_cfg cfg = { .side = 1, .side_fd = -1, .nonblock = true,
				.wait_mode = CHAN_WAIT_SLEEP };

	FZ_ASSERT(!chan_open_mem(&cfg, pair_fd, IVMC_VM_PAIR_HDR,
				 PAIR_SIZE - IVMC_VM_PAIR_HDR, &B.c),
		  "B's link end");
	B.tx_ok = B.rx_ok = true;
	B.wlen = B.plen = 0;
	memset(B.gen, 0, sizeof(B.gen));
	memset(B.chan_of, 0, sizeof(B.chan_of));
}

static bool sent_by_b(int type, const struct kaddr *l, const struct kaddr *r,
		      uint32_t slot, uint32_t gen, bool any_gen);

static bool conn_is(const msg_t *m, int i)
{
	return !memcmp(m->la, c_local[i].a, 16) && m->lport == c_local[i].port &&
	       !memcmp(m->ra, c_remote[i].a, 16) && m->rport == c_remote[i].port;
}

static bool vm_addr(const uint8_t a[16], bool ours)
{
	uint8_t x[16] = { [10] = 0xff, [11] = 0xff, [12] = 127 };

	for (int last = 1; last <= 3; last++) {
		x[15] = (uint8_t)last;
		if ((last == 2) != ours && !memcmp(a, x, 16))
			return true;
	}
	return false;
}

/* A message from A, as B reads it (the link honest so far). lost: A
 * could not queue some (it counts them): a CHAN among them is one B
 * never saw, whose slot A took back without B's FREE. */
static void check_a_msg(const msg_t *m, bool lost)
{
	static const uint8_t zero[16];
	int conn = -1;

	/* A takes no interrupts here: it says 0 vectors, gives no slot one. */
	FZ_ASSERT(m->magic == IVMC_VM_MSG_MAGIC && !m->pad && !m->vec &&
			  m->type >= IVMC_VM_MSG_REG &&
			  m->type <= IVMC_VM_MSG_FREE,
		  "A sent a malformed message (type %u)", m->type);
	for (int i = 0; i < NCONN; i++)
		if (conn_is(m, i))
			conn = i;
	TRACE("  A says type %u conn %d slot %u gen %u reason %u\n", m->type,
	      conn, m->slot, m->gen, m->reason);
	switch (m->type) {
	case IVMC_VM_MSG_REG:
		FZ_ASSERT(conn >= 0 && !m->slot && !m->gen && !m->ring_size &&
				  !m->reason, "A's REG names no connection of its");
		break;
	case IVMC_VM_MSG_CHAN:
		FZ_ASSERT(conn >= 0 && !(conn & 1),
			  "A's CHAN for connection %d", conn);
		FZ_ASSERT(m->slot < nslots && m->ring_size == RING,
			  "A's CHAN: slot %u of %u, ring %u", m->slot, nslots,
			  m->ring_size);
		FZ_ASSERT(m->gen == B.gen[m->slot] + 1 ||
				  (lost && m->gen > B.gen[m->slot]),
			  "A's CHAN: slot %u generation %u after %u", m->slot,
			  m->gen, B.gen[m->slot]);
		FZ_ASSERT(m->gen == 1 || lost ||
				  sent_by_b(IVMC_VM_MSG_FREE, NULL, NULL, m->slot,
					    m->gen - 1, false),
			  "A took slot %u again (generation %u) with no FREE of "
			  "the last", m->slot, m->gen);
		B.gen[m->slot] = m->gen;
		B.chan_of[conn][m->slot] = true;
		break;
	case IVMC_VM_MSG_NOCHAN:
		FZ_ASSERT(vm_addr(m->la, true) && vm_addr(m->ra, false) &&
				  m->reason > 0 && m->reason < CTL_R_MAX,
			  "A's NOCHAN: reason %u", m->reason);
		break;
	default: /* FREE: of a slot of B's half, as B named it */
		FZ_ASSERT(m->slot < nslots && !memcmp(m->la, zero, 16) &&
				  !memcmp(m->ra, zero, 16) && !m->lport &&
				  !m->rport,
			  "A's FREE: slot %u", m->slot);
		break;
	}
}

/* Returns how many whole messages it read. */
static int b_read(void)
{
	bool lost = status_num("msgs_lost") > lost0;
	int got = 0;

	while (B.rx_ok) {
		struct iovec iov = { B.part + B.plen, MSG - B.plen };
		ssize_t n = chan_recvv(B.c, &iov, 1, CHAN_NONBLOCK);
		msg_t m;

		if (n == -EAGAIN)
			break;
		if (n <= 0) {
			FZ_ASSERT(tainted, "B's link end: %s, and no lie told",
				  n ? strerror((int)-n) : "end of stream");
			B.rx_ok = false;
			break;
		}
		B.plen += (size_t)n;
		if (B.plen < MSG)
			continue;
		B.plen = 0;
		got++;
		memcpy(&m, B.part, MSG);
		if (!tainted)
			check_a_msg(&m, lost);
	}
	return got;
}

/* The idx-th 64-byte frame of what B wrote, as A reads the stream. */
static bool frame(size_t idx, msg_t *m)
{
	if ((idx + 1) * MSG > B.wlen)
		return false;
	memcpy(m, B.ws + idx * MSG, MSG);
	return true;
}

/* Did B write such a message (l, r: A's view; NULL: any)? */
static bool sent_by_b(int type, const struct kaddr *l, const struct kaddr *r,
		      uint32_t slot, uint32_t gen, bool any_gen)
{
	msg_t m;

	for (size_t i = 0; frame(i, &m); i++) {
		if (m.magic != IVMC_VM_MSG_MAGIC || m.type != type ||
		    m.pad || (type == IVMC_VM_MSG_CHAN && m.vec) ||
		    m.slot != slot ||
		    (!any_gen && m.gen != gen))
			continue;
		if (type == IVMC_VM_MSG_CHAN && m.ring_size != RING)
			continue;
		if (l && (memcmp(m.ra, l->a, 16) || m.rport != l->port ||
			  memcmp(m.la, r->a, 16) || m.lport != r->port))
			continue;
		return true;
	}
	return false;
}

static void tick(void);

static void b_write(const uint8_t *buf, size_t n)
{
	size_t off = 0;

	for (int again = 0; B.tx_ok && off < n && again < 2;) {
		struct iovec iov = { (void *)(buf + off), n - off };
		ssize_t r = chan_sendv(B.c, &iov, 1, CHAN_NONBLOCK);

		if (r > 0) {
			FZ_ASSERT(B.wlen + (size_t)r <= WS_MAX, "stream");
			memcpy(B.ws + B.wlen, buf + off, (size_t)r);
			B.wlen += (size_t)r;
			off += (size_t)r;
			continue;
		}
		if (r == -EAGAIN) { /* the link is full: A's turn */
			tick();
			again++;
			continue;
		}
		FZ_ASSERT(tainted, "B's link end: %s, and no lie told",
			  strerror((int)-r));
		B.tx_ok = false;
	}
}

/* ---- the client ------------------------------------------------------------ */

static void client_open(void)
{
	int sv[2], big = 4 << 20;

	FZ_ASSERT(!socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv),
		  "socketpair");
	FZ_ASSERT(fcntl(sv[1], F_SETFL, O_NONBLOCK) == 0, "O_NONBLOCK");
	(void)setsockopt(sv[1], SOL_SOCKET, SO_SNDBUFFORCE, &big, sizeof(big));
	C.cl = client_new(sv[1]);
	FZ_ASSERT(C.cl, "client_new");
	C.fd = sv[0];
	C.ntok = 0;
	C.gone_seen = false;
}

static int token_of(uint64_t token)
{
	FZ_ASSERT(token >= 1 && token <= (uint64_t)C.ntok,
		  "an answer for token %llu, never registered",
		  (unsigned long long)token);
	return (int)token - 1;
}

static void on_chan_mem(const struct ctl_chan_mem *m, int nfds)
{
	int k = token_of(m->token), conn = C.t[k].conn;
	uint64_t half = m->side ? (uint64_t)nslots * slot_size : 0;
	uint64_t at = m->offset - base - half; /* checked below */
	uint32_t slot = (uint32_t)(at / slot_size);
	bool aligned = at == (uint64_t)slot * slot_size;

	FZ_ASSERT(C.t[k].state == T_PENDING && nfds == 1 && !m->bell_peer,
		  "CHAN_MEM for token %d in state %d", k, C.t[k].state);
	FZ_ASSERT(!C.gone_seen, "a channel after the pair went down");
	FZ_ASSERT(m->side == (uint32_t)(conn & 1) && m->size == slot_size &&
			  m->ring_size == RING && m->offset >= base + half &&
			  aligned && slot < nslots,
		  "CHAN_MEM: side %u offset %llu size %llu ring %u", m->side,
		  (unsigned long long)m->offset, (unsigned long long)m->size,
		  m->ring_size);
	for (int j = 0; j < C.ntok; j++)
		FZ_ASSERT(C.t[j].state != T_LIVE || C.t[j].off != m->offset,
			  "slot %u of side %u handed to tokens %d and %d", slot,
			  m->side, j, k);
	/* B allocates for odd connections: it must have said so. */
	FZ_ASSERT(tainted || m->side == 0 ||
			  sent_by_b(IVMC_VM_MSG_CHAN, &c_local[conn],
				    &c_remote[conn], slot, 0, true),
		  "CHAN_MEM in slot %u of B's half, which B never gave", slot);
	C.t[k].state = T_LIVE;
	C.t[k].off = m->offset;
	C.t[k].side = m->side;
}

/* Take in the daemon's answers to the client. */
static void client_drain(void)
{
	union {
		struct ctl_hdr h;
		struct ctl_chan_mem cm;
		struct ctl_nochan nc;
		struct ctl_peer_gone pg;
		char b[CTL_MSG_MAX];
	} m;

	while (C.fd >= 0) {
		int fds[2] = { -1, -1 }, nfds = 2, k;
		ssize_t n = xport_recv_fds(C.fd, &m, sizeof(m), fds, &nfds,
					   MSG_DONTWAIT);

		if (n == -EAGAIN)
			return;
		FZ_ASSERT(n > 0 && (size_t)n >= sizeof(m.h) &&
				  m.h.size == (size_t)n, "client read: %zd", n);
		for (int i = 0; i < nfds; i++)
			close(fds[i]);
		switch (m.h.type) {
		case CTL_CHAN_MEM:
			on_chan_mem(&m.cm, nfds);
			break;
		case CTL_NOCHAN:
			k = token_of(m.nc.token);
			FZ_ASSERT(C.t[k].state == T_PENDING && !nfds &&
					  m.nc.reason > 0 &&
					  m.nc.reason < CTL_R_MAX,
				  "NOCHAN for token %d in state %d, reason %u",
				  k, C.t[k].state, m.nc.reason);
			C.t[k].state = T_DONE;
			break;
		case CTL_PEER_GONE:
			k = token_of(m.pg.token);
			FZ_ASSERT(C.t[k].state == T_LIVE && !nfds,
				  "PEER_GONE for token %d in state %d", k,
				  C.t[k].state);
			C.t[k].state = T_DONE;
			C.gone_seen = true;
			break;
		default:
			FZ_FAIL("answer of type %u to the client", m.h.type);
		}
	}
}

static void client_reg(int conn)
{
	struct ctl_reg m = { 0 };
	int k = C.ntok;

	if (k == MAX_TOKENS)
		return;
	ctl_hdr_init(&m.h, CTL_REG_CONN, 0);
	m.token = (uint64_t)++C.ntok;
	C.t[k].conn = conn;
	C.t[k].state = T_PENDING;
	TRACE("  REG connection %d, token %d\n", conn, k + 1);
	reg_conn(C.cl, &m, dup(cfd[conn]));
	round_end();
	client_drain();
}

static void client_unreg(int k)
{
	struct ctl_unreg m = { 0 };

	client_drain(); /* what was answered before */
	ctl_hdr_init(&m.h, CTL_UNREG, 0);
	m.token = (uint64_t)k + 1;
	TRACE("  UNREG token %d (state %d)\n", k + 1, C.t[k].state);
	reg_unreg(C.cl, &m);
	C.t[k].state = T_DONE;
	round_end();
	client_drain();
}

static void tick(void)
{
	lie.armed = true;
	guest_tick();
	lie.armed = false;
	round_end();
	client_drain();
}

/* ---- one input ------------------------------------------------------------ */

static void addr_set(uint8_t a[16], uint8_t last)
{
	memset(a, 0, 16);
	a[10] = a[11] = 0xff;
	a[12] = 127;
	a[15] = last;
}

static void fix_msg(msg_t *m, uint16_t fix)
{
	int conn = (fix >> 6) & 3;

	if (fix & 1)
		m->magic = IVMC_VM_MSG_MAGIC;
	if (fix & 2)
		m->pad = m->vec = 0;
	if (fix & 4)
		m->type = (uint16_t)(IVMC_VM_MSG_REG + m->type % 4);
	if (fix & 8) { /* B's view: its local is A's remote */
		memcpy(m->la, c_remote[conn].a, 16);
		memcpy(m->ra, c_local[conn].a, 16);
		m->lport = c_remote[conn].port;
		m->rport = c_local[conn].port;
	}
	if (fix & 0x100) {
		addr_set(m->la, 2);
		addr_set(m->ra, fix & 0x200 ? 3 : 1);
	}
	if (fix & 16)
		m->slot %= nslots + 1;
	if (fix & 32) {
		m->ring_size = RING;
		if (m->type == IVMC_VM_MSG_FREE && m->slot < nslots)
			m->gen = B.gen[m->slot];
	}
}

static void run_ops(struct fz_in *in)
{
	while (fz_left(in)) {
		uint8_t op = fz_u8(in);
		msg_t m;
		uint16_t fix;
		size_t n;

		switch (op % 8) {
		case 0:
		case 1:
			fix = fz_u16(in);
			for (size_t i = 0; i < MSG; i++)
				((uint8_t *)&m)[i] = fz_u8(in);
			fix_msg(&m, fix);
			TRACE("MSG type %u slot %u gen %u fix %#x\n", m.type,
			      m.slot, m.gen, fix);
			b_write((const uint8_t *)&m, MSG);
			if (op % 8 == 1)
				tick();
			break;
		case 2:
			n = fz_u8(in) % MSG;
			for (size_t i = 0; i < n; i++)
				((uint8_t *)&m)[i] = fz_u8(in);
			TRACE("PART %zu bytes\n", n);
			b_write((const uint8_t *)&m, n);
			break;
		case 3:
			client_reg(fz_u8(in) % NCONN);
			break;
		case 4:
			n = fz_u8(in);
			if (C.ntok)
				client_unreg((int)(n % (size_t)C.ntok));
			break;
		case 5:
			TRACE("TICK\n");
			tick();
			break;
		case 6:
			TRACE("READ\n");
			b_read();
			break;
		default:
			lie.on = true;
			lie.field = fz_u8(in) % (2 * NFIELDS);
			lie.count = fz_u8(in) % 8;
			lie.mode = fz_u8(in);
			lie.arg = (uint32_t)fz_u8(in) | (uint32_t)fz_u8(in) << 8;
			TRACE("LIE field %d, load %u, mode %u, arg %u\n",
			      lie.field, lie.count, lie.mode % 8, lie.arg);
			break;
		}
	}
}

/* The pair's line of the JSON status. */
static void check_status(bool want_live)
{
	char *buf = NULL, *p;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);
	unsigned long used;

	FZ_ASSERT(f, "memstream");
	guest_status(f, true);
	guest_status(f, false);
	fclose(f);
	p = strstr(buf, "\"slots_used\":");
	FZ_ASSERT(p, "status: %s", buf);
	used = strtoul(p + 13, NULL, 10);
	FZ_ASSERT(used <= nslots, "status: %lu slots used of %u", used, nslots);
	FZ_ASSERT(!want_live || strstr(buf, "\"link\":true"),
		  "the link went down, and no lie told: %s", buf);
	free(buf);
}

/* The end of an input: every CHAN_MEM in A's half matches a CHAN A sent
 * (nothing is lost: an input is too short to fill A's queue, which A
 * sends on a ring at a time as B reads). */
static void check_end(void)
{
	for (int i = 0; i < 64; i++) {
		tick();
		if (!b_read())
			break;
	}
	if (tainted || status_num("msgs_lost") > lost0)
		return;
	for (int k = 0; k < C.ntok; k++)
		if (C.t[k].state == T_LIVE && C.t[k].side == 0) {
			uint32_t slot = (uint32_t)((C.t[k].off - base) /
						   slot_size);

			FZ_ASSERT(B.chan_of[C.t[k].conn][slot],
				  "token %d: slot %u of A's half, and A sent "
				  "no CHAN for it", k + 1, slot);
		}
	check_status(true);
}

/* Drop the client, start a new session, and open B's end again. */
static void reset(void)
{
	client_drop(C.cl, "fuzz");
	close(C.fd);
	C.fd = -1;
	round_end();
	FZ_ASSERT(!D.nclients && !D.npending && !D.nchannels &&
			  link_empty(&D.pending) && link_empty(&D.channels) &&
			  link_empty(&D.domains),
		  "state left: clients %u pending %u channels %u", D.nclients,
		  D.npending, D.nchannels);
	chan_close(B.c);
	host_new_session();
	lie.on = false;
	tick();
	tainted = false;
	check_status(true);
	lost0 = status_num("msgs_lost");
	b_open();
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	char pci[96];
	int fd;

	(void)argc;
	(void)argv;
	trace = getenv("FZ_TRACE");
	if (trace)
		dlog_setup("ivmcd", LOG_DEBUG, stderr);
	signal(SIGPIPE, SIG_IGN);
	snprintf(dir, sizeof(dir), "/tmp/fuzz-guest-link.XXXXXX");
	FZ_ASSERT(mkdtemp(dir), "mkdtemp");
	atexit(cleanup);
	snprintf(ctl_path, sizeof(ctl_path), "%s/ctl", dir);
	snprintf(pair_path, sizeof(pair_path), "%s/pair", dir);
	snprintf(pci, sizeof(pci), "%s/pci", dir);
	FZ_ASSERT(!mkdir(pci, 0700), "mkdir");
	epoch = 1;
	make_ctl();
	pair_fd = open(pair_path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	FZ_ASSERT(pair_fd >= 0 && !ftruncate(pair_fd, PAIR_SIZE), "pair");
	pair = mmap(NULL, PAIR_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED,
		    pair_fd, 0);
	FZ_ASSERT(pair != MAP_FAILED, "mmap pair");
	epoch = 0;
	host_new_session(); /* epoch 1 */
	fake_dev(0, IVMC_VM_ID_CTL, ctl_path);
	fake_dev(1, ivmc_vm_pair_id(1, 0), pair_path);
	setenv("IVMC_SYSFS_PCI", pci, 1);
	FZ_ASSERT(!chan_region_size(RING, 0, &slot_size), "slot size");
	ivmc_vm_carve(PAIR_SIZE, IVMC_VM_PAIR_HDR, 1, slot_size, &base,
		      &nslots);
	FZ_ASSERT(nslots > 2 && nslots < MAX_SLOTS, "%u slots", nslots);
	tcp_conns();
	daemon_init();
	fd = guest_init(D.epfd, NULL);
	FZ_ASSERT(!fd, "guest_init: %s", strerror(-fd));
	check_status(true);
	b_open();
	client_open();
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct fz_in in = { data, size };
	int fd0 = fz_fd_count();

	run_ops(&in);
	check_end();
	reset();
	client_open();
	FZ_ASSERT(fz_fd_count() == fd0, "descriptors leaked: %d, were %d",
		  fz_fd_count(), fd0);
	return 0;
}
