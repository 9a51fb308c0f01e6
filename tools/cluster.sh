#!/usr/bin/env bash
# A cluster on one machine, driven with curl: two API replicas of the demo API
# (inst/plumber/demo/serve.R with 0 workers: they submit and read jobs, run none) and
# worker-only hosts (Rscript -e 'asyncjobs::run_workers(...)', 2 workers each),
# all on one PostgreSQL store. It shows a job submitted through one replica
# and polled through the other, GET /jobs/hosts, a cancel that reaches the
# host running the job, a worker host drained with SIGTERM (a rolling restart),
# a worker host killed with SIGKILL (its job ends HOST_LOST; a job with
# max_attempts = 2 runs again on another host), then stops everything and
# checks that no process is left.
#
# PostgreSQL comes from tools/services.sh (127.0.0.1:5432, or
# ASYNCJOBS_TEST_POSTGRES); the cluster uses its own database,
# ASYNCJOBS_CLUSTER_DB (default asyncjobs_cluster), created if missing, whose
# asyncjobs tables are dropped at start. Ports: ASYNCJOBS_CLUSTER_PORTS
# (default "8781 8782"). Logs: target/cluster/<process>.log. About a minute after the build.
set -euo pipefail
[ $# -eq 0 ] || { echo "usage: tools/cluster.sh" >&2; exit 2; }

source "$(dirname "${BASH_SOURCE[0]}")/setup.sh" # builds into target/Rlib; cd to the repository root

dbname=${ASYNCJOBS_CLUSTER_DB:-asyncjobs_cluster}
[[ $dbname =~ ^[a-z_][a-z0-9_]*$ ]] && [ "$dbname" != test ] ||
  { echo "asyncjobs: ASYNCJOBS_CLUSTER_DB must be a plain database name other than 'test', not '$dbname'" >&2; exit 2; }
read -r -a ports <<<"${ASYNCJOBS_CLUSTER_PORTS:-8781 8782}"
[ ${#ports[@]} -eq 2 ] || { echo "asyncjobs: ASYNCJOBS_CLUSTER_PORTS takes two ports" >&2; exit 2; }

dir=target/cluster
mkdir -p "$dir"
rm -f "$dir"/*.log

# PostgreSQL only: MariaDB is not needed here (services.sh would also look for it).
ASYNCJOBS_TEST_MYSQL=${ASYNCJOBS_TEST_MYSQL:-skip}
source tools/services.sh >"$dir/services.out"
grep -v '^asyncjobs: MariaDB' "$dir/services.out" || true
if [ -z "${ASYNCJOBS_TEST_POSTGRES:-}" ]; then
  echo "asyncjobs: the cluster demo needs PostgreSQL and tools/services.sh found none (see the line above);" >&2
  echo "           start one on 127.0.0.1:5432 or set ASYNCJOBS_TEST_POSTGRES=postgres://user@host:port/db" >&2
  exit 1
fi
pg=${ASYNCJOBS_TEST_POSTGRES%%\?*}
case $pg in postgres://*/* | postgresql://*/*) ;; *)
  echo "asyncjobs: ASYNCJOBS_TEST_POSTGRES is not a postgres:// URL with a database" >&2; exit 1 ;;
esac
server=${pg%/*} # postgres://user[:pass]@host:port
export ASYNCJOBS_STORE=$server/$dbname
shown_store=$(sed 's#^\([a-z]*://[^:/@]*\):[^@]*@#\1:***@#' <<<"$ASYNCJOBS_STORE") # no password
sql() { psql "$1" -w -X -q -At -v ON_ERROR_STOP=1 -c "$2"; }

for p in "${ports[@]}"; do
  ! aj_port_open "$p" || { echo "asyncjobs: something already listens on 127.0.0.1:$p (set ASYNCJOBS_CLUSTER_PORTS)" >&2; exit 1; }
done

# ---- processes ---------------------------------------------------------------
declare -A pid=()   # process name -> pid, while it runs
declare -A shown=() # process name -> log lines already printed
declare -A gone=()  # process name -> pid, once stopped or killed (for the hosts table)
order=()            # process names, in start order
seen=" "            # every pid started here and every child seen: none may be left
api_url() { echo "http://127.0.0.1:${ports[$1 - 1]}"; }
host_code='asyncjobs::run_workers(Sys.getenv("ASYNCJOBS_STORE"), n = 2, setup = quote(library(stats)), grace_ms = 30000)'

# Whatever happens, nothing started here is left behind: worker hosts get
# SIGKILL (their workers die with them), replicas SIGINT, then SIGKILL after 5 s.
cleanup() {
  local name p left=
  echo "cluster.sh: stopping everything started here" >&2
  for name in "${!pid[@]}"; do
    p=${pid[$name]}
    seen+="$(pgrep -P "$p" | paste -sd' ' || true) "
    case $name in
      api-*) kill -INT "$p" 2>/dev/null || true ;;
      *) { kill -9 "$p" && wait "$p"; } 2>/dev/null || true ;;
    esac
  done
  for _ in $(seq 50); do
    # shellcheck disable=SC2086
    left=$(alive $seen)
    [ -n "$left" ] || break
    sleep 0.1
  done
  [ -z "$left" ] || { echo "cluster.sh: killing what is left: $left" >&2; kill -9 $left 2>/dev/null || true; }
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# alive PID...: those of the PIDs still running (a zombie counts as gone).
alive() {
  local p s
  for p in "$@"; do
    s=$(ps -o stat= -p "$p" 2>/dev/null || true)
    [ -z "$s" ] || [[ $s == Z* ]] || echo -n "$p "
  done
  true
}
# children NAME: sets kids to the R worker processes of a host now (and
# records them for the final check).
children() {
  kids=$(pgrep -P "${pid[$1]}" | paste -sd' ' || true)
  seen+="$kids "
}

# logs [NAME...]: the log lines of these processes (default all) not shown yet.
logs() {
  local name n
  [ $# -gt 0 ] || set -- "${order[@]}"
  for name in "$@"; do
    n=$(wc -l <"$dir/$name.log")
    [ "$n" -le "${shown[$name]:-0}" ] || sed -n "$((${shown[$name]:-0} + 1)),${n}p" "$dir/$name.log" | sed "s/^/  [$name] /"
    shown[$name]=$n
  done
}
# died NAME: the process ended before it was ready; show its log and stop.
died() { echo "asyncjobs: $1 did not start:" >&2; cat "$dir/$1.log" >&2; exit 1; }

# start_api N: replica api-N, the demo API with 0 workers; waits for /health.
start_api() {
  local name=api-$1 port=${ports[$1 - 1]}
  order+=("$name")
  set -m # own process group, and SIGINT is not ignored
  Rscript inst/plumber/demo/serve.R "$port" 0 >"$dir/$name.log" 2>&1 &
  pid[$name]=$!
  set +m
  seen+="${pid[$name]} "
  for _ in $(seq 300); do
    curl -sf --max-time 2 "http://127.0.0.1:$port/health" >/dev/null 2>&1 && break
    kill -0 "${pid[$name]}" 2>/dev/null || died "$name"
    sleep 0.2
  done
  curl -sf --max-time 2 "http://127.0.0.1:$port/health" >/dev/null || died "$name"
  printf '%-7s pid %-7s Rscript inst/plumber/demo/serve.R %s 0   (http://127.0.0.1:%s)\n' "$name" "${pid[$name]}" "$port" "$port"
}

# start_host NAME: a worker-only host; waits for its "serving" line.
start_host() {
  local name=$1
  order+=("$name")
  set -m
  Rscript -e "$host_code" >"$dir/$name.log" 2>&1 &
  pid[$name]=$!
  set +m
  seen+="${pid[$name]} "
  for _ in $(seq 300); do
    grep -q 'serving queues' "$dir/$name.log" && break
    kill -0 "${pid[$name]}" 2>/dev/null || died "$name"
    sleep 0.2
  done
  grep -q 'serving queues' "$dir/$name.log" || died "$name"
  children "$name"
  printf '%-7s pid %-7s workers %s\n' "$name" "${pid[$name]}" "$kids"
}

# stop NAME SIGNAL LIMIT: sends the signal and waits up to LIMIT seconds; sets rc.
stop() {
  local name=$1 p=${pid[$1]}
  kill "-$2" "$p"
  for _ in $(seq $(($3 * 10))); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$p" 2>/dev/null; then
    echo "$name did not stop within $3 s; killing it"
    kill -9 "$p"
  fi
  { wait "$p" && rc=0 || rc=$?; } 2>/dev/null
  unset "pid[$name]"
}

# ---- HTTP, in the style of tools/demo.sh --------------------------------------
# call METHOD N PATH: one request to replica api-N; sets code, headers, body.
call() {
  local out
  out=$(curl -s -i --max-time 10 -X "$1" "$(api_url "$2")$3" | tr -d '\r')
  code=$(head -1 <<<"$out" | cut -d' ' -f2-)
  headers=$(grep -i '^\(location\|retry-after\):' <<<"$out" | paste -sd' ' || true)
  body=$(tail -1 <<<"$out")
}
# req METHOD N PATH [LABEL]: call, then print it.
req() {
  call "$1" "$2" "$3"
  printf '%-6s api-%s %-40s -> %s  %s\n       %s\n' "$1" "$2" "${4:-$3}" "$code" "$headers" "$body"
}
field() { grep -o "\"$1\":\"\{0,1\}[^\",}]*" <<<"$body" | head -1 | sed 's/^[^:]*:"\{0,1\}//'; }
# status_line: the job status in body, in a few words; active=1 while pending or running.
status_line() {
  status=$(field status)
  line=$status
  case $status in
    pending) line="pending, position $(field position)"; active=1 ;;
    running) line="running: $(field step)"; active=1 ;;
    completed) line="completed in $(field duration_seconds)s" ;;
    failed | cancelled) line="$status: $(sed -n 's/.*"code":"\([A-Z_]*\)","message":"\([^"]*\)".*/\1: \2/p' <<<"$body")" ;;
  esac
}
now() { date -u +%T.%2N; }
since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%5.1f", b - a }'; }

# poll N LIMIT NAME...: polls the jobs (ids in the variables NAME) through
# api-N until none is pending or running, printing each change a client sees
# (and every 5 s that a job is still active), with the seconds since t0; sets
# ended[NAME] to the seconds at which a job was first seen finished. Gives up
# after LIMIT s.
declare -A ended=()
poll() {
  local n=$1 limit=$2 name start=$SECONDS any
  shift 2
  declare -A last=() at=()
  for name in "$@"; do unset "ended[$name]"; done
  while :; do
    any=0
    for name in "$@"; do
      [ -z "${ended[$name]:-}" ] || continue # finished: not asked again
      call GET "$n" "/jobs/${!name}"
      active=0
      status_line
      if [ "${last[$name]:-}" != "$status" ] || { [ $active = 1 ] && [ $((SECONDS - ${at[$name]:-0})) -ge 5 ]; }; then
        printf '%s  +%ss  GET api-%s /jobs/<%s> -> %s  %s\n' "$(now)" "$(since "$t0")" "$n" "$name" "$code" "$line"
        last[$name]=$status
        at[$name]=$SECONDS
      fi
      if [ $active = 1 ]; then any=1; else ended[$name]=$(since "$t0"); fi
    done
    [ $any = 1 ] || break
    if [ $((SECONDS - start)) -ge "$limit" ]; then echo "(still active after ${limit}s; giving up)"; return 1; fi
    sleep 0.25
  done
}

# claimed_by ID NAME...: the first of these hosts whose log says it claimed the
# job (its claim line names the job id's first 8 characters); waits up to 15 s.
claimed_by() {
  local id8=${1:0:8} name
  shift
  for _ in $(seq 150); do
    for name in "$@"; do
      grep -q "claimed .*$id8" "$dir/$name.log" && { echo "$name"; return 0; }
    done
    sleep 0.1
  done
  echo "nobody"
}

# hosts N: GET /jobs/hosts through api-N, as a table (processes named as here).
hosts() {
  local map= name
  for name in "${!pid[@]}" "${!gone[@]}"; do map+="${pid[$name]:-${gone[$name]:-}}=$name "; done
  call GET "$1" /jobs/hosts
  printf '%-6s api-%s %-40s -> %s\n' GET "$1" /jobs/hosts "$code"
  PIDNAMES=$map python3 -c '
import json, os, sys
names = dict(x.split("=", 1) for x in os.environ["PIDNAMES"].split())
try:
    hosts = json.loads(sys.stdin.read())["hosts"]
except Exception:
    sys.exit(1)
print("       %-8s %-7s %-5s %-7s %-7s %-7s %-7s %s" % ("process", "pid", "slots", "running", "state", "queues", "version", "heartbeat_at"))
for h in sorted(hosts, key=lambda h: names.get(str(h["pid"]), "?")):
    print("       %-8s %-7s %-5s %-7s %-7s %-7s %-7s %s" % (names.get(str(h["pid"]), "?"), h["pid"], h["slots"],
          h["running"], h["state"], h["queues"], h["version"], (h["heartbeat_at"] or "")[11:22]))
' <<<"$body" || echo "       $body"
}

# ---- the run ---------------------------------------------------------------------
echo
echo "== 1. A clean store =="
if [ "$(sql "$server/postgres" "select 1 from pg_database where datname = '$dbname'")" != 1 ]; then
  sql "$server/postgres" "create database $dbname"
  echo "created database $dbname"
fi
sql "$ASYNCJOBS_STORE" "drop table if exists asyncjobs_jobs, asyncjobs_hosts, asyncjobs_schema"
echo "Store: $shown_store (its asyncjobs tables dropped: each run starts clean)"
echo "Every process below gets it as ASYNCJOBS_STORE. Logs: $dir/<process>.log"

echo
echo "== 2. Two API replicas (0 workers) and two worker hosts (2 workers each) =="
start_api 1
start_api 2
echo "worker hosts: Rscript -e '$host_code'"
start_host host-a
start_host host-b
logs

echo
echo "== 3. Submit through api-1, poll through api-2 =="
req POST 1 '/analysis/kmeans?n=100000&k=5'; kmeans=$(field job_id)
t0=$EPOCHREALTIME
poll 2 120 kmeans
req GET 2 "/jobs/$kmeans/result" "/jobs/<kmeans>/result"
echo "It ran on $(claimed_by "$kmeans" host-a host-b): every claim is a line in the host's log:"
logs
hosts 2

echo
echo "== 4. Cancel through api-1 a job running on a worker host; read it through api-2 =="
req POST 1 '/analysis/refresh?seconds=600&source=Orphanet'; long=$(field job_id)
t0=$EPOCHREALTIME
on=$(claimed_by "$long" host-a host-b)
sleep 0.5
logs
children "$on"; before=$kids
echo "<long> runs on $on (workers $before):"
hosts 1
req DELETE 1 "/jobs/$long" "/jobs/<long>"
req GET 2 "/jobs/$long" "/jobs/<long>"
# The host kills the job's worker when the cancel reaches it (NOTIFY), then starts a fresh one.
for _ in $(seq 100); do
  children "$on"; after=$kids
  [ "$(wc -w <<<"$after")" = 2 ] && [ "$after" != "$before" ] && break
  sleep 0.1
done
echo "$on's workers: before $before, now $after (the cancelled job's worker was killed and replaced)"
hosts 2

echo
echo "== 5. Rolling restart of host-b: SIGTERM drains it =="
echo "Four 6-second jobs fill the four workers, two on each host; then host-b gets SIGTERM."
jobs4=()
for src in HPO GO MONDO ClinVar; do
  req POST 1 "/analysis/refresh?seconds=6&source=$src"
  eval "job_$src=$(field job_id)"
  jobs4+=("job_$src")
done
t0=$EPOCHREALTIME
for j in "${jobs4[@]}"; do claimed_by "${!j}" host-a host-b >/dev/null; done
logs host-a host-b
echo "$(now)  kill -TERM ${pid[host-b]} (host-b): it claims nothing more, lets its running jobs finish (grace 30 s) and exits"
gone[host-b]=${pid[host-b]}
children host-b; workers_b=$kids
stop host-b TERM 45
logs host-b
left=$(alive $workers_b)
echo "$(now)  host-b exited with status $rc; its workers ($workers_b) left: ${left:-none}"
poll 2 60 "${jobs4[@]}"
echo "(on a real deployment host-b now restarts with the new version; here host-c will take its place)"

echo
echo "== 6. kill -9 a worker host: its jobs end HOST_LOST, or run again elsewhere =="
echo "host-a is the only worker host now: both jobs go to it."
req POST 1 '/analysis/refresh?seconds=600&source=OMIM' '/analysis/refresh?seconds=600&source=OMIM'; lost=$(field job_id)
req POST 1 '/analysis/refresh?seconds=20&source=GO&max_attempts=2'; retry=$(field job_id)
claimed_by "$lost" host-a >/dev/null
claimed_by "$retry" host-a >/dev/null
logs host-a
echo "Start host-c, the replacement for host-b (idle: both jobs already run on host-a):"
start_host host-c
logs host-c
hosts 1
children host-a; doomed=$kids
echo "$(now)  kill -9 ${pid[host-a]} (host-a; workers $doomed): no drain, no cleanup"
t0=$EPOCHREALTIME
gone[host-a]=${pid[host-a]}
{ kill -9 "${pid[host-a]}"; wait "${pid[host-a]}"; } 2>/dev/null || true
unset "pid[host-a]"
for _ in $(seq 50); do [ -z "$(alive $doomed)" ] && break; sleep 0.1; done
left=$(alive $doomed)
echo "$(now)  host-a is gone; its R workers ($doomed) died with it: left ${left:-none}"
echo "Its leases (15 s) are no longer renewed; a live process's rescue pass (every 5 s) then"
echo "fails <lost> (max_attempts = 1) with HOST_LOST and puts <retry> (max_attempts = 2) back in the queue."
poll 2 90 lost retry
call GET 2 "/jobs/$lost"
took=${ended[lost]# }
echo "<lost> was seen failed with HOST_LOST ${took}s after the kill (must be < 45 s)"
[ "$(field code)" = HOST_LOST ] || { echo "asyncjobs: <lost> ended $(field status), not HOST_LOST" >&2; exit 1; }
awk -v t="$took" 'BEGIN { exit !(t < 45) }' || { echo "asyncjobs: HOST_LOST took ${took}s, not < 45 s" >&2; exit 1; }
req GET 1 "/jobs/$retry/result" "/jobs/<retry>/result"
echo "<retry> ran on $(claimed_by "$retry" host-a), then on $(claimed_by "$retry" host-c); who rescued, and host-c's claim:"
logs
hosts 2

echo
echo "== 7. Stop: SIGTERM the last worker host, SIGINT the replicas =="
gone[host-c]=${pid[host-c]}
children host-c; workers_c=$kids
echo "$(now)  kill -TERM ${pid[host-c]} (host-c)"
stop host-c TERM 45
logs host-c
left=$(alive $workers_c)
echo "$(now)  host-c exited with status $rc; its workers ($workers_c) left: ${left:-none}"
for n in 1 2; do
  gone[api-$n]=${pid[api-$n]}
  stop "api-$n" INT 15
  echo "$(now)  api-$n stopped (SIGINT)"
done
sleep 0.5
# shellcheck disable=SC2086
left=$(alive $seen)
echo "Processes started here and their workers ($(tr ' ' '\n' <<<"$seen" | sort -u | grep -c .) pids): left ${left:-none}"
[ -z "$left" ] || exit 1 # the EXIT trap kills them
trap - EXIT
