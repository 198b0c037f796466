/* SPDX-License-Identifier: MIT */
/*
 * Description: lossless switches between ring and side stream. First,
 * forced cases in one thread: detach (by producer or consumer) with the
 * ring full, with unpublished CHAN_MORE bytes, with the ring empty, both at
 * once, and rapid toggling. Then two processes stream 128 MiB each way
 * while a controller thread in each calls chan_detach()/chan_attach() for
 * TX and RX at random moments; every byte arrives once, in order, and a
 * counting relay in the side stream proves both paths carried data. All of
 * it twice: with rings of fixed size, and with rings that grow.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "helpers.h"
#include "t_chan.h"
#include "t_stream.h"

#define RING (16u * 1024)
#define SEED_AB 0x5ab
#define SEED_BA 0x5ba

/* ---- forced cases, one thread, non-blocking calls ---- */

static uint8_t buf[4 * RING];
static const char *where;
static bool eof_expected; /* recv_all: the writer has shut down */

struct dirst {
	struct chan *tx, *rx;
	uint64_t seed, tx_off, rx_off;
};

/* Send n bytes (non-blocking; they must all be taken). */
static void send_n(struct dirst *d, size_t n, unsigned int flags)
{
	ssize_t r;

	t_fill(d->seed, d->tx_off, buf, n);
	r = t_send(d->tx, buf, n, CHAN_NONBLOCK | flags);
	if (r != (ssize_t)n)
		t_fail("%s: non-blocking send of %zu at offset %llu: %zd (%s)",
		       where, n, (unsigned long long)d->tx_off, r,
		       t_strerror(r));
	d->tx_off += n;
}

/* Send until -EAGAIN; returns bytes taken. */
static uint64_t send_fill(struct dirst *d)
{
	uint64_t taken = 0;

	for (int i = 0; i < 1000; i++) {
		ssize_t r;

		t_fill(d->seed, d->tx_off, buf, RING);
		r = t_send(d->tx, buf, RING, CHAN_NONBLOCK);
		if (r == -EAGAIN)
			return taken;
		if (r <= 0)
			t_fail("%s: fill: send: %zd (%s)", where, r,
			       t_strerror(r));
		d->tx_off += (uint64_t)r;
		taken += (uint64_t)r;
	}
	t_fail("%s: fill: never full", where);
}

/* Receive everything sent so far, verifying. */
static void recv_all(struct dirst *d)
{
	for (int i = 0; d->rx_off < d->tx_off; i++) {
		ssize_t r = t_recv(d->rx, buf, sizeof(buf), CHAN_NONBLOCK);

		if (i > 10000 || (r < 0 && r != -EAGAIN) || r == 0)
			t_fail("%s: recv at %llu of %llu sent (call %d): %zd (%s)",
			       where, (unsigned long long)d->rx_off,
			       (unsigned long long)d->tx_off, i, r,
			       t_strerror(r));
		if (r < 0) {
			/* Bytes a rewind gave back move when their producer
			 * is next called or polled (its process would be, by
			 * the doorbell the rewind rang). */
			(void)chan_poll_peek(d->tx, POLLOUT);
			continue;
		}
		if (d->rx_off + (uint64_t)r > d->tx_off ||
		    t_verify(d->seed, d->rx_off, buf, (size_t)r))
			t_fail("%s: wrong %zd bytes at offset %llu", where, r,
			       (unsigned long long)d->rx_off);
		d->rx_off += (uint64_t)r;
	}
	if (t_recv(d->rx, buf, 1, CHAN_NONBLOCK) !=
	    (eof_expected ? 0 : -EAGAIN))
		t_fail("%s: bytes beyond what was sent, or %s", where,
		       eof_expected ? "no end of stream" : "an early end");
}

static bool tx_on_ring(struct chan *c)
{
	struct chan_stats st;

	chan_stats(c, &st);
	return st.tx_on_ring;
}

static void expect_mode(struct chan *c, bool ring, const char *when)
{
	if (tx_on_ring(c) != ring)
		t_fail("%s: %s: producer is on the %s, want the %s", where,
		       when, ring ? "side stream" : "ring",
		       ring ? "ring" : "side stream");
}

static void forced_setup(struct t_pair *p, struct dirst *d)
{
	t_chan_pair(p, RING, true, 0, CHAN_WAIT_ADAPTIVE);
	*d = (struct dirst){ p->a, p->b, 0xf0, 0, 0 };
	send_n(d, 10, 0); /* opens the first epoch */
	recv_all(d);
	expect_mode(p->a, true, "after the first send");
}

/* Back on the ring after attach, and the stream goes on. */
static void forced_finish(struct t_pair *p, struct dirst *d)
{
	T_ASSERT_OK(chan_attach(p->a, CHAN_TX));
	T_ASSERT_OK(chan_attach(p->b, CHAN_RX));
	send_n(d, 1000, 0);
	recv_all(d);
	send_n(d, 10, 0); /* the epoch opens once the old one is drained */
	expect_mode(p->a, true, "after attach");
	recv_all(d);
	t_chan_pair_close(p);
}

static void forced_full(bool by_consumer)
{
	struct t_pair p;
	struct dirst d;

	where = by_consumer ? "consumer detach, ring full" :
			      "producer detach, ring full";
	forced_setup(&p, &d);
	if (send_fill(&d) != RING + t_deep_size)
		t_fail("%s: did not take a full ring (and its large area)", where);
	T_ASSERT_OK(chan_detach(by_consumer ? p.b : p.a,
				by_consumer ? CHAN_RX : CHAN_TX));
	send_n(&d, 3 * RING, 0); /* goes on the side stream at once */
	expect_mode(p.a, false, "sending after detach");
	recv_all(&d);
	forced_finish(&p, &d);
}

/* The consumer closes while the producer holds CHAN_MORE bytes back. */
static void forced_more_stranded(void)
{
	struct t_pair p;
	struct dirst d;

	where = "consumer detach, unpublished CHAN_MORE bytes";
	forced_setup(&p, &d);
	send_n(&d, RING - 200, 0);
	send_n(&d, 50, CHAN_MORE); /* written, not published */
	T_ASSERT_OK(chan_detach(p.b, CHAN_RX));
	send_n(&d, 500, 0); /* 150 fit the ring, the rest: side */
	expect_mode(p.a, false, "after the stranded publish");
	recv_all(&d);
	/* Same, the stranded bytes alone (flushed by shutdown). */
	forced_finish(&p, &d);

	where = "consumer detach, CHAN_MORE bytes then shutdown";
	forced_setup(&p, &d);
	send_n(&d, 77, CHAN_MORE);
	T_ASSERT_OK(chan_detach(p.b, CHAN_RX));
	T_ASSERT_OK(chan_shutdown(p.a, SHUT_WR));
	eof_expected = true;
	recv_all(&d);
	eof_expected = false;
	t_chan_pair_close(&p);
}

static void forced_empty(bool by_consumer)
{
	struct t_pair p;
	struct dirst d;

	where = by_consumer ? "consumer detach, ring empty" :
			      "producer detach, ring empty";
	forced_setup(&p, &d);
	T_ASSERT_OK(chan_detach(by_consumer ? p.b : p.a,
				by_consumer ? CHAN_RX : CHAN_TX));
	send_n(&d, 5000, 0);
	expect_mode(p.a, false, "after detach of an empty ring");
	recv_all(&d);
	forced_finish(&p, &d);
}

/* Read the side stream itself, as a program exec'd with the socket would,
 * until want bytes of d's stream have come (the producer moves given-back
 * bytes when it is polled: poke it between tries). */
static void recv_raw(struct t_pair *p, struct dirst *d, uint64_t want)
{
	for (int i = 0; d->rx_off < want; i++) {
		ssize_t r = read(p->side[1], buf, sizeof(buf));

		if (r < 0 && errno == EAGAIN && i < 10000) {
			(void)chan_poll_peek(p->a, POLLIN);
			usleep(100);
			continue;
		}
		if (r <= 0 || d->rx_off + (uint64_t)r > want ||
		    t_verify(d->seed, d->rx_off, buf, (size_t)r))
			t_fail("%s: raw side read at %llu of %llu (try %d): %zd",
			       where, (unsigned long long)d->rx_off,
			       (unsigned long long)want, i, r);
		d->rx_off += (uint64_t)r;
	}
}

/* The consumer gives back what it has not read (chan_rewind()): the side
 * stream alone then carries every byte, in order: those left in the ring,
 * published or held back by CHAN_MORE, then the ones sent later. */
static void forced_rewind(int how)
{
	static const char *const names[] = {
		"rewind, ring partly read", "rewind, ring full",
		"rewind, CHAN_MORE bytes held back", "rewind, ring empty",
		"rewind before the attach offset",
		"rewind, full, read past S (into L if it grows)"
	};
	uint64_t n;
	struct t_pair p;
	struct dirst d;

	where = names[how];
	forced_setup(&p, &d);
	switch (how) {
	case 0:
		send_n(&d, RING / 2, 0);
		if (t_recv(d.rx, buf, 1000, CHAN_NONBLOCK) != 1000 ||
		    t_verify(d.seed, d.rx_off, buf, 1000))
			t_fail("%s: first 1000 bytes", where);
		d.rx_off += 1000;
		break;
	case 1:
		(void)send_fill(&d);
		break;
	case 2:
		send_n(&d, 300, 0);
		send_n(&d, 77, CHAN_MORE);
		break;
	case 3:
		break;
	case 4:
		/* Producer detached and back: side bytes, then a new epoch
		 * the consumer has not reached yet. */
		T_ASSERT_OK(chan_detach(p.a, CHAN_TX));
		send_n(&d, 2000, 0);
		T_ASSERT_OK(chan_attach(p.a, CHAN_TX));
		/* One byte: the consumer passes the closed epoch, says
		 * READY for the next, and reads the side stream. */
		if (t_recv(d.rx, buf, 1, CHAN_NONBLOCK) != 1 ||
		    t_verify(d.seed, d.rx_off, buf, 1))
			t_fail("%s: first side byte", where);
		d.rx_off++;
		send_n(&d, 3000, 0);
		expect_mode(p.a, true, "the next epoch opened");
		break;
	case 5:
		/* Rings that grow: read S and 1000 bytes of L, so that what
		 * is given back lies in L only; else half the ring. */
		n = send_fill(&d);
		n = n > RING + 2000 ? RING + 1000 : n / 2;
		for (int i = 0; n && i < 100; i++) {
			ssize_t r = t_recv(d.rx, buf, n, CHAN_NONBLOCK);

			if (r <= 0 || t_verify(d.seed, d.rx_off, buf, (size_t)r))
				t_fail("%s: reading before the rewind: %zd", where, r);
			d.rx_off += (uint64_t)r;
			n -= (uint64_t)r;
		}
		if (n)
			t_fail("%s: %llu bytes not read", where, (unsigned long long)n);
		break;
	}
	T_ASSERT_OK(chan_rewind(p.b));
	if (fcntl(p.side[1], F_SETFL, O_NONBLOCK) < 0)
		t_fail("fcntl: %s", strerror(errno));
	recv_raw(&p, &d, d.tx_off);
	send_n(&d, 5000, 0); /* after the rewind: straight on the side */
	expect_mode(p.a, false, "after the rewind");
	recv_raw(&p, &d, d.tx_off);
	t_chan_pair_close(&p);
}

/* Readable means a recv returns something: an epoch that opened with
 * nothing published in it yet (CHAN_MORE holds the bytes back) is not. */
static void forced_open_empty(void)
{
	struct t_pair p;
	struct dirst d;

	where = "an epoch opened, nothing published";
	forced_setup(&p, &d);
	T_ASSERT_OK(chan_detach(p.a, CHAN_TX));
	send_n(&d, 100, 0); /* on the side stream */
	T_ASSERT_OK(chan_attach(p.a, CHAN_TX));
	recv_all(&d); /* the consumer passes the closed epoch: READY */
	send_n(&d, 10, CHAN_MORE); /* opens the epoch, publishes nothing */
	expect_mode(p.a, true, "the send opened the next epoch");
	if (chan_poll_peek(p.b, POLLIN) & POLLIN)
		t_fail("%s: POLLIN, but recv would say EAGAIN", where);
	if (t_recv(p.b, buf, 1, CHAN_NONBLOCK) != -EAGAIN)
		t_fail("%s: recv found something", where);
	send_n(&d, 1, 0); /* publishes all 11 */
	if (!(chan_poll_peek(p.b, POLLIN) & POLLIN))
		t_fail("%s: committed bytes not readable", where);
	recv_all(&d);
	t_chan_pair_close(&p);
}

/* Both ends say no; attaching one is not enough. */
static void forced_both(void)
{
	struct t_pair p;
	struct dirst d;

	where = "both detached, one attached";
	forced_setup(&p, &d);
	T_ASSERT_OK(chan_detach(p.a, CHAN_TX));
	T_ASSERT_OK(chan_detach(p.b, CHAN_RX));
	send_n(&d, 3000, 0);
	recv_all(&d);
	T_ASSERT_OK(chan_attach(p.a, CHAN_TX));
	send_n(&d, 3000, 0);
	recv_all(&d);
	send_n(&d, 10, 0);
	expect_mode(p.a, false, "consumer still detached");
	recv_all(&d);
	T_ASSERT_OK(chan_detach(p.a, CHAN_TX));
	T_ASSERT_OK(chan_attach(p.b, CHAN_RX));
	send_n(&d, 10, 0);
	expect_mode(p.a, false, "producer detached again");
	recv_all(&d);
	forced_finish(&p, &d);
}

/* Many switches in a row, with a byte or a few between them. */
static void forced_toggle(void)
{
	uint64_t rng = 9;
	struct t_pair p;
	struct dirst d;
	bool more = false;

	where = "rapid toggling";
	forced_setup(&p, &d);
	for (int i = 0; i < 2000; i++) {
		uint64_t x = t_rand64(&rng);
		struct chan *c = x & 1 ? p.b : p.a;
		enum chan_dir dir = x & 1 ? CHAN_RX : CHAN_TX;
		int err = (x & 2)		     ? chan_attach(c, dir) :
			  (dir == CHAN_RX && (x & 32)) ? chan_rewind(c) :
							 chan_detach(c, dir);

		if (err == -EBUSY && dir == CHAN_RX && (x & 32) && !(x & 2))
			err = 0; /* the producer had left: a plain detach */

		if (err)
			t_fail("%s: switch %d: %d (%s)", where, i, err,
			       t_strerror(err));
		if (x & 4) {
			send_n(&d, 1 + (x >> 8) % 300, (x & 8) ? CHAN_MORE : 0);
			more = x & 8;
		}
		if ((x & 16) || d.tx_off - d.rx_off > RING / 2) {
			if (more) /* CHAN_MORE bytes may wait for this */
				send_n(&d, 1, 0);
			more = false;
			recv_all(&d);
		}
	}
	send_n(&d, 1, 0);
	recv_all(&d);
	forced_finish(&p, &d);
}

/* ---- random switches, two processes ---- */

static uint64_t total;
static uint64_t deadline_ns;
static struct t_pair pair;
static struct t_relay relay;


static void run_end(struct chan *c, const char *name, uint64_t seed_tx,
		    uint64_t seed_rx, uint64_t rng)
{
	char tx_name[32], rx_name[32], ctl_name[32];
	struct t_pump tx = { .c = c,
			     .name = tx_name,
			     .seed = seed_tx,
			     .end = total,
			     .rng = rng,
			     .max_io = 3 * RING,
			     .deadline_ns = deadline_ns,
			     .shut = true };
	struct t_pump rx = { .c = c,
			     .name = rx_name,
			     .seed = seed_rx,
			     .end = total,
			     .rng = rng + 1,
			     .max_io = 3 * RING,
			     .deadline_ns = deadline_ns,
			     .shut = true };
	struct t_switcher k = { .c = c, .name = ctl_name, .rng = rng + 2,
				.deadline_ns = deadline_ns,
				.gap_min_us = 100, .gap_span_us = 1900 };
	pthread_t th_tx, th_ctl;

	snprintf(tx_name, sizeof(tx_name), "%s send", name);
	snprintf(rx_name, sizeof(rx_name), "%s recv", name);
	snprintf(ctl_name, sizeof(ctl_name), "%s controller", name);
	T_ASSERT_EQ(pthread_create(&th_tx, NULL, t_pump_send_thread, &tx), 0);
	T_ASSERT_EQ(pthread_create(&th_ctl, NULL, t_switcher_run, &k), 0);
	t_pump_recv(&rx);
	T_ASSERT_EQ(pthread_join(th_tx, NULL), 0);
	atomic_store(&k.stop, 1);
	T_ASSERT_EQ(pthread_join(th_ctl, NULL), 0);
	printf("%s: %d switches (%d detach TX, %d attach TX, %d detach RX of which %d rewinds, %d attach RX), %llu sends, %llu receives\n",
	       name, k.ops[0] + k.ops[1] + k.ops[2] + k.ops[3], k.ops[0],
	       k.ops[1], k.ops[2], k.rewinds, k.ops[3], (unsigned long long)tx.calls,
	       (unsigned long long)rx.calls);
	if (!k.ops[0] || !k.ops[2])
		t_fail("%s: the controller never detached both ways", name);
	{
		struct chan_stats st;

		chan_stats(c, &st);
		printf("%s: went deep %llu times\n", name,
		       (unsigned long long)st.deeps);
		if (t_deep_size && !st.deeps)
			t_fail("%s: rings that can grow never did", name);
	}
}

static void child(void *arg)
{
	(void)arg;
	t_alarm(t_long() ? 850 : 55);
	chan_close(pair.a);
	pair.a = NULL;
	close(pair.side[0]);
	close(relay.fd[0]);
	close(relay.fd[1]);
	run_end(pair.b, "b", SEED_BA, SEED_AB, 200);
	chan_close(pair.b);
}

static void random_switches(void)
{
	pid_t pid;

	total = t_long() ? 2ull << 30 : 128ull << 20;
	deadline_ns = t_now_ns() + (t_long() ? 800ull : 45ull) * 1000000000ull;
	t_chan_pair(&pair, RING, true, 0, CHAN_WAIT_ADAPTIVE);
	t_relay_insert(&pair, &relay);
	pid = t_fork(child, NULL);
	chan_close(pair.b);
	pair.b = NULL;
	close(pair.side[1]);
	pair.side[1] = -1;
	t_relay_start(&relay, deadline_ns);
	run_end(pair.a, "a", SEED_AB, SEED_BA, 100);
	T_ASSERT_EQ(t_wait(pid, 30000), 0);
	/* Closing pays a SHUT_WR still owed to the side stream (a rewind
	 * might have wanted it): the relay then sees both ends. */
	chan_close(pair.a);
	pair.a = NULL;
	t_relay_join(&relay);
	printf("side stream carried a->b %llu of %llu bytes, b->a %llu of %llu\n",
	       (unsigned long long)relay.bytes[0], (unsigned long long)total,
	       (unsigned long long)relay.bytes[1], (unsigned long long)total);
	for (int d = 0; d < 2; d++)
		if (!relay.bytes[d] || relay.bytes[d] >= total)
			t_fail("%s: side stream carried %llu of %llu bytes: want both paths used",
			       d ? "b->a" : "a->b",
			       (unsigned long long)relay.bytes[d],
			       (unsigned long long)total);
	t_chan_pair_close(&pair);
}

int main(void)
{
	t_alarm(t_long() ? 870 : 58);
	/* Everything twice: rings of RING only, then rings that grow into
	 * a large area of 4 * RING when full (docs/protocol.md 3.7). */
	for (int deep = 0; deep < 2; deep++) {
		t_deep_size = deep ? 4 * RING : 0;
		printf("-- rings %s\n", deep ? "that grow" : "of fixed size");
		forced_full(false);
		forced_full(true);
		forced_more_stranded();
		forced_empty(false);
		forced_empty(true);
		forced_both();
		for (int how = 0; how < 6; how++)
			forced_rewind(how);
		forced_open_empty();
		forced_toggle();
		random_switches();
	}
	return T_PASS;
}
