/* SPDX-License-Identifier: MIT */
/*
 * Description: the preload's fds and processes, with real programs (this
 * binary, run through ivmc-run as server and client). Over one
 * accelerated connection, each step followed by a checked exchange:
 * the library's own fds are few, high and close-on-exec, and each more
 * accelerated connection costs exactly one (its doorbell; K connection
 * pairs within the process: 2K), all given back when they close; closefrom() and
 * close_range() by the application spare them; the socket dup2'd to
 * another number and the original closed; a forked child writes its part
 * of the stream; then the client execs itself with the socket inherited
 * and the new image goes on over plain TCP, losing nothing. The server
 * execs itself between listen() and accept(): the new image accepts on the
 * inherited listening socket, and that connection is the accelerated one.
 */
#include <dirent.h>
#include <fcntl.h>
#include <linux/close_range.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/syscall.h>

#include "t_ctl.h"

#define CHUNK (256 * 1024)
#define STEPS 6 /* exchanges, see client() */

static int port;

/* Exchange CHUNK bytes each way: the client sends step s's pattern, the
 * server echoes it transformed; both check. */
static void send_all(int fd, const char *b, size_t n)
{
	while (n) {
		ssize_t k = write(fd, b, n);

		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0)
			t_fail("write: %s", strerror(errno));
		b += k;
		n -= (size_t)k;
	}
}

static void recv_all(int fd, char *b, size_t n)
{
	while (n) {
		ssize_t k = read(fd, b, n);

		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0)
			t_fail("read: %s", k ? strerror(errno) : "end of stream");
		b += k;
		n -= (size_t)k;
	}
}

static void fill(char *b, int step, int dir)
{
	for (size_t i = 0; i < CHUNK; i++)
		b[i] = (char)(i * 7 + (size_t)step * 131 + (size_t)dir * 17);
}

static void client_step(int fd, int step)
{
	static char out[CHUNK], in[CHUNK], want[CHUNK];

	fill(out, step, 0);
	send_all(fd, out, CHUNK);
	recv_all(fd, in, CHUNK);
	fill(want, step, 1);
	if (memcmp(in, want, CHUNK))
		t_fail("step %d: reply corrupt", step);
	printf("client: step %d done\n", step);
	fflush(stdout);
}

/* The library's fds: every fd of ours above the application's, counted;
 * all close-on-exec. */
static int own_fds(int below)
{
	DIR *d = opendir("/proc/self/fd");
	struct dirent *e;
	int n = 0;

	if (!d)
		t_fail("opendir /proc/self/fd");
	while ((e = readdir(d))) {
		int fd = atoi(e->d_name);

		if (e->d_name[0] == '.' || fd == dirfd(d) || fd < below)
			continue;
		if (!(fcntl(fd, F_GETFD) & FD_CLOEXEC))
			t_fail("fd %d of the library is not close-on-exec", fd);
		n++;
	}
	closedir(d);
	return n;
}

/* One side of a loopback pair within this process: a 64-byte echo. */
static void pair_echo(int a, int b, int round)
{
	char out[64], in[64];

	memset(out, 'a' + round % 26, sizeof(out));
	send_all(a, out, sizeof(out));
	recv_all(b, in, sizeof(in));
	if (memcmp(in, out, sizeof(in)))
		t_fail("extra pair: corrupt echo");
	send_all(b, in, sizeof(in));
	recv_all(a, in, sizeof(in));
	if (memcmp(in, out, sizeof(in)))
		t_fail("extra pair: corrupt echo back");
}

/* EXTRA connection pairs within this process (both ends accelerated):
 * the library's fds grow by exactly one per connection once they are on
 * their channels, and shrink back when they close. */
#define EXTRA 4

/* Shared memory objects of ours mapped now (distinct memfd inodes: the
 * daemon mailbox, and one per channel, however many ends map it here). */
static int ivmc_memfds(void)
{
	unsigned long ino[64];
	char line[512];
	int n = 0;
	FILE *f = fopen("/proc/self/maps", "re");

	if (!f)
		t_fail("/proc/self/maps");
	while (fgets(line, sizeof(line), f)) {
		unsigned long i;
		bool seen = false;

		if (!strstr(line, "/memfd:ivmc") ||
		    sscanf(line, "%*s %*s %*s %*s %lu", &i) != 1)
			continue;
		for (int k = 0; k < n; k++)
			seen |= ino[k] == i;
		if (!seen && n < 64)
			ino[n++] = i;
	}
	fclose(f);
	return n;
}

static void extra_pairs(int floor_, int n)
{
	struct sockaddr_in a = { .sin_family = AF_INET,
				 .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t len = sizeof(a);
	int lfd = socket(AF_INET, SOCK_STREAM, 0), c[EXTRA], s[EXTRA], m = 0;
	int regions = ivmc_memfds(), k = 0;

	if (lfd < 0 || bind(lfd, (struct sockaddr *)&a, sizeof(a)) ||
	    listen(lfd, EXTRA) || getsockname(lfd, (struct sockaddr *)&a, &len))
		t_fail("extra listener: %s", strerror(errno));
	for (int i = 0; i < EXTRA; i++) {
		c[i] = socket(AF_INET, SOCK_STREAM, 0);
		if (c[i] < 0 || connect(c[i], (struct sockaddr *)&a, sizeof(a)))
			t_fail("extra connect: %s", strerror(errno));
		s[i] = accept(lfd, NULL, NULL);
		if (s[i] < 0)
			t_fail("extra accept: %s", strerror(errno));
	}
	/* Until all EXTRA pairs have their channel (bounded: 4 s). */
	for (int r = 0; r < 400 && (k = ivmc_memfds() - regions) < EXTRA; r++) {
		for (int i = 0; i < EXTRA; i++)
			pair_echo(c[i], s[i], r);
		poll(NULL, 0, 10);
	}
	if (k != EXTRA)
		t_fail("%d of %d connection pairs got a channel", k, EXTRA);
	for (int i = 0; i < EXTRA; i++)
		pair_echo(c[i], s[i], 0); /* every end has opened its half */
	m = own_fds(floor_);
	printf("client: %d more connections on channels: %d more library "
	       "fds\n", 2 * EXTRA, m - n);
	if (m != n + 2 * EXTRA)
		t_fail("%d connections on channels cost %d library fds, not "
		       "one each", 2 * EXTRA, m - n);
	for (int i = 0; i < EXTRA; i++) {
		close(c[i]);
		close(s[i]);
	}
	close(lfd);
	if ((m = own_fds(floor_)) != n)
		t_fail("after closing them: %d library fds, not %d", m, n);
}

static int client(int step0, int fd)
{
	struct rlimit rl;
	int floor_, n, nfd;

	if (step0 > 0) {
		/* After exec: the inherited socket, plain TCP, same stream. */
		client_step(fd, step0);
		close(fd);
		return 0;
	}
	fd = socket(AF_INET, SOCK_STREAM, 0);
	{
		struct sockaddr_in a = { .sin_family = AF_INET,
					 .sin_port = htons((uint16_t)port),
					 .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };

		if (connect(fd, (struct sockaddr *)&a, sizeof(a)))
			t_fail("connect: %s", strerror(errno));
	}
	/* 0: attach happens during it (or not: the stream is right anyway). */
	for (int i = 0; i < 8; i++)
		client_step(fd, 0);
	if (getrlimit(RLIMIT_NOFILE, &rl))
		t_fail("getrlimit");
	floor_ = (int)(rl.rlim_cur / 2);
	n = own_fds(floor_);
	printf("client: %d fds of the library at or above %d\n", n, floor_);
	/* daemon socket, mailbox, the doorbell; the process's kick eventfd
	 * and this thread's kick set (wake.c) */
	if (n > 5)
		t_fail("%d library fds for one connection", n);
	extra_pairs(floor_, n);
	/* 1: the application closes everything above its socket. */
	for (int i = 0; i < 4; i++)
		if (open("/dev/null", O_RDONLY) < 0)
			t_fail("open");
	closefrom(fd + 1);
	if (own_fds(floor_) != n)
		t_fail("closefrom() took the library's fds");
	client_step(fd, 1);
	/* 2: close_range over the whole space above the socket. */
	if (open("/dev/null", O_RDONLY) < 0)
		t_fail("open");
	if (syscall(SYS_getpid) > 0 && close_range((unsigned int)fd + 1, ~0u, 0))
		t_fail("close_range: %s", strerror(errno));
	if (own_fds(floor_) != n)
		t_fail("close_range() took the library's fds");
	client_step(fd, 2);
	/* 3: dup2 to another number, close the original. */
	nfd = dup2(fd, 77);
	if (nfd != 77)
		t_fail("dup2");
	close(fd);
	fd = nfd;
	client_step(fd, 3);
	/* 4: a forked child does a whole exchange; the parent waits. */
	{
		pid_t pid = fork();
		int st;

		if (pid < 0)
			t_fail("fork");
		if (pid == 0) {
			client_step(fd, 4);
			_exit(0);
		}
		if (waitpid(pid, &st, 0) != pid || !WIFEXITED(st) ||
		    WEXITSTATUS(st))
			t_fail("child's exchange failed (%#x)", st);
	}
	/* 5: exec with the socket inherited: the new image goes on. */
	{
		char self[PATH_MAX], a1[32], a2[32], a3[32];
		ssize_t k = readlink("/proc/self/exe", self, sizeof(self) - 1);

		if (k < 0)
			t_fail("readlink");
		self[k] = 0;
		snprintf(a1, sizeof(a1), "%d", port);
		snprintf(a2, sizeof(a2), "%d", 5);
		snprintf(a3, sizeof(a3), "%d", fd);
		fflush(stdout);
		execl(self, self, "--client", a1, a2, a3, (char *)NULL);
		t_fail("execl: %s", strerror(errno));
	}
	return 1;
}

/* Listen, say the port, and exec ourselves with the listening socket
 * inherited (--server-inherited): the new image accepts. */
static int server(void)
{
	struct sockaddr_in a = { .sin_family = AF_INET,
				 .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t len = sizeof(a);
	int one = 1, lfd = socket(AF_INET, SOCK_STREAM, 0);
	char self[PATH_MAX], a1[32], a2[32];
	ssize_t k = readlink("/proc/self/exe", self, sizeof(self) - 1);

	setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (k < 0 || bind(lfd, (struct sockaddr *)&a, sizeof(a)) ||
	    listen(lfd, 4) || getsockname(lfd, (struct sockaddr *)&a, &len))
		t_fail("listen: %s", strerror(errno));
	self[k] = 0;
	printf("%d\n", ntohs(a.sin_port));
	fflush(stdout);
	snprintf(a1, sizeof(a1), "%d", ntohs(a.sin_port));
	snprintf(a2, sizeof(a2), "%d", lfd);
	execl(self, self, "--server-inherited", a1, a2, "0", (char *)NULL);
	t_fail("execl: %s", strerror(errno));
}

static int server_accept(int lfd)
{
	static char in[CHUNK], out[CHUNK], want[CHUNK];
	int fd = accept(lfd, NULL, NULL);

	if (fd < 0)
		t_fail("accept");
	for (int step = 0; step < STEPS; step++) {
		int reps = step ? 1 : 8;

		for (int r = 0; r < reps; r++) {
			recv_all(fd, in, CHUNK);
			fill(want, step, 0);
			if (memcmp(in, want, CHUNK))
				t_fail("server: step %d corrupt", step);
			fill(out, step, 1);
			send_all(fd, out, CHUNK);
		}
	}
	if (read(fd, in, 1) != 0)
		t_fail("server: no end of stream after the last step");
	close(fd);
	return 0;
}

int main(int argc, char **argv)
{
	char lib[PATH_MAX];
	pid_t d;
	int st;

	if (argc == 5) {
		alarm(60);
		port = atoi(argv[2]);
		if (!strcmp(argv[1], "--server"))
			return server();
		if (!strcmp(argv[1], "--server-inherited"))
			return server_accept(atoi(argv[3]));
		return client(atoi(argv[3]), atoi(argv[4]));
	}
	t_alarm(120);
	t_bin(lib, sizeof(lib), "../lib/libivmc-preload.so");
	if (access(lib, R_OK))
		t_skip("no libivmc-preload.so beside the tools (make)");
	d = t_daemon_start(NULL);
	t_ivmc_self_pair("0", "-1");
	/* the client-server connection and the EXTRA pairs */
	if (!t_paired_exactly(1 + EXTRA))
		t_fail("ivmcd did not pair all %d connections", 1 + EXTRA);
	st = t_daemon_stop(d);
	T_ASSERT(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	return T_PASS;
}
