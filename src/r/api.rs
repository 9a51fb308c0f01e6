//! The extendr calls: the R API's less frequent calls (stores, pools,
//! listings, metrics) and the worker's guard, with extendr's conversions.
//!
//! The R layer (R/*.R) validates arguments and raises classed conditions;
//! these functions trust their types. Each refuses to run in a forked child
//! of the process that loaded the package: a fork has no pool thread.
//!
//! May import: `job`, `sys`, `metrics`, `store`, `pool`, and
//! `r::{fast, session, calls, wire}`.

use super::calls::job_record;
use super::fast as rf;
use super::session::{limit, ms, parse_id, store, OWNER, POOL, STORE, STORE_CHOSEN};
use super::wire;
use crate::job::{estimate_seconds, hex, Cancel, Job, Status};
use crate::pool::worker::Spec;
use crate::pool::{Config, Pool, SlotInfo, SlotState};
use crate::schedule::{Missed, Schedule, Timing};
use crate::store::{memory::MemoryStore, HostView, JobFilter, ListQuery, PutSchedule, Store, StoreError};
use crate::sys::block_on;
use extendr_api::prelude::*;
use extendr_api::Result;
use std::sync::Arc;
use std::time::Duration;

fn check_owner() -> Result<()> {
    if std::process::id() != *OWNER {
        return Err(Error::Other(
            "asyncjobs cannot be used from a forked child process (for example inside parallel::mclapply)".into(),
        ));
    }
    Ok(())
}

/// A store failure as R sees it: the message, classed, for R to turn into
/// `list(error = "STORE_UNAVAILABLE", ...)`; a refusal of what was sent
/// (a bad cursor, say) is also of class asyncjobs_store_refused.
fn store_error(e: StoreError) -> Robj {
    let transient = e.is_transient();
    let mut r = Robj::from(e.message);
    let _ = if transient {
        r.set_class(&["asyncjobs_store_error"])
    } else {
        r.set_class(&["asyncjobs_store_refused", "asyncjobs_store_error"])
    };
    r
}

fn or_store_error(r: std::result::Result<Robj, StoreError>) -> Result<Robj> {
    Ok(r.unwrap_or_else(store_error))
}

fn raw<'a>(x: &'a Robj, what: &str) -> Result<&'a [u8]> {
    x.as_raw_slice().ok_or_else(|| Error::Other(format!("{what} must be a raw vector")))
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
        Err(e) => vec!["error".into(), e.message],
    })
}

#[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
fn open_sql(url: &str, timeout: Duration, lease: Duration) -> std::result::Result<Arc<dyn Store>, StoreError> {
    Ok(Arc::new(crate::store::sql::SqlStore::open(url, timeout, lease)?))
}

#[cfg(not(any(feature = "sqlite", feature = "postgres", feature = "mysql")))]
fn open_sql(_: &str, _: Duration, _: Duration) -> std::result::Result<Arc<dyn Store>, StoreError> {
    Err(StoreError::unavailable("this build of asyncjobs has no database drivers"))
}

/// Called from .onLoad: records the owning process, keeps `.state` (for the
/// progress messages) and makes `jobs_env` the jobs database.
#[extendr]
fn aj_init(state: Robj, jobs_env: Robj) -> Robj {
    let _ = *OWNER;
    unsafe {
        rf::set_state_env(state.get());
        rf::init_jobs_env(jobs_env.get(), job_record);
    }
    ().into()
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
    operations: Vec<String>,
    key: Robj,
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
        operations,
        key: key.as_raw_slice().filter(|k| !k.is_empty()).map(<[u8]>::to_vec),
    };
    let s = store();
    match block_on(crate::store::check_version(s.as_ref())) {
        Err(e) => return Ok(vec!["store_unavailable".into(), e.message]),
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

const JOB_FIELDS: [&str; 30] = [
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
    "result_json",
    "handler",
    "parent_id",
    "run_at",
    "waiting",
    "children",
    "schedule",
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
            job.result_json.into(),
            job.handler.into(),
            job.parent.map_or_else(null, |p| p.to_string().into()),
            job.run_at.map_or_else(null, Robj::from),
            (job.waiting as i32).into(),
            view.children.iter().map(|c| c.to_string()).collect::<Vec<_>>().into(),
            job.schedule.as_deref().map_or_else(null, Robj::from),
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
        Err(e) => vec!["store_error".into(), e.message],
    })
}

/// A page of the jobs as columns, and `next_cursor` (NULL after the last
/// page): `statuses` and `operations` NULL for any; unknown statuses match
/// nothing. A store error, also for a cursor the store did not make.
#[extendr]
fn aj_list(statuses: Robj, operations: Robj, max_jobs: f64, cursor: Robj, newest_first: bool) -> Result<Robj> {
    check_owner()?;
    let strings = |x: &Robj| -> Option<Vec<String>> {
        (!x.is_null()).then(|| x.as_str_vector().unwrap_or_default().into_iter().map(str::to_owned).collect())
    };
    let query = ListQuery {
        filter: JobFilter {
            statuses: strings(&statuses).map(|v| v.iter().filter_map(|s| Status::parse(s)).collect()),
            operations: strings(&operations),
        },
        newest_first,
        limit: limit(max_jobs).min(usize::MAX as u64) as usize,
        after: cursor.as_str().map(str::to_owned),
    };
    let page = match block_on(store().list(&query)) {
        Ok(p) => p,
        Err(e) => return Ok(store_error(e)),
    };
    let jobs = &page.jobs;
    let strs = |f: &dyn Fn(&Job) -> Option<String>| -> Robj {
        jobs.iter().map(f).collect::<Vec<Option<String>>>().into()
    };
    let nums = |f: &dyn Fn(&Job) -> Option<f64>| -> Robj {
        jobs.iter().map(f).collect::<Vec<Option<f64>>>().into()
    };
    Ok(named(
        &["job_id", "operation", "status", "submitted_at", "started_at", "completed_at", "error_code", "queue", "priority", "parent_id", "schedule", "slot_at", "next_cursor"],
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
            strs(&|j| j.parent.map(|p| p.to_string())),
            strs(&|j| j.schedule.as_deref().map(str::to_owned)),
            nums(&|j| j.slot_at),
            page.next.map_or_else(|| ().into(), Robj::from),
        ],
    ))
}

/// The pool's slots as columns.
#[extendr]
fn aj_workers() -> Result<Robj> {
    check_owner()?;
    let slots = POOL.lock().as_ref().map(Pool::workers).unwrap_or_default();
    let col_i = |f: &dyn Fn(&SlotInfo) -> Option<f64>| -> Robj {
        slots.iter().map(f).collect::<Vec<Option<f64>>>().into()
    };
    let col_s = |f: &dyn Fn(&SlotInfo) -> Option<String>| -> Robj {
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
    match crate::pool::reaper::arm_guard() {
        Ok(m) => m.name().to_owned(),
        Err(e) => format!("error: {e}"),
    }
}

/// In a worker, around each job: `TRUE` notes the processes already there;
/// `FALSE` kills (and reaps) those the job started. FALSE when some are left.
#[extendr]
fn aj_tree_job(begin: bool) -> bool {
    if begin {
        crate::pool::reaper::job_begin();
        true
    } else {
        crate::pool::reaper::job_end()
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
    let strs = |f: &dyn Fn(&HostView) -> String| -> Robj { hosts.iter().map(f).collect::<Vec<String>>().into() };
    let nums = |f: &dyn Fn(&HostView) -> Option<f64>| -> Robj {
        hosts.iter().map(f).collect::<Vec<Option<f64>>>().into()
    };
    Ok(named(
        &["host_id", "hostname", "pid", "slots", "queues", "operations", "version", "state", "running", "started_at", "heartbeat_at", "stopped_at"],
        vec![
            strs(&|h| h.info.id.clone()),
            strs(&|h| h.info.hostname.clone()),
            nums(&|h| Some(h.info.pid as f64)),
            nums(&|h| Some(h.info.slots as f64)),
            strs(&|h| h.info.queues.join(",")),
            strs(&|h| h.info.operations.join(",")),
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

/// Whether a handler job of `operation` from `queue` has somewhere to run
/// (this pool's workers, or a host of the store): TRUE, FALSE, or a store
/// error; NA when no pool runs.
#[extendr]
fn aj_knows(operation: &str, queue: &str) -> Result<Robj> {
    check_owner()?;
    let pool = POOL.lock();
    let Some(p) = pool.as_ref() else { return Ok(Robj::from(Rbool::na())) };
    or_store_error(block_on(p.knows(operation, queue)).map(Robj::from))
}

/// NULL when `cron` parses in the time zone `tz`, else why not.
#[extendr]
fn aj_cron_check(cron: &str, tz: &str) -> Robj {
    match Timing::parse(cron, tz) {
        Ok(_) => ().into(),
        Err(why) => why.into(),
    }
}

/// The next `n` slots of `cron` in `tz` after `from` (seconds since the epoch).
#[extendr]
fn aj_cron_next(cron: &str, tz: &str, from: f64, n: i32) -> Vec<f64> {
    let Ok(t) = Timing::parse(cron, tz) else { return Vec::new() };
    let mut out = Vec::new();
    let mut at = from;
    for _ in 0..n.max(0) {
        match t.next_after(at) {
            Some(next) => {
                out.push(next);
                at = next;
            }
            None => break,
        }
    }
    out
}

/// Adds (or with `replace`, replaces) a recurring job. c("created" |
/// "unchanged" | "replaced" | "taken" | "bad_cron" | "store_error", detail).
#[extendr]
#[allow(clippy::too_many_arguments)]
fn aj_schedule_put(
    name: &str,
    cron: &str,
    tz: &str,
    operation: &str,
    params_json: &str,
    queue: &str,
    priority: i32,
    timeout_ms: f64,
    max_attempts: i32,
    missed: &str,
    replace: bool,
) -> Result<Vec<String>> {
    check_owner()?;
    let timing = match Timing::parse(cron, tz) {
        Ok(t) => t,
        Err(why) => return Ok(vec!["bad_cron".into(), why]),
    };
    let now = crate::sys::now();
    let schedule = Schedule {
        name: name.to_owned(),
        cron: cron.to_owned(),
        tz: tz.to_owned(),
        operation: operation.to_owned(),
        params: params_json.as_bytes().to_vec(),
        queue: queue.to_owned(),
        priority,
        timeout_ms: limit(timeout_ms),
        max_attempts: max_attempts.max(1) as u32,
        missed: Missed::parse(missed).unwrap_or_default(),
        next_at: timing.next_after(now).unwrap_or(f64::INFINITY),
        last_at: None,
        created_at: now,
    };
    let r = block_on(store().put_schedule(&schedule, replace));
    if matches!(r, Ok(PutSchedule::Created | PutSchedule::Replaced)) {
        if let Some(p) = POOL.lock().as_ref() {
            p.schedules_changed();
        }
    }
    Ok(match r {
        Ok(PutSchedule::Created) => vec!["created".into()],
        Ok(PutSchedule::Unchanged) => vec!["unchanged".into()],
        Ok(PutSchedule::Replaced) => vec!["replaced".into()],
        Ok(PutSchedule::Taken(old)) => vec!["taken".into(), format!("{} {} ({})", old.operation, old.cron, old.tz)],
        Err(e) => vec!["store_error".into(), e.message],
    })
}

/// Removes a recurring job: TRUE, FALSE (no such name) or a store error.
#[extendr]
fn aj_schedule_drop(name: &str) -> Result<Robj> {
    check_owner()?;
    or_store_error(block_on(store().drop_schedule(name)).map(Robj::from))
}

/// Every recurring job, as columns, the next to fire first.
#[extendr]
fn aj_schedules() -> Result<Robj> {
    check_owner()?;
    let all = match block_on(store().schedules()) {
        Ok(s) => s,
        Err(e) => return Ok(store_error(e)),
    };
    let strs = |f: &dyn Fn(&Schedule) -> String| -> Robj { all.iter().map(f).collect::<Vec<String>>().into() };
    let nums = |f: &dyn Fn(&Schedule) -> Option<f64>| -> Robj { all.iter().map(f).collect::<Vec<Option<f64>>>().into() };
    Ok(named(
        &["name", "cron", "tz", "operation", "params", "queue", "priority", "timeout_ms", "max_attempts", "missed", "next_at", "last_at", "created_at"],
        vec![
            strs(&|s| s.name.clone()),
            strs(&|s| s.cron.clone()),
            strs(&|s| s.tz.clone()),
            strs(&|s| s.operation.clone()),
            strs(&|s| String::from_utf8_lossy(&s.params).into_owned()),
            strs(&|s| s.queue.clone()),
            nums(&|s| Some(s.priority as f64)),
            nums(&|s| Some(s.timeout_ms as f64)),
            nums(&|s| Some(s.max_attempts as f64)),
            strs(&|s| s.missed.as_str().to_owned()),
            nums(&|s| s.next_at.is_finite().then_some(s.next_at)),
            nums(&|s| s.last_at),
            nums(&|s| Some(s.created_at)),
        ],
    ))
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
    fn aj_knows;
    fn aj_cron_check;
    fn aj_cron_next;
    fn aj_schedule_put;
    fn aj_schedule_drop;
    fn aj_schedules;
}
