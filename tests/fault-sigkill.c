/* SPDX-License-Identifier: MIT */
/*
 * Description: fault injection (issue 5). In a bounded loop (50 runs; 200
 * with IVMC_LONG=1), two forked processes stream a verified t_fill()
 * pattern over one loopback TCP connection that both wrap with ivmc_tcp()
 * (A to B, or both ways at once; ring size, wait mode and non-blocking
 * calls with poll() drawn at random), and at a random moment one of end A,
 * end B or ivmcd gets SIGKILL. Then: nothing else crashed; every survivor
 * ended within a bound: its peer killed, its receiver read a verified
 * prefix then end of stream or -ECONNRESET and its sender finished or got
 * -EPIPE/-ECONNRESET; the daemon killed, both streams complete and
 * verified (attached channels do not need the daemon). Each survivor,
 * after ivmc_close(), maps no channel region and holds no doorbell or TCP
 * socket, only what the library keeps per process. A living ivmcd comes
 * back to no channel, registration, client or quota charge and to the fd
 * count it had; a killed one is restarted on the same socket. No file is
 * left in the daemon's directory or in /dev/shm.
 *
 * The seed is printed. IVMC_FAULT_SEED=S repeats a sequence of runs,
 * IVMC_FAULT_RUN_SEED=R one run (as printed with each), IVMC_FAULT_RUNS=N
 * sets the count; the moments of the kills depend on timing all the same.
 */
#include <poll.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <stdatomic.h>

#include "t_ctl.h"

#define XFER (16ull << 20) /* bytes per direction */
#define WARM (1ull << 20) /* ... in the warm-up after a daemon start */
#define MAX_IO (256u * 1024) /* largest single send or receive */
#define EARLY_US 3000 /* a quarter of the kills: in [0, this) */
#define SURVIVOR_MS 15000 /* a survivor must end within this */
#define SETTLE_MS 3000 /* ivmcd must be clean again within this */

enum victim { V_A, V_B, V_DAEMON, V_MAX, V_NONE = V_MAX };
static const char *const victim_name[V_MAX + 1] = { "end A", "end B", "ivmcd",
						    "nobody" };

/* What one end reports to the parent through a shared page. */
struct end {
	_Atomic uint64_t sent, rcvd; /* stream bytes so far */
	_Atomic int state; /* last ivmc_tcp_state() seen */
	_Atomic int done; /* 1 when every field below is final */
	uint64_t t_done; /* t_now_ns() when the streams ended */
	_Atomic uint64_t t_attach; /* ... when it first saw state 1 */
	int send_res; /* 0: all sent; else the send's -errno */
	int shut_res; /* all sent: ivmc_shutdown(SHUT_WR) */
	int recv_res; /* 0: end of stream; else -errno */
	int close_res; /* ivmc_close() */
	int leaks; /* what remained after ivmc_close() */
	char leak[384]; /* ... described */
};

struct shared {
	struct end e[2];
};

/* One end's job in a run. */
struct job {
	int idx, fd, other_fd, go, go_w;
	bool sends, recvs, wait_attach;
	bool nonblock; /* IVMC_NONBLOCK calls and poll() (one way only) */
	struct ivmc_opts opts; /* ring size wish, wait mode */
	uint64_t len; /* bytes each way */
	uint64_t seed; /* the stream this end sends; the peer's is seed ^ 1 */
	uint64_t rng; /* the receiver's; the sender's is rng + 1 */
};

static struct shared *sh;
static struct job jobs[2];
static int dmn_fds = -1; /* the living daemon's fd count when idle */

static void daemon_kill_at_exit(void)
{
	if (t_dpid > 0 && getpid() == t_dir_owner)
		kill(t_dpid, SIGKILL);
}

/* ---- the ends -------------------------------------------------------- */

struct sender {
	struct ivmc_chan *h;
	struct job *j;
	struct end *e;
	pthread_t t;
};

/* Publish the handle's state, and when it was first seen on the ring. */
static void note_state(struct end *e, struct ivmc_chan *h)
{
	int st = ivmc_tcp_state(h);

	if (st == 1 && !atomic_load(&e->t_attach))
		atomic_store(&e->t_attach, t_now_ns());
	atomic_store(&e->state, st);
}

/* Why a non-blocking end keeps being told -EAGAIN: what poll() said. */
static void spin_report(const struct job *j, struct ivmc_chan *h, bool tx,
			long n, uint64_t t0, const struct pollfd *pf)
{
	struct ivmc_stats st;

	ivmc_stats(h, &st);
	t_fail("end %c: %s: -EAGAIN %ld times in a row over %llu ms, poll() ready each time (ivmc_fd revents %#x, TCP fd revents %#x); state %d, on_ring %u, received %llu",
	       'A' + j->idx, tx ? "send" : "recv", n,
	       (unsigned long long)(t_now_ns() - t0) / 1000000, pf[0].revents,
	       pf[1].revents, ivmc_tcp_state(h), st.on_ring, st.bytes_received);
}

static unsigned int on_ring(const struct ivmc_chan *h)
{
	struct ivmc_stats st;

	return ivmc_stats(h, &st) ? 0 : st.on_ring;
}

/* One send or receive. A non-blocking end waits out -EAGAIN as
 * ivmc_tcp(3) says: poll() ivmc_fd() for POLLIN and the TCP fd for the
 * event wanted; something must wake it within 5 s, and it must not be told
 * -EAGAIN for ever while poll() says ready (a spin): 3 s at most. */
static ssize_t xfer(const struct job *j, struct ivmc_chan *h, bool tx,
		    void *buf, size_t n)
{
	unsigned int fl = j->nonblock ? IVMC_NONBLOCK : 0;
	struct pollfd pf[2] = { { -1, 0, 0 }, { -1, 0, 0 } };
	uint64_t t0 = 0;

	for (long eagain = 0;; eagain++) {
		ssize_t r = tx ? ivmc_send(h, buf, n, fl) :
				 ivmc_recv(h, buf, n, fl);
		int k;

		if (r != -EAGAIN || !j->nonblock) {
			if (eagain > 10000) /* a spin that ended: say so */
				printf("end %c: %s: -EAGAIN %ld times in a row over %llu ms, then %zd (last poll: revents %#x %#x)\n",
				       'A' + j->idx, tx ? "send" : "recv",
				       eagain,
				       (unsigned long long)(t_now_ns() - t0) /
					       1000000,
				       r, pf[0].revents, pf[1].revents);
			return r;
		}
		pf[0] = (struct pollfd){ ivmc_fd(h), POLLIN, 0 };
		pf[1] = (struct pollfd){ j->fd, tx ? POLLOUT : POLLIN, 0 };
		/* Not the TCP fd for POLLOUT while sends go to the ring: it
		 * stays writable, and the loop would spin while the ring is
		 * full (as the loop ivmc_tcp(3) describes does). */
		if (tx && on_ring(h) & 1)
			pf[1].fd = -1;
		if (!t0)
			t0 = t_now_ns();
		do
			k = poll(pf, 2, 5000);
		while (k < 0 && errno == EINTR);
		if (k == 0)
			t_fail("end %c: %s: -EAGAIN, then nothing woke poll() in 5 s",
			       'A' + j->idx, tx ? "send" : "recv");
		if (eagain % 1024 == 1023 && t_now_ns() - t0 > 3000000000ull)
			spin_report(j, h, tx, eagain, t0, pf);
	}
}

static void *send_main(void *arg)
{
	struct sender *s = arg;
	uint8_t *buf = malloc(MAX_IO);
	uint64_t off = 0, rng = s->j->rng + 1;
	ssize_t r = 0;

	T_ASSERT(buf);
	while (off < s->j->len) {
		size_t n = 1 + (size_t)(t_rand64(&rng) % MAX_IO);

		if (n > s->j->len - off)
			n = (size_t)(s->j->len - off);
		t_fill(s->j->seed, off, buf, n);
		r = xfer(s->j, s->h, true, buf, n);
		if (r <= 0)
			break;
		/* Short only when the peer went away; the next call says so. */
		off += (uint64_t)r;
		atomic_store(&s->e->sent, off);
		if (!s->j->recvs)
			note_state(s->e, s->h);
	}
	if (off == s->j->len)
		s->e->shut_res = ivmc_shutdown(s->h, SHUT_WR);
	else
		s->e->send_res = r < 0 ? (int)r : -EIO;
	free(buf);
	return NULL;
}

/* Receive the peer's stream to its end, verifying every byte. */
static void recv_all(struct ivmc_chan *h, struct job *j, struct end *e)
{
	uint8_t *buf = malloc(MAX_IO);
	uint64_t off = 0;
	ssize_t r;

	T_ASSERT(buf);
	for (unsigned long calls = 0;; calls++) {
		size_t n = 1 + (size_t)(t_rand64(&j->rng) % MAX_IO);

		r = xfer(j, h, false, buf, n);
		if (r <= 0)
			break;
		if (t_verify(j->seed ^ 1, off, buf, (size_t)r))
			t_fail("end %c: wrong bytes in [%llu, %llu) of the peer's stream",
			       'A' + j->idx, (unsigned long long)off,
			       (unsigned long long)(off + (uint64_t)r));
		off += (uint64_t)r;
		if (off > j->len)
			t_fail("end %c: %llu bytes, more than the %llu sent",
			       'A' + j->idx, (unsigned long long)off,
			       (unsigned long long)j->len);
		atomic_store(&e->rcvd, off);
		if (calls % 16 == 0)
			note_state(e, h);
	}
	e->recv_res = (int)r;
	free(buf);
}

static void leak_note(struct end *e, const char *fmt, const char *what)
{
	size_t k = strlen(e->leak);

	e->leaks++;
	snprintf(e->leak + k, sizeof(e->leak) - k, fmt, what);
}

/* After ivmc_close(): no TCP socket (ours is closed), no doorbell (an
 * AF_UNIX stream socket). What lives as long as the process is allowed
 * once: the daemon connection (seqpacket) and its mailbox memfd, the kick
 * eventfd, and this thread's epoll set for kicks (src/chan/wake.c). */
static void leak_fds(struct end *e)
{
	DIR *d = opendir("/proc/self/fd");
	struct dirent *de;
	int memfds = 0, ctl = 0, efd = 0, ep = 0;

	T_ASSERT(d);
	while ((de = readdir(d))) {
		int fd = atoi(de->d_name), dom = 0, type = 0;
		socklen_t len = sizeof(int);
		char p[64], l[160];
		ssize_t k;

		if (de->d_name[0] == '.' || fd == dirfd(d))
			continue;
		snprintf(p, sizeof(p), "/proc/self/fd/%d", fd);
		k = readlink(p, l, sizeof(l) - 64);
		l[k > 0 ? k : 0] = 0;
		if (!strncmp(l, "socket:", 7)) {
			getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &dom, &len);
			getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len);
			if (dom == AF_UNIX && type == SOCK_SEQPACKET && !ctl++)
				continue;
			snprintf(l + strlen(l), sizeof(l) - strlen(l),
				 " (domain %d, type %d)", dom, type);
			leak_note(e, "fd %s; ", l);
		} else if ((strstr(l, "[eventfd]") && efd++) || /* 2nd on */
			   (strstr(l, "[eventpoll]") && ep++) ||
			   (!strncmp(l, "/memfd:", 7) && memfds++)) {
			leak_note(e, "fd %s (one more); ", l);
		}
	}
	closedir(d);
}

/* Shared writable memfd mappings larger than the mailbox page are
 * channel regions; the daemon's table is mapped read-only. */
static void leak_maps(struct end *e)
{
	FILE *f = fopen("/proc/self/maps", "re");
	char line[512];

	T_ASSERT(f);
	while (fgets(line, sizeof(line), f)) {
		unsigned long lo, hi;
		char perms[8];

		if (!strstr(line, "memfd:") ||
		    sscanf(line, "%lx-%lx %7s", &lo, &hi, perms) != 3)
			continue;
		if (perms[1] == 'w' && hi - lo > 4096)
			leak_note(e, "mapping %.60s; ", line);
	}
	fclose(f);
}

/* Wait (bounded) until the daemon has paired this end. */
static void wait_attached(struct ivmc_chan *h, const struct job *j)
{
	int st = 0;

	for (int i = 0; i < 5000 && st == 0; i++) {
		st = ivmc_tcp_state(h);
		if (st == 0)
			usleep(1000);
	}
	if (st != 1)
		t_fail("end %c: not paired in 5 s: state %d (%s)", 'A' + j->idx,
		       st, t_strerror(st));
}

static void end_main(void *arg)
{
	struct job *j = arg;
	struct end *e = &sh->e[j->idx];
	struct sender s = { .j = j, .e = e };
	char c;

	t_alarm(60); /* last resort; the parent's bound is shorter */
	signal(SIGPIPE, SIG_IGN);
	close(j->other_fd); /* the peer's socket, inherited */
	close(j->go_w);
	/* Only once the parent has closed its copy of our socket (a socket
	 * held by two processes is neither's). */
	T_ASSERT_EQ(read(j->go, &c, 1), 1);
	close(j->go);
	T_ASSERT_OK(ivmc_tcp(j->fd, &j->opts, &s.h));
	if (j->wait_attach)
		wait_attached(s.h, j);
	if (j->sends)
		T_ASSERT_EQ(pthread_create(&s.t, NULL, send_main, &s), 0);
	if (j->recvs)
		recv_all(s.h, j, e);
	if (j->sends)
		T_ASSERT_EQ(pthread_join(s.t, NULL), 0);
	e->t_done = t_now_ns();
	note_state(e, s.h);
	e->close_res = ivmc_close(s.h);
	close(j->fd);
	leak_fds(e);
	leak_maps(e);
	atomic_store(&e->done, 1);
}

/* ---- the daemon ------------------------------------------------------ */

/* Start ivmcd again after a kill (t_daemon_restart()). */
static void daemon_restart(void)
{
	t_daemon_restart();
	dmn_fds = -1;
}

static void daemon_alive(const char *when)
{
	int st;

	if (waitpid(t_dpid, &st, WNOHANG) == t_dpid)
		t_fail("ivmcd died %s: %s %d (see %s)", when,
		       WIFSIGNALED(st) ? "signal" : "exit",
		       WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st), t_dlog);
}

/* The value of "key": N in ivmcctl --json status (the daemon object comes
 * first), or -1 if ivmcctl failed. */
static long status_num(const char *out, const char *key)
{
	char want[64];
	const char *p;

	snprintf(want, sizeof(want), "\"%s\":", key);
	p = strstr(out, want);
	return p ? strtol(p + strlen(want), NULL, 10) : -1;
}

/* Every domain's quota charge is back to nothing: "channels":0 and
 * "shm_bytes":0 in each entry of "domains" (or no entry). */
static bool domains_clean(const char *out)
{
	const char *p = strstr(out, "\"domains\":["), *end;

	if (!p || !(end = strchr(p, ']')))
		return false;
	for (const char *q = p; (q = strstr(q, "\"channels\":")) && q < end;
	     q++)
		if (strtol(q + strlen("\"channels\":"), NULL, 10))
			return false;
	for (const char *q = p; (q = strstr(q, "\"shm_bytes\":")) && q < end;
	     q++)
		if (strtoll(q + strlen("\"shm_bytes\":"), NULL, 10))
			return false;
	return true;
}

/* Once both ends are gone, ivmcd must drop their channel and
 * registrations and come back to the fds it had (bounded wait: it learns
 * of the deaths through its sockets). Returns the ms it took. */
static int daemon_clean(const char *what)
{
	static char out[1 << 16];
	uint64_t t0 = t_now_ns();
	long ch = -1, pend = -1, cl = -1;
	bool dom = false;
	int fds = -1;

	for (int i = 0; i < SETTLE_MS / 20; i++) {
		if (t_ivmcctl_run("--json status", out, sizeof(out)))
			t_fail("%s: ivmcctl status failed: %s", what, out);
		ch = status_num(out, "channels");
		pend = status_num(out, "pending");
		cl = status_num(out, "clients"); /* ivmcctl itself */
		fds = t_proc_fds(t_dpid);
		dom = domains_clean(out);
		if (ch == 0 && pend == 0 && cl <= 1 && dom &&
		    (dmn_fds < 0 || fds <= dmn_fds))
			break;
		usleep(20000);
	}
	if (ch != 0 || pend != 0 || cl > 1 || !dom)
		t_fail("%s: ivmcd still lists %ld channel(s), %ld pending, %ld client(s)%s %d ms after both ends are gone: %s",
		       what, ch, pend, cl, dom ? "" : ", quota still charged",
		       SETTLE_MS, out);
	if (dmn_fds >= 0 && fds > dmn_fds) {
		t_show_fds(t_dpid);
		t_fail("%s: ivmcd holds %d fds, %d before (see /proc/%d/fd)",
		       what, fds, dmn_fds, (int)t_dpid);
	}
	if (dmn_fds < 0)
		dmn_fds = fds;
	return (int)((t_now_ns() - t0) / 1000000);
}

/* The daemon's counters and domains, for the log. */
static void show_daemon(void)
{
	static char out[1 << 16];
	const char *d;

	T_ASSERT_EQ(t_ivmcctl_run("--json status", out, sizeof(out)), 0);
	d = strstr(out, "\"daemon\":");
	if (d)
		printf("ivmcd at the end: %.*s\n", (int)strcspn(d, "}") + 1, d);
	d = strstr(out, "\"domains\":");
	if (d)
		printf("ivmcd at the end: %.*s\n", (int)strcspn(d, "]") + 1, d);
}

/* ---- files ----------------------------------------------------------- */

/* Entries of dir (names joined by spaces into buf); their count. */
static int list_dir(const char *dir, char *buf, size_t len)
{
	DIR *d = opendir(dir);
	struct dirent *e;
	size_t k = 0;
	int n = 0;

	buf[0] = 0;
	if (!d)
		return -1;
	while ((e = readdir(d))) {
		if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
			continue;
		n++;
		if (k < len)
			k += (size_t)snprintf(buf + k, len - k, "%s ",
					      e->d_name);
	}
	closedir(d);
	return n;
}

/* ---- one run ---------------------------------------------------------- */

struct run {
	char what[192];
	enum victim v; /* V_NONE: no fault */
	bool both; /* both ways, else A to B only */
	bool wait_attach; /* the ends start once attached */
	bool nonblock; /* non-blocking calls and poll() */
	struct ivmc_opts opts;
	uint64_t len; /* bytes each way */
	uint32_t delay_us; /* from the start to the kill */
	pid_t pid[2];
	uint64_t t_go, t_kill;
	bool late; /* the victim had finished before its kill */
	bool attached; /* both ends on the ring at the kill */
	int xfer_ms, survivors_ms, settle_ms;
};

struct tally {
	int runs, kills[V_MAX], both_ways, attached, late;
	int survivors_max_ms, settle_max_ms;
};

/* What the survivors of a killed peer saw, for the summary. */
struct outcomes {
	int recv_eof, recv_reset, send_all, send_epipe, send_reset;
	int shut_ok, shut_notconn;
};

static struct outcomes seen;

/* A survivor's report against what its peer's fate allows. */
static void check_survivor(const struct run *r, int i, bool peer_killed)
{
	const struct end *e = &sh->e[i];
	const struct job *j = &jobs[i];
	char end = (char)('A' + i);

	if (!atomic_load(&e->done))
		t_fail("%s: end %c exited without finishing", r->what, end);
	if (e->leaks)
		t_fail("%s: end %c after ivmc_close(): %s", r->what, end,
		       e->leak);
	if (e->close_res && e->close_res != -ECONNABORTED)
		t_fail("%s: end %c: ivmc_close() = %d (%s)", r->what, end,
		       e->close_res, t_strerror(e->close_res));
	if (!peer_killed) {
		if (j->sends &&
		    (e->send_res || e->shut_res || e->sent != j->len))
			t_fail("%s: end %c sent %llu of %llu: %d (%s), shutdown %d (%s)",
			       r->what, end, (unsigned long long)e->sent,
			       (unsigned long long)j->len, e->send_res,
			       t_strerror(e->send_res), e->shut_res,
			       t_strerror(e->shut_res));
		if (j->recvs && (e->recv_res || e->rcvd != j->len))
			t_fail("%s: end %c received %llu of %llu, then %d (%s)",
			       r->what, end, (unsigned long long)e->rcvd,
			       (unsigned long long)j->len, e->recv_res,
			       t_strerror(e->recv_res));
		return;
	}
	if (j->sends) {
		if (e->send_res && e->send_res != -EPIPE &&
		    e->send_res != -ECONNRESET)
			t_fail("%s: end %c: send after %llu bytes ended with %d (%s), want -EPIPE or -ECONNRESET",
			       r->what, end, (unsigned long long)e->sent,
			       e->send_res, t_strerror(e->send_res));
		/* All sent, then shutdown(SHUT_WR) on a reset connection:
		 * -ENOTCONN, as shutdown(2) on the TCP socket says. */
		if (!e->send_res && e->shut_res && e->shut_res != -ENOTCONN &&
		    e->shut_res != -ECONNRESET)
			t_fail("%s: end %c: ivmc_shutdown(SHUT_WR) after all %llu bytes: %d (%s)",
			       r->what, end, (unsigned long long)e->sent,
			       e->shut_res, t_strerror(e->shut_res));
		seen.send_all += !e->send_res;
		seen.send_epipe += e->send_res == -EPIPE;
		seen.send_reset += e->send_res == -ECONNRESET;
		seen.shut_ok += !e->send_res && !e->shut_res;
		seen.shut_notconn += !e->send_res && e->shut_res == -ENOTCONN;
	}
	if (j->recvs) {
		if (e->recv_res && e->recv_res != -ECONNRESET)
			t_fail("%s: end %c: receive after %llu bytes ended with %d (%s), want 0 or -ECONNRESET",
			       r->what, end, (unsigned long long)e->rcvd,
			       e->recv_res, t_strerror(e->recv_res));
		seen.recv_eof += !e->recv_res;
		seen.recv_reset += e->recv_res == -ECONNRESET;
	}
}

/* Fork end i over fd[i]; it starts at a byte on the go pipe. End A sends
 * stream seed, end B stream seed ^ 1. */
static pid_t start_end(const struct run *r, int i, int fd[2], int go[2],
		       uint64_t seed)
{
	jobs[i] = (struct job){ .idx = i,
				.fd = fd[i],
				.other_fd = fd[1 - i],
				.go = go[0],
				.go_w = go[1],
				.sends = r->both || i == 0,
				.recvs = r->both || i == 1,
				.wait_attach = r->wait_attach,
				.nonblock = r->nonblock,
				.opts = r->opts,
				.len = r->len,
				.seed = seed ^ (uint64_t)i,
				.rng = seed + 7 * (uint64_t)i };
	return t_fork(end_main, &jobs[i]);
}

/* A loopback connection, one forked end on each side of it, started. */
static void run_start(struct run *r, uint64_t seed)
{
	int lfd, fd[2], go[2];

	memset(sh, 0, sizeof(*sh));
	t_tcp_pair(false, &lfd, &fd[0], &fd[1]);
	close(lfd);
	T_ASSERT_EQ(pipe2(go, O_CLOEXEC), 0);
	for (int i = 0; i < 2; i++)
		r->pid[i] = start_end(r, i, fd, go, seed);
	close(fd[0]);
	close(fd[1]);
	close(go[0]);
	r->t_go = t_now_ns();
	T_ASSERT_EQ(write(go[1], "gg", 2), 2);
	close(go[1]);
}

/* SIGKILL the victim delay_us after the start, unless it has finished. */
static void run_kill(struct run *r)
{
	pid_t vpid = r->v == V_DAEMON ? t_dpid : r->pid[r->v];
	int st;

	usleep(r->delay_us);
	r->attached = atomic_load(&sh->e[0].state) == 1 &&
		      atomic_load(&sh->e[1].state) == 1;
	if (r->v != V_DAEMON && waitpid(vpid, &st, WNOHANG) == vpid) {
		r->late = true;
		if (!WIFEXITED(st) || WEXITSTATUS(st))
			t_fail("%s: end %c failed before its kill (status %#x)",
			       r->what, 'A' + r->v, st);
		return;
	}
	if (r->v == V_DAEMON)
		daemon_alive("before its kill");
	T_ASSERT_EQ(kill(vpid, SIGKILL), 0);
	T_ASSERT_EQ(waitpid(vpid, &st, 0), vpid);
	r->t_kill = t_now_ns();
	if (r->v != V_DAEMON && WIFEXITED(st) && WEXITSTATUS(st) == 0) {
		r->late = true; /* it exited between the check and the kill */
		r->t_kill = 0;
		return;
	}
	if (!WIFSIGNALED(st) || WTERMSIG(st) != SIGKILL)
		t_fail("%s: the victim ended before its kill (status %#x)",
		       r->what, st);
	if (r->v == V_DAEMON)
		t_dpid = 0;
}

/* Wait (bounded) for the ends that were not killed; check each report. */
static void run_wait(struct run *r)
{
	uint64_t t_end = 0;

	for (int i = 0; i < 2; i++) {
		bool victim = (int)r->v == i;
		int rc;

		if (victim && !r->late)
			continue;
		if (!victim) {
			rc = t_wait(r->pid[i], SURVIVOR_MS);
			if (rc)
				t_fail("%s: survivor end %c %s (sent %llu, received %llu, state %d)",
				       r->what, 'A' + i,
				       rc < 0 ? "hung or crashed (see above)" :
						"failed (see above)",
				       (unsigned long long)sh->e[i].sent,
				       (unsigned long long)sh->e[i].rcvd,
				       sh->e[i].state);
		}
		check_survivor(r, i, (int)r->v == 1 - i && !r->late);
		if (sh->e[i].t_done > t_end)
			t_end = sh->e[i].t_done;
	}
	r->xfer_ms = (int)((t_end - r->t_go) / 1000000);
	if (r->t_kill)
		r->survivors_ms = t_end > r->t_kill ?
					  (int)((t_end - r->t_kill) / 1000000) :
					  0;
}

/* A clean run: both ends attach, then stream len bytes (each way if
 * both). After a daemon start it takes the daemon's fd count once it has
 * served a pair (its first client opens a namespace handle it keeps).
 * Returns how long the streams took, in us. */
static uint32_t clean_run(const char *why, uint64_t len, bool both)
{
	struct run r = {
		.v = V_NONE, .both = both, .wait_attach = true, .len = len
	};

	snprintf(r.what, sizeof(r.what), "%s (clean, %llu MiB %s)", why,
		 (unsigned long long)(len >> 20), both ? "each way" : "A to B");
	run_start(&r, t_now_ns());
	run_wait(&r);
	for (int i = 0; i < 2; i++)
		if (sh->e[i].state != 1)
			t_fail("%s: end %c not on the ring at the end: state %d",
			       r.what, 'A' + i, sh->e[i].state);
	daemon_alive("after a clean run");
	daemon_clean(r.what);
	return (uint32_t)r.xfer_ms * 1000 + 1;
}

/* "A sent .. rcvd .., B ..." and when the ends attached. */
static void run_summary(const struct run *r, char *buf, size_t len)
{
	uint64_t at = 0;
	int k;

	k = snprintf(buf, len, "A sent %llu rcvd %llu, B sent %llu rcvd %llu",
		     (unsigned long long)sh->e[0].sent,
		     (unsigned long long)sh->e[0].rcvd,
		     (unsigned long long)sh->e[1].sent,
		     (unsigned long long)sh->e[1].rcvd);
	for (int i = 0; i < 2; i++)
		if (sh->e[i].t_attach > at)
			at = sh->e[i].t_attach;
	if (at && k > 0 && (size_t)k < len)
		snprintf(buf + k, len - (size_t)k, "; on the ring at %llu us",
			 (unsigned long long)(at - r->t_go) / 1000);
}

/* One run with a fault, its parameters drawn from seed; span_us[both]:
 * how long a clean transfer takes (the kill lands in it). */
static void fault_run(int n, uint64_t seed, const uint32_t span_us[2],
		      struct tally *t)
{
	static const char *const mode_name[] = { "adaptive", "spin", "sleep" };
	static const size_t rings[4] = { 4096, 65536, 0, 0 };
	uint64_t rng = seed, x = t_rand64(&rng), y = t_rand64(&rng);
	struct run r = { .v = (enum victim)(x % V_MAX),
			 .both = (x >> 8) & 1,
			 .len = XFER };
	char sum[256];

	r.delay_us = (x >> 16) % 4 == 0 ?
			     (uint32_t)((x >> 24) % EARLY_US) :
			     EARLY_US + (uint32_t)((x >> 24) % span_us[r.both]);
	/* Small rings fill and wake more often. Spinning, and poll() on
	 * ivmc_fd(), only with one thread per end (ivmc_fd(3)). */
	r.opts.ring_size = rings[y & 3];
	r.opts.wait_mode = (int)((y >> 2) % 3);
	if (r.both && r.opts.wait_mode == IVMC_WAIT_SPIN)
		r.opts.wait_mode = IVMC_WAIT_ADAPTIVE;
	r.nonblock = !r.both && ((y >> 4) & 1);
	snprintf(
		r.what, sizeof(r.what),
		"run %d (IVMC_FAULT_RUN_SEED=%#llx: %s, ring %zu, %s%s, SIGKILL %s at %u us)",
		n, (unsigned long long)seed, r.both ? "both ways" : "A to B",
		r.opts.ring_size ? r.opts.ring_size : IVMC_RING_DEFAULT,
		mode_name[r.opts.wait_mode], r.nonblock ? ", non-blocking" : "",
		victim_name[r.v], r.delay_us);
	run_start(&r, t_rand64(&rng));
	run_kill(&r);
	run_wait(&r);
	run_summary(&r, sum, sizeof(sum));
	if (r.v == V_DAEMON) {
		daemon_restart();
		clean_run("warm-up after the restart", WARM, true);
	} else {
		daemon_alive("after the run");
		r.settle_ms = daemon_clean(r.what);
	}
	printf("%s: %s; %s; streams ended %d ms after the start, %d ms after the kill; ivmcd clean in %d ms\n",
	       r.what,
	       r.late	  ? "the victim had finished" :
	       r.attached ? "on the ring at the kill" :
			    "not on the ring at the kill",
	       sum, r.xfer_ms, r.survivors_ms, r.settle_ms);
	t->runs++;
	t->kills[r.v]++;
	t->both_ways += r.both;
	t->attached += r.attached && !r.late;
	t->late += r.late;
	if (r.survivors_ms > t->survivors_max_ms)
		t->survivors_max_ms = r.survivors_ms;
	if (r.settle_ms > t->settle_max_ms)
		t->settle_max_ms = r.settle_ms;
}

/* ---- main ------------------------------------------------------------- */

static uint64_t env_u64(const char *name, uint64_t dflt)
{
	const char *v = getenv(name);

	return v && *v ? strtoull(v, NULL, 0) : dflt;
}

int main(void)
{
	int runs = t_long() ? 200 : 50, base_fds, fds, nfiles, nshm, st;
	uint64_t master =
		env_u64("IVMC_FAULT_SEED", t_now_ns() ^ (uint64_t)getpid());
	uint64_t one = env_u64("IVMC_FAULT_RUN_SEED", 0), t0 = t_now_ns();
	char files[1024], files2[1024], shm[4096], shm2[4096];
	struct tally t = { 0 };
	uint32_t span_us[2];

	t_alarm(t_long() ? 850 : 110);
	runs = one ? 1 : (int)env_u64("IVMC_FAULT_RUNS", (uint64_t)runs);
	printf("fault-sigkill: %d run(s), IVMC_FAULT_SEED=%#llx\n", runs,
	       (unsigned long long)master);
	sh = mmap(NULL, sizeof(*sh), PROT_READ | PROT_WRITE,
		  MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	T_ASSERT(sh != MAP_FAILED);
	nshm = list_dir("/dev/shm", shm, sizeof(shm));
	t_daemon_start(NULL);
	atexit(daemon_kill_at_exit);
	nfiles = list_dir(t_dir, files, sizeof(files));
	base_fds = t_count_fds();

	clean_run("warm-up", WARM, true);
	span_us[0] = clean_run("timing", XFER, false);
	span_us[1] = clean_run("timing", XFER, true);
	printf("clean runs of %llu MiB: %u ms one way, %u ms each way at once\n",
	       (unsigned long long)(XFER >> 20), span_us[0] / 1000,
	       span_us[1] / 1000);
	for (int i = 0; i < runs; i++)
		fault_run(i, one ? one : t_rand64(&master), span_us, &t);

	/* Nothing left behind by any run. */
	fds = t_count_fds();
	if (fds != base_fds)
		t_fail("the test process holds %d fds, %d at the start", fds,
		       base_fds);
	if (list_dir(t_dir, files2, sizeof(files2)) != nfiles ||
	    strcmp(files, files2))
		t_fail("files in %s: [%s] at the start, [%s] now", t_dir, files,
		       files2);
	if (list_dir("/dev/shm", shm2, sizeof(shm2)) != nshm)
		printf("note: /dev/shm had %d entries, now [%s] (not ours unless named ivmc)\n",
		       nshm, shm2);
	if (strstr(shm2, "ivmc") && !strstr(shm, "ivmc"))
		t_fail("/dev/shm: [%s]", shm2);
	show_daemon();
	printf("survivors of a killed peer: receive ended with end of stream %d, -ECONNRESET %d; send: all sent %d (then shutdown 0 %d, -ENOTCONN %d), -EPIPE %d, -ECONNRESET %d\n",
	       seen.recv_eof, seen.recv_reset, seen.send_all, seen.shut_ok,
	       seen.shut_notconn, seen.send_epipe, seen.send_reset);
	printf("fault-sigkill: %d runs in %.1f s: SIGKILL to end A %d, end B %d, ivmcd %d; %d both ways; %d on the ring at the kill, %d victims had finished; survivors done within %d ms of the kill, ivmcd clean within %d ms; ivmcd fds %d; files [%s]\n",
	       t.runs, (double)(t_now_ns() - t0) / 1e9, t.kills[V_A],
	       t.kills[V_B], t.kills[V_DAEMON], t.both_ways, t.attached, t.late,
	       t.survivors_max_ms, t.settle_max_ms, dmn_fds, files2);
	st = t_daemon_stop(t_dpid);
	t_dpid = 0;
	if (!WIFEXITED(st) || WEXITSTATUS(st))
		t_fail("ivmcd did not exit cleanly on SIGTERM (status %#x)",
		       st);
	return T_PASS;
}
