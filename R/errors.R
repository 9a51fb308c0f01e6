# Misuse of the API throws a classed condition naming the argument; outcomes
# of jobs are values (lists with an error code), never conditions.

# `code` is what job_response() answers over HTTP for it: the bad requests a
# client can make (an unknown operation, params that are not JSON, ...) say
# which; any other misuse is BAD_REQUEST.
abort <- function(kind, message, arg = NULL, call = sys.call(-1L), code = "BAD_REQUEST", ...) {
  cnd <- structure(
    class = c(paste0("asyncjobs_error_", kind), "asyncjobs_error", "error", "condition"),
    list(message = message, call = call, arg = arg, code = code, ...))
  stop(cnd)
}

check_string <- function(x, arg, call = sys.call(-1L), kind = "argument") {
  if (!is.character(x) || length(x) != 1L || is.na(x) || !nzchar(x)) {
    abort(kind, sprintf("`%s` must be a single non-empty string, not %s.", arg, describe(x)),
          arg, call)
  }
}

check_job_id <- function(x, arg = "job_id", call = sys.call(-1L)) {
  check_string(x, arg, call, kind = "job_id")
}

check_number <- function(x, arg, min = 0, allow_inf = FALSE, integer = FALSE, call = sys.call(-1L)) {
  ok <- is.numeric(x) && length(x) == 1L && !is.na(x) && x >= min &&
    (allow_inf || is.finite(x)) && (!integer || !is.finite(x) || x == round(x))
  if (!ok) {
    what <- if (integer) "a whole number" else "a number"
    abort("argument", sprintf("`%s` must be %s >= %s%s, not %s.", arg, what, format(min),
                              if (allow_inf) " (Inf allowed)" else "", describe(x)), arg, call)
  }
}

check_optional_string <- function(x, arg, call = sys.call(-1L)) {
  if (!is.null(x)) check_string(x, arg, call)
}

describe <- function(x) {
  if (is.null(x)) return("NULL")
  if (is.function(x)) return("a function")
  if (length(x) == 1L && is.atomic(x)) {
    return(if (is.na(x)) sprintf("`NA` (%s)", typeof(x)) else sprintf("a %s (`%s`)", typeof(x), format(x)))
  }
  sprintf("a %s of length %d", class(x)[[1L]], length(x))
}

check_process <- function(call = sys.call(-1L), open_store = TRUE) {
  if (!identical(Sys.getpid(), .state$pid)) {
    abort("fork", "asyncjobs cannot be used from a forked child process (for example inside parallel::mclapply); call it from the process that loaded the package.",
          call = call)
  }
  if (open_store && is.null(.state$store)) use_store(NULL, call = call)
}

check_flag <- function(x, arg, call = sys.call(-1L)) {
  if (!is.logical(x) || length(x) != 1L || is.na(x)) {
    abort("argument", sprintf("`%s` must be TRUE or FALSE, not %s.", arg, describe(x)), arg, call)
  }
}

# A job cannot start a pool of its own inside its worker: it would outlive
# the job and compete with the API's workers for the machine.
check_not_worker <- function(what, call = sys.call(-1L)) {
  if (identical(Sys.getenv("ASYNCJOBS_WORKER"), "1")) {
    abort("in_worker", sprintf("%s cannot be called in a worker: a worker must not start a pool of its own. (Inside a job, create_job() submits a child job.)", what),
          call = call)
  }
}

# Operation names travel to the store and to JSON: valid UTF-8 only.
check_operation <- function(x, arg = "operation", call = sys.call(-1L)) {
  check_string(x, arg, call)
  # latin1 is converted; anything else must already be UTF-8 bytes.
  y <- if (identical(Encoding(x), "latin1")) enc2utf8(x) else x
  if (identical(Encoding(x), "bytes") || !validUTF8(y)) {
    abort("argument", sprintf("`%s` must be valid UTF-8 text (its bytes are not).", arg), arg, call)
  }
  y
}

# A store the call could not reach: a value, like every outcome, not a condition.
store_failed <- function(r) inherits(r, "asyncjobs_store_error")

store_unavailable <- function(message) {
  list(error = "STORE_UNAVAILABLE", message = as.vector(message), retry_after = 5)
}
