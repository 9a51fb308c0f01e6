# The dashboard: one HTML page served by GET /jobs/dashboard, rendered by a
# real browser (Debian's headless Chromium) against the demo API with jobs
# running, pending and failed.

chromium <- function() {
  found <- Sys.which(c("chromium", "chromium-browser", "google-chrome"))
  found <- found[nzchar(found)]
  if (length(found)) found[[1L]] else ""
}

skip_without_chromium <- function() {
  if (!nzchar(chromium())) skip("no headless Chromium: install Debian's chromium package to test the dashboard")
}

# Loads `url` in headless Chromium and returns the DOM after the page's
# script ran for `budget_ms` of virtual time (or a screenshot to `png`).
browse <- function(url, budget_ms = 6000, png = NULL) {
  profile <- withr::local_tempdir("chromium-")
  args <- c("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage", "--hide-scrollbars",
            paste0("--user-data-dir=", profile), paste0("--virtual-time-budget=", budget_ms),
            if (is.null(png)) "--dump-dom" else c(paste0("--screenshot=", png), "--window-size=1280,1000"), url)
  r <- processx::run(chromium(), args, timeout = 120, error_on_status = FALSE, cleanup_tree = TRUE)
  expect_identical(r$status, 0L, info = r$stderr)
  r$stdout
}

# The text of the element with this id in a dumped DOM (tags stripped).
section_text <- function(dom, id) {
  start <- regexpr(sprintf('<section id="%s"', id), dom, fixed = TRUE)
  if (start < 0) return("")
  rest <- substring(dom, start)
  end <- regexpr("</section>", rest, fixed = TRUE)
  substring(rest, 1L, end)
}

test_that("the dashboard route serves one self-contained page", {
  skip_on_cran()
  api <- local_api(workers = 1L)
  h <- curl::new_handle(timeout = 30, forbid_reuse = TRUE)
  r <- curl::curl_fetch_memory(paste0(api$url, "/jobs/dashboard"), handle = h)
  expect_identical(r$status_code, 200L)
  headers <- curl::parse_headers_list(r$headers)
  expect_match(headers[["content-type"]], "^text/html")
  expect_match(headers[["content-security-policy"]], "default-src 'none'", fixed = TRUE)
  expect_identical(headers[["x-frame-options"]], "DENY")
  html <- rawToChar(r$content)
  expect_match(html, '{"prefix":"/jobs","allowCancel":true}', fixed = TRUE)
  # No external asset: no URL other than this API's in src or href.
  expect_false(grepl("(src|href)=\"(https?:)?//", html))
  expect_false(grepl("@import|url\\(", html))
})

test_that("the dashboard is off unless asked for, needs the operator routes, and cancel is opt-in", {
  skip_if_not_installed("plumber")
  expect_error(pr_job_routes(plumber::pr(), "/jobs", dashboard = TRUE), "admin = TRUE", class = "asyncjobs_error_argument")
  expect_error(pr_job_routes(plumber::pr(), "/jobs", admin = TRUE, allow_cancel = TRUE), "dashboard = TRUE",
               class = "asyncjobs_error_argument")
  expect_error(job_routes("/jobs", admin = TRUE, dashboard = NA), "`dashboard`", class = "asyncjobs_error_argument")
  expect_match(asyncjobs:::dashboard_html("/api/jobs/", FALSE), '{"prefix":"/api/jobs","allowCancel":false}', fixed = TRUE)
  # A prefix cannot end the config's <script> element.
  expect_false(grepl("</script><b>", asyncjobs:::dashboard_html("/x</script><b>", FALSE), fixed = TRUE))

  skip_on_cran()
  api <- local_api(workers = 1L, extra = quote(demo_api(admin = TRUE, dashboard = FALSE)))
  r <- http(api, "GET", "/jobs/dashboard")
  expect_identical(r$status, 404L)
  expect_identical(r$body$error, "NOT_FOUND")
})

test_that("the dashboard shows the pool, running jobs with progress, pending jobs and failures, in Chromium", {
  skip_on_cran()
  skip_without_chromium()
  # A second page on the same job routes, without cancel buttons.
  extra <- quote(plumber::pr_mount(api, "/readonly", job_routes("/jobs", admin = TRUE, dashboard = TRUE)))
  api <- local_api(workers = 2L, max_queued = 10L, extra = extra)
  failing <- http(api, "POST", "/analysis/refresh?seconds=0.2&fail=true&source=GO")$body$job_id
  poll_until(api, failing, function(b) identical(b$status, "failed"))
  running <- vapply(c("HPO", "OMIM"), function(s) {
    http(api, "POST", sprintf("/analysis/refresh?seconds=120&source=%s", s))$body$job_id
  }, "")
  pending <- http(api, "POST", "/analysis/refresh?seconds=120&source=Orphanet")$body$job_id
  for (id in running) {
    poll_until(api, id, function(b) identical(b$status, "running") && identical(b$progress$current, 1L))
  }
  expect_identical(http(api, "GET", paste0("/jobs/", pending))$body$status, "pending")

  dom <- browse(paste0(api$url, "/jobs/dashboard"))
  expect_match(dom, "updated ", fixed = TRUE)
  run <- section_text(dom, "running")
  for (id in running) expect_match(run, id, fixed = TRUE)
  # 1 of 10 steps: a progress bar at 10%, with the step's text.
  expect_identical(lengths(regmatches(run, gregexpr('role="progressbar"[^>]*aria-valuenow="10"', run))), 2L)
  expect_match(run, "10% (1/10)", fixed = TRUE)
  expect_match(run, "Downloading OMIM part 1", fixed = TRUE)
  expect_identical(lengths(regmatches(run, gregexpr('class="cancel"', run))), 2L)
  pend <- section_text(dom, "pending")
  expect_match(pend, pending, fixed = TRUE)
  expect_false(grepl(running[[1L]], pend, fixed = TRUE))
  fail <- section_text(dom, "failures")
  expect_match(fail, failing, fixed = TRUE)
  expect_match(fail, "EXECUTION_ERROR", fixed = TRUE)
  expect_match(fail, "GO answered 503", fixed = TRUE)
  expect_match(fail, "part 6 of 10", fixed = TRUE)   # the output's tail
  pool <- section_text(dom, "pool")
  expect_identical(lengths(regmatches(pool, gregexpr('class="badge busy"', pool))), 2L)
  expect_match(dom, '<div class="n" id="n-running">2</div>', fixed = TRUE)
  expect_match(dom, '<div class="n" id="n-pending">1</div>', fixed = TRUE)
  # One page of each: its pager offers neither way.
  expect_match(pend, '<button class="page older" type="button" disabled="">', fixed = TRUE)
  expect_match(fail, '<button class="page newer" type="button" disabled="">', fixed = TRUE)

  ro <- browse(paste0(api$url, "/readonly/dashboard"))
  expect_match(section_text(ro, "running"), running[[1L]], fixed = TRUE)
  expect_false(grepl('class="cancel"', ro, fixed = TRUE))
  expect_match(ro, "Cancel is off", fixed = TRUE)

  png <- Sys.getenv("ASYNCJOBS_DASHBOARD_PNG", file.path(tempdir(), "dashboard.png"))
  browse(paste0(api$url, "/jobs/dashboard"), png = png)
  expect_identical(readBin(png, "raw", 8L), as.raw(c(0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a)))
})

# Processes whose command line names `text` (a browser's profile directory).
processes_naming <- function(text) {
  pids <- as.integer(basename(Sys.glob("/proc/[0-9]*")))
  cmd <- vapply(pids, function(p) {
    x <- tryCatch(suppressWarnings(readBin(sprintf("/proc/%d/cmdline", p), "raw", 65536L)), error = function(e) raw())
    rawToChar(x[x != as.raw(0)])
  }, "")
  pids[grepl(text, cmd, fixed = TRUE) & !vapply(pids, proc_dead, TRUE)]
}

test_that("cancel from the dashboard asks first, and only a yes cancels the job", {
  skip_on_cran()
  skip_without_chromium()
  skip_if(!nzchar(Sys.which("python3")), "no python3 to drive Chromium")
  api <- local_api(workers = 1L)
  id <- http(api, "POST", "/analysis/refresh?seconds=120&source=cancel")$body$job_id
  poll_until(api, id, function(b) identical(b$status, "running"))
  profile <- withr::local_tempdir("chromium-")
  r <- processx::run("python3", c(test_path("cdp-cancel.py"), chromium(), profile, paste0(api$url, "/jobs/dashboard"),
                                  paste0(api$url, "/jobs/", id), id),
                     timeout = 180, error_on_status = FALSE)
  out <- strsplit(r$stdout, "\n")[[1L]]
  expect_identical(r$status, 0L, info = paste(r$stdout, r$stderr))
  expect_identical(out, c(sprintf("dialog: Cancel job %s? Its worker is stopped at once.", id), "after no: running",
                          sprintf("dialog: Cancel job %s? Its worker is stopped at once.", id), "after yes: cancelled",
                          "row gone"))
  expect_identical(http(api, "GET", paste0("/jobs/", id))$body$status, "cancelled")
  expect_true(wait_until(function() !length(processes_naming(profile)), timeout = 20),
              info = "a Chromium process outlived the test")
})
