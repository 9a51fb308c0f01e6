#!/usr/bin/env bash
# Runs every test: the Rust core's cargo tests, then the R package's testthat
# suites against a fresh build. tools/services.sh first makes PostgreSQL and
# MariaDB available for the store suites (or says why they are skipped).
# Ends with "N passed, N failed, N skipped" for the R tests.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
source tools/services.sh
# The dashboard's browser tests drive a headless Chromium (Debian's chromium).
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    echo "asyncjobs: installing chromium (the dashboard's browser tests)"
    { apt-get -o DPkg::Lock::Timeout=600 update -q >/dev/null &&
      DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends chromium >/dev/null; } ||
      echo "asyncjobs: chromium could not be installed; the dashboard's browser tests will be SKIPPED" >&2
  else
    echo "asyncjobs: no chromium and not root; the dashboard's browser tests will be SKIPPED" >&2
  fi
fi
cargo test --quiet 2>&1
NOT_CRAN=true Rscript tools/run-testthat.R
