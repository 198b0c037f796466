/* SPDX-License-Identifier: MIT */
/*
 * Description: what the host's ivshmem server (ivmc-vmd(8)) and a guest
 * share, and the guest's side of reading it: the layout of a VM's control
 * region and of a pair region's first page, the ivshmem IDs that tell the
 * devices apart, and helpers to find the devices and read the control
 * region. A wire format like shm_layout.h: every field says who writes it.
 *
 * Every ivshmem-doorbell device of a VM comes from ivmc-vmd. The device's
 * ID (the IVPosition register, BAR0 + 8) is set by the server when QEMU
 * starts and cannot be changed by any guest:
 *   IVMC_VM_ID_CTL    the VM's control region: shared by this VM and the
 *                     host only; the host writes it, the guest only reads.
 *   2 * n + side      the data region of pair number n (n >= 1), shared by
 *                     the two VMs of that pair only; side 0 is the VM whose
 *                     name sorts first.
 *   0                 not configured for interrupts (ivshmem-plain) or not
 *                     ours: never used.
 * A guest learns which pair device belongs to which peer VM from its control
 * region only (never from a pair region, which the peer can write), and uses
 * a pair device only while its control region lists the device's ID.
 */
#ifndef IVMC_IVSHMEM_VM_H
#define IVMC_IVSHMEM_VM_H

#include <assert.h>
#include <stdint.h>

#include "../ring/atomics.h"

#define IVMC_VM_CTL_MAGIC   0x4c43564du /* "MVCL" read as little-endian */
#define IVMC_VM_CTL_VERSION 1u
#define IVMC_VM_CTL_SIZE    16384u	  /* the control region (its BAR) */
#define IVMC_VM_PAIR_MAGIC  0x50564d49u /* "IMVP" */
#define IVMC_VM_PAIR_VERSION 1u
#define IVMC_VM_PAIR_HDR    4096u	  /* the pair header page */

#define IVMC_VM_NAME_MAX 32 /* with the NUL: names of 1..31 characters */
#define IVMC_VM_ADDR_MAX 8
#define IVMC_VM_PAIR_MAX 31
#define IVMC_VM_ID_CTL	 1u
#define IVMC_VM_ID_MAX	 65535u

/* pair.peer_state: the peer VM's device for this pair, as the host sees
 * its QEMU's connection. */
#define IVMC_VM_PEER_ABSENT 0u /* never connected in this epoch */
#define IVMC_VM_PEER_UP	    1u /* its QEMU is connected: it runs */
#define IVMC_VM_PEER_GONE   2u /* its QEMU went away (died, or stopped) */

struct ivmc_shm_vm_addr {
	uint8_t family; /* 4 or 6 */
	uint8_t pad[3];
	uint8_t addr[16]; /* network order; IPv4 in the first 4 bytes */
};

/* One pair this VM belongs to. */
struct ivmc_shm_vm_pair {
	char peer[IVMC_VM_NAME_MAX]; /* the peer VM's name, NUL-terminated */
	uint16_t id;	   /* IVPosition of our device for this pair */
	uint16_t peer_id;  /* the peer's: ring it with peer_id << 16 | vector */
	uint8_t side;	   /* ours, 0 or 1: id == 2 * n + side */
	uint8_t attached;  /* 1 while our own QEMU holds this device */
	uint8_t peer_state; /* IVMC_VM_PEER_* */
	uint8_t naddr;	   /* addr[] entries in use */
	uint64_t epoch;	   /* the region's session, from 1; a new one each
			    * time either side connects, after the host
			    * zeroed the region and laid it out again */
	uint64_t peer_gen; /* times the peer's QEMU connected to this pair */
	uint64_t region_size; /* bytes of the region (its BAR) */
	uint32_t chan_off; /* first channel, page aligned */
	uint32_t nchan;	   /* channels laid out from chan_off, back to back */
	uint32_t ring_size; /* each one's ring bytes (chan_region_init()) */
	uint32_t reserved[5];
	struct ivmc_shm_vm_addr addr[IVMC_VM_ADDR_MAX]; /* the peer's */
};

/*
 * The control region: written by the host only. magic, version, size and
 * heartbeat_ms are written once before the region is handed to QEMU;
 * heartbeat is bumped every heartbeat_ms on its own. Everything from
 * host_id on is a seqlock's data: the host makes seq odd, writes, makes it
 * even again; a reader copies it between two equal even reads of seq.
 */
struct ivmc_shm_vm_ctl {
	uint32_t magic;	       /* IVMC_VM_CTL_MAGIC */
	uint32_t version;      /* IVMC_VM_CTL_VERSION */
	uint32_t size;	       /* sizeof(struct ivmc_shm_vm_ctl) */
	uint32_t heartbeat_ms; /* the host's heartbeat period */
	_Atomic uint64_t seq;
	_Atomic uint64_t heartbeat; /* stops when the server is gone */
	uint64_t host_id;      /* random per server start */
	uint64_t vm_gen;       /* times this VM's QEMU connected so far */
	char name[IVMC_VM_NAME_MAX]; /* this VM, as the host calls it */
	uint32_t naddr;	       /* addr[] in use */
	uint32_t npair;	       /* pair[] in use */
	struct ivmc_shm_vm_addr addr[IVMC_VM_ADDR_MAX]; /* this VM's */
	struct ivmc_shm_vm_pair pair[IVMC_VM_PAIR_MAX];
};

/*
 * A pair region's first page, written by the host when it (re)lays the
 * region out and when a side goes away. Either guest can write it too, so
 * it is only a hint (a quick "look at your control region"); the control
 * region is the authority.
 */
struct ivmc_shm_vm_pairhdr {
	uint32_t magic;	      /* IVMC_VM_PAIR_MAGIC */
	uint32_t version;     /* IVMC_VM_PAIR_VERSION */
	_Atomic uint64_t epoch; /* as in the control regions */
	_Atomic uint32_t gone; /* 1 once a side went away in this epoch */
	uint32_t chan_off, nchan, ring_size;
};

/*
 * A message on a pair's link (channel 0 of the pair region, a ring-only
 * channel), from one guest's daemon to the other's (ivmcd --guest,
 * docs/vm.md). Written by the sending guest only; the receiver copies each
 * whole message out of the ring, then checks it: the peer VM is not
 * trusted. Addresses and ports are the sender's view of its connection
 * (host byte order ports, addresses as struct kaddr: IPv4 mapped).
 */
#define IVMC_VM_MSG_MAGIC 0x4b4e4c47u /* "GLNK" */
#define IVMC_VM_MSG_SIZE  64u

enum {
	IVMC_VM_MSG_REG = 1, /* this end of a connection waits for a channel */
	IVMC_VM_MSG_CHAN,    /* the allocator made it in slot, generation gen */
	IVMC_VM_MSG_NOCHAN,  /* the connection stays on TCP: reason */
	IVMC_VM_MSG_FREE,    /* our end let slot (of gen) of your half go */
};

struct ivmc_shm_vm_msg {
	uint32_t magic;	     /* IVMC_VM_MSG_MAGIC */
	uint16_t type;	     /* IVMC_VM_MSG_* */
	uint16_t reason;     /* NOCHAN: enum ctl_reason */
	uint8_t la[16], ra[16]; /* the sender's local and remote address */
	uint16_t lport, rport;
	uint32_t slot;	     /* CHAN, FREE: in the allocator's half */
	uint32_t gen;	     /* CHAN, FREE: the slot's generation */
	uint32_t ring_size;  /* CHAN: the host's pair ring size */
	uint32_t vec;	     /* REG: the sender's vectors that take
			      * interrupts (0: none); CHAN: the slot's
			      * vector (0: none, the ends poll) */
	uint32_t pad;	     /* zero */
};

/*
 * Interrupts for the slots (docs/vm.md): a pair device's vector 0 is the
 * link's; with both guests taking nvec vectors (the smaller count of the
 * two), slot i < k of side s's half has vector 1 + s * k + i, where k =
 * (nvec - 1) / 2. Slots beyond k poll. Returns k.
 */
static inline uint32_t ivmc_vm_vec_slots(uint32_t nvec_a, uint32_t nvec_b)
{
	uint32_t n = nvec_a < nvec_b ? nvec_a : nvec_b;

	return n >= 3 ? (n - 1) / 2 : 0;
}

static_assert(sizeof(struct ivmc_shm_vm_addr) == 20, "addr layout");
static_assert(sizeof(struct ivmc_shm_vm_pair) == 256, "pair layout");
static_assert(sizeof(struct ivmc_shm_vm_ctl) <= IVMC_VM_CTL_SIZE,
	      "control region fits");
static_assert(sizeof(struct ivmc_shm_vm_msg) == IVMC_VM_MSG_SIZE,
	      "link message layout");

/*
 * The guests' carving of a pair region (ivmcd --guest, docs/vm.md): the
 * host's nchan channels of ring-byte rings from chan_off (channel 0: the
 * link between the two guests' daemons), then two halves of nslots slots,
 * side 0's first; each slot holds one channel with a side stream and
 * rings of the same size (slot_size: chan_region_size(ring, 0)). Both
 * guests and the host compute it from the host's own numbers.
 */
static inline void ivmc_vm_carve(uint64_t region_size, uint32_t chan_off,
				 uint32_t nchan, uint64_t slot_size,
				 uint64_t *base, uint32_t *nslots)
{
	uint64_t b = chan_off + (uint64_t)nchan * slot_size;

	*base = b;
	*nslots = slot_size && region_size > b
			  ? (uint32_t)((region_size - b) / 2 / slot_size) : 0;
}

/* Where slot i of side's half starts. */
static inline uint64_t ivmc_vm_slot_off(uint64_t base, uint32_t nslots,
					uint64_t slot_size, int side, uint32_t i)
{
	return base + ((uint64_t)side * nslots + i) * slot_size;
}

/* The IDs of pair number n's two sides. */
#define ivmc_vm_pair_id(n, side) ((uint16_t)(2u * (n) + (side)))

/* Guest: list the ivshmem devices (PCI 1af4:1110) in sysfs: up to max BDFs
 * ("0000:00:04.0") into bdf. Returns how many (>= 0), or -errno. */
int xport_ivshmem_list(char (*bdf)[13], int max);

/* Guest: the device's ID (IVPosition, from BAR0) after enabling it.
 * Returns 0 and *id, -ENODEV, -EINVAL (bdf) or -errno. */
int xport_ivshmem_id(const char *bdf, uint32_t *id);

/* Guest: copy the control region mapped at map (len bytes) into *out under
 * its seqlock, and check it (magic, version, counts, strings, IDs). Returns
 * 0, -EAGAIN (the host kept writing; try again), -EMSGSIZE (len too small)
 * or -EPROTO (not a valid control region). */
int xport_vm_ctl_read(const void *map, uint64_t len,
		      struct ivmc_shm_vm_ctl *out);

/* Guest: the seqlock word (unchanged since the last read: nothing changed)
 * and the heartbeat. */
uint64_t xport_vm_ctl_seq(const void *map);
uint64_t xport_vm_ctl_heartbeat(const void *map);

#endif
