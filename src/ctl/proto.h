/* SPDX-License-Identifier: MIT */
/*
 * Description: the control protocol between ivmc processes and ivmcd, and
 * the layout of the read-only table ivmcd publishes. Fixed-size, versioned
 * binary messages over an AF_UNIX SOCK_SEQPACKET socket, one message per
 * packet; file descriptors travel with SCM_RIGHTS. ivmcd validates every
 * client message as hostile input (docs/control.md).
 */
#ifndef IVMC_CTL_PROTO_H
#define IVMC_CTL_PROTO_H

#include <assert.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#define CTL_MAGIC   0x4443564du /* "MVCD" as little-endian bytes */
#define CTL_VERSION 1u

/* Where the daemon listens: -s/--socket, else $IVMC_SOCKET, else this. */
#define CTL_SOCKET_DEFAULT "/run/ivmc/ivmcd.sock"
#define CTL_SOCKET_ENV	   "IVMC_SOCKET"

/* Message types. C: client to daemon, D: daemon to client. */
enum ctl_type {
	CTL_HELLO = 1,	  /* C: first message; fd: mailbox memfd (optional) */
	CTL_WELCOME,	  /* D: reply to HELLO; fd: the table, read-only */
	CTL_REG_CONN,	  /* C: accelerate this connection; fd: its TCP socket */
	CTL_CHAN,	  /* D: the channel for a REG_CONN; fds: region, doorbell */
	CTL_NOCHAN,	  /* D: no channel for a REG_CONN (reason) */
	CTL_UNREG,	  /* C: forget a REG_CONN / REG_LISTEN (closed) */
	CTL_REG_LISTEN,	  /* C: a listening socket; fd: the socket */
	CTL_QUERY,	  /* C: status / policy text; reply RESULT + memfd */
	CTL_RELOAD,	  /* C: re-read the config file; reply RESULT */
	CTL_EVACUATE,	  /* C: detach every channel of a uid/netns; RESULT */
	CTL_DETACH,	  /* D: move this channel back to TCP now (evacuate) */
	CTL_RESULT,	  /* D: outcome of QUERY/RELOAD/EVACUATE, or an error */
	CTL_CHAN_MEM,	  /* D: the channel for a REG_CONN at an offset of
			   * memory shared with a peer VM; fd: that memory */
	CTL_PEER_GONE,	  /* D: the peer of this channel is gone (its VM) */
	CTL_TYPE_MAX
};

/* Every message starts with this. size is the whole message's size, which
 * must equal the fixed size of its type. */
struct ctl_hdr {
	uint32_t magic;
	uint16_t version;
	uint16_t type;
	uint32_t size;
	uint32_t flags; /* per type; unknown bits must be zero */
};

/* HELLO: no fields beyond the header. flags: none yet. With a mailbox fd
 * (a sealed memfd of CTL_MAILBOX_SIZE bytes), ivmcd bumps
 * ctl_mailbox.seq after queueing each message, so a client can tell that
 * something waits without a system call. */
#define CTL_MAILBOX_SIZE 4096u
struct ctl_mailbox {
	_Atomic uint32_t seq;
};

struct ctl_hello {
	struct ctl_hdr h;
	uint64_t reserved; /* zero */
};

struct ctl_welcome {
	struct ctl_hdr h;
	uint64_t client_id; /* ivmcd's name for this client */
	uint64_t daemon_id; /* changes when the daemon restarts */
	uint32_t daemon_pid;
	uint32_t table_size; /* bytes of the table fd */
};

/* REG_CONN: token is the client's name for the connection, echoed in CHAN
 * and NOCHAN; ring_size a wish (0: policy's). */
struct ctl_reg {
	struct ctl_hdr h;
	uint64_t token;
	uint32_t ring_size;
	uint32_t reserved; /* zero */
};

/* CHAN: side 0 or 1 (which end of the region is ours). */
struct ctl_chan {
	struct ctl_hdr h;
	uint64_t token;
	uint64_t chan_id;
	uint32_t side;
	uint32_t ring_size;
};

/* CHAN_MEM (ivmcd --guest): the region is the size bytes at offset (page
 * aligned) of the first fd, an ivshmem BAR shared with the peer's VM. With
 * bell_peer 0 there is no doorbell (the ends poll: docs/vm.md) and no other
 * fd. Else two more fds: an eventfd the slot's interrupt (MSI-X vector
 * bell_vec of our device) lands on, and the device's registers (BAR0), to
 * ring vector bell_vec of the device with ID bell_peer. */
struct ctl_chan_mem {
	struct ctl_hdr h;
	uint64_t token;
	uint64_t chan_id;
	uint64_t offset;
	uint64_t size;
	uint32_t side;
	uint32_t ring_size;
	uint32_t bell_peer;
	uint32_t bell_vec;
};

/* PEER_GONE: the end of token's channel on the other side is gone for
 * good (its VM stopped): read what it published, then the end. */
struct ctl_peer_gone {
	struct ctl_hdr h;
	uint64_t token;
};

/* Why a connection stays on TCP (NOCHAN.reason, ivmcctl's "why"). */
enum ctl_reason {
	CTL_R_NONE = 0,
	CTL_R_EXPIRED,	   /* the other end never registered in time */
	CTL_R_AMBIGUOUS,   /* more than one candidate peer (e.g. NAT) */
	CTL_R_DENIED,	   /* policy said no */
	CTL_R_QUOTA,	   /* a quota is reached */
	CTL_R_NOT_TCP,	   /* the fd is not a connected TCP socket */
	CTL_R_NOT_LOCAL,   /* an address is not local to its namespace */
	CTL_R_DUPLICATE,   /* the same socket registered twice */
	CTL_R_NO_MEMORY,   /* creating the channel failed */
	CTL_R_PEER_FAILED, /* the other end could not take its half */
	CTL_R_LIMIT,	   /* too many registrations from this client */
	CTL_R_MAX
};

struct ctl_nochan {
	struct ctl_hdr h;
	uint64_t token;
	uint32_t reason; /* enum ctl_reason */
	uint32_t reserved;
};

/* UNREG: token of a REG_CONN or REG_LISTEN; bytes: what the client moved
 * each way in total (for the log and status), if it knows. */
struct ctl_unreg {
	struct ctl_hdr h;
	uint64_t token;
	uint64_t bytes_tx, bytes_rx;
};

/* QUERY: what (below); flags CTL_Q_JSON for JSON instead of a table. */
#define CTL_Q_STATUS 1u
#define CTL_Q_POLICY 2u
#define CTL_Q_JSON   0x1u
struct ctl_query {
	struct ctl_hdr h;
	uint32_t what;
	uint32_t reserved;
};

/* RELOAD: header only (plus padding). */
struct ctl_reload {
	struct ctl_hdr h;
	uint64_t reserved;
};

/* EVACUATE: every channel whose either end matches uid (if has_uid) and/or
 * netns (if nonzero) is told to detach (CTL_DETACH). */
struct ctl_evacuate {
	struct ctl_hdr h;
	uint64_t netns_ino; /* inode of the netns; 0: any */
	uint32_t uid;
	uint32_t has_uid;
};

/* DETACH: to a client, for its connection token. */
struct ctl_detach {
	struct ctl_hdr h;
	uint64_t token;
};

/* RESULT: err is 0 or a positive errno; text a NUL-terminated message
 * (a reload error names the line). QUERY replies carry one fd: a sealed
 * memfd of `size` bytes holding the text or JSON. */
#define CTL_TEXT_MAX 240u
struct ctl_result {
	struct ctl_hdr h;
	int32_t err;
	uint32_t size;
	char text[CTL_TEXT_MAX];
};

/* The largest message, for receive buffers (plus one byte to see a
 * too-long packet). */
#define CTL_MSG_MAX sizeof(struct ctl_result)

/* Size of each type's message, 0 for an unknown type. */
static inline uint32_t ctl_type_size(uint32_t type)
{
	switch (type) {
	case CTL_HELLO: return sizeof(struct ctl_hello);
	case CTL_WELCOME: return sizeof(struct ctl_welcome);
	case CTL_REG_CONN: return sizeof(struct ctl_reg);
	case CTL_CHAN: return sizeof(struct ctl_chan);
	case CTL_NOCHAN: return sizeof(struct ctl_nochan);
	case CTL_UNREG: return sizeof(struct ctl_unreg);
	case CTL_REG_LISTEN: return sizeof(struct ctl_reg);
	case CTL_QUERY: return sizeof(struct ctl_query);
	case CTL_RELOAD: return sizeof(struct ctl_reload);
	case CTL_EVACUATE: return sizeof(struct ctl_evacuate);
	case CTL_DETACH: return sizeof(struct ctl_detach);
	case CTL_RESULT: return sizeof(struct ctl_result);
	case CTL_CHAN_MEM: return sizeof(struct ctl_chan_mem);
	case CTL_PEER_GONE: return sizeof(struct ctl_peer_gone);
	default: return 0;
	}
}

/* Number of fds each type carries (exactly). HELLO carries 0 or 1;
 * CHAN_MEM 1, or 3 with a doorbell (bell_peer). */
static inline int ctl_type_fds(uint32_t type)
{
	switch (type) {
	case CTL_WELCOME: case CTL_REG_CONN: case CTL_REG_LISTEN:
	case CTL_CHAN_MEM: return 1;
	case CTL_CHAN: return 2;
	default: return 0;
	}
}

/* Fill a message header for type (size from the type). */
static inline void ctl_hdr_init(struct ctl_hdr *h, uint32_t type,
				uint32_t flags)
{
	h->magic = CTL_MAGIC;
	h->version = CTL_VERSION;
	h->type = (uint16_t)type;
	h->size = ctl_type_size(type);
	h->flags = flags;
}

/*
 * The table: a memfd ivmcd writes and every client maps read-only (the fd
 * it receives is opened O_RDONLY). It lists the addresses that are local
 * to a network namespace holding an ivmc client (port 0) and the
 * addresses:ports of listening sockets registered by ivmc clients, so a
 * process can tell without a system call that a peer cannot be co-located.
 * It is a hint: pairing decides. Readers use the seqlock: read seq (even),
 * read entries, re-read seq; retry a bounded number of times, then assume
 * "maybe co-located".
 */
#define CTL_TABLE_MAGIC 0x4c425456u /* "VTBL" */
#define CTL_TABLE_SLOTS 8192u	    /* power of two */

struct ctl_tab_entry {
	uint8_t addr[16];  /* IPv6, or IPv4-mapped ::ffff:a.b.c.d */
	uint16_t port;	   /* host order; 0: the address, any port */
	_Atomic uint16_t used; /* 1 in use, 0 empty (open addressing) */
	uint32_t pad;
};

struct ctl_table {
	uint32_t magic;
	uint32_t slots;		  /* CTL_TABLE_SLOTS */
	_Atomic uint32_t seq;	  /* odd while ivmcd writes */
	uint32_t count;
	uint32_t overflow;	  /* 1: the table is full, assume maybe */
	uint32_t pad[11];
	struct ctl_tab_entry e[CTL_TABLE_SLOTS];
};

#define CTL_TABLE_SIZE ((sizeof(struct ctl_table) + 4095u) & ~4095u)

static_assert(sizeof(struct ctl_tab_entry) == 24, "table entry");
static_assert(offsetof(struct ctl_table, e) == 64, "table header");
static_assert(sizeof(struct ctl_chan_mem) <= CTL_MSG_MAX, "CTL_MSG_MAX");

/* Hash of an entry's key, for the open-addressing table. */
static inline uint32_t ctl_tab_hash(const uint8_t addr[16], uint16_t port)
{
	uint32_t h = 2166136261u;

	for (int i = 0; i < 16; i++)
		h = (h ^ addr[i]) * 16777619u;
	h = (h ^ (port & 0xff)) * 16777619u;
	h = (h ^ (port >> 8)) * 16777619u;
	return h;
}

#endif
