/* SPDX-License-Identifier: MIT */
/*
 * Description: what ivmcctl status and ivmcctl policy print: a table for
 * people or JSON for tools, written into a memfd the client reads. A
 * channel's mode and ring bytes come from its header page, mapped
 * read-only (the daemon is off the data path and never writes it).
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "chan/shm_layout.h"
#include "ivmcd.h"

static const char *const reason_names[CTL_R_MAX] = {
	"none", "expired", "ambiguous", "denied", "quota", "not_tcp",
	"not_local", "duplicate", "no_memory", "peer_failed", "limit",
};

struct dir_view {
	const char *mode;   /* ring, tcp, shut */
	bool deep;	     /* on the ring, gone on into its large area */
	uint32_t ring_bytes; /* through the ring, modulo 2^32 */
	uint32_t epochs;
};

/* The header as the ends left it, read without a mapping (a mapping per
 * channel cost a page fault and an munmap each, at every connection).
 * The words are read one pread at a time: fine for a report. */
static bool hdr_read(const struct channel *ch, struct ivmc_shm_hdr *h)
{
	size_t len = offsetof(struct ivmc_shm_hdr, dir) + sizeof(h->dir);

	if (ch->mem_hdr) { /* guest mode: in the mapped BAR */
		memcpy(h, ch->mem_hdr, len);
		return true;
	}
	return ch->region_fd >= 0 &&
	       pread(ch->region_fd, h, len, 0) == (ssize_t)len;
}

static void dir_view(const struct ivmc_shm_hdr *h, int d, struct dir_view *v)
{
	uint64_t w, fin;

	memset(v, 0, sizeof(*v));
	v->mode = "?";
	if (!h)
		return;
	w = atomic_load_explicit(&h->dir[d].prod, memory_order_relaxed);
	fin = atomic_load_explicit(&h->dir[d].fin, memory_order_relaxed);
	v->epochs = ivmc_w_epoch(w);
	v->ring_bytes = ivmc_w_ctr(w) - h->init_ctr[d];
	if (fin & IVMC_FIN_SET)
		v->mode = "shut";
	else
		v->mode = (w & IVMC_PW_CLOSED) ? "tcp" : "ring";
	v->deep = !(w & IVMC_PW_CLOSED) &&
		  (atomic_load_explicit(&h->dir[d].deep, memory_order_relaxed) &
		   IVMC_DEEP_ON);
}

/* One answer names the few namespaces of thousands of channel ends, and
 * kfacts_netns_name() reads /run/netns each time: resolve each inode once
 * per answer (names may change between answers). */
#define NS_CACHE 16
static struct {
	uint64_t ino;
	char name[64];
} ns_cache[NS_CACHE];
static int ns_cached;

static const char *ns_label(uint64_t ino, char *buf, size_t len)
{
	if (ino == D.own_netns_ino)
		return "host";
	for (int i = 0; i < ns_cached; i++)
		if (ns_cache[i].ino == ino)
			return ns_cache[i].name;
	if (kfacts_netns_name(ino, buf, len) != 0)
		snprintf(buf, len, "inode:%llu", (unsigned long long)ino);
	if (ns_cached < NS_CACHE) {
		ns_cache[ns_cached].ino = ino;
		snprintf(ns_cache[ns_cached].name, sizeof(ns_cache[0].name),
			 "%s", buf);
		ns_cached++;
	}
	return buf;
}

static void fmt_age(uint64_t ms, char *buf, size_t len)
{
	uint64_t s = ms / 1000;

	if (s < 120)
		snprintf(buf, len, "%llu.%llus", (unsigned long long)s,
			 (unsigned long long)(ms % 1000) / 100);
	else if (s < 7200)
		snprintf(buf, len, "%llum%02llus", (unsigned long long)s / 60,
			 (unsigned long long)s % 60);
	else
		snprintf(buf, len, "%lluh%02llum", (unsigned long long)s / 3600,
			 (unsigned long long)(s / 60) % 60);
}

static bool visible(uint32_t uid, uint32_t a, uint32_t b)
{
	return uid == UINT32_MAX || uid == a || uid == b;
}

static void text_daemon(FILE *f)
{
	char age[32];

	fmt_age(now_ms() - D.start_ms, age, sizeof(age));
	fprintf(f, "ivmcd pid %d, up %s, socket %s\n", (int)getpid(), age,
		D.sock_path);
	fprintf(f, "policy %u from %s\n", D.pol_gen, D.conf_path);
	fprintf(f, "clients %u, listeners %u, pending %u, channels %u, paired %llu, bad messages %llu\n",
		D.nclients, D.nlisteners, D.npending, D.nchannels,
		(unsigned long long)D.paired, (unsigned long long)D.bad_msgs);
	fprintf(f, "lingers %llu (--linger-us %u, --tick-us %u), looks %llu, fruitful %llu\n",
		(unsigned long long)D.lingers, D.linger_us, D.tick_us,
		(unsigned long long)D.looks, (unsigned long long)D.fruitful);
	fprintf(f, "stayed on TCP:");
	for (int i = 1; i < CTL_R_MAX; i++)
		fprintf(f, " %s %llu", reason_names[i], (unsigned long long)D.why.n[i]);
	fputc('\n', f);
}

/* A pending registration's time left, in ms (0: due). */
static uint64_t expires_in(const struct reg *r)
{
	uint64_t now = now_ms();

	return r->deadline_ms > now ? r->deadline_ms - now : 0;
}

/* The recorded fallbacks, oldest first: calls fn for each one uid may see. */
static void each_fallback(uint32_t uid, FILE *f,
			  void (*fn)(FILE *, const struct fallback *, bool first))
{
	uint64_t from = D.nfb > N_FALLBACKS ? D.nfb - N_FALLBACKS : 0;
	bool first = true;

	for (uint64_t i = from; i < D.nfb; i++) {
		const struct fallback *fb = &D.fb[i % N_FALLBACKS];

		if (!visible(uid, fb->uid, fb->uid))
			continue;
		fn(f, fb, first);
		first = false;
	}
}

static void text_fallback(FILE *f, const struct fallback *fb, bool first)
{
	char ns[64], a[64], b[64], age[32];

	if (first)
		fprintf(f, "\nSTAYED ON TCP (the last %d connections sent back, oldest first)\n%-8s %-8s %-8s %-24s %-30s %-30s %s\n",
			N_FALLBACKS, "AGE", "PID", "UID", "NETNS", "LOCAL",
			"REMOTE", "REASON");
	fmt_age(now_ms() - fb->at_ms, age, sizeof(age));
	fprintf(f, "%-8s %-8d %-8u %-24s %-30s %-30s %s\n", age, (int)fb->pid,
		fb->uid, ns_label(fb->netns_ino, ns, sizeof(ns)),
		kaddr_str(&fb->local, a, sizeof(a)),
		kaddr_str(&fb->remote, b, sizeof(b)), reason_names[fb->reason]);
}

static void json_fallback(FILE *f, const struct fallback *fb, bool first)
{
	char ns[64], a[64], b[64];

	fprintf(f, "%s{\"age_ms\":%llu,\"pid\":%d,\"uid\":%u,\"netns\":\"%s\",\"local\":\"%s\",\"remote\":\"%s\",\"reason\":\"%s\"}",
		first ? "" : ",", (unsigned long long)(now_ms() - fb->at_ms),
		(int)fb->pid, fb->uid, ns_label(fb->netns_ino, ns, sizeof(ns)),
		kaddr_str(&fb->local, a, sizeof(a)),
		kaddr_str(&fb->remote, b, sizeof(b)), reason_names[fb->reason]);
}

static void text_tables(FILE *f, uint32_t uid)
{
	char ns[64], a[64], b[64], age[32];

	fprintf(f, "\nDOMAINS\n%-8s %-24s %9s %12s\n", "UID", "NETNS", "CHANNELS",
		"SHM-BYTES");
	for (struct link *l = D.domains.next; l != &D.domains; l = l->next) {
		struct domain *d = link_entry(l, struct domain, node);

		if (visible(uid, d->uid, d->uid))
			fprintf(f, "%-8u %-24s %9u %12llu\n", d->uid,
				ns_label(d->netns_ino, ns, sizeof(ns)), d->channels,
				(unsigned long long)d->bytes);
	}
	fprintf(f, "\nLISTENERS\n%-8s %-8s %-24s %s\n", "PID", "UID", "NETNS",
		"ADDRESS");
	for (struct link *l = D.clients.next; l != &D.clients; l = l->next) {
		struct client *cl = link_entry(l, struct client, node);

		for (struct link *m = cl->regs.next; m != &cl->regs; m = m->next) {
			struct reg *r = link_entry(m, struct reg, cnode);

			if (r->listener && visible(uid, cl->uid, cl->uid))
				fprintf(f, "%-8d %-8u %-24s %s\n", (int)cl->pid,
					cl->uid, ns_label(r->ns->ino, ns, sizeof(ns)),
					kaddr_str(&r->k.local, a, sizeof(a)));
		}
	}
	fprintf(f, "\nCHANNELS\n%-6s %-8s %-30s %-30s %-8s %-10s %s\n", "ID", "AGE",
		"END-A (PID/UID ADDRESS)", "END-B (PID/UID ADDRESS)", "RING",
		"MODE A>B/B>A", "RING-BYTES A>B B>A (mod 2^32)");
	for (struct link *l = D.channels.next; l != &D.channels; l = l->next) {
		struct channel *ch = link_entry(l, struct channel, node);
		const struct chan_end *e0 = &ch->end[0], *e1 = &ch->end[1];
		struct dir_view v0, v1;
		char ea[96], eb[96], mode[16];
		struct ivmc_shm_hdr h;
		bool ok;

		if (!visible(uid, e0->uid, e1->uid))
			continue;
		ok = hdr_read(ch, &h);
		dir_view(ok ? &h : NULL, 0, &v0);
		dir_view(ok ? &h : NULL, 1, &v1);
		fmt_age(now_ms() - ch->created_ms, age, sizeof(age));
		snprintf(ea, sizeof(ea), "%d/%u %s%s", (int)e0->pid, e0->uid,
			 kaddr_str(&e0->k.local, a, sizeof(a)), e0->cl ? "" : " (gone)");
		snprintf(eb, sizeof(eb), "%d/%u %s%s", (int)e1->pid, e1->uid,
			 kaddr_str(&e1->k.local, b, sizeof(b)),
			 !e1->ns ? " (peer VM)" : e1->cl ? "" : " (gone)");
		snprintf(mode, sizeof(mode), "%s/%s", v0.deep ? "deep" : v0.mode,
			 v1.deep ? "deep" : v1.mode);
		fprintf(f, "%-6llu %-8s %-30s %-30s %-8u %-10s %u %u\n",
			(unsigned long long)ch->id, age, ea, eb, ch->ring_size, mode,
			v0.ring_bytes, v1.ring_bytes);
	}
	fprintf(f, "\nPENDING (waiting for the other end)\n%-8s %-8s %-24s %-30s %-30s %s\n",
		"PID", "UID", "NETNS", "LOCAL", "REMOTE", "EXPIRES-IN");
	for (struct link *l = D.pending.next; l != &D.pending; l = l->next) {
		struct reg *r = link_entry(l, struct reg, tnode);

		if (!visible(uid, r->cl->uid, r->cl->uid))
			continue;
		fmt_age(expires_in(r), age, sizeof(age));
		fprintf(f, "%-8d %-8u %-24s %-30s %-30s %s\n", (int)r->cl->pid,
			r->cl->uid, ns_label(r->ns->ino, ns, sizeof(ns)),
			kaddr_str(&r->k.local, a, sizeof(a)),
			kaddr_str(&r->k.remote, b, sizeof(b)), age);
	}
	each_fallback(uid, f, text_fallback);
	if (D.guest)
		guest_status(f, false);
}

static void json_end(FILE *f, const struct chan_end *e)
{
	char a[64], r[64], ns[64];

	fprintf(f, "{\"pid\":%d,\"uid\":%u,\"gid\":%u,\"netns\":\"%s\",\"local\":\"%s\",\"remote\":\"%s\",\"open\":%s}",
		(int)e->pid, e->uid, e->gid,
		e->ns ? ns_label(e->ns->ino, ns, sizeof(ns)) : "peer VM",
		kaddr_str(&e->k.local, a, sizeof(a)),
		kaddr_str(&e->k.remote, r, sizeof(r)), e->cl ? "true" : "false");
}

static void json_all(FILE *f, uint32_t uid)
{
	char ns[64], a[64];
	const char *sep = "";

	fprintf(f, "{\"daemon\":{\"pid\":%d,\"uptime_ms\":%llu,\"socket\":\"%s\",\"policy_generation\":%u,\"clients\":%u,\"listeners\":%u,\"pending\":%u,\"channels\":%u,\"paired\":%llu,\"bad_messages\":%llu,\"lingers\":%llu,\"looks\":%llu,\"fruitful_looks\":%llu},\"stayed_on_tcp\":{",
		(int)getpid(), (unsigned long long)(now_ms() - D.start_ms),
		D.sock_path, D.pol_gen, D.nclients, D.nlisteners, D.npending,
		D.nchannels, (unsigned long long)D.paired,
		(unsigned long long)D.bad_msgs, (unsigned long long)D.lingers,
		(unsigned long long)D.looks, (unsigned long long)D.fruitful);
	for (int i = 1; i < CTL_R_MAX; i++)
		fprintf(f, "%s\"%s\":%llu", i > 1 ? "," : "", reason_names[i],
			(unsigned long long)D.why.n[i]);
	fprintf(f, "},\"domains\":[");
	for (struct link *l = D.domains.next; l != &D.domains; l = l->next) {
		struct domain *d = link_entry(l, struct domain, node);

		if (!visible(uid, d->uid, d->uid))
			continue;
		fprintf(f, "%s{\"uid\":%u,\"netns\":\"%s\",\"channels\":%u,\"shm_bytes\":%llu}",
			sep, d->uid, ns_label(d->netns_ino, ns, sizeof(ns)),
			d->channels, (unsigned long long)d->bytes);
		sep = ",";
	}
	fprintf(f, "],\"listeners\":[");
	sep = "";
	for (struct link *l = D.clients.next; l != &D.clients; l = l->next) {
		struct client *cl = link_entry(l, struct client, node);

		for (struct link *m = cl->regs.next; m != &cl->regs; m = m->next) {
			struct reg *r = link_entry(m, struct reg, cnode);

			if (!r->listener || !visible(uid, cl->uid, cl->uid))
				continue;
			fprintf(f, "%s{\"pid\":%d,\"uid\":%u,\"netns\":\"%s\",\"address\":\"%s\"}",
				sep, (int)cl->pid, cl->uid,
				ns_label(r->ns->ino, ns, sizeof(ns)),
				kaddr_str(&r->k.local, a, sizeof(a)));
			sep = ",";
		}
	}
	fprintf(f, "],\"channels\":[");
	sep = "";
	for (struct link *l = D.channels.next; l != &D.channels; l = l->next) {
		struct channel *ch = link_entry(l, struct channel, node);
		struct dir_view v[2];
		struct ivmc_shm_hdr h;
		bool ok;

		if (!visible(uid, ch->end[0].uid, ch->end[1].uid))
			continue;
		ok = hdr_read(ch, &h);
		dir_view(ok ? &h : NULL, 0, &v[0]);
		dir_view(ok ? &h : NULL, 1, &v[1]);
		fprintf(f, "%s{\"id\":%llu,\"age_ms\":%llu,\"ring_size\":%u,\"ring_grow\":%u,\"rule_line\":%u,\"a\":",
			sep, (unsigned long long)ch->id,
			(unsigned long long)(now_ms() - ch->created_ms), ch->ring_size,
			ch->deep_size, ch->rule_line);
		json_end(f, &ch->end[0]);
		fprintf(f, ",\"b\":");
		json_end(f, &ch->end[1]);
		for (int d = 0; d < 2; d++)
			fprintf(f, ",\"%s\":{\"mode\":\"%s\",\"deep\":%s,\"epochs\":%u,\"ring_bytes_mod32\":%u}",
				d ? "b_to_a" : "a_to_b", v[d].mode,
				v[d].deep ? "true" : "false", v[d].epochs,
				v[d].ring_bytes);
		fputc('}', f);
		sep = ",";
	}
	fprintf(f, "],\"pending\":[");
	sep = "";
	for (struct link *l = D.pending.next; l != &D.pending; l = l->next) {
		struct reg *r = link_entry(l, struct reg, tnode);
		char b[64];

		if (!visible(uid, r->cl->uid, r->cl->uid))
			continue;
		fprintf(f, "%s{\"pid\":%d,\"uid\":%u,\"netns\":\"%s\",\"local\":\"%s\",\"remote\":\"%s\",\"expires_in_ms\":%llu}",
			sep, (int)r->cl->pid, r->cl->uid,
			ns_label(r->ns->ino, ns, sizeof(ns)),
			kaddr_str(&r->k.local, a, sizeof(a)),
			kaddr_str(&r->k.remote, b, sizeof(b)),
			(unsigned long long)expires_in(r));
		sep = ",";
	}
	fprintf(f, "],\"stayed_on_tcp_recent\":[");
	each_fallback(uid, f, json_fallback);
	fprintf(f, "]");
	if (D.guest)
		guest_status(f, true);
	fprintf(f, "}\n");
}

int status_write(int fd, uint32_t what, bool json, uint32_t uid)
{
	int dfd = dup(fd);
	FILE *f = dfd >= 0 ? fdopen(dfd, "w") : NULL;
	int err = 0;

	if (!f) {
		if (dfd >= 0)
			close(dfd);
		return -errno;
	}
	ns_cached = 0;
	if (what == CTL_Q_POLICY) {
		err = policy_write(D.pol, f, json);
	} else if (json) {
		json_all(f, uid);
	} else {
		text_daemon(f);
		text_tables(f, uid);
	}
	if (fclose(f) != 0 && !err)
		err = -errno;
	return err;
}
