//! Where jobs live: the [`Store`] trait, the one seam between the core and
//! its storage, with the host registry's records.
//!
//! A store is [`memory::MemoryStore`] in this process (the fast default) or
//! `sql::SqlStore` in a database shared by processes and hosts. Both speak
//! this async trait, so the pool and the R boundary never know which one they
//! hold. Every job a pool runs is held through a [`Lease`]: the job id plus a
//! token the store increments at each claim, cancel or rescue. Writes about a
//! running job (progress, output, outcome) name the lease and change nothing
//! when it is no longer current, so a host that lost a job can never
//! overwrite what happened to it since.
//!
//! Owns: the trait and its error, host records. May import: `job`, `sys`,
//! `metrics`. Its modules: `memory` (with `finished`, its log of finished
//! records) and `sql`.

pub mod finished;
pub mod memory;
#[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
pub mod sql;

use crate::job::{Cancel, Claimed, Counts, Job, JobError, JobView, Lease, NewJob, Outcome, Report, Status, Submit};
use crate::schedule::Schedule;
use async_trait::async_trait;
use std::time::Duration;
use tokio::sync::Notify;
use uuid::Uuid;

/// Why a store call failed: a fault that may pass (retry later), or a
/// refusal of what was sent (the same call fails again).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Fault {
    /// Not reached, no answer in time, or a failure a retry may fix.
    Unavailable,
    /// A value is larger than the store takes; its limit in bytes, when known.
    TooLarge(Option<u64>),
    /// A value the store refuses for good (too long for its column, say).
    Invalid,
}

/// A failed store call. The message never contains credentials.
///
/// Build the transient kind with [`StoreError::unavailable`] (or the
/// function [`StoreError()`], the same thing).
#[derive(Clone, Debug, PartialEq)]
pub struct StoreError {
    pub fault: Fault,
    pub message: String,
}

impl StoreError {
    pub fn unavailable(message: impl Into<String>) -> StoreError {
        StoreError { fault: Fault::Unavailable, message: message.into() }
    }

    pub fn too_large(message: impl Into<String>, limit: Option<u64>) -> StoreError {
        StoreError { fault: Fault::TooLarge(limit), message: message.into() }
    }

    pub fn invalid(message: impl Into<String>) -> StoreError {
        StoreError { fault: Fault::Invalid, message: message.into() }
    }

    /// True when a later retry of the same call may succeed.
    pub fn is_transient(&self) -> bool {
        self.fault == Fault::Unavailable
    }
}

/// A transient store error (the store could not be reached): what
/// `StoreError(message)` built when the error was a plain message.
#[allow(non_snake_case)]
pub fn StoreError(message: String) -> StoreError {
    StoreError::unavailable(message)
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Which jobs a listing keeps. It grows by fields (more criteria); the
/// default keeps every job.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct JobFilter {
    /// Jobs with one of these statuses; None for any (an empty list keeps none).
    pub statuses: Option<Vec<Status>>,
    /// Jobs of one of these operations; None for any.
    pub operations: Option<Vec<String>>,
}

impl JobFilter {
    /// Whether the filter keeps a job with this status and operation.
    pub fn keeps(&self, status: Status, operation: &str) -> bool {
        self.statuses.as_ref().is_none_or(|s| s.contains(&status))
            && self.operations.as_ref().is_none_or(|o| o.iter().any(|x| x == operation))
    }

    /// Whether some job with one of `statuses` may pass.
    pub fn keeps_any(&self, statuses: &[Status]) -> bool {
        statuses.iter().any(|st| self.statuses.as_ref().is_none_or(|s| s.contains(st)))
    }
}

/// One page of a listing, in submit order: the store filters, sorts and
/// limits, so a listing costs the page, not the store.
#[derive(Clone, Debug)]
pub struct ListQuery {
    pub filter: JobFilter,
    /// Newest submitted first; else oldest first.
    pub newest_first: bool,
    /// Jobs in the page at most.
    pub limit: usize,
    /// The `next` of the page before: this page starts after it.
    pub after: Option<String>,
}

#[derive(Clone, Debug, Default)]
pub struct Page {
    pub jobs: Vec<Job>,
    /// Where the next page starts, opaque; None when this page is the last.
    pub next: Option<String>,
}

/// A pool as the store's host registry sees it.
#[derive(Clone, Debug)]
pub struct HostInfo {
    /// Unique per pool start; owns the leases the pool takes.
    pub id: String,
    pub hostname: String,
    pub pid: u32,
    pub slots: usize,
    pub queues: Vec<String>,
    /// The operations it has handlers for (`register_job()`).
    pub operations: Vec<String>,
}

impl HostInfo {
    pub fn this_process(slots: usize, queues: Vec<String>, operations: Vec<String>) -> HostInfo {
        let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "unknown".into());
        HostInfo { id: Uuid::new_v4().to_string(), hostname, pid: std::process::id(), slots, queues, operations }
    }

    /// Whether it runs handler jobs of `operation` from `queue`.
    pub fn serves(&self, operation: &str, queue: &str) -> bool {
        self.slots > 0 && self.queues.iter().any(|q| q == queue) && self.operations.iter().any(|o| o == operation)
    }
}

/// What [`Store::put_schedule`] did.
#[derive(Clone, Debug, PartialEq)]
pub enum PutSchedule {
    Created,
    /// The same definition was there already: nothing changed.
    Unchanged,
    Replaced,
    /// Another definition has the name (and `replace` was not asked).
    Taken(Box<Schedule>),
}

/// A pool as the host registry shows it.
#[derive(Clone, Debug)]
pub struct HostView {
    pub info: HostInfo,
    pub version: String,
    pub started_at: f64,
    pub heartbeat_at: f64,
    pub stopped_at: Option<f64>,
    /// Jobs running under its leases.
    pub running: usize,
    /// "live", "lost" (no heartbeat within a lease) or "stopped".
    pub state: &'static str,
}

/// Why a pool must not start next to the live hosts of the store, if it
/// must not: they run another asyncjobs release (major.minor), and hosts of
/// one store must agree on how they use it.
pub async fn check_version(store: &dyn Store) -> StoreResult<Option<String>> {
    let mine = env!("CARGO_PKG_VERSION");
    let release = |v: &str| v.split('.').take(2).collect::<Vec<_>>().join(".");
    let others: Vec<String> = store
        .hosts()
        .await?
        .into_iter()
        .filter(|h| h.state == "live" && release(&h.version) != release(mine))
        .map(|h| format!("{} (pid {}) runs {}", h.info.hostname, h.info.pid, h.version))
        .collect();
    Ok((!others.is_empty()).then(|| {
        format!(
            "this is asyncjobs {mine}, but live hosts of the store run another release: {}. \
             Every host of a store runs one release: drain and stop the others first (see the README, rolling upgrades)",
            others.join("; ")
        )
    }))
}

/// News from a store that pushes it (PostgreSQL's NOTIFY): a wake-up,
/// never a source of truth; pools poll anyway.
#[derive(Clone, Debug, PartialEq)]
pub enum Signal {
    Submitted,
    Cancelled(Uuid),
}

/// Where job records live.
///
/// Every method is async: the memory store answers at once, a SQL store runs
/// its statements on the I/O runtime with a bound on each call. `host` is
/// the [`HostInfo::id`] of the calling pool.
#[async_trait]
pub trait Store: Send + Sync {
    /// "memory", or the store's URL without credentials.
    fn describe(&self) -> String;
    /// True when other processes may read and run the same jobs.
    fn shared(&self) -> bool;
    /// How often a running job's progress and output are written; zero for at once.
    fn report_interval(&self) -> Duration;
    /// Submits and cancels as they happen in other processes, when the store can push them.
    fn signals(&self) -> Option<tokio::sync::broadcast::Receiver<Signal>> {
        None
    }
    /// Adds a pending job unless `limit` jobs are pending or running (or a
    /// unique job's twin is active), atomically.
    async fn submit(&self, job: NewJob, limit: usize) -> StoreResult<Submit>;
    /// The hash of a job submitted without one, computed elsewhere.
    fn params_hashed(&self, _id: &Uuid, _hash: [u8; 32]) {}
    /// Computes now the params hash of a job submitted without one, so that
    /// the next read shows it (reads themselves never hash).
    fn hash_now(&self, _id: &Uuid) {}
    /// A job's record; the result and error detail only when `with_result`.
    async fn get(&self, id: &Uuid, with_result: bool) -> StoreResult<Option<JobView>>;
    /// The pending or running job with this operation and params hash.
    async fn find_active(&self, operation: &str, params_hash: &[u8; 32]) -> StoreResult<Option<Uuid>>;
    async fn counts(&self) -> StoreResult<Counts>;
    async fn typical_duration(&self, operation: &str) -> StoreResult<Option<f64>>;
    /// Moves up to `k` pending jobs of `queues` to running under leases of `host`:
    /// higher priority first, then oldest first.
    async fn claim(&self, host: &str, queues: &[String], k: usize) -> StoreResult<Vec<Claimed>>;
    /// Records progress, output or the worker pid; false once the lease is lost.
    async fn report(&self, lease: &Lease, report: Report<'_>) -> StoreResult<bool>;
    async fn output(&self, id: &Uuid) -> StoreResult<Option<Vec<u8>>>;
    /// Ends a job held under `lease`; false if the lease is no longer current
    /// (first outcome wins).
    async fn finish(&self, lease: &Lease, outcome: &Outcome, output: Option<&[u8]>) -> StoreResult<bool>;
    async fn cancel(&self, id: &Uuid) -> StoreResult<Cancel>;
    /// How long a lease lasts without renewal.
    fn lease(&self) -> Duration {
        Duration::from_secs(15)
    }
    /// Renews the leases `held` that `host` still holds (and its heartbeat);
    /// returns those. A lease the host no longer names is left to expire.
    async fn renew(&self, host: &str, held: &[Lease]) -> StoreResult<Vec<Lease>>;
    /// Fails (or re-queues, when attempts remain) running jobs whose lease
    /// expired, naming the lost host. Returns the ids.
    async fn rescue(&self) -> StoreResult<Vec<Uuid>>;
    /// A pool stops: its running jobs fail with `error` or go back to the
    /// queue when attempts remain; with `pending`, pending jobs fail too.
    async fn release(&self, host: &str, error: &JobError, pending: bool) -> StoreResult<Vec<Uuid>>;
    /// Removes up to `batch` finished jobs that ended more than `max_age` seconds ago.
    async fn cleanup(&self, max_age: f64, batch: usize) -> StoreResult<Vec<Uuid>>;
    /// A page of the jobs `query` keeps (records without result or detail).
    /// A cursor this store did not make is refused ([`Fault::Invalid`]).
    async fn list(&self, query: &ListQuery) -> StoreResult<Page>;
    /// Adds a recurring job, or replaces the one of that name when `replace`.
    async fn put_schedule(&self, schedule: &Schedule, replace: bool) -> StoreResult<PutSchedule>;
    /// Removes a recurring job; false if there was none of that name.
    async fn drop_schedule(&self, name: &str) -> StoreResult<bool>;
    /// Every recurring job, the next to fire first.
    async fn schedules(&self) -> StoreResult<Vec<Schedule>>;
    /// Fires `jobs` for slots of `schedule` (each a job with its `slot`),
    /// each slot once however many hosts fire it, and moves its next slot
    /// from `next_at` to `next`. Returns how many jobs this call added.
    async fn fire(&self, schedule: &str, next_at: f64, next: f64, jobs: Vec<NewJob>) -> StoreResult<usize>;
    /// When the next delayed job of this store becomes due, if it knows
    /// (the memory store, whose pool then needs no poll).
    fn next_due(&self) -> Option<f64> {
        None
    }
    /// How many jobs became ready to run since the last call because the
    /// jobs they waited for completed (the memory store, whose idle slots
    /// are then woken; a shared store's claimer polls).
    fn take_readied(&self) -> usize {
        0
    }
    async fn register_host(&self, host: &HostInfo) -> StoreResult<()>;
    async fn deregister_host(&self, host: &str) -> StoreResult<()>;
    /// Every pool registered in the store, oldest first.
    async fn hosts(&self) -> StoreResult<Vec<HostView>>;
    /// Woken whenever a job ends through this handle (finish, cancel, release).
    fn ended(&self) -> &Notify;
    /// How often a waiter re-reads a job that may end in another process;
    /// None when every end goes through this handle.
    fn poll_interval(&self) -> Option<Duration>;
    /// Waits at most `timeout` for the job to end; true once it has (or is unknown).
    async fn wait_finished(&self, id: &Uuid, timeout: Duration) -> StoreResult<bool> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let ended = self.ended().notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            let done = self.get(id, false).await?.map_or(true, |v| v.job.status.is_terminal());
            let now = tokio::time::Instant::now();
            if done || now >= deadline {
                return Ok(done);
            }
            let wake = self.poll_interval().map_or(deadline, |p| deadline.min(now + p));
            tokio::select! {
                _ = ended => {}
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
    }
}

