#' Submit a job
#'
#' Returns at once; the job runs in a worker process. Two kinds of job:
#'
#' - **A registered job type** (no `executor_fn`): `create_job(operation,
#'   params)` runs the handler [register_job()] registered for `operation`,
#'   as `fn(params)`. Params are stored as JSON (unless the handler declared
#'   `params = "r"`), and the handler's defaults for `queue`, `priority`,
#'   `timeout_ms` and `max_attempts` apply to the arguments not given. An
#'   operation that neither this process's pool nor any host of the store has
#'   a handler for is refused at once (`UNKNOWN_OPERATION`).
#' - **A closure** (the job manager's contract): `executor_fn(params)` runs in
#'   a worker. The executor is serialized with its environment: define it
#'   where it captures little (see the README), and pass what it needs
#'   through `params`. In a shared store, code from the store is run only
#'   when it is signed with the key the API and the hosts share (the
#'   environment variable `ASYNCJOBS_KEY` or the option `asyncjobs.key`):
#'   without a key, a closure job for a shared store is refused, and a host
#'   fails a job whose signature does not check with `CODE_NOT_TRUSTED`,
#'   without unserializing anything.
#'
#' Called inside a running job, `create_job()` submits a child job: its
#' `parent_id` is the running job, and a retried parent finds the children
#' its earlier run submitted instead of submitting them twice. Children are
#' not held to the cap on active jobs (they continue accepted work).
#'
#' @param operation (string) the kind of job, for example "clustering"; the
#'   registered job type to run when `executor_fn` is missing.
#' @param params (any) the argument passed to the handler or `executor_fn`;
#'   also what the duplicate check hashes.
#' @param executor_fn (function or missing) called as `executor_fn(params)`
#'   in a worker; missing (or NULL) runs the handler registered for
#'   `operation`.
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
#'   seed are not duplicates. Closures only.
#' @param depends_on (character or NULL) ids of jobs that must complete first:
#'   the job stays pending (its status lists what it `waiting_for`) until they
#'   have; when one fails or is cancelled, it fails with `DEPENDENCY_FAILED`
#'   naming it. Unknown ids are refused.
#' @param run_at (POSIXct or NULL) the job runs no earlier than this (a time
#'   in the past: at once; more than a year ahead is refused).
#' @param delay (number or NULL) the job runs no earlier than this many
#'   seconds from now (instead of `run_at`).
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
#'   characters in a database store. Nothing is written then. A bad request
#'   throws a classed condition whose `code` [job_response()] answers:
#'   `UNKNOWN_OPERATION`, `PARAMS_NOT_JSON`, `UNKNOWN_DEPENDENCY`, or
#'   `BAD_REQUEST` for a bad argument.
#' @examples
#' start_workers(n = 1, wait = TRUE)
#' job <- create_job("square", 4, function(x) x^2)
#' job$status
#' wait_for_job(job$job_id, timeout_ms = 30000)$result
#' # A second job that waits for the first, starting no earlier than in 1 s:
#' next_job <- create_job("add", 1, function(x) x + 1, depends_on = job$job_id, delay = 1)
#' wait_for_job(next_job$job_id, timeout_ms = 30000)$status
#' stop_workers()
#' @export
create_job <- function(operation, params, executor_fn, timeout_ms = 1800000, unique = FALSE,
                       queue = "default", priority = 0L, max_attempts = 1L, seed = NULL,
                       depends_on = NULL, run_at = NULL, delay = NULL) {
  if (.state$in_worker) return(create_child(sys.call(), environment())) # inside a job: a child
  if (missing(params)) abort("argument", "`params` is missing: pass what the executor needs (NULL for nothing).", "params")
  json <- FALSE
  if (missing(executor_fn) || is.null(executor_fn)) {
    # A registered job type: its defaults for the arguments not given.
    h <- if (is.character(operation) && length(operation) == 1L && !is.na(operation)) .state$handlers[[operation]]
    if (!is.null(h)) {
      if (missing(queue)) queue <- h$queue
      if (missing(priority)) priority <- h$priority
      if (missing(timeout_ms)) timeout_ms <- h$timeout_ms
      if (missing(max_attempts)) max_attempts <- h$max_attempts
    }
    if (!is.null(seed)) abort("argument", "`seed` is for closures; a handler sets its own seed.", "seed")
    json <- is.null(h) || identical(h$params, "json")
    executor_fn <- NULL
  } else if (!is.function(executor_fn)) {
    abort("argument", sprintf("`executor_fn` must be a function, not %s.", describe(executor_fn)),
          "executor_fn")
  }
  # The defaults skip their checks: they are the common case of a hot path.
  # The process, operation and timeout are checked by the native call, which
  # asks for R's checks (below) when they matter.
  if (!identical(unique, FALSE)) check_flag(unique, "unique")
  if (!identical(queue, "default")) check_queue(queue, "queue")
  if (!identical(priority, 0L)) check_priority(priority)
  if (!identical(max_attempts, 1L)) check_attempts(max_attempts)
  if (!is.null(seed)) {
    check_seed(seed)
    executor_fn <- with_seed(executor_fn, seed)
  }
  extra <- if (!is.null(depends_on) || !is.null(run_at) || !is.null(delay)) job_extra(depends_on, run_at, delay)
  if (json) {
    if (is.null(extra)) extra <- .json_extra else extra$json <- TRUE
    # The params as JSON: plain values are written in Rust, the rest by jsonlite.
    params <- .Call(c_json, params) %||% handler_params(params, TRUE, operation)
  }
  # One call serializes both into Rust memory, submits, and lists the id in
  # jobs_env (one step for Ctrl-C too). R code can run inside it (serialize()
  # of some objects does); an interrupt there would jump through Rust frames
  # mid-submit: it waits.
  r <- suspendInterrupts(.Call(c_submit, operation, params, executor_fn, timeout_ms, queue, priority,
                               max_attempts, unique, extra))
  if (is.list(r) && is.null(oldClass(r))) return(r) # accepted: list(job_id, status, estimated_seconds)
  submit_answer(r, sys.call(), operation, params, executor_fn, timeout_ms, queue, priority, max_attempts, unique, extra)
}

# What a job of a registered type with JSON params and no other option passes.
.json_extra <- list(json = TRUE, delay = 0, depends_on = NULL)

# What create_job() passes beyond the contract's arguments: list(json,
# delay, depends_on), checked.
job_extra <- function(depends_on, run_at, delay, call = sys.call(-1L)) {
  if (!is.null(depends_on) && (!is.character(depends_on) || anyNA(depends_on))) {
    abort("argument", sprintf("`depends_on` must be NULL or a character vector of job ids, not %s.", describe(depends_on)),
          "depends_on", call)
  }
  if (!is.null(run_at) && !is.null(delay)) abort("argument", "Give `run_at` or `delay`, not both.", "delay", call)
  if (!is.null(run_at)) {
    if (!inherits(run_at, "POSIXt") || length(run_at) != 1L || is.na(run_at)) {
      abort("argument", sprintf("`run_at` must be a single date-time (POSIXct), not %s.", describe(run_at)), "run_at", call)
    }
    delay <- max(0, as.numeric(run_at) - as.numeric(Sys.time()))
    arg <- "run_at"
  } else if (!is.null(delay)) {
    check_number(delay, "delay", min = 0, call = call)
    arg <- "delay"
  }
  if (!is.null(delay) && delay > .max_delay) {
    abort("argument", sprintf("`%s` is %.0f days ahead; a job runs at most a year after it is submitted.", arg, delay / 86400),
          arg, call)
  }
  list(json = FALSE, delay = if (is.null(delay)) 0 else as.numeric(delay), depends_on = unique(depends_on))
}

.max_delay <- 366 * 86400

# create_job()'s answers other than an accepted job: R's checks when the
# native call asks for them, the payload warning, a pool to start, and the
# contract's errors.
submit_answer <- function(r, call, operation, params, executor_fn, timeout_ms, queue, priority,
                          max_attempts, unique, extra = NULL) {
  submit <- function() {
    suspendInterrupts(.Call(c_submit, operation, params, executor_fn, timeout_ms, queue, priority,
                            max_attempts, unique, extra))
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
  submit_refused(r, call, operation, queue)
}

# A submit's answer other than an accepted job (from this process's pool or,
# inside a job, from the worker's): the contract's values for what a caller
# meets in operation, a classed condition for a bad request.
submit_refused <- function(r, call, operation, queue = "default") {
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
    unknown_operation = abort("unknown_operation", sprintf(
      "No handler is registered for the operation \"%s\" on the queue \"%s\": not in this process's pool, nor on any host of the store (see register_job()).",
      operation, queue), "operation", call, code = "UNKNOWN_OPERATION"),
    unknown_dependency = abort("unknown_dependency", sprintf(
      "`depends_on` names no job: \"%s\".", r[[2L]]), "depends_on", call, code = "UNKNOWN_DEPENDENCY"),
    not_signed = abort("no_key", paste(
      "A closure job (or R-serialized params) in a shared store must be signed: set the same key on every",
      "API replica and worker host (the environment variable ASYNCJOBS_KEY or the option asyncjobs.key)",
      "before start_workers(), or register the job type with register_job() and submit it by name."),
      "executor_fn", call, code = "NOT_SIGNED"),
    check = abort("argument", "`operation` or `timeout_ms` cannot be used (see ?create_job).", call = call),
    error = abort("submit", r[[3L]] %||% "The job could not be submitted.", call = call),
    abort("pool_stopped", "The worker pool stopped while the job was submitted.", call = call)
  )
}

# create_job() inside a running job: the worker's pool submits it, with the
# running job as its parent; the n-th call of a run gets the same id on a
# retry (src/pool/slot.rs, child_submit).
create_child <- function(call, env) {
  job <- .worker$job
  if (is.null(job)) check_not_worker("create_job()", call) # in setup, say
  a <- as.list(env)
  if (!"params" %in% names(a) || eval(quote(missing(params)), env)) {
    abort("argument", "`params` is missing: pass what the job needs (NULL for nothing).", "params", call)
  }
  a$operation <- check_operation(a$operation, call = call)
  handler <- eval(quote(missing(executor_fn)), env) || is.null(a$executor_fn)
  h <- if (handler) .state$handlers[[a$operation]]
  if (!is.null(h)) {
    for (arg in c("queue", "priority", "timeout_ms", "max_attempts")) {
      if (eval(call("missing", as.name(arg)), env)) a[[arg]] <- h[[arg]]
    }
  }
  check_flag(a$unique, "unique", call)
  check_queue(a$queue, "queue", call)
  check_priority(a$priority, call)
  check_attempts(a$max_attempts, call)
  check_number(a$timeout_ms, "timeout_ms", min = 1, call = call)
  extra <- job_extra(a$depends_on, a$run_at, a$delay, call)
  json <- handler && (is.null(h) || identical(h$params, "json"))
  if (handler) {
    params <- handler_params(a$params, json, a$operation, call = call)
    code <- raw()
    params <- if (json) charToRaw(enc2utf8(params)) else serialize(params, NULL, xdr = FALSE)
  } else {
    if (!is.function(a$executor_fn)) {
      abort("argument", sprintf("`executor_fn` must be a function, not %s.", describe(a$executor_fn)), "executor_fn", call)
    }
    fn <- if (is.null(a$seed)) a$executor_fn else { check_seed(a$seed, call); with_seed(a$executor_fn, a$seed) }
    code <- serialize(fn, NULL, xdr = FALSE)
    params <- serialize(a$params, NULL, xdr = FALSE)
  }
  .worker$children <- .worker$children + 1L
  fields <- c(.worker$children, a$operation, a$queue, format(a$priority, scientific = FALSE),
              format(a$timeout_ms, scientific = FALSE), a$max_attempts, as.integer(isTRUE(a$unique)),
              format(extra$delay, digits = 17), paste(extra$depends_on, collapse = ","),
              if (json) "json" else "r", length(code))
  r <- .Call(wrap__aj_w_submit, paste(fields, collapse = "\x1f"), c(code, params))
  if (identical(r[[1L]], "accepted")) {
    return(list(job_id = r[[2L]], status = "accepted", estimated_seconds = as.numeric(r[[3L]])))
  }
  submit_refused(r, call, a$operation, a$queue)
}

#' The job running in this process
#'
#' Inside a running job (in its worker), what the job is; elsewhere NULL.
#' A job that calls [create_job()] submits a child job, whose `parent_id` is
#' this job's id.
#'
#' @return (list or NULL) `list(job_id, operation, attempt, queue, parent_id,
#'   params)`: `attempt` counts from 1 (a retried job's is higher),
#'   `parent_id` is NULL for a job no job submitted.
#' @examples
#' current_job() # NULL: not inside a job
#' register_job("who_am_i", function(p) current_job()$operation)
#' start_workers(n = 1, wait = TRUE)
#' job <- create_job("who_am_i", NULL)
#' wait_for_job(job$job_id, timeout_ms = 30000)$result
#' stop_workers()
#' @export
current_job <- function() {
  if (is.null(.worker$job)) return(NULL)
  info <- .Call(wrap__aj_w_job)
  if (is.null(info)) return(NULL)
  c(info, list(params = .worker$params))
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
  # A registered job type's params are hashed as the JSON that is stored.
  h <- if (is.character(operation) && length(operation) == 1L && !is.na(operation)) .state$handlers[[operation]]
  json <- !is.null(h) && identical(h$params, "json")
  if (json) params <- handler_params(params, TRUE, operation)
  # One call (c_duplicate in src/r/calls.rs) checks the process and the
  # operation itself, and asks for R's checks when they fail; it reads
  # `params` from this frame once they pass.
  r <- suspendInterrupts(.Call(c_duplicate, operation, environment(), json))
  if (inherits(r, "asyncjobs_check")) {
    check_process()
    operation <- check_operation(operation)
    r <- suspendInterrupts(.Call(c_duplicate, operation, environment(), json))
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
#'   `priority`, `parent_id` (the job that submitted it), `schedule` and
#'   `slot_at` (the schedule that fired it, and for which slot), in submit
#'   order. `attr(, "next_cursor")` is where the next page starts (a string),
#'   or NULL when this page is the last.
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
                   priority = as.integer(cols$priority), parent_id = cols$parent_id,
                   schedule = cols$schedule, slot_at = .POSIXct(cols$slot_at), stringsAsFactors = FALSE)
  attr(df, "next_cursor") <- cols$next_cursor
  df
}
