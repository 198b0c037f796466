/* SPDX-License-Identifier: MIT */
/*
 * Description: allow lists by uid and gid. A listener that does not allow
 * the connector's uid refuses it on both sides (-EACCES from ivmc_connect
 * and from ivmc_accept), again and again, and keeps serving allowed
 * connectors; allowing the gid is enough; a connector's own allow list
 * refuses a listener. As root, a child that became nobody (65534) is
 * refused by a listener allowing only uid 0 and served by one allowing
 * 65534 (by uid or by gid).
 */
#include <grp.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include "t_api.h"

#define NOBODY 65534
#define REFUSALS 40 /* the refusal races the HELLO: repeat it */

/* What each refused ivmc_connect returned: [errno] = count. A wrong errno
 * is tallied and reported at the end, so every other check still runs. */
static int *connect_got; /* shared with the children */
static int refused_total, refused_wrong;

struct client {
	const char *path;
	uid_t become; /* (uid_t)-1: stay who we are */
	int want; /* 0: a channel; else this -errno */
	const uid_t *allow_uids; /* the connector's own allow list */
	size_t n_allow_uids;
};

static void become(uid_t id)
{
	if (id == (uid_t)-1)
		return;
	if (setgroups(0, NULL) || setgid(id) || setuid(id))
		t_fail("cannot become uid/gid %u: %s", (unsigned int)id,
		       strerror(errno));
	T_ASSERT_EQ(getuid(), id);
	T_ASSERT_EQ(getgid(), id);
}

/* Connect; with a channel, send 16 bytes and expect them echoed. */
static void client(void *arg)
{
	const struct client *cl = arg;
	struct ivmc_opts o = { .ring_size = 4096,
			       .allow_uids = cl->allow_uids,
			       .n_allow_uids = cl->n_allow_uids };
	struct ivmc_chan *c;
	uint8_t buf[16];
	int r;

	become(cl->become);
	r = ivmc_connect(cl->path, &o, &c);
	connect_got[0] = r;
	if (cl->want) {
		if (r >= 0)
			t_fail("uid %u: ivmc_connect(%s) gave a channel, want %d (%s)",
			       (unsigned int)getuid(), cl->path, cl->want,
			       t_strerror(cl->want));
		return; /* the parent checks which error */
	}
	if (r)
		t_fail("uid %u: ivmc_connect(%s) = %d (%s), want a channel",
		       (unsigned int)getuid(), cl->path, r, t_strerror(r));
	t_fill(getuid(), 0, buf, sizeof(buf));
	t_send_all(c, buf, sizeof(buf));
	memset(buf, 0, sizeof(buf));
	t_recv_all(c, buf, sizeof(buf));
	T_ASSERT(t_verify(getuid(), 0, buf, sizeof(buf)) == 0);
	T_ASSERT_OK(ivmc_close(c));
}

/* The uid a client runs as. */
static int who(const struct client *cl)
{
	return cl->become == (uid_t)-1 ? (int)getuid() : (int)cl->become;
}

#define ANY_ERROR 1 /* want_acc: accept must fail, with any error */

/* Run one client against l; accept must give want_acc (0: a channel,
 * which then echoes), and the client must end with its own expectation. */
static void one(struct ivmc_listener *l, const struct client *cl, int want_acc)
{
	struct ivmc_chan *c;
	pid_t pid = t_fork(client, (void *)cl);
	int r = ivmc_accept(l, 0, &c);

	if (want_acc == ANY_ERROR) {
		if (r >= 0)
			t_fail("ivmc_accept gave a channel to a connector that refused us");
	} else if (r != want_acc) {
		t_fail("ivmc_accept for uid %d = %d (%s), want %d (%s)",
		       who(cl), r, t_strerror(r), want_acc,
		       t_strerror(want_acc));
	}
	if (!r) {
		uint8_t buf[16];

		t_recv_all(c, buf, sizeof(buf));
		t_send_all(c, buf, sizeof(buf));
		T_ASSERT_OK(ivmc_close(c));
	}
	if (t_wait(pid, 10000))
		t_fail("client (uid %d) failed", who(cl));
	if (cl->want) {
		int got = connect_got[0];

		refused_total++;
		if (got != cl->want) {
			refused_wrong++;
			if (got < 0 && got > -4096)
				connect_got[-got]++;
		}
	}
}

static struct ivmc_listener *listen_on(const char *p, const uid_t *uids,
				       size_t nu, const gid_t *gids, size_t ng)
{
	struct ivmc_opts o = { .ring_size = 4096,
			       .allow_uids = uids,
			       .n_allow_uids = nu,
			       .allow_gids = gids,
			       .n_allow_gids = ng };
	struct ivmc_listener *l;

	T_ASSERT_OK(ivmc_listen(p, &o, &l));
	/* Connecting needs write permission on the socket file. */
	if (p[0] != '@')
		T_ASSERT(chmod(p, 0777) == 0);
	return l;
}

/* A uid that is not ours (and, as root, the one we can become). */
static uid_t other_uid(void)
{
	return getuid() == 0 ? NOBODY : getuid() + 4242;
}

static void refused_by_uid(const char *p, bool root)
{
	uid_t other = other_uid();
	struct ivmc_listener *l = listen_on(p, &other, 1, NULL, 0);
	struct client me = { .path = p, .become = (uid_t)-1, .want = -EACCES };
	struct client them = { .path = p, .become = NOBODY };

	for (int i = 0; i < REFUSALS; i++)
		one(l, &me, -EACCES);
	if (root) {
		/* The listener still serves the uid it allows ... */
		one(l, &them, 0);
		/* ... and still refuses the others. */
		one(l, &me, -EACCES);
		one(l, &them, 0);
	}
	T_ASSERT_OK(ivmc_listener_close(l));
}

static void allowed(const char *p)
{
	uid_t uids[2] = { other_uid(), getuid() };
	gid_t gid = getgid();
	struct client me = { .path = p, .become = (uid_t)-1 };
	struct ivmc_listener *l;

	/* Allowed by gid only. */
	l = listen_on(p, uids, 1, &gid, 1);
	one(l, &me, 0);
	one(l, &me, 0);
	T_ASSERT_OK(ivmc_listener_close(l));
	/* Allowed by the second uid of a list. */
	l = listen_on(p, uids, 2, NULL, 0);
	one(l, &me, 0);
	T_ASSERT_OK(ivmc_listener_close(l));
}

/* The connector's allow list applies to the listener's credentials. */
static void connector_refuses(const char *p)
{
	uid_t other = other_uid(), mine = getuid();
	struct client picky = { .path = p,
				.become = (uid_t)-1,
				.want = -EACCES,
				.allow_uids = &other,
				.n_allow_uids = 1 };
	struct client fine = { .path = p,
			       .become = (uid_t)-1,
			       .allow_uids = &mine,
			       .n_allow_uids = 1 };
	struct ivmc_listener *l = listen_on(p, NULL, 0, NULL, 0);

	/* The connector hangs up without a hello: accept fails (how is
	 * up to the listener), then serves the next one. */
	one(l, &picky, ANY_ERROR);
	one(l, &fine, 0);
	one(l, &picky, ANY_ERROR);
	one(l, &fine, 0);
	T_ASSERT_OK(ivmc_listener_close(l));
}

/* As root: a child that became nobody. */
static void as_nobody(const char *p)
{
	uid_t root = 0, nobody = NOBODY;
	gid_t gnobody = NOBODY, groot = 0;
	struct client them = { .path = p, .become = NOBODY };
	struct client them_refused = { .path = p,
				       .become = NOBODY,
				       .want = -EACCES };
	struct ivmc_listener *l;

	l = listen_on(p, &root, 1, NULL, 0);
	one(l, &them_refused, -EACCES);
	T_ASSERT_OK(ivmc_listener_close(l));
	l = listen_on(p, &root, 1, &groot, 1);
	one(l, &them_refused, -EACCES);
	T_ASSERT_OK(ivmc_listener_close(l));
	l = listen_on(p, &nobody, 1, NULL, 0);
	one(l, &them, 0);
	T_ASSERT_OK(ivmc_listener_close(l));
	l = listen_on(p, &root, 1, &gnobody, 1);
	one(l, &them, 0);
	T_ASSERT_OK(ivmc_listener_close(l));
}

int main(void)
{
	bool root = geteuid() == 0;
	char p[128], abs[64];
	int fds0;

	t_alarm(50);
	t_tmpdir();
	/* A child that became nobody must reach the socket. */
	T_ASSERT(chmod(t_dir, 0755) == 0);
	connect_got = mmap(NULL, 4096 * sizeof(int), PROT_READ | PROT_WRITE,
			   MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	T_ASSERT(connect_got != MAP_FAILED);
	fds0 = t_count_fds();
	t_path(p, sizeof(p), "allow.sock");
	snprintf(abs, sizeof(abs), "@ivmc-t-allow-%d-%llx", (int)getpid(),
		 (unsigned long long)t_now_ns());

	refused_by_uid(p, root);
	refused_by_uid(abs, root);
	allowed(p);
	connector_refuses(p);
	if (root) {
		as_nobody(p);
		as_nobody(abs);
	} else {
		printf("not root: the parts that need another uid are skipped\n");
	}
	T_ASSERT_EQ(t_count_fds(), fds0);
	if (refused_wrong) {
		fprintf(stderr,
			"FAIL: a refused ivmc_connect() (allow list of the listener or of the connector) returned something other than -EACCES %d times out of %d:",
			refused_wrong, refused_total);
		for (int e = 1; e < 4096; e++)
			if (connect_got[e])
				fprintf(stderr, " -%s x%d", strerrorname_np(e),
					connect_got[e]);
		fprintf(stderr, "\n");
		return T_FAIL;
	}
	return T_PASS;
}
