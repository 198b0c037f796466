/* SPDX-License-Identifier: MIT */
/*
 * Description: lossless switches between the ring and the side stream.
 * Each direction is a sequence of ring epochs; an epoch starts at a stream
 * offset (attach) and ends where CLOSED is set in the producer word, by
 * either side. Every byte is in exactly one place: side before the attach
 * offset, ring inside the epoch, side after it (DESIGN.md, chan).
 */
#include <poll.h>
#include <sys/socket.h>

#include "../transport/transport.h"
#include "chan_impl.h"

int sw_tx_try_open(struct chan *c)
{
	struct chan_ep *ep = c->ep;
	uint32_t e = ivmc_w_epoch(ep->tx.pw);
	uint64_t cw, want, expect = ep->tx.pw;

	if (!c->has_side || !ep->tx_attach_ok || ep->tx_pend ||
	    chan_flag(c, EP_PEER_GONE))
		return 0;
	cw = ring_load_cons(&c->tx);
	/* Open only when the consumer is ready for the next epoch and has
	 * drained the last one: then the ring is empty and its end known. */
	if (ivmc_w_epoch(cw) != ((e + 1) & IVMC_W_EPOCH_MASK) ||
	    ivmc_w_ctr(cw) != ep->tx.ctr)
		return 0;
	/* Every epoch starts in S (R9 before R6 and the open). */
	if (ep->tx.deep && chan_tx_shallow(c))
		return -ECONNRESET;
	if (ep->tx.deep)
		return 0; /* the consumer word moved: not ready after all */
	/* R6: the attach offset /then/ the open; pairs with A6 in
	 * sw_rx_side_limit(). */
	ivmc_store_release(&c->tx.shm->attach, ep->tx_off);
	want = ivmc_w_make(e + 1, ep->tx.ctr);
	if (!ivmc_cas_sc(&c->tx.shm->prod, &expect, want))
		return chan_poison(c, -EPROTO); /* only we clear CLOSED */
	ep->tx.pw = want;
	ep->tx.peer_cons = ep->tx.ctr;
	/* F4: the open /then/ a second look at READY (seq-cst, pairs with
	 * F3 in detach_rx()). A consumer that withdrew it in between reads
	 * the side stream without looking for an epoch: close this one at
	 * once, empty, so the side stream stays one stream for it
	 * (model/switch.pml). */
	if (ivmc_w_epoch(ring_load_cons(&c->tx)) != ivmc_w_epoch(want)) {
		int r = ring_close_prod(&c->tx, &ep->tx);

		if (r < 0)
			return chan_poison(c, -EPROTO);
		if (r == 1)
			sw_tx_strand(c); /* the consumer closed it: empty */
	}
	chan_notify(c, &c->tx.shm->cons_wait, &ep->rang_cons);
	return 0;
}

int sw_tx_flush_pending(struct chan *c)
{
	struct chan_ep *ep = c->ep;

	if (ep->tx_pend && chan_flag(c, EP_SIDE_DEAD))
		return -EPIPE; /* chan_peer_gone(): nobody reads it */
	while (ep->tx_pend) {
		uint8_t *p;
		uint32_t k = ring_span(&c->tx, &ep->tx, ep->tx_pend_at,
				       ep->tx_pend, &p);
		ssize_t n = send(chan_side_fd(c), p, k,
				 MSG_DONTWAIT | MSG_NOSIGNAL);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		ep->tx_pend -= (uint32_t)n;
		ep->tx_pend_at += (uint32_t)n;
		if (ep->tx_pend < ep->tx_pend_own)
			ep->tx_pend_own = ep->tx_pend;
	}
	return 0;
}

int sw_tx_check_closed(struct chan *c)
{
	struct chan_ep *ep = c->ep;
	int r = ring_check_closed(&c->tx, &ep->tx);

	if (r < 0 || (r == 1 && !c->has_side))
		return chan_poison(c, -EPROTO);
	if (r == 1)
		sw_tx_strand(c);
	return r;
}

void sw_tx_rescue(struct chan *c)
{
	struct chan_ep *ep = c->ep;
	bool owed, grown, closed;

	/* One load of each shared word (ep->tx is the lock holder's: not
	 * looked at before taking it). The deep word is ours (a peer that
	 * writes it only costs us a try of the lock). */
	grown = c->deep_size &&
		(ivmc_load_once(&c->tx.shm->deep) & IVMC_DEEP_ON);
	if (!c->has_side && !grown)
		return;
	owed = c->has_side && chan_flag(c, EP_SIDE_SHUT);
	closed = c->has_side &&
		 (ivmc_load_once(&c->tx.shm->prod) & IVMC_PW_CLOSED);
	if (!owed && !grown && !closed)
		return;
	if (chan_lock(c, &ep->tx_lock, true))
		return; /* a call is in: it will see the close */
	if (!chan_dead(c) && (owed || closed)) {
		if (!(ep->tx.pw & IVMC_PW_CLOSED))
			(void)sw_tx_check_closed(c);
		if ((ep->tx.pw & IVMC_PW_CLOSED) && ep->tx_pend)
			(void)sw_tx_flush_pending(c);
		if (owed)
			sw_tx_shut_side(c);
	}
	/* Deep, and the consumer has read it all: L's pages go back now,
	 * not at our next send, which may never come (a client that sent
	 * a large request and waits for the answer). */
	if (!chan_dead(c) && ep->tx.deep && !(ep->tx.pw & IVMC_PW_CLOSED))
		(void)chan_tx_shallow(c); /* a lie poisons: the next call sees it */
	chan_unlock(c, &ep->tx_lock);
}

void sw_tx_shut_side(struct chan *c)
{
	struct chan_ep *ep = c->ep;

	/* While our epoch is open and its consumer has not read all of it, a
	 * rewind may give bytes back to go on the side stream: owe the
	 * shutdown (its doorbell tells us when). The consumer word only
	 * grows, so once it shows everything read, nothing can come back. */
	if (!(ep->tx.pw & IVMC_PW_CLOSED) && !chan_dead(c) &&
	    sw_tx_check_closed(c) == 0 &&
	    ivmc_w_ctr(ring_load_cons(&c->tx)) != ep->tx.ctr) {
		atomic_fetch_or(&ep->flags, EP_SIDE_SHUT);
		return;
	}
	if (ep->tx_pend && sw_tx_flush_pending(c) == -EAGAIN) {
		atomic_fetch_or(&ep->flags, EP_SIDE_SHUT);
		return;
	}
	sw_side_shut_now(c);
}

void sw_side_shut_now(struct chan *c)
{
	atomic_fetch_and(&c->ep->flags, ~EP_SIDE_SHUT);
	shutdown(chan_side_fd(c), SHUT_WR);
}

int chan_settle(struct chan *c)
{
	struct chan_ep *ep = c->ep;
	int err;

	if (!c->has_side)
		return 0;
	err = chan_lock(c, &ep->tx_lock, false);
	if (err)
		return err;
	err = sw_tx_settle(c, false, NULL);
	if (chan_flag(c, EP_SIDE_SHUT))
		sw_side_shut_now(c);
	chan_unlock(c, &ep->tx_lock);
	return err;
}

void sw_tx_strand(struct chan *c)
{
	struct chan_ep *ep = c->ep;
	uint32_t end = ivmc_w_ctr(ep->tx.pw);

	/* The consumer closed the epoch at end: what we wrote past it (not
	 * published, or published and given back by a rewind) goes on the
	 * side stream, first. */
	ep->tx_pend = ep->tx.ctr - end;
	ep->tx_pend_at = end;
	ep->tx_pend_own = ep->tx_call_unpub < ep->tx_pend ? ep->tx_call_unpub
							  : ep->tx_pend;
	ep->tx_call_unpub = 0;
	ep->tx.ctr = end;
}

static int flush_blocking(struct chan *c)
{
	for (int tries = 0; tries < 1000000; tries++) {
		struct pollfd p = { chan_side_fd(c), POLLOUT, 0 };
		int err = sw_tx_flush_pending(c);

		if (err != -EAGAIN)
			return err;
		if (poll(&p, 1, 1000) < 0 && errno != EINTR)
			return -errno;
	}
	return -ETIMEDOUT;
}

int sw_tx_settle(struct chan *c, bool nb, size_t *done)
{
	struct chan_ep *ep = c->ep;
	int err;

	if (!ep->tx_pend)
		return 0;
	err = sw_tx_flush_pending(c);
	if (err != -EAGAIN)
		return err;
	if (nb && done) {
		/* What is still pending is the tail, and the tail is ours. */
		uint32_t k = ep->tx_pend < ep->tx_pend_own ? ep->tx_pend
							   : ep->tx_pend_own;

		if (k > *done)
			k = (uint32_t)*done;
		ep->tx_pend -= k;
		ep->tx_pend_own -= k;
		ep->tx_off -= k;
		*done -= k;
	}
	return flush_blocking(c);
}

void sw_rx_epoch_done(struct chan *c)
{
	struct chan_ep *ep = c->ep;

	ep->rx_mode = RX_SIDE;
	ep->rx_epoch = (ep->rx_epoch + 1) & IVMC_W_EPOCH_MASK;
	ep->rx_att_known = false;
	if (ep->rx_ready_ok)
		ring_set_ready(&c->rx, &ep->rx, ep->rx_epoch);
	/* A producer asleep for space must see the close too. */
	chan_notify(c, &c->rx.shm->prod_wait, &ep->rang_prod);
}

int sw_rx_side_limit(struct chan *c, uint64_t *limit)
{
	struct chan_ep *ep = c->ep;
	uint64_t w, att;
	uint32_t e;

	*limit = UINT64_MAX;
	if (ep->rx_att_known)
		goto known;
	w = ivmc_load_acquire(&c->rx.shm->prod);
	ep->rx_seen_pw = w;
	e = ivmc_w_epoch(w);
	if (e == ((ep->rx_epoch - 1) & IVMC_W_EPOCH_MASK)) {
		/* Not opened: the ring must hold nothing past what we read
		 * (an epoch left open by a peer now gone is over too). */
		if (ivmc_w_ctr(w) != ep->rx.ctr ||
		    (!(w & IVMC_PW_CLOSED) && !chan_flag(c, EP_PEER_GONE)))
			return chan_poison(c, -EPROTO);
		return 0;
	}
	if (e != ep->rx_epoch || ivmc_w_ctr(w) - ep->rx.ctr > ring_total(&c->rx))
		return chan_poison(c, -EPROTO);
	/* A6: pairs with R6 in sw_tx_try_open(). */
	att = ivmc_load_acquire(&c->rx.shm->attach);
	if (att < ep->rx_off && (w & IVMC_PW_CLOSED) &&
	    ivmc_w_ctr(w) == ep->rx.ctr) {
		/* An epoch opened as we withdrew READY and closed empty at once
		 * (F4); we read past its offset without looking: pass it. */
		sw_rx_epoch_done(c);
		return 0;
	}
	if (att < ep->rx_off || att > IVMC_OFF_MASK)
		return chan_poison(c, -EPROTO); /* before what we already read */
	ep->rx_att = att;
	ep->rx_att_known = true;
known:
	if (ep->rx_off == ep->rx_att) {
		ep->rx_mode = RX_RING;
		ep->rx_seen_pw = ivmc_w_make(ep->rx_epoch, ep->rx.ctr);
		*limit = 0;
		return 0;
	}
	*limit = ep->rx_att - ep->rx_off;
	return 0;
}

static int detach_tx(struct chan *c)
{
	struct chan_ep *ep = c->ep;
	int err;

	ep->tx_attach_ok = false;
	if (ep->tx.pw & IVMC_PW_CLOSED)
		return 0;
	err = ring_publish(&c->tx, &ep->tx); /* nothing stays unpublished */
	if (err < 0)
		return chan_poison(c, err);
	if (err == 1) {
		sw_tx_strand(c);
		return 0;
	}
	err = ring_close_prod(&c->tx, &ep->tx);
	if (err < 0)
		return chan_poison(c, -EPROTO);
	if (err == 1) {
		sw_tx_strand(c);
		return 0;
	}
	/* The consumer must learn the end even if it sleeps. */
	chan_notify(c, &c->tx.shm->cons_wait, &ep->rang_cons);
	return 0;
}

static int detach_rx(struct chan *c)
{
	struct chan_ep *ep = c->ep;

	ep->rx_ready_ok = false;
	if (ep->rx_mode == RX_SIDE)
		ring_set_ready(&c->rx, &ep->rx, ep->rx_epoch - 1);
	/* F3: withdraw READY /then/ set CLOSED: if the producer opened the
	 * epoch in between, our CLOSED ends it at once (sw_rx_side_limit()
	 * then sees an open-and-closed epoch, which it handles). */
	ivmc_fence_full();
	(void)ring_close_cons(&c->rx);
	chan_notify(c, &c->rx.shm->prod_wait, &ep->rang_prod);
	return 0;
}

/* Give back the unread part of the open epoch (docs/protocol.md 3.6):
 * detach_rx() at our own CTR rather than at the producer's. */
static int rewind_rx(struct chan *c)
{
	struct chan_ep *ep = c->ep;
	int r;

	ep->rx_ready_ok = false;
	if (ep->rx_mode == RX_SIDE)
		ring_set_ready(&c->rx, &ep->rx, ep->rx_epoch - 1);
	/* F3, as in detach_rx(): an epoch opened after this is closed
	 * empty by its producer (F4). */
	ivmc_fence_full();
	/* A peer gone cannot send anything again: read what it left. */
	r = chan_flag(c, EP_PEER_GONE) ? 1
				       : ring_rewind_cons(&c->rx, &ep->rx,
							  ep->rx_epoch);
	if (r < 0 || (r == 2 && ep->rx_mode == RX_RING))
		return chan_poison(c, -EPROTO);
	if (r == 2)
		return 0; /* on the side stream, and it opens nothing now */
	/* The producer has bytes to move even if it sleeps for nothing.
	 * Without a doorbell it polls, and looks between naps (poll_wait()). */
	chan_ring_peer(c);
	if (r == 1)
		return -EBUSY;
	/* What we knew was published past our CTR is given back: forget it,
	 * or the cache would show it as there to read in the next epoch. */
	ep->rx.peer_prod = ep->rx.ctr;
	ep->rx_peek = 0; /* a peek handed out is not released: it comes again */
	sw_rx_epoch_done(c); /* READY stays withdrawn */
	return 0;
}

static int attach_tx(struct chan *c)
{
	c->ep->tx_attach_ok = true; /* opens at the next send */
	return 0;
}

static int attach_rx(struct chan *c)
{
	struct chan_ep *ep = c->ep;

	ep->rx_ready_ok = true;
	/* Ready only once the last epoch is drained (RX_SIDE). */
	if (ep->rx_mode == RX_SIDE && !ep->rx_att_known)
		ring_set_ready(&c->rx, &ep->rx, ep->rx_epoch);
	return 0;
}

/* Run fn under the direction's state lock (never held by a sleeper), then
 * kick our own sleepers: one may now go on over the other path. */
static int switch_dir(struct chan *c, enum chan_dir d, int (*fn)(struct chan *))
{
	_Atomic uint32_t *m = d == CHAN_TX ? &c->ep->tx_lock : &c->ep->rx_lock;
	int err;

	if (!c->has_side)
		return -ENOTSUP;
	err = chan_lock(c, m, false);
	if (err)
		return err;
	err = chan_dead(c);
	if (!err)
		err = fn(c);
	chan_unlock(c, m);
	chan_kick(c);
	sw_tx_rescue(c);
	return err;
}

int chan_detach(struct chan *c, enum chan_dir d)
{
	return switch_dir(c, d, d == CHAN_TX ? detach_tx : detach_rx);
}

int chan_rewind(struct chan *c)
{
	return switch_dir(c, CHAN_RX, rewind_rx);
}

int chan_attach(struct chan *c, enum chan_dir d)
{
	return switch_dir(c, d, d == CHAN_TX ? attach_tx : attach_rx);
}
