# Limits and uniqueness across processes, on every shared store at once:
# six API processes race 600 submits against queue caps, a concurrency key,
# a per-caller rate limit and unique keys, while two worker hosts run them.

skip_on_cran() # process-heavy: tools/test.sh and CI run it
skip_if_not_installed("callr")
urls <- store_urls()
handlers <- test_path("handlers-model.R")


# The most jobs of each group whose [started_at, completed_at) intervals
# overlap: what ran at once, on the store's clock, at every instant.
max_overlap <- function(jobs, group) {
  out <- integer()
  for (g in unique(group)) {
    j <- jobs[group == g, ]
    ends <- data.frame(t = c(as.numeric(j$started_at), as.numeric(j$completed_at)),
                       d = c(rep(1L, nrow(j)), rep(-1L, nrow(j))))
    ends <- ends[order(ends$t, ends$d), ] # an end before a start at the same instant
    out[[g]] <- max(cumsum(ends$d), 0L)
  }
  out
}

test_that("six processes race 600 submits: caps, the key limit and the rate limit hold, one job per unique key", {
  here <- environment()
  caps <- list(default = 3, maintenance = 1)
  queues <- c("default", "maintenance", "uniq")
  for (engine in names(urls)) {
    url <- urls[[engine]]
    on_store(url, function() {
      suppressMessages(cleanup_old_jobs(0))
      # The capped queues wait until every submit is in, so that the jobs
      # then run against their caps all at once.
      pause_queue("default")
      pause_queue("maintenance")
    })
    for (i in 1:2) start_worker_host(url, n = 4L, queues = queues, handlers = handlers, env = here)
    # Each process: 5 submits for each of 10 callers (rate: 5 per 60 s per
    # caller, over all six), and 2 for each of 25 unique keys (window 1 h).
    # Callers 1-3 submit to "maintenance", the others to "default"; the even
    # ones among those with the concurrency key "hot".
    out <- race(6, url, function(i) {
      rated <- unlist(lapply(1:10, function(caller) vapply(1:5, function(k) {
        r <- tryCatch(create_job("nap", list(s = 0.2, i = i, k = k), submitted_by = sprintf("caller-%d", caller),
                                 queue = if (caller <= 3) "maintenance" else "default",
                                 concurrency_key = if (caller > 3 && caller %% 2 == 0) "hot", concurrency_limit = 2L),
                      asyncjobs_error_rate_limited = function(e) list(error = e$code))
        if (is.null(r$error)) r$status else r$error
      }, "")))
      uniq <- unlist(lapply(1:2, function(round) vapply(1:25, function(key) {
        r <- create_job("nap", list(s = 0, i = i), queue = "uniq", unique_key = sprintf("key-%d", key),
                        unique_for = 3600)
        if (is.null(r$error)) r$status else r$error
      }, "")))
      list(rated = rated, uniq = uniq)
    }, queues = queues, max_active = caps, rate_limits = list(submitted_by = c(n = 5, window = 60)),
    handlers = handlers)
    rated <- unlist(lapply(out, `[[`, "rated"))
    uniq <- unlist(lapply(out, `[[`, "uniq"))
    expect_identical(length(rated) + length(uniq), 600L, info = engine)
    expect_identical(sum(rated == "accepted"), 50L, info = engine) # 10 callers x 5
    expect_identical(sum(rated == "RATE_LIMITED"), 250L, info = engine)
    expect_identical(sum(uniq == "accepted"), 25L, info = engine)
    expect_identical(sum(uniq == "DUPLICATE_JOB"), 275L, info = engine)
    on_store(url, function() {
      by_caller <- table(list_jobs(operation = "nap", status = "pending")$submitted_by)
      expect_true(all(by_caller == 5L) && length(by_caller) == 10L, info = engine)
      resume_queue("default")
      resume_queue("maintenance")
      # Sampled while they run, and then over every instant of the run.
      worst <- c(default = 0L, maintenance = 0L, hot = 0L)
      done <- wait_until(function() {
        running <- list_jobs(status = "running", operation = "nap")
        n <- c(default = sum(running$queue == "default"), maintenance = sum(running$queue == "maintenance"),
               hot = sum(running$concurrency_key == "hot", na.rm = TRUE))
        worst <<- pmax(worst, n)
        nrow(list_jobs(status = c("pending", "running"), operation = "nap")) == 0L
      }, timeout = 120, interval = 0.05)
      expect_true(done, info = engine)
      expect_true(worst[["default"]] <= 3L && worst[["maintenance"]] <= 1L && worst[["hot"]] <= 2L,
                  info = paste(engine, paste(names(worst), worst, collapse = " ")))
      jobs <- list_jobs(operation = "nap")
      expect_true(all(jobs$status == "completed"), info = engine)
      expect_identical(as.vector(table(factor(jobs$queue, queues))), c(35L, 15L, 25L), info = engine)
      rated <- jobs[jobs$queue != "uniq", ]
      overlap <- max_overlap(rated, rated$queue)
      expect_true(overlap[["default"]] <= 3L && overlap[["maintenance"]] <= 1L, info = paste(engine, toString(overlap)))
      # The caps were reached: the test would see them broken.
      expect_identical(unname(overlap[c("default", "maintenance")]), c(3L, 1L), info = engine)
      hot <- rated[!is.na(rated$concurrency_key), ]
      expect_identical(unname(max_overlap(hot, hot$concurrency_key)), 2L, info = engine)
      # One job per unique key, and every key has its job.
      expect_identical(nrow(jobs[jobs$queue == "uniq", ]), 25L, info = engine)
    })
  }
})
