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

#endif
