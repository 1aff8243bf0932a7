#!/usr/bin/env bash
# What auth costs per request, counted in instructions (deterministic; the
# wall-clock figures of bench/security.sh swing ±20 % on a shared machine).
#
# The release server runs under valgrind's callgrind on one core, with
# collection switched on only inside the connection future
# (`serve_connection`: parsing, routing, the guard, the handler, the
# answer; not start-up nor background threads). A Python client sends
# REQUESTS GETs of a 1 KiB entity over one keep-alive connection. The
# instructions counted, divided by REQUESTS, are the cost of one request.
# Configurations:
#   off      auth off;
#   off+key  auth off, the client still sends the Bearer key (what the
#            longer request costs to receive and parse, without auth);
#   on       auth on, a 26-byte Bearer key (resolved once per connection,
#            then from the per-connection key cache);
#   uncached auth on, a 300-byte key: longer than the cache keeps
#            (MAX_CACHED_KEY = 256), so hashed and compared on every request
#            (what every request cost before the cache; SHA-256 of 300
#            bytes is 5 blocks where a 26-byte key is 1).
#
#   bench/auth_cost.sh [REQUESTS]
#   BENCH_NO_BUILD=1 uses the release binary already built.
set -euo pipefail
cd "$(dirname "$0")/.."
REQUESTS="${1:-20000}"
SERVER_CPUS=1
# shellcheck source=bench/lib.sh
. bench/lib.sh
bench_setup
command -v valgrind >/dev/null || { echo "valgrind is needed (apt-get install valgrind)" >&2; exit 1; }
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$WORK"' EXIT
KEY=bench-key-0123456789abcdef
LONG=$(head -c 300 /dev/zero | tr '\0' k)

cat > "$WORK/client.py" <<'EOF'
import socket, sys
port, n, key = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
auth = f"Authorization: Bearer {key}\r\n" if key != "-" else ""
req = f"GET /entities/b:1 HTTP/1.1\r\nHost: bench\r\n{auth}\r\n".encode()
s = socket.create_connection(("127.0.0.1", port))
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
buf = b""
for _ in range(n):
    s.sendall(req)
    while b"\r\n\r\n" not in buf:
        buf += s.recv(65536)
    head, _, rest = buf.partition(b"\r\n\r\n")
    status = head.split(b" ", 2)[1]
    length = next(int(l.split(b":")[1]) for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:"))
    while len(rest) < length:
        rest += s.recv(65536)
    buf = rest[length:]
    if status != b"200":
        sys.exit(f"status {status!r}")
s.close()
EOF

body=$(printf '{"v":"%s"}' "$(head -c 1000 /dev/zero | tr '\0' x)")
TOGGLE="${TOGGLE-*serve_connection*}"
# measure NAME YAML KEY N: instructions counted for N GETs (plus one PUT).
measure() {
  local name=$1 yaml=$2 key=$3 n=$4 port="" toggle=()
  [ -n "$TOGGLE" ] && toggle=(--toggle-collect="$TOGGLE")
  printf '%s\n' "$yaml" > "$WORK/$name.yaml"
  taskset -c 0 valgrind --tool=callgrind --callgrind-out-file="$WORK/$name.out" "${toggle[@]}" \
    "$BIN/themis_server" --config "$WORK/$name.yaml" --threads 1 --port 0 \
    --db "$WORK/data-$name" > "$WORK/$name.log" 2>&1 &
  local pid=$!
  for _ in $(seq 1 1200); do
    port=$(sed -n 's/^THEMIS listening on [^:]*:\([0-9]*\).*/\1/p' "$WORK/$name.log")
    [ -n "$port" ] && break
    sleep 0.1
  done
  [ -n "$port" ] || { echo "$name did not start" >&2; cat "$WORK/$name.log" >&2; exit 1; }
  # With auth off the key header is ignored.
  curl -sf -X PUT -H "X-API-Key: admin-$KEY" -H 'Content-Type: application/json' -d "$body" \
    "http://127.0.0.1:$port/entities/b:1" >/dev/null
  python3 "$WORK/client.py" "$port" "$n" "$key"
  kill -INT "$pid"; wait "$pid" 2>/dev/null || true
  callgrind_annotate "$WORK/$name.out" 2>/dev/null \
    | awk '/PROGRAM TOTALS/ && !done {gsub(",", "", $1); print $1; done = 1}'
}

AUTH="server: {enable_auth: true, api_keys: [{key: $KEY, role: readonly}, {key: $LONG, role: readonly}, {key: admin-$KEY, role: admin}]}"
# Each configuration with N and 2 x N GETs: the difference divided by N
# leaves out the PUT, the connection set-up and anything else done once.
declare -A per
for cfg in off off+key on uncached; do
  case $cfg in
    off) yaml=""; key=-;;
    off+key) yaml=""; key=$KEY;;
    on) yaml=$AUTH; key=$KEY;;
    uncached) yaml=$AUTH; key=$LONG;;
  esac
  a=$(measure "$cfg-1" "$yaml" "$key" "$REQUESTS")
  b=$(measure "$cfg-2" "$yaml" "$key" $((2 * REQUESTS)))
  per[$cfg]=$(( (b - a) / REQUESTS ))
  echo "$cfg: $a instructions with $REQUESTS GETs, $b with $((2 * REQUESTS)) -> ${per[$cfg]} per GET" >&2
done
echo
echo "| configuration (callgrind, toggle '${TOGGLE:-none}', GET 1 KiB, keep-alive, $REQUESTS vs $((2 * REQUESTS)) GETs) | instructions/GET | vs auth off |"
echo "| --- | ---: | ---: |"
for cfg in off off+key on uncached; do
  echo "| $cfg | ${per[$cfg]} | $(awk -v a="${per[$cfg]}" -v b="${per[off]}" 'BEGIN {printf "%+.2f %%", 100 * (a - b) / b}') |"
done
