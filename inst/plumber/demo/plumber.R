# asyncjobs demo API: submit endpoints that accept at once (202) and run the
# work on the pool; job endpoints mounted at /jobs. Built by demo_api(); run
# by serve.R, or by plumber::plumb_api("asyncjobs", "demo") (see the end).
library(plumber)
library(asyncjobs)

set_progress_messages(list(kmeans = "Generating points...", refresh = "Contacting the source..."))

# Every submit also takes ?max_attempts=N (1 to 10): how many times the job
# may run when the host running it is lost (a shared store).
attempts <- function(x) {
  n <- suppressWarnings(as.integer(x))
  if (length(n) == 1L && !is.na(n) && n >= 1L && n <= 10L) n
}

# POST /analysis/kmeans?n=200000&k=6&seed=1: k-means for 2..k centres (CPU-bound).
submit_kmeans <- function(req, res, n = "200000", k = "6", seed = "1", max_attempts = "1") {
  params <- list(n = as.integer(n), k = as.integer(k), seed = as.integer(seed))
  if (anyNA(params) || params$n < 10 || params$k < 2 || params$k > 20) {
    return(bad_input(res, "n must be >= 10 and k between 2 and 20."))
  }
  tries <- attempts(max_attempts)
  if (is.null(tries)) return(bad_input(res, "max_attempts must be a whole number from 1 to 10."))
  executor <- function(p) {
    set.seed(p$seed)
    x <- matrix(rnorm(p$n * 2), ncol = 2) + sample(0:4, p$n, replace = TRUE) * 3
    withinss <- numeric()
    for (centres in 2:p$k) {
      report_progress(sprintf("k-means with %d centres", centres), centres - 1, p$k - 1)
      withinss[[as.character(centres)]] <- kmeans(x, centres, nstart = 5, iter.max = 100, algorithm = "Lloyd")$tot.withinss
    }
    list(n = p$n, withinss = round(withinss, 1))
  }
  # The executor is a closure, like every handler's; it must not carry
  # `req` and `res` (a request holds the whole router) to the worker.
  environment(executor) <- globalenv()
  # unique = TRUE: an identical job pending or running answers 409, atomically
  # with the insert (a check_duplicate_job() first would race other replicas).
  job_response(create_job("kmeans", params, executor, timeout_ms = 600000, max_attempts = tries, unique = TRUE), res)
}

# POST /analysis/refresh?seconds=3&fail=false: a slow job that prints and
# reports steps; fail=true makes it fail half-way.
submit_refresh <- function(req, res, seconds = "3", fail = "false", source = "HPO", max_attempts = "1") {
  params <- list(seconds = as.numeric(seconds), fail = identical(tolower(fail), "true"), source = source)
  if (is.na(params$seconds) || params$seconds < 0 || params$seconds > 3600) {
    return(bad_input(res, "seconds must be between 0 and 3600."))
  }
  tries <- attempts(max_attempts)
  if (is.null(tries)) return(bad_input(res, "max_attempts must be a whole number from 1 to 10."))
  executor <- function(p) {
    steps <- 10
    for (i in seq_len(steps)) {
      report_progress(sprintf("Downloading %s part %d", p$source, i), i, steps)
      cat(sprintf("part %d of %d\n", i, steps))
      if (p$fail && i > steps / 2) stop(sprintf("%s answered 503", p$source))
      Sys.sleep(p$seconds / steps)
    }
    sprintf("%s refreshed", p$source)
  }
  environment(executor) <- globalenv()
  job_response(create_job("refresh", params, executor, max_attempts = tries, unique = TRUE), res)
}

bad_input <- function(res, message) job_response(list(error = "BAD_REQUEST", message = message), res)

# The demo listens on 127.0.0.1 only, so it also mounts the operator routes
# (job list, workers, metrics) and the dashboard with its cancel buttons; an
# API on a public address keeps admin = FALSE. `pr` is the router the routes
# are added to.
demo_api <- function(prefix = "/jobs", admin = TRUE, authorize = NULL, dashboard = admin, allow_cancel = dashboard,
                     pr = plumber::pr()) {
  json <- serializer_unboxed_json()
  pr |>
    pr_get("/health", function() list(ok = TRUE, busy_workers = sum(get_worker_status()$state == "busy")),
           serializer = json) |>
    pr_post("/analysis/kmeans", submit_kmeans, serializer = json) |>
    pr_post("/analysis/refresh", submit_refresh, serializer = json) |>
    pr_job_routes(prefix, authorize = authorize, admin = admin, dashboard = dashboard, allow_cancel = allow_cancel,
                  submit_paths = c("/analysis/kmeans", "/analysis/refresh"))
}

# plumber::plumb_api("asyncjobs", "demo") |> plumber::pr_run(port = 8787):
# the routes above on the router plumb() makes, and, unless a pool is already
# running, a pool of ASYNCJOBS_DEMO_WORKERS (default 2) workers, stopped when
# the API exits.
#* @plumber
function(pr) {
  n <- as.integer(Sys.getenv("ASYNCJOBS_DEMO_WORKERS", "2"))
  started <- tryCatch({
    start_workers(n = n, setup = quote(library(stats)), max_queued = 2L * n)
    TRUE
  }, asyncjobs_error_pool_running = function(e) FALSE)
  demo_api(pr = pr)
  if (started) pr_hook(pr, "exit", function() stop_workers())
  pr
}
