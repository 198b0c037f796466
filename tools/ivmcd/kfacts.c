// SPDX-License-Identifier: MIT
/*
 * Description: what the kernel says about a socket handed to ivmcd: its
 * 4-tuple, cookies and netns; the addresses of a netns (rtnetlink); whether
 * a socket still exists (sock_diag); whether two namespaces are joined by
 * a veth pair or a bridge (rtnetlink); the names `ip netns` gives
 * namespaces.
 */
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/if_link.h>
#include <linux/inet_diag.h>
#include <linux/net_namespace.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <linux/sock_diag.h>
#include <net/if.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#include "kfacts.h"

/* Newer than the glibc 2.36 / Linux 6.1 headers of Debian 12. */
#ifndef SO_COOKIE
#define SO_COOKIE 57
#endif
#ifndef SO_NETNS_COOKIE
#define SO_NETNS_COOKIE 71
#endif
#ifndef SO_PEERPIDFD
#define SO_PEERPIDFD 77
#endif
#ifndef SIOCGSKNS
#define SIOCGSKNS 0x894C
#endif

#define NETNS_DIR "/run/netns"
#define NL_BUFSZ 32768 /* the largest skb a netlink dump fills */
#define MAX_LO_IFS 8 /* IFF_LOOPBACK devices remembered per dump */

/* The daemon's own netns, opened at first use; every setns() comes back
 * here. All netns inodes live on one nsfs superblock, hence dev. */
static struct {
	int fd;
	uint64_t ino;
	dev_t dev;
} self_ns = { .fd = -1 };

static uint32_t nl_seq;

static int self_netns(void)
{
	struct stat st;
	int fd;

	if (self_ns.fd >= 0)
		return 0;
	fd = open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	if (fstat(fd, &st)) {
		int r = -errno;

		close(fd);
		return r;
	}
	self_ns.fd = fd;
	self_ns.ino = st.st_ino;
	self_ns.dev = st.st_dev;
	return 0;
}

static bool is_v4mapped(const uint8_t a[16])
{
	static const uint8_t pfx[12] = { [10] = 0xff, [11] = 0xff };

	return !memcmp(a, pfx, sizeof(pfx));
}

static bool kaddr_eq(const struct kaddr *x, const struct kaddr *y)
{
	return x->port == y->port && !memcmp(x->a, y->a, sizeof(x->a));
}

/* An address of alen bytes (4 or 16) in IPv6 form. */
static void put_addr(uint8_t a[16], const void *src, size_t alen)
{
	memset(a, 0, 16);
	if (alen == 4)
		a[10] = a[11] = 0xff;
	memcpy(a + 16 - alen, src, alen);
}

/* ---- one socket ---------------------------------------------------------- */

static int sockopt(int fd, int level, int name, void *val, socklen_t len)
{
	socklen_t got = len;

	if (getsockopt(fd, level, name, val, &got))
		return -errno;
	return got == len ? 0 : -EPROTO;
}

static int sock_addr(int fd, bool peer, struct kaddr *a)
{
	struct sockaddr_storage ss;
	struct sockaddr *sa = (struct sockaddr *)&ss;
	const struct sockaddr_in *s4 = (const void *)&ss;
	const struct sockaddr_in6 *s6 = (const void *)&ss;
	socklen_t len = sizeof(ss);

	memset(&ss, 0, sizeof(ss));
	if (peer ? getpeername(fd, sa, &len) : getsockname(fd, sa, &len))
		return -errno;
	if (ss.ss_family == AF_INET) {
		put_addr(a->a, &s4->sin_addr, 4);
		a->port = ntohs(s4->sin_port);
	} else if (ss.ss_family == AF_INET6) {
		put_addr(a->a, &s6->sin6_addr, 16);
		a->port = ntohs(s6->sin6_port);
	} else {
		return -EPROTOTYPE;
	}
	return 0;
}

/* Is fd TCP? Returns 0, -ENOTSOCK, -EPROTOTYPE, -errno. Only TCP has
 * IPPROTO_TCP (a stream of AF_INET or AF_INET6); the family is checked
 * again by sock_addr(). One system call: ivmcd does this per connection. */
static int check_tcp(int fd)
{
	int proto = 0;
	int r = sockopt(fd, SOL_SOCKET, SO_PROTOCOL, &proto, sizeof(proto));

	if (r)
		return r;
	return proto == IPPROTO_TCP ? 0 : -EPROTOTYPE;
}

/* Netns cookies are never reused while the system runs, so the inode of
 * a namespace seen once is known for good: no SIOCGSKNS per connection. */
#define INO_CACHE 32
static struct {
	uint64_t cookie, ino;
} ino_cache[INO_CACHE];
static unsigned int ino_next;

static uint64_t ino_cached(uint64_t cookie)
{
	for (unsigned int i = 0; i < INO_CACHE; i++)
		if (ino_cache[i].cookie == cookie && cookie)
			return ino_cache[i].ino;
	return 0;
}

static int sock_ids(int fd, struct kconn *k)
{
	struct stat st;
	int nsfd, r;

	r = sockopt(fd, SOL_SOCKET, SO_COOKIE, &k->sock_cookie,
		    sizeof(k->sock_cookie));
	if (!r)
		r = sockopt(fd, SOL_SOCKET, SO_NETNS_COOKIE, &k->netns_cookie,
			    sizeof(k->netns_cookie));
	if (r)
		return r;
	k->netns_ino = ino_cached(k->netns_cookie);
	if (k->netns_ino)
		return 0;
	nsfd = kfacts_netns_fd(fd);
	if (nsfd < 0)
		return nsfd;
	r = fstat(nsfd, &st) ? -errno : 0;
	close(nsfd);
	if (!r) {
		k->netns_ino = st.st_ino;
		ino_cache[ino_next].cookie = k->netns_cookie;
		ino_cache[ino_next].ino = st.st_ino;
		ino_next = (ino_next + 1) % INO_CACHE;
	}
	return r;
}

int kfacts_conn(int fd, struct kconn *k)
{
	struct tcp_info ti;
	socklen_t len = sizeof(ti);
	int r = check_tcp(fd);

	memset(k, 0, sizeof(*k));
	if (r)
		return r;
	if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len))
		return -errno;
	if (len < 1 || ti.tcpi_state != TCP_ESTABLISHED)
		return -ENOTCONN;
	r = sock_addr(fd, false, &k->local);
	if (!r)
		r = sock_addr(fd, true, &k->remote);
	if (!r)
		r = sock_ids(fd, k);
	return r;
}

int kfacts_listener(int fd, struct kconn *k)
{
	int on = 0, r = check_tcp(fd);

	memset(k, 0, sizeof(*k));
	if (!r)
		r = sockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &on, sizeof(on));
	if (r)
		return r;
	if (on != 1)
		return -EINVAL;
	r = sock_addr(fd, false, &k->local);
	if (!r)
		r = sock_ids(fd, k);
	k->listening = !r;
	return r;
}

int kfacts_netns_fd(int sockfd)
{
	/* The kernel opens it O_CLOEXEC (open_related_ns()). */
	int fd = ioctl(sockfd, SIOCGSKNS);

	return fd < 0 ? -errno : fd;
}

int kfacts_peer_pidfd(int unixfd)
{
	int fd = -1;
	socklen_t len = sizeof(fd);

	if (getsockopt(unixfd, SOL_SOCKET, SO_PEERPIDFD, &fd, &len))
		return -errno;
	return fd >= 0 ? fd : -EPROTO;
}

const char *kaddr_str(const struct kaddr *a, char *buf, size_t len)
{
	char ip[INET6_ADDRSTRLEN];
	bool v4 = is_v4mapped(a->a);

	if (!inet_ntop(v4 ? AF_INET : AF_INET6, v4 ? a->a + 12 : a->a, ip,
		       sizeof(ip)))
		snprintf(ip, sizeof(ip), "?");
	snprintf(buf, len, "%s%s%s:%u", v4 ? "" : "[", ip, v4 ? "" : "]",
		 (unsigned int)a->port);
	return buf;
}

/* ---- netlink, from inside another netns ------------------------------- */

typedef int (*nl_cb)(const struct nlmsghdr *h, void *arg);

/* A socket belongs to the netns it was created in, so create it there and
 * come straight back. Single-threaded: nothing else runs meanwhile. */
static int socket_in(int nsfd, int family, int type, int proto)
{
	int s, r = self_netns();

	if (r)
		return r;
	if (setns(nsfd, CLONE_NEWNET))
		return -errno;
	s = socket(family, type | SOCK_CLOEXEC, proto);
	r = s < 0 ? -errno : s;
	if (setns(self_ns.fd, CLONE_NEWNET))
		abort(); /* stuck in a netns not ours: no safe way on */
	return r;
}

static int nl_open(int nsfd, int proto)
{
	struct timeval tv = { .tv_sec = 1 };
	int s = socket_in(nsfd, AF_NETLINK, SOCK_RAW, proto);

	if (s >= 0 && setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv))) {
		int r = -errno;

		close(s);
		return r;
	}
	return s;
}

/* NLMSG_DONE or NLMSG_ERROR: 1 (complete, or an ack), or the -errno. */
static int nl_status(const struct nlmsghdr *h)
{
	int err;

	if (h->nlmsg_len < NLMSG_LENGTH(sizeof(err)))
		return h->nlmsg_type == NLMSG_DONE ? 1 : -EPROTO;
	memcpy(&err, NLMSG_DATA(h), sizeof(err)); /* nlmsgerr.error */
	return err < 0 ? err : 1;
}

/* One datagram of replies: 1 when the answer is complete, 0 when more
 * follows, -errno. len is an int so that NLMSG_NEXT cannot wrap it. */
static int nl_parse(const void *buf, int len, uint32_t seq, nl_cb cb, void *arg)
{
	const struct nlmsghdr *h;
	int r;

	for (h = buf; NLMSG_OK(h, len); h = NLMSG_NEXT(h, len)) {
		if (h->nlmsg_seq != seq)
			continue; /* the rest of an abandoned request */
		if (h->nlmsg_flags & NLM_F_DUMP_INTR)
			return -EAGAIN;
		if (h->nlmsg_type == NLMSG_DONE || h->nlmsg_type == NLMSG_ERROR)
			return nl_status(h);
		r = cb(h, arg);
		if (r < 0)
			return r;
		if (!(h->nlmsg_flags & NLM_F_MULTI))
			return 1;
	}
	return 0;
}

/* Send req; feed every reply to cb until the answer is complete. Each recv
 * waits at most SO_RCVTIMEO; only the kernel (nl_pid 0) is listened to. */
static int nl_talk(int s, struct nlmsghdr *req, nl_cb cb, void *arg)
{
	union {
		struct nlmsghdr h;
		char b[NL_BUFSZ];
	} buf;
	struct sockaddr_nl nl = { .nl_family = AF_NETLINK };
	struct iovec iov = { .iov_base = buf.b, .iov_len = sizeof(buf) };
	struct msghdr m = { .msg_name = &nl, .msg_iov = &iov, .msg_iovlen = 1 };
	ssize_t n;
	int r = 0;

	req->nlmsg_seq = ++nl_seq;
	if (sendto(s, req, req->nlmsg_len, 0, (struct sockaddr *)&nl,
		   sizeof(nl)) < 0)
		return -errno;
	while (!r) {
		m.msg_namelen = sizeof(nl);
		n = recvmsg(s, &m, 0);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return errno == EAGAIN ? -ETIMEDOUT : -errno;
		if (m.msg_flags & MSG_TRUNC)
			return -EMSGSIZE;
		if (nl.nl_pid == 0)
			r = nl_parse(buf.b, (int)n, req->nlmsg_seq, cb, arg);
	}
	return r < 0 ? r : 0;
}

/* ---- the addresses of a netns -------------------------------------------- */

struct addr_dump {
	int lo[MAX_LO_IFS], nlo; /* ifindexes of IFF_LOOPBACK devices */
	struct klocal *out;
	int n, max;
};

static int link_cb(const struct nlmsghdr *h, void *arg)
{
	const struct ifinfomsg *ifi = NLMSG_DATA(h);
	struct addr_dump *d = arg;

	if (h->nlmsg_type != RTM_NEWLINK ||
	    h->nlmsg_len < NLMSG_LENGTH(sizeof(*ifi)))
		return 0;
	/* Past MAX_LO_IFS a loopback device counts as an ordinary one: its
	 * addresses then match exactly only, the cautious side. */
	if ((ifi->ifi_flags & IFF_LOOPBACK) && d->nlo < MAX_LO_IFS)
		d->lo[d->nlo++] = ifi->ifi_index;
	return 0;
}

static bool on_lo(const struct addr_dump *d, int ifindex)
{
	for (int i = 0; i < d->nlo; i++)
		if (d->lo[i] == ifindex)
			return true;
	return false;
}

/* IFA_LOCAL is this end when a peer is set; IFA_ADDRESS otherwise. */
static const struct rtattr *ifa_local(const struct nlmsghdr *h)
{
	const struct ifaddrmsg *ifa = NLMSG_DATA(h);
	const struct rtattr *rta, *addr = NULL;
	int len = (int)h->nlmsg_len - (int)NLMSG_LENGTH(sizeof(*ifa));

	for (rta = IFA_RTA(ifa); RTA_OK(rta, len); rta = RTA_NEXT(rta, len))
		if (rta->rta_type == IFA_LOCAL ||
		    (rta->rta_type == IFA_ADDRESS && !addr))
			addr = rta;
	return addr;
}

static int addr_cb(const struct nlmsghdr *h, void *arg)
{
	const struct ifaddrmsg *ifa = NLMSG_DATA(h);
	const struct rtattr *addr;
	struct addr_dump *d = arg;
	struct klocal *l;
	size_t alen;

	if (h->nlmsg_type != RTM_NEWADDR ||
	    h->nlmsg_len < NLMSG_LENGTH(sizeof(*ifa)))
		return 0;
	alen = ifa->ifa_family == AF_INET  ? 4 :
	       ifa->ifa_family == AF_INET6 ? 16 :
					     0;
	addr = ifa_local(h);
	if (!alen || !addr || RTA_PAYLOAD(addr) != alen ||
	    ifa->ifa_prefixlen > alen * 8)
		return 0;
	if (d->n == d->max)
		return 0;
	l = &d->out[d->n++];
	put_addr(l->a, RTA_DATA(addr), alen);
	l->prefix = ifa->ifa_prefixlen;
	l->loopback = on_lo(d, (int)ifa->ifa_index);
	return 0;
}

static int rt_dump(int s, uint16_t type, nl_cb cb, void *arg)
{
	struct {
		struct nlmsghdr h;
		union {
			struct ifinfomsg link;
			struct ifaddrmsg addr;
		} u;
	} req;

	memset(&req, 0, sizeof(req)); /* family AF_UNSPEC: all of them */
	req.h.nlmsg_len = NLMSG_LENGTH(
		type == RTM_GETLINK ? sizeof(req.u.link) : sizeof(req.u.addr));
	req.h.nlmsg_type = type;
	req.h.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
	return nl_talk(s, &req.h, cb, arg);
}

int kfacts_local_addrs(int nsfd, struct klocal *out, int max)
{
	struct addr_dump d = { .out = out, .max = max };
	int s, r, tries = 3;

	if (max < 0)
		return -EINVAL;
	s = nl_open(nsfd, NETLINK_ROUTE);
	if (s < 0)
		return s;
	do { /* -EAGAIN: the dump was interrupted by a change; redo it */
		d.nlo = d.n = 0;
		r = rt_dump(s, RTM_GETLINK, link_cb, &d);
		if (!r)
			r = rt_dump(s, RTM_GETADDR, addr_cb, &d);
	} while (r == -EAGAIN && --tries);
	close(s);
	return r < 0 ? r : d.n;
}

static bool v4_in_prefix(const uint8_t *net, const uint8_t *a, unsigned int pl)
{
	/* 64-bit shift: a /0 prefix shifts by 32 */
	uint32_t x, y, mask = (uint32_t)(~0ull << (32 - (pl > 32 ? 32 : pl)));

	memcpy(&x, net, 4);
	memcpy(&y, a, 4);
	return ((ntohl(x) ^ ntohl(y)) & mask) == 0;
}

/* Only IPv4 makes a whole prefix on a loopback device local (fib_add_ifaddr()
 * adds it as RTN_LOCAL); IPv6 on lo is local address by address. */
bool kfacts_is_local(const struct klocal *l, int n, const uint8_t a[16])
{
	for (int i = 0; i < n; i++) {
		if (!memcmp(l[i].a, a, 16))
			return true;
		if (l[i].loopback && is_v4mapped(l[i].a) && is_v4mapped(a) &&
		    v4_in_prefix(l[i].a + 12, a + 12, l[i].prefix))
			return true;
	}
	return false;
}

/* ---- does the socket still exist? ------------------------------------- */

struct diag_ans {
	const struct kconn *k;
	int yes;
};

static void diag_addr(uint8_t fam, const __be32 *w, uint8_t a[16])
{
	put_addr(a, w, fam == AF_INET ? 4 : 16);
}

static int diag_cb(const struct nlmsghdr *h, void *arg)
{
	const struct inet_diag_msg *m = NLMSG_DATA(h);
	struct diag_ans *d = arg;
	struct kaddr src, dst;
	uint64_t cookie;

	if (h->nlmsg_type != SOCK_DIAG_BY_FAMILY ||
	    h->nlmsg_len < NLMSG_LENGTH(sizeof(*m)))
		return -EPROTO;
	/* The kernel checked the cookie and the 4-tuple; check them again,
	 * as a cookie of ~0 asks it not to. */
	cookie = m->id.idiag_cookie[0] | (uint64_t)m->id.idiag_cookie[1] << 32;
	diag_addr(m->idiag_family, m->id.idiag_src, src.a);
	diag_addr(m->idiag_family, m->id.idiag_dst, dst.a);
	src.port = ntohs(m->id.idiag_sport);
	dst.port = ntohs(m->id.idiag_dport);
	d->yes = m->idiag_state == TCP_ESTABLISHED &&
		 cookie == d->k->sock_cookie && kaddr_eq(&src, &d->k->local) &&
		 kaddr_eq(&dst, &d->k->remote);
	return 0;
}

/* An exact lookup (inet_diag_find_one_icsk()): src is the local end. A
 * v4-mapped pair is looked up as IPv4, which finds dual-stack sockets too. */
static void diag_req(struct inet_diag_req_v2 *r, const struct kconn *k)
{
	bool v4 = is_v4mapped(k->local.a) && is_v4mapped(k->remote.a);
	size_t off = v4 ? 12 : 0;

	r->sdiag_family = v4 ? AF_INET : AF_INET6;
	r->sdiag_protocol = IPPROTO_TCP;
	r->idiag_states = 1u << TCP_ESTABLISHED;
	r->id.idiag_sport = htons(k->local.port);
	r->id.idiag_dport = htons(k->remote.port);
	memcpy(r->id.idiag_src, k->local.a + off, 16 - off);
	memcpy(r->id.idiag_dst, k->remote.a + off, 16 - off);
	r->id.idiag_cookie[0] = (uint32_t)k->sock_cookie;
	r->id.idiag_cookie[1] = (uint32_t)(k->sock_cookie >> 32);
}

int kfacts_diag_check(int nsfd, const struct kconn *k)
{
	int s = -1;
	int r = kfacts_diag_check_cached(nsfd, &s, k);

	if (s >= 0)
		close(s);
	return r;
}

int kfacts_diag_check_cached(int nsfd, int *sock, const struct kconn *k)
{
	struct {
		struct nlmsghdr h;
		struct inet_diag_req_v2 r;
	} req;
	struct diag_ans d = { .k = k };
	int s, r;

	memset(&req, 0, sizeof(req));
	req.h.nlmsg_len = sizeof(req);
	req.h.nlmsg_type = SOCK_DIAG_BY_FAMILY;
	req.h.nlmsg_flags = NLM_F_REQUEST;
	diag_req(&req.r, k);
	/* Opening it means entering the namespace and back (setns twice):
	 * the caller keeps it for the next check. */
	if (*sock < 0)
		*sock = nl_open(nsfd, NETLINK_SOCK_DIAG);
	s = *sock;
	if (s < 0)
		return s;
	r = nl_talk(s, &req.h, diag_cb, &d);
	if (r < 0 && r != -ENOENT && r != -ESTALE) {
		close(s); /* out of step, perhaps: a fresh one next time */
		*sock = -1;
	}
	/* -ENOENT: no such 4-tuple; -ESTALE: it is another socket now. */
	if (r == -ENOENT || r == -ESTALE)
		return 0;
	return r < 0 ? r : d.yes;
}

/* ---- are two namespaces joined by a link? ------------------------------ */

#define KIND_LEN 16
#define NL_REQ_BODY 128 /* family header and a few attributes */

/* A request: the netlink header, the family's header, attributes. */
struct nl_req {
	struct nlmsghdr h;
	char body[NL_REQ_BODY];
};

/* A device, as RTM_GETLINK tells. */
struct kdev {
	int index;
	int peer;	     /* IFLA_LINK: a veth's peer ifindex */
	int peer_nsid;	     /* IFLA_LINK_NETNSID; -1: none (the same netns) */
	int master;	     /* IFLA_MASTER: the bridge of a port */
	char kind[KIND_LEN]; /* IFLA_INFO_KIND: "veth", "bridge", ... */
};

/* One end's way out to its peer address, in the end's netns. */
struct kpath {
	int s;		/* NETLINK_ROUTE socket in that netns */
	int nsfd;	/* the netns itself */
	bool gateway;	/* the route goes through a router */
	uint8_t gw[16]; /* its address, IPv6 form */
	struct kdev dev; /* the route's device; index 0: no unicast route */
};

static void *nl_init(struct nl_req *q, uint16_t type, size_t hdrlen)
{
	memset(q, 0, sizeof(*q));
	q->h.nlmsg_len = NLMSG_LENGTH(hdrlen);
	q->h.nlmsg_type = type;
	q->h.nlmsg_flags = NLM_F_REQUEST;
	return NLMSG_DATA(&q->h);
}

/* Append an attribute. An attribute left out could change the question
 * (a missing IFLA_TARGET_NETNSID asks about our own netns): no room is an
 * error. */
static int nl_attr(struct nl_req *q, uint16_t type, const void *data,
		   size_t len)
{
	size_t off = NLMSG_ALIGN(q->h.nlmsg_len);
	struct rtattr *rta = (struct rtattr *)((char *)q + off);

	if (off + RTA_SPACE(len) > sizeof(*q))
		return -EMSGSIZE;
	rta->rta_type = type;
	rta->rta_len = (unsigned short)RTA_LENGTH(len);
	memcpy(RTA_DATA(rta), data, len);
	q->h.nlmsg_len = (uint32_t)(off + RTA_SPACE(len));
	return 0;
}

/* Index the attributes of one level by type; later duplicates win. */
static void nl_attrs(const struct rtattr *rta, int len,
		     const struct rtattr **tb, int max)
{
	for (int i = 0; i <= max; i++)
		tb[i] = NULL;
	for (; RTA_OK(rta, len); rta = RTA_NEXT(rta, len))
		if (rta->rta_type <= max)
			tb[rta->rta_type] = rta;
}

static bool rta_s32(const struct rtattr *rta, int32_t *v)
{
	if (!rta || RTA_PAYLOAD(rta) < sizeof(*v))
		return false;
	memcpy(v, RTA_DATA(rta), sizeof(*v));
	return true;
}

/* Errors that say we could not ask (as opposed to the kernel's "no such
 * route or device"): passed on as -errno. */
static bool nl_failed(int r)
{
	return r == -ETIMEDOUT || r == -ENOBUFS || r == -ENOMEM ||
	       r == -EMSGSIZE || r == -EAGAIN || r == -EPROTO || r == -EBADF ||
	       r == -EPERM || r == -EACCES;
}

struct route_ans {
	int oif, type;
	bool gateway;
	uint8_t gw[16];
};

static int route_cb(const struct nlmsghdr *h, void *arg)
{
	const struct rtmsg *rtm = NLMSG_DATA(h);
	const struct rtattr *tb[RTA_MAX + 1], *gw;
	struct route_ans *a = arg;
	int32_t oif;

	if (h->nlmsg_type != RTM_NEWROUTE ||
	    h->nlmsg_len < NLMSG_LENGTH(sizeof(*rtm)))
		return -EPROTO;
	nl_attrs(RTM_RTA(rtm), (int)RTM_PAYLOAD(h), tb, RTA_MAX);
	a->type = rtm->rtm_type;
	if (tb[RTA_MULTIPATH] || !rta_s32(tb[RTA_OIF], &oif) || oif <= 0)
		return 0; /* oif 0: not one device we can follow */
	a->oif = oif;
	gw = tb[RTA_GATEWAY];
	if (gw && (RTA_PAYLOAD(gw) == 4 || RTA_PAYLOAD(gw) == 16)) {
		a->gateway = true;
		put_addr(a->gw, RTA_DATA(gw), RTA_PAYLOAD(gw));
	} else if (gw || tb[RTA_VIA]) {
		a->gateway = true; /* a router we cannot name: none is local */
		memset(a->gw, 0, sizeof(a->gw));
	}
	return 0;
}

/* The route from src (NULL: any) to dst in the netns of s. Returns 0 with
 * a->oif 0 when there is none (unreachable, prohibited, ...), -errno. */
static int route_get(int s, const uint8_t *src, const uint8_t dst[16],
		     struct route_ans *a)
{
	struct nl_req q;
	struct rtmsg *rtm = nl_init(&q, RTM_GETROUTE, sizeof(*rtm));
	bool v4 = is_v4mapped(dst) && (!src || is_v4mapped(src));
	size_t off = v4 ? 12 : 0, alen = 16 - off;
	int r;

	memset(a, 0, sizeof(*a));
	rtm->rtm_family = v4 ? AF_INET : AF_INET6;
	rtm->rtm_dst_len = (uint8_t)(alen * 8);
	r = nl_attr(&q, RTA_DST, dst + off, alen);
	if (!r && src) {
		rtm->rtm_src_len = (uint8_t)(alen * 8);
		r = nl_attr(&q, RTA_SRC, src + off, alen);
	}
	if (!r)
		r = nl_talk(s, &q.h, route_cb, a);
	if (r && !nl_failed(r)) { /* -ENETUNREACH, -EINVAL, ... */
		memset(a, 0, sizeof(*a));
		r = 0;
	}
	return r;
}

/* Is a local to the netns of s (a route of type local)? 1, 0, -errno. */
static int route_local(int s, const uint8_t a[16])
{
	static const uint8_t any[16];
	struct route_ans ans;
	int r;

	if (!memcmp(a, any, sizeof(any)))
		return 0;
	r = route_get(s, NULL, a, &ans);
	return r < 0 ? r : ans.type == RTN_LOCAL;
}

static int dev_cb(const struct nlmsghdr *h, void *arg)
{
	const struct ifinfomsg *ifi = NLMSG_DATA(h);
	const struct rtattr *tb[IFLA_MAX + 1], *info[IFLA_INFO_MAX + 1];
	struct kdev *d = arg;
	int32_t v;

	if (h->nlmsg_type != RTM_NEWLINK ||
	    h->nlmsg_len < NLMSG_LENGTH(sizeof(*ifi)))
		return -EPROTO;
	if (ifi->ifi_index != d->index)
		return -EPROTO;
	nl_attrs(IFLA_RTA(ifi), (int)IFLA_PAYLOAD(h), tb, IFLA_MAX);
	d->peer = rta_s32(tb[IFLA_LINK], &v) ? v : 0;
	d->peer_nsid = rta_s32(tb[IFLA_LINK_NETNSID], &v) ? v : -1;
	d->master = rta_s32(tb[IFLA_MASTER], &v) ? v : 0;
	d->kind[0] = 0;
	if (tb[IFLA_LINKINFO]) {
		const struct rtattr *li = tb[IFLA_LINKINFO], *k;

		nl_attrs(RTA_DATA(li), (int)RTA_PAYLOAD(li), info,
			 IFLA_INFO_MAX);
		k = info[IFLA_INFO_KIND];
		if (k && RTA_PAYLOAD(k) > 0 && RTA_PAYLOAD(k) <= KIND_LEN) {
			memcpy(d->kind, RTA_DATA(k), RTA_PAYLOAD(k));
			d->kind[KIND_LEN - 1] = 0;
		}
	}
	return 0;
}

/* Device index of the netns of s, or (nsid >= 0) of the netns that has id
 * nsid there. Returns 1, 0 (no such device or netns), -errno. */
static int link_get(int s, int nsid, int index, struct kdev *d)
{
	struct nl_req q;
	struct ifinfomsg *ifi = nl_init(&q, RTM_GETLINK, sizeof(*ifi));
	uint32_t mask = RTEXT_FILTER_SKIP_STATS;
	int32_t target = nsid;
	int r;

	memset(d, 0, sizeof(*d));
	if (index <= 0)
		return 0;
	d->index = index;
	ifi->ifi_family = AF_UNSPEC;
	ifi->ifi_index = index;
	r = nl_attr(&q, IFLA_EXT_MASK, &mask, sizeof(mask));
	if (!r && nsid >= 0)
		r = nl_attr(&q, IFLA_TARGET_NETNSID, &target, sizeof(target));
	if (!r)
		r = nl_talk(s, &q.h, dev_cb, d);
	if (r && !nl_failed(r)) /* -ENODEV; -EINVAL: no such nsid */
		return 0;
	return r < 0 ? r : 1;
}

static int nsid_cb(const struct nlmsghdr *h, void *arg)
{
	const struct rtattr *tb[NETNSA_MAX + 1];
	size_t hl = NLMSG_ALIGN(sizeof(struct rtgenmsg));
	int32_t *nsid = arg;

	if (h->nlmsg_type != RTM_NEWNSID || h->nlmsg_len < NLMSG_LENGTH(hl))
		return -EPROTO;
	nl_attrs((const struct rtattr *)((const char *)NLMSG_DATA(h) + hl),
		 (int)(h->nlmsg_len - NLMSG_LENGTH(hl)), tb, NETNSA_MAX);
	if (!rta_s32(tb[NETNSA_NSID], nsid))
		return -EPROTO;
	return 0;
}

/* The id the netns of s has for the netns behind fd, without making one:
 * -1 when there is none. Returns 0, -errno. */
static int nsid_get(int s, int fd, int32_t *nsid)
{
	struct nl_req q;
	struct rtgenmsg *g = nl_init(&q, RTM_GETNSID, sizeof(*g));
	uint32_t ufd = (uint32_t)fd;
	int r;

	*nsid = -1;
	g->rtgen_family = AF_UNSPEC;
	r = nl_attr(&q, NETNSA_FD, &ufd, sizeof(ufd));
	if (!r)
		r = nl_talk(s, &q.h, nsid_cb, nsid);
	if (r && !nl_failed(r))
		r = 0, *nsid = -1;
	return r;
}

static bool is_kind(const struct kdev *d, const char *kind)
{
	return d->index > 0 && !strcmp(d->kind, kind);
}

/* Does the end's way out lead into another netns at all: a veth whose
 * peer is elsewhere, or a bridge (whose port may be such a veth's peer)
 * reached without a router? */
static bool path_usable(const struct kpath *p)
{
	if (is_kind(&p->dev, "veth"))
		return p->dev.peer > 0 && p->dev.peer_nsid >= 0;
	return is_kind(&p->dev, "bridge") && !p->gateway;
}

static int path_of(struct kpath *p, int nsfd, const struct kconn *k)
{
	struct route_ans a;
	int r;

	p->nsfd = nsfd;
	p->s = nl_open(nsfd, NETLINK_ROUTE);
	if (p->s < 0)
		return p->s;
	r = route_get(p->s, k->local.a, k->remote.a, &a);
	if (r)
		return r;
	if (a.type != RTN_UNICAST || a.oif <= 0)
		return 0; /* no way out: not usable */
	p->gateway = a.gateway;
	memcpy(p->gw, a.gw, sizeof(p->gw));
	r = link_get(p->s, -1, a.oif, &p->dev);
	return r < 0 ? r : 0;
}

/* Not 1: "found" from link_get() must never pass for one of them. */
#define J_BRIDGE 2 /* joined through a bridge */
#define J_DIRECT 3 /* joined by one veth pair */

/* Is the veth of p, whose peer is in the netns of q, joined to q's way
 * out: that peer itself (J_DIRECT), or a port of q's bridge (J_BRIDGE)?
 * Returns one of them, 0, -errno. The link query came before this id
 * query: a link query gives the peer's netns an id in p's netns
 * (peernet2id_alloc()), RTM_GETNSID makes none. */
static int veth_into(const struct kpath *p, const struct kpath *q)
{
	struct kdev port;
	int32_t id;
	int r = nsid_get(p->s, q->nsfd, &id);

	if (r || id < 0 || id != p->dev.peer_nsid)
		return r; /* the peer is not in q's netns */
	if (p->dev.peer == q->dev.index) { /* q's own device: a veth pair */
		if (!is_kind(&q->dev, "veth") || q->dev.peer != p->dev.index)
			return 0;
		return J_DIRECT;
	}
	if (!is_kind(&q->dev, "bridge"))
		return 0;
	/* q's bridge: the peer must be one of its ports. */
	r = link_get(q->s, -1, p->dev.peer, &port);
	if (r != 1 || !is_kind(&port, "veth") || port.peer != p->dev.index ||
	    port.master != q->dev.index)
		return r < 0 ? r : 0;
	return J_BRIDGE;
}

/* Both veths, their peers ports of one bridge in a third netns X. X is
 * asked through q's netns (IFLA_TARGET_NETNSID: q's id for it); that the
 * port found there is p's peer is proven by the port itself: a veth whose
 * peer is p's device in p's netns, which only p's one peer can be. */
static int bridged(const struct kpath *p, const struct kpath *q)
{
	struct kdev qport, pport, br;
	int32_t id;
	int r = link_get(q->s, q->dev.peer_nsid, q->dev.peer, &qport);

	if (r != 1 || !qport.master)
		return r < 0 ? r : 0;
	r = link_get(q->s, q->dev.peer_nsid, qport.master, &br);
	if (r != 1 || !is_kind(&br, "bridge"))
		return r < 0 ? r : 0;
	r = link_get(q->s, q->dev.peer_nsid, p->dev.peer, &pport);
	if (r != 1 || !is_kind(&pport, "veth") || pport.peer != p->dev.index ||
	    pport.master != qport.master || pport.peer_nsid < 0)
		return r < 0 ? r : 0;
	/* pport's peer netns, by q's ids (the link query made the id). */
	r = nsid_get(q->s, p->nsfd, &id);
	return r < 0 ? r : id == pport.peer_nsid ? J_BRIDGE : 0;
}

/* A router on a shared segment could be anybody on it: the gateway of
 * either end must be the other end's netns. */
static int gateways_ok(const struct kpath *p, const struct kpath *q)
{
	int r = p->gateway ? route_local(q->s, p->gw) : 1;

	if (r == 1 && q->gateway)
		r = route_local(p->s, q->gw);
	return r;
}

/* 1, 0, -errno, as kfacts_link_check(). */
static int joined(const struct kpath *pa, const struct kpath *pb)
{
	bool va = is_kind(&pa->dev, "veth"), vb = is_kind(&pb->dev, "veth");
	int r = 0;

	if (va)
		r = veth_into(pa, pb);
	if (!r && vb)
		r = veth_into(pb, pa);
	if (!r && va && vb)
		r = bridged(pa, pb);
	/* A veth pair carries each end's packets to the other's netns and
	 * nowhere else, through a gateway or not. */
	if (r == J_DIRECT)
		return 1;
	return r == J_BRIDGE ? gateways_ok(pa, pb) : r;
}

int kfacts_link_check(int nsfd_a, const struct kconn *a, int nsfd_b,
		      const struct kconn *b, unsigned int *dead)
{
	struct kpath pa = { .s = -1 }, pb = { .s = -1 };
	int r = path_of(&pa, nsfd_a, a);

	if (!r)
		r = path_of(&pb, nsfd_b, b);
	if (dead)
		*dead = 0;
	if (!r && dead && !path_usable(&pa))
		*dead |= KLINK_DEAD_A;
	if (!r && dead && !path_usable(&pb))
		*dead |= KLINK_DEAD_B;
	if (!r && path_usable(&pa) && path_usable(&pb))
		r = joined(&pa, &pb);
	if (pa.s >= 0)
		close(pa.s);
	if (pb.s >= 0)
		close(pb.s);
	return r;
}

/* ---- netns names --------------------------------------------------------- */

static int copy_name(char *name, size_t len, const char *src)
{
	size_t n = strlen(src);

	if (n >= len)
		return -ENAMETOOLONG;
	memcpy(name, src, n + 1);
	return 0;
}

/* A netns bind mount, not a plain file left behind by a failed `ip`? */
static bool is_ns(const struct stat *st, uint64_t ino)
{
	return st->st_dev == self_ns.dev && st->st_ino == ino;
}

int kfacts_netns_name(uint64_t ino, char *name, size_t len)
{
	const struct dirent *e;
	struct stat st;
	DIR *dir;
	int r = self_netns();

	if (r)
		return r;
	r = -ENOENT;
	dir = opendir(NETNS_DIR);
	while (dir && r == -ENOENT && (e = readdir(dir))) {
		if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
			continue;
		if (!fstatat(dirfd(dir), e->d_name, &st, 0) && is_ns(&st, ino))
			r = copy_name(name, len, e->d_name);
	}
	if (dir)
		closedir(dir);
	if (r == -ENOENT && ino == self_ns.ino)
		r = copy_name(name, len, "host");
	return r;
}

uint64_t kfacts_netns_ino(const char *name)
{
	char path[sizeof(NETNS_DIR) + NAME_MAX + 1];
	struct stat st;

	if (self_netns())
		return 0;
	if (!strcmp(name, "host"))
		return self_ns.ino;
	if (!name[0] || !strcmp(name, ".") || !strcmp(name, "..") ||
	    strchr(name, '/') || strlen(name) > NAME_MAX)
		return 0;
	snprintf(path, sizeof(path), NETNS_DIR "/%s", name);
	if (stat(path, &st) || st.st_dev != self_ns.dev)
		return 0;
	return st.st_ino;
}

int kfacts_addr_monitor(int nsfd)
{
	struct sockaddr_nl sa = { .nl_family = AF_NETLINK,
				  .nl_groups = RTMGRP_IPV4_IFADDR |
					       RTMGRP_IPV6_IFADDR };
	int s = socket_in(nsfd, AF_NETLINK, SOCK_RAW | SOCK_NONBLOCK,
			  NETLINK_ROUTE);

	if (s >= 0 && bind(s, (struct sockaddr *)&sa, sizeof(sa))) {
		int r = -errno;

		close(s);
		return r;
	}
	return s;
}
