# Listing a large store: list_jobs() with a filter and a limit, on PostgreSQL
# and MariaDB holding BENCH_ROWS finished jobs (default 300,000), and the
# memory store holding as many. The store filters, sorts and limits, so the
# answer should cost the page, not the store, and the API's memory should not
# grow with it.
# Usage: R_LIBS=target/Rlib Rscript bench/list.R
# BENCH_PG_URL and BENCH_MYSQL_URL name the databases (their jobs table is
# filled with finished jobs by the server's own SQL, through psql and mysql,
# and emptied at the end); BENCH_ROWS, BENCH_REPS (timed calls per case).
suppressPackageStartupMessages(library(asyncjobs))
ROWS <- as.integer(Sys.getenv("BENCH_ROWS", "300000"))
REPS <- as.integer(Sys.getenv("BENCH_REPS", "30"))
STORES <- c(
  postgres = Sys.getenv("BENCH_PG_URL", "postgres://postgres@127.0.0.1:5432/test"),
  mariadb = Sys.getenv("BENCH_MYSQL_URL", "mysql://root@127.0.0.1:3306/test"),
  memory = "memory")

rss_mb <- function() {
  line <- grep("^VmRSS:", readLines("/proc/self/status"), value = TRUE)
  as.numeric(strsplit(trimws(sub("^VmRSS:", "", line)), " +")[[1]][[1]]) / 1024
}

# Finished jobs, inserted by the server itself in one statement; then the
# table's statistics, as a table that grew over time has them.
fill_sql <- function(engine, url, n) {
  if (engine == "postgres") {
    sql <- sprintf(paste(
      "INSERT INTO asyncjobs_jobs (id, operation, params_hash, status, queue, priority, submitted_at, run_after,",
      "started_at, completed_at, timeout_ms, attempts, max_attempts, error_code, error_message)",
      "SELECT gen_random_uuid()::text, 'bench-list', repeat('0', 64), CASE WHEN i %% 10 = 0 THEN 'failed' ELSE 'completed' END,",
      "'default', 0, e - i, e - i, e - i, e - i + 0.5, 1800000, 1, 1,",
      "CASE WHEN i %% 10 = 0 THEN 'EXECUTION_ERROR' END, CASE WHEN i %% 10 = 0 THEN 'boom' END",
      "FROM generate_series(1, %d) i, (SELECT extract(epoch from now()) - 86400 AS e) t;",
      "ANALYZE asyncjobs_jobs;"), n)
    system2("psql", c(shQuote(url), "-q", "-c", shQuote(sql)), stdout = FALSE)
  } else {
    m <- regmatches(url, regexec("^[a-z]+://([^:@/]+)(:[^@]*)?@([^:/]+):?([0-9]*)/(.+)$", url))[[1L]]
    sql <- sprintf(paste(
      "SET SESSION max_recursive_iterations = %d;",
      "INSERT INTO asyncjobs_jobs (id, operation, params_hash, status, queue, priority, submitted_at, run_after,",
      "started_at, completed_at, timeout_ms, attempts, max_attempts, error_code, error_message)",
      "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < %d)",
      "SELECT UUID(), 'bench-list', REPEAT('0', 64), IF(i %% 10 = 0, 'failed', 'completed'), 'default', 0,",
      "UNIX_TIMESTAMP() - 86400 - i, UNIX_TIMESTAMP() - 86400 - i, UNIX_TIMESTAMP() - 86400 - i,",
      "UNIX_TIMESTAMP() - 86400 - i + 0.5, 1800000, 1, 1, IF(i %% 10 = 0, 'EXECUTION_ERROR', NULL),",
      "IF(i %% 10 = 0, 'boom', NULL) FROM s;",
      "ANALYZE TABLE asyncjobs_jobs;"), n + 1L, n)
    args <- c("-h", m[[4L]], if (nzchar(m[[5L]])) c("-P", m[[5L]]), "-u", m[[2L]],
              if (nzchar(m[[3L]])) paste0("-p", substring(m[[3L]], 2L)), m[[6L]], "-e", shQuote(sql))
    system2("mysql", args, stdout = FALSE)
  }
}

nothing <- function(p) NULL

fill_memory <- function(n) {
  start_workers(1, queues = "nobody", max_queued = 10000, wait = TRUE)
  done <- 0
  while (done < n) {
    k <- min(10000, n - done)
    ids <- vapply(seq_len(k), function(i) create_job("bench-list", i, nothing, queue = "nobody")$job_id, "")
    for (id in ids) cancel_job(id)
    done <- done + k
  }
}

time_ms <- function(f) {
  f() # warm
  t <- vapply(seq_len(REPS), function(i) { t0 <- as.numeric(Sys.time()); f(); 1000 * (as.numeric(Sys.time()) - t0) }, 0)
  sprintf("%.2f ms (IQR %.2f-%.2f)", median(t), quantile(t, 0.25), quantile(t, 0.75))
}

cat(sprintf("%s, %s finished jobs per store, %d timed calls per case\n\n", R.version.string,
            format(ROWS, big.mark = ","), REPS))
cat("| store | call | time (median) | rows |\n|---|---|---|---|\n")
for (engine in names(STORES)) {
  url <- STORES[[engine]]
  ok <- tryCatch({
    if (engine == "memory") fill_memory(ROWS) else start_workers(0, store = url)
    TRUE
  }, error = function(e) { cat(sprintf("| %s | skipped: %s | | |\n", engine, conditionMessage(e))); FALSE })
  if (!ok) next
  if (engine != "memory") {
    suppressMessages(cleanup_old_jobs(0))
    fill_sql(engine, url, ROWS)
  }
  rss0 <- rss_mb()
  cases <- list(
    `list_jobs(status = "running", limit = 50)` = function() list_jobs(status = "running", limit = 50),
    `list_jobs(status = "failed", limit = 50, newest_first = TRUE)` =
      function() list_jobs(status = "failed", limit = 50, newest_first = TRUE),
    `list_jobs(limit = 50, newest_first = TRUE)` = function() list_jobs(limit = 50, newest_first = TRUE),
    `list_jobs(status = c("pending", "running"), limit = 500)` =
      function() list_jobs(status = c("pending", "running"), limit = 500),
    `next page of 50 (cursor), newest first` = local({
      first <- list_jobs(limit = 50, newest_first = TRUE)
      function() list_jobs(limit = 50, newest_first = TRUE, cursor = attr(first, "next_cursor"))
    }))
  for (name in names(cases)) {
    rows <- nrow(cases[[name]]())
    cat(sprintf("| %s | `%s` | %s | %d |\n", engine, name, time_ms(cases[[name]]), rows))
  }
  invisible(gc())
  cat(sprintf("| %s | RSS of this process before and after the listings | %.1f -> %.1f MB | |\n", engine, rss0, rss_mb()))
  suppressMessages(cleanup_old_jobs(0))
  stop_workers()
  if (engine != "memory") asyncjobs:::use_store("memory")
}
