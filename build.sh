#!/usr/bin/env bash
# Builds the release binaries and copies them to ./bin.
set -euo pipefail
cd "$(dirname "$0")"
./setup.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/themis/target}"
cargo build --release --workspace --bins
mkdir -p bin
cp "$CARGO_TARGET_DIR/release/themis_server" "$CARGO_TARGET_DIR/release/themis-loadtest" bin/
echo "built: bin/themis_server ($(bin/themis_server --version))"
