#!/usr/bin/env python3
"""Semantic cache and LLM store figures (issue 14), driven by bench/cache.sh.

1. Lookup throughput and latency on one server core, with --entries cached
   entries of 384-dimensional embeddings: exact hit, semantic hit, miss.
   Embeddings are generated: numpy's PCG64 with a fixed seed, standard
   normal components (then normalised by the server, cosine). A semantic
   query is a cached entry's embedding plus noise (sigma 0.1 per
   component, cosine similarity about 0.99 to its entry) under another
   prompt; a miss is a fresh random vector (similarity about 0.2 to its
   nearest entry) with threshold 0.9. wrk sends pre-encoded bodies
   (bench/wrk_bodies.lua); its own p50/p99.
2. Hit quality on Fashion-MNIST (Debian dataset-fashion-mnist): the first
   --mnist-entries training images are cached (response = the class), the
   first --mnist-queries test images are looked up; a hit is correct when
   the cached class equals the query's class. Precision and recall of
   semantic hits for each threshold (one lookup per query at a tiny
   threshold gives the nearest entry's similarity; a threshold t hits
   exactly when that similarity >= t).
3. LLM store: ingest rate through HTTP (wrk POST), then list-page latency
   (limit 50, newest first; and with a model_version filter matching 10%)
   once --interactions are stored.

Writes bench/results/cache-<label>.json and prints Markdown.
"""
import argparse
import gzip
import http.client
import json
import os
import struct
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

DATA = "/usr/share/datasets/fashion-mnist"
HERE = os.path.dirname(os.path.abspath(__file__))


def start(binary, cpus, port, data, env_extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("THEMIS_")}
    env.update(env_extra)
    log = open(os.path.join(data, "server.log"), "w")
    # Unpinned while loading (the graph's helper thread may use every CPU);
    # pin() moves every thread onto the server CPUs before measuring.
    p = subprocess.Popen(
        [binary, "--host", "127.0.0.1", "--port", str(port),
         "--db", os.path.join(data, "db"), "--threads", "1"],
        env=env, stdout=log, stderr=log)
    for _ in range(300):
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            c.request("GET", "/health")
            if c.getresponse().status == 200:
                return p
        except OSError:
            time.sleep(0.1)
    raise SystemExit("server did not start")


def pin(p, cpus):
    subprocess.run(["taskset", "-a", "-p", "-c", cpus, str(p.pid)], check=True, capture_output=True)


class Api:
    def __init__(self, port):
        self.port = port
        self.c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)

    def call(self, method, path, body=None):
        data = body if isinstance(body, (bytes, str)) or body is None else json.dumps(body)
        headers = {"Content-Type": "application/json"} if data is not None else {}
        self.c.request(method, path, body=data, headers=headers)
        r = self.c.getresponse()
        raw = r.read()
        return r.status, (json.loads(raw) if raw else None)


def parallel_put(port, path, bodies, threads=4):
    """Sends every body (keep-alive, `threads` connections); fails on non-2xx."""
    chunks = [bodies[i::threads] for i in range(threads)]
    errors = []

    def run(chunk):
        api = Api(port)
        for b in chunk:
            st, v = api.call("POST", path, b)
            if st >= 300:
                errors.append((st, v))
                return

    ts = [threading.Thread(target=run, args=(c,)) for c in chunks]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if errors:
        raise SystemExit(f"put failed: {errors[0]}")


def wrk(port, path, bodies, cpus, seconds, conns, method="POST"):
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
        for b in bodies:
            f.write(b + "\n")
        name = f.name
    env = dict(os.environ, WRK_BODIES=name if bodies else "", WRK_PATH=path, WRK_METHOD=method)
    out = subprocess.run(
        ["taskset", "-c", cpus, "wrk", "-t1", f"-c{conns}", f"-d{seconds}s",
         "-s", os.path.join(HERE, "wrk_bodies.lua"), f"http://127.0.0.1:{port}"],
        env=env, capture_output=True, text=True, check=True).stdout
    os.unlink(name)
    line = next(l for l in out.splitlines() if l.startswith("JSON "))
    r = json.loads(line[5:])
    r["rps"] = r["requests"] / (r["duration_us"] / 1e6)
    if r["non2xx"] or r["socket_errors"]:
        raise SystemExit(f"wrk saw errors: {r}")
    return r


def graph_settled(api, n):
    """Waits until the cache index's graph holds all `n` vectors."""
    for _ in range(3600):
        st, v = api.call("GET", "/vector/index/stats?table=semantic_cache")
        idx = (v or {}).get("indexes", [])
        if st == 200 and idx and idx[0]["state"] == "ready" and idx[0]["vectors"] == n \
                and idx[0]["pending_inserts"] == 0:
            i = dict(idx[0])
            i.pop("cores", None)
            return i
        time.sleep(1)
    raise SystemExit("the graph did not settle")


def lookups(args, res):
    rng = np.random.Generator(np.random.PCG64(14))
    dim = 384
    n = args.entries
    data = tempfile.mkdtemp(prefix="cache-bench-")
    p = start(args.bin, args.server_cpus, args.port, data, {
        "THEMIS_FEATURES_SEMANTIC_CACHE": "true",
        "THEMIS_FEATURES_VECTORS": "true",
        "THEMIS_SEMANTIC_CACHE_DIMENSION": str(dim),
        "THEMIS_SEMANTIC_CACHE_MAX_ENTRIES": str(n * 2),
        "THEMIS_SEMANTIC_CACHE_DEFAULT_TTL_SECONDS": "0",
        "THEMIS_LOG_LEVEL": "warn",
    })
    try:
        api = Api(args.port)
        emb = rng.standard_normal((n, dim), dtype=np.float32)
        params = {"model": "bench", "temperature": 0}
        t0 = time.time()
        bodies = [json.dumps({"prompt": f"prompt {i}", "response": f"answer {i}", "params": params,
                              "embedding": [round(float(x), 5) for x in emb[i]]}) for i in range(n)]
        gen_s = time.time() - t0
        t0 = time.time()
        parallel_put(args.port, "/cache/put", bodies)
        put_s = time.time() - t0
        idx = graph_settled(api, n)
        settle_s = time.time() - t0
        _, stats = api.call("GET", "/cache/stats")
        assert stats["entries"] == n, stats
        res["cache_setup"] = {"entries": n, "dimension": dim, "put_s": put_s, "puts_per_s": n / put_s,
                              "graph_settled_s": settle_s, "body_gen_s": gen_s, "index": idx}
        pick = rng.integers(0, n, 2000)
        exact = [json.dumps({"prompt": f"PROMPT  {i}", "params": params}) for i in pick]
        noisy = emb[pick] + rng.standard_normal((len(pick), dim), dtype=np.float32) * 0.1
        semantic = [json.dumps({"prompt": f"another wording {i}", "params": params, "threshold": 0.9,
                                "embedding": [round(float(x), 5) for x in v]}) for i, v in zip(pick, noisy)]
        fresh = rng.standard_normal((2000, dim), dtype=np.float32)
        miss = [json.dumps({"prompt": f"never asked {i}", "params": params, "threshold": 0.9,
                            "embedding": [round(float(x), 5) for x in v]}) for i, v in enumerate(fresh)]
        # Keep the bodies that answer what their kind should (an HNSW search
        # may miss a near duplicate); the share that did is reported.
        kept = {}
        for kind, bs, want in (("exact", exact, "exact"), ("semantic", semantic, "semantic"), ("miss", miss, None)):
            ok = []
            for b in bs:
                _, v = api.call("POST", "/cache/query", b)
                if (v.get("match") if v["hit"] else None) == want:
                    ok.append(b)
            kept[kind] = ok
            res.setdefault("answered_as_expected", {})[kind] = len(ok) / len(bs)
        exact, semantic, miss = kept["exact"], kept["semantic"], kept["miss"]
        pin(p, args.server_cpus)
        res["lookups"] = {}
        for kind, bs in (("exact", exact), ("semantic", semantic), ("miss", miss)):
            res["lookups"][kind] = wrk(args.port, "/cache/query", bs, args.client_cpus, args.seconds, args.conns)
        _, res["cache_stats_after"] = api.call("GET", "/cache/stats")
    finally:
        p.terminate()
        p.wait()
        subprocess.run(["rm", "-rf", data])


def idx_file(name, magic):
    with gzip.open(os.path.join(DATA, name), "rb") as f:
        raw = f.read()
    if magic == 2051:
        _, n, r, c = struct.unpack(">IIII", raw[:16])
        return np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(n, r * c).astype(np.float32)
    _, n = struct.unpack(">II", raw[:8])
    return np.frombuffer(raw, dtype=np.uint8, offset=8)


def quality(args, res):
    base = idx_file("train-images-idx3-ubyte.gz", 2051)[: args.mnist_entries]
    base_y = idx_file("train-labels-idx1-ubyte.gz", 2049)[: args.mnist_entries]
    q = idx_file("t10k-images-idx3-ubyte.gz", 2051)[: args.mnist_queries]
    q_y = idx_file("t10k-labels-idx1-ubyte.gz", 2049)[: args.mnist_queries]
    data = tempfile.mkdtemp(prefix="cache-mnist-")
    p = start(args.bin, args.server_cpus, args.port, data, {
        "THEMIS_FEATURES_SEMANTIC_CACHE": "true",
        "THEMIS_FEATURES_VECTORS": "true",
        "THEMIS_SEMANTIC_CACHE_DIMENSION": "784",
        "THEMIS_SEMANTIC_CACHE_DEFAULT_TTL_SECONDS": "0",
        "THEMIS_LOG_LEVEL": "warn",
    })
    try:
        api = Api(args.port)
        bodies = [json.dumps({"prompt": f"train image {i}", "response": int(base_y[i]),
                              "embedding": [int(x) for x in base[i]]}) for i in range(len(base))]
        parallel_put(args.port, "/cache/put", bodies)
        graph_settled(api, len(base))
        pin(p, args.server_cpus)
        sims, correct = [], []
        for i in range(len(q)):
            _, v = api.call("POST", "/cache/query", {"prompt": f"test image {i}", "threshold": 1e-9,
                                                      "embedding": [int(x) for x in q[i]]})
            assert v["hit"] and v["match"] == "semantic", v
            sims.append(v["similarity"])
            correct.append(v["response"] == int(q_y[i]))
        sims, correct = np.array(sims), np.array(correct)
        rows = []
        for t in (0.80, 0.85, 0.90, 0.92, 0.94, 0.96, 0.97, 0.98, 0.99):
            hit = sims >= t
            tp = int((hit & correct).sum())
            rows.append({"threshold": t, "hit_rate": float(hit.mean()),
                         "precision": tp / int(hit.sum()) if hit.any() else None,
                         "recall": tp / len(q)})
        res["quality"] = {"entries": len(base), "queries": len(q), "nearest_correct": float(correct.mean()),
                          "rows": rows}
    finally:
        p.terminate()
        p.wait()
        subprocess.run(["rm", "-rf", data])


def llm(args, res):
    data = tempfile.mkdtemp(prefix="llm-bench-")
    p = start(args.bin, args.server_cpus, args.port, data, {
        "THEMIS_FEATURES_LLM_STORE": "true", "THEMIS_LOG_LEVEL": "warn"})
    try:
        pin(p, args.server_cpus)
        api = Api(args.port)
        bodies = [json.dumps({"prompt": f"Summarise ticket {i}: " + "lorem ipsum " * 20,
                              "response": "A summary. " * 20, "model_version": f"m{i % 10}",
                              "prompt_template_id": "summarise-v1", "token_count": 100 + i % 50,
                              "latency_ms": 250.0 + i % 100}) for i in range(1000)]
        first = wrk(args.port, "/llm/interaction", bodies, args.client_cpus, args.seconds, args.conns)
        res["llm_ingest"] = first
        t0 = time.time()
        while True:
            _, v = api.call("GET", "/stats")
            stored = sum(s["llm_interactions"] for s in v["server"]["per_shard"])
            if stored >= args.interactions or time.time() - t0 > args.ingest_limit_s:
                break
            wrk(args.port, "/llm/interaction", bodies, args.client_cpus, 10, args.conns)
        res["llm_stored"] = stored
        res["llm_list"] = {
            "newest_50": wrk(args.port, "/llm/interaction?limit=50", [], args.client_cpus, args.seconds, 8, "GET"),
            "model_filter_10pct_50": wrk(args.port, "/llm/interaction?limit=50&model_version=m3", [],
                                         args.client_cpus, args.seconds, 8, "GET"),
        }
    finally:
        p.terminate()
        p.wait()
        subprocess.run(["rm", "-rf", data])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--port", type=int, default=18990)
    ap.add_argument("--server-cpus", default="0")
    ap.add_argument("--client-cpus", default="1")
    ap.add_argument("--entries", type=int, default=100_000)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--conns", type=int, default=32)
    ap.add_argument("--mnist-entries", type=int, default=10_000)
    ap.add_argument("--mnist-queries", type=int, default=1000)
    ap.add_argument("--interactions", type=int, default=1_000_000)
    ap.add_argument("--ingest-limit-s", type=int, default=300)
    ap.add_argument("--only", default="lookups,quality,llm")
    ap.add_argument("--label", default="run")
    args = ap.parse_args()
    res = {"machine": f"{os.cpu_count()} CPUs (server on CPU {args.server_cpus}, client on {args.client_cpus})"}
    for part in args.only.split(","):
        {"lookups": lookups, "quality": quality, "llm": llm}[part](args, res)
        print(json.dumps(res, indent=1), file=sys.stderr)
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    with open(os.path.join(HERE, "results", f"cache-{args.label}.json"), "w") as f:
        json.dump(res, f, indent=1)
    if "lookups" in res:
        print("| lookup | req/s | p50 | p99 |\n|---|---:|---:|---:|")
        for k, r in res["lookups"].items():
            print(f"| {k} | {r['rps']:,.0f} | {r['p50_us']/1000:.2f} ms | {r['p99_us']/1000:.2f} ms |")
    if "quality" in res:
        print("\n| threshold | hit rate | precision | recall |\n|---:|---:|---:|---:|")
        for r in res["quality"]["rows"]:
            pr = "–" if r["precision"] is None else f"{r['precision']:.3f}"
            print(f"| {r['threshold']:.2f} | {r['hit_rate']:.3f} | {pr} | {r['recall']:.3f} |")
    if "llm_ingest" in res:
        r = res["llm_ingest"]
        print(f"\nLLM ingest: {r['rps']:,.0f} interactions/s (p99 {r['p99_us']/1000:.2f} ms); "
              f"{res['llm_stored']:,} stored")
        for k, r in res["llm_list"].items():
            print(f"| list {k} | {r['rps']:,.0f} req/s | p50 {r['p50_us']/1000:.2f} ms | p99 {r['p99_us']/1000:.2f} ms |")


if __name__ == "__main__":
    main()
