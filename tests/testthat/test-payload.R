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

test_that("the warning names the captured variables", {
  local_pool(1)
  local_payload_warning(100 * 1024)
  make <- function(big_request) function(p) 1
  # Larger than the test helpers the closure also reaches, so it is named first.
  w <- tryCatch(create_job("op", 1, make(raw(3 * 1024^2))), warning = function(w) w)
  expect_match(conditionMessage(w), "captures `big_request` (3072 KiB)", fixed = TRUE)
})
