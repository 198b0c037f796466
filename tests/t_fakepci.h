/* SPDX-License-Identifier: MIT */
/*
 * Description: a stand-in ivshmem PCI device, as $IVMC_SYSFS_PCI names
 * them (docs/vm.md): a directory with vendor, device, enable, config,
 * resource0 holding the device's ID (IVPosition) and resource2 a link to
 * the region's file. No test helper is used, so the fuzz targets can
 * share it; each caller fails in its own way.
 */
#ifndef IVMC_TESTS_T_FAKEPCI_H
#define IVMC_TESTS_T_FAKEPCI_H

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* The files of a stand-in device, for a caller that removes them. */
static const char *const t_fakepci_files[] = { "vendor", "device", "enable",
					       "config", "resource0",
					       "resource2" };

static inline int t_fakepci_write(const char *path, const void *buf, size_t n)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	int err = 0;

	if (fd < 0)
		return -errno;
	if (write(fd, buf, n) != (ssize_t)n)
		err = errno ? -errno : -EIO;
	if (close(fd) && !err)
		err = -errno;
	return err;
}

/* Make the device dir/bdf with ID id, its region at region. Returns 0, or
 * -errno with *what the file (of the device's directory) that failed. */
static inline int t_fakepci_dev(const char *dir, const char *bdf, uint32_t id,
				const char *region, const char **what)
{
	char d[1024], p[1100];
	uint8_t cfg[64] = { 0 }, regs[4096] = { 0 };
	const struct { const char *name; const void *buf; size_t n; } f[] = {
		{ "vendor", "0x1af4\n", 7 }, { "device", "0x1110\n", 7 },
		{ "enable", "0\n", 2 }, { "config", cfg, sizeof(cfg) },
		{ "resource0", regs, sizeof(regs) },
	};
	int err;

	cfg[4] = 0x2;		  /* PCI_COMMAND_MEMORY */
	memcpy(regs + 8, &id, 4); /* IVPosition */
	snprintf(d, sizeof(d), "%s/%s", dir, bdf);
	*what = ".";
	if (mkdir(d, 0700))
		return -errno;
	for (size_t i = 0; i < sizeof(f) / sizeof(f[0]); i++) {
		snprintf(p, sizeof(p), "%s/%s", d, f[i].name);
		*what = f[i].name;
		err = t_fakepci_write(p, f[i].buf, f[i].n);
		if (err)
			return err;
	}
	snprintf(p, sizeof(p), "%s/resource2", d);
	*what = "resource2";
	return symlink(region, p) ? -errno : 0;
}

#endif
