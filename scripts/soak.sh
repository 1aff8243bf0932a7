#!/usr/bin/env bash
# Crash-and-load soak (not in CI): mixed PUT/DELETE/query/change-feed load
# with `kill -9` every few seconds, checking data, indexes and the change
# feed after every restart. See scripts/soak.py for what is checked.
#
#   scripts/soak.sh                     # 100 cycles, release build
#   scripts/soak.sh --cycles 10 --seconds 2
#   scripts/soak.sh --bin path/to/themis_server ...
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-$HOME/.cache/themis/target}"
if [[ " $* " != *" --bin "* ]]; then
    cargo build --release --workspace --bins >&2
    set -- --bin "$target/release/themis_server" "$@"
fi
exec python3 scripts/soak.py "$@"
