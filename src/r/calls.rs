//! The hot calls: plain native routines (no extendr conversions) behind
//! `create_job()`, `get_job_status()`, `wait_for_job()`,
//! `check_duplicate_job()` and `cleanup_old_jobs()`. Each builds the
//! contract's list in place and checks what it can itself; anything unusual
//! it hands back to R's classed errors. Registered in `register`.
//!
//! May import: `job`, `sys`, `metrics`, `store`, `pool`, and `r::{fast, session}`.

use super::fast::{self as rf, nil, Rf_protect, Rf_unprotect, SET_VECTOR_ELT, SEXP};
use super::session::{limit, ms, parse_id, ready, store, OWNER, POOL};
use crate::job::{estimate_seconds, hex, sha256, JobError, JobView, NewJob, Status, Submit};
use crate::store::{Fault, StoreError};
use crate::sys::{block_on, runtime};
use std::sync::Arc;
use uuid::Uuid;

// ---------------------------------------------------------------- hot calls
//
// Plain native routines (no extendr conversions), called through the
// external pointers aj_init returns. Nothing here holds a lock or an owned
// value across an R call that may raise an error, except where said.

/// Params up to this size are hashed at submit; larger ones by the I/O
/// runtime's blocking pool, or by the first duplicate check or status read
/// that needs the hash, whichever comes first.
const INLINE_HASH_BYTES: usize = 4096;

/// Runs `f`, turning a panic into an R error (raised after `f`'s values are gone).
unsafe fn guarded(f: impl FnOnce() -> SEXP) -> SEXP {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(x) => x,
        Err(_) => rf::Rf_error(c"asyncjobs: internal error (a Rust panic); see stderr".as_ptr()),
    }
}

unsafe fn owner_or_error() {
    if std::process::id() != *OWNER {
        rf::Rf_error(
            c"asyncjobs cannot be used from a forked child process (for example inside parallel::mclapply)".as_ptr(),
        );
    }
}

unsafe fn store_error_sexp(e: StoreError) -> SEXP {
    rf::set_class(rf::string(&e.message), "asyncjobs_store_error")
}

unsafe fn strings(items: &[&str]) -> SEXP {
    let out = Rf_protect(rf::Rf_allocVector(rf::STRSXP, items.len() as isize));
    for (i, s) in items.iter().enumerate() {
        rf::SET_STRING_ELT(out, i as isize, rf::mkchar(s));
    }
    Rf_unprotect(1);
    out
}

enum Submitted {
    Accepted(Uuid, f64),
    Other(Vec<String>),
}

/// create_job's one call: serializes params and executor into Rust memory,
/// submits, binds the id in jobs_env. Returns `list(job_id, status =
/// "accepted", estimated_seconds)` or c(outcome, detail): full/limit,
/// duplicate/id, unavailable/reason, store_error/message, stopped; wrapped
/// as list(that, bytes) of class asyncjobs_big_executor when the executor
/// serializes to more than `asyncjobs.warn_payload_bytes`. The id is listed
/// in jobs_env unless `asyncjobs.jobs_env` is FALSE. When R cannot serialize an
/// argument, the classed error naming it (see rf::serialize). When R's
/// checks must run first (no store chosen yet, a forked child, an operation
/// or timeout that is not plainly valid), NULL of class asyncjobs_check.
pub(super) unsafe extern "C" fn c_submit(
    operation: SEXP,
    params: SEXP,
    executor: SEXP,
    timeout_ms: SEXP,
    queue: SEXP,
    priority: SEXP,
    max_attempts: SEXP,
    unique: SEXP,
    extra: SEXP,
) -> SEXP {
    if !ready() || !rf::plain_utf8(operation) || !rf::as_f64(timeout_ms).is_some_and(|t| t.is_finite() && t >= 1.0 && rf::plain_number(timeout_ms)) {
        return check_first();
    }
    let extra = match Extra::of(extra) {
        Ok(e) => e,
        Err(bad) => return strings(&["unknown_dependency", &bad]),
    };
    // A handler job (no executor) has JSON params, given as text, or R's.
    let handler = executor == nil();
    let mut params = match (extra.json, rf::as_str(params)) {
        (true, Some(text)) => text.as_bytes().to_vec(),
        _ => rf::serialize_params(params),
    };
    let executor = if handler { Vec::new() } else { rf::serialize_executor(executor, &mut params) };
    let operation = rf::as_str(operation).unwrap_or("").to_owned();
    let queue = rf::as_str(queue).unwrap_or("default").to_owned();
    let timeout_ms = rf::as_f64(timeout_ms).unwrap_or(1_800_000.0);
    let priority = rf::as_i32(priority).unwrap_or(0);
    let max_attempts = rf::as_i32(max_attempts).unwrap_or(1);
    let unique = rf::as_bool(unique);
    let bind = !rf::is_false(rf::option(c"asyncjobs.jobs_env"));
    let warn = rf::option(c"asyncjobs.warn_payload_bytes");
    let warn = if warn == nil() { Some(256.0 * 1024.0) } else { rf::as_f64(warn) };
    let executor_len = executor.len();
    let big = warn.is_some_and(|w| executor_len as f64 > w);
    let out = guarded(move || {
        let job = NewJob {
            operation,
            params: Arc::new(params),
            params_json: extra.json,
            executor,
            timeout_ms: limit(timeout_ms),
            queue,
            priority,
            max_attempts: max_attempts.max(1) as u32,
            unique,
            delay: extra.delay,
            depends_on: extra.depends_on,
            ..NewJob::default()
        };
        let out = submit_job(job);
        match out {
            Submitted::Accepted(id, estimate) => {
                if bind {
                    rf::JOBS_ENV.with(|e| e.borrow_mut().bound.insert(id));
                }
                let id = id.to_string();
                rf::named_list("accepted", &["job_id", "status", "estimated_seconds"], |l| {
                    SET_VECTOR_ELT(l, 0, rf::string(&id));
                    SET_VECTOR_ELT(l, 1, rf::string("accepted"));
                    SET_VECTOR_ELT(l, 2, rf::real(estimate));
                })
            }
            Submitted::Other(v) => strings(&v.iter().map(String::as_str).collect::<Vec<_>>()),
        }
    });
    if !big {
        return out;
    }
    Rf_protect(out);
    let l = rf::named_list("big_executor", &["submitted", "executor_bytes"], |l| {
        SET_VECTOR_ELT(l, 0, out);
        SET_VECTOR_ELT(l, 1, rf::real(executor_len as f64));
    });
    Rf_unprotect(1);
    rf::set_class(l, "asyncjobs_big_executor")
}

/// What `create_job()` passes beyond the contract's arguments: NULL, or
/// `list(json, delay, depends_on)`.
#[derive(Default)]
struct Extra {
    json: bool,
    delay: f64,
    depends_on: Vec<Uuid>,
}

impl Extra {
    /// Err: an id in `depends_on` that is no job id.
    unsafe fn of(x: SEXP) -> Result<Extra, String> {
        if x == nil() {
            return Ok(Extra::default());
        }
        let mut e = Extra { json: rf::as_bool(rf::list_get(x, "json")), ..Extra::default() };
        e.delay = rf::as_f64(rf::list_get(x, "delay")).filter(|d| d.is_finite()).unwrap_or(0.0).max(0.0);
        for id in rf::strings_of(rf::list_get(x, "depends_on")) {
            e.depends_on.push(parse_id(&id).ok_or(id)?);
        }
        Ok(e)
    }
}

fn submit_job(mut job: NewJob) -> Submitted {
    let pool = POOL.lock();
    let Some(pool) = pool.as_ref() else { return Submitted::Other(vec!["stopped".into(), String::new()]) };
    if let Some(why) = pool.unavailable() {
        crate::metrics::rejected("POOL_UNAVAILABLE");
        return Submitted::Other(vec!["unavailable".into(), why]);
    }
    let s = pool.store().clone();
    let params = job.params.clone();
    // The memory store hashes big params off this thread; a shared store
    // needs the hash in the insert.
    let lazy = !job.unique && !s.shared() && params.len() > INLINE_HASH_BYTES;
    let id = Uuid::new_v4();
    job.id = id;
    job.params_hash = (!lazy).then(|| sha256(&params));
    let op = job.operation.clone();
    let larger = if job.params.len() >= job.executor.len() { "params" } else { "executor_fn" };
    let submitted = block_on(async {
        let r = pool.submit(job).await?;
        let typical = match r {
            Submit::Accepted => pool.store().typical_duration(&op).await?,
            _ => None,
        };
        Ok::<_, StoreError>((r, typical))
    });
    match submitted {
        Ok((Submit::Accepted, typical)) => {
            if lazy {
                runtime().spawn_blocking(move || s.params_hashed(&id, sha256(&params)));
            }
            Submitted::Accepted(id, typical.unwrap_or(30.0).round())
        }
        Ok((Submit::Full { limit }, _)) => Submitted::Other(vec!["full".into(), limit.to_string()]),
        Ok((Submit::Duplicate(existing), _)) => Submitted::Other(vec!["duplicate".into(), existing.to_string()]),
        Ok((Submit::UnknownDependency(dep), _)) => Submitted::Other(vec!["unknown_dependency".into(), dep.to_string()]),
        Ok((Submit::UnknownOperation, _)) => Submitted::Other(vec!["unknown_operation".into(), op]),
        Ok((Submit::NotSigned, _)) => Submitted::Other(vec!["not_signed".into(), String::new()]),
        Err(e) => match e.fault {
            Fault::Unavailable => {
                crate::metrics::rejected("STORE_UNAVAILABLE");
                Submitted::Other(vec!["store_error".into(), e.message])
            }
            // The store refuses this job for good: the caller's input, not an outage.
            Fault::TooLarge(max) => {
                crate::metrics::rejected("PAYLOAD_TOO_LARGE");
                let max = max.map_or(String::new(), |m| m.to_string());
                Submitted::Other(vec!["too_large".into(), e.message, max, larger.into()])
            }
            Fault::Invalid => {
                crate::metrics::rejected("INVALID_INPUT");
                Submitted::Other(vec!["invalid".into(), e.message])
            }
        },
    }
}

/// `to_json()`'s fast path: `x` as JSON text, or NULL when jsonlite must
/// write it (see `fast::to_json`).
pub(super) unsafe extern "C" fn c_json(x: SEXP) -> SEXP {
    match rf::to_json(x) {
        Some(bytes) => rf::string(std::str::from_utf8(&bytes).unwrap_or("null")),
        None => nil(),
    }
}

unsafe fn not_found() -> SEXP {
    rf::named_list("not_found", &["error", "message"], |l| {
        SET_VECTOR_ELT(l, 0, rf::string("JOB_NOT_FOUND"));
        SET_VECTOR_ELT(l, 1, rf::string("Job ID not found"));
    })
}

unsafe fn store_unavailable(e: StoreError) -> SEXP {
    rf::named_list("store_unavailable", &["error", "message", "retry_after"], |l| {
        SET_VECTOR_ELT(l, 0, rf::string("STORE_UNAVAILABLE"));
        SET_VECTOR_ELT(l, 1, rf::string(&e.message));
        SET_VECTOR_ELT(l, 2, rf::real(5.0));
    })
}

/// R's round(x): halves to even.
fn round_even(x: f64) -> f64 {
    x.round_ties_even()
}

/// A finished job's error as the contract shows it: list(code, message,
/// then what the worker's detail holds: call, class, traceback, warnings).
unsafe fn job_error(err: Option<&JobError>) -> SEXP {
    let Some(e) = err else { return nil() };
    let detail = Rf_protect(match e.detail.as_deref() {
        Some(b) => rf::unserialize(b),
        None => nil(),
    });
    let mut names = vec!["code".to_owned(), "message".to_owned()];
    let mut from = Vec::new();
    if rf::TYPEOF(detail) == rf::VECSXP {
        for (i, n) in rf::list_names(detail).into_iter().enumerate() {
            if !names.contains(&n) {
                names.push(n);
                from.push(i as isize);
            }
        }
    }
    let out = Rf_protect(rf::Rf_allocVector(rf::VECSXP, names.len() as isize));
    SET_VECTOR_ELT(out, 0, rf::string(&e.code));
    SET_VECTOR_ELT(out, 1, rf::string(&e.message));
    for (k, i) in from.iter().enumerate() {
        SET_VECTOR_ELT(out, 2 + k as isize, rf::VECTOR_ELT(detail, *i));
    }
    let values: Vec<SEXP> = (0..names.len() as isize).map(|i| rf::VECTOR_ELT(out, i)).collect();
    let list = rf::list_from(&names, &values);
    Rf_unprotect(2);
    list
}

/// The `list(value, warnings)` a completed job sent (unserialized, or read
/// from its JSON), or NULL.
unsafe fn job_result(view: &JobView) -> SEXP {
    match view.job.result.as_deref() {
        Some(b) if view.job.result_json => rf::json_result(b),
        Some(b) => rf::unserialize(b),
        None => nil(),
    }
}

/// Job ids as a character vector.
unsafe fn ids(v: &[Uuid]) -> SEXP {
    let out = Rf_protect(rf::Rf_allocVector(rf::STRSXP, v.len() as isize));
    for (i, id) in v.iter().enumerate() {
        rf::SET_STRING_ELT(out, i as isize, rf::mkchar(&id.to_string()));
    }
    Rf_unprotect(1);
    out
}

unsafe fn id_or_null(id: Option<Uuid>) -> SEXP {
    id.map_or_else(|| nil(), |p| rf::string(&p.to_string()))
}

/// get_job_status()'s list for a job in the store.
unsafe fn status_list(view: &JobView) -> SEXP {
    let job = &view.job;
    let estimate = estimate_seconds(job, view.typical, view.now);
    match job.status {
        Status::Pending => rf::named_list(
            "pending",
            &[
                "job_id",
                "status",
                "step",
                "estimated_seconds",
                "retry_after",
                "position",
                "submitted_at",
                "scheduled_at",
                "waiting_for",
                "parent_id",
                "children",
            ],
            |l| {
                SET_VECTOR_ELT(l, 0, rf::string(&job.id.to_string()));
                SET_VECTOR_ELT(l, 1, rf::string("pending"));
                SET_VECTOR_ELT(l, 2, rf::progress_message(&job.operation));
                SET_VECTOR_ELT(l, 3, rf::real(round_even(estimate)));
                SET_VECTOR_ELT(l, 4, rf::real(5.0));
                SET_VECTOR_ELT(l, 5, view.position.map_or_else(|| nil(), |p| rf::Rf_ScalarInteger(p as i32)));
                SET_VECTOR_ELT(l, 6, rf::posix(Some(job.submitted_at)));
                SET_VECTOR_ELT(l, 7, job.run_at.map_or_else(|| nil(), |t| rf::posix(Some(t))));
                SET_VECTOR_ELT(l, 8, ids(&view.waiting_for));
                SET_VECTOR_ELT(l, 9, id_or_null(job.parent));
                SET_VECTOR_ELT(l, 10, ids(&view.children));
            },
        ),
        Status::Running => rf::named_list(
            "running",
            &[
                "job_id",
                "status",
                "step",
                "estimated_seconds",
                "retry_after",
                "progress",
                "started_at",
                "elapsed_seconds",
                "parent_id",
                "children",
            ],
            |l| {
                let progress = job.progress.as_deref();
                SET_VECTOR_ELT(l, 0, rf::string(&job.id.to_string()));
                SET_VECTOR_ELT(l, 1, rf::string("running"));
                let step = match progress.and_then(|p| p.step.as_deref()) {
                    Some(s) => rf::string(s),
                    None => rf::progress_message(&job.operation),
                };
                SET_VECTOR_ELT(l, 2, step);
                SET_VECTOR_ELT(l, 3, rf::real(round_even(estimate)));
                SET_VECTOR_ELT(l, 4, rf::real(5.0));
                let na = rf::R_NaReal;
                let current = progress.and_then(|p| p.current).unwrap_or(na);
                let total = progress.and_then(|p| p.total).unwrap_or(na);
                SET_VECTOR_ELT(
                    l,
                    5,
                    rf::named_list("progress", &["current", "total"], |p| {
                        SET_VECTOR_ELT(p, 0, rf::real(current));
                        SET_VECTOR_ELT(p, 1, rf::real(total));
                    }),
                );
                SET_VECTOR_ELT(l, 6, rf::posix(job.started_at));
                let elapsed = job.started_at.map_or(na, |s| round_even((view.now - s) * 1000.0) / 1000.0);
                SET_VECTOR_ELT(l, 7, rf::real(elapsed));
                SET_VECTOR_ELT(l, 8, id_or_null(job.parent));
                SET_VECTOR_ELT(l, 9, ids(&view.children));
            },
        ),
        _ => {
            let result = Rf_protect(job_result(view));
            let l = rf::named_list(
                "finished",
                &[
                    "job_id",
                    "status",
                    "completed_at",
                    "result",
                    "error",
                    "warnings",
                    "operation",
                    "submitted_at",
                    "started_at",
                    "duration_seconds",
                    "parent_id",
                    "children",
                ],
                |l| {
                    SET_VECTOR_ELT(l, 0, rf::string(&job.id.to_string()));
                    SET_VECTOR_ELT(l, 1, rf::string(job.status.as_str()));
                    SET_VECTOR_ELT(l, 2, rf::posix(job.completed_at));
                    SET_VECTOR_ELT(l, 3, rf::list_get(result, "value"));
                    SET_VECTOR_ELT(l, 4, job_error(job.error.as_deref()));
                    SET_VECTOR_ELT(l, 5, rf::list_get(result, "warnings"));
                    SET_VECTOR_ELT(l, 6, rf::string(&job.operation));
                    SET_VECTOR_ELT(l, 7, rf::posix(Some(job.submitted_at)));
                    SET_VECTOR_ELT(l, 8, rf::posix(job.started_at));
                    let duration = match job.started_at {
                        Some(s) => rf::real(job.completed_at.map_or(rf::R_NaReal, |c| c - s)),
                        None => nil(),
                    };
                    SET_VECTOR_ELT(l, 9, duration);
                    SET_VECTOR_ELT(l, 10, id_or_null(job.parent));
                    SET_VECTOR_ELT(l, 11, ids(&view.children));
                },
            );
            Rf_unprotect(1);
            l
        }
    }
}

fn read_job(id: &Uuid) -> std::result::Result<Option<JobView>, StoreError> {
    block_on(store().get(id, true))
}

/// get_job_status()'s one call: the contract's list; a record a caller
/// wrote, as list(record) of class asyncjobs_written; a store error; or,
/// when R's checks must run first (no store chosen yet, a forked child, an
/// id that is not a single non-empty string), NULL of class asyncjobs_check.
pub(super) unsafe extern "C" fn c_status(id: SEXP) -> SEXP {
    let Some(id) = checked_id(id) else { return check_first() };
    let written = rf::JOBS_ENV.with(|e| {
        let e = e.borrow();
        if e.written_len() > 0 {
            e.written(id).filter(|v| rf::TYPEOF(*v) == rf::VECSXP)
        } else {
            None
        }
    });
    if let Some(rec) = written {
        let l = rf::named_list("written", &["record"], |l| {
            SET_VECTOR_ELT(l, 0, rec);
        });
        return rf::set_class(l, "asyncjobs_written");
    }
    let Some(uuid) = parse_id(id) else { return not_found() };
    let read = guarded_value(|| read_job(&uuid));
    match read {
        Ok(Some(view)) => status_list(&view),
        Ok(None) => not_found(),
        Err(e) => store_error_sexp(e),
    }
}

/// The id, when it is a single non-empty string and the call may go on.
unsafe fn checked_id<'a>(id: SEXP) -> Option<&'a str> {
    rf::as_str(id).filter(|s| !s.is_empty() && rf::Rf_xlength(id) == 1 && ready())
}

/// The answer that asks R to run its checks (which raise the classed error).
unsafe fn check_first() -> SEXP {
    // A fresh vector: R's scalar FALSE is shared, never give it a class.
    rf::set_class(rf::string("check"), "asyncjobs_check")
}

/// wait_for_job()'s one call per slice: NULL while the job has not
/// finished after `wait_ms`, else what c_status gives.
pub(super) unsafe extern "C" fn c_wait(id: SEXP, wait_ms: SEXP) -> SEXP {
    let Some(s) = checked_id(id) else { return check_first() };
    if let Some(uuid) = parse_id(s) {
        let wait = ms(rf::as_f64(wait_ms).unwrap_or(0.0));
        if !guarded_value(|| block_on(store().wait_finished(&uuid, wait)).unwrap_or(true)) {
            return nil();
        }
    }
    c_status(id)
}

unsafe fn guarded_value<T>(f: impl FnOnce() -> T) -> T {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(x) => x,
        Err(_) => rf::Rf_error(c"asyncjobs: internal error (a Rust panic); see stderr".as_ptr()),
    }
}

/// What `jobs_env[[id]]` shows for a bound job: the contract's record.
pub(super) unsafe fn job_record(id: &Uuid) -> SEXP {
    let view = match guarded_value(|| {
        store().hash_now(id);
        read_job(id)
    }) {
        Ok(Some(v)) => v,
        Ok(None) => return nil(),
        Err(e) => return store_unavailable(e),
    };
    let job = &view.job;
    let result = Rf_protect(job_result(&view));
    let l = rf::named_list(
        "record",
        &[
            "job_id",
            "operation",
            "status",
            "submitted_at",
            "params_hash",
            "result",
            "error",
            "completed_at",
            "started_at",
            "timeout_ms",
        ],
        |l| {
            SET_VECTOR_ELT(l, 0, rf::string(&job.id.to_string()));
            SET_VECTOR_ELT(l, 1, rf::string(&job.operation));
            SET_VECTOR_ELT(l, 2, rf::string(job.status.as_str()));
            SET_VECTOR_ELT(l, 3, rf::posix(Some(job.submitted_at)));
            SET_VECTOR_ELT(l, 4, rf::string(&hex(&job.params_hash)));
            SET_VECTOR_ELT(l, 5, rf::list_get(result, "value"));
            SET_VECTOR_ELT(l, 6, job_error(job.error.as_deref()));
            SET_VECTOR_ELT(l, 7, rf::posix(job.completed_at));
            SET_VECTOR_ELT(l, 8, rf::posix(job.started_at));
            SET_VECTOR_ELT(l, 9, rf::real(job.timeout_ms as f64));
        },
    );
    Rf_unprotect(1);
    l
}

/// check_duplicate_job()'s one call, given its frame: list(duplicate =
/// FALSE) or list(duplicate = TRUE, existing_job_id), or a store error; or,
/// when R's checks must run first (no store chosen yet, a forked child, an
/// operation that is not a single UTF-8 string), NULL of class
/// asyncjobs_check. `params` is evaluated after these checks, as it was
/// after R's.
pub(super) unsafe extern "C" fn c_duplicate(operation: SEXP, frame: SEXP, json: SEXP) -> SEXP {
    let Some(operation) = rf::as_str(operation).filter(|_| ready() && rf::plain_utf8(operation)) else {
        return check_first();
    };
    let value = rf::value_of(frame, c"params");
    // A registered job type's params: the JSON text R made.
    let params = match (rf::as_bool(json), rf::as_str(value)) {
        (true, Some(text)) => text.as_bytes().to_vec(),
        _ => rf::serialize_params(value),
    };
    let found = guarded_value(move || {
        let hash = sha256(&params);
        block_on(store().find_active(operation, &hash))
    });
    match found {
        Ok(None) => rf::named_list("not_duplicate", &["duplicate"], |l| {
            SET_VECTOR_ELT(l, 0, rf::Rf_ScalarLogical(0));
        }),
        Ok(Some(id)) => rf::named_list("duplicate", &["duplicate", "existing_job_id"], |l| {
            SET_VECTOR_ELT(l, 0, rf::Rf_ScalarLogical(1));
            SET_VECTOR_ELT(l, 1, rf::string(&id.to_string()));
        }),
        Err(e) => store_error_sexp(e),
    }
}

/// Removes up to `batch` finished jobs that ended more than `max_age`
/// seconds ago, and their jobs_env entries; returns how many (R calls it
/// until a batch comes back short), or a store error.
pub(super) unsafe extern "C" fn c_cleanup(max_age: SEXP, batch: SEXP) -> SEXP {
    owner_or_error();
    let max_age = rf::as_f64(max_age).unwrap_or(86400.0);
    let batch = limit(rf::as_f64(batch).unwrap_or(f64::INFINITY)).clamp(1, usize::MAX as u64) as usize;
    let removed = guarded_value(|| block_on(store().cleanup(max_age, batch)));
    match removed {
        Ok(ids) => {
            rf::JOBS_ENV.with(|e| {
                let mut e = e.borrow_mut();
                let written = e.written_len() > 0;
                for id in &ids {
                    e.bound.remove(id);
                    if written {
                        e.unwrite(&id.to_string());
                    }
                }
                if e.bound.len() < e.bound.capacity() / 4 {
                    e.bound.shrink_to_fit();
                }
            });
            rf::real(ids.len() as f64)
        }
        Err(e) => store_error_sexp(e),
    }
}

/// Removes records callers wrote into jobs_env that are finished and older
/// than `cutoff` (seconds since the epoch); returns how many.
pub(super) unsafe extern "C" fn c_cleanup_written(cutoff: SEXP) -> SEXP {
    owner_or_error();
    let cutoff = rf::as_f64(cutoff).unwrap_or(f64::NEG_INFINITY);
    let n = rf::JOBS_ENV.with(|e| e.borrow_mut().expire_written(cutoff));
    rf::real(n as f64)
}
