/* SPDX-License-Identifier: MIT */
/*
 * Description: ivmcd, the host's control plane (ivmcd(8)): arguments, the
 * lock that lets one daemon serve a path, daemon mode, signals, and the
 * epoll loop.
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
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/timerfd.h>
#include <sys/un.h>
#include <sched.h>
#include <time.h>
#include <unistd.h>

#include "ivmcd.h"

struct daemon D;

/* epoll data for the fixed fds; clients carry their struct client *. */
#define EV_LISTEN ((void *)1)
#define EV_SIGNAL ((void *)2)
#define EV_TIMER  ((void *)3)
#define EV_GUEST  ((void *)4)

void link_init(struct link *h)
{
	h->next = h->prev = h;
}

void link_add(struct link *h, struct link *n)
{
	n->prev = h->prev;
	n->next = h;
	h->prev->next = n;
	h->prev = n;
}

void link_del(struct link *n)
{
	n->prev->next = n->next;
	n->next->prev = n->prev;
	n->next = n->prev = n;
}

bool link_empty(const struct link *h)
{
	return h->next == h;
}

static void usage(FILE *f)
{
	fprintf(f,
		"usage: ivmcd [-f | -d] [-s PATH] [-c FILE] [-l LEVEL] [-L FILE]\n"
		"             [--linger-us N] [--tick-us N] [--guest [--poll]]\n"
		"  -f, --foreground   stay in the foreground, log to stderr (default)\n"
		"  -d, --daemon       detach once the socket is ready\n"
		"  -s, --socket PATH  control socket (default $%s or %s)\n"
		"  -c, --config FILE  policy (default %s)\n"
		"  -l, --log-level L  error, warn, info (default) or debug\n"
		"  -L, --log-file F   log here (daemon mode: default PATH.log)\n"
		"  --linger-us N      look for work N us after work (default %d)\n"
		"  --tick-us N        every N us meanwhile; 0: spin (default %d)\n"
		"  --guest            inside a VM: pair with peer VMs over the\n"
		"                     ivshmem devices of ivmc-vmd (docs/vm.md)\n"
		"  --poll             with --guest: take no interrupts; every\n"
		"                     connection's ends poll\n"
		"  -h, --help\n",
		CTL_SOCKET_ENV, CTL_SOCKET_DEFAULT, POLICY_PATH_DEFAULT,
		IVMCD_LINGER_US_DEFAULT, IVMCD_TICK_US_DEFAULT);
}

/* One daemon per path: a lock on PATH.lock, held for our lifetime. */
static int take_lock(const char *path)
{
	char lp[4096];
	int fd;

	if (snprintf(lp, sizeof(lp), "%s.lock", path) >= (int)sizeof(lp))
		return -ENAMETOOLONG;
	fd = lock_file(lp, 0644);
	if (fd < 0)
		return fd;
	D.lockfd = fd;
	return 0;
}

static int listen_on(const char *path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int fd, bufsz = 4 << 20;

	size_t n = strlen(path);

	if (n >= sizeof(sa.sun_path))
		return -ENAMETOOLONG;
	memcpy(sa.sun_path, path, n + 1);
	fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return -errno;
	(void)setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &bufsz, sizeof(bufsz));
	/* We hold the lock: a socket file left here is a dead daemon's. */
	(void)unlink(path);
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
	    chmod(path, 0666) < 0 || listen(fd, SOMAXCONN) < 0) {
		int err = -errno;

		close(fd);
		return err;
	}
	D.lfd = fd;
	return 0;
}

static int ep_add(int fd, uint32_t events, void *data)
{
	struct epoll_event ev = { .events = events, .data.ptr = data };

	return epoll_ctl(D.epfd, EPOLL_CTL_ADD, fd, &ev) < 0 ? -errno : 0;
}

static int setup_fds(void)
{
	sigset_t set;

	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGHUP);
	sigprocmask(SIG_BLOCK, &set, NULL);
	signal(SIGPIPE, SIG_IGN);
	D.sfd = signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
	D.tfd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
	D.epfd = epoll_create1(EPOLL_CLOEXEC);
	if (D.sfd < 0 || D.tfd < 0 || D.epfd < 0)
		return -errno;
	if (ep_add(D.lfd, EPOLLIN, EV_LISTEN) || ep_add(D.sfd, EPOLLIN, EV_SIGNAL) ||
	    ep_add(D.tfd, EPOLLIN, EV_TIMER))
		return -errno;
	return 0;
}

/* Re-read the config. On error the old policy stays; msg says why. */
int daemon_reload(char *msg, size_t len)
{
	struct policy *p;
	int err = policy_load(D.conf_path, true, &p, msg, len);

	if (err) {
		log_err("%s: %s (policy unchanged)", D.conf_path, msg);
		return err;
	}
	policy_free(D.pol);
	D.pol = p;
	D.pol_gen++;
	snprintf(msg, len, "policy %u loaded from %s", D.pol_gen, D.conf_path);
	log_info("%s", msg);
	return 0;
}

static void on_signal(void)
{
	struct signalfd_siginfo si;
	char msg[CTL_TEXT_MAX];

	while (read(D.sfd, &si, sizeof(si)) == sizeof(si)) {
		if (si.ssi_signo == SIGHUP) {
			(void)daemon_reload(msg, sizeof(msg));
		} else {
			log_info("signal %u: shutting down", si.ssi_signo);
			D.stop = true;
		}
	}
}

/* Arm the timer for the oldest pending registration. */
void timer_arm(void)
{
	struct itimerspec it = { 0 };
	uint64_t head = link_empty(&D.pending) ? 0 :
		link_entry(D.pending.next, struct reg, tnode)->deadline_ms;

	/* A system call only when the earliest deadline changed. */
	if (head == D.timer_armed)
		return;
	D.timer_armed = head;
	if (head) {
		struct reg *r = link_entry(D.pending.next, struct reg, tnode);
		uint64_t now = now_ms();
		uint64_t d = r->deadline_ms > now ? r->deadline_ms - now : 1;

		it.it_value.tv_sec = (time_t)(d / 1000);
		it.it_value.tv_nsec = (long)(d % 1000) * 1000000;
	}
	timerfd_settime(D.tfd, 0, &it, NULL);
}

static uint64_t mono_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

/* When work comes densely, keep looking for more after a round: a round
 * whose events (busy: how many) bring LINGER_EVENTS within D.linger_us
 * starts (or extends) a linger of D.linger_us, during which we look every
 * D.tick_us from a sleep in nanosleep(), not in epoll_wait(). A client's
 * registration then only queues: its sendmsg() finds nobody waiting on our
 * epoll and wakes nobody (waking a sleeper on another vCPU costs the
 * sender ~10 us on a VM, more than the rest of its registration), and we
 * pick it up at the next look. A look costs us too (18 us of CPU each on
 * the development VM, timer exits included), so sparse work, below
 * LINGER_EVENTS events per linger_us, keeps the plain wake-up per message.
 * tick_us 0: look without sleeping, yielding between looks. Idle, we sleep
 * in epoll_wait() and cost nothing. While lingering, run()'s chores after
 * a round (table rebuild, timers) wait for the next round: at most
 * linger_us. */
static int wait_events(struct epoll_event *evs, int busy)
{
	static uint64_t until, event_at[LINGER_EVENTS];
	static unsigned int nevent;
	int block = D.accept_paused_ms ? 100 : -1;
	struct timespec tick = { 0, (long)D.tick_us * 1000 };
	int n;

	if (!D.linger_us)
		return epoll_wait(D.epfd, evs, 64, block);
	if (busy) {
		uint64_t now = mono_us();

		for (int i = 0; i < busy && i < LINGER_EVENTS; i++) {
			uint64_t *oldest = &event_at[nevent++ % LINGER_EVENTS];

			if (*oldest && now - *oldest < D.linger_us &&
			    until < now + D.linger_us) {
				D.lingers += until <= now;
				until = now + D.linger_us;
			}
			*oldest = now;
		}
	}
	for (bool looked = false; mono_us() < until; looked = true) {
		n = epoll_wait(D.epfd, evs, 64, 0);
		if (n) {
			D.fruitful += looked;
			return n;
		}
		D.looks++;
		if (D.tick_us)
			(void)nanosleep(&tick, NULL);
		else
			sched_yield();
	}
	return epoll_wait(D.epfd, evs, 64, block);
}

static void run(void)
{
	struct epoll_event evs[64];
	int busy = 0;

	while (!D.stop) {
		int n = wait_events(evs, busy);

		if (n < 0 && errno != EINTR) {
			log_err("epoll_wait: %s", strerror(errno));
			return;
		}
		for (int i = 0; i < n && !D.stop; i++) {
			void *p = evs[i].data.ptr;

			if (p == EV_LISTEN) {
				(void)server_accept();
			} else if (p == EV_SIGNAL) {
				on_signal();
			} else if (p == EV_TIMER) {
				uint64_t x;

				(void)!read(D.tfd, &x, sizeof(x));
				D.timer_armed = 0; /* fired: set it again */
				pending_expire();
			} else if (p == EV_GUEST) {
				guest_tick();
			} else if ((uintptr_t)p & 1) {
				netns_event((void *)((uintptr_t)p & ~(uintptr_t)1));
			} else {
				client_event(p, evs[i].events);
			}
		}
		busy = n > 0 ? n : 0;
		if (D.table_dirty) {
			D.table_dirty = false;
			table_rebuild();
		}
		netns_reap();
		if (D.accept_paused_ms && now_ms() - D.accept_paused_ms >= 100 &&
		    ep_add(D.lfd, EPOLLIN, EV_LISTEN) == 0)
			D.accept_paused_ms = 0;
		timer_arm();
	}
}

static void shutdown_all(void)
{
	while (!link_empty(&D.clients))
		client_drop(link_entry(D.clients.next, struct client, node),
			    "daemon stopping");
	unlink(D.sock_path);
	/* Clients keep their map of the table: from now on it says "maybe"
	 * for everything, so they try (and reach a new daemon) again. */
	if (D.table)
		D.table->overflow = 1;
	log_info("stopped");
}

/* Daemon mode: the parent returns once the child listens (or failed). */
static int daemonize(int *ready_fd)
{
	int p[2];
	pid_t pid;
	char c = 1;

	if (pipe2(p, O_CLOEXEC) < 0)
		return -errno;
	pid = fork();
	if (pid < 0)
		return -errno;
	if (pid > 0) {
		close(p[1]);
		exit(read(p[0], &c, 1) == 1 ? c : 1);
	}
	close(p[0]);
	setsid();
	if (fork() > 0)
		_exit(0);
	*ready_fd = p[1];
	return 0;
}

static void ready(int fd, int code)
{
	char c = (char)code;

	if (fd >= 0) {
		(void)!write(fd, &c, 1);
		close(fd);
	}
}

static void raise_nofile(void)
{
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		(void)setrlimit(RLIMIT_NOFILE, &rl);
	}
}

int daemon_lists_init(uint32_t hash_size)
{
	link_init(&D.clients);
	link_init(&D.pending);
	link_init(&D.channels);
	link_init(&D.nss);
	link_init(&D.dead_nss);
	link_init(&D.domains);
	D.hash_size = hash_size;
	D.hash = calloc(D.hash_size, sizeof(struct reg *));
	if (!D.hash)
		return -ENOMEM;
	D.start_ms = now_ms();
	D.next_id = 1;
	return 0;
}

static int init_state(void)
{
	struct stat st;
	char msg[CTL_TEXT_MAX];
	int err;

	if (daemon_lists_init(1u << 16))
		return -ENOMEM;
	D.id = ((uint64_t)getpid() << 32) ^ (uint64_t)time(NULL);
	if (stat("/proc/self/ns/net", &st) == 0)
		D.own_netns_ino = st.st_ino;
	err = policy_load(D.conf_path, true, &D.pol, msg, sizeof(msg));
	if (err) {
		log_err("%s: %s", D.conf_path, msg);
		return err;
	}
	D.pol_gen = 1;
	return table_create();
}

int main(int argc, char **argv)
{
	static const struct option lo[] = {
		{ "foreground", no_argument, NULL, 'f' },
		{ "daemon", no_argument, NULL, 'd' },
		{ "socket", required_argument, NULL, 's' },
		{ "config", required_argument, NULL, 'c' },
		{ "log-level", required_argument, NULL, 'l' },
		{ "log-file", required_argument, NULL, 'L' },
		{ "linger-us", required_argument, NULL, 'W' },
		{ "tick-us", required_argument, NULL, 'T' },
		{ "guest", no_argument, NULL, 'G' },
		{ "poll", no_argument, NULL, 'P' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const char *log_file = NULL;
	char lbuf[4200];
	bool detach = false;
	int c, err, ready_fd = -1, level = LOG_INFO;
	FILE *log_fp = stderr;

	D.sock_path = getenv(CTL_SOCKET_ENV);
	if (!D.sock_path || !*D.sock_path)
		D.sock_path = CTL_SOCKET_DEFAULT;
	D.conf_path = POLICY_PATH_DEFAULT;
	D.linger_us = IVMCD_LINGER_US_DEFAULT;
	D.tick_us = IVMCD_TICK_US_DEFAULT;
	while ((c = getopt_long(argc, argv, "fds:c:l:L:h", lo, NULL)) != -1) {
		switch (c) {
		case 'f': detach = false; break;
		case 'd': detach = true; break;
		case 's': D.sock_path = optarg; break;
		case 'c': D.conf_path = optarg; break;
		case 'L': log_file = optarg; break;
		case 'G': D.guest = true; break;
		case 'P': D.guest_poll = true; break;
		case 'W':
		case 'T': {
			const char *what = c == 'W' ? "linger-us" : "tick-us";
			unsigned long max = c == 'W' ? 1000000 : 10000, v;
			char *end;

			errno = 0;
			v = strtoul(optarg, &end, 10);
			if (errno || end == optarg || *end || v > max ||
			    optarg[0] == '-') {
				fprintf(stderr, "ivmcd: bad --%s '%s' (0..%lu)\n",
					what, optarg, max);
				return 2;
			}
			if (c == 'W')
				D.linger_us = (unsigned int)v;
			else
				D.tick_us = (unsigned int)v;
			break;
		}
		case 'l':
			level = dlog_parse_level(optarg);
			if (level < 0) {
				fprintf(stderr, "ivmcd: bad log level '%s'\n", optarg);
				return 2;
			}
			break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (optind != argc) {
		usage(stderr);
		return 2;
	}
	if (detach && !log_file) {
		snprintf(lbuf, sizeof(lbuf), "%s.log", D.sock_path);
		log_file = lbuf;
	}
	err = mkdir_p(D.sock_path, false);
	if (!err)
		err = take_lock(D.sock_path);
	if (err == -EADDRINUSE) {
		fprintf(stderr, "ivmcd: another ivmcd serves %s\n", D.sock_path);
		return 3;
	}
	if (err) {
		fprintf(stderr, "ivmcd: %s: %s\n", D.sock_path, strerror(-err));
		return 1;
	}
	if (detach && daemonize(&ready_fd)) {
		fprintf(stderr, "ivmcd: fork: %s\n", strerror(errno));
		return 1;
	}
	if (log_file) {
		FILE *f = fopen(log_file, "ae");

		if (f)
			log_fp = f;
	}
	dlog_setup("ivmcd", level, log_fp);
	if (detach) {
		int nul = open("/dev/null", O_RDWR | O_CLOEXEC);

		if (nul >= 0) {
			dup2(nul, 0);
			dup2(nul, 1);
			dup2(nul, 2);
			close(nul);
		}
		(void)!chdir("/");
	}
	raise_nofile();
	err = init_state();
	if (!err)
		err = listen_on(D.sock_path);
	if (!err)
		err = setup_fds();
	if (!err && D.guest)
		err = guest_init(D.epfd, EV_GUEST);
	if (err) {
		log_err("start: %s", strerror(-err));
		ready(ready_fd, 1);
		return 1;
	}
	log_info("serving %s (policy %s)", D.sock_path, D.conf_path);
	ready(ready_fd, 0);
	run();
	shutdown_all();
	return 0;
}
