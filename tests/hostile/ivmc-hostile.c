/* SPDX-License-Identifier: MIT */
/*
 * Description: a hostile ivmc peer that gets its channel the normal way:
 * it connects over TCP to 127.0.0.1:PORT, says HELLO to the ivmcd at
 * $IVMC_SOCKET, registers its own end (REG_CONN) and takes the CHAN. It
 * checks that it cannot resize or write-seal the region, opens its end
 * honestly (chan_open on the region, with the TCP socket as side stream),
 * moves an echoed stream until both directions are on the ring, then
 * misbehaves as MODE says (see usage()). Used by tests/sec-hostile-tcp.c;
 * the victim at PORT echoes what it receives. The deep-* modes lie in the
 * deep word of our direction (docs/protocol.md 3.7): they write our bytes
 * and words by hand, our channel's producer state going stale.
 *
 * Exit: 0 when its own checks passed, 2 usage, 3 no channel, 4 a seal
 * did not hold, 5 the echo was wrong (while honest, or a byte the victim
 * could only have placed right), 6 the region or the victim's producer
 * was not as the mode needs (no large area, the victim wrote past S + L
 * or never filled them).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "../t_chan.h"
#include "ctl/proto.h"
#include "transport/transport.h"

#define SEED_H 0x4805 /* our stream; the victim echoes it */
#define WARM 4096

struct hctx {
	int tcp, ctl, bell, side;
	struct chan *c;
	struct ivmc_shm_hdr *hdr;
	uint64_t size;
	uint32_t cap, deep; /* ring_size (from the CHAN), deep_size (header) */
	uint64_t tx_off, rx_off; /* of stream SEED_H, sent / echoed back */
};

static void usage(void)
{
	fprintf(stderr,
		"usage: ivmc-hostile MODE PORT\n"
		"MODE: honest, ctl-closed (after CHAN), ctl-early (before CHAN),\n"
		"  prod-past-cap, prod-past-total, prod-back, cons-past, flip,\n"
		"  garbage, never-drains, stall, flood, die-mid-record,\n"
		"  deep-x-far, deep-past-s, deep-past-l, deep-past-l-reading,\n"
		"  deep-back-early, deep-garbage, deep-flip\n");
	exit(2);
}

static _Noreturn void die(int code, const char *what)
{
	fprintf(stderr, "ivmc-hostile: %s: %s\n", what, strerror(errno));
	exit(code);
}

/* ---- the normal path: TCP, HELLO, REG_CONN, CHAN ---- */

static int tcp_connect(uint16_t port)
{
	struct sockaddr_in a = { .sin_family = AF_INET,
				 .sin_port = htons(port),
				 .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	int one = 1, fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof(a)))
		die(1, "connect");
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	return fd;
}

/* One message from the daemon within ms; fds closed unless wanted. */
static ssize_t ctl_in(int s, void *m, size_t len, int *fds, int *nfds,
		      int ms)
{
	struct pollfd p = { s, POLLIN, 0 };

	*nfds = 2;
	if (poll(&p, 1, ms) != 1)
		return -ETIMEDOUT;
	return xport_recv_fds(s, m, len, fds, nfds, MSG_DONTWAIT);
}

static int ctl_hello_reg(int tcp)
{
	union { struct ctl_hdr h; char b[CTL_MSG_MAX]; } m;
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	const char *path = getenv("IVMC_SOCKET");
	struct ctl_hello h = { 0 };
	struct ctl_reg r = { 0 };
	int s, fds[2], nfds;

	if (!path || strlen(path) >= sizeof(sa.sun_path))
		die(1, "IVMC_SOCKET");
	memcpy(sa.sun_path, path, strlen(path) + 1);
	s = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	if (s < 0 || connect(s, (struct sockaddr *)&sa, sizeof(sa)))
		die(1, "connect to ivmcd");
	ctl_hdr_init(&h.h, CTL_HELLO, 0);
	if (xport_send_fds(s, &h, sizeof(h), NULL, 0))
		die(1, "HELLO");
	if (ctl_in(s, &m, sizeof(m), fds, &nfds, 5000 * (int)t_slow()) <= 0 ||
	    m.h.type != CTL_WELCOME)
		die(1, "no WELCOME");
	for (int i = 0; i < nfds; i++)
		close(fds[i]);
	ctl_hdr_init(&r.h, CTL_REG_CONN, 0);
	r.token = 1;
	if (xport_send_fds(s, &r, sizeof(r), &tcp, 1))
		die(1, "REG_CONN");
	return s;
}

/* Wait for the CHAN: its region and doorbell. */
static void take_chan(struct hctx *h, int *region)
{
	union { struct ctl_hdr h; struct ctl_chan c; struct ctl_nochan n;
		char b[CTL_MSG_MAX]; } m;
	int fds[2], nfds;
	ssize_t n = ctl_in(h->ctl, &m, sizeof(m), fds, &nfds,
			   8000 * (int)t_slow());

	if (n <= 0 || m.h.type != CTL_CHAN || nfds != 2) {
		fprintf(stderr, "ivmc-hostile: no CHAN (%zd, type %u, reason %u)\n",
			n, n > 0 ? m.h.type : 0,
			n > 0 && m.h.type == CTL_NOCHAN ? m.n.reason : 0);
		exit(3);
	}
	*region = fds[0];
	h->bell = fds[1];
	h->side = (int)m.c.side;
	h->cap = m.c.ring_size;
}

/* The region is sealed: no resize, no write seal, no new seals. */
static void try_seals(int region, uint64_t size)
{
	int bad = 0;

	bad |= ftruncate(region, (off_t)size * 2) == 0;
	bad |= ftruncate(region, (off_t)size / 2) == 0;
	bad |= fcntl(region, F_ADD_SEALS, F_SEAL_WRITE) == 0;
	bad |= fallocate(region, 0, 0, (off_t)size * 2) == 0;
	if (bad) {
		fprintf(stderr, "ivmc-hostile: the region is not sealed\n");
		exit(4);
	}
}

static void open_end(struct hctx *h, int region)
{
	struct chan_cfg cfg = { .side = h->side, .side_fd = h->tcp,
				.wait_mode = CHAN_WAIT_ADAPTIVE };
	void *m;

	struct stat st;

	if (fstat(region, &st))
		die(1, "fstat region");
	h->size = (uint64_t)st.st_size; /* the rings, and any large areas */
	try_seals(region, h->size);
	m = mmap(NULL, h->size, PROT_READ | PROT_WRITE, MAP_SHARED, region, 0);
	if (m == MAP_FAILED)
		die(1, "mmap region");
	h->hdr = m;
	/* ivmcd wrote the header; chan_open() checks it below, and so a
	 * region of another size would not open. */
	h->deep = h->hdr->deep_size;
	T_ASSERT_OK(chan_open(&cfg, region, h->bell, &h->c));
	close(region); /* mapped; the doorbell is the channel's now */
	h->bell = chan_fd(h->c);
}

/* ---- honest traffic ---- */

static ssize_t send_h(struct hctx *h, size_t n, unsigned int flags)
{
	static uint8_t buf[65536];
	ssize_t r;

	t_fill(SEED_H, h->tx_off, buf, n);
	r = t_send(h->c, buf, n, flags);
	if (r > 0)
		h->tx_off += (uint64_t)r;
	return r;
}

static void recv_h(struct hctx *h, size_t n)
{
	static uint8_t buf[65536];
	ssize_t r = t_recv(h->c, buf, n, CHAN_WAITALL);

	if (r != (ssize_t)n || t_verify(SEED_H, h->rx_off, buf, n)) {
		fprintf(stderr, "ivmc-hostile: echo wrong (%zd)\n", r);
		exit(5);
	}
	h->rx_off += n;
}

static bool on_ring(const struct ivmc_shm_dir *d)
{
	uint64_t w = atomic_load(&d->prod);

	return ivmc_w_epoch(w) >= 1 && !(w & IVMC_PW_CLOSED);
}

/* Echoed rounds until both directions are on the ring (at most 3 s, 8x
 * that under a test wrapper such as valgrind). */
static void warm_up(struct hctx *h)
{
	uint64_t t0 = t_now_ns();

	do {
		if (t_now_ns() - t0 > 3000000000ull * t_slow()) {
			fprintf(stderr, "ivmc-hostile: not on the ring\n");
			exit(3);
		}
		send_h(h, WARM, 0);
		recv_h(h, WARM);
	} while (!on_ring(&h->hdr->dir[0]) || !on_ring(&h->hdr->dir[1]));
	send_h(h, WARM, 0); /* one more, now surely through the ring */
	recv_h(h, WARM);
}

/* Wait (up to ms) for the victim to hang up its doorbell end. */
static bool victim_hung_up(struct hctx *h, int ms)
{
	uint64_t end = t_now_ns() + (uint64_t)ms * 1000000ull;
	char buf[256];

	while (t_now_ns() < end) {
		struct pollfd p = { h->bell, POLLIN, 0 };

		if (poll(&p, 1, 50) == 1 &&
		    recv(h->bell, buf, sizeof(buf), MSG_DONTWAIT) == 0)
			return true;
	}
	return false;
}

static void ring_bell(struct hctx *h)
{
	char x = 1;

	(void)send(h->bell, &x, 1, MSG_DONTWAIT | MSG_NOSIGNAL);
}

static uint64_t with_ctr(uint64_t w, uint32_t ctr)
{
	return (w & ~(uint64_t)UINT32_MAX) | ctr;
}

/* ---- misbehaviours ---- */

static void m_honest(struct hctx *h)
{
	char x;

	for (int i = 0; i < 16; i++) {
		send_h(h, 4096, 0);
		recv_h(h, 4096);
	}
	T_ASSERT_OK(chan_shutdown(h->c, SHUT_WR));
	T_ASSERT_EQ(t_recv(h->c, &x, 1, 0), 0);
}

static void m_prod(struct hctx *h, int64_t delta)
{
	struct ivmc_shm_dir *d = &h->hdr->dir[h->side];
	uint32_t cons = ivmc_w_ctr(atomic_load(&d->cons));

	atomic_store(&d->prod,
		     with_ctr(atomic_load(&d->prod), cons + (uint32_t)delta));
	ring_bell(h);
	printf("victim hung up: %d\n", victim_hung_up(h, 5000));
}

static _Atomic int stop;

/* Our producer word flips between its true value and one past S (the
 * deep word saying S holds every byte) while the victim reads (a double
 * fetch would see both). */
static void *flipper(void *arg)
{
	struct hctx *h = arg;
	_Atomic uint64_t *p = &h->hdr->dir[h->side].prod;

	while (!stop) {
		uint64_t w = atomic_load(p);

		atomic_store(p, with_ctr(w, ivmc_w_ctr(w) + h->cap + 1));
		atomic_store(p, w);
	}
	return NULL;
}

/* The victim's consumer word, kept a ring and a large area (all it may
 * have in flight) past what it produced. The victim reads that word only
 * when its cached copy says its area is full; a value written once would
 * look honest by then (the victim has produced past it), so it is
 * rewritten all the time, far enough ahead that the victim cannot have
 * caught up between our load and store (half a ring was not: with 64 KiB
 * rings the victim's 64 KiB sends passed it, and the lie looked like an
 * honest consumer's). */
static void *cons_pusher(void *arg)
{
	struct hctx *h = arg;
	struct ivmc_shm_dir *d = &h->hdr->dir[1 - h->side];

	while (!stop) {
		uint32_t prod = ivmc_w_ctr(atomic_load(&d->prod));

		atomic_store(&d->cons,
			     with_ctr(atomic_load(&d->cons),
				      prod + h->cap + h->deep + 1));
	}
	return NULL;
}

/* ... while we send more than its ring holds and read none of it. */
static void m_cons_past(struct hctx *h)
{
	uint64_t end = t_now_ns() + 1500000000ull;
	pthread_t t;

	T_ASSERT(pthread_create(&t, NULL, cons_pusher, h) == 0);
	while (t_now_ns() < end && h->tx_off < 4ull * h->cap) {
		send_h(h, 65536, CHAN_NONBLOCK);
		usleep(1000);
	}
	stop = 1;
	pthread_join(t, NULL);
	printf("victim hung up: %d\n", victim_hung_up(h, 5000));
}

/* Random words into both directions' lines (deep words too) while we
 * also send. */
static void *scribbler(void *arg)
{
	struct hctx *h = arg;
	uint64_t rnd = 42, *w = (uint64_t *)(void *)h->hdr->dir;
	size_t nw = 2 * sizeof(struct ivmc_shm_dir) / sizeof(uint64_t);

	while (!stop) {
		uint64_t v = t_rand64(&rnd);

		__atomic_store_n(&w[v % nw], t_rand64(&rnd), __ATOMIC_RELAXED);
		if (!(v & 0xff))
			ring_bell(h);
	}
	return NULL;
}

/* Honest non-blocking sends for ms while a thread does fn. */
static void with_thread(struct hctx *h, void *(*fn)(void *), int ms)
{
	uint64_t end = t_now_ns() + (uint64_t)ms * 1000000ull;
	uint8_t buf[4096];
	pthread_t t;

	T_ASSERT(pthread_create(&t, NULL, fn, h) == 0);
	while (t_now_ns() < end) {
		send_h(h, 1000, CHAN_NONBLOCK);
		(void)t_recv(h->c, buf, sizeof(buf), CHAN_NONBLOCK);
		usleep(200);
	}
	stop = 1;
	pthread_join(t, NULL);
	printf("victim hung up: %d\n", victim_hung_up(h, 3000));
}

/* The victim's bytes in flight towards us: it wrote them, we did not
 * read them (we read nothing any more, so our consumer word stays). */
static uint32_t victim_in_flight(const struct hctx *h)
{
	const struct ivmc_shm_dir *d = &h->hdr->dir[1 - h->side];

	return ivmc_w_ctr(atomic_load(&d->prod)) -
	       ivmc_w_ctr(atomic_load(&d->cons));
}

/* We stop reading; the victim echoes until its S and its L are full and
 * blocks: on the ring nothing else holds its bytes, so then exactly
 * ring_size + deep_size are in flight (it went deep rather than wait, and
 * never wrote past what we had read). We send until our own S and L are
 * full too (the victim holds one buffer it cannot echo), see the count
 * stay there, and go away. At most 2 s, 8x that under a test wrapper. */
static void m_never_drains(struct hctx *h)
{
	uint64_t t0 = t_now_ns(), full = (uint64_t)h->cap + h->deep;
	uint32_t n = 0;
	bool blocked = false;

	while (!blocked && t_now_ns() - t0 < 2000000000ull * t_slow()) {
		ssize_t r = send_h(h, 65536, CHAN_NONBLOCK);

		n = victim_in_flight(h);
		if (n > full)
			break;
		blocked = r == -EAGAIN && n == full;
		if (r == -EAGAIN)
			usleep(1000);
	}
	if (blocked) {
		usleep(100000); /* it stays blocked: nothing more comes */
		n = victim_in_flight(h);
	}
	printf("sent %llu bytes, read none back; the victim's bytes in "
	       "flight: %u (S + L: %llu)\n", (unsigned long long)h->tx_off, n,
	       (unsigned long long)full);
	if (n != full) {
		fprintf(stderr, "ivmc-hostile: the victim has %u bytes in "
			"flight, not S + L (%llu)\n", n,
			(unsigned long long)full);
		exit(6);
	}
	usleep(1500000);
}

/* Wake the victim again and again with nothing for it. */
static void m_flood(struct hctx *h)
{
	uint64_t end = t_now_ns() + 6000000000ull;
	unsigned long n = 0;
	char x = 1;

	while (t_now_ns() < end) {
		ssize_t r = send(h->bell, &x, 1, MSG_DONTWAIT | MSG_NOSIGNAL);

		if (r == 1)
			n++;
		else if (errno == EAGAIN)
			usleep(10);
		else
			break; /* the victim hung up */
	}
	printf("doorbell rung %lu times\n", n);
}

static void m_die_mid_record(struct hctx *h)
{
	send_h(h, 1000, 0);	    /* published */
	send_h(h, 500, CHAN_MORE); /* written, never published */
	fflush(stdout);
	raise(SIGKILL);
}

/* ---- lies in the deep word: our direction by hand ----
 * From here on we write our bytes, the deep word and the producer word
 * ourselves; the channel's producer state goes stale, so nothing is sent
 * through it again (it still reads the victim's echo: the receive path
 * looks at our producer word only for CLOSED, which we never set). */

struct raw {
	struct ivmc_shm_dir *d;
	uint8_t *s, *l;	/* our ring S and large area L (not mirrored here) */
	uint32_t ctr;	/* our producer counter: written, maybe unpublished */
	uint32_t x;	/* deep: our bytes from x on are in L */
	bool deep;
};

/* What the deep word says when we tell the truth (deep_flipper() puts
 * it back after each lie). */
static _Atomic uint64_t deep_truth;

static void raw_init(struct hctx *h, struct raw *r)
{
	uint8_t *base = (uint8_t *)h->hdr + IVMC_SHM_HDR_SIZE;
	uint64_t dw;

	if (!h->deep) {
		fprintf(stderr, "ivmc-hostile: the region has no large area\n");
		exit(6);
	}
	r->d = &h->hdr->dir[h->side];
	r->s = base + (size_t)h->side * h->cap;
	r->l = base + 2 * (size_t)h->cap + (size_t)h->side * h->deep;
	r->ctr = ivmc_w_ctr(atomic_load(&r->d->prod));
	/* After the warm-up (4 KiB echoed at a time) we never filled S. */
	dw = atomic_load(&r->d->deep);
	if (dw & IVMC_DEEP_ON) {
		fprintf(stderr, "ivmc-hostile: deep after the warm-up\n");
		exit(6);
	}
	r->deep = false;
	atomic_store(&deep_truth, dw);
}

/* The victim's consumer counter of our direction. */
static uint32_t raw_cons(const struct raw *r)
{
	return ivmc_w_ctr(atomic_load(&r->d->cons));
}

/* n bytes of src into an area of size sz at offset off, wrapping. */
static void put(uint8_t *area, uint32_t sz, uint32_t off, const uint8_t *src,
		uint32_t n)
{
	uint32_t at = off & (sz - 1), k = sz - at < n ? sz - at : n;

	memcpy(area + at, src, k);
	memcpy(area, src + k, n - k);
}

/* The next n (<= 64 KiB) bytes of our stream where an honest producer
 * puts them (L if deep, else S) and, with also_s, into S as well, then
 * counted (not published). */
static void raw_put(struct hctx *h, struct raw *r, uint32_t n, bool also_s)
{
	static uint8_t buf[65536];

	t_fill(SEED_H, h->tx_off, buf, n);
	if (r->deep)
		put(r->l, h->deep, r->ctr - r->x, buf, n);
	if (!r->deep || also_s)
		put(r->s, h->cap, r->ctr, buf, n);
	r->ctr += n;
	h->tx_off += n;
}

/* The deep word, stored after the truth it is (so that a flipper that
 * read the old truth fails its compare-and-swap). */
static void raw_set_deep(struct raw *r, uint64_t dw)
{
	atomic_store(&deep_truth, dw);
	atomic_store(&r->d->deep, dw);
}

/* Publish counter ctr (after the bytes and the deep word) and wake the
 * victim. */
static void raw_publish(struct hctx *h, struct raw *r, uint32_t ctr)
{
	atomic_store(&r->d->prod, with_ctr(atomic_load(&r->d->prod), ctr));
	ring_bell(h);
}

/* Honestly deep at our counter (the victim has read everything, so it
 * reads L from its next byte), with n bytes in L that the victim must
 * echo right: our layout of L is the victim's. */
static void raw_deep_honest(struct hctx *h, struct raw *r, uint32_t n)
{
	if (raw_cons(r) != r->ctr) {
		fprintf(stderr, "ivmc-hostile: the victim has not read all\n");
		exit(6);
	}
	r->deep = true;
	r->x = r->ctr;
	raw_set_deep(r, ivmc_deep_make(true, r->x));
	raw_put(h, r, n, false);
	raw_publish(h, r, r->ctr);
	recv_h(h, n);
}

static void hung_up(struct hctx *h)
{
	printf("victim hung up: %d\n", victim_hung_up(h, 5000));
}

/* DEEP with X half the counter space away from everything published:
 * neither in [cons, prod] nor within a ring ahead of prod. */
static void m_deep_x_far(struct hctx *h)
{
	struct raw r;

	raw_init(h, &r);
	raw_put(h, &r, 1000, false); /* into S, where X says they are */
	raw_set_deep(&r, ivmc_deep_make(true, r.ctr + 0x80000000u));
	raw_publish(h, &r, r.ctr);
	hung_up(h);
}

/* DEEP with X inside what we publish, more than a ring past the
 * victim's counter: S would hold more than S holds (L not even full). */
static void m_deep_past_s(struct hctx *h)
{
	struct raw r;
	uint32_t x;

	raw_init(h, &r);
	x = r.ctr + h->cap + 100;
	raw_set_deep(&r, ivmc_deep_make(true, x));
	raw_publish(h, &r, x + 100);
	hung_up(h);
}

/* DEEP with X inside what we publish, 100 bytes past the victim's
 * counter, and more than deep_size bytes past X: L would hold more than
 * L holds. The count is within S + L: only the deep word places it wrong. */
static void m_deep_past_l(struct hctx *h)
{
	struct raw r;
	uint32_t x;

	raw_init(h, &r);
	raw_put(h, &r, 100, false);
	x = r.ctr;
	raw_set_deep(&r, ivmc_deep_make(true, x));
	raw_publish(h, &r, x + h->deep + 64);
	hung_up(h);
}

/* Honestly deep, the victim reading L; then more unread bytes than L
 * holds, the deep word unchanged (within S + L from the victim's
 * counter, so only the check of the episode it reads catches it). */
static void m_deep_past_l_reading(struct hctx *h)
{
	struct raw r;

	raw_init(h, &r);
	raw_deep_honest(h, &r, 3000);
	raw_publish(h, &r, raw_cons(&r) + h->deep + 64);
	hung_up(h);
}

/* Honestly deep, the victim reading L (it read 3000 bytes past X); then
 * back to S "at X": not where the victim is, so not with everything
 * read. The bytes after it go into S. */
static void m_deep_back_early(struct hctx *h)
{
	struct raw r;

	raw_init(h, &r);
	raw_deep_honest(h, &r, 3000);
	r.deep = false;
	raw_set_deep(&r, ivmc_deep_make(false, r.x));
	raw_put(h, &r, 1000, false);
	raw_publish(h, &r, r.ctr);
	hung_up(h);
}

/* A deep word true in every bit the layout defines (back in S at the
 * victim's counter), with bit 33, the nearest above DEEP, set. */
static void m_deep_garbage(struct hctx *h)
{
	struct raw r;

	raw_init(h, &r);
	raw_set_deep(&r, ivmc_deep_make(false, r.ctr) | 1ull << 33);
	raw_put(h, &r, 1000, false);
	raw_publish(h, &r, r.ctr);
	hung_up(h);
}

/* While we publish honestly, the deep word flips from its true value to
 * a lie and back all the time. The lies: mostly back in S at a random X
 * (refused while the victim reads L; otherwise it reads S, where
 * m_deep_flip() puts every byte too), 1 in 16 DEEP with X half the
 * counter space away or just behind the victim's counter (refused
 * whenever loaded: no episode of ours starts there; rare, so that the
 * victim takes many looks before it sees one). So every byte that a
 * victim which loads the word once, checks it and uses it echoes is
 * right; one that loaded it again after checking would read L where a
 * refused X points. A compare-and-swap each way: a lie never outlives,
 * and never brings back, a truth the main thread replaced. */
static void *deep_flipper(void *arg)
{
	struct hctx *h = arg;
	struct ivmc_shm_dir *d = &h->hdr->dir[h->side];
	uint64_t rnd = 0xdeef;

	while (!stop) {
		uint64_t t = atomic_load(&deep_truth), v = t_rand64(&rnd);
		uint32_t cons = ivmc_w_ctr(atomic_load(&d->cons));

		switch (v % 32) {
		case 0:
			v = ivmc_deep_make(true, cons + 0x80000000u);
			break;
		case 1:
			v = ivmc_deep_make(true, cons - 1);
			break;
		default:
			v = ivmc_deep_make(false, v >> 32);
		}
		if (atomic_compare_exchange_strong(&d->deep, &t, v))
			(void)atomic_compare_exchange_strong(&d->deep, &v, t);
	}
	return NULL;
}

/* What the victim echoed so far, checked; -1 once its end is gone (a
 * non-blocking receive does not read the doorbell, whose end of file
 * says so: its wake-ups are not needed, we never wait). */
static int drain_echo(struct hctx *h)
{
	static uint8_t buf[65536];

	for (int i = 0; i < 64; i++) {
		ssize_t r = recv(h->bell, buf, sizeof(buf), MSG_DONTWAIT);

		if (r == 0)
			return -1;
		if (r < 0)
			break;
	}
	for (int i = 0; i < 64; i++) {
		ssize_t r = t_recv(h->c, buf, sizeof(buf), CHAN_NONBLOCK);

		if (r == -EAGAIN)
			return 0;
		if (r <= 0)
			return -1;
		if (t_verify(SEED_H, h->rx_off, buf, (size_t)r)) {
			fprintf(stderr, "ivmc-hostile: echo wrong at %llu\n",
				(unsigned long long)h->rx_off);
			exit(5);
		}
		h->rx_off += (uint64_t)r;
	}
	return 0;
}

/* Up to 1 s of 1000-byte publishes, never more than a ring unread (so
 * that S can hold a copy of every unread byte), going deep every 8th and
 * back to S once the victim has read everything, while deep_flipper()
 * lies. Then a lie that stays, so that the victim must end with an
 * error. */
static void m_deep_flip(struct hctx *h)
{
	uint64_t end = t_now_ns() + 1000000000ull;
	unsigned int deeps = 0, round = 0;
	bool gone = false;
	struct raw r;
	pthread_t t;

	raw_init(h, &r);
	T_ASSERT(pthread_create(&t, NULL, deep_flipper, h) == 0);
	for (; !gone && t_now_ns() < end && round < 100000; round++) {
		uint32_t cons = raw_cons(&r);

		if (!r.deep && round % 8 == 0) {
			r.deep = true;
			r.x = r.ctr;
			raw_set_deep(&r, ivmc_deep_make(true, r.x));
			deeps++;
		} else if (r.deep && cons == r.ctr) {
			r.deep = false;
			raw_set_deep(&r, ivmc_deep_make(false, r.ctr));
		}
		if (r.ctr - cons <= h->cap - 1000) {
			raw_put(h, &r, 1000, true);
			raw_publish(h, &r, r.ctr);
		}
		gone = drain_echo(h) < 0;
		usleep(100);
	}
	stop = 1;
	pthread_join(t, NULL);
	printf("%u rounds, %u deep episodes, %llu bytes echoed right, "
	       "victim gone: %d\n", round, deeps,
	       (unsigned long long)h->rx_off, gone);
	if (!gone) {
		raw_set_deep(&r, ivmc_deep_make(true, r.ctr + 0x80000000u));
		raw_put(h, &r, 1, false);
		raw_publish(h, &r, r.ctr);
	}
	hung_up(h);
}

/* Registered, then gone from ivmcd before the CHAN: the connection stays
 * TCP, and the victim's echo must still be right. */
/* The modes that take the channel and nothing else. */
static const struct {
	const char *name;
	void (*fn)(struct hctx *h);
} modes[] = {
	{ "never-drains", m_never_drains },
	{ "flood", m_flood },
	{ "die-mid-record", m_die_mid_record },
	{ "deep-x-far", m_deep_x_far },
	{ "deep-past-s", m_deep_past_s },
	{ "deep-past-l", m_deep_past_l },
	{ "deep-past-l-reading", m_deep_past_l_reading },
	{ "deep-back-early", m_deep_back_early },
	{ "deep-garbage", m_deep_garbage },
	{ "deep-flip", m_deep_flip },
};

static void run_mode(struct hctx *h, const char *mode)
{
	for (size_t i = 0; i < sizeof(modes) / sizeof(modes[0]); i++)
		if (!strcmp(mode, modes[i].name)) {
			modes[i].fn(h);
			return;
		}
	usage();
}

static void m_ctl_early(int tcp)
{
	uint8_t buf[4096];
	uint64_t off = 0;

	close(ctl_hello_reg(tcp));
	for (int i = 0; i < 16; i++) {
		size_t got = 0;

		t_fill(SEED_H, off, buf, sizeof(buf));
		if (send(tcp, buf, sizeof(buf), MSG_NOSIGNAL) != sizeof(buf))
			die(5, "send on TCP");
		while (got < sizeof(buf)) {
			ssize_t r = recv(tcp, buf + got, sizeof(buf) - got, 0);

			if (r <= 0)
				die(5, "recv on TCP");
			got += (size_t)r;
		}
		if (t_verify(SEED_H, off, buf, sizeof(buf)))
			exit(5);
		off += sizeof(buf);
	}
	shutdown(tcp, SHUT_WR);
	if (recv(tcp, buf, 1, 0) != 0)
		exit(5);
}

int main(int argc, char **argv)
{
	struct hctx h = { 0 };
	const char *mode;
	int region;

	if (argc != 3)
		usage();
	mode = argv[1];
	signal(SIGPIPE, SIG_IGN);
	t_alarm(15);
	h.tcp = tcp_connect((uint16_t)atoi(argv[2]));
	if (!strcmp(mode, "ctl-early")) {
		m_ctl_early(h.tcp);
		return 0;
	}
	h.ctl = ctl_hello_reg(h.tcp);
	take_chan(&h, &region);
	if (!strcmp(mode, "ctl-closed"))
		close(h.ctl);
	open_end(&h, region);
	warm_up(&h);
	printf("%s: side %d, ring %u, on the ring after %llu bytes\n", mode,
	       h.side, h.cap, (unsigned long long)h.tx_off);
	if (!strcmp(mode, "honest") || !strcmp(mode, "ctl-closed"))
		m_honest(&h);
	else if (!strcmp(mode, "prod-past-cap")) {
		/* Past S, the deep word saying S holds every byte (we never
		 * filled S): within S + L, so only that word makes it a lie. */
		if (atomic_load(&h.hdr->dir[h.side].deep) & IVMC_DEEP_ON)
			exit(6);
		m_prod(&h, (int64_t)h.cap + 64);
	} else if (!strcmp(mode, "prod-past-total"))
		m_prod(&h, (int64_t)h.cap + h.deep + 64); /* past S + L */
	else if (!strcmp(mode, "prod-back"))
		m_prod(&h, -1);
	else if (!strcmp(mode, "cons-past"))
		m_cons_past(&h);
	else if (!strcmp(mode, "flip"))
		with_thread(&h, flipper, 1000);
	else if (!strcmp(mode, "garbage"))
		with_thread(&h, scribbler, 1000);
	else if (!strcmp(mode, "stall"))
		usleep(1500000);
	else
		run_mode(&h, mode);
	fflush(stdout);
	_exit(0); /* no clean close: a hostile peer just goes */
}
