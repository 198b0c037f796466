#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# Description: nginx under ivmc-run (issue 4, transparent preload). A
# private nginx (config in the test's mktemp directory, `daemon off`, a
# master and one worker, both under the preload: the worker inherits
# LD_PRELOAD and the listening socket; `sendfile on`) on a free port of
# 127.0.0.1 serves random files to clients under ivmc-run:
#   - big: a 128 MiB file (IVMC_NGINX_MIB to change) fetched by one curl,
#     sha256 compared; the daemon's pair counter grows;
#   - slow: a 16 MiB file fetched by curl --limit-rate 4M: while it runs
#     `ivmcctl --json status` lists a channel with bytes through its rings
#     (nginx's sendfile goes into the ring);
#   - small: 200 files of 1 KiB fetched by one curl (a URL glob) over one
#     keep-alive connection, each compared, each transfer given 5 s at most
#     (a stalled request is named, with when nginx at last answered it);
#     the connection is paired;
#   - wrk -t1 -c10 -d2s on a 1 KiB file (installed when missing; that part
#     is skipped with a note when it cannot be): requests made, no socket
#     error, no non-2xx answer, at least 10 pairs made; then the same plain,
#     whose count is logged beside (no assertion on speed);
#   - plain: curl not under ivmc-run fetches the big file and the 200 small
#     ones: data intact, nothing paired (nginx's side falls back to TCP);
#   - across two network namespaces joined by a veth pair (root only, else
#     skipped with a note): a second nginx under ivmc-run (same config, its
#     own pid file, logs and temp dirs) listens on the veth address in one;
#     from the other, under ivmc-run, a 32 MiB file (IVMC_NGINX_MIB when
#     smaller; sha256 compared), the 200 small files over one keep-alive
#     connection and wrk (when installed), each paired; then the 32 MiB
#     file by a plain curl: intact, nothing paired, no channel listed.
# Throughout: each worker keeps its pid (no crash and respawn), maps the
# preload, answers 200 only, and nginx logs no [alert]/[crit]/[emerg].
# With IVMC_PLAIN=1 nothing runs under ivmc-run and only the data is checked.
# Under make check-asan only the wrk parts run (curl hangs under the ASan
# runtime, see below).
#
# Environment (besides preload-lib.bash's):
#   IVMC_NGINX_MIB     size of the big file in MiB (default 128; across
#                      namespaces 32 at most)
#   IVMC_NGINX_MASTER  on (default: master and one worker) or off (one
#                      process)
#   IVMC_NGINX_ENV=1   add `env VAR;` to nginx.conf for each IVMC_* variable:
#                      nginx clears its workers' environment (TZ alone is
#                      kept), IVMC_SOCKET included; without this the test
#                      checks that the preload copes as it is

# shellcheck disable=SC2119 # optional arguments of free_port, pl_daemon_start
# preload-lib.bash is beside this script, in tests/ and in the build's
# tests/ (make copies it there).
# shellcheck source=tests/preload-lib.bash
. "$(dirname "$0")/preload-lib.bash" || exit 1

# nginx lives in /usr/sbin, which a non-login PATH may lack
case ":$PATH:" in
*:/usr/sbin:*) ;;
*) PATH=$PATH:/usr/sbin:/sbin ;;
esac

pl_init
# With the ASan runtime preloaded in front of a sanitized preload (make
# check-asan), curl itself hangs at start: in setlocale(), on glibc's
# locale lock, whose reader count the runtime's presence leaves negative
# (seen 2026-12-07 with gcc 12's libasan alone, no ivmc: `LD_PRELOAD=
# libasan.so curl --version` hangs; wget too; nginx, wrk and python do
# not; llvm-project#49223 reports the like). So there the curl parts are
# skipped and nginx is driven by wrk alone (pairs, no socket error, 2xx
# only), in both places; without wrk the whole test is skipped.
curl_runs() { [ -z "${IVMC_PRELOAD_FIRST:-}" ]; }
if ! curl_runs; then
	pl_try_cmd wrk wrk ||
		skip "under the ASan runtime only wrk can drive nginx (curl hangs in setlocale there), and wrk is missing"
	say "ASan runtime preloaded: curl hangs under it (without ivmc too): curl parts skipped, wrk only"
fi
pl_need_cmd nginx nginx
pl_need_cmd curl curl
pl_need_preload
pl_daemon_start

MIB=${IVMC_NGINX_MIB:-128}
MASTER=${IVMC_NGINX_MASTER:-on}
KEEP_ENV=${IVMC_NGINX_ENV:-0}
# curl lets a first burst through its --limit-rate: 8 MiB, with nginx
# 4.25 MiB ahead in a ring that grew, was all read within 0.1-0.3 s, once
# before the first look at the status. 16 MiB keeps it running ~2 s.
SLOW_MIB=16
NSMALL=200
NS_MIB=$((MIB < 32 ? MIB : 32)) # the big file across namespaces
W=$PL_DIR/www
declare -A SHA # file under $W -> its sha256

# ---- the files served ----------------------------------------------------------
# served FILE MIB: $W/FILE, MIB MiB of random bytes, its sha256 in SHA
served() {
	rand_file "$W/$1" "$2"
	SHA[$1]=$(sha_of "$W/$1")
}
mkdir -p "$W/small" || fail "mkdir in $PL_DIR"
served big.bin "$MIB"
served slow.bin "$SLOW_MIB"
# s000.bin .. s199.bin, 1 KiB each
head -c $((NSMALL * 1024)) /dev/urandom |
	split -b 1024 -a 3 -d --additional-suffix=.bin - "$W/small/s" ||
	fail "cannot write the small files"
[ -f "$W/small/s$(printf %03d $((NSMALL - 1))).bin" ] || fail "split wrote no s$((NSMALL - 1)).bin"

# ---- nginx -------------------------------------------------------------------------
# Temp paths of the modules this nginx has (the compiled-in defaults are
# under /var/lib/nginx), each instance's inside its own directory.
V=$(nginx -V 2>&1)
TEMP_MODULES=
for m in proxy fastcgi uwsgi scgi; do
	grep -q -- "--without-http_${m}_module" <<< "$V" ||
		TEMP_MODULES="$TEMP_MODULES $m"
done
env_lines=
if [ "$KEEP_ENV" = 1 ]; then
	for v in $(compgen -e | grep '^IVMC_'); do
		env_lines="$env_lines
env $v;"
	done
fi

# nginx_conf NAME LISTEN: $PL_DIR/NAME/nginx.conf, an instance listening on
# LISTEN (HOST:PORT) serving $W; its pid file and temp dirs in
# $PL_DIR/NAME, its logs $PL_DIR/NAME-error.log and NAME-access.log
nginx_conf() {
	local ng=$PL_DIR/$1 temp_paths m
	temp_paths="client_body_temp_path $ng/tmp/body;"
	for m in $TEMP_MODULES; do
		temp_paths="$temp_paths
    ${m}_temp_path $ng/tmp/$m;"
	done
	mkdir -p "$ng/tmp" || fail "mkdir $ng/tmp"
	cat > "$ng/nginx.conf" << EOF
daemon off;$env_lines
master_process $MASTER;
worker_processes 1;
user $(id -un) $(id -gn);
pid $ng/nginx.pid;
error_log $ng-error.log info;
events { worker_connections 256; }
http {
    log_format t '\$connection \$connection_requests \$status \$body_bytes_sent "\$request" \$msec';
    access_log $ng-access.log t;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000;
    keepalive_timeout 30s;
    types { }
    default_type application/octet-stream;
    $temp_paths
    server {
        listen $2;
        root $W;
    }
}
EOF
}

# preload-lib's clean-up kills the children of each process first, then the
# process: a master would respawn its worker in between, and the new one
# would outlive the test. Stop each master, kill it, then its workers,
# before that clean-up runs (the status of the exit kept for it).
MASTERS=()
nginx_stop() {
	local m kids
	for m in "${MASTERS[@]}"; do
		disown "$m" 2> /dev/null # no "Killed" line from bash on stderr
		kill -STOP "$m" 2> /dev/null
		kids=$(pgrep -P "$m")
		kill -KILL "$m" 2> /dev/null
		# shellcheck disable=SC2086 # a list of pids
		[ -z "$kids" ] || kill -KILL $kids 2> /dev/null
	done
	MASTERS=()
}
on_exit() {
	local rc=$?
	nginx_stop
	(exit "$rc")
	pl_cleanup
}
trap on_exit EXIT

# the process that serves: the worker (the master's only child), or the
# master itself with master_process off
worker_pid() {
	if [ "$MASTER" = off ]; then
		echo "$NPID"
	else
		pgrep -P "$NPID" | head -n 1
	fi
}
has_worker() { [ -n "$(worker_pid)" ]; }

# nginx_start NAME HOST [NETNS]: an nginx (nginx_conf NAME) under ivmc-run
# on HOST and a free port, inside NETNS when given. The parts below use
# it: N_NAME, URL (http://HOST:PORT), NPID (master), WPID (worker).
nginx_start() {
	local ns=${3:-} port
	N_NAME=$1
	port=$(free_port "$ns")
	URL=http://$2:$port
	nginx_conf "$N_NAME" "$2:$port"
	bg_ivmc ${ns:+-n "$ns"} nginx -p "$PL_DIR/$N_NAME/" \
		-c "$PL_DIR/$N_NAME/nginx.conf" -e "$PL_DIR/$N_NAME-error.log" \
		< /dev/null > "$PL_DIR/$N_NAME.log" 2>&1
	NPID=$PL_LAST_PID
	MASTERS+=("$NPID")
	wait_port "$2" "$port" "$ns"
	wait_until 5 has_worker || fail "no $N_NAME worker 5 s after start"
	WPID=$(worker_pid)
	say "$N_NAME: master $NPID, worker $WPID, $2:$port${ns:+ in $ns}, master_process $MASTER, IVMC_* kept for workers: $KEEP_ENV"
	if ! plain; then
		grep -q libivmc-preload "/proc/$WPID/maps" ||
			fail "the $N_NAME worker $WPID does not map libivmc-preload.so"
	fi
}

# The clients run in namespace C_NS ("": ours).
C_NS=
nginx_start nginx 127.0.0.1

# why a worker may not pair (for the failure messages)
if [ "$MASTER" != off ] && [ "$KEEP_ENV" != 1 ]; then
	HINT=" (nginx clears its workers' environment, IVMC_SOCKET too; IVMC_NGINX_ENV=1 adds 'env IVMC_SOCKET;' to nginx.conf)"
else
	HINT=
fi

# nginx_ok WHAT: the current nginx (and its first worker) still up, nothing
# bad logged
nginx_ok() {
	local w log=$PL_DIR/$N_NAME
	pl_alive "$NPID" || fail "$N_NAME exited ($1)"
	w=$(worker_pid)
	[ "$w" = "$WPID" ] || fail "the $N_NAME worker changed from $WPID to '${w:-none}' ($1): it died"
	if grep -E '\[(alert|crit|emerg)\]' "$log-error.log" > /dev/null; then
		fail "$N_NAME logged an alert ($1): $(grep -E '\[(alert|crit|emerg)\]' "$log-error.log" | head -n 3)"
	fi
	if awk '$3 != 200' "$log-access.log" | grep -q .; then
		fail "$N_NAME answered other than 200 ($1): $(awk '$3 != 200' "$log-access.log" | head -n 3)"
	fi
}

# curl_bg MODE OUT-PREFIX ARGS...: curl (under ivmc-run when MODE is ivmc)
# in namespace C_NS in the background, its -w lines to OUT-PREFIX.w, its
# errors to OUT-PREFIX.log; pid in CPID
curl_bg() {
	local mode=$1 out=$2
	shift 2
	"bg_$mode" ${C_NS:+-n "$C_NS"} curl -sS --fail --noproxy '*' \
		--max-time 30 "$@" < /dev/null > "$out.w" 2> "$out.log"
	CPID=$PL_LAST_PID
}

# ---- big: one large file ---------------------------------------------------------
big() { # NAME MODE EXPECT(accel|tcp) [FILE (big.bin)]
	local name=$1 mode=$2 expect=$3 file=${4:-big.bin} d=$PL_DIR/$1 p0 p1 rc t0 t1 ms got
	local seen_n=0 seen_rb=0 n rb i bytes mib
	bytes=$(file_size "$W/$file")
	mib=$((bytes / 1048576))
	say "== $name: $mib MiB, curl $mode${C_NS:+ from $C_NS}"
	p0=$(paired_count)
	t0=$(date +%s%N)
	curl_bg "$mode" "$d" -w '%{size_download} %{num_connects} %{http_code}\n' \
		-o "$d.bin" "$URL/$file"
	# what the daemon lists while it runs (a note only: it may be quick)
	for ((i = 0; i < 600; i++)); do
		pl_alive "$CPID" || break
		n=$(accel_count)
		rb=$(ring_bytes)
		[ "$n" -gt "$seen_n" ] && seen_n=$n
		[ "$rb" -gt "$seen_rb" ] && seen_rb=$rb
		sleep 0.05
	done
	wait_exit "$CPID" 30
	rc=$?
	t1=$(date +%s%N)
	ms=$(((t1 - t0) / 1000000))
	[ $rc -eq 0 ] || fail "$name: curl exited $rc (124: still running after 30 s): $(head -c 300 "$d.log")"
	size_is "$d.bin" "$bytes" || fail "$name: got $(file_size "$d.bin") bytes of $bytes"
	got=$(sha_of "$d.bin")
	[ "$got" = "${SHA[$file]}" ] || fail "$name: data differ (sha256 $got, served ${SHA[$file]})"
	rm -f "$d.bin"
	p1=$(paired_count)
	say "$name: ok in $ms ms ($(awk -v b="$bytes" -v ms="$ms" 'BEGIN { printf "%.0f", b / 1048576 / (ms / 1000) }') MiB/s), curl -w: $(cat "$d.w"), pairs $p0 -> $p1, seen while running: channels $seen_n ring_bytes $seen_rb"
	[ "$ms" -lt 10000 ] || say "$name: note: $mib MiB took ${ms} ms (over 10 s)"
	pairs_expected "$name" "$expect" "$p0" "$p1" 1 "$HINT"
	if [ "$expect" = tcp ]; then
		[ "$seen_n" -eq 0 ] || fail "$name: $seen_n channel(s) listed though the client is plain"
	fi
	nginx_ok "$name"
}

# ---- slow: a channel with ring bytes while a transfer runs ------------------
slow() {
	local d=$PL_DIR/slow p0 p1 rc got n=0 rb=0 i ok=0
	say "== slow: $SLOW_MIB MiB, curl --limit-rate 4M under ivmc-run"
	p0=$(paired_count)
	curl_bg ivmc "$d" --limit-rate 4M -w '%{size_download} %{num_connects}\n' \
		-o "$d.bin" "$URL/slow.bin"
	for ((i = 0; i < 200; i++)); do
		pl_alive "$CPID" || break
		n=$(accel_count)
		rb=$(ring_bytes)
		if [ "$n" -ge 1 ] && [ "$rb" -gt 0 ]; then
			ok=1
			break
		fi
		sleep 0.05
	done
	say "slow: while running (after $i polls): $(accel_summary)"
	wait_exit "$CPID" 30
	rc=$?
	[ $rc -eq 0 ] || fail "slow: curl exited $rc (124: still running after 30 s): $(head -c 300 "$d.log")"
	got=$(sha_of "$d.bin")
	[ "$got" = "${SHA[slow.bin]}" ] || fail "slow: data differ (sha256 $got, served ${SHA[slow.bin]}; $(file_size "$d.bin") bytes)"
	p1=$(paired_count)
	say "slow: ok, curl -w: $(cat "$d.w"), pairs $p0 -> $p1"
	if ! plain; then
		[ "$ok" = 1 ] || fail "slow: no channel with ring bytes while curl ran (channels $n, ring bytes $rb)$HINT"
	fi
	pairs_expected slow accel "$p0" "$p1" 1 "$HINT"
	nginx_ok slow
}

# ---- small: many 1 KiB files over one keep-alive connection --------------------
small() { # NAME MODE EXPECT(accel|tcp)
	local name=$1 mode=$2 expect=$3 d=$PL_DIR/$1 p0 p1 rc i f conns lines bad=0 stalled names line
	say "== $name: $NSMALL files of 1 KiB, one curl $mode${C_NS:+ from $C_NS}"
	mkdir -p "$d.got" || fail "mkdir $d.got"
	p0=$(paired_count)
	# (curl_bg's --max-time 30 is per transfer: 5 s here, as one should
	# take milliseconds)
	curl_bg "$mode" "$d" -w '%{num_connects} %{http_code} %{size_download}\n' \
		--max-time 5 -o "$d.got/s#1.bin" \
		"$URL/small/s[000-$(printf %03d $((NSMALL - 1)))].bin"
	wait_exit "$CPID" 20
	rc=$?
	# transfers that got no answer: line N of the -w output is s(N-1)
	stalled=$(awk '$2 != 200 { printf "%s s%03d.bin", (n++ ? "," : ""), NR - 1 }' "$d.w")
	if [ -n "$stalled" ]; then
		say "$name: curl's ends: $(sort "$d.w" | uniq -c | tr -s ' \n' ' ')"
		read -r -a names <<< "${stalled//,/ }"
		for f in "${names[@]:0:3}"; do
			line=$(grep -F "/$f " "$PL_DIR/$N_NAME-access.log" | tail -n 1)
			say "$name: nginx answered $f at $(date -d "@${line##* }" +%T.%3N 2> /dev/null || echo never) (after curl gave up on it: it had not seen the request)"
		done
		fail "$name: no answer within 5 s to:$stalled (curl exited $rc): $(head -c 300 "$d.log")"
	fi
	[ $rc -eq 0 ] || fail "$name: curl exited $rc (124: still running after 20 s): $(head -c 300 "$d.log")"
	lines=$(wc -l < "$d.w")
	[ "$lines" -eq "$NSMALL" ] || fail "$name: curl reported $lines transfers of $NSMALL"
	for ((i = 0; i < NSMALL; i++)); do
		f=s$(printf %03d "$i").bin
		cmp -s "$d.got/$f" "$W/small/$f" || {
			bad=$((bad + 1))
			[ $bad -le 3 ] && say "$name: $f differs or is missing ($(file_size "$d.got/$f") bytes)"
		}
	done
	[ $bad -eq 0 ] || fail "$name: $bad of $NSMALL small files differ"
	awk '$2 != 200 || $3 != 1024' "$d.w" | grep -q . &&
		fail "$name: a transfer was not '200, 1024 bytes': $(awk '$2 != 200 || $3 != 1024' "$d.w" | head -n 2)"
	conns=$(awk '{ s += $1 } END { print s + 0 }' "$d.w")
	p1=$(paired_count)
	say "$name: ok, $NSMALL files intact, $conns connection(s) opened, pairs $p0 -> $p1"
	[ "$conns" -eq 1 ] || fail "$name: $conns connections for $NSMALL requests: keep-alive broke"
	pairs_expected "$name" "$expect" "$p0" "$p1" 1 "$HINT"
	rm -rf "$d.got"
	nginx_ok "$name"
}

# ---- wrk --------------------------------------------------------------------------
# wrk_run NAME MODE EXPECT(accel|tcp): wrk -t1 -c10 -d2s on a 1 KiB file;
# its request count in WRK_REQS
wrk_run() {
	local name=$1 mode=$2 expect=$3 d=$PL_DIR/$1 p0 p1 rc
	say "== $name: wrk -t1 -c10 -d2s, $mode${C_NS:+ from $C_NS}"
	p0=$(paired_count)
	pl_cmd "$mode" ${C_NS:+-n "$C_NS"} wrk -t1 -c10 -d2s --timeout 1s "$URL/small/s000.bin"
	timeout 20 "${PL_CMD[@]}" < /dev/null > "$d.out" 2> "$d.log"
	rc=$?
	sed "s/^/  $name: /" "$d.out"
	[ $rc -eq 0 ] || fail "$name: wrk exited $rc (124: still running after 20 s): $(head -c 300 "$d.log")"
	WRK_REQS=$(grep -o '[0-9]* requests in' "$d.out" | cut -d' ' -f1)
	if [ -z "$WRK_REQS" ] || [ "$WRK_REQS" -eq 0 ]; then
		fail "$name: no requests reported"
	fi
	# wrk counts any read() < 0 as a socket error: a read that says
	# EAGAIN after epoll said readable is one. (Under ivmc-run that
	# happened around nginx's keepalive_requests closes: readiness said
	# yes when the peer had opened an epoch with nothing in it yet.)
	if grep -q 'Socket errors' "$d.out"; then
		fail "$name: $(grep 'Socket errors' "$d.out")"
	fi
	grep -q 'Non-2xx' "$d.out" && fail "$name: $(grep 'Non-2xx' "$d.out")"
	p1=$(paired_count)
	say "$name: ok, $WRK_REQS requests, pairs $p0 -> $p1"
	pairs_expected "$name (10 connections)" "$expect" "$p0" "$p1" 10 "$HINT"
	nginx_ok "$name"
}

# bench [PREFIX]: wrk_run PREFIXwrk under ivmc-run, when wrk is there;
# without PREFIX then the same plain, whose count is a yardstick for the
# log (no assertion on speed)
bench() {
	local pre=${1:-} n_ivmc
	if ! pl_try_cmd wrk wrk; then
		say "== ${pre}wrk: NOTE: wrk not installed and apt-get install wrk failed: part skipped"
		return 0
	fi
	wrk_run "${pre}wrk" ivmc accel
	n_ivmc=$WRK_REQS
	if plain || [ -n "$pre" ]; then
		return 0
	fi
	no_channels "before plain wrk"
	wrk_run wrk-plain plain tcp
	say "wrk: note: $n_ivmc requests in 2 s under ivmc-run, $WRK_REQS with plain TCP"
}

# no_channels WHAT: every client has gone, so should every channel (5 s)
chans_zero() { [ "$(accel_count)" -eq 0 ]; }
no_channels() {
	plain && return 0
	wait_until 5 chans_zero ||
		fail "channels still listed 5 s after every client exited ($1): $(accel_summary)"
}

T0=$(date +%s%N)
if curl_runs; then
	big big ivmc accel
	slow
	small small ivmc accel
fi
bench
no_channels "before the plain runs"
if curl_runs; then
	big big-plain plain tcp
	small small-plain plain tcp
fi

no_channels end
say "at the end: $(accel_summary); access log: $(wc -l < "$PL_DIR/nginx-access.log") requests"

# ---- across two namespaces joined by a veth pair ------------------------------
if [ "$(id -u)" -eq 0 ]; then
	netns_pair
	served big-ns.bin "$NS_MIB"
	nginx_start nginx-ns "$IP_A" "$NS_A"
	C_NS=$NS_B
	if curl_runs; then
		big ns-big ivmc accel big-ns.bin
		small ns-small ivmc accel
	fi
	bench ns-
	no_channels "before the plain run across namespaces"
	curl_runs && big ns-big-plain plain tcp big-ns.bin
	no_channels "end across namespaces"
	say "across namespaces: $(accel_summary); access log: $(wc -l < "$PL_DIR/nginx-ns-access.log") requests"
else
	say "across namespaces: skipped (needs root)"
fi
say "all runs passed in $((($(date +%s%N) - T0) / 1000000)) ms"
