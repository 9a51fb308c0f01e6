# Job routes on a public API: what is mounted by default, authorize(), and
# what error bodies show, over real HTTP.

# One request with extra headers; also the raw body text.
skip_on_cran() # slow and process-heavy: tools/test.sh and CI run it
http_as <- function(api, method, path, headers = character()) {
  h <- curl::new_handle(customrequest = method, timeout = 30, forbid_reuse = TRUE)
  if (method == "POST") curl::handle_setopt(h, post = TRUE, postfields = "")
  if (length(headers)) curl::handle_setheaders(h, .list = as.list(headers))
  r <- curl::curl_fetch_memory(paste0(api$url, path), handle = h)
  text <- rawToChar(r$content)
  list(status = r$status_code, headers = curl::parse_headers_list(r$headers), text = text,
       body = if (nzchar(text)) jsonlite::fromJSON(text, simplifyVector = FALSE))
}

test_that("pr_job_routes and job_routes reject a bad authorize or admin with classed errors", {
  skip_if_not_installed("plumber")
  arg_of <- function(expr) tryCatch(expr, asyncjobs_error_argument = function(e) e$arg)
  for (bad in list("yes", TRUE, function(req) TRUE, function(req, action) TRUE, function(a, b, c, d) TRUE)) {
    expect_error(job_routes(authorize = bad), "`authorize`", class = "asyncjobs_error_argument")
    expect_error(pr_job_routes(plumber::pr(), authorize = bad), "`authorize`", class = "asyncjobs_error_argument")
    expect_identical(arg_of(job_routes(authorize = bad)), "authorize")
  }
  for (bad in list(NA, "TRUE", 1, c(TRUE, FALSE), NULL)) {
    expect_error(job_routes(admin = bad), "`admin`", class = "asyncjobs_error_argument")
    expect_error(pr_job_routes(plumber::pr(), admin = bad), "`admin`", class = "asyncjobs_error_argument")
    expect_identical(arg_of(pr_job_routes(plumber::pr(), admin = bad)), "admin")
  }
  expect_s3_class(job_routes(authorize = function(...) TRUE, admin = TRUE), "Plumber")
  expect_s3_class(pr_job_routes(plumber::pr(), authorize = function(req, action, job_id) TRUE), "Plumber")
})

test_that("by default only the routes addressed by a job id are mounted", {
  api <- local_api(workers = 1L, extra = quote(demo_api(admin = FALSE)))
  for (path in c("/jobs", "/jobs/", "/jobs?status=running", "/jobs/workers")) {
    r <- http_as(api, "GET", path)
    expect_identical(r$status, 404L, info = path)
    expect_false(is.null(r$body$error), info = path)
    expect_null(r$body$workers)
    expect_null(r$body$jobs)
    expect_no_match(r$text, "pid|idle|busy", info = path)
  }
  id <- http(api, "POST", "/analysis/refresh?seconds=0.2")$body$job_id
  expect_identical(poll_until(api, id, function(b) b$status %in% c("completed", "failed"))$body$status, "completed")
  expect_identical(http(api, "GET", paste0("/jobs/", id, "/result"))$body$result, "HPO refreshed")
  expect_match(http(api, "GET", paste0("/jobs/", id, "/output"))$body$output, "part 10 of 10")
  expect_identical(http(api, "DELETE", paste0("/jobs/", id))$body$error, "JOB_FINISHED")
  expect_identical(http(api, "GET", "/jobs/no-such-id")$body$error, "JOB_NOT_FOUND")
})

test_that("the job id is the path's: a query's `id` never takes its place", {
  api <- local_api(workers = 1L, max_queued = 2L, extra = quote(demo_api(admin = FALSE)))
  mine <- http(api, "POST", "/analysis/refresh?seconds=60&source=mine")$body$job_id
  other <- http(api, "POST", "/analysis/refresh?seconds=60&source=other")$body$job_id
  for (path in c("", "/result", "/output")) {
    r <- http(api, "GET", sprintf("/jobs/%s%s?id=%s", mine, path, other))
    expect_identical(r$body$job_id, mine, info = path)
  }
  r <- http(api, "DELETE", sprintf("/jobs/%s?id=%s", mine, other))
  expect_identical(r$body$job_id, mine)
  expect_identical(http(api, "GET", paste0("/jobs/", mine))$body$status, "cancelled")
  expect_true(http(api, "GET", paste0("/jobs/", other))$body$status %in% c("pending", "running"))
  expect_identical(http(api, "DELETE", paste0("/jobs/", other))$body$status, "cancelled")
})

test_that("public routes show a failure's code and message, without paths, process ids or calls", {
  leaky <- quote(local({
    json <- plumber::serializer_unboxed_json()
    submit <- function(res, operation, executor) {
      environment(executor) <- globalenv()
      job_response(create_job(operation, list(), executor), res)
    }
    api |>
      plumber::pr_post("/crash", function(res) {
        submit(res, "crash", function(p) tools::pskill(Sys.getpid(), tools::SIGKILL))
      }, serializer = json) |>
      plumber::pr_post("/missing", function(res) {
        submit(res, "missing", function(p) normalizePath(file.path(tempdir(), "secret.csv"), mustWork = TRUE))
      }, serializer = json)
  }))
  api <- local_api(workers = 1L, extra = leaky)
  pid <- http(api, "GET", "/jobs/workers")$body$workers[[1L]]$pid
  expect_true(is.numeric(pid))

  id <- http(api, "POST", "/crash")$body$job_id
  st <- poll_until(api, id, function(b) b$status %in% c("completed", "failed"))$body
  expect_identical(st$error$code, "WORKER_CRASHED")
  expect_identical(sort(names(st$error)), c("code", "message"))
  expect_true(nzchar(st$error$message))
  expect_no_match(st$error$message, as.character(pid), fixed = TRUE)
  r <- http_as(api, "GET", paste0("/jobs/", id, "/result"))
  expect_identical(r$body$error, "JOB_FAILED")
  expect_identical(r$body$details$code, "WORKER_CRASHED")
  expect_no_match(r$text, as.character(pid), fixed = TRUE)

  id <- http(api, "POST", "/missing")$body$job_id
  st <- poll_until(api, id, function(b) b$status %in% c("completed", "failed"))
  expect_identical(st$body$error$code, "EXECUTION_ERROR")
  expect_identical(sort(names(st$body$error)), c("code", "message"))
  expect_match(st$body$error$message, "No such file")
  r <- http_as(api, "GET", paste0("/jobs/", id, "/result"))
  for (text in c(r$text, jsonlite::toJSON(st$body, auto_unbox = TRUE))) {
    expect_no_match(text, "secret.csv", fixed = TRUE)
    expect_no_match(text, "normalizePath", fixed = TRUE)
  }
  # The operator routes still list both failures, newest first.
  jobs <- http(api, "GET", "/jobs")$body$jobs
  expect_identical(vapply(jobs, function(j) j$error_code, ""), c("EXECUTION_ERROR", "WORKER_CRASHED"))
})

test_that("an authorize that refuses answers 403 on every route and runs none", {
  refusing <- quote(local({
    seen <- new.env()
    seen$calls <- list()
    refuse <- function(req, action, job_id) {
      seen$calls[[length(seen$calls) + 1L]] <- list(action = action, job_id = if (is.null(job_id)) "NULL" else job_id)
      FALSE
    }
    demo_api(admin = TRUE, authorize = refuse) |>
      pr_job_routes("/ops", admin = TRUE) |>
      plumber::pr_get("/seen", function() seen$calls, serializer = plumber::serializer_unboxed_json())
  }))
  api <- local_api(workers = 1L, extra = refusing)
  id <- http(api, "POST", "/analysis/refresh?seconds=120")$body$job_id
  status <- function() http(api, "GET", paste0("/ops/", id))$body$status
  expect_true(wait_until(function() identical(status(), "running"), timeout = 30))

  reqs <- list(c("GET", "/jobs", "list", "NULL"), c("GET", "/jobs/", "list", "NULL"),
               c("GET", "/jobs/workers", "workers", "NULL"), c("GET", "/jobs/<id>", "status", id),
               c("GET", "/jobs/<id>/result", "result", id), c("GET", "/jobs/<id>/output", "output", id),
               c("DELETE", "/jobs/<id>", "cancel", id), c("GET", "/jobs/no-such-id", "status", "no-such-id"))
  for (req in reqs) {
    path <- sub("<id>", id, req[[2L]], fixed = TRUE)
    r <- http_as(api, req[[1L]], path)
    expect_identical(r$status, 403L, info = path)
    expect_identical(r$body, list(error = "FORBIDDEN", message = "This request is not allowed."), info = path)
  }
  seen <- http(api, "GET", "/seen")$body
  expect_identical(vapply(seen, function(s) s$action, ""), vapply(reqs, `[[`, "", 3L))
  expect_identical(vapply(seen, function(s) s$job_id, ""), vapply(reqs, `[[`, "", 4L))
  # The refused cancel left the job running.
  expect_identical(status(), "running")
  expect_identical(http(api, "DELETE", paste0("/ops/", id))$body$status, "cancelled")
})

test_that("an authorize that fails or answers neither TRUE nor FALSE gives 500 without its message", {
  checking <- quote(demo_api(admin = TRUE, authorize = function(req, action, job_id) {
    mode <- if (is.null(req$HTTP_X_MODE)) "" else req$HTTP_X_MODE
    if (mode == "error") stop("token store /srv/secrets/tokens.db is locked by pid 4242")
    switch(mode, na = NA, string = "yes", two = c(TRUE, TRUE), TRUE)
  }) |> pr_job_routes("/ops", admin = TRUE))
  api <- local_api(workers = 1L, extra = checking)
  id <- http(api, "POST", "/analysis/refresh?seconds=120")$body$job_id
  status <- function() http(api, "GET", paste0("/ops/", id))$body$status
  expect_true(wait_until(function() identical(status(), "running"), timeout = 30))

  for (mode in c("error", "na", "string", "two")) {
    for (req in list(c("GET", "/jobs"), c("GET", "/jobs/workers"), c("GET", "/jobs/<id>"),
                     c("GET", "/jobs/<id>/result"), c("DELETE", "/jobs/<id>"))) {
      path <- sub("<id>", id, req[[2L]], fixed = TRUE)
      r <- http_as(api, req[[1L]], path, c("X-Mode" = mode))
      info <- paste(mode, req[[1L]], req[[2L]])
      expect_identical(r$status, 500L, info = info)
      expect_identical(r$body$error, "AUTHORIZE_FAILED", info = info)
      expect_identical(names(r$body), c("error", "message"), info = info)
      expect_no_match(r$text, "secrets|tokens|4242", info = info)
    }
  }
  expect_identical(status(), "running")
  # The API's log has what the client did not get.
  expect_true(wait_until(function() any(grepl("tokens.db is locked", readLines(api$log), fixed = TRUE)), timeout = 10))
  # TRUE lets the route run.
  expect_identical(http_as(api, "GET", paste0("/jobs/", id))$body$status, "running")
  expect_identical(http_as(api, "DELETE", paste0("/jobs/", id))$body$status, "cancelled")
})

test_that("authorize with plumber's req$user serves a job only to its submitter", {
  owned <- quote(local({
    owners <- new.env()
    sleeper <- function(p) {
      Sys.sleep(p$seconds)
      p$user
    }
    environment(sleeper) <- globalenv()
    authorize <- function(req, action, job_id) {
      if (is.null(req$user)) return(FALSE)
      if (is.null(job_id)) return(identical(req$user, "ops"))
      identical(owners[[job_id]], req$user)
    }
    demo_api(admin = TRUE, authorize = authorize) |>
      plumber::pr_filter("user", function(req) {
        req$user <- req$HTTP_X_USER
        plumber::forward()
      }) |>
      plumber::pr_post("/sleep", function(req, res, seconds = "120") {
        params <- list(seconds = as.numeric(seconds), user = req$user)
        dup <- check_duplicate_job("sleep", params)
        if (dup$duplicate) return(job_response(dup, res))
        job <- create_job("sleep", params, sleeper)
        if (!is.null(job$job_id)) owners[[job$job_id]] <- req$user
        job_response(job, res)
      }, serializer = plumber::serializer_unboxed_json())
  }))
  api <- local_api(workers = 2L, extra = owned)
  as_user <- function(user, method, path) http_as(api, method, path, if (!is.null(user)) c("X-User" = user))
  alice <- as_user("alice", "POST", "/sleep")
  expect_identical(alice$status, 202L)
  id <- alice$body$job_id
  expect_identical(as_user("alice", "GET", paste0("/jobs/", id))$status, 200L)
  for (user in list("bob", NULL)) {
    for (req in list(c("GET", ""), c("GET", "/result"), c("GET", "/output"), c("DELETE", ""))) {
      expect_identical(as_user(user, req[[1L]], paste0("/jobs/", id, req[[2L]]))$status, 403L, info = paste(user, req))
    }
  }
  expect_identical(as_user("alice", "GET", "/jobs/no-such-id")$status, 403L)
  expect_identical(as_user("alice", "GET", "/jobs")$status, 403L)
  ops <- as_user("ops", "GET", "/jobs")
  expect_identical(ops$status, 200L)
  expect_identical(ops$body$jobs[[1L]]$job_id, id)
  expect_identical(as_user("ops", "GET", "/jobs/workers")$status, 200L)

  # The submitter is in params, so bob's identical request is his own job,
  # and the 409 for alice's repeat points at hers.
  again <- as_user("alice", "POST", "/sleep")
  expect_identical(again$status, 409L)
  expect_identical(again$headers$location, paste0("/jobs/", id))
  bob <- as_user("bob", "POST", "/sleep")
  expect_identical(bob$status, 202L)
  expect_false(identical(bob$body$job_id, id))

  expect_identical(as_user("alice", "GET", paste0("/jobs/", id))$body$status, "running")
  expect_identical(as_user("alice", "DELETE", paste0("/jobs/", id))$body$status, "cancelled")
  expect_identical(as_user("bob", "DELETE", paste0("/jobs/", bob$body$job_id))$body$status, "cancelled")
})
