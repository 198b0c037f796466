/* SPDX-License-Identifier: MIT */
/*
 * Description: forged rendezvous. A fake listener (our own AF_UNIX
 * seqpacket server speaking the rendezvous of src/api/ivmc.c) answers the
 * hello with forged fds and messages: memfds without the seals, of the
 * wrong size or with a bad header, files, pipes and sockets of the wrong
 * kind, too few or too many fds, truncated or garbage replies, bogus
 * rejects, silence. ivmc_connect must fail with the specific error, leak no
 * fd and no mapping. A control case proves the fake listener's valid
 * answer works. Then the listener side: clients that send garbage, fds,
 * wrong sizes or nothing; each accept fails quickly and a normal client
 * still gets a channel.
 */
#include <assert.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/vfs.h>
#include <linux/magic.h>

#include "t_api.h"
#include "t_chan.h"

#ifndef F_SEAL_FUTURE_WRITE
#define F_SEAL_FUTURE_WRITE 0x0010
#endif

/* The rendezvous message, as in src/api/ivmc.c (a wire format). */
#define RDV_MAGIC 0x52564d49u
#define RDV_VERSION 1u
#define RDV_HELLO 1u
#define RDV_ACCEPT 2u
#define RDV_REJECT 3u

struct rdv_msg {
	uint32_t magic;
	uint16_t version;
	uint16_t type;
	int32_t status;
	uint32_t ring_size;
	uint32_t reserved[4];
};

static_assert(sizeof(struct rdv_msg) == 32, "rendezvous message is 32 bytes");

#define RING 4096u
#define SEALS_ALL (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL)

static char path[128];

/* ---- forging fds ---- */

/* A memfd of fsize bytes holding a valid header for rings of ring bytes
 * (then changed by mut), with the given seals. */
static int forge_region(uint32_t ring, uint64_t fsize, bool allow_sealing,
			int seals, void (*mut)(struct ivmc_shm_hdr *))
{
	int fd = memfd_create("forged",
			      MFD_CLOEXEC |
				      (allow_sealing ? MFD_ALLOW_SEALING : 0));

	T_ASSERT(fd >= 0);
	T_ASSERT(ftruncate(fd, (off_t)fsize) == 0);
	if (fsize >= IVMC_SHM_HDR_SIZE) {
		struct ivmc_shm_hdr *h = mmap(NULL, IVMC_SHM_HDR_SIZE,
					      PROT_READ | PROT_WRITE,
					      MAP_SHARED, fd, 0);

		T_ASSERT(h != MAP_FAILED);
		h->magic = IVMC_SHM_MAGIC;
		h->version = IVMC_SHM_VERSION;
		h->hdr_size = IVMC_SHM_HDR_SIZE;
		h->ring_size = ring;
		h->region_size = IVMC_SHM_HDR_SIZE + 2 * (uint64_t)ring;
		for (int d = 0; d < 2; d++) {
			atomic_store(&h->dir[d].prod, ivmc_w_make(1, 0));
			atomic_store(&h->dir[d].cons, ivmc_w_make(1, 0));
		}
		if (mut)
			mut(h);
		T_ASSERT(munmap(h, IVMC_SHM_HDR_SIZE) == 0);
	}
	if (seals)
		T_ASSERT(fcntl(fd, F_ADD_SEALS, seals) == 0);
	return fd;
}

static uint64_t region_bytes(uint32_t ring)
{
	return IVMC_SHM_HDR_SIZE + 2 * (uint64_t)ring;
}

static int good_region(void)
{
	return forge_region(RING, region_bytes(RING), true, SEALS_ALL, NULL);
}

static int good_doorbell(int *keep)
{
	int sv[2];

	T_ASSERT(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
	*keep = sv[0];
	return sv[1];
}

static int sock(int domain, int type)
{
	int fd = socket(domain, type | SOCK_CLOEXEC, 0);

	T_ASSERT(fd >= 0);
	return fd;
}

/* ---- the fake listener ---- */

struct reply {
	struct rdv_msg m;
	size_t len; /* bytes of m to send (or of raw when raw_len) */
	int fds[3];
	int nfds;
	int keep[4]; /* fds the forger keeps open until the end */
	uint8_t raw[64]; /* sent instead of m when raw_len */
	size_t raw_len;
	bool silent; /* send nothing at all */
	bool hang_up; /* close without answering */
	bool serve; /* control case: open our end and send "hello" */
	struct chan *ch;
};

static struct rdv_msg accept_msg(void)
{
	return (struct rdv_msg){ .magic = RDV_MAGIC,
				 .version = RDV_VERSION,
				 .type = RDV_ACCEPT,
				 .ring_size = RING };
}

static struct rdv_msg reject_msg(int32_t status)
{
	return (struct rdv_msg){ .magic = RDV_MAGIC,
				 .version = RDV_VERSION,
				 .type = RDV_REJECT,
				 .status = status };
}

/* A normal accept with these two fds. */
static void two(struct reply *r, int region, int doorbell)
{
	r->m = accept_msg();
	r->len = sizeof(r->m);
	r->fds[0] = region;
	r->fds[1] = doorbell;
	r->nfds = 2;
}

typedef bool (*forge_fn)(struct reply *r);

struct scenario {
	const char *what;
	forge_fn forge; /* false: not possible here (skipped) */
	int want[3]; /* acceptable returns; 0 = a channel (control) */
	int nwant;
};

static void send_reply(int cfd, struct reply *r)
{
	char cbuf[CMSG_SPACE(sizeof(int) * 3)];
	struct iovec iov;
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };

	if (r->raw_len) {
		iov = (struct iovec){ r->raw, r->raw_len };
	} else {
		iov = (struct iovec){ &r->m, r->len };
	}
	if (r->nfds) {
		struct cmsghdr *cm;

		memset(cbuf, 0, sizeof(cbuf));
		mh.msg_control = cbuf;
		mh.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)r->nfds);
		cm = CMSG_FIRSTHDR(&mh);
		cm->cmsg_level = SOL_SOCKET;
		cm->cmsg_type = SCM_RIGHTS;
		cm->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)r->nfds);
		memcpy(CMSG_DATA(cm), r->fds, sizeof(int) * (size_t)r->nfds);
	}
	if (sendmsg(cfd, &mh, MSG_NOSIGNAL) < 0)
		t_fail("fake listener: sendmsg: %s", strerror(errno));
}

static void check_hello(int cfd)
{
	struct pollfd p = { cfd, POLLIN, 0 };
	struct rdv_msg m;
	ssize_t n;

	if (poll(&p, 1, 3000) != 1)
		t_fail("fake listener: no hello within 3 s");
	n = recv(cfd, &m, sizeof(m), MSG_DONTWAIT);
	if (n != (ssize_t)sizeof(m) || m.magic != RDV_MAGIC ||
	    m.version != RDV_VERSION || m.type != RDV_HELLO || m.status ||
	    m.reserved[0] || m.reserved[1] || m.reserved[2] || m.reserved[3])
		t_fail("fake listener: malformed hello (%zd bytes)", n);
}

/* Wait (bounded) for the connector to hang up. */
static void wait_hangup(int cfd)
{
	uint64_t end = t_now_ns() + 8000000000ull;
	char buf[64];

	while (t_now_ns() < end) {
		struct pollfd p = { cfd, POLLIN, 0 };

		if (poll(&p, 1, 100) == 1 &&
		    recv(cfd, buf, sizeof(buf), MSG_DONTWAIT) <= 0)
			return;
	}
	t_fail("fake listener: the connector did not hang up within 8 s");
}

static int lfd = -1;

static void fake_listener(void *arg)
{
	const struct scenario *s = arg;
	struct reply r = { .keep = { -1, -1, -1, -1 } };
	struct pollfd p = { lfd, POLLIN, 0 };
	int cfd;

	if (poll(&p, 1, 5000) != 1)
		t_fail("fake listener: nobody connected within 5 s");
	cfd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
	T_ASSERT(cfd >= 0);
	close(lfd);
	check_hello(cfd);
	T_ASSERT(s->forge(&r));
	if (r.hang_up) {
		close(cfd);
		return;
	}
	if (!r.silent)
		send_reply(cfd, &r);
	for (int i = 0; i < r.nfds; i++)
		close(r.fds[i]);
	if (r.ch) {
		static const char hello[] = "hello";

		T_ASSERT_EQ(t_send(r.ch, hello, 5, 0), 5);
	}
	wait_hangup(cfd);
	if (r.ch)
		chan_close(r.ch);
	for (int i = 0; i < 4; i++)
		if (r.keep[i] >= 0)
			close(r.keep[i]);
}

/* ---- the forgeries ---- */

static bool f_control(struct reply *r)
{
	struct chan_cfg cfg = { .side = 0, .side_fd = -1 };
	int region = good_region(), db[2];

	T_ASSERT(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, db) == 0);
	T_ASSERT_OK(chan_open(&cfg, region, db[0], &r->ch));
	two(r, region, db[1]);
	return true;
}

static bool f_unsealed(struct reply *r)
{
	two(r, forge_region(RING, region_bytes(RING), true, 0, NULL),
	    good_doorbell(&r->keep[0]));
	return true;
}

static bool f_no_sealing(struct reply *r)
{
	two(r, forge_region(RING, region_bytes(RING), false, 0, NULL),
	    good_doorbell(&r->keep[0]));
	return true;
}

static bool seals(struct reply *r, int s)
{
	two(r, forge_region(RING, region_bytes(RING), true, s, NULL),
	    good_doorbell(&r->keep[0]));
	return true;
}

static bool f_shrink_grow(struct reply *r)
{
	return seals(r, F_SEAL_SHRINK | F_SEAL_GROW);
}

static bool f_shrink_seal(struct reply *r)
{
	return seals(r, F_SEAL_SHRINK | F_SEAL_SEAL);
}

static bool f_grow_seal(struct reply *r)
{
	return seals(r, F_SEAL_GROW | F_SEAL_SEAL);
}

static bool f_write_seal(struct reply *r)
{
	return seals(r, SEALS_ALL | F_SEAL_WRITE);
}

static bool f_future_write_seal(struct reply *r)
{
	return seals(r, SEALS_ALL | F_SEAL_FUTURE_WRITE);
}

static bool sized(struct reply *r, uint64_t fsize)
{
	two(r, forge_region(RING, fsize, true, SEALS_ALL, NULL),
	    good_doorbell(&r->keep[0]));
	return true;
}

static bool f_size_100(struct reply *r)
{
	return sized(r, 100);
}

static bool f_size_0(struct reply *r)
{
	return sized(r, 0);
}

static bool f_size_page_more(struct reply *r)
{
	return sized(r, region_bytes(RING) + 4096);
}

static bool f_size_page_less(struct reply *r)
{
	return sized(r, region_bytes(RING) - 4096);
}

static void m_ring_1g(struct ivmc_shm_hdr *h)
{
	h->ring_size = 1u << 30;
	h->region_size = region_bytes(1u << 30);
}

static bool f_claims_1g(struct reply *r)
{
	two(r,
	    forge_region(RING, region_bytes(RING), true, SEALS_ALL, m_ring_1g),
	    good_doorbell(&r->keep[0]));
	return true;
}

static bool f_disk_file(struct reply *r)
{
	int fd = t_file_in(t_dir, false, region_bytes(RING));

	if (fd < 0)
		fd = t_file_in("/var/tmp", false, region_bytes(RING));
	if (fd < 0)
		return false;
	two(r, fd, good_doorbell(&r->keep[0]));
	return true;
}

static bool f_tmpfs_file(struct reply *r)
{
	int fd = t_file_in("/dev/shm", true, region_bytes(RING));

	if (fd < 0)
		return false;
	two(r, fd, good_doorbell(&r->keep[0]));
	return true;
}

static bool f_pipe_region(struct reply *r)
{
	int p[2];

	T_ASSERT(pipe2(p, O_CLOEXEC) == 0);
	r->keep[1] = p[1];
	two(r, p[0], good_doorbell(&r->keep[0]));
	return true;
}

static bool f_devzero_region(struct reply *r)
{
	int fd = open("/dev/zero", O_RDWR | O_CLOEXEC);

	T_ASSERT(fd >= 0);
	two(r, fd, good_doorbell(&r->keep[0]));
	return true;
}

static bool f_dir_region(struct reply *r)
{
	int fd = open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC);

	T_ASSERT(fd >= 0);
	two(r, fd, good_doorbell(&r->keep[0]));
	return true;
}

static bool f_socket_region(struct reply *r)
{
	two(r, sock(AF_UNIX, SOCK_STREAM), good_doorbell(&r->keep[0]));
	return true;
}

static bool f_pipe_doorbell(struct reply *r)
{
	int p[2];

	T_ASSERT(pipe2(p, O_CLOEXEC) == 0);
	r->keep[0] = p[1];
	two(r, good_region(), p[0]);
	return true;
}

static bool f_eventfd_doorbell(struct reply *r)
{
	int fd = eventfd(0, EFD_CLOEXEC);

	T_ASSERT(fd >= 0);
	two(r, good_region(), fd);
	return true;
}

static bool f_memfd_doorbell(struct reply *r)
{
	two(r, good_region(), good_region());
	return true;
}

static bool f_udp_doorbell(struct reply *r)
{
	two(r, good_region(), sock(AF_INET, SOCK_DGRAM));
	return true;
}

static bool f_tcp_doorbell(struct reply *r)
{
	two(r, good_region(), sock(AF_INET, SOCK_STREAM));
	return true;
}

static bool unix_pair_doorbell(struct reply *r, int type)
{
	int sv[2];

	T_ASSERT(socketpair(AF_UNIX, type | SOCK_CLOEXEC, 0, sv) == 0);
	r->keep[0] = sv[0];
	two(r, good_region(), sv[1]);
	return true;
}

static bool f_dgram_doorbell(struct reply *r)
{
	return unix_pair_doorbell(r, SOCK_DGRAM);
}

static bool f_seqpacket_doorbell(struct reply *r)
{
	return unix_pair_doorbell(r, SOCK_SEQPACKET);
}

static bool f_swapped(struct reply *r)
{
	int db = good_doorbell(&r->keep[0]);

	two(r, db, good_region());
	return true;
}

static bool f_one_fd(struct reply *r)
{
	two(r, good_region(), -1);
	r->nfds = 1;
	return true;
}

static bool f_three_fds(struct reply *r)
{
	two(r, good_region(), good_doorbell(&r->keep[0]));
	r->fds[2] = good_region();
	r->nfds = 3;
	return true;
}

static bool f_no_fds(struct reply *r)
{
	r->m = accept_msg();
	r->len = sizeof(r->m);
	return true;
}

static bool f_short_10(struct reply *r)
{
	two(r, good_region(), good_doorbell(&r->keep[0]));
	r->len = 10;
	return true;
}

static bool f_short_31(struct reply *r)
{
	two(r, good_region(), good_doorbell(&r->keep[0]));
	r->len = 31;
	return true;
}

static bool f_long_64(struct reply *r)
{
	struct rdv_msg m = accept_msg();

	two(r, good_region(), good_doorbell(&r->keep[0]));
	memcpy(r->raw, &m, sizeof(m));
	r->raw_len = 64;
	return true;
}

static bool f_garbage(struct reply *r)
{
	uint64_t rng = 77;

	two(r, good_region(), good_doorbell(&r->keep[0]));
	for (size_t i = 0; i < 32; i++)
		r->raw[i] = (uint8_t)t_rand64(&rng);
	r->raw_len = 32;
	return true;
}

static bool f_bad_magic(struct reply *r)
{
	two(r, good_region(), good_doorbell(&r->keep[0]));
	r->m.magic ^= 1;
	return true;
}

static bool f_bad_version(struct reply *r)
{
	two(r, good_region(), good_doorbell(&r->keep[0]));
	r->m.version = 2;
	return true;
}

static bool f_reserved_set(struct reply *r)
{
	two(r, good_region(), good_doorbell(&r->keep[0]));
	r->m.reserved[3] = 1;
	return true;
}

static bool f_hello_back(struct reply *r)
{
	two(r, good_region(), good_doorbell(&r->keep[0]));
	r->m.type = RDV_HELLO;
	return true;
}

static bool reject(struct reply *r, int32_t status)
{
	r->m = reject_msg(status);
	r->len = sizeof(r->m);
	return true;
}

static bool f_reject_0(struct reply *r)
{
	return reject(r, 0);
}

static bool f_reject_100000(struct reply *r)
{
	return reject(r, 100000);
}

static bool f_reject_negative(struct reply *r)
{
	return reject(r, -EACCES);
}

static bool f_reject_int_min(struct reply *r)
{
	return reject(r, INT32_MIN);
}

static bool f_reject_eacces(struct reply *r)
{
	return reject(r, EACCES);
}

static bool f_reject_bad_magic(struct reply *r)
{
	reject(r, EACCES);
	r->m.magic = ~RDV_MAGIC;
	return true;
}

static bool f_reject_reserved(struct reply *r)
{
	reject(r, EACCES);
	r->m.reserved[0] = 7;
	return true;
}

static bool f_reject_with_fds(struct reply *r)
{
	two(r, good_region(), good_doorbell(&r->keep[0]));
	r->m = reject_msg(EACCES);
	return true;
}

static bool f_hang_up(struct reply *r)
{
	r->hang_up = true;
	return true;
}

static bool f_silent(struct reply *r)
{
	r->silent = true;
	return true;
}

static bool mutated(struct reply *r, void (*mut)(struct ivmc_shm_hdr *),
		    uint64_t fsize)
{
	two(r, forge_region(RING, fsize, true, SEALS_ALL, mut),
	    good_doorbell(&r->keep[0]));
	return true;
}

static void m_magic(struct ivmc_shm_hdr *h)
{
	h->magic = 0xdeadbeef;
}

static void m_version(struct ivmc_shm_hdr *h)
{
	h->version = IVMC_SHM_VERSION + 1;
}

static void m_hdr_size(struct ivmc_shm_hdr *h)
{
	h->hdr_size = 8192;
}

static void m_ring_5000(struct ivmc_shm_hdr *h)
{
	h->ring_size = 5000;
	h->region_size = region_bytes(5000);
}

static void m_ring_2048(struct ivmc_shm_hdr *h)
{
	h->ring_size = 2048;
	h->region_size = region_bytes(2048);
}

static void m_ring_0(struct ivmc_shm_hdr *h)
{
	h->ring_size = 0;
	h->region_size = region_bytes(0);
}

static void m_ring_2g(struct ivmc_shm_hdr *h)
{
	h->ring_size = 1u << 31;
	h->region_size = region_bytes(1u << 31);
}

static void m_region_size(struct ivmc_shm_hdr *h)
{
	h->region_size += 4096;
}

static void m_flags(struct ivmc_shm_hdr *h)
{
	h->flags = 0x80;
}

static void m_side_flag(struct ivmc_shm_hdr *h)
{
	h->flags = IVMC_SHM_F_SIDE;
}

static void m_reserved(struct ivmc_shm_hdr *h)
{
	h->reserved[5] = 1;
}

static bool f_hdr_magic(struct reply *r)
{
	return mutated(r, m_magic, region_bytes(RING));
}

static bool f_hdr_version(struct reply *r)
{
	return mutated(r, m_version, region_bytes(RING));
}

static bool f_hdr_size(struct reply *r)
{
	return mutated(r, m_hdr_size, region_bytes(RING));
}

static bool f_hdr_ring_5000(struct reply *r)
{
	return mutated(r, m_ring_5000, region_bytes(5000));
}

static bool f_hdr_ring_2048(struct reply *r)
{
	return mutated(r, m_ring_2048, region_bytes(2048));
}

static bool f_hdr_ring_0(struct reply *r)
{
	return mutated(r, m_ring_0, region_bytes(0));
}

static bool f_hdr_ring_2g(struct reply *r)
{
	return mutated(r, m_ring_2g, region_bytes(1u << 31)); /* sparse */
}

static bool f_hdr_region_size(struct reply *r)
{
	return mutated(r, m_region_size, region_bytes(RING));
}

static bool f_hdr_flags(struct reply *r)
{
	return mutated(r, m_flags, region_bytes(RING));
}

static bool f_hdr_side_flag(struct reply *r)
{
	return mutated(r, m_side_flag, region_bytes(RING));
}

static bool f_hdr_reserved(struct reply *r)
{
	return mutated(r, m_reserved, region_bytes(RING));
}

/* A large area of deep bytes, the region's size claiming it. */
static void with_deep(struct ivmc_shm_hdr *h, uint32_t deep)
{
	h->deep_size = deep;
	h->region_size = region_bytes(RING) + 2 * (uint64_t)deep;
}

static void m_deep_5000(struct ivmc_shm_hdr *h)
{
	with_deep(h, 5000);
}

static void m_deep_small(struct ivmc_shm_hdr *h)
{
	with_deep(h, RING / 2);
}

static bool f_hdr_deep_5000(struct reply *r)
{
	return mutated(r, m_deep_5000, region_bytes(RING) + 10000);
}

static bool f_hdr_deep_small(struct reply *r)
{
	return mutated(r, m_deep_small, region_bytes(RING) + RING);
}

#define W1(a) { a }, 1
#define W2(a, b) { a, b }, 2
#define W3(a, b, c) { a, b, c }, 3

static const struct scenario scenarios[] = {
	{ "control: a valid answer", f_control, W1(0) },
	{ "unsealed memfd", f_unsealed, W1(-EPERM) },
	{ "memfd that cannot be sealed", f_no_sealing, W1(-EPERM) },
	{ "memfd sealed SHRINK|GROW (no SEAL)", f_shrink_grow, W1(-EPERM) },
	{ "memfd sealed SHRINK|SEAL (no GROW)", f_shrink_seal, W1(-EPERM) },
	{ "memfd sealed GROW|SEAL (no SHRINK)", f_grow_seal, W1(-EPERM) },
	{ "memfd also sealed WRITE", f_write_seal, W1(-EPERM) },
	{ "memfd also sealed FUTURE_WRITE", f_future_write_seal, W1(-EPERM) },
	{ "sealed memfd of 100 bytes", f_size_100, W2(-EMSGSIZE, -EPROTO) },
	{ "sealed memfd of 0 bytes", f_size_0, W2(-EMSGSIZE, -EPROTO) },
	{ "sealed memfd a page larger than its header says", f_size_page_more,
	  W2(-EMSGSIZE, -EPROTO) },
	{ "sealed memfd a page smaller than its header says", f_size_page_less,
	  W2(-EMSGSIZE, -EPROTO) },
	{ "sealed 12 KiB memfd whose header claims 1 GiB rings", f_claims_1g,
	  W2(-EMSGSIZE, -EPROTO) },
	{ "regular file on disk", f_disk_file, W1(-EBADFD) },
	{ "regular file on tmpfs (not a memfd)", f_tmpfs_file,
	  W2(-EBADFD, -EPERM) },
	{ "pipe as the region", f_pipe_region, W1(-EBADFD) },
	{ "/dev/zero as the region", f_devzero_region, W1(-EBADFD) },
	{ "directory as the region", f_dir_region, W1(-EBADFD) },
	{ "socket as the region", f_socket_region, W1(-EBADFD) },
	{ "pipe as the doorbell", f_pipe_doorbell, W1(-ENOTSOCK) },
	{ "eventfd as the doorbell", f_eventfd_doorbell, W1(-ENOTSOCK) },
	{ "memfd as the doorbell", f_memfd_doorbell, W1(-ENOTSOCK) },
	{ "UDP socket as the doorbell", f_udp_doorbell, W1(-EPROTOTYPE) },
	{ "TCP socket as the doorbell", f_tcp_doorbell, W1(-EPROTOTYPE) },
	{ "AF_UNIX SOCK_DGRAM doorbell", f_dgram_doorbell, W1(-EPROTOTYPE) },
	{ "AF_UNIX SOCK_SEQPACKET doorbell", f_seqpacket_doorbell,
	  W1(-EPROTOTYPE) },
	{ "doorbell and region swapped", f_swapped, W2(-EBADFD, -ENOTSOCK) },
	{ "one fd instead of two", f_one_fd, W1(-EPROTO) },
	{ "three fds instead of two", f_three_fds, W1(-EPROTO) },
	{ "accept without fds", f_no_fds, W1(-EPROTO) },
	{ "accept truncated to 10 bytes", f_short_10, W1(-EPROTO) },
	{ "accept truncated to 31 bytes", f_short_31, W1(-EPROTO) },
	{ "64-byte reply", f_long_64, W1(-EPROTO) },
	{ "32 bytes of garbage with two good fds", f_garbage, W1(-EPROTO) },
	{ "accept with a bad magic", f_bad_magic, W1(-EPROTO) },
	{ "accept with version 2", f_bad_version, W1(-EPROTO) },
	{ "accept with a reserved word set", f_reserved_set, W1(-EPROTO) },
	{ "a hello instead of an accept", f_hello_back, W1(-EPROTO) },
	{ "reject with status 0", f_reject_0, W1(-EPROTO) },
	{ "reject with status 100000", f_reject_100000, W1(-EPROTO) },
	{ "reject with status -EACCES", f_reject_negative, W1(-EPROTO) },
	{ "reject with status INT32_MIN", f_reject_int_min, W1(-EPROTO) },
	{ "reject with EACCES (genuine)", f_reject_eacces, W1(-EACCES) },
	{ "reject with a bad magic", f_reject_bad_magic, W1(-EPROTO) },
	{ "reject with a reserved word set", f_reject_reserved, W1(-EPROTO) },
	{ "reject carrying two fds", f_reject_with_fds, W2(-EPROTO, -EACCES) },
	{ "listener hangs up without answering", f_hang_up,
	  W3(-ECONNRESET, -EPIPE, -EPROTO) },
	{ "header: bad magic", f_hdr_magic, W1(-EPROTO) },
	{ "header: bad version", f_hdr_version, W1(-EPROTO) },
	{ "header: hdr_size 8192", f_hdr_size, W1(-EPROTO) },
	{ "header: ring_size 5000 (sizes consistent)", f_hdr_ring_5000,
	  W1(-EPROTO) },
	{ "header: ring_size 2048 (sizes consistent)", f_hdr_ring_2048,
	  W1(-EPROTO) },
	{ "header: ring_size 0", f_hdr_ring_0, W1(-EPROTO) },
	{ "header: ring_size 2 GiB (sizes consistent)", f_hdr_ring_2g,
	  W1(-EPROTO) },
	{ "header: region_size off by a page", f_hdr_region_size, W1(-EPROTO) },
	{ "header: unknown flag", f_hdr_flags, W1(-EPROTO) },
	{ "header: side-stream flag on an API channel", f_hdr_side_flag,
	  W1(-EPROTO) },
	{ "header: reserved word set", f_hdr_reserved, W1(-EPROTO) },
	{ "header: deep_size 5000 (sizes consistent)", f_hdr_deep_5000,
	  W1(-EPROTO) },
	{ "header: deep_size 2048 (below the ring)", f_hdr_deep_small,
	  W1(-EPROTO) },
	/* Last: it takes the whole 5 s reply timeout. */
	{ "listener never answers", f_silent, W1(-ETIMEDOUT) },
};

#define N_SCEN (sizeof(scenarios) / sizeof(scenarios[0]))

static bool wanted(const struct scenario *s, int r)
{
	for (int i = 0; i < s->nwant; i++)
		if (s->want[i] == r)
			return true;
	return false;
}

static void listen_raw(void)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };

	unlink(path);
	lfd = sock(AF_UNIX, SOCK_SEQPACKET);
	strcpy(sa.sun_path, path);
	T_ASSERT(bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) == 0);
	T_ASSERT(listen(lfd, 8) == 0);
}

static void run_scenario(const struct scenario *s)
{
	struct ivmc_chan *c = NULL;
	int fds0, maps0, r, st;
	uint64_t t0;
	pid_t pid;

	listen_raw();
	pid = t_fork(fake_listener, (void *)s);
	close(lfd);
	fds0 = t_count_fds();
	maps0 = t_count_maps();
	t0 = t_now_ns();
	r = ivmc_connect(path, NULL, &c);
	t0 = (t_now_ns() - t0) / 1000000;
	if (!wanted(s, r)) {
		t_late_fail(
			"forged \"%s\": ivmc_connect = %d (%s), want %d (%s)%s",
			s->what, r, t_strerror(r), s->want[0],
			t_strerror(s->want[0]),
			s->nwant > 1 ? " or another listed" : "");
	} else if (r == 0) {
		char buf[5];

		t_recv_all(c, buf, 5);
		T_ASSERT(!memcmp(buf, "hello", 5));
	}
	if (r == 0)
		T_ASSERT_OK(ivmc_close(c));
	if (r == -ETIMEDOUT && (t0 < 4000 || t0 > 8000))
		t_late_fail(
			"forged \"%s\": -ETIMEDOUT after %llu ms, want about 5 s",
			s->what, (unsigned long long)t0);
	if (r != -ETIMEDOUT && t0 > 3000)
		t_late_fail("forged \"%s\": ivmc_connect took %llu ms", s->what,
			    (unsigned long long)t0);
	if (t_count_fds() != fds0)
		t_late_fail(
			"forged \"%s\": %d fds before ivmc_connect, %d after",
			s->what, fds0, t_count_fds());
	if (t_count_maps() != maps0)
		t_late_fail(
			"forged \"%s\": %d mappings before ivmc_connect, %d after",
			s->what, maps0, t_count_maps());
	st = t_wait(pid, 12000);
	if (st)
		t_late_fail(
			"forged \"%s\": the fake listener failed (status %d)",
			s->what, st);
	unlink(path);
}

/* Skip the scenarios this machine cannot forge (no disk, no /dev/shm). */
static bool can_forge(const struct scenario *s)
{
	struct reply r = { .keep = { -1, -1, -1, -1 } };
	bool ok = s->forge == f_silent || s->forge == f_hang_up ||
		  s->forge == f_control;

	if (!ok) {
		ok = s->forge(&r);
		for (int i = 0; i < r.nfds; i++)
			if (r.fds[i] >= 0)
				close(r.fds[i]);
		for (int i = 0; i < 4; i++)
			if (r.keep[i] >= 0)
				close(r.keep[i]);
	}
	if (!ok)
		printf("skipped \"%s\": cannot be forged here\n", s->what);
	return ok;
}

/* ---- a doorbell that is an unconnected stream socket ---- */

/* The type is right, but nobody is at the other end. ivmc_connect may
 * refuse it; if it takes it, a blocking recv must not spin on it. */
static bool f_lonely_doorbell(struct reply *r)
{
	two(r, good_region(), sock(AF_UNIX, SOCK_STREAM));
	return true;
}

static const struct scenario lonely = { "unconnected AF_UNIX stream doorbell",
					f_lonely_doorbell, W1(0) };

struct recv_arg {
	struct ivmc_chan *c;
	ssize_t r;
	_Atomic int done;
};

static void *lonely_recv(void *arg)
{
	struct recv_arg *ra = arg;
	char x;

	ra->r = ivmc_recv(ra->c, &x, 1, 0);
	ra->done = 1;
	return NULL;
}

/* Exit codes of the child below. */
#define LONELY_REFUSED 10
#define LONELY_ENDED 11
#define LONELY_WAITS 12
#define LONELY_SPINS 13

static void lonely_child(void *arg)
{
	struct recv_arg ra = { 0 };
	uint64_t cpu0, t0;
	pthread_t t;
	int r;

	(void)arg;
	r = ivmc_connect(path, NULL, &ra.c);
	if (r)
		_exit(LONELY_REFUSED);
	cpu0 = t_cpu_ns();
	t0 = t_now_ns();
	T_ASSERT(pthread_create(&t, NULL, lonely_recv, &ra) == 0);
	while (!ra.done && t_now_ns() - t0 < 1000000000ull)
		usleep(10000);
	if (ra.done) {
		pthread_join(t, NULL);
		_exit(ra.r == 0 || ra.r == -ECONNRESET || ra.r == -EPIPE ?
			      LONELY_ENDED :
			      T_FAIL);
	}
	/* Still in recv after 1 s: sleeping, or spinning? */
	cpu0 = t_cpu_ns() - cpu0;
	fprintf(stderr,
		"unconnected doorbell: recv still blocked after 1 s, %llu ms of CPU used\n",
		(unsigned long long)(cpu0 / 1000000));
	_exit(cpu0 > 500000000ull ? LONELY_SPINS : LONELY_WAITS);
}

static void lonely_doorbell(void)
{
	int st;
	pid_t fake, victim;

	listen_raw();
	fake = t_fork(fake_listener, (void *)&lonely);
	close(lfd);
	victim = t_fork(lonely_child, NULL);
	st = t_wait(victim, 5000);
	t_wait(fake, 12000);
	unlink(path);
	switch (st) {
	case LONELY_REFUSED:
	case LONELY_ENDED:
		break;
	case LONELY_WAITS:
		printf("unconnected doorbell: accepted; a blocking recv sleeps (no peer can ever ring it)\n");
		break;
	case LONELY_SPINS:
		t_late_fail(
			"a doorbell that is an unconnected AF_UNIX stream socket is accepted, and a blocking recv on the channel then spins at full CPU (more than 0.5 s of CPU in 1 s)");
		break;
	default:
		t_late_fail(
			"unconnected doorbell: the victim failed (status %d)",
			st);
	}
}

/* ---- the listener side: hostile clients ---- */

static int raw_connect(const char *p)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int fd = sock(AF_UNIX, SOCK_SEQPACKET);

	strcpy(sa.sun_path, p);
	T_ASSERT(connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0);
	return fd;
}

static struct rdv_msg hello_msg(void)
{
	return (struct rdv_msg){ .magic = RDV_MAGIC,
				 .version = RDV_VERSION,
				 .type = RDV_HELLO };
}

static void good_client(void *arg)
{
	struct ivmc_chan *c;
	char buf[5];

	T_ASSERT_OK(ivmc_connect(arg, NULL, &c));
	t_recv_all(c, buf, 5);
	T_ASSERT(!memcmp(buf, "howdy", 5));
	T_ASSERT_OK(ivmc_close(c));
}

/* After a hostile client: a normal one still gets a channel. */
static void still_serves(struct ivmc_listener *l, const char *p,
			 const char *after)
{
	pid_t pid = t_fork(good_client, (void *)p);
	struct ivmc_chan *c;
	int r = ivmc_accept(l, 0, &c);

	if (r)
		t_fail("after %s, a normal client: accept %d (%s)", after, r,
		       t_strerror(r));
	t_send_all(c, "howdy", 5);
	if (t_wait(pid, 10000))
		t_fail("after %s, a normal client failed", after);
	T_ASSERT_OK(ivmc_close(c));
}

enum hostile {
	H_GARBAGE,
	H_HELLO_FDS,
	H_SHORT,
	H_LONG,
	H_EMPTY,
	H_NOTHING,
	H_HANGUP,
	H_BAD_VERSION,
	H_RESERVED,
	H_WRONG_TYPE,
	H_BAD_RING,
	H_HELLO_THEN_HANGUP,
	H_COUNT
};

static const char *const hostile_name[H_COUNT] = {
	"32 bytes of garbage",
	"a hello carrying fds",
	"a 10-byte message",
	"a 100-byte message",
	"an empty message",
	"nothing at all",
	"a hang-up before the hello",
	"a hello of version 2",
	"a hello with a reserved word set",
	"an accept instead of a hello",
	"a hello wishing for a 5000-byte ring",
	"a hello, then a hang-up",
};

static void hostile_send(int fd, enum hostile h)
{
	struct rdv_msg m = hello_msg();
	uint8_t big[100] = { 0 };
	uint64_t rng = 5;

	switch (h) {
	case H_GARBAGE:
		for (size_t i = 0; i < sizeof(m); i++)
			((uint8_t *)&m)[i] = (uint8_t)t_rand64(&rng);
		break;
	case H_HELLO_FDS: {
		struct reply r = { .m = m, .len = sizeof(m) };
		int p[2];

		T_ASSERT(pipe2(p, O_CLOEXEC) == 0);
		r.fds[0] = p[0];
		r.fds[1] = p[1];
		r.fds[2] = good_region();
		r.nfds = 3;
		send_reply(fd, &r);
		for (int i = 0; i < 3; i++)
			close(r.fds[i]);
		return;
	}
	case H_SHORT:
		T_ASSERT(send(fd, &m, 10, 0) == 10);
		return;
	case H_LONG:
		memcpy(big, &m, sizeof(m));
		T_ASSERT(send(fd, big, sizeof(big), 0) == sizeof(big));
		return;
	case H_EMPTY:
		T_ASSERT(send(fd, &m, 0, 0) == 0);
		return;
	case H_NOTHING:
	case H_HANGUP:
		return;
	case H_BAD_VERSION:
		m.version = 2;
		break;
	case H_RESERVED:
		m.reserved[0] = 1;
		break;
	case H_WRONG_TYPE:
		m.type = RDV_ACCEPT;
		break;
	case H_BAD_RING:
		m.ring_size = 5000;
		break;
	case H_HELLO_THEN_HANGUP:
	case H_COUNT:
		break;
	}
	T_ASSERT(send(fd, &m, sizeof(m), 0) == sizeof(m));
}

static void listener_side(void)
{
	struct ivmc_listener *l;
	char p[128];
	int fds0;

	t_path(p, sizeof(p), "real.sock");
	T_ASSERT_OK(ivmc_listen(p, NULL, &l));
	fds0 = t_count_fds();
	for (int h = 0; h < H_COUNT; h++) {
		int fd = raw_connect(p), r;
		struct ivmc_chan *c = NULL;
		uint64_t ms;

		hostile_send(fd, (enum hostile)h);
		if (h == H_HANGUP || h == H_HELLO_THEN_HANGUP)
			close(fd);
		ms = t_now_ns();
		r = ivmc_accept(l, 0, &c);
		ms = (t_now_ns() - ms) / 1000000;
		if (h == H_HELLO_THEN_HANGUP) {
			/* A proper hello: a channel nobody will use is fine. */
			if (r == 0)
				T_ASSERT_OK(ivmc_close(c));
		} else if (r >= 0) {
			t_late_fail("accept after %s gave a channel",
				    hostile_name[h]);
			T_ASSERT_OK(ivmc_close(c));
		}
		if (ms > 2500)
			t_late_fail(
				"accept after %s took %llu ms, want about 1 s at most",
				hostile_name[h], (unsigned long long)ms);
		if (h != H_HANGUP && h != H_HELLO_THEN_HANGUP)
			close(fd);
		if (t_count_fds() != fds0)
			t_late_fail("after %s: %d fds, %d before",
				    hostile_name[h], t_count_fds(), fds0);
		still_serves(l, p, hostile_name[h]);
	}
	T_ASSERT_EQ(t_count_fds(), fds0);
	T_ASSERT_OK(ivmc_listener_close(l));
}

int main(void)
{
	int fds0;

	t_alarm(55);
	t_tmpdir();
	t_path(path, sizeof(path), "fake.sock");
	fds0 = t_count_fds();
	for (size_t i = 0; i < N_SCEN; i++)
		if (can_forge(&scenarios[i]))
			run_scenario(&scenarios[i]);
	lonely_doorbell();
	listener_side();
	T_ASSERT_EQ(t_count_fds(), fds0);
	return t_late_failures ? T_FAIL : T_PASS;
}
