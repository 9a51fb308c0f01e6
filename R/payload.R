# Executors defined inside plumber handlers capture `req` and `res` in their
# environment, and serialize() carries that environment to the worker with
# every job. Warn once when an executor's payload is unexpectedly large.

.payload_warn_bytes <- 256 * 1024

check_payload <- function(fn, bytes) {
  if (bytes <= .payload_warn_bytes || isTRUE(.state$payload_warned)) return(invisible())
  env <- environment(fn)
  if (is.null(env) || identical(env, globalenv()) || isNamespace(env)) return(invisible())
  vars <- ls(env, all.names = TRUE)
  sizes <- vapply(vars, function(v) {
    length(tryCatch(serialize(get(v, envir = env), NULL, xdr = FALSE), error = function(e) raw()))
  }, 0)
  big <- names(sort(sizes, decreasing = TRUE))[seq_len(min(3L, length(sizes)))]
  .state$payload_warned <- TRUE
  warning(structure(class = c("asyncjobs_warning_payload", "warning", "condition"), list(
    message = sprintf(paste0(
      "The executor serializes to %.0f KiB because its environment captures %s. ",
      "Every job carries it to a worker. Define the executor outside the handler ",
      "and pass what it needs in `params`. (Shown once per session.)"),
      bytes / 1024, paste0("`", big, "`", collapse = ", ")),
    call = NULL)))
}
