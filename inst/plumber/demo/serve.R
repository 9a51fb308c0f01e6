# Runs the demo API: Rscript serve.R [port] [workers] [store]. Ctrl-C (SIGINT)
# stops the server, then the pool.
#
# workers = 0 makes an API replica: it submits, reads and cancels jobs but
# runs none; worker hosts (asyncjobs::run_workers()) or other API processes on
# the same store run them. store is a URL as for start_workers(); missing or
# "" takes ASYNCJOBS_STORE, then memory (which a replica cannot use).

args <- commandArgs(trailingOnly = TRUE)
port <- if (length(args) >= 1L) as.integer(args[[1L]]) else 8787L
workers <- if (length(args) >= 2L) as.integer(args[[2L]]) else 4L
store <- if (length(args) >= 3L && nzchar(args[[3L]])) args[[3L]] else NULL
if (is.na(port) || is.na(workers) || workers < 0L) {
  stop("usage: Rscript serve.R [port] [workers, 0 for a replica] [store URL]", call. = FALSE)
}
here <- dirname(sub("^--file=", "", grep("^--file=", commandArgs(), value = TRUE)[[1L]]))
source(file.path(here, "plumber.R"))

start_workers(n = workers, setup = quote(library(stats)), max_queued = 2L * workers, wait = TRUE, store = store)
shown_store <- attr(get_worker_status(), "store") # without its password
if (workers == 0L && identical(shown_store, "memory")) {
  stop_workers()
  stop("a replica (0 workers) needs a shared store: give a store URL or set ASYNCJOBS_STORE", call. = FALSE)
}
# Finished jobs are kept a day; sweep them every hour, as the original API did.
sweep <- function() {
  cleanup_old_jobs()
  later::later(sweep, 3600)
}
later::later(sweep, 3600)

api <- pr_hook(demo_api(), "exit", function() stop_workers())
message(sprintf("asyncjobs demo API on http://127.0.0.1:%d with %d workers%s, store %s", port, workers,
                if (workers == 0L) " (a replica: worker hosts run the jobs)" else "", shown_store))
pr_run(api, host = "127.0.0.1", port = port, docs = FALSE, quiet = TRUE)
