#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# Description: two QEMU guests, configured on the host with ivmcctl vm add
# and started with exactly what ivmcctl qemu-args prints, get their pair
# region from the host's ivmc-vmd (ivshmem-doorbell devices: each guest's
# control region names the peer and its device). A stream of 64 MiB each
# way is verified byte by byte by the receiving guest: B to A polling, then
# A to B waiting on the device's interrupt (MSI-X through vfio-pci behind
# the emulated intel-iommu). Then 64-byte ping-pongs: the adaptive wait
# (spin, then poll), the polling sleep only, the interrupt only, and spin
# only (a measurement, bounded by the guests' timeout); the same ping-pong
# and stream run over TCP on virtio-net between the same guests; and the
# baselines of the same boot without ivmc code: a raw round
# trip of a counter between two cache lines of a spare channel slot, and
# memcpy() into and out of that slot (a stream's ceiling). All are reported
# side by side, with the issue's targets (spinning p50 at most 10x raw,
# stream at least 5x the NIC). The host checks in the pair region
# (the server's memfd) that every byte of both streams went through it.
# Last, the idle cost: the host reads guest A's QEMU CPU time while A waits
# for a byte that comes only later, on the interrupt, then polling, then
# while A waits for nothing at all. Asserts correctness only, never time.
# Without interrupts in the guest it says so loudly and measures polling
# (IVMC_VM_REQUIRE_IRQ=1 makes that a failure).
#
# Run by make check-vm (mk/vm.mk), from $(O)/vm beside vm-lib.sh and the
# static vm-chan, with ivmc-vmd and ivmcctl in $(O)/bin. Skips (77) only
# when QEMU, busybox or the kernel package cannot be had. Environment:
# IVMC_VM_BYTES (each stream, default 64 MiB; 512 MiB with IVMC_LONG),
# IVMC_VM_ROUNDS (round trips, default 2000; 20000 with IVMC_LONG),
# IVMC_VM_SECS (per guest, default 400), IVMC_VM_IDLE_SECS
# (each idle measurement, default 5), IVMC_VM_REQUIRE_IRQ, IVMC_POLL_MAX_US
# (passed to the guests' channels).

set -u

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=tests/vm/vm-lib.sh
. "$here/vm-lib.sh"

# make check-long (IVMC_LONG=1): 512 MiB each way, 20000 round trips.
if [ -n "${IVMC_LONG:-}" ] && [ "${IVMC_LONG}" != 0 ]; then
	bytes=${IVMC_VM_BYTES:-536870912}
	rounds=${IVMC_VM_ROUNDS:-20000}
else
	bytes=${IVMC_VM_BYTES:-67108864}
	rounds=${IVMC_VM_ROUNDS:-2000}
fi
secs=${IVMC_VM_SECS:-400}
idle=${IVMC_VM_IDLE_SECS:-5}
hold=$((idle + 3)) # an idle step lasts this long; the host samples $idle s
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
vm_initramfs "$VM_INITRD" "virtio_pci virtio_net vfio_pci vfio_iommu_type1" "$chan" ||
	fail "$VM_REASON"

# The host's side: the server, two VMs that may pair (8 MiB region, nine
# channels of 256 KiB rings; the eighth is the raw baselines' scratch).
vm_vmd_start "$bin" || fail "$VM_REASON"
printf 'pair-size 8M\npair-ring %s\npair-channels 9\n' "$ring" > "$VM_TMP/vms.conf"
"$bin/ivmcctl" vm reload > /dev/null || fail "ivmcctl vm reload"
"$bin/ivmcctl" vm add guest-a --addr 10.77.0.1 || fail "ivmcctl vm add guest-a"
"$bin/ivmcctl" vm add guest-b --addr 10.77.0.2 || fail "ivmcctl vm add guest-b"
vm_qemu_args "$bin" guest-a --iommu || fail "$VM_REASON"
qa=("${VM_QARGS[@]}")
vm_qemu_args "$bin" guest-b --iommu || fail "$VM_REASON"
qb=("${VM_QARGS[@]}")
echo "vm-ivshmem: ivmcctl qemu-args guest-a: ${qa[*]}"

# A free port on 127.0.0.1 for the guests' virtual NIC (-netdev socket).
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])') ||
	fail "no free port"

# Interrupts in the guests: MSI-X reaches user space through vfio-pci,
# which needs an IOMMU (Debian's kernels have no vfio no-IOMMU mode): q35
# with the emulated intel-iommu, remapping interrupts (vfio refuses an
# IOMMU that does not) -- what qemu-args --iommu put first above -- and
# intel_iommu=on in the guest.

# A NAME=VALUE without a dot on the kernel command line is in /init's
# environment, so the guests' vm-chan sees it.
poll=
[ -n "${IVMC_POLL_MAX_US:-}" ] && poll="IVMC_POLL_MAX_US=$IVMC_POLL_MAX_US"
base="intel_iommu=on ivmc.mod=virtio_pci ivmc.mod=virtio_net ivmc.mod=vfio_pci"
base="$base ivmc.mod=vfio_iommu_type1 ivmc.run=cat,/proc/uptime $poll"
va="ivmc.run=vm-chan,-P,guest-b"
vb="ivmc.run=vm-chan,-P,guest-a"
# Channels: 0 and 3 streams (B to A polling, A to B on the interrupt); 1,
# 2 and 4 ping-pongs; 7 raw (A's copy, then the raw ping-pong); 8 a
# ping-pong that only spins (measured, bounded by the guests' timeout)
# (adaptive, polling sleep, interrupt); 5 and 6 idle waits (interrupt,
# polling). B's poke on 5 rings A's interrupt; on 6 A finds it polling.
args_a=("$base" "ivmc.ip=eth0,10.77.0.1/24" "ivmc.run=vm-chan,ctl,guest-a,guest-b"
	"$va,-c,0,recv,$bytes" "$va,-i,-c,3,send,$bytes" "ivmc.run=sleep,1"
	"$va,-c,7,raw-copy,$bytes"
	"$va,-c,1,pong,$rounds" "$va,-c,2,-w,sleep,pong,$rounds"
	"$va,-i,-c,4,-w,sleep,pong,$rounds" "$va,-c,7,raw-pong,$rounds"
	"$va,-c,8,-w,spin,pong,$rounds"
	"ivmc.run=vm-chan,tcp-pong,7000,$rounds"
	"ivmc.run=vm-chan,tcp-recv,7001,$bytes"
	"$va,-i,-c,5,-w,sleep,idle,1" "$va,-c,6,-w,sleep,idle,1" "ivmc.run=sleep,$hold")
args_b=("$base" "ivmc.ip=eth0,10.77.0.2/24" "ivmc.run=vm-chan,ctl,guest-b,guest-a"
	"$vb,-c,0,send,$bytes" "$vb,-i,-c,3,recv,$bytes" "$vb,-c,1,ping,$rounds"
	"$vb,-c,2,-w,sleep,ping,$rounds" "$vb,-i,-c,4,-w,sleep,ping,$rounds"
	"$vb,-c,7,raw-ping,$rounds" "$vb,-c,8,-w,spin,ping,$rounds"
	"ivmc.run=vm-chan,tcp-ping,10.77.0.1,7000,$rounds"
	"ivmc.run=vm-chan,tcp-send,10.77.0.1,7001,$bytes"
	"$vb,-i,-c,5,poke,$hold" "$vb,-c,6,poke,$hold" "ivmc.run=sleep,$hold")

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
# after its two streams.
region=
for f in /proc/"$VM_VMD_PID"/fd/*; do
	case "$(readlink "$f")" in "/memfd:ivmc-pair:guest-a:guest-b "*) region=$f ;; esac
done
# wait_log PATTERN [N [GUEST]]: until the console of GUEST (default
# guest-a) shows PATTERN N times (default 1); fails if GUEST is gone first.
wait_log() {
	local g=${3:-guest-a} l=$log_a
	[ "$g" = guest-b ] && l=$log_b
	for _ in $(seq $((secs * 20))); do
		[ "$(grep -ac "$1" "$l")" -ge "${2:-1}" ] && return 0
		vm_dead "$g" && return 1
		sleep 0.05
	done
	return 1
}
[ -n "$region" ] && wait_log "^vm-chan: verified $bytes bytes" 1 &&
	wait_log "^vm-chan: verified $bytes bytes" 1 guest-b &&
	"$chan" stat "$region" 7 "$ring" 4096 > "$VM_TMP/stat"

# Host CPU (user + system) of a QEMU so far, in clock ticks.
cpu_ticks() {
	local s
	s=$(cat "/proc/$1/stat" 2> /dev/null) || return 1
	s=${s##*) }
	# shellcheck disable=SC2086 # fields, split on purpose
	set -- $s
	echo $((${12} + ${13}))
}
hz=$(getconf CLK_TCK)
qpid_a=$(cat "$VM_TMP/guest-a.pid" 2> /dev/null)
qpid_b=$(cat "$VM_TMP/guest-b.pid" 2> /dev/null)
# measure NAME PATTERN N: once A's console shows PATTERN N times, let it
# settle 1 s, then take both QEMUs' CPU over $idle s, as % of a host core.
measure() {
	local a0 b0 a1 b1 t0 t1
	wait_log "$2" "$3" || return 1
	sleep 1
	a0=$(cpu_ticks "$qpid_a") && b0=$(cpu_ticks "$qpid_b") || return 1
	t0=$(date +%s%N)
	sleep "$idle"
	a1=$(cpu_ticks "$qpid_a") && b1=$(cpu_ticks "$qpid_b") || return 1
	t1=$(date +%s%N)
	awk -v n="$1" -v a=$((a1 - a0)) -v b=$((b1 - b0)) -v hz="$hz" \
		-v ns=$((t1 - t0)) 'BEGIN {
		printf "vm-ivshmem: IDLE %s a_pct=%.2f b_pct=%.2f secs=%.2f\n", n,
			100 * a / hz / (ns / 1e9), 100 * b / hz / (ns / 1e9), ns / 1e9
	}' | tee -a "$VM_TMP/idle"
}
: > "$VM_TMP/idle"
measure irq "^vm-chan: IDLE start wait=" 1 &&
	measure poll "^vm-chan: IDLE start wait=" 2 &&
	measure none "^ivmc-init: run sleep $hold" 1
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
grep -aq "^vm-chan: verified $bytes bytes" "$log_a" || fail "stream B to A not verified"
grep -aq "^vm-chan: verified $bytes bytes" "$log_b" || fail "stream A to B not verified"

[ -n "$region" ] || fail "no pair region among ivmc-vmd's fds"
[ -s "$VM_TMP/stat" ] || fail "the host could not read the pair region while the guests ran"
cat "$VM_TMP/stat"
want_stat() {
	grep -qx "vm-chan: STAT chan=$1 dir=$2 magic=ok prod=$3 cons=$3 $4" "$VM_TMP/stat" ||
		fail "host view of channel $1 direction $2: want $3 bytes through, $4"
}
# guest-b is side 1 of the pair (the host's word: names in order): its
# stream (channel 0) is direction 1, guest-a's (channel 3) direction 0. The ping-pongs were still to come when the host
# looked; the guests check them (every echo compared).
want_stat 0 1 $((bytes % 4294967296)) "fin=set end=$bytes"
want_stat 0 0 0 "fin=no end=0"
want_stat 3 0 $((bytes % 4294967296)) "fin=set end=$bytes"
want_stat 3 1 0 "fin=no end=0"

# Both QEMUs are gone: the server has given the region's pages back.
blocks=$(stat -L -c %b "$region") || fail "stat of the pair region"
echo "vm-ivshmem: pair region after both guests: $blocks blocks allocated"
[ "$blocks" -eq 0 ] || fail "the pair region still holds $blocks blocks"

# The interrupt steps: on, or a loud fallback to polling.
irq=on
if grep -aq '^vm-chan: IRQ unavailable' "$log_a" "$log_b"; then
	irq=off
	echo "vm-ivshmem: WARNING: no interrupts in the guests, the -i steps polled:"
	grep -ah '^vm-chan: IRQ unavailable' "$log_a" "$log_b" | sort -u
	[ -n "${IVMC_VM_REQUIRE_IRQ:-}" ] && fail "interrupts required (IVMC_VM_REQUIRE_IRQ)"
else
	grep -aq '^vm-chan: IRQ on' "$log_a" || fail "no 'IRQ on' line from the -i steps"
	# Every round trip of the interrupt ping-pong slept and was rung:
	# polling never rings. (Counts, not time.)
	st=$(grep -a -A1 'RESULT ping chan-irq-sleep' "$log_b" | sed -n 's/.*STATS irq=on sleeps=\([0-9]*\) wakeups_sent=\([0-9]*\).*/\1 \2/p')
	read -r sl wk <<< "$st"
	if [ "${sl:-0}" -eq 0 ] || [ "${wk:-0}" -eq 0 ]; then
		fail "interrupt ping-pong: sleeps=${sl:-?} rings=${wk:-?}: it did not wait on the interrupt"
	fi
	echo "vm-ivshmem: interrupt ping-pong, guest B: $sl sleeps, $wk rings sent"
fi

# Side by side; never asserted.
val() { sed -n "s/.*RESULT $1 .*$2=\([0-9.]*\).*/\1/p" "$3" | head -n 1; }
c50=$(val 'ping chan' p50_us "$log_b")
c99=$(val 'ping chan' p99_us "$log_b")
s50=$(val 'ping chan-sleep' p50_us "$log_b")
s99=$(val 'ping chan-sleep' p99_us "$log_b")
i50=$(val 'ping chan-irq-sleep' p50_us "$log_b")
i99=$(val 'ping chan-irq-sleep' p99_us "$log_b")
t50=$(val 'ping tcp' p50_us "$log_b")
r50=$(val 'ping raw' p50_us "$log_b")
p50=$(val 'ping chan-spin' p50_us "$log_b")
p99=$(val 'ping chan-spin' p99_us "$log_b")
r99=$(val 'ping raw' p99_us "$log_b")
cpin=$(val 'copy to-bar' MiBps "$log_a")
cpout=$(val 'copy from-bar' MiBps "$log_a")
t99=$(val 'ping tcp' p99_us "$log_b")
cbw=$(val 'recv chan' MiBps "$log_a")
ibw=$(val 'recv chan-irq' MiBps "$log_b")
tbw=$(val 'recv tcp' MiBps "$log_a")
[ "$irq" = off ] && ibw=$(val 'recv chan' MiBps "$log_b")
for v in "$c50" "$s50" "$i50" "$t50" "$cbw" "$ibw" "$tbw" "$r50" "$p50" "$cpin" "$cpout"; do
	[ -n "$v" ] || fail "a result line is missing"
done
idl() { sed -n "s/.*IDLE $1 .*$2=\([0-9.]*\).*/\1/p" "$VM_TMP/idle"; }
ia=$(idl irq a_pct)
pa=$(idl poll a_pct)
na=$(idl none a_pct)
ib=$(idl irq b_pct)
if [ -z "$ia" ] || [ -z "$pa" ] || [ -z "$na" ]; then
	fail "an idle measurement is missing"
fi
awk -v c50="$c50" -v c99="$c99" -v t50="$t50" -v t99="$t99" -v i50="$i50" \
	-v i99="$i99" -v s50="$s50" -v s99="$s99" -v cbw="$cbw" -v tbw="$tbw" \
	-v ibw="$ibw" -v n="$rounds" -v b="$bytes" -v irq="$irq" -v ia="$ia" \
	-v pa="$pa" -v na="$na" -v ib="$ib" -v secs="$idle" -v r50="$r50" \
	-v r99="$r99" -v cpin="$cpin" -v cpout="$cpout" -v p50="$p50" -v p99="$p99" \
	-v cap="${IVMC_POLL_MAX_US:-1000}" 'BEGIN {
	printf "vm-ivshmem: 64 B round trip, %d rounds, p50 / p99 in us (interrupts %s):\n", n, irq
	printf "vm-ivshmem:   ivshmem channel, adaptive wait  %8.1f / %8.1f\n", c50, c99
	printf "vm-ivshmem:   ivshmem channel, polling sleep  %8.1f / %8.1f\n", s50, s99
	printf "vm-ivshmem:   ivshmem channel, interrupt      %8.1f / %8.1f\n", i50, i99
	printf "vm-ivshmem:   virtio-net TCP                  %8.1f / %8.1f\n", t50, t99
	printf "vm-ivshmem:   raw ivshmem, no ivmc code       %8.1f / %8.1f\n", r50, r99
	printf "vm-ivshmem:   ivshmem channel, spin only      %8.1f / %8.1f\n", p50, p99
	printf "vm-ivshmem:   spinning p50 channel/raw %.1fx (target at most 10x; adaptive/raw %.1fx)\n", p50 / r50, c50 / r50
	printf "vm-ivshmem:   p50 ratio TCP/channel: adaptive %.1fx, polling sleep %.1fx, interrupt %.1fx\n", t50 / c50, t50 / s50, t50 / i50
	printf "vm-ivshmem: streams of %d bytes: ivshmem channel polling (B to A) %.1f MiB/s, interrupt (A to B) %.1f MiB/s, virtio-net TCP (B to A) %.1f MiB/s; channel/TCP %.1fx (target at least 5x)\n", b, cbw, ibw, tbw, cbw / tbw
	printf "vm-ivshmem: ceiling: memcpy() into the BAR %.1f MiB/s, out of it %.1f MiB/s (guest A)\n", cpin, cpout
	printf "vm-ivshmem: idle, host CPU of guest A over %d s, %% of one core:\n", secs
	printf "vm-ivshmem:   waiting on the interrupt        %6.2f %%  (guest B, idle meanwhile: %.2f %%)\n", ia, ib
	printf "vm-ivshmem:   polling (cap %s us)            %6.2f %%\n", cap, pa
	printf "vm-ivshmem:   no channel at all               %6.2f %%\n", na
}'
exit 0
