#!/usr/bin/env bash
# Runs every test: the Rust core's cargo tests, then the R package's testthat
# suites against a fresh build. Ends with "N passed, N failed" for the R tests.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
cargo test --quiet 2>&1
Rscript tests/run-testthat.R
