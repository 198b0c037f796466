/* SPDX-License-Identifier: MIT */
/*
 * Description: ivmcctl, ivmcd's admin tool (ivmcctl(8)): status, policy,
 * reload, evacuate. Every request waits at most --timeout for ivmcd. The
 * VM commands (vm ..., qemu-args) go to ivmc-vmd(8) instead.
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include "ctl/client.h"

#define VM_SOCKET_ENV	   "IVMC_VM_SOCKET"
#define VM_SOCKET_DEFAULT  "/run/ivmc/vm/ivmc-vmd.sock"
#define VM_REQUEST_MAX	   4096
#define VM_ANSWER_MAX	   (1u << 20)

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
		"VM commands (to ivmc-vmd; options before the command):\n"
		"  vm add NAME --addr ADDR...   vm remove NAME   vm list   vm reload\n"
		"  vm allow NAME PEER|*   vm deny NAME PEER|*\n"
		"  qemu-args NAME [--iommu]  the -chardev/-device arguments for VM NAME\n"
		"                         (--iommu: first the machine and IOMMU its\n"
		"                         doorbell interrupts need)\n"
		"options:\n"
		"  -s, --socket PATH      ivmcd's socket (default $%s or %s)\n"
		"  -S, --vm-socket PATH   ivmc-vmd's socket (default $%s or %s)\n"
		"  -t, --timeout MS       wait at most MS for an answer (default 5000)\n"
		"  -j, --json             JSON instead of a table\n",
		CTL_SOCKET_ENV, CTL_SOCKET_DEFAULT, VM_SOCKET_ENV,
		VM_SOCKET_DEFAULT);
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

/* ---- VM commands: NUL-separated words to ivmc-vmd, text back ---- */

static int vm_connect(const char *path, unsigned long timeout_ms)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct timeval tv = { (time_t)(timeout_ms / 1000),
			      (suseconds_t)(timeout_ms % 1000) * 1000 };
	size_t n = strlen(path);
	int fd;

	if (n >= sizeof(sa.sun_path))
		return -ENAMETOOLONG;
	memcpy(sa.sun_path, path, n + 1);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) < 0 ||
	    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)) < 0 ||
	    connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		int err = -errno;

		close(fd);
		return err;
	}
	return fd;
}

/* Send the words, read the whole answer ("ok\n" or "error\n", then text). */
static int vm_exchange(int fd, int argc, char **argv, char *ans, size_t *len)
{
	char req[VM_REQUEST_MAX];
	size_t n = 0;

	for (int i = 0; i < argc; i++) {
		size_t w = strlen(argv[i]) + 1;

		if (n + w > sizeof(req))
			return -E2BIG;
		memcpy(req + n, argv[i], w);
		n += w;
	}
	if (send(fd, req, n, MSG_NOSIGNAL) != (ssize_t)n ||
	    shutdown(fd, SHUT_WR) < 0)
		return errno == EAGAIN ? -ETIMEDOUT : -errno;
	for (*len = 0; *len < VM_ANSWER_MAX;) {
		ssize_t r = recv(fd, ans + *len, VM_ANSWER_MAX - *len, 0);

		if (r < 0)
			return errno == EAGAIN ? -ETIMEDOUT : -errno;
		if (!r)
			return 0;
		*len += (size_t)r;
	}
	return -EMSGSIZE;
}

static int vm_request(const char *path, unsigned long timeout_ms, int argc,
		      char **argv)
{
	char *ans = malloc(VM_ANSWER_MAX + 1);
	size_t len = 0;
	int fd = ans ? vm_connect(path, timeout_ms) : -ENOMEM, err;
	bool ok;

	err = fd < 0 ? fd : vm_exchange(fd, argc, argv, ans, &len);
	if (fd >= 0)
		close(fd);
	if (err) {
		fprintf(stderr, "ivmcctl: %s: %s\n", path,
			err == -ETIMEDOUT ? "ivmc-vmd did not answer in time"
					  : strerror(-err));
		free(ans);
		return 1;
	}
	ans[len] = 0;
	ok = !strncmp(ans, "ok\n", 3);
	if (!ok && strncmp(ans, "error\n", 6) != 0) {
		fprintf(stderr, "ivmcctl: %s: a malformed answer\n", path);
		free(ans);
		return 1;
	}
	if (ok)
		fputs(ans + 3, stdout);
	else
		fprintf(stderr, "ivmcctl: %s", ans + 6);
	free(ans);
	return ok ? 0 : 1;
}

/* "ivmcctl [-t MS] [-S PATH] vm ... | qemu-args ...": the index of the
 * command word, or 0 (not a VM command: the usual parsing follows). */
static int vm_command_at(int argc, char **argv, unsigned long *timeout,
			 const char **path)
{
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;

		if (!a)
			break;
		if (!strcmp(a, "vm") || !strcmp(a, "qemu-args"))
			return i;
		if ((!strcmp(a, "-t") || !strcmp(a, "--timeout")) && v) {
			if (parse_ul(v, 600000, timeout) || !*timeout)
				return 0;
			i++;
		} else if ((!strcmp(a, "-S") || !strcmp(a, "--vm-socket")) && v) {
			*path = v;
			i++;
		} else if ((!strcmp(a, "-s") || !strcmp(a, "--socket")) && v) {
			i++;
		} else if (strcmp(a, "-j") != 0 && strcmp(a, "--json") != 0) {
			return 0;
		}
	}
	return 0;
}

int main(int argc, char **argv)
{
	static const struct option lo[] = {
		{ "socket", required_argument, NULL, 's' },
		{ "timeout", required_argument, NULL, 't' },
		{ "json", no_argument, NULL, 'j' },
		{ "vm-socket", required_argument, NULL, 'S' },
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
	const char *vm_path = getenv(VM_SOCKET_ENV);
	int c, fd, err, vm_at;

	if (!vm_path || !*vm_path)
		vm_path = VM_SOCKET_DEFAULT;
	vm_at = vm_command_at(argc, argv, &timeout, &vm_path);
	if (vm_at)
		return vm_request(vm_path, timeout, argc - vm_at, argv + vm_at);
	timeout = 5000;
	while ((c = getopt_long(argc, argv, "s:S:t:jh", lo, NULL)) != -1) {
		switch (c) {
		case 's': path = optarg; break;
		case 'S': break; /* for the VM commands only */
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
