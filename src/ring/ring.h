/* SPDX-License-Identifier: MIT */
/*
 * Description: single-producer single-consumer byte ring over one
 * direction of a shared region. The ring knows counters, capacity and
 * copies; epochs and modes belong to chan/.
 */
#ifndef IVMC_RING_H
#define IVMC_RING_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../chan/shm_layout.h"

/* Private view of one direction: geometry copied once at open. The ring
 * S (data, cap) and, if deep_cap, the large area L the producer goes deep
 * into when S is full (docs/protocol.md 3.7). */
struct ring {
	struct ivmc_shm_dir *shm; /* hostile memory */
	uint8_t *data;		  /* mirror-mapped: [0, 2*cap) is valid */
	uint32_t cap;
	uint32_t deep_cap;	  /* 0: no L */
	uint8_t *deep_data;	  /* [0, deep_cap), not mirrored: copies
				   * stop at its end (ring_wcontig()) */
};

/* Producer state; lives in the endpoint page, never in the shared region. */
struct ring_prod {
	uint64_t pw;	    /* the producer word as we last published it */
	uint32_t ctr;	    /* bytes written (published or not) */
	uint32_t peer_cons; /* cached consumer CTR */
	uint32_t x;	    /* deep: bytes from counter x on are in L */
	bool deep;
	bool past_x;	    /* deep, and peer_cons has reached x: all we
			     * wrote and the consumer has not read is in L
			     * (counters wrap: an episode may outlast 2^32) */
	bool l_all;	    /* deep, and L has been written to its end: all of
			     * its pages to give back (ctr - x may wrap) */
};

/* Consumer state; lives in the endpoint page. */
struct ring_cons {
	uint32_t ctr;	    /* bytes consumed */
	uint32_t peer_prod; /* cached producer CTR */
	uint32_t ready;	    /* READY epoch we last published */
	uint32_t x;	    /* deep: bytes from counter x on are in L */
	bool deep;	    /* as the deep word said at our last load */
	bool in_l;	    /* deep, and ctr has reached x: we read L */
};

/* Bytes that may be in flight in a direction: S, and L if there is one. */
static inline uint32_t ring_total(const struct ring *r)
{
	return r->cap + r->deep_cap;
}

/* The capacity of the area the producer writes now (S, or L if deep). */
static inline uint32_t ring_area_cap(const struct ring *r,
				     const struct ring_prod *p)
{
	return p->deep ? r->deep_cap : r->cap;
}

/* Bytes we may write now (refreshes the cached consumer counter when the
 * cache shows less than want). Returns 0, or -EPROTO if the peer lied. */
int ring_free(const struct ring *r, struct ring_prod *p, uint32_t want,
	      uint32_t *space);

/* The producer's bytes [k, k + n), k in [peer_cons, ctr] (written, not
 * yet consumed: stranded, given back, or at k = ctr the space to write
 * next), in pieces: sets *ptr to byte k and returns how many of them follow
 * it contiguously (at least 1 if n). Deep and not past X, the bytes before
 * X are in S (mirrored: contiguous), the rest in L (up to its end). */
static inline uint32_t ring_span(const struct ring *r,
				 const struct ring_prod *p, uint32_t k,
				 uint32_t n, uint8_t **ptr)
{
	uint32_t s = p->x - k;

	if (!p->deep ||
	    (!p->past_x && s && k - p->peer_cons < p->x - p->peer_cons)) {
		*ptr = r->data + (k & (r->cap - 1));
		return p->deep && s < n ? s : n;
	}
	s = (k - p->x) & (r->deep_cap - 1);
	*ptr = r->deep_data + s;
	return n < r->deep_cap - s ? n : r->deep_cap - s; /* L's end */
}

/* Where the next written byte goes. */
static inline uint8_t *ring_wptr(const struct ring *r, const struct ring_prod *p)
{
	uint8_t *w;

	(void)ring_span(r, p, p->ctr, 1, &w);
	return w;
}

/* How many bytes from ring_wptr() on are contiguous: S is mirrored (all
 * of it), L is not (up to its end). */
static inline uint32_t ring_wcontig(const struct ring *r,
				    const struct ring_prod *p)
{
	uint8_t *w;

	return ring_span(r, p, p->ctr, ring_area_cap(r, p), &w);
}

/* The consumer's readable bytes from counter k (in [ctr, peer_prod]) on,
 * in pieces: sets *ptr to byte k and returns how many follow it
 * contiguously, up to what it last loaded (0 at peer_prod). In L if it
 * reads L already, or k is at or past an X it has not reached (k - ctr and
 * X - ctr both within what it loaded); S up to X otherwise. */
static inline uint32_t ring_cons_span(const struct ring *r,
				      const struct ring_cons *c, uint32_t k,
				      const uint8_t **ptr)
{
	uint32_t n = c->peer_prod - k, pos;

	if (!c->in_l && !(c->deep && c->x - c->ctr <= k - c->ctr)) {
		*ptr = r->data + (k & (r->cap - 1));
		return c->deep && c->x - k < n ? c->x - k : n;
	}
	pos = (k - c->x) & (r->deep_cap - 1);
	*ptr = r->deep_data + pos;
	return n < r->deep_cap - pos ? n : r->deep_cap - pos;
}

/* Where the next byte to read is (contiguous for ring_avail() bytes). */
static inline const uint8_t *ring_rptr(const struct ring *r,
				       const struct ring_cons *c)
{
	const uint8_t *p;

	(void)ring_cons_span(r, c, c->ctr, &p);
	return p;
}

/* Bytes the consumer may read at ring_rptr() in one piece, by what it
 * last loaded: up to X while X is ahead, then from L up to its end. */
static inline uint32_t ring_avail(const struct ring *r,
				  const struct ring_cons *c)
{
	const uint8_t *p;

	return ring_cons_span(r, c, c->ctr, &p);
}

/* S is full: go deep (into L) at our counter, without waiting for the
 * consumer. Returns true if we did (there is an L and we were not deep). */
bool ring_go_deep(const struct ring *r, struct ring_prod *p);

/* Back to S if deep and the consumer has read everything we wrote (all
 * published). *give: how many bytes of L, from its start, the episode
 * wrote (all of L if it reached its end), whose pages may be given back
 * (nobody reads them again); 0 if we stayed (or were in S). Returns 0, or
 * -EPROTO if the consumer word claims bytes we never wrote. */
int ring_go_shallow(const struct ring *r, struct ring_prod *p, uint32_t *give);

/* Publish every byte written so far. Returns 0, 1 if the consumer closed
 * the epoch first (p->pw now has CLOSED; bytes past its CTR were not
 * published and must go elsewhere), or -EPROTO if the word was forged. */
int ring_publish(const struct ring *r, struct ring_prod *p);

/* Close the current epoch as producer. Returns 0 (closed now or already),
 * 1 if the consumer closed it first (as ring_publish()), or -EPROTO. */
int ring_close_prod(const struct ring *r, struct ring_prod *p);

/* Has the consumer closed our open epoch? 0 no, 1 yes (p->pw updated; the
 * bytes from its CTR to p->ctr must go elsewhere), -EPROTO forged. */
int ring_check_closed(const struct ring *r, struct ring_prod *p);

/* Load the producer word (A1), validate CTR against our consumer counter,
 * update the cache. Returns 0 and *pw, or -EPROTO. */
int ring_load_prod(const struct ring *r, struct ring_cons *c, uint64_t *pw);

/* Publish consumption of n bytes (n <= what ring_load_prod() allowed). */
void ring_consume(const struct ring *r, struct ring_cons *c, uint32_t n);

/* Publish the epoch the consumer is ready for (with its CTR). */
void ring_set_ready(const struct ring *r, struct ring_cons *c, uint32_t epoch);

/* Consumer closes the epoch itself: returns the producer word seen just
 * before CLOSED was set (its CTR is the end of the epoch). */
uint64_t ring_close_cons(const struct ring *r);

/* Consumer gives back what it has not read: closes the open epoch at its
 * own CTR, so the producer sends the rest elsewhere (docs/protocol.md 3.6).
 * Returns 0 (the epoch ends at our CTR: given back, or closed there by
 * the producer), 1 if the producer had closed it with bytes we have not
 * read (they are ours to read, not given back), 2 if it is not open yet
 * (the one before is closed at our CTR), or -EPROTO. */
int ring_rewind_cons(const struct ring *r, const struct ring_cons *c,
		     uint32_t epoch);

/* Load the consumer word as the producer sees it (for attach decisions). */
uint64_t ring_load_cons(const struct ring *r);

/* Wake protocol: after a publish, is the peer asleep and not yet rung for
 * this sleep? *memo holds the sleep we last rang for. Every publish that
 * precedes it is a seq-cst read-modify-write, which orders it (F1). */
bool ring_peer_needs_wake(_Atomic uint32_t *flag, uint32_t *memo);

/* Wake protocol: announce that we are about to sleep (odd value) or done
 * (even value), with the full fence before the caller's re-check. */
void ring_set_waiting(_Atomic uint32_t *flag, uint32_t *seq, bool waiting);

#endif
