#!/usr/bin/env bash
# Runs every test: the Rust core's cargo tests, then the R package's testthat
# suites against a fresh build. tools/services.sh first makes PostgreSQL and
# MariaDB available for the store suites (or says why they are skipped).
# Ends with "N passed, N failed, N skipped" for the R tests.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
source tools/services.sh
cargo test --quiet 2>&1
NOT_CRAN=true Rscript tools/run-testthat.R
