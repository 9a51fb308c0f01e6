# An API replica in a container (inst/deploy/compose.yml, service `api`): the
# demo API (inst/plumber/demo/plumber.R) stands in for yours. It runs no jobs (n = 0): it
# submits them to the store, and reads and cancels them; the `worker` and
# `worker-maintenance` services run them. Any replica answers for any job, so
# the proxy needs no sticky sessions.
library(asyncjobs)
source(system.file("plumber", "demo", "plumber.R", package = "asyncjobs", mustWork = TRUE))

# The demo's operations carry no queue; here k-means goes to "interactive"
# and the data refresh to "maintenance". (Your API passes `queue =` to
# create_job() itself.) api.R's handlers find this create_job() first.
create_job <- function(operation, ..., queue = if (identical(operation, "refresh")) "maintenance" else "interactive") {
  asyncjobs::create_job(operation, ..., queue = queue)
}

start_workers(n = 0, store = Sys.getenv("ASYNCJOBS_STORE"), max_active = 200, retention = 90 * 86400)
# On a public address the operator routes (GET /jobs, /jobs/workers,
# /jobs/hosts) stay off; mount them with an `authorize` function if you want them.
api <- pr_hook(demo_api(admin = FALSE), "exit", function() stop_workers())
pr_run(api, host = "0.0.0.0", port = 8000, docs = FALSE, quiet = TRUE)
