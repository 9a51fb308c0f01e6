#' Submit a job
#'
#' Returns at once; `executor_fn(params)` runs in a worker process. The
#' executor is serialized with its environment: define it where it captures
#' little (see the README), and pass what it needs through `params`.
#'
#' @param operation (string) the kind of job, for example "clustering".
#' @param params (any) the argument passed to `executor_fn`; also what the
#'   duplicate check hashes.
#' @param executor_fn (function) called as `executor_fn(params)` in a worker.
#' @param timeout_ms (number) time in milliseconds the job may run before its
#'   worker is killed and the job fails with `TIMEOUT`.
#' @param unique (logical) refuse the job when an identical one (same
#'   operation, same params bytes) is pending or running anywhere in the
#'   store, atomically with the insert: two replicas racing the same request
#'   create one job.
#' @param queue (string) the queue the job waits in; workers take jobs from
#'   the queues they serve (`start_workers(queues = )`).
#' @param priority (integer) higher runs first; first in, first out within a
#'   priority.
#' @param max_attempts (integer) runs allowed when the host running the job is
#'   lost or stopped (`HOST_LOST`, `SHUTDOWN`): with attempts left the job
#'   goes back to the queue instead of failing.
#' @param seed (integer or NULL) the job runs after `set.seed(seed)` under the
#'   RNG kinds `setup` left, so it draws the same numbers on any worker
#'   whatever ran there before; a retry draws them again. NULL (the default):
#'   a fresh random seed per job. The seed is not part of the duplicate check
#'   (operation and params): put it in `params` too if jobs that differ only by
#'   seed are not duplicates.
#' @return (list) `list(job_id, status = "accepted", estimated_seconds)`, or
#'   `list(error = "CAPACITY_EXCEEDED", message, retry_after = 60)` when the
#'   store holds its cap of active jobs, `list(error = "DUPLICATE_JOB",
#'   message, existing_job_id)` for a refused unique job,
#'   `list(error = "POOL_UNAVAILABLE", message, retry_after)` when no worker
#'   can start, `list(error = "STORE_UNAVAILABLE", message, retry_after)`
#'   when the store cannot be reached. What the store refuses for good is the
#'   caller's input, not an outage: `list(error = "PAYLOAD_TOO_LARGE",
#'   message, arg, limit_bytes)` when `params` (`arg`) are larger than the
#'   store takes in one write (MySQL's and MariaDB's `max_allowed_packet`,
#'   16 MiB by default on MariaDB), `list(error = "INVALID_INPUT", message)`
#'   when it refuses a value, such as an `operation` of more than 255
#'   characters in a database store. Nothing is written then.
#' @examples
#' start_workers(n = 1, wait = TRUE)
#' job <- create_job("square", 4, function(x) x^2)
#' job$status
#' wait_for_job(job$job_id, timeout_ms = 30000)$result
#' stop_workers()
#' @export
create_job <- function(operation, params, executor_fn, timeout_ms = 1800000, unique = FALSE,
                       queue = "default", priority = 0L, max_attempts = 1L, seed = NULL) {
  if (.state$in_worker) check_not_worker("create_job()") # the flag is read once, at load
  if (missing(params)) abort("argument", "`params` is missing: pass what the executor needs (NULL for nothing).", "params")
  if (!is.function(executor_fn)) {
    abort("argument", sprintf("`executor_fn` must be a function, not %s.", describe(executor_fn)),
          "executor_fn")
  }
  # The defaults skip their checks: they are the common case of a hot path.
  # The process, operation and timeout are checked by the native call, which
  # asks for R's checks (below) when they matter.
  if (!identical(unique, FALSE)) check_flag(unique, "unique")
  if (!identical(queue, "default")) check_queue(queue, "queue")
  if (!identical(priority, 0L)) check_priority(priority)
  if (!identical(max_attempts, 1L)) {
    check_number(max_attempts, "max_attempts", min = 1, integer = TRUE)
    if (max_attempts > 1000) abort("argument", sprintf("`max_attempts` must be a whole number from 1 to 1000, not %s.", describe(max_attempts)), "max_attempts")
  }
  if (!is.null(seed)) {
    check_seed(seed)
    executor_fn <- with_seed(executor_fn, seed)
  }
  # One call serializes both into Rust memory, submits, and lists the id in
  # jobs_env (one step for Ctrl-C too). R code can run inside it (serialize()
  # of some objects does); an interrupt there would jump through Rust frames
  # mid-submit: it waits.
  r <- suspendInterrupts(.Call(c_submit, operation, params, executor_fn, timeout_ms, queue, priority,
                               max_attempts, unique))
  if (is.list(r) && is.null(oldClass(r))) return(r) # accepted: list(job_id, status, estimated_seconds)
  submit_answer(r, sys.call(), operation, params, executor_fn, timeout_ms, queue, priority, max_attempts, unique)
}

# create_job()'s answers other than an accepted job: R's checks when the
# native call asks for them, the payload warning, a pool to start, and the
# contract's errors.
submit_answer <- function(r, call, operation, params, executor_fn, timeout_ms, queue, priority,
                          max_attempts, unique) {
  submit <- function() {
    suspendInterrupts(.Call(c_submit, operation, params, executor_fn, timeout_ms, queue, priority,
                            max_attempts, unique))
  }
  settle <- function(r) {
    if (inherits(r, "asyncjobs_check")) {
      check_process(call)
      operation <<- check_operation(operation, call = call)
      check_number(timeout_ms, "timeout_ms", min = 1, call = call)
      timeout_ms <<- as.double(timeout_ms) # a number with attributes, say
      r <- submit()
    }
    if (inherits(r, "asyncjobs_big_executor")) {
      check_payload(executor_fn, r[[2L]], operation)
      r <- r[[1L]]
    }
    r
  }
  r <- settle(r)
  if (is.list(r)) return(r)
  if (r[[1L]] == "stopped") {
    ensure_pool()
    r <- settle(submit())
    if (is.list(r)) return(r)
  }
  switch(r[[1L]],
    full = list(error = "CAPACITY_EXCEEDED",
                message = sprintf("Maximum %s concurrent jobs reached. Try again later.", r[[2L]]),
                retry_after = 60),
    duplicate = list(error = "DUPLICATE_JOB", message = "An identical job is already pending or running.",
                     existing_job_id = r[[2L]]),
    unavailable = list(error = "POOL_UNAVAILABLE",
                       message = sprintf("No worker is available: %s", r[[2L]]),
                       retry_after = 60),
    store_error = store_unavailable(r[[2L]]),
    too_large = list(error = "PAYLOAD_TOO_LARGE", message = sprintf("The job is too large for the store: %s.", r[[2L]]),
                     arg = r[[4L]], limit_bytes = as.numeric(r[[3L]])),
    invalid = list(error = "INVALID_INPUT", message = sprintf("The store refuses the job: %s.", r[[2L]])),
    check = abort("argument", "`operation` or `timeout_ms` cannot be used (see ?create_job).", call = call),
    abort("pool_stopped", "The worker pool stopped while the job was submitted.", call = call)
  )
}

check_priority <- function(x, call = sys.call(-1L)) {
  check_number(x, "priority", min = -1e6, integer = TRUE, call = call)
  if (x > 1e6) abort("argument", sprintf("`priority` must be a whole number from -1e6 to 1e6, not %s.", describe(x)), "priority", call)
}

# Queue names: UTF-8 of at most 255 bytes, without a comma (a pool's queues
# are kept, and shown by get_hosts(), comma-separated).
check_queue <- function(x, arg, call = sys.call(-1L)) {
  check_string(x, arg, call)
  if (nchar(x, type = "bytes") > 255L || !validUTF8(x)) {
    abort("argument", sprintf("`%s` must be valid UTF-8 of at most 255 bytes.", arg), arg, call)
  }
  if (grepl(",", x, fixed = TRUE)) {
    abort("argument", sprintf("`%s` must be queue names without a comma, not \"%s\": give several queues as a vector, as in c(\"a\", \"b\").",
                              arg, x), arg, call)
  }
}

# Raised from native code (rf::serialize) when R cannot serialize `arg` of
# create_job() or check_duplicate_job(), or, in a worker, a job's "result";
# `value` is what R was unwinding with (for an error caught by a tryCatch:
# list(condition, ...)).
serialize_error <- function(arg, value) {
  msg <- if (is.list(value) && inherits(value[[1L]], "condition")) {
    conditionMessage(value[[1L]])
  } else {
    sub("^Error[^:]*: *", "", trimws(geterrmessage()))
  }
  call <- NULL
  for (i in rev(seq_len(sys.nframe() - 1L))) {
    f <- sys.function(i)
    if (identical(f, create_job) || identical(f, check_duplicate_job)) {
      call <- sys.call(i)
      break
    }
  }
  if (arg == "result") abort("serialize", sprintf("The job's result cannot be serialized: %s", msg)) # in a worker
  abort("serialize", sprintf("`%s` cannot be serialized for a worker: %s", arg, msg), arg, call = call)
}

#' Status of a job
#'
#' @param job_id (string) the id [create_job()] returned.
#' @return (list) for an unknown id `list(error = "JOB_NOT_FOUND", message)`;
#'   for a pending job `list(job_id, status = "pending", step,
#'   estimated_seconds, retry_after = 5, position, submitted_at)`; for a running
#'   job `list(job_id, status = "running", step, estimated_seconds,
#'   retry_after = 5, progress = list(current, total), started_at,
#'   elapsed_seconds)`; for a finished job `list(job_id, status, completed_at,
#'   result, error, warnings, ...)` where `status` is "completed", "failed" or
#'   "cancelled" and a failed job's `error` is `list(code, message, call, class,
#'   traceback, warnings)`.
#' @examples
#' start_workers(n = 1, wait = TRUE)
#' job <- create_job("nap", 0.2, function(s) { Sys.sleep(s); "rested" })
#' get_job_status(job$job_id)$status # "pending" or "running"
#' wait_for_job(job$job_id, timeout_ms = 30000)
#' str(get_job_status(job$job_id)[c("status", "result")])
#' get_job_status("no-such-id")
#' stop_workers()
#' @export
get_job_status <- function(job_id) {
  # One call builds the contract's list (c_status in src/r/calls.rs); it checks
  # the id and the process itself, and asks for R's checks when they matter.
  r <- suspendInterrupts(.Call(c_status, job_id))
  if (is.null(oldClass(r))) r else status_value(job_id, r)
}

# What a native status call gave, when it is not the contract's list already.
status_value <- function(job_id, r, call = sys.call(-1L)) {
  if (inherits(r, "asyncjobs_check")) {
    check_process(call)
    check_job_id(job_id, call = call)
    r <- suspendInterrupts(.Call(c_status, job_id))
    if (is.null(oldClass(r))) return(r)
    if (inherits(r, "asyncjobs_check")) return(list(error = "JOB_NOT_FOUND", message = "Job ID not found"))
  }
  if (store_failed(r)) return(store_unavailable(r))
  status_of_written(job_id, r[[1L]]) # a record a caller wrote into jobs_env
}

status_of_written <- function(id, rec) {
  status <- rec$status %||% "completed"
  if (status %in% c("pending", "running")) {
    op <- rec$operation %||% ""
    return(list(job_id = id, status = status, step = rec$step %||% get_progress_message(op),
                estimated_seconds = rec$estimated_seconds %||% 30, retry_after = 5))
  }
  list(job_id = rec$job_id %||% id, status = status,
       completed_at = rec$completed_at %||% rec$submitted_at, result = rec$result,
       error = rec$error)
}

#' Is the same job already pending or running?
#'
#' @param operation (string) the job's operation.
#' @param params (any) the job's params; compared by the SHA-256 of their
#'   serialization, the same bytes [create_job()] stores.
#' @return (list) `list(duplicate = TRUE, existing_job_id)` or
#'   `list(duplicate = FALSE)`; `list(error = "STORE_UNAVAILABLE", message,
#'   retry_after)` when the store cannot be reached. With a shared store it
#'   reads the whole store.
#' @examples
#' start_workers(n = 1, wait = TRUE)
#' job <- create_job("nap", list(s = 30), function(p) Sys.sleep(p$s))
#' check_duplicate_job("nap", list(s = 30)) # duplicate = TRUE
#' check_duplicate_job("nap", list(s = 31)) # duplicate = FALSE
#' cancel_job(job$job_id)
#' stop_workers()
#' @export
check_duplicate_job <- function(operation, params) {
  # One call (c_duplicate in src/r/calls.rs) checks the process and the
  # operation itself, and asks for R's checks when they fail; it reads
  # `params` from this frame once they pass.
  r <- suspendInterrupts(.Call(c_duplicate, operation, environment()))
  if (inherits(r, "asyncjobs_check")) {
    check_process()
    operation <- check_operation(operation)
    r <- suspendInterrupts(.Call(c_duplicate, operation, environment()))
    if (inherits(r, "asyncjobs_check")) abort("argument", "`operation` cannot be used (see ?check_duplicate_job).", "operation")
  }
  if (store_failed(r)) store_unavailable(r) else r
}

#' Remove old finished jobs
#'
#' @param max_age_seconds (number) finished jobs whose `completed_at` (or
#'   `submitted_at`) is older than this many seconds are removed.
#' @return (invisible integer) the number of jobs removed. With a shared
#'   store, old jobs of every process are deleted, in batches of 1,000.
#' @examples
#' start_workers(n = 1, wait = TRUE)
#' job <- create_job("one", NULL, function(p) 1)
#' invisible(wait_for_job(job$job_id, timeout_ms = 30000))
#' cleanup_old_jobs(max_age_seconds = 0) # removes the finished job
#' get_job_status(job$job_id)$error # "JOB_NOT_FOUND"
#' stop_workers()
#' @export
cleanup_old_jobs <- function(max_age_seconds = 86400) {
  check_process()
  check_number(max_age_seconds, "max_age_seconds", min = 0)
  cutoff <- as.numeric(Sys.time()) - max_age_seconds
  # A shared store deletes in batches, one call each, so Ctrl-C is seen between them.
  batch <- if (identical(.state$store, "memory")) Inf else 1000
  n <- 0
  repeat {
    # Removes the jobs and their jobs_env entries; returns how many.
    got <- .Call(c_cleanup, as.numeric(max_age_seconds), batch)
    if (store_failed(got)) abort("store_unavailable", paste("Old jobs could not be removed:", got))
    n <- n + got
    if (got < batch) break
  }
  # Records callers wrote into jobs_env age the same way.
  n <- n + .Call(c_cleanup_written, cutoff)
  message(sprintf("Cleaned up %d old jobs", n))
  invisible(as.integer(n))
}

#' Wait for a job to finish
#'
#' Waits in short slices, so Ctrl-C interrupts it.
#'
#' @param job_id (string) the job's id.
#' @param timeout_ms (number) time in milliseconds to wait at most.
#' @return (list) what [get_job_status()] returns once the job has finished or
#'   the time is up.
#' @examples
#' start_workers(n = 1, wait = TRUE)
#' job <- create_job("sum", 1:10, sum)
#' wait_for_job(job$job_id, timeout_ms = 30000)$result
#' stop_workers()
#' @export
wait_for_job <- function(job_id, timeout_ms = 60000) {
  if (!identical(timeout_ms, 60000)) check_number(timeout_ms, "timeout_ms", min = 0, allow_inf = TRUE)
  # One native call per slice of at most 100 ms (so Ctrl-C is seen): NULL
  # while the job runs, its status once it has finished.
  slice <- if (timeout_ms < 100) timeout_ms else 100
  r <- suspendInterrupts(.Call(c_wait, job_id, slice))
  if (!is.null(r) && is.null(oldClass(r))) return(r)
  spent <- slice
  if (inherits(r, "asyncjobs_check")) {
    check_process()
    check_job_id(job_id)
    r <- NULL
    spent <- 0
  }
  left <- min(timeout_ms, 1e12) - spent
  deadline <- now_ms() + left
  while (is.null(r) && left > 0) {
    r <- suspendInterrupts(.Call(c_wait, job_id, min(left, 100)))
    left <- deadline - now_ms()
  }
  if (is.null(r)) return(get_job_status(job_id))
  if (is.null(oldClass(r))) r else status_value(job_id, r)
}

#' Cancel a job
#'
#' A pending job leaves the queue; a running job's worker (and every process
#' it started) is killed and replaced. The job becomes "cancelled" with
#' `error$code = "CANCELLED"`.
#'
#' With a shared store the job may run on another host: it is cancelled in
#' the store at once and its host stops the worker within about a second.
#'
#' @param job_id (string) the job's id.
#' @return (list) `list(job_id, status = "cancelled")`, or
#'   `list(error = "JOB_NOT_FOUND", message)`, or
#'   `list(error = "JOB_FINISHED", message, status)` for a finished job, or
#'   `list(error = "STORE_UNAVAILABLE", message, retry_after)`.
#' @examples
#' start_workers(n = 1, wait = TRUE)
#' job <- create_job("nap", 60, function(s) Sys.sleep(s))
#' cancel_job(job$job_id)
#' get_job_status(job$job_id)$status # "cancelled"
#' cancel_job(job$job_id)$error # "JOB_FINISHED"
#' stop_workers()
#' @export
cancel_job <- function(job_id) {
  check_process()
  check_job_id(job_id)
  r <- .Call(wrap__aj_cancel, job_id)
  switch(r[[1L]],
    store_error = store_unavailable(r[[2L]]),
    cancelled = list(job_id = job_id, status = "cancelled"),
    finished = list(error = "JOB_FINISHED", message = sprintf("Job already %s", r[[2L]]),
                    status = r[[2L]]),
    list(error = "JOB_NOT_FOUND", message = "Job ID not found"))
}

#' What a job printed
#'
#' @param job_id (string) the job's id.
#' @return (string) the last 64 KiB the job wrote to stdout and stderr
#'   (including `message()`), or `list(error = "JOB_NOT_FOUND", message)`.
#' @examples
#' start_workers(n = 1, wait = TRUE)
#' job <- create_job("chatty", NULL, function(p) { cat("step 1\n"); message("step 2"); 42 })
#' invisible(wait_for_job(job$job_id, timeout_ms = 30000))
#' cat(get_job_output(job$job_id))
#' stop_workers()
#' @export
get_job_output <- function(job_id) {
  check_process()
  check_job_id(job_id)
  out <- .Call(wrap__aj_output, job_id)
  if (store_failed(out)) return(store_unavailable(out))
  out %||% list(error = "JOB_NOT_FOUND", message = "Job ID not found")
}

#' Jobs in the registry, a page at a time
#'
#' The store filters, sorts and limits, so a page costs its own jobs, not
#' the store's: `list_jobs(status = "running", limit = 50)` reads at most 50
#' jobs however many finished ones are kept.
#'
#' @param status (character or NULL) keep jobs with these statuses.
#' @param operation (character or NULL) keep jobs of these operations.
#' @param limit (number) jobs in the page at most; `Inf` (the default) for all.
#' @param cursor (string or NULL) where the page starts: the
#'   `attr(, "next_cursor")` of the page before it, with the same `status`,
#'   `operation` and `newest_first`. NULL for the first page.
#' @param newest_first (logical) order by submit time, newest first; `FALSE`
#'   (the default) for oldest first.
#' @return (data.frame) `job_id`, `operation`, `status`, `submitted_at`,
#'   `started_at`, `completed_at`, `duration_seconds`, `error_code`, `queue`,
#'   `priority`, in submit order. `attr(, "next_cursor")` is where the next
#'   page starts (a string), or NULL when this page is the last.
#' @examples
#' start_workers(n = 1, max_queued = 1, wait = TRUE)
#' a <- create_job("one", NULL, function(p) 1)
#' b <- create_job("two", NULL, function(p) 2)
#' invisible(wait_for_job(b$job_id, timeout_ms = 30000))
#' list_jobs(operation = c("one", "two"))[, c("operation", "status")]
#' # Pages of one job, newest first:
#' first <- list_jobs(limit = 1, newest_first = TRUE)
#' list_jobs(limit = 1, newest_first = TRUE, cursor = attr(first, "next_cursor"))$operation
#' stop_workers()
#' @export
list_jobs <- function(status = NULL, operation = NULL, limit = Inf, cursor = NULL, newest_first = FALSE) {
  check_process()
  for (arg in c("status", "operation")) {
    v <- get(arg)
    if (!is.null(v) && (!is.character(v) || anyNA(v))) {
      abort("argument", sprintf("`%s` must be NULL or a character vector, not %s.", arg, describe(v)), arg)
    }
  }
  check_number(limit, "limit", min = 0, allow_inf = TRUE, integer = TRUE)
  if (!is.null(cursor)) check_string(cursor, "cursor")
  check_flag(newest_first, "newest_first")
  cols <- .Call(wrap__aj_list, status, operation, as.numeric(limit), cursor, newest_first)
  if (inherits(cols, "asyncjobs_store_refused")) {
    abort("argument", sprintf("`cursor` cannot be used: %s.", cols), "cursor")
  }
  if (store_failed(cols)) abort("store_unavailable", paste("Jobs could not be listed:", cols))
  df <- data.frame(job_id = cols$job_id, operation = cols$operation, status = cols$status,
                   submitted_at = .POSIXct(cols$submitted_at), started_at = .POSIXct(cols$started_at),
                   completed_at = .POSIXct(cols$completed_at),
                   duration_seconds = cols$completed_at - cols$started_at,
                   error_code = cols$error_code, queue = cols$queue,
                   priority = as.integer(cols$priority), stringsAsFactors = FALSE)
  attr(df, "next_cursor") <- cols$next_cursor
  df
}
