/* SPDX-License-Identifier: MIT */
/*
 * Description: the memfd transport: sealed memfd regions, socketpair
 * doorbells, and fd passing with SCM_RIGHTS.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/magic.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#include "transport.h"

#ifndef MFD_NOEXEC_SEAL
#define MFD_NOEXEC_SEAL 0x0008u /* Linux 6.3; older kernels refuse it */
#endif
#ifndef F_SEAL_EXEC
#define F_SEAL_EXEC 0x0020
#endif

#define SEALS_REQUIRED (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL)
#define FDS_MAX 8

static int memfd_open(void)
{
	int fd = memfd_create("ivmc", MFD_CLOEXEC | MFD_ALLOW_SEALING |
					      MFD_NOEXEC_SEAL);

	if (fd < 0 && errno == EINVAL) /* kernel before 6.3 */
		fd = memfd_create("ivmc", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	return fd < 0 ? -errno : fd;
}

int xport_memfd_create(size_t size, int *out)
{
	int fd = memfd_open();
	int err;

	if (fd < 0)
		return fd;
	if (ftruncate(fd, (off_t)size) < 0)
		goto fail;
	/* F_SEAL_EXEC is best effort (Linux 6.3); the rest are required. */
	(void)fcntl(fd, F_ADD_SEALS, F_SEAL_EXEC);
	if (fcntl(fd, F_ADD_SEALS, SEALS_REQUIRED) < 0)
		goto fail;
	*out = fd;
	return 0;
fail:
	err = -errno;
	close(fd);
	return err;
}

/* The seals first: F_GET_SEALS answers without calling into a filesystem
 * (EINVAL for anything but tmpfs and hugetlbfs), where fstat() of a file on
 * FUSE waits for its server, for ever and unkillably if it never answers. */
int xport_memfd_verify(int fd, uint64_t *size)
{
	struct statfs sfs;
	struct stat st;
	int seals = fcntl(fd, F_GET_SEALS);

	if (seals < 0)
		return -EBADFD; /* not a memfd, or an fd we cannot use (O_PATH) */
	if (fstat(fd, &st) < 0)
		return -errno;
	if (!S_ISREG(st.st_mode))
		return -EBADFD;
	if ((fcntl(fd, F_GETFL) & O_ACCMODE) != O_RDWR)
		return -EBADFD; /* we could not map it read-write */
	if (fstatfs(fd, &sfs) < 0)
		return -errno;
	if (sfs.f_type != TMPFS_MAGIC && sfs.f_type != HUGETLBFS_MAGIC)
		return -EBADFD; /* a file on disk, NFS, FUSE...: refuse */
	if ((seals & SEALS_REQUIRED) != SEALS_REQUIRED)
		return -EPERM;
	if (seals & (F_SEAL_WRITE | F_SEAL_FUTURE_WRITE))
		return -EPERM; /* we could not map it writable */
	*size = (uint64_t)st.st_size;
	return 0;
}

int xport_map(int fd, uint64_t off, size_t len, void **out)
{
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd,
		       (off_t)off);

	if (p == MAP_FAILED)
		return -errno;
	*out = p;
	return 0;
}

int xport_map_mirror(int fd, uint64_t off, size_t len, void **out)
{
	uint8_t *base = mmap(NULL, 2 * len, PROT_NONE,
			     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	int err;

	if (base == MAP_FAILED)
		return -errno;
	for (int i = 0; i < 2; i++) {
		void *p = mmap(base + i * len, len, PROT_READ | PROT_WRITE,
			       MAP_SHARED | MAP_FIXED, fd, (off_t)off);

		if (p == MAP_FAILED)
			goto fail;
	}
	*out = base;
	return 0;
fail:
	err = -errno;
	munmap(base, 2 * len);
	return err;
}

int xport_doorbell_pair(int sv[2])
{
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
		return -errno;
	return 0;
}

static int sockopt_int(int fd, int opt, int *val)
{
	socklen_t len = sizeof(*val);

	if (getsockopt(fd, SOL_SOCKET, opt, val, &len) < 0)
		return -errno;
	return 0;
}

int xport_doorbell_verify(int fd)
{
	struct sockaddr_storage peer;
	socklen_t len = sizeof(peer);
	int domain, type, err;

	/* getsockopt first: it fails with ENOTSOCK on anything else without
	 * calling into a filesystem (see xport_memfd_verify()). */
	err = sockopt_int(fd, SO_DOMAIN, &domain);
	if (!err)
		err = sockopt_int(fd, SO_TYPE, &type);
	if (err)
		return err;
	if (domain != AF_UNIX || type != SOCK_STREAM)
		return -EPROTOTYPE;
	if (getpeername(fd, (struct sockaddr *)&peer, &len) < 0)
		return errno == ENOTCONN ? -ENOTCONN : -errno; /* would spin */
	return 0;
}

int xport_ring(int fd)
{
	static const char one = 1;

	for (;;) {
		if (send(fd, &one, 1, MSG_DONTWAIT | MSG_NOSIGNAL) == 1)
			return 0;
		if (errno == EAGAIN || errno == EWOULDBLOCK)
			return 0; /* a full doorbell is a rung doorbell */
		if (errno != EINTR)
			return errno == ECONNRESET ? -EPIPE : -errno;
	}
}

ssize_t xport_drain(int fd, size_t max_bytes)
{
	char buf[4096];
	size_t total = 0;

	/* Never more than max_bytes: a flood of one-byte sends costs the
	 * kernel a buffer per byte read. */
	while (total < max_bytes) {
		size_t want = max_bytes - total < sizeof(buf) ? max_bytes - total
							       : sizeof(buf);
		ssize_t n = recv(fd, buf, want, MSG_DONTWAIT);

		if (n > 0) {
			total += (size_t)n;
			continue;
		}
		if (n == 0)
			return -EPIPE;
		if (errno == EINTR)
			continue;
		if (errno == EAGAIN || errno == EWOULDBLOCK)
			break;
		return errno == ECONNRESET ? -EPIPE : -errno;
	}
	return (ssize_t)total;
}

int xport_send_fds(int sock, const void *msg, size_t len, const int *fds,
		   int nfds)
{
	char cbuf[CMSG_SPACE(sizeof(int) * FDS_MAX)];
	struct iovec iov = { .iov_base = (void *)msg, .iov_len = len };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };
	ssize_t n;

	if (nfds < 0 || nfds > FDS_MAX)
		return -EINVAL;
	if (nfds > 0) {
		struct cmsghdr *cm;

		memset(cbuf, 0, sizeof(cbuf));
		mh.msg_control = cbuf;
		mh.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)nfds);
		cm = CMSG_FIRSTHDR(&mh);
		cm->cmsg_level = SOL_SOCKET;
		cm->cmsg_type = SCM_RIGHTS;
		cm->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)nfds);
		memcpy(CMSG_DATA(cm), fds, sizeof(int) * (size_t)nfds);
	}
	do
		n = sendmsg(sock, &mh, MSG_NOSIGNAL);
	while (n < 0 && errno == EINTR);
	if (n < 0)
		return -errno;
	return (size_t)n == len ? 0 : -EMSGSIZE;
}

/* Take every fd out of the control messages: keep up to max, close the rest. */
static int collect_fds(struct msghdr *mh, int *fds, int max, int *got)
{
	int extra = 0;

	*got = 0;
	for (struct cmsghdr *cm = CMSG_FIRSTHDR(mh); cm;
	     cm = CMSG_NXTHDR(mh, cm)) {
		size_t n;

		if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
			continue;
		n = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
		for (size_t i = 0; i < n; i++) {
			int fd;

			memcpy(&fd, CMSG_DATA(cm) + i * sizeof(int), sizeof(fd));
			if (*got < max)
				fds[(*got)++] = fd;
			else {
				close(fd);
				extra = 1;
			}
		}
	}
	return extra;
}

ssize_t xport_recv_fds(int sock, void *msg, size_t len, int *fds, int *nfds,
		       int flags)
{
	char cbuf[CMSG_SPACE(sizeof(int) * FDS_MAX)];
	struct iovec iov = { .iov_base = msg, .iov_len = len };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1,
			     .msg_control = cbuf,
			     .msg_controllen = sizeof(cbuf) };
	int max = *nfds, extra;
	ssize_t n;

	do
		n = recvmsg(sock, &mh, flags | MSG_CMSG_CLOEXEC);
	while (n < 0 && errno == EINTR);
	if (n < 0)
		return -errno;
	extra = collect_fds(&mh, fds, max, nfds);
	if (extra || (mh.msg_flags & (MSG_CTRUNC | MSG_TRUNC))) {
		for (int i = 0; i < *nfds; i++)
			close(fds[i]);
		*nfds = 0;
		return -EPROTO;
	}
	return n;
}

int xport_fd_floor;
void (*xport_fd_hook)(int fd);

int xport_fd_high(int fd)
{
	int nfd = fd;

	if (fd >= 0 && xport_fd_floor > 0 && fd < xport_fd_floor) {
		nfd = fcntl(fd, F_DUPFD_CLOEXEC, xport_fd_floor);
		if (nfd < 0)
			nfd = fd;
		else
			close(fd);
	}
	if (nfd >= 0 && xport_fd_hook)
		xport_fd_hook(nfd);
	return nfd;
}
