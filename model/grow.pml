/*
 * SPDX-License-Identifier: MIT
 *
 * Description: a design model, not yet code: the two-area growth of one
 * direction sketched in docs/protocol.md 3.7 (a small ring S, a deep ring
 * L the producer switches to when S is full, and back when everything is
 * consumed), as a small exhaustive model for spin. See model/README.md.
 *
 * One producer P and one consumer C. Bytes are numbered 0..N-1; C asserts
 * it reads them in order, each from where P wrote it and not overwritten.
 * Shared, each access atomic (seq-cst):
 *   prodw  EP * 16 + CTR: the episode (even: small, odd: deep) and the
 *          count of bytes published, both written by one store of P
 *   dat    the counter X where the current deep episode began (P, before
 *          the store that makes EP odd)
 *   sat    the counter Y where the current small episode began (P, before
 *          the store that makes EP even; 0 at the start)
 *   cons   the count of bytes C has consumed (C)
 *   small  S cells, byte c at c % S; deep L cells, byte c at (c - X) % L
 * Counters here do not wrap (N < 16); the code's are modular.
 *
 * P's rules: in a small episode, write while c - cons < S; when full, go
 * deep at once (dat := ctr, then EP + 1). In a deep episode, write while
 * ctr - max(cons, X) < L; when P finds cons == ctr it may go back (sat :=
 * ctr, then EP + 1). C's rules: load prodw; if EP moved since its last
 * look, load dat and sat, then load prodw again and start over unless EP
 * is unchanged (a seqlock: P may have moved on in between); then read.
 *
 * Properties: (1) every byte is read in order from the cell P wrote it to,
 * before it was overwritten; (2) when C stops reading for good (STOP: at
 * any point it may), P blocks only in a deep episode whose area is full:
 * with C not reading, P always gets S + L bytes ahead, however many
 * episodes came before (the "second round" of docs/protocol.md 3.7);
 * (3) no deadlock while C reads.
 *
 * Compile-time choices (spin -DNAME): N bytes (7), S (1), L (2),
 * STOP (1: C may stop reading), DETACH (C may detach once, at any moment:
 * CLOSED by fetch_or, P's publishes and switches are CASes, stranded bytes
 * come first on the side stream), RW (with DETACH: the close is a rewind
 * at C's own counter, 3.6, so the bytes P sends again may be published
 * ones, in either ring). Mutants spin must catch: BUG_NO_RECHECK
 * (C trusts dat/sat without reloading prodw: a torn view, which fails the
 * consumer's own check of X, a false EPROTO), BUG_BACK_EARLY (P goes back
 * to small with a byte unread), BUG_OVERWRITE (P's deep space ignores
 * cons), and with DETACH: BUG_SWITCH_STORE (a switch by plain store, which
 * loses CLOSED) and BUG_STRAND_SMALL (stranded bytes copied out of the
 * small ring even when they are in the deep one). THIS IS A MODEL OF A
 * DESIGN; src/ does not implement it yet.
 *
 * What the search showed while the model was written (2026-12-07): the
 * consumer may be any number of episodes behind (a deep episode left
 * empty, because the consumer drained the small ring meanwhile, needs no
 * look); P never blocks in a small episode, however many came before
 * (when it goes back to small everything is consumed, so it may always go
 * deep again); and dat/sat can change between the consumer's loads only
 * while its view has nothing left to read, which the recheck makes
 * harmless.
 */

#ifndef N
#define N 7
#endif
#ifndef S
#define S 1
#endif
#ifndef L
#define L 2
#endif
#ifndef STOP
#define STOP 1
#endif

#define EPOF(w) ((w) / 16)
#define CTROF(w) ((w) % 16)

byte prodw = 0;	/* EP 0 (small), CTR 0 */
byte dat = 0, sat = 0;
byte cons = 0;
byte small[S];
byte deep[L];
bool stopped = false;
bool pdone = false;
#ifdef DETACH
/* The consumer's detach (docs/protocol.md 3.4): CLOSED set by fetch_or at
 * any moment ends the epoch at the CTR then published (kc); every publish
 * and every switch of P is a CAS that fails once CLOSED is set, and P then
 * sends what it wrote past kc (stranded) and everything after on the side
 * stream, a FIFO. */
bool closed = false, cdone = false;
byte kc = 0;
chan side = [N] of { byte };
#define PUB(v) atomic { if :: !closed -> prodw = (v) :: else -> goto stranded fi }
#ifdef BUG_SWITCH_STORE
/* a store, not a CAS: CLOSED (a bit of the same word in the code) is lost */
#define SWITCH(v) atomic { prodw = (v); closed = false }
#else
#define SWITCH(v) PUB(v)
#endif
#define RINGOK !(detached && c == kc)
#else
#define PUB(v) prodw = (v)
#define SWITCH(v) prodw = (v)
#define RINGOK true
#endif

active proctype P()
{
	byte ctr = 0, ep = 0, x = 0, c;
	byte i;

	for (i : 0 .. S - 1) { small[i] = 255 }
	for (i : 0 .. L - 1) { deep[i] = 255 }
	do
	:: ctr == N -> break
	:: else ->
		if
		:: ep % 2 == 0 ->
			c = cons;
			if
			:: ctr - c < S ->
				small[ctr % S] = ctr;
				ctr++;
				PUB(ep * 16 + ctr)
			:: else ->
				/* small full: go deep at once */
				dat = ctr;
				SWITCH((ep + 1) * 16 + ctr);
				x = ctr;
				ep++
			fi
		:: else ->
			c = cons;
			if
#ifdef BUG_BACK_EARLY
			:: ctr - c == 1 ->
#else
			:: c == ctr ->
#endif
				/* everything consumed: back to small */
				sat = ctr;
				SWITCH((ep + 1) * 16 + ctr);
				ep++
#ifdef BUG_OVERWRITE
			:: ctr - x < L + 1 ->
#else
			:: (c > x -> ctr - c : ctr - x) < L ->
#endif
				deep[(ctr - x) % L] = ctr;
				ctr++;
				PUB(ep * 16 + ctr)
			:: else ->
				/* deep full: wait for C, unless C stopped */
				if
				:: atomic { cons != c -> skip }
#ifdef DETACH
				:: atomic { closed -> skip }; goto stranded
#endif
				:: atomic { stopped && cons == c ->
					/* (2): only a full deep area blocks */
					assert(ctr - cons >= L);
					goto done }
				fi
			fi
		fi
	od;
#ifdef DETACH
	/* every byte published into the ring: P still serves a close that
	 * comes later (a rewind gives bytes back), until C has them all */
	if
	:: atomic { closed -> skip }
	:: atomic { cdone -> skip }; goto done
	fi;
stranded:
	/* the bytes from kc to ctr are in the ring, unpublished: copy them
	 * out of the area of the current episode, then go on */
	c = kc;
	do
	:: c < ctr ->
		if
#ifndef BUG_STRAND_SMALL
		:: ep % 2 == 1 && c >= x -> side!deep[(c - x) % L]
#endif
		:: else -> side!small[c % S]
		fi;
		c++
	:: else -> break
	od;
	do
	:: ctr < N -> side!ctr; ctr++
	:: else -> break
	od;
#endif
done:
	pdone = true
}

active proctype C()
{
	byte c = 0, ep = 0, x = 0, y = 0, w, w2, p, e;
#ifdef DETACH
	bool detached = false;
	byte v;
#endif

	do
	:: c == N -> break
#ifdef DETACH
#ifdef RW
	/* a rewind (3.6): the epoch ends at our own counter; the producer
	 * sends again, first, what we had not read of the ring */
	:: !detached -> atomic { closed = true; kc = c };
		detached = true
#else
	:: !detached -> atomic { closed = true; kc = CTROF(prodw) };
		detached = true
#endif
	:: detached && c == kc ->
		/* the ring is drained to the end of the epoch: the side
		 * stream has the rest, stranded bytes first */
		do
		:: c < N -> side?v; assert(v == c); c++
		:: else -> break
		od
#endif
#if STOP
	:: atomic { !stopped -> stopped = true }; break
#endif
	:: c < N && RINGOK ->
		w = prodw;
		p = CTROF(w);
		e = EPOF(w);
		if
		:: e != ep ->
			/* P switched (once or twice, see below) since we looked */
			x = dat;
			y = sat;
#ifndef BUG_NO_RECHECK
			w2 = prodw;
			if
			:: EPOF(w2) != e -> goto again /* torn: look again */
			:: else -> skip
			fi;
#endif
			/* What the consumer will check (an honest P must
			 * never fail it, a lying one gets EPROTO): a deep
			 * episode begins within what we have not read and
			 * what is published; a small one within what is
			 * published (we may have read past its start: the
			 * small ring's places do not depend on episodes). */
			assert(e % 2 == 0 || (c <= x && x <= p));
			assert(e % 2 == 1 || y <= p);
			/* We may be many episodes behind: a deep episode
			 * left empty (we consumed the small ring meanwhile)
			 * needs no look. One with bytes does: P goes back
			 * only once we consumed them, and we read a byte only
			 * from a view that places it. */
			ep = e
		:: else -> skip
		fi;
		if
		:: c < p ->
			/* where byte c is: a deep episode holds [x, ...); the
			 * small one before it [y or earlier, x); a small
			 * episode [y, ...) */
			if
			:: ep % 2 == 1 && c >= x ->
				assert(deep[(c - x) % L] == c)
			:: else ->
				assert(ep % 2 == 1 || c >= y);
				assert(small[c % S] == c)
			fi;
			c++;
			cons = c
		:: else ->
			/* nothing new: wait for P to publish or finish */
			atomic { prodw != w || pdone -> skip }
		fi;
again:		skip
	od;
#ifdef DETACH
	cdone = true
#endif
}
