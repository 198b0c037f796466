/* SPDX-License-Identifier: MIT */
/*
 * Description: private structures of chan/: the process-local handle and
 * the endpoint page shared with our own fork children (never with the peer).
 */
#ifndef IVMC_CHAN_IMPL_H
#define IVMC_CHAN_IMPL_H

#include <errno.h>
#include <pthread.h>

#include "../ring/ring.h"
#include "chan.h"
#include "shm_layout.h"

/* Endpoint flags (ep->flags). */
#define EP_PEER_GONE 0x1u /* doorbell hung up: no process maps the peer end */
#define EP_SIDE_EOF  0x2u /* side stream reached end of file */
#define EP_SHUT_RD   0x4u
#define EP_SHUT_WR   0x8u
#define EP_NONBLOCK  0x10u
#define EP_SIDE_SHUT 0x20u /* SHUT_WR owed to the side stream: the ring holds
			    * bytes a rewind may still give back */
#define EP_FIN_RUNG  0x40u /* rx: end of stream read from the ring, and the
			    * producer rung once for it (it may owe SHUT_WR) */
#define EP_SIDE_FIN  0x80u /* no doorbell: the peer's FIN came on the side
			    * stream after its fin word (a half-close: it may
			    * live on); senders stop watching for it */
#define EP_SIDE_DEAD 0x100u /* chan_peer_gone(): the side stream is as dead
			     * as the peer (a VM that died sends no FIN):
			     * reads end once it is empty, sends fail */

enum rx_mode { RX_SIDE = 0, RX_RING = 1 };

/* After this many doorbell wake-ups in a row with nothing to show for them,
 * the peer is flooding us: poison the channel. Past WAKE_NOPROGRESS_SLOW,
 * each such wake-up first naps WAKE_FLOOD_NAP_NS, so a flood costs little
 * CPU (under 10% of a core) on its way to the poison (about 2 s). */
#define WAKE_NOPROGRESS_MAX  2000
#define WAKE_NOPROGRESS_SLOW 64
#define WAKE_FLOOD_NAP_NS    1000000

/*
 * The endpoint page: MAP_SHARED | MAP_ANONYMOUS, so it is inherited by
 * fork() and all holders of this end see one state. A call holds its
 * direction's call lock throughout and its state lock except while asleep;
 * detach and attach take the state lock only (lock.c: a holder that dies
 * poisons the channel).
 */
struct chan_ep {
	_Atomic uint32_t tx_call, rx_call; /* held for a whole call (io.c) */
	_Atomic uint32_t tx_lock, rx_lock; /* the state; given up asleep */
	_Atomic uint32_t poll_lock; /* held by the one waiter in poll() */
	_Atomic uint32_t wake_gen;  /* bumped when the poller wakes (futex) */
	_Atomic uint32_t side_want; /* side events waiters need: rx | tx<<16 */
	_Atomic int32_t poison;	    /* 0, or why the channel is dead */
	_Atomic uint32_t flags;	    /* EP_* */
	_Atomic uint32_t spin_ns[2]; /* adaptive budgets, [CHAN_TX/RX] */
	_Atomic uint32_t noprogress; /* wake-ups without progress in a row */
	_Atomic uint32_t forked;    /* a fork copied this end: always lock */
	uint32_t tx_count, rx_count; /* calls, for CPU_NOTE_EVERY */

	/* tx: under tx_lock */
	struct ring_prod tx;
	uint64_t tx_off;       /* stream bytes accepted from the caller */
	uint32_t tx_pend;      /* bytes stranded in the ring by a consumer
				* close, still to go on the side stream */
	uint32_t tx_pend_at;   /* ring counter of the first of them */
	uint32_t tx_pend_own;  /* how many of them the current call wrote */
	uint32_t tx_call_unpub; /* bytes this call wrote, not yet published */
	uint32_t tx_resv_at;   /* ring counter at the last reserve */
	uint32_t tx_resv;      /* bytes handed out by the last reserve */
	uint32_t tx_wait_seq;  /* our prod_wait sequence */
	uint32_t tx_sleepers;  /* senders asleep (they sleep unlocked) */
	uint32_t rang_cons;    /* the consumer sleep we last rang for */
	bool tx_attach_ok;

	/* rx: under rx_lock */
	struct ring_cons rx;
	uint64_t rx_off;       /* stream bytes delivered to the caller */
	uint64_t rx_seen_pw;   /* producer word as last loaded */
	uint64_t rx_att;       /* attach offset of rx_epoch, if rx_att_known */
	uint32_t rx_epoch;     /* RX_RING: the open epoch; RX_SIDE: the next */
	uint32_t rx_peek_at;   /* ring counter at the last peek */
	uint32_t rx_peek;      /* bytes handed out by the last peek */
	uint32_t rx_wait_seq;
	uint32_t rx_sleepers;
	uint32_t rang_prod;    /* the producer sleep we last rang for */
	_Atomic int rx_mode;   /* also read, unlocked, by the poller */
	bool rx_att_known;
	bool rx_ready_ok;

	_Atomic uint64_t st_wakes, st_sleeps, st_spin_hits, st_deeps;
};

/* A doorbell shared by every channel of a region (chan_bell_new()): an
 * interrupt on fd, ring() to ring the peer. A MAP_SHARED page, like the
 * endpoint page, so that fork children share the poll role. */
struct chan_bell {
	_Atomic uint32_t poll_lock; /* held by the one waiter in poll() */
	_Atomic uint32_t gen;	    /* bumped as the poller leaves (futex) */
	_Atomic uint32_t followers; /* waiters asleep on gen */
	int fd;
	int (*ring)(void *arg);
	void *arg;
};

/* The process-local handle. Immutable after chan_open() (but for the
 * list links, under the list lock in chan.c, and side_fd). */
struct chan {
	struct chan *next, *prev; /* every open end of this process */
	struct chan_ep *ep;
	struct ivmc_shm_hdr *hdr; /* hostile; only hdr->dir[] is used */
	struct ring tx, rx;	  /* tx: dir[side], rx: dir[1 - side] */
	uint8_t *mirror[2];	  /* mirror maps, 2 * ring_size each */
	uint8_t *deep_map;	  /* L of direction 0 then 1, 2 * deep_size
				   * (not mirrored), or NULL */
	uint32_t ring_size;
	uint32_t deep_size;	  /* 0: the rings never grow */
	uint32_t spin_default;
	int doorbell;
	_Atomic int side_fd;	  /* may move (chan_set_side_fd()); read it
				   * with chan_side_fd() once per call */
	int wait_mode;
	uint32_t poll_max_ns;	  /* chan_open_mem(): no doorbell (-1), waiters
				   * poll, sleeping at most this long */
	uint32_t poll_idle_ns;	  /* ... or up to this long, after a long
				   * wait (poll_next_nap()) */
	uint64_t bell_poll_ns;	  /* bell and side stream: poll this long
				   * before sleeping on the bell */
	struct chan_bell *bell;	  /* chan_open_mem(): the region's, or NULL */
	bool has_side;
};

/* lock.c: the endpoint lock. Returns 0, -EAGAIN (try and busy),
 * -EOWNERDEAD (the holder died; the lock is ours now, what it guarded may be
 * torn), -EDEADLK (already ours: a bug). */
int ep_lock(_Atomic uint32_t *w, bool try);
void ep_unlock(_Atomic uint32_t *w);
/* Free the lock if its holder died (for locks that guard no state). */
bool ep_lock_reap(_Atomic uint32_t *w);

/* chan.c: ep_lock() that poisons the channel when a holder died (the state
 * it guarded may be torn): then -ECONNRESET. */
int chan_lock(struct chan *c, _Atomic uint32_t *m, bool try);
void chan_unlock(struct chan *c, _Atomic uint32_t *m);
/* Retake a lock chan_unlock() gave up (blocking). On a holder found dead,
 * poisons and returns -ECONNRESET with the lock held all the same. */
int chan_relock(struct chan *c, _Atomic uint32_t *m);

/* Mark the channel dead with err (first error wins). Returns -ECONNRESET. */
int chan_poison(struct chan *c, int err);

/* Return the poison error as the caller should see it, or 0. */
static inline int chan_dead(const struct chan *c)
{
	return ivmc_load_once(&c->ep->poison) ? -ECONNRESET : 0;
}

static inline bool chan_flag(const struct chan *c, uint32_t f)
{
	return ivmc_load_once(&c->ep->flags) & f;
}

/* tx, under the tx lock: S is full, go deep into L (docs/protocol.md 3.7).
 * Returns true if we did (then try again). */
bool chan_tx_deep(struct chan *c);

/* tx, under the tx lock: deep and everything read: back to S, and L's
 * pages go back to the system. Returns 0, or -ECONNRESET (poisoned: the
 * consumer word lied). */
int chan_tx_shallow(struct chan *c);

/* Ring the peer if its sleeper on flag wants it (after our publish). */
void chan_notify(struct chan *c, _Atomic uint32_t *flag, uint32_t *memo);
/* Ring the peer unasked (a consumer's request: rewind, fin seen): the
 * doorbell, or the bell; nothing on a polling channel (the peer looks). */
void chan_ring_peer(struct chan *c);

/* wake.c: wait until the tx or rx condition may have changed, spinning
 * first when the mode allows. Called with the direction's lock held, which
 * it gives up while asleep and retakes. Returns 0 (re-check), -EINTR,
 * -ETIMEDOUT, -ECONNRESET. */
int chan_wait(struct chan *c, enum chan_dir d, int timeout_ms);

/* wake.c: leave the needs-wakeup flag set so the doorbell rings on the
 * next change (for -EAGAIN and poll arming). Returns true if something
 * changed already (then re-check instead of sleeping). */
bool chan_arm(struct chan *c, enum chan_dir d);

/* wake.c: wake every follower of this end (they re-check). */
void chan_wake_followers(struct chan *c);

/* wake.c: wake every sleeper of this end, the poller too: after a local
 * change (detach, attach, shutdown) that a sleeper must act on. */
void chan_kick(struct chan *c);

/* wake.c: the first end of the process opened: the kick eventfd is made
 * now, so that a fork child inherits it with the end (and a kick in one
 * reaches a poller in the other). */
void chan_kicks_busy(void);

/* wake.c: the last end of the process closed: the kick eventfd and every
 * thread's kick set go (a process without channels holds no fd for them). */
void chan_kicks_idle(void);

/* wake.c: fork handling of the kick sets, called under the ends lock:
 * phase -1 before fork, 0 in the parent after, 1 in the child. */
void chan_kicks_fork(int phase);

/* The side stream's fd now (a relaxed load: see chan_set_side_fd()). */
static inline int chan_side_fd(const struct chan *c)
{
	return atomic_load_explicit((_Atomic int *)&c->side_fd,
				    memory_order_relaxed);
}

/* wake.c: empty the doorbell without waiting, if no poller is at it.
 * Returns true if that changed the end's state (peer gone, poisoned) or
 * stopped at its bound with more rings maybe behind: look again. */
bool chan_drain_nowait(struct chan *c);

/* wake.c: publish the CPU we run on into our CPU word (if it changed). */
void chan_note_cpu(_Atomic uint32_t *word);
#define CPU_NOTE_EVERY 64 /* publishes between two notes */

/* switch.c */
/* tx in side mode: open the next ring epoch if both ends allow it. */
int sw_tx_try_open(struct chan *c);
/* tx in side mode: push bytes stranded by a consumer close. 0 when none
 * left, -EAGAIN if the side stream is full, -errno. */
int sw_tx_flush_pending(struct chan *c);
/* rx: the producer word says this epoch is over and we drained it. */
void sw_rx_epoch_done(struct chan *c);
/* rx in side mode: how many side bytes may we read now (UINT64_MAX = no
 * limit known)? Moves to RX_RING when the attach offset is reached.
 * Returns 0 or -ECONNRESET. */
int sw_rx_side_limit(struct chan *c, uint64_t *limit);
/* tx in ring mode: did the consumer close the epoch under us? 1 if so
 * (now in side mode), 0 if not, -ECONNRESET if the word was forged. */
int sw_tx_check_closed(struct chan *c);
/* tx: the epoch is closed; unpublished ring bytes become pending. */
void sw_tx_strand(struct chan *c);
/* Outside a send: if the consumer closed our epoch (a rewind), move what it
 * gave back to the side stream now, without blocking (trylock); if we went
 * deep and everything is read, come back to S and give L's pages back. */
void sw_tx_rescue(struct chan *c);
/* tx, after SHUT_WR: shut the side stream down for writing once no rewind
 * can give bytes back to send on it; until then EP_SIDE_SHUT owes it. */
void sw_tx_shut_side(struct chan *c);
/* Pay an owed SHUT_WR (EP_SIDE_SHUT) to the side stream now. */
void sw_side_shut_now(struct chan *c);
/* tx: no call may return with bytes stranded. Flush them; a non-blocking
 * caller takes back the ones it wrote itself (*done shrinks), the rest are
 * flushed waiting for the side stream. Returns 0 or -errno. */
int sw_tx_settle(struct chan *c, bool nb, size_t *done);

#endif
