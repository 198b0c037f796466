/* SPDX-License-Identifier: MIT */
/*
 * Description: a bidirectional channel over one shared region: two rings,
 * the wake protocol, and lossless offset-based switches between the ring
 * and a side stream (TCP, or a stand-in such as a socketpair).
 */
#ifndef IVMC_CHAN_H
#define IVMC_CHAN_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

struct chan;
struct chan_bell;

#define CHAN_NONBLOCK 0x1u /* = IVMC_NONBLOCK */
#define CHAN_MORE     0x2u /* = IVMC_MORE */
#define CHAN_WAITALL  0x4u /* = IVMC_WAITALL */

#define CHAN_WAIT_ADAPTIVE 0
#define CHAN_WAIT_SPIN	   1
#define CHAN_WAIT_SLEEP	   2

enum chan_dir { CHAN_TX = 0, CHAN_RX = 1 };

/* How to open one end. side_fd is borrowed (never closed by chan). */
struct chan_cfg {
	int side;	     /* 0: creator's side, 1: the other */
	int side_fd;	     /* side stream, or -1 for a ring-only channel */
	int wait_mode;	     /* CHAN_WAIT_* */
	unsigned int spin_ns; /* 0 = default */
	bool nonblock;
	/* chan_open_mem() only: cap of the polling wait's sleep in us (0 =
	 * env IVMC_POLL_MAX_US, else 1000). */
	unsigned int poll_max_us;
	/* chan_open_mem() only: the region's doorbell (chan_bell_new()), or
	 * NULL to poll. */
	struct chan_bell *bell;
	/* Stream bytes already sent/received on side_fd before this open
	 * (a TCP connection that ran a while before its channel came):
	 * attach offsets count from the start of the stream. */
	uint64_t tx_off0, rx_off0;
};

/* Counters, filled by chan_stats(). */
struct chan_stats {
	uint64_t sent, received, wakeups_sent, sleeps, spin_hits;
	uint64_t tx_offset, rx_offset; /* stream offsets, both paths */
	uint64_t deeps;	    /* times our producer went deep (into L) */
	uint32_t ring_size, deep_size, spin_ns;
	bool tx_on_ring, rx_on_ring, tx_deep;
};

/* Bytes of region needed for rings of ring_size and, if deep_size (a power
 * of two >= ring_size), large areas of deep_size. Returns 0 or -EINVAL. */
int chan_region_size(uint32_t ring_size, uint32_t deep_size, uint64_t *size);

/* Create a sealed memfd holding a formatted region. deep_size: 0, or the
 * size of the area a producer whose ring is full goes on into
 * (docs/protocol.md 3.7). with_side: both directions start on the side
 * stream; else both start on the ring at offset 0. init_ctr: starting ring
 * counter (tests pass 2^32 - k). Returns 0 and *fd, or -errno. */
int chan_region_create(uint32_t ring_size, uint32_t deep_size, bool with_side,
		       uint32_t init_ctr, int *fd);

/* Open one end on a (verified) region fd and doorbell fd. Takes ownership of
 * doorbell_fd on success only; region_fd stays the caller's. Returns 0 and
 * *out, or -errno (-EBADFD/-EPERM/-EMSGSIZE region, -ENOTSOCK/-EPROTOTYPE/
 * -ENOTCONN doorbell, -EPROTO malformed header or one that contradicts
 * side_fd, -EINVAL bad cfg). */
int chan_open(const struct chan_cfg *cfg, int region_fd, int doorbell_fd,
	      struct chan **out);

/* Lay out a region with rings of ring_size in the len bytes at mem (page
 * aligned): what the host does for a region it shares with guests before
 * any of them maps it. with_side and init_ctr as for chan_region_create();
 * no large area (deep_size 0). Returns 0, -EINVAL (ring size, or mem not
 * page aligned) or -EMSGSIZE (does not fit in len). */
int chan_region_init(void *mem, uint64_t len, uint32_t ring_size,
		     bool with_side, uint32_t init_ctr);

/* Open one end of a region formatted by chan_region_init() at page-aligned
 * offset off of fd (e.g. an ivshmem BAR), of which avail bytes from off on
 * are ours. fd is borrowed. cfg->side_fd, tx_off0 and rx_off0 as for
 * chan_open(). With cfg->bell, a waiter spins, then sleeps on the bell
 * (and the side stream; then at most a second at a time, running the idle
 * hook after each sleep); without, it polls with growing sleeps up to
 * cfg->poll_max_us (with a side stream, in ppoll() on it) and chan_fd() is
 * -1. No doorbell hangs up when the peer dies: its side stream's end is
 * the sign (a reset; its FIN before the fin word of its SHUT_WR), else
 * chan_peer_gone(). Returns 0 and *out, or
 * -EINVAL (cfg, off), -EPROTO (malformed header, or
 * one that contradicts side_fd), -EMSGSIZE (region larger than avail),
 * -errno. */
int chan_open_mem(const struct chan_cfg *cfg, int fd, uint64_t off,
		  uint64_t avail, struct chan **out);

/* A doorbell shared by the channels of one region for chan_open_mem(): fd
 * (an eventfd, non-blocking) turns readable when the peer rang; the waiter
 * reads it empty. ring(arg) rings the peer, 0 on success. fd and arg stay
 * the caller's; free the bell after the channels. Returns 0 and *out,
 * -EINVAL or -errno. */
int chan_bell_new(int fd, int (*ring)(void *arg), void *arg,
		  struct chan_bell **out);
void chan_bell_free(struct chan_bell *b);

/* A function a waiter of chan_open_mem() with a side stream calls between
 * its naps (no bell) or after each sleep on its bell: the library's, which
 * takes in what the daemon said (a peer VM gone: chan_peer_gone()). */
void chan_set_idle_hook(void (*fn)(void));

/* How long a waiter of c naps before it sleeps on its bell (a bell and a
 * side stream: between guests, IVMC_POLL_BELL_US); 0 for any other. An
 * event loop over c can nap as long before it sleeps on chan_fd(). */
uint64_t chan_nap_first_ns(const struct chan *c);

/* Unmap and close this process's handle (see ivmc_close()). */
void chan_close(struct chan *c);

/* The peer is dead, as learnt another way (a guest's daemon, from the
 * host's control region): as a doorbell's hang-up, and its side stream is
 * dead too. What it published stays readable, then end of stream (or
 * -ECONNRESET before a known attach offset); sends fail -EPIPE. Wakes every
 * waiter (a polling one at the end of its nap). */
void chan_peer_gone(struct chan *c);

/* Send/receive with CHAN_* flags; semantics of ivmc_sendv()/ivmc_recvv().
 * On the side stream, errors are the stream's own and are returned as the
 * socket gives them (a TCP reset: -ECONNRESET, then end of stream); only
 * what is wrong in shared memory poisons the channel. */
ssize_t chan_sendv(struct chan *c, const struct iovec *iov, int iovcnt,
		   unsigned int flags);
ssize_t chan_recvv(struct chan *c, const struct iovec *iov, int iovcnt,
		   unsigned int flags);

/* Zero-copy; semantics of ivmc_reserve/commit/peek/release(). */
ssize_t chan_reserve(struct chan *c, void **buf, unsigned int flags);
int chan_commit(struct chan *c, size_t len, unsigned int flags);
ssize_t chan_peek(struct chan *c, const void **buf, unsigned int flags);
/* Copy what the ring holds at our counter without consuming it (recv's
 * MSG_PEEK), never waiting: bytes, 0 at end of stream, -EAGAIN, or
 * -EOPNOTSUPP on the side stream (peek the socket then). */
ssize_t chan_peekv(struct chan *c, const struct iovec *iov, int iovcnt);

/* How many bytes the ring holds at our counter now, all pieces (FIONREAD),
 * never waiting: as chan_peekv() returns, without the copy. */
ssize_t chan_nread(struct chan *c);
int chan_release(struct chan *c, size_t len);

/* Move a direction off the ring onto the side stream now, losslessly, and
 * keep it there until chan_attach(). CHAN_TX: as producer; CHAN_RX: as
 * consumer. Returns 0, -ENOTSUP (no side stream) or -ECONNRESET. */
int chan_detach(struct chan *c, enum chan_dir d);

/* Receive no more from the ring, giving back what we have not read: the
 * producer sends it on the side stream before anything newer, so a reader
 * of the side stream alone (after exec) gets every byte. Returns 0, -EBUSY
 * (the producer had detached first: the unread bytes stay in the ring),
 * -ENOTSUP or -ECONNRESET. */
int chan_rewind(struct chan *c);

/* Before the side stream is left to others (the handle closes, the fd
 * lives on): send every byte still owed to it, waiting, and a SHUT_WR
 * still owed. Returns 0 or -errno. */
int chan_settle(struct chan *c);

/* Allow a direction back onto the ring (the default). It moves at the next
 * send once both ends allow it. Returns 0, -ENOTSUP or -ECONNRESET. */
int chan_attach(struct chan *c, enum chan_dir d);

/* shutdown(2) semantics for SHUT_RD/SHUT_WR/SHUT_RDWR. */
int chan_shutdown(struct chan *c, int how);

/* Carry the side stream on fd from now on: another descriptor of the same
 * socket. A call that loaded the old one may still use it: keep it open
 * until no call can be in one (the preload: until the application closes
 * it, which is then its own race, as with TCP). */
void chan_set_side_fd(struct chan *c, int fd);

/* The doorbell fd (pollable); see ivmc_fd(). For chan_open_mem(): the
 * bell's fd, shared by the region's channels (poll it from one thread), or
 * -1 without a bell. */
int chan_fd(const struct chan *c);

/* Arm the doorbell for POLLIN/POLLOUT; see ivmc_poll_arm(). On the side
 * stream the caller polls side_fd as well. With POLLRDHUP in events, says
 * POLLRDHUP too when the peer shut down writing on the ring. */
int chan_poll_arm(struct chan *c, short events);

/* Ready for POLLIN/POLLOUT now, by what shared memory says (no system
 * call, nothing armed)? 0 where only chan_poll_arm() can tell; -EBUSY. */
int chan_poll_peek(struct chan *c, short events);

/* Is our sending direction on the ring (not on the side stream)? A hint,
 * read without the lock. */
bool chan_tx_on_ring(const struct chan *c);

/* May a waiter spin now (the CPUs are not oversubscribed)? */
bool chan_may_spin(void);

void chan_set_nonblock(struct chan *c, bool on);
void chan_stats(const struct chan *c, struct chan_stats *st);

#endif
