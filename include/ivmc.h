/* SPDX-License-Identifier: MIT */
/*
 * Description: ivmc native API — explicit shared-memory channels between
 * co-located processes, with zero-copy reserve/commit and peek/release.
 *
 * Conventions: every function returns a non-negative value on success or a
 * negative errno value on failure; errno is never read or written.
 * Objects are opaque. Thread safety: one channel may be used by several
 * threads and, after fork(), by several processes at once; whole calls are
 * serialised among senders and among receivers (a message is never cut by
 * another thread's). Not async-signal-safe: a call re-entered from a signal
 * handler returns -EDEADLK where locks are taken. See ivmc(7).
 */
#ifndef IVMC_H
#define IVMC_H

#include <stddef.h>
#include <sys/types.h>
#include <sys/uio.h>

#ifdef __cplusplus
extern "C" {
#endif

#define IVMC_VERSION_MAJOR 0
#define IVMC_VERSION_MINOR 1

struct ivmc_listener;
struct ivmc_chan;

/* Flags for send/recv/reserve/peek/accept. */
#define IVMC_NONBLOCK 0x1u /* return -EAGAIN instead of waiting */
#define IVMC_MORE     0x2u /* send: more follows; publish later (like MSG_MORE) */
#define IVMC_WAITALL  0x4u /* recv: wait for len bytes (or EOF, error) */

/* Wait modes: how a blocked call waits for the peer. */
#define IVMC_WAIT_ADAPTIVE 0 /* bounded adaptive spin, then sleep (default) */
#define IVMC_WAIT_SPIN	   1 /* spin while the peer is alive; for benchmarks */
#define IVMC_WAIT_SLEEP	   2 /* never spin: sleep on the doorbell at once */

#define IVMC_RING_DEFAULT (256u * 1024) /* bytes per direction */
#define IVMC_SPIN_DEFAULT_NS 30000u	/* default spin budget */
#define IVMC_SPIN_MAX_NS     1000000u	/* largest accepted spin budget */

/* Options for ivmc_listen() and ivmc_connect(); zero-fill for defaults. */
struct ivmc_opts {
	size_t ring_size;	 /* bytes per direction: power of two in
				  * [4 KiB, 1 GiB]; 0 = IVMC_RING_DEFAULT.
				  * Connector: a wish; listener: the size it
				  * gives, and the cap on any wish */
	int wait_mode;		 /* IVMC_WAIT_* */
	unsigned int spin_ns;	 /* spin budget; 0 = IVMC_SPIN_DEFAULT_NS */
	const uid_t *allow_uids; /* peers allowed by uid (SO_PEERCRED) ... */
	size_t n_allow_uids;
	const gid_t *allow_gids; /* ... or by gid; no list at all = anyone
				  * who can reach the socket's path. The
				  * connector checks the listener's too */
	size_t n_allow_gids;
	unsigned int flags;	 /* IVMC_NONBLOCK: the channel starts non-blocking */
};

/* Per-channel counters, from ivmc_stats(). */
struct ivmc_stats {
	unsigned long long bytes_sent, bytes_received;
	unsigned long long wakeups_sent;   /* doorbell rings we made */
	unsigned long long sleeps;	   /* times we slept on the doorbell */
	unsigned long long spin_hits;	   /* waits a spin resolved */
	unsigned int ring_size;
	unsigned int spin_ns;		   /* current adaptive budget (rx) */
	unsigned int on_ring;		   /* 1: sends go to the ring now,
					    * 2: receives come from it */
	int tcp_state;			   /* ivmc_tcp() handles: as
					    * ivmc_tcp_state(); else 0 */
};

/* Listen for channels on AF_UNIX path (a filesystem path; one starting with
 * '@' is abstract, per network namespace). Returns 0 and *out, or -errno
 * (-EADDRINUSE, -EACCES, -ENAMETOOLONG, -EINVAL bad opts). */
int ivmc_listen(const char *path, const struct ivmc_opts *opts,
		struct ivmc_listener **out);

/* Accept one channel (waits up to 1 s for the connector's hello). Returns
 * 0 and *out, -EAGAIN (IVMC_NONBLOCK, none pending), -EACCES (peer refused
 * by the allow-list; the caller may retry), -EPROTO (peer spoke garbage),
 * -ETIMEDOUT (peer silent), -EINVAL (bad arguments), or another -errno. */
int ivmc_accept(struct ivmc_listener *l, unsigned int flags,
		struct ivmc_chan **out);

/* The listener's pollable fd: readable when ivmc_accept() may succeed. */
int ivmc_listener_fd(const struct ivmc_listener *l);

/* Close the listener and unlink its path. Returns 0 or -errno. */
int ivmc_listener_close(struct ivmc_listener *l);

/* Connect to a listener at path. Returns 0 and *out, or -errno: -ENOENT,
 * -ECONNREFUSED, -ECONNRESET, -EACCES (refused by either allow-list),
 * -ETIMEDOUT (listener did not answer within 5 s), -EINVAL (bad arguments),
 * or, for a listener that sent something unusable: -EPROTO (malformed reply
 * or region header), -EBADFD (region not a read-write memfd), -EPERM (region
 * not sealed), -EMSGSIZE (region of the wrong size), -ENOTSOCK, -EPROTOTYPE,
 * -ENOTCONN (doorbell not a connected AF_UNIX stream socket). A refusal
 * carries the listener's errno. */
int ivmc_connect(const char *path, const struct ivmc_opts *opts,
		 struct ivmc_chan **out);

/* Send up to len bytes. Blocking: waits until all are sent. Returns bytes
 * sent, or -EAGAIN (non-blocking, ring full), -EPIPE (peer gone or we shut
 * down), -ECONNRESET (peer misbehaved), -EINTR (signal while waiting). */
ssize_t ivmc_send(struct ivmc_chan *c, const void *buf, size_t len,
		  unsigned int flags);

/* Vector form of ivmc_send(): one publish for the whole vector. */
ssize_t ivmc_sendv(struct ivmc_chan *c, const struct iovec *iov, int iovcnt,
		   unsigned int flags);

/* Receive up to len bytes. Returns bytes received (>0), 0 at end of stream
 * (peer shut down or closed), -EAGAIN (non-blocking, nothing yet),
 * -ECONNRESET (peer misbehaved), -EINTR. */
ssize_t ivmc_recv(struct ivmc_chan *c, void *buf, size_t len,
		  unsigned int flags);

/* Vector form of ivmc_recv(). */
ssize_t ivmc_recvv(struct ivmc_chan *c, const struct iovec *iov, int iovcnt,
		   unsigned int flags);

/* Zero-copy send: *buf points at >= 1 contiguous writable ring bytes; returns
 * how many (all free space), or an error as ivmc_send(). Write, then commit
 * before any other send on the channel. */
ssize_t ivmc_reserve(struct ivmc_chan *c, void **buf, unsigned int flags);

/* Publish len bytes written at the last reserve (once per reserve).
 * Returns 0, -EINVAL (len more than reserved, or no reserve outstanding),
 * -EPIPE (shut down), -ECONNRESET. Flags: IVMC_MORE. */
int ivmc_commit(struct ivmc_chan *c, size_t len, unsigned int flags);

/* Zero-copy receive: *buf points at >= 1 contiguous readable bytes, returns
 * how many, 0 at end of stream, or an error as ivmc_recv(). The peer can
 * still change these bytes: copy what you must check before trusting it. */
ssize_t ivmc_peek(struct ivmc_chan *c, const void **buf, unsigned int flags);

/* Consume len bytes of the last peek (once per peek). Returns 0, -EINVAL
 * (more than peeked, or no peek outstanding), -ECONNRESET. */
int ivmc_release(struct ivmc_chan *c, size_t len);

/* Pollable fd: POLLIN when the last -EAGAIN (or ivmc_poll_arm()) may be
 * resolved — data, space, end of stream or error. Spurious wake-ups happen;
 * the answer is always to call again. Do not poll it from one thread while
 * another blocks in a call on the same channel (ivmc_fd(3), BUGS). */
int ivmc_fd(const struct ivmc_chan *c);

/* Arm ivmc_fd() for events (POLLIN: data, POLLOUT: space). Returns the
 * events already ready (then do not sleep), 0 when armed, -EINVAL, or
 * -EBUSY (another thread is inside a call on the channel, not asleep). */
int ivmc_poll_arm(struct ivmc_chan *c, short events);

/* Switch non-blocking mode on (1) or off (0). Returns 0 or -errno. */
int ivmc_set_nonblock(struct ivmc_chan *c, int on);

/* Shut down SHUT_RD, SHUT_WR or SHUT_RDWR. After SHUT_WR the peer reads
 * every byte sent, then end of stream. Returns 0, -EINVAL, -ECONNRESET
 * (or, for an ivmc_tcp() handle on TCP, what shutdown(2) says). */
int ivmc_shutdown(struct ivmc_chan *c, int how);

/* Close this process's handle. The peer sees end of stream once every
 * process holding the channel (after fork) has closed it. An ivmc_tcp()
 * handle leaves its fd a plain TCP stream that goes on where the handle
 * stopped, unread ring bytes included. Returns 0, -EINVAL for NULL, or
 * -ECONNABORTED (closed all the same) if the peer left the ring at the
 * same moment and bytes it left there cannot reach fd. */
int ivmc_close(struct ivmc_chan *c);

/* Accelerate a connected TCP socket (either end). Returns at once with a
 * handle that carries the stream on fd; when ivmcd pairs this connection
 * with its other end (which calls ivmc_tcp() too, or runs under
 * ivmc-run), each direction moves to shared memory at a byte offset,
 * losslessly. Only the first call in a process waits for the daemon, at
 * most $IVMC_CTL_BUDGET_US (default 2000 us); with no daemon the handle
 * stays on TCP. fd stays the caller's: keep it open until ivmc_close() and
 * do not read or write it directly in between. opts: ring_size (a wish,
 * capped by policy), wait_mode, spin_ns, flags; allow-lists are ivmcd's
 * policy here and must be empty. Returns 0 and *out, -EINVAL, -ENOTSOCK
 * (fd is not a socket), -ENOMEM. */
int ivmc_tcp(int fd, const struct ivmc_opts *opts, struct ivmc_chan **out);

/* Where an ivmc_tcp() handle stands, taking in any answer from ivmcd
 * first: 1 on shared memory, 0 still on TCP waiting for its other end,
 * or why it stays on TCP for good: -ECONNREFUSED (no daemon), -ETIMEDOUT
 * (the other end never came), -EACCES (policy), -EDQUOT (quota),
 * -EADDRNOTAVAIL (not co-located, or ambiguous), -ECANCELED (shut down,
 * forked or evacuated first), -ECONNABORTED (ivmcd could not hand the
 * other end its half), -ENOBUFS (too many waiting in this process),
 * -EPROTO, -ENOMEM. -EINVAL for a native
 * channel. */
int ivmc_tcp_state(struct ivmc_chan *c);

/* Tell ivmcd that fd, a listening TCP socket, is served by ivmc, so that
 * connectors can tell (the daemon's table lists it). Returns 0 or -errno
 * (-ECONNREFUSED: no daemon). Undone by ivmc_tcp_unlisten() and when the
 * process exits. */
int ivmc_tcp_listen(int fd);

/* Withdraw what ivmc_tcp_listen(fd) announced. Returns 0 or -ENOENT. */
int ivmc_tcp_unlisten(int fd);

/* Fill *st with this channel's counters. Returns 0. */
int ivmc_stats(const struct ivmc_chan *c, struct ivmc_stats *st);

#ifdef __cplusplus
}
#endif

#endif
