/* SPDX-License-Identifier: MIT */
/*
 * Description: a channel laid out by chan_region_init() at an offset in a
 * shared file and opened with chan_open_mem() (no doorbell: waiters poll),
 * as between two VMs on an ivshmem BAR: a stream verified byte by byte then
 * end of stream, in the sleep-only and the adaptive wait modes, a
 * ping-pong, and the refusals (bad offset, size, header, a side stream the
 * header does not have or the other way round; chan-mem-side has the
 * channels with one).
 */
#include <errno.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include "chan/chan.h"
#include "chan/shm_layout.h"
#include "transport/transport.h"
#include "helpers.h"
#include "t_chan.h"

#define RING   16384u
#define SLOT   (IVMC_SHM_HDR_SIZE + 2 * RING) /* one region */
#define FILESZ (4 * SLOT)
#define STREAM (1u << 20)
#define ROUNDS 200
#define SEED   0x3e3

static int fd;
static uint8_t *mem;

static struct chan *open_at(int side, uint64_t off, int mode)
{
	struct chan_cfg cfg = { .side = side, .side_fd = -1,
				.wait_mode = mode, .poll_max_us = 200 };
	struct chan *c;
	int err = chan_open_mem(&cfg, fd, off, FILESZ - off, &c);

	if (err)
		t_fail("chan_open_mem(side %d, off %llu): %s", side,
		       (unsigned long long)off, t_strerror(err));
	return c;
}

struct stream_arg {
	uint64_t off;
	int mode;
};

/* Child: read the whole stream, check it, then end of stream. */
static void reader(void *p)
{
	const struct stream_arg *a = p;
	struct chan *c = open_at(1, a->off, a->mode);
	static uint8_t buf[7000]; /* not a divisor of the ring: wraps */
	struct iovec iov = { buf, sizeof(buf) };
	uint64_t got = 0;
	ssize_t r;

	while ((r = chan_recvv(c, &iov, 1, 0)) > 0) {
		if (t_verify(SEED, got, buf, (size_t)r))
			_exit(T_FAIL);
		got += (uint64_t)r;
	}
	if (r < 0 || got != STREAM)
		t_fail("reader: %zd after %llu bytes", r,
		       (unsigned long long)got);
	chan_close(c);
}

static void stream(uint64_t off, int mode)
{
	struct stream_arg a = { off, mode };
	struct chan_stats st;
	struct chan *c;
	pid_t pid;

	T_ASSERT_OK(chan_region_init(mem + off, SLOT, RING, false, 0));
	pid = t_fork(reader, &a);
	c = open_at(0, off, mode);
	T_ASSERT_EQ(chan_fd(c), -1);
	t_chan_send_stream(c, SEED, STREAM, 0);
	T_ASSERT_OK(chan_shutdown(c, SHUT_WR));
	T_ASSERT_EQ(t_wait(pid, 30000), 0);
	chan_stats(c, &st);
	if (mode == CHAN_WAIT_SLEEP) /* the ring filled: we polled */
		T_ASSERT(st.sleeps > 0);
	chan_close(c);
}

static void echo(void *p)
{
	struct chan *c = open_at(1, *(uint64_t *)p, CHAN_WAIT_ADAPTIVE);
	uint8_t m[64];
	struct iovec iov = { m, sizeof(m) };

	for (int i = 0; i < ROUNDS; i++) {
		if (chan_recvv(c, &iov, 1, CHAN_WAITALL) != sizeof(m) ||
		    chan_sendv(c, &iov, 1, 0) != sizeof(m))
			t_fail("echo: round %d", i);
	}
	chan_close(c);
}

static void ping_pong(uint64_t off)
{
	uint8_t out[64], in[64];
	struct iovec o = { out, sizeof(out) }, i = { in, sizeof(in) };
	struct chan *c;
	pid_t pid;

	T_ASSERT_OK(chan_region_init(mem + off, SLOT, RING, false, 0));
	pid = t_fork(echo, &off);
	c = open_at(0, off, CHAN_WAIT_ADAPTIVE);
	for (int n = 0; n < ROUNDS; n++) {
		memset(out, n, sizeof(out));
		T_ASSERT_EQ(chan_sendv(c, &o, 1, 0), sizeof(out));
		T_ASSERT_EQ(chan_recvv(c, &i, 1, CHAN_WAITALL), sizeof(in));
		T_ASSERT(!memcmp(in, out, sizeof(in)));
	}
	T_ASSERT_EQ(t_wait(pid, 30000), 0);
	chan_close(c);
}

static int try_open(int side_fd, uint64_t off, uint64_t avail)
{
	struct chan_cfg cfg = { .side = 0, .side_fd = side_fd };
	struct chan *c;
	int err = chan_open_mem(&cfg, fd, off, avail, &c);

	if (!err)
		chan_close(c);
	return err;
}

static void refusals(void)
{
	struct ivmc_shm_hdr *h = (void *)(mem + SLOT);

	T_ASSERT_EQ(chan_region_init(mem, SLOT, 3000, false, 0), -EINVAL);
	T_ASSERT_EQ(chan_region_init(mem + 64, SLOT, RING, false, 0), -EINVAL);
	T_ASSERT_EQ(chan_region_init(mem, SLOT - 1, RING, false, 0), -EMSGSIZE);
	T_ASSERT_OK(chan_region_init(mem + SLOT, SLOT, RING, false, 0));
	T_ASSERT_EQ(try_open(-1, SLOT, SLOT), 0);
	T_ASSERT_EQ(try_open(0, SLOT, SLOT), -EPROTO); /* no side stream */
	T_ASSERT_EQ(try_open(-1, SLOT + 512, SLOT), -EINVAL);
	T_ASSERT_EQ(try_open(-1, SLOT, SLOT - 4096), -EMSGSIZE);
	T_ASSERT_EQ(try_open(-1, SLOT, 100), -EMSGSIZE);
	h->flags = IVMC_SHM_F_SIDE; /* formatted for a side stream */
	T_ASSERT_EQ(try_open(-1, SLOT, SLOT), -EPROTO);
	h->flags = 0;
	h->magic ^= 1;
	T_ASSERT_EQ(try_open(-1, SLOT, SLOT), -EPROTO);
	h->magic ^= 1;
	h->ring_size = RING * 2;
	/* region_size no longer matches the ring size */
	T_ASSERT_EQ(try_open(-1, SLOT, SLOT), -EPROTO);
}

int main(void)
{
	t_alarm(60);
	T_ASSERT_OK(xport_memfd_create(FILESZ, &fd));
	T_ASSERT_OK(xport_map(fd, 0, FILESZ, (void **)&mem));
	refusals();
	stream(2 * SLOT, CHAN_WAIT_SLEEP); /* only the polling sleep */
	stream(3 * SLOT, CHAN_WAIT_ADAPTIVE);
	ping_pong(SLOT);
	munmap(mem, FILESZ);
	close(fd);
	return T_PASS;
}
