#!/bin/sh
# Entrypoint of the inst/deploy image: ASYNCJOBS_STORE (the store URL, with
# its password) comes from a secret file, ASYNCJOBS_STORE_FILE, unless it is
# set already; then the command replaces this shell, so SIGTERM from
# `docker stop` reaches R (run_workers() drains on it).
set -eu
if [ -z "${ASYNCJOBS_STORE:-}" ] && [ -n "${ASYNCJOBS_STORE_FILE:-}" ]; then
  ASYNCJOBS_STORE=$(cat "$ASYNCJOBS_STORE_FILE")
  export ASYNCJOBS_STORE
fi
[ -n "${ASYNCJOBS_STORE:-}" ] || { echo "asyncjobs: set ASYNCJOBS_STORE or ASYNCJOBS_STORE_FILE" >&2; exit 1; }
exec "$@"
