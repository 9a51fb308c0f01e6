# Helpers for the durable store suites: which stores to test, other R
# processes (replicas and worker hosts) on the same store, and cleanup.

# Closure jobs in a shared store are signed with a key every process shares;
# the processes the tests start inherit it.
Sys.setenv(ASYNCJOBS_KEY = "asyncjobs tests: the key every replica and host shares")

# SQLite always; PostgreSQL and MySQL/MariaDB when tools/test.sh found them.
store_urls <- function() {
  urls <- c(sqlite = paste0("sqlite://", tempfile("jobs-", fileext = ".db")))
  vars <- c(postgres = "ASYNCJOBS_TEST_POSTGRES", mysql = "ASYNCJOBS_TEST_MYSQL")
  for (engine in names(vars)) {
    url <- Sys.getenv(vars[[engine]], "")
    if (nzchar(url) && url != "skip") urls[[engine]] <- url
  }
  urls
}

# This process as a replica (or host) on `url` for the calling test; back on
# a fresh memory store when the test ends.
local_store <- function(url, n = 0L, ..., clean = TRUE, env = parent.frame()) {
  seen <- local_pool(n, store = url, ..., env = env)
  withr::defer(asyncjobs:::use_store("memory"), envir = env, priority = "last")
  # Queue settings live in the store: the next test starts without them.
  withr::defer(reset_queues(), envir = env)
  if (clean) cancel_active()
  invisible(seen)
}

# Reads a store from this process, which runs no pool meanwhile.
on_store <- function(url, f) {
  asyncjobs:::use_store(url)
  on.exit(asyncjobs:::use_store("memory"))
  f()
}

reset_queues <- function() {
  for (q in tryCatch(list_queues()$queue, error = function(e) character())) {
    resume_queue(q)
    set_queue_cap(q, NULL)
  }
}

# Cancels every active job in the store and removes finished ones, so that
# each test starts from an empty store whatever ran before.
cancel_active <- function() {
  active <- list_jobs(status = c("pending", "running"))
  for (id in active$job_id) cancel_job(id)
  suppressMessages(cleanup_old_jobs(0))
}

# Another R process running `start_workers(n, store = url, ...)`, then
# `then()` (its value is read with host$value()); `ready` once both are done.
# Killed, with every process it started, when the test ends.
start_host <- function(url, n = 1L, ..., then = NULL, lease = 3, options = list(), env = parent.frame()) {
  log <- tempfile("host-", fileext = ".log")
  out <- tempfile("host-", fileext = ".rds")
  proc <- callr::r_bg(function(url, n, args, then, lease, out, opts) {
    options(asyncjobs.lease_seconds = lease, asyncjobs.warn_payload_bytes = Inf)
    do.call(options, opts)
    library(asyncjobs)
    do.call(start_workers, c(list(n = n, store = url, wait = TRUE), args))
    saveRDS(if (is.function(then)) then(), out)
    cat("ready\n")
    repeat Sys.sleep(0.05)
  }, list(url, n, list(...), then, lease, out, options), stdout = log, stderr = "2>&1")
  ok <- wait_until(function() !proc$is_alive() || any(grepl("^ready", readLines(log, warn = FALSE))),
                   timeout = 60, interval = 0.05)
  if (!ok || !proc$is_alive()) stop("host did not start:\n", paste(readLines(log), collapse = "\n"))
  pids <- c(proc$get_pid(), live_children(proc$get_pid()))
  withr::defer({
    pids <- c(pids, if (proc$is_alive()) live_children(proc$get_pid()))
    if (proc$is_alive()) proc$kill()
    expect_all_dead(pids)
  }, envir = env)
  list(proc = proc, log = log, value = function() readRDS(out),
       workers = function() live_children(proc$get_pid()))
}

# Runs f(i) in `n` fresh R processes at the same moment, each on `url` with
# start_workers(n = 0, ...). Their values, in order.
race <- function(n, url, f, ...) {
  dir <- tempfile("race-")
  dir.create(dir)
  procs <- lapply(seq_len(n), function(i) callr::r_bg(function(i, f, url, args, dir) {
    library(asyncjobs)
    options(asyncjobs.warn_payload_bytes = Inf)
    do.call(start_workers, c(list(n = 0L, store = url), args))
    file.create(file.path(dir, paste0("ready-", i)))
    while (!file.exists(file.path(dir, "go"))) Sys.sleep(0.002)
    out <- f(i)
    stop_workers()
    out
  }, list(i, f, url, list(...), dir), stderr = "2>&1"))
  ready <- wait_until(function() length(list.files(dir, "^ready-")) == n || !all(vapply(procs, function(p) p$is_alive(), TRUE)),
                      timeout = 60)
  file.create(file.path(dir, "go"))
  lapply(procs, function(p) {
    p$wait(60000)
    p$get_result()
  })
}

# A job's executor: reports its worker's pid as progress, then sleeps.
sleeper <- function(p) {
  asyncjobs::report_progress(step = as.character(Sys.getpid()))
  Sys.sleep(p$seconds)
  p$value
}

# The pid a job reported as its progress step (jobs below report Sys.getpid()).
job_pid <- function(id) {
  st <- get_job_status(id)
  if (identical(st$status, "running")) suppressWarnings(as.integer(st$step)) else NA_integer_
}

# A TCP proxy (tcp-proxy.py) in front of the server `url` names: the URL
# through it, and start()/cut() to let connections through or sever them.
local_proxy <- function(url, env = parent.frame()) {
  skip_if(!nzchar(Sys.which("python3")), "python3 is needed for the network fault tests")
  m <- regmatches(url, regexec("^([a-z]+://[^@/]*@?)([^:/]+):([0-9]+)(/.*)$", url))[[1L]]
  port <- httpuv::randomPort()
  script <- normalizePath(test_path("tcp-proxy.py"))
  proxy <- new.env()
  proxy$url <- paste0(m[[2L]], "127.0.0.1:", port, m[[5L]])
  proxy$start <- function() {
    proxy$proc <- processx::process$new("python3", c(script, port, m[[3L]], m[[4L]]), stdout = "|", stderr = "2>&1")
    .allowed_children$pids <- c(.allowed_children$pids, proxy$proc$get_pid())
    out <- character()
    up <- wait_until(function() {
      if (proxy$proc$is_alive()) out <<- c(out, proxy$proc$read_output_lines())
      "listening" %in% out || !proxy$proc$is_alive()
    }, timeout = 20, interval = 0.05)
    if (!"listening" %in% out) stop("the TCP proxy did not start: ", paste(out, collapse = "\n"))
  }
  proxy$cut <- function() {
    proxy$proc$kill()
    proxy$proc$wait(5000)
  }
  proxy$start()
  withr::defer(if (proxy$proc$is_alive()) proxy$cut(), envir = env)
  proxy
}
