# Limits, uniqueness and the audit trail from R, on the memory store and on
# every shared store: queue caps and pauses, concurrency keys, submit rate
# limits (429), unique keys with a window, replace and force, submitters
# and tags, events, retries, retention per state, their routes, and bad input.

skip_if_not_installed("withr")
stores <- c(memory = "memory", store_urls())

on_each_store <- function(name, code, n = 2L, ...) {
  for (engine in names(stores)) {
    test_that(sprintf("[%s] %s", engine, name), {
      if (engine == "memory") {
        asyncjobs:::use_store("memory") # a fresh one: queue settings do not carry over
        args <- list(...)
        args$max_queued <- args$max_queued %||% 50L # the memory store's cap on active jobs is n + this
        do.call(local_pool, c(list(n, env = environment()), args))
      } else {
        local_store(stores[[engine]], n = n, ...)
      }
      code(engine)
    })
  }
}

gate <- function() {
  dir <- tempfile("gate-")
  dir.create(dir)
  dir
}

# A closure that waits until `open` exists, so a test decides when it ends.
gated <- function(p) {
  while (!file.exists(p$open)) Sys.sleep(0.02)
  p$value
}

on_each_store("a queue's cap holds jobs back; a paused queue starts none until resumed", function(engine) {
  g <- gate()
  open <- file.path(g, "open")
  jobs <- lapply(1:4, function(i) create_job("capped", list(open = open, value = i), gated, queue = "slow"))
  expect_true(wait_until(function() sum(list_jobs(status = "running")$queue == "slow") == 2L, timeout = 30))
  Sys.sleep(0.5)
  expect_identical(sum(list_jobs(status = "running")$queue == "slow"), 2L)
  q <- list_queues()
  expect_identical(q$max_running[q$queue == "slow"], 2L)
  expect_identical(q$pending[q$queue == "slow"], 2L)
  pause_queue("default")
  paused <- create_job("paused", list(open = open, value = "p"), gated)
  Sys.sleep(0.5)
  expect_identical(get_job_status(paused$job_id)$status, "pending")
  expect_true(list_queues()$paused[list_queues()$queue == "default"])
  resume_queue("default")
  file.create(open)
  for (j in c(jobs, list(paused))) expect_identical(finish(j)$status, "completed")
  expect_identical(finish(paused)$result, "p")
}, n = 3L, queues = c("default", "slow"), max_active = list(slow = 2))

on_each_store("jobs of a concurrency key at its limit wait while other keys pass", function(engine) {
  g <- gate()
  open <- file.path(g, "open")
  u1 <- lapply(1:3, function(i) create_job("k", list(open = open, value = i), gated, concurrency_key = "user:1",
                                           concurrency_limit = 2L))
  other <- create_job("k", list(open = open, value = "o"), gated, concurrency_key = "user:2")
  expect_true(wait_until(function() identical(get_job_status(other$job_id)$status, "running"), timeout = 30))
  Sys.sleep(0.5)
  running <- list_jobs(status = "running")
  expect_identical(sum(running$concurrency_key == "user:1", na.rm = TRUE), 2L)
  expect_identical(get_job_status(u1[[3]]$job_id)$status, "pending")
  file.create(open)
  for (j in c(u1, list(other))) expect_identical(finish(j)$status, "completed")
}, n = 4L)

on_each_store("a caller over its submit rate gets RATE_LIMITED, a 429 with Retry-After; other callers pass", function(engine) {
  for (i in 1:3) expect_identical(create_job("r", i, function(x) x, submitted_by = "ann")$status, "accepted")
  e <- tryCatch(create_job("r", 4, function(x) x, submitted_by = "ann"), error = identity)
  expect_s3_class(e, "asyncjobs_error_rate_limited")
  expect_identical(e$code, "RATE_LIMITED")
  expect_true(e$retry_after > 0 && e$retry_after <= 60)
  res <- fake_res()
  body <- job_response(e, res)
  expect_identical(res$status, 429L)
  expect_identical(res$headers[["Retry-After"]], as.character(e$retry_after))
  expect_identical(body$error, "RATE_LIMITED")
  expect_identical(create_job("r", 5, function(x) x, submitted_by = "ben")$status, "accepted")
  expect_identical(create_job("r", 6, function(x) x)$status, "accepted") # no caller: not limited
  expect_identical(sum(list_jobs(operation = "r")$submitted_by == "ann", na.rm = TRUE), 3L)
}, max_queued = 20L, rate_limits = list(submitted_by = c(n = 3, window = 60)))

on_each_store("unique keys: a completed twin within the window is the answer; replace and force submit anyway", function(engine) {
  a <- create_job("u", list(x = 1), function(p) p$x, unique_key = "report:7", unique_for = 3600)
  finish(a)
  dup <- create_job("u", list(x = 2), function(p) p$x, unique_key = "report:7", unique_for = 3600)
  expect_identical(dup$error, "DUPLICATE_JOB")
  expect_identical(dup$existing_job_id, a$job_id)
  # Without a window, only active twins count.
  b <- create_job("u", list(x = 3), function(p) p$x, unique_key = "report:7")
  expect_identical(b$status, "accepted")
  finish(b)
  forced <- create_job("u", list(x = 4), function(p) p$x, unique_key = "report:7", unique_for = 3600, force = TRUE)
  expect_identical(finish(forced)$result, 4)
  again <- create_job("u", list(x = 5), function(p) p$x, unique_key = "report:7", unique_for = 3600)
  expect_identical(again$existing_job_id, forced$job_id)
  # replace: a pending twin (its queue paused) gives way.
  pause_queue("default")
  p1 <- create_job("v", 1, function(x) x, unique_key = "nightly")
  p2 <- create_job("v", 2, function(x) x, unique_key = "nightly", replace = TRUE)
  old <- get_job_status(p1$job_id)
  expect_identical(old$status, "cancelled")
  expect_match(old$error$message, p2$job_id, fixed = TRUE)
  resume_queue("default")
  expect_identical(finish(p2)$result, 2)
})

on_each_store("submitters and tags are kept, listed and filtered, also through the admin route", function(engine) {
  a <- create_job("lab", 1, function(x) x, submitted_by = "ann", tags = c("genes", "nightly"))
  b <- create_job("lab", 2, function(x) x, submitted_by = "ann", tags = "genes")
  c <- create_job("lab", 3, function(x) x, submitted_by = "ben", tags = "nightly")
  for (j in list(a, b, c)) finish(j)
  expect_identical(list_jobs(submitted_by = "ann")$job_id, c(a$job_id, b$job_id))
  expect_identical(list_jobs(tags = "nightly")$job_id, c(a$job_id, c$job_id))
  expect_identical(list_jobs(submitted_by = "ann", tags = c("genes", "nightly"))$job_id, a$job_id)
  expect_identical(list_jobs(tags = "genes")$tags, c("genes,nightly", "genes"))
  # A job's child carries the labels and limits it is given.
  parent <- create_job("parent", NULL, function(p) {
    create_job("kid", 1, function(x) x, submitted_by = "a job", tags = "kids", concurrency_key = "kk")$job_id
  })
  kid <- finish(parent)$result
  expect_identical(finish(list(job_id = kid))$status, "completed")
  kids <- list_jobs(tags = "kids")
  expect_identical(kids$job_id, kid)
  expect_identical(c(kids$submitted_by, kids$concurrency_key), c("a job", "kk"))
  list_fn <- asyncjobs:::list_route(asyncjobs:::route_runner("/jobs", NULL))
  res <- fake_res()
  body <- list_fn(list(), res, submitted_by = "ann", tags = "nightly")
  expect_identical(body$jobs$job_id, a$job_id)
})

on_each_store("a job's events read back in order, with host and attempt; a failed job is retried under its id", function(engine) {
  j <- create_job("flaky", NULL, function(p) {
    asyncjobs::report_progress(step = "loading", current = 1, total = 2)
    Sys.sleep(0.3)
    stop("not yet")
  })
  expect_identical(finish(j)$status, "failed")
  ev <- get_job_events(j$job_id)
  expect_identical(ev$event, c("submitted", "claimed", "progress", "failed"))
  host <- asyncjobs:::pool_info()$host
  expect_identical(ev$host, rep(host, 4L))
  expect_identical(ev$attempt, c(0L, 1L, 1L, 1L))
  expect_identical(ev$detail[[3]], "loading (1/2)")
  expect_match(ev$detail[[4]], "^EXECUTION_ERROR: ")
  expect_true(!is.unsorted(as.numeric(ev$at)))
  expect_identical(retry_job(j$job_id, by = "ops"), list(job_id = j$job_id, status = "pending"))
  expect_identical(finish(j)$status, "failed")
  ev <- get_job_events(j$job_id)
  expect_identical(ev$event, c("submitted", "claimed", "progress", "failed", "retried", "claimed", "progress", "failed"))
  expect_identical(ev$attempt, c(0L, 1L, 1L, 1L, 1L, 2L, 2L, 2L))
  expect_identical(ev$detail[[5]], "by ops")
  ok <- create_job("fine", 1, function(x) x)
  finish(ok)
  expect_identical(retry_job(ok$job_id)$error, "JOB_NOT_FAILED")
  expect_identical(retry_job("00000000-0000-4000-8000-000000000000")$error, "JOB_NOT_FOUND")
  expect_identical(get_job_events("00000000-0000-4000-8000-000000000000")$error, "JOB_NOT_FOUND")
  # Cancelled by someone: the message and the event say who.
  pause_queue("default")
  k <- create_job("kept", 1, function(x) x)
  cancel_job(k$job_id, by = "alice")
  expect_identical(get_job_status(k$job_id)$error$message, "Job was cancelled by alice")
  expect_identical(tail(get_job_events(k$job_id)$event, 1L), "cancelled")
  resume_queue("default")
})

on_each_store("the routes: events behind authorize, retry and queue pause/resume for operators", function(engine) {
  skip_if_not_installed("plumber")
  j <- create_job("routed", NULL, function(p) stop("boom at /srv/secret/file.R"))
  finish(j)
  allow <- function(req, action, job_id) action != "events" || grepl("ok", req$QUERY_STRING, fixed = TRUE)
  pr <- job_routes("/jobs", authorize = allow, admin = TRUE)
  events <- paste0("/", j$job_id, "/events")
  expect_identical(route_call(pr, "GET", events)$status, 403L)
  r <- route_call(pr, "GET", events, "ok=1")
  expect_identical(r$status, 200L)
  expect_identical(vapply(r$body$events, function(e) e$event, ""), c("submitted", "claimed", "failed"))
  expect_false(grepl("/srv/secret", r$text, fixed = TRUE))
  r <- route_call(pr, "POST", paste0("/", j$job_id, "/retry"))
  expect_identical(r$status, 200L)
  expect_identical(r$body$status, "pending")
  expect_identical(finish(j)$status, "failed")
  ok <- create_job("fine", 1, function(x) x)
  finish(ok)
  r <- route_call(pr, "POST", paste0("/", ok$job_id, "/retry"))
  expect_equal(r$status, 409)
  expect_identical(r$body$error, "JOB_NOT_FAILED")
  expect_identical(route_call(pr, "POST", "/queues/nightly/pause")$status, 200L)
  r <- route_call(pr, "GET", "/queues")
  q <- Filter(function(x) identical(x$queue, "nightly"), r$body$queues)
  expect_true(length(q) == 1L && isTRUE(q[[1]]$paused))
  expect_identical(route_call(pr, "POST", "/queues/nightly/resume")$status, 200L)
  expect_false(list_queues()$paused[list_queues()$queue == "nightly"])
  # Not an operator's router: none of these.
  public <- job_routes("/jobs")
  expect_identical(route_call(public, "GET", "/queues")$status, 404L)
  expect_equal(route_call(public, "POST", paste0("/", j$job_id, "/retry"))$status, 404) # plumber's own
})

on_each_store("retention per state removes each state at its own age, with its events", function(engine) {
  ok <- create_job("ret", 1, function(x) x)
  bad <- create_job("ret", 2, function(x) stop("no"))
  finish(ok)
  finish(bad)
  expect_true(wait_until(function() identical(get_job_status(ok$job_id)$error, "JOB_NOT_FOUND"), timeout = 30))
  expect_identical(get_job_events(ok$job_id)$error, "JOB_NOT_FOUND")
  expect_identical(get_job_status(bad$job_id)$status, "failed")
  expect_identical(get_job_events(bad$job_id)$event[[1]], "submitted")
}, retention = list(completed = 0.5, failed = 3600))

test_that("bad limits, labels and uniqueness are classed errors naming the argument, and nothing is written", {
  local_pool(1L)
  before <- nrow(list_jobs())
  bad <- list(
    list(args = list(submitted_by = ""), arg = "submitted_by"),
    list(args = list(submitted_by = c("a", "b")), arg = "submitted_by"),
    list(args = list(tags = c("a,b")), arg = "tags"),
    list(args = list(tags = strrep("t", 65)), arg = "tags"),
    list(args = list(tags = NA_character_), arg = "tags"),
    list(args = list(tags = "a\x1fb"), arg = "tags"),
    list(args = list(submitted_by = "ann\nbob"), arg = "submitted_by"),
    list(args = list(concurrency_key = 42), arg = "concurrency_key"),
    list(args = list(concurrency_key = strrep("k", 256)), arg = "concurrency_key"),
    list(args = list(concurrency_key = "k", concurrency_limit = 0), arg = "concurrency_limit"),
    list(args = list(concurrency_key = "k", concurrency_limit = 1.5), arg = "concurrency_limit"),
    list(args = list(unique_key = list("x")), arg = "unique_key"),
    list(args = list(unique_for = -1), arg = "unique_for"),
    list(args = list(unique_for = Inf), arg = "unique_for"),
    list(args = list(replace = NA), arg = "replace"),
    list(args = list(replace = TRUE, force = TRUE), arg = "force")
  )
  for (b in bad) {
    e <- tryCatch(do.call(create_job, c(list("bad", 1, function(x) x), b$args)), error = identity)
    expect_s3_class(e, "asyncjobs_error_argument")
    expect_identical(e$arg, b$arg, info = deparse(b$args))
  }
  expect_identical(nrow(list_jobs()), before)
  starts <- list(
    list(args = list(max_active = list(nope = 2)), arg = "max_active"),
    list(args = list(max_active = list(default = 0)), arg = "max_active$default"),
    list(args = list(max_active = list(default = 1.5)), arg = "max_active$default"),
    list(args = list(max_active = list(3, 4)), arg = "max_active"),
    list(args = list(max_active = "8"), arg = "max_active"),
    list(args = list(retention = list(done = 1)), arg = "retention"),
    list(args = list(retention = list(failed = -1)), arg = "retention$failed"),
    list(args = list(rate_limits = list(callers = c(5, 60))), arg = "rate_limits"),
    list(args = list(rate_limits = list(submitted_by = 5)), arg = "rate_limits$submitted_by"),
    list(args = list(rate_limits = list(submitted_by = c(n = 0, window = 60))), arg = "rate_limits$submitted_by[\"n\"]"),
    list(args = list(rate_limits = list(submitted_by = c(n = 5, window = 0))), arg = "rate_limits$submitted_by[\"window\"]"),
    list(args = list(rate_limits = list(operation = c(n = 2.5, window = 60))), arg = "rate_limits$operation[\"n\"]")
  )
  stop_workers()
  for (b in starts) {
    e <- tryCatch(do.call(start_workers, c(list(n = 1L), b$args)), error = identity)
    expect_s3_class(e, "asyncjobs_error_argument")
    expect_identical(e$arg, b$arg, info = deparse(b$args))
    expect_false(asyncjobs:::pool_info()$running)
  }
  for (f in list(function() pause_queue(""), function() set_queue_cap("default", 0), function() retry_job(NA),
                 function() cancel_job("x", by = 3), function() list_jobs(submitted_by = 1), function() list_jobs(tags = NA))) {
    expect_s3_class(tryCatch(f(), error = identity), "asyncjobs_error")
  }
})
