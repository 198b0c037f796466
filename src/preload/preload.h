/* SPDX-License-Identifier: MIT */
/*
 * Description: internals of libivmc-preload.so: the real libc functions,
 * the table of the application's fds that carry an ivmc connection, and
 * what the readiness calls (events.c) need from the rest (preload.c).
 */
#ifndef IVMC_PRELOAD_H
#define IVMC_PRELOAD_H

#include <poll.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <sys/epoll.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/uio.h>

#include "ivmc.h"

#define PL_API __attribute__((visibility("default")))

/* The libc functions we stand in front of, resolved with dlsym(RTLD_NEXT)
 * once, before the first socket call (pl_init()). */
struct pl_real {
	int (*socket)(int, int, int);
	int (*connect)(int, const struct sockaddr *, socklen_t);
	int (*listen)(int, int);
	int (*accept)(int, struct sockaddr *, socklen_t *);
	int (*accept4)(int, struct sockaddr *, socklen_t *, int);
	int (*close)(int);
	int (*shutdown)(int, int);
	ssize_t (*read)(int, void *, size_t);
	ssize_t (*write)(int, const void *, size_t);
	ssize_t (*readv)(int, const struct iovec *, int);
	ssize_t (*writev)(int, const struct iovec *, int);
	ssize_t (*recv)(int, void *, size_t, int);
	ssize_t (*recvfrom)(int, void *, size_t, int, struct sockaddr *,
			    socklen_t *);
	ssize_t (*recvmsg)(int, struct msghdr *, int);
	ssize_t (*send)(int, const void *, size_t, int);
	ssize_t (*sendto)(int, const void *, size_t, int,
			  const struct sockaddr *, socklen_t);
	ssize_t (*sendmsg)(int, const struct msghdr *, int);
	ssize_t (*sendfile)(int, int, off_t *, size_t);
	int (*dup)(int);
	int (*dup2)(int, int);
	int (*dup3)(int, int, int);
	int (*fcntl)(int, int, ...);
	int (*ioctl)(int, unsigned long, ...);
	int (*setsockopt)(int, int, int, const void *, socklen_t);
	int (*getsockopt)(int, int, int, void *, socklen_t *);
	int (*poll)(struct pollfd *, nfds_t, int);
	int (*ppoll)(struct pollfd *, nfds_t, const struct timespec *,
		     const sigset_t *);
	int (*select)(int, fd_set *, fd_set *, fd_set *, struct timeval *);
	int (*pselect)(int, fd_set *, fd_set *, fd_set *,
		       const struct timespec *, const sigset_t *);
	int (*epoll_create)(int);
	int (*epoll_create1)(int);
	int (*epoll_ctl)(int, int, int, struct epoll_event *);
	int (*epoll_wait)(int, struct epoll_event *, int, int);
	int (*epoll_pwait)(int, struct epoll_event *, int, int,
			   const sigset_t *);
	int (*execve)(const char *, char *const[], char *const[]);
	int (*execveat)(int, const char *, char *const[], char *const[], int);
	int (*fexecve)(int, char *const[], char *const[]);
	int (*execvpe)(const char *, char *const[], char *const[]);
	int (*posix_spawn)(pid_t *, const char *, const void *, const void *,
			   char *const[], char *const[]);
	int (*posix_spawnp)(pid_t *, const char *, const void *, const void *,
			    char *const[], char *const[]);
};
extern struct pl_real pl_real;

/* One accelerated connection, shared by every application fd that refers
 * to it (dup, fork). The handle runs on the application's fd while that is
 * the only one; the first dup gives it a duplicate of its own (priv, high,
 * close-on-exec), so that the application may then close or dup2 over its
 * fds in any order. An fd is not a number to spare (issue 4: at most one
 * extra fd per connection; the doorbell is that one). */
struct pl_conn {
	struct ivmc_chan *h;
	_Atomic int sock;	/* the fd the handle runs on: the
				 * application's, or priv */
	_Atomic int priv;	/* our duplicate, or -1 */
	_Atomic int refs;	/* application fds naming it */
	_Atomic unsigned int gen; /* bumped when it attaches or detaches */
	int rcvtimeo_ms;	/* SO_RCVTIMEO, 0: none */
	int sndtimeo_ms;	/* SO_SNDTIMEO */
	_Atomic int nsets;	/* epoll sets holding it (events.c) */
	_Atomic unsigned int eagain[2]; /* recv, send calls that said EAGAIN:
					 * an EPOLLET edge may come again */
	bool attached;		/* last seen on the channel (for events.c) */
	bool tx_ring;		/* ... and sending on the ring (POLLOUT is
				 * the ring's, not the socket's) */
};

/* The connection an application fd carries, or NULL (plain fd). The first
 * I/O on a connecting TCP socket of ours wraps it here. */
struct pl_conn *pl_conn(int fd);

/* The fd c's handle runs on now (the application's, or our duplicate). */
static inline int pl_sock(struct pl_conn *c)
{
	return atomic_load_explicit(&c->sock, memory_order_relaxed);
}

/* The same, without trying to wrap (a pure table look-up). */
struct pl_conn *pl_peek(int fd);

/* Number of fds carrying a connection now: 0 means every readiness call
 * goes straight to the kernel. */
extern _Atomic int pl_nconns;

/* How long a readiness call spins over busy rings before it sleeps (ns;
 * IVMC_SPIN_NS, 0 with IVMC_WAIT=sleep). */
extern unsigned int pl_spin_ns;

/* Incremented whenever a connection attaches or detaches; events.c
 * re-looks at its sets when it moves. */
extern _Atomic unsigned int pl_gen;

/* May an fd still be K_UNSEEN (accepted or connected before ivmcd's
 * table listed its peer, looked at again for UNSEEN_MS)? A cheap global
 * test for the readiness calls. */
bool pl_unseen_live(void);

/* Look again at fd if it is K_UNSEEN (it may be wrapped now): the
 * readiness calls do it for the fds they wait on, so that a connection
 * that stays silent (only waited on) is still wrapped once the table
 * catches up. */
void pl_unseen_poke(int fd);

/* Is c on the channel now (false: TCP alone)? Updates c->attached and the
 * generations when it changed. */
bool pl_attached(struct pl_conn *c);

/* Readiness of c for events (POLLIN/POLLOUT/POLLRDHUP...), the way poll(2)
 * reports it on a TCP socket, without waiting. When it returns 0 the
 * channel's doorbell is armed: pl_wait_fds() says what to sleep on. */
short pl_ready(struct pl_conn *c, short events);

/* The next nap of a wait on a ring with no doorbell (a channel between
 * VMs: ivmc_fd() is -1), as chan's polling wait: from PL_NODB_NAP0 ns,
 * twice as long each time up to $IVMC_POLL_MAX_US (1 ms), or up to an
 * eighth of the wait so far (waited) if more, never above
 * $IVMC_POLL_IDLE_US (100 ms); last 0 for the first. */
#define PL_NODB_NAP0 20000
int64_t pl_nodb_nap(int64_t last, int64_t waited);

/* The kernel fds to sleep on for c and events: fills up to 2 pollfds (the
 * TCP socket, and the doorbell while attached; its fd is -1 on a channel
 * with no doorbell). Returns how many. */
int pl_wait_fds(struct pl_conn *c, short events, struct pollfd *out);

/* events.c: forget fd in every epoll set (it is being closed), and an epoll
 * fd that is being closed. */
void pl_events_forget_fd(int fd);
void pl_events_close_epfd(int epfd);

/* fd is not a connection but may become one (connect in progress, peer
 * not listed yet)? */
bool pl_may_wrap(int fd);

/* fd just became connection c: its plain epoll registrations become
 * members. */
void pl_events_adopt(int fd, struct pl_conn *c);

/* events.c keeps state for epfd: close() must tell it. */
void pl_mark_epfd(int epfd);

void pl_init(void);

#endif
