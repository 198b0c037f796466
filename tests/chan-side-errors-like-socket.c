/* SPDX-License-Identifier: MIT */
/*
 * Description: on the side stream, a channel reports what the stream
 * itself reports: after the peer closed its socket with our bytes unread
 * (a reset), the receives return exactly what two receives on a plain
 * socket in the same state return (the oracle: -ECONNRESET, then end of
 * stream on Linux), so that over TCP an application cannot tell. The side
 * stream's errors are its own and do not poison the ring (chan.h).
 */
#include <errno.h>

#include "t_chan.h"

/* Two receives on a plain socketpair after the peer closed with data
 * unread on its side. */
static void oracle(ssize_t out[2])
{
	static uint8_t buf[100];
	int sv[2];

	T_ASSERT(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
	T_ASSERT_EQ(send(sv[0], buf, sizeof(buf), 0), sizeof(buf));
	close(sv[1]);
	for (int i = 0; i < 2; i++) {
		out[i] = recv(sv[0], buf, sizeof(buf), MSG_DONTWAIT);
		if (out[i] < 0)
			out[i] = -errno;
	}
	close(sv[0]);
}

int main(void)
{
	static uint8_t buf[100];
	struct t_pair p;
	ssize_t want[2];

	t_alarm(10);
	oracle(want);
	t_chan_pair(&p, 4096, true, 0, CHAN_WAIT_SLEEP);
	/* a sends on the side stream; b never reads it. */
	T_ASSERT_EQ(chan_detach(p.a, CHAN_TX), 0);
	T_ASSERT_EQ(t_send(p.a, buf, sizeof(buf), CHAN_NONBLOCK), sizeof(buf));
	/* b goes: its socket closes with data unread (a reset). */
	chan_close(p.b);
	p.b = NULL;
	close(p.side[1]);
	p.side[1] = -1;
	for (int i = 0; i < 2; i++) {
		ssize_t r = t_recv(p.a, buf, sizeof(buf), CHAN_NONBLOCK);

		if (r != want[i])
			t_fail("receive %d after the reset: %zd (%s), the plain "
			       "socket gave %zd (%s)", i + 1, r, t_strerror(r),
			       want[i], t_strerror(want[i]));
	}
	t_chan_pair_close(&p);
	return T_PASS;
}
