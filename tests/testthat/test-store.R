# Durable stores shared by processes: the same scenarios on SQLite always, and
# on PostgreSQL and MySQL/MariaDB when tools/test.sh found them. Every
# "host" and "replica" below is a real R process.

skip_on_cran() # slow and process-heavy: tools/test.sh and CI run it
skip_if_not_installed("callr")
urls <- store_urls()
if (length(urls) < 3L) {
  message("store suites: ", paste(setdiff(c("postgres", "mysql"), names(urls)), collapse = " and "),
          " not tested (set ASYNCJOBS_TEST_POSTGRES / ASYNCJOBS_TEST_MYSQL, or run tools/test.sh)")
}

for (engine in names(urls)) {
  url <- urls[[engine]]

  test_that(sprintf("[%s] a job submitted on one process runs on another; output, progress and cancel cross", engine), {
    local_store(url)
    host <- start_host(url, n = 1L)
    j <- create_job("cross", list(x = 2), function(p) {
      cat("from the host\n")
      c(value = p$x * 21, pid = Sys.getpid())
    })
    st <- wait_for_job(j$job_id, 30000)
    expect_identical(st$status, "completed")
    expect_identical(st$result[["value"]], 42)
    expect_false(st$result[["pid"]] %in% c(Sys.getpid(), host$proc$get_pid()))
    expect_match(get_job_output(j$job_id), "from the host")

    k <- create_job("cross-long", list(seconds = 120, value = 1), sleeper)
    expect_true(wait_until(function() !is.na(job_pid(k$job_id)), 30))
    pid <- job_pid(k$job_id)
    expect_true(pid %in% host$workers())
    expect_identical(cancel_job(k$job_id)$status, "cancelled")
    expect_identical(get_job_status(k$job_id)$error$code, "CANCELLED")
    # The host running it sees the cancel within about a second and kills the worker.
    expect_true(wait_until(function() proc_dead(pid), 15), info = "the cancelled job's worker still runs")
    again <- create_job("cross", list(x = 1), function(p) p$x)
    expect_identical(wait_for_job(again$job_id, 30000)$result, 1)
    expect_true(all(c(j$job_id, k$job_id, again$job_id) %in% list_jobs()$job_id))
    expect_identical(check_duplicate_job("cross", list(x = 1))$duplicate, FALSE)
  })

  test_that(sprintf("[%s] racing unique submits from two processes create one job; the cap holds store-wide", engine), {
    local_store(url)
    twins <- race(2, url, function(i) vapply(1:4, function(k) {
      r <- asyncjobs::create_job("racy", list(genes = 1:3), function(p) p, unique = TRUE, queue = "nobody")
      if (is.null(r$error)) "accepted" else r$error
    }, ""))
    twins <- unlist(twins)
    expect_identical(sum(twins == "accepted"), 1L, info = paste(twins, collapse = " "))
    expect_true(all(twins %in% c("accepted", "DUPLICATE_JOB")))
    active <- list_jobs(status = "pending", operation = "racy")
    expect_identical(nrow(active), 1L)
    dup <- create_job("racy", list(genes = 1:3), function(p) p, unique = TRUE, queue = "nobody")
    expect_identical(dup$error, "DUPLICATE_JOB")
    expect_identical(dup$existing_job_id, active$job_id)
    expect_identical(check_duplicate_job("racy", list(genes = 1:3))$existing_job_id, active$job_id)
    cancel_active()

    capped <- unlist(race(2, url, function(i) vapply(1:25, function(k) {
      r <- asyncjobs::create_job("capped", c(i, k), function(p) p, queue = "nobody")
      if (is.null(r$error)) "accepted" else r$error
    }, ""), max_active = 8))
    expect_identical(sum(capped == "accepted"), 8L)
    expect_true(all(capped %in% c("accepted", "CAPACITY_EXCEEDED")))
    expect_identical(nrow(list_jobs(status = c("pending", "running"))), 8L)
  })

  test_that(sprintf("[%s] a worker host killed mid-job: HOST_LOST, or one more run when attempts remain", engine), {
    withr::local_options(asyncjobs.lease_seconds = 3)
    local_store(url)
    marker <- tempfile("attempt-")
    host <- start_host(url, n = 2L, queues = "remote")
    once <- create_job("doomed", list(seconds = 120, value = 1), sleeper, queue = "remote")
    twice <- create_job("retried", list(marker = marker), function(p) {
      if (file.exists(p$marker)) return("second run")
      file.create(p$marker)
      asyncjobs::report_progress(step = as.character(Sys.getpid()))
      Sys.sleep(120)
    }, queue = "remote", max_attempts = 2L)
    expect_true(wait_until(function() !is.na(job_pid(once$job_id)) && !is.na(job_pid(twice$job_id)), 30))
    workers <- c(job_pid(once$job_id), job_pid(twice$job_id))
    killed_at <- Sys.time()
    host$proc$kill()
    # Its workers die with it.
    expect_true(wait_until(function() all(vapply(workers, proc_dead, TRUE)), 15))
    expect_true(wait_until(function() identical(get_job_status(once$job_id)$status, "failed"), 45))
    expect_lt(as.numeric(Sys.time() - killed_at, units = "secs"), 45)
    lost <- get_job_status(once$job_id)$error
    expect_identical(lost$code, "HOST_LOST")
    expect_match(lost$message, "last heartbeat")
    expect_true(wait_until(function() identical(get_job_status(twice$job_id)$status, "pending"), 30))
    other <- start_host(url, n = 1L, queues = "remote")
    st <- wait_for_job(twice$job_id, 60000)
    expect_identical(st$status, "completed")
    expect_identical(st$result, "second run")
  })

  test_that(sprintf("[%s] a host stopped past its lease is fenced: it writes nothing when it resumes", engine), {
    withr::local_options(asyncjobs.lease_seconds = 3)
    local_store(url)
    host <- start_host(url, n = 1L, queues = "fence")
    j <- create_job("fenced", list(seconds = 6, value = "late result"), sleeper, queue = "fence")
    expect_true(wait_until(function() !is.na(job_pid(j$job_id)), 30))
    started <- Sys.time()
    tools::pskill(host$proc$get_pid(), tools::SIGSTOP)
    on.exit(tools::pskill(host$proc$get_pid(), tools::SIGCONT), add = TRUE)
    expect_true(wait_until(function() identical(get_job_status(j$job_id)$status, "failed"), 30))
    expect_identical(get_job_status(j$job_id)$error$code, "HOST_LOST")
    # The worker (not stopped) finishes; its result waits in the stopped host's pipe.
    Sys.sleep(max(0, 7 - as.numeric(Sys.time() - started, units = "secs")))
    tools::pskill(host$proc$get_pid(), tools::SIGCONT)
    Sys.sleep(3)
    st <- get_job_status(j$job_id)
    expect_identical(st$status, "failed")
    expect_identical(st$error$code, "HOST_LOST")
    expect_null(st$result)
    # The resumed host is healthy and runs new work.
    k <- create_job("fenced", list(seconds = 0, value = "fresh"), sleeper, queue = "fence")
    expect_identical(wait_for_job(k$job_id, 30000)$result, "fresh")
  })

  test_that(sprintf("[%s] jobs survive kill -9 of the API: results stay, pending jobs run after a restart", engine), {
    withr::local_options(asyncjobs.lease_seconds = 3)
    api <- start_host(url, n = 1L, then = function() {
      done <- create_job("durable", 1, function(p) "kept")
      wait_for_job(done$job_id, 30000)
      later <- create_job("durable", 2, function(p) "ran after restart", queue = "later")
      running <- create_job("durable", list(seconds = 120, value = 0), function(p) {
        asyncjobs::report_progress(step = as.character(Sys.getpid()))
        Sys.sleep(p$seconds)
      })
      while (!identical(get_job_status(running$job_id)$status, "running")) Sys.sleep(0.05)
      list(done = done$job_id, later = later$job_id, running = running$job_id)
    })
    ids <- api$value()
    api$proc$kill()
    local_store(url, n = 1L, queues = c("default", "later"), clean = FALSE)
    expect_identical(get_job_status(ids$done)$result, "kept")
    expect_identical(wait_for_job(ids$later, 60000)$result, "ran after restart")
    st <- wait_for_job(ids$running, 60000)
    expect_identical(st$status, "failed")
    expect_identical(st$error$code, "HOST_LOST")
  })

  test_that(sprintf("[%s] retention deletes finished jobs on a timer", engine), {
    local_store(url, n = 1L, retention = 1)
    j <- create_job("kept-briefly", 1, function(p) p)
    expect_identical(wait_for_job(j$job_id, 30000)$status, "completed")
    expect_true(wait_until(function() identical(get_job_status(j$job_id)$error, "JOB_NOT_FOUND"), 20))
  })

  test_that(sprintf("[%s] queues and priorities: higher first, FIFO within, only the lanes served", engine), {
    local_store(url, n = 1L, queues = "interactive")
    gate <- tempfile("gate-")
    block <- create_job("gate", gate, function(p) { while (!file.exists(p)) Sys.sleep(0.02); Sys.time() },
                        queue = "interactive")
    expect_true(wait_until(function() identical(get_job_status(block$job_id)$status, "running"), 30))
    low1 <- create_job("lane", "low1", function(p) as.numeric(Sys.time()), queue = "interactive")
    low2 <- create_job("lane", "low2", function(p) as.numeric(Sys.time()), queue = "interactive")
    high <- create_job("lane", "high", function(p) as.numeric(Sys.time()), queue = "interactive", priority = 10L)
    maint <- create_job("lane", "maint", function(p) p, queue = "maintenance", priority = 100L)
    expect_identical(get_job_status(high$job_id)$position, 1L)
    expect_identical(get_job_status(low2$job_id)$position, 3L)
    file.create(gate)
    t <- vapply(list(high, low1, low2), function(j) wait_for_job(j$job_id, 30000)$result, 1)
    expect_true(t[[1]] < t[[2]] && t[[2]] < t[[3]], info = paste(t, collapse = " "))
    expect_identical(get_job_status(maint$job_id)$status, "pending")
    jobs <- list_jobs(operation = "lane")
    expect_identical(jobs$queue[jobs$job_id == maint$job_id], "maintenance")
    expect_identical(jobs$priority[jobs$job_id == high$job_id], 10L)
  })

  test_that(sprintf("[%s] list_jobs filters, sorts and pages in the store", engine), {
    local_store(url)
    ids <- vapply(1:5, function(i) create_job("paged", i, function(p) p, queue = "nobody")$job_id, "")
    cancel_job(ids[[2L]])
    cancel_job(ids[[4L]])
    # Newest first, two at a time, following the cursor.
    seen <- character()
    cursor <- NULL
    repeat {
      page <- list_jobs(operation = "paged", limit = 2, cursor = cursor, newest_first = TRUE)
      expect_lte(nrow(page), 2L)
      seen <- c(seen, page$job_id)
      cursor <- attr(page, "next_cursor")
      if (is.null(cursor)) break
    }
    expect_identical(seen, rev(ids))
    # The documented default: oldest first, every job, and no next page.
    all <- list_jobs(operation = "paged")
    expect_identical(all$job_id, ids)
    expect_null(attr(all, "next_cursor"))
    expect_named(all, c("job_id", "operation", "status", "submitted_at", "started_at", "completed_at",
                        "duration_seconds", "error_code", "queue", "priority"))
    pending <- list_jobs(status = "pending", operation = "paged", limit = 1)
    expect_identical(pending$job_id, ids[[1L]])
    expect_type(attr(pending, "next_cursor"), "character")
    after <- list_jobs(status = "pending", operation = "paged", cursor = attr(pending, "next_cursor"))
    expect_identical(after$job_id, ids[c(3L, 5L)])
    expect_identical(list_jobs(status = "cancelled", operation = "paged", newest_first = TRUE)$job_id, ids[c(4L, 2L)])
    expect_identical(nrow(list_jobs(status = "running", limit = 50)), 0L)
    expect_identical(nrow(list_jobs(status = "no-such-status")), 0L)
    expect_error(list_jobs(cursor = "not-a-cursor"), "`cursor`", class = "asyncjobs_error_argument")
    expect_error(list_jobs(limit = -1), "`limit`", class = "asyncjobs_error_argument")
    expect_error(list_jobs(cursor = 1), "`cursor`", class = "asyncjobs_error_argument")
    # The operator route: newest first, a page and where the next starts.
    admin <- job_routes("/jobs", admin = TRUE)
    r <- route_call(admin, "GET", "/", "?operation=paged&limit=3")
    expect_identical(r$status, 200L)
    expect_identical(r$body$count, 3L)
    got <- vapply(r$body$jobs, function(j) j$job_id, "")
    expect_identical(got, rev(ids)[1:3])
    r <- route_call(admin, "GET", "/", paste0("?operation=paged&limit=3&cursor=", r$body$next_cursor))
    expect_identical(vapply(r$body$jobs, function(j) j$job_id, ""), rev(ids)[4:5])
    expect_null(r$body$next_cursor)
    expect_identical(route_call(admin, "GET", "/", "?cursor=bogus")$status, 400L)
    expect_identical(route_call(admin, "GET", "/", "?limit=20000")$status, 400L)
    for (id in ids) cancel_job(id)
  })

  test_that(sprintf("[%s] input the store refuses for good is a 400 or 413, not an outage; nothing is written", engine), {
    local_store(url)
    before <- nrow(list_jobs())
    r <- create_job(strrep("o", 256L), 1, function(p) p)
    expect_identical(r$error, "INVALID_INPUT")
    expect_match(r$message, "255")
    res <- fake_res()
    job_response(r, res)
    expect_identical(res$status, 400L)
    expect_null(res$headers[["Retry-After"]])
    ok <- create_job(strrep("\u00e9", 255L), 1, function(p) p, queue = "nobody")
    expect_identical(ok$status, "accepted")
    if (engine == "mysql") {
      # Over MariaDB's max_allowed_packet (16 MiB by default).
      r <- create_job("big", as.raw(rep(1L, 17 * 2^20)), function(p) length(p))
      expect_identical(r$error, "PAYLOAD_TOO_LARGE")
      expect_identical(r$arg, "params")
      expect_gt(r$limit_bytes, 0)
      expect_match(r$message, "max_allowed_packet")
      res <- fake_res()
      job_response(r, res)
      expect_identical(res$status, 413L)
      # The store still answers at once (the statement was never sent).
      expect_identical(create_job("small", 1, function(p) p, queue = "nobody")$status, "accepted")
    }
    expect_identical(nrow(list_jobs()), before + 1L + (engine == "mysql"))
  })
}

for (engine in setdiff(names(urls), "sqlite")) {
  test_that(sprintf("[%s] a database outage is not a job failure; calls meanwhile say STORE_UNAVAILABLE", engine), {
    withr::local_options(asyncjobs.lease_seconds = 3, asyncjobs.store_timeout_ms = 2000)
    proxy <- local_proxy(urls[[engine]])
    local_store(proxy$url, n = 1L)
    # Another host behind the same cut: when the database is back it must not
    # take this host's job for lost.
    bystander <- start_host(proxy$url, n = 1L, queues = "elsewhere")
    j <- create_job("outage", list(seconds = 4, value = "survived"), sleeper)
    expect_true(wait_until(function() !is.na(job_pid(j$job_id)), 30))
    proxy$cut()
    r <- create_job("outage", 1, function(p) p)
    expect_identical(r$error, "STORE_UNAVAILABLE")
    expect_false(grepl("127.0.0.1:[0-9]+/", sub("@", "", r$message)) && grepl(":[^@/]*@", r$message))
    state <- asyncjobs:::.state
    state$outage_logged <- NULL # the log takes a line per 10 s
    res <- fake_res()
    expect_message(body <- job_response(r, res), "unavailable \\(submit\\)")
    expect_identical(res$status, 503L)
    expect_identical(res$headers[["Retry-After"]], "5")
    # A submit route's body names no store either.
    expect_no_match(body$message, "127\\.0\\.0\\.1|postgres|mysql")
    expect_identical(get_job_status(j$job_id)$error, "STORE_UNAVAILABLE")
    expect_identical(cancel_job(j$job_id)$error, "STORE_UNAVAILABLE")
    expect_identical(check_duplicate_job("outage", 1)$error, "STORE_UNAVAILABLE")
    # Public routes say only that the service is unavailable; the store's
    # address and error go to the log, and to the operator routes.
    public <- job_routes("/jobs")
    state$outage_logged <- NULL
    for (req in list(c("GET", ""), c("GET", "/result"), c("GET", "/output"), c("DELETE", ""))) {
      expect_message(r <- route_call(public, req[[1L]], paste0("/", j$job_id, req[[2L]])), "127.0.0.1")
      expect_identical(r$status, 503L, info = req)
      expect_identical(r$body$error, "STORE_UNAVAILABLE")
      expect_identical(r$headers[["Retry-After"]], "5")
      expect_no_match(r$text, "127\\.0\\.0\\.1|postgres|mysql|harden|test|:[0-9]{2,5}/", info = req)
      state$outage_logged <- NULL # the log takes a line per 10 s: the next one is logged too
    }
    admin <- job_routes("/jobs", admin = TRUE)
    r <- route_call(admin, "GET", "/", "?status=running")
    expect_identical(r$status, 503L)
    expect_match(r$body$message, "127.0.0.1", fixed = TRUE)
    # Longer than the lease and than the job: the worker finishes meanwhile.
    Sys.sleep(6)
    proxy$start()
    st <- wait_for_job(j$job_id, 60000)
    expect_identical(st$status, "completed")
    expect_identical(st$result, "survived")
    k <- create_job("outage", list(seconds = 0, value = "after"), sleeper)
    expect_identical(wait_for_job(k$job_id, 30000)$result, "after")
  })
}

if ("mysql" %in% names(urls)) {
  test_that("[mysql] a result over max_allowed_packet fails the job with RESULT_TOO_LARGE and frees the slot", {
    local_store(urls[["mysql"]], n = 1L)
    big <- create_job("big-result", 20e6, function(n) as.raw(rep(1L, n)), max_attempts = 2L)
    st <- wait_for_job(big$job_id, 60000)
    expect_identical(st$status, "failed")
    expect_identical(st$error$code, "RESULT_TOO_LARGE")
    expect_match(st$error$message, "2000[0-9]{4} bytes, more than the [0-9]+ bytes .*max_allowed_packet")
    # The slot is free: the next job runs on the same worker.
    nxt <- create_job("after-big", 1, function(p) p + 1)
    expect_identical(wait_for_job(nxt$job_id, 30000)$result, 2)
    # An error message longer than MySQL's TEXT column is cut, and the job ends.
    long <- create_job("long-error", NULL, function(p) stop(simpleError(strrep("e", 70000))))
    st <- wait_for_job(long$job_id, 30000)
    expect_identical(st$status, "failed")
    expect_identical(st$error$code, "EXECUTION_ERROR")
    expect_gt(nchar(st$error$message), 60000)
  })
}

test_that("a password in a store URL never appears in messages or the worker status", {
  err <- tryCatch(start_workers(1, store = "postgres://app:s3cretpw@127.0.0.1:1/none"), error = identity)
  expect_s3_class(err, "asyncjobs_error_store_unavailable")
  expect_false(grepl("s3cretpw", conditionMessage(err)))
  expect_match(conditionMessage(err), "app:\\*\\*\\*@127.0.0.1:1/none")
  pg <- Sys.getenv("ASYNCJOBS_TEST_POSTGRES", "")
  skip_if(!nzchar(pg) || pg == "skip", "no PostgreSQL to connect with a password")
  with_pw <- sub("://([^:@/]+)@", "://\\1:s3cretpw@", pg)
  local_store(with_pw)
  st <- get_worker_status()
  expect_false(grepl("s3cretpw", attr(st, "store")))
  expect_match(attr(st, "store"), ":\\*\\*\\*@")
})

test_that("a password in a store URL's query never appears in the worker status", {
  pg <- Sys.getenv("ASYNCJOBS_TEST_POSTGRES", "")
  skip_if(!nzchar(pg) || pg == "skip", "no PostgreSQL to connect with a password")
  # The password in the query, as sqlx also takes it.
  in_query <- paste0(sub("://([^:@/]+)@", "://", pg), "?user=", sub("^[a-z]+://([^:@/]+)@.*$", "\\1", pg),
                     "&password=s3cretpw")
  local_store(in_query)
  expect_false(grepl("s3cretpw", attr(get_worker_status(), "store")))
  expect_false(grepl("s3cretpw", asyncjobs:::pool_info()$store))
})

test_that("no form of credentials in a store URL is shown when it cannot be opened", {
  for (url in c("postgres://127.0.0.1:1/none?user=app&password=s3cretpw",
                "postgres://app:s3cret/pw@127.0.0.1:1/none",
                "postgres://app:s3cret?pw@127.0.0.1:1/none",
                "mysql://app:s3cret/pw@127.0.0.1:1/none")) {
    err <- tryCatch(start_workers(1, store = url), error = identity)
    expect_s3_class(err, "asyncjobs_error_store_unavailable")
    expect_false(grepl("s3cret", conditionMessage(err)), info = url)
  }
})
