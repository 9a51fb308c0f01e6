# What a job is doing: progress, estimates, errors with traces, output, history.

skip_on_cran() # slow and process-heavy: tools/test.sh and CI run it
test_that("report_progress from inside a job reaches get_job_status", {
  local_pool(1)
  gate <- tempfile()
  job <- create_job("clustering", gate, function(p) {
    report_progress("Computing clusters", current = 3, total = 4)
    while (!file.exists(p)) Sys.sleep(0.01)
    "ok"
  })
  expect_true(wait_until(function() identical(get_job_status(job$job_id)$step, "Computing clusters")))
  st <- get_job_status(job$job_id)
  expect_identical(st$status, "running")
  expect_identical(st$progress, list(current = 3, total = 4))
  expect_s3_class(st$started_at, "POSIXct")
  expect_true(st$elapsed_seconds >= 0)
  expect_identical(st$retry_after, 5)
  file.create(gate)
  expect_identical(finish(job)$result, "ok")
})

test_that("report_progress is a quiet no-op outside a job, and checks its arguments", {
  expect_false(report_progress("step", 1, 2))
  expect_error(report_progress(step = 1), class = "asyncjobs_error")
  expect_error(report_progress(current = "a"), "current")
  expect_error(report_progress(total = 1:2), class = "asyncjobs_error_argument")
})

test_that("progress in a tight loop is throttled in the worker and the job stays fast", {
  local_pool(1)
  st <- finish(create_job("op", NULL, function(p) {
    sent <- 0L
    for (i in 1:20000) sent <- sent + report_progress(current = i, total = 20000)
    sent
  }))
  expect_identical(st$status, "completed")
  expect_true(st$result >= 1 && st$result < 20000)
})

test_that("a queued job is pending with its position; estimates come from history", {
  local_pool(1, max_queued = 5)
  for (i in 1:3) finish(create_job("timed", i, function(p) { Sys.sleep(0.2); p }))
  gate <- tempfile()
  blocker <- create_job("blocker", gate, function(p) { while (!file.exists(p)) Sys.sleep(0.01); 1 })
  queued <- create_job("timed", 9, function(p) { Sys.sleep(0.2); p })
  expect_true(queued$estimated_seconds < 30)
  st <- get_job_status(queued$job_id)
  expect_identical(st$status, "pending")
  expect_identical(st$position, 1L)
  expect_identical(st$step, "Processing request...")
  file.create(gate)
  finish(blocker)
  finish(queued)
})

test_that("failed jobs carry call, class, traceback and warnings", {
  local_pool(1)
  st <- finish(create_job("op", NULL, function(p) {
    inner <- function(x) { warning("careful"); stop(structure(class = c("gene_error", "error", "condition"),
                                                             list(message = "bad gene", call = sys.call()))) }
    outer <- function() inner(1)
    outer()
  }))
  e <- st$error
  expect_identical(e$code, "EXECUTION_ERROR")
  expect_identical(e$message, "bad gene")
  expect_identical(e$call, "inner(1)")
  expect_identical(e$class, c("gene_error", "error", "condition"))
  expect_identical(e$traceback[1:2], c("outer()", "inner(1)"))
  expect_length(e$traceback, 3L)
  expect_match(e$traceback[[3]], "^stop\\(")
  expect_identical(e$warnings, "careful")
})

test_that("a successful job keeps its warnings", {
  local_pool(1)
  st <- finish(create_job("op", NULL, function(p) { warning("w1"); warning("w2"); 1 }))
  expect_identical(st$warnings, c("w1", "w2"))
  expect_identical(st$result, 1)
})

test_that("output to stdout and stderr is captured per job and bounded", {
  local_pool(1)
  a <- finish(create_job("op", NULL, function(p) { cat("hello\n"); message("a message"); print(1:3) }))
  out <- get_job_output(a$job_id)
  expect_match(out, "hello")
  expect_match(out, "a message")
  expect_match(out, "[1] 1 2 3", fixed = TRUE)
  b <- finish(create_job("op", NULL, function(p) cat(strrep("x", 200000), "END\n")))
  out_b <- get_job_output(b$job_id)
  expect_identical(nchar(out_b, type = "bytes"), 65536L)
  expect_match(out_b, "END\n$")
  expect_false(grepl("hello", out_b))
  expect_identical(get_job_output("6f1c9a4e-2b7d-4c1e-9f0a-3d5b7e9c1a2b")$error, "JOB_NOT_FOUND")
})

test_that("echo_output copies job output to the API's stderr with the job id", {
  skip_if_not_installed("processx")
  script <- tempfile(fileext = ".R")
  writeLines(c("library(asyncjobs)", "start_workers(1, echo_output = TRUE, wait = TRUE)",
               "j <- create_job('op', NULL, function(p) cat('echoed line\\n'))",
               "st <- wait_for_job(j$job_id, 30000)", "cat(j$job_id, '\\n')", "stop_workers()"), script)
  r <- processx::run(file.path(R.home("bin"), "Rscript"), script, error_on_status = FALSE)
  id <- trimws(r$stdout)
  expect_match(r$stderr, paste0("[", id, "] echoed line"), fixed = TRUE)
})

test_that("list_jobs returns the history as a data.frame, filterable", {
  local_pool(1)
  ok <- finish(create_job("listing_a", 1, identity))
  bad <- finish(create_job("listing_b", 1, function(p) stop("x")))
  df <- list_jobs()
  expect_s3_class(df, "data.frame")
  expect_identical(names(df), c("job_id", "operation", "status", "submitted_at", "started_at",
                                "completed_at", "duration_seconds", "error_code", "queue", "priority",
                                "parent_id", "schedule", "slot_at"))
  expect_true(all(c(ok$job_id, bad$job_id) %in% df$job_id))
  only <- list_jobs(operation = "listing_b")
  expect_identical(only$job_id, bad$job_id)
  expect_identical(only$error_code, "EXECUTION_ERROR")
  expect_true(only$duration_seconds >= 0)
  expect_true(all(list_jobs(status = "failed")$status == "failed"))
  expect_error(list_jobs(status = 1), class = "asyncjobs_error_argument")
  # In the memory store too, a page at a time, either way.
  newest <- list_jobs(operation = c("listing_a", "listing_b"), limit = 1, newest_first = TRUE)
  expect_identical(newest$job_id, bad$job_id)
  older <- list_jobs(operation = c("listing_a", "listing_b"), limit = 1, newest_first = TRUE,
                     cursor = attr(newest, "next_cursor"))
  expect_identical(older$job_id, ok$job_id)
  expect_null(attr(older, "next_cursor"))
  expect_identical(list_jobs(operation = c("listing_a", "listing_b"), limit = 1)$job_id, ok$job_id)
  expect_identical(nrow(list_jobs(status = "running", limit = 0)), 0L)
  expect_error(list_jobs(cursor = "s12"), "`cursor`", class = "asyncjobs_error_argument")
})

test_that("set_progress_messages adds and replaces messages; the built-ins stay", {
  old <- set_progress_messages(list(report = "Building the report..."))
  state <- asyncjobs:::.state
  withr::defer(state$messages <- old)
  expect_identical(get_progress_message("report"), "Building the report...")
  expect_identical(get_progress_message("clustering"), "Fetching interaction data from STRING-db...")
  set_progress_messages(list(clustering = "Clustering..."))
  expect_identical(get_progress_message("clustering"), "Clustering...")
  expect_error(set_progress_messages(list("no name")), class = "asyncjobs_error_argument")
  expect_error(set_progress_messages("x"), "messages")
})
