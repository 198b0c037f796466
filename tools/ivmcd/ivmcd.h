/* SPDX-License-Identifier: MIT */
/*
 * Description: ivmcd's state. One thread, one epoll loop: clients on the
 * control socket, their registrations (connections waiting for their other
 * end, listening sockets), the channels made from pairs, the network
 * namespaces they live in, and the table published to every client.
 */
#ifndef IVMCD_H
#define IVMCD_H

#include "../common/daemon.h"
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdint.h>
#include <sys/types.h>

#include "ctl/policy.h"
#include "ctl/proto.h"
#include "kfacts.h"

#define MAX_CLIENT_MSGS	   64	/* per client per wake-up: fairness */
#define MAX_BAD_MSGS	   16	/* malformed messages before we hang up */
#define MAX_NS_ADDRS	   64	/* local addresses kept per namespace */
#define NS_REFRESH_MS	   1000 /* re-read a namespace's addresses at most this often */
#ifndef IVMCD_LINGER_US_DEFAULT
#define IVMCD_LINGER_US_DEFAULT 2000 /* --linger-us: look for work after work */
#endif
#define LINGER_EVENTS 8 /* events within linger_us that start a linger */
#ifndef IVMCD_TICK_US_DEFAULT
#define IVMCD_TICK_US_DEFAULT 100 /* --tick-us: how often, meanwhile */
#endif

#define log_err(...)   dlog(LOG_ERR, __VA_ARGS__)
#define log_warn(...)  dlog(LOG_WARN, __VA_ARGS__)
#define log_info(...)  dlog(LOG_INFO, __VA_ARGS__)
#define log_debug(...) dlog(LOG_DEBUG, __VA_ARGS__)

/* Doubly linked list, as the kernel's list_head. */
struct link {
	struct link *next, *prev;
};
#define link_entry(l, type, member) \
	((type *)((char *)(l) - __builtin_offsetof(type, member)))
void link_init(struct link *h);
void link_add(struct link *h, struct link *n); /* at the tail */
void link_del(struct link *n);
bool link_empty(const struct link *h);

/* A network namespace some client lives in. */
struct netns {
	struct link node;
	uint64_t ino;
	int fd;		    /* nsfd, for netlink and sock_diag */
	int mon;	    /* rtnetlink: its addresses changed (epoll) */
	int diag;	    /* sock_diag socket in it, kept; -1: none yet */
	int refs;	    /* clients, registrations and channel ends in it */
	int naddrs;
	uint64_t refreshed_ms;
	struct klocal addrs[MAX_NS_ADDRS];
};

/* A domain for quotas: one uid in one network namespace. */
struct domain {
	struct link node;
	uint32_t uid;
	uint64_t netns_ino;
	uint32_t channels;
	uint64_t bytes;
	int refs;
};

struct client {
	struct link node;
	struct link regs;  /* struct reg.cnode */
	struct link ends;  /* struct chan_end.cnode */
	int fd, pidfd;
	uint64_t id;
	pid_t pid;
	uint32_t uid, gid;
	struct netns *ns;  /* where its control socket was made */
	struct ctl_mailbox *mbox;
	uint32_t pending, listeners;
	uint32_t bad;
	bool hello;
};

/* A registered connection waiting for its other end, or a listener. */
struct reg {
	struct link cnode;  /* in client->regs */
	struct link tnode;  /* in the pending FIFO (by deadline) */
	struct reg *hnext;  /* hash chain by (local, remote) */
	struct client *cl;
	struct netns *ns;
	uint64_t token;
	uint64_t deadline_ms;
	struct kconn k;
	uint32_t ring_wish;
	bool listener;
};

struct channel;

/* One end of a channel, as its client registered it. */
struct chan_end {
	struct link cnode; /* in client->ends */
	struct channel *ch;
	struct client *cl; /* NULL once gone */
	struct domain *dom;
	struct netns *ns;
	uint64_t token;
	struct kconn k;
	pid_t pid;
	uint32_t uid, gid;
	uint64_t bytes_tx, bytes_rx; /* as reported at UNREG */
};

struct channel {
	struct link node;
	uint64_t id;
	uint64_t created_ms;
	uint32_t ring_size;
	uint32_t deep_size;	 /* its large areas (ring_grow), or 0 */
	uint64_t region_size;
	int region_fd;	 /* status reads the header through it (pread) */
	unsigned int rule_line;
	struct chan_end end[2];
	/* Guest mode (end[1] is in a peer VM): the slot, for guest.c. */
	struct gpeer *guest;
	const void *mem_hdr; /* the header in the mapped BAR, for status */
	uint32_t slot, gen;
	uint32_t vec;	      /* the slot's interrupt vector, or 0 (polls) */
	bool ours;	      /* the slot is in our half */
};

/* Why connections stayed on TCP, for status. */
struct why_count {
	uint64_t n[CTL_R_MAX];
};

/* One connection the daemon sent back to TCP, for status: the last
 * N_FALLBACKS of them are kept (a ring), whoever they were. */
#define N_FALLBACKS 32
struct fallback {
	uint64_t at_ms;
	struct kaddr local, remote;
	uint64_t netns_ino;
	pid_t pid;
	uint32_t uid;
	int reason;
};

struct daemon {
	int epfd, lfd, sfd, tfd, lockfd;
	int table_fd;
	struct ctl_table *table;
	const char *sock_path, *conf_path;
	struct policy *pol;
	unsigned int pol_gen;
	uint64_t id, start_ms, next_id;
	struct link clients, pending, channels, nss, domains, dead_nss;
	uint32_t nclients, npending, nchannels, nlisteners;
	struct reg **hash;
	uint32_t hash_size;
	struct why_count why;
	struct fallback fb[N_FALLBACKS];
	uint64_t nfb; /* ever recorded; fb[nfb % N_FALLBACKS] is next */
	uint64_t paired, bad_msgs, refused_clients;
	uint64_t own_netns_ino;
	uint64_t accept_paused_ms; /* accept() ran out of fds at; 0: not */
	unsigned int linger_us; /* look for work after work (--linger-us) */
	unsigned int tick_us;	/* that often meanwhile, 0: spin (--tick-us) */
	uint64_t lingers, looks, fruitful; /* lingers started, looks, looks that found work */
	uint64_t timer_armed; /* deadline the timer is set for; 0: none */
	bool table_dirty; /* rebuild the table after this round */
	bool guest;	  /* --guest: inside a VM, pairing with peer VMs */
	bool guest_poll;  /* --poll: no interrupts, the ends poll */
	bool stop;
};

extern struct daemon D;

/* main.c: empty lists, a registration hash of hash_size buckets, the
 * start time (init_state(); the fuzz targets). Returns 0 or -ENOMEM. */
int daemon_lists_init(uint32_t hash_size);
/* main.c: re-read the config (old policy kept on error; msg says why). */
int daemon_reload(char *msg, size_t len);
/* main.c: arm the expiry timer for the oldest pending registration. */
void timer_arm(void);

/* server.c: clients and their messages. */
int server_accept(void);
struct client *client_new(int fd);
void client_event(struct client *cl, uint32_t events);
void client_drop(struct client *cl, const char *why);
int client_send(struct client *cl, const void *msg, const int *fds, int nfds);
void client_nochan(struct client *cl, uint64_t token, int reason);
/* client_nochan() for a connection the daemon knows the facts of: also
 * recorded for status (which connection stayed on TCP, and why). */
void conn_nochan(struct client *cl, uint64_t token, const struct kconn *k,
		 int reason);

/* pair.c: registrations, pairing, channels. */
void reg_conn(struct client *cl, const struct ctl_reg *m, int fd);
void reg_listen(struct client *cl, const struct ctl_reg *m, int fd);
void reg_unreg(struct client *cl, const struct ctl_unreg *m);
void reg_free(struct reg *r);
void pending_expire(void);
void end_gone(struct chan_end *e);
int evacuate(const struct ctl_evacuate *m, unsigned int *count);
/* The namespace of a socket (ino: its inode if known), referenced. */
struct netns *netns_get(int sockfd, uint64_t ino);
void netns_put(struct netns *ns);
/* Its addresses changed: re-read them, republish the table. */
void netns_event(struct netns *ns);
/* Free the namespaces released during this round of events. */
void netns_reap(void);
void table_rebuild(void);
int table_create(void);

/* pair.c, for guest.c: wait for the other end; a pending registration by
 * its addresses; a channel whose other end is in a peer VM; the table. */
void reg_wait(struct reg *r);
struct reg *reg_find(const struct kaddr *local, const struct kaddr *remote);
struct channel *channel_new_remote(struct reg *r, uint32_t ring, uint64_t size,
				   int *reason);
void table_put(const uint8_t a[16], uint16_t port);

/* guest.c: ivmcd inside a VM (--guest, docs/vm.md). */
int guest_init(int epfd, void *tag);	/* find the devices, open the links */
void guest_tick(void);			/* the timer: links, control region */
bool guest_reg(struct reg *r);		/* r's peer is in a peer VM: ours */
void guest_chan_free(struct channel *ch); /* its local end is gone */
void guest_table(void);			/* publish the peer VMs' addresses */
void guest_status(FILE *f, bool json);	/* the pairs, for status */

/* status.c: the text and JSON answers to QUERY. */
int status_write(int fd, uint32_t what, bool json, uint32_t uid);

#endif
