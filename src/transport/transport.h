/* SPDX-License-Identifier: MIT */
/*
 * Description: where shared memory and doorbells come from. memfd for
 * everything on one kernel, ivshmem in a QEMU guest; every fd received from
 * outside is verified.
 */
#ifndef IVMC_TRANSPORT_H
#define IVMC_TRANSPORT_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* Create a sealed memfd of size bytes (F_SEAL_SHRINK|GROW|SEAL, and
 * F_SEAL_EXEC where the kernel has it). Returns 0 and *fd, or -errno. */
int xport_memfd_create(size_t size, int *fd);

/* Verify a received region fd: a read-write memfd (shmem) carrying at
 * least SHRINK|GROW|SEAL. Returns 0 and *size, -EBADFD (not a memfd, or not
 * opened read-write), -EPERM (seals missing, or write-sealed), or -errno. */
int xport_memfd_verify(int fd, uint64_t *size);

/* Map len bytes at off read-write, shared, never executable. */
int xport_map(int fd, uint64_t off, size_t len, void **out);

/* Map len bytes at off twice back to back, so [0, 2*len) is contiguous and
 * byte i and i+len are the same memory. Unmap with munmap(p, 2 * len). */
int xport_map_mirror(int fd, uint64_t off, size_t len, void **out);

/* Make a doorbell pair: AF_UNIX stream sockets, close-on-exec. */
int xport_doorbell_pair(int sv[2]);

/* Verify a received doorbell: a connected AF_UNIX stream socket. Returns
 * 0, -ENOTSOCK (not a socket), -EPROTOTYPE (wrong family or type),
 * -ENOTCONN (not connected), -errno. */
int xport_doorbell_verify(int fd);

/* Ring the peer: one byte, never blocking. Returns 0 (rung, or already
 * pending), -EPIPE (peer gone) or -errno. */
int xport_ring(int fd);

/* Drain our end without blocking. Returns bytes drained (>= 0), or -EPIPE
 * once the peer end is closed (after draining). At most max_bytes. */
ssize_t xport_drain(int fd, size_t max_bytes);

/* Send len bytes of msg with nfds fds over an AF_UNIX socket. Returns 0 or
 * -errno. */
int xport_send_fds(int sock, const void *msg, size_t len, const int *fds,
		   int nfds);

/* Receive one message and up to *nfds fds (close-on-exec). Extra or
 * truncated fds are closed and reported as -EPROTO. Returns the message
 * length and *nfds, or -errno (-EAGAIN with MSG_DONTWAIT). */
ssize_t xport_recv_fds(int sock, void *msg, size_t len, int *fds, int *nfds,
		       int flags);

/* ivshmem (inside a QEMU guest): find the ivshmem device (PCI 1af4:1110)
 * at bdf ("0000:00:04.0"), or the first one when bdf is NULL, enable it and
 * open its BAR2 (sysfs resource2) O_RDWR|O_SYNC. Map it with xport_map().
 * Returns 0, *fd and *size (the BAR's bytes), -ENODEV (no such device),
 * -EINVAL (malformed bdf) or -errno. */
int xport_ivshmem_open(const char *bdf, int *fd, uint64_t *size);

/*
 * ivshmem doorbell (inside a QEMU guest): the interrupt of the device at bdf
 * (its MSI-X vector 0) delivered to an eventfd through vfio-pci, and its
 * Doorbell register to ring peer_id's vector 0 (0: receive only). Binds the
 * device to vfio-pci if it has no driver. Needs vfio-pci and
 * vfio_iommu_type1 loaded and an IOMMU in the guest (Debian's kernels have
 * no vfio no-IOMMU mode). One process at a time holds a device's interrupt.
 * Returns 0 and *out, -ENODEV (no such device), -EINVAL (bdf, peer_id),
 * -ENOTSUP (no IOMMU), -ENXIO (no vfio-pci or type1 IOMMU driver), -EBUSY
 * (another driver or process holds it), -EPERM (the IOMMU cannot remap
 * interrupts), or -errno.
 */
struct xport_ivshmem_irq;
int xport_ivshmem_irq_open(const char *bdf, uint32_t peer_id,
			   struct xport_ivshmem_irq **out);

/* The eventfd (non-blocking): readable once an interrupt came; read its 8
 * bytes to consume. Owned by the handle. */
int xport_ivshmem_irq_fd(const struct xport_ivshmem_irq *q);

/* Ring the peer: one write of the Doorbell register. Returns 0, or -EINVAL
 * for a receive-only handle. */
int xport_ivshmem_irq_ring(struct xport_ivshmem_irq *q);

/* Release the interrupt and every fd (the device stays bound to vfio-pci). */
void xport_ivshmem_irq_close(struct xport_ivshmem_irq *q);

/* As xport_ivshmem_irq_open(), with MSI-X vectors 0 .. n-1 each on an
 * eventfd of its own, n the smaller of want (1 .. XPORT_IVSHMEM_VEC_MAX)
 * and the device's vectors. */
#define XPORT_IVSHMEM_VEC_MAX 64u
int xport_ivshmem_irq_open_vec(const char *bdf, uint32_t peer_id,
			       unsigned int want, struct xport_ivshmem_irq **out);
/* How many vectors the handle holds. */
unsigned int xport_ivshmem_irq_nvec(const struct xport_ivshmem_irq *q);
/* Vector v's eventfd (owned by the handle), or -1 beyond the last. */
int xport_ivshmem_irq_vfd(const struct xport_ivshmem_irq *q, unsigned int v);
/* Ring the peer's vector v. Returns 0, or -EINVAL. */
int xport_ivshmem_irq_ring_vec(struct xport_ivshmem_irq *q, unsigned int v);

/* The device's registers (BAR0, sysfs resource0) opened read-write for a
 * client's doorbell (xport_ivshmem_bell_new()). Returns the fd, -EINVAL
 * (bdf), -ENODEV (no such device) or -errno. */
int xport_ivshmem_regs_open(const char *bdf);

/* A client's doorbell: ringing stores peer_id << 16 | vec into the
 * Doorbell register of the BAR0 that regs_fd maps (fd borrowed: a PCI
 * resource0 file in sysfs, read-write). Returns 0 and *out, -EINVAL
 * (peer_id 0 or too large, vec), -EBADFD (regs_fd is not such a file) or
 * -errno. */
struct xport_ivshmem_bell;
int xport_ivshmem_bell_new(int regs_fd, uint32_t peer_id, uint32_t vec,
			   struct xport_ivshmem_bell **out);
/* Verify a received eventfd (asking no filesystem) and make it
 * non-blocking. Returns 0, -EBADFD (not an eventfd) or -errno. */
int xport_eventfd_verify(int fd);

/* Ring (a chan_bell ring function: bell is the xport_ivshmem_bell). */
int xport_ivshmem_bell_ring(void *bell);
void xport_ivshmem_bell_free(struct xport_ivshmem_bell *b);

/* Where the process's own long-lived fds go: 0 (the default) leaves them
 * where the kernel puts them; the preload sets it high so that they stay
 * out of the application's way (fds below it are the application's). */
extern int xport_fd_floor;

/* Move fd to the lowest free number >= xport_fd_floor, close-on-exec,
 * closing the old one. Returns the fd to use (fd itself when the floor is 0
 * or no number is free up there). */
int xport_fd_high(int fd);

/* Called (when set) with each fd xport_fd_high() returns: the preload
 * keeps them out of the application's close_range(). */
extern void (*xport_fd_hook)(int fd);

#endif
