# The job model's costs, on every store in one run: the submit of a job of a
# registered type (JSON params) against the submit of a closure job, and
# the store calls an idle host makes with no schedule and with 100 of them.
# Usage: R_LIBS=target/Rlib Rscript bench/model.R (after bash tools/setup.sh).
# BENCH_PG_URL and BENCH_MYSQL_URL name the databases (an engine that cannot
# be reached is skipped, with the reason); BENCH_SUBMITS (default 400) and
# BENCH_REPS (5) set the submit samples, BENCH_IDLE_SECONDS (30) each idle
# window. Jobs go to a queue of this run's own, where nothing runs them.
suppressPackageStartupMessages(library(asyncjobs))
N <- as.integer(Sys.getenv("BENCH_SUBMITS", "400"))
REPS <- as.integer(Sys.getenv("BENCH_REPS", "5"))
IDLE <- as.numeric(Sys.getenv("BENCH_IDLE_SECONDS", "30"))
STORES <- c(
  memory = "memory",
  sqlite = paste0("sqlite://", tempfile("asyncjobs-bench-", fileext = ".db")),
  postgres = Sys.getenv("BENCH_PG_URL", "postgres://postgres@127.0.0.1:5432/test"),
  mariadb = Sys.getenv("BENCH_MYSQL_URL", "mysql://root@127.0.0.1:3306/test"))

# In a fresh R process per store, so that nothing carries over.
bench_one <- function(url, n, reps, idle) {
  suppressPackageStartupMessages(library(asyncjobs))
  Sys.setenv(ASYNCJOBS_KEY = "bench key")
  options(asyncjobs.warn_payload_bytes = Inf)
  q <- sprintf("bench-model-%d", Sys.getpid())
  register_job("bench_echo", function(p) p)
  trivial <- function(p) p
  environment(trivial) <- globalenv()
  ok <- tryCatch({ start_workers(1, store = url, queues = q, max_active = Inf, wait = TRUE); TRUE },
                 error = function(e) conditionMessage(e))
  if (!isTRUE(ok)) return(list(skip = ok))
  # The pool serves the queue (so the job type is known) but takes nothing:
  # every job submitted stays pending, and the timings are the submits alone.
  .Call(asyncjobs:::wrap__aj_drain)
  now <- function() as.numeric(Sys.time())
  params <- function(i) list(gene = sprintf("GENE%d", i), n = i, weights = c(0.5, 0.25, 0.25))
  submit <- list(
    closure = function(i) create_job("bench_closure", params(i), trivial, queue = q),
    handler = function(i) create_job("bench_echo", params(i), queue = q))
  for (f in submit) for (i in 1:20) f(i) # warm up
  us <- list(closure = numeric(), handler = numeric())
  for (r in seq_len(reps)) {
    for (kind in names(submit)) { # interleaved, so drifts fall on both
      f <- submit[[kind]]
      t <- vapply(seq_len(n / reps), function(i) { t0 <- now(); f(i); 1e6 * (now() - t0) }, 0)
      us[[kind]] <- c(us[[kind]], t)
    }
  }
  for (id in list_jobs(status = "pending")$job_id) cancel_job(id)
  suppressMessages(cleanup_old_jobs(0))
  # An idle host as it runs: a fresh pool, polling for work, renewing, rescuing.
  stop_workers()
  start_workers(1, store = url, queues = q, wait = TRUE)
  calls <- function() {
    m <- get_metrics()
    m <- m[m$metric == "asyncjobs_store_calls_total" & m$operation != "counts", ] # counts: get_metrics() itself
    stats::setNames(m$value, m$operation)
  }
  idle_calls <- function() {
    before <- calls()
    Sys.sleep(idle)
    after <- calls()
    keys <- union(names(before), names(after))
    d <- vapply(keys, function(k) (if (is.na(after[k])) 0 else after[[k]]) - (if (is.na(before[k])) 0 else before[[k]]), 0)
    d[d > 0] / idle
  }
  base <- if (url != "memory") idle_calls()
  if (url != "memory") for (i in 1:100) schedule_job(sprintf("bench-%d-%03d", Sys.getpid(), i), "0 0 1 1 *", "bench_echo", list(i = i))
  with <- if (url != "memory") idle_calls()
  if (url != "memory") for (i in 1:100) unschedule_job(sprintf("bench-%d-%03d", Sys.getpid(), i))
  stop_workers()
  list(us = us, base = base, with = with)
}

run <- lapply(STORES, function(url) {
  tryCatch(callr::r(bench_one, list(url, N, REPS, IDLE), show = FALSE),
           error = function(e) list(skip = conditionMessage(e)))
})

cat("\n## Submit: a job of a registered type (JSON params) against a closure job\n\n")
cat(sprintf("%d submits of each, in %d interleaved rounds, on one R process; the jobs stay pending.\n\n", N, REPS))
cat("| store | closure p50 | handler p50 | handler / closure | closure p90 | handler p90 |\n|---|---|---|---|---|---|\n")
for (s in names(run)) {
  r <- run[[s]]
  if (!is.null(r$skip)) { cat(sprintf("| %s | skipped: %s |||||\n", s, r$skip)); next }
  med <- vapply(r$us, stats::median, 0)
  p90 <- vapply(r$us, stats::quantile, 0, 0.9)
  cat(sprintf("| %s | %.0f us | %.0f us | %.2f | %.0f us | %.0f us |\n", s, med[["closure"]], med[["handler"]],
              med[["handler"]] / med[["closure"]], p90[["closure"]], p90[["handler"]]))
}
cat(sprintf("\n## Store calls of an idle host (one worker, nothing to run), per second, over %.0f s\n\n", IDLE))
cat("The schedules fire once a year: idle, the host reads them every 5 s, as it does with none.\n\n")
cat("| store | no schedule | 100 schedules | added by the schedules | by call, with 100 |\n|---|---|---|---|---|\n")
for (s in setdiff(names(run), "memory")) {
  r <- run[[s]]
  if (!is.null(r$skip)) next
  by <- paste(sprintf("%s %.2f", names(r$with), r$with), collapse = ", ")
  cat(sprintf("| %s | %.2f | %.2f | %.2f | %s |\n", s, sum(r$base), sum(r$with), sum(r$with) - sum(r$base), by))
}
