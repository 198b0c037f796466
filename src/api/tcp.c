/* SPDX-License-Identifier: MIT */
/*
 * Description: ivmc_tcp(): a connected TCP socket that moves onto a
 * channel when ivmcd pairs it with its other end. Until then every call
 * goes to the socket, counting stream bytes each way; the channel is
 * opened at those offsets (chan_cfg.tx_off0/rx_off0) when no call is in
 * either direction, so the switch is lossless (DESIGN.md, attach).
 *
 * One connection to ivmcd per process (struct ctl_g), opened lazily with a
 * bounded wait, retried after a back-off when absent. The daemon's answers
 * are taken in by whichever call next sees the mailbox move: one load, no
 * system call, on the busy path.
 */
#include <errno.h>
#include <sys/syscall.h>
#include <signal.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <netinet/in.h>

#include "../ctl/client.h"
#include "../ring/atomics.h"
#include "../transport/transport.h"
#include "api.h"

#define W_PENDING  0
#define W_ATTACHED 1
#define W_UNSEEN   2 /* the table did not list the peer: look again */
#define RECHECK_CALLS 256  /* ... at most this many calls */
#define RECHECK_MS    2000 /* ... and this long */
#define NBUCKETS   256u

struct tcpw {
	struct ivmc_chan *h;
	struct tcpw *next, *prev; /* every TCP handle (under G.mu) */
	struct tcpw *hnext;	  /* token hash (under G.mu) */
	_Atomic int fd;		  /* moves only by tcp_set_fd() */
	uint64_t token;
	_Atomic int state;	  /* W_PENDING, W_ATTACHED, or -errno */
	_Atomic int stash;	  /* a channel came and waits to be opened */
	_Atomic int nonblock;
	pthread_mutex_t mu[2];	  /* [CHAN_TX], [CHAN_RX]: calls on TCP */
	uint64_t off[2];	  /* stream bytes each way, under mu[] */
	int region_fd, bell_fd;	  /* the stash (under G.mu) */
	uint64_t mem_off, mem_size; /* CHAN_MEM: the region in region_fd;
				     * mem_size 0: a CHAN (a memfd) */
	int regs_fd;		  /* CHAN_MEM with a doorbell: BAR0 (stash) */
	uint32_t bell_peer, bell_vec;
	/* CHAN_MEM with a doorbell, once installed: the channel's bell, its
	 * eventfd (bell_fd) and the register map it rings through. */
	struct chan_bell *mbell;
	struct xport_ivshmem_bell *mxb;
	uint32_t side;
	struct chan_cfg cfg;
	bool registered;
	uint8_t peer[16];	  /* W_UNSEEN: the peer address */
	uint32_t recheck_left;	  /* W_UNSEEN: calls left to look again */
	uint64_t recheck_until;	  /* W_UNSEEN: and until when (ms) */
	int ring_wish;
};

/* The fd a handle's TCP calls go to now (see tcp_set_fd()). */
static inline int wfd(const struct tcpw *w)
{
	return atomic_load_explicit((_Atomic int *)&w->fd,
				    memory_order_relaxed);
}

struct lis {
	struct lis *next;
	int fd;
	uint64_t token;
};

static struct ctl_g {
	pthread_mutex_t mu;
	pthread_once_t once;
	struct ctl_client *cli;
	struct ctl_client *opening; /* hello sent, welcome not yet in */
	uint64_t opening_until;	    /* ... give up on it then (ms) */
	bool opening_waited;	    /* a call already waited its budget */
	pid_t pid;
	uint64_t retry_ms, next_token;
	int err;		 /* why there is no daemon, for state */
	pid_t spawned;		 /* an ivmcd we started, to reap */
	int mbox_fd;		 /* our mailbox, for the process's life */
	struct ctl_mailbox *mbox;
	_Atomic uint32_t seen;	 /* mailbox value last pumped */
	struct tcpw all;	 /* list head */
	struct tcpw *hash[NBUCKETS];
	struct lis *lis;
} G = { .mu = PTHREAD_MUTEX_INITIALIZER, .once = PTHREAD_ONCE_INIT,
	.all = { .next = &G.all, .prev = &G.all } };

static uint64_t mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static unsigned long env_ul(const char *name, unsigned long def)
{
	const char *s = ctl_getenv(name);
	char *end;
	unsigned long v;

	if (!s || !*s)
		return def;
	v = strtoul(s, &end, 10);
	return *end ? def : v;
}

static int reason_errno(uint32_t r)
{
	switch (r) {
	case CTL_R_EXPIRED: return -ETIMEDOUT;
	case CTL_R_DENIED: return -EACCES;
	case CTL_R_QUOTA: return -EDQUOT;
	case CTL_R_AMBIGUOUS:
	case CTL_R_NOT_LOCAL: return -EADDRNOTAVAIL;
	case CTL_R_NO_MEMORY: return -ENOMEM;
	case CTL_R_PEER_FAILED: return -ECONNABORTED;
	case CTL_R_LIMIT: return -ENOBUFS;
	default: return -EPROTO;
	}
}

/* ---- the token hash (under G.mu) -------------------------------------- */

static struct tcpw **bucket(uint64_t token)
{
	return &G.hash[(token * 0x9e3779b97f4a7c15ull) >> 56 & (NBUCKETS - 1)];
}

static void hash_add(struct tcpw *w)
{
	struct tcpw **b = bucket(w->token);

	w->hnext = *b;
	*b = w;
}

static void hash_del(struct tcpw *w)
{
	for (struct tcpw **pp = bucket(w->token); *pp; pp = &(*pp)->hnext) {
		if (*pp == w) {
			*pp = w->hnext;
			return;
		}
	}
}

static struct tcpw *hash_find(uint64_t token)
{
	for (struct tcpw *w = *bucket(token); w; w = w->hnext)
		if (w->token == token)
			return w;
	return NULL;
}

/* ---- the daemon connection (under G.mu) -------------------------------- */

static void unstash(struct tcpw *w)
{
	if (!ivmc_load_once(&w->stash))
		return;
	close(w->region_fd);
	if (w->bell_fd >= 0)
		close(w->bell_fd);
	if (w->regs_fd >= 0)
		close(w->regs_fd);
	w->bell_fd = w->regs_fd = -1;
	ivmc_store_release(&w->stash, 0);
}

/* Stop waiting for a channel: the handle stays on TCP for good. */
static void give_up(struct tcpw *w, int err)
{
	int s = ivmc_load_once(&w->state);

	if (s != W_PENDING && s != W_UNSEEN)
		return;
	if (w->registered) {
		hash_del(w);
		w->registered = false;
	}
	unstash(w);
	ivmc_store_release(&w->state, err);
}

static void send_unreg(uint64_t token, uint64_t tx, uint64_t rx)
{
	struct ctl_unreg m = { 0 };

	if (!G.cli)
		return;
	ctl_hdr_init(&m.h, CTL_UNREG, 0);
	m.token = token;
	m.bytes_tx = tx;
	m.bytes_rx = rx;
	(void)ctl_send(G.cli, &m, NULL, 0);
}

static void daemon_lost(void)
{
	ctl_close(G.cli);
	G.cli = NULL;
	G.err = -ECONNREFUSED;
	for (struct tcpw *w = G.all.next; w != &G.all; w = w->next)
		if (w->registered)
			give_up(w, -ECONNREFUSED);
	G.retry_ms = mono_ms() + env_ul("IVMC_CTL_RETRY_MS", 1000);
}

static void on_chan(const struct ctl_chan *m, const int *fds)
{
	struct tcpw *w = hash_find(m->token);

	if (!w || ivmc_load_once(&w->state) != W_PENDING ||
	    ivmc_load_once(&w->stash) || m->side > 1) {
		close(fds[0]);
		close(fds[1]);
		return;
	}
	w->region_fd = fds[0];
	w->bell_fd = fds[1];
	w->regs_fd = -1;
	w->mem_off = w->mem_size = 0;
	w->side = m->side;
	ivmc_store_release(&w->stash, 1);
}

static void mail_hook(void);

/* A channel in memory shared with a peer VM (ivmcd --guest): the offset
 * and size are checked by chan_open_mem() against the header found
 * there, which the peer may have written. */
static void on_chan_mem(const struct ctl_chan_mem *m, const int *fds)
{
	struct tcpw *w = hash_find(m->token);
	int nfds = m->bell_peer ? 3 : 1;

	if (!w || ivmc_load_once(&w->state) != W_PENDING ||
	    ivmc_load_once(&w->stash) || m->side > 1 || !m->size) {
		for (int i = 0; i < nfds; i++)
			close(fds[i]);
		return;
	}
	w->region_fd = fds[0];
	w->bell_fd = m->bell_peer ? fds[1] : -1;
	w->regs_fd = m->bell_peer ? fds[2] : -1;
	w->bell_peer = m->bell_peer;
	w->bell_vec = m->bell_vec;
	w->mem_off = m->offset;
	w->mem_size = m->size;
	chan_set_idle_hook(mail_hook);
	w->side = m->side;
	ivmc_store_release(&w->stash, 1);
}

/* The guest's ivmcd says the peer's VM is gone: what it published stays
 * readable, then the end. */
static void on_peer_gone(uint64_t token)
{
	struct tcpw *w = hash_find(token);
	struct chan *c = w ? ivmc_load_acquire(&w->h->c) : NULL;

	if (c)
		chan_peer_gone(c);
	else if (w)
		give_up(w, -ECONNRESET);
}

/* ivmcctl evacuate: back to TCP, for good. */
static void on_detach(uint64_t token)
{
	struct tcpw *w = hash_find(token);
	struct chan *c = w ? ivmc_load_acquire(&w->h->c) : NULL;

	if (!w)
		return;
	if (!c) {
		/* Its channel came but is not open yet: never open it (the
		 * other end sees our doorbell end close and stays on TCP). */
		send_unreg(w->token, 0, 0);
		give_up(w, -ECANCELED);
		return;
	}
	(void)chan_detach(c, CHAN_TX);
	(void)chan_detach(c, CHAN_RX);
	ivmc_store_release(&w->state, -ECANCELED); /* on TCP for good */
}

/* Take in everything the daemon sent. */
static void pump(void)
{
	union { struct ctl_hdr h; struct ctl_chan c; struct ctl_nochan n;
		struct ctl_detach d; struct ctl_chan_mem cm;
		struct ctl_peer_gone g; char b[CTL_MSG_MAX]; } m;

	if (G.mbox)
		ivmc_store_once(&G.seen, ivmc_load_acquire(&G.mbox->seq));
	for (int i = 0; G.cli && i < 1024; i++) {
		int fds[3], nfds = 3;
		int t = ctl_recv(G.cli, &m, fds, &nfds);
		struct tcpw *w;

		if (t == -EAGAIN)
			return;
		if (t == -EPROTO)
			continue;
		if (t < 0) {
			daemon_lost();
			return;
		}
		if (t == CTL_CHAN) {
			on_chan(&m.c, fds);
		} else if (t == CTL_NOCHAN) {
			w = hash_find(m.n.token);
			if (w)
				give_up(w, reason_errno(m.n.reason));
		} else if (t == CTL_DETACH) {
			on_detach(m.d.token);
		} else if (t == CTL_CHAN_MEM) {
			on_chan_mem(&m.cm, fds);
		} else if (t == CTL_PEER_GONE) {
			on_peer_gone(m.g.token);
		}
		for (int k = 0; t != CTL_CHAN && t != CTL_CHAN_MEM && k < nfds; k++)
			close(fds[k]);
	}
}

static struct ctl_client *ctl_get(void);
static struct ctl_client *ctl_get_within(unsigned int budget_us);

/* chan's idle hook: a waiter on a channel with no doorbell takes in what
 * the daemon said (one load when nothing did). */
static void mail_hook(void)
{
	if (G.mbox && ivmc_load_once(&G.mbox->seq) != ivmc_load_once(&G.seen) &&
	    !pthread_mutex_trylock(&G.mu)) {
		pump();
		pthread_mutex_unlock(&G.mu);
	}
}

static int send_reg(uint32_t type, int fd, uint64_t token, uint32_t ring,
		    bool retry)
{
	struct ctl_reg m = { 0 };
	int err;

	ctl_hdr_init(&m.h, type, 0);
	m.token = token;
	m.ring_size = ring;
	err = ctl_send(G.cli, &m, &fd, 1);
	if (err == -EPIPE || err == -ECONNRESET || err == -ENOTCONN) {
		if (!retry) {
			daemon_lost();
			return err;
		}
		/* The daemon went away (restarted?): one fresh try. */
		daemon_lost();
		G.retry_ms = 0;
		err = ctl_get() ? send_reg(type, fd, token, ring, false)
				: -ECONNREFUSED;
	}
	return err;
}

/* Start ivmcd in the background, detached from us (IVMC_AUTOSTART=1).
 * Two clients doing this at once start two; the second finds the first's
 * lock and exits. */
static void autostart(const char *path)
{
	const char *bin = ctl_getenv("IVMC_DAEMON");
	char *argv[] = { (char *)"ivmcd", (char *)"-d", (char *)"-s",
			 (char *)path, NULL };
	sigset_t none;
	pid_t pid;

	if (!bin || !*bin)
		bin = "ivmcd";
	/* _Fork (no atfork handlers: we hold G.mu) and the raw execve system
	 * call, not posix_spawn: under the preload the libc calls are
	 * interposed and must not treat our daemon as the application's
	 * child. The daemon gets none of the application's fds (a pipe it
	 * held would never see end of file) and /dev/null for the standard
	 * ones. */
	pid = _Fork();
	if (pid != 0) {
		if (pid > 0)
			G.spawned = pid; /* reaped by a later attempt (WNOHANG) */
		return;
	}
	{
		int nul = open("/dev/null", O_RDWR);

		if (nul >= 0) {
			(void)syscall(SYS_dup3, nul, 0, 0);
			(void)syscall(SYS_dup3, nul, 1, 0);
			(void)syscall(SYS_dup3, nul, 2, 0);
		}
		(void)syscall(SYS_close_range, 3u, ~0u, 0u);
		sigemptyset(&none);
		sigprocmask(SIG_SETMASK, &none, NULL);
		setsid();
		if (strchr(bin, '/')) {
			(void)syscall(SYS_execve, bin, argv, environ);
		} else {
			const char *pathv = getenv("PATH");
			char buf[4096];

			for (const char *p = pathv ? pathv : "/usr/sbin:/usr/bin";
			     p && *p;) {
				const char *e = strchr(p, ':');
				size_t n = e ? (size_t)(e - p) : strlen(p);

				if (n && (size_t)snprintf(buf, sizeof(buf), "%.*s/%s",
							  (int)n, p, bin) < sizeof(buf))
					(void)syscall(SYS_execve, buf, argv, environ);
				p = e ? e + 1 : NULL;
			}
		}
		_exit(127);
	}
}

static void atfork_prepare(void)
{
	pthread_mutex_lock(&G.mu);
	/* Neither process may attach a connection both now hold on TCP: the
	 * channel would be one process's alone. Attached ones are shared by
	 * chan/ (the endpoint page). */
	for (struct tcpw *w = G.all.next; w != &G.all; w = w->next) {
		if (ivmc_load_once(&w->state) == W_PENDING ||
		    ivmc_load_once(&w->state) == W_UNSEEN) {
			if (w->registered)
				send_unreg(w->token, 0, 0);
			give_up(w, -ECANCELED);
		}
	}
}

static void atfork_parent(void)
{
	pthread_mutex_unlock(&G.mu);
}

static void atfork_child(void)
{
	/* The daemon connection and the mailbox are the parent's: drop our
	 * copies (we are the only thread here). */
	ctl_close(G.cli);
	G.cli = NULL;
	ctl_close(G.opening);
	G.opening = NULL;
	if (G.mbox) {
		munmap(G.mbox, CTL_MAILBOX_SIZE);
		close(G.mbox_fd);
		G.mbox = NULL;
	}
	G.retry_ms = 0;
	for (struct lis *l = G.lis, *n; l; l = n) {
		n = l->next;
		free(l);
	}
	G.lis = NULL;
	pthread_mutex_unlock(&G.mu);
}

static void once_init(void)
{
	pthread_atfork(atfork_prepare, atfork_parent, atfork_child);
}

/* A fork child's first call (under G.mu): it may try the daemon at once,
 * whatever back-off its parent was in. */
static void new_process_retries_now(void)
{
	if (G.pid != getpid()) {
		G.pid = getpid();
		G.retry_ms = 0;
	}
}

/* The daemon connection, opening it if it is time to try. */
static struct ctl_client *ctl_get(void)
{
	return ctl_get_within((unsigned int)env_ul("IVMC_CTL_BUDGET_US", 2000));
}

/* The same, waiting at most budget_us for a welcome (0: not at all). */
static struct ctl_client *ctl_get_within(unsigned int budget_us)
{
	const char *path = ctl_socket_path();
	uint64_t now;
	int err;

	if (G.cli)
		return G.cli;
	now = mono_ms();
	if (G.opening) {
		/* The welcome was late for its caller: maybe it is here, or
		 * comes within our budget. */
		struct pollfd p = { ctl_fd(G.opening), POLLIN, 0 };
		struct timespec ts = { budget_us / 1000000,
				       (long)(budget_us % 1000000) * 1000 };

		/* One wait per opening: a stopped daemon costs one budget,
		 * not one per call. */
		if (budget_us && !G.opening_waited) {
			G.opening_waited = true;
			(void)ppoll(&p, 1, &ts, NULL);
		}
		err = ctl_open_finish(G.opening);
		if (err == -EAGAIN && now < G.opening_until)
			return NULL;
		if (err) {
			ctl_close(G.opening);
			G.opening = NULL;
			G.err = -ECONNREFUSED;
			G.retry_ms = now + env_ul("IVMC_CTL_RETRY_MS", 1000);
			return NULL;
		}
		G.cli = G.opening;
		G.opening = NULL;
		goto open;
	}
	if (G.spawned > 0 && waitpid(G.spawned, NULL, WNOHANG) != 0)
		G.spawned = 0;
	if (now < G.retry_ms)
		return NULL;
	if (!G.mbox && ctl_mailbox_create(&G.mbox_fd, &G.mbox)) {
		G.mbox = NULL;
		G.retry_ms = now + env_ul("IVMC_CTL_RETRY_MS", 1000);
		return NULL;
	}
	err = ctl_open(path, budget_us, G.mbox_fd, G.mbox, &G.cli);
	if (err == -EINPROGRESS) {
		/* Stopped, or only slow (a loaded machine): later calls take
		 * the welcome in if it comes within a second. */
		G.opening = G.cli;
		G.opening_waited = budget_us != 0; /* this call waited */
		G.cli = NULL;
		G.err = -ECONNREFUSED; /* as for no daemon: plain TCP */
		G.opening_until = now + env_ul("IVMC_CTL_RETRY_MS", 1000);
		return NULL;
	}
	if (err) {
		G.cli = NULL;
		G.err = -ECONNREFUSED;
		if ((err == -ENOENT || err == -ECONNREFUSED) &&
		    env_ul("IVMC_AUTOSTART", 0) == 1) {
			autostart(path);
			G.retry_ms = now + 20; /* it will be up soon */
		} else {
			G.retry_ms = now + env_ul("IVMC_CTL_RETRY_MS", 1000);
		}
		return NULL;
	}
open:
	G.err = 0;
	/* A new daemon (or the first): announce our listeners again. */
	for (struct lis *l = G.lis; l && G.cli; l = l->next)
		(void)send_reg(CTL_REG_LISTEN, l->fd, l->token, 0, false);
	return G.cli;
}

/* ---- attaching ------------------------------------------------------------ */

/* A memory channel's doorbell (CHAN_MEM with bell_peer): the bell on the
 * slot's eventfd (moved out of the application's way), ringing through
 * the device's registers. The register fd goes once mapped. */
static int mem_bell(struct tcpw *w)
{
	int err;

	if (!w->bell_peer)
		return 0;
	err = xport_eventfd_verify(w->bell_fd);
	if (!err)
		err = xport_ivshmem_bell_new(w->regs_fd, w->bell_peer,
					     w->bell_vec, &w->mxb);
	close(w->regs_fd);
	w->regs_fd = -1;
	if (err)
		return err;
	w->bell_fd = xport_fd_high(w->bell_fd);
	return chan_bell_new(w->bell_fd, xport_ivshmem_bell_ring, w->mxb,
			     &w->mbell);
}

/* After the channel (or instead of it): the bell and what it rings
 * through, and its eventfd (a CHAN's doorbell is the channel's by then). */
static void mem_bell_free(struct tcpw *w)
{
	chan_bell_free(w->mbell);
	xport_ivshmem_bell_free(w->mxb);
	w->mbell = NULL;
	w->mxb = NULL;
	if (w->bell_fd >= 0)
		close(w->bell_fd);
	w->bell_fd = -1;
}

/* Open the stashed channel if no call is on TCP in either direction. */
static void install(struct tcpw *w)
{
	struct chan *c;
	int err;

	pthread_mutex_lock(&G.mu);
	if (!ivmc_load_once(&w->stash) || ivmc_load_once(&w->state) != W_PENDING) {
		pthread_mutex_unlock(&G.mu);
		return;
	}
	if (pthread_mutex_trylock(&w->mu[CHAN_TX])) {
		pthread_mutex_unlock(&G.mu);
		return;
	}
	if (pthread_mutex_trylock(&w->mu[CHAN_RX])) {
		pthread_mutex_unlock(&w->mu[CHAN_TX]);
		pthread_mutex_unlock(&G.mu);
		return;
	}
	w->cfg.side = (int)w->side;
	w->cfg.tx_off0 = w->off[CHAN_TX];
	w->cfg.rx_off0 = w->off[CHAN_RX];
	w->cfg.nonblock = ivmc_load_once(&w->nonblock);
	if (w->mem_size) {
		err = mem_bell(w);
		w->cfg.bell = w->mbell;
		if (!err)
			err = chan_open_mem(&w->cfg, w->region_fd, w->mem_off,
					    w->mem_size, &c);
		if (err)
			mem_bell_free(w);
		w->cfg.bell = NULL;
	} else {
		err = chan_open(&w->cfg, w->region_fd, w->bell_fd, &c);
		if (!err)
			w->bell_fd = -1; /* the channel's now */
	}
	close(w->region_fd);
	if (err) {
		if (w->bell_fd >= 0)
			close(w->bell_fd);
		w->bell_fd = -1;
		ivmc_store_release(&w->stash, 0);
		give_up(w, err);
	} else {
		ivmc_store_release(&w->stash, 0);
		ivmc_store_release(&w->h->c, c);
		ivmc_store_release(&w->state, W_ATTACHED);
	}
	pthread_mutex_unlock(&w->mu[CHAN_RX]);
	pthread_mutex_unlock(&w->mu[CHAN_TX]);
	pthread_mutex_unlock(&G.mu);
}

static void recheck(struct tcpw *w);

struct chan *api_chan(struct ivmc_chan *h)
{
	struct chan *c = ivmc_load_acquire(&h->c);
	struct tcpw *w = h->w;

	if (!w)
		return c;
	if (c) {
		/* Attached: one load tells whether ivmcd said something
		 * (an evacuate) since the last look. */
		if (G.mbox && ivmc_load_once(&G.mbox->seq) != ivmc_load_once(&G.seen) &&
		    !pthread_mutex_trylock(&G.mu)) {
			pump();
			pthread_mutex_unlock(&G.mu);
		}
		return c;
	}
	if (ivmc_load_once(&w->state) == W_UNSEEN)
		recheck(w);
	if (ivmc_load_once(&w->state) != W_PENDING)
		return c;
	/* Uncontended, or someone else is taking the answers in already. */
	if (!pthread_mutex_trylock(&G.mu)) {
		if (G.cli && ctl_mail(G.cli))
			pump();
		pthread_mutex_unlock(&G.mu);
	}
	if (ivmc_load_acquire(&w->stash))
		install(w);
	return ivmc_load_acquire(&h->c);
}

/* The peer's address in IPv6 form; false if it has none. */
static bool peer_addr(int fd, uint8_t a[16])
{
	struct sockaddr_storage ss = { 0 };
	socklen_t len = sizeof(ss);

	memset(a, 0, 16);
	if (getpeername(fd, (struct sockaddr *)&ss, &len) < 0)
		return false;
	if (ss.ss_family == AF_INET) {
		a[10] = a[11] = 0xff;
		memcpy(a + 12, &((struct sockaddr_in *)&ss)->sin_addr, 4);
	} else if (ss.ss_family == AF_INET6) {
		memcpy(a, &((struct sockaddr_in6 *)&ss)->sin6_addr, 16);
	} else {
		return false;
	}
	return true;
}

/* Is a peer at a possibly co-located? Loopback always is; for the rest
 * the daemon's table says (a miss may be a namespace it has not seen
 * yet: W_UNSEEN looks again for a while). */
static bool worth_it(const uint8_t a[16])
{
	static const uint8_t lo6[16] = { [15] = 1 };

	if (!memcmp(a, lo6, 16) ||
	    (a[10] == 0xff && a[11] == 0xff && a[12] == 127 &&
	     !memcmp(a, (const uint8_t[10]){ 0 }, 10)))
		return true;
	return ctl_maybe_local(G.cli, a, 0);
}

/* Register w with the daemon (under G.mu). */
static void do_register(struct tcpw *w)
{
	int err = send_reg(CTL_REG_CONN, wfd(w), w->token,
			   (uint32_t)w->ring_wish, true);

	if (!err) {
		w->registered = true;
		hash_add(w);
		ivmc_store_release(&w->state, W_PENDING);
	} else if (err == -EAGAIN || err == -ENOBUFS) {
		/* A burst filled our control socket: the handle tries again
		 * on its next calls, as for a peer the table did not list. */
		if (ivmc_load_once(&w->state) != W_UNSEEN) {
			w->recheck_left = RECHECK_CALLS;
			w->recheck_until = mono_ms() + RECHECK_MS;
		}
		ivmc_store_release(&w->state, W_UNSEEN);
	} else {
		ivmc_store_release(&w->state, -ECONNREFUSED);
	}
}

/* W_UNSEEN: look at the table again (bounded in calls and time). */
static void recheck(struct tcpw *w)
{
	if (pthread_mutex_trylock(&G.mu))
		return;
	if (ivmc_load_once(&w->state) == W_UNSEEN) {
		if (!w->recheck_left || mono_ms() > w->recheck_until || !G.cli)
			ivmc_store_release(&w->state, -EADDRNOTAVAIL);
		else if (w->recheck_left--, worth_it(w->peer))
			do_register(w);
	}
	pthread_mutex_unlock(&G.mu);
}

IVMC_API int ivmc_tcp(int fd, const struct ivmc_opts *opts,
		      struct ivmc_chan **out)
{
	static const struct ivmc_opts defaults;
	const struct ivmc_opts *o = opts ? opts : &defaults;
	struct ivmc_chan *h;
	struct tcpw *w;
	int type;
	socklen_t len = sizeof(type);

	if (!out || fd < 0 || o->n_allow_uids || o->n_allow_gids ||
	    (o->flags & ~IVMC_NONBLOCK) || o->wait_mode < IVMC_WAIT_ADAPTIVE ||
	    o->wait_mode > IVMC_WAIT_SLEEP || o->spin_ns > IVMC_SPIN_MAX_NS ||
	    (o->ring_size && (o->ring_size < 4096 || o->ring_size > (1u << 30) ||
			      (o->ring_size & (o->ring_size - 1)))))
		return -EINVAL; /* ivmcd would refuse the registration */
	if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) < 0)
		return errno == ENOTSOCK ? -ENOTSOCK : -errno;
	h = calloc(1, sizeof(*h));
	w = calloc(1, sizeof(*w));
	if (!h || !w) {
		free(h);
		free(w);
		return -ENOMEM;
	}
	h->w = w;
	w->h = h;
	w->fd = fd;
	w->region_fd = w->bell_fd = w->regs_fd = -1;
	pthread_mutex_init(&w->mu[0], NULL);
	pthread_mutex_init(&w->mu[1], NULL);
	w->nonblock = (o->flags & IVMC_NONBLOCK) != 0;
	w->ring_wish = (int)o->ring_size;
	w->cfg = (struct chan_cfg){ .side_fd = fd, .wait_mode = o->wait_mode,
				    .spin_ns = o->spin_ns };
	pthread_once(&G.once, once_init);
	pthread_mutex_lock(&G.mu);
	new_process_retries_now();
	w->next = &G.all;
	w->prev = G.all.prev;
	G.all.prev->next = w;
	G.all.prev = w;
	w->token = ++G.next_token;
	/* A daemon restarted since our last word: reconnect once, now. */
	if (G.cli && ctl_mail(G.cli))
		pump();
	if (!ctl_get()) {
		w->state = G.err ? G.err : -ECONNREFUSED;
	} else if (!peer_addr(fd, w->peer)) {
		w->state = -ENOTCONN;
	} else if (!worth_it(w->peer)) {
		w->state = W_UNSEEN;
		w->recheck_left = RECHECK_CALLS;
		w->recheck_until = mono_ms() + RECHECK_MS;
	} else {
		do_register(w);
	}
	pthread_mutex_unlock(&G.mu);
	*out = h;
	return 0;
}

void tcp_set_offsets(struct ivmc_chan *h, uint64_t tx, uint64_t rx)
{
	struct tcpw *w = h->w;

	pthread_mutex_lock(&w->mu[CHAN_TX]);
	pthread_mutex_lock(&w->mu[CHAN_RX]);
	w->off[CHAN_TX] = tx;
	w->off[CHAN_RX] = rx;
	pthread_mutex_unlock(&w->mu[CHAN_RX]);
	pthread_mutex_unlock(&w->mu[CHAN_TX]);
}

void tcp_warmup(void)
{
	pthread_once(&G.once, once_init);
	if (pthread_mutex_trylock(&G.mu))
		return;
	new_process_retries_now();
	/* With the usual budget: ivmcd has taken in our hello (and learnt
	 * our namespace) before this socket connects, so the peer's side
	 * finds us in the table. */
	(void)ctl_get();
	pthread_mutex_unlock(&G.mu);
}

int tcp_colocated(int fd)
{
	uint8_t a[16];
	int yes;

	if (!peer_addr(fd, a))
		return 0;
	pthread_once(&G.once, once_init);
	pthread_mutex_lock(&G.mu);
	new_process_retries_now();
	if (G.cli && ctl_mail(G.cli))
		pump();
	if (!ctl_get())
		yes = G.opening ? -1 : 0; /* a slow welcome: look again */
	else
		yes = worth_it(a) ? 1 : -1;
	pthread_mutex_unlock(&G.mu);
	return yes;
}

IVMC_API int ivmc_tcp_state(struct ivmc_chan *h)
{
	int s;

	if (!h || !h->w)
		return -EINVAL;
	(void)api_chan(h);
	s = ivmc_load_acquire(&h->w->state);
	return s == W_UNSEEN ? 0 : s; /* still looking */
}

IVMC_API int ivmc_tcp_listen(int fd)
{
	struct lis *l = calloc(1, sizeof(*l));
	int err = 0;

	if (!l)
		return -ENOMEM;
	pthread_once(&G.once, once_init);
	pthread_mutex_lock(&G.mu);
	l->fd = fd;
	l->token = ++G.next_token;
	if (!ctl_get())
		err = G.err ? G.err : -ECONNREFUSED;
	else
		err = send_reg(CTL_REG_LISTEN, fd, l->token, 0, true);
	if (!err) {
		l->next = G.lis;
		G.lis = l;
	}
	pthread_mutex_unlock(&G.mu);
	if (err)
		free(l);
	return err;
}

IVMC_API int ivmc_tcp_unlisten(int fd)
{
	int err = -ENOENT;

	pthread_mutex_lock(&G.mu);
	for (struct lis **pp = &G.lis; *pp; pp = &(*pp)->next) {
		struct lis *l = *pp;

		if (l->fd != fd)
			continue;
		*pp = l->next;
		send_unreg(l->token, 0, 0);
		free(l);
		err = 0;
		break;
	}
	pthread_mutex_unlock(&G.mu);
	return err;
}

/* ---- calls on TCP alone ------------------------------------------------- */

static int wait_fd(int fd, short ev)
{
	struct pollfd p = { fd, ev, 0 };

	if (poll(&p, 1, -1) < 0)
		return -errno;
	return 0;
}

static bool nb_of(const struct tcpw *w, unsigned int flags)
{
	return (flags & IVMC_NONBLOCK) || ivmc_load_once(&w->nonblock);
}

ssize_t tcp_sendv(struct ivmc_chan *h, const struct iovec *iov, int iovcnt,
		  unsigned int flags)
{
	struct tcpw *w = h->w;
	bool nb = nb_of(w, flags);
	size_t done = 0;
	int err = 0;

	if (iovcnt < 0 || (iovcnt && !iov))
		return -EINVAL;
	pthread_mutex_lock(&w->mu[CHAN_TX]);
	if (ivmc_load_acquire(&h->c)) {
		/* Attached while we waited for the lock. */
		pthread_mutex_unlock(&w->mu[CHAN_TX]);
		return ivmc_sendv(h, iov, iovcnt, flags);
	}
	for (int i = 0; i < iovcnt && !err; i++) {
		size_t off = 0;

		while (off < iov[i].iov_len) {
			ssize_t n = send(wfd(w), (const char *)iov[i].iov_base + off,
					 iov[i].iov_len - off,
					 MSG_DONTWAIT | MSG_NOSIGNAL |
						 ((flags & IVMC_MORE) ? MSG_MORE : 0));

			if (n >= 0) {
				off += (size_t)n;
				done += (size_t)n;
				w->off[CHAN_TX] += (uint64_t)n;
				continue;
			}
			err = errno == EWOULDBLOCK ? -EAGAIN : -errno;
			if (err == -EINTR && !done)
				break;
			if (err == -EINTR)
				err = 0;
			else if (err == -EAGAIN && !nb)
				err = wait_fd(wfd(w), POLLOUT);
			if (err)
				break;
		}
	}
	pthread_mutex_unlock(&w->mu[CHAN_TX]);
	return done ? (ssize_t)done : err;
}

ssize_t tcp_recvv(struct ivmc_chan *h, const struct iovec *iov, int iovcnt,
		  unsigned int flags)
{
	struct tcpw *w = h->w;
	bool nb = nb_of(w, flags), all = flags & IVMC_WAITALL;
	size_t done = 0;
	int err = 0;

	if (iovcnt < 0 || (iovcnt && !iov))
		return -EINVAL;
	pthread_mutex_lock(&w->mu[CHAN_RX]);
	if (ivmc_load_acquire(&h->c)) {
		pthread_mutex_unlock(&w->mu[CHAN_RX]);
		return ivmc_recvv(h, iov, iovcnt, flags);
	}
	for (int i = 0; i < iovcnt && !err; i++) {
		size_t off = 0;

		while (off < iov[i].iov_len) {
			ssize_t n = recv(wfd(w), (char *)iov[i].iov_base + off,
					 iov[i].iov_len - off, MSG_DONTWAIT);

			if (n > 0) {
				off += (size_t)n;
				done += (size_t)n;
				w->off[CHAN_RX] += (uint64_t)n;
				continue;
			}
			if (n == 0) {
				err = 1; /* end of stream */
				break;
			}
			err = errno == EWOULDBLOCK ? -EAGAIN : -errno;
			/* A short read, as recv(2), or an interrupted one. */
			if ((err == -EAGAIN && done && !all) ||
			    (err == -EINTR && done))
				err = 1;
			else if (err == -EAGAIN && !nb)
				err = wait_fd(wfd(w), POLLIN);
			if (err)
				break;
		}
	}
	pthread_mutex_unlock(&w->mu[CHAN_RX]);
	if (done)
		return (ssize_t)done;
	return err == 1 ? 0 : err;
}

int tcp_fd(const struct ivmc_chan *h)
{
	return wfd(h->w);
}

void tcp_set_fd(struct ivmc_chan *h, int fd)
{
	struct tcpw *w = h->w;
	struct chan *c;

	pthread_mutex_lock(&G.mu); /* against install() reading cfg */
	atomic_store_explicit(&w->fd, fd, memory_order_relaxed);
	w->cfg.side_fd = fd;
	c = ivmc_load_acquire(&h->c);
	if (c)
		chan_set_side_fd(c, fd);
	pthread_mutex_unlock(&G.mu);
}

int tcp_poll_arm(struct ivmc_chan *h, short events)
{
	struct pollfd p = { wfd(h->w), events, 0 };

	if (poll(&p, 1, 0) < 0)
		return -errno;
	/* Hang-ups and errors wake both ways, as on a channel. */
	if (p.revents & (POLLHUP | POLLERR))
		return events;
	return p.revents & events;
}

void tcp_set_nonblock(struct ivmc_chan *h, int on)
{
	ivmc_store_once(&h->w->nonblock, on != 0);
}

int tcp_shutdown(struct ivmc_chan *h, int how)
{
	struct tcpw *w = h->w;
	struct chan *c;

	if (how != SHUT_RD && how != SHUT_WR && how != SHUT_RDWR)
		return -EINVAL;
	pthread_mutex_lock(&G.mu);
	c = ivmc_load_acquire(&h->c);
	if (!c && w->registered)
		send_unreg(w->token, w->off[CHAN_TX], w->off[CHAN_RX]);
	if (!c)
		give_up(w, -ECANCELED);
	pthread_mutex_unlock(&G.mu);
	if (c)
		return chan_shutdown(c, how);
	return shutdown(wfd(w), how) < 0 ? -errno : 0;
}

int tcp_close(struct ivmc_chan *h)
{
	struct tcpw *w = h->w;
	struct chan *c;
	struct chan_stats st = { 0 };
	int err = 0;

	pthread_mutex_lock(&G.mu);
	c = ivmc_load_acquire(&h->c);
	if (c)
		chan_stats(c, &st);
	if (w->registered) {
		send_unreg(w->token, c ? st.sent : w->off[CHAN_TX],
			   c ? st.received : w->off[CHAN_RX]);
		hash_del(w);
		w->registered = false;
	}
	unstash(w);
	w->prev->next = w->next;
	w->next->prev = w->prev;
	pthread_mutex_unlock(&G.mu);
	if (c) {
		/* Leave fd a coherent TCP stream: what we sent is on it or
		 * in the ring the peer drains before reading it; what we
		 * did not read is given back, to come again on fd before
		 * anything newer. Only if the peer left the ring at the
		 * same moment (its own close) are its last ring bytes lost
		 * to a reader of fd. */
		(void)chan_detach(c, CHAN_TX);
		if (chan_rewind(c) == -EBUSY)
			err = -ECONNABORTED;
		(void)chan_settle(c);
		chan_close(c);
		mem_bell_free(w);
	}
	pthread_mutex_destroy(&w->mu[0]);
	pthread_mutex_destroy(&w->mu[1]);
	free(w);
	return err;
}

void tcp_stats(const struct ivmc_chan *h, struct ivmc_stats *st)
{
	struct tcpw *w = h->w;

	st->bytes_sent = w->off[CHAN_TX];
	st->bytes_received = w->off[CHAN_RX];
	st->tcp_state = ivmc_load_acquire(&w->state);
	if (st->tcp_state == W_UNSEEN)
		st->tcp_state = 0; /* as ivmc_tcp_state(): still looking */
}
