# The routes that answer other than JSON: GET /metrics (Prometheus text) and
# GET /dashboard (one HTML page that reads the JSON routes).

check_page_args <- function(admin, metrics, dashboard, allow_cancel, call = sys.call(-1L)) {
  check_flag(metrics, "metrics", call)
  check_flag(dashboard, "dashboard", call)
  check_flag(allow_cancel, "allow_cancel", call)
  if (dashboard && !isTRUE(admin)) {
    abort("argument", "`dashboard = TRUE` needs `admin = TRUE`: the page reads the job list and the workers from the operator routes.",
          "dashboard", call)
  }
  if (allow_cancel && !dashboard) {
    abort("argument", "`allow_cancel` puts cancel buttons on the dashboard; it needs `dashboard = TRUE`.", "allow_cancel", call)
  }
}

# The metrics and dashboard routes, or where they are not mounted, 404s (so
# that their paths are never taken for job ids).
page_routes <- function(prefix, run, metrics, dashboard, allow_cancel) {
  hidden <- function(res) job_response(list(error = "NOT_FOUND", message = "Not found."), res, prefix)
  metrics_route <- if (metrics) function(req, res) {
    refused <- run(req, res, "metrics", NULL, list())
    if (!identical(res$status, 200L)) return(refused)
    raw_response(res, get_metrics("prometheus"), "text/plain; version=0.0.4; charset=utf-8")
  } else hidden
  dashboard_route <- if (dashboard) {
    page <- dashboard_html(prefix, allow_cancel)
    function(req, res) {
      refused <- run(req, res, "dashboard", NULL, list())
      if (!identical(res$status, 200L)) return(refused)
      # Its own script and styles only; it talks to this origin alone and is
      # never framed (a framed page could be clicked through to a cancel).
      res$setHeader("Content-Security-Policy", paste(
        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:;",
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"))
      res$setHeader("X-Frame-Options", "DENY")
      res$setHeader("X-Content-Type-Options", "nosniff")
      res$setHeader("Cache-Control", "no-store")
      raw_response(res, page, "text/html; charset=utf-8")
    }
  } else hidden
  list(list("GET", "/metrics", metrics_route), list("GET", "/dashboard", dashboard_route))
}

# A body sent as is: plumber skips the serializer when a handler returns `res`.
raw_response <- function(res, body, type) {
  res$status <- 200L
  res$setHeader("Content-Type", type)
  res$body <- body
  res
}

# The page with its settings: where the job routes are, whether to offer cancel.
dashboard_html <- function(prefix, allow_cancel) {
  file <- system.file("dashboard", "index.html", package = "asyncjobs")
  if (!nzchar(file)) abort("missing_file", "The dashboard page (inst/dashboard/index.html) is missing from the installed package.")
  html <- paste(readLines(file, encoding = "UTF-8", warn = FALSE), collapse = "\n")
  config <- jsonlite::toJSON(list(prefix = sub("/+$", "", prefix), allowCancel = allow_cancel), auto_unbox = TRUE)
  # JSON inside <script>: no "</script>" or "<!--" can end it early.
  config <- gsub("<", "\\\\u003c", config)
  sub("{{CONFIG}}", config, html, fixed = TRUE)
}
