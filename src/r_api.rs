//! The R boundary: converts arguments and records, nothing more.
//!
//! The R layer (R/*.R) validates arguments and raises classed conditions;
//! these functions trust their types. Each refuses to run in a forked child
//! of the process that loaded the package: a fork has no pool thread.

use crate::pool::{Config, Pool, SlotState};
use crate::registry::{
    self, block_on, estimate_seconds, hex, Cancel, JobError, JobView, MemoryStore, NewJob, Status, Store, StoreError,
    Submit,
};
use crate::rfast::{self as rf, nil, Rf_protect, Rf_unprotect, SET_VECTOR_ELT, SEXP};
use crate::wire;
use crate::worker::Spec;
use extendr_api::prelude::*;
use extendr_api::Result;
use once_cell::sync::Lazy;
use parking_lot::Mutex;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

/// The store every call reads and writes: memory until `aj_open_store` picks
/// another. Kept across pool restarts, so finished jobs stay readable.
static STORE: Lazy<Mutex<(String, Arc<dyn Store>)>> =
    Lazy::new(|| Mutex::new(("memory".into(), Arc::new(MemoryStore::new()))));
static POOL: Lazy<Mutex<Option<Pool>>> = Lazy::new(|| Mutex::new(None));
static OWNER: Lazy<u32> = Lazy::new(std::process::id);
/// Set once R has chosen a store (use_store()), so hot calls may skip R's checks.
static STORE_CHOSEN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn check_owner() -> Result<()> {
    if std::process::id() != *OWNER {
        return Err(Error::Other(
            "asyncjobs cannot be used from a forked child process (for example inside parallel::mclapply)".into(),
        ));
    }
    Ok(())
}

fn store() -> Arc<dyn Store> {
    STORE.lock().1.clone()
}

/// A store failure as R sees it: the message, classed, for R to turn into
/// `list(error = "STORE_UNAVAILABLE", ...)`.
fn store_error(e: StoreError) -> Robj {
    let mut r = Robj::from(e.0);
    let _ = r.set_class(&["asyncjobs_store_error"]);
    r
}

fn or_store_error(r: std::result::Result<Robj, StoreError>) -> Result<Robj> {
    Ok(r.unwrap_or_else(store_error))
}

fn raw<'a>(x: &'a Robj, what: &str) -> Result<&'a [u8]> {
    x.as_raw_slice().ok_or_else(|| Error::Other(format!("{what} must be a raw vector")))
}

fn parse_id(id: &str) -> Option<Uuid> {
    Uuid::try_parse(id).ok()
}

fn ms(x: f64) -> Duration {
    Duration::from_millis(if x.is_finite() && x > 0.0 { x as u64 } else { 0 })
}

fn limit(x: f64) -> u64 {
    if x.is_finite() { x.max(0.0) as u64 } else { u64::MAX }
}

fn named(names: &[&str], values: Vec<Robj>) -> Robj {
    List::from_names_and_values(names, values).map(Robj::from).unwrap_or_else(|_| ().into())
}

/// Chooses the store ("memory" or a database URL). c("ok", description) or
/// c("error", message); the message never holds the URL's password.
#[extendr]
fn aj_open_store(url: &str, timeout_ms: f64, lease_ms: f64) -> Result<Vec<String>> {
    check_owner()?;
    let mut current = STORE.lock();
    if current.0 == url {
        STORE_CHOSEN.store(true, std::sync::atomic::Ordering::Relaxed);
        return Ok(vec!["ok".into(), current.1.describe()]);
    }
    if POOL.lock().is_some() {
        return Ok(vec!["error".into(), "a worker pool is running on another store; call stop_workers() first".into()]);
    }
    let opened: std::result::Result<Arc<dyn Store>, StoreError> = if url == "memory" {
        Ok(Arc::new(MemoryStore::new()))
    } else {
        open_sql(url, ms(timeout_ms), ms(lease_ms))
    };
    Ok(match opened {
        Ok(s) => {
            let described = s.describe();
            *current = (url.to_owned(), s);
            STORE_CHOSEN.store(true, std::sync::atomic::Ordering::Relaxed);
            vec!["ok".into(), described]
        }
        Err(e) => vec!["error".into(), e.0],
    })
}

#[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
fn open_sql(url: &str, timeout: Duration, lease: Duration) -> std::result::Result<Arc<dyn Store>, StoreError> {
    Ok(Arc::new(crate::sql::SqlStore::open(url, timeout, lease)?))
}

#[cfg(not(any(feature = "sqlite", feature = "postgres", feature = "mysql")))]
fn open_sql(_: &str, _: Duration, _: Duration) -> std::result::Result<Arc<dyn Store>, StoreError> {
    Err(StoreError("this build of asyncjobs has no database drivers".into()))
}

/// Called from .onLoad: records the owning process, keeps `.state` (for the
/// progress messages), makes `jobs_env` the jobs database, and returns the
/// native routines of the hot calls, which `.Call` takes directly.
#[extendr]
fn aj_init(state: Robj, jobs_env: Robj) -> Robj {
    let _ = *OWNER;
    unsafe {
        rf::set_state_env(state.get());
        rf::init_jobs_env(jobs_env.get(), job_record);
        Robj::from_sexp(natives())
    }
}

#[extendr]
#[allow(clippy::too_many_arguments)]
fn aj_start(
    program: &str,
    args: Robj,
    cwd: &str,
    init: Robj,
    size: i32,
    max_jobs_per_worker: f64,
    max_rss_mb: f64,
    max_result_bytes: f64,
    echo_output: bool,
    setup_timeout_ms: f64,
    stop_grace_ms: f64,
    nice: i32,
    capacity: f64,
    queues: Vec<String>,
    retention_s: f64,
    verbose: bool,
    poll_ms: f64,
) -> Result<Vec<String>> {
    check_owner()?;
    let mut pool = POOL.lock();
    if pool.is_some() {
        return Err(Error::Other("a worker pool is already running".into()));
    }
    let args = args.as_str_vector().unwrap_or_default().into_iter().map(str::to_owned).collect();
    let config = Config {
        size: size.max(0) as usize,
        capacity: limit(capacity).min(usize::MAX as u64) as usize,
        spec: Spec {
            program: program.into(),
            args,
            cwd: cwd.into(),
            env: vec![("ASYNCJOBS_WORKER".into(), "1".into())],
            // Set by R CMD check; a worker started elsewhere would try to source it.
            env_remove: vec!["R_TESTS".into()],
            nice,
        },
        init: raw(&init, "init")?.to_vec(),
        max_jobs_per_worker: limit(max_jobs_per_worker),
        max_rss_bytes: limit(max_rss_mb * 1024.0 * 1024.0),
        max_result_bytes: limit(max_result_bytes).min(u32::MAX as u64 / 2) as usize,
        echo_output,
        setup_timeout: ms(setup_timeout_ms),
        stop_grace: ms(stop_grace_ms),
        max_setup_failures: 5,
        queues,
        retention: (retention_s.is_finite() && retention_s >= 0.0).then(|| Duration::from_secs_f64(retention_s)),
        verbose,
        max_poll: ms(poll_ms).max(Duration::from_millis(10)),
    };
    let s = store();
    match block_on(registry::check_version(s.as_ref())) {
        Err(e) => return Ok(vec!["store_unavailable".into(), e.0]),
        Ok(Some(why)) => return Ok(vec!["version".into(), why]),
        Ok(None) => {}
    }
    let started = Pool::start(s, config).map_err(|e| Error::Other(format!("cannot start the pool: {e}")))?;
    *pool = Some(started);
    Ok(Vec::new())
}

/// Stops claiming jobs; returns how many this pool still holds.
#[extendr]
fn aj_drain() -> Result<i32> {
    check_owner()?;
    let pool = POOL.lock();
    Ok(pool.as_ref().map_or(0, |p| {
        p.drain();
        p.busy() as i32
    }))
}

/// Jobs this pool holds (running or claimed).
#[extendr]
fn aj_busy() -> Result<i32> {
    check_owner()?;
    Ok(POOL.lock().as_ref().map_or(0, |p| p.busy() as i32))
}

/// Blocks SIGTERM, SIGINT and SIGHUP on the calling (R main) thread and
/// waits at most `wait_ms` for one; its number, or 0. A worker-only host
/// takes them as the order to drain.
#[extendr]
fn aj_wait_signal(wait_ms: f64) -> Result<i32> {
    check_owner()?;
    let d = ms(wait_ms);
    let sig = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        let ts = libc::timespec { tv_sec: d.as_secs() as libc::time_t, tv_nsec: d.subsec_nanos() as libc::c_long };
        libc::sigtimedwait(&set, std::ptr::null_mut(), &ts)
    };
    Ok(sig.max(0))
}

/// Fails every unfinished job with SHUTDOWN and tells the workers to stop.
#[extendr]
fn aj_stop_begin() -> Result<bool> {
    check_owner()?;
    let pool = POOL.lock();
    if let Some(p) = pool.as_ref() {
        p.begin_stop();
    }
    Ok(pool.is_some())
}

/// Waits at most `wait_ms` for the pool to end. TRUE once it has.
#[extendr]
fn aj_stop_wait(wait_ms: f64) -> Result<bool> {
    check_owner()?;
    let mut pool = POOL.lock();
    let done = match pool.as_mut() {
        Some(p) => p.wait_stopped(ms(wait_ms)),
        None => true,
    };
    if done {
        *pool = None;
    }
    Ok(done)
}

/// list(running, size, capacity, unavailable, store, shared, host)
#[extendr]
fn aj_pool_info() -> Result<Robj> {
    check_owner()?;
    let pool = POOL.lock();
    let (running, size, capacity, why, host) = match pool.as_ref() {
        Some(p) => (true, p.size() as f64, p.capacity() as f64, p.unavailable(), Some(p.host().id.clone())),
        None => (false, 0.0, 0.0, None, None),
    };
    let s = store();
    let null = || Robj::from(());
    Ok(named(
        &["running", "size", "capacity", "unavailable", "store", "shared", "host"],
        vec![
            running.into(),
            size.into(),
            capacity.into(),
            why.map_or_else(null, Robj::from),
            s.describe().into(),
            s.shared().into(),
            host.map_or_else(null, Robj::from),
        ],
    ))
}

const JOB_FIELDS: [&str; 23] = [
    "job_id",
    "operation",
    "status",
    "submitted_at",
    "started_at",
    "completed_at",
    "timeout_ms",
    "params_hash",
    "result",
    "error_code",
    "error_message",
    "error_detail",
    "step",
    "current",
    "total",
    "position",
    "estimated_seconds",
    "worker_pid",
    "now",
    "queue",
    "priority",
    "attempts",
    "max_attempts",
];

/// One job's record as a named list, or NULL when the id is unknown.
#[extendr]
fn aj_job(id: &str) -> Result<Robj> {
    check_owner()?;
    let Some(uuid) = parse_id(id) else { return Ok(().into()) };
    let view = match block_on(store().get(&uuid, true)) {
        Ok(Some(v)) => v,
        Ok(None) => return Ok(().into()),
        Err(e) => return Ok(store_error(e)),
    };
    let job = &view.job;
    let estimate = estimate_seconds(job, view.typical, view.now);
    let progress = job.progress.as_deref();
    let err = job.error.as_deref();
    let null = || Robj::from(());
    Ok(named(
        &JOB_FIELDS,
        vec![
            job.id.to_string().into(),
            job.operation.as_ref().into(),
            job.status.as_str().into(),
            job.submitted_at.into(),
            job.started_at.into(),
            job.completed_at.into(),
            (job.timeout_ms as f64).into(),
            hex(&job.params_hash).into(),
            job.result.as_deref().map_or_else(null, |b| Raw::from_bytes(b).into()),
            err.map_or_else(null, |e| e.code.as_str().into()),
            err.map_or_else(null, |e| e.message.as_str().into()),
            err.and_then(|e| e.detail.as_deref()).map_or_else(null, |b| Raw::from_bytes(b).into()),
            progress.and_then(|p| p.step.as_deref()).map_or_else(null, Robj::from),
            progress.and_then(|p| p.current).map_or_else(null, Robj::from),
            progress.and_then(|p| p.total).map_or_else(null, Robj::from),
            view.position.map_or_else(null, |p| (p as i32).into()),
            estimate.into(),
            job.worker_pid.map_or_else(null, |p| (p as i32).into()),
            view.now.into(),
            job.queue.as_ref().into(),
            job.priority.into(),
            (job.attempts as i32).into(),
            (job.max_attempts as i32).into(),
        ],
    ))
}

/// Waits at most `wait_ms` for the job to finish; TRUE once it has (or is
/// unknown, or the store cannot say: the status read then reports why).
#[extendr]
fn aj_wait(id: &str, wait_ms: f64) -> Result<bool> {
    check_owner()?;
    let Some(uuid) = parse_id(id) else { return Ok(true) };
    Ok(block_on(store().wait_finished(&uuid, ms(wait_ms))).unwrap_or(true))
}

/// "not_found", "cancelled", "finished" and the status, or "store_error" and the message.
#[extendr]
fn aj_cancel(id: &str) -> Result<Vec<String>> {
    check_owner()?;
    let Some(uuid) = parse_id(id) else { return Ok(vec!["not_found".into()]) };
    let pool = POOL.lock();
    let outcome = match pool.as_ref() {
        Some(p) => block_on(p.cancel(&uuid)),
        None => block_on(store().cancel(&uuid)),
    };
    Ok(match outcome {
        Ok(Cancel::NotFound) => vec!["not_found".into()],
        Ok(Cancel::Finished(st)) => vec!["finished".into(), st.as_str().into()],
        Ok(Cancel::WasPending | Cancel::WasRunning(_)) => { crate::metrics::job_cancelled(); vec!["cancelled".into()] }
        Err(e) => vec!["store_error".into(), e.0],
    })
}

/// Every job as columns, oldest first.
#[extendr]
fn aj_list() -> Result<Robj> {
    check_owner()?;
    let jobs = match block_on(store().list()) {
        Ok(j) => j,
        Err(e) => return Ok(store_error(e)),
    };
    let strs = |f: &dyn Fn(&registry::Job) -> Option<String>| -> Robj {
        jobs.iter().map(f).collect::<Vec<Option<String>>>().into()
    };
    let nums = |f: &dyn Fn(&registry::Job) -> Option<f64>| -> Robj {
        jobs.iter().map(f).collect::<Vec<Option<f64>>>().into()
    };
    Ok(named(
        &["job_id", "operation", "status", "submitted_at", "started_at", "completed_at", "error_code", "queue", "priority"],
        vec![
            strs(&|j| Some(j.id.to_string())),
            strs(&|j| Some(j.operation.to_string())),
            strs(&|j| Some(j.status.as_str().to_owned())),
            nums(&|j| Some(j.submitted_at)),
            nums(&|j| j.started_at),
            nums(&|j| j.completed_at),
            strs(&|j| j.error.as_ref().map(|e| e.code.clone())),
            strs(&|j| Some(j.queue.to_string())),
            nums(&|j| Some(j.priority as f64)),
        ],
    ))
}

/// The pool's slots as columns.
#[extendr]
fn aj_workers() -> Result<Robj> {
    check_owner()?;
    let slots = POOL.lock().as_ref().map(Pool::workers).unwrap_or_default();
    let col_i = |f: &dyn Fn(&crate::pool::SlotInfo) -> Option<f64>| -> Robj {
        slots.iter().map(f).collect::<Vec<Option<f64>>>().into()
    };
    let col_s = |f: &dyn Fn(&crate::pool::SlotInfo) -> Option<String>| -> Robj {
        slots.iter().map(f).collect::<Vec<Option<String>>>().into()
    };
    Ok(named(
        &["slot", "pid", "state", "jobs_done", "spawned", "job_id", "rss_mb", "last_exit", "reason", "containment"],
        vec![
            col_i(&|s| Some(s.slot as f64 + 1.0)),
            col_i(&|s| s.pid.map(f64::from)),
            col_s(&|s| Some(s.state.name().to_owned())),
            col_i(&|s| Some(s.jobs_done as f64)),
            col_i(&|s| Some(s.spawned as f64)),
            col_s(&|s| match &s.state {
                SlotState::Busy(id) => Some(id.to_string()),
                _ => None,
            }),
            col_i(&|s| s.rss_bytes.map(|b| b as f64 / 1048576.0)),
            col_s(&|s| s.last_exit.clone()),
            col_s(&|s| match &s.state {
                SlotState::Failed(r) => Some(r.clone()),
                _ => None,
            }),
            col_s(&|s| s.containment.map(|m| m.name().to_owned())),
        ],
    ))
}

/// In a worker: arms the guard that takes the worker's process tree down
/// when the API dies; the mechanism in force, or why the guard failed.
#[extendr]
fn aj_tree_guard() -> String {
    match crate::reaper::arm_guard() {
        Ok(m) => m.name().to_owned(),
        Err(e) => format!("error: {e}"),
    }
}

/// In a worker, around each job: `TRUE` notes the processes already there;
/// `FALSE` kills (and reaps) those the job started. FALSE when some are left.
#[extendr]
fn aj_tree_job(begin: bool) -> bool {
    if begin {
        crate::reaper::job_begin();
        true
    } else {
        crate::reaper::job_end()
    }
}

/// Every pool registered in the store, as columns.
#[extendr]
fn aj_hosts() -> Result<Robj> {
    check_owner()?;
    let hosts = match block_on(store().hosts()) {
        Ok(h) => h,
        Err(e) => return Ok(store_error(e)),
    };
    let strs = |f: &dyn Fn(&registry::HostView) -> String| -> Robj { hosts.iter().map(f).collect::<Vec<String>>().into() };
    let nums = |f: &dyn Fn(&registry::HostView) -> Option<f64>| -> Robj {
        hosts.iter().map(f).collect::<Vec<Option<f64>>>().into()
    };
    Ok(named(
        &["host_id", "hostname", "pid", "slots", "queues", "version", "state", "running", "started_at", "heartbeat_at", "stopped_at"],
        vec![
            strs(&|h| h.info.id.clone()),
            strs(&|h| h.info.hostname.clone()),
            nums(&|h| Some(h.info.pid as f64)),
            nums(&|h| Some(h.info.slots as f64)),
            strs(&|h| h.info.queues.join(",")),
            strs(&|h| h.version.clone()),
            strs(&|h| h.state.to_owned()),
            nums(&|h| Some(h.running as f64)),
            nums(&|h| Some(h.started_at)),
            nums(&|h| Some(h.heartbeat_at)),
            nums(&|h| h.stopped_at),
        ],
    ))
}

/// The job's captured output as a string, or NULL for an unknown id.
#[extendr]
fn aj_output(id: &str) -> Result<Robj> {
    check_owner()?;
    let Some(uuid) = parse_id(id) else { return Ok(().into()) };
    let out = block_on(store().output(&uuid));
    or_store_error(out.map(|o| o.map_or_else(|| ().into(), |b| String::from_utf8_lossy(&b).replace('\0', "").into())))
}

/// c(pending, running, total)
#[extendr]
fn aj_counts() -> Result<Robj> {
    check_owner()?;
    let c = block_on(store().counts());
    or_store_error(c.map(|c| vec![c.pending as f64, c.running as f64, c.total as f64].into()))
}

/// The metrics now: the Prometheus text exposition (`text`), or columns
/// metric, type, one per label name (NA where a sample has no such label), value.
#[extendr]
fn aj_metrics(text: bool) -> Result<Robj> {
    check_owner()?;
    let mut g = crate::metrics::Gauges::default();
    if let Some(p) = POOL.lock().as_ref() {
        g.pool_size = p.size();
        for w in p.workers() {
            match g.workers.iter_mut().find(|(s, _)| s == w.state.name()) {
                Some((_, n)) => *n += 1,
                None => g.workers.push((w.state.name().to_owned(), 1)),
            }
        }
    }
    if let Ok(c) = block_on(store().counts()) {
        (g.pending, g.running, g.store_up) = (Some(c.pending), Some(c.running), true);
    }
    let families = crate::metrics::snapshot(&g);
    if text {
        return Ok(crate::metrics::render(&families).into());
    }
    let samples: Vec<(&crate::metrics::Family, &crate::metrics::Sample)> =
        families.iter().flat_map(|f| f.samples.iter().map(move |s| (f, s))).collect();
    let mut keys: Vec<&str> = Vec::new();
    for (_, s) in &samples {
        for (k, _) in &s.labels {
            if !keys.contains(k) {
                keys.push(k);
            }
        }
    }
    let mut names = vec!["metric", "type"];
    names.extend(&keys);
    names.push("value");
    let mut cols: Vec<Robj> = vec![
        samples.iter().map(|(_, s)| s.name.clone()).collect::<Vec<_>>().into(),
        samples.iter().map(|(f, _)| f.kind).collect::<Vec<_>>().into(),
    ];
    for k in &keys {
        let col: Vec<Option<String>> =
            samples.iter().map(|(_, s)| s.labels.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())).collect();
        cols.push(col.into());
    }
    cols.push(samples.iter().map(|(_, s)| s.value).collect::<Vec<f64>>().into());
    Ok(named(&names, cols))
}

// ---------------------------------------------------------------- hot calls
//
// Plain native routines (no extendr conversions), called through the
// external pointers aj_init returns. Nothing here holds a lock or an owned
// value across an R call that may raise an error, except where said.

/// Params up to this size are hashed at submit; larger ones by the I/O
/// runtime's blocking pool, or by the first duplicate check or status read
/// that needs the hash, whichever comes first.
const INLINE_HASH_BYTES: usize = 4096;

fn natives() -> SEXP {
    type F = rf::DlFunc;
    unsafe {
        let fns: [(&str, F); 6] = [
            ("submit", std::mem::transmute::<*const (), F>(c_submit as *const ())),
            ("status", std::mem::transmute::<*const (), F>(c_status as *const ())),
            ("wait", std::mem::transmute::<*const (), F>(c_wait as *const ())),
            ("duplicate", std::mem::transmute::<*const (), F>(c_duplicate as *const ())),
            ("cleanup", std::mem::transmute::<*const (), F>(c_cleanup as *const ())),
            ("cleanup_written", std::mem::transmute::<*const (), F>(c_cleanup_written as *const ())),
        ];
        let names: Vec<&str> = fns.iter().map(|f| f.0).collect();
        rf::named_list("natives", &names, |out| {
            for (i, (_, f)) in fns.iter().enumerate() {
                SET_VECTOR_ELT(out, i as isize, rf::native(*f));
            }
        })
    }
}

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
    rf::set_class(rf::string(&e.0), "asyncjobs_store_error")
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
unsafe extern "C" fn c_submit(
    operation: SEXP,
    params: SEXP,
    executor: SEXP,
    timeout_ms: SEXP,
    queue: SEXP,
    priority: SEXP,
    max_attempts: SEXP,
    unique: SEXP,
) -> SEXP {
    if !ready() || !rf::plain_utf8(operation) || !rf::as_f64(timeout_ms).is_some_and(|t| t.is_finite() && t >= 1.0 && rf::plain_number(timeout_ms)) {
        return check_first();
    }
    let mut params = rf::serialize_params(params);
    let executor = rf::serialize_executor(executor, &mut params);
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
        let out = submit_job(operation, params, executor, timeout_ms, queue, priority, max_attempts, unique);
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

#[allow(clippy::too_many_arguments)]
fn submit_job(
    operation: String,
    params: Vec<u8>,
    executor: Vec<u8>,
    timeout_ms: f64,
    queue: String,
    priority: i32,
    max_attempts: i32,
    unique: bool,
) -> Submitted {
    let pool = POOL.lock();
    let Some(pool) = pool.as_ref() else { return Submitted::Other(vec!["stopped".into(), String::new()]) };
    if let Some(why) = pool.unavailable() {
        crate::metrics::rejected("POOL_UNAVAILABLE");
        return Submitted::Other(vec!["unavailable".into(), why]);
    }
    let s = pool.store().clone();
    let params = Arc::new(params);
    // The memory store hashes big params off this thread; a shared store
    // needs the hash in the insert.
    let lazy = !unique && !s.shared() && params.len() > INLINE_HASH_BYTES;
    let id = Uuid::new_v4();
    let job = NewJob {
        id,
        params_hash: (!lazy).then(|| registry::sha256(&params)),
        operation,
        executor,
        params: params.clone(),
        timeout_ms: limit(timeout_ms),
        queue,
        priority,
        max_attempts: max_attempts.max(1) as u32,
        unique,
    };
    let op = job.operation.clone();
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
                registry::runtime().spawn_blocking(move || s.params_hashed(&id, registry::sha256(&params)));
            }
            Submitted::Accepted(id, typical.unwrap_or(30.0).round())
        }
        Ok((Submit::Full { limit }, _)) => Submitted::Other(vec!["full".into(), limit.to_string()]),
        Ok((Submit::Duplicate(existing), _)) => Submitted::Other(vec!["duplicate".into(), existing.to_string()]),
        Err(e) => {
            crate::metrics::rejected("STORE_UNAVAILABLE");
            Submitted::Other(vec!["store_error".into(), e.0])
        }
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
        SET_VECTOR_ELT(l, 1, rf::string(&e.0));
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

/// The unserialized `list(value, warnings)` a completed job sent, or NULL.
unsafe fn job_result(view: &JobView) -> SEXP {
    match view.job.result.as_deref() {
        Some(b) => rf::unserialize(b),
        None => nil(),
    }
}

/// get_job_status()'s list for a job in the store.
unsafe fn status_list(view: &JobView) -> SEXP {
    let job = &view.job;
    let estimate = estimate_seconds(job, view.typical, view.now);
    match job.status {
        Status::Pending => rf::named_list(
            "pending",
            &["job_id", "status", "step", "estimated_seconds", "retry_after", "position", "submitted_at"],
            |l| {
                SET_VECTOR_ELT(l, 0, rf::string(&job.id.to_string()));
                SET_VECTOR_ELT(l, 1, rf::string("pending"));
                SET_VECTOR_ELT(l, 2, rf::progress_message(&job.operation));
                SET_VECTOR_ELT(l, 3, rf::real(round_even(estimate)));
                SET_VECTOR_ELT(l, 4, rf::real(5.0));
                SET_VECTOR_ELT(l, 5, view.position.map_or_else(|| nil(), |p| rf::Rf_ScalarInteger(p as i32)));
                SET_VECTOR_ELT(l, 6, rf::posix(Some(job.submitted_at)));
            },
        ),
        Status::Running => rf::named_list(
            "running",
            &["job_id", "status", "step", "estimated_seconds", "retry_after", "progress", "started_at", "elapsed_seconds"],
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
unsafe extern "C" fn c_status(id: SEXP) -> SEXP {
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

/// This process loaded the package and a store is chosen.
fn ready() -> bool {
    std::process::id() == *OWNER && STORE_CHOSEN.load(std::sync::atomic::Ordering::Relaxed)
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
unsafe extern "C" fn c_wait(id: SEXP, wait_ms: SEXP) -> SEXP {
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
unsafe fn job_record(id: &Uuid) -> SEXP {
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
unsafe extern "C" fn c_duplicate(operation: SEXP, frame: SEXP) -> SEXP {
    let Some(operation) = rf::as_str(operation).filter(|_| ready() && rf::plain_utf8(operation)) else {
        return check_first();
    };
    let params = rf::serialize_params(rf::value_of(frame, c"params"));
    let found = guarded_value(move || {
        let hash = registry::sha256(&params);
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
unsafe extern "C" fn c_cleanup(max_age: SEXP, batch: SEXP) -> SEXP {
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
unsafe extern "C" fn c_cleanup_written(cutoff: SEXP) -> SEXP {
    owner_or_error();
    let cutoff = rf::as_f64(cutoff).unwrap_or(f64::NEG_INFINITY);
    let n = rf::JOBS_ENV.with(|e| e.borrow_mut().expire_written(cutoff));
    rf::real(n as f64)
}

extendr_module! {
    mod asyncjobs;
    use wire;
    fn aj_init;
    fn aj_open_store;
    fn aj_start;
    fn aj_drain;
    fn aj_busy;
    fn aj_wait_signal;
    fn aj_stop_begin;
    fn aj_stop_wait;
    fn aj_pool_info;
    fn aj_job;
    fn aj_wait;
    fn aj_cancel;
    fn aj_list;
    fn aj_workers;
    fn aj_tree_guard;
    fn aj_tree_job;
    fn aj_output;
    fn aj_hosts;
    fn aj_counts;
    fn aj_metrics;
}
