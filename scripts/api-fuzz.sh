#!/usr/bin/env bash
# API fuzzing with schemathesis (PyPI) against a live server, from the
# OpenAPI document: every route, generated and mutated inputs; fails on any
# 5xx, a response that does not match the document, or a dropped connection.
#
#   scripts/api-fuzz.sh [--examples N] [--bin PATH]
#
# Starts its own server (2 cores, change feed on, temp data dir, a free
# port) and stops it at the end. Installs schemathesis with pip if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
EXAMPLES=30
BIN="${CARGO_TARGET_DIR:-$HOME/.cache/themis/target}/debug/themis_server"
while [ $# -gt 0 ]; do
  case "$1" in
    --examples) EXAMPLES="$2"; shift 2 ;;
    --bin) BIN="$2"; shift 2 ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
command -v schemathesis >/dev/null 2>&1 || python3 -m pip install --quiet schemathesis
[ -x "$BIN" ] || { echo "no server binary at $BIN (build first, or --bin)" >&2; exit 2; }

WORK=$(mktemp -d /tmp/themis-fuzz.XXXXXX)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
# Long polls are capped by request_timeout_ms: 2 s keeps every answer well
# inside the client's 10 s timeout.
(cd "$WORK" && THEMIS_FEATURES_CDC=true THEMIS_SERVER_REQUEST_TIMEOUT_MS=2000 exec "$BIN" --host 127.0.0.1 --port "$PORT" --threads 2 --db "$WORK/db") \
  > "$WORK/server.log" 2>&1 &
PID=$!
cleanup() { kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
for _ in $(seq 1 100); do
  (exec 3<>/dev/tcp/127.0.0.1/"$PORT") 2>/dev/null && break
  sleep 0.1
done
status=0
schemathesis run docs/openapi.yaml --url "http://127.0.0.1:$PORT" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
  --max-examples "$EXAMPLES" --workers 1 --request-timeout 10 --no-color || status=$?
if ! kill -0 "$PID" 2>/dev/null; then
  echo "the server died during the run:" >&2; tail -n 30 "$WORK/server.log" >&2; exit 1
fi
exit "$status"
