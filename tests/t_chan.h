/* SPDX-License-Identifier: MIT */
/*
 * Description: test helpers that build channels directly on chan/ (no
 * rendezvous): a pair of ends in one process, optionally with a socketpair
 * playing the TCP side stream. Fork after t_chan_pair() to split the ends.
 */
#ifndef IVMC_TESTS_T_CHAN_H
#define IVMC_TESTS_T_CHAN_H

#include <sys/socket.h>
#include <unistd.h>

#include "chan/chan.h"
#include "chan/shm_layout.h"
#include "helpers.h"

struct t_pair {
	struct chan *a, *b; /* a: side 0 (creator), b: side 1 */
	int side[2];	    /* the side stream (socketpair), or -1 */
	int region;	    /* the region memfd (kept for hostile tests) */
};

/* The size of the large areas t_chan_pair() gives its regions (0: none);
 * a test sets it to run its cases with rings that grow. */
static uint32_t t_deep_size;

/* Build a pair: ring_size bytes per ring (and L areas of t_deep_size),
 * with a side stream or not, ring counters starting at init_ctr, wait
 * mode. Asserts on failure. */
static inline void t_chan_pair(struct t_pair *p, uint32_t ring_size,
			       bool with_side, uint32_t init_ctr, int wait_mode)
{
	struct chan_cfg ca = { .side = 0, .side_fd = -1, .wait_mode = wait_mode };
	struct chan_cfg cb = ca;
	int db[2];

	cb.side = 1;
	p->side[0] = p->side[1] = -1;
	if (with_side) {
		T_ASSERT(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0,
				    p->side) == 0);
		ca.side_fd = p->side[0];
		cb.side_fd = p->side[1];
	}
	T_ASSERT_OK(chan_region_create(ring_size, t_deep_size, with_side,
				       init_ctr, &p->region));
	T_ASSERT(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, db) == 0);
	T_ASSERT_OK(chan_open(&ca, p->region, db[0], &p->a));
	T_ASSERT_OK(chan_open(&cb, p->region, db[1], &p->b));
}

/* Close both ends and the side stream. */
static inline void t_chan_pair_close(struct t_pair *p)
{
	if (p->a)
		chan_close(p->a);
	if (p->b)
		chan_close(p->b);
	for (int i = 0; i < 2; i++)
		if (p->side[i] >= 0)
			close(p->side[i]);
	close(p->region);
}

static inline ssize_t t_send(struct chan *c, const void *buf, size_t n,
			     unsigned int flags)
{
	struct iovec v = { (void *)buf, n };

	return chan_sendv(c, &v, 1, flags);
}

static inline ssize_t t_recv(struct chan *c, void *buf, size_t n,
			     unsigned int flags)
{
	struct iovec v = { buf, n };

	return chan_recvv(c, &v, 1, flags);
}

/* Send len bytes of t_fill(seed)'s stream on c in pieces of up to 5000
 * (not a divisor of any ring: the stream wraps), napping nap_us each time
 * another 64 KiB went (0: never); fails the test on an error. */
static inline void t_chan_send_stream(struct chan *c, uint64_t seed,
				      uint64_t len, unsigned int nap_us)
{
	static uint8_t buf[5000];
	uint64_t sent = 0, nap_at = 65536;

	while (sent < len) {
		uint64_t left = len - sent;
		struct iovec iov = { buf, left < sizeof(buf) ? left : sizeof(buf) };
		ssize_t r;

		t_fill(seed, sent, buf, iov.iov_len);
		r = chan_sendv(c, &iov, 1, 0);
		if (r <= 0)
			t_fail("send at %llu: %s", (unsigned long long)sent,
			       t_strerror(r));
		sent += (uint64_t)r;
		if (nap_us && sent >= nap_at) {
			usleep(nap_us);
			nap_at += 65536;
		}
	}
}

#endif
