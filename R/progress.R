#' Step message for an operation
#'
#' @param operation (string) the job's operation.
#' @return (string) the message set for it, or "Processing request...".
#' @examples
#' get_progress_message("clustering")
#' get_progress_message("anything else")
#' @export
get_progress_message <- function(operation) {
  msg <- if (is.character(operation) && length(operation) == 1L && !is.na(operation)) {
    .state$messages[[operation]]
  }
  msg %||% "Processing request..."
}

#' Set step messages per operation
#'
#' @param messages (named list of strings) `list(operation = "message", ...)`,
#'   added to or replacing the current ones; the built-in three stay unless replaced.
#' @return (invisible list) the previous messages.
#' @examples
#' old <- set_progress_messages(list(report = "Rendering the report..."))
#' get_progress_message("report")
#' @export
set_progress_messages <- function(messages) {
  ok <- is.list(messages) && length(messages) > 0L && !is.null(names(messages)) &&
    all(nzchar(names(messages))) &&
    all(vapply(messages, function(m) is.character(m) && length(m) == 1L && !is.na(m), TRUE))
  if (!ok) {
    abort("argument", "`messages` must be a named list of single strings, like list(clustering = \"...\").",
          "messages")
  }
  old <- .state$messages
  .state$messages[names(messages)] <- messages
  invisible(old)
}

#' Report progress from inside a job
#'
#' Sends the job's current step and progress to the API, where
#' [get_job_status()] shows them. Calls are throttled in the worker, so calling
#' it in a tight loop costs little. Outside a job it does nothing.
#'
#' @param step (string or NULL) what the job is doing now.
#' @param current (number or NULL) work done so far.
#' @param total (number or NULL) work to do in all.
#' @return (invisible logical) whether an update was sent.
#' @examples
#' # Outside a job it does nothing:
#' report_progress("Loading", 1, 3)
#' # Inside one, get_job_status() shows the step and the progress:
#' start_workers(n = 1, wait = TRUE)
#' job <- create_job("steps", 3, function(n) {
#'   for (i in seq_len(n)) {
#'     report_progress(sprintf("Step %d", i), current = i, total = n)
#'     Sys.sleep(0.3)
#'   }
#'   "done"
#' })
#' Sys.sleep(0.5)
#' get_job_status(job$job_id)[c("status", "step", "progress")]
#' invisible(wait_for_job(job$job_id, timeout_ms = 30000))
#' stop_workers()
#' @export
report_progress <- function(step = NULL, current = NULL, total = NULL) {
  check_optional_string(step, "step")
  for (arg in c("current", "total")) {
    v <- get(arg)
    if (!is.null(v) && (!is.numeric(v) || length(v) != 1L)) {
      abort("argument", sprintf("`%s` must be NULL or a single number, not %s.", arg, describe(v)), arg)
    }
  }
  emit <- .worker$emit
  if (is.null(emit)) return(invisible(FALSE))
  emit(step, current, total)
}
