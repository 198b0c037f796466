/* SPDX-License-Identifier: MIT */
/*
 * Description: ivmc-vmd's running state: per VM a control region (a sealed
 * memfd) and the socket of its control device; per allowed pair a data
 * region and one socket for each side; QEMU's ivshmem server protocol on
 * each socket (docs/specs/ivshmem-spec.rst in QEMU: version, ID, the
 * region's fd, the peers' eventfds, then connect and disconnect notices);
 * and liveness: a QEMU's connection closing is written into the peer's
 * control region at once.
 */
#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "chan/chan.h"
#include "ivmc-vmd.h"

#define ACCEPT_MAX 16 /* connections taken per wake-up of one socket */
#define VMD_REFUSED (-1) /* sent as the protocol version to a refused QEMU */
#define SEALS	   (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL)

static void ctl_publish(struct vmst *v);

/* ---- lookups ---- */

static unsigned int vm_idx(const struct vmst *v)
{
	return (unsigned int)(v - V.vm);
}

/* The pair slot of VM slots i and j (any order, i != j). */
static struct pairst *pair_slot(unsigned int i, unsigned int j)
{
	if (i > j) {
		unsigned int t = i;

		i = j;
		j = t;
	}
	return &V.pair[j * (j - 1) / 2 + i];
}

struct vmst *vm_find(const char *name)
{
	for (unsigned int i = 0; i < VMD_VM_MAX; i++)
		if (V.vm[i].used && !strcmp(V.vm[i].cf.name, name))
			return &V.vm[i];
	return NULL;
}

struct pairst *vm_pair(const struct vmst *a, const struct vmst *b)
{
	struct pairst *p;

	if (a == b)
		return NULL;
	p = pair_slot(vm_idx(a), vm_idx(b));
	return p->used ? p : NULL;
}

/* ---- the ivshmem protocol: one 8-byte little-endian number, maybe an fd ---- */

static int msg_send(int sock, int64_t v, int fd)
{
	union {
		char buf[CMSG_SPACE(sizeof(int))];
		struct cmsghdr align;
	} u;
	int64_t le = (int64_t)htole64((uint64_t)v);
	struct iovec iov = { &le, sizeof(le) };
	struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1 };
	ssize_t n;

	if (fd >= 0) {
		struct cmsghdr *c;

		memset(&u, 0, sizeof(u));
		m.msg_control = u.buf;
		m.msg_controllen = sizeof(u.buf);
		c = CMSG_FIRSTHDR(&m);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(c), &fd, sizeof(int));
	}
	n = sendmsg(sock, &m, MSG_DONTWAIT | MSG_NOSIGNAL);
	if (n < 0)
		return -errno;
	return n == sizeof(le) ? 0 : -EIO;
}

/* ---- files and regions ---- */

static int memfd_region(const char *name, uint64_t size, void **map)
{
	int fd = memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING), err;

	*map = NULL;
	if (fd < 0)
		return -errno;
	if (ftruncate(fd, (off_t)size) < 0 || fcntl(fd, F_ADD_SEALS, SEALS) < 0)
		goto fail;
	*map = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (*map == MAP_FAILED)
		goto fail;
	return fd;
fail:
	err = -errno;
	close(fd);
	return err;
}

static int ep_ctl(int op, int fd, struct ev *ev)
{
	struct epoll_event e = { .events = EPOLLIN | EPOLLRDHUP,
				 .data.ptr = ev };

	return epoll_ctl(V.epfd, op, fd, &e) < 0 ? -errno : 0;
}

/* Bind a device's socket: mode 0600 in a 0700 directory. */
static int dev_listen(struct dev *d)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int fd, err;

	memcpy(sa.sun_path, d->path, sizeof(sa.sun_path));
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return -errno;
	(void)unlink(d->path); /* we hold the lock: a dead server's */
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
	    chmod(d->path, 0600) < 0 || listen(fd, 4) < 0)
		goto fail;
	d->lfd = fd;
	d->lev.type = EV_DEV_LISTEN;
	d->lev.dev = d;
	err = ep_ctl(EPOLL_CTL_ADD, fd, &d->lev);
	if (err) {
		d->lfd = -1;
		close(fd);
		(void)unlink(d->path);
	}
	return err;
fail:
	err = -errno;
	close(fd);
	(void)unlink(d->path);
	return err;
}

/* No QEMU: no socket, no eventfd (closed or never made). */
static void conn_reset(struct conn *c)
{
	c->fd = -1;
	for (unsigned int i = 0; i < VMD_PAIR_VECTORS; i++)
		c->efd[i] = -1;
	c->nvec = 0;
	c->pid = 0;
}

static int dev_init(struct dev *d, struct vmst *v, struct pairst *p,
		    int side, const char *file)
{
	memset(d, 0, sizeof(*d));
	d->vm = v;
	d->pair = p;
	d->side = side;
	d->id = p ? ivmc_vm_pair_id(p->no, side) : IVMC_VM_ID_CTL;
	d->lfd = -1;
	conn_reset(&d->c);
	if (snprintf(d->path, sizeof(d->path), "%s/%s", v->dir, file) >=
	    (int)sizeof(d->path))
		return -ENAMETOOLONG;
	return dev_listen(d);
}

/* ---- connections ---- */

static void conn_close(struct conn *c)
{
	if (c->fd >= 0)
		close(c->fd);
	for (unsigned int i = 0; i < c->nvec; i++)
		if (c->efd[i] >= 0)
			close(c->efd[i]);
	conn_reset(c);
}

/* The QEMU on d is gone (or dropped by us): tell the peer's QEMU and the
 * peer's control region. */
static void dev_disconnect(struct dev *d, const char *why)
{
	struct vmst *v = d->vm;
	struct pairst *p = d->pair;

	if (d->c.fd < 0)
		return;
	dlog(LOG_INFO, "%s: %s device (ID %u) of pid %d %s", v->cf.name,
	     p ? p->vm[1 - d->side]->cf.name : "control", d->id,
	     (int)d->c.pid, why);
	conn_close(&d->c);
	if (v->nconn && !--v->nconn)
		v->pid = 0;
	if (p) {
		struct dev *o = &p->dev[1 - d->side];
		struct ivmc_shm_vm_pairhdr *h = (void *)p->map;

		p->state[d->side] = IVMC_VM_PEER_GONE;
		ivmc_store_release(&h->gone, 1);
		if (o->c.fd >= 0 && msg_send(o->c.fd, d->id, -1))
			dlog(LOG_WARN, "%s: cannot tell pid %d that its peer left",
			     o->vm->cf.name, (int)o->c.pid);
		if (o->c.fd < 0 &&
		    fallocate(p->memfd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
			      0, (off_t)p->size) < 0)
			dlog(LOG_WARN, "pair %s-%s: cannot free the region: %s",
			     p->vm[0]->cf.name, p->vm[1]->cf.name, strerror(errno));
		ctl_publish(p->vm[1 - d->side]);
	}
	ctl_publish(v);
}

/* A new session of the pair: zero the region (freeing its pages) and lay
 * its channels out again under a new epoch. */
static void pair_reset(struct pairst *p)
{
	struct ivmc_shm_vm_pairhdr *h = (void *)p->map;
	uint64_t rsz;

	p->epoch++;
	if (fallocate(p->memfd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0,
		      (off_t)p->size) < 0)
		memset(p->map, 0, p->size);
	(void)chan_region_size(p->ring, 0, &rsz); /* checked by conf_check() */
	for (uint32_t i = 0; i < p->nchan; i++)
		(void)chan_region_init(p->map + IVMC_VM_PAIR_HDR + i * rsz, rsz,
				       p->ring, false, 0);
	h->magic = IVMC_VM_PAIR_MAGIC;
	h->version = IVMC_VM_PAIR_VERSION;
	h->chan_off = IVMC_VM_PAIR_HDR;
	h->nchan = p->nchan;
	h->ring_size = p->ring;
	ivmc_store_once(&h->gone, 0);
	ivmc_store_release(&h->epoch, p->epoch);
	for (int s = 0; s < 2; s++)
		p->state[s] = p->dev[s].c.fd >= 0 ? IVMC_VM_PEER_UP
						  : IVMC_VM_PEER_ABSENT;
}

/* Peer id's eventfds, one message each in vector order (the protocol). */
static int efds_send(int sock, uint16_t id, const struct conn *c)
{
	int err = 0;

	for (unsigned int i = 0; !err && i < c->nvec; i++)
		err = msg_send(sock, id, c->efd[i]);
	return err;
}

/* Version, ID, the region; the peers' eventfds; our own. */
static int dev_handshake(struct dev *d, int fd, const struct conn *c)
{
	struct pairst *p = d->pair;
	struct dev *o = p ? &p->dev[1 - d->side] : NULL;
	int err;

	if ((err = msg_send(fd, 0, -1)) || (err = msg_send(fd, d->id, -1)) ||
	    (err = msg_send(fd, -1, p ? p->memfd : d->vm->memfd)))
		return err;
	if (o && o->c.fd >= 0 && (err = efds_send(fd, o->id, &o->c)))
		return err;
	return efds_send(fd, d->id, c);
}

/* Who may take d: not a second QEMU on one device, nor a second QEMU
 * process for one VM. Returns NULL or why not. */
static const char *dev_refuse(const struct dev *d, const struct ucred *cr)
{
	static char why[96];

	if (cr->uid != 0 && cr->uid != geteuid())
		return "a user other than root and ours";
	if (d->c.fd >= 0) {
		snprintf(why, sizeof(why), "the device is held by pid %d",
			 (int)d->c.pid);
		return why;
	}
	if (d->vm->nconn && d->vm->pid != cr->pid) {
		snprintf(why, sizeof(why), "the VM runs as pid %d",
			 (int)d->vm->pid);
		return why;
	}
	return NULL;
}

static void dev_take(struct dev *d, int fd)
{
	struct vmst *v = d->vm;
	struct pairst *p = d->pair;
	struct ucred cr;
	socklen_t len = sizeof(cr);
	const char *why;
	struct conn c;
	int err;

	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &len) < 0) {
		dlog(LOG_WARN, "%s: %s: no peer credentials: %s", v->cf.name,
		     d->path, strerror(errno));
		close(fd);
		return;
	}
	why = dev_refuse(d, &cr);
	if (why) {
		/* A version no client takes: QEMU's device fails to realize
		 * and QEMU exits (on a bare close, QEMU 7.2 spins instead). */
		dlog(LOG_WARN, "%s: refused pid %d on %s: %s", v->cf.name,
		     (int)cr.pid, d->path, why);
		(void)msg_send(fd, VMD_REFUSED, -1);
		close(fd);
		return;
	}
	conn_reset(&c);
	c.fd = fd;
	c.pid = cr.pid;
	for (c.nvec = 0; c.nvec < (p ? VMD_PAIR_VECTORS : 1); c.nvec++) {
		c.efd[c.nvec] = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
		if (c.efd[c.nvec] < 0) {
			dlog(LOG_ERR, "%s: eventfd: %s", v->cf.name,
			     strerror(errno));
			conn_close(&c);
			return;
		}
	}
	if (p)
		pair_reset(p); /* before the new QEMU sees the region */
	err = dev_handshake(d, fd, &c);
	d->cev.type = EV_DEV_CONN;
	d->cev.dev = d;
	if (!err)
		err = ep_ctl(EPOLL_CTL_ADD, fd, &d->cev);
	if (err) {
		dlog(LOG_WARN, "%s: pid %d on %s: %s", v->cf.name, (int)cr.pid,
		     d->path, strerror(-err));
		conn_close(&c);
		return;
	}
	d->c = c;
	if (!v->nconn++) {
		v->pid = cr.pid;
		v->gen++;
	}
	dlog(LOG_INFO, "%s: pid %d took its %s device (ID %u)", v->cf.name,
	     (int)cr.pid, p ? p->vm[1 - d->side]->cf.name : "control", d->id);
	if (p) {
		struct dev *o = &p->dev[1 - d->side];

		p->state[d->side] = IVMC_VM_PEER_UP;
		p->gen[d->side]++;
		if (o->c.fd >= 0 && efds_send(o->c.fd, d->id, &d->c))
			dlog(LOG_WARN, "%s: cannot tell pid %d of its peer",
			     o->vm->cf.name, (int)o->c.pid);
		ctl_publish(p->vm[1 - d->side]);
	}
	ctl_publish(v);
}

void vm_accept(struct dev *d)
{
	for (int i = 0; i < ACCEPT_MAX && d->lfd >= 0; i++) {
		int fd = accept4(d->lfd, NULL, NULL,
				 SOCK_CLOEXEC | SOCK_NONBLOCK);

		if (fd < 0) {
			if (errno != EAGAIN && errno != EINTR &&
			    errno != ECONNABORTED)
				dlog(LOG_WARN, "accept on %s: %s", d->path,
				     strerror(errno));
			return;
		}
		dev_take(d, fd);
	}
}

void vm_conn_event(struct dev *d)
{
	char buf[64];
	ssize_t n;

	if (d->c.fd < 0)
		return;
	n = recv(d->c.fd, buf, sizeof(buf), MSG_DONTWAIT);
	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		return;
	if (n > 0)
		dev_disconnect(d, "sent bytes (QEMU never does): dropped");
	else
		dev_disconnect(d, "went away");
}

/* ---- the control region ---- */

static void fill_pair(struct ivmc_shm_vm_pair *e, const struct pairst *p,
		      int s)
{
	const struct vmst *peer = p->vm[1 - s];

	memset(e, 0, sizeof(*e));
	memcpy(e->peer, peer->cf.name, sizeof(e->peer));
	e->id = p->dev[s].id;
	e->peer_id = p->dev[1 - s].id;
	e->side = (uint8_t)s;
	e->attached = p->dev[s].c.fd >= 0;
	e->peer_state = p->state[1 - s];
	e->naddr = (uint8_t)peer->cf.naddr;
	memcpy(e->addr, peer->cf.addr, sizeof(e->addr));
	e->epoch = p->epoch;
	e->peer_gen = p->gen[1 - s];
	e->region_size = p->size;
	e->chan_off = IVMC_VM_PAIR_HDR;
	e->nchan = p->nchan;
	e->ring_size = p->ring;
}

/* Rewrite everything under the seqlock, then ring the guest's control
 * vector (harmless if it does not listen). */
static void ctl_publish(struct vmst *v)
{
	static struct ivmc_shm_vm_ctl b;
	struct ivmc_shm_vm_ctl *c = v->ctl;
	size_t off = offsetof(struct ivmc_shm_vm_ctl, host_id);
	uint64_t one = 1;

	memset(&b, 0, sizeof(b));
	b.host_id = V.host_id;
	b.vm_gen = v->gen;
	memcpy(b.name, v->cf.name, sizeof(b.name));
	b.naddr = v->cf.naddr;
	memcpy(b.addr, v->cf.addr, sizeof(b.addr));
	for (unsigned int j = 0; j < VMD_VM_MAX && b.npair < IVMC_VM_PAIR_MAX; j++) {
		const struct pairst *p;

		if (!V.vm[j].used || &V.vm[j] == v)
			continue;
		p = vm_pair(v, &V.vm[j]);
		if (p)
			fill_pair(&b.pair[b.npair++], p, p->vm[1] == v);
	}
	ivmc_store_once(&c->seq, ++v->seq);
	ivmc_fence_full(); /* odd before any byte of the new data */
	memcpy((char *)c + off, (const char *)&b + off, sizeof(b) - off);
	ivmc_store_release(&c->seq, ++v->seq);
	if (v->ctldev.c.nvec && v->ctldev.c.efd[0] >= 0 &&
	    write(v->ctldev.c.efd[0], &one, sizeof(one)) != sizeof(one))
		dlog(LOG_DEBUG, "%s: control doorbell: %s", v->cf.name,
		     strerror(errno));
}

void vm_tick(void)
{
	for (unsigned int i = 0; i < VMD_VM_MAX; i++)
		if (V.vm[i].used)
			ivmc_store_release(&V.vm[i].ctl->heartbeat,
					   ++V.vm[i].beat);
}

/* ---- VMs and pairs come and go with the configuration ---- */

static void dev_close(struct dev *d, const char *why)
{
	dev_disconnect(d, why);
	if (d->lfd >= 0) {
		close(d->lfd);
		(void)unlink(d->path);
	}
	d->lfd = -1;
}

static void pair_stop(struct pairst *p, const char *why)
{
	dlog(LOG_INFO, "pair %s-%s (number %u) %s", p->vm[0]->cf.name,
	     p->vm[1]->cf.name, p->no, why);
	p->used = false; /* gone from both control regions at once */
	for (int s = 0; s < 2; s++)
		dev_close(&p->dev[s], "disconnected: the pair is no longer allowed");
	munmap(p->map, p->size);
	close(p->memfd);
	for (int s = 0; s < 2; s++)
		ctl_publish(p->vm[s]);
	memset(p, 0, sizeof(*p));
	V.changed = true;
}

static int pair_start(struct vmst *a, struct vmst *b)
{
	struct pairst *p = pair_slot(vm_idx(a), vm_idx(b));
	char name[96], file[IVMC_VM_NAME_MAX + 16];
	void *map = NULL;
	int err, fd;

	if (strcmp(a->cf.name, b->cf.name) > 0) {
		struct vmst *t = a;

		a = b;
		b = t;
	}
	if (V.next_pairno > VMD_PAIRNO_MAX)
		return -ENOSPC; /* IDs are never reused: restart the server */
	snprintf(name, sizeof(name), "ivmc-pair:%s:%s", a->cf.name, b->cf.name);
	fd = memfd_region(name, V.conf.pair_size, &map);
	if (fd < 0 || !map)
		return fd < 0 ? fd : -EIO;
	memset(p, 0, sizeof(*p));
	p->vm[0] = a;
	p->vm[1] = b;
	p->no = V.next_pairno++;
	p->memfd = fd;
	p->map = map;
	p->size = V.conf.pair_size;
	p->ring = V.conf.pair_ring;
	p->nchan = V.conf.pair_chans;
	for (int s = 0; s < 2; s++) {
		p->dev[s].vm = p->vm[s];
		p->dev[s].lfd = -1;
		conn_reset(&p->dev[s].c);
	}
	p->used = true;
	pair_reset(p);
	for (int s = 0; s < 2; s++) {
		snprintf(file, sizeof(file), "pair.%s.sock", p->vm[1 - s]->cf.name);
		err = dev_init(&p->dev[s], p->vm[s], p, s, file);
		if (err) {
			pair_stop(p, "could not be set up");
			return err;
		}
	}
	dlog(LOG_INFO, "pair %s-%s: number %u, IDs %u and %u, %llu bytes",
	     a->cf.name, b->cf.name, p->no, p->dev[0].id, p->dev[1].id,
	     (unsigned long long)p->size);
	V.changed = true;
	return 0;
}

static void vm_stop(struct vmst *v)
{
	dlog(LOG_INFO, "%s: removed", v->cf.name);
	for (unsigned int j = 0; j < VMD_VM_MAX; j++) {
		struct pairst *p = V.vm[j].used ? vm_pair(v, &V.vm[j]) : NULL;

		if (p)
			pair_stop(p, "removed with its VM");
	}
	dev_close(&v->ctldev, "disconnected: the VM was removed");
	munmap(v->ctl, IVMC_VM_CTL_SIZE);
	close(v->memfd);
	(void)rmdir(v->dir);
	memset(v, 0, sizeof(*v));
	V.changed = true;
}

/* The VM's directory, 0700: only root and our user reach its sockets. */
static int vm_dir(struct vmst *v)
{
	struct stat st;

	if (snprintf(v->dir, sizeof(v->dir), "%s/vm-%s", V.run_dir,
		     v->cf.name) >= (int)sizeof(v->dir) - 40)
		return -ENAMETOOLONG; /* room for pair.NAME.sock */
	if (mkdir(v->dir, 0700) < 0 && errno != EEXIST)
		return -errno;
	if (lstat(v->dir, &st) < 0)
		return -errno;
	if (!S_ISDIR(st.st_mode) || st.st_uid != geteuid())
		return -ENOTDIR;
	return chmod(v->dir, 0700) < 0 ? -errno : 0;
}

static int vm_start(const struct conf_vm *cf)
{
	struct vmst *v = NULL;
	char name[64];
	void *map = NULL;
	int err;

	for (unsigned int i = 0; i < VMD_VM_MAX && !v; i++)
		if (!V.vm[i].used)
			v = &V.vm[i];
	if (!v)
		return -ENOSPC;
	memset(v, 0, sizeof(*v));
	v->cf = *cf;
	v->ctldev.lfd = -1;
	conn_reset(&v->ctldev.c);
	err = vm_dir(v);
	if (err)
		return err;
	snprintf(name, sizeof(name), "ivmc-ctl:%s", cf->name);
	v->memfd = memfd_region(name, IVMC_VM_CTL_SIZE, &map);
	if (v->memfd < 0 || !map) {
		(void)rmdir(v->dir);
		return v->memfd < 0 ? v->memfd : -EIO;
	}
	v->ctl = map;
	v->ctl->magic = IVMC_VM_CTL_MAGIC;
	v->ctl->version = IVMC_VM_CTL_VERSION;
	v->ctl->size = sizeof(*v->ctl);
	v->ctl->heartbeat_ms = VMD_HEARTBEAT_MS;
	v->used = true;
	err = dev_init(&v->ctldev, v, NULL, 0, "control.sock");
	if (err) {
		vm_stop(v);
		return err;
	}
	ctl_publish(v);
	dlog(LOG_INFO, "%s: added (%u address(es))", cf->name, cf->naddr);
	V.changed = true;
	return 0;
}

static void first_err(int *err, int e, char *buf, size_t len, const char *what,
		      const char *name)
{
	if (!e || *err)
		return;
	*err = e;
	snprintf(buf, len, "%s %s: %s", what, name, strerror(-e));
}

/* Pairs of running VMs: start the allowed ones missing, stop the others. */
static void apply_pairs(int *err, char *buf, size_t len)
{
	for (unsigned int i = 0; i < VMD_VM_MAX; i++) {
		for (unsigned int j = i + 1; j < VMD_VM_MAX; j++) {
			struct vmst *a = &V.vm[i], *b = &V.vm[j];
			struct pairst *p;
			bool ok;

			if (!a->used || !b->used)
				continue;
			ok = conf_allowed(&V.conf, (unsigned int)conf_find(&V.conf, a->cf.name),
					  (unsigned int)conf_find(&V.conf, b->cf.name));
			p = vm_pair(a, b);
			if (p && !ok)
				pair_stop(p, "no longer allowed: revoked");
			else if (!p && ok)
				first_err(err, pair_start(a, b), buf, len,
					  "pair with", b->cf.name);
		}
	}
}

int vm_apply(char *buf, size_t len)
{
	int err = 0;

	for (unsigned int i = 0; i < VMD_VM_MAX; i++)
		if (V.vm[i].used && conf_find(&V.conf, V.vm[i].cf.name) < 0)
			vm_stop(&V.vm[i]);
	for (unsigned int i = 0; i < V.conf.nvm; i++) {
		const struct conf_vm *cf = &V.conf.vm[i];
		struct vmst *v = vm_find(cf->name);

		if (v)
			v->cf = *cf; /* addresses may have changed */
		else
			first_err(&err, vm_start(cf), buf, len, "VM", cf->name);
	}
	apply_pairs(&err, buf, len);
	for (unsigned int i = 0; i < VMD_VM_MAX; i++)
		if (V.vm[i].used)
			ctl_publish(&V.vm[i]);
	return err;
}

void vm_shutdown(void)
{
	for (unsigned int i = 0; i < VMD_VM_MAX; i++)
		if (V.vm[i].used)
			vm_stop(&V.vm[i]);
}
