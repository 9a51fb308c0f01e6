# Isolation between jobs on one worker. inst/worker.R calls, in the worker:
#   snapshot <- .worker_snapshot()      once, after `setup` ran
#   .worker_reset(snapshot)             after each job's outcome is sent; a
#                                       non-empty value says what could not
#                                       be put back: the worker must then
#                                       exit and be replaced
#   .worker_seed(snapshot, seed)        then, before the ready frame, when
#                                       src/r/wire.rs's w_seed could not seed
#                                       the next job itself (a job changed
#                                       the RNG kinds), with the seed it
#                                       drew; and in a job with
#                                       create_job(seed = )
# The global environment is cleaned by inst/worker.R itself.

# The LC_* categories Sys.setlocale() can set (LC_ALL is all of them).
.locale_categories <- c("LC_COLLATE", "LC_CTYPE", "LC_MONETARY", "LC_NUMERIC", "LC_TIME",
                        "LC_MESSAGES", "LC_PAPER", "LC_MEASUREMENT")

# The state `setup` left, in an environment: .worker_reset() updates it when
# a job loads a namespace (see reset_options()).
.worker_snapshot <- function() {
  s <- new.env(parent = emptyenv())
  s$options <- options()
  s$env <- Sys.getenv()
  s$wd <- getwd()
  s$locale <- Sys.getlocale()
  s$locales <- vapply(.locale_categories, Sys.getlocale, "")
  s$search <- search()
  s$namespaces <- length(loadedNamespaces())
  s$sinks <- sink.number()
  s$message_sink <- sink.number(type = "message")
  # RNGkind() seeds the generator if nothing did yet: leave globals as they were.
  had_seed <- exists(".Random.seed", envir = globalenv(), inherits = FALSE)
  s$rng <- RNGkind()
  s$rng_code <- NA # .Random.seed[1] under those kinds: known after the first seeding
  if (!had_seed && exists(".Random.seed", envir = globalenv(), inherits = FALSE)) {
    rm(".Random.seed", envir = globalenv())
  }
  s$base <- .Call(wrap__aj_w_baseline) # for the quick check (src/r/wire.rs)
  s
}

# A job starts from set.seed(seed) under the RNG kinds `setup` left, whatever
# an earlier job did to the generator. create_job(seed = ) puts the seed on
# the executor; without one it is 32 bits from the kernel (w_seed), set before
# the worker says it is ready (off the job's path), so jobs on one worker do
# not replay a stream (R's own seeding from the clock changes in only about
# 16 of its 32 bits between jobs a few ms apart).
.worker_seed <- function(snapshot, seed) {
  # .Random.seed[1] codes the RNG kinds: unchanged, the short call will do.
  code <- get0(".Random.seed", envir = globalenv(), inherits = FALSE)[1L]
  if (identical(code, snapshot$rng_code)) return(invisible(set.seed(seed)))
  k <- snapshot$rng
  if (identical(k[[3L]], "Rounding")) {
    # Rounding warns at every set.seed(); setup chose it knowingly.
    suppressWarnings(set.seed(seed, kind = k[[1L]], normal.kind = k[[2L]], sample.kind = k[[3L]]))
  } else {
    set.seed(seed, kind = k[[1L]], normal.kind = k[[2L]], sample.kind = k[[3L]])
  }
  snapshot$rng_code <- get(".Random.seed", envir = globalenv())[1L]
  invisible(seed)
}

# Puts back what a job changed. Returns what could not be put back;
# character() when the worker is as `setup` left it.
.worker_reset <- function(snapshot) {
  n <- length(loadedNamespaces())
  snapshot$loaded <- n != snapshot$namespaces # did the job load a namespace?
  snapshot$namespaces <- n
  # Most jobs change nothing: one quick check in Rust (about 1 us).
  if (.Call(wrap__aj_w_unchanged, snapshot$base)) return(character())
  problems <- character()
  step <- function(what, f) {
    tryCatch(f(snapshot), error = function(e) {
      problems <<- c(problems, sprintf("%s: %s", what, conditionMessage(e)))
    })
  }
  # Options first: a job's options(warn = 2) would turn the warnings of the
  # steps below into errors.
  step("options", reset_options)
  step("sinks", reset_sinks)
  if (!identical(search(), snapshot$search)) {
    step("search path", reset_search)
    step("options", reset_options) # detaching ran .onDetach hooks
  }
  step("environment variables", reset_env)
  step("locale", reset_locale)
  step("working directory", reset_wd)
  snapshot$base <- .Call(wrap__aj_w_baseline)
  problems
}

# Options that existed after setup get setup's values back; options a job
# added are removed. When the job loaded a namespace, its .onLoad may have
# added options the (still loaded) package relies on, and they cannot be told
# apart from the job's: then the added options stay, and become the baseline.
reset_options <- function(s) {
  now <- options()
  if (same_options(now, s$options)) return()
  old <- s$options
  same <- vapply(names(old), function(n) identical(old[[n]], now[[n]]), TRUE)
  if (!all(same)) options(old[!same])
  added <- setdiff(names(now), names(old))
  if (!length(added)) return()
  if (s$loaded) {
    s$options <- options()
  } else {
    options(structure(vector("list", length(added)), names = added))
  }
}

# Exact comparison is the faster one: unchanged options are the same objects.
same_options <- function(x, y) identical(x, y, ignore.bytecode = FALSE, ignore.srcref = FALSE)

reset_env <- function(s) {
  now <- Sys.getenv()
  if (identical(now, s$env)) return()
  old <- s$env
  added <- setdiff(names(now), names(old))
  if (length(added)) Sys.unsetenv(added)
  cur <- now[names(old)]
  changed <- is.na(cur) | cur != old
  if (any(changed)) do.call(Sys.setenv, as.list(old[changed]))
}

reset_wd <- function(s) {
  if (!identical(getwd(), s$wd)) setwd(s$wd)
}

reset_locale <- function(s) {
  if (identical(Sys.getlocale(), s$locale)) return()
  for (cat in .locale_categories) {
    if (identical(Sys.getlocale(cat), s$locales[[cat]])) next
    # Sys.setlocale warns for LC_NUMERIC whatever the value.
    if (!nzchar(suppressWarnings(Sys.setlocale(cat, s$locales[[cat]])))) {
      stop(sprintf("%s cannot be set back to \"%s\"", cat, s$locales[[cat]]))
    }
  }
}

# Detaches what the job attached (its namespaces stay loaded); packages setup
# attached and the job detached are attached again where they were.
reset_search <- function(s) {
  for (name in setdiff(search(), s$search)) {
    suppressWarnings(detach(name, character.only = TRUE))
  }
  old <- s$search
  for (i in rev(seq_along(old))) {
    if (old[[i]] %in% search() || !startsWith(old[[i]], "package:")) next
    suppressMessages(library(substring(old[[i]], 9L), pos = i, character.only = TRUE))
  }
  if (!identical(search(), s$search)) {
    stop(sprintf("it is %s, not %s", paste(search(), collapse = " "), paste(s$search, collapse = " ")))
  }
}

# Output a job diverted with sink() goes back to the job's stdout and stderr.
reset_sinks <- function(s) {
  while (sink.number() > s$sinks) sink()
  if (sink.number(type = "message") != s$message_sink && s$message_sink == 2L) sink(type = "message")
}

# create_job(seed = ): NULL, or a whole number set.seed() takes.
check_seed <- function(x, call = sys.call(-1L)) {
  ok <- is.null(x) || (is.numeric(x) && length(x) == 1L && !is.na(x) && is.finite(x) &&
                         x == round(x) && abs(x) <= .Machine$integer.max)
  if (!ok) {
    abort("argument", sprintf("`seed` must be NULL or a whole number from -%d to %d, not %s.",
                              .Machine$integer.max, .Machine$integer.max, describe(x)), "seed", call)
  }
}

# The seed travels with the executor (an attribute on the serialized
# function), so the job store needs no column for it.
with_seed <- function(executor_fn, seed) {
  # A primitive is one object for the whole session: never give it attributes.
  if (is.primitive(executor_fn)) {
    executor_fn <- (function(f) { force(f); function(params) f(params) })(executor_fn)
  }
  attr(executor_fn, "asyncjobs_seed") <- as.integer(seed)
  executor_fn
}
