# Package state kept on the R side. The job records themselves live in Rust.

.state <- new.env(parent = emptyenv())

# Filled in by inst/worker.R inside a worker process; empty in the API.
.worker <- new.env(parent = emptyenv())

#' Jobs by id
#'
#' An environment with one binding per job, keyed by job id, as in the job
#' manager asyncjobs replaces: `ls(jobs_env)`, `exists(id, envir = jobs_env)`
#' and `jobs_env[[id]]$status` read the live registry. A record a caller writes
#' itself (`jobs_env[[id]] <- list(job_id = id, status = "completed", ...)`,
#' for example a result served from a cache) is reported by [get_job_status()]
#' like any other job.
#'
#' It is an R user-defined database (class "UserDefinedDatabase"): the ids
#' live in Rust, and a job costs no R memory until a caller names its id
#' (R then keeps that name as a symbol for good). `as.list(jobs_env)` and
#' `eapply()` do not work on it; use `mget(ls(jobs_env), envir = jobs_env)`.
#' With `options(asyncjobs.jobs_env = FALSE)` jobs submitted then are not
#' listed in it; every function still finds them by id.
#'
#' @format An environment.
#' @examples
#' start_workers(n = 1, wait = TRUE)
#' job <- create_job("sum", 1:10, sum)
#' exists(job$job_id, envir = jobs_env)
#' invisible(wait_for_job(job$job_id, timeout_ms = 30000))
#' jobs_env[[job$job_id]]$status
#' # A record written by the caller, such as a cached result:
#' jobs_env[["cached-1"]] <- list(job_id = "cached-1", status = "completed", result = 55)
#' get_job_status("cached-1")$result
#' rm("cached-1", envir = jobs_env)
#' stop_workers()
#' @export
jobs_env <- new.env(parent = emptyenv())

.default_messages <- list(
  clustering = "Fetching interaction data from STRING-db...",
  phenotype_clustering = "Running Multiple Correspondence Analysis...",
  ontology_update = "Fetching ontology data from external sources..."
)

.onLoad <- function(libname, pkgname) {
  .state$pid <- Sys.getpid()
  .state$size <- 8L
  .state$messages <- .default_messages
  .state$payload_warned <- character()
  .state$in_worker <- identical(Sys.getenv("ASYNCJOBS_WORKER"), "1")
  .state$serialize_error <- serialize_error # raised from native code
  .state$from_json <- from_json # called from native code: a JSON result as R reads it
  .state$handlers <- list()
  .Call(wrap__aj_init, .state, jobs_env)
  ns <- topenv()
  makeActiveBinding("MAX_CONCURRENT_JOBS", function() .state$size, ns)
  # Stop the pool when R exits normally; PR_SET_PDEATHSIG covers the rest.
  reg.finalizer(.state, function(e) if (identical(Sys.getpid(), e$pid)) try(stop_pool(5000), silent = TRUE),
                onexit = TRUE)
}

.onUnload <- function(libpath) {
  if (identical(Sys.getpid(), .state$pid)) try(stop_pool(5000), silent = TRUE)
}

`%||%` <- function(x, y) if (is.null(x)) y else x

# Plain numbers: date-time arithmetic costs more than the waits it times.
now_ms <- function() as.numeric(Sys.time()) * 1000
