#!/usr/bin/env bash
# Tail latency under open-loop load (issue 17), in one run on one machine:
#
#   bench/tail.sh [--duration S] [--rounds R] [--config FILE]
#
# One server core (CPU 0), themis-loadtest on the other CPUs, 64
# connections, 1 KiB entities, 100,000 keys. Per round:
#   1. themis_server: closed-loop GET and PUT maxima;
#   2. open-loop PUT at half the PUT maximum (target p99 <= 2 ms);
#   3. open-loop GET at 40 % and 60 % of the GET maximum, against
#      themis_server and against `themis-baseline --kind kv` (the lean
#      glommio + RocksDB path) at the *same* offered rates, alternating
#      (target: THEMIS p99 <= 1.25 x the baseline's).
# Latency counts from each request's intended send time (coordinated
# omission corrected). --config runs THEMIS with that YAML (e.g. a
# tuning/ profile). Server and client run at nice -15 when the user may
# (root), each in a session of its own whose autogroup is set to -15 too
# (with the kernel's autogroups a plain nice only ranks a process within
# its own session): on a shared 2-CPU machine other users' builds
# otherwise decide the tail. Prints a table; raw JSON stays in the work
# directory.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=8
ROUNDS=2
CONFIG=""
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) DURATION="$2"; shift 2 ;;
    --rounds) ROUNDS="$2"; shift 2 ;;
    --config) CONFIG="$(realpath "$2")"; shift 2 ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
SERVER_CPUS=1
# shellcheck source=bench/lib.sh
. bench/lib.sh
bench_setup
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
bench_priority
WORK=$(mktemp -d /tmp/themis-tail.XXXXXX)
PORT=18768
PID=""
cleanup() { [ -z "$PID" ] || kill "$PID" 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

start_themis() {
  rm -rf "$WORK/db"
  local args=(--host 127.0.0.1 --port $PORT --threads 1 --db "$WORK/db")
  [ -z "$CONFIG" ] || args+=(--config "$CONFIG")
  (cd "$WORK" && exec "${PRIO[@]}" taskset -c 0 "$BIN/themis_server" "${args[@]}") \
    > "$WORK/server.log" 2>&1 &
  PID=$!
  wait_port $PORT "$WORK/server.log"
}
start_baseline() {
  rm -rf "$WORK/bdb"
  "${PRIO[@]}" "$BIN/themis-baseline" --kind kv --port $PORT --threads 1 --cpus 0 \
    --db "$WORK/bdb" > "$WORK/baseline.log" 2>&1 &
  PID=$!
  wait_port $PORT "$WORK/baseline.log"
}
stop() { kill "$PID"; wait "$PID" 2>/dev/null || true; PID=""; sleep 0.5; }
COMMON=(--connections 64 --keys 100000 --doc-size 1024)
load() { # name args...
  local name=$1; shift
  "${PRIO[@]}" taskset -c "$CLIENT_LIST" "$BIN/themis-loadtest" --url "http://127.0.0.1:$PORT" \
    --cpus "$CLIENT_LIST" --threads "$CLIENT_CPUS" --json "${COMMON[@]}" "$@" > "$WORK/$name.json"
}
rps() { python3 -c "import json,sys;print(int(json.load(open(sys.argv[1]))['total']['throughput_rps']))" "$WORK/$1.json"; }

echo "machine: $NCPU CPUs; server CPU 0, client CPUs $CLIENT_LIST; priority: $([ ${#PRIO[@]} -gt 0 ] && echo "nice -15" || echo default)"
for r in $(seq 1 "$ROUNDS"); do
  echo "== round $r"
  start_themis
  load "put_max_$r" --mix put --duration "$DURATION" --warmup 2 --no-preload
  load "get_max_$r" --mix get --duration "$DURATION" --warmup 2 --no-preload
  GMAX=$(rps "get_max_$r"); PMAX=$(rps "put_max_$r")
  load "put_half_$r" --mix put --mode open --rate $((PMAX / 2)) --duration "$DURATION" --warmup 2 --no-preload
  for pct in 40 60; do
    load "get_${pct}_$r" --mix get --mode open --rate $((GMAX * pct / 100)) --duration "$DURATION" --warmup 2 --no-preload
  done
  stop
  start_baseline
  load "bl_preload_$r" --mix put --duration 3 --warmup 0 --no-preload
  for pct in 40 60; do
    load "bl_get_${pct}_$r" --mix get --mode open --rate $((GMAX * pct / 100)) --duration "$DURATION" --warmup 2 --no-preload
  done
  stop
done

python3 - "$WORK" "$ROUNDS" <<'PY'
import json, os, sys
w, rounds = sys.argv[1], int(sys.argv[2])
def op(n):
    j = json.load(open(os.path.join(w, n + ".json")))
    o = next(iter(j["ops"].values()))
    return j["total"]["throughput_rps"], o["latency"]
print()
print("| round | run | offered/s | achieved/s | p50 ms | p99 ms | p99.9 ms |")
print("| ---: | --- | ---: | ---: | ---: | ---: | ---: |")
for r in range(1, rounds + 1):
    g = op(f"get_max_{r}")[0]; p = op(f"put_max_{r}")[0]
    print(f"| {r} | GET max, closed loop | | {g:,.0f} | | | |")
    print(f"| {r} | PUT max, closed loop | | {p:,.0f} | | | |")
    rows = [("PUT open loop, 50 % of PUT max", f"put_half_{r}", p / 2)]
    for pct in (40, 60):
        rows += [(f"GET open loop, {pct} %, THEMIS", f"get_{pct}_{r}", g * pct / 100),
                 (f"GET open loop, {pct} %, baseline kv", f"bl_get_{pct}_{r}", g * pct / 100)]
    for label, n, offered in rows:
        t, l = op(n)
        print(f"| {r} | {label} | {offered:,.0f} | {t:,.0f} | {l['p50_ms']:.3f} | {l['p99_ms']:.3f} | {l['p99.9_ms']:.3f} |")
print()
for r in range(1, rounds + 1):
    ratios = []
    for pct in (40, 60):
        ratios.append(f"{pct} %: {op(f'get_{pct}_{r}')[1]['p99_ms'] / op(f'bl_get_{pct}_{r}')[1]['p99_ms']:.2f}x")
    print(f"round {r}: THEMIS GET p99 / baseline p99 (target <= 1.25x): {', '.join(ratios)}; "
          f"PUT p99 at half load {op(f'put_half_{r}')[1]['p99_ms']:.3f} ms (target <= 2 ms)")
PY
