#!/usr/bin/env bash
# Backup, restore and WAL-archiving figures (issue 16), on this machine:
#
#   bench/backup.sh [--keys N] [--doc-size B] [--interval S] [--put-rounds R]
#
#   1. A server with WAL archiving on (storage.wal_archive_interval_s = S,
#      default 10) and CDC on is loaded with N entities of B bytes (default
#      1,000,000 x 1 KiB) by themis-loadtest's preload.
#   2. A backup alone: its time and size (manifest).
#   3. Mixed GET/PUT load (50 % reads, 32 connections) for a window as long
#      as the backup plus 4 s, without and then with a backup started 2 s
#      in: GET and PUT p99 (same server, same run).
#   4. RPO: a client PUTs timestamped entities (~200/s) for a random 12-25 s,
#      then the server is killed (kill -9) and the backup of step 2 is
#      restored with the archive (themis_server --restore): the RPO is the
#      time between the last acknowledged write and the last one recovered.
#   5. RTO: the restore of step 4 (checkpoint + archived WAL replay) and a
#      checkpoint-only restore (restore.sh), each until /health answers.
#   6. The PUT cost of no WAL recycling: PUT closed loop on a fresh server
#      with archiving off (recycling on) and on (recycling off), alternating
#      R rounds (default 2).
#
# Server and clients are pinned to disjoint CPUs as in bench/run.sh. Prints
# Markdown; results also go to bench/results/backup.json.
set -euo pipefail
cd "$(dirname "$0")/.."

KEYS=1000000
DOC=1024
INTERVAL=10
PUT_ROUNDS=2
while [ $# -gt 0 ]; do
  case "$1" in
    --keys) KEYS="$2"; shift 2 ;;
    --doc-size) DOC="$2"; shift 2 ;;
    --interval) INTERVAL="$2"; shift 2 ;;
    --put-rounds) PUT_ROUNDS="$2"; shift 2 ;;
    -h|--help) sed -n '2,26p' "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done

. bench/lib.sh
bench_setup
WORK=$(mktemp -d "${BENCH_WORK_ROOT:-/tmp}/themis-backup-bench.XXXXXX")
PORT=18767
SERVER_PID=""
cleanup() { [ -z "$SERVER_PID" ] || kill -9 "$SERVER_PID" 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
now_ms() { date +%s%3N; }

start() { # db archive(dir or "") [extra env...]
  local db=$1 arch=$2; shift 2
  (cd "$WORK" && exec env THEMIS_FEATURES_CDC=true THEMIS_STORAGE_MEMTABLE_SIZE_MB=64 \
    ${arch:+THEMIS_STORAGE_WAL_ARCHIVE_PATH=$arch THEMIS_STORAGE_WAL_ARCHIVE_INTERVAL_S=$INTERVAL} "$@" \
    THEMIS_BACKUP_ROOT="$WORK/backups" \
    taskset -c "0-$((SERVER_CPUS - 1))" "$BIN/themis_server" --host 127.0.0.1 --port $PORT \
    --threads "$SERVER_CPUS" --db "$db") >> "$WORK/server.log" 2>&1 &
  SERVER_PID=$!
  wait_port $PORT "$WORK/server.log"
}
stop() { kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true; SERVER_PID=""; }
wait_health() {
  for _ in $(seq 1 3000); do
    curl -fsS "http://127.0.0.1:$PORT/health" >/dev/null 2>&1 && return 0
    sleep 0.05
  done
  echo "no /health" >&2; tail "$WORK/server.log" >&2; exit 1
}
load() { # name args...
  local name=$1; shift
  taskset -c "$CLIENT_LIST" "$BIN/themis-loadtest" --url "http://127.0.0.1:$PORT" --cpus "$CLIENT_LIST" \
    --threads "$CLIENT_CPUS" --json "$@" > "$WORK/$name.json"
}
backup() { # name
  curl -fsS -X POST -H 'Content-Type: application/json' "http://127.0.0.1:$PORT/api/admin/backup" \
    -d '{"label":"bench"}' > "$WORK/$1.json"
}

echo "machine: $NCPU CPUs (shared); server CPUs 0-$((SERVER_CPUS - 1)), client CPUs $CLIENT_LIST"
echo "== 1. load $KEYS x $DOC B (archiving every ${INTERVAL}s, CDC on)"
start "$WORK/db" "$WORK/archive"
t0=$(now_ms)
load preload --mix get --keys "$KEYS" --doc-size "$DOC" --connections 32 --duration 1 --warmup 0
echo "   loaded in $(( ($(now_ms) - t0) / 1000 )) s; data dir $(du -sh "$WORK/db" | cut -f1)"

echo "== 2. backup alone"
backup backup_alone
BK=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["path"])' "$WORK/backup_alone.json")
WINDOW=$(python3 -c 'import json,sys,math; print(math.ceil(json.load(open(sys.argv[1]))["manifest"]["duration_ms"]/1000)+4)' "$WORK/backup_alone.json")

echo "== 3. mixed load ${WINDOW}s without, then with a backup"
MIX=(--mix mixed --read-ratio 0.5 --keys "$KEYS" --doc-size "$DOC" --connections 32 --duration "$WINDOW" --warmup 1 --no-preload)
load mixed_plain "${MIX[@]}"
load mixed_backup "${MIX[@]}" &
LOAD_PID=$!
sleep 3
backup backup_under_load
wait "$LOAD_PID"

echo "== 4. RPO: timestamped writes, then kill -9"
RUN_S=$(( 12 + RANDOM % 14 ))
python3 - "$PORT" "$RUN_S" > "$WORK/rpo_writes.json" <<'PY'
import http.client, json, sys, time
port, run_s = int(sys.argv[1]), float(sys.argv[2])
c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
i, last, end = 0, None, time.time() + run_s
while time.time() < end:
    t = int(time.time() * 1000)
    c.request("PUT", f"/entities/rpo:{i:08d}", body=json.dumps({"t": t}), headers={"Content-Type": "application/json"})
    r = c.getresponse(); r.read()
    if r.status == 201:
        last = {"i": i, "acked_ms": int(time.time() * 1000)}
    i += 1
    time.sleep(0.005)
print(json.dumps({"writes": i, "last": last}))
PY
KILL_MS=$(now_ms)
kill -9 "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true; SERVER_PID=""
ARCHIVE_BYTES=$(du -sb "$WORK/archive" | cut -f1)

echo "== 5. RTO: checkpoint + archived WAL, and checkpoint only"
t0=$(now_ms)
"$BIN/themis_server" --db "$WORK/r1" --restore "$BK" --wal-archive "$WORK/archive" > "$WORK/restore_wal.json"
start "$WORK/r1" ""
wait_health
RTO_WAL=$(( $(now_ms) - t0 ))
python3 - "$PORT" > "$WORK/rpo_found.json" <<'PY'
import http.client, json, sys
c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=30)
lo, hi = 0, 10**7
def has(i):
    c.request("GET", f"/entities/rpo:{i:08d}"); r = c.getresponse(); b = r.read()
    return json.loads(b)["entity"]["t"] if r.status == 200 else None
# Writes are sequential: find the last one present by bisection.
if has(0) is None:
    print(json.dumps({"last": None})); sys.exit()
while hi - lo > 1:
    mid = (lo + hi) // 2
    if has(mid) is None: hi = mid
    else: lo = mid
print(json.dumps({"last": {"i": lo, "t": has(lo)}}))
PY
stop
t0=$(now_ms)
bash scripts/restore.sh --backup-path "$BK" --db-path "$WORK/r2" --service themis-bench-none > /dev/null
start "$WORK/r2" ""
wait_health
RTO_CP=$(( $(now_ms) - t0 ))
stop
rm -rf "$WORK/r1" "$WORK/r2" "$WORK/db"

echo "== 6. PUT cost of no WAL recycling ($PUT_ROUNDS rounds)"
PUT=(--mix put --connections 32 --duration 10 --warmup 2 --keys 100000 --doc-size 1024 --no-preload)
for r in $(seq 1 "$PUT_ROUNDS"); do
  for mode in recycle archive; do
    rm -rf "$WORK/p" "$WORK/parch"
    if [ "$mode" = archive ]; then start "$WORK/p" "$WORK/parch"; else start "$WORK/p" ""; fi
    load "put_${mode}_$r" "${PUT[@]}"
    stop
  done
done

mkdir -p bench/results
python3 - "$WORK" "$KEYS" "$DOC" "$INTERVAL" "$PUT_ROUNDS" "$NCPU" "$SERVER_CPUS" "$WINDOW" \
  "$KILL_MS" "$RTO_WAL" "$RTO_CP" "$ARCHIVE_BYTES" <<'PY'
import json, os, sys
w = sys.argv[1]
keys, doc, interval, rounds, ncpu, scpu, window = map(int, sys.argv[2:9])
kill_ms, rto_wal, rto_cp, archive_bytes = map(int, sys.argv[9:13])
j = lambda n: json.load(open(os.path.join(w, n + ".json")))
pre = j("preload")
alone, under = j("backup_alone")["manifest"], j("backup_under_load")["manifest"]
plain, during = j("mixed_plain"), j("mixed_backup")
p99 = lambda r, op: r["ops"][op]["latency"]["p99_ms"]
writes, found, rw = j("rpo_writes"), j("rpo_found"), j("restore_wal")
last_acked = writes["last"]
rec = found["last"]
rpo_ms = last_acked["acked_ms"] - rec["t"] if rec else None
lost = last_acked["i"] - rec["i"] if rec else None
put = {m: [j(f"put_{m}_{r}")["total"]["throughput_rps"] for r in range(1, rounds + 1)] for m in ("recycle", "archive")}
mean = lambda xs: sum(xs) / len(xs)
res = dict(cpus=ncpu, server_cpus=scpu, keys=keys, doc_size=doc, interval_s=interval,
           backup_alone=alone, backup_under_load_ms=under["duration_ms"],
           p99=dict(get_plain=p99(plain, "GET"), get_backup=p99(during, "GET"),
                    put_plain=p99(plain, "PUT"), put_backup=p99(during, "PUT")),
           throughput=dict(plain=plain["total"]["throughput_rps"], backup=during["total"]["throughput_rps"]),
           rpo=dict(writes=writes, recovered=rec, rpo_ms=rpo_ms, writes_lost=lost, kill_ms=kill_ms),
           restore_wal=rw, rto_wal_ms=rto_wal, rto_checkpoint_ms=rto_cp, archive_bytes=archive_bytes,
           put_rps=put)
print()
print(f"Data set: {keys:,} entities x {doc} B (+ change feed), checkpoint {alone['checkpoint_size_bytes']/2**20:,.0f} MiB in {len(alone['files'])} files.")
print()
print("| Measure | Value |")
print("| --- | ---: |")
print(f"| Backup alone (flush + hard links + SHA-256 of every file at 256 MiB/s) | {alone['duration_ms']/1000:.1f} s |")
print(f"| Backup under mixed load | {under['duration_ms']/1000:.1f} s |")
print(f"| Mixed load throughput without / with a backup ({window} s windows) | {plain['total']['throughput_rps']:,.0f} / {during['total']['throughput_rps']:,.0f} req/s |")
for op in ("GET", "PUT"):
    a, b = p99(plain, op), p99(during, op)
    print(f"| {op} p99 without / with a backup | {a:.2f} / {b:.2f} ms ({b/a:.2f}x) |")
print(f"| RTO, checkpoint only (restore.sh copy + start until /health) | {rto_cp/1000:.1f} s |")
print(f"| RTO, checkpoint + archived WAL replay ({rw['wal_files']} files, {archive_bytes/2**20:,.0f} MiB archive) | {rto_wal/1000:.1f} s |")
if rpo_ms is not None:
    print(f"| RPO with archiving every {interval} s: last acknowledged write not recovered by | {rpo_ms/1000:.1f} s ({lost} writes of {writes['writes']}) |")
r, a = mean(put["recycle"]), mean(put["archive"])
print(f"| PUT 1 KiB, 32 conns: recycling on (archiving off) / off (archiving on), mean of {rounds} | {r:,.0f} / {a:,.0f} req/s ({100*a/r:.0f}%) |")
json.dump(res, open("bench/results/backup.json", "w"), indent=2)
PY
