#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# Description: run one test under valgrind memcheck; the IVMC_TEST_WRAPPER
# of make check-valgrind (mk/valgrind.mk).
#
# usage: tests/valgrind/wrap.sh TEST [ARGS...]
#
# Every process of the test is checked: forked children always, programs of
# ours it execs (ivmcd, ivmcctl, ivmc-hostile, ivmc-run and what ivmc-run
# runs) through --trace-children; system programs (/bin, /sbin, /usr: sh,
# ip, python3...) run natively. The test fails (exit 99) when any process
# reports a memory error or a definite or indirect leak, even one the test
# never waits for (the daemon); the lines of those processes are then
# printed on stderr. Otherwise the test's own status is kept (0, 77 for a
# skip, or its failure).
#
# All processes log into one FIFO, read into IVMC_VG_LOGDIR/TEST.vg.log
# (every line starts with ==PID==): a per-process --log-file=%p would be
# truncated when the process execs (valgrind reopens it), losing what went
# before, and a FIFO is opened by path, so it costs the test no fd and
# works for a test's children of another uid.
#
# No suppressions are needed today; one would go in a file given through
# VALGRIND_FLAGS=--suppressions=FILE, with why it is not ours.
#
# Environment: IVMC_VG_LOGDIR (default /tmp/ivmc-valgrind), VALGRIND
# (default valgrind), VALGRIND_FLAGS (added last).

set -u

[ $# -ge 1 ] || { echo "usage: wrap.sh TEST [ARGS...]" >&2; exit 2; }
name=$(basename "$1")
logdir=${IVMC_VG_LOGDIR:-/tmp/ivmc-valgrind}
mkdir -p "$logdir" || exit 2
log=$logdir/$name.vg.log
fifo=$(mktemp -u "${TMPDIR:-/tmp}/ivmc-vg.XXXXXX")
mkfifo -m 666 "$fifo" || exit 2
# (a timeout's SIGTERM reaches the whole group: valgrind, then us)
trap 'rm -f "$fifo"' EXIT
trap 'exit 143' TERM INT HUP
# fd 8 (read-write) keeps the FIFO open until the test is over, so that
# the reader sees no end of file between two processes.
exec 8<> "$fifo"
cat "$fifo" > "$log" 8>&- &
reader=$!

# The control-plane hello and the timers of the tests are sized for native
# speed; valgrind is 20-50x slower (t_daemon_start() keeps a value set here).
export IVMC_CTL_BUDGET_US=${IVMC_CTL_BUDGET_US:-10000000}

# --vgdb=no: no gdbserver FIFOs in $TMPDIR, which a test's child of another
# uid may not write. No --track-fds: valgrind 3.19 only lists the fds open
# at exit (never an error), and tests and the daemon exit with fds open.
read -r -a extra <<< "${VALGRIND_FLAGS:-}"
"${VALGRIND:-valgrind}" --tool=memcheck \
	--error-exitcode=99 --vgdb=no \
	--leak-check=full --show-leak-kinds=definite,indirect \
	--errors-for-leak-kinds=definite,indirect \
	--trace-children=yes \
	--trace-children-skip='/bin/*,/sbin/*,/usr/*' \
	--child-silent-after-fork=no \
	--log-file="$fifo" \
	"${extra[@]}" "$@" 8>&-
rc=$?

# The reader ends when the last writer has gone: bounded, a child that
# outlives the test (run.sh kills it right after) must not stop us.
exec 8>&-
for ((i = 0; i < 250; i++)); do
	kill -0 "$reader" 2> /dev/null || break
	sleep 0.02
done
kill "$reader" 2> /dev/null
wait "$reader" 2> /dev/null

# Memcheck's error headings (a process killed by SIGKILL writes no ERROR
# SUMMARY, so the headings are looked for, not only the summary). Warnings
# (an ioctl valgrind does not know, a large mmap) are not errors.
errs='Invalid (read|write|free)|Conditional jump|Use of uninitialised'
errs+='|Syscall param|Mismatched free|Source and destination overlap'
errs+='|Argument .* of function|Jump to the invalid address'
errs+='|are (definitely|indirectly) lost|ERROR SUMMARY: [1-9]'
mapfile -t pids < <(grep -E "^==[0-9]+== .*($errs)" "$log" |
	sed 's/^==\([0-9]*\)==.*/\1/' | sort -un)
if [ ${#pids[@]} -gt 0 ]; then
	for p in "${pids[@]}"; do
		echo "---- valgrind: process $p" >&2
		grep "^==$p==" "$log" >&2
	done
	echo "valgrind: errors in ${#pids[@]} process(es) of $name (test rc=$rc), log: $log" >&2
	exit 99
fi
exit "$rc"
