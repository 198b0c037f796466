#!/bin/bash
# SPDX-License-Identifier: MIT
# Description: run the full ivmc-bench (latency, throughput, idle cost, CPU
# contention, and TCP across network namespaces when root), then
# ivmc-ctlbench (the control plane: connection set-up, time to attach,
# ivmcd at 10k channels), and keep the markdown and JSON of each under
# bench/results/, named by date and time (the second with "-ctl").
#
# usage: bench/run.sh [extra ivmc-bench options, e.g. --quick or -R 9]
#        (--quick is passed on to ivmc-ctlbench too)
# env:   IVMC_BENCH=path/to/ivmc-bench (default: build/bin/ivmc-bench,
#        built with make when missing)
#        IVMC_CTLBENCH=path/to/ivmc-ctlbench (default: next to it), or
#        IVMC_CTLBENCH=none to skip it; CTLBENCH_ARGS: extra options for it
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
top=$(dirname "$here")
bin=${IVMC_BENCH:-$top/build/bin/ivmc-bench}
ctl=${IVMC_CTLBENCH:-$(dirname "$bin")/ivmc-ctlbench}
out=$here/results

if [ ! -x "$bin" ] || { [ "$ctl" != none ] && [ ! -x "$ctl" ]; }; then
	make -C "$top" -s tools >&2
fi
for b in "$bin" "$ctl"; do
	if [ "$b" != none ] && [ ! -x "$b" ]; then
		echo "run.sh: $b: not built" >&2
		exit 1
	fi
done

args=(--idle 10 --hog)
if [ "$(id -u)" -eq 0 ] && command -v ip >/dev/null; then
	args+=(--netns)
else
	echo "run.sh: not root (or no ip): tcp-netns is skipped" >&2
fi

mkdir -p "$out"
stamp=$(date +%Y-%m-%d-%H%M%S)
md=$out/$stamp.md
json=$out/$stamp.json

# The full run takes a few minutes; the watchdog leaves it room.
rc=0
"$bin" "${args[@]}" --timeout 1800 --json "$json" "$@" | tee "$md" || rc=$?
{
	echo
	echo "Command: ivmc-bench ${args[*]} --timeout 1800 --json $stamp.json $*"
	echo "Commit: $(git -C "$top" rev-parse --short HEAD 2>/dev/null || echo none)"
} >>"$md"
echo "run.sh: wrote $md and $json (exit status $rc)" >&2

if [ "$ctl" = none ]; then
	exit "$rc"
fi
cargs=()
for a in "$@"; do
	case $a in
	-q | --quick) cargs+=(--quick) ;;
	esac
done
read -r -a extra <<<"${CTLBENCH_ARGS:-}"
cargs+=("${extra[@]}")
cmd=$out/$stamp-ctl.md
cjson=$out/$stamp-ctl.json
crc=0
"$ctl" "${cargs[@]}" --json "$cjson" | tee "$cmd" || crc=$?
{
	echo
	echo "Command: ivmc-ctlbench ${cargs[*]} --json $stamp-ctl.json"
	echo "Commit: $(git -C "$top" rev-parse --short HEAD 2>/dev/null || echo none)"
} >>"$cmd"
echo "run.sh: wrote $cmd and $cjson (exit status $crc)" >&2
if [ "$rc" -ne 0 ]; then
	exit "$rc"
fi
exit "$crc"
