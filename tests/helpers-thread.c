/* SPDX-License-Identifier: MIT */
/*
 * Description: two threads pass a t_fill stream through a mutex-protected
 * buffer and the consumer verifies every byte; gives make check-tsan a test
 * that proves the thread-sanitized build links and runs.
 */
#include <pthread.h>
#include <string.h>

#include "helpers.h"

#define SLOT 1000

struct pipe {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	unsigned char buf[SLOT];
	size_t len; /* bytes in buf; 0 = empty */
	int done;
	uint64_t total;
	uint64_t sum; /* producer's checksum of everything sent */
};

static void *producer(void *arg)
{
	struct pipe *p = arg;
	uint64_t rng = 99, off = 0, sum = T_CHECKSUM_INIT;
	unsigned char chunk[SLOT];

	while (off < p->total) {
		size_t n = 1 + t_rand64(&rng) % SLOT;

		if (n > p->total - off)
			n = p->total - off;
		t_fill(5, off, chunk, n);
		sum = t_checksum(sum, chunk, n);
		pthread_mutex_lock(&p->lock);
		while (p->len)
			pthread_cond_wait(&p->cond, &p->lock);
		memcpy(p->buf, chunk, n);
		p->len = n;
		pthread_cond_broadcast(&p->cond);
		pthread_mutex_unlock(&p->lock);
		off += n;
	}
	pthread_mutex_lock(&p->lock);
	p->done = 1;
	p->sum = sum;
	pthread_cond_broadcast(&p->cond);
	pthread_mutex_unlock(&p->lock);
	return NULL;
}

int main(void)
{
	static struct pipe p = {
		.lock = PTHREAD_MUTEX_INITIALIZER,
		.cond = PTHREAD_COND_INITIALIZER,
	};
	uint64_t off = 0, sum = T_CHECKSUM_INIT;
	pthread_t th;

	t_alarm(60);
	p.total = t_long() ? 200u << 20 : 4u << 20;
	T_ASSERT_EQ(pthread_create(&th, NULL, producer, &p), 0);

	pthread_mutex_lock(&p.lock);
	for (;;) {
		while (!p.len && !p.done)
			pthread_cond_wait(&p.cond, &p.lock);
		if (!p.len)
			break;
		T_ASSERT_EQ(t_verify(5, off, p.buf, p.len), 0);
		sum = t_checksum(sum, p.buf, p.len);
		off += p.len;
		p.len = 0;
		pthread_cond_broadcast(&p.cond);
	}
	pthread_mutex_unlock(&p.lock);

	T_ASSERT_EQ(pthread_join(th, NULL), 0);
	T_ASSERT_EQ(off, p.total);
	T_ASSERT(sum == p.sum);
	return T_PASS;
}
