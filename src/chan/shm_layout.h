/* SPDX-License-Identifier: MIT */
/*
 * Description: the layout of a channel's shared region. This header is a
 * wire format between two binaries that do not trust each other: every
 * field says who writes it and when; everything read from here is copied
 * once, validated, then used (see docs/protocol.md).
 */
#ifndef IVMC_SHM_LAYOUT_H
#define IVMC_SHM_LAYOUT_H

#include <assert.h>
#include <stddef.h>
#include <stdint.h>

#include "../ring/atomics.h"

#define IVMC_SHM_MAGIC	 0x434d5649u /* "IVMC" read as little-endian */
#define IVMC_SHM_VERSION 2u
#define IVMC_CACHELINE	 64u
#define IVMC_SHM_HDR_SIZE 4096u	    /* ring data starts page aligned */
#define IVMC_RING_MIN	 4096u
#define IVMC_RING_MAX	 (1u << 30)

/* Header flags (immutable after creation). */
#define IVMC_SHM_F_SIDE 0x1u /* the channel has a side stream (TCP) and starts on it */

/*
 * The producer word (struct ivmc_shm_dir.prod):
 *   bit 63      CLOSED: this epoch's ring is closed; set by the producer
 *               (detach) with CAS or by the consumer (its own detach) with
 *               fetch_or. Once set it stays until the producer opens the
 *               next epoch, which it may only do when the consumer is ready.
 *   bits 62..32 EPOCH: number of the current (or last) ring epoch.
 *   bits 31..0  CTR: free-running count of bytes published into the ring.
 * The producer publishes every batch with compare-and-swap against the value
 * it last wrote, so a CLOSED set by the consumer is never overwritten: the
 * failed CAS tells the producer those bytes must go on the side stream.
 *
 * The consumer word (struct ivmc_shm_dir.cons):
 *   bits 62..32 READY: the epoch the consumer is ready to read from the ring
 *               (it has mapped the region and drained every earlier epoch).
 *   bits 31..0  CTR: free-running count of bytes consumed from the ring.
 */
#define IVMC_PW_CLOSED	    (1ull << 63)
#define IVMC_W_EPOCH_SHIFT  32
#define IVMC_W_EPOCH_MASK   0x7fffffffu
#define ivmc_w_ctr(w)	    ((uint32_t)(w))
#define ivmc_w_epoch(w)	    ((uint32_t)((w) >> IVMC_W_EPOCH_SHIFT) & IVMC_W_EPOCH_MASK)
#define ivmc_w_make(e, ctr) (((uint64_t)((e) & IVMC_W_EPOCH_MASK) << IVMC_W_EPOCH_SHIFT) | (uint32_t)(ctr))

/*
 * The deep word (struct ivmc_shm_dir.deep), written by the producer only
 * (docs/protocol.md 3.7): where the direction's bytes are.
 *   bit 32      DEEP: bytes from counter X on are in the large area L, at
 *               (ctr - X) mod deep_size; bytes before X in the ring S.
 *               Clear: every byte the consumer has not read is in S.
 *   bits 31..0  X when DEEP (the counter at which the producer went deep),
 *               else the counter at which it came back to S.
 * The producer changes it only before publishing anything past it (and
 * comes back to S only with everything consumed), so a consumer that
 * loads it after the producer word finds the right place of every byte
 * that word published.
 */
#define IVMC_DEEP_ON	  (1ull << 32)
#define ivmc_deep_make(on, ctr) (((on) ? IVMC_DEEP_ON : 0) | (uint32_t)(ctr))

/* fin: bit 63 set once the producer shut the direction down; bits 62..0 are
 * the stream offset of its end (every byte before it was sent). */
#define IVMC_FIN_SET	(1ull << 63)
#define IVMC_OFF_MASK	(IVMC_FIN_SET - 1)

/*
 * One direction of a channel: data flows from side d to side 1 - d.
 * Six cache lines: the two counters that move on every message each have a
 * line (with a guard line after it, as DPDK's RTE_CACHE_GUARD, against the
 * adjacent-line prefetcher), and the two needs-wakeup flags each have a line
 * that is written only when someone goes to sleep, so the check after every
 * publish hits a line both caches share.
 */
struct ivmc_shm_dir {
	/* Line 0, written by the producer (the consumer only sets CLOSED). */
	_Atomic uint64_t prod;	    /* producer word, above */
	_Atomic uint64_t attach;    /* stream offset at which EPOCH begins;
				     * written (release) before the CAS that
				     * opens the epoch, constant while it lasts */
	_Atomic uint64_t fin;	    /* IVMC_FIN_SET | end offset, or 0 */
	_Atomic uint64_t deep;	    /* the deep word, above */
	uint64_t pad0[4];
	uint8_t guard0[IVMC_CACHELINE];
	/* Line 2, written by the consumer only. */
	_Atomic uint64_t cons;	    /* consumer word, above */
	uint64_t pad1[7];
	uint8_t guard1[IVMC_CACHELINE];
	/* Line 4: odd while the consumer sleeps for data, a new value for
	 * every sleep; written by the consumer only. cons_cpu: the CPU the
	 * consumer last ran on, a hint (a waiter on that CPU does not spin). */
	_Atomic uint32_t cons_wait;
	_Atomic uint32_t cons_cpu;
	uint32_t pad2[14];
	/* Line 5: the same for a producer asleep for space. */
	_Atomic uint32_t prod_wait;
	_Atomic uint32_t prod_cpu;
	uint32_t pad3[14];
};

/*
 * The region: this header (one page), then ring 0's data, then ring 1's
 * data, each ring_size bytes, then (if deep_size) the large areas L of
 * direction 0 and 1, deep_size bytes each, untouched until a producer
 * goes deep. Side 0 is the creator's side. Everything above
 * dir[] is written once by the creator before either fd is handed out and
 * never changes; a peer could still scribble on it, so each side copies it
 * once at open and never reads it again.
 */
struct ivmc_shm_hdr {
	uint32_t magic;		/* IVMC_SHM_MAGIC */
	uint32_t version;	/* IVMC_SHM_VERSION */
	uint32_t hdr_size;	/* IVMC_SHM_HDR_SIZE */
	uint32_t ring_size;	/* bytes per ring, power of two */
	uint64_t region_size;	/* hdr_size + 2 * (ring_size + deep_size) */
	uint32_t flags;		/* IVMC_SHM_F_* */
	uint32_t init_ctr[2];	/* starting CTR of each ring (tests use 2^32 - k) */
	uint32_t deep_size;	/* bytes of each large area: 0 (none), or a
				 * power of two >= ring_size */
	uint32_t reserved[6];	/* zero */
	uint8_t pad[192];
	struct ivmc_shm_dir dir[2];
};

static_assert(ATOMIC_LLONG_LOCK_FREE == 2, "64-bit atomics must be lock-free");
static_assert(ATOMIC_INT_LOCK_FREE == 2, "32-bit atomics must be lock-free");
static_assert(sizeof(struct ivmc_shm_dir) == 6 * IVMC_CACHELINE, "dir layout");
static_assert(offsetof(struct ivmc_shm_dir, cons) == 2 * IVMC_CACHELINE, "cons line");
static_assert(offsetof(struct ivmc_shm_dir, cons_wait) == 4 * IVMC_CACHELINE, "wait lines");
static_assert(offsetof(struct ivmc_shm_dir, prod_wait) == 5 * IVMC_CACHELINE, "wait lines");
static_assert(offsetof(struct ivmc_shm_hdr, dir) == 256, "hdr layout");
static_assert(sizeof(struct ivmc_shm_hdr) <= IVMC_SHM_HDR_SIZE, "hdr fits a page");

#endif
