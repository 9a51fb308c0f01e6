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
st <- ns$.state
# CPU time per call of this process (steadier than wall time on a shared machine).
step <- function(label, expr, n = 5000) {
  e <- substitute(expr); env <- parent.frame()
  cpu <- function() sum(proc.time()[c("user.self", "sys.self")])
  t0 <- cpu(); for (i in seq_len(n)) eval(e, env)
  cat(sprintf("| %s | %.1f us |\n", label, (cpu() - t0) / n * 1e6))
}
cat("\n| step of create_job() | CPU time |\n|---|---|\n")
step("native: check, read two options, serialize both (executor from its cache), submit, list in jobs_env (.Call)",
     .Call(ns$c_submit, "op", 1L, f, 1800000, "default", 0L, 1L, FALSE))
step("create_job() in all", create_job("op", 1L, f))
id <- ids[[1]]
cat("\n| step of get_job_status() (finished job) | CPU time |\n|---|---|\n")
step("native: check, read, unserialize result, build the list (.Call)", .Call(ns$c_status, id))
step("get_job_status() in all", get_job_status(id))
step("check_duplicate_job() in all", check_duplicate_job("op", 1L))
step("wait_for_job() of a finished job", wait_for_job(id))
stop_workers()

# The worker's steps around a trivial job, run here in the same way
# (inst/worker.R calls them in the worker; R/isolation.R, src/r/wire.rs, src/pool/reaper.rs).
snapshot <- ns$.worker_snapshot()
ns$.worker_seed(snapshot, 1L)
fn_bytes <- serialize(f, NULL, xdr = FALSE)
params_bytes <- serialize(1L, NULL, xdr = FALSE)
tree <- function(begin) .Call(ns$wrap__aj_tree_job, begin)
cat("\n| step of a worker between two jobs | CPU time |\n|---|---|\n")
step("processes the job started: check before and after (no child: one waitid each)", { tree(TRUE); tree(FALSE) })
step("session as setup left it? (options, search path, env vars, wd, locale, sinks)", ns$.worker_reset(snapshot))
step("seed the next job's RNG stream (native; the RNG kinds are setup's)", .Call(ns$w_seed, snapshot$rng_code))
step("seed the next job's RNG stream (R, given the seed; after a job changed the RNG kinds)", ns$.worker_seed(snapshot, 1L))
step("unserialize executor and params, run, serialize the result", {
  unserialize(fn_bytes)(unserialize(params_bytes))
  serialize(list(value = 1L, warnings = character()), NULL, xdr = FALSE, refhook = function(x) NULL)
})
