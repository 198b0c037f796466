/* SPDX-License-Identifier: MIT */
/*
 * Description: channel set-up and tear-down: formatting a region, opening
 * an end on received fds (verified, geometry copied once), the endpoint
 * page, locks, poison, shutdown and counters.
 */
#include <poll.h>
#include <pthread.h>
#include <sys/single_threaded.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include "../transport/transport.h"
#include "chan_impl.h"

static bool ring_size_ok(uint32_t size)
{
	return size >= IVMC_RING_MIN && size <= IVMC_RING_MAX &&
	       !(size & (size - 1));
}

int chan_region_size(uint32_t ring_size, uint32_t deep_size, uint64_t *size)
{
	if (!ring_size_ok(ring_size) ||
	    (deep_size && (!ring_size_ok(deep_size) || deep_size < ring_size)))
		return -EINVAL;
	*size = IVMC_SHM_HDR_SIZE + 2 * ((uint64_t)ring_size + deep_size);
	return 0;
}

static void dir_init(struct ivmc_shm_dir *d, bool with_side, uint32_t ctr)
{
	/* Ring-only: epoch 1 is open from offset 0, consumer ready for it.
	 * With a side stream: epoch 0, closed; epoch 1 opens after attach. */
	uint32_t e = with_side ? 0 : 1;

	ivmc_store_once(&d->prod, ivmc_w_make(e, ctr) |
					  (with_side ? IVMC_PW_CLOSED : 0));
	ivmc_store_once(&d->cons, ivmc_w_make(e, ctr));
	ivmc_store_once(&d->attach, 0);
	ivmc_store_once(&d->fin, 0);
	ivmc_store_once(&d->deep, ivmc_deep_make(false, ctr));
}

/* Write a header (into fresh memory nobody else maps yet). */
static void hdr_format(struct ivmc_shm_hdr *h, uint32_t ring_size,
		       uint32_t deep_size, uint64_t size, bool with_side,
		       uint32_t init_ctr)
{
	h->magic = IVMC_SHM_MAGIC;
	h->version = IVMC_SHM_VERSION;
	h->hdr_size = IVMC_SHM_HDR_SIZE;
	h->ring_size = ring_size;
	h->deep_size = deep_size;
	h->region_size = size;
	h->flags = with_side ? IVMC_SHM_F_SIDE : 0;
	h->init_ctr[0] = h->init_ctr[1] = init_ctr;
	for (int d = 0; d < 2; d++)
		dir_init(&h->dir[d], with_side, init_ctr);
}

/* The header is written with pwrite(), not through a mapping: mmap, the
 * page fault and munmap cost more than the rest of the creation (ivmcd
 * makes one region per connection: 35 -> 15 us per region here). */
int chan_region_create(uint32_t ring_size, uint32_t deep_size, bool with_side,
		       uint32_t init_ctr, int *out)
{
	struct ivmc_shm_hdr h;
	uint64_t size;
	ssize_t n;
	int fd, err;

	err = chan_region_size(ring_size, deep_size, &size);
	if (err)
		return err;
	err = xport_memfd_create(size, &fd);
	if (err)
		return err;
	memset(&h, 0, sizeof(h));
	hdr_format(&h, ring_size, deep_size, size, with_side, init_ctr);
	do
		n = pwrite(fd, &h, sizeof(h), 0);
	while (n < 0 && errno == EINTR);
	if (n != (ssize_t)sizeof(h)) {
		err = n < 0 ? -errno : -EIO;
		close(fd);
		return err;
	}
	*out = fd;
	return 0;
}

/* The header as copied once at open; never re-read. */
struct hdr_copy {
	uint32_t ring_size, deep_size, flags, init_ctr[2];
};

/* fsize: the region's exact size; or, with fit, how much room there is. */
static int hdr_validate(const struct ivmc_shm_hdr *h, uint64_t fsize, bool fit,
			struct hdr_copy *hc)
{
	struct ivmc_shm_hdr tmp;
	uint64_t want;

	memcpy(&tmp, h, offsetof(struct ivmc_shm_hdr, pad)); /* one read */
	if (tmp.magic != IVMC_SHM_MAGIC || tmp.version != IVMC_SHM_VERSION ||
	    tmp.hdr_size != IVMC_SHM_HDR_SIZE || (tmp.flags & ~IVMC_SHM_F_SIDE))
		return -EPROTO;
	for (size_t i = 0; i < sizeof(tmp.reserved) / sizeof(tmp.reserved[0]); i++)
		if (tmp.reserved[i])
			return -EPROTO;
	if (chan_region_size(tmp.ring_size, tmp.deep_size, &want) ||
	    tmp.region_size != want)
		return -EPROTO;
	if (fit ? want > fsize : fsize != want)
		return -EMSGSIZE;
	hc->ring_size = tmp.ring_size;
	hc->deep_size = tmp.deep_size;
	hc->flags = tmp.flags;
	hc->init_ctr[0] = tmp.init_ctr[0];
	hc->init_ctr[1] = tmp.init_ctr[1];
	return 0;
}

static int ep_create(struct chan_ep **out)
{
	/* Zero-filled: every lock free, every counter zero. */
	struct chan_ep *ep = mmap(NULL, sizeof(*ep), PROT_READ | PROT_WRITE,
				  MAP_SHARED | MAP_ANONYMOUS, -1, 0);

	if (ep == MAP_FAILED)
		return -errno;
	*out = ep;
	return 0;
}

/* Private state of both rings from the copied header. */
static void ep_start(struct chan *c, const struct hdr_copy *hc, int side)
{
	struct chan_ep *ep = c->ep;
	uint32_t e = c->has_side ? 0 : 1;

	ep->tx.ctr = ep->tx.peer_cons = hc->init_ctr[side];
	ep->tx.pw = ivmc_w_make(e, ep->tx.ctr) |
		    (c->has_side ? IVMC_PW_CLOSED : 0);
	ep->rx.ctr = ep->rx.peer_prod = hc->init_ctr[1 - side];
	ep->rx_seen_pw = ivmc_w_make(e, ep->rx.ctr) |
			 (c->has_side ? IVMC_PW_CLOSED : 0); /* as dir_init() */
	ep->rx_mode = c->has_side ? RX_SIDE : RX_RING;
	ep->rx_epoch = 1;
	ep->rx.ready = e;
	ep->tx_attach_ok = ep->rx_ready_ok = true;
	ep->spin_ns[0] = ep->spin_ns[1] = c->spin_default;
	if (c->has_side) /* mapped: tell the producer it may attach */
		ring_set_ready(&c->rx, &ep->rx, 1);
}

/* The rings S, mirror-mapped (copies ignore their wrap); the large areas
 * L of both directions in one plain mapping (cheaper to make and unmake
 * than two mirrors of 4 MiB: ivmcd makes a channel per connection), whose
 * users cut copies at its end. */
static int map_rings(struct chan *c, int fd, uint64_t base, int side)
{
	int err = 0;

	for (int d = 0; d < 2 && !err; d++)
		err = xport_map_mirror(fd, base + IVMC_SHM_HDR_SIZE +
					   (uint64_t)d * c->ring_size,
				       c->ring_size, (void **)&c->mirror[d]);
	if (!err && c->deep_size)
		err = xport_map(fd, base + IVMC_SHM_HDR_SIZE +
					2 * (uint64_t)c->ring_size,
				2 * (size_t)c->deep_size, (void **)&c->deep_map);
	if (err) {
		c->deep_map = NULL;
		return err;
	}
	for (int d = 0; d < 2; d++) {
		int s = d ? 1 - side : side; /* tx: dir[side], rx: the other */

		(d ? &c->rx : &c->tx)[0] = (struct ring){
			&c->hdr->dir[s], c->mirror[s], c->ring_size,
			c->deep_size,
			c->deep_map ? c->deep_map + (size_t)s * c->deep_size
				    : NULL
		};
	}
	return 0;
}

static void chan_free(struct chan *c)
{
	for (int d = 0; d < 2; d++)
		if (c->mirror[d])
			munmap(c->mirror[d], 2 * (size_t)c->ring_size);
	if (c->deep_map)
		munmap(c->deep_map, 2 * (size_t)c->deep_size);
	if (c->hdr)
		munmap(c->hdr, IVMC_SHM_HDR_SIZE);
	if (c->ep)
		munmap(c->ep, sizeof(*c->ep));
	free(c);
}

static int verify_fds(int region_fd, int doorbell_fd, uint64_t *fsize)
{
	int err = xport_memfd_verify(region_fd, fsize);

	if (err)
		return err;
	if (*fsize < IVMC_SHM_HDR_SIZE)
		return -EMSGSIZE;
	return xport_doorbell_verify(doorbell_fd);
}

static int cfg_ok(const struct chan_cfg *cfg)
{
	if ((cfg->side != 0 && cfg->side != 1) || cfg->spin_ns > 1000000 ||
	    cfg->wait_mode < CHAN_WAIT_ADAPTIVE ||
	    cfg->wait_mode > CHAN_WAIT_SLEEP)
		return -EINVAL;
	return 0;
}

/*
 * Every open end of this process, so that fork() can mark them shared: a
 * process with one thread whose ends no fork copied takes no locks (the
 * per-message path then costs no locked instruction but the publish).
 */
static pthread_mutex_t ends_lock = PTHREAD_MUTEX_INITIALIZER;
static struct chan ends = { .next = &ends, .prev = &ends };
static pthread_once_t ends_once = PTHREAD_ONCE_INIT;

static void fork_prepare(void)
{
	pthread_mutex_lock(&ends_lock);
	for (struct chan *c = ends.next; c != &ends; c = c->next)
		ivmc_store_once(&c->ep->forked, 1);
	chan_kicks_fork(-1);
}

static void fork_parent(void)
{
	chan_kicks_fork(0);
	pthread_mutex_unlock(&ends_lock);
}

static void fork_child(void)
{
	chan_kicks_fork(1);
	pthread_mutex_unlock(&ends_lock);
}

static void ends_init(void)
{
	pthread_atfork(fork_prepare, fork_parent, fork_child);
}

static void ends_add(struct chan *c)
{
	pthread_once(&ends_once, ends_init);
	pthread_mutex_lock(&ends_lock);
	if (ends.next == &ends)
		chan_kicks_busy();
	c->next = ends.next;
	c->prev = &ends;
	ends.next->prev = c;
	ends.next = c;
	pthread_mutex_unlock(&ends_lock);
}

/* The first end in makes the kick eventfd, the last one out closes the
 * kick fds, under the lock, so that no end (no poller) comes meanwhile. */
static void ends_del(struct chan *c)
{
	pthread_mutex_lock(&ends_lock);
	c->prev->next = c->next;
	c->next->prev = c->prev;
	if (ends.next == &ends)
		chan_kicks_idle();
	pthread_mutex_unlock(&ends_lock);
}

int chan_open(const struct chan_cfg *cfg, int region_fd, int doorbell_fd,
	      struct chan **out)
{
	struct hdr_copy hc;
	struct chan *c;
	uint64_t fsize;
	int err = cfg_ok(cfg);

	if (!err)
		err = verify_fds(region_fd, doorbell_fd, &fsize);
	if (err)
		return err;
	c = calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	err = xport_map(region_fd, 0, IVMC_SHM_HDR_SIZE, (void **)&c->hdr);
	if (err) {
		c->hdr = NULL;
		goto fail;
	}
	err = hdr_validate(c->hdr, fsize, false, &hc);
	if (err)
		goto fail;
	c->has_side = hc.flags & IVMC_SHM_F_SIDE;
	if (c->has_side != (cfg->side_fd >= 0)) {
		err = -EPROTO; /* the creator formatted another kind of channel */
		goto fail;
	}
	c->ring_size = hc.ring_size;
	c->deep_size = hc.deep_size;
	c->side_fd = cfg->side_fd;
	c->doorbell = doorbell_fd;
	c->wait_mode = cfg->wait_mode;
	c->spin_default = cfg->spin_ns ? cfg->spin_ns : 30000;
	err = map_rings(c, region_fd, 0, cfg->side);
	if (!err)
		err = ep_create(&c->ep);
	if (err)
		goto fail;
	ep_start(c, &hc, cfg->side);
	if (c->has_side) {
		c->ep->tx_off = cfg->tx_off0;
		c->ep->rx_off = cfg->rx_off0;
	}
	if (cfg->nonblock)
		c->ep->flags = EP_NONBLOCK;
	ends_add(c);
	c->doorbell = xport_fd_high(doorbell_fd); /* ours from here on */
	*out = c;
	return 0;
fail:
	chan_free(c);
	return err;
}

int chan_region_init(void *mem, uint64_t len, uint32_t ring_size,
		     bool with_side, uint32_t init_ctr)
{
	uint64_t size;
	int err = chan_region_size(ring_size, 0, &size);

	if (err || (uintptr_t)mem % IVMC_SHM_HDR_SIZE)
		return -EINVAL;
	if (size > len)
		return -EMSGSIZE;
	memset(mem, 0, IVMC_SHM_HDR_SIZE);
	hdr_format(mem, ring_size, 0, size, with_side, init_ctr);
	return 0;
}

/* The polling wait's sleep cap: the cfg, else IVMC_POLL_MAX_US, else 1 ms;
 * within 1 us .. 1 s. */
static uint32_t poll_max_ns(const struct chan_cfg *cfg)
{
	const char *env = getenv("IVMC_POLL_MAX_US");
	unsigned long us = cfg->poll_max_us;

	if (!us && env)
		us = strtoul(env, NULL, 10);
	if (!us)
		us = 1000;
	if (us > 1000000)
		us = 1000000;
	return (uint32_t)us * 1000u;
}

/* With a bell and a side stream (between guests), how long a waiter polls
 * before it sleeps on the interrupt: IVMC_POLL_BELL_US, else 2 ms; 0: at
 * once; at most 1 s. An interrupt costs far more than a nap under
 * emulation (docs/vm.md). */
static uint64_t bell_poll_ns(void)
{
	const char *env = getenv("IVMC_POLL_BELL_US");
	unsigned long us = 2000;

	if (env && *env)
		us = strtoul(env, NULL, 10);
	if (us > 1000000)
		us = 1000000;
	return (uint64_t)us * 1000u;
}

/* The cap once a waiter has been idle a while: IVMC_POLL_IDLE_US, else
 * 100 ms; never below the busy cap, at most 1 s. */
static uint32_t poll_idle_ns(uint32_t busy_ns)
{
	const char *env = getenv("IVMC_POLL_IDLE_US");
	unsigned long us = env ? strtoul(env, NULL, 10) : 0;

	if (!us)
		us = 100000;
	if (us > 1000000)
		us = 1000000;
	return (uint32_t)us * 1000u > busy_ns ? (uint32_t)us * 1000u : busy_ns;
}

/* Map the header at off, copy and check it (fits in avail, no L, a side
 * stream exactly when cfg has one), then the rings. */
static int mem_map(struct chan *c, const struct chan_cfg *cfg, int fd,
		   uint64_t off, uint64_t avail, struct hdr_copy *hc)
{
	int err = xport_map(fd, off, IVMC_SHM_HDR_SIZE, (void **)&c->hdr);

	if (err) {
		c->hdr = NULL;
		return err;
	}
	err = hdr_validate(c->hdr, avail, true, hc);
	if (!err && hc->deep_size)
		err = -EPROTO; /* an L: chan_region_init() makes none */
	if (err)
		return err;
	c->has_side = hc->flags & IVMC_SHM_F_SIDE;
	if (c->has_side != (cfg->side_fd >= 0))
		return -EPROTO; /* the formatter made another kind of channel */
	c->ring_size = hc->ring_size;
	return map_rings(c, fd, off, cfg->side);
}

int chan_open_mem(const struct chan_cfg *cfg, int fd, uint64_t off,
		  uint64_t avail, struct chan **out)
{
	struct hdr_copy hc;
	struct chan *c;
	int err = cfg_ok(cfg);

	if (!err && off % IVMC_SHM_HDR_SIZE)
		err = -EINVAL;
	if (!err && avail < IVMC_SHM_HDR_SIZE)
		err = -EMSGSIZE;
	if (err)
		return err;
	c = calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	c->doorbell = -1;
	c->side_fd = cfg->side_fd;
	c->wait_mode = cfg->wait_mode;
	c->spin_default = cfg->spin_ns ? cfg->spin_ns : 30000;
	c->poll_max_ns = poll_max_ns(cfg);
	c->poll_idle_ns = poll_idle_ns(c->poll_max_ns);
	c->bell = cfg->bell;
	c->bell_poll_ns = bell_poll_ns();
	err = mem_map(c, cfg, fd, off, avail, &hc);
	if (!err)
		err = ep_create(&c->ep);
	if (err) {
		chan_free(c);
		return err;
	}
	ep_start(c, &hc, cfg->side);
	if (c->has_side) {
		c->ep->tx_off = cfg->tx_off0;
		c->ep->rx_off = cfg->rx_off0;
	}
	if (cfg->nonblock)
		c->ep->flags = EP_NONBLOCK;
	ends_add(c);
	*out = c;
	return 0;
}

int chan_bell_new(int fd, int (*ring)(void *arg), void *arg,
		  struct chan_bell **out)
{
	struct chan_bell *b;

	if (fd < 0 || !ring)
		return -EINVAL;
	b = mmap(NULL, sizeof(*b), PROT_READ | PROT_WRITE,
		 MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (b == MAP_FAILED)
		return -errno;
	b->fd = fd;
	b->ring = ring;
	b->arg = arg;
	*out = b;
	return 0;
}

void chan_bell_free(struct chan_bell *b)
{
	if (b)
		munmap(b, sizeof(*b));
}

void chan_close(struct chan *c)
{
	/* A SHUT_WR owed to the side stream (sw_tx_shut_side()) is paid now:
	 * nobody will be here to honour a rewind. */
	if (c->has_side && chan_flag(c, EP_SIDE_SHUT))
		sw_side_shut_now(c);
	ends_del(c);
	if (c->doorbell >= 0)
		close(c->doorbell);
	chan_free(c);
}

void chan_set_side_fd(struct chan *c, int fd)
{
	atomic_store_explicit(&c->side_fd, fd, memory_order_relaxed);
}

/* Nobody else can be in a call on this end: one thread, never forked. */
static bool solo(const struct chan *c)
{
	return __libc_single_threaded && !ivmc_load_once(&c->ep->forked);
}

int chan_lock(struct chan *c, _Atomic uint32_t *m, bool try)
{
	int r;

	if (solo(c))
		return 0;
	r = ep_lock(m, try);

	if (r == -EOWNERDEAD) {
		chan_poison(c, -EOWNERDEAD);
		ep_unlock(m);
		return -ECONNRESET;
	}
	return r;
}

int chan_relock(struct chan *c, _Atomic uint32_t *m)
{
	if (solo(c) || ep_lock(m, false) != -EOWNERDEAD)
		return 0;
	return chan_poison(c, -EOWNERDEAD);
}

void chan_unlock(struct chan *c, _Atomic uint32_t *m)
{
	/* Still solo: no thread or fork can appear during one of our calls
	 * without that call itself creating it. */
	if (!solo(c))
		ep_unlock(m);
}

int chan_poison(struct chan *c, int err)
{
	int32_t zero = 0;

	if (!atomic_compare_exchange_strong(&c->ep->poison, &zero, err))
		return -ECONNRESET;
	/* The channel is dead for every holder: shutting the doorbell down
	 * wakes our own poller (POLLHUP) and the peer's, and the generation
	 * bump wakes our followers. */
	if (c->doorbell >= 0)
		shutdown(c->doorbell, SHUT_RDWR);
	chan_wake_followers(c);
	return -ECONNRESET;
}

void chan_peer_gone(struct chan *c)
{
	/* As a doorbell's hang-up (drain()), and the side stream with it:
	 * the peer that says nothing more may not have closed it (a VM that
	 * died sends no FIN). The kick makes every waiter re-check. */
	atomic_fetch_or(&c->ep->flags,
			EP_PEER_GONE | (c->has_side ? EP_SIDE_DEAD : 0));
	chan_kick(c);
}

void chan_notify(struct chan *c, _Atomic uint32_t *flag, uint32_t *memo)
{
	if (c->bell) {
		if (ring_peer_needs_wake(flag, memo) &&
		    !c->bell->ring(c->bell->arg))
			atomic_fetch_add(&c->ep->st_wakes, 1);
		return;
	}
	if (c->doorbell < 0 || !ring_peer_needs_wake(flag, memo))
		return; /* no doorbell: the peer polls */
	if (xport_ring(c->doorbell) == -EPIPE)
		atomic_fetch_or(&c->ep->flags, EP_PEER_GONE);
	else
		atomic_fetch_add(&c->ep->st_wakes, 1);
}

void chan_ring_peer(struct chan *c)
{
	if (c->doorbell >= 0)
		(void)xport_ring(c->doorbell);
	else if (c->bell)
		(void)c->bell->ring(c->bell->arg);
}

bool chan_tx_deep(struct chan *c)
{
	if (!ring_go_deep(&c->tx, &c->ep->tx))
		return false;
	atomic_fetch_add(&c->ep->st_deeps, 1);
	return true;
}

int chan_tx_shallow(struct chan *c)
{
	size_t page = IVMC_SHM_HDR_SIZE; /* the page size the layout assumes */
	uint32_t n;

	if (ring_go_shallow(&c->tx, &c->ep->tx, &n))
		return chan_poison(c, -EPROTO);
	/* L was written from its start (the episode's first byte is at
	 * offset 0); nobody reads it before we go deep again, and then we
	 * write before we publish. Giving the pages back is what makes an
	 * idle connection cost S only; if it fails they just stay. */
	if (n > c->deep_size)
		n = c->deep_size;
	if (n)
		(void)madvise(c->tx.deep_data, (n + page - 1) / page * page,
			      MADV_REMOVE);
	return 0;
}

uint64_t chan_nap_first_ns(const struct chan *c)
{
	return c->bell && c->has_side ? c->bell_poll_ns : 0;
}

int chan_fd(const struct chan *c)
{
	return c->bell ? c->bell->fd : c->doorbell;
}

void chan_set_nonblock(struct chan *c, bool on)
{
	if (on)
		atomic_fetch_or(&c->ep->flags, EP_NONBLOCK);
	else
		atomic_fetch_and(&c->ep->flags, ~EP_NONBLOCK);
}

void chan_stats(const struct chan *c, struct chan_stats *st)
{
	const struct chan_ep *ep = c->ep;

	memset(st, 0, sizeof(*st));
	st->tx_offset = st->sent = ep->tx_off;
	st->rx_offset = st->received = ep->rx_off;
	st->wakeups_sent = ep->st_wakes;
	st->sleeps = ep->st_sleeps;
	st->spin_hits = ep->st_spin_hits;
	st->ring_size = c->ring_size;
	st->deep_size = c->deep_size;
	st->deeps = ep->st_deeps;
	st->tx_deep = ep->tx.deep;
	st->spin_ns = ep->spin_ns[CHAN_RX];
	st->tx_on_ring = !(ep->tx.pw & IVMC_PW_CLOSED);
	st->rx_on_ring = ep->rx_mode == RX_RING;
}

#ifdef IVMC_FUZZ_SHM
/* Fuzzing hook (src/ring/atomics.h): the open end whose shared header page
 * holds p, and p's offset in it; NULL for any other memory. The list of open
 * ends is the registry: an end is on it exactly while its page is mapped. */
const void *chan_fuzz_shm_find(const volatile void *p, size_t *off)
{
	const struct chan *found = NULL;

	pthread_mutex_lock(&ends_lock);
	for (const struct chan *c = ends.next; c != &ends && !found; c = c->next) {
		uintptr_t at = (uintptr_t)p - (uintptr_t)c->hdr;

		if (at < IVMC_SHM_HDR_SIZE) {
			*off = at;
			found = c;
		}
	}
	pthread_mutex_unlock(&ends_lock);
	return found;
}
#endif
