# Helpers for test-cluster.R ("Workers on other hosts"): worker-only hosts
# (`Rscript -e 'asyncjobs::run_workers(...)'`), optionally inside a network
# namespace reached through a TCP proxy, and restarts of the database servers.
# Everything started here is stopped (and proven dead) when the test ends.

if (!exists("%||%", mode = "function")) `%||%` <- function(x, y) if (is.null(x)) y else x

is_root <- function() identical(unname(Sys.info()[["effective_user"]]), "root") ||
  identical(system2("id", "-u", stdout = TRUE, stderr = FALSE), "0")

# Runs a command; its output (stdout and stderr), with attr "status".
run_cmd <- function(cmd, args = character()) {
  out <- suppressWarnings(system2(cmd, args, stdout = TRUE, stderr = TRUE))
  status <- attr(out, "status") %||% 0L
  structure(paste(out, collapse = "\n"), status = status)
}

run_ok <- function(cmd, args = character()) {
  out <- run_cmd(cmd, args)
  if (attr(out, "status") != 0L) {
    stop(sprintf("`%s %s` failed (status %d): %s", cmd, paste(args, collapse = " "), attr(out, "status"), out))
  }
  invisible(out)
}

# scheme://user@ , host, port, /path of a store URL.
url_parts <- function(url) {
  m <- regmatches(url, regexec("^([a-z]+://[^@/]*@?)([^:/]+):([0-9]+)(/.*)$", url))[[1L]]
  if (!length(m)) stop("cannot read host and port in the store URL")
  list(prefix = m[[2L]], host = m[[3L]], port = as.integer(m[[4L]]), path = m[[5L]])
}

port_open <- function(port, host = "127.0.0.1") {
  con <- tryCatch(suppressWarnings(socketConnection(host, port, open = "r+", blocking = TRUE, timeout = 2)),
                  error = function(e) NULL)
  if (is.null(con)) return(FALSE)
  close(con)
  TRUE
}

# The record of a job as the store holds it (attempts, max_attempts, ...):
# the public status lists do not show attempts.
job_record_raw <- function(id) .Call(asyncjobs:::wrap__aj_job, id)
job_attempts <- function(id) job_record_raw(id)$attempts

# How many times the job carrying `token` started executing: each execution
# leaves a file "<token>-<pid>-<random>" in `dir`.
executions <- function(dir, token) length(list.files(dir, paste0("^", token, "-")))

# An executor that leaves its execution mark, reports its pid, sleeps, leaves
# "done-<token>" and returns p$value (p$token, p$dir, p$seconds).
marked_sleeper <- function(p) {
  file.create(file.path(p$dir, paste0(p$token, "-", Sys.getpid(), "-", sprintf("%.0f", stats::runif(1) * 1e9))))
  asyncjobs::report_progress(step = as.character(Sys.getpid()))
  Sys.sleep(p$seconds)
  file.create(file.path(p$dir, paste0("done-", p$token)))
  p$value
}

# A worker-only host: `Rscript -e 'asyncjobs::run_workers(url, ...)'` with
# stderr in a log file, inside network namespace `netns` when given (through
# `ip netns exec`, which execs: the process is the R host itself). Returns
# once its "serving" line is logged. Killed (kill -9) when the test ends if
# still alive; every pid it and its workers had must be dead by then.
start_worker_host <- function(url, n = 1L, queues = "default", grace_ms = 60000, lease = 3,
                              netns = NULL, timeout_ms = 5000, handlers = NULL, env = parent.frame()) {
  log <- tempfile("worker-host-", fileext = ".log")
  expr <- sprintf(paste0(".libPaths(%s); options(asyncjobs.lease_seconds = %s, asyncjobs.store_timeout_ms = %s, ",
                         "asyncjobs.warn_payload_bytes = Inf); ",
                         "asyncjobs::run_workers(store = %s, n = %dL, queues = %s, grace_ms = %s, handlers = %s)"),
                  paste(deparse(.libPaths()), collapse = ""), lease, timeout_ms, deparse(url), as.integer(n),
                  paste(deparse(queues), collapse = ""), grace_ms,
                  paste(deparse(if (!is.null(handlers)) normalizePath(handlers)), collapse = ""))
  rscript <- file.path(R.home("bin"), "Rscript")
  cmd <- if (is.null(netns)) c(rscript, "-e", expr) else c("ip", "netns", "exec", netns, rscript, "-e", expr)
  proc <- processx::process$new(cmd[[1L]], cmd[-1L], stdout = log, stderr = "2>&1",
                                env = c("current", R_TESTS = ""), cleanup = TRUE)
  host <- new.env()
  host$proc <- proc
  host$pid <- proc$get_pid()
  host$log <- log
  host$lines <- function() if (file.exists(log)) readLines(log, warn = FALSE) else character()
  host$pids <- host$pid
  # Worker pids: from the "serving" line, and whatever children it has now.
  host$workers <- function() {
    kids <- if (proc$is_alive()) live_children(host$pid) else integer()
    host$pids <- unique(c(host$pids, kids))
    kids
  }
  ok <- wait_until(function() !proc$is_alive() || any(grepl("asyncjobs: serving queues", host$lines())),
                   timeout = 90, interval = 0.05)
  withr::defer({
    host$workers()
    if (proc$is_alive()) {
      tools::pskill(host$pid, tools::SIGCONT)
      proc$kill()
    }
    expect_all_dead(host$pids)
  }, envir = env)
  if (!ok || !proc$is_alive()) {
    stop("worker host did not start:\n", paste(host$lines(), collapse = "\n"))
  }
  serving <- grep("asyncjobs: serving queues", host$lines(), value = TRUE)[[1L]]
  host$pids <- unique(c(host$pids, as.integer(strsplit(sub(".*\\(pids ([0-9 ]+)\\).*", "\\1", serving), " ")[[1L]])))
  host$workers()
  host
}

# A TCP proxy (tcp-proxy.py) listening on `listen_host` in front of the
# server `url` names (on 127.0.0.1). $url goes through it.
cluster_proxy <- function(url, listen_host, env = parent.frame()) {
  skip_if(!nzchar(Sys.which("python3")), "python3 is needed for the network namespace tests")
  u <- url_parts(url)
  port <- httpuv::randomPort()
  script <- normalizePath(test_path("tcp-proxy.py"))
  proc <- processx::process$new("python3", c(script, port, "127.0.0.1", u$port, listen_host),
                                stdout = "|", stderr = "2>&1", cleanup = TRUE)
  .allowed_children$pids <- c(.allowed_children$pids, proc$get_pid())
  withr::defer({
    if (proc$is_alive()) proc$kill()
    expect_all_dead(proc$get_pid())
  }, envir = env)
  out <- character()
  wait_until(function() {
    if (proc$is_alive()) out <<- c(out, proc$read_output_lines())
    "listening" %in% out || !proc$is_alive()
  }, timeout = 20, interval = 0.05)
  if (!"listening" %in% out) stop("the TCP proxy did not start: ", paste(out, collapse = "\n"))
  list(proc = proc, url = paste0(u$prefix, listen_host, ":", port, u$path))
}

# A network namespace joined to this one by a veth pair in a /30 of
# 10.251.0.0/16 that no interface here uses: 10.251.x.1 on this side,
# 10.251.x.2 inside. $cut() sets the inner end down (packets are dropped, no
# reset reaches either side), $restore() sets it up. Removed when the test
# ends. Skips, saying why, without root or a working `ip netns`.
local_netns <- function(env = parent.frame()) {
  skip_if(!is_root(), "network namespace tests need root (ip netns add)")
  skip_if(!nzchar(Sys.which("ip")), "network namespace tests need iproute2 (`ip`)")
  probe <- run_cmd("ip", c("netns", "list"))
  skip_if(attr(probe, "status") != 0L, paste("`ip netns` is unavailable:", probe))
  used <- run_cmd("ip", c("-o", "-4", "addr", "show"))
  routes <- run_cmd("ip", c("-4", "route", "show", "table", "all"))
  free <- setdiff(0:255, as.integer(unlist(regmatches(paste(used, routes), gregexpr("(?<=10\\.251\\.)[0-9]+", paste(used, routes), perl = TRUE)))))
  skip_if(!length(free), "no free /30 in 10.251.0.0/16 for the test's veth pair")
  x <- if (length(free) == 1L) free else sample(free, 1L)
  tag <- sprintf("%d%03d", Sys.getpid() %% 1000L, x)
  net <- list(name = paste0("ajt", tag), host_if = paste0("ajh", tag), ns_if = paste0("ajn", tag),
              host_addr = sprintf("10.251.%d.1", x), ns_addr = sprintf("10.251.%d.2", x))
  # Registered first, so that a half-made setup is removed too.
  withr::defer({
    run_cmd("ip", c("link", "del", net$host_if))
    run_cmd("ip", c("netns", "del", net$name))
  }, envir = env)
  made <- run_cmd("ip", c("netns", "add", net$name))
  skip_if(attr(made, "status") != 0L, paste("`ip netns add` failed:", made))
  inside <- function(...) c("netns", "exec", net$name, "ip", ...)
  setup <- tryCatch({
    run_ok("ip", c("link", "add", net$host_if, "type", "veth", "peer", "name", net$ns_if))
    run_ok("ip", c("link", "set", net$ns_if, "netns", net$name))
    run_ok("ip", c("addr", "add", paste0(net$host_addr, "/30"), "dev", net$host_if))
    run_ok("ip", c("link", "set", net$host_if, "up"))
    run_ok("ip", inside("addr", "add", paste0(net$ns_addr, "/30"), "dev", net$ns_if))
    run_ok("ip", inside("link", "set", "lo", "up"))
    run_ok("ip", inside("link", "set", net$ns_if, "up"))
    NULL
  }, error = conditionMessage)
  skip_if(!is.null(setup), paste("cannot set up the veth pair for the network namespace tests:", setup))
  net$cut <- function() run_ok("ip", inside("link", "set", net$ns_if, "down"))
  net$restore <- function() run_ok("ip", inside("link", "set", net$ns_if, "up"))
  net
}

# How to restart the database server `url` names, on this machine:
# list(ok, why, restart(), ensure_up()). restart() returns once the server
# accepts connections again; ensure_up() starts it if it is down (for
# withr::defer, so that a failed test never leaves it stopped).
db_restarter <- function(engine, url) {
  no <- function(why) list(ok = FALSE, why = why)
  u <- url_parts(url)
  if (!u$host %in% c("127.0.0.1", "localhost")) return(no(sprintf("the %s server is not on this machine", engine)))
  if (!is_root()) return(no(sprintf("restarting the %s server needs root", engine)))
  wait_port <- function(up, timeout = 90) wait_until(function() port_open(u$port) == up, timeout = timeout, interval = 0.1)
  if (engine == "postgres") {
    if (!nzchar(Sys.which("pg_ctlcluster")) || !nzchar(Sys.which("pg_lsclusters"))) {
      return(no("no pg_ctlcluster (a Debian PostgreSQL) to restart the server with"))
    }
    rows <- strsplit(trimws(strsplit(run_cmd("pg_lsclusters", "-h"), "\n")[[1L]]), "[[:space:]]+")
    rows <- Filter(function(r) length(r) >= 4L && identical(r[[3L]], as.character(u$port)), rows)
    if (length(rows) != 1L) return(no(sprintf("no single cluster in pg_lsclusters on port %d", u$port)))
    ver <- rows[[1L]][[1L]]
    name <- rows[[1L]][[2L]]
    start <- function() run_cmd("pg_ctlcluster", c(ver, name, "start"))
    return(list(ok = TRUE, why = sprintf("pg_ctlcluster %s %s restart", ver, name),
      restart = function() {
        out <- run_cmd("pg_ctlcluster", c(ver, name, "restart", "-m", "fast"))
        if (!wait_port(TRUE)) {
          start()
          wait_port(TRUE)
        }
        if (attr(out, "status") != 0L) stop("pg_ctlcluster restart failed: ", out)
      },
      ensure_up = function() if (!port_open(u$port)) {
        start()
        wait_port(TRUE)
      }))
  }
  # MySQL / MariaDB: a systemd unit, or one server process started without
  # systemd (as tools/services.sh does), stopped with SIGTERM and started
  # again with the same command line, user and parent (init).
  if (nzchar(Sys.which("systemctl")) && dir.exists("/run/systemd/system")) {
    for (unit in c("mariadb", "mysql")) {
      if (attr(run_cmd("systemctl", c("is-active", "--quiet", unit)), "status") == 0L) {
        return(list(ok = TRUE, why = paste("systemctl restart", unit),
          restart = function() {
            run_ok("systemctl", c("restart", unit))
            wait_port(TRUE)
          },
          ensure_up = function() if (!port_open(u$port)) {
            run_cmd("systemctl", c("start", unit))
            wait_port(TRUE)
          }))
      }
    }
  }
  pids <- suppressWarnings(as.integer(strsplit(run_cmd("pidof", c("mariadbd", "mysqld")), " ")[[1L]]))
  pids <- pids[!is.na(pids)]
  if (length(pids) != 1L) return(no(sprintf("%d MariaDB/MySQL server processes here, not one", length(pids))))
  pid <- pids[[1L]]
  ppid <- as.integer(proc_stat(pid)[[2L]])
  if (!identical(ppid, 1L)) {
    return(no(sprintf("the MariaDB server (pid %d) runs under pid %d (e.g. mysqld_safe), not init: unknown restart method", pid, ppid)))
  }
  argv <- readBin(sprintf("/proc/%d/cmdline", pid), "raw", 65536)
  argv <- strsplit(rawToChar(replace(argv, argv == as.raw(0), as.raw(1))), "\x01", fixed = TRUE)[[1L]]
  uid <- as.integer(strsplit(grep("^Uid:", readLines(sprintf("/proc/%d/status", pid)), value = TRUE), "[[:space:]]+")[[1L]][[2L]])
  user <- run_cmd("id", c("-nu", uid))
  if (!nzchar(Sys.which("start-stop-daemon")) || attr(user, "status") != 0L) {
    return(no("start-stop-daemon is needed to start the MariaDB server again"))
  }
  logf <- file.path(dirname(tempdir()), "asyncjobs-test-mariadbd.log")
  start <- function() {
    run_cmd("start-stop-daemon", c("--start", "--background", "--chuid", user, "--chdir", "/",
                                   "--output", logf, "--exec", argv[[1L]], "--", argv[-1L]))
    wait_port(TRUE)
  }
  list(ok = TRUE, why = sprintf("SIGTERM to %s (pid %d), then start it again as %s", argv[[1L]], pid, user),
    restart = function() {
      tools::pskill(pid, tools::SIGTERM)
      down <- wait_until(function() proc_dead(pid), timeout = 60, interval = 0.05)
      if (!down) stop("the MariaDB server did not stop within 60 s")
      if (!start()) stop("the MariaDB server did not start again; see ", logf)
    },
    ensure_up = function() if (!port_open(u$port)) start())
}
