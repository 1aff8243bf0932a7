#!/usr/bin/env bash
# What security costs, on one server core, in one run on one machine (wrk
# on the other CPUs, 64 keep-alive connections, a 1 KiB entity):
#   1. GET over plaintext vs TLS 1.3 (keep-alive): throughput ratio;
#   2. new TLS handshakes per second (wrk with Connection: close);
#   3. GET with auth off vs on (a Bearer key on every request), in the
#      same server process: auth is switched with POST /config between the
#      two runs, and the order alternates from round to round, so drift of
#      a shared machine's load does not land on one side.
# Each configuration is measured ROUNDS times, alternating, and the median
# is reported. Certificates are made here with openssl (EC P-256).
# For the auth cost in instructions (deterministic) see bench/auth_cost.sh.
#
#   bench/security.sh [DURATION_S] [ROUNDS]
#   BENCH_NO_BUILD=1 uses the release binary already built.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${1:-5}"
ROUNDS="${2:-3}"
SERVER_CPUS=1
# shellcheck source=bench/lib.sh
. bench/lib.sh
bench_setup
command -v wrk >/dev/null || { echo "wrk is needed (apt-get install wrk)" >&2; exit 1; }
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$WORK"' EXIT
KEY=bench-key-0123456789abcdef

cd "$WORK"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key \
  -out ca.crt -days 2 -subj /CN=bench-ca 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout server.key \
  -out server.csr -subj /CN=localhost 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' > ext
openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out server.crt \
  -days 2 -extfile ext 2>/dev/null
cd - >/dev/null

# start NAME YAML: starts a 1-core server with YAML as its config; sets PORT, PID.
start() {
  printf '%s\n' "$2" > "$WORK/$1.yaml"
  rm -rf "$WORK/data-$1"
  # Empty the log first: the last round's "listening" line (an old port)
  # must not be read before this server writes its own.
  : > "$WORK/$1.log"
  taskset -c 0 "$BIN/themis_server" --config "$WORK/$1.yaml" --threads 1 --port 0 \
    --db "$WORK/data-$1" > "$WORK/$1.log" 2>&1 &
  PID=$!
  for _ in $(seq 1 300); do
    PORT=$(sed -n 's/^THEMIS listening on [^:]*:\([0-9]*\).*/\1/p' "$WORK/$1.log")
    [ -n "$PORT" ] && return 0
    sleep 0.1
  done
  echo "$1 did not start" >&2; cat "$WORK/$1.log" >&2; exit 1
}

body=$(printf '{"v":"%s"}' "$(head -c 1000 /dev/zero | tr '\0' x)")
# rps URL [wrk args]: requests/s of one wrk run.
rps() {
  local url=$1; shift
  taskset -c "$CLIENT_LIST" wrk -t "$CLIENT_CPUS" -c 64 -d "${DURATION}s" "$@" "$url" 2>&1 \
    | awk '/Requests\/sec/ {print int($2)}'
}
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

plain=$(mktemp); tls=$(mktemp); hs=$(mktemp); off=$(mktemp); on=$(mktemp)
TLS_YAML="server: {enable_tls: true, tls_cert: $WORK/server.crt, tls_key: $WORK/server.key}"
AUTH_YAML="server: {enable_auth: true, api_keys: [{key: $KEY, role: readonly}, {key: admin-$KEY, role: admin}]}"
round=0
for _ in $(seq 1 "$ROUNDS"); do
  start plain ""
  curl -sf -X PUT -H 'Content-Type: application/json' -d "$body" "http://127.0.0.1:$PORT/entities/b:1" >/dev/null
  rps "http://127.0.0.1:$PORT/entities/b:1" >> "$plain"
  kill "$PID"; wait "$PID" 2>/dev/null || true

  start tls "$TLS_YAML"
  curl -sf --cacert "$WORK/ca.crt" --resolve "localhost:$PORT:127.0.0.1" -X PUT \
    -H 'Content-Type: application/json' -d "$body" "https://localhost:$PORT/entities/b:1" >/dev/null
  rps "https://127.0.0.1:$PORT/entities/b:1" >> "$tls"
  rps "https://127.0.0.1:$PORT/health" -H "Connection: close" >> "$hs"
  kill "$PID"; wait "$PID" 2>/dev/null || true

  start auth "$AUTH_YAML"
  curl -sf -X PUT -H "X-API-Key: admin-$KEY" -H 'Content-Type: application/json' -d "$body" \
    "http://127.0.0.1:$PORT/entities/b:1" >/dev/null
  round=$((round + 1))
  for side in $([ $((round % 2)) = 1 ] && echo "off on" || echo "on off"); do
    # Switch auth for the next run (the admin key works either way).
    enabled=$([ "$side" = on ] && echo true || echo false)
    curl -sf -X POST -H "X-API-Key: admin-$KEY" -H 'Content-Type: application/json' \
      -d "{\"server\":{\"enable_auth\":$enabled}}" "http://127.0.0.1:$PORT/config" >/dev/null
    if [ "$side" = on ]; then
      rps "http://127.0.0.1:$PORT/entities/b:1" -H "Authorization: Bearer $KEY" >> "$on"
    else
      rps "http://127.0.0.1:$PORT/entities/b:1" >> "$off"
    fi
  done
  kill "$PID"; wait "$PID" 2>/dev/null || true
done

P=$(median < "$plain"); T=$(median < "$tls"); H=$(median < "$hs")
OFF=$(median < "$off"); ON=$(median < "$on")
echo "rounds: plain $(tr '\n' ' ' < "$plain")| tls $(tr '\n' ' ' < "$tls")| handshakes $(tr '\n' ' ' < "$hs")| auth off $(tr '\n' ' ' < "$off")| auth on $(tr '\n' ' ' < "$on")"
echo
echo "| measurement (1 server core, wrk -c 64, ${DURATION} s x $ROUNDS rounds, median) | req/s | ratio |"
echo "| --- | ---: | ---: |"
echo "| GET 1 KiB, plaintext, keep-alive | $P | 1.00 |"
echo "| GET 1 KiB, TLS 1.3, keep-alive | $T | $(awk -v a="$T" -v b="$P" 'BEGIN {printf "%.2f", a / b}') |"
echo "| new TLS handshakes (GET /health, Connection: close) | $H | |"
echo "| GET 1 KiB, auth off (the auth server, switched off by POST /config) | $OFF | 1.00 |"
echo "| GET 1 KiB, auth on (Bearer key, readonly) | $ON | $(awk -v a="$ON" -v b="$OFF" 'BEGIN {printf "%.3f", a / b}') |"
