#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# Description: without a working ivmcd, programs under ivmc-run work
# exactly as on TCP (issue 4, DESIGN.md invariant 3). A socat server and
# client, both under ivmc-run on 127.0.0.1, send each other 64 MiB of
# random bytes over one connection (the client in two halves, the second
# once told), sha256 checked at both ends, the whole within 20 s:
#   no daemon: IVMC_SOCKET names a path where nothing listens and
#     IVMC_AUTOSTART=0: data intact, nothing created at that path;
#   (last) no daemon, IVMC_AUTOSTART left to ivmc-run (which turns it on): data
#     intact, and the ivmcd the library starts holds none of the programs'
#     pipes or sockets;
#   daemon stopped (SIGSTOP) before the connection is made: data intact
#     within the bound; once continued, the daemon still answers and lists
#     no channel left behind;
#   daemon killed (SIGKILL) while the connection is on a channel, between
#     the client's two halves: the second half still arrives intact.
# With IVMC_PLAIN=1 nothing runs under ivmc-run.

# shellcheck disable=SC2119 # optional arguments of free_port, pl_daemon_start
# preload-lib.bash is beside this script, in tests/ and in the build's
# tests/ (make copies it there).
# shellcheck source=tests/preload-lib.bash
. "$(dirname "$0")/preload-lib.bash" || exit 1

pl_init
pl_need_cmd socat
pl_need_preload

MIB=64
long && MIB=256
BYTES=$((MIB * 1024 * 1024))
HALF=$((BYTES / 2))
LIMIT=20 # seconds for one whole transfer
rand_file "$PL_DIR/c.bin" "$MIB"
rand_file "$PL_DIR/s.bin" "$MIB"
SHA_C=$(sha_of "$PL_DIR/c.bin")
SHA_S=$(sha_of "$PL_DIR/s.bin")

# The client's input: the first half of its file, then (once GO exists,
# 30 s at most) the second half.
feed() { # FILE GO
	local i
	head -c "$HALF" "$1"
	for ((i = 0; i < 600; i++)); do
		[ -e "$2" ] && break
		sleep 0.05
	done
	tail -c +$((HALF + 1)) "$1"
}

# xfer NAME [ACTION]: one connection, both ends under ivmc-run; ACTION
# (a command) runs once the server's file has arrived and the server has
# the client's first half, before the client sends its second half.
xfer() {
	local name=$1 action=${2:-} d=$PL_DIR/$1 port spid cpid rc t0 t1 got ms
	rm -f "$d".*
	port=$(free_port)
	say "== $name: $MIB MiB each way${action:+, then $action}"
	t0=$(date +%s%N)
	bg_ivmc socat -T 20 -t 30 "TCP-LISTEN:$port,bind=127.0.0.1,reuseaddr" STDIO \
		< "$PL_DIR/s.bin" > >(tee "$d.srv.recv" | sha256sum > "$d.srv.got") \
		2> "$d.srv.log"
	spid=$PL_LAST_PID
	wait_port 127.0.0.1 "$port"
	bg_ivmc socat -T 20 -t 30 "TCP:127.0.0.1:$port" STDIO \
		< <(feed "$PL_DIR/c.bin" "$d.go") \
		> >(tee "$d.cli.recv" | sha256sum > "$d.cli.got") 2> "$d.cli.log"
	cpid=$PL_LAST_PID
	wait_until "$LIMIT" got_all_or_exited "$d.cli.recv" "$BYTES" "$cpid" ||
		fail "$name: the client has $(file_size "$d.cli.recv") of the server's $BYTES bytes after $LIMIT s"
	wait_until "$LIMIT" size_is "$d.srv.recv" "$HALF" ||
		fail "$name: the server has $(file_size "$d.srv.recv") of the client's first $HALF bytes after $LIMIT s"
	if [ -n "$action" ]; then
		$action "$name"
	fi
	touch "$d.go"
	rc=0
	wait_exit "$cpid" "$LIMIT" || rc=$?
	[ $rc -eq 0 ] || fail "$name: client socat exited $rc (124: still running after $LIMIT s)"
	rc=0
	wait_exit "$spid" "$LIMIT" || rc=$?
	[ $rc -eq 0 ] || fail "$name: server socat exited $rc (124: still running after $LIMIT s)"
	t1=$(date +%s%N)
	ms=$(((t1 - t0) / 1000000))
	size_is "$d.cli.recv" "$BYTES" || {
		wait_exit "$cpid" 1
		fail "$name: the client exited (status $?) with $(file_size "$d.cli.recv") of the server's $BYTES bytes"
	}
	wait_until 10 test -s "$d.cli.got" || fail "$name: no hash at the client"
	wait_until 10 test -s "$d.srv.got" || fail "$name: no hash at the server"
	got=$(cut -d' ' -f1 "$d.cli.got")
	[ "$got" = "$SHA_S" ] ||
		fail "$name: server->client data differ ($(file_size "$d.cli.recv") bytes, sha256 $got, sent $SHA_S)"
	got=$(cut -d' ' -f1 "$d.srv.got")
	[ "$got" = "$SHA_C" ] ||
		fail "$name: client->server data differ ($(file_size "$d.srv.recv") bytes, sha256 $got, sent $SHA_C)"
	[ "$ms" -le $((LIMIT * 1000)) ] || fail "$name: took $ms ms, over $LIMIT s"
	rm -f "$d.cli.recv" "$d.srv.recv"
	say "$name: ok, data intact both ways in $ms ms"
}

# ---- 1: no daemon at all -----------------------------------------------------
# (ivmc-run sets IVMC_AUTOSTART=1 unless it is set: 0 keeps it off)
export IVMC_SOCKET=$PL_DIR/none/ivmcd.sock
export IVMC_AUTOSTART=0
PL_AUTOSOCKS+=("$IVMC_SOCKET")
xfer no-daemon
[ ! -e "$PL_DIR/none" ] || fail "no-daemon: something was created at $PL_DIR/none: $(ls -la "$PL_DIR/none")"

# ---- 2: a stopped daemon -----------------------------------------------------------
pl_daemon_start
kill -STOP "$PL_DPID"
say "ivmcd $PL_DPID stopped"
xfer stopped-daemon
kill -CONT "$PL_DPID"
say "ivmcd $PL_DPID continued"
wait_until 5 test "$(accel_count)" -ge 0 || fail "ivmcd does not answer after SIGCONT"
# What it was sent while stopped may pair ends already closed: those
# channels must go once it has looked (5 s at most).
wait_until 5 test "$(accel_count)" -eq 0 ||
	fail "stopped-daemon: $(accel_count) channels left after the connection closed ($(accel_summary))"
say "after SIGCONT: $(accel_summary)"
pl_alive "$PL_DPID" || fail "ivmcd died after SIGCONT"

# ---- 3: the daemon killed under an accelerated connection ------------------------
kill_daemon() {
	local n
	n=$(accel_count)
	say "$1: before the kill: $(accel_summary)"
	if ! plain; then
		[ "$n" -ge 1 ] || fail "$1: no channel listed while both ends run under ivmc-run"
	fi
	kill -KILL "$PL_DPID"
	wait "$PL_DPID" 2> /dev/null
	PL_DPID=
	say "$1: ivmcd killed"
}
xfer killed-daemon kill_daemon

# ---- 4: no daemon, and ivmc-run's default: the library starts one ----------
# fd_inodes PID...: the pipe and socket inodes the processes hold
fd_inodes() {
	local p
	for p in "$@"; do
		find "/proc/$p/fd" -mindepth 1 -maxdepth 1 -printf '%l\n' 2> /dev/null
	done | grep -E '^(pipe|socket):' | sort -u
}

# kind: "pipe:[N]" or "socket:[N] (tcp|unix|other)" for each line read
kind() {
	local l i
	while read -r l; do
		i=${l#*[}
		i=${i%]}
		case $l in
		socket:*)
			if awk -v i="$i" '$10 == i { f = 1 } END { exit !f }' /proc/net/tcp /proc/net/tcp6; then
				l="$l(tcp)"
			elif awk -v i="$i" '$7 == i { f = 1 } END { exit !f }' /proc/net/unix; then
				l="$l(unix)"
			fi
			;;
		esac
		echo "$l"
	done
}

# The daemon must hold none of the programs' pipes and sockets (those
# the test shell itself holds, inherited from whoever started it, aside):
# a held pipe end keeps the reader from ever seeing EOF, a held socket
# keeps a port or a connection open after the program has closed it.
check_autostart() {
	local name=$1 pids ours mine leaked p
	plain && return 0
	wait_until 5 test -n "$(daemons_at "$IVMC_SOCKET")" ||
		fail "$name: no ivmcd started on $IVMC_SOCKET 5 s into the connection"
	pids=$(daemons_at "$IVMC_SOCKET" | paste -sd' ' -)
	mine=$(fd_inodes $$ $BASHPID)
	# spid and cpid: xfer's (bash scoping is dynamic)
	ours=$(fd_inodes "$spid" "$cpid" | comm -23 - <(echo "$mine"))
	for p in $pids; do
		leaked=$(fd_inodes "$p" | comm -12 - <(echo "$ours") | kind | paste -sd' ' -)
		say "$name: ivmcd $p started by the library; fds: $(find "/proc/$p/fd" -mindepth 1 -maxdepth 1 -printf '%f->%l ' 2> /dev/null)"
		[ -z "$leaked" ] ||
			fail "$name: the ivmcd the library started (pid $p) holds the programs' $leaked (inherited through posix_spawn: no file actions closing fds >= 3)"
	done
}

unset IVMC_AUTOSTART
export IVMC_SOCKET=$PL_DIR/auto/ivmcd.sock
PL_AUTOSOCKS+=("$IVMC_SOCKET")
xfer autostart check_autostart

say "all runs passed"
