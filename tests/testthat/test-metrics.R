# Metrics: counted in the Rust core, read from R (get_metrics()) and served
# as Prometheus text by GET /jobs/metrics; the OpenAPI description of the routes.

metric <- function(m, name, ...) {
  labels <- list(...)
  keep <- m$metric == name
  for (l in names(labels)) keep <- keep & !is.na(m[[l]]) & m[[l]] == labels[[l]]
  sum(m$value[keep])
}

# Every line of a Prometheus text exposition: a comment, or `name{labels} value`.
expect_exposition <- function(text) {
  lines <- strsplit(text, "\n", fixed = TRUE)[[1L]]
  samples <- lines[!startsWith(lines, "#")]
  ok <- grepl('^[a-zA-Z_:][a-zA-Z0-9_:]*(\\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\\\]|\\\\.)*",?)*\\})? [-+0-9.eEInfNa]+$', samples)
  expect_true(all(ok), info = paste(samples[!ok], collapse = "\n"))
  expect_true(all(!is.na(suppressWarnings(as.numeric(sub(".* ", "", sub("\\+Inf$", "Inf", samples)))))))
}

test_that("get_metrics counts submits, outcomes, durations, cancels and the pool", {
  local_pool(1L, max_queued = 5L)
  op <- paste0("metrics-", as.integer(Sys.time()) %% 100000L, "-", sample.int(1e6, 1L))
  before <- get_metrics()
  expect_named(before, c("metric", "type", "operation", "code", "reason", "state", "le", "value"))
  expect_identical(metric(before, "asyncjobs_pool_size"), 1)
  expect_identical(metric(before, "asyncjobs_workers", state = "idle"), 1)

  ok <- create_job(op, list(), function(p) 42)
  bad <- create_job(op, list(), function(p) stop("nope"))
  expect_identical(finish(ok)$status, "completed")
  expect_identical(finish(bad)$status, "failed")
  slow <- create_job(op, list(), function(p) Sys.sleep(60))
  expect_true(wait_until(function() get_job_status(slow$job_id)$status == "running"))
  queued <- create_job(op, list(), function(p) 1)
  running <- get_metrics()
  expect_identical(metric(running, "asyncjobs_jobs_running"), 1)
  expect_identical(metric(running, "asyncjobs_jobs_pending"), 1)
  expect_identical(metric(running, "asyncjobs_workers", state = "busy"), 1)
  expect_identical(cancel_job(queued$job_id)$status, "cancelled")
  expect_identical(cancel_job(slow$job_id)$status, "cancelled")
  expect_identical(cancel_job(slow$job_id)$error, "JOB_FINISHED")

  # The outcome is counted just after it is written.
  expect_true(wait_until(function() metric(get_metrics(), "asyncjobs_jobs_failed_total", operation = op) == 1))
  m <- get_metrics()
  expect_identical(metric(m, "asyncjobs_jobs_submitted_total", operation = op), 4)
  expect_identical(metric(m, "asyncjobs_jobs_completed_total", operation = op), 1)
  expect_identical(metric(m, "asyncjobs_jobs_failed_total", operation = op, code = "EXECUTION_ERROR"), 1)
  expect_identical(metric(m, "asyncjobs_jobs_cancelled_total") - metric(before, "asyncjobs_jobs_cancelled_total"), 2)
  expect_identical(metric(m, "asyncjobs_job_duration_seconds_count", operation = op), 2)
  expect_identical(metric(m, "asyncjobs_job_duration_seconds_bucket", operation = op, le = "+Inf"), 2)
  expect_true(metric(m, "asyncjobs_job_duration_seconds_sum", operation = op) > 0)
  # Cancelling the running job cost its worker.
  expect_true(wait_until(function() {
    metric(get_metrics(), "asyncjobs_worker_restarts_total", reason = "killed") -
      metric(before, "asyncjobs_worker_restarts_total", reason = "killed") == 1
  }))
  expect_identical(unique(m$type[m$metric == "asyncjobs_job_duration_seconds_bucket"]), "histogram")

  text <- get_metrics("prometheus")
  expect_type(text, "character")
  expect_length(text, 1L)
  expect_exposition(text)
  expect_match(text, sprintf('asyncjobs_jobs_submitted_total{operation="%s"} 4\n', op), fixed = TRUE)
  expect_match(text, "# TYPE asyncjobs_jobs_failed_total counter\n", fixed = TRUE)
  expect_match(text, "\nasyncjobs_pool_size 1\n", fixed = TRUE)
})

test_that("refused submits are counted by code", {
  local_pool(1L)
  before <- get_metrics()
  slow <- create_job("metrics-refused", list(1), function(p) Sys.sleep(60), unique = TRUE)
  expect_identical(create_job("metrics-refused", list(1), function(p) 1, unique = TRUE)$error, "DUPLICATE_JOB")
  expect_identical(create_job("metrics-refused", list(2), function(p) 1)$error, "CAPACITY_EXCEEDED")
  expect_identical(create_job("metrics-refused", list(3), function(p) 1)$error, "CAPACITY_EXCEEDED")
  m <- get_metrics()
  delta <- function(code) metric(m, "asyncjobs_jobs_rejected_total", code = code) -
    metric(before, "asyncjobs_jobs_rejected_total", code = code)
  expect_identical(c(delta("DUPLICATE_JOB"), delta("CAPACITY_EXCEEDED")), c(1, 2))
  expect_identical(metric(m, "asyncjobs_jobs_submitted_total", operation = "metrics-refused") -
                     metric(before, "asyncjobs_jobs_submitted_total", operation = "metrics-refused"), 1)
  cancel_job(slow$job_id)
})

test_that("operation names are escaped in the exposition", {
  local_pool(1L)
  op <- 'quote " backslash \\ newline \n end'
  finish(create_job(op, list(), function(p) 1))
  text <- get_metrics("prometheus")
  expect_match(text, 'operation="quote \\" backslash \\\\ newline \\n end"', fixed = TRUE)
  expect_exposition(text)
})

test_that("get_metrics works without a pool and refuses a bad format", {
  m <- get_metrics()
  expect_identical(metric(m, "asyncjobs_pool_size"), 0)
  expect_error(get_metrics("xml"), class = "asyncjobs_error_argument")
  expect_error(get_metrics(c("prometheus", "data.frame")), "`format`", class = "asyncjobs_error_argument")
})

# The body as text, with its headers.
http_text <- function(api, path) {
  h <- curl::new_handle(timeout = 30, forbid_reuse = TRUE)
  r <- curl::curl_fetch_memory(paste0(api$url, path), handle = h)
  list(status = r$status_code, headers = curl::parse_headers_list(r$headers), body = rawToChar(r$content))
}

test_that("GET /jobs/metrics serves the Prometheus text format", {
  skip_on_cran()
  api <- local_api(workers = 2L)
  r <- http_text(api, "/jobs/metrics")
  expect_identical(r$status, 200L)
  expect_match(r$headers[["content-type"]], "^text/plain; version=0\\.0\\.4")
  expect_exposition(r$body)
  expect_match(r$body, "\nasyncjobs_pool_size 2\n", fixed = TRUE)

  submitted <- http(api, "POST", "/analysis/refresh?seconds=0&source=metrics")
  expect_identical(submitted$status, 202L)
  poll_until(api, submitted$body$job_id, function(b) identical(b$status, "completed"))
  expect_true(wait_until(function() {
    grepl('asyncjobs_jobs_completed_total{operation="refresh"} 1\n', http_text(api, "/jobs/metrics")$body, fixed = TRUE)
  }))
  body <- http_text(api, "/jobs/metrics")$body
  expect_match(body, 'asyncjobs_jobs_submitted_total{operation="refresh"} 1\n', fixed = TRUE)
  expect_match(body, 'asyncjobs_job_duration_seconds_count{operation="refresh"} 1\n', fixed = TRUE)
})

test_that("the metrics route is an operator route: unmounted by default, behind authorize", {
  skip_on_cran()
  api <- local_api(workers = 1L, extra = quote(demo_api(admin = FALSE)))
  r <- http(api, "GET", "/jobs/metrics")
  expect_identical(r$status, 404L)
  expect_identical(r$body$error, "NOT_FOUND")

  deny <- quote(demo_api(admin = TRUE, authorize = function(req, action, job_id) action != "metrics"))
  api <- local_api(workers = 1L, extra = deny)
  r <- http(api, "GET", "/jobs/metrics")
  expect_identical(r$status, 403L)
  expect_identical(r$body$error, "FORBIDDEN")
  expect_identical(http(api, "GET", "/jobs/workers")$status, 200L)
})

test_that("the OpenAPI spec describes the job routes and the submit routes' answers", {
  skip_if_not_installed("plumber")
  pr <- plumber::pr() |>
    plumber::pr_post("/submit", function() list()) |>
    pr_job_routes("/jobs", admin = TRUE, dashboard = TRUE, submit_paths = "/submit")
  spec <- pr$getApiSpec()
  status <- spec$paths[["/jobs/{id}"]]
  expect_setequal(names(status), c("get", "delete"))
  expect_true(all(c("200", "404", "503") %in% names(status$get$responses)))
  expect_true(all(c("200", "404", "409") %in% names(status$delete$responses)))
  expect_true(all(c("200", "404", "409", "503") %in% names(spec$paths[["/jobs/{id}/result"]]$get$responses)))
  expect_false("default" %in% names(status$get$responses))
  submit <- spec$paths[["/submit"]]$post$responses
  expect_true(all(c("202", "409", "503", "400") %in% names(submit)))
  expect_true("Location" %in% names(submit[["202"]]$headers))
  expect_true("Retry-After" %in% names(spec$components$responses$Unavailable$headers))
  expect_true(all(c("/jobs/metrics", "/jobs/dashboard", "/jobs/workers", "/jobs") %in% names(spec$paths)))
  expect_false("/jobs/" %in% names(spec$paths))
  expect_true(all(c("200", "400") %in% names(spec$paths[["/jobs"]]$get$responses)))
  # Every reference resolves.
  refs <- unique(unlist(rapply(spec, function(x) x, how = "unlist")[grepl("\\$ref$", names(rapply(spec, function(x) x, how = "unlist")))]))
  expect_gt(length(refs), 0L)
  for (ref in refs) {
    parts <- strsplit(sub("^#/", "", ref), "/", fixed = TRUE)[[1L]]
    expect_false(is.null(spec[[parts]]), info = ref)
  }
  # The public API's spec lists no operator route.
  public <- pr_job_routes(plumber::pr(), "/jobs")$getApiSpec()
  expect_false(any(c("/jobs/metrics", "/jobs/workers", "/jobs/dashboard") %in% names(public$paths)))
  expect_error(job_openapi(submit = "submit"), "`submit`", class = "asyncjobs_error_argument")
  expect_error(pr_job_routes(plumber::pr(), submit_paths = NA_character_), "`submit_paths`", class = "asyncjobs_error_argument")
})

test_that("failed store calls and the submits they refuse are counted", {
  skip_on_cran()
  urls <- store_urls()
  urls <- urls[intersect(c("postgres", "mysql"), names(urls))]
  skip_if(!length(urls), "no PostgreSQL or MySQL server to cut (tools/test.sh sets ASYNCJOBS_TEST_POSTGRES)")
  proxy <- local_proxy(urls[[1L]])
  local_store(proxy$url, n = 0L)
  errors <- function(m, what) metric(m, "asyncjobs_store_errors_total", operation = what)
  before <- get_metrics()
  expect_true("asyncjobs_jobs_pending" %in% before$metric)
  proxy$cut()
  expect_identical(create_job("metrics-outage", 1, function(p) p)$error, "STORE_UNAVAILABLE")
  expect_identical(get_job_status("00000000-0000-4000-8000-000000000000")$error, "STORE_UNAVAILABLE")
  m <- get_metrics()
  expect_identical(errors(m, "submit") - errors(before, "submit"), 1)
  expect_identical(errors(m, "status") - errors(before, "status"), 1)
  expect_identical(metric(m, "asyncjobs_jobs_rejected_total", code = "STORE_UNAVAILABLE") -
                     metric(before, "asyncjobs_jobs_rejected_total", code = "STORE_UNAVAILABLE"), 1)
  # The store cannot say how many jobs wait: no gauge rather than a wrong one.
  expect_false("asyncjobs_jobs_pending" %in% m$metric)
  expect_identical(metric(m, "asyncjobs_store_up"), 0)
  expect_identical(metric(before, "asyncjobs_store_up"), 1)
  expect_identical(errors(m, "counts") - errors(before, "counts"), 1)
  proxy$start()
  expect_true(wait_until(function() "asyncjobs_jobs_pending" %in% get_metrics()$metric, timeout = 30))
})
