# asyncjobs worker. Started by the pool with its frame pipes on fds 3 and 4
# and, as its argument, the library the API loaded asyncjobs from. Frames
# are read and written by the package's Rust code (src/r/wire.rs); stdout and
# stderr belong to the job.
local({
  lib <- commandArgs(trailingOnly = TRUE)
  suppressPackageStartupMessages(library(asyncjobs, lib.loc = if (length(lib) && nzchar(lib[[1L]])) lib[[1L]]))
  ns <- asNamespace("asyncjobs")
  native <- function(name) get(name, envir = ns)
  w_open <- native("wrap__aj_w_open")
  w_read <- native("wrap__aj_w_read")
  w_write <- native("wrap__aj_w_write")
  w_unserialize <- native("w_unserialize") # the job's executor (1L) and params (2L)
  w_result <- native("w_result") # sends the job's result, or says why it cannot
  w_seed <- native("w_seed") # draws the next job's seed; sets it when the RNG kinds are setup's
  w_result_json <- native("w_result_json") # sends a handler's result as JSON
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
    # The handlers the pool's process registered, then its handler files,
    # which register them again with everything they define.
    assign("handlers", if (is.null(init$handlers)) list() else init$handlers, envir = ns$.state)
    for (f in init$handler_files) sys.source(f, envir = globalenv(), keep.source = FALSE)
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

  # One tryCatch around the job and its result's serialization (into Rust
  # memory, by w_result, which sends it): a failure in serializing is told
  # apart by `stage`. NULL when the result was sent, else the failure to send.
  # `frame` is c(2L, handler, json): a registered job type's job runs the
  # handler of its operation; JSON params are read by jsonlite.
  run <- function(frame) {
    warnings <- character()
    calls <- list()
    stage <- "run"
    json_result <- FALSE
    sent <- tryCatch(
      withCallingHandlers({
        if (frame[[2L]] == 1L) {
          operation <- .Call(w_job)$operation
          h <- ns$.state$handlers[[operation]]
          if (is.null(h)) {
            stage <- "handler"
            stop(sprintf("this worker has no handler for the operation \"%s\" (see register_job())", operation))
          }
          executor <- h$fn
          json_result <- identical(h$params, "json")
        } else {
          executor <- .Call(w_unserialize, 1L)
        }
        params <- .Call(w_unserialize, 2L)
        if (frame[[3L]] == 1L) params <- from_json_params(params)
        worker$params <- params
        seed <- attr(executor, "asyncjobs_seed", exact = TRUE)
        if (!is.null(seed)) worker_seed(snapshot, seed) # create_job(seed = )
        value <- executor(params)
        stage <- "serialize"
        text <- if (json_result) to_json(value)
        if (!is.null(text)) {
          .Call(w_result_json, text, warnings, init$max_result_bytes)
        } else {
          .Call(w_result, list(value = value, warnings = warnings), init$max_result_bytes)
        }
      },
      warning = function(w) {
        warnings <<- c(warnings, conditionMessage(w))
        invokeRestart("muffleWarning")
      },
      error = function(e) calls <<- sys.calls()),
      error = function(e) structure(list(e), class = "asyncjobs_job_error"))
    if (is.null(sent)) return(NULL)
    if (is.character(sent)) {
      # The result holds a pointer, which would arrive dangling (a connection
      # holds one), or is over max_result_bytes; or the pipe is gone.
      if (sent[[1L]] == "WRITE_FAILED") stop("asyncjobs worker: writing a frame: ", sent[[2L]])
      return(failure(sent[[1L]], sent[[2L]], list(warnings = warnings)))
    }
    e <- sent[[1L]]
    if (stage == "handler") return(failure("UNKNOWN_OPERATION", conditionMessage(e), list(warnings = warnings)))
    if (stage == "serialize") {
      return(failure("RESULT_NOT_SERIALIZABLE", conditionMessage(e), list(warnings = warnings)))
    }
    call <- conditionCall(e)
    failure("EXECUTION_ERROR", conditionMessage(e), list(
      call = if (!is.null(call)) deparse1(call, collapse = " "),
      class = class(e), traceback = trim_calls(calls), warnings = warnings))
  }

  # Compile the loop's functions now: R's JIT compiles a closure made inside
  # local() at its second call, which would delay a worker's second job by ~35 ms.
  for (f in c("read_frame", "write_frame", "failure", "emit", "trim_calls", "run")) {
    assign(f, compiler::cmpfun(get(f)))
  }
  worker <- get(".worker", envir = ns) # what current_job() and create_job() read
  assign("emit", emit, envir = worker)
  w_job <- ns$wrap__aj_w_job
  to_json <- ns$to_json
  from_json_params <- ns$from_json_params
  worker_reset <- ns$.worker_reset
  worker_seed <- ns$.worker_seed
  snapshot <- ns$.worker_snapshot() # the state setup left (R/isolation.R)
  # The next job's RNG stream: in Rust, or in R with setup's kinds put back.
  seed_next <- function() {
    seed <- .Call(w_seed, snapshot$rng_code)
    if (!isTRUE(seed)) worker_seed(snapshot, seed)
  }
  seed_next() # the first job's
  baseline <- names(globalenv())
  write_frame(KIND[["ready"]])
  repeat {
    frame <- read_frame() # a job is c(kind, handler, json) (src/r/wire.rs)
    if (!is.integer(frame)) {
      if (frame$kind == KIND[["shutdown"]]) break
      stop("asyncjobs worker: unexpected frame of kind ", frame$kind)
    }
    state$job <- TRUE
    state$at <- -Inf
    state$step <- NULL
    worker$job <- TRUE
    worker$children <- 0L
    out <- run(frame)
    state$job <- NULL
    worker$job <- NULL
    worker$params <- NULL
    if (!is.null(out)) {
      tree_job(FALSE) # [tree] those the job started go, before its outcome
      write_frame(out$kind, out$text, out$blob)
      out <- NULL
    }
    # Back to the state setup left, after the outcome is out (so the caller
    # does not wait for it) and before the pool may send another job, which
    # it does on the ready frame. What the job left in the global environment
    # goes; options, env vars, wd, locale, search path and sinks are put back
    # (R/isolation.R). A worker that cannot be put back exits and is replaced.
    now <- names(globalenv())
    dirty <- !identical(now, baseline)
    if (dirty) rm(list = setdiff(now, baseline), envir = globalenv())
    problems <- worker_reset(snapshot)
    if (length(problems)) {
      write_frame(KIND[["setup_failed"]], paste("the job left state that cannot be undone:",
                                                 paste(problems, collapse = "; ")))
      quit(save = "no", status = 1L)
    }
    seed_next() # (a job's rm(.Random.seed) made `dirty`)
    if (dirty) baseline <- names(globalenv())
    write_frame(KIND[["ready"]])
  }
  quit(save = "no", status = 0L)
})
