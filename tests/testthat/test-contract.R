# The contract in CONTRACT.md, field by field.

skip_on_cran() # slow and process-heavy: tools/test.sh and CI run it
test_that("get_progress_message keeps the three messages and the fallback", {
  expect_identical(get_progress_message("clustering"), "Fetching interaction data from STRING-db...")
  expect_identical(get_progress_message("phenotype_clustering"), "Running Multiple Correspondence Analysis...")
  expect_identical(get_progress_message("ontology_update"), "Fetching ontology data from external sources...")
  expect_identical(get_progress_message("anything"), "Processing request...")
})

test_that("accepted, running and completed shapes", {
  local_pool(2)
  gate <- tempfile()
  job <- create_job("clustering", list(gate = gate), function(p) {
    while (!file.exists(p$gate)) Sys.sleep(0.01)
    "done"
  })
  expect_named(job, c("job_id", "status", "estimated_seconds"))
  expect_match(job$job_id, "^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
  expect_identical(job$status, "accepted")
  expect_identical(job$estimated_seconds, 30)

  expect_true(wait_until(function() get_job_status(job$job_id)$status == "running"))
  st <- get_job_status(job$job_id)
  expect_true(all(c("job_id", "status", "step", "estimated_seconds", "retry_after") %in% names(st)))
  expect_identical(st$job_id, job$job_id)
  expect_identical(st$step, "Fetching interaction data from STRING-db...")
  expect_identical(st$retry_after, 5)
  expect_true(st$estimated_seconds > 1700 && st$estimated_seconds <= 1800)
  expect_identical(jobs_env[[job$job_id]]$status, "running")

  file.create(gate)
  done <- finish(job)
  expect_true(all(c("job_id", "status", "completed_at", "result", "error") %in% names(done)))
  expect_identical(done$status, "completed")
  expect_s3_class(done$completed_at, "POSIXct")
  expect_identical(done$result, "done")
  expect_null(done$error)
  expect_true("error" %in% names(done))
})

test_that("a job's R error fails it with EXECUTION_ERROR and the condition message", {
  local_pool(1)
  st <- finish(create_job("x", NULL, function(p) stop("gene list is empty")))
  expect_identical(st$status, "failed")
  expect_null(st$result)
  expect_identical(st$error$code, "EXECUTION_ERROR")
  expect_identical(st$error$message, "gene list is empty")
  expect_s3_class(st$completed_at, "POSIXct")
})

test_that("unknown ids answer JOB_NOT_FOUND", {
  expect_identical(get_job_status("no-such-job"), list(error = "JOB_NOT_FOUND", message = "Job ID not found"))
  expect_identical(get_job_status("6f1c9a4e-2b7d-4c1e-9f0a-3d5b7e9c1a2b")$error, "JOB_NOT_FOUND")
})

test_that("polling unknown ids does not grow the API's memory", {
  # Looking a name up in an environment would make it a symbol, which R never frees.
  poll <- function(from) for (i in from + seq_len(20000)) get_job_status(sprintf("no-such-job-%d", i))
  poll(0)
  before <- gc(full = TRUE)[1L, "used"]
  poll(20000)
  expect_lt(gc(full = TRUE)[1L, "used"] - before, 5000)
})

test_that("with options(asyncjobs.jobs_env = FALSE) jobs get no binding but work alike", {
  local_pool(1)
  withr::local_options(asyncjobs.jobs_env = FALSE)
  job <- create_job("op", 20, function(p) p + 1)
  expect_false(job$job_id %in% ls(jobs_env))
  expect_identical(finish(job)$result, 21)
  expect_gte(suppressMessages(cleanup_old_jobs(0)), 1L)
  expect_identical(get_job_status(job$job_id)$error, "JOB_NOT_FOUND")
})

test_that("jobs_env reflects the registry", {
  local_pool(1)
  job <- create_job("op", 1, function(p) p + 1)
  expect_true(job$job_id %in% ls(jobs_env))
  expect_true(exists(job$job_id, envir = jobs_env))
  finish(job)
  rec <- jobs_env[[job$job_id]]
  expect_identical(rec$status, "completed")
  expect_identical(rec$result, 2)
  expect_identical(rec$operation, "op")
  expect_s3_class(rec$submitted_at, "POSIXct")
  expect_match(rec$params_hash, "^[0-9a-f]{64}$")
  expect_null(rec$error)
})

test_that("a record written into jobs_env is reported like a finished job", {
  id <- "7d4c2b1a-0000-4000-8000-00000000cafe"
  withr::defer(rm(list = id, envir = jobs_env))
  jobs_env[[id]] <- list(job_id = id, operation = "clustering", status = "completed",
                         result = list(clusters = 3), submitted_at = Sys.time(),
                         completed_at = Sys.time())
  st <- get_job_status(id)
  expect_identical(st$status, "completed")
  expect_identical(st$job_id, id)
  expect_identical(st$result, list(clusters = 3))
  expect_null(st$error)
  expect_s3_class(st$completed_at, "POSIXct")
})

test_that("duplicates match the same operation and params while active", {
  local_pool(1)
  gate <- tempfile()
  params <- list(genes = c("BRCA1", "TP53"), gate = gate)
  expect_identical(check_duplicate_job("clustering", params), list(duplicate = FALSE))
  job <- create_job("clustering", params, function(p) { while (!file.exists(p$gate)) Sys.sleep(0.01); 1 })
  expect_identical(check_duplicate_job("clustering", params),
                   list(duplicate = TRUE, existing_job_id = job$job_id))
  expect_false(check_duplicate_job("clustering", list(genes = "BRCA1", gate = gate))$duplicate)
  expect_false(check_duplicate_job("phenotype_clustering", params)$duplicate)
  file.create(gate)
  finish(job)
  expect_false(check_duplicate_job("clustering", params)$duplicate)
})

test_that("capacity: n pending or running jobs, then CAPACITY_EXCEEDED", {
  local_pool(2)
  expect_identical(MAX_CONCURRENT_JOBS, 2L)
  gate <- tempfile()
  slow <- function(p) { while (!file.exists(p)) Sys.sleep(0.01); TRUE }
  a <- create_job("op", gate, slow)
  b <- create_job("op", gate, slow)
  full <- create_job("op", gate, slow)
  expect_identical(full, list(error = "CAPACITY_EXCEEDED",
                              message = "Maximum 2 concurrent jobs reached. Try again later.",
                              retry_after = 60))
  file.create(gate)
  finish(a)
  expect_identical(create_job("op", gate, slow)$status, "accepted")
  finish(b)
})

test_that("max_queued accepts that many more jobs, which wait as pending", {
  local_pool(1, max_queued = 2)
  gate <- tempfile()
  slow <- function(p) { while (!file.exists(p)) Sys.sleep(0.01); TRUE }
  jobs <- lapply(1:3, function(i) create_job("op", gate, slow))
  expect_true(all(vapply(jobs, function(j) j$status, "") == "accepted"))
  expect_identical(create_job("op", gate, slow)$error, "CAPACITY_EXCEEDED")
  st <- get_job_status(jobs[[3]]$job_id)
  expect_identical(st$status, "pending")
  expect_identical(st$position, 2L)
  file.create(gate)
  for (j in jobs) expect_identical(finish(j)$status, "completed")
})

test_that("cleanup_old_jobs removes finished jobs older than the age, and counts them", {
  local_pool(1)
  job <- finish(create_job("op", 1, identity))
  id <- job$job_id
  written <- "7d4c2b1a-0000-4000-8000-0000000000aa"
  jobs_env[[written]] <- list(job_id = written, status = "completed", result = 1,
                              submitted_at = Sys.time() - 100, completed_at = Sys.time() - 100)
  expect_message(n <- cleanup_old_jobs(max_age_seconds = 3600), "Cleaned up 0 old jobs")
  expect_identical(n, 0L)
  expect_true(exists(id, envir = jobs_env))
  Sys.sleep(0.05)
  expect_message(out <- withVisible(cleanup_old_jobs(max_age_seconds = 0.01)), "Cleaned up")
  expect_false(out$visible)
  expect_true(out$value >= 2L)
  expect_false(exists(id, envir = jobs_env))
  expect_false(exists(written, envir = jobs_env))
  expect_identical(get_job_status(id)$error, "JOB_NOT_FOUND")
})

test_that("cleanup keeps running jobs however old", {
  local_pool(1)
  gate <- tempfile()
  job <- create_job("op", gate, function(p) { while (!file.exists(p)) Sys.sleep(0.01); 1 })
  expect_message(cleanup_old_jobs(max_age_seconds = 0), "Cleaned up")
  expect_true(exists(job$job_id, envir = jobs_env))
  file.create(gate)
  expect_identical(finish(job)$status, "completed")
})

test_that("setup runs in every worker before its first job, replacements included", {
  local_pool(2, setup = quote({ library(tools); SETUP_VALUE <- 42 }), max_jobs_per_worker = 1)
  for (i in 1:4) {
    st <- finish(create_job("op", NULL, function(p) c(SETUP_VALUE, "tools" %in% .packages())))
    expect_identical(st$result, c(42, 1))
  }
})

test_that("workers start in the API's working directory with its library paths", {
  dir <- withr::local_tempdir()
  withr::local_dir(dir)
  local_pool(1)
  st <- finish(create_job("op", NULL, function(p) list(wd = getwd(), lib = .libPaths())))
  expect_identical(normalizePath(st$result$wd), normalizePath(dir))
  expect_true(all(.libPaths() %in% st$result$lib))
})

test_that("closures defined inside a function keep their environment", {
  local_pool(1)
  handler <- function(req_genes) {
    threshold <- 0.7
    helper <- function(x) x * 2
    create_job("clustering", list(genes = req_genes), function(p) {
      list(n = length(p$genes), threshold = threshold, doubled = helper(3))
    })
  }
  st <- finish(handler(c("A", "B", "C")))
  expect_identical(st$result, list(n = 3L, threshold = 0.7, doubled = 6))
})

test_that("the first create_job starts a default pool of MAX_CONCURRENT_JOBS workers", {
  withr::defer({
    pids <- get_worker_status()$pid
    stop_workers()
    expect_all_dead(pids)
  })
  if (asyncjobs:::pool_info()$running) stop_workers()
  state <- asyncjobs:::.state
  state$size <- 8L
  st <- finish(create_job("op", 2, function(p) p * 21))
  expect_identical(st$result, 42)
  expect_identical(nrow(get_worker_status()), 8L)
  expect_identical(MAX_CONCURRENT_JOBS, 8L)
})

test_that("get_worker_status has a row per worker", {
  local_pool(3)
  ws <- get_worker_status()
  expect_s3_class(ws, "data.frame")
  expect_identical(nrow(ws), 3L)
  expect_true(all(c("pid", "state", "jobs_done") %in% names(ws)))
  expect_true(all(ws$state == "idle"))
  expect_true(all(!is.na(ws$pid)))
})

test_that("status transitions happen without any event loop", {
  local_pool(1)
  job <- create_job("op", NULL, function(p) 1)
  # No later::run_now(), no promises: the status still moves.
  expect_true(wait_until(function() get_job_status(job$job_id)$status == "completed", timeout = 30))
})
