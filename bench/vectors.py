#!/usr/bin/env python3
"""Vector search figures (issue 13), driven by bench/vectors.sh.

Fashion-MNIST (Debian's dataset-fashion-mnist: 60,000 training images of
784 bytes as the base, the first --queries test images as queries), L2.

1. Exact top-10 ground truth by brute force (numpy).
2. Anchor: in-process hnswlib (M=16, ef_construction=200), queries with one
   thread (knn_query(num_threads=1)), for each ef.
3. THEMIS through HTTP: index (m=16, ef_construction=200), batch_insert of
   the base (build time until every core's graph holds every vector),
   memory per vector (server RSS growth / vectors), then recall@10 and q/s
   for each ef, with a few keep-alive connections sending pre-encoded
   requests (the client costs ~nothing per request, and runs off the
   server's CPU), once the server is idle after the load. Besides q/s,
   each side's queries per CPU second (the server's reactor threads from
   /proc, hnswlib's thread): on a shared machine other processes disturb
   that figure far less.
4. A selective filter (1% of the base, secondary index on "bucket"):
   recall within the filter and latency.
5. Start-up: rebuild from the stored vectors vs a dump.

Writes bench/results/vectors-<label>.json and prints Markdown.
"""
import argparse
import gzip
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time

import numpy as np

DATA = "/usr/share/datasets/fashion-mnist"


def idx_images(path):
    with gzip.open(path, "rb") as f:
        raw = f.read()
    magic, n, rows, cols = struct.unpack(">IIII", raw[:16])
    assert magic == 2051, f"{path}: not an IDX image file"
    return np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(n, rows * cols).astype(np.float32)


def ground_truth(base, queries, k):
    bn = (base * base).sum(1)
    out = np.empty((len(queries), k), dtype=np.int64)
    for i in range(0, len(queries), 100):
        q = queries[i : i + 100]
        d = bn[None, :] - 2.0 * (q @ base.T)
        part = np.argpartition(d, k, axis=1)[:, :k]
        rows = np.arange(len(q))[:, None]
        order = np.argsort(d[rows, part], axis=1)
        out[i : i + 100] = part[rows, order]
    return out


def recall(found, truth):
    hits = sum(len(set(f) & set(t.tolist())) for f, t in zip(found, truth))
    return hits / truth.size


class Conn:
    """One keep-alive HTTP/1.1 connection (raw socket: no client overhead)."""

    def __init__(self, port):
        self.s = socket.create_connection(("127.0.0.1", port))
        self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def send(self, method, path, body=b""):
        head = f"{method} {path} HTTP/1.1\r\nHost: b\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        self.s.sendall(head.encode() + body)

    def raw(self, request):
        self.s.sendall(request)

    def recv(self):
        while b"\r\n\r\n" not in self.buf:
            self.buf += self.s.recv(1 << 20)
        head, rest = self.buf.split(b"\r\n\r\n", 1)
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            k, _, v = line.partition(b":")
            if k.strip().lower() == b"content-length":
                length = int(v)
        while len(rest) < length:
            rest += self.s.recv(1 << 20)
        self.buf = rest[length:]
        return status, rest[:length]

    def call(self, method, path, obj=None):
        self.send(method, path, b"" if obj is None else json.dumps(obj).encode())
        status, body = self.recv()
        return status, (json.loads(body) if body else None)


def request_bytes(path, obj):
    body = json.dumps(obj, separators=(",", ":")).encode()
    head = f"POST {path} HTTP/1.1\r\nHost: b\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


def run_requests(port, requests, conns, client_cpus=None):
    """Sends every request (split over `conns` connections, each with
    2 in flight); returns (bodies in order, seconds). With `client_cpus`
    the client's threads run only there (off the server's CPU)."""
    out = [None] * len(requests)

    def worker(idx):
        c = Conn(port)
        mine = list(range(idx, len(requests), conns))
        inflight = []
        for i in mine:
            c.raw(requests[i])
            inflight.append(i)
            if len(inflight) >= 2:
                j = inflight.pop(0)
                out[j] = c.recv()
        for j in inflight:
            out[j] = c.recv()

    # Threads inherit the affinity of the thread that starts them.
    cpus = os.sched_getaffinity(0)
    if client_cpus:
        os.sched_setaffinity(0, client_cpus)
    try:
        t = time.perf_counter()
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(conns)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        return out, time.perf_counter() - t
    finally:
        os.sched_setaffinity(0, cpus)


def client_cpus_for(server_cpus):
    """The CPUs the client may use: every one but the server's (all of them
    when the server is not pinned, or pinned to every CPU)."""
    if not server_cpus:
        return None
    rest = os.sched_getaffinity(0) - {int(x) for x in server_cpus.split(",")}
    return rest or None


def cpu_ns(pid, prefix=""):
    """CPU time used so far by the threads of `pid` whose name starts
    with `prefix` (all of them by default), in ns (schedstat)."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                if not f.read().startswith(prefix):
                    continue
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except OSError:
            pass
    return total


def settle(pid, limit=300):
    """Waits until the server is nearly idle (RocksDB's flushes and
    compactions after a bulk load run on the server's CPU too)."""
    end = time.time() + limit
    while time.time() < end:
        c = cpu_ns(pid)
        time.sleep(2)
        if (cpu_ns(pid) - c) < 0.05 * 2e9:
            return


def wait_port(port, limit=60):
    end = time.time() + limit
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port)).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"server on {port} did not start")


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def wait_ready(c, limit=900):
    end = time.time() + limit
    while time.time() < end:
        _, st = c.call("GET", "/vector/index/stats")
        idx = st["indexes"]
        if idx and all(i["state"] == "ready" and i["pending_inserts"] == 0 for i in idx):
            return st
        time.sleep(0.1)
    raise SystemExit("vector index not ready")


class Server:
    def __init__(self, binary, data, port, threads, server_cpus):
        self.args = [binary, "--port", str(port), "--db", data, "--threads", str(threads)]
        self.port, self.cpus = port, server_cpus
        self.start()

    def start(self):
        env = {k: v for k, v in os.environ.items() if not k.startswith("THEMIS_")}
        env["THEMIS_LOG_LEVEL"] = "warn"
        cmd = ["taskset", "-c", self.cpus] + self.args if self.cpus else self.args
        self.log = open(self.args[4] + ".log", "ab")
        self.t0 = time.perf_counter()
        self.p = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=self.log)
        wait_port(self.port)

    def stop(self):
        self.p.terminate()
        self.p.wait(60)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--base", type=int, default=60000)
    ap.add_argument("--efs", default="16,32,64,128,256")
    ap.add_argument("--threads", type=int, default=1, help="server cores")
    ap.add_argument("--server-cpus", default="0")
    ap.add_argument("--conns", type=int, default=2)
    ap.add_argument("--label", default="1core")
    ap.add_argument("--work", required=True)
    ap.add_argument("--port", type=int, default=18790)
    ap.add_argument("--rounds", type=int, default=3, help="alternating hnswlib/THEMIS rounds per ef (median)")
    a = ap.parse_args()
    efs = [int(x) for x in a.efs.split(",")]
    k = 10
    res = {"label": a.label, "server_threads": a.threads, "queries": a.queries, "base": a.base, "k": k}

    base = idx_images(f"{DATA}/train-images-idx3-ubyte.gz")[: a.base]
    queries = idx_images(f"{DATA}/t10k-images-idx3-ubyte.gz")[: a.queries]
    t = time.perf_counter()
    truth = ground_truth(base, queries, k)
    res["ground_truth_s"] = round(time.perf_counter() - t, 1)

    # Anchor: hnswlib.
    import hnswlib

    h = hnswlib.Index(space="l2", dim=base.shape[1])
    h.init_index(max_elements=len(base), M=16, ef_construction=200, random_seed=1)
    t = time.perf_counter()
    h.add_items(base, np.arange(len(base)), num_threads=os.cpu_count())
    res["hnswlib_build_s"] = round(time.perf_counter() - t, 1)
    res["hnswlib_build_threads"] = os.cpu_count()

    def hnswlib_round(ef):
        # On the server's CPU when the server is pinned: same core, same load.
        cpus = os.sched_getaffinity(0)
        if a.server_cpus:
            os.sched_setaffinity(0, {int(x) for x in a.server_cpus.split(",")})
        try:
            h.set_ef(max(ef, k))
            t, c = time.perf_counter(), time.thread_time()
            labels, _ = h.knn_query(queries, k=k, num_threads=1)
            s, cs = time.perf_counter() - t, time.thread_time() - c
        finally:
            os.sched_setaffinity(0, cpus)
        return recall(labels, truth), len(queries) / s, len(queries) / cs

    # THEMIS.
    data = os.path.join(a.work, f"data-{a.label}")
    srv = Server(a.bin, data, a.port, a.threads, a.server_cpus)
    c = Conn(a.port)
    rss0 = rss_kb(srv.p.pid)
    st, body = c.call("POST", "/vector/index/create", {"table": "fm", "dimension": base.shape[1], "metric": "l2", "m": 16, "ef_construction": 200})
    assert st == 202, body
    wait_ready(c)
    st, body = c.call("POST", "/index/create", {"table": "fm", "column": "bucket"})
    t = time.perf_counter()
    batch = 500
    reqs = []
    for i in range(0, len(base), batch):
        items = [{"pk": str(j), "vector": base[j].astype(int).tolist(), "bucket": j % 100} for j in range(i, min(i + batch, len(base)))]
        reqs.append(request_bytes("/vector/batch_insert", {"table": "fm", "items": items}))
    encode_s = time.perf_counter() - t
    t = time.perf_counter()
    for r in reqs:
        c.raw(r)
        st, body = c.recv()
        assert st == 200 and json.loads(body)["failed"] == 0, body[:300]
    stored_s = time.perf_counter() - t
    stats = wait_ready(c)
    build_s = time.perf_counter() - t
    rss1 = rss_kb(srv.p.pid)
    idx = stats["indexes"][0]
    assert idx["vectors"] == len(base), idx
    res["themis_insert_http_s"] = round(stored_s, 1)
    res["themis_build_s"] = round(build_s, 1)
    res["request_encoding_s"] = round(encode_s, 1)
    res["rss_growth_bytes_per_vector"] = int((rss1 - rss0) * 1024 / len(base))
    res["stats_memory_estimate_per_vector"] = int(idx["memory_bytes_estimate"] / len(base))
    print(f"THEMIS build {build_s:.1f}s, {res['rss_growth_bytes_per_vector']} B/vector RSS", file=sys.stderr)

    # Recall and q/s: hnswlib and THEMIS alternate, round after round, for
    # each ef, so that both see the same machine load; medians reported.
    settle(srv.p.pid)
    res["themis"], res["hnswlib"], res["rounds"] = [], [], a.rounds
    qlist = [q.astype(int).tolist() for q in queries]
    for ef in efs:
        reqs = [request_bytes("/vector/search", {"table": "fm", "vector": q, "k": k, "ef": max(ef, k)}) for q in qlist]
        client = client_cpus_for(a.server_cpus)
        run_requests(a.port, reqs[:100], a.conns, client)  # warm-up
        hq, tq, hc, tc = [], [], [], []
        for _ in range(a.rounds):
            h_recall, q, qc = hnswlib_round(ef)
            hq.append(q)
            hc.append(qc)
            c0 = cpu_ns(srv.p.pid, "themis-shard")
            out, s = run_requests(a.port, reqs, a.conns, client)
            tc.append(len(reqs) / ((cpu_ns(srv.p.pid, "themis-shard") - c0) * 1e-9))
            tq.append(len(reqs) / s)
        found = []
        for st, body in out:
            assert st == 200, body[:300]
            found.append([int(r["pk"]) for r in json.loads(body)["results"]])
        med = lambda xs: sorted(xs)[len(xs) // 2]
        res["hnswlib"].append({"ef": ef, "recall": h_recall, "qps": med(hq), "qps_rounds": [round(x) for x in hq], "q_per_cpu_s": med(hc)})
        res["themis"].append({"ef": ef, "recall": recall(found, truth), "qps": med(tq), "qps_rounds": [round(x) for x in tq], "q_per_reactor_cpu_s": med(tc)})
        print(f"ef={ef}: hnswlib recall {h_recall:.4f} {med(hq):.0f} q/s {[round(x) for x in hq]} ({med(hc):.0f} per CPU s); "
              f"THEMIS recall {res['themis'][-1]['recall']:.4f} {med(tq):.0f} q/s {[round(x) for x in tq]} ({med(tc):.0f} per reactor CPU s); "
              f"ratio {med(tq)/med(hq):.2f} (CPU {med(tc)/med(hc):.2f})", file=sys.stderr)
    del h

    # A selective filter: bucket = q % 100 (1% of the base), exact within it.
    while True:
        _, ist = c.call("GET", "/index/stats")
        if all(i["state"] == "ready" for i in ist["indexes"]):
            break
        time.sleep(0.2)
    hits, total, lat = 0, 0, []
    bucket_of = np.arange(len(base)) % 100
    for i, q in enumerate(queries[:200]):
        b = i % 100
        members = np.nonzero(bucket_of == b)[0]
        d = ((base[members] - q) ** 2).sum(1)
        want = set(members[np.argsort(d)[:k]].tolist())
        t = time.perf_counter()
        st, body = c.call("POST", "/vector/search", {"table": "fm", "vector": qlist[i], "k": k, "filter": {"predicates": [{"column": "bucket", "value": b}]}, "explain": True})
        lat.append(time.perf_counter() - t)
        got = {int(r["pk"]) for r in body["results"]}
        hits += len(got & want)
        total += k
        mode = body["explain"]["mode"]
    lat.sort()
    res["filtered"] = {"selectivity": 0.01, "mode": mode, "recall": hits / total, "p50_ms": round(lat[len(lat) // 2] * 1000, 2), "p99_ms": round(lat[int(len(lat) * 0.99)] * 1000, 2)}
    print(f"filtered: {res['filtered']}", file=sys.stderr)

    # Start-up: rebuild vs dump.
    def restart_ready():
        srv.stop()
        srv.start()
        cc = Conn(a.port)
        wait_ready(cc)
        return round(time.perf_counter() - srv.t0, 1), cc

    res["startup_rebuild_s"], c = restart_ready()
    st, body = c.call("POST", "/vector/index/save")
    assert st == 200, body
    res["startup_dump_s"], c = restart_ready()
    _, st = c.call("GET", "/vector/index/stats")
    res["startup_dump_from"] = [x["load"]["from"] for x in st["indexes"][0]["cores"]]
    srv.stop()

    os.makedirs("bench/results", exist_ok=True)
    with open(f"bench/results/vectors-{a.label}.json", "w") as f:
        json.dump(res, f, indent=1)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
