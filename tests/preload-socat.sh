#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# Description: socat under ivmc-run (issue 4, transparent preload). One TCP
# connection carries a 64 MiB random file each way at once (256 MiB with
# IVMC_LONG=1): the server is `socat TCP-LISTEN STDIO` and the client
# `socat TCP STDIO`, each sending its own file and hashing what it
# receives (sha256 compared with the other end's file). The client
# keeps its sending direction open until told, so the connection is still
# there when `ivmcctl --json status` is read. Four runs:
#   same namespace, both ends under ivmc-run: a channel listed, bytes
#     through its rings, the daemon's pair counter up by one;
#   across two network namespaces joined by a veth pair, both under
#     ivmc-run: the same;
#   server under ivmc-run, client plain, and the reverse: data intact, no
#     channel, no pair.
# With IVMC_PLAIN=1 nothing runs under ivmc-run and only the data is checked.

# shellcheck disable=SC2119 # optional arguments of free_port, pl_daemon_start
# preload-lib.bash is beside this script, in tests/ and in the build's
# tests/ (make copies it there).
# shellcheck source=tests/preload-lib.bash
. "$(dirname "$0")/preload-lib.bash" || exit 1

pl_init
pl_need_cmd socat
pl_need_preload
pl_daemon_start

MIB=64
long && MIB=256
BYTES=$((MIB * 1024 * 1024))
rand_file "$PL_DIR/c.bin" "$MIB"
rand_file "$PL_DIR/s.bin" "$MIB"
SHA_C=$(sha_of "$PL_DIR/c.bin")
SHA_S=$(sha_of "$PL_DIR/s.bin")

# Each socat sends its standard input (the server: its file; the client: a
# pipe from a feeder that sends the file, then waits for the file GO, 30 s
# at most, before closing) and writes what it receives to its standard
# output, a pipe to sha256sum (the client's also through tee to a file,
# whose size says when the server's file has arrived). socat shuts the TCP direction down at the end
# of its input; the hash appears once the other direction has ended.
feed() { # FILE GO
	local i
	cat "$1"
	for ((i = 0; i < 600; i++)); do
		[ -e "$2" ] && break
		sleep 0.05
	done
}

# xfer NAME SERVER-MODE CLIENT-MODE SERVER-NS CLIENT-NS ADDR EXPECT
#   modes: ivmc or plain; NS: a namespace or ""; ADDR: where the server
#   listens and the client connects; EXPECT: accel or tcp
xfer() {
	local name=$1 smode=$2 cmode=$3 sns=$4 cns=$5 addr=$6 expect=$7
	local d=$PL_DIR/$name port p0 p1 n rb spid cpid rc t0 t1 got

	say "== $name: server $smode${sns:+ in $sns}, client $cmode${cns:+ in $cns}, $MIB MiB each way"
	port=$(free_port "$sns")
	p0=$(paired_count)
	rm -f "$d".*
	t0=$(date +%s%N)
	"bg_$smode" ${sns:+-n "$sns"} socat -T 20 -t 30 \
		"TCP-LISTEN:$port,bind=$addr,reuseaddr" STDIO \
		< "$PL_DIR/s.bin" > >(sha256sum > "$d.srv.got") 2> "$d.srv.log"
	spid=$PL_LAST_PID
	wait_port "$addr" "$port" "$sns"
	"bg_$cmode" ${cns:+-n "$cns"} socat -T 20 -t 30 "TCP:$addr:$port" STDIO \
		< <(feed "$PL_DIR/c.bin" "$d.go") \
		> >(tee "$d.cli.recv" | sha256sum > "$d.cli.got") \
		2> "$d.cli.log"
	cpid=$PL_LAST_PID

	# The connection is held open by the client's writer until $d.go;
	# look at it once the server's file has arrived whole.
	wait_until 30 got_all_or_exited "$d.cli.recv" "$BYTES" "$cpid" ||
		fail "$name: the client has received $(file_size "$d.cli.recv") of the server's $BYTES bytes after 30 s"
	size_is "$d.cli.recv" "$BYTES" || {
		wait_exit "$cpid" 1
		fail "$name: the client socat exited (status $?) with $(file_size "$d.cli.recv") of the server's $BYTES bytes"
	}
	n=$(accel_count)
	rb=$(ring_bytes)
	say "$name: while open: $(accel_summary)"
	if [ "$expect" = accel ] && ! plain; then
		[ "$n" -ge 1 ] || fail "$name: no channel listed while both ends run under ivmc-run"
		[ "$rb" -gt 0 ] || fail "$name: a channel, but no byte went through its rings"
		[ "$rb" -ge $((MIB * 1024 * 1024 / 2)) ] ||
			say "$name: note: only $rb bytes through the rings of $((2 * MIB)) MiB sent"
	fi
	if [ "$expect" = tcp ]; then
		[ "$n" -eq 0 ] || fail "$name: $n channel(s) listed though one end is plain TCP"
	fi
	touch "$d.go"
	wait_exit "$cpid" 30
	rc=$?
	[ $rc -eq 0 ] || fail "$name: client socat exited $rc (124: still running after 30 s)"
	wait_exit "$spid" 30
	rc=$?
	[ $rc -eq 0 ] || fail "$name: server socat exited $rc (124: still running after 30 s)"
	t1=$(date +%s%N)

	wait_until 10 test -s "$d.cli.got" ||
		fail "$name: no hash of what the client received 10 s after it exited"
	got=$(cut -d' ' -f1 "$d.cli.got")
	[ "$got" = "$SHA_S" ] || fail "$name: server->client data differ (sha256 $got, sent $SHA_S)"
	wait_until 10 test -s "$d.srv.got" ||
		fail "$name: no hash of what the server received 10 s after it exited"
	got=$(cut -d' ' -f1 "$d.srv.got")
	[ "$got" = "$SHA_C" ] || fail "$name: client->server data differ (sha256 ${got:-none}, sent $SHA_C)"

	p1=$(paired_count)
	pairs_expected "$name" "$expect" "$p0" "$p1"
	rm -f "$d.cli.recv"
	say "$name: ok, data intact both ways, $(((t1 - t0) / 1000000)) ms, pairs $p0 -> $p1"
}

xfer same ivmc ivmc "" "" 127.0.0.1 accel
xfer srv-only ivmc plain "" "" 127.0.0.1 tcp
xfer cli-only plain ivmc "" "" 127.0.0.1 tcp
netns_pair
xfer netns ivmc ivmc "$NS_B" "$NS_A" "$IP_B" accel
say "all runs passed"
