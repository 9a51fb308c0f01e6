# The registry at scale: cost of get_job_status(), check_duplicate_job() and
# create_job() with 1k, 10k and 100k finished jobs retained, cleanup_old_jobs()
# on 100k, and memory per retained job, with and without jobs_env bindings.
# Usage: R_LIBS=target/Rlib Rscript bench/registry.R (after bash tools/setup.sh).
suppressPackageStartupMessages(library(asyncjobs))
options(asyncjobs.warn_payload_bytes = Inf)
LEVELS <- as.integer(strsplit(Sys.getenv("BENCH_LEVELS", "1000,10000,100000"), ",")[[1]])
REPS <- as.integer(Sys.getenv("BENCH_REPS", "5"))
now <- function() as.numeric(Sys.time())
nothing <- function(p) NULL
per_call <- function(n, f) {
  v <- replicate(REPS, { t0 <- now(); for (i in seq_len(n)) f(i); 1e6 * (now() - t0) / n })
  sprintf("%.1f us (IQR %.1f-%.1f)", median(v), quantile(v, .25), quantile(v, .75))
}
run_jobs <- function(n, op = "fill") {
  message(sprintf("%s: %d jobs", format(Sys.time(), "%T"), n))
  ids <- vapply(seq_len(n), function(i) create_job(op, i, nothing)$job_id, "")
  for (id in ids) wait_for_job(id)
  ids
}

start_workers(8, max_queued = 1e6, wait = TRUE)
invisible(run_jobs(200))
invisible(suppressMessages(cleanup_old_jobs(0)))
rows <- list()
ids <- character()
for (level in LEVELS) {
  ids <- c(ids, run_jobs(level - length(ids)))
  probe <- sample(ids, 1000, replace = TRUE)
  rows[[length(rows) + 1L]] <- data.frame(
    retained = length(ids),
    get_job_status = per_call(1000, function(i) get_job_status(probe[[i]])),
    check_duplicate_job = per_call(1000, function(i) check_duplicate_job("fill", -i)),
    create_job = per_call(1000, function(i) create_job("probe", i, nothing)),
    create_job_unbound = local({
      old <- options(asyncjobs.jobs_env = FALSE)
      on.exit(options(old))
      per_call(1000, function(i) create_job("probe", -i, nothing))
    }),
    stringsAsFactors = FALSE)
  for (id in list_jobs(status = c("pending", "running"))$job_id) wait_for_job(id)
}
n_total <- nrow(list_jobs())
t0 <- now()
removed <- suppressMessages(cleanup_old_jobs(0))
cleanup_s <- now() - t0
stop_workers()

# Memory: a fresh process per mode; RSS and R heap before and after retaining n jobs.
# The executor is a global function, as the README recommends, unless
# `captured`: then it is defined here, and its environment goes with every job.
memory <- function(n, bind, captured = FALSE) {
  library(asyncjobs)
  options(asyncjobs.warn_payload_bytes = Inf, asyncjobs.jobs_env = bind)
  rss <- function() as.numeric(strsplit(readLines("/proc/self/statm"), " ")[[1]][[2]]) * 4096
  heap <- function() sum(gc(full = TRUE)[, 2]) * 1024^2
  start_workers(8, max_queued = 1e6, wait = TRUE)
  f <- function(p) NULL
  if (!captured) environment(f) <- globalenv()
  for (id in vapply(1:200, function(i) create_job("warm", i, f)$job_id, "")) wait_for_job(id)
  # RSS is read twice: as it is (with whatever garbage of the loop R's
  # collector has not reclaimed yet), and after a full collection, which is
  # what the process keeps.
  r0 <- rss(); h0 <- heap(); g0 <- rss()
  # In batches, so that the queue's high-water mark is not counted as retained.
  ids <- unlist(lapply(split(seq_len(n), ceiling(seq_len(n) / 500)), function(batch) {
    ids <- vapply(batch, function(i) create_job("fill", i, f)$job_id, "")
    for (id in ids) wait_for_job(id)
    ids
  }), use.names = FALSE)
  # The ids vector (and its strings) is the benchmark's, not the registry's:
  # jobs_env holds no R object per job.
  own <- as.numeric(object.size(ids))
  r1 <- rss()
  out <- c(rss = (r1 - r0 - own) / n, heap = (heap() - h0 - own) / n, rss_gc = (rss() - g0 - own) / n)
  stop_workers()
  out
}
N_MEM <- max(LEVELS)
mem_on <- callr::r(memory, list(N_MEM, TRUE))
mem_off <- callr::r(memory, list(N_MEM, FALSE))
mem_captured <- callr::r(memory, list(N_MEM, TRUE, TRUE))
result_bytes <- length(serialize(list(value = NULL, warnings = character()), NULL, xdr = FALSE))

cat(sprintf("Machine: %s, %d cores, %s, %s\n\n", R.version$arch, parallel::detectCores(), R.version.string, format(Sys.Date())))
cat("| finished jobs retained | get_job_status() | check_duplicate_job() | create_job() | create_job(), no jobs_env binding |\n|---|---|---|---|---|\n")
for (r in rows) cat(sprintf("| %s | %s | %s | %s | %s |\n", format(r$retained, big.mark = ","), r$get_job_status,
                            r$check_duplicate_job, r$create_job, r$create_job_unbound))
cat(sprintf("\ncleanup_old_jobs() removing %s of %s jobs: %.0f ms\n", format(removed, big.mark = ","),
            format(n_total, big.mark = ","), 1000 * cleanup_s))
cat(sprintf("\n| memory per retained job (%s jobs, result %d bytes) | process RSS after R's full gc | process RSS as read (with the loop's uncollected R garbage) | of which R heap |\n|---|---|---|---|\n",
            format(N_MEM, big.mark = ","), result_bytes))
for (m in list(list("with jobs_env bindings (default)", mem_on), list("options(asyncjobs.jobs_env = FALSE)", mem_off),
               list("default, executor defined in a function (its environment goes with every job)", mem_captured))) {
  cat(sprintf("| %s | %.0f bytes | %.0f bytes | %.0f bytes |\n", m[[1]], m[[2]][["rss_gc"]], m[[2]][["rss"]], m[[2]][["heap"]]))
}
