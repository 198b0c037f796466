/* SPDX-License-Identifier: MIT */
/*
 * Description: readiness for the preload: poll, ppoll, select, pselect and
 * epoll over fds some of which carry a channel. An fd on the channel is
 * readable when its ring has data (which the kernel cannot know) or when
 * its TCP socket is (end of stream, reset, bytes after a detach);
 * writable when its ring has space. So: the rings are looked at first, in
 * user space (no system call when one is ready); an idle one arms its
 * doorbell, and the sleep is in the kernel over the application's fds
 * and the doorbells beside them (DESIGN.md, preload). An fd still on TCP
 * alone is the kernel's business entirely.
 *
 * epoll keeps, per epoll fd, the members that carry a connection: their
 * events and data, and an active list — the members whose ring may be
 * ready (reported ready last time, just added, or their doorbell rang).
 * A member found idle leaves the list with its doorbell armed, so a busy
 * set costs nothing per idle connection and an idle set sleeps in the
 * kernel.
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../api/api.h"
#include "../ring/atomics.h"
#include "preload.h"

/* ---- one connection ---------------------------------------------------- */

short pl_ready(struct pl_conn *c, short events)
{
	short want = events & (POLLIN | POLLOUT);
	int r;

	if (!want || !pl_attached(c))
		return 0;
	r = api_poll_arm(c->h, (short)(want | POLLRDHUP));
	if (r < 0)
		return want; /* -EBUSY: a call is in progress; look again */
	pl_attached(c); /* a detach seen by the arm */
	return (short)r;
}

/* The same by shared memory alone: nothing armed, no system call. */
static short peek_ready(struct pl_conn *c, short events)
{
	short want = events & (POLLIN | POLLOUT);
	int r;

	if (!want || !pl_attached(c))
		return 0;
	r = api_poll_peek(c->h, (short)(want | POLLRDHUP));
	return r < 0 ? want : (short)r;
}

/* Spinning before a sleep: only where rings were busy a moment ago (an
 * idle application sleeps at once), for at most the spin budget, and
 * never while the CPUs are oversubscribed. */
#define BUSY_RECENT_NS 1000000 /* rings ready within the last ms */
#define KCHECK_NS      50000   /* look at the kernel at least this often */
#define KCHECK_STREAK  8       /* ... or every this many ring-only returns */

static bool may_spin(int64_t now, int64_t last_busy)
{
	return pl_spin_ns && now - last_busy < BUSY_RECENT_NS &&
	       chan_may_spin();
}

int pl_wait_fds(struct pl_conn *c, short events, struct pollfd *out)
{
	if (!c->attached) {
		out[0] = (struct pollfd){ pl_sock(c), events, 0 };
		return 1;
	}
	out[0] = (struct pollfd){ pl_sock(c),
				  (short)(POLLIN | POLLRDHUP |
					  (c->tx_ring ? 0 : (events & POLLOUT))),
				  0 };
	out[1] = (struct pollfd){ ivmc_fd(c->h), POLLIN, 0 };
	return 2;
}

/* ---- poll, ppoll, select, pselect -------------------------------------- */

static int64_t mono_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

#define STACK_FDS 64

int64_t pl_nodb_nap(int64_t last, int64_t waited)
{
	static int64_t cap, idle;
	int64_t c;

	if (!cap) {
		const char *e = getenv("IVMC_POLL_MAX_US");
		const char *i = getenv("IVMC_POLL_IDLE_US");
		long us = e ? strtol(e, NULL, 10) : 0;
		long ius = i ? strtol(i, NULL, 10) : 0;

		idle = (ius > 0 && ius <= 1000000 ? ius : 100000) * 1000;
		cap = (us > 0 && us <= 1000000 ? us : 1000) * 1000;
		if (idle < cap)
			idle = cap;
	}
	if (!last)
		return cap < PL_NODB_NAP0 ? cap : PL_NODB_NAP0;
	/* As chan's polling wait: up to an eighth of the wait so far. */
	c = waited / 8 > cap ? waited / 8 : cap;
	if (c > idle)
		c = idle;
	return last * 2 < c ? last * 2 : c;
}

static __thread int64_t t_last_busy, t_last_kcheck;
static __thread int t_streak;

/* Spin over the connections among fds until one is ready (true) or the
 * budget is spent; ring[] gets what was found. */
static bool spin_fds(const struct pollfd *fds, nfds_t n, short *ring)
{
	int64_t t0 = mono_ns(), t;

	do {
		for (int i = 0; i < 32; i++) {
			bool any = false;

			for (nfds_t j = 0; j < n; j++) {
				struct pl_conn *c = pl_peek(fds[j].fd);

				if (c && c->attached) {
					ring[j] = peek_ready(c, fds[j].events) &
						  (fds[j].events | POLLHUP |
						   POLLERR);
					any |= ring[j] != 0;
				}
			}
			if (any)
				return true;
			ivmc_cpu_relax();
		}
		t = mono_ns();
	} while (t - t0 < (int64_t)pl_spin_ns);
	return false;
}

/* The core of poll and ppoll. timeout_ns < 0: no limit. */
static int poll_core(struct pollfd *fds, nfds_t n, int64_t timeout_ns,
		     const sigset_t *mask)
{
	struct pollfd kst[STACK_FDS * 2];
	short rst[STACK_FDS];
	struct pollfd *k = kst;
	short *ring = rst;
	int64_t now = mono_ns();
	int64_t end = timeout_ns < 0 ? -1 : now + timeout_ns;
	int ret = -1;

	if (n > STACK_FDS) {
		k = malloc(n * 2 * sizeof(*k));
		ring = malloc(n * sizeof(*ring));
		if (!k || !ring) {
			free(k);
			free(ring);
			errno = ENOMEM;
			return -1;
		}
	}
	int64_t nap = 0, t_start = now;

	for (;;) {
		nfds_t nk = n;
		bool any = false, peeked = true, nodb = false, napping;
		int64_t nap_first = 0; /* between guests: nap this long first */
		struct timespec ts, *tp = NULL;
		int r = 0, count = 0;

		/* The rings first, by shared memory alone. */
		for (nfds_t i = 0; i < n; i++) {
			struct pl_conn *c = pl_peek(fds[i].fd);

			ring[i] = c ? peek_ready(c, fds[i].events) &
					      (fds[i].events | POLLHUP | POLLERR)
				    : 0;
			any |= ring[i] != 0;
		}
		if (!any && timeout_ns != 0 && may_spin(now, t_last_busy))
			any = spin_fds(fds, n, ring);
		if (!any) {
			/* About to sleep: arm every idle ring. */
			peeked = false;
			for (nfds_t i = 0; i < n; i++) {
				struct pl_conn *c = pl_peek(fds[i].fd);

				if (c) {
					ring[i] = pl_ready(c, fds[i].events) &
						  (fds[i].events | POLLHUP |
						   POLLERR);
					any |= ring[i] != 0;
				}
			}
		}
		now = mono_ns();
		if (any) {
			t_last_busy = now;
			/* Ready rings: the kernel only now and then. */
			if (now - t_last_kcheck < KCHECK_NS &&
			    ++t_streak < KCHECK_STREAK) {
				for (nfds_t i = 0; i < n; i++) {
					fds[i].revents = ring[i];
					count += ring[i] != 0;
				}
				ret = count;
				break;
			}
		}
		t_streak = 0;
		t_last_kcheck = now;
		for (nfds_t i = 0; i < n; i++) {
			struct pl_conn *c = pl_peek(fds[i].fd);

			k[i] = (struct pollfd){ fds[i].fd, fds[i].events, 0 };
			if (!c || !c->attached)
				continue;
			/* The socket for what only it can say; the ring
			 * answers for POLLOUT while we send on it. */
			if (c->tx_ring)
				k[i].events &= (short)~POLLOUT;
			if (!ring[i] && !peeked &&
			    (fds[i].events & (POLLIN | POLLOUT))) {
				int bell = ivmc_fd(c->h);

				if (bell >= 0) {
					int64_t f = (int64_t)api_nap_first_ns(c->h);

					k[nk++] = (struct pollfd){ bell, POLLIN, 0 };
					if (f > nap_first)
						nap_first = f;
				} else {
					nodb = true;
				}
			}
		}
		/* A ring with no doorbell (between VMs): look again after a
		 * nap, as chan's polling wait does; with one (an interrupt
		 * between guests, slow under emulation), nap so for the first
		 * nap_first ns of the wait. */
		napping = nodb || now - t_start < nap_first;
		if (any) {
			ts = (struct timespec){ 0, 0 };
			tp = &ts;
		} else if (end >= 0 || napping) {
			int64_t left = end >= 0 ? end - now : INT64_MAX;

			if (left < 0)
				left = 0;
			if (napping) {
				nap = pl_nodb_nap(nap, now - t_start);
				if (left > nap)
					left = nap;
			}
			ts.tv_sec = left / 1000000000;
			ts.tv_nsec = left % 1000000000;
			tp = &ts;
		}
		r = pl_real.ppoll(k, nk, tp, mask);
		if (r < 0 && !(errno == EINTR && any)) {
			ret = -1;
			break;
		}
		for (nfds_t i = 0; i < n; i++) {
			fds[i].revents = (short)((r > 0 ? k[i].revents : 0) |
						 ring[i]);
			if (fds[i].revents & POLLNVAL)
				fds[i].revents = POLLNVAL;
			count += fds[i].revents != 0;
		}
		if (count || any || (tp && !tp->tv_sec && !tp->tv_nsec) ||
		    (end >= 0 && mono_ns() >= end)) {
			ret = count;
			break;
		}
		/* Only doorbells rang: look at the rings again. */
		now = mono_ns();
	}
	if (k != kst) {
		free(k);
		free(ring);
	}
	return ret;
}

static bool any_conn(const struct pollfd *fds, nfds_t n)
{
	if (pl_unseen_live())
		for (nfds_t i = 0; i < n; i++)
			pl_unseen_poke(fds[i].fd);
	if (!atomic_load_explicit(&pl_nconns, memory_order_relaxed))
		return false;
	for (nfds_t i = 0; i < n; i++)
		if (pl_peek(fds[i].fd))
			return true;
	return false;
}

PL_API int poll(struct pollfd *fds, nfds_t n, int timeout)
{
	if (!pl_real.poll)
		pl_init();
	if (!any_conn(fds, n))
		return pl_real.poll(fds, n, timeout);
	return poll_core(fds, n, timeout < 0 ? -1 : (int64_t)timeout * 1000000,
			 NULL);
}

PL_API int __poll_chk(struct pollfd *fds, nfds_t n, int timeout, size_t len)
{
	if (n > len / sizeof(*fds))
		abort();
	return poll(fds, n, timeout);
}

PL_API int ppoll(struct pollfd *fds, nfds_t n, const struct timespec *ts,
		 const sigset_t *mask)
{
	if (!pl_real.ppoll)
		pl_init();
	if (!any_conn(fds, n))
		return pl_real.ppoll(fds, n, ts, mask);
	return poll_core(fds, n,
			 ts ? (int64_t)ts->tv_sec * 1000000000 + ts->tv_nsec : -1,
			 mask);
}

PL_API int __ppoll_chk(struct pollfd *fds, nfds_t n, const struct timespec *ts,
		       const sigset_t *mask, size_t len)
{
	if (n > len / sizeof(*fds))
		abort();
	return ppoll(fds, n, ts, mask);
}

#define SEL_IN	(POLLIN | POLLHUP | POLLERR)
#define SEL_OUT (POLLOUT | POLLERR)
#define SEL_EX	POLLPRI

/* select through poll_core when a set names a connection. */
static int select_core(int nfds, fd_set *rd, fd_set *wr, fd_set *ex,
		       int64_t timeout_ns, const sigset_t *mask, bool *done)
{
	struct pollfd st[STACK_FDS], *p = st;
	nfds_t n = 0;
	bool conn = false;
	int r, count = 0;

	*done = false;
	if (nfds <= 0 || nfds > FD_SETSIZE)
		return 0;
	if (pl_unseen_live())
		for (int fd = 0; fd < nfds; fd++)
			if ((rd && FD_ISSET(fd, rd)) || (wr && FD_ISSET(fd, wr)))
				pl_unseen_poke(fd);
	if (!atomic_load_explicit(&pl_nconns, memory_order_relaxed))
		return 0;
	for (int fd = 0; fd < nfds; fd++) {
		if ((rd && FD_ISSET(fd, rd)) || (wr && FD_ISSET(fd, wr)) ||
		    (ex && FD_ISSET(fd, ex))) {
			n++;
			conn |= pl_peek(fd) != NULL;
		}
	}
	if (!conn)
		return 0;
	if (n > STACK_FDS && !(p = malloc(n * sizeof(*p)))) {
		*done = true;
		errno = ENOMEM;
		return -1;
	}
	n = 0;
	for (int fd = 0; fd < nfds; fd++) {
		short ev = (short)(((rd && FD_ISSET(fd, rd)) ? POLLIN : 0) |
				   ((wr && FD_ISSET(fd, wr)) ? POLLOUT : 0) |
				   ((ex && FD_ISSET(fd, ex)) ? POLLPRI : 0));

		if (ev)
			p[n++] = (struct pollfd){ fd, ev, 0 };
	}
	r = poll_core(p, n, timeout_ns, mask);
	*done = true;
	if (r >= 0) {
		for (nfds_t i = 0; i < n; i++) {
			if (p[i].revents & POLLNVAL) {
				errno = EBADF;
				r = -1;
				break;
			}
		}
	}
	if (r >= 0) {
		for (nfds_t i = 0; i < n; i++) {
			int fd = p[i].fd;
			short re = p[i].revents;

			if (rd && FD_ISSET(fd, rd) && !(re & SEL_IN))
				FD_CLR(fd, rd);
			if (wr && FD_ISSET(fd, wr) && !(re & SEL_OUT))
				FD_CLR(fd, wr);
			if (ex && FD_ISSET(fd, ex) && !(re & SEL_EX))
				FD_CLR(fd, ex);
			count += (rd && FD_ISSET(fd, rd)) +
				 (wr && FD_ISSET(fd, wr)) +
				 (ex && FD_ISSET(fd, ex));
		}
		r = count;
	}
	if (p != st)
		free(p);
	return r;
}

PL_API int select(int nfds, fd_set *rd, fd_set *wr, fd_set *ex,
		  struct timeval *tv)
{
	int64_t t0, ns = tv ? (int64_t)tv->tv_sec * 1000000000 +
				      (int64_t)tv->tv_usec * 1000
			    : -1;
	bool done;
	int r;

	if (!pl_real.select)
		pl_init();
	t0 = tv ? mono_ns() : 0;
	r = select_core(nfds, rd, wr, ex, ns, NULL, &done);
	if (!done)
		return pl_real.select(nfds, rd, wr, ex, tv);
	if (tv) { /* Linux: the time not slept */
		int64_t left = ns - (mono_ns() - t0);

		if (left < 0 || r > 0)
			left = left < 0 ? 0 : left;
		tv->tv_sec = left / 1000000000;
		tv->tv_usec = (left % 1000000000) / 1000;
	}
	return r;
}

PL_API int pselect(int nfds, fd_set *rd, fd_set *wr, fd_set *ex,
		   const struct timespec *ts, const sigset_t *mask)
{
	bool done;
	int r;

	if (!pl_real.pselect)
		pl_init();
	r = select_core(nfds, rd, wr, ex,
			ts ? (int64_t)ts->tv_sec * 1000000000 + ts->tv_nsec : -1,
			mask, &done);
	if (!done)
		return pl_real.pselect(nfds, rd, wr, ex, ts, mask);
	return r;
}

/* ---- epoll --------------------------------------------------------------- */

#define TAG_MAGIC (0xa5c3ull << 48)
#define TAG_BELL  1ull
#define NHASH	  256u

struct member {
	struct member *hnext;		/* set hash, by address */
	struct member *fnext;		/* set hash, by fd */
	struct member *anext, *aprev;	/* active list */
	struct member *next, *prev;	/* all members */
	struct pl_conn *c;
	int fd, bell;			/* bell: doorbell registered, or -1 */
	uint32_t events;		/* as the application asked */
	epoll_data_t data;
	unsigned int gen;		/* c->gen when last synced */
	bool on_chan, active, off;	/* off: EPOLLONESHOT fired */
	bool ghost;			/* deleted; the kernel still has it */
	bool nodb;			/* on a ring with no doorbell */
	bool napf;			/* its bell is an interrupt between
					 * guests: nap first (chan's
					 * chan_nap_first_ns()) */
	uint32_t kev;			/* events the kernel has for fd */
	uint32_t et_seen;		/* EPOLLET: reported, not yet idle */
	unsigned int et_gen[2];		/* c->eagain[] when last reported */
};

/* An fd that may become a connection later (a connect in progress, a
 * peer not yet listed) registered as a plain fd: remembered, so that the
 * registration becomes a member when it is wrapped (pl_events_adopt()). */
struct prec {
	struct prec *next;
	int fd;
	uint32_t events;
	epoll_data_t data;
};

struct eset {
	struct eset *next;
	struct prec *pend;
	int epfd;
	pthread_mutex_t mu;
	struct member all, act;		/* list heads */
	struct member *hash[NHASH];
	struct member *fhash[NHASH];
	unsigned int gen;		/* pl_gen when last synced */
	int nmembers;
	int nnodb;			/* members with nodb */
	int nnapf;			/* members with napf */
	int64_t napf_ns;		/* the longest nap-first window seen */
	int64_t last_busy;		/* a ring was ready then (ns) */
	int64_t last_kcheck;		/* the kernel was asked then */
	int streak;			/* ring-only returns since */
};

static pthread_mutex_t sets_mu = PTHREAD_MUTEX_INITIALIZER;
static struct eset *sets;
static _Atomic int nsets;

static struct eset *set_find(int epfd)
{
	struct eset *s;

	if (!atomic_load_explicit(&nsets, memory_order_relaxed))
		return NULL;
	pthread_mutex_lock(&sets_mu);
	for (s = sets; s && s->epfd != epfd; s = s->next)
		;
	pthread_mutex_unlock(&sets_mu);
	return s;
}

static struct eset *set_get(int epfd)
{
	struct eset *s = set_find(epfd);

	if (s)
		return s;
	s = calloc(1, sizeof(*s));
	if (!s)
		return NULL;
	s->epfd = epfd;
	pl_mark_epfd(epfd);
	pthread_mutex_init(&s->mu, NULL);
	s->all.next = s->all.prev = &s->all;
	s->act.anext = s->act.aprev = &s->act;
	pthread_mutex_lock(&sets_mu);
	s->next = sets;
	sets = s;
	atomic_fetch_add(&nsets, 1);
	pthread_mutex_unlock(&sets_mu);
	return s;
}

static uint64_t tag_of(const struct member *m)
{
	return (uint64_t)(uintptr_t)m | TAG_MAGIC;
}

static unsigned int hash_ptr(const void *p)
{
	return (unsigned int)(((uintptr_t)p >> 4) * 2654435761u) % NHASH;
}

/* The member a kernel event's data names, or NULL (an application fd). */
static struct member *untag(struct eset *s, uint64_t u, bool *bell)
{
	struct member *m, *want;

	if ((u & (0xffffull << 48)) != TAG_MAGIC)
		return NULL;
	want = (struct member *)(uintptr_t)(u & ~(0xffffull << 48) & ~TAG_BELL);
	for (m = s->hash[hash_ptr(want)]; m && m != want; m = m->hnext)
		;
	if (m)
		*bell = u & TAG_BELL;
	return m;
}

static void act_add(struct eset *s, struct member *m)
{
	if (m->active)
		return;
	m->active = true;
	m->anext = &s->act;
	m->aprev = s->act.aprev;
	s->act.aprev->anext = m;
	s->act.aprev = m;
}

static void act_del(struct member *m)
{
	if (!m->active)
		return;
	m->active = false;
	m->aprev->anext = m->anext;
	m->anext->aprev = m->aprev;
}

/* What the kernel watches on the TCP socket for m. */
static uint32_t kernel_events(const struct member *m)
{
	uint32_t ev = m->events;

	if (m->on_chan && m->c->tx_ring)
		ev &= ~(uint32_t)EPOLLOUT; /* the ring says */
	return ev;
}

/* Register (or update) m's socket and doorbell in the kernel set. */
static int sync_member(struct eset *s, struct member *m, int op)
{
	struct epoll_event ev = { kernel_events(m), { .u64 = tag_of(m) } };
	int bell = m->on_chan && m->c->h ? ivmc_fd(m->c->h) : -1;

	/* An application that toggles EPOLLOUT on a connection on the ring
	 * (most do, per write) costs no system call. */
	if (op == EPOLL_CTL_ADD || ev.events != m->kev ||
	    (ev.events & EPOLLONESHOT)) {
		if (pl_real.epoll_ctl(s->epfd, op, m->fd, &ev) < 0)
			return -errno;
		m->kev = ev.events;
	}
	if (m->bell >= 0 && m->bell != bell) {
		pl_real.epoll_ctl(s->epfd, EPOLL_CTL_DEL, m->bell, NULL);
		m->bell = -1;
	}
	if (m->nodb != (m->on_chan && m->c->h && bell < 0)) {
		m->nodb = !m->nodb;
		s->nnodb += m->nodb ? 1 : -1;
	}
	{
		int64_t f = bell >= 0 ? (int64_t)api_nap_first_ns(m->c->h) : 0;

		if (m->napf != (f > 0)) {
			m->napf = f > 0;
			s->nnapf += m->napf ? 1 : -1;
		}
		if (f > s->napf_ns)
			s->napf_ns = f;
	}
	if (bell >= 0 && m->bell < 0) {
		/* Edge-triggered: a ring is news once; the doorbell is
		 * drained only when the member is next armed. */
		struct epoll_event bev = { EPOLLIN | EPOLLET,
					   { .u64 = tag_of(m) | TAG_BELL } };

		if (pl_real.epoll_ctl(s->epfd, EPOLL_CTL_ADD, bell, &bev) == 0)
			m->bell = bell;
	}
	return 0;
}

static void member_free(struct eset *s, struct member *m, bool kernel)
{
	struct member **pp = &s->hash[hash_ptr(m)];

	if (m->nodb)
		s->nnodb--;
	m->nodb = false;
	if (m->napf)
		s->nnapf--;
	m->napf = false;
	if (kernel) {
		pl_real.epoll_ctl(s->epfd, EPOLL_CTL_DEL, m->fd, NULL);
		if (m->bell >= 0)
			pl_real.epoll_ctl(s->epfd, EPOLL_CTL_DEL, m->bell, NULL);
	}
	while (*pp && *pp != m)
		pp = &(*pp)->hnext;
	if (*pp)
		*pp = m->hnext;
	pp = &s->fhash[(unsigned int)m->fd % NHASH];
	while (*pp && *pp != m)
		pp = &(*pp)->fnext;
	if (*pp)
		*pp = m->fnext;
	act_del(m);
	m->prev->next = m->next;
	m->next->prev = m->prev;
	s->nmembers--;
	atomic_fetch_sub(&m->c->nsets, 1);
	free(m);
}

static struct member *member_find(struct eset *s, int fd)
{
	struct member *m = s->fhash[(unsigned int)fd % NHASH];

	while (m && m->fd != fd)
		m = m->fnext;
	return m;
}

/* A connection attached, detached or was released since we last looked:
 * bring the kernel registrations up to date. Under s->mu. */
static void resync(struct eset *s)
{
	unsigned int g = atomic_load(&pl_gen);
	struct member *m, *n;

	if (g == s->gen)
		return;
	s->gen = g;
	for (m = s->all.next; m != &s->all; m = n) {
		n = m->next;
		if (m->ghost && (!m->c->h || pl_peek(m->fd) != m->c)) {
			member_free(s, m, true);
			continue;
		}
		if (m->ghost)
			continue;
		if (!m->c->h || pl_peek(m->fd) != m->c) {
			/* Plain TCP now: the kernel alone, with the
			 * application's own data. */
			struct epoll_event ev = { m->events, m->data };

			if (m->bell >= 0)
				pl_real.epoll_ctl(s->epfd, EPOLL_CTL_DEL, m->bell, NULL);
			m->bell = -1;
			if (!m->off)
				pl_real.epoll_ctl(s->epfd, EPOLL_CTL_MOD, m->fd, &ev);
			member_free(s, m, false);
			continue;
		}
		if (m->gen != atomic_load(&m->c->gen) ||
		    m->on_chan != pl_attached(m->c)) {
			m->gen = atomic_load(&m->c->gen);
			m->on_chan = m->c->attached;
			if (!m->off)
				sync_member(s, m, EPOLL_CTL_MOD);
			act_add(s, m);
		}
	}
}

/* A new member for connection c on fd, registered in the kernel with op
 * (EPOLL_CTL_ADD; EPOLL_CTL_MOD when the kernel already has fd plainly)
 * and linked in. Under s->mu. Returns 0 or -errno. */
static int member_add(struct eset *s, struct pl_conn *c, int fd,
		      uint32_t events, epoll_data_t data, int op)
{
	struct member *m = calloc(1, sizeof(*m));
	int err;

	if (!m)
		return -ENOMEM;
	m->c = c;
	m->fd = fd;
	m->bell = -1;
	m->events = events;
	m->data = data;
	m->on_chan = pl_attached(c);
	m->gen = atomic_load(&c->gen);
	m->kev = ~0u; /* not what the kernel has: sync_member() sets it */
	err = sync_member(s, m, op);
	if (err) {
		free(m);
		return err;
	}
	m->hnext = s->hash[hash_ptr(m)];
	s->hash[hash_ptr(m)] = m;
	m->fnext = s->fhash[(unsigned int)fd % NHASH];
	s->fhash[(unsigned int)fd % NHASH] = m;
	atomic_fetch_add(&c->nsets, 1);
	m->next = &s->all;
	m->prev = s->all.prev;
	s->all.prev->next = m;
	s->all.prev = m;
	s->nmembers++;
	act_add(s, m);
	return 0;
}

/* m takes ev's events and data, armed afresh (EPOLL_CTL_MOD, or an ADD
 * of a ghost). Under s->mu. Returns 0 or -errno. */
static int member_rearm(struct eset *s, struct member *m,
			const struct epoll_event *ev)
{
	int err;

	m->events = ev->events;
	m->data = ev->data;
	m->off = false;
	m->et_seen = 0;
	m->on_chan = pl_attached(m->c);
	err = sync_member(s, m, EPOLL_CTL_MOD);
	act_add(s, m);
	return err;
}

static struct prec **prec_find(struct eset *s, int fd)
{
	for (struct prec **pp = &s->pend; *pp; pp = &(*pp)->next)
		if ((*pp)->fd == fd)
			return pp;
	return NULL;
}

/* Forget fd's remembered registration, if any. Under s->mu. */
static void prec_drop(struct eset *s, int fd)
{
	struct prec **pp = prec_find(s, fd), *p;

	if (!pp)
		return;
	p = *pp;
	*pp = p->next;
	free(p);
}

/* epoll_ctl on an fd that is not a connection yet but may become one: as
 * asked, and remembered. */
static int ctl_pending(int epfd, int op, int fd, struct epoll_event *ev)
{
	int r = pl_real.epoll_ctl(epfd, op, fd, ev);
	struct eset *s;
	struct prec **pp, *p;

	if (r < 0 || !(s = set_get(epfd)))
		return r;
	pthread_mutex_lock(&s->mu);
	pp = prec_find(s, fd);
	if (op == EPOLL_CTL_DEL) {
		prec_drop(s, fd);
	} else if (ev) {
		p = pp ? *pp : calloc(1, sizeof(*p));
		if (p) {
			if (!pp) {
				p->next = s->pend;
				s->pend = p;
			}
			p->fd = fd;
			p->events = ev->events;
			p->data = ev->data;
		}
	}
	pthread_mutex_unlock(&s->mu);
	return r;
}

/* The fds of s registered before they could be wrapped: looked at again
 * (pl_unseen_poke(); a wrap adopts them into s). Not under s->mu, which
 * the adoption takes. At most POKE_MAX per call. */
#define POKE_MAX 64

static void poke_pending(struct eset *s)
{
	int fds[POKE_MAX], n = 0;

	if (!s || !pl_unseen_live())
		return;
	pthread_mutex_lock(&s->mu);
	for (struct prec *p = s->pend; p && n < POKE_MAX; p = p->next)
		fds[n++] = p->fd;
	pthread_mutex_unlock(&s->mu);
	for (int i = 0; i < n; i++)
		pl_unseen_poke(fds[i]);
}

void pl_events_adopt(int fd, struct pl_conn *c)
{
	if (!atomic_load_explicit(&nsets, memory_order_relaxed))
		return;
	pthread_mutex_lock(&sets_mu);
	for (struct eset *s = sets; s; s = s->next) {
		struct prec **pp;

		pthread_mutex_lock(&s->mu);
		pp = prec_find(s, fd);
		/* The kernel has the plain registration: replace it. */
		if (pp && !member_find(s, fd))
			(void)member_add(s, c, fd, (*pp)->events, (*pp)->data,
					 EPOLL_CTL_MOD);
		prec_drop(s, fd);
		pthread_mutex_unlock(&s->mu);
	}
	pthread_mutex_unlock(&sets_mu);
}

PL_API int epoll_ctl(int epfd, int op, int fd, struct epoll_event *ev)
{
	struct pl_conn *c;
	struct eset *s;
	struct member *m;
	int err = 0;

	if (!pl_real.epoll_ctl)
		pl_init();
	c = pl_conn(fd);
	if (!c && pl_may_wrap(fd))
		return ctl_pending(epfd, op, fd, ev);
	s = set_find(epfd);
	if (!c && (!s || !s->nmembers))
		return pl_real.epoll_ctl(epfd, op, fd, ev);
	if (!s && !(s = set_get(epfd)))
		return pl_real.epoll_ctl(epfd, op, fd, ev);
	pthread_mutex_lock(&s->mu);
	m = member_find(s, fd);
	if (!c || (m && m->c != c)) {
		/* Not (or no longer) ours: the kernel's, as asked. */
		if (m)
			member_free(s, m, m->ghost);
		pthread_mutex_unlock(&s->mu);
		return pl_real.epoll_ctl(epfd, op, fd, ev);
	}
	if (m && m->ghost && op == EPOLL_CTL_ADD && ev &&
	    !(ev->events & EPOLLEXCLUSIVE)) {
		/* Deleted a moment ago and back: the kernel never knew. */
		m->ghost = false;
		err = member_rearm(s, m, ev);
		goto out;
	}
	if (m && m->ghost) {
		member_free(s, m, true);
		m = NULL;
	}
	switch (op) {
	case EPOLL_CTL_ADD:
		if (m) {
			err = -EEXIST;
			break;
		}
		if (!ev) {
			err = -EFAULT;
			break;
		}
		err = member_add(s, c, fd, ev->events, ev->data, EPOLL_CTL_ADD);
		break;
	case EPOLL_CTL_MOD:
		if (!m) {
			err = -ENOENT;
			break;
		}
		if (!ev) {
			err = -EFAULT;
			break;
		}
		if (ev->events & EPOLLEXCLUSIVE) {
			err = -EINVAL;
			break;
		}
		err = member_rearm(s, m, ev);
		break;
	case EPOLL_CTL_DEL:
		if (!m) {
			err = -ENOENT;
			break;
		}
		/* Keep the kernel's registration until it reports something
		 * (then it goes) or the fd comes back (then it is reused). */
		m->ghost = true;
		act_del(m);
		break;
	default:
		err = -EINVAL;
	}
out:
	pthread_mutex_unlock(&s->mu);
	if (err) {
		errno = -err;
		return -1;
	}
	return 0;
}

/* Report m as ready with r (EPOLLET: only what is new since it was last
 * idle). Returns whether it went into out[k]. */
static bool report(struct member *m, short r, struct epoll_event *out)
{
	r &= (short)(m->events | EPOLLHUP | EPOLLERR);
	if (!r)
		return false;
	if (m->events & EPOLLET) {
		uint32_t fresh;
		unsigned int g0 = atomic_load_explicit(&m->c->eagain[0],
						       memory_order_relaxed);
		unsigned int g1 = atomic_load_explicit(&m->c->eagain[1],
						       memory_order_relaxed);

		/* The application read (wrote) until EAGAIN since: what is
		 * ready now is a new edge. */
		if (g0 != m->et_gen[0])
			m->et_seen &= ~(uint32_t)(EPOLLIN | EPOLLRDHUP);
		if (g1 != m->et_gen[1])
			m->et_seen &= ~(uint32_t)EPOLLOUT;
		m->et_gen[0] = g0;
		m->et_gen[1] = g1;
		fresh = (uint32_t)r & ~m->et_seen;
		m->et_seen |= (uint32_t)r;
		if (!fresh)
			return false;
		r = (short)fresh;
	}
	out->events = (uint32_t)r;
	out->data = m->data;
	if (m->events & EPOLLONESHOT) {
		m->off = true;
		act_del(m);
	}
	return true;
}

/* Look at the active members' rings; fill out (up to max) with those
 * ready. arm: arm the idle ones and take them off the list (before a
 * sleep); else look only (shared memory, no system call). Under s->mu. */
static int scan_active(struct eset *s, struct epoll_event *out, int max,
		       bool arm)
{
	struct member *m, *n;
	int k = 0;

	for (m = s->act.anext; m != &s->act && k < max; m = n) {
		short want, r;

		n = m->anext;
		if (m->off || !m->on_chan || m->ghost) {
			act_del(m);
			continue;
		}
		want = (short)(m->events & (EPOLLIN | EPOLLOUT));
		r = arm ? pl_ready(m->c, want) : peek_ready(m->c, want);
		if (!r) {
			m->et_seen = 0; /* seen idle: the next data is an edge */
			/* Armed: its doorbell brings it back. Not when another
			 * set holds the connection too: that set's look may
			 * drain the doorbell first, so this one keeps looking
			 * (and sleeps in short steps, epoll_core()). */
			if (arm && atomic_load_explicit(&m->c->nsets,
						       memory_order_relaxed) < 2)
				act_del(m);
			continue;
		}
		if (report(m, r, &out[k]))
			k++;
	}
	return k;
}

/* Spin over the active members until one is ready or the budget is
 * spent. Under s->mu (other threads' epoll_wait on this set wait). */
static int spin_active(struct eset *s, struct epoll_event *out, int max)
{
	int64_t t0 = mono_ns(), t;
	int k = 0;

	if (s->act.anext == &s->act)
		return 0;
	do {
		for (int i = 0; i < 32 && !k; i++) {
			k = scan_active(s, out, max, false);
			ivmc_cpu_relax();
		}
		t = mono_ns();
	} while (!k && t - t0 < (int64_t)pl_spin_ns);
	return k;
}

static int epoll_core(struct eset *s, struct epoll_event *evs, int max,
		      int timeout, const sigset_t *mask)
{
	struct epoll_event kev[64];
	int64_t now = mono_ns();
	int64_t end = timeout < 0 ? -1 : now + (int64_t)timeout * 1000000;
	int64_t t_start = now;
	int late = 0;

	for (;;) {
		int k, r, tmo;
		bool rang = false;

		pthread_mutex_lock(&s->mu);
		resync(s);
		k = scan_active(s, evs, max, false);
		if (!k && timeout && may_spin(now, s->last_busy))
			k = spin_active(s, evs, max);
		if (!k)
			k = scan_active(s, evs, max, true); /* arm, then sleep */
		now = mono_ns();
		if (k) {
			s->last_busy = now;
			/* Ready rings: the kernel only now and then. */
			if (k == max || (now - s->last_kcheck < KCHECK_NS &&
					 ++s->streak < KCHECK_STREAK)) {
				pthread_mutex_unlock(&s->mu);
				return k;
			}
		}
		s->streak = 0;
		s->last_kcheck = now;
		pthread_mutex_unlock(&s->mu);
		if (k) {
			tmo = 0;
		} else if (end < 0) {
			tmo = -1;
		} else {
			int64_t left = end - now;

			tmo = left <= 0 ? 0 : (int)((left + 999999) / 1000000);
		}
		/* Members still active after the arm are shared with another
		 * set (scan_active()): sleep in steps of a millisecond. */
		if (!k && tmo != 0 && s->act.anext != &s->act)
			tmo = 1;
		/* A ring with no doorbell (between VMs): a look every ms, or
		 * after an eighth of the wait so far, up to the idle cap; a
		 * bell between guests: so for the first napf_ns only. */
		if (!k && tmo != 0 &&
		    (s->nnodb || (s->nnapf && now - t_start < s->napf_ns))) {
			int64_t cap = pl_nodb_nap(INT64_MAX / 4, now - t_start);
			int ms = (int)(cap / 1000000) > 1 ? (int)(cap / 1000000) : 1;

			if (tmo < 0 || tmo > ms)
				tmo = ms;
		}
		r = pl_real.epoll_pwait(s->epfd, kev,
					max - k < 64 ? max - k : 64, tmo, mask);
		if (r < 0) {
			if (k)
				return k;
			return -1;
		}
		pthread_mutex_lock(&s->mu);
		for (int i = 0; i < r; i++) {
			bool bell = false;
			struct member *m = untag(s, kev[i].data.u64, &bell);
			int j;

			if (!m) {
				evs[k++] = kev[i];
				continue;
			}
			if (m->ghost) {
				member_free(s, m, true);
				continue;
			}
			if (bell) {
				act_add(s, m);
				rang = true;
				continue;
			}
			/* The socket's own events: merge with the ring's. */
			for (j = 0; j < k; j++)
				if (evs[j].data.u64 == m->data.u64)
					break;
			if (j < k) {
				evs[j].events |= kev[i].events;
			} else {
				evs[k].events = kev[i].events;
				evs[k].data = m->data;
				k++;
			}
			if (m->events & EPOLLONESHOT)
				m->off = true;
		}
		pthread_mutex_unlock(&s->mu);
		if (k)
			return k;
		now = mono_ns();
		if (end >= 0 && now >= end && (!rang || ++late > 1))
			return 0;
		/* A doorbell rang (or time is not up): look again. */
	}
}

PL_API int epoll_wait(int epfd, struct epoll_event *evs, int max, int timeout)
{
	struct eset *s;

	if (!pl_real.epoll_wait)
		pl_init();
	s = set_find(epfd);
	poke_pending(s);
	if (!s || !s->nmembers || max <= 0)
		return pl_real.epoll_wait(epfd, evs, max, timeout);
	return epoll_core(s, evs, max, timeout, NULL);
}

PL_API int epoll_pwait(int epfd, struct epoll_event *evs, int max, int timeout,
		       const sigset_t *mask)
{
	struct eset *s;

	if (!pl_real.epoll_pwait)
		pl_init();
	s = set_find(epfd);
	poke_pending(s);
	if (!s || !s->nmembers || max <= 0)
		return pl_real.epoll_pwait(epfd, evs, max, timeout, mask);
	return epoll_core(s, evs, max, timeout, mask);
}

void pl_events_forget_fd(int fd)
{
	if (!atomic_load_explicit(&nsets, memory_order_relaxed))
		return;
	pthread_mutex_lock(&sets_mu);
	for (struct eset *s = sets; s; s = s->next) {
		struct member *m;

		pthread_mutex_lock(&s->mu);
		m = member_find(s, fd);
		if (m) /* our duplicate keeps the socket: tell the kernel */
			member_free(s, m, true);
		prec_drop(s, fd);
		pthread_mutex_unlock(&s->mu);
	}
	pthread_mutex_unlock(&sets_mu);
}

void pl_events_close_epfd(int epfd)
{
	struct eset *s = NULL;

	if (!atomic_load_explicit(&nsets, memory_order_relaxed))
		return;
	pthread_mutex_lock(&sets_mu);
	for (struct eset **pp = &sets; *pp; pp = &(*pp)->next) {
		if ((*pp)->epfd == epfd) {
			s = *pp;
			*pp = s->next;
			atomic_fetch_sub(&nsets, 1);
			break;
		}
	}
	pthread_mutex_unlock(&sets_mu);
	if (!s)
		return;
	for (struct member *m = s->all.next, *n; m != &s->all; m = n) {
		n = m->next;
		free(m); /* the kernel set goes with its fd */
	}
	for (struct prec *p = s->pend, *n; p; p = n) {
		n = p->next;
		free(p);
	}
	pthread_mutex_destroy(&s->mu);
	free(s);
}
