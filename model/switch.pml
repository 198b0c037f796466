/*
 * SPDX-License-Identifier: MIT
 *
 * Description: the offset / compare-and-swap switch protocol of one
 * direction (docs/protocol.md sections 2-3, src/ring/ring.c,
 * src/chan/switch.c, src/chan/io.c) as a small exhaustive model for spin.
 * See model/README.md.
 *
 * One producer P and one consumer C of a direction that has a ring of R
 * bytes and a side stream (a FIFO channel). Bytes are numbered 0..N-1 by
 * their stream offset; the consumer asserts that it delivers them in order,
 * each once. Shared words, each accessed atomically (seq-cst):
 *   prod   {CLOSED, EPOCH, CTR}: P publishes, closes and opens by CAS from
 *          the value it last wrote; C sets CLOSED by fetch_or, at any moment
 *   cons   {READY, CTR}: C publishes by exchange
 *   attach the stream offset where the open epoch starts (P, before its CAS)
 *   ring   R cells holding byte numbers
 * CTRs count modulo 16 and start at C0 (14: they wrap within the run), as
 * the code's count modulo 2^32; the model's differences are modular too.
 * Both sides take detach and attach requests at any step boundary (under
 * the direction's state lock: between the steps of a call, or while it
 * sleeps), at most SW of each per side. Waits are ideal: a side with
 * nothing to do blocks until a word it watches changes (the wake protocol
 * itself is model/wake.pml); C may also take SPUR steps with nothing new.
 *
 * Every "poison" of the code (a value only a lying peer could produce) is an
 * assertion here: with two honest peers it must never happen.
 *
 * THE DEFAULT INCLUDES A FIX THAT src/ LACKS AS OF THIS WRITING: after its
 * opening CAS, P loads cons again and closes the epoch at once, empty, if
 * READY was withdrawn meanwhile (F4); C passes over such an empty epoch even
 * if it has read past its attach offset. Today's code is
 * -DBUG_OPEN_UNCHECKED -DBUG_NO_EMPTY_SKIP, and spin finds a consumer detach
 * that does not hold, a false poison, and bytes delivered out of order in
 * it (model/README.md).
 *
 * Compile-time choices (spin -DNAME):
 *   N, R, SW   bytes (3), ring capacity (2), switch requests per side (1)
 *   SPUR       steps C takes with nothing new to see (1): a recv called
 *              while nothing changed, or a spurious wake-up
 *   C0         initial CTR (14)
 *   RW         rewinds C may do (0): chan_rewind(), after which C reads
 *              the side stream alone, as a program exec'd with the socket
 *              would (docs/protocol.md 3.6); P serves them even when it
 *              has nothing left to send (its receive or poll wakes)
 *   NO_CHECK_DETACH  do not assert that no byte is published into the
 *              ring after C's detach has returned (until it attaches)
 *   BUG_xxx    a mutation that spin must catch (model/README.md). src/ as
 *              of this writing is -DBUG_OPEN_UNCHECKED -DBUG_NO_EMPTY_SKIP.
 */

#ifndef N
#define N 3
#endif
#ifndef R
#define R 2
#endif
#ifndef SW
#define SW 1
#endif
#ifndef SPUR
#define SPUR 1
#endif
#ifndef C0
#define C0 14
#endif
#ifndef RW
#define RW 0
#endif

/* prod = CLOSED * 256 + EPOCH * 16 + CTR; cons = READY * 16 + CTR */
#define CL 256
#define PW(c, e, k) ((c) * CL + (e) * 16 + (k))
#define PWC(w) ((w) / CL)
#define PWE(w) (((w) / 16) % 16)
#define PWK(w) ((w) % 16)
#define CW(r, k) ((r) * 16 + (k))
#define CWR(w) ((w) / 16)
#define CWK(w) ((w) % 16)
#define INC(k) k = ((k) + 1) % 16
#define DIFF(a, b) (((a) + 16 - (b)) % 16) /* uint32_t a - b */
#define INF 255
#define SIDE 0
#define RING 1

short prod = PW(1, 0, C0); /* F_SIDE: epoch 0, closed */
byte cons = CW(1, C0);     /* C has mapped the region: READY 1 */
byte attach;
byte ring[R];
chan side = [N] of { byte };

bool c_det; /* ghost: C's detach has returned, no attach since */

/* P's, global so that init can tell when P has nothing left to do */
short pw = PW(1, 0, C0); /* the producer word as P last wrote it */
byte pend;               /* stranded bytes, still to go on the side */

/* ---------------------------------------------------------------- P */

/* ring_publish() (R1). The CAS fails only if C set CLOSED: then the bytes
 * past the end of the epoch are stranded (sw_tx_strand()). */
inline publish()
{
	atomic {
#ifdef BUG_PUBLISH_STORE
		prod = PW(0, PWE(pw), ctr); /* a plain store: erases CLOSED */
		pw = prod
#else
		if
		:: prod == pw ->
#ifndef NO_CHECK_DETACH
			assert(!c_det); /* C's detach holds */
#endif
			prod = PW(0, PWE(pw), ctr);
			pw = prod
		:: else -> strand()
		fi
#endif
	}
}

/* The consumer closed our open epoch (closed_by_cons() in ring.c): at
 * what we published (detach) or at what it had read (rewind), which is not
 * before the consumer counter. What we wrote past it goes on the side
 * stream first, copied out of the ring (sw_tx_strand()). */
inline strand()
{
	assert(PWC(prod) && PWE(prod) == PWE(pw) &&
	       DIFF(PWK(pw), PWK(prod)) <= DIFF(PWK(pw), CWK(cons))); /* else: poison */
	pw = prod;
#ifndef BUG_NO_STRAND
	pend = DIFF(ctr, PWK(pw));
	pend_at = PWK(pw);
#endif
	ctr = PWK(pw)
}

/* ring_close_prod() (R3) */
inline close_prod()
{
	atomic {
		if
		:: prod == pw -> prod = pw + CL; pw = prod
		:: else -> strand()
		fi
	}
}

proctype P()
{
	byte ctr = C0;           /* CTR: bytes written to the ring */
	byte off;                /* tx_off: stream bytes accepted */
	bool attach_ok = true;
	byte pend_at;
	byte sw, w;

	do
	:: off == N && pend == 0 && (PWC(pw) || ctr == PWK(pw)) ->
		break /* everything is on the side stream or published */

	:: sw < SW ->
		/* detach_tx() */
		sw++;
		attach_ok = false;
		if
		:: PWC(pw) -> skip
		:: !PWC(pw) && ctr != PWK(pw) -> publish()
		:: else -> skip
		fi;
		if
		:: PWC(pw) -> skip /* stranded: closed already */
		:: else -> close_prod()
		fi

	:: sw < SW ->
		/* attach_tx(): opens at the next send */
		sw++;
		attach_ok = true

	:: PWC(pw) && (off < N || pend > 0) ->
		/* tx_step() on the side stream */
		if
#ifdef BUG_FLUSH_LATE
		:: pend > 0 && off == N ->
#else
		:: pend > 0 ->
#endif
			/* sw_tx_flush_pending(): stranded bytes first, copied
			 * out of the ring */
			side!ring[pend_at % R];
			pend--;
			INC(pend_at)
		:: else ->
			/* sw_tx_try_open() */
			if
			:: attach_ok && pend == 0 ->
				w = cons; /* A4 */
				if
				:: CWR(w) == PWE(pw) + 1 && CWK(w) == ctr ->
#ifndef BUG_ATTACH_AFTER_OPEN
					attach = off; /* R6 */
#endif
					atomic {
						assert(prod == pw); /* else: poison */
						prod = PW(0, PWE(pw) + 1, ctr);
						pw = prod
					};
#ifdef BUG_ATTACH_AFTER_OPEN
					attach = off;
#endif
#ifndef BUG_OPEN_UNCHECKED
					/* did C withdraw READY meanwhile? Its
					 * CLOSED may have come before our CAS:
					 * then close the epoch ourselves, empty */
					w = cons;
					if
					:: CWR(w) != PWE(pw) -> close_prod()
					:: else -> skip
					fi
#endif
				:: else -> skip
				fi;
				w = 0
			:: else -> skip
			fi;
			if
			:: PWC(pw) && off < N -> side!off; off++ /* tx_side() */
			:: else -> skip /* opened: the next step uses the ring */
			fi
		fi

	:: !PWC(pw) && off < N && DIFF(ctr, CWK(cons)) < R ->
		/* tx_ring(): write one byte (more may follow: CHAN_MORE) */
		ring[ctr % R] = off;
		INC(ctr);
		off++

	:: !PWC(pw) && ctr != PWK(pw) ->
		publish()

	:: !PWC(pw) && ctr == PWK(pw) && DIFF(ctr, CWK(cons)) == R && prod != pw ->
		/* the ring is full and all published, and the word changed:
		 * sw_tx_check_closed() */
		atomic { strand() }
	od;
	/* Nothing left to send; P's receive or poll still wakes for the
	 * doorbell a rewind rings (sw_tx_rescue()). */
end_idle:
	do
	:: !PWC(pw) && prod != pw -> atomic { strand() }
	:: pend > 0 ->
		side!ring[pend_at % R];
		pend--;
		INC(pend_at)
	od
}

/* ---------------------------------------------------------------- C */

/* sw_rx_epoch_done() */
inline epoch_done()
{
	mode = SIDE;
	epoch++;
	att_known = false;
	att = 0;
	if
	:: ready_ok -> ready = epoch; cons = CW(ready, cctr) /* R4 */
	:: else -> skip
	fi
}

/* sw_rx_side_limit(): lim = side bytes C may take (INF: not known yet) */
inline side_limit()
{
	if
	:: att_known -> skip
	:: else ->
		w = prod; /* A1 */
		seen = w;
		if
		:: PWE(w) == epoch - 1 ->
			/* not opened: nothing in the ring past what we read */
			assert(PWC(w) && PWK(w) == cctr) /* else: poison */
		:: PWE(w) == epoch ->
			assert(DIFF(PWK(w), cctr) <= R);
			x = attach; /* A6 */
#ifndef BUG_NO_EMPTY_SKIP
			if
			:: x < off && PWC(w) && PWK(w) == cctr ->
				/* opened after we withdrew READY and closed
				 * at once, empty: nothing to read there */
				epoch_done();
				skipped = true
			:: else ->
#endif
				assert(x >= off); /* else: poison */
				att = x;
				att_known = true
#ifndef BUG_NO_EMPTY_SKIP
			fi
#endif
		:: else -> assert(false) /* poison */
		fi;
		w = 0;
		x = 0
	fi;
	if
	:: att_known && off == att ->
		mode = RING;
		seen = PW(0, epoch, cctr);
		lim = 0
	:: att_known && off != att -> lim = att - off
	:: else -> lim = INF
	fi
}

inline deliver(x)
{
	assert(x == off); /* bytes 0..N-1, in order, each once */
progress_rx:
	off++;
	x = 0
}

/* C has something to look at: a byte on the side, a change of the
 * producer word since it last looked (its wait's snapshot), bytes in the
 * ring it knows of, or the end of the epoch to act on. */
#define WOKEN_SIDE (len(side) > 0 || prod != seen || (att_known && off == att))
#define WOKEN_RING (peer != cctr || prod != seen || PWC(seen))

proctype C()
{
	byte mode = SIDE, epoch = 1; /* RING: the open epoch; SIDE: the next */
	bool att_known, ready_ok = true, skipped, peek;
	bool tcp_only;	/* rewound: reads the side stream alone */
	byte att, cctr = C0, peer = C0, off, ready = 1, lim, x, y, sw;
	byte spur = SPUR, rw, rres;
	short seen = PW(1, 0, C0), w;

	do
	:: off == N -> break

	:: tcp_only && len(side) > 0 ->
		side?x;
		deliver(x)

	:: rw < RW && !tcp_only ->
		/* rewind_rx() */
		rw++;
		ready_ok = false;
		if
		:: mode == SIDE -> ready = epoch - 1; cons = CW(ready, cctr)
		:: else -> skip
		fi;
		/* F3; ring_rewind_cons(): a failed CAS loads again, so one
		 * atomic look-and-CAS stands for the loop (R8) */
		atomic {
			if
			:: PWE(prod) == epoch - 1 ->
				assert(PWC(prod) && PWK(prod) == cctr);
				rres = 2 /* not opened */
			:: PWE(prod) == epoch && !PWC(prod) ->
#ifdef BUG_REWIND_AT_PROD
				prod = prod + CL; /* closes at what P published */
#else
				prod = PW(1, epoch, cctr);
#endif
				rres = 0
			:: PWE(prod) == epoch && PWC(prod) && PWK(prod) == cctr ->
				rres = 0
			:: PWE(prod) == epoch && PWC(prod) && PWK(prod) != cctr ->
				rres = 1 /* P closed first: -EBUSY */
			:: else -> assert(false) /* poison */
			fi;
			c_det = true
		};
		if
		:: rres == 2 -> assert(mode == SIDE); tcp_only = true
		:: rres == 0 -> peer = cctr; epoch_done(); tcp_only = true
		:: rres == 1 -> skip /* a consumer detach: reads the ring on */
		fi;
		rres = 0

	:: sw < SW && !tcp_only ->
		/* detach_rx() */
		sw++;
		ready_ok = false;
		if
		:: mode == SIDE ->
#ifndef BUG_NO_WITHDRAW
			ready = epoch - 1; /* withdraw READY */
			cons = CW(ready, cctr)
#else
			skip
#endif
		:: else -> skip
		fi;
		/* F3: full fence; R5 */
		atomic {
#ifdef BUG_CLOSE_STORE
			/* a plain store of what C last saw, plus CLOSED */
			prod = (PWC(seen) -> seen : seen + CL);
#else
			prod = (PWC(prod) -> prod : prod + CL);
#endif
			c_det = true
		}

	:: sw < SW && !tcp_only ->
		/* attach_rx() */
		sw++;
		atomic { ready_ok = true; c_det = false };
		if
		:: mode == SIDE && !att_known ->
			ready = epoch;
			cons = CW(ready, cctr)
		:: else -> skip
		fi

	:: atomic { !tcp_only && mode == SIDE && (WOKEN_SIDE || spur > 0) ->
		if
		:: !WOKEN_SIDE -> spur-- /* a call or a wake-up, nothing new */
		:: else -> skip
		fi };
		/* rx_side() */
		side_limit();
#ifdef BUG_NO_PEEK
		peek = false;
#else
		peek = lim == INF && ready == epoch;
#endif
		if
		:: skipped -> skipped = false /* STEP_AGAIN */
		:: !skipped && mode == RING -> skip /* STEP_AGAIN */
		:: !skipped && mode == SIDE && len(side) == 0 -> skip /* -EAGAIN */
		:: !skipped && mode == SIDE && len(side) > 0 && peek ->
			/* an epoch may open under us: look, re-check, take */
			side?<y>;
			side_limit();
			if
			:: skipped -> skipped = false; y = 0
			:: !skipped && lim == 0 -> y = 0 /* STEP_AGAIN */
			:: !skipped && lim != 0 ->
				side?x;
				assert(x == y);
				y = 0;
				deliver(x)
			fi
		:: !skipped && mode == SIDE && len(side) > 0 && !peek ->
			side?x;
			deliver(x)
		fi;
		peek = false;
		lim = 0

	:: atomic { !tcp_only && mode == RING && (WOKEN_RING || spur > 0) ->
		if
		:: !WOKEN_RING -> spur--
		:: else -> skip
		fi };
		/* rx_ring() */
		if
		:: peer == cctr ->
			/* rx_avail(): the cache says empty, load */
			w = prod; /* A1 */
			assert(DIFF(PWK(w), cctr) <= R && PWE(w) == epoch); /* else: poison */
			peer = PWK(w);
			seen = w;
			w = 0
		:: else -> skip
		fi;
		if
		:: peer != cctr ->
			x = ring[cctr % R];
			INC(cctr);
			cons = CW(ready, cctr); /* R2 */
			deliver(x)
		:: peer == cctr && PWC(seen) ->
			/* rx_ring_empty(): drained and closed */
			epoch_done()
		:: peer == cctr && !PWC(seen) -> skip /* -EAGAIN: wait */
		fi
	od
}

init
{
	atomic {
		run P();
		run C()
	}
	/* C has every byte; P, idle for good, owes nothing (else what it
	 * still sends would be a duplicate) */
	(_nr_pr == 2 && pend == 0 && (PWC(pw) || prod == pw));
	assert(len(side) == 0)
}
