/* SPDX-License-Identifier: MIT */
/*
 * Description: ivmcd inside a QEMU guest (--guest; docs/vm.md, "The
 * guest's ivmcd"). The host's ivmc-vmd gives this VM a control region
 * (written by the host only) and, per peer VM the host's policy pairs it
 * with, a pair region shared by the two VMs only. Per pair, channel 0 of
 * the host's layout is the link between the two guests' daemons; the rest
 * of the region is cut into two halves of fixed-size slots, one half per
 * side. A TCP connection to an address the control region gives a peer VM
 * is paired by messages on the link: each daemon announces its end (REG);
 * the end whose address:port sorts first allocates a slot of its own half,
 * formats a channel there (side stream: the connection itself), and says
 * which (CHAN, with the slot's generation); each hands its client the BAR
 * and the slot's offset (CTL_CHAN_MEM). A slot is used again only once
 * both ends let it go (our client's end, the peer's FREE): so a late write
 * of a slow peer never lands in a newer connection. Everything the peer
 * VM writes (messages, slot contents) is checked before use; the control
 * region is the authority on who the peer is and whether it lives.
 * Where both guests take the pair device's interrupts (vfio-pci), the
 * first slots of each half each have an MSI-X vector of their own: the
 * client gets the vector's eventfd and the device's registers, and rings
 * the peer's client directly (ivmc_vm_vec_slots()).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include "chan/chan.h"
#include "transport/ivshmem_vm.h"
#include "transport/transport.h"
#include "ivmcd.h"

#define G_OUT_MAX     1024u /* queued messages per link */
#define G_REMOTE_MAX  4096u /* peer REGs waiting for our end, per link */
#define G_DEV_MAX     64
#define G_TICK_BUSY_MS 1   /* link polling while anything is under way */
#define G_TICK_IDLE_MS 100 /* idle: the control region and the link */
#define G_BUSY_MS     2000 /* under way: this long after the last message */
#define G_VEC_WANT    XPORT_IVSHMEM_VEC_MAX /* vectors asked of vfio */

struct gslot {
	uint32_t gen;
	bool used;	   /* allocated (ours) / held by our end (theirs) */
	bool local_gone;   /* ours: our client's end let it go */
	bool peer_freed;   /* ours: the peer's FREE for this generation */
};

/* A peer REG waiting for our own end of that connection (allocator). */
struct gremote {
	struct link node;
	struct kaddr local, remote; /* as we see the connection */
	uint64_t deadline_ms;
};

struct gpeer {
	struct ivmc_shm_vm_pair p; /* from the control region */
	char bdf[13];
	int fd;			   /* the BAR (resource2), or -1 */
	uint8_t *map;
	uint64_t size, map_len;	   /* the BAR's, the mapping's */
	struct chan *link;
	uint64_t base, slot_size;  /* carved slots from base, per half */
	uint32_t nslots;
	struct gslot *mine, *theirs;
	struct link remotes;
	uint32_t nremotes;
	uint8_t out[G_OUT_MAX * IVMC_VM_MSG_SIZE];
	uint32_t outlen;
	uint8_t in[IVMC_VM_MSG_SIZE];
	uint32_t inlen;
	uint64_t sent, received, bad;
	uint64_t lost;		   /* messages not sent: the queue was full */
	bool lost_said;		   /* logged since the queue last moved */
	uint64_t dead_epoch;	   /* the link failed in this session */
	bool live;
	struct xport_ivshmem_irq *irq; /* the device's vectors, or NULL */
	int regs_fd;		   /* its registers, for clients (with irq) */
	uint32_t peer_nvec;	   /* the peer's vectors (its REG, CHAN) */
	uint64_t vec_slots;	   /* connections given a vector */
};

static struct {
	int tfd;
	int epfd;		   /* the daemon's, for the link's interrupts */
	void *tag;		   /* what our events carry (guest_tick()) */
	const void *ctl_map;
	struct ivmc_shm_vm_ctl c;
	uint64_t seq;
	struct gpeer peer[IVMC_VM_PAIR_MAX];
	uint32_t npeer;
	uint64_t busy_until_ms;
	unsigned int tick_ms;
} G = { .tfd = -1, .epfd = -1 };

static void kaddr_of(struct kaddr *k, const struct ivmc_shm_vm_addr *a)
{
	memset(k, 0, sizeof(*k));
	if (a->family == 4) {
		k->a[10] = k->a[11] = 0xff;
		memcpy(k->a + 12, a->addr, 4);
	} else {
		memcpy(k->a, a->addr, 16);
	}
}

static struct gpeer *peer_of_addr(const uint8_t a[16])
{
	for (uint32_t i = 0; i < G.npeer; i++) {
		struct gpeer *gp = &G.peer[i];

		for (unsigned int j = 0; j < gp->p.naddr; j++) {
			struct kaddr k;

			kaddr_of(&k, &gp->p.addr[j]);
			if (!memcmp(k.a, a, 16))
				return gp;
		}
	}
	return NULL;
}

/* Is a one of this VM's addresses, as the host gave them? */
static bool our_addr(const uint8_t a[16])
{
	for (uint32_t i = 0; i < G.c.naddr; i++) {
		struct kaddr k;

		kaddr_of(&k, &G.c.addr[i]);
		if (!memcmp(k.a, a, 16))
			return true;
	}
	return false;
}

/* Which end allocates: the one whose address:port sorts first. */
static bool we_allocate(const struct kaddr *local, const struct kaddr *remote)
{
	int c = memcmp(local->a, remote->a, 16);

	return c ? c < 0 : local->port < remote->port;
}

static void set_tick(unsigned int ms)
{
	struct itimerspec it = { { 0, 0 }, { 0, 0 } };

	if (ms == G.tick_ms)
		return;
	G.tick_ms = ms;
	it.it_interval.tv_sec = ms / 1000;
	it.it_interval.tv_nsec = (long)(ms % 1000) * 1000000;
	it.it_value = it.it_interval;
	timerfd_settime(G.tfd, 0, &it, NULL);
}

/* Both daemons of the pair take interrupts: each rings the other's
 * vector 0 when it wrote to the link, so the link needs no quick look. */
static bool link_rings(const struct gpeer *gp)
{
	return gp->irq && gp->peer_nvec;
}

/* A message went or came: look at the link every ms for a while, unless
 * the peer rings us (and nothing waits to go out). */
static void busy(const struct gpeer *gp)
{
	if (link_rings(gp) && !gp->outlen)
		return;
	G.busy_until_ms = now_ms() + G_BUSY_MS;
	set_tick(G_TICK_BUSY_MS);
}

/* ---- the link ------------------------------------------------------------ */

static void link_flush(struct gpeer *gp)
{
	uint32_t done = 0;

	while (gp->live && done < gp->outlen) {
		struct iovec iov = { gp->out + done, gp->outlen - done };
		ssize_t n = chan_sendv(gp->link, &iov, 1, CHAN_NONBLOCK);

		if (n == -EAGAIN)
			break;
		if (n <= 0) {
			log_warn("link to %s: send: %s", gp->p.peer,
				 strerror(n ? (int)-n : EPIPE));
			gp->live = false;
			break;
		}
		done += (uint32_t)n;
		gp->sent += (uint64_t)n / IVMC_VM_MSG_SIZE;
		gp->lost_said = false;
	}
	memmove(gp->out, gp->out + done, gp->outlen - done);
	gp->outlen -= done;
	/* Vector 0 is the link's: the peer's daemon wakes to read. */
	if (done && gp->irq)
		(void)xport_ivshmem_irq_ring_vec(gp->irq, 0);
}

/* Queue a message (whole messages only: a partial send stays queued).
 * Returns false if the link is down or the queue full. A peer that reads
 * nothing fills the queue; what we would send then is counted, and said
 * once until the queue moves again: each of its messages may cost us one
 * (a CHAN we refuse, a FREE), and a log line each would be its to write. */
static bool link_send(struct gpeer *gp, const struct ivmc_shm_vm_msg *m)
{
	if (!gp->live)
		return false;
	if (gp->outlen + IVMC_VM_MSG_SIZE > sizeof(gp->out)) {
		gp->lost++;
		if (!gp->lost_said)
			log_warn("link to %s: the peer reads nothing, %u "
				 "messages queued: messages lost from here on "
				 "(\"msgs_lost\" in the status)", gp->p.peer,
				 G_OUT_MAX);
		gp->lost_said = true;
		return false;
	}
	memcpy(gp->out + gp->outlen, m, IVMC_VM_MSG_SIZE);
	gp->outlen += IVMC_VM_MSG_SIZE;
	link_flush(gp);
	busy(gp);
	return true;
}

static void msg_init(struct ivmc_shm_vm_msg *m, int type)
{
	memset(m, 0, sizeof(*m));
	m->magic = IVMC_VM_MSG_MAGIC;
	m->type = (uint16_t)type;
}

/* A message about a connection, named as we see it. */
static void msg_conn(struct ivmc_shm_vm_msg *m, int type,
		     const struct kaddr *local, const struct kaddr *remote)
{
	msg_init(m, type);
	memcpy(m->la, local->a, 16);
	memcpy(m->ra, remote->a, 16);
	m->lport = local->port;
	m->rport = remote->port;
}

static void send_free(struct gpeer *gp, uint32_t slot, uint32_t gen)
{
	struct ivmc_shm_vm_msg m;

	msg_init(&m, IVMC_VM_MSG_FREE);
	m.slot = slot;
	m.gen = gen;
	(void)link_send(gp, &m); /* lost: the peer's slot, its loss */
}

static void send_nochan(struct gpeer *gp, const struct kaddr *local,
			const struct kaddr *remote, int reason)
{
	struct ivmc_shm_vm_msg m;

	msg_conn(&m, IVMC_VM_MSG_NOCHAN, local, remote);
	m.reason = (uint16_t)reason;
	(void)link_send(gp, &m);
}

/* ---- slots and channels -------------------------------------------------- */

static uint32_t own_nvec(const struct gpeer *gp)
{
	return gp->irq ? xport_ivshmem_irq_nvec(gp->irq) : 0;
}

/* The vector of slot of side's half, or 0: it polls. */
static uint32_t slot_vec(const struct gpeer *gp, int side, uint32_t slot)
{
	uint32_t k = ivmc_vm_vec_slots(own_nvec(gp), gp->peer_nvec);

	return slot < k ? 1 + (uint32_t)side * k + slot : 0;
}

static uint64_t slot_off(const struct gpeer *gp, int side, uint32_t slot)
{
	return ivmc_vm_slot_off(gp->base, gp->nslots, gp->slot_size, side, slot);
}

static int send_chan_mem(struct channel *ch, int side)
{
	struct chan_end *e = &ch->end[0];
	struct gpeer *gp = ch->guest;
	struct ctl_chan_mem m = { 0 };
	int fds[3] = { gp->fd, -1, gp->regs_fd };

	ctl_hdr_init(&m.h, CTL_CHAN_MEM, 0);
	m.token = e->token;
	m.chan_id = ch->id;
	m.offset = slot_off(ch->guest, ch->ours ? ch->guest->p.side
					       : 1 - ch->guest->p.side, ch->slot);
	m.size = ch->guest->slot_size;
	m.side = (uint32_t)side;
	m.ring_size = ch->ring_size;
	if (ch->vec) {
		fds[1] = xport_ivshmem_irq_vfd(gp->irq, ch->vec);
		m.bell_peer = gp->p.peer_id;
		m.bell_vec = ch->vec;
	}
	return client_send(e->cl, &m, fds, ch->vec ? 3 : 1);
}

/* Make the channel of r in slot (ours: of our half) and hand our client
 * its end. Returns 0 or a CTL_R_* reason (r is then still pending). */
static int chan_make(struct gpeer *gp, struct reg *r, uint32_t slot,
		     uint32_t gen, uint32_t vec, bool ours)
{
	struct channel *ch;
	int reason;

	ch = channel_new_remote(r, gp->p.ring_size, gp->slot_size, &reason);
	if (!ch)
		return reason;
	ch->guest = gp;
	ch->slot = slot;
	ch->gen = gen;
	ch->vec = vec;
	ch->ours = ours;
	if (vec)
		gp->vec_slots++;
	ch->mem_hdr = gp->map + slot_off(gp, ours ? gp->p.side : 1 - gp->p.side,
					 slot);
	if (ours) {
		gp->mine[slot] = (struct gslot){ gen, true, false, false };
	} else {
		gp->theirs[slot].used = true;
		gp->theirs[slot].gen = gen;
	}
	{
		char a[KADDR_STRLEN], b[KADDR_STRLEN];

		log_info("paired %s (pid %d uid %u) <-> %s in VM %s: slot %u of "
			 "%s half, generation %u%s", kaddr_str(&r->k.local, a, sizeof(a)),
			 (int)r->cl->pid, r->cl->uid,
			 kaddr_str(&r->k.remote, b, sizeof(b)), gp->p.peer, slot,
			 ours ? "our" : "its", gen, vec ? ", interrupt" : "");
	}
	/* The allocator is side 0 of the channel. */
	if (send_chan_mem(ch, ours ? 0 : 1)) {
		conn_nochan(r->cl, r->token, &r->k, CTL_R_PEER_FAILED);
		end_gone(&ch->end[0]); /* frees ch, lets the slot go */
	}
	reg_free(r);
	return 0;
}

static void slot_release(struct gpeer *gp, uint32_t slot)
{
	struct gslot *s = &gp->mine[slot];

	if (s->used && s->local_gone && s->peer_freed)
		s->used = false;
}

void guest_chan_free(struct channel *ch)
{
	struct gpeer *gp = ch->guest;

	if (ch->ours) {
		gp->mine[ch->slot].local_gone = true;
		slot_release(gp, ch->slot);
	} else if (gp->theirs[ch->slot].used &&
		   gp->theirs[ch->slot].gen == ch->gen) {
		gp->theirs[ch->slot].used = false;
		send_free(gp, ch->slot, ch->gen);
	}
}

/* We allocate for r, whose peer end has announced itself. */
static void allocate(struct gpeer *gp, struct reg *r)
{
	struct kconn k = r->k; /* r goes with chan_make() */
	struct ivmc_shm_vm_msg m;
	uint32_t slot, gen;
	int reason, err;

	for (slot = 0; slot < gp->nslots && gp->mine[slot].used; slot++)
		;
	if (slot == gp->nslots) {
		send_nochan(gp, &r->k.local, &r->k.remote, CTL_R_QUOTA);
		conn_nochan(r->cl, r->token, &r->k, CTL_R_QUOTA);
		reg_free(r);
		return;
	}
	/* A new generation: counters start apart from any earlier one's. */
	gen = gp->mine[slot].gen + 1;
	err = chan_region_init(gp->map + slot_off(gp, gp->p.side, slot),
			       gp->slot_size, gp->p.ring_size, true, gen << 20);
	reason = err ? CTL_R_NO_MEMORY
		     : chan_make(gp, r, slot, gen, slot_vec(gp, gp->p.side, slot),
				 true);
	if (reason) {
		if (err)
			log_warn("slot %u of %s: %s", slot, gp->p.peer,
				 strerror(-err));
		send_nochan(gp, &r->k.local, &r->k.remote, reason);
		conn_nochan(r->cl, r->token, &r->k, reason);
		reg_free(r);
		return;
	}
	msg_conn(&m, IVMC_VM_MSG_CHAN, &k.local, &k.remote);
	m.slot = slot;
	m.gen = gen;
	m.ring_size = gp->p.ring_size;
	m.vec = slot_vec(gp, gp->p.side, slot);
	if (!link_send(gp, &m)) /* the peer never hears of it: no FREE */
		gp->mine[slot].peer_freed = true;
	slot_release(gp, slot);
}

static struct gremote *remote_find(struct gpeer *gp, const struct kaddr *l,
				   const struct kaddr *rm)
{
	for (struct link *x = gp->remotes.next; x != &gp->remotes; x = x->next) {
		struct gremote *g = link_entry(x, struct gremote, node);

		if (!memcmp(&g->local, l, sizeof(*l)) &&
		    !memcmp(&g->remote, rm, sizeof(*rm)))
			return g;
	}
	return NULL;
}

static void remote_free(struct gpeer *gp, struct gremote *g)
{
	link_del(&g->node);
	gp->nremotes--;
	free(g);
}

bool guest_reg(struct reg *r)
{
	struct gpeer *gp = peer_of_addr(r->k.remote.a);
	struct gremote *g;
	struct ivmc_shm_vm_msg m;

	if (!gp)
		return false;
	if (!gp->live || !gp->nslots) {
		conn_nochan(r->cl, r->token, &r->k, CTL_R_NOT_LOCAL);
		reg_free(r);
		return true;
	}
	msg_conn(&m, IVMC_VM_MSG_REG, &r->k.local, &r->k.remote);
	m.vec = own_nvec(gp);
	if (!link_send(gp, &m)) {
		conn_nochan(r->cl, r->token, &r->k, CTL_R_LIMIT);
		reg_free(r);
		return true;
	}
	g = remote_find(gp, &r->k.local, &r->k.remote);
	if (g && we_allocate(&r->k.local, &r->k.remote)) {
		remote_free(gp, g);
		allocate(gp, r);
		return true;
	}
	reg_wait(r); /* expires as a local one does */
	return true;
}

/* ---- messages from the peer VM (hostile input) ------------------------- */

static void on_msg(struct gpeer *gp, const struct ivmc_shm_vm_msg *m)
{
	struct kaddr local = { { 0 }, 0 }, remote = { { 0 }, 0 };
	struct reg *r;

	/* The peer's local is our remote: it must be one of the peer's
	 * addresses as the host gave them, and ours one of this VM's. */
	memcpy(local.a, m->ra, 16);
	local.port = m->rport;
	memcpy(remote.a, m->la, 16);
	remote.port = m->lport;
	if (m->magic != IVMC_VM_MSG_MAGIC || m->pad) {
		gp->bad++;
		return;
	}
	if (m->type == IVMC_VM_MSG_FREE) {
		if (m->slot >= gp->nslots || !gp->mine[m->slot].used ||
		    gp->mine[m->slot].gen != m->gen) {
			gp->bad++;
			return;
		}
		gp->mine[m->slot].peer_freed = true;
		slot_release(gp, m->slot);
		return;
	}
	if (peer_of_addr(remote.a) != gp || !our_addr(local.a)) {
		gp->bad++;
		return;
	}
	r = reg_find(&local, &remote);
	switch (m->type) {
	case IVMC_VM_MSG_REG:
		gp->peer_nvec = m->vec; /* ivmc_vm_vec_slots() takes the min */
		if (!we_allocate(&local, &remote)) {
			gp->bad++;
			return;
		}
		if (r) {
			allocate(gp, r);
		} else if (!remote_find(gp, &local, &remote)) {
			struct gremote *g = gp->nremotes < G_REMOTE_MAX
						    ? calloc(1, sizeof(*g)) : NULL;

			if (!g) {
				send_nochan(gp, &local, &remote, CTL_R_LIMIT);
				return;
			}
			g->local = local;
			g->remote = remote;
			g->deadline_ms = now_ms() + policy_pending_ms(D.pol);
			link_add(&gp->remotes, &g->node);
			gp->nremotes++;
		}
		return;
	case IVMC_VM_MSG_CHAN:
		/* Its vector: the one we would give that slot, or none. */
		if (we_allocate(&local, &remote) || m->slot >= gp->nslots ||
		    m->ring_size != gp->p.ring_size || gp->theirs[m->slot].used ||
		    (m->vec && m->vec != slot_vec(gp, 1 - gp->p.side, m->slot))) {
			gp->bad++;
			if (m->slot < gp->nslots && !gp->theirs[m->slot].used)
				send_free(gp, m->slot, m->gen);
			if (r) {
				conn_nochan(r->cl, r->token, &r->k, CTL_R_PEER_FAILED);
				reg_free(r);
			}
			return;
		}
		if (!r) { /* ours expired or closed meanwhile */
			send_free(gp, m->slot, m->gen);
			return;
		}
		{
			int reason = chan_make(gp, r, m->slot, m->gen, m->vec,
					       false);

			if (reason) {
				send_free(gp, m->slot, m->gen);
				conn_nochan(r->cl, r->token, &r->k, reason);
				reg_free(r);
			}
		}
		return;
	case IVMC_VM_MSG_NOCHAN: {
		struct gremote *g = remote_find(gp, &local, &remote);

		if (g)
			remote_free(gp, g);
		if (r) {
			conn_nochan(r->cl, r->token, &r->k,
				    m->reason && m->reason < CTL_R_MAX
					    ? m->reason : CTL_R_PEER_FAILED);
			reg_free(r);
		}
		return;
	}
	default:
		gp->bad++;
	}
}

static void link_rx(struct gpeer *gp)
{
	for (int i = 0; gp->live && i < 256; i++) {
		struct iovec iov = { gp->in + gp->inlen,
				     IVMC_VM_MSG_SIZE - gp->inlen };
		ssize_t n = chan_recvv(gp->link, &iov, 1, CHAN_NONBLOCK);

		if (n == -EAGAIN)
			return;
		if (n <= 0) {
			log_warn("link to %s: %s", gp->p.peer,
				 n ? strerror((int)-n) : "end of stream");
			gp->live = false;
			return;
		}
		gp->inlen += (uint32_t)n;
		if (gp->inlen < IVMC_VM_MSG_SIZE)
			continue;
		gp->inlen = 0;
		gp->received++;
		busy(gp);
		{
			struct ivmc_shm_vm_msg m;

			memcpy(&m, gp->in, sizeof(m));
			on_msg(gp, &m);
		}
	}
}

/* ---- the pairs, from the control region --------------------------------- */

/* Everything of a pair whose session ended: our clients' channels end
 * (what the peer published stays readable), pending ends go to TCP. */
static void peer_down(struct gpeer *gp, const char *why)
{
	if (gp->link)
		log_info("pair with %s: %s", gp->p.peer, why);
	for (struct link *l = D.channels.next; l != &D.channels; l = l->next) {
		struct channel *ch = link_entry(l, struct channel, node);
		struct ctl_peer_gone m = { 0 };

		if (ch->guest != gp || !ch->end[0].cl)
			continue;
		ctl_hdr_init(&m.h, CTL_PEER_GONE, 0);
		m.token = ch->end[0].token;
		(void)client_send(ch->end[0].cl, &m, NULL, 0);
		if (ch->vec && gp->irq) {
			/* A client asleep on its bell wakes to read it. */
			static const uint64_t one = 1;
			int efd = xport_ivshmem_irq_vfd(gp->irq, ch->vec);

			if (efd >= 0 && write(efd, &one, sizeof(one)) < 0)
				log_debug("waking slot %u: %s", ch->slot,
					  strerror(errno));
		}
		ch->guest = NULL; /* the slots go with the session */
		ch->mem_hdr = NULL;
	}
	for (struct link *l = D.pending.next, *n; l != &D.pending; l = n) {
		struct reg *r = link_entry(l, struct reg, tnode);

		n = l->next;
		if (peer_of_addr(r->k.remote.a) == gp) {
			conn_nochan(r->cl, r->token, &r->k, CTL_R_PEER_FAILED);
			reg_free(r);
		}
	}
	while (!link_empty(&gp->remotes))
		remote_free(gp, link_entry(gp->remotes.next, struct gremote, node));
	if (gp->link)
		chan_close(gp->link);
	gp->link = NULL;
	gp->live = false;
	gp->outlen = gp->inlen = 0;
	gp->lost_said = false;
	D.table_dirty = true;
}

/* The device's interrupts, one vector per slot that has one: without
 * them (no IOMMU, no vfio-pci, another holder) the slots poll. */
static void irq_open(struct gpeer *gp)
{
	int err = D.guest_poll ? -ECANCELED
			       : xport_ivshmem_irq_open_vec(gp->bdf, gp->p.peer_id,
							    G_VEC_WANT, &gp->irq);

	if (!err) {
		gp->regs_fd = xport_ivshmem_regs_open(gp->bdf);
		if (gp->regs_fd < 0) {
			err = gp->regs_fd;
			xport_ivshmem_irq_close(gp->irq);
			gp->irq = NULL;
		}
	}
	if (!err) {
		/* The link's vector wakes us as our tick does. */
		struct epoll_event ev = { .events = EPOLLIN, .data.ptr = G.tag };

		if (epoll_ctl(G.epfd, EPOLL_CTL_ADD,
			      xport_ivshmem_irq_vfd(gp->irq, 0), &ev) < 0)
			log_warn("pair with %s: the link's interrupt: %s",
				 gp->p.peer, strerror(errno));
	}
	if (err)
		log_info("pair with %s: device %s takes no interrupts (%s): "
			 "its connections poll", gp->p.peer, gp->bdf,
			 D.guest_poll ? "--poll" : strerror(-err));
	else
		log_info("pair with %s: device %s: %u interrupt vectors",
			 gp->p.peer, gp->bdf, xport_ivshmem_irq_nvec(gp->irq));
}

static void dev_close(struct gpeer *gp)
{
	if (gp->irq)
		(void)epoll_ctl(G.epfd, EPOLL_CTL_DEL,
				xport_ivshmem_irq_vfd(gp->irq, 0), NULL);
	xport_ivshmem_irq_close(gp->irq);
	gp->irq = NULL;
	if (gp->regs_fd >= 0)
		close(gp->regs_fd);
	gp->regs_fd = -1;
	if (gp->map)
		munmap(gp->map, gp->map_len);
	gp->map = NULL;
	if (gp->fd >= 0)
		close(gp->fd);
	gp->fd = -1;
}

/* The BAR of the device with this ID, mapped; the link opened. */
static int peer_up(struct gpeer *gp, char (*bdf)[13], const uint32_t *id,
		   int n)
{
	struct chan_cfg cfg = { .side = gp->p.side, .side_fd = -1,
				.wait_mode = CHAN_WAIT_SLEEP, .nonblock = true };
	uint64_t rsz;
	int i, err;

	for (i = 0; i < n && id[i] != gp->p.id; i++)
		;
	if (i == n)
		return -ENODEV;
	if (gp->fd < 0) {
		void *map;

		memcpy(gp->bdf, bdf[i], sizeof(gp->bdf));
		err = xport_ivshmem_open(gp->bdf, &gp->fd, &gp->size);
		if (err)
			return err;
		err = gp->size < gp->p.region_size
			      ? -EMSGSIZE
			      : xport_map(gp->fd, 0, gp->p.region_size, &map);
		if (err) {
			dev_close(gp);
			return err;
		}
		gp->map = map;
		gp->map_len = gp->p.region_size;
		irq_open(gp);
	}
	if (chan_region_size(gp->p.ring_size, 0, &rsz) || !gp->p.nchan ||
	    gp->p.chan_off % 4096 || gp->p.chan_off > gp->p.region_size)
		return -EPROTO;
	err = chan_open_mem(&cfg, gp->fd, gp->p.chan_off,
			    gp->p.region_size - gp->p.chan_off, &gp->link);
	if (err)
		return err;
	gp->slot_size = rsz; /* side-stream slots: the same geometry */
	ivmc_vm_carve(gp->p.region_size, gp->p.chan_off, gp->p.nchan, rsz,
		      &gp->base, &gp->nslots);
	free(gp->mine);
	free(gp->theirs);
	gp->mine = calloc(gp->nslots + 1, sizeof(*gp->mine));
	gp->theirs = calloc(gp->nslots + 1, sizeof(*gp->theirs));
	if (!gp->mine || !gp->theirs)
		return -ENOMEM;
	gp->live = true;
	gp->peer_nvec = 0; /* until its REG says */
	log_info("pair with %s: device %s ID %u side %u epoch %llu, %u slots of "
		 "%llu bytes per side", gp->p.peer, gp->bdf, gp->p.id, gp->p.side,
		 (unsigned long long)gp->p.epoch, gp->nslots,
		 (unsigned long long)gp->slot_size);
	return 0;
}

static struct gpeer *peer_by_name(const char *name)
{
	for (uint32_t i = 0; i < G.npeer; i++)
		if (!strcmp(G.peer[i].p.peer, name))
			return &G.peer[i];
	return NULL;
}

/* Bring our pairs in line with the control region (read again). */
static void sync_pairs(void)
{
	char bdf[G_DEV_MAX][13];
	uint32_t id[G_DEV_MAX];
	int n = xport_ivshmem_list(bdf, G_DEV_MAX);

	for (int i = 0; i < n; i++)
		if (xport_ivshmem_id(bdf[i], &id[i]))
			id[i] = 0;
	/* Pairs gone from the region, or in a new session. */
	for (uint32_t i = 0; i < G.npeer; i++) {
		struct gpeer *gp = &G.peer[i];
		const struct ivmc_shm_vm_pair *now = NULL;

		for (uint32_t j = 0; j < G.c.npair; j++)
			if (!strcmp(G.c.pair[j].peer, gp->p.peer))
				now = &G.c.pair[j];
		if (gp->live && (!now || now->epoch != gp->p.epoch ||
				 now->id != gp->p.id ||
				 now->peer_state != IVMC_VM_PEER_UP))
			peer_down(gp, !now ? "no longer listed"
				  : now->peer_state == IVMC_VM_PEER_GONE
					  ? "the peer VM is gone"
					  : "a new session");
		else if (!gp->live && gp->link) {
			gp->dead_epoch = gp->p.epoch; /* until a new session */
			peer_down(gp, "the link failed");
		}
		if (now && !gp->live)
			gp->p = *now;
		if (now && gp->live) { /* the host may change addresses */
			memcpy(gp->p.addr, now->addr, sizeof(now->addr));
			gp->p.naddr = now->naddr;
		}
	}
	for (uint32_t j = 0; j < G.c.npair; j++) {
		struct gpeer *gp = peer_by_name(G.c.pair[j].peer);

		if (!gp && G.npeer < IVMC_VM_PAIR_MAX) {
			gp = &G.peer[G.npeer++];
			memset(gp, 0, sizeof(*gp));
			gp->fd = gp->regs_fd = -1;
			link_init(&gp->remotes);
			gp->p = G.c.pair[j];
		}
		if (!gp || gp->live || !gp->p.attached ||
		    gp->p.peer_state != IVMC_VM_PEER_UP ||
		    gp->p.epoch == gp->dead_epoch)
			continue;
		if (gp->fd >= 0) {
			/* A new session: the same device still, and as large? */
			uint32_t cur = 0;

			if (xport_ivshmem_id(gp->bdf, &cur) || cur != gp->p.id ||
			    gp->map_len != gp->p.region_size)
				dev_close(gp);
		}
		{
			int err = peer_up(gp, bdf, id, n > 0 ? n : 0);

			if (err)
				log_warn("pair with %s: %s", gp->p.peer,
					 strerror(-err));
		}
	}
	D.table_dirty = true;
}

static int ctl_read(void)
{
	int err = -EAGAIN;

	for (int i = 0; i < 100 && err == -EAGAIN; i++) {
		err = xport_vm_ctl_read(G.ctl_map, IVMC_VM_CTL_SIZE, &G.c);
		if (err == -EAGAIN)
			usleep(100);
	}
	if (!err)
		G.seq = ivmc_load_once(&G.c.seq);
	return err;
}

void guest_tick(void)
{
	uint64_t x;

	(void)!read(G.tfd, &x, sizeof(x));
	/* The links' interrupts: taken before the links are read, so a ring
	 * for anything written after our read comes again. */
	for (uint32_t i = 0; i < G.npeer; i++)
		if (G.peer[i].irq)
			(void)!read(xport_ivshmem_irq_vfd(G.peer[i].irq, 0), &x,
				    sizeof(x));
	if (xport_vm_ctl_seq(G.ctl_map) != G.seq) {
		if (ctl_read() == 0)
			sync_pairs();
	}
	for (uint32_t i = 0; i < G.npeer; i++) {
		struct gpeer *gp = &G.peer[i];
		uint64_t now = now_ms();

		if (!gp->live) {
			if (gp->link) {
				gp->dead_epoch = gp->p.epoch;
				peer_down(gp, "the link failed");
			}
			continue;
		}
		link_rx(gp);
		link_flush(gp);
		while (!link_empty(&gp->remotes)) {
			struct gremote *g = link_entry(gp->remotes.next,
						       struct gremote, node);

			if (g->deadline_ms > now)
				break;
			remote_free(gp, g);
		}
	}
	if (now_ms() > G.busy_until_ms)
		set_tick(G_TICK_IDLE_MS);
}

void guest_table(void)
{
	for (uint32_t i = 0; i < G.npeer; i++) {
		const struct gpeer *gp = &G.peer[i];

		for (unsigned int j = 0; gp->live && j < gp->p.naddr; j++) {
			struct kaddr k;

			kaddr_of(&k, &gp->p.addr[j]);
			table_put(k.a, 0);
		}
	}
}

void guest_status(FILE *f, bool json)
{
	const char *sep = "";

	if (json)
		fprintf(f, ",\"guest\":{\"vm\":\"%s\",\"pairs\":[", G.c.name);
	else
		fprintf(f, "\nGUEST %s: PAIRS\n%-20s %-6s %-8s %-6s %-10s %-10s %-12s %s\n",
			G.c.name, "PEER", "LINK", "EPOCH", "SIDE", "SLOTS", "IN-USE",
			"IRQ-SLOTS", "MSGS OUT/IN/BAD/LOST");
	for (uint32_t i = 0; i < G.npeer; i++) {
		const struct gpeer *gp = &G.peer[i];
		uint32_t used = 0;

		uint32_t k = ivmc_vm_vec_slots(own_nvec(gp), gp->peer_nvec);

		for (uint32_t s = 0; gp->mine && s < gp->nslots; s++)
			used += gp->mine[s].used;
		if (json)
			fprintf(f, "%s{\"peer\":\"%s\",\"link\":%s,\"epoch\":%llu,\"side\":%u,\"slots\":%u,\"slots_used\":%u,\"vectors\":%u,\"peer_vectors\":%u,\"irq_slots\":%u,\"irq_conns\":%llu,\"msgs_out\":%llu,\"msgs_in\":%llu,\"msgs_bad\":%llu,\"msgs_lost\":%llu}",
				sep, gp->p.peer, gp->live ? "true" : "false",
				(unsigned long long)gp->p.epoch, gp->p.side,
				gp->nslots, used, own_nvec(gp), gp->peer_nvec, k,
				(unsigned long long)gp->vec_slots,
				(unsigned long long)gp->sent,
				(unsigned long long)gp->received,
				(unsigned long long)gp->bad,
				(unsigned long long)gp->lost);
		else
			fprintf(f, "%-20s %-6s %-8llu %-6u %-10u %-10u %-12u %llu/%llu/%llu/%llu\n",
				gp->p.peer, gp->live ? "up" : "down",
				(unsigned long long)gp->p.epoch, gp->p.side,
				gp->nslots, used, k, (unsigned long long)gp->sent,
				(unsigned long long)gp->received,
				(unsigned long long)gp->bad,
				(unsigned long long)gp->lost);
		sep = ",";
	}
	if (json)
		fprintf(f, "]}");
}

int guest_init(int epfd, void *tag)
{
	char bdf[G_DEV_MAX][13];
	struct epoll_event ev = { .events = EPOLLIN, .data.ptr = tag };
	uint32_t id;
	const char *ctl = NULL;
	uint64_t size;
	void *map;
	int n = xport_ivshmem_list(bdf, G_DEV_MAX), fd, err;

	for (int i = 0; i < n && !ctl; i++)
		if (!xport_ivshmem_id(bdf[i], &id) && id == IVMC_VM_ID_CTL)
			ctl = bdf[i];
	if (!ctl) {
		log_err("--guest: no control device (ivshmem ID %u) among %d",
			IVMC_VM_ID_CTL, n < 0 ? 0 : n);
		return -ENODEV;
	}
	err = xport_ivshmem_open(ctl, &fd, &size);
	if (!err && size < IVMC_VM_CTL_SIZE)
		err = -EMSGSIZE;
	if (err) {
		log_err("--guest: control device %s: %s", ctl, strerror(-err));
		return err;
	}
	map = mmap(NULL, IVMC_VM_CTL_SIZE, PROT_READ, MAP_SHARED, fd, 0);
	close(fd);
	if (map == MAP_FAILED)
		return -errno;
	G.ctl_map = map;
	err = ctl_read();
	if (err) {
		log_err("--guest: control region: %s", strerror(-err));
		return err;
	}
	G.epfd = epfd;
	G.tag = tag;
	G.tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
	if (G.tfd < 0 || epoll_ctl(epfd, EPOLL_CTL_ADD, G.tfd, &ev) < 0)
		return -errno;
	set_tick(G_TICK_IDLE_MS);
	log_info("--guest: VM %s, control device %s, %u pair(s)", G.c.name, ctl,
		 G.c.npair);
	sync_pairs();
	return 0;
}
