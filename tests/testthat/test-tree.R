# Whole-tree kills: every process a job starts (in its group or not: setsid,
# double fork, processx, callr) is gone when the job ends, when its worker
# goes, at stop_workers(), and when the API dies. Each test first sees the
# processes alive, then asserts that the process table holds none of them.

skip_on_os(c("windows", "mac", "solaris"))
skip_if_not_installed("processx")
skip_if_not_installed("callr")

# A number no other process has on its command line: the job's processes
# are `sleep <tag><k>`, found by that argument.
new_tag <- function() sprintf("%d.%d", 7000L + sample.int(999L, 1L), 10000L + sample.int(89999L, 1L))

cmdline <- function(pid) {
  raw <- tryCatch(suppressWarnings(readBin(sprintf("/proc/%d/cmdline", pid), "raw", 65536L)),
                  error = function(e) raw())
  if (!length(raw)) return(character())
  raw[raw == as.raw(0L)] <- as.raw(32L)
  strsplit(rawToChar(raw), " ", fixed = TRUE)[[1L]]
}

# Live (not zombie) processes with an argument that starts with `tag`.
tagged <- function(tag) {
  pids <- as.integer(basename(Sys.glob("/proc/[0-9]*")))
  hit <- vapply(pids, function(p) any(startsWith(cmdline(p), tag)) && !proc_dead(p), TRUE)
  pids[hit]
}

expect_none_tagged <- function(tag, timeout = 30) {
  ok <- wait_until(function() length(tagged(tag)) == 0L, timeout = timeout)
  expect_true(ok, info = paste("survivors:", paste(tagged(tag), collapse = " ")))
}

# The job: five kinds of background process, then return (or hang). The
# callr child runs `sleep <tag>2` itself, so it is tagged too.
spawner <- function(p) {
  px <- processx::process$new("sleep", paste0(p$tag, "1"), cleanup = FALSE)
  cb <- callr::r_bg(function(t) system(paste("sleep", t)), list(t = paste0(p$tag, "2")), cleanup = FALSE)
  system(sprintf("setsid sleep %s3 &", p$tag))
  system(sprintf("sh -c 'sleep %s4 &' &", p$tag))
  system(sprintf("sleep %s5", p$tag), wait = FALSE)
  writeLines(as.character(c(px$get_pid(), cb$get_pid())), p$pidfile)
  # Until all five run, so that the test sees them before the end.
  deadline <- Sys.time() + 60
  while (Sys.time() < deadline) {
    args <- unlist(lapply(Sys.glob("/proc/[0-9]*/cmdline"), function(f) {
      r <- tryCatch(readBin(f, "raw", 4096L), error = function(e) raw(), warning = function(w) raw())
      r[r == as.raw(0L)] <- as.raw(32L)
      strsplit(rawToChar(r), " ", fixed = TRUE)[[1L]]
    }))
    if (all(paste0(p$tag, 1:5) %in% args)) break
    Sys.sleep(0.05)
  }
  if (isTRUE(p$crash)) tools::pskill(Sys.getpid(), tools::SIGKILL)
  if (isTRUE(p$hang)) Sys.sleep(3600)
  "spawned"
}

spawn_job <- function(tag, hang = FALSE, crash = FALSE, timeout_ms = 1800000) {
  pidfile <- tempfile("tree-pids-")
  job <- create_job("tree", list(tag = tag, hang = hang, crash = crash, pidfile = pidfile), spawner,
                    timeout_ms = timeout_ms)
  list(job = job, pidfile = pidfile)
}

# Waits until the job's five processes run; the processx and callr pids.
expect_spawned <- function(s, tag) {
  expect_true(wait_until(function() length(tagged(tag)) >= 5L && file.exists(s$pidfile), timeout = 60),
              info = paste("running:", paste(tagged(tag), collapse = " ")))
  pids <- as.integer(readLines(s$pidfile))
  expect_false(any(vapply(pids, proc_dead, TRUE)))
  pids
}

available <- local({
  mechs <- NULL
  function() {
    if (is.null(mechs)) {
      start_workers(n = 1L, wait = TRUE)
      top <- get_worker_status()$containment
      stop_workers()
      mechs <<- if (identical(top, "cgroup")) c("cgroup", "subreaper") else "subreaper"
    }
    mechs
  }
})

skip_on_cran() # slow and process-heavy: tools/test.sh and CI run it

# Forces `mech` for the calling test; skips it where `mech` is not available.
use_mech <- function(mech, env = parent.frame()) {
  if (!mech %in% available()) skip(paste(mech, "containment is not available here"))
  withr::local_envvar(ASYNCJOBS_CONTAINMENT = mech, .local_envir = env)
}

for (mech in c("cgroup", "subreaper")) {
  test_that(paste(mech, "| a job's background processes go when it completes, before its result"), {
    use_mech(mech)
    local_pool(n = 1L)
    expect_identical(get_worker_status()$containment, mech)
    tag <- new_tag()
    s <- spawn_job(tag)
    st <- finish(s$job)
    expect_identical(st$status, "completed")
    # Checked at once: the worker reports only once they are dead.
    expect_identical(tagged(tag), integer())
    expect_all_dead(as.integer(readLines(s$pidfile)))
    # The worker is the same, and runs the next job.
    expect_identical(get_worker_status()$jobs_done, 1L)
    expect_identical(finish(create_job("op", 2, function(x) x * 2))$result, 4)
  })

  test_that(paste(mech, "| a timeout kills the whole tree"), {
    use_mech(mech)
    local_pool(n = 1L)
    tag <- new_tag()
    s <- spawn_job(tag, hang = TRUE, timeout_ms = 20000)
    pids <- expect_spawned(s, tag)
    st <- finish(s$job)
    expect_identical(st$error$code, "TIMEOUT")
    expect_none_tagged(tag)
    expect_all_dead(pids)
  })

  test_that(paste(mech, "| a cancel kills the whole tree"), {
    use_mech(mech)
    seen <- local_pool(n = 1L)
    tag <- new_tag()
    s <- spawn_job(tag, hang = TRUE)
    pids <- expect_spawned(s, tag)
    worker <- get_worker_status()$pid
    cancel_job(s$job$job_id)
    expect_none_tagged(tag)
    expect_all_dead(c(pids, worker))
    note_pids(seen)
  })

  test_that(paste(mech, "| stop_workers() kills the whole tree"), {
    use_mech(mech)
    start_workers(n = 2L, wait = TRUE)
    workers <- get_worker_status()$pid
    tag <- new_tag()
    s <- spawn_job(tag, hang = TRUE)
    pids <- expect_spawned(s, tag)
    stop_workers()
    expect_identical(tagged(tag), integer())
    expect_all_dead(c(pids, workers))
  })

  test_that(paste(mech, "| a worker that dies leaves nothing"), {
    use_mech(mech)
    local_pool(n = 1L)
    tag <- new_tag()
    s <- spawn_job(tag, crash = TRUE)
    st <- finish(s$job)
    expect_identical(st$error$code, "WORKER_CRASHED")
    expect_none_tagged(tag)
    expect_all_dead(as.integer(readLines(s$pidfile)))
  })

  test_that(paste(mech, "| setup's processes stay across jobs and go with the worker"), {
    use_mech(mech)
    tag <- new_tag()
    setup <- bquote(system(.(sprintf("setsid sleep %s9 &", tag))))
    local_pool(n = 1L, setup = setup, max_jobs_per_worker = 2)
    expect_true(wait_until(function() length(tagged(tag)) == 1L, timeout = 30))
    first <- tagged(tag)
    expect_identical(finish(create_job("op", 1, function(x) x))$status, "completed")
    expect_identical(tagged(tag), first)
    # The second job is the worker's last: it is replaced, and setup's process goes.
    expect_identical(finish(create_job("op", 1, function(x) x))$status, "completed")
    expect_true(wait_until(function() !first %in% tagged(tag) && length(tagged(tag)) == 1L, timeout = 30),
                info = paste("setup's processes:", paste(tagged(tag), collapse = " ")))
  })
}

test_that("pgroup, the last fallback, kills the worker's group and says so", {
  withr::local_envvar(ASYNCJOBS_CONTAINMENT = "pgroup")
  local_pool(n = 1L)
  expect_identical(get_worker_status()$containment, "pgroup")
  tag <- new_tag()
  job <- create_job("op", tag, function(t) {
    system(sprintf("sleep %s1 &", t))
    Sys.sleep(3600)
  })
  expect_true(wait_until(function() length(tagged(tag)) == 1L, timeout = 60))
  cancel_job(job$job_id)
  expect_none_tagged(tag)
})

test_that("an unknown ASYNCJOBS_CONTAINMENT falls back to the strongest mechanism", {
  withr::local_envvar(ASYNCJOBS_CONTAINMENT = "bogus")
  local_pool(n = 1L)
  expect_true(get_worker_status()$containment %in% available())
})

# The API as a process of its own, killed by `signal` while two jobs run.
api_dies <- function(signal, mech) {
  tag <- new_tag()
  dir <- withr::local_tempdir()
  script <- file.path(dir, "api.R")
  writeLines(c(
    "library(asyncjobs)",
    "start_workers(n = 2L, wait = TRUE)",
    sprintf("writeLines(as.character(get_worker_status()$pid), %s)", deparse(file.path(dir, "workers"))),
    sprintf("spawner <- %s", paste(deparse(spawner), collapse = "\n")),
    sprintf("for (i in 1:2) create_job('tree', list(tag = paste0(%s, i), hang = TRUE, pidfile = file.path(%s, paste0('pids', i))), spawner)",
            deparse(tag), deparse(dir)),
    "Sys.sleep(3600)"), script)
  env <- c(R_LIBS = paste(.libPaths(), collapse = ":"), ASYNCJOBS_CONTAINMENT = mech)
  api <- processx::process$new(file.path(R.home("bin"), "Rscript"), script, env = c("current", env),
                               stdout = NULL, stderr = NULL, cleanup = TRUE)
  on.exit(api$kill(), add = TRUE)
  ok <- wait_until(function() length(tagged(paste0(tag, "1"))) >= 5L && length(tagged(paste0(tag, "2"))) >= 5L,
                   timeout = 90)
  expect_true(ok, info = paste("running:", paste(tagged(tag), collapse = " ")))
  workers <- as.integer(readLines(file.path(dir, "workers")))
  spawned <- unlist(lapply(1:2, function(i) as.integer(readLines(file.path(dir, paste0("pids", i))))))
  api$signal(signal)
  expect_true(wait_until(function() !api$is_alive(), timeout = 30))
  expect_none_tagged(tag)
  expect_all_dead(c(workers, spawned))
}

for (mech in c("cgroup", "subreaper")) {
  for (sig in c("SIGKILL", "SIGTERM")) {
    test_that(sprintf("%s | the API dying by %s takes every job's processes with it", mech, sig), {
      use_mech(mech)
      api_dies(get(sig, envir = asNamespace("tools")), mech)
    })
  }
}
