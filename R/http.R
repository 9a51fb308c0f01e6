# The HTTP edge: every list asyncjobs returns maps to one status code and a
# few headers, so a plumber endpoint is `job_response(create_job(...), res)`.

# Status codes for the error codes asyncjobs returns.
.http_codes <- c(
  CAPACITY_EXCEEDED = 503L, POOL_UNAVAILABLE = 503L, STORE_UNAVAILABLE = 503L, JOB_NOT_FOUND = 404L,
  JOB_FINISHED = 409L, JOB_NOT_FINISHED = 409L, JOB_FAILED = 409L, DUPLICATE_JOB = 409L,
  BAD_REQUEST = 400L, INVALID_INPUT = 400L, PAYLOAD_TOO_LARGE = 413L, FORBIDDEN = 403L, NOT_FOUND = 404L,
  AUTHORIZE_FAILED = 500L, INTERNAL_ERROR = 500L,
  UNKNOWN_OPERATION = 400L, PARAMS_NOT_JSON = 400L, UNKNOWN_DEPENDENCY = 400L, NOT_SIGNED = 500L
)

#' Turn an asyncjobs result into an HTTP response
#'
#' Sets the status code and headers on a plumber response and returns the
#' body, ready for plumber's JSON serializers:
#'
#' | result                                   | status | headers               |
#' |------------------------------------------|--------|-----------------------|
#' | accepted ([create_job()])                | 202    | Location, Retry-After |
#' | duplicate ([check_duplicate_job()])      | 409    | Location (of the existing job) |
#' | `DUPLICATE_JOB` with `existing_job_id` ([create_job()]) | 409 | Location (of the existing job) |
#' | `CAPACITY_EXCEEDED`, `POOL_UNAVAILABLE`  | 503    | Retry-After           |
#' | `STORE_UNAVAILABLE` (the durable store cannot be reached) | 503 | Retry-After |
#' | `JOB_NOT_FOUND`, `NOT_FOUND`             | 404    |                       |
#' | `BAD_REQUEST`, `INVALID_INPUT` (the store refuses the job, [create_job()]) | 400 |  |
#' | `UNKNOWN_OPERATION`, `PARAMS_NOT_JSON`, `UNKNOWN_DEPENDENCY` (bad requests [create_job()] throws) | 400 |  |
#' | `PAYLOAD_TOO_LARGE` (the job is larger than the store takes, [create_job()]) | 413 |  |
#' | `NOT_SIGNED` (no key for code in a shared store) | 500 |                     |
#' | `FORBIDDEN` (`authorize` refused)        | 403    |                       |
#' | `AUTHORIZE_FAILED`, `INTERNAL_ERROR`     | 500    |                       |
#' | `JOB_FINISHED`, `JOB_NOT_FINISHED`, `JOB_FAILED` | 409 | Retry-After when not finished |
#' | pending or running job                   | 200    | Retry-After           |
#' | anything else                            | 200    |                       |
#'
#' A classed condition asyncjobs threw for a bad request (catch it with
#' `tryCatch(create_job(...), asyncjobs_error = identity)`) answers its `code`
#' and message. An error code not in the table gives 500. Accepted and duplicate bodies
#' gain `status_url`; any body's `retry_after` sets `Retry-After`. In the body,
#' date-times become ISO 8601 strings in UTC and `NULL` fields become `NA`
#' (JSON `null`).
#'
#' A `STORE_UNAVAILABLE` body says only that the service is unavailable: the
#' store's own message (which names the store's address) goes to the API's
#' log (stderr), unless `store_detail = TRUE`.
#'
#' @param x (list or condition) what [create_job()], [get_job_status()],
#'   [check_duplicate_job()], [cancel_job()], [get_job_result()] or
#'   [get_job_output()] returned, or the `asyncjobs_error` condition one threw.
#' @param res (PlumberResponse) the handler's `res`.
#' @param prefix (string) the path (or URL) the job routes are mounted at;
#'   `Location` is `<prefix>/<job_id>`.
#' @param store_detail (logical) keep the store's message in a
#'   `STORE_UNAVAILABLE` body, for operators.
#' @return (list) the response body.
#' @examples
#' # A stand-in for plumber's `res`:
#' res <- new.env()
#' res$headers <- list()
#' res$setHeader <- function(name, value) res$headers[[name]] <- value
#' job_response(list(error = "JOB_NOT_FOUND", message = "Job ID not found"), res)
#' res$status # 404
#' job_response(list(job_id = "42", status = "accepted", estimated_seconds = 30), res)
#' res$status # 202
#' res$headers$Location
#' @export
job_response <- function(x, res, prefix = "/jobs", store_detail = FALSE) {
  if (inherits(x, "asyncjobs_error")) x <- list(error = x$code %||% "BAD_REQUEST", message = conditionMessage(x))
  if (!is.list(x)) abort("argument", sprintf("`x` must be a list asyncjobs returned, not %s.", describe(x)), "x")
  if (!is.environment(res) || !is.function(res$setHeader)) {
    abort("argument", sprintf("`res` must be a plumber response (with `setHeader()`), not %s.", describe(res)), "res")
  }
  check_string(prefix, "prefix")
  check_flag(store_detail, "store_detail")
  if (!store_detail && identical(x$error, "STORE_UNAVAILABLE")) x <- unavailable_body(x)
  url <- function(id) paste0(sub("/+$", "", prefix), "/", id)
  status <- 200L
  if (is.character(x$error) && length(x$error) == 1L) {
    status <- if (x$error %in% names(.http_codes)) .http_codes[[x$error]] else 500L
  } else if (isTRUE(x$duplicate)) {
    status <- 409L
    x <- c(list(error = "DUPLICATE_JOB", message = "An identical job is already pending or running."), x)
  } else if (identical(x$status, "accepted")) {
    status <- 202L
    x$status_url <- url(x$job_id)
    res$setHeader("Location", x$status_url)
    x$retry_after <- x$retry_after %||% 5
  }
  # Both duplicate shapes point at the job already pending or running.
  if (identical(x$error, "DUPLICATE_JOB") && is.character(x$existing_job_id) &&
      length(x$existing_job_id) == 1L && !is.na(x$existing_job_id)) {
    x$status_url <- url(x$existing_job_id)
    res$setHeader("Location", x$status_url)
  }
  if (is.numeric(x$retry_after) && length(x$retry_after) == 1L && !is.na(x$retry_after)) {
    res$setHeader("Retry-After", as.character(ceiling(x$retry_after)))
  }
  res$status <- status
  json_ready(json_safe_result(x))
}

# A store outage as anyone may see it: the store's message (its address,
# the driver's words) goes to the log, at most once per 10 seconds.
unavailable_body <- function(x) {
  detail <- if (is.character(x$message)) x$message[[1L]] else ""
  last <- .state$outage_logged %||% -Inf
  if (nzchar(detail) && now_ms() - last > 10000) {
    .state$outage_logged <- now_ms()
    message(sprintf("asyncjobs: answered 503 STORE_UNAVAILABLE: %s", detail))
  }
  x$message <- "The service is unavailable for a moment. Try again later."
  x$retry_after <- x$retry_after %||% 5
  x
}

# A result JSON cannot carry (an environment, a function) would make the
# serializer fail and plumber answer text/plain: the body says why instead,
# and the job's status still reads.
json_safe_result <- function(x) {
  if (is.null(x$result)) return(x)
  problem <- json_unfit(x$result)
  if (is.null(problem)) return(x)
  x$result <- NULL
  x$result_error <- list(code = "RESULT_NOT_JSON", message = sprintf(
    "The result of job %s cannot be converted to JSON (it holds %s); read it with get_job_status() in R.",
    x$job_id %||% "?", problem))
  x
}

# What in `x` JSON cannot hold (an environment, a function, ...), or NULL.
# An atomic vector ends the walk at once, so large numeric results cost nothing.
json_unfit <- function(x) {
  if (is.atomic(x) || is.null(x)) return(NULL)
  if (is.list(x) && !isS4(x)) {
    for (el in x) {
      bad <- json_unfit(el)
      if (!is.null(bad)) return(bad)
    }
    return(NULL)
  }
  paste("a value of type", typeof(x))
}

#' The result of a finished job
#'
#' @param job_id (string) the job's id.
#' @return (list) `list(job_id, status = "completed", result)` for a completed
#'   job; `list(error = "JOB_NOT_FINISHED", message, status, retry_after)`
#'   while it is pending or running; `list(error = "JOB_FAILED", message,
#'   status, details)` for a failed or cancelled job, `details` being its
#'   `error`; `list(error = "JOB_NOT_FOUND", message)` for an unknown id.
#' @examples
#' start_workers(n = 1, wait = TRUE)
#' job <- create_job("square", 3, function(x) x^2)
#' invisible(wait_for_job(job$job_id, timeout_ms = 30000))
#' get_job_result(job$job_id)
#' failing <- create_job("fail", NULL, function(p) stop("no data"))
#' invisible(wait_for_job(failing$job_id, timeout_ms = 30000))
#' get_job_result(failing$job_id)$error # "JOB_FAILED"
#' stop_workers()
#' @export
get_job_result <- function(job_id) {
  st <- get_job_status(job_id)
  if (!is.null(st$error) && is.character(st$error)) return(st)
  switch(st$status,
    completed = list(job_id = st$job_id, status = "completed", result = st$result),
    pending = , running = list(error = "JOB_NOT_FINISHED", message = sprintf("Job is %s", st$status),
                               job_id = st$job_id, status = st$status, retry_after = st$retry_after),
    list(error = "JOB_FAILED", message = sprintf("Job %s: %s", st$status, st$error$message %||% "no result"),
         job_id = st$job_id, status = st$status, details = st$error))
}

#' Job endpoints for a plumber API
#'
#' `pr_job_routes(pr, prefix)` mounts the job endpoints on a router, the
#' plumber way (`pr() |> pr_job_routes("/jobs")`); `job_routes(prefix)` returns
#' them as a router of their own for `plumber::pr_mount()`. Paths, relative to
#' `prefix`:
#'
#' - `GET /<id>`: [get_job_status()].
#' - `GET /<id>/result`: [get_job_result()].
#' - `GET /<id>/output`: [get_job_output()], as `list(job_id, output)`.
#' - `DELETE /<id>`: [cancel_job()].
#'
#' and, with `admin = TRUE` only, the operator routes:
#'
#' - `GET /` lists a page of jobs, newest first, as `{count, jobs,
#'   next_cursor}`: `limit` (default 1000, at most 10,000) jobs at most,
#'   filtered by the query parameters `status` and `operation`
#'   (comma-separated values); `cursor` (a page's `next_cursor`) asks for the
#'   next page. The store filters, sorts and limits (see [list_jobs()]).
#'   `pr_job_routes()` also answers it without the trailing slash.
#' - `GET /workers`: the worker pool, as [get_worker_status()].
#' - `GET /hosts`: every pool registered in the store, as [get_hosts()].
#' - `GET /schedules`: the recurring jobs, as [list_schedules()], with their
#'   next fire.
#'
#' With `metrics = TRUE` (the default when `admin = TRUE`), `GET /metrics`
#' answers [get_metrics()] in the Prometheus text format; with `dashboard =
#' TRUE` (which needs `admin = TRUE`), `GET /dashboard` is a page that shows
#' the pool, the running jobs with their progress, the pending jobs and the
#' recent failures with their output, refreshed every 2 seconds from the JSON
#' routes. It offers to cancel jobs (after a confirmation) only with
#' `allow_cancel = TRUE`: the routes have no authentication of their own, so
#' put the page behind `authorize` or a proxy that has. `pr_job_routes()` also
#' adds [job_openapi()] to the API's OpenAPI spec.
#'
#' A job's id is the capability its submitter holds, so by default only the
#' routes addressed by an id are mounted, and the operator paths answer 404
#' (`GET /workers` is never taken for a job id). On these public routes a failed
#' job's `error` (and a result's `details`) keeps only `code` and the first
#' line of `message`, with absolute paths and worker process ids taken out;
#' calls, classes and tracebacks stay with [get_job_status()] in the API's
#' process. A handler error answers 500 `INTERNAL_ERROR` with no detail,
#' and a store outage 503 `STORE_UNAVAILABLE` saying only that (with
#' `Retry-After`): the store's error, and its address, go to the API's log
#' and to the operator routes. The job id is the path's alone: a query's or
#' a body's `id` is ignored.
#'
#' Bodies are JSON (plumber's unboxed JSON serializer); status codes and
#' headers follow [job_response()].
#'
#' @param pr (Plumber) the API's router.
#' @param prefix (string) where the endpoints are mounted, a path such as
#'   "/jobs"; also the start of `Location` URLs. `job_routes()` also takes a
#'   full URL, for an API behind a proxy that rewrites paths.
#' @param authorize (function or NULL) called as `authorize(req, action,
#'   job_id)` before every route runs, `action` being "status", "result",
#'   "output", "cancel", "list", "workers", "hosts", "schedules", "metrics" or "dashboard"
#'   and `job_id` `NULL` for the operator routes. `TRUE` runs the route;
#'   `FALSE` answers 403 `FORBIDDEN` (whether or not the job exists); an error
#'   or any other value answers 500 `AUTHORIZE_FAILED`, without its message
#'   (which goes to the API's log).
#' @param admin (logical) also mount the operator routes.
#' @param metrics (logical) mount `GET /metrics`.
#' @param dashboard (logical) mount `GET /dashboard`; needs `admin = TRUE`.
#' @param allow_cancel (logical) offer cancel buttons on the dashboard.
#' @param submit_paths (character) the API's `POST` routes that submit jobs,
#'   for the OpenAPI spec (see [job_openapi()]).
#' @return (Plumber) `pr` with the endpoints mounted, or for `job_routes()` a
#'   new router.
#' @examples
#' if (requireNamespace("plumber", quietly = TRUE)) {
#'   api <- plumber::pr() |>
#'     plumber::pr_post("/square", function(res, x = "2") {
#'       job_response(create_job("square", as.numeric(x), function(v) v^2), res)
#'     }) |>
#'     pr_job_routes("/jobs")
#'   print(api)
#'   # plumber::pr_run(api, port = 8000) serves it; the job routes alone:
#'   job_routes("/jobs", admin = TRUE)
#' }
#' @export
pr_job_routes <- function(pr, prefix = "/jobs", authorize = NULL, admin = FALSE,
                          metrics = admin, dashboard = FALSE, allow_cancel = FALSE, submit_paths = character()) {
  check_string(prefix, "prefix")
  check_route_args(authorize, admin)
  check_page_args(admin, metrics, dashboard, allow_cancel)
  if (!is.character(submit_paths) || anyNA(submit_paths) || !all(startsWith(submit_paths, "/"))) {
    abort("argument", sprintf("`submit_paths` must be paths starting with \"/\", not %s.", describe(submit_paths)), "submit_paths")
  }
  need_plumber()
  if (!inherits(pr, "Plumber")) abort("argument", sprintf("`pr` must be a plumber router, not %s.", describe(pr)), "pr")
  if (!startsWith(prefix, "/")) {
    abort("argument", sprintf("`prefix` must be a path starting with \"/\", not \"%s\"; job_routes() takes a full URL.", prefix), "prefix")
  }
  path <- sub("/+$", "", prefix)
  pr <- plumber::pr_mount(pr, if (nzchar(path)) path else "/",
                          job_routes(prefix, authorize, admin, metrics, dashboard, allow_cancel))
  if (admin && nzchar(path)) {
    pr <- plumber::pr_get(pr, path, list_route(route_runner(prefix, authorize)),
                          serializer = plumber::serializer_unboxed_json(na = "null"))
  }
  # Also plumber's entry for the list under the mount ("/jobs/"), described at "/jobs".
  hidden <- c(if (!admin) c("/workers", "/hosts", "/schedules"), if (!metrics) "/metrics", if (!dashboard) "/dashboard",
              if (nzchar(path)) "/")
  add_job_openapi(pr, job_openapi(prefix, admin, metrics, dashboard, submit_paths), paste0(path, hidden))
}

#' @rdname pr_job_routes
#' @export
job_routes <- function(prefix = "/jobs", authorize = NULL, admin = FALSE,
                       metrics = admin, dashboard = FALSE, allow_cancel = FALSE) {
  check_string(prefix, "prefix")
  check_route_args(authorize, admin)
  check_page_args(admin, metrics, dashboard, allow_cancel)
  need_plumber()
  run <- route_runner(prefix, authorize)
  # The id is the path's alone: plumber would let a query's or a body's `id`
  # take its place, past any rule keyed on the path.
  routes <- list(
    list("GET", "/<id>", function(req, res) {
      id <- path_id(req)
      run(req, res, "status", id, get_job_status(id))
    }),
    list("GET", "/<id>/result", function(req, res) {
      id <- path_id(req)
      run(req, res, "result", id, get_job_result(id))
    }),
    list("GET", "/<id>/output", function(req, res) {
      id <- path_id(req)
      run(req, res, "output", id, {
        out <- get_job_output(id)
        if (is.character(out)) list(job_id = id, output = out) else out
      })
    }),
    list("DELETE", "/<id>", function(req, res) {
      id <- path_id(req)
      run(req, res, "cancel", id, cancel_job(id))
    })
  )
  if (admin) {
    routes <- c(list(
      list("GET", "/", list_route(run)),
      list("GET", "/workers", function(req, res) {
        run(req, res, "workers", NULL, list(size = MAX_CONCURRENT_JOBS, workers = get_worker_status()))
      }),
      list("GET", "/hosts", function(req, res) run(req, res, "hosts", NULL, list(hosts = get_hosts()))),
      list("GET", "/schedules", function(req, res) run(req, res, "schedules", NULL, list(schedules = list_schedules())))
    ), routes)
  } else {
    # Unmounted, /workers is still no job id.
    hidden <- function(res) job_response(list(error = "NOT_FOUND", message = "Not found."), res, prefix)
    routes <- c(list(list("GET", "/workers", hidden), list("GET", "/hosts", hidden), list("GET", "/schedules", hidden)), routes)
  }
  routes <- c(page_routes(prefix, run, metrics, dashboard, allow_cancel), routes)
  json <- plumber::serializer_unboxed_json(na = "null")
  pr <- plumber::pr()
  for (r in routes) pr <- plumber::pr_handle(pr, r[[1L]], r[[2L]], r[[3L]], serializer = json)
  pr
}

# The job id in a route's path (plumber has decoded it).
path_id <- function(req) {
  id <- req$argsPath$id
  if (is.character(id) && length(id) == 1L && !is.na(id)) id else ""
}

check_route_args <- function(authorize, admin, call = sys.call(-1L)) {
  if (!is.null(authorize)) {
    args <- if (is.function(authorize)) names(formals(args(authorize)))
    if (!is.function(authorize) || !(length(args) == 3L || "..." %in% args)) {
      what <- if (is.function(authorize)) sprintf("a function of (%s)", paste(args, collapse = ", ")) else describe(authorize)
      abort("argument", sprintf("`authorize` must be NULL or a function of (req, action, job_id), not %s.", what),
            "authorize", call)
    }
  }
  if (!isTRUE(admin) && !isFALSE(admin)) {
    abort("argument", sprintf("`admin` must be TRUE or FALSE, not %s.", describe(admin)), "admin", call)
  }
}

# Runs one route: authorize() first, then `answer` (what asyncjobs returned,
# a promise forced only once the request is allowed) through job_response().
# Operator routes have no job id; the others show only what a client may see.
route_runner <- function(prefix, authorize) {
  function(req, res, action, job_id, answer) {
    if (!is.null(authorize)) {
      ok <- tryCatch(authorize(req, action, job_id), error = identity)
      if (!isTRUE(ok) && !isFALSE(ok)) {
        log_route_error(action, if (inherits(ok, "error")) conditionMessage(ok) else
          sprintf("authorize() returned %s, not TRUE or FALSE", describe(ok)))
        x <- list(error = "AUTHORIZE_FAILED", message = "The request could not be authorized.")
        return(job_response(x, res, prefix))
      }
      if (isFALSE(ok)) {
        return(job_response(list(error = "FORBIDDEN", message = "This request is not allowed."), res, prefix))
      }
    }
    if (is.null(job_id)) return(job_response(answer, res, prefix, store_detail = TRUE))
    x <- tryCatch(answer, error = identity)
    if (inherits(x, "error")) {
      log_route_error(action, conditionMessage(x))
      x <- list(error = "INTERNAL_ERROR", message = "The request failed.")
    }
    job_response(public_body(x), res, prefix)
  }
}

# The API's log gets the detail that the client's body leaves out.
log_route_error <- function(action, message) {
  message(sprintf("asyncjobs: the \"%s\" job route failed: %s", action, message))
}

# A failure as a public route shows it: code and message only.
public_body <- function(x) {
  if (is.character(x[["message"]])) x[["message"]] <- public_text(x[["message"]])
  for (field in c("error", "details")) {
    e <- x[[field]]
    if (is.list(e)) x[[field]] <- list(code = e[["code"]], message = public_text(e[["message"]]))
  }
  x
}

# The first line, without absolute paths or worker process ids.
public_text <- function(text) {
  if (!is.character(text) || !length(text)) return(text)
  text <- sub("\n.*", "", text[[1L]])
  text <- gsub("(^|[[:space:]'\"`(=,])/[^[:space:]'\"`(),;]+", "\\1<path>", text)
  gsub("\\b(pid|worker process|worker)[ :=]+[0-9]+", "\\1", text, ignore.case = TRUE, perl = TRUE)
}

# GET /: a page of jobs, newest first, filtered, sorted and limited by the store.
list_route <- function(run) {
  function(req, res, status = "", operation = "", limit = "1000", cursor = "") {
    run(req, res, "list", NULL, {
      n <- suppressWarnings(as.numeric(limit))
      if (length(n) != 1L || is.na(n) || n < 0 || n > 10000) {
        list(error = "BAD_REQUEST", message = "`limit` must be a number from 0 to 10000.")
      } else if (!all(validUTF8(c(status, operation, cursor)))) {
        list(error = "BAD_REQUEST", message = "`status`, `operation` and `cursor` must be valid UTF-8.")
      } else {
        jobs <- tryCatch(
          list_jobs(status = split_query(status), operation = split_query(operation), limit = floor(n),
                    cursor = if (length(cursor) == 1L && nzchar(cursor)) cursor, newest_first = TRUE),
          asyncjobs_error_argument = function(e) list(error = "BAD_REQUEST", message = conditionMessage(e)),
          asyncjobs_error_store_unavailable = function(e) store_unavailable(conditionMessage(e)))
        if (is.data.frame(jobs)) {
          list(count = nrow(jobs), jobs = jobs, next_cursor = attr(jobs, "next_cursor"))
        } else {
          jobs
        }
      }
    })
  }
}

need_plumber <- function(call = sys.call(-1L)) {
  if (!requireNamespace("plumber", quietly = TRUE)) {
    abort("missing_package", "The job routes need the plumber package (Debian: r-cran-plumber).", call = call)
  }
}

split_query <- function(x) {
  x <- unlist(strsplit(paste(x, collapse = ","), ",", fixed = TRUE))
  x <- trimws(x[nzchar(trimws(x))])
  if (length(x)) x
}

# Plain values for any JSON serializer: ISO 8601 date-times; NULL and a single
# NA as logical NA, which jsonlite writes as null (a numeric NA would be "NA").
json_ready <- function(x) {
  if (inherits(x, "POSIXt")) return(iso8601(x))
  if (is.atomic(x) && length(x) == 1L && is.na(x)) return(NA)
  if (is.data.frame(x)) {
    x[] <- lapply(x, function(col) if (inherits(col, "POSIXt")) iso8601(col) else col)
    return(x)
  }
  if (is.list(x) && !is.object(x)) {
    nulls <- vapply(x, is.null, TRUE)
    x[!nulls] <- lapply(x[!nulls], json_ready)
    x[nulls] <- list(NA)
  }
  x
}

iso8601 <- function(x) {
  out <- format(as.POSIXct(x), "%Y-%m-%dT%H:%M:%OS3Z", tz = "UTC")
  out[is.na(x)] <- NA_character_
  out
}
