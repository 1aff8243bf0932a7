#!/usr/bin/env python3
"""Time-series figures on this machine (issue: time series and retention).

    bench/timeseries.py [path/to/themis_server]   (default: target/release)

Starts the server on one core (port 0, a temp data dir) and measures:
  1. line-protocol ingest, 1,000,000 points of one series (1 point/s of
     series time) in batches of 5,000, points/s;
  2. JSON /ts/put ingest, 200,000 points in batches of 5,000, points/s;
  3. /ts/aggregate over the 1,000,000 points into 60 buckets, p50 of 7 runs
     (these buckets span hours, so per-minute rollups are read).
Say which build you measured: a debug build is many times slower.
"""
import http.client, json, os, re, statistics, subprocess, sys, tempfile, time

binary = sys.argv[1] if len(sys.argv) > 1 else "target/release/themis_server"
data = tempfile.mkdtemp(prefix="themis-ts-bench-")
p = subprocess.Popen(
    [binary, "--port", "0", "--host", "127.0.0.1", "--db", os.path.join(data, "db"), "--threads", "1"],
    env={"THEMIS_FEATURES_TIMESERIES": "true", "PATH": os.environ.get("PATH", "/usr/bin:/bin")},
    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
port = None
for line in p.stdout:
    m = re.search(r"127\.0\.0\.1:(\d+)", line)
    if m:
        port = int(m.group(1))
        break
c = http.client.HTTPConnection("127.0.0.1", port)


def req(method, path, body, ct="application/json"):
    c.request(method, path, body=body, headers={"Content-Type": ct})
    r = c.getresponse()
    return r.status, r.read()


try:
    N, B = 1_000_000, 5_000
    t0 = time.time()
    for b in range(N // B):
        body = "\n".join(f"agg v={i % 1000} {i * 1000}" for i in range(b * B, (b + 1) * B))
        st, d = req("POST", "/api/v2/write?precision=ms", body, "text/plain")
        assert st == 204, (st, d)
    print(f"line protocol, 1 core, batches of {B}: {N / (time.time() - t0):,.0f} points/s")
    t0 = time.time()
    for b in range(40):
        pts = [{"metric": "json", "entity": "e", "timestamp_ms": i, "value": i % 7}
               for i in range(b * B, (b + 1) * B)]
        st, d = req("POST", "/ts/put", json.dumps({"points": pts}))
        assert st == 200, (st, d)
    print(f"JSON /ts/put, 1 core, batches of {B}: {40 * B / (time.time() - t0):,.0f} points/s")
    lat = []
    for _ in range(7):
        t0 = time.time()
        st, d = req("POST", "/ts/aggregate", json.dumps(
            {"metric": "agg.v", "from_ms": 0, "to_ms": N * 1000, "interval_ms": N * 1000 // 60,
             "aggregations": ["min", "max", "avg", "count"]}))
        lat.append((time.time() - t0) * 1000)
        assert st == 200, (st, d)
    v = json.loads(d)
    print(f"/ts/aggregate 1M points -> 60 buckets: p50 {statistics.median(lat):.0f} ms "
          f"(points_read {v['points_read']}, rollups_read {v['rollups_read']})")
finally:
    p.terminate()
    p.wait()
