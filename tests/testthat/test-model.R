# The job model: registered job types with JSON params and results, a job's
# context and children, chains, delays and schedules; on the memory store,
# then on every shared store.

source(test_path("handlers-model.R"), local = globalenv())

fake_res <- function() {
  res <- new.env()
  res$headers <- list()
  res$setHeader <- function(name, value) res$headers[[name]] <- value
  res
}

ids_of <- function(x) if (length(x)) sort(as.character(x)) else character()

test_that("a registered job type runs by name: JSON params in, JSON result out", {
  local_pool(1, max_queued = 10, queues = c("default", "slow"))
  params <- list(genes = c("BRCA1", "TP53"), n = 5L, df = data.frame(a = 1:2, b = c("x", "y")),
                 nested = list(flag = TRUE, none = NULL))
  j <- create_job("echo", params)
  st <- finish(j)
  expect_identical(st$status, "completed")
  # jsonlite's conventions: what R sent is what R reads back.
  expect_identical(st$result$genes, params$genes)
  expect_identical(st$result$n, 5L)
  expect_identical(st$result$df, params$df)
  expect_identical(st$result$nested$flag, TRUE)
  raw <- job_record_raw(j$job_id)
  expect_true(raw$handler)
  expect_true(raw$result_json)
  expect_identical(rawToChar(raw$result), '{"value":{"genes":["BRCA1","TP53"],"n":5,"df":[{"a":1,"b":"x"},{"a":2,"b":"y"}],"nested":{"flag":true,"none":null}},"warnings":[]}')
  # A value JSON cannot hold is stored serialized, flagged so.
  m <- create_job("model", list(y = c(1, 3, 5)))
  st <- finish(m)
  expect_s3_class(st$result, "lm")
  expect_false(job_record_raw(m$job_id)$result_json)
  # R params for a handler that asked for them.
  r <- finish(create_job("rparams", list(e = new.env())))
  expect_identical(r$result, "environment")
  # The handler's defaults, and explicit arguments over them.
  lane <- create_job("lane", NULL)
  expect_identical(finish(lane)$result, "slow")
  expect_identical(job_record_raw(lane$job_id)[c("queue", "priority", "timeout_ms")],
                   list(queue = "slow", priority = 5L, timeout_ms = 5000))
  here <- create_job("lane", NULL, queue = "default", priority = 1L)
  expect_identical(finish(here)$result, "default")
  # A queue no pool serves has no handler for it either.
  expect_error(create_job("lane", NULL, queue = "nobody"), "queue \"nobody\"", class = "asyncjobs_error_unknown_operation")
  # The duplicate check hashes the JSON that is stored.
  later <- create_job("echo", list(wait = 1), unique = TRUE, delay = 60)
  expect_identical(check_duplicate_job("echo", list(wait = 1)), list(duplicate = TRUE, existing_job_id = later$job_id))
  expect_false(check_duplicate_job("echo", list(wait = 2))$duplicate)
  expect_identical(create_job("echo", list(wait = 1), unique = TRUE)$existing_job_id, later$job_id)
  cancel_job(later$job_id)
})

test_that("the Rust JSON writer writes what jsonlite writes", {
  cases <- list(NULL, TRUE, NA, c(TRUE, NA), 5L, NA_integer_, 1:3, integer(), 0.1, 1 / 3, 1e5, 1e15, 1e16, 2^53,
                -1.5e-7, 1e-4, 3e-4, 123456.789, -0, c(1, NA, NaN, Inf), "a", NA_character_, "\"q\"\\\n\t\b\f\r\001",
                "\u00e9\u2028/", "\x7f", character(), list(), list(1, "a", NULL), list(a = 1, b = list(c = "d")),
                structure(list(), names = character()), list(list(list(1))))
  for (x in cases) {
    rust <- .Call(asyncjobs:::c_json, x)
    expect_false(is.null(rust), info = deparse(x))
    expect_identical(rust, as.character(jsonlite::toJSON(x, auto_unbox = TRUE, digits = NA, null = "null", na = "null")),
                     info = deparse(x))
  }
  # What jsonlite writes its own way is left to it.
  for (x in list(factor("a"), Sys.Date(), c(a = 1), list(a = 1, a = 2), list(a = 1, 2), matrix(1:4, 2),
                 data.frame(a = 1), structure(1, class = "myclass"))) {
    expect_null(.Call(asyncjobs:::c_json, x), info = deparse(x))
  }
})

test_that("bad requests are classed errors with a code, answered 400, and write nothing", {
  local_pool(1)
  before <- nrow(list_jobs())
  ghost <- "00000000-0000-4000-8000-000000000000"
  expect_error(create_job("no_such_type", 1), "no_such_type", class = "asyncjobs_error_unknown_operation")
  expect_error(create_job("echo", list(f = function() 1)), "`params`", class = "asyncjobs_error_params_not_json")
  expect_error(create_job("echo", 1, depends_on = ghost), ghost, class = "asyncjobs_error_unknown_dependency")
  expect_error(create_job("echo", 1, depends_on = "not an id"), "not an id", class = "asyncjobs_error_unknown_dependency")
  expect_error(create_job("echo", 1, depends_on = NA_character_), "`depends_on`", class = "asyncjobs_error_argument")
  expect_error(create_job("echo", 1, run_at = Sys.time() + 400 * 86400), "`run_at`", class = "asyncjobs_error_argument")
  expect_error(create_job("echo", 1, run_at = "tomorrow"), "`run_at`", class = "asyncjobs_error_argument")
  expect_error(create_job("echo", 1, delay = -1), "`delay`", class = "asyncjobs_error_argument")
  expect_error(create_job("echo", 1, delay = 1, run_at = Sys.time()), "not both", class = "asyncjobs_error_argument")
  expect_error(create_job("echo", 1, seed = 1), "`seed`", class = "asyncjobs_error_argument")
  expect_error(register_job("late", function(p) p), "before start_workers", class = "asyncjobs_error_pool_running")
  expect_error(schedule_job("s", "61 * * * *", "echo"), "`cron`", class = "asyncjobs_error_cron")
  expect_error(schedule_job("s", "* * * * *", "echo", tz = "Mars/Base"), "`tz`", class = "asyncjobs_error_cron")
  expect_error(schedule_job("s", "* * * * *", "no_such_type"), class = "asyncjobs_error_unknown_operation")
  expect_error(schedule_job("s", "* * * * *", "rparams"), "JSON", class = "asyncjobs_error_argument")
  expect_error(schedule_job("", "* * * * *", "echo"), "`name`", class = "asyncjobs_error_argument")
  expect_error(schedule_job("s", "* * * * *", "echo", missed = "twice"), "`missed`", class = "asyncjobs_error_argument")
  expect_identical(nrow(list_jobs()), before)
  expect_identical(nrow(list_schedules()), 0L)
  # Over HTTP: the condition's code, 400.
  res <- fake_res()
  body <- job_response(tryCatch(create_job("no_such_type", 1), asyncjobs_error = identity), res)
  expect_identical(res$status, 400L)
  expect_identical(body$error, "UNKNOWN_OPERATION")
  # A past run_at runs now.
  now <- finish(create_job("square", list(x = 3), run_at = Sys.time() - 3600))
  expect_identical(now$result, 9L)
})

test_that("a running job sees its context, and the jobs it submits are its children", {
  local_pool(2)
  j <- create_job("spawn", list(n = 2L))
  st <- finish(j)
  expect_identical(st$status, "completed")
  expect_identical(st$result$me, list(operation = "spawn", attempt = 1L, queue = "default", parent_id = NULL))
  expect_identical(st$result$params, list(n = 2L))
  expect_identical(ids_of(st$children), ids_of(st$result$kids))
  for (k in st$result$kids) {
    kid <- finish(list(job_id = k))
    expect_identical(kid$parent_id, j$job_id)
  }
  expect_identical(sort(unlist(lapply(st$result$kids, function(k) get_job_status(k)$result))), c(1L, 4L))
  expect_null(current_job(), info = "outside a job")
})

test_that("depends_on: a job waits for its dependencies; a failure fails what waits on it", {
  local_pool(2, max_queued = 10)
  a <- create_job("square", list(x = 2), delay = 1)
  b <- create_job("square", list(x = 3), depends_on = a$job_id)
  last <- create_job("echo", list(done = TRUE), depends_on = c(a$job_id, b$job_id))
  st <- get_job_status(last$job_id)
  expect_identical(st$status, "pending")
  expect_identical(ids_of(st$waiting_for), ids_of(c(a$job_id, b$job_id)))
  expect_null(st$position)
  expect_identical(finish(last)$status, "completed")
  expect_true(get_job_status(b$job_id)$completed_at <= get_job_status(last$job_id)$started_at)
  # A failure, then a cancel, fail their dependents with DEPENDENCY_FAILED, naming them.
  f <- create_job("fail", list(why = "no data"))
  g <- create_job("square", list(x = 1), depends_on = f$job_id)
  h <- create_job("square", list(x = 1), depends_on = g$job_id)
  for (pair in list(c(g$job_id, f$job_id), c(h$job_id, g$job_id))) {
    st <- finish(list(job_id = pair[[1L]]))
    expect_identical(st$error$code, "DEPENDENCY_FAILED")
    expect_match(st$error$message, pair[[2L]], fixed = TRUE)
  }
  p <- create_job("square", list(x = 1), delay = 60)
  q <- create_job("square", list(x = 1), depends_on = p$job_id)
  cancel_job(p$job_id)
  expect_match(finish(q)$error$message, "cancelled")
})

test_that("a delayed job shows when it runs, runs then, and can be cancelled before", {
  local_pool(1, max_queued = 10)
  t0 <- Sys.time()
  j <- create_job("square", list(x = 5), delay = 1.5)
  st <- get_job_status(j$job_id)
  expect_identical(st$status, "pending")
  expect_true(abs(as.numeric(st$scheduled_at) - as.numeric(t0) - 1.5) < 0.5)
  done <- finish(j)
  expect_identical(done$result, 25L)
  expect_true(as.numeric(done$started_at) >= as.numeric(st$scheduled_at) - 0.01)
  k <- create_job("square", list(x = 6), run_at = Sys.time() + 30)
  expect_identical(cancel_job(k$job_id)$status, "cancelled")
  expect_identical(get_job_status(k$job_id)$status, "cancelled")
})

test_that("schedules fire each slot once; the same definition again is no change; a name in use is refused", {
  local_pool(1)
  s <- schedule_job("every_second", "* * * * * *", "tick", list(n = 7L))
  expect_identical(s$status, "created")
  expect_identical(schedule_job("every_second", "* * * * * *", "tick", list(n = 7L))$status, "unchanged")
  expect_error(schedule_job("every_second", "*/5 * * * * *", "tick", list(n = 7L)), "replace = TRUE",
               class = "asyncjobs_error_schedule_exists")
  expect_true(wait_until(function() sum(list_jobs(operation = "tick")$status == "completed") >= 3, timeout = 30))
  expect_true(unschedule_job("every_second"))
  expect_false(unschedule_job("every_second"))
  Sys.sleep(1.2) # a slot that fired just before is done
  jobs <- list_jobs(operation = "tick")
  expect_true(all(jobs$schedule == "every_second"))
  slots <- sort(as.numeric(jobs$slot_at))
  expect_identical(anyDuplicated(slots), 0L)
  expect_identical(diff(slots), rep(1, length(slots) - 1L))
  expect_identical(finish(list(job_id = jobs$job_id[[1L]]))$result, 7L)
  r <- schedule_job("weekly", "0 6 * * MON", "tick", list(n = 1L), tz = "Europe/Berlin", missed = "once")
  expect_identical(list_schedules()$missed, "once")
  expect_identical(format(r$next_at, "%H:%M %a", tz = "Europe/Berlin"), "06:00 Mon")
  expect_identical(schedule_job("weekly", "0 7 * * MON", "tick", list(n = 1L), replace = TRUE)$status, "replaced")
  unschedule_job("weekly")
})

skip_on_cran()
skip_if_not_installed("callr")
urls <- store_urls()
for (engine in names(urls)) {
  url <- urls[[engine]]

  test_that(sprintf("[%s] the job model in a shared store: by name, children, chains, delays, schedules", engine), {
    local_store(url, n = 2L, handlers = test_path("handlers-model.R"))
    h <- get_hosts()
    expect_identical(h$operations[h$pid == Sys.getpid() & h$state == "live"],
                     paste(asyncjobs:::handler_names(), collapse = ","))
    j <- create_job("echo", list(a = 1:3, b = "x"))
    expect_identical(finish(j)$result, list(a = 1:3, b = "x"))
    expect_true(job_record_raw(j$job_id)$result_json)
    sp <- finish(create_job("spawn", list(n = 2L)))
    expect_identical(ids_of(sp$children), ids_of(sp$result$kids))
    a <- create_job("square", list(x = 2), delay = 1)
    b <- create_job("square", list(x = 3), depends_on = a$job_id)
    expect_identical(get_job_status(b$job_id)$waiting_for, a$job_id)
    expect_true(!is.null(get_job_status(a$job_id)$scheduled_at))
    expect_identical(finish(b)$result, 9L)
    f <- create_job("fail", list(why = "x"))
    g <- create_job("square", list(x = 1), depends_on = f$job_id)
    expect_identical(finish(g)$error$code, "DEPENDENCY_FAILED")
    expect_error(create_job("no_such_type", 1), class = "asyncjobs_error_unknown_operation")
    schedule_job("shared_second", "* * * * * *", "tick", list(n = 1L))
    expect_true(wait_until(function() nrow(list_jobs(operation = "tick")) >= 2, timeout = 30))
    unschedule_job("shared_second")
    slots <- as.numeric(list_jobs(operation = "tick")$slot_at)
    expect_identical(anyDuplicated(slots), 0L)
  })

  test_that(sprintf("[%s] code from the store runs only when signed with the host's key", engine), {
    dir <- tempfile("unsigned-")
    dir.create(dir)
    marker <- file.path(dir, "ran")
    # A host with another key: the API's signed closure fails there, unrun.
    local_store(url)
    host <- start_host(url, n = 1L, handlers = test_path("handlers-model.R"),
                       options = list(asyncjobs.key = "another key"))
    j <- create_job("writes", marker, function(path) file.create(path))
    st <- wait_for_job(j$job_id, 30000)
    expect_identical(st$status, "failed")
    expect_identical(st$error$code, "CODE_NOT_TRUSTED")
    expect_match(st$error$message, "does not match")
    expect_false(file.exists(marker))
    expect_null(job_record_raw(j$job_id)$worker_pid)
    # A handler job needs no key.
    expect_identical(wait_for_job(create_job("square", list(x = 4))$job_id, 30000)$result, 16L)
    stop_workers()
    # A process without a key cannot submit code to a shared store.
    withr::with_envvar(c(ASYNCJOBS_KEY = ""), {
      start_workers(n = 0L, store = url)
      expect_error(create_job("writes", marker, function(path) file.create(path)), "ASYNCJOBS_KEY",
                   class = "asyncjobs_error_no_key")
      stop_workers()
    })
    expect_false(file.exists(marker))
  })
}
