#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# Description: two QEMU guests share one ivshmem-plain region that the host
# laid out as three ivmc channels: a stream of 8 MiB sent by one guest is
# verified byte by byte by the other, then a 64-byte ping-pong with the
# adaptive wait (spin, then poll) and one with the polling sleep only; the same
# ping-pong and stream run over TCP on virtio-net between the same guests,
# and both are reported side by side. The host then checks in the shared
# file that every byte went through it. Asserts correctness only, never time.
#
# Run by make check-vm (mk/vm.mk), from $(O)/vm beside vm-lib.sh and the
# static vm-chan. Skips (77) only when QEMU, busybox or the kernel package
# cannot be had. Environment: IVMC_VM_BYTES (stream, default 8 MiB),
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
shm=
chan=$here/vm-chan

skip() {
	echo "vm-ivshmem: $*" >&2
	exit 77
}

fail() {
	echo "vm-ivshmem: FAIL: $*" >&2
	exit 1
}

# shellcheck disable=SC2317 # called by the trap
cleanup() {
	vm_cleanup
	[ -n "$shm" ] && rm -f "$shm"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

[ -x "$chan" ] || fail "$chan missing (make vm)"
vm_need_pkgs || skip "$VM_REASON"
vm_kernel || skip "$VM_REASON"
vm_tmpdir
VM_INITRD=$VM_TMP/initrd.gz
vm_initramfs "$VM_INITRD" "virtio_pci virtio_net" "$chan" || fail "$VM_REASON"

# The region: a fresh file only we can read, laid out by the host (the
# guests only open what the host formatted).
shm=$(mktemp -p /dev/shm ivmc-vm-test.XXXXXX) || fail "mktemp in /dev/shm"
chmod 600 "$shm"
truncate -s 4M "$shm" || fail "truncate $shm"
"$chan" init "$shm" 3 "$ring" || fail "vm-chan init"

# A free port on 127.0.0.1 for the guests' virtual NIC (-netdev socket).
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])') ||
	fail "no free port"

# A NAME=VALUE without a dot on the kernel command line is in /init's
# environment, so the guests' vm-chan sees it.
poll=
[ -n "${IVMC_POLL_MAX_US:-}" ] && poll="IVMC_POLL_MAX_US=$IVMC_POLL_MAX_US"
base="ivmc.mod=virtio_pci ivmc.mod=virtio_net ivmc.run=cat,/proc/uptime $poll"
vc="ivmc.run=vm-chan,-r,$ring"
args_a=("$base" "ivmc.ip=eth0,10.77.0.1/24" "$vc,-c,0,recv,$bytes"
	"$vc,-c,1,pong,$rounds" "$vc,-c,2,-w,sleep,pong,$rounds"
	"ivmc.run=vm-chan,tcp-pong,7000,$rounds"
	"ivmc.run=vm-chan,tcp-recv,7001,$bytes")
args_b=("$base" "ivmc.ip=eth0,10.77.0.2/24" "$vc,-c,0,send,$bytes"
	"$vc,-c,1,ping,$rounds" "$vc,-c,2,-w,sleep,ping,$rounds"
	"ivmc.run=vm-chan,tcp-ping,10.77.0.1,7000,$rounds"
	"ivmc.run=vm-chan,tcp-send,10.77.0.1,7001,$bytes")
# shellcheck disable=SC2054 # commas inside QEMU's own arguments
shared=(-object "memory-backend-file,id=hostmem,share=on,mem-path=$shm,size=4M"
	-device ivshmem-plain,memdev=hostmem)

log_a=$VM_TMP/guest-a.log
log_b=$VM_TMP/guest-b.log
t0=$(date +%s%N)
# The listening side first (vm-testbed.md); the other connects to it.
vm_boot guest-a "$log_a" "$secs" "${args_a[*]}" "${shared[@]}" \
	-netdev "socket,id=n0,listen=127.0.0.1:$port" \
	-device virtio-net-pci,netdev=n0,mac=52:54:00:77:00:01,romfile=
for _ in $(seq 100); do
	ss -ltn 2> /dev/null | grep -q "127.0.0.1:$port " && break
	sleep 0.1
done
vm_boot guest-b "$log_b" "$secs" "${args_b[*]}" "${shared[@]}" \
	-netdev "socket,id=n0,connect=127.0.0.1:$port" \
	-device virtio-net-pci,netdev=n0,mac=52:54:00:77:00:02,romfile=
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
[ $rc -eq 0 ] || fail "a guest did not finish (logs above)"
grep -aq "^vm-chan: verified $bytes bytes" "$log_a" || fail "stream not verified"

# The host's view of the file QEMU shared: every byte went through it.
"$chan" stat "$shm" 3 "$ring" > "$VM_TMP/stat" || fail "vm-chan stat"
cat "$VM_TMP/stat"
want_stat() {
	grep -qx "vm-chan: STAT chan=$1 dir=$2 magic=ok prod=$3 cons=$3 $4" "$VM_TMP/stat" ||
		fail "host view of channel $1 direction $2: want $3 bytes through, $4"
}
pp=$(((rounds + 20) * 64 % 4294967296)) # vm-chan's 20 warm-up rounds
want_stat 0 0 $((bytes % 4294967296)) "fin=set end=$bytes"
want_stat 0 1 0 "fin=no end=0"
for c in 1 2; do
	want_stat $c 0 "$pp" "fin=no end=0"
	want_stat $c 1 "$pp" "fin=no end=0"
done

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
