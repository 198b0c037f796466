# shellcheck shell=bash
# SPDX-License-Identifier: MIT
#
# Description: shared code of the tests/preload-*.sh tests, which run real
# programs (socat, redis, python, iperf3) under ivmc-run. Sourced, never run
# (hence not named *.sh): a private ivmcd on a socket in a mktemp directory,
# IVMC_SOCKET exported; what `ivmcctl --json status` says (channels listed,
# pairs made, bytes through the rings); commands under ivmc-run, in the
# foreground or the background, optionally inside a network namespace; a
# pair of namespaces joined by a veth pair (10.x addresses, unique names);
# bounded waits; skip (77) and fail. Everything started here, the daemon and
# the namespaces go in an EXIT trap, which also runs on SIGTERM/SIGINT (the
# runner's timeout) and on failure.
#
# Environment:
#   IVMC_BUILD   the build directory (default: the parent of the directory the
#                test runs from, i.e. build/ for build/tests/NAME; or
#                ../build when run from the source tests/ directory)
#   IVMC_PLAIN=1 run the programs without ivmc-run and skip every check of
#                acceleration: proves the data checks on plain TCP
#   IVMC_LONG=1  longer variants (bigger transfers)
#   IVMC_KEEP=1  keep the test's directory (logs, data) at exit
#   IVMC_PL_DEBUG=1  the preload logs at debug level to preload.log there
#
# A test calls pl_init first, then pl_daemon_start, and uses the rest.

set -u
set -o pipefail

PL_NAME=$(basename "$0" .sh)
PL_DIR=
PL_DPID=
PL_PIDS=()
PL_AUTOSOCKS=()
PL_NETNS=()
PL_PLAIN=${IVMC_PLAIN:-0}
PL_LAST_PID=
PL_CMD=()

# ---- messages ------------------------------------------------------------
# Progress goes to stdout (the test's log); skip and fail reasons go to
# stderr, whose last line the runner shows.
say() { echo "[$(date +%T.%N | cut -c1-12)] $*"; }

skip() {
	echo "$PL_NAME: $*" >&2
	exit 77
}

# Print the tail of the logs in the test directory (daemon, programs) to
# stdout, then the reason on stderr, and exit 1 (the trap cleans up).
fail() {
	local f
	if [ -n "$PL_DIR" ] && [ -d "$PL_DIR" ]; then
		for f in "$PL_DIR"/*.log; do
			[ -s "$f" ] || continue
			echo "---- last 25 lines of ${f##*/} ----"
			tail -n 25 "$f" | cut -c1-300
		done
		if [ -n "$PL_DPID" ] && pl_alive "$PL_DPID"; then
			echo "---- ivmcctl status at failure ----"
			"$IVMCCTL" -s "$IVMC_SOCKET" status 2>&1 | head -n 40
		fi
	fi
	echo "$PL_NAME: FAIL: $*" >&2
	exit 1
}

# ---- where the build is ---------------------------------------------------
pl_find_build() {
	local here
	here=$(cd "$(dirname "$0")" && pwd)
	if [ -n "${IVMC_BUILD:-}" ]; then
		IVMC_BUILD=$(cd "$IVMC_BUILD" && pwd) || fail "IVMC_BUILD=$IVMC_BUILD: no such directory"
	elif [ -x "$here/../bin/ivmcd" ]; then
		IVMC_BUILD=$(cd "$here/.." && pwd)
	elif [ -x "$here/../build/bin/ivmcd" ]; then
		IVMC_BUILD=$(cd "$here/../build" && pwd)
	else
		fail "no build directory with bin/ivmcd near $here (set IVMC_BUILD)"
	fi
	export IVMC_BUILD
	IVMCD=$IVMC_BUILD/bin/ivmcd
	IVMCCTL=$IVMC_BUILD/bin/ivmcctl
	IVMC_RUN=$IVMC_BUILD/bin/ivmc-run
	IVMC_PRELOAD=$IVMC_BUILD/lib/libivmc-preload.so
	[ -x "$IVMCD" ] || fail "$IVMCD missing"
	[ -x "$IVMCCTL" ] || fail "$IVMCCTL missing"
}

plain() { [ "$PL_PLAIN" = 1 ]; }
long() { [ "${IVMC_LONG:-0}" = 1 ]; }

# The preload and its launcher must exist unless IVMC_PLAIN=1.
pl_need_preload() {
	plain && return 0
	[ -f "$IVMC_PRELOAD" ] || skip "preload not built yet ($IVMC_PRELOAD missing; IVMC_PLAIN=1 runs the data checks on plain TCP)"
	[ -x "$IVMC_RUN" ] || skip "launcher not built yet ($IVMC_RUN missing)"
}

# pl_try_cmd CMD [PACKAGE]: CMD on PATH, else install PACKAGE with apt-get
# (as root only); returns 1 if it is still missing.
pl_try_cmd() {
	local cmd=$1 pkg=${2:-$1}
	command -v "$cmd" > /dev/null 2>&1 && return 0
	if [ "$(id -u)" -eq 0 ] && command -v apt-get > /dev/null 2>&1; then
		say "installing $pkg for $cmd"
		{
			DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
				--no-install-recommends "$pkg" ||
				{ DEBIAN_FRONTEND=noninteractive apt-get update -q &&
					DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
						--no-install-recommends "$pkg"; }
		} > "$PL_DIR/apt-$pkg.out" 2>&1
	fi
	command -v "$cmd" > /dev/null 2>&1
}

# pl_need_cmd CMD [PACKAGE]: pl_try_cmd, else skip the whole test.
pl_need_cmd() {
	pl_try_cmd "$@" || skip "$1 not installed and apt-get install ${2:-$1} failed"
}

# ---- set-up and clean-up --------------------------------------------------
pl_alive() {
	local st
	[ -r "/proc/$1/stat" ] || return 1
	st=$(cut -d' ' -f3 "/proc/$1/stat" 2> /dev/null) || return 1
	[ -n "$st" ] && [ "$st" != Z ]
}

pl_cleanup() {
	local rc=$? p ns i
	trap - EXIT INT TERM HUP
	# disowned first: bash would report each killed job on stderr, after
	# the reason the runner takes from its last line
	disown -a 2> /dev/null
	for p in "${PL_PIDS[@]}"; do
		pkill -KILL -P "$p" 2> /dev/null
		kill -KILL "$p" 2> /dev/null
	done
	if [ -n "$PL_DPID" ]; then
		kill -CONT "$PL_DPID" 2> /dev/null
		kill -KILL "$PL_DPID" 2> /dev/null
	fi
	# daemons a program under ivmc-run started on a socket of ours
	for ns in "${PL_AUTOSOCKS[@]}"; do
		for p in $(daemons_at "$ns"); do
			kill -KILL "$p" 2> /dev/null
		done
	done
	for p in "${PL_PIDS[@]}" $PL_DPID; do
		for ((i = 0; i < 40; i++)); do
			pl_alive "$p" || break
			sleep 0.05
		done
	done
	for ns in "${PL_NETNS[@]}"; do
		ip netns del "$ns" 2> /dev/null
	done
	if [ -n "$PL_DIR" ] && [ -d "$PL_DIR" ]; then
		if [ "${IVMC_KEEP:-0}" = 1 ] || { [ $rc -ne 0 ] && [ $rc -ne 77 ]; }; then
			# keep the evidence of a failure, without the big data files
			find "$PL_DIR" -maxdepth 1 -name '*.bin' -size +1M -delete 2> /dev/null
			echo "$PL_NAME: files kept in $PL_DIR" >&2
		else
			rm -rf "$PL_DIR"
		fi
	fi
	exit $rc
}

pl_init() {
	PL_DIR=$(mktemp -d "${TMPDIR:-/tmp}/ivmc-$PL_NAME.XXXXXX") || {
		echo "mktemp failed" >&2
		exit 1
	}
	trap pl_cleanup EXIT
	trap 'exit 143' TERM
	trap 'exit 130' INT
	trap 'exit 129' HUP
	pl_find_build
	if [ "${IVMC_PL_DEBUG:-0}" = 1 ]; then
		export IVMC_LOG=debug IVMC_LOG_FILE=$PL_DIR/preload.log
	fi
	say "build $IVMC_BUILD, dir $PL_DIR, plain=$PL_PLAIN long=${IVMC_LONG:-0}"
}

# pl_daemon_start [CONFIG-TEXT]: a private ivmcd on $PL_DIR/ivmcd.sock
# (built-in policy unless a config is given), logging at debug level to
# $PL_DIR/ivmcd.log; IVMC_SOCKET exported. Waits (5 s at most) until
# ivmcctl gets an answer.
pl_daemon_start() {
	local conf=$PL_DIR/no-such.conf i
	export IVMC_SOCKET=$PL_DIR/ivmcd.sock
	unset IVMC_AUTOSTART
	if [ $# -gt 0 ]; then
		conf=$PL_DIR/ivmcd.conf
		printf '%s\n' "$1" > "$conf"
	fi
	"$IVMCD" -f -s "$IVMC_SOCKET" -c "$conf" -l debug -L "$PL_DIR/ivmcd.log" &
	PL_DPID=$!
	for ((i = 0; i < 100; i++)); do
		pl_alive "$PL_DPID" || fail "ivmcd exited at start"
		"$IVMCCTL" -s "$IVMC_SOCKET" status > /dev/null 2>&1 && return 0
		sleep 0.05
	done
	fail "ivmcd did not answer within 5 s"
}

pl_daemon_stop() {
	local i
	[ -n "$PL_DPID" ] || return 0
	kill -CONT "$PL_DPID" 2> /dev/null
	kill -TERM "$PL_DPID" 2> /dev/null
	for ((i = 0; i < 100; i++)); do
		pl_alive "$PL_DPID" || break
		sleep 0.05
	done
	kill -KILL "$PL_DPID" 2> /dev/null
	wait "$PL_DPID" 2> /dev/null
	PL_DPID=
}

# daemons_at SOCKET: pids of the ivmcd processes serving SOCKET, found by
# their command line (argv[0] ending in ivmcd, "-s SOCKET" among the
# arguments): the daemons ivmc-run's library starts (IVMC_AUTOSTART) are
# no children of ours. Register the path in PL_AUTOSOCKS to have them
# killed at exit.
daemons_at() {
	local f pid args
	for f in /proc/[0-9]*/cmdline; do
		[ -r "$f" ] || continue
		pid=${f#/proc/}
		pid=${pid%/cmdline}
		args=$(tr '\0' '\n' 2> /dev/null < "$f") || continue
		[[ $(head -n 1 <<< "$args") == *ivmcd ]] || continue
		grep -qxF -- "$1" <<< "$args" || continue
		grep -qx -e -s -e --socket <<< "$args" || continue
		echo "$pid"
	done
}

# ---- what the daemon says -------------------------------------------------
# The JSON of status.c has a fixed shape: one "daemon" object, then one
# object per channel, each with "rule_line" once and "ring_bytes_mod32"
# once per direction. grep is enough (and costs nothing per poll).
status_json() {
	"$IVMCCTL" -s "$IVMC_SOCKET" --json status 2> /dev/null
}

# accel_count: channels the daemon lists now (-1 when it does not answer)
accel_count() {
	local j
	j=$(status_json) || {
		echo -1
		return
	}
	grep -o '"rule_line":' <<< "$j" | wc -l
}

# paired_count: pairs the daemon has made since it started (a counter that
# only grows: it shows connections that were accelerated and have gone)
paired_count() {
	local j
	j=$(status_json) || {
		echo -1
		return
	}
	grep -o '"paired":[0-9]*' <<< "$j" | head -n 1 | cut -d: -f2
}

# ring_bytes: bytes through the rings of the channels listed now, both
# directions added (each mod 2^32)
ring_bytes() {
	local j
	j=$(status_json) || {
		echo -1
		return
	}
	grep -o '"ring_bytes_mod32":[0-9]*' <<< "$j" | cut -d: -f2 |
		awk '{ s += $1 } END { printf "%.0f\n", s }'
}

# ring_dirs_idle: directions of the listed channels through whose ring no
# byte has gone (0 when every direction has carried bytes on its ring)
ring_dirs_idle() {
	local j
	j=$(status_json) || {
		echo -1
		return
	}
	grep -o '"ring_bytes_mod32":[0-9]*' <<< "$j" | cut -d: -f2 | grep -cx 0
}

# One line for the log: the daemon's counters and the channels.
accel_summary() {
	local j
	j=$(status_json) || {
		echo "status: no answer"
		return
	}
	echo "status: channels=$(grep -o '"rule_line":' <<< "$j" | wc -l)" \
		"$(grep -o '"paired":[0-9]*' <<< "$j" | head -n 1)" \
		"$(grep -o '"pending":[0-9]*' <<< "$j" | head -n 1)" \
		"ring_bytes=[$(grep -o '"ring_bytes_mod32":[0-9]*' <<< "$j" | cut -d: -f2 | paste -sd' ' -)]" \
		"modes=[$(grep -o '"mode":"[a-z?]*"' <<< "$j" | cut -d'"' -f4 | paste -sd' ' -)]" \
		"stayed_on_tcp=$(grep -o '"stayed_on_tcp":{[^}]*}' <<< "$j" | cut -d: -f2- | tr -d '"{}')"
}

# ---- commands ---------------------------------------------------------------
# pl_cmd MODE [-n NETNS] CMD...: sets PL_CMD to the command line: under
# ivmc-run when MODE is ivmc (unless IVMC_PLAIN=1), as is when MODE is plain;
# inside NETNS with ip netns exec when given.
pl_cmd() {
	local mode=$1 ns=
	shift
	if [ "${1:-}" = -n ]; then
		ns=$2
		shift 2
	fi
	PL_CMD=()
	[ -n "$ns" ] && PL_CMD+=(ip netns exec "$ns")
	[ "$mode" = ivmc ] && ! plain && PL_CMD+=("$IVMC_RUN")
	PL_CMD+=("$@")
}

# run_ivmc [-n NETNS] CMD...: run CMD under ivmc-run; its exit status.
run_ivmc() {
	pl_cmd ivmc "$@"
	"${PL_CMD[@]}"
}

# run_plain [-n NETNS] CMD...: the same without ivmc-run.
run_plain() {
	pl_cmd plain "$@"
	"${PL_CMD[@]}"
}

# bg_ivmc / bg_plain [-n NETNS] CMD...: the same in the background; the
# pid (that of CMD itself: ip netns exec and ivmc-run exec) is in
# PL_LAST_PID and is killed at exit. Redirect the call to redirect CMD
# (standard input too: the explicit <&0 keeps bash from giving a
# background command /dev/null).
bg_ivmc() {
	pl_cmd ivmc "$@"
	"${PL_CMD[@]}" <&0 &
	PL_LAST_PID=$!
	PL_PIDS+=("$PL_LAST_PID")
}

bg_plain() {
	pl_cmd plain "$@"
	"${PL_CMD[@]}" <&0 &
	PL_LAST_PID=$!
	PL_PIDS+=("$PL_LAST_PID")
}

# wait_exit PID SECONDS: wait for a background PID at most SECONDS; its
# exit status, or 124 after killing it (and its children) on timeout.
wait_exit() {
	local pid=$1 secs=$2 i n
	n=$((secs * 20))
	for ((i = 0; i < n; i++)); do
		pl_alive "$pid" || break
		sleep 0.05
	done
	if pl_alive "$pid"; then
		pkill -KILL -P "$pid" 2> /dev/null
		kill -KILL "$pid" 2> /dev/null
		wait "$pid" 2> /dev/null
		return 124
	fi
	wait "$pid"
}

# wait_until SECONDS CMD...: run CMD every 50 ms until it succeeds, at most
# SECONDS; 0 when it did, 1 when time ran out.
wait_until() {
	local secs=$1 i n
	shift
	n=$((secs * 20))
	for ((i = 0; i < n; i++)); do
		"$@" && return 0
		sleep 0.05
	done
	"$@"
}

# ---- network ------------------------------------------------------------------
pl_ss() { # [NETNS] ss-args...
	local ns=$1
	shift
	if [ -n "$ns" ]; then
		ip netns exec "$ns" ss "$@"
	else
		ss "$@"
	fi
}

pl_listening() { # HOST PORT NETNS
	local out
	out=$(pl_ss "$3" -Hltn "sport = :$2" 2> /dev/null) || return 1
	[ -n "$out" ] || return 1
	case $1 in
	'' | 0.0.0.0 | '*') return 0 ;;
	esac
	grep -qF -e "$1:$2" -e "0.0.0.0:$2" -e "*:$2" <<< "$out"
}

# wait_port HOST PORT [NETNS]: until something listens on HOST:PORT
# (0.0.0.0 counts), at most 10 s; fails the test otherwise. Looks with
# ss(8): never connects (a one-shot server would take the connection).
wait_port() {
	wait_until 10 pl_listening "$1" "$2" "${3:-}" ||
		fail "nothing listens on $1:$2${3:+ in netns $3} after 10 s"
}

# free_port [NETNS]: a random TCP port in 20000-59999 nothing uses there
free_port() {
	local p i
	for ((i = 0; i < 50; i++)); do
		p=$((20000 + (RANDOM * 32768 + RANDOM) % 40000))
		if [ -z "$(pl_ss "${1:-}" -Htan "( sport = :$p or dport = :$p )" 2> /dev/null)" ]; then
			echo "$p"
			return 0
		fi
	done
	fail "no free port found"
}

# pairs_expected NAME EXPECT(accel|tcp) P0 P1 [MIN [HINT]]: the daemon's
# pair counter went from P0 to P1 over NAME. accel: it grew by MIN (1) at
# least, unless the run is plain; tcp: it did not move (a plain end must
# never be paired).
pairs_expected() {
	local name=$1 expect=$2 p0=$3 p1=$4 min=${5:-1} hint=${6:-}
	if [ "$expect" = accel ] && ! plain; then
		[ $((p1 - p0)) -ge "$min" ] ||
			fail "$name: want $min new pair(s) at least, the daemon made $((p1 - p0)) ($p0 -> $p1; $(accel_summary))$hint"
	fi
	if [ "$expect" = tcp ]; then
		[ "$p1" -eq "$p0" ] || fail "$name: the daemon paired a connection with a plain end ($p0 -> $p1)"
	fi
}

# netns_pair: two namespaces NS_A and NS_B (names with our pid) joined by
# a veth pair, IP_A and IP_B on it (10.x), lo up in both; removed at exit.
netns_pair() {
	[ "$(id -u)" -eq 0 ] || skip "netns_pair needs root"
	command -v ip > /dev/null 2>&1 || skip "ip (iproute2) missing"
	NS_A=ivpl-$$-a
	NS_B=ivpl-$$-b
	IP_A=10.203.$(($$ % 250)).1
	IP_B=10.203.$(($$ % 250)).2
	local va=ivpl$$a vb=ivpl$$b
	ip netns add "$NS_A" || skip "cannot create network namespaces"
	PL_NETNS+=("$NS_A")
	ip netns add "$NS_B" || fail "ip netns add $NS_B"
	PL_NETNS+=("$NS_B")
	ip link add "$va" netns "$NS_A" type veth peer name "$vb" netns "$NS_B" ||
		fail "cannot create a veth pair"
	ip -n "$NS_A" addr add "$IP_A/24" dev "$va" || fail "addr $IP_A"
	ip -n "$NS_B" addr add "$IP_B/24" dev "$vb" || fail "addr $IP_B"
	{ ip -n "$NS_A" link set lo up && ip -n "$NS_A" link set "$va" up &&
		ip -n "$NS_B" link set lo up && ip -n "$NS_B" link set "$vb" up; } ||
		fail "cannot bring the links up"

	say "netns $NS_A ($IP_A) <-> $NS_B ($IP_B)"
}

# ---- data ---------------------------------------------------------------------
# rand_file PATH MIB: MIB MiB of random bytes
rand_file() {
	head -c "$(($2 * 1024 * 1024))" /dev/urandom > "$1" || fail "cannot write $1"
}

sha_of() { sha256sum < "$1" | cut -d' ' -f1; }

# file_size FILE: its size in bytes (0 when missing); size_is FILE N
file_size() { stat -c %s "$1" 2> /dev/null || echo 0; }
size_is() { [ "$(file_size "$1")" = "$2" ]; }

# got_all_or_exited FILE N PID: FILE has N bytes, or PID (the receiver)
# has exited: a wait that stops early when the receiver died
got_all_or_exited() { size_is "$1" "$2" || ! pl_alive "$3"; }
