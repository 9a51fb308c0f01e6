#!/usr/bin/env bash
# Runs every benchmark in bench/ on this machine, asyncjobs and its peers in
# the same run; figures go to target/bench/*.md. BENCH_REPS sets repetitions.
#   bash tools/bench.sh         every script
#   bash tools/bench.sh mirai   only bench/bench.R's asyncjobs-vs-mirai table
#   bash tools/bench.sh peers   only bench/peers.R: the stores against
#                               graphile-worker (needs node, npm, psql, mariadb)
# mirai is not in Debian: it is built into $ASYNCJOBS_PEERS_LIB (default
# ~/.cache/asyncjobs/peers) by tools/build-peers.sh when missing there and
# NANONEXT_SRC and MIRAI_SRC name its sources (see that script); otherwise
# bench/bench.R skips it and says why.
set -euo pipefail
export ASYNCJOBS_EXTRA_PKGS=future # the peer of bench/bench.R
export ASYNCJOBS_PEERS_LIB="${ASYNCJOBS_PEERS_LIB:-${XDG_CACHE_HOME:-$HOME/.cache}/asyncjobs/peers}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [ "${1:-}" != peers ] && [ ! -d "$ASYNCJOBS_PEERS_LIB/mirai" ]; then
  bash "$here/build-peers.sh" || echo "bench: mirai could not be built; its figures will be skipped" >&2
fi
source "$here/setup.sh"
mkdir -p target/bench
if [ "${1:-}" = peers ]; then
  Rscript bench/peers.R | tee target/bench/peers.md
  exit 0
fi
if [ "${1:-}" = mirai ]; then
  BENCH_ONLY=mirai Rscript bench/bench.R | tee target/bench/mirai.md
  exit 0
fi
for b in bench profile registry http store cluster; do
  echo "== bench/$b.R"
  Rscript "bench/$b.R" | tee "target/bench/$b.md"
done
