//! The job registry: one record per job, behind the [`Store`] trait.
//!
//! A store is where jobs live: [`MemoryStore`] in this process (the fast
//! default), or `sql::SqlStore` in a database shared by processes and
//! hosts. Both speak the same async trait, so the pool and the R boundary
//! never know which one they hold.
//!
//! Every job a pool runs is held through a [`Lease`]: the job id plus a token
//! the store increments at each claim, cancel or rescue. Writes about a
//! running job (progress, output, outcome) name the lease and change nothing
//! when it is no longer current, so a host that lost a job can never
//! overwrite what happened to it since.
//!
//! [`MemoryStore`] keeps active jobs in hash maps so that lookup by id, the
//! duplicate check and capacity counting are O(1). Payloads (the serialized
//! executor and params) and captured output live beside the records, so a
//! status snapshot clones only small fields. A job that ends becomes one
//! compact record in a log kept in the order jobs ended (records end to end
//! in blocks), found by id through an index of sequence numbers; cleanup
//! takes from its front.

use async_trait::async_trait;
use hashbrown::HashTable;
use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::Notify;
use uuid::Uuid;

/// Captured output kept per job (the last bytes win).
pub const OUTPUT_LIMIT: usize = 64 * 1024;
/// Finished durations kept per operation for estimates.
const HISTORY_LEN: usize = 50;
/// Cleanup frees at least this many records off the caller's thread.
const FREE_ELSEWHERE: usize = 1000;

pub fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

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

/// The store could not be reached or refused the operation. The message
/// never contains credentials.
#[derive(Clone, Debug, PartialEq)]
pub struct StoreError(pub String);

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// A pool as the store's host registry sees it.
#[derive(Clone, Debug)]
pub struct HostInfo {
    /// Unique per pool start; owns the leases the pool takes.
    pub id: String,
    pub hostname: String,
    pub pid: u32,
    pub slots: usize,
    pub queues: Vec<String>,
}

impl HostInfo {
    pub fn this_process(slots: usize, queues: Vec<String>) -> HostInfo {
        let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "unknown".into());
        HostInfo { id: Uuid::new_v4().to_string(), hostname, pid: std::process::id(), slots, queues }
    }
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
    /// Renews the leases `host` holds (and its heartbeat); returns them.
    async fn renew(&self, host: &str) -> StoreResult<Vec<Lease>>;
    /// Fails (or re-queues, when attempts remain) running jobs whose lease
    /// expired, naming the lost host. Returns the ids.
    async fn rescue(&self) -> StoreResult<Vec<Uuid>>;
    /// A pool stops: its running jobs fail with `error` or go back to the
    /// queue when attempts remain; with `pending`, pending jobs fail too.
    async fn release(&self, host: &str, error: &JobError, pending: bool) -> StoreResult<Vec<Uuid>>;
    /// Removes up to `batch` finished jobs that ended more than `max_age` seconds ago.
    async fn cleanup(&self, max_age: f64, batch: usize) -> StoreResult<Vec<Uuid>>;
    /// Every job, oldest first.
    async fn list(&self) -> StoreResult<Vec<Job>>;
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

/// The durations of an operation's last jobs, and their median, which is
/// recomputed (a sort) at each submit only while there are few; then after
/// every 8 new ones.
#[derive(Default)]
struct Recent {
    durations: VecDeque<f64>,
    median: Option<f64>,
    new: usize,
}

impl Recent {
    fn push(&mut self, d: f64) {
        if self.durations.len() == HISTORY_LEN {
            self.durations.pop_front();
        }
        self.durations.push_back(d);
        self.new += 1;
    }

    fn median(&mut self) -> Option<f64> {
        if self.new > 0 && (self.new >= 8 || self.durations.len() < 16) {
            self.median = median(self.durations.iter().copied().collect());
            self.new = 0;
        }
        self.median
    }
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

struct Payload {
    executor: Vec<u8>,
    params: Arc<Vec<u8>>,
}

/// Order among pending jobs of one queue: higher priority, then submit order.
type QueueKey = (i64, u64, Uuid);

/// Operation and queue names, each kept once.
#[derive(Default)]
struct Names {
    ids: HashMap<Arc<str>, u32>,
    all: Vec<Arc<str>>,
}

impl Names {
    fn id(&mut self, name: &str) -> u32 {
        if let Some(&i) = self.ids.get(name) {
            return i;
        }
        let i = self.all.len() as u32;
        let name: Arc<str> = Arc::from(name);
        self.all.push(name.clone());
        self.ids.insert(name, i);
        i
    }

    fn name(&self, id: u32) -> Arc<str> {
        self.all[id as usize].clone()
    }

    /// The one shared copy of `name`.
    fn intern(&mut self, name: &str) -> Arc<str> {
        let id = self.id(name);
        self.name(id)
    }
}

// A finished job's fixed fields: byte offsets in its record.
const D_ID: usize = 0;
const D_HASH: usize = 16;
const D_SUBMITTED: usize = 48;
/// NaN when the job never started.
const D_STARTED: usize = 56;
const D_COMPLETED: usize = 64;
const D_TIMEOUT: usize = 72;
const D_OPERATION: usize = 80;
const D_QUEUE: usize = 84;
const D_PRIORITY: usize = 88;
const D_ATTEMPTS: usize = 92;
const D_MAX_ATTEMPTS: usize = 96;
const D_PID: usize = 100;
const D_STATUS: usize = 104;
const D_FLAGS: usize = 105;
/// The side maps that hold an entry for the job: `S_*`.
const D_SIDE: usize = 106;
/// Then, each when its `F_*` flag says: error code, message and detail;
/// progress current, total and step; the result, to the end.
const D_TAIL: usize = 107;

const F_PID: u8 = 1;
const F_ERROR: u8 = 2;
const F_DETAIL: u8 = 4;
const F_CURRENT: u8 = 8;
const F_TOTAL: u8 = 16;
const F_STEP: u8 = 32;
const F_RESULT: u8 = 64;
const F_PROGRESS: u8 = 128;

const S_UNHASHED: u8 = 1;
const S_OUTPUT: u8 = 2;

/// A finished job's record and its result (no payload, output or lease),
/// as bytes: `Done<Vec<u8>>` when it is made, a view into the log's blocks
/// after.
struct Done<B>(B);

fn put_bytes(buf: &mut Vec<u8>, b: &[u8]) {
    buf.extend_from_slice(&(b.len() as u64).to_le_bytes());
    buf.extend_from_slice(b);
}

struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> &'a [u8] {
        self.at += n;
        &self.buf[self.at - n..self.at]
    }

    fn f64(&mut self) -> f64 {
        f64::from_le_bytes(self.take(8).try_into().unwrap())
    }

    fn bytes(&mut self) -> &'a [u8] {
        let n = u64::from_le_bytes(self.take(8).try_into().unwrap());
        self.take(n as usize)
    }

    fn string(&mut self) -> String {
        String::from_utf8_lossy(self.bytes()).into_owned()
    }
}

impl Done<Vec<u8>> {
    /// `job` has ended; `result` is what it completed with.
    fn new(job: &Job, operation: u32, queue: u32, side: u8, result: Option<&[u8]>) -> Done<Vec<u8>> {
        let err = job.error.as_deref();
        let progress = job.progress.as_deref();
        let mut flags = 0;
        let mut len = D_TAIL;
        let mut flag = |f: u8, on: bool, n: usize| {
            if on {
                flags |= f;
                len += n;
            }
        };
        flag(F_PID, job.worker_pid.is_some(), 0);
        flag(F_ERROR, err.is_some(), err.map_or(0, |e| 16 + e.code.len() + e.message.len()));
        let detail = err.and_then(|e| e.detail.as_deref());
        flag(F_DETAIL, detail.is_some(), detail.map_or(0, |d| 8 + d.len()));
        flag(F_PROGRESS, progress.is_some(), 0);
        flag(F_CURRENT, progress.is_some_and(|p| p.current.is_some()), 8);
        flag(F_TOTAL, progress.is_some_and(|p| p.total.is_some()), 8);
        let step = progress.and_then(|p| p.step.as_deref());
        flag(F_STEP, step.is_some(), step.map_or(0, |s| 8 + s.len()));
        flag(F_RESULT, result.is_some(), result.map_or(0, <[u8]>::len));
        let mut b = Vec::with_capacity(len);
        b.extend_from_slice(job.id.as_bytes());
        b.extend_from_slice(&job.params_hash);
        for t in [job.submitted_at, job.started_at.unwrap_or(f64::NAN), job.completed_at.unwrap_or(f64::NAN)] {
            b.extend_from_slice(&t.to_le_bytes());
        }
        b.extend_from_slice(&job.timeout_ms.to_le_bytes());
        for v in [operation, queue, job.priority as u32, job.attempts, job.max_attempts, job.worker_pid.unwrap_or(0)] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(&[job.status as u8, flags, side]);
        if let Some(e) = err {
            put_bytes(&mut b, e.code.as_bytes());
            put_bytes(&mut b, e.message.as_bytes());
        }
        if let Some(d) = detail {
            put_bytes(&mut b, d);
        }
        for v in [progress.and_then(|p| p.current), progress.and_then(|p| p.total)].into_iter().flatten() {
            b.extend_from_slice(&v.to_le_bytes());
        }
        if let Some(s) = step {
            put_bytes(&mut b, s.as_bytes());
        }
        b.extend_from_slice(result.unwrap_or_default());
        Done(b)
    }
}

impl Done<&mut [u8]> {
    fn set_hash(self, hash: &[u8; 32]) {
        self.0[D_HASH..D_HASH + 32].copy_from_slice(hash);
        self.0[D_SIDE] &= !S_UNHASHED;
    }
}

impl<B: AsRef<[u8]>> Done<B> {
    fn bytes(&self) -> &[u8] {
        self.0.as_ref()
    }

    fn u32_at(&self, at: usize) -> u32 {
        u32::from_le_bytes(self.bytes()[at..at + 4].try_into().unwrap())
    }

    fn f64_at(&self, at: usize) -> f64 {
        f64::from_le_bytes(self.bytes()[at..at + 8].try_into().unwrap())
    }

    fn id(&self) -> Uuid {
        Uuid::from_bytes(self.bytes()[D_ID..D_ID + 16].try_into().unwrap())
    }

    fn status(&self) -> Status {
        [Status::Pending, Status::Running, Status::Completed, Status::Failed, Status::Cancelled][self.bytes()[D_STATUS] as usize]
    }

    fn completed_at(&self) -> f64 {
        self.f64_at(D_COMPLETED)
    }

    fn side(&self) -> u8 {
        self.bytes()[D_SIDE]
    }

    /// The job's record; its result only when `with_result`.
    fn job(&self, names: &Names, with_result: bool) -> Job {
        let flags = self.bytes()[D_FLAGS];
        let has = |f: u8| flags & f != 0;
        let mut r = Reader { buf: self.bytes(), at: D_TAIL };
        let error = has(F_ERROR).then(|| {
            let (code, message) = (r.string(), r.string());
            let detail = has(F_DETAIL).then(|| Arc::from(r.bytes()));
            Box::new(JobError { code, message, detail })
        });
        let (current, total) = (has(F_CURRENT).then(|| r.f64()), has(F_TOTAL).then(|| r.f64()));
        let step = has(F_STEP).then(|| r.string());
        let progress = has(F_PROGRESS).then(|| Box::new(Progress { step, current, total }));
        let result = (has(F_RESULT) && with_result).then(|| Arc::from(&self.bytes()[r.at..]));
        let started = self.f64_at(D_STARTED);
        Job {
            id: self.id(),
            operation: names.name(self.u32_at(D_OPERATION)),
            params_hash: self.bytes()[D_HASH..D_HASH + 32].try_into().unwrap(),
            status: self.status(),
            queue: names.name(self.u32_at(D_QUEUE)),
            priority: self.u32_at(D_PRIORITY) as i32,
            submitted_at: self.f64_at(D_SUBMITTED),
            started_at: (!started.is_nan()).then_some(started),
            completed_at: Some(self.completed_at()),
            timeout_ms: u64::from_le_bytes(self.bytes()[D_TIMEOUT..D_TIMEOUT + 8].try_into().unwrap()),
            attempts: self.u32_at(D_ATTEMPTS),
            max_attempts: self.u32_at(D_MAX_ATTEMPTS),
            result,
            error,
            progress,
            worker_pid: has(F_PID).then(|| self.u32_at(D_PID)),
            host: None,
        }
    }
}

/// Finished jobs in the order they ended, the order cleanup removes them in.
/// Their records lie end to end in blocks of [`BLOCK`] bytes (a larger record
/// has a block of its own): a retained job costs its record and its place,
/// not an allocation of its own among the short-lived ones, and cleanup
/// frees whole blocks from the front.
#[derive(Default)]
struct Finished {
    blocks: VecDeque<Vec<u8>>,
    /// Number of `blocks[0]`; a block keeps its number (wrapping) while it stays.
    first_block: u32,
    /// Where each record is, in the order the jobs ended.
    places: VecDeque<Place>,
    /// Sequence number of `places[0]`; a job keeps its number (wrapping) while it stays.
    head: u32,
    /// Sequence numbers, found by job id.
    index: HashTable<u32>,
    hasher: IdHash,
    /// A job ended earlier than the one before it (the clock stepped back).
    unordered: bool,
}

#[derive(Clone, Copy)]
struct Place {
    block: u32,
    start: u32,
    len: u32,
}

/// Bytes per block of finished records.
const BLOCK: usize = 64 << 10;

impl Finished {
    fn len(&self) -> usize {
        self.places.len()
    }

    fn at(&self, seq: u32) -> usize {
        seq.wrapping_sub(self.head) as usize
    }

    fn record(&self, i: usize) -> Done<&[u8]> {
        let (b, r) = span(&self.places, i, self.first_block);
        Done(&self.blocks[b][r])
    }

    fn iter(&self) -> impl Iterator<Item = Done<&[u8]>> {
        (0..self.len()).map(|i| self.record(i))
    }

    fn find(&self, id: &Uuid) -> Option<usize> {
        let seq = self.index.find(self.hasher.hash_one(id), |&s| self.record(self.at(s)).id() == *id)?;
        Some(self.at(*seq))
    }

    fn get(&self, id: &Uuid) -> Option<Done<&[u8]>> {
        self.find(id).map(|i| self.record(i))
    }

    fn get_mut(&mut self, id: &Uuid) -> Option<Done<&mut [u8]>> {
        let (b, r) = span(&self.places, self.find(id)?, self.first_block);
        Some(Done(&mut self.blocks[b][r]))
    }

    fn insert(&mut self, seq: u32, id: &Uuid) {
        let Finished { blocks, places, head, first_block, index, hasher, .. } = self;
        let rehash = |&s: &u32| hasher.hash_one(id_at(blocks, places, s.wrapping_sub(*head) as usize, *first_block));
        index.insert_unique(hasher.hash_one(id), seq, rehash);
    }

    fn push(&mut self, done: Done<Vec<u8>>) {
        self.unordered |= self.len() > 0 && done.completed_at() < self.record(self.len() - 1).completed_at();
        let (seq, id) = (self.head.wrapping_add(self.len() as u32), done.id());
        self.append(done.bytes());
        self.insert(seq, &id);
    }

    /// Copies a record to the end of the last block, or of a new one.
    fn append(&mut self, rec: &[u8]) {
        let fits = self.blocks.back().is_some_and(|b| b.capacity() - b.len() >= rec.len());
        if !fits {
            self.blocks.push_back(Vec::with_capacity(BLOCK.max(rec.len())));
        }
        let block = self.first_block.wrapping_add(self.blocks.len() as u32 - 1);
        let last = self.blocks.back_mut().expect("a block");
        self.places.push_back(Place { block, start: last.len() as u32, len: rec.len() as u32 });
        last.extend_from_slice(rec);
    }

    /// Removes the job that ended first if it ended before `cutoff`: its id
    /// and side maps. A block it emptied goes to `freed`.
    fn pop_older(&mut self, cutoff: f64, freed: &mut Vec<Vec<u8>>) -> Option<(Uuid, u8)> {
        if self.unordered {
            self.sort();
        }
        if self.places.is_empty() {
            return None;
        }
        let first = self.record(0);
        if !(first.completed_at() < cutoff) {
            return None;
        }
        let (id, side) = (first.id(), first.side());
        let place = self.places.pop_front()?;
        let head = self.head;
        if let Ok(e) = self.index.find_entry(self.hasher.hash_one(&id), |&s| s == head) {
            e.remove();
        }
        self.head = head.wrapping_add(1);
        if self.places.front().is_none_or(|p| p.block != place.block) {
            freed.extend(self.blocks.pop_front());
            self.first_block = self.first_block.wrapping_add(1);
        }
        Some((id, side))
    }

    /// Puts the log in the order of the end times, and numbers it anew.
    fn sort(&mut self) {
        let mut order: Vec<usize> = (0..self.len()).collect();
        order.sort_by(|&a, &b| self.record(a).completed_at().total_cmp(&self.record(b).completed_at()));
        let old = std::mem::take(self);
        *self = Finished { first_block: old.first_block, head: old.head, ..Finished::default() };
        for i in order {
            let rec = old.record(i);
            self.append(rec.bytes());
            let (seq, id) = (self.head.wrapping_add(self.len() as u32 - 1), rec.id());
            self.insert(seq, &id);
        }
    }

    fn shrink(&mut self) {
        if self.places.len() < self.places.capacity() / 4 {
            self.places.shrink_to_fit();
            self.blocks.shrink_to_fit();
            let Finished { blocks, places, head, first_block, index, hasher, .. } = self;
            index.shrink_to_fit(|&s| hasher.hash_one(id_at(blocks, places, s.wrapping_sub(*head) as usize, *first_block)));
        }
    }
}

/// Where the `i`th record lies: the index of its block and its bytes there.
fn span(places: &VecDeque<Place>, i: usize, first_block: u32) -> (usize, std::ops::Range<usize>) {
    let p = places[i];
    (p.block.wrapping_sub(first_block) as usize, p.start as usize..(p.start + p.len) as usize)
}

/// The id in the `i`th record, from the parts of a [`Finished`] (its index
/// borrows the rest while it rehashes).
fn id_at(blocks: &VecDeque<Vec<u8>>, places: &VecDeque<Place>, i: usize, first_block: u32) -> Uuid {
    let (b, r) = span(places, i, first_block);
    Done(&blocks[b][r]).id()
}

#[derive(Default)]
struct Memory {
    /// Pending and running jobs.
    jobs: HashMap<Uuid, Job, IdHash>,
    done: Finished,
    /// Key: [`duplicate_key`] -> the first active job holding it.
    active: HashMap<[u8; 32], Uuid>,
    queues: HashMap<Arc<str>, BTreeSet<QueueKey>>,
    /// Where each pending job sits in its queue, and each active job's lease token.
    places: HashMap<Uuid, QueueKey, IdHash>,
    tokens: HashMap<Uuid, i64, IdHash>,
    payloads: HashMap<Uuid, Payload, IdHash>,
    /// Jobs whose params hash is not known yet, with their params.
    unhashed: HashMap<Uuid, Arc<Vec<u8>>, IdHash>,
    outputs: HashMap<Uuid, Vec<u8>, IdHash>,
    names: Names,
    /// Recent durations of completed jobs, by operation.
    durations: HashMap<Arc<str>, Recent>,
    seq: u64,
    pending: usize,
    running: usize,
    hosts: Vec<HostView>,
}

/// Jobs in this process's memory: the default store.
#[derive(Default)]
pub struct MemoryStore {
    inner: Mutex<Memory>,
    finished: Notify,
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }
}

impl Memory {
    /// Records a job's params hash; an active job then blocks its twins.
    fn set_hash(&mut self, id: &Uuid, hash: [u8; 32]) {
        self.unhashed.remove(id);
        if let Some(job) = self.jobs.get_mut(id) {
            job.params_hash = hash;
            self.active.entry(duplicate_key(&job.operation, &hash)).or_insert(*id);
        } else if let Some(done) = self.done.get_mut(id) {
            done.set_hash(&hash);
        }
    }

    /// Hashes every job still without a hash, so the duplicate index is complete.
    fn hash_all(&mut self) {
        let pending: Vec<(Uuid, Arc<Vec<u8>>)> = self.unhashed.drain().collect();
        for (id, params) in pending {
            self.set_hash(&id, sha256(&params));
        }
    }

    fn current(&self, lease: &Lease) -> bool {
        self.jobs.get(&lease.id).is_some_and(|j| j.status == Status::Running)
            && self.tokens.get(&lease.id) == Some(&lease.token)
    }

    fn contains(&self, id: &Uuid) -> bool {
        self.jobs.contains_key(id) || self.done.get(id).is_some()
    }

    /// Ends an active job; false if it had already ended.
    fn end(&mut self, id: &Uuid, outcome: &Outcome, now: f64) -> bool {
        let Some(mut job) = self.jobs.remove(id) else { return false };
        match job.status {
            Status::Pending => self.pending -= 1,
            _ => self.running -= 1,
        }
        if !self.unhashed.contains_key(id) {
            let key = duplicate_key(&job.operation, &job.params_hash);
            if self.active.get(&key) == Some(id) {
                self.active.remove(&key);
            }
        }
        if let Some(place) = self.places.remove(id) {
            if let Some(q) = self.queues.get_mut(&job.queue) {
                q.remove(&place);
            }
        }
        self.payloads.remove(id);
        self.tokens.remove(id);
        if let Some(out) = self.outputs.get_mut(id) {
            out.shrink_to_fit();
        }
        job.completed_at = Some(now);
        let mut result = None;
        match outcome {
            Outcome::Completed(bytes) => {
                job.status = Status::Completed;
                result = Some(bytes.as_slice());
                if let Some(d) = job.duration() {
                    if !self.durations.contains_key(&*job.operation) {
                        self.durations.insert(job.operation.clone(), Recent::default());
                    }
                    self.durations.get_mut(&*job.operation).unwrap().push(d);
                }
            }
            Outcome::Failed(err) => {
                job.status = Status::Failed;
                job.error = Some(Box::new(err.clone()));
            }
            Outcome::Cancelled => {
                job.status = Status::Cancelled;
                job.error = Some(Box::new(JobError::new("CANCELLED", "Job was cancelled")));
            }
        }
        let (operation, queue) = (self.names.id(&job.operation), self.names.id(&job.queue));
        let side = if self.unhashed.contains_key(id) { S_UNHASHED } else { 0 }
            | if self.outputs.contains_key(id) { S_OUTPUT } else { 0 };
        self.done.push(Done::new(&job, operation, queue, side, result));
        true
    }

    fn position(&self, id: &Uuid) -> Option<usize> {
        let place = self.places.get(id)?;
        let queue = &self.jobs.get(id)?.queue;
        Some(self.queues.get(queue)?.range(..=place).count())
    }

    fn typical(&mut self, operation: &str) -> Option<f64> {
        self.durations.get_mut(operation)?.median()
    }
}

#[async_trait]
impl Store for MemoryStore {
    fn describe(&self) -> String {
        "memory".into()
    }

    fn shared(&self) -> bool {
        false
    }

    fn report_interval(&self) -> Duration {
        Duration::ZERO
    }

    async fn submit(&self, job: NewJob, limit: usize) -> StoreResult<Submit> {
        let mut m = self.inner.lock();
        let hash = if job.unique { Some(job.hash()) } else { job.params_hash };
        if job.unique {
            m.hash_all();
            let key = duplicate_key(&job.operation, hash.as_ref().unwrap());
            if let Some(id) = m.active.get(&key) {
                return Ok(Submit::Duplicate(*id));
            }
        }
        if m.pending + m.running >= limit {
            return Ok(Submit::Full { limit });
        }
        let (operation, queue) = (m.names.intern(&job.operation), m.names.intern(&job.queue));
        match hash {
            Some(h) => {
                m.active.entry(duplicate_key(&job.operation, &h)).or_insert(job.id);
            }
            None => {
                m.unhashed.insert(job.id, job.params.clone());
            }
        }
        m.seq += 1;
        let place = (-(job.priority as i64), m.seq, job.id);
        m.queues.entry(queue.clone()).or_default().insert(place);
        m.places.insert(job.id, place);
        m.payloads.insert(job.id, Payload { executor: job.executor, params: job.params });
        m.pending += 1;
        m.jobs.insert(
            job.id,
            Job {
                id: job.id,
                operation,
                params_hash: hash.unwrap_or_default(),
                status: Status::Pending,
                queue,
                priority: job.priority,
                submitted_at: now(),
                started_at: None,
                completed_at: None,
                timeout_ms: job.timeout_ms,
                attempts: 0,
                max_attempts: job.max_attempts,
                result: None,
                error: None,
                progress: None,
                worker_pid: None,
                host: None,
            },
        );
        Ok(Submit::Accepted)
    }

    fn params_hashed(&self, id: &Uuid, hash: [u8; 32]) {
        let mut m = self.inner.lock();
        if m.unhashed.contains_key(id) {
            m.set_hash(id, hash);
        }
    }

    fn hash_now(&self, id: &Uuid) {
        let params = self.inner.lock().unhashed.get(id).cloned();
        if let Some(params) = params {
            // Hashed outside the lock; a hash that landed meanwhile is the same.
            self.params_hashed(id, sha256(&params));
        }
    }

    async fn get(&self, id: &Uuid, with_result: bool) -> StoreResult<Option<JobView>> {
        let mut m = self.inner.lock();
        let mut job = match m.jobs.get(id) {
            Some(job) => job.clone(),
            None => match m.done.get(id) {
                Some(done) => done.job(&m.names, with_result),
                None => return Ok(None),
            },
        };
        if !with_result {
            if let Some(e) = job.error.as_mut() {
                e.detail = None;
            }
        }
        let position = if job.status == Status::Pending { m.position(id) } else { None };
        let typical = m.typical(&job.operation);
        Ok(Some(JobView { job, position, typical, now: now() }))
    }

    async fn find_active(&self, operation: &str, params_hash: &[u8; 32]) -> StoreResult<Option<Uuid>> {
        let mut m = self.inner.lock();
        m.hash_all();
        Ok(m.active.get(&duplicate_key(operation, params_hash)).copied())
    }

    async fn counts(&self) -> StoreResult<Counts> {
        let m = self.inner.lock();
        Ok(Counts { pending: m.pending, running: m.running, total: m.jobs.len() + m.done.len() })
    }

    async fn typical_duration(&self, operation: &str) -> StoreResult<Option<f64>> {
        Ok(self.inner.lock().typical(operation))
    }

    async fn claim(&self, host: &str, queues: &[String], k: usize) -> StoreResult<Vec<Claimed>> {
        let mut m = self.inner.lock();
        let host: Arc<str> = Arc::from(host);
        let mut out = Vec::new();
        while out.len() < k {
            let best = queues.iter().filter_map(|q| m.queues.get(q.as_str())?.first().copied()).min();
            let Some(place) = best else { break };
            let id = place.2;
            let queue = m.jobs[&id].queue.clone();
            m.queues.get_mut(&queue).unwrap().remove(&place);
            m.places.remove(&id);
            let token = {
                let t = m.tokens.entry(id).or_default();
                *t += 1;
                *t
            };
            let job = m.jobs.get_mut(&id).unwrap();
            job.status = Status::Running;
            job.started_at = Some(now());
            job.attempts += 1;
            job.host = Some(host.clone());
            let (timeout_ms, operation) = (job.timeout_ms, job.operation.clone());
            m.pending -= 1;
            m.running += 1;
            let p = m.payloads.remove(&id).unwrap_or(Payload { executor: Vec::new(), params: Arc::default() });
            out.push(Claimed { lease: Lease { id, token }, operation, executor: p.executor, params: p.params, timeout_ms });
        }
        Ok(out)
    }

    async fn report(&self, lease: &Lease, report: Report<'_>) -> StoreResult<bool> {
        let mut m = self.inner.lock();
        if !m.current(lease) {
            return Ok(false);
        }
        if let Some(out) = report.output {
            let buf = m.outputs.entry(lease.id).or_default();
            buf.clear();
            buf.extend_from_slice(out);
        }
        let job = m.jobs.get_mut(&lease.id).unwrap();
        if let Some(p) = report.progress {
            job.progress = Some(Box::new(p.clone()));
        }
        if report.pid.is_some() {
            job.worker_pid = report.pid;
        }
        Ok(true)
    }

    async fn output(&self, id: &Uuid) -> StoreResult<Option<Vec<u8>>> {
        let m = self.inner.lock();
        if !m.contains(id) {
            return Ok(None);
        }
        Ok(Some(m.outputs.get(id).cloned().unwrap_or_default()))
    }

    async fn finish(&self, lease: &Lease, outcome: &Outcome, output: Option<&[u8]>) -> StoreResult<bool> {
        let done = {
            let mut m = self.inner.lock();
            if !m.current(lease) {
                return Ok(false);
            }
            match output {
                Some(out) if !out.is_empty() => {
                    m.outputs.insert(lease.id, out.to_vec());
                }
                // Nothing captured: no entry, which reads the same.
                Some(_) => {
                    m.outputs.remove(&lease.id);
                }
                None => {}
            }
            m.end(&lease.id, outcome, now())
        };
        self.finished.notify_waiters();
        Ok(done)
    }

    async fn cancel(&self, id: &Uuid) -> StoreResult<Cancel> {
        let r = {
            let mut m = self.inner.lock();
            let Some(job) = m.jobs.get(id) else {
                return Ok(m.done.get(id).map_or(Cancel::NotFound, |d| Cancel::Finished(d.status())));
            };
            let status = job.status;
            let token = m.tokens.get(id).copied().unwrap_or_default();
            m.end(id, &Outcome::Cancelled, now());
            match status {
                Status::Pending => Cancel::WasPending,
                _ => Cancel::WasRunning(Lease { id: *id, token }),
            }
        };
        self.finished.notify_waiters();
        Ok(r)
    }

    async fn renew(&self, host: &str) -> StoreResult<Vec<Lease>> {
        let m = self.inner.lock();
        Ok(m.jobs
            .values()
            .filter(|j| j.status == Status::Running && j.host.as_deref() == Some(host))
            .map(|j| Lease { id: j.id, token: m.tokens.get(&j.id).copied().unwrap_or_default() })
            .collect())
    }

    async fn rescue(&self) -> StoreResult<Vec<Uuid>> {
        // One process: a lost host is this process, and its memory with it.
        Ok(Vec::new())
    }

    async fn release(&self, host: &str, error: &JobError, pending: bool) -> StoreResult<Vec<Uuid>> {
        let ids = {
            let mut m = self.inner.lock();
            let ids: Vec<Uuid> = m
                .jobs
                .values()
                .filter(|j| match j.status {
                    Status::Pending => pending,
                    Status::Running => j.host.as_deref() == Some(host),
                    _ => false,
                })
                .map(|j| j.id)
                .collect();
            let t = now();
            for id in &ids {
                m.end(id, &Outcome::Failed(error.clone()), t);
            }
            ids
        };
        self.finished.notify_waiters();
        Ok(ids)
    }

    async fn cleanup(&self, max_age: f64, batch: usize) -> StoreResult<Vec<Uuid>> {
        let mut guard = self.inner.lock();
        let m = &mut *guard;
        let cutoff = now() - max_age;
        let mut old = Vec::new();
        let (mut blocks, mut outputs, mut params) = (Vec::new(), Vec::new(), Vec::new());
        // Oldest first, from the front of the log: only what goes is touched.
        while old.len() < batch {
            let Some((id, side)) = m.done.pop_older(cutoff, &mut blocks) else { break };
            if side & S_OUTPUT != 0 {
                outputs.extend(m.outputs.remove(&id));
            }
            if side & S_UNHASHED != 0 {
                params.extend(m.unhashed.remove(&id));
            }
            old.push(id);
        }
        // Many records are freed on the blocking pool, not on the caller's thread.
        if old.len() >= FREE_ELSEWHERE {
            runtime().spawn_blocking(move || drop((blocks, outputs, params)));
        }
        if !old.is_empty() {
            m.done.shrink();
            if m.jobs.len() < m.jobs.capacity() / 4 {
                m.jobs.shrink_to_fit();
                m.tokens.shrink_to_fit();
            }
            if m.outputs.len() < m.outputs.capacity() / 4 {
                m.outputs.shrink_to_fit();
            }
        }
        Ok(old)
    }

    async fn list(&self) -> StoreResult<Vec<Job>> {
        let m = self.inner.lock();
        let mut all: Vec<Job> = m.jobs.values().cloned().collect();
        for j in &mut all {
            j.result = None;
        }
        all.extend(m.done.iter().map(|d| d.job(&m.names, false)));
        all.sort_by(|a, b| a.submitted_at.total_cmp(&b.submitted_at));
        Ok(all)
    }

    async fn register_host(&self, host: &HostInfo) -> StoreResult<()> {
        let t = now();
        self.inner.lock().hosts.push(HostView {
            info: host.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            started_at: t,
            heartbeat_at: t,
            stopped_at: None,
            running: 0,
            state: "live",
        });
        Ok(())
    }

    async fn deregister_host(&self, host: &str) -> StoreResult<()> {
        let mut m = self.inner.lock();
        for h in m.hosts.iter_mut().filter(|h| h.info.id == host) {
            h.stopped_at = Some(now());
            h.state = "stopped";
        }
        Ok(())
    }

    async fn hosts(&self) -> StoreResult<Vec<HostView>> {
        let m = self.inner.lock();
        let t = now();
        Ok(m.hosts
            .iter()
            .map(|h| {
                let mut h = h.clone();
                let id = h.info.id.as_str();
                h.running = m.jobs.values().filter(|j| j.status == Status::Running && j.host.as_deref() == Some(id)).count();
                if h.stopped_at.is_none() {
                    // One process: a registered pool lives as long as the process.
                    h.heartbeat_at = t;
                }
                h
            })
            .collect())
    }

    fn ended(&self) -> &Notify {
        &self.finished
    }

    fn poll_interval(&self) -> Option<Duration> {
        None
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


/// Seconds since the epoch as an ISO 8601 UTC time, for messages.
pub fn iso8601(t: f64) -> String {
    let secs = t.floor() as i64;
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// The runtime that runs store I/O and the waits of R's calls: two threads
/// that block asynchronous signals, started at first use and kept for the
/// life of the process.
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: once_cell::sync::OnceCell<tokio::runtime::Runtime> = once_cell::sync::OnceCell::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("asyncjobs-io")
            .on_thread_start(crate::pool::block_async_signals)
            .enable_all()
            .build()
            .expect("cannot start the asyncjobs I/O runtime")
    })
}

/// Runs a store call from a thread outside the runtime (the R main thread).
/// Every store call is bounded, so this is too.
pub fn block_on<F: std::future::Future>(fut: F) -> F::Output {
    runtime().block_on(fut)
}
