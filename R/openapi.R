#' OpenAPI description of the job routes
#'
#' The paths, answers and bodies of the routes [pr_job_routes()] mounts, as
#' an OpenAPI 3 fragment: `list(paths, components)`. [pr_job_routes()] adds
#' it to the spec plumber serves (`/openapi.json`, and the docs page), so
#' API users see every answer: 202 with `Location` for an accepted job, 409
#' for a duplicate or a job not finished, 503 with `Retry-After` when the
#' pool is full or unavailable, 404 for an unknown id. `submit` names the
#' API's own routes that answer with [job_response()] (`POST` paths such as
#' `"/analysis/kmeans"`); they get the answers a submit can give.
#'
#' @inheritParams pr_job_routes
#' @param submit (character) paths of the API's `POST` routes that submit
#'   jobs through [create_job()] and [job_response()].
#' @return (list) `paths` (named by full path) and `components`.
#' @examples
#' spec <- job_openapi("/jobs", submit = "/analysis/kmeans")
#' names(spec$paths)
#' names(spec$paths[["/analysis/kmeans"]]$post$responses)
#' @export
job_openapi <- function(prefix = "/jobs", admin = FALSE, metrics = admin, dashboard = FALSE, submit = character()) {
  check_string(prefix, "prefix")
  if (!is.character(submit) || anyNA(submit) || !all(startsWith(submit, "/"))) {
    abort("argument", sprintf("`submit` must be paths starting with \"/\", not %s.", describe(submit)), "submit")
  }
  check_flag(admin, "admin")
  check_flag(metrics, "metrics")
  check_flag(dashboard, "dashboard")
  base <- sub("/+$", "", sub("^[a-z]+://[^/]*", "", prefix))
  ref <- function(name) list(`$ref` = paste0("#/components/responses/", name))
  schema <- function(name) list(`$ref` = paste0("#/components/schemas/", name))
  json <- function(description, s, headers = NULL) {
    out <- list(description = description, content = list(`application/json` = list(schema = s)))
    if (!is.null(headers)) out$headers <- headers
    out
  }
  id <- list(list(name = "id", `in` = "path", required = TRUE, description = "The job's id, as the submit answered it.",
                  schema = list(type = "string", format = "uuid")))
  common <- list(`403` = ref("Forbidden"), `500` = ref("InternalError"), `503` = ref("Unavailable"))
  op <- function(summary, responses, tag = "jobs", parameters = id) {
    out <- list(summary = summary, tags = list(tag), responses = c(responses, common))
    if (length(parameters)) out$parameters <- parameters
    out
  }
  retry <- list(`Retry-After` = list(description = "Seconds to wait before asking again.", schema = list(type = "integer")))
  location <- list(Location = list(description = "The job's status URL.", schema = list(type = "string")))
  paths <- list()
  paths[[paste0(base, "/{id}")]] <- list(
    get = op("A job's status", list(
      `200` = json("The job: pending and running jobs carry Retry-After.", schema("JobStatus"), retry),
      `404` = ref("NotFound"))),
    delete = op("Cancel a job (its worker is stopped at once)", list(
      `200` = json("Cancelled.", list(type = "object", properties = list(
        job_id = list(type = "string"), status = list(type = "string", enum = list("cancelled"))))),
      `404` = ref("NotFound"),
      `409` = json("JOB_FINISHED: the job had already ended.", schema("Error")))))
  paths[[paste0(base, "/{id}/result")]] <- list(get = op("A finished job's result", list(
    `200` = json("Completed.", list(type = "object", properties = list(
      job_id = list(type = "string"), status = list(type = "string", enum = list("completed")), result = list()))),
    `404` = ref("NotFound"),
    `409` = json("JOB_NOT_FINISHED (with Retry-After) or JOB_FAILED (with `details`: the job's error).", schema("Error"), retry))))
  paths[[paste0(base, "/{id}/output")]] <- list(get = op("What a job printed (the last 64 KiB)", list(
    `200` = json("The output.", list(type = "object", properties = list(job_id = list(type = "string"), output = list(type = "string")))),
    `404` = ref("NotFound"))))
  if (admin) {
    list_params <- list(
      list(name = "status", `in` = "query", description = "Comma-separated statuses.", schema = list(type = "string")),
      list(name = "operation", `in` = "query", description = "Comma-separated operations.", schema = list(type = "string")),
      list(name = "limit", `in` = "query", description = "Jobs in the page, at most (default 1000, at most 10000).",
           schema = list(type = "integer")),
      list(name = "cursor", `in` = "query", description = "`next_cursor` of the page before.", schema = list(type = "string")))
    paths[[if (nzchar(base)) base else "/"]] <- list(get = op("A page of jobs, newest first", list(
      `200` = json("The page: `count` jobs, and `next_cursor` (null on the last page).", list(type = "object", properties = list(
        count = list(type = "integer"), jobs = list(type = "array", items = list(type = "object")),
        next_cursor = list(type = "string", nullable = TRUE)))),
      `400` = ref("BadRequest")), tag = "operator", parameters = list_params))
    paths[[paste0(base, "/workers")]] <- list(get = op("The worker pool", list(
      `200` = json("Pool size and one row per worker.", list(type = "object"))), tag = "operator", parameters = NULL))
    paths[[paste0(base, "/hosts")]] <- list(get = op("Pools registered in the store", list(
      `200` = json("One row per host.", list(type = "object"))), tag = "operator", parameters = NULL))
    paths[[paste0(base, "/schedules")]] <- list(get = op("Recurring jobs, the next to fire first", list(
      `200` = json("One row per schedule, with its next and last fire.", list(type = "object"))), tag = "operator", parameters = NULL))
  }
  if (metrics) {
    paths[[paste0(base, "/metrics")]] <- list(get = op("Metrics in the Prometheus text format", list(
      `200` = list(description = "Prometheus text exposition, version 0.0.4 (see get_metrics()).",
                   content = list(`text/plain` = list(schema = list(type = "string"))))), tag = "operator", parameters = NULL))
  }
  if (dashboard) {
    paths[[paste0(base, "/dashboard")]] <- list(get = op("The jobs dashboard (HTML)", list(
      `200` = list(description = "One self-contained page.", content = list(`text/html` = list(schema = list(type = "string"))))),
      tag = "operator", parameters = NULL))
  }
  for (p in submit) {
    paths[[p]] <- list(post = list(summary = "Submit a job", tags = list("jobs"), responses = list(
      `202` = json("Accepted: poll the Location (status_url) after Retry-After seconds.", schema("Accepted"), c(location, retry)),
      `400` = ref("BadRequest"),
      `409` = json("DUPLICATE_JOB: an identical job is pending or running; Location is its status URL.", schema("Error"), location),
      `503` = ref("Unavailable"),
      `500` = ref("InternalError"))))
  }
  error <- function(description) json(description, schema("Error"))
  components <- list(
    schemas = list(
      Error = list(type = "object", required = list("error", "message"), properties = list(
        error = list(type = "string", description = "A stable code.", enum = as.list(names(.http_codes))),
        message = list(type = "string"),
        retry_after = list(type = "number"),
        status_url = list(type = "string"),
        existing_job_id = list(type = "string"))),
      Accepted = list(type = "object", properties = list(
        job_id = list(type = "string", format = "uuid"), status = list(type = "string", enum = list("accepted")),
        estimated_seconds = list(type = "number"), retry_after = list(type = "number"), status_url = list(type = "string"))),
      JobStatus = list(type = "object", properties = list(
        job_id = list(type = "string", format = "uuid"),
        status = list(type = "string", enum = list("pending", "running", "completed", "failed", "cancelled")),
        step = list(type = "string", nullable = TRUE), estimated_seconds = list(type = "number"),
        retry_after = list(type = "number"), position = list(type = "integer"),
        progress = list(type = "object", properties = list(current = list(type = "number", nullable = TRUE),
                                                           total = list(type = "number", nullable = TRUE))),
        submitted_at = list(type = "string", format = "date-time"), started_at = list(type = "string", format = "date-time"),
        completed_at = list(type = "string", format = "date-time"), elapsed_seconds = list(type = "number"),
        result = list(description = "A completed job's value."),
        error = list(type = "object", nullable = TRUE, properties = list(code = list(type = "string"), message = list(type = "string")))))),
    responses = list(
      BadRequest = error("BAD_REQUEST: an argument is not valid."),
      Forbidden = error("FORBIDDEN: `authorize` refused the request."),
      NotFound = error("JOB_NOT_FOUND: no job has this id."),
      InternalError = error("AUTHORIZE_FAILED or INTERNAL_ERROR."),
      Unavailable = json("CAPACITY_EXCEEDED, POOL_UNAVAILABLE or STORE_UNAVAILABLE: try again after Retry-After seconds.",
                         schema("Error"), retry)))
  list(paths = paths, components = components)
}

# Adds the job routes' description to what plumber generates, after any spec
# function the API set before; `drop` are paths to leave out.
add_job_openapi <- function(pr, fragment, drop = character()) {
  previous <- tryCatch(pr$.__enclos_env__$private$api_spec_handler, error = function(e) NULL)
  if (!is.function(previous)) previous <- identity
  plumber::pr_set_api_spec(pr, function(spec) {
    spec <- previous(spec)
    # The 404 stand-ins of unmounted operator routes are not part of the API.
    spec$paths[intersect(drop, names(spec$paths))] <- NULL
    for (p in names(fragment$paths)) {
      for (m in names(fragment$paths[[p]])) {
        # Plumber's own answers ("OK", "default") give way; its parameters
        # stay where the fragment has none (the API's submit routes).
        op <- spec$paths[[p]][[m]] %||% list()
        op$responses <- NULL
        spec$paths[[p]][[m]] <- utils::modifyList(op, fragment$paths[[p]][[m]])
      }
    }
    for (kind in names(fragment$components)) {
      spec$components[[kind]] <- utils::modifyList(spec$components[[kind]] %||% list(), fragment$components[[kind]])
    }
    spec
  })
}
