# Runs the testthat suites and prints one closing line: "N passed, N failed, N skipped".
# tools/test.sh runs it with NOT_CRAN=true, so the suites that skip on CRAN run.
library(testthat)
library(asyncjobs)
dir <- if (dir.exists("tests/testthat")) "tests/testthat" else "testthat"
res <- as.data.frame(test_dir(dir, reporter = ProgressReporter$new(show_praise = FALSE),
                              stop_on_failure = FALSE, stop_on_warning = FALSE))
failed <- sum(res$failed) + sum(res$error)
passed <- sum(res$nb) - sum(res$failed)
cat(sprintf("\n%d passed, %d failed, %d skipped\n", passed, failed, sum(res$skipped)))
quit(save = "no", status = if (failed > 0) 1L else 0L)
