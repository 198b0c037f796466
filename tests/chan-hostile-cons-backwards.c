/* SPDX-License-Identifier: MIT */
/*
 * Description: a hostile consumer claims it drained the ring (the producer
 * reserves the room), then moves its counter back; the producer commits
 * the stale reservation. After that, no reserve may hand out more than the
 * ring: the channel must fail (-ECONNRESET) or refuse the commit instead.
 * Found by tests/fuzz/fuzz-chan-consumer.c: ring_free() accepts a consumer
 * counter that moves backwards (it checks only ctr - cons <= cap), and
 * chan_commit() checks the reservation against tx_resv, not against the room
 * left, so ctr - peer_cons exceeds the capacity; ring_free() then returns
 * cap - used wrapped round, reserve returns about 2^32, and the next send
 * copies up to 64 KiB into the 2 * cap mirror mapping (out of bounds).
 */
#include <errno.h>
#include <sys/mman.h>

#include "t_chan.h"

#define RING 4096u

int main(void)
{
	static uint8_t data[RING];
	struct ivmc_shm_hdr *h;
	struct t_pair p;
	void *buf;
	ssize_t r;

	t_alarm(10);
	t_chan_pair(&p, RING, false, 0, CHAN_WAIT_SLEEP);
	h = mmap(NULL, IVMC_SHM_HDR_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED,
		 p.region, 0);
	T_ASSERT(h != MAP_FAILED);
	T_ASSERT_EQ(t_send(p.a, data, RING, CHAN_NONBLOCK), RING); /* full */

	/* The consumer (the hostile side) claims RING - 1 bytes consumed... */
	atomic_store(&h->dir[0].cons, ivmc_w_make(1, RING - 1));
	r = chan_reserve(p.a, &buf, CHAN_NONBLOCK);
	T_ASSERT_EQ(r, RING - 1); /* its own loss: we may overwrite them */
	/* ...then takes it back: a refresh sees the counter at 0 again. */
	atomic_store(&h->dir[0].cons, ivmc_w_make(1, 0));
	r = chan_reserve(p.a, &buf, CHAN_NONBLOCK);
	T_ASSERT(r == -EAGAIN || r == -ECONNRESET);
	/* The reservation of RING - 1 bytes is committed (or refused). */
	(void)chan_commit(p.a, RING - 1, 0);

	r = chan_reserve(p.a, &buf, CHAN_NONBLOCK);
	if (r > (ssize_t)RING)
		t_fail("reserve handed out %zd bytes of a %u-byte ring", r, RING);
	munmap(h, IVMC_SHM_HDR_SIZE);
	t_chan_pair_close(&p);
	return T_PASS;
}
