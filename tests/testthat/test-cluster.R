# Workers on other hosts: worker-only hosts (`Rscript -e
# 'asyncjobs::run_workers(...)'`) drained by SIGTERM, cut off from the
# database by a network namespace, living through a database restart, and a
# bounded soak with kills, freezes and cancels. Real processes, real servers:
# SQLite always, PostgreSQL and MySQL/MariaDB when tools/test.sh found them.
#
# ASYNCJOBS_SOAK_SECONDS: how long the soak runs on each engine (default 60;
# the issue's 10-minute soak is ASYNCJOBS_SOAK_SECONDS=600).

skip_on_cran() # slow and process-heavy: tools/test.sh and CI run it
skip_if_not_installed("callr")
skip_if_not_installed("processx")
skip_on_os(c("windows", "mac", "solaris"))
urls <- store_urls()
if (length(urls) < 3L) {
  message("cluster suites: ", paste(setdiff(c("postgres", "mysql"), names(urls)), collapse = " and "),
          " not tested (set ASYNCJOBS_TEST_POSTGRES / ASYNCJOBS_TEST_MYSQL, or run tools/test.sh)")
}
servers <- setdiff(names(urls), "sqlite")

for (engine in names(urls)) {
  url <- urls[[engine]]

  test_that(sprintf("[%s] SIGTERM drains a worker host: running jobs finish within the grace, the rest end SHUTDOWN or go back, exit 0", engine), {
    withr::local_options(asyncjobs.lease_seconds = 3)
    local_store(url)
    q <- paste0("drain-", engine)
    gate <- tempfile("gate-")
    host <- start_worker_host(url, n = 3L, queues = q, grace_ms = 8000)
    short <- create_job("drain", list(gate = gate), function(p) {
      asyncjobs::report_progress(step = as.character(Sys.getpid()))
      while (!file.exists(p$gate)) Sys.sleep(0.05)
      "finished within the grace"
    }, queue = q)
    once <- create_job("drain", list(seconds = 300, value = 1), sleeper, queue = q)
    twice <- create_job("drain", list(seconds = 300, value = 2), sleeper, queue = q, max_attempts = 2L)
    ids <- c(short$job_id, once$job_id, twice$job_id)
    expect_true(wait_until(function() all(!is.na(vapply(ids, job_pid, 1L))), 60), info = "the three jobs did not start")
    pids <- vapply(ids, job_pid, 1L)
    expect_true(all(pids %in% host$workers()))

    host$proc$signal(tools::SIGTERM)
    expect_true(wait_until(function() any(grepl("draining", host$lines())), 20), info = paste(host$lines(), collapse = "\n"))
    # A draining host claims nothing more.
    late <- create_job("drain", list(seconds = 0, value = "late"), sleeper, queue = q)
    # The running job ends after the signal, inside the grace.
    file.create(gate)
    st <- wait_for_job(short$job_id, 30000)
    expect_identical(st$status, "completed")
    expect_identical(st$result, "finished within the grace")

    host$proc$wait(60000)
    expect_false(host$proc$is_alive(), info = "the host did not exit after its grace")
    expect_identical(host$proc$get_exit_status(), 0L)
    expect_all_dead(c(host$pid, pids, host$pids))

    st <- get_job_status(once$job_id)
    expect_identical(st$status, "failed")
    expect_identical(st$error$code, "SHUTDOWN")
    expect_identical(get_job_status(twice$job_id)$status, "pending")
    expect_identical(job_attempts(twice$job_id), 1L)
    expect_identical(get_job_status(late$job_id)$status, "pending")
    expect_identical(job_attempts(late$job_id), 0L)

    log <- host$lines()
    stamped <- grep(" asyncjobs: ", log, value = TRUE)
    expect_true(all(grepl("^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z asyncjobs: ", stamped)))
    expect_true(any(grepl(sprintf("asyncjobs: signal %d: draining, 3 job\\(s\\) running, grace 8 s", tools::SIGTERM), log)),
                info = paste(log, collapse = "\n"))
    expect_true(any(grepl("asyncjobs: grace over: 2 job\\(s\\) end with SHUTDOWN or go back to the queue", log)),
                info = paste(log, collapse = "\n"))
    expect_true(any(grepl("asyncjobs: stopped$", log)), info = paste(log, collapse = "\n"))

    hosts <- get_hosts()
    me <- hosts[hosts$pid == host$pid, , drop = FALSE]
    expect_identical(nrow(me), 1L)
    expect_identical(me$state, "stopped")
    expect_identical(me$running, 0L)

    # The job sent back runs on the next host; the one left pending too.
    cancel_job(twice$job_id)
    again <- start_worker_host(url, n = 1L, queues = q, grace_ms = 0)
    expect_identical(wait_for_job(late$job_id, 60000)$result, "late")
    again$proc$signal(tools::SIGINT)
    again$proc$wait(30000)
    expect_identical(again$proc$get_exit_status(), 0L)
  })
}

for (engine in servers) {
  url <- urls[[engine]]

  test_that(sprintf("[%s] a host cut off longer than the lease: its job is rescued (HOST_LOST) and its late result refused", engine), {
    withr::local_options(asyncjobs.lease_seconds = 3)
    net <- local_netns()
    proxy <- cluster_proxy(url, net$host_addr)
    local_store(url)
    q <- paste0("netns-", engine)
    marks <- tempfile("marks-")
    dir.create(marks)
    host <- start_worker_host(proxy$url, n = 1L, queues = q, lease = 3, netns = net$name)
    j <- create_job("cut", list(dir = marks, token = "cut", seconds = 6, value = "late result"), marked_sleeper, queue = q)
    expect_true(wait_until(function() !is.na(job_pid(j$job_id)), 60))
    expect_true(job_pid(j$job_id) %in% host$workers())

    net$cut()
    withr::defer(net$restore())
    cut_at <- Sys.time()
    expect_true(wait_until(function() identical(get_job_status(j$job_id)$status, "failed"), 45),
                info = "the job of the cut-off host was not rescued within 45 s")
    expect_lt(as.numeric(Sys.time() - cut_at, units = "secs"), 45)
    lost <- get_job_status(j$job_id)$error
    expect_identical(lost$code, "HOST_LOST")
    expect_match(lost$message, "last heartbeat")
    # The cut-off worker goes on and finishes its run; its result has nowhere to go yet.
    expect_true(wait_until(function() file.exists(file.path(marks, "done-cut")), 30))
    Sys.sleep(1)
    net$restore()
    expect_true(host$proc$is_alive())

    # Back on the network the host works again (it alone serves this queue)...
    k <- create_job("cut", list(dir = marks, token = "after", seconds = 0, value = "after"), marked_sleeper, queue = q)
    st <- wait_for_job(k$job_id, 60000)
    expect_identical(st$status, "completed")
    expect_identical(st$result, "after")
    # ...and the late result changed nothing: one outcome, one execution.
    st <- get_job_status(j$job_id)
    expect_identical(st$status, "failed")
    expect_identical(st$error$code, "HOST_LOST")
    expect_null(st$result)
    expect_identical(job_attempts(j$job_id), 1L)
    expect_identical(executions(marks, "cut"), 1L)
    log <- host$lines()
    expect_true(any(grepl("failed, retrying", log)), info = paste(log, collapse = "\n"))
    expect_true(any(grepl("reachable again", log)), info = paste(log, collapse = "\n"))
    # Its heartbeat resumes too (it may lag the first claim by a store timeout).
    expect_true(wait_until(function() {
      hosts <- get_hosts()
      identical(hosts$state[hosts$pid == host$pid], "live")
    }, 15), info = "the reconnected host is not live in get_hosts()")
  })

  test_that(sprintf("[%s] a cut shorter than the lease loses nothing and fails nothing", engine), {
    withr::local_options(asyncjobs.lease_seconds = 10)
    net <- local_netns()
    proxy <- cluster_proxy(url, net$host_addr)
    local_store(url)
    q <- paste0("netns-short-", engine)
    marks <- tempfile("marks-")
    dir.create(marks)
    host <- start_worker_host(proxy$url, n = 1L, queues = q, lease = 10, netns = net$name)
    j <- create_job("blip", list(dir = marks, token = "running", seconds = 6, value = "kept"), marked_sleeper, queue = q)
    expect_true(wait_until(function() !is.na(job_pid(j$job_id)), 60))

    net$cut()
    withr::defer(net$restore())
    # Submitted while the host cannot see the store.
    k <- create_job("blip", list(dir = marks, token = "queued", seconds = 0, value = "queued"), marked_sleeper, queue = q)
    Sys.sleep(3)
    # The cut is real: the host (the only one serving this queue) took nothing meanwhile.
    expect_identical(get_job_status(k$job_id)$status, "pending")
    net$restore()

    for (x in list(list(j, "kept", "running"), list(k, "queued", "queued"))) {
      st <- wait_for_job(x[[1L]]$job_id, 60000)
      expect_identical(st$status, "completed")
      expect_identical(st$result, x[[2L]])
      expect_identical(job_attempts(x[[1L]]$job_id), 1L)
      expect_identical(executions(marks, x[[3L]]), 1L)
    }
    expect_identical(nrow(list_jobs(status = "failed")), 0L)
    hosts <- get_hosts()
    expect_identical(hosts$state[hosts$pid == host$pid], "live")
  })

  test_that(sprintf("[%s] the database restarted mid-run: running jobs complete, hosts reconnect by themselves", engine), {
    how <- db_restarter(engine, url)
    skip_if(!how$ok, paste("cannot restart the database server:", how$why))
    withr::local_options(asyncjobs.lease_seconds = 3)
    local_store(url)
    # Runs before local_store's cleanup, which needs the server.
    withr::defer(how$ensure_up())
    q <- paste0("restart-", engine)
    marks <- tempfile("marks-")
    dir.create(marks)
    host <- start_worker_host(url, n = 2L, queues = q)
    jobs <- lapply(1:2, function(i) {
      create_job("restart", list(dir = marks, token = paste0("r", i), seconds = 10, value = i), marked_sleeper, queue = q)
    })
    expect_true(wait_until(function() all(!is.na(vapply(jobs, function(j) job_pid(j$job_id), 1L))), 60))

    how$restart()

    for (i in 1:2) {
      st <- wait_for_job(jobs[[i]]$job_id, 60000)
      # wait_for_job may give up on a store error first: wait again.
      if (!identical(st$status, "completed")) {
        wait_until(function() isTRUE(get_job_status(jobs[[i]]$job_id)$status %in% c("completed", "failed", "cancelled")), 60)
        st <- get_job_status(jobs[[i]]$job_id)
      }
      expect_identical(st$status, "completed", info = paste(st$error$code, st$error$message))
      expect_identical(st$result, i)
      expect_identical(job_attempts(jobs[[i]]$job_id), 1L)
      expect_identical(executions(marks, paste0("r", i)), 1L)
    }
    # A job submitted after the restart runs on the host, which reconnected by itself.
    after <- NULL
    expect_true(wait_until(function() {
      after <<- create_job("restart", list(dir = marks, token = "after", seconds = 0, value = "after"), marked_sleeper, queue = q)
      !is.null(after$job_id)
    }, 30, interval = 0.5), info = paste(after$error, after$message))
    expect_identical(wait_for_job(after$job_id, 60000)$result, "after")
    expect_true(host$proc$is_alive())
    expect_identical(nrow(list_jobs(status = "failed")), 0L)
  })
}

soak_seconds <- as.numeric(Sys.getenv("ASYNCJOBS_SOAK_SECONDS", "60"))

for (engine in names(urls)) {
  url <- urls[[engine]]

  test_that(sprintf("[%s] soak: two replicas, three worker hosts, kill -9, freezes, cancels, escaping children and stray frames; every job ends exactly once", engine), {
    skip_if(is.na(soak_seconds) || soak_seconds <= 0, "ASYNCJOBS_SOAK_SECONDS is 0")
    lease <- 3
    withr::local_options(asyncjobs.lease_seconds = lease)
    local_store(url)
    q <- paste0("soak-", engine)
    dir <- tempfile("soak-")
    dir.create(dir)
    grace <- 5000

    # Two API replicas submitting (and sometimes cancelling) for soak_seconds.
    replica <- function(i) callr::r_bg(function(i, url, q, dir, seconds, lease) {
      options(asyncjobs.lease_seconds = lease, asyncjobs.warn_payload_bytes = Inf)
      library(asyncjobs)
      start_workers(n = 0L, store = url)
      run <- function(p) {
        file.create(file.path(p$dir, paste0(p$token, "-", Sys.getpid(), "-", sprintf("%.0f", stats::runif(1) * 1e9))))
        if (p$mischief == "child") {
          # A process that leaves the worker's process group: it must not outlive the job.
          system(sprintf("setsid sh -c 'echo $$ >> %s; exec sleep 300' >/dev/null 2>&1 &",
                         file.path(p$dir, paste0("child-", p$token))))
        } else if (p$mischief == "garbage") {
          # Bytes on the frame pipe: this job fails, no other job notices.
          for (fd in list.files("/proc/self/fd")) {
            if (as.integer(fd) >= 100L && startsWith(Sys.readlink(file.path("/proc/self/fd", fd)), "pipe:")) {
              con <- file(file.path("/dev/fd", fd), "wb")
              writeBin(charToRaw(strrep("garbage ", 8L)), con)
              close(con)
            }
          }
        }
        Sys.sleep(p$seconds)
        p$token
      }
      environment(run) <- globalenv()
      out <- file.path(dir, sprintf("submitted-%d.tsv", i))
      mine <- character()
      errors <- character()
      deadline <- Sys.time() + seconds
      k <- 0L
      while (Sys.time() < deadline) {
        k <- k + 1L
        token <- sprintf("r%d_%05d", i, k)
        attempts <- sample(1:2, 1L)
        mischief <- if (k %% 7L == 0L) "child" else if (k %% 11L == 0L) "garbage" else "-"
        j <- create_job("soak", list(token = token, dir = dir, seconds = stats::runif(1, 0.1, 2), mischief = mischief),
                        run, queue = q, max_attempts = attempts)
        if (is.null(j$job_id)) {
          errors <- c(errors, j$error)
        } else {
          cat(token, j$job_id, attempts, mischief, "\n", file = out, append = TRUE)
          mine <- c(mine, j$job_id)
        }
        if (stats::runif(1) < 0.08) cancel_job(sample(mine, 1L))
        Sys.sleep(stats::runif(1, 0.2, 0.8))
      }
      stop_workers()
      errors
    }, list(i, url, q, dir, soak_seconds, lease), stderr = "2>&1")
    replicas <- lapply(1:2, replica)
    withr::defer(for (r in replicas) if (r$is_alive()) r$kill())

    # Three worker hosts; a killed one is replaced by a new one.
    hosts <- list()
    all_pids <- integer()
    env <- environment()
    new_host <- function() start_worker_host(url, n = 2L, queues = q, grace_ms = grace, lease = lease, env = env)
    for (h in 1:3) hosts[[h]] <- new_host()

    # The first terminal state seen for each job: it must never change.
    first_seen <- character()
    observe <- function() {
      jobs <- tryCatch(list_jobs(operation = "soak"), error = function(e) NULL)
      if (is.null(jobs)) return()
      done <- jobs[jobs$status %in% c("completed", "failed", "cancelled") & !jobs$job_id %in% names(first_seen), ]
      first_seen[done$job_id] <<- paste(done$status, done$error_code)
    }
    events <- c(kill = 0L, freeze = 0L, cancel = 0L)
    deadline <- Sys.time() + soak_seconds
    while (Sys.time() < deadline) {
      Sys.sleep(stats::runif(1, 1, 3))
      for (h in hosts) h$workers()
      action <- sample(names(events), 1L, prob = c(0.3, 0.3, 0.4))
      events[[action]] <- events[[action]] + 1L
      h <- sample(seq_along(hosts), 1L)
      if (action == "kill") {
        tools::pskill(hosts[[h]]$pid, tools::SIGKILL)
        hosts[[h]]$proc$wait(10000)
        hosts[[h]] <- new_host()
      } else if (action == "freeze") {
        tools::pskill(hosts[[h]]$pid, tools::SIGSTOP)
        Sys.sleep(lease + 2)
        observe()
        tools::pskill(hosts[[h]]$pid, tools::SIGCONT)
      } else {
        active <- list_jobs(status = c("pending", "running"), operation = "soak")
        if (nrow(active)) cancel_job(sample(active$job_id, 1L))
      }
      observe()
    }

    # Replicas stop submitting; the hosts finish the work.
    for (r in replicas) r$wait(60000)
    submit_errors <- unlist(lapply(replicas, function(r) r$get_result()))
    expect_true(wait_until(function() {
      observe()
      nrow(list_jobs(status = c("pending", "running"), operation = "soak")) == 0L
    }, 120, interval = 0.5), info = "jobs still active two minutes after the soak")
    # Drain: SIGTERM, each host exits 0 and leaves nothing running.
    for (h in hosts) h$proc$signal(tools::SIGTERM)
    for (h in hosts) {
      h$proc$wait(grace + 40000)
      expect_identical(h$proc$get_exit_status(), 0L)
      expect_true(any(grepl("asyncjobs: stopped$", h$lines())))
    }
    observe()

    sub <- do.call(rbind, lapply(list.files(dir, "^submitted-", full.names = TRUE), function(f) {
      utils::read.table(f, col.names = c("token", "job_id", "max_attempts", "mischief"), stringsAsFactors = FALSE)
    }))
    expect_gt(nrow(sub), 10)
    jobs <- list_jobs(operation = "soak")
    expect_setequal(jobs$job_id, sub$job_id)
    expect_identical(nrow(list_jobs(status = c("pending", "running"))), 0L)
    seen <- get_hosts()
    expect_identical(sum(seen$running), 0L)
    expect_false(any(seen$state == "live" & seen$pid %in% unlist(lapply(hosts, `[[`, "pid"))))

    bad <- character()
    outcome <- character()
    for (r in seq_len(nrow(sub))) {
      id <- sub$job_id[[r]]
      token <- sub$token[[r]]
      st <- get_job_status(id)
      rec <- job_record_raw(id)
      runs <- executions(dir, token)
      outcome[[id]] <- paste(c(st$status, st$error$code), collapse = " ")
      why <- c(
        if (!st$status %in% c("completed", "failed", "cancelled")) paste("status", st$status),
        if (!identical(unname(first_seen[id]), paste(rec$status, rec$error_code %||% NA))) {
          paste("first seen", first_seen[id], "now", rec$status, rec$error_code %||% NA)
        },
        if (rec$attempts > sub$max_attempts[[r]]) sprintf("%d attempts of %d", rec$attempts, sub$max_attempts[[r]]),
        if (runs > max(rec$attempts, 0L)) sprintf("executed %d times in %d attempts", runs, rec$attempts),
        if (sub$max_attempts[[r]] == 1L && runs > 1L) sprintf("max_attempts = 1 but executed %d times", runs),
        if (identical(st$status, "completed") && (!identical(st$result, token) || runs < 1L)) "completed without its result or a run",
        if (identical(st$status, "completed") && sub$mischief[[r]] == "garbage") "completed although it wrote to its frame pipe",
        if (identical(st$status, "failed") &&
            !isTRUE(st$error$code %in% c("HOST_LOST", "SHUTDOWN", "WORKER_CRASHED", if (sub$mischief[[r]] == "garbage") "PROTOCOL_ERROR"))) {
          paste("failed with", st$error$code)
        },
        if (identical(st$status, "cancelled") && !identical(st$error$code, "CANCELLED")) "cancelled without CANCELLED"
      )
      if (length(why)) bad[[paste(token, id)]] <- paste(why, collapse = "; ")
    }
    expect_identical(length(bad), 0L, info = paste(names(bad), bad, sep = ": ", collapse = "\n"))
    # Every process a job started outside its worker's process group is gone,
    # whether its job ended, was cancelled or its host was killed.
    children <- unlist(lapply(list.files(dir, "^child-", full.names = TRUE), function(f) as.integer(readLines(f))))
    expect_gt(length(children), 0L)
    expect_all_dead(children)
    # What the soak did, for the log.
    message(sprintf("soak [%s] %.0f s: %d jobs (%s); events: %s; submit errors: %d",
                    engine, soak_seconds, nrow(sub),
                    paste(names(table(outcome)), table(outcome), sep = " ", collapse = ", "),
                    paste(names(events), events, sep = " ", collapse = ", "), length(submit_errors)))
    expect_gt(events[["kill"]] + events[["freeze"]], 0L)
  })
}
