#!/usr/bin/env bash
# The main job: starts the demo API (inst/demo/api.R) on 127.0.0.1, submits
# jobs with curl, polls them to completion, prints what a client sees at each
# step, and stops the API. `tools/demo.sh --serve` leaves the API running.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
port=${ASYNCJOBS_DEMO_PORT:-8787}
base=http://127.0.0.1:$port

if [ "${1:-}" = "--serve" ]; then
  echo "Try:  curl -i -X POST '$base/analysis/kmeans?k=8'   then   curl -i $base/jobs/<job_id>"
  echo "      curl $base/jobs   curl $base/jobs/workers   curl -X DELETE $base/jobs/<job_id>   (Ctrl-C stops)"
  exec Rscript inst/demo/serve.R "$port" 4
fi

log=target/demo-api.log
set -m # own process group, and SIGINT is not ignored: Ctrl-C stops the API cleanly
Rscript inst/demo/serve.R "$port" 2 >"$log" 2>&1 &
api=$!
set +m
trap 'kill -INT $api 2>/dev/null || true' EXIT
for _ in $(seq 150); do
  curl -sf "$base/health" >/dev/null 2>&1 && break
  kill -0 "$api" 2>/dev/null || { cat "$log"; exit 1; }
  sleep 0.2
done
echo "Demo API on $base (2 workers); its log is $log"

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

echo; echo "== Submit =="
call POST '/analysis/kmeans?n=300000&k=6'; show POST '/analysis/kmeans?n=300000&k=6'; kmeans=$(field job_id)
call POST '/analysis/kmeans?n=300000&k=6'; show POST '/analysis/kmeans?n=300000&k=6  (again)'
call POST '/analysis/refresh?seconds=3'; show POST '/analysis/refresh?seconds=3'; refresh=$(field job_id)
call POST '/analysis/refresh?seconds=2&fail=true&source=GO'; show POST '/analysis/refresh?...&fail=true'; failing=$(field job_id)
call POST '/analysis/refresh?seconds=600&source=OMIM'; show POST '/analysis/refresh?seconds=600'; long=$(field job_id)
t=$(curl -s -o /dev/null -w '%{time_total}' "$base/health")
echo "GET    /health while both workers are busy  -> answered in ${t}s"

echo; echo "== Poll (each change a client sees) =="
declare -A last
while :; do
  active=0
  for name in kmeans refresh failing; do
    id=${!name}
    call GET "/jobs/$id"
    status=$(field status)
    line="$status"
    case $status in
      pending) line="pending, position $(field position)"; active=1 ;;
      running) line="running: $(field step) [$(sed -n 's/.*"current":\([0-9]*\),"total":\([0-9]*\).*/\1\/\2/p' <<<"$body")], ~$(field estimated_seconds)s left, $headers"; active=1 ;;
      completed) line="completed in $(field duration_seconds)s" ;;
      failed) line="failed: $(sed -n 's/.*"code":"\([A-Z_]*\)","message":"\([^"]*\)".*/\1: \2/p' <<<"$body")" ;;
    esac
    if [ "${last[$name]:-}" != "$line" ]; then
      printf '%s  GET /jobs/<%s> -> %s  %s\n' "$(date +%T.%2N)" "$name" "$code" "$line"
      last[$name]=$line
    fi
  done
  [ $active = 1 ] || break
  sleep 0.25
done

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
kill -INT "$api"
wait "$api" 2>/dev/null || true
trap - EXIT
left=$(pgrep -f 'asyncjobs/worker.R' || true)
echo "API stopped; worker processes left: ${left:-none}"
