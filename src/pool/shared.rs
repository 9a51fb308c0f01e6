//! The state a pool's tasks share: its configuration, its slots as
//! [`get_worker_status()`] shows them, the jobs it holds, and the signals
//! that pass between the claimer, the keeper and the slots.
//!
//! May import: `job`, `sys`, `store`, and `pool::reaper`.

use super::reaper::{Containment, Mechanism};
use super::worker::Spec;
use crate::job::{sign, Claimed, JobError, Lease, NewJob, Rate, Submit};
use crate::store::{HostInfo, Store, StoreResult};
use crate::sys::log;
use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};
use uuid::Uuid;

#[derive(Clone, Debug)]
pub struct Config {
    pub size: usize,
    /// Active (pending + running) jobs across the store at which submit says
    /// Full; `usize::MAX` for no cap.
    pub capacity: usize,
    pub spec: Spec,
    /// Serialized list(setup, libpaths, ...) sent to every new worker.
    pub init: Vec<u8>,
    pub max_jobs_per_worker: u64,
    pub max_rss_bytes: u64,
    pub max_result_bytes: usize,
    pub echo_output: bool,
    pub setup_timeout: Duration,
    pub stop_grace: Duration,
    /// Consecutive setup failures after which a slot stops respawning.
    pub max_setup_failures: u32,
    /// Queues this pool's workers take jobs from.
    pub queues: Vec<String>,
    /// Finished jobs older than this are deleted on a timer: completed,
    /// failed and cancelled ones, each by its own age.
    pub retention: [Option<Duration>; 3],
    /// Submit rate limits of the API's submits.
    pub rates: Vec<Rate>,
    /// Log claims on stderr (worker-only hosts).
    pub verbose: bool,
    /// Longest wait between two polls of a shared store for work.
    pub max_poll: Duration,
    /// The operations this pool's workers have handlers for.
    pub operations: Vec<String>,
    /// The key that signs jobs carrying R's serialization in a shared
    /// store; a host runs such a job only when it signed right.
    pub key: Option<Vec<u8>>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum SlotState {
    Starting,
    Idle,
    Busy(Uuid),
    Stopping,
    /// Gave up respawning; the reason is the last failure.
    Failed(String),
    Stopped,
}

impl SlotState {
    pub fn name(&self) -> &'static str {
        match self {
            SlotState::Starting => "starting",
            SlotState::Idle => "idle",
            SlotState::Busy(_) => "busy",
            SlotState::Stopping => "stopping",
            SlotState::Failed(_) => "failed",
            SlotState::Stopped => "stopped",
        }
    }
}

#[derive(Clone, Debug)]
pub struct SlotInfo {
    pub slot: usize,
    pub pid: Option<u32>,
    pub state: SlotState,
    /// Jobs finished by the current process.
    pub jobs_done: u64,
    /// Processes started in this slot so far.
    pub spawned: u64,
    pub last_exit: Option<String>,
    pub rss_bytes: Option<u64>,
    /// How the current process's children are contained (see `reaper`).
    pub containment: Option<Mechanism>,
}

/// A job running here: its slot and lease, and whether it was taken from us.
pub(super) struct Running {
    pub(super) slot: usize,
    pub(super) lease: Lease,
    pub(super) abandoned: bool,
}

/// Whether the store answers the keeper, and since when.
#[derive(Default)]
pub(super) struct Health {
    pub(super) up_since: Option<Instant>,
    pub(super) last_renew: Option<Instant>,
    pub(super) down: bool,
}

pub(super) struct Shared {
    pub(super) store: Arc<dyn Store>,
    pub(super) config: Config,
    pub(super) host: HostInfo,
    pub(super) slots: Mutex<Vec<SlotInfo>>,
    /// Jobs claimed for idle slots, not yet taken by one.
    pub(super) ready: Mutex<VecDeque<Claimed>>,
    pub(super) ready_signal: Notify,
    pub(super) claim_signal: Notify,
    pub(super) idle: AtomicUsize,
    pub(super) running: Mutex<HashMap<Uuid, Running>>,
    pub(super) kicks: Vec<Notify>,
    pub(super) stop: watch::Sender<bool>,
    /// Set by a drain: claim nothing more; idle workers stop.
    pub(super) draining: watch::Sender<bool>,
    pub(super) health: Mutex<Health>,
    pub(super) containment: Containment,
    /// The store's hosts as last read, to tell whether an operation has
    /// somewhere to run without a read per submit.
    pub(super) hosts: Mutex<Option<(Instant, Vec<HostInfo>)>>,
    /// Wakes the keeper to look at the schedules now (one was added here).
    pub(super) schedules_changed: Notify,
}

impl Shared {
    pub(super) fn update_slot(&self, slot: usize, f: impl FnOnce(&mut SlotInfo)) {
        f(&mut self.slots.lock()[slot]);
    }

    pub(super) fn echo(&self, id: Option<&Uuid>, bytes: &[u8]) {
        if !self.config.echo_output {
            return;
        }
        let tag = id.map(|i| i.to_string()).unwrap_or_else(|| "worker".into());
        let mut out = Vec::with_capacity(bytes.len() + 48);
        for line in bytes.split_inclusive(|&b| b == b'\n') {
            out.extend_from_slice(format!("[{tag}] ").as_bytes());
            out.extend_from_slice(line);
        }
        if out.last() != Some(&b'\n') {
            out.push(b'\n');
        }
        let _ = std::io::stderr().write_all(&out);
    }

    /// Records a store failure (logged once per outage) or success.
    pub(super) fn store_result<T>(&self, what: &str, r: StoreResult<T>) -> Option<T> {
        let mut h = self.health.lock();
        match r {
            Ok(v) => {
                if h.down {
                    h.down = false;
                    log(&format!("store {} reachable again", self.store.describe()));
                }
                h.up_since.get_or_insert_with(Instant::now);
                Some(v)
            }
            Err(e) => {
                if !h.down {
                    h.down = true;
                    log(&format!("{what} failed, retrying: {e}"));
                }
                h.up_since = None;
                None
            }
        }
    }

    /// Submits a job (from the API or from a running job): an unknown
    /// operation is refused, a job carrying R's serialization is signed for
    /// a shared store, and the slots or the claimer are told.
    pub(super) async fn submit(&self, mut job: NewJob, limit: usize) -> StoreResult<Submit> {
        if job.executor.is_empty() && !self.knows(&job.operation, &job.queue).await? {
            crate::metrics::rejected("UNKNOWN_OPERATION");
            return Ok(Submit::UnknownOperation);
        }
        let serialized = !job.executor.is_empty() || !job.params_json;
        if self.store.shared() && serialized {
            let Some(key) = &self.config.key else {
                crate::metrics::rejected("NOT_SIGNED");
                return Ok(Submit::NotSigned);
            };
            job.signature = Some(sign(key, &job.id, &job.operation, &job.executor, &job.params));
        }
        job.host.get_or_insert_with(|| self.host.id.clone());
        let operation = job.operation.clone(); // metrics
        let r = self.store.submit(job, limit).await?;
        crate::metrics::submitted(&operation, &r);
        if r == Submit::Accepted {
            // A local store's jobs are taken by the slots themselves.
            if self.store.shared() {
                self.claim_signal.notify_one();
            } else {
                self.ready_signal.notify_last();
            }
        }
        Ok(r)
    }

    /// Whether a handler job of `operation` from `queue` has somewhere to
    /// run: this pool's workers, or a host of the store that has a handler
    /// for it (live or not: a host that is restarting still counts; the
    /// store forgets hosts a day after their last heartbeat).
    pub(super) async fn knows(&self, operation: &str, queue: &str) -> StoreResult<bool> {
        if self.host.serves(operation, queue) {
            return Ok(true);
        }
        if let Some((at, hosts)) = &*self.hosts.lock() {
            let age = at.elapsed();
            if age < Duration::from_secs(2) && hosts.iter().any(|h| h.serves(operation, queue)) {
                return Ok(true);
            }
            // Misses read the store again, at most 4 times a second.
            if age < Duration::from_millis(250) {
                return Ok(false);
            }
        }
        let hosts: Vec<HostInfo> = self.store.hosts().await?.into_iter().map(|h| h.info).collect();
        let known = hosts.iter().any(|h| h.serves(operation, queue));
        *self.hosts.lock() = Some((Instant::now(), hosts));
        Ok(known)
    }

    /// Marks a job running here as lost and stops its worker.
    pub(super) fn abandon(&self, id: &Uuid) {
        if let Some(r) = self.running.lock().get_mut(id) {
            r.abandoned = true;
            self.kicks[r.slot].notify_one();
        }
    }

    /// When no slot can run jobs any more, queued jobs fail instead of
    /// waiting forever. In a shared store other hosts may still run them.
    pub(super) async fn fail_queue_if_dead(&self) {
        let reason = dead_reason(&self.slots.lock());
        if let (Some(reason), false) = (reason, self.store.shared()) {
            let err = JobError::new("POOL_UNAVAILABLE", format!("No worker can start: {reason}"));
            let _ = self.store.release(&self.host.id, &err, true).await;
        }
    }
}

pub(super) fn dead_reason(slots: &[SlotInfo]) -> Option<String> {
    let mut reason = None;
    for s in slots {
        match &s.state {
            SlotState::Failed(r) => reason = Some(r.clone()),
            _ => return None,
        }
    }
    reason
}

pub(super) fn stopping(stop: &watch::Receiver<bool>) -> bool {
    *stop.borrow()
}

/// Resolves once the pool is told to stop (or its handle is gone).
pub(super) async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|v| *v).await;
}

/// Counts a slot as idle while it lives.
pub(super) struct IdleGuard<'a>(&'a AtomicUsize);

impl<'a> IdleGuard<'a> {
    pub(super) fn new(n: &'a AtomicUsize) -> IdleGuard<'a> {
        n.fetch_add(1, Ordering::SeqCst);
        IdleGuard(n)
    }
}

impl Drop for IdleGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}
