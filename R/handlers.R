#' Register a job type by name
#'
#' A handler is a function run for every job of its `operation`:
#' `create_job(operation, params)` with no executor stores the operation's
#' name and its params as JSON, and a worker that has the handler runs
#' `fn(params)`. No code travels through the store, so a shared store needs
#' no key for these jobs (see [create_job()] for closures).
#'
#' Register handlers in a file that both the API and the workers load, and
#' name it once: `start_workers(handlers = "jobs.R")` (or `run_workers()` on a
#' worker-only host) sources it in this process and in every worker, before
#' they take jobs. Handlers registered in this process before
#' [start_workers()] are sent to its workers too, but a function they call
#' must then be loaded in the workers as well (by `setup`). Worker hosts
#' advertise the operations they have handlers for in the store's host
#' registry; [create_job()] refuses an operation no host (and no local pool)
#' has a handler for.
#'
#' @param operation (string) the job type's name, for example "omim_update".
#' @param fn (function) called as `fn(params)` in a worker; its value is the
#'   job's result.
#' @param queue (string) the queue its jobs go to unless [create_job()] says
#'   otherwise.
#' @param priority (integer) their priority (higher runs first).
#' @param timeout_ms (number) time in milliseconds a job may run.
#' @param max_attempts (integer) runs allowed when a host is lost or stopped.
#' @param params (string) `"json"` (the default): params are stored as JSON,
#'   readable by SQL and other languages, and must be values JSON can hold
#'   (jsonlite's conventions: what R sends is what R reads back); `"r"`:
#'   params are stored serialized, for values JSON cannot hold (a shared
#'   store then needs a key, as for closures).
#' @return (invisible string) `operation`.
#' @examples
#' register_job("square", function(p) p$x^2)
#' start_workers(n = 1, wait = TRUE)
#' job <- create_job("square", list(x = 4))
#' wait_for_job(job$job_id, timeout_ms = 30000)$result
#' stop_workers()
#' @export
register_job <- function(operation, fn, queue = "default", priority = 0L, timeout_ms = 1800000,
                         max_attempts = 1L, params = c("json", "r")) {
  operation <- check_operation(operation)
  if (!is.function(fn)) abort("argument", sprintf("`fn` must be a function, not %s.", describe(fn)), "fn")
  check_queue(queue, "queue")
  check_priority(priority)
  check_number(timeout_ms, "timeout_ms", min = 1)
  check_attempts(max_attempts)
  params <- match_choice(params, c("json", "r"), "params")
  if (!.state$in_worker && isTRUE(pool_info()$running)) {
    abort("pool_running", "Register handlers before start_workers(): the running pool's workers have theirs already. Call stop_workers() first, or name the file with start_workers(handlers = ).")
  }
  .state$handlers[[operation]] <- list(fn = fn, queue = queue, priority = as.integer(priority),
                                       timeout_ms = as.numeric(timeout_ms),
                                       max_attempts = as.integer(max_attempts), params = params)
  invisible(operation)
}

# One choice among `choices` (the first when `x` is the default vector).
match_choice <- function(x, choices, arg, call = sys.call(-1L)) {
  if (identical(x, choices)) return(choices[[1L]])
  if (!is.character(x) || length(x) != 1L || is.na(x) || !x %in% choices) {
    abort("argument", sprintf("`%s` must be one of %s, not %s.", arg,
                              paste0("\"", choices, "\"", collapse = ", "), describe(x)), arg, call)
  }
  x
}

check_attempts <- function(x, call = sys.call(-1L)) {
  check_number(x, "max_attempts", min = 1, integer = TRUE, call = call)
  if (x > 1000) abort("argument", sprintf("`max_attempts` must be a whole number from 1 to 1000, not %s.", describe(x)), "max_attempts", call)
}

# `x` as JSON text, as jsonlite writes it with asyncjobs' settings; the
# plain values are written in Rust (the same bytes, much faster). NULL when
# `x` holds what JSON cannot (an environment, a function, ...).
to_json <- function(x) {
  json <- .Call(c_json, x)
  if (!is.null(json)) return(json)
  if (!is.null(json_unfit(x))) return(NULL)
  need_jsonlite()
  json <- tryCatch(jsonlite::toJSON(x, auto_unbox = TRUE, digits = NA, null = "null", na = "null"),
                   error = function(e) NULL)
  if (is.null(json)) NULL else as.character(json)
}

# A job's JSON params as the handler gets them.
from_json_params <- function(text) {
  need_jsonlite()
  jsonlite::fromJSON(text, simplifyVector = TRUE)
}

# A JSON result, `{"value": ..., "warnings": [...]}`, as R's results read:
# list(value, warnings). Called from native code (fast::json_result).
from_json <- function(text) {
  need_jsonlite()
  x <- jsonlite::fromJSON(text, simplifyVector = TRUE)
  list(value = x$value, warnings = as.character(unlist(x$warnings)))
}

need_jsonlite <- function() {
  if (!requireNamespace("jsonlite", quietly = TRUE)) {
    abort("missing_package", "Handler jobs need the jsonlite package (Debian: r-cran-jsonlite).")
  }
}

# The params of a handler job of `operation` as submitted: JSON text, or
# the R value when the handler declared params = "r". The error names `arg`.
handler_params <- function(params, json, operation, arg = "params", call = sys.call(-1L)) {
  if (!json) return(params)
  text <- to_json(params)
  if (is.null(text)) {
    abort("params_not_json", sprintf(
      "`%s` cannot be written as JSON (it holds %s), as the handler of \"%s\" expects; register it with params = \"r\" for such values.",
      arg, json_unfit(params) %||% "a value jsonlite cannot write", operation), arg, call, code = "PARAMS_NOT_JSON")
  }
  text
}

# The operations whose handlers this process has.
handler_names <- function() sort(as.character(names(.state$handlers)))
