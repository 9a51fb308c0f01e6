//! The state a pool's tasks share: its configuration, its slots as
//! [`get_worker_status()`] shows them, the jobs it holds, and the signals
//! that pass between the claimer, the keeper and the slots.
//!
//! May import: `job`, `sys`, `store`, and `pool::reaper`.

use super::reaper::{Containment, Mechanism};
use super::worker::Spec;
use crate::job::{Claimed, JobError, Lease};
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
    /// Finished jobs older than this are deleted on a timer.
    pub retention: Option<Duration>,
    /// Log claims on stderr (worker-only hosts).
    pub verbose: bool,
    /// Longest wait between two polls of a shared store for work.
    pub max_poll: Duration,
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
