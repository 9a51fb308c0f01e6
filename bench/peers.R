# asyncjobs' stores against graphile-worker, the fastest PostgreSQL queue we
# could run, in one interleaved run on this machine and the same PostgreSQL
# server: submit, round trip, pickup from another process, throughput of
# single and bulk submits, and the write transactions a job costs.
#
# Usage, from the repository root after the package is built into target/Rlib:
#   R_LIBS=target/Rlib Rscript bench/peers.R > target/bench/peers.md
# It needs node and npm: graphile-worker (GRAPHILE_WORKER_VERSION, default
# 0.18.0) is installed by npm at run time into BENCH_NODE_DIR (default
# ~/.cache/asyncjobs/peers/node), outside the repository; and psql and the
# mariadb (or mysql) client, for the databases' own counters. It makes the
# databases it names when they are missing (asyncjobs_bench on both servers
# by default) and keeps to them: other users' databases are not touched.
#
# Every figure has 4 workers: graphile-worker's runner with concurrency 4 in
# one node process; asyncjobs' start_workers(n = 4) in a worker host process
# (an R session), with the submits from another R session acting as the API
# (start_workers(n = 0)). The memory store is one process (its jobs reach no
# other), shown for reference. Jobs are no-ops: graphile-worker's task
# `async () => {}`, asyncjobs' register_job("noop", function(p) p) submitted
# by name. Each repetition runs every system once, in an order rotated from
# one repetition to the next, so that the machine's drift falls on all.
#
# A run of one system has phases, each of which starts its processes and
# stops them: latencies (submits, round trips, pickups); the throughput batch
# of single submits; the bulk batch; and, to count transactions, the same
# batch phase without its batch (start, warm up, idle, stop), whose counts are
# subtracted from the batch's.
#
# Environment (sizes): BENCH_REPS (3), BENCH_JOBS (2000, per throughput
# batch), BENCH_SUBMITS (300), BENCH_ROUNDTRIPS (100), BENCH_REMOTE_ROUNDTRIPS
# (30), BENCH_PICKUPS (10, 2-3 s apart), BENCH_COUNT (1: count transactions;
# 0 skips the phase without a batch), BENCH_SYSTEMS
# (postgres,graphile,mariadb,sqlite,memory), BENCH_PG_URL, BENCH_MYSQL_URL.
# Progress goes to stderr, the tables (markdown) to stdout; the defaults take
# about 15 minutes.
suppressPackageStartupMessages({
  library(callr)
  library(processx)
  library(jsonlite)
})

env_int <- function(name, default) as.integer(Sys.getenv(name, default))
REPS <- env_int("BENCH_REPS", 3)
N_JOBS <- env_int("BENCH_JOBS", 2000)
N_SUBMIT <- env_int("BENCH_SUBMITS", 300)
N_RT <- env_int("BENCH_ROUNDTRIPS", 100)
N_RT_REMOTE <- env_int("BENCH_REMOTE_ROUNDTRIPS", 30)
N_PICKUP <- env_int("BENCH_PICKUPS", 10)
COUNT <- Sys.getenv("BENCH_COUNT", "1") != "0"
WORKERS <- 4L
GAP_SUBMIT <- 0.01 # s between timed submits
GAP_RT <- 0.01 # s between round trips
GAP_PICKUP <- c(2, 3) # s between pickups: an idle host's poll has backed off to 1 s
PG_URL <- Sys.getenv("BENCH_PG_URL", "postgres://postgres@127.0.0.1:5432/asyncjobs_bench")
MYSQL_URL <- Sys.getenv("BENCH_MYSQL_URL", "mysql://root@127.0.0.1:3306/asyncjobs_bench")
GW_VERSION <- Sys.getenv("GRAPHILE_WORKER_VERSION", "0.18.0")
NODE_DIR <- Sys.getenv("BENCH_NODE_DIR", file.path(Sys.getenv("XDG_CACHE_HOME", "~/.cache"), "asyncjobs", "peers", "node"))
SYSTEMS <- trimws(strsplit(Sys.getenv("BENCH_SYSTEMS", "postgres,graphile,mariadb,sqlite,memory"), ",")[[1]])
LABELS <- c(postgres = "asyncjobs PG", graphile = "graphile-worker", mariadb = "asyncjobs MariaDB",
            sqlite = "asyncjobs SQLite", memory = "asyncjobs memory (reference)")
stopifnot(all(SYSTEMS %in% names(LABELS)))
SYSTEMS <- names(LABELS)[names(LABELS) %in% SYSTEMS] # the columns' order

script <- sub("^--file=", "", grep("^--file=", commandArgs(FALSE), value = TRUE)[1])
here <- if (is.na(script)) "bench" else dirname(normalizePath(script))
GRAPHILE_JS <- file.path(here, "peers", "graphile.js")
now <- function() as.numeric(Sys.time())
say <- function(...) message(format(Sys.time(), "%T "), sprintf(...))
loadavg <- function() as.numeric(strsplit(readLines("/proc/loadavg"), " ")[[1]][1:3])
`%||%` <- function(x, y) if (is.null(x)) y else x
# x[[key]] of a named vector, 0 when it has no such name.
count_of <- function(x, key) if (key %in% names(x)) unname(x[[key]]) else 0

# --- The database servers: our own databases, and their counters ---------

parse_url <- function(url) {
  m <- regmatches(url, regexec("^([a-z]+)://(?:([^:@/]*)(?::([^@/]*))?@)?([^:/?]+)(?::([0-9]+))?/([A-Za-z0-9_]+)$", url, perl = TRUE))[[1]]
  if (!length(m)) stop("cannot read the URL ", sub(":[^@/]*@", ":***@", url), " (scheme://user[:password]@host[:port]/database)")
  list(user = m[3], password = m[4], host = m[5], port = m[6], db = m[7])
}

# psql on the server's maintenance database, so that these reads are not
# counted as transactions of the benchmark's database.
psql <- function(sql) {
  admin <- sub("/[A-Za-z0-9_]+$", "/postgres", PG_URL)
  out <- suppressWarnings(system2("psql", c("-X", "-A", "-t", "-q", "-d", shQuote(admin), "-c", shQuote(sql)),
                                  stdout = TRUE, stderr = TRUE))
  if (!is.null(attr(out, "status"))) stop("psql: ", paste(out, collapse = " "))
  out
}

mysql_client <- function() {
  bin <- Sys.which(c("mariadb", "mysql"))
  bin <- bin[nzchar(bin)]
  if (!length(bin)) stop("no mariadb or mysql client on the PATH")
  bin[[1]]
}

mysql <- function(sql) {
  u <- parse_url(MYSQL_URL)
  args <- c("-h", u$host, "-P", if (nzchar(u$port)) u$port else "3306", "-u", u$user, "-N", "-B", "-e", shQuote(sql))
  env <- if (nzchar(u$password)) paste0("MYSQL_PWD=", URLdecode(u$password))
  out <- suppressWarnings(system2(mysql_client(), args, stdout = TRUE, stderr = TRUE, env = env))
  if (!is.null(attr(out, "status"))) stop("mysql: ", paste(out, collapse = " "))
  out
}

ensure_pg <- function() {
  db <- parse_url(PG_URL)$db
  if (!length(psql(sprintf("SELECT 1 FROM pg_database WHERE datname = '%s'", db)))) {
    psql(sprintf("CREATE DATABASE %s", db))
  }
  psql("SHOW server_version")[[1]]
}

ensure_mysql <- function() {
  mysql(sprintf("CREATE DATABASE IF NOT EXISTS %s", parse_url(MYSQL_URL)$db))
  mysql("SELECT VERSION()")[[1]]
}

# Connections open to the benchmark's database.
db_connections <- function(system) {
  if (system %in% c("postgres", "graphile")) {
    as.numeric(psql(sprintf("SELECT count(*) FROM pg_stat_activity WHERE datname = '%s'", parse_url(PG_URL)$db)))
  } else if (system == "mariadb") {
    as.numeric(mysql(sprintf("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE DB = '%s'", parse_url(MYSQL_URL)$db)))
  } else 0
}

# The server's own counts: PostgreSQL's for our database alone; MariaDB's
# are the whole server's (its performance_schema is off here). A PostgreSQL
# backend adds its counts to these at the end of a transaction at most once a
# second, and when it exits: a connection that goes idle holds back its last
# second's counts for as long as it stays idle (30 s and more, measured
# here). So they are read with none of the benchmark's connections open.
db_counters <- function(system) {
  deadline <- now() + 30
  while (db_connections(system) > 0 && now() < deadline) Sys.sleep(0.2)
  if (db_connections(system) > 0) stop("connections to the benchmark's database stay open; its counters would be short")
  Sys.sleep(0.2)
  if (system %in% c("postgres", "graphile")) {
    v <- strsplit(psql(sprintf(paste(
      "SELECT xact_commit, tup_inserted + tup_updated + tup_deleted, pg_snapshot_xmax(pg_current_snapshot())",
      "FROM pg_stat_database WHERE datname = '%s'"), parse_url(PG_URL)$db)), "|", fixed = TRUE)[[1]]
    setNames(as.numeric(v), c("xact_commit", "rows_written", "xids"))
  } else if (system == "mariadb") {
    rows <- strsplit(mysql(paste("SHOW GLOBAL STATUS WHERE Variable_name IN ('Com_commit', 'Handler_commit',",
                                 "'Handler_write', 'Handler_update', 'Handler_delete')")), "\t")
    v <- setNames(as.numeric(vapply(rows, `[[`, "", 2)), vapply(rows, `[[`, "", 1))
    c(v[c("Com_commit", "Handler_commit")],
      rows_written = sum(v[c("Handler_write", "Handler_update", "Handler_delete")]))
  } else numeric()
}

# Runs `f` (a phase that starts its processes and stops them) between two
# readings of the database's counters; their difference is `$db` of its value.
counted <- function(system, f) {
  if (!COUNT || !system %in% c("postgres", "graphile", "mariadb")) return(f())
  before <- db_counters(system)
  r <- f()
  r$db <- db_counters(system) - before
  # A counter that went back: the server restarted, or someone ran FLUSH STATUS.
  if (any(r$db < 0)) {
    say("%s: the server's counters went back during a phase (a restart?); its counts are left out", system)
    r$db[] <- NA_real_
  }
  r
}

# --- graphile-worker: node processes driven over their stdin and stdout ---

ensure_graphile <- function() {
  if (!nzchar(Sys.which("node")) || !nzchar(Sys.which("npm"))) stop("node and npm are needed for graphile-worker")
  dir <- file.path(path.expand(NODE_DIR), paste0("graphile-worker-", GW_VERSION))
  pkg <- file.path(dir, "node_modules", "graphile-worker", "package.json")
  if (!file.exists(pkg)) {
    say("installing graphile-worker@%s into %s", GW_VERSION, dir)
    dir.create(dir, recursive = TRUE, showWarnings = FALSE)
    writeLines('{ "private": true }', file.path(dir, "package.json"))
    out <- suppressWarnings(system2("npm", c("install", "--prefix", shQuote(dir), "--no-save", "--no-package-lock",
                                             "--no-audit", "--no-fund", paste0("graphile-worker@", GW_VERSION)),
                                    stdout = TRUE, stderr = TRUE))
    if (!file.exists(pkg)) stop("npm could not install graphile-worker@", GW_VERSION, ": ", paste(tail(out, 5), collapse = " "))
  }
  dir
}

# A node process of graphile.js in `role`: call(cmd, ...) sends a command and
# returns its answer (a list).
node_peer <- function(role, node_dir) {
  log <- tempfile(paste0("graphile-", role, "-"), fileext = ".log")
  p <- process$new("node", c(GRAPHILE_JS, role), stdin = "|", stdout = "|", stderr = log,
                   env = c("current", DATABASE_URL = PG_URL, PEERS_NODE_DIR = node_dir, NO_LOG_SUCCESS = "1",
                           BENCH_CONCURRENCY = as.character(WORKERS)),
                   cleanup = TRUE, cleanup_tree = TRUE)
  buffer <- character()
  next_id <- 0
  read_answer <- function(id, timeout_ms) {
    deadline <- now() + timeout_ms / 1000
    repeat {
      for (i in seq_along(buffer)) {
        msg <- fromJSON(buffer[[i]], simplifyVector = TRUE)
        if (identical(as.numeric(msg$id), as.numeric(id))) {
          buffer <<- buffer[-seq_len(i)]
          if (isFALSE(msg$ok)) stop(sprintf("graphile.js %s: %s", role, msg$error))
          return(msg)
        }
      }
      buffer <<- character()
      left <- deadline - now()
      if (left <= 0 || !p$is_alive() && !p$is_incomplete_output()) {
        stop(sprintf("graphile.js %s: no answer (%s); its log: %s", role,
                     if (p$is_alive()) "timed out" else paste("exit status", p$get_exit_status()),
                     paste(tail(readLines(log, warn = FALSE), 5), collapse = " | ")))
      }
      p$poll_io(as.integer(min(left, 0.2) * 1000))
      buffer <<- c(buffer, p$read_output_lines())
    }
  }
  read_answer(0, 60000) # ready
  list(
    call = function(cmd, ..., .wait_ms = 600000) {
      next_id <<- next_id + 1
      p$write_input(paste0(toJSON(list(id = next_id, cmd = cmd, ...), auto_unbox = TRUE, digits = NA), "\n"))
      read_answer(next_id, .wait_ms)
    },
    # Asks the process to stop its runner or pool and exit; killed after 10 s.
    # What it wrote on stderr is passed on to ours.
    stop = function() {
      if (p$is_alive()) try(p$write_input('{"id": -1, "cmd": "quit"}\n'), silent = TRUE)
      p$wait(10000)
      if (p$is_alive()) p$kill_tree()
      status <- p$get_exit_status()
      lines <- readLines(log, warn = FALSE)
      if (length(lines) || !identical(status, 0L)) {
        say("graphile.js %s (exit status %s) said:\n%s", role, format(status), paste(tail(lines, 20), collapse = "\n"))
      }
      unlink(log)
      invisible(status)
    })
}

# --- asyncjobs: R sessions ------------------------------------------------

HANDLERS <- tempfile("peers-handlers-", fileext = ".R")
writeLines(c(
  "library(asyncjobs)",
  "register_job(\"noop\", function(p) p)",
  "# The job's own clock at its start, as text (all its digits).",
  "register_job(\"stamp\", function(p) sprintf(\"%.6f\", as.numeric(Sys.time())))"), HANDLERS)

# In a session: a pool of `n` workers (0: the API) on `url`, no cap on active jobs.
session_start <- function(url, handlers, n) {
  suppressPackageStartupMessages(library(asyncjobs))
  start_workers(n, store = url, handlers = handlers, max_active = Inf, wait = TRUE)
  invisible(NULL)
}

new_session <- function(url, n) {
  s <- r_session$new(r_session_options(libpath = .libPaths()), wait = TRUE)
  s$run(session_start, list(url, HANDLERS, n))
  s
}

close_session <- function(s) {
  if (is.null(s) || !s$is_alive()) return(invisible())
  try(s$run(function() asyncjobs::stop_workers(10000)), silent = TRUE)
  s$close(grace = 2000)
  invisible()
}

# Calls to the store by what they were for, counted in a session.
store_calls <- function(s) {
  s$run(function() {
    m <- asyncjobs::get_metrics()
    m <- m[m$metric == "asyncjobs_store_calls_total", ]
    setNames(m$value, m$operation)
  })
}

add_named <- function(a, b) {
  keys <- union(names(a), names(b))
  setNames(vapply(keys, function(k) sum(a[k], b[k], na.rm = TRUE), 0), keys)
}
sub_named <- function(a, b) add_named(a, -b[names(b)])

jobs_done <- function(host) host$run(function() sum(asyncjobs::get_worker_status()$jobs_done))

# Waits (polling the host's own count, not the store) until it has run `n` jobs.
wait_jobs_done <- function(host, n, timeout_s = 300) {
  deadline <- now() + timeout_s
  repeat {
    done <- jobs_done(host)
    if (done >= n || now() > deadline) return(done)
    Sys.sleep(0.1)
  }
}

# Removes what a trial left in a shared store: jobs still queued are
# cancelled, finished ones deleted.
clean_store <- function(api) {
  api$run(function() {
    left <- asyncjobs::list_jobs(status = c("pending", "running"))
    for (id in left$job_id) asyncjobs::cancel_job(id)
    suppressMessages(asyncjobs::cleanup_old_jobs(0))
    nrow(left)
  })
}

# One throughput batch of asyncjobs: `submit` runs in the API session and
# returns list(t0, t1, ids); then the host's own count says when the jobs have
# run, and the store when the last completed. Store calls are counted in both
# processes from before the first submit to after the last completion.
asyncjobs_batch <- function(p, submit, args) {
  base <- jobs_done(p$host)
  calls0 <- Reduce(add_named, lapply(p$sessions, store_calls))
  r <- p$api$run(submit, args)
  ok <- r$ids[!is.na(r$ids)]
  wait_jobs_done(p$host, base + length(ok))
  calls1 <- Reduce(add_named, lapply(p$sessions, store_calls))
  last <- p$api$run(function(ids) {
    l <- asyncjobs::list_jobs(operation = "noop")
    l <- l[l$job_id %in% ids, ]
    list(last = max(as.numeric(l$completed_at), na.rm = TRUE), completed = sum(l$status == "completed"))
  }, list(ok))
  list(jobs = length(ok), refused = length(r$ids) - length(ok), completed = last$completed,
       seconds = last$last - r$t0, submit_seconds = r$t1 - r$t0,
       jobs_per_s = last$completed / (last$last - r$t0), calls = sub_named(calls1, calls0))
}

submit_single <- function(n, b) {
  t0 <- as.numeric(Sys.time())
  ids <- vapply(seq_len(n), function(i) {
    id <- asyncjobs::create_job("noop", list(b = b, i = i))$job_id
    if (is.character(id)) id else NA_character_
  }, "")
  list(t0 = t0, t1 = as.numeric(Sys.time()), ids = ids)
}

# Bulk submit, once asyncjobs has it: create_jobs(operation, params_list)
# returns one record per job, in order.
submit_bulk <- function(n, b) {
  params <- lapply(seq_len(n), function(i) list(b = b, i = i))
  t0 <- as.numeric(Sys.time())
  recs <- asyncjobs::create_jobs("noop", params)
  t1 <- as.numeric(Sys.time())
  ids <- if (is.data.frame(recs)) recs$job_id else vapply(recs, function(r) if (is.character(r$job_id)) r$job_id else NA_character_, "")
  list(t0 = t0, t1 = t1, ids = ids)
}

has_bulk <- function() "create_jobs" %in% getNamespaceExports("asyncjobs")

# The processes of one phase: a worker host, and an API (the host itself for
# the memory store), warmed up with 20 jobs.
aj_open <- function(system, url) {
  p <- list(host = new_session(url, WORKERS))
  p$api <- if (system == "memory") p$host else tryCatch(new_session(url, 0L), error = function(e) { close_session(p$host); stop(e) })
  p$sessions <- if (system == "memory") list(p$host) else list(p$api, p$host)
  p$api$run(function() for (i in 1:20) asyncjobs::wait_for_job(asyncjobs::create_job("noop", list(i = i))$job_id, 10000))
  p
}

aj_close <- function(p) {
  if (!identical(p$api, p$host)) close_session(p$api)
  close_session(p$host)
}

# Each phase starts its processes and stops them, so that the database's
# counters can be read with no connection open. A batch phase: start, warm
# up, 2 s idle (the host's poll backs off), the batch, stop; the same phase
# without the batch is what the batch's counts are taken against.
trial_asyncjobs <- function(system, rep) {
  sqlite_file <- tempfile("peers-", fileext = ".db")
  on.exit(unlink(paste0(sqlite_file, c("", "-wal", "-shm"))))
  url <- switch(system, memory = "memory", sqlite = paste0("sqlite://", sqlite_file), postgres = PG_URL, mariadb = MYSQL_URL)
  out <- list()
  phase <- function(f) {
    p <- aj_open(system, url)
    on.exit(aj_close(p))
    f(p)
  }

  out <- phase(function(p) {
    if (system %in% c("postgres", "mariadb")) {
      n <- clean_store(p$api)
      if (n) say("%s: cancelled %d jobs an earlier run left", system, n)
    }
    out <- list()
    # A submit on the API's thread, one every GAP_SUBMIT; the workers run them meanwhile.
    out$submit_ms <- p$api$run(function(n, gap) {
      ms <- numeric(n)
      for (i in seq_len(n)) {
        Sys.sleep(gap)
        t0 <- as.numeric(Sys.time())
        id <- asyncjobs::create_job("noop", list(i = i))$job_id
        ms[[i]] <- if (is.character(id)) 1000 * (as.numeric(Sys.time()) - t0) else NA_real_
      }
      ms
    }, list(N_SUBMIT, GAP_SUBMIT))
    # Round trips in the process that runs the workers: create_job() to
    # wait_for_job() returning the completed job.
    round_trips <- function(n, gap) {
      vapply(seq_len(n), function(i) {
        Sys.sleep(gap)
        t0 <- as.numeric(Sys.time())
        s <- asyncjobs::wait_for_job(asyncjobs::create_job("noop", list(i = i))$job_id, 10000)
        if (identical(s$status, "completed")) 1000 * (as.numeric(Sys.time()) - t0) else NA_real_
      }, 0)
    }
    out$rt_ms <- p$host$run(round_trips, list(N_RT, GAP_RT))
    if (system != "memory") {
      # The same, waited for by the API, which runs no jobs.
      out$rt_remote_ms <- p$api$run(round_trips, list(N_RT_REMOTE, GAP_RT))
      # Pickup: submitted by the API, started by a worker of the host; the
      # job's own clock at start minus the submit's.
      out$pickup_ms <- p$api$run(function(n, gap) {
        vapply(seq_len(n), function(i) {
          Sys.sleep(runif(1, gap[[1]], gap[[2]]))
          t0 <- as.numeric(Sys.time())
          s <- asyncjobs::wait_for_job(asyncjobs::create_job("stamp", list(k = i))$job_id, 10000)
          if (identical(s$status, "completed")) 1000 * (as.numeric(s$result) - t0) else NA_real_
        }, 0)
      }, list(N_PICKUP, GAP_PICKUP))
    }
    out
  })
  if (COUNT) out$idle <- counted(system, function() phase(function(p) { Sys.sleep(2); list() }))
  batch <- function(submit, b) {
    counted(system, function() phase(function(p) {
      Sys.sleep(2)
      asyncjobs_batch(p, submit, list(N_JOBS, b)) # its jobs are removed by the next trial
    }))
  }
  out$single <- batch(submit_single, sprintf("s%d", rep))
  if (has_bulk()) out$bulk <- batch(submit_bulk, sprintf("b%d", rep))
  out
}

trial_graphile <- function(rep, node_dir) {
  phase <- function(f) {
    api <- runner <- NULL
    on.exit({
      if (!is.null(api)) api$stop()
      if (!is.null(runner)) runner$stop()
    })
    api <- node_peer("api", node_dir) # first: it migrates graphile-worker's schema
    runner <- node_peer("runner", node_dir)
    w <- sprintf("w%d-%d", rep, sample.int(1e6, 1))
    api$call("single", n = 20, b = w) # warm up
    runner$call("await", b = w, n = 20, timeout_ms = 30000)
    f(api, runner)
  }
  out <- phase(function(api, runner) {
    out <- list(version = api$call("ping")$version)
    n <- api$call("purge")$removed
    if (n) say("graphile: removed %d jobs an earlier run left", n)
    out$submit_ms <- api$call("submit", n = N_SUBMIT, gap_ms = 1000 * GAP_SUBMIT)$ms
    out$rt_ms <- runner$call("roundtrip", n = N_RT, gap_ms = 1000 * GAP_RT)$ms
    t0 <- vapply(seq_len(N_PICKUP), function(k) {
      Sys.sleep(runif(1, GAP_PICKUP[[1]], GAP_PICKUP[[2]]))
      api$call("add", task = "stamp", payload = list(k = k))$t0
    }, 0)
    Sys.sleep(0.5)
    started <- unlist(runner$call("stamps")$started)
    out$pickup_ms <- unname(started[as.character(seq_len(N_PICKUP))] - t0)
    out
  })
  if (COUNT) out$idle <- counted("graphile", function() phase(function(api, runner) { Sys.sleep(2); list() }))
  batch <- function(cmd, b) {
    counted("graphile", function() phase(function(api, runner) {
      Sys.sleep(2)
      s <- api$call(cmd, n = N_JOBS, b = b)
      a <- runner$call("await", b = b, n = N_JOBS, timeout_ms = 300000)
      if (a$done < N_JOBS || a$failed > 0) stop(sprintf("graphile-worker ran %d of %d jobs (%d failed)", a$done, N_JOBS, a$failed))
      list(jobs = N_JOBS, refused = 0, completed = a$done - a$failed, seconds = (a$last - s$t0) / 1000,
           submit_seconds = (s$t1 - s$t0) / 1000, jobs_per_s = (a$done - a$failed) / ((a$last - s$t0) / 1000))
    }))
  }
  out$single <- batch("single", sprintf("s%d", rep))
  out$bulk <- batch("bulk", sprintf("b%d", rep))
  out
}

# --- The run --------------------------------------------------------------

info <- list(load_start = loadavg(), started = Sys.time())
skip <- list()
node_dir <- NULL
if ("graphile" %in% SYSTEMS) {
  node_dir <- tryCatch(ensure_graphile(), error = function(e) { skip$graphile <<- conditionMessage(e); NULL })
}
if (any(c("postgres", "graphile") %in% SYSTEMS)) {
  info$pg <- tryCatch(ensure_pg(), error = function(e) {
    for (s in intersect(c("postgres", "graphile"), SYSTEMS)) skip[[s]] <<- conditionMessage(e)
    NULL
  })
}
if ("mariadb" %in% SYSTEMS) {
  info$mysql <- tryCatch(ensure_mysql(), error = function(e) { skip$mariadb <<- conditionMessage(e); NULL })
}
RUN <- setdiff(SYSTEMS, names(skip))

results <- setNames(lapply(RUN, function(s) vector("list", REPS)), RUN)
for (rep in seq_len(REPS)) {
  order <- RUN[(seq_along(RUN) + rep - 2) %% length(RUN) + 1]
  for (system in order) {
    say("run %d of %d: %s", rep, REPS, system)
    load0 <- loadavg()[[1]]
    r <- tryCatch(
      if (system == "graphile") trial_graphile(rep, node_dir) else trial_asyncjobs(system, rep),
      error = function(e) list(error = conditionMessage(e)))
    if (!is.null(r$error)) say("%s failed: %s", system, r$error)
    r$load <- c(load0, loadavg()[[1]])
    results[[system]][[rep]] <- r
  }
}
info$load_end <- loadavg()
# The jobs of the last runs' batches, removed.
for (system in intersect(c("postgres", "mariadb"), RUN)) {
  try({
    s <- new_session(if (system == "postgres") PG_URL else MYSQL_URL, 0L)
    clean_store(s)
    close_session(s)
  })
}
info$finished <- Sys.time()

# --- The tables -----------------------------------------------------------

ok_runs <- function(system) Filter(function(r) is.null(r$error), results[[system]])
p50 <- function(x) if (length(x) && any(!is.na(x))) median(x, na.rm = TRUE) else NA_real_
# Per run: the figure; the median of the runs is the table's.
figures <- list(
  submit = list("submit p50", function(r) p50(r$submit_ms), "ms"),
  rt = list("round trip p50", function(r) p50(r$rt_ms), "ms"),
  rt_remote = list("round trip p50, waited for by the API process", function(r) p50(r$rt_remote_ms), "ms"),
  pickup = list("pickup from another process p50", function(r) p50(r$pickup_ms), "ms"),
  single = list("throughput, single submits", function(r) r$single$jobs_per_s %||% NA_real_, "jobs/s"),
  bulk = list("throughput, bulk submit", function(r) r$bulk$jobs_per_s %||% NA_real_, "jobs/s"))
per_run <- lapply(figures, function(f) lapply(setNames(RUN, RUN), function(s) vapply(ok_runs(s), f[[2]], 0)))
fmt <- function(x, unit) {
  if (is.na(x)) return(NA_character_)
  if (unit == "ms") return(sprintf(if (x < 10) "%.2f ms" else if (x < 100) "%.1f ms" else "%.0f ms", x))
  paste(formatC(x, format = "f", digits = 0, big.mark = ","), unit)
}
why_empty <- function(key, system) {
  if (key == "bulk" && system != "graphile") return("none")
  if (key %in% c("pickup", "rt_remote") && system == "memory") return("n/a (one process)")
  if (key == "rt_remote" && system == "graphile") return("n/a (no call to wait for a job)")
  "n/a"
}
cell <- function(key, system) {
  v <- per_run[[key]][[system]]
  if (!length(v) || all(is.na(v))) return(why_empty(key, system))
  fmt(median(v, na.rm = TRUE), figures[[key]][[3]])
}

u <- Sys.info()
cat(sprintf("Machine: %s, %d cores, %s; load average %.2f / %.2f / %.2f at the start, %.2f / %.2f / %.2f at the end; %s to %s.\n\n",
            R.version$arch, parallel::detectCores(), u[["release"]], info$load_start[1], info$load_start[2], info$load_start[3],
            info$load_end[1], info$load_end[2], info$load_end[3], format(info$started, "%Y-%m-%d %H:%M"), format(info$finished, "%H:%M %Z")))
git <- suppressWarnings(tryCatch(system2("git", c("-C", shQuote(dirname(here)), "describe", "--always", "--dirty"), stdout = TRUE, stderr = FALSE), error = function(e) NA))
gw_version <- unique(unlist(lapply(ok_runs("graphile"), `[[`, "version")))
cat(sprintf("asyncjobs %s (%s), %s; graphile-worker %s on node %s; PostgreSQL %s; MariaDB %s; SQLite: a temporary file.\n\n",
            as.character(packageVersion("asyncjobs")), if (length(git)) git[[1]] else "?", R.version.string,
            if (length(gw_version)) paste(gw_version, collapse = ", ") else GW_VERSION,
            sub("^v", "", tryCatch(system2("node", "--version", stdout = TRUE), error = function(e) "?")),
            info$pg %||% "n/a", info$mysql %||% "n/a"))
cat(sprintf("%d workers everywhere; %d interleaved runs; per run: %d submits, %d round trips (%d waited for by the API), %d pickups %g-%g s apart, batches of %d no-op jobs.\n\n",
            WORKERS, REPS, N_SUBMIT, N_RT, N_RT_REMOTE, N_PICKUP, GAP_PICKUP[[1]], GAP_PICKUP[[2]], N_JOBS))
for (s in names(skip)) cat(sprintf("Skipped %s: %s\n\n", LABELS[[s]], skip[[s]]))
for (s in RUN) for (i in seq_along(results[[s]])) {
  e <- results[[s]][[i]]$error
  if (!is.null(e)) cat(sprintf("%s, run %d failed: %s\n\n", LABELS[[s]], i, e))
}

cat(sprintf("| figure (median of %d runs) | %s |\n|---|%s\n", REPS, paste(LABELS[RUN], collapse = " | "), strrep("---|", length(RUN))))
for (key in names(figures)) {
  cat(sprintf("| %s | %s |\n", figures[[key]][[1]], paste(vapply(RUN, function(s) cell(key, s), ""), collapse = " | ")))
}

cat("\nEach run's figure (runs in their order), and the 1-minute load average at the start of each run:\n\n")
cat(sprintf("| figure | %s |\n|---|%s\n", paste(LABELS[RUN], collapse = " | "), strrep("---|", length(RUN))))
for (key in names(figures)) {
  cells <- vapply(RUN, function(s) {
    v <- per_run[[key]][[s]]
    if (!length(v) || all(is.na(v))) return(why_empty(key, s))
    paste(vapply(v, function(x) sub(" [a-z/]+$", "", fmt(x, figures[[key]][[3]])), ""), collapse = " / ")
  }, "")
  cat(sprintf("| %s (%s) | %s |\n", figures[[key]][[1]], figures[[key]][[3]], paste(cells, collapse = " | ")))
}
cat(sprintf("| load average at the start | %s |\n", paste(vapply(RUN, function(s) {
  paste(vapply(results[[s]], function(r) sprintf("%.1f", r$load[[1]] %||% NA), ""), collapse = " / ")
}, ""), collapse = " | ")))

# Against graphile-worker in the same run: > 1 means asyncjobs is that much better.
if ("graphile" %in% RUN && length(ok_runs("graphile"))) {
  others <- setdiff(RUN, "graphile")
  cat(sprintf("\n| against graphile-worker (same run) | %s |\n|---|%s\n", paste(LABELS[others], collapse = " | "), strrep("---|", length(others))))
  for (key in setdiff(names(figures), "rt_remote")) {
    g <- median(per_run[[key]]$graphile, na.rm = TRUE)
    cells <- vapply(others, function(s) {
      v <- median(per_run[[key]][[s]], na.rm = TRUE)
      if (is.na(v) || is.na(g)) return(if (key == "bulk") "none" else "n/a")
      better <- if (figures[[key]][[3]] == "ms") g / v else v / g
      words <- if (figures[[key]][[3]] == "ms") c("faster", "slower") else c("higher", "lower")
      if (better >= 1) sprintf("%.2fx (%s)", better, words[[1]]) else sprintf("%.2fx (%.1fx %s)", better, 1 / better, words[[2]])
    }, "")
    cat(sprintf("| %s | %s |\n", figures[[key]][[1]], paste(cells, collapse = " | ")))
  }
}

# Transactions per job.
WRITES <- c("submit", "claim", "report", "finish", "cancel", "lease renewal", "rescue", "release", "cleanup",
            "schedule firing", "host registration", "host deregistration")
if (COUNT) {
  tx_systems <- intersect(c("postgres", "graphile", "mariadb", "sqlite"), RUN)
  # Per job of a batch: f(batch) / jobs. For the database's counters, the
  # batch's phase minus the same phase without the batch.
  calls_per_job <- function(f) function(r, batch) f(r[[batch]]$calls) / r[[batch]]$jobs
  db_per_job <- function(key) function(r, batch) {
    if (is.null(r$idle$db) || is.null(r[[batch]]$db)) return(NA_real_)
    (count_of(r[[batch]]$db, key) - count_of(r$idle$db, key)) / r[[batch]]$jobs
  }
  values <- function(system, batch, f) {
    vapply(ok_runs(system), function(r) if (is.null(r[[batch]])) NA_real_ else f(r, batch), 0)
  }
  for (batch in c("single", "bulk")) {
    has <- vapply(tx_systems, function(s) any(vapply(ok_runs(s), function(r) !is.null(r[[batch]]), TRUE)), TRUE)
    if (!any(has)) next
    cols <- tx_systems[has]
    cat(sprintf("\nPer job, a batch of %s no-op jobs %s (median of the runs, and their range):\n\n",
                formatC(N_JOBS, big.mark = ","), if (batch == "single") "submitted one by one" else "submitted in one call"))
    cat(sprintf("| per job | %s |\n|---|%s\n", paste(LABELS[cols], collapse = " | "), strrep("---|", length(cols))))
    row <- function(label, f, applies) {
      cells <- vapply(cols, function(s) {
        if (!applies(s)) return("n/a")
        v <- values(s, batch, f)
        v <- v[!is.na(v)]
        if (!length(v)) return("n/a")
        sprintf("%.2f%s", median(v), if (length(v) > 1) sprintf(" (%.2f-%.2f)", min(v), max(v)) else "")
      }, "")
      cat(sprintf("| %s | %s |\n", label, paste(cells, collapse = " | ")))
    }
    is_aj <- function(s) s != "graphile"
    ops <- unique(unlist(lapply(cols, function(s) unlist(lapply(ok_runs(s), function(r) names(r[[batch]]$calls))))))
    # The operations with at least 0.005 calls per job somewhere, writes first.
    ops <- ops[vapply(ops, function(op) any(vapply(cols, function(s) {
      isTRUE(median(values(s, batch, calls_per_job(function(x) count_of(x, op))), na.rm = TRUE) >= 0.005)
    }, TRUE)), TRUE)]
    ops <- c(intersect(WRITES, ops), sort(setdiff(ops, WRITES)))
    row("asyncjobs store calls for writes (`asyncjobs_store_calls_total`, API + host)",
        calls_per_job(function(x) sum(vapply(WRITES, function(op) count_of(x, op), 0))), is_aj)
    note <- c(claim = " (a read; then a transaction when it finds work)", finish = " (the outcome, then the dependants)",
              history = " (a read, for `estimated_seconds`: counted per submit, a query at most every 10 s)")
    for (op in ops) {
      row(sprintf("&nbsp;&nbsp;%s%s", op, if (op %in% names(note)) note[[op]] else if (op %in% WRITES) "" else " (a read)"),
          calls_per_job(function(x) count_of(x, op)), is_aj)
    }
    is_pg <- function(s) s %in% c("postgres", "graphile")
    row("PostgreSQL: transactions that wrote (transaction ids assigned; whole server)", db_per_job("xids"), is_pg)
    row("PostgreSQL: `xact_commit`, every transaction of the benchmark's database", db_per_job("xact_commit"), is_pg)
    row("PostgreSQL: rows inserted, updated or deleted", db_per_job("rows_written"), is_pg)
    row("MariaDB: `Com_commit` (whole server)", db_per_job("Com_commit"), function(s) s == "mariadb")
    row("MariaDB: `Handler_commit` (whole server)", db_per_job("Handler_commit"), function(s) s == "mariadb")
    row("MariaDB: rows written, `Handler_write` + `_update` + `_delete` (whole server)", db_per_job("rows_written"), function(s) s == "mariadb")
  }
  cat("\nThe database's counters are read with none of the benchmark's connections open (a PostgreSQL backend",
      "reports its counts when it exits, or at the end of a transaction a second after its last report), around a",
      "phase that starts the processes, warms up with 20 jobs, idles 2 s, runs the batch and stops; the same phase",
      "without the batch is subtracted. That phase alone:\n\n")
  cat(sprintf("| that phase without the batch, per run | %s |\n|---|%s\n", paste(LABELS[tx_systems], collapse = " | "), strrep("---|", length(tx_systems))))
  idle_row <- function(label, key, applies) {
    cat(sprintf("| %s | %s |\n", label, paste(vapply(tx_systems, function(s) {
      if (!applies(s)) return("n/a")
      paste(vapply(ok_runs(s), function(r) format(count_of(r$idle$db, key)), ""), collapse = " / ")
    }, ""), collapse = " | ")))
  }
  idle_row("PostgreSQL: transactions that wrote (whole server)", "xids", function(s) s %in% c("postgres", "graphile"))
  idle_row("PostgreSQL: `xact_commit`", "xact_commit", function(s) s %in% c("postgres", "graphile"))
  idle_row("MariaDB: `Com_commit` (whole server)", "Com_commit", function(s) s == "mariadb")
  idle_row("MariaDB: `Handler_commit` (whole server)", "Handler_commit", function(s) s == "mariadb")
}
