/* SPDX-License-Identifier: MIT */
/*
 * Description: a non-blocking reserve on a full ring whose consumer has
 * just closed the epoch (an honest consumer detach) must not report bytes
 * it did not hand out: it must return -EOPNOTSUPP (the direction is on the
 * side stream now, as for any reserve there) and leave the caller's pointer
 * alone. Found by tests/fuzz/fuzz-chan-consumer.c: chan_reserve() takes the
 * 1 ("closed, now on the side stream") of sw_tx_check_closed() for a size.
 */
#include <errno.h>
#include <string.h>

#include "t_chan.h"

#define RING 4096u

int main(void)
{
	static uint8_t data[RING];
	void *const untouched = (void *)data;
	void *buf = untouched;
	struct t_pair p;
	ssize_t r;

	t_alarm(10);
	t_chan_pair(&p, RING, true, 0, CHAN_WAIT_SLEEP);
	memset(data, 0x5a, sizeof(data));
	/* a opens the first ring epoch and fills the ring. */
	T_ASSERT_EQ(t_send(p.a, data, RING, CHAN_NONBLOCK), RING);
	/* b, the consumer, moves the direction to the side stream. */
	T_ASSERT_EQ(chan_detach(p.b, CHAN_RX), 0);

	r = chan_reserve(p.a, &buf, CHAN_NONBLOCK);
	if (r > 0 && buf == untouched)
		t_fail("chan_reserve() returned %zd and left the buffer unset",
		       r);
	T_ASSERT_EQ(r, -EOPNOTSUPP);

	/* The bytes already in the ring still arrive, then the side stream. */
	T_ASSERT_EQ(t_recv(p.b, data, RING, CHAN_NONBLOCK | CHAN_WAITALL), RING);
	t_chan_pair_close(&p);
	return T_PASS;
}
