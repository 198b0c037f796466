/* SPDX-License-Identifier: MIT */
/*
 * Description: rings that grow (docs/protocol.md 3.7). A producer whose
 * ring S is full goes deep into the large area L: a non-blocking send takes
 * exactly S + L bytes before -EAGAIN, and they come back in order; both
 * ends can each send S + L before either reads (what a fixed ring cannot
 * do); once everything is read the producer's next call (a receive will
 * do) comes back to S and L's pages go back (the region's allocated blocks
 * fall); a reservation taken when S
 * is full points into L; a peek copies (and FIONREAD counts) across X and
 * across L's end; two
 * processes stream with random sizes, the
 * reader taking less per call than the writer gives, crossing S/L many
 * times; and the
 * counter arithmetic holds for a deep episode that outlasts 2^32 bytes
 * (driven on the ring functions directly).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "helpers.h"
#include "ring/ring.h"
#include "t_chan.h"
#include "t_stream.h"

#define RING (16u * 1024)
#define DEEP (64u * 1024)
#define SEED_AB 0x96a
#define SEED_BA 0x96b

static uint8_t buf[2 * (RING + DEEP)];

static struct chan_stats stats(struct chan *c)
{
	struct chan_stats st;

	chan_stats(c, &st);
	return st;
}

/* Non-blocking sends of the stream until -EAGAIN; returns bytes taken. */
static uint64_t fill(struct chan *c, uint64_t seed, uint64_t off)
{
	uint64_t taken = 0;

	for (int i = 0; i < 1000; i++) {
		ssize_t r;

		t_fill(seed, off + taken, buf, 5000);
		r = t_send(c, buf, 5000, CHAN_NONBLOCK);
		if (r == -EAGAIN)
			return taken;
		if (r <= 0)
			t_fail("fill: send: %zd (%s)", r, t_strerror(r));
		taken += (uint64_t)r;
	}
	t_fail("fill: never full");
}

/* Receive n bytes of the stream (non-blocking: they are all there). */
static void drain(struct chan *c, uint64_t seed, uint64_t off, uint64_t n)
{
	for (int i = 0; n; i++) {
		ssize_t r = t_recv(c, buf, n < sizeof(buf) ? n : sizeof(buf),
				   CHAN_NONBLOCK);

		if (r <= 0 || i > 1000)
			t_fail("drain: recv at %llu (%llu left): %zd (%s)",
			       (unsigned long long)off, (unsigned long long)n,
			       r, t_strerror(r));
		if (t_verify(seed, off, buf, (size_t)r))
			t_fail("drain: wrong bytes at offset %llu",
			       (unsigned long long)off);
		off += (uint64_t)r;
		n -= (uint64_t)r;
	}
}

static uint64_t region_bytes(int fd)
{
	struct stat st;

	T_ASSERT(fstat(fd, &st) == 0);
	return (uint64_t)st.st_blocks * 512;
}

static void fill_drain_and_give_back(void)
{
	struct t_pair p;
	uint64_t n, full, after;

	t_chan_pair(&p, RING, false, 0, CHAN_WAIT_ADAPTIVE);
	n = fill(p.a, SEED_AB, 0);
	if (n != RING + DEEP)
		t_fail("a full S and L took %llu bytes, want %u",
		       (unsigned long long)n, RING + DEEP);
	T_ASSERT(stats(p.a).tx_deep);
	T_ASSERT_EQ(stats(p.a).deeps, 1);
	full = region_bytes(p.region);
	drain(p.b, SEED_AB, 0, n);
	/* Everything read: the producer's next call on the channel, a
	 * receive here (a client waiting for its answer), comes back to S
	 * and gives L back. */
	T_ASSERT_EQ(t_recv(p.a, buf, 1, CHAN_NONBLOCK), -EAGAIN);
	T_ASSERT(!stats(p.a).tx_deep);
	after = region_bytes(p.region);
	t_fill(SEED_AB, n, buf, 10);
	T_ASSERT_EQ(t_send(p.a, buf, 10, CHAN_NONBLOCK), 10);
	printf("region: %llu bytes allocated deep, %llu back in S\n",
	       (unsigned long long)full, (unsigned long long)after);
	if (full < RING + DEEP || after > full - DEEP)
		t_fail("L's pages were not given back: %llu then %llu bytes",
		       (unsigned long long)full, (unsigned long long)after);
	drain(p.b, SEED_AB, n, 10);
	/* And it goes deep again, as often as S fills. */
	T_ASSERT_EQ(fill(p.a, SEED_AB, n + 10), RING + DEEP);
	T_ASSERT_EQ(stats(p.a).deeps, 2);
	drain(p.b, SEED_AB, n + 10, RING + DEEP);
	t_chan_pair_close(&p);
}

/* A peek (chan_peekv(), what the preload's MSG_PEEK uses) copies all
 * that is readable, across X and across L's end, and consumes nothing;
 * chan_nread() (its FIONREAD) counts it all. */
static void peek_expect(struct chan *c, uint64_t off, uint64_t want)
{
	static uint8_t pk[RING + DEEP];
	struct iovec v[2] = { { pk, 7 }, { pk + 7, sizeof(pk) - 7 } };
	ssize_t r = chan_peekv(c, v, 2);

	if (r != (ssize_t)want)
		t_fail("peek at %llu: %zd (%s), want %llu",
		       (unsigned long long)off, r, t_strerror(r),
		       (unsigned long long)want);
	if (t_verify(SEED_AB, off, pk, (size_t)r))
		t_fail("peek at %llu: wrong bytes", (unsigned long long)off);
	/* FIONREAD through the preload: every piece too. */
	T_ASSERT_EQ(chan_nread(c), (ssize_t)want);
}

static void peek_across(void)
{
	struct t_pair p;
	uint64_t sent;

	t_chan_pair(&p, RING, false, 0, CHAN_WAIT_ADAPTIVE);
	sent = fill(p.a, SEED_AB, 0); /* S, then L from its start */
	peek_expect(p.b, 0, sent); /* across X */
	drain(p.b, SEED_AB, 0, RING + DEEP / 2);
	peek_expect(p.b, RING + DEEP / 2, DEEP / 2);
	/* Half of L is free again: the producer wraps round L's end. */
	sent += fill(p.a, SEED_AB, sent);
	T_ASSERT_EQ(sent, RING + DEEP + DEEP / 2);
	peek_expect(p.b, RING + DEEP / 2, DEEP); /* across L's end */
	drain(p.b, SEED_AB, RING + DEEP / 2, DEEP);
	T_ASSERT_EQ(chan_peekv(p.b, &(struct iovec){ buf, 10 }, 1), -EAGAIN);
	t_chan_pair_close(&p);
}

/* What TCP allows and a fixed ring did not: both send, then both read. */
static void both_send_then_read(void)
{
	struct t_pair p;

	t_chan_pair(&p, RING, false, 0, CHAN_WAIT_ADAPTIVE);
	T_ASSERT_EQ(fill(p.a, SEED_AB, 0), RING + DEEP);
	T_ASSERT_EQ(fill(p.b, SEED_BA, 0), RING + DEEP);
	drain(p.b, SEED_AB, 0, RING + DEEP);
	drain(p.a, SEED_BA, 0, RING + DEEP);
	t_chan_pair_close(&p);
}

/* A reservation with S full is in L, and what is committed there arrives. */
static void reserve_in_l(void)
{
	struct t_pair p;
	void *w;
	ssize_t r;

	t_chan_pair(&p, RING, false, 0, CHAN_WAIT_ADAPTIVE);
	t_fill(SEED_AB, 0, buf, RING);
	T_ASSERT_EQ(t_send(p.a, buf, RING, CHAN_NONBLOCK), RING);
	r = chan_reserve(p.a, &w, CHAN_NONBLOCK);
	if (r != DEEP)
		t_fail("reserve with S full: %zd (%s), want all of L (%u)", r,
		       t_strerror(r), DEEP);
	T_ASSERT(stats(p.a).tx_deep);
	t_fill(SEED_AB, RING, w, 3000);
	T_ASSERT_OK(chan_commit(p.a, 3000, 0));
	drain(p.b, SEED_AB, 0, RING + 3000);
	t_chan_pair_close(&p);
}

static struct t_pair sp;
static struct t_pump rx;

static void stream_reader(void *arg)
{
	(void)arg;
	chan_close(sp.a);
	sp.a = NULL;
	rx.c = sp.b;
	t_pump_recv(&rx);
}

/* Two processes, random sizes, a reader slower per call than the writer. */
static void stream_two_processes(void)
{
	uint64_t total = t_long() ? 4ull << 30 : 256ull << 20;
	uint64_t deadline = t_now_ns() + 40ull * 1000000000ull * t_slow();
	struct t_pump tx = { .name = "a->b send", .seed = SEED_AB, .end = total,
			     .rng = 0x1234, .max_io = 3 * RING,
			     .deadline_ns = deadline, .shut = true };
	pid_t pid;

	rx = (struct t_pump){ .name = "a->b recv", .seed = SEED_AB,
			      .end = total, .rng = 0x4321, .max_io = RING / 2,
			      .deadline_ns = deadline, .shut = true };
	t_chan_pair(&sp, RING, false, 0, CHAN_WAIT_ADAPTIVE);
	pid = t_fork(stream_reader, NULL);
	chan_close(sp.b);
	sp.b = NULL;
	tx.c = sp.a;
	t_pump_send(&tx);
	T_ASSERT_EQ(t_wait(pid, 60000 * (int)t_slow()), 0);
	printf("streamed %llu MiB a->b, went deep %llu times\n",
	       (unsigned long long)(total >> 20),
	       (unsigned long long)stats(sp.a).deeps);
	if (!stats(sp.a).deeps)
		t_fail("a stream with a slower reader never went deep");
	t_chan_pair_close(&sp);
}

/*
 * A deep episode longer than 2^32 bytes, on the ring functions: the
 * producer went deep at X and has since written 2^32 - 100 + 300 bytes,
 * so its counter is 200 bytes past X again (mod 2^32); the consumer has
 * read all but the last 300. Neither may take X for a point ahead.
 */
static void episode_past_2e32(void)
{
	static uint8_t s_mem[2 * RING], l_mem[DEEP];
	static struct ivmc_shm_dir dir;
	struct ring r = { &dir, s_mem, RING, DEEP, l_mem };
	uint32_t x = 0x70000000u, ctr = x + 200, space, n;
	/* past_x: the consumer read S long ago; l_all: L was filled to
	 * its end long ago (ring_free() saw it). */
	struct ring_prod pr = { ivmc_w_make(1, ctr), ctr, ctr - 300, x, true,
				true, true };
	struct ring_cons cr = { ctr - 300, ctr - 300, 1, x, true, true };
	uint8_t *ptr;
	uint64_t w;

	ivmc_store_once(&dir.prod, ivmc_w_make(1, ctr));
	ivmc_store_once(&dir.cons, ivmc_w_make(1, ctr - 300));
	ivmc_store_once(&dir.deep, ivmc_deep_make(true, x));
	T_ASSERT_OK(ring_free(&r, &pr, DEEP, &space));
	T_ASSERT_EQ(space, DEEP - 300);
	T_ASSERT(ring_wptr(&r, &pr) == l_mem + ((ctr - x) & (DEEP - 1)));
	/* The 300 bytes start 100 before L's end (L is not mirrored). */
	n = ring_span(&r, &pr, ctr - 300, 300, &ptr);
	T_ASSERT_EQ(n, 100);
	T_ASSERT(ptr == l_mem + DEEP - 100);
	n = ring_span(&r, &pr, ctr - 200, 200, &ptr);
	T_ASSERT_EQ(n, 200);
	T_ASSERT(ptr == l_mem);
	T_ASSERT_OK(ring_load_prod(&r, &cr, &w));
	T_ASSERT_EQ(ring_avail(&r, &cr), 100);
	T_ASSERT(ring_rptr(&r, &cr) == l_mem + DEEP - 100);
	ring_consume(&r, &cr, 100);
	T_ASSERT_EQ(ring_avail(&r, &cr), 200);
	T_ASSERT(ring_rptr(&r, &cr) == l_mem);
	/* Not yet past X (the consumer still in S): S up to X, then L. */
	/* The consumer read all: back to S, and all of L to give back,
	 * though ctr - x (200) says otherwise. */
	ivmc_store_once(&dir.cons, ivmc_w_make(1, ctr));
	/* A consumer word past what was written is a lie, seen here too. */
	ivmc_store_once(&dir.cons, ivmc_w_make(1, ctr + 5));
	T_ASSERT_EQ(ring_go_shallow(&r, &pr, &n), -EPROTO);
	ivmc_store_once(&dir.cons, ivmc_w_make(1, ctr));
	T_ASSERT_OK(ring_go_shallow(&r, &pr, &n));
	T_ASSERT_EQ(n, DEEP);
	T_ASSERT(!pr.deep);
	T_ASSERT_EQ(ivmc_load_once(&dir.deep), ivmc_deep_make(false, ctr));
	pr = (struct ring_prod){ ivmc_w_make(1, x + 50), x + 50, x - 100, x,
				 true, false, false };
	T_ASSERT_OK(ring_free(&r, &pr, 1, &space));
	T_ASSERT_EQ(space, DEEP - 50);
	n = ring_span(&r, &pr, x - 100, 150, &ptr);
	T_ASSERT_EQ(n, 100);
	T_ASSERT(ptr == s_mem + ((x - 100) & (RING - 1)));
	n = ring_span(&r, &pr, x, 50, &ptr);
	T_ASSERT_EQ(n, 50);
	T_ASSERT(ptr == l_mem);
}

int main(void)
{
	t_alarm(t_long() ? 600 : 90);
	t_deep_size = DEEP;
	fill_drain_and_give_back();
	both_send_then_read();
	reserve_in_l();
	peek_across();
	episode_past_2e32();
	stream_two_processes();
	return T_PASS;
}
