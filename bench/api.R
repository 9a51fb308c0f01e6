# Per-call cost of the API-side calls, in microseconds, at 1k, 10k and 100k
# retained finished jobs, and cleanup_old_jobs() on all of them.
# Usage: R_LIBS=<lib> Rscript bench/api.R  (BENCH_LEVELS, BENCH_REPS to change)
suppressPackageStartupMessages(library(asyncjobs))
options(asyncjobs.warn_payload_bytes = Inf)
LEVELS <- as.integer(strsplit(Sys.getenv("BENCH_LEVELS", "1000,10000,100000"), ",")[[1]])
REPS <- as.integer(Sys.getenv("BENCH_REPS", "5"))
now <- function() as.numeric(Sys.time())
# CPU seconds of this process: steadier than wall time on a shared machine.
cpu <- function() sum(proc.time()[c("user.self", "sys.self")])
nothing <- function(p) NULL
# Median (and spread) over REPS loops of n calls, in CPU time.
per_call <- function(n, f) {
  v <- replicate(REPS, { t0 <- cpu(); for (i in seq_len(n)) f(i); 1e6 * (cpu() - t0) / n })
  sprintf("%.1f (%.1f-%.1f)", median(v), min(v), max(v))
}
fill <- function(n) {
  ids <- character(n)
  for (b in split(seq_len(n), ceiling(seq_len(n) / 2000))) {
    ids[b] <- vapply(b, function(i) create_job("fill", i, nothing)$job_id, "")
    for (id in ids[b]) wait_for_job(id)
  }
  ids
}

start_workers(2, max_queued = 1e6, wait = TRUE, nice = 0L)
ids <- fill(200)
invisible(suppressMessages(cleanup_old_jobs(0)))
ids <- character()
cat(sprintf("%s, %d cores; CPU us per call, median (min-max) of %d loops\n\n", R.version.string,
            parallel::detectCores(), REPS))
cat("| retained | get_job_status (finished) | check_duplicate_job | create_job (pending, bound) | jobs_env[[id]]$status |\n|---|---|---|---|---|\n")
for (level in LEVELS) {
  ids <- c(ids, fill(level - length(ids)))
  probe <- sample(ids, 2000, replace = TRUE)
  st <- per_call(2000, function(i) get_job_status(probe[[i]]))
  dup <- per_call(2000, function(i) check_duplicate_job("fill", -i))
  env <- per_call(2000, function(i) jobs_env[[probe[[i]]]]$status)
  # Submits go to a queue no worker serves, then are cancelled.
  sub <- per_call(1000, function(i) create_job("probe", i, nothing, queue = "idle"))
  for (id in list_jobs(status = "pending")$job_id) cancel_job(id)
  cat(sprintf("| %s | %s | %s | %s | %s |\n", format(level, big.mark = ","), st, dup, sub, env))
}
n_total <- nrow(list_jobs())
t0 <- now(); c0 <- cpu()
removed <- suppressMessages(cleanup_old_jobs(0))
cat(sprintf("\ncleanup_old_jobs() removing %s of %s jobs: %.0f ms (CPU %.0f ms)\n", format(removed, big.mark = ","),
            format(n_total, big.mark = ","), 1000 * (now() - t0), 1000 * (cpu() - c0)))
stop_workers()
