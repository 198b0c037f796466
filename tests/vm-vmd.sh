#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# Description: ivmc-vmd on its own, without VMs: stand-in QEMU clients (a
# Python script speaking QEMU's side of the ivshmem server protocol) check
# the handshake (version, ID, region, the peers' eventfds, then connect and
# disconnect notices), that a doorbell eventfd handed to one side rings the
# other, what each control region says (name, addresses, each pair's peer,
# IDs, side, epoch, peer state) and how it changes: a peer leaving is marked
# gone at once, a new session gets a new epoch; a policy change (vm deny)
# drops both sides of the pair and removes it from both control regions,
# and allowing it again makes a new pair with new IDs; vm remove; a second
# server on the same directory, a broken configuration at start and on
# SIGHUP, and junk on the sockets are refused with a clear message while
# the server keeps serving. Takes a second or two.
#
# Run by make check-vm (mk/vm.mk) with the VM tests; needs python3 only.

set -u

here=$(cd "$(dirname "$0")" && pwd)
bin=$here/../bin
ctl=$bin/ivmcctl
tmp=
pid=

fail() {
	echo "vm-vmd: FAIL: $*" >&2
	[ -n "$tmp" ] && tail -n 30 "$tmp/log" >&2
	exit 1
}

# shellcheck disable=SC2317 # called by the trap
cleanup() {
	if [ -n "$pid" ]; then
		kill "$pid" 2> /dev/null
		wait "$pid" 2> /dev/null
	fi
	[ -n "$tmp" ] && rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if ! [ -x "$bin/ivmc-vmd" ] || ! [ -x "$ctl" ]; then
	fail "$bin/ivmc-vmd or ivmcctl missing (make vm)"
fi
command -v python3 > /dev/null || {
	echo "vm-vmd: no python3" >&2
	exit 77
}
tmp=$(mktemp -d "${TMPDIR:-/tmp}/ivmc-vmd.XXXXXX")
run=$tmp/run
export IVMC_VM_SOCKET=$run/ivmc-vmd.sock

# A broken configuration at start: refused, with its line.
printf 'vm a 10.0.0.1\nvm a 10.0.0.2\n' > "$tmp/bad.conf"
if out=$("$bin/ivmc-vmd" -c "$tmp/bad.conf" -r "$run" 2>&1); then
	fail "ivmc-vmd started on a broken configuration"
fi
echo "vm-vmd: broken configuration at start: $out"
echo "$out" | grep -q "line 2: VM 'a' defined twice" || fail "no line number in '$out'"

printf 'pair-size 1M\npair-ring 65536\npair-channels 2\n' > "$tmp/vms.conf"
"$bin/ivmc-vmd" -c "$tmp/vms.conf" -r "$run" -l debug -L "$tmp/log" &
pid=$!
for _ in $(seq 100); do
	[ -S "$IVMC_VM_SOCKET" ] && break
	sleep 0.05
done
[ -S "$IVMC_VM_SOCKET" ] || fail "ivmc-vmd did not start"
if out=$("$bin/ivmc-vmd" -c "$tmp/vms.conf" -r "$run" 2>&1); then
	fail "a second ivmc-vmd started on the same directory"
fi
echo "vm-vmd: second server: $out"

"$ctl" vm add vm-a --addr 10.0.0.1 --addr fd00::1 || fail "vm add vm-a"
"$ctl" vm add vm-b --addr 10.0.0.2 || fail "vm add vm-b"
"$ctl" vm add vm-c --addr 10.0.0.3 --deny vm-a || fail "vm add vm-c"
"$ctl" vm list

python3 - "$run" "$ctl" "$pid" << 'EOF' || fail "the protocol checks"
import array, mmap, os, signal, socket, struct, subprocess, sys, time

run, ctl, pid = sys.argv[1], sys.argv[2], int(sys.argv[3])
ok = lambda cond, what: cond or sys.exit("FAIL: " + what)

class Qemu:
    """QEMU's side of one ivshmem-doorbell device."""
    def __init__(self, vm, dev):
        self.path = "%s/vm-%s/%s.sock" % (run, vm, dev)
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.connect(self.path)
        self.msgs = []
    def read(self, secs=0.5):
        """Every message that comes within secs: (number, fd or -1)."""
        self.s.settimeout(secs)
        got = []
        try:
            while True:
                fds = array.array("i")
                m, anc, _, _ = self.s.recvmsg(8, socket.CMSG_LEN(4))
                if not m:
                    got.append(("eof", -1))
                    break
                for lvl, typ, data in anc:
                    fds.frombytes(data[:4])
                got.append((struct.unpack("<q", m)[0], fds[0] if fds else -1))
        except socket.timeout:
            pass
        self.msgs += got
        return got
    def handshake(self, npeers, nvec=1):
        """Each peer's eventfds (nvec: one per vector, in order), then ours."""
        got = self.read()
        ok(len(got) == 3 + (npeers + 1) * nvec, "%s: %r" % (self.path, got))
        ok(got[0] == (0, -1), "version 0 first")
        self.id = got[1][0]
        ok(got[1][1] == -1 and 1 <= self.id <= 65535, "then our ID")
        ok(got[2][0] == -1 and got[2][1] >= 0, "then -1 with the region")
        self.region = got[2][1]
        self.peers = {}
        for v, fd in got[3:3 + npeers * nvec]:
            self.peers.setdefault(v, []).append(fd)
        ok(all(len(f) == nvec and min(f) >= 0 for f in self.peers.values()),
           "each peer's %d eventfds" % nvec)
        own = got[3 + npeers * nvec:]
        ok(all(v == self.id and fd >= 0 for v, fd in own), "then our own %d eventfds" % nvec)
        self.efds = [fd for _, fd in own]
        self.efd = self.efds[0]
        return self
    def close(self):
        self.s.close()

def ctl_region(q):
    m = mmap.mmap(q.region, 16384, mmap.MAP_SHARED, mmap.PROT_READ)
    for _ in range(100):
        s1 = struct.unpack_from("<Q", m, 16)[0]
        b = bytes(m[:16384])
        if s1 % 2 == 0 and struct.unpack_from("<Q", m, 16)[0] == s1:
            break
    magic, ver, size, hbms, seq, hb, host, gen = struct.unpack_from("<IIIIQQQQ", b, 0)
    ok(magic == 0x4c43564d and ver == 1 and size == 8184, "control header %x %d %d" % (magic, ver, size))
    name = b[48:80].split(b"\0")[0].decode()
    naddr, npair = struct.unpack_from("<II", b, 80)
    def addrs(off, n):
        out = []
        for i in range(n):
            fam = b[off + 20 * i]
            raw = b[off + 20 * i + 4: off + 20 * i + 20]
            out.append(socket.inet_ntop(socket.AF_INET if fam == 4 else socket.AF_INET6,
                                        raw[:4] if fam == 4 else raw))
        return out
    pairs = {}
    for i in range(npair):
        o = 248 + 256 * i
        peer = b[o:o + 32].split(b"\0")[0].decode()
        pid_, ppid, side, att, st, na = struct.unpack_from("<HHBBBB", b, o + 32)
        epoch, pgen, rsize, coff, nchan, ring = struct.unpack_from("<QQQIII", b, o + 40)
        pairs[peer] = dict(id=pid_, peer_id=ppid, side=side, attached=att,
                           state=["absent", "up", "gone"][st], epoch=epoch,
                           size=rsize, chan_off=coff, nchan=nchan, ring=ring,
                           addrs=addrs(o + 96, na))
    return dict(name=name, addrs=addrs(88, naddr), pairs=pairs, hb=hb, gen=gen, host=host)

def ivmcctl(*args):
    return subprocess.run([ctl] + list(args), capture_output=True, text=True)

# vm-a: control device, then its pair device (vm-b not there yet).
a_ctl = Qemu("vm-a", "control").handshake(0)
ok(a_ctl.id == 1, "the control device has ID 1")
NVEC = 33  # a pair device's vectors (VMD_PAIR_VECTORS)
a = Qemu("vm-a", "pair.vm-b").handshake(0, NVEC)
c = ctl_region(a_ctl)
print("vm-vmd: vm-a's control region:", c["name"], c["addrs"], c["pairs"])
ok(c["name"] == "vm-a" and c["addrs"] == ["10.0.0.1", "fd00::1"], "name, addresses")
ok(list(c["pairs"]) == ["vm-b"], "vm-a pairs with vm-b only (vm-c denied)")
p = c["pairs"]["vm-b"]
ok(p["id"] == a.id and p["peer_id"] == a.id ^ 1 and p["side"] == 0, "IDs and side")
ok(p["attached"] == 1 and p["state"] == "absent" and p["addrs"] == ["10.0.0.2"], "peer absent")
ok(p["size"] == 1 << 20 and p["chan_off"] == 4096 and p["nchan"] == 2 and p["ring"] == 65536, "layout")
ok(os.fstat(a.region).st_size == 1 << 20, "region size")
seals = __import__("fcntl").fcntl(a.region, 1034)  # F_GET_SEALS
ok(seals & 0x6 == 0x6, "region sealed against shrink and grow (seals %#x)" % seals)
hb = c["hb"]
time.sleep(0.6)
ok(ctl_region(a_ctl)["hb"] > hb, "heartbeat moves")

# A second client on a held device: refused with version -1.
x = Qemu("vm-a", "pair.vm-b")
ok(x.read() == [(-1, -1), ("eof", -1)], "second client refused")
x.close()

# vm-b arrives: both get each other's eventfd; a new epoch.
b_ctl = Qemu("vm-b", "control").handshake(0)
b = Qemu("vm-b", "pair.vm-a").handshake(1, NVEC)
ok(list(b.peers) == [a.id], "vm-b learns vm-a's ID and eventfds")
got = a.read()
ok(len(got) == NVEC and all(v == b.id and fd >= 0 for v, fd in got),
   "vm-a told of vm-b's %d vectors: %r" % (NVEC, got))
# The doorbell: vm-a writes the eventfd it got for vm-b's vector v; vm-b's
# own eventfd of that vector fires, and no other.
for v in (0, 7, NVEC - 1):
    os.write(got[v][1], struct.pack("<Q", 1))
    ok(struct.unpack("<Q", os.read(b.efds[v], 8))[0] == 1, "vm-a rings vm-b's vector %d" % v)
    os.set_blocking(b.efds[(v + 1) % NVEC], False)
    try:
        os.read(b.efds[(v + 1) % NVEC], 8)
        ok(False, "vector %d rang vector %d too" % (v, (v + 1) % NVEC))
    except BlockingIOError:
        pass
os.write(b.peers[a.id][0], struct.pack("<Q", 1))
ok(struct.unpack("<Q", os.read(a.efd, 8))[0] == 1, "vm-b rings vm-a")
ca, cb = ctl_region(a_ctl)["pairs"]["vm-b"], ctl_region(b_ctl)["pairs"]["vm-a"]
ok(ca["state"] == "up" and cb["state"] == "up" and ca["epoch"] == cb["epoch"] > p["epoch"], "both up, new epoch")
ok(cb["side"] == 1 and cb["id"] == a.id ^ 1, "vm-b is side 1")
hdr = mmap.mmap(a.region, 4096, mmap.MAP_SHARED, mmap.PROT_READ)
ok(struct.unpack_from("<IIQI", hdr, 0) == (0x50564d49, 1, ca["epoch"], 0), "pair header")
ok(struct.unpack_from("<I", hdr, 0)[0] and
   struct.unpack_from("<I", mmap.mmap(a.region, 8192, mmap.MAP_SHARED, mmap.PROT_READ), 4096)[0] == 0x434d5649,
   "channel 0 laid out at 4096")

# vm-b's QEMU dies: vm-a is told (disconnect notice) and its control
# region says gone at once.
t0 = time.time()
b.close(); b_ctl.close()
for _ in range(1000):
    if ctl_region(a_ctl)["pairs"]["vm-b"]["state"] == "gone":
        break
    time.sleep(0.001)
ok(ctl_region(a_ctl)["pairs"]["vm-b"]["state"] == "gone", "vm-b gone in vm-a's region")
print("vm-vmd: vm-b's close to 'gone' in vm-a's control region: %.1f ms" % ((time.time() - t0) * 1000))
got = a.read(0.3)
ok(got == [(b.id, -1)], "vm-a gets vm-b's disconnect: %r" % got)
ok(struct.unpack_from("<I", hdr, 16)[0] == 1, "pair header says gone")

# A new vm-b: new session, new epoch.
b_ctl = Qemu("vm-b", "control").handshake(0)
b = Qemu("vm-b", "pair.vm-a").handshake(1, NVEC)
a.read()
c2 = ctl_region(a_ctl)["pairs"]["vm-b"]
ok(c2["state"] == "up" and c2["epoch"] > ca["epoch"], "a new epoch for vm-b's return")
ok(ctl_region(b_ctl)["gen"] == 2, "vm-b's second start")

# Policy: deny the pair while both run. Both pair connections are closed,
# the pair leaves both control regions; allowing it again makes a new pair.
r = ivmcctl("vm", "deny", "vm-a", "vm-b")
ok(r.returncode == 0, "vm deny: " + r.stderr)
ok(a.read()[-1][0] == "eof" and b.read()[-1][0] == "eof", "both sides disconnected")
ok("vm-b" not in ctl_region(a_ctl)["pairs"] and "vm-a" not in ctl_region(b_ctl)["pairs"],
   "revoked: listed nowhere")
r = ivmcctl("vm", "allow", "vm-a", "vm-b")
ok(r.returncode == 0, "vm allow: " + r.stderr)
p3 = ctl_region(a_ctl)["pairs"]["vm-b"]
ok(p3["id"] not in (a.id, b.id) and p3["attached"] == 0, "a new pair, new IDs, no device yet: %r" % p3)
q = ivmcctl("qemu-args", "vm-a").stdout
ok("pair.vm-b.sock" in q and "ivshmem-doorbell" in q, "qemu-args lists the pair again")
ok("chardev=ivmc-ctl,vectors=1" in q and ("vectors=%d" % NVEC) in q,
   "qemu-args: one vector for the control device, %d for a pair's: %s" % (NVEC, q))
print("vm-vmd: after deny and allow, vm-a's pair with vm-b has IDs %d/%d (was %d/%d)" %
      (p3["id"], p3["peer_id"], a.id, b.id))

# Remove vm-b: its control connection closes, it leaves vm-a's region.
r = ivmcctl("vm", "remove", "vm-b")
ok(r.returncode == 0, "vm remove: " + r.stderr)
ok(b_ctl.read()[-1][0] == "eof", "vm-b's control connection closed")
ok(ctl_region(a_ctl)["pairs"] == {}, "vm-b gone from vm-a's region")
ok("vm-b" not in open(run + "/../vms.conf").read(), "vm-b gone from the file")
ok(not os.path.exists(run + "/vm-vm-b"), "vm-b's directory removed")

# SIGHUP with a broken file keeps what runs; a good one applies.
conf = run + "/../vms.conf"
good = open(conf).read()
open(conf, "a").write("frobnicate 1\n")
os.kill(pid, signal.SIGHUP)
time.sleep(0.3)
ok(ivmcctl("vm", "list").stdout.count("\nvm-") == 2, "broken SIGHUP: vm-a and vm-c stay")
open(conf, "w").write(good + "vm vm-d 10.0.0.4\n")
os.kill(pid, signal.SIGHUP)
time.sleep(0.3)
ok("vm-d" in ivmcctl("vm", "list").stdout, "SIGHUP applied vm-d")
ok("vm-d" in ctl_region(a_ctl)["pairs"], "vm-a may pair with vm-d")
a_ctl.close()
print("vm-vmd: protocol, control regions, liveness, policy, reload: ok")
EOF
grep -a "SIGHUP" "$tmp/log"
kill -0 "$pid" || fail "ivmc-vmd died"
"$ctl" vm list
kill "$pid"
wait "$pid"
rc=$?
pid=
[ $rc -eq 0 ] || fail "ivmc-vmd exited $rc on SIGTERM"
[ ! -e "$IVMC_VM_SOCKET" ] || fail "the command socket is left behind"
echo "vm-vmd: ok"
exit 0
