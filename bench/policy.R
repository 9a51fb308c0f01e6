# What limits, uniqueness and the event log cost, on every store in one run,
# each against asyncjobs without them in the same run:
# - the submit of a registered job (JSON params), plain and with labels
#   (submitted_by, tags), a per-caller rate limit, or a unique key with a
#   window (the last two take the submit lock on a database);
# - jobs per second through 4 workers, plain and with a queue cap of 4 and
#   concurrency keys (claims then take the claim lock and count what runs).
# Usage: R_LIBS=target/Rlib Rscript bench/policy.R (after bash tools/setup.sh).
# BENCH_PG_URL and BENCH_MYSQL_URL name databases this run may empty (an
# engine that cannot be reached is skipped, with the reason); BENCH_SUBMITS
# (default 400) and BENCH_REPS (5) set the submit samples, BENCH_JOBS (400)
# the jobs of each throughput round.
suppressPackageStartupMessages(library(asyncjobs))
N <- as.integer(Sys.getenv("BENCH_SUBMITS", "400"))
REPS <- as.integer(Sys.getenv("BENCH_REPS", "5"))
JOBS <- as.integer(Sys.getenv("BENCH_JOBS", "400"))
STORES <- c(
  memory = "memory",
  sqlite = paste0("sqlite://", tempfile("asyncjobs-bench-", fileext = ".db")),
  postgres = Sys.getenv("BENCH_PG_URL", "postgres://postgres@127.0.0.1:5432/bench_policy"),
  mariadb = Sys.getenv("BENCH_MYSQL_URL", "mysql://root@127.0.0.1:3306/bench_policy"))

# In a fresh R process per store, so that nothing carries over.
bench_one <- function(url, n, reps, jobs) {
  suppressPackageStartupMessages(library(asyncjobs))
  options(asyncjobs.warn_payload_bytes = Inf)
  register_job("bench_echo", function(p) p$i)
  q <- "bench"
  ok <- tryCatch({
    start_workers(1, store = url, queues = c(q, "capped"), max_active = Inf, wait = TRUE,
                  rate_limits = list(submitted_by = c(n = 1e9, window = 60)))
    TRUE
  }, error = function(e) conditionMessage(e))
  if (!isTRUE(ok)) return(list(skip = ok))
  suppressMessages(cleanup_old_jobs(0))
  # The pool serves the queues (so the job type is known) but takes nothing:
  # the submits alone are timed.
  .Call(asyncjobs:::wrap__aj_drain)
  now <- function() as.numeric(Sys.time())
  params <- function(i) list(gene = sprintf("GENE%d", i), i = i)
  submit <- list(
    plain = function(i) create_job("bench_echo", params(i), queue = q),
    labels = function(i) create_job("bench_echo", params(i), queue = q, submitted_by = "ann", tags = c("a", "b")),
    rate = function(i) create_job("bench_echo", params(i), queue = q, submitted_by = sprintf("caller-%d", i %% 50)),
    unique = function(i) create_job("bench_echo", params(i), queue = q, unique_key = sprintf("k-%d-%f", i, now()),
                                    unique_for = 3600))
  for (f in submit) for (i in 1:20) f(i) # warm up
  us <- lapply(submit, function(f) numeric())
  for (r in seq_len(reps)) {
    for (kind in names(submit)) { # interleaved, so drifts fall on all
      f <- submit[[kind]]
      t <- vapply(seq_len(n / reps), function(i) { t0 <- now(); f(i); 1e6 * (now() - t0) }, 0)
      us[[kind]] <- c(us[[kind]], t)
    }
  }
  for (id in list_jobs(status = "pending")$job_id) cancel_job(id)
  suppressMessages(cleanup_old_jobs(0))
  stop_workers()
  # Throughput: `jobs` trivial jobs through 4 workers, from submit to the last one done.
  start_workers(4, store = url, queues = c(q, "capped"), wait = TRUE, max_active = list(capped = 4))
  through <- function(queue, keyed) {
    t0 <- now()
    ids <- vapply(seq_len(jobs), function(i) {
      create_job("bench_echo", list(i = i), queue = queue,
                 concurrency_key = if (keyed) sprintf("user:%d", i %% 10), concurrency_limit = 2L)$job_id
    }, "")
    for (id in ids) wait_for_job(id, 120000)
    jobs / (now() - t0)
  }
  through(q, FALSE) # warm up
  rate <- list(plain = numeric(), limited = numeric())
  for (r in 1:3) {
    rate$plain <- c(rate$plain, through(q, FALSE))
    rate$limited <- c(rate$limited, through("capped", TRUE))
  }
  suppressMessages(cleanup_old_jobs(0))
  stop_workers()
  list(us = us, rate = rate)
}

run <- lapply(STORES, function(url) {
  tryCatch(callr::r(bench_one, list(url, N, REPS, JOBS), show = FALSE),
           error = function(e) list(skip = conditionMessage(e)))
})

cat("\n## Submit with labels, a rate limit or a unique key, against a plain submit\n\n")
cat(sprintf("%d submits of each, in %d interleaved rounds, on one R process; the jobs stay pending. p50 (ratio to plain).\n\n",
            N, REPS))
cat("| store | plain | labels | rate limit | unique key, window |\n|---|---|---|---|---|\n")
for (s in names(run)) {
  r <- run[[s]]
  if (!is.null(r$skip)) { cat(sprintf("| %s | skipped: %s ||||\n", s, r$skip)); next }
  med <- vapply(r$us, stats::median, 0)
  cell <- function(k) sprintf("%.0f us (%.2f)", med[[k]], med[[k]] / med[["plain"]])
  cat(sprintf("| %s | %.0f us | %s | %s | %s |\n", s, med[["plain"]], cell("labels"), cell("rate"), cell("unique")))
}
cat(sprintf("\n## Jobs per second through 4 workers: plain, and under a queue cap of 4 with 10 concurrency keys (limit 2)\n\n"))
cat(sprintf("%d trivial jobs per round, submitted then awaited; median of 3 interleaved rounds.\n\n", JOBS))
cat("| store | plain | cap and keys | ratio |\n|---|---|---|---|\n")
for (s in names(run)) {
  r <- run[[s]]
  if (!is.null(r$skip)) next
  p <- stats::median(r$rate$plain)
  l <- stats::median(r$rate$limited)
  cat(sprintf("| %s | %.0f | %.0f | %.2f |\n", s, p, l, l / p))
}
