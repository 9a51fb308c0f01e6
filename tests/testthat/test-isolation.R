# What one job changes in its worker does not reach the next job on that
# worker. One worker per pool, so consecutive jobs surely share it.

run_job <- function(fn, params = NULL, ...) {
  st <- finish(create_job("isolation", params, fn, ...))
  expect_identical(st$status, "completed", info = paste(st$error$message))
  st$result
}

skip_on_cran() # slow and process-heavy: tools/test.sh and CI run it
test_that("options, environment variables, the working directory and the locale go back to setup's", {
  local_pool(1, setup = quote({
    options(iso.setup = "from setup")
    Sys.setenv(ISO_SETUP = "from setup")
  }))
  state <- function(p) list(
    pid = Sys.getpid(), digits = getOption("digits"), setup_opt = getOption("iso.setup"),
    job_opt = getOption("iso.job"), setup_env = Sys.getenv("ISO_SETUP", NA),
    job_env = Sys.getenv("ISO_JOB", NA), worker_env = Sys.getenv("ASYNCJOBS_WORKER", NA),
    wd = getwd(), collate = Sys.getlocale("LC_COLLATE"), time = Sys.getlocale("LC_TIME"))
  before <- run_job(state)
  expect_identical(before$setup_opt, "from setup")
  expect_identical(before$setup_env, "from setup")

  changed <- run_job(function(p) {
    other <- function(cat) if (identical(Sys.getlocale(cat), "C")) "C.UTF-8" else "C"
    options(digits = 3, iso.job = "from a job", iso.setup = NULL)
    Sys.setenv(ISO_JOB = "from a job", ISO_SETUP = "changed")
    Sys.unsetenv("ASYNCJOBS_WORKER")
    setwd(tempdir())
    Sys.setlocale("LC_COLLATE", other("LC_COLLATE"))
    Sys.setlocale("LC_TIME", other("LC_TIME"))
    p(NULL)
  }, params = state)
  # The job did change each of them.
  expect_identical(changed$pid, before$pid)
  for (field in c("digits", "setup_opt", "job_opt", "setup_env", "job_env", "worker_env", "wd", "collate", "time")) {
    expect_false(identical(changed[[field]], before[[field]]), info = field)
  }

  after <- run_job(state)
  expect_identical(after, before)
})

test_that("packages a job attaches are detached, and ones it detaches come back; namespaces stay loaded", {
  local_pool(1, setup = quote(library(tools)))
  before <- run_job(function(p) search())
  expect_true("package:tools" %in% before)
  expect_false("package:stats4" %in% before)

  during <- run_job(function(p) {
    library(stats4)
    attach(list(iso_x = 1), name = "iso_data")
    detach("package:tools")
    search()
  })
  expect_true(all(c("package:stats4", "iso_data") %in% during))
  expect_false("package:tools" %in% during)

  after <- run_job(function(p) list(search = search(), stats4 = isNamespaceLoaded("stats4")))
  expect_identical(after$search, before)
  expect_true(after$stats4)
})

test_that("options a job adds while loading a namespace stay (its .onLoad may have set them)", {
  local_pool(1)
  run_job(function(p) { loadNamespace("stats4"); options(iso.with_ns = 1, digits = 4) })
  run_job(function(p) options(iso.without_ns = 1))
  after <- run_job(function(p) list(getOption("iso.with_ns"), getOption("iso.without_ns"), getOption("digits")))
  expect_identical(after, list(1, NULL, 7L))
})

test_that("each kind of change alone is seen and put back (the quick check after a job misses none)", {
  local_pool(1)
  state <- function(p) list(digits = getOption("digits"), env = Sys.getenv("ISO_ONE", NA), wd = getwd(),
                            collate = Sys.getlocale("LC_COLLATE"), sinks = c(sink.number(), sink.number(type = "message")),
                            search = search())
  before <- run_job(state)
  changes <- list(
    option = function(p) options(digits = 4),
    env = function(p) Sys.setenv(ISO_ONE = "x"),
    wd = function(p) setwd(tempdir()),
    locale = function(p) Sys.setlocale("LC_COLLATE", if (identical(Sys.getlocale("LC_COLLATE"), "C")) "C.UTF-8" else "C"),
    output_sink = function(p) sink(tempfile()),
    message_sink = function(p) sink(file(tempfile(), "w"), type = "message"),
    search = function(p) attach(list(iso_x = 1), name = "iso_attached"))
  for (what in names(changes)) {
    run_job(changes[[what]])
    expect_identical(run_job(state), before, info = what)
  }
})

test_that("a sink a job leaves open does not swallow the next job's output", {
  local_pool(1)
  run_job(function(p) { sink(tempfile()); sink(file(tempfile(), "w"), type = "message"); TRUE })
  after <- run_job(function(p) c(sink.number(), sink.number(type = "message")))
  expect_identical(after, c(0L, 2L))
})

test_that("create_job(seed =) draws the same numbers whatever ran on the worker before", {
  local_pool(1)
  draw <- function(p) list(x = runif(3), kind = RNGkind())
  first <- run_job(draw, seed = 1)
  # set.seed(1); runif(3) with R's default generators.
  expect_equal(first$x, c(0.2655087, 0.3721239, 0.5728534), tolerance = 1e-6)
  run_job(function(p) { RNGkind("L'Ecuyer-CMRG", "Box-Muller", "Rounding"); set.seed(99); runif(10) })
  again <- run_job(draw, seed = 1)
  expect_identical(again, first)
  expect_identical(run_job(draw, seed = 1L), first)
  expect_false(identical(run_job(draw, seed = 2)$x, first$x))
})

test_that("a seeded job draws the same numbers on each worker; setup's RNG kinds are kept", {
  local_pool(2, setup = quote({ RNGkind("L'Ecuyer-CMRG"); set.seed(5) }))
  draw <- function(p) { Sys.sleep(0.5); list(pid = Sys.getpid(), x = runif(3), kind = RNGkind()[[1L]]) }
  # Both submitted at once: the second goes to the other, idle worker.
  jobs <- lapply(1:2, function(i) create_job("isolation", i, draw, seed = 1))
  sts <- lapply(jobs, finish)
  expect_false(sts[[1]]$result$pid == sts[[2]]$result$pid)
  expect_identical(sts[[1]]$result$x, sts[[2]]$result$x)
  expect_identical(sts[[1]]$result$kind, "L'Ecuyer-CMRG")
  expect_identical(sts[[1]]$result$x, withr::with_seed(1, runif(3), .rng_kind = "L'Ecuyer-CMRG"))
})

test_that("a job's set.seed() or RNGkind() does not reach the next job, and unseeded jobs do not replay a stream", {
  # A setup that seeds keeps .Random.seed among setup's globals.
  local_pool(1, setup = quote(set.seed(42)))
  seven <- withr::with_seed(7, runif(3))
  draws <- list()
  for (i in 1:2) {
    run_job(function(p) { RNGkind("L'Ecuyer-CMRG"); set.seed(7) })
    draws[[i]] <- run_job(function(p) list(x = runif(3), kind = RNGkind()[[1L]]))
  }
  expect_identical(draws[[1]]$kind, "Mersenne-Twister")
  expect_false(isTRUE(all.equal(draws[[1]]$x, seven)))
  expect_false(identical(draws[[1]]$x, draws[[2]]$x))
  # Nor do unseeded jobs in a row; seeding them adds no warning.
  sts <- lapply(1:5, function(i) finish(create_job("isolation", NULL, function(p) runif(2))))
  expect_identical(length(unique(lapply(sts, `[[`, "result"))), 5L)
  for (st in sts) expect_length(st$warnings, 0L)
})

test_that("a seed is validated, is not part of the duplicate check, and leaves a primitive executor alone", {
  for (bad in list("1", 1.5, NA, NA_real_, Inf, c(1, 2), 2^31, TRUE, list(1))) {
    e <- expect_error(create_job("isolation", NULL, function(p) 1, seed = bad),
                      class = "asyncjobs_error_argument")
    expect_identical(e$arg, "seed")
    expect_match(conditionMessage(e), "`seed`")
  }
  local_pool(1)
  gate <- tempfile()
  blocker <- create_job("isolation", gate, function(p) { while (!file.exists(p)) Sys.sleep(0.01); 1 },
                        unique = TRUE, seed = 1)
  dup <- create_job("isolation", gate, function(p) 2, unique = TRUE, seed = 2)
  expect_identical(dup$error, "DUPLICATE_JOB")
  expect_identical(dup$existing_job_id, blocker$job_id)
  file.create(gate)
  finish(blocker)
  expect_identical(run_job(sum, params = 1:3, seed = 5), 6L)
  expect_null(attributes(sum))
})

test_that("a job that leaves state the worker cannot undo keeps its result; a fresh worker runs the next job", {
  seen <- local_pool(1, setup = quote({
    d <- tempfile("iso-wd-")
    dir.create(d)
    setwd(d)
  }))
  pid <- get_worker_status()$pid
  bad <- create_job("isolation", NULL, function(p) { unlink(getwd(), recursive = TRUE); "done" })
  st <- finish(bad)
  expect_identical(st$status, "completed")
  expect_identical(st$result, "done")
  expect_true(wait_until(function() !identical(get_worker_status()$pid, pid) &&
                           get_worker_status()$state == "idle"))
  expect_match(get_worker_status()$last_exit, "after a job: .*working directory")
  after <- run_job(function(p) list(pid = Sys.getpid(), wd_ok = dir.exists(getwd())))
  note_pids(seen)
  expect_false(after$pid == pid)
  expect_true(after$wd_ok)
})

test_that("the seed travels through a durable store with the job", {
  local_store(store_urls()[["sqlite"]], n = 1L)
  draw <- function(p) runif(3)
  x <- lapply(1:2, function(i) run_job(draw, params = i, seed = 1))
  expect_identical(x[[1]], x[[2]])
  expect_equal(x[[1]], c(0.2655087, 0.3721239, 0.5728534), tolerance = 1e-6)
})
