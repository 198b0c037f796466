/* SPDX-License-Identifier: MIT */
/*
 * Description: helpers for the tests of ivmcd --guest without VMs: two
 * network namespaces joined by a veth pair stand in for two guests, and
 * for each a directory of stand-in PCI devices ($IVMC_SYSFS_PCI: vendor,
 * device, enable, config, resource0 with the device's ID, resource2) holds
 * what ivmc-vmd would give it: a control region naming it and its peer, and
 * a pair region, one file both "VMs" map. Also the host's changes to a
 * control region, each VM's daemon and its status.
 */
#ifndef IVMC_TESTS_T_GUEST_H
#define IVMC_TESTS_T_GUEST_H

#include <sys/mman.h>

#include "../src/chan/chan.h"
#include "../src/chan/shm_layout.h"
#include "../src/transport/ivshmem_vm.h"
#include "t_fakepci.h"
#include "t_netns.h"

#define T_GUEST_PAIR_SIZE (8u << 20)
#define T_GUEST_RING	  (64u << 10)
#define T_GUEST_IPS	  2 /* addresses per VM, at most */

/* VM 0 is "guest-a" in namespace ns[0], VM 1 "guest-b". */
static struct {
	const char *ns[2];
	const char *ip[2][T_GUEST_IPS];
	int nip[2];
	char sock[2][128], dlog[2][128], sysroot[2][128], ctlfile[2][128];
	char pairfile[128];
	const char *dir; /* t_tmpdir(), made once */
	pid_t dpid[2];
} tg;

static inline void t_write_file(const char *path, const void *buf, size_t n)
{
	int err = t_fakepci_write(path, buf, n);

	if (err)
		t_fail("write %s: %s", path, strerror(-err));
}

/* A stand-in ivshmem device dir/BDF with ID id, its region at region. */
static inline void t_guest_fake_dev(const char *dir, const char *bdf,
				    uint32_t id, const char *region)
{
	const char *what;
	int err = t_fakepci_dev(dir, bdf, id, region, &what);

	if (err)
		t_fail("%s/%s/%s: %s", dir, bdf, what, strerror(-err));
}

static inline void t_guest_addr4(struct ivmc_shm_vm_addr *a, const char *ip)
{
	memset(a, 0, sizeof(*a));
	a->family = 4;
	if (inet_pton(AF_INET, ip, a->addr) != 1)
		t_fail("address %s", ip);
}

/* VM v's control region, as ivmc-vmd writes it: epoch 1, the peer up. */
static inline void t_guest_make_ctl(int v)
{
	static struct ivmc_shm_vm_ctl c;
	static uint8_t page[IVMC_VM_CTL_SIZE];
	struct ivmc_shm_vm_pair *p = &c.pair[0];

	memset(&c, 0, sizeof(c));
	c.magic = IVMC_VM_CTL_MAGIC;
	c.version = IVMC_VM_CTL_VERSION;
	c.size = sizeof(c);
	c.heartbeat_ms = 250;
	atomic_store(&c.seq, 2);
	c.host_id = 42;
	c.vm_gen = 1;
	snprintf(c.name, sizeof(c.name), "%s", v ? "guest-b" : "guest-a");
	c.naddr = (uint32_t)tg.nip[v];
	for (int i = 0; i < tg.nip[v]; i++)
		t_guest_addr4(&c.addr[i], tg.ip[v][i]);
	c.npair = 1;
	snprintf(p->peer, sizeof(p->peer), "%s", v ? "guest-a" : "guest-b");
	p->side = (uint8_t)v;
	p->id = ivmc_vm_pair_id(1, v);
	p->peer_id = ivmc_vm_pair_id(1, 1 - v);
	p->attached = 1;
	p->peer_state = IVMC_VM_PEER_UP;
	p->naddr = (uint8_t)tg.nip[1 - v];
	p->epoch = 1;
	p->peer_gen = 1;
	p->region_size = T_GUEST_PAIR_SIZE;
	p->chan_off = IVMC_VM_PAIR_HDR;
	p->nchan = 1;
	p->ring_size = T_GUEST_RING;
	for (int i = 0; i < tg.nip[1 - v]; i++)
		t_guest_addr4(&p->addr[i], tg.ip[1 - v][i]);
	memcpy(page, &c, sizeof(c));
	t_write_file(tg.ctlfile[v], page, sizeof(page));
}

/* The pair region mapped read-write (unmap T_GUEST_PAIR_SIZE bytes). */
static inline uint8_t *t_guest_map_pair(void)
{
	int fd = open(tg.pairfile, O_RDWR | O_CLOEXEC);
	uint8_t *m;

	if (fd < 0)
		t_fail("%s: %s", tg.pairfile, strerror(errno));
	m = mmap(NULL, T_GUEST_PAIR_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED,
		 fd, 0);
	T_ASSERT(m != MAP_FAILED);
	close(fd);
	return m;
}

/* Lay the pair region out as the host does for a new session: zeroed,
 * its header page and channel 0 (the link). Never shrunk: a daemon may
 * have it mapped. */
static inline void t_guest_make_pair(uint64_t epoch)
{
	int fd = open(tg.pairfile, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	struct ivmc_shm_vm_pairhdr *h;
	uint8_t *m;

	if (fd < 0 || ftruncate(fd, T_GUEST_PAIR_SIZE) || close(fd))
		t_fail("pair region: %s", strerror(errno));
	m = t_guest_map_pair();
	memset(m, 0, T_GUEST_PAIR_SIZE);
	h = (void *)m;
	h->magic = IVMC_VM_PAIR_MAGIC;
	h->version = IVMC_VM_PAIR_VERSION;
	atomic_store(&h->epoch, epoch);
	h->chan_off = IVMC_VM_PAIR_HDR;
	h->nchan = 1;
	h->ring_size = T_GUEST_RING;
	T_ASSERT_OK(chan_region_init(m + IVMC_VM_PAIR_HDR,
				     T_GUEST_PAIR_SIZE - IVMC_VM_PAIR_HDR,
				     T_GUEST_RING, false, 0));
	munmap(m, T_GUEST_PAIR_SIZE);
}

/* The host changes VM v's view of its peer (a seqlock write): its state,
 * and the session if epoch is not 0. */
static inline void t_guest_set_peer(int v, uint8_t state, uint64_t epoch)
{
	int fd = open(tg.ctlfile[v], O_RDWR | O_CLOEXEC);
	struct ivmc_shm_vm_ctl *c;

	T_ASSERT(fd >= 0);
	c = mmap(NULL, IVMC_VM_CTL_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED,
		 fd, 0);
	T_ASSERT(c != MAP_FAILED);
	close(fd);
	atomic_fetch_add(&c->seq, 1);
	c->pair[0].peer_state = state;
	if (epoch)
		c->pair[0].epoch = epoch;
	atomic_fetch_add(&c->seq, 1);
	munmap(c, IVMC_VM_CTL_SIZE);
}

/* At exit, before t_tmpdir_cleanup() (which removes files only): the
 * stand-in device directories. */
static inline void t_guest_cleanup(void)
{
	static const char *const bdf[] = { "0000:00:04.0", "0000:00:05.0" };
	static const char *const files[] = { "vendor", "device", "enable",
					     "config", "resource0",
					     "resource2" };
	char p[PATH_MAX + 64];

	if (!t_ns.owner || getpid() != t_ns.owner)
		return;
	for (int v = 0; v < 2 && tg.sysroot[v][0]; v++) {
		for (int d = 0; d < 2; d++) {
			for (size_t f = 0; f < sizeof(files) / sizeof(*files);
			     f++) {
				snprintf(p, sizeof(p), "%s/%s/%s",
					 tg.sysroot[v], bdf[d], files[f]);
				unlink(p);
			}
			snprintf(p, sizeof(p), "%s/%s", tg.sysroot[v], bdf[d]);
			rmdir(p);
		}
		rmdir(tg.sysroot[v]);
	}
}

/*
 * Namespaces ga and gb joined by a veth, VM v's addresses ips[v] on its
 * end (ips[v][0] first; NULL ends a list), a control region for each and
 * one pair region (epoch 1), each VM's devices under tg.sysroot[v].
 */
static inline void t_guest_setup(const char *const ips[2][T_GUEST_IPS + 1])
{
	const char *dir = t_tmpdir();

	tg.dir = dir;
	atexit(t_guest_cleanup);
	tg.ns[0] = t_ns_add("ga");
	tg.ns[1] = t_ns_add("gb");
	for (int v = 0; v < 2; v++) {
		tg.nip[v] = 0;
		while (tg.nip[v] < T_GUEST_IPS && ips[v][tg.nip[v]]) {
			tg.ip[v][tg.nip[v]] = ips[v][tg.nip[v]];
			tg.nip[v]++;
		}
	}
	t_ns_veth(tg.ns[0], tg.ip[0][0], tg.ns[1], tg.ip[1][0]);
	for (int v = 0; v < 2; v++)
		for (int i = 1; i < tg.nip[v]; i++)
			t_sh("ip -n %s addr add %s/24 dev v%d", tg.ns[v],
			     tg.ip[v][i], v);
	snprintf(tg.pairfile, sizeof(tg.pairfile), "%s/pair", dir);
	t_guest_make_pair(1);
	for (int v = 0; v < 2; v++) {
		snprintf(tg.sock[v], sizeof(tg.sock[v]), "%s/ivmcd-%d.sock",
			 dir, v);
		snprintf(tg.dlog[v], sizeof(tg.dlog[v]), "%s/ivmcd-%d.log", dir,
			 v);
		snprintf(tg.sysroot[v], sizeof(tg.sysroot[v]), "%s/pci-%d", dir,
			 v);
		snprintf(tg.ctlfile[v], sizeof(tg.ctlfile[v]), "%s/ctl-%d", dir,
			 v);
		T_ASSERT_OK(mkdir(tg.sysroot[v], 0700));
		t_guest_make_ctl(v);
		t_guest_fake_dev(tg.sysroot[v], "0000:00:04.0", IVMC_VM_ID_CTL,
				 tg.ctlfile[v]);
		t_guest_fake_dev(tg.sysroot[v], "0000:00:05.0",
				 ivmc_vm_pair_id(1, v), tg.pairfile);
	}
}

/* Start VM v's ivmcd --guest (default policy) and wait until it answers. */
static inline void t_guest_start(int v)
{
	char bin[PATH_MAX];
	pid_t pid;

	t_bin(bin, sizeof(bin), "ivmcd");
	fflush(stdout);
	pid = fork();
	T_ASSERT(pid >= 0);
	if (pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGTERM);
		setenv("IVMC_SYSFS_PCI", tg.sysroot[v], 1);
		execl(bin, "ivmcd", "-f", "--guest", "-s", tg.sock[v], "-c",
		      "/nonexistent/ivmcd.conf", "-l", "debug", "-L",
		      tg.dlog[v], (char *)NULL);
		_exit(127);
	}
	t_ns_adopt(pid);
	tg.dpid[v] = pid;
	memcpy(t_sock, tg.sock[v], sizeof(t_sock));
	for (int i = 0; i < 500 && !t_daemon_answers(); i++) {
		int st;

		if (waitpid(pid, &st, WNOHANG) == pid)
			t_fail("guest ivmcd %d exited (status %#x), see %s", v,
			       st, tg.dlog[v]);
		usleep(10000);
	}
	if (!t_daemon_answers())
		t_fail("guest ivmcd %d does not answer, see %s", v, tg.dlog[v]);
}

static inline void t_guest_status(int v, bool json, char *out, size_t len)
{
	char args[256];

	snprintf(args, sizeof(args), "-s %s %sstatus", tg.sock[v],
		 json ? "--json " : "");
	t_ivmcctl(out, len, args);
}

/* VM v's JSON status, until it contains pat (5 s at most). */
static inline void t_guest_expect(int v, const char *pat)
{
	static char out[65536];

	for (int i = 0; i < 500; i++) {
		t_guest_status(v, true, out, sizeof(out));
		if (strstr(out, pat))
			return;
		usleep(10000);
	}
	t_fail("VM %d: want %s in the status: %s", v, pat, out);
}

/* VM v's status until it has want slots of its own in use. */
static inline void t_guest_expect_slots(int v, int want)
{
	char pat[64];

	snprintf(pat, sizeof(pat), "\"slots_used\":%d,", want);
	t_guest_expect(v, pat);
}

/* A number from VM v's JSON status: the first "key":N. */
static inline uint64_t t_guest_status_num(int v, const char *key)
{
	static char out[65536];
	char pat[64];
	const char *p;

	t_guest_status(v, true, out, sizeof(out));
	snprintf(pat, sizeof(pat), "\"%s\":", key);
	p = strstr(out, pat);
	if (!p)
		t_fail("VM %d: no %s in the status: %s", v, key, out);
	return strtoull(p + strlen(pat), NULL, 10);
}

/* The ends of a t_conv, each talking to its own VM's daemon. */
static inline void t_guest_srv_b(void *arg)
{
	setenv("IVMC_SOCKET", tg.sock[1], 1);
	t_conv_server(arg);
}

static inline void t_guest_cli_a(void *arg)
{
	setenv("IVMC_SOCKET", tg.sock[0], 1);
	t_conv_client(arg);
}

#endif
