#!/usr/bin/env bash
# Semantic cache and LLM store figures (issue 14): see bench/cache.py.
#   bench/cache.sh [--entries N] [--seconds S] [--only lookups,quality,llm] ...
# The server runs on the first CPU (--threads 1), wrk on the last one.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
SERVER_CPUS=1 bench_setup
python3 -c 'import numpy' 2>/dev/null || { echo "needs python3-numpy (./setup.sh bench)" >&2; exit 1; }
exec python3 bench/cache.py --bin "$BIN/themis_server" --server-cpus 0 \
  --client-cpus "$((NCPU - 1))" "$@"
