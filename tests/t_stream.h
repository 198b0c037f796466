/* SPDX-License-Identifier: MIT */
/*
 * Description: stream pumps for the stream tests: send a t_fill() stream
 * with random sizes, vectors and flags; receive it with random sizes and
 * t_verify() every byte; each bounded by a deadline. Plus a relay that sits
 * in a side stream (socketpair) and counts the bytes it carries, so a test
 * can prove that both the ring and the side stream carried data.
 */
#ifndef IVMC_TESTS_T_STREAM_H
#define IVMC_TESTS_T_STREAM_H

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "t_chan.h"

/* One direction of one end: what to send or what to expect. */
struct t_pump {
	struct chan *c;
	const char *name; /* in failure messages */
	uint64_t seed; /* stream name for t_fill()/t_verify() */
	uint64_t off; /* stream offset of the next byte (start here) */
	uint64_t end; /* stream offset to stop at */
	uint64_t rng; /* PRNG state: sizes, vectors, flags */
	size_t max_io; /* largest single call, >= 1 */
	uint64_t deadline_ns; /* t_now_ns() past this: fail */
	bool shut; /* send: chan_shutdown(SHUT_WR) after end;
			       * recv: expect end of stream at end */
	bool no_more; /* send: never use CHAN_MORE */
	uint64_t calls; /* out: calls made */
};

/* Split buf[0, n) into 1..4 iovecs (some may be empty). */
static inline int t_pump_split(uint8_t *buf, size_t n, struct iovec *v,
			       uint64_t *rng)
{
	uint64_t x = t_rand64(rng);
	int cnt = (x & 3) ? 1 : 2 + (int)((x >> 2) % 3);
	size_t at = 0;

	for (int i = 0; i < cnt - 1; i++) {
		size_t k = (size_t)(t_rand64(rng) % (n - at + 1));

		v[i] = (struct iovec){ buf + at, k };
		at += k;
	}
	v[cnt - 1] = (struct iovec){ buf + at, n - at };
	return cnt;
}

static inline void t_pump_deadline(const struct t_pump *s, const char *what)
{
	if (t_now_ns() > s->deadline_ns)
		t_fail("%s: deadline passed while %s at stream offset %llu (of %llu)",
		       s->name, what, (unsigned long long)s->off,
		       (unsigned long long)s->end);
}

/* Send [off, end) of stream seed with blocking calls of random size (1/8
 * of them with CHAN_MORE, 1/4 as 2-4 iovecs); every call must send all. */
static inline void t_pump_send(struct t_pump *s)
{
	uint8_t *buf = malloc(s->max_io);

	T_ASSERT(buf);
	while (s->off < s->end) {
		size_t n = 1 + (size_t)(t_rand64(&s->rng) % s->max_io);
		unsigned int flags = 0;
		struct iovec v[4];
		ssize_t r;
		int cnt;

		if (n > s->end - s->off)
			n = (size_t)(s->end - s->off);
		/* CHAN_MORE holds bytes back until the next send: never on
		 * the last one (a shutdown would publish them, a close not). */
		if (!s->no_more && t_rand64(&s->rng) % 8 == 0 &&
		    s->off + n < s->end)
			flags |= CHAN_MORE;
		t_fill(s->seed, s->off, buf, n);
		cnt = t_pump_split(buf, n, v, &s->rng);
		r = chan_sendv(s->c, v, cnt, flags);
		if (r != (ssize_t)n)
			t_fail("%s: blocking send of %zu bytes (%d iovecs, flags %#x) at stream offset %llu returned %zd (%s)",
			       s->name, n, cnt, flags,
			       (unsigned long long)s->off, r, t_strerror(r));
		s->off += n;
		s->calls++;
		t_pump_deadline(s, "sending");
	}
	if (s->shut) {
		int err = chan_shutdown(s->c, SHUT_WR);

		if (err)
			t_fail("%s: chan_shutdown(SHUT_WR) after %llu bytes: %d (%s)",
			       s->name, (unsigned long long)s->end, err,
			       t_strerror(err));
	}
	free(buf);
}

/* Receive up to end with blocking calls of random size (1/8 of them with
 * CHAN_WAITALL, 1/4 as 2-4 iovecs), t_verify() every byte; with shut,
 * then expect end of stream, twice. */
static inline void t_pump_recv(struct t_pump *s)
{
	uint8_t *buf = malloc(s->max_io);

	T_ASSERT(buf);
	while (s->off < s->end) {
		size_t n = 1 + (size_t)(t_rand64(&s->rng) % s->max_io);
		unsigned int flags = 0;
		struct iovec v[4];
		ssize_t r;
		int cnt;

		if (!s->shut && n > s->end - s->off)
			n = (size_t)(s->end - s->off); /* never read past end */
		if (t_rand64(&s->rng) % 8 == 0)
			flags |= CHAN_WAITALL;
		cnt = t_pump_split(buf, n, v, &s->rng);
		r = chan_recvv(s->c, v, cnt, flags);
		if (r < 0)
			t_fail("%s: recv of %zu bytes at stream offset %llu: %zd (%s)",
			       s->name, n, (unsigned long long)s->off, r,
			       t_strerror(r));
		if (r == 0)
			t_fail("%s: end of stream at offset %llu, expected %llu bytes",
			       s->name, (unsigned long long)s->off,
			       (unsigned long long)s->end);
		if ((size_t)r > n || s->off + (uint64_t)r > s->end)
			t_fail("%s: recv of %zu at offset %llu returned %zd: past the end %llu",
			       s->name, n, (unsigned long long)s->off, r,
			       (unsigned long long)s->end);
		if (t_verify(s->seed, s->off, buf, (size_t)r))
			t_fail("%s: wrong bytes in [%llu, %llu) (recv of %zu, %d iovecs, flags %#x)",
			       s->name, (unsigned long long)s->off,
			       (unsigned long long)(s->off + (uint64_t)r), n,
			       cnt, flags);
		if ((flags & CHAN_WAITALL) && (size_t)r != n &&
		    s->off + (uint64_t)r != s->end)
			t_fail("%s: CHAN_WAITALL recv of %zu at offset %llu returned only %zd",
			       s->name, n, (unsigned long long)s->off, r);
		s->off += (uint64_t)r;
		s->calls++;
		t_pump_deadline(s, "receiving");
	}
	for (int i = 0; s->shut && i < 2; i++) {
		ssize_t r = chan_recvv(s->c, &(struct iovec){ buf, 1 }, 1, 0);

		if (r != 0)
			t_fail("%s: recv after the last byte (%llu), try %d: %zd (%s), want 0 (end of stream)",
			       s->name, (unsigned long long)s->end, i, r,
			       t_strerror(r));
	}
	free(buf);
}

static inline void *t_pump_send_thread(void *arg)
{
	t_pump_send(arg);
	return NULL;
}

static inline void *t_pump_recv_thread(void *arg)
{
	t_pump_recv(arg);
	return NULL;
}

/*
 * A relay in the side stream of a pair: after t_relay_insert(), end a's side
 * fd and end b's side fd lead to the relay's fd[0] and fd[1], and the relay
 * thread copies bytes between them (propagating SHUT_WR), counting them.
 */
struct t_relay {
	int fd[2]; /* fd[0] faces end a, fd[1] faces end b */
	uint64_t bytes[2]; /* carried a->b, b->a (read after join) */
	uint64_t deadline_ns;
	pthread_t th;
};

/* Replace the pair's side socketpair by two, joined by the relay. Call
 * before either end is used. */
static inline void t_relay_insert(struct t_pair *p, struct t_relay *r)
{
	int x[2], y[2];

	T_ASSERT(p->side[0] >= 0 && p->side[1] >= 0);
	T_ASSERT(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, x) == 0);
	T_ASSERT(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, y) == 0);
	/* The ends keep their fd numbers; the files behind them change. */
	T_ASSERT(dup2(x[0], p->side[0]) == p->side[0]);
	T_ASSERT(dup2(y[0], p->side[1]) == p->side[1]);
	close(x[0]);
	close(y[0]);
	r->fd[0] = x[1];
	r->fd[1] = y[1];
	r->bytes[0] = r->bytes[1] = 0;
}

/* Copy what is buffered for direction d into fd[1 - d]. */
static inline void t_relay_push(struct t_relay *r, int d, uint8_t *buf,
				size_t *pos, size_t *len, bool *eof)
{
	while (*len) {
		ssize_t n = send(r->fd[1 - d], buf + *pos, *len,
				 MSG_DONTWAIT | MSG_NOSIGNAL);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			return;
		if (n < 0) { /* reader gone: drop the direction */
			*len = 0;
			*eof = true;
			return;
		}
		*pos += (size_t)n;
		*len -= (size_t)n;
		r->bytes[d] += (uint64_t)n;
	}
}

static inline void *t_relay_run(void *arg)
{
	struct t_relay *r = arg;
	uint8_t(*buf)[65536] = malloc(2 * sizeof(*buf));
	size_t pos[2] = { 0, 0 }, len[2] = { 0, 0 };
	bool eof[2] = { false, false }, done[2] = { false, false };

	T_ASSERT(buf);
	while (!done[0] || !done[1]) {
		struct pollfd pf[2];

		for (int d = 0; d < 2; d++)
			pf[d] = (struct pollfd){ r->fd[d], 0, 0 };
		for (int d = 0; d < 2; d++) {
			if (!eof[d] && !len[d])
				pf[d].events |= POLLIN;
			if (len[d])
				pf[1 - d].events |= POLLOUT;
		}
		for (int d = 0; d < 2; d++)
			if (!pf[d].events)
				pf[d].fd = -1;
		if (poll(pf, 2, 100) < 0 && errno != EINTR)
			t_fail("relay: poll: %s", strerror(errno));
		if (t_now_ns() > r->deadline_ns)
			t_fail("relay: deadline passed (carried a->b %llu, b->a %llu)",
			       (unsigned long long)r->bytes[0],
			       (unsigned long long)r->bytes[1]);
		for (int d = 0; d < 2; d++) {
			ssize_t n;

			if (eof[d] || len[d] ||
			    !(pf[d].revents & (POLLIN | POLLHUP | POLLERR)))
				continue;
			n = recv(r->fd[d], buf[d], sizeof(*buf), MSG_DONTWAIT);
			if (n > 0) {
				pos[d] = 0;
				len[d] = (size_t)n;
			} else if (n == 0 ||
				   (errno != EAGAIN && errno != EINTR &&
				    errno != EWOULDBLOCK)) {
				eof[d] = true;
			}
		}
		for (int d = 0; d < 2; d++) {
			t_relay_push(r, d, buf[d], &pos[d], &len[d], &eof[d]);
			if (eof[d] && !len[d] && !done[d]) {
				shutdown(r->fd[1 - d], SHUT_WR);
				done[d] = true;
			}
		}
	}
	free(buf);
	return NULL;
}

static inline void t_relay_start(struct t_relay *r, uint64_t deadline_ns)
{
	r->deadline_ns = deadline_ns;
	T_ASSERT_EQ(pthread_create(&r->th, NULL, t_relay_run, r), 0);
}

/* Wait for the relay (both directions at end of stream), close its fds. */
static inline void t_relay_join(struct t_relay *r)
{
	T_ASSERT_EQ(pthread_join(r->th, NULL), 0);
	close(r->fd[0]);
	close(r->fd[1]);
}


/* A controller that detaches and attaches both directions of one end at
 * random moments (gap_min_us plus up to gap_span_us apart, a quarter back
 * to back), counting each kind of switch. */
struct t_switcher {
	struct chan *c;
	const char *name;
	uint64_t rng, deadline_ns;
	uint32_t gap_min_us, gap_span_us;
	atomic_int stop;
	int ops[4]; /* detach TX, attach TX, detach RX, attach RX */
	int rewinds; /* of the detach RX: chan_rewind() (-EBUSY: a detach) */
};

static const char *const t_switch_op[4] = { "detach TX", "attach TX", "detach RX",
					"attach RX" };

static inline void *t_switcher_run(void *arg)
{
	struct t_switcher *k = arg;
	bool attached[2] = { true, true }; /* [CHAN_TX], [CHAN_RX] */

	/* Leave the ring alone for a moment first: it must carry data. */
	usleep((useconds_t)(1000 + t_rand64(&k->rng) % 2000));
	for (int i = 0; i < 200000 && !atomic_load(&k->stop); i++) {
		uint64_t x = t_rand64(&k->rng);
		enum chan_dir dir = (x & 1) ? CHAN_RX : CHAN_TX;
		/* Flip the direction; one time in eight, flip it twice. */
		for (int twice = (x & 14) ? 1 : 2; twice; twice--) {
			int op = 2 * (int)dir + !attached[dir];
			bool rewind = dir == CHAN_RX && attached[dir] && (x & 16);
			int err = rewind	  ? chan_rewind(k->c) :
				  attached[dir] ? chan_detach(k->c, dir) :
						  chan_attach(k->c, dir);

			/* The producer left the ring as we rewound: the
			 * rewind was a detach (we read the ring to its end). */
			if (rewind && (err == 0 || err == -EBUSY)) {
				err = 0;
				k->rewinds++;
			}
			if (err)
				t_fail("%s: %s (switch %d): %d (%s)", k->name,
				       t_switch_op[op], i, err, t_strerror(err));
			attached[dir] = !attached[dir];
			k->ops[op]++;
		}
		if (t_now_ns() > k->deadline_ns)
			t_fail("%s: deadline passed while switching", k->name);
		if ((x >> 8) & 3)
			usleep((useconds_t)(k->gap_min_us + (x >> 16) % k->gap_span_us));
	}
	return NULL;
}

#endif
