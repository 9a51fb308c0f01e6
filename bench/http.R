# asyncjobs inside a plumber API, over real HTTP (the demo API, inst/plumber/demo/plumber.R).
# Usage: R_LIBS=target/Rlib Rscript bench/http.R (after bash tools/setup.sh).
# 1. Latency of a trivial request (GET /health) with the pool idle, while 8
#    workers each run a CPU-bound job, and, as the peer, while the same
#    computation runs inside a handler (what an API without a job pool does).
# 2. What an executor defined inside a handler costs per job when it captures
#    `req` and `res`, against the same closure with its environment dropped.
suppressPackageStartupMessages(library(asyncjobs))
N <- as.integer(Sys.getenv("BENCH_REQUESTS", "200"))
port <- httpuv::randomPort()
url <- function(path) sprintf("http://127.0.0.1:%d%s", port, path)
extra <- quote({
  tiny <- function(req, res, executor) {
    bytes <- length(serialize(executor, NULL, xdr = FALSE))
    job <- suppressWarnings(create_job(paste0("tiny", runif(1)), list(), executor))
    c(job_response(job, res), list(executor_bytes = bytes))
  }
  json <- plumber::serializer_unboxed_json()
  api |>
    plumber::pr_post("/naive", function(req, res) tiny(req, res, function(p) 1), serializer = json) |>
    plumber::pr_post("/lean", function(req, res) {
      executor <- function(p) 1
      environment(executor) <- globalenv()
      tiny(req, res, executor)
    }, serializer = json) |>
    plumber::pr_get("/inline-kmeans", function() {
      set.seed(1)
      x <- matrix(rnorm(2e5 * 2), ncol = 2)
      kmeans(x, 8, nstart = 5, algorithm = "Lloyd", iter.max = 100)$tot.withinss
    }, serializer = json)
})
log <- tempfile(fileext = ".log")
serve <- function(nice) {
  server <<- callr::r_bg(function(api_file, port, extra, nice) {
    source(api_file)
    start_workers(n = 8, max_queued = 10000, wait = TRUE, nice = nice)
    api <- demo_api()
    api <- eval(extra)
    plumber::pr_run(api, host = "127.0.0.1", port = port, docs = FALSE, quiet = TRUE)
  }, list(system.file("plumber", "demo", "plumber.R", package = "asyncjobs"), port, extra, nice), stdout = log, stderr = "2>&1")
  deadline <- Sys.time() + 60
  while (!isTRUE(tryCatch(request("/health")$status == 200L, error = function(e) FALSE))) {
    if (Sys.time() > deadline || !server$is_alive()) stop(paste(readLines(log), collapse = "\n"))
    Sys.sleep(0.1)
  }
}
stop_server <- function() {
  server$interrupt()
  server$wait(20000)
  server$kill_tree()
}

request <- function(path, method = "GET") {
  # A fresh connection per request: on a reused one, httpuv and delayed ACKs add ~40 ms.
  h <- curl::new_handle(customrequest = method, timeout = 120, forbid_reuse = TRUE)
  if (method == "POST") curl::handle_setopt(h, post = TRUE, postfields = "")
  r <- curl::curl_fetch_memory(url(path), handle = h)
  list(status = r$status_code, body = jsonlite::fromJSON(rawToChar(r$content)), seconds = r$times[["total"]])
}
ms <- function(x) sprintf("p50 %.2f / p99 %.2f ms", 1000 * quantile(x, .5), 1000 * quantile(x, .99))
latency <- function(n = N) vapply(seq_len(n), function(i) { Sys.sleep(0.005); request("/health")$seconds }, 0)
rows <- list()
add <- function(metric, how, value) rows[[length(rows) + 1L]] <<- data.frame(metric = metric, setup = how, value = value)

busy_latency <- function() {
  ids <- vapply(1:8, function(s) request(sprintf("/analysis/kmeans?n=1000000&k=20&seed=%d", s), "POST")$body$job_id, "")
  while (sum(request("/jobs/workers")$body$workers$state == "busy") < 8) Sys.sleep(0.05)
  busy <- latency()
  stopifnot(sum(request("/jobs/workers")$body$workers$state == "busy") == 8)
  for (id in ids) request(paste0("/jobs/", id), "DELETE")
  while (sum(request("/jobs/workers")$body$workers$state == "idle") < 8) Sys.sleep(0.05)
  busy
}
server <- NULL
on.exit(if (!is.null(server)) server$kill_tree(), add = TRUE)
serve(nice = 0L)
add("GET /health latency", "pool idle", ms(latency()))
add("GET /health latency", "8 workers running CPU-bound k-means, nice = 0", ms(busy_latency()))
stop_server()
serve(nice = 10L)
add("GET /health latency", "8 workers running CPU-bound k-means, nice = 10 (the default)", ms(busy_latency()))
# The peer: the computation runs in a handler; a /health request sent meanwhile waits for it.
inline <- callr::r_bg(function(u) curl::curl_fetch_memory(u)$times[["total"]], list(url("/inline-kmeans")))
Sys.sleep(0.5)
blocked <- vapply(1:5, function(i) request("/health")$seconds, 0)
inline$wait()
add("GET /health latency", "k-means inside a handler (no job pool)", sprintf("first %.0f ms, then %s", 1000 * blocked[[1]], ms(blocked[-1])))

for (kind in c("lean", "naive")) {
  r <- lapply(seq_len(N), function(i) request(paste0("/", kind), "POST"))
  stopifnot(all(vapply(r, `[[`, 0L, "status") == 202L))
  t <- vapply(r, `[[`, 0, "seconds")
  bytes <- r[[1]]$body$executor_bytes
  add("POST submitting a trivial job", sprintf("executor %s (%s bytes per job)",
      if (kind == "naive") "defined in the handler, capturing req and res" else "in the handler, environment dropped",
      format(bytes, big.mark = ",")), ms(t))
}
stop_server()
out <- do.call(rbind, rows)
cat(sprintf("Machine: %s, %d cores, %s, plumber %s, %s\n\n", R.version$arch, parallel::detectCores(),
            R.version.string, packageVersion("plumber"), format(Sys.Date())))
cat("| metric | setup | value |\n|---|---|---|\n")
cat(sprintf("| %s | %s | %s |\n", out$metric, out$setup, out$value), sep = "")
