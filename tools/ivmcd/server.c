/* SPDX-License-Identifier: MIT */
/*
 * Description: ivmcd's clients: accept, identify by kernel facts
 * (SO_PEERCRED, SO_PEERPIDFD, the socket's netns), read and validate every
 * message as hostile input, answer. A malformed message gets an error
 * reply; too many, or a flood, and the client is dropped; everybody else
 * keeps being served.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include "ring/atomics.h"
#include "transport/transport.h"
#include "ivmcd.h"

static void result(struct client *cl, int err, int fd, uint32_t size,
		   const char *fmt, ...) __attribute__((format(printf, 5, 6)));

int client_send(struct client *cl, const void *msg, const int *fds, int nfds)
{
	const struct ctl_hdr *h = msg;
	int err = xport_send_fds(cl->fd, msg, h->size, fds, nfds);

	if (!err && cl->mbox)
		atomic_fetch_add_explicit(&cl->mbox->seq, 1, memory_order_release);
	return err;
}

static void result(struct client *cl, int err, int fd, uint32_t size,
		   const char *fmt, ...)
{
	struct ctl_result r = { 0 };
	va_list ap;

	ctl_hdr_init(&r.h, CTL_RESULT, 0);
	r.err = err;
	r.size = size;
	va_start(ap, fmt);
	/* clang 14's va_list checker misreads va_start here. */
	/* NOLINTNEXTLINE(clang-analyzer-valist.Uninitialized) */
	vsnprintf(r.text, sizeof(r.text), fmt, ap);
	va_end(ap);
	(void)client_send(cl, &r, &fd, fd >= 0 ? 1 : 0);
}

void client_nochan(struct client *cl, uint64_t token, int reason)
{
	struct ctl_nochan m = { 0 };

	ctl_hdr_init(&m.h, CTL_NOCHAN, 0);
	m.token = token;
	m.reason = (uint32_t)reason;
	D.why.n[reason]++;
	(void)client_send(cl, &m, NULL, 0);
}

void conn_nochan(struct client *cl, uint64_t token, const struct kconn *k,
		 int reason)
{
	struct fallback *f = &D.fb[D.nfb++ % N_FALLBACKS];

	*f = (struct fallback){ .at_ms = now_ms(), .local = k->local,
				.remote = k->remote, .netns_ino = k->netns_ino,
				.pid = cl->pid, .uid = cl->uid, .reason = reason };
	client_nochan(cl, token, reason);
}

/* Take fd, an accepted control socket, as a client: who it is (kernel
 * facts), watched by epoll. Returns the client, or NULL (fd closed). */
struct client *client_new(int fd)
{
	struct epoll_event ev = { .events = EPOLLIN };
	int bufsz = 4 << 20;
	struct ucred cr;
	socklen_t len = sizeof(cr);
	struct client *cl = calloc(1, sizeof(*cl));

	if (!cl || getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &len) < 0) {
		free(cl);
		close(fd);
		D.refused_clients++;
		return NULL;
	}
	/* Accepted sockets do not inherit the listener's buffer: room for a
	 * burst of answers to a client busy elsewhere (about 280 CHANs fit
	 * in the default 208 KiB). */
	if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &bufsz, sizeof(bufsz)))
		(void)setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &bufsz,
				 sizeof(bufsz));
	cl->fd = fd;
	cl->id = D.next_id++;
	cl->pid = cr.pid;
	cl->uid = cr.uid;
	cl->gid = cr.gid;
	cl->pidfd = kfacts_peer_pidfd(fd);
	link_init(&cl->regs);
	link_init(&cl->ends);
	ev.data.ptr = cl;
	if (epoll_ctl(D.epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
		if (cl->pidfd >= 0)
			close(cl->pidfd);
		close(fd);
		free(cl);
		return NULL;
	}
	link_add(&D.clients, &cl->node);
	D.nclients++;
	log_debug("client %llu: pid %d uid %u gid %u",
		  (unsigned long long)cl->id, (int)cl->pid, cl->uid, cl->gid);
	return cl;
}

int server_accept(void)
{
	for (int i = 0; i < 64; i++) {
		int fd = accept4(D.lfd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);

		if (fd < 0 && (errno == EMFILE || errno == ENFILE ||
			       errno == ENOBUFS || errno == ENOMEM)) {
			/* Level-triggered: stop watching the socket for a
			 * while rather than spin (run() re-arms it). */
			log_warn("accept: %s: pausing", strerror(errno));
			epoll_ctl(D.epfd, EPOLL_CTL_DEL, D.lfd, NULL);
			D.accept_paused_ms = now_ms();
			return -errno;
		}
		if (fd < 0)
			return errno == EAGAIN ? 0 : -errno;
		(void)client_new(fd);
	}
	return 0;
}

void client_drop(struct client *cl, const char *why)
{
	log_debug("client %llu (pid %d): %s", (unsigned long long)cl->id,
		  (int)cl->pid, why);
	while (!link_empty(&cl->regs))
		reg_free(link_entry(cl->regs.next, struct reg, cnode));
	while (!link_empty(&cl->ends))
		end_gone(link_entry(cl->ends.next, struct chan_end, cnode));
	epoll_ctl(D.epfd, EPOLL_CTL_DEL, cl->fd, NULL);
	close(cl->fd);
	if (cl->pidfd >= 0)
		close(cl->pidfd);
	if (cl->mbox)
		munmap(cl->mbox, CTL_MAILBOX_SIZE);
	if (cl->ns) {
		netns_put(cl->ns);
		D.table_dirty = true;
	}
	link_del(&cl->node);
	D.nclients--;
	free(cl);
}

/* HELLO: map the client's mailbox (a sealed memfd it made) and answer
 * with the table, read-only. */
static void on_hello(struct client *cl, int nfds, const int *fds)
{
	struct ctl_welcome w = { 0 };
	char path[64];
	uint64_t size;
	void *p;
	int tfd;

	if (cl->hello) {
		result(cl, EPROTO, -1, 0, "second HELLO");
		cl->bad++; /* counts like any malformed message */
		return;
	}
	if (nfds == 1 && xport_memfd_verify(fds[0], &size) == 0 &&
	    size == CTL_MAILBOX_SIZE &&
	    xport_map(fds[0], 0, CTL_MAILBOX_SIZE, &p) == 0)
		cl->mbox = p;
	cl->hello = true;
	cl->ns = netns_get(cl->fd, 0);
	if (cl->ns)
		table_rebuild(); /* before the welcome: it maps the table */
	/* A read-only fd of the table: the client cannot map it writable. */
	snprintf(path, sizeof(path), "/proc/self/fd/%d", D.table_fd);
	tfd = open(path, O_RDONLY | O_CLOEXEC);
	if (tfd < 0) {
		result(cl, errno, -1, 0, "table: %s", strerror(errno));
		return;
	}
	ctl_hdr_init(&w.h, CTL_WELCOME, 0);
	w.client_id = cl->id;
	w.daemon_id = D.id;
	w.daemon_pid = (uint32_t)getpid();
	w.table_size = CTL_TABLE_SIZE;
	(void)client_send(cl, &w, &tfd, 1);
	close(tfd);
}

static bool privileged(const struct client *cl)
{
	return cl->uid == 0 || cl->uid == getuid();
}

static void on_query(struct client *cl, const struct ctl_query *q)
{
	int fd, err;
	uint64_t size;

	if ((q->what != CTL_Q_STATUS && q->what != CTL_Q_POLICY) || q->reserved ||
	    (q->h.flags & ~CTL_Q_JSON)) {
		result(cl, EINVAL, -1, 0, "bad query");
		return;
	}
	fd = memfd_create("ivmcd-status", MFD_CLOEXEC);
	err = fd < 0 ? -errno : 0;
	if (!err)
		err = status_write(fd, q->what, q->h.flags & CTL_Q_JSON,
				   privileged(cl) ? UINT32_MAX : cl->uid);
	if (err) {
		if (fd >= 0)
			close(fd);
		result(cl, -err, -1, 0, "status: %s", strerror(-err));
		return;
	}
	size = (uint64_t)lseek(fd, 0, SEEK_END);
	result(cl, 0, fd, (uint32_t)size, "ok");
	close(fd);
}

static void on_reload(struct client *cl)
{
	char msg[CTL_TEXT_MAX];
	int err;

	if (!privileged(cl)) {
		result(cl, EPERM, -1, 0, "reload: only root may reload");
		return;
	}
	err = daemon_reload(msg, sizeof(msg));
	result(cl, err < 0 ? -err : 0, -1, 0, "%s", msg);
}

static void on_evacuate(struct client *cl, const struct ctl_evacuate *m)
{
	unsigned int n = 0;

	if (!privileged(cl) || m->has_uid > 1) {
		result(cl, m->has_uid > 1 ? EINVAL : EPERM, -1, 0,
		       "evacuate: %s", m->has_uid > 1 ? "bad message" : "only root");
		return;
	}
	(void)evacuate(m, &n);
	result(cl, 0, -1, 0, "%u channel ends told to detach", n);
}

/* Is this message well formed for its type? (Size, version and magic are
 * checked by the caller.) */
static const char *msg_bad(const struct client *cl, const void *buf, int nfds)
{
	const struct ctl_hdr *h = buf;

	switch (h->type) {
	case CTL_HELLO:
		if (h->flags || ((const struct ctl_hello *)buf)->reserved)
			return "HELLO: reserved fields not zero";
		return nfds > 1 ? "HELLO: too many fds" : NULL;
	case CTL_REG_CONN:
	case CTL_REG_LISTEN: {
		const struct ctl_reg *r = buf;

		if (!cl->hello)
			return "register before HELLO";
		if (h->flags || r->reserved)
			return "register: reserved fields not zero";
		if (r->ring_size && (r->ring_size < 4096 || r->ring_size > (1u << 30) ||
				     (r->ring_size & (r->ring_size - 1))))
			return "register: bad ring size";
		return nfds != 1 ? "register: one fd expected" : NULL;
	}
	case CTL_UNREG:
	case CTL_QUERY:
	case CTL_RELOAD:
	case CTL_EVACUATE:
		if (h->type == CTL_UNREG && !cl->hello)
			return "UNREG before HELLO";
		if (h->type != CTL_QUERY && h->flags)
			return "flags not zero";
		return nfds ? "unexpected fd" : NULL;
	default:
		return "not a client message type";
	}
}

static void dispatch(struct client *cl, const void *buf, int *fds, int nfds)
{
	const struct ctl_hdr *h = buf;

	switch (h->type) {
	case CTL_HELLO: on_hello(cl, nfds, fds); break;
	case CTL_REG_CONN: reg_conn(cl, buf, fds[0]); fds[0] = -1; break;
	case CTL_REG_LISTEN: reg_listen(cl, buf, fds[0]); fds[0] = -1; break;
	case CTL_UNREG: reg_unreg(cl, buf); break;
	case CTL_QUERY: on_query(cl, buf); break;
	case CTL_RELOAD: on_reload(cl); break;
	case CTL_EVACUATE: on_evacuate(cl, buf); break;
	default: break;
	}
}

/* Read one message. Returns 1 (handled), 0 (nothing left), -1 (drop). */
static int client_read(struct client *cl)
{
	union { struct ctl_hdr h; char b[CTL_MSG_MAX + 1]; } m;
	int fds[2] = { -1, -1 }, nfds = 2, ret = 1;
	ssize_t n = xport_recv_fds(cl->fd, &m, sizeof(m), fds, &nfds,
				   MSG_DONTWAIT);
	const char *bad = NULL;

	if (n == -EAGAIN)
		return 0;
	if (n == 0) {
		/* End of file, or an empty packet, which may carry fds. */
		for (int i = 0; i < nfds; i++)
			close(fds[i]);
		return -1;
	}
	if (n == -ECONNRESET)
		return -1;
	if (n == -EPROTO)
		bad = "too many or truncated fds";
	else if (n < 0)
		return -1;
	else if ((size_t)n < sizeof(m.h) || m.h.magic != CTL_MAGIC)
		bad = "not an ivmc control message";
	else if (m.h.version != CTL_VERSION)
		bad = "unsupported protocol version";
	else if (m.h.size != (uint32_t)n || ctl_type_size(m.h.type) != m.h.size)
		bad = "wrong size for its type";
	else
		bad = msg_bad(cl, &m, nfds);
	if (bad) {
		D.bad_msgs++;
		log_debug("client %llu: %s", (unsigned long long)cl->id, bad);
		result(cl, EPROTO, -1, 0, "%s", bad);
		if (++cl->bad >= MAX_BAD_MSGS)
			ret = -1;
	} else {
		dispatch(cl, &m, fds, nfds);
	}
	for (int i = 0; i < nfds; i++)
		if (fds[i] >= 0)
			close(fds[i]);
	return ret;
}

void client_event(struct client *cl, uint32_t events)
{
	/* At most MAX_CLIENT_MSGS per wake-up: a flooding client waits its
	 * turn behind everybody else (epoll reports it again). */
	for (int i = 0; i < MAX_CLIENT_MSGS; i++) {
		int r = client_read(cl);

		if (r < 0) {
			client_drop(cl, cl->bad >= MAX_BAD_MSGS ?
						"too many bad messages" : "hung up");
			return;
		}
		if (r == 0)
			break;
	}
	if ((events & (EPOLLHUP | EPOLLERR)) && !(events & EPOLLIN))
		client_drop(cl, "hung up");
}
