/* SPDX-License-Identifier: MIT */
/*
 * Description: a fake ivmcd. The test serves the control protocol itself,
 * on a socket in its temporary directory (IVMC_SOCKET), first honestly,
 * then lying: CHANs whose region is unsealed, partly or write-sealed, of
 * the wrong size or header, a ring-only region, a file on disk, on tmpfs
 * or on a FUSE filesystem that stops answering, a FIFO, /dev/zero, a
 * directory, a /proc or sysfs file, the client's own mailbox; doorbells
 * that are pipes, eventfds, memfds, FUSE files, UDP, TCP, datagram,
 * seqpacket or unconnected sockets, or the client's own TCP socket; too
 * few or too many fds; CHANs for stray, closed, repeated or unpaired
 * tokens, with side 2 or both sides 0, a ring size the region does not
 * have; CHAN_MEMs (a peer VM's slot) whose doorbell is a blocking pipe,
 * or whose registers are a memfd or a FUSE file, or with the wrong number
 * of fds (and an honest one without a doorbell: the ends poll);
 * truncated, oversized, wrong-version, unknown and empty messages;
 * forged WELCOMEs and tables; a flood of 5000 messages; silence; hang-ups;
 * a mailbox it tries to resize. The victim, a forked child, wraps both
 * ends of a loopback TCP connection with ivmc_tcp() and keeps a verified
 * stream going both ways: it must not crash or hang, must end on plain
 * TCP with the expected ivmc_tcp_state() (or on the ring where the answer
 * was honest: a control case shows the fake attaches), and must hold no
 * fd or shared mapping more than before. One case shows what the client
 * cannot see (ivmcd is trusted): two connections spliced. Then the table
 * alone (ctl_open(), ctl_maybe_local()): rewritten while it is read, stuck
 * mid-write, full, and shrunk after it was mapped.
 */
#include <linux/fuse.h>
#include <linux/magic.h>
#include <poll.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/syscall.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/vfs.h>

#include "t_ctl.h"
#include "chan/chan.h"
#include "chan/shm_layout.h"
#include "ctl/client.h"
#include "ctl/proto.h"
#include "transport/transport.h"

#ifndef F_SEAL_FUTURE_WRITE
#define F_SEAL_FUTURE_WRITE 0x0010
#endif

/* src/api/tcp.c (internal, linked from libivmc.a): open the daemon
 * connection now, as the preload does at load. */
void tcp_warmup(void);

#define RING	  4096u
#define REGION	  (IVMC_SHM_HDR_SIZE + 2 * RING)
#define SEALS_ALL (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL)
#define BUDGET_US 300000 /* IVMC_CTL_BUDGET_US: the wait for a WELCOME */
#define CASE_MS	  6000	 /* a victim still running then is hung */
#define CHUNK	  512
#define FLOOD	  5000
#define TOKEN_GO  0xfeedull /* the table victim's "I have mapped it" */

static char path[128];
static int fk_lfd = -1; /* the fake's listening socket (victims close it) */

/* addresses in the fake table: listed, and not */
static const uint8_t listed[16] = { [10] = 0xff, [11] = 0xff, 10, 1, 2, 3 };
static const uint8_t unlisted[16] = { [10] = 0xff, [11] = 0xff, 10, 9, 9, 9 };

/* ---- the fake daemon ---------------------------------------------------- */

struct reg {
	uint64_t token;
	int fd; /* our copy of the client's TCP socket */
	struct sockaddr_storage local, peer;
	bool paired;
};

struct fk;
typedef void (*fk_fn)(struct fk *k);
typedef void (*pair_fn)(struct fk *k, struct reg *a, struct reg *b);

struct fcase {
	const char *what;
	fk_fn hello;			  /* answer the HELLO (NULL: honestly) */
	int (*region)(struct fk *k);	  /* the region both ends get (NULL: honest) */
	void (*bells)(struct fk *k, int bell[2]); /* their doorbells (NULL: honest) */
	pair_fn pair;			  /* instead: anything, once both registered */
	void (*unreg)(struct fk *k, uint64_t token); /* on an UNREG */
	bool (*avail)(void);		  /* false: cannot be forged here (skip) */
	int want[2];			  /* ivmc_tcp_state() of both ends at the end */
	int ring;			  /* ivmc_stats().on_ring of both at the end */
	unsigned int flags;
	int want2; /* F_AGAIN: the state of a fresh pair's ends afterwards */
};

#define F_PENDING 0x1u /* no answer comes: run a while, states stay 0 */
#define F_LOST	  0x2u /* the daemon connection ends: one fd, one mapping less */
#define F_AGAIN	  0x4u /* then close, wrap a fresh pair: both want2 */
#define F_CROSS	  0x10u /* two connections, spliced: see cross_victim() */
#define F_EARLY	  0x8u /* -ECONNREFUSED is right too: the victim may see
			* the hang-up early (a late mailbox bump, e.g. the
			* WELCOME's, makes it look) */
#define F_OTHER_UID 0x20u /* the fake listens as uid 65534 (not root, not
			   * the victim's): never talked to */

struct tcase {
	const char *what;
	fk_fn hello; /* the WELCOME */
	fk_fn go;    /* what the fake does to the table once it is mapped */
	int want_open;
	int want_listed, want_unlisted; /* ctl_maybe_local(); -1: either */
};

struct fk {
	const struct fcase *fc;
	const struct tcase *tc;
	int lfd, cfd;
	int mb_fd; /* the client's mailbox memfd */
	struct ctl_mailbox *mb;
	int tab_fd;
	struct ctl_table *tab; /* our writable mapping of the table */
	struct reg regs[8];
	int nregs, npairs;
	int flood_left;
	struct reg *fa, *fb; /* answered honestly after the flood */
	pthread_t mut;
	_Atomic bool mut_run;
	bool mut_on;
	pid_t fuse_pid; /* a FUSE server that stops answering */
	unsigned int fuse_conn; /* its connection (minor of its st_dev) */
};

static void bump(struct fk *k)
{
	if (k->mb)
		atomic_fetch_add_explicit(&k->mb->seq, 1, memory_order_release);
}

/* One packet of len bytes with nfds fds, not waiting. Returns 0 or -errno. */
static int fk_try(struct fk *k, const void *buf, size_t len, const int *fds,
		  int nfds)
{
	char cbuf[CMSG_SPACE(sizeof(int) * 16)];
	struct iovec iov = { (void *)buf, len };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };

	if (k->cfd < 0)
		return -EPIPE;
	if (nfds) {
		struct cmsghdr *cm;

		memset(cbuf, 0, sizeof(cbuf));
		mh.msg_control = cbuf;
		mh.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)nfds);
		cm = CMSG_FIRSTHDR(&mh);
		cm->cmsg_level = SOL_SOCKET;
		cm->cmsg_type = SCM_RIGHTS;
		cm->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)nfds);
		memcpy(CMSG_DATA(cm), fds, sizeof(int) * (size_t)nfds);
	}
	if (sendmsg(k->cfd, &mh, MSG_DONTWAIT | MSG_NOSIGNAL) < 0)
		return -errno;
	bump(k);
	return 0;
}

/* The same, waiting (at most 2 s) for room. A victim that is gone or
 * reads nothing is its own failure, seen by its checks. */
static void fk_send(struct fk *k, const void *buf, size_t len, const int *fds,
		    int nfds)
{
	uint64_t end = t_now_ns() + 2000000000ull;
	int err;

	while ((err = fk_try(k, buf, len, fds, nfds)) == -EAGAIN &&
	       t_now_ns() < end) {
		struct pollfd p = { k->cfd, POLLOUT, 0 };

		(void)poll(&p, 1, 10);
	}
}

static struct ctl_chan chan_msg(uint64_t token, uint32_t side, uint32_t ring)
{
	struct ctl_chan m = { .token = token, .chan_id = 7, .side = side,
			      .ring_size = ring };

	ctl_hdr_init(&m.h, CTL_CHAN, 0);
	return m;
}

static void fk_chan(struct fk *k, uint64_t token, uint32_t side, int region,
		    int bell)
{
	struct ctl_chan m = chan_msg(token, side, RING);
	int fds[2] = { region, bell };

	fk_send(k, &m, sizeof(m), fds, 2);
}

static void fk_nochan(struct fk *k, uint64_t token, uint32_t reason)
{
	struct ctl_nochan m = { .token = token, .reason = reason };

	ctl_hdr_init(&m.h, CTL_NOCHAN, 0);
	fk_send(k, &m, sizeof(m), NULL, 0);
}

static void fk_welcome(struct fk *k, const int *fds, int nfds)
{
	struct ctl_welcome w = { .client_id = 1, .daemon_id = 42,
				 .daemon_pid = (uint32_t)getpid(),
				 .table_size = CTL_TABLE_SIZE };

	ctl_hdr_init(&w.h, CTL_WELCOME, 0);
	fk_send(k, &w, sizeof(w), fds, nfds);
}

static int sock(int domain, int type)
{
	int fd = socket(domain, type | SOCK_CLOEXEC, 0);

	T_ASSERT(fd >= 0);
	return fd;
}

/* fd opened again through /proc/self/fd with flags. */
static int reopen(int fd, int flags)
{
	char p[64];
	int r;

	snprintf(p, sizeof(p), "/proc/self/fd/%d", fd);
	r = open(p, flags | O_CLOEXEC);
	T_ASSERT(r >= 0);
	return r;
}

/* ---- the table ---- */

static void table_put(struct ctl_table *t, const uint8_t a[16], uint16_t port)
{
	uint32_t mask = CTL_TABLE_SLOTS - 1, i = ctl_tab_hash(a, port) & mask;

	while (atomic_load(&t->e[i].used))
		i = (i + 1) & mask;
	memcpy(t->e[i].addr, a, 16);
	t->e[i].port = port;
	atomic_store(&t->e[i].used, 1);
	t->count++;
}

/* A table memfd named name of size bytes, listing `listed` if it is big
 * enough, mapped writable by us first (as ivmcd does), then sealed. */
static void table_make(struct fk *k, const char *name, uint64_t size, int seals)
{
	int fd = memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING);

	T_ASSERT(fd >= 0);
	T_ASSERT(ftruncate(fd, (off_t)size) == 0);
	if (size >= CTL_TABLE_SIZE) {
		k->tab = mmap(NULL, CTL_TABLE_SIZE, PROT_READ | PROT_WRITE,
			      MAP_SHARED, fd, 0);
		T_ASSERT(k->tab != MAP_FAILED);
		k->tab->magic = CTL_TABLE_MAGIC;
		k->tab->slots = CTL_TABLE_SLOTS;
		table_put(k->tab, listed, 0);
	}
	if (seals)
		T_ASSERT(fcntl(fd, F_ADD_SEALS, seals) == 0);
	k->tab_fd = fd;
}

/* Send the table read-only with flags (O_RDONLY, O_RDWR, O_PATH). */
static void welcome_table(struct fk *k, int flags)
{
	int ro = reopen(k->tab_fd, flags);

	fk_welcome(k, &ro, 1);
	close(ro);
}

/* What ivmcd's on_hello() does. */
static void hello_honest(struct fk *k)
{
	table_make(k, "fake-table", CTL_TABLE_SIZE, SEALS_ALL | F_SEAL_FUTURE_WRITE);
	welcome_table(k, O_RDONLY);
}

/* ---- forged regions ---- */

/* A memfd named "forged" of fsize bytes holding the header of an honest
 * side-stream region with rings of RING bytes (changed by mut), sealed. */
static int forge(uint64_t fsize, bool sealing, int seals,
		 void (*mut)(struct ivmc_shm_hdr *))
{
	struct ivmc_shm_hdr h;
	int hon, fd;

	T_ASSERT_OK(chan_region_create(RING, 0, true, 0, &hon));
	T_ASSERT(pread(hon, &h, sizeof(h), 0) == (ssize_t)sizeof(h));
	close(hon);
	fd = memfd_create("forged", MFD_CLOEXEC | (sealing ? MFD_ALLOW_SEALING : 0));
	T_ASSERT(fd >= 0);
	T_ASSERT(ftruncate(fd, (off_t)fsize) == 0);
	if (mut)
		mut(&h);
	if (fsize >= sizeof(h))
		T_ASSERT(pwrite(fd, &h, sizeof(h), 0) == (ssize_t)sizeof(h));
	if (seals)
		T_ASSERT(fcntl(fd, F_ADD_SEALS, seals) == 0);
	return fd;
}

static int honest_region(struct fk *k)
{
	int fd;

	(void)k;
	T_ASSERT_OK(chan_region_create(RING, 0, true, 0, &fd));
	return fd;
}

static void honest_bells(struct fk *k, int bell[2])
{
	(void)k;
	T_ASSERT_OK(xport_doorbell_pair(bell));
}

/* An honest header written into fd (a file that is not a memfd). */
static void put_header(int fd)
{
	struct ivmc_shm_hdr h;
	int hon = honest_region(NULL);

	T_ASSERT(pread(hon, &h, sizeof(h), 0) == (ssize_t)sizeof(h));
	close(hon);
	T_ASSERT(pwrite(fd, &h, sizeof(h), 0) == (ssize_t)sizeof(h));
}

static int disk_file(uint64_t size)
{
	int fd = t_file_in(t_dir, false, size);

	return fd >= 0 ? fd : t_file_in("/var/tmp", false, size);
}

static bool have_disk(void)
{
	int fd = disk_file(4096);

	if (fd >= 0)
		close(fd);
	return fd >= 0;
}

static bool have_shm(void)
{
	int fd = t_file_in("/dev/shm", true, 4096);

	if (fd >= 0)
		close(fd);
	return fd >= 0;
}

static bool have_sysfs(void)
{
	return access("/sys/kernel/uevent_seqnum", R_OK) == 0;
}

static int fifo(void)
{
	static int n;
	char p[128];
	int fd;

	snprintf(p, sizeof(p), "%s/fifo%d", t_dir, n++);
	T_ASSERT(mkfifo(p, 0600) == 0);
	/* O_RDWR: a FIFO opened so never waits for the other end. */
	fd = open(p, O_RDWR | O_NONBLOCK | O_CLOEXEC);
	T_ASSERT(fd >= 0);
	unlink(p);
	return fd;
}

static int open_or_fail(const char *p, int flags)
{
	int fd = open(p, flags | O_CLOEXEC);

	if (fd < 0)
		t_fail("open %s: %s", p, strerror(errno));
	return fd;
}

#define REGION_FN(name, expr)                     \
	static int name(struct fk *k)             \
	{                                         \
		(void)k;                          \
		return (expr);                    \
	}

#define MUT_FN(name, stmt)                                \
	static void name(struct ivmc_shm_hdr *h)          \
	{                                                 \
		stmt;                                     \
	}

MUT_FN(m_magic, h->magic ^= 1)
MUT_FN(m_version, h->version++)
MUT_FN(m_hdr_size, h->hdr_size = 8192)
MUT_FN(m_ring_5000, (h->ring_size = 5000, h->region_size = IVMC_SHM_HDR_SIZE + 10000))
MUT_FN(m_ring_0, (h->ring_size = 0, h->region_size = IVMC_SHM_HDR_SIZE))
MUT_FN(m_region_size, h->region_size += 4096)
MUT_FN(m_flags, h->flags |= 0x80)
MUT_FN(m_reserved, h->reserved[5] = 1)
MUT_FN(m_ring_1g, (h->ring_size = 1u << 30,
		   h->region_size = IVMC_SHM_HDR_SIZE + 2ull * (1u << 30)))

REGION_FN(r_unsealed, forge(REGION, true, 0, NULL))
REGION_FN(r_no_sealing, forge(REGION, false, 0, NULL))
REGION_FN(r_shrink_grow, forge(REGION, true, F_SEAL_SHRINK | F_SEAL_GROW, NULL))
REGION_FN(r_shrink_seal, forge(REGION, true, F_SEAL_SHRINK | F_SEAL_SEAL, NULL))
REGION_FN(r_grow_seal, forge(REGION, true, F_SEAL_GROW | F_SEAL_SEAL, NULL))
REGION_FN(r_write_seal, forge(REGION, true, SEALS_ALL | F_SEAL_WRITE, NULL))
REGION_FN(r_future_write, forge(REGION, true, SEALS_ALL | F_SEAL_FUTURE_WRITE, NULL))
REGION_FN(r_size_0, forge(0, true, SEALS_ALL, NULL))
REGION_FN(r_size_100, forge(100, true, SEALS_ALL, NULL))
REGION_FN(r_page_more, forge(REGION + 4096, true, SEALS_ALL, NULL))
REGION_FN(r_page_less, forge(REGION - 4096, true, SEALS_ALL, NULL))
REGION_FN(r_magic, forge(REGION, true, SEALS_ALL, m_magic))
REGION_FN(r_version, forge(REGION, true, SEALS_ALL, m_version))
REGION_FN(r_hdr_size, forge(REGION, true, SEALS_ALL, m_hdr_size))
REGION_FN(r_ring_5000, forge(REGION, true, SEALS_ALL, m_ring_5000))
REGION_FN(r_ring_0, forge(REGION, true, SEALS_ALL, m_ring_0))
REGION_FN(r_region_size, forge(REGION, true, SEALS_ALL, m_region_size))
REGION_FN(r_flags, forge(REGION, true, SEALS_ALL, m_flags))
REGION_FN(r_reserved, forge(REGION, true, SEALS_ALL, m_reserved))
REGION_FN(r_ring_1g, forge(REGION, true, SEALS_ALL, m_ring_1g))
REGION_FN(r_fifo, fifo())
REGION_FN(r_dev_zero, open_or_fail("/dev/zero", O_RDWR))
REGION_FN(r_dir, open_or_fail("/", O_RDONLY | O_DIRECTORY))
/* Writable and a regular file: only its filesystem (proc) is wrong. */
REGION_FN(r_proc, open_or_fail("/proc/self/comm", O_RDWR))
REGION_FN(r_sysfs, open_or_fail("/sys/kernel/uevent_seqnum", O_RDONLY))
REGION_FN(r_socket, sock(AF_UNIX, SOCK_STREAM))

static int r_ring_only(struct fk *k)
{
	int fd;

	(void)k;
	T_ASSERT_OK(chan_region_create(RING, 0, false, 0, &fd));
	return fd;
}

static int r_disk(struct fk *k)
{
	int fd = disk_file(REGION);

	(void)k;
	T_ASSERT(fd >= 0);
	put_header(fd);
	return fd;
}

static int r_tmpfs(struct fk *k)
{
	int fd = t_file_in("/dev/shm", true, REGION);

	(void)k;
	T_ASSERT(fd >= 0);
	put_header(fd);
	return fd;
}

static int r_pipe(struct fk *k)
{
	int p[2];

	(void)k;
	T_ASSERT(pipe2(p, O_CLOEXEC) == 0);
	close(p[1]);
	return p[0];
}

/* An honest region, opened again without write access. */
static int r_read_only(struct fk *k)
{
	int fd = honest_region(k), ro = reopen(fd, O_RDONLY);

	close(fd);
	return ro;
}

static int r_o_path(struct fk *k)
{
	int fd = honest_region(k), p = reopen(fd, O_PATH);

	close(fd);
	return p;
}

/* The client's own mailbox (a sealed 4096-byte memfd it gave us). */
static int r_mailbox(struct fk *k)
{
	int fd = dup(k->mb_fd);

	T_ASSERT(fd >= 0);
	return fd;
}

/* ---- forged doorbells ---- */

static void b_pipe(struct fk *k, int bell[2])
{
	(void)k;
	T_ASSERT(pipe2(bell, O_CLOEXEC) == 0);
}

static void b_eventfd(struct fk *k, int bell[2])
{
	(void)k;
	for (int i = 0; i < 2; i++)
		T_ASSERT((bell[i] = eventfd(0, EFD_CLOEXEC)) >= 0);
}

static void b_memfd(struct fk *k, int bell[2])
{
	(void)k;
	for (int i = 0; i < 2; i++)
		bell[i] = forge(REGION, true, SEALS_ALL, NULL);
}

static void b_fifo(struct fk *k, int bell[2])
{
	(void)k;
	for (int i = 0; i < 2; i++)
		bell[i] = fifo();
}

static void b_udp(struct fk *k, int bell[2])
{
	(void)k;
	for (int i = 0; i < 2; i++)
		bell[i] = sock(AF_INET, SOCK_DGRAM);
}

static void b_tcp(struct fk *k, int bell[2])
{
	(void)k;
	for (int i = 0; i < 2; i++)
		bell[i] = sock(AF_INET, SOCK_STREAM);
}

static void b_lonely(struct fk *k, int bell[2])
{
	(void)k;
	for (int i = 0; i < 2; i++)
		bell[i] = sock(AF_UNIX, SOCK_STREAM);
}

static void b_dgram(struct fk *k, int bell[2])
{
	(void)k;
	T_ASSERT(socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, bell) == 0);
}

static void b_seqpacket(struct fk *k, int bell[2])
{
	(void)k;
	T_ASSERT(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, bell) == 0);
}

/* Each end's own TCP socket (the one it registered). */
static void b_own_tcp(struct fk *k, int bell[2])
{
	for (int i = 0; i < 2; i++)
		T_ASSERT((bell[i] = dup(k->regs[i].fd)) >= 0);
}

/* ---- a slow filesystem: FUSE that stops answering ---- */

/* A FUSE filesystem of one file, "region" (REGION bytes), served in a
 * process of its own (its own mount namespace: nothing to clean up if we
 * die) that answers until the file is open, then leaves every GETATTR and
 * STATFS unanswered: a stat of the file waits for ever. It still answers
 * FLUSH and RELEASE, so that closing the file does not wait. Killing the
 * server aborts the connection and ends every wait (ENOTCONN). */
static bool have_fuse(void)
{
	return geteuid() == 0 && access("/dev/fuse", R_OK | W_OK) == 0;
}

static void fuse_reply(int dev, uint64_t unique, int err, const void *out,
		       size_t n)
{
	struct fuse_out_header h = { .len = (uint32_t)(sizeof(h) + n),
				     .error = -err, .unique = unique };
	struct iovec iov[2] = { { &h, sizeof(h) }, { (void *)out, n } };

	(void)!writev(dev, iov, n ? 2 : 1);
}

static void fuse_attr_of(uint64_t node, struct fuse_attr *a)
{
	memset(a, 0, sizeof(*a));
	a->ino = node;
	a->nlink = node == FUSE_ROOT_ID ? 2 : 1;
	a->mode = node == FUSE_ROOT_ID ? S_IFDIR | 0755 : S_IFREG | 0600;
	a->size = node == FUSE_ROOT_ID ? 0 : REGION;
	a->blksize = 4096;
}

static _Atomic bool fuse_stalled;

static void fuse_serve(int dev)
{
	size_t size = 1 << 20;
	char *buf = malloc(size);

	T_ASSERT(buf);
	for (;;) {
		ssize_t n = read(dev, buf, size);
		struct fuse_in_header *in = (void *)buf;
		void *arg = in + 1;

		if (n < 0 && (errno == EINTR || errno == ENOENT))
			continue;
		if (n < (ssize_t)sizeof(*in))
			_exit(0); /* unmounted */
		switch (in->opcode) {
		case FUSE_INIT: {
			struct fuse_init_in *ii = arg;
			struct fuse_init_out o = {
				.major = FUSE_KERNEL_VERSION,
				.minor = ii->minor < FUSE_KERNEL_MINOR_VERSION ?
						 ii->minor : FUSE_KERNEL_MINOR_VERSION,
				.max_readahead = ii->max_readahead,
				.max_write = 4096, .time_gran = 1 };

			fuse_reply(dev, in->unique, 0, &o, sizeof(o));
			break;
		}
		case FUSE_LOOKUP: {
			struct fuse_entry_out e = { .nodeid = 2, .generation = 1,
						    .entry_valid = 3600 };

			if (strcmp(arg, "region")) {
				fuse_reply(dev, in->unique, ENOENT, NULL, 0);
				break;
			}
			fuse_attr_of(2, &e.attr); /* attr_valid 0: ask each time */
			fuse_reply(dev, in->unique, 0, &e, sizeof(e));
			break;
		}
		case FUSE_GETATTR: {
			struct fuse_attr_out o = { 0 };

			if (atomic_load(&fuse_stalled))
				break; /* never answered */
			fuse_attr_of(in->nodeid, &o.attr);
			fuse_reply(dev, in->unique, 0, &o, sizeof(o));
			break;
		}
		case FUSE_STATFS: {
			struct fuse_statfs_out o = { 0 };

			if (atomic_load(&fuse_stalled))
				break;
			fuse_reply(dev, in->unique, 0, &o, sizeof(o));
			break;
		}
		case FUSE_OPEN: {
			struct fuse_open_out o = { .fh = 1 };

			fuse_reply(dev, in->unique, 0, &o, sizeof(o));
			break;
		}
		case FUSE_FLUSH:
		case FUSE_RELEASE:
		case FUSE_DESTROY:
			fuse_reply(dev, in->unique, 0, NULL, 0);
			break;
		case FUSE_FORGET:
		case FUSE_BATCH_FORGET:
		case FUSE_INTERRUPT:
			break;
		default:
			fuse_reply(dev, in->unique, ENOSYS, NULL, 0);
			break;
		}
	}
}

struct fuse_opener {
	char path[160];
	int sock;
};

/* Open the file (the server thread answers), hand it to the fake, and
 * close it here while FLUSH is still answered: a server process that held
 * it would, when killed, close it (FLUSH, an uninterruptible wait) before
 * its /dev/fuse fd goes (that release, which aborts the connection, comes
 * last), and never finish exiting. */
static void *fuse_open_thread(void *arg)
{
	struct fuse_opener *o = arg;
	int fd = open(o->path, O_RDWR | O_CLOEXEC);

	if (fd >= 0) {
		atomic_store(&fuse_stalled, true);
		(void)xport_send_fds(o->sock, "f", 1, &fd, 1);
		close(fd);
		(void)!write(o->sock, "c", 1); /* closed: we may be killed */
	}
	return NULL;
}

/* Abort FUSE connection conn through fusectl (mounted in a mount
 * namespace of a child of ours): every wait on its files ends. */
static void fuse_abort(unsigned int conn)
{
	pid_t pid;

	fflush(stdout);
	fflush(stderr);
	pid = fork();
	if (pid == 0) {
		char f[96];
		int fd;

		snprintf(f, sizeof(f), "/sys/fs/fuse/connections/%u/abort", conn);
		if (unshare(CLONE_NEWNS) ||
		    mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) ||
		    mount("fusectl", "/sys/fs/fuse/connections", "fusectl", 0,
			  NULL))
			_exit(1);
		fd = open(f, O_WRONLY);
		_exit(fd >= 0 && write(fd, "1", 1) == 1 ? 0 : 1);
	}
	if (pid > 0)
		waitpid(pid, NULL, 0);
}

/* Kill the server: its /dev/fuse fd goes, which aborts the connection
 * (every wait on the file ends, ENOTCONN). Should it not die (it would
 * be closing a file of its own, waiting for itself), abort it. Bounded. */
static void fuse_stop(struct fk *k)
{
	if (k->fuse_pid <= 0)
		return;
	kill(k->fuse_pid, SIGKILL);
	for (int i = 0; i < 300; i++) {
		if (waitpid(k->fuse_pid, NULL, WNOHANG) == k->fuse_pid) {
			k->fuse_pid = 0;
			return;
		}
		if (i == 100 && k->fuse_conn) {
			fprintf(stderr, "the FUSE server does not die: aborting "
				"connection %u\n", k->fuse_conn);
			fuse_abort(k->fuse_conn);
		}
		usleep(10000);
	}
	t_fail("the FUSE server (pid %d) does not die: abort its connection "
	       "in /sys/fs/fuse/connections", (int)k->fuse_pid);
}

/* The server's connection, from its mount. */
static unsigned int fuse_conn_of(pid_t pid)
{
	char p[64], line[512];
	unsigned int major, minor = 0;
	FILE *f;

	snprintf(p, sizeof(p), "/proc/%d/mountinfo", (int)pid);
	f = fopen(p, "re");
	if (!f)
		return 0;
	while (fgets(line, sizeof(line), f))
		if (strstr(line, " - fuse.ivmc-slow ") &&
		    sscanf(line, "%*u %*u %u:%u", &major, &minor) == 2)
			break;
	fclose(f);
	return minor;
}

/* Start the server; its open file, or -1 (cannot mount here). */
static int fuse_file(struct fk *k)
{
	static struct fuse_opener o;
	char mnt[128], c;
	int sv[2], fd = -1, nfds = 1;
	struct pollfd p;

	t_path(mnt, sizeof(mnt), "fuse");
	(void)mkdir(mnt, 0700);
	T_ASSERT(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
	fflush(stdout);
	fflush(stderr);
	k->fuse_pid = fork();
	T_ASSERT(k->fuse_pid >= 0);
	if (k->fuse_pid == 0) {
		char opts[128];
		pthread_t t;
		int dev;

		prctl(PR_SET_PDEATHSIG, SIGKILL);
		/* Nothing of ours but the socket: in particular no other
		 * FUSE file, and not the victim's control connection. */
		if (sv[1] > 3)
			(void)syscall(SYS_close_range, 3u, (unsigned int)sv[1] - 1, 0u);
		(void)syscall(SYS_close_range, (unsigned int)sv[1] + 1, ~0u, 0u);
		dev = open("/dev/fuse", O_RDWR | O_CLOEXEC);
		snprintf(opts, sizeof(opts),
			 "fd=%d,rootmode=40000,user_id=0,group_id=0", dev);
		if (dev < 0 || unshare(CLONE_NEWNS) ||
		    mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) ||
		    mount("ivmc-slow", mnt, "fuse.ivmc-slow", MS_NOSUID | MS_NODEV,
			  opts))
			_exit(T_SKIP);
		snprintf(o.path, sizeof(o.path), "%s/region", mnt);
		o.sock = sv[1];
		if (pthread_create(&t, NULL, fuse_open_thread, &o))
			_exit(T_SKIP);
		fuse_serve(dev);
		_exit(0);
	}
	close(sv[1]);
	p = (struct pollfd){ sv[0], POLLIN, 0 };
	if (poll(&p, 1, 3000) == 1 &&
	    xport_recv_fds(sv[0], &c, 1, &fd, &nfds, 0) == 1 && nfds == 1) {
		k->fuse_conn = fuse_conn_of(k->fuse_pid);
		/* Until the server has closed its own copy, it must live. */
		if (poll(&p, 1, 3000) == 1 && read(sv[0], &c, 1) == 1) {
			close(sv[0]);
			return fd;
		}
	}
	close(sv[0]);
	fuse_stop(k);
	if (fd >= 0)
		close(fd);
	return -1;
}

/* Can this machine mount one? (Tried once, in full.) */
static bool have_slow_fs(void)
{
	static int ok = -1;


	if (ok < 0) {
		struct fk k = { 0 };
		int fd = have_fuse() ? fuse_file(&k) : -1;

		ok = fd >= 0;
		fuse_stop(&k);
		if (fd >= 0)
			close(fd);
	}
	return ok;
}

static int r_fuse(struct fk *k)
{
	int fd = fuse_file(k);

	T_ASSERT(fd >= 0);
	return fd;
}

static void b_fuse(struct fk *k, int bell[2])
{
	bell[0] = r_fuse(k);
	bell[1] = dup(bell[0]);
	T_ASSERT(bell[1] >= 0);
}

/* ---- answers once both ends registered ---- */

/* What ivmcd's make_channel() does, with the case's region and doorbells:
 * side 0 to the end that registered first. */
static void answer(struct fk *k, struct reg *a, struct reg *b)
{
	const struct fcase *fc = k->fc;
	int region = fc && fc->region ? fc->region(k) : honest_region(k);
	int bell[2];

	(fc && fc->bells ? fc->bells : honest_bells)(k, bell);
	fk_chan(k, a->token, 0, region, bell[0]);
	fk_chan(k, b->token, 1, region, bell[1]);
	close(region);
	close(bell[0]);
	close(bell[1]);
}

static void deny(struct fk *k, struct reg *a, struct reg *b)
{
	fk_nochan(k, a->token, CTL_R_DENIED);
	fk_nochan(k, b->token, CTL_R_DENIED);
}

/* A CHAN to each end with n fds (the region, a doorbell, then more
 * forged memfds), then NOCHAN DENIED. */
static void chan_nfds(struct fk *k, struct reg *a, struct reg *b, int n)
{
	int fds[16], bell[2], region = honest_region(k);
	struct ctl_chan m;

	honest_bells(k, bell);
	fds[0] = region;
	for (int i = 2; i < n; i++)
		fds[i] = forge(REGION, true, SEALS_ALL, NULL);
	for (int s = 0; s < 2; s++) {
		m = chan_msg(s ? b->token : a->token, (uint32_t)s, RING);
		fds[1] = bell[s];
		fk_send(k, &m, sizeof(m), fds, n);
	}
	close(region);
	close(bell[0]);
	close(bell[1]);
	for (int i = 2; i < n; i++)
		close(fds[i]);
	deny(k, a, b);
}

static void p_fds_0(struct fk *k, struct reg *a, struct reg *b)
{
	chan_nfds(k, a, b, 0);
}

static void p_fds_1(struct fk *k, struct reg *a, struct reg *b)
{
	chan_nfds(k, a, b, 1);
}

static void p_fds_3(struct fk *k, struct reg *a, struct reg *b)
{
	chan_nfds(k, a, b, 3);
}

static void p_fds_16(struct fk *k, struct reg *a, struct reg *b)
{
	chan_nfds(k, a, b, 16);
}

enum bad { B_TRUNC, B_LONG, B_SIZE, B_VERSION, B_MAGIC, B_TYPE_0, B_TYPE_99,
	   B_TYPE_HELLO, B_SIDE_2 };

/* A malformed CHAN carrying a good region and doorbell to each end (taking
 * either would attach), then NOCHAN DENIED. */
static void bad_chan(struct fk *k, struct reg *a, struct reg *b, enum bad how)
{
	int region = honest_region(k), bell[2];

	honest_bells(k, bell);
	for (int s = 0; s < 2; s++) {
		union { struct ctl_chan c; uint8_t b[300]; } m = { 0 };
		size_t len = sizeof(m.c);
		int fds[2] = { region, bell[s] };

		m.c = chan_msg(s ? b->token : a->token, (uint32_t)s, RING);
		switch (how) {
		case B_TRUNC: len = 20; break;
		case B_LONG: len = sizeof(m.b); break;
		case B_SIZE: m.c.h.size = 99; break;
		case B_VERSION: m.c.h.version = CTL_VERSION + 1; break;
		case B_MAGIC: m.c.h.magic = ~CTL_MAGIC; break;
		case B_TYPE_0: m.c.h.type = 0; break;
		case B_TYPE_99: m.c.h.type = 99; break;
		case B_TYPE_HELLO: m.c.h.type = CTL_HELLO; break;
		case B_SIDE_2: m.c.side = 2; break;
		}
		fk_send(k, &m, len, fds, 2);
	}
	close(region);
	close(bell[0]);
	close(bell[1]);
	deny(k, a, b);
}

#define BAD_FN(name, how)                                          \
	static void name(struct fk *k, struct reg *a, struct reg *b) \
	{                                                          \
		bad_chan(k, a, b, how);                            \
	}

BAD_FN(p_trunc, B_TRUNC)
BAD_FN(p_long, B_LONG)
BAD_FN(p_size, B_SIZE)
BAD_FN(p_version, B_VERSION)
BAD_FN(p_magic, B_MAGIC)
BAD_FN(p_type_0, B_TYPE_0)
BAD_FN(p_type_99, B_TYPE_99)
BAD_FN(p_type_hello, B_TYPE_HELLO)
BAD_FN(p_side_2, B_SIDE_2)

/* An empty packet (to a SEQPACKET reader, like end of file), with fds. */
static void empty(struct fk *k, bool with_fds)
{
	int fds[2] = { forge(REGION, true, SEALS_ALL, NULL),
		       forge(REGION, true, SEALS_ALL, NULL) };

	fk_send(k, "", 0, fds, with_fds ? 2 : 0);
	close(fds[0]);
	close(fds[1]);
}

static void p_empty(struct fk *k, struct reg *a, struct reg *b)
{
	(void)a;
	(void)b;
	empty(k, false);
}

static void p_empty_fds(struct fk *k, struct reg *a, struct reg *b)
{
	(void)a;
	(void)b;
	empty(k, true);
}

static void p_nochan_0(struct fk *k, struct reg *a, struct reg *b)
{
	fk_nochan(k, a->token, 0);
	fk_nochan(k, b->token, 0);
}

static void p_nochan_big(struct fk *k, struct reg *a, struct reg *b)
{
	fk_nochan(k, a->token, 12345);
	fk_nochan(k, b->token, UINT32_MAX);
}

static void fk_detach(struct fk *k, uint64_t token)
{
	struct ctl_detach m = { .token = token };

	ctl_hdr_init(&m.h, CTL_DETACH, 0);
	fk_send(k, &m, sizeof(m), NULL, 0);
}

static void p_detach(struct fk *k, struct reg *a, struct reg *b)
{
	fk_detach(k, a->token);
	fk_detach(k, b->token);
}

static void p_detach_stray(struct fk *k, struct reg *a, struct reg *b)
{
	fk_detach(k, 999);
	answer(k, a, b);
}

/* Messages of the wrong kind for the client, with fds, then the answer. */
static void p_junk_fds(struct fk *k, struct reg *a, struct reg *b)
{
	int f1 = forge(REGION, true, SEALS_ALL, NULL);
	int f2 = forge(REGION, true, SEALS_ALL, NULL);
	int fds[2] = { f1, f2 };
	struct ctl_result r = { .err = 0, .size = 1 };
	struct ctl_reg g = { .token = a->token };
	struct ctl_nochan n = { .token = a->token, .reason = CTL_R_DENIED };

	ctl_hdr_init(&r.h, CTL_RESULT, 0);
	fk_send(k, &r, sizeof(r), fds, 1);
	fk_welcome(k, fds, 1);
	ctl_hdr_init(&g.h, CTL_REG_CONN, 0);
	fk_send(k, &g, sizeof(g), fds, 1);
	ctl_hdr_init(&n.h, CTL_NOCHAN, 0);
	fk_send(k, &n, sizeof(n), fds, 2); /* a NOCHAN takes no fd */
	close(f1);
	close(f2);
	answer(k, a, b);
}

static void p_stray_token(struct fk *k, struct reg *a, struct reg *b)
{
	int region = honest_region(k), bell[2];

	honest_bells(k, bell);
	fk_chan(k, 999, 0, region, bell[0]);
	fk_chan(k, 0, 1, region, bell[1]);
	close(region);
	close(bell[0]);
	close(bell[1]);
	answer(k, a, b);
}

static void p_twice(struct fk *k, struct reg *a, struct reg *b)
{
	answer(k, a, b);
	answer(k, a, b); /* a second channel for the same two tokens */
}

/* a gets an unsealed region first, then its honest half; b its half. */
static void p_forged_first(struct fk *k, struct reg *a, struct reg *b)
{
	int bad = r_unsealed(k), bell[2];

	honest_bells(k, bell);
	fk_chan(k, a->token, 0, bad, bell[0]);
	close(bad);
	close(bell[0]);
	close(bell[1]);
	answer(k, a, b);
}

/* A half for a only, as if its peer had never been paired; b expires. */
static void p_half(struct fk *k, struct reg *a, struct reg *b)
{
	int region = honest_region(k), bell[2];

	honest_bells(k, bell);
	fk_chan(k, a->token, 0, region, bell[0]);
	close(region);
	close(bell[0]);
	close(bell[1]);
	fk_nochan(k, b->token, CTL_R_EXPIRED);
}

/* Both ends told they are side 0. */
static void p_both_side_0(struct fk *k, struct reg *a, struct reg *b)
{
	int region = honest_region(k), bell[2];

	honest_bells(k, bell);
	fk_chan(k, a->token, 0, region, bell[0]);
	fk_chan(k, b->token, 0, region, bell[1]);
	close(region);
	close(bell[0]);
	close(bell[1]);
}

/* Each end the half of a different channel. */
static void p_two_regions(struct fk *k, struct reg *a, struct reg *b)
{
	for (int s = 0; s < 2; s++) {
		int region = honest_region(k), bell[2];

		honest_bells(k, bell);
		fk_chan(k, s ? b->token : a->token, (uint32_t)s, region, bell[s]);
		close(region);
		close(bell[0]);
		close(bell[1]);
	}
}

/* CHAN says 64 KiB rings; the region has 4 KiB ones. */
static void p_ring_mismatch(struct fk *k, struct reg *a, struct reg *b)
{
	int region = honest_region(k), bell[2];

	honest_bells(k, bell);
	for (int s = 0; s < 2; s++) {
		struct ctl_chan m = chan_msg(s ? b->token : a->token,
					     (uint32_t)s, 65536);
		int fds[2] = { region, bell[s] };

		fk_send(k, &m, sizeof(m), fds, 2);
	}
	close(region);
	close(bell[0]);
	close(bell[1]);
}

/* ---- CHAN_MEM: a slot of memory shared with a peer VM (ivmcd --guest) ---- */

/* A CHAN_MEM to each end: the region at offset 0; with peer (a doorbell)
 * also the eventfd and registers efd() and regs() make, nfds of the
 * three sent; then, with deny, NOCHAN DENIED. */
static void chan_mem(struct fk *k, struct reg *a, struct reg *b, uint32_t peer,
		     int (*efd)(struct fk *k), int (*regs)(struct fk *k),
		     int nfds, bool then_deny)
{
	int fds[3] = { honest_region(k), efd ? efd(k) : -1,
		       regs ? regs(k) : -1 };

	for (int s = 0; s < 2; s++) {
		struct ctl_chan_mem m = { .token = s ? b->token : a->token,
					  .chan_id = 7, .offset = 0,
					  .size = REGION, .side = (uint32_t)s,
					  .ring_size = RING, .bell_peer = peer,
					  .bell_vec = peer ? 3 : 0 };

		ctl_hdr_init(&m.h, CTL_CHAN_MEM, 0);
		fk_send(k, &m, sizeof(m), fds, nfds);
	}
	for (int i = 0; i < 3; i++)
		if (fds[i] >= 0)
			close(fds[i]);
	if (then_deny)
		deny(k, a, b);
}

static int m_eventfd(struct fk *k)
{
	int fd = eventfd(0, EFD_CLOEXEC); /* blocking: the client fixes it */

	(void)k;
	T_ASSERT(fd >= 0);
	return fd;
}

static int m_pipe(struct fk *k)
{
	int p[2];

	(void)k;
	T_ASSERT(pipe2(p, O_CLOEXEC) == 0); /* blocking, never written */
	close(p[1]);
	return p[0];
}

static int m_memfd(struct fk *k)
{
	int fd = memfd_create("regs", MFD_CLOEXEC);

	(void)k;
	T_ASSERT(fd >= 0 && ftruncate(fd, 4096) == 0);
	return fd;
}

static int m_fuse(struct fk *k)
{
	return r_fuse(k);
}

/* Honest but for the doorbell: none; the ends poll. */
static void p_mem_poll(struct fk *k, struct reg *a, struct reg *b)
{
	chan_mem(k, a, b, 0, NULL, NULL, 1, false);
}

static void p_mem_pipe(struct fk *k, struct reg *a, struct reg *b)
{
	chan_mem(k, a, b, 2, m_pipe, m_memfd, 3, false);
}

static void p_mem_regs_memfd(struct fk *k, struct reg *a, struct reg *b)
{
	chan_mem(k, a, b, 2, m_eventfd, m_memfd, 3, false);
}

static void p_mem_regs_fuse(struct fk *k, struct reg *a, struct reg *b)
{
	chan_mem(k, a, b, 2, m_eventfd, m_fuse, 3, false);
}

static void p_mem_bell_1fd(struct fk *k, struct reg *a, struct reg *b)
{
	chan_mem(k, a, b, 2, NULL, NULL, 1, true);
}

static void p_mem_3fds_no_bell(struct fk *k, struct reg *a, struct reg *b)
{
	chan_mem(k, a, b, 0, m_eventfd, m_memfd, 3, true);
}

/* Region and doorbell in the wrong order. */
static void p_swapped(struct fk *k, struct reg *a, struct reg *b)
{
	int region = honest_region(k), bell[2];

	honest_bells(k, bell);
	fk_chan(k, a->token, 0, bell[0], region);
	fk_chan(k, b->token, 1, bell[1], region);
	close(region);
	close(bell[0]);
	close(bell[1]);
}

/* The kernel must refuse every change of the client's mailbox size or
 * seals (a shrunk mailbox would be SIGBUS in the client); then the
 * mailbox moves a thousand times with nothing queued; then the answer. */
static void p_mailbox(struct fk *k, struct reg *a, struct reg *b)
{
	if (ftruncate(k->mb_fd, 0) == 0 || ftruncate(k->mb_fd, 8192) == 0 ||
	    fcntl(k->mb_fd, F_ADD_SEALS, F_SEAL_WRITE) == 0 ||
	    fcntl(k->mb_fd, F_ADD_SEALS, F_SEAL_FUTURE_WRITE) == 0)
		t_fail("fake ivmcd: the client's mailbox could be resized or sealed");
	for (int i = 0; i < 1000; i++)
		bump(k);
	answer(k, a, b);
}

static void p_silent(struct fk *k, struct reg *a, struct reg *b)
{
	(void)k;
	(void)a;
	(void)b;
}

/* Hang up; the mailbox says something is there (the end of file). */
static void p_close_bump(struct fk *k, struct reg *a, struct reg *b)
{
	(void)a;
	(void)b;
	close(k->cfd);
	k->cfd = -1;
	bump(k);
}

/* Hang up without a word and go away (no socket to reconnect to). */
static void p_close_silent(struct fk *k, struct reg *a, struct reg *b)
{
	(void)a;
	(void)b;
	close(k->cfd);
	k->cfd = -1;
	close(k->lfd);
	k->lfd = -1;
	unlink(path);
}

static void p_flood(struct fk *k, struct reg *a, struct reg *b)
{
	k->flood_left = FLOOD;
	k->fa = a;
	k->fb = b;
}

/* Silent for the first pair; the closed ends' tokens get CHANs (below);
 * the second pair is denied. */
static void p_second_denied(struct fk *k, struct reg *a, struct reg *b)
{
	if (k->npairs > 1)
		deny(k, a, b);
}

/* On the UNREG of a closed end: a CHAN for it all the same. */
static void u_chan_closed(struct fk *k, uint64_t token)
{
	int region = honest_region(k), bell[2];

	honest_bells(k, bell);
	fk_chan(k, token, token & 1 ? 0 : 1, region, bell[0]);
	close(region);
	close(bell[0]);
	close(bell[1]);
}

/* One message of the flood: stray answers, junk, fds. */
static int flood_one(struct fk *k, int i)
{
	union { struct ctl_hdr h; struct ctl_nochan n; struct ctl_chan c;
		struct ctl_result r; struct ctl_detach d; uint8_t b[400]; } m;
	int fds[2] = { -1, -1 }, nfds = 0, err;
	size_t len;
	uint64_t rng = (uint64_t)i;

	memset(&m, 0, sizeof(m));
	switch (i % 8) {
	case 0:
		ctl_hdr_init(&m.h, CTL_NOCHAN, 0);
		m.n.token = 1000 + (uint64_t)i;
		len = sizeof(m.n);
		break;
	case 1:
	case 5:
		m.c = chan_msg(1000 + (uint64_t)i, 0, RING);
		if (i % 8 == 5)
			m.h.version = 9;
		fds[0] = forge(REGION, true, SEALS_ALL, NULL);
		fds[1] = eventfd(0, EFD_CLOEXEC);
		nfds = 2;
		len = sizeof(m.c);
		break;
	case 2:
		for (size_t j = 0; j < 40; j++)
			m.b[j] = (uint8_t)t_rand64(&rng);
		len = 40;
		break;
	case 3:
		ctl_hdr_init(&m.h, CTL_RESULT, 0);
		len = sizeof(m.r);
		break;
	case 4:
		ctl_hdr_init(&m.h, CTL_DETACH, 0);
		m.d.token = 1000 + (uint64_t)i;
		len = sizeof(m.d);
		break;
	case 6:
		m.c = chan_msg(1, 0, RING);
		len = sizeof(m.b);
		break;
	default:
		ctl_hdr_init(&m.h, CTL_WELCOME, 0);
		fds[0] = forge(4096, true, SEALS_ALL, NULL);
		nfds = 1;
		len = sizeof(struct ctl_welcome);
		break;
	}
	err = fk_try(k, &m, len, fds, nfds);
	for (int j = 0; j < nfds; j++)
		close(fds[j]);
	return err;
}

static void fk_flood(struct fk *k)
{
	while (k->flood_left > 0) {
		int err = flood_one(k, k->flood_left);

		if (err == -EAGAIN)
			return; /* on POLLOUT */
		if (err)
			k->flood_left = 1; /* the victim is gone */
		k->flood_left--;
	}
	if (k->fa) {
		answer(k, k->fa, k->fb);
		k->fa = NULL;
	}
}

/* Two connections P (tokens 1, 2) and Q (3, 4): one channel for P's
 * first end and Q's second, one for Q's first end and P's second. */
static void p_cross(struct fk *k, struct reg *a, struct reg *b)
{
	static struct reg *p[2];

	if (k->npairs == 1) {
		p[0] = a;
		p[1] = b;
		return;
	}
	for (int i = 0; i < 2; i++) {
		int region = honest_region(k), bell[2];

		honest_bells(k, bell);
		fk_chan(k, i ? a->token : p[0]->token, 0, region, bell[0]);
		fk_chan(k, i ? p[1]->token : b->token, 1, region, bell[1]);
		close(region);
		close(bell[0]);
		close(bell[1]);
	}
}

/* ---- forged WELCOMEs ---- */

/* F_OTHER_UID: a client must not even say HELLO (it would hand over its
 * mailbox). */
static void h_never(struct fk *k)
{
	(void)k;
	t_fail("a client said HELLO to a daemon of uid 65534");
}

static void h_silent(struct fk *k)
{
	(void)k;
}

static void table_fd_welcome(struct fk *k, int fd)
{
	fk_welcome(k, &fd, 1);
	close(fd);
}

static void h_table_unsealed(struct fk *k)
{
	table_make(k, "forged-table", CTL_TABLE_SIZE, 0);
	welcome_table(k, O_RDONLY);
}

static void h_table_rdwr_unsealed(struct fk *k)
{
	table_make(k, "forged-table", CTL_TABLE_SIZE, 0);
	welcome_table(k, O_RDWR);
}

static void h_table_small(struct fk *k)
{
	table_make(k, "forged-table", CTL_TABLE_SIZE - 4096,
		   SEALS_ALL | F_SEAL_FUTURE_WRITE);
	welcome_table(k, O_RDONLY);
}

static void h_table_big(struct fk *k)
{
	table_make(k, "forged-table", CTL_TABLE_SIZE + 4096,
		   SEALS_ALL | F_SEAL_FUTURE_WRITE);
	welcome_table(k, O_RDONLY);
}

static void h_table_o_path(struct fk *k)
{
	table_make(k, "forged-table", CTL_TABLE_SIZE,
		   SEALS_ALL | F_SEAL_FUTURE_WRITE);
	welcome_table(k, O_PATH);
}

/* The real table, but open read-write (ivmcd sends it read-only). */
static void h_table_rdwr(struct fk *k)
{
	table_make(k, "fake-table", CTL_TABLE_SIZE, SEALS_ALL | F_SEAL_FUTURE_WRITE);
	welcome_table(k, O_RDWR);
}

/* An immutable table (F_SEAL_WRITE): a valid one. */
static void h_table_write_sealed(struct fk *k)
{
	table_make(k, "fake-table", CTL_TABLE_SIZE, F_SEAL_SHRINK | F_SEAL_GROW);
	munmap(k->tab, CTL_TABLE_SIZE); /* F_SEAL_WRITE wants no writable mapping */
	k->tab = NULL;
	T_ASSERT(fcntl(k->tab_fd, F_ADD_SEALS, F_SEAL_WRITE | F_SEAL_SEAL) == 0);
	welcome_table(k, O_RDONLY);
}

static void h_table_disk(struct fk *k)
{
	int fd = disk_file(CTL_TABLE_SIZE);
	struct ctl_table h = { .magic = CTL_TABLE_MAGIC, .slots = CTL_TABLE_SLOTS };

	T_ASSERT(fd >= 0);
	T_ASSERT(pwrite(fd, &h, 64, 0) == 64);
	table_fd_welcome(k, fd);
}

static void h_table_fifo(struct fk *k)
{
	table_fd_welcome(k, fifo());
}

static void h_table_dir(struct fk *k)
{
	table_fd_welcome(k, open_or_fail("/", O_RDONLY | O_DIRECTORY));
}

static void h_table_dev_zero(struct fk *k)
{
	table_fd_welcome(k, open_or_fail("/dev/zero", O_RDONLY));
}

static void h_table_proc(struct fk *k)
{
	table_fd_welcome(k, open_or_fail("/proc/self/maps", O_RDONLY));
}

static void h_table_socket(struct fk *k)
{
	table_fd_welcome(k, sock(AF_UNIX, SOCK_STREAM));
}

static void h_no_fd(struct fk *k)
{
	fk_welcome(k, NULL, 0);
}

static void h_two_fds(struct fk *k)
{
	int fds[2];

	hello_honest(k);
	/* (that one was honest: the client is open; the next case's) */
	fds[0] = reopen(k->tab_fd, O_RDONLY);
	fds[1] = forge(4096, true, SEALS_ALL, NULL);
	fk_welcome(k, fds, 2);
	close(fds[0]);
	close(fds[1]);
}

static void h_two_fds_only(struct fk *k)
{
	int fds[2];

	table_make(k, "forged-table", CTL_TABLE_SIZE, SEALS_ALL | F_SEAL_FUTURE_WRITE);
	fds[0] = reopen(k->tab_fd, O_RDONLY);
	fds[1] = forge(4096, true, SEALS_ALL, NULL);
	fk_welcome(k, fds, 2);
	close(fds[0]);
	close(fds[1]);
}

static void h_version(struct fk *k)
{
	struct ctl_welcome w = { .table_size = CTL_TABLE_SIZE };
	int fd;

	table_make(k, "forged-table", CTL_TABLE_SIZE, SEALS_ALL | F_SEAL_FUTURE_WRITE);
	fd = reopen(k->tab_fd, O_RDONLY);
	ctl_hdr_init(&w.h, CTL_WELCOME, 0);
	w.h.version = CTL_VERSION + 1;
	fk_send(k, &w, sizeof(w), &fd, 1);
	close(fd);
}

static void h_chan(struct fk *k)
{
	struct ctl_chan m = chan_msg(1, 0, RING);
	int fds[2] = { forge(REGION, true, SEALS_ALL, NULL),
		       forge(REGION, true, SEALS_ALL, NULL) };

	fk_send(k, &m, sizeof(m), fds, 2);
	close(fds[0]);
	close(fds[1]);
}

static void h_result(struct fk *k)
{
	struct ctl_result r = { .err = EPROTO };
	int fd = forge(4096, true, SEALS_ALL, NULL);

	ctl_hdr_init(&r.h, CTL_RESULT, 0);
	fk_send(k, &r, sizeof(r), &fd, 1);
	close(fd);
}

static void h_garbage(struct fk *k)
{
	uint8_t b[100];
	uint64_t rng = 3;
	int fd = forge(4096, true, SEALS_ALL, NULL);

	for (size_t i = 0; i < sizeof(b); i++)
		b[i] = (uint8_t)t_rand64(&rng);
	fk_send(k, b, sizeof(b), &fd, 1);
	close(fd);
}

static void h_empty_fds(struct fk *k)
{
	empty(k, true);
}

/* ---- the cases through ivmc_tcp() ---- */

#define NO_DAEMON { -ECONNREFUSED, -ECONNREFUSED }
#define BOTH(e) { (e), (e) }
#define ATTACHED { 1, 1 }, .ring = 3

static const struct fcase fcases[] = {
	{ "control: the honest answer attaches", .want = ATTACHED },
	/* the region */
	{ "region: unsealed memfd", .region = r_unsealed, .want = BOTH(-EPERM) },
	{ "region: memfd that cannot be sealed", .region = r_no_sealing,
	  .want = BOTH(-EPERM) },
	{ "region: sealed SHRINK|GROW only", .region = r_shrink_grow,
	  .want = BOTH(-EPERM) },
	{ "region: sealed SHRINK|SEAL only", .region = r_shrink_seal,
	  .want = BOTH(-EPERM) },
	{ "region: sealed GROW|SEAL only", .region = r_grow_seal,
	  .want = BOTH(-EPERM) },
	{ "region: F_SEAL_WRITE", .region = r_write_seal, .want = BOTH(-EPERM) },
	{ "region: F_SEAL_FUTURE_WRITE", .region = r_future_write,
	  .want = BOTH(-EPERM) },
	{ "region: 0 bytes", .region = r_size_0, .want = BOTH(-EMSGSIZE) },
	{ "region: 100 bytes", .region = r_size_100, .want = BOTH(-EMSGSIZE) },
	{ "region: a page more than its header says", .region = r_page_more,
	  .want = BOTH(-EMSGSIZE) },
	{ "region: a page less than its header says", .region = r_page_less,
	  .want = BOTH(-EMSGSIZE) },
	{ "region: header claims 1 GiB rings", .region = r_ring_1g,
	  .want = BOTH(-EMSGSIZE) },
	{ "header: bad magic", .region = r_magic, .want = BOTH(-EPROTO) },
	{ "header: bad version", .region = r_version, .want = BOTH(-EPROTO) },
	{ "header: hdr_size 8192", .region = r_hdr_size, .want = BOTH(-EPROTO) },
	{ "header: ring_size 5000", .region = r_ring_5000, .want = BOTH(-EPROTO) },
	{ "header: ring_size 0", .region = r_ring_0, .want = BOTH(-EPROTO) },
	{ "header: region_size off by a page", .region = r_region_size,
	  .want = BOTH(-EPROTO) },
	{ "header: unknown flag", .region = r_flags, .want = BOTH(-EPROTO) },
	{ "header: reserved word set", .region = r_reserved,
	  .want = BOTH(-EPROTO) },
	{ "region: a ring-only region (no side stream)", .region = r_ring_only,
	  .want = BOTH(-EPROTO) },
	{ "region: a regular file on disk", .region = r_disk, .avail = have_disk,
	  .want = BOTH(-EBADFD) },
	{ "region: a regular file on tmpfs (not a memfd)", .region = r_tmpfs,
	  .avail = have_shm, .want = BOTH(-EPERM) },
	{ "region: a file on a FUSE filesystem that stops answering",
	  .region = r_fuse, .avail = have_slow_fs, .want = BOTH(-EBADFD) },
	{ "region: a FIFO", .region = r_fifo, .want = BOTH(-EBADFD) },
	{ "region: /dev/zero", .region = r_dev_zero, .want = BOTH(-EBADFD) },
	{ "region: a directory", .region = r_dir, .want = BOTH(-EBADFD) },
	{ "region: /proc/self/comm, read-write", .region = r_proc,
	  .want = BOTH(-EBADFD) },
	{ "region: a sysfs file", .region = r_sysfs, .avail = have_sysfs,
	  .want = BOTH(-EBADFD) },
	{ "region: a pipe", .region = r_pipe, .want = BOTH(-EBADFD) },
	{ "region: a socket", .region = r_socket, .want = BOTH(-EBADFD) },
	{ "region: honest, but opened read-only", .region = r_read_only,
	  .want = BOTH(-EBADFD) },
	{ "region: honest, but an O_PATH fd", .region = r_o_path,
	  .want = BOTH(-EBADFD) },
	{ "region: the client's own mailbox", .region = r_mailbox,
	  .want = BOTH(-EPROTO) },
	{ "region and doorbell swapped", .pair = p_swapped,
	  .want = BOTH(-EBADFD) },
	/* the doorbell */
	{ "doorbell: a pipe", .bells = b_pipe, .want = BOTH(-ENOTSOCK) },
	{ "doorbell: an eventfd", .bells = b_eventfd, .want = BOTH(-ENOTSOCK) },
	{ "doorbell: a memfd", .bells = b_memfd, .want = BOTH(-ENOTSOCK) },
	{ "doorbell: a FIFO", .bells = b_fifo, .want = BOTH(-ENOTSOCK) },
	{ "doorbell: a file on a FUSE filesystem that stops answering",
	  .bells = b_fuse, .avail = have_slow_fs, .want = BOTH(-ENOTSOCK) },
	{ "doorbell: a UDP socket", .bells = b_udp, .want = BOTH(-EPROTOTYPE) },
	{ "doorbell: an unconnected TCP socket", .bells = b_tcp,
	  .want = BOTH(-EPROTOTYPE) },
	{ "doorbell: the end's own TCP socket", .bells = b_own_tcp,
	  .want = BOTH(-EPROTOTYPE) },
	{ "doorbell: AF_UNIX datagram pair", .bells = b_dgram,
	  .want = BOTH(-EPROTOTYPE) },
	{ "doorbell: AF_UNIX seqpacket pair", .bells = b_seqpacket,
	  .want = BOTH(-EPROTOTYPE) },
	{ "doorbell: unconnected AF_UNIX stream sockets", .bells = b_lonely,
	  .want = BOTH(-ENOTCONN) },
	/* fds */
	{ "CHAN with no fd", .pair = p_fds_0, .want = BOTH(-EACCES) },
	{ "CHAN with one fd", .pair = p_fds_1, .want = BOTH(-EACCES) },
	{ "CHAN with three fds", .pair = p_fds_3, .want = BOTH(-EACCES) },
	{ "CHAN with sixteen fds", .pair = p_fds_16, .want = BOTH(-EACCES) },
	/* tokens and fields */
	{ "CHAN for tokens never registered, then the answer",
	  .pair = p_stray_token, .want = ATTACHED },
	{ "CHAN twice for the same tokens", .pair = p_twice, .want = ATTACHED },
	{ "a forged CHAN, then the honest one, for one token",
	  .pair = p_forged_first, .want = { -EPERM, 1 } },
	{ "half a channel: one end's CHAN, the other expires", .pair = p_half,
	  .want = { 1, -ETIMEDOUT } },
	{ "each end the half of a different channel", .pair = p_two_regions,
	  .want = { 1, 1 } },
	{ "both ends told side 0", .pair = p_both_side_0, .want = { 1, 1 } },
	{ "CHAN side 2", .pair = p_side_2, .want = BOTH(-EACCES) },
	/* CHAN_MEM (ivmcd --guest): a slot of a peer VM's region */
	{ "CHAN_MEM without a doorbell (the ends poll)", .pair = p_mem_poll,
	  .want = ATTACHED },
	{ "CHAN_MEM: the doorbell's eventfd a blocking pipe",
	  .pair = p_mem_pipe, .want = BOTH(-EBADFD) },
	{ "CHAN_MEM: the registers a memfd, not a sysfs resource",
	  .pair = p_mem_regs_memfd, .want = BOTH(-EBADFD) },
	{ "CHAN_MEM: the registers a file on a FUSE filesystem that stops "
	  "answering", .pair = p_mem_regs_fuse, .avail = have_slow_fs,
	  .want = BOTH(-EBADFD) },
	{ "CHAN_MEM with a doorbell but one fd", .pair = p_mem_bell_1fd,
	  .want = BOTH(-EACCES) },
	{ "CHAN_MEM with three fds and no doorbell", .pair = p_mem_3fds_no_bell,
	  .want = BOTH(-EACCES) },
	{ "CHAN ring_size 64 KiB for a 4 KiB region", .pair = p_ring_mismatch,
	  .want = ATTACHED },
	{ "two connections spliced (known gap: ivmcd is trusted)",
	  .pair = p_cross, .flags = F_CROSS },
	{ "CHAN for ends already closed", .pair = p_second_denied,
	  .unreg = u_chan_closed, .flags = F_PENDING | F_AGAIN,
	  .want2 = -EACCES },
	/* messages */
	{ "CHAN truncated to 20 bytes", .pair = p_trunc, .want = BOTH(-EACCES) },
	{ "CHAN of 300 bytes", .pair = p_long, .want = BOTH(-EACCES) },
	{ "CHAN with a wrong size field", .pair = p_size, .want = BOTH(-EACCES) },
	{ "CHAN of version 2", .pair = p_version, .want = BOTH(-EACCES) },
	{ "CHAN with a bad magic", .pair = p_magic, .want = BOTH(-EACCES) },
	{ "type 0", .pair = p_type_0, .want = BOTH(-EACCES) },
	{ "type 99", .pair = p_type_99, .want = BOTH(-EACCES) },
	{ "a HELLO from the daemon", .pair = p_type_hello,
	  .want = BOTH(-EACCES) },
	{ "RESULT, WELCOME, REG_CONN, NOCHAN carrying fds, then the answer",
	  .pair = p_junk_fds, .want = ATTACHED },
	{ "NOCHAN reason 0", .pair = p_nochan_0, .want = BOTH(-EPROTO) },
	{ "NOCHAN reasons out of range", .pair = p_nochan_big,
	  .want = BOTH(-EPROTO) },
	{ "DETACH before the channel", .pair = p_detach,
	  .want = BOTH(-ECANCELED) },
	{ "DETACH for a stray token, then the answer", .pair = p_detach_stray,
	  .want = ATTACHED },
	{ "an empty packet", .pair = p_empty, .want = NO_DAEMON,
	  .flags = F_LOST },
	{ "an empty packet carrying two fds", .pair = p_empty_fds,
	  .want = NO_DAEMON, .flags = F_LOST },
	{ "a flood of 5000 messages, then the answer", .pair = p_flood,
	  .want = ATTACHED },
	{ "mailbox: resizing refused, 1000 bumps, then the answer",
	  .pair = p_mailbox, .want = ATTACHED },
	/* the conversation */
	{ "a daemon of another uid (not root, not ours): never talked to",
	  .hello = h_never, .flags = F_OTHER_UID, .want = NO_DAEMON },
	{ "accepts, never answers the HELLO", .hello = h_silent,
	  .want = NO_DAEMON },
	{ "welcomes, never answers a registration", .pair = p_silent,
	  .flags = F_PENDING },
	{ "hangs up after the registrations (mailbox moved)",
	  .pair = p_close_bump, .want = NO_DAEMON, .flags = F_LOST },
	{ "hangs up silently and goes away", .pair = p_close_silent,
	  .flags = F_PENDING | F_AGAIN | F_LOST | F_EARLY,
	  .want2 = -ECONNREFUSED },
	/* the WELCOME */
	{ "WELCOME: unsealed table", .hello = h_table_unsealed,
	  .want = NO_DAEMON },
	{ "WELCOME: unsealed table, read-write", .hello = h_table_rdwr_unsealed,
	  .want = NO_DAEMON },
	{ "WELCOME: sealed table, read-write", .hello = h_table_rdwr,
	  .want = ATTACHED },
	{ "WELCOME: write-sealed table", .hello = h_table_write_sealed,
	  .want = ATTACHED },
	{ "WELCOME: table a page short", .hello = h_table_small,
	  .want = NO_DAEMON },
	{ "WELCOME: table a page long", .hello = h_table_big, .want = NO_DAEMON },
	{ "WELCOME: table as an O_PATH fd", .hello = h_table_o_path,
	  .want = NO_DAEMON },
	{ "WELCOME: table a file on disk", .hello = h_table_disk,
	  .avail = have_disk, .want = NO_DAEMON },
	{ "WELCOME: table a FIFO", .hello = h_table_fifo, .want = NO_DAEMON },
	{ "WELCOME: table a directory", .hello = h_table_dir, .want = NO_DAEMON },
	{ "WELCOME: table /dev/zero", .hello = h_table_dev_zero,
	  .want = NO_DAEMON },
	{ "WELCOME: table a /proc file", .hello = h_table_proc,
	  .want = NO_DAEMON },
	{ "WELCOME: table a socket", .hello = h_table_socket, .want = NO_DAEMON },
	{ "WELCOME without a table", .hello = h_no_fd, .want = NO_DAEMON },
	{ "WELCOME with two fds", .hello = h_two_fds_only, .want = NO_DAEMON },
	{ "a second WELCOME with two fds", .hello = h_two_fds, .want = ATTACHED },
	{ "WELCOME of version 2", .hello = h_version, .want = NO_DAEMON },
	{ "a CHAN instead of the WELCOME", .hello = h_chan, .want = NO_DAEMON },
	{ "a RESULT instead of the WELCOME", .hello = h_result,
	  .want = NO_DAEMON },
	{ "garbage instead of the WELCOME", .hello = h_garbage,
	  .want = NO_DAEMON },
	{ "an empty packet with fds instead of the WELCOME",
	  .hello = h_empty_fds, .want = NO_DAEMON },
};

#define N_FCASES (sizeof(fcases) / sizeof(fcases[0]))

/* ---- serving one victim ---- */

static void fk_hello(struct fk *k, int nfds, const int *fds)
{
	uint64_t size;
	void *p;

	if (nfds == 1 && !xport_memfd_verify(fds[0], &size) &&
	    size == CTL_MAILBOX_SIZE &&
	    !xport_map(fds[0], 0, CTL_MAILBOX_SIZE, &p)) {
		k->mb = p;
		k->mb_fd = dup(fds[0]);
	}
	if (k->tc)
		k->tc->hello(k);
	else if (k->fc->hello)
		k->fc->hello(k);
	else
		hello_honest(k);
}

static void fk_reg(struct fk *k, const struct ctl_reg *m, int fd)
{
	struct reg *r;
	socklen_t len;

	if (k->nregs == 8) {
		close(fd);
		return;
	}
	r = &k->regs[k->nregs++];
	memset(r, 0, sizeof(*r));
	r->token = m->token;
	r->fd = fd;
	len = sizeof(r->local);
	getsockname(fd, (struct sockaddr *)&r->local, &len);
	len = sizeof(r->peer);
	getpeername(fd, (struct sockaddr *)&r->peer, &len);
	/* As ivmcd pairs: the other end's addresses mirror these. */
	for (int i = 0; i < k->nregs - 1; i++) {
		struct reg *o = &k->regs[i];

		if (o->paired || memcmp(&o->local, &r->peer, sizeof(r->peer)) ||
		    memcmp(&o->peer, &r->local, sizeof(r->local)))
			continue;
		o->paired = r->paired = true;
		k->npairs++;
		(k->fc->pair ? k->fc->pair : answer)(k, o, r);
		return;
	}
}

static void fk_read(struct fk *k)
{
	for (int i = 0; i < 64 && k->cfd >= 0; i++) {
		union { struct ctl_hdr h; struct ctl_reg r; struct ctl_unreg u;
			char b[CTL_MSG_MAX + 1]; } m;
		int fds[2] = { -1, -1 }, nfds = 2;
		ssize_t n = xport_recv_fds(k->cfd, &m, sizeof(m), fds, &nfds,
					   MSG_DONTWAIT);

		if (n == -EAGAIN)
			return;
		if (n < 0 && n != -EPROTO)
			nfds = 0;
		if (n <= 0) { /* the victim hung up */
			for (int j = 0; j < nfds; j++)
				close(fds[j]);
			close(k->cfd);
			k->cfd = -1;
			return;
		}
		if (n >= (ssize_t)sizeof(m.h) && m.h.type == CTL_HELLO) {
			fk_hello(k, nfds, fds);
		} else if (m.h.type == CTL_REG_CONN && nfds == 1) {
			fk_reg(k, &m.r, fds[0]);
			nfds = 0;
		} else if (m.h.type == CTL_UNREG && k->tc &&
			   m.u.token == TOKEN_GO) {
			k->tc->go(k);
			fk_nochan(k, TOKEN_GO, CTL_R_DENIED);
		} else if (m.h.type == CTL_UNREG && k->fc && k->fc->unreg) {
			k->fc->unreg(k, m.u.token);
		}
		for (int j = 0; j < nfds; j++)
			close(fds[j]);
	}
}

static void fk_listen(struct fk *k)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };

	unlink(path);
	k->lfd = sock(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK);
	strcpy(sa.sun_path, path);
	T_ASSERT(bind(k->lfd, (struct sockaddr *)&sa, sizeof(sa)) == 0);
	if (k->fc && (k->fc->flags & F_OTHER_UID)) {
		/* A client sees the credentials of whoever called listen(). */
		pid_t pid = fork();

		T_ASSERT(pid >= 0);
		if (pid == 0)
			_exit(setresgid(65534, 65534, 65534) ||
			      setresuid(65534, 65534, 65534) ||
			      listen(k->lfd, 8));
		T_ASSERT_EQ(t_wait(pid, 5000), 0);
	} else {
		T_ASSERT(listen(k->lfd, 8) == 0);
	}
	fk_lfd = k->lfd;
}

/* Serve until the victim exits (its wait status) or CASE_MS (-1: hung,
 * killed). */
static int fk_serve(struct fk *k, pid_t victim)
{
	uint64_t end = t_now_ns() + CASE_MS * 1000000ull;
	int st;

	for (;;) {
		struct pollfd p[2];
		int n = 0, il = -1, ic = -1;

		if (waitpid(victim, &st, WNOHANG) == victim)
			return st;
		if (t_now_ns() > end) {
			/* A victim waiting on a FUSE request its server has
			 * read cannot be killed: stop the server first. */
			kill(victim, SIGKILL);
			fuse_stop(k);
			waitpid(victim, &st, 0);
			return -1;
		}
		if (k->lfd >= 0) {
			il = n;
			p[n++] = (struct pollfd){ k->lfd, POLLIN, 0 };
		}
		if (k->cfd >= 0) {
			ic = n;
			p[n++] = (struct pollfd){ k->cfd,
				POLLIN | (k->flood_left ? POLLOUT : 0), 0 };
		}
		if (poll(p, (nfds_t)n, 2) < 0 && errno != EINTR)
			t_fail("poll: %s", strerror(errno));
		if (il >= 0 && (p[il].revents & POLLIN)) {
			int fd = accept4(k->lfd, NULL, NULL,
					 SOCK_CLOEXEC | SOCK_NONBLOCK);

			if (fd >= 0 && k->cfd < 0)
				k->cfd = fd;
			else if (fd >= 0)
				close(fd);
		}
		if (ic >= 0 && k->cfd >= 0 && p[ic].revents)
			fk_read(k);
		if (k->flood_left && k->cfd >= 0)
			fk_flood(k);
	}
}

static void fk_end(struct fk *k)
{
	fuse_stop(k); /* first: it ends every wait on its file */
	if (k->mut_on) {
		atomic_store(&k->mut_run, false);
		pthread_join(k->mut, NULL);
	}
	if (k->cfd >= 0)
		close(k->cfd);
	if (k->lfd >= 0)
		close(k->lfd);
	if (k->mb)
		munmap(k->mb, CTL_MAILBOX_SIZE);
	if (k->mb_fd >= 0)
		close(k->mb_fd);
	if (k->tab)
		munmap(k->tab, CTL_TABLE_SIZE);
	if (k->tab_fd >= 0)
		close(k->tab_fd);
	for (int i = 0; i < k->nregs; i++)
		close(k->regs[i].fd);
	unlink(path);
}

/* ---- the victim ---------------------------------------------------------- */

static const char *what; /* the victim's case, for its messages */
static int vfails;

#define vfail(...)                                                  \
	do {                                                        \
		fprintf(stderr, "  %s: ", what);                    \
		fprintf(stderr, __VA_ARGS__);                       \
		fputc('\n', stderr);                                \
		vfails++;                                           \
	} while (0)

/* fds and shared mappings that are, or map, something named "forged". */
static int forged_left(void)
{
	DIR *d = opendir("/proc/self/fd");
	struct dirent *e;
	char p[300], l[256], line[512];
	FILE *f;
	int n = 0;

	T_ASSERT(d);
	while ((e = readdir(d))) {
		ssize_t k;

		snprintf(p, sizeof(p), "/proc/self/fd/%s", e->d_name);
		k = readlink(p, l, sizeof(l) - 1);
		if (k <= 0)
			continue;
		l[k] = 0;
		if (strstr(l, "forged")) {
			vfail("fd %s left open: %s", e->d_name, l);
			n++;
		}
	}
	closedir(d);
	f = fopen("/proc/self/maps", "re");
	T_ASSERT(f);
	while (fgets(line, sizeof(line), f)) {
		if (strstr(line, "forged")) {
			vfail("mapping left: %s", line);
			n++;
		}
	}
	fclose(f);
	return n;
}

/* Talk both ways until both ends say where they are (pending: for a
 * while), then some more, then (want_ring) until both are on the ring. */
static void drive(struct ivmc_chan *a, struct ivmc_chan *b, bool pending,
		  bool want_ring, uint64_t *off)
{
	uint64_t end = t_now_ns() + (pending ? 150 : 3000) * 1000000ull;
	struct ivmc_stats sa, sb;

	while (t_now_ns() < end) {
		t_exchange(a, b, off, CHUNK, what);
		if (!pending && ivmc_tcp_state(a) && ivmc_tcp_state(b))
			break;
		usleep(200);
	}
	for (int i = 0; i < 20; i++)
		t_exchange(a, b, off, CHUNK, what);
	end = t_now_ns() + 2000000000ull;
	while (want_ring && t_now_ns() < end) {
		T_ASSERT_OK(ivmc_stats(a, &sa));
		T_ASSERT_OK(ivmc_stats(b, &sb));
		if (sa.on_ring == 3 && sb.on_ring == 3)
			break;
		t_exchange(a, b, off, CHUNK, what);
	}
}

static void check_end(const char *name, struct ivmc_chan *h, int want,
		      int ring, uint64_t off, bool early)
{
	struct ivmc_stats st;
	int s = ivmc_tcp_state(h);

	T_ASSERT_OK(ivmc_stats(h, &st));
	if (s != want && !(early && s == -ECONNREFUSED))
		vfail("end %s: ivmc_tcp_state %d (%s), want %d (%s)", name, s,
		      s > 0 ? "attached" : t_strerror(s), want,
		      want > 0 ? "attached" : t_strerror(want));
	if (st.tcp_state != s)
		vfail("end %s: stats say state %d, ivmc_tcp_state %d", name,
		      st.tcp_state, s);
	if ((int)st.on_ring != ring)
		vfail("end %s: on_ring %u, want %d", name, st.on_ring, ring);
	if (st.bytes_sent != off || st.bytes_received != off)
		vfail("end %s: %llu bytes sent, %llu received, want %llu", name,
		      st.bytes_sent, st.bytes_received, (unsigned long long)off);
}

#define CROSS_BYTES 8192

/* Are the n bytes at buf the start of stream seed? (Quietly.) */
static bool is_stream(uint64_t seed, const char *buf, size_t n)
{
	static char want[CROSS_BYTES];

	t_fill(seed, 0, want, n);
	return !memcmp(buf, want, n);
}

/* What a fake ivmcd can do that the client cannot see: give one channel to
 * ends of two different connections (section 4 of docs/SECURITY.md, "a
 * client does not authenticate ivmcd"). Ends P.a P.b Q.a Q.b, each sending
 * a stream of its own once all four are attached; we say what each
 * received (its peer's stream, the other connection's, nothing), bounded
 * (non-blocking calls, 1 s), and that nothing crashed, hung or leaked. */
static void cross_victim(void)
{
	static const char *const name[4] = { "P.a", "P.b", "Q.a", "Q.b" };
	const struct ivmc_opts nb = { .flags = IVMC_NONBLOCK };
	struct ivmc_chan *h[4];
	int fd[4], l[2], fds0, maps0, settled = 0;
	static char got[4][CROSS_BYTES];
	size_t sent[4] = { 0 }, rcvd[4] = { 0 };
	uint64_t end;

	t_tcp_pair(false, &l[0], &fd[0], &fd[1]);
	t_tcp_pair(false, &l[1], &fd[2], &fd[3]);
	close(l[0]);
	close(l[1]);
	tcp_warmup();
	fds0 = t_count_fds();
	maps0 = t_count_maps();
	for (int i = 0; i < 4; i++)
		T_ASSERT_OK(ivmc_tcp(fd[i], &nb, &h[i]));
	end = t_now_ns() + 3000000000ull;
	while (settled < 4 && t_now_ns() < end) {
		settled = 0;
		for (int i = 0; i < 4; i++)
			settled += ivmc_tcp_state(h[i]) != 0;
		usleep(1000);
	}
	for (int i = 0; i < 4; i++)
		if (ivmc_tcp_state(h[i]) != 1)
			vfail("%s: state %d, want attached", name[i],
			      ivmc_tcp_state(h[i]));
	end = t_now_ns() + 1000000000ull;
	while (t_now_ns() < end) {
		int busy = 0;

		for (int i = 0; i < 4; i++) {
			char buf[1024];
			size_t n = CROSS_BYTES - sent[i] < sizeof(buf) ?
					   CROSS_BYTES - sent[i] : sizeof(buf);
			ssize_t r;

			t_fill(100 + (uint64_t)i, sent[i], buf, n);
			r = n ? ivmc_send(h[i], buf, n, 0) : 0;
			sent[i] += r > 0 ? (size_t)r : 0;
			r = ivmc_recv(h[i], got[i] + rcvd[i], CROSS_BYTES - rcvd[i], 0);
			rcvd[i] += r > 0 ? (size_t)r : 0;
			busy += sent[i] < CROSS_BYTES || rcvd[i] < CROSS_BYTES;
		}
		if (!busy)
			break;
		usleep(100);
	}
	for (int i = 0; i < 4; i++) {
		/* Its peer is i ^ 1; spliced, it hears i ^ 3 (P.a <-> Q.b). */
		const char *what_got = "nothing";

		if (rcvd[i] && is_stream(100 + (uint64_t)(i ^ 1), got[i], rcvd[i]))
			what_got = "its peer's stream (right)";
		else if (rcvd[i] && is_stream(100 + (uint64_t)(i ^ 3), got[i], rcvd[i]))
			what_got = "the other connection's stream";
		else if (rcvd[i])
			what_got = "bytes of neither stream";
		printf("  spliced: %s sent %zu, received %zu: %s\n", name[i],
		       sent[i], rcvd[i], what_got);
	}
	for (int i = 0; i < 4; i++) {
		int r = ivmc_close(h[i]);

		if (r && r != -ECONNABORTED) /* ECONNABORTED: see ivmc_close(3) */
			vfail("%s: ivmc_close %d (%s)", name[i], r, t_strerror(r));
		close(fd[i]);
	}
	if (t_count_fds() != fds0 - 4)
		vfail("%d fds before, %d after (want %d)", fds0, t_count_fds(),
		      fds0 - 4);
	if (t_count_maps() != maps0)
		vfail("%d shared mappings before, %d after", maps0,
		      t_count_maps());
}

static void victim(void *arg)
{
	const struct fcase *fc = arg;
	struct ivmc_chan *a, *b;
	uint64_t off = 0, t0;
	int l, cfd, afd, fds_pre, maps_pre, fds0, maps0, lost;

	what = fc->what;
	close(fk_lfd);
	if (fc->flags & F_CROSS) {
		cross_victim();
		fflush(stdout);
		_exit(vfails ? T_FAIL : T_PASS);
	}
	t_tcp_pair(false, &l, &cfd, &afd);
	close(l);
	fds_pre = t_count_fds();
	maps_pre = t_count_maps();
	t0 = t_now_ns();
	tcp_warmup(); /* the daemon connection, as the preload opens it */
	t0 = (t_now_ns() - t0) / 1000000;
	if (t0 > BUDGET_US / 1000 + 1000)
		vfail("opening the daemon connection took %llu ms",
		      (unsigned long long)t0);
	/* What a process keeps: the mailbox (a fd, a mapping), the control
	 * socket, the table's mapping. Anything more is a leak. */
	fds0 = t_count_fds();
	maps0 = t_count_maps();
	if (fds0 - fds_pre > 2 || maps0 - maps_pre > 2)
		vfail("the daemon connection costs %d fds and %d mappings",
		      fds0 - fds_pre, maps0 - maps_pre);
	T_ASSERT_OK(ivmc_tcp(cfd, NULL, &a));
	T_ASSERT_OK(ivmc_tcp(afd, NULL, &b));
	drive(a, b, fc->flags & F_PENDING, fc->ring == 3, &off);
	check_end("a", a, fc->want[0], fc->ring, off, fc->flags & F_EARLY);
	check_end("b", b, fc->want[1], fc->ring, off, fc->flags & F_EARLY);
	T_ASSERT_OK(ivmc_close(a));
	T_ASSERT_OK(ivmc_close(b));
	if (fc->flags & F_AGAIN) {
		int l2, c2, a2;

		off = 0;
		t_tcp_pair(false, &l2, &c2, &a2);
		T_ASSERT_OK(ivmc_tcp(c2, NULL, &a));
		T_ASSERT_OK(ivmc_tcp(a2, NULL, &b));
		drive(a, b, false, false, &off);
		check_end("a (again)", a, fc->want2, 0, off, false);
		check_end("b (again)", b, fc->want2, 0, off, false);
		T_ASSERT_OK(ivmc_close(a));
		T_ASSERT_OK(ivmc_close(b));
		close(l2);
		close(c2);
		close(a2);
	}
	lost = fc->flags & F_LOST ? 1 : 0;
	if (t_count_fds() != fds0 - lost)
		vfail("%d fds before, %d after (want %d)", fds0, t_count_fds(),
		      fds0 - lost);
	if (t_count_maps() != maps0 - lost)
		vfail("%d shared mappings before, %d after (want %d)", maps0,
		      t_count_maps(), maps0 - lost);
	(void)forged_left();
	close(cfd);
	close(afd);
	fflush(stdout);
	_exit(vfails ? T_FAIL : T_PASS);
}

static int ms_since(uint64_t t0)
{
	return (int)((t_now_ns() - t0) / 1000000);
}

/* The victim's wait status (or -1) as a verdict on case name. */
static void verdict(const char *name, int st, uint64_t t0)
{
	if (st == -1)
		t_late_fail("%s: the victim hung (killed after %d ms)", name,
			    CASE_MS);
	else if (WIFSIGNALED(st))
		t_late_fail("%s: the victim died of signal %d (%s)", name,
			    WTERMSIG(st), strsignal(WTERMSIG(st)));
	else if (WEXITSTATUS(st))
		t_late_fail("%s: the victim failed (above)", name);
	else
		printf("ok  %4d ms  %s\n", ms_since(t0), name);
}

static void run_fcase(const struct fcase *fc)
{
	struct fk k = { .fc = fc, .cfd = -1, .mb_fd = -1, .tab_fd = -1 };
	uint64_t t0 = t_now_ns();
	pid_t pid;
	int st;

	if (fc->avail && !fc->avail()) {
		printf("skipped \"%s\": cannot be forged here\n", fc->what);
		return;
	}
	fk_listen(&k);
	pid = t_fork(victim, (void *)fc);
	st = fk_serve(&k, pid);
	fk_end(&k);
	verdict(fc->what, st, t0);
}

/* ---- the table alone --------------------------------------------------- */

static void *mutator(void *arg)
{
	struct fk *k = arg;
	struct ctl_table *t = k->tab;
	uint64_t rng = 11;

	while (atomic_load(&k->mut_run)) {
		uint64_t x = t_rand64(&rng);

		atomic_store(&t->seq, (uint32_t)x);
		t->magic = x & 0x100 ? CTL_TABLE_MAGIC : (uint32_t)(x >> 32);
		t->overflow = (x >> 9) & (x >> 10) & 1;
		for (int i = 0; i < 64; i++) {
			struct ctl_tab_entry *e;

			x = t_rand64(&rng);
			e = &t->e[x % CTL_TABLE_SLOTS];
			memcpy(e->addr, x & 0x10000 ? listed : unlisted, 16);
			e->port = x & 0x20000 ? 0 : (uint16_t)(x >> 32);
			atomic_store(&e->used, (x >> 40) & 7 ? 1 : 0);
		}
	}
	return NULL;
}

static void g_storm(struct fk *k)
{
	atomic_store(&k->mut_run, true);
	T_ASSERT(pthread_create(&k->mut, NULL, mutator, k) == 0);
	k->mut_on = true;
}

static void g_none(struct fk *k)
{
	(void)k;
}

static void g_seq_odd(struct fk *k)
{
	atomic_store(&k->tab->seq, 1);
}

static void g_magic(struct fk *k)
{
	k->tab->magic = 0;
}

static void g_overflow(struct fk *k)
{
	k->tab->overflow = 1;
}

/* Every slot in use; `listed` stays findable, `unlisted` is not there. */
static void g_full(struct fk *k)
{
	uint8_t a[16] = { [10] = 0xff, [11] = 0xff, 172, 16 };

	for (uint32_t i = 0; i < CTL_TABLE_SLOTS; i++) {
		struct ctl_tab_entry *e = &k->tab->e[i];

		if (atomic_load(&e->used))
			continue;
		a[14] = (uint8_t)(i >> 8);
		a[15] = (uint8_t)i;
		memcpy(e->addr, a, 16);
		e->port = 1;
		atomic_store(&e->used, 1);
	}
}

/* Shrink the table under the victim's mapping. */
static void g_shrink(struct fk *k)
{
	munmap(k->tab, CTL_TABLE_SIZE);
	k->tab = NULL;
	T_ASSERT(ftruncate(k->tab_fd, 0) == 0);
}

static void h_tab_unsealed(struct fk *k)
{
	table_make(k, "forged-table", CTL_TABLE_SIZE, 0);
	welcome_table(k, O_RDONLY);
}

/* A table file on disk, listing `listed`; we keep it to shrink it. */
static void h_tab_disk(struct fk *k)
{
	int fd = disk_file(CTL_TABLE_SIZE);

	T_ASSERT(fd >= 0);
	k->tab = mmap(NULL, CTL_TABLE_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED,
		      fd, 0);
	T_ASSERT(k->tab != MAP_FAILED);
	k->tab->magic = CTL_TABLE_MAGIC;
	k->tab->slots = CTL_TABLE_SLOTS;
	table_put(k->tab, listed, 0);
	k->tab_fd = fd;
	welcome_table(k, O_RDONLY);
}

static const struct tcase tcases[] = {
	{ "table: honest", hello_honest, g_none, 0, 1, 0 },
	{ "table: read-write fd, rewritten while read", h_table_rdwr, g_storm, 0,
	  -1, -1 },
	{ "table: rewritten while read", hello_honest, g_storm, 0, -1, -1 },
	{ "table: stuck mid-write (seq odd)", hello_honest, g_seq_odd, 0, 1, 1 },
	{ "table: bad magic", hello_honest, g_magic, 0, 1, 1 },
	{ "table: overflow", hello_honest, g_overflow, 0, 1, 1 },
	{ "table: every slot in use", hello_honest, g_full, 0, 1, 0 },
	{ "table: write-sealed", h_table_write_sealed, g_none, 0, 1, 0 },
	{ "table: unsealed, shrunk once mapped", h_tab_unsealed, g_shrink,
	  -EPROTO, -1, -1 },
	{ "table: a file on disk, shrunk once mapped", h_tab_disk, g_shrink,
	  -EPROTO, -1, -1 },
};

#define N_TCASES (sizeof(tcases) / sizeof(tcases[0]))

static uint64_t thread_cpu_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void tvictim(void *arg)
{
	const struct tcase *tc = arg;
	struct ctl_client *c = NULL;
	struct ctl_mailbox *mb;
	int mfd, r, fds0, maps0;

	what = tc->what;
	close(fk_lfd);
	T_ASSERT_OK(ctl_mailbox_create(&mfd, &mb));
	fds0 = t_count_fds();
	maps0 = t_count_maps();
	r = ctl_open(path, BUDGET_US, mfd, mb, &c);
	if (r != tc->want_open)
		vfail("ctl_open %d (%s), want %d (%s)", r, t_strerror(r),
		      tc->want_open, t_strerror(tc->want_open));
	if (r == -EINPROGRESS)
		ctl_close(c);
	if (r == 0) {
		union { struct ctl_hdr h; char b[CTL_MSG_MAX]; } m;
		struct ctl_unreg u = { .token = TOKEN_GO };
		struct pollfd p = { ctl_fd(c), POLLIN, 0 };
		int fds[2], nfds = 2, bad = 0;
		uint64_t end, worst = 0, n = 0;
		char line[512];
		FILE *f;

		/* The fake ivmcd does its worst to the table, then says so. */
		ctl_hdr_init(&u.h, CTL_UNREG, 0);
		T_ASSERT_OK(ctl_send(c, &u, NULL, 0));
		T_ASSERT(poll(&p, 1, 2000) == 1);
		T_ASSERT_EQ(ctl_recv(c, &m, fds, &nfds), CTL_NOCHAN);
		end = t_now_ns() + 200000000ull;
		while (t_now_ns() < end) {
			uint64_t t = thread_cpu_ns();
			int yes = ctl_maybe_local(c, listed, 0);
			int no = ctl_maybe_local(c, unlisted, 0);

			t = thread_cpu_ns() - t;
			worst = t > worst ? t : worst;
			n++;
			if (!bad && ((tc->want_listed >= 0 && yes != tc->want_listed) ||
				     (tc->want_unlisted >= 0 && no != tc->want_unlisted))) {
				vfail("listed: %d (want %d), unlisted: %d (want %d)",
				      yes, tc->want_listed, no, tc->want_unlisted);
				bad = 1;
			}
		}
		/* CPU time, not wall time: a loaded machine may preempt us. */
		if (worst > 10000000ull)
			vfail("a pair of look-ups took %llu us of CPU",
			      (unsigned long long)worst / 1000);
		/* Our mapping of the table is read-only, whatever the fd. */
		f = fopen("/proc/self/maps", "re");
		T_ASSERT(f);
		while (fgets(line, sizeof(line), f)) {
			char perms[8];

			if (strstr(line, "table") &&
			    sscanf(line, "%*s %7s", perms) == 1 && perms[1] == 'w')
				vfail("the table is mapped writable: %s", line);
		}
		fclose(f);
		printf("  %s: %llu pairs of look-ups, the slowest %llu us of CPU\n",
		       what, (unsigned long long)n,
		       (unsigned long long)worst / 1000);
		ctl_close(c);
	}
	if (t_count_fds() != fds0)
		vfail("%d fds before, %d after", fds0, t_count_fds());
	if (t_count_maps() != maps0)
		vfail("%d shared mappings before, %d after", maps0,
		      t_count_maps());
	(void)forged_left();
	fflush(stdout);
	_exit(vfails ? T_FAIL : T_PASS);
}

/* fcase of the table cases: every field but hello/pair unused. */
static const struct fcase table_fc = { .what = "table" };

static void run_tcase(const struct tcase *tc)
{
	struct fk k = { .fc = &table_fc, .tc = tc, .cfd = -1, .mb_fd = -1,
			.tab_fd = -1 };
	uint64_t t0 = t_now_ns();
	pid_t pid;
	int st;

	if (tc->hello == h_tab_disk && !have_disk()) {
		printf("skipped \"%s\": no disk file here\n", tc->what);
		return;
	}
	fk_listen(&k);
	pid = t_fork(tvictim, (void *)tc);
	st = fk_serve(&k, pid);
	fk_end(&k);
	verdict(tc->what, st, t0);
}

static pid_t main_pid;

/* The FUSE mount point: t_dir's cleanup removes files only. */
static void rm_fuse_dir(void)
{
	char p[160];

	if (getpid() != main_pid)
		return;
	t_path(p, sizeof(p), "fuse");
	(void)rmdir(p);
}

int main(void)
{
	uint64_t t0 = t_now_ns();
	char buf[16];
	int fds0;

	t_alarm(110);
	t_tmpdir();
	main_pid = getpid();
	atexit(rm_fuse_dir); /* runs before t_tmpdir()'s cleanup */
	t_path(path, sizeof(path), "ivmcd.sock");
	setenv("IVMC_SOCKET", path, 1);
	snprintf(buf, sizeof(buf), "%d", BUDGET_US);
	setenv("IVMC_CTL_BUDGET_US", buf, 1);
	/* No second try within a case: the fd counts stay put. */
	setenv("IVMC_CTL_RETRY_MS", "60000", 1);
	signal(SIGPIPE, SIG_IGN);
	fds0 = t_count_fds();
	for (size_t i = 0; i < N_FCASES; i++)
		run_fcase(&fcases[i]);
	for (size_t i = 0; i < N_TCASES; i++)
		run_tcase(&tcases[i]);
	if (t_count_fds() != fds0)
		t_late_fail("the fake ivmcd: %d fds at the start, %d at the end",
			    fds0, t_count_fds());

	printf("%zu cases in %d ms\n", N_FCASES + N_TCASES, ms_since(t0));
	return t_late_failures ? T_FAIL : T_PASS;
}
