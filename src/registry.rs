//! The job registry: one record per job, behind the [`Store`] trait.
//!
//! [`MemoryStore`] keeps everything in hash maps so that lookup by id, the
//! duplicate check and capacity counting are O(1). Payloads (the serialized
//! executor and params) and captured output live beside the records, so a
//! status snapshot clones only small fields. [`Registry`] wraps a store in a
//! mutex and a condition variable that wakes waiters when a job finishes.

use parking_lot::{Condvar, Mutex};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use uuid::Uuid;

/// Captured output kept per job (the last bytes win).
pub const OUTPUT_LIMIT: usize = 64 * 1024;
/// Finished durations kept per operation for estimates.
const HISTORY_LEN: usize = 50;

pub fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

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
    /// Parses the worker's progress text: `current SEP total [SEP step]`, "NA" for none.
    pub fn parse(text: &str) -> Progress {
        let mut it = text.splitn(3, crate::protocol::FIELD_SEP);
        let num = |s: Option<&str>| s.and_then(|v| v.parse::<f64>().ok()).filter(|v| v.is_finite());
        let current = num(it.next());
        let total = num(it.next());
        let step = it.next().map(str::to_owned);
        Progress { step, current, total }
    }

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
#[derive(Debug)]
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
    pub params_hash: [u8; 32],
    /// The frame blob sent to the worker (serialized executor, then params).
    pub payload: Vec<u8>,
    /// Length of the executor's part of `payload`.
    pub fn_len: usize,
    pub timeout_ms: u64,
    pub submitted_at: f64,
}

/// One job's record. Cheap to clone: no payload, no output.
#[derive(Clone, Debug)]
pub struct Job {
    pub id: Uuid,
    pub operation: Arc<str>,
    pub params_hash: [u8; 32],
    pub status: Status,
    pub submitted_at: f64,
    pub started_at: Option<f64>,
    pub completed_at: Option<f64>,
    pub timeout_ms: u64,
    pub result: Option<Arc<[u8]>>,
    pub error: Option<Box<JobError>>,
    pub progress: Option<Box<Progress>>,
    pub worker_pid: Option<u32>,
    /// The pool slot running it, so a cancel reaches the right worker.
    pub slot: Option<usize>,
}

impl Job {
    pub fn duration(&self) -> Option<f64> {
        Some(self.completed_at? - self.started_at?)
    }
}

/// A job handed to a worker.
pub struct Dispatch {
    pub id: Uuid,
    pub payload: Vec<u8>,
    pub fn_len: usize,
    pub timeout_ms: u64,
}

#[derive(Debug, PartialEq)]
pub enum Submit {
    Accepted,
    /// `limit` jobs are pending or running already.
    Full { limit: usize },
}

#[derive(Debug, PartialEq)]
pub enum Cancel {
    NotFound,
    Finished(Status),
    WasPending,
    /// The job was running in this pool slot: its worker must be stopped.
    WasRunning { slot: Option<usize> },
}

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Counts {
    pub pending: usize,
    pub running: usize,
    pub total: usize,
}

/// Where job records live. The in-memory store is the first; a durable store
/// shared by API replicas implements the same operations.
pub trait Store: Send {
    /// Adds a pending job unless `limit` jobs are pending or running.
    fn submit(&mut self, job: NewJob, limit: usize) -> Submit;
    fn get(&self, id: &Uuid) -> Option<Job>;
    /// The pending or running job with this operation and params hash.
    fn find_active(&self, operation: &str, params_hash: &[u8; 32]) -> Option<Uuid>;
    fn counts(&self) -> Counts;
    /// Moves the oldest pending job to running on a worker.
    fn take_next(&mut self, slot: usize, worker_pid: u32, now: f64) -> Option<Dispatch>;
    /// 1-based position among pending jobs.
    fn queue_position(&self, id: &Uuid) -> Option<usize>;
    fn set_progress(&mut self, id: &Uuid, progress: Progress);
    fn append_output(&mut self, id: &Uuid, bytes: &[u8]);
    fn output(&self, id: &Uuid) -> Option<Vec<u8>>;
    /// Ends an active job; false if it had already ended (first outcome wins).
    fn finish(&mut self, id: &Uuid, outcome: Outcome, now: f64) -> bool;
    fn cancel(&mut self, id: &Uuid, now: f64) -> Cancel;
    /// Fails every pending (and, if `running`, running) job with this error.
    fn fail_active(&mut self, error: &JobError, running: bool, now: f64) -> Vec<Job>;
    /// Removes finished jobs that ended (or were submitted) before `cutoff`.
    fn remove_finished_before(&mut self, cutoff: f64) -> Vec<Uuid>;
    fn jobs(&self) -> Vec<Job>;
    /// Median duration of recent completed jobs of this operation.
    fn typical_duration(&self, operation: &str) -> Option<f64>;
}

#[derive(Default)]
struct OperationStats {
    name: Option<Arc<str>>,
    durations: VecDeque<f64>,
}

struct Pending {
    payload: Vec<u8>,
    fn_len: usize,
}

#[derive(Default)]
pub struct MemoryStore {
    jobs: HashMap<Uuid, Job>,
    /// Key: sha256(operation, 0, params hash) -> the active job holding it.
    active: HashMap<[u8; 32], Uuid>,
    queue: VecDeque<Uuid>,
    payloads: HashMap<Uuid, Pending>,
    outputs: HashMap<Uuid, VecDeque<u8>>,
    operations: HashMap<String, OperationStats>,
    pending: usize,
    running: usize,
}

fn duplicate_key(operation: &str, params_hash: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(operation.as_bytes());
    h.update([0u8]);
    h.update(params_hash);
    h.finalize().into()
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    fn intern(&mut self, operation: &str) -> Arc<str> {
        let stats = self.operations.entry(operation.to_owned()).or_default();
        stats.name.get_or_insert_with(|| Arc::from(operation)).clone()
    }

    fn leave_active(&mut self, job: &Job) {
        match job.status {
            Status::Pending => self.pending -= 1,
            Status::Running => self.running -= 1,
            _ => return,
        }
        let key = duplicate_key(&job.operation, &job.params_hash);
        if self.active.get(&key) == Some(&job.id) {
            self.active.remove(&key);
        }
        self.payloads.remove(&job.id);
    }
}

impl Store for MemoryStore {
    fn submit(&mut self, job: NewJob, limit: usize) -> Submit {
        if self.pending + self.running >= limit {
            return Submit::Full { limit };
        }
        let operation = self.intern(&job.operation);
        let key = duplicate_key(&job.operation, &job.params_hash);
        self.active.entry(key).or_insert(job.id);
        self.payloads.insert(job.id, Pending { payload: job.payload, fn_len: job.fn_len });
        self.queue.push_back(job.id);
        self.pending += 1;
        self.jobs.insert(
            job.id,
            Job {
                id: job.id,
                operation,
                params_hash: job.params_hash,
                status: Status::Pending,
                submitted_at: job.submitted_at,
                started_at: None,
                completed_at: None,
                timeout_ms: job.timeout_ms,
                result: None,
                error: None,
                progress: None,
                worker_pid: None,
                slot: None,
            },
        );
        Submit::Accepted
    }

    fn get(&self, id: &Uuid) -> Option<Job> {
        self.jobs.get(id).cloned()
    }

    fn find_active(&self, operation: &str, params_hash: &[u8; 32]) -> Option<Uuid> {
        self.active.get(&duplicate_key(operation, params_hash)).copied()
    }

    fn counts(&self) -> Counts {
        Counts { pending: self.pending, running: self.running, total: self.jobs.len() }
    }

    fn take_next(&mut self, slot: usize, worker_pid: u32, now: f64) -> Option<Dispatch> {
        while let Some(id) = self.queue.pop_front() {
            let Some(job) = self.jobs.get_mut(&id) else { continue };
            if job.status != Status::Pending {
                continue; // cancelled or failed while queued
            }
            job.status = Status::Running;
            job.started_at = Some(now);
            job.worker_pid = Some(worker_pid);
            job.slot = Some(slot);
            self.pending -= 1;
            self.running += 1;
            let p = self.payloads.remove(&id)?;
            return Some(Dispatch { id, payload: p.payload, fn_len: p.fn_len, timeout_ms: job.timeout_ms });
        }
        None
    }

    fn queue_position(&self, id: &Uuid) -> Option<usize> {
        let mut pos = 0;
        for qid in &self.queue {
            if self.jobs.get(qid).map(|j| j.status) == Some(Status::Pending) {
                pos += 1;
                if qid == id {
                    return Some(pos);
                }
            }
        }
        None
    }

    fn set_progress(&mut self, id: &Uuid, progress: Progress) {
        if let Some(job) = self.jobs.get_mut(id) {
            if job.status == Status::Running {
                job.progress = Some(Box::new(progress));
            }
        }
    }

    fn append_output(&mut self, id: &Uuid, bytes: &[u8]) {
        if !self.jobs.contains_key(id) {
            return;
        }
        let buf = self.outputs.entry(*id).or_default();
        let bytes = &bytes[bytes.len().saturating_sub(OUTPUT_LIMIT)..];
        let overflow = (buf.len() + bytes.len()).saturating_sub(OUTPUT_LIMIT);
        buf.drain(..overflow);
        buf.extend(bytes);
    }

    fn output(&self, id: &Uuid) -> Option<Vec<u8>> {
        self.jobs.get(id)?;
        Some(self.outputs.get(id).map(|b| b.iter().copied().collect()).unwrap_or_default())
    }

    fn finish(&mut self, id: &Uuid, outcome: Outcome, now: f64) -> bool {
        let Some(job) = self.jobs.get(id) else { return false };
        if job.status.is_terminal() {
            return false;
        }
        let snapshot = job.clone();
        self.leave_active(&snapshot);
        let job = self.jobs.get_mut(id).unwrap();
        job.completed_at = Some(now);
        match outcome {
            Outcome::Completed(bytes) => {
                job.status = Status::Completed;
                job.result = Some(Arc::from(bytes));
                if let Some(d) = job.duration() {
                    let stats = self.operations.entry(job.operation.to_string()).or_default();
                    if stats.durations.len() == HISTORY_LEN {
                        stats.durations.pop_front();
                    }
                    stats.durations.push_back(d);
                }
            }
            Outcome::Failed(err) => {
                job.status = Status::Failed;
                job.error = Some(Box::new(err));
            }
            Outcome::Cancelled => {
                job.status = Status::Cancelled;
                job.error = Some(Box::new(JobError::new("CANCELLED", "Job was cancelled")));
            }
        }
        true
    }

    fn cancel(&mut self, id: &Uuid, now: f64) -> Cancel {
        let Some(job) = self.jobs.get(id) else { return Cancel::NotFound };
        let (status, slot) = (job.status, job.slot);
        if status.is_terminal() {
            return Cancel::Finished(status);
        }
        self.finish(id, Outcome::Cancelled, now);
        match status {
            Status::Pending => Cancel::WasPending,
            _ => Cancel::WasRunning { slot },
        }
    }

    fn fail_active(&mut self, error: &JobError, running: bool, now: f64) -> Vec<Job> {
        let ids: Vec<Uuid> = self
            .jobs
            .values()
            .filter(|j| j.status == Status::Pending || (running && j.status == Status::Running))
            .map(|j| j.id)
            .collect();
        let mut failed = Vec::with_capacity(ids.len());
        for id in ids {
            let before = self.jobs[&id].clone();
            self.finish(&id, Outcome::Failed(error.clone()), now);
            failed.push(before);
        }
        failed
    }

    fn remove_finished_before(&mut self, cutoff: f64) -> Vec<Uuid> {
        let old: Vec<Uuid> = self
            .jobs
            .values()
            .filter(|j| j.status.is_terminal() && j.completed_at.unwrap_or(j.submitted_at) < cutoff)
            .map(|j| j.id)
            .collect();
        for id in &old {
            self.jobs.remove(id);
            self.outputs.remove(id);
        }
        if !old.is_empty() && self.jobs.len() < self.jobs.capacity() / 4 {
            self.jobs.shrink_to_fit();
            self.outputs.shrink_to_fit();
        }
        old
    }

    fn jobs(&self) -> Vec<Job> {
        let mut all: Vec<Job> = self.jobs.values().cloned().collect();
        all.sort_by(|a, b| a.submitted_at.total_cmp(&b.submitted_at));
        all
    }

    fn typical_duration(&self, operation: &str) -> Option<f64> {
        let d = &self.operations.get(operation)?.durations;
        if d.is_empty() {
            return None;
        }
        let mut v: Vec<f64> = d.iter().copied().collect();
        v.sort_by(f64::total_cmp);
        let mid = v.len() / 2;
        Some(if v.len() % 2 == 1 { v[mid] } else { (v[mid - 1] + v[mid]) / 2.0 })
    }
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

/// A store shared between the R main thread and the pool's runtime thread.
///
/// The mutex is held only for in-memory updates, never across an `.await`
/// or a system call, so a std-style blocking lock is right here.
pub struct Registry {
    store: Mutex<Box<dyn Store>>,
    finished: Condvar,
}

impl Registry {
    pub fn new(store: Box<dyn Store>) -> Registry {
        Registry { store: Mutex::new(store), finished: Condvar::new() }
    }

    pub fn with<T>(&self, f: impl FnOnce(&mut dyn Store) -> T) -> T {
        let mut guard = self.store.lock();
        f(guard.as_mut())
    }

    pub fn finish(&self, id: &Uuid, outcome: Outcome) -> bool {
        let done = self.with(|s| s.finish(id, outcome, now()));
        if done {
            self.finished.notify_all();
        }
        done
    }

    /// Wakes every waiter (after a change made through `with`).
    pub fn notify(&self) {
        self.finished.notify_all();
    }

    /// Waits at most `timeout` for the job to be finished (or gone).
    pub fn wait_finished(&self, id: &Uuid, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut guard = self.store.lock();
        loop {
            match guard.get(id) {
                Some(job) if !job.status.is_terminal() => {}
                _ => return true,
            }
            if self.finished.wait_until(&mut guard, deadline).timed_out() {
                return guard.get(id).map_or(true, |j| j.status.is_terminal());
            }
        }
    }
}
