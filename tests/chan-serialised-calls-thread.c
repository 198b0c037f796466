/* SPDX-License-Identifier: MIT */
/*
 * Description: "senders are serialised among themselves and receivers among
 * themselves" (include/ivmc.h). Three threads send whole messages larger
 * than the ring on one end (so each blocking send sleeps mid-call); every
 * message must arrive in one piece, never cut by another sender's bytes.
 * Then three threads receive whole messages with CHAN_WAITALL from one end;
 * each must get one message, never parts of two.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "helpers.h"
#include "t_chan.h"

#define RING 4096u
#define MSG (3 * RING + 17) /* a send or receive must sleep mid-call */
#define NTHREADS 3
#define NMSG 300 /* per thread */

static struct t_pair pair;
static atomic_int cut; /* messages found cut */

/* Message seq of sender id: an 8-byte header, then stream bytes. */
static void msg_fill(uint8_t *buf, uint32_t id, uint32_t seq)
{
	memcpy(buf, &id, 4);
	memcpy(buf + 4, &seq, 4);
	t_fill(id, (uint64_t)seq * MSG + 8, buf + 8, MSG - 8);
}

/* 0 if buf is one whole message (sets id, seq), else -1. */
static int msg_check(const uint8_t *buf, uint32_t *id, uint32_t *seq)
{
	memcpy(id, buf, 4);
	memcpy(seq, buf + 4, 4);
	if (*id >= NTHREADS || *seq >= NMSG)
		return -1;
	return t_verify(*id, (uint64_t)*seq * MSG + 8, buf + 8, MSG - 8);
}

static void *sender(void *arg)
{
	uint32_t id = (uint32_t)(uintptr_t)arg;
	uint8_t *buf = malloc(MSG);

	T_ASSERT(buf);
	for (uint32_t seq = 0; seq < NMSG; seq++) {
		ssize_t r;

		msg_fill(buf, id, seq);
		r = t_send(pair.a, buf, MSG, 0);
		if (r != MSG)
			t_fail("sender %u: send of message %u: %zd (%s)", id,
			       seq, r, t_strerror(r));
	}
	free(buf);
	return NULL;
}

static void case_senders(void)
{
	uint32_t next[NTHREADS] = { 0 };
	uint8_t *buf = malloc(MSG);
	pthread_t th[NTHREADS];

	T_ASSERT(buf);
	t_chan_pair(&pair, RING, false, 0, CHAN_WAIT_SLEEP);
	for (uintptr_t i = 0; i < NTHREADS; i++)
		T_ASSERT_EQ(pthread_create(&th[i], NULL, sender, (void *)i), 0);
	for (int m = 0; m < NTHREADS * NMSG; m++) {
		uint32_t id, seq;
		ssize_t r = t_recv(pair.b, buf, MSG, CHAN_WAITALL);

		if (r != MSG)
			t_fail("senders: receive of message %d: %zd (%s)", m, r,
			       t_strerror(r));
		if (msg_check(buf, &id, &seq)) {
			/* Lost framing: the rest cannot be told apart. */
			t_fail("senders: message %d of the stream is not one sender's whole message: a blocking send of %u bytes was cut by another sender's bytes",
			       m, MSG);
		}
		if (seq != next[id])
			t_fail("senders: sender %u's message %u arrived, expected %u",
			       id, seq, next[id]);
		next[id]++;
	}
	for (int i = 0; i < NTHREADS; i++)
		T_ASSERT_EQ(pthread_join(th[i], NULL), 0);
	t_chan_pair_close(&pair);
	free(buf);
}

static atomic_int got[NMSG]; /* whole messages received, by seq */

static void *receiver(void *arg)
{
	uint8_t *buf = malloc(MSG);

	(void)arg;
	T_ASSERT(buf);
	for (;;) {
		uint32_t id, seq;
		ssize_t r = t_recv(pair.b, buf, MSG, CHAN_WAITALL);

		if (r == 0)
			break;
		if (r < 0)
			t_fail("receivers: CHAN_WAITALL receive: %zd (%s)", r,
			       t_strerror(r));
		/* Short only at the end of stream, after a cut. */
		if (r != MSG || msg_check(buf, &id, &seq) || id != 0) {
			atomic_fetch_add(&cut, 1);
			continue;
		}
		atomic_fetch_add(&got[seq], 1);
	}
	free(buf);
	return NULL;
}

/* One sender of NMSG messages, three receivers of whole messages. */
static void case_receivers(void)
{
	uint8_t *buf = malloc(MSG);
	pthread_t th[NTHREADS];
	int whole = 0;

	T_ASSERT(buf);
	t_chan_pair(&pair, RING, false, 0, CHAN_WAIT_SLEEP);
	for (int i = 0; i < NTHREADS; i++)
		T_ASSERT_EQ(pthread_create(&th[i], NULL, receiver, NULL), 0);
	for (uint32_t seq = 0; seq < NMSG; seq++) {
		msg_fill(buf, 0, seq);
		T_ASSERT_EQ(t_send(pair.a, buf, MSG, 0), MSG);
	}
	T_ASSERT_EQ(chan_shutdown(pair.a, SHUT_WR), 0);
	for (int i = 0; i < NTHREADS; i++)
		T_ASSERT_EQ(pthread_join(th[i], NULL), 0);
	for (int i = 0; i < NMSG; i++) {
		if (atomic_load(&got[i]) > 1)
			t_fail("receivers: message %d received %d times", i,
			       atomic_load(&got[i]));
		whole += atomic_load(&got[i]);
	}
	if (atomic_load(&cut))
		t_fail("receivers: %d CHAN_WAITALL receives of %u bytes (%d messages sent) got parts of two messages, another receiver having taken bytes in between; %d whole",
		       atomic_load(&cut), MSG, NMSG, whole);
	T_ASSERT_EQ(whole, NMSG);
	t_chan_pair_close(&pair);
	free(buf);
}

static void run_case(void *arg)
{
	t_alarm(25);
	if (arg)
		case_receivers();
	else
		case_senders();
}

int main(void)
{
	int failed = 0;

	t_alarm(55);
	/* Each case in a child, so that both always run and report. */
	for (int i = 0; i < 2; i++) {
		pid_t pid = t_fork(run_case, i ? (void *)1 : NULL);

		if (t_wait(pid, 26000) != 0) {
			fprintf(stderr, "FAIL: %s\n",
				i ? "concurrent receivers" :
				    "concurrent senders");
			failed++;
		}
	}
	if (failed)
		t_fail("%d of 2 cases failed, see above", failed);
	printf("%d senders, then %d receivers, %d messages of %u bytes: all whole\n",
	       NTHREADS, NTHREADS, NMSG, MSG);
	return T_PASS;
}
