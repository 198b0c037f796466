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

# ---- 2 and 3: redis-benchmark, big values -------------------------------------
# The clients below talk to R_HOST:R_PORT from namespace R_NS ("": ours);
# section 4 points them across namespaces.
R_HOST=127.0.0.1
R_PORT=$PORT
R_NS=

# redis_tool SECONDS PROG ARGS...: PROG (redis-cli, redis-benchmark) at
# R_HOST:R_PORT in R_NS, under ivmc-run unless plain, at most SECONDS.
redis_tool() {
	local secs=$1 prog=$2
	shift 2
	pl_cmd ivmc ${R_NS:+-n "$R_NS"} "$prog" -h "$R_HOST" -p "$R_PORT" "$@"
	timeout "$secs" "${PL_CMD[@]}"
}

bench() { # NAME CONNECTIONS ARGS...
	local name=$1 c=$2 out=$PL_DIR/bench-$1.out p0 p1 rc t0 t1
	shift 2
	p0=$(paired_count)
	t0=$(date +%s%N)
	redis_tool 40 redis-benchmark -n "$NREQ" -t set,get -q "$@" > "$out" \
		2> "$PL_DIR/bench-$name.log"
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
	# The SET and the GET run open c connections each: at least half of
	# the 2c on channels. A pipelined run can end in tens of ms, before a
	# busy daemon (a loaded CI machine) pairs its last connections; those
	# stay TCP, correctly (the values are checked either way).
	pairs_expected "redis-benchmark $name ($((2 * c)) connections)" accel "$p0" "$p1" "$c"
}

# values N PREFIX: N values of VALUE random bytes stored with `redis-cli -x
# set`, then read back with `redis-cli --raw get`, each identical.
values() {
	local n=$1 key=$2 i out p0 p1
	p0=$(paired_count)
	for ((i = 0; i < n; i++)); do
		[ -e "$PL_DIR/v$i.bin" ] || head -c "$VALUE" /dev/urandom > "$PL_DIR/v$i.bin"
		out=$(redis_tool 10 redis-cli -x set "$key:$i" < "$PL_DIR/v$i.bin" 2>&1) ||
			fail "redis-cli -x set $key:$i failed: $out"
		[ "$out" = OK ] || fail "redis-cli -x set $key:$i answered '$out'"
	done
	for ((i = 0; i < n; i++)); do
		redis_tool 10 redis-cli --raw get "$key:$i" > "$PL_DIR/g$i.bin" \
			2> "$PL_DIR/get.log" ||
			fail "redis-cli get $key:$i failed: $(cat "$PL_DIR/get.log")"
		# --raw prints the value and a newline
		size_is "$PL_DIR/g$i.bin" $((VALUE + 1)) ||
			fail "get $key:$i: $(file_size "$PL_DIR/g$i.bin") bytes, expected $VALUE and a newline"
		head -c "$VALUE" "$PL_DIR/g$i.bin" | cmp -s - "$PL_DIR/v$i.bin" ||
			fail "get $key:$i: the value read back differs from the one stored ($(head -c "$VALUE" "$PL_DIR/g$i.bin" | cmp - "$PL_DIR/v$i.bin" 2>&1))"
	done
	p1=$(paired_count)
	say "$n values of $VALUE bytes ($key) stored and read back intact, pairs $p0 -> $p1"
	# Each of these connections lives a few milliseconds: one may be
	# closed before ivmcd has looked at its socket (it then stays on
	# TCP, counted as not_tcp). Most must still be paired.
	pairs_expected "$((2 * n)) redis-cli connections ($key)" accel "$p0" "$p1" $((2 * n * 9 / 10))
	plain || [ $((p1 - p0)) -ge $((2 * n)) ] ||
		say "note: $((2 * n - p1 + p0)) of $((2 * n)) short redis-cli connections stayed on TCP"
}

bench c1 1 -c 1
alive_or_fail "after redis-benchmark c1"
bench c50 50 -c 50
alive_or_fail "after redis-benchmark c50"
bench c50-P16 50 -c 50 -P 16 -n $((NREQ * 5)) # pipelined: as long as the others
alive_or_fail "after redis-benchmark c50-P16"
values "$NKEYS" big
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
	say "redis-server pid $NSPID in $NS_A on $IP_A:$NPORT, clients in $NS_B"
	R_HOST=$IP_A
	R_PORT=$NPORT
	R_NS=$NS_B
	bench ns-c1 1 -c 1
	bench ns-c50-P16 50 -c 50 -P 16 -n $((NREQ * 5))
	values 10 ns
	pl_alive "$NSPID" || fail "the redis-server across namespaces died"
else
	say "across namespaces: skipped (needs root)"
fi
alive_or_fail "at the end"
say "$(accel_summary)"
say "all checks passed"
