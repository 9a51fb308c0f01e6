#' Start the pool of R worker processes
#'
#' Starts `n` R processes supervised by the Rust core. Each runs `setup` once
#' before its first job, in the API's working directory and with its library
#' paths; a worker started later to replace one runs it again. Job code may
#' print, read stdin or crash: the pool's protocol runs on private pipes.
#'
#' @param n (integer) number of workers, the number of jobs that run at once
#'   here; 0 for a replica that submits and reads jobs but runs none.
#' @param setup (language, expression or function) code each worker runs
#'   before its first job, for example `quote({ library(dplyr) })`; `NULL` for none.
#' @param max_queued (integer) jobs accepted beyond `n` before [create_job()]
#'   answers `CAPACITY_EXCEEDED`; 0 keeps at most `n` jobs pending or running.
#'   Used when `max_active` is NULL.
#' @param max_jobs_per_worker (number) jobs a worker runs before it is
#'   replaced (between jobs); `Inf` for no limit.
#' @param max_worker_memory_mb (number) resident memory in MiB above which a
#'   worker is replaced after its job; `Inf` for no limit.
#' @param max_result_bytes (number) largest serialized result in bytes; a
#'   larger one fails the job with `RESULT_TOO_LARGE`.
#' @param echo_output (logical) also copy every job's output to this
#'   process's stderr, each line prefixed with the job id.
#' @param setup_timeout_ms (number) time in milliseconds a worker may take to
#'   start and run `setup`.
#' @param wait (logical) return only when every worker is ready (or has
#'   failed to start).
#' @param nice (integer) added to the workers' nice value, 0 to 19: busy
#'   workers then leave CPU to the API process first. See bench/RESULTS.md.
#' @param store (string or NULL) where jobs live: `"memory"` (this process
#'   only), `"sqlite:///abs/path/jobs.db"`, `"postgres://user@host:5432/db"` or
#'   `"mysql://user:pass@host:3306/db"` (shared by every process that opens
#'   it). NULL takes `getOption("asyncjobs.store")`, then the environment
#'   variable `ASYNCJOBS_STORE`, then memory. A password in the URL never
#'   appears in a message.
#' @param queues (character) the queues this pool's workers take jobs from;
#'   names without a comma.
#' @param max_active (number or NULL) the cap on active (pending + running)
#'   jobs, counted over the whole store and enforced atomically at submit.
#'   NULL: `n + max_queued` with the memory store; no cap with a shared store
#'   (where this process's `n` says nothing of the other hosts).
#' @param retention (number or NULL) seconds after which finished jobs are
#'   deleted by a timer in the pool (as [cleanup_old_jobs()] does); NULL keeps
#'   them until [cleanup_old_jobs()] is called.
#' @param log (logical) write a line on stderr, with a UTC timestamp, for
#'   every claim (store outages, rescues and drains are always logged).
#' @param handlers (character or NULL) R files that register job types
#'   ([register_job()]): each is sourced here, into the global environment,
#'   and in every worker after `setup`, so that the API and the workers know
#'   the same handlers. Start such a file with `library(asyncjobs)`. The pool advertises the operations it has handlers
#'   for in the store's host registry.
#' @return (invisible) the worker status, as [get_worker_status()].
#' @examples
#' start_workers(n = 2, setup = quote(library(stats)), wait = TRUE)
#' get_worker_status()[, c("slot", "state")]
#' MAX_CONCURRENT_JOBS
#' stop_workers()
#' @export
start_workers <- function(n = 8L, setup = NULL, max_queued = 0L, max_jobs_per_worker = Inf,
                          max_worker_memory_mb = Inf, max_result_bytes = 256 * 1024^2,
                          echo_output = FALSE, setup_timeout_ms = 600000, wait = FALSE, nice = 10L,
                          store = NULL, queues = "default", max_active = NULL, retention = NULL,
                          log = FALSE, handlers = NULL) {
  check_process(open_store = FALSE)
  check_not_worker("start_workers()")
  check_number(n, "n", min = 0, integer = TRUE)
  if (n > 1024) abort("argument", sprintf("`n` must be a whole number from 0 to 1024, not %s.", describe(n)), "n")
  check_number(max_queued, "max_queued", min = 0, integer = TRUE)
  check_number(max_jobs_per_worker, "max_jobs_per_worker", min = 1, allow_inf = TRUE, integer = TRUE)
  check_number(max_worker_memory_mb, "max_worker_memory_mb", min = 1, allow_inf = TRUE)
  check_number(max_result_bytes, "max_result_bytes", min = 1)
  if (max_result_bytes > 2^31 - 2^21) {
    abort("argument", "`max_result_bytes` must be below 2 GiB (a frame limit of the worker protocol).",
          "max_result_bytes")
  }
  check_number(setup_timeout_ms, "setup_timeout_ms", min = 1)
  check_number(nice, "nice", min = 0, integer = TRUE)
  if (nice > 19) abort("argument", sprintf("`nice` must be a whole number from 0 to 19, not %s.", describe(nice)), "nice")
  check_flag(echo_output, "echo_output")
  check_flag(wait, "wait")
  check_flag(log, "log")
  check_queues(queues)
  if (!is.null(max_active)) check_number(max_active, "max_active", min = 1, allow_inf = TRUE, integer = TRUE)
  if (!is.null(retention)) check_number(retention, "retention", min = 0)
  if (!is.null(setup) && !is.language(setup) && !is.expression(setup) && !is.function(setup)) {
    abort("argument", sprintf("`setup` must be NULL, a quoted expression or a function, not %s.",
                              describe(setup)), "setup")
  }
  if (!is.null(handlers) && (!is.character(handlers) || anyNA(handlers) || !all(file.exists(handlers)))) {
    abort("argument", sprintf("`handlers` must be NULL or paths of R files that exist, not %s.", describe(handlers)), "handlers")
  }
  if (pool_info()$running) {
    abort("pool_running", "A worker pool is already running; call stop_workers() first.")
  }
  use_store(store)
  handlers <- if (length(handlers)) normalizePath(handlers)
  for (f in handlers) sys.source(f, envir = globalenv(), keep.source = FALSE)
  key <- shared_key()
  poll_ms <- getOption("asyncjobs.poll_ms", 1000)
  check_number(poll_ms, "asyncjobs.poll_ms", min = 10)
  capacity <- max_active %||% (if (identical(.state$store, "memory")) n + max_queued else Inf)
  init <- serialize(list(libpaths = .libPaths(), setup = setup, max_result_bytes = max_result_bytes,
                         progress_interval_ms = 100, handlers = .state$handlers, handler_files = handlers), NULL)
  script <- system.file("worker.R", package = "asyncjobs", mustWork = TRUE)
  # Workers load the very asyncjobs this session loaded, wherever it came from.
  lib <- dirname(getNamespaceInfo("asyncjobs", "path"))
  args <- c("--no-echo", "--no-restore", "--no-save", "--no-init-file", paste0("--file=", script), "--args", lib)
  refused <- .Call(wrap__aj_start, file.path(R.home("bin"), "R"), args, getwd(), init, as.integer(n),
        as.numeric(max_jobs_per_worker), as.numeric(max_worker_memory_mb),
        as.numeric(max_result_bytes), echo_output, as.numeric(setup_timeout_ms), 1000, as.integer(nice),
        as.numeric(capacity), unique(queues), if (is.null(retention)) -1 else as.numeric(retention), log,
        as.numeric(poll_ms), handler_names(), key)
  if (length(refused)) abort(refused[[1L]], refused[[2L]], "store")
  .state$size <- as.integer(n)
  if (isTRUE(wait)) {
    deadline <- now_ms() + setup_timeout_ms + 5000
    repeat {
      st <- get_worker_status()
      if (all(st$state %in% c("idle", "busy", "failed")) || now_ms() > deadline) break
      Sys.sleep(0.02)
    }
  }
  invisible(get_worker_status())
}

check_queues <- function(queues, call = sys.call(-1L)) {
  if (!is.character(queues) || !length(queues) || anyNA(queues)) {
    abort("argument", sprintf("`queues` must be a character vector of queue names, not %s.", describe(queues)), "queues", call)
  }
  for (q in queues) check_queue(q, "queues", call)
}

#' Stop the pool
#'
#' Ends every worker and every process its job started. Jobs still pending or
#' running become `failed` with `error$code = "SHUTDOWN"`. [start_workers()]
#' works again afterwards; finished jobs stay in the registry.
#'
#' @param timeout_ms (number) time in milliseconds to wait for the workers to end.
#' @return (invisible logical) `TRUE` when the pool has stopped.
#' @examples
#' start_workers(n = 1, wait = TRUE)
#' job <- create_job("nap", 60, function(s) Sys.sleep(s))
#' stop_workers()
#' get_job_status(job$job_id)$error$code # "SHUTDOWN"
#'
#' @export
stop_workers <- function(timeout_ms = 30000) {
  check_process()
  check_number(timeout_ms, "timeout_ms", min = 0)
  invisible(stop_pool(timeout_ms))
}

stop_pool <- function(timeout_ms) {
  .Call(wrap__aj_stop_begin)
  deadline <- now_ms() + timeout_ms
  # Slices, so that Ctrl-C is seen between them.
  repeat {
    if (.Call(wrap__aj_stop_wait, 100)) return(TRUE)
    if (now_ms() > deadline) return(FALSE)
  }
}

pool_info <- function() .Call(wrap__aj_pool_info)

# The key that signs jobs carrying R code for a shared store: the option
# asyncjobs.key, else the environment variable ASYNCJOBS_KEY; raw(0) for none.
shared_key <- function(call = sys.call(-1L)) {
  key <- getOption("asyncjobs.key") %||% Sys.getenv("ASYNCJOBS_KEY", "")
  if (!is.character(key) || length(key) != 1L || is.na(key)) {
    abort("argument", "The option `asyncjobs.key` must be a single string.", "asyncjobs.key", call)
  }
  charToRaw(enc2utf8(key))
}

# Opens the store a URL names (NULL: the option, the environment, memory).
# An idle pool polls a shared store for work every
# getOption("asyncjobs.poll_ms", 1000) (PostgreSQL also wakes it by NOTIFY).
# Store calls wait at most getOption("asyncjobs.store_timeout_ms", 5000); a
# lease lasts getOption("asyncjobs.lease_seconds", 15) without renewal.
use_store <- function(url, call = sys.call(-1L)) {
  url <- url %||% getOption("asyncjobs.store")
  if (is.null(url)) url <- Sys.getenv("ASYNCJOBS_STORE", "")
  if (identical(url, "")) url <- "memory"
  check_string(url, "store", call)
  timeout <- getOption("asyncjobs.store_timeout_ms", 5000)
  lease <- getOption("asyncjobs.lease_seconds", 15)
  check_number(timeout, "asyncjobs.store_timeout_ms", min = 1, call = call)
  check_number(lease, "asyncjobs.lease_seconds", min = 2, call = call)
  r <- .Call(wrap__aj_open_store, url, as.numeric(timeout), as.numeric(lease) * 1000)
  if (r[[1L]] != "ok") abort("store_unavailable", r[[2L]], "store", call)
  .state$store <- r[[2L]]
  invisible(r[[2L]])
}

ensure_pool <- function() {
  if (!pool_info()$running) start_workers(n = .state$size)
}

#' Status of the worker processes
#'
#' The store the pool uses is `attr(, "store")` (its URL without password).
#'
#' @return (data.frame) one row per worker slot: `slot`, `pid`, `state`
#'   ("starting", "idle", "busy", "stopping", "failed" or "stopped"),
#'   `jobs_done` (by the current process), `spawned` (processes started in the
#'   slot), `job_id`, `rss_mb`, `last_exit` (how the previous process ended)
#'   `reason` (why a failed slot gave up) and `containment`, how the processes
#'   its jobs start are contained: "cgroup", "subreaper" or "pgroup" (see the
#'   README, "What is killed, when").
#' @examples
#' start_workers(n = 2, wait = TRUE)
#' get_worker_status()
#' attr(get_worker_status(), "store")
#' stop_workers()
#' @export
get_worker_status <- function() {
  check_process()
  cols <- .Call(wrap__aj_workers)
  df <- as.data.frame(cols, stringsAsFactors = FALSE)
  df$slot <- as.integer(df$slot)
  df$pid <- as.integer(df$pid)
  df$jobs_done <- as.integer(df$jobs_done)
  df$spawned <- as.integer(df$spawned)
  attr(df, "store") <- .state$store
  df
}

#' Serve jobs from a shared store, and nothing else
#'
#' A worker-only host: starts `n` workers on `store` and blocks, running the
#' jobs of `queues` that any API replica submits, until SIGTERM, SIGINT
#' (Ctrl-C) or SIGHUP. Then it drains: it claims nothing more, lets running
#' jobs finish for up to `grace_ms`, and stops; jobs still running then fail
#' with `SHUTDOWN`, or go back to the queue when their `max_attempts` allows.
#' It releases its leases and returns, so `Rscript -e
#' 'asyncjobs::run_workers("postgres://...")'` exits with status 0. Every
#' event (start, claims, rescues, drain, stop) is a line on stderr with a UTC
#' timestamp.
#'
#' @param store (string or NULL) the store URL, as in [start_workers()]; a
#'   worker-only host needs a shared store, not memory.
#' @param n (integer) workers, from 1.
#' @param setup (language, expression or function) as in [start_workers()].
#' @param queues (character) the queues served.
#' @param grace_ms (number) how long running jobs may finish after the signal.
#' @param handlers (character or NULL) R files that register job types, as in
#'   [start_workers()].
#' @param ... more arguments for [start_workers()] (`max_jobs_per_worker`,
#'   `nice`, `retention`, ...).
#' @return (invisible integer) the signal that ended the service.
#' @examples
#' # Blocks until SIGTERM, SIGINT or SIGHUP, so it is not run here. A worker
#' # host, as a container's command:
#' #   Rscript -e 'asyncjobs::run_workers(Sys.getenv("ASYNCJOBS_STORE"), n = 4)'
#' if (FALSE) {
#'   run_workers("postgres://api@db:5432/jobs", n = 4, queues = "maintenance")
#' }
#' @export
run_workers <- function(store = NULL, n = 8L, setup = NULL, queues = "default", grace_ms = 60000,
                        handlers = NULL, ...) {
  check_process(open_store = FALSE)
  check_not_worker("run_workers()")
  check_number(n, "n", min = 1, integer = TRUE)
  check_queues(queues)
  check_number(grace_ms, "grace_ms", min = 0)
  start_workers(n = n, setup = setup, store = store, queues = queues, wait = TRUE, log = TRUE,
                handlers = handlers, ...)
  if (identical(.state$store, "memory")) {
    stop_workers()
    abort("argument", "`store` must be a shared store (sqlite://, postgres:// or mysql://) for a worker-only host; jobs in memory reach no other process.", "store")
  }
  status <- get_worker_status()
  host_log(sprintf("serving queues %s on %s with %d workers (pids %s)", paste(queues, collapse = ","),
                   .state$store, nrow(status), paste(status$pid, collapse = " ")))
  repeat {
    sig <- .Call(wrap__aj_wait_signal, 250)
    if (sig > 0L) break
  }
  host_log(sprintf("signal %d: draining, %d job(s) running, grace %.0f s", sig, .Call(wrap__aj_drain), grace_ms / 1000))
  deadline <- now_ms() + grace_ms
  while (.Call(wrap__aj_busy) > 0L && now_ms() < deadline) Sys.sleep(0.1)
  left <- .Call(wrap__aj_busy)
  if (left > 0L) host_log(sprintf("grace over: %d job(s) end with SHUTDOWN or go back to the queue", left))
  stop_pool(30000)
  host_log("stopped")
  invisible(sig)
}

host_log <- function(msg) {
  cat(format(Sys.time(), "%Y-%m-%dT%H:%M:%SZ", tz = "UTC"), " asyncjobs: ", msg, "\n", sep = "", file = stderr())
}

#' The pools registered in the store
#'
#' Every pool that has started on the store (API processes with workers,
#' replicas with none, worker-only hosts), with its heartbeat.
#'
#' @return (data.frame) `host_id`, `hostname`, `pid`, `slots`, `queues`,
#'   `version`, `state` ("live", "lost": no heartbeat within a lease, or
#'   "stopped"), `running` (jobs under its leases), `started_at`,
#'   `heartbeat_at`, `stopped_at`. Hosts gone for a day are forgotten.
#' @examples
#' db <- tempfile(fileext = ".db")
#' start_workers(n = 1, store = paste0("sqlite://", db), wait = TRUE)
#' get_hosts()[, c("hostname", "slots", "state")]
#' stop_workers()
#' get_hosts()$state # "stopped"
#' unlink(paste0(db, c("", "-wal", "-shm")))
#' @export
get_hosts <- function() {
  check_process()
  cols <- .Call(wrap__aj_hosts)
  if (store_failed(cols)) abort("store_unavailable", paste("Hosts could not be listed:", cols))
  df <- as.data.frame(cols, stringsAsFactors = FALSE)
  for (col in c("pid", "slots", "running")) df[[col]] <- as.integer(df[[col]])
  for (col in c("started_at", "heartbeat_at", "stopped_at")) df[[col]] <- .POSIXct(df[[col]])
  df
}

# In a worker (inst/worker.R): arms the guard that ends the worker's process
# tree when the API dies, and returns the per-job hook: TRUE at a job's
# start, FALSE at its end (kills and reaps what the job started).
tree_hooks <- function() {
  .Call(wrap__aj_tree_guard)
  function(begin) .Call(wrap__aj_tree_job, begin)
}
