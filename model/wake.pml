/*
 * SPDX-License-Identifier: MIT
 *
 * Description: the wake protocol (docs/protocol.md section 4, src/chan/wake.c,
 * src/ring/ring.c) as a small exhaustive model for spin. See model/README.md.
 *
 * Endpoint A has TWO waiters that share its doorbell, its poller role
 * (poll_lock) and its wake_gen:
 *   R (waiter 0): the consumer of direction 0 (B -> A); it sleeps for data
 *                 with the needs-wakeup flag cons_wait of direction 0;
 *   W (waiter 1): the producer of direction 1 (A -> B); it sleeps for space
 *                 with the needs-wakeup flag prod_wait of direction 1.
 * Peer B has two threads, PB (producer of direction 0) and CB (consumer of
 * direction 1). Their own waits are ideal (a guard); what is modelled exactly
 * is what they do for A: publish (a seq-cst read-modify-write, R1 / R2)
 * /then/ load A's flag (F1), and ring A's doorbell only if the flag is odd
 * and not the value they last rang for (the memo: rang_cons / rang_prod).
 *
 * A waiter (sleep_wait()): snapshot wake_gen; a new odd flag value (F2:
 * seq-cst exchange); re-check (changed()); then either take the poller role
 * (try-lock) and poll the doorbell only if no drain happened since the
 * snapshot, drain it, release the role and bump wake_gen (lead()), or sleep
 * on wake_gen as a follower with futex semantics: only if the word is still
 * the snapshot, until it changes (follow()). The last sleeper out makes the
 * flag even again.
 *
 * THE DEFAULT IS THE FIXED SCHEME, NOT src/ AS OF THIS WRITING: wake_gen
 * has two halves. A drain that took something bumps the high half while
 * the drainer still holds the role; the role is released; then the low half
 * is bumped. A poller polls only if the high half is still its snapshot; a
 * follower sleeps on the whole word. Today's code (one counter, unlock
 * /then/ bump, the poller checks the whole word) is -DBUG_UNLOCK_THEN_BUMP,
 * and spin finds a lost wake-up in it (model/README.md).
 *
 * Nothing has a timeout: neither the follower's 200 ms re-check nor the
 * poll() timeout is modelled, so a lost wake-up is a deadlock (spin's
 * "invalid end state") rather than a 200 ms stall. Spinning is not modelled:
 * it re-checks without touching the flag and cannot lose anything.
 *
 * Compile-time choices (spin -DNAME):
 *   N, CAP     messages each way (2), ring capacity in messages (1)
 *   NOWAIT=k   a third thread of A that drains the doorbell without sleeping,
 *              k times (chan_drain_nowait(): non-blocking calls, poll arming)
 *   GMOD       wake_gen halves count modulo GMOD (16)
 *   BUG_xxx    a mutation that spin must catch (listed in model/README.md).
 *              BUG_UNLOCK_THEN_BUMP is src/chan/wake.c as of this writing.
 */

#ifndef N
#define N 2
#endif
#ifndef CAP
#define CAP 1
#endif
#ifndef GMOD
#define GMOD 16
#endif
#define BCAP 2 /* doorbell buffer; a full one is "already rung" (EAGAIN) */

#if defined(BUG_UNLOCK_THEN_BUMP) || defined(BUG_BUMP_BEFORE_UNLOCK) || \
    defined(BUG_DOUBLE_BUMP)
#define ONE_WORD 1 /* wake_gen is one counter that the poller checks whole */
#endif

/* direction 0: B -> A, the ring R reads; direction 1: A -> B, W writes */
byte prod[2], cons[2]; /* CTRs (never wrap here: at most N) */
byte flag[2];   /* A's cons_wait (dir 0) and prod_wait (dir 1): sequence */
byte memo[2];   /* B's rang_cons (dir 0) and rang_prod (dir 1) */
byte bell;      /* bytes in A's doorbell */
byte gen;       /* A's wake_gen; in the fixed scheme its low half, bumped
		 * after every release of the role */
byte dgen;      /* the fixed scheme: wake_gen's high half, bumped under the
		 * role by a drain that found bytes; the poller checks it only */
byte poll_lock; /* 0 free, else 1 + the holder */

/* ghosts, for the assertions only */
bool pend[2];   /* B moved direction d and has not yet decided to ring */
byte unbumped;  /* holders that released the role and have not bumped */

#define RD 0
#define WR 1
/* What the waiter waits for: data (R) or space (W). */
#define cond(id) (id == RD -> prod[0] != cons[0] : prod[1] - cons[1] < CAP)

#define GINC(x) x = (x + 1) % GMOD
#ifdef ONE_WORD
#define POLL_OK  (gen == sg)
#define UNMOVED  (gen == sg)
#else
#define POLL_OK  (dgen == sd)
#define UNMOVED  (gen == sg && dgen == sd)
#endif

inline ring_bell()
{
	if
	:: bell < BCAP -> bell++
	:: else -> skip /* EAGAIN: already rung */
	fi
}

/* B, after its publish (PB) or consume (CB) of direction d: F1 load (w is
 * what it read), then ring if the flag asks and the memo allows. */
inline ring_if(d, w)
{
	atomic {
		if
		:: (w & 1) && w != memo[d] -> memo[d] = w; ring_bell()
		:: else -> skip
		fi;
		pend[d] = false;
		w = 0;
		i++
	}
}

proctype PB()
{
	byte i, w;
	do
	:: i < N ->
		(prod[0] - cons[0] < CAP); /* ideal wait for space */
#ifdef BUG_F1_LOAD_FIRST
		w = flag[0]; /* the flag load moves above the publish: no F1 */
		atomic { prod[0]++; pend[0] = true };
#else
		atomic { prod[0]++; pend[0] = true }; /* R1: CAS, seq-cst */
		w = flag[0]; /* F1: seq-cst load */
#endif
progress_pb:
		ring_if(0, w)
	:: else -> break
	od
}

proctype CB()
{
	byte i, w;
	do
	:: i < N ->
		(prod[1] != cons[1]); /* ideal wait for data */
		atomic { cons[1]++; pend[1] = true }; /* R2: exchange, seq-cst */
		w = flag[1]; /* F1 */
progress_cb:
		ring_if(1, w)
	:: else -> break
	od
}

/* Release the poller role and wake the followers (lead(),
 * chan_drain_nowait()); drained: the drain found bytes. */
inline release_role(drained)
{
#if defined(BUG_BUMP_BEFORE_UNLOCK)
	GINC(gen); /* one bump, before the unlock */
	poll_lock = 0;
#elif defined(BUG_UNLOCK_THEN_BUMP)
	atomic { poll_lock = 0; unbumped++ }; /* unlock /then/ bump */
	atomic { GINC(gen); unbumped-- };
#elif defined(BUG_DOUBLE_BUMP)
	GINC(gen); /* bump under the role, unlock, bump again */
	atomic { poll_lock = 0; unbumped++ };
	atomic { GINC(gen); unbumped-- };
#else
	if /* the half pollers check: under the role */
	:: drained -> GINC(dgen)
	:: else -> skip
	fi;
	atomic { poll_lock = 0; unbumped++ };
	atomic { GINC(gen); unbumped-- }; /* the half followers need */
#endif
}

proctype Waiter(byte id)
{
	byte done, sg, sd, seq;
	bool lead;

	do
	:: done == N -> break
	:: else ->
		if
		:: atomic { cond(id) ->
			if
			:: id == RD -> cons[0]++ /* R2 (B's waits are ideal) */
			:: else -> prod[1]++     /* R1 */
			fi;
			done++ };
progress_w:
			skip
		:: else ->
			/* sleep_wait() */
			atomic {
#ifndef BUG_GEN_LATE
				sg = gen; sd = dgen; /* before the re-check */
#endif
#ifdef BUG_SAME_SEQ
				seq = 1; /* the same odd value for every sleep */
#else
				seq = (seq + 1) | 1; /* a new odd value per sleep */
#endif
			};
#ifdef BUG_RECHECK_FIRST
			/* the re-check's loads before the flag store (no F2) */
			if
			:: cond(id) -> flag[id] = seq; goto awake
			:: else -> flag[id] = seq
			fi;
#else
			flag[id] = seq; /* F2: seq-cst exchange */
#endif
#ifdef BUG_GEN_LATE
			atomic { sg = gen; sd = dgen }; /* after the re-check */
#endif
			if
#if !defined(BUG_NO_RECHECK) && !defined(BUG_RECHECK_FIRST)
			:: cond(id) -> skip /* changed(): do not sleep */
#endif
			:: else ->
				atomic {
					if
					:: poll_lock == 0 -> poll_lock = id + 1; lead = true
					:: else -> lead = false
					fi
				};
				if
				:: lead -> lead = false;
					/* lead(): poll only if nothing was drained
					 * since the snapshot */
					if
					:: POLL_OK ->
						/* asleep in poll(): if what we wait for
						 * is there, a ring must be on its way */
						assert(!cond(id) || bell > 0 || pend[id]);
						(bell > 0); /* poll() */
						bell = 0;   /* drain() */
						release_role(true)
					:: else -> release_role(false)
					fi
				:: else ->
#ifdef BUG_FOLLOWER_DRAINS
					bell = 0; /* drains without the role */
#endif
#ifdef BUG_FUTEX_NOCHECK
					/* sleeps until the next bump, whatever
					 * moved since the snapshot */
					atomic { sg = gen; sd = dgen };
#endif
					/* follow(): FUTEX_WAIT(wake_gen, snapshot) */
					atomic {
						if
						:: UNMOVED ->
							/* asleep: someone must bump */
							assert(poll_lock != 0 || unbumped > 0)
						:: else -> skip
						fi
					};
					!UNMOVED
				fi
			fi;
awake:
			atomic {
				seq++; /* the last sleeper out: even */
				flag[id] = seq;
				sg = 0; sd = 0
			}
		fi
	od
}

#ifdef NOWAIT
/* A thread of A that drains without sleeping (chan_drain_nowait()). */
proctype Drainer()
{
	byte k;
	bool drained;
	do
	:: k < NOWAIT ->
		k++;
		if
		:: atomic { poll_lock == 0 -> poll_lock = 3 };
			atomic { drained = bell > 0; bell = 0 };
			release_role(drained)
		:: else -> skip
		fi
	:: else -> break
	od
}
#endif

init
{
	atomic {
		run PB();
		run CB();
		run Waiter(RD);
		run Waiter(WR);
#ifdef NOWAIT
		run Drainer();
#endif
	}
	/* every message sent is received, both ways */
	(_nr_pr == 1);
	assert(prod[0] == N && cons[0] == N && prod[1] == N && cons[1] == N)
}
