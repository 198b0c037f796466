/* SPDX-License-Identifier: MIT */
/*
 * Description: the API handle, shared by the native rendezvous (ivmc.c)
 * and TCP attach through ivmcd (tcp.c).
 */
#ifndef IVMC_API_H
#define IVMC_API_H

#include <stdatomic.h>
#include <stdbool.h>
#include <sys/types.h>
#include <sys/uio.h>

#include "ivmc.h"
#include "../chan/chan.h"

#define IVMC_API __attribute__((visibility("default")))

struct tcpw;

/* c: the channel, set once (release) when a TCP handle attaches; w: the
 * TCP state, NULL for a native channel. */
struct ivmc_chan {
	struct chan *_Atomic c;
	struct tcpw *w;
};

/* The channel to use now, or NULL while a TCP handle is on TCP alone
 * (first takes in any channel ivmcd sent). */
struct chan *api_chan(struct ivmc_chan *h);

/* tcp.c: the calls of a TCP handle not (yet) attached; same semantics. */
ssize_t tcp_sendv(struct ivmc_chan *h, const struct iovec *iov, int iovcnt,
		  unsigned int flags);
ssize_t tcp_recvv(struct ivmc_chan *h, const struct iovec *iov, int iovcnt,
		  unsigned int flags);
int tcp_fd(const struct ivmc_chan *h);
/* chan_nap_first_ns() of the handle's channel; 0 on TCP. */
uint64_t api_nap_first_ns(const struct ivmc_chan *h);
/* Move the handle onto fd, another descriptor of its socket, from now on
 * (TCP calls and the channel's side stream). The old one must stay open
 * while a call may still be using it. */
void tcp_set_fd(struct ivmc_chan *h, int fd);
int tcp_poll_arm(struct ivmc_chan *h, short events);
void tcp_set_nonblock(struct ivmc_chan *h, int on);
int tcp_shutdown(struct ivmc_chan *h, int how);
int tcp_close(struct ivmc_chan *h);
void tcp_stats(const struct ivmc_chan *h, struct ivmc_stats *st);

/* For the preload: the ring's readiness for POLLIN/POLLOUT by shared
 * memory alone (no system call, nothing armed); 0 on TCP alone or where
 * only ivmc_poll_arm() can tell; -EBUSY. */
int api_poll_peek(struct ivmc_chan *h, short events);

/* For the preload: ivmc_poll_arm() that also says POLLRDHUP when the
 * peer shut down writing on the ring. */
int api_poll_arm(struct ivmc_chan *h, short events);

/* For the preload: does h send on the ring now (else on TCP: POLLOUT is
 * the socket's)? */
bool api_tx_on_ring(struct ivmc_chan *h);

/* For the preload: is the TCP socket fd's peer possibly co-located? 1:
 * yes (loopback, or the daemon's table lists it); -1: the daemon answers
 * but does not list it (yet: a namespace it has not seen may appear);
 * 0: no (no daemon, not connected). One getpeername(). */
int tcp_colocated(int fd);

/* For the preload: a handle made after the application moved bytes on
 * the socket itself starts its stream offsets there (call before any
 * other call on h). */
void tcp_set_offsets(struct ivmc_chan *h, uint64_t tx, uint64_t rx);

/* For the preload: open the daemon connection now if it is time to try
 * (waiting at most the usual budget for the welcome; a later call takes a
 * late one in), so that ivmcd knows this process's namespace before its
 * first connection. */
void tcp_warmup(void);

#endif
