# The job model across processes, on every shared store at once (one run
# of each scenario covers SQLite, PostgreSQL and MariaDB side by side, so
# the two-minute one costs two minutes): a schedule fired by several API
# replicas and worker hosts, one killed with -9 half-way; and a chain whose
# middle job's host is killed with -9 (its events tell what happened).

skip_on_cran() # slow and process-heavy: tools/test.sh and CI run it
skip_if_not_installed("callr")
urls <- store_urls()
handlers <- test_path("handlers-model.R")


test_that("a schedule fires every slot exactly once with two replicas and two worker hosts, one killed -9 half-way", {
  minutes <- as.numeric(Sys.getenv("ASYNCJOBS_TEST_SCHEDULE_SECONDS", "120")) / 60
  here <- environment() # the processes live as long as this test
  fleet <- lapply(urls, function(url) {
    on_store(url, function() {
      suppressMessages(cleanup_old_jobs(0))
      if ("tick2" %in% list_schedules()$name) unschedule_job("tick2")
    })
    list(replicas = lapply(1:2, function(i) {
           start_host(url, n = 0L, handlers = handlers, env = here, then = if (i == 1L) function() {
             schedule_job("tick2", "*/2 * * * * *", "tick", list(n = 2L), max_attempts = 2L)
             as.numeric(Sys.time())
           })
         }),
         hosts = lapply(1:2, function(i) start_worker_host(url, n = 1L, handlers = handlers, lease = 3, env = here)))
  })
  created <- vapply(fleet, function(f) f$replicas[[1L]]$value(), 1)
  half <- max(created) + minutes * 30
  while (Sys.time() < half) Sys.sleep(0.5)
  for (f in fleet) f$hosts[[1L]]$proc$kill() # kill -9
  end <- max(created) + minutes * 60
  while (Sys.time() < end) Sys.sleep(0.5)
  stopped <- vapply(urls, function(url) on_store(url, function() { unschedule_job("tick2"); as.numeric(Sys.time()) }), 1)
  Sys.sleep(6) # what fired last runs; a job the killed host held is rescued (lease 3 s) and run again
  for (engine in names(urls)) {
    jobs <- on_store(urls[[engine]], function() list_jobs(operation = "tick"))
    slots <- sort(as.numeric(jobs$slot_at))
    info <- sprintf("%s: %d jobs, slots %s", engine, nrow(jobs), paste(range(slots) - created[[engine]], collapse = " to "))
    expect_identical(anyDuplicated(slots), 0L, info = info)
    expect_identical(unique(diff(slots)), 2, info = info) # no slot missed
    expect_true(slots[[1L]] <= created[[engine]] + 2, info = info)
    expect_true(slots[[length(slots)]] >= stopped[[engine]] - 3, info = info)
    expect_true(length(slots) >= minutes * 30 - 2, info = info)
    expect_true(all(jobs$status == "completed"), info = paste(info, paste(unique(jobs$status), collapse = ",")))
  }
})

test_that("a chain whose middle job's host is killed -9: completed by a retry, or failed HOST_LOST with one attempt; never run twice", {
  here <- environment()
  runs <- lapply(urls, function(url) {
    dir <- tempfile("chain-")
    for (d in c("retried", "once")) dir.create(file.path(dir, d), recursive = TRUE)
    on_store(url, function() suppressMessages(cleanup_old_jobs(0)))
    first <- start_worker_host(url, n = 2L, handlers = handlers, lease = 3, env = here)
    api <- start_host(url, n = 0L, handlers = handlers, env = here, then = function() {
      c(retried = create_job("level1", list(dir = file.path(dir, "retried"), middle = "level2"))$job_id,
        once = create_job("level1", list(dir = file.path(dir, "once"), middle = "level2_once"))$job_id)
    })
    list(url = url, dir = dir, first = first, api = api)
  })
  # Both middle jobs are running (blocked) on the first host.
  ok <- wait_until(function() all(vapply(runs, function(r) all(file.exists(file.path(r$dir, c("retried", "once"), "middle-1"))), TRUE)),
                   timeout = 120, interval = 0.2)
  expect_true(ok)
  seconds <- lapply(runs, function(r) start_worker_host(r$url, n = 2L, handlers = handlers, lease = 3, env = here))
  for (r in runs) r$first$proc$kill() # kill -9, with its workers
  for (engine in names(urls)) {
    r <- runs[[engine]]
    ids <- r$api$value()
    on_store(r$url, function() {
      done <- wait_until(function() {
        lj <- list_jobs(operation = c("level2", "level2_once", "level3"))
        nrow(lj) == 4L && all(lj$status %in% c("completed", "failed", "cancelled"))
      }, timeout = 90, interval = 0.2)
      expect_true(done, info = engine)
      level1 <- lapply(ids, function(id) get_job_status(id))
      middle <- lapply(level1, function(s) get_job_status(s$result))
      last <- lapply(middle, function(s) get_job_status(s$children))
      # With a second attempt: the chain completed; the middle job ran twice
      # and found the last job its first run had submitted.
      expect_identical(middle$retried$status, "completed", info = engine)
      expect_identical(middle$retried$result, middle$retried$children, info = engine)
      expect_identical(last$retried$status, "completed", info = engine)
      expect_true(file.exists(file.path(r$dir, "retried", "middle-2")), info = engine)
      # Its events, in order: the run on the killed host, the rescue, the second run elsewhere.
      ev <- get_job_events(middle$retried$job_id)
      ev <- ev[ev$event != "progress", ]
      expect_identical(ev$event, c("submitted", "claimed", "rescued", "claimed", "completed"), info = engine)
      expect_identical(ev$attempt, c(0L, 1L, 1L, 2L, 2L), info = engine)
      expect_identical(ev$host[[3]], ev$host[[2]], info = engine)
      expect_false(identical(ev$host[[4]], ev$host[[2]]), info = engine)
      expect_identical(ev$host[[5]], ev$host[[4]], info = engine)
      expect_match(ev$detail[[3]], "^HOST_LOST: ", info = engine)
      expect_false(is.unsorted(as.numeric(ev$at)), info = engine)
      once <- get_job_events(middle$once$job_id)
      once <- once[once$event != "progress", ]
      expect_identical(once$event, c("submitted", "claimed", "failed"), info = engine)
      expect_match(once$detail[[3]], "^HOST_LOST: ", info = engine)
      # With one: the middle job failed HOST_LOST; the last, waiting on it, never ran.
      expect_identical(middle$once$error$code, "HOST_LOST", info = engine)
      expect_identical(last$once$error$code, "DEPENDENCY_FAILED", info = engine)
      expect_false(file.exists(file.path(r$dir, "once", "middle-2")), info = engine)
      # Each last job exists once, and ran at most once.
      lj <- list_jobs(operation = "level3")
      expect_identical(sort(lj$parent_id), unname(sort(vapply(middle, function(s) s$job_id, ""))), info = engine)
      expect_identical(length(list.files(file.path(r$dir, "retried"), "^last-")), 1L, info = engine)
      expect_identical(length(list.files(file.path(r$dir, "once"), "^last-")), 0L, info = engine)
    })
  }
})
