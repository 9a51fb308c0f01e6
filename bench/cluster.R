# A cluster on one shared store: worker-only hosts as real processes
# (`Rscript -e 'asyncjobs::run_workers(...)'`), a replica that submits and
# runs nothing (start_workers(n = 0)), side by side on SQLite, PostgreSQL and
# MariaDB/MySQL, in one run:
#  1. dead-host detection: a host runs a long job and is killed with SIGKILL;
#     the time until get_job_status() says HOST_LOST, with the default lease
#     (15 s) and with 5 s;
#  2. pickup from a replica's submit to the job's start, 2 worker hosts idle;
#  3. jobs per second through 8 claimers: 4 hosts x 2 workers and 8 hosts x 1,
#     the queue filled while every worker is held, then released at once;
#  4. cancel propagation: cancel_job() in the replica to the worker process
#     on its host being gone (or a zombie);
#  5. database statements per second from one idle host, counted by a TCP
#     proxy that parses the client's protocol (both servers), and on
#     PostgreSQL also the transactions pg_stat_database counts for the database.
# Usage: R_LIBS=target/Rlib Rscript bench/cluster.R (after bash tools/setup.sh).
# BENCH_PG_URL and BENCH_MYSQL_URL name the databases (the default `test`, as
# bench/store.R); an engine that cannot be reached is skipped with the reason.
# The idle-host count on PostgreSQL is only clean when nothing else uses that
# database during the window. cleanup_old_jobs(0) removes every finished job
# in the store. BENCH_DEAD, BENCH_PICKUPS, BENCH_CANCELS, BENCH_CLAIMS and
# BENCH_IDLE_SECONDS set the sample sizes; the defaults take about 6 minutes.
suppressPackageStartupMessages(library(asyncjobs))
N_DEAD <- as.integer(Sys.getenv("BENCH_DEAD", "3"))
N_PICKUP <- as.integer(Sys.getenv("BENCH_PICKUPS", "20"))
N_CANCEL <- as.integer(Sys.getenv("BENCH_CANCELS", "6"))
N_CLAIMS <- as.integer(Sys.getenv("BENCH_CLAIMS", "400"))
IDLE_SECONDS <- as.numeric(Sys.getenv("BENCH_IDLE_SECONDS", "30"))
sqlite_file <- tempfile("asyncjobs-cluster-", fileext = ".db")
STORES <- c(
  sqlite = paste0("sqlite://", sqlite_file),
  postgres = Sys.getenv("BENCH_PG_URL", "postgres://postgres@127.0.0.1:5432/test"),
  mariadb = Sys.getenv("BENCH_MYSQL_URL", "mysql://root@127.0.0.1:3306/test"))
started <- Sys.time()

# Shared by the processes below: call helpers() for an environment of them.
helpers <- function() {
  now <- function() as.numeric(Sys.time())
  wait_until <- function(f, timeout, interval = 0.05) {
    deadline <- now() + timeout
    repeat {
      if (isTRUE(f())) return(TRUE)
      if (now() > deadline) return(FALSE)
      Sys.sleep(interval)
    }
  }
  # A worker-only host: Rscript -e 'asyncjobs::run_workers(...)', its log in a file.
  start_host <- function(url, n, queues, lease = 15) {
    log <- tempfile("cluster-host-", fileext = ".log")
    expr <- sprintf(
      "options(asyncjobs.lease_seconds = %s, asyncjobs.warn_payload_bytes = Inf); asyncjobs::run_workers(%s, n = %dL, queues = %s, grace_ms = 5000)",
      lease, deparse(url), as.integer(n), paste(deparse(queues), collapse = ""))
    proc <- processx::process$new(file.path(R.home("bin"), "Rscript"), c("-e", expr), stdout = log, stderr = "2>&1",
                                  env = c("current", R_LIBS = paste(.libPaths(), collapse = ":")), cleanup = TRUE)
    list(proc = proc, log = log)
  }
  host_lines <- function(h) if (file.exists(h$log)) readLines(h$log, warn = FALSE) else character()
  ready <- function(hosts, timeout = 90) {
    ok <- wait_until(function() all(vapply(hosts, function(h) any(grepl("serving queues", host_lines(h))) || !h$proc$is_alive(), TRUE)),
                     timeout, 0.1)
    up <- vapply(hosts, function(h) h$proc$is_alive() && any(grepl("serving queues", host_lines(h))), TRUE)
    if (!all(up)) {
      bad <- hosts[[which(!up)[[1]]]]
      stop("a worker host did not start: ", paste(tail(host_lines(bad), 5), collapse = " | "))
    }
  }
  # SIGTERM (run_workers drains and exits), SIGKILL after `timeout`; the exit statuses.
  stop_hosts <- function(hosts, timeout = 20) {
    for (h in hosts) if (h$proc$is_alive()) h$proc$signal(15L)
    wait_until(function() !any(vapply(hosts, function(h) h$proc$is_alive(), TRUE)), timeout, 0.05)
    vapply(hosts, function(h) {
      if (h$proc$is_alive()) { h$proc$kill(); return(NA_integer_) }
      as.integer(h$proc$get_exit_status())
    }, 0L)
  }
  # Gone, or a zombie its host has not reaped yet.
  proc_dead <- function(pid) {
    stat <- tryCatch(readLines(sprintf("/proc/%d/stat", pid), warn = FALSE), error = function(e) character())
    !length(stat) || substr(sub("^.*\\) ", "", stat[[1]]), 1, 1) %in% c("Z", "X")
  }
  # The pid a running job reported as its progress step.
  job_pid <- function(id) {
    st <- get_job_status(id)
    if (identical(st$status, "running")) suppressWarnings(as.integer(st$step)) else NA_integer_
  }
  sleeper <- function(p) {
    asyncjobs::report_progress(step = as.character(Sys.getpid()))
    Sys.sleep(p$seconds)
    "woke"
  }
  stamp <- function(p) as.numeric(Sys.time())
  trivial <- function(p) p
  blocker <- function(p) {
    while (!file.exists(p$go)) Sys.sleep(0.002)
    "released"
  }
  for (f in c("sleeper", "stamp", "trivial", "blocker")) {
    fn <- get(f)
    environment(fn) <- globalenv()
    assign(f, fn)
  }
  # Cancels what the benchmark left active in its queues; removes finished jobs.
  clean <- function(queues) {
    jobs <- list_jobs(status = c("pending", "running"))
    for (id in jobs$job_id[jobs$queue %in% queues]) cancel_job(id)
    invisible(suppressMessages(cleanup_old_jobs(0)))
  }
  environment()
}

# 1. Dead hosts: N victims (1 worker each, a queue each) and one bystander host
# that stays up, with this process as the replica; every process on `lease`.
# The kills are spread over one rescue period so that they fall at different
# phases of the rescue timer.
dead_hosts <- function(url, lease, n_dead, helpers) {
  suppressPackageStartupMessages(library(asyncjobs))
  h <- helpers()
  options(asyncjobs.lease_seconds = lease, asyncjobs.warn_payload_bytes = Inf)
  ok <- tryCatch({ start_workers(0, store = url); TRUE }, error = function(e) conditionMessage(e))
  if (!isTRUE(ok)) return(list(skip = ok))
  q <- sprintf("cluster-dead-%d", Sys.getpid())
  queues <- paste0(q, "-", seq_len(n_dead))
  victims <- lapply(queues, function(qq) h$start_host(url, 1, qq, lease))
  bystander <- h$start_host(url, 1, paste0(q, "-idle"), lease)
  on.exit({
    for (v in c(victims, list(bystander))) if (v$proc$is_alive()) v$proc$kill()
    stop_workers()
  })
  h$ready(c(victims, list(bystander)))
  ids <- vapply(queues, function(qq) create_job("doomed", list(seconds = 600), h$sleeper, queue = qq)$job_id, "")
  if (!h$wait_until(function() all(!is.na(vapply(ids, h$job_pid, 0L))), 60)) stop("the long jobs did not start")
  worker_pids <- vapply(ids, h$job_pid, 0L)
  Sys.sleep(1.5)
  period <- min(max(floor(lease / 3), 1), 5)
  t0 <- h$now()
  killed <- numeric(n_dead)
  for (i in seq_len(n_dead)) {
    Sys.sleep(max(0, t0 + (i - 1) * period / n_dead - h$now()))
    killed[[i]] <- h$now()
    victims[[i]]$proc$kill()
  }
  seen <- rep(NA_real_, n_dead)
  code <- rep(NA_character_, n_dead)
  at <- rep(NA_real_, n_dead)
  deadline <- h$now() + 3 * lease + 30
  while (anyNA(seen) && h$now() < deadline) {
    for (i in which(is.na(seen))) {
      st <- get_job_status(ids[[i]])
      if (identical(st$status, "failed")) {
        seen[[i]] <- h$now()
        code[[i]] <- st$error$code
        at[[i]] <- as.numeric(st$completed_at)
      }
    }
    Sys.sleep(0.05)
  }
  workers_dead <- all(vapply(worker_pids, h$proc_dead, TRUE))
  exits <- h$stop_hosts(list(bystander))
  h$clean(c(queues, paste0(q, "-idle")))
  list(detect = at - killed, observed = seen - killed, code = code, workers_dead = workers_dead, exits = exits)
}

# 2-4. Pickup, cancel and claims with this process as the replica.
cluster_engine <- function(url, n_pickup, n_cancel, n_claims, helpers) {
  suppressPackageStartupMessages(library(asyncjobs))
  h <- helpers()
  options(asyncjobs.warn_payload_bytes = Inf)
  ok <- tryCatch({ start_workers(0, store = url); TRUE }, error = function(e) conditionMessage(e))
  if (!isTRUE(ok)) return(list(skip = ok))
  q <- sprintf("cluster-%d", Sys.getpid())
  qp <- paste0(q, "-pickup")
  qk <- paste0(q, "-cancel")
  qc <- paste0(q, "-claims")
  qc8 <- paste0(q, "-claims8")
  hosts <- list()
  on.exit({
    for (x in hosts) if (x$proc$is_alive()) x$proc$kill()
    try(h$clean(c(qp, qk, qc, qc8)), silent = TRUE)
    stop_workers()
  })
  out <- list()
  t_start <- h$now()
  hosts <- c(lapply(1:2, function(i) h$start_host(url, 2, c(qp, qk, qc))),
             lapply(1:2, function(i) h$start_host(url, 2, qc)))
  h$ready(hosts)
  out$start_4 <- h$now() - t_start
  Sys.sleep(2)

  # Pickup: idle 2-3 s between jobs, so that the hosts' polls have backed
  # off to 1 s; the job's own clock at start.
  out$pickup <- vapply(seq_len(n_pickup), function(i) {
    Sys.sleep(2 + runif(1))
    t0 <- h$now()
    id <- create_job("pickup", i, h$stamp, queue = qp)$job_id
    if (!is.character(id)) return(NA_real_)
    s <- wait_for_job(id, 10000)
    if (is.numeric(s$result)) 1e3 * (s$result - t0) else NA_real_
  }, 0)

  # Cancel: a running job's worker, from cancel_job() here to the process gone.
  out$cancel <- vapply(seq_len(n_cancel), function(i) {
    id <- create_job("cancel", list(seconds = 120), h$sleeper, queue = qk)$job_id
    if (!h$wait_until(function() !is.na(h$job_pid(id)), 30)) return(NA_real_)
    pid <- h$job_pid(id)
    Sys.sleep(0.2 + runif(1))
    t0 <- h$now()
    r <- cancel_job(id)
    if (!identical(r$status, "cancelled")) return(NA_real_)
    while (!h$proc_dead(pid) && h$now() - t0 < 20) Sys.sleep(0.001)
    if (h$proc_dead(pid)) 1e3 * (h$now() - t0) else NA_real_
  }, 0)

  # Claims: every worker held by a blocker, the queue filled, then released.
  claims <- function(queue, n_workers) {
    go <- tempfile("cluster-go-")
    blockers <- vapply(seq_len(n_workers), function(i) create_job("blocker", list(go = go), h$blocker, queue = queue)$job_id, "")
    held <- h$wait_until(function() {
      j <- list_jobs(status = "running", operation = "blocker")
      sum(j$job_id %in% blockers) == n_workers
    }, 60, 0.1)
    if (!held) return(list(tput = NA_real_, note = "blockers did not all start"))
    ids <- vapply(seq_len(n_claims), function(i) {
      r <- create_job("claim", i, h$trivial, queue = queue)$job_id
      if (is.character(r)) r else NA_character_
    }, "")
    ids <- ids[!is.na(ids)]
    t_go <- h$now()
    file.create(go)
    on.exit(unlink(go))
    wait_for_job(ids[[length(ids)]], 120000)
    for (id in ids) wait_for_job(id, 60000)
    j <- list_jobs(operation = "claim")
    j <- j[j$job_id %in% ids, ]
    done <- j$status == "completed"
    list(tput = sum(done) / (max(as.numeric(j$completed_at)) - t_go),
         claim_rate = sum(done) / (max(as.numeric(j$started_at)) - t_go),
         completed = sum(done), submitted = length(ids))
  }
  out$claims42 <- claims(qc, 8)
  out$exits <- h$stop_hosts(hosts)
  hosts <- list()
  t_start <- h$now()
  hosts <- lapply(1:8, function(i) h$start_host(url, 1, qc8))
  h$ready(hosts)
  out$start_8 <- h$now() - t_start
  Sys.sleep(1)
  out$claims81 <- claims(qc8, 8)
  out$exits <- c(out$exits, h$stop_hosts(hosts))
  hosts <- list()
  h$clean(c(qp, qk, qc, qc8))
  out
}

# 5. A TCP proxy that counts the client's commands: MySQL packets that open a
# command (sequence id 0) by command byte; PostgreSQL frontend messages by type.
PROXY <- r"(
import asyncio, sys, threading
counts = {"connections": 0}
def bump(k):
    counts[k] = counts.get(k, 0) + 1
MYSQL = {0x03: "query", 0x16: "prepare", 0x17: "execute", 0x19: "close", 0x0e: "ping", 0x01: "quit", 0x1a: "reset", 0x1f: "reset"}
class MySQL:
    def __init__(self):
        self.hdr, self.skip, self.cmd = b"", 0, False
    def feed(self, d):
        i = 0
        while i < len(d):
            if self.skip:
                if self.cmd:
                    bump(MYSQL.get(d[i], "other"))
                    self.cmd = False
                k = min(self.skip, len(d) - i)
                self.skip -= k
                i += k
                continue
            take = d[i:i + 4 - len(self.hdr)]
            self.hdr += take
            i += len(take)
            if len(self.hdr) == 4:
                self.skip = int.from_bytes(self.hdr[:3], "little")
                self.cmd = self.hdr[3] == 0 and self.skip > 0
                self.hdr = b""
PG = {"Q": "query", "P": "prepare", "E": "execute", "S": "sync", "B": "bind", "D": "describe", "C": "close", "X": "quit"}
class Postgres:
    def __init__(self):
        self.hdr, self.skip, self.started = b"", 0, False
    def feed(self, d):
        i = 0
        while i < len(d):
            if self.skip:
                k = min(self.skip, len(d) - i)
                self.skip -= k
                i += k
                continue
            need = 5 if self.started else 8
            take = d[i:i + need - len(self.hdr)]
            self.hdr += take
            i += len(take)
            if len(self.hdr) == need:
                if self.started:
                    bump(PG.get(chr(self.hdr[0]), "other"))
                    self.skip = int.from_bytes(self.hdr[1:5], "big") - 4
                else:
                    self.skip = int.from_bytes(self.hdr[:4], "big") - 8
                    self.started = int.from_bytes(self.hdr[4:8], "big") == 196608
                self.hdr = b""
async def pipe(reader, writer, parser=None):
    try:
        while data := await reader.read(65536):
            if parser:
                parser.feed(data)
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()
async def main(host, port, proto):
    async def handle(cr, cw):
        try:
            sr, sw = await asyncio.open_connection(host, port)
        except OSError:
            cw.close()
            return
        bump("connections")
        await asyncio.gather(pipe(cr, sw, MySQL() if proto == "mysql" else Postgres()), pipe(sr, cw))
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    print("listening", server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()
def report():
    for _ in sys.stdin:
        print(" ".join(f"{k}={v}" for k, v in dict(counts).items()), flush=True)
threading.Thread(target=report, daemon=True).start()
asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3]))
)"

idle_queries <- function(urls, seconds, helpers) {
  h <- helpers()
  if (!nzchar(Sys.which("python3"))) return(list(skip = "python3 is needed for the counting proxy"))
  script <- tempfile("cluster-proxy-", fileext = ".py")
  writeLines(PROXY, script)
  parts <- function(url) regmatches(url, regexec("^([a-z]+://[^@/]*@?)([^:/]+):([0-9]+)(/[^?]*)(.*)$", url))[[1L]]
  counts <- function(p) {
    p$write_input("\n")
    line <- character()
    deadline <- Sys.time() + 5
    while (!length(line) && Sys.time() < deadline) {
      p$poll_io(500)
      line <- tail(p$read_output_lines(), 1)
    }
    if (!length(line) || !nzchar(line)) return(c(connections = 0))
    kv <- strsplit(strsplit(line, " ")[[1]], "=")
    setNames(as.numeric(vapply(kv, `[`, "", 2)), vapply(kv, `[`, "", 1))
  }
  pg_xacts <- function(url) {
    if (!nzchar(Sys.which("psql"))) return(NA_real_)
    m <- parts(url)
    sql <- sprintf("SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = '%s'", sub("^/", "", m[[5]]))
    out <- tryCatch(suppressWarnings(system2("psql", c(shQuote(url), "-Atc", shQuote(sql)), stdout = TRUE, stderr = FALSE)),
                    error = function(e) NA_character_)
    suppressWarnings(as.numeric(out[1]))
  }
  res <- list()
  run <- list()
  on.exit(for (r in run) {
    if (!is.null(r$host) && r$host$proc$is_alive()) r$host$proc$kill()
    if (r$proxy$is_alive()) r$proxy$kill()
  })
  for (engine in names(urls)) {
    m <- parts(urls[[engine]])
    if (!length(m)) { res[[engine]] <- list(skip = "cannot parse the URL"); next }
    proxy <- processx::process$new("python3", c(script, m[[3]], m[[4]], if (grepl("^mysql", m[[2]])) "mysql" else "postgres"),
                                   stdin = "|", stdout = "|", stderr = "2>&1", cleanup = TRUE)
    proxy$poll_io(10000)
    first <- proxy$read_output_lines()
    port <- sub("^listening ", "", grep("^listening", first, value = TRUE))
    if (!length(port)) { res[[engine]] <- list(skip = paste("proxy:", paste(first, collapse = " "))); proxy$kill(); next }
    through <- paste0(m[[2]], "127.0.0.1:", port, m[[5]], m[[6]])
    run[[engine]] <- list(proxy = proxy, host = h$start_host(through, 2, sprintf("cluster-idle-%d", Sys.getpid())))
  }
  for (engine in names(run)) {
    ok <- tryCatch({ h$ready(list(run[[engine]]$host)); TRUE }, error = function(e) conditionMessage(e))
    if (!isTRUE(ok)) res[[engine]] <- list(skip = ok)
  }
  live <- setdiff(names(run), names(res))
  Sys.sleep(5)
  c0 <- lapply(run[live], function(r) counts(r$proxy))
  x0 <- if ("postgres" %in% live) pg_xacts(urls[["postgres"]])
  t0 <- h$now()
  Sys.sleep(seconds)
  c1 <- lapply(run[live], function(r) counts(r$proxy))
  x1 <- if ("postgres" %in% live) pg_xacts(urls[["postgres"]])
  dt <- h$now() - t0
  for (engine in live) {
    d <- c1[[engine]][names(c1[[engine]])] - c0[[engine]][names(c1[[engine]])]
    d[is.na(d)] <- c1[[engine]][is.na(d)]
    res[[engine]] <- list(rate = d / dt, seconds = dt)
  }
  # One transaction in the second read is psql's own first one.
  if ("postgres" %in% live) res$postgres$xacts <- (x1 - x0 - 1) / dt
  for (engine in names(run)) res[[engine]]$exits <- h$stop_hosts(list(run[[engine]]$host))
  res
}

run_r <- function(f, args) {
  tryCatch(callr::r(f, args, libpath = .libPaths()), error = function(e) list(skip = conditionMessage(e)))
}
run_bg <- function(f, args) callr::r_bg(f, args, libpath = .libPaths(), supervise = TRUE)
bg_result <- function(p, timeout) {
  p$wait(timeout)
  if (p$is_alive()) { p$kill(); return(list(skip = "timed out")) }
  tryCatch(p$get_result(), error = function(e) list(skip = conditionMessage(e)))
}
stamp <- function(what) message(sprintf("%s (+%.0f s): %s", format(Sys.time(), "%T"),
                                        as.numeric(Sys.time() - started, units = "secs"), what))

# 1. Dead hosts: the engines at once (the figures are timers), lease 15 s then 5 s.
dead <- list()
for (lease in c(15, 5)) {
  stamp(sprintf("dead hosts, lease %d s, every engine at once", lease))
  procs <- lapply(STORES, function(url) run_bg(dead_hosts, list(url, lease, N_DEAD, helpers)))
  dead[[as.character(lease)]] <- lapply(procs, bg_result, timeout = (5 * lease + 120) * 1000)
}
# 5. Idle hosts, both servers at once (nothing else of ours on them meanwhile).
stamp(sprintf("idle hosts, %g s", IDLE_SECONDS))
idle <- idle_queries(STORES[c("postgres", "mariadb")], IDLE_SECONDS, helpers)
# 2-4. Pickup, cancel, claims: one engine at a time.
engines <- list()
for (name in names(STORES)) {
  stamp(sprintf("%s: pickup, cancel, claims", name))
  engines[[name]] <- run_r(cluster_engine, list(STORES[[name]], N_PICKUP, N_CANCEL, N_CLAIMS, helpers))
}
unlink(paste0(sqlite_file, c("", "-wal", "-shm")))
stamp("done")
total <- as.numeric(Sys.time() - started, units = "secs")

# Tables.
skip_of <- function(x) if (is.null(x)) "not run" else x$skip
pq <- function(x, digits = 0) {
  x <- x[!is.na(x)]
  if (!length(x)) return("n/a")
  f <- paste0("%.", digits, "f")
  sprintf(paste0("p50 ", f, " / p99 ", f), quantile(x, .5), quantile(x, .99))
}
samples <- function(x) {
  if (!length(x) || all(is.na(x))) return("n/a")
  sprintf("%s (median %.1f)", paste(sprintf("%.1f", sort(x)), collapse = ", "), median(x, na.rm = TRUE))
}
cell <- function(r, f) if (is.null(r) || !is.null(r$skip)) paste("skipped:", skip_of(r)) else f(r)
dead_cell <- function(lease) function(name) cell(dead[[lease]][[name]], function(r) {
  bad <- sum(is.na(r$detect) | r$code != "HOST_LOST", na.rm = TRUE) + sum(is.na(r$code))
  paste0(samples(r$detect), if (bad) sprintf("; %d not HOST_LOST in time", bad))
})
eng_cell <- function(f) function(name) cell(engines[[name]], f)
idle_cell <- function(f) function(name) if (name == "sqlite") "n/a (a file, no server)" else cell(idle[[name]], f)
rate <- function(r, keys) sum(r$rate[intersect(keys, names(r$rate))])
rows <- list(
  list(sprintf("kill -9 of a host to HOST_LOST, lease 15 s (s; %d hosts, killed %.1f s apart)", N_DEAD, 5 / N_DEAD), dead_cell("15")),
  list(sprintf("kill -9 of a host to HOST_LOST, lease 5 s (s; killed %.2f s apart)", 1 / N_DEAD), dead_cell("5")),
  list("the killed hosts' workers gone (lease 15 / 5)", function(name) {
    f <- function(l) { r <- dead[[l]][[name]]; if (is.null(r) || !is.null(r$skip)) "n/a" else if (isTRUE(r$workers_dead)) "yes" else "NO" }
    paste(f("15"), "/", f("5"))
  }),
  list(sprintf("pickup, replica submit, 2 idle hosts x 2 workers (ms; %d jobs, 2-3 s apart)", N_PICKUP), eng_cell(function(r) pq(r$pickup))),
  list(sprintf("cancel_job() to the worker process gone (ms; %d jobs)", N_CANCEL), eng_cell(function(r) pq(r$cancel))),
  list(sprintf("jobs/s, %d trivial jobs, 4 hosts x 2 workers (go to last completed)", N_CLAIMS),
       eng_cell(function(r) sprintf("%.0f (%d/%d completed)", r$claims42$tput, r$claims42$completed, r$claims42$submitted))),
  list(sprintf("jobs/s, %d trivial jobs, 8 hosts x 1 worker (go to last completed)", N_CLAIMS),
       eng_cell(function(r) sprintf("%.0f (%d/%d completed)", r$claims81$tput, r$claims81$completed, r$claims81$submitted))),
  list("claims/s, go to the last job started: 4 x 2 / 8 x 1",
       eng_cell(function(r) sprintf("%.0f / %.0f", r$claims42$claim_rate, r$claims81$claim_rate))),
  list("host start to serving, 4 hosts x 2 / 8 hosts x 1, at once (s)",
       eng_cell(function(r) sprintf("%.1f / %.1f", r$start_4, r$start_8))),
  list(sprintf("idle host (2 workers): statements/s sent (proxy count, %.0f s)", IDLE_SECONDS),
       idle_cell(function(r) sprintf("%.2f", rate(r, c("query", "execute"))))),
  list("idle host: all client commands/s (incl. prepare, sync, ping)",
       idle_cell(function(r) sprintf("%.2f", sum(r$rate[setdiff(names(r$rate), c("connections", "bind", "describe"))])))),
  list("idle host: transactions/s, pg_stat_database for the database",
       idle_cell(function(r) if (is.null(r$xacts) || is.na(r$xacts)) "n/a" else sprintf("%.2f", r$xacts))),
  list("hosts ended by SIGTERM with status 0 (all phases)", function(name) {
    ex <- c(engines[[name]]$exits, dead[["15"]][[name]]$exits, dead[["5"]][[name]]$exits, idle[[name]]$exits)
    if (!length(ex)) "n/a" else sprintf("%d of %d", sum(ex %in% 0L), length(ex))
  }))

cat(sprintf("Machine: %s, %d cores, %s, %s\n\n", R.version$arch, parallel::detectCores(), R.version.string, format(Sys.Date())))
cat(sprintf("Worker-only hosts are `Rscript -e 'asyncjobs::run_workers(...)'` processes; the replica is a callr process with start_workers(n = 0). Run time %.0f s.\n\n", total))
cat("| metric | ", paste(names(STORES), collapse = " | "), " |\n|---|", strrep("---|", length(STORES)), "\n", sep = "")
for (row in rows) cat("| ", row[[1]], " | ", paste(vapply(names(STORES), row[[2]], ""), collapse = " | "), " |\n", sep = "")

# Against PostgreSQL in the same run.
ok <- function(name) !is.null(engines[[name]]) && is.null(engines[[name]]$skip)
if (ok("postgres")) {
  pg <- engines$postgres
  p50 <- function(x) median(x, na.rm = TRUE)
  ratio <- function(x, words) if (is.na(x)) "n/a" else if (x >= 1) sprintf("%.1fx %s", x, words[[1]]) else sprintf("%.1fx %s", 1 / x, words[[2]])
  others <- Filter(ok, setdiff(names(STORES), "postgres"))
  if (length(others)) {
    ratios <- list(
      list("pickup from a replica, p50", function(r) p50(r$pickup) / p50(pg$pickup), c("slower", "faster")),
      list("cancel to worker gone, p50", function(r) p50(r$cancel) / p50(pg$cancel), c("slower", "faster")),
      list("jobs/s, 4 x 2", function(r) pg$claims42$tput / r$claims42$tput, c("lower", "higher")),
      list("jobs/s, 8 x 1", function(r) pg$claims81$tput / r$claims81$tput, c("lower", "higher")))
    cat("\n| against postgres (same run) | ", paste(others, collapse = " | "), " |\n|---|", strrep("---|", length(others)), "\n", sep = "")
    for (x in ratios) cat("| ", x[[1]], " | ", paste(vapply(engines[others], function(r) ratio(x[[2]](r), x[[3]]), ""), collapse = " | "), " |\n", sep = "")
  }
}

# The targets of the cluster issue.
met <- function(x, limit) if (is.na(x)) "n/a" else if (x < limit) "yes" else "no"
tgt <- list()
for (name in c("sqlite", "postgres", "mariadb")) {
  d <- dead[["15"]][[name]]
  if (!is.null(d) && is.null(d$skip)) {
    worst <- max(d$detect)
    tgt[[length(tgt) + 1]] <- c(sprintf("dead host detected under 40 s (lease 15 s), %s", name), sprintf("worst %.1f s", worst), met(worst, 40))
  }
}
if (ok("postgres")) tgt[[length(tgt) + 1]] <- c("pickup p50 under 10 ms, postgres", sprintf("%.1f ms", median(engines$postgres$pickup, na.rm = TRUE)),
                                               met(median(engines$postgres$pickup, na.rm = TRUE), 10))
if (ok("mariadb")) tgt[[length(tgt) + 1]] <- c("pickup p50 under 250 ms, mariadb", sprintf("%.0f ms", median(engines$mariadb$pickup, na.rm = TRUE)),
                                              met(median(engines$mariadb$pickup, na.rm = TRUE), 250))
if (length(tgt)) {
  cat("\n| target | measured | met? |\n|---|---|---|\n")
  for (x in tgt) cat("| ", paste(x, collapse = " | "), " |\n", sep = "")
}
for (name in names(idle)) if (!is.null(idle[[name]]$rate)) {
  r <- idle[[name]]$rate
  cat(sprintf("\nIdle %s host, client commands/s by kind: %s\n", name,
              paste(sprintf("%s %.2f", names(r), r), collapse = ", ")))
}
