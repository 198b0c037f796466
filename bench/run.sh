#!/bin/bash
# SPDX-License-Identifier: MIT
# Description: run the full ivmc-bench (latency, throughput, idle cost, CPU
# contention, and TCP across network namespaces when root) and keep the
# markdown and JSON under bench/results/, named by date and time.
#
# usage: bench/run.sh [extra ivmc-bench options, e.g. --quick or -R 9]
# env:   IVMC_BENCH=path/to/ivmc-bench (default: build/bin/ivmc-bench,
#        built with make when missing)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
top=$(dirname "$here")
bin=${IVMC_BENCH:-$top/build/bin/ivmc-bench}
out=$here/results

if [ ! -x "$bin" ]; then
	make -C "$top" -s tools >&2
fi
if [ ! -x "$bin" ]; then
	echo "run.sh: $bin: not built" >&2
	exit 1
fi

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
exit "$rc"
