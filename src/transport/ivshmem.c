/* SPDX-License-Identifier: MIT */
/*
 * Description: the ivshmem transport, guest side: the shared region is BAR2
 * of an ivshmem PCI device, reached through sysfs without a driver. No
 * doorbell here (ivshmem-plain has none): channels on it poll.
 */
#include <ctype.h>
#include <stdbool.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "transport.h"

#define PCI_DEVICES	"/sys/bus/pci/devices"
#define IVSHMEM_VENDOR	0x1af4u
#define IVSHMEM_DEVICE	0x1110u
#define BDF_LEN		12 /* "0000:00:04.0" */

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
