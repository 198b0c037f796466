#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# Description: transparent acceleration between two QEMU guests. Each
# guest runs "ivmcd --guest" (the guest daemon: finds its ivshmem devices
# and control region itself) and unmodified socat under ivmc-run
# (libivmc-preload.so). 32 MiB go each way at once over TCP between the
# guests' virtio-net addresses, each verified in the receiving guest by
# sha256 against the same seeded generator (and here against the host's
# run of it), with no byte more. The receiver samples "ivmcctl status"
# while the connection is still open. Then 64-byte round trips over TCP,
# plain and under ivmc-run (vm-chan tcp-ping/pong; under ivmc-run also
# with poll() before each receive, as an event loop), and one stream of
# 64 MiB from B to A (vm-chan tcp-send/recv, every byte checked), plain
# and under ivmc-run, both reported, not asserted. Four boots of both
# guests, in this order:
#   main: the host allows the pair (pair region: 16 MiB, 256 KiB rings,
#     channel 0 the daemons' link); when the daemon has --guest, both
#     connections must have been accelerated (a channel listed during
#     each, more than at the end), and the stream under ivmc-run too (the
#     host saw a slot carry half of it B to A while it ran); both guests
#     take the pair device's interrupts, so the connections' slots must
#     have had vectors (each daemon's IRQ-SLOTS and irq_conns);
#   poll: as main, the guests' daemons with --poll: no interrupts, the
#     connections' ends poll (IRQ-SLOTS 0): the same checks, and the
#     round trips, stream and idle cost to set beside main's;
#   kill: the pair still allowed: B streams to A with no end (vm-chan gen
#     into socat -u), A verifies every byte as it comes (vm-chan check);
#     once the host sees (ivmcctl vm slots) that the stream went through
#     a slot's rings and A verified 8 MiB, it SIGKILLs B's QEMU. A's socat
#     must end within 20 s of the kill (EOF or reset), every byte it got
#     verified, no fewer than the slot carried, and A's daemon must have
#     logged "pair with guest-b: the peer VM is gone". The time from the
#     kill to the end is reported;
#   deny: "ivmcctl vm deny guest-a guest-b" first: no pair region, the
#     same transfers still verify over virtio-net, and no channel is ever
#     listed.
# Idle cost, reported and never asserted: in main, poll and deny, after
# the transfers, B opens a connection to A, sends three bytes and then
# holds it open without a byte for a while, A's socat blocked reading it;
# the host takes both QEMUs' CPU time (utime + stime, as vm-ivshmem does)
# over IVMC_VM_IDLE_SECS: asleep on the interrupt (main), polling with the
# default nap caps (poll), on plain TCP (deny). main and poll assert that
# A's end was on the channel, deny that it was not.
# Before the guest daemon exists (ivmcd without --guest exits with its
# usage in the guests), the clients stay on TCP: the data checks still
# apply, and the acceleration check prints a SKIP line and is not a
# failure; the kill variant is then skipped.
#
# Run by make check-vm (mk/vm.mk), from $(O)/vm beside vm-lib.sh,
# vm-preload-guest.sh, vm-chan and vm-chan-dyn, with ivmc-vmd, ivmcctl,
# ivmcd and ivmc-run in $(O)/bin and libivmc-preload.so in $(O)/lib; the
# guests get the dynamic ones with their libraries (vm_extra_prog). Skips
# (77) only when QEMU, busybox, socat or the kernel package cannot be had.
# Environment: IVMC_VM_PRELOAD_MIB (each way, default 32; 256 with
# IVMC_LONG), IVMC_VM_ROUNDS (round trips, default 1000), IVMC_VM_SECS
# (per guest, default 180; 600 with IVMC_LONG), IVMC_VM_IDLE_SECS (each
# idle measurement, default 5), IVMC_VM_STREAM_MIB (the stream, default
# 64), IVMC_VM_PAIR_RING (the host's pair-ring, default 256K).

set -u

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=tests/vm/vm-lib.sh
. "$here/vm-lib.sh"

# make check-long (IVMC_LONG=1): 256 MiB each way. Each guest's one vCPU
# sends, receives and hashes (busybox sha256sum: about 17 MiB/s under TCG)
# at once: 32 MiB each way took 6-12 s, so this is minutes.
if [ -n "${IVMC_LONG:-}" ] && [ "${IVMC_LONG}" != 0 ]; then
	mib=${IVMC_VM_PRELOAD_MIB:-256}
	secs=${IVMC_VM_SECS:-600}
else
	mib=${IVMC_VM_PRELOAD_MIB:-32}
	secs=${IVMC_VM_SECS:-180}
fi
bytes=$((mib * 1048576))
rounds=${IVMC_VM_ROUNDS:-1000}
# One stream B to A (main), plain then under ivmc-run: vm-chan-dyn
# tcp-send/tcp-recv alone, no hash, no socat: the throughput figure.
smib=${IVMC_VM_STREAM_MIB:-64}
sport=7100 # plain; under ivmc-run on sport + 1
pring=${IVMC_VM_PAIR_RING:-256K} # the pair rings (ivmc-vmd's default)
idle=${IVMC_VM_IDLE_SECS:-5}
# The guest daemons tick every 1 ms for 2 s after a link message (pairing),
# then every 100 ms: the host lets that pass before it measures, and B
# holds the idle connection long enough for both.
settle=2.5
hold=$((idle + 5))
gone_max=20 # seconds from the kill to A's receiver's end: a bound, not a target
live_min=$((8 * 1048576)) # through the slot and verified before the kill
chan=$here/vm-chan
bin=$here/../bin
ctl=$bin/ivmcctl
gscript=$here/vm-preload-guest.sh
preload=$here/../lib/libivmc-preload.so
g="ivmc.run=sh,/bin/vm-preload-guest.sh"

skip() {
	echo "vm-preload: $*" >&2
	exit 77
}

fail() {
	echo "vm-preload: FAIL: $*" >&2
	[ -n "$VM_TMP" ] && [ -f "$VM_TMP/ivmc-vmd.log" ] &&
		tail -n 20 "$VM_TMP/ivmc-vmd.log" >&2
	exit 1
}

trap vm_cleanup EXIT
trap 'exit 130' INT TERM

for f in "$chan" "$here/vm-chan-dyn" "$gscript" "$bin/ivmc-vmd" "$ctl" \
	"$bin/ivmcd" "$bin/ivmc-run" "$preload"; do
	[ -e "$f" ] || fail "$f missing (make vm)"
done
[[ $mib =~ ^[1-9][0-9]*$ ]] || fail "IVMC_VM_PRELOAD_MIB=$mib: a whole number of MiB"
[[ $smib =~ ^[1-9][0-9]*$ ]] || fail "IVMC_VM_STREAM_MIB=$smib: a whole number of MiB"
sbytes=$((smib * 1048576))
vm_need_pkgs || skip "$VM_REASON"
vm_need_cmd socat socat || skip "$VM_REASON"
vm_kernel || skip "$VM_REASON"

# The guests' initramfs: vm-chan (static) in /bin as usual; the dynamic
# programs with their libraries and loader; the preload at /lib, which is
# ../lib from ivmc-run in /bin, where it looks first.
vm_tmpdir
VM_INITRD=$VM_TMP/initrd.gz
for p in "socat:$(command -v socat)" "ivmcd:$bin/ivmcd" "ivmcctl:$ctl" \
	"ivmc-run:$bin/ivmc-run" "vm-chan-dyn:$here/vm-chan-dyn"; do
	vm_extra_prog "${p#*:}" "/bin/${p%%:*}" || fail "$VM_REASON"
done
vm_extra_prog "$preload" /lib/libivmc-preload.so || fail "$VM_REASON"
vm_extra_file "$gscript" /bin/vm-preload-guest.sh || fail "$VM_REASON"
vm_extra_net_etc || fail "$VM_REASON"
vm_initramfs "$VM_INITRD" "virtio_pci virtio_net vfio_pci vfio_iommu_type1" "$chan" ||
	fail "$VM_REASON"
echo "vm-preload: initramfs $(stat -c %s "$VM_INITRD") bytes; $mib MiB each way"

# What the guests must have received, by the host's run of the generator.
sha_a=$("$chan" gen "$bytes" 1 | sha256sum | cut -d' ' -f1) # B to A, port 5000
sha_b=$("$chan" gen "$bytes" 2 | sha256sum | cut -d' ' -f1) # A to B, port 5001

# The same ivmcd binary goes into the guests: does it have guest mode?
guest_mode=no
"$bin/ivmcd" --help 2>&1 | grep -q -- '--guest' && guest_mode=yes
echo "vm-preload: ivmcd --guest in this build: $guest_mode"

# The pair layout guest mode needs: one channel laid out by the host (the
# daemons' link); the daemons carve the connections' channels from the rest.
vm_vmd_start "$bin" || fail "$VM_REASON"
printf 'pair-size 16M\npair-ring %s\npair-channels 1\n' "$pring" > "$VM_TMP/vms.conf"
"$ctl" vm reload > /dev/null || fail "ivmcctl vm reload"
"$ctl" vm add guest-a --addr 10.77.0.1 || fail "ivmcctl vm add guest-a"
"$ctl" vm add guest-b --addr 10.77.0.2 || fail "ivmcctl vm add guest-b"

base="intel_iommu=on ivmc.mod=virtio_pci ivmc.mod=virtio_net ivmc.mod=vfio_pci"
base="$base ivmc.mod=vfio_iommu_type1 ivmc.run=cat,/proc/uptime"

# full V: a variant with round trips, the stream and the slots' checks.
full() { [ "$1" = main ] || [ "$1" = poll ]; }

# val LOG KEY [PATTERN]: KEY=value from the first line matching PATTERN
val() { grep -a "${3:-.}" "$1" | sed -n "s/.* $2=\([^ ]*\).*/\1/p" | head -n 1; }

# boot_both VARIANT STEPS_A STEPS_B: boot both guests (A listens on the
# virtio-net socket, B connects), and sample "ivmcctl vm slots" (what went
# through the pair region's slots, as the host sees it) while they run.
# Their logs: $VM_TMP/VARIANT-guest-{a,b}.log.
boot_both() {
	local v=$1 qa qb port d="$g,daemon"
	[ "$v" = poll ] && d="$d,poll"
	vm_qemu_args "$bin" guest-a --iommu || fail "$VM_REASON"
	qa=("${VM_QARGS[@]}")
	vm_qemu_args "$bin" guest-b --iommu || fail "$VM_REASON"
	qb=("${VM_QARGS[@]}")
	echo "vm-preload: $v: ivmcctl qemu-args guest-a: ${qa[*]}"
	if [ "$v" = deny ]; then
		[[ "${qa[*]} ${qb[*]}" != *pair.* ]] || fail "deny: qemu-args still give a pair device"
	else
		[[ "${qa[*]}" == *pair.guest-b* ]] || fail "$v: no pair device in guest-a's qemu-args"
	fi
	port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])') ||
		fail "no free port"
	t0=$(date +%s%N)
	vm_boot guest-a "$VM_TMP/$v-guest-a.log" "$secs" \
		"$base $d ivmc.ip=eth0,10.77.0.1/24 $2" "${qa[@]}" \
		-netdev "socket,id=n0,listen=127.0.0.1:$port" \
		-device virtio-net-pci,netdev=n0,mac=52:54:00:77:00:01,romfile=
	for _ in $(seq 100); do
		ss -ltn 2> /dev/null | grep -q "127.0.0.1:$port " && break
		sleep 0.1
	done
	vm_boot guest-b "$VM_TMP/$v-guest-b.log" "$secs" \
		"$base $d ivmc.ip=eth0,10.77.0.2/24 $3" "${qb[@]}" \
		-netdev "socket,id=n0,connect=127.0.0.1:$port" \
		-device virtio-net-pci,netdev=n0,mac=52:54:00:77:00:02,romfile=
	# Appended to, so that stream_window's marks land between samples.
	: > "$VM_TMP/$v-slots.log"
	(
		for _ in $(seq 3000); do
			"$ctl" vm slots 2> /dev/null
			sleep 0.2
		done
	) >> "$VM_TMP/$v-slots.log" &
	sampler=$!
}

# end_both VARIANT: wait for the guests still running; print their lines.
# Returns vm_wait_all's verdict.
end_both() {
	local v=$1 rc t1 l
	vm_wait_all
	rc=$?
	kill "$sampler" 2> /dev/null
	wait "$sampler" 2> /dev/null
	t1=$(date +%s%N)
	for l in "$VM_TMP/$v-guest-a.log" "$VM_TMP/$v-guest-b.log"; do
		# the serial console ends lines with \r\n
		tr -d '\r' < "$l" > "$l.txt" && mv "$l.txt" "$l"
	done
	for l in "$VM_TMP/$v-guest-a.log" "$VM_TMP/$v-guest-b.log"; do
		echo "---- $v: $(basename "$l" .log)"
		grep -a 'vm-preload\|IVMC-\|ivmc-init\|RESULT\|check:\|^ \|^[0-9.]* [0-9.]*$' "$l"
	done
	echo "----"
	echo "vm-preload: $v: two guests booted, tested and off in $(((t1 - t0) / 1000000)) ms"
	return $rc
}

# wait_line GUEST LOG PATTERN SECS: until LOG shows PATTERN (50 ms looks);
# fails if GUEST is gone first or SECS pass.
wait_line() {
	for _ in $(seq $(($4 * 20))); do
		grep -aq "$3" "$2" && return 0
		vm_dead "$1" && { grep -aq "$3" "$2"; return; }
		sleep 0.05
	done
	return 1
}

# Host CPU (user + system) of a process so far, in clock ticks.
cpu_ticks() {
	local s
	s=$(cat "/proc/$1/stat" 2> /dev/null) || return 1
	s=${s##*) }
	# shellcheck disable=SC2086 # fields, split on purpose
	set -- $s
	echo $((${12} + ${13}))
}
hz=$(getconf CLK_TCK)

# idle_measure VARIANT PORT WHAT: once A says its idle receiver on PORT has
# the preamble, let the daemons settle, then take both QEMUs' CPU over
# $idle s, as % of a host core, into $VM_TMP/idle. The window must end
# before A's receiver does (B holds for $hold s after the preamble).
idle_measure() {
	local v=$1 port=$2 what=$3 la=$VM_TMP/$1-guest-a.log qa qb a0 b0 a1 b1 t0 t1 ok
	wait_line guest-a "$la" "^IVMC-IDLE: start port=$port " "$secs" ||
		fail "$v: guest-a's idle receiver on port $port did not start"
	sleep "$settle"
	qa=$(cat "$VM_TMP/guest-a.pid")
	qb=$(cat "$VM_TMP/guest-b.pid")
	ok=yes
	a0=$(cpu_ticks "$qa") && b0=$(cpu_ticks "$qb") || ok=no
	t0=$(date +%s%N)
	sleep "$idle"
	a1=$(cpu_ticks "$qa") && b1=$(cpu_ticks "$qb") || ok=no
	t1=$(date +%s%N)
	if [ $ok = no ]; then
		echo "vm-preload: WARNING: $v: a QEMU ended during the idle measurement on port $port: no figure" |
			tee -a "$VM_TMP/idle"
		return
	fi
	grep -aq "^IVMC-IDLE: end port=$port " "$la" && ok=no
	awk -v v="$v" -v w="$what" -v a=$((a1 - a0)) -v b=$((b1 - b0)) -v hz="$hz" \
		-v ns=$((t1 - t0)) -v ok="$ok" 'BEGIN {
		printf "vm-preload: IDLE %s %s a_pct=%.2f b_pct=%.2f secs=%.2f window_ok=%s\n",
			v, w, 100 * a / hz / (ns / 1e9), 100 * b / hz / (ns / 1e9), ns / 1e9, ok
	}' | tee -a "$VM_TMP/idle"
	[ $ok = yes ] || echo "vm-preload: WARNING: $v: the idle connection on port $port closed before the measurement ended (a loaded host?): the figure includes its end"
}

# check_xfer LOG PORT SHA: the receiver on PORT verified what the host
# computed, and nothing came after it.
check_xfer() {
	grep -aq "^IVMC-XFER: port=$2 seed=[0-9]* bytes=$bytes got=$3 want=$3 rest=0 .*verdict=ok" "$1" ||
		fail "$v: port $2: not verified in $(basename "$1"): $(grep -a "^IVMC-XFER: port=$2" "$1")"
}

# check_accel V LOG: the acceleration verdict for the receiver in LOG.
check_accel() {
	local v=$1 l=$2 d e dr
	d=$(val "$l" channels '^IVMC-ACCEL: when=during')
	e=$(val "$l" channels '^IVMC-ACCEL: when=end')
	dr=$(val "$l" running '^IVMC-DAEMON:')
	echo "vm-preload: $v: $(basename "$l" .log): channels listed during its receive: ${d:-?}, at the end: ${e:-?} (daemon running: ${dr:-?})"
	if [ "$v" = deny ]; then
		if [ "${d:-x}" != 0 ] || [ "${e:-x}" != 0 ]; then
			fail "deny: a channel was listed (during ${d:-?}, end ${e:-?})"
		fi
		return
	fi
	if [ "$guest_mode" = no ]; then
		echo "vm-preload: SKIP acceleration check ($(basename "$l" .log)): ivmcd has no --guest yet; the connections stayed on TCP (fallback, data verified)"
		return
	fi
	[ "$dr" = yes ] || fail "$v: ivmcd --guest not running in $(basename "$l" .log)"
	# A channel for the connection while it is open, gone at the end (a
	# link between the daemons, if listed, is there both times).
	if ! [[ $d =~ ^[0-9]+$ && $e =~ ^[0-9]+$ ]] || [ "$d" -lt 1 ] || [ "$d" -le "$e" ]; then
		fail "$v: $(basename "$l" .log): the connection was not accelerated (channels during ${d:-?}, at the end ${e:-?})"
	fi
}

# check_slots V: from the host, the pair region's slots carried most of
# each stream: A to B is side 0 to 1 of its channel (A allocates both:
# 10.77.0.1 sorts first), B to A side 1 to 0 (docs/vm.md). Only the looks
# before main's stream step count: that stream is checked on its own.
check_slots() {
	local v=$1 f=$VM_TMP/$1-slots.log m01 m10
	m01=$(awk '/^@ stream-start/ { exit } $1 == "guest-a:guest-b" && $4 + 0 > m { m = $4 + 0 } END { print m + 0 }' "$f")
	m10=$(awk '/^@ stream-start/ { exit } $1 == "guest-a:guest-b" && $5 + 0 > m { m = $5 + 0 } END { print m + 0 }' "$f")
	echo "vm-preload: $v: ivmcctl vm slots on the host: most bytes through one slot's rings, A to B $m01, B to A $m10 (of $bytes each way)"
	if [ "$v" = deny ] || [ "$guest_mode" = no ]; then
		[ "$m01" = 0 ] && [ "$m10" = 0 ] || fail "$v: bytes through a slot ($m01, $m10) where nothing may be accelerated"
		return
	fi
	[ "$m01" -ge $((bytes / 2)) ] && [ "$m10" -ge $((bytes / 2)) ] ||
		fail "$v: the slots carried too little (A to B $m01, B to A $m10 of $bytes): not accelerated"
}

# stream_window: mark main's slots log (its sampler appends) when A
# starts the plain stream, after one more look: nothing moves through the
# slots from there until the accelerated stream, and what they show is
# what the earlier steps left. Mark it again when A's accelerated stream
# has ended, after a last look.
stream_window() {
	local v=$1 la=$VM_TMP/$1-guest-a.log f=$VM_TMP/$1-slots.log
	if ! wait_line guest-a "$la" "^IVMC-STREAM: start mode=plain port=$sport " "$secs"; then
		tail -n 20 "$la"
		fail "$v: guest-a's stream receiver did not start"
	fi
	"$ctl" vm slots >> "$f" 2> /dev/null
	echo "@ stream-start" >> "$f"
	if ! wait_line guest-a "$la" "^IVMC-STREAM: end mode=ivmc port=$((sport + 1)) " "$secs"; then
		tail -n 20 "$la"
		fail "$v: guest-a's stream under ivmc-run did not end"
	fi
	"$ctl" vm slots >> "$f" 2> /dev/null
	echo "@ stream-end" >> "$f"
}

# check_stream_slots: the accelerated stream went B to A (side 1 to 0)
# through one slot's rings, as check_slots asks of the transfers: of the
# slots that showed other counts in the window than before it (a slot the
# earlier steps left keeps its counts), the most bytes B to A, at least
# half the stream's.
check_stream_slots() {
	local v=$1 f=$VM_TMP/$1-slots.log r m slot ab
	r=$(awk '/^@ stream-start/ { st = 1; next }
		/^@ stream-end/ { st = 2; next }
		$1 != "guest-a:guest-b" { next }
		{ k = "side " $2 " slot " $3 }
		st == 0 { s0[k] = $4 " " $5; next }
		st == 1 && (!(k in s0) || s0[k] != $4 " " $5) && $5 + 0 > m {
			m = $5 + 0; at = k; ab = $4 + 0
		}
		END { printf "%d %s %d\n", m, at == "" ? "none" : at, ab }' "$f")
	m=${r%% *}
	ab=${r##* }
	slot=${r#* }
	slot=${slot% *}
	echo "vm-preload: $v: ivmcctl vm slots on the host while the stream under ivmc-run ran: most bytes B to A through one slot's rings $m ($slot; A to B $ab), of $sbytes"
	if [ "$guest_mode" = no ]; then
		[ "$m" = 0 ] || fail "$v: $m bytes of the stream through a slot without ivmcd --guest"
		return
	fi
	[ "$m" -ge $((sbytes / 2)) ] ||
		fail "$v: the slots carried too little of the stream under ivmc-run ($m of $sbytes B to A): not accelerated"
}

# check_irq V LOG: the guest's daemon gave the connections' slots
# interrupt vectors (main: each side's first slots have one, and at least
# one connection had one), or none at all (poll, and deny: no pair).
check_irq() {
	local v=$1 l=$2 k c
	[ "$guest_mode" = yes ] || return 0
	k=$(val "$l" irq_slots '^IVMC-IRQ:')
	c=$(val "$l" irq_conns '^IVMC-IRQ:')
	echo "vm-preload: $v: $(basename "$l" .log): $(grep -a '^IVMC-IRQ:' "$l" | head -n 1)"
	if [ "$v" = main ]; then
		[[ $k =~ ^[0-9]+$ && $c =~ ^[0-9]+$ ]] && [ "$k" -ge 1 ] && [ "$c" -ge 1 ] ||
			fail "main: $(basename "$l" .log): no connection took the interrupt (irq_slots ${k:-?}, irq_conns ${c:-?})"
	elif [ "$v" = poll ]; then
		[ "${k:-x}" = 0 ] && [ "${c:-x}" = 0 ] ||
			fail "poll: $(basename "$l" .log): interrupts with --poll (irq_slots ${k:-?}, irq_conns ${c:-?})"
	fi
}

# check_idle V PORT: A's idle receiver on PORT took the preamble, was on
# the channel (main, with --guest) or not (otherwise), and got nothing more.
check_idle() {
	local v=$1 la=$VM_TMP/$1-guest-a.log want=no st
	full "$v" && [ "$guest_mode" = yes ] && want=yes
	st=$(grep -a "^IVMC-IDLE: start port=$2 " "$la")
	[[ $st == *" preamble=abc attached=$want "* ]] ||
		fail "$v: idle connection on port $2: '$st', want the preamble and attached=$want"
	grep -aq "^IVMC-IDLE: end port=$2 rest=0 " "$la" ||
		fail "$v: idle connection on port $2 did not end cleanly: $(grep -a "^IVMC-IDLE: end port=$2 " "$la")"
}

# The kill variant's host side, between boot_both and end_both: once the
# stream has carried live_min bytes through a slot's rings (the host's
# view) and A has verified as many, SIGKILL B's QEMU and time A's end.
kill_mid_stream() {
	local la=$VM_TMP/kill-guest-a.log m10=0 prog=0 tk te line
	for _ in $(seq $((secs * 5))); do
		m10=$("$ctl" vm slots 2> /dev/null |
			awk '$1 == "guest-a:guest-b" && $5 + 0 > m { m = $5 + 0 } END { print m + 0 }')
		prog=$(grep -a '^vm-chan: progress ' "$la" | tail -n 1 | cut -d' ' -f3)
		[ "$m10" -ge $live_min ] && [ "${prog:-0}" -ge $live_min ] && break
		# A QEMU that has not written its pid file yet is starting,
		# not dead (a loaded CI machine: the loop once ended at once).
		if vm_dead guest-a || vm_dead guest-b; then
			break
		fi
		sleep 0.2
	done
	if [ "$m10" -lt $live_min ] || [ "${prog:-0}" -lt $live_min ]; then
		tail -n 20 "$la" "$VM_TMP/kill-guest-b.log"
		fail "kill: before the kill, the slot carried $m10 bytes B to A and A verified ${prog:-0}; want $live_min each"
	fi
	echo "vm-preload: kill: the stream is on the ring (ivmcctl vm slots: $m10 bytes B to A) and A verified $prog: killing guest-b's QEMU"
	tk=$(date +%s%N)
	vm_kill guest-b || fail "kill: cannot kill guest-b's QEMU: $VM_REASON"
	wait_line guest-a "$la" '^IVMC-LIVE: ' "$gone_max"
	te=$(date +%s%N)
	line=$(grep -a '^IVMC-LIVE: ' "$la" | tr -d '\r')
	if [ -z "$line" ]; then
		tail -n 20 "$la"
		fail "kill: guest-a's receiving socat did not end within $gone_max s of the kill"
	fi
	live_ms=$(((te - tk) / 1000000))
	# The region, while A still runs: what B put in the slot's ring.
	live_ring=$("$ctl" vm slots 2> /dev/null |
		awk '$1 == "guest-a:guest-b" && $5 + 0 > m { m = $5 + 0 } END { print m + 0 }')
	echo "vm-preload: kill: guest-a's socat ended $live_ms ms after the kill (its console, 50 ms looks): $line"
}

# check_kill: A verified every byte it got, at least what the slot carried,
# and its daemon saw the peer VM gone.
check_kill() {
	local la=$VM_TMP/kill-guest-a.log n src gone
	grep -aq '^IVMC-LIVE: port=5002 socat_rc=[0-9]* check_rc=0 ' "$la" ||
		fail "kill: A's stream did not verify: $(grep -a '^IVMC-LIVE:' "$la")"
	n=$(sed -n 's/^vm-chan: check: end of input after \([0-9]*\) verified bytes.*/\1/p' "$la")
	[ -n "$n" ] || fail "kill: no count from vm-chan check"
	[ "$n" -ge "$live_ring" ] && [ "$n" -ge $live_min ] ||
		fail "kill: A verified $n bytes; the slot's ring carried $live_ring"
	src=$(sed -n 's/^IVMC-LIVE: .* socat_rc=\([0-9]*\) .*/\1/p' "$la")
	gone=$(grep -a '^IVMC-GONE: ' "$la")
	[[ $gone == *"pair with guest-b: the peer VM is gone"* ]] ||
		fail "kill: guest-a's daemon did not log the peer VM gone: $gone"
	echo "vm-preload: kill: A verified $n bytes ($live_ring through the slot's ring, the rest on TCP before the attach), then socat exit $src ($([ "$src" = 0 ] && echo 'end of stream' || echo 'an error')); ${gone#IVMC-GONE: }"
}

: > "$VM_TMP/idle"
for v in main poll kill deny; do
	la=$VM_TMP/$v-guest-a.log
	lb=$VM_TMP/$v-guest-b.log
	if [ $v = kill ]; then
		if [ "$guest_mode" = no ]; then
			echo "vm-preload: SKIP kill: ivmcd has no --guest yet"
			continue
		fi
		boot_both kill "$g,live-recv,5002,3 $g,status" "$g,live-send,10.77.0.1,5002,3"
		kill_mid_stream
		end_both kill || fail "kill: guest-a did not finish (logs above)"
		check_kill
		continue
	fi
	if [ $v = deny ]; then
		"$ctl" vm deny guest-a guest-b || fail "ivmcctl vm deny guest-a guest-b"
		"$ctl" vm list
	fi
	# Both directions at once (A receives on 5000, B on 5001); in main
	# and poll, round trips on 7000/7001/7002 (plain, ivmc-run, ivmc-run
	# in poll()) and the stream; then the idle connection (5003).
	sa="$g,xfer,10.77.0.2,$bytes,5000,1,5001,2"
	sb="$g,xfer,10.77.0.1,$bytes,5001,2,5000,1"
	if full $v; then
		sa="$sa $g,rtt-pong,7000,$rounds $g,stream-recv,$sport,$sbytes"
		sb="$sb $g,rtt-ping,10.77.0.1,7000,$rounds $g,stream-send,10.77.0.1,$sport,$sbytes"
	fi
	sa="$sa $g,idle-recv,5003,-"
	sb="$sb $g,idle-send,10.77.0.1,5003,$hold,-"
	boot_both $v "$sa $g,status" "$sb $g,status"
	full $v && stream_window $v
	idle_measure $v 5003 "cap=default"
	end_both $v || fail "$v: a guest did not finish (logs above)"
	for l in "$la" "$lb"; do
		grep -aq "^IVMC-DAEMON: guest_mode=$guest_mode " "$l" ||
			fail "$v: $(basename "$l" .log) says $(grep -a '^IVMC-DAEMON:' "$l"), the host's ivmcd says guest_mode=$guest_mode"
	done
	check_xfer "$la" 5000 "$sha_a"
	check_xfer "$lb" 5001 "$sha_b"
	echo "vm-preload: $v: $mib MiB verified each way (received and hashed, both at once: B to A in $(val "$la" secs '^IVMC-XFER') s, A to B in $(val "$lb" secs '^IVMC-XFER') s)"
	check_accel $v "$la"
	check_accel $v "$lb"
	check_slots $v
	full $v && check_stream_slots $v
	check_irq $v "$la"
	check_irq $v "$lb"
	check_idle $v 5003
done

# Round trips, the stream and the idle cost (main: interrupts; poll:
# polling), side by side; never asserted.
for v in main poll; do
	lb=$VM_TMP/$v-guest-b.log
	la=$VM_TMP/$v-guest-a.log
	p50=$(val "$lb" p50_us 'RESULT ping tcp-plain ')
	p99=$(val "$lb" p99_us 'RESULT ping tcp-plain ')
	i50=$(val "$lb" p50_us 'RESULT ping tcp-ivmc ')
	i99=$(val "$lb" p99_us 'RESULT ping tcp-ivmc ')
	if [ -z "$p50" ] || [ -z "$i50" ]; then
		fail "$v: a round-trip result is missing"
	fi
	e50=$(val "$lb" p50_us 'RESULT ping tcp-ivmc-poll ')
	e99=$(val "$lb" p99_us 'RESULT ping tcp-ivmc-poll ')
	n50=$(val "$lb" p50_us 'RESULT ping tcp-ivmc-nonap ')
	m50=$(val "$lb" p50_us 'RESULT ping tcp-ivmc-poll-nonap ')
	echo "vm-preload: $v: 64 B round trip over TCP between the guests, $rounds rounds, p50 / p99 us:" \
		"plain $p50 / $p99, under ivmc-run $i50 / $i99, under ivmc-run in poll() ${e50:-?} / ${e99:-?};" \
		"p50 with IVMC_POLL_BELL_US=0 (no naps before the interrupt): ${n50:-?}, in poll() ${m50:-?}" \
		"(accelerated only with ivmcd --guest: $guest_mode)"
	sp=$(val "$la" MiBps 'RESULT recv tcp-plain ')
	si=$(val "$la" MiBps 'RESULT recv tcp-ivmc ')
	if [ -z "$sp" ] || [ -z "$si" ]; then
		fail "$v: a stream result is missing"
	fi
	echo "vm-preload: $v: stream B to A $smib MiB: plain $sp MiB/s, under ivmc-run $si MiB/s" \
		"($(awk -v a="$si" -v b="$sp" 'BEGIN { printf "%.2fx", a / b }'); receiver's rate from its first byte, every byte checked;" \
		"accelerated only with ivmcd --guest: $guest_mode)"
done
idl() { sed -n "s/^vm-preload: IDLE $1 $2 .*$3=\([0-9.]*\).*/\1/p" "$VM_TMP/idle"; }
echo "vm-preload: idle connection, A's socat blocked reading it, host CPU over $idle s, % of one core (guest A / guest B):" \
	"accelerated, asleep on the interrupt (main) $(idl main cap=default a_pct) / $(idl main cap=default b_pct);" \
	"accelerated, polling with the default nap caps (poll: 1 ms; idle: an eighth of the wait, up to 100 ms) $(idl poll cap=default a_pct) / $(idl poll cap=default b_pct);" \
	"plain TCP (deny) $(idl deny cap=default a_pct) / $(idl deny cap=default b_pct)"
[ "$guest_mode" = yes ] &&
	echo "vm-preload: kill: from the SIGKILL of guest-b's QEMU to the end of guest-a's receiving socat: $live_ms ms"
exit 0
