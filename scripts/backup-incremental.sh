#!/usr/bin/env bash
# A THEMIS backup with archived WAL, the deployment guide's four steps:
#
#   1. a checkpoint through POST /api/admin/backup; when the server does not
#      answer, an offline checkpoint with `themis_server --backup` (the
#      database must then be stopped: RocksDB's lock refuses a running one)
#   2. the database's WAL files (*.log) copied into the backup's
#      wal_archive/ with a timestamp prefix (YYYYmmdd-HHMMSS-000123.log)
#   3. the manifest: the checkpoint's manifest.json, marked
#      checkpoint_with_wal and counting the archived files
#   4. retention: backups older than --retention-days are deleted, only
#      after this one succeeded
#
# Usage: backup-incremental.sh --db-path DIR --backup-root DIR --retention-days N
#                              [--api-url URL] [--themis-bin PATH] [--verbose]
#
# With server.enable_auth on, set THEMIS_API_KEY to an admin key (sent as
# Authorization: Bearer).
set -euo pipefail

DB_PATH="" BACKUP_ROOT="" RETENTION_DAYS="" API_URL="http://localhost:8765" VERBOSE=0
THEMIS_BIN="${THEMIS_BIN:-}"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --db-path) DB_PATH="${2:?}"; shift 2 ;;
    --backup-root) BACKUP_ROOT="${2:?}"; shift 2 ;;
    --retention-days) RETENTION_DAYS="${2:?}"; shift 2 ;;
    --api-url) API_URL="${2:?}"; shift 2 ;;
    --themis-bin) THEMIS_BIN="${2:?}"; shift 2 ;;
    --verbose) VERBOSE=1; shift ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) echo "Error: unknown option $1" >&2; exit 1 ;;
  esac
done
[[ -n "$DB_PATH" && -n "$BACKUP_ROOT" && -n "$RETENTION_DAYS" ]] \
  || { echo "Error: --db-path, --backup-root and --retention-days are required" >&2; exit 1; }
[[ "$RETENTION_DAYS" =~ ^[0-9]+$ ]] || { echo "Error: --retention-days must be a whole number" >&2; exit 1; }

log() { [[ "$VERBOSE" == 1 ]] && echo "[backup] $*" || true; }
die() { echo "Error: $*" >&2; exit 1; }
# The backup's directory in the server's JSON answer (the one "path" that
# ends in checkpoint_<ms>; file paths inside the manifest do not).
backup_path() {
  printf '%s' "$1" | grep -o '"path": *"[^"]*"' | grep 'checkpoint_[0-9]*"$' \
    | tail -n1 | sed 's/.*"\([^"]*\)"$/\1/'
}
mkdir -p "$BACKUP_ROOT"
root="$(cd "$BACKUP_ROOT" && pwd)"

# 1. Checkpoint: online, else offline.
checkpoint=""
if command -v curl >/dev/null 2>&1 \
   && answer="$(curl -fsS -m 3600 -X POST "$API_URL/api/admin/backup" \
        -H 'Content-Type: application/json' \
        ${THEMIS_API_KEY:+-H "Authorization: Bearer $THEMIS_API_KEY"} \
        -d "{\"directory\":\"$root\",\"label\":\"incremental\"}" 2>/dev/null)"; then
  checkpoint="$(backup_path "$answer")"
  log "online checkpoint: $checkpoint"
else
  log "server at $API_URL does not answer; taking an offline checkpoint"
  bin="$THEMIS_BIN"
  if [[ -z "$bin" ]]; then
    here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
    for c in "$here/../themis_server" "$here/themis_server"; do [[ -x "$c" ]] && { bin="$c"; break; }; done
    [[ -n "$bin" ]] || bin="$(command -v themis_server)" || die "themis_server not found (give --themis-bin)"
  fi
  out="$("$bin" --db "$DB_PATH" --backup "$root")" || die "offline checkpoint failed (is the server running but not answering at $API_URL?)"
  checkpoint="$(backup_path "$out")"
  log "offline checkpoint: $checkpoint"
fi
[[ -n "$checkpoint" && -f "$checkpoint/manifest.json" ]] || die "Cannot create checkpoint (no manifest found)"

# 2. Archive the WAL with a timestamp prefix.
stamp="$(date -u +%Y%m%d-%H%M%S)"
mkdir -p "$checkpoint/wal_archive"
n=0
shopt -s nullglob
for f in "$DB_PATH"/*.log; do
  cp -p "$f" "$checkpoint/wal_archive/$stamp-$(basename "$f")"
  n=$((n + 1))
done
shopt -u nullglob
log "archived $n WAL files"

# 3. The manifest: mark it and count the archived WAL.
if [[ "$n" -gt 0 ]]; then
  m="$checkpoint/manifest.json"
  inside="$(sed -n 's/^  "wal_file_count": \([0-9]*\),$/\1/p' "$m")"
  sed -i -e 's/^  "backup_type": "checkpoint",$/  "backup_type": "checkpoint_with_wal",/' \
         -e "s/^  \"wal_file_count\": [0-9]*,\$/  \"wal_file_count\": $(( ${inside:-0} + n )),/" "$m"
fi

# 4. Retention: delete complete backups older than the limit (never this one).
if [[ "$RETENTION_DAYS" -gt 0 ]]; then
  cutoff=$(( ($(date +%s) - RETENTION_DAYS * 86400) * 1000 ))
  for d in "$root"/checkpoint_*; do
    [[ -d "$d" && -f "$d/manifest.json" && "$d" != "$checkpoint" ]] || continue
    ms="${d##*/checkpoint_}"
    [[ "$ms" =~ ^[0-9]+$ ]] || continue
    if [[ "$ms" -lt "$cutoff" ]]; then log "retention: deleting $d"; rm -rf "$d"; fi
  done
fi
echo "$checkpoint"
