#!/usr/bin/env python3
"""RSS per idle connection, and the worst case under hostile heads.

Starts themis_server (2 cores unless --threads), then:
1. opens N keep-alive connections that each made one small GET and then
   sit idle, and reports RSS growth per connection and per 1,000;
2. opens N more that each send a head announcing a 10 MiB body plus 1 KB of
   it and then stall (the attack of issue 11), and reports the growth.

Usage: bench/conn_memory.py --bin target/release/themis_server [--conns 1000]
"""
import argparse
import os
import resource
import socket
import subprocess
import tempfile
import time


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def settle(pid):
    time.sleep(1.0)
    return rss_kib(pid)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--conns", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4 * a.conns + 256), hard))
    d = tempfile.mkdtemp(prefix="themis-conn-")
    p = subprocess.Popen([a.bin, "--host", "127.0.0.1", "--port", "0", "--db", os.path.join(d, "data"),
                          "--threads", str(a.threads)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                         text=True, cwd=d, env={k: v for k, v in os.environ.items() if not k.startswith("THEMIS_")}
                         | {"THEMIS_SERVER_MAX_CONNECTIONS": str(4 * a.conns)})
    port = None
    for line in p.stdout:
        if line.startswith("THEMIS listening on "):
            port = int(line.split()[3].rsplit(":", 1)[1])
            break
    try:
        warm = socket.create_connection(("127.0.0.1", port))
        for _ in range(200):
            warm.sendall(b"GET /health HTTP/1.1\r\nHost: b\r\n\r\n")
            warm.recv(65536)
        base = settle(p.pid)
        idle = []
        for _ in range(a.conns):
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(b"GET /health HTTP/1.1\r\nHost: b\r\n\r\n")
            s.recv(65536)
            idle.append(s)
        after_idle = settle(p.pid)
        per = (after_idle - base) * 1024 / a.conns
        print(f"server cores: {a.threads}")
        print(f"RSS before: {base / 1024:.1f} MiB")
        print(f"{a.conns} idle keep-alive connections: +{(after_idle - base) / 1024:.1f} MiB "
              f"= {per / 1024:.1f} KiB per connection, {per * 1000 / 2**20:.1f} MiB per 1,000")
        hostile = []
        head = b"PUT /entities/a:b HTTP/1.1\r\nHost: b\r\nContent-Type: application/json\r\nContent-Length: 10485760\r\n\r\n"
        for _ in range(a.conns):
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(head + b" " * 1000)
            hostile.append(s)
        after_hostile = settle(p.pid)
        print(f"{a.conns} more connections announcing 10 MiB bodies and stalling: "
              f"+{(after_hostile - after_idle) / 1024:.1f} MiB "
              f"(announced: {a.conns * 10} MiB)")
        print(f"RSS at the end: {after_hostile / 1024:.1f} MiB")
    finally:
        p.kill()
        p.wait()


if __name__ == "__main__":
    main()
