#' Metrics for monitoring
#'
#' What this process counted since it loaded asyncjobs, plus the pool and the
#' store as they are now. Counted in the Rust core:
#'
#' | metric | type | labels |
#' |--------|------|--------|
#' | `asyncjobs_jobs_submitted_total` | counter | `operation` |
#' | `asyncjobs_jobs_rejected_total` (`CAPACITY_EXCEEDED`, `DUPLICATE_JOB`, `POOL_UNAVAILABLE`, `STORE_UNAVAILABLE`, `UNKNOWN_OPERATION`, `UNKNOWN_DEPENDENCY`, `NOT_SIGNED`) | counter | `code` |
#' | `asyncjobs_jobs_completed_total` | counter | `operation` |
#' | `asyncjobs_jobs_failed_total` | counter | `operation`, `code` |
#' | `asyncjobs_jobs_cancelled_total` | counter | |
#' | `asyncjobs_job_duration_seconds` (dispatch to outcome) | histogram | `operation`, `le` |
#' | `asyncjobs_worker_restarts_total` (`crashed`, `killed`, `recycled`, `setup_failed`) | counter | `reason` |
#' | `asyncjobs_store_errors_total` (what the failed call was for) | counter | `operation` |
#' | `asyncjobs_store_calls_total` (calls to a database store, by what they were for) | counter | `operation` |
#' | `asyncjobs_pool_size` | gauge | |
#' | `asyncjobs_workers` | gauge | `state` |
#' | `asyncjobs_jobs_pending`, `asyncjobs_jobs_running` (in the store; absent when it cannot say) | gauge | |
#' | `asyncjobs_store_up` (1 when the store answered the read) | gauge | |
#'
#' Counts are per process: an API counts the jobs it submits and cancels, a
#' pool the jobs its workers completed or failed. With a shared store, sum
#' the counters over every API replica and worker host; the pending and
#' running gauges are the store's, the same on every replica. A job that
#' ends without a worker's outcome (`SHUTDOWN`, `POOL_UNAVAILABLE`,
#' `HOST_LOST`) is not in `asyncjobs_jobs_failed_total`. An operation or error code beyond the
#' first 1000 of a metric is counted as `_other`.
#'
#' @param format (string) `"data.frame"` or `"prometheus"`, the text
#'   exposition format (version 0.0.4) that `GET /jobs/metrics` serves (see
#'   [pr_job_routes()]).
#' @return A data frame with columns `metric`, `type`, `operation`, `code`,
#'   `reason`, `state`, `le` (`NA` where a metric has no such label) and
#'   `value`; or for `"prometheus"` a single string.
#' @examples
#' m <- get_metrics()
#' m[m$metric == "asyncjobs_pool_size", ]
#' cat(get_metrics("prometheus"))
#' @export
get_metrics <- function(format = c("data.frame", "prometheus")) {
  if (missing(format)) format <- "data.frame"
  if (!is.character(format) || length(format) != 1L || is.na(format) || !format %in% c("data.frame", "prometheus")) {
    abort("argument", sprintf("`format` must be \"data.frame\" or \"prometheus\", not %s.", describe(format)), "format")
  }
  check_process()
  if (format == "prometheus") return(.Call(wrap__aj_metrics, TRUE))
  cols <- .Call(wrap__aj_metrics, FALSE)
  labels <- c("operation", "code", "reason", "state", "le")
  n <- length(cols$metric)
  for (l in labels) if (is.null(cols[[l]])) cols[[l]] <- rep(NA_character_, n)
  df <- data.frame(metric = cols$metric, type = cols$type, stringsAsFactors = FALSE)
  for (l in labels) df[[l]] <- as.character(cols[[l]])
  df$value <- as.numeric(cols$value)
  df
}
