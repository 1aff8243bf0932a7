#!/usr/bin/env bash
# Shard-aware clients against the default path, in one run on one server:
# a release themis_server with --threads N and server.shard_ports on; the
# load generator alternates between the default path (64 connections on the
# shared port, spread over the cores by SO_REUSEPORT: (N-1)/N of the keys
# take a hop) and --shard-aware (each connection on one core's own port with
# the keys that core owns: no hop). GET (keys preloaded once) and PUT
# (1 KiB). Prints req/s and the share of requests forwarded per run, then
# the shard-aware/default ratio per mix (median over rounds).
#
#   bench/shard-aware.sh [ROUNDS] [THREADS]
#
# Uses $CARGO_TARGET_DIR/release (build it first). On a 2-CPU machine the
# client shares the CPUs with the server: the ratio is what counts.
set -euo pipefail
ROUNDS=${1:-3}
THREADS=${2:-2}
BIN=${BENCH_BIN_DIR:-${CARGO_TARGET_DIR:-$HOME/.cache/themis/target}/release}
PORT=${PORT:-18898}
W=$(mktemp -d)
trap 'kill $P 2>/dev/null || true; rm -rf "$W"' EXIT
(cd "$W" && THEMIS_SERVER_SHARD_PORTS=true exec "$BIN/themis_server" --host 127.0.0.1 \
  --port $PORT --threads "$THREADS" --db "$W/db") > "$W/log" 2>&1 &
P=$!
for _ in $(seq 1 300); do (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.1; done
forwarded() { curl -s http://127.0.0.1:$PORT/stats | python3 -c 'import json,sys;v=json.load(sys.stdin)["server"];print(v["forwarded_total"], v["requests_total"])'; }
COMMON=(--url http://127.0.0.1:$PORT --threads 1 --json --connections 64 --keys 100000 --doc-size 1024)
# Preload every key once (the GET runs read them).
"$BIN/themis-loadtest" "${COMMON[@]}" --mix get -n 1 -d 0 --warmup 0 > /dev/null
for round in $(seq 1 "$ROUNDS"); do
  for mix in get put; do
    for mode in default shard-aware; do
      extra=(--no-preload); [ "$mode" = shard-aware ] && extra+=(--shard-aware)
      read -r f0 r0 < <(forwarded)
      "$BIN/themis-loadtest" "${COMMON[@]}" --mix $mix --duration 5 --warmup 1 "${extra[@]}" > "$W/r.json" 2> "$W/err" || { cat "$W/err"; exit 1; }
      read -r f1 r1 < <(forwarded)
      python3 -c "import json,sys;r=json.load(open(sys.argv[1]));print(sys.argv[2], sys.argv[3], sys.argv[4], round(r['total']['throughput_rps']), 'forwarded %.2f' % ((int(sys.argv[6])-int(sys.argv[5]))/max(1,int(sys.argv[8])-int(sys.argv[7]))))" \
        "$W/r.json" "$round" "$mix" "$mode" "$f0" "$f1" "$r0" "$r1"
    done
  done
done | tee "$W/out"
python3 - "$W/out" <<'PY'
import sys, statistics
rows = [l.split() for l in open(sys.argv[1])]
for mix in ("get", "put"):
    ratios = []
    for rnd in sorted({r[0] for r in rows}):
        d = [int(r[3]) for r in rows if r[0] == rnd and r[1] == mix and r[2] == "default"]
        s = [int(r[3]) for r in rows if r[0] == rnd and r[1] == mix and r[2] == "shard-aware"]
        if d and s:
            ratios.append(s[0] / d[0])
    print(f"{mix}: shard-aware / default = {statistics.median(ratios):.2f} (rounds: {', '.join(f'{x:.2f}' for x in ratios)})")
PY
