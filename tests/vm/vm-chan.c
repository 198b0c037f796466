/* SPDX-License-Identifier: MIT */
/*
 * Description: the guest side of the VM tests (built static, runs in a
 * busybox initramfs): stream and ping-pong over an ivmc channel in an
 * ivshmem BAR, and the same over TCP for comparison. With -P PEER the
 * channel is in the pair region ivmc-vmd(8) made for this VM and PEER, found
 * through the VM's control region, and a stream ends when the host says the
 * peer VM is gone. With -i the channel waits on the pair device's
 * interrupt (MSI-X through vfio-pci) instead of polling, and a watching
 * stream sleeps on it and on the control device's interrupt; where the
 * guest cannot take interrupts, it says why and polls. "idle" waits for one
 * byte that "poke" sends after a while (the host measures the idle cost).
 * "raw-ping"/"raw-pong" bounce a counter between two cache lines of a
 * channel slot no channel uses (no ivmc code: the raw ivshmem round trip
 * the channel's is compared with), and "raw-copy" times memcpy() into and
 * out of that slot (the ceiling for a stream).
 * "ctl" checks what the control region and the devices say. On the host,
 * "init" lays channels out in a file, "stat" reads them. "gen" writes a
 * seeded stream to standard output (a producer for other programs, e.g.
 * socat, whose output the other side hashes against its own "gen");
 * "check" verifies such a stream on standard input as it comes, for one
 * with no end (it says how far it got when its input ends).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdatomic.h>
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
#include "transport/ivshmem_vm.h"
#include "transport/transport.h"
#include "../helpers.h"

#define SEED	   0x1f5e3u
#define MSG	   64u
#define BUF	   (64u * 1024)
#define WARMUP	   20
#define RING_DEF   (256u * 1024)
#define CONNECT_MS 20000
#define DEV_MAX	   64
#define PEER_WAIT_MS 60000  /* -P: the peer's QEMU may start later */
#define WATCH_NS   10000000 /* -P: look at the control region this often */
#define NAP_MAX_NS 1000000
#define PROGRESS   (8u << 20)
#define IRQ_WATCH_MS 1000   /* -i: look at the control region at least this
			     * often (its interrupt says when it changed) */

struct opts {
	const char *bdf, *file, *peer;
	unsigned int idx, ring;
	int wait_mode;
	bool irq;
};

/* -i: the pair device's interrupt as the channel's bell; the control
 * device's, for a stream that watches the host. */
static struct {
	struct xport_ivshmem_irq *pair, *ctl;
	struct chan_bell *bell;
	unsigned long ctl_irqs; /* the control device's interrupts taken */
} I;

/* -P: the control region, and the pair as it was when the channel opened. */
static struct {
	const void *map;
	char ctl_bdf[13];
	struct ivmc_shm_vm_ctl c; /* the last copy */
	uint64_t seq, epoch, next_ns;
	const char *peer;
	const char *why; /* set once the host said the pair is over */
} W;

static uint8_t buf[BUF];

__attribute__((noreturn)) static void usage(void)
{
	fprintf(stderr,
		"usage: vm-chan init FILE NCHAN RING | stat FILE NCHAN RING [OFF]\n"
		"       vm-chan ctl NAME [PEER,...|-] | irq-probe | gen BYTES SEED |\n"
		"               check SEED\n"
		"       vm-chan [-d BDF | -f FILE | -P PEER [-k] [-i]] [-c IDX]\n"
		"               [-r RING] [-w adaptive|sleep|spin]\n"
		"               send BYTES | recv BYTES | ping K | pong K |\n"
		"               idle 1 | poke SECS | raw-ping K | raw-pong K |\n"
		"               raw-copy BYTES  (raw-*: -P PEER -c IDX, a spare slot)\n"
		"       vm-chan tcp-pong PORT K | tcp-ping ADDR PORT K\n"
		"       vm-chan tcp-pong-poll PORT K | tcp-ping-poll ADDR PORT K\n"
		"         (poll() before each receive, as an event loop)\n"
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
			 unsigned int ring, uint64_t *rsz, size_t *len,
			 uint64_t off);

static int cmd_init(const char *file, unsigned int nchan, unsigned int ring)
{
	uint64_t rsz;
	size_t len;
	uint8_t *mem = host_map(file, nchan, ring, &rsz, &len, 0);

	for (unsigned int i = 0; i < nchan; i++)
		T_ASSERT_OK(chan_region_init(mem + i * rsz, rsz, ring, false, 0));
	munmap(mem, len); /* off 0 */
	printf("vm-chan: %u channel(s) of %u-byte rings in %s\n", nchan, ring,
	       file);
	return 0;
}

/* Map FILE for the host commands; checks that nchan regions fit after
 * off (page aligned); returns the map of the whole file plus off. */
static uint8_t *host_map(const char *file, unsigned int nchan,
			 unsigned int ring, uint64_t *rsz, size_t *len,
			 uint64_t off)
{
	struct stat st;
	uint8_t *mem;
	int fd;

	if (chan_region_size(ring, 0, rsz))
		t_fail("ring size %u: not a power of two in range", ring);
	fd = open(file, O_RDWR | O_CLOEXEC);
	if (fd < 0 || fstat(fd, &st) < 0)
		t_fail("%s: %s", file, strerror(errno));
	if ((uint64_t)st.st_size < off + *rsz * nchan || off % 4096)
		t_fail("%s: %lld bytes, %u channels at %llu need %llu", file,
		       (long long)st.st_size, nchan, (unsigned long long)off,
		       (unsigned long long)(off + *rsz * nchan));
	*len = (size_t)st.st_size;
	T_ASSERT_OK(xport_map(fd, 0, *len, (void **)&mem));
	close(fd);
	return mem + off;
}

/* What the host sees of each direction after the guests ran: the counters
 * and the end-of-stream word, straight from the shared file. */
static int cmd_stat(const char *file, unsigned int nchan, unsigned int ring,
		    uint64_t off)
{
	uint64_t rsz;
	size_t len;
	uint8_t *mem = host_map(file, nchan, ring, &rsz, &len, off);

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
	munmap(mem - off, len);
	return 0;
}

/* ---- guest: what ivmc-vmd set up for this VM (ivshmem_vm.h) ---- */

struct devs {
	int n;
	char bdf[DEV_MAX][13];
	uint32_t id[DEV_MAX];
};

static void devs_scan(struct devs *d)
{
	d->n = xport_ivshmem_list(d->bdf, DEV_MAX);
	if (d->n < 0)
		t_fail("listing ivshmem devices: %s", t_strerror(d->n));
	for (int i = 0; i < d->n; i++) {
		int err = xport_ivshmem_id(d->bdf[i], &d->id[i]);

		if (err)
			t_fail("ID of %s: %s", d->bdf[i], t_strerror(err));
	}
}

/* The one device with this ID, or NULL. */
static const char *dev_with_id(const struct devs *d, uint32_t id)
{
	const char *found = NULL;

	for (int i = 0; i < d->n; i++) {
		if (d->id[i] != id)
			continue;
		if (found)
			t_fail("two ivshmem devices with ID %u", id);
		found = d->bdf[i];
	}
	return found;
}

static void ctl_reread(void)
{
	int err = xport_vm_ctl_read(W.map, IVMC_VM_CTL_SIZE, &W.c);

	if (err)
		t_fail("reading the control region: %s", t_strerror(err));
	W.seq = ivmc_load_once(&W.c.seq);
}

/* Map the control device's region read-only: ours alone with the host. */
static void ctl_map(void)
{
	struct devs d;
	const char *bdf;
	uint64_t size;
	void *map;
	int fd, err;

	devs_scan(&d);
	bdf = dev_with_id(&d, IVMC_VM_ID_CTL);
	if (!bdf)
		t_fail("no control device (ivshmem ID %u) among %d ivshmem device(s)",
		       IVMC_VM_ID_CTL, d.n);
	memcpy(W.ctl_bdf, bdf, sizeof(W.ctl_bdf));
	err = xport_ivshmem_open(bdf, &fd, &size);
	if (err)
		t_fail("control device %s: %s", bdf, t_strerror(err));
	if (size < IVMC_VM_CTL_SIZE)
		t_fail("control device %s: %llu bytes", bdf,
		       (unsigned long long)size);
	map = mmap(NULL, IVMC_VM_CTL_SIZE, PROT_READ, MAP_SHARED, fd, 0);
	if (map == MAP_FAILED)
		t_fail("mmap of the control region: %s", strerror(errno));
	close(fd);
	W.map = map;
	ctl_reread();
}

static const struct ivmc_shm_vm_pair *ctl_pair(const char *peer)
{
	for (unsigned int i = 0; i < W.c.npair; i++)
		if (!strcmp(W.c.pair[i].peer, peer))
			return &W.c.pair[i];
	return NULL;
}

static const char *state_name(unsigned int s)
{
	return s == IVMC_VM_PEER_UP ? "up" : s == IVMC_VM_PEER_GONE ? "gone"
								  : "absent";
}

/* Wait until both QEMUs hold the pair's devices (the host has laid the
 * region out for this epoch by then). */
static const struct ivmc_shm_vm_pair *peer_wait(const char *peer)
{
	uint64_t t0 = t_now_ns();

	for (;;) {
		const struct ivmc_shm_vm_pair *p;

		ctl_reread();
		p = ctl_pair(peer);
		if (p && p->attached && p->peer_state == IVMC_VM_PEER_UP)
			return p;
		if (t_now_ns() - t0 > PEER_WAIT_MS * 1000000ull)
			t_fail("pair with %s not up in %d s (%s)", peer,
			       PEER_WAIT_MS / 1000,
			       !p ? "not listed" : !p->attached ? "no device"
							   : state_name(p->peer_state));
		usleep(10000);
	}
}

/* -P: has the host ended the pair? Looks at most every WATCH_NS (or at
 * once after the control device's interrupt: W.next_ns = 0), and copies
 * the region only when its seqlock moved. Returns NULL or why. */
static const char *peer_over(void)
{
	const struct ivmc_shm_vm_pair *p;
	uint64_t now;

	if (!W.map || W.why)
		return W.why;
	now = t_now_ns();
	if (now < W.next_ns)
		return NULL;
	W.next_ns = now + WATCH_NS;
	if (xport_vm_ctl_seq(W.map) == W.seq)
		return NULL;
	ctl_reread();
	p = ctl_pair(W.peer);
	if (!p)
		W.why = "the pair is no longer listed (revoked)";
	else if (p->epoch != W.epoch)
		W.why = "the pair has a new epoch";
	else if (p->peer_state != IVMC_VM_PEER_UP)
		W.why = "the peer VM is gone";
	return W.why;
}

static bool gone_ok; /* -k: the peer's death ends a stream as expected */

/* The host ended the pair: say so; exit 0 if that was expected (-k). */
__attribute__((noreturn)) static void gone(const char *what, uint64_t bytes)
{
	char irqs[64] = "";

	if (I.ctl) {
		/* The host rings the control device with every change: if a
		 * periodic look saw the change first (we were busy draining),
		 * its interrupt is in the eventfd, or on its way. Only then
		 * wait for it: the time to our line is reported. */
		struct pollfd pf = { xport_ivshmem_irq_fd(I.ctl), POLLIN, 0 };
		uint64_t v;

		if (!I.ctl_irqs && poll(&pf, 1, 500) > 0 &&
		    read(pf.fd, &v, sizeof(v)) > 0)
			I.ctl_irqs++;
		snprintf(irqs, sizeof(irqs), " (%lu control device interrupts)",
			 I.ctl_irqs);
	}
	printf("vm-chan: %s: host says %s (peer %s, epoch %llu) after %llu verified bytes%s\n",
	       what, W.why, W.peer, (unsigned long long)W.epoch,
	       (unsigned long long)bytes, irqs);
	exit(gone_ok ? 0 : 3);
}

static void nap(uint64_t *ns)
{
	struct timespec ts = { 0, (long)*ns };

	nanosleep(&ts, NULL);
	*ns = *ns * 2 < NAP_MAX_NS ? *ns * 2 : NAP_MAX_NS;
}

static void addrs_print(char *out, size_t len,
			const struct ivmc_shm_vm_addr *a, unsigned int n)
{
	size_t k = 0;

	out[0] = 0;
	for (unsigned int i = 0; i < n && k + INET6_ADDRSTRLEN + 2 < len; i++) {
		if (i)
			out[k++] = ',';
		inet_ntop(a[i].family == 4 ? AF_INET : AF_INET6, a[i].addr,
			  out + k, (socklen_t)(len - k));
		k += strlen(out + k);
	}
}

/* Is peer in the comma-separated list (or "-": none)? */
static bool listed(const char *list, const char *peer)
{
	size_t n = strlen(peer);

	for (const char *p = list; *p;) {
		if (!strncmp(p, peer, n) && (p[n] == ',' || !p[n]))
			return true;
		p = strchr(p, ',');
		p = p ? p + 1 : "";
	}
	return false;
}

/* Every ivshmem device is the control device or a pair the control
 * region lists; every pair listed as held has its device. */
static void check_devs(const struct devs *d)
{
	for (int i = 0; i < d->n; i++) {
		const char *what = d->id[i] == IVMC_VM_ID_CTL ? "control" : NULL;

		for (unsigned int j = 0; j < W.c.npair && !what; j++)
			if (W.c.pair[j].id == d->id[i])
				what = W.c.pair[j].peer;
		printf("vm-chan: DEV %s id=%u %s\n", d->bdf[i], d->id[i],
		       what ? what : "(not ours)");
		if (!what)
			t_fail("device %s (ID %u) is not in the control region",
			       d->bdf[i], d->id[i]);
	}
	for (unsigned int j = 0; j < W.c.npair; j++)
		if (W.c.pair[j].attached && !dev_with_id(d, W.c.pair[j].id))
			t_fail("pair with %s: no device with ID %u",
			       W.c.pair[j].peer, W.c.pair[j].id);
}

/* Print the control region, check it names us, lists exactly the peers
 * expected ("-": none) and the devices we have, and that the host's
 * heartbeat moves. */
static int cmd_ctl(const char *name, const char *peers)
{
	uint64_t h0, t0;
	char a[256];
	struct devs d;
	unsigned int want = 0;

	ctl_map();
	addrs_print(a, sizeof(a), W.c.addr, W.c.naddr);
	printf("vm-chan: CTL %s name=%s addrs=%s vm_gen=%llu pairs=%u\n",
	       W.ctl_bdf, W.c.name, a, (unsigned long long)W.c.vm_gen,
	       W.c.npair);
	for (unsigned int i = 0; i < W.c.npair; i++) {
		const struct ivmc_shm_vm_pair *p = &W.c.pair[i];

		addrs_print(a, sizeof(a), p->addr, p->naddr);
		printf("vm-chan: CTL pair peer=%s addrs=%s id=%u peer_id=%u side=%u attached=%u peer=%s epoch=%llu region=%llu chans=%ux%u\n",
		       p->peer, a, p->id, p->peer_id, p->side, p->attached,
		       state_name(p->peer_state), (unsigned long long)p->epoch,
		       (unsigned long long)p->region_size, p->nchan,
		       p->ring_size);
		if (!listed(peers, p->peer))
			t_fail("pair with %s listed, not expected", p->peer);
	}
	if (strcmp(W.c.name, name) != 0)
		t_fail("the host calls this VM %s, not %s", W.c.name, name);
	if (strcmp(peers, "-") != 0) {
		want = 1;
		for (const char *p = peers; *p; p++)
			want += *p == ',';
	}
	if (W.c.npair != want)
		t_fail("%u pair(s) listed, want %u (%s)", W.c.npair, want, peers);
	devs_scan(&d);
	check_devs(&d);
	h0 = xport_vm_ctl_heartbeat(W.map);
	t0 = t_now_ns();
	while (xport_vm_ctl_heartbeat(W.map) == h0) {
		if (t_now_ns() - t0 > 20ull * W.c.heartbeat_ms * 1000000u)
			t_fail("the host's heartbeat did not move in %u ms",
			       20 * W.c.heartbeat_ms);
		usleep(20000);
	}
	printf("vm-chan: ctl ok: %d ivshmem device(s), %u pair(s), heartbeat moves\n",
	       d.n, W.c.npair);
	return 0;
}

/* ---- guest: open a channel in the BAR (or a file) ---- */

static int irq_ring(void *q)
{
	return xport_ivshmem_irq_ring(q);
}

static const char *irq_why(int err)
{
	switch (err) {
	case -ENOTSUP:
		return "no IOMMU in the guest (QEMU: ivmcctl qemu-args NAME --iommu; kernel: intel_iommu=on)";
	case -ENXIO:
		return "vfio-pci or vfio_iommu_type1 not loaded";
	case -EPERM:
		return "the IOMMU cannot remap interrupts (intremap=on, or vfio_iommu_type1 allow_unsafe_interrupts=1)";
	case -EBUSY:
		return "the device is held by another driver or process";
	default:
		return t_strerror(err);
	}
}

/* -i: the pair device's interrupt as the channel's bell, ringing the peer's
 * ID from our control region. Unavailable: say why and poll. */
static void irq_open(const char *bdf, const struct ivmc_shm_vm_pair *p,
		     struct chan_cfg *cfg)
{
	int err = xport_ivshmem_irq_open(bdf, p->peer_id, &I.pair);

	if (!err)
		err = chan_bell_new(xport_ivshmem_irq_fd(I.pair), irq_ring,
				    I.pair, &I.bell);
	if (!err && W.ctl_bdf[0])
		err = xport_ivshmem_irq_open(W.ctl_bdf, 0, &I.ctl);
	if (err) {
		printf("vm-chan: IRQ unavailable (%s): %s; polling instead\n",
		       bdf, irq_why(err));
		chan_bell_free(I.bell);
		xport_ivshmem_irq_close(I.pair);
		I.bell = NULL;
		I.pair = NULL;
		return;
	}
	cfg->bell = I.bell;
	printf("vm-chan: IRQ on: device %s MSI-X vector 0 -> eventfd (vfio-pci), rings peer ID %u; control device %s too\n",
	       bdf, p->peer_id, W.ctl_bdf);
}

/* BYTES of the stream SEED (t_fill(), as the channel streams use) on
 * standard output, in 64 KiB writes. */
static int cmd_gen(uint64_t total, uint64_t seed)
{
	uint64_t off = 0;

	while (off < total) {
		size_t n = total - off < BUF ? (size_t)(total - off) : BUF;
		size_t done = 0;

		t_fill(seed, off, buf, n);
		while (done < n) {
			ssize_t w = write(1, buf + done, n - done);

			if (w < 0 && errno == EINTR)
				continue;
			if (w <= 0)
				t_fail("gen: write at %llu: %s",
				       (unsigned long long)(off + done),
				       strerror(errno));
			done += (size_t)w;
		}
		off += n;
	}
	return 0;
}

/* Standard input is the stream SEED from its first byte: verify each read
 * as it comes, say how far every PROGRESS bytes, and at the end of input
 * how many bytes were verified. Any wrong byte fails at once. */
static int cmd_check(uint64_t seed)
{
	uint64_t off = 0;

	for (;;) {
		ssize_t r = read(0, buf, BUF);

		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			t_fail("check: read at %llu: %s",
			       (unsigned long long)off, strerror(errno));
		if (!r)
			break;
		if (t_verify(seed, off, buf, (size_t)r))
			t_fail("check: bad bytes at or after %llu",
			       (unsigned long long)off);
		if ((off + (uint64_t)r) / PROGRESS != off / PROGRESS)
			printf("vm-chan: progress %llu bytes verified\n",
			       (unsigned long long)((off + (uint64_t)r) /
						    PROGRESS * PROGRESS));
		off += (uint64_t)r;
	}
	printf("vm-chan: check: end of input after %llu verified bytes\n",
	       (unsigned long long)off);
	return 0;
}

/* Can this guest take the control device's interrupt? Says which way;
 * either is a success. */
static int cmd_irq_probe(void)
{
	struct xport_ivshmem_irq *q;
	int err;

	ctl_map();
	err = xport_ivshmem_irq_open(W.ctl_bdf, 0, &q);
	if (err) {
		printf("vm-chan: IRQ unavailable (%s): %s\n", W.ctl_bdf,
		       irq_why(err));
		return 0;
	}
	printf("vm-chan: IRQ on: control device %s MSI-X vector 0 -> eventfd (vfio-pci)\n",
	       W.ctl_bdf);
	xport_ivshmem_irq_close(q);
	return 0;
}

/* Watch mode, nothing to do: with interrupts, sleep on the channel's bell
 * and the control device's (then look at the host's word at once); else
 * nap. */
static void idle_wait(struct chan *c, uint64_t *ns)
{
	struct pollfd pf[2] = { { -1, POLLIN, 0 }, { -1, POLLIN, 0 } };
	uint64_t v;

	if (!I.bell) {
		nap(ns);
		return;
	}
	pf[0].fd = chan_fd(c);
	pf[1].fd = xport_ivshmem_irq_fd(I.ctl);
	if (poll(pf, 2, IRQ_WATCH_MS) > 0 && pf[1].revents) {
		if (read(pf[1].fd, &v, sizeof(v)) < 0)
			t_fail("control device interrupt: %s", strerror(errno));
		I.ctl_irqs++;
	}
	W.next_ns = 0; /* the next peer_over() looks: one load if unchanged */
}

/* -P: the channel idx of the pair with the peer, as our control region
 * describes it; our side is the host's word too. */
static int open_pair(const struct opts *o, struct chan_cfg *cfg, int *fd,
		     uint64_t *size, uint64_t *off, uint64_t *slot)
{
	const struct ivmc_shm_vm_pair *p;
	struct devs d;
	const char *bdf;
	uint64_t rsz;
	int err;

	ctl_map();
	p = peer_wait(o->peer);
	W.peer = o->peer;
	W.epoch = p->epoch;
	devs_scan(&d);
	bdf = dev_with_id(&d, p->id);
	if (!bdf)
		t_fail("pair with %s: no device with ID %u", o->peer, p->id);
	if (o->irq)
		irq_open(bdf, p, cfg);
	err = xport_ivshmem_open(bdf, fd, size);
	if (err)
		t_fail("pair device %s: %s", bdf, t_strerror(err));
	if (o->idx >= p->nchan || chan_region_size(p->ring_size, 0, &rsz) ||
	    *size < p->region_size)
		t_fail("pair with %s: channel %u of %u, %llu-byte BAR", o->peer,
		       o->idx, p->nchan, (unsigned long long)*size);
	*off = p->chan_off + o->idx * rsz;
	*size = p->region_size;
	*slot = rsz;
	cfg->side = p->side;
	printf("vm-chan: pair with %s: device %s ID %u, side %u, epoch %llu, channel %u at %llu\n",
	       o->peer, bdf, p->id, p->side, (unsigned long long)p->epoch,
	       o->idx, (unsigned long long)*off);
	return 0;
}

static struct chan *open_chan(const struct opts *o, int side, bool watch)
{
	struct chan_cfg cfg = { .side = side, .side_fd = -1,
				.wait_mode = o->wait_mode, .nonblock = watch };
	uint64_t size, rsz, off;
	struct chan *c;
	struct stat st;
	int fd, err;

	if (o->peer) {
		open_pair(o, &cfg, &fd, &size, &off, &rsz);
	} else {
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
		if (chan_region_size(o->ring, 0, &rsz))
			t_fail("ring size %u: not a power of two in range", o->ring);
		off = o->idx * rsz;
	}
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

/* In watch mode (-P, non-blocking channel) a full ring means: look at the
 * control region, nap, try again. */
static void send_all(struct chan *c, const void *p, size_t n, uint64_t done)
{
	struct iovec iov = { (void *)p, n };
	uint64_t ns = 10000;

	while (iov.iov_len) {
		ssize_t r = chan_sendv(c, &iov, 1, 0);

		if (r == -EAGAIN) {
			if (peer_over())
				gone("send", done + (n - iov.iov_len));
			idle_wait(c, &ns);
			continue;
		}
		if (r <= 0)
			t_fail("chan_sendv: %s", t_strerror(r ? r : -EIO));
		iov.iov_base = (uint8_t *)iov.iov_base + r;
		iov.iov_len -= (size_t)r;
		ns = 10000;
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
		send_all(c, buf, n, off);
		off += n;
	}
	T_ASSERT_OK(chan_shutdown(c, SHUT_WR));
	report_rate(I.bell ? "send chan-irq" : "send chan", total,
		    t_now_ns() - t0);
	return 0;
}

/* Check r received bytes at *off against the stream (total 0: no limit). */
static void take(uint64_t *off, ssize_t r, uint64_t total)
{
	if (total && *off + (uint64_t)r > total)
		t_fail("%llu bytes: more than the %llu sent",
		       (unsigned long long)(*off + (uint64_t)r),
		       (unsigned long long)total);
	if (t_verify(SEED, *off, buf, (size_t)r))
		t_fail("bad bytes at %llu", (unsigned long long)*off);
	if (W.map && (*off + (uint64_t)r) / PROGRESS != *off / PROGRESS) {
		uint64_t mark = (*off + (uint64_t)r) / PROGRESS * PROGRESS;

		printf("vm-chan: progress %llu bytes verified\n",
		       (unsigned long long)mark);
	}
	*off += (uint64_t)r;
}

/* The host says the pair is over: what the peer published before it went
 * is still ours; read it all (checked), then stop. */
__attribute__((noreturn)) static void recv_final(struct chan *c, uint64_t off,
						 uint64_t total)
{
	struct iovec iov = { buf, BUF };

	for (int i = 0; i < 1 << 16; i++) {
		ssize_t r = chan_recvv(c, &iov, 1, 0);

		if (r <= 0)
			break;
		take(&off, r, total);
	}
	gone("recv", off);
}

/* Every byte checked, then end of stream right after the last one (total
 * 0: whatever comes). In watch mode, until the host says the peer went. */
static int cmd_recv(struct chan *c, uint64_t total)
{
	uint64_t off = 0, t0 = 0, ns = 10000;
	struct iovec iov = { buf, BUF };

	for (;;) {
		ssize_t r = chan_recvv(c, &iov, 1, 0);

		if (r == -EAGAIN) {
			if (peer_over())
				recv_final(c, off, total);
			idle_wait(c, &ns);
			continue;
		}
		ns = 10000;
		if (r < 0)
			t_fail("chan_recvv at %llu: %s",
			       (unsigned long long)off, t_strerror(r));
		if (!t0)
			t0 = t_now_ns(); /* from the first byte: not the wait */
		if (r == 0)
			break;
		take(&off, r, total);
	}
	if (total && off != total)
		t_fail("end of stream at %llu, want %llu",
		       (unsigned long long)off, (unsigned long long)total);
	report_rate(I.bell ? "recv chan-irq" : "recv chan", off,
		    t_now_ns() - t0);
	printf("vm-chan: verified %llu bytes\n", (unsigned long long)off);
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
	bool poll; /* TCP: poll() for POLLIN before each recv (an event loop) */
};

static void pp_send(const struct pp *p, const void *m, size_t n)
{
	if (p->c) {
		send_all(p->c, m, n, 0);
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
		struct pollfd pf = { p->fd, POLLIN, 0 };
		ssize_t r;

		if (p->poll && poll(&pf, 1, -1) < 0 && errno != EINTR)
			t_fail("poll: %s", strerror(errno));
		r = recv(p->fd, (uint8_t *)m + done, n - done, 0);
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
		if (memcmp(in, out, MSG) != 0)
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

/* The host measures this guest's CPU while it waits here, idle, for one
 * byte (the channel's own wait: interrupt or polling). */
static int cmd_idle(struct chan *c, bool irq)
{
	uint8_t b = 0;
	uint64_t t0 = t_now_ns();

	printf("vm-chan: IDLE start wait=%s\n", irq ? "irq" : "poll");
	recv_all(c, &b, 1);
	if (b != 0xa5)
		t_fail("idle: got %#x, want 0xa5", b);
	printf("vm-chan: IDLE end after %.1f ms\n", (double)(t_now_ns() - t0) / 1e6);
	return 0;
}

/* Sleep, then wake the idle peer with one byte. */
static int cmd_poke(struct chan *c, unsigned long secs)
{
	uint8_t b = 0xa5;

	sleep((unsigned int)secs);
	send_all(c, &b, 1, 0);
	printf("vm-chan: poke sent after %lu s\n", secs);
	return 0;
}

static void report_stats(const struct chan *c)
{
	struct chan_stats st;

	chan_stats(c, &st);
	printf("vm-chan: STATS irq=%s sleeps=%llu wakeups_sent=%llu spin_hits=%llu\n",
	       I.bell ? "on" : "off", (unsigned long long)st.sleeps,
	       (unsigned long long)st.wakeups_sent,
	       (unsigned long long)st.spin_hits);
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

/* send() returning means the bytes are in our socket buffer, not at the
 * peer, and the guest powers off right after this step: the tail and the
 * FIN would be lost, the receiver left waiting. With SO_LINGER, close()
 * returns once the peer has acknowledged all of it (or fails after
 * CONNECT_MS). */
static void close_acked(int fd)
{
	struct linger l = { 1, CONNECT_MS / 1000 };

	if (setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof(l)) < 0 ||
	    close(fd) < 0)
		t_fail("tcp: close after the stream: %s", strerror(errno));
}

static int tcp_send(int fd, uint64_t total)
{
	uint64_t off = 0, t0 = t_now_ns();
	struct pp p = { NULL, fd, false };

	while (off < total) {
		size_t n = total - off < BUF ? (size_t)(total - off) : BUF;

		t_fill(SEED, off, buf, n);
		pp_send(&p, buf, n);
		off += n;
	}
	shutdown(fd, SHUT_WR);
	close_acked(fd);
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

	bool pl = !strcmp(cmd, "tcp-pong-poll") || !strcmp(cmd, "tcp-ping-poll");

	if ((!strcmp(cmd, "tcp-pong") || !strcmp(cmd, "tcp-pong-poll")) &&
	    argc == 3)
		return pong(&(struct pp){ NULL, tcp_accept(num(argv[1])), pl },
			    num(argv[2]));
	if ((!strcmp(cmd, "tcp-ping") || !strcmp(cmd, "tcp-ping-poll")) &&
	    argc == 4)
		return ping(&(struct pp){ NULL,
					  tcp_connect(argv[1], num(argv[2])),
					  pl },
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

/* ---- raw ivshmem: no channel, the baseline of the same boot ---- */

#define RAW_READY 0x52415750494e4731ull /* "RAWPING1": the pong side is up */
#define RAW_DONE  UINT64_MAX		 /* the ping side gave up or ended */
#define RAW_SECS  20			 /* either side's bound */

/* Map channel slot o->idx of the pair with o->peer; *len: its size (the
 * pair's ring size decides it, as it decides where the slot is). */
static uint8_t *raw_slot(const struct opts *o, uint64_t *len)
{
	struct chan_cfg cfg = { .side_fd = -1 };
	uint64_t size, off, rsz;
	uint8_t *m;
	int fd;

	if (!o->peer)
		t_fail("raw-*: needs -P PEER");
	open_pair(o, &cfg, &fd, &size, &off, &rsz);
	m = mmap(NULL, (size_t)size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	close(fd);
	if (m == MAP_FAILED || off + rsz > size)
		t_fail("raw-*: map of the pair region: %s", strerror(errno));
	*len = rsz;
	return m + off;
}

/* Spin until *w == want (or RAW_DONE, or the deadline): true if seen. */
static bool raw_wait(_Atomic uint64_t *w, uint64_t want, uint64_t end_ns)
{
	for (unsigned int i = 0;; i++) {
		uint64_t v = atomic_load_explicit(w, memory_order_acquire);

		if (v == want)
			return true;
		if (v == RAW_DONE || ((i & 1023) == 0 && t_now_ns() > end_ns))
			return false;
	}
}

/* The ping side writes round i into its line and spins until the pong
 * side has copied it into the other: one round trip of a cache line
 * each way, no ivmc code. */
static int raw_ping(const struct opts *o, unsigned long k)
{
	uint64_t len, end = t_now_ns() + RAW_SECS * 1000000000ull;
	uint8_t *slot = raw_slot(o, &len);
	_Atomic uint64_t *ping = (_Atomic uint64_t *)slot;
	_Atomic uint64_t *pong = (_Atomic uint64_t *)(slot + 64);
	uint64_t *ns = calloc(k, sizeof(*ns));
	unsigned long i;

	if (!ns || !k)
		t_fail("raw-ping: %lu round trips", k);
	if (!raw_wait(pong, RAW_READY, end))
		t_fail("raw-ping: the pong side never came");
	for (i = 0; i < k + WARMUP; i++) {
		uint64_t t0 = t_now_ns();

		atomic_store_explicit(ping, i + 1, memory_order_release);
		if (!raw_wait(pong, i + 1, end))
			break;
		if (i >= WARMUP)
			ns[i - WARMUP] = t_now_ns() - t0;
	}
	atomic_store_explicit(ping, RAW_DONE, memory_order_release);
	if (i < k + WARMUP)
		t_fail("raw-ping: round %lu not answered within %d s", i,
		       RAW_SECS);
	report_rtt("raw", ns, k);
	free(ns);
	return 0;
}

static int raw_pong(const struct opts *o, unsigned long k)
{
	uint64_t len, end = t_now_ns() + RAW_SECS * 1000000000ull;
	uint8_t *slot = raw_slot(o, &len);
	_Atomic uint64_t *ping = (_Atomic uint64_t *)slot;
	_Atomic uint64_t *pong = (_Atomic uint64_t *)(slot + 64);
	unsigned long i;

	atomic_store_explicit(ping, 0, memory_order_relaxed);
	atomic_store_explicit(pong, RAW_READY, memory_order_release);
	for (i = 0; i < k + WARMUP; i++) {
		if (!raw_wait(ping, i + 1, end))
			break;
		atomic_store_explicit(pong, i + 1, memory_order_release);
	}
	atomic_store_explicit(pong, RAW_DONE, memory_order_release);
	if (i < k + WARMUP)
		t_fail("raw-pong: round %lu never came within %d s", i, RAW_SECS);
	printf("vm-chan: raw-pong: %lu round trips answered\n", k + WARMUP);
	return 0;
}

/* memcpy() of total bytes into the slot's rings, then out of them: what
 * a stream's copies cost with nothing else (the sender copies in, the
 * receiver copies out). */
static int raw_copy(const struct opts *o, uint64_t total)
{
	uint64_t len, done, t0;
	uint8_t *slot = raw_slot(o, &len), *area = slot + IVMC_SHM_HDR_SIZE;
	size_t span = (size_t)(len - IVMC_SHM_HDR_SIZE);
	size_t n = span < BUF ? span : BUF;

	t_fill(SEED, 0, buf, n);
	for (int dir = 0; dir < 2; dir++) {
		t0 = t_now_ns();
		for (done = 0; done < total; done += n) {
			uint8_t *at = area + (size_t)(done % (span - span % n));

			if (dir == 0)
				memcpy(at, buf, n);
			else
				memcpy(buf, at, n);
		}
		report_rate(dir == 0 ? "copy to-bar" : "copy from-bar", done,
			    t_now_ns() - t0);
	}
	return 0;
}

static int raw_cmd(const struct opts *o, const char *cmd, unsigned long n)
{
	if (!strcmp(cmd, "raw-ping"))
		return raw_ping(o, n);
	if (!strcmp(cmd, "raw-pong"))
		return raw_pong(o, n);
	if (!strcmp(cmd, "raw-copy"))
		return raw_copy(o, n);
	usage();
}

static const char *ping_name(const struct opts *o)
{
	bool sleep = o->wait_mode == CHAN_WAIT_SLEEP;

	if (o->irq)
		return sleep ? "chan-irq-sleep" : "chan-irq";
	if (o->wait_mode == CHAN_WAIT_SPIN)
		return "chan-spin";
	return sleep ? "chan-sleep" : "chan";
}

static int chan_cmd(const struct opts *o, const char *cmd, unsigned long n)
{
	bool first = !strcmp(cmd, "send") || !strcmp(cmd, "ping") ||
		     !strcmp(cmd, "poke");
	bool stream = !strcmp(cmd, "send") || !strcmp(cmd, "recv");
	struct chan *c = open_chan(o, first ? 0 : 1, o->peer && stream);
	struct pp p = { c, -1, false };
	int r;

	if (!strcmp(cmd, "send"))
		r = cmd_send(c, n);
	else if (!strcmp(cmd, "recv"))
		r = cmd_recv(c, n);
	else if (!strcmp(cmd, "ping"))
		r = ping(&p, n, ping_name(o));
	else if (!strcmp(cmd, "pong"))
		r = pong(&p, n);
	else if (!strcmp(cmd, "idle"))
		r = cmd_idle(c, I.bell != NULL);
	else if (!strcmp(cmd, "poke"))
		r = cmd_poke(c, n);
	else
		usage();
	report_stats(c);
	chan_close(c);
	chan_bell_free(I.bell);
	xport_ivshmem_irq_close(I.pair);
	xport_ivshmem_irq_close(I.ctl);
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
	if ((argc == 5 || argc == 6) && !strcmp(argv[1], "stat"))
		return cmd_stat(argv[2], (unsigned int)num(argv[3]),
				(unsigned int)num(argv[4]),
				argc == 6 ? num(argv[5]) : 0);
	if ((argc == 3 || argc == 4) && !strcmp(argv[1], "ctl"))
		return cmd_ctl(argv[2], argc == 4 ? argv[3] : "-");
	if (argc == 2 && !strcmp(argv[1], "irq-probe"))
		return cmd_irq_probe();
	if (argc == 4 && !strcmp(argv[1], "gen"))
		return cmd_gen(num(argv[2]), num(argv[3]));
	if (argc == 3 && !strcmp(argv[1], "check"))
		return cmd_check(num(argv[2]));
	if (argc > 1 && !strncmp(argv[1], "tcp-", 4))
		return tcp_cmd(argc - 1, argv + 1);
	while ((opt = getopt(argc, argv, "d:f:P:kic:r:w:")) != -1) {
		switch (opt) {
		case 'i':
			o.irq = true;
			break;
		case 'P':
			o.peer = optarg;
			break;
		case 'k':
			gone_ok = true;
			break;
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
	if (!strncmp(argv[optind], "raw-", 4))
		return raw_cmd(&o, argv[optind], num(argv[optind + 1]));
	return chan_cmd(&o, argv[optind], num(argv[optind + 1]));
}
