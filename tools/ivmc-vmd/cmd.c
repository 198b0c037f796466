/* SPDX-License-Identifier: MIT */
/*
 * Description: ivmc-vmd's answers to ivmcctl (ivmcctl(8): vm add, remove,
 * allow, deny, reload, list; qemu-args). A change is checked, written to
 * the configuration file, and only then applied.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chan/chan.h"
#include "chan/shm_layout.h"
#include "ivmc-vmd.h"

static struct conf next; /* the configuration a change would make */

/* Write next to the file, then make it the one in force. */
static int commit(FILE *f)
{
	char err[256] = "";
	int e = conf_check(&next, err, sizeof(err));

	if (e) {
		fprintf(f, "%s\n", err);
		return 1;
	}
	e = conf_save(V.conf_path, &next);
	if (e) {
		fprintf(f, "cannot write %s: %s\n", V.conf_path, strerror(-e));
		return 1;
	}
	V.conf = next;
	e = vm_apply(err, sizeof(err));
	if (e) {
		fprintf(f, "saved, but %s\n", err);
		return 1;
	}
	return 0;
}

/* Append a rule to next. Returns 0, or 1 with the reason in f. */
static int add_rule(bool allow, const char *a, const char *b, FILE *f)
{
	struct conf_rule *r;

	if (!conf_name_ok(a) || (strcmp(b, "*") != 0 && !conf_name_ok(b)) ||
	    !strcmp(a, b)) {
		fprintf(f, "bad rule '%s %s %s' (NAME PEER|*, two names)\n",
			allow ? "allow" : "deny", a, b);
		return 1;
	}
	if (next.nrule == VMD_RULE_MAX) {
		fprintf(f, "already %d rules\n", VMD_RULE_MAX);
		return 1;
	}
	r = &next.rule[next.nrule++];
	r->allow = allow;
	snprintf(r->a, sizeof(r->a), "%s", a);
	snprintf(r->b, sizeof(r->b), "%s", b);
	return 0;
}

static int vm_add(int argc, char **argv, FILE *f)
{
	struct conf_vm *v;

	if (argc < 2 || !conf_name_ok(argv[1])) {
		fprintf(f, "vm add NAME --addr ADDR...: bad or missing NAME (1 to %d of A-Z a-z 0-9 - _)\n",
			IVMC_VM_NAME_MAX - 1);
		return 1;
	}
	next = V.conf;
	if (conf_find(&next, argv[1]) >= 0) {
		fprintf(f, "VM %s exists (vm remove it first)\n", argv[1]);
		return 1;
	}
	if (next.nvm == VMD_VM_MAX) {
		fprintf(f, "already %d VMs\n", VMD_VM_MAX);
		return 1;
	}
	v = &next.vm[next.nvm];
	memset(v, 0, sizeof(*v));
	snprintf(v->name, sizeof(v->name), "%s", argv[1]);
	for (int i = 2; i < argc; i++) {
		const char *a = argv[i];

		if ((!strcmp(a, "--allow") || !strcmp(a, "--deny")) && i + 1 < argc) {
			if (add_rule(a[2] == 'a', v->name, argv[++i], f))
				return 1;
			continue;
		}
		if (!strncmp(a, "--addr=", 7)) {
			a += 7;
		} else if (!strcmp(a, "--addr") && i + 1 < argc) {
			a = argv[++i];
		} else {
			fprintf(f, "vm add: unexpected '%s' (want --addr ADDR, --allow or --deny PEER|*)\n", a);
			return 1;
		}
		if (v->naddr == IVMC_VM_ADDR_MAX) {
			fprintf(f, "at most %d addresses\n", IVMC_VM_ADDR_MAX);
			return 1;
		}
		if (conf_addr(a, &v->addr[v->naddr])) {
			fprintf(f, "bad address '%s' (IPv4 or IPv6)\n", a);
			return 1;
		}
		for (unsigned int j = 0; j < v->naddr; j++)
			if (!memcmp(&v->addr[j], &v->addr[v->naddr], sizeof(v->addr[j]))) {
				fprintf(f, "address '%s' twice\n", a);
				return 1;
			}
		v->naddr++;
	}
	if (!v->naddr) {
		fprintf(f, "vm add %s: at least one --addr\n", v->name);
		return 1;
	}
	next.nvm++;
	return commit(f);
}

/* The VM and every rule naming it go. */
static int vm_remove(int argc, char **argv, FILE *f)
{
	unsigned int n = 0;
	int i;

	next = V.conf;
	if (argc != 2 || (i = conf_find(&next, argv[1])) < 0) {
		fprintf(f, "vm remove NAME: no VM '%s'\n", argc > 1 ? argv[1] : "");
		return 1;
	}
	memmove(&next.vm[i], &next.vm[i + 1],
		(next.nvm - (unsigned int)i - 1) * sizeof(next.vm[0]));
	next.nvm--;
	for (unsigned int r = 0; r < next.nrule; r++)
		if (strcmp(next.rule[r].a, argv[1]) != 0 &&
		    strcmp(next.rule[r].b, argv[1]) != 0)
			next.rule[n++] = next.rule[r];
	next.nrule = n;
	return commit(f);
}

static int vm_rule(int argc, char **argv, FILE *f)
{
	if (argc != 3) {
		fprintf(f, "vm %s NAME PEER|*\n", argv[0]);
		return 1;
	}
	next = V.conf;
	if (add_rule(argv[0][0] == 'a', argv[1], argv[2], f))
		return 1;
	return commit(f);
}

static int vm_reload(FILE *f)
{
	char err[256] = "";
	int e = conf_load(V.conf_path, &next, err, sizeof(err));

	if (e) {
		fprintf(f, "%s: %s (the configuration in force stays)\n",
			V.conf_path, err);
		return 1;
	}
	V.conf = next;
	e = vm_apply(err, sizeof(err));
	if (e) {
		fprintf(f, "%s\n", err);
		return 1;
	}
	fprintf(f, "%u VM(s) from %s\n", V.conf.nvm, V.conf_path);
	return 0;
}

static const char *state_name(uint8_t s)
{
	return s == IVMC_VM_PEER_UP ? "up" : s == IVMC_VM_PEER_GONE ? "gone" : "absent";
}

static void list_vm(FILE *f, const struct vmst *v)
{
	char a[INET6_ADDRSTRLEN], pid[16] = "-";
	unsigned int ndev = 1, nup = v->ctldev.c.fd >= 0;

	for (unsigned int j = 0; j < VMD_VM_MAX; j++) {
		const struct pairst *p = V.vm[j].used ? vm_pair(v, &V.vm[j]) : NULL;

		if (p) {
			ndev++;
			nup += p->dev[p->vm[1] == v].c.fd >= 0;
		}
	}
	if (v->nconn)
		snprintf(pid, sizeof(pid), "%d", (int)v->pid);
	fprintf(f, "%-20s %-5s %-8s %-6llu %u/%-5u ", v->cf.name,
		v->nconn ? "up" : "down", pid, (unsigned long long)v->gen, nup,
		ndev);
	for (unsigned int i = 0; i < v->cf.naddr; i++)
		fprintf(f, "%s%s", i ? "," : "", conf_addr_str(&v->cf.addr[i], a));
	fputc('\n', f);
}

static int vm_list(FILE *f)
{
	char name[2 * IVMC_VM_NAME_MAX + 2];

	fprintf(f, "%-20s %-5s %-8s %-6s %-7s %s\n", "VM", "STATE", "PID",
		"STARTS", "DEVICES", "ADDRESSES");
	for (unsigned int i = 0; i < VMD_VM_MAX; i++)
		if (V.vm[i].used)
			list_vm(f, &V.vm[i]);
	fprintf(f, "%-32s %-6s %-11s %-6s %-6s %-6s %s\n", "PAIR", "NUMBER",
		"IDS", "EPOCH", "SIDE-0", "SIDE-1", "REGION");
	for (unsigned int i = 0; i < VMD_PAIR_MAX; i++) {
		const struct pairst *p = &V.pair[i];
		char ids[16];

		if (!p->used)
			continue;
		snprintf(name, sizeof(name), "%s:%s", p->vm[0]->cf.name,
			 p->vm[1]->cf.name);
		snprintf(ids, sizeof(ids), "%u,%u", p->dev[0].id, p->dev[1].id);
		fprintf(f, "%-32s %-6u %-11s %-6llu %-6s %-6s %llu bytes, %u x %u-byte rings\n",
			name, p->no, ids, (unsigned long long)p->epoch,
			state_name(p->state[0]), state_name(p->state[1]),
			(unsigned long long)p->size, p->nchan, p->ring);
	}
	return 0;
}

/* vm slots: what the guests carved in each pair region (ivmcd --guest),
 * read from the region as they left it: each slot holding a channel, with
 * the bytes through its rings. The guests write all of it: a report, each
 * header copied once and checked before use, never acted on. */
static int vm_slots(FILE *f)
{
	fprintf(f, "%-32s %-5s %-5s %-14s %-14s %s\n", "PAIR", "SIDE", "SLOT",
		"RING-BYTES 0>1", "RING-BYTES 1>0", "MODE 0>1/1>0");
	for (unsigned int i = 0; i < VMD_PAIR_MAX; i++) {
		const struct pairst *p = &V.pair[i];
		char name[2 * IVMC_VM_NAME_MAX + 2];
		uint64_t rsz, base;
		uint32_t n;

		if (!p->used || !p->map || chan_region_size(p->ring, 0, &rsz))
			continue;
		snprintf(name, sizeof(name), "%s:%s", p->vm[0]->cf.name,
			 p->vm[1]->cf.name);
		ivmc_vm_carve(p->size, IVMC_VM_PAIR_HDR, p->nchan, rsz, &base, &n);
		for (int side = 0; side < 2; side++) {
			for (uint32_t k = 0; k < n; k++) {
				struct ivmc_shm_hdr h;
				uint32_t b[2];
				bool open[2];

				memcpy(&h, p->map + ivmc_vm_slot_off(base, n, rsz, side, k),
				       offsetof(struct ivmc_shm_hdr, dir) + sizeof(h.dir));
				if (h.magic != IVMC_SHM_MAGIC ||
				    !(h.flags & IVMC_SHM_F_SIDE))
					continue;
				for (int d = 0; d < 2; d++) {
					uint64_t w = atomic_load_explicit(&h.dir[d].prod,
									  memory_order_relaxed);

					b[d] = ivmc_w_ctr(w) - h.init_ctr[d];
					open[d] = !(w & IVMC_PW_CLOSED);
				}
				fprintf(f, "%-32s %-5d %-5u %-14u %-14u %s/%s\n", name,
					side, k, b[0], b[1], open[0] ? "ring" : "tcp",
					open[1] ? "ring" : "tcp");
			}
		}
	}
	return 0;
}

/* One argument for a shell: as is when only safe characters, else in
 * single quotes. */
static void shell_word(FILE *f, const char *s)
{
	if (*s && strspn(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
			    "0123456789,=./_:-+@%") == strlen(s)) {
		fputs(s, f);
		return;
	}
	fputc('\'', f);
	for (; *s; s++) {
		if (*s == '\'')
			fputs("'\\''", f);
		else
			fputc(*s, f);
	}
	fputc('\'', f);
}

/* path with QEMU's option escaping: a comma is doubled. */
static void qemu_path(char *out, size_t len, const char *path)
{
	size_t n = 0;

	for (; *path && n + 2 < len; path++) {
		out[n++] = *path;
		if (*path == ',')
			out[n++] = ',';
	}
	out[n] = 0;
}

static void qemu_dev(FILE *f, const char *id, const char *path,
		     unsigned int vectors, bool first)
{
	char p[256], arg[512];

	qemu_path(p, sizeof(p), path);
	fprintf(f, "%s-chardev ", first ? "" : " ");
	snprintf(arg, sizeof(arg), "socket,id=%s,path=%s", id, p);
	shell_word(f, arg);
	fputs(" -device ", f);
	snprintf(arg, sizeof(arg), "ivshmem-doorbell,chardev=%s,vectors=%u", id,
		 vectors);
	shell_word(f, arg);
}

/* With --iommu, first what a guest needs to take the doorbell interrupts
 * (docs/vm.md): q35 with QEMU's intel-iommu remapping interrupts, which
 * with KVM needs the split irqchip (TCG ignores it). */
static int qemu_args(int argc, char **argv, FILE *f)
{
	bool iommu = argc == 3 && !strcmp(argv[2], "--iommu");
	const struct vmst *v = argc == 2 || iommu ? vm_find(argv[1]) : NULL;
	char id[IVMC_VM_NAME_MAX + 16];

	if (argc == 3 && !iommu) {
		fprintf(f, "qemu-args NAME [--iommu]: unknown option '%s'\n",
			argv[2]);
		return 1;
	}
	if (!v) {
		fprintf(f, "qemu-args NAME: no VM '%s'\n", argc > 1 ? argv[1] : "");
		return 1;
	}
	if (iommu)
		fputs("-machine q35,kernel-irqchip=split "
		      "-device intel-iommu,intremap=on ", f);
	qemu_dev(f, "ivmc-ctl", v->ctldev.path, 1, true);
	for (unsigned int j = 0; j < VMD_VM_MAX; j++) {
		const struct pairst *p = V.vm[j].used ? vm_pair(v, &V.vm[j]) : NULL;

		if (!p)
			continue;
		snprintf(id, sizeof(id), "ivmc-pair-%s", V.vm[j].cf.name);
		qemu_dev(f, id, p->dev[p->vm[1] == v].path, VMD_PAIR_VECTORS,
			 false);
	}
	fputc('\n', f);
	return 0;
}

static int run(int argc, char **argv, FILE *f)
{
	if ((argc == 2 || argc == 3) && !strcmp(argv[0], "qemu-args"))
		return qemu_args(argc, argv, f);
	if (argc < 2 || strcmp(argv[0], "vm") != 0) {
		fprintf(f, "unknown request (vm add|remove|allow|deny|reload|list, qemu-args NAME [--iommu])\n");
		return 1;
	}
	argc--;
	argv++;
	if (!strcmp(argv[0], "add"))
		return vm_add(argc, argv, f);
	if (!strcmp(argv[0], "remove"))
		return vm_remove(argc, argv, f);
	if (!strcmp(argv[0], "allow") || !strcmp(argv[0], "deny"))
		return vm_rule(argc, argv, f);
	if (!strcmp(argv[0], "reload") && argc == 1)
		return vm_reload(f);
	if (!strcmp(argv[0], "list") && argc == 1)
		return vm_list(f);
	if (!strcmp(argv[0], "slots") && argc == 1)
		return vm_slots(f);
	fprintf(f, "unknown: vm %s (add|remove|allow|deny|reload|list|slots)\n", argv[0]);
	return 1;
}

int cmd_run(int argc, char **argv, char **out, size_t *outlen)
{
	FILE *f = open_memstream(out, outlen);
	int rc;

	if (!f)
		return -ENOMEM;
	rc = run(argc, argv, f);
	if (fclose(f))
		return -ENOMEM;
	return rc;
}
