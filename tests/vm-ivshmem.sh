#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# Description: two QEMU guests, configured on the host with ivmcctl vm add
# and started with exactly what ivmcctl qemu-args prints, get their pair
# region from the host's ivmc-vmd (ivshmem-doorbell devices: each guest's
# control region names the peer and its device). A stream of 8 MiB sent by
# one guest is verified byte by byte by the other, then a 64-byte ping-pong
# with the adaptive wait (spin, then poll) and one with the polling sleep
# only; the same ping-pong and stream run over TCP on virtio-net between the
# same guests, and both are reported side by side. The host then checks in
# the pair region (the server's memfd) that every byte went through it.
# Asserts correctness only, never time.
#
# Run by make check-vm (mk/vm.mk), from $(O)/vm beside vm-lib.sh and the
# static vm-chan, with ivmc-vmd and ivmcctl in $(O)/bin. Skips (77) only
# when QEMU, busybox or the kernel package cannot be had. Environment: IVMC_VM_BYTES (stream, default 8 MiB),
# IVMC_VM_ROUNDS (round trips, default 2000), IVMC_VM_SECS (per guest,
# default 400), IVMC_POLL_MAX_US (passed to the guests' channels).

set -u

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=tests/vm/vm-lib.sh
. "$here/vm-lib.sh"

bytes=${IVMC_VM_BYTES:-8388608}
rounds=${IVMC_VM_ROUNDS:-2000}
secs=${IVMC_VM_SECS:-400}
ring=262144
chan=$here/vm-chan
bin=$here/../bin

skip() {
	echo "vm-ivshmem: $*" >&2
	exit 77
}

fail() {
	echo "vm-ivshmem: FAIL: $*" >&2
	exit 1
}

trap vm_cleanup EXIT
trap 'exit 130' INT TERM

[ -x "$chan" ] || fail "$chan missing (make vm)"
if ! [ -x "$bin/ivmc-vmd" ] || ! [ -x "$bin/ivmcctl" ]; then
	fail "$bin/ivmc-vmd or ivmcctl missing (make vm)"
fi
vm_need_pkgs || skip "$VM_REASON"
vm_kernel || skip "$VM_REASON"
vm_tmpdir
VM_INITRD=$VM_TMP/initrd.gz
vm_initramfs "$VM_INITRD" "virtio_pci virtio_net" "$chan" || fail "$VM_REASON"

# The host's side: the server, two VMs that may pair (4 MiB region, three
# channels of 256 KiB rings: the server's defaults, written out here).
vm_vmd_start "$bin" || fail "$VM_REASON"
printf 'pair-size 4M\npair-ring %s\npair-channels 3\n' "$ring" > "$VM_TMP/vms.conf"
"$bin/ivmcctl" vm reload > /dev/null || fail "ivmcctl vm reload"
"$bin/ivmcctl" vm add guest-a --addr 10.77.0.1 || fail "ivmcctl vm add guest-a"
"$bin/ivmcctl" vm add guest-b --addr 10.77.0.2 || fail "ivmcctl vm add guest-b"
vm_qemu_args "$bin" guest-a || fail "$VM_REASON"
qa=("${VM_QARGS[@]}")
vm_qemu_args "$bin" guest-b || fail "$VM_REASON"
qb=("${VM_QARGS[@]}")
echo "vm-ivshmem: ivmcctl qemu-args guest-a: ${qa[*]}"

# A free port on 127.0.0.1 for the guests' virtual NIC (-netdev socket).
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])') ||
	fail "no free port"

# A NAME=VALUE without a dot on the kernel command line is in /init's
# environment, so the guests' vm-chan sees it.
poll=
[ -n "${IVMC_POLL_MAX_US:-}" ] && poll="IVMC_POLL_MAX_US=$IVMC_POLL_MAX_US"
base="ivmc.mod=virtio_pci ivmc.mod=virtio_net ivmc.run=cat,/proc/uptime $poll"
va="ivmc.run=vm-chan,-P,guest-b"
vb="ivmc.run=vm-chan,-P,guest-a"
args_a=("$base" "ivmc.ip=eth0,10.77.0.1/24" "ivmc.run=vm-chan,ctl,guest-a,guest-b"
	"$va,-c,0,recv,$bytes" "ivmc.run=sleep,1" "$va,-c,1,pong,$rounds" "$va,-c,2,-w,sleep,pong,$rounds"
	"ivmc.run=vm-chan,tcp-pong,7000,$rounds"
	"ivmc.run=vm-chan,tcp-recv,7001,$bytes")
args_b=("$base" "ivmc.ip=eth0,10.77.0.2/24" "ivmc.run=vm-chan,ctl,guest-b,guest-a"
	"$vb,-c,0,send,$bytes" "$vb,-c,1,ping,$rounds" "$vb,-c,2,-w,sleep,ping,$rounds"
	"ivmc.run=vm-chan,tcp-ping,10.77.0.1,7000,$rounds"
	"ivmc.run=vm-chan,tcp-send,10.77.0.1,7001,$bytes")

log_a=$VM_TMP/guest-a.log
log_b=$VM_TMP/guest-b.log
t0=$(date +%s%N)
# The listening side first (vm-testbed.md); the other connects to it.
vm_boot guest-a "$log_a" "$secs" "${args_a[*]}" "${qa[@]}" \
	-netdev "socket,id=n0,listen=127.0.0.1:$port" \
	-device virtio-net-pci,netdev=n0,mac=52:54:00:77:00:01,romfile=
for _ in $(seq 100); do
	ss -ltn 2> /dev/null | grep -q "127.0.0.1:$port " && break
	sleep 0.1
done
vm_boot guest-b "$log_b" "$secs" "${args_b[*]}" "${qb[@]}" \
	-netdev "socket,id=n0,connect=127.0.0.1:$port" \
	-device virtio-net-pci,netdev=n0,mac=52:54:00:77:00:02,romfile=
# The host's view of the region the guests share (the server's memfd,
# reached through /proc as root), taken while they still run: once both
# QEMUs are gone the server frees its pages. Guest A holds for a second
# after its stream.
region=
for f in /proc/"$VM_VMD_PID"/fd/*; do
	case "$(readlink "$f")" in "/memfd:ivmc-pair:guest-a:guest-b "*) region=$f ;; esac
done
seen=
for _ in $(seq $((secs * 20))); do
	grep -aq "^vm-chan: verified $bytes bytes" "$log_a" && seen=1 && break
	vm_alive guest-a || break
	sleep 0.05
done
[ -n "$region" ] && [ -n "$seen" ] &&
	"$chan" stat "$region" 3 "$ring" 4096 > "$VM_TMP/stat"
vm_wait_all
rc=$?
t1=$(date +%s%N)
for l in "$log_a" "$log_b"; do # the serial console ends lines with \r\n
	tr -d '\r' < "$l" > "$l.txt" && mv "$l.txt" "$l"
done

echo "---- guest a"
grep -a 'vm-chan\|ivmc-init\|IVMC-RESULT\|^[0-9.]* [0-9.]*$' "$log_a"
echo "---- guest b"
grep -a 'vm-chan\|ivmc-init\|IVMC-RESULT\|^[0-9.]* [0-9.]*$' "$log_b"
echo "----"
echo "vm-ivshmem: accel $(vm_accel), two guests booted, tested and off in $(((t1 - t0) / 1000000)) ms"
for l in "$log_a" "$log_b"; do
	up=$(grep -a -A1 'run cat /proc/uptime' "$l" | tail -n 1 | cut -d' ' -f1)
	echo "vm-ivshmem: $(basename "$l" .log): at /init after ${up:-?} s of guest uptime"
done
"$bin/ivmcctl" vm list
[ $rc -eq 0 ] || { tail -n 20 "$VM_TMP/ivmc-vmd.log"; fail "a guest did not finish (logs above)"; }
grep -aq "^vm-chan: verified $bytes bytes" "$log_a" || fail "stream not verified"

[ -n "$region" ] || fail "no pair region among ivmc-vmd's fds"
[ -s "$VM_TMP/stat" ] || fail "the host could not read the pair region while the guests ran"
cat "$VM_TMP/stat"
want_stat() {
	grep -qx "vm-chan: STAT chan=$1 dir=$2 magic=ok prod=$3 cons=$3 $4" "$VM_TMP/stat" ||
		fail "host view of channel $1 direction $2: want $3 bytes through, $4"
}
# guest-b is side 1 of the pair (the host's word: names in order): its
# stream is direction 1. The ping-pongs were still to come when the host
# looked; the guests check them (every echo compared).
want_stat 0 1 $((bytes % 4294967296)) "fin=set end=$bytes"
want_stat 0 0 0 "fin=no end=0"

# Both QEMUs are gone: the server has given the region's pages back.
blocks=$(stat -L -c %b "$region") || fail "stat of the pair region"
echo "vm-ivshmem: pair region after both guests: $blocks blocks allocated"
[ "$blocks" -eq 0 ] || fail "the pair region still holds $blocks blocks"

# Side by side; never asserted.
val() { sed -n "s/.*RESULT $1 .*$2=\([0-9.]*\).*/\1/p" "$3" | head -n 1; }
c50=$(val 'ping chan' p50_us "$log_b")
c99=$(val 'ping chan' p99_us "$log_b")
s50=$(val 'ping chan-sleep' p50_us "$log_b")
s99=$(val 'ping chan-sleep' p99_us "$log_b")
t50=$(val 'ping tcp' p50_us "$log_b")
t99=$(val 'ping tcp' p99_us "$log_b")
cbw=$(val 'recv chan' MiBps "$log_a")
tbw=$(val 'recv tcp' MiBps "$log_a")
for v in "$c50" "$s50" "$t50" "$cbw" "$tbw"; do
	[ -n "$v" ] || fail "a result line is missing"
done
awk -v c50="$c50" -v c99="$c99" -v t50="$t50" -v t99="$t99" \
	-v s50="$s50" -v s99="$s99" -v cbw="$cbw" -v tbw="$tbw" -v n="$rounds" \
	-v b="$bytes" 'BEGIN {
	printf "vm-ivshmem: 64 B round trip, %d rounds, p50 / p99 in us:\n", n
	printf "vm-ivshmem:   ivshmem channel, adaptive wait  %8.1f / %8.1f\n", c50, c99
	printf "vm-ivshmem:   ivshmem channel, polling sleep  %8.1f / %8.1f\n", s50, s99
	printf "vm-ivshmem:   virtio-net TCP                  %8.1f / %8.1f\n", t50, t99
	printf "vm-ivshmem:   p50 ratio TCP/channel: adaptive %.1fx, polling sleep %.1fx\n", t50 / c50, t50 / s50
	printf "vm-ivshmem: stream of %d bytes: ivshmem channel %.1f MiB/s, virtio-net TCP %.1f MiB/s; channel/TCP %.1fx\n", b, cbw, tbw, cbw / tbw
}'
exit 0
