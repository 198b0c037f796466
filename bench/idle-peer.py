#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
# Description: one side of bench/preload.sh's idle case: N TCP connections
# over loopback that exchange 1 KiB each way ROUNDS times (10 ms apart,
# time for them to move onto their channels), say "ready" on stdout, then
# sit idle in select() until killed.
#
# usage: idle-peer.py server|client N PORT ROUNDS
import os
import select
import socket
import sys
import time


def recv_exact(s, n):
    b = b""
    while len(b) < n:
        k = s.recv(n - len(b))
        if not k:
            sys.exit("idle-peer: end of stream")
        b += k
    return b


def main():
    role, n, port, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    if role == "server":
        ls = socket.socket()
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(("127.0.0.1", port))
        ls.listen(n)
        conns = [ls.accept()[0] for _ in range(n)]
        for _ in range(rounds):
            for c in conns:
                c.sendall(recv_exact(c, 1024))
    else:
        conns = [socket.create_connection(("127.0.0.1", port)) for _ in range(n)]
        for _ in range(rounds):
            msg = os.urandom(1024)
            for c in conns:
                c.sendall(msg)
            for c in conns:
                if recv_exact(c, 1024) != msg:
                    sys.exit("idle-peer: data differ")
            time.sleep(0.01)
    print("ready", flush=True)
    while True:
        r, _, _ = select.select(conns, [], [], 3600)
        for c in r:
            if not c.recv(1):
                sys.exit(0)  # the other side went away


main()
