#!/usr/bin/env bash
# Builds the release tarball the deployment guide unpacks:
#
#   tar -xzf vccdb-linux-x64.tar.gz && cd vccdb && ./themis_server --version
#
# Contents: vccdb/themis_server, themis-migrate (and the guide's name
# vccdb-migrate, a link to it), themis-loadtest, config/, systemd/ and
# scripts/ (backup, restore, systemd timer, Kubernetes CronJob), README.md
# and docs/. Binaries are stripped of debug info (the release profile keeps
# line tables for profiling; the tarball does not need them).
#
#   scripts/dist.sh [OUT_DIR]     (default: the repository root)
set -euo pipefail
cd "$(dirname "$0")/.."
out="$(realpath "${1:-.}")"
target="${CARGO_TARGET_DIR:-$HOME/.cache/themis/target}"
cargo build --release --workspace --bins >&2
stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
d="$stage/vccdb"
mkdir -p "$d"
for bin in themis_server themis-migrate themis-loadtest; do
    strip --strip-debug -o "$d/$bin" "$target/release/$bin"
done
ln -s themis-migrate "$d/vccdb-migrate"
cp -r config systemd docs README.md "$d/"
mkdir -p "$d/scripts"
cp -r scripts/restore.sh scripts/backup-incremental.sh scripts/systemd scripts/k8s "$d/scripts/"
tar -C "$stage" -czf "$out/vccdb-linux-x64.tar.gz" vccdb
echo "$out/vccdb-linux-x64.tar.gz"
