/* SPDX-License-Identifier: MIT */
/*
 * Description: another user cannot reach a channel. Two endpoint
 * processes running as uid 4242 wrap the two ends of a loopback TCP
 * connection with ivmc_tcp() and attach through a private ivmcd, then keep
 * a verified stream going. A process that became nobody (65534) tries, on
 * both endpoints and on ivmcd: to list and open /proc/PID/fd (the region
 * memfd, the doorbell, every fd), /proc/PID/map_files of the region's
 * mappings, /proc/PID/mem, process_vm_readv() of the region, ptrace
 * attach, pidfd_getfd() of the region fd. On ivmcd's socket it says
 * HELLO, then tries to write the table (write, a shared writable mmap,
 * mprotect, reopening it read-write through /proc/self/fd), EVACUATE and
 * RELOAD, and registers forged connections against a victim (uid 4242)
 * whose registration waits for an end that never comes: its own socket to
 * the same server port, a bind of the victim's 4-tuple, and the exact
 * mirror of the victim's 4-tuple built in a user and network namespace of
 * its own. Every attempt must fail (EACCES/EPERM, never a CHAN), the
 * victim must never attach, and the pair's stream must stay correct and
 * on the ring. Then the same /proc attempts from a process of uid 4242
 * that is not an endpoint: what the kernel allows is printed (same uid is
 * one domain, docs/SECURITY.md 3.2); only map_files must be refused.
 */
#include <grp.h>
#include <poll.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <net/if.h>

#include "ctl/proto.h"
#include "t_ctl.h"
#include "transport/transport.h"

#define UID_E 4242u  /* the endpoints and the victim */
#define UID_X 65534u /* the other user */
#define CHUNK 1000
#define MAX_PATHS 256
#define S_AB 0xab /* stream seed a -> b (echoed back) */
#define S_V 0x5e /* the victim's stream */

/* What the attackers try: paths found by root, addresses of the region. */
struct targets {
	pid_t pid[3]; /* a, b, ivmcd */
	char path[MAX_PATHS][96];
	bool must[MAX_PATHS]; /* a region or map: the point of the test */
	int npath;
	uintptr_t region_addr; /* in a */
	int sock_fd; /* in a */
	uint16_t vport, sport; /* the victim's 4-tuple: 127.0.0.1 both */
};

static struct targets T;
static int denied, allowed_bad;

/* ---- small plumbing ---- */

static void put(int fd, const void *b, size_t n)
{
	if (write(fd, b, n) != (ssize_t)n)
		t_fail("pipe write: %s", strerror(errno));
}

static void get(int fd, void *b, size_t n, int ms)
{
	struct pollfd p = { fd, POLLIN, 0 };

	if (poll(&p, 1, ms) != 1 || read(fd, b, n) != (ssize_t)n)
		t_fail("pipe read: nothing within %d ms", ms);
}

static void become(uid_t uid)
{
	if (setgroups(0, NULL) || setresgid(uid, uid, uid) ||
	    setresuid(uid, uid, uid))
		t_fail("become %u: %s", uid, strerror(errno));
	/* A changed uid makes a process non-dumpable (/proc owned by root);
	 * a process a user starts normally is dumpable. Be that process. */
	prctl(PR_SET_DUMPABLE, 1);
	prctl(PR_SET_PDEATHSIG, SIGKILL);
}

/* Evaluate call, then read errno (argument order is unspecified). */
#define DENIED(what, arg, call)                          \
	do {                                             \
		long r_ = (long)(call);                  \
		denied_as((what), (arg), r_, errno);     \
	} while (0)

/* r < 0 with errno EACCES or EPERM: counted as denied; anything else is a
 * failure of the test (printed, counted). */
static void denied_as(const char *what, const char *arg, long r, int e)
{
	if (r < 0 && (e == EACCES || e == EPERM)) {
		denied++;
		return;
	}
	allowed_bad++;
	fprintf(stderr, "FAIL: %s %s: %s\n", what, arg,
		r < 0 ? strerror(e) : "ALLOWED");
}

/* ---- the pair: a streams to b, b echoes ---- */

static void end_b(int fd)
{
	struct ivmc_chan *h;
	char buf[CHUNK];

	become(UID_E);
	T_ASSERT_OK(ivmc_tcp(fd, NULL, &h));
	for (;;) {
		ssize_t n = ivmc_recv(h, buf, sizeof(buf), 0);

		if (n == 0)
			break;
		if (n < 0)
			t_fail("b: recv %zd (%s)", n, t_strerror(n));
		t_send_all(h, buf, (size_t)n);
	}
	T_ASSERT_EQ(ivmc_tcp_state(h), 1);
	ivmc_close(h);
	_exit(0);
}

static void round_trip(struct ivmc_chan *h, uint64_t *off)
{
	char buf[CHUNK], got[CHUNK];

	t_fill(S_AB, *off, buf, CHUNK);
	t_send_all(h, buf, CHUNK);
	t_recv_all(h, got, CHUNK);
	if (t_verify(S_AB, *off, got, CHUNK))
		t_fail("a: the echo came back wrong at %llu",
		       (unsigned long long)*off);
	*off += CHUNK;
}

/* Round trips until attached (up to 5 s), says so on up, then until told
 * to stop on down; reports the bytes moved. */
static void end_a(int fd, int up, int down)
{
	struct ivmc_chan *h;
	struct pollfd p = { down, POLLIN, 0 };
	uint64_t off = 0, t0 = t_now_ns();
	char c = 'A';

	become(UID_E);
	T_ASSERT_OK(ivmc_tcp(fd, NULL, &h));
	while (ivmc_tcp_state(h) != 1) {
		if (t_now_ns() - t0 > 5000000000ull)
			t_fail("a: not attached after 5 s (state %d)",
			       ivmc_tcp_state(h));
		round_trip(h, &off);
		usleep(1000);
	}
	round_trip(h, &off); /* b has attached too by now */
	put(up, &c, 1);
	while (poll(&p, 1, 0) == 0 && t_now_ns() - t0 < 18000000000ull)
	{
		round_trip(h, &off);
		usleep(100); /* a steady stream, not a CPU hog */
	}
	T_ASSERT_EQ(ivmc_tcp_state(h), 1);
	T_ASSERT_OK(ivmc_shutdown(h, SHUT_WR));
	T_ASSERT_EQ(ivmc_recv(h, &c, 1, 0), 0);
	put(up, &off, sizeof(off));
	ivmc_close(h);
	_exit(0);
}

/* ---- the victim: registered, its other end never registers ---- */

static void victim(int fd, int up, int down)
{
	struct ivmc_chan *h;
	char buf[CHUNK], c;
	int st = 0;

	become(UID_E);
	T_ASSERT_OK(ivmc_tcp(fd, NULL, &h));
	put(up, "r", 1);
	get(down, &c, 1, 15000); /* the forgers are done */
	for (int i = 0; i < 5000 && !st; i++) {
		st = ivmc_tcp_state(h);
		usleep(1000);
	}
	/* Data goes on TCP (the server echoes it plainly). */
	t_fill(S_V, 0, buf, CHUNK);
	t_send_all(h, buf, CHUNK);
	t_recv_all(h, buf, CHUNK);
	if (t_verify(S_V, 0, buf, CHUNK))
		t_fail("victim: echo came back wrong");
	put(up, &st, sizeof(st));
	ivmc_close(h);
	_exit(0);
}

/* ---- what root finds ---- */

static void add_path(const char *p, bool must)
{
	if (T.npath == MAX_PATHS)
		return;
	size_t n = strlen(p);

	if (n >= sizeof(T.path[0]))
		t_fail("path too long: %s", p);
	memcpy(T.path[T.npath], p, n + 1);
	T.must[T.npath++] = must;
}

/* Every fd of pid; the region's mappings (map_files). Returns the regions
 * found. */
static int find_targets(pid_t pid, bool is_a)
{
	char dir[32], p[96], link[128], line[512];
	struct dirent *e;
	unsigned long ino = 0;
	int regions = 0;
	DIR *d;
	FILE *f;

	snprintf(dir, sizeof(dir), "/proc/%d/fd", (int)pid);
	d = opendir(dir);
	if (!d)
		t_fail("opendir %s: %s", dir, strerror(errno));
	while ((e = readdir(d))) {
		ssize_t n;

		if (e->d_name[0] == '.')
			continue;
		snprintf(p, sizeof(p), "%s/%.16s", dir, e->d_name);
		n = readlink(p, link, sizeof(link) - 1);
		if (n < 0)
			continue;
		link[n] = 0;
		/* The channel's doorbell (ivmcd: its regions and the
		 * table) are the point; other fds are tried too. */
		add_path(p, strstr(link, "memfd:") || strstr(link, "socket:"));
		/* An fd to ask pidfd_getfd() for: the first socket. */
		if (is_a && T.sock_fd < 0 && strstr(link, "socket:"))
			T.sock_fd = atoi(e->d_name);
	}
	closedir(d);
	snprintf(p, sizeof(p), "/proc/%d/maps", (int)pid);
	f = fopen(p, "re");
	if (!f)
		t_fail("fopen %s", p);
	while (fgets(line, sizeof(line), f)) {
		unsigned long lo, hi, in;

		if (!strstr(line, "memfd:ivmc") ||
		    sscanf(line, "%lx-%lx %*s %*s %*s %lu", &lo, &hi, &in) != 3)
			continue;
		snprintf(p, sizeof(p), "/proc/%d/map_files/%lx-%lx", (int)pid,
			 lo, hi);
		add_path(p, true);
		/* The region: "ivmc", not the mailbox (one page), not the
		 * daemon's table; mapped several times (mirrors). */
		if (strstr(line, "ivmcd") || hi - lo <= CTL_MAILBOX_SIZE)
			continue;
		regions += in != ino;
		ino = in;
		if (is_a && !T.region_addr)
			T.region_addr = lo;
	}
	fclose(f);
	snprintf(p, sizeof(p), "/proc/%d/mem", (int)pid);
	add_path(p, true);
	return regions;
}

/* ---- the /proc attempts (as whoever runs them) ---- */

struct outcome {
	int opened, must_opened, maps_opened, tried;
};

static void try_paths(bool other_uid, struct outcome *o)
{
	char dir[64], buf[64];

	for (int k = 0; k < 3 && other_uid; k++) {
		DIR *d;

		snprintf(dir, sizeof(dir), "/proc/%d/fd", (int)T.pid[k]);
		d = opendir(dir);
		denied_as("opendir", dir, d ? 0 : -1, errno);
		if (d)
			closedir(d);
	}
	for (int i = 0; i < T.npath; i++) {
		const char *p = T.path[i];
		bool map = strstr(p, "map_files") != NULL;

		for (int rw = 0; rw < 2; rw++) {
			int fd = open(p, (rw ? O_RDWR : O_RDONLY) | O_CLOEXEC);
			int e = errno;

			o->tried++;
			if (fd >= 0) {
				if (!other_uid && !rw)
					printf("  uid %u opened %s\n",
					       getuid(), p);
				o->opened++;
				o->must_opened += T.must[i];
				o->maps_opened += map;
				close(fd);
			}
			/* A socket opened through /proc gives ENXIO even to
			 * its owner: refused either way, but not by the
			 * permission check this test is about. */
			if (other_uid || map)
				denied_as(rw ? "open O_RDWR" : "open O_RDONLY",
					      p, fd, e);
		}
		if (other_uid && !map && strstr(p, "/fd/")) {
			ssize_t n = readlink(p, buf, sizeof(buf));

			denied_as("readlink", p, n, errno);
		}
	}
}

/* Same uid: print what the kernel allows; another uid: all refused. */
static void said(bool other_uid, const char *what, long r, int e)
{
	if (other_uid)
		denied_as(what, "of a", r, e);
	else
		printf("  uid %u %s of a: %s\n", getuid(), what,
		       r < 0 ? strerror(e) : "allowed");
}

static void try_process(bool other_uid)
{
	char buf[64];
	struct iovec l = { buf, sizeof(buf) };
	struct iovec r = { (void *)T.region_addr, sizeof(buf) };
	long n;
	int pfd;

	n = process_vm_readv(T.pid[0], &l, 1, &r, 1, 0);
	said(other_uid, "process_vm_readv of the region", n, errno);
	n = syscall(SYS_pidfd_open, T.pid[0], 0);
	if (n < 0)
		t_fail("pidfd_open: %s", strerror(errno));
	pfd = (int)n;
	n = syscall(SYS_pidfd_getfd, pfd, T.sock_fd, 0);
	said(other_uid, "pidfd_getfd of a socket", n, errno);
	if (n >= 0)
		close((int)n);
	close(pfd);
	if (!other_uid)
		return; /* an attach would stop it */
	n = ptrace(PTRACE_ATTACH, T.pid[0], NULL, NULL);
	said(other_uid, "ptrace attach", n, errno);
}

/* ---- the control socket ---- */

static int ctl_connect(void)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);

	memcpy(sa.sun_path, t_sock, strlen(t_sock) + 1);
	if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)))
		t_fail("connect to ivmcd as %u: %s", getuid(), strerror(errno));
	return fd;
}

/* One message in (up to ms), its fd (or -1) in *fd. */
static ssize_t ctl_in(int s, void *m, size_t len, int *fd, int ms)
{
	struct pollfd p = { s, POLLIN, 0 };
	int fds[2], nfds = 2;
	ssize_t n;

	*fd = -1;
	if (poll(&p, 1, ms) != 1)
		return -ETIMEDOUT;
	n = xport_recv_fds(s, m, len, fds, &nfds, MSG_DONTWAIT);
	for (int i = 0; i < nfds; i++) {
		if (i == 0)
			*fd = fds[0];
		else
			close(fds[i]);
	}
	return n;
}

static int hello(int s)
{
	union { struct ctl_welcome w; char b[CTL_MSG_MAX]; } m;
	struct ctl_hello h = { 0 };
	int fd;

	ctl_hdr_init(&h.h, CTL_HELLO, 0);
	T_ASSERT_OK(xport_send_fds(s, &h, sizeof(h), NULL, 0));
	if (ctl_in(s, &m, sizeof(m), &fd, 5000) != sizeof(m.w) ||
	    m.w.h.type != CTL_WELCOME || fd < 0)
		t_fail("no WELCOME with a table");
	return fd;
}

static void try_table(int tfd)
{
	char p[64];
	void *m;
	int fd;

	/* Not open for writing: EBADF is the refusal here. */
	if (write(tfd, "x", 1) >= 0 || errno != EBADF)
		denied_as("write", "table fd (want EBADF)", 0, 0);
	m = mmap(NULL, CTL_TABLE_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED,
		 tfd, 0);
	denied_as("mmap rw", "table fd", m == MAP_FAILED ? -1 : 0, errno);
	if (m != MAP_FAILED)
		munmap(m, CTL_TABLE_SIZE);
	m = mmap(NULL, CTL_TABLE_SIZE, PROT_READ, MAP_SHARED, tfd, 0);
	T_ASSERT(m != MAP_FAILED);
	DENIED("mprotect rw", "table",
	       mprotect(m, CTL_TABLE_SIZE, PROT_READ | PROT_WRITE));
	munmap(m, CTL_TABLE_SIZE);
	/* The file's mode may let us reopen it read-write; the seal must
	 * still refuse every write. */
	snprintf(p, sizeof(p), "/proc/self/fd/%d", tfd);
	fd = open(p, O_RDWR | O_CLOEXEC);
	if (fd < 0) {
		denied_as("reopen O_RDWR", "table", fd, errno);
		return;
	}
	printf("  table reopened O_RDWR through /proc/self/fd (file mode)\n");
	DENIED("write", "reopened table", write(fd, "x", 1));
	m = mmap(NULL, CTL_TABLE_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd,
		 0);
	denied_as("mmap rw", "reopened table", m == MAP_FAILED ? -1 : 0,
		      errno);
	if (m != MAP_FAILED)
		munmap(m, CTL_TABLE_SIZE);
	close(fd);
}

/* EVACUATE and RELOAD as another uid: RESULT EPERM. */
static void try_admin(int s)
{
	union { struct ctl_result r; char b[CTL_MSG_MAX]; } m;
	struct ctl_evacuate ev = { 0 };
	struct ctl_reload rl = { 0 };
	int fd;

	ctl_hdr_init(&ev.h, CTL_EVACUATE, 0);
	ev.uid = UID_E;
	ev.has_uid = 1;
	T_ASSERT_OK(xport_send_fds(s, &ev, sizeof(ev), NULL, 0));
	if (ctl_in(s, &m, sizeof(m), &fd, 5000) != sizeof(m.r) ||
	    m.r.h.type != CTL_RESULT)
		t_fail("no RESULT for EVACUATE");
	denied_as("EVACUATE", "uid 4242", m.r.err ? -1 : 0, m.r.err);
	ctl_hdr_init(&rl.h, CTL_RELOAD, 0);
	T_ASSERT_OK(xport_send_fds(s, &rl, sizeof(rl), NULL, 0));
	if (ctl_in(s, &m, sizeof(m), &fd, 5000) != sizeof(m.r) ||
	    m.r.h.type != CTL_RESULT)
		t_fail("no RESULT for RELOAD");
	denied_as("RELOAD", "", m.r.err ? -1 : 0, m.r.err);
}

static void reg(int s, uint64_t token, int sock)
{
	struct ctl_reg r = { 0 };

	ctl_hdr_init(&r.h, CTL_REG_CONN, 0);
	r.token = token;
	T_ASSERT_OK(xport_send_fds(s, &r, sizeof(r), &sock, 1));
}

/* Answers for ms: never a CHAN; returns the NOCHANs seen. */
static int no_chan(int s, int ms)
{
	uint64_t end = t_now_ns() + (uint64_t)ms * 1000000ull;
	int nochans = 0;

	while (t_now_ns() < end) {
		union { struct ctl_hdr h; struct ctl_nochan n;
			char b[CTL_MSG_MAX]; } m;
		int fd;
		ssize_t n = ctl_in(s, &m, sizeof(m), &fd, 20);

		if (fd >= 0)
			close(fd);
		if (n == -ETIMEDOUT)
			continue;
		if (n <= 0)
			t_fail("ivmcd hung up on the forger (%zd)", n);
		if (m.h.type == CTL_CHAN) {
			allowed_bad++;
			fprintf(stderr, "FAIL: a CHAN for a forged registration\n");
		} else if (m.h.type == CTL_NOCHAN) {
			printf("  forged token %llu: NOCHAN reason %u\n",
			       (unsigned long long)m.n.token, m.n.reason);
			nochans++;
		}
	}
	return nochans;
}

static struct sockaddr_in lo_addr(uint16_t port)
{
	struct sockaddr_in a = { .sin_family = AF_INET,
				 .sin_port = htons(port),
				 .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	return a;
}

/* The forger's sockets, open until its registrations are answered. */
static int keep[4], nkeep;

/* In this netns: the victim's own 4-tuple cannot be had; our own
 * connection to the same server port is not the victim's. */
static void forge_same_ns(int s)
{
	struct sockaddr_in sv = lo_addr(T.sport), v = lo_addr(T.vport);
	int one = 1, fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(fd, (struct sockaddr *)&v, sizeof(v)) == 0 &&
	    connect(fd, (struct sockaddr *)&sv, sizeof(sv)) == 0) {
		allowed_bad++;
		fprintf(stderr, "FAIL: connected from the victim's 4-tuple\n");
	} else {
		printf("  bind+connect from the victim's 4-tuple: %s\n",
		       strerror(errno));
	}
	close(fd);
	fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (connect(fd, (struct sockaddr *)&sv, sizeof(sv)))
		t_fail("connect to the server port: %s", strerror(errno));
	reg(s, 1, fd);
	keep[nkeep++] = fd; /* open until the answers: still ESTABLISHED */
}

/* A user and network namespace of our own, loopback up, and in it the
 * exact mirror of the victim's connection: local 127.0.0.1:sport, remote
 * 127.0.0.1:vport. Registered over the control socket opened outside. */
static bool forge_own_ns(int s)
{
	struct sockaddr_in sv = lo_addr(T.sport), v = lo_addr(T.vport);
	struct ifreq ifr = { .ifr_name = "lo" };
	int l, c, a, one = 1, k;

	if (unshare(CLONE_NEWUSER | CLONE_NEWNET)) {
		printf("  unshare(user, net) as nobody: %s: mirror not tried\n",
		       strerror(errno));
		return false;
	}
	k = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	ifr.ifr_flags = IFF_UP | IFF_RUNNING;
	if (k < 0 || ioctl(k, SIOCSIFFLAGS, &ifr))
		t_fail("lo up in the forger's netns: %s", strerror(errno));
	close(k);
	l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(l, (struct sockaddr *)&sv, sizeof(sv)) || listen(l, 1) ||
	    bind(c, (struct sockaddr *)&v, sizeof(v)) ||
	    connect(c, (struct sockaddr *)&sv, sizeof(sv)))
		t_fail("mirror in the forger's netns: %s", strerror(errno));
	a = accept4(l, NULL, NULL, SOCK_CLOEXEC);
	if (a < 0)
		t_fail("accept in the forger's netns: %s", strerror(errno));
	reg(s, 2, a);
	keep[nkeep++] = a;
	keep[nkeep++] = c;
	keep[nkeep++] = l;
	return true;
}

struct xreport {
	struct outcome o;
	int denied, bad;
};

/* The attacker; other_uid: nobody (everything asserted), else uid 4242
 * (the /proc part only, printed). */
static void attacker(bool other_uid, int up, int vdown)
{
	struct xreport r = { 0 };
	int s, tfd;

	become(other_uid ? UID_X : UID_E);
	try_paths(other_uid, &r.o);
	try_process(other_uid);
	if (other_uid) {
		s = ctl_connect();
		tfd = hello(s);
		try_table(tfd);
		close(tfd);
		try_admin(s);
		/* The victim's registration waits (3 s) meanwhile. */
		forge_same_ns(s);
		forge_own_ns(s);
		/* Past pending_timeout (3 s): both expire, no CHAN. */
		if (no_chan(s, 3500) < 1)
			t_fail("no answer to the forged registrations");
		put(vdown, "d", 1);
		while (nkeep)
			close(keep[--nkeep]);
		close(s);
	}
	r.denied = denied;
	r.bad = allowed_bad;
	fflush(stdout);
	put(up, &r, sizeof(r));
	_exit(0);
}

static void pipe2x(int p[2])
{
	if (pipe2(p, O_CLOEXEC))
		t_fail("pipe: %s", strerror(errno));
}

/* Fork fn's process; keep_fd and the pipes listed stay, the rest of the
 * parent's sockets close in the child (it must hold only what it is
 * given). */
static pid_t spawn(void (*fn)(int, int, int), int a, int b, int c)
{
	pid_t pid;

	fflush(stdout);
	pid = fork();
	if (pid < 0)
		t_fail("fork");
	if (pid == 0) {
		t_alarm(20);
		for (int fd = 3; fd < 64; fd++)
			if (fd != a && fd != b && fd != c)
				close(fd);
		fn(a, b, c);
		_exit(0);
	}
	return pid;
}

static void run_b(int fd, int x, int y) { (void)x; (void)y; end_b(fd); }
static void run_a(int fd, int up, int down) { end_a(fd, up, down); }
static void run_v(int fd, int up, int down) { victim(fd, up, down); }
static void run_x(int up, int vdown, int z) { (void)z; attacker(true, up, vdown); }
static void run_y(int up, int x, int z) { (void)x; (void)z; attacker(false, up, -1); }

static void plain_echo(int fd)
{
	char buf[CHUNK];

	for (int got = 0; got < CHUNK;) {
		ssize_t n = recv(fd, buf + got, CHUNK - got, 0);

		if (n <= 0)
			t_fail("server: recv %zd", n);
		got += (int)n;
	}
	if (send(fd, buf, CHUNK, MSG_NOSIGNAL) != CHUNK)
		t_fail("server: send");
}

int main(void)
{
	int lfd, cfd, afd, vl, vc, va, up[2], down[2], vup[2], vdown[2],
	    xup[2], yup[2], st;
	pid_t pa, pb, pv, px, py;
	struct xreport rx, ry;
	uint64_t moved;
	char c;

	if (geteuid() != 0)
		t_skip("needs root (to run processes as other uids)");
	signal(SIGPIPE, SIG_IGN);
	t_alarm(20);
	t_daemon_start("pending_timeout 3s\n");
	/* mkdtemp made it 0700: let the other uids reach the socket. */
	if (chmod(t_dir, 0755))
		t_fail("chmod %s", t_dir);

	/* The pair, attached, streaming. */
	t_tcp_pair(false, &lfd, &cfd, &afd);
	pipe2x(up);
	pipe2x(down);
	pb = spawn(run_b, afd, -1, -1);
	pa = spawn(run_a, cfd, up[1], down[0]);
	close(afd);
	close(cfd);
	close(lfd);
	get(up[0], &c, 1, 10000);

	/* The victim: its other end (us) never registers. */
	t_tcp_pair(false, &vl, &vc, &va);
	{
		struct sockaddr_in a;
		socklen_t len = sizeof(a);

		getsockname(vc, (struct sockaddr *)&a, &len);
		T.vport = ntohs(a.sin_port);
		getsockname(vl, (struct sockaddr *)&a, &len);
		T.sport = ntohs(a.sin_port);
	}
	pipe2x(vup);
	pipe2x(vdown);
	pv = spawn(run_v, vc, vup[1], vdown[0]);
	close(vc);
	get(vup[0], &c, 1, 5000);

	T.pid[0] = pa;
	T.pid[1] = pb;
	T.pid[2] = t_dpid;
	T.sock_fd = -1;
	T_ASSERT_EQ(find_targets(pa, true), 1);
	T_ASSERT_EQ(find_targets(pb, false), 1);
	find_targets(t_dpid, false);
	T_ASSERT(T.sock_fd >= 0 && T.region_addr);
	printf("targets: %d paths in a (pid %d), b (pid %d), ivmcd (pid %d)\n",
	       T.npath, (int)pa, (int)pb, (int)t_dpid);

	pipe2x(xup);
	px = spawn(run_x, xup[1], vdown[1], -1);
	get(xup[0], &rx, sizeof(rx), 15000);
	T_ASSERT_EQ(t_wait(px, 5000), 0);
	printf("nobody: %d attempts denied, %d not denied; opened %d of %d "
	       "/proc paths\n", rx.denied, rx.bad, rx.o.opened, rx.o.tried);

	/* The victim never attached; its bytes went on TCP. */
	plain_echo(va);
	get(vup[0], &st, sizeof(st), 10000);
	printf("victim: state %d (%s)\n", st, t_strerror(st));
	T_ASSERT_EQ(t_wait(pv, 5000), 0);
	if (st == 1)
		t_fail("the victim attached to a forged registration");

	pipe2x(yup);
	py = spawn(run_y, yup[1], -1, -1);
	get(yup[0], &ry, sizeof(ry), 10000);
	T_ASSERT_EQ(t_wait(py, 5000), 0);
	printf("same uid (4242), not an endpoint: opened %d of %d /proc paths "
	       "(%d of them memfds, sockets or mem), "
	       "map_files opened %d\n", ry.o.opened, ry.o.tried,
	       ry.o.must_opened, ry.o.maps_opened);

	/* The pair went on all along, on the ring. */
	put(down[1], "q", 1);
	get(up[0], &moved, sizeof(moved), 10000);
	T_ASSERT_EQ(t_wait(pa, 5000), 0);
	T_ASSERT_EQ(t_wait(pb, 5000), 0);
	printf("pair: %llu bytes each way verified, attached throughout\n",
	       (unsigned long long)moved);

	t_daemon_stop(t_dpid);
	if (rx.bad || ry.bad || rx.o.opened || ry.o.maps_opened)
		t_fail("access that must be refused was not (%d, %d, %d, %d)",
		       rx.bad, ry.bad, rx.o.opened, ry.o.maps_opened);
	return T_PASS;
}
