# asyncjobs demo: what an API's client sees while jobs are accepted, run and reported.
library(asyncjobs)

cat("Starting 2 workers...\n")
start_workers(n = 2, setup = quote(library(stats)), max_queued = 4, wait = TRUE)
print(get_worker_status()[, c("slot", "pid", "state")])

# Executors defined at top level capture nothing; the work comes in `params`.
cluster_genes <- function(p) {
  set.seed(p$seed)
  x <- matrix(rnorm(p$n * 2), ncol = 2)
  report_progress("Generating data", 1, 3)
  Sys.sleep(0.5)
  report_progress("Running k-means", 2, 3)
  fit <- kmeans(x, centers = p$k, nstart = 20)
  Sys.sleep(0.5)
  report_progress("Summarising clusters", 3, 3)
  list(sizes = as.vector(fit$size), withinss = round(fit$tot.withinss, 1))
}
slow_refresh <- function(p) { cat("refreshing", p$source, "\n"); Sys.sleep(p$seconds); "ontology refreshed" }
broken <- function(p) stop("STRING-db answered 503")

params <- list(seed = 1, n = 20000, k = 4)
jobs <- list(
  clustering = create_job("clustering", params, cluster_genes),
  ontology_update = create_job("ontology_update", list(source = "HPO", seconds = 1.5), slow_refresh),
  failing = create_job("clustering", list(seed = 2), broken, timeout_ms = 60000)
)
for (name in names(jobs)) cat(sprintf("POST %-16s -> 202 %s\n", name, jobs[[name]]$job_id))
dup <- check_duplicate_job("clustering", params)
cat(sprintf("Same clustering again? duplicate = %s (existing job %s) -> 409\n", dup$duplicate,
            dup$existing_job_id))

describe <- function(st) {
  switch(st$status,
    pending = sprintf("pending (queue position %s)", st$position),
    running = sprintf("running: %s%s, ~%ss left", st$step,
                      if (is.na(st$progress$total)) "" else sprintf(" [%s/%s]", st$progress$current, st$progress$total),
                      st$estimated_seconds),
    completed = sprintf("completed: %s", paste(deparse(st$result), collapse = " ")),
    sprintf("%s: %s (%s)", st$status, st$error$code, st$error$message))
}
last <- list()
repeat {
  for (name in names(jobs)) {
    now <- describe(get_job_status(jobs[[name]]$job_id))
    if (!identical(last[[name]], now)) {
      cat(sprintf("%s  %-16s %s\n", format(Sys.time(), "%H:%M:%OS2"), name, now))
      last[[name]] <- now
    }
  }
  done <- vapply(jobs, function(j) get_job_status(j$job_id)$status %in% c("completed", "failed", "cancelled"), TRUE)
  if (all(done)) break
  Sys.sleep(0.05)
}
cat("\nOutput of the ontology job:\n")
cat(get_job_output(jobs$ontology_update$job_id))
cat("\nAll jobs:\n")
print(list_jobs()[, c("operation", "status", "duration_seconds", "error_code")])
stop_workers()
cat("Workers stopped.\n")
