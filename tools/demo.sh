#!/usr/bin/env bash
# The main job: starts a pool, submits jobs, polls them and prints each
# transition a client would see, then stops cleanly.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
Rscript inst/demo/demo.R
