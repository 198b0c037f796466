/* SPDX-License-Identifier: MIT */
/*
 * Description: ivmcctl, ivmcd's admin tool (ivmcctl(8)): status, policy,
 * reload, evacuate. Every request waits at most --timeout for ivmcd.
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ctl/client.h"

static void usage(FILE *f)
{
	fprintf(f,
		"usage: ivmcctl [-s PATH] [-t MS] [--json] COMMAND\n"
		"commands:\n"
		"  status                 daemon, domains, listeners, channels\n"
		"  policy                 the policy in force\n"
		"  reload                 re-read the config file (root)\n"
		"  evacuate [--uid U] [--netns NAME]\n"
		"                         move matching channels back to TCP (root)\n"
		"options:\n"
		"  -s, --socket PATH      ivmcd's socket (default $%s or %s)\n"
		"  -t, --timeout MS       wait at most MS for an answer (default 5000)\n"
		"  -j, --json             JSON instead of a table\n",
		CTL_SOCKET_ENV, CTL_SOCKET_DEFAULT);
}

/* Copy the answer's memfd to stdout. */
static int dump(int fd, uint32_t size)
{
	char buf[65536];
	uint64_t left = size;

	if (lseek(fd, 0, SEEK_SET) < 0)
		return -errno;
	while (left) {
		ssize_t n = read(fd, buf, left < sizeof(buf) ? left : sizeof(buf));

		if (n <= 0)
			return n < 0 ? -errno : -EPROTO;
		if (fwrite(buf, 1, (size_t)n, stdout) != (size_t)n)
			return -EIO;
		left -= (uint64_t)n;
	}
	return 0;
}

static int parse_ul(const char *s, unsigned long max, unsigned long *v)
{
	char *end;

	errno = 0;
	*v = strtoul(s, &end, 10);
	return (!*s || *end || errno || *v > max) ? -EINVAL : 0;
}

int main(int argc, char **argv)
{
	static const struct option lo[] = {
		{ "socket", required_argument, NULL, 's' },
		{ "timeout", required_argument, NULL, 't' },
		{ "json", no_argument, NULL, 'j' },
		{ "uid", required_argument, NULL, 'u' },
		{ "netns", required_argument, NULL, 'n' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	union { struct ctl_hdr h; struct ctl_query q; struct ctl_reload r;
		struct ctl_evacuate e; } m;
	const char *path = ctl_socket_path(), *cmd, *netns = NULL;
	unsigned long timeout = 5000, uid = 0;
	bool json = false, has_uid = false;
	struct ctl_result res;
	int c, fd, err;

	while ((c = getopt_long(argc, argv, "s:t:jh", lo, NULL)) != -1) {
		switch (c) {
		case 's': path = optarg; break;
		case 'j': json = true; break;
		case 't':
			if (parse_ul(optarg, 600000, &timeout) || !timeout) {
				fprintf(stderr, "ivmcctl: bad timeout '%s'\n", optarg);
				return 2;
			}
			break;
		case 'u':
			if (parse_ul(optarg, UINT32_MAX - 1, &uid)) {
				fprintf(stderr, "ivmcctl: bad uid '%s'\n", optarg);
				return 2;
			}
			has_uid = true;
			break;
		case 'n': netns = optarg; break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (optind != argc - 1) {
		usage(stderr);
		return 2;
	}
	cmd = argv[optind];
	memset(&m, 0, sizeof(m));
	if (!strcmp(cmd, "status") || !strcmp(cmd, "policy")) {
		ctl_hdr_init(&m.h, CTL_QUERY, json ? CTL_Q_JSON : 0);
		m.q.what = cmd[0] == 's' ? CTL_Q_STATUS : CTL_Q_POLICY;
	} else if (!strcmp(cmd, "reload")) {
		ctl_hdr_init(&m.h, CTL_RELOAD, 0);
	} else if (!strcmp(cmd, "evacuate")) {
		ctl_hdr_init(&m.h, CTL_EVACUATE, 0);
		m.e.uid = (uint32_t)uid;
		m.e.has_uid = has_uid;
		if (netns) {
			char p[4096];
			struct stat st;

			snprintf(p, sizeof(p), "/run/netns/%s", netns);
			if (strchr(netns, '/') || stat(p, &st) < 0) {
				fprintf(stderr, "ivmcctl: no network namespace '%s'\n",
					netns);
				return 2;
			}
			m.e.netns_ino = st.st_ino;
		}
		if (!has_uid && !netns) {
			fprintf(stderr, "ivmcctl: evacuate needs --uid or --netns\n");
			return 2;
		}
	} else {
		fprintf(stderr, "ivmcctl: unknown command '%s'\n", cmd);
		usage(stderr);
		return 2;
	}
	err = ctl_request(path, &m, (int)timeout, &res, &fd);
	if (err) {
		fprintf(stderr, "ivmcctl: %s: %s\n", path,
			err == -ETIMEDOUT ? "ivmcd did not answer in time"
					  : strerror(-err));
		return 1;
	}
	if (res.err) {
		fprintf(stderr, "ivmcctl: %s: %s\n", cmd, res.text);
		if (fd >= 0)
			close(fd);
		return 1;
	}
	if (fd >= 0) {
		err = dump(fd, res.size);
		close(fd);
		if (err) {
			fprintf(stderr, "ivmcctl: reading the answer: %s\n",
				strerror(-err));
			return 1;
		}
	} else {
		printf("%s\n", res.text);
	}
	return 0;
}
