//! Plain job data: the ground floor every layer stands on.
//!
//! What a job is (its record, status, error and outcome), what is submitted
//! and claimed, the lease that fences a running job's writes, and the small
//! pure functions over them (hashes, the duplicate key, estimates). Nothing
//! here does I/O or knows a store, a pool or R.

use sha2::{Digest, Sha256};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;
use uuid::Uuid;

/// Captured output kept per job (the last bytes win).
pub const OUTPUT_LIMIT: usize = 64 * 1024;

pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// HMAC-SHA256 (RFC 2104) of `parts`, each prefixed by its length so
/// that no two lists of parts sign alike.
pub fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&sha256(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(k.map(|b| b ^ 0x36));
    for p in parts {
        inner.update((p.len() as u64).to_le_bytes());
        inner.update(p);
    }
    let mut outer = Sha256::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

/// What a shared store's hosts check before they unserialize a job's code
/// or params: the signature of the job's id, operation, code and params
/// under the key the API and the hosts share.
pub fn sign(key: &[u8], id: &Uuid, operation: &str, executor: &[u8], params: &[u8]) -> [u8; 32] {
    hmac(key, &[id.as_bytes(), operation.as_bytes(), executor, params])
}

/// Compares in constant time.
pub fn same_signature(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The id of the `n`th job a running job submits: the same on every run of
/// the parent, so that a retried parent finds the children its first run
/// made instead of making them twice.
pub fn child_id(parent: &Uuid, n: u32) -> Uuid {
    let h = hmac(parent.as_bytes(), &[b"asyncjobs child", &n.to_le_bytes()]);
    let mut b: [u8; 16] = h[..16].try_into().unwrap();
    b[6] = (b[6] & 0x0f) | 0x80; // version 8: made by the application
    b[8] = (b[8] & 0x3f) | 0x80;
    Uuid::from_bytes(b)
}

/// Hashes job ids. This process makes them at random (v4) and only looks up
/// the ids callers give, so a fold of the bytes spreads them as well as a
/// keyed hash, at a fraction of its cost.
#[derive(Clone, Copy, Default)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for c in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..c.len()].copy_from_slice(c);
            self.0 = (self.0 ^ u64::from_le_bytes(word)).wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(29);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// Hash maps and sets keyed by job id use this.
pub type IdHash = BuildHasherDefault<IdHasher>;

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Status {
    #[default]
    Pending,
    Running,
    Completed,
    Failed,
    Cancelled,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Running => "running",
            Status::Completed => "completed",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        [Status::Pending, Status::Running, Status::Completed, Status::Failed, Status::Cancelled]
            .into_iter()
            .find(|st| st.as_str() == s)
    }

    pub fn is_terminal(self) -> bool {
        !matches!(self, Status::Pending | Status::Running)
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Progress {
    pub step: Option<String>,
    pub current: Option<f64>,
    pub total: Option<f64>,
}

impl Progress {
    /// Fraction done in (0, 1], when current and total say so.
    pub fn fraction(&self) -> Option<f64> {
        match (self.current, self.total) {
            (Some(c), Some(t)) if t > 0.0 && c > 0.0 => Some((c / t).min(1.0)),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct JobError {
    /// Stable code: EXECUTION_ERROR, TIMEOUT, CANCELLED, WORKER_CRASHED, ...
    pub code: String,
    pub message: String,
    /// Serialized R list with call, class, traceback and warnings, when the worker sent one.
    pub detail: Option<Arc<[u8]>>,
}

impl JobError {
    pub fn new(code: &str, message: impl Into<String>) -> JobError {
        JobError { code: code.to_owned(), message: message.into(), detail: None }
    }
}

/// How a job ended.
#[derive(Clone, Debug)]
pub enum Outcome {
    /// Serialized `list(value, warnings)` from the worker.
    Completed(Vec<u8>),
    /// A handler job's result as JSON text, `{"value": ..., "warnings": [...]}`.
    CompletedJson(Vec<u8>),
    Failed(JobError),
    Cancelled,
}

impl Outcome {
    pub fn completed(&self) -> bool {
        matches!(self, Outcome::Completed(_) | Outcome::CompletedJson(_))
    }
}

/// A recurring job's firing: the schedule's name and the slot's time.
#[derive(Clone, Debug, PartialEq)]
pub struct Slot {
    pub schedule: String,
    pub at: f64,
}

/// A job as submitted by the API, a running job or a schedule.
#[derive(Clone, Debug, Default)]
pub struct NewJob {
    pub id: Uuid,
    pub operation: String,
    /// SHA-256 of `params`; None to let the store compute it when it needs
    /// it (the memory store: at the first duplicate check or status read
    /// that needs it, or when [`Store::params_hashed`] brings it).
    pub params_hash: Option<[u8; 32]>,
    /// Serialized executor function; empty for a handler job (one that
    /// runs the function registered under `operation`).
    pub executor: Vec<u8>,
    /// Serialized params, or JSON text when `params_json` (what
    /// `params_hash` hashes), shared with a hasher.
    pub params: Arc<Vec<u8>>,
    pub params_json: bool,
    pub timeout_ms: u64,
    pub queue: String,
    /// Higher runs first; FIFO within a priority.
    pub priority: i32,
    /// Runs allowed when a host is lost or stopped mid-job.
    pub max_attempts: u32,
    /// Refuse the job when an identical one is active, atomically with the insert.
    pub unique: bool,
    /// Seconds from the submit (on the store's clock) before it may run.
    pub delay: f64,
    /// Jobs that must complete first.
    pub depends_on: Vec<Uuid>,
    /// The job that submitted it, when a running job did.
    pub parent: Option<Uuid>,
    /// The schedule slot that fired it.
    pub slot: Option<Slot>,
    /// HMAC-SHA256 of the job's code and params under the shared key
    /// ([`sign`]), for a shared store.
    pub signature: Option<[u8; 32]>,
    /// Who submitted it (the API's caller), and labels to find it by.
    pub submitted_by: Option<String>,
    pub tags: Vec<String>,
    /// At most `concurrency_limit` jobs of this key run at once (anywhere).
    pub concurrency_key: Option<String>,
    pub concurrency_limit: u32,
    /// What `unique` compares: this key instead of operation and params.
    pub unique_key: Option<String>,
    /// With `unique`: a twin submitted this many seconds ago or less counts
    /// even when it has finished (a cached result); 0 for active twins only.
    pub unique_for: f64,
    /// With `unique`: a pending twin is cancelled and this job takes its place.
    pub replace: bool,
    /// With `unique`: no twin is looked for, but the job is the newest twin
    /// of its key (a rerun that later submits find).
    pub force: bool,
    /// Submit rate limits it is checked against, atomically with its insert.
    pub rates: Vec<Rate>,
    /// The pool that submitted it, for the event log.
    pub host: Option<String>,
}

/// At most `n` submits per `window` seconds for one caller or one operation.
#[derive(Clone, Debug, PartialEq)]
pub struct Rate {
    pub by: RateBy,
    pub n: u32,
    pub window: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RateBy {
    /// Per `submitted_by` (jobs without one are not limited by it).
    Caller,
    Operation,
}

impl RateBy {
    pub fn as_str(self) -> &'static str {
        match self {
            RateBy::Caller => "submitted_by",
            RateBy::Operation => "operation",
        }
    }
}

/// A transition of a job, as its event log keeps it.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// Seconds since the epoch, on the store's clock.
    pub at: f64,
    /// submitted, scheduled, claimed, progress, retried, rescued,
    /// cancelled, completed, failed.
    pub kind: String,
    /// The pool that made it (its host id), when one did.
    pub host: Option<String>,
    pub attempt: u32,
    pub detail: Option<String>,
}

/// A cancelled job's error message, naming who cancelled it when known.
pub fn cancelled_message(by: Option<&str>) -> String {
    match by {
        Some(b) => format!("Job was cancelled by {b}"),
        None => "Job was cancelled".into(),
    }
}

/// A progress event's detail: the step, and "current/total" when known.
pub fn progress_detail(p: &Progress) -> Option<String> {
    let count = match (p.current, p.total) {
        (Some(c), Some(t)) => Some(format!("{c}/{t}")),
        (Some(c), None) => Some(format!("{c}")),
        _ => None,
    };
    match (p.step.as_deref(), count) {
        (Some(s), Some(c)) => Some(format!("{s} ({c})")),
        (Some(s), None) => Some(s.to_owned()),
        (None, c) => c,
    }
}

/// The key under which `unique` jobs meet their twins: the caller's
/// `unique_key` when given, else the operation and the params' hash.
pub fn twin_key(job: &NewJob) -> [u8; 32] {
    match &job.unique_key {
        Some(k) => duplicate_key(&job.operation, &sha256(k.as_bytes())),
        None => duplicate_key(&job.operation, &job.hash()),
    }
}

impl NewJob {
    /// The params hash, computed now if it was not given.
    pub fn hash(&self) -> [u8; 32] {
        self.params_hash.unwrap_or_else(|| sha256(&self.params))
    }
}

/// One job's record. Cheap to clone: no payload, no output.
#[derive(Clone, Debug, Default)]
pub struct Job {
    pub id: Uuid,
    pub operation: Arc<str>,
    pub params_hash: [u8; 32],
    pub status: Status,
    pub queue: Arc<str>,
    pub priority: i32,
    pub submitted_at: f64,
    pub started_at: Option<f64>,
    pub completed_at: Option<f64>,
    pub timeout_ms: u64,
    pub attempts: u32,
    pub max_attempts: u32,
    pub result: Option<Arc<[u8]>>,
    pub error: Option<Box<JobError>>,
    pub progress: Option<Box<Progress>>,
    pub worker_pid: Option<u32>,
    /// The host holding the job's lease while it runs.
    pub host: Option<Arc<str>>,
    /// The result is JSON text (`Outcome::CompletedJson`), not R's serialization.
    pub result_json: bool,
    /// A handler job (no executor of its own).
    pub handler: bool,
    /// The job that submitted it.
    pub parent: Option<Uuid>,
    /// When a delayed (or retried) job may run, if later than its submit.
    pub run_at: Option<f64>,
    /// Dependencies not completed yet; it stays pending while any remains.
    pub waiting: u32,
    /// Jobs it submitted while running.
    pub children: u32,
    /// The schedule that fired it, and the slot it fired it for.
    pub schedule: Option<Arc<str>>,
    pub slot_at: Option<f64>,
    /// Who submitted it, and its labels.
    pub submitted_by: Option<Arc<str>>,
    pub tags: Vec<Arc<str>>,
    /// At most `concurrency_limit` jobs of this key run at once.
    pub concurrency_key: Option<Arc<str>>,
    pub concurrency_limit: u32,
}

impl Job {
    pub fn duration(&self) -> Option<f64> {
        Some(self.completed_at? - self.started_at?)
    }
}

/// A job as a status read sees it, with what the store knows around it.
#[derive(Clone, Debug)]
pub struct JobView {
    pub job: Job,
    /// 1-based place among the pending jobs of its queue.
    pub position: Option<usize>,
    /// Median duration of recent completed jobs of the operation.
    pub typical: Option<f64>,
    /// The store's clock at the read.
    pub now: f64,
    /// The dependencies it still waits for (pending jobs only).
    pub waiting_for: Vec<Uuid>,
    /// The jobs it submitted while running, oldest first.
    pub children: Vec<Uuid>,
}

/// A claim on a running job: its id and the token current when it was taken.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Lease {
    pub id: Uuid,
    pub token: i64,
}

/// A job claimed by a host, with what its worker needs.
#[derive(Clone, Debug, Default)]
pub struct Claimed {
    pub lease: Lease,
    pub operation: Arc<str>,
    pub executor: Arc<Vec<u8>>,
    pub params: Arc<Vec<u8>>,
    pub params_json: bool,
    pub timeout_ms: u64,
    pub queue: Arc<str>,
    /// This run's number, from 1.
    pub attempt: u32,
    pub parent: Option<Uuid>,
    pub signature: Option<[u8; 32]>,
}

impl Claimed {
    /// Whether the job carries R's serialization (code, or params that are
    /// not JSON), which a shared store's host unserializes only when signed.
    pub fn serialized(&self) -> bool {
        !self.executor.is_empty() || !self.params_json
    }
}

/// What a running job reported since the last write.
#[derive(Default)]
pub struct Report<'a> {
    pub pid: Option<u32>,
    pub progress: Option<&'a Progress>,
    /// The whole captured tail, replacing what was stored.
    pub output: Option<&'a [u8]>,
    /// Also log the progress as an event (the pool samples which reports do).
    pub event: bool,
}

#[derive(Debug, PartialEq)]
pub enum Submit {
    Accepted,
    /// `limit` jobs are pending or running already.
    Full { limit: usize },
    /// `unique = TRUE` and this identical job is active.
    Duplicate(Uuid),
    /// A job it depends on does not exist.
    UnknownDependency(Uuid),
    /// A handler job whose operation no host has a handler for.
    UnknownOperation,
    /// A submit rate limit is reached: the next submit may pass in this
    /// many seconds; which limit.
    RateLimited { retry_after: f64, by: RateBy },
    /// A job carrying R's serialization for a shared store, with no key to sign it.
    NotSigned,
}

#[derive(Debug, PartialEq)]
pub enum Cancel {
    NotFound,
    Finished(Status),
    WasPending,
    /// The job was running under this lease: its host must stop the worker.
    WasRunning(Lease),
}

/// What an admin's retry of a job did.
#[derive(Debug, PartialEq)]
pub enum Retry {
    /// The job is pending again, under its id, with its attempts counted anew.
    Retried,
    NotFound,
    /// Only failed jobs are retried.
    NotFailed(Status),
    /// Its code and params are no longer stored (a job of an older release).
    NoPayload,
}

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Counts {
    pub pending: usize,
    pub running: usize,
    pub total: usize,
}

/// Median of recent durations, or None.
pub fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len() % 2 == 1 { v[mid] } else { (v[mid - 1] + v[mid]) / 2.0 })
}

/// The key under which an active job blocks its unique twins.
pub fn duplicate_key(operation: &str, params_hash: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(operation.as_bytes());
    h.update([0u8]);
    h.update(params_hash);
    h.finalize().into()
}

/// Seconds a client should expect to wait, from history and progress.
///
/// With neither, the contract's rule: 30 s at accept, the timeout minus the
/// time elapsed while running.
pub fn estimate_seconds(job: &Job, typical: Option<f64>, now: f64) -> f64 {
    let timeout_s = job.timeout_ms as f64 / 1000.0;
    let elapsed = job.started_at.map(|s| (now - s).max(0.0));
    let fraction = job.progress.as_ref().and_then(|p| p.fraction());
    let estimate = match (job.status, elapsed, fraction, typical) {
        // Progress needs some run time before its rate means anything.
        (Status::Running, Some(e), Some(f), _) if e >= 1.0 => e * (1.0 - f) / f,
        (Status::Running, Some(e), _, Some(t)) => (t - e).max(1.0),
        (Status::Running, Some(e), _, None) => timeout_s - e,
        (Status::Pending, _, _, Some(t)) => t,
        (Status::Pending, _, _, None) => 30.0,
        _ => 0.0,
    };
    estimate.max(0.0)
}
