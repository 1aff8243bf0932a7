#!/usr/bin/env bash
# Before/after with forwarding on a small machine: two builds of
# themis_server take turns, each on 2 cores (about half of the requests
# cross cores over the mesh), with the load generator unpinned on the same
# CPUs (noisy: it competes with the server; use bench/run.sh --compare on a
# machine with spare CPUs for cleaner figures).
#
#   bench/compare-forwarding.sh OLD_BIN_DIR [NEW_BIN_DIR] [ROUNDS]
#
# Each BIN_DIR holds a release themis_server; NEW_BIN_DIR (default: this
# build's release dir) also provides themis-loadtest. Prints req/s per round.
set -euo pipefail
OLD=${1:?usage: bench/compare-forwarding.sh OLD_BIN_DIR [NEW_BIN_DIR] [ROUNDS]}
NEW=${2:-${CARGO_TARGET_DIR:-$HOME/.cache/themis/target}/release}
ROUNDS=${3:-3}
LT="$NEW/themis-loadtest"
PORT=18798
for round in $(seq 1 "$ROUNDS"); do
  for build in before after; do
    if [ "$build" = before ]; then S="$OLD/themis_server"; else S="$NEW/themis_server"; fi
    W=$(mktemp -d)
    (cd "$W" && exec "$S" --host 127.0.0.1 --port $PORT --threads 2 --db "$W/db") > "$W/log" 2>&1 &
    P=$!
    for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.1; done
    for mix in get put; do
      extra=(); [ "$mix" = put ] && extra=(--no-preload)
      "$LT" --url http://127.0.0.1:$PORT --threads 1 --json --mix $mix --connections 64 \
        --duration 6 --warmup 1 --keys 100000 --doc-size 1024 "${extra[@]}" > "$W/$mix.json"
      python3 -c "import json,sys;print(sys.argv[1], sys.argv[2], sys.argv[3], round(json.load(open(sys.argv[4]))['total']['throughput_rps']))" \
        "$build" "$mix" "$round" "$W/$mix.json"
    done
    kill $P; wait $P 2>/dev/null || true; rm -rf "$W"
  done
done
