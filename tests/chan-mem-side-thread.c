/* SPDX-License-Identifier: MIT */
/*
 * Description: the threaded twin of chan-mem-side (for TSan): both ends of
 * a memory channel with a TCP side stream (chan_region_init(with_side),
 * chan_open_mem(), no doorbell) in one process. 16 MiB each way under
 * random detaches, attaches and rewinds from a controller thread per end,
 * every byte checked, both paths used; then a reader and a writer blocked
 * on one end, ended by the other end's close (its socket's FIN: the peer
 * gone) and, with the socket left open, by chan_peer_gone(), on the ring
 * and on the side stream. Built a second time as chan-mem-side-thread-bell
 * (T_BELL): every end with a bell, each waiter sleeping on it.
 */
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include "chan/chan.h"
#include "chan/shm_layout.h"
#include "transport/transport.h"
#include "helpers.h"
#include "t_chan.h"
#include "t_stream.h"

#define RING   (16u * 1024)
#define SLOT   (IVMC_SHM_HDR_SIZE + 2 * (uint64_t)RING)
#define NSLOT  6
#define FILESZ (IVMC_SHM_HDR_SIZE + NSLOT * SLOT)
#define TOTAL  (16ull << 20)

static int mfd;
static uint8_t *mem;
static int slots;

#include "t_bell.h"


/* Both ends of a fresh region, with their TCP pair; returns the offset. */
static uint64_t pair_open(struct t_pair *p, unsigned int poll_us)
{
	uint64_t off = IVMC_SHM_HDR_SIZE + (uint64_t)slots++ * SLOT;

	T_ASSERT(slots <= NSLOT);
	T_ASSERT_OK(chan_region_init(mem + off, SLOT, RING, true, 0));
	t_loopback_pair(p->side);
	p->region = -1;
	for (int s = 0; s < 2; s++) {
		struct chan_cfg cfg = { .side = s, .side_fd = p->side[s],
					.wait_mode = CHAN_WAIT_ADAPTIVE,
					.poll_max_us = poll_us,
					.bell = BELL(s) };

		T_ASSERT_OK(chan_open_mem(&cfg, mfd, off, FILESZ - off,
					  s ? &p->b : &p->a));
	}
	return off;
}

static void pair_close(struct t_pair *p)
{
	for (int s = 0; s < 2; s++) {
		struct chan *c = s ? p->b : p->a;

		if (c)
			chan_close(c);
		if (p->side[s] >= 0)
			close(p->side[s]);
	}
}

static void stream(void)
{
	static const char *const names[4] = { "a->b send", "a->b recv",
					      "b->a send", "b->a recv" };
	uint64_t deadline = t_now_ns() + 40000000000ull, off;
	const struct ivmc_shm_hdr *h;
	struct t_pump pumps[4];
	struct t_switcher k[2];
	struct t_pair p;
	pthread_t th[4], kt[2];

	off = pair_open(&p, 200);
	h = (const void *)(mem + off);
	for (int i = 0; i < 4; i++) {
		bool ab = i < 2, tx = !(i & 1);

		pumps[i] = (struct t_pump){ .c = (ab == tx) ? p.a : p.b,
					    .name = names[i],
					    .seed = ab ? 0x8ab : 0x8ba,
					    .end = TOTAL,
					    .rng = 500 + (uint64_t)i,
					    .max_io = 3 * RING,
					    .deadline_ns = deadline,
					    .shut = true };
		T_ASSERT_EQ(pthread_create(&th[i], NULL,
					   tx ? t_pump_send_thread
					      : t_pump_recv_thread,
					   &pumps[i]), 0);
	}
	for (int i = 0; i < 2; i++) {
		k[i] = (struct t_switcher){ .c = i ? p.b : p.a,
					    .name = i ? "b switch" : "a switch",
					    .rng = 600 + (uint64_t)i,
					    .deadline_ns = deadline,
					    /* On a quiet machine the
					     * stream is over in a few
					     * ms: switch often enough
					     * to land in it. */
					    .gap_min_us = 5,
					    .gap_span_us = 50 };
		T_ASSERT_EQ(pthread_create(&kt[i], NULL, t_switcher_run, &k[i]),
			    0);
	}
	for (int i = 0; i < 4; i++)
		T_ASSERT_EQ(pthread_join(th[i], NULL), 0);
	for (int i = 0; i < 2; i++) {
		atomic_store(&k[i].stop, 1);
		T_ASSERT_EQ(pthread_join(kt[i], NULL), 0);
	}
	for (int d = 0; d < 2; d++) {
		uint64_t pw = ivmc_load_acquire(&h->dir[d].prod);

		printf("%s: %d detaches, %u epochs, ring %u bytes of %llu\n",
		       d ? "b->a" : "a->b", k[d].ops[0] + k[1 - d].ops[2],
		       ivmc_w_epoch(pw), ivmc_w_ctr(pw),
		       (unsigned long long)TOTAL);
		/* (Polling, the ring carries little of it: a consumer on the
		 * side stream sees an epoch open at the end of a nap.) */
		if (!ivmc_w_epoch(pw) || !ivmc_w_ctr(pw) ||
		    ivmc_w_ctr(pw) >= TOTAL)
			t_fail("%s: want both paths used", d ? "b->a" : "a->b");
	}
	pair_close(&p);
}

struct blocked {
	struct chan *c;
	ssize_t r;
};

static void *read_end(void *arg)
{
	struct blocked *b = arg;
	uint8_t buf[256];

	while ((b->r = t_recv(b->c, buf, sizeof(buf), 0)) > 0)
		;
	return NULL;
}

static void *write_end(void *arg)
{
	static uint8_t buf[RING];
	struct blocked *b = arg;

	while ((b->r = t_send(b->c, buf, sizeof(buf), 0)) > 0)
		;
	return NULL;
}

/* A reader and a writer blocked on end a; then the peer closes (FIN) or
 * is declared gone. */
static void blocked_end(bool side, bool close_peer)
{
	struct t_pair p;
	struct blocked r = { 0, 1 }, w = { 0, 1 };
	pthread_t th[2];

	(void)pair_open(&p, 20000);
	r.c = w.c = p.a;
	if (side) {
		T_ASSERT_OK(chan_detach(p.a, CHAN_TX));
		T_ASSERT_OK(chan_detach(p.b, CHAN_TX));
	}
	T_ASSERT_EQ(pthread_create(&th[0], NULL, read_end, &r), 0);
	T_ASSERT_EQ(pthread_create(&th[1], NULL, write_end, &w), 0);
	usleep(50000); /* both blocked, most likely: not required */
	if (close_peer) {
		chan_close(p.b);
		p.b = NULL;
		close(p.side[1]);
		p.side[1] = -1;
	} else {
		chan_peer_gone(p.a);
	}
	T_ASSERT_EQ(pthread_join(th[0], NULL), 0);
	T_ASSERT_EQ(pthread_join(th[1], NULL), 0);
	/* A socket closed with our bytes unread resets: -ECONNRESET first. */
	if ((r.r != 0 && !(r.r == -ECONNRESET && side && close_peer)) ||
	    w.r != -EPIPE)
		t_fail("%s, %s: receive %zd (%s), send %zd (%s)",
		       side ? "side stream" : "ring",
		       close_peer ? "peer closed" : "chan_peer_gone()", r.r,
		       t_strerror(r.r), w.r, t_strerror(w.r));
	pair_close(&p);
}

int main(void)
{
	t_alarm(55);
	T_ASSERT_OK(xport_memfd_create(FILESZ, &mfd));
	T_ASSERT_OK(xport_map(mfd, 0, FILESZ, (void **)&mem));
#ifdef T_BELL
	/* Every wait straight on the bell: the naps are poll_wait()'s. */
	setenv("IVMC_POLL_BELL_US", "0", 1);
	bells_init();
#endif
	stream();
	for (int side = 0; side < 2; side++) {
		blocked_end(side, true);
		blocked_end(side, false);
	}
	munmap(mem, FILESZ);
	close(mfd);
	return T_PASS;
}
