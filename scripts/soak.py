#!/usr/bin/env python3
"""Crash-and-load soak: mixed load, `kill -9`, restart, check, repeat.

Each cycle starts the server on the same data directory, runs writers
(PUT/DELETE, each writer owning its own keys so that the last acknowledged
operation on a key is its truth), a query reader and a change-feed reader
for a few seconds, then kills the server with SIGKILL while the load is
still running. After the restart it checks:

* data: every key holds its last acknowledged state (or, for the one
  operation per writer that was in flight at the kill, the state before or
  after it);
* indexes: the secondary index on `n` returns exactly the keys a full scan
  returns, and an equality lookup through the index matches the data;
* change feed: sequences strictly increase, no sequence is ever reused (an
  event seen before a crash is unchanged after it), and replaying the feed
  gives exactly the data.

Not part of CI (it runs for minutes). Usage:

    scripts/soak.sh [--cycles 100] [--seconds 3] [--writers 4] [--bin PATH]

It prints one line per cycle and a summary; non-zero exit on the first
violation, with the evidence.
"""

import argparse
import http.client
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

TABLE = "soak"


class Conn:
    """A keep-alive HTTP/1.1 connection with JSON helpers."""

    def __init__(self, port):
        self.port = port
        self.c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def call(self, method, path, body=None):
        headers = {}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        self.c.request(method, path, body=data, headers=headers)
        r = self.c.getresponse()
        raw = r.read()
        try:
            return r.status, json.loads(raw) if raw else None
        except ValueError:
            return r.status, raw

    def close(self):
        self.c.close()


def start(binary, data, threads):
    proc = subprocess.Popen(
        [binary, "--host", "127.0.0.1", "--port", "0", "--db", data, "--threads", str(threads)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        cwd=os.path.dirname(data),
        env={k: v for k, v in os.environ.items() if not k.startswith("THEMIS_")}
        | {"THEMIS_FEATURES_CDC": "true"},
        text=True,
    )
    deadline = time.time() + 60
    for line in proc.stdout:
        if line.startswith("THEMIS listening on "):
            port = int(line.split()[3].rsplit(":", 1)[1])
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
            return proc, port
        if time.time() > deadline:
            break
    proc.kill()
    raise SystemExit("server did not start")


def wait_ready(port):
    c = Conn(port)
    for _ in range(600):
        try:
            st, v = c.call("GET", "/index/stats")
            if st == 200 and all(i["state"] == "ready" for i in v.get("indexes", [])):
                c.close()
                return
        except OSError:
            c = Conn(port)
        time.sleep(0.1)
    raise SystemExit("index never became ready")


class Writer(threading.Thread):
    """Writes its own keys; records acknowledged states and the in-flight op."""

    def __init__(self, port, wid, keys, model, stop):
        super().__init__(daemon=True)
        self.port, self.wid, self.keys, self.model, self.stop = port, wid, keys, model, stop
        self.pending = None  # (key, state) of the op in flight
        self.acked = 0
        self.rng = random.Random(wid * 7919 + int(time.time()))

    def run(self):
        try:
            c = Conn(self.port)
            while not self.stop.is_set():
                key = self.rng.choice(self.keys)
                if self.rng.random() < 0.2:
                    state = None
                    self.pending = (key, state)
                    st, _ = c.call("DELETE", f"/entities/{key}")
                    ok = st in (200, 204, 404)
                else:
                    state = {"n": self.rng.randrange(50), "w": self.wid, "v": self.acked}
                    self.pending = (key, state)
                    st, _ = c.call("PUT", f"/entities/{key}", state)
                    ok = st in (200, 201)
                if not ok:
                    raise RuntimeError(f"write answered {st}")
                self.model[key] = state
                self.pending = None
                self.acked += 1
        except (OSError, http.client.HTTPException, RuntimeError):
            pass  # the kill


class Reader(threading.Thread):
    """Queries and change-feed polls while the writers run (load only)."""

    def __init__(self, port, stop):
        super().__init__(daemon=True)
        self.port, self.stop, self.done = port, stop, 0

    def run(self):
        rng = random.Random()
        try:
            c = Conn(self.port)
            while not self.stop.is_set():
                if rng.random() < 0.5:
                    q = {"table": TABLE, "predicates": [{"column": "n", "value": rng.randrange(50)}],
                         "return": "keys", "limit": 100}
                    c.call("POST", "/query", q)
                else:
                    c.call("GET", f"/changefeed?from_seq={rng.randrange(1, 1000)}&limit=50")
                self.done += 1
        except (OSError, http.client.HTTPException):
            pass


def all_pages(c, body):
    keys, cursor = [], None
    while True:
        q = dict(body)
        if cursor:
            q["cursor"] = cursor
        st, v = c.call("POST", "/query", q)
        if st != 200:
            raise SystemExit(f"query {q} answered {st}: {v}")
        keys += v.get("keys", [])
        cursor = v.get("next_cursor")
        if not cursor:
            return keys


def check(port, model, pending, feed_state, seen_events, after):
    """Verifies data, index and feed; returns (writes checked, new after)."""
    c = Conn(port)
    # Data.
    for key, state in model.items():
        st, v = c.call("GET", f"/entities/{key}")
        got = v["entity"] if st == 200 else None
        allowed = [state] + [p[1] for p in pending if p and p[0] == key]
        if st not in (200, 404) or got not in allowed:
            raise SystemExit(f"DATA {key}: have {got!r} ({st}), acknowledged {state!r}, in flight {pending}")
    # Adopt the in-flight outcome the server chose, so later cycles compare
    # against what is really there.
    for p in pending:
        if p:
            st, v = c.call("GET", f"/entities/{p[0]}")
            model[p[0]] = v["entity"] if st == 200 else None
    present = {k for k, s in model.items() if s is not None}
    # Index vs full scan vs data.
    by_index = all_pages(c, {"table": TABLE, "range": [{"column": "n", "gte": 0}], "return": "keys", "limit": 10000})
    by_scan = all_pages(c, {"table": TABLE, "return": "keys", "limit": 10000})
    if set(by_index) != set(by_scan) or len(by_index) != len(set(by_index)):
        raise SystemExit(f"INDEX: index has {len(by_index)} keys, scan {len(by_scan)}: "
                         f"{sorted(set(by_index) ^ set(by_scan))[:10]}")
    if set(by_scan) != present:
        raise SystemExit(f"SCAN vs DATA: {sorted(set(by_scan) ^ present)[:10]}")
    for n in random.sample(range(50), 5):
        got = set(all_pages(c, {"table": TABLE, "predicates": [{"column": "n", "value": n}],
                                "return": "keys", "limit": 10000}))
        want = {k for k, s in model.items() if s is not None and s["n"] == n}
        if got != want:
            raise SystemExit(f"INDEX n={n}: {sorted(got ^ want)[:10]}")
    # Feed: new events in order, old ones unchanged, replay equals data.
    last = after
    while True:
        st, v = c.call("GET", f"/changefeed?from_seq={last}&limit=10000")
        if st != 200:
            raise SystemExit(f"FEED answered {st}: {v}")
        if not v["events"]:
            break
        for e in v["events"]:
            s = e["sequence"]
            if s <= last:
                raise SystemExit(f"FEED order: {s} after {last}")
            if s in seen_events and seen_events[s] != e:
                raise SystemExit(f"FEED reuse: sequence {s} was {seen_events[s]}, now {e}")
            seen_events[s] = e
            feed_state[e["key"]] = e["value"]
            last = s
    # Sample old events: still the same.
    for s in random.sample(sorted(seen_events), min(20, len(seen_events))):
        st, v = c.call("GET", f"/changefeed?from_seq={s - 1}&limit=1")
        if st == 200 and v["events"] and v["events"][0]["sequence"] == s and v["events"][0] != seen_events[s]:
            raise SystemExit(f"FEED reuse: sequence {s} changed")
    for key, state in model.items():
        if feed_state.get(key) != state:
            raise SystemExit(f"FEED vs DATA {key}: feed says {feed_state.get(key)!r}, data {state!r}")
    c.close()
    return len(model), last


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", required=True)
    ap.add_argument("--cycles", type=int, default=100)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--writers", type=int, default=4)
    ap.add_argument("--keys-per-writer", type=int, default=250)
    ap.add_argument("--threads", type=int, default=2, help="server cores")
    ap.add_argument("--keep", action="store_true", help="keep the data directory")
    a = ap.parse_args()

    root = tempfile.mkdtemp(prefix="themis-soak-")
    data = os.path.join(root, "data")
    model, feed_state, seen_events = {}, {}, {}
    after, acked_total, checked_total = 0, 0, 0
    started = time.time()
    try:
        proc, port = start(a.bin, data, a.threads)
        c = Conn(port)
        st, v = c.call("POST", "/index/create", {"table": TABLE, "column": "n"})
        if st not in (200, 202):
            raise SystemExit(f"index create answered {st}: {v}")
        c.close()
        wait_ready(port)
        for cycle in range(1, a.cycles + 1):
            stop = threading.Event()
            writers = [Writer(port, w, [f"{TABLE}:w{w}k{i}" for i in range(a.keys_per_writer)], model, stop)
                       for w in range(a.writers)]
            reader = Reader(port, stop)
            for t in writers + [reader]:
                t.start()
            time.sleep(a.seconds * random.uniform(0.5, 1.5))
            proc.send_signal(signal.SIGKILL)  # while the load runs
            proc.wait()
            stop.set()
            for t in writers + [reader]:
                t.join(timeout=30)
            acked = sum(w.acked for w in writers)
            acked_total += acked
            pending = [w.pending for w in writers]
            proc, port = start(a.bin, data, a.threads)
            wait_ready(port)
            checked, after = check(port, model, pending, feed_state, seen_events, after)
            checked_total += checked
            print(f"cycle {cycle}: {acked} writes acknowledged, {reader.done} reads; "
                  f"after restart {checked} keys, index and feed (to sequence {after}) agree", flush=True)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        print(f"SOAK OK: {a.cycles} kill -9 cycles, {acked_total} acknowledged writes, "
              f"{checked_total} key checks, {len(seen_events)} feed events verified, "
              f"{time.time() - started:.0f} s")
    finally:
        if not a.keep:
            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"data kept in {root}")


if __name__ == "__main__":
    main()
