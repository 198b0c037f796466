/* SPDX-License-Identifier: MIT */
/*
 * Description: bad command lines for ivmcd and ivmcctl get exit status 2
 * and a one-line reason on stderr, never a crash, and never start a
 * daemon; --help is accepted and lists --linger-us and --tick-us.
 */
#include "t_ctl.h"

/* Run bin with args (NULL-terminated, at most 8), stdout and stderr to
 * out. Returns the wait status. */
static int run(const char *bin, const char *const *args, const char *out)
{
	const char *argv[10] = { bin };
	int st;
	pid_t pid;

	for (int i = 0; args[i] && i < 8; i++)
		argv[i + 1] = args[i];
	pid = fork();
	if (pid < 0)
		t_fail("fork");
	if (pid == 0) {
		int fd = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0600);

		if (fd < 0)
			_exit(126);
		dup2(fd, 1);
		dup2(fd, 2);
		execv(bin, (char *const *)argv);
		_exit(127);
	}
	if (waitpid(pid, &st, 0) != pid)
		t_fail("waitpid");
	return st;
}

static bool file_has(const char *path, const char *what)
{
	char buf[4096];
	FILE *f = fopen(path, "r");
	size_t n;

	if (!f)
		return false;
	n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = 0;
	return strstr(buf, what) != NULL;
}

int main(void)
{
	static const char *const bad_d[][4] = {
		{ "--linger-us", "-3", NULL },
		{ "--linger-us", "1000001", NULL },
		{ "--linger-us", "12x", NULL },
		{ "--linger-us", "", NULL },
		{ "--linger-us=99999999999999999999999", NULL },
		{ "--tick-us", "-1", NULL },
		{ "--tick-us", "10001", NULL },
		{ "--tick-us", "1e3", NULL },
		{ "--tick-us", NULL },
		{ "-l", "loud", NULL },
		{ "--no-such-option", NULL },
		{ "extra-argument", NULL },
		{ "-s", NULL },
	};
	static const char *const bad_c[][4] = {
		{ "no-such-command", NULL },
		{ "--json", NULL },
		{ "-t", "abc", "status", NULL },
		{ "--bogus", "status", NULL },
	};
	char d[PATH_MAX], c[PATH_MAX], out[PATH_MAX], sock[PATH_MAX];
	int st;

	t_alarm(60);
	t_tmpdir();
	t_bin(d, sizeof(d), "ivmcd");
	t_bin(c, sizeof(c), "ivmcctl");
	t_path(out, sizeof(out), "out");
	t_path(sock, sizeof(sock), "never.sock");
	setenv("IVMC_SOCKET", sock, 1);
	for (size_t i = 0; i < sizeof(bad_d) / sizeof(bad_d[0]); i++) {
		st = run(d, bad_d[i], out);
		if (!WIFEXITED(st) || WEXITSTATUS(st) != 2)
			t_fail("ivmcd %s: status %#x, want exit 2", bad_d[i][0], st);
		if (!file_has(out, "ivmcd") && !file_has(out, "usage"))
			t_fail("ivmcd %s: no reason printed", bad_d[i][0]);
		if (access(sock, F_OK) == 0)
			t_fail("ivmcd %s: created its socket", bad_d[i][0]);
	}
	for (size_t i = 0; i < sizeof(bad_c) / sizeof(bad_c[0]); i++) {
		st = run(c, bad_c[i], out);
		if (!WIFEXITED(st) || WEXITSTATUS(st) != 2)
			t_fail("ivmcctl %s: status %#x, want exit 2", bad_c[i][0],
			       st);
	}
	st = run(d, (const char *const[]){ "--help", NULL }, out);
	T_ASSERT(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	T_ASSERT(file_has(out, "--linger-us"));
	T_ASSERT(file_has(out, "--tick-us"));
	return T_PASS;
}
