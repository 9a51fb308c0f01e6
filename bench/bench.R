# asyncjobs against its peers, in one run on one machine: 8 workers each where
# the peer has a pool. Usage: R_LIBS=target/Rlib Rscript bench/bench.R
# (after bash tools/setup.sh). Figures go to stdout as a markdown table.
suppressPackageStartupMessages({
  library(asyncjobs)
  library(parallel)
})
options(asyncjobs.warn_payload_bytes = Inf)
REPS <- as.integer(Sys.getenv("BENCH_REPS", "5"))
N_THROUGHPUT <- as.integer(Sys.getenv("BENCH_JOBS", "5000"))
now <- function() as.numeric(Sys.time())
us <- function(s) s * 1e6
summ <- function(x, unit) sprintf("%.1f %s (IQR %.1f-%.1f)", median(x), unit, quantile(x, .25), quantile(x, .75))
pct <- function(x) sprintf("p50 %.0f / p90 %.0f / p99 %.0f us", quantile(x, .5), quantile(x, .9), quantile(x, .99))
rows <- list()
add <- function(metric, peer, value) rows[[length(rows) + 1L]] <<- data.frame(metric = metric, peer = peer, value = value)
trivial <- function(p) p
sleeper <- function(p) { Sys.sleep(0.25); p }
# The same, reporting how long Sys.sleep itself took inside the job.
timed_sleeper <- function(p) { t0 <- proc.time()[[3L]]; Sys.sleep(0.25); proc.time()[[3L]] - t0 }

## asyncjobs ---------------------------------------------------------------
start_workers(8, max_queued = 1e6, wait = TRUE)
for (i in 1:200) wait_for_job(create_job("warm", i, trivial)$job_id)
submit <- replicate(REPS, {
  t0 <- now(); ids <- vapply(1:1000, function(i) create_job("t", i, trivial)$job_id, "")
  el <- (now() - t0) / 1000
  for (id in ids) wait_for_job(id)
  us(el)
})
add("submit one trivial job (main thread)", "asyncjobs", summ(submit, "us"))
id <- create_job("st", 1, trivial)$job_id
invisible(wait_for_job(id))
status <- replicate(REPS, { t0 <- now(); for (i in 1:2000) get_job_status(id); us((now() - t0) / 2000) })
add("get_job_status() of a finished job", "asyncjobs", summ(status, "us"))
rt <- vapply(1:1000, function(i) { t0 <- now(); wait_for_job(create_job("rt", i, trivial)$job_id); us(now() - t0) }, 0)
add("round trip, trivial job", "asyncjobs", pct(rt))
tp <- replicate(REPS, {
  t0 <- now(); ids <- vapply(seq_len(N_THROUGHPUT), function(i) create_job("tp", i, trivial)$job_id, "")
  for (id in ids) wait_for_job(id)
  N_THROUGHPUT / (now() - t0)
})
add(sprintf("throughput, %d trivial jobs", N_THROUGHPUT), "asyncjobs", summ(tp, "jobs/s"))
# Splits the overhead into Sys.sleep's own oversleeping inside the jobs and
# what asyncjobs adds per job (dispatch to the worker, result back).
sleeps <- function(label) {
  parts <- replicate(REPS, {
    t0 <- now(); ids <- vapply(1:64, function(i) create_job("sl", i, timed_sleeper)$job_id, "")
    st <- lapply(ids, wait_for_job)
    el <- now() - t0
    inner <- vapply(st, function(s) s$result, 0)
    c(total = 100 * (el / 2 - 1), oversleep = 1000 * (mean(inner) - 0.25),
      pool = 1000 * mean(vapply(st, function(s) s$duration_seconds, 0) - inner))
  })
  add("64 x Sys.sleep(0.25) on 8 workers, overhead over 2.0 s", label, summ(parts["total", ], "%"))
  add("  of which Sys.sleep oversleeping inside each job", label, summ(parts["oversleep", ], "ms"))
  add("  of which asyncjobs per job (dispatch, result)", label, summ(parts["pool", ], "ms"))
}
sleeps("asyncjobs")
big <- list(x = runif(10 * 1024^2 / 8))
p10 <- replicate(REPS, { t0 <- now(); wait_for_job(create_job("big", big, function(p) length(p$x))$job_id); 1000 * (now() - t0) })
add("10 MB params round trip", "asyncjobs", summ(p10, "ms"))
stop_workers()
# The default nice value (10) trades a little of this for the API's responsiveness.
start_workers(8, max_queued = 1e6, wait = TRUE, nice = 0)
sleeps("asyncjobs, nice = 0")
stop_workers()

## future multisession -----------------------------------------------------
if (requireNamespace("future", quietly = TRUE)) {
  future::plan(future::multisession, workers = 8)
  for (i in 1:50) future::value(future::future(i))
  sub8 <- replicate(REPS, median(vapply(1:25, function(r) {
    t0 <- now(); fs <- lapply(1:8, function(i) future::future(i)); el <- (now() - t0) / 8
    future::value(fs)
    us(el)
  }, 0)))
  add("submit one trivial job (main thread)", "future multisession", summ(sub8, "us"))
  f <- future::future(1); future::value(f)
  st <- replicate(REPS, { t0 <- now(); for (i in 1:2000) future::resolved(f); us((now() - t0) / 2000) })
  add("status of a finished job (future::resolved)", "future multisession", summ(st, "us"))
  rt <- vapply(1:200, function(i) { t0 <- now(); future::value(future::future(i)); us(now() - t0) }, 0)
  add("round trip, trivial job", "future multisession", pct(rt))
  n <- 500L
  tp <- replicate(REPS, { t0 <- now(); fs <- lapply(seq_len(n), function(i) future::future(i)); future::value(fs); n / (now() - t0) })
  add(sprintf("throughput, %d trivial jobs", n), "future multisession", summ(tp, "jobs/s"))
  sl <- replicate(REPS, { t0 <- now(); fs <- lapply(1:64, function(i) future::future({ Sys.sleep(0.25); i })); future::value(fs); 100 * ((now() - t0) / 2 - 1) })
  add("64 x Sys.sleep(0.25) on 8 workers, overhead over 2.0 s", "future multisession", summ(sl, "%"))
  p10 <- replicate(REPS, { t0 <- now(); future::value(future::future(length(big$x))); 1000 * (now() - t0) })
  add("10 MB params round trip", "future multisession", summ(p10, "ms"))
  future::plan(future::sequential)
}

## callr::r_bg: a process per job -------------------------------------------
if (requireNamespace("callr", quietly = TRUE)) {
  rt <- vapply(1:20, function(i) { t0 <- now(); p <- callr::r_bg(function(x) x, list(i)); p$wait(); p$get_result(); us(now() - t0) }, 0)
  add("round trip, trivial job", "callr::r_bg", pct(rt))
  sub1 <- replicate(REPS, { t0 <- now(); p <- callr::r_bg(function(x) x, list(1)); el <- now() - t0; p$wait(); us(el) })
  add("submit one trivial job (main thread)", "callr::r_bg", summ(sub1, "us"))
  p <- callr::r_bg(function() 1); p$wait()
  st <- replicate(REPS, { t0 <- now(); for (i in 1:2000) p$is_alive(); us((now() - t0) / 2000) })
  add("status of a finished job (process$is_alive)", "callr::r_bg", summ(st, "us"))
  run8 <- function(n, f) {
    t0 <- now(); todo <- seq_len(n); live <- list()
    while (length(todo) || length(live)) {
      while (length(live) < 8 && length(todo)) { live[[length(live) + 1L]] <- callr::r_bg(f, list(todo[[1]])); todo <- todo[-1] }
      done <- vapply(live, function(p) !p$is_alive(), TRUE)
      for (p in live[done]) p$get_result()
      live <- live[!done]
      Sys.sleep(0.001)
    }
    now() - t0
  }
  tp <- replicate(REPS, 64 / run8(64, function(x) x))
  add("throughput, 64 trivial jobs", "callr::r_bg", summ(tp, "jobs/s"))
  sl <- replicate(REPS, 100 * (run8(64, function(x) { Sys.sleep(0.25); x }) / 2 - 1))
  add("64 x Sys.sleep(0.25) on 8 workers, overhead over 2.0 s", "callr::r_bg", summ(sl, "%"))
}

## parallel::mcparallel: a fork per job --------------------------------------
rt <- vapply(1:500, function(i) { t0 <- now(); mccollect(mcparallel(i)); us(now() - t0) }, 0)
add("round trip, trivial job", "parallel::mcparallel", pct(rt))
sub1 <- replicate(REPS, median(vapply(1:200, function(i) { t0 <- now(); j <- mcparallel(i); el <- now() - t0; mccollect(j); us(el) }, 0)))
add("submit one trivial job (main thread)", "parallel::mcparallel", summ(sub1, "us"))
fork8 <- function(n, expr_fn) {
  t0 <- now(); todo <- seq_len(n); live <- list()
  while (length(todo) || length(live)) {
    while (length(live) < 8 && length(todo)) { live[[length(live) + 1L]] <- mcparallel(expr_fn(todo[[1]])); todo <- todo[-1] }
    res <- mccollect(live, wait = FALSE, timeout = 0.01)
    if (!is.null(res)) live <- Filter(function(j) !(as.character(j$pid) %in% names(res)), live)
  }
  now() - t0
}
tp <- replicate(REPS, 2000 / fork8(2000, function(i) i))
add("throughput, 2000 trivial jobs", "parallel::mcparallel", summ(tp, "jobs/s"))
sl <- replicate(REPS, 100 * (fork8(64, function(i) { Sys.sleep(0.25); i }) / 2 - 1))
add("64 x Sys.sleep(0.25) on 8 workers, overhead over 2.0 s", "parallel::mcparallel", summ(sl, "%"))

out <- do.call(rbind, rows)
cat(sprintf("Machine: %s, %d cores, R %s, %s\n\n", Sys.info()[["machine"]], parallel::detectCores(),
            getRversion(), format(Sys.time(), "%Y-%m-%d")))
cat("| metric | peer | median (IQR) over", REPS, "runs |\n|---|---|---|\n")
cat(sprintf("| %s | %s | %s |\n", out$metric, out$peer, out$value), sep = "")
