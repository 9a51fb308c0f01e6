# Job types the job model's tests register, in the test process and in the
# worker hosts they start (start_workers(handlers = ), run_workers(handlers = )).
library(asyncjobs)
register_job("square", function(p) p$x^2)
register_job("echo", function(p) p)
register_job("tick", function(p) p$n)
# A model is no JSON: its result is stored serialized (and flagged so).
register_job("model", function(p) stats::lm(y ~ x, data = data.frame(x = 1:3, y = p$y)))
register_job("rparams", function(p) class(p$e), params = "r")

# A three-level chain in which each level submits the next from inside its
# job. The middle one waits for itself to complete (depends_on = its own id)
# before the last may run, and blocks on its first run until its host is
# killed; a retry finds the last level it submitted already.
chain_dir <- function(p) p$dir
register_job("level1", function(p) {
  create_job(p$middle, p)$job_id
})
middle <- function(p) {
  me <- current_job()
  cat(me$attempt, "\n", file = file.path(p$dir, paste0("middle-", me$attempt)))
  asyncjobs::report_progress(step = as.character(Sys.getpid()))
  last <- create_job("level3", p, depends_on = me$job_id)
  if (me$attempt == 1L) Sys.sleep(300) # its host is killed meanwhile
  last$job_id
}
register_job("level2", middle, max_attempts = 2L)
register_job("level2_once", middle, max_attempts = 1L)
register_job("level3", function(p) {
  file.create(file.path(p$dir, paste0("last-", current_job()$job_id)))
  "done"
})

# A job that looks at itself and submits children.
register_job("spawn", function(p) {
  kids <- vapply(seq_len(p$n), function(i) create_job("square", list(x = i))$job_id, "")
  list(me = current_job()[c("operation", "attempt", "queue", "parent_id")], params = current_job()$params, kids = kids)
})
register_job("lane", function(p) current_job()$queue, queue = "slow", priority = 5L, timeout_ms = 5000)
register_job("fail", function(p) stop(p$why))

# A job that takes its time, for limits and caps.
register_job("nap", function(p) {
  Sys.sleep(p$s)
  "ok"
})
