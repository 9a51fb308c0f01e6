# Executors defined inside plumber handlers capture `req` and `res` in their
# environment, and serialize() carries that environment to the worker with
# every job (a plumber `req` holds the whole router: megabytes). Warn once per
# operation when an executor's payload is unexpectedly large.

# The threshold is the option `asyncjobs.warn_payload_bytes` (default 256 KiB);
# create_job()'s native call compares it (c_submit in src/r/calls.rs) and calls
# for this only when the executor's `bytes` are over it.
check_payload <- function(fn, bytes, operation) {
  if (operation %in% .state$payload_warned) return(invisible())
  sizes <- captured_sizes(environment(fn))
  if (!length(sizes)) return(invisible())
  sizes <- sort(sizes, decreasing = TRUE)[seq_len(min(3L, length(sizes)))]
  .state$payload_warned <- c(.state$payload_warned, operation)
  warning(structure(class = c("asyncjobs_warning_payload", "warning", "condition"), list(
    message = sprintf(paste0(
      "The executor of \"%s\" serializes to %s because its environment captures %s. ",
      "Every job carries it to a worker. Define the executor outside the handler ",
      "and pass what it needs in `params`. (Shown once per operation.)"),
      operation, kib(bytes), paste0("`", names(sizes), "` (", kib(sizes), ")", collapse = ", ")),
    call = NULL)))
}

kib <- function(bytes) sprintf("%.0f KiB", bytes / 1024)

# Bytes each captured variable adds, up the chain of enclosing environments
# that serialize() copies (it stops at global, package and namespace ones).
captured_sizes <- function(env) {
  sizes <- numeric()
  while (is.environment(env) && !is_reference_env(env)) {
    for (v in setdiff(ls(env, all.names = TRUE), names(sizes))) {
      sizes[[v]] <- length(tryCatch(serialize(get(v, envir = env), NULL, xdr = FALSE),
                                    error = function(e) raw()))
    }
    env <- parent.env(env)
  }
  sizes
}

is_reference_env <- function(env) {
  identical(env, globalenv()) || identical(env, baseenv()) || identical(env, emptyenv()) ||
    isNamespace(env) || startsWith(environmentName(env), "package:")
}
