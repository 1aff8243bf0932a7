#!/usr/bin/env bash
# Group commit figures (issue 17), on this machine, all in one run:
#
#   bench/groupcommit.sh [--duration S] [--rounds R] [--main-bin PATH]
#
# The server runs on one core (CPU 0), themis-loadtest on the others; 64
# keep-alive connections, 1 KiB entities, 100,000 keys. For each round, in
# this order:
#   * group commit on (the default): GET (keys preloaded), then PUT with
#     sync_writes false; PUT with sync_writes true; PUT with CDC on;
#   * group commit off (`storage.group_commit: false`: every write commits
#     on the reactor, as before groups existed): the same three PUTs;
#   * with --main-bin, that binary (main's build, the "before" anchor):
#     GET, and the same three PUTs.
# Prints the ratios the issue asks for (PUT/GET, sync on/off, CDC on/off,
# after/before), each from the same round, and the mean over rounds; raw
# figures go to bench/results/groupcommit.json. Ratios only: the machine
# is shared, so absolute figures move between runs.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=8
ROUNDS=2
MAIN_BIN=""
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) DURATION="$2"; shift 2 ;;
    --rounds) ROUNDS="$2"; shift 2 ;;
    --main-bin) MAIN_BIN="$2"; shift 2 ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done

SERVER_CPUS=1
. bench/lib.sh
bench_setup
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
WORK=$(mktemp -d /tmp/themis-gc-bench.XXXXXX)
PORT=18767
SERVER_PID=""
cleanup() { [ -z "$SERVER_PID" ] || kill "$SERVER_PID" 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

start() { # binary group_commit(true|false|-) sync(true|false) cdc(true|false)
  rm -rf "$WORK/db"
  local envs=(THEMIS_STORAGE_SYNC_WRITES="$3" THEMIS_FEATURES_CDC="$4" THEMIS_STORAGE_MEMTABLE_SIZE_MB=64)
  [ "$2" = "-" ] || envs+=(THEMIS_STORAGE_GROUP_COMMIT="$2")
  (cd "$WORK" && exec env "${envs[@]}" taskset -c 0 \
    "$1" --host 127.0.0.1 --port $PORT --threads 1 --db "$WORK/db") \
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
COMMON=(--connections 64 --duration "$DURATION" --warmup 2 --keys 100000 --doc-size 1024)
GET=(--mix get "${COMMON[@]}")
PUT=(--mix put "${COMMON[@]}" --no-preload)

# measure LABEL BINARY GROUP_COMMIT WITH_GET
measure() {
  local label=$1 bin=$2 gc=$3 with_get=$4 r=$5
  start "$bin" "$gc" false false
  [ "$with_get" = yes ] && load "${label}_get_$r" "${GET[@]}"
  load "${label}_put_$r" "${PUT[@]}"
  stop
  start "$bin" "$gc" true false
  load "${label}_putsync_$r" "${PUT[@]}"
  stop
  start "$bin" "$gc" false true
  load "${label}_putcdc_$r" "${PUT[@]}"
  stop
}

echo "machine: $NCPU CPUs (shared with other users); server CPU 0, client CPUs $CLIENT_LIST"
for r in $(seq 1 "$ROUNDS"); do
  echo "== round $r"
  measure gc "$BIN/themis_server" true yes "$r"
  measure nogc "$BIN/themis_server" false no "$r"
  [ -z "$MAIN_BIN" ] || measure main "$MAIN_BIN" - yes "$r"
done

mkdir -p bench/results
python3 - "$WORK" "$ROUNDS" "$NCPU" "${MAIN_BIN:+yes}" <<'PY'
import json, os, sys
w, rounds, ncpu, main = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4] == "yes"
def get(n):
    p = os.path.join(w, n + ".json")
    return json.load(open(p)) if os.path.exists(p) else None
def rps(n):
    j = get(n)
    return j["total"]["throughput_rps"] if j else None
def p99(n):
    j = get(n)
    if not j:
        return None
    op = next(iter(j["ops"].values()))
    return op["latency"]["p99_ms"]
labels = ["gc", "nogc"] + (["main"] if main else [])
res = {"cpus": int(ncpu), "rounds": {}}
for r in range(1, rounds + 1):
    res["rounds"][r] = {f"{l}_{k}": {"rps": rps(f"{l}_{k}_{r}"), "p99_ms": p99(f"{l}_{k}_{r}")}
                        for l in labels for k in ("get", "put", "putsync", "putcdc")
                        if rps(f"{l}_{k}_{r}") is not None}
print()
print("| round | server | GET/s | PUT/s | PUT/s sync | PUT/s CDC | PUT p99 ms | sync p99 ms |")
print("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
names = {"gc": "group commit (this branch)", "nogc": "group_commit: false", "main": "main (before)"}
fmt = lambda x: "–" if x is None else f"{x:,.0f}"
fms = lambda x: "–" if x is None else f"{x:.2f}"
for r in range(1, rounds + 1):
    for l in labels:
        print(f"| {r} | {names[l]} | {fmt(rps(f'{l}_get_{r}'))} | {fmt(rps(f'{l}_put_{r}'))} | "
              f"{fmt(rps(f'{l}_putsync_{r}'))} | {fmt(rps(f'{l}_putcdc_{r}'))} | "
              f"{fms(p99(f'{l}_put_{r}'))} | {fms(p99(f'{l}_putsync_{r}'))} |")
def ratio(a, b):
    vals = []
    for r in range(1, rounds + 1):
        x, y = rps(a.format(r=r)), rps(b.format(r=r))
        if x and y:
            vals.append(x / y)
    return vals
rows = [
    ("PUT / GET, group commit (target ≥ 75%)", "gc_put_{r}", "gc_get_{r}"),
    ("sync_writes true / false, group commit (target ≥ 50%)", "gc_putsync_{r}", "gc_put_{r}"),
    ("CDC on / off, group commit (target ≥ 85%)", "gc_putcdc_{r}", "gc_put_{r}"),
    ("sync_writes true / false, group_commit: false", "nogc_putsync_{r}", "nogc_put_{r}"),
    ("CDC on / off, group_commit: false", "nogc_putcdc_{r}", "nogc_put_{r}"),
    ("PUT, group commit / group_commit: false", "gc_put_{r}", "nogc_put_{r}"),
    ("PUT sync, group commit / group_commit: false", "gc_putsync_{r}", "nogc_putsync_{r}"),
]
if main:
    rows += [
        ("PUT / GET, main", "main_put_{r}", "main_get_{r}"),
        ("PUT, this branch / main", "gc_put_{r}", "main_put_{r}"),
        ("PUT sync, this branch / main", "gc_putsync_{r}", "main_putsync_{r}"),
        ("PUT CDC, this branch / main", "gc_putcdc_{r}", "main_putcdc_{r}"),
        ("GET, this branch / main", "gc_get_{r}", "main_get_{r}"),
    ]
print()
print("| ratio | per round | mean |")
print("| --- | --- | ---: |")
res["ratios"] = {}
for name, a, b in rows:
    v = ratio(a, b)
    if not v:
        continue
    res["ratios"][name] = v
    print(f"| {name} | {', '.join(f'{100 * x:.0f}%' for x in v)} | {100 * sum(v) / len(v):.0f}% |")
json.dump(res, open("bench/results/groupcommit.json", "w"), indent=2)
PY
