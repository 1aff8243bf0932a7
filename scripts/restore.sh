#!/usr/bin/env bash
# Restores a THEMIS backup (a checkpoint_<ms>/ directory made by
# POST /api/admin/backup, `themis_server --backup` or backup-incremental.sh)
# into a database directory, following the deployment guide's six steps:
#
#   1. validate the backup (manifest.json + .rocksdb/CURRENT); with --verify,
#      check every file's SHA-256 and the database itself (themis_server --verify)
#   2. stop the server, if one runs: the systemd unit (--service, default
#      themisdb) when systemd has it active, or the process in --pid-file
#   3. refuse a non-empty database path unless --force, then empty it
#   4. copy the checkpoint into the database path
#   5. --with-wal: copy the backup's archived WAL (wal_archive/*.log) next to
#      it, so that the server replays it on start (see docs/backup.md for
#      exactly what this recovers); or --wal-archive DIR [--until CUT]: the
#      continuous WAL archive (storage.wal_archive_path) replayed by
#      `themis_server --restore` (steps 4 and 5 together), to the latest
#      archived state or up to CUT (point-in-time restore)
#   6. start again what step 2 stopped and check /health (--api-url)
#
# Works without systemd and without a running server: it only stops and
# starts what exists. Exit status: 0 restored, 1 refused or failed.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: restore.sh --backup-path DIR --db-path DIR [--with-wal | --wal-archive DIR [--until CUT]]
                  [--force] [--verify] [--service NAME] [--pid-file FILE] [--api-url URL]
                  [--themis-bin PATH]

  --backup-path DIR   a backup: DIR/manifest.json and DIR/.rocksdb/
  --db-path DIR       the database directory to restore into
  --with-wal          also restore the backup's archived WAL (DIR/wal_archive/)
  --wal-archive DIR   replay the continuous WAL archive (storage.wal_archive_path)
  --until CUT         stop the replay at CUT: seq:N (change-feed sequence), an
                      RFC 3339 time (2026-11-25T14:00:00Z), ms:N or rocksdb:N
  --force             overwrite a non-empty database directory
  --verify            verify the backup (checksums and database) before restoring
  --service NAME      systemd unit to stop and start (default: themisdb)
  --pid-file FILE     without systemd: the server's PID file (stopped with SIGTERM)
  --api-url URL       where to check /health after a restart (default http://localhost:8765)
  --themis-bin PATH   the themis_server binary for --verify (default: next to this
                      script's parent, then $PATH)
USAGE
}

BACKUP_PATH="" DB_PATH="" WITH_WAL=0 FORCE=0 VERIFY=0 WAL_ARCHIVE="" UNTIL=""
SERVICE="themisdb" PID_FILE="" API_URL="http://localhost:8765" THEMIS_BIN="${THEMIS_BIN:-}"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --backup-path) BACKUP_PATH="${2:?--backup-path needs a value}"; shift 2 ;;
    --db-path) DB_PATH="${2:?--db-path needs a value}"; shift 2 ;;
    --with-wal) WITH_WAL=1; shift ;;
    --wal-archive) WAL_ARCHIVE="${2:?--wal-archive needs a value}"; shift 2 ;;
    --until) UNTIL="${2:?--until needs a value}"; shift 2 ;;
    --force) FORCE=1; shift ;;
    --verify) VERIFY=1; shift ;;
    --service) SERVICE="${2:?--service needs a value}"; shift 2 ;;
    --pid-file) PID_FILE="${2:?--pid-file needs a value}"; shift 2 ;;
    --api-url) API_URL="${2:?--api-url needs a value}"; shift 2 ;;
    --themis-bin) THEMIS_BIN="${2:?--themis-bin needs a value}"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "Error: unknown option $1" >&2; usage >&2; exit 1 ;;
  esac
done
[[ -n "$BACKUP_PATH" && -n "$DB_PATH" ]] || { usage >&2; exit 1; }
if [[ "$WITH_WAL" == 1 && -n "$WAL_ARCHIVE$UNTIL" ]]; then
  echo "Error: --with-wal (the backup's own wal_archive/) and --wal-archive/--until exclude each other" >&2
  exit 1
fi

log() { echo "[restore] $*"; }
die() { echo "Error: $*" >&2; exit 1; }

find_bin() {
  if [[ -n "$THEMIS_BIN" ]]; then echo "$THEMIS_BIN"; return; fi
  local here; here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
  for c in "$here/../themis_server" "$here/themis_server"; do
    [[ -x "$c" ]] && { echo "$c"; return; }
  done
  command -v themis_server || die "themis_server not found (give --themis-bin)"
}

# 1. Validate the backup.
[[ -f "$BACKUP_PATH/manifest.json" ]] || die "Invalid backup: $BACKUP_PATH/manifest.json is missing"
[[ -f "$BACKUP_PATH/.rocksdb/CURRENT" ]] || die "Invalid backup: $BACKUP_PATH/.rocksdb/CURRENT is missing"
if [[ "$VERIFY" == 1 ]]; then
  bin="$(find_bin)"
  log "verifying $BACKUP_PATH with $bin --verify"
  if ! report="$("$bin" --verify "$BACKUP_PATH")"; then
    echo "$report" >&2
    die "Backup verification failed: $BACKUP_PATH (nothing was changed)"
  fi
  log "backup verified"
fi
if [[ -n "$WAL_ARCHIVE" && ! -d "$WAL_ARCHIVE" ]]; then
  die "--wal-archive: $WAL_ARCHIVE is not a directory"
fi
if [[ "$WITH_WAL" == 1 ]]; then
  shopt -s nullglob
  wal=("$BACKUP_PATH"/wal_archive/*.log)
  shopt -u nullglob
  [[ ${#wal[@]} -gt 0 ]] || die "--with-wal: $BACKUP_PATH/wal_archive/ holds no WAL files"
fi

# 3 (checked before stopping anything). Refuse a non-empty target.
if [[ -d "$DB_PATH" && -n "$(ls -A "$DB_PATH" 2>/dev/null)" && "$FORCE" != 1 ]]; then
  die "Database path not empty: $DB_PATH (use --force to overwrite)"
fi

# 2. Stop the server, if one runs.
restart=""
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$SERVICE" 2>/dev/null; then
  log "stopping systemd unit $SERVICE"
  systemctl stop "$SERVICE"
  restart="systemd"
elif [[ -n "$PID_FILE" && -f "$PID_FILE" ]] && kill -0 "$(cat "$PID_FILE")" 2>/dev/null; then
  pid="$(cat "$PID_FILE")"
  log "stopping server process $pid (SIGTERM)"
  kill -TERM "$pid"
  for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$pid" 2>/dev/null && die "server process $pid did not stop within 30 s"
  restart="manual"
else
  log "no running server found (systemd unit $SERVICE inactive or absent, no live --pid-file)"
fi
if [[ -e "$DB_PATH/LOCK" ]] && command -v fuser >/dev/null 2>&1 && fuser "$DB_PATH/LOCK" >/dev/null 2>&1; then
  die "Database at $DB_PATH is in use by another process; stop it first"
fi

# 3. Empty the target.
mkdir -p "$DB_PATH"
if [[ -n "$(ls -A "$DB_PATH")" ]]; then
  log "removing the existing database files in $DB_PATH (--force)"
  find "$DB_PATH" -mindepth 1 -maxdepth 1 -exec rm -rf {} +
fi

# 4. Copy the checkpoint (a copy, not links: the restored database must not
# share files with the backup). With --wal-archive/--until, themis_server
# --restore copies it and replays the archive (4 and 5 together).
if [[ -n "$WAL_ARCHIVE$UNTIL" ]]; then
  bin="$(find_bin)"
  args=(--db "$DB_PATH" --restore "$BACKUP_PATH")
  [[ -n "$WAL_ARCHIVE" ]] && args+=(--wal-archive "$WAL_ARCHIVE")
  [[ -n "$UNTIL" ]] && args+=(--until "$UNTIL")
  log "restoring with $bin ${args[*]}"
  if ! "$bin" "${args[@]}"; then
    die "point-in-time restore into $DB_PATH failed (see above); $DB_PATH is not a usable database"
  fi
else
  log "copying checkpoint $BACKUP_PATH/.rocksdb into $DB_PATH"
  cp -a "$BACKUP_PATH/.rocksdb/." "$DB_PATH/"
  rm -f "$DB_PATH/LOCK" "$DB_PATH"/LOG "$DB_PATH"/LOG.old.*
fi

# 5. Archived WAL: RocksDB replays every WAL file in the directory that is
# newer than the checkpoint's on the next start, up to the first damaged
# record.
if [[ "$WITH_WAL" == 1 ]]; then
  n=0
  for f in "${wal[@]}"; do
    name="$(basename "$f")"
    name="${name##*-}"              # strip the timestamp prefix: 000123.log
    cp -a "$f" "$DB_PATH/$name"
    n=$((n + 1))
  done
  log "restored $n archived WAL files"
fi
sync

# 6. Start again what was stopped, and check it answers.
case "$restart" in
  systemd)
    log "starting systemd unit $SERVICE"
    systemctl start "$SERVICE" ;;
  manual)
    log "the server was stopped through --pid-file; start it again the way it was started" ;;
esac
if [[ -n "$restart" ]] && command -v curl >/dev/null 2>&1; then
  for _ in $(seq 1 60); do
    if curl -fsS "$API_URL/health" >/dev/null 2>&1; then log "server healthy at $API_URL"; break; fi
    sleep 1
  done
fi
log "restore of $BACKUP_PATH into $DB_PATH complete"
