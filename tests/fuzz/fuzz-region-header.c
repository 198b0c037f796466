/* SPDX-License-Identifier: MIT */
/*
 * Description: fuzz target: the input is the header page of a region (a
 * sealed memfd of 4096 + 2(R + L) bytes whose first page is the input,
 * L the header's deep_size, 0 or a power of two >= R), opened
 * with chan_open() as either side, with or without a side stream. Asserts:
 * chan_open() returns exactly what docs/protocol.md (1.1) prescribes for
 * that page and file size (-EPROTO, -EMSGSIZE or success); a region that
 * opens opens from the other side too, and the pair works: bytes arrive
 * intact when the direction words are as the creator writes them (even
 * after the header is scribbled on: it is never read again), and otherwise
 * every call succeeds or fails cleanly and a dead end stays dead; no leaks.
 * With an L small enough, a second exchange sends more than the ring, so
 * that the producer goes deep (into L) at a counter the header chose, and
 * a third comes back to S.
 *
 * Input: byte 0 = selector (bit 0: open side 0 or 1 first; bit 1: side
 * stream; bits 2-3: file size; bit 4: scribble the header after opening),
 * bytes 1.. = the header page (the rest of the page is zero).
 */
#include <errno.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include "chan/chan.h"
#include "chan/shm_layout.h"
#include "fuzz.h"

/* Not used here: loads are left as they are. */
uint64_t ivmc_fuzz_shm(const volatile void *p, uint64_t v, size_t size)
{
	(void)p;
	(void)size;
	return v;
}

/* The deep exchange's largest ring and L (each side sends R + L / 2). */
#define DEEP_RING_MAX (16u << 10)
#define DEEP_MAX      (64u << 10)

static bool ring_size_ok(uint32_t rs)
{
	return rs >= IVMC_RING_MIN && rs <= IVMC_RING_MAX && !(rs & (rs - 1));
}

/* deep_size: 0 (no L), or a power of two in [ring_size, IVMC_RING_MAX]. */
static bool deep_size_ok(uint32_t ds, uint32_t rs)
{
	return !ds || (ring_size_ok(ds) && ds >= rs);
}

/* What docs/protocol.md 1.1 says chan_open() must return (and
 * src/chan/shm_layout.h, version 2: deep_size took reserved[0]). */
static int expected(const struct ivmc_shm_hdr *h, uint64_t fsize, bool side)
{
	if (h->magic != IVMC_SHM_MAGIC || h->version != IVMC_SHM_VERSION ||
	    h->hdr_size != IVMC_SHM_HDR_SIZE || (h->flags & ~IVMC_SHM_F_SIDE))
		return -EPROTO;
	for (size_t i = 0; i < sizeof(h->reserved) / sizeof(h->reserved[0]); i++)
		if (h->reserved[i])
			return -EPROTO;
	if (!ring_size_ok(h->ring_size) ||
	    !deep_size_ok(h->deep_size, h->ring_size) ||
	    h->region_size != IVMC_SHM_HDR_SIZE +
				      2 * ((uint64_t)h->ring_size + h->deep_size))
		return -EPROTO;
	if (fsize != h->region_size)
		return -EMSGSIZE;
	if (!(h->flags & IVMC_SHM_F_SIDE) != !side)
		return -EPROTO;
	return 0;
}

/* Are the direction words as chan_region_create() writes them? The deep
 * word too (not DEEP, X the starting counter) when there is an L; without
 * one it is never read, whatever it holds. */
static bool pristine(const struct ivmc_shm_hdr *h)
{
	bool side = h->flags & IVMC_SHM_F_SIDE;
	uint32_t e = side ? 0 : 1;

	for (int d = 0; d < 2; d++) {
		const struct ivmc_shm_dir *s = &h->dir[d];
		uint64_t w = ivmc_w_make(e, h->init_ctr[d]);

		if (s->prod != (w | (side ? IVMC_PW_CLOSED : 0)) ||
		    s->cons != w || s->attach || s->fin)
			return false;
		if (h->deep_size &&
		    s->deep != ivmc_deep_make(false, h->init_ctr[d]))
			return false;
	}
	return true;
}

static int make_region(const uint8_t *page, uint64_t size)
{
	int fd = memfd_create("fuzz-region", MFD_CLOEXEC | MFD_ALLOW_SEALING);

	FZ_ASSERT(fd >= 0, "memfd_create");
	FZ_ASSERT(!ftruncate(fd, (off_t)size), "ftruncate %llu",
		  (unsigned long long)size);
	FZ_ASSERT(pwrite(fd, page, IVMC_SHM_HDR_SIZE, 0) == IVMC_SHM_HDR_SIZE,
		  "pwrite");
	FZ_ASSERT(!fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL),
		  "seals");
	return fd;
}

static ssize_t send1(struct chan *c, const void *p, size_t n)
{
	struct iovec v = { (void *)p, n };

	return chan_sendv(c, &v, 1, CHAN_NONBLOCK);
}

static ssize_t recv1(struct chan *c, void *p, size_t n)
{
	struct iovec v = { p, n };

	return chan_recvv(c, &v, 1, CHAN_NONBLOCK | CHAN_WAITALL);
}

/* n bytes (stream offset off) from -> to: exact when the words are
 * pristine, else clean. The receiver takes what arrived in one call. */
static void exchange(struct chan *from, struct chan *to, int dir, uint64_t off,
		     size_t n, bool exact)
{
	static uint8_t out[DEEP_RING_MAX + DEEP_MAX / 2], in[sizeof(out)];
	ssize_t s, r;

	fz_fill(dir, off, out, n);
	s = send1(from, out, n);
	r = recv1(to, in, n);
	if (exact) {
		FZ_ASSERT(s == (ssize_t)n, "send %zu at %llu: %zd", n,
			  (unsigned long long)off, s);
		FZ_ASSERT(r == s && !memcmp(in, out, n), "recv %zu at %llu: %zd",
			  n, (unsigned long long)off, r);
		return;
	}
	FZ_ASSERT((s > 0 && s <= (ssize_t)n) || s == -EAGAIN ||
			  s == -EPIPE || s == -ECONNRESET, "send: %zd", s);
	FZ_ASSERT((r >= 0 && r <= (ssize_t)n) || r == -EAGAIN ||
			  r == -ECONNRESET, "recv: %zd", r);
	if (s == -ECONNRESET)
		FZ_ASSERT(send1(from, out, 1) == -ECONNRESET, "dead send lived");
	if (r == -ECONNRESET)
		FZ_ASSERT(recv1(to, in, 1) == -ECONNRESET, "dead recv lived");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct ivmc_shm_hdr hdr; /* the page, as a struct */
	static uint8_t page[IVMC_SHM_HDR_SIZE];
	uint8_t sel = size ? data[0] : 0;
	int first = sel & 1, fds = fz_fd_count();
	bool side = sel & 2;
	struct chan *c[2] = { NULL, NULL };
	int region, db[2], ss[2] = { -1, -1 }, want, err;
	uint64_t fsize, good;

	memset(page, 0, sizeof(page));
	if (size > 1)
		memcpy(page, data + 1, size - 1 < sizeof(page) ? size - 1 : sizeof(page));
	memcpy(&hdr, page, sizeof(hdr));
	good = ring_size_ok(hdr.ring_size) ? hdr.ring_size : 4096;
	good = IVMC_SHM_HDR_SIZE +
	       2 * (good + (deep_size_ok(hdr.deep_size, (uint32_t)good) ?
				    hdr.deep_size : 0));
	switch ((sel >> 2) & 3) {
	case 0: fsize = good; break;
	case 1: fsize = IVMC_SHM_HDR_SIZE + 2 * 4096; break;
	case 2: /* what the header claims, if it is a size we can make */
		fsize = hdr.region_size >= IVMC_SHM_HDR_SIZE &&
				hdr.region_size <= IVMC_SHM_HDR_SIZE + 4ull * IVMC_RING_MAX
			? hdr.region_size : good;
		break;
	default: fsize = good == IVMC_SHM_HDR_SIZE + 2 * 4096 ? IVMC_SHM_HDR_SIZE
							   : good - 4096;
	}
	region = make_region(page, fsize);
	FZ_ASSERT(!socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, db), "socketpair");
	if (side)
		FZ_ASSERT(!socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, ss),
			  "socketpair");
	want = expected(&hdr, fsize, side);
	if (getenv("FZ_TRACE")) /* to read a reproducer */
		fprintf(stderr, "file %llu bytes, side stream %d: expect %d%s\n",
			(unsigned long long)fsize, side, want,
			!want && pristine(&hdr) ? " (pristine words)" : "");
	for (int i = 0; i < 2; i++) {
		int s = i ? 1 - first : first;
		struct chan_cfg cfg = { .side = s, .side_fd = ss[s],
					.wait_mode = CHAN_WAIT_SLEEP };

		err = chan_open(&cfg, region, db[s], &c[s]);
		FZ_ASSERT(err == want, "chan_open side %d: %d, docs say %d", s,
			  err, want);
		if (err) {
			close(db[s]);
			c[s] = NULL;
		}
	}
	if (!want) {
		bool exact = pristine(&hdr);

		if (sel & 0x10) { /* never read again after the open */
			uint8_t junk[64];

			memset(junk, sel, sizeof(junk));
			FZ_ASSERT(pwrite(region, junk, sizeof(junk), 0) ==
					  (ssize_t)sizeof(junk), "pwrite");
		}
		exchange(c[0], c[1], 0, 0, 64, exact);
		exchange(c[1], c[0], 1, 0, 64, exact);
		if (hdr.deep_size && hdr.ring_size <= DEEP_RING_MAX &&
		    hdr.deep_size <= DEEP_MAX) {
			/* S fills, the rest goes to L; then back to S. */
			size_t n = hdr.ring_size + hdr.deep_size / 2;

			for (int d = 0; d < 2; d++) {
				exchange(c[d], c[1 - d], d, 64, n, exact);
				exchange(c[d], c[1 - d], d, 64 + n, 64, exact);
			}
		}
		for (int d = 0; d < 2 && getenv("FZ_TRACE"); d++) {
			struct chan_stats st;

			chan_stats(c[d], &st);
			fprintf(stderr, "side %d went deep %llu times%s\n", d,
				(unsigned long long)st.deeps,
				st.tx_deep ? ", is deep" : "");
		}
	}
	for (int s = 0; s < 2; s++) {
		if (c[s])
			chan_close(c[s]);
		if (ss[s] >= 0)
			close(ss[s]);
	}
	close(region);
	FZ_ASSERT(fz_fd_count() == fds, "descriptors leaked");
	return 0;
}
