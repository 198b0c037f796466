/* SPDX-License-Identifier: MIT */
/*
 * Description: the ivshmem transport, guest side: the shared region is BAR2
 * of an ivshmem PCI device, reached through sysfs without a driver. No
 * doorbell used here yet: channels on it poll. Also the guest's reading of
 * what ivmc-vmd(8) set up (ivshmem_vm.h): device IDs, the control region.
 */
#include <ctype.h>
#include <stdbool.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ivshmem_vm.h"
#include "transport.h"

#define PCI_DEVICES	"/sys/bus/pci/devices"
#define IVSHMEM_VENDOR	0x1af4u
#define IVSHMEM_DEVICE	0x1110u
#define BDF_LEN		12 /* "0000:00:04.0" */
#define REG_IVPOSITION	8  /* BAR0 register: the device's ID */
#define CTL_READ_TRIES	1000

/* Read a sysfs file of one hex number ("0x1af4\n"). */
static int read_hex(const char *bdf, const char *attr, unsigned long *val)
{
	char path[128], buf[32], *end;
	ssize_t n;
	int fd;

	snprintf(path, sizeof(path), PCI_DEVICES "/%s/%s", bdf, attr);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return n < 0 ? -errno : -EIO;
	buf[n] = 0;
	*val = strtoul(buf, &end, 16);
	return end == buf ? -EIO : 0;
}

/* dddd:bb:dd.f, hex digits: nothing that could walk out of sysfs. */
static bool bdf_ok(const char *bdf)
{
	static const char shape[] = "xxxx:xx:xx.x";

	if (strlen(bdf) != BDF_LEN)
		return false;
	for (int i = 0; i < BDF_LEN; i++)
		if (shape[i] == 'x' ? !isxdigit((unsigned char)bdf[i])
				    : bdf[i] != shape[i])
			return false;
	return true;
}

static bool is_ivshmem(const char *bdf)
{
	unsigned long v = 0, d = 0;

	return !read_hex(bdf, "vendor", &v) && !read_hex(bdf, "device", &d) &&
	       v == IVSHMEM_VENDOR && d == IVSHMEM_DEVICE;
}

/* The first ivshmem device in sysfs order, into out[BDF_LEN + 1]. */
static int find_first(char *out)
{
	DIR *dir = opendir(PCI_DEVICES);
	struct dirent *e;
	int err = -ENODEV;

	if (!dir)
		return errno == ENOENT ? -ENODEV : -errno;
	for (int i = 0; i < 4096 && (e = readdir(dir)); i++) {
		if (bdf_ok(e->d_name) && is_ivshmem(e->d_name)) {
			memcpy(out, e->d_name, BDF_LEN + 1);
			err = 0;
			break;
		}
	}
	closedir(dir);
	return err;
}

/* Memory decoding on: write "1" to the device's enable (a no-op if a
 * driver or an earlier open enabled it). */
static int enable(const char *bdf)
{
	char path[128];
	int fd, err = 0;

	snprintf(path, sizeof(path), PCI_DEVICES "/%s/enable", bdf);
	fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	if (write(fd, "1", 1) != 1)
		err = -errno;
	close(fd);
	return err;
}

static int open_bar2(const char *bdf, int *out, uint64_t *size)
{
	char path[128];
	struct stat st;
	int fd;

	snprintf(path, sizeof(path), PCI_DEVICES "/%s/resource2", bdf);
	fd = open(path, O_RDWR | O_SYNC | O_CLOEXEC);
	if (fd < 0)
		return errno == ENOENT ? -ENODEV : -errno;
	if (fstat(fd, &st) < 0 || st.st_size <= 0) {
		close(fd);
		return -ENODEV;
	}
	*out = fd;
	*size = (uint64_t)st.st_size;
	return 0;
}

int xport_ivshmem_open(const char *bdf, int *fd, uint64_t *size)
{
	char found[BDF_LEN + 1];
	int err;

	if (bdf && !bdf_ok(bdf))
		return -EINVAL;
	if (bdf && !is_ivshmem(bdf))
		return -ENODEV;
	if (!bdf) {
		err = find_first(found);
		if (err)
			return err;
		bdf = found;
	}
	err = enable(bdf);
	if (err)
		return err;
	return open_bar2(bdf, fd, size);
}

int xport_ivshmem_list(char (*bdf)[BDF_LEN + 1], int max)
{
	DIR *dir = opendir(PCI_DEVICES);
	struct dirent *e;
	int n = 0;

	if (!dir)
		return errno == ENOENT ? 0 : -errno;
	for (int i = 0; i < 4096 && n < max && (e = readdir(dir)); i++) {
		if (bdf_ok(e->d_name) && is_ivshmem(e->d_name))
			memcpy(bdf[n++], e->d_name, BDF_LEN + 1);
	}
	closedir(dir);
	return n;
}

int xport_ivshmem_id(const char *bdf, uint32_t *id)
{
	char path[128];
	volatile const uint32_t *regs;
	void *p;
	int fd, err;

	if (!bdf_ok(bdf))
		return -EINVAL;
	if (!is_ivshmem(bdf))
		return -ENODEV;
	err = enable(bdf);
	if (err)
		return err;
	snprintf(path, sizeof(path), PCI_DEVICES "/%s/resource0", bdf);
	fd = open(path, O_RDONLY | O_SYNC | O_CLOEXEC);
	if (fd < 0)
		return errno == ENOENT ? -ENODEV : -errno;
	/* 256 bytes of registers; sysfs maps whole pages of a BAR. */
	p = mmap(NULL, 4096, PROT_READ, MAP_SHARED, fd, 0);
	err = p == MAP_FAILED ? -errno : 0;
	close(fd);
	if (err)
		return err;
	regs = p;
	*id = regs[REG_IVPOSITION / 4];
	munmap(p, 4096);
	return 0;
}

uint64_t xport_vm_ctl_seq(const void *map)
{
	const struct ivmc_shm_vm_ctl *ctl = map;

	return ivmc_load_acquire(&ctl->seq);
}

uint64_t xport_vm_ctl_heartbeat(const void *map)
{
	const struct ivmc_shm_vm_ctl *ctl = map;

	return ivmc_load_acquire(&ctl->heartbeat);
}

static bool name_ok(const char *s)
{
	size_t n = strnlen(s, IVMC_VM_NAME_MAX);

	return n > 0 && n < IVMC_VM_NAME_MAX;
}

static bool addrs_ok(const struct ivmc_shm_vm_addr *a, unsigned int n)
{
	if (n > IVMC_VM_ADDR_MAX)
		return false;
	for (unsigned int i = 0; i < n; i++)
		if (a[i].family != 4 && a[i].family != 6)
			return false;
	return true;
}

static bool pair_ok(const struct ivmc_shm_vm_pair *p)
{
	return name_ok(p->peer) && p->side <= 1 && p->attached <= 1 &&
	       p->peer_state <= IVMC_VM_PEER_GONE && p->id >= 2 &&
	       (p->id & 1u) == p->side && p->peer_id == (p->id ^ 1u) &&
	       addrs_ok(p->addr, p->naddr) && !(p->chan_off % 4096) &&
	       p->chan_off >= IVMC_VM_PAIR_HDR &&
	       p->chan_off <= p->region_size;
}

/* Everything a guest relies on, checked on the private copy. */
static int ctl_check(const struct ivmc_shm_vm_ctl *c)
{
	if (c->magic != IVMC_VM_CTL_MAGIC || c->version != IVMC_VM_CTL_VERSION ||
	    c->size != sizeof(*c) || !name_ok(c->name) ||
	    !addrs_ok(c->addr, c->naddr) || c->npair > IVMC_VM_PAIR_MAX)
		return -EPROTO;
	for (unsigned int i = 0; i < c->npair; i++) {
		if (!pair_ok(&c->pair[i]))
			return -EPROTO;
		for (unsigned int j = 0; j < i; j++)
			if (c->pair[j].id == c->pair[i].id)
				return -EPROTO;
	}
	return 0;
}

int xport_vm_ctl_read(const void *map, uint64_t len,
		      struct ivmc_shm_vm_ctl *out)
{
	const struct ivmc_shm_vm_ctl *ctl = map;

	if (len < sizeof(*out))
		return -EMSGSIZE;
	for (int i = 0; i < CTL_READ_TRIES; i++) {
		uint64_t s1 = ivmc_load_acquire(&ctl->seq), s2;

		if (s1 & 1) {
			usleep(100); /* the host is writing: a few us */
			continue;
		}
		memcpy(out, map, sizeof(*out));
		ivmc_fence_acquire();
		s2 = ivmc_load_once(&ctl->seq);
		if (s1 == s2)
			return ctl_check(out);
	}
	return -EAGAIN;
}
