#!/usr/bin/env python3
"""A shard-aware THEMIS client: sends each key straight to the core that
owns it, so the server never forwards the request to another core.

Standard library only. `key_hash` and `owner` are the server's key -> core
mapping (`GET /shards` calls it "rustc-hash-2-fxhash64+multiply-shift"),
written out so that any language can reproduce it; docs/sharding.md explains
each step. The integration tests run `--check` against a real server.

    client = ShardAwareClient("127.0.0.1", 8765)   # reads GET /shards
    client.put("users:alice", {"name": "Alice"})
    print(client.get("users:alice"))
"""

import http.client
import json
import sys
import urllib.parse

MASK = (1 << 64) - 1
SEED1, SEED2 = 0x243F6A8885A308D3, 0x13198A2E03707344
ZERO_GUARD = 0xA4093822299F31D0
K = 0xF1357AEA2E62A9C5


def _mix(x, y):
    p = x * y  # the full 128-bit product
    return (p ^ (p >> 64)) & MASK  # low half XOR high half


def _le(b):
    return int.from_bytes(b, "little")


def _hash_bytes(b):
    n, s0, s1 = len(b), SEED1, SEED2
    if n <= 16:
        if n >= 8:
            s0, s1 = s0 ^ _le(b[:8]), s1 ^ _le(b[n - 8:])
        elif n >= 4:
            s0, s1 = s0 ^ _le(b[:4]), s1 ^ _le(b[n - 4:])
        elif n > 0:
            s0, s1 = s0 ^ b[0], s1 ^ ((b[n - 1] << 8) | b[n // 2])
    else:
        i = 0
        while n - 1 - i >= 16:  # 16-byte blocks of all bytes but the last
            t = _mix(s0 ^ _le(b[i:i + 8]), ZERO_GUARD ^ _le(b[i + 8:i + 16]))
            s0, s1, i = s1, t, i + 16
        s0, s1 = s0 ^ _le(b[n - 16:n - 8]), s1 ^ _le(b[n - 8:])
    return _mix(s0, s1) ^ n


def key_hash(key: bytes) -> int:
    h = (_hash_bytes(key) * K) & MASK
    return ((h << 26) | (h >> 38)) & MASK  # rotate left by 26


def owner(key: str, shards: int) -> int:
    """The core that owns `key` (its UTF-8 bytes, as stored: table:pk)."""
    return (key_hash(key.encode("utf-8")) * shards) >> 64


class ShardAwareClient:
    def __init__(self, host, port):
        self.host, self.conns = host, {}  # one keep-alive connection per port
        self.map = self._json("GET", port, "/shards")
        # Without server.shard_ports every core's port is null: use the base.
        self.ports = [c["port"] or port for c in self.map["cores"]]

    def port_of(self, key):
        return self.ports[owner(key, self.map["shards"])]

    def _json(self, method, port, path, body=None):
        if port not in self.conns:
            self.conns[port] = http.client.HTTPConnection(self.host, port, timeout=10)
        conn = self.conns[port]
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        if resp.status >= 400:
            raise RuntimeError(f"{method} {path}: {resp.status} {data!r}")
        return json.loads(data) if data else None

    def get(self, key):
        path = "/entities/" + urllib.parse.quote(key, safe="")
        return self._json("GET", self.port_of(key), path)["entity"]

    def put(self, key, doc):
        path = "/entities/" + urllib.parse.quote(key, safe="")
        return self._json("PUT", self.port_of(key), path, json.dumps(doc))


def check(host, port, count):
    """Checks the documented mapping against the server and uses it: every
    key's owner is asked of `GET /shards?key=`, then written and read on its
    owner's port."""
    client = ShardAwareClient(host, port)
    shards = client.map["shards"]
    keys = [f"t:{'k' * (i % 40)}{i}" for i in range(count)]
    keys += ["a:b", "ab:c", "t:é ü/%?&#", "tbl:" + "x" * 300]
    for key in keys:
        asked = client._json("GET", port, "/shards?key=" + urllib.parse.quote(key, safe=""))
        if asked["key"]["owner"] != owner(key, shards):
            raise SystemExit(f"{key!r}: server says {asked['key']['owner']}, computed {owner(key, shards)}")
        if asked["key"]["hash"] != f"{key_hash(key.encode()):016x}":
            raise SystemExit(f"{key!r}: hash {asked['key']['hash']} != {key_hash(key.encode()):016x}")
        client.put(key, {"k": key})
        if client.get(key) != {"k": key}:
            raise SystemExit(f"{key!r}: read back something else")
    print(f"ok: {len(keys)} keys over {shards} shards, ports {client.ports}")


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "--pin":
        for k in sys.argv[2:]:
            print(f'("{k}", 0x{key_hash(k.encode()):016x}),')
    elif len(sys.argv) >= 4 and sys.argv[1] == "--check":
        check(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]) if len(sys.argv) > 4 else 200)
    else:
        print(__doc__)
