#!/bin/bash
# SPDX-License-Identifier: MIT
# Description: unmodified TCP programs, plain and under ivmc-run, side by
# side in one run: redis-benchmark -c 1 GET and SET, iperf3 single stream
# on loopback and across two network namespaces joined by a veth pair,
# sockperf 64-byte ping-pong, and idle connections (100 Python connections
# that exchanged a little, then sleep in select(): CPU, fds and memory of
# both processes, per connection); with --hog, redis and iperf3 again with two
# CPU burners running (one per core of this machine), ivmc vs plain under
# the same hog. Each case runs in rounds that alternate plain
# and ivmc (the order flips every round), so noise hits both modes; the
# report gives the median per mode and the ratio ivmc/plain. A private
# ivmcd is started for the run, and every ivmc round is checked against its
# pair counter: a round the daemon did not pair is reported as NOT
# accelerated and left out of the ivmc median.
#
# usage: bench/preload.sh [--quick] [--rounds N] [--only redis|iperf|sockperf|idle]
#                         [--json FILE] [--plain-only] [--hog]
# env:   IVMC_RUN, IVMCD, IVMCCTL: the tools (default: build/bin/...)
#        IVMC_BENCH_POLICY: lines added to ivmcd's policy (e.g. "ring_grow 0")
#        IVMC_PRELOAD: the library (build/lib/libivmc-preload.so); the four are
#        copied at the start, so a rebuild during the run does not change them
# Needs redis-server, redis-tools, iperf3, sockperf, jq and iproute2;
# installs the missing ones with apt-get when root. The veth cases need root.
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
top=$(dirname "$here")
IVMC_RUN=${IVMC_RUN:-$top/build/bin/ivmc-run}
IVMCD=${IVMCD:-$top/build/bin/ivmcd}
IVMCCTL=${IVMCCTL:-$top/build/bin/ivmcctl}
IVMC_PRELOAD=${IVMC_PRELOAD:-$top/build/lib/libivmc-preload.so}

preload_id=""
quick=0
rounds=3
only=all
json_out=
plain_only=0
hog=0
csuf= # appended to case names (the hog pass)
hog_pids=()

# usage [STATUS]: 0 prints on stdout (--help), else on stderr.
usage() {
	local rc=${1:-2}
	if [ "$rc" = 0 ]; then
		sed -n 's/^# \{0,1\}//; /^usage:/,/^Needs/p' "$0" | sed '$d'
	else
		sed -n 's/^# \{0,1\}//; /^usage:/,/^Needs/p' "$0" | sed '$d' >&2
	fi
	exit "$rc"
}

while [ $# -gt 0 ]; do
	case $1 in
	-q | --quick) quick=1 ;;
	--rounds)
		[ $# -ge 2 ] || usage
		rounds=$2
		shift
		;;
	--rounds=*) rounds=${1#*=} ;;
	--only)
		[ $# -ge 2 ] || usage
		only=$2
		shift
		;;
	--only=*) only=${1#*=} ;;
	--json)
		[ $# -ge 2 ] || usage
		json_out=$2
		shift
		;;
	--json=*) json_out=${1#*=} ;;
	--plain-only) plain_only=1 ;;
	--hog) hog=1 ;;
	-h | --help) usage 0 ;;
	*)
		echo "preload.sh: unknown option $1" >&2
		usage
		;;
	esac
	shift
done
case $rounds in
'' | *[!0-9]*) usage ;;
esac
if [ "$rounds" -lt 1 ] || [ "$rounds" -gt 99 ]; then
	echo "preload.sh: --rounds must be 1 to 99" >&2
	exit 2
fi
case $only in
all | redis | iperf | sockperf | idle) ;;
*) usage ;;
esac

# Per-case durations: redis seconds per test (sets -n), iperf3 -t, sockperf -t
# (sockperf leaves its first 400 ms out as warm-up).
if [ "$quick" = 1 ]; then
	redis_secs=1 iperf_secs=1 sockperf_secs=2 idle_secs=5
else
	redis_secs=5 iperf_secs=3 sockperf_secs=5 idle_secs=10
fi
idle_n=100

log() { echo "preload.sh: $*" >&2; }
want() { [ "$only" = all ] || [ "$only" = "$1" ]; }

# ---------------------------------------------------------------- deps
notes=()  # printed under the tables and kept in the JSON
have_sockperf=1 have_redis=1 have_iperf=1 have_netns=1

deps() {
	local -A pkg_of=([redis-server]=redis-server [redis-benchmark]=redis-tools
		[iperf3]=iperf3 [sockperf]=sockperf [jq]=jq [ip]=iproute2 [ss]=iproute2)
	local cmds=(jq ip ss) missing=() c p
	want redis && cmds+=(redis-server redis-benchmark)
	want iperf && cmds+=(iperf3)
	want sockperf && cmds+=(sockperf)
	for c in "${cmds[@]}"; do
		command -v "$c" >/dev/null || missing+=("${pkg_of[$c]}")
	done
	if [ ${#missing[@]} -gt 0 ] && [ "$(id -u)" -eq 0 ] &&
		command -v apt-get >/dev/null; then
		mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
		log "installing ${missing[*]}"
		export DEBIAN_FRONTEND=noninteractive
		apt-get update -qq >&2 || log "apt-get update failed"
		# One at a time, so that one missing package (sockperf is not in
		# every release) does not keep the others out.
		for p in "${missing[@]}"; do
			apt-get install -y -qq --no-install-recommends "$p" >&2 ||
				log "apt-get install $p failed"
		done
	fi
	for c in jq ip ss; do
		if ! command -v "$c" >/dev/null; then
			log "$c is missing (package ${pkg_of[$c]}) and could not be installed"
			exit 1
		fi
	done
	if want redis && ! { command -v redis-server && command -v redis-benchmark; } >/dev/null; then
		have_redis=0
		notes+=("redis skipped: redis-server/redis-benchmark not installed (redis-server, redis-tools)")
	fi
	if want iperf && ! command -v iperf3 >/dev/null; then
		have_iperf=0
		notes+=("iperf3 skipped: not installed")
	fi
	if want sockperf && ! command -v sockperf >/dev/null; then
		have_sockperf=0
		notes+=("sockperf ping-pong skipped: sockperf not installed and apt-get could not install it")
	fi
	if [ "$(id -u)" -ne 0 ]; then
		have_netns=0
		want iperf && notes+=("veth cases skipped: network namespaces need root")
	fi
}

# ------------------------------------------------------------- cleanup
tmp=
ivmcd_pid=
ns_a="" ns_b="" netns_rc=1
pids=()  # servers still running

stop_pid() {
	local pid=$1 i
	if ! kill -TERM "$pid" 2>/dev/null; then
		wait "$pid" 2>/dev/null
		return 0
	fi
	for ((i = 0; i < 50; i++)); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.05
	done
	kill -KILL "$pid" 2>/dev/null
	wait "$pid" 2>/dev/null
	return 0
}

cleanup() {
	local p
	trap - EXIT INT TERM
	for p in "${pids[@]}"; do
		stop_pid "$p"
	done
	if [ -n "$ns_a" ]; then
		ip netns del "$ns_a" 2>/dev/null
		ip netns del "$ns_b" 2>/dev/null
	fi
	[ -n "$ivmcd_pid" ] && stop_pid "$ivmcd_pid"
	[ -n "$tmp" ] && rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

forget_pid() {
	local p keep=()
	for p in "${pids[@]}"; do
		[ "$p" != "$1" ] && keep+=("$p")
	done
	pids=("${keep[@]}")
}

# ------------------------------------------------------------- ivmcd
sock=
start_ivmcd() {
	local i
	sock=$tmp/ivmcd.sock
	# An empty policy: the built-in one (same uid, or root, may pair).
	echo "# bench/preload.sh: built-in policy" >"$tmp/ivmcd.conf"
	# IVMC_BENCH_POLICY: more lines for it (e.g. "ring_grow 0").
	[ -z "${IVMC_BENCH_POLICY:-}" ] ||
		printf '%s\n' "$IVMC_BENCH_POLICY" >>"$tmp/ivmcd.conf"
	"$IVMCD" -f -s "$sock" -c "$tmp/ivmcd.conf" -l info -L "$tmp/ivmcd.log" \
		</dev/null >/dev/null 2>"$tmp/ivmcd.err" &
	ivmcd_pid=$!
	for ((i = 0; i < 100; i++)); do
		"$IVMCCTL" -s "$sock" -t 500 status >/dev/null 2>&1 && break
		kill -0 "$ivmcd_pid" 2>/dev/null || break
		sleep 0.05
	done
	if ! "$IVMCCTL" -s "$sock" -t 500 status >/dev/null 2>&1; then
		log "ivmcd did not come up; its log:"
		tail -20 "$tmp/ivmcd.log" "$tmp/ivmcd.err" >&2
		exit 1
	fi
	export IVMC_SOCKET=$sock
	# Should ours die, the preload must not start another one behind our
	# back: the rounds then show up as not accelerated.
	export IVMC_AUTOSTART=0
}

# status FILE: the daemon's JSON status into FILE; fails when it cannot.
status() {
	"$IVMCCTL" -s "$sock" -t 2000 --json status >"$1" 2>/dev/null &&
		jq -e .daemon.paired "$1" >/dev/null 2>&1
}

# ------------------------------------------------------------- netns
ns_addr_a=10.197.0.1 ns_addr_b=10.197.0.2
setup_netns() {
	local sfx=$$-$RANDOM
	# Once per run (the hog pass comes back here): cleanup removes one pair.
	[ -n "$ns_a" ] && return "$netns_rc"
	netns_rc=1
	ns_a=ivmcb-a-$sfx ns_b=ivmcb-b-$sfx
	ip netns add "$ns_a" && ip netns add "$ns_b" &&
		ip link add ivmcb0 netns "$ns_a" type veth peer name ivmcb1 netns "$ns_b" &&
		ip -n "$ns_a" addr add $ns_addr_a/30 dev ivmcb0 &&
		ip -n "$ns_b" addr add $ns_addr_b/30 dev ivmcb1 &&
		ip -n "$ns_a" link set lo up && ip -n "$ns_b" link set lo up &&
		ip -n "$ns_a" link set ivmcb0 up && ip -n "$ns_b" link set ivmcb1 up ||
		return 1
	# The link takes a moment to have a carrier (no ping needed).
	local i
	for ((i = 0; i < 50; i++)); do
		ip -n "$ns_a" link show ivmcb0 | grep -q LOWER_UP &&
			ip -n "$ns_b" link show ivmcb1 | grep -q LOWER_UP &&
			netns_rc=0 && return 0
		sleep 0.1
	done
	return 1
}

# ------------------------------------------------------------- running
port_next=$((20000 + ($$ * 7 + RANDOM) % 9000))
port=
next_port() {
	port=$port_next
	port_next=$((port_next + 1))
}

# prefix MODE WHERE SIDE: sets the array "pre" to what goes before a command
# (the namespace, ivmc-run). SIDE is server or client.
pre=()
prefix() {
	pre=()
	if [ "$2" = veth ]; then
		if [ "$3" = server ]; then
			pre+=(ip netns exec "$ns_a")
		else
			pre+=(ip netns exec "$ns_b")
		fi
	fi
	[ "$1" = ivmc ] && pre+=("$IVMC_RUN")
	return 0
}

# wait_listen WHERE PORT PID: until something listens on PORT (bounded).
wait_listen() {
	local i nsx=()
	[ "$1" = veth ] && nsx=(ip netns exec "$ns_a")
	for ((i = 0; i < 200; i++)); do
		kill -0 "$3" 2>/dev/null || return 1
		[ -n "$("${nsx[@]}" ss -Hltn "sport = :$2" 2>/dev/null)" ] && return 0
		sleep 0.025
	done
	return 1
}

# start_server MODE WHERE LOG CMD...: start a server, wait for its port
# ($port, taken before), sets server_pid.
server_pid=
start_server() {
	local mode=$1 where=$2 slog=$3
	shift 3
	prefix "$mode" "$where" server
	"${pre[@]}" "$@" </dev/null >"$slog" 2>&1 &
	server_pid=$!
	pids+=("$server_pid")
	if ! wait_listen "$where" "$port" "$server_pid"; then
		log "server did not listen on $port: $*"
		tail -5 "$slog" >&2
		stop_server
		return 1
	fi
}
stop_server() {
	[ -n "$server_pid" ] || return 0
	stop_pid "$server_pid"
	forget_pid "$server_pid"
	server_pid=
}

# Results: one line per measurement in $tmp/res.tsv:
#   case  metric  mode  round  value
# mode is plain, ivmc, or ivmc-tcp (an ivmc round the daemon did not pair:
# kept for the record, never in the ivmc median).
cases=()  # "case<TAB>metric" in order of appearance
declare -A unit_of better_of
metric() { # case metric unit better(up|down)
	local k=$1$'\t'$2
	if [ -z "${unit_of[$k]:-}" ]; then
		cases+=("$k")
		unit_of[$k]=$3
		better_of[$k]=$4
	fi
}
record() { # case metric mode round value
	case $5 in
	'' | null) return 0 ;;
	esac
	printf '%s\t%s\t%s\t%s\t%s\n' "$@" >>"$tmp/res.tsv"
}

# Acceleration check, for ivmc rounds: ivmcd's pair counter before and
# after the client; while it runs, a look every 0.2 s (0.5 s once a ring is
# seen) at the channels (\`ivmcctl --json status\`) and at the payload bytes
# the server's TCP sockets carried (ss: bytes_acked + bytes_received). An
# accelerated connection keeps its TCP connection but sends nothing on it,
# so the TCP bytes say how much of the run went through the kernel.
# acc_verdict: ok | late (over 10 % of the bytes and 1 MiB went on TCP: the
# numbers mix TCP and the ring; kept, with a warning) | tcp (not paired) |
# stayed-tcp (paired, but every look found all channels on TCP) | unknown
# (no status from ivmcd).
acc_verdict=""
acc_t0=0 acc_ring_ms="" acc_ring_n="" acc_looks=0 acc_tcp_b=0 acc_ring_b=0
acc_begin() {
	status "$tmp/st0.json" || : >"$tmp/st0.json"
	acc_t0=$(date +%s%N)
	acc_ring_ms="" acc_ring_n="" acc_looks=0 acc_tcp_b=0 acc_ring_b=0
}
# tcp_bytes WHERE PORT: payload bytes both ways through the established TCP
# sockets of local port PORT (the server's ends).
tcp_bytes() {
	local nsx=()
	[ "$1" = veth ] && nsx=(ip netns exec "$ns_a")
	"${nsx[@]}" ss -Htin state established "( sport = :$2 )" 2>/dev/null |
		grep -oE '(bytes_acked|bytes_received):[0-9]+' |
		awk -F: '{s += $2} END {printf "%.0f\n", s}'
}
# acc_watch PID WHERE PORT MINBYTES: looks until the client ends; the ring
# counts once a channel on it has carried MINBYTES (the ring byte counters
# are modulo 2^32).
acc_watch() {
	local i n t rb tb nap=0.2
	for ((i = 0; i < 1000; i++)); do
		sleep "$nap"
		kill -0 "$1" 2>/dev/null || return 0
		t=$((($(date +%s%N) - acc_t0) / 1000000))
		tb=$(tcp_bytes "$2" "$3")
		status "$tmp/stp.json" || continue
		acc_looks=$((acc_looks + 1))
		read -r n rb < <(jq -r --argjson min "$4" '
			[.channels[] | select((.a_to_b.mode == "ring" or .b_to_a.mode == "ring") and ([.a_to_b.ring_bytes_mod32, .b_to_a.ring_bytes_mod32] | max) >= $min)] as $ok
			| "\($ok | length) \([.channels[] | .a_to_b.ring_bytes_mod32 + .b_to_a.ring_bytes_mod32] | add // 0)"' "$tmp/stp.json")
		# A socket or channel may be gone by now: keep the largest seen.
		[ "${tb:-0}" -gt "$acc_tcp_b" ] && acc_tcp_b=$tb
		[ "${rb:-0}" -gt "$acc_ring_b" ] && acc_ring_b=$rb
		if [ "${n:-0}" -gt 0 ] && [ -z "$acc_ring_ms" ]; then
			acc_ring_n=$n
			acc_ring_ms=$t
			nap=0.5
		fi
	done
}
acc_end() { # case round expected_pairs
	local d ring why
	if ! status "$tmp/st1.json" || [ ! -s "$tmp/st0.json" ]; then
		acc_verdict=unknown
		d='?'
	else
		d=$(jq -n --slurpfile a "$tmp/st0.json" --slurpfile b "$tmp/st1.json" \
			'$b[0].daemon.paired - $a[0].daemon.paired')
		if [ "$d" -lt "$3" ]; then
			acc_verdict=tcp
		elif [ -z "$acc_ring_ms" ] && [ "$acc_looks" -gt 0 ]; then
			acc_verdict=stayed-tcp
		elif [ "$acc_tcp_b" -gt $((1 << 20)) ] &&
			[ $((acc_tcp_b * 10)) -gt $((acc_tcp_b + acc_ring_b)) ]; then
			acc_verdict=late
		else
			acc_verdict=ok
		fi
	fi
	# When the first look saw a ring (s after the client started), and how
	# many channels were on it; "never" after N looks; "-": client done
	# before the first look. Then the bytes on TCP and on the ring.
	if [ -n "$acc_ring_ms" ]; then
		ring=$(awk -v m="$acc_ring_ms" -v n="$acc_ring_n" 'BEGIN{printf "%.1f s (%d)", m/1000, n}')
	elif [ "$acc_looks" -gt 0 ]; then
		ring="never ($acc_looks looks)"
	else
		ring=-
	fi
	if [ "$acc_looks" -gt 0 ]; then
		ring="$ring, TCP $(human "$acc_tcp_b") / ring $(human "$acc_ring_b")"
	fi
	why=
	if [ -s "$tmp/st0.json" ] && [ -s "$tmp/st1.json" ]; then
		why=$(jq -rn --slurpfile a "$tmp/st0.json" --slurpfile b "$tmp/st1.json" \
			'[$b[0].stayed_on_tcp | to_entries[] | select(.value > $a[0].stayed_on_tcp[.key]) | "\(.key) +\(.value - $a[0].stayed_on_tcp[.key])"] | join(", ")')
	fi
	printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$d" "$ring" "$acc_verdict" "$why" \
		"$acc_tcp_b" "$acc_ring_b" >>"$tmp/acc.tsv"
}
human() {
	awk -v b="$1" 'BEGIN{
		if (b >= 1073741824) printf "%.1f GiB", b/1073741824
		else if (b >= 1048576) printf "%.1f MiB", b/1048576
		else if (b >= 1024) printf "%.1f KiB", b/1024
		else printf "%d B", b }'
}

# run_client MODE WHERE CASE ROUND EXPECTED MINBYTES OUT CMD...: run a
# client (under the prefix already set in "pre") against the server on
# $port, bounded by a timeout, with the acceleration check around it for
# ivmc: at least EXPECTED connections paired and a channel on the ring that
# carried MINBYTES. Returns the client's status.
run_client() {
	local mode=$1 where=$2 case=$3 round=$4 exp=$5 minb=$6 out=$7 cpid rc limit last
	shift 7
	limit=$((redis_secs + iperf_secs + sockperf_secs + 60))
	[ "$mode" = ivmc ] && acc_begin
	timeout "$limit" "${pre[@]}" "$@" </dev/null >"$out" 2>"$out.err" &
	cpid=$!
	[ "$mode" = ivmc ] && acc_watch "$cpid" "$where" "$port" "$minb"
	wait "$cpid"
	rc=$?
	[ "$mode" = ivmc ] && acc_end "$case" "$round" "$exp"
	if [ "$rc" -ne 0 ]; then
		# What it said last (sockperf and iperf3 -J report on stdout).
		last=$(cat "$out.err" "$out" 2>/dev/null | grep -v '^[[:space:]]*$' |
			grep -i -m 3 -E 'error|denied|fail|abort' | tr -d '\033' | tr '\n|' '  ' | cut -c 1-300)
		[ -n "$last" ] || last=$(tail -c 200 "$out.err" | tr '\n|' '  ')
		log "$case ($mode, round $round): client exited with $rc: $last"
		echo "$case|$mode|$round|client exited with status $rc${last:+: $last}" >>"$tmp/fail.txt"
	fi
	return "$rc"
}

# The mode a value is recorded under.
rec_mode() {
	if [ "$1" = ivmc ] && [ "$acc_verdict" != ok ] && [ "$acc_verdict" != late ]; then
		echo ivmc-tcp
	else
		echo "$1"
	fi
}

# Modes of round R, in order: plain first in odd rounds, ivmc first in even.
modes_of() {
	if [ "$plain_only" = 1 ]; then
		echo plain
	elif [ $(($1 % 2)) -eq 1 ]; then
		echo plain ivmc
	else
		echo ivmc plain
	fi
}

# ------------------------------------------------------------- redis
redis_n_set="" redis_n_get=""
redis_server() { # MODE WHERE
	next_port
	start_server "$1" "$2" "$tmp/redis.log" redis-server --port "$port" \
		--bind 127.0.0.1 --save '' --appendonly no --protected-mode no \
		--daemonize no --logfile ''
}

# redis_bench MODE TEST N CASE ROUND -> records rps, p50, p99
redis_bench() {
	local mode=$1 t=$2 n=$3 case=$4 round=$5 line m
	prefix "$mode" lo client
	run_client "$mode" lo "$case" "$round" 1 0 "$tmp/rb.out" \
		redis-benchmark -h 127.0.0.1 -p "$port" -c 1 -n "$n" -t "$t" --csv ||
		return 1
	line=$(grep -i "^\"$t\"" "$tmp/rb.out" | head -1)
	if [ -z "$line" ]; then
		echo "$case|$mode|$round|no result in the output" >>"$tmp/fail.txt"
		return 1
	fi
	m=$(rec_mode "$mode")
	# "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"
	IFS=, read -r _ rps _ _ p50 _ p99 _ <<<"${line//\"/}"
	record "$case" "requests/s" "$m" "$round" "$rps"
	record "$case" "p50 latency" "$m" "$round" "$(awk -v v="$p50" 'BEGIN{print v*1000}')"
	record "$case" "p99 latency" "$m" "$round" "$(awk -v v="$p99" 'BEGIN{print v*1000}')"
}

redis_calibrate() {
	local t rps n
	redis_server plain lo || return 1
	for t in SET GET; do
		redis-benchmark -h 127.0.0.1 -p "$port" -c 1 -n 20000 -t "$t" --csv \
			>"$tmp/cal.out" 2>/dev/null
		rps=$(grep -i "^\"$t\"" "$tmp/cal.out" | cut -d, -f2 | tr -d '"')
		n=$(awk -v r="${rps:-0}" -v s="$redis_secs" 'BEGIN{n=int(r*s/1000)*1000; if(n<2000)n=2000; if(n>20000000)n=20000000; print n}')
		if [ "$t" = SET ]; then redis_n_set=$n; else redis_n_get=$n; fi
	done
	stop_server
}

bench_redis() {
	local r mode
	log "redis: sizing -n for ~${redis_secs}s per test from a plain run"
	if ! redis_calibrate; then
		notes+=("redis skipped: redis-server did not start")
		return
	fi
	local cset="redis SET (-c 1, -n $redis_n_set)$csuf" cget="redis GET (-c 1, -n $redis_n_get)$csuf"
	for c in "$cset" "$cget"; do
		metric "$c" "requests/s" "req/s" up
		metric "$c" "p50 latency" "µs" down
		metric "$c" "p99 latency" "µs" down
	done
	for ((r = 1; r <= rounds; r++)); do
		for mode in $(modes_of "$r"); do
			log "redis round $r/$rounds: $mode"
			redis_server "$mode" lo || {
				echo "redis|$mode|$r|redis-server did not start" >>"$tmp/fail.txt"
				continue
			}
			redis_bench "$mode" SET "$redis_n_set" "$cset" "$r"
			redis_bench "$mode" GET "$redis_n_get" "$cget" "$r"
			stop_server
		done
	done
}

# ------------------------------------------------------------- iperf3
# iperf_one MODE WHERE CASE ROUND
iperf_one() {
	local mode=$1 where=$2 case=$3 round=$4 addr=127.0.0.1 m
	[ "$where" = veth ] && addr=$ns_addr_a
	next_port
	start_server "$mode" "$where" "$tmp/iperf-s.log" \
		iperf3 -s -1 -B "$addr" -p "$port" || {
		echo "$case|$mode|$round|iperf3 server did not start" >>"$tmp/fail.txt"
		return 1
	}
	prefix "$mode" "$where" client
	# Two connections, the control one and the data stream: the check
	# wants the data stream on the ring (16 MiB through it).
	run_client "$mode" "$where" "$case" "$round" 1 $((16 << 20)) "$tmp/ip.json" \
		iperf3 -c "$addr" -p "$port" -t "$iperf_secs" -J
	stop_server
	if ! jq -e '.end.sum_received.bits_per_second' "$tmp/ip.json" >/dev/null 2>&1; then
		echo "$case|$mode|$round|iperf3: $(jq -r '.error // "no result"' "$tmp/ip.json" 2>/dev/null || echo 'no JSON')" >>"$tmp/fail.txt"
		return 1
	fi
	m=$(rec_mode "$mode")
	record "$case" "throughput" "$m" "$round" "$(jq '.end.sum_received.bits_per_second / 1e9' "$tmp/ip.json")"
	record "$case" "sender CPU" "$m" "$round" "$(jq '.end.cpu_utilization_percent.host_total' "$tmp/ip.json")"
	record "$case" "receiver CPU" "$m" "$round" "$(jq '.end.cpu_utilization_percent.remote_total' "$tmp/ip.json")"
	# CPU seconds of both ends (iperf3's own accounting: user + system
	# of each process) per 10^9 bytes received.
	record "$case" "CPU per GB (both ends)" "$m" "$round" "$(jq '(.end.cpu_utilization_percent.host_total + .end.cpu_utilization_percent.remote_total) / 100 * .end.sum_received.seconds / (.end.sum_received.bytes / 1e9)' "$tmp/ip.json")"
}

# hog_start / hog_stop: one busy loop per online CPU, at normal priority,
# for the hog pass.
hog_start() {
	local i
	for ((i = 0; i < $(nproc); i++)); do
		bash -c 'while :; do :; done' &
		hog_pids+=($!)
		pids+=($!)
	done
}

hog_stop() {
	local p
	for p in "${hog_pids[@]}"; do
		stop_pid "$p"
	done
	hog_pids=()
}

bench_iperf() {
	local where r mode c wheres=(lo)
	if [ "$have_netns" = 1 ]; then
		if setup_netns; then
			wheres+=(veth)
		else
			notes+=("veth cases skipped: could not set up the namespaces")
		fi
	fi
	for where in "${wheres[@]}"; do
		if [ "$where" = lo ]; then
			c="iperf3 loopback (1 stream, -t $iperf_secs)$csuf"
		else
			c="iperf3 veth, 2 netns (1 stream, -t $iperf_secs)$csuf"
		fi
		metric "$c" "throughput" "Gbit/s" up
		metric "$c" "sender CPU" "%" down
		metric "$c" "receiver CPU" "%" down
		metric "$c" "CPU per GB (both ends)" "s/GB" down
		for ((r = 1; r <= rounds; r++)); do
			for mode in $(modes_of "$r"); do
				log "iperf3 $where round $r/$rounds: $mode"
				iperf_one "$mode" "$where" "$c" "$r"
			done
		done
	done
}

# ------------------------------------------------------------- sockperf
sockperf_one() { # MODE CASE ROUND
	local mode=$1 case=$2 round=$3 m p50 p99
	next_port
	start_server "$mode" lo "$tmp/sp-s.log" \
		sockperf server --tcp -i 127.0.0.1 -p "$port" || {
		echo "$case|$mode|$round|sockperf server did not start" >>"$tmp/fail.txt"
		return 1
	}
	prefix "$mode" lo client
	# --mps: sockperf sizes its sample array for about a million
	# messages a second and stops with "_seqN > m_maxSequenceNo" when a
	# ping-pong goes faster, as one on the ring does (0.3 us round
	# trips); 300k/s leaves each round trip unhurried.
	run_client "$mode" lo "$case" "$round" 1 0 "$tmp/sp.out" \
		sockperf ping-pong --tcp -i 127.0.0.1 -p "$port" -m 64 \
		-t "$sockperf_secs" --full-rtt --mps=300000
	stop_server
	p50=$(awk '/percentile 50.000 =/{print $NF}' "$tmp/sp.out")
	p99=$(awk '/percentile 99.000 =/{print $NF}' "$tmp/sp.out")
	if [ -z "$p50" ] || [ -z "$p99" ]; then
		echo "$case|$mode|$round|sockperf: no percentiles in the output" >>"$tmp/fail.txt"
		return 1
	fi
	m=$(rec_mode "$mode")
	record "$case" "p50 round trip" "$m" "$round" "$p50"
	record "$case" "p99 round trip" "$m" "$round" "$p99"
}

bench_sockperf() {
	local r mode c="sockperf ping-pong 64 B, loopback (-t $sockperf_secs)"
	metric "$c" "p50 round trip" "µs" down
	metric "$c" "p99 round trip" "µs" down
	for ((r = 1; r <= rounds; r++)); do
		for mode in $(modes_of "$r"); do
			log "sockperf round $r/$rounds: $mode"
			sockperf_one "$mode" "$c" "$r"
		done
	done
}

# ------------------------------------------------------------- idle
# on_cpu_ns PID...: nanoseconds on CPU so far, every thread of each
on_cpu_ns() {
	local p
	for p in "$@"; do
		cat /proc/"$p"/task/*/schedstat 2>/dev/null
	done | awk '{ s += $1 } END { printf "%.0f", s }'
}

# peer_ready FILE...: each says "ready"
peer_ready() {
	local f
	for f in "$@"; do
		grep -q '^ready' "$f" 2>/dev/null || return 1
	done
}

idle_one() { # MODE CASE ROUND
	local mode=$1 case=$2 round=$3 spid cpid i c0 c1 fds pss chans m
	next_port
	prefix "$mode" lo server
	"${pre[@]}" python3 "$here/idle-peer.py" server "$idle_n" "$port" 20 \
		</dev/null >"$tmp/idle-s.out" 2>&1 &
	spid=$!
	pids+=("$spid")
	if ! wait_listen lo "$port" "$spid"; then
		echo "$case|$mode|$round|idle server did not listen" >>"$tmp/fail.txt"
		stop_pid "$spid"
		return 1
	fi
	prefix "$mode" lo client
	"${pre[@]}" python3 "$here/idle-peer.py" client "$idle_n" "$port" 20 \
		</dev/null >"$tmp/idle-c.out" 2>&1 &
	cpid=$!
	pids+=("$cpid")
	for ((i = 0; i < 300; i++)); do
		peer_ready "$tmp/idle-s.out" "$tmp/idle-c.out" && break
		sleep 0.1
	done
	if ! peer_ready "$tmp/idle-s.out" "$tmp/idle-c.out"; then
		echo "$case|$mode|$round|idle peers not ready in 30 s: $(tail -c 200 "$tmp/idle-c.out" "$tmp/idle-s.out" | tr '\n|' '  ')" >>"$tmp/fail.txt"
		stop_pid "$cpid"
		stop_pid "$spid"
		return 1
	fi
	sleep 1
	chans=0
	if [ "$mode" = ivmc ] && status "$tmp/idle.json"; then
		chans=$(jq '.channels | length' "$tmp/idle.json")
		log "idle round $round: $chans of $idle_n connections on channels"
	fi
	c0=$(on_cpu_ns "$spid" "$cpid")
	sleep "$idle_secs"
	c1=$(on_cpu_ns "$spid" "$cpid")
	fds=$(($(ls /proc/"$spid"/fd | wc -l) + $(ls /proc/"$cpid"/fd | wc -l)))
	pss=$(awk '/^Pss:/ { s += $2 } END { print s + 0 }' \
		/proc/"$spid"/smaps_rollup /proc/"$cpid"/smaps_rollup)
	stop_pid "$cpid"
	stop_pid "$spid"
	forget_pid "$cpid"
	forget_pid "$spid"
	m=$mode
	if [ "$mode" = ivmc ] && [ "$chans" -lt "$idle_n" ]; then
		m=ivmc-tcp
		echo "$case|$mode|$round|only $chans of $idle_n connections on channels: not counted" >>"$tmp/fail.txt"
	fi
	record "$case" "CPU of both processes per 10 s idle" "$m" "$round" \
		"$(awk -v d=$((c1 - c0)) -v s="$idle_secs" 'BEGIN { printf "%.3f", d / 1e6 * 10 / s }')"
	record "$case" "fds per connection, both ends" "$m" "$round" \
		"$(awk -v f="$fds" -v n="$idle_n" 'BEGIN { printf "%.2f", f / n }')"
	record "$case" "Pss per connection, both ends" "$m" "$round" \
		"$(awk -v p="$pss" -v n="$idle_n" 'BEGIN { printf "%.1f", p / n }')"
	return 0
}

bench_idle() {
	local r mode c="$idle_n idle connections (Python, select), loopback"
	metric "$c" "CPU of both processes per 10 s idle" "ms" down
	metric "$c" "fds per connection, both ends" "fds" down
	metric "$c" "Pss per connection, both ends" "KiB" down
	for ((r = 1; r <= rounds; r++)); do
		for mode in $(modes_of "$r"); do
			log "idle round $r/$rounds: $mode"
			idle_one "$mode" "$c" "$r"
		done
	done
}

# ------------------------------------------------------------- report
# stats CASE METRIC MODE -> "median min max n values(space-separated)"
stats() {
	awk -F'\t' -v c="$1" -v m="$2" -v mo="$3" '
	$1 == c && $2 == m && $3 == mo { v[n++] = $5 + 0 }
	END {
		if (n == 0) { print "- - - 0 -"; exit }
		for (i = 1; i < n; i++)   # insertion sort: n is small
			for (j = i; j > 0 && v[j-1] > v[j]; j--) { t = v[j]; v[j] = v[j-1]; v[j-1] = t }
		med = (n % 2) ? v[int(n/2)] : (v[n/2-1] + v[n/2]) / 2
		s = v[0]; for (i = 1; i < n; i++) s = s "," v[i]
		printf "%.10g %.10g %.10g %d %s\n", med, v[0], v[n-1], n, s
	}' "$tmp/res.tsv"
}

fmt() { # UNIT VALUE
	case $2 in
	- | '') echo "–" ;;
	*)
		case $1 in
		req/s) awk -v v="$2" 'BEGIN{printf "%.0f", v}' ;;
		Gbit/s) awk -v v="$2" 'BEGIN{printf "%.2f", v}' ;;
		*) awk -v v="$2" 'BEGIN{printf "%.1f", v}' ;;
		esac
		;;
	esac
}

report() {
	local k c mt u b sp si med_p min_p max_p n_p vals_p med_i min_i max_i n_i vals_i ratio
	local cpu kernel commit
	cpu=$(awk -F': ' '/^model name/{print $2; exit}' /proc/cpuinfo)
	kernel=$(uname -srm)
	commit=$(git -C "$top" rev-parse --short HEAD 2>/dev/null || echo none)
	if [ -n "$(git -C "$top" status --porcelain 2>/dev/null | head -1)" ]; then
		commit="$commit (work tree modified)"
	fi
	: >"$tmp/rows.json"
	echo "# ivmc preload: plain TCP vs ivmc-run"
	echo
	echo "- date: $start_date"
	echo "- machine: $(uname -n): $kernel, $(nproc) CPUs, ${cpu:-unknown CPU}; load average at start $load_start"
	echo "- commit: $commit"
	echo "- run: $([ "$quick" = 1 ] && echo quick || echo full), rounds per case: $rounds; plain and ivmc alternate, the order flips every round$([ "$plain_only" = 1 ] && echo "; --plain-only: baselines only")"
	echo "- tools: $(tool_versions)"
	[ "$plain_only" = 1 ] || echo "- ivmc: ivmc-run with libivmc-preload.so $preload_id (copied at the start), private ivmcd (built-in policy)"
	echo
	echo "Medians over the rounds; ↑ higher is better, ↓ lower is better. Ratio = ivmc / plain."
	echo
	echo "| case | metric | plain | ivmc | ivmc/plain | plain min..max | ivmc min..max |"
	echo "|---|---|---:|---:|---:|---:|---:|"
	for k in "${cases[@]}"; do
		c=${k%%$'\t'*}
		mt=${k#*$'\t'}
		u=${unit_of[$k]}
		b=${better_of[$k]}
		read -r med_p min_p max_p n_p vals_p < <(stats "$c" "$mt" plain)
		read -r med_i min_i max_i n_i vals_i < <(stats "$c" "$mt" ivmc)
		# The warning row, above a case's first metric: ivmc rounds that
		# stayed on TCP.
		if [ "$mt" = "$(first_metric "$c")" ]; then
			warn_row "$c"
		fi
		ratio=–
		if [ "$med_p" != - ] && [ "$med_i" != - ]; then
			ratio=$(awk -v a="$med_i" -v b="$med_p" 'BEGIN{if (b == 0) print "–"; else printf "%.2f", a/b}')
		fi
		sp="$(fmt "$u" "$min_p")..$(fmt "$u" "$max_p")"
		si="$(fmt "$u" "$min_i")..$(fmt "$u" "$max_i")"
		[ "$n_p" = 0 ] && sp=–
		[ "$n_i" = 0 ] && si=–
		printf '| %s | %s %s (%s) | %s | %s | %s | %s | %s |\n' "$c" "$mt" \
			"$([ "$b" = up ] && echo ↑ || echo ↓)" "$u" "$(fmt "$u" "$med_p")" \
			"$(fmt "$u" "$med_i")" "$ratio" "$sp" "$si"
		jq -cn --arg c "$c" --arg m "$mt" --arg u "$u" --arg b "$b" \
			--arg vp "$vals_p" --arg vi "$vals_i" --arg vt "$(stats "$c" "$mt" ivmc-tcp | cut -d' ' -f5)" '
			def nums: if . == "-" then [] else split(",") | map(tonumber) end;
			def med: sort | if length == 0 then null elif length % 2 == 1 then .[length/2|floor] else (.[length/2-1] + .[length/2]) / 2 end;
			{case: $c, metric: $m, unit: $u, better: (if $b == "up" then "higher" else "lower" end),
			 plain: {median: ($vp|nums|med), values: ($vp|nums)},
			 ivmc: {median: ($vi|nums|med), values: ($vi|nums)},
			 ivmc_not_accelerated_values: ($vt|nums)}
			| .ratio = (if .plain.median and .ivmc.median and .plain.median != 0 then .ivmc.median / .plain.median else null end)' \
			>>"$tmp/rows.json"
	done
	if [ "$plain_only" = 0 ] && [ -s "$tmp/acc.tsv" ]; then
		echo
		echo "Acceleration of the ivmc rounds: connections ivmcd paired during each client's run (redis-benchmark and iperf3 open two each: a configuration query or the control connection, and the one measured), and when a look at \`ivmcctl --json status\` (every 0.2 s) first found a channel on the ring (for iperf3: one that carried 16 MiB), in seconds after the client started, with the number of such channels; – = the client ended before the first look. A round is accelerated when ivmcd paired at least one connection and no look found everything on TCP; late when over 10 % of the bytes (and over 1 MiB) went through TCP. TCP / ring: payload bytes through the server's TCP sockets (ss) and through the rings (ivmcctl; modulo 4 GiB, so iperf3's wrap), largest seen by a look: an accelerated connection sends nothing on TCP."
		echo
		echo "| case | paired per round | first seen on the ring; TCP / ring bytes, per round | verdict |"
		echo "|---|---|---|---|"
		for k in "${cases[@]}"; do
			c=${k%%$'\t'*}
			[ "${k#*$'\t'}" = "$(first_metric "$c")" ] || continue
			acc_row "$c"
		done
	fi
	if [ -s "$tmp/fail.txt" ]; then
		echo
		echo "Failed runs:"
		echo
		while IFS='|' read -r c mode r what; do
			echo "- $c, $mode, round $r: $what"
		done <"$tmp/fail.txt"
	fi
	if [ ${#notes[@]} -gt 0 ]; then
		echo
		echo "Notes:"
		echo
		printf -- '- %s\n' "${notes[@]}"
	fi
}

first_metric() {
	local k
	for k in "${cases[@]}"; do
		if [ "${k%%$'\t'*}" = "$1" ]; then
			echo "${k#*$'\t'}"
			return
		fi
	done
}

# A warning row in the results table for a case with ivmc rounds that were
# not accelerated (their numbers are TCP's, and are left out).
warn_row() {
	[ -s "$tmp/acc.tsv" ] || return 0
	local bad late total
	total=$(awk -F'\t' -v c="$1" '$1 == c' "$tmp/acc.tsv" | wc -l)
	bad=$(awk -F'\t' -v c="$1" '$1 == c && $5 != "ok" && $5 != "late"' "$tmp/acc.tsv" | wc -l)
	late=$(awk -F'\t' -v c="$1" '$1 == c && $5 == "late"' "$tmp/acc.tsv" | wc -l)
	if [ "$bad" -gt 0 ]; then
		printf '| **WARNING** %s | **%s of %s ivmc rounds NOT accelerated** (see below): their numbers are left out of the ivmc column | | | | | |\n' \
			"$1" "$bad" "$total"
	fi
	if [ "$late" -gt 0 ]; then
		printf '| **WARNING** %s | **%s of %s ivmc rounds attached late** (over 10 %% of the bytes went on TCP, see below): their numbers mix TCP and the ring | | | | | |\n' \
			"$1" "$late" "$total"
	fi
}

acc_row() {
	awk -F'\t' -v c="$1" '
	$1 == c {
		p = p (p ? " " : "") "+" $3; g = g (g ? "; " : "") $4
		if ($5 == "late") {
			nl++
			lw = lw (lw ? "; " : "") "round " $2
		} else if ($5 != "ok") {
			bad++
			r = ($5 == "stayed-tcp") ? "paired, but on TCP at every look" : ($5 == "unknown") ? "no status from ivmcd" : "not paired"
			if ($6 != "") r = r ", stayed on TCP: " $6
			why = why (why ? "; " : "") "round " $2 ": " r
		}
		n++
	}
	END {
		if (n == 0) exit
		v = bad ? sprintf("**NOT accelerated in %d of %d** (%s)", bad, n, why) : ""
		if (nl) v = v (v ? "; " : "") sprintf("**late in %d of %d** (%s: over 10 %% of the bytes on TCP)", nl, n, lw)
		if (v == "") v = "ok"
		printf "| %s | %s | %s | %s |\n", c, p, g, v
	}' "$tmp/acc.tsv"
}

tool_versions() {
	local v=()
	command -v redis-server >/dev/null &&
		v+=("redis $(redis-server --version | sed -n 's/.* v=\([^ ]*\).*/\1/p')")
	command -v iperf3 >/dev/null && v+=("$(iperf3 --version 2>/dev/null | head -1 | awk '{print $1, $2}')")
	command -v sockperf >/dev/null &&
		v+=("sockperf $(sockperf --version 2>&1 | sed -n 's/.*version \([^ ]*\).*/\1/p' | head -1)")
	local IFS=,
	v=("${v[*]}")
	echo "${v//,/, }"
}

write_json() {
	local acc='[]' fails='[]'
	if [ -s "$tmp/acc.tsv" ]; then
		acc=$(jq -R -s -c 'split("\n") | map(select(length > 0) | split("\t")
			| {case: .[0], round: (.[1]|tonumber), paired: (.[2]|tonumber? // null),
			   first_seen_on_ring: .[3], verdict: .[4], tcp_bytes: (.[6]|tonumber? // null),
			   ring_bytes_mod32: (.[7]|tonumber? // null),
			   stayed_on_tcp: .[5]})' "$tmp/acc.tsv")
	fi
	if [ -s "$tmp/fail.txt" ]; then
		fails=$(jq -R -s -c 'split("\n") | map(select(length > 0) | split("|")
			| {case: .[0], mode: .[1], round: (.[2]|tonumber? // .[2]), what: .[3]})' "$tmp/fail.txt")
	fi
	jq -n --slurpfile rows "$tmp/rows.json" --arg date "$start_date" --arg uname "$(uname -a)" \
		--arg cpu "$(awk -F': ' '/^model name/{print $2; exit}' /proc/cpuinfo)" \
		--argjson nproc "$(nproc)" --arg preload "$preload_id" --arg commit "$(git -C "$top" rev-parse HEAD 2>/dev/null || echo none)" \
		--argjson quick "$quick" --argjson rounds "$rounds" --arg only "$only" \
		--argjson plain_only "$plain_only" --arg tools "$(tool_versions)" \
		--argjson acc "$acc" --argjson fails "$fails" \
		--args '{date: $date, machine: {uname: $uname, nproc: $nproc, cpu: $cpu},
		  commit: $commit, preload: $preload, tools: $tools,
		  options: {quick: ($quick == 1), rounds: $rounds, only: $only, plain_only: ($plain_only == 1)},
		  results: $rows, acceleration: $acc, failures: $fails, notes: $ARGS.positional}' \
		"${notes[@]}" >"$json_out"
}

# ------------------------------------------------------------- main
start_date=$(date -u '+%Y-%m-%d %H:%M:%S UTC')
load_start=$(cut -d' ' -f1-3 /proc/loadavg)

deps
tmp=$(mktemp -d /tmp/ivmc-preload-bench.XXXXXX) || exit 1
: >"$tmp/res.tsv"

if [ "$plain_only" = 0 ]; then
	for f in "$IVMC_RUN" "$IVMCD" "$IVMCCTL"; do
		if [ ! -x "$f" ]; then
			log "$f: not built (make, or --plain-only for the baselines alone)"
			exit 1
		fi
	done
	if [ ! -e "$IVMC_PRELOAD" ]; then
		log "$IVMC_PRELOAD: not built (make, or --plain-only for the baselines alone)"
		exit 1
	fi
	# Measure one build: copies, so that a rebuild during the run changes
	# nothing (ivmc-run takes the library from IVMC_PRELOAD).
	mkdir -p "$tmp/bin" "$tmp/lib"
	preload_id="$(sha256sum "$IVMC_PRELOAD" | cut -c 1-12), built $(date -u -r "$IVMC_PRELOAD" '+%Y-%m-%d %H:%M:%S UTC')"
	cp "$IVMC_RUN" "$IVMCD" "$IVMCCTL" "$tmp/bin/" &&
		cp "$IVMC_PRELOAD" "$tmp/lib/libivmc-preload.so" || exit 1
	IVMC_RUN=$tmp/bin/$(basename "$IVMC_RUN")
	IVMCD=$tmp/bin/$(basename "$IVMCD")
	IVMCCTL=$tmp/bin/$(basename "$IVMCCTL")
	export IVMC_PRELOAD=$tmp/lib/libivmc-preload.so
	start_ivmcd
fi

want redis && [ "$have_redis" = 1 ] && bench_redis
want iperf && [ "$have_iperf" = 1 ] && bench_iperf
want sockperf && [ "$have_sockperf" = 1 ] && bench_sockperf
want idle && bench_idle
if [ "$hog" = 1 ]; then
	# The same cases again with every CPU busy: the issue's bar is ivmc
	# no more than 10% worse than plain TCP under the same hog.
	csuf=" under $(nproc) CPU hogs"
	log "hog pass: $(nproc) busy loops"
	hog_start
	want redis && [ "$have_redis" = 1 ] && bench_redis
	want iperf && [ "$have_iperf" = 1 ] && bench_iperf
	hog_stop
	csuf=
fi

report
[ -n "$json_out" ] && write_json && log "wrote $json_out"
# Non-zero when an ivmc round was not accelerated or a run failed, so that
# a broken preload cannot pass for a result.
if [ -s "$tmp/fail.txt" ] || { [ -s "$tmp/acc.tsv" ] && awk -F'\t' '$5 != "ok" && $5 != "late" {f=1} END {exit !f}' "$tmp/acc.tsv"; }; then
	exit 1
fi
exit 0
