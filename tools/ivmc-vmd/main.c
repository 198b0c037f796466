/* SPDX-License-Identifier: MIT */
/*
 * Description: ivmc-vmd, the host's ivshmem server for VMs (ivmc-vmd(8)):
 * arguments, the lock that lets one server own a run directory, the
 * command socket ivmcctl talks to, signals, the heartbeat, the epoll loop.
 * Separate from ivmcd on purpose: QEMU cannot reconnect to a restarted
 * ivshmem server, so this process must outlive every VM it serves.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include "ivmc-vmd.h"

struct vmd V;

#define EVENTS_MAX    32
#define ARGS_MAX      64

/* One ivmcctl request being read. */
struct cmdc {
	struct ev ev; /* first: the epoll pointer is the struct's */
	int fd;
	size_t len;
	uint64_t deadline_ms;
	char buf[VMD_CMD_MAX + 1];
};

static struct cmdc cmdc[VMD_CMDC_MAX];
static struct ev ev_cmd = { EV_CMD_LISTEN, NULL };
static struct ev ev_sig = { EV_SIGNAL, NULL };
static struct ev ev_tmr = { EV_TIMER, NULL };
static int cmd_lfd = -1, sig_fd = -1, tmr_fd = -1, lock_fd = -1;
static bool quit;

static void usage(FILE *f)
{
	fprintf(f,
		"usage: ivmc-vmd [-c FILE] [-r DIR] [-l LEVEL] [-L FILE]\n"
		"  -c, --config FILE  VMs and pairs (default %s)\n"
		"  -r, --run-dir DIR  sockets (default %s)\n"
		"  -l, --log-level L  error, warn, info (default) or debug\n"
		"  -L, --log-file F   log here (default stderr)\n"
		"  -h, --help\n",
		VMD_CONF_DEFAULT, VMD_RUN_DEFAULT);
}

/* The configuration's directory, so that the first change can be saved. */
static int conf_dir(const char *path)
{
	char buf[4096];
	char *slash;

	if (snprintf(buf, sizeof(buf), "%s", path) >= (int)sizeof(buf))
		return -ENAMETOOLONG;
	slash = strrchr(buf, '/');
	if (!slash || slash == buf)
		return 0;
	*slash = 0;
	return mkdir_p(buf, true);
}

static int ep_add(int fd, struct ev *ev)
{
	struct epoll_event e = { .events = EPOLLIN, .data.ptr = ev };

	return epoll_ctl(V.epfd, EPOLL_CTL_ADD, fd, &e) < 0 ? -errno : 0;
}

/* One server per run directory: a lock held for our lifetime. */
static int take_lock(void)
{
	char p[4096];

	if (snprintf(p, sizeof(p), "%s/ivmc-vmd.lock", V.run_dir) >=
	    (int)sizeof(p))
		return -ENAMETOOLONG;
	lock_fd = lock_file(p, 0600);
	return lock_fd < 0 ? lock_fd : 0;
}

static int cmd_listen(void)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };

	if (snprintf(V.sock_path, sizeof(V.sock_path), "%s/%s", V.run_dir,
		     VMD_SOCK_NAME) >= (int)sizeof(V.sock_path))
		return -ENAMETOOLONG;
	memcpy(sa.sun_path, V.sock_path, sizeof(sa.sun_path));
	cmd_lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (cmd_lfd < 0)
		return -errno;
	(void)unlink(V.sock_path);
	if (bind(cmd_lfd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
	    chmod(V.sock_path, 0600) < 0 || listen(cmd_lfd, 16) < 0)
		return -errno;
	return ep_add(cmd_lfd, &ev_cmd);
}

static int setup(void)
{
	struct itimerspec its = {
		.it_interval = { 0, VMD_HEARTBEAT_MS * 1000000L },
		.it_value = { 0, VMD_HEARTBEAT_MS * 1000000L },
	};
	struct rlimit rl;
	sigset_t set;
	int err;

	/* Up to 7 fds per pair: ask for what the hard limit allows. */
	if (!getrlimit(RLIMIT_NOFILE, &rl) && rl.rlim_cur < rl.rlim_max &&
	    rl.rlim_cur < 8192) {
		rl.rlim_cur = rl.rlim_max < 8192 ? rl.rlim_max : 8192;
		(void)setrlimit(RLIMIT_NOFILE, &rl);
	}
	if (getrandom(&V.host_id, sizeof(V.host_id), 0) != sizeof(V.host_id))
		V.host_id = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
	V.next_pairno = 1;
	for (int i = 0; i < VMD_CMDC_MAX; i++)
		cmdc[i].fd = -1;
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGHUP);
	sigprocmask(SIG_BLOCK, &set, NULL);
	signal(SIGPIPE, SIG_IGN);
	V.epfd = epoll_create1(EPOLL_CLOEXEC);
	sig_fd = signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
	tmr_fd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
	if (V.epfd < 0 || sig_fd < 0 || tmr_fd < 0 ||
	    timerfd_settime(tmr_fd, 0, &its, NULL) < 0)
		return -errno;
	if ((err = ep_add(sig_fd, &ev_sig)) || (err = ep_add(tmr_fd, &ev_tmr)))
		return err;
	return cmd_listen();
}

/* ---- ivmcctl requests: NUL-separated words, then end of stream ---- */

static void cmdc_close(struct cmdc *c)
{
	if (c->fd >= 0)
		close(c->fd);
	c->fd = -1;
}

/* Send all of the answer, waiting at most a second in all. */
static void reply(int fd, const char *head, const char *text, size_t len)
{
	struct timeval tv = { 1, 0 };
	struct iovec iov[2] = { { (void *)head, strlen(head) },
				{ (void *)text, len } };
	struct msghdr m = { .msg_iov = iov, .msg_iovlen = 2 };

	(void)setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	(void)fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
	for (int i = 0; i < 64 && (iov[0].iov_len || iov[1].iov_len); i++) {
		ssize_t n = sendmsg(fd, &m, MSG_NOSIGNAL);

		if (n <= 0)
			return;
		for (int k = 0; k < 2 && n > 0; k++) {
			size_t d = (size_t)n < iov[k].iov_len ? (size_t)n : iov[k].iov_len;

			iov[k].iov_base = (char *)iov[k].iov_base + d;
			iov[k].iov_len -= d;
			n -= (ssize_t)d;
		}
		m.msg_iov = iov[0].iov_len ? iov : iov + 1;
		m.msg_iovlen = iov[0].iov_len ? 2 : 1;
	}
}

static void reply_text(int fd, bool ok, const char *s)
{
	reply(fd, ok ? "ok\n" : "error\n", s, strlen(s));
}

static void cmd_answer(struct cmdc *c)
{
	char *argv[ARGS_MAX], *out = NULL;
	size_t outlen = 0;
	int argc = 0, rc;

	/* Words end with NUL; the last one too. */
	if (!c->len || c->buf[c->len - 1]) {
		reply_text(c->fd, false, "malformed request\n");
		return;
	}
	for (size_t i = 0; i < c->len; i += strlen(c->buf + i) + 1) {
		if (argc == ARGS_MAX) {
			reply_text(c->fd, false, "too many words\n");
			return;
		}
		argv[argc++] = c->buf + i;
	}
	rc = cmd_run(argc, argv, &out, &outlen);
	if (rc < 0)
		reply_text(c->fd, false, "out of memory\n");
	else
		reply(c->fd, rc ? "error\n" : "ok\n", out, outlen);
	free(out);
}

static void cmd_read(struct cmdc *c)
{
	ssize_t n = recv(c->fd, c->buf + c->len, VMD_CMD_MAX + 1 - c->len,
			 MSG_DONTWAIT);

	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		return;
	if (n < 0) {
		cmdc_close(c);
		return;
	}
	if (n > 0) {
		c->len += (size_t)n;
		if (c->len > VMD_CMD_MAX) {
			reply_text(c->fd, false, "request too long\n");
			cmdc_close(c);
		}
		return;
	}
	cmd_answer(c); /* end of stream: the request is whole */
	cmdc_close(c);
}

static void cmd_accept(void)
{
	for (int k = 0; k < 16; k++) {
		int fd = accept4(cmd_lfd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
		struct cmdc *c = NULL;
		struct ucred cr;
		socklen_t len = sizeof(cr);

		if (fd < 0)
			return;
		if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &len) < 0 ||
		    (cr.uid != 0 && cr.uid != geteuid())) {
			reply_text(fd, false, "only root and the server's user\n");
			close(fd);
			continue;
		}
		for (int i = 0; i < VMD_CMDC_MAX && !c; i++)
			if (cmdc[i].fd < 0)
				c = &cmdc[i];
		if (!c) {
			reply_text(fd, false, "busy: too many requests at once\n");
			close(fd);
			continue;
		}
		c->fd = fd;
		c->len = 0;
		c->deadline_ms = now_ms() + VMD_CMD_MS;
		c->ev.type = EV_CMD_CONN;
		if (ep_add(fd, &c->ev))
			cmdc_close(c);
	}
}

/* ---- the loop ---- */

static void on_signal(void)
{
	static struct conf next;
	struct signalfd_siginfo si;
	char err[256] = "";

	while (read(sig_fd, &si, sizeof(si)) == sizeof(si)) {
		if (si.ssi_signo != SIGHUP) {
			dlog(LOG_INFO, "signal %u: exiting", si.ssi_signo);
			quit = true;
			continue;
		}
		if (conf_load(V.conf_path, &next, err, sizeof(err))) {
			dlog(LOG_ERR, "SIGHUP: %s: %s (kept what runs)", V.conf_path, err);
			continue;
		}
		V.conf = next;
		if (vm_apply(err, sizeof(err)))
			dlog(LOG_ERR, "SIGHUP: %s", err);
		else
			dlog(LOG_INFO, "SIGHUP: %u VM(s) from %s", V.conf.nvm, V.conf_path);
	}
}

static void on_timer(void)
{
	uint64_t n, now = now_ms();

	if (read(tmr_fd, &n, sizeof(n)) != sizeof(n))
		return;
	vm_tick();
	for (int i = 0; i < VMD_CMDC_MAX; i++) {
		if (cmdc[i].fd >= 0 && now > cmdc[i].deadline_ms) {
			reply_text(cmdc[i].fd, false, "request not finished in time\n");
			cmdc_close(&cmdc[i]);
		}
	}
}

static void dispatch(struct ev *ev, uint32_t events)
{
	(void)events;
	switch (ev->type) {
	case EV_CMD_LISTEN: cmd_accept(); break;
	case EV_CMD_CONN: cmd_read((struct cmdc *)ev); break;
	case EV_SIGNAL: on_signal(); break;
	case EV_TIMER: on_timer(); break;
	case EV_DEV_LISTEN: vm_accept(ev->dev); break;
	case EV_DEV_CONN: vm_conn_event(ev->dev); break;
	default: break;
	}
}

static int loop(void)
{
	struct epoll_event evs[EVENTS_MAX];

	while (!quit) {
		int n = epoll_wait(V.epfd, evs, EVENTS_MAX, -1);

		if (n < 0 && errno != EINTR)
			return -errno;
		V.changed = false;
		for (int i = 0; i < n && !V.changed; i++)
			dispatch(evs[i].data.ptr, evs[i].events);
		/* A batch made stale by devices that came or went is dropped:
		 * level-triggered, what is still pending comes back. */
	}
	return 0;
}

int main(int argc, char **argv)
{
	static const struct option lo[] = {
		{ "config", required_argument, NULL, 'c' },
		{ "run-dir", required_argument, NULL, 'r' },
		{ "log-level", required_argument, NULL, 'l' },
		{ "log-file", required_argument, NULL, 'L' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const char *log_path = NULL;
	char err[256] = "";
	int c, e, level = LOG_INFO;
	FILE *log_fp = stderr;

	V.conf_path = VMD_CONF_DEFAULT;
	V.run_dir = VMD_RUN_DEFAULT;
	while ((c = getopt_long(argc, argv, "c:r:l:L:h", lo, NULL)) != -1) {
		switch (c) {
		case 'c': V.conf_path = optarg; break;
		case 'r': V.run_dir = optarg; break;
		case 'l':
			level = dlog_parse_level(optarg);
			if (level < 0) {
				fprintf(stderr, "ivmc-vmd: bad log level '%s'\n", optarg);
				return 2;
			}
			break;
		case 'L': log_path = optarg; break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (optind != argc) {
		usage(stderr);
		return 2;
	}
	if (log_path && !(log_fp = fopen(log_path, "ae"))) {
		fprintf(stderr, "ivmc-vmd: %s: %s\n", log_path, strerror(errno));
		return 1;
	}
	dlog_setup("ivmc-vmd", level, log_fp);
	e = mkdir_p(V.run_dir, true);
	if (!e)
		e = conf_dir(V.conf_path);
	umask(077);
	if (e || (e = take_lock())) {
		fprintf(stderr, "ivmc-vmd: %s: %s\n", V.run_dir,
			e == -EADDRINUSE ? "another ivmc-vmd serves it" : strerror(-e));
		return 1;
	}
	if (conf_load(V.conf_path, &V.conf, err, sizeof(err))) {
		fprintf(stderr, "ivmc-vmd: %s\n", err);
		return 1;
	}
	if ((e = setup())) {
		fprintf(stderr, "ivmc-vmd: setting up in %s: %s\n", V.run_dir,
			strerror(-e));
		return 1;
	}
	if (vm_apply(err, sizeof(err)))
		dlog(LOG_ERR, "%s", err);
	dlog(LOG_INFO, "serving %u VM(s) from %s in %s", V.conf.nvm,
	     V.conf_path, V.run_dir);
	e = loop();
	vm_shutdown();
	(void)unlink(V.sock_path);
	dlog(LOG_INFO, "stopped");
	return e ? 1 : 0;
}
