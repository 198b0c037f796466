/* SPDX-License-Identifier: MIT */
/*
 * Description: registrations, pairing and channels. A connection is paired
 * from kernel facts only: the two ends' 4-tuples mirror each other, each
 * end's peer address is local to the other end's network namespace (and
 * not to its own, across namespaces), across namespaces a veth pair or a
 * bridge joins the two (rtnetlink), exactly one candidate matches, and
 * both sockets still exist (sock_diag). Anything else stays TCP.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "chan/chan.h"
#include "chan/shm_layout.h"
#include "transport/transport.h"
#include "ivmcd.h"

/* Link checks per registration: each costs tens of microseconds, and a
 * lookalike is cheap to make. */
#define MAX_LINK_CHECKS 8

/* ---- network namespaces and domains ---------------------------------- */

static void netns_refresh(struct netns *ns, bool force)
{
	struct klocal tmp[MAX_NS_ADDRS];
	uint64_t now = now_ms();
	int n;

	if (!force && now - ns->refreshed_ms < NS_REFRESH_MS)
		return;
	n = kfacts_local_addrs(ns->fd, tmp, MAX_NS_ADDRS);
	ns->refreshed_ms = now;
	if (n < 0 || (n == ns->naddrs && !memcmp(tmp, ns->addrs, sizeof(tmp[0]) * (size_t)n)))
		return;
	memcpy(ns->addrs, tmp, sizeof(tmp[0]) * (size_t)n);
	ns->naddrs = n;
	if (ns->node.next) /* listed: the table shows its addresses */
		D.table_dirty = true;
}

void netns_event(struct netns *ns)
{
	char buf[8192];

	if (ns->mon < 0)
		return; /* gone this round */
	/* The message says what changed; re-reading all is simpler. */
	for (int i = 0; i < 64 && recv(ns->mon, buf, sizeof(buf), MSG_DONTWAIT) > 0; i++)
		;
	netns_refresh(ns, true);
}

static struct netns *netns_find(uint64_t ino)
{
	for (struct link *l = D.nss.next; l != &D.nss; l = l->next) {
		struct netns *ns = link_entry(l, struct netns, node);

		if (ns->ino == ino) {
			ns->refs++;
			return ns;
		}
	}
	return NULL;
}

struct netns *netns_get(int sockfd, uint64_t ino)
{
	struct netns *ns = ino ? netns_find(ino) : NULL;
	struct stat st;
	int fd;

	if (ns)
		return ns;
	fd = kfacts_netns_fd(sockfd);
	if (fd < 0)
		return NULL;
	if (fstat(fd, &st) < 0) {
		close(fd);
		return NULL;
	}
	ns = netns_find(st.st_ino);
	if (ns) {
		close(fd);
		return ns;
	}
	ns = calloc(1, sizeof(*ns));
	if (!ns) {
		close(fd);
		return NULL;
	}
	ns->ino = st.st_ino;
	ns->fd = fd;
	ns->diag = -1;
	ns->refs = 1;
	netns_refresh(ns, true);
	link_add(&D.nss, &ns->node);
	ns->mon = kfacts_addr_monitor(fd);
	if (ns->mon >= 0) {
		struct epoll_event ev = { .events = EPOLLIN,
					  .data.ptr = (void *)((uintptr_t)ns | 1) };

		if (epoll_ctl(D.epfd, EPOLL_CTL_ADD, ns->mon, &ev) < 0) {
			close(ns->mon);
			ns->mon = -1;
		}
	}
	return ns;
}

void netns_put(struct netns *ns)
{
	if (!ns || --ns->refs > 0)
		return;
	link_del(&ns->node);
	if (ns->mon >= 0) {
		epoll_ctl(D.epfd, EPOLL_CTL_DEL, ns->mon, NULL);
		close(ns->mon);
	}
	close(ns->fd);
	if (ns->diag >= 0)
		close(ns->diag);
	/* Its monitor may still be in this round's epoll events: free it
	 * after the round (netns_reap()). */
	ns->fd = ns->mon = -1;
	link_add(&D.dead_nss, &ns->node);
}

void netns_reap(void)
{
	while (!link_empty(&D.dead_nss)) {
		struct netns *ns = link_entry(D.dead_nss.next, struct netns, node);

		link_del(&ns->node);
		free(ns);
	}
}

/* Is a local to ns? A miss re-reads the namespace's addresses (rate
 * limited): a veth may have been configured since. */
static bool ns_local(struct netns *ns, const uint8_t a[16])
{
	if (kfacts_is_local(ns->addrs, ns->naddrs, a))
		return true;
	netns_refresh(ns, false);
	return kfacts_is_local(ns->addrs, ns->naddrs, a);
}

static struct domain *domain_get(uint32_t uid, uint64_t ino)
{
	struct domain *d;

	for (struct link *l = D.domains.next; l != &D.domains; l = l->next) {
		d = link_entry(l, struct domain, node);
		if (d->uid == uid && d->netns_ino == ino) {
			d->refs++;
			return d;
		}
	}
	d = calloc(1, sizeof(*d));
	if (!d)
		return NULL;
	d->uid = uid;
	d->netns_ino = ino;
	d->refs = 1;
	link_add(&D.domains, &d->node);
	return d;
}

static void domain_put(struct domain *d)
{
	if (!d || --d->refs > 0)
		return;
	link_del(&d->node);
	free(d);
}

/* ---- the table -------------------------------------------------------- */

int table_create(void)
{
	void *p;

	D.table_fd = memfd_create("ivmcd-table", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (D.table_fd < 0)
		return -errno;
	if (ftruncate(D.table_fd, CTL_TABLE_SIZE) < 0)
		return -errno;
	p = mmap(NULL, CTL_TABLE_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED,
		 D.table_fd, 0);
	if (p == MAP_FAILED)
		return -errno;
	/* Our mapping stays writable; no other can be made, not even from a
	 * client's O_RDONLY fd reopened read-write through /proc. */
	if (fcntl(D.table_fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW |
						 F_SEAL_FUTURE_WRITE | F_SEAL_SEAL) < 0)
		return -errno;
	D.table = p;
	D.table->magic = CTL_TABLE_MAGIC;
	D.table->slots = CTL_TABLE_SLOTS;
	return 0;
}

void table_put(const uint8_t a[16], uint16_t port)
{
	struct ctl_table *t = D.table;
	uint32_t mask = CTL_TABLE_SLOTS - 1;
	uint32_t i = ctl_tab_hash(a, port) & mask;

	if (t->count >= CTL_TABLE_SLOTS / 2) {
		t->overflow = 1; /* clients then assume "maybe" */
		return;
	}
	for (;; i = (i + 1) & mask) {
		struct ctl_tab_entry *e = &t->e[i];

		if (!atomic_load_explicit(&e->used, memory_order_relaxed)) {
			memcpy(e->addr, a, 16);
			e->port = port;
			atomic_store_explicit(&e->used, 1, memory_order_relaxed);
			t->count++;
			return;
		}
		if (e->port == port && !memcmp(e->addr, a, 16))
			return;
	}
}

static bool wildcard(const uint8_t a[16])
{
	static const uint8_t any6[16], any4[16] = { [10] = 0xff, [11] = 0xff };

	return !memcmp(a, any6, 16) || !memcmp(a, any4, 16);
}

void table_rebuild(void)
{
	struct ctl_table *t = D.table;
	uint32_t s = atomic_load_explicit(&t->seq, memory_order_relaxed);

	atomic_store_explicit(&t->seq, s + 1, memory_order_relaxed);
	atomic_thread_fence(memory_order_release);
	for (uint32_t i = 0; i < CTL_TABLE_SLOTS; i++)
		atomic_store_explicit(&t->e[i].used, 0, memory_order_relaxed);
	t->count = 0;
	t->overflow = 0;
	for (struct link *l = D.nss.next; l != &D.nss; l = l->next) {
		struct netns *ns = link_entry(l, struct netns, node);

		for (int i = 0; i < ns->naddrs; i++)
			table_put(ns->addrs[i].a, 0);
	}
	for (struct link *l = D.clients.next; l != &D.clients; l = l->next) {
		struct client *cl = link_entry(l, struct client, node);

		for (struct link *m = cl->regs.next; m != &cl->regs; m = m->next) {
			struct reg *r = link_entry(m, struct reg, cnode);

			if (!r->listener)
				continue;
			if (!wildcard(r->k.local.a)) {
				table_put(r->k.local.a, r->k.local.port);
				continue;
			}
			for (int i = 0; i < r->ns->naddrs; i++)
				table_put(r->ns->addrs[i].a, r->k.local.port);
		}
	}
	if (D.guest)
		guest_table();
	atomic_store_explicit(&t->seq, s + 2, memory_order_release);
}

/* ---- registrations ------------------------------------------------------ */

static uint32_t tuple_hash(const struct kaddr *l, const struct kaddr *r)
{
	return (ctl_tab_hash(l->a, l->port) * 31u ^ ctl_tab_hash(r->a, r->port)) &
	       (D.hash_size - 1);
}

static bool kaddr_eq(const struct kaddr *x, const struct kaddr *y)
{
	return x->port == y->port && !memcmp(x->a, y->a, 16);
}

static void hash_del(struct reg *r)
{
	struct reg **pp = &D.hash[tuple_hash(&r->k.local, &r->k.remote)];

	for (; *pp; pp = &(*pp)->hnext) {
		if (*pp == r) {
			*pp = r->hnext;
			return;
		}
	}
}

void reg_free(struct reg *r)
{
	link_del(&r->cnode);
	if (r->listener) {
		D.nlisteners--;
		r->cl->listeners--;
	} else {
		hash_del(r);
		link_del(&r->tnode);
		r->cl->pending--;
		D.npending--;
	}
	netns_put(r->ns);
	free(r);
}

static struct reg *reg_new(struct client *cl, const struct ctl_reg *m, int fd,
			   bool listener, int *reason)
{
	struct reg *r = calloc(1, sizeof(*r));
	int err;

	*reason = CTL_R_NO_MEMORY;
	if (!r)
		return NULL;
	err = listener ? kfacts_listener(fd, &r->k) : kfacts_conn(fd, &r->k);
	if (!err) {
		r->ns = netns_get(fd, r->k.netns_ino);
		if (!r->ns)
			err = -ENOENT;
	}
	if (err) {
		*reason = CTL_R_NOT_TCP;
		free(r);
		return NULL;
	}
	r->cl = cl;
	r->token = m->token;
	r->ring_wish = m->ring_size;
	r->listener = listener;
	link_init(&r->tnode);
	link_add(&cl->regs, &r->cnode);
	return r;
}

/* Could a and b be the two ends of one connection? */
static bool mirrors(struct reg *a, struct reg *b)
{
	if (!kaddr_eq(&a->k.local, &b->k.remote) ||
	    !kaddr_eq(&a->k.remote, &b->k.local))
		return false;
	if (a->ns == b->ns)
		return ns_local(a->ns, a->k.remote.a);
	/* Across namespaces (veth, bridge; no NAT): each peer address is
	 * local to the other namespace and not to its own; joined() then
	 * asks the links. */
	return ns_local(b->ns, a->k.remote.a) && ns_local(a->ns, b->k.remote.a) &&
	       !ns_local(a->ns, a->k.remote.a) && !ns_local(b->ns, b->k.remote.a);
}

/* Two ends whose addresses mirror across namespaces: are the namespaces
 * joined by the path their packets take? The addresses alone prove
 * nothing there: anybody who can make namespaces (user namespaces) can
 * build a network with the same addresses, or two networks may simply
 * use the same ones. Within one netns the kernel keeps 4-tuples unique.
 * Returns 1 or 0; *dead gets the KLINK_DEAD_* bits of ends no link can
 * ever join. */
static int joined(struct reg *a, struct reg *b, unsigned int *dead)
{
	char x[KADDR_STRLEN], y[KADDR_STRLEN];
	int r;

	*dead = 0;
	if (a->ns == b->ns)
		return 1;
	r = kfacts_link_check(a->ns->fd, &a->k, b->ns->fd, &b->k, dead);
	if (r == 1)
		return 1;
	if (r < 0)
		log_warn("link check %s <-> %s: %s",
			 kaddr_str(&a->k.local, x, sizeof(x)),
			 kaddr_str(&b->k.local, y, sizeof(y)), strerror(-r));
	else
		log_info("%s (pid %d) <-> %s (pid %d): no veth or bridge "
			 "joins their namespaces%s",
			 kaddr_str(&a->k.local, x, sizeof(x)), (int)a->cl->pid,
			 kaddr_str(&b->k.local, y, sizeof(y)), (int)b->cl->pid,
			 *dead ? " (a way out joins none)" : "");
	return 0;
}

/* Both sockets must still exist, established, with these facts. */
static bool alive(const struct reg *r)
{
	return kfacts_diag_check_cached(r->ns->fd, &r->ns->diag, &r->k) != 0;
}

static void end_init(struct chan_end *e, struct channel *ch, struct reg *r)
{
	e->ch = ch;
	e->cl = r->cl;
	e->token = r->token;
	e->k = r->k;
	e->pid = r->cl->pid;
	e->uid = r->cl->uid;
	e->gid = r->cl->gid;
	e->ns = r->ns;
	r->ns->refs++;
	link_add(&r->cl->ends, &e->cnode);
}

static void pol_end_of(const struct reg *r, struct pol_end *p)
{
	p->uid = r->cl->uid;
	p->gid = r->cl->gid;
	p->netns_ino = r->ns->ino;
	p->port = r->k.local.port;
}

/* Charge a channel to both ends' domains (once if they are one). */
static int quota_take(struct domain *d[2], uint64_t bytes)
{
	uint32_t qc = policy_quota_channels(D.pol);
	uint64_t qb = policy_quota_bytes(D.pol);
	int n = d[0] == d[1] ? 1 : 2;

	for (int i = 0; i < n; i++)
		if ((qc && d[i]->channels + 1 > qc) || (qb && d[i]->bytes + bytes > qb))
			return -EDQUOT;
	for (int i = 0; i < n; i++) {
		d[i]->channels++;
		d[i]->bytes += bytes;
	}
	return 0;
}

static void quota_give(struct channel *ch)
{
	struct domain **d0 = &ch->end[0].dom, **d1 = &ch->end[1].dom;

	for (int i = 0; i < (*d0 == *d1 ? 1 : 2); i++) {
		struct domain *d = i ? *d1 : *d0;

		d->channels--;
		d->bytes -= ch->region_size;
	}
}

static void channel_free(struct channel *ch)
{
	if (ch->guest)
		guest_chan_free(ch);
	quota_give(ch);
	for (int i = 0; i < 2; i++) {
		domain_put(ch->end[i].dom);
		netns_put(ch->end[i].ns);
	}
	if (ch->region_fd >= 0)
		close(ch->region_fd);
	link_del(&ch->node);
	D.nchannels--;
	free(ch);
}

void end_gone(struct chan_end *e)
{
	struct channel *ch = e->ch;

	link_del(&e->cnode);
	e->cl = NULL;
	if (!ch->end[0].cl && !ch->end[1].cl)
		channel_free(ch);
}

static int send_chan(struct chan_end *e, int side, int region, int bell)
{
	struct ctl_chan m = { 0 };
	int fds[2] = { region, bell };

	ctl_hdr_init(&m.h, CTL_CHAN, 0);
	m.token = e->token;
	m.chan_id = e->ch->id;
	m.side = (uint32_t)side;
	m.ring_size = e->ch->ring_size;
	return client_send(e->cl, &m, fds, 2);
}

/* Make the channel for a checked pair and hand each end its half. */
static int make_channel(struct reg *a, struct reg *b,
			const struct pol_verdict *v, struct domain *dom[2])
{
	struct channel *ch = calloc(1, sizeof(*ch));
	int bell[2], err;
	bool sent[2];
	uint64_t size;

	if (!ch || chan_region_size(v->ring_size, v->deep_size, &size)) {
		free(ch);
		return CTL_R_NO_MEMORY;
	}
	if (quota_take(dom, size)) {
		free(ch);
		return CTL_R_QUOTA;
	}
	ch->region_size = size;
	ch->region_fd = -1;
	err = chan_region_create(v->ring_size, v->deep_size, true, 0,
				 &ch->region_fd);
	if (!err)
		err = xport_doorbell_pair(bell);
	if (err) {
		struct domain **d = dom;

		for (int i = 0; i < (d[0] == d[1] ? 1 : 2); i++) {
			d[i]->channels--;
			d[i]->bytes -= size;
		}
		if (ch->region_fd >= 0)
			close(ch->region_fd);
		free(ch);
		return CTL_R_NO_MEMORY;
	}
	ch->id = D.next_id++;
	ch->created_ms = now_ms();
	ch->ring_size = v->ring_size;
	ch->deep_size = v->deep_size;
	ch->rule_line = v->line;
	end_init(&ch->end[0], ch, a);
	end_init(&ch->end[1], ch, b);
	ch->end[0].dom = dom[0];
	ch->end[1].dom = dom[1];
	link_add(&D.channels, &ch->node);
	D.nchannels++;
	D.paired++;
	/* An end that gets no half must be told, or it waits for ever; one
	 * that got its half finds the other's doorbell end closed with ours
	 * and its bytes stay on TCP. A channel neither end holds goes now. */
	err = send_chan(&ch->end[0], 0, ch->region_fd, bell[0]);
	sent[0] = !err;
	if (sent[0])
		err = send_chan(&ch->end[1], 1, ch->region_fd, bell[1]);
	sent[1] = sent[0] && !err;
	close(bell[0]);
	close(bell[1]);
	if (sent[1])
		return 0;
	log_warn("channel %llu: end %d (pid %d) could not take its half: %s",
		 (unsigned long long)ch->id, sent[0], (int)ch->end[sent[0]].cl->pid,
		 strerror(-err));
	for (int i = 0; i < 2; i++) {
		if (sent[i])
			continue;
		conn_nochan(ch->end[i].cl, ch->end[i].token, &ch->end[i].k,
			    CTL_R_PEER_FAILED);
		end_gone(&ch->end[i]); /* the second one frees ch */
	}
	return 0;
}

static void log_pair(const char *what, struct reg *a, struct reg *b,
		     unsigned int line)
{
	char x[64], y[64];

	log_info("%s %s (pid %d uid %u) <-> %s (pid %d uid %u), rule %u", what,
		 kaddr_str(&a->k.local, x, sizeof(x)), (int)a->cl->pid, a->cl->uid,
		 kaddr_str(&b->k.local, y, sizeof(y)), (int)b->cl->pid, b->cl->uid,
		 line);
}

static void pair(struct reg *a, struct reg *b)
{
	struct pol_end pa, pb;
	struct pol_verdict v;
	struct domain *dom[2];
	uint32_t wish = a->ring_wish;
	int reason;

	if (b->ring_wish && (!wish || b->ring_wish < wish))
		wish = b->ring_wish;
	pol_end_of(a, &pa);
	pol_end_of(b, &pb);
	policy_decide(D.pol, &pa, &pb, wish, kfacts_netns_ino, &v);
	if (!v.allow) {
		log_pair("denied", a, b, v.line);
		reason = CTL_R_DENIED;
	} else {
		dom[0] = domain_get(a->cl->uid, a->ns->ino);
		dom[1] = domain_get(b->cl->uid, b->ns->ino);
		reason = dom[0] && dom[1] ? make_channel(a, b, &v, dom)
					  : CTL_R_NO_MEMORY;
		/* Each domain_get() took a reference, even for one domain. */
		for (int i = 0; reason && i < 2; i++)
			if (dom[i])
				domain_put(dom[i]);
		if (reason == CTL_R_QUOTA)
			log_pair("quota reached for", a, b, v.line);
		else if (!reason)
			log_pair("paired", a, b, v.line);
	}
	if (reason) {
		conn_nochan(a->cl, a->token, &a->k, reason);
		conn_nochan(b->cl, b->token, &b->k, reason);
	}
	reg_free(a);
	reg_free(b);
}

void reg_wait(struct reg *r)
{
	/* The pending list is ordered by deadline (a reload may have made
	 * pending_timeout shorter than for those before us). */
	r->deadline_ms = now_ms() + policy_pending_ms(D.pol);
	link_del(&r->tnode);
	{
		struct link *at = D.pending.prev;

		while (at != &D.pending &&
		       link_entry(at, struct reg, tnode)->deadline_ms > r->deadline_ms)
			at = at->prev;
		link_add(at->next, &r->tnode);
	}
	r->hnext = D.hash[tuple_hash(&r->k.local, &r->k.remote)];
	D.hash[tuple_hash(&r->k.local, &r->k.remote)] = r;
}

struct reg *reg_find(const struct kaddr *local, const struct kaddr *remote)
{
	for (struct reg *r = D.hash[tuple_hash(local, remote)]; r; r = r->hnext)
		if (!r->listener && kaddr_eq(&r->k.local, local) &&
		    kaddr_eq(&r->k.remote, remote))
			return r;
	return NULL;
}

/* Guest mode: the channel of r whose other end is in a peer VM, in a slot
 * of size bytes with rings of ring bytes; policy (the remote end: as r's
 * uid, gid and netns, at the remote port: the host decided which VMs pair)
 * and quota as for a local pair. NULL and *reason if not. */
struct channel *channel_new_remote(struct reg *r, uint32_t ring, uint64_t size,
				   int *reason)
{
	struct pol_end pa, pb;
	struct pol_verdict v;
	struct domain *dom[2];
	struct channel *ch;

	pol_end_of(r, &pa);
	pb = pa;
	pb.port = r->k.remote.port;
	policy_decide(D.pol, &pa, &pb, ring, kfacts_netns_ino, &v);
	if (!v.allow) {
		*reason = CTL_R_DENIED;
		return NULL;
	}
	dom[0] = domain_get(r->cl->uid, r->ns->ino);
	dom[1] = domain_get(r->cl->uid, r->ns->ino); /* a reference per end */
	ch = dom[0] && dom[1] ? calloc(1, sizeof(*ch)) : NULL;
	*reason = !ch ? CTL_R_NO_MEMORY : quota_take(dom, size) ? CTL_R_QUOTA : 0;
	if (*reason) {
		free(ch);
		domain_put(dom[0]);
		domain_put(dom[1]);
		return NULL;
	}
	ch->id = D.next_id++;
	ch->created_ms = now_ms();
	ch->ring_size = ring;
	ch->region_size = size;
	ch->region_fd = -1;
	ch->rule_line = v.line;
	end_init(&ch->end[0], ch, r);
	ch->end[0].dom = dom[0];
	ch->end[1].ch = ch;
	ch->end[1].dom = dom[1];
	ch->end[1].k.local = r->k.remote;
	ch->end[1].k.remote = r->k.local;
	ch->end[1].uid = r->cl->uid;
	ch->end[1].gid = r->cl->gid;
	link_init(&ch->end[1].cnode);
	link_add(&D.channels, &ch->node);
	D.nchannels++;
	D.paired++;
	return ch;
}

static bool token_pending(const struct client *cl, uint64_t token)
{
	for (const struct link *l = cl->regs.next; l != &cl->regs; l = l->next)
		if (link_entry(l, struct reg, cnode)->token == token)
			return true;
	return false;
}

/* The pending registration of the same socket, if any: a socket held
 * by two processes (after fork, or passed) is nobody's to attach. */
static struct reg *cookie_pending(uint64_t cookie, const struct reg *self)
{
	for (struct link *l = D.pending.next; l != &D.pending; l = l->next) {
		struct reg *r = link_entry(l, struct reg, tnode);

		if (r != self && r->k.sock_cookie == cookie)
			return r;
	}
	return NULL;
}

void reg_conn(struct client *cl, const struct ctl_reg *m, int fd)
{
	struct reg *r, *c, *next, *cand[2];
	unsigned int dead, dead_r = 0;
	int reason, n = 0, checks = 0;
	char x[KADDR_STRLEN];

	if (cl->pending >= policy_pending_max(D.pol)) {
		close(fd);
		client_nochan(cl, m->token, CTL_R_LIMIT);
		return;
	}
	if (token_pending(cl, m->token)) {
		close(fd);
		client_nochan(cl, m->token, CTL_R_DUPLICATE);
		return;
	}
	r = reg_new(cl, m, fd, false, &reason);
	/* Never hold the application's socket: its close must send FIN. */
	close(fd);
	if (!r) {
		client_nochan(cl, m->token, reason);
		return;
	}
	link_add(&D.pending, &r->tnode);
	cl->pending++;
	D.npending++;
	cand[0] = cookie_pending(r->k.sock_cookie, r);
	if (cand[0]) {
		conn_nochan(cand[0]->cl, cand[0]->token, &cand[0]->k,
			    CTL_R_DUPLICATE);
		reg_free(cand[0]);
		conn_nochan(cl, m->token, &r->k, CTL_R_DUPLICATE);
		reg_free(r);
		return;
	}
	if (D.guest && guest_reg(r))
		return;
	for (c = D.hash[tuple_hash(&r->k.remote, &r->k.local)]; c && n < 2;
	     c = next) {
		next = c->hnext;
		if (!mirrors(r, c))
			continue;
		if (r->ns != c->ns && ++checks > MAX_LINK_CHECKS) {
			log_warn("%s: more than %d lookalikes, not all checked",
				 kaddr_str(&r->k.local, x, sizeof(x)),
				 MAX_LINK_CHECKS);
			break;
		}
		if (joined(r, c, &dead)) {
			cand[n++] = c;
			continue;
		}
		/* Either may be waiting for another partner; one whose way
		 * out joins no netns never will. */
		dead_r |= dead & KLINK_DEAD_A;
		if (dead & KLINK_DEAD_B) {
			conn_nochan(c->cl, c->token, &c->k, CTL_R_NOT_LOCAL);
			reg_free(c);
		}
	}
	if (!n && dead_r) {
		conn_nochan(cl, m->token, &r->k, CTL_R_NOT_LOCAL);
		reg_free(r);
		return;
	}
	if (n == 1 && alive(r) && alive(cand[0])) {
		pair(cand[0], r);
		return;
	}
	if (n > 1) {
		log_warn("ambiguous connection %s: more than one candidate",
			 kaddr_str(&r->k.local, x, sizeof(x)));
		for (int i = 0; i < n; i++) {
			conn_nochan(cand[i]->cl, cand[i]->token, &cand[i]->k,
				    CTL_R_AMBIGUOUS);
			reg_free(cand[i]);
		}
		conn_nochan(cl, m->token, &r->k, CTL_R_AMBIGUOUS);
		reg_free(r);
		return;
	}
	if (n == 1 && !alive(cand[0])) { /* its socket is gone */
		conn_nochan(cand[0]->cl, cand[0]->token, &cand[0]->k,
			    CTL_R_NOT_TCP);
		reg_free(cand[0]);
	}
	reg_wait(r);
}

void reg_listen(struct client *cl, const struct ctl_reg *m, int fd)
{
	int reason;
	struct reg *r;

	if (token_pending(cl, m->token)) {
		close(fd);
		client_nochan(cl, m->token, CTL_R_DUPLICATE);
		return;
	}
	if (cl->listeners >= policy_pending_max(D.pol)) {
		close(fd);
		client_nochan(cl, m->token, CTL_R_LIMIT);
		return;
	}
	r = reg_new(cl, m, fd, true, &reason);
	close(fd);
	if (!r) {
		client_nochan(cl, m->token, reason);
		return;
	}
	cl->listeners++;
	D.nlisteners++;
	for (struct link *l = cl->regs.next; l != &cl->regs; l = l->next) {
		struct reg *o = link_entry(l, struct reg, cnode);

		if (o != r && o->listener && o->k.sock_cookie == r->k.sock_cookie) {
			reg_free(r); /* that socket is announced already */
			client_nochan(cl, m->token, CTL_R_DUPLICATE);
			return;
		}
	}
	D.table_dirty = true;
}

void reg_unreg(struct client *cl, const struct ctl_unreg *m)
{
	for (struct link *l = cl->regs.next; l != &cl->regs; l = l->next) {
		struct reg *r = link_entry(l, struct reg, cnode);

		if (r->token == m->token) {
			bool lis = r->listener;

			reg_free(r);
			if (lis)
				D.table_dirty = true;
			return;
		}
	}
	for (struct link *l = cl->ends.next; l != &cl->ends; l = l->next) {
		struct chan_end *e = link_entry(l, struct chan_end, cnode);

		if (e->token == m->token) {
			e->bytes_tx = m->bytes_tx;
			e->bytes_rx = m->bytes_rx;
			end_gone(e);
			return;
		}
	}
}

void pending_expire(void)
{
	uint64_t now = now_ms();

	while (!link_empty(&D.pending)) {
		struct reg *r = link_entry(D.pending.next, struct reg, tnode);

		if (r->deadline_ms > now)
			break;
		conn_nochan(r->cl, r->token, &r->k, CTL_R_EXPIRED);
		reg_free(r);
	}
}

int evacuate(const struct ctl_evacuate *m, unsigned int *count)
{
	*count = 0;
	for (struct link *l = D.channels.next; l != &D.channels; l = l->next) {
		struct channel *ch = link_entry(l, struct channel, node);

		for (int i = 0; i < 2; i++) {
			struct chan_end *e = &ch->end[i];
			struct ctl_detach d = { 0 };

			if (!e->cl || (m->has_uid && e->uid != m->uid) ||
			    (m->netns_ino && e->ns->ino != m->netns_ino))
				continue;
			ctl_hdr_init(&d.h, CTL_DETACH, 0);
			d.token = e->token;
			if (!client_send(e->cl, &d, NULL, 0))
				(*count)++;
		}
	}
	return 0;
}
