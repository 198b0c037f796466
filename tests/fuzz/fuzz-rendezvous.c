/* SPDX-License-Identifier: MIT */
/*
 * Description: fuzz target: the native rendezvous, both ways, through the
 * public calls. Listener: a client queues the input as its HELLO (with
 * descriptors or not) and ivmc_accept() serves it. Connector: a fake
 * listener (a thread) answers ivmc_connect()'s HELLO with the input as
 * ACCEPT/REJECT and chosen descriptors (a real region and doorbell, or
 * /dev/null, unsealed or write-sealed memfds, a read-only region, sockets
 * of the wrong type...). Asserts: each call returns exactly what
 * docs/protocol.md (section 5) prescribes for that message; the listener's
 * reply is the one it must send; a channel that comes out of it works; no
 * descriptor leaks, no crash.
 *
 * Input: byte 0 = bit 0: connector (else listener); bits 1-2: descriptors
 * sent (0-3); bit 3: the fake listener closes without answering; bit 4: the
 * client goes away before the listener answers. Bytes 1-3: descriptor kinds.
 * Bytes 4..: the message (any length).
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "ivmc.h"
#include "chan/chan.h"
#include "chan/shm_layout.h"
#include "fuzz.h"

/* The wire format, from docs/protocol.md 5.1 (not from the code). */
#define RDV_MAGIC   0x52564d49u
#define RDV_VERSION 1u
#define RDV_HELLO   1u
#define RDV_ACCEPT  2u
#define RDV_REJECT  3u
#define RDV_SIZE    32u
#define RING	    4096u /* the listener's ring_size */

struct rdv {
	uint32_t magic;
	uint16_t version, type;
	int32_t status;
	uint32_t ring_size, reserved[4];
};

_Static_assert(sizeof(struct rdv) == RDV_SIZE, "rdv layout");

enum kind {
	K_REGION,     /* a region as a listener makes it */
	K_DOORBELL,   /* one end of an AF_UNIX stream socketpair */
	K_DEVNULL,
	K_UNSEALED,   /* memfd of the right size, no seals */
	K_SIDEREGION, /* a region formatted for a side stream */
	K_WSEALED,    /* memfd with F_SEAL_WRITE too */
	K_SEQPACKET,  /* AF_UNIX seqpacket socket */
	K_UNCONN,     /* AF_UNIX stream socket, not connected */
	K_RDONLY,     /* a region opened read-only */
	K_SMALL,      /* sealed memfd of 100 bytes */
	NKINDS
};

/* Not used here: loads are left as they are. */
uint64_t ivmc_fuzz_shm(const volatile void *p, uint64_t v, size_t size)
{
	(void)p;
	(void)size;
	return v;
}

static int memfd(uint64_t size, int seals)
{
	int fd = memfd_create("fuzz", MFD_CLOEXEC | MFD_ALLOW_SEALING);

	FZ_ASSERT(fd >= 0 && !ftruncate(fd, (off_t)size), "memfd");
	if (seals)
		FZ_ASSERT(!fcntl(fd, F_ADD_SEALS, seals), "seals");
	return fd;
}

/* A descriptor of that kind; *keep gets what a listener would keep (the
 * other doorbell end, a second handle on the region) or -1. */
static int make_fd(enum kind k, int *keep)
{
	const int seals = F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL;
	char path[64];
	int fd, sv[2];

	*keep = -1;
	switch (k) {
	case K_REGION:
	case K_SIDEREGION:
	case K_RDONLY:
		FZ_ASSERT(!chan_region_create(RING, 0, k == K_SIDEREGION, 0, &fd),
			  "region");
		if (k != K_RDONLY) {
			*keep = dup(fd);
			return fd;
		}
		snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
		sv[0] = open(path, O_RDONLY | O_CLOEXEC);
		FZ_ASSERT(sv[0] >= 0, "reopen");
		close(fd);
		return sv[0];
	case K_DOORBELL:
	case K_SEQPACKET:
		FZ_ASSERT(!socketpair(AF_UNIX, (k == K_DOORBELL ? SOCK_STREAM
								 : SOCK_SEQPACKET) |
						  SOCK_CLOEXEC, 0, sv), "socketpair");
		if (k == K_DOORBELL)
			*keep = sv[0];
		else
			close(sv[0]);
		return sv[1];
	case K_DEVNULL:
		fd = open("/dev/null", O_RDWR | O_CLOEXEC);
		FZ_ASSERT(fd >= 0, "/dev/null");
		return fd;
	case K_UNSEALED: return memfd(IVMC_SHM_HDR_SIZE + 2 * RING, 0);
	case K_WSEALED:
		return memfd(IVMC_SHM_HDR_SIZE + 2 * RING, seals | F_SEAL_WRITE);
	case K_SMALL: return memfd(100, seals);
	default:
		fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		FZ_ASSERT(fd >= 0, "socket");
		return fd;
	}
}

/* What chan_open() must return for region kind r and doorbell kind d
 * (docs/protocol.md 6.3, chan.h). */
static int expect_open(enum kind r, enum kind d)
{
	switch (r) {
	case K_REGION: case K_SIDEREGION: case K_SMALL: break;
	case K_UNSEALED: case K_WSEALED: return -EPERM;
	default: return -EBADFD; /* not a memfd, or not read-write */
	}
	if (r == K_SMALL)
		return -EMSGSIZE;
	if (d == K_SEQPACKET)
		return -EPROTOTYPE;
	if (d == K_UNCONN)
		return -ENOTCONN;
	if (d != K_DOORBELL)
		return -ENOTSOCK;
	return r == K_SIDEREGION ? -EPROTO : 0;
}

static bool msg_common_ok(const struct rdv *m)
{
	for (int i = 0; i < 4; i++)
		if (m->reserved[i])
			return false;
	return m->magic == RDV_MAGIC && m->version == RDV_VERSION;
}

static void send_msg(int fd, const uint8_t *m, size_t len, const int *fds,
		     int nfds)
{
	char cbuf[CMSG_SPACE(3 * sizeof(int))];
	struct iovec v = { (void *)m, len };
	struct msghdr mh = { .msg_iov = &v, .msg_iovlen = 1 };

	if (nfds) {
		struct cmsghdr *cm;

		memset(cbuf, 0, sizeof(cbuf));
		mh.msg_control = cbuf;
		mh.msg_controllen = CMSG_SPACE(nfds * sizeof(int));
		cm = CMSG_FIRSTHDR(&mh);
		cm->cmsg_level = SOL_SOCKET;
		cm->cmsg_type = SCM_RIGHTS;
		cm->cmsg_len = CMSG_LEN(nfds * sizeof(int));
		memcpy(CMSG_DATA(cm), fds, nfds * sizeof(int));
	}
	FZ_ASSERT(sendmsg(fd, &mh, MSG_NOSIGNAL) == (ssize_t)len, "sendmsg: %s",
		  strerror(errno));
}

/* Receive one message and its descriptors (up to 8); returns its length. */
static ssize_t recv_msg(int fd, void *m, size_t len, int *fds, int *nfds)
{
	char cbuf[CMSG_SPACE(8 * sizeof(int))];
	struct iovec v = { m, len };
	struct msghdr mh = { .msg_iov = &v, .msg_iovlen = 1,
			     .msg_control = cbuf, .msg_controllen = sizeof(cbuf) };
	ssize_t n = recvmsg(fd, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);

	*nfds = 0;
	for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); n >= 0 && cm;
	     cm = CMSG_NXTHDR(&mh, cm)) {
		size_t k = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);

		memcpy(fds + *nfds, CMSG_DATA(cm), k * sizeof(int));
		*nfds += (int)k;
	}
	FZ_ASSERT(n < 0 || !(mh.msg_flags & (MSG_TRUNC | MSG_CTRUNC)), "trunc");
	return n < 0 ? -errno : n;
}

/* A few bytes each way over a fresh pair. */
static void exchange(struct ivmc_chan *h, struct chan *c)
{
	uint8_t out[16], in[16];
	struct iovec v = { in, sizeof(in) };
	struct iovec w = { out, sizeof(out) };

	fz_fill(0, 0, out, sizeof(out));
	FZ_ASSERT(ivmc_send(h, out, sizeof(out), IVMC_NONBLOCK) == sizeof(out),
		  "ivmc_send");
	FZ_ASSERT(chan_recvv(c, &v, 1, CHAN_NONBLOCK) == sizeof(in) &&
			  !memcmp(in, out, sizeof(in)), "chan_recvv");
	fz_fill(1, 0, out, sizeof(out));
	FZ_ASSERT(chan_sendv(c, &w, 1, CHAN_NONBLOCK) == sizeof(out), "chan_sendv");
	FZ_ASSERT(ivmc_recv(h, in, sizeof(in), IVMC_NONBLOCK) == sizeof(in) &&
			  !memcmp(in, out, sizeof(in)), "ivmc_recv");
}

static char name_listen[64], name_fake[64];
static struct ivmc_listener *lst;
static int fake_fd;

/* ---- listener side: the input is the HELLO ---- */

static int expect_accept(const uint8_t *msg, size_t len, int nfds)
{
	struct rdv m;

	if (nfds || len != RDV_SIZE)
		return -EPROTO;
	memcpy(&m, msg, sizeof(m));
	if (!msg_common_ok(&m) || m.type != RDV_HELLO)
		return -EPROTO;
	if (m.ring_size && (m.ring_size < 4096 || m.ring_size > (1u << 30) ||
			    (m.ring_size & (m.ring_size - 1))))
		return -EINVAL;
	return 0;
}

/* The listener's answer to our HELLO, given what ivmc_accept() returned. */
static void check_reply(int cl, int r, struct ivmc_chan *h)
{
	struct chan_cfg cfg = { .side = 1, .side_fd = -1,
				.wait_mode = CHAN_WAIT_SLEEP };
	struct chan *c;
	struct rdv m;
	int fds[8], nfds, err;
	ssize_t n = recv_msg(cl, &m, sizeof(m), fds, &nfds);

	FZ_ASSERT(n == RDV_SIZE && msg_common_ok(&m),
		  "listener reply: %zd bytes, magic %#x", n, m.magic);
	if (r < 0) {
		FZ_ASSERT(m.type == RDV_REJECT && m.status == -r && !nfds,
			  "REJECT for %d: type %u status %d, %d fds", r, m.type,
			  m.status, nfds);
		return;
	}
	FZ_ASSERT(m.type == RDV_ACCEPT && !m.status && m.ring_size == RING &&
			  nfds == 2, "ACCEPT: type %u status %d ring %u, %d fds",
		  m.type, m.status, m.ring_size, nfds);
	err = chan_open(&cfg, fds[0], fds[1], &c);
	FZ_ASSERT(!err, "chan_open on the listener's fds: %d", err);
	close(fds[0]);
	exchange(h, c);
	chan_close(c);
}

static void as_listener(uint8_t sel, const uint8_t *kinds, const uint8_t *msg,
			size_t len)
{
	int nfds = (sel >> 1) & 3, fds[3], keep, want, r;
	struct ivmc_chan *h = NULL;
	int cl = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	struct sockaddr_un sa = { .sun_family = AF_UNIX };

	FZ_ASSERT(cl >= 0, "socket");
	memcpy(sa.sun_path + 1, name_listen + 1, strlen(name_listen) - 1);
	FZ_ASSERT(!connect(cl, (struct sockaddr *)&sa,
			   (socklen_t)(offsetof(struct sockaddr_un, sun_path) +
				       strlen(name_listen))), "connect");
	for (int i = 0; i < nfds; i++) {
		fds[i] = make_fd(kinds[i] % NKINDS, &keep);
		if (keep >= 0)
			close(keep);
	}
	send_msg(cl, msg, len, fds, nfds);
	for (int i = 0; i < nfds; i++)
		close(fds[i]);
	if (sel & 0x10)
		shutdown(cl, SHUT_RDWR); /* gone before the answer */
	want = expect_accept(msg, len, nfds);
	if (!want && (sel & 0x10))
		want = -EPIPE; /* it cannot send the ACCEPT, and says so */
	r = ivmc_accept(lst, IVMC_NONBLOCK, &h);
	if (getenv("FZ_TRACE")) /* to read a reproducer */
		fprintf(stderr, "ivmc_accept: %d (expected %d)\n", r, want);
	FZ_ASSERT(r == want, "ivmc_accept: %d, docs say %d", r, want);
	if (!(sel & 0x10))
		check_reply(cl, r, h);
	if (!r)
		ivmc_close(h);
	close(cl);
}

/* ---- connector side: the input is the reply ---- */

struct job {
	uint8_t msg[128];
	size_t len;
	int nfds;
	uint8_t kinds[3];
	bool no_reply;
};

struct result {
	bool hello_ok;
	int region, doorbell; /* kept for opening side 0, or -1 */
};

static int job_pipe[2], res_pipe[2];

/* libFuzzer's timer (SIGALRM, every second) may interrupt a read that
 * waits: the harness's own pipes retry, as a read of the library would
 * not be asked to. */
static void read_all(int fd, void *p, size_t n)
{
	ssize_t r;

	do
		r = read(fd, p, n);
	while (r < 0 && errno == EINTR);
	FZ_ASSERT(r == (ssize_t)n, "pipe read");
}

/* The fake listener: one connection per job. */
static void *fake_listener(void *arg)
{
	sigset_t all;

	(void)arg;
	/* Signals (libFuzzer's timer) go to the main thread, not to the
	 * fake's waits. */
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, NULL);
	for (;;) {
		struct job j;
		struct result res = { false, -1, -1 };
		struct pollfd p;
		struct rdv h;
		int c, fds[3], nfds, keep;
		ssize_t n;

		read_all(job_pipe[0], &j, sizeof(j));
		c = accept4(fake_fd, NULL, NULL, SOCK_CLOEXEC);
		FZ_ASSERT(c >= 0, "accept4");
		p = (struct pollfd){ c, POLLIN, 0 };
		FZ_ASSERT(poll(&p, 1, 5000) == 1, "no HELLO");
		n = recv_msg(c, &h, sizeof(h), fds, &nfds);
		res.hello_ok = n == RDV_SIZE && !nfds && msg_common_ok(&h) &&
			       h.type == RDV_HELLO && !h.status && !h.ring_size;
		for (int i = 0; i < j.nfds; i++) {
			fds[i] = make_fd(j.kinds[i], &keep);
			if (i == 0 && j.kinds[0] == K_REGION)
				res.region = keep;
			else if (i == 1 && j.kinds[1] == K_DOORBELL)
				res.doorbell = keep;
			else if (keep >= 0)
				close(keep);
		}
		if (!j.no_reply)
			send_msg(c, j.msg, j.len, fds, j.nfds);
		for (int i = 0; i < j.nfds; i++)
			close(fds[i]);
		close(c);
		FZ_ASSERT(write(res_pipe[1], &res, sizeof(res)) == sizeof(res),
			  "pipe write");
	}
	return NULL;
}

static int expect_connect(const struct job *j)
{
	struct rdv m;

	if (j->no_reply)
		return -ECONNRESET; /* closed with no answer */
	if (j->nfds > 2)
		return -EPROTO; /* more descriptors than an ACCEPT carries */
	if (!j->len)
		return -ECONNRESET; /* an empty message reads as the close */
	if (j->len != RDV_SIZE)
		return -EPROTO;
	memcpy(&m, j->msg, sizeof(m));
	if (msg_common_ok(&m) && m.type == RDV_REJECT && m.status > 0 &&
	    m.status < 4096 && !j->nfds)
		return -m.status;
	if (!msg_common_ok(&m) || m.type != RDV_ACCEPT || j->nfds != 2)
		return -EPROTO;
	return expect_open(j->kinds[0], j->kinds[1]);
}

static void as_connector(uint8_t sel, const uint8_t *kinds, const uint8_t *msg,
			 size_t len)
{
	struct ivmc_opts o = { .wait_mode = IVMC_WAIT_SLEEP };
	struct job j = { .len = len, .nfds = (sel >> 1) & 3,
			 .no_reply = sel & 8 };
	struct ivmc_chan *h = NULL;
	struct result res;
	int want, r;

	for (int i = 0; i < 3; i++)
		j.kinds[i] = kinds[i] % NKINDS;
	if (len)
		memcpy(j.msg, msg, len);
	want = expect_connect(&j);
	FZ_ASSERT(write(job_pipe[1], &j, sizeof(j)) == sizeof(j), "pipe write");
	r = ivmc_connect(name_fake, &o, &h);
	read_all(res_pipe[0], &res, sizeof(res));
	FZ_ASSERT(res.hello_ok, "the connector's HELLO is malformed");
	if (getenv("FZ_TRACE"))
		fprintf(stderr, "ivmc_connect: %d (expected %d)\n", r, want);
	FZ_ASSERT(r == want, "ivmc_connect: %d, docs say %d", r, want);
	if (!r) {
		struct chan_cfg cfg = { .side = 0, .side_fd = -1,
					.wait_mode = CHAN_WAIT_SLEEP };
		struct chan *c;

		FZ_ASSERT(!chan_open(&cfg, res.region, res.doorbell, &c),
			  "side 0");
		res.doorbell = -1; /* the channel's now */
		exchange(h, c);
		chan_close(c);
		ivmc_close(h);
	}
	if (res.region >= 0)
		close(res.region);
	if (res.doorbell >= 0)
		close(res.doorbell);
}

static void init(void)
{
	struct ivmc_opts o = { .ring_size = RING, .wait_mode = IVMC_WAIT_SLEEP };
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	pthread_t t;

	snprintf(name_listen, sizeof(name_listen), "@ivmc-fuzz-%d-listen", getpid());
	snprintf(name_fake, sizeof(name_fake), "@ivmc-fuzz-%d-fake", getpid());
	FZ_ASSERT(!ivmc_listen(name_listen, &o, &lst), "ivmc_listen");
	fake_fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	memcpy(sa.sun_path + 1, name_fake + 1, strlen(name_fake) - 1);
	FZ_ASSERT(fake_fd >= 0 &&
			  !bind(fake_fd, (struct sockaddr *)&sa,
				(socklen_t)(offsetof(struct sockaddr_un, sun_path) +
					    strlen(name_fake))) &&
			  !listen(fake_fd, 16), "fake listener");
	FZ_ASSERT(!pipe2(job_pipe, O_CLOEXEC) && !pipe2(res_pipe, O_CLOEXEC), "pipe");
	FZ_ASSERT(!pthread_create(&t, NULL, fake_listener, NULL), "thread");
	pthread_detach(t);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static bool ready;
	uint8_t sel = size > 0 ? data[0] : 0, kinds[3] = { 0, 0, 0 };
	size_t len = size > 4 ? size - 4 : 0;
	const uint8_t *msg = size > 4 ? data + 4 : data;
	int fds;

	if (!ready) {
		init();
		ready = true;
	}
	for (int i = 0; i < 3; i++)
		kinds[i] = size > 1 + (size_t)i ? data[1 + i] : 0;
	if (len > 128)
		len = 128;
	fds = fz_fd_count();
	if (sel & 1)
		as_connector(sel, kinds, msg, len);
	else
		as_listener(sel, kinds, msg, len);
	FZ_ASSERT(fz_fd_count() == fds, "descriptors leaked");
	return 0;
}
