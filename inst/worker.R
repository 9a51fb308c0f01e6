# asyncjobs worker. Started by the pool with its frame pipes on fds 3 and 4
# and, as its argument, the library the API loaded asyncjobs from. Frames
# are read and written by the package's Rust code (src/wire.rs); stdout and
# stderr belong to the job.
local({
  lib <- commandArgs(trailingOnly = TRUE)
  suppressPackageStartupMessages(library(asyncjobs, lib.loc = if (length(lib) && nzchar(lib[[1L]])) lib[[1L]]))
  ns <- asNamespace("asyncjobs")
  native <- function(name) get(name, envir = ns)
  w_open <- native("wrap__aj_w_open")
  w_read <- native("wrap__aj_w_read")
  w_write <- native("wrap__aj_w_write")
  w_unserialize <- .Call(native("wrap__aj_w_natives")) # the job's executor (1L) and params (2L)
  KIND <- c(init = 1L, job = 2L, shutdown = 3L, ready = 11L, setup_failed = 12L,
            progress = 13L, result = 14L, failed = 15L)
  SEP <- "\x1f"
  .Call(w_open)
  read_frame <- function() {
    frame <- .Call(w_read)
    if (is.null(frame)) quit(save = "no", status = 0L) # the pool closed the pipe
    frame
  }
  write_frame <- function(kind, text = "", blob = raw()) .Call(w_write, kind, enc2utf8(text), blob)
  failure <- function(code, message, detail = NULL) {
    detail <- c(list(code = code, message = message), detail)
    list(kind = KIND[["failed"]], text = paste0(code, SEP, message),
         blob = serialize(detail, NULL, xdr = FALSE))
  }

  init <- unserialize(read_frame()$blob)
  .libPaths(unique(c(lib, init$libpaths)))
  problem <- tryCatch({
    # [tree] Before setup: the API dying takes this worker's processes with it.
    tree_job <- native("tree_hooks")()
    setup <- init$setup
    if (is.function(setup)) setup() else if (!is.null(setup)) eval(setup, envir = globalenv())
    NULL
  }, error = function(e) conditionMessage(e))
  if (!is.null(problem)) {
    write_frame(KIND[["setup_failed"]], problem)
    quit(save = "no", status = 1L)
  }

  # Progress from inside a job: asyncjobs::report_progress() calls this.
  state <- new.env()
  state$job <- NULL
  interval <- init$progress_interval_ms / 1000
  num <- function(x) if (is.null(x) || is.na(x)) "NA" else format(x, digits = 15L)
  emit <- function(step, current, total) {
    if (is.null(state$job)) return(invisible(FALSE))
    now <- proc.time()[[3L]]
    done <- !is.null(current) && !is.null(total) && isTRUE(current >= total)
    if (identical(step, state$step) && !done && now - state$at < interval) return(invisible(FALSE))
    write_frame(KIND[["progress"]],
                paste0(num(current), SEP, num(total), if (!is.null(step)) paste0(SEP, step)))
    state$at <- now
    state$step <- step
    invisible(TRUE)
  }

  trim_calls <- function(calls) {
    start <- Position(function(cl) identical(cl, quote(executor(params))), calls, nomatch = 0L)
    calls <- calls[seq_along(calls) > start]
    # The last frame is the calling handler that took the snapshot.
    calls <- calls[-length(calls)]
    n <- length(calls)
    if (n && identical(calls[[n]][[1L]], quote(.handleSimpleError))) calls <- calls[-n]
    vapply(calls, function(cl) deparse1(cl, collapse = " ")[[1L]], "")
  }

  # One tryCatch around the job and its result's serialization: a failure
  # in serialize() is told apart by `stage`.
  run <- function(frame) {
    warnings <- character()
    calls <- list()
    stage <- "run"
    # A result R can carry to another process only if it holds no pointers
    # (they would arrive dangling; a connection holds one): serialize() shows
    # each to the hook, so plain results pay for no separate walk.
    bad <- NULL
    hook <- function(x) {
      if (is.null(bad) && typeof(x) != "environment") bad <<- typeof(x)
      NULL
    }
    bytes <- tryCatch(
      withCallingHandlers({
        executor <- .Call(w_unserialize, 1L)
        params <- .Call(w_unserialize, 2L)
        seed <- attr(executor, "asyncjobs_seed", exact = TRUE)
        if (!is.null(seed)) asyncjobs:::.worker_seed(snapshot, seed) # create_job(seed = )
        value <- executor(params)
        stage <- "serialize"
        serialize(list(value = value, warnings = warnings), NULL, xdr = FALSE, refhook = hook)
      },
      warning = function(w) {
        warnings <<- c(warnings, conditionMessage(w))
        invokeRestart("muffleWarning")
      },
      error = function(e) calls <<- sys.calls()),
      error = function(e) structure(list(e), class = "asyncjobs_job_error"))
    if (inherits(bytes, "asyncjobs_job_error")) {
      e <- bytes[[1L]]
      if (stage == "serialize") {
        return(failure("RESULT_NOT_SERIALIZABLE", conditionMessage(e), list(warnings = warnings)))
      }
      call <- conditionCall(e)
      return(failure("EXECUTION_ERROR", conditionMessage(e), list(
        call = if (!is.null(call)) deparse1(call, collapse = " "),
        class = class(e), traceback = trim_calls(calls), warnings = warnings)))
    }
    if (!is.null(bad)) {
      return(failure("RESULT_NOT_SERIALIZABLE", sprintf(
        "The job's result contains %s (a connection, or an object of compiled code), which cannot be sent to another R process",
        if (bad == "externalptr") "an external pointer" else paste("a", bad)),
        list(warnings = warnings)))
    }
    if (length(bytes) > init$max_result_bytes) {
      return(failure("RESULT_TOO_LARGE", sprintf(
        "The job's result is %.0f bytes; the limit (max_result_bytes) is %.0f bytes",
        length(bytes), init$max_result_bytes), list(warnings = warnings)))
    }
    list(kind = KIND[["result"]], text = "", blob = bytes)
  }

  # Compile the loop's functions now: R's JIT compiles a closure made inside
  # local() at its second call, which would delay a worker's second job by ~35 ms.
  for (f in c("read_frame", "write_frame", "failure", "emit", "trim_calls", "run")) {
    assign(f, compiler::cmpfun(get(f)))
  }
  assign("emit", emit, envir = get(".worker", envir = ns))
  snapshot <- asyncjobs:::.worker_snapshot() # the state setup left (R/isolation.R)
  asyncjobs:::.worker_seed(snapshot) # the first job's RNG stream
  baseline <- names(globalenv())
  write_frame(KIND[["ready"]])
  repeat {
    frame <- read_frame()
    if (frame$kind == KIND[["shutdown"]]) break
    state$job <- frame$id
    state$at <- -Inf
    state$step <- NULL
    tree_job(TRUE) # [tree] the processes already here (setup's) stay
    out <- run(frame)
    state$job <- NULL
    tree_job(FALSE) # [tree] those the job started go, before its result
    write_frame(out$kind, out$text, out$blob)
    frame <- out <- NULL
    # Back to the state setup left, after the outcome is out (so the caller
    # does not wait for it) and before the pool may send another job, which
    # it does on the ready frame. What the job left in the global environment
    # goes; options, env vars, wd, locale, search path and sinks are put back
    # (R/isolation.R). A worker that cannot be put back exits and is replaced.
    now <- names(globalenv())
    dirty <- !identical(now, baseline)
    if (dirty) rm(list = setdiff(now, baseline), envir = globalenv())
    problems <- asyncjobs:::.worker_reset(snapshot)
    if (length(problems)) {
      write_frame(KIND[["setup_failed"]], paste("the job left state that cannot be undone:",
                                                 paste(problems, collapse = "; ")))
      quit(save = "no", status = 1L)
    }
    asyncjobs:::.worker_seed(snapshot) # the next job's RNG stream (a job's rm(.Random.seed) made `dirty`)
    if (dirty) baseline <- names(globalenv())
    write_frame(KIND[["ready"]])
  }
  quit(save = "no", status = 0L)
})
