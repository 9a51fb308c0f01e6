# Executors in tests are closures over test environments; their size is not
# what these suites check (test-payload.R does).
options(asyncjobs.warn_payload_bytes = Inf)

# Helpers shared by the suites: start a pool for one test, stop it when the
# test ends, and prove that no process it started is left.

# The fields of /proc/<pid>/stat after the command name (state first), or
# NULL when the process is gone.
proc_stat <- function(pid) {
  stat <- tryCatch(suppressWarnings(readLines(sprintf("/proc/%d/stat", pid), warn = FALSE)), error = function(e) "")
  if (!length(stat) || !nzchar(stat[[1L]])) return(NULL)
  strsplit(sub("^.*\\) ", "", stat[[1L]]), " ")[[1L]]
}

proc_state <- function(pid) {
  stat <- proc_stat(pid)
  if (is.null(stat)) "gone" else stat[[1L]]
}

# Dead: gone, or a zombie (it has exited; only its parent's wait is pending).
proc_dead <- function(pid) proc_state(pid) %in% c("gone", "Z", "X")

live_children <- function(parent = Sys.getpid()) {
  pids <- as.integer(basename(Sys.glob("/proc/[0-9]*")))
  ppid <- vapply(pids, function(p) {
    stat <- proc_stat(p)
    if (is.null(stat)) NA_integer_ else as.integer(stat[[2L]])
  }, 1L)
  kids <- pids[!is.na(ppid) & ppid == parent]
  kids[!vapply(kids, proc_dead, TRUE)]
}

wait_until <- function(cond, timeout = 60, interval = 0.02) {
  deadline <- Sys.time() + timeout
  while (!isTRUE(cond())) {
    if (Sys.time() > deadline) return(FALSE)
    Sys.sleep(interval)
  }
  TRUE
}

expect_all_dead <- function(pids) {
  pids <- unique(stats::na.omit(pids))
  ok <- wait_until(function() all(vapply(pids, proc_dead, TRUE)), timeout = 30)
  expect_true(ok, info = paste("still alive:", paste(pids[!vapply(pids, proc_dead, TRUE)], collapse = " ")))
}

# Starts a pool for the calling test; on exit stops it and checks that every
# worker the test saw, and every child of this process, is gone.
local_pool <- function(n = 2L, ..., env = parent.frame()) {
  start_workers(n = n, ..., wait = TRUE)
  seen <- new.env()
  seen$pids <- get_worker_status()$pid
  withr::defer({
    seen$pids <- c(seen$pids, get_worker_status()$pid)
    stop_workers()
    expect_all_dead(seen$pids)
    expect_true(wait_until(function() length(setdiff(live_children(), .allowed_children$pids)) == 0L, timeout = 30),
                info = "a child process of the test survived stop_workers()")
  }, envir = env)
  invisible(seen)
}

# Children a test keeps on purpose beyond its pool (the store suites' TCP proxy).
.allowed_children <- new.env()
.allowed_children$pids <- integer()

note_pids <- function(seen) seen$pids <- c(seen$pids, get_worker_status()$pid)

finish <- function(job, timeout_ms = 60000) {
  expect_false(is.null(job$job_id), info = paste(names(job), collapse = ","))
  wait_for_job(job$job_id, timeout_ms)
}
