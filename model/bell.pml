/*
 * SPDX-License-Identifier: MIT
 *
 * Description: the bell wait (src/chan/wake.c: bell_wait, bell_lead,
 * bell_follow, bell_bump, bell_take, bell_drain_nowait; chan_notify with a
 * bell) as a small exhaustive model for spin. See model/README.md.
 *
 * One process of a guest, one region, one bell: an eventfd that every
 * channel of the region shares (a counter; a read takes everything). Two
 * waiters of two channels of that bell:
 *   R (waiter 0): the consumer of channel 0; it sleeps for data with
 *                 channel 0's cons_wait;
 *   W (waiter 1): the producer of channel 1; it sleeps for space with
 *                 channel 1's prod_wait.
 * The peer (the other guest) has P0 (producer of channel 0) and C1
 * (consumer of channel 1). Their own waits are ideal (a guard); what they do
 * for us is exact (chan_notify() with a bell): publish (a seq-cst
 * read-modify-write), load our flag (F1), and ring the bell only if the flag
 * is odd and not the value they last rang for (the memo).
 *
 * A waiter (bell_wait()): snapshot the bell's gen; a new odd flag value (F2:
 * seq-cst exchange); re-check; then either take the bell's poll role
 * (try-lock) and poll the eventfd only if gen still allows it, read it
 * empty if poll() saw it readable, release the role and bump gen
 * (bell_lead()), or count itself a follower and sleep on gen with futex
 * semantics: only if the word is still the snapshot, until a bump wakes it
 * (bell_follow()). bell_bump() adds to gen, then wakes only if it sees a
 * follower (Dekker with the follower's count). Leaving, the flag goes even.
 *
 * The default is the code since 2026-12-08 (as in wake.pml): gen has two
 * halves. A take that found a ring bumps the high half while the taker
 * still holds the role; the role is released; then the low half is bumped
 * (and followers woken), whatever was taken. A poller polls only if the
 * high half is still its snapshot; a follower sleeps on the whole word.
 * The code before was -DBUG_UNLOCK_THEN_BUMP (one counter, unlock /then/
 * bump, the poller checks the whole word) with -DBUG_NOWAIT_NO_BUMP
 * (bell_drain_nowait() bumps only if it took a ring); spin finds a lost
 * wake-up in each (model/README.md).
 *
 * Nothing has a timeout by default: not the follower's FOLLOW_MS, not
 * poll()'s KICK_NAP_MS or BELL_MAIL_MS, so a lost wake-up is a deadlock
 * (spin's "invalid end state"). -DFOLLOW_TIMEOUT lets a follower's futex
 * sleep end by its FOLLOW_MS when nothing else can move (spin's timeout):
 * it shows which lost wake-ups the follower's timeout hides (as a stall of
 * up to FOLLOW_MS) and which it does not. poll() keeps no timeout.
 *
 * Compile-time choices (spin -DNAME):
 *   N, CAP     messages per channel (2), ring capacity in messages (1)
 *   NAPS=k     chan_wait() with a side stream: poll_wait_ns() first, up to
 *              k naps with the flag down, re-checking between them, then
 *              (timed out) bell_wait()
 *   NOWAIT=k   a third thread of ours calls bell_drain_nowait() k times
 *   GMOD       gen (each half) counts modulo GMOD (16)
 *   FOLLOW_TIMEOUT  see above
 *   NO_SLEEP_ASSERT  no assertions at the moment of sleeping: a lost
 *              wake-up shows as a deadlock only
 *   BUG_xxx    a mutation that spin must catch (listed in model/README.md)
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

#ifdef BUG_UNLOCK_THEN_BUMP
#define ONE_WORD 1 /* gen is one counter that the poller checks whole */
#endif

/* channel 0: peer -> us, R reads; channel 1: us -> peer, W writes */
byte prod[2], cons[2]; /* CTRs (never wrap here: at most N) */
byte flag[2];   /* channel 0's cons_wait, channel 1's prod_wait */
byte memo[2];   /* the peer's rang_cons (0) and rang_prod (1) */
bool bell;      /* the eventfd readable (its counter not 0) */
byte gen;       /* the bell's gen; in the fixed scheme its low half */
byte dgen;      /* the fixed scheme: gen's high half, bumped under the role
		 * by a take that found a ring; the poller checks it only */
byte poll_lock; /* 0 free, else 1 + the holder (2 waiters, 3 the drainer) */
byte followers; /* the bell's follower count */
bool asleep[2]; /* waiter in FUTEX_WAIT (the kernel's queue) */

/* ghosts, for the assertions only */
bool pend[2];   /* the peer moved channel c and has not decided to ring */
byte unbumped;  /* role holders that released and have not bumped */

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

/* The peer after its publish (P0) or consume (C1) on channel c: F1 load
 * (w is what it read), then ring if the flag asks and the memo allows
 * (ring_peer_needs_wake(), then bell->ring(): the eventfd counter). */
inline ring_if(c, w)
{
	atomic {
		if
		:: (w & 1) && w != memo[c] -> memo[c] = w; bell = true
		:: else -> skip
		fi;
		pend[c] = false;
		w = 0;
		i++
	}
}

proctype P0()
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
progress_p0:
		ring_if(0, w)
	:: else -> break
	od
}

proctype C1()
{
	byte i, w;
	do
	:: i < N ->
		(prod[1] != cons[1]); /* ideal wait for data */
		atomic { cons[1]++; pend[1] = true }; /* R2: exchange, seq-cst */
		w = flag[1]; /* F1 */
progress_c1:
		ring_if(1, w)
	:: else -> break
	od
}

/* bell_bump(): add to gen, then wake the followers if there are any (both
 * seq-cst: a follower counts itself, then sleeps only on the old gen). */
inline bump()
{
#ifdef BUG_FOLLOWERS_FIRST
	f = followers; /* the count loaded before the add */
	atomic { GINC(gen); unbumped-- };
#else
	atomic { GINC(gen); unbumped-- };
	f = followers;
#endif
	atomic {
		if
		:: f > 0 -> asleep[0] = false; asleep[1] = false /* FUTEX_WAKE */
		:: else -> skip
		fi;
		f = 0
	}
}

/* Leave the role (bell_lead()'s end, bell_drain_nowait()); took: the read
 * of the eventfd found a ring. */
inline release_role(took)
{
#if defined(BUG_UNLOCK_THEN_BUMP) && defined(BUG_NOWAIT_NO_BUMP)
	if
	:: poll_lock == 3 && !took -> poll_lock = 0 /* nothing taken: no bump */
	:: else -> atomic { poll_lock = 0; unbumped++ }; bump()
	fi
#elif defined(BUG_UNLOCK_THEN_BUMP)
	atomic { poll_lock = 0; unbumped++ }; /* unlock /then/ bump */
	bump()
#else
	if /* the half pollers check: under the role */
	:: took -> GINC(dgen)
	:: else -> skip
	fi;
#ifdef BUG_NOWAIT_NO_BUMP
	if
	:: poll_lock == 3 && !took -> poll_lock = 0 /* nothing taken: no bump */
	:: else -> atomic { poll_lock = 0; unbumped++ }; bump()
	fi
#else
	atomic { poll_lock = 0; unbumped++ };
	bump() /* the half followers need */
#endif
#endif
}

proctype Waiter(byte id)
{
	byte done, sg, sd, seq, f, naps;
	bool lead, took, napped;

	do
	:: done == N -> break
	:: else ->
		if
		:: atomic { cond(id) ->
			if
			:: id == RD -> cons[0]++ /* R2 (the peer's waits are ideal) */
			:: else -> prod[1]++     /* R1 */
			fi;
			done++ };
progress_w:
			skip
		:: else ->
#ifdef NAPS
			/* poll_wait_ns(): naps with the flag down, looking at the
			 * ring between them, for a bounded time */
			do
			:: cond(id) -> naps = 0; goto again /* changed(): return */
			:: else ->
				if
				:: naps < NAPS -> naps++ /* nap, look again */
				:: true -> naps = 0; napped = true; break /* -ETIMEDOUT */
				fi
			od;
#endif
			/* bell_wait() */
			atomic {
#ifndef BUG_GEN_LATE
				sg = gen; sd = dgen; /* before the re-check */
#endif
				seq = (seq + 1) | 1 /* a new odd value per sleep */
			};
#ifdef BUG_RECHECK_FIRST
			/* the re-check before the flag is raised (no F2) */
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
#ifdef BUG_NAP_NO_RECHECK
			/* after the naps, no re-check: the last nap just looked */
			:: cond(id) && !napped -> skip
#else
			:: cond(id) -> skip /* changed(): do not sleep */
#endif
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
					/* bell_lead(): poll only if gen allows */
					if
					:: POLL_OK ->
						/* asleep in poll(): if what we wait for
						 * is there, a ring must be in the
						 * eventfd or on its way */
#ifndef NO_SLEEP_ASSERT
						assert(!cond(id) || bell || pend[id]);
#endif
						bell; /* poll(): readable */
#ifdef BUG_TAKE_AFTER_UNLOCK
						release_role(true);
						bell = false /* bell_take() after the unlock */
#else
						atomic { took = bell; bell = false }; /* bell_take() */
						release_role(took);
						took = false
#endif
					:: else -> release_role(false)
					fi
				:: else ->
					/* bell_follow(): count, FUTEX_WAIT(gen, snapshot) */
					followers++;
					atomic {
						if
						:: UNMOVED ->
#if !defined(FOLLOW_TIMEOUT) && !defined(NO_SLEEP_ASSERT)
							/* asleep: someone must bump */
							assert(poll_lock != 0 || unbumped > 0);
#endif
							asleep[id] = true
						:: else -> skip
						fi
					};
#ifdef FOLLOW_TIMEOUT
					if
					:: !asleep[id]
					:: timeout -> asleep[id] = false /* FOLLOW_MS */
					fi;
#else
					!asleep[id];
#endif
					followers--
				fi
			fi;
awake:
			atomic {
				seq++; /* the last sleeper out: even */
				flag[id] = seq;
				sg = 0; sd = 0;
				napped = false
			}
		fi;
again:
		skip
	od
}

#ifdef NOWAIT
/* A thread of ours that does not sleep (bell_drain_nowait()): take the role
 * or leave the bell to its holder; read the eventfd empty; release; bump. */
proctype Drainer()
{
	byte k, f;
	bool took;
	do
	:: k < NOWAIT ->
		k++;
		if
		:: atomic { poll_lock == 0 -> poll_lock = 3 };
			atomic { took = bell; bell = false };
			release_role(took);
			took = false
		:: else -> skip
		fi
	:: else -> break
	od
}
#endif

init
{
	atomic {
		run P0();
		run C1();
		run Waiter(RD);
		run Waiter(WR);
#ifdef NOWAIT
		run Drainer();
#endif
	}
	/* every message sent is received, on both channels */
	(_nr_pr == 1);
	assert(prod[0] == N && cons[0] == N && prod[1] == N && cons[1] == N)
}
