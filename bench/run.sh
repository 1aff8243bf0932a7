#!/usr/bin/env bash
# Reproducible comparison of THEMIS against the ceilings of its own stack.
#
#   bench/run.sh [--duration S] [--server-cpus N] [--scaling "1 2 4 8"] [--quick]
#   bench/run.sh --metrics-overhead   (only: GET with and without latency recording)
#   bench/run.sh --compare DIR        (only: GET and PUT of this build against the
#                                      themis_server in DIR, alternating, 3 rounds)
#
# Builds the release binaries, then on this machine, in one run:
#   1. baseline http : glommio + themis-io, fixed 1 KiB JSON body (network ceiling)
#   2. baseline kv   : the same plus a RocksDB point read (KV-over-HTTP ceiling)
#   3. themis_server : the real server
# Server and load generator are pinned to disjoint CPUs (server: the first N,
# client: the rest). GET of 1 KiB entities, closed loop; then PUT; then an
# open-loop sweep for the latency plot; then the core-scaling run.
# Writes bench/RESULTS.md, bench/results/latest.json and bench/latency.svg.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=10
SCALING=""
SERVER_CPUS=""
QUICK=0
OVERHEAD=0
COMPARE=""
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) DURATION="$2"; shift 2 ;;
    --server-cpus) SERVER_CPUS="$2"; shift 2 ;;
    --scaling) SCALING="$2"; shift 2 ;;
    --quick) QUICK=1; DURATION=3; shift ;;
    --metrics-overhead) OVERHEAD=1; shift ;;
    --compare) COMPARE="$2"; shift 2 ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/themis/target}"
if [ -z "${BENCH_NO_BUILD:-}" ]; then
  ./setup.sh
  cargo build --release --workspace --bins
fi
BIN="${BENCH_BIN_DIR:-$CARGO_TARGET_DIR/release}"
LOADTEST="$BIN/themis-loadtest"

NCPU=$(nproc)
[ -n "$SERVER_CPUS" ] || SERVER_CPUS=$(( NCPU / 2 > 0 ? NCPU / 2 : 1 ))
CLIENT_CPUS=$(( NCPU - SERVER_CPUS ))
if [ "$CLIENT_CPUS" -lt 1 ]; then echo "need at least 2 CPUs" >&2; exit 1; fi
SERVER_SET="0-$((SERVER_CPUS - 1))"
CLIENT_LIST=$(seq -s, "$SERVER_CPUS" $((NCPU - 1)))
[ -n "$SCALING" ] || { SCALING="1"; n=2; while [ "$n" -le "$SERVER_CPUS" ]; do SCALING="$SCALING $n"; n=$((n * 2)); done; }
CONNS=$(( 32 * SERVER_CPUS ))
[ "$CONNS" -ge 64 ] || CONNS=64
MODEL=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//' || echo unknown)
WORK=$(mktemp -d /tmp/themis-bench.XXXXXX)
OUT=bench/results
mkdir -p "$OUT"
PORT=18765
PIDS=()
cleanup() { for p in "${PIDS[@]:-}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

wait_port() {
  for _ in $(seq 1 300); do
    if (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "server on port $1 did not start" >&2; return 1
}
stop_server() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; sleep 0.5; }

# load NAME ARGS... : runs the load generator, stores JSON as $WORK/NAME.json
load() {
  local name=$1; shift
  if ! taskset -c "$CLIENT_LIST" "$LOADTEST" --url "http://127.0.0.1:$PORT" --cpus "$CLIENT_LIST" \
    --threads "$CLIENT_CPUS" --json "$@" > "$WORK/$name.json"; then
    echo "load $name failed; server logs:" >&2
    tail -n 20 "$WORK"/*.log >&2 || true
    exit 1
  fi
  python3 - "$WORK/$name.json" "$name" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
for op, v in r["ops"].items():
    l = v["latency"]
    print(f'  {sys.argv[2]:<28} {op:<6} {v["throughput_rps"]:>10.0f} req/s  p50 {l["p50_ms"]:.3f}  p99 {l["p99_ms"]:.3f}  p99.9 {l["p99.9_ms"]:.3f} ms  statuses {v["statuses"]}')
PY
}

start_baseline() { # kind threads
  rm -rf "$WORK/bdb"
  taskset -c "$SERVER_SET" "$BIN/themis-baseline" --kind "$1" --port $PORT --threads "$2" \
    --cpus "$(seq -s, 0 $((SERVER_CPUS - 1)))" --db "$WORK/bdb" > "$WORK/baseline.log" 2>&1 &
  PIDS+=($!); wait_port $PORT
}
start_themis() { # threads [extra args]
  local t=$1; shift
  rm -rf "$WORK/tdb"
  (cd "$WORK" && exec taskset -c "0-$((t - 1))" "$BIN/themis_server" --host 127.0.0.1 --port $PORT \
    --threads "$t" --db "$WORK/tdb" "$@") > "$WORK/themis.log" 2>&1 &
  PIDS+=($!); wait_port $PORT
}

if [ "$OVERHEAD" = 1 ]; then
  # The same server built without per-request latency recording.
  cargo build --release --bin themis_server --features no-latency-metrics
  cp "$BIN/themis_server" "$WORK/themis_server_nometrics"
  cargo build --release --bin themis_server
  NOMETRICS="$WORK/themis_server_nometrics"
  ARGS=(--mix get --pipeline 16 --connections "$(( CONNS / 2 ))" --duration "$DURATION" --warmup 2 --keys 100000)
  echo "== metrics overhead: GET pipeline 16, alternating builds, 3 rounds"
  for round in 1 2 3; do
    start_themis "$SERVER_CPUS"; load "with_metrics_$round" "${ARGS[@]}"; stop_server "${PIDS[-1]}"
    rm -rf "$WORK/tdb"
    (cd "$WORK" && exec taskset -c "0-$((SERVER_CPUS - 1))" "$NOMETRICS" --host 127.0.0.1 --port $PORT \
      --threads "$SERVER_CPUS" --db "$WORK/tdb") > "$WORK/themis.log" 2>&1 &
    PIDS+=($!); wait_port $PORT
    load "without_metrics_$round" "${ARGS[@]}"; stop_server "${PIDS[-1]}"
  done
  python3 - "$WORK" <<'PY'
import json, sys, os
w = sys.argv[1]
t = lambda n: json.load(open(os.path.join(w, n + ".json")))["total"]["throughput_rps"]
on = [t(f"with_metrics_{i}") for i in (1, 2, 3)]
off = [t(f"without_metrics_{i}") for i in (1, 2, 3)]
print(f"with metrics    {sum(on)/3:,.0f} req/s  {[round(x) for x in on]}")
print(f"without metrics {sum(off)/3:,.0f} req/s  {[round(x) for x in off]}")
print(f"cost of latency recording: {100 * (1 - sum(on) / sum(off)):.1f}%")
PY
  exit 0
fi

if [ -n "$COMPARE" ]; then
  # Before/after on the same machine in one run: the other build's server
  # and this one take turns, so drift (thermal, page cache, noisy
  # neighbours) hits both alike.
  [ -x "$COMPARE/themis_server" ] || { echo "no themis_server in $COMPARE" >&2; exit 2; }
  C=(--duration "$DURATION" --warmup 2 --keys 100000 --doc-size 1024)
  for round in 1 2 3; do
    for build in before after; do
      if [ "$build" = before ]; then SERVER="$COMPARE/themis_server"; else SERVER="$BIN/themis_server"; fi
      rm -rf "$WORK/tdb"
      (cd "$WORK" && exec taskset -c "$SERVER_SET" "$SERVER" --host 127.0.0.1 --port $PORT \
        --threads "$SERVER_CPUS" --db "$WORK/tdb") > "$WORK/themis.log" 2>&1 &
      PIDS+=($!); wait_port $PORT
      load "${build}_get_$round" --mix get --connections "$CONNS" "${C[@]}"
      load "${build}_get_p16_$round" --mix get --pipeline 16 --connections "$(( CONNS / 2 ))" "${C[@]}" --no-preload
      load "${build}_put_$round" --mix put --connections "$CONNS" "${C[@]}" --no-preload
      load "${build}_put_p16_$round" --mix put --pipeline 16 --connections "$(( CONNS / 2 ))" "${C[@]}" --no-preload
      stop_server "${PIDS[-1]}"
    done
  done
  python3 - "$WORK" <<'PY'
import json, sys, os
w = sys.argv[1]
t = lambda n: json.load(open(os.path.join(w, n + ".json")))["total"]["throughput_rps"]
print(f"{'phase':<10} {'before (req/s)':>16} {'after (req/s)':>16} {'after/before':>13}")
for phase in ("get", "get_p16", "put", "put_p16"):
    b = [t(f"before_{phase}_{i}") for i in (1, 2, 3)]
    a = [t(f"after_{phase}_{i}") for i in (1, 2, 3)]
    mb, ma = sum(b) / 3, sum(a) / 3
    print(f"{phase:<10} {mb:>16,.0f} {ma:>16,.0f} {ma / mb:>12.3f}  rounds before {[round(x) for x in b]} after {[round(x) for x in a]}")
PY
  exit 0
fi

COMMON=(--duration "$DURATION" --warmup 2 --keys 100000 --doc-size 1024)
GETARGS=(--mix get --connections "$CONNS" "${COMMON[@]}")
PUTARGS=(--mix put --connections "$CONNS" "${COMMON[@]}")
# Pipelined: 16 requests in flight per connection, answered in one write.
# With few client cores this is what makes the server, not the client, the
# bottleneck.
GETP16=(--mix get --pipeline 16 --connections "$(( CONNS / 2 ))" "${COMMON[@]}")
PUTP16=(--mix put --pipeline 16 --connections "$(( CONNS / 2 ))" "${COMMON[@]}")
echo "machine: $NCPU CPUs ($MODEL); server CPUs $SERVER_SET, client CPUs $CLIENT_LIST; $CONNS connections"

echo "== GET 1 KiB, closed loop, $SERVER_CPUS server cores (pipeline 1 and 16)"
start_baseline http "$SERVER_CPUS"
load http_get "${GETARGS[@]}" --no-preload
load http_get_p16 "${GETP16[@]}" --no-preload
stop_server "${PIDS[-1]}"
start_baseline kv "$SERVER_CPUS"
load kv_get "${GETARGS[@]}"
load kv_get_p16 "${GETP16[@]}" --no-preload
load kv_put "${PUTARGS[@]}" --no-preload
load kv_put_p16 "${PUTP16[@]}" --no-preload
stop_server "${PIDS[-1]}"
start_themis "$SERVER_CPUS"
load themis_get "${GETARGS[@]}"
load themis_get_p16 "${GETP16[@]}" --no-preload
echo "== PUT 1 KiB, closed loop"
load themis_put "${PUTARGS[@]}" --no-preload
load themis_put_p16 "${PUTP16[@]}" --no-preload
if command -v wrk >/dev/null 2>&1; then
  echo "== cross-check with wrk (GET of one preloaded key, 64 connections)"
  taskset -c "$CLIENT_LIST" wrk -t "$CLIENT_CPUS" -c "$CONNS" -d "${DURATION}s" --latency \
    "http://127.0.0.1:$PORT/entities/bench:k1" > "$WORK/wrk.txt" 2>&1 || true
  grep -E "Requests/sec|99%" "$WORK/wrk.txt" | sed 's/^/  wrk /'
fi
stop_server "${PIDS[-1]}"

# Open loop at half the measured maximum, and a sweep for the plot.
MAXGET=$(python3 -c "import json;print(int(json.load(open('$WORK/themis_get.json'))['total']['throughput_rps']))")
MAXPUT=$(python3 -c "import json;print(int(json.load(open('$WORK/themis_put.json'))['total']['throughput_rps']))")
echo "== open loop at half the maximum (GET $((MAXGET / 2))/s, PUT $((MAXPUT / 2))/s)"
start_themis "$SERVER_CPUS"
load open_get_half --mix get --mode open --rate $((MAXGET / 2)) --connections "$CONNS" --duration "$DURATION" --warmup 2 --keys 100000
load open_put_half --mix put --mode open --rate $((MAXPUT / 2)) --connections "$CONNS" --duration "$DURATION" --warmup 2 --keys 100000 --no-preload
SWEEP=""
if [ "$QUICK" = 0 ]; then
  for pct in 10 25 50 70 85 95; do
    load "sweep_$pct" --mix get --mode open --rate $((MAXGET * pct / 100)) --connections "$CONNS" --duration "$DURATION" --warmup 1 --keys 100000 --no-preload
    SWEEP="$SWEEP $pct"
  done
fi
stop_server "${PIDS[-1]}"

echo "== scaling: GET with 1..$SERVER_CPUS server cores"
for s in $SCALING; do
  start_themis "$s"; load "scale_$s" "${GETARGS[@]}"; stop_server "${PIDS[-1]}"
done

python3 bench/report.py --work "$WORK" --out "$OUT/latest.json" --md bench/RESULTS.md --svg bench/latency.svg \
  --cpus "$NCPU" --model "$MODEL" --server-cpus "$SERVER_CPUS" --client-cpus "$CLIENT_LIST" \
  --conns "$CONNS" --duration "$DURATION" --scaling "$SCALING" --sweep "$SWEEP"
echo "wrote bench/RESULTS.md, $OUT/latest.json, bench/latency.svg"
