/* SPDX-License-Identifier: MIT */
/*
 * Description: the native API: rendezvous on an AF_UNIX seqpacket socket
 * (peer credentials checked by the kernel), then thin calls into chan/.
 * Wire format of the rendezvous: docs/protocol.md.
 */
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include "api.h"
#include "../ring/atomics.h"
#include "../transport/transport.h"

#define RDV_MAGIC   0x52564d49u /* reads "RVMI" as a number, "IMVR" in memory */
#define RDV_VERSION 1u
#define RDV_HELLO   1u
#define RDV_ACCEPT  2u
#define RDV_REJECT  3u
#define HELLO_WAIT_MS  1000 /* a connector must speak this soon */
#define REPLY_WAIT_MS  5000 /* a listener must answer this soon */

/* One message each way, little-endian, fixed size, reserved fields zero. */
struct rdv_msg {
	uint32_t magic;
	uint16_t version;
	uint16_t type;
	int32_t status;	    /* positive errno in a REJECT */
	uint32_t ring_size; /* HELLO: wish (0 = listener's); ACCEPT: chosen */
	uint32_t reserved[4];
};

struct ivmc_listener {
	int fd;
	struct ivmc_opts opts;
	uid_t *uids;
	gid_t *gids;
	char *path; /* to unlink; NULL for abstract names */
};

static int opts_check(const struct ivmc_opts *o)
{
	size_t rs = o->ring_size;

	if (rs && (rs < 4096 || rs > (1u << 30) || (rs & (rs - 1))))
		return -EINVAL;
	if (o->wait_mode < IVMC_WAIT_ADAPTIVE || o->wait_mode > IVMC_WAIT_SLEEP ||
	    o->spin_ns > IVMC_SPIN_MAX_NS || (o->flags & ~IVMC_NONBLOCK))
		return -EINVAL;
	if ((o->n_allow_uids && !o->allow_uids) ||
	    (o->n_allow_gids && !o->allow_gids) || o->n_allow_uids > 4096 ||
	    o->n_allow_gids > 4096)
		return -EINVAL;
	return 0;
}

static int sun_make(const char *path, struct sockaddr_un *sa, socklen_t *len)
{
	size_t n = path ? strlen(path) : 0;

	if (!n)
		return -EINVAL;
	if (n >= sizeof(sa->sun_path))
		return -ENAMETOOLONG;
	memset(sa, 0, sizeof(*sa));
	sa->sun_family = AF_UNIX;
	memcpy(sa->sun_path, path, n);
	if (path[0] == '@')
		sa->sun_path[0] = 0; /* abstract: per network namespace */
	*len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n +
			   (path[0] != '@'));
	return 0;
}

static void *dup_array(const void *src, size_t n, size_t size)
{
	void *p = n ? malloc(n * size) : NULL;

	if (p)
		memcpy(p, src, n * size);
	return p;
}

static int listener_alloc(const char *path, const struct ivmc_opts *o,
			  struct ivmc_listener **out)
{
	struct ivmc_listener *l = calloc(1, sizeof(*l));

	if (!l)
		return -ENOMEM;
	l->opts = *o;
	l->uids = dup_array(o->allow_uids, o->n_allow_uids, sizeof(uid_t));
	l->gids = dup_array(o->allow_gids, o->n_allow_gids, sizeof(gid_t));
	l->path = path[0] != '@' ? strdup(path) : NULL;
	if ((o->n_allow_uids && !l->uids) || (o->n_allow_gids && !l->gids) ||
	    (path[0] != '@' && !l->path)) {
		free(l->uids);
		free(l->gids);
		free(l->path);
		free(l);
		return -ENOMEM;
	}
	l->opts.allow_uids = l->uids;
	l->opts.allow_gids = l->gids;
	*out = l;
	return 0;
}

IVMC_API int ivmc_listen(const char *path, const struct ivmc_opts *opts,
			 struct ivmc_listener **out)
{
	static const struct ivmc_opts defaults;
	const struct ivmc_opts *o = opts ? opts : &defaults;
	struct sockaddr_un sa;
	socklen_t len;
	int fd, err = out ? opts_check(o) : -EINVAL;

	if (!err)
		err = sun_make(path, &sa, &len);
	if (err)
		return err;
	/* Non-blocking: a blocking accept waits in poll(), so IVMC_NONBLOCK
	 * can be honoured per call. */
	fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return -errno;
	if (bind(fd, (struct sockaddr *)&sa, len) < 0 || listen(fd, 128) < 0) {
		err = -errno;
		close(fd);
		return err;
	}
	err = listener_alloc(path, o, out);
	if (err) {
		close(fd);
		if (path[0] != '@')
			unlink(path);
		return err;
	}
	(*out)->fd = fd;
	return 0;
}

IVMC_API int ivmc_listener_fd(const struct ivmc_listener *l)
{
	return l ? l->fd : -EINVAL;
}

IVMC_API int ivmc_listener_close(struct ivmc_listener *l)
{
	if (!l)
		return -EINVAL;
	if (l->path)
		unlink(l->path);
	close(l->fd);
	free(l->uids);
	free(l->gids);
	free(l->path);
	free(l);
	return 0;
}

/* May this peer have a channel? No list at all: anyone who reached us. */
static bool peer_allowed(const struct ivmc_opts *o, const struct ucred *cr)
{
	if (!o->n_allow_uids && !o->n_allow_gids)
		return true;
	for (size_t i = 0; i < o->n_allow_uids; i++)
		if (o->allow_uids[i] == cr->uid)
			return true;
	for (size_t i = 0; i < o->n_allow_gids; i++)
		if (o->allow_gids[i] == cr->gid)
			return true;
	return false;
}

static int peer_cred(int fd, struct ucred *cr)
{
	socklen_t len = sizeof(*cr);

	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, cr, &len) < 0)
		return -errno;
	return 0;
}

static int wait_in(int fd, int ms)
{
	struct pollfd p = { fd, POLLIN, 0 };
	int r;

	do
		r = poll(&p, 1, ms);
	while (r < 0 && errno == EINTR);
	if (r < 0)
		return -errno;
	return r ? 0 : -ETIMEDOUT;
}

static int msg_valid(const struct rdv_msg *m, ssize_t n, uint16_t type)
{
	if (n != (ssize_t)sizeof(*m) || m->magic != RDV_MAGIC ||
	    m->version != RDV_VERSION || m->type != type)
		return -EPROTO;
	for (int i = 0; i < 4; i++)
		if (m->reserved[i])
			return -EPROTO;
	return 0;
}

static void send_reject(int fd, int err)
{
	struct rdv_msg m = { .magic = RDV_MAGIC, .version = RDV_VERSION,
			     .type = RDV_REJECT, .status = -err };

	(void)send(fd, &m, sizeof(m), MSG_DONTWAIT | MSG_NOSIGNAL);
}

static struct chan_cfg cfg_from(const struct ivmc_opts *o, int side)
{
	return (struct chan_cfg){ .side = side, .side_fd = -1,
				  .wait_mode = o->wait_mode,
				  .spin_ns = o->spin_ns,
				  .nonblock = o->flags & IVMC_NONBLOCK };
}

static int wrap(struct chan *c, struct ivmc_chan **out)
{
	struct ivmc_chan *h = calloc(1, sizeof(*h));

	if (!h) {
		chan_close(c);
		return -ENOMEM;
	}
	atomic_init(&h->c, c);
	*out = h;
	return 0;
}

/* Listener side of one rendezvous on an accepted connection. */
static int serve(struct ivmc_listener *l, int fd, struct ivmc_chan **out)
{
	struct chan_cfg cfg = cfg_from(&l->opts, 0);
	struct rdv_msg m;
	struct ucred cr;
	struct chan *c;
	int db[2], rfd, nfds = 0, err;
	uint32_t rs;
	ssize_t n;

	/* Read the hello first even from a peer we refuse: closing with it
	 * unread would reset the connection before our answer is read. */
	err = wait_in(fd, HELLO_WAIT_MS);
	if (err)
		goto reject;
	n = xport_recv_fds(fd, &m, sizeof(m), NULL, &nfds, MSG_DONTWAIT);
	err = n < 0 ? (int)n : msg_valid(&m, n, RDV_HELLO);
	if (!err)
		err = peer_cred(fd, &cr);
	if (!err && !peer_allowed(&l->opts, &cr))
		err = -EACCES;
	rs = l->opts.ring_size ? (uint32_t)l->opts.ring_size : IVMC_RING_DEFAULT;
	if (!err && m.ring_size) {
		struct ivmc_opts want = { .ring_size = m.ring_size };

		/* A wish, never a demand: the listener's size is the cap. */
		err = opts_check(&want);
		if (m.ring_size < rs)
			rs = m.ring_size;
	}
	if (!err)
		err = chan_region_create(rs, 0, false, 0, &rfd);
	if (err)
		goto reject;
	err = xport_doorbell_pair(db);
	if (err) {
		close(rfd);
		goto reject;
	}
	err = chan_open(&cfg, rfd, db[0], &c);
	if (err) {
		close(db[0]);
	} else {
		int fds[2] = { rfd, db[1] };
		struct rdv_msg a = { .magic = RDV_MAGIC, .version = RDV_VERSION,
				     .type = RDV_ACCEPT, .ring_size = rs };

		err = xport_send_fds(fd, &a, sizeof(a), fds, 2);
		if (err)
			chan_close(c);
	}
	close(rfd);
	close(db[1]);
	return err ? err : wrap(c, out);
reject:
	send_reject(fd, err);
	return err;
}

IVMC_API int ivmc_accept(struct ivmc_listener *l, unsigned int flags,
			 struct ivmc_chan **out)
{
	int fd, err;

	if (!l || !out || (flags & ~IVMC_NONBLOCK))
		return -EINVAL;
	for (;;) {
		fd = accept4(l->fd, NULL, NULL, SOCK_CLOEXEC);
		if (fd >= 0)
			break;
		if (errno == EINTR)
			continue;
		if (errno != EAGAIN && errno != EWOULDBLOCK)
			return -errno;
		if (flags & IVMC_NONBLOCK)
			return -EAGAIN;
		err = wait_in(l->fd, -1);
		if (err)
			return err;
	}
	err = serve(l, fd, out);
	close(fd);
	return err;
}

static int listener_allowed(int fd, const struct ivmc_opts *o)
{
	struct ucred cr;
	int err = peer_cred(fd, &cr);

	if (err)
		return err;
	return peer_allowed(o, &cr) ? 0 : -EACCES;
}

/* Connector side: hello, then the reply with the region and doorbell. */
static int rendezvous(int fd, const struct ivmc_opts *o, struct chan **c)
{
	struct rdv_msg m = { .magic = RDV_MAGIC, .version = RDV_VERSION,
			     .type = RDV_HELLO,
			     .ring_size = (uint32_t)o->ring_size };
	struct chan_cfg cfg = cfg_from(o, 1);
	int fds[2], nfds = 2, err;
	ssize_t n;

	/* A listener that refused us may have answered and closed already:
	 * read its answer even if our hello could not be sent. */
	if (send(fd, &m, sizeof(m), MSG_NOSIGNAL) != (ssize_t)sizeof(m) &&
	    errno != EPIPE && errno != ECONNRESET)
		return -errno;
	err = wait_in(fd, REPLY_WAIT_MS);
	if (err)
		return err;
	n = xport_recv_fds(fd, &m, sizeof(m), fds, &nfds, MSG_DONTWAIT);
	if (n < 0)
		return (int)n;
	if (n == 0)
		err = -ECONNRESET;
	else if (!msg_valid(&m, n, RDV_REJECT) && m.status > 0 &&
		 m.status < 4096 && !nfds)
		err = -m.status;
	else
		err = msg_valid(&m, n, RDV_ACCEPT);
	if (!err && nfds != 2)
		err = -EPROTO;
	if (!err)
		err = chan_open(&cfg, fds[0], fds[1], c);
	for (int i = 0; i < nfds; i++)
		if (err || i == 0)
			close(fds[i]);
	return err;
}

IVMC_API int ivmc_connect(const char *path, const struct ivmc_opts *opts,
			  struct ivmc_chan **out)
{
	static const struct ivmc_opts defaults;
	const struct ivmc_opts *o = opts ? opts : &defaults;
	struct sockaddr_un sa;
	struct chan *c = NULL;
	socklen_t len;
	int fd, err = out ? opts_check(o) : -EINVAL;

	if (!err)
		err = sun_make(path, &sa, &len);
	if (err)
		return err;
	fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	do
		err = connect(fd, (struct sockaddr *)&sa, len) < 0 ? -errno : 0;
	while (err == -EINTR);
	if (!err)
		err = listener_allowed(fd, o);
	if (!err)
		err = rendezvous(fd, o, &c);
	close(fd);
	return err ? err : wrap(c, out);
}

IVMC_API ssize_t ivmc_send(struct ivmc_chan *h, const void *buf, size_t len,
			   unsigned int flags)
{
	struct iovec v = { (void *)buf, len };

	return ivmc_sendv(h, &v, 1, flags);
}

IVMC_API ssize_t ivmc_sendv(struct ivmc_chan *h, const struct iovec *iov,
			    int iovcnt, unsigned int flags)
{
	struct chan *c;

	if (!h || (flags & ~(IVMC_NONBLOCK | IVMC_MORE)))
		return -EINVAL;
	c = api_chan(h);
	return c ? chan_sendv(c, iov, iovcnt, flags)
		 : tcp_sendv(h, iov, iovcnt, flags);
}

IVMC_API ssize_t ivmc_recv(struct ivmc_chan *h, void *buf, size_t len,
			   unsigned int flags)
{
	struct iovec v = { buf, len };

	return ivmc_recvv(h, &v, 1, flags);
}

IVMC_API ssize_t ivmc_recvv(struct ivmc_chan *h, const struct iovec *iov,
			    int iovcnt, unsigned int flags)
{
	struct chan *c;

	if (!h || (flags & ~(IVMC_NONBLOCK | IVMC_WAITALL)))
		return -EINVAL;
	c = api_chan(h);
	return c ? chan_recvv(c, iov, iovcnt, flags)
		 : tcp_recvv(h, iov, iovcnt, flags);
}

/* Zero-copy needs the ring: on TCP alone, as on a detached channel, use
 * send and recv. */
IVMC_API ssize_t ivmc_reserve(struct ivmc_chan *h, void **buf,
			      unsigned int flags)
{
	struct chan *c;

	if (!h || !buf || (flags & ~IVMC_NONBLOCK))
		return -EINVAL;
	c = api_chan(h);
	return c ? chan_reserve(c, buf, flags) : -EOPNOTSUPP;
}

IVMC_API int ivmc_commit(struct ivmc_chan *h, size_t len, unsigned int flags)
{
	struct chan *c;

	if (!h || (flags & ~IVMC_MORE))
		return -EINVAL;
	c = ivmc_load_acquire(&h->c);
	return c ? chan_commit(c, len, flags) : -EINVAL;
}

IVMC_API ssize_t ivmc_peek(struct ivmc_chan *h, const void **buf,
			   unsigned int flags)
{
	struct chan *c;

	if (!h || !buf || (flags & ~IVMC_NONBLOCK))
		return -EINVAL;
	c = api_chan(h);
	return c ? chan_peek(c, buf, flags) : -EOPNOTSUPP;
}

IVMC_API int ivmc_release(struct ivmc_chan *h, size_t len)
{
	struct chan *c = h ? ivmc_load_acquire(&h->c)
			   : NULL;

	if (!h)
		return -EINVAL;
	return c ? chan_release(c, len) : -EINVAL;
}

IVMC_API int ivmc_fd(const struct ivmc_chan *h)
{
	struct chan *c = h ? ivmc_load_acquire(&h->c)
			   : NULL;

	if (!h)
		return -EINVAL;
	return c ? chan_fd(c) : tcp_fd(h);
}

uint64_t api_nap_first_ns(const struct ivmc_chan *h)
{
	struct chan *c = ivmc_load_acquire(&h->c);

	return c ? chan_nap_first_ns(c) : 0;
}

IVMC_API int ivmc_poll_arm(struct ivmc_chan *h, short events)
{
	struct chan *c;
	int r;

	if (!h || !events || (events & ~(POLLIN | POLLOUT)))
		return -EINVAL;
	c = api_chan(h);
	r = c ? chan_poll_arm(c, events) : tcp_poll_arm(h, events);
	return r;
}

int api_poll_arm(struct ivmc_chan *h, short events)
{
	struct chan *c = api_chan(h);

	return c ? chan_poll_arm(c, events) : tcp_poll_arm(h, events);
}

int api_poll_peek(struct ivmc_chan *h, short events)
{
	struct chan *c = api_chan(h);

	return c ? chan_poll_peek(c, events) : 0;
}

bool api_tx_on_ring(struct ivmc_chan *h)
{
	struct chan *c = ivmc_load_acquire(&h->c);

	return c && chan_tx_on_ring(c);
}

IVMC_API int ivmc_set_nonblock(struct ivmc_chan *h, int on)
{
	struct chan *c;

	if (!h)
		return -EINVAL;
	if (h->w)
		tcp_set_nonblock(h, on);
	c = api_chan(h);
	if (c)
		chan_set_nonblock(c, on);
	return 0;
}

IVMC_API int ivmc_shutdown(struct ivmc_chan *h, int how)
{
	struct chan *c;

	if (!h)
		return -EINVAL;
	c = api_chan(h);
	return c ? chan_shutdown(c, how) : tcp_shutdown(h, how);
}

IVMC_API int ivmc_close(struct ivmc_chan *h)
{
	int err = 0;

	if (!h)
		return -EINVAL;
	if (h->w)
		err = tcp_close(h); /* closes the channel too, if any */
	else
		chan_close(ivmc_load_once(&h->c));
	free(h);
	return err;
}

IVMC_API int ivmc_stats(const struct ivmc_chan *h, struct ivmc_stats *st)
{
	struct chan *c;
	struct chan_stats cs;

	if (!h || !st)
		return -EINVAL;
	memset(st, 0, sizeof(*st));
	c = ivmc_load_acquire(&h->c);
	if (h->w)
		tcp_stats(h, st);
	if (!c)
		return 0;
	chan_stats(c, &cs);
	st->bytes_sent = cs.sent;
	st->bytes_received = cs.received;
	st->wakeups_sent = cs.wakeups_sent;
	st->sleeps = cs.sleeps;
	st->spin_hits = cs.spin_hits;
	st->ring_size = cs.ring_size;
	st->spin_ns = cs.spin_ns;
	st->on_ring = (cs.tx_on_ring ? 1 : 0) | (cs.rx_on_ring ? 2 : 0);
	return 0;
}
