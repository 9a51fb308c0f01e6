# Protocol integrity: nothing a job (or a process it started) writes can pass
# for a frame of another job. One worker, so "the next job" shares it.

skip_on_cran() # slow and process-heavy: tools/test.sh and CI run it
test_that("the frame pipes are not on fds 3 and 4 and no program a job starts inherits them", {
  local_pool(1, max_queued = 10)
  job <- create_job("fds", list(), function(p) {
    links <- function(dir) vapply(list.files(dir, full.names = TRUE), Sys.readlink, "")
    frames <- links("/proc/self/fd")
    frames <- frames[suppressWarnings(as.integer(basename(names(frames)))) >= 100L & startsWith(frames, "pipe:")]
    child <- system("ls -l /proc/self/fd/ 2>/dev/null | sed -n 's/.*-> //p'", intern = TRUE)
    list(fd4 = file.exists("/dev/fd/4") && startsWith(Sys.readlink("/proc/self/fd/4"), "pipe:"),
         frames = unname(frames), child = child)
  })
  s <- finish(job)
  expect_equal(s$status, "completed")
  expect_false(s$result$fd4)
  expect_length(s$result$frames, 2L)
  expect_length(intersect(s$result$frames, s$result$child), 0L)
})

test_that("bytes a job writes to its frame pipe fail that job with PROTOCOL_ERROR; the next job gets its own result", {
  seen <- local_pool(1, max_queued = 10)
  first <- get_worker_status()$pid
  bad <- create_job("garbage", list(), function(p) {
    for (fd in list.files("/proc/self/fd")) {
      link <- Sys.readlink(file.path("/proc/self/fd", fd))
      if (as.integer(fd) >= 100L && startsWith(link, "pipe:")) {
        con <- file(file.path("/dev/fd", fd), "wb")
        writeBin(as.raw(c(65, 74, 70, 50, rep(0, 36))), con) # a header with a nil job and tag
        writeBin(charToRaw("not a frame at all, just bytes"), con)
        close(con)
      }
    }
    Sys.sleep(0.2)
    "the job's own value"
  })
  nxt <- create_job("next", list(), function(p) "next job's value")
  s <- finish(bad)
  expect_equal(s$status, "failed")
  expect_equal(s$error$code, "PROTOCOL_ERROR")
  s2 <- finish(nxt)
  expect_equal(s2$status, "completed")
  expect_equal(s2$result, "next job's value")
  note_pids(seen)
  expect_false(first %in% get_worker_status()$pid)
  expect_all_dead(first)
})

test_that("a background process a job left cannot reach a later job through the frame pipe", {
  local_pool(1, max_queued = 10)
  first <- create_job("bg", list(), function(p) {
    system("(sleep 0.5; echo hello >&4; echo hello >&3) 2>/dev/null &")
    1
  })
  expect_equal(finish(first)$result, 1)
  later <- create_job("later", list(), function(p) { Sys.sleep(1.5); "mine" })
  s <- finish(later)
  expect_equal(s$status, "completed")
  expect_equal(s$result, "mine")
})

test_that("a frame forged through the package's own writer counts only for the job that wrote it", {
  seen <- local_pool(1, max_queued = 10)
  forger <- create_job("forge", list(), function(p) {
    w <- get("wrap__aj_w_write", envir = asNamespace("asyncjobs"))
    .Call(w, 14L, "", serialize(list(value = "forged", warnings = character()), NULL))
    "real"
  })
  nxt <- create_job("next", list(), function(p) "next job's value")
  s <- finish(forger)
  expect_equal(s$status, "completed")
  s2 <- finish(nxt)
  expect_equal(s2$result, "next job's value")
  note_pids(seen)
})
