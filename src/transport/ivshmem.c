/* SPDX-License-Identifier: MIT */
/*
 * Description: the ivshmem transport, guest side: the shared region is BAR2
 * of an ivshmem PCI device, reached through sysfs; its doorbell is the
 * device's MSI-X vector on an eventfd through vfio-pci, and its Doorbell
 * register. Also the guest's reading of what ivmc-vmd(8) set up
 * (ivshmem_vm.h): device IDs, the control region.
 */
#include <ctype.h>
#include <stdbool.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/pci_regs.h>
#include <linux/vfio.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <linux/magic.h>
#include <unistd.h>

#include "ivshmem_vm.h"
#include "transport.h"

#define PCI_DEVICES_DEF	"/sys/bus/pci/devices"
#define PCI_DEVICES_ENV	"IVMC_SYSFS_PCI" /* tests: a stand-in sysfs */
#define IVSHMEM_VENDOR	0x1af4u
#define IVSHMEM_DEVICE	0x1110u
#define BDF_LEN		12 /* "0000:00:04.0" */
#define REG_IVPOSITION	8  /* BAR0 register: the device's ID */
#define REG_DOORBELL	12 /* BAR0 register: ring peer << 16 | vector */
#define REGS_MAP	4096 /* 256 bytes of registers; sysfs maps pages */
#define VFIO_CONTAINER	"/dev/vfio/vfio"
#define VFIO_PCI_DRIVER	"/sys/bus/pci/drivers/vfio-pci"
#define CTL_READ_TRIES	1000

/* Where the PCI devices are: sysfs, or (tests, docs/vm.md) a directory of
 * stand-ins named by $IVMC_SYSFS_PCI. */
static const char *pci_devices(void)
{
	const char *e = getenv(PCI_DEVICES_ENV);

	return e && *e ? e : PCI_DEVICES_DEF;
}

/* Read a sysfs file of one hex number ("0x1af4\n"). */
static int read_hex(const char *bdf, const char *attr, unsigned long *val)
{
	char path[256], buf[32], *end;
	ssize_t n;
	int fd;

	snprintf(path, sizeof(path), "%s/%s/%s", pci_devices(), bdf, attr);
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
	DIR *dir = opendir(pci_devices());
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

/* Is memory decoding on (the command register, from sysfs config)? */
static bool decoding(const char *bdf)
{
	char path[256];
	uint16_t cmd = 0;
	int fd;

	snprintf(path, sizeof(path), "%s/%s/config", pci_devices(), bdf);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return false;
	if (pread(fd, &cmd, sizeof(cmd), PCI_COMMAND) != sizeof(cmd))
		cmd = 0;
	close(fd);
	return cmd & PCI_COMMAND_MEMORY;
}

/* Memory decoding on: write "1" to the device's enable (a no-op if an
 * earlier open enabled it). sysfs refuses that (EBUSY) once a driver
 * holds the device (vfio-pci, for its interrupt): then the driver or an
 * earlier enable must have turned decoding on. */
static int enable(const char *bdf)
{
	char path[256];
	int fd, err = 0;

	snprintf(path, sizeof(path), "%s/%s/enable", pci_devices(), bdf);
	fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	if (write(fd, "1", 1) != 1)
		err = -errno;
	close(fd);
	if (err == -EBUSY && decoding(bdf))
		err = 0;
	return err;
}

/* The device's BAR n (sysfs resourceN), opened with flags: the fd, or
 * -ENODEV (no such file) or -errno. */
static int open_bar(const char *bdf, int n, int flags)
{
	char path[256];
	int fd;

	snprintf(path, sizeof(path), "%s/%s/resource%d", pci_devices(), bdf, n);
	fd = open(path, flags | O_SYNC | O_CLOEXEC);
	return fd >= 0 ? fd : errno == ENOENT ? -ENODEV : -errno;
}

static int open_bar2(const char *bdf, int *out, uint64_t *size)
{
	struct stat st;
	int fd = open_bar(bdf, 2, O_RDWR);

	if (fd < 0)
		return fd;
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
	DIR *dir = opendir(pci_devices());
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

/* Map the device's registers (BAR0) through sysfs, after enabling it.
 * Returns the map, or NULL and *err. */
static volatile uint32_t *map_regs(const char *bdf, bool rw, int *err)
{
	void *p;
	int fd;

	*err = !bdf_ok(bdf) ? -EINVAL : !is_ivshmem(bdf) ? -ENODEV : enable(bdf);
	if (*err)
		return NULL;
	fd = open_bar(bdf, 0, rw ? O_RDWR : O_RDONLY);
	if (fd < 0) {
		*err = fd;
		return NULL;
	}
	p = mmap(NULL, REGS_MAP, rw ? PROT_READ | PROT_WRITE : PROT_READ,
		 MAP_SHARED, fd, 0);
	*err = p == MAP_FAILED ? -errno : 0;
	close(fd);
	return p == MAP_FAILED ? NULL : p;
}

int xport_ivshmem_id(const char *bdf, uint32_t *id)
{
	int err;
	volatile uint32_t *regs = map_regs(bdf, false, &err);

	if (!regs)
		return err;
	*id = regs[REG_IVPOSITION / 4];
	munmap((void *)regs, REGS_MAP);
	return 0;
}

/* ---- the doorbell: MSI-X vector 0 through vfio-pci ---- */

struct xport_ivshmem_irq {
	int efd[XPORT_IVSHMEM_VEC_MAX];	/* vector v's interrupt lands here */
	unsigned int nvec;
	int container, group, dev;	/* vfio */
	volatile uint32_t *regs;	/* BAR0, for the Doorbell register */
	uint32_t ring_val;		/* peer_id << 16; 0: none */
};

/* The last component of the symbolic link at path, into out ("" if there
 * is no such link). */
static int link_name(const char *path, char *out, size_t len)
{
	char link[256];
	ssize_t n = readlink(path, link, sizeof(link) - 1);
	const char *base;

	out[0] = 0;
	if (n < 0)
		return errno == ENOENT ? 0 : -errno;
	link[n] = 0;
	base = strrchr(link, '/');
	base = base ? base + 1 : link;
	if (strlen(base) >= len)
		return -ENAMETOOLONG;
	memcpy(out, base, strlen(base) + 1);
	return 0;
}

static int write_str(const char *path, const char *s)
{
	size_t len = strlen(s);
	int fd = open(path, O_WRONLY | O_CLOEXEC), err = 0;
	ssize_t n;

	if (fd < 0)
		return -errno;
	n = write(fd, s, len);
	if (n != (ssize_t)len)
		err = n < 0 ? -errno : -EIO;
	close(fd);
	return err;
}

/* Bind the device to vfio-pci, unless it is already; never take it from
 * another driver. */
static int bind_vfio(const char *bdf)
{
	char path[256], drv[64];
	int err;

	snprintf(path, sizeof(path), "%s/%s/driver", pci_devices(), bdf);
	err = link_name(path, drv, sizeof(drv));
	if (err || !strcmp(drv, "vfio-pci"))
		return err;
	if (drv[0])
		return -EBUSY;
	if (access(VFIO_PCI_DRIVER, F_OK) < 0)
		return -ENXIO; /* vfio-pci not loaded */
	snprintf(path, sizeof(path), "%s/%s/driver_override", pci_devices(), bdf);
	err = write_str(path, "vfio-pci");
	if (!err)
		err = write_str("/sys/bus/pci/drivers_probe", bdf);
	if (err)
		return err;
	snprintf(path, sizeof(path), "%s/%s/driver", pci_devices(), bdf);
	err = link_name(path, drv, sizeof(drv));
	return err ? err : strcmp(drv, "vfio-pci") ? -ENXIO : 0;
}

/* /dev/vfio/N for the device's IOMMU group; -ENOTSUP without an IOMMU. */
static int group_path(const char *bdf, char *out, size_t len)
{
	char path[256], grp[32];
	int err;

	snprintf(path, sizeof(path), "%s/%s/iommu_group", pci_devices(), bdf);
	err = link_name(path, grp, sizeof(grp));
	if (err)
		return err;
	if (!grp[0] || strspn(grp, "0123456789") != strlen(grp))
		return -ENOTSUP;
	snprintf(out, len, "/dev/vfio/%s", grp);
	return 0;
}

/* Container, group grp (exclusive: -EBUSY if another process holds it),
 * the type1 IOMMU (no DMA mapping is ever made), then the device. */
static int vfio_attach(struct xport_ivshmem_irq *q, const char *bdf,
		       const char *grp)
{
	struct vfio_group_status st = { .argsz = sizeof(st) };

	q->container = open(VFIO_CONTAINER, O_RDWR | O_CLOEXEC);
	if (q->container < 0)
		return errno == ENOENT ? -ENXIO : -errno;
	if (ioctl(q->container, VFIO_GET_API_VERSION) != VFIO_API_VERSION ||
	    ioctl(q->container, VFIO_CHECK_EXTENSION, VFIO_TYPE1v2_IOMMU) <= 0)
		return -ENXIO; /* vfio_iommu_type1 not loaded */
	q->group = open(grp, O_RDWR | O_CLOEXEC);
	if (q->group < 0)
		return -errno;
	if (ioctl(q->group, VFIO_GROUP_GET_STATUS, &st) < 0)
		return -errno;
	if (!(st.flags & VFIO_GROUP_FLAGS_VIABLE))
		return -EBUSY; /* a device of the group has another driver */
	if (ioctl(q->group, VFIO_GROUP_SET_CONTAINER, &q->container) < 0 ||
	    ioctl(q->container, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU) < 0)
		return -errno;
	q->dev = ioctl(q->group, VFIO_GROUP_GET_DEVICE_FD, bdf);
	return q->dev < 0 ? -errno : 0;
}

/* vfio-pci leaves bus mastering off, and QEMU drops the MSI-X writes of a
 * device that is not a bus master: set it through vfio's config region. */
static int bus_master(int dev)
{
	struct vfio_region_info ri = { .argsz = sizeof(ri),
				       .index = VFIO_PCI_CONFIG_REGION_INDEX };
	uint16_t cmd;

	if (ioctl(dev, VFIO_DEVICE_GET_REGION_INFO, &ri) < 0)
		return -errno;
	if (pread(dev, &cmd, sizeof(cmd), (off_t)ri.offset + PCI_COMMAND) !=
	    sizeof(cmd))
		return -EIO;
	if (cmd & PCI_COMMAND_MASTER)
		return 0;
	cmd |= PCI_COMMAND_MASTER;
	if (pwrite(dev, &cmd, sizeof(cmd), (off_t)ri.offset + PCI_COMMAND) !=
	    sizeof(cmd))
		return -EIO;
	return 0;
}

/* How many MSI-X vectors the device has (QEMU's vectors=). */
static int msix_count(int dev, unsigned int *n)
{
	struct vfio_irq_info ii = { .argsz = sizeof(ii),
				    .index = VFIO_PCI_MSIX_IRQ_INDEX };

	if (ioctl(dev, VFIO_DEVICE_GET_IRQ_INFO, &ii) < 0)
		return -errno;
	*n = ii.count;
	return ii.count ? 0 : -ENOTSUP;
}

/* MSI-X vector v triggers efd[v], for v < n. */
static int msix_eventfds(int dev, const int *efd, unsigned int n)
{
	union {
		struct vfio_irq_set s;
		char b[sizeof(struct vfio_irq_set) +
		       XPORT_IVSHMEM_VEC_MAX * sizeof(int32_t)];
	} u;

	memset(&u, 0, sizeof(u));
	u.s.argsz = (uint32_t)(sizeof(struct vfio_irq_set) + n * sizeof(int32_t));
	u.s.flags = VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER;
	u.s.index = VFIO_PCI_MSIX_IRQ_INDEX;
	u.s.start = 0;
	u.s.count = n;
	memcpy(u.s.data, efd, n * sizeof(int32_t));
	return ioctl(dev, VFIO_DEVICE_SET_IRQS, &u.s) < 0 ? -errno : 0;
}

static void close_fd(int fd)
{
	if (fd >= 0)
		close(fd);
}

void xport_ivshmem_irq_close(struct xport_ivshmem_irq *q)
{
	if (!q)
		return;
	if (q->regs)
		munmap((void *)q->regs, REGS_MAP);
	/* Closing the device disables MSI-X and drops the trigger. */
	close_fd(q->dev);
	close_fd(q->group);
	close_fd(q->container);
	for (unsigned int v = 0; v < q->nvec; v++)
		close_fd(q->efd[v]);
	free(q);
}

int xport_ivshmem_irq_open_vec(const char *bdf, uint32_t peer_id,
			       unsigned int want, struct xport_ivshmem_irq **out)
{
	struct xport_ivshmem_irq *q;
	char grp[64];
	unsigned int have = 0;
	uint32_t own;
	int err;

	if (!bdf_ok(bdf) || peer_id > IVMC_VM_ID_MAX || !want ||
	    want > XPORT_IVSHMEM_VEC_MAX)
		return -EINVAL;
	if (!is_ivshmem(bdf))
		return -ENODEV;
	err = group_path(bdf, grp, sizeof(grp)); /* no IOMMU: say so first */
	if (err)
		return err;
	q = calloc(1, sizeof(*q));
	if (!q)
		return -ENOMEM;
	q->container = q->group = q->dev = -1;
	/* vfio-pci enables the device while we hold it: map the registers
	 * after it did. */
	err = bind_vfio(bdf);
	if (!err)
		err = vfio_attach(q, bdf, grp);
	if (!err)
		q->regs = map_regs(bdf, true, &err);
	own = q->regs ? q->regs[REG_IVPOSITION / 4] : 0;
	if (!err && peer_id && (peer_id == own || !own))
		err = -EINVAL; /* never ring ourselves, nor as a plain device */
	if (!err)
		err = msix_count(q->dev, &have);
	for (; !err && q->nvec < want && q->nvec < have; q->nvec++) {
		q->efd[q->nvec] = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
		if (q->efd[q->nvec] < 0)
			err = -errno;
	}
	if (!err)
		err = bus_master(q->dev);
	if (!err)
		err = msix_eventfds(q->dev, q->efd, q->nvec);
	if (err) {
		xport_ivshmem_irq_close(q);
		return err;
	}
	q->ring_val = peer_id << 16;
	*out = q;
	return 0;
}

int xport_ivshmem_irq_open(const char *bdf, uint32_t peer_id,
			   struct xport_ivshmem_irq **out)
{
	return xport_ivshmem_irq_open_vec(bdf, peer_id, 1, out);
}

int xport_ivshmem_irq_fd(const struct xport_ivshmem_irq *q)
{
	return q->efd[0];
}

unsigned int xport_ivshmem_irq_nvec(const struct xport_ivshmem_irq *q)
{
	return q->nvec;
}

int xport_ivshmem_irq_vfd(const struct xport_ivshmem_irq *q, unsigned int v)
{
	return v < q->nvec ? q->efd[v] : -1;
}

int xport_ivshmem_irq_ring_vec(struct xport_ivshmem_irq *q, unsigned int v)
{
	if (!q->ring_val || v > 0xffff)
		return -EINVAL;
	/* An uncached store: after every store before it (our publish). */
	q->regs[REG_DOORBELL / 4] = q->ring_val | v;
	return 0;
}

int xport_ivshmem_irq_ring(struct xport_ivshmem_irq *q)
{
	return xport_ivshmem_irq_ring_vec(q, 0);
}

/* ---- a client's doorbell: BAR0 from the guest's ivmcd ---- */

struct xport_ivshmem_bell {
	volatile uint32_t *regs;
	uint32_t ring_val;
};

int xport_ivshmem_regs_open(const char *bdf)
{
	return bdf_ok(bdf) ? open_bar(bdf, 0, O_RDWR) : -EINVAL;
}

/* What fd names, from /proc (which asks no other filesystem: a file on
 * one whose server stopped answering cannot hold us). */
static int fd_name(int fd, char *out, size_t len)
{
	char path[64];
	ssize_t n;

	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	n = readlink(path, out, len - 1);
	if (n < 0)
		return -errno;
	out[n] = 0;
	return 0;
}

int xport_eventfd_verify(int fd)
{
	char name[64];
	int fl;

	if (fd_name(fd, name, sizeof(name)) ||
	    strcmp(name, "anon_inode:[eventfd]") != 0)
		return -EBADFD;
	fl = fcntl(fd, F_GETFL);
	if (fl < 0 || (!(fl & O_NONBLOCK) &&
		       fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0))
		return -errno;
	return 0;
}

/* A device's registers: a PCI resource file in sysfs, read-write. */
static int regs_verify(int fd)
{
	char name[256];
	struct statfs sf;
	int fl = fcntl(fd, F_GETFL);

	if (fl < 0 || (fl & O_ACCMODE) != O_RDWR || (fl & O_PATH))
		return -EBADFD;
	if (fd_name(fd, name, sizeof(name)) || strncmp(name, "/sys/", 5) != 0 ||
	    !strstr(name, "/resource0"))
		return -EBADFD;
	if (fstatfs(fd, &sf) < 0 || sf.f_type != SYSFS_MAGIC)
		return -EBADFD;
	return 0;
}

int xport_ivshmem_bell_new(int regs_fd, uint32_t peer_id, uint32_t vec,
			   struct xport_ivshmem_bell **out)
{
	struct xport_ivshmem_bell *b;
	void *p;
	int err;

	if (!peer_id || peer_id > IVMC_VM_ID_MAX || vec > 0xffff)
		return -EINVAL;
	err = regs_verify(regs_fd);
	if (err)
		return err;
	b = calloc(1, sizeof(*b));
	if (!b)
		return -ENOMEM;
	p = mmap(NULL, REGS_MAP, PROT_READ | PROT_WRITE, MAP_SHARED, regs_fd, 0);
	if (p == MAP_FAILED) {
		err = -errno;
		free(b);
		return err;
	}
	b->regs = p;
	b->ring_val = peer_id << 16 | vec;
	*out = b;
	return 0;
}

int xport_ivshmem_bell_ring(void *bell)
{
	struct xport_ivshmem_bell *b = bell;

	/* An uncached store: after every store before it (our publish). */
	b->regs[REG_DOORBELL / 4] = b->ring_val;
	return 0;
}

void xport_ivshmem_bell_free(struct xport_ivshmem_bell *b)
{
	if (!b)
		return;
	munmap((void *)b->regs, REGS_MAP);
	free(b);
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
