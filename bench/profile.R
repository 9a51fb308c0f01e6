# Where the CPU of a trivial job goes: the API's R thread, the pool thread
# (Rust) and the workers (R), from /proc CPU times around 5000 jobs, and the
# R-level cost of each step of a submit. Usage: R_LIBS=target/Rlib Rscript bench/profile.R
suppressPackageStartupMessages(library(asyncjobs))
options(asyncjobs.warn_payload_bytes = Inf)
N <- as.integer(Sys.getenv("BENCH_JOBS", "5000"))
ticks <- function(path) sum(as.numeric(strsplit(sub("^.*\\) ", "", readLines(path)), " ")[[1]][12:13])) / 100
threads <- function() {
  tids <- list.files(sprintf("/proc/%d/task", Sys.getpid()))
  names <- vapply(tids, function(t) readLines(sprintf("/proc/%d/task/%s/comm", Sys.getpid(), t)), "")
  cpu <- vapply(tids, function(t) ticks(sprintf("/proc/%d/task/%s/stat", Sys.getpid(), t)), 0)
  c(main = sum(cpu[names != "asyncjobs-pool"]), pool = sum(cpu[names == "asyncjobs-pool"]))
}
workers_cpu <- function() sum(vapply(get_worker_status()$pid, function(p) ticks(sprintf("/proc/%d/stat", p)), 0))

start_workers(8, max_queued = 1e6, wait = TRUE)
f <- function(p) p
for (id in vapply(1:500, function(i) create_job("warm", i, f)$job_id, "")) wait_for_job(id)
t0 <- Sys.time(); a <- threads(); w <- workers_cpu()
ids <- vapply(seq_len(N), function(i) create_job("tp", i, f)$job_id, "")
for (id in ids) wait_for_job(id)
el <- as.numeric(Sys.time() - t0, units = "secs"); b <- threads(); w2 <- workers_cpu()
stopifnot(all(get_worker_status()$spawned == 1L)) # the same workers throughout
cpu <- c(b - a, workers = w2 - w) / N * 1e6
cat(sprintf("%d trivial jobs in %.2f s (%.0f jobs/s); CPU per job: API R thread %.0f us, pool thread %.0f us, workers %.0f us; total %.0f us on %d cores\n",
            N, el, N / el, cpu[["main"]], cpu[["pool"]], cpu[["workers"]], sum(cpu), parallel::detectCores()))

ns <- asNamespace("asyncjobs")
step <- function(label, expr, n = 5000) {
  e <- substitute(expr); env <- parent.frame()
  t0 <- proc.time()[["elapsed"]]; for (i in seq_len(n)) eval(e, env)
  cat(sprintf("| %s | %.1f us |\n", label, (proc.time()[["elapsed"]] - t0) / n * 1e6))
}
fb <- serialize(f, NULL, xdr = FALSE); pb <- serialize(1L, NULL, xdr = FALSE)
cat("\n| step of create_job() | time |\n|---|---|\n")
step("argument checks (process, operation, timeout)", { ns$check_process(); ns$check_string("op", "operation"); ns$check_number(1800000, "timeout_ms", min = 1) })
step("serialize params and executor (one tryCatch)", ns$serialize_job(1L, f, NULL))
step("Rust: hash, record, enqueue (.Call)", .Call(ns$wrap__aj_submit, "op", fb, pb, 1800000))
step("jobs_env binding (symbol + active binding)", ns$bind_job(paste0("id-", runif(1))))
step("create_job() in all", create_job("op", 1L, f))
id <- ids[[1]]
cat("\n| step of get_job_status() (finished job) | time |\n|---|---|\n")
step("Rust: record to R list (.Call)", .Call(ns$wrap__aj_job, id))
step("R: unserialize result, build the contract list", ns$status_of(.Call(ns$wrap__aj_job, id)))
step("get_job_status() in all", get_job_status(id))
step("wait_for_job() of a finished job", wait_for_job(id))
stop_workers()
