#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# Description: the host side of ivmc between VMs (ivmc-vmd, ivmcctl vm,
# qemu-args): isolation and liveness with three QEMU guests. guest-a and
# guest-b may pair; guest-c is configured with --deny '*'. Isolation: guest-c
# has exactly one ivshmem device (its control device) and its control region
# lists no pair; the pair region of a and b (a memfd of ivmc-vmd) and the
# VMs' sockets are out of reach of another user; a second QEMU started for
# a running VM is refused and exits; garbage on the server's sockets and a
# broken configuration get clear errors and the server keeps serving.
# Liveness: guest-b streams to guest-a, whose receiver also watches its
# control region; the host kills guest-b's QEMU (SIGKILL) mid-stream, and
# guest-a's receiver must end within seconds, after verifying every byte it
# got: all that guest-b published before it died, as the host sees in the
# region. guest-a and guest-b have an IOMMU, so both ends of that stream
# sleep on interrupts: the pair device's, and the control device's, which
# the host rings when guest-b dies. guest-c has none: asked to take an
# interrupt, it must say it cannot, and why. Asserts correctness and that
# the end comes (bounded wait); the time it took is reported.
#
# Run by make check-vm (mk/vm.mk), like vm-ivshmem. Skips (77) only when
# QEMU, busybox or the kernel package cannot be had. Environment:
# IVMC_VM_SECS (per guest, default 400), IVMC_VM_REQUIRE_IRQ (guest-a
# without interrupts is a failure, not a warning).

set -u

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=tests/vm/vm-lib.sh
. "$here/vm-lib.sh"

secs=${IVMC_VM_SECS:-400}
ring=262144
chan=$here/vm-chan
bin=$here/../bin
ctl=$bin/ivmcctl
gone_max=20 # seconds from the kill to the receiver's end: a bound, not a target

skip() {
	echo "vm-host: $*" >&2
	exit 77
}

fail() {
	echo "vm-host: FAIL: $*" >&2
	[ -n "$VM_TMP" ] && [ -f "$VM_TMP/ivmc-vmd.log" ] &&
		tail -n 30 "$VM_TMP/ivmc-vmd.log" >&2
	exit 1
}

trap vm_cleanup EXIT
trap 'exit 130' INT TERM

[ -x "$chan" ] || fail "$chan missing (make vm)"
if ! [ -x "$bin/ivmc-vmd" ] || ! [ -x "$ctl" ]; then
	fail "$bin/ivmc-vmd or ivmcctl missing (make vm)"
fi
vm_need_pkgs || skip "$VM_REASON"
vm_kernel || skip "$VM_REASON"
vm_tmpdir
VM_INITRD=$VM_TMP/initrd.gz
vm_initramfs "$VM_INITRD" "vfio_pci vfio_iommu_type1" "$chan" || fail "$VM_REASON"
# guest-a and guest-b take interrupts (vm-ivshmem.sh says why this way),
# with the machine and IOMMU that qemu-args --iommu prints.
irq="intel_iommu=on ivmc.mod=vfio_pci ivmc.mod=vfio_iommu_type1"

# ---- the host's configuration ----
vm_vmd_start "$bin" || fail "$VM_REASON"
"$ctl" vm add guest-a --addr 10.77.0.1 --addr fd77::1 || fail "vm add guest-a"
"$ctl" vm add guest-b --addr 10.77.0.2 || fail "vm add guest-b"
"$ctl" vm add guest-c --addr 10.77.0.3 --deny '*' || fail "vm add guest-c"
"$ctl" vm list
vm_qemu_args "$bin" guest-a --iommu || fail "$VM_REASON"
qa=("${VM_QARGS[@]}")
vm_qemu_args "$bin" guest-b --iommu || fail "$VM_REASON"
qb=("${VM_QARGS[@]}")
vm_qemu_args "$bin" guest-c || fail "$VM_REASON"
qc=("${VM_QARGS[@]}")
[ "${#qc[@]}" -eq 4 ] || fail "guest-c should get its control device only: ${qc[*]}"
[ "${qa[*]:0:4}" = "-machine q35,kernel-irqchip=split -device intel-iommu,intremap=on" ] ||
	fail "qemu-args --iommu: ${qa[*]}"
run=$VM_VMD_RUN

# ---- isolation on the host, before any guest ----
region=
for f in /proc/"$VM_VMD_PID"/fd/*; do
	case "$(readlink "$f")" in "/memfd:ivmc-pair:guest-a:guest-b "*) region=$f ;; esac
done
[ -n "$region" ] || fail "no pair region guest-a:guest-b among ivmc-vmd's fds"
for f in /proc/"$VM_VMD_PID"/fd/*; do
	case "$(readlink "$f")" in *ivmc-pair:*guest-c*) fail "a pair region with guest-c exists: $(readlink "$f")" ;; esac
done
as_nobody() { setpriv --reuid=65534 --regid=65534 --clear-groups -- "$@"; }
if as_nobody cat "$region" > /dev/null 2>&1; then
	fail "another user (65534) can read the pair region $region"
fi
if as_nobody ls "$run/vm-guest-a" > /dev/null 2>&1 ||
	as_nobody test -e "$run/vm-guest-a/pair.guest-b.sock"; then
	fail "another user (65534) reaches guest-a's sockets"
fi
echo "vm-host: isolation: uid 65534 can neither read the pair region ($(stat -L -c %s "$region") bytes, memfd of pid $VM_VMD_PID) nor reach the VMs' sockets"
stat -c '%A %n' "$run" "$run"/vm-* "$run"/vm-guest-a/* "$run/ivmc-vmd.sock"

# ---- bad input: clear errors, and the server keeps serving ----
expect_err() { # expect_err PATTERN CMD...: CMD fails and says PATTERN
	local out pat=$1
	shift
	if out=$("$@" 2>&1); then
		fail "'$*' succeeded: $out"
	fi
	echo "$out" | grep -q -- "$pat" || fail "'$*' said '$out', want '$pat'"
	echo "vm-host: refused as expected: $out"
}
expect_err "bad address" "$ctl" vm add guest-x --addr 10.1.2
expect_err "bad or missing NAME" "$ctl" vm add '../x' --addr 10.1.2.3
expect_err "exists" "$ctl" vm add guest-a --addr 10.9.9.9
expect_err "no VM" "$ctl" vm remove guest-x
expect_err "no VM" "$ctl" qemu-args guest-x
expect_err "unknown option" "$ctl" qemu-args guest-a --iommmu
expect_err "unknown" "$ctl" vm frobnicate
cp "$VM_TMP/vms.conf" "$VM_TMP/vms.good"
echo "vm guest-d 10.1.1.1 not-an-address" >> "$VM_TMP/vms.conf"
expect_err "line [0-9]*: bad address" "$ctl" vm reload
cp "$VM_TMP/vms.good" "$VM_TMP/vms.conf"
python3 - "$IVMC_VM_SOCKET" "$run/vm-guest-c/control.sock" << 'EOF' || fail "raw socket checks"
import socket, sys, time
def conn(p):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(p)
    return s
# A request far too long, and one that is not NUL-terminated words.
for junk in (b"x" * 9000, b"vm list"):
    s = conn(sys.argv[1])
    try:
        s.sendall(junk)
        s.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    a = s.recv(4096)
    assert a.startswith(b"error\n"), a
    print("vm-host: command socket, %d junk bytes: %r" % (len(junk), a.decode().strip()))
    s.close()
# A client on a device socket that talks (QEMU never does): dropped.
s = conn(sys.argv[2])
s.recv(8)
s.send(b"garbage!" * 8)
time.sleep(0.3)
s.close()
# One that connects and leaves at once.
conn(sys.argv[2]).close()
EOF
kill -0 "$VM_VMD_PID" || fail "ivmc-vmd died"
"$ctl" vm list | grep -q '^guest-c  *down' || fail "guest-c should be down again"
grep -a "sent bytes" "$VM_TMP/ivmc-vmd.log" | tail -n 1

# ---- three guests ----
# guest-c: its control region names it and lists no pair, one device only.
# guest-a: receives until the host says guest-b is gone (-k), then holds a
# second so the host can read the region. guest-b: streams until killed.
log_a=$VM_TMP/guest-a.log
log_b=$VM_TMP/guest-b.log
log_c=$VM_TMP/guest-c.log
huge=1099511627776
t0=$(date +%s%N)
vm_boot guest-c "$log_c" "$secs" "ivmc.mod=vfio_pci ivmc.run=vm-chan,ctl,guest-c,- ivmc.run=vm-chan,irq-probe" "${qc[@]}"
vm_boot guest-a "$log_a" "$secs" "$irq ivmc.run=vm-chan,ctl,guest-a,guest-b ivmc.run=vm-chan,-P,guest-b,-k,-i,recv,0 ivmc.run=sleep,1" "${qa[@]}"
vm_boot guest-b "$log_b" "$secs" "$irq ivmc.run=vm-chan,ctl,guest-b,guest-a ivmc.run=vm-chan,-P,guest-a,-i,send,$huge" "${qb[@]}"

# A second QEMU for guest-a, once guest-a's own holds its devices: refused.
for _ in $(seq 200); do
	"$ctl" vm list | grep -q '^guest-a  *up .* 2/2 ' && break
	sleep 0.1
done
"$ctl" vm list | grep -q '^guest-a  *up .* 2/2 ' || fail "guest-a's QEMU did not take its devices"
if out=$(timeout 30 qemu-system-x86_64 -accel tcg -nodefaults -display none \
	-monitor none -serial none -S "${qa[@]}" 2>&1); then
	fail "a second QEMU for guest-a started"
fi
echo "vm-host: a second QEMU for guest-a: $out"
echo "$out" | grep -q "server sent version -1" || fail "the second QEMU was not refused by the server"

# Kill guest-b's QEMU once guest-a has verified 16 MiB.
for _ in $(seq $((secs * 10))); do
	grep -aq '^vm-chan: progress 16777216 ' "$log_a" && break
	if vm_dead guest-a || vm_dead guest-b; then
		break
	fi
	sleep 0.1
done
grep -aq '^vm-chan: progress 16777216 ' "$log_a" || {
	tail -n 20 "$log_a" "$log_b"
	fail "guest-a did not get 16 MiB from guest-b"
}
tk=$(date +%s%N)
vm_kill guest-b || fail "cannot kill guest-b's QEMU: $VM_REASON"
got=
for _ in $(seq $((gone_max * 20))); do
	got=$(grep -a '^vm-chan: recv: host says' "$log_a") && break
	sleep 0.05
done
te=$(date +%s%N)
[ -n "$got" ] || { tail -n 20 "$log_a"; fail "guest-a's receiver did not end within $gone_max s of the kill"; }
echo "vm-host: guest-b's QEMU killed; guest-a's receiver ended $(((te - tk) / 1000000)) ms later (seen in its console, 50 ms polls): ${got%$'\r'}"
if grep -aq '^vm-chan: IRQ on' "$log_a"; then
	# The host rang guest-a's control device when guest-b died: that
	# interrupt reached the receiver (counted before it ended).
	wait_irqs=$(echo "$got" | sed -n 's/.* (\([0-9]*\) control device interrupts).*/\1/p')
	[ "${wait_irqs:-0}" -gt 0 ] ||
		fail "guest-a slept on interrupts but took no control device interrupt"
	echo "vm-host: guest-a's receiver slept on interrupts; $wait_irqs from the control device"
else
	echo "vm-host: WARNING: guest-a could not take interrupts and polled: $(grep -a '^vm-chan: IRQ' "$log_a")"
	[ -n "${IVMC_VM_REQUIRE_IRQ:-}" ] && fail "interrupts required (IVMC_VM_REQUIRE_IRQ)"
fi
# The host's view while guest-a holds: every byte guest-b published went
# to guest-a (consumer counter = producer counter = what it verified), and
# guest-b never finished its stream.
"$chan" stat "$region" 3 "$ring" 4096 > "$VM_TMP/stat" || fail "vm-chan stat"
grep 'chan=0 dir=1' "$VM_TMP/stat"
n=$(echo "$got" | sed -n 's/.* after \([0-9]*\) verified bytes.*/\1/p')
[ -n "$n" ] || fail "no byte count in '$got'"
grep -q "chan=0 dir=1 magic=ok prod=$((n % 4294967296)) cons=$((n % 4294967296)) fin=no" "$VM_TMP/stat" ||
	fail "guest-a verified $n bytes, the region says otherwise"

vm_wait_all
rc=$?
t1=$(date +%s%N)
for l in "$log_a" "$log_b" "$log_c"; do
	tr -d '\r' < "$l" > "$l.txt" && mv "$l.txt" "$l"
	echo "---- $(basename "$l" .log)"
	grep -a 'vm-chan\|ivmc-init\|IVMC-RESULT' "$l" | grep -v ': progress '
done
echo "----"
"$ctl" vm list
[ $rc -eq 0 ] || fail "guest-a or guest-c did not finish (logs above)"
grep -aq '^vm-chan: ctl ok: 1 ivshmem device(s), 0 pair(s)' "$log_c" ||
	fail "guest-c: not exactly its control device"
grep -aq '^vm-chan: IRQ unavailable (.*): no IOMMU in the guest' "$log_c" ||
	fail "guest-c has no IOMMU and should have said so"
"$ctl" vm list | grep -q '^guest-b  *down' || fail "guest-b is not down for the host"
"$ctl" vm list | grep -q '^guest-a:guest-b .* gone  *gone ' || fail "the pair is not gone on both sides"
blocks=$(stat -L -c %b "$region")
[ "$blocks" -eq 0 ] || fail "the pair region still holds $blocks blocks"
kill -0 "$VM_VMD_PID" || fail "ivmc-vmd died"
echo "vm-host: accel $(vm_accel), three guests, $(((t1 - t0) / 1000000)) ms from the first boot to the last power-off; $n bytes verified before guest-b died; pair region freed"
exit 0
