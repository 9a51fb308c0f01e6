# The HTTP edge: job_response()'s mapping, then the demo API over real HTTP.
# Tests that read the job list or the workers mount the operator routes.
skip_on_cran() # slow and process-heavy: tools/test.sh and CI run it
admin_api <- quote(demo_api(admin = TRUE))

test_that("job_response maps each result to a status code and headers", {
  res <- fake_res()
  body <- job_response(list(job_id = "abc", status = "accepted", estimated_seconds = 30), res, "/api/jobs/")
  expect_identical(res$status, 202L)
  expect_identical(res$headers$Location, "/api/jobs/abc")
  expect_identical(res$headers[["Retry-After"]], "5")
  expect_identical(body$status_url, "/api/jobs/abc")

  res <- fake_res()
  body <- job_response(list(duplicate = TRUE, existing_job_id = "abc"), res)
  expect_identical(res$status, 409L)
  expect_identical(res$headers$Location, "/jobs/abc")
  expect_identical(body$error, "DUPLICATE_JOB")
  expect_identical(body$existing_job_id, "abc")
  expect_identical(body$status_url, "/jobs/abc")

  codes <- c(CAPACITY_EXCEEDED = 503L, POOL_UNAVAILABLE = 503L, STORE_UNAVAILABLE = 503L, JOB_NOT_FOUND = 404L,
             NOT_FOUND = 404L, BAD_REQUEST = 400L, FORBIDDEN = 403L, JOB_FINISHED = 409L, JOB_NOT_FINISHED = 409L,
             JOB_FAILED = 409L, AUTHORIZE_FAILED = 500L, INTERNAL_ERROR = 500L, SOMETHING_ELSE = 500L)
  for (code in names(codes)) {
    res <- fake_res()
    job_response(list(error = code, message = "m"), res)
    expect_identical(res$status, codes[[code]], info = code)
    expect_null(res$headers$Location)
  }
  res <- fake_res()
  job_response(list(error = "CAPACITY_EXCEEDED", message = "m", retry_after = 60), res)
  expect_identical(res$headers[["Retry-After"]], "60")

  res <- fake_res()
  job_response(list(job_id = "abc", status = "running", retry_after = 5), res)
  expect_identical(res$status, 200L)
  expect_identical(res$headers[["Retry-After"]], "5")

  # A finished job's error is a list, not a code: still 200.
  res <- fake_res()
  body <- job_response(list(job_id = "abc", status = "failed", result = NULL,
                            error = list(code = "EXECUTION_ERROR", message = "boom"),
                            completed_at = .POSIXct(0, tz = "UTC")), res)
  expect_identical(res$status, 200L)
  expect_identical(body$completed_at, "1970-01-01T00:00:00.000Z")
  expect_identical(body$result, NA)
  running <- job_response(list(job_id = "abc", status = "running", progress = list(current = NA_real_, total = 3)), res)
  expect_identical(as.character(jsonlite::toJSON(running$progress, auto_unbox = TRUE)), '{"current":null,"total":3}')
  expect_identical(body$error$code, "EXECUTION_ERROR")
})

test_that("job_response maps create_job's DUPLICATE_JOB to 409 + Location and STORE_UNAVAILABLE to 503 + Retry-After", {
  res <- fake_res()
  body <- job_response(list(error = "DUPLICATE_JOB", message = "An identical job is running.", existing_job_id = "e1"),
                       res, "/api/jobs/")
  expect_identical(res$status, 409L)
  expect_identical(res$headers$Location, "/api/jobs/e1")
  expect_identical(body$status_url, "/api/jobs/e1")
  expect_identical(body$existing_job_id, "e1")
  expect_identical(body$message, "An identical job is running.")
  expect_null(res$headers[["Retry-After"]])

  # Without an existing id there is nothing to point at.
  res <- fake_res()
  body <- job_response(list(error = "DUPLICATE_JOB", message = "m"), res)
  expect_identical(res$status, 409L)
  expect_null(res$headers$Location)
  expect_null(body$status_url)

  res <- fake_res()
  body <- job_response(list(error = "STORE_UNAVAILABLE", message = "The job store cannot be reached.", retry_after = 2.5),
                       res)
  expect_identical(res$status, 503L)
  expect_identical(res$headers[["Retry-After"]], "3")
  expect_identical(body$retry_after, 2.5)
  expect_null(res$headers$Location)
})

test_that("job_response converts date-times in data frames and keeps classed results", {
  df <- data.frame(id = c("a", "b"), at = .POSIXct(c(1.5, NA), tz = "UTC"))
  body <- job_response(list(jobs = df, fit = structure(list(a = NULL), class = "thing")), fake_res())
  expect_identical(body$jobs$at, c("1970-01-01T00:00:01.500Z", NA))
  expect_s3_class(body$fit, "thing")
})

test_that("job_response and the routes reject bad arguments with classed errors", {
  expect_error(job_response("accepted", fake_res()), "`x`", class = "asyncjobs_error_argument")
  expect_error(job_response(list(), NULL), "`res`", class = "asyncjobs_error_argument")
  expect_error(job_response(list(), fake_res(), prefix = NA), "`prefix`", class = "asyncjobs_error_argument")
  skip_if_not_installed("plumber")
  expect_error(job_routes(prefix = 1), "`prefix`", class = "asyncjobs_error_argument")
  expect_error(pr_job_routes(list()), "`pr`", class = "asyncjobs_error_argument")
  expect_error(pr_job_routes(plumber::pr(), "https://x.org/jobs"), "`prefix`", class = "asyncjobs_error_argument")
  expect_s3_class(job_routes("https://x.org/api/jobs"), "Plumber")
})

test_that("get_job_result reports not-found, unfinished, failed and completed jobs", {
  local_pool(1)
  expect_identical(get_job_result("no-such-id")$error, "JOB_NOT_FOUND")
  slow <- create_job("op", 1, function(p) { Sys.sleep(30); p })
  expect_identical(get_job_result(slow$job_id)$error, "JOB_NOT_FINISHED")
  cancel_job(slow$job_id)
  r <- get_job_result(slow$job_id)
  expect_identical(r$error, "JOB_FAILED")
  expect_identical(r$details$code, "CANCELLED")
  ok <- create_job("op", 2, function(p) p * 21)
  finish(ok)
  expect_identical(get_job_result(ok$job_id), list(job_id = ok$job_id, status = "completed", result = 42))
})

test_that("over HTTP a job is accepted (202), polled to completion and its result served", {
  api <- local_api(extra = admin_api)
  r <- http(api, "POST", "/analysis/kmeans?n=5000&k=3")
  expect_identical(r$status, 202L)
  id <- r$body$job_id
  expect_match(id, "^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
  expect_identical(r$headers$location, paste0("/jobs/", id))
  expect_identical(r$headers[["retry-after"]], "5")
  expect_identical(r$body$status, "accepted")
  expect_identical(r$body$status_url, paste0("/jobs/", id))

  seen <- character()
  done <- poll_until(api, id, function(b) {
    seen <<- union(seen, b$status)
    b$status %in% c("completed", "failed")
  })
  expect_identical(done$status, 200L)
  expect_identical(done$body$status, "completed")
  expect_match(done$body$completed_at, iso_utc, perl = TRUE)
  expect_match(done$body$submitted_at, iso_utc, perl = TRUE)
  expect_null(done$body$error)
  expect_null(done$headers[["retry-after"]])

  res <- http(api, "GET", paste0("/jobs/", id, "/result"))
  expect_identical(res$status, 200L)
  expect_identical(res$body$result$n, 5000L)
  expect_length(res$body$result$withinss, 2L)

  out <- http(api, "GET", paste0("/jobs/", id, "/output"))
  expect_identical(out$status, 200L)
  expect_identical(out$body$job_id, id)

  for (path in c("/jobs", "/jobs/", "/jobs?status=completed&operation=kmeans,other")) {
    l <- http(api, "GET", path)
    expect_identical(l$status, 200L, info = path)
    expect_identical(l$body$count, 1L, info = path)
    expect_identical(l$body$jobs[[1L]]$job_id, id, info = path)
  }
  expect_identical(http(api, "GET", "/jobs?status=failed")$body$count, 0L)
  expect_identical(http(api, "GET", "/jobs?limit=abc")$status, 400L)
  bad <- http(api, "GET", "/jobs?status=%ff")
  expect_identical(bad$status, 400L)
  expect_identical(bad$body$error, "BAD_REQUEST")
  h <- http(api, "GET", "/jobs/hosts")
  expect_identical(h$status, 200L)
  expect_identical(h$body$hosts[[1L]]$state, "live")

  w <- http(api, "GET", "/jobs/workers")
  expect_identical(w$status, 200L)
  expect_identical(w$body$size, 2L)
  expect_length(w$body$workers, 2L)
  expect_true(all(vapply(w$body$workers, function(x) x$state %in% c("idle", "busy"), TRUE)))
})

test_that("over HTTP a running job reports progress with Retry-After", {
  api <- local_api()
  id <- http(api, "POST", "/analysis/refresh?seconds=3")$body$job_id
  r <- poll_until(api, id, function(b) identical(b$status, "running") && is.numeric(b$progress$current))
  expect_identical(r$status, 200L)
  expect_identical(r$headers[["retry-after"]], "5")
  expect_match(r$body$step, "^Downloading HPO part")
  expect_identical(r$body$progress$total, 10L)
  expect_match(r$body$started_at, iso_utc, perl = TRUE)
  nf <- http(api, "GET", paste0("/jobs/", id, "/result"))
  expect_identical(nf$status, 409L)
  expect_identical(nf$body$error, "JOB_NOT_FINISHED")
  expect_identical(nf$headers[["retry-after"]], "5")
})

test_that("over HTTP a duplicate gets 409 and a full pool 503 with Retry-After", {
  api <- local_api(workers = 1L, max_queued = 1L)
  first <- http(api, "POST", "/analysis/refresh?seconds=30")
  expect_identical(first$status, 202L)
  dup <- http(api, "POST", "/analysis/refresh?seconds=30")
  expect_identical(dup$status, 409L)
  expect_identical(dup$headers$location, paste0("/jobs/", first$body$job_id))
  expect_identical(dup$body$error, "DUPLICATE_JOB")
  expect_identical(dup$body$existing_job_id, first$body$job_id)

  queued <- http(api, "POST", "/analysis/refresh?seconds=31")
  expect_identical(queued$status, 202L)
  full <- http(api, "POST", "/analysis/refresh?seconds=32")
  expect_identical(full$status, 503L)
  expect_identical(full$headers[["retry-after"]], "60")
  expect_identical(full$body$error, "CAPACITY_EXCEEDED")
  expect_match(full$body$message, "Maximum 2 concurrent jobs") # running + queued

  p <- http(api, "GET", paste0("/jobs/", queued$body$job_id))
  expect_identical(p$body$status, "pending")
  expect_identical(p$body$position, 1L)
  expect_identical(p$headers[["retry-after"]], "5")
})

test_that("over HTTP unknown ids get 404 and bad input 400", {
  api <- local_api(workers = 1L)
  for (req in list(c("GET", "/jobs/nope"), c("GET", "/jobs/nope/result"), c("GET", "/jobs/nope/output"),
                   c("DELETE", "/jobs/nope"))) {
    r <- http(api, req[[1L]], req[[2L]])
    expect_identical(r$status, 404L, info = req[[2L]])
    expect_identical(r$body$error, "JOB_NOT_FOUND", info = req[[2L]])
  }
  bad <- http(api, "POST", "/analysis/kmeans?k=99")
  expect_identical(bad$status, 400L)
  expect_identical(bad$body$error, "BAD_REQUEST")
})

test_that("over HTTP a running job is cancelled and its worker replaced", {
  api <- local_api(workers = 1L, extra = admin_api)
  id <- http(api, "POST", "/analysis/refresh?seconds=120")$body$job_id
  poll_until(api, id, function(b) identical(b$status, "running"))
  old <- http(api, "GET", "/jobs/workers")$body$workers[[1L]]$pid

  del <- http(api, "DELETE", paste0("/jobs/", id))
  expect_identical(del$status, 200L)
  expect_identical(del$body, list(job_id = id, status = "cancelled"))
  st <- http(api, "GET", paste0("/jobs/", id))
  expect_identical(st$body$status, "cancelled")
  expect_identical(st$body$error$code, "CANCELLED")
  again <- http(api, "DELETE", paste0("/jobs/", id))
  expect_identical(again$status, 409L)
  expect_identical(again$body$error, "JOB_FINISHED")

  expect_all_dead(old)
  expect_true(wait_until(function() {
    w <- http(api, "GET", "/jobs/workers")$body$workers[[1L]]
    identical(w$state, "idle") && !identical(w$pid, old)
  }, timeout = 30))
})

test_that("over HTTP a failing job is reported with its error", {
  api <- local_api(workers = 1L)
  id <- http(api, "POST", "/analysis/refresh?seconds=0.5&fail=true&source=GO")$body$job_id
  done <- poll_until(api, id, function(b) b$status %in% c("completed", "failed"))
  expect_identical(done$status, 200L)
  expect_identical(done$body$status, "failed")
  expect_identical(done$body$error$code, "EXECUTION_ERROR")
  expect_identical(done$body$error$message, "GO answered 503")
  # A public route shows the failure, not the worker's call stack.
  expect_identical(sort(names(done$body$error)), c("code", "message"))
  r <- http(api, "GET", paste0("/jobs/", id, "/result"))
  expect_identical(r$status, 409L)
  expect_identical(r$body$error, "JOB_FAILED")
  expect_identical(r$body$details$code, "EXECUTION_ERROR")
  expect_match(http(api, "GET", paste0("/jobs/", id, "/output"))$body$output, "part 1 of 10")
})

test_that("the API answers requests while every worker runs a CPU-bound job", {
  api <- local_api(workers = 2L, extra = admin_api)
  ids <- vapply(1:2, function(seed) {
    http(api, "POST", sprintf("/analysis/kmeans?n=2000000&k=20&seed=%d", seed))$body$job_id
  }, "")
  busy <- function() {
    w <- http(api, "GET", "/jobs/workers")$body$workers
    all(vapply(w, function(x) identical(x$state, "busy"), TRUE))
  }
  expect_true(wait_until(busy, timeout = 30))
  answers <- vapply(1:20, function(i) http(api, "GET", "/health")$status, 1L)
  expect_identical(answers, rep(200L, 20))
  # The jobs were still running throughout, so the answers came from a busy API.
  expect_true(busy())
  for (id in ids) expect_identical(http(api, "GET", paste0("/jobs/", id))$body$status, "running")
})

test_that("an executor that captures req and res is named in a warning", {
  naive <- quote(plumber::pr_post(api, "/naive", function(req, res) {
    msg <- NULL
    job <- withCallingHandlers(
      create_job("naive", list(), function(p) 1),
      warning = function(w) {
        msg <<- conditionMessage(w)
        invokeRestart("muffleWarning")
      })
    c(job_response(job, res), list(warning = msg))
  }, serializer = plumber::serializer_unboxed_json()))
  api <- local_api(workers = 1L, extra = naive)
  r <- http(api, "POST", "/naive")
  expect_identical(r$status, 202L)
  expect_match(r$body$warning, "`req`", fixed = TRUE)
  expect_match(r$body$warning, "\"naive\"", fixed = TRUE)
  expect_identical(poll_until(api, r$body$job_id, function(b) b$status != "pending" && b$status != "running")$body$result, 1L)
})

test_that("a result JSON cannot hold still gives a JSON body naming the job and the reason", {
  res <- fake_res()
  body <- job_response(list(job_id = "abc", status = "completed", result = list(a = 1, env = new.env())), res)
  expect_identical(res$status, 200L)
  expect_false("result" %in% names(body))
  expect_identical(body$result_error$code, "RESULT_NOT_JSON")
  expect_match(body$result_error$message, "job abc .*environment")
  expect_silent(jsonlite::toJSON(body, auto_unbox = TRUE, na = "null"))
  fine <- job_response(list(job_id = "abc", status = "completed", result = list(a = 1:3, b = list("x"))), fake_res())
  expect_identical(fine$result$a, 1:3)
  expect_null(fine$result_error)
})
