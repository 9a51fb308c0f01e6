#!/usr/bin/env bash
# The main job: starts the demo API (inst/plumber/demo/plumber.R) on 127.0.0.1, submits
# jobs with curl, polls them to completion, prints what a client sees at each
# step, and stops the API. `tools/demo.sh --serve` leaves the API running.
#
# `--store sqlite` (a fresh target/demo-jobs.db) or `--store URL` (sqlite:///abs/path.db,
# postgres://..., mysql://...) runs the durable-store demo instead: jobs survive
# the API process. It submits jobs, kills the API with SIGKILL, starts a new one
# on the same store and reads the jobs back: a completed result is still there,
# a pending job is run by the new process, and the job that was running fails
# with HOST_LOST once its lease expires. `--serve --store ...` serves on that
# store. The store reaches the API as ASYNCJOBS_STORE (read by start_workers());
# without --store the demo uses ASYNCJOBS_STORE if set, else memory.
set -euo pipefail

usage() { echo "usage: tools/demo.sh [--serve] [--store memory|sqlite|URL]" >&2; exit 2; }
serve=
store=${ASYNCJOBS_STORE:-memory}
while [ $# -gt 0 ]; do
  case $1 in
    --serve) serve=1 ;;
    --store) [ $# -ge 2 ] || usage; store=$2; shift ;;
    --store=*) store=${1#--store=} ;;
    *) usage ;;
  esac
  shift
done

case $store in
  memory | sqlite | sqlite://* | postgres://* | postgresql://* | mysql://* | mariadb://*) ;;
  *) echo "asyncjobs: --store takes memory, sqlite or a store URL, not '$store'" >&2; exit 2 ;;
esac

source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
port=${ASYNCJOBS_DEMO_PORT:-8787}
base=http://127.0.0.1:$port

db=
if [ "$store" = sqlite ]; then db=$PWD/target/demo-jobs.db; store=sqlite://$db; fi
export ASYNCJOBS_STORE=$store
shown_store=$(sed 's#^\([a-z]*://[^:/@]*\):[^@]*@#\1:***@#' <<<"$store") # no password

if [ -n "$serve" ]; then
  echo "Store: $shown_store"
  echo "Try:  curl -i -X POST '$base/analysis/kmeans?k=8'   then   curl -i $base/jobs/<job_id>"
  echo "      curl $base/jobs   curl $base/jobs/workers   curl -X DELETE $base/jobs/<job_id>   (Ctrl-C stops)"
  echo "      curl $base/jobs/metrics   and the dashboard: $base/jobs/dashboard"
  exec Rscript inst/plumber/demo/serve.R "$port" 4
fi

log=target/demo-api.log
: >"$log"
api=
workers=
# Whatever happens, no API or worker is left behind.
trap '[ -z "$api" ] || kill -INT $api 2>/dev/null || true; [ -z "$workers" ] || kill -9 $workers 2>/dev/null || true' EXIT

# start_api N: the demo API with N workers, in the background; waits for /health.
start_api() {
  set -m # own process group, and SIGINT is not ignored: Ctrl-C stops the API cleanly
  Rscript inst/plumber/demo/serve.R "$port" "$1" >>"$log" 2>&1 &
  api=$!
  set +m
  for _ in $(seq 150); do
    curl -sf "$base/health" >/dev/null 2>&1 && break
    kill -0 "$api" 2>/dev/null || { cat "$log"; exit 1; }
    sleep 0.2
  done
  list_workers
}
# list_workers: the pool's R processes now (a cancelled job's worker is replaced).
list_workers() { workers=$(pgrep -P "$api" | paste -sd' ' || true); }

# alive PID...: those of the PIDs still running.
alive() { local p; for p in "$@"; do kill -0 "$p" 2>/dev/null && echo -n "$p "; done; true; }

# stop_api: SIGINT, the way Ctrl-C stops it; prints whether any worker is left.
stop_api() {
  list_workers
  kill -INT "$api"
  wait "$api" 2>/dev/null || true
  api=
  local left; left=$(alive $workers)
  echo "API stopped; worker processes left: ${left:-none}"
  workers=
}

# call METHOD PATH: one request; prints status, Location / Retry-After and the body.
call() {
  local out
  out=$(curl -s -i -X "$1" "$base$2" | tr -d '\r')
  code=$(head -1 <<<"$out" | cut -d' ' -f2-)
  headers=$(grep -i '^\(location\|retry-after\):' <<<"$out" | paste -sd' ' || true)
  body=$(tail -1 <<<"$out")
}
show() { printf '%-6s %-44s -> %s  %s\n       %s\n' "$1" "$2" "$code" "$headers" "$body"; }
# field NAME: the first value of NAME in the body (enough for these flat bodies).
field() { grep -o "\"$1\":\"\{0,1\}[^\",}]*" <<<"$body" | head -1 | sed 's/^[^:]*:"\{0,1\}//'; }
# status_line: the job status in body, in a few words; active=1 while pending or
# running. key: the same without the estimate, which changes on every poll.
status_line() {
  status=$(field status)
  line="$status"
  key=
  case $status in
    pending) line="pending, position $(field position)"; active=1 ;;
    running)
      key="running: $(field step) [$(sed -n 's/.*"current":\([0-9]*\),"total":\([0-9]*\).*/\1\/\2/p' <<<"$body")]"
      line="$key, ~$(field estimated_seconds)s left, $headers"; active=1 ;;
    completed) line="completed in $(field duration_seconds)s" ;;
    failed) line="failed: $(sed -n 's/.*"code":"\([A-Z_]*\)","message":"\([^"]*\)".*/\1: \2/p' <<<"$body")" ;;
  esac
}
# poll NAME...: polls the jobs (ids in the variables NAME) until none is pending
# or running, printing each change a client sees; gives up after $1 seconds.
poll() {
  local limit=$1 name id start=$SECONDS
  shift
  declare -A last
  while :; do
    active=0
    for name in "$@"; do
      id=${!name}
      call GET "/jobs/$id"
      status_line
      if [ "${last[$name]:-}" != "${key:-$line}" ]; then
        printf '%s  GET /jobs/<%s> -> %s  %s\n' "$(date +%T.%2N)" "$name" "$code" "$line"
        last[$name]=${key:-$line}
      fi
    done
    [ $active = 1 ] || break
    if [ $((SECONDS - start)) -ge "$limit" ]; then echo "(still active after ${limit}s; giving up)"; break; fi
    sleep 0.25
  done
}

if [ "$store" = memory ]; then
  start_api 2
  echo "Demo API on $base (2 workers); its log is $log"

  echo; echo "== Submit =="
  call POST '/analysis/kmeans?n=300000&k=6'; show POST '/analysis/kmeans?n=300000&k=6'; kmeans=$(field job_id)
  call POST '/analysis/kmeans?n=300000&k=6'; show POST '/analysis/kmeans?n=300000&k=6  (again)'
  call POST '/analysis/refresh?seconds=3'; show POST '/analysis/refresh?seconds=3'; refresh=$(field job_id)
  call POST '/analysis/refresh?seconds=2&fail=true&source=GO'; show POST '/analysis/refresh?...&fail=true'; failing=$(field job_id)
  call POST '/analysis/refresh?seconds=600&source=OMIM'; show POST '/analysis/refresh?seconds=600'; long=$(field job_id)
  t=$(curl -s -o /dev/null -w '%{time_total}' "$base/health")
  echo "GET    /health while both workers are busy  -> answered in ${t}s"

  echo; echo "== Poll (each change a client sees) =="
  poll 600 kmeans refresh failing

  echo; echo "== Results =="
  call GET "/jobs/$kmeans/result"; show GET "/jobs/<kmeans>/result"
  call GET "/jobs/$failing/result"; show GET "/jobs/<failing>/result"
  call GET "/jobs/$refresh/output"; show GET "/jobs/<refresh>/output"
  call GET "/jobs/$long"; show GET "/jobs/<long>  (started after a worker freed up)"
  call DELETE "/jobs/$long"; show DELETE "/jobs/<long>"
  call DELETE "/jobs/$long"; show DELETE "/jobs/<long>  (again)"
  call GET "/jobs/0000-no-such-job"; show GET "/jobs/0000-no-such-job"
  call GET "/jobs?status=completed,failed"; show GET "/jobs?status=completed,failed"
  call GET "/jobs/workers"; show GET "/jobs/workers"

  echo; echo "== Stop =="
  stop_api
  trap - EXIT
  exit 0
fi

# ---- the durable-store demo: a job outlives the API process ------------------
[ -z "$db" ] || rm -f "$db" "$db-wal" "$db-shm" "$db-journal" # a fresh file each run
start_api 1
echo "Demo API on $base: process $api, 1 worker (pid $workers), store $shown_store"
echo "Its log is $log. Jobs live in the store, not in the API process."

echo; echo "== 1. Submit jobs to the first API process =="
call POST '/analysis/refresh?seconds=1&source=HPO'; show POST '/analysis/refresh?seconds=1&source=HPO'; quick=$(field job_id)
poll 60 quick
call POST '/analysis/refresh?seconds=120&source=OMIM'; show POST '/analysis/refresh?seconds=120&source=OMIM'; long=$(field job_id)
sleep 1
kseed=$((RANDOM % 1000)) # another store URL may hold earlier runs' jobs: no duplicate
call POST "/analysis/kmeans?n=100000&k=5&seed=$kseed"; show POST "/analysis/kmeans?n=100000&k=5&seed=$kseed"; kmeans=$(field job_id)
sleep 0.5
for name in quick long kmeans; do
  call GET "/jobs/${!name}"; status_line
  printf '%s  GET /jobs/<%s> -> %s  %s\n' "$(date +%T.%2N)" "$name" "$code" "$line"
done

echo; echo "== 2. kill -9 the API process $api: no shutdown hook, no cleanup =="
list_workers
old_workers=$workers
{ kill -9 "$api"; wait "$api"; } 2>/dev/null || true
api=
for _ in $(seq 20); do [ -z "$(alive $old_workers)" ] && break; sleep 0.1; done
left=$(alive $old_workers)
echo "$(date +%T.%2N)  API killed; its worker (pid $old_workers) died with it: left ${left:-none}"
[ -z "$left" ] || kill -9 $left 2>/dev/null || true
curl -s -o /dev/null "$base/health" && echo "GET    /health -> answered?!" || echo "GET    /health -> no answer (curl: connection refused)"

echo; echo "== 3. Start a new API process on the same store =="
start_api 1
echo "$(date +%T.%2N)  Demo API on $base: process $api, 1 worker (pid $workers), store $shown_store"

echo; echo "== 4. The new process reads and runs the same jobs =="
call GET "/jobs/$quick/result"; show GET "/jobs/<quick>/result  (completed before the kill)"
echo "<long> was running in the killed process; its lease (asyncjobs.lease_seconds, 15 s) now"
echo "expires unrenewed and the new process's keeper rescues it: with max_attempts = 1 it fails"
echo "with HOST_LOST (with max_attempts > 1 it would run again). <kmeans> was pending: the new"
echo "process's worker takes it at once. (A client polling sees <long> stay 'running' meanwhile.)"
poll 90 long kmeans

echo; echo "== 5. Results, through the new process =="
call GET "/jobs/$kmeans/result"; show GET "/jobs/<kmeans>/result  (submitted to the killed process)"
call GET "/jobs/$long"; show GET "/jobs/<long>"
call GET "/jobs?status=completed,failed"; show GET "/jobs?status=completed,failed"

echo; echo "== 6. Stop =="
stop_api
trap - EXIT
[ -z "$db" ] || echo "The jobs stay in $db (a new --store sqlite run starts afresh)."
