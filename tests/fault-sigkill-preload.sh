#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# Description: fault injection with unmodified programs under the preload
# (issue 5, faults; tests/fault-sigkill.c does the same on the native API).
# In a bounded loop (20 runs; 60 with IVMC_LONG=1) `socat -u OPEN:file
# TCP:...` under ivmc-run sends a 16 MiB random file to `socat -u
# TCP-LISTEN:... CREATE:recv` under ivmc-run, and at a random moment
# (seeded: IVMC_FAULT_SEED repeats the sequence) the sender, the receiver
# or ivmcd gets SIGKILL. Then: no survivor died of a signal or hung (each
# ends within 15 s); what the receiver wrote is exactly a prefix of the
# file (cmp), and all of it when only the daemon was killed (attached
# channels do not need it); a living ivmcd comes back to no channel, no
# registration, no client and the fd count it had after its first pair; a
# killed one is restarted on the same socket. The daemon's directory holds
# the same files at the end as at the start.

# shellcheck disable=SC2119 # optional arguments of free_port, pl_daemon_start
# shellcheck disable=SC2317 # daemon_idle is called through wait_until
# shellcheck source=tests/preload-lib.bash
. "$(dirname "$0")/preload-lib.bash" || exit 1

pl_init
pl_need_cmd socat
pl_need_preload
pl_daemon_start
# ivmc-run turns IVMC_AUTOSTART on unless set: the programs would start a
# daemon of their own on our socket when we kill ours (and one that
# escaped would be killed at exit).
export IVMC_AUTOSTART=0
PL_AUTOSOCKS+=("$IVMC_SOCKET")

RUNS=20
long && RUNS=60
MIB=16
SEED=${IVMC_FAULT_SEED:-$(((RANDOM << 15) | RANDOM))}
RANDOM=$SEED
DATA=$PL_DIR/data.bin
RECV=$PL_DIR/recv.bin
rand_file "$DATA" "$MIB"
SIZE=$(file_size "$DATA")
DMN_FDS= # the living daemon's fd count once it has served a pair
say "$RUNS runs, IVMC_FAULT_SEED=$SEED"

dmn_fds() { find "/proc/$PL_DPID/fd" -mindepth 1 -maxdepth 1 2> /dev/null | wc -l; }

# json_num KEY: the first "KEY":N of ivmcctl --json status (the daemon's)
json_num() { grep -o "\"$1\":[0-9]*" <<< "$J" | head -n 1 | cut -d: -f2; }

# daemon_idle: no channel, registration or client (but ivmcctl), and no
# more fds than after its first pair
daemon_idle() {
	J=$(status_json) || return 1
	[ "$(json_num channels)" = 0 ] && [ "$(json_num pending)" = 0 ] &&
		[ "$(json_num clients)" -le 1 ] &&
		{ [ -z "$DMN_FDS" ] || [ "$(dmn_fds)" -le "$DMN_FDS" ]; }
}

daemon_settle() { # WHAT
	if ! wait_until 3 daemon_idle; then
		ls -l "/proc/$PL_DPID/fd"
		fail "$1: ivmcd not idle 3 s after both ends are gone: $(dmn_fds) fds (${DMN_FDS:-?} before): $J"
	fi
	[ -n "$DMN_FDS" ] || DMN_FDS=$(dmn_fds)
}

# restart: the killed daemon is reaped, a new one serves the same socket
daemon_restart() {
	PL_DPID=
	DMN_FDS=
	pl_daemon_start
}

# pair: start the receiver, then the sender; SPID, CPID
pair() { # NAME
	local port
	port=$(free_port)
	rm -f "$RECV"
	bg_ivmc socat -u "TCP-LISTEN:$port,bind=127.0.0.1,reuseaddr" \
		"CREATE:$RECV" > "$PL_DIR/$1.server.log" 2>&1
	SPID=$PL_LAST_PID
	wait_port 127.0.0.1 "$port"
	bg_ivmc socat -u "OPEN:$DATA" "TCP:127.0.0.1:$port" \
		> "$PL_DIR/$1.client.log" 2>&1
	CPID=$PL_LAST_PID
}

# What a hung PID is doing: its threads' kernel stacks, its fds, and
# where it is in user space (gdb, when installed).
hang_report() { # PID
	local t
	echo "---- the hung process $1 ----"
	for t in /proc/"$1"/task/*; do
		echo "thread ${t##*/}: $(cat "$t/wchan" 2> /dev/null)"
		head -n 8 "$t/stack" 2> /dev/null
	done
	ls -l "/proc/$1/fd" 2> /dev/null
	grep -c memfd: "/proc/$1/maps" 2> /dev/null | sed 's/^/memfd mappings: /'
	command -v gdb > /dev/null 2>&1 &&
		timeout 20 gdb -p "$1" -batch -ex 'thread apply all bt' 2>&1 |
		grep -E '^(Thread|#)' | head -n 40
}

# accepted: wait (10 s at most, looking every ms or so) until the receiver
# has accepted the connection, i.e. created its file
accepted() {
	local i
	for ((i = 0; i < 5000; i++)); do
		[ -e "$RECV" ] && return 0
		sleep 0.001
	done
	[ -e "$RECV" ]
}

# ended NAME PID WHO: PID ended by itself within 15 s, not by a signal;
# its exit status in RC
ended() {
	local i
	for ((i = 0; i < 300; i++)); do
		pl_alive "$2" || break
		sleep 0.05
	done
	pl_alive "$2" && hang_report "$2"
	wait_exit "$2" 1
	RC=$?
	[ $RC -eq 124 ] && fail "$1: the $3 hung (killed after 15 s); $(accel_summary)"
	[ $RC -gt 128 ] && fail "$1: the $3 died of signal $((RC - 128)) (see $PL_DIR/$1.*.log)"
	return 0
}

# prefix NAME: the receiver wrote a prefix of the file (nothing at all if
# it was killed before it created it); its size in GOT
prefix() {
	GOT=$(file_size "$RECV")
	[ "$GOT" = 0 ] && return 0
	cmp -s -n "$GOT" "$RECV" "$DATA" ||
		fail "$1: the receiver's $GOT bytes are not a prefix of the file ($(cmp -n "$GOT" "$RECV" "$DATA" 2>&1 | head -n 1))"
}

# A clean transfer (also the daemon's warm-up): all of it, both exit 0,
# the daemon paired them. Sets CLEAN_MS to how long it took from the
# receiver's accept.
clean_run() {
	local t0 p0
	p0=$(paired_count)
	pair clean
	accepted || fail "clean run: no connection in 10 s"
	t0=$(date +%s%N)
	ended clean "$CPID" sender
	[ $RC -eq 0 ] || fail "clean run: the sender exited $RC"
	ended clean "$SPID" receiver
	[ $RC -eq 0 ] || fail "clean run: the receiver exited $RC"
	CLEAN_MS=$((($(date +%s%N) - t0) / 1000000))
	prefix clean
	[ "$GOT" = "$SIZE" ] || fail "clean run: $GOT of $SIZE bytes"
	pairs_expected "clean run" accel "$p0" "$(paired_count)"
	daemon_settle "clean run"
}

KILLS=(0 0 0)
LATE=0
PAIRED=0 # runs that killed an end whose connection the daemon had paired
NAMES=(sender receiver ivmcd)

fault_run() { # N
	local n=$1 v d name vpid late=0 t_kill t_end src rrc p0
	v=$((RANDOM % 3))
	d=$((RANDOM % (SPAN_MS * 2 / 3 + 1)))
	name="run $n (SIGKILL ${NAMES[$v]} at $d ms)"
	say "$name"
	[ $v -ne 2 ] && p0=$(paired_count)
	pair "run$n"
	case $v in
	0) vpid=$CPID ;;
	1) vpid=$SPID ;;
	2) vpid=$PL_DPID ;;
	esac
	# The delay counts from the receiver's accept (it then creates its
	# file): a sender killed before it connects would leave the receiver
	# waiting for a connection, as it should.
	accepted || fail "$name: no connection in 10 s"
	sleep "$(printf '0.%03d' "$d")"
	if kill -KILL "$vpid" 2> /dev/null; then
		# reaped at once, with bash's "Killed" notice muted
		{ wait "$vpid"; } 2> /dev/null
		RC=$?
	else
		wait "$vpid"
		RC=$?
	fi
	# It had finished (a run without a fault), or it died of the kill.
	if [ $RC -ne $((128 + 9)) ]; then
		late=1
		[ $RC -eq 0 ] || fail "$name: the ${NAMES[$v]} exited $RC before its kill"
	fi
	t_kill=$(date +%s%N)
	[ $v -ne 0 ] && { ended "$name" "$CPID" sender; src=$RC; }
	[ $v -ne 1 ] && { ended "$name" "$SPID" receiver; rrc=$RC; }
	t_end=$(date +%s%N)
	prefix "$name"
	if [ $v -eq 2 ]; then
		if [ "$GOT" != "$SIZE" ] || [ "$src" != 0 ] || [ "$rrc" != 0 ]; then
			fail "$name: only the daemon was killed, yet the receiver has $GOT of $SIZE bytes (sender exit $src, receiver exit $rrc)"
		fi
		daemon_restart
		clean_run
	else
		pl_alive "$PL_DPID" || fail "$name: ivmcd died"
		daemon_settle "$name"
		if [ "$(paired_count)" -gt "$p0" ]; then
			name="$name (paired)"
			PAIRED=$((PAIRED + 1 - late))
		fi
	fi
	KILLS[v]=$((KILLS[v] + 1))
	LATE=$((LATE + late))
	[ $late = 1 ] && name="$name (the victim had finished)"
	say "$name: received $GOT of $SIZE bytes; survivors done $(((t_end - t_kill) / 1000000)) ms after the kill"
}

# files: what is in the test's directory (the daemon's too), logs aside
files() {
	find "$PL_DIR" -mindepth 1 -maxdepth 1 ! -name '*.log' -printf '%f\n' |
		sort | paste -sd' ' -
}

BEFORE=$(files)
T0=$(date +%s%N)
clean_run
SPAN_MS=$CLEAN_MS
say "a clean transfer of $MIB MiB took $SPAN_MS ms"
for ((i = 0; i < RUNS; i++)); do
	fault_run "$i"
done
rm -f "$RECV"
AFTER=$(files)
[ "$BEFORE" = "$AFTER" ] || fail "files in $PL_DIR: [$BEFORE] at the start, [$AFTER] now"
say "fault-sigkill-preload: $RUNS runs in $((($(date +%s%N) - T0) / 1000000)) ms: SIGKILL to the sender ${KILLS[0]}, the receiver ${KILLS[1]}, ivmcd ${KILLS[2]}; $LATE victims had finished; $PAIRED end kills on a paired connection; ivmcd fds $DMN_FDS"
pl_daemon_stop
exit 0
