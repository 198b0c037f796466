/* SPDX-License-Identifier: MIT */
/*
 * Description: a program that moves a socket's bytes through io_uring
 * keeps its stream under the preload (issue 4). This binary runs through
 * ivmc-run as server and client. The server forks: the child (no io_uring)
 * accepts a first connection and echoes 8 x 256 KiB with read/write (it
 * attaches: the control case); the parent makes an io_uring instance (raw
 * system calls, as liburing does), accepts a second connection, writes 20
 * one-byte greetings 10 ms apart with write(2) (time enough to attach),
 * then receives 4 MiB and sends 1 MiB only through the ring
 * (IORING_OP_RECV, IORING_OP_SEND), checking every byte; the client checks
 * every byte it gets back. Afterwards ivmcd must have paired exactly one
 * connection: the first. Without the preload's io_uring check the second
 * attaches during the greetings, the client's bytes go into the shared
 * ring, and the server's io_uring receive waits for ever (alarm).
 */
#include <linux/io_uring.h>
#include <poll.h>
#include <stdatomic.h>
#include <sys/mman.h>
#include <sys/syscall.h>

#include "t_ctl.h"

#define ECHO_CHUNK (256 * 1024)
#define ECHO_ROUNDS 8
#define URING_IN (4u << 20)
#define URING_OUT (1u << 20)
#define GREETINGS 20

static int port;

static uint8_t pat(uint64_t off, int salt)
{
	return (uint8_t)((off * 2654435761u >> 11) + (uint64_t)salt * 77);
}

static void fill(uint8_t *b, size_t n, uint64_t off, int salt)
{
	for (size_t i = 0; i < n; i++)
		b[i] = pat(off + i, salt);
}

static void check(const uint8_t *b, size_t n, uint64_t off, int salt,
		  const char *what)
{
	for (size_t i = 0; i < n; i++)
		if (b[i] != pat(off + i, salt))
			t_fail("%s: byte %llu differs", what,
			       (unsigned long long)(off + i));
}

static void send_all(int fd, const uint8_t *b, size_t n)
{
	while (n) {
		ssize_t k = write(fd, b, n);

		if (k <= 0)
			t_fail("write: %s", k ? strerror(errno) : "0");
		b += k;
		n -= (size_t)k;
	}
}

static void recv_all(int fd, uint8_t *b, size_t n)
{
	while (n) {
		ssize_t k = read(fd, b, n);

		if (k <= 0)
			t_fail("read: %s", k ? strerror(errno) : "end of stream");
		b += k;
		n -= (size_t)k;
	}
}

/* ---- a minimal io_uring: one request at a time ---------------------------- */

struct uring {
	int fd;
	_Atomic unsigned int *sq_tail, *cq_head;
	const _Atomic unsigned int *cq_tail;
	unsigned int sq_mask, cq_mask, *sq_array;
	struct io_uring_sqe *sqes;
	const struct io_uring_cqe *cqes;
};

static void uring_init(struct uring *r)
{
	struct io_uring_params p = { 0 };
	size_t sq_len, cq_len;
	uint8_t *sq, *cq;

	r->fd = (int)syscall(__NR_io_uring_setup, 4, &p);
	if (r->fd < 0)
		t_fail("io_uring_setup: %s", strerror(errno));
	sq_len = p.sq_off.array + p.sq_entries * sizeof(unsigned int);
	cq_len = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
	if (p.features & IORING_FEAT_SINGLE_MMAP)
		sq_len = cq_len = sq_len > cq_len ? sq_len : cq_len;
	sq = mmap(NULL, sq_len, PROT_READ | PROT_WRITE, MAP_SHARED, r->fd,
		  IORING_OFF_SQ_RING);
	cq = (p.features & IORING_FEAT_SINGLE_MMAP) ? sq :
		mmap(NULL, cq_len, PROT_READ | PROT_WRITE, MAP_SHARED, r->fd,
		     IORING_OFF_CQ_RING);
	r->sqes = mmap(NULL, p.sq_entries * sizeof(struct io_uring_sqe),
		       PROT_READ | PROT_WRITE, MAP_SHARED, r->fd,
		       IORING_OFF_SQES);
	if (sq == MAP_FAILED || cq == MAP_FAILED || r->sqes == MAP_FAILED)
		t_fail("io_uring mmap: %s", strerror(errno));
	r->sq_tail = (_Atomic unsigned int *)(sq + p.sq_off.tail);
	r->sq_mask = *(unsigned int *)(sq + p.sq_off.ring_mask);
	r->sq_array = (unsigned int *)(sq + p.sq_off.array);
	r->cq_head = (_Atomic unsigned int *)(cq + p.cq_off.head);
	r->cq_tail = (const _Atomic unsigned int *)(cq + p.cq_off.tail);
	r->cq_mask = *(unsigned int *)(cq + p.cq_off.ring_mask);
	r->cqes = (const struct io_uring_cqe *)(cq + p.cq_off.cqes);
}

/* One RECV or SEND through the ring; returns its result. */
static int uring_io(struct uring *r, int op, int fd, void *buf, size_t len)
{
	unsigned int tail = atomic_load_explicit(r->sq_tail, memory_order_relaxed);
	unsigned int idx = tail & r->sq_mask, head;
	struct io_uring_sqe *e = &r->sqes[idx];
	int res;

	memset(e, 0, sizeof(*e));
	e->opcode = (uint8_t)op;
	e->fd = fd;
	e->addr = (uint64_t)(uintptr_t)buf;
	e->len = (uint32_t)len;
	r->sq_array[idx] = idx;
	atomic_store_explicit(r->sq_tail, tail + 1, memory_order_release);
	if (syscall(__NR_io_uring_enter, r->fd, 1, 1, IORING_ENTER_GETEVENTS,
		    NULL, 0) < 0)
		t_fail("io_uring_enter: %s", strerror(errno));
	head = atomic_load_explicit(r->cq_head, memory_order_relaxed);
	if (head == atomic_load_explicit(r->cq_tail, memory_order_acquire))
		t_fail("io_uring: no completion after GETEVENTS");
	res = r->cqes[head & r->cq_mask].res;
	atomic_store_explicit(r->cq_head, head + 1, memory_order_release);
	return res;
}

/* ---- the two roles -------------------------------------------------------- */

static void echo_server(int lfd)
{
	static uint8_t buf[ECHO_CHUNK];
	int fd = accept(lfd, NULL, NULL);

	if (fd < 0)
		t_fail("accept 1: %s", strerror(errno));
	for (int i = 0; i < ECHO_ROUNDS; i++) {
		recv_all(fd, buf, ECHO_CHUNK);
		check(buf, ECHO_CHUNK, (uint64_t)i * ECHO_CHUNK, 1, "echo in");
		fill(buf, ECHO_CHUNK, (uint64_t)i * ECHO_CHUNK, 2);
		send_all(fd, buf, ECHO_CHUNK);
	}
	close(fd);
}

static void uring_server(int lfd)
{
	static uint8_t buf[URING_IN];
	size_t got = 0, sent = 0;
	struct uring r;
	int fd;

	uring_init(&r);
	fd = accept(lfd, NULL, NULL);
	if (fd < 0)
		t_fail("accept 2: %s", strerror(errno));
	for (int i = 0; i < GREETINGS; i++) {
		send_all(fd, (const uint8_t *)"g", 1);
		poll(NULL, 0, 10);
	}
	while (got < URING_IN) {
		int n = uring_io(&r, IORING_OP_RECV, fd, buf + got,
				 URING_IN - got);

		if (n <= 0)
			t_fail("io_uring recv after %zu bytes: %s", got,
			       n ? strerror(-n) : "end of stream");
		got += (size_t)n;
	}
	check(buf, URING_IN, 0, 3, "io_uring in");
	fill(buf, URING_OUT, 0, 4);
	while (sent < URING_OUT) {
		int n = uring_io(&r, IORING_OP_SEND, fd, buf + sent,
				 URING_OUT - sent);

		if (n <= 0)
			t_fail("io_uring send after %zu bytes: %s", sent,
			       n ? strerror(-n) : "0");
		sent += (size_t)n;
	}
	close(fd);
}

static int server(void)
{
	struct sockaddr_in a = { .sin_family = AF_INET,
				 .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t len = sizeof(a);
	int lfd = socket(AF_INET, SOCK_STREAM, 0), st;
	pid_t kid;

	if (lfd < 0 || bind(lfd, (struct sockaddr *)&a, sizeof(a)) ||
	    listen(lfd, 4) || getsockname(lfd, (struct sockaddr *)&a, &len))
		t_fail("listen: %s", strerror(errno));
	printf("%d\n", ntohs(a.sin_port));
	fflush(stdout);
	kid = fork();
	if (kid < 0)
		t_fail("fork");
	if (kid == 0) {
		echo_server(lfd);
		_exit(0);
	}
	if (waitpid(kid, &st, 0) != kid || !WIFEXITED(st) || WEXITSTATUS(st))
		t_fail("the echo server failed (%#x)", st);
	uring_server(lfd);
	close(lfd);
	return 0;
}

static int dial(void)
{
	struct sockaddr_in a = { .sin_family = AF_INET,
				 .sin_port = htons((uint16_t)port),
				 .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	int fd = socket(AF_INET, SOCK_STREAM, 0);

	if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof(a)))
		t_fail("connect: %s", strerror(errno));
	return fd;
}

static int client(void)
{
	static uint8_t buf[URING_IN];
	int fd = dial();

	for (int i = 0; i < ECHO_ROUNDS; i++) {
		fill(buf, ECHO_CHUNK, (uint64_t)i * ECHO_CHUNK, 1);
		send_all(fd, buf, ECHO_CHUNK);
		recv_all(fd, buf, ECHO_CHUNK);
		check(buf, ECHO_CHUNK, (uint64_t)i * ECHO_CHUNK, 2, "echo back");
	}
	close(fd);
	fd = dial();
	recv_all(fd, buf, GREETINGS);
	fill(buf, URING_IN, 0, 3);
	send_all(fd, buf, URING_IN);
	recv_all(fd, buf, URING_OUT);
	check(buf, URING_OUT, 0, 4, "from io_uring");
	close(fd);
	return 0;
}

int main(int argc, char **argv)
{
	char lib[PATH_MAX];
	pid_t d;
	int st;

	if (argc == 5) {
		alarm(30);
		port = atoi(argv[2]);
		return !strcmp(argv[1], "--server") ? server() : client();
	}
	t_alarm(90);
	t_bin(lib, sizeof(lib), "../lib/libivmc-preload.so");
	if (access(lib, R_OK))
		t_skip("no libivmc-preload.so beside the tools (make)");
	if (syscall(__NR_io_uring_setup, 0, NULL) < 0 && errno == ENOSYS)
		t_skip("no io_uring in this kernel");
	d = t_daemon_start(NULL);
	t_ivmc_self_pair("-", "-");
	if (!t_paired_exactly(1))
		t_fail("ivmcd did not pair exactly the first connection");
	st = t_daemon_stop(d);
	T_ASSERT(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	return T_PASS;
}
