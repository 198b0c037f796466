/* SPDX-License-Identifier: MIT */
/*
 * Description: the host daemons' shared pieces (daemon.h): log, clock,
 * mkdir -p, lock file.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "daemon.h"

static const char *const level_names[] = { "error", "warn", "info", "debug" };
static const char *log_prog = "ivmc";
static int log_level = LOG_INFO;
static FILE *log_fp;

void dlog_setup(const char *prog, int level, FILE *fp)
{
	log_prog = prog;
	log_level = level;
	log_fp = fp;
}

int dlog_get_level(void)
{
	return log_level;
}

void dlog(int level, const char *fmt, ...)
{
	struct timespec ts;
	struct tm tm;
	va_list ap;

	if (level > log_level || level < 0 || !log_fp)
		return;
	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	fprintf(log_fp, "%02d:%02d:%02d.%03ld %s[%d] %s: ", tm.tm_hour,
		tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000, log_prog,
		(int)getpid(), level_names[level]);
	va_start(ap, fmt);
	/* clang 14's va_list checker misreads va_start here. */
	/* NOLINTNEXTLINE(clang-analyzer-valist.Uninitialized) */
	vfprintf(log_fp, fmt, ap);
	va_end(ap);
	fputc('\n', log_fp);
	fflush(log_fp);
}

int dlog_parse_level(const char *s)
{
	for (int i = 0; i < 4; i++)
		if (!strcmp(s, level_names[i]))
			return i;
	return -1;
}

uint64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

int mkdir_p(const char *path, bool last)
{
	char buf[4096];
	size_t n = path ? strlen(path) : 0;

	if (!n || n >= sizeof(buf))
		return -ENAMETOOLONG;
	memcpy(buf, path, n + 1);
	for (char *p = buf + 1;; p++) {
		char c = *p;

		if (c && c != '/')
			continue;
		if (!c && !last)
			break;
		*p = 0;
		if (mkdir(buf, 0755) < 0 && errno != EEXIST)
			return -errno;
		*p = c;
		if (!c)
			break;
	}
	return 0;
}

int lock_file(const char *path, mode_t mode)
{
	int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, mode);

	if (fd < 0)
		return -errno;
	if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
		int err = errno == EWOULDBLOCK ? -EADDRINUSE : -errno;

		close(fd);
		return err;
	}
	return fd;
}
