#!/usr/bin/env python3
"""Time-series figures (issue 15: time series and retention).

    bench/timeseries.py [--before BIN] [--after BIN] [--rounds 3]
                        [--only ingest,aggregate,retention]
                        [--retention-points 10000000] [--duration 5]

BIN defaults to target/release/themis_server (--after). With --before, the
ingest rounds alternate the two binaries (before, after, before, ...), so
their ratio is measured under the same machine load.

The server runs `--threads 1` pinned to CPU 0 (`taskset -c 0`, its helper
and RocksDB threads included); wrk runs pinned to CPU 1, one thread with 4
connections, with bodies built before the run (bench/wrk_lines.lua,
bench/wrk_bodies.lua), so the client only sends. (One wrk thread: wrk
starts each thread right after building its bodies, so a second thread's
build would give the first a head start outside the measured time.) Each
server starts on a fresh data directory.

  ingest     line protocol, batches of 5,000 points (every point an append),
             and JSON /ts/put, batches of 5,000 points: points/s.
  aggregate  /ts/aggregate over 1,000,000 points of one series into 60
             buckets, and over 1,000 series x 1,000 points grouped by a tag
             (10 groups) into 60 buckets: p50 of 7.
  retention  time for POST /retention/run to delete N expired points
             (100 series), and GET /entities p99 (wrk, 8 connections)
             without and while it runs.

Say which build you measured: a debug build is many times slower.
"""
import argparse, http.client, json, os, re, signal, statistics, subprocess, sys, tempfile, time

ap = argparse.ArgumentParser()
ap.add_argument("--before")
ap.add_argument("--after", default="target/release/themis_server")
ap.add_argument("--rounds", type=int, default=3)
ap.add_argument("--only", default="ingest,aggregate,retention")
ap.add_argument("--retention-points", type=int, default=10_000_000)
ap.add_argument("--duration", type=int, default=5)
args = ap.parse_args()
HERE = os.path.dirname(os.path.abspath(__file__))
LP_POINTS = 5_000


class Server:
    def __init__(self, binary, config=None, pin="0"):
        self.dir = tempfile.mkdtemp(prefix="themis-ts-bench-")
        cmd = ["taskset", "-c", pin, binary, "--port", "0", "--host", "127.0.0.1",
               "--db", os.path.join(self.dir, "db"), "--threads", "1"]
        env = {"THEMIS_FEATURES_TIMESERIES": "true", "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        if config:
            path = os.path.join(self.dir, "themis.yaml")
            for name, text in config.items():
                with open(os.path.join(self.dir, name), "w") as f:
                    f.write(text)
            cmd += ["--config", path]
        self.p = subprocess.Popen(cmd, env=env, cwd=self.dir, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)
        self.port = None
        for line in self.p.stdout:
            m = re.search(r"127\.0\.0\.1:(\d+)", line)
            if m:
                self.port = int(m.group(1))
                break
        if self.port is None:
            raise SystemExit(f"{binary}: did not start")
        self.c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)

    def req(self, method, path, body=None, ct="application/json"):
        self.c.request(method, path, body=body, headers={"Content-Type": ct})
        r = self.c.getresponse()
        return r.status, r.read()

    def stop(self):
        self.p.terminate()
        self.p.wait()
        subprocess.run(["rm", "-rf", self.dir])


def wrk(port, script, path, env, duration, conns=4, threads=2, extra=None):
    cmd = ["taskset", "-c", "1", "wrk", "-t", str(threads), "-c", str(conns), "-d", f"{duration}s",
           "--latency", "-s", os.path.join(HERE, script), f"http://127.0.0.1:{port}{path}"]
    e = dict(os.environ, **env)
    p = subprocess.Popen(cmd, env=e, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if extra:
        extra(p)
    out, _ = p.communicate()
    for line in out.splitlines():
        if line.startswith("JSON "):
            return json.loads(line[5:])
    raise SystemExit(f"wrk said: {out}")


def json_bodies():
    """240 /ts/put bodies of 5,000 points, each of a series of its own."""
    path = os.path.join(tempfile.gettempdir(), "themis-ts-json-bodies")
    if not os.path.exists(path):
        with open(path + ".tmp", "w") as f:
            for b in range(240):
                pts = [{"metric": "json", "entity": f"b{b}", "timestamp_ms": 1_700_000_000_000 + i,
                        "value": i % 7} for i in range(LP_POINTS)]
                f.write(json.dumps({"points": pts}) + "\n")
        os.rename(path + ".tmp", path)
    return path


def ingest_round(binary):
    s = Server(binary)
    try:
        # Line protocol: enough bodies that none is sent twice.
        w = wrk(s.port, "wrk_lines.lua", "/", {"WRK_LP_BODIES": "1000", "WRK_LP_POINTS": str(LP_POINTS)},
                args.duration, threads=1)
        lp = w["requests"] * LP_POINTS / (w["duration_us"] / 1e6)
        bad = w["non2xx"] + w["socket_errors"]
    finally:
        s.stop()
    s = Server(binary)
    try:
        w = wrk(s.port, "wrk_bodies.lua", "/ts/put",
                {"WRK_BODIES": json_bodies(), "WRK_METHOD": "POST", "WRK_PATH": "/ts/put"}, args.duration,
                threads=1)
        js = w["requests"] * LP_POINTS / (w["duration_us"] / 1e6)
        bad += w["non2xx"] + w["socket_errors"]
    finally:
        s.stop()
    return lp, js, bad


def load_lines(s, lines_of_batch, batches):
    for b in range(batches):
        st, d = s.req("POST", "/api/v2/write?precision=ms", "\n".join(lines_of_batch(b)), "text/plain")
        assert st == 204, (st, d)


def p50_of(s, body, n=7):
    lat = []
    for _ in range(n):
        t0 = time.time()
        st, d = s.req("POST", "/ts/aggregate", json.dumps(body))
        lat.append((time.time() - t0) * 1000)
        assert st == 200, (st, d)
    return statistics.median(lat), json.loads(d)


def aggregate(binary):
    s = Server(binary)
    try:
        n, b = 1_000_000, 5_000
        load_lines(s, lambda k: (f"agg v={i % 1000} {i * 1000}" for i in range(k * b, (k + 1) * b)), n // b)
        p50, v = p50_of(s, {"metric": "agg.v", "from_ms": 0, "to_ms": n * 1000, "interval_ms": n * 1000 // 60,
                            "aggregations": ["min", "max", "avg", "count"]})
        print(f"  /ts/aggregate 1M points of one series -> 60 buckets: p50 {p50:.1f} ms "
              f"(points_read {v['points_read']}, rollups_read {v['rollups_read']})")
        # 1,000 series x 1,000 points, one point a minute, tag dc in 10 values.
        load_lines(s, lambda e: (f"grp,host=e{e},dc=dc{e % 10} v={(e * 7 + i) % 100} {i * 60_000}"
                                 for i in range(1000)), 1000)
        p50, v = p50_of(s, {"metric": "grp.v", "from_ms": 0, "to_ms": 1000 * 60_000, "interval_ms": 1000 * 1000,
                            "group_by": ["dc"], "aggregations": ["min", "max", "avg", "count"]})
        assert len(v["groups"]) == 10 and sum(g["series"] for g in v["groups"]) == 1000, v
        print(f"  /ts/aggregate 1,000 series x 1,000 points grouped by a tag (10 groups) -> 60 buckets: "
              f"p50 {p50:.1f} ms (points_read {v['points_read']}, rollups_read {v['rollups_read']})")
        return p50
    finally:
        s.stop()


def retention(binary, points):
    config = {
        "themis.yaml": "features:\n  timeseries: true\n  retention:\n    enabled: true\n"
                       "    interval_hours: 1000\n    policies_path: ./policies.yaml\n",
        "policies.yaml": "policies:\n  - {name: old, metric: 'old.*', max_age: 1h}\n",
    }
    s = Server(binary, config)
    try:
        series = 100
        per = points // series
        old = int(time.time() * 1000) - 48 * 3_600_000
        t0 = time.time()
        b = 5_000
        for e in range(series):
            for k in range(per // b):
                body = "\n".join(f"old,host=e{e} v={i % 100} {old + i * 10}" for i in range(k * b, (k + 1) * b))
                st, d = s.req("POST", "/api/v2/write?precision=ms", body, "text/plain")
                assert st == 204, (st, d)
        print(f"  loaded {series * per:,} points in {time.time() - t0:.0f} s")
        st, _ = s.req("PUT", "/entities/bench:1", json.dumps({"v": "x" * 100}))
        assert st in (200, 201), st
        env = {"WRK_BODIES": "", "WRK_METHOD": "GET", "WRK_PATH": "/entities/bench:1"}
        base = wrk(s.port, "wrk_bodies.lua", "/entities/bench:1", env, 5, conns=8, threads=1)
        st, d = s.req("POST", "/retention/run", json.dumps({"dry_run": True}))
        expired = json.loads(d)["deleted_total"]
        result = {}

        def run_pass(p):
            time.sleep(1)
            t = time.time()
            st, d = s.req("POST", "/retention/run", "{}")
            result["s"] = time.time() - t
            result["v"] = json.loads(d)
            assert st == 200, (st, d)
            p.send_signal(signal.SIGINT)

        during = wrk(s.port, "wrk_bodies.lua", "/entities/bench:1", env, 600, conns=8, threads=1, extra=run_pass)
        st, d = s.req("POST", "/ts/query", json.dumps({"metric": "old.v", "from_ms": 0, "to_ms": old + 10**9,
                                                        "limit": 10}))
        left = json.loads(d)["count"]
        print(f"  retention: deleted {result['v']['deleted_total']:,} expired points (dry run counted "
              f"{expired:,}) in {result['s']:.2f} s; left {left}")
        print(f"  GET /entities p99 without a pass {base['p99_us'] / 1000:.2f} ms ({base['requests'] / base['duration_us'] * 1e6:,.0f}/s); "
              f"while it runs {during['p99_us'] / 1000:.2f} ms ({during['requests'] / during['duration_us'] * 1e6:,.0f}/s, "
              f"{during['duration_us'] / 1e6:.1f} s of wrk)")
    finally:
        s.stop()


print(f"load average: {os.getloadavg()}")
only = args.only.split(",")
if "ingest" in only:
    runs = {"before": [], "after": []}
    for r in range(args.rounds):
        for label, binary in (("before", args.before), ("after", args.after)):
            if not binary:
                continue
            lp, js, bad = ingest_round(binary)
            runs[label].append((lp, js))
            print(f"round {r + 1} {label}: line protocol {lp:,.0f} points/s, JSON {js:,.0f} points/s"
                  f"{'' if bad == 0 else f' ({bad} failed requests!)'}  load {os.getloadavg()[0]:.2f}")
    for label, rs in runs.items():
        if rs:
            print(f"{label}: line protocol median {statistics.median(r[0] for r in rs):,.0f} points/s, "
                  f"JSON median {statistics.median(r[1] for r in rs):,.0f} points/s")
    if runs["before"]:
        ratios = [a[0] / b[0] for a, b in zip(runs["after"], runs["before"])]
        print(f"line protocol after/before per round: {', '.join(f'{x:.2f}' for x in ratios)}")
if "aggregate" in only:
    print("aggregate (after):")
    aggregate(args.after)
if "retention" in only:
    print(f"retention (after), {args.retention_points:,} points:")
    retention(args.after, args.retention_points)
print(f"load average: {os.getloadavg()}")
