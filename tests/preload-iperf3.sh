#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# Description: iperf3 under ivmc-run (issue 4, transparent preload): one
# iperf3 server on 127.0.0.1 and three 2-second client runs, all under
# ivmc-run: a single stream, -P 4 and -R (the server sends). Each run must
# exit 0 with JSON output (-J) that reports no error and, per stream and in
# sum, bytes received > 0, no more than were sent and at least 90 % of them
# (the rest was still in flight when the run ended). A second into each
# run `ivmcctl --json status` must list a channel for the control
# connection and each stream, with megabytes through their rings.
# Then across two network namespaces joined by a veth pair (root only,
# else skipped with a note): a second iperf3 server under ivmc-run in one,
# bound to its veth address, and the same three runs under ivmc-run from
# the other, with the same checks.
# With IVMC_PLAIN=1 nothing runs under ivmc-run and only the counts are
# checked.

# shellcheck disable=SC2119 # optional arguments of free_port, pl_daemon_start
# preload-lib.bash is beside this script, in tests/ and in the build's
# tests/ (make copies it there).
# shellcheck source=tests/preload-lib.bash
. "$(dirname "$0")/preload-lib.bash" || exit 1

pl_init
pl_need_cmd iperf3 iperf3
pl_need_cmd python3 python3
pl_need_preload
pl_daemon_start

SECS=2
long && SECS=10

# server_start NAME HOST [NETNS]: an iperf3 server under ivmc-run bound to
# HOST (inside NETNS when given) on a free port; the runs below go to it:
# S_HOST, S_PORT, S_NS, its pid in SPID.
server_start() {
	local name=$1
	S_HOST=$2
	S_NS=${3:-}
	S_PORT=$(free_port "$S_NS")
	bg_ivmc ${S_NS:+-n "$S_NS"} iperf3 -s -B "$S_HOST" -p "$S_PORT" \
		> "$PL_DIR/$name.log" 2>&1
	SPID=$PL_LAST_PID
	wait_port "$S_HOST" "$S_PORT" "$S_NS"
	say "$name: iperf3 -s pid $SPID on $S_HOST:$S_PORT${S_NS:+ in $S_NS}"
}

# check_json FILE: the run's numbers on one line; exit status 1 (and the
# reason) when they are wrong
cat > "$PL_DIR/check.py" << 'EOF'
import json, sys
try:
    d = json.load(open(sys.argv[1]))
except ValueError as e:
    sys.exit(f"output is not JSON: {e}")
if d.get("error"):
    sys.exit(f"iperf3 reports an error: {d['error']}")
e = d.get("end", {})
if "sum_sent" not in e or "sum_received" not in e:
    sys.exit("no sum_sent/sum_received in the JSON end section")
rows = [("sum", e["sum_sent"]["bytes"], e["sum_received"]["bytes"])]
for i, s in enumerate(e.get("streams", [])):
    rows.append((f"stream{i}", s["sender"]["bytes"], s["receiver"]["bytes"]))
want = int(sys.argv[2])
if len(rows) - 1 != want:
    sys.exit(f"{len(rows) - 1} streams reported, {want} expected")
msg = " ".join(f"{n}: sent {a} received {b}" for n, a, b in rows)
print(msg)
for n, sent, got in rows:
    if got <= 0 or sent <= 0:
        sys.exit(f"{n}: nothing transferred ({msg})")
    if got > sent:
        sys.exit(f"{n}: received {got} bytes, more than the {sent} sent ({msg})")
    if got < sent * 0.9:
        sys.exit(f"{n}: received {got} bytes, under 90 % of the {sent} sent ({msg})")
EOF

# run NAME STREAMS [-n NETNS] ARGS...: an iperf3 client under ivmc-run
# (inside NETNS when given) to the server of server_start, checked
run() {
	local name=$1 streams=$2 out=$PL_DIR/$1.json ns="" cpid rc n rb
	shift 2
	if [ "${1:-}" = -n ]; then
		ns=$2
		shift 2
	fi
	say "== $name: iperf3 -t $SECS $*${ns:+ from $ns}"
	bg_ivmc ${ns:+-n "$ns"} iperf3 -c "$S_HOST" -p "$S_PORT" -t "$SECS" -J "$@" \
		> "$out" 2> "$PL_DIR/$name.log"
	cpid=$PL_LAST_PID
	sleep 1
	n=$(accel_count)
	rb=$(ring_bytes)
	say "$name: after 1 s: $(accel_summary)"
	rc=0
	wait_exit "$cpid" $((SECS + 20)) || rc=$?
	[ $rc -eq 0 ] || {
		head -c 2000 "$out"
		fail "$name: iperf3 client exited $rc (124: still running after $((SECS + 20)) s)"
	}
	python3 "$PL_DIR/check.py" "$out" "$streams" > "$PL_DIR/$name.check" 2>&1 || {
		grep -a '"error"' "$out"
		fail "$name: $(tail -n 1 "$PL_DIR/$name.check")"
	}
	say "$name: $(cat "$PL_DIR/$name.check")"
	if ! plain; then
		[ "$n" -ge $((streams + 1)) ] ||
			fail "$name: control connection and $streams streams, but $n channels listed after 1 s"
		[ "$rb" -ge 1048576 ] ||
			fail "$name: only $rb bytes through the rings after 1 s"
	fi
	pl_alive "$SPID" || fail "$name: the iperf3 server died"
}

server_start iperf3-server 127.0.0.1
run single 1
run parallel4 4 -P 4
run reverse 1 -R
say "$(accel_summary)"

# ---- across two namespaces joined by a veth pair ------------------------
if [ "$(id -u)" -eq 0 ]; then
	netns_pair
	server_start iperf3-server-ns "$IP_A" "$NS_A"
	run ns-single 1 -n "$NS_B"
	run ns-parallel4 4 -n "$NS_B" -P 4
	run ns-reverse 1 -n "$NS_B" -R
	say "$(accel_summary)"
else
	say "across namespaces: skipped (needs root)"
fi
say "all runs passed"
