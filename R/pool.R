#' Start the pool of R worker processes
#'
#' Starts `n` R processes supervised by the Rust core. Each runs `setup` once
#' before its first job, in the API's working directory and with its library
#' paths; a worker started later to replace one runs it again. Job code may
#' print, read stdin or crash: the pool's protocol runs on private pipes.
#'
#' @param n (integer) number of workers, the number of jobs that run at once.
#' @param setup (language, expression or function) code each worker runs
#'   before its first job, for example `quote({ library(dplyr) })`; `NULL` for none.
#' @param max_queued (integer) jobs accepted beyond `n` before [create_job()]
#'   answers `CAPACITY_EXCEEDED`; 0 keeps at most `n` jobs pending or running.
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
#' @return (invisible) the worker status, as [get_worker_status()].
#' @export
start_workers <- function(n = 8L, setup = NULL, max_queued = 0L, max_jobs_per_worker = Inf,
                          max_worker_memory_mb = Inf, max_result_bytes = 256 * 1024^2,
                          echo_output = FALSE, setup_timeout_ms = 600000, wait = FALSE, nice = 10L) {
  check_process()
  check_number(n, "n", min = 1, integer = TRUE)
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
  if (!is.logical(echo_output) || length(echo_output) != 1L || is.na(echo_output)) {
    abort("argument", "`echo_output` must be TRUE or FALSE.", "echo_output")
  }
  if (!is.null(setup) && !is.language(setup) && !is.expression(setup) && !is.function(setup)) {
    abort("argument", sprintf("`setup` must be NULL, a quoted expression or a function, not %s.",
                              describe(setup)), "setup")
  }
  if (pool_info()$running) {
    abort("pool_running", "A worker pool is already running; call stop_workers() first.")
  }
  init <- serialize(list(libpaths = .libPaths(), setup = setup, max_result_bytes = max_result_bytes,
                         progress_interval_ms = 100), NULL)
  script <- system.file("worker.R", package = "asyncjobs", mustWork = TRUE)
  args <- c("--no-echo", "--no-restore", "--no-save", "--no-init-file", paste0("--file=", script))
  .Call(wrap__aj_start, file.path(R.home("bin"), "R"), args, getwd(), init, as.integer(n),
        as.integer(max_queued), as.numeric(max_jobs_per_worker), as.numeric(max_worker_memory_mb),
        as.numeric(max_result_bytes), echo_output, as.numeric(setup_timeout_ms), 1000, as.integer(nice))
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

#' Stop the pool
#'
#' Ends every worker and every process its job started. Jobs still pending or
#' running become `failed` with `error$code = "SHUTDOWN"`. [start_workers()]
#' works again afterwards; finished jobs stay in the registry.
#'
#' @param timeout_ms (number) time in milliseconds to wait for the workers to end.
#' @return (invisible logical) `TRUE` when the pool has stopped.
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

ensure_pool <- function() {
  if (!pool_info()$running) start_workers(n = .state$size)
}

#' Status of the worker processes
#'
#' @return (data.frame) one row per worker slot: `slot`, `pid`, `state`
#'   ("starting", "idle", "busy", "stopping", "failed" or "stopped"),
#'   `jobs_done` (by the current process), `spawned` (processes started in the
#'   slot), `job_id`, `rss_mb`, `last_exit` (how the previous process ended)
#'   and `reason` (why a failed slot gave up).
#' @export
get_worker_status <- function() {
  check_process()
  cols <- .Call(wrap__aj_workers)
  df <- as.data.frame(cols, stringsAsFactors = FALSE)
  df$slot <- as.integer(df$slot)
  df$pid <- as.integer(df$pid)
  df$jobs_done <- as.integer(df$jobs_done)
  df$spawned <- as.integer(df$spawned)
  df
}
