/* SPDX-License-Identifier: MIT */
/*
 * Description: the one place that spells memory_order_*. Every access to
 * shared memory that another domain writes goes through these helpers, so
 * reviewers and the fuzzing hook see them all.
 */
#ifndef IVMC_ATOMICS_H
#define IVMC_ATOMICS_H

#include <stdatomic.h>
#include <stdint.h>

#define ivmc_load_acquire(p)	 atomic_load_explicit((p), memory_order_acquire)
#define ivmc_store_release(p, v) atomic_store_explicit((p), (v), memory_order_release)
#define ivmc_load_once(p)	 atomic_load_explicit((p), memory_order_relaxed)
#define ivmc_store_once(p, v)	 atomic_store_explicit((p), (v), memory_order_relaxed)
#define ivmc_fence_full()	 atomic_thread_fence(memory_order_seq_cst)
#define ivmc_fence_acquire()	 atomic_thread_fence(memory_order_acquire)

/* Sequentially consistent forms, for the wake protocol's store /then/ load
 * (Dekker): on x86 the CAS and exchange are locked instructions, which are
 * full barriers, so no separate fence is paid on the per-message path. */
#define ivmc_load_sc(p)	    atomic_load_explicit((p), memory_order_seq_cst)
#define ivmc_xchg_sc(p, v)  atomic_exchange_explicit((p), (v), memory_order_seq_cst)
#define ivmc_cas_sc(p, expected, desired)                                   \
	atomic_compare_exchange_strong_explicit((p), (expected), (desired), \
						memory_order_seq_cst,       \
						memory_order_seq_cst)

/* Compare-and-swap that publishes (release) and, on failure, returns the
 * current value in *expected (acquire). Full barrier on x86. */
#define ivmc_cas_release(p, expected, desired)                            \
	atomic_compare_exchange_strong_explicit((p), (expected), (desired), \
						memory_order_acq_rel,       \
						memory_order_acquire)
#define ivmc_fetch_or_sc(p, v) atomic_fetch_or_explicit((p), (v), memory_order_seq_cst)
#define ivmc_fetch_add(p, v) atomic_fetch_add_explicit((p), (v), memory_order_acq_rel)
#define ivmc_fetch_sub(p, v) atomic_fetch_sub_explicit((p), (v), memory_order_acq_rel)

/* Tell the core we are spinning (pause on x86, yield on arm64). */
static inline void ivmc_cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
	__builtin_ia32_pause();
#elif defined(__aarch64__)
	__asm__ __volatile__("yield" ::: "memory");
#else
	atomic_signal_fence(memory_order_seq_cst);
#endif
}

/*
 * Fuzzing hook (mk/fuzz.mk, tests/fuzz/). Built with -DIVMC_FUZZ_SHM, the
 * macros above are redefined so that every value they read from memory (the
 * loads, what an exchange or fetch_op returns, what a failed CAS leaves in
 * *expected) goes through ivmc_fuzz_shm(), which the fuzz target defines. For
 * an address in an open end's shared header page (chan_fuzz_shm_find(), in
 * chan.c, walks the open ends) it may return another value, as a peer would
 * that wrote just before our access and again just after: double fetches and
 * words that change mid-operation. Private memory (the endpoint page) is left
 * alone by the target. A failed CAS never reports the value it expected.
 * Without IVMC_FUZZ_SHM nothing below is compiled and the definitions above
 * are used unchanged, so normal objects are byte-for-byte what they were.
 */
#ifdef IVMC_FUZZ_SHM
#include <stddef.h>

uint64_t ivmc_fuzz_shm(const volatile void *p, uint64_t v, size_t size);
const void *chan_fuzz_shm_find(const volatile void *p, size_t *off);

#define ivmc_fuzz_seen_(p, v) \
	((__typeof__(v))ivmc_fuzz_shm((p), (uint64_t)(v), sizeof(v)))
#define ivmc_fuzz_rmw_(op, p, ...)                                           \
	__extension__({                                                     \
		__auto_type ivmc_p_ = (p);                                  \
		__auto_type ivmc_v_ = op(ivmc_p_, __VA_ARGS__);             \
		ivmc_fuzz_seen_(ivmc_p_, ivmc_v_);                          \
	})
#define ivmc_fuzz_cas_(p, expected, desired, mo_ok, mo_fail)                \
	__extension__({                                                     \
		__auto_type ivmc_p_ = (p);                                  \
		__auto_type ivmc_e_ = (expected);                           \
		__typeof__(*ivmc_e_) ivmc_was_ = *ivmc_e_;                  \
		_Bool ivmc_ok_ = atomic_compare_exchange_strong_explicit(   \
			ivmc_p_, ivmc_e_, (desired), (mo_ok), (mo_fail));   \
		if (!ivmc_ok_) {                                            \
			__typeof__(*ivmc_e_) ivmc_now_ =                    \
				ivmc_fuzz_seen_(ivmc_p_, *ivmc_e_);         \
			if (ivmc_now_ != ivmc_was_)                         \
				*ivmc_e_ = ivmc_now_;                       \
		}                                                           \
		ivmc_ok_;                                                   \
	})

#undef ivmc_load_acquire
#undef ivmc_load_once
#undef ivmc_load_sc
#undef ivmc_xchg_sc
#undef ivmc_cas_sc
#undef ivmc_cas_release
#undef ivmc_fetch_or_sc
#undef ivmc_fetch_add
#undef ivmc_fetch_sub
#define ivmc_load_acquire(p) \
	ivmc_fuzz_rmw_(atomic_load_explicit, p, memory_order_acquire)
#define ivmc_load_once(p) \
	ivmc_fuzz_rmw_(atomic_load_explicit, p, memory_order_relaxed)
#define ivmc_load_sc(p) \
	ivmc_fuzz_rmw_(atomic_load_explicit, p, memory_order_seq_cst)
#define ivmc_xchg_sc(p, v) \
	ivmc_fuzz_rmw_(atomic_exchange_explicit, p, (v), memory_order_seq_cst)
#define ivmc_cas_sc(p, expected, desired)                       \
	ivmc_fuzz_cas_(p, expected, desired, memory_order_seq_cst, \
		       memory_order_seq_cst)
#define ivmc_cas_release(p, expected, desired)                  \
	ivmc_fuzz_cas_(p, expected, desired, memory_order_acq_rel, \
		       memory_order_acquire)
#define ivmc_fetch_or_sc(p, v) \
	ivmc_fuzz_rmw_(atomic_fetch_or_explicit, p, (v), memory_order_seq_cst)
#define ivmc_fetch_add(p, v) \
	ivmc_fuzz_rmw_(atomic_fetch_add_explicit, p, (v), memory_order_acq_rel)
#define ivmc_fetch_sub(p, v) \
	ivmc_fuzz_rmw_(atomic_fetch_sub_explicit, p, (v), memory_order_acq_rel)
#endif /* IVMC_FUZZ_SHM */

#endif
