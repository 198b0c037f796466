#!/bin/sh
# SPDX-License-Identifier: MIT
# shellcheck shell=dash
#
# Description: the guest side of vm-preload (busybox sh in the initramfs,
# run as /init's steps: "ivmc.run=sh,/bin/vm-preload-guest.sh,CMD,ARG...").
# Starts the guest ivmcd, moves data with socat under ivmc-run both ways,
# times round trips plain and under ivmc-run, and says what the daemon
# saw. The host reads the console; the lines it parses start with IVMC-.
#
#   daemon [poll]          start "ivmcd -f --guest [--poll]" in the background (a
#                          build without --guest exits with its usage:
#                          the clients then stay on TCP); wait until it
#                          answers or has exited; with a peer VM listed,
#                          until the daemons' link is up.
#                          IVMC-DAEMON: guest_mode=yes|no running=yes|no
#                          IVMC-LINK: up|down|none
#   xfer PEER BYTES RPORT RSEED SPORT SSEED
#                          at once: receive BYTES on RPORT (checked against
#                          "vm-chan gen BYTES RSEED") and send "vm-chan gen
#                          BYTES SSEED" to PEER:SPORT, both through socat
#                          under ivmc-run.
#                          IVMC-XFER: port= seed= bytes= got= want= rest=
#                          verdict=ok|bad, and IVMC-ACCEL: when=during ...
#   rtt-pong PORT K        vm-chan-dyn tcp-pong, plain on PORT, then under
#                          ivmc-run on PORT+1
#   rtt-ping ADDR PORT K   the other end; RESULT ping tcp-plain / tcp-ivmc
#   stream-recv PORT BYTES vm-chan-dyn tcp-recv of one stream of BYTES,
#                          every byte checked, plain on PORT, then under
#                          ivmc-run on PORT+1 (its preload's log a file of
#                          its own). RESULT recv tcp-plain / tcp-ivmc, the
#                          rate from the first byte.
#                          IVMC-STREAM: start|end mode=plain|ivmc port=
#   stream-send PEER PORT BYTES
#                          the other end: vm-chan-dyn tcp-send, plain,
#                          then under ivmc-run. RESULT send tcp-plain /
#                          tcp-ivmc
#   idle-recv PORT CAP     an idle connection, the reader blocked on it:
#                          socat -u TCP-LISTEN:PORT STDOUT under ivmc-run
#                          (CAP: -, a number for IVMC_POLL_MAX_US, or
#                          NAME=VALUE for the environment) into
#                          idle-child, which takes the sender's three
#                          preamble bytes, says whether socat's end is on
#                          the channel (its preload's log), then counts the
#                          rest until the sender closes.
#                          IVMC-IDLE: start port= cap= attached=yes|no
#                          IVMC-IDLE: end port= rest=
#   idle-send PEER PORT HOLD CAP
#                          the other end: once connected, a preamble of one
#                          byte three times, half a second apart (the first
#                          read after the daemon's answer moves the reader
#                          onto the channel), then nothing for HOLD
#                          seconds, then end of stream
#   live-recv PORT SEED    socat -u TCP-LISTEN:PORT STDOUT under ivmc-run
#                          into "vm-chan check SEED" (progress lines), until
#                          socat ends; then what the daemon said of the
#                          peer.  IVMC-LIVE: port= socat_rc= check_rc=
#                          and IVMC-GONE: the daemon's log line, or none
#   live-send PEER PORT SEED
#                          "vm-chan gen" of 1 TiB (no end in practice) into
#                          socat -u under ivmc-run, to PEER:PORT; the host
#                          kills this VM mid-stream
#   status                 ivmcctl status, IVMC-ACCEL: when=end ..., and
#                          the daemon's and the preload's logs
#
# The receiver checks everything while the connection is still open: the
# data arrive through socat's standard output (this script's recv-child,
# fed by a pipe), which reads exactly BYTES, hashes them, samples the daemon's status, then writes an
# acknowledgement back on the connection. The sender holds its side open
# until that acknowledgement has come, so "during" really is during, with
# no sleep to guess, and the bytes after BYTES (there must be none) are
# counted until the sender closes.

set -u
self=$0
export PATH=/bin
# The daemon under test is the one "daemon" starts: ivmc-run would
# otherwise start a host-mode ivmcd when none answers.
export IVMC_AUTOSTART=0
export IVMC_LOG=info IVMC_LOG_FILE=/tmp/preload.log

say() { echo "vm-preload: $*"; }
now() { cut -d' ' -f1 /proc/uptime; }

# alive PID: running, not a zombie (busybox sh reaps late)
alive() {
	[ -r "/proc/$1/stat" ] && ! grep -q ') Z ' "/proc/$1/stat" 2> /dev/null
}

# wait_file FILE TENTHS: until FILE is not empty, TENTHS/10 s at most
wait_file() {
	i=0
	while [ ! -s "$1" ] && [ "$i" -lt "$2" ]; do
		sleep 0.1
		i=$((i + 1))
	done
	[ -s "$1" ]
}

# dump: what the daemon, socat and the preload wrote (on a failure, and at
# the end)
dump() {
	for f in /tmp/ivmcd.out /tmp/ivmcd.log /tmp/socat-*.log /tmp/preload.log; do
		[ -s "$f" ] || continue
		# an ivmcd that never ran: its usage was shown once already
		[ "$f" = /tmp/ivmcd.out ] && [ -e /tmp/ivmcd.never ] && continue
		say "---- $f (last 30 lines)"
		tail -n 30 "$f" | sed 's/^/  | /'
	done
}

die() {
	say "FAIL: $*"
	dump
	exit 1
}

# accel WHEN: one line from "ivmcctl --json status". channels: the
# daemon's count of channels open now; listed: the channel objects in its
# list; paired: pairs made since it started; ring_bytes: bytes through the
# listed channels' rings (each direction mod 2^32, added up). status.c
# writes a fixed shape, so grep does (no JSON parser in busybox).
accel() {
	if ! j=$(ivmcctl --json status 2> /dev/null); then
		echo "IVMC-ACCEL: when=$1 daemon=down channels=0 listed=0 paired=0 ring_bytes=0"
		return
	fi
	ch=$(echo "$j" | grep -o '"channels":[0-9]*' | head -n 1 | cut -d: -f2)
	ls=$(echo "$j" | grep -o '"rule_line":' | wc -l)
	pr=$(echo "$j" | grep -o '"paired":[0-9]*' | head -n 1 | cut -d: -f2)
	rb=$(echo "$j" | grep -o '"ring_bytes_mod32":[0-9]*' | cut -d: -f2 |
		awk '{ s += $1 } END { printf "%.0f", s }')
	echo "IVMC-ACCEL: when=$1 daemon=up channels=${ch:-?} listed=$ls paired=${pr:-?} ring_bytes=${rb:-0}"
}

# wait_link: when the guest daemon lists a peer VM ("guest":{"pairs":[
# {"peer":...,"link":...}]}), wait until the daemons' link is up (30 s at
# most), so that the first connection does not race it: the peer's daemon
# starts at about the same time in its own guest. No peer listed (pair
# denied), or a daemon that says nothing of pairs: no wait.
wait_link() {
	i=0
	link=none
	while [ $i -lt 300 ]; do
		j=$(ivmcctl --json status 2> /dev/null)
		case "$j" in
		*'"link":true'*)
			link=up
			break
			;;
		*'"peer":'*) link=down ;;
		*) break ;;
		esac
		sleep 0.1
		i=$((i + 1))
	done
	echo "IVMC-LINK: $link (after $i tenths of a second)"
}

cmd_daemon() {
	guest=no
	ivmcd --help 2>&1 | grep -q -- '--guest' && guest=yes
	poll=
	[ "${1:-}" = poll ] && poll=--poll
	# shellcheck disable=SC2086 # empty or one word
	ivmcd -f --guest $poll -l debug -L /tmp/ivmcd.log > /tmp/ivmcd.out 2>&1 &
	pid=$!
	up=no
	i=0
	while [ $i -lt 300 ]; do
		if ivmcctl status > /dev/null 2>&1; then
			up=yes
			break
		fi
		alive "$pid" || break
		sleep 0.1
		i=$((i + 1))
	done
	echo "IVMC-DAEMON: guest_mode=$guest running=$up pid=$pid"
	[ $up = yes ] && [ $guest = yes ] && wait_link
	if [ $up = no ]; then
		touch /tmp/ivmcd.never
		say "ivmcd --guest is not running: $(head -n 1 /tmp/ivmcd.out)"
		# Without --guest that is the expected fallback: TCP all along.
		[ $guest = no ] || die "ivmcd --guest did not answer within 30 s"
	fi
	return 0
}

# recv-child BYTES SEED PORT: standard input and output are the receiving
# socat's (what the connection brings, and what goes back on it). Results
# go to /tmp/xfer.PORT*.
cmd_recv_child() {
	unset LD_PRELOAD
	bytes=$1 seed=$2 out=/tmp/xfer.$3
	t0=$(now)
	got=$(dd bs=65536 count=$((bytes / 65536)) iflag=fullblock 2> /dev/null |
		sha256sum | cut -d' ' -f1)
	t1=$(now)
	# The sender holds the connection open until our acknowledgement.
	accel during > "$out.accel"
	ivmcctl status > "$out.status" 2>&1
	echo "ack $got"
	rest=$(wc -c | tr -d ' ') # until the sender closes: must be 0
	want=$(vm-chan gen "$bytes" "$seed" | sha256sum | cut -d' ' -f1)
	echo "port=$3 seed=$seed bytes=$bytes got=$got want=$want rest=$rest" \
		"secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')" > "$out"
}

cmd_xfer() {
	peer=$1 bytes=$2 rport=$3 rseed=$4 sport=$5 sseed=$6
	rm -f "/tmp/xfer.$rport"* "/tmp/ack.$sport"
	# The receiving socat relays between the connection and its standard
	# input and output, a fifo and a pipe to recv-child: no process it
	# starts inherits the socket (an EXEC: address would, and the
	# preload then moves the connection back to TCP for good before the
	# exec, as it must).
	rm -f "/tmp/ackfifo.$rport"
	mkfifo "/tmp/ackfifo.$rport" || die "mkfifo"
	ivmc-run socat -t 10 "TCP-LISTEN:$rport,reuseaddr" STDIO \
		< "/tmp/ackfifo.$rport" 2> "/tmp/socat-recv-$rport.log" |
		sh "$self" recv-child "$bytes" "$rseed" "$rport" > "/tmp/ackfifo.$rport" &
	rpid=$!
	say "receiving $bytes bytes on port $rport; sending $bytes to $peer:$sport"
	# The sender's input: the data, then nothing until the receiver's
	# acknowledgement (120 s at most); then end of stream. The feeder
	# waits for the file socat writes, on purpose.
	# shellcheck disable=SC2094
	{
		vm-chan gen "$bytes" "$sseed"
		wait_file "/tmp/ack.$sport" 1200
	} | ivmc-run socat -t 10 - "TCP:$peer:$sport,retry=300,interval=0.2" \
		> "/tmp/ack.$sport" 2> "/tmp/socat-send-$sport.log"
	src=$?
	say "sent to $peer:$sport (socat exit $src), acknowledged: $(cat "/tmp/ack.$sport" 2> /dev/null)"
	wait $rpid
	rrc=$?
	[ -s "/tmp/xfer.$rport" ] || die "port $rport: the receiver left no result (socat exit $rrc)"
	sed "s/^/  during, port $rport: /" "/tmp/xfer.$rport.status" 2> /dev/null
	cat "/tmp/xfer.$rport.accel"
	r=$(cat "/tmp/xfer.$rport")
	got=${r#* got=}
	got=${got%% *}
	want=${r#* want=}
	want=${want%% *}
	rest=${r#* rest=}
	rest=${rest%% *}
	verdict=bad
	[ -n "$got" ] && [ "$got" = "$want" ] && [ "$rest" = 0 ] && verdict=ok
	echo "IVMC-XFER: $r verdict=$verdict"
	[ $verdict = ok ] || die "port $rport: data not as sent"
	[ $src -eq 0 ] || die "socat sending to $peer:$sport: exit $src"
	[ $rrc -eq 0 ] || die "socat receiving on $rport: exit $rrc"
	case "$(cat "/tmp/ack.$sport")" in
	"ack "*) ;;
	*) die "no acknowledgement from $peer:$sport" ;;
	esac
}

# established PORT: a TCP connection from or to PORT is established
# (/proc/net/tcp: addresses as HEXIP:HEXPORT, state 01).
established() {
	awk -v p=":$(printf '%04X' "$1")" 'NR > 1 && $4 == "01" &&
		(substr($2, length($2) - 4) == p || substr($3, length($3) - 4) == p) { f = 1 }
		END { exit !f }' /proc/net/tcp
}

# idle-child PORT CAP: standard input is the idle receiving socat's output.
cmd_idle_child() {
	pre=$(dd bs=1 count=3 2> /dev/null)
	# The preload says "on the channel" when socat's end attaches: at a
	# read or poll after the daemon's answer, so by the preamble's last
	# byte unless the pairing took a second (the line may trail that
	# byte by a moment: half a second, not more, as B's hold runs).
	att=no
	i=0
	while [ $i -lt 5 ]; do
		grep -q 'on the channel' "/tmp/preload-idle-$1.log" 2> /dev/null && att=yes && break
		sleep 0.1
		i=$((i + 1))
	done
	echo "IVMC-IDLE: start port=$1 cap=$2 preamble=$pre attached=$att at=$(now)"
	rest=$(wc -c | tr -d ' ')
	echo "IVMC-IDLE: end port=$1 rest=$rest at=$(now)"
}

# cap_env CAP: - (defaults), a number (IVMC_POLL_MAX_US), or NAME=VALUE.
cap_env() {
	case "$1" in
	-) ;;
	*=*) export "${1?}" ;;
	*) export IVMC_POLL_MAX_US="$1" ;;
	esac
}

cmd_idle_recv() {
	port=$1
	cap_env "$2"
	say "idle connection on port $port (IVMC_POLL_MAX_US=${IVMC_POLL_MAX_US:-default}, IVMC_POLL_IDLE_US=${IVMC_POLL_IDLE_US:-default})"
	set -o pipefail
	IVMC_LOG=debug IVMC_LOG_FILE="/tmp/preload-idle-$port.log" \
		ivmc-run socat -u "TCP-LISTEN:$port,reuseaddr" STDOUT \
		2> "/tmp/socat-idle-$port.log" |
		sh "$self" idle-child "$port" "$2" ||
		die "idle receiver on port $port: socat or idle-child failed"
}

cmd_idle_send() {
	peer=$1 port=$2 hold=$3
	cap_env "$4"
	{
		i=0
		while ! established "$port" && [ $i -lt 600 ]; do
			sleep 0.1
			i=$((i + 1))
		done
		for b in a b c; do
			printf %s $b
			sleep 0.5
		done
		sleep "$hold"
	} | ivmc-run socat -u - "TCP:$peer:$port,retry=300,interval=0.2" \
		2> "/tmp/socat-idle-send-$port.log" ||
		die "idle sender to $peer:$port: socat exit $?"
	say "idle connection to $peer:$port held $hold s, closed"
}

# live-recv PORT SEED: until socat ends, which only the peer's end (or its
# VM's) can bring about.
cmd_live_recv() {
	port=$1
	say "receiving the endless stream $2 on port $port"
	{
		ivmc-run socat -u "TCP-LISTEN:$port,reuseaddr" STDOUT \
			2> "/tmp/socat-live-$port.log"
		echo $? > "/tmp/live.$port.rc"
	} | vm-chan check "$2"
	crc=$?
	echo "IVMC-LIVE: port=$port socat_rc=$(cat "/tmp/live.$port.rc") check_rc=$crc at=$(now)"
	g=$(grep -a 'the peer VM is gone' /tmp/ivmcd.log | head -n 1)
	echo "IVMC-GONE: ${g:-none}"
	[ -s "/tmp/socat-live-$port.log" ] && sed 's/^/  socat | /' "/tmp/socat-live-$port.log"
	[ $crc -eq 0 ] || die "port $port: the stream did not verify"
}

cmd_live_send() {
	say "sending the endless stream $3 to $1:$2 until this VM is killed"
	vm-chan gen 1099511627776 "$3" |
		ivmc-run socat -u - "TCP:$1:$2,retry=300,interval=0.2" \
			2> "/tmp/socat-live-send.log"
	die "the endless sender ended: $(tail -n 3 /tmp/socat-live-send.log)"
}

# label vm-chan's result lines (ping, send, recv): tcp-plain or tcp-ivmc
label() { sed "s/RESULT \([a-z]*\) tcp /RESULT \1 $1 /"; }

cmd_rtt_pong() {
	vm-chan-dyn tcp-pong "$1" "$2" || die "tcp-pong (plain) on $1"
	ivmc-run vm-chan-dyn tcp-pong $(($1 + 1)) "$2" || die "tcp-pong (ivmc-run) on $(($1 + 1))"
	ivmc-run vm-chan-dyn tcp-pong-poll $(($1 + 2)) "$2" ||
		die "tcp-pong-poll (ivmc-run) on $(($1 + 2))"
	IVMC_POLL_BELL_US=0 ivmc-run vm-chan-dyn tcp-pong $(($1 + 3)) "$2" ||
		die "tcp-pong (ivmc-run, no naps) on $(($1 + 3))"
	IVMC_POLL_BELL_US=0 ivmc-run vm-chan-dyn tcp-pong-poll $(($1 + 4)) "$2" ||
		die "tcp-pong-poll (ivmc-run, no naps) on $(($1 + 4))"
}

cmd_rtt_ping() {
	set -o pipefail
	vm-chan-dyn tcp-ping "$1" "$2" "$3" | label tcp-plain ||
		die "tcp-ping (plain) to $1:$2"
	ivmc-run vm-chan-dyn tcp-ping "$1" $(($2 + 1)) "$3" | label tcp-ivmc ||
		die "tcp-ping (ivmc-run) to $1:$(($2 + 1))"
	# Both ends in poll() before each receive, as an event loop waits.
	ivmc-run vm-chan-dyn tcp-ping-poll "$1" $(($2 + 2)) "$3" |
		label tcp-ivmc-poll ||
		die "tcp-ping-poll (ivmc-run) to $1:$(($2 + 2))"
	# The same two with no naps before the interrupt (both ends).
	IVMC_POLL_BELL_US=0 ivmc-run vm-chan-dyn tcp-ping "$1" $(($2 + 3)) "$3" |
		label tcp-ivmc-nonap ||
		die "tcp-ping (ivmc-run, no naps) to $1:$(($2 + 3))"
	IVMC_POLL_BELL_US=0 ivmc-run vm-chan-dyn tcp-ping-poll "$1" $(($2 + 4)) "$3" |
		label tcp-ivmc-poll-nonap ||
		die "tcp-ping-poll (ivmc-run, no naps) to $1:$(($2 + 4))"
}

# stream-recv PORT BYTES: the host reads the IVMC-STREAM lines to know
# when the accelerated stream ran (its look at the pair region's slots).
cmd_stream_recv() {
	port=$1 bytes=$2 p=$(($1 + 1))
	set -o pipefail
	echo "IVMC-STREAM: start mode=plain port=$port bytes=$bytes at=$(now)"
	vm-chan-dyn tcp-recv "$port" "$bytes" | label tcp-plain ||
		die "tcp-recv (plain) on $port"
	echo "IVMC-STREAM: end mode=plain port=$port at=$(now)"
	echo "IVMC-STREAM: start mode=ivmc port=$p bytes=$bytes at=$(now)"
	IVMC_LOG=debug IVMC_LOG_FILE="/tmp/preload-stream-$p.log" \
		ivmc-run vm-chan-dyn tcp-recv "$p" "$bytes" | label tcp-ivmc ||
		die "tcp-recv (ivmc-run) on $p"
	att=no
	grep -q 'on the channel' "/tmp/preload-stream-$p.log" && att=yes
	echo "IVMC-STREAM: end mode=ivmc port=$p attached=$att at=$(now)"
	sed 's/^/  stream preload | /' "/tmp/preload-stream-$p.log"
}

cmd_stream_send() {
	set -o pipefail
	vm-chan-dyn tcp-send "$1" "$2" "$3" | label tcp-plain ||
		die "tcp-send (plain) to $1:$2"
	ivmc-run vm-chan-dyn tcp-send "$1" $(($2 + 1)) "$3" | label tcp-ivmc ||
		die "tcp-send (ivmc-run) to $1:$(($2 + 1))"
}

cmd_status() {
	say "ivmcctl status at the end:"
	ivmcctl status 2>&1 | sed 's/^/  | /'
	# The pair's interrupts: vectors ours and the peer's, slots per side
	# that have one, connections that had one.
	j=$(ivmcctl --json status 2> /dev/null)
	irq=
	for k in vectors peer_vectors irq_slots irq_conns; do
		irq="$irq $k=$(echo "$j" | sed -n "s/.*\"$k\":\([0-9]*\).*/\1/p")"
	done
	echo "IVMC-IRQ:$irq"
	accel end
	dump
}

cmd=${1:-}
[ $# -gt 0 ] && shift
case "$cmd" in
daemon) cmd_daemon "$@" ;;
recv-child) cmd_recv_child "$@" ;;
xfer) cmd_xfer "$@" ;;
rtt-pong) cmd_rtt_pong "$@" ;;
rtt-ping) cmd_rtt_ping "$@" ;;
stream-recv) cmd_stream_recv "$@" ;;
stream-send) cmd_stream_send "$@" ;;
idle-recv) cmd_idle_recv "$@" ;;
idle-child) cmd_idle_child "$@" ;;
idle-send) cmd_idle_send "$@" ;;
live-recv) cmd_live_recv "$@" ;;
live-send) cmd_live_send "$@" ;;
status) cmd_status ;;
*)
	echo "usage: $self daemon | xfer PEER BYTES RPORT RSEED SPORT SSEED |" \
		"rtt-pong PORT K | rtt-ping ADDR PORT K |" \
		"stream-recv PORT BYTES | stream-send PEER PORT BYTES | idle-recv PORT CAP |" \
		"idle-send PEER PORT HOLD CAP | live-recv PORT SEED |" \
		"live-send PEER PORT SEED | status" >&2
	exit 2
	;;
esac
