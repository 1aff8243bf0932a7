# Shared by bench/cdc.sh and bench/query.sh (source it after parsing
# options): the release build, the binaries' location, the CPU split
# between server and clients, and waiting for a port.

# bench_setup: builds the release binaries (unless BENCH_NO_BUILD is set) and
# sets BIN, NCPU, SERVER_CPUS (kept if already set), CLIENT_CPUS, CLIENT_LIST.
bench_setup() {
  export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/themis/target}"
  if [ -z "${BENCH_NO_BUILD:-}" ]; then
    ./setup.sh
    cargo build --release --workspace --bins
  fi
  BIN="${BENCH_BIN_DIR:-$CARGO_TARGET_DIR/release}"
  NCPU=$(nproc)
  [ -n "${SERVER_CPUS:-}" ] || SERVER_CPUS=$(( NCPU / 2 > 0 ? NCPU / 2 : 1 ))
  CLIENT_CPUS=$(( NCPU - SERVER_CPUS ))
  if [ "$CLIENT_CPUS" -lt 1 ]; then echo "need at least 2 CPUs" >&2; exit 1; fi
  CLIENT_LIST=$(seq -s, "$SERVER_CPUS" $((NCPU - 1)))
}

# bench_priority: sets PRIO, a command prefix that runs a command in a
# session of its own at nice -15, with its autogroup at -15 too (with the
# kernel's autogroups a plain nice only ranks a process within its own
# session), when the user may (root); empty otherwise. On a shared machine
# other users' builds then disturb the measured server and client less.
bench_priority() {
  PRIO=()
  if nice -n -15 true 2>/dev/null; then
    PRIO=(setsid sh -c 'echo -15 > /proc/self/autogroup 2>/dev/null; exec nice -n -15 "$@"' sh)
  fi
}

# wait_port PORT LOG: waits up to 30 s for a listener; shows LOG on failure.
wait_port() {
  for _ in $(seq 1 300); do
    if (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "server on port $1 did not start" >&2; tail "$2" >&2; exit 1
}
