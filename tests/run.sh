#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# Description: run test programs one by one, each under a timeout, in the
# shape of liburing's test/runtests.sh.
#
# usage: tests/run.sh TESTDIR [NAME...]
#
# Runs every executable in TESTDIR (or only the NAMEs given). A test exits 0
# (pass), 77 (skip; its last line on stderr is the reason) or anything else
# (fail). Output of each test goes to $IVMC_TEST_LOGDIR/NAME.log (default
# TESTDIR/../test-logs); a failing test's last 30 lines are printed too,
# after its first failure messages (lines "file.c:LINE: ..." and "FAIL ...")
# when those are further up: in a test of many cases the cause is often
# above the tail.
# The last line printed is exactly "N passed, N failed".
#
# Environment:
#   IVMC_TEST_TIMEOUT  seconds per test (default 120)
#   IVMC_TEST_FILTER   run only tests whose name contains this string
#   IVMC_TEST_LOGDIR   where the logs go
#   IVMC_TEST_WRAPPER  command put in front of each test (e.g. "valgrind -q")
#   IVMC_LONG          passed through: tests may run longer variants

set -u

die() {
	echo "run.sh: $*" >&2
	echo "0 passed, 1 failed"
	exit 2
}

[ $# -ge 1 ] || die "usage: run.sh TESTDIR [NAME...]"
testdir=${1%/}
shift
[ -d "$testdir" ] || die "$testdir: no such directory"

timeout_s=${IVMC_TEST_TIMEOUT:-120}
filter=${IVMC_TEST_FILTER:-}
logdir=${IVMC_TEST_LOGDIR:-$(dirname "$testdir")/test-logs}
read -r -a wrapper <<< "${IVMC_TEST_WRAPPER:-}"
mkdir -p "$logdir" || die "cannot create $logdir"

# The list of tests: the NAMEs given, or every executable file in TESTDIR.
tests=()
if [ $# -gt 0 ]; then
	for name in "$@"; do
		name=${name##*/}
		[ -x "$testdir/$name" ] || die "$testdir/$name: not an executable test"
		tests+=("$name")
	done
else
	for path in "$testdir"/*; do
		[ -f "$path" ] && [ -x "$path" ] && tests+=("${path##*/}")
	done
fi

passed=0
failed=0
skipped=0
failed_names=()
cur_pgid=
exec 9>&2	# the console's stderr, for the signal trap (fd 2 may be muted)

now_ns() { date +%s%N; }

# Ctrl-C or a kill of the runner also ends the running test and its children.
on_signal() {
	[ -n "$cur_pgid" ] && kill -KILL -- "-$cur_pgid" 2>/dev/null
	echo "run.sh: interrupted" >&9
	echo "$passed passed, $((failed + 1)) failed"
	exit 130
}
trap on_signal INT TERM HUP

# Run one test. Its stdout goes straight to the log; its stderr goes through
# a FIFO into tee, which writes it both to the log and to a file of its own
# (the SKIP reason is the last line of that file). No pipe is left for a
# stray child to hold open: timeout(1) puts the test in a process group of
# its own (pgid = timeout's pid), and we kill what is left of that group once
# the test has exited, before waiting for tee.
run_one() {
	local name=$1 log=$2 errf=$3 fifo=$4 tee_pid rc i

	: > "$log"
	rm -f "$fifo"
	mkfifo "$fifo" || return 125
	tee -a "$log" < "$fifo" > "$errf" 9>&- &
	tee_pid=$!

	timeout -s TERM -k 10 "$timeout_s" "${wrapper[@]}" "$testdir/$name" \
		< /dev/null >> "$log" 2> "$fifo" 9>&- &
	cur_pgid=$!
	# (braces: keeps bash's "Segmentation fault" job notice off the console)
	{ wait "$cur_pgid"; } 2>/dev/null
	rc=$?
	kill -KILL -- "-$cur_pgid" 2>/dev/null
	cur_pgid=

	# A child that escaped the group may still hold stderr: give tee 2 s.
	for ((i = 0; i < 100; i++)); do
		kill -0 "$tee_pid" 2>/dev/null || break
		sleep 0.02
	done
	kill "$tee_pid" 2>/dev/null
	wait "$tee_pid" 2>/dev/null
	rm -f "$fifo"
	return "$rc"
}

signame() {
	local s
	s=$(kill -l "$1" 2>/dev/null) && echo "SIG$s" || echo "signal $1"
}

tmpdir=$(mktemp -d "${TMPDIR:-/tmp}/ivmc-run.XXXXXX") || die "mktemp failed"
trap 'rm -rf "$tmpdir"' EXIT

for name in "${tests[@]}"; do
	[ -n "$filter" ] && [[ $name != *"$filter"* ]] && continue

	log=$logdir/$name.log
	errf=$tmpdir/$name.stderr
	start=$(now_ns)
	run_one "$name" "$log" "$errf" "$tmpdir/fifo"
	rc=$?
	end=$(now_ns)
	ms=$(((end - start) / 1000000))
	secs=$(printf '%d.%d' $((ms / 1000)) $((ms % 1000 / 100)))

	if [ $rc -eq 0 ]; then
		echo "PASS $name (${secs}s)"
		passed=$((passed + 1))
	elif [ $rc -eq 77 ]; then
		reason=$(grep -v '^[[:space:]]*$' "$errf" | tail -n 1)
		echo "SKIP $name: ${reason:-no reason given}"
		skipped=$((skipped + 1))
	else
		why="rc=$rc"
		if [ $rc -eq 124 ]; then
			why="rc=$rc, timed out after ${timeout_s}s"
		elif [ $rc -eq 137 ] && [ "$ms" -ge $((timeout_s * 1000)) ]; then
			why="rc=$rc, killed after timing out (${timeout_s}s + 10s)"
		elif [ $rc -gt 128 ] && [ $rc -lt 160 ]; then
			why="rc=$rc, $(signame $((rc - 128)))"
		fi
		echo "FAIL $name ($why) after ${secs}s, log: $log"
		nlines=$(wc -l < "$log")
		if [ "$nlines" -gt 30 ]; then
			head -n $((nlines - 30)) "$log" |
				grep -E -m 5 '^(FAIL |[^ :]+\.[ch]:[0-9]+: )' |
				sed 's/^/    ! /'
		fi
		tail -n 30 "$log" | sed 's/^/    | /'
		failed=$((failed + 1))
		failed_names+=("$name")
	fi
done

total=$((passed + failed + skipped))
if [ $total -eq 0 ]; then
	# shellcheck disable=SC2016 # $filter does expand: the quotes are literal
	echo "run.sh: no tests ran (dir $testdir${filter:+, filter '$filter'})" >&2
	echo "0 passed, 0 failed"
	exit 1
fi
[ $failed -gt 0 ] && echo "failed: ${failed_names[*]}"
[ $skipped -gt 0 ] && echo "$skipped skipped"
echo "$passed passed, $failed failed"
[ $failed -eq 0 ]
