/* SPDX-License-Identifier: MIT */
/*
 * Description: the endpoint lock. One word in the endpoint page (shared
 * with our fork children, never with the peer): 0 when free, else the
 * owner's thread id, with LOCK_WAITERS set when someone sleeps on it.
 * Taking it is one CAS and releasing one exchange, against about three times
 * that for a robust process-shared pthread mutex; a holder that died is found
 * by a waiter that timed out, and poisons the channel as the robust mutex did.
 */
#include <linux/futex.h>
#include <pthread.h>
#include <signal.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "chan_impl.h"

#define LOCK_WAITERS 0x80000000u
#define LOCK_CHECK_MS 100 /* a sleeping waiter looks at the owner this often */

static __thread uint32_t my_tid;

/* fork() copies the cached id into the child's only thread: forget it. */
static void forget_tid(void)
{
	my_tid = 0;
}

__attribute__((constructor)) static void lock_init(void)
{
	pthread_atfork(NULL, NULL, forget_tid);
}

static uint32_t tid(void)
{
	if (!my_tid)
		my_tid = (uint32_t)syscall(SYS_gettid);
	return my_tid;
}

static bool owner_dead(uint32_t v)
{
	pid_t owner = (pid_t)(v & ~LOCK_WAITERS);

	return owner > 0 && kill(owner, 0) < 0 && errno == ESRCH;
}

static int lock_slow(_Atomic uint32_t *w, uint32_t me)
{
	struct timespec ts = { 0, LOCK_CHECK_MS * 1000000L };

	for (;;) {
		uint32_t v = ivmc_load_once(w);

		if (!v) {
			/* We may not be the last waiter: keep the bit. */
			if (atomic_compare_exchange_strong(w, &v, me | LOCK_WAITERS))
				return 0;
			continue;
		}
		if (!(v & LOCK_WAITERS) &&
		    !atomic_compare_exchange_strong(w, &v, v | LOCK_WAITERS))
			continue;
		v |= LOCK_WAITERS;
		if (syscall(SYS_futex, w, FUTEX_WAIT, v, &ts, NULL, 0) < 0 &&
		    errno == ETIMEDOUT && owner_dead(v) &&
		    atomic_compare_exchange_strong(w, &v, me | LOCK_WAITERS))
			return -EOWNERDEAD; /* ours now, the state it guards torn */
	}
}

int ep_lock(_Atomic uint32_t *w, bool try)
{
	uint32_t me = tid(), zero = 0;

	/* Acquire: pairs with the release in ep_unlock(). */
	if (atomic_compare_exchange_strong_explicit(w, &zero, me,
						    memory_order_acquire,
						    memory_order_relaxed))
		return 0;
	if ((zero & ~LOCK_WAITERS) == me)
		return -EDEADLK; /* a bug of ours: never recursive */
	if (try)
		return -EAGAIN;
	return lock_slow(w, me);
}

bool ep_lock_reap(_Atomic uint32_t *w)
{
	uint32_t v = ivmc_load_once(w);

	return v && owner_dead(v) && atomic_compare_exchange_strong(w, &v, 0);
}

void ep_unlock(_Atomic uint32_t *w)
{
	uint32_t v = atomic_exchange_explicit(w, 0, memory_order_release);

	if (v & LOCK_WAITERS)
		syscall(SYS_futex, w, FUTEX_WAKE, 1, NULL, NULL, 0);
}
