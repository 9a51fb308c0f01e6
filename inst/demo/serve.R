# Runs the demo API: Rscript serve.R [port] [workers]. Ctrl-C (SIGINT) stops
# the server, then the pool.
args <- commandArgs(trailingOnly = TRUE)
port <- if (length(args) >= 1L) as.integer(args[[1L]]) else 8787L
workers <- if (length(args) >= 2L) as.integer(args[[2L]]) else 4L
here <- dirname(sub("^--file=", "", grep("^--file=", commandArgs(), value = TRUE)[[1L]]))
source(file.path(here, "api.R"))

start_workers(n = workers, setup = quote(library(stats)), max_queued = 2L * workers, wait = TRUE)
# Finished jobs are kept a day; sweep them every hour, as the original API did.
sweep <- function() {
  cleanup_old_jobs()
  later::later(sweep, 3600)
}
later::later(sweep, 3600)

api <- pr_hook(demo_api(), "exit", function() stop_workers())
message(sprintf("asyncjobs demo API on http://127.0.0.1:%d with %d workers", port, workers))
pr_run(api, host = "127.0.0.1", port = port, docs = FALSE, quiet = TRUE)
