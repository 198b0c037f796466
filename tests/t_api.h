/* SPDX-License-Identifier: MIT */
/*
 * Description: helpers for the native API tests: a private temporary
 * directory for socket paths (removed at exit by the process that made it),
 * fd and mapping counts for leak checks, an in-process connected pair, and
 * whole-buffer send/receive.
 */
#ifndef IVMC_TESTS_T_API_H
#define IVMC_TESTS_T_API_H

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <linux/magic.h>
#include <sys/vfs.h>

#include "helpers.h"
#include "ivmc.h"

static char t_dir[64];
static pid_t t_dir_owner;

/* Failures that are reported at once but let the test go on (so that one
 * library bug does not hide the checks after it); main() returns T_FAIL
 * when there were any. */
static int t_late_failures __attribute__((unused));

#define t_late_fail(...)                                              \
	do {                                                          \
		fflush(stdout);                                       \
		fprintf(stderr, "%s:%d: FAIL: ", __FILE__, __LINE__); \
		fprintf(stderr, __VA_ARGS__);                         \
		fputc('\n', stderr);                                  \
		t_late_failures++;                                    \
	} while (0)

/* Remove t_dir and what is in it (sockets, scratch files); owner only. */
static inline void t_tmpdir_cleanup(void)
{
	DIR *d;
	struct dirent *e;

	if (!t_dir[0] || getpid() != t_dir_owner)
		return;
	d = opendir(t_dir);
	if (d) {
		while ((e = readdir(d)))
			if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
				unlinkat(dirfd(d), e->d_name, 0);
		closedir(d);
	}
	rmdir(t_dir);
	t_dir[0] = 0;
}

/* Make a fresh directory under $TMPDIR (or /tmp) for this test's paths. */
static inline const char *t_tmpdir(void)
{
	const char *base = getenv("TMPDIR");

	if (!base || !*base || strlen(base) > 32)
		base = "/tmp";
	snprintf(t_dir, sizeof(t_dir), "%s/ivmc-t.XXXXXX", base);
	if (!mkdtemp(t_dir))
		t_fail("mkdtemp(%s): %s", t_dir, strerror(errno));
	t_dir_owner = getpid();
	atexit(t_tmpdir_cleanup);
	return t_dir;
}

/* buf = t_dir/name. */
static inline void t_path(char *buf, size_t n, const char *name)
{
	if ((size_t)snprintf(buf, n, "%s/%s", t_dir, name) >= n)
		t_fail("path %s/%s too long", t_dir, name);
}

/* Entries in a /proc/self directory listing (fds), minus the listing's fd. */
static inline int t_count_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	struct dirent *e;
	int n = 0;

	if (!d)
		t_fail("opendir(/proc/self/fd): %s", strerror(errno));
	while ((e = readdir(d)))
		if (e->d_name[0] != '.')
			n++;
	closedir(d);
	return n - 1;
}

/* Shared mappings ("rw-s" and the like) in /proc/self/maps: the regions
 * and endpoint pages a channel maps. Private mappings are left out, since
 * malloc (and ASan's allocator) come and go there. */
static inline int t_count_maps(void)
{
	FILE *f = fopen("/proc/self/maps", "re");
	char line[512], perms[8];
	int n = 0;

	if (!f)
		t_fail("fopen(/proc/self/maps): %s", strerror(errno));
	while (fgets(line, sizeof(line), f)) {
		if (sscanf(line, "%*s %7s", perms) == 1 && perms[3] == 's')
			n++;
		while (!strchr(line, '\n') && fgets(line, sizeof(line), f))
			;
	}
	fclose(f);
	return n;
}

struct t_conn {
	const char *path;
	const struct ivmc_opts *opts;
	struct ivmc_chan *c;
	int err;
};

static inline void *t_conn_thread(void *arg)
{
	struct t_conn *tc = arg;

	tc->err = ivmc_connect(tc->path, tc->opts, &tc->c);
	return NULL;
}

/* Connect in a thread while this one accepts: *acc is the listener's end,
 * *con the connector's. lo/co: options of each side (NULL: defaults). */
static inline void t_api_pair(const char *path, const struct ivmc_opts *lo,
			      const struct ivmc_opts *co,
			      struct ivmc_chan **acc, struct ivmc_chan **con)
{
	struct ivmc_listener *l;
	struct t_conn tc = { path, co, NULL, 0 };
	pthread_t t;
	int err;

	T_ASSERT_OK(ivmc_listen(path, lo, &l));
	T_ASSERT(pthread_create(&t, NULL, t_conn_thread, &tc) == 0);
	err = ivmc_accept(l, 0, acc);
	T_ASSERT(pthread_join(t, NULL) == 0);
	T_ASSERT_OK(err);
	T_ASSERT_OK(tc.err);
	*con = tc.c;
	T_ASSERT_OK(ivmc_listener_close(l));
}

/* Send all of buf (blocking); fail on error or a short count. */
static inline void t_send_all(struct ivmc_chan *c, const void *buf, size_t n)
{
	ssize_t r = ivmc_send(c, buf, n, 0);

	if (r != (ssize_t)n)
		t_fail("ivmc_send(%zu) returned %zd (%s)", n, r, t_strerror(r));
}

/* Receive exactly n bytes (blocking); fail on error or end of stream. */
static inline void t_recv_all(struct ivmc_chan *c, void *buf, size_t n)
{
	ssize_t r = ivmc_recv(c, buf, n, IVMC_WAITALL);

	if (r != (ssize_t)n)
		t_fail("ivmc_recv(%zu, WAITALL) returned %zd (%s)", n, r,
		       t_strerror(r));
}

/* A regular file in dir (unlinked at once) of size bytes, or -1 if dir is
 * not of the kind wanted (tmpfs or not): a forged region. */
static inline int t_file_in(const char *dir, bool want_tmpfs, uint64_t size)
{
	char p[128];
	struct statfs sfs;
	int fd;

	if (statfs(dir, &sfs) || (sfs.f_type == TMPFS_MAGIC) != want_tmpfs)
		return -1;
	snprintf(p, sizeof(p), "%s/ivmc-forged.XXXXXX", dir);
	fd = mkostemp(p, O_CLOEXEC);
	if (fd < 0)
		return -1;
	unlink(p);
	T_ASSERT(ftruncate(fd, (off_t)size) == 0);
	return fd;
}

#endif
