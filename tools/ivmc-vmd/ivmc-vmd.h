/* SPDX-License-Identifier: MIT */
/*
 * Description: ivmc-vmd, the host's ivshmem server for VMs (ivmc-vmd(8)):
 * the configuration (VMs, their addresses, which pairs may talk), the
 * regions and sockets made from it, and QEMU's ivshmem server protocol.
 */
#ifndef IVMC_VMD_H
#define IVMC_VMD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/un.h>

#include "../common/daemon.h"
#include "transport/ivshmem_vm.h"

#define VMD_VM_MAX	 32	/* each VM pairs with at most 31 others */
#define VMD_RULE_MAX	 256
#define VMD_PAIR_MAX	 (VMD_VM_MAX * (VMD_VM_MAX - 1) / 2)
#define VMD_PAIRNO_MAX	 32767	/* 2 * n + 1 must fit the 16-bit ID */
#define VMD_CONF_MAX	 65536	/* bytes of configuration file */
#define VMD_CMD_MAX	 4096	/* bytes of one ivmcctl request */
#define VMD_CMDC_MAX	 8	/* ivmcctl connections at once */
#define VMD_CMD_MS	 2000	/* an ivmcctl request must arrive in this */
#define VMD_HEARTBEAT_MS 250
#define VMD_SOCK_NAME	 "ivmc-vmd.sock"
#define VMD_CONF_DEFAULT "/etc/ivmc/vms.conf"
#define VMD_RUN_DEFAULT	 "/run/ivmc/vm"
#define VMD_SOCKET_ENV	 "IVMC_VM_SOCKET"

#define VMD_PAIR_SIZE_DEF  (4u << 20)
#define VMD_PAIR_RING_DEF  (256u << 10)
#define VMD_PAIR_CHANS_DEF 3u
/* MSI-X vectors of a pair device: 0 for the guests' link, then one per
 * slot that takes interrupts, half per side (docs/vm.md); the control
 * device has one. */
#define VMD_PAIR_VECTORS   33u


/* ---- configuration (conf.c) ---- */

struct conf_vm {
	char name[IVMC_VM_NAME_MAX];
	unsigned int naddr;
	struct ivmc_shm_vm_addr addr[IVMC_VM_ADDR_MAX];
};

struct conf_rule {
	bool allow;
	char a[IVMC_VM_NAME_MAX], b[IVMC_VM_NAME_MAX]; /* b may be "*" */
};

struct conf {
	bool pairs_all;	     /* the default before the rules */
	uint64_t pair_size;  /* bytes of each pair region, power of two */
	uint32_t pair_ring;  /* ring bytes of each channel in it */
	uint32_t pair_chans; /* channels laid out in it */
	unsigned int nvm, nrule;
	struct conf_vm vm[VMD_VM_MAX];
	struct conf_rule rule[VMD_RULE_MAX];
};

/* Defaults: no VMs, every pair allowed, 4 MiB regions of 3 channels. */
void conf_init(struct conf *c);

/* Parse text (NUL-terminated) into *c. Returns 0, or -EINVAL with the
 * reason ("line N: ...") in err. */
int conf_parse(const char *text, struct conf *c, char *err, size_t errlen);

/* Read and parse the file; a missing file is an empty configuration.
 * Returns 0 or -errno with the reason in err. */
int conf_load(const char *path, struct conf *c, char *err, size_t errlen);

/* Write c to path atomically (a temporary file renamed over it), mode
 * 0600. Returns 0 or -errno. */
int conf_save(const char *path, const struct conf *c);

/* Check what parsing cannot (names of rules exist, the layout fits).
 * Returns 0 or -EINVAL with the reason in err. */
int conf_check(const struct conf *c, char *err, size_t errlen);

/* Index of VM name, or -1. */
int conf_find(const struct conf *c, const char *name);

/* May VMs a and b (indices) have a pair region? */
bool conf_allowed(const struct conf *c, unsigned int a, unsigned int b);

/* A valid VM name: 1..31 of [A-Za-z0-9_-], starting with a letter or
 * digit. */
bool conf_name_ok(const char *s);

/* Parse an IPv4 or IPv6 address. Returns 0 or -EINVAL. */
int conf_addr(const char *s, struct ivmc_shm_vm_addr *a);

/* Print an address into buf (INET6_ADDRSTRLEN bytes). */
const char *conf_addr_str(const struct ivmc_shm_vm_addr *a, char *buf);

/* ---- the running state (vm.c) ---- */

struct dev;

/* What an epoll event points at. */
enum { EV_CMD_LISTEN = 1, EV_CMD_CONN, EV_SIGNAL, EV_TIMER, EV_DEV_LISTEN,
       EV_DEV_CONN };

struct ev {
	int type; /* EV_* */
	struct dev *dev;
};

/* One QEMU connected to a device socket. */
struct conn {
	int fd;	 /* -1: none */
	int efd[VMD_PAIR_VECTORS]; /* its vectors' eventfds, [0] first (we
				    * keep copies: we can ring them) */
	unsigned int nvec;	   /* how many */
	pid_t pid;
};

/* A device of one VM: one listening socket, at most one QEMU on it. */
struct dev {
	struct ev lev, cev; /* listening socket, connection */
	struct vmst *vm;
	struct pairst *pair; /* NULL: the VM's control device */
	int side;	     /* pair device: 0 or 1 */
	uint16_t id;	     /* the ID the QEMU gets */
	int lfd;
	char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
	struct conn c;
};

struct vmst {
	bool used;
	struct conf_vm cf;
	char dir[sizeof(((struct sockaddr_un *)0)->sun_path)];
	int memfd;
	struct ivmc_shm_vm_ctl *ctl; /* mapped, IVMC_VM_CTL_SIZE */
	struct dev ctldev;
	unsigned int nconn; /* devices with a QEMU connected */
	pid_t pid;	    /* that QEMU, while nconn > 0 */
	uint64_t gen;	    /* times it went from no connection to one */
	uint64_t seq, beat; /* what we last wrote there: the guest can write
			     * its region too, so we never read it back */
};

struct pairst {
	bool used;
	struct vmst *vm[2]; /* side 0: the name that sorts first */
	uint32_t no;	    /* pair number: IDs 2 * no + side */
	int memfd;
	uint8_t *map;
	uint64_t size;
	uint32_t ring, nchan;
	uint64_t epoch;
	uint8_t state[2];   /* IVMC_VM_PEER_* of each side */
	uint64_t gen[2];    /* connections of each side so far */
	struct dev dev[2];
};

struct vmd {
	const char *conf_path, *run_dir;
	char sock_path[sizeof(((struct sockaddr_un *)0)->sun_path)];
	int epfd;
	uint64_t host_id;
	uint32_t next_pairno;
	struct conf conf;
	struct vmst vm[VMD_VM_MAX];
	struct pairst pair[VMD_PAIR_MAX];
	bool changed; /* devices were added or removed: the epoll batch is stale */
};

extern struct vmd V;

/* Make the running state match V.conf: new VMs and pairs get their regions
 * and sockets, removed ones are closed (their QEMUs are disconnected).
 * Returns 0 or -errno with the reason in err (what was done stays). */
int vm_apply(char *err, size_t errlen);

/* Close everything (exit). */
void vm_shutdown(void);

/* A device's listening socket is readable: take the QEMU. */
void vm_accept(struct dev *d);

/* A device's connection is readable or hung up: QEMUs never write, so this
 * is its end (or garbage: dropped). */
void vm_conn_event(struct dev *d);

/* Heartbeat: bump every control region's counter. */
void vm_tick(void);

/* The running VM with this name, or NULL. */
struct vmst *vm_find(const char *name);

/* The pair of VMs a and b, or NULL. */
struct pairst *vm_pair(const struct vmst *a, const struct vmst *b);

/* ---- ivmcctl requests (cmd.c) ---- */

/* Answer one request (argv of argc strings) into out (a growing text).
 * Returns 0 (ok) or 1 (error, the text says why). */
int cmd_run(int argc, char **argv, char **out, size_t *outlen);


#endif
