# asyncjobs worker. Started by the pool with frames in on fd 3 and frames out
# on fd 4 (see src/protocol.rs); stdout and stderr belong to the job.
local({
  KIND <- c(init = 1L, job = 2L, shutdown = 3L, ready = 11L, setup_failed = 12L,
            progress = 13L, result = 14L, failed = 15L)
  SEP <- "\x1f"
  con_in <- file("/dev/fd/3", open = "rb")
  con_out <- file("/dev/fd/4", open = "wb")

  # A job's blob is the executor's bytes then the params' (text: "id<SEP>fn_len");
  # they are read apart, since splitting a large raw vector in R copies it.
  read_frame <- function() {
    h <- readBin(con_in, "integer", n = 3L, size = 4L, endian = "little")
    if (length(h) < 3L) quit(save = "no", status = 0L) # the pool closed the pipe
    text <- if (h[[2L]] > 0L) rawToChar(readBin(con_in, "raw", n = h[[2L]])) else ""
    if (h[[1L]] == KIND[["job"]]) {
      fields <- strsplit(text, SEP, fixed = TRUE)[[1L]]
      fn_len <- as.integer(fields[[2L]])
      return(list(kind = h[[1L]], id = fields[[1L]], fn = readBin(con_in, "raw", n = fn_len),
                  params = readBin(con_in, "raw", n = h[[3L]] - fn_len)))
    }
    blob <- if (h[[3L]] > 0L) readBin(con_in, "raw", n = h[[3L]]) else raw()
    list(kind = h[[1L]], text = text, blob = blob)
  }
  # One write per small frame; a large blob is not copied to join it.
  write_frame <- function(kind, text = "", blob = raw()) {
    text <- charToRaw(enc2utf8(text))
    head <- c(writeBin(c(kind, length(text), length(blob)), raw(), size = 4L, endian = "little"), text)
    if (length(blob) > 65536L) {
      writeBin(head, con_out)
      writeBin(blob, con_out)
    } else {
      writeBin(c(head, blob), con_out)
    }
    flush(con_out)
  }
  failure <- function(code, message, detail = NULL) {
    detail <- c(list(code = code, message = message), detail)
    list(kind = KIND[["failed"]], text = paste0(code, SEP, message),
         blob = serialize(detail, NULL, xdr = FALSE))
  }

  init <- unserialize(read_frame()$blob)
  .libPaths(init$libpaths)
  problem <- tryCatch({
    suppressPackageStartupMessages(library(asyncjobs))
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

  # A result R can carry to another process only if it holds no pointers
  # or connections (they would arrive dangling). Defined once: a closure made
  # per job would be byte-compiled per job.
  walked <- new.env()
  walk <- function(x) {
    walked$n <- walked$n - 1L
    if (walked$n < 0L) return(NULL)
    if (typeof(x) %in% c("externalptr", "weakref")) return(paste("an", typeof(x)))
    if (inherits(x, "connection")) return("a connection")
    if (is.list(x) && !is.data.frame(x)) {
      for (el in x) if (!is.null(r <- walk(el))) return(r)
    }
    for (a in attributes(x)) if (!is.null(r <- walk(a))) return(r)
    NULL
  }
  unportable <- function(x, budget = 10000L) {
    walked$n <- budget
    walk(x)
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

  run <- function(frame) {
    warnings <- character()
    calls <- list()
    value <- tryCatch(
      withCallingHandlers({
        executor <- unserialize(frame$fn)
        params <- unserialize(frame$params)
        asyncjobs:::.worker_seed(snapshot, executor) # isolation: the job's RNG stream
        executor(params)
      },
      warning = function(w) {
        warnings <<- c(warnings, conditionMessage(w))
        invokeRestart("muffleWarning")
      },
      error = function(e) calls <<- sys.calls()),
      error = function(e) structure(list(e), class = "asyncjobs_job_error"))
    flush(stdout())
    flush(stderr())
    if (inherits(value, "asyncjobs_job_error")) {
      e <- value[[1L]]
      call <- conditionCall(e)
      return(failure("EXECUTION_ERROR", conditionMessage(e), list(
        call = if (!is.null(call)) deparse1(call, collapse = " "),
        class = class(e), traceback = trim_calls(calls), warnings = warnings)))
    }
    bad <- unportable(value)
    if (!is.null(bad)) {
      return(failure("RESULT_NOT_SERIALIZABLE", sprintf(
        "The job's result contains %s, which cannot be sent to another R process", bad),
        list(warnings = warnings)))
    }
    bytes <- tryCatch(serialize(list(value = value, warnings = warnings), NULL, xdr = FALSE),
                      error = function(e) e)
    if (inherits(bytes, "error")) {
      return(failure("RESULT_NOT_SERIALIZABLE", conditionMessage(bytes), list(warnings = warnings)))
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
  for (f in c("read_frame", "write_frame", "failure", "emit", "walk", "unportable", "trim_calls", "run")) {
    assign(f, compiler::cmpfun(get(f)))
  }
  assign("emit", emit, envir = get(".worker", envir = asNamespace("asyncjobs")))
  snapshot <- asyncjobs:::.worker_snapshot() # isolation: the state setup left
  baseline <- names(globalenv())
  write_frame(KIND[["ready"]])
  repeat {
    frame <- read_frame()
    if (frame$kind == KIND[["shutdown"]]) break
    state$job <- frame$id
    state$at <- -Inf
    state$step <- NULL
    out <- run(frame)
    state$job <- NULL
    # Isolation (R/isolation.R): options, env vars, wd, locale, search path and
    # sinks go back to setup's before the pool may send another job. A worker
    # that cannot be put back exits: the job fails (WORKER_CRASHED, the reason
    # on its stderr) and the worker is replaced.
    problems <- asyncjobs:::.worker_reset(snapshot)
    if (length(problems)) {
      message("asyncjobs worker: the job left state that cannot be undone: ", paste(problems, collapse = "; "))
      quit(save = "no", status = 1L)
    }
    write_frame(out$kind, out$text, out$blob)
    frame <- out <- NULL
    # A clean slate: what the job left in the global environment goes.
    now <- names(globalenv())
    if (!identical(now, baseline)) {
      rm(list = setdiff(now, baseline), envir = globalenv())
      baseline <- names(globalenv())
    }
  }
  quit(save = "no", status = 0L)
})
