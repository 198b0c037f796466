/* SPDX-License-Identifier: MIT */
/*
 * Description: the guest side of the two-VM test (built static, runs in a
 * busybox initramfs): stream and ping-pong over an ivmc channel in an
 * ivshmem BAR, and the same over TCP for comparison. On the host, "init"
 * lays the channels out in the file QEMU will share.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "chan/chan.h"
#include "chan/shm_layout.h"
#include "transport/transport.h"
#include "../helpers.h"

#define SEED	   0x1f5e3u
#define MSG	   64u
#define BUF	   (64u * 1024)
#define WARMUP	   20
#define RING_DEF   (256u * 1024)
#define CONNECT_MS 20000

struct opts {
	const char *bdf, *file;
	unsigned int idx, ring;
	int wait_mode;
};

static uint8_t buf[BUF];

__attribute__((noreturn)) static void usage(void)
{
	fprintf(stderr,
		"usage: vm-chan init FILE NCHAN RING | stat FILE NCHAN RING\n"
		"       vm-chan [-d BDF | -f FILE] [-c IDX] [-r RING] [-w adaptive|sleep|spin]\n"
		"               send BYTES | recv BYTES | ping K | pong K\n"
		"       vm-chan tcp-pong PORT K | tcp-ping ADDR PORT K\n"
		"       vm-chan tcp-recv PORT BYTES | tcp-send ADDR PORT BYTES\n");
	exit(2);
}

static unsigned long num(const char *s)
{
	char *end;
	unsigned long v = strtoul(s, &end, 0);

	if (end == s || *end)
		usage();
	return v;
}

static double us(uint64_t ns)
{
	return (double)ns / 1000.0;
}

/* ---- host: lay the channels out, look at them afterwards ---- */

static uint8_t *host_map(const char *file, unsigned int nchan,
			 unsigned int ring, uint64_t *rsz, size_t *len);

static int cmd_init(const char *file, unsigned int nchan, unsigned int ring)
{
	uint64_t rsz;
	size_t len;
	uint8_t *mem = host_map(file, nchan, ring, &rsz, &len);

	for (unsigned int i = 0; i < nchan; i++)
		T_ASSERT_OK(chan_region_init(mem + i * rsz, rsz, ring));
	munmap(mem, len);
	printf("vm-chan: %u channel(s) of %u-byte rings in %s\n", nchan, ring,
	       file);
	return 0;
}

/* Map FILE for the host commands; checks that nchan regions fit. */
static uint8_t *host_map(const char *file, unsigned int nchan,
			 unsigned int ring, uint64_t *rsz, size_t *len)
{
	struct stat st;
	uint8_t *mem;
	int fd;

	if (chan_region_size(ring, rsz))
		t_fail("ring size %u: not a power of two in range", ring);
	fd = open(file, O_RDWR | O_CLOEXEC);
	if (fd < 0 || fstat(fd, &st) < 0)
		t_fail("%s: %s", file, strerror(errno));
	if ((uint64_t)st.st_size < *rsz * nchan)
		t_fail("%s: %lld bytes, %u channels need %llu", file,
		       (long long)st.st_size, nchan,
		       (unsigned long long)(*rsz * nchan));
	*len = (size_t)st.st_size;
	T_ASSERT_OK(xport_map(fd, 0, *len, (void **)&mem));
	close(fd);
	return mem;
}

/* What the host sees of each direction after the guests ran: the counters
 * and the end-of-stream word, straight from the shared file. */
static int cmd_stat(const char *file, unsigned int nchan, unsigned int ring)
{
	uint64_t rsz;
	size_t len;
	uint8_t *mem = host_map(file, nchan, ring, &rsz, &len);

	for (unsigned int i = 0; i < nchan; i++) {
		struct ivmc_shm_hdr *h = (void *)(mem + i * rsz);

		for (int d = 0; d < 2; d++) {
			uint64_t pw = ivmc_load_acquire(&h->dir[d].prod);
			uint64_t cw = ivmc_load_acquire(&h->dir[d].cons);
			uint64_t fin = ivmc_load_acquire(&h->dir[d].fin);

			printf("vm-chan: STAT chan=%u dir=%d magic=%s prod=%u cons=%u fin=%s end=%llu\n",
			       i, d, h->magic == IVMC_SHM_MAGIC ? "ok" : "bad",
			       ivmc_w_ctr(pw), ivmc_w_ctr(cw),
			       fin & IVMC_FIN_SET ? "set" : "no",
			       (unsigned long long)(fin & IVMC_OFF_MASK));
		}
	}
	munmap(mem, len);
	return 0;
}

/* ---- guest: open a channel in the BAR (or a file) ---- */

static struct chan *open_chan(const struct opts *o, int side)
{
	struct chan_cfg cfg = { .side = side, .side_fd = -1,
				.wait_mode = o->wait_mode };
	uint64_t size, rsz, off;
	struct chan *c;
	struct stat st;
	int fd, err;

	if (o->file) {
		fd = open(o->file, O_RDWR | O_CLOEXEC);
		if (fd < 0 || fstat(fd, &st) < 0)
			t_fail("%s: %s", o->file, strerror(errno));
		size = (uint64_t)st.st_size;
	} else {
		err = xport_ivshmem_open(o->bdf, &fd, &size);
		if (err)
			t_fail("ivshmem device %s: %s",
			       o->bdf ? o->bdf : "(any)", t_strerror(err));
	}
	if (chan_region_size(o->ring, &rsz))
		t_fail("ring size %u: not a power of two in range", o->ring);
	off = o->idx * rsz;
	if (off >= size)
		t_fail("channel %u at %llu: past the end (%llu bytes)", o->idx,
		       (unsigned long long)off, (unsigned long long)size);
	err = chan_open_mem(&cfg, fd, off, size - off, &c);
	if (err)
		t_fail("chan_open_mem at %llu: %s", (unsigned long long)off,
		       t_strerror(err));
	close(fd); /* the mappings stay */
	return c;
}

static void send_all(struct chan *c, const void *p, size_t n)
{
	struct iovec iov = { (void *)p, n };

	while (iov.iov_len) {
		ssize_t r = chan_sendv(c, &iov, 1, 0);

		if (r <= 0)
			t_fail("chan_sendv: %s", t_strerror(r ? r : -EIO));
		iov.iov_base = (uint8_t *)iov.iov_base + r;
		iov.iov_len -= (size_t)r;
	}
}

static void recv_all(struct chan *c, void *p, size_t n)
{
	struct iovec iov = { p, n };
	ssize_t r = chan_recvv(c, &iov, 1, CHAN_WAITALL);

	if (r != (ssize_t)n)
		t_fail("chan_recvv of %zu: %zd (%s)", n, r, t_strerror(r));
}

static void report_rate(const char *what, uint64_t bytes, uint64_t ns)
{
	printf("vm-chan: RESULT %s bytes=%llu ms=%.1f MiBps=%.1f\n", what,
	       (unsigned long long)bytes, (double)ns / 1e6,
	       (double)bytes / 1048576.0 / ((double)ns / 1e9));
}

static int cmd_send(struct chan *c, uint64_t total)
{
	uint64_t off = 0, t0 = t_now_ns();

	while (off < total) {
		size_t n = total - off < BUF ? (size_t)(total - off) : BUF;

		t_fill(SEED, off, buf, n);
		send_all(c, buf, n);
		off += n;
	}
	T_ASSERT_OK(chan_shutdown(c, SHUT_WR));
	report_rate("send chan", total, t_now_ns() - t0);
	return 0;
}

/* Every byte checked, then end of stream right after the last one. */
static int cmd_recv(struct chan *c, uint64_t total)
{
	uint64_t off = 0, t0 = 0;
	struct iovec iov = { buf, BUF };

	for (;;) {
		ssize_t r = chan_recvv(c, &iov, 1, 0);

		if (r < 0)
			t_fail("chan_recvv at %llu: %s",
			       (unsigned long long)off, t_strerror(r));
		if (!t0)
			t0 = t_now_ns(); /* from the first byte: not the wait */
		if (r == 0)
			break;
		if (off + (uint64_t)r > total)
			t_fail("%llu bytes: more than the %llu sent",
			       (unsigned long long)(off + r),
			       (unsigned long long)total);
		if (t_verify(SEED, off, buf, (size_t)r))
			t_fail("bad bytes at %llu", (unsigned long long)off);
		off += (uint64_t)r;
	}
	if (off != total)
		t_fail("end of stream at %llu, want %llu",
		       (unsigned long long)off, (unsigned long long)total);
	report_rate("recv chan", total, t_now_ns() - t0);
	printf("vm-chan: verified %llu bytes\n", (unsigned long long)total);
	return 0;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

static void report_rtt(const char *what, uint64_t *ns, unsigned long k)
{
	const char *cap = getenv("IVMC_POLL_MAX_US");

	qsort(ns, k, sizeof(*ns), cmp_u64);
	printf("vm-chan: RESULT ping %s n=%lu p50_us=%.1f p99_us=%.1f min_us=%.1f max_us=%.1f poll_max_us=%s\n",
	       what, k, us(ns[k / 2]), us(ns[k * 99 / 100]), us(ns[0]),
	       us(ns[k - 1]), cap ? cap : "default");
}

/* One round trip's message: the round number in every 8 bytes. */
static void msg_fill(uint8_t *m, uint64_t round)
{
	for (unsigned int i = 0; i < MSG; i += 8)
		memcpy(m + i, &round, 8);
}

/* A ping-pong over chan (c) or a socket (fd >= 0). */
struct pp {
	struct chan *c;
	int fd;
};

static void pp_send(const struct pp *p, const void *m, size_t n)
{
	if (p->c) {
		send_all(p->c, m, n);
		return;
	}
	for (size_t done = 0; done < n;) {
		ssize_t r = send(p->fd, (const uint8_t *)m + done, n - done,
				 MSG_NOSIGNAL);

		if (r < 0 && errno != EINTR)
			t_fail("send: %s", strerror(errno));
		done += r > 0 ? (size_t)r : 0;
	}
}

static void pp_recv(const struct pp *p, void *m, size_t n)
{
	if (p->c) {
		recv_all(p->c, m, n);
		return;
	}
	for (size_t done = 0; done < n;) {
		ssize_t r = recv(p->fd, (uint8_t *)m + done, n - done, 0);

		if (r == 0)
			t_fail("recv: end of stream after %zu of %zu", done, n);
		if (r < 0 && errno != EINTR)
			t_fail("recv: %s", strerror(errno));
		done += r > 0 ? (size_t)r : 0;
	}
}

static int ping(const struct pp *p, unsigned long k, const char *what)
{
	uint64_t *ns = calloc(k, sizeof(*ns));
	uint8_t out[MSG], in[MSG];

	if (!ns || !k)
		t_fail("ping: %lu round trips", k);
	for (unsigned long i = 0; i < k + WARMUP; i++) {
		uint64_t t0 = t_now_ns();

		msg_fill(out, i);
		pp_send(p, out, MSG);
		pp_recv(p, in, MSG);
		if (i >= WARMUP)
			ns[i - WARMUP] = t_now_ns() - t0;
		if (memcmp(in, out, MSG))
			t_fail("round %lu: the echo differs", i);
	}
	report_rtt(what, ns, k);
	free(ns);
	return 0;
}

static int pong(const struct pp *p, unsigned long k)
{
	uint8_t m[MSG];

	for (unsigned long i = 0; i < k + WARMUP; i++) {
		pp_recv(p, m, MSG);
		pp_send(p, m, MSG);
	}
	printf("vm-chan: pong: %lu round trips answered\n", k + WARMUP);
	return 0;
}

/* ---- TCP over the virtual NIC, for comparison ---- */

static void nodelay(int fd)
{
	int one = 1;

	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

static int tcp_accept(unsigned long port)
{
	struct sockaddr_in a = { .sin_family = AF_INET,
				 .sin_port = htons((uint16_t)port) };
	int one = 1, l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), fd;

	if (l < 0)
		t_fail("socket: %s", strerror(errno));
	setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(l, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(l, 1) < 0)
		t_fail("bind/listen on port %lu: %s", port, strerror(errno));
	fd = accept4(l, NULL, NULL, SOCK_CLOEXEC);
	if (fd < 0)
		t_fail("accept: %s", strerror(errno));
	close(l);
	nodelay(fd);
	return fd;
}

/* The listener may not be up yet: retry for CONNECT_MS. */
static int tcp_connect(const char *addr, unsigned long port)
{
	struct sockaddr_in a = { .sin_family = AF_INET,
				 .sin_port = htons((uint16_t)port) };
	uint64_t t0 = t_now_ns();

	if (inet_pton(AF_INET, addr, &a.sin_addr) != 1)
		usage();
	for (;;) {
		int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

		if (fd >= 0 && !connect(fd, (struct sockaddr *)&a, sizeof(a))) {
			nodelay(fd);
			return fd;
		}
		if (fd >= 0)
			close(fd);
		if (t_now_ns() - t0 > CONNECT_MS * 1000000ull)
			t_fail("connect %s:%lu: %s", addr, port,
			       strerror(errno));
		usleep(50000);
	}
}

static int tcp_send(int fd, uint64_t total)
{
	uint64_t off = 0, t0 = t_now_ns();
	struct pp p = { NULL, fd };

	while (off < total) {
		size_t n = total - off < BUF ? (size_t)(total - off) : BUF;

		t_fill(SEED, off, buf, n);
		pp_send(&p, buf, n);
		off += n;
	}
	shutdown(fd, SHUT_WR);
	report_rate("send tcp", total, t_now_ns() - t0);
	return 0;
}

static int tcp_recv(int fd, uint64_t total)
{
	uint64_t off = 0, t0 = 0;

	for (;;) {
		ssize_t r = recv(fd, buf, BUF, 0);

		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			t_fail("recv: %s", strerror(errno));
		if (!t0)
			t0 = t_now_ns();
		if (r == 0)
			break;
		if (off + (uint64_t)r > total ||
		    t_verify(SEED, off, buf, (size_t)r))
			t_fail("bad or extra bytes at %llu",
			       (unsigned long long)off);
		off += (uint64_t)r;
	}
	if (off != total)
		t_fail("tcp: end of stream at %llu, want %llu",
		       (unsigned long long)off, (unsigned long long)total);
	report_rate("recv tcp", total, t_now_ns() - t0);
	return 0;
}

static int tcp_cmd(int argc, char **argv)
{
	const char *cmd = argv[0];

	if (!strcmp(cmd, "tcp-pong") && argc == 3)
		return pong(&(struct pp){ NULL, tcp_accept(num(argv[1])) },
			    num(argv[2]));
	if (!strcmp(cmd, "tcp-ping") && argc == 4)
		return ping(&(struct pp){ NULL,
					  tcp_connect(argv[1], num(argv[2])) },
			    num(argv[3]), "tcp");
	if (!strcmp(cmd, "tcp-recv") && argc == 3)
		return tcp_recv(tcp_accept(num(argv[1])), num(argv[2]));
	if (!strcmp(cmd, "tcp-send") && argc == 4)
		return tcp_send(tcp_connect(argv[1], num(argv[2])),
				num(argv[3]));
	usage();
	return 2;
}

/* ---- main ---- */

static int wait_mode(const char *s)
{
	if (!strcmp(s, "adaptive"))
		return CHAN_WAIT_ADAPTIVE;
	if (!strcmp(s, "sleep"))
		return CHAN_WAIT_SLEEP;
	if (!strcmp(s, "spin"))
		return CHAN_WAIT_SPIN;
	usage();
	return 0;
}

static int chan_cmd(const struct opts *o, const char *cmd, unsigned long n)
{
	bool first = !strcmp(cmd, "send") || !strcmp(cmd, "ping");
	struct chan *c = open_chan(o, first ? 0 : 1);
	struct pp p = { c, -1 };
	int r;

	if (!strcmp(cmd, "send"))
		r = cmd_send(c, n);
	else if (!strcmp(cmd, "recv"))
		r = cmd_recv(c, n);
	else if (!strcmp(cmd, "ping"))
		r = ping(&p, n, o->wait_mode == CHAN_WAIT_SLEEP ? "chan-sleep"
								: "chan");
	else if (!strcmp(cmd, "pong"))
		r = pong(&p, n);
	else
		usage();
	chan_close(c);
	return r;
}

int main(int argc, char **argv)
{
	struct opts o = { .ring = RING_DEF, .wait_mode = CHAN_WAIT_ADAPTIVE };
	int opt;

	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc == 5 && !strcmp(argv[1], "init"))
		return cmd_init(argv[2], (unsigned int)num(argv[3]),
				(unsigned int)num(argv[4]));
	if (argc == 5 && !strcmp(argv[1], "stat"))
		return cmd_stat(argv[2], (unsigned int)num(argv[3]),
				(unsigned int)num(argv[4]));
	if (argc > 1 && !strncmp(argv[1], "tcp-", 4))
		return tcp_cmd(argc - 1, argv + 1);
	while ((opt = getopt(argc, argv, "d:f:c:r:w:")) != -1) {
		switch (opt) {
		case 'd':
			o.bdf = optarg;
			break;
		case 'f':
			o.file = optarg;
			break;
		case 'c':
			o.idx = (unsigned int)num(optarg);
			break;
		case 'r':
			o.ring = (unsigned int)num(optarg);
			break;
		case 'w':
			o.wait_mode = wait_mode(optarg);
			break;
		default:
			usage();
		}
	}
	if (argc - optind != 2)
		usage();
	return chan_cmd(&o, argv[optind], num(argv[optind + 1]));
}
