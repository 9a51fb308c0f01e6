# The job stores side by side, in one run: memory (the default), SQLite (a
# temporary file), PostgreSQL and MariaDB/MySQL. For each: submit latency,
# status reads, cancel, claim throughput, pickup latency (submit to start)
# with the submit in this process and in another one (a replica), and the
# resident memory of the API process and of its workers. Each store runs in a
# fresh R process (callr), so that memory figures do not carry over.
# Usage: R_LIBS=target/Rlib Rscript bench/store.R (after bash tools/setup.sh).
# BENCH_PG_URL and BENCH_MYSQL_URL name the databases; an engine that cannot
# be reached is skipped with the reason. The benchmark's jobs go to queues of
# their own; cleanup_old_jobs(0) removes every finished job in the store.
# BENCH_SUBMITS, BENCH_JOBS, BENCH_PICKUPS, BENCH_REMOTE and BENCH_REPS set the
# sample sizes; the defaults take about 2.5 minutes.
suppressPackageStartupMessages(library(asyncjobs))
N_SUBMIT <- as.integer(Sys.getenv("BENCH_SUBMITS", "300"))
N_JOBS <- as.integer(Sys.getenv("BENCH_JOBS", "200"))
N_PICKUP <- as.integer(Sys.getenv("BENCH_PICKUPS", "30"))
N_REMOTE <- as.integer(Sys.getenv("BENCH_REMOTE", "10"))
REPS <- as.integer(Sys.getenv("BENCH_REPS", "3"))
sqlite_file <- tempfile("asyncjobs-bench-", fileext = ".db")
STORES <- c(
  memory = "memory",
  sqlite = paste0("sqlite://", sqlite_file),
  postgres = Sys.getenv("BENCH_PG_URL", "postgres://postgres@127.0.0.1:5432/test"),
  mariadb = Sys.getenv("BENCH_MYSQL_URL", "mysql://root@127.0.0.1:3306/test"))

# Runs in a fresh R process per store; returns raw samples, or list(skip = reason).
bench_store <- function(url, n_submit, n_jobs, n_pickup, n_remote, reps) {
  suppressPackageStartupMessages(library(asyncjobs))
  options(asyncjobs.warn_payload_bytes = Inf)
  now <- function() as.numeric(Sys.time())
  rss_mb <- function(pid = "self") {
    line <- grep("^VmRSS:", tryCatch(readLines(sprintf("/proc/%s/status", pid)), error = function(e) ""), value = TRUE)
    if (!length(line)) return(NA_real_)
    as.numeric(strsplit(trimws(sub("^VmRSS:", "", line)), " +")[[1]][[1]]) / 1024
  }
  workers_rss <- function() vapply(get_worker_status()$pid, rss_mb, 0)
  timed <- function(n, f) vapply(seq_len(n), function(i) { t0 <- now(); f(i); 1e6 * (now() - t0) }, 0)
  # Executors without this frame as their environment: a few hundred bytes per job.
  trivial <- function(p) p
  stamp <- function(p) as.numeric(Sys.time())
  environment(trivial) <- globalenv()
  environment(stamp) <- globalenv()
  # NA when the job is gone (another process may clean the shared store).
  stamp_of <- function(s) if (is.numeric(s$result)) s$result else NA_real_
  # A refused submit (say STORE_UNAVAILABLE while the machine is busy) is
  # counted and reported, not fatal: its id is NA.
  refused <- character()
  submit <- function(op, i, f, queue) {
    r <- create_job(op, i, f, queue = queue)
    if (is.character(r$job_id)) return(r$job_id)
    refused <<- c(refused, paste0(r$error, ": ", r$message))
    NA_character_
  }
  ok_ids <- function(ids) ids[!is.na(ids)]
  q <- sprintf("bench-%d", Sys.getpid())
  idle_q <- paste0(q, "-nobody")
  out <- list(rss_api_before = rss_mb(), executor_bytes = length(serialize(trivial, NULL)))

  # Four workers serving this benchmark's queue: status of a completed job,
  # pickup, throughput, RSS. First, so that the API's RSS is not that of a
  # heap grown by the submits below.
  ok <- tryCatch({ start_workers(4, store = url, max_active = Inf, queues = q, wait = TRUE); TRUE },
                 error = function(e) conditionMessage(e))
  if (!isTRUE(ok)) return(list(skip = ok))
  for (id in vapply(1:20, function(i) submit("warm", i, trivial, q), "")) if (!is.na(id)) wait_for_job(id)
  Sys.sleep(0.5)
  out$rss_api_idle <- rss_mb()
  out$rss_workers_idle <- workers_rss()
  done <- submit("done", 1, trivial, q)
  if (!is.na(done)) {
    invisible(wait_for_job(done))
    out$status_done <- timed(n_submit, function(i) get_job_status(done))
  }
  # Pickup, one job at a time with idle workers: submit here, the job's own clock at start.
  pick <- function(i) {
    Sys.sleep(0.02)
    t0 <- now()
    id <- submit("pickup", i, stamp, q)
    if (is.na(id)) return(c(pickup = NA, finished = NA, round_trip = NA))
    s <- wait_for_job(id, 10000)
    done_at <- if (inherits(s$completed_at, "POSIXct")) as.numeric(s$completed_at) else NA_real_
    c(pickup = 1e3 * (stamp_of(s) - t0), finished = 1e3 * (done_at - t0), round_trip = 1e3 * (now() - t0))
  }
  pk <- vapply(seq_len(n_pickup), pick, c(pickup = 0, finished = 0, round_trip = 0))
  out$pickup <- pk["pickup", ]
  out$finished <- pk["finished", ]
  out$round_trip <- pk["round_trip", ]
  out$throughput <- vapply(seq_len(reps), function(r) {
    t0 <- now()
    ids <- ok_ids(vapply(seq_len(n_jobs), function(i) submit("tp", i, trivial, q), ""))
    for (id in ids) wait_for_job(id, 30000)
    length(ids) / (now() - t0)
  }, 0)
  out$rss_api_busy <- rss_mb()
  out$rss_workers_busy <- workers_rss()

  # Pickup when another process (a replica with no workers) submits: this
  # pool only sees the job when it polls the store (or, on PostgreSQL, when
  # a NOTIFY wakes it). Idle: 2.6-3.6 s between jobs, random so that submits
  # do not lock to the phase of the poll, which has backed off to 1 s by then;
  # busy: one job right after the other.
  if (!identical(url, "memory") && n_remote > 0) {
    replica <- callr::r_bg(function(url, q, n, gap) {
      suppressPackageStartupMessages(library(asyncjobs))
      options(asyncjobs.warn_payload_bytes = Inf)
      now <- function() as.numeric(Sys.time())
      stamp_of <- function(s) if (is.numeric(s$result)) s$result else NA_real_
      stamp <- function(p) as.numeric(Sys.time())
      environment(stamp) <- globalenv()
      start_workers(0, store = url, max_active = Inf)
      one <- function(i) {
        t0 <- now()
        id <- create_job("remote", i, stamp, queue = q)$job_id
        if (!is.character(id)) return(NA_real_)
        s <- wait_for_job(id, 10000)
        1e3 * (stamp_of(s) - t0)
      }
      idle <- vapply(seq_len(n), function(i) { Sys.sleep(gap + runif(1)); one(i) }, 0)
      busy <- vapply(seq_len(n), one, 0)
      stop_workers()
      list(idle = idle, busy = busy)
    }, list(url, q, n_remote, 2.6))
    replica$wait(120000)
    r <- tryCatch(replica$get_result(), error = function(e) NULL)
    if (replica$is_alive()) replica$kill()
    out$remote_idle <- r$idle
    out$remote_busy <- r$busy
  }
  invisible(suppressMessages(cleanup_old_jobs(0)))
  stop_workers()

  # A replica that runs nothing: submits to a queue no worker serves, status
  # of a pending job (with 320 pending), cancel.
  start_workers(0, store = url, max_active = Inf)
  invisible(lapply(1:20, function(i) submit("warm", i, trivial, idle_q)))
  ids <- character(n_submit)
  out$submit <- timed(n_submit, function(i) ids[[i]] <<- submit("submit", i, trivial, idle_q))
  ids <- ok_ids(ids)
  out$status_pending <- timed(length(ids), function(i) get_job_status(ids[[i]]))
  out$cancel <- timed(length(ids), function(i) cancel_job(ids[[i]]))
  warm <- list_jobs(status = "pending", operation = "warm")
  for (j in warm$job_id[warm$queue == idle_q]) cancel_job(j)
  invisible(suppressMessages(cleanup_old_jobs(0)))
  stop_workers()
  # The same with a cap on active jobs: the count and the insert become atomic (a lock).
  start_workers(0, store = url, max_active = 1e6)
  ids <- character(n_submit)
  out$submit_cap <- timed(n_submit, function(i) ids[[i]] <<- submit("submit", i, trivial, idle_q))
  for (id in ok_ids(ids)) cancel_job(id)
  invisible(suppressMessages(cleanup_old_jobs(0)))
  stop_workers()
  # PostgreSQL only: the same submits with commits that do not wait for the
  # WAL's fsync, to see what share of a submit the fsync is.
  if (grepl("^postgres(ql)?://[^?]*$", url)) {
    start_workers(0, store = paste0(url, "?options=-c%20synchronous_commit%3Doff"), max_active = Inf)
    ids <- character(n_submit)
    out$submit_nosync <- timed(n_submit, function(i) ids[[i]] <<- submit("submit", i, trivial, idle_q))
    for (id in ok_ids(ids)) cancel_job(id)
    invisible(suppressMessages(cleanup_old_jobs(0)))
    stop_workers()
  }
  out$refused <- refused
  out
}

results <- list()
for (name in names(STORES)) {
  message(sprintf("%s: %s", format(Sys.time(), "%T"), name))
  results[[name]] <- tryCatch(
    callr::r(bench_store, list(STORES[[name]], N_SUBMIT, N_JOBS, N_PICKUP, N_REMOTE, REPS), libpath = .libPaths()),
    error = function(e) list(skip = conditionMessage(e)))
}
unlink(paste0(sqlite_file, c("", "-wal", "-shm")))

ran <- Filter(function(r) is.null(r$skip), results)
pq <- function(x, digits = 0) {
  x <- x[!is.na(x)]
  if (!length(x)) return("n/a")
  f <- paste0("%.", digits, "f")
  sprintf(paste0("p50 ", f, " / p99 ", f), quantile(x, .5), quantile(x, .99))
}
med <- function(x, fmt) sprintf(fmt, median(x))
rows <- list(
  list("submit a trivial job, no cap (us)", function(r) pq(r$submit)),
  list("submit a trivial job, with a cap (max_active = 1e6) (us)", function(r) pq(r$submit_cap)),
  list("submit, no cap, PostgreSQL with synchronous_commit = off (us)",
       function(r) if (is.null(r$submit_nosync)) "n/a" else pq(r$submit_nosync)),
  list("get_job_status(), pending job (us)", function(r) pq(r$status_pending)),
  list("get_job_status(), completed job (us)", function(r) pq(r$status_done)),
  list("cancel_job(), pending job (us)", function(r) pq(r$cancel)),
  list(sprintf("throughput, %d trivial jobs, 4 workers (jobs/s, median of %d)", N_JOBS, REPS),
       function(r) med(r$throughput, "%.0f")),
  list("pickup, submitted here: submit to start (ms)", function(r) pq(r$pickup, 2)),
  list("submit to completed_at in the store, submitted here (ms)", function(r) pq(r$finished, 2)),
  list("round trip, submitted here: create_job() to wait_for_job() returning (ms)", function(r) pq(r$round_trip, 2)),
  list("pickup, submitted by a replica, workers idle 2.6-3.6 s (ms)", function(r) if (is.null(r$remote_idle)) "n/a (one process)" else pq(r$remote_idle)),
  list("pickup, submitted by a replica, back to back (ms)", function(r) if (is.null(r$remote_busy)) "n/a (one process)" else pq(r$remote_busy)),
  list("API process RSS: library loaded / 4 workers, idle / after the runs (MB)",
       function(r) sprintf("%.0f / %.0f / %.0f", r$rss_api_before, r$rss_api_idle, r$rss_api_busy)),
  list("worker RSS, mean of 4: idle / after the runs (MB)",
       function(r) sprintf("%.1f / %.1f", mean(r$rss_workers_idle), mean(r$rss_workers_busy))))

cat(sprintf("Machine: %s, %d cores, %s, %s\n\n", R.version$arch, parallel::detectCores(), R.version.string, format(Sys.Date())))
cat(sprintf("Trivial job: executor %d bytes serialized; %d submits, %d jobs x %d runs, %d pickups, %d + %d replica pickups per store\n\n",
            if (length(ran)) ran[[1]]$executor_bytes else NA_integer_, N_SUBMIT, N_JOBS, REPS, N_PICKUP, N_REMOTE, N_REMOTE))
for (name in names(results)) if (!is.null(results[[name]]$skip)) cat(sprintf("Skipped %s: %s\n\n", name, results[[name]]$skip))
for (name in names(ran)) if (length(ran[[name]]$refused)) {
  cat(sprintf("%s: %d submits refused (not in the figures): %s\n\n", name, length(ran[[name]]$refused),
              paste(unique(ran[[name]]$refused), collapse = "; ")))
}
cat("| metric | ", paste(names(ran), collapse = " | "), " |\n|---|", strrep("---|", length(ran)), "\n", sep = "")
for (row in rows) cat("| ", row[[1]], " | ", paste(vapply(ran, row[[2]], ""), collapse = " | "), " |\n", sep = "")

# Against the memory store measured in the same run: > 1 means the durable store costs that much more.
if (!is.null(ran$memory) && length(ran) > 1) {
  m <- ran$memory
  p50 <- function(x) median(x, na.rm = TRUE)
  ratios <- list(
    list("submit, no cap, p50", function(r) p50(r$submit) / p50(m$submit), c("slower", "faster")),
    list("submit, with a cap, p50", function(r) p50(r$submit_cap) / p50(m$submit_cap), c("slower", "faster")),
    list("status, pending, p50", function(r) p50(r$status_pending) / p50(m$status_pending), c("slower", "faster")),
    list("status, completed, p50", function(r) p50(r$status_done) / p50(m$status_done), c("slower", "faster")),
    list("cancel, p50", function(r) p50(r$cancel) / p50(m$cancel), c("slower", "faster")),
    list("throughput", function(r) p50(m$throughput) / p50(r$throughput), c("lower", "higher")),
    list("pickup, submitted here, p50", function(r) p50(r$pickup) / p50(m$pickup), c("slower", "faster")),
    list("round trip, submitted here, p50", function(r) p50(r$round_trip) / p50(m$round_trip), c("slower", "faster")),
    list("API RSS after the runs", function(r) r$rss_api_busy / m$rss_api_busy, c("larger", "smaller")))
  # A ratio below 1 is shown inverted, with the opposite word.
  ratio <- function(x, words) if (is.na(x)) "n/a" else if (x >= 1) sprintf("%.1fx %s", x, words[[1]]) else sprintf("%.1fx %s", 1 / x, words[[2]])
  others <- setdiff(names(ran), "memory")
  cat("\n| against memory (same run) | ", paste(others, collapse = " | "), " |\n|---|", strrep("---|", length(others)), "\n", sep = "")
  for (x in ratios) {
    cat("| ", x[[1]], " | ", paste(vapply(ran[others], function(r) ratio(x[[2]](r), x[[3]]), ""),
                                   collapse = " | "), " |\n", sep = "")
  }
}
