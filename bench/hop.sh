#!/usr/bin/env bash
# The cross-core hop, before and after, in one run on one machine:
# alternates two builds of `themis-hop-bench` for ROUNDS rounds and prints
# each phase's line labelled with its build and round.
#
#   bench/hop.sh BEFORE_BIN AFTER_BIN [ROUNDS] [CALLS]
#
# BEFORE_BIN is an older build of the binary (e.g. main's: `git archive`
# it into a scratch folder and build there); AFTER_BIN this tree's
# ($CARGO_TARGET_DIR/release/themis-hop-bench). THEMIS's allocations per
# call are deterministic (glommio's reactor's vary a little with how often
# it turns); the times depend on what else runs on the machine's CPUs,
# which is why the builds alternate.
#
# Careful when both trees build into one CARGO_TARGET_DIR: their units have
# the same hashes and cargo decides freshness by file times, so one tree's
# build can be taken for the other's. Touch the tree's sources before
# building it, or give each its own target directory.
set -euo pipefail
before=${1:?usage: bench/hop.sh BEFORE_BIN AFTER_BIN [ROUNDS] [CALLS]}
after=${2:?usage: bench/hop.sh BEFORE_BIN AFTER_BIN [ROUNDS] [CALLS]}
rounds=${3:-3}
calls=${4:-200000}
echo "# $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs, load: $(cut -d' ' -f1-3 /proc/loadavg)"
for r in $(seq 1 "$rounds"); do
  for side in before after; do
    bin=$before
    [ "$side" = after ] && bin=$after
    "$bin" --calls "$calls" | sed -n "s/^/$side round=$r /p"
  done
done
