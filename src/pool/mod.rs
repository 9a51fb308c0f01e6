//! The pool: a thread of its own running a single-threaded tokio runtime,
//! with one task per worker slot, one that claims work and one that keeps
//! the leases.
//!
//! * Idle slots are woken newest first: a slot that just finished has warm
//!   caches and buffers. With the memory store an idle slot takes its next
//!   job itself. With a shared store the claimer takes up to k jobs for k idle slots, when a
//!   job is submitted here, a slot frees up, the store signals a submit
//!   (PostgreSQL's NOTIFY), or (for a shared store) on an adaptive poll:
//!   50 ms after work was found, backing off to 1 s. It also stops at once
//!   the jobs the store signals as cancelled.
//! * Each slot task owns its worker process and runs one `select!` loop over
//!   the worker's events, the job's deadline, a kick (cancel, lost lease) and
//!   shutdown.
//! * The keeper renews this pool's leases every second while it runs jobs
//!   (its host heartbeat every lease/3 when idle), notices jobs it no longer
//!   holds (cancelled or rescued elsewhere) and kicks their slots, rescues
//!   jobs of lost hosts (every lease/3, at most 5 s),
//!   and deletes old jobs when a retention is set. It runs on this thread,
//!   not in the R workers, so a CPU-bound job can never look stalled.
//!
//! Callers on the R main thread never wait on this runtime.
//!
//! Owns: the pool's thread and tasks, the worker processes and what their
//! jobs start. Modules, from the ground up: `reaper` (containment of a
//! worker's process tree), `worker` (one R process and its pipes), `shared`
//! (the state the pool's tasks share), `slot` (one slot's supervision), and
//! here the [`Pool`] handle, the claimer and the keeper. May import: `job`,
//! `sys`, `metrics`, `protocol`, `store`.

pub mod reaper;
mod shared;
mod slot;
pub mod worker;

pub use shared::{Config, SlotInfo, SlotState};

use crate::job::{sha256, Cancel, Lease, NewJob, Slot, Submit};
use crate::schedule::{self, Schedule, Timing};
use crate::sys;
use crate::store::{HostInfo, Signal, Store, StoreError, StoreResult};
use crate::sys::{block_async_signals, log};
use crate::job::JobError;
use reaper::Containment;
use shared::{dead_reason, stopped, stopping, Health, Shared};
use slot::run_slot;
use parking_lot::Mutex;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};
use uuid::Uuid;

/// Handle held by the R side. Dropping it stops the pool.
pub struct Pool {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Pool {
    pub fn start(store: Arc<dyn Store>, config: Config) -> std::io::Result<Pool> {
        let size = config.size;
        let (stop, _) = watch::channel(false);
        let (draining, _) = watch::channel(false);
        let host = HostInfo::this_process(size, config.queues.clone(), config.operations.clone());
        let shared = Arc::new(Shared {
            store,
            host,
            slots: Mutex::new(
                (0..size)
                    .map(|slot| SlotInfo {
                        slot,
                        pid: None,
                        state: SlotState::Starting,
                        jobs_done: 0,
                        spawned: 0,
                        last_exit: None,
                        rss_bytes: None,
                        containment: None,
                    })
                    .collect(),
            ),
            ready: Mutex::new(VecDeque::new()),
            ready_signal: Notify::new(),
            claim_signal: Notify::new(),
            idle: AtomicUsize::new(0),
            running: Mutex::new(HashMap::new()),
            kicks: (0..size).map(|_| Notify::new()).collect(),
            stop,
            draining,
            health: Mutex::new(Health::default()),
            containment: Containment::detect(),
            hosts: Mutex::new(None),
            schedules_changed: Notify::new(),
            config,
        });
        let sh = shared.clone();
        let thread = std::thread::Builder::new().name("asyncjobs-pool".into()).spawn(move || {
            block_async_signals();
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build();
            let Ok(rt) = rt else { return };
            rt.block_on(run_pool(sh));
        })?;
        Ok(Pool { shared, thread: Some(thread) })
    }

    pub fn size(&self) -> usize {
        self.shared.config.size
    }

    pub fn capacity(&self) -> usize {
        self.shared.config.capacity
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.shared.store
    }

    pub fn host(&self) -> &HostInfo {
        &self.shared.host
    }

    pub async fn submit(&self, job: NewJob) -> StoreResult<Submit> {
        self.shared.submit(job, self.capacity()).await
    }

    /// Whether a handler job of `operation` from `queue` has somewhere to run.
    pub async fn knows(&self, operation: &str, queue: &str) -> StoreResult<bool> {
        self.shared.knows(operation, queue).await
    }

    /// The keeper looks at the schedules at once (one was added or changed).
    pub fn schedules_changed(&self) {
        self.shared.schedules_changed.notify_one();
    }

    /// Cancels a job; a worker running it here is stopped at once. A job
    /// running on another host is stopped by that host's keeper.
    pub async fn cancel(&self, id: &Uuid) -> StoreResult<Cancel> {
        let r = self.shared.store.cancel(id).await?;
        if let Cancel::WasRunning(_) = r {
            self.shared.abandon(id);
        }
        Ok(r)
    }

    pub fn workers(&self) -> Vec<SlotInfo> {
        self.shared.slots.lock().clone()
    }

    /// Why the pool cannot run jobs, when every slot has given up.
    pub fn unavailable(&self) -> Option<String> {
        dead_reason(&self.shared.slots.lock())
    }

    /// Stops claiming: workers finish the jobs they hold, idle ones stop.
    pub fn drain(&self) {
        if !self.shared.draining.send_replace(true) {
            log(&format!("draining: {} job(s) running", self.busy()));
        }
    }

    /// Jobs this pool holds: running, or claimed and about to run.
    pub fn busy(&self) -> usize {
        self.shared.running.lock().len() + self.shared.ready.lock().len()
    }

    /// Tells every slot to stop. The pool thread then fails (or re-queues)
    /// what this pool was running, and with the memory store what is pending.
    pub fn begin_stop(&self) {
        self.shared.stop.send_replace(true);
    }

    /// Waits at most `limit` for the pool thread to end; true once it has.
    pub fn wait_stopped(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            match &self.thread {
                None => return true,
                Some(t) if t.is_finished() => {
                    let _ = self.thread.take().map(JoinHandle::join);
                    return true;
                }
                Some(_) if Instant::now() >= deadline => return false,
                Some(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.begin_stop();
        self.wait_stopped(Duration::from_secs(30));
    }
}

async fn run_pool(sh: Arc<Shared>) {
    let slots: Vec<_> = (0..sh.config.size).map(|slot| tokio::spawn(run_slot(sh.clone(), slot))).collect();
    let claimer = sh.store.shared().then(|| tokio::spawn(claimer(sh.clone())));
    let keeper = tokio::spawn(keeper(sh.clone()));
    let scheduler = tokio::spawn(scheduler(sh.clone()));
    for t in slots {
        let _ = t.await;
    }
    if let Some(c) = claimer {
        let _ = c.await;
    }
    let _ = keeper.await;
    let _ = scheduler.await;
    // Every worker is gone: what this pool still holds fails (or goes back
    // to the queue when attempts remain). Bounded: with the store away, the
    // leases expire and another host rescues the jobs.
    let err = JobError::new("SHUTDOWN", "The worker pool was stopped before the job finished");
    let pending = !sh.store.shared();
    let release = async {
        loop {
            match sh.store.release(&sh.host.id, &err, pending).await {
                Ok(_) => return,
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    };
    if tokio::time::timeout(Duration::from_secs(5), release).await.is_err() {
        log("could not release this pool's jobs; other hosts will rescue them when their leases expire");
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), sh.store.deregister_host(&sh.host.id)).await;
}

/// The next signal a store pushes; never, for a store that pushes none.
async fn next_signal(rx: &mut Option<tokio::sync::broadcast::Receiver<Signal>>) -> Signal {
    match rx {
        None => std::future::pending().await,
        Some(rx) => match rx.recv().await {
            Ok(s) => s,
            // Missed some: look at the store.
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => Signal::Submitted,
            Err(tokio::sync::broadcast::error::RecvError::Closed) => std::future::pending().await,
        },
    }
}

/// Claims jobs for idle slots; relays cancels pushed by the store.
async fn claimer(sh: Arc<Shared>) {
    let mut stop = sh.stop.subscribe();
    let mut signals = sh.store.signals();
    let (min_poll, max_poll) = (Duration::from_millis(50).min(sh.config.max_poll), sh.config.max_poll);
    let mut poll = min_poll;
    while !stopping(&stop) {
        let wake = sh.claim_signal.notified();
        tokio::pin!(wake);
        wake.as_mut().enable();
        let draining = *sh.draining.borrow();
        let free = if draining { 0 } else { sh.idle.load(Ordering::SeqCst).saturating_sub(sh.ready.lock().len()) };
        if free > 0 {
            let claimed = sh.store.claim(&sh.host.id, &sh.config.queues, free).await;
            match sh.store_result("claiming jobs", claimed) {
                Some(jobs) => {
                    let (n, all) = (jobs.len(), jobs.len() == free);
                    if n > 0 && sh.config.verbose {
                        let ids: Vec<String> = jobs.iter().map(|c| c.lease.id.to_string()[..8].to_owned()).collect();
                        log(&format!("claimed {n} job(s): {}", ids.join(" ")));
                    }
                    if n > 0 {
                        sh.ready.lock().extend(jobs);
                        for _ in 0..n {
                            sh.ready_signal.notify_last();
                        }
                        poll = min_poll;
                        if all {
                            // More may be waiting for slots that free up.
                            tokio::task::yield_now().await;
                            continue;
                        }
                    } else {
                        poll = (poll * 2).min(max_poll);
                    }
                }
                None => poll = max_poll,
            }
        }
        // Work submitted elsewhere is only seen by polling a shared store.
        let timer = tokio::time::sleep(if sh.store.shared() && free > 0 { poll } else { Duration::from_secs(3600) });
        tokio::select! {
            _ = wake => {}
            _ = timer => {}
            signal = next_signal(&mut signals) => {
                if let Signal::Cancelled(id) = signal {
                    sh.abandon(&id);
                }
            }
            _ = stopped(&mut stop) => break,
        }
    }
}

/// Renews leases, notices lost ones, rescues lost hosts' jobs, applies retention.
async fn keeper(sh: Arc<Shared>) {
    let mut stop = sh.stop.subscribe();
    let shared = sh.store.shared();
    if !shared {
        let _ = sh.store.register_host(&sh.host).await;
    } else {
        loop {
            let r = sh.store.register_host(&sh.host).await;
            if sh.store_result("registering this host", r).is_some() {
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = stopped(&mut stop) => return,
            }
        }
        sh.health.lock().last_renew = Some(Instant::now());
    }
    let lease = sh.store.lease();
    // Idle, only the host heartbeat needs renewing; rescue runs a few times per lease.
    let every = (lease.as_secs() / 3).clamp(1, 5);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_cleanup = Instant::now();
    let mut n: u64 = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stopped(&mut stop) => break,
        }
        n += 1;
        if shared {
            // Only jobs that were running before the renewal can be missing from it.
            let mine: Vec<(Uuid, Lease)> = sh.running.lock().iter().map(|(id, r)| (*id, r.lease)).collect();
            // The leases of jobs held here: running, or claimed and waiting for a
            // slot. Any other (a job whose outcome could not be written) expires.
            let held: Vec<Lease> = mine.iter().map(|(_, l)| *l).chain(sh.ready.lock().iter().map(|c| c.lease)).collect();
            let busy = !held.is_empty();
            if busy || n % every == 0 {
                // Bounded by a third of the lease, so that a stuck connection
                // cannot outlast the leases it is meant to keep.
                let renewed = match tokio::time::timeout(lease / 3, sh.store.renew(&sh.host.id, &held)).await {
                    Ok(r) => r,
                    Err(_) => Err(StoreError::unavailable("lease renewal took longer than a third of the lease")),
                };
                if let Some(held) = sh.store_result("renewing leases", renewed) {
                    sh.health.lock().last_renew = Some(Instant::now());
                    let held: HashSet<Lease> = held.into_iter().collect();
                    for (id, l) in mine {
                        if !held.contains(&l) {
                            sh.abandon(&id);
                        }
                    }
                }
            }
            let may_rescue = {
                let h = sh.health.lock();
                // After an outage every host renews before any rescues.
                h.up_since.is_some_and(|t| t.elapsed() >= Duration::from_secs(3))
                    && h.last_renew.is_some_and(|t| t.elapsed() < lease)
            };
            if n % every == 0 && may_rescue {
                let rescued = sh.store.rescue().await;
                if let Some(ids) = sh.store_result("rescuing jobs", rescued) {
                    if !ids.is_empty() {
                        log(&format!("rescued {} job(s) of lost hosts", ids.len()));
                        sh.claim_signal.notify_one();
                    }
                }
            }
        }
        if let Some(age) = sh.config.retention {
            let every = (age / 10).clamp(Duration::from_secs(1), Duration::from_secs(60));
            if last_cleanup.elapsed() >= every {
                last_cleanup = Instant::now();
                for _ in 0..20 {
                    match sh.store.cleanup(age.as_secs_f64(), 1000).await {
                        Ok(ids) if ids.len() == 1000 => continue,
                        _ => break,
                    }
                }
            }
        }
    }
}

/// Fires the store's recurring jobs whose slots are due. Every pool does,
/// on every host; the store adds each slot's job once (see `schedule`).
/// Idle, it reads the schedules every [`SCHEDULES_EVERY`] (a schedule
/// another process adds is seen then), else when the next slot is due.
async fn scheduler(sh: Arc<Shared>) {
    let mut stop = sh.stop.subscribe();
    let mut timings: HashMap<(String, String), Option<Arc<Timing>>> = HashMap::new();
    while !stopping(&stop) {
        let changed = sh.schedules_changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        let now = sys::now();
        let mut wake = now + SCHEDULES_EVERY.as_secs_f64();
        let schedules = sh.store.schedules().await;
        match sh.store_result("reading schedules", schedules) {
            Some(all) => {
                if timings.len() > 1000 {
                    timings.clear();
                }
                for s in all {
                    let timing = timings
                        .entry((s.cron.clone(), s.tz.clone()))
                        .or_insert_with(|| Timing::parse(&s.cron, &s.tz).ok().map(Arc::new))
                        .clone();
                    let Some(timing) = timing else { continue };
                    let (slots, next) = schedule::due(&s, &timing, now);
                    if !slots.is_empty() || next != s.next_at {
                        let jobs = slots.iter().map(|&at| slot_job(&s, at)).collect();
                        let fired = sh.store.fire(&s.name, s.next_at, next, jobs).await;
                        if sh.store_result("firing a schedule", fired).is_some_and(|n| n > 0) {
                            if sh.store.shared() {
                                sh.claim_signal.notify_one();
                            } else {
                                sh.ready_signal.notify_last();
                            }
                        }
                    }
                    wake = wake.min(next);
                }
            }
            None => wake = now + 1.0,
        }
        let wait = Duration::from_secs_f64((wake - sys::now()).clamp(0.05, SCHEDULES_EVERY.as_secs_f64()));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = changed => {}
            _ = stopped(&mut stop) => break,
        }
    }
}

/// How often an idle scheduler reads the schedules.
const SCHEDULES_EVERY: Duration = Duration::from_secs(5);

/// The job a schedule fires for its slot `at`.
fn slot_job(s: &Schedule, at: f64) -> NewJob {
    NewJob {
        id: Uuid::new_v4(),
        operation: s.operation.clone(),
        params_hash: Some(sha256(&s.params)),
        params: Arc::new(s.params.clone()),
        params_json: true,
        timeout_ms: s.timeout_ms,
        queue: s.queue.clone(),
        priority: s.priority,
        max_attempts: s.max_attempts,
        slot: Some(Slot { schedule: s.name.clone(), at }),
        ..NewJob::default()
    }
}
