/* SPDX-License-Identifier: MIT */
/*
 * Description: zero-copy reserve/commit and peek/release. Reserve hands out
 * all free space contiguously, commits publish exactly what they say (in
 * pieces, or deferred with IVMC_MORE), peek sees exactly the committed
 * bytes, contiguous across the ring's wrap (mirror map), release consumes
 * them in pieces; too long a commit or release is -EINVAL and changes
 * nothing; zero-copy calls mix with send/recv in stream order; and a 64 MiB
 * checksummed stream goes reserve/commit -> peek/release between processes.
 */
#include <sys/socket.h>

#include "t_api.h"

#define RING 4096
#define SEED 0x5eed

static char path[128];

/* Bytes the peer can see right now (nothing published: 0). */
static ssize_t visible(struct ivmc_chan *c)
{
	const void *p;
	ssize_t n = ivmc_peek(c, &p, IVMC_NONBLOCK);

	return n == -EAGAIN ? 0 : n;
}

/* Peek (non-blocking) with everything earlier released, so the consumer
 * loads the producer's counter afresh: exactly want bytes of stream SEED
 * at offset off must be visible, in one contiguous span. */
static const uint8_t *peek_exactly(struct ivmc_chan *c, uint64_t off,
				   ssize_t want)
{
	const void *p = NULL;
	ssize_t n = ivmc_peek(c, &p, IVMC_NONBLOCK);

	if (n != want)
		t_fail("peek at stream offset %llu: %zd (%s), want %zd bytes",
		       (unsigned long long)off, n, t_strerror(n), want);
	if (t_verify(SEED, off, p, (size_t)n))
		t_fail("peek at stream offset %llu: wrong bytes",
		       (unsigned long long)off);
	return p;
}

/* Consume exactly want bytes at offset off with peek/release in pieces of
 * at most piece bytes; no peek may show more than was committed, and
 * nothing may be left after them. */
static void drain_exactly(struct ivmc_chan *c, uint64_t off, size_t want,
			  size_t piece)
{
	uint64_t end = off + want;

	while (off < end) {
		const void *p;
		ssize_t n = ivmc_peek(c, &p, IVMC_NONBLOCK);
		size_t k;

		if (n <= 0 || (uint64_t)n > end - off)
			t_fail("peek at %llu: %zd (%s), want 1..%llu bytes",
			       (unsigned long long)off, n, t_strerror(n),
			       (unsigned long long)(end - off));
		if (t_verify(SEED, off, p, (size_t)n))
			t_fail("peek at %llu: wrong bytes",
			       (unsigned long long)off);
		k = (size_t)n < piece ? (size_t)n : piece;
		T_ASSERT_EQ(ivmc_release(c, (size_t)n + 1), -EINVAL);
		T_ASSERT_OK(ivmc_release(c, k));
		/* That peek is used up: even one more byte is refused. */
		T_ASSERT_EQ(ivmc_release(c, 1), -EINVAL);
		off += k;
	}
	T_ASSERT_EQ(visible(c), 0);
}

/* Reserve (non-blocking); expect at least min bytes; return the count. */
static ssize_t reserve(struct ivmc_chan *c, void **buf, ssize_t min)
{
	ssize_t n = ivmc_reserve(c, buf, IVMC_NONBLOCK);

	if (n < min)
		t_fail("reserve: %zd (%s), want >= %zd", n, t_strerror(n), min);
	return n;
}

static void basics(void)
{
	struct ivmc_opts o = { .ring_size = RING };
	struct ivmc_chan *a, *b;
	const void *cp;
	void *buf, *buf2;
	ssize_t n;

	t_api_pair(path, &o, &o, &a, &b);
	T_ASSERT_EQ(ivmc_peek(b, &cp, IVMC_NONBLOCK), -EAGAIN);
	T_ASSERT_EQ(ivmc_release(b, 1), -EINVAL);
	T_ASSERT_EQ(ivmc_release(b, 0), 0);
	T_ASSERT_EQ(ivmc_commit(a, 1, 0), -EINVAL);
	T_ASSERT_EQ(ivmc_reserve(a, NULL, 0), -EINVAL);
	T_ASSERT_EQ(ivmc_peek(b, NULL, 0), -EINVAL);
	T_ASSERT_EQ(ivmc_commit(a, 0, IVMC_NONBLOCK), -EINVAL);
	T_ASSERT_EQ(ivmc_reserve(a, &buf, IVMC_MORE), -EINVAL);

	/* An empty ring: all of it, contiguous. */
	n = reserve(a, &buf, RING);
	T_ASSERT_EQ(n, RING);
	t_fill(SEED, 0, buf, RING); /* written, but not all committed */
	T_ASSERT_EQ(ivmc_commit(a, RING + 1, 0), -EINVAL);
	T_ASSERT_EQ(visible(b), 0);
	/* Commit in pieces: each piece is published, nothing more. */
	T_ASSERT_OK(ivmc_commit(a, 100, 0));
	peek_exactly(b, 0, 100);
	n = reserve(a, &buf2, RING - 100);
	T_ASSERT_EQ(n, RING - 100);
	T_ASSERT(buf2 == (uint8_t *)buf + 100);
	T_ASSERT_OK(ivmc_commit(a, 50, 0));
	reserve(a, &buf2, RING - 150);
	T_ASSERT(buf2 == (uint8_t *)buf + 150);
	T_ASSERT_OK(ivmc_commit(a, 250, 0));
	/* A commit with no reservation behind it. */
	T_ASSERT_EQ(ivmc_commit(a, 1, 0), -EINVAL);
	/* Release in pieces: 400 bytes, never more. */
	drain_exactly(b, 0, 400, 30);
	T_ASSERT_EQ(ivmc_peek(b, &cp, IVMC_NONBLOCK), -EAGAIN);

	/* The released space comes back to the producer: the ring is
	 * empty, and reserve is documented to hand out all free space. */
	n = reserve(a, &buf, 1);
	if (n != RING)
		t_late_fail(
			"ivmc_reserve() on an empty %u-byte ring (consumer released everything) returned %zd bytes, want all free space (%u)",
			RING, n, RING);
	T_ASSERT_OK(ivmc_commit(a, 0, 0)); /* an empty commit is allowed */
	T_ASSERT_EQ(visible(b), 0);
	T_ASSERT_OK(ivmc_close(a));
	T_ASSERT_OK(ivmc_close(b));
}

static void more_deferral(void)
{
	struct ivmc_opts o = { .ring_size = RING };
	struct ivmc_chan *a, *b;
	uint8_t tmp[64];
	void *buf;

	t_api_pair(path, &o, &o, &a, &b);
	reserve(a, &buf, 100);
	t_fill(SEED, 0, buf, 100);
	T_ASSERT_OK(ivmc_commit(a, 100, IVMC_MORE));
	/* Held back: neither peek nor recv sees it. */
	T_ASSERT_EQ(visible(b), 0);
	T_ASSERT_EQ(ivmc_recv(b, tmp, sizeof(tmp), IVMC_NONBLOCK), -EAGAIN);
	reserve(a, &buf, 50);
	t_fill(SEED, 100, buf, 50);
	T_ASSERT_OK(ivmc_commit(a, 50, IVMC_MORE));
	T_ASSERT_EQ(visible(b), 0);
	/* A send with IVMC_MORE also waits; one without publishes it all. */
	t_fill(SEED, 150, tmp, 10);
	T_ASSERT_EQ(ivmc_send(a, tmp, 10, IVMC_MORE), 10);
	T_ASSERT_EQ(visible(b), 0);
	t_fill(SEED, 160, tmp, 10);
	T_ASSERT_EQ(ivmc_send(a, tmp, 10, 0), 10);
	peek_exactly(b, 0, 170);
	drain_exactly(b, 0, 170, 64);
	/* Deferred commit, then a plain commit publishes both. */
	reserve(a, &buf, 30);
	t_fill(SEED, 170, buf, 30);
	T_ASSERT_OK(ivmc_commit(a, 30, IVMC_MORE));
	T_ASSERT_EQ(visible(b), 0);
	reserve(a, &buf, 30);
	t_fill(SEED, 200, buf, 30);
	T_ASSERT_OK(ivmc_commit(a, 30, 0));
	peek_exactly(b, 170, 60);
	drain_exactly(b, 170, 60, 1000);
	/* Deferred, then shutdown: every byte before the end is published. */
	reserve(a, &buf, 20);
	t_fill(SEED, 230, buf, 20);
	T_ASSERT_OK(ivmc_commit(a, 20, IVMC_MORE));
	T_ASSERT_EQ(visible(b), 0);
	T_ASSERT_OK(ivmc_shutdown(a, SHUT_WR));
	peek_exactly(b, 230, 20);
	T_ASSERT_OK(ivmc_release(b, 20));
	T_ASSERT_EQ(ivmc_peek(b, (const void **)&buf, 0),
		    0); /* end of stream */
	T_ASSERT_OK(ivmc_close(a));
	T_ASSERT_OK(ivmc_close(b));
}

/* Reserve and peek across the end of the ring: one contiguous span. */
static void wrap(void)
{
	static uint8_t tmp[RING];
	struct ivmc_opts o = { .ring_size = RING };
	struct ivmc_chan *a, *b;
	const uint8_t *p;
	uint64_t off = 0;
	void *buf;
	ssize_t n;

	t_api_pair(path, &o, &o, &a, &b);
	/* Bring the producer to 96 bytes before the end of the ring with an
	 * empty ring behind it: fill, read 4000, refill those 4000 by
	 * reserve (its view of the consumer is then fresh), read all. */
	t_fill(SEED, 0, tmp, RING);
	t_send_all(a, tmp, RING);
	T_ASSERT_EQ(ivmc_reserve(a, &buf, IVMC_NONBLOCK), -EAGAIN); /* full */
	t_recv_all(b, tmp, RING - 96);
	T_ASSERT(t_verify(SEED, 0, tmp, RING - 96) == 0);
	T_ASSERT_EQ(reserve(a, &buf, RING - 96), RING - 96);
	t_fill(SEED, RING, buf, RING - 96);
	T_ASSERT_OK(ivmc_commit(a, RING - 96, 0));
	t_recv_all(b, tmp, RING);
	T_ASSERT(t_verify(SEED, RING - 96, tmp, RING) == 0);
	off = 2 * RING - 96;

	/* Now all of the ring, from 96 bytes before its end. */
	T_ASSERT_EQ(reserve(a, &buf, RING), RING);
	t_fill(SEED, off, buf, RING); /* writes through the wrap */
	T_ASSERT_OK(ivmc_commit(a, 1000, 0));
	p = peek_exactly(b, off, 1000);
	/* The span crosses the end of the ring: its two halves are one. */
	T_ASSERT(t_verify(SEED, off, p, 1000) == 0);
	/* Release up to the wrap, then the rest, re-peeking in between. */
	T_ASSERT_OK(ivmc_release(b, 96));
	peek_exactly(b, off + 96, 904);
	T_ASSERT_OK(ivmc_release(b, 904));
	off += 1000;
	/* What reserve gives now, committed at once: peek sees it all. */
	n = reserve(a, &buf, RING - 1000);
	t_fill(SEED, off, buf, (size_t)n);
	T_ASSERT_OK(ivmc_commit(a, (size_t)n, 0));
	peek_exactly(b, off, n);
	T_ASSERT_OK(ivmc_release(b, (size_t)n));
	off += (uint64_t)n;
	/* recv sees the same stream order after zero-copy. */
	t_fill(SEED, off, tmp, 500);
	t_send_all(a, tmp, 500);
	memset(tmp, 0, 500);
	t_recv_all(b, tmp, 500);
	T_ASSERT(t_verify(SEED, off, tmp, 500) == 0);
	T_ASSERT_OK(ivmc_close(a));
	T_ASSERT_OK(ivmc_close(b));
}

/* Random mix of send, reserve/commit (with and without IVMC_MORE) against
 * recv and peek/release, all non-blocking in one thread: one stream. */
static void mix(void)
{
	static uint8_t tmp[RING];
	struct ivmc_opts o = { .ring_size = RING };
	struct ivmc_chan *a, *b;
	uint64_t wr = 0, rd = 0, rng = 99, total = 4u << 20;
	bool shut = false;

	t_api_pair(path, &o, &o, &a, &b);
	for (int it = 0; it < 400000 && rd < total; it++) {
		uint64_t r = t_rand64(&rng);
		size_t k = 1 + (size_t)((r >> 8) % RING);
		const void *cp;
		void *buf;
		ssize_t n;

		if (wr == total && !shut) {
			/* Publishes what IVMC_MORE still holds back. */
			T_ASSERT_OK(ivmc_shutdown(a, SHUT_WR));
			shut = true;
		}
		if (wr < total && (r & 1)) { /* write */
			if (k > total - wr)
				k = (size_t)(total - wr);
			if (r & 2) {
				t_fill(SEED, wr, tmp, k);
				n = ivmc_send(a, tmp, k,
					      IVMC_NONBLOCK |
						      ((r & 4) ? IVMC_MORE :
								 0));
				if (n == -EAGAIN)
					continue;
				T_ASSERT_OK(n);
				wr += (uint64_t)n;
				continue;
			}
			n = ivmc_reserve(a, &buf, IVMC_NONBLOCK);
			if (n == -EAGAIN)
				continue;
			T_ASSERT_OK(n);
			if (k > (size_t)n)
				k = (size_t)n;
			t_fill(SEED, wr, buf, k);
			T_ASSERT_OK(ivmc_commit(a, k, (r & 4) ? IVMC_MORE : 0));
			wr += k;
			continue;
		}
		if (r & 2) { /* read */
			n = ivmc_recv(b, tmp, k, IVMC_NONBLOCK);
			if (n == -EAGAIN)
				continue;
			T_ASSERT(n > 0);
			if (t_verify(SEED, rd, tmp, (size_t)n))
				t_fail("mix: recv at offset %llu wrong",
				       (unsigned long long)rd);
			rd += (uint64_t)n;
			continue;
		}
		n = ivmc_peek(b, &cp, IVMC_NONBLOCK);
		if (n == -EAGAIN)
			continue;
		T_ASSERT(n > 0);
		if (k > (size_t)n)
			k = (size_t)n;
		if (t_verify(SEED, rd, cp, (size_t)n))
			t_fail("mix: peek at offset %llu wrong",
			       (unsigned long long)rd);
		T_ASSERT_OK(ivmc_release(b, k));
		rd += k;
	}
	if (rd != total)
		t_fail("mix: read %llu of %llu bytes (written %llu)",
		       (unsigned long long)rd, (unsigned long long)total,
		       (unsigned long long)wr);
	T_ASSERT(shut);
	T_ASSERT_EQ(ivmc_recv(b, tmp, 1, 0), 0);
	T_ASSERT_OK(ivmc_close(a));
	T_ASSERT_OK(ivmc_close(b));
}

/* ---- 64 MiB across two processes ---- */

static uint64_t big_total(void)
{
	return t_long() ? 1ull << 30 : 64ull << 20;
}

static void producer(void *arg)
{
	struct ivmc_opts o = { .ring_size = 65536 };
	uint64_t off = 0, rng = 1234, total = big_total();
	uint64_t sum = T_CHECKSUM_INIT;
	int *sum_fd = arg;
	struct ivmc_chan *c;

	T_ASSERT_OK(ivmc_connect(path, &o, &c));
	while (off < total) {
		uint64_t r = t_rand64(&rng);
		void *buf;
		ssize_t n = ivmc_reserve(c, &buf, 0);
		size_t k;

		if (n <= 0)
			t_fail("reserve at %llu: %zd (%s)",
			       (unsigned long long)off, n, t_strerror(n));
		k = 1 + (size_t)(r % (uint64_t)n);
		if (k > total - off)
			k = (size_t)(total - off);
		t_fill(SEED, off, buf, k);
		sum = t_checksum(sum, buf, k);
		T_ASSERT_OK(ivmc_commit(c, k, (r >> 40) % 4 ? 0 : IVMC_MORE));
		off += k;
	}
	T_ASSERT_OK(ivmc_shutdown(c, SHUT_WR));
	T_ASSERT(write(sum_fd[1], &sum, sizeof(sum)) == sizeof(sum));
	T_ASSERT_OK(ivmc_close(c));
}

static void big_stream(void)
{
	struct ivmc_listener *l;
	struct ivmc_chan *c;
	uint64_t off = 0, rng = 4321, total = big_total();
	uint64_t sum = T_CHECKSUM_INIT, their_sum;
	int sum_fd[2];
	pid_t pid;

	T_ASSERT(pipe(sum_fd) == 0);
	T_ASSERT_OK(ivmc_listen(path, NULL, &l));
	pid = t_fork(producer, sum_fd);
	T_ASSERT_OK(ivmc_accept(l, 0, &c));
	T_ASSERT_OK(ivmc_listener_close(l));
	for (;;) {
		const void *p;
		ssize_t n = ivmc_peek(c, &p, 0);
		size_t k;

		if (n == 0)
			break;
		if (n < 0)
			t_fail("peek at %llu: %zd (%s)",
			       (unsigned long long)off, n, t_strerror(n));
		k = 1 + (size_t)(t_rand64(&rng) % (uint64_t)n);
		if (t_verify(SEED, off, p, k))
			t_fail("big stream: wrong bytes at %llu",
			       (unsigned long long)off);
		sum = t_checksum(sum, p, k);
		T_ASSERT_OK(ivmc_release(c, k));
		off += k;
	}
	if (off != total)
		t_fail("big stream: end of stream after %llu of %llu bytes",
		       (unsigned long long)off, (unsigned long long)total);
	printf("big stream: %llu bytes reserve/commit -> peek/release, checksum %#llx\n",
	       (unsigned long long)off, (unsigned long long)sum);
	T_ASSERT_EQ(t_wait(pid, 60000), 0);
	T_ASSERT(read(sum_fd[0], &their_sum, sizeof(their_sum)) ==
		 sizeof(their_sum));
	if (their_sum != sum)
		t_fail("big stream: checksum %#llx, producer's %#llx",
		       (unsigned long long)sum, (unsigned long long)their_sum);
	close(sum_fd[0]);
	close(sum_fd[1]);
	T_ASSERT_OK(ivmc_close(c));
}

int main(void)
{
	int fds0;

	t_alarm(t_long() ? 600 : 50);
	t_tmpdir();
	t_path(path, sizeof(path), "zc.sock");
	fds0 = t_count_fds();
	basics();
	more_deferral();
	wrap();
	mix();
	big_stream();
	T_ASSERT_EQ(t_count_fds(), fds0);
	return t_late_failures ? T_FAIL : T_PASS;
}
