/* SPDX-License-Identifier: MIT */
/*
 * Description: fuzz target: a channel pair in one process, end a (side 0)
 * the victim, end b (side 1) an honest peer. The input is a program of
 * non-blocking calls on either end (send, receive, peek/release,
 * reserve/commit, detach/attach, shutdown, poll arming, closing b), writes
 * of chosen values into the shared fields, ring bytes and side stream, and
 * perturbations of a's own loads through the IVMC_FUZZ_SHM hook (double
 * fetches, words that change mid-call). Asserts: no crash, hang or access
 * out of bounds; a direction nobody tampered with delivers exactly the
 * sender's stream, in order, with nothing lost; a channel nobody tampered
 * with never fails; a poisoned end returns -ECONNRESET from every later
 * call (side-stream errors are the socket's own and do not poison: chan.h);
 * no descriptor leaks. With a large area L (rings that grow, docs/protocol.md
 * 3.7): the deep word is one more field to scribble and perturb, L's bytes
 * one more area to scribble, and on a ring-only channel nobody tampered
 * with a send or reserve waits (-EAGAIN) only with S (no L) or L (deep)
 * full of bytes the peer has not read.
 *
 * Input: byte 0 = configuration (bit 0: side stream; bits 1-2: starting
 * ring counter; bit 3: an L of DEEP bytes per direction), then operations,
 * one opcode byte each plus arguments.
 */
#include <errno.h>
#include <poll.h>
#include <stdatomic.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include "chan/chan_impl.h"
#include "fuzz.h"

#define RING	   4096u
#define DEEP	   (4 * RING) /* L, when the configuration asks for one */
#define MAX_OPS	   160
#define MAX_STREAM (48u * 1024) /* bytes per direction: side buffers never fill */
#define MAX_IO	   8192u
#define NPEND	   4

/* F_DEEP last: without an L the library never loads the deep word, and
 * the opcodes choose among the others only (nfields()), as they did before
 * there was one, so that the seeds of those days mean what they meant. */
enum field {
	F_PROD, F_ATTACH, F_FIN, F_CONS,
	F_CONS_WAIT, F_CONS_CPU, F_PROD_WAIT, F_PROD_CPU, F_DEEP, NFIELDS
};

static const struct {
	size_t off, size;
	bool data; /* tampering may change what the direction delivers */
} fields[NFIELDS] = {
	[F_PROD] = { offsetof(struct ivmc_shm_dir, prod), 8, true },
	[F_ATTACH] = { offsetof(struct ivmc_shm_dir, attach), 8, true },
	[F_FIN] = { offsetof(struct ivmc_shm_dir, fin), 8, true },
	[F_CONS] = { offsetof(struct ivmc_shm_dir, cons), 8, true },
	[F_CONS_WAIT] = { offsetof(struct ivmc_shm_dir, cons_wait), 4, false },
	[F_CONS_CPU] = { offsetof(struct ivmc_shm_dir, cons_cpu), 4, false },
	[F_PROD_WAIT] = { offsetof(struct ivmc_shm_dir, prod_wait), 4, false },
	[F_PROD_CPU] = { offsetof(struct ivmc_shm_dir, prod_cpu), 4, false },
	[F_DEEP] = { offsetof(struct ivmc_shm_dir, deep), 8, true },
};

struct end {
	struct chan *c;
	int idx;	    /* 0: a, the victim; 1: b. Also its tx direction. */
	uint64_t tx, rx;    /* stream bytes sent (accepted) and received */
	uint64_t peek_rx;   /* rx at the last successful peek, or UINT64_MAX */
	uint64_t resv_tx;   /* tx at the last successful reserve, or UINT64_MAX */
	size_t peek_n, resv_n;
	bool dead; /* poisoned: every data call must return -ECONNRESET */
	bool closed, shut_wr, shut_rd;
	bool unpub; /* the last send/commit held bytes back (CHAN_MORE) */
};

/* A pending perturbation: the count-th matching load of a's gets mutated. */
struct pend {
	bool on;
	uint8_t count, filter, mode;
	uint64_t arg;
};

static struct {
	struct end e[2];
	bool side;
	uint32_t deep;		/* L's size: 0 or DEEP */
	int region, sides[2];
	struct ivmc_shm_hdr *h; /* our own map of the header page */
	uint8_t *data[2];	/* our own maps of the rings (no mirror) */
	uint8_t *ldata[2];	/* and of the L areas, if deep */
	bool taint[2];		/* direction d was tampered with */
	bool abrupt;		/* b's side socket closed with data unread */
	bool armed;		/* a call on a is running */
	struct pend pend[NPEND];
} fz;

static uint8_t buf[MAX_IO + RING];

/* FZ_TRACE=1 in the environment: print each call (to read a reproducer). */
static int trace = -1;

#define TRACE(...)                                                     \
	do {                                                           \
		if (trace < 0)                                         \
			trace = getenv("FZ_TRACE") != NULL;            \
		if (trace)                                             \
			fprintf(stderr, __VA_ARGS__);                  \
	} while (0)

static char name(const struct end *e)
{
	return e->idx ? 'b' : 'a';
}

static struct end *peer(struct end *e)
{
	return &fz.e[1 - e->idx];
}

/* May an end be poisoned? Only after tampering. */
static bool hostile(void)
{
	return fz.taint[0] || fz.taint[1];
}

/* The field of dir[] that holds header offset off, or -1. */
static int field_at(size_t off, int *dir)
{
	const size_t base = offsetof(struct ivmc_shm_hdr, dir);
	size_t rel;

	if (off < base || off >= base + sizeof(fz.h->dir))
		return -1;
	*dir = (int)((off - base) / sizeof(struct ivmc_shm_dir));
	rel = (off - base) % sizeof(struct ivmc_shm_dir);
	for (int f = 0; f < NFIELDS; f++)
		if (rel >= fields[f].off && rel < fields[f].off + fields[f].size)
			return f;
	return -1;
}

/* Fields the opcodes choose among: the deep word only with an L. */
static int nfields(void)
{
	return fz.deep ? NFIELDS : F_DEEP;
}

/* Without an L the deep word is never read (a region with deep_size 0
 * works as it did before there was one): writing it changes nothing. */
static void taint(int dir, int f)
{
	if (fields[f].data && (f != F_DEEP || fz.deep))
		fz.taint[dir] = true;
}

/* The largest piece a peek or reserve may hand out: all of S, or all of
 * L (contiguous through its mirror). */
static uint32_t area_max(void)
{
	return fz.deep ? fz.deep : RING;
}

/* A value a hostile peer might put in a word: structured, so that the
 * fuzzer reaches counters just past capacity, CLOSED, epochs, offsets.
 * off is the reference modes 10 and 11 start from: the stream offset, or
 * for the deep word DEEP and the producer's counter (ref()), so that X
 * lands in, just before or just past what was published. */
static uint64_t mutate(uint64_t cur, size_t size, uint8_t mode, uint64_t arg,
		       uint64_t off)
{
	const uint64_t lo = 0xffffffffull;
	uint64_t k = (uint64_t)(int64_t)(int8_t)arg, v;

	switch (mode % 14) {
	case 0: v = arg; break;
	case 1: v = cur ^ (1ull << (arg % (size * 8))); break;
	case 2: v = (cur & ~lo) | (uint32_t)(cur + k); break;
	case 3: v = (cur & ~lo) | (uint32_t)(cur + RING + k); break;
	case 4: v = (cur & ~lo) | (uint32_t)(cur - RING + k); break;
	case 5: v = cur | IVMC_PW_CLOSED; break;
	case 6: v = cur & ~IVMC_PW_CLOSED; break;
	case 7: v = cur + (k << 32); break;
	case 8: v = 0; break;
	case 9: v = ~0ull; break;
	case 10: v = IVMC_FIN_SET | ((off + k) & IVMC_OFF_MASK); break;
	case 11: v = off + k; break;
	case 12: v = cur ^ 1; break;
	default: v = cur + k; break;
	}
	return size == 8 ? v : (v & lo);
}

static bool filter_match(uint8_t filter, int dir, int f)
{
	int n = nfields();

	filter %= 2 * n + 2;
	return filter >= 2 * n || (filter / n == dir && filter % n == f);
}

/* Our own view of a shared word (not through the hook). */
static uint64_t *word(int dir, int f)
{
	return (uint64_t *)((uint8_t *)&fz.h->dir[dir] + fields[f].off);
}

/* mutate()'s reference for field f of direction dir. */
static uint64_t ref(int dir, int f)
{
	if (f != F_DEEP)
		return fz.e[dir].tx;
	return IVMC_DEEP_ON |
	       (uint32_t)__atomic_load_n(word(dir, F_PROD), __ATOMIC_SEQ_CST);
}

/* The IVMC_FUZZ_SHM hook (src/ring/atomics.h): every value the library
 * reads from memory with the atomics helpers comes through here. */
uint64_t ivmc_fuzz_shm(const volatile void *p, uint64_t v, size_t size)
{
	size_t off;
	int dir, f;

	if (!fz.armed || chan_fuzz_shm_find(p, &off) != fz.e[0].c)
		return v;
	f = field_at(off, &dir);
	if (f < 0 || size != fields[f].size)
		return v;
	for (int i = 0; i < NPEND; i++) {
		struct pend *q = &fz.pend[i];

		if (!q->on || !filter_match(q->filter, dir, f) || q->count--)
			continue;
		q->on = false;
		taint(dir, f);
		TRACE("   a's load of dir[%d] field %d perturbed (mode %d)\n",
		      dir, f, q->mode % 14);
		return mutate(v, size, q->mode, q->arg, ref(dir, f));
	}
	return v;
}

/* ---- the oracle ---- */

static bool poisoned(const struct end *e)
{
	return !e->closed &&
	       atomic_load_explicit(&e->c->ep->poison, memory_order_relaxed);
}

/* Before a call: a dead end must refuse every data call. */
static bool dead_before(struct end *e)
{
	if (poisoned(e)) {
		FZ_ASSERT(hostile(), "%c poisoned, nobody tampered", name(e));
		e->dead = true;
	}
	return e->dead;
}

/* After a call that returned r. */
static void check_ret(struct end *e, const char *what, long r, bool was_dead)
{
	if (was_dead)
		FZ_ASSERT(r == -ECONNRESET, "%s on dead %c: %ld", what, name(e), r);
	/* Poisoned (checked below), or the side stream's own reset. */
	if (r == -ECONNRESET && !poisoned(e))
		FZ_ASSERT(fz.abrupt, "%s on %c: -ECONNRESET, not poisoned and "
			  "no reset", what, name(e));
	if (r == -EPIPE)
		FZ_ASSERT(hostile() || e->shut_wr || peer(e)->closed,
			  "%s on %c: -EPIPE with the peer there", what, name(e));
	(void)dead_before(e);
}

/* Bytes [e->rx, e->rx + n) just delivered to e (not yet counted). */
static void got(struct end *e, const uint8_t *p, size_t n, const char *what)
{
	int dir = 1 - e->idx;
	long bad;

	if (fz.taint[dir])
		return;
	FZ_ASSERT(e->rx + n <= peer(e)->tx, "%s on %c: %zu bytes at %llu, "
		  "only %llu sent", what, name(e), n,
		  (unsigned long long)e->rx, (unsigned long long)peer(e)->tx);
	bad = fz_check(dir, e->rx, p, n);
	FZ_ASSERT(bad < 0, "%s on %c: wrong byte at stream offset %llu", what,
		  name(e), (unsigned long long)(e->rx + (uint64_t)bad));
}

/* e saw end of stream. */
static void eof(struct end *e, const char *what)
{
	struct end *s = peer(e);

	if (fz.taint[1 - e->idx] || e->shut_rd)
		return;
	FZ_ASSERT(s->shut_wr || s->closed || s->dead || poisoned(s),
		  "%s on %c: end of stream, the peer did not end it", what,
		  name(e));
	if (s->shut_wr && !s->dead)
		FZ_ASSERT(e->rx == s->tx, "%s on %c: end of stream at %llu of %llu",
			  what, name(e), (unsigned long long)e->rx,
			  (unsigned long long)s->tx);
}

/* A send or reserve on e returned -EAGAIN: on a ring-only channel nobody
 * tampered with (so the peer's ring counter is its rx: bytes it consumed,
 * and nothing is on a side stream), the ring cannot take one more byte.
 * Without an L, S holds RING unread bytes; with one, the producer went
 * deep when S was full and L holds DEEP of them (it comes back to S only
 * with everything read), so at least DEEP are in flight. */
static void full(struct end *e, const char *what)
{
	struct end *r = peer(e);
	uint64_t in_flight = e->tx - r->rx;
	uint32_t want = fz.deep ? fz.deep : RING;

	if (fz.side || hostile() || r->closed || r->shut_rd || r->dead ||
	    e->dead || e->shut_wr)
		return;
	FZ_ASSERT(in_flight >= want, "%s on %c: -EAGAIN with %llu bytes in "
		  "flight, room for %u", what, name(e),
		  (unsigned long long)in_flight, want);
}

/* ---- operations ---- */

static int split(uint8_t *p, size_t n, struct iovec *v, uint8_t sel)
{
	switch (sel % 3) {
	case 0:
		v[0] = (struct iovec){ p, n };
		return 1;
	case 1:
		v[0] = (struct iovec){ p, n / 3 };
		v[1] = (struct iovec){ p + n / 3, n - n / 3 };
		return 2;
	default:
		v[0] = (struct iovec){ p, n / 4 };
		v[1] = (struct iovec){ p + n / 4, 0 };
		v[2] = (struct iovec){ p + n / 4, n - n / 4 };
		return 3;
	}
}

#define CALL(e, expr)                                                  \
	__extension__({                                                \
		fz.armed = (e)->idx == 0;                              \
		__auto_type r_ = (expr);                               \
		fz.armed = false;                                      \
		TRACE("%c: %s = %ld\n", name(e), #expr, (long)r_);     \
		r_;                                                    \
	})

static void op_send(struct end *e, struct fz_in *in)
{
	size_t len = 1 + fz_u16(in) % MAX_IO;
	uint8_t sel = fz_u8(in);
	unsigned int flags = CHAN_NONBLOCK | (sel & 1 ? CHAN_MORE : 0);
	bool was_dead = dead_before(e);
	struct iovec v[3];
	ssize_t r;
	int cnt;

	if (e->tx >= MAX_STREAM) /* a commit may have gone past it */
		return;
	if (len > MAX_STREAM - e->tx)
		len = MAX_STREAM - e->tx;
	fz_fill(e->idx, e->tx, buf, len);
	cnt = split(buf, len, v, sel >> 1);
	r = CALL(e, chan_sendv(e->c, v, cnt, flags));
	FZ_ASSERT((r > 0 && (size_t)r <= len) || r == -EAGAIN || r == -EPIPE ||
			  r == -ECONNRESET, "send on %c: %zd", name(e), r);
	check_ret(e, "send", r, was_dead);
	if (r == -EAGAIN)
		full(e, "send");
	if (r > 0) {
		e->tx += (uint64_t)r;
		e->unpub = (flags & CHAN_MORE) && (size_t)r == len;
	}
}

static void op_recv(struct end *e, struct fz_in *in)
{
	size_t len = 1 + fz_u16(in) % MAX_IO;
	uint8_t sel = fz_u8(in);
	unsigned int flags = CHAN_NONBLOCK | (sel & 1 ? CHAN_WAITALL : 0);
	bool was_dead = dead_before(e);
	struct iovec v[3];
	ssize_t r;
	int cnt = split(buf, len, v, sel >> 1);

	r = CALL(e, chan_recvv(e->c, v, cnt, flags));
	FZ_ASSERT((r >= 0 && (size_t)r <= len) || r == -EAGAIN ||
			  r == -ECONNRESET, "recv on %c: %zd", name(e), r);
	check_ret(e, "recv", r, was_dead);
	if (r > 0) {
		got(e, buf, (size_t)r, "recv");
		e->rx += (uint64_t)r;
	} else if (r == 0) {
		eof(e, "recv");
	}
}

static void release(struct end *e, size_t len, bool right_after)
{
	bool was_dead = dead_before(e);
	bool valid = len <= e->peek_n && e->peek_rx == e->rx;
	int r = CALL(e, chan_release(e->c, len));

	FZ_ASSERT(r == 0 || r == -EINVAL || r == -ECONNRESET,
		  "release on %c: %d", name(e), r);
	check_ret(e, "release", r, was_dead);
	if (r == 0 && len)
		FZ_ASSERT(valid, "release %zu on %c accepted, peeked %zu", len,
			  name(e), e->peek_n);
	if (right_after && !was_dead)
		FZ_ASSERT(r == (valid ? 0 : -EINVAL),
			  "release %zu after peeking %zu on %c: %d", len,
			  e->peek_n, name(e), r);
	if (r == 0 && len) {
		e->rx += len;
		e->peek_n = 0;
	}
}

static void op_peek(struct end *e, struct fz_in *in)
{
	uint8_t sel = fz_u8(in);
	bool was_dead = dead_before(e);
	const void *p = NULL;
	ssize_t r = CALL(e, chan_peek(e->c, &p, CHAN_NONBLOCK));
	size_t len;

	FZ_ASSERT((r >= 0 && r <= area_max()) || r == -EAGAIN ||
			  r == -EOPNOTSUPP || r == -ECONNRESET,
		  "peek on %c: %zd", name(e), r);
	check_ret(e, "peek", r, was_dead);
	if (r == 0)
		eof(e, "peek");
	if (r <= 0)
		return;
	got(e, p, (size_t)r, "peek");
	e->peek_n = (size_t)r;
	e->peek_rx = e->rx;
	if (sel & 0x80)
		return; /* keep it for a release later */
	switch (sel % 4) {
	case 0: len = (size_t)r; break;
	case 1: len = (size_t)r / 2; break;
	case 2: len = 0; break;
	default: len = (size_t)r + 1; break;
	}
	release(e, len, true);
}

static void commit(struct end *e, size_t len, unsigned int flags,
		   bool right_after)
{
	bool was_dead = dead_before(e);
	bool valid = len <= e->resv_n && e->resv_tx == e->tx;
	int r = CALL(e, chan_commit(e->c, len, flags));

	FZ_ASSERT(r == 0 || r == -EINVAL || r == -EPIPE || r == -ECONNRESET,
		  "commit on %c: %d", name(e), r);
	check_ret(e, "commit", r, was_dead);
	if (r == 0 && len)
		FZ_ASSERT(valid, "commit %zu on %c accepted, reserved %zu", len,
			  name(e), e->resv_n);
	if (right_after && !was_dead && !valid)
		FZ_ASSERT(r == -EINVAL, "commit %zu of %zu on %c: %d", len,
			  e->resv_n, name(e), r);
	if (r == 0 && len) {
		e->tx += len;
		e->resv_n = 0;
		e->unpub = flags & CHAN_MORE;
	}
}

static void op_reserve(struct end *e, struct fz_in *in)
{
	uint8_t sel = fz_u8(in);
	bool was_dead = dead_before(e);
	void *p = NULL;
	ssize_t r = CALL(e, chan_reserve(e->c, &p, CHAN_NONBLOCK));
	size_t len;

	FZ_ASSERT((r > 0 && r <= area_max()) || r == -EAGAIN ||
			  r == -EOPNOTSUPP || r == -EPIPE || r == -ECONNRESET,
		  "reserve on %c: %zd", name(e), r);
	check_ret(e, "reserve", r, was_dead);
	if (r == -EAGAIN)
		full(e, "reserve");
	if (r <= 0)
		return;
	FZ_ASSERT(p, "reserve on %c returned %zd and no buffer", name(e), r);
	/* All of it is the stream from here: a later commit may take any. */
	fz_fill(e->idx, e->tx, p, (size_t)r);
	e->resv_n = (size_t)r;
	e->resv_tx = e->tx;
	if (sel & 0x80 || e->tx >= MAX_STREAM)
		return;
	switch (sel % 4) {
	case 0: len = (size_t)r; break;
	case 1: len = (size_t)r / 2; break;
	case 2: len = 0; break;
	default: len = (size_t)r + 1; break;
	}
	commit(e, len, sel & 4 ? CHAN_MORE : 0, true);
}

static void op_switch(struct end *e, struct fz_in *in)
{
	uint8_t sel = fz_u8(in);
	enum chan_dir d = sel & 2 ? CHAN_RX : CHAN_TX;
	bool was_dead = fz.side && dead_before(e);
	int r = CALL(e, sel & 1 ? chan_attach(e->c, d) : chan_detach(e->c, d));

	FZ_ASSERT(fz.side ? (r == 0 || r == -ECONNRESET) : r == -ENOTSUP,
		  "%s on %c: %d", sel & 1 ? "attach" : "detach", name(e), r);
	check_ret(e, "switch", r, was_dead);
}

static void op_shutdown(struct end *e, struct fz_in *in)
{
	static const int hows[3] = { SHUT_RD, SHUT_WR, SHUT_RDWR };
	int how = hows[fz_u8(in) % 3];
	bool was_dead = how != SHUT_RD && dead_before(e);
	int r = CALL(e, chan_shutdown(e->c, how));

	FZ_ASSERT(r == 0 || (how != SHUT_RD && r == -ECONNRESET),
		  "shutdown on %c: %d", name(e), r);
	check_ret(e, "shutdown", r, was_dead);
	if (how != SHUT_WR)
		e->shut_rd = true;
	if (how != SHUT_RD && r == 0)
		e->shut_wr = true;
}

static void op_poll_arm(struct end *e, struct fz_in *in)
{
	short ev = (short[]){ POLLIN, POLLOUT, POLLIN | POLLOUT }[fz_u8(in) % 3];
	bool was_dead = dead_before(e);
	int r = CALL(e, chan_poll_arm(e->c, ev));

	FZ_ASSERT(r >= 0 && !(r & ~ev), "poll_arm on %c: %d", name(e), r);
	if (was_dead)
		FZ_ASSERT(r == ev, "poll_arm on dead %c: %d", name(e), r);
	(void)dead_before(e);
}

static void op_scribble(struct fz_in *in)
{
	uint8_t t = fz_u8(in) % (2 * nfields()), mode = fz_u8(in);
	uint64_t arg = fz_u64(in);
	int dir = t / nfields(), f = t % nfields();
	uint64_t *w = word(dir, f);

	if (fields[f].size == 8) {
		uint64_t cur = __atomic_load_n(w, __ATOMIC_SEQ_CST);

		__atomic_store_n(w, mutate(cur, 8, mode, arg, ref(dir, f)),
				 __ATOMIC_SEQ_CST);
	} else {
		uint32_t *w32 = (uint32_t *)w;
		uint32_t cur = __atomic_load_n(w32, __ATOMIC_SEQ_CST);

		__atomic_store_n(w32, (uint32_t)mutate(cur, 4, mode, arg, 0),
				 __ATOMIC_SEQ_CST);
	}
	taint(dir, f);
	TRACE("scribble dir[%d] field %d (mode %d)\n", dir, f, mode % 14);
}

/* A byte anywhere in the header page, or a run of ring bytes: S's, or
 * with an L and bit 15 of the offset, L's. */
static void op_raw(struct fz_in *in)
{
	uint8_t sel = fz_u8(in);
	uint16_t off = fz_u16(in);
	uint64_t arg = fz_u64(in);
	int dir, f;

	if (sel & 1) {
		size_t len = 1 + (sel >> 2) % 64;
		bool l = fz.deep && (off & 0x8000);
		uint8_t *area;
		uint32_t mask;

		dir = (sel >> 1) & 1;
		area = l ? fz.ldata[dir] : fz.data[dir];
		mask = l ? fz.deep - 1 : RING - 1;
		for (size_t i = 0; i < len; i++)
			area[(off + i) & mask] =
				(uint8_t)(arg >> (8 * (i % 8))) ^ (uint8_t)i;
		fz.taint[dir] = true;
		TRACE("scribble %s %d at %u, %zu bytes\n", l ? "L" : "ring",
		      dir, off & mask, len);
		return;
	}
	off %= IVMC_SHM_HDR_SIZE;
	TRACE("scribble header byte %u\n", off);
	((volatile uint8_t *)fz.h)[off] = (uint8_t)arg;
	f = field_at(off, &dir);
	if (f >= 0)
		taint(dir, f);
}

static void op_perturb(struct fz_in *in)
{
	struct pend q = { .on = true };
	int slot = 0;

	q.count = fz_u8(in) % 16; /* one read after the other, in order */
	q.filter = fz_u8(in);
	q.mode = fz_u8(in);
	q.arg = fz_u64(in);

	for (int i = 0; i < NPEND; i++)
		if (!fz.pend[i].on)
			slot = i;
	fz.pend[slot] = q;
	TRACE("perturb the %dth load of a's matching filter %d (mode %d)\n",
	      q.count, q.filter % (2 * nfields() + 2), q.mode % 14);
}

/* Bytes that the peer never sent, or sent and someone took, on the side
 * stream (a TCP peer can do both). */
static void op_side(struct fz_in *in)
{
	uint8_t sel = fz_u8(in), junk[32];
	size_t len = 1 + (sel >> 3) % sizeof(junk);
	int dir = (sel >> 1) & 1;
	ssize_t n;

	if (!fz.side)
		return;
	if (sel & 1) {
		memset(junk, sel, len);
		n = send(fz.sides[dir], junk, len, MSG_DONTWAIT | MSG_NOSIGNAL);
	} else {
		n = recv(fz.sides[1 - dir], junk, len, MSG_DONTWAIT);
	}
	if (n > 0)
		fz.taint[dir] = true;
	TRACE("side stream of dir %d: %s %zd bytes\n", dir,
	      sel & 1 ? "injected" : "stole", n);
}

static void op_doorbell(struct end *e)
{
	static const char one = 1;

	(void)send(chan_fd(e->c), &one, 1, MSG_DONTWAIT | MSG_NOSIGNAL);
	TRACE("%c rings its peer's doorbell\n", name(e));
}

/* b goes away: end of file on its side stream, or (abrupt) a close that
 * resets it if our bytes are still unread there. */
static void close_b(bool abrupt)
{
	struct end *b = &fz.e[1];

	if (b->closed)
		return;
	chan_close(b->c);
	b->closed = true;
	TRACE("b closed%s\n", abrupt ? ", its side socket too" : "");
	if (!fz.side)
		return;
	if (!abrupt) {
		shutdown(fz.sides[1], SHUT_RDWR);
		return;
	}
	close(fz.sides[1]);
	fz.sides[1] = -1;
	fz.abrupt = true;
}

static void op(struct fz_in *in)
{
	uint8_t code = fz_u8(in);
	struct end *e = &fz.e[code & 1];

	code = (code >> 1) % 16;
	if (e->closed && code < 9)
		return; /* a call on b after closing it */
	switch (code) {
	case 0: op_send(e, in); break;
	case 1: op_recv(e, in); break;
	case 2: op_peek(e, in); break;
	case 3: release(e, fz_u16(in) % (area_max() + 2), false); break;
	case 4: op_reserve(e, in); break;
	case 5: {
		size_t len = fz_u16(in) % (area_max() + 2);

		commit(e, len, fz_u8(in) & 1 ? CHAN_MORE : 0, false);
		break;
	}
	case 6: op_switch(e, in); break;
	case 7: op_shutdown(e, in); break;
	case 8: op_poll_arm(e, in); break;
	case 9: op_scribble(in); break;
	case 10: op_raw(in); break;
	case 11: case 15: op_perturb(in); break;
	case 12: op_side(in); break;
	case 13:
		if (!e->closed)
			op_doorbell(e);
		break;
	default:
		if (e->idx == 1)
			close_b(fz_u8(in) & 1);
		break;
	}
}

/* ---- set-up, the final checks, tear-down ---- */

static void setup(uint8_t cfg)
{
	static const uint32_t ctrs[4] = { 0, 0xffffff00u, 0x7ffffff0u, 0u - RING };
	struct chan_cfg ca = { .side = 0, .side_fd = -1,
			       .wait_mode = CHAN_WAIT_SLEEP, .nonblock = true };
	struct chan_cfg cb = ca;
	int db[2], err;

	memset(&fz, 0, sizeof(fz));
	fz.side = cfg & 1;
	fz.deep = cfg & 8 ? DEEP : 0;
	TRACE("config: %s, ring counters from %#x, L of %u bytes\n",
	      fz.side ? "side stream" : "ring only", ctrs[(cfg >> 1) & 3],
	      fz.deep);
	fz.sides[0] = fz.sides[1] = -1;
	cb.side = 1;
	if (fz.side) {
		FZ_ASSERT(!socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0,
				      fz.sides), "socketpair");
		ca.side_fd = fz.sides[0];
		cb.side_fd = fz.sides[1];
	}
	err = chan_region_create(RING, fz.deep, fz.side, ctrs[(cfg >> 1) & 3],
				 &fz.region);
	FZ_ASSERT(!err, "chan_region_create: %d", err);
	FZ_ASSERT(!socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, db),
		  "socketpair");
	err = chan_open(&ca, fz.region, db[0], &fz.e[0].c);
	FZ_ASSERT(!err, "chan_open a: %d", err);
	err = chan_open(&cb, fz.region, db[1], &fz.e[1].c);
	FZ_ASSERT(!err, "chan_open b: %d", err);
	fz.h = mmap(NULL, IVMC_SHM_HDR_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED,
		    fz.region, 0);
	FZ_ASSERT(fz.h != MAP_FAILED, "mmap");
	for (int d = 0; d < 2; d++) {
		fz.data[d] = mmap(NULL, RING, PROT_READ | PROT_WRITE, MAP_SHARED,
				  fz.region, IVMC_SHM_HDR_SIZE + d * RING);
		FZ_ASSERT(fz.data[d] != MAP_FAILED, "mmap");
		if (fz.deep) {
			fz.ldata[d] = mmap(NULL, fz.deep, PROT_READ | PROT_WRITE,
					   MAP_SHARED, fz.region,
					   IVMC_SHM_HDR_SIZE + 2 * RING +
						   (off_t)d * fz.deep);
			FZ_ASSERT(fz.ldata[d] != MAP_FAILED, "mmap");
		}
		fz.e[d].idx = d;
		fz.e[d].peek_rx = fz.e[d].resv_tx = UINT64_MAX;
	}
}

/* Receive until nothing more comes; true if the stream ended. */
static bool drain(struct end *e)
{
	for (int i = 0; i < 256; i++) {
		struct iovec v = { buf, MAX_IO };
		bool was_dead = dead_before(e);
		ssize_t r = CALL(e, chan_recvv(e->c, &v, 1, CHAN_NONBLOCK));

		FZ_ASSERT(r >= 0 || r == -EAGAIN || r == -ECONNRESET,
			  "final recv on %c: %zd", name(e), r);
		check_ret(e, "final recv", r, was_dead);
		if (r == -ECONNRESET && !e->dead)
			continue; /* the side stream's reset, then its end */
		if (r <= 0) {
			if (r == 0)
				eof(e, "final recv");
			return r == 0;
		}
		got(e, buf, (size_t)r, "final recv");
		e->rx += (uint64_t)r;
	}
	FZ_FAIL("%c still receiving after 256 calls", name(e));
}

/* Whatever was sent on a direction nobody tampered with arrives, and a
 * SHUT_WR then ends it exactly there. */
static void finish(void)
{
	memset(fz.pend, 0, sizeof(fz.pend));
	for (int d = 0; d < 2; d++) {
		struct end *s = &fz.e[d], *r = &fz.e[1 - d];
		bool ended;

		if (r->closed)
			continue;
		ended = drain(r);
		if (fz.taint[d] || r->dead || r->shut_rd || s->dead || poisoned(s))
			continue;
		if (!s->unpub && !s->closed)
			FZ_ASSERT(r->rx == s->tx, "%c got %llu of %llu sent",
				  name(r), (unsigned long long)r->rx,
				  (unsigned long long)s->tx);
		if (!s->closed && !s->shut_wr) {
			int err = CALL(s, chan_shutdown(s->c, SHUT_WR));

			FZ_ASSERT(!err, "final SHUT_WR on %c: %d", name(s), err);
			s->shut_wr = true;
			ended = drain(r);
		}
		if (!fz.taint[d] && !r->dead)
			FZ_ASSERT(ended, "%c: no end of stream after the peer's "
				  "SHUT_WR or close", name(r));
	}
	/* Dead stays dead. */
	for (int i = 0; i < 2; i++) {
		struct end *e = &fz.e[i];
		struct iovec v = { buf, 1 };
		ssize_t r;

		if (e->closed || !dead_before(e))
			continue;
		r = CALL(e, chan_sendv(e->c, &v, 1, CHAN_NONBLOCK));
		FZ_ASSERT(r == -ECONNRESET, "send on dead %c: %zd", name(e), r);
		r = CALL(e, chan_recvv(e->c, &v, 1, CHAN_NONBLOCK));
		FZ_ASSERT(r == -ECONNRESET, "recv on dead %c: %zd", name(e), r);
	}
}

static void teardown(void)
{
	for (int i = 0; i < 2 && trace > 0; i++) {
		struct chan_stats st;

		if (fz.e[i].closed)
			continue;
		chan_stats(fz.e[i].c, &st);
		TRACE("%c went deep %llu times%s\n", name(&fz.e[i]),
		      (unsigned long long)st.deeps, st.tx_deep ? ", is deep" : "");
	}
	for (int i = 0; i < 2; i++)
		if (!fz.e[i].closed)
			chan_close(fz.e[i].c);
	munmap(fz.h, IVMC_SHM_HDR_SIZE);
	for (int d = 0; d < 2; d++) {
		munmap(fz.data[d], RING);
		if (fz.ldata[d])
			munmap(fz.ldata[d], fz.deep);
	}
	close(fz.region);
	for (int i = 0; i < 2; i++)
		if (fz.sides[i] >= 0)
			close(fz.sides[i]);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct fz_in in = { data, size };
	int fds = fz_fd_count();

	setup(fz_u8(&in));
	for (int i = 0; i < MAX_OPS && fz_left(&in); i++)
		op(&in);
	finish();
	teardown();
	FZ_ASSERT(fz_fd_count() == fds, "descriptors leaked");
	return 0;
}
