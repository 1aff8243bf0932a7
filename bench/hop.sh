#!/usr/bin/env bash
# The cross-core hop, before and after, in one run on one machine:
# alternates two builds of `themis-hop-bench` for ROUNDS rounds and prints
# each phase's line labelled with its build and round.
#
#   bench/hop.sh BEFORE_BIN AFTER_BIN [ROUNDS] [CALLS]
#
# BEFORE_BIN is an older build of the binary (e.g. main's, built into its
# own target directory); AFTER_BIN this tree's
# ($CARGO_TARGET_DIR/release/themis-hop-bench). The allocation counts are
# deterministic; the times depend on what else runs on the machine's CPUs,
# which is why the builds alternate.
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
