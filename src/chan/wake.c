/* SPDX-License-Identifier: MIT */
/*
 * Description: the wake protocol. A waiter spins for a bounded, adaptive
 * time (never when it cannot have a core to itself), then sets its
 * needs-wakeup flag, fences, re-checks, and sleeps in poll() on the doorbell
 * (and the side stream), or on the bell its region's channels share (an
 * interrupt between VMs). The producer rings only when the flag asks for it.
 * Without either, a waiter polls.
 */
#include <fcntl.h>
#include <sched.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/sysinfo.h>
#include <time.h>
#include <unistd.h>

#include "../transport/transport.h"
#include "chan_impl.h"

#define SPIN_MIN_NS	  2000u	  /* floor of the adaptive budget */
#define SPIN_MAX_FACTOR	  8u	  /* ceiling: 8x the configured budget, */
#define SPIN_MAX_NS	  1000000u /* and never above IVMC_SPIN_MAX_NS */
#define SPIN_MODE_NS	  50000000u /* IVMC_WAIT_SPIN: re-check liveness */
#define OVER_PROBE_NS	  10000000u /* read the run queue at most this often */
#define OVER_HOLD_NS	  100000000u /* after a preempted spin, sleep only */
#define FOLLOW_MS	  200	  /* a follower re-checks at least this often */
#define FOLLOW_SIDE_MS	  5	  /* ... when it waits for side events */
#define KICK_NAP_MS	  50	  /* a poller with no kick set */
#define BELL_MAIL_MS	  1000	  /* a bell's poller with a side stream */
#define DRAIN_MAX	  64u	  /* an honest peer rings a byte or two;
				   * a flood is left in the socket */

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Process-wide view of whether spinning can pay: a spinner must never take
 * the core its peer (or anyone) needs. */
static _Atomic uint64_t over_until, next_probe;
static _Atomic int quota_checked, quota_short;

/* A cgroup v2 CPU quota below the number of CPUs: never spin. */
static void check_quota(void)
{
	char path[512], line[128];
	long long quota, period;
	FILE *f;

	if (atomic_exchange(&quota_checked, 1))
		return;
	f = fopen("/proc/self/cgroup", "re");
	if (!f)
		return;
	if (!fgets(line, sizeof(line), f) || sscanf(line, "0::%100s", line) != 1) {
		fclose(f);
		return;
	}
	fclose(f);
	snprintf(path, sizeof(path), "/sys/fs/cgroup%s/cpu.max", line);
	f = fopen(path, "re");
	if (!f)
		return;
	if (fscanf(f, "%lld %lld", &quota, &period) == 2 && period > 0 &&
	    quota < period * get_nprocs())
		quota_short = 1;
	fclose(f);
}

/* More runnable threads than CPUs right now (from /proc/loadavg)? */
static bool runqueue_full(void)
{
	char buf[128];
	int fd = open("/proc/loadavg", O_RDONLY | O_CLOEXEC);
	ssize_t n;
	int running = 0;
	const char *p;

	if (fd < 0)
		return false;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return false;
	buf[n] = 0;
	p = buf;
	for (int field = 0; field < 3 && p; field++) /* "l1 l5 l15 R/T ..." */
		p = strchr(p + 1, ' ');
	if (p)
		running = atoi(p + 1);
	return running > get_nprocs();
}

/* Two probes in a row must see the run queue over the CPUs: one sample
 * catches any kernel thread passing by and would stop spinning for nothing. */
static bool oversubscribed(uint64_t now)
{
	static _Atomic int full_probes;

	check_quota();
	if (quota_short || now < over_until)
		return true;
	if (now < next_probe)
		return false;
	next_probe = now + OVER_PROBE_NS;
	if (!runqueue_full()) {
		full_probes = 0;
		return false;
	}
	if (++full_probes < 2)
		return false;
	over_until = now + OVER_PROBE_NS;
	return true;
}

bool chan_may_spin(void)
{
	return !oversubscribed(now_ns());
}

/* On the ring (not the side stream) in direction d? */
static bool on_ring(const struct chan *c, enum chan_dir d)
{
	if (d == CHAN_RX)
		return c->ep->rx_mode == RX_RING;
	return !(c->ep->tx.pw & IVMC_PW_CLOSED);
}

/* What a waiter last saw, taken under its lock: it sleeps without the lock,
 * so it compares against this copy, never against the live endpoint. */
struct snap {
	uint64_t pw;	/* rx: producer word seen; tx: our producer word */
	uint32_t cons;	/* tx: consumer counter seen */
	bool ring;	/* on the ring (not the side stream) */
};

static struct snap snap_take(const struct chan *c, enum chan_dir d)
{
	const struct chan_ep *ep = c->ep;

	if (d == CHAN_RX)
		return (struct snap){ ep->rx_seen_pw, 0, on_ring(c, d) };
	return (struct snap){ ep->tx.pw, ep->tx.peer_cons, on_ring(c, d) };
}

/* Pure check, no system call: has anything the waiter cares about moved?
 * On the side stream only an epoch opening counts (poll() covers the rest);
 * a peer gone matters only on the ring (its side stream may live on).
 * Seq-cst loads: after the flag's seq-cst exchange (F2) they may not move
 * before it on any CPU (plain loads on x86). */
static bool changed(struct chan *c, enum chan_dir d, const struct snap *s)
{
	struct chan_ep *ep = c->ep;

	if (ivmc_load_once(&ep->poison))
		return true;
	if (!s->ring)
		return d == CHAN_RX && ivmc_load_sc(&c->rx.shm->prod) != s->pw;
	if (ivmc_load_once(&ep->flags) & EP_PEER_GONE)
		return true;
	if (d == CHAN_RX)
		return ivmc_load_sc(&c->rx.shm->prod) != s->pw ||
		       ivmc_load_sc(&c->rx.shm->fin);
	return ivmc_w_ctr(ivmc_load_sc(&c->tx.shm->cons)) != s->cons ||
	       ivmc_load_sc(&c->tx.shm->prod) != s->pw;
}

/* The CPU words of direction d: ours, and the peer's. */
static void cpu_words(struct chan *c, enum chan_dir d, _Atomic uint32_t **mine,
		      _Atomic uint32_t **peer)
{
	if (d == CHAN_RX) {
		*mine = &c->rx.shm->cons_cpu;
		*peer = &c->rx.shm->prod_cpu;
	} else {
		*mine = &c->tx.shm->prod_cpu;
		*peer = &c->tx.shm->cons_cpu;
	}
}

void chan_note_cpu(_Atomic uint32_t *word)
{
	int cpu = sched_getcpu(); /* rseq: a load, no system call */

	if (cpu >= 0 && ivmc_load_once(word) != (uint32_t)cpu + 1)
		ivmc_store_once(word, (uint32_t)cpu + 1);
}

/* Spinning while the peer waits for our own CPU only delays it. The peer's
 * word is a hint it could fake: at worst we sleep at once, or spin within
 * the budget as usual. */
static bool peer_on_my_cpu(struct chan *c, enum chan_dir d)
{
	_Atomic uint32_t *mine, *peer;
	int cpu = sched_getcpu();

	cpu_words(c, d, &mine, &peer);
	chan_note_cpu(mine);
	return cpu >= 0 && ivmc_load_once(peer) == (uint32_t)cpu + 1;
}

static uint32_t spin_budget(struct chan *c, enum chan_dir d, uint64_t now)
{
	if (c->wait_mode == CHAN_WAIT_SLEEP || !on_ring(c, d))
		return 0;
	/* Woken for nothing again and again (a flood): no spin either. */
	if (ivmc_load_once(&c->ep->noprogress) >= WAKE_NOPROGRESS_SLOW)
		return 0;
	/* Between VMs (no doorbell) CPU numbers name different CPUs. */
	if (c->doorbell >= 0 && peer_on_my_cpu(c, d))
		return 0;
	if (c->wait_mode == CHAN_WAIT_SPIN)
		return SPIN_MODE_NS;
	if (oversubscribed(now))
		return 0;
	return ivmc_load_once(&c->ep->spin_ns[d]);
}

static bool spin(struct chan *c, enum chan_dir d)
{
	struct snap sn = snap_take(c, d);
	uint64_t t0 = now_ns(), t;
	uint32_t budget = spin_budget(c, d, t0);

	if (!budget)
		return false;
	do {
		for (int i = 0; i < 64; i++) {
			if (changed(c, d, &sn)) {
				atomic_fetch_add(&c->ep->st_spin_hits, 1);
				return true;
			}
			ivmc_cpu_relax();
		}
		t = now_ns();
	} while (t - t0 < budget);
	/* Far past the budget: we were descheduled, the core is contended. */
	if (t - t0 > 2ull * budget + 50000)
		over_until = t + OVER_HOLD_NS;
	return false;
}

/* Learn from a sleep of slept ns: a short one means a longer spin would
 * have caught it; a long one means spinning only burns CPU. */
static void adapt(struct chan *c, enum chan_dir d, uint64_t slept)
{
	uint32_t b = ivmc_load_once(&c->ep->spin_ns[d]);
	uint32_t max = c->spin_default * SPIN_MAX_FACTOR;

	if (max > SPIN_MAX_NS)
		max = SPIN_MAX_NS;

	if (c->wait_mode != CHAN_WAIT_ADAPTIVE)
		return;
	if (slept <= max) {
		uint64_t nb = slept + slept / 2;

		b = (uint32_t)(nb > 2ull * b ? nb : 2ull * b);
	} else {
		b /= 2;
	}
	if (b < SPIN_MIN_NS)
		b = SPIN_MIN_NS;
	if (b > max)
		b = max;
	ivmc_store_once(&c->ep->spin_ns[d], b);
}

/*
 * wake_gen has two halves (checked in model/wake.pml). The high half counts
 * drains that took something, bumped by the poller while it still holds the
 * role: a waiter whose snapshot predates one must not poll (its ring may be
 * gone), it re-checks. The low half is bumped after the role is released, to
 * wake the followers so that one takes the role; a poller does not look at
 * it, or two waiters could hand the role back and forth for ever without
 * polling. (A carry from the low half only makes one poller re-check.)
 */
#define GEN_DRAIN (1u << 16)

static bool gen_drained_since(struct chan_ep *ep, uint32_t snap)
{
	return (ivmc_load_acquire(&ep->wake_gen) ^ snap) >> 16 != 0;
}

/* The poller took a ring (or a kick) out: still holding the role. */
static void drained(struct chan_ep *ep)
{
	atomic_fetch_add(&ep->wake_gen, GEN_DRAIN);
}

/* Sleep ns nanoseconds. Returns 0, or -EINTR. */
static int nap(uint64_t ns)
{
	struct timespec ts = { (time_t)(ns / 1000000000u),
			       (long)(ns % 1000000000u) };

	return nanosleep(&ts, NULL) < 0 && errno == EINTR ? -EINTR : 0;
}

/* A wake-up with nothing to show for it: the peer may be flooding us.
 * Nap once there were many in a row, poison after too many. */
static void no_progress(struct chan *c)
{
	uint32_t k = atomic_fetch_add(&c->ep->noprogress, 1);

	if (k >= WAKE_NOPROGRESS_MAX)
		chan_poison(c, -EPROTO);
	else if (k >= WAKE_NOPROGRESS_SLOW)
		(void)nap(WAKE_FLOOD_NAP_NS);
}

/* Only the poller drains (it holds poll_lock), so no waiter can lose a
 * ring between its re-check and its sleep: it sleeps on wake_gen, which the
 * poller bumps after every drain. Returns true if it stopped at DRAIN_MAX:
 * more may be waiting (and behind it, the peer's hang-up). */
static bool drain(struct chan *c)
{
	struct chan_ep *ep = c->ep;
	ssize_t n = xport_drain(c->doorbell, DRAIN_MAX);

	if (n == -EPIPE)
		atomic_fetch_or(&ep->flags, EP_PEER_GONE);
	if (n)
		drained(ep);
	if (n > 0)
		no_progress(c);
	return n == DRAIN_MAX;
}

/* Side stream events a waiter in direction d needs. */
static short side_events(struct chan *c, enum chan_dir d)
{
	if (!c->has_side)
		return 0;
	if (d == CHAN_TX)
		return on_ring(c, d) ? 0 : POLLOUT;
	if (on_ring(c, d) && chan_flag(c, EP_SIDE_EOF))
		return 0;
	return POLLIN | POLLRDHUP;
}

struct sleeper {
	struct pollfd pfd[3]; /* doorbell, side stream, kicks */
	int nfds;
	int side; /* index of the side stream in pfd, or -1 */
	int kick; /* this thread's kick set (the last in pfd), or -1 */
};

/*
 * Kicks: a local change (a shutdown, a switch) must end the sleep of this
 * end's poller, which may be another thread or a fork child. One eventfd
 * per process (fork children inherit it, as they share our ends) is written
 * for a kick. Each thread that sleeps as a poller watches it through an
 * epoll set of its own, edge-triggered: every write is then an event for
 * every such thread, and no poller can take one away from another (as a
 * read of a shared eventfd would). A kick for another end costs a poller a
 * spurious wake and a re-check; kicks are rare (a shutdown, a switch), and
 * sent only while the end has a poller. This costs a process one fd and
 * each sleeping thread one, where an eventfd per end cost one fd per
 * connection (issue 4: at most one extra fd per connection).
 */
static int kick_efd = -1;	 /* while the process has an end open */
static unsigned int kick_gen;	 /* bumped when the sets are all closed */
static pthread_once_t kick_once = PTHREAD_ONCE_INIT;
static pthread_key_t kick_key;
static bool kick_key_ok;
static pthread_mutex_t kick_mu = PTHREAD_MUTEX_INITIALIZER;
static int *kick_eps, kick_neps, kick_cap; /* every thread's set */
static __thread int t_kick_ep = -1;
static __thread unsigned int t_kick_gen;

/* A thread ends: its set goes (unless chan_kicks_idle() took it). */
static void kick_thread_exit(void *unused)
{
	(void)unused;
	pthread_mutex_lock(&kick_mu);
	if (t_kick_ep >= 0 && t_kick_gen == kick_gen) {
		for (int i = 0; i < kick_neps; i++)
			if (kick_eps[i] == t_kick_ep)
				kick_eps[i] = kick_eps[--kick_neps];
		close(t_kick_ep);
	}
	t_kick_ep = -1;
	pthread_mutex_unlock(&kick_mu);
}

static void kick_init(void)
{
	kick_key_ok = pthread_key_create(&kick_key, kick_thread_exit) == 0;
}

static void kick_close_all(void)
{
	for (int i = 0; i < kick_neps; i++)
		close(kick_eps[i]);
	kick_neps = 0;
	kick_gen++;
	t_kick_ep = -1;
}

void chan_kicks_busy(void)
{
	int fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);

	pthread_mutex_lock(&kick_mu);
	if (fd >= 0 && kick_efd < 0)
		atomic_store_explicit((_Atomic int *)&kick_efd,
				      xport_fd_high(fd), memory_order_relaxed);
	else if (fd >= 0)
		close(fd);
	pthread_mutex_unlock(&kick_mu);
}

void chan_kicks_idle(void)
{
	pthread_mutex_lock(&kick_mu);
	kick_close_all();
	if (kick_efd >= 0)
		close(kick_efd);
	atomic_store_explicit((_Atomic int *)&kick_efd, -1,
			      memory_order_relaxed);
	pthread_mutex_unlock(&kick_mu);
}

void chan_kicks_fork(int phase)
{
	if (phase < 0) {
		pthread_mutex_lock(&kick_mu);
		return;
	}
	/* The child has one thread, and every set it inherited is shared
	 * with a thread of the parent (an edge one takes the other misses):
	 * close them all. The eventfd it keeps: kicks cross fork, as our
	 * ends do. */
	if (phase > 0)
		kick_close_all();
	pthread_mutex_unlock(&kick_mu);
}

/* Register a new set: under kick_mu. */
static bool kick_keep(int ep)
{
	if (kick_neps == kick_cap) {
		int cap = kick_cap ? 2 * kick_cap : 16;
		int *n = realloc(kick_eps, (size_t)cap * sizeof(*n));

		if (!n)
			return false;
		kick_eps = n;
		kick_cap = cap;
	}
	kick_eps[kick_neps++] = ep;
	return true;
}

/* This thread's epoll set watching the kick eventfd; -1 if it cannot have
 * one (then a poller sleeps at most KICK_NAP_MS at a time). Only a thread
 * with an end open calls it, so chan_kicks_idle() cannot run meanwhile. */
static int kick_ep(void)
{
	struct epoll_event ev = { .events = EPOLLIN | EPOLLET };
	int ep = -1;

	if (t_kick_ep >= 0 && t_kick_gen == kick_gen)
		return t_kick_ep;
	pthread_once(&kick_once, kick_init);
	if (!kick_key_ok)
		return -1;
	pthread_mutex_lock(&kick_mu);
	if (kick_efd >= 0)
		ep = epoll_create1(EPOLL_CLOEXEC);
	if (ep >= 0)
		ep = xport_fd_high(ep);
	if (ep >= 0 && (epoll_ctl(ep, EPOLL_CTL_ADD, kick_efd, &ev) < 0 ||
			!kick_keep(ep))) {
		close(ep);
		ep = -1;
	}
	if (ep >= 0) {
		t_kick_ep = ep;
		t_kick_gen = kick_gen;
		(void)pthread_setspecific(kick_key, &t_kick_ep); /* non-NULL */
	}
	pthread_mutex_unlock(&kick_mu);
	return ep;
}

/* The kick edges this thread's set holds: taken, so it sleeps again. */
static void kick_take(int ep)
{
	struct epoll_event ev;

	while (epoll_wait(ep, &ev, 1, 0) > 0)
		;
}

/* The side stream events the waiters of this end registered
 * (ep->side_want holds them per direction, in its two halves). */
static short side_wanted(const struct chan_ep *ep)
{
	uint32_t want = ivmc_load_acquire(&ep->side_want);

	return (short)((want & 0xffff) | (want >> 16));
}

/* The poller's set: the doorbell, and the side stream for what any waiter
 * on this end registered. */
static void sleeper_init(struct chan *c, struct sleeper *s)
{
	short ev = side_wanted(c->ep);

	memset(s, 0, sizeof(*s));
	s->pfd[0].fd = -1;
	if (!chan_flag(c, EP_PEER_GONE))
		s->pfd[s->nfds++] = (struct pollfd){ c->doorbell, POLLIN, 0 };
	s->side = -1;
	if (ev) {
		s->side = s->nfds;
		s->pfd[s->nfds++] = (struct pollfd){ chan_side_fd(c), ev, 0 };
	}
	s->kick = kick_ep();
	if (s->kick >= 0)
		s->pfd[s->nfds++] = (struct pollfd){ s->kick, POLLIN, 0 };
}

/* Side readable while the ring is in use: end of file (note it, so it is
 * not polled again), or bytes the producer may only send after closing the
 * epoch. The poller holds no rx lock, so what it sees may be stale: such a
 * wake only counts against the no-progress limit, which stops a producer
 * that keeps the side readable to make us spin. */
static void side_poke(struct chan *c, const struct pollfd *p)
{
	char b;

	if (!p || !(p->revents & ~POLLOUT) || !on_ring(c, CHAN_RX))
		return;
	if (recv(p->fd, &b, 1, MSG_PEEK | MSG_DONTWAIT) == 0 ||
	    (p->revents & (POLLHUP | POLLERR)))
		atomic_fetch_or(&c->ep->flags, EP_SIDE_EOF);
	else
		no_progress(c);
}

/*
 * A channel without a doorbell has no hang-up to tell it that its peer is
 * gone: the side stream is the only sign the kernel gives (the peer
 * process's socket closes when it exits, however it dies). Gone: a reset
 * or error; a hang-up while we still send (the peer closed, not shut down);
 * a FIN before the peer's fin word (a live peer stores fin, R7, before it
 * shuts its side stream down for writing, whether its direction is on the
 * ring or not). A FIN after fin is a half-close, and the peer may still
 * read: noted (EP_SIDE_FIN), so that senders stop watching for it. p: the
 * side stream as polled (with POLLRDHUP asked for a FIN to show).
 */
static void side_peer_check(struct chan *c, const struct pollfd *p)
{
	short ev = p->revents;
	uint64_t fin;

	if (c->doorbell >= 0 || !(ev & (POLLERR | POLLHUP | POLLRDHUP)))
		return;
	/* A7': the peer's fin /then/ its FIN; pairs with R7 in shut_wr(). */
	fin = ivmc_load_acquire(&c->rx.shm->fin);
	if ((ev & POLLERR) || ((ev & POLLHUP) && !chan_flag(c, EP_SHUT_WR)) ||
	    !(fin & IVMC_FIN_SET))
		atomic_fetch_or(&c->ep->flags, EP_PEER_GONE);
	else
		atomic_fetch_or(&c->ep->flags, EP_SIDE_FIN);
}

/* What a sender on the ring of a channel without a doorbell watches the
 * side stream for (side_events() has nothing for it): the peer's FIN until
 * one came (POLLRDHUP), a reset or hang-up always (poll() reports those
 * unasked). Returns false if it need not watch. */
static bool peer_watch(struct chan *c, enum chan_dir d, short *ev)
{
	if (!c->has_side || c->doorbell >= 0 || d != CHAN_TX ||
	    !on_ring(c, d) || chan_flag(c, EP_PEER_GONE))
		return false;
	*ev = chan_flag(c, EP_SIDE_FIN) ? 0 : POLLRDHUP;
	return true;
}

static int futex_wait(_Atomic uint32_t *addr, uint32_t val, int ms)
{
	struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000 };

	/* Not FUTEX_PRIVATE: the endpoint page is shared with fork children. */
	if (syscall(SYS_futex, addr, FUTEX_WAIT, val, &ts, NULL, 0) < 0 &&
	    errno == EINTR)
		return -EINTR;
	return 0;
}

static void gen_bump(struct chan_ep *ep, uint32_t by)
{
	atomic_fetch_add(&ep->wake_gen, by);
	syscall(SYS_futex, &ep->wake_gen, FUTEX_WAKE, INT32_MAX, NULL, NULL, 0);
}

/* Every poller of the process (each thread's kick set) gets an edge. */
static void kick_write(void)
{
	static const uint64_t one = 1;

	/* A poller of ours made the eventfd before it slept (a poller in a
	 * fork child: before the fork, or it is not ours to write). */
	int fd = atomic_load_explicit((_Atomic int *)&kick_efd,
				      memory_order_relaxed);

	if (fd >= 0 && write(fd, &one, sizeof(one)) < 0)
		return; /* EAGAIN at 2^64 - 2 kicks: pollers have an edge */
}

/* Poison and kicks are events, as a drain is: a poller whose snapshot
 * predates one re-checks instead of polling. A bell's poller may sleep for
 * another channel of the region: only a kick reaches it (bell_wait()). */
void chan_wake_followers(struct chan *c)
{
	gen_bump(c->ep, GEN_DRAIN);
	if (c->bell) {
		ivmc_fence_full();
		kick_write();
	}
}

/* Bump first, then look for a poller: a poller takes the role, then reads
 * wake_gen before it sleeps (both sequentially consistent), so either it
 * sees the bump or we see it and write. The write comes after the bump, so
 * an edge the poller took before its re-check was not this kick's. A
 * bell's poller holds no role of this end: always write. */
void chan_kick(struct chan *c)
{
	gen_bump(c->ep, GEN_DRAIN);
	ivmc_fence_full();
	if (c->bell || atomic_load(&c->ep->poll_lock))
		kick_write();
}

/* The poller: sleeps in poll(), drains the doorbell, then bumps wake_gen so
 * that every follower re-checks (and one of them may take the role). */
static int lead(struct chan *c, uint32_t gen, int timeout_ms)
{
	struct chan_ep *ep = c->ep;
	struct sleeper s;
	bool nap_only = false;
	int r = 0;

	sleeper_init(c, &s);
	/* Without the doorbell (peer gone since the re-check) and the side
	 * stream, only a kick could end the sleep: re-check instead. Without
	 * a kick set, nap at most KICK_NAP_MS so a kick is late, not lost. */
	if (s.kick < 0 && (timeout_ms < 0 || timeout_ms > KICK_NAP_MS))
		timeout_ms = KICK_NAP_MS, nap_only = true;
	if (!gen_drained_since(ep, gen) &&
	    (s.pfd[0].fd == c->doorbell || s.side >= 0))
		r = poll(s.pfd, (nfds_t)s.nfds, timeout_ms);
	if (r < 0)
		r = errno == EINTR ? -EINTR : -errno;
	if (r > 0 && s.pfd[0].fd == c->doorbell && s.pfd[0].revents)
		(void)drain(c);
	if (r > 0 && s.kick >= 0 && s.pfd[s.nfds - 1].revents) {
		kick_take(s.kick);
		drained(ep); /* a kick is a ring from ourselves */
	}
	if (r > 0)
		side_poke(c, s.side >= 0 ? &s.pfd[s.side] : NULL);
	ep_unlock(&ep->poll_lock);
	/* Unlock /then/ bump: a follower woken by the bump can take the role. */
	gen_bump(ep, 1); /* a release: wakes followers */
	return r < 0 ? r : (r == 0 && timeout_ms >= 0 && !nap_only ? -ETIMEDOUT
								   : 0);
}

/* Followers sleep on wake_gen; with side events the poller may not be
 * polling for, or a poller that died, they look again after a while. */
static int follow(struct chan *c, uint32_t gen, short side, int timeout_ms)
{
	int ms = side ? FOLLOW_SIDE_MS : FOLLOW_MS;

	if (timeout_ms >= 0 && timeout_ms < ms)
		ms = timeout_ms;
	if (futex_wait(&c->ep->wake_gen, gen, ms) == -EINTR)
		return -EINTR;
	/* A poller killed in poll() holds the role for ever: the role guards
	 * no state, so free it and let the next waiter take it. */
	if (ivmc_load_acquire(&c->ep->wake_gen) == gen)
		ep_lock_reap(&c->ep->poll_lock);
	return 0;
}

static bool take_poller_role(struct chan_ep *ep)
{
	return ep_lock(&ep->poll_lock, true) == 0;
}

/*
 * Sleep without the direction's lock, as TCP sleeps without the socket
 * lock: a detach, an attach or another caller is never held up by a sleeper.
 * The needs-wakeup flag is changed under the lock only: every sleeper gives
 * it a new odd value (so the peer rings again), the last one out makes it
 * even. Called and returns with the lock held; -ECONNRESET if retaking it
 * found its holder dead (the channel is then poisoned, the lock ours).
 */
static int sleep_wait(struct chan *c, enum chan_dir d, int timeout_ms)
{
	struct chan_ep *ep = c->ep;
	bool rx = d == CHAN_RX;
	_Atomic uint32_t *lock = rx ? &ep->rx_lock : &ep->tx_lock;
	_Atomic uint32_t *flag = rx ? &c->rx.shm->cons_wait : &c->tx.shm->prod_wait;
	uint32_t *seq = rx ? &ep->rx_wait_seq : &ep->tx_wait_seq;
	uint32_t *sleepers = rx ? &ep->rx_sleepers : &ep->tx_sleepers;
	uint32_t gen = ivmc_load_acquire(&ep->wake_gen); /* before the re-check */
	uint32_t want = (uint32_t)side_events(c, d) << (rx ? 0 : 16);
	struct snap sn = snap_take(c, d);
	uint64_t t0 = now_ns();
	int r = 0, err;

	++*sleepers;
	ring_set_waiting(flag, seq, true); /* includes F2 */
	atomic_fetch_or(&ep->side_want, want);
	chan_unlock(c, lock);
	if (!changed(c, d, &sn)) {
		if (take_poller_role(ep))
			r = lead(c, gen, timeout_ms);
		else
			r = follow(c, gen, (short)want, timeout_ms);
		atomic_fetch_add(&ep->st_sleeps, 1);
	}
	err = chan_relock(c, lock);
	atomic_fetch_and(&ep->side_want, ~want);
	if (!--*sleepers)
		ring_set_waiting(flag, seq, false);
	adapt(c, d, now_ns() - t0);
	return err ? err : r;
}

/*
 * The wait of a channel without a doorbell (chan_open_mem(): between VMs
 * where the guest takes no interrupt): after the spin, sleep in nanosleep
 * for 10 us, then twice as long each time up to c->poll_max_ns, looking at
 * the ring in between; a wait that has lasted longer naps longer, up to an
 * eighth of the time it has waited and c->poll_idle_ns (IVMC_POLL_IDLE_US,
 * 100 ms): a message never waits more than about an eighth of the silence
 * before it (plus the timer slack, 50 us by default), a busy connection
 * answers within the first cap, and an idle one looks ten times a second.
 * docs/vm.md has the trade-off measured. Sleeps without the direction's lock, as
 * sleep_wait() does; a kick or poison (wake_gen) ends it too. With a side
 * stream each nap is a ppoll() on it for what a poller would poll it for
 * (side_events()): its data, space or end wakes the waiter at once, and is
 * taken as lead() takes it. A waiter for data also moves what a rewind of
 * our sending gave back, and pays a SHUT_WR owed (sw_tx_rescue()): the
 * consumer's doorbell ring that asks for them (rewind_rx(), fin_seen())
 * has no doorbell here.
 */
#define POLL_NAP_MIN_NS 10000u

/* The nap after one of ns, having waited waited ns: twice as long, up to
 * busy_cap, or up to an eighth of waited if that is more, never above
 * idle_cap. */
static uint64_t poll_next_nap(uint64_t ns, uint64_t waited, uint64_t busy_cap,
			      uint64_t idle_cap)
{
	uint64_t cap = waited / 8 > busy_cap ? waited / 8 : busy_cap;

	if (cap > idle_cap)
		cap = idle_cap;
	return ns * 2 < cap ? ns * 2 : cap;
}

/* Nap ns, or less if the side stream (*side: fd and events, taken under
 * the lock) has what the waiter needs, or shows the peer gone (watch: it
 * is watched for that alone). Returns 0 (slept), 1 (the side stream woke
 * us: re-check), -EINTR or -errno. */
static int poll_nap(struct chan *c, const struct pollfd *side, bool watch,
		    uint64_t ns)
{
	struct timespec ts = { (time_t)(ns / 1000000000u),
			       (long)(ns % 1000000000u) };
	struct pollfd p = *side;
	int r;

	if (!p.events && !watch)
		return nap(ns);
	r = ppoll(&p, 1, &ts, NULL);
	if (r < 0)
		return errno == EINTR ? -EINTR : -errno;
	if (!r)
		return 0;
	/* A side fd closed under a sender that only watches it: its calls
	 * do not use it, so nap rather than spin on POLLNVAL. */
	if (watch && (p.revents & POLLNVAL))
		return nap(ns);
	side_poke(c, &p);
	side_peer_check(c, &p);
	return 1;
}

static void (*_Atomic idle_hook)(void);

void chan_set_idle_hook(void (*fn)(void))
{
	atomic_store_explicit(&idle_hook, fn, memory_order_relaxed);
}

static void run_idle_hook(void)
{
	void (*fn)(void) = atomic_load_explicit(&idle_hook, memory_order_relaxed);

	if (fn)
		fn(); /* may end this wait: chan_peer_gone() */
}

/* As poll_wait(), for at most timeout_ns (UINT64_MAX: no limit). */
static int poll_wait_ns(struct chan *c, enum chan_dir d, uint64_t timeout_ns)
{
	struct chan_ep *ep = c->ep;
	_Atomic uint32_t *lock = d == CHAN_RX ? &ep->rx_lock : &ep->tx_lock;
	uint32_t gen = ivmc_load_acquire(&ep->wake_gen);
	struct snap sn = snap_take(c, d);
	uint64_t t0 = now_ns(), t = t0, end = UINT64_MAX;
	uint64_t ns = POLL_NAP_MIN_NS < c->poll_max_ns ? POLL_NAP_MIN_NS
						       : c->poll_max_ns;
	uint64_t slept = 0; /* naps so far: no clock read when idle */
	/* Under the lock, as sleep_wait() takes its side events: they read
	 * the direction's state. */
	struct pollfd side = { chan_side_fd(c), side_events(c, d), 0 };
	bool watch = !side.events && peer_watch(c, d, &side.events);
	int r = 0, err;

	if (timeout_ns != UINT64_MAX)
		end = t0 + timeout_ns;
	chan_unlock(c, lock);
	while (!changed(c, d, &sn) && ivmc_load_acquire(&ep->wake_gen) == gen) {
		if (t >= end) {
			r = -ETIMEDOUT;
			break;
		}
		r = poll_nap(c, &side, watch, ns < end - t ? ns : end - t);
		if (r)
			break;
		if (d == CHAN_RX)
			sw_tx_rescue(c);
		run_idle_hook();
		slept += ns;
		ns = poll_next_nap(ns, slept, c->poll_max_ns, c->poll_idle_ns);
		if (end != UINT64_MAX)
			t = now_ns(); /* idle and no timeout: no clock read */
	}
	atomic_fetch_add(&ep->st_sleeps, 1);
	err = chan_relock(c, lock);
	adapt(c, d, now_ns() - t0);
	return err ? err : r > 0 ? 0 : r;
}

static int poll_wait(struct chan *c, enum chan_dir d, int timeout_ms)
{
	return poll_wait_ns(c, d, timeout_ms < 0 ? UINT64_MAX
			    : (uint64_t)timeout_ms * 1000000u);
}

/*
 * The wait of a channel whose doorbell is an interrupt shared by every
 * channel of its region (chan_cfg.bell: an ivshmem device's MSI-X vector on
 * an eventfd), with sleep_wait()'s protocol: raise the needs-wakeup flag
 * (F2), re-check, sleep; the peer rings only for a raised flag. One waiter
 * of the region, whatever channel it waits for, holds the bell's poll role
 * and sleeps in poll() on the fd and its kick set. Leaving, it bumps the
 * bell's generation, which wakes the others (futex): after an interrupt,
 * every waiter of every channel of the region re-checks. The generation is
 * read before the re-check and has wake_gen's two halves: a ring taken out
 * of the fd bumps the high half while the taker holds the role
 * (bell_take()); every leaver bumps the low half after releasing it. A
 * waiter that takes the role polls only if the high half is still its
 * snapshot: then any interrupt after its re-check is still in the fd; else
 * it re-checks. (Bumping one counter after the release lost a wake-up:
 * model/bell.pml, which checks this scheme.) Shared, so a waiter may wake
 * for another channel's ring (spurious, re-checked); none is lost.
 */
static void bell_bump(struct chan_bell *b)
{
	atomic_fetch_add(&b->gen, 1);
	/* Seq-cst both: a follower counts itself, then sleeps only on the
	 * old generation (Dekker: it sees the bump, or we see it). */
	if (atomic_load(&b->followers))
		syscall(SYS_futex, &b->gen, FUTEX_WAKE, INT32_MAX, NULL, NULL,
			0);
}

/* Read the eventfd empty, holding the role. A ring taken bumps the high
 * half of gen at once (GEN_DRAIN, as wake_gen's; model/bell.pml): a waiter
 * whose snapshot predates it must not poll, its ring may be the one taken.
 * Returns true if it held a ring. */
static bool bell_take(struct chan_bell *b)
{
	uint64_t v;

	if (read(b->fd, &v, sizeof(v)) != (ssize_t)sizeof(v))
		return false;
	atomic_fetch_add(&b->gen, GEN_DRAIN);
	return true;
}

/* Has a holder of the role taken a ring since snapshot snap? */
static bool bell_taken_since(struct chan_bell *b, uint32_t snap)
{
	return (ivmc_load_acquire(&b->gen) ^ snap) >> 16 != 0;
}

/* The poll role's look at the side stream of a bell's channel (chan_open_mem()
 * with a side stream, between VMs): what its waiters registered
 * (side_events()), or, for a sender on the ring, the peer's end (watch:
 * peer_watch()'s events, taken by the caller under its lock). Returns
 * false if there is nothing to watch. */
static bool bell_side(struct chan *c, short watch, struct pollfd *p)
{
	short ev = side_wanted(c->ep);

	if (!c->has_side || (!ev && watch < 0))
		return false;
	*p = (struct pollfd){ chan_side_fd(c), ev ? ev : watch, 0 };
	return true;
}

static int bell_lead(struct chan *c, short watch, uint32_t gen,
		     int timeout_ms)
{
	struct chan_bell *b = c->bell;
	struct pollfd p[3] = { { b->fd, POLLIN, 0 }, { kick_ep(), POLLIN, 0 },
			       { -1, 0, 0 } };
	bool nap_only = false, side = bell_side(c, watch, &p[2]);
	int r = 0;

	/* Without a kick set, nap at most KICK_NAP_MS: a kick is late, not
	 * lost. (poll() skips a negative fd.) With a side stream (between
	 * VMs) the daemon's mail has no fd here: look every BELL_MAIL_MS. */
	if (p[1].fd < 0 && (timeout_ms < 0 || timeout_ms > KICK_NAP_MS))
		timeout_ms = KICK_NAP_MS, nap_only = true;
	if (c->has_side && (timeout_ms < 0 || timeout_ms > BELL_MAIL_MS))
		timeout_ms = BELL_MAIL_MS, nap_only = true;
	/* Only a ring taken since the snapshot stops the poll (the low half
	 * is every leaver's bump: two waiters must not hand the role back
	 * and forth without polling). */
	if (!bell_taken_since(b, gen))
		r = poll(p, side ? 3 : 2, timeout_ms);
	if (r < 0)
		r = errno == EINTR ? -EINTR : -errno;
	if (r > 0 && (p[0].revents & POLLNVAL))
		r = chan_poison(c, -EBADF); /* the bell's owner closed it */
	else if (r > 0 && p[0].revents)
		(void)bell_take(b);
	if (r > 0 && p[1].revents)
		kick_take(p[1].fd);
	if (r > 0 && side && p[2].revents && !(p[2].revents & POLLNVAL)) {
		side_poke(c, &p[2]);
		side_peer_check(c, &p[2]);
	}
	ep_unlock(&b->poll_lock);
	bell_bump(b);
	return r < 0 ? r : (r == 0 && timeout_ms >= 0 && !nap_only ? -ETIMEDOUT
								   : 0);
}

/* As follow(), on the bell's generation. */
static int bell_follow(struct chan_bell *b, uint32_t gen, short side,
		       int timeout_ms)
{
	int ms = side ? FOLLOW_SIDE_MS : FOLLOW_MS, r;

	if (timeout_ms >= 0 && timeout_ms < ms)
		ms = timeout_ms;
	atomic_fetch_add(&b->followers, 1);
	r = futex_wait(&b->gen, gen, ms);
	atomic_fetch_sub(&b->followers, 1);
	if (r == -EINTR)
		return r;
	if (ivmc_load_acquire(&b->gen) == gen)
		ep_lock_reap(&b->poll_lock);
	return 0;
}

static int bell_wait(struct chan *c, enum chan_dir d, int timeout_ms)
{
	struct chan_ep *ep = c->ep;
	struct chan_bell *b = c->bell;
	bool rx = d == CHAN_RX;
	_Atomic uint32_t *lock = rx ? &ep->rx_lock : &ep->tx_lock;
	_Atomic uint32_t *flag = rx ? &c->rx.shm->cons_wait : &c->tx.shm->prod_wait;
	uint32_t *seq = rx ? &ep->rx_wait_seq : &ep->tx_wait_seq;
	uint32_t *sleepers = rx ? &ep->rx_sleepers : &ep->tx_sleepers;
	/* Both before the re-check: a ring, a kick or poison after it moves
	 * one of them. */
	uint32_t bgen = ivmc_load_acquire(&b->gen);
	uint32_t egen = ivmc_load_acquire(&ep->wake_gen);
	/* Under the lock, as sleep_wait() takes them: they read the
	 * direction's state. */
	uint32_t want = (uint32_t)side_events(c, d) << (rx ? 0 : 16);
	short watch = -1; /* none: a sender on the ring watches the peer */
	struct snap sn = snap_take(c, d);
	uint64_t t0 = now_ns();
	int r = 0, err;

	if (!want && !peer_watch(c, d, &watch))
		watch = -1;
	++*sleepers;
	ring_set_waiting(flag, seq, true); /* includes F2 */
	atomic_fetch_or(&ep->side_want, want);
	chan_unlock(c, lock);
	if (!changed(c, d, &sn) && ivmc_load_acquire(&ep->wake_gen) == egen) {
		if (ep_lock(&b->poll_lock, true) == 0)
			r = bell_lead(c, watch, bgen, timeout_ms);
		else
			r = bell_follow(b, bgen, (short)want, timeout_ms);
		atomic_fetch_add(&ep->st_sleeps, 1);
	}
	if (c->has_side)
		run_idle_hook();
	err = chan_relock(c, lock);
	atomic_fetch_and(&ep->side_want, ~want);
	if (!--*sleepers)
		ring_set_waiting(flag, seq, false);
	adapt(c, d, now_ns() - t0);
	return err ? err : r;
}

/* For a non-blocking caller: consume the bell (else its fd stays readable
 * and an event loop spins) unless a waiter is polling it. Holding the role
 * it is a poller: the bump after the release, taken or not, wakes a
 * waiter that found the role held and followed. */
static void bell_drain_nowait(struct chan_bell *b)
{
	if (ep_lock(&b->poll_lock, true))
		return;
	(void)bell_take(b);
	ep_unlock(&b->poll_lock);
	bell_bump(b);
}

int chan_wait(struct chan *c, enum chan_dir d, int timeout_ms)
{
	uint64_t nap_first = chan_nap_first_ns(c);
	int r;

	if (spin(c, d))
		return 0;
	/* Between guests, naps first: a busy connection answers without
	 * the interrupt, an idle one sleeps on it. */
	if (nap_first && timeout_ms < 0) {
		r = poll_wait_ns(c, d, nap_first);
		if (r == -ETIMEDOUT)
			r = bell_wait(c, d, timeout_ms);
	} else if (c->bell) {
		r = bell_wait(c, d, timeout_ms);
	} else if (c->doorbell < 0) {
		r = poll_wait(c, d, timeout_ms);
	} else {
		r = sleep_wait(c, d, timeout_ms);
	}
	/* A receiver woken may be the one to move what a rewind of our other
	 * direction gave back (its consumer rang for it). */
	if (d == CHAN_RX)
		sw_tx_rescue(c);
	return r;
}

bool chan_arm(struct chan *c, enum chan_dir d)
{
	struct chan_ep *ep = c->ep;
	struct snap sn = snap_take(c, d);

	if (d == CHAN_RX)
		ring_set_waiting(&c->rx.shm->cons_wait, &ep->rx_wait_seq, true);
	else
		ring_set_waiting(&c->tx.shm->prod_wait, &ep->tx_wait_seq, true);
	return changed(c, d, &sn);
}

/* No doorbell to drain: the side stream says, without waiting, whether the
 * peer is gone (side_peer_check()). Returns true if it is, now. */
static bool side_look(struct chan *c)
{
	struct pollfd p = { chan_side_fd(c), 0, 0 };

	if (!c->has_side || chan_flag(c, EP_PEER_GONE))
		return false;
	if (!chan_flag(c, EP_SIDE_FIN))
		p.events = POLLRDHUP;
	if (poll(&p, 1, 0) <= 0)
		return false;
	side_peer_check(c, &p);
	return chan_flag(c, EP_PEER_GONE);
}

bool chan_drain_nowait(struct chan *c)
{
	struct chan_ep *ep = c->ep;
	uint32_t flags = ivmc_load_once(&ep->flags);
	bool more;

	if (c->bell) {
		bell_drain_nowait(c->bell);
		return side_look(c);
	}
	if (c->doorbell < 0)
		return side_look(c);
	/* Only the poller drains: take the role, or leave it to its holder. */
	if (!take_poller_role(ep))
		return false;
	more = drain(c);
	ep_unlock(&ep->poll_lock);
	gen_bump(ep, 1); /* a release: wakes followers */
	/* A full drain: look again (bounded by the caller), or a hang-up
	 * behind a burst of rings would wait for the next call. */
	return more || ivmc_load_once(&ep->flags) != flags || chan_dead(c);
}
