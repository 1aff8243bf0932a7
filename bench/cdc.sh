#!/usr/bin/env bash
# Change-data-capture figures (issue: CDC change feed), on this machine:
#
#   bench/cdc.sh [--duration S] [--server-cpus N] [--rounds R]
#
#   1. PUT of 1 KiB entities, closed loop (64 connections, then pipeline 16),
#      features.cdc off and on, alternating R rounds: the cost of recording
#      every change in the feed.
#   2. Write-to-subscriber latency: 100 SSE subscribers, 1,000 writes/s
#      (open loop), p50/p99 from just before each PUT is sent to the event's
#      arrival at each subscriber.
#   3. 1,000 idle SSE subscribers held: server resident memory before/after.
#
# Server and clients are pinned to disjoint CPUs, as in bench/run.sh. The
# server runs with 64 MiB memtables so that both runs flush several times
# within the window (with the default 256 MiB, a 10 s run without CDC never
# flushes and the comparison would bill flushing to CDC alone).
# Prints a Markdown table; results also go to bench/results/cdc.json.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=15
SERVER_CPUS=""
ROUNDS=3
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) DURATION="$2"; shift 2 ;;
    --server-cpus) SERVER_CPUS="$2"; shift 2 ;;
    --rounds) ROUNDS="$2"; shift 2 ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done

. bench/lib.sh
bench_setup
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
WORK=$(mktemp -d /tmp/themis-cdc-bench.XXXXXX)
PORT=18766
SERVER_PID=""
cleanup() { [ -z "$SERVER_PID" ] || kill "$SERVER_PID" 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

start() { # cdc(true|false)
  rm -rf "$WORK/db"
  (cd "$WORK" && THEMIS_FEATURES_CDC="$1" THEMIS_STORAGE_MEMTABLE_SIZE_MB=64 exec taskset -c "0-$((SERVER_CPUS - 1))" \
    "$BIN/themis_server" --host 127.0.0.1 --port $PORT --threads "$SERVER_CPUS" --db "$WORK/db") \
    > "$WORK/server.log" 2>&1 &
  SERVER_PID=$!
  wait_port $PORT "$WORK/server.log"
}
stop() { kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true; SERVER_PID=""; sleep 0.5; }
load() { # name args...
  local name=$1; shift
  taskset -c "$CLIENT_LIST" "$BIN/themis-loadtest" --url "http://127.0.0.1:$PORT" --cpus "$CLIENT_LIST" \
    --threads "$CLIENT_CPUS" --json "$@" > "$WORK/$name.json"
}

PUT=(--mix put --connections 64 --duration "$DURATION" --warmup 2 --keys 100000 --doc-size 1024 --no-preload)
PUTP16=(--mix put --pipeline 16 --connections 32 --duration "$DURATION" --warmup 2 --keys 100000 --doc-size 1024 --no-preload)
echo "machine: $NCPU CPUs; server CPUs 0-$((SERVER_CPUS - 1)), client CPUs $CLIENT_LIST"
echo "== 1. PUT throughput, CDC off vs on ($ROUNDS rounds each)"
for r in $(seq 1 "$ROUNDS"); do
  for cdc in false true; do
    start "$cdc"
    load "put_${cdc}_$r" "${PUT[@]}"
    load "putp16_${cdc}_$r" "${PUTP16[@]}"
    stop
  done
done

echo "== 2. write-to-subscriber latency: 100 subscribers, 1,000 writes/s"
start true
taskset -c "$CLIENT_LIST" "$BIN/themis-cdc-bench" --addr "127.0.0.1:$PORT" latency \
  --subscribers 100 --rate 1000 --duration "$DURATION" > "$WORK/latency.json"
stop

echo "== 3. 1,000 idle subscribers"
start true
taskset -c "$CLIENT_LIST" "$BIN/themis-cdc-bench" --addr "127.0.0.1:$PORT" idle \
  --subscribers 1000 --pid "$SERVER_PID" > "$WORK/idle.json"
stop

mkdir -p bench/results
python3 - "$WORK" "$ROUNDS" "$NCPU" "$SERVER_CPUS" <<'PY'
import json, os, sys
w, rounds, ncpu, scpu = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
t = lambda n: json.load(open(os.path.join(w, n + ".json")))["total"]["throughput_rps"]
res = {"cpus": int(ncpu), "server_cpus": int(scpu)}
print()
print("| Measure | CDC off | CDC on | on/off |")
print("| --- | ---: | ---: | ---: |")
for kind, label in (("put", "PUT 1 KiB, 64 connections"), ("putp16", "PUT 1 KiB, pipeline 16")):
    off = [t(f"{kind}_false_{r}") for r in range(1, rounds + 1)]
    on = [t(f"{kind}_true_{r}") for r in range(1, rounds + 1)]
    mo, mn = sum(off) / rounds, sum(on) / rounds
    res[kind] = {"off": off, "on": on, "ratio": mn / mo}
    print(f"| {label} (req/s, mean of {rounds}) | {mo:,.0f} | {mn:,.0f} | {100 * mn / mo:.0f}% |")
lat = json.load(open(os.path.join(w, "latency.json")))
idle = json.load(open(os.path.join(w, "idle.json")))
res["latency"], res["idle"] = lat, idle
print()
print(f"write-to-subscriber latency, {lat['subscribers']} subscribers at {lat['rate']} writes/s: "
      f"p50 {lat['p50_ms']:.3f} ms, p99 {lat['p99_ms']:.3f} ms, p99.9 {lat['p999_ms']:.3f} ms, max {lat['max_ms']:.3f} ms "
      f"({lat['events_received']} of {lat['expected']} events received; writes achieved {lat['achieved_rate']}/s)")
print(f"{idle['subscribers']} idle subscribers: server RSS {idle['rss_before_bytes']/2**20:.1f} MiB -> "
      f"{idle['rss_after_bytes']/2**20:.1f} MiB, {idle['bytes_per_subscriber']/1024:.1f} KiB per subscriber")
json.dump(res, open("bench/results/cdc.json", "w"), indent=2)
PY
