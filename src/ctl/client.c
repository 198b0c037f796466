/* SPDX-License-Identifier: MIT */
/*
 * Description: client side of the control protocol (client.h). Every wait
 * on the daemon is bounded: a daemon that is stopped, not dead, costs the
 * caller its budget once and then plain TCP.
 */
#include <errno.h>
#include <sched.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "../ring/atomics.h"
#include "../transport/transport.h"
#include "client.h"

/* How long a table look-up waits out the daemon rewriting the table. */
#define TABLE_WAIT_NS 500000LL

struct ctl_client {
	int fd;
	struct ctl_mailbox *mbox; /* ours, the daemon writes seq */
	const struct ctl_table *tab; /* the daemon's, read-only */
	uint32_t mbox_seen;
	uint64_t client_id, daemon_id;
};

/* The IVMC_* settings, copied once by ctl_env_snapshot(). */
static const char *const env_names[] = { CTL_SOCKET_ENV, "IVMC_CTL_BUDGET_US",
					 "IVMC_CTL_RETRY_MS", "IVMC_AUTOSTART",
					 "IVMC_DAEMON", "IVMC_DAEMON_UID" };
#define N_ENV (sizeof(env_names) / sizeof(env_names[0]))
static struct {
	bool taken;
	char *val[N_ENV];
} env_snap;

void ctl_env_snapshot(void)
{
	for (size_t i = 0; i < N_ENV; i++) {
		const char *v = getenv(env_names[i]);

		env_snap.val[i] = v ? strdup(v) : NULL;
	}
	env_snap.taken = true;
}

const char *ctl_getenv(const char *name)
{
	if (env_snap.taken)
		for (size_t i = 0; i < N_ENV; i++)
			if (!strcmp(name, env_names[i]))
				return env_snap.val[i];
	return getenv(name);
}

const char *ctl_socket_path(void)
{
	const char *p = ctl_getenv(CTL_SOCKET_ENV);

	return p && *p ? p : CTL_SOCKET_DEFAULT;
}

/* The daemon is whoever called listen() on the socket (SO_PEERCRED, from
 * the kernel): root, our own uid (an ivmcd we or IVMC_AUTOSTART started),
 * or IVMC_DAEMON_UID (a container whose user namespace shows the host's
 * root as another uid). Anyone else who could bind the path is not
 * talked to at all: no HELLO, no mailbox, no sockets (docs/SECURITY.md).
 * ivmcctl's requests (ctl_request()) hand over nothing and are not
 * checked: root may ask a user's daemon for its status. */
static int daemon_trusted(int fd)
{
	struct ucred cr;
	socklen_t len = sizeof(cr);
	const char *v = ctl_getenv("IVMC_DAEMON_UID");
	char *end;
	unsigned long uid;

	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &len) < 0)
		return -errno;
	if (cr.uid == 0 || cr.uid == geteuid())
		return 0;
	if (v && *v) {
		errno = 0;
		uid = strtoul(v, &end, 10);
		if (!*end && !errno && uid == cr.uid)
			return 0;
	}
	return -EPERM;
}

static int sock_connect(const char *path, int *out)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	size_t n = strlen(path);
	int fd;

	if (!n || n >= sizeof(sa.sun_path))
		return -ENAMETOOLONG;
	memcpy(sa.sun_path, path, n);
	fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return -errno;
	fd = xport_fd_high(fd);
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		int err = errno == EINPROGRESS ? EAGAIN : errno;

		close(fd);
		return -err;
	}
	*out = fd;
	return 0;
}

/* Wait until fd is readable, at most us microseconds. */
static int wait_readable(int fd, long long us)
{
	struct timespec ts = { us / 1000000, (us % 1000000) * 1000 };
	struct pollfd p = { fd, POLLIN, 0 };
	int r;

	do
		r = ppoll(&p, 1, &ts, NULL);
	while (r < 0 && errno == EINTR); /* a signal costs at most one budget */
	if (r < 0)
		return -errno;
	return r ? 0 : -ETIMEDOUT;
}

int ctl_mailbox_create(int *fd, struct ctl_mailbox **mb)
{
	void *p;
	int err = xport_memfd_create(CTL_MAILBOX_SIZE, fd);

	if (err)
		return err;
	*fd = xport_fd_high(*fd);
	err = xport_map(*fd, 0, CTL_MAILBOX_SIZE, &p);
	if (err) {
		close(*fd);
		return err;
	}
	*mb = p;
	return 0;
}

/* The table fd must be a memfd sealed against shrinking (shrunk under
 * our mapping, it would be SIGBUS in every look-up; the seal check also
 * refuses a file of any other filesystem without calling into it) and
 * the size we expect; we map it read-only. */
static int table_map(struct ctl_client *c, int fd)
{
	int seals = fcntl(fd, F_GET_SEALS);
	struct stat st;
	void *p;

	if (seals < 0 || !(seals & F_SEAL_SHRINK) || fstat(fd, &st) < 0 ||
	    st.st_size != (off_t)CTL_TABLE_SIZE)
		return -EPROTO;
	p = mmap(NULL, CTL_TABLE_SIZE, PROT_READ, MAP_SHARED, fd, 0);
	if (p == MAP_FAILED)
		return -errno;
	c->tab = p;
	return 0;
}

/* Take in the welcome if it is there (non-blocking). Returns 0, -EAGAIN
 * (not yet) or another -errno. */
static int welcome(struct ctl_client *c)
{
	union { struct ctl_welcome w; char b[CTL_MSG_MAX]; } m;
	int fds[1], nfds = 1, err;

	err = ctl_recv(c, &m, fds, &nfds);
	if (err < 0)
		return err;
	if (err != CTL_WELCOME) {
		for (int i = 0; i < nfds; i++)
			close(fds[i]);
		return -EPROTO;
	}
	err = table_map(c, fds[0]);
	close(fds[0]);
	c->client_id = m.w.client_id;
	c->daemon_id = m.w.daemon_id;
	return err;
}

static int hello(struct ctl_client *c, int mfd, unsigned int budget_us)
{
	struct ctl_hello h = { 0 };
	int err;

	ctl_hdr_init(&h.h, CTL_HELLO, 0);
	err = ctl_send(c, &h, &mfd, 1);
	if (err)
		return err;
	err = wait_readable(c->fd, budget_us);
	if (err)
		return err == -ETIMEDOUT ? -EINPROGRESS : err;
	err = welcome(c);
	return err == -EAGAIN ? -EINPROGRESS : err;
}

int ctl_open(const char *path, unsigned int budget_us, int mbox_fd,
	     struct ctl_mailbox *mb, struct ctl_client **out)
{
	struct ctl_client *c = calloc(1, sizeof(*c));
	int err;

	if (!c)
		return -ENOMEM;
	c->fd = -1;
	c->mbox = mb;
	c->mbox_seen = ivmc_load_acquire(&mb->seq);
	err = sock_connect(path, &c->fd);
	if (!err)
		err = daemon_trusted(c->fd);
	if (!err)
		err = hello(c, mbox_fd, budget_us);
	if (err && err != -EINPROGRESS) {
		ctl_close(c);
		return err;
	}
	*out = c;
	return err;
}

int ctl_open_finish(struct ctl_client *c)
{
	return welcome(c);
}

void ctl_close(struct ctl_client *c)
{
	if (!c)
		return;
	if (c->fd >= 0)
		close(c->fd);
	if (c->tab)
		munmap((void *)c->tab, CTL_TABLE_SIZE);
	free(c);
}

int ctl_fd(const struct ctl_client *c)
{
	return c->fd;
}

bool ctl_mail(struct ctl_client *c)
{
	return ivmc_load_acquire(&c->mbox->seq) != c->mbox_seen;
}

int ctl_send(struct ctl_client *c, const void *msg, const int *fds, int nfds)
{
	const struct ctl_hdr *h = msg;

	return xport_send_fds(c->fd, msg, h->size, fds, nfds);
}

/* A message from the daemon: well formed, or dropped. */
static bool msg_ok(const void *buf, ssize_t n, int nfds)
{
	const struct ctl_hdr *h = buf;

	if (n < (ssize_t)sizeof(*h) || h->magic != CTL_MAGIC ||
	    h->version != CTL_VERSION || (uint32_t)n != h->size ||
	    ctl_type_size(h->type) != h->size)
		return false;
	if (h->type == CTL_RESULT)
		return nfds <= 1;
	if (h->type == CTL_CHAN_MEM)
		return nfds == (((const struct ctl_chan_mem *)buf)->bell_peer ? 3
									    : 1);
	return nfds == ctl_type_fds(h->type);
}

int ctl_recv(struct ctl_client *c, void *buf, int *fds, int *nfds)
{
	int max = *nfds;
	uint32_t seq = ivmc_load_acquire(&c->mbox->seq);
	ssize_t n;

	*nfds = max;
	n = xport_recv_fds(c->fd, buf, CTL_MSG_MAX, fds, nfds, MSG_DONTWAIT);
	if (n == 0) {
		/* End of file, or an empty packet, which may carry fds. */
		for (int i = 0; i < *nfds; i++)
			close(fds[i]);
		*nfds = 0;
		return -EPIPE;
	}
	if (n < 0) {
		/* Nothing left: what the mailbox said is now seen. */
		if (n == -EAGAIN)
			c->mbox_seen = seq;
		return n == -ECONNRESET ? -EPIPE : (int)n;
	}
	if (!msg_ok(buf, n, *nfds)) {
		for (int i = 0; i < *nfds; i++)
			close(fds[i]);
		*nfds = 0;
		return -EPROTO;
	}
	return ((const struct ctl_hdr *)buf)->type;
}

static int64_t mono_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* Probe the open-addressing table once under the seqlock. */
static int table_probe(const struct ctl_table *t, const uint8_t a[16],
		       uint16_t port)
{
	uint32_t mask = CTL_TABLE_SLOTS - 1;
	uint32_t i = ctl_tab_hash(a, port) & mask;

	for (uint32_t k = 0; k < CTL_TABLE_SLOTS; k++, i = (i + 1) & mask) {
		const struct ctl_tab_entry *e = &t->e[i];

		if (!ivmc_load_once(&e->used))
			return 0;
		if (e->port == port && !memcmp(e->addr, a, 16))
			return 1;
	}
	return 0;
}

bool ctl_maybe_local(const struct ctl_client *c, const uint8_t addr[16],
		     uint16_t port)
{
	const struct ctl_table *t = c->tab;
	int64_t until = 0;

	/* A rebuild (8192 slots) takes microseconds, longer if the daemon
	 * is preempted in it: spin a little, then yield the CPU to it, for
	 * at most TABLE_WAIT_NS. Giving up says "maybe", which costs a
	 * registration that waits for its peer in vain. */
	for (unsigned int tries = 0;; tries++) {
		uint32_t s = ivmc_load_acquire(&t->seq);
		int hit;

		if (!(s & 1)) {
			if (t->magic != CTL_TABLE_MAGIC || t->overflow)
				return true;
			hit = table_probe(t, addr, port);
			ivmc_fence_acquire();
			if (ivmc_load_once(&t->seq) == s)
				return hit;
		}
		if (tries < 64) {
			ivmc_cpu_relax();
			continue;
		}
		if (!until)
			until = mono_ns() + TABLE_WAIT_NS;
		else if (mono_ns() > until)
			return true; /* the daemon keeps writing (or is stopped) */
		sched_yield();
	}
}

int ctl_request(const char *path, const void *msg, int timeout_ms,
		struct ctl_result *res, int *fd)
{
	struct ctl_client c = { .fd = -1 };
	struct ctl_mailbox mb = { 0 };
	union { struct ctl_result r; char b[CTL_MSG_MAX]; } m;
	int fds[1] = { -1 }, nfds = 0, err;

	*fd = -1;
	memset(&m, 0, sizeof(m));
	c.mbox = &mb; /* no mailbox page: ctl_recv() only reads it */
	err = sock_connect(path, &c.fd);
	if (err)
		return err;
	err = ctl_send(&c, msg, NULL, 0);
	if (!err)
		err = wait_readable(c.fd, (long long)timeout_ms * 1000);
	nfds = 1;
	if (!err)
		err = ctl_recv(&c, &m, fds, &nfds);
	if (err == -EAGAIN)
		err = -ETIMEDOUT;
	if (err > 0 && err != CTL_RESULT) {
		for (int i = 0; i < nfds; i++)
			close(fds[i]);
		err = -EPROTO;
	} else if (err > 0) {
		m.r.text[CTL_TEXT_MAX - 1] = 0;
		*res = m.r;
		*fd = nfds ? fds[0] : -1;
		err = 0;
	}
	close(c.fd);
	return err;
}
