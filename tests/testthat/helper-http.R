# Helpers for the HTTP suites: a stand-in for plumber's `res`, and the demo API
# (inst/plumber/demo/plumber.R) run in a background R process for one test.

fake_res <- function() {
  res <- new.env()
  res$status <- 200L
  res$headers <- list()
  res$setHeader <- function(name, value) res$headers[[name]] <- value
  res
}

# Starts the demo API for the calling test. `extra` is a quoted expression
# evaluated in the server with `api` bound to the router; it must return the
# router. On exit the server is interrupted (SIGINT, as Ctrl-C) and every
# process it started must be gone.
local_api <- function(workers = 2L, max_queued = 2L, extra = NULL, env = parent.frame()) {
  skip_if_not_installed("plumber")
  skip_if_not_installed("callr")
  skip_if_not_installed("curl")
  port <- httpuv::randomPort()
  log <- tempfile("api-", fileext = ".log")
  proc <- callr::r_bg(function(api_file, port, workers, max_queued, extra) {
    source(api_file)
    options(asyncjobs.warn_payload_bytes = 256 * 1024)
    start_workers(n = workers, max_queued = max_queued, wait = TRUE)
    api <- demo_api()
    if (!is.null(extra)) api <- eval(extra)
    api <- plumber::pr_hook(api, "exit", function() stop_workers())
    plumber::pr_run(api, host = "127.0.0.1", port = port, docs = FALSE, quiet = TRUE)
  }, list(system.file("plumber", "demo", "plumber.R", package = "asyncjobs"), port, workers, max_queued, extra),
  stdout = log, stderr = "2>&1")
  api <- list(url = sprintf("http://127.0.0.1:%d", port), proc = proc, log = log)
  up <- wait_until(function() {
    !proc$is_alive() || tryCatch(http(api, "GET", "/health")$status == 200L, error = function(e) FALSE)
  }, timeout = 60, interval = 0.1)
  if (!up || !proc$is_alive()) stop("the demo API did not start:\n", paste(readLines(log), collapse = "\n"))
  withr::defer({
    pids <- c(proc$get_pid(), live_children(proc$get_pid()))
    proc$interrupt()
    if (!wait_until(function() !proc$is_alive(), timeout = 20)) proc$kill()
    expect_all_dead(pids)
  }, envir = env)
  api
}

# One request, failing after 30 s (a blocked API fails the test); the body
# parsed from JSON (NULL when empty).
http <- function(api, method, path) {
  h <- curl::new_handle(customrequest = method, timeout = 30, forbid_reuse = TRUE)
  if (method == "POST") curl::handle_setopt(h, post = TRUE, postfields = "")
  r <- curl::curl_fetch_memory(paste0(api$url, path), handle = h)
  text <- rawToChar(r$content)
  list(status = r$status_code, headers = curl::parse_headers_list(r$headers),
       body = if (nzchar(text)) jsonlite::fromJSON(text, simplifyVector = FALSE))
}

poll_until <- function(api, id, done, timeout = 60) {
  last <- NULL
  ok <- wait_until(function() {
    last <<- http(api, "GET", paste0("/jobs/", id))
    done(last$body)
  }, timeout = timeout, interval = 0.05)
  expect_true(ok, info = paste("last status:", last$body$status))
  last
}

iso_utc <- "^\\d{4}-\\d{2}-\\d{2}T\\d{2}:\\d{2}:\\d{2}\\.\\d{3}Z$"

# One request to a plumber router in this process (no server): what the
# routes answer with this process's store, for example during an outage.
route_call <- function(pr, method, path, query = "") {
  req <- new.env()
  req$REQUEST_METHOD <- method
  req$PATH_INFO <- path
  req$QUERY_STRING <- query
  req$HTTP_HOST <- "127.0.0.1"
  req$SERVER_NAME <- "127.0.0.1"
  req$SERVER_PORT <- "80"
  req$rook.input <- list(read = function(...) raw(), rewind = function() 0, read_lines = function() character())
  r <- pr$call(req)
  text <- if (is.raw(r$body)) rawToChar(r$body) else paste(r$body, collapse = "")
  list(status = r$status, headers = r$headers, text = text,
       body = if (nzchar(text)) jsonlite::fromJSON(text, simplifyVector = FALSE))
}
