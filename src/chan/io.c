/* SPDX-License-Identifier: MIT */
/*
 * Description: the data path of a channel: send and receive over the ring
 * or the side stream, zero-copy reserve/commit and peek/release, shutdown
 * and poll arming. A call holds its direction's call and state locks
 * (dir_enter()); it gives the state lock up while asleep (wake.c).
 */
#include <limits.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>

#include "../transport/transport.h"
#include "chan_impl.h"

/* Publish in chunks so the consumer copies while we still write. */
#define TX_CHUNK (64u * 1024)
/* "The mode changed under us, step again" (never leaves this file). */
#define STEP_AGAIN (-EINPROGRESS)

/* A cursor over an iovec array. */
struct iovc {
	const struct iovec *iov;
	int cnt, i;
	size_t off;
};

static int iov_total(const struct iovec *iov, int cnt, size_t *total)
{
	size_t t = 0;

	if (cnt < 0 || cnt > IOV_MAX || (cnt && !iov))
		return -EINVAL;
	for (int i = 0; i < cnt; i++) {
		if (iov[i].iov_len > SSIZE_MAX - t)
			return -EINVAL;
		t += iov[i].iov_len;
	}
	*total = t;
	return 0;
}

/* The current segment (skipping empty ones). */
static struct iovec iovc_cur(struct iovc *ic)
{
	while (ic->i < ic->cnt && ic->off == ic->iov[ic->i].iov_len) {
		ic->i++;
		ic->off = 0;
	}
	return (struct iovec){ (char *)ic->iov[ic->i].iov_base + ic->off,
			       ic->iov[ic->i].iov_len - ic->off };
}

static void iovc_adv(struct iovc *ic, size_t n)
{
	ic->off += n;
}

/* Copy n bytes out of the caller's vector into dst. */
static void iovc_gather(struct iovc *ic, uint8_t *dst, size_t n)
{
	while (n) {
		struct iovec v = iovc_cur(ic);
		size_t k = v.iov_len < n ? v.iov_len : n;

		memcpy(dst, v.iov_base, k);
		dst += k;
		n -= k;
		iovc_adv(ic, k);
	}
}

/* Copy n bytes from src into the caller's vector. */
static void iovc_scatter(struct iovc *ic, const uint8_t *src, size_t n)
{
	while (n) {
		struct iovec v = iovc_cur(ic);
		size_t k = v.iov_len < n ? v.iov_len : n;

		memcpy(v.iov_base, src, k);
		src += k;
		n -= k;
		iovc_adv(ic, k);
	}
}

static bool nonblocking(const struct chan *c, unsigned int flags)
{
	return (flags & CHAN_NONBLOCK) || chan_flag(c, EP_NONBLOCK);
}

#define ARMS_MAX 8

/* Nothing to do now: sleep, or (non-blocking) arm the doorbell so that
 * ivmc_fd() polls readable on the next change and return -EAGAIN. Returns 0
 * to step again. */
static int wait_or_arm(struct chan *c, enum chan_dir d, bool nb, int *arms)
{
	if (!nb)
		return chan_wait(c, d, -1);
	/* Empty the doorbell that woke the caller (else ivmc_fd() stays
	 * readable and an event loop spins) and learn of a peer gone; then
	 * arm. In that order: a ring after the arm must stay in the doorbell.
	 * At most ARMS_MAX looks a call: a burst of rings (some 400 bytes)
	 * with the hang-up behind it still ends the stream in this call. */
	if (chan_drain_nowait(c) && ++*arms < ARMS_MAX)
		return 0;
	if (chan_arm(c, d) && ++*arms < ARMS_MAX)
		return 0;
	return -EAGAIN;
}

/* Something moved: doorbell wake-ups so far were not a flood. */
static void progress(struct chan *c)
{
	ivmc_store_once(&c->ep->noprogress, 0);
}

/* ---- send ---- */

static int tx_publish(struct chan *c)
{
	struct chan_ep *ep = c->ep;
	int r = ring_publish(&c->tx, &ep->tx);

	if (r < 0)
		return chan_poison(c, r);
	if (r == 1 && !c->has_side)
		return chan_poison(c, -EPROTO); /* no side stream to close to */
	if (r == 1) {
		sw_tx_strand(c); /* consumer closed: bytes go on the side */
		return 0;
	}
	ep->tx_call_unpub = 0;
	chan_notify(c, &c->tx.shm->cons_wait, &ep->rang_cons);
	if (!(++ep->tx_count % CPU_NOTE_EVERY)) /* for a peer that spins */
		chan_note_cpu(&c->tx.shm->prod_cpu);
	return 0;
}

static ssize_t side_errno(int err)
{
	if (err == ECONNRESET || err == EPIPE)
		return -EPIPE;
	return -err;
}

static ssize_t tx_side(struct chan *c, struct iovc *ic, size_t left)
{
	struct iovec v = iovc_cur(ic);
	ssize_t n;

	if (chan_flag(c, EP_SIDE_DEAD))
		return -EPIPE; /* chan_peer_gone(): nobody reads it */
	if (v.iov_len > left)
		v.iov_len = left;
	do
		n = send(chan_side_fd(c), v.iov_base, v.iov_len,
			 MSG_DONTWAIT | MSG_NOSIGNAL);
	while (n < 0 && errno == EINTR);
	if (n < 0)
		return errno == EAGAIN || errno == EWOULDBLOCK ? -EAGAIN
							       : side_errno(errno);
	iovc_adv(ic, (size_t)n);
	c->ep->tx_off += (uint64_t)n;
	return n;
}

static ssize_t tx_ring(struct chan *c, struct iovc *ic, size_t left,
		       unsigned int flags)
{
	struct chan_ep *ep = c->ep;
	uint32_t space, n;
	int err;

	if (ep->tx.deep) {
		err = chan_tx_shallow(c);
		if (err)
			return err;
	}
	err = ring_free(&c->tx, &ep->tx, 1, &space);
	if (err)
		return chan_poison(c, err);
	if (!space && chan_tx_deep(c))
		return STEP_AGAIN;
	if (!space) {
		err = tx_publish(c); /* bytes held back by CHAN_MORE */
		if (!err)
			err = sw_tx_check_closed(c);
		if (err)
			return err < 0 ? err : STEP_AGAIN;
		return (ep->tx.pw & IVMC_PW_CLOSED) ? STEP_AGAIN : -EAGAIN;
	}
	n = space < TX_CHUNK ? space : TX_CHUNK;
	if (n > ring_wcontig(&c->tx, &ep->tx))
		n = ring_wcontig(&c->tx, &ep->tx); /* L's end: the rest next */
	if (n > left)
		n = (uint32_t)left;
	iovc_gather(ic, ring_wptr(&c->tx, &ep->tx), n);
	ep->tx.ctr += n;
	ep->tx_off += n;
	ep->tx_call_unpub += n;
	if (!(flags & CHAN_MORE) || n < left) {
		err = tx_publish(c);
		if (err)
			return err;
	}
	return n;
}

static ssize_t tx_step(struct chan *c, struct iovc *ic, size_t left,
		       unsigned int flags)
{
	struct chan_ep *ep = c->ep;
	int err;

	/* A peer gone after closing our epoch (it went back to the side
	 * stream: exec, fd passing) left the side stream to carry on: look
	 * for that close before calling the peer gone. */
	if (!(ep->tx.pw & IVMC_PW_CLOSED) && c->has_side &&
	    chan_flag(c, EP_PEER_GONE)) {
		err = sw_tx_check_closed(c);
		if (err < 0)
			return err;
	}
	if (ep->tx.pw & IVMC_PW_CLOSED) {
		err = sw_tx_flush_pending(c);
		if (err)
			return err == -EAGAIN ? -EAGAIN : side_errno(-err);
		err = sw_tx_try_open(c);
		if (err)
			return err;
		if (ep->tx.pw & IVMC_PW_CLOSED)
			return tx_side(c, ic, left);
	} else if (chan_flag(c, EP_PEER_GONE)) {
		return -EPIPE;
	}
	return tx_ring(c, ic, left, flags);
}

/*
 * Two locks a direction: the call lock, held for a whole call, serialises
 * callers (a message is never cut by another thread's, even when a call
 * sleeps); the state lock, given up while asleep, guards the state, so that
 * a detach or an attach, which take only it, never wait for a sleeper.
 */
static int dir_enter(struct chan *c, _Atomic uint32_t *call,
		     _Atomic uint32_t *state, bool nb)
{
	int err = chan_lock(c, call, nb);

	if (err)
		return err;
	err = chan_lock(c, state, nb);
	if (err)
		chan_unlock(c, call);
	return err;
}

static void tx_exit(struct chan *c)
{
	chan_unlock(c, &c->ep->tx_lock);
	chan_unlock(c, &c->ep->tx_call);
}

static void rx_exit(struct chan *c)
{
	chan_unlock(c, &c->ep->rx_lock);
	chan_unlock(c, &c->ep->rx_call);
}

static int tx_enter(struct chan *c, bool nb)
{
	int err = dir_enter(c, &c->ep->tx_call, &c->ep->tx_lock, nb);

	if (err)
		return err;
	err = chan_dead(c);
	if (!err && chan_flag(c, EP_SHUT_WR))
		err = -EPIPE;
	if (err)
		tx_exit(c);
	else
		c->ep->tx_call_unpub = 0;
	return err;
}

ssize_t chan_sendv(struct chan *c, const struct iovec *iov, int iovcnt,
		   unsigned int flags)
{
	struct iovc ic = { iov, iovcnt, 0, 0 };
	bool nb = nonblocking(c, flags);
	size_t left, done = 0;
	ssize_t r = 0;
	int arms = 0, err = iov_total(iov, iovcnt, &left);

	if (!err)
		err = tx_enter(c, nb);
	if (err)
		return err;
	/* Any send makes an open reservation stale (ivmc_reserve(3)): its
	 * bytes may land where the reservation points (a ring reopened at
	 * the same counter after a detach, or bytes stranded and taken
	 * back), so the ring counter alone cannot tell. */
	c->ep->tx_resv = 0;
	while (left) {
		r = chan_dead(c);
		if (!r)
			r = tx_step(c, &ic, left, flags);
		if (r > 0) {
			done += (size_t)r;
			left -= (size_t)r;
			progress(c);
			continue;
		}
		if (r == STEP_AGAIN)
			continue;
		if (r == -EAGAIN)
			r = wait_or_arm(c, CHAN_TX, nb, &arms);
		if (r)
			break;
	}
	err = sw_tx_settle(c, nb, &done);
	tx_exit(c);
	if (err && !done)
		return err == -EAGAIN ? -EAGAIN : side_errno(-err);
	return done ? (ssize_t)done : (left ? r : 0);
}

/* ---- receive ---- */

/* End of stream read: a SHUT_WR the producer owes its side stream can go
 * now (sw_tx_shut_side()); tell it, once. Without a doorbell it polls, and
 * looks between naps (poll_wait()). */
static void fin_seen(struct chan *c)
{
	if (c->has_side && !chan_flag(c, EP_FIN_RUNG)) {
		atomic_fetch_or(&c->ep->flags, EP_FIN_RUNG);
		chan_ring_peer(c);
	}
}

/* On the side stream with nothing to read: has the producer's SHUT_WR (fin,
 * R7) said the stream ends exactly here? Then that is the end, whatever
 * the side stream shows: its own FIN may still be owed. */
static bool side_fin_reached(struct chan *c)
{
	uint64_t fin = ivmc_load_acquire(&c->rx.shm->fin);

	if (!(fin & IVMC_FIN_SET) || (fin & IVMC_OFF_MASK) != c->ep->rx_off)
		return false;
	fin_seen(c);
	return true;
}

static ssize_t rx_side(struct chan *c, struct iovc *ic, size_t left)
{
	struct chan_ep *ep = c->ep;
	struct iovec v;
	uint64_t lim;
	ssize_t n;
	bool peek;
	int err = sw_rx_side_limit(c, &lim);

	if (err)
		return err;
	if (ep->rx_mode == RX_RING)
		return STEP_AGAIN;
	v = iovc_cur(ic);
	if (v.iov_len > left)
		v.iov_len = left;
	if (v.iov_len > lim)
		v.iov_len = (size_t)lim;
	/* While an epoch may open under us, look before taking: the side
	 * stream may hold bytes from after that epoch (sw_rx_side_limit()). */
	peek = lim == UINT64_MAX && ep->rx.ready == ep->rx_epoch;
	do
		n = recv(chan_side_fd(c), v.iov_base, v.iov_len,
			 MSG_DONTWAIT | (peek ? MSG_PEEK : 0));
	while (n < 0 && errno == EINTR);
	/* Empty, and chan_peer_gone() said nothing more comes: its end. */
	if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) &&
	    chan_flag(c, EP_SIDE_DEAD))
		n = 0;
	if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
		return side_fin_reached(c) ? 0 : -EAGAIN;
	if (n < 0)
		return -errno;
	if (n == 0) {
		atomic_fetch_or(&ep->flags, EP_SIDE_EOF);
		return ep->rx_att_known ? chan_poison(c, -EPROTO) : 0;
	}
	if (peek) {
		err = sw_rx_side_limit(c, &lim);
		if (err)
			return err;
		if ((uint64_t)n > lim)
			n = (ssize_t)lim;
		if (!n)
			return STEP_AGAIN;
		if (recv(chan_side_fd(c), v.iov_base, (size_t)n, MSG_DONTWAIT) != n)
			return chan_poison(c, -EIO); /* someone else read it */
	}
	iovc_adv(ic, (size_t)n);
	ep->rx_off += (uint64_t)n;
	return n;
}

/* The ring is empty: end of epoch, end of stream, or nothing yet? */
static ssize_t rx_ring_empty(struct chan *c, uint64_t w)
{
	struct chan_ep *ep = c->ep;
	uint64_t fin;

	if (w & IVMC_PW_CLOSED) {
		if (!c->has_side)
			return chan_poison(c, -EPROTO);
		sw_rx_epoch_done(c);
		return STEP_AGAIN;
	}
	/* A7: pairs with R7 in chan_shutdown(); every byte before fin has
	 * been published, so re-load the producer word after it. */
	fin = ivmc_load_acquire(&c->rx.shm->fin);
	if (fin && !(fin & IVMC_FIN_SET))
		return chan_poison(c, -EPROTO);
	if (fin & IVMC_FIN_SET) {
		if (ring_load_prod(&c->rx, &ep->rx, &w) < 0)
			return chan_poison(c, -EPROTO);
		if (ep->rx.peer_prod != ep->rx.ctr || (w & IVMC_PW_CLOSED))
			return STEP_AGAIN;
		if ((fin & IVMC_OFF_MASK) != ep->rx_off)
			return chan_poison(c, -EPROTO);
		fin_seen(c);
		return 0;
	}
	if (chan_flag(c, EP_PEER_GONE | EP_SIDE_EOF)) {
		/* Published before it went: the last look decides. */
		if (ring_load_prod(&c->rx, &ep->rx, &w) < 0)
			return chan_poison(c, -EPROTO);
		if (ep->rx.peer_prod != ep->rx.ctr)
			return STEP_AGAIN;
		if (c->has_side && !chan_flag(c, EP_SIDE_EOF)) {
			/* The peer's end is gone, its side stream may live on
			 * (a channel it never opened, or left): inside an
			 * open epoch it wrote nothing there, so what follows
			 * the ring is on the side stream. Never ready again. */
			ep->rx_ready_ok = false;
			sw_rx_epoch_done(c);
			return STEP_AGAIN;
		}
		return 0;
	}
	return -EAGAIN;
}

/* Load the producer word (and the deep word): *avail bytes ready in one
 * piece. Returns 0, or -ECONNRESET. */
static int rx_refresh(struct chan *c, uint32_t *avail, uint64_t *w)
{
	struct chan_ep *ep = c->ep;

	if (ring_load_prod(&c->rx, &ep->rx, w) < 0 ||
	    ivmc_w_epoch(*w) != ep->rx_epoch)
		return chan_poison(c, -EPROTO);
	ep->rx_seen_pw = *w;
	*avail = ring_avail(&c->rx, &ep->rx);
	return 0;
}

/* Bytes ready in the ring, loading the producer word only when the cache
 * says empty. Returns 0 and *avail, or -ECONNRESET. */
static int rx_avail(struct chan *c, uint32_t *avail, uint64_t *w)
{
	struct chan_ep *ep = c->ep;

	*w = ep->rx_seen_pw;
	*avail = ring_avail(&c->rx, &ep->rx);
	if (*avail)
		return 0;
	return rx_refresh(c, avail, w);
}

static void rx_consumed(struct chan *c, uint32_t n)
{
	struct chan_ep *ep = c->ep;

	ring_consume(&c->rx, &ep->rx, n);
	ep->rx_off += n;
	chan_notify(c, &c->rx.shm->prod_wait, &ep->rang_prod);
	if (!(++ep->rx_count % CPU_NOTE_EVERY))
		chan_note_cpu(&c->rx.shm->cons_cpu);
}

static ssize_t rx_ring(struct chan *c, struct iovc *ic, size_t left)
{
	uint32_t avail;
	uint64_t w;
	int err = rx_avail(c, &avail, &w);

	if (err)
		return err;
	if (!avail)
		return rx_ring_empty(c, w);
	if (avail > left)
		avail = (uint32_t)left;
	iovc_scatter(ic, ring_rptr(&c->rx, &c->ep->rx), avail);
	rx_consumed(c, avail);
	return avail;
}

static ssize_t rx_step(struct chan *c, struct iovc *ic, size_t left)
{
	if (c->ep->rx_mode == RX_SIDE)
		return rx_side(c, ic, left);
	return rx_ring(c, ic, left);
}

static int rx_enter(struct chan *c, bool nb)
{
	int err = dir_enter(c, &c->ep->rx_call, &c->ep->rx_lock, nb);

	if (err)
		return err;
	err = chan_dead(c);
	if (err)
		rx_exit(c);
	return err;
}

ssize_t chan_recvv(struct chan *c, const struct iovec *iov, int iovcnt,
		   unsigned int flags)
{
	struct iovc ic = { iov, iovcnt, 0, 0 };
	bool nb = nonblocking(c, flags);
	size_t left, done = 0;
	ssize_t r = 0;
	int arms = 0, err = iov_total(iov, iovcnt, &left);

	/* A receiver is often the only caller left on a busy channel: it
	 * moves what a rewind of our sending gave back (one load if none). */
	sw_tx_rescue(c);
	if (!err)
		err = rx_enter(c, nb);
	if (err)
		return err;
	while (left) {
		if (chan_flag(c, EP_SHUT_RD)) {
			r = 0;
			break;
		}
		r = chan_dead(c);
		if (!r)
			r = rx_step(c, &ic, left);
		if (r > 0) {
			done += (size_t)r;
			left -= (size_t)r;
			progress(c);
			if (!(flags & CHAN_WAITALL))
				break;
			continue;
		}
		if (r == STEP_AGAIN)
			continue;
		if (r != -EAGAIN)
			break; /* end of stream (0) or an error */
		r = wait_or_arm(c, CHAN_RX, nb, &arms);
		if (r)
			break;
	}
	rx_exit(c);
	return done ? (ssize_t)done : r;
}

/* ---- zero copy ---- */

ssize_t chan_reserve(struct chan *c, void **buf, unsigned int flags)
{
	struct chan_ep *ep = c->ep;
	bool nb = nonblocking(c, flags);
	uint32_t space = 0;
	int arms = 0;
	ssize_t r = tx_enter(c, nb);

	if (r)
		return r;
	for (;;) {
		r = chan_dead(c);
		if (!r && (ep->tx.pw & IVMC_PW_CLOSED))
			r = -EOPNOTSUPP; /* on the side stream: use send */
		if (!r && chan_flag(c, EP_PEER_GONE))
			r = -EPIPE;
		/* Asking for the whole ring refreshes the consumer counter
		 * unless the ring is empty: reserve hands out all free space. */
		if (!r && ep->tx.deep)
			r = chan_tx_shallow(c);
		if (!r && ring_free(&c->tx, &ep->tx,
				    ring_area_cap(&c->tx, &ep->tx), &space))
			r = chan_poison(c, -EPROTO);
		if (r || space)
			break;
		if (chan_tx_deep(c))
			continue;
		r = tx_publish(c);
		if (!r)
			r = sw_tx_check_closed(c);
		if (r == 1)
			continue; /* closed under us: now on the side stream */
		if (!r) /* -EAGAIN arms ivmc_fd(), as for send */
			r = wait_or_arm(c, CHAN_TX, nb, &arms);
		if (r)
			break;
	}
	if (ep->tx_pend && sw_tx_settle(c, false, NULL) < 0 && r >= 0)
		r = -EPIPE; /* bytes stranded by the close could not go out */
	if (!r) {
		*buf = ring_wptr(&c->tx, &ep->tx);
		if (space > ring_wcontig(&c->tx, &ep->tx))
			space = ring_wcontig(&c->tx, &ep->tx); /* up to L's end */
		ep->tx_resv = space;
		ep->tx_resv_at = ep->tx.ctr;
		r = space;
	}
	tx_exit(c);
	return r < 0 && r != -EAGAIN && r != -EINTR && r != -EOPNOTSUPP &&
			       r != -EPIPE
		       ? -ECONNRESET
		       : r;
}

int chan_commit(struct chan *c, size_t len, unsigned int flags)
{
	struct chan_ep *ep = c->ep;
	int err = tx_enter(c, false);

	if (err)
		return err;
	if (len > ep->tx_resv || ep->tx_resv_at != ep->tx.ctr ||
	    (ep->tx.pw & IVMC_PW_CLOSED)) {
		err = -EINVAL; /* more than reserved, or not our reservation */
	} else if (len) {
		ep->tx.ctr += (uint32_t)len;
		ep->tx_off += len;
		ep->tx_resv = 0;
		if (!(flags & CHAN_MORE))
			err = tx_publish(c);
		if (!err)
			err = sw_tx_settle(c, false, NULL);
		progress(c);
	}
	tx_exit(c);
	return err;
}

/* What chan_peek() and chan_peekv() wait for: bytes in the ring at our
 * counter (*avail of them in one piece), end of stream (0), or an error.
 * Called and returns with the rx locks held. */
static ssize_t peek_wait(struct chan *c, unsigned int flags, uint32_t *avail)
{
	struct chan_ep *ep = c->ep;
	bool nb = nonblocking(c, flags);
	uint64_t w = 0;
	int arms = 0;
	ssize_t r = 0;

	*avail = 0;
	for (;;) {
		if (chan_flag(c, EP_SHUT_RD))
			break; /* end of stream, as recv */
		r = chan_dead(c);
		if (!r && ep->rx_mode == RX_SIDE) {
			/* An epoch that opens where we are moves us onto the
			 * ring; else the bytes are on the side stream. */
			uint64_t limit;

			r = sw_rx_side_limit(c, &limit);
			if (!r && ep->rx_mode == RX_SIDE)
				r = -EOPNOTSUPP; /* use recv (MSG_PEEK) */
		}
		if (!r)
			r = rx_avail(c, avail, &w);
		if (r || *avail)
			break;
		r = rx_ring_empty(c, w);
		if (r == STEP_AGAIN)
			continue;
		if (r != -EAGAIN)
			break;
		r = wait_or_arm(c, CHAN_RX, nb, &arms);
		if (r)
			break;
	}
	return r;
}

ssize_t chan_peek(struct chan *c, const void **buf, unsigned int flags)
{
	struct chan_ep *ep = c->ep;
	uint32_t avail;
	ssize_t r = rx_enter(c, nonblocking(c, flags));

	if (r)
		return r;
	r = peek_wait(c, flags, &avail);
	if (!r && avail) {
		*buf = ring_rptr(&c->rx, &ep->rx);
		ep->rx_peek = avail;
		ep->rx_peek_at = ep->rx.ctr;
		r = avail;
	}
	rx_exit(c);
	return r;
}

/* chan_peekv() and chan_nread(), with the rx locks held: how many bytes
 * the ring holds at our counter now, every piece (3.7), the producer word
 * loaded at the call, not what the cache says; 0 at end of stream. */
static ssize_t peek_now(struct chan *c)
{
	struct chan_ep *ep = c->ep;
	uint32_t avail;
	uint64_t w;
	ssize_t r = peek_wait(c, CHAN_NONBLOCK, &avail);

	if (!r && avail)
		r = rx_refresh(c, &avail, &w);
	if (!r && avail)
		r = (ssize_t)(ep->rx.peer_prod - ep->rx.ctr);
	return r;
}

ssize_t chan_peekv(struct chan *c, const struct iovec *iov, int iovcnt)
{
	struct chan_ep *ep = c->ep;
	struct iovc ic = { iov, iovcnt, 0, 0 };
	size_t left;
	uint32_t end;
	ssize_t r = iov_total(iov, iovcnt, &left);

	if (!r)
		r = rx_enter(c, true);
	if (r)
		return r;
	r = peek_now(c);
	if (r > 0 && (size_t)r > left)
		r = (ssize_t)left;
	/* Every piece, not just the first: a peek across X or L's end must
	 * see what MSG_PEEK on TCP would (a caller that peeks until it has a
	 * whole header would otherwise wait for ever). */
	end = ep->rx.ctr + (uint32_t)(r > 0 ? r : 0);
	for (uint32_t k = ep->rx.ctr; k != end;) {
		const uint8_t *p;
		uint32_t n = ring_cons_span(&c->rx, &ep->rx, k, &p);

		if (n > end - k)
			n = end - k;
		iovc_scatter(&ic, p, n);
		k += n;
	}
	rx_exit(c);
	return r;
}

ssize_t chan_nread(struct chan *c)
{
	ssize_t r = rx_enter(c, true);

	if (r)
		return r;
	r = peek_now(c);
	rx_exit(c);
	return r;
}

int chan_release(struct chan *c, size_t len)
{
	struct chan_ep *ep = c->ep;
	int err = rx_enter(c, false);

	if (err)
		return err;
	if (len > ep->rx_peek || ep->rx_peek_at != ep->rx.ctr) {
		err = -EINVAL;
	} else if (len) {
		ep->rx_peek = 0;
		rx_consumed(c, (uint32_t)len);
		progress(c);
	}
	rx_exit(c);
	return err;
}

/* ---- shutdown, poll ---- */

static int shut_wr(struct chan *c)
{
	struct chan_ep *ep = c->ep;
	int err = tx_enter(c, false);

	if (err)
		return err == -EPIPE ? 0 : err; /* already shut down */
	if (!(ep->tx.pw & IVMC_PW_CLOSED))
		err = tx_publish(c);
	if (!err) /* before FIN on the side stream, every stranded byte */
		err = sw_tx_settle(c, false, NULL);
	/* R7: every byte before fin is published /then/ fin; pairs with A7. */
	(void)ivmc_xchg_sc(&c->tx.shm->fin, IVMC_FIN_SET | ep->tx_off);
	atomic_fetch_or(&ep->flags, EP_SHUT_WR);
	if (c->has_side)
		sw_tx_shut_side(c);
	chan_notify(c, &c->tx.shm->cons_wait, &ep->rang_cons);
	tx_exit(c);
	return err == -ECONNRESET ? err : 0;
}

int chan_shutdown(struct chan *c, int how)
{
	if (how != SHUT_RD && how != SHUT_WR && how != SHUT_RDWR)
		return -EINVAL;
	if (how != SHUT_WR) {
		atomic_fetch_or(&c->ep->flags, EP_SHUT_RD);
		chan_kick(c); /* blocked readers return 0, as with TCP */
	}
	return how == SHUT_RD ? 0 : shut_wr(c);
}

/* On the side stream: ready if the stream is, now. */
static bool side_ready(const struct chan *c, short ev)
{
	struct pollfd p = { chan_side_fd(c), ev, 0 };

	if (ev == POLLIN)
		p.events |= POLLRDHUP;
	return poll(&p, 1, 0) != 0; /* ready, an error, or poll failed */
}

/* Ready for ev (POLLIN or POLLOUT) now? arm: if not, arm the doorbell
 * (and say ready if the arm found it so); !arm: look only, no system
 * call, and answer 0 where only a system call could tell. */
static short arm_one(struct chan *c, short ev, bool arm)
{
	struct chan_ep *ep = c->ep;
	uint64_t w;
	uint32_t n;

	if (ev == POLLIN) {
		if (chan_flag(c, EP_SHUT_RD)) /* recv returns 0 at once */
			return POLLIN;
		/* Readable means a recv now returns something: bytes, end of
		 * stream or an error, never -EAGAIN. A switch on the way (an
		 * epoch that ended, drained, or one that opened) is taken in
		 * here as recv would take it, and the new state answers; a
		 * few passes cover every chain of them. */
		for (int pass = 0; pass < 4; pass++) {
			ssize_t e;
			short rd;

			if (c->has_side && ep->rx_mode == RX_SIDE &&
			    !chan_flag(c, EP_SIDE_EOF)) {
				uint64_t lim;

				if (side_fin_reached(c))
					return POLLIN | POLLRDHUP; /* the end */
				/* Side bytes before an attach offset: sent
				 * before the epoch opened, so already here. */
				if (ep->rx_att_known)
					return POLLIN;
				w = ivmc_load_acquire(&c->rx.shm->prod);
				if (ivmc_w_epoch(w) !=
				    ((ep->rx_epoch - 1) & IVMC_W_EPOCH_MASK)) {
					/* Opened: how many side bytes first, or
					 * straight onto the ring. */
					if (sw_rx_side_limit(c, &lim))
						return POLLIN; /* an error */
					continue;
				}
				/* Bytes on the side stream are the caller's to
				 * poll for (beside ivmc_fd()); we look at them
				 * when arming. */
				if (!arm)
					return 0;
				if (side_ready(c, POLLIN))
					return POLLIN;
				/* An epoch may open: what chan_arm() compares
				 * against is the word now; armed /then/ one
				 * more look (one opened later rings us). */
				ep->rx_seen_pw = ivmc_load_acquire(&c->rx.shm->prod);
				if (chan_arm(c, CHAN_RX))
					continue;
				w = ivmc_load_sc(&c->rx.shm->prod);
				if (ivmc_w_epoch(w) !=
				    ((ep->rx_epoch - 1) & IVMC_W_EPOCH_MASK))
					continue;
				return 0;
			}
			if (ep->rx_mode != RX_RING)
				return POLLIN | POLLRDHUP; /* end of file on
							    * the side */
			if (rx_avail(c, &n, &w))
				return POLLIN; /* an error */
			rd = ivmc_load_once(&c->rx.shm->fin) ? POLLRDHUP : 0;
			if (n)
				return POLLIN | rd; /* data */
			e = rx_ring_empty(c, w);
			if (e == STEP_AGAIN)
				continue; /* the epoch ended: look again */
			if (e != -EAGAIN)
				return POLLIN | rd; /* end of stream, error */
			if (!arm)
				return rd;
			if (chan_arm(c, CHAN_RX))
				continue; /* something came as we armed */
			return rd;
		}
		/* Still switching after all that: say readable (a wake-up
		 * too many rather than one lost). */
		return POLLIN;
	}
	if ((ep->tx.pw & IVMC_PW_CLOSED) && !chan_flag(c, EP_SHUT_WR) &&
	    !ep->tx_pend && (!arm || !side_ready(c, POLLOUT)))
		return 0; /* the caller polls the side fd for POLLOUT */
	if (chan_flag(c, EP_SHUT_WR) || (ep->tx.pw & IVMC_PW_CLOSED) ||
	    ring_free(&c->tx, &ep->tx, 1, &n) || n ||
	    (c->deep_size && !ep->tx.deep))
		return POLLOUT; /* space (in L if need be), a switch, an
				 * error or -EPIPE */
	if (!arm)
		return 0;
	return chan_arm(c, CHAN_TX) ? POLLOUT : 0;
}

/* Both directions' arm_one() under their locks; -EBUSY if one is held. */
static int arm_both(struct chan *c, short events, bool arm)
{
	short ready = 0;

	for (int i = 0; i < 2; i++) {
		short ev = i ? POLLOUT : POLLIN;
		_Atomic uint32_t *m = i ? &c->ep->tx_lock : &c->ep->rx_lock;

		if (!(events & ev))
			continue;
		if (chan_lock(c, m, true))
			return -EBUSY; /* another thread is in a call on it */
		ready |= arm_one(c, ev, arm);
		chan_unlock(c, m);
	}
	return ready;
}

/* The peer's end is gone. Without a side stream (or with one that
 * chan_peer_gone() said is dead too) every call now ends at once: ready
 * both ways. With one, receiving goes on from the side stream
 * after the ring (its readiness is the socket's: end of stream comes with
 * the peer's FIN); sending fails at once while our epoch is still open
 * (the peer died in it), so POLLOUT then. Returns what is ready on that
 * account, or -1: everything. */
static int gone(struct chan *c, short events)
{
	bool open;

	if (!chan_flag(c, EP_PEER_GONE))
		return 0;
	if (!c->has_side || chan_flag(c, EP_SIDE_DEAD))
		return -1;
	if (!(events & POLLOUT))
		return 0;
	if (chan_lock(c, &c->ep->tx_lock, true))
		return POLLOUT; /* a call is in: it will tell */
	if (!(c->ep->tx.pw & IVMC_PW_CLOSED))
		(void)sw_tx_check_closed(c);
	open = !(c->ep->tx.pw & IVMC_PW_CLOSED);
	chan_unlock(c, &c->ep->tx_lock);
	return open ? POLLOUT : 0;
}

/* Only what was asked for: POLLRDHUP comes with POLLIN when asked. */
static int asked(int r, short events)
{
	return r < 0 ? r : r & (events & (POLLIN | POLLOUT | POLLRDHUP));
}

/* What is ready for events now; arm: if nothing, arm the doorbell. */
static int look(struct chan *c, short events, bool arm)
{
	int g = chan_dead(c) ? -1 : gone(c, events), r;

	if (g < 0)
		return events & (POLLIN | POLLOUT);
	r = arm_both(c, g ? (short)(events & ~POLLOUT) : events, arm);
	return r < 0 ? r : g | asked(r, events);
}

int chan_poll_peek(struct chan *c, short events)
{
	sw_tx_rescue(c); /* a rewind's bytes go out, whatever is asked */
	return look(c, events, false);
}

bool chan_tx_on_ring(const struct chan *c)
{
	return !(c->ep->tx.pw & IVMC_PW_CLOSED);
}

int chan_poll_arm(struct chan *c, short events)
{
	int ready = chan_poll_peek(c, events);

	/* Ready: say so without a system call. Else drain the doorbell (it
	 * rang for an earlier arm), then arm it and look again. */
	if (ready)
		return ready;
	(void)chan_drain_nowait(c);
	return look(c, events, true);
}
