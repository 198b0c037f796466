/* SPDX-License-Identifier: MIT */
/*
 * Description: ring counters that start at 2^32 - k (k = 1, 7, 4096,
 * ring_size - 1, ring_size + 3) wrap through 2^32 without losing,
 * repeating or reordering a byte: a stream each way with random sizes is
 * verified byte by byte, ring-only and with a side stream, where epochs are
 * also opened and closed (by producer and consumer) right at the wrap.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

#include "helpers.h"
#include "t_chan.h"

#define RING 4096u
#define IO_MAX (2 * RING + 5)

/* One direction driven by non-blocking calls from a single thread. */
struct dir {
	struct chan *tx, *rx;
	const char *name;
	uint64_t seed, tx_off, rx_off;
};

static uint8_t txbuf[IO_MAX], rxbuf[3 * RING];
static uint64_t rng = 1;
static char where[96];
static uint64_t limit_ns = 40000000000ull; /* per stream */

/* Send up to n bytes (what the ring or side stream takes now). */
static void step_send(struct dir *d, size_t n)
{
	ssize_t r;

	t_fill(d->seed, d->tx_off, txbuf, n);
	r = t_send(d->tx, txbuf, n, CHAN_NONBLOCK);
	if (r == -EAGAIN)
		return;
	if (r <= 0 || (size_t)r > n)
		t_fail("%s %s: non-blocking send of %zu at offset %llu: %zd (%s)",
		       where, d->name, n, (unsigned long long)d->tx_off, r,
		       t_strerror(r));
	d->tx_off += (uint64_t)r;
}

/* Receive whatever is there (a few calls), verifying it. */
static void step_recv(struct dir *d)
{
	for (int i = 0; i < 4 && d->rx_off < d->tx_off; i++) {
		size_t n = 1 + t_rand64(&rng) % sizeof(rxbuf);
		ssize_t r = t_recv(d->rx, rxbuf, n, CHAN_NONBLOCK);

		if (r == -EAGAIN)
			return;
		if (r <= 0 || d->rx_off + (uint64_t)r > d->tx_off)
			t_fail("%s %s: recv of %zu at offset %llu (%llu sent): %zd (%s)",
			       where, d->name, n, (unsigned long long)d->rx_off,
			       (unsigned long long)d->tx_off, r, t_strerror(r));
		if (t_verify(d->seed, d->rx_off, rxbuf, (size_t)r))
			t_fail("%s %s: wrong bytes in [%llu, %llu)", where,
			       d->name, (unsigned long long)d->rx_off,
			       (unsigned long long)(d->rx_off + (uint64_t)r));
		d->rx_off += (uint64_t)r;
	}
}

/* Receive until everything sent so far has arrived. */
static void drain(struct dir *d)
{
	for (int i = 0; d->rx_off < d->tx_off; i++) {
		if (i > 100000)
			t_fail("%s %s: %llu bytes sent, only %llu arrive",
			       where, d->name, (unsigned long long)d->tx_off,
			       (unsigned long long)d->rx_off);
		step_recv(d);
	}
}

static void init_dirs(struct t_pair *p, struct dir d[2])
{
	d[0] = (struct dir){ p->a, p->b, "a->b", 0xa2b, 0, 0 };
	d[1] = (struct dir){ p->b, p->a, "b->a", 0xb2a, 0, 0 };
}

static void toggle(struct chan *c, enum chan_dir dir, bool attach)
{
	int err = attach ? chan_attach(c, dir) : chan_detach(c, dir);

	if (err)
		t_fail("%s: chan_%s(%s): %d (%s)", where,
		       attach ? "attach" : "detach",
		       dir == CHAN_TX ? "TX" : "RX", err, t_strerror(err));
}

/* Random streaming both ways until total bytes went each way. With a side
 * stream, switch at random during the first switch_bytes of the stream. */
static void stream(struct t_pair *p, uint64_t total, uint64_t switch_bytes)
{
	struct dir d[2];
	uint64_t next_switch = 0, deadline = t_now_ns() + limit_ns;
	uint64_t steps = 0;
	int switches = 0;

	init_dirs(p, d);
	while (d[0].rx_off < total || d[1].rx_off < total) {
		for (int i = 0; i < 2; i++) {
			uint64_t left = total - d[i].tx_off;
			size_t n = 1 + t_rand64(&rng) % IO_MAX;

			if (left)
				step_send(&d[i], n < left ? n : (size_t)left);
			step_recv(&d[i]);
		}
		if (p->side[0] >= 0 && d[0].tx_off < switch_bytes &&
		    d[0].tx_off >= next_switch) {
			uint64_t x = t_rand64(&rng);
			struct chan *c = x & 1 ? p->b : p->a;

			toggle(c, (x >> 1) & 1 ? CHAN_RX : CHAN_TX,
			       (x >> 2) & 1);
			next_switch = d[0].tx_off + t_rand64(&rng) % RING;
			switches++;
		}
		if (++steps > 100000000ull || t_now_ns() > deadline)
			t_fail("%s: no end after %llu steps (a->b %llu/%llu, b->a %llu/%llu)",
			       where, (unsigned long long)steps,
			       (unsigned long long)d[0].rx_off,
			       (unsigned long long)d[0].tx_off,
			       (unsigned long long)d[1].rx_off,
			       (unsigned long long)d[1].tx_off);
	}
	if (switches)
		printf("%s: %d random switches\n", where, switches);
}

static void case_stream(uint32_t k, bool with_side, uint64_t total)
{
	struct t_pair p;

	snprintf(where, sizeof(where), "k=%u %s", k,
		 with_side ? "with side stream" : "ring-only");
	t_chan_pair(&p, RING, with_side, (uint32_t)(0u - k),
		    CHAN_WAIT_ADAPTIVE);
	stream(&p, total, with_side ? 64 * RING : 0);
	t_chan_pair_close(&p);
}

/*
 * With a side stream: the first epoch carries exactly k + delta ring bytes
 * (so its end is at counter delta, just around the wrap), is closed by the
 * producer (or the consumer), some bytes go on the side stream, and the next
 * epoch opens at that counter.
 */
static void case_epoch_at_wrap(uint32_t k, int delta, bool by_consumer)
{
	struct t_pair p;
	struct dir d[2];
	struct chan_stats st;
	uint64_t first = (uint64_t)k + (uint64_t)(int64_t)delta;

	snprintf(where, sizeof(where), "k=%u epoch end at ctr %d, closed by %s",
		 k, delta, by_consumer ? "consumer" : "producer");
	t_chan_pair(&p, RING, true, (uint32_t)(0u - k), CHAN_WAIT_ADAPTIVE);
	init_dirs(&p, d);
	while (d[0].tx_off < first) {
		uint64_t left = first - d[0].tx_off;

		step_send(&d[0], left < IO_MAX ? (size_t)left : IO_MAX);
		step_recv(&d[0]);
	}
	drain(&d[0]);
	chan_stats(p.a, &st);
	if (!st.tx_on_ring)
		t_fail("%s: the first epoch never opened", where);
	if (by_consumer)
		toggle(p.b, CHAN_RX, false);
	else
		toggle(p.a, CHAN_TX, false);
	step_send(&d[0], 100); /* on the side stream */
	chan_stats(p.a, &st);
	if (st.tx_on_ring && !by_consumer)
		t_fail("%s: still on the ring after detach", where);
	drain(&d[0]);
	toggle(by_consumer ? p.b : p.a, by_consumer ? CHAN_RX : CHAN_TX, true);
	/* The next epoch opens at the next send, at counter delta. */
	for (int i = 0; i < 20; i++) {
		step_send(&d[0], 1 + t_rand64(&rng) % IO_MAX);
		drain(&d[0]);
	}
	chan_stats(p.a, &st);
	if (!st.tx_on_ring)
		t_fail("%s: the second epoch never opened", where);
	t_chan_pair_close(&p);
}

int main(void)
{
	uint32_t ks[] = { 1, 7, 4096, RING - 1, RING + 3 };
	uint64_t total = 64ull << 20;

	t_alarm(t_long() ? 800 : 55);
	if (t_long())
		limit_ns = 600000000000ull;
	for (size_t i = 0; i < sizeof(ks) / sizeof(ks[0]); i++) {
		case_stream(ks[i], false, total);
		case_stream(ks[i], true, total / 4);
		for (int delta = -1; delta <= 1; delta++) {
			if (ks[i] + delta == 0)
				continue; /* no first epoch to end */
			case_epoch_at_wrap(ks[i], delta, false);
			case_epoch_at_wrap(ks[i], delta, true);
		}
	}
	if (t_long()) {
		/* Past 2^32 twice: the counter comes all the way round. */
		case_stream(7, false, (9ull << 30) / 2 + 12345);
	}
	return T_PASS;
}
