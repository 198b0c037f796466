/* SPDX-License-Identifier: MIT */
/*
 * Description: the client side of the control protocol: one connection to
 * ivmcd, opened within a bounded time, and validated receive of the
 * daemon's messages. Not thread-safe: callers serialise (api/tcp.c).
 */
#ifndef IVMC_CTL_CLIENT_H
#define IVMC_CTL_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "proto.h"

struct ctl_client;

/* The daemon's socket path: $IVMC_SOCKET, else CTL_SOCKET_DEFAULT. */
const char *ctl_socket_path(void);

/* Copy the IVMC_* settings now (the preload, at load): a process whose
 * environment is cleared later (nginx's workers) keeps them. */
void ctl_env_snapshot(void);

/* getenv() for the IVMC_* settings, from the snapshot once taken. */
const char *ctl_getenv(const char *name);

/* A mailbox page (a sealed memfd ivmcd bumps, struct ctl_mailbox): made
 * once per process and passed to every ctl_open(), so it outlives
 * daemon restarts. Returns 0, *fd and *mb, or -errno. */
int ctl_mailbox_create(int *fd, struct ctl_mailbox **mb);

/* Connect to ivmcd at path and say hello (handing it the mailbox),
 * waiting at most budget_us for the welcome. Returns 0 and *out, or
 * -EINPROGRESS and *out (no welcome yet: finish with ctl_open_finish()
 * later, or ctl_close() it), or -errno: -ENOENT/-ECONNREFUSED (no daemon),
 * -EAGAIN (its backlog is full), -EPROTO (it spoke garbage), -EPERM (it
 * listens as neither root, our uid nor IVMC_DAEMON_UID: not talked to). */
int ctl_open(const char *path, unsigned int budget_us, int mbox_fd,
	     struct ctl_mailbox *mb, struct ctl_client **out);

/* Take in a late welcome without waiting. Returns 0 (open now), -EAGAIN
 * (not yet), or -errno (give up: ctl_close()). */
int ctl_open_finish(struct ctl_client *c);

/* Close the connection; the daemon forgets everything it registered.
 * The mailbox stays the caller's. */
void ctl_close(struct ctl_client *c);

/* The control socket (for poll()). */
int ctl_fd(const struct ctl_client *c);

/* True if the daemon queued something since the last ctl_recv(): one load
 * from the mailbox page, no system call. */
bool ctl_mail(struct ctl_client *c);

/* Send one message with nfds fds, never blocking. Returns 0, -EAGAIN
 * (socket full), -EPIPE (daemon gone), -errno. */
int ctl_send(struct ctl_client *c, const void *msg, const int *fds, int nfds);

/* Receive one daemon message without blocking, validated (magic, version,
 * size of its type, fd count). Returns its type (> 0) with the message in
 * buf (CTL_MSG_MAX bytes) and its fds, -EAGAIN (nothing), -EPIPE (daemon
 * gone), -EPROTO (malformed: dropped, its fds closed). */
int ctl_recv(struct ctl_client *c, void *buf, int *fds, int *nfds);

/* Might addr:port (IPv6 form, v4 as ::ffff:a.b.c.d; port 0: the address
 * with any port) be co-located? Reads the daemon's table: false only when
 * the table says no for sure. */
bool ctl_maybe_local(const struct ctl_client *c, const uint8_t addr[16],
		     uint16_t port);

/* ivmcctl's path: connect (waiting up to timeout_ms), send msg, wait for
 * a RESULT into *res; for a QUERY also its memfd in *fd (else -1).
 * Returns 0 or -errno. */
int ctl_request(const char *path, const void *msg, int timeout_ms,
		struct ctl_result *res, int *fd);

#endif
