/* SPDX-License-Identifier: MIT */
/*
 * Description: the smallest complete use of the native API.
 *   echo server PATH    serve one channel: send back whatever arrives
 *   echo client PATH    send a line, print the reply
 */
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

#include <ivmc.h>

static int serve(const char *path)
{
	struct ivmc_listener *l = NULL;
	struct ivmc_chan *c;
	char buf[4096];
	ssize_t n;
	int err = ivmc_listen(path, NULL, &l);

	if (err || (err = ivmc_accept(l, 0, &c)))
		goto out;
	while ((n = ivmc_recv(c, buf, sizeof(buf), 0)) > 0)
		if ((n = ivmc_send(c, buf, (size_t)n, 0)) < 0)
			break;
	err = n < 0 ? (int)n : 0;
	ivmc_close(c);
out:
	if (l)
		ivmc_listener_close(l);
	return err;
}

static int client(const char *path)
{
	const char msg[] = "hello over shared memory";
	struct ivmc_chan *c;
	char buf[sizeof(msg)];
	ssize_t n;
	int err = ivmc_connect(path, NULL, &c);

	if (err)
		return err;
	n = ivmc_send(c, msg, sizeof(msg), 0);
	if (n > 0)
		n = ivmc_recv(c, buf, sizeof(buf), IVMC_WAITALL);
	if (n == (ssize_t)sizeof(msg))
		printf("%s\n", buf);
	ivmc_shutdown(c, SHUT_WR);
	ivmc_close(c);
	return n < 0 ? (int)n : 0;
}

int main(int argc, char **argv)
{
	int err;

	if (argc != 3 || (strcmp(argv[1], "server") && strcmp(argv[1], "client"))) {
		fprintf(stderr, "usage: echo server|client PATH\n");
		return 2;
	}
	err = argv[1][0] == 's' ? serve(argv[2]) : client(argv[2]);
	if (err)
		fprintf(stderr, "echo: %s: %s\n", argv[2], strerror(-err));
	return err ? 1 : 0;
}
