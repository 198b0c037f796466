#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# Description: redis under ivmc-run (issue 4, transparent preload): a
# private redis-server (random port, no persistence) and its own clients,
# all under ivmc-run.
#   - a redis-cli kept open as a coprocess answers PING, and while it is
#     connected `ivmcctl --json status` lists a channel with bytes through
#     its rings, in both directions after 20 more PINGs;
#   - redis-benchmark -t set,get -n 20000 with -c 1, -c 50 and -c 50 -P 16
#     exits 0 and reports both rates; the daemon's pair counter grows by at
#     least the number of connections (-c);
#   - 50 keys of 40 KiB of random bytes (2 MiB) stored with `redis-cli -x
#     set` and read back with `redis-cli --raw get` are identical; nine in
#     ten of these short connections at least are paired (one may close
#     before ivmcd looks at its socket).
#   - across two network namespaces joined by a veth pair (root only): a
#     second redis-server in one, redis-benchmark -c 1 and -c 50 -P 16 and
#     10 values of 40 KiB stored and read back from the other, all under
#     ivmc-run; the connections are paired.
# With IVMC_PLAIN=1 nothing runs under ivmc-run and only the data is checked.

# shellcheck disable=SC2119 # optional arguments of free_port, pl_daemon_start
# preload-lib.bash is beside this script, in tests/ and in the build's
# tests/ (make copies it there).
# shellcheck source=tests/preload-lib.bash
. "$(dirname "$0")/preload-lib.bash" || exit 1

pl_init
pl_need_cmd redis-server redis-server
pl_need_cmd redis-cli redis-tools
pl_need_cmd redis-benchmark redis-tools
pl_need_preload
pl_daemon_start

NKEYS=50
VALUE=40960
NREQ=20000
long && NREQ=200000

PORT=$(free_port)
bg_ivmc redis-server --port "$PORT" --bind 127.0.0.1 --save '' \
	--appendonly no --protected-mode no --daemonize no --dir "$PL_DIR" \
	--logfile "$PL_DIR/redis-server.log"
SPID=$PL_LAST_PID
wait_port 127.0.0.1 "$PORT"
say "redis-server pid $SPID on port $PORT"

alive_or_fail() {
	pl_alive "$SPID" || fail "redis-server died ($1)"
}

# ---- 1: a connection held open ------------------------------------------------
p0=$(paired_count)
pl_cmd ivmc redis-cli -p "$PORT"
coproc CLI { exec "${PL_CMD[@]}" 2> "$PL_DIR/redis-cli-held.log"; }
# shellcheck disable=SC2153 # CLI_PID: set by coproc
cli_pid=$CLI_PID # bash unsets CLI_PID once the coprocess is reaped
PL_PIDS+=("$cli_pid")
cli_in=${CLI[1]}
cli_out=${CLI[0]}

# ping: one PING on the held connection, PONG within 5 s
ping() {
	local line
	echo PING >&"$cli_in" || fail "held redis-cli: cannot write (it exited?)"
	read -t 5 -r line <&"$cli_out" || fail "held redis-cli: no answer to PING within 5 s"
	[ "$line" = PONG ] || fail "held redis-cli: PING answered '$line'"
}

ping
if ! plain; then
	# Up to 5 s for the connection to move to a channel: a PING each
	# 50 ms until its bytes go through a ring.
	for ((i = 0; i < 100; i++)); do
		[ "$(accel_count)" -ge 1 ] && [ "$(ring_bytes)" -gt 0 ] && break
		ping
		sleep 0.05
	done
	say "held connection, after $i extra PINGs: $(accel_summary)"
	[ "$(accel_count)" -ge 1 ] || fail "no channel listed while redis-cli is connected to redis-server"
	[ "$(ring_bytes)" -gt 0 ] || fail "a channel, but no PING/PONG went through its rings"
else
	say "held connection: $(accel_summary)"
fi
for ((i = 0; i < 20; i++)); do ping; done
if ! plain; then
	say "held connection, after 20 more PINGs: $(accel_summary)"
	[ "$(accel_count)" -eq 1 ] || fail "one connection, but $(accel_count) channels"
	[ "$(ring_dirs_idle)" -eq 0 ] ||
		fail "21 PINGs and PONGs, but a direction of the channel has carried nothing on its ring"
fi
exec {cli_in}>&-
wait_exit "$cli_pid" 10 || fail "held redis-cli did not exit at end of input"
alive_or_fail "after the held connection"

# ---- 2: redis-benchmark ------------------------------------------------------------
bench() { # NAME CONNECTIONS ARGS...
	local name=$1 c=$2 out=$PL_DIR/bench-$1.out p0 p1 rc t0 t1
	shift 2
	p0=$(paired_count)
	t0=$(date +%s%N)
	timeout 40 "$IVMC_RUN_OR_NOT" redis-benchmark -h 127.0.0.1 -p "$PORT" \
		-n "$NREQ" -t set,get -q "$@" > "$out" 2> "$PL_DIR/bench-$name.log"
	rc=$?
	t1=$(date +%s%N)
	tr '\r' '\n' < "$out" | grep -a 'requests per second' |
		sed "s/^/  $name: /"
	[ $rc -eq 0 ] || fail "redis-benchmark $name exited $rc (124: still running after 40 s)"
	grep -aq '^SET: .*requests per second' <(tr '\r' '\n' < "$out") ||
		fail "redis-benchmark $name: no SET result"
	grep -aq '^GET: .*requests per second' <(tr '\r' '\n' < "$out") ||
		fail "redis-benchmark $name: no GET result"
	p1=$(paired_count)
	say "bench $name: $(((t1 - t0) / 1000000)) ms, pairs $p0 -> $p1"
	if ! plain; then
		[ $((p1 - p0)) -ge "$c" ] ||
			fail "redis-benchmark $name: $c connections, but only $((p1 - p0)) pairs made ($(accel_summary))"
	fi
	alive_or_fail "after redis-benchmark $name"
}

# timeout(1) needs a program: ivmc-run, or env when plain
if plain; then
	IVMC_RUN_OR_NOT="env"
else
	IVMC_RUN_OR_NOT=$IVMC_RUN
fi
bench c1 1 -c 1
bench c50 50 -c 50
bench c50-P16 50 -c 50 -P 16

# ---- 3: big random values stored and read back ----------------------------
p0=$(paired_count)
for ((i = 0; i < NKEYS; i++)); do
	head -c "$VALUE" /dev/urandom > "$PL_DIR/v$i.bin"
	out=$(timeout 10 "$IVMC_RUN_OR_NOT" redis-cli -p "$PORT" -x set "big:$i" \
		< "$PL_DIR/v$i.bin" 2>&1) || fail "redis-cli -x set big:$i failed: $out"
	[ "$out" = OK ] || fail "redis-cli -x set big:$i answered '$out'"
done
for ((i = 0; i < NKEYS; i++)); do
	timeout 10 "$IVMC_RUN_OR_NOT" redis-cli -p "$PORT" --raw get "big:$i" \
		> "$PL_DIR/g$i.bin" 2> "$PL_DIR/get.log" ||
		fail "redis-cli get big:$i failed: $(cat "$PL_DIR/get.log")"
	# --raw prints the value and a newline
	size_is "$PL_DIR/g$i.bin" $((VALUE + 1)) ||
		fail "get big:$i: $(file_size "$PL_DIR/g$i.bin") bytes, expected $VALUE and a newline"
	head -c "$VALUE" "$PL_DIR/g$i.bin" | cmp -s - "$PL_DIR/v$i.bin" ||
		fail "get big:$i: the value read back differs from the one stored ($(head -c "$VALUE" "$PL_DIR/g$i.bin" | cmp - "$PL_DIR/v$i.bin" 2>&1))"
done
p1=$(paired_count)
say "$NKEYS values of $VALUE bytes stored and read back intact, pairs $p0 -> $p1"
if ! plain; then
	# Each of these connections lives a few milliseconds: one may be
	# closed before ivmcd has looked at its socket (it then stays on
	# TCP, counted as not_tcp). Most must still be paired.
	[ $((p1 - p0)) -ge $((2 * NKEYS * 9 / 10)) ] ||
		fail "$((2 * NKEYS)) redis-cli connections, but only $((p1 - p0)) pairs made ($(accel_summary))"
	[ $((p1 - p0)) -ge $((2 * NKEYS)) ] ||
		say "note: $((2 * NKEYS - p1 + p0)) of $((2 * NKEYS)) short redis-cli connections stayed on TCP"
fi
alive_or_fail "after the values"

# ---- 4: across two namespaces joined by a veth pair ------------------------
if [ "$(id -u)" -eq 0 ]; then
	netns_pair
	NPORT=$(free_port "$NS_A")
	pl_cmd ivmc -n "$NS_A" redis-server --port "$NPORT" --bind "$IP_A" \
		--save '' --appendonly no --protected-mode no --daemonize no \
		--dir "$PL_DIR" --logfile "$PL_DIR/redis-server-ns.log"
	"${PL_CMD[@]}" < /dev/null &
	NSPID=$!
	PL_PIDS+=("$NSPID")
	wait_port "$IP_A" "$NPORT" "$NS_A"
	say "redis-server pid $NSPID in $NS_A on $IP_A:$NPORT"
	for args in "-c 1" "-c 50 -P 16"; do
		read -r -a argv <<< "$args"
		p0=$(paired_count)
		pl_cmd ivmc -n "$NS_B" redis-benchmark -h "$IP_A" -p "$NPORT" \
			-n "$NREQ" -t set,get -q "${argv[@]}"
		out=$PL_DIR/bench-ns.out
		timeout 40 "${PL_CMD[@]}" > "$out" 2> "$PL_DIR/bench-ns.log" ||
			fail "redis-benchmark $args across namespaces failed: $(head -c 300 "$PL_DIR/bench-ns.log")"
		tr '\r' '\n' < "$out" | grep -a 'requests per second' |
			sed "s/^/  netns $args: /"
		grep -aq '^GET: .*requests per second' <(tr '\r' '\n' < "$out") ||
			fail "redis-benchmark $args across namespaces: no GET result"
		p1=$(paired_count)
		c=${args#-c }
		c=${c%% *}
		if ! plain; then
			[ $((p1 - p0)) -ge "$c" ] ||
				fail "redis-benchmark $args across namespaces: $c connections, but only $((p1 - p0)) pairs made ($(accel_summary))"
		fi
		say "netns bench $args: pairs $p0 -> $p1"
	done
	p0=$(paired_count)
	for ((i = 0; i < 10; i++)); do
		pl_cmd ivmc -n "$NS_B" redis-cli -h "$IP_A" -p "$NPORT" -x set "ns:$i"
		out=$(timeout 10 "${PL_CMD[@]}" < "$PL_DIR/v$i.bin" 2>&1) ||
			fail "across namespaces: set ns:$i failed: $out"
		[ "$out" = OK ] || fail "across namespaces: set ns:$i answered '$out'"
		pl_cmd ivmc -n "$NS_B" redis-cli -h "$IP_A" -p "$NPORT" --raw get "ns:$i"
		timeout 10 "${PL_CMD[@]}" > "$PL_DIR/n$i.bin" 2> "$PL_DIR/get.log" ||
			fail "across namespaces: get ns:$i failed: $(cat "$PL_DIR/get.log")"
		head -c "$VALUE" "$PL_DIR/n$i.bin" | cmp -s - "$PL_DIR/v$i.bin" ||
			fail "across namespaces: the value of ns:$i read back differs"
	done
	p1=$(paired_count)
	say "across namespaces: 10 values of $VALUE bytes stored and read back intact, pairs $p0 -> $p1"
	if ! plain; then
		[ $((p1 - p0)) -ge 18 ] ||
			fail "across namespaces: 20 redis-cli connections, but only $((p1 - p0)) pairs made ($(accel_summary))"
	fi
	pl_alive "$NSPID" || fail "the redis-server across namespaces died"
else
	say "across namespaces: skipped (needs root)"
fi
alive_or_fail "at the end"
say "$(accel_summary)"
say "all checks passed"
