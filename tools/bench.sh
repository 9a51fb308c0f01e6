#!/usr/bin/env bash
# Runs every benchmark in bench/ on this machine, asyncjobs and its peers in
# the same run; figures go to target/bench/*.md. BENCH_REPS sets repetitions.
set -euo pipefail
export ASYNCJOBS_EXTRA_PKGS=future # the peer of bench/bench.R
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
mkdir -p target/bench
for b in bench profile registry http store cluster; do
  echo "== bench/$b.R"
  Rscript "bench/$b.R" | tee "target/bench/$b.md"
done
