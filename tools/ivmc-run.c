/* SPDX-License-Identifier: MIT */
/*
 * Description: ivmc-run CMD [ARGS...]: run an unmodified program with
 * libivmc-preload.so, so that its TCP connections to other ivmc-run
 * programs on this host move onto shared memory (ivmc-run(1)).
 *
 * Finds the preload beside itself (../lib/ in the build tree,
 * ../lib/ivmc/ when installed) unless IVMC_PRELOAD names it, puts it
 * first in LD_PRELOAD, lets the library start ivmcd (beside ivmc-run) if
 * none answers, and execs CMD.
 */
#include <errno.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void usage(FILE *f)
{
	fprintf(f, "usage: ivmc-run [-h | -V] CMD [ARGS...]\n"
		   "  run CMD with libivmc-preload.so (see ivmc-run(1))\n");
}

/* dir of our own executable into out; false if unknown. */
static bool self_dir(char *out, size_t len)
{
	ssize_t n = readlink("/proc/self/exe", out, len - 1);
	char *slash;

	if (n <= 0 || (size_t)n >= len - 1)
		return false;
	out[n] = 0;
	slash = strrchr(out, '/');
	if (!slash)
		return false;
	*slash = 0;
	return true;
}

static bool find_preload(char *out, size_t len)
{
	static const char *const rel[] = { "../lib/libivmc-preload.so",
					   "../lib/ivmc/libivmc-preload.so",
					   "libivmc-preload.so" };
	const char *env = getenv("IVMC_PRELOAD");
	char dir[PATH_MAX];

	if (env && *env) {
		if ((size_t)snprintf(out, len, "%s", env) >= len)
			return false;
		return access(out, R_OK) == 0;
	}
	if (!self_dir(dir, sizeof(dir)))
		return false;
	for (size_t i = 0; i < sizeof(rel) / sizeof(rel[0]); i++) {
		char tmp[PATH_MAX * 2];

		snprintf(tmp, sizeof(tmp), "%s/%s", dir, rel[i]);
		if (access(tmp, R_OK) == 0 && realpath(tmp, out) && strlen(out) < len)
			return true;
	}
	return false;
}

int main(int argc, char **argv)
{
	char lib[PATH_MAX], dir[PATH_MAX], buf[PATH_MAX * 2 + 16];
	const char *old;

	if (argc < 2) {
		usage(stderr);
		return 2;
	}
	if (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")) {
		usage(stdout);
		return 0;
	}
	if (!strcmp(argv[1], "-V") || !strcmp(argv[1], "--version")) {
		puts("ivmc-run 0.1");
		return 0;
	}
	if (!strcmp(argv[1], "--")) {
		argv++;
		if (argc < 3) {
			usage(stderr);
			return 2;
		}
	} else if (argv[1][0] == '-') {
		fprintf(stderr, "ivmc-run: unknown option '%s'\n", argv[1]);
		usage(stderr);
		return 2;
	}
	if (!find_preload(lib, sizeof(lib))) {
		fprintf(stderr, "ivmc-run: libivmc-preload.so not found "
				"(set IVMC_PRELOAD); running %s plainly\n", argv[1]);
	} else {
		const char *first = getenv("IVMC_PRELOAD_FIRST");
		char lp[PATH_MAX * 3 + 16];

		old = getenv("LD_PRELOAD");
		snprintf(lp, sizeof(lp), "%s%s%s%s%s", first && *first ? first : "",
			 first && *first ? ":" : "", lib, old && *old ? ":" : "",
			 old && *old ? old : "");
		setenv("LD_PRELOAD", lp, 1);
		if (first && *first) {
			/* A sanitizer runtime in front of a sanitized preload,
			 * for programs that are not: their own leaks are not
			 * ours to report. */
			const char *o = getenv("ASAN_OPTIONS");

			snprintf(lp, sizeof(lp), "%s%sdetect_leaks=0:verify_asan_link_order=0",
				 o && *o ? o : "", o && *o ? ":" : "");
			setenv("ASAN_OPTIONS", lp, 1);
		}
	}
	/* The library may start a daemon when none answers: ours. */
	if (!getenv("IVMC_DAEMON") && self_dir(dir, sizeof(dir))) {
		snprintf(buf, sizeof(buf), "%s/ivmcd", dir);
		if (access(buf, X_OK) == 0)
			setenv("IVMC_DAEMON", buf, 0);
	}
	setenv("IVMC_AUTOSTART", "1", 0);
	execvp(argv[1], argv + 1);
	fprintf(stderr, "ivmc-run: %s: %s\n", argv[1], strerror(errno));
	return errno == ENOENT ? 127 : 126;
}
