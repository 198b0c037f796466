/* SPDX-License-Identifier: MIT */
/*
 * Description: ivmcd's policy, end to end, with config files and reloads:
 * (a) uids: ends run as uid 65534 / 65533 in forked children (their
 *     control connection is made after setuid, so the daemon sees them
 *     as such); the default same-uid policy (root may talk to anyone)
 *     and `default deny`, `allow any`, `deny uid=` rules;
 * (b) deny by port;
 * (c) quotas: `quota channels 2` refuses a third concurrent pair of the
 *     domain (-EDQUOT, TCP works) until one closes; `quota memory` alike;
 * (d) ring_size, a rule's ring= and the caller's wish give the channel's
 *     ring size (ivmc_stats);
 * (e) ivmcctl reload and SIGHUP install a new config (ivmcctl policy
 *     shows it); a config with an error on line 3 is refused with "line 3"
 *     and the old policy stays; only root may reload or evacuate;
 * (f) an end whose other end never registers expires (pending_timeout,
 *     -ETIMEDOUT) and status shows nothing pending; a registration made
 *     after a reload that shortened pending_timeout expires on the new
 *     timeout even while an older one waits on the old;
 *     Ends that sock_diag cannot see (SO_BINDTODEVICE) never attach, but
 *     neither end may wait for ever;
 * (g) ivmcctl evacuate --uid 0 moves attached channels back to TCP, the
 *     stream stays correct; evacuating the uid of one end only (root <->
 *     nobody) moves both directions back.
 * Every stream is verified, whatever the state. Known ivmcd bugs are
 * reported with t_late_fail() so that the cases after them still run.
 */
#include <grp.h>
#include <poll.h>
#include <spawn.h>

#include "t_ctl.h"

#define CHUNK	 1000
#define NOBODY	 65534
#define NOBODY2	 65533
#define REGION64 (4096 + 2 * 65536) /* chan_region_size(64K, 0) */
#define REGION64G (4096 + 2 * (65536 + 262144)) /* with 256K to grow into */

static char conf_path[PATH_MAX];

static void daemon_kill_at_exit(void)
{
	if (t_dpid > 0 && getpid() == t_dir_owner)
		kill(t_dpid, SIGKILL);
}

/* ---- ivmcctl and the config -------------------------------------------- */

/* Run ivmcctl (as uid, if not 0) with args (words split at spaces);
 * returns its exit status, its stdout and stderr in out. */
static int ctl_as(uid_t uid, const char *args, char *out, size_t len)
{
	char bin[PATH_MAX], words[512], *argv[16], *save = NULL;
	size_t n = 0;
	int p[2], st, argc = 0;
	pid_t pid;

	t_bin(bin, sizeof(bin), "ivmcctl");
	snprintf(words, sizeof(words), "-t 5000 %s", args);
	argv[argc++] = (char *)"ivmcctl";
	for (char *w = strtok_r(words, " ", &save); w && argc < 15;
	     w = strtok_r(NULL, " ", &save))
		argv[argc++] = w;
	argv[argc] = NULL;
	if (pipe2(p, O_CLOEXEC))
		t_fail("pipe: %s", strerror(errno));
	fflush(stdout);
	fflush(stderr);
	if (!uid) {
		/* posix_spawn, not fork(): a fork cancels this process's
		 * waiting ivmc_tcp() handles (the library's atfork). */
		posix_spawn_file_actions_t fa;

		posix_spawn_file_actions_init(&fa);
		posix_spawn_file_actions_adddup2(&fa, p[1], 1);
		posix_spawn_file_actions_adddup2(&fa, p[1], 2);
		errno = posix_spawn(&pid, bin, &fa, NULL, argv, environ);
		posix_spawn_file_actions_destroy(&fa);
		if (errno)
			t_fail("posix_spawn %s: %s", bin, strerror(errno));
	} else {
		/* Only where no handle waits (the atfork would cancel it). */
		pid = fork();
		if (pid < 0)
			t_fail("fork: %s", strerror(errno));
		if (pid == 0) {
			if (dup2(p[1], 1) < 0 || dup2(p[1], 2) < 0 ||
			    setgroups(0, NULL) || setgid(uid) || setuid(uid))
				_exit(126);
			execv(bin, argv);
			_exit(127);
		}
	}
	close(p[1]);
	while (n + 1 < len) {
		ssize_t k = read(p[0], out + n, len - 1 - n);

		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0)
			break;
		n += (size_t)k;
	}
	out[n] = 0;
	close(p[0]);
	while (waitpid(pid, &st, 0) < 0)
		if (errno != EINTR)
			t_fail("waitpid: %s", strerror(errno));
	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static int ctl(const char *args, char *out, size_t len)
{
	return ctl_as(0, args, out, len);
}

static void conf_write(const char *text)
{
	FILE *f = fopen(conf_path, "w");

	if (!f || fputs(text, f) < 0 || fclose(f))
		t_fail("write %s", conf_path);
}

/* Write text and have the daemon load it (ivmcctl reload). */
static void policy_set(const char *text)
{
	char out[4096];

	conf_write(text);
	if (ctl("reload", out, sizeof(out)))
		t_fail("ivmcctl reload: %s", out);
}

/* A number from ivmcctl --json status: the first "key":N. */
static long long status_num(const char *key)
{
	static char out[1 << 16];
	char want[64];
	const char *p;

	if (ctl("--json status", out, sizeof(out)))
		t_fail("ivmcctl status: %s", out);
	snprintf(want, sizeof(want), "\"%s\":", key);
	p = strstr(out, want);
	if (!p)
		t_fail("no %s in status: %s", key, out);
	return atoll(p + strlen(want));
}

/* Poll status until key shows want (the daemon handles our registrations
 * and ivmcctl's query in whatever order epoll gives them); returns the
 * last value seen. */
static long long status_wait(const char *key, long long want)
{
	long long v = status_num(key);

	for (int i = 0; i < 200 && v != want; i++) {
		usleep(10000);
		v = status_num(key);
	}
	return v;
}

/* ---- streams ------------------------------------------------------------ */

/* Each end sends a chunk of its stream, then reads one of the other's:
 * symmetrical, so the two ends may be two processes. */
static void rounds(struct ivmc_chan *h, uint64_t tx, uint64_t rx, uint64_t *off,
		   int n)
{
	char buf[CHUNK], got[CHUNK];

	for (int i = 0; i < n; i++) {
		t_fill(tx, *off, buf, CHUNK);
		t_send_all(h, buf, CHUNK);
		t_recv_all(h, got, CHUNK);
		if (t_verify(rx, *off, got, CHUNK))
			t_fail("stream %llu corrupt at %llu", (unsigned long long)rx,
			       (unsigned long long)*off);
		*off += CHUNK;
	}
}

struct pair {
	int lfd, cfd, afd;
	struct ivmc_chan *a, *b;
	uint64_t off;
};

static void exchange(struct pair *p, int n)
{
	char buf[CHUNK], got[CHUNK];

	for (int i = 0; i < n; i++) {
		t_fill(1, p->off, buf, CHUNK);
		t_send_all(p->a, buf, CHUNK);
		t_fill(2, p->off, buf, CHUNK);
		t_send_all(p->b, buf, CHUNK);
		t_recv_all(p->b, got, CHUNK);
		if (t_verify(1, p->off, got, CHUNK))
			t_fail("a->b corrupt at %llu", (unsigned long long)p->off);
		t_recv_all(p->a, got, CHUNK);
		if (t_verify(2, p->off, got, CHUNK))
			t_fail("b->a corrupt at %llu", (unsigned long long)p->off);
		p->off += CHUNK;
	}
}

/* Listen on 127.0.0.1 (any port); returns the port. */
static uint16_t listen_any(int *lfd)
{
	struct sockaddr_in sa = { .sin_family = AF_INET,
				  .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t len = sizeof(sa);

	*lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (*lfd < 0 || bind(*lfd, (struct sockaddr *)&sa, len) ||
	    listen(*lfd, 16) || getsockname(*lfd, (struct sockaddr *)&sa, &len))
		t_fail("listen: %s", strerror(errno));
	return ntohs(sa.sin_port);
}

/* Connect to lfd's port: *cfd, *afd the two ends. */
static void connect_to(int lfd, int *cfd, int *afd)
{
	struct sockaddr_in sa;
	socklen_t len = sizeof(sa);
	int one = 1;

	T_ASSERT(getsockname(lfd, (struct sockaddr *)&sa, &len) == 0);
	*cfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (*cfd < 0 || connect(*cfd, (struct sockaddr *)&sa, len))
		t_fail("connect: %s", strerror(errno));
	*afd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
	T_ASSERT(*afd >= 0);
	setsockopt(*cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	setsockopt(*afd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

/* Both ends in this process, on a connection to lfd (-1: a new
 * listener); ring: each end's wish (0: none). Returns the settled state,
 * which both ends agree on. */
static int pair_open_on(struct pair *p, int lfd, uint32_t ring)
{
	struct ivmc_opts o = { .ring_size = ring };
	int s;

	memset(p, 0, sizeof(*p));
	p->lfd = -1;
	if (lfd < 0)
		listen_any(&p->lfd);
	connect_to(lfd < 0 ? p->lfd : lfd, &p->cfd, &p->afd);
	T_ASSERT_OK(ivmc_tcp(p->cfd, &o, &p->a));
	T_ASSERT_OK(ivmc_tcp(p->afd, &o, &p->b));
	exchange(p, 5);
	s = t_tcp_settle(p->a, p->b, 5000);
	T_ASSERT_EQ(ivmc_tcp_state(p->b), s);
	exchange(p, 20);
	return s;
}

static int pair_open(struct pair *p)
{
	return pair_open_on(p, -1, 0);
}

static void pair_close(struct pair *p)
{
	T_ASSERT_OK(ivmc_close(p->a));
	T_ASSERT_OK(ivmc_close(p->b));
	close(p->cfd);
	close(p->afd);
	if (p->lfd >= 0)
		close(p->lfd);
}

static struct ivmc_stats stats(struct ivmc_chan *h)
{
	struct ivmc_stats st;

	T_ASSERT_OK(ivmc_stats(h, &st));
	return st;
}

/* ---- ends in other processes, as other uids ------------------------ */

struct end_res {
	int state, on_ring;
	unsigned int ring_size;
};

struct end {
	int fd;
	uid_t uid;	 /* 0: stays root */
	uint64_t tx, rx; /* stream seeds */
	int res;	 /* write end of a pipe for the result */
	int ready, go;	 /* -1, or: once attached, write a byte to ready,
			  * wait for one on go, talk on (an evacuate) */
	int bar_out, bar_in; /* -1, or: after the stats, a byte to the other
			      * end and one from it before closing (a
			      * handle closing moves its peer's sending off
			      * the ring: that is not what is measured) */
};

/* One end of a connection: become uid, wrap fd, talk, report. */
static void end_run(void *arg)
{
	const struct end *e = arg;
	struct end_res r = { 0 };
	struct ivmc_chan *h;
	struct ivmc_stats st;
	uint64_t off = 0;

	if (e->uid && (setgroups(0, NULL) || setgid(e->uid) || setuid(e->uid)))
		t_fail("setuid(%u): %s", (unsigned int)e->uid, strerror(errno));
	T_ASSERT_OK(ivmc_tcp(e->fd, NULL, &h));
	rounds(h, e->tx, e->rx, &off, 10);
	for (int i = 0; i < 5000 && !r.state; i++) {
		r.state = ivmc_tcp_state(h);
		if (!r.state)
			usleep(1000);
	}
	rounds(h, e->tx, e->rx, &off, 50);
	if (e->ready >= 0) {
		char c = 0;

		T_ASSERT(write(e->ready, &c, 1) == 1);
		T_ASSERT(read(e->go, &c, 1) == 1);
		/* Both ends do the same rounds: lockstep. */
		for (int i = 0; i < 100; i++) {
			rounds(h, e->tx, e->rx, &off, 1);
			usleep(2000);
		}
	}
	st = stats(h);
	r.on_ring = (int)st.on_ring;
	r.ring_size = st.ring_size;
	T_ASSERT_EQ(st.bytes_sent, off);
	T_ASSERT_EQ(st.bytes_received, off);
	if (e->bar_out >= 0) {
		char c = 0;

		T_ASSERT(write(e->bar_out, &c, 1) == 1);
		T_ASSERT(read(e->bar_in, &c, 1) == 1);
	}
	T_ASSERT_OK(ivmc_close(h));
	T_ASSERT(write(e->res, &r, sizeof(r)) == sizeof(r));
}

/* A connection whose ends run as uid_a and uid_b, each in its own child.
 * Fills ra, rb. */
static void cross(uid_t uid_a, uid_t uid_b, struct end_res *ra,
		  struct end_res *rb)
{
	struct end ea, eb;
	int lfd, cfd, afd, pa[2], pb[2], ab[2], ba[2];
	pid_t ka, kb;

	listen_any(&lfd);
	connect_to(lfd, &cfd, &afd);
	T_ASSERT(pipe2(pa, O_CLOEXEC) == 0 && pipe2(pb, O_CLOEXEC) == 0 &&
		 pipe2(ab, O_CLOEXEC) == 0 && pipe2(ba, O_CLOEXEC) == 0);
	ea = (struct end){ cfd, uid_a, 1, 2, pa[1], -1, -1, ab[1], ba[0] };
	eb = (struct end){ afd, uid_b, 2, 1, pb[1], -1, -1, ba[1], ab[0] };
	ka = t_fork(end_run, &ea);
	kb = t_fork(end_run, &eb);
	close(pa[1]);
	close(pb[1]);
	for (int i = 0; i < 2; i++) {
		close(ab[i]);
		close(ba[i]);
	}
	if (t_wait(ka, 30000) || t_wait(kb, 30000))
		t_fail("an end (uid %u / %u) failed", (unsigned int)uid_a,
		       (unsigned int)uid_b);
	T_ASSERT(read(pa[0], ra, sizeof(*ra)) == sizeof(*ra));
	T_ASSERT(read(pb[0], rb, sizeof(*rb)) == sizeof(*rb));
	printf("uid %u <-> uid %u: states %d %d\n", (unsigned int)uid_a,
	       (unsigned int)uid_b, ra->state, rb->state);
	close(pa[0]);
	close(pb[0]);
	close(cfd);
	close(afd);
	close(lfd);
}

static void cross_expect(uid_t ua, uid_t ub, int state)
{
	struct end_res ra, rb;

	cross(ua, ub, &ra, &rb);
	T_ASSERT_EQ(ra.state, state);
	T_ASSERT_EQ(rb.state, state);
	T_ASSERT_EQ(ra.on_ring, state == 1 ? 3 : 0);
	T_ASSERT_EQ(rb.on_ring, state == 1 ? 3 : 0);
}

/* ---- the cases ----------------------------------------------------------- */

static void case_uid(void)
{
	/* Default same-uid: root may talk to anyone, others to their own. */
	policy_set("# default\n");
	cross_expect(0, NOBODY, 1);
	cross_expect(NOBODY, NOBODY, 1);
	cross_expect(NOBODY, NOBODY2, -EACCES);
	policy_set("default same-uid\n");
	cross_expect(NOBODY, NOBODY2, -EACCES);
	policy_set("default deny\n");
	cross_expect(0, NOBODY, -EACCES);
	cross_expect(0, 0, -EACCES);
	policy_set("default deny\nallow any\n");
	cross_expect(0, NOBODY, 1);
	cross_expect(NOBODY, NOBODY2, 1);
	/* A rule's selectors must match both ends: deny uid=65534 denies
	 * nobody <-> nobody, not root <-> nobody. */
	policy_set("default allow\ndeny uid=65534\n");
	cross_expect(NOBODY, NOBODY, -EACCES);
	cross_expect(0, NOBODY, 1);
	policy_set("default allow\ndeny uid=0,65534\n");
	cross_expect(0, NOBODY, -EACCES);
	/* First match wins. */
	policy_set("default deny\nallow uid=65533,65534\ndeny any\n");
	cross_expect(NOBODY, NOBODY2, 1);
	cross_expect(0, NOBODY, -EACCES);
	T_ASSERT(status_num("denied") > 0);
}

static void case_port(void)
{
	struct pair p;
	int l1, l2;
	uint16_t p1 = listen_any(&l1), p2 = listen_any(&l2);
	char text[256];

	snprintf(text, sizeof(text), "default allow\ndeny port=%u\n", p1);
	policy_set(text);
	T_ASSERT_EQ(pair_open_on(&p, l1, 0), -EACCES);
	T_ASSERT_EQ(stats(p.a).on_ring, 0);
	pair_close(&p);
	T_ASSERT_EQ(pair_open_on(&p, l2, 0), 1);
	pair_close(&p);
	/* A range, and the other way round: only that port is allowed. */
	snprintf(text, sizeof(text), "default deny\nallow port=%u-%u\n", p2, p2);
	policy_set(text);
	T_ASSERT_EQ(pair_open_on(&p, l1, 0), -EACCES);
	pair_close(&p);
	T_ASSERT_EQ(pair_open_on(&p, l2, 0), 1);
	exchange(&p, 50);
	T_ASSERT_EQ(stats(p.a).on_ring, 3);
	pair_close(&p);
	close(l1);
	close(l2);
}

static void case_quota(void)
{
	struct pair p[4];
	char text[256];
	long long region;

	policy_set("default allow\nquota channels 2\n");
	T_ASSERT_EQ(pair_open(&p[0]), 1);
	T_ASSERT_EQ(pair_open(&p[1]), 1);
	T_ASSERT_EQ(pair_open(&p[2]), -EDQUOT);
	exchange(&p[2], 50);
	T_ASSERT_EQ(stats(p[2].a).on_ring, 0);
	T_ASSERT(status_num("quota") >= 1);
	/* Closing one gives its channel back. */
	pair_close(&p[0]);
	T_ASSERT_EQ(pair_open(&p[3]), 1);
	exchange(&p[1], 20);
	exchange(&p[3], 20);
	pair_close(&p[1]);
	pair_close(&p[2]);
	pair_close(&p[3]);

	/* Memory: a ring's large area counts. */
	policy_set("default allow\nring_size 64K\nring_grow 256K\n");
	T_ASSERT_EQ(pair_open(&p[0]), 1);
	T_ASSERT_EQ(status_num("shm_bytes"), REGION64G);
	exchange(&p[0], 20);
	pair_close(&p[0]);
	/* 64K rings that do not grow; room for two regions and a half. */
	policy_set("default allow\nring_size 64K\nring_grow 0\n");
	T_ASSERT_EQ(pair_open(&p[0]), 1);
	region = status_num("shm_bytes");
	printf("a 64K channel's region: %lld bytes\n", region);
	T_ASSERT_EQ(region, REGION64);
	pair_close(&p[0]);
	snprintf(text, sizeof(text),
		 "default allow\nring_size 64K\nring_grow 0\nquota memory %lldK\n",
		 (region * 5 / 2) / 1024);
	policy_set(text);
	T_ASSERT_EQ(pair_open(&p[0]), 1);
	T_ASSERT_EQ(pair_open(&p[1]), 1);
	T_ASSERT_EQ(pair_open(&p[2]), -EDQUOT);
	exchange(&p[2], 20);
	pair_close(&p[1]);
	T_ASSERT_EQ(pair_open(&p[3]), 1);
	/* A smaller wish fits where the policy's size does not. */
	{
		struct pair q;

		T_ASSERT_EQ(pair_open_on(&q, -1, 16384), 1);
		T_ASSERT_EQ(stats(q.a).ring_size, 16384);
		pair_close(&q);
	}
	pair_close(&p[0]);
	pair_close(&p[2]);
	pair_close(&p[3]);
}

static void case_ring(void)
{
	struct pair p;
	int l1, l2;
	uint16_t p1 = listen_any(&l1);
	char text[256];

	listen_any(&l2);
	snprintf(text, sizeof(text), "ring_size 64K\ndefault allow\nallow port=%u ring=1M\n",
		 p1);
	policy_set(text);
	T_ASSERT_EQ(pair_open_on(&p, l2, 0), 1);
	T_ASSERT_EQ(stats(p.a).ring_size, 65536);
	T_ASSERT_EQ(stats(p.b).ring_size, 65536);
	pair_close(&p);
	T_ASSERT_EQ(pair_open_on(&p, l1, 0), 1);
	T_ASSERT_EQ(stats(p.a).ring_size, 1u << 20);
	T_ASSERT_EQ(stats(p.b).ring_size, 1u << 20);
	exchange(&p, 100);
	pair_close(&p);
	/* The caller's wish, capped by the policy. */
	T_ASSERT_EQ(pair_open_on(&p, l2, 16384), 1);
	T_ASSERT_EQ(stats(p.a).ring_size, 16384);
	pair_close(&p);
	T_ASSERT_EQ(pair_open_on(&p, l2, 1u << 20), 1);
	T_ASSERT_EQ(stats(p.a).ring_size, 65536);
	pair_close(&p);
	T_ASSERT_EQ(pair_open_on(&p, l1, 32768), 1);
	T_ASSERT_EQ(stats(p.a).ring_size, 32768);
	pair_close(&p);
	close(l1);
	close(l2);
}

static void case_reload(pid_t d)
{
	char out[8192];
	int rc;

	policy_set("default allow\nquota channels 7\n");
	T_ASSERT_EQ(ctl("policy", out, sizeof(out)), 0);
	T_ASSERT(strstr(out, "quota channels 7"));
	/* SIGHUP */
	conf_write("default allow\nquota channels 9\n");
	T_ASSERT(kill(d, SIGHUP) == 0);
	for (int i = 0; i < 500; i++) {
		T_ASSERT_EQ(ctl("policy", out, sizeof(out)), 0);
		if (strstr(out, "quota channels 9"))
			break;
		usleep(10000);
	}
	T_ASSERT(strstr(out, "quota channels 9"));
	/* An error on line 3: refused, the old policy stays. */
	conf_write("default allow\nquota channels 11\nring_size 3K\n");
	rc = ctl("reload", out, sizeof(out));
	printf("bad config: ivmcctl reload exits %d: %s", rc, out);
	T_ASSERT(rc != 0);
	T_ASSERT(strstr(out, "line 3"));
	T_ASSERT_EQ(ctl("policy", out, sizeof(out)), 0);
	T_ASSERT(strstr(out, "quota channels 9"));
	T_ASSERT(!strstr(out, "quota channels 11"));
	conf_write("default allow\nquota channels 11\nbogus\n");
	T_ASSERT(ctl("reload", out, sizeof(out)) != 0 && strstr(out, "line 3"));
	/* The same by SIGHUP: logged, the old policy stays. */
	T_ASSERT(kill(d, SIGHUP) == 0);
	{
		char path[PATH_MAX], line[512];
		bool seen = false;

		t_path(path, sizeof(path), "ivmcd.log");
		for (int i = 0; i < 500 && !seen; i++) {
			FILE *f = fopen(path, "re");
			int n = 0;

			/* Two "line 3" errors so far: the two reloads. */
			while (f && fgets(line, sizeof(line), f))
				n += strstr(line, "line 3") &&
				     strstr(line, "policy unchanged");
			if (f)
				fclose(f);
			seen = n >= 3;
			if (!seen)
				usleep(10000);
		}
		T_ASSERT(seen);
	}
	T_ASSERT_EQ(ctl("policy", out, sizeof(out)), 0);
	T_ASSERT(strstr(out, "quota channels 9"));
	/* Only root (or the daemon's uid) may reload or evacuate; anyone may
	 * look. */
	conf_write("default allow\nquota channels 13\n");
	rc = ctl_as(NOBODY, "reload", out, sizeof(out));
	printf("reload as uid %u: exits %d: %s", NOBODY, rc, out);
	T_ASSERT(rc != 0);
	rc = ctl_as(NOBODY, "evacuate --uid 0", out, sizeof(out));
	T_ASSERT(rc != 0);
	T_ASSERT_EQ(ctl_as(NOBODY, "status", out, sizeof(out)), 0);
	T_ASSERT_EQ(ctl("policy", out, sizeof(out)), 0);
	T_ASSERT(strstr(out, "quota channels 9"));
	policy_set("default allow\nquota channels 13\n");
	T_ASSERT_EQ(ctl("policy", out, sizeof(out)), 0);
	T_ASSERT(strstr(out, "quota channels 13"));
}

/* Wrap one end of a new connection; the other end never calls ivmc_tcp. */
struct lonely {
	int lfd, cfd, afd;
	struct ivmc_chan *h;
};

static void lonely_open(struct lonely *l)
{
	listen_any(&l->lfd);
	connect_to(l->lfd, &l->cfd, &l->afd);
	T_ASSERT_OK(ivmc_tcp(l->cfd, NULL, &l->h));
	T_ASSERT_EQ(ivmc_tcp_state(l->h), 0);
}

/* Milliseconds until h leaves pending (at most max). */
static int lonely_wait(struct lonely *l, int max, int *state)
{
	uint64_t t0 = t_now_ns(), end = t0 + (uint64_t)max * 1000000ull;

	*state = 0;
	for (int i = 0; i < 100000 && !*state && t_now_ns() < end; i++) {
		*state = ivmc_tcp_state(l->h);
		if (!*state)
			usleep(1000);
	}
	return (int)((t_now_ns() - t0) / 1000000);
}

static void lonely_close(struct lonely *l)
{
	char buf[CHUNK], got[CHUNK];

	/* TCP, correct. */
	t_fill(5, 0, buf, CHUNK);
	t_send_all(l->h, buf, CHUNK);
	T_ASSERT_EQ(recv(l->afd, got, CHUNK, MSG_WAITALL), CHUNK);
	T_ASSERT(!t_verify(5, 0, got, CHUNK));
	T_ASSERT_OK(ivmc_close(l->h));
	close(l->cfd);
	close(l->afd);
	close(l->lfd);
}

static void case_expire(void)
{
	struct lonely x, y;
	int st, ms;

	policy_set("default allow\npending_timeout 200ms\n");
	lonely_open(&x);
	T_ASSERT_EQ(status_wait("pending", 1), 1);
	ms = lonely_wait(&x, 5000, &st);
	printf("pending_timeout 200ms: state %d after %d ms\n", st, ms);
	T_ASSERT_EQ(st, -ETIMEDOUT);
	T_ASSERT_EQ(status_wait("pending", 0), 0);
	T_ASSERT(status_num("expired") >= 1);
	lonely_close(&x);

	/* x waits on a long timeout; then the timeout is shortened: y, made
	 * after the reload, must expire on the new one, not after x. */
	policy_set("default allow\npending_timeout 8s\n");
	lonely_open(&x);
	policy_set("default allow\npending_timeout 200ms\n");
	lonely_open(&y);
	T_ASSERT_EQ(status_wait("pending", 2), 2);
	ms = lonely_wait(&y, 4000, &st);
	printf("after a reload to 200ms, with an older registration on 8s: "
	       "state %d after %d ms\n", st, ms);
	if (st != -ETIMEDOUT)
		t_late_fail("registration made after pending_timeout was lowered "
			    "did not expire within 4 s (state %d): ivmcd's "
			    "pending FIFO is not ordered by deadline", st);
	lonely_close(&y);
	lonely_close(&x);
	T_ASSERT_EQ(status_wait("pending", 0), 0);
}

/* A connection whose connecting end is bound to lo (SO_BINDTODEVICE). */
static void connect_bound(struct lonely *x)
{
	struct sockaddr_in sa;
	socklen_t len = sizeof(sa);

	listen_any(&x->lfd);
	T_ASSERT(getsockname(x->lfd, (struct sockaddr *)&sa, &len) == 0);
	x->cfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	T_ASSERT(x->cfd >= 0);
	if (setsockopt(x->cfd, SOL_SOCKET, SO_BINDTODEVICE, "lo", 3))
		t_fail("SO_BINDTODEVICE: %s", strerror(errno));
	if (connect(x->cfd, (struct sockaddr *)&sa, len))
		t_fail("connect: %s", strerror(errno));
	x->afd = accept4(x->lfd, NULL, NULL, SOCK_CLOEXEC);
	T_ASSERT(x->afd >= 0);
}

/* Ends that sock_diag does not find (bound to a device: kfacts.h) never
 * attach, but neither may wait for ever: both must leave pending, in
 * whichever order they register. */
static void case_unseen(void)
{
	policy_set("default allow\npending_timeout 200ms\n");
	for (int order = 0; order < 2; order++) {
		struct lonely x;
		struct ivmc_chan *b;
		int st, sb = 0;

		connect_bound(&x);
		if (order) {
			T_ASSERT_OK(ivmc_tcp(x.cfd, NULL, &x.h));
			usleep(20000);
			T_ASSERT_OK(ivmc_tcp(x.afd, NULL, &b));
		} else {
			T_ASSERT_OK(ivmc_tcp(x.afd, NULL, &b));
			usleep(20000);
			T_ASSERT_OK(ivmc_tcp(x.cfd, NULL, &x.h));
		}
		(void)lonely_wait(&x, 3000, &st);
		for (int i = 0; i < 3000 && !sb; i++) {
			sb = ivmc_tcp_state(b);
			if (!sb)
				usleep(1000);
		}
		printf("device-bound end registered %s: states %d %d\n",
		       order ? "first" : "second", st, sb);
		T_ASSERT(st <= 0 && sb <= 0);
		if (!st || !sb)
			t_late_fail("device-bound end registered %s: the %s end "
				    "still pending after 3 s (the daemon dropped "
				    "its registration without NOCHAN)",
				    order ? "first" : "second",
				    st ? "other" : "device-bound");
		T_ASSERT_OK(ivmc_close(b));
		/* afd is now plain TCP for lonely_close()'s check. */
		lonely_close(&x);
	}
	T_ASSERT_EQ(status_wait("pending", 0), 0);
}

/* evacuate --uid of one end only: the daemon tells that end alone; its
 * process moves both directions back to TCP, the other end follows. */
static void case_evacuate_one(void)
{
	struct end ea, eb;
	struct end_res ra, rb;
	int lfd, cfd, afd, pa[2], pb[2], rdy[2], go[2];
	char out[4096], c;
	pid_t ka, kb;

	policy_set("default allow\n");
	listen_any(&lfd);
	connect_to(lfd, &cfd, &afd);
	T_ASSERT(pipe2(pa, O_CLOEXEC) == 0 && pipe2(pb, O_CLOEXEC) == 0 &&
		 pipe2(rdy, O_CLOEXEC) == 0 && pipe2(go, O_CLOEXEC) == 0);
	ea = (struct end){ cfd, 0, 1, 2, pa[1], rdy[1], go[0], -1, -1 };
	eb = (struct end){ afd, NOBODY, 2, 1, pb[1], rdy[1], go[0], -1, -1 };
	ka = t_fork(end_run, &ea);
	kb = t_fork(end_run, &eb);
	close(pa[1]);
	close(pb[1]);
	close(rdy[1]);
	close(go[0]);
	T_ASSERT(read(rdy[0], &c, 1) == 1 && read(rdy[0], &c, 1) == 1);
	T_ASSERT_EQ(ctl("evacuate --uid 65534", out, sizeof(out)), 0);
	printf("evacuate --uid 65534 (root <-> nobody): %s", out);
	T_ASSERT(strstr(out, "1 channel ends"));
	T_ASSERT(write(go[1], "gg", 2) == 2);
	if (t_wait(ka, 30000) || t_wait(kb, 30000))
		t_fail("an end failed");
	T_ASSERT(read(pa[0], &ra, sizeof(ra)) == sizeof(ra));
	T_ASSERT(read(pb[0], &rb, sizeof(rb)) == sizeof(rb));
	printf("after: root end state %d on_ring %d, nobody end state %d on_ring %d\n",
	       ra.state, ra.on_ring, rb.state, rb.on_ring);
	T_ASSERT_EQ(ra.state, 1);
	T_ASSERT_EQ(rb.state, 1);
	T_ASSERT_EQ(ra.on_ring, 0);
	T_ASSERT_EQ(rb.on_ring, 0);
	close(pa[0]);
	close(pb[0]);
	close(rdy[0]);
	close(go[1]);
	close(cfd);
	close(afd);
	close(lfd);
}

static void case_evacuate(void)
{
	struct pair p, q, r;
	struct lonely x;
	char out[4096];
	int on = 3;

	policy_set("default allow\n");
	T_ASSERT_EQ(pair_open(&p), 1);
	T_ASSERT_EQ(pair_open(&q), 1);
	exchange(&p, 50);
	T_ASSERT_EQ(stats(p.a).on_ring, 3);
	T_ASSERT_EQ(ctl("evacuate --uid 0", out, sizeof(out)), 0);
	printf("evacuate: %s", out);
	/* Both ends of p and q (UNREGs of channels closed just before may
	 * not have been read yet: those would count too). */
	T_ASSERT(atoi(out) >= 4 && strstr(out, "channel ends told to detach"));
	/* Nothing else happens in this process: the attached handles alone
	 * must take the daemon's word in. */
	for (int i = 0; i < 200 && on; i++) {
		exchange(&p, 5);
		exchange(&q, 5);
		on = (int)(stats(p.a).on_ring | stats(p.b).on_ring |
			   stats(q.a).on_ring | stats(q.b).on_ring);
		if (on)
			usleep(5000);
	}
	if (on) {
		t_late_fail("evacuate: attached handles still on the ring (%d) "
			    "after 1000 exchanges: nothing takes in DETACH while "
			    "every handle of the process is attached", on);
		/* Any ivmc_tcp() call pumps the control socket. */
		lonely_open(&x);
		for (int i = 0; i < 200 && on; i++) {
			exchange(&p, 5);
			exchange(&q, 5);
			on = (int)(stats(p.a).on_ring | stats(p.b).on_ring |
				   stats(q.a).on_ring | stats(q.b).on_ring);
		}
		printf("evacuate: after one more ivmc_tcp() call: on_ring %d\n", on);
		lonely_close(&x);
	}
	T_ASSERT_EQ(on, 0);
	printf("evacuate: states after %d %d\n", ivmc_tcp_state(p.a),
	       ivmc_tcp_state(p.b));
	exchange(&p, 100);
	exchange(&q, 100);
	T_ASSERT_EQ(stats(p.a).bytes_sent, p.off);
	T_ASSERT_EQ(stats(p.b).bytes_received, p.off);
	/* Half-close still ends the stream in order. */
	{
		char buf[CHUNK], got[CHUNK];

		t_fill(1, p.off, buf, CHUNK);
		t_send_all(p.a, buf, CHUNK);
		T_ASSERT_OK(ivmc_shutdown(p.a, SHUT_WR));
		t_recv_all(p.b, got, CHUNK);
		T_ASSERT(!t_verify(1, p.off, got, CHUNK));
		T_ASSERT_EQ(ivmc_recv(p.b, got, 1, 0), 0);
	}
	pair_close(&p);
	pair_close(&q);
	/* A new connection attaches again. */
	T_ASSERT_EQ(pair_open(&r), 1);
	T_ASSERT_EQ(ctl("evacuate --uid 12345", out, sizeof(out)), 0);
	T_ASSERT(strstr(out, "0 channel ends"));
	exchange(&r, 50);
	T_ASSERT_EQ(stats(r.a).on_ring, 3);
	pair_close(&r);
}

int main(void)
{
	pid_t d;
	int st;

	t_alarm(150);
	setenv("IVMC_CTL_BUDGET_US", "1000000", 0);
	d = t_daemon_start("# placeholder, replaced by each case\n");
	atexit(daemon_kill_at_exit);
	t_path(conf_path, sizeof(conf_path), "ivmcd.conf");
	/* Other uids must reach the socket (0666) in t_dir. */
	if (chmod(t_dir, 0711))
		t_fail("chmod %s: %s", t_dir, strerror(errno));

	case_reload(d);
	case_uid();
	case_port();
	case_quota();
	case_ring();
	case_expire();
	case_unseen();
	case_evacuate();
	case_evacuate_one();

	st = t_daemon_stop(d);
	t_dpid = 0;
	T_ASSERT(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	return t_late_failures ? T_FAIL : T_PASS;
}
