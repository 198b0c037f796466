/* SPDX-License-Identifier: MIT */
/*
 * Description: facts about sockets and network namespaces, read from the
 * kernel alone (sockopts, SIOCGSKNS, rtnetlink, sock_diag). ivmcd trusts
 * nothing a client says; it trusts these. Single-threaded callers only.
 */
#ifndef IVMC_KFACTS_H
#define IVMC_KFACTS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* An address in IPv6 form; IPv4 is held as ::ffff:a.b.c.d, so an IPv4
 * socket and a dual-stack one see the same bytes. port in host order. */
struct kaddr {
	uint8_t a[16];
	uint16_t port;
};

/* Big enough for "[ipv6]:65535" and a NUL. */
#define KADDR_STRLEN 64

struct kconn {
	struct kaddr local, remote; /* remote is zero for a listener */
	uint64_t sock_cookie; /* SO_COOKIE */
	uint64_t netns_cookie; /* SO_NETNS_COOKIE */
	uint64_t netns_ino; /* inode of the socket's netns */
	bool listening; /* set by kfacts_listener() */
};

struct klocal {
	uint8_t a[16]; /* IPv6 form, as in struct kaddr */
	uint8_t prefix; /* as the kernel reports it: 0-32 for IPv4 */
	bool loopback; /* on an IFF_LOOPBACK device */
};

/* Facts about an ESTABLISHED TCP socket. Returns 0, -ENOTSOCK, -EPROTOTYPE
 * (not TCP over AF_INET/AF_INET6), -ENOTCONN (any other TCP state), -errno. */
int kfacts_conn(int fd, struct kconn *k);

/* Facts about a listening TCP socket. Returns 0, -EINVAL (not listening),
 * or the errors of kfacts_conn() but -ENOTCONN. */
int kfacts_listener(int fd, struct kconn *k);

/* Open the network namespace of a socket. Returns an O_CLOEXEC fd, -errno. */
int kfacts_netns_fd(int sockfd);

/* The addresses of the netns behind nsfd (rtnetlink, each recv bounded by
 * 1 s), at most max: the rest then count as not local. Returns the count,
 * -ETIMEDOUT, -errno. */
int kfacts_local_addrs(int nsfd, struct klocal *out, int max);

/* Is a local by the list: an exact match, or inside the prefix of an IPv4
 * loopback entry (127.0.0.0/8 is all local; an IPv6 prefix on lo is not). */
bool kfacts_is_local(const struct klocal *l, int n, const uint8_t a[16]);

/* Is k (cookie and 4-tuple) an ESTABLISHED TCP socket in the netns behind
 * nsfd, per sock_diag? Returns 1, 0 (gone, other state, other cookie), or
 * -errno. Sockets bound to a device (SO_BINDTODEVICE, IPv6 link-local) are
 * not found and give 0. */
int kfacts_diag_check(int nsfd, const struct kconn *k);

/* The same with a sock_diag socket kept in *sock (-1: open one and keep
 * it there; closed and reset to -1 after an error). */
int kfacts_diag_check_cached(int nsfd, int *sock, const struct kconn *k);

/* Ends of kfacts_link_check() whose way out leads into no other netns at
 * all (no route, a physical NIC, macvlan, ipvlan, tun, a router on a
 * bridge...): they can be joined to no namespace, whatever the partner. */
#define KLINK_DEAD_A 1u
#define KLINK_DEAD_B 2u

/* Are the netns of a (behind nsfd_a) and of b joined by the path their
 * packets take, as the kernel's links say now? Each end's route to its
 * peer address (from its local one) must go out of a veth whose peer is
 * the other end's device (a veth pair), or a port of the bridge the
 * other end's route goes out of, or a port of one bridge with the other
 * end's veth's peer, in a third netns (through a router on a bridge only
 * when the router is the other end's netns). Not NAT, routers, physical
 * NICs, macvlan, ipvlan, tun. For ends in two namespaces; addresses are
 * not checked here. *dead (may be NULL) gets KLINK_DEAD_* bits. Each
 * netlink answer waits at most 1 s. Returns 1 joined, 0 not, -errno
 * (could not ask: -ETIMEDOUT, -ENOMEM, ...). */
int kfacts_link_check(int nsfd_a, const struct kconn *a, int nsfd_b,
		      const struct kconn *b, unsigned int *dead);

/* The name of a netns inode under /run/netns, or "host" for the daemon's
 * own netns when it has no name there. Returns 0, -ENOENT, -ENAMETOOLONG. */
int kfacts_netns_name(uint64_t ino, char *name, size_t len);

/* The inode of /run/netns/NAME, or of the daemon's own netns for "host";
 * 0 if there is none. Fits pol_ns_resolver (ctl/policy.h). */
uint64_t kfacts_netns_ino(const char *name);

/* A pidfd (O_CLOEXEC) for the peer of an AF_UNIX socket: SO_PEERPIDFD.
 * Returns the fd, -ENOPROTOOPT before Linux 6.5 (use SO_PEERCRED), -errno. */
int kfacts_peer_pidfd(int unixfd);

/* Write "1.2.3.4:80" or "[::1]:80" (v4-mapped as IPv4) into buf, at most
 * len bytes (KADDR_STRLEN is enough). Returns buf. */
const char *kaddr_str(const struct kaddr *a, char *buf, size_t len);

/* A non-blocking rtnetlink socket in the netns behind nsfd that becomes
 * readable when an address is added or removed there. Returns it, -errno. */
int kfacts_addr_monitor(int nsfd);

#endif
