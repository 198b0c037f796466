#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# Description: run the spin models (model/README.md). For each check:
# spin -a into a scratch directory, compile pan.c, run it, report states
# and time.
#   model/check.sh OUTDIR            every model must verify: no assertion
#                                    violation, no invalid end state
#                                    (deadlock), no non-progress cycle, and
#                                    the search complete
#   model/check.sh --mutants OUTDIR  every BUG_ variant must be caught
# Exit status 0 only if all of them did what they must. Nothing is written
# outside OUTDIR. Environment: SPIN (spin), MODEL_CC (gcc).

set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
want=pass
if [ "${1:-}" = --mutants ]; then
	want=caught
	shift
fi
[ $# -eq 1 ] || {
	echo "usage: model/check.sh [--mutants] OUTDIR" >&2
	exit 2
}
mkdir -p "$1"
out=$(cd "$1" && pwd)
SPIN=${SPIN:-spin}
CC=${MODEL_CC:-gcc}
DEPTH=1000000
opt=-O2 # long searches; a mutant's search is short, its compile is not
[ "$want" = pass ] || opt=-O0

command -v "$SPIN" > /dev/null 2>&1 || {
	echo "model: '$SPIN' not found (Debian: apt-get install spin)" >&2
	exit 1
}

bad=0
total=0

# check NAME MODEL KIND DEFINE...: KIND is safety (assertions and invalid
# end states) or np (non-progress cycles, with the progress labels).
check() {
	local name=$1 model=$2 kind=$3 dir cflags pflags errors states secs
	local what verdict ok=0 t0 t1 pan_secs
	shift 3
	dir=$out/$name
	rm -rf "$dir"
	mkdir -p "$dir"
	case $kind in
	safety) cflags=-DSAFETY pflags= ;;
	np) cflags=-DNP pflags=-l ;;
	*) echo "model: bad kind $kind" >&2; exit 2 ;;
	esac
	t0=$(date +%s.%N)
	if ! (cd "$dir" && "$SPIN" -a "$@" "$here/$model.pml") > "$dir/spin.log" 2>&1; then
		echo "  FAIL    $name: spin -a failed:"
		cat "$dir/spin.log"
		bad=$((bad + 1))
		return
	fi
	if ! "$CC" $opt -w $cflags -o "$dir/pan" "$dir/pan.c" > "$dir/cc.log" 2>&1; then
		echo "  FAIL    $name: cannot compile pan.c:"
		tail -n 20 "$dir/cc.log"
		bad=$((bad + 1))
		return
	fi
	(cd "$dir" && ./pan -m$DEPTH $pflags) > "$dir/pan.log" 2>&1 || true
	t1=$(date +%s.%N)
	errors=$(sed -n 's/.*errors: \([0-9][0-9]*\).*/\1/p' "$dir/pan.log" | tail -n 1)
	states=$(awk '/states, stored/ { print $1 }' "$dir/pan.log" | tail -n 1)
	secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
	pan_secs=$(sed -n 's/^pan: elapsed time \([0-9.e+-]*\) seconds.*/\1/p' "$dir/pan.log" | tail -n 1)
	what=$(grep -m 1 -E '^pan:1: |out of memory|max search depth too small' \
		"$dir/pan.log" | sed 's/^pan:1: //' | cut -c1-90 || true)
	total=$((total + 1))
	if [ -z "$errors" ]; then
		verdict="pan did not finish: $(tail -n 3 "$dir/pan.log" | tr '\n' ' ')"
	elif [ "$want" = pass ]; then
		if [ "$errors" = 0 ] && ! grep -q -E 'max search depth too small|Search not completed|out of memory' "$dir/pan.log"; then
			ok=1
			verdict=verified
		else
			verdict="ERROR: ${what:-search incomplete}"
		fi
	else
		if [ "$errors" != 0 ]; then
			ok=1
			verdict="caught: $what"
		else
			verdict="NOT caught"
		fi
	fi
	printf '  %-4s %-34s %-6s %9s states %6ss (%ss)  %s\n' \
		"$([ $ok = 1 ] && echo ok || echo FAIL)" "$name" "$kind" \
		"${states:-?}" "${pan_secs:-?}" "$secs" "$verdict"
	if [ $ok = 0 ]; then
		bad=$((bad + 1))
		if [ -f "$dir/$model.pml.trail" ]; then
			echo "         trail: (cd $dir && $SPIN -t -p -g -l -k $model.pml.trail $* $here/$model.pml)"
		fi
		echo "         log:   $dir/pan.log"
	fi
}

if [ "$want" = pass ]; then
	echo "spin models (exhaustive; states stored, search time (with spin -a and gcc)):"
	# wake.pml: two waiters (reader, writer) of one endpoint, N messages
	# each way, rings of CAP; then a third thread that drains without
	# sleeping (chan_drain_nowait()).
	check wake-n2 wake safety
	check wake-n2-np wake np
	check wake-n1-nowait2 wake safety -DN=1 -DNOWAIT=2
	check wake-n1-nowait2-np wake np -DN=1 -DNOWAIT=2
	check wake-n2-nowait1 wake safety -DNOWAIT=1
	# bell.pml: two waiters (a reader and a writer of two channels) of one
	# bell, N messages per channel, rings of 1; then with poll_wait_ns()'s
	# naps first (a side stream), and a third thread that calls
	# bell_drain_nowait().
	check bell-n2 bell safety
	check bell-n2-np bell np
	check bell-n2-naps1 bell safety -DNAPS=1
	check bell-n1-nowait2 bell safety -DN=1 -DNOWAIT=2
	check bell-n1-nowait2-np bell np -DN=1 -DNOWAIT=2
	check bell-n1-nowait2-naps1 bell safety -DN=1 -DNOWAIT=2 -DNAPS=1
	# switch.pml: N bytes, ring of R, SW detach and SW attach requests on
	# each side.
	check switch-n4-sw2 switch safety -DN=4 -DSW=2
	check switch-n4-sw2-np switch np -DN=4 -DSW=2
	check switch-n4-sw2-r1 switch safety -DN=4 -DSW=2 -DR=1
	check switch-n4-sw3 switch safety -DN=4 -DSW=3
	# ... and RW rewinds by the consumer (docs/protocol.md 3.6)
	check switch-n4-sw2-rw1 switch safety -DN=4 -DSW=2 -DRW=1
	check switch-n4-sw2-rw1-np switch np -DN=4 -DSW=2 -DRW=1
	check switch-n4-sw1-rw1-r1 switch safety -DN=4 -DSW=1 -DRW=1 -DR=1
	# grow.pml: rings that grow (docs/protocol.md 3.7): N bytes, a ring S
	# and a large area L; the consumer may stop for good.
	check grow-n7-s1-l2 grow safety
	check grow-n7-s1-l2-nostop grow safety -DSTOP=0
	check grow-n9-s2-l3 grow safety -DN=9 -DS=2 -DL=3
	check grow-n10-s2-l2 grow safety -DN=10 -DS=2 -DL=2
	# ... with the consumer's detach (CLOSED, CAS publishes, stranded bytes)
	check grow-n7-s1-l2-detach grow safety -DDETACH
	check grow-n9-s2-l3-detach-nostop grow safety -DDETACH -DSTOP=0 -DN=9 \
		-DS=2 -DL=3
	# ... and with a rewind instead (3.6: given back from either ring)
	check grow-n7-s1-l2-rw grow safety -DDETACH -DRW
	check grow-n9-s2-l3-rw-nostop grow safety -DDETACH -DRW -DSTOP=0 -DN=9 \
		-DS=2 -DL=3
else
	echo "spin model mutants (each must be caught):"
	for b in BUG_UNLOCK_THEN_BUMP BUG_BUMP_BEFORE_UNLOCK BUG_F1_LOAD_FIRST \
		BUG_SAME_SEQ BUG_RECHECK_FIRST BUG_NO_RECHECK BUG_GEN_LATE \
		BUG_FOLLOWER_DRAINS BUG_FUTEX_NOCHECK; do
		check "wake-$b" wake safety -D$b
	done
	# a livelock, not a deadlock: caught by the non-progress search
	check wake-BUG_DOUBLE_BUMP wake np -DBUG_DOUBLE_BUMP
	check wake-BUG_UNLOCK_THEN_BUMP-nowait wake safety -DBUG_UNLOCK_THEN_BUMP \
		-DN=1 -DNOWAIT=1
	for b in BUG_UNLOCK_THEN_BUMP BUG_TAKE_AFTER_UNLOCK BUG_GEN_LATE \
		BUG_F1_LOAD_FIRST BUG_RECHECK_FIRST BUG_NO_RECHECK \
		BUG_FOLLOWERS_FIRST; do
		check "bell-$b" bell safety -D$b
	done
	check bell-BUG_NAP_NO_RECHECK bell safety -DNAPS=1 -DBUG_NAP_NO_RECHECK
	check bell-BUG_UNLOCK_THEN_BUMP-nowait bell safety -DN=1 -DNOWAIT=1 \
		-DBUG_UNLOCK_THEN_BUMP -DNO_SLEEP_ASSERT
	check bell-BUG_NOWAIT_NO_BUMP bell safety -DN=1 -DNOWAIT=1 \
		-DBUG_NOWAIT_NO_BUMP -DNO_SLEEP_ASSERT
	# src/chan/wake.c's bell as of this writing: both of the last two; a
	# deadlock even with the follower's timeout (poll() has none)
	check bell-as-coded bell safety -DBUG_UNLOCK_THEN_BUMP \
		-DBUG_NOWAIT_NO_BUMP -DFOLLOW_TIMEOUT -DNO_SLEEP_ASSERT
	check bell-as-coded-naps-nowait bell safety -DN=1 -DNOWAIT=1 -DNAPS=1 \
		-DBUG_UNLOCK_THEN_BUMP -DBUG_NOWAIT_NO_BUMP -DFOLLOW_TIMEOUT \
		-DNO_SLEEP_ASSERT
	for b in BUG_PUBLISH_STORE BUG_CLOSE_STORE BUG_NO_STRAND BUG_FLUSH_LATE \
		BUG_ATTACH_AFTER_OPEN BUG_NO_PEEK BUG_NO_WITHDRAW \
		BUG_OPEN_UNCHECKED BUG_NO_EMPTY_SKIP; do
		check "switch-$b" switch safety -DN=4 -DSW=2 -D$b
	done
	# a rewind that closes at what the producer published (a detach):
	# the bytes the consumer had not read are lost to the side stream
	check switch-BUG_REWIND_AT_PROD switch safety -DN=4 -DSW=2 -DRW=1 \
		-DBUG_REWIND_AT_PROD
	# src/chan/switch.c as of this writing: both of the last two
	check switch-as-coded switch safety -DN=4 -DSW=2 \
		-DBUG_OPEN_UNCHECKED -DBUG_NO_EMPTY_SKIP
	check switch-as-coded-nodetach switch safety -DN=4 -DSW=2 \
		-DBUG_OPEN_UNCHECKED -DBUG_NO_EMPTY_SKIP -DNO_CHECK_DETACH
	for b in BUG_LOAD_ORDER BUG_PUB_FIRST BUG_BACK_EARLY BUG_OVERWRITE; do
		check "grow-$b" grow safety -D$b
	done
	check grow-BUG_STRAND_SMALL grow safety -DDETACH -DBUG_STRAND_SMALL
	check grow-BUG_STRAND_SMALL-rw grow safety -DDETACH -DRW \
		-DBUG_STRAND_SMALL
fi

if [ $bad -ne 0 ]; then
	echo "model: $bad of $total checks failed"
	exit 1
fi
echo "model: all $total checks as expected"
