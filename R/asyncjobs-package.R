# Package-level documentation: the topics that belong to no single function.

#' asyncjobs: background jobs for 'plumber' APIs
#'
#' [create_job()] returns a job id at once; the job runs in a pool of separate
#' R worker processes ([start_workers()]); [get_job_status()] reports it. The
#' registry, the scheduler and the supervision of the workers are written in
#' Rust. The functions and their return shapes are those of a mirai-based
#' `job-manager.R` (`create_job()`, `get_job_status()`,
#' `check_duplicate_job()`, `cleanup_old_jobs()`, [jobs_env],
#' [MAX_CONCURRENT_JOBS]), so an API switches by changing its start script;
#' see `vignette("from-mirai", package = "asyncjobs")`.
#'
#' - What each failure does to a job and to the pool: [asyncjobs_guarantees].
#' - The error codes a job or a call can return: [asyncjobs_errors].
#' - Options (`asyncjobs.*`) and environment variables: [asyncjobs_options].
#' - HTTP: [job_response()] and [pr_job_routes()]; a demo API runs with
#'   `plumber::plumb_api("asyncjobs", "demo")`.
#'
#' asyncjobs runs on Linux only (it supervises workers with pidfd and
#' `PR_SET_PDEATHSIG`).
#'
#' @keywords internal
#' @useDynLib asyncjobs, .registration = TRUE
"_PACKAGE"

#' Options and environment variables
#'
#' asyncjobs reads these options (set with [options()]) when the call that
#' uses them runs: [start_workers()] for the pool and store ones, every
#' submit for the others.
#'
#' @section Options:
#' \describe{
#'   \item{`asyncjobs.store`}{(string) the store URL [start_workers()] uses
#'     when its `store` is `NULL`: `"memory"`, `"sqlite:///abs/path.db"`,
#'     `"postgres://..."` or `"mysql://..."`. Default: the environment variable
#'     `ASYNCJOBS_STORE`, then `"memory"`.}
#'   \item{`asyncjobs.store_timeout_ms`}{(number, default 5000) the longest a
#'     store call made from R waits; past it the call returns
#'     `STORE_UNAVAILABLE`.}
#'   \item{`asyncjobs.lease_seconds`}{(number >= 2, default 15) how long a
#'     running job's lease lasts unrenewed in a shared store; a host silent
#'     for longer has its jobs rescued (`HOST_LOST`).}
#'   \item{`asyncjobs.poll_ms`}{(number >= 10, default 1000) the longest an
#'     idle pool waits between two looks for work in a shared store.}
#'   \item{`asyncjobs.jobs_env`}{(logical, default `TRUE`) `FALSE` stops
#'     [create_job()] from binding new jobs in [jobs_env]; every function
#'     still finds them by id.}
#'   \item{`asyncjobs.key`}{(string) the key that signs jobs carrying R code
#'     (closures, R-serialized params) for a shared store, read by
#'     [start_workers()]; the same on every API replica and worker host.
#'     Default: the environment variable `ASYNCJOBS_KEY`. Without one, such
#'     jobs cannot be submitted to a shared store, and a host runs none.}
#'   \item{`asyncjobs.warn_payload_bytes`}{(number, default 262144) an
#'     executor that serializes to more bytes than this is warned about, once
#'     per operation (class `asyncjobs_warning_payload`).}
#' }
#'
#' @section Environment variables:
#' \describe{
#'   \item{`ASYNCJOBS_STORE`}{the store URL when neither the `store` argument
#'     nor the option `asyncjobs.store` gives one.}
#'   \item{`ASYNCJOBS_KEY`}{the shared key when the option `asyncjobs.key` is
#'     unset.}
#'   \item{`ASYNCJOBS_WORKER`}{set to `"1"` inside worker processes, where
#'     [start_workers()], [run_workers()] and [create_job()] refuse to run.}
#' }
#'
#' @examples
#' old <- options(asyncjobs.warn_payload_bytes = 1024^2, asyncjobs.jobs_env = FALSE)
#' getOption("asyncjobs.warn_payload_bytes")
#' options(old)
#' @name asyncjobs_options
NULL

#' Error codes
#'
#' Outcomes are values, never conditions: a call that cannot do what was
#' asked returns `list(error = CODE, message, ...)`, and a job that fails has
#' `status` `"failed"` (or `"cancelled"`) and `error = list(code, message,
#' ...)`. Misuse of the API (a bad argument, a call from a forked child or
#' from inside a job) is different: it throws a condition of class
#' `asyncjobs_error` and a subclass such as `asyncjobs_error_argument`, whose
#' message names the argument.
#'
#' @section Codes a call returns:
#' Each maps to an HTTP status in [job_response()].
#' \describe{
#'   \item{`CAPACITY_EXCEEDED` (503)}{[create_job()]: the cap of active jobs
#'     is reached; `retry_after` says when to try again.}
#'   \item{`DUPLICATE_JOB` (409)}{[create_job()] with `unique = TRUE`: an
#'     identical job is pending or running; `existing_job_id` names it.}
#'   \item{`POOL_UNAVAILABLE` (503)}{no worker can start (every slot's setup
#'     kept failing); also a job's code when it was queued then.}
#'   \item{`STORE_UNAVAILABLE` (503)}{the durable store could not be reached
#'     within `asyncjobs.store_timeout_ms`.}
#'   \item{`JOB_NOT_FOUND` (404)}{no job has this id.}
#'   \item{`JOB_FINISHED` (409)}{[cancel_job()] on a finished job.}
#'   \item{`JOB_NOT_FINISHED` (409)}{[get_job_result()] on a pending or
#'     running job.}
#'   \item{`JOB_FAILED` (409)}{[get_job_result()] on a failed or cancelled
#'     job; `details` is the job's error.}
#'   \item{`UNKNOWN_OPERATION`, `PARAMS_NOT_JSON`, `UNKNOWN_DEPENDENCY`
#'     (400)}{[create_job()] of a job type no host has a handler for, params
#'     a JSON handler cannot take, `depends_on` naming no job: thrown as a
#'     classed condition (`asyncjobs_error_unknown_operation`, ...) whose
#'     `code` [job_response()] answers.}
#'   \item{`NOT_SIGNED` (500)}{a closure for a shared store, and no key
#'     (`asyncjobs_error_no_key`).}
#'   \item{`BAD_REQUEST` (400), `NOT_FOUND` (404), `FORBIDDEN` (403),
#'     `AUTHORIZE_FAILED` (500), `INTERNAL_ERROR` (500)}{answers of the HTTP
#'     routes ([pr_job_routes()]).}
#' }
#'
#' @section Codes a job ends with:
#' \describe{
#'   \item{`EXECUTION_ERROR`}{the executor signalled an error; `error` also
#'     has `call`, `class`, `traceback` and `warnings`.}
#'   \item{`TIMEOUT`}{the job ran longer than its `timeout_ms`; its worker and
#'     every process it started were killed.}
#'   \item{`CANCELLED`}{[cancel_job()]; the status is `"cancelled"`.}
#'   \item{`WORKER_CRASHED`}{the worker process died during the job
#'     (segfault, killed, out of memory, `quit()`); the message says how.}
#'   \item{`PROTOCOL_ERROR`}{the worker sent something the pool could not
#'     read; the worker is killed and replaced.}
#'   \item{`RESULT_TOO_LARGE`}{the serialized result exceeds
#'     `max_result_bytes` of [start_workers()].}
#'   \item{`RESULT_NOT_SERIALIZABLE`}{the result holds something that cannot
#'     leave the worker (an external pointer, a connection).}
#'   \item{`SHUTDOWN`}{the pool was stopped ([stop_workers()]) before the job
#'     finished.}
#'   \item{`HOST_LOST`}{shared stores: the host running the job stopped
#'     renewing its lease.}
#'   \item{`DEPENDENCY_FAILED`}{a job it depends on (`depends_on`) failed or
#'     was cancelled; the message names it.}
#'   \item{`CODE_NOT_TRUSTED`}{shared stores: the job carries R code or
#'     R-serialized params that are not signed with the host's key; nothing of
#'     it was unserialized.}
#'   \item{`UNKNOWN_OPERATION`}{the worker that took the job has no handler
#'     for its type.}
#'   \item{`POOL_UNAVAILABLE`}{the job was queued when no worker could start.}
#' }
#' In an HTTP body, a result that JSON cannot hold is replaced by
#' `result_error = list(code = "RESULT_NOT_JSON", message)`.
#'
#' @examples
#' start_workers(n = 1, wait = TRUE)
#' job <- create_job("fails", NULL, function(p) stop("no data"))
#' wait_for_job(job$job_id, timeout_ms = 30000)$error$code # "EXECUTION_ERROR"
#' get_job_status("no-such-id")$error # "JOB_NOT_FOUND"
#' try(create_job("x", NULL, "not a function")) # misuse: a classed condition
#' stop_workers()
#' @name asyncjobs_errors
NULL

#' Guarantees
#'
#' What happens to jobs, workers and the pool on each event. Each statement
#' is tested with real processes in the package's test suites.
#'
#' \describe{
#'   \item{Timeout}{After `timeout_ms` the worker's process group (the worker
#'     and every process the job started) gets SIGTERM, then SIGKILL after
#'     1 s. The job fails with `TIMEOUT` at once, its capacity is freed at
#'     once, and a fresh worker (with `setup` run again) takes the slot.}
#'   \item{Cancel}{A pending job leaves the queue; a running job's worker
#'     group is killed and replaced. The job becomes `"cancelled"` with code
#'     `CANCELLED`.}
#'   \item{Worker crash}{A worker that dies (segfault, SIGKILL, out of
#'     memory, `quit()`) fails its job with `WORKER_CRASHED` and is replaced;
#'     an idle worker that dies is replaced too.}
#'   \item{Setup keeps failing}{Retried with backoff; after 5 failures in a
#'     row a slot gives up ([get_worker_status()] says why). When every slot
#'     has, [create_job()] returns `POOL_UNAVAILABLE` instead of queueing.}
#'   \item{Recycling}{`max_jobs_per_worker` and `max_worker_memory_mb`
#'     replace a worker between jobs, never during one. Globals a job creates
#'     are removed after it; what `setup` made stays.}
#'   \item{Stop}{[stop_workers()] ends every worker group; jobs pending or
#'     running fail with `SHUTDOWN` (with a shared store only the jobs this
#'     process ran, or they go back to the queue when `max_attempts`
#'     allows). [start_workers()] works again afterwards.}
#'   \item{The R process ends}{Workers are killed by the kernel
#'     (`PR_SET_PDEATHSIG`); a normal exit also stops the pool cleanly.}
#'   \item{Forked child}{A call from a forked child (`parallel::mclapply()`)
#'     throws an `asyncjobs_error_fork` condition instead of hanging.}
#'   \item{Hostile jobs}{Output, reads from stdin and bytes written to stdout
#'     never reach the pool's protocol (it uses private pipes). Too large a
#'     result fails with `RESULT_TOO_LARGE`; one holding external pointers or
#'     connections with `RESULT_NOT_SERIALIZABLE`.}
#'   \item{Shared stores}{Finished jobs and results survive the API process.
#'     A host that dies stops renewing its leases: within about a lease plus
#'     5 s another host fails its jobs with `HOST_LOST` or re-queues them
#'     (`max_attempts`). `create_job(unique = TRUE)` is atomic over the whole
#'     store. A database outage fails no running job; calls meanwhile return
#'     `STORE_UNAVAILABLE`. A host that lost its lease writes nothing more
#'     about the job.}
#'   \item{Duplicates}{[check_duplicate_job()] and `unique = TRUE` compare
#'     the SHA-256 of the very bytes that are stored and sent to the worker.}
#' }
#'
#' @examples
#' start_workers(n = 1, wait = TRUE)
#' job <- create_job("slow", 5, function(s) Sys.sleep(s), timeout_ms = 500)
#' wait_for_job(job$job_id, timeout_ms = 30000)$error$code # "TIMEOUT"
#' get_worker_status()$state # a fresh worker took the slot
#' stop_workers()
#' @name asyncjobs_guarantees
NULL

#' Size of the worker pool
#'
#' The number of workers of the pool started last ([start_workers()]'s `n`;
#' 8 before any pool has started), read-only. It stands in for the constant
#' of the same name in the job manager asyncjobs replaces.
#'
#' @format An integer.
#' @usage MAX_CONCURRENT_JOBS
#' @docType data
#' @examples
#' start_workers(n = 2, wait = TRUE)
#' MAX_CONCURRENT_JOBS
#' stop_workers()
#' @name MAX_CONCURRENT_JOBS
#' @export MAX_CONCURRENT_JOBS
NULL
