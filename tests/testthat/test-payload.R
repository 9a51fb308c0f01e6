# Executors defined in handlers capture the request; create_job warns once.

# Arms the once-per-operation warning at `bytes` for the calling test.
local_payload_warning <- function(bytes, env = parent.frame()) {
  withr::local_options(asyncjobs.warn_payload_bytes = bytes, .local_envir = env)
  state <- asyncjobs:::.state
  old <- state$payload_warned
  state$payload_warned <- character()
  withr::defer(state$payload_warned <- old, envir = env)
}

test_that("a large captured environment is named in a one-time warning", {
  local_pool(1)
  local_payload_warning(100 * 1024)
  handler <- function(req, res) {
    create_job("op", list(n = 1), function(p) p$n)
  }
  req <- list(body = raw(500 * 1024))
  expect_warning(j <- handler(req, list()), class = "asyncjobs_warning_payload")
  expect_identical(finish(j)$result, 1)
  expect_silent(j <- handler(req, list()))
  finish(j)
  # Another operation gets its own warning.
  expect_warning(j2 <- create_job("other_op", 2, function(p) p + length(req)), "other_op",
                 class = "asyncjobs_warning_payload")
  finish(j2)
  # The recommended pattern carries only params.
  run_n <- function(p) p$n
  environment(run_n) <- globalenv()
  expect_lt(length(serialize(run_n, NULL)), 100 * 1024)
})

test_that("without the option the threshold is 256 KiB", {
  local_pool(1)
  local_payload_warning(NULL)
  make <- function(captured) {
    f <- function(p) 1
    environment(f) <- list2env(list(captured = captured), parent = globalenv())
    f
  }
  base <- length(serialize(make(raw(0)), NULL, xdr = FALSE))
  expect_silent(finish(create_job("op", 1, make(raw(256 * 1024 - base - 4096)))))
  expect_warning(j <- create_job("op", 1, make(raw(256 * 1024 - base + 4096))), class = "asyncjobs_warning_payload")
  expect_identical(finish(j)$result, 1)
})

test_that("the warning names the captured variables", {
  local_pool(1)
  local_payload_warning(100 * 1024)
  make <- function(big_request) function(p) 1
  # Larger than the test helpers the closure also reaches, so it is named first.
  w <- tryCatch(create_job("op", 1, make(raw(3 * 1024^2))), warning = function(w) w)
  expect_match(conditionMessage(w), "captures `big_request` (3072 KiB)", fixed = TRUE)
})

test_that("an executor submitted again is sent as it is now, not as it was", {
  local_pool(1)
  # Its environment is written by value: a change there reaches the next job.
  e <- new.env()
  e$k <- 1
  f <- local(function(p) k, envir = e)
  expect_identical(finish(create_job("again", NULL, f))$result, 1)
  e$k <- 2
  expect_identical(finish(create_job("again", NULL, f))$result, 2)
  # A global function: the same bytes each time, then R compiles its body,
  # then it gets another environment in place.
  withr::defer(rm("aj_again", envir = globalenv()))
  assign("aj_again", function(p) p + if (exists("aj_bonus")) aj_bonus else 1, envir = globalenv())
  g <- get("aj_again", envir = globalenv())
  for (i in 1:3) expect_identical(finish(create_job("again", i, g))$result, i + 1)
  g <- compiler::cmpfun(g)
  expect_identical(finish(create_job("again", 10, g))$result, 11)
  environment(g) <- list2env(list(aj_bonus = 100))
  expect_identical(finish(create_job("again", 10, g))$result, 110)
  # Attributes (a seed here) are never taken from the cache.
  expect_identical(finish(create_job("again", 1, g, seed = 1))$result, 101)
})

test_that("params are stored as the very bytes serialize() gives, and arrive as they were", {
  skip_if_not_installed("digest")
  local_pool(1)
  grown <- 1
  grown[3] <- 3 # a vector R grew in place
  values <- list(1L, c(TRUE, NA), c(1.5, NA, NaN, -Inf, 0), integer(0), 3, NULL, c(a = 1), 1:3,
                 "text", NA, grown, list(1, "a"), factor("f"), .Machine$integer.max)
  for (i in seq_along(values)) {
    x <- values[[i]]
    j <- create_job("bytes", x, function(p) p)
    expect_identical(finish(j)$result, x, info = i)
    expected <- digest::digest(serialize(x, NULL, xdr = FALSE), algo = "sha256", serialize = FALSE)
    expect_identical(jobs_env[[j$job_id]]$params_hash, expected, info = i)
  }
})
