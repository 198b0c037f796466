/*
 * SPDX-License-Identifier: MIT
 *
 * Description: the growth of one direction as built (docs/protocol.md
 * 3.7): a small ring S and a large area L the producer goes deep into when
 * S is full, and comes back from when everything is consumed; one deep
 * word says where bytes are. A small exhaustive model for spin; see
 * model/README.md.
 *
 * One producer P and one consumer C. Bytes are numbered 0..N-1; C asserts
 * it reads them in order, each from where P wrote it and not overwritten.
 * Shared, each access atomic (seq-cst):
 *   prodw  the count of bytes published (P)
 *   deepw  the deep word: DEEP * 16 + X (bytes from X on are in L), or
 *          Y (back in S at Y); written by P only, before it publishes
 *          anything past the point it names (R9 in src/ring/ring.c)
 *   cons   the count of bytes C has consumed (C)
 *   small  S cells, byte c at c % S; deep L cells, byte c at (c - X) % L
 * Counters here do not wrap (N < 16); the code's are modular, and it keeps
 * the flags in_l (C) and past_x (P) instead of comparing with X.
 *
 * P's rules (ring_free, ring_go_deep, ring_go_shallow, tx_ring): in S,
 * write while ctr - cons < S; when full, go deep at once (deepw := DEEP X
 * with X = ctr). Deep, write while ctr - max(cons, X) < L; when P finds
 * cons == ctr (all published) it may come back (deepw := Y = ctr). C's
 * rules (ring_load_prod, deep_load, ring_avail, ring_rptr, ring_consume):
 * load prodw, /then/ deepw, once each; check deepw as deep_load() does
 * (an honest P never fails the check); read S up to X, then L.
 *
 * Properties: (1) every byte is read in order from the cell P wrote it to,
 * before it was overwritten; (2) when C stops reading for good (STOP: at
 * any point it may), P blocks only in L with L full: with C not reading,
 * P always gets S + L bytes ahead, however many episodes came before;
 * (3) no deadlock while C reads.
 *
 * Compile-time choices (spin -DNAME): N bytes (7), S (1), L (2),
 * STOP (1: C may stop reading), DETACH (C may detach once, at any moment:
 * CLOSED by fetch_or, P's publishes are CASes, stranded bytes come first on
 * the side stream), RW (with DETACH: the close is a rewind at C's own
 * counter, 3.6, so the bytes P sends again may be published ones, in
 * either area). Mutants spin must catch: BUG_LOAD_ORDER (C loads deepw
 * before prodw: a byte published past X read from S), BUG_PUB_FIRST (P
 * publishes a byte past X before storing deepw), BUG_BACK_EARLY (P comes
 * back to S with a byte unread), BUG_OVERWRITE (P's deep space ignores
 * cons), and with DETACH: BUG_STRAND_SMALL (stranded bytes copied out of
 * S even when they are in L).
 *
 * History: an earlier design (2026-12-07, before the code) had an episode
 * count in the producer word and a consumer that reloaded it around its
 * loads of both switch points (a seqlock). Writing the code showed the
 * order of the two loads is enough: P changes the deep word only before
 * publishing past its point and comes back only with nothing unread, so a
 * C that loads prodw first places every byte prodw showed.
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

#define DEEP 16
#define ISDEEP(w) ((w) >= DEEP)
#define XOF(w) ((w) % 16)

byte prodw = 0;
byte deepw = 0;	/* in S, at 0 */
byte cons = 0;
byte small[S];
byte deep[L];
bool stopped = false;
bool pdone = false;
#ifdef DETACH
/* The consumer's detach (docs/protocol.md 3.4): CLOSED set by fetch_or at
 * any moment ends the epoch at the CTR then published (kc); every publish
 * of P is a CAS that fails once CLOSED is set, and P then sends what it
 * wrote past kc (stranded) and everything after on the side stream, a
 * FIFO. The deep word is a word of its own, which the close leaves alone. */
bool closed = false, cdone = false;
byte kc = 0;
chan side = [N] of { byte };
#define PUB(v) atomic { if :: !closed -> prodw = (v) :: else -> goto stranded fi }
#define RINGOK !(detached && c == kc)
#else
#define PUB(v) prodw = (v)
#define RINGOK true
#endif

active proctype P()
{
	byte ctr = 0, x = 0, c;
	bool dp = false;
	byte i;

	for (i : 0 .. S - 1) { small[i] = 255 }
	for (i : 0 .. L - 1) { deep[i] = 255 }
	do
	:: ctr == N -> break
	:: else ->
		if
		:: !dp ->
			c = cons;
			if
			:: ctr - c < S ->
				small[ctr % S] = ctr;
				ctr++;
				PUB(ctr)
			:: else ->
				/* S full: go deep at once (R9, then writes) */
				x = ctr;
				dp = true;
#ifdef BUG_PUB_FIRST
				deep[0] = ctr;
				ctr++;
				PUB(ctr);
#endif
				deepw = DEEP + x
			fi
		:: else ->
			c = cons;
			if
#ifdef BUG_BACK_EARLY
			:: ctr - c == 1 ->
#else
			:: c == ctr ->
#endif
				/* everything consumed: back to S at Y */
				deepw = ctr;
				dp = false
#ifdef BUG_OVERWRITE
			:: ctr - x < L + 1 ->
#else
			:: (c > x -> ctr - c : ctr - x) < L ->
#endif
				deep[(ctr - x) % L] = ctr;
				ctr++;
				PUB(ctr)
			:: else ->
				/* L full: wait for C, unless C stopped */
				if
				:: atomic { cons != c -> skip }
#ifdef DETACH
				:: atomic { closed -> skip }; goto stranded
#endif
				:: atomic { stopped && cons == c ->
					/* (2): only a full L blocks */
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
	/* the bytes from kc to ctr are in the ring (S before X, L from X):
	 * copy them out (ring_span()), then go on */
	c = kc;
	do
	:: c < ctr ->
		if
#ifndef BUG_STRAND_SMALL
		:: dp && c >= x -> side!deep[(c - x) % L]
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
	byte c = 0, x = 0, p, d;
	bool dp = false, in_l = false;
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
	:: !detached -> atomic { closed = true; kc = prodw };
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
#ifdef BUG_LOAD_ORDER
		d = deepw;
		p = prodw;
#else
		p = prodw;	/* A1 */
		d = deepw;	/* A9, after it */
#endif
		/* deep_load(): what an honest P never fails */
		if
		:: !ISDEEP(d) ->
			assert(!in_l || XOF(d) == c);
			dp = false;
			in_l = false
		:: ISDEEP(d) && in_l && XOF(d) == x -> skip
		:: else ->
			/* a new episode: from our counter on, within what was
			 * published, or ahead of it */
			assert(XOF(d) >= c);
			dp = true;
			x = XOF(d);
			in_l = x == c
		fi;
		if
		:: c < p ->
			/* ring_rptr(): L once we reached X, else S */
			if
			:: in_l -> assert(deep[(c - x) % L] == c)
			:: else -> assert(small[c % S] == c)
			fi;
			c++;
			if
			:: dp && c == x -> in_l = true
			:: else -> skip
			fi;
			cons = c
		:: else ->
			/* nothing new: wait for P to publish or finish */
			atomic { prodw != p || pdone -> skip }
		fi
	od;
#ifdef DETACH
	cdone = true
#endif
}
