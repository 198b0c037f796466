#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# Description: Python asyncio under ivmc-run (issue 4, transparent preload):
# an asyncio echo server and a client process holding 4 connections to it
# at once (one event loop each side, so epoll with several sockets), each
# connection carrying 8 MiB of random bytes (64 MiB with IVMC_LONG=1) in
# writes of random sizes (1 byte to 256 KiB) while reading the echo back
# and comparing it with what was sent. Once every byte has come back the
# client holds its connections open: `ivmcctl --json status` must list a
# channel for each, every direction with bytes through its ring. Then the
# client half-closes (write_eof) and each connection must end cleanly with
# nothing more read. Run in one namespace, then (root only) with the server
# and the client in two namespaces joined by a veth pair.
# With IVMC_PLAIN=1 nothing runs under ivmc-run and only the data is checked.

# shellcheck disable=SC2119 # optional arguments of free_port, pl_daemon_start
# preload-lib.bash is beside this script, in tests/ and in the build's
# tests/ (make copies it there).
# shellcheck source=tests/preload-lib.bash
. "$(dirname "$0")/preload-lib.bash" || exit 1

pl_init
pl_need_cmd python3 python3
pl_need_preload
pl_daemon_start

NCONN=4
MIB=8
long && MIB=64

cat > "$PL_DIR/echo.py" << 'EOF'
"""asyncio echo server and verifying client (see preload-python.sh)."""
import asyncio
import os
import random
import sys
import time

HOST = os.environ.get("ECHO_HOST", "127.0.0.1")


async def serve(port):
    async def echo(reader, writer):
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()

    server = await asyncio.start_server(echo, HOST, port)
    async with server:
        await server.serve_forever()


async def one(port, nbytes, seed, done):
    rng = random.Random(seed)
    data = os.urandom(nbytes)
    reader, writer = await asyncio.open_connection(HOST, port)

    async def send():
        off = 0
        while off < nbytes:
            n = min(rng.randint(1, 262144), nbytes - off)
            writer.write(data[off:off + n])
            await writer.drain()
            off += n

    async def receive():
        got = 0
        while got < nbytes:
            chunk = await reader.read(rng.randint(1, 131072))
            if not chunk:
                raise SystemExit(f"conn {seed}: EOF after {got} of {nbytes} bytes")
            if chunk != data[got:got + len(chunk)]:
                bad = next(i for i in range(len(chunk)) if chunk[i] != data[got + i])
                raise SystemExit(f"conn {seed}: byte {got + bad} differs "
                                 f"(got {chunk[bad]:#04x}, sent {data[got + bad]:#04x})")
            got += len(chunk)

    await asyncio.gather(send(), receive())
    done.append(seed)
    return reader, writer


async def client(port, nconn, nbytes, ready, go):
    t0 = time.monotonic()
    done = []
    conns = await asyncio.gather(*(one(port, nbytes, s, done) for s in range(nconn)))
    print(f"{nconn} x {nbytes} bytes echoed intact in "
          f"{time.monotonic() - t0:.2f} s", flush=True)
    with open(ready, "w") as f:
        f.write("echoed\n")
    for _ in range(600):  # 30 s at most
        if os.path.exists(go):
            break
        await asyncio.sleep(0.05)
    for seed, (reader, writer) in enumerate(conns):
        writer.write_eof()
        extra = await reader.read()
        if extra:
            raise SystemExit(f"conn {seed}: {len(extra)} bytes after the echo")
        writer.close()
    print("all connections closed cleanly", flush=True)


def main():
    if sys.argv[1] == "server":
        asyncio.run(serve(int(sys.argv[2])))
    else:
        _, port, nconn, nbytes, ready, go = sys.argv[1:]
        asyncio.run(asyncio.wait_for(
            client(int(port), int(nconn), int(nbytes), ready, go), 45))


main()
EOF

# echo_run NAME HOST [SERVER-NETNS CLIENT-NETNS]: one server, one client of
# NCONN connections, every check above.
echo_run() {
	local name=$1 host=$2 sns=${3:-} cns=${4:-} port p0 p1 rc
	port=$(free_port "$sns")
	rm -f "$PL_DIR/ready" "$PL_DIR/go"
	ECHO_HOST=$host bg_ivmc ${sns:+-n "$sns"} python3 "$PL_DIR/echo.py" \
		server "$port" > "$PL_DIR/server-$name.log" 2>&1
	SPID=$PL_LAST_PID
	wait_port "$host" "$port" "$sns"
	p0=$(paired_count)
	ECHO_HOST=$host bg_ivmc ${cns:+-n "$cns"} python3 "$PL_DIR/echo.py" \
		client "$port" "$NCONN" $((MIB * 1024 * 1024)) "$PL_DIR/ready" \
		"$PL_DIR/go" > "$PL_DIR/client-$name.log" 2>&1
	CPID=$PL_LAST_PID
	wait_until 45 test -e "$PL_DIR/ready" ||
		fail "$name: the client has not had its data echoed within 45 s"
	sed "s/^/  $name: /" "$PL_DIR/client-$name.log"
	say "$name, while held: $(accel_summary)"
	if ! plain; then
		[ "$(accel_count)" -ge "$NCONN" ] ||
			fail "$name: $NCONN connections held open, but $(accel_count) channels listed"
		[ "$(ring_dirs_idle)" -eq 0 ] ||
			fail "$name: $(ring_dirs_idle) directions of the channels carried nothing on their rings"
	fi
	touch "$PL_DIR/go"
	wait_exit "$CPID" 20
	rc=$?
	sed "s/^/  $name: /" "$PL_DIR/client-$name.log"
	[ $rc -eq 0 ] || fail "$name: the client exited $rc (124: still running after 20 s)"
	pl_alive "$SPID" || fail "$name: the server died"
	p1=$(paired_count)
	pairs_expected "$name ($NCONN connections)" accel "$p0" "$p1" "$NCONN"
	say "$name: pairs $p0 -> $p1; $(accel_summary)"
}

echo_run loopback 127.0.0.1
if [ "$(id -u)" -eq 0 ]; then
	netns_pair
	echo_run netns "$IP_A" "$NS_A" "$NS_B"
else
	say "across namespaces: skipped (needs root)"
fi
say "all checks passed"
