# Bad input gets a classed error that names the argument; no crash, no hang.

skip_on_cran() # slow and process-heavy: tools/test.sh and CI run it
test_that("create_job checks its arguments", {
  expect_error(create_job("op", 1, "not a function"), class = "asyncjobs_error_argument")
  expect_error(create_job("op", 1, "not a function"), "executor_fn")
  expect_error(create_job(c("a", "b"), 1, identity), "operation")
  expect_error(create_job(NA_character_, 1, identity), class = "asyncjobs_error")
  expect_error(create_job(1, 1, identity), "operation")
  expect_error(create_job("op", 1, identity, timeout_ms = -1), "timeout_ms")
  expect_error(create_job("op", 1, identity, timeout_ms = NA), "timeout_ms")
  # The native call checks these first and hands anything unusual to R's checks.
  for (bad in list(0, Inf, "10", TRUE, factor(5), NA_real_, c(1, 2), numeric())) {
    err <- tryCatch(create_job("op", 1, identity, timeout_ms = bad), error = function(e) e)
    expect_s3_class(err, "asyncjobs_error_argument")
    expect_match(conditionMessage(err), "timeout_ms")
    expect_identical(conditionCall(err)[[1L]], as.name("create_job"))
  }
  err <- tryCatch(create_job("", 1, identity), error = function(e) e)
  expect_s3_class(err, "asyncjobs_error_argument")
  expect_identical(conditionCall(err)[[1L]], as.name("create_job"))
  # A valid number with attributes is taken as the number.
  local_pool(1)
  j <- create_job("op", 1, function(p) p, timeout_ms = c(limit = 60000L))
  expect_identical(finish(j)$result, 1)
  expect_identical(wait_for_job(j$job_id, timeout_ms = c(t = 1000))$status, "completed")
})

test_that("queue names with a comma are refused where they are given, naming the argument", {
  # get_hosts() shows a pool's queues comma-separated: c("a,b", "c") would read as three.
  arg_of <- function(expr) tryCatch(expr, asyncjobs_error_argument = function(e) e)
  for (call in list(quote(start_workers(1, queues = c("a,b", "c"))),
                    quote(run_workers("memory", n = 1, queues = c("a,b", "c"))))) {
    err <- arg_of(eval(call))
    expect_s3_class(err, "asyncjobs_error_argument")
    expect_identical(err$arg, "queues")
    expect_match(conditionMessage(err), "`queues`.*comma.*\"a,b\"")
    expect_identical(conditionCall(err)[[1L]], call[[1L]])
  }
  expect_false(asyncjobs:::pool_info()$running)
  err <- arg_of(create_job("op", 1, identity, queue = "a,b"))
  expect_identical(err$arg, "queue")
  local_pool(1, queues = c("a", "b"))
  expect_identical(strsplit(get_hosts()$queues[[nrow(get_hosts())]], ",")[[1L]], c("a", "b"))
})

test_that("params that cannot be serialized get a clear error from create_job", {
  deep <- NULL
  for (i in 1:2e5) deep <- list(deep)
  err <- tryCatch(create_job("op", params = deep, identity), error = function(e) e)
  expect_s3_class(err, "asyncjobs_error_serialize")
  expect_match(conditionMessage(err), "`params` cannot be serialized")
  expect_identical(conditionCall(err)[[1L]], as.name("create_job"))
  expect_false(asyncjobs:::pool_info()$running)
})

test_that("job ids must be single non-empty strings", {
  for (bad in list(NA_character_, "", c("a", "b"), 1, NULL, NA)) {
    expect_error(get_job_status(bad), class = "asyncjobs_error_job_id")
    expect_error(cancel_job(bad), "job_id")
    expect_error(wait_for_job(bad, 10), class = "asyncjobs_error_job_id")
    expect_error(get_job_output(bad), class = "asyncjobs_error_job_id")
  }
})

test_that("start_workers checks its arguments", {
  expect_error(start_workers(-1), "`n`", class = "asyncjobs_error_argument")
  expect_error(start_workers(1e9), "`n`", class = "asyncjobs_error_argument")
  expect_error(start_workers(1.5), "`n`")
  expect_error(start_workers(NA), "`n`")
  expect_error(start_workers(2, setup = 42), "setup")
  expect_error(start_workers(2, max_queued = -1), "max_queued")
  expect_error(start_workers(2, max_result_bytes = 3e9), "max_result_bytes")
  expect_error(start_workers(2, echo_output = NA), "echo_output")
  expect_error(start_workers(2, nice = 20), "`nice`", class = "asyncjobs_error_argument")
  expect_error(start_workers(2, nice = -1), "`nice`", class = "asyncjobs_error_argument")
  expect_error(start_workers(2, wait = NA), "`wait`", class = "asyncjobs_error_argument")
  expect_error(start_workers(2, queues = character()), "`queues`", class = "asyncjobs_error_argument")
  expect_error(start_workers(2, queues = NA_character_), "`queues`", class = "asyncjobs_error_argument")
  expect_error(start_workers(2, max_active = 0), "`max_active`", class = "asyncjobs_error_argument")
  expect_error(start_workers(2, retention = -1), "`retention`", class = "asyncjobs_error_argument")
  expect_error(start_workers(2, store = 42), "`store`", class = "asyncjobs_error_argument")
  expect_error(start_workers(2, store = "redis://x"), "unknown store", class = "asyncjobs_error_store_unavailable")
  expect_error(start_workers(2, store = "sqlite://relative.db"), "absolute path",
               class = "asyncjobs_error_store_unavailable")
  expect_identical(nrow(get_worker_status()), 0L)
})

test_that("create_job checks the store arguments", {
  f <- function(p) p
  expect_error(create_job("op", 1, f, unique = NA), "`unique`", class = "asyncjobs_error_argument")
  expect_error(create_job("op", 1, f, queue = ""), "`queue`", class = "asyncjobs_error_argument")
  expect_error(create_job("op", 1, f, queue = strrep("q", 256)), "`queue`", class = "asyncjobs_error_argument")
  expect_error(create_job("op", 1, f, priority = 1.5), "`priority`", class = "asyncjobs_error_argument")
  expect_error(create_job("op", 1, f, priority = 1e7), "`priority`", class = "asyncjobs_error_argument")
  expect_error(create_job("op", 1, f, max_attempts = 0), "`max_attempts`", class = "asyncjobs_error_argument")
  expect_error(create_job("op", 1, f, max_attempts = Inf), "`max_attempts`", class = "asyncjobs_error_argument")
  expect_identical(nrow(get_worker_status()), 0L)
})

test_that("workers run at the nice value asked for, above the API's", {
  nice_of <- function(pid) as.integer(proc_stat(pid)[[17L]])
  own <- nice_of(Sys.getpid())
  for (n in c(0L, 7L)) {
    local({
      local_pool(1, nice = n)
      expect_identical(nice_of(get_worker_status()$pid), min(own + n, 19L), info = n)
    })
  }
})

test_that("a second start_workers is refused while a pool runs", {
  local_pool(1)
  expect_error(start_workers(1), class = "asyncjobs_error_pool_running")
})

test_that("check_duplicate_job and cleanup_old_jobs check their arguments", {
  expect_error(check_duplicate_job(NULL, 1), "operation")
  expect_error(cleanup_old_jobs(-5), "max_age_seconds")
  expect_error(cleanup_old_jobs("a"), class = "asyncjobs_error_argument")
})

test_that("operation names are valid UTF-8: latin1 is converted, invalid bytes are refused", {
  local_pool(1)
  latin <- iconv("caf\u00e9", "UTF-8", "latin1")
  expect_identical(Encoding(latin), "latin1")
  j <- create_job(latin, 1, function(p) p)
  jobs <- list_jobs()
  expect_identical(jobs$operation[jobs$job_id == j$job_id], "caf\u00e9")
  expect_true(all(validUTF8(jobs$operation)))
  bad <- rawToChar(as.raw(c(0x6f, 0x70, 0xff)))
  expect_error(create_job(bad, 1, function(p) p), "`operation` must be valid UTF-8", class = "asyncjobs_error_argument")
  expect_error(check_duplicate_job(bad, 1), "`operation`", class = "asyncjobs_error_argument")
  expect_true(is.logical(check_duplicate_job(latin, 1)$duplicate))
})

test_that("a job cannot start a pool from inside its worker; create_job() there submits a child", {
  local_pool(1)
  j <- create_job("nested", 1, function(p) {
    tried <- list(
      create = tryCatch(asyncjobs::create_job("child", 1, function(q) q)$status, error = function(e) class(e)[[1L]]),
      start = tryCatch(asyncjobs::start_workers(1), error = function(e) class(e)[[1L]]),
      run = tryCatch(asyncjobs::run_workers("sqlite:///tmp/x.db", 1), error = function(e) class(e)[[1L]]))
    tried
  })
  st <- finish(j)
  expect_identical(st$status, "completed")
  expect_identical(unlist(st$result), c(create = "accepted", start = "asyncjobs_error_in_worker",
                                        run = "asyncjobs_error_in_worker"))
  child <- list_jobs(operation = "child")
  expect_identical(child$parent_id, j$job_id)
  expect_identical(get_job_status(j$job_id)$children, child$job_id)
})

test_that("create_job without params gives one classed error and no warning", {
  expect_no_warning(expect_error(create_job("op", executor_fn = identity), "`params` is missing",
                                 class = "asyncjobs_error_argument"))
})

test_that("jobs_env and the registry agree after Ctrl-C at any point of a submit", {
  skip_if_not_installed("callr")
  out <- callr::r(function() {
    library(asyncjobs)
    options(asyncjobs.warn_payload_bytes = Inf)
    start_workers(1, max_queued = 1e6, queues = "nobody", wait = TRUE)
    # A second process sends SIGINT to this one every few milliseconds;
    # whatever it interrupts, the loop goes on.
    interrupted <- 0L
    deadline <- Sys.time() + 5
    # It starts sending once this process is inside the loop below.
    pinger <- processx::process$new("sh", c("-c", sprintf("sleep 0.5; while kill -INT %d 2>/dev/null; do sleep 0.01; done", Sys.getpid())))
    repeat {
      done <- tryCatch({
        while (Sys.time() < deadline) for (i in 1:50) create_job("op", i, identity, queue = "nobody")
        pinger$kill()
        TRUE
      }, interrupt = function(e) {
        interrupted <<- interrupted + 1L
        FALSE
      })
      if (isTRUE(done)) break
    }
    # A signal sent just before the kill may still be on its way: absorb it.
    pinger$wait(5000)
    repeat if (tryCatch({ Sys.sleep(0.3); TRUE }, interrupt = function(e) FALSE)) break
    n_env <- length(ls(jobs_env))
    n_jobs <- nrow(list_jobs())
    stop_workers()
    c(interrupted = interrupted, env = n_env, jobs = n_jobs)
  })
  expect_gt(out[["interrupted"]], 0)
  expect_gt(out[["jobs"]], 0)
  expect_identical(out[["env"]], out[["jobs"]])
})
