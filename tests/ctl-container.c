/* SPDX-License-Identifier: MIT */
/*
 * Description: a real container talks to a server on the host through
 * ivmcd. `unshare --user --map-root-user --mount --pid --net --fork`
 * runs this program again as the container's init: in its own mount
 * namespace it mounts a tmpfs on /run and bind-mounts the daemon's socket
 * directory on /run/ivmc, so the library finds ivmcd at its default path
 * (IVMC_SOCKET unset); the parent moves one end of a veth pair into the
 * container's netns by pid (`ip link set X netns PID`); the container
 * names it eth0, gives it its address and connects to a server in the
 * host's netns. Both ends call ivmc_tcp() and attach; bytes before,
 * during and after the attach are verified; `ivmcctl --json status` shows
 * the channel between "host" and the container's unnamed netns
 * ("inode:N"), its end as uid 0. Skips when user namespaces are off.
 */
#include <sys/stat.h>

#include "t_netns.h"

#define SOCK_DIR_IN "/run/ivmc"

/* ---- inside the container ------------------------------------------------ */

/* argv: --container CLI_UP CLI_DOWN C2S READY MOVED IFNAME HOST_IP MY_IP
 *	 PORT SEED SOCKDIR */
static int container_main(int argc, char **argv)
{
	struct t_conv c;
	struct t_pipe ready, moved;
	struct stat st;
	char m;

	if (argc != 13)
		t_fail("container: %d arguments", argc);
	memset(&c, 0, sizeof(c));
	c.cli_up.wr = atoi(argv[2]);
	c.cli_down.rd = atoi(argv[3]);
	c.c2s.wr = atoi(argv[4]);
	ready.wr = atoi(argv[5]);
	moved.rd = atoi(argv[6]);
	c.ip = argv[8];
	c.port = (uint16_t)atoi(argv[10]);
	c.seed = strtoull(argv[11], NULL, 0);
	c.mode = T_CONV_CLIENT_FIRST;
	c.settle_ms = 10000;
	alarm(T_KID_ALARM);
	if (getpid() != 1)
		t_fail("container: not the init of a new pid namespace (%d)",
		       (int)getpid());
	if (getuid() != 0)
		t_fail("container: not root in the user namespace (%d)",
		       (int)getuid());
	t_put(&ready, "r", 1);

	/* What a container runtime does: its own /run, the daemon's socket
	 * directory mounted where the library looks by default. */
	if (mount("none", "/", NULL, MS_REC | MS_PRIVATE, NULL) ||
	    mount("tmpfs", "/run", "tmpfs", 0, "mode=0755") ||
	    mkdir(SOCK_DIR_IN, 0755) ||
	    mount(argv[12], SOCK_DIR_IN, NULL, MS_BIND, NULL))
		t_fail("container: mounts: %s", strerror(errno));
	if (stat(SOCK_DIR_IN "/ivmcd.sock", &st) || !S_ISSOCK(st.st_mode))
		t_fail("container: no socket at " SOCK_DIR_IN "/ivmcd.sock");
	unsetenv("IVMC_SOCKET");

	/* The parent has moved our end of the veth in. */
	t_get(&moved, &m, 1, 20000);
	t_sh("ip link set lo up && ip link set %s name eth0 && "
	     "ip addr add %s/24 dev eth0 && ip link set eth0 up",
	     argv[7], argv[9]);
	t_conv_client(&c);
	fflush(stdout);
	fflush(stderr);
	_exit(0);
}

/* ---- the host ----------------------------------------------------------------- */

static void need_userns(void)
{
	pid_t pid;
	int st;

	if (t_sh_rc("unshare --version >/dev/null 2>&1") != 0)
		t_skip("needs unshare(1) from util-linux");
	pid = fork();
	if (pid < 0)
		t_fail("fork: %s", strerror(errno));
	if (pid == 0)
		_exit(unshare(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID |
			      CLONE_NEWNET) ? errno : 0);
	if (waitpid(pid, &st, 0) != pid || !WIFEXITED(st))
		t_fail("probe child lost");
	if (WEXITSTATUS(st) != 0) {
		char why[160];

		snprintf(why, sizeof(why),
			 "user namespaces are disabled here (unshare: %s); "
			 "no container to run",
			 strerror(WEXITSTATUS(st)));
		t_skip(why);
	}
}

/* Start the container; it runs this binary again. Returns the pid of
 * unshare(1), which is in the container's namespaces but ours. */
static pid_t container_start(struct t_conv *c, struct t_pipe *ready,
			     struct t_pipe *moved, const char *ifname,
			     const char *host_ip, const char *my_ip)
{
	char self[PATH_MAX], a[5][16], port[8], seed[24];
	pid_t parent = getpid(), pid;
	ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);

	if (n < 0)
		t_fail("readlink /proc/self/exe: %s", strerror(errno));
	self[n] = 0;
	fflush(stdout);
	fflush(stderr);
	pid = fork();
	if (pid < 0)
		t_fail("fork: %s", strerror(errno));
	if (pid == 0) {
		/* dup(): copies without O_CLOEXEC, for the exec. */
		int fds[5] = { dup(c->cli_up.wr), dup(c->cli_down.rd),
			       dup(c->c2s.wr), dup(ready->wr), dup(moved->rd) };

		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (getppid() != parent)
			_exit(T_FAIL);
		for (int i = 0; i < 5; i++)
			snprintf(a[i], sizeof(a[i]), "%d", fds[i]);
		snprintf(port, sizeof(port), "%u", c->port);
		snprintf(seed, sizeof(seed), "%llu", (unsigned long long)c->seed);
		execlp("unshare", "unshare", "--user", "--map-root-user",
		       "--mount", "--pid", "--net", "--fork", "--kill-child",
		       self, "--container", a[0], a[1], a[2], a[3], a[4], ifname,
		       host_ip, my_ip, port, seed, t_dir, (char *)NULL);
		_exit(127);
	}
	t_ns_adopt(pid);
	return pid;
}

int main(int argc, char **argv)
{
	static char out[65536];
	char host_if[16], cont_if[16], host_ip[20], cont_ip[20], ns[48], r;
	unsigned int id = (unsigned int)getpid() % 100000;
	unsigned int subnet = 0;
	struct t_pipe ready, moved;
	struct t_report cr, sr;
	struct t_conv c;
	struct stat nst;
	pid_t sp, kp;
	int st;

	if (argc > 1 && !strcmp(argv[1], "--container"))
		return container_main(argc, argv);
	t_ns_setup(60);
	need_userns();
	t_daemon_start(NULL);

	/* A veth pair in our netns; one end goes into the container, on a
	 * 10.216.X.0/24 that no link of ours uses (another test may run
	 * beside us). */
	for (unsigned int k = 0; k < 250 && !subnet; k++) {
		unsigned int x = ((unsigned int)getpid() + k) % 250 + 1;

		if (t_sh_rc("ip -4 -o addr show | grep -q ' 10\\.216\\.%u\\.'",
			    x) == 1)
			subnet = x;
	}
	if (!subnet)
		t_fail("no free 10.216.X.0/24");
	snprintf(host_if, sizeof(host_if), "ivch%u", id);
	snprintf(cont_if, sizeof(cont_if), "ivcc%u", id);
	snprintf(host_ip, sizeof(host_ip), "10.216.%u.1", subnet);
	snprintf(cont_ip, sizeof(cont_ip), "10.216.%u.2", subnet);
	t_ns_link(host_if);
	t_sh("ip link add %s type veth peer name %s", host_if, cont_if);
	t_sh("ip addr add %s/24 dev %s && ip link set %s up", host_ip, host_if,
	     host_if);

	/* The server, on the host: announces its listener, so ivmcd knows
	 * the host's addresses before the container connects. */
	t_conv_init(&c, host_ip, T_CONV_CLIENT_FIRST);
	c.listeners = true;
	c.seed = 7;
	sp = t_conv_start_server(&c, NULL);

	t_pipe_make(&ready);
	t_pipe_make(&moved);
	kp = container_start(&c, &ready, &moved, cont_if, host_ip, cont_ip);
	t_get(&ready, &r, 1, 20000);
	t_sh("ip link set %s netns %d", cont_if, (int)kp);
	t_put(&moved, "m", 1);

	t_get(&c.cli_up, &cr, sizeof(cr), 20000);
	if (cr.first != 0 || cr.state != 1)
		t_fail("container: %d (%s) at first, then %d (%s); want 0, 1",
		       cr.first, t_strerror(cr.first), cr.state,
		       t_strerror(cr.state));
	/* The channel: host <-> the container's netns, which has no name. */
	if (stat("/proc/self/ns/net", &nst))
		t_fail("stat: %s", strerror(errno));
	{
		char path[64];
		struct stat cst;

		snprintf(path, sizeof(path), "/proc/%d/ns/net", (int)kp);
		if (stat(path, &cst))
			t_fail("stat %s: %s", path, strerror(errno));
		T_ASSERT(cst.st_ino != nst.st_ino);
		snprintf(ns, sizeof(ns), "inode:%llu",
			 (unsigned long long)cst.st_ino);
	}
	t_ivmcctl(out, sizeof(out), "--json status");
	if (t_json_chans_between(out, "host", ns) != 1)
		t_fail("no ring channel between host and %s: %s", ns, out);
	{
		char end[128];

		snprintf(end, sizeof(end), "\"uid\":0,\"gid\":0,\"netns\":\"%s\"",
			 ns);
		if (!strstr(out, end))
			t_fail("the container's end is not uid 0 in %s: %s", ns,
			       out);
	}
	t_put(&c.cli_down, "g", 1);
	t_get(&c.cli_up, &cr, sizeof(cr), 20000);
	t_get(&c.srv_up, &sr, sizeof(sr), 20000);
	t_conv_expect_attached(&cr, &sr, "container");
	T_ASSERT(sr.first == 0 || sr.first == 1);
	t_get(&c.srv_up, &r, 1, 10000);
	t_put(&c.srv_down, "q", 1);
	T_ASSERT_EQ(t_ns_wait(kp, 20000), 0);
	T_ASSERT_EQ(t_ns_wait(sp, 20000), 0);
	t_ns_expect_none_left(true);
	printf("container (%s) <-> host: attached, %llu bytes each way\n", ns,
	       (unsigned long long)cr.sent);
	st = t_ns_daemon_stop();
	T_ASSERT(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	return T_PASS;
}
