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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
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
    Failed(JobError),
    Cancelled,
}

/// A job as submitted by the API.
pub struct NewJob {
    pub id: Uuid,
    pub operation: String,
    /// SHA-256 of `params`; None to let the store compute it when it needs
    /// it (the memory store: at the first duplicate check or status read
    /// that needs it, or when [`Store::params_hashed`] brings it).
    pub params_hash: Option<[u8; 32]>,
    /// Serialized executor function.
    pub executor: Vec<u8>,
    /// Serialized params (what `params_hash` hashes), shared with a hasher.
    pub params: Arc<Vec<u8>>,
    pub timeout_ms: u64,
    pub queue: String,
    /// Higher runs first; FIFO within a priority.
    pub priority: i32,
    /// Runs allowed when a host is lost or stopped mid-job.
    pub max_attempts: u32,
    /// Refuse the job when an identical one is active, atomically with the insert.
    pub unique: bool,
}

impl NewJob {
    /// The params hash, computed now if it was not given.
    pub fn hash(&self) -> [u8; 32] {
        self.params_hash.unwrap_or_else(|| sha256(&self.params))
    }
}

/// One job's record. Cheap to clone: no payload, no output.
#[derive(Clone, Debug)]
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
}

/// A claim on a running job: its id and the token current when it was taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Lease {
    pub id: Uuid,
    pub token: i64,
}

/// A job claimed by a host, with what its worker needs.
pub struct Claimed {
    pub lease: Lease,
    pub operation: Arc<str>,
    pub executor: Vec<u8>,
    pub params: Arc<Vec<u8>>,
    pub timeout_ms: u64,
}

/// What a running job reported since the last write.
#[derive(Default)]
pub struct Report<'a> {
    pub pid: Option<u32>,
    pub progress: Option<&'a Progress>,
    /// The whole captured tail, replacing what was stored.
    pub output: Option<&'a [u8]>,
}

#[derive(Debug, PartialEq)]
pub enum Submit {
    Accepted,
    /// `limit` jobs are pending or running already.
    Full { limit: usize },
    /// `unique = TRUE` and this identical job is active.
    Duplicate(Uuid),
}

#[derive(Debug, PartialEq)]
pub enum Cancel {
    NotFound,
    Finished(Status),
    WasPending,
    /// The job was running under this lease: its host must stop the worker.
    WasRunning(Lease),
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
