#' Queues: pause, resume, cap and list them
#'
#' Settings held in the store, so they apply to every host: a paused queue
#' keeps its pending jobs (and takes new ones) but no host starts any until
#' it is resumed; jobs already running finish. A queue's cap is how many of
#' its jobs run at once across every host (`start_workers(max_active =
#' list(maintenance = 2))` sets it too); the rest wait their turn.
#'
#' @param queue (string) the queue's name.
#' @param max_running (number or NULL) the cap; NULL or `Inf` lifts it.
#' @return `pause_queue()`, `resume_queue()`, `set_queue_cap()`: (invisible
#'   list) `list(queue, paused)` or `list(queue, max_running)`, or
#'   `list(error = "STORE_UNAVAILABLE", ...)`. `list_queues()`: (data.frame)
#'   `queue`, `paused`, `max_running` (NA for none), `pending`, `running`,
#'   for every queue with a setting or an active job.
#' @examples
#' start_workers(n = 1, wait = TRUE)
#' pause_queue("default")
#' job <- create_job("waits", NULL, function(p) "ran")
#' get_job_status(job$job_id)$status # "pending"
#' resume_queue("default")
#' wait_for_job(job$job_id, timeout_ms = 30000)$result
#' list_queues()
#' stop_workers()
#' @name queues
NULL

#' @rdname queues
#' @export
pause_queue <- function(queue) set_queue(queue, paused = TRUE)

#' @rdname queues
#' @export
resume_queue <- function(queue) set_queue(queue, paused = FALSE)

#' @rdname queues
#' @export
set_queue_cap <- function(queue, max_running) {
  if (!is.null(max_running)) check_number(max_running, "max_running", min = 1, allow_inf = TRUE, integer = TRUE)
  set_queue(queue, max_running = if (is.null(max_running)) Inf else max_running)
}

set_queue <- function(queue, paused = NA, max_running = NaN, call = sys.call(-1L)) {
  check_process(call)
  check_queue(queue, "queue", call)
  r <- .Call(wrap__aj_queue_set, queue, paused, as.numeric(max_running))
  if (store_failed(r)) return(store_unavailable(r))
  out <- list(queue = queue)
  if (!is.na(paused)) out$paused <- paused
  if (!is.na(max_running)) out$max_running <- if (is.finite(max_running)) as.integer(max_running) else NULL
  invisible(out)
}

#' @rdname queues
#' @export
list_queues <- function() {
  check_process()
  cols <- .Call(wrap__aj_queues)
  if (store_failed(cols)) abort("store_unavailable", paste("Queues could not be listed:", cols))
  data.frame(queue = cols$queue, paused = cols$paused, max_running = cols$max_running,
             pending = cols$pending, running = cols$running, stringsAsFactors = FALSE)
}

#' Run a failed job again
#'
#' An admin's call: the job goes back to its queue under the same id, with
#' as many attempts again as it was submitted with, and runs as it was
#' submitted (its code and params are kept while it is failed). Its events
#' ([get_job_events()]) keep its history and record the retry.
#'
#' @param job_id (string) the job's id.
#' @param by (string or NULL) who asks, for the event.
#' @return (list) `list(job_id, status = "pending")`, or
#'   `list(error = "JOB_NOT_FOUND", message)`, `list(error = "JOB_NOT_FAILED",
#'   message, status)` for a job that is not failed, `list(error =
#'   "JOB_NOT_RETRYABLE", message)` when its code and params are no longer
#'   stored, or `list(error = "STORE_UNAVAILABLE", ...)`.
#' @examples
#' start_workers(n = 1, wait = TRUE)
#' job <- create_job("flaky", NULL, function(p) stop("not today"))
#' invisible(wait_for_job(job$job_id, timeout_ms = 30000))
#' retry_job(job$job_id, by = "admin")$status # "pending"
#' stop_workers()
#' @export
retry_job <- function(job_id, by = NULL) {
  check_process()
  check_job_id(job_id)
  if (!is.null(by)) check_string(by, "by")
  r <- .Call(wrap__aj_retry, job_id, by)
  switch(r[[1L]],
    retried = list(job_id = job_id, status = "pending"),
    store_error = store_unavailable(r[[2L]]),
    not_failed = list(error = "JOB_NOT_FAILED", message = sprintf("Job is %s; only a failed job is retried.", r[[2L]]),
                      status = r[[2L]]),
    no_payload = list(error = "JOB_NOT_RETRYABLE",
                      message = "The job's code and params are no longer stored (it failed under an older release)."),
    list(error = "JOB_NOT_FOUND", message = "Job ID not found"))
}

#' A job's events
#'
#' Every transition of the job, oldest first: `submitted`, `scheduled` (a
#' delayed job or a schedule's), `claimed` (by which host, which attempt),
#' `progress` (sampled: a new step at most every 5 s), `rescued` (its host
#' was lost and it went back to the queue) or `retried` (its host stopped, or
#' [retry_job()]), `cancelled` (by whom), `completed`, `failed`. Kept and
#' removed with the job.
#'
#' @param job_id (string) the job's id.
#' @return (data.frame) `at` (POSIXct), `event`, `host` (the pool's id, see
#'   [get_hosts()]), `attempt` (0 before the first claim) and `detail`; or
#'   `list(error = "JOB_NOT_FOUND", message)`, or `list(error =
#'   "STORE_UNAVAILABLE", ...)`.
#' @examples
#' start_workers(n = 1, wait = TRUE)
#' job <- create_job("square", 3, function(x) x^2)
#' invisible(wait_for_job(job$job_id, timeout_ms = 30000))
#' get_job_events(job$job_id)[, c("event", "attempt")]
#' stop_workers()
#' @export
get_job_events <- function(job_id) {
  check_process()
  check_job_id(job_id)
  cols <- .Call(wrap__aj_events, job_id)
  if (store_failed(cols)) return(store_unavailable(cols))
  if (is.null(cols)) return(list(error = "JOB_NOT_FOUND", message = "Job ID not found"))
  data.frame(at = .POSIXct(cols$at), event = cols$kind, host = cols$host, attempt = cols$attempt,
             detail = cols$detail, stringsAsFactors = FALSE)
}
