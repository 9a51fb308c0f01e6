#!/usr/bin/env bash
# Installs what a fresh Debian machine lacks (R and Debian's r-cran-* packages,
# when run as root), then builds asyncjobs into target/Rlib. Sourced by
# tools/test.sh and tools/demo.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="$PATH:$HOME/.cargo/bin"

pkgs=(testthat withr ps callr processx curl jsonlite plumber ${ASYNCJOBS_EXTRA_PKGS:-})
need=()
if ! command -v Rscript >/dev/null 2>&1; then
  need=(r-base-dev)
  for p in "${pkgs[@]}"; do need+=("r-cran-$p"); done
else
  for p in "${pkgs[@]}"; do
    Rscript -e "quit(status = !requireNamespace('$p', quietly = TRUE))" >/dev/null 2>&1 || need+=("r-cran-$p")
  done
fi
command -v curl >/dev/null 2>&1 || need+=(curl) # the demo's client
command -v python3 >/dev/null 2>&1 || need+=(python3) # the store suites' TCP proxy
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "asyncjobs: missing ${need[*]}; run this as root, or install them with apt-get." >&2
    exit 1
  fi
  echo "asyncjobs: installing ${need[*]}"
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
fi
command -v cargo >/dev/null 2>&1 || { echo "asyncjobs: cargo is required (https://rustup.rs)" >&2; exit 1; }

mkdir -p target/Rlib
R CMD INSTALL --no-multiarch --library=target/Rlib . >target/install.log 2>&1 || { cat target/install.log; exit 1; }
export R_LIBS="$PWD/target/Rlib${R_LIBS:+:$R_LIBS}"
