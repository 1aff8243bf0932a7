#!/usr/bin/env bash
# Query figures (issue: predicate queries and secondary indexes):
#
#   bench/query.sh [--entities N] [--duration S] [--server-cpus N]
#
#   1. Loads N entities (default 1,000,000; 10 per value of "grp"), creates
#      an index on "grp" and waits for it to be ready.
#   2. Indexed equality query returning 10 entities: queries/s and p99
#      (closed loop, 32 connections); single-entity GET the same way, for
#      the ratio.
#   3. The same query on the unindexed copy "grp_copy": a full scan.
#   4. Indexed query and GET again after a restart (data flushed to SST
#      files, block cache warmed by one discarded run).
#   5. The full scan with the server on 1 core and on 2 cores.
#
# Prints a Markdown summary; raw results go to bench/results/query.json.
set -euo pipefail
cd "$(dirname "$0")/.."

ENTITIES=1000000
DURATION=10
SERVER_CPUS=""
while [ $# -gt 0 ]; do
  case "$1" in
    --entities) ENTITIES="$2"; shift 2 ;;
    --duration) DURATION="$2"; shift 2 ;;
    --server-cpus) SERVER_CPUS="$2"; shift 2 ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
NGROUPS=$(( ENTITIES / 10 ))

. bench/lib.sh
bench_setup
QB="$BIN/themis-query-bench"
WORK=$(mktemp -d /tmp/themis-query-bench.XXXXXX)
PORT=18767
SERVER_PID=""
cleanup() { [ -z "$SERVER_PID" ] || kill "$SERVER_PID" 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

start() { # cpus threads
  (cd "$WORK" && exec taskset -c "$1" "$BIN/themis_server" --host 127.0.0.1 --port $PORT \
    --threads "$2" --db "$WORK/db") > "$WORK/server.log" 2>&1 &
  SERVER_PID=$!
  wait_port $PORT "$WORK/server.log"
}
stop() { kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true; SERVER_PID=""; sleep 0.5; }
qb() { taskset -c "$CLIENT_LIST" "$QB" --addr "127.0.0.1:$PORT" "$@"; }

echo "machine: $NCPU CPUs; server CPUs 0-$((SERVER_CPUS - 1)), client CPUs $CLIENT_LIST; $ENTITIES entities"
start "0-$((SERVER_CPUS - 1))" "$SERVER_CPUS"
echo "== load"
qb load --entities "$ENTITIES" --groups "$NGROUPS" | tee "$WORK/load.json"
curl -s -X POST "http://127.0.0.1:$PORT/index/create" -H 'Content-Type: application/json' -d '{"table":"qb","column":"grp"}' > /dev/null
t0=$(date +%s.%N)
until curl -s "http://127.0.0.1:$PORT/index/stats?table=qb" | grep -q '"state":"ready"'; do sleep 0.5; done
t1=$(date +%s.%N)
echo "{\"index_build_seconds\": $(python3 -c "print(round($t1 - $t0, 2))")}" | tee "$WORK/build.json"
echo "== indexed query, GET, full scan ($SERVER_CPUS server cores)"
qb run --mode indexed --duration "$DURATION" --entities "$ENTITIES" --groups "$NGROUPS" | tee "$WORK/indexed.json"
qb run --mode get --duration "$DURATION" --entities "$ENTITIES" --groups "$NGROUPS" | tee "$WORK/get.json"
qb run --mode scan --connections 1 --duration "$(( DURATION * 2 ))" --entities "$ENTITIES" --groups "$NGROUPS" | tee "$WORK/scan.json"
stop
echo "== after a restart: data in SST files, block cache warmed by one discarded run"
start "0-$((SERVER_CPUS - 1))" "$SERVER_CPUS"
qb run --mode indexed --duration "$DURATION" --entities "$ENTITIES" --groups "$NGROUPS" > /dev/null
qb run --mode indexed --duration "$DURATION" --entities "$ENTITIES" --groups "$NGROUPS" | tee "$WORK/indexed_sst.json"
qb run --mode get --duration "$DURATION" --entities "$ENTITIES" --groups "$NGROUPS" | tee "$WORK/get_sst.json"
stop
echo "== full scan: 1 core vs 2 cores (client shares the CPUs; it only waits)"
start 0 1
qb run --mode scan --connections 1 --duration "$(( DURATION * 2 ))" --entities "$ENTITIES" --groups "$NGROUPS" | tee "$WORK/scan1.json"
stop
if [ "$NCPU" -ge 2 ]; then
  start 0-1 2
  qb run --mode scan --connections 1 --duration "$(( DURATION * 2 ))" --entities "$ENTITIES" --groups "$NGROUPS" | tee "$WORK/scan2.json"
  stop
fi

mkdir -p bench/results
python3 - "$WORK" <<'PY'
import json, os, sys
w = sys.argv[1]
j = lambda n: json.load(open(os.path.join(w, n + ".json"))) if os.path.exists(os.path.join(w, n + ".json")) else None
r = {k: j(k) for k in ("load", "build", "indexed", "get", "indexed_sst", "get_sst", "scan", "scan1", "scan2")}
json.dump(r, open("bench/results/query.json", "w"), indent=2)
i, g, s = r["indexed"], r["get"], r["scan"]
print()
print("| Measure | Result |")
print("| --- | ---: |")
print(f"| Indexed equality query (10 of {r['load']['entities']:,}) | {i['per_s']:,.0f} q/s, p50 {i['p50_ms']:.3f} ms, p99 {i['p99_ms']:.3f} ms, {i['rows_per_request']:.1f} rows |")
print(f"| Single-entity GET, same client | {g['per_s']:,.0f} req/s, p99 {g['p99_ms']:.3f} ms |")
print(f"| Indexed query / GET throughput | {100 * i['per_s'] / g['per_s']:.0f}% |")
i2, g2 = r["indexed_sst"], r["get_sst"]
print(f"| After a restart (SST files, warm cache): indexed query | {i2['per_s']:,.0f} q/s, p99 {i2['p99_ms']:.3f} ms |")
print(f"| After a restart: GET | {g2['per_s']:,.0f} req/s, p99 {g2['p99_ms']:.3f} ms |")
print(f"| After a restart: indexed query / GET throughput | {100 * i2['per_s'] / g2['per_s']:.0f}% |")
print(f"| Same query as a full scan | {s['per_s']:.2f} q/s, p50 {s['p50_ms']:.0f} ms |")
print(f"| Indexed vs full scan (latency p50) | {s['p50_ms'] / i['p50_ms']:,.0f}x |")
if r["scan1"] and r["scan2"]:
    print(f"| Full scan, 1 core / 2 cores (p50) | {r['scan1']['p50_ms']:.0f} ms / {r['scan2']['p50_ms']:.0f} ms = {r['scan1']['p50_ms'] / r['scan2']['p50_ms']:.2f}x |")
print(f"| Index build over the loaded data | {r['build']['index_build_seconds']:.1f} s |")
PY
