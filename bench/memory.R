# Does an API's memory reach a plateau? Runs N trivial jobs with default
# options (jobs_env on), reads each one's status, and calls
# cleanup_old_jobs(0) every ROUND jobs; prints the process RSS after each
# cleanup. BENCH_MODE=registry (default) cancels each job instead of running
# it (no worker runs anything, so it is fast); BENCH_MODE=workers runs them.
# Usage: R_LIBS=<lib> Rscript bench/memory.R   (BENCH_JOBS, BENCH_ROUND, BENCH_MODE;
# BENCH_EVERY: print every that many rounds, default 10)
suppressPackageStartupMessages(library(asyncjobs))
N <- as.numeric(Sys.getenv("BENCH_JOBS", "1000000"))
ROUND <- as.numeric(Sys.getenv("BENCH_ROUND", "10000"))
MODE <- Sys.getenv("BENCH_MODE", "registry")
EVERY <- as.numeric(Sys.getenv("BENCH_EVERY", "10"))
rss_mb <- function() as.numeric(strsplit(readLines("/proc/self/statm"), " ")[[1]][[2]]) * 4096 / 2^20
nothing <- function(p) NULL

if (MODE == "workers") {
  start_workers(2, max_queued = ROUND, wait = TRUE, nice = 0L)
} else {
  start_workers(1, queues = "nobody", max_queued = ROUND, wait = TRUE)
}
cat(sprintf("%s: %s jobs, cleanup every %s, mode %s\n", R.version.string, format(N, big.mark = ",", scientific = FALSE),
            format(ROUND, big.mark = ","), MODE))
cat("| jobs run | RSS (MB) | R heap (MB) | jobs_env entries |\n|---|---|---|---|\n")
t0 <- Sys.time()
rows <- list()
for (r in seq_len(ceiling(N / ROUND))) {
  ids <- vapply(seq_len(ROUND), function(i) create_job("mem", i, nothing)$job_id, "")
  if (MODE == "workers") {
    for (id in ids) wait_for_job(id)
  } else {
    for (id in ids) cancel_job(id)
  }
  for (id in ids) get_job_status(id)
  # The contract's reads, on one job per round (each name R sees becomes a
  # symbol for good: a caller that names every job pays that itself).
  stopifnot(exists(ids[[1]], envir = jobs_env), !is.null(jobs_env[[ids[[1]]]]$status))
  suppressMessages(cleanup_old_jobs(0))
  heap <- sum(gc()[, 2])
  rows[[r]] <- c(jobs = r * ROUND, rss = rss_mb(), heap = heap, env = length(ls(jobs_env)))
  if (r == 1 || r %% EVERY == 0) {
    cat(sprintf("| %s | %.1f | %.1f | %d |\n", format(r * ROUND, big.mark = ",", scientific = FALSE), rss_mb(), heap,
                length(ls(jobs_env))))
  }
}
m <- do.call(rbind, rows)
half <- m[m[, "jobs"] >= max(m[, "jobs"]) / 2, , drop = FALSE]
slope <- if (nrow(half) > 1) coef(lm(rss ~ jobs, data = as.data.frame(half)))[["jobs"]] * 2^20 else NA
cat(sprintf("\nRSS after the first round %.1f MB, at the end %.1f MB, max %.1f MB; over the second half %.2f bytes per job; %.0f s\n",
            m[1, "rss"], m[nrow(m), "rss"], max(m[, "rss"]), slope, as.numeric(Sys.time() - t0, units = "secs")))
stop_workers()
