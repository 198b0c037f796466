/* SPDX-License-Identifier: MIT */
/*
 * Description: ring edge cases on one ring-only pair in one process: an
 * empty ring says -EAGAIN; a non-blocking send accepts exactly ring_size
 * bytes (one at a time or in one call) then -EAGAIN; draining gives them
 * back in order; every size 1..ring_size goes through the ring so that every
 * start offset and every wrap point is crossed; zero-length and partial
 * calls neither block nor consume.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "helpers.h"
#include "t_chan.h"

#define SEED 0xed9e5

static uint32_t cap;
static uint64_t tx_off, rx_off; /* stream offsets, a -> b */
static uint8_t *buf; /* 2 * cap + 16 bytes */

static void expect_eagain_recv(struct chan *c, const char *when)
{
	ssize_t r = t_recv(c, buf, cap, CHAN_NONBLOCK);

	if (r != -EAGAIN)
		t_fail("%s: non-blocking recv returned %zd (%s), want -EAGAIN",
		       when, r, t_strerror(r));
}

static void expect_eagain_send(struct chan *c, const char *when)
{
	ssize_t r;

	t_fill(SEED, tx_off, buf, 1);
	r = t_send(c, buf, 1, CHAN_NONBLOCK);
	if (r != -EAGAIN)
		t_fail("%s: non-blocking send of 1 byte returned %zd (%s), want -EAGAIN",
		       when, r, t_strerror(r));
}

/* Receive exactly n bytes (non-blocking; a call may return less than is
 * there, as the consumer refreshes its view of the producer only when its
 * cache says empty, but never -EAGAIN while bytes wait) and verify them. */
static void recv_exact(struct chan *c, size_t n, const char *when)
{
	size_t got = 0;

	for (int calls = 0; got < n; calls++) {
		ssize_t r = t_recv(c, buf + got, n - got, CHAN_NONBLOCK);

		if (r <= 0 || calls > 2)
			t_fail("%s: non-blocking recv %d of %zu (%zu of %zu done) at stream offset %llu returned %zd (%s)",
			       when, calls, n - got, got, n,
			       (unsigned long long)(rx_off + got), r,
			       t_strerror(r));
		got += (size_t)r;
	}
	if (t_verify(SEED, rx_off, buf, n))
		t_fail("%s: wrong bytes in [%llu, %llu)", when,
		       (unsigned long long)rx_off,
		       (unsigned long long)(rx_off + n));
	rx_off += n;
}

static void send_exact(struct chan *c, size_t n, const char *when)
{
	ssize_t r;

	t_fill(SEED, tx_off, buf, n);
	r = t_send(c, buf, n, CHAN_NONBLOCK);
	if (r != (ssize_t)n)
		t_fail("%s: non-blocking send of %zu at stream offset %llu returned %zd (%s)",
		       when, n, (unsigned long long)tx_off, r, t_strerror(r));
	tx_off += n;
}

static void test_empty(struct t_pair *p)
{
	expect_eagain_recv(p->b, "empty ring");
	expect_eagain_recv(p->a, "empty ring (other direction)");
}

/* One byte at a time until -EAGAIN: exactly cap bytes fit. */
static void test_fill_bytewise(struct t_pair *p)
{
	uint32_t n = 0;

	for (uint32_t i = 0; i <= cap; i++) {
		ssize_t r;

		t_fill(SEED, tx_off, buf, 1);
		r = t_send(p->a, buf, 1, CHAN_NONBLOCK);
		if (r == -EAGAIN)
			break;
		if (r != 1)
			t_fail("fill byte %u: non-blocking send returned %zd (%s)",
			       i, r, t_strerror(r));
		tx_off++;
		n++;
	}
	if (n != cap)
		t_fail("fill one byte at a time: ring took %u bytes, capacity is %u",
		       n, cap);
	expect_eagain_send(p->a, "full ring");
	/* A full ring keeps the other direction free. */
	expect_eagain_recv(p->a, "reverse direction while a->b is full");
	recv_exact(p->b, cap, "drain full ring");
	expect_eagain_recv(p->b, "drained ring");
}

/* One big call: accepts exactly the free space; the rest is refused. */
static void test_fill_one_call(struct t_pair *p)
{
	ssize_t r;

	t_fill(SEED, tx_off, buf, 2 * (size_t)cap);
	r = t_send(p->a, buf, 2 * (size_t)cap, CHAN_NONBLOCK);
	if (r != (ssize_t)cap)
		t_fail("non-blocking send of %u into an empty ring of %u returned %zd (%s), want %u",
		       2 * cap, cap, r, t_strerror(r), cap);
	tx_off += cap;
	expect_eagain_send(p->a, "ring filled by one call");
	recv_exact(p->b, cap, "drain after one-call fill");

	/* Exactly cap in one call, after the ring has moved. */
	send_exact(p->a, cap, "send of exactly capacity");
	expect_eagain_send(p->a, "ring filled by exactly capacity");
	/* Drain in two parts: the first leaves the rest readable. */
	recv_exact(p->b, cap / 3, "first part of drain");
	send_exact(p->a, cap / 3, "refill the freed part");
	expect_eagain_send(p->a, "ring full again after refill");
	recv_exact(p->b, cap, "rest of the drain");
	expect_eagain_recv(p->b, "drained after refill");
}

/*
 * Sizes 1..cap in turn, each sent then received whole. The k-th start
 * offset is k(k-1)/2 mod cap, and triangular numbers modulo a power of two
 * take every value, so every start offset occurs; every size > cap - start
 * crosses the wrap.
 */
static void test_every_size(struct t_pair *p)
{
	uint64_t rng = 5;

	for (uint32_t size = 1; size <= cap; size++) {
		uint32_t part;

		send_exact(p->a, size, "every size");
		if (t_rand64(&rng) % 4) {
			recv_exact(p->b, size, "every size");
			continue;
		}
		/* Sometimes in two parts: a partial read leaves the rest. */
		part = (uint32_t)(t_rand64(&rng) % size);
		if (part)
			recv_exact(p->b, part, "every size, first part");
		recv_exact(p->b, size - part, "every size, second part");
	}
	expect_eagain_recv(p->b, "after every size");
}

/* Both directions at once, so each ring wraps independently. */
static void test_both_directions(struct t_pair *p)
{
	uint64_t off_ba = 0;

	for (uint32_t size = cap; size >= 1; size = size * 3 / 4) {
		ssize_t r;

		send_exact(p->a, size, "a->b while b->a is busy");
		t_fill(SEED + 1, off_ba, buf + cap, size);
		r = t_send(p->b, buf + cap, size, CHAN_NONBLOCK);
		T_ASSERT_EQ(r, size);
		recv_exact(p->b, size, "a->b while b->a is busy");
		r = t_recv(p->a, buf, size, CHAN_NONBLOCK);
		T_ASSERT_EQ(r, size);
		T_ASSERT_EQ(t_verify(SEED + 1, off_ba, buf, size), 0);
		off_ba += size;
		if (size < 2)
			break;
	}
}

static void test_zero_length(struct t_pair *p)
{
	struct iovec v[5];
	ssize_t r;

	/* On an empty ring: neither blocks, both return 0. */
	T_ASSERT_EQ(t_send(p->a, buf, 0, 0), 0);
	T_ASSERT_EQ(t_recv(p->b, buf, 0, 0), 0);
	T_ASSERT_EQ(chan_sendv(p->a, NULL, 0, 0), 0);
	T_ASSERT_EQ(chan_recvv(p->b, NULL, 0, 0), 0);
	expect_eagain_recv(p->b, "after zero-length send");

	/* With data pending, a zero-length recv consumes nothing. */
	send_exact(p->a, 10, "before zero-length recv");
	T_ASSERT_EQ(t_recv(p->b, buf, 0, CHAN_NONBLOCK), 0);
	T_ASSERT_EQ(t_recv(p->b, buf, 0, 0), 0);
	recv_exact(p->b, 10, "after zero-length recv");

	/* On a full ring, a zero-length send returns 0, not -EAGAIN. */
	send_exact(p->a, cap, "fill before zero-length send");
	r = t_send(p->a, buf, 0, CHAN_NONBLOCK);
	if (r != 0)
		t_fail("zero-length non-blocking send on a full ring: %zd (%s), want 0",
		       r, t_strerror(r));
	T_ASSERT_EQ(t_send(p->a, buf, 0, 0), 0); /* must not block */
	recv_exact(p->b, cap, "drain after zero-length send");

	/* Empty segments inside vectors are skipped, both ways. */
	t_fill(SEED, tx_off, buf, 8);
	v[0] = (struct iovec){ buf, 0 };
	v[1] = (struct iovec){ buf, 5 };
	v[2] = (struct iovec){ buf + 5, 0 };
	v[3] = (struct iovec){ buf + 5, 3 };
	v[4] = (struct iovec){ buf + 8, 0 };
	T_ASSERT_EQ(chan_sendv(p->a, v, 5, CHAN_NONBLOCK), 8);
	tx_off += 8;
	memset(buf, 0, 16);
	v[0] = (struct iovec){ buf, 0 };
	v[1] = (struct iovec){ buf, 2 };
	v[2] = (struct iovec){ buf + 2, 0 };
	v[3] = (struct iovec){ buf + 2, 6 };
	v[4] = (struct iovec){ buf + 8, 0 };
	T_ASSERT_EQ(chan_recvv(p->b, v, 5, CHAN_NONBLOCK), 8);
	if (t_verify(SEED, rx_off, buf, 8))
		t_fail("vector with empty segments: wrong bytes");
	rx_off += 8;
	expect_eagain_recv(p->b, "after vectors");
}

int main(void)
{
	struct chan_stats st;
	struct t_pair p;

	t_alarm(50);
	cap = t_long() ? 65536 : 4096;
	buf = malloc(2 * (size_t)cap + 16);
	T_ASSERT(buf);
	t_chan_pair(&p, cap, false, 0, CHAN_WAIT_ADAPTIVE);

	test_empty(&p);
	test_fill_bytewise(&p);
	test_fill_one_call(&p);
	test_every_size(&p);
	test_both_directions(&p);
	test_zero_length(&p);

	T_ASSERT_EQ(tx_off, rx_off);
	chan_stats(p.a, &st);
	T_ASSERT_EQ(st.sent, tx_off);
	T_ASSERT_EQ(st.ring_size, cap);
	T_ASSERT(st.tx_on_ring && st.rx_on_ring);
	chan_stats(p.b, &st);
	T_ASSERT_EQ(st.received, rx_off);
	printf("ring %u: %llu bytes through the ring\n", cap,
	       (unsigned long long)rx_off);
	t_chan_pair_close(&p);
	free(buf);
	return T_PASS;
}
