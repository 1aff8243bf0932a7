#!/usr/bin/env python3
"""Where a vector search's time goes (issue 13): loads Fashion-MNIST's
60,000 training vectors into a 1-core server pinned to CPU 0, prints the
time per request for GET /health (the HTTP floor), a search body
answered 404 (the floor plus reading the body), k=1/ef=1 (the fixed
cost of a search) and k=10 at ef 16/32/64, with 8 connections (the
client kept off the server's CPU), and how busy the server was
(its CPU time from /proc: ~100 % means the server, not the Python
client, sets the pace), then records `perf record -g`
of the server for 6 s of ef-32 searches into <scratch dir>/perf.data
(cpu-clock: this machine has no hardware counters).

    python3 bench/vectors_profile.py <themis_server> <scratch dir>
"""
import os, sys, time, subprocess
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vectors as V
binary, work = sys.argv[1], sys.argv[2]
base = V.idx_images(f"{V.DATA}/train-images-idx3-ubyte.gz")[:60000]
queries = V.idx_images(f"{V.DATA}/t10k-images-idx3-ubyte.gz")[:500]
srv = V.Server(binary, os.path.join(work, "data"), 18796, 1, "0")
c = V.Conn(18796)
st, body = c.call("POST", "/vector/index/create", {"table": "fm", "dimension": 784, "metric": "l2", "m": 16, "ef_construction": 200})
V.wait_ready(c)
for i in range(0, len(base), 500):
    items = [{"pk": str(j), "vector": base[j].astype(int).tolist()} for j in range(i, min(i + 500, len(base)))]
    c.raw(V.request_bytes("/vector/batch_insert", {"table": "fm", "items": items})); st, b = c.recv(); assert st == 200
V.wait_ready(c)
def cpu_s(pid):
    """CPU seconds the process has used (all threads)."""
    f = open(f"/proc/{pid}/stat").read().split(")")[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


client = V.client_cpus_for("0")
def measure(label, reqs):
    V.run_requests(18796, reqs[:100], 8, client)
    c0 = cpu_s(srv.p.pid)
    out, s = V.run_requests(18796, reqs * 3, 8, client)
    used = cpu_s(srv.p.pid) - c0
    n = len(reqs) * 3
    print(f"{label}: {n/s:.0f} q/s, {s/n*1e6:.0f} us a request, server busy {100*used/s:.0f} %, {used/n*1e6:.0f} us CPU a request", flush=True)
    return out


# The floor: an HTTP request with no body; then a search body parsed in
# full but answered 404 (no such table): the request and its parse.
measure("GET /health", [b"GET /health HTTP/1.1\r\nHost: b\r\n\r\n"] * len(queries))
measure("search, unknown table (404)", [V.request_bytes("/vector/search", {"table": "nope", "vector": q.astype(int).tolist()}) for q in queries])
for k, ef in ((1, 1), (10, 16), (10, 32), (10, 64)):
    reqs = [V.request_bytes("/vector/search", {"table": "fm", "vector": q.astype(int).tolist(), "k": k, "ef": ef}) for q in queries]
    measure(f"k={k} ef={ef}", reqs)
reqs = [V.request_bytes("/vector/search", {"table": "fm", "vector": q.astype(int).tolist(), "k": 10, "ef": 32}) for q in queries]
perf = subprocess.Popen(["perf", "record", "-e", "cpu-clock", "-g", "-o", os.path.join(work, "perf.data"), "-p", str(srv.p.pid), "--", "sleep", "6"])
t = time.time()
while time.time() - t < 6.5:
    V.run_requests(18796, reqs, 8, client)
perf.wait()
srv.stop()
