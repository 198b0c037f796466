/* SPDX-License-Identifier: MIT */
/*
 * Description: fuzz target: ivmcd's message parser and state machine
 * (tools/ivmcd/server.c, pair.c, status.c, linked in with main.c's main()
 * renamed). Each input is one client on a socketpair, taken in as
 * server_accept() would (client_new()): up to 64 packets, each with 0-3
 * descriptors of assorted kinds (mailbox memfds good and bad, a pipe, both
 * ends of a loopback TCP connection over IPv4 and over IPv6, listeners,
 * UDP...), then client_event(). Asserts, from docs/control.md: every reply
 * passes the client's checks (src/ctl/client.c) and stricter ones (the
 * descriptors are what the type says, tokens are ours); each malformed
 * packet gets one EPROTO result, and the one that makes 16 strikes (with
 * second HELLOs) drops the client; a HELLO, a
 * QUERY, a RELOAD and an EVACUATE get the answer they must (the WELCOME's
 * table cannot be written, even reopened read-write); once pending
 * registrations expire, every REG_CONN has had an answer; the mailbox
 * counts the replies; once the client is dropped the daemon's state
 * (clients, registrations, channels, namespaces, domains, hash, table) is
 * what it was before, and no descriptor leaked.
 *
 * Input: byte 0 = bit 0: expire the pending registrations before the drop;
 * bit 1: hang up right after sending (the daemon reads the packets, then
 * end of file); bit 2: an address event in the namespace before the drop
 * (netns_event()). Then packets: length (2 bytes, little-endian, low 9 bits),
 * sel (bits 0-1: descriptors, 0-3; bit 2: fix magic, version and size for
 * the type found at offset 6), kinds (low nibble: first descriptor, high
 * nibble: second; the third is their sum), then the bytes.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ctl/proto.h"
#include "chan/chan.h"
#include "transport/transport.h"
#include "../tools/ivmcd/ivmcd.h"
#include "fuzz.h"

#define MAX_PKTS    64
#define MAX_PKT_LEN 511
#define RING	    4096u /* the config's ring_size */
#define GROW	    16384u /* and its ring_grow (each region's L areas) */
#define MAX_REPLIES 1024

/* Not used here: the daemon maps headers read-only and only for status. */
uint64_t ivmc_fuzz_shm(const volatile void *p, uint64_t v, size_t size)
{
	(void)p;
	(void)size;
	return v;
}

enum kind {
	K_MAILBOX,   /* sealed memfd of CTL_MAILBOX_SIZE */
	K_UNSEALED,  /* memfd of that size, no seals */
	K_BIGMBOX,   /* sealed memfd, twice the size */
	K_RDONLY,    /* sealed mailbox memfd, opened read-only */
	K_PIPE,	     /* read end of a pipe */
	K_TCP4_C,    /* loopback IPv4 connection, connecting end */
	K_TCP4_A,    /* its accepted end */
	K_TCP6_C,    /* the same over ::1 */
	K_TCP6_A,
	K_LIS4,	     /* the IPv4 listener */
	K_LIS6,	     /* the IPv6 listener (its port is denied by policy) */
	K_UDP,	     /* connected UDP socket */
	K_TCP_FRESH, /* TCP socket, never connected */
	K_UNIX,	     /* AF_UNIX stream socket */
	NKINDS
};

static int tcp4[2], tcp6[2], lis4, lis6, udp;
static bool trace;
static char conf_path[64];
static struct client *anchor;

/* What the daemon looked like before an input, to compare after it. */
static struct base {
	uint32_t nclients, nlisteners;
	int nss, ns_refs;
	uint64_t paired;
} base;

struct pkt {
	uint8_t b[MAX_PKT_LEN + 1];
	size_t len;
	int nfds;
	enum kind k[3];
};

/* ---- set-up --------------------------------------------------------- */

static void tcp_pair(int family, int *lfd, int fds[2])
{
	struct sockaddr_storage ss = { 0 };
	socklen_t len;

	ss.ss_family = (sa_family_t)family;
	if (family == AF_INET6) {
		((struct sockaddr_in6 *)&ss)->sin6_addr = in6addr_loopback;
		len = sizeof(struct sockaddr_in6);
	} else {
		((struct sockaddr_in *)&ss)->sin_addr.s_addr =
			htonl(INADDR_LOOPBACK);
		len = sizeof(struct sockaddr_in);
	}
	*lfd = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	FZ_ASSERT(*lfd >= 0 && !bind(*lfd, (struct sockaddr *)&ss, len) &&
			  !listen(*lfd, 4) &&
			  !getsockname(*lfd, (struct sockaddr *)&ss, &len),
		  "listen: %s", strerror(errno));
	fds[0] = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	FZ_ASSERT(fds[0] >= 0 && !connect(fds[0], (struct sockaddr *)&ss, len),
		  "connect: %s", strerror(errno));
	fds[1] = accept4(*lfd, NULL, NULL, SOCK_CLOEXEC);
	FZ_ASSERT(fds[1] >= 0, "accept: %s", strerror(errno));
}

static uint16_t local_port(int fd)
{
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);

	FZ_ASSERT(!getsockname(fd, (struct sockaddr *)&ss, &len),
		  "getsockname");
	return ntohs(ss.ss_family == AF_INET6 ?
			     ((struct sockaddr_in6 *)&ss)->sin6_port :
			     ((struct sockaddr_in *)&ss)->sin_port);
}

/* The policy: tiny rings and L areas, two waiting registrations per
 * client, two channels per domain, and the IPv6 pair denied (by its
 * listener's port).
 * In a memfd, named by its /proc path: RELOAD reads it again, and a crash
 * leaves no file behind. */
static void write_conf(void)
{
	char text[256];
	int fd = memfd_create("fuzz-ctl-daemon.conf", MFD_CLOEXEC);
	int n = snprintf(text, sizeof(text),
			 "ring_size 4K\nring_grow 16K\npending_max 2\n"
			 "quota channels 2\n"
			 "pending_timeout 10s\ndeny port=%u\n",
			 (unsigned int)local_port(lis6));

	FZ_ASSERT(fd >= 0 && write(fd, text, (size_t)n) == n, "config");
	snprintf(conf_path, sizeof(conf_path), "/proc/self/fd/%d", fd);
}

/* What run() does after each round of events. */
static void round_end(void)
{
	if (D.table_dirty) {
		D.table_dirty = false;
		table_rebuild();
	}
	netns_reap();
}

/* A client on one end of a socketpair; *peer is our end. */
static struct client *new_client(int *peer)
{
	int sv[2], big = 4 << 20;
	struct client *cl;

	FZ_ASSERT(!socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv),
		  "socketpair");
	FZ_ASSERT(fcntl(sv[1], F_SETFL, O_NONBLOCK) == 0, "O_NONBLOCK");
	/* As the daemon asks for its own sockets (listen_on()). */
	(void)setsockopt(sv[1], SOL_SOCKET, SO_SNDBUFFORCE, &big, sizeof(big));
	cl = client_new(sv[1]);
	FZ_ASSERT(cl, "client_new");
	*peer = sv[0];
	return cl;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	struct ctl_hello h = { 0 };
	struct sockaddr_in sa = { .sin_family = AF_INET };
	char msg[CTL_TEXT_MAX];
	union { struct ctl_hdr h; char b[CTL_MSG_MAX]; } m;
	int peer, fds[2], nfds = 2;

	(void)argc;
	(void)argv;
	trace = getenv("FZ_TRACE");
	signal(SIGPIPE, SIG_IGN);
	tcp_pair(AF_INET, &lis4, tcp4);
	tcp_pair(AF_INET6, &lis6, tcp6);
	udp = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	sa.sin_port = htons(local_port(lis4));
	FZ_ASSERT(udp >= 0 && !connect(udp, (struct sockaddr *)&sa, sizeof(sa)),
		  "udp");
	write_conf();

	/* As init_state() and setup_fds() do. */
	FZ_ASSERT(!daemon_lists_init(1u << 16), "lists");
	D.id = 42;
	D.sock_path = "/run/ivmc/fuzz.sock";
	D.conf_path = conf_path;
	D.lfd = D.sfd = D.tfd = D.lockfd = -1;
	D.own_netns_ino = kfacts_netns_ino("host"); /* opens kfacts' own fd */
	D.epfd = epoll_create1(EPOLL_CLOEXEC);
	FZ_ASSERT(D.epfd >= 0, "init");
	FZ_ASSERT(!policy_load(D.conf_path, false, &D.pol, msg, sizeof(msg)),
		  "config: %s", msg);
	D.pol_gen = 1;
	FZ_ASSERT(!table_create(), "table_create");

	/* Another client that said HELLO and stays: the namespace and the
	 * table have an entry before every input, as in a live daemon. */
	anchor = new_client(&peer);
	ctl_hdr_init(&h.h, CTL_HELLO, 0);
	FZ_ASSERT(!xport_send_fds(peer, &h, sizeof(h), NULL, 0), "hello");
	client_event(anchor, EPOLLIN);
	round_end();
	FZ_ASSERT(xport_recv_fds(peer, &m, sizeof(m), fds, &nfds,
				 MSG_DONTWAIT) == sizeof(struct ctl_welcome) &&
			  m.h.type == CTL_WELCOME && nfds == 1, "welcome");
	close(fds[0]);
	close(peer); /* the anchor is never read again: it gets no mail */
	return 0;
}

/* ---- descriptors ------------------------------------------------------ */

static int memfd(uint64_t size, bool seal)
{
	int fd = memfd_create("fuzz", MFD_CLOEXEC | MFD_ALLOW_SEALING);

	FZ_ASSERT(fd >= 0 && !ftruncate(fd, (off_t)size), "memfd");
	if (seal)
		FZ_ASSERT(!fcntl(fd, F_ADD_SEALS,
				 F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL),
			  "seals");
	return fd;
}

/* Mappings of the mailboxes we handed out, to read seq afterwards. */
static struct ctl_mailbox *mboxes[3 * MAX_PKTS];
static int nmboxes;

/* A descriptor of kind k: *own is 1 if it is ours to close after sending.
 * A mailbox is mapped first, so that its seq can be read later; its
 * number is in *mbox (else -1). */
static int make_fd(enum kind k, int *own, int *mbox)
{
	char path[64];
	int fd, p[2];
	void *m;

	*own = 1;
	*mbox = -1;
	switch (k) {
	case K_MAILBOX:
		fd = memfd(CTL_MAILBOX_SIZE, true);
		m = mmap(NULL, CTL_MAILBOX_SIZE, PROT_READ, MAP_SHARED, fd, 0);
		FZ_ASSERT(m != MAP_FAILED, "mmap mailbox");
		*mbox = nmboxes;
		mboxes[nmboxes++] = m;
		return fd;
	case K_UNSEALED: return memfd(CTL_MAILBOX_SIZE, false);
	case K_BIGMBOX: return memfd(2 * CTL_MAILBOX_SIZE, true);
	case K_RDONLY:
		p[0] = memfd(CTL_MAILBOX_SIZE, true);
		snprintf(path, sizeof(path), "/proc/self/fd/%d", p[0]);
		fd = open(path, O_RDONLY | O_CLOEXEC);
		close(p[0]);
		FZ_ASSERT(fd >= 0, "reopen");
		return fd;
	case K_PIPE:
		FZ_ASSERT(!pipe2(p, O_CLOEXEC), "pipe");
		close(p[1]);
		return p[0];
	case K_TCP_FRESH:
		fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
		FZ_ASSERT(fd >= 0, "socket");
		return fd;
	case K_UNIX:
		FZ_ASSERT(!socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0,
				      p), "socketpair");
		close(p[1]);
		return p[0];
	default:
		break;
	}
	*own = 0;
	switch (k) {
	case K_TCP4_C: return tcp4[0];
	case K_TCP4_A: return tcp4[1];
	case K_TCP6_C: return tcp6[0];
	case K_TCP6_A: return tcp6[1];
	case K_LIS4: return lis4;
	case K_LIS6: return lis6;
	default: return udp;
	}
}

/* ---- the model: what the daemon must answer (docs/control.md) ---------- */

struct expect {
	int bad, second_hello, welcome;
	int ok_fd, ok_nofd, einval;
	bool dropped;	/* by the daemon, on a bad message or an empty one */
	int mbox;	/* mailbox index, or -1 */
	uint64_t conn_tokens[MAX_PKTS];
	bool conn_owed[MAX_PKTS]; /* not withdrawn by an UNREG since */
	int nconn;
	uint64_t reg_tokens[MAX_PKTS];
	int nreg;
};

static bool ring_ok(uint32_t r)
{
	return !r || (r >= 4096 && r <= (1u << 30) && !(r & (r - 1)));
}

/* Is a processed packet malformed (the daemon answers EPROTO)? */
static bool malformed(const struct pkt *p, bool hello)
{
	struct ctl_hdr h;
	const uint8_t *b = p->b;
	uint32_t u32a, u32b;
	uint64_t u64;

	if (p->nfds > 2 || p->len < sizeof(h) || p->len > CTL_MSG_MAX)
		return true;
	memcpy(&h, b, sizeof(h));
	if (h.magic != CTL_MAGIC || h.version != CTL_VERSION ||
	    h.size != p->len || ctl_type_size(h.type) != h.size)
		return true;
	switch (h.type) {
	case CTL_HELLO:
		memcpy(&u64, b + 16, 8);
		return h.flags || u64 || p->nfds > 1;
	case CTL_REG_CONN:
	case CTL_REG_LISTEN:
		memcpy(&u32a, b + 24, 4); /* ring_size */
		memcpy(&u32b, b + 28, 4); /* reserved */
		return !hello || h.flags || u32b || !ring_ok(u32a) ||
		       p->nfds != 1;
	case CTL_UNREG:
		return !hello || h.flags || p->nfds;
	case CTL_QUERY:
		return p->nfds;
	case CTL_RELOAD:
	case CTL_EVACUATE:
		return h.flags || p->nfds;
	default:
		return true;
	}
}

static void model(const struct pkt *pk, int npk, const int *mbox_of,
		  struct expect *e)
{
	bool hello = false;
	int strikes = 0; /* malformed messages and second HELLOs */

	memset(e, 0, sizeof(*e));
	e->mbox = -1;
	for (int i = 0; i < npk; i++) {
		const struct pkt *p = &pk[i];
		struct ctl_hdr h;
		uint32_t a, b;
		uint64_t u64;

		/* Too many fds is an error whatever the length; an empty
		 * packet otherwise reads as end of file. */
		if (!p->len && p->nfds <= 2) {
			e->dropped = true;
			return;
		}
		if (malformed(p, hello)) {
			e->bad++;
			if (++strikes >= MAX_BAD_MSGS) {
				e->dropped = true;
				return;
			}
			continue;
		}
		memcpy(&h, p->b, sizeof(h));
		memcpy(&a, p->b + 16, 4);
		memcpy(&b, p->b + 20, 4);
		switch (h.type) {
		case CTL_HELLO:
			if (hello) { /* a strike, checked at the next bad one */
				e->second_hello++;
				strikes++;
				break;
			}
			hello = true;
			e->welcome = 1;
			if (p->nfds == 1 && p->k[0] == K_MAILBOX)
				e->mbox = mbox_of[i];
			break;
		case CTL_REG_CONN:
			e->conn_owed[e->nconn] = true;
			memcpy(&e->conn_tokens[e->nconn++], p->b + 16, 8);
			/* fall through */
		case CTL_REG_LISTEN:
			memcpy(&e->reg_tokens[e->nreg++], p->b + 16, 8);
			break;
		case CTL_QUERY: /* what, reserved */
			if ((a == CTL_Q_STATUS || a == CTL_Q_POLICY) && !b &&
			    !(h.flags & ~CTL_Q_JSON))
				e->ok_fd++;
			else
				e->einval++;
			break;
		case CTL_UNREG: /* withdrawn: no answer owed any more */
			memcpy(&u64, p->b + 16, 8);
			for (int k = 0; k < e->nconn; k++)
				if (e->conn_tokens[k] == u64)
					e->conn_owed[k] = false;
			break;
		case CTL_RELOAD:
			e->ok_nofd++;
			break;
		case CTL_EVACUATE: /* uid, has_uid at 24, 28 */
			memcpy(&b, p->b + 28, 4);
			if (b > 1)
				e->einval++;
			else
				e->ok_nofd++;
			break;
		default:
			break;
		}
	}
}

/* ---- the replies -------------------------------------------------------- */

/* A JSON value, strictly (RFC 8259), within [*p, end). */
static bool json_value(const char **p, const char *end, int depth);

static void json_ws(const char **p, const char *end)
{
	while (*p < end && (**p == ' ' || **p == '\n' || **p == '\t' ||
			    **p == '\r'))
		(*p)++;
}

static bool json_string(const char **p, const char *end)
{
	if (*p >= end || **p != '"')
		return false;
	for ((*p)++; *p < end; (*p)++) {
		unsigned char c = (unsigned char)**p;

		if (c == '"') {
			(*p)++;
			return true;
		}
		if (c < 0x20)
			return false;
		if (c == '\\') {
			(*p)++;
			if (*p >= end || !strchr("\"\\/bfnrtu", **p))
				return false;
		}
	}
	return false;
}

static bool json_number(const char **p, const char *end)
{
	const char *s = *p;

	if (*p < end && **p == '-')
		(*p)++;
	while (*p < end && **p >= '0' && **p <= '9')
		(*p)++;
	return *p > s && (*p)[-1] != '-';
}

static bool json_list(const char **p, const char *end, int depth, char close,
		      bool obj)
{
	(*p)++;
	json_ws(p, end);
	if (*p < end && **p == close) {
		(*p)++;
		return true;
	}
	for (;;) {
		if (obj) {
			if (!json_string(p, end))
				return false;
			json_ws(p, end);
			if (*p >= end || **p != ':')
				return false;
			(*p)++;
		}
		if (!json_value(p, end, depth + 1))
			return false;
		json_ws(p, end);
		if (*p < end && **p == ',') {
			(*p)++;
			json_ws(p, end);
			continue;
		}
		if (*p < end && **p == close) {
			(*p)++;
			return true;
		}
		return false;
	}
}

static bool json_value(const char **p, const char *end, int depth)
{
	static const char *const words[] = { "true", "false", "null" };

	json_ws(p, end);
	if (*p >= end || depth > 16)
		return false;
	if (**p == '{')
		return json_list(p, end, depth, '}', true);
	if (**p == '[')
		return json_list(p, end, depth, ']', false);
	if (**p == '"')
		return json_string(p, end);
	for (int i = 0; i < 3; i++) {
		size_t n = strlen(words[i]);

		if ((size_t)(end - *p) >= n && !memcmp(*p, words[i], n)) {
			*p += n;
			return true;
		}
	}
	return json_number(p, end);
}

/* A QUERY answer: a memfd of exactly size bytes, text or JSON. */
static void check_answer(int fd, uint32_t size)
{
	static char buf[1 << 20];
	struct stat st;
	const char *p = buf;
	ssize_t n;

	FZ_ASSERT(!fstat(fd, &st) && S_ISREG(st.st_mode) &&
			  st.st_size == (off_t)size && size < sizeof(buf),
		  "answer: %lld bytes, said %u", (long long)st.st_size, size);
	n = pread(fd, buf, size, 0);
	FZ_ASSERT(n == (ssize_t)size && size > 0, "answer read");
	if (buf[0] != '{') {
		FZ_ASSERT(!strncmp(buf, "ivmcd pid ", 10) ||
				  !strncmp(buf, "# ivmcd policy", 14),
			  "answer: %.40s", buf);
		return;
	}
	FZ_ASSERT(json_value(&p, buf + size, 0), "bad JSON at byte %zd: %.60s",
		  p - buf, p);
	json_ws(&p, buf + size);
	FZ_ASSERT(p == buf + size, "JSON followed by %.40s", p);
}

/* The table, as a client gets it: read-only, and no way to write it. */
static void check_table(int fd)
{
	struct stat st;
	const struct ctl_table *t;
	char path[64];
	void *w;
	int rw;

	FZ_ASSERT(!fstat(fd, &st) && st.st_size == (off_t)CTL_TABLE_SIZE,
		  "table size");
	FZ_ASSERT((fcntl(fd, F_GETFL) & O_ACCMODE) == O_RDONLY,
		  "table not O_RDONLY");
	w = mmap(NULL, CTL_TABLE_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd,
		 0);
	FZ_ASSERT(w == MAP_FAILED, "table mapped writable");
	/* Nor through a read-write reopen of it (the seals forbid it). */
	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	rw = open(path, O_RDWR | O_CLOEXEC);
	if (rw >= 0) {
		w = mmap(NULL, CTL_TABLE_SIZE, PROT_READ | PROT_WRITE,
			 MAP_SHARED, rw, 0);
		FZ_ASSERT(w == MAP_FAILED && pwrite(rw, "x", 1, 0) < 0,
			  "table writable after a reopen");
		close(rw);
	}
	t = mmap(NULL, CTL_TABLE_SIZE, PROT_READ, MAP_SHARED, fd, 0);
	FZ_ASSERT(t != MAP_FAILED, "table map");
	FZ_ASSERT(t->magic == CTL_TABLE_MAGIC && t->slots == CTL_TABLE_SLOTS &&
			  !(t->seq & 1), "table header");
	munmap((void *)t, CTL_TABLE_SIZE);
}

struct got {
	int bad, second_hello, welcome;
	int ok_fd, ok_nofd, einval;
	int total, welcome_at;
	uint64_t answered[2 * MAX_REPLIES];
	int nanswered;
	uint64_t chan_tok[MAX_REPLIES], chan_id[MAX_REPLIES];
	uint32_t chan_side[MAX_REPLIES];
	int nchan;
};

static bool has(const uint64_t *v, int n, uint64_t x)
{
	for (int i = 0; i < n; i++)
		if (v[i] == x)
			return true;
	return false;
}

static void check_chan(struct got *g, const struct ctl_chan *c, const int *fds)
{
	uint64_t size, want;

	FZ_ASSERT(c->side <= 1 && c->ring_size == RING, "CHAN side %u ring %u",
		  c->side, c->ring_size);
	FZ_ASSERT(!chan_region_size(RING, GROW, &want) &&
			  !xport_memfd_verify(fds[0], &size) && size == want,
		  "CHAN region");
	FZ_ASSERT(!xport_doorbell_verify(fds[1]), "CHAN doorbell");
	/* Both ends of a channel are ours: sides 0 and 1, once each. */
	for (int i = 0; i < g->nchan; i++)
		FZ_ASSERT(g->chan_id[i] != c->chan_id ||
				  g->chan_side[i] != c->side,
			  "CHAN side twice");
	g->chan_tok[g->nchan] = c->token;
	g->chan_id[g->nchan] = c->chan_id;
	g->chan_side[g->nchan++] = c->side;
}

/* One reply: the client's checks (ctl_recv()), then ours. */
static void check_reply(struct got *g, const struct expect *e, const void *buf,
			ssize_t n, const int *fds, int nfds)
{
	const struct ctl_hdr *h = buf;
	const struct ctl_result *r = buf;
	const struct ctl_nochan *nc = buf;
	const struct ctl_welcome *w = buf;
	uint64_t tok = 0;

	FZ_ASSERT(n >= (ssize_t)sizeof(*h) && h->magic == CTL_MAGIC &&
			  h->version == CTL_VERSION && (uint32_t)n == h->size &&
			  ctl_type_size(h->type) == h->size && !h->flags,
		  "malformed reply: %zd bytes, type %u", n, h->type);
	FZ_ASSERT(nfds == ctl_type_fds(h->type) ||
			  (h->type == CTL_RESULT && nfds == 1),
		  "type %u with %d fds", h->type, nfds);
	g->total++;
	if (h->type == CTL_CHAN || h->type == CTL_NOCHAN ||
	    h->type == CTL_DETACH)
		memcpy(&tok, (const char *)buf + 16, sizeof(tok));
	if (trace) /* to read a reproducer */
		fprintf(stderr, "reply %d: type %u, %d fds, token %llu, "
			"reason/err %d %s\n", g->total, h->type, nfds,
			(unsigned long long)tok,
			h->type == CTL_NOCHAN ? (int)nc->reason :
			h->type == CTL_RESULT ? r->err : 0,
			h->type == CTL_RESULT ? r->text : "");
	switch (h->type) {
	case CTL_WELCOME:
		FZ_ASSERT(w->daemon_id == D.id &&
				  w->table_size == CTL_TABLE_SIZE &&
				  w->daemon_pid == (uint32_t)getpid(),
			  "WELCOME");
		check_table(fds[0]);
		g->welcome++;
		g->welcome_at = g->total - 1;
		break;
	case CTL_CHAN:
		FZ_ASSERT(has(e->conn_tokens, e->nconn, tok),
			  "CHAN for a token never registered");
		check_chan(g, buf, fds);
		g->answered[g->nanswered++] = tok;
		break;
	case CTL_NOCHAN:
		FZ_ASSERT(nc->reason > CTL_R_NONE && nc->reason < CTL_R_MAX &&
				  nc->reason != CTL_R_PEER_FAILED &&
				  !nc->reserved,
			  "NOCHAN reason %u", nc->reason);
		FZ_ASSERT(has(e->reg_tokens, e->nreg, nc->token),
			  "NOCHAN for a token never registered");
		g->answered[g->nanswered++] = nc->token;
		break;
	case CTL_DETACH:
		FZ_ASSERT(has(g->chan_tok, g->nchan, tok),
			  "DETACH for a token that has no channel");
		break;
	case CTL_RESULT:
		FZ_ASSERT(memchr(r->text, 0, sizeof(r->text)) && r->err >= 0 &&
				  r->err < 4096, "RESULT err %d", r->err);
		FZ_ASSERT(!nfds || !r->err, "RESULT error with a descriptor");
		if (nfds)
			check_answer(fds[0], r->size);
		if (r->err == EPROTO && !strcmp(r->text, "second HELLO"))
			g->second_hello++;
		else if (r->err == EPROTO)
			g->bad++;
		else if (r->err == EINVAL)
			g->einval++;
		else if (!r->err && nfds)
			g->ok_fd++;
		else if (!r->err)
			g->ok_nofd++;
		else
			FZ_FAIL("RESULT err %d: %s", r->err, r->text);
		break;
	default:
		FZ_FAIL("reply of a client type %u", h->type);
	}
}

static void drain(int fd, struct got *g, const struct expect *e)
{
	for (int i = 0; i < MAX_REPLIES; i++) {
		union { struct ctl_hdr h; char b[CTL_MSG_MAX + 1]; } m;
		int fds[8], nfds = 8;
		ssize_t n = xport_recv_fds(fd, &m, sizeof(m), fds, &nfds,
					   MSG_DONTWAIT);

		if (n == -EAGAIN || n == 0)
			return;
		/* The daemon hung up on packets it never read: reported
		 * once, before the replies still queued. */
		if (n == -ECONNRESET)
			continue;
		FZ_ASSERT(n > 0, "recv: %zd", n);
		check_reply(g, e, &m, n, fds, nfds);
		for (int k = 0; k < nfds; k++)
			close(fds[k]);
	}
	FZ_FAIL("more than %d replies", MAX_REPLIES);
}

/* ---- the daemon's state ------------------------------------------------- */

static void ns_count(int *n, int *refs)
{
	*n = *refs = 0;
	for (struct link *l = D.nss.next; l != &D.nss; l = l->next) {
		(*n)++;
		*refs += link_entry(l, struct netns, node)->refs;
	}
}

static void snapshot(struct base *b)
{
	b->nclients = D.nclients;
	b->nlisteners = D.nlisteners;
	b->paired = D.paired;
	ns_count(&b->nss, &b->ns_refs);
}

/* With no listener left, the table holds each namespace's addresses. */
static uint32_t table_want(void)
{
	static struct klocal all[MAX_NS_ADDRS * 4];
	uint32_t n = 0;

	for (struct link *l = D.nss.next; l != &D.nss; l = l->next) {
		const struct netns *ns = link_entry(l, struct netns, node);

		for (int i = 0; i < ns->naddrs && n < MAX_NS_ADDRS * 4; i++) {
			bool dup = false;

			for (uint32_t k = 0; k < n && !dup; k++)
				dup = !memcmp(all[k].a, ns->addrs[i].a, 16);
			if (!dup)
				all[n++] = ns->addrs[i];
		}
	}
	return n;
}

/* Any registration left in the hash? Not instrumented: 64 Ki compares
 * per input would be most of the run time, for no coverage. */
__attribute__((noinline, no_sanitize("coverage"))) static bool
hash_used(void)
{
	uintptr_t any = 0;

	for (uint32_t i = 0; i < D.hash_size; i++)
		any |= (uintptr_t)D.hash[i];
	return any;
}

static void check_state(void)
{
	struct base now;

	snapshot(&now);
	FZ_ASSERT(now.nclients == base.nclients &&
			  now.nlisteners == base.nlisteners && !D.npending &&
			  !D.nchannels && link_empty(&D.pending) &&
			  link_empty(&D.channels) && link_empty(&D.domains),
		  "state left: clients %u listeners %u pending %u channels %u",
		  now.nclients, now.nlisteners, D.npending, D.nchannels);
	FZ_ASSERT(now.nss == base.nss && now.ns_refs == base.ns_refs &&
			  link_empty(&D.dead_nss),
		  "namespaces: %d (refs %d), were %d (refs %d)", now.nss,
		  now.ns_refs, base.nss, base.ns_refs);
	FZ_ASSERT(D.table->count == table_want() && !(D.table->seq & 1),
		  "table: %u entries, %u addresses", D.table->count,
		  table_want());
	FZ_ASSERT(!hash_used(), "a registration left in the hash");
	FZ_ASSERT(anchor->pending == 0 && link_empty(&anchor->regs) &&
			  link_empty(&anchor->ends), "anchor changed");
}

/* ---- one input ---------------------------------------------------------- */

static int parse(const uint8_t *data, size_t size, struct pkt *pk)
{
	struct fz_in in = { data + 1, size - 1 };
	int n = 0;

	while (fz_left(&in) && n < MAX_PKTS) {
		struct pkt *p = &pk[n++];
		size_t len = fz_u16(&in) & MAX_PKT_LEN;
		uint8_t sel = fz_u8(&in), k = fz_u8(&in);

		memset(p->b, 0, sizeof(p->b));
		p->len = len < in.n ? len : in.n;
		memcpy(p->b, in.p, p->len);
		in.p += p->len;
		in.n -= p->len;
		p->nfds = sel & 3;
		p->k[0] = (enum kind)((k & 15) % NKINDS);
		p->k[1] = (enum kind)((k >> 4) % NKINDS);
		p->k[2] = (enum kind)(((k & 15) + (k >> 4)) % NKINDS);
		if (sel & 4) { /* a well-formed header for the type at 6 */
			struct ctl_hdr h;
			uint32_t ts;

			memcpy(&h, p->b, sizeof(h));
			ts = ctl_type_size(h.type);
			h.magic = CTL_MAGIC;
			h.version = CTL_VERSION;
			if (ts) {
				h.size = ts;
				p->len = ts;
			}
			memcpy(p->b, &h, sizeof(h));
			if (p->len < sizeof(h))
				p->len = sizeof(h);
		}
	}
	return n;
}

static void send_pkt(int sock, const struct pkt *p, int *mbox)
{
	int fds[3], own[3];

	for (int i = 0; i < p->nfds; i++)
		fds[i] = make_fd(p->k[i], &own[i], i ? &(int){ 0 } : mbox);
	FZ_ASSERT(!xport_send_fds(sock, p->b, p->len, fds, p->nfds),
		  "send: %s", strerror(errno));
	for (int i = 0; i < p->nfds; i++)
		if (own[i])
			close(fds[i]);
}

static void drop_diag_sockets(void)
{
	for (struct link *l = D.nss.next; l != &D.nss; l = l->next) {
		struct netns *ns = link_entry(l, struct netns, node);

		if (ns->diag >= 0) {
			close(ns->diag);
			ns->diag = -1;
		}
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct pkt pk[MAX_PKTS];
	static struct expect e;
	static struct got g;
	int mbox_of[MAX_PKTS];
	uint8_t flags = size ? data[0] : 0;
	int npk, fd0, peer;
	struct client *cl;
	bool alive;

	/* A namespace that outlives inputs keeps its sock_diag socket (one
	 * per namespace, by design): not a leak, so not counted. */
	drop_diag_sockets();
	npk = size ? parse(data, size, pk) : 0;
	fd0 = fz_fd_count();

	snapshot(&base);
	nmboxes = 0;
	cl = new_client(&peer);
	for (int i = 0; i < npk; i++) {
		mbox_of[i] = -1;
		if (trace)
			fprintf(stderr, "packet %d: %zu bytes, type %u, fds %d "
				"(kinds %d %d %d)\n", i + 1, pk[i].len,
				pk[i].b[6] | pk[i].b[7] << 8,
				pk[i].nfds, pk[i].k[0], pk[i].k[1], pk[i].k[2]);
		send_pkt(peer, &pk[i], &mbox_of[i]);
	}
	model(pk, npk, mbox_of, &e);
	if (flags & 2) {
		close(peer);
		peer = -1;
	}
	for (int i = 0; i < 3 && D.nclients == base.nclients + 1; i++) {
		client_event(cl, EPOLLIN);
		round_end();
	}
	alive = D.nclients == base.nclients + 1;
	FZ_ASSERT(alive == !(e.dropped || (flags & 2)),
		  "client %s, the model says %s", alive ? "kept" : "dropped",
		  e.dropped ? "dropped" : "kept");
	if (alive && (flags & 1)) {
		struct link *l;

		for (l = D.pending.next; l != &D.pending; l = l->next)
			link_entry(l, struct reg, tnode)->deadline_ms = 0;
		pending_expire();
		round_end();
		FZ_ASSERT(!cl->pending, "pending after expiry");
	}
	memset(&g, 0, sizeof(g));
	if (peer >= 0)
		drain(peer, &g, &e);
	if (flags & 4) { /* the anchor's namespace reports a change */
		netns_event(anchor->ns);
		round_end();
	}
	if (alive)
		client_drop(cl, "fuzz");
	round_end();
	if (peer >= 0) {
		FZ_ASSERT(g.welcome == e.welcome && g.bad == e.bad &&
				  g.second_hello == e.second_hello &&
				  g.ok_fd == e.ok_fd &&
				  g.ok_nofd == e.ok_nofd &&
				  g.einval == e.einval,
			  "replies (got/expected): welcome %d/%d bad %d/%d "
			  "second %d/%d ok+fd %d/%d ok %d/%d einval %d/%d",
			  g.welcome, e.welcome, g.bad, e.bad, g.second_hello,
			  e.second_hello, g.ok_fd, e.ok_fd, g.ok_nofd,
			  e.ok_nofd, g.einval, e.einval);
		if (alive && (flags & 1))
			for (int i = 0; i < e.nconn; i++)
				FZ_ASSERT(!e.conn_owed[i] ||
						  has(g.answered, g.nanswered,
						      e.conn_tokens[i]),
					  "REG_CONN %llu never answered",
					  (unsigned long long)e.conn_tokens[i]);
		/* seq counts every message queued since the mailbox was
		 * mapped, which is just before the WELCOME. */
		if (e.mbox >= 0) {
			uint32_t seq = atomic_load(&mboxes[e.mbox]->seq);

			FZ_ASSERT(seq == (uint32_t)(g.total - g.welcome_at),
				  "mailbox seq %u, %d replies since WELCOME",
				  seq, g.total - g.welcome_at);
		}
		close(peer);
	}
	for (int i = 0; i < nmboxes; i++)
		munmap(mboxes[i], CTL_MAILBOX_SIZE);
	check_state();
	drop_diag_sockets();
	FZ_ASSERT(fz_fd_count() == fd0, "descriptors leaked: %d, were %d",
		  fz_fd_count(), fd0);
	return 0;
}
