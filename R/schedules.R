#' Recurring jobs
#'
#' `schedule_job()` stores a recurring job in the store: at each slot of
#' `cron`, read in the time zone `tz`, a job of the registered job type
#' `operation` is submitted with `params`. Schedules live in the store, so
#' every API replica and worker host that runs a pool sees them, and each
#' slot fires exactly once however many of them run (the store keeps a
#' unique key on schedule and slot; no host is the leader), across restarts
#' and DST changes (a slot in the hour skipped in spring fires when that
#' hour ends; one in the hour repeated in autumn fires once). A pool must run
#' somewhere for schedules to fire: with the memory store, this process's.
#'
#' Calling `schedule_job()` again with the same definition (at every start
#' of the API, say) changes nothing; another definition under a name in use
#' is refused unless `replace = TRUE`.
#'
#' @param name (string) the schedule's name, unique in the store.
#' @param cron (string) a cron pattern: five fields (minute, hour, day of
#'   month, month, day of week), or six with seconds first; `L`, `W`, `#`
#'   and names (`MON`, `JAN`) as in Vixie cron. For example `"30 2 * * *"`
#'   (daily at 02:30), `"0 6 * * MON"` (Mondays at 06:00), `"*/10 * * * * *"`
#'   (every 10 seconds).
#' @param operation (string) a registered job type (see [register_job()]).
#' @param params (any) its params, stored as JSON.
#' @param tz (string) the IANA time zone `cron` is read in, such as
#'   `"Europe/Berlin"`.
#' @param queue,priority,timeout_ms,max_attempts as in [create_job()]; NULL
#'   takes the handler's.
#' @param missed (string) what to do with slots missed while no pool ran:
#'   `"skip"` fires none of them, `"once"` fires one job for them. A slot
#'   counts as missed once it is more than a minute late.
#' @param replace (logical) replace a schedule of the same name that has
#'   another definition.
#' @return (invisible list) `list(name, status, next_at)`, `status` being
#'   "created", "unchanged" or "replaced".
#' @examples
#' register_job("refresh", function(p) Sys.time())
#' start_workers(n = 1, wait = TRUE)
#' schedule_job("nightly_refresh", "30 2 * * *", "refresh", list(full = TRUE), tz = "Europe/Berlin")
#' list_schedules()[, c("name", "cron", "next_at")]
#' unschedule_job("nightly_refresh")
#' stop_workers()
#' @export
schedule_job <- function(name, cron, operation, params = NULL, tz = "UTC", queue = NULL, priority = NULL,
                         timeout_ms = NULL, max_attempts = NULL, missed = c("skip", "once"), replace = FALSE) {
  check_process()
  check_not_worker("schedule_job()")
  check_name(name)
  check_string(cron, "cron")
  check_string(tz, "tz")
  operation <- check_operation(operation)
  missed <- match_choice(missed, c("skip", "once"), "missed")
  check_flag(replace, "replace")
  why <- .Call(wrap__aj_cron_check, cron, tz)
  if (!is.null(why)) {
    abort("cron", sprintf("`%s` cannot be used: %s.", if (grepl("time zone", why)) "tz" else "cron", why),
          if (grepl("time zone", why)) "tz" else "cron")
  }
  h <- .state$handlers[[operation]]
  if (!is.null(h) && !identical(h$params, "json")) {
    abort("argument", sprintf("The handler of \"%s\" takes R params (params = \"r\"); a schedule's params are JSON.", operation),
          "operation")
  }
  queue <- queue %||% h$queue %||% "default"
  priority <- priority %||% h$priority %||% 0L
  timeout_ms <- timeout_ms %||% h$timeout_ms %||% 1800000
  max_attempts <- max_attempts %||% h$max_attempts %||% 1L
  check_queue(queue, "queue")
  check_priority(priority)
  check_number(timeout_ms, "timeout_ms", min = 1)
  check_attempts(max_attempts)
  json <- handler_params(params, TRUE, operation)
  ensure_pool()
  if (is.null(h)) {
    known <- .Call(wrap__aj_knows, operation, queue)
    if (store_failed(known)) abort("store_unavailable", paste("The schedule could not be stored:", known))
    if (!isTRUE(known)) {
      abort("unknown_operation", sprintf(
        "No handler is registered for the operation \"%s\" (queue \"%s\"): not in this process's pool, nor on any host of the store (see register_job()).",
        operation, queue), "operation", code = "UNKNOWN_OPERATION")
    }
  }
  r <- .Call(wrap__aj_schedule_put, name, cron, tz, operation, json, queue, as.integer(priority),
             as.numeric(timeout_ms), as.integer(max_attempts), missed, replace)
  switch(r[[1L]],
    taken = abort("schedule_exists", sprintf(
      "A schedule named \"%s\" exists with another definition (%s): unschedule_job() it first, or pass replace = TRUE.",
      name, r[[2L]]), "name"),
    bad_cron = abort("cron", sprintf("`cron` cannot be used: %s.", r[[2L]]), "cron"),
    store_error = abort("store_unavailable", paste("The schedule could not be stored:", r[[2L]]))
  )
  s <- list_schedules()
  invisible(list(name = name, status = r[[1L]], next_at = s$next_at[match(name, s$name)]))
}

#' @rdname schedule_job
#' @return `unschedule_job()`: (invisible logical) whether there was such a
#'   schedule.
#' @export
unschedule_job <- function(name) {
  check_process()
  check_name(name)
  r <- .Call(wrap__aj_schedule_drop, name)
  if (store_failed(r)) abort("store_unavailable", paste("The schedule could not be removed:", r))
  invisible(r)
}

#' @rdname schedule_job
#' @return `list_schedules()`: (data.frame) one row per schedule, the next to
#'   fire first: `name`, `cron`, `tz`, `operation`, `queue`, `priority`,
#'   `timeout_ms`, `max_attempts`, `missed`, `next_at` (the next slot not
#'   fired yet), `last_at` (the last slot fired), `created_at`, `params`
#'   (JSON).
#' @export
list_schedules <- function() {
  check_process()
  cols <- .Call(wrap__aj_schedules)
  if (store_failed(cols)) abort("store_unavailable", paste("Schedules could not be listed:", cols))
  data.frame(name = cols$name, cron = cols$cron, tz = cols$tz, operation = cols$operation,
             queue = cols$queue, priority = as.integer(cols$priority), timeout_ms = cols$timeout_ms,
             max_attempts = as.integer(cols$max_attempts), missed = cols$missed,
             next_at = .POSIXct(cols$next_at), last_at = .POSIXct(cols$last_at),
             created_at = .POSIXct(cols$created_at), params = cols$params, stringsAsFactors = FALSE)
}

check_name <- function(x, arg = "name", call = sys.call(-1L)) {
  check_string(x, arg, call)
  if (nchar(x, type = "bytes") > 255L || !validUTF8(x)) {
    abort("argument", sprintf("`%s` must be valid UTF-8 of at most 255 bytes.", arg), arg, call)
  }
}
