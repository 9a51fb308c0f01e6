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
#' Each binding costs about 12 us at submit and 600 bytes of R memory while
#' the job is retained (R never frees the symbol). An API that does not read
#' `jobs_env` can set `options(asyncjobs.jobs_env = FALSE)`: jobs submitted
#' then get no binding; every function still finds them by id.
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

# Records callers wrote over a live binding.
.overrides <- new.env(parent = emptyenv())

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
  .state$bound <- 0L # active bindings create_job made in jobs_env
  .Call(wrap__aj_init)
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

# Binds a job id in jobs_env to its live record.
bind_job <- function(id) {
  makeActiveBinding(id, function(value) {
    if (missing(value)) job_record(id) else assign(id, value, envir = .overrides)
  }, jobs_env)
  .state$bound <- .state$bound + 1L
}
