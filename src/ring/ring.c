/* SPDX-License-Identifier: MIT */
/*
 * Description: SPSC byte ring. Every value read from the shared region is
 * read once into a local, validated against private state, then used.
 */
#include <errno.h>

#include "ring.h"

/* Of used bytes in flight, those in the area the producer writes now:
 * deep, only those past X (the ones before are in S until the consumer
 * has read past X). -EPROTO if the counts are beyond what the areas hold. */
static int area_used(const struct ring *r, const struct ring_prod *p,
		     uint32_t used, uint32_t *out)
{
	uint32_t s = p->deep && !p->past_x ? p->x - p->peer_cons : 0;

	if (!p->deep)
		return used > r->cap ? -EPROTO : (*out = used, 0);
	if (s > r->cap || s > used || used - s > r->deep_cap)
		return -EPROTO;
	*out = used - s;
	return 0;
}

int ring_free(const struct ring *r, struct ring_prod *p, uint32_t want,
	      uint32_t *space)
{
	uint32_t used = p->ctr - p->peer_cons, cap = ring_area_cap(r, p), in;

	if (used > ring_total(r) || area_used(r, p, used, &in))
		return -EPROTO; /* never size anything from a wrapped count */
	/* Called before every write (each at most L): seen long before
	 * ctr - x could wrap. */
	if (p->deep && p->ctr - p->x >= r->deep_cap)
		p->l_all = true;
	if (cap - in < want) {
		/* A2: pairs with R2 in ring_consume(); the consumer is done
		 * with every byte before its CTR, so we may overwrite them. */
		uint32_t cons = ivmc_w_ctr(ivmc_load_acquire(&r->shm->cons));

		/* It only moves forward, and never past what we wrote. */
		if (cons - p->peer_cons > used)
			return -EPROTO;
		if (p->deep && !p->past_x &&
		    cons - p->peer_cons >= p->x - p->peer_cons)
			p->past_x = true; /* it has read S to X */
		p->peer_cons = cons;
		if (area_used(r, p, p->ctr - cons, &in))
			return -EPROTO;
	}
	*space = cap - in;
	return 0;
}

bool ring_go_deep(const struct ring *r, struct ring_prod *p)
{
	if (p->deep || !r->deep_cap || (p->pw & IVMC_PW_CLOSED))
		return false;
	p->deep = true;
	p->past_x = false;
	p->l_all = false;
	p->x = p->ctr;
	/* R9: where the bytes from X on are /then/ any publish of them (R1,
	 * a release); pairs with A9 in ring_load_prod(). */
	ivmc_store_release(&r->shm->deep, ivmc_deep_make(true, p->x));
	return true;
}

int ring_go_shallow(const struct ring *r, struct ring_prod *p, uint32_t *give)
{
	uint32_t cons;

	*give = 0;
	if (!p->deep || ivmc_w_ctr(p->pw) != p->ctr)
		return 0;
	/* A2 as in ring_free(): the consumer has read everything, L too. */
	cons = ivmc_w_ctr(ivmc_load_acquire(&r->shm->cons));
	if (cons - p->peer_cons > p->ctr - p->peer_cons)
		return -EPROTO; /* past what we wrote, or backwards */
	if (cons != p->ctr)
		return 0;
	p->peer_cons = cons;
	p->deep = false;
	/* R9 again: S from here on, before any publish past it. */
	ivmc_store_release(&r->shm->deep, ivmc_deep_make(false, p->ctr));
	*give = p->l_all ? r->deep_cap : p->ctr - p->x;
	return 0;
}

/* Is w a close of p's open epoch by its consumer? CLOSED, the same epoch,
 * and a CTR in [peer_cons, what p published]: where the producer last
 * published (ring_close_cons()), or where the consumer had read to
 * (ring_rewind_cons()). Bytes from there on are still in the ring: the
 * producer writes only past what the consumer last said it had read. */
static bool closed_by_cons(const struct ring_prod *p, uint64_t w)
{
	uint32_t pub = ivmc_w_ctr(p->pw), k = ivmc_w_ctr(w);

	return !(p->pw & IVMC_PW_CLOSED) &&
	       w == (ivmc_w_make(ivmc_w_epoch(p->pw), k) | IVMC_PW_CLOSED) &&
	       pub - k <= pub - p->peer_cons;
}

int ring_publish(const struct ring *r, struct ring_prod *p)
{
	uint64_t expect = p->pw;
	uint64_t want = (p->pw & ~(uint64_t)UINT32_MAX) | p->ctr;

	if (want == expect)
		return 0;
	/* R1: publish bytes [old CTR, ctr); pairs with A1 in ring_load_prod().
	 * CAS, not store: a CLOSED set by the consumer must not be erased.
	 * Seq-cst: it is also the store half of F1 (ring_peer_needs_wake()). */
	if (ivmc_cas_sc(&r->shm->prod, &expect, want)) {
		p->pw = want;
		return 0;
	}
	if (!closed_by_cons(p, expect))
		return -EPROTO; /* only the consumer's close may come */
	p->pw = expect; /* closed; p->ctr still counts the bytes past it */
	return 1;
}

int ring_check_closed(const struct ring *r, struct ring_prod *p)
{
	uint64_t w = ivmc_load_acquire(&r->shm->prod);

	if (w == p->pw)
		return 0;
	if (!closed_by_cons(p, w))
		return -EPROTO;
	p->pw = w;
	return 1;
}

int ring_close_prod(const struct ring *r, struct ring_prod *p)
{
	uint64_t expect = p->pw;

	if (expect & IVMC_PW_CLOSED)
		return 0;
	/* R3: CLOSED /then/ the caller rings; pairs with A1. */
	if (!ivmc_cas_sc(&r->shm->prod, &expect, expect | IVMC_PW_CLOSED)) {
		if (!closed_by_cons(p, expect))
			return -EPROTO;
		p->pw = expect;
		return 1; /* bytes past its CTR must go elsewhere */
	}
	p->pw |= IVMC_PW_CLOSED;
	return 0;
}

/* Where the bytes up to prod are: load the deep word (A9, after A1, so
 * that it places every byte A1 showed) and check it against the counts. */
static int deep_load(const struct ring *r, struct ring_cons *c, uint32_t prod)
{
	/* A9: pairs with R9 in ring_go_deep() and ring_go_shallow(). */
	uint64_t d = ivmc_load_acquire(&r->shm->deep); /* the only read */
	uint32_t x = (uint32_t)d, n = prod - c->ctr, s;

	if (d & ~(IVMC_DEEP_ON | UINT32_MAX))
		return -EPROTO;
	if (!(d & IVMC_DEEP_ON)) {
		/* Back in S, which the producer does only with all read. */
		if ((c->in_l && x != c->ctr) || n > r->cap)
			return -EPROTO;
		c->deep = c->in_l = false;
		return 0;
	}
	if (c->in_l && x == c->x)
		return n > r->deep_cap ? -EPROTO : 0;
	/* A deep episode we are not reading L of: it starts at or past our
	 * CTR, in what was published or ahead of it by at most a ring (the
	 * bytes the producer had written to S but not published). */
	if (x - c->ctr <= n)
		s = x - c->ctr;
	else if (x - prod <= r->cap)
		s = n;
	else
		return -EPROTO;
	if (!r->deep_cap || s > r->cap || n - s > r->deep_cap)
		return -EPROTO;
	c->deep = true;
	c->x = x;
	c->in_l = x == c->ctr;
	return 0;
}

int ring_load_prod(const struct ring *r, struct ring_cons *c, uint64_t *pw)
{
	/* A1: pairs with R1 in ring_publish(); bytes before CTR are complete. */
	uint64_t w = ivmc_load_acquire(&r->shm->prod); /* the only read */
	uint32_t n = ivmc_w_ctr(w) - c->ctr;

	/* Within a ring of us, and never behind what it showed us before. */
	if (n > ring_total(r) || ivmc_w_ctr(w) - c->peer_prod > n)
		return -EPROTO;
	if (r->deep_cap ? deep_load(r, c, ivmc_w_ctr(w)) < 0 : n > r->cap)
		return -EPROTO;
	c->peer_prod = ivmc_w_ctr(w);
	*pw = w;
	return 0;
}

void ring_consume(const struct ring *r, struct ring_cons *c, uint32_t n)
{
	c->ctr += n;
	if (c->deep && c->ctr == c->x)
		c->in_l = true; /* read S up to X: L from here */
	/* R2: we are done reading [old, ctr); pairs with A2 in ring_free().
	 * Seq-cst exchange: also the store half of F1 for a producer that
	 * sleeps for space. */
	(void)ivmc_xchg_sc(&r->shm->cons, ivmc_w_make(c->ready, c->ctr));
}

void ring_set_ready(const struct ring *r, struct ring_cons *c, uint32_t epoch)
{
	c->ready = epoch & IVMC_W_EPOCH_MASK;
	/* R4: ready for EPOCH with CTR drained; pairs with A4 in
	 * ring_load_cons(), read by a producer deciding to open the epoch. */
	(void)ivmc_xchg_sc(&r->shm->cons, ivmc_w_make(c->ready, c->ctr));
}

uint64_t ring_close_cons(const struct ring *r)
{
	/* R5: the producer's next CAS fails, so nothing after this CTR goes
	 * into the ring; pairs with the failed CAS in ring_publish(). */
	return ivmc_fetch_or_sc(&r->shm->prod, IVMC_PW_CLOSED);
}

int ring_rewind_cons(const struct ring *r, const struct ring_cons *c,
		     uint32_t epoch)
{
	uint64_t w = ivmc_load_acquire(&r->shm->prod);
	uint64_t want = ivmc_w_make(epoch, c->ctr) | IVMC_PW_CLOSED;

	/* Each failed CAS is a publish (at most a ring of them, since we
	 * read nothing more) or the producer's own close. */
	for (uint32_t tries = 0; tries <= ring_total(r) + 1; tries++) {
		if (ivmc_w_epoch(w) == ((epoch - 1) & IVMC_W_EPOCH_MASK))
			return (w & IVMC_PW_CLOSED) && ivmc_w_ctr(w) == c->ctr
				       ? 2 /* not opened: nothing to give back */
				       : -EPROTO;
		if (ivmc_w_epoch(w) != (epoch & IVMC_W_EPOCH_MASK) ||
		    ivmc_w_ctr(w) - c->ctr > ring_total(r))
			return -EPROTO;
		if (w & IVMC_PW_CLOSED)
			return ivmc_w_ctr(w) == c->ctr ? 0 : 1;
		/* R8: pairs with the failed CAS in ring_publish(). */
		if (ivmc_cas_sc(&r->shm->prod, &w, want))
			return 0;
	}
	return -EPROTO;
}

uint64_t ring_load_cons(const struct ring *r)
{
	/* A4: pairs with R4 in ring_set_ready() and R2 in ring_consume();
	 * seq-cst for F4 in sw_tx_try_open(). */
	return ivmc_load_sc(&r->shm->cons);
}

bool ring_peer_needs_wake(_Atomic uint32_t *flag, uint32_t *memo)
{
	uint32_t w;

	/* F1: our publish (a seq-cst CAS or exchange: R1, R2, R3, R5) /then/
	 * the peer's flag; pairs with F2 in ring_set_waiting() (liburing
	 * sq_ring_needs_enter, vchan send_notify). Every publish that comes
	 * before a call is a seq-cst read-modify-write. */
	w = ivmc_load_sc(flag);
	if (!(w & 1) || w == *memo)
		return false;
	*memo = w;
	return true;
}

void ring_set_waiting(_Atomic uint32_t *flag, uint32_t *seq, bool waiting)
{
	/* Every sleep gets a new odd value, so the peer's memo of the sleep it
	 * last rang for never suppresses the ring this sleep needs. */
	*seq = waiting ? (*seq + 1) | 1 : (*seq + 1) & ~1u;
	/* F2: the flag /then/ our re-check of the peer's counter; pairs with
	 * F1 in ring_peer_needs_wake() (vchan request_notify). */
	if (waiting)
		(void)ivmc_xchg_sc(flag, *seq);
	else
		ivmc_store_once(flag, *seq);
}
