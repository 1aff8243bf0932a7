#!/usr/bin/env bash
# Auth's cost as a share of a GET's time on one server core (issue 12's
# "auth on vs off <= 2 %"), in one run on one machine:
#
#   1. `themis-auth-bench`: the nanoseconds the key header (parsing it) and
#      the auth check (the guard with auth on, key cached on the
#      connection) add to one GET, timed on the server's own code;
#   2. the server's GET throughput with auth off on one saturated core
#      (wrk on the other CPUs, 64 keep-alive connections, 1 KiB entity,
#      median of ROUNDS runs): one GET takes 1 / (req/s) of the core;
#   3. share = added ns x req/s / 1e9.
# Whole-server A/B rounds (bench/security.sh) cannot resolve 1-2 % on a
# shared 2-CPU machine; bench/auth_cost.sh counts the same code's
# instructions under callgrind.
#
#   bench/auth_share.sh [DURATION_S] [ROUNDS]
#   BENCH_NO_BUILD=1 uses the release binaries already built.
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
bench_priority

"${PRIO[@]}" taskset -c 0 "$BIN/themis-auth-bench" | tee "$WORK/micro.txt"
ADDED=$(awk '/^AUTH_ADDED_NS/ {print $2}' "$WORK/micro.txt")

"${PRIO[@]}" taskset -c 0 "$BIN/themis_server" --threads 1 --port 0 --db "$WORK/data" \
  > "$WORK/server.log" 2>&1 &
PORT=""
for _ in $(seq 1 300); do
  PORT=$(sed -n 's/^THEMIS listening on [^:]*:\([0-9]*\).*/\1/p' "$WORK/server.log")
  [ -n "$PORT" ] && break
  sleep 0.1
done
[ -n "$PORT" ] || { echo "server did not start" >&2; cat "$WORK/server.log" >&2; exit 1; }
body=$(printf '{"v":"%s"}' "$(head -c 1000 /dev/zero | tr '\0' x)")
curl -sf -X PUT -H 'Content-Type: application/json' -d "$body" "http://127.0.0.1:$PORT/entities/b:1" >/dev/null
for _ in $(seq 1 "$ROUNDS"); do
  "${PRIO[@]}" taskset -c "$CLIENT_LIST" wrk -t "$CLIENT_CPUS" -c 64 -d "${DURATION}s" \
    "http://127.0.0.1:$PORT/entities/b:1" | awk '/Requests\/sec/ {print int($2)}'
done > "$WORK/rps"
RPS=$(sort -n "$WORK/rps" | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
echo
echo "GET 1 KiB, auth off, one core: $(tr '\n' ' ' < "$WORK/rps")req/s (median $RPS): $(awk -v r="$RPS" 'BEGIN {printf "%.0f", 1e9 / r}') ns per GET"
awk -v a="$ADDED" -v r="$RPS" 'BEGIN {printf "auth adds %.1f ns per GET = %.2f %% of a GET (target <= 2 %%)\n", a, 100 * a * r / 1e9}'
