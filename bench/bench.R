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

## asyncjobs against mirai ---------------------------------------------------
# mirai and nanonext are not in Debian: tools/build-peers.sh builds them into
# $ASYNCJOBS_PEERS_LIB (default ~/.cache/asyncjobs/peers). Every figure is a median over
# REPS repetitions; in each repetition every setup runs once, in turn, on a fresh
# pool of 8 (asyncjobs at nice 10, the default, and at nice 0; mirai with its
# dispatcher, the default of daemons(), and without), so drifts in the machine's
# load fall on all of them. BENCH_ONLY=mirai stops the script after this table.
big_len <- function(p) length(p$x)
big <- list(x = runif(10 * 1024^2 / 8)) # 10 MB of doubles
peers_lib <- Sys.getenv("ASYNCJOBS_PEERS_LIB", file.path(Sys.getenv("XDG_CACHE_HOME", path.expand("~/.cache")), "asyncjobs", "peers"))
mirai_ok <- dir.exists(file.path(peers_lib, "mirai")) &&
  requireNamespace("mirai", lib.loc = c(peers_lib, .libPaths()), quietly = TRUE)
if (!mirai_ok) {
  cat(sprintf("asyncjobs vs mirai: skipped, mirai is not installed in %s (ASYNCJOBS_PEERS_LIB); build it with bash tools/build-peers.sh\n\n", peers_lib))
} else {
  .libPaths(c(.libPaths(), peers_lib))
  # mirai's daemons are new Rscript processes: they find mirai through R_LIBS.
  Sys.setenv(R_LIBS = paste(c(Sys.getenv("R_LIBS"), peers_lib)[nzchar(c(Sys.getenv("R_LIBS"), peers_lib))], collapse = ":"))
  N_RT <- as.integer(Sys.getenv("BENCH_RT", "500"))
  N_SUBMIT <- 1000L
  connected <- function() { # waits for the 8 daemons to dial in
    t0 <- now()
    while (mirai::status()$connections < 8L) { if (now() - t0 > 60) stop("mirai: 8 daemons did not connect in 60 s"); Sys.sleep(0.05) }
  }
  # One setup: how to start 8 workers, submit, wait, stop.
  setups <- list(
    `asyncjobs (nice 10)` = list(
      start = function() start_workers(8, max_queued = 1e6, wait = TRUE),
      submit = function(i) create_job("m", i, trivial)$job_id,
      submit_big = function() create_job("m", big, big_len)$job_id,
      wait = function(h) wait_for_job(h)$result,
      stop = function() stop_workers()),
    `asyncjobs (nice 0)` = list(
      start = function() start_workers(8, max_queued = 1e6, wait = TRUE, nice = 0),
      submit = function(i) create_job("m", i, trivial)$job_id,
      submit_big = function() create_job("m", big, big_len)$job_id,
      wait = function(h) wait_for_job(h)$result,
      stop = function() stop_workers()),
    `mirai (dispatcher)` = list(
      start = function() { mirai::daemons(8, dispatcher = TRUE); connected() },
      submit = function(i) mirai::mirai(p, p = i),
      submit_big = function() mirai::mirai(length(p$x), p = big),
      wait = function(h) h[],
      stop = function() mirai::daemons(0)),
    `mirai (no dispatcher)` = list(
      start = function() { mirai::daemons(8, dispatcher = FALSE); connected() },
      submit = function(i) mirai::mirai(p, p = i),
      submit_big = function() mirai::mirai(length(p$x), p = big),
      wait = function(h) h[],
      stop = function() mirai::daemons(0)))
  one_rep <- function(s) {
    s$start()
    for (i in 1:200) s$wait(s$submit(i)) # warm up every worker
    rt <- vapply(seq_len(N_RT), function(i) { t0 <- now(); s$wait(s$submit(i)); us(now() - t0) }, 0)
    t0 <- now(); hs <- lapply(seq_len(N_SUBMIT), s$submit); sub <- us((now() - t0) / N_SUBMIT)
    for (h in hs) s$wait(h)
    t0 <- now(); hs <- lapply(seq_len(N_THROUGHPUT), s$submit)
    for (h in hs) s$wait(h)
    tp <- N_THROUGHPUT / (now() - t0)
    big_rt <- vapply(1:5, function(i) { t0 <- now(); h <- s$submit_big(); t1 <- now(); s$wait(h); 1000 * c(now() - t0, t1 - t0) }, c(0, 0))
    s$stop()
    c(rt = median(rt), submit = sub, tp = tp, big = median(big_rt[1, ]), big_sub = median(big_rt[2, ]))
  }

  # The floor: two R processes and two pipes (FIFOs). The parent serializes a
  # value and writes it with its length; the child reads it, unserializes it and
  # sends back the value (or a 10 MB payload's length) the same way. Native
  # byte order (xdr = FALSE), as asyncjobs and nanonext do. No job
  # manager, no scheduling: what any R-to-R transport must pay at least.
  floor_rep <- function() {
    d <- tempfile("floor"); dir.create(d)
    to <- file.path(d, "to"); from <- file.path(d, "from")
    system2("mkfifo", c(to, from))
    child <- sprintf(paste0(
      "i <- file('%s', 'rb', raw = TRUE); o <- file('%s', 'wb', raw = TRUE); writeBin(Sys.getpid(), o); flush(o); ",
      "repeat { n <- readBin(i, 'integer'); if (!length(n)) break; x <- unserialize(readBin(i, 'raw', n)); ",
      "b <- serialize(if (is.list(x)) length(x$x) else x, NULL, xdr = FALSE); writeBin(length(b), o); writeBin(b, o); flush(o) }"), to, from)
    system2(file.path(R.home("bin"), "Rscript"), c("--vanilla", "-e", shQuote(child)), wait = FALSE, stdout = FALSE)
    o <- file(to, "wb", raw = TRUE); i <- file(from, "rb", raw = TRUE)
    pid <- readBin(i, "integer")
    rt1 <- function(x) {
      b <- serialize(x, NULL, xdr = FALSE); writeBin(length(b), o); writeBin(b, o); flush(o)
      unserialize(readBin(i, "raw", readBin(i, "integer")))
    }
    for (k in 1:200) stopifnot(rt1(k) == k)
    rt <- vapply(seq_len(N_RT), function(k) { t0 <- now(); rt1(k); us(now() - t0) }, 0)
    big_rt <- vapply(1:5, function(k) { t0 <- now(); stopifnot(rt1(big) == length(big$x)); 1000 * (now() - t0) }, 0)
    close(o); close(i) # the child reads end-of-file and quits
    tools::pskill(pid); unlink(d, recursive = TRUE)
    c(rt = median(rt), submit = NA, tp = NA, big = median(big_rt), big_sub = NA)
  }

  loadavg <- function() tryCatch(scan("/proc/loadavg", n = 1L, quiet = TRUE), error = function(e) NA)
  load0 <- loadavg()
  res <- list()
  for (r in seq_len(REPS)) {
    for (nm in names(setups)) res[[nm]] <- cbind(res[[nm]], one_rep(setups[[nm]]))
    res[["floor"]] <- cbind(res[["floor"]], floor_rep())
  }
  med <- function(nm, k) median(res[[nm]][k, ])
  cell <- function(nm, k, fmt) {
    x <- res[[nm]][k, ]
    if (all(is.na(x))) "n/a" else sprintf(paste0(fmt, " (IQR ", fmt, "-", fmt, ")"), median(x), quantile(x, .25), quantile(x, .75))
  }
  verdict <- function(a, m, higher_better) {
    q <- a / m; better <- if (higher_better) q > 1 else q < 1
    sprintf("%.2f (asyncjobs %.1fx %s)", q, if (q >= 1) q else 1 / q,
            if (better) (if (higher_better) "higher" else "less") else (if (higher_better) "lower" else "more"))
  }
  metrics <- list(
    list("rt", "round trip of a trivial job, one at a time, p50 (us)", "%.0f", FALSE),
    list("submit", sprintf("submit on the API thread, per call, %d calls (us)", N_SUBMIT), "%.1f", FALSE),
    list("tp", sprintf("throughput, %d trivial jobs, 8 workers (jobs/s)", N_THROUGHPUT), "%.0f", TRUE),
    list("big", "10 MB params round trip, job returns its length (ms)", "%.1f", FALSE),
    list("big_sub", "  of which the submit call (create_job(), mirai()) (ms)", "%.1f", FALSE))
  cat(sprintf("## asyncjobs vs mirai\n\nmirai %s, nanonext %s, asyncjobs %s; medians (IQR) over %d repetitions; round trips: the p50 of %d in each repetition, 10 MB: of 5.\n\n",
              packageVersion("mirai"), packageVersion("nanonext"), packageVersion("asyncjobs"), REPS, N_RT))
  cat("| metric |", paste(c(names(setups), "floor: R to R over a pipe"), collapse = " | "),
      "| asyncjobs/mirai, nice 10 | asyncjobs/mirai, nice 0 |\n")
  cat("|", paste(rep("---", length(setups) + 4L), collapse = " | "), "|\n")
  for (m in metrics) {
    k <- m[[1]]
    cells <- vapply(c(names(setups), "floor"), cell, "", k = k, fmt = m[[3]])
    ratios <- vapply(c("asyncjobs (nice 10)", "asyncjobs (nice 0)"), function(a)
      verdict(med(a, k), med("mirai (dispatcher)", k), m[[4]]), "")
    cat("|", paste(c(m[[2]], cells, ratios), collapse = " | "), "|\n")
  }
  cat(sprintf("\nRatios are against mirai with its dispatcher (the default of `daemons()`). 1-minute load average: %.1f before, %.1f after (%d cores).\n\n",
              load0, loadavg(), parallel::detectCores()))
  if (identical(Sys.getenv("BENCH_ONLY"), "mirai")) quit(save = "no")
}

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
p10 <- replicate(REPS, { t0 <- now(); wait_for_job(create_job("big", big, big_len)$job_id); 1000 * (now() - t0) })
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
