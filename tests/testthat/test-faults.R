# Every job ends with a reason; the pool heals itself; nothing outlives it.

skip_on_cran() # slow and process-heavy: tools/test.sh and CI run it
test_that("a timeout kills the worker and the processes its job started, then frees the slot", {
  seen <- local_pool(1)
  first <- get_worker_status()$pid
  pidfile <- tempfile()
  job <- create_job("op", pidfile, function(p) {
    child <- system("sleep 300 >/dev/null 2>&1 & echo $!", intern = TRUE)
    writeLines(child, p)
    Sys.sleep(300)
  }, timeout_ms = 1500)
  st <- finish(job)
  expect_identical(st$status, "failed")
  expect_identical(st$error$code, "TIMEOUT")
  expect_match(st$error$message, "1500 ms")
  expect_all_dead(c(first, as.integer(readLines(pidfile))))
  # Capacity freed at once, and a fresh worker (setup re-run) takes the next job.
  expect_identical(finish(create_job("op", 1, function(p) Sys.getpid()))$status, "completed")
  ws <- get_worker_status()
  expect_false(ws$pid == first)
  expect_identical(ws$spawned, 2L)
  note_pids(seen)
})

test_that("cancel_job: pending leaves the queue, running loses its worker, others get lists", {
  seen <- local_pool(1, max_queued = 5)
  first <- get_worker_status()$pid
  running <- create_job("op", NULL, function(p) Sys.sleep(300))
  queued <- create_job("op", NULL, function(p) "never")
  expect_true(wait_until(function() get_job_status(running$job_id)$status == "running"))
  expect_identical(cancel_job(queued$job_id), list(job_id = queued$job_id, status = "cancelled"))
  expect_identical(cancel_job(running$job_id), list(job_id = running$job_id, status = "cancelled"))
  for (j in list(running, queued)) {
    st <- get_job_status(j$job_id)
    expect_identical(st$status, "cancelled")
    expect_identical(st$error$code, "CANCELLED")
  }
  expect_all_dead(first)
  expect_identical(cancel_job(running$job_id),
                   list(error = "JOB_FINISHED", message = "Job already cancelled", status = "cancelled"))
  expect_identical(cancel_job("2b8f0b9e-1111-4222-8333-444455556666"),
                   list(error = "JOB_NOT_FOUND", message = "Job ID not found"))
  expect_identical(finish(create_job("op", 5, function(p) p))$result, 5)
  note_pids(seen)
})

test_that("a worker that dies mid-job fails it with WORKER_CRASHED and is replaced", {
  seen <- local_pool(1)
  st <- finish(create_job("op", NULL, function(p) quit(save = "no", status = 3)))
  expect_identical(st$error$code, "WORKER_CRASHED")
  expect_match(st$error$message, "exited with status 3")
  note_pids(seen)
  st <- finish(create_job("op", NULL, function(p) tools::pskill(Sys.getpid(), tools::SIGKILL)))
  expect_identical(st$error$code, "WORKER_CRASHED")
  expect_match(st$error$message, "signal 9 \\(SIGKILL\\)")
  note_pids(seen)
  st <- finish(create_job("op", NULL, function(p) tools::pskill(Sys.getpid(), tools::SIGTERM)))
  expect_identical(st$error$code, "WORKER_CRASHED")
  expect_match(st$error$message, "signal 15 \\(SIGTERM\\)")
  note_pids(seen)
  expect_identical(finish(create_job("op", 1, function(p) p + 1))$result, 2)
  expect_true(wait_until(function() get_worker_status()$spawned == 4L))
  note_pids(seen)
})

test_that("an idle worker that dies is noticed and replaced", {
  seen <- local_pool(1)
  pid <- get_worker_status()$pid
  tools::pskill(pid, tools::SIGKILL)
  expect_true(wait_until(function() {
    ws <- get_worker_status()
    ws$state == "idle" && !identical(ws$pid, pid)
  }))
  expect_match(get_worker_status()$last_exit, "signal 9")
  expect_identical(finish(create_job("op", 1, identity))$result, 1)
  note_pids(seen)
})

test_that("setup that keeps failing stops the respawns and create_job says why", {
  local_pool(2, setup = quote(stop("no package called 'nonesuch'")))
  expect_true(wait_until(function() all(get_worker_status()$state == "failed")))
  ws <- get_worker_status()
  expect_match(ws$reason, "nonesuch")
  expect_true(all(ws$spawned == 5L))
  r <- create_job("op", 1, identity)
  expect_identical(r$error, "POOL_UNAVAILABLE")
  expect_match(r$message, "nonesuch")
})

test_that("jobs queued into a pool whose setup fails end as POOL_UNAVAILABLE", {
  start_workers(1, setup = quote(stop("broken setup")))
  withr::defer(stop_workers())
  job <- create_job("op", 1, identity)
  st <- finish(job)
  expect_identical(st$status, "failed")
  expect_identical(st$error$code, "POOL_UNAVAILABLE")
})

test_that("recycling: max_jobs_per_worker and max_worker_memory_mb replace workers between jobs", {
  seen <- local_pool(1, max_jobs_per_worker = 2)
  pids <- vapply(1:4, function(i) finish(create_job("op", i, function(p) Sys.getpid()))$result, 1L)
  expect_identical(length(unique(pids)), 2L)
  expect_identical(pids[1], pids[2])
  note_pids(seen)
  stop_workers()
  seen2 <- local_pool(1, max_worker_memory_mb = 1)
  pids <- vapply(1:3, function(i) finish(create_job("op", i, function(p) Sys.getpid()))$result, 1L)
  expect_identical(length(unique(pids)), 3L)
  note_pids(seen2)
  seen$pids <- c(seen$pids, pids)
})

test_that("globals a job creates do not leak into the next job; setup's stay", {
  local_pool(1, setup = quote(KEEP <- "from setup"))
  finish(create_job("op", NULL, function(p) { assign("LEAK", 1, envir = globalenv()); TRUE }))
  st <- finish(create_job("op", NULL, function(p) c(exists("LEAK", envir = globalenv()), exists("KEEP"))))
  expect_identical(st$result, c(FALSE, TRUE))
})

test_that("stop_workers fails unfinished jobs with SHUTDOWN, and the pool starts again", {
  start_workers(1, max_queued = 3, wait = TRUE)
  pids <- get_worker_status()$pid
  running <- create_job("op", NULL, function(p) Sys.sleep(300))
  queued <- create_job("op", NULL, function(p) 1)
  expect_true(wait_until(function() get_job_status(running$job_id)$status == "running"))
  expect_true(stop_workers())
  for (j in list(running, queued)) {
    st <- get_job_status(j$job_id)
    expect_identical(st$status, "failed")
    expect_identical(st$error$code, "SHUTDOWN")
  }
  expect_all_dead(pids)
  expect_identical(nrow(get_worker_status()), 0L)
  local_pool(1)
  expect_identical(finish(create_job("op", 3, identity))$result, 3)
})

test_that("no worker survives the R process: q(), SIGTERM, SIGKILL", {
  skip_if_not_installed("processx")
  script <- tempfile(fileext = ".R")
  writeLines(c(
    "library(asyncjobs)",
    "start_workers(2, wait = TRUE)",
    "cat(get_worker_status()$pid, sep = '\\n')",
    "j <- create_job('op', NULL, function(p) Sys.sleep(300))",
    "cat('ready\\n')",
    "if (identical(Sys.getenv('HOW'), 'quit')) { Sys.sleep(0.5); q(save = 'no') }",
    "Sys.sleep(300)"), script)
  for (how in c("quit", "SIGTERM", "SIGKILL")) {
    p <- processx::process$new(file.path(R.home("bin"), "Rscript"), script, stdout = "|",
                               env = c("current", HOW = how))
    lines <- character()
    expect_true(wait_until(function() {
      lines <<- c(lines, p$read_output_lines())
      "ready" %in% lines
    }), info = how)
    pids <- as.integer(setdiff(lines, "ready"))
    expect_length(pids, 2L)
    if (how == "SIGTERM") p$signal(tools::SIGTERM)
    if (how == "SIGKILL") p$kill()
    expect_true(wait_until(function() !p$is_alive()), info = how)
    expect_all_dead(pids)
  }
})

test_that("calls from a forked child get a clear error, not a hang", {
  skip_on_os("windows")
  local_pool(1)
  out <- parallel::mcparallel(tryCatch(get_job_status("x"), asyncjobs_error = function(e) class(e)))
  res <- parallel::mccollect(out, wait = TRUE, timeout = 30)[[1]]
  expect_true("asyncjobs_error_fork" %in% res)
})

test_that("hostile results and params get clear outcomes and the pool keeps working", {
  local_pool(1, max_result_bytes = 1e6)
  st <- finish(create_job("op", NULL, function(p) raw(2e6)))
  expect_identical(st$error$code, "RESULT_TOO_LARGE")
  expect_match(st$error$message, "result is 2000[0-9]{3} bytes; the limit \\(max_result_bytes\\) is 1000000 bytes")
  st <- finish(create_job("op", NULL, function(p) list(con = textConnection("abc"))))
  expect_identical(st$error$code, "RESULT_NOT_SERIALIZABLE")
  # The job's warnings stay with the failure.
  st <- finish(create_job("op", NULL, function(p) { warning("first"); list(1, new("externalptr")) }))
  expect_identical(st$error$code, "RESULT_NOT_SERIALIZABLE")
  expect_match(st$error$message, "contains an external pointer")
  expect_identical(st$error$warnings, "first")
  # An R error while the result is serialized (here, the C stack) fails that job alone.
  st <- finish(create_job("op", 1e5, function(n) { x <- list(); for (i in seq_len(n)) x <- list(x); x }))
  expect_identical(st$error$code, "RESULT_NOT_SERIALIZABLE")
  expect_match(st$error$message, "^The job's result cannot be serialized: .*C stack")
  # Output, stdin and garbage on stdout do not touch the protocol.
  st <- finish(create_job("op", NULL, function(p) {
    cat(rawToChar(as.raw(c(1:9, 11:255))))
    cat("\x01\x02\x03\x04garbage", file = stderr())
    list(stdin = readLines(file("stdin")), ok = TRUE)
  }))
  expect_identical(st$result, list(stdin = character(), ok = TRUE))
  expect_identical(finish(create_job("op", 7, identity))$result, 7)
})

test_that("a soak of short jobs with crashes, timeouts and cancellations ends with every job terminal", {
  seen <- local_pool(4, max_queued = 10000)
  set.seed(1)
  n <- as.integer(Sys.getenv("ASYNCJOBS_SOAK_JOBS", "2000"))
  kinds <- sample(c("ok", "error", "crash", "timeout", "cancel"), n, replace = TRUE,
                  prob = c(0.94, 0.03, 0.01, 0.01, 0.01))
  exec <- function(p) {
    switch(p$kind,
      error = stop("planned"),
      crash = tools::pskill(Sys.getpid(), tools::SIGKILL),
      timeout = Sys.sleep(60),
      cancel = Sys.sleep(60),
      p$i)
  }
  ids <- character(n)
  for (i in seq_len(n)) {
    r <- create_job("soak", list(i = i, kind = kinds[[i]]), exec,
                    timeout_ms = if (kinds[[i]] == "timeout") 200 else 60000)
    ids[[i]] <- r$job_id
    if (kinds[[i]] == "cancel") cancel_job(r$job_id)
  }
  states <- vapply(ids, function(id) wait_for_job(id, 120000)$status, "")
  expect_true(all(states %in% c("completed", "failed", "cancelled")))
  expect_identical(unname(states[kinds == "ok"]), rep("completed", sum(kinds == "ok")))
  expect_true(all(states[kinds == "cancel"] == "cancelled"))
  codes <- vapply(ids[kinds %in% c("error", "crash", "timeout")], function(id) get_job_status(id)$error$code, "")
  expect_true(all(codes %in% c("EXECUTION_ERROR", "WORKER_CRASHED", "TIMEOUT")))
  expect_true(wait_until(function() all(get_worker_status()$state == "idle")))
  expect_identical(nrow(get_worker_status()), 4L)
  note_pids(seen)
})

test_that("an executor whose namespace the worker lacks still runs, and the worker goes on", {
  local_pool(1)
  # An environment that serializes as a reference to a namespace the worker cannot load.
  ns <- new.env()
  ns$.__NAMESPACE__. <- new.env()
  ns$.__NAMESPACE__.$spec <- c(name = "nonesuchpkg", version = "1.0")
  f <- function(p) p
  environment(f) <- ns
  pid <- get_worker_status()$pid
  st <- finish(create_job("unloadable", 1, f))
  # R's unserialize() puts the global environment in its place.
  expect_identical(st$status, "completed")
  expect_identical(st$result, 1)
  expect_identical(finish(create_job("after", 2, function(p) p * 2))$result, 4)
  expect_identical(get_worker_status()$pid, pid)
})
