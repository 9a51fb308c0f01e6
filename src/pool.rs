//! The pool: a thread of its own running a single-threaded tokio runtime,
//! with one task per worker slot, one that claims work and one that keeps
//! the leases.
//!
//! * Idle slots are woken newest first: a slot that just finished has warm
//!   caches and buffers. With the memory store an idle slot takes its next
//!   job itself. With a
//!   shared store the claimer takes up to k jobs for k idle slots, when a
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

use crate::protocol::{Kind, ProtocolError, FIELD_SEP};
use crate::registry::{
    Cancel, Claimed, HostInfo, JobError, Lease, NewJob, Outcome, Progress, Report, Signal, Store, StoreResult, Submit,
    OUTPUT_LIMIT,
};
use crate::reaper::{Containment, Mechanism};
use crate::worker::{Event, ExitStatus, Process, Spec, Stream};
use parking_lot::Mutex;
use std::collections::{HashMap, HashSet, VecDeque};
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
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
struct Running {
    slot: usize,
    lease: Lease,
    abandoned: bool,
}

/// Whether the store answers the keeper, and since when.
#[derive(Default)]
struct Health {
    up_since: Option<Instant>,
    last_renew: Option<Instant>,
    down: bool,
}

struct Shared {
    store: Arc<dyn Store>,
    config: Config,
    host: HostInfo,
    slots: Mutex<Vec<SlotInfo>>,
    /// Jobs claimed for idle slots, not yet taken by one.
    ready: Mutex<VecDeque<Claimed>>,
    ready_signal: Notify,
    claim_signal: Notify,
    idle: AtomicUsize,
    running: Mutex<HashMap<Uuid, Running>>,
    kicks: Vec<Notify>,
    stop: watch::Sender<bool>,
    /// Set by a drain: claim nothing more; idle workers stop.
    draining: watch::Sender<bool>,
    health: Mutex<Health>,
    containment: Containment,
}

/// One line on stderr with a UTC timestamp: what a pool tells its operator.
pub fn log(msg: &str) {
    let t = crate::registry::iso8601(crate::registry::now());
    let _ = writeln!(std::io::stderr(), "{t} asyncjobs: {msg}");
}

impl Shared {
    fn update_slot(&self, slot: usize, f: impl FnOnce(&mut SlotInfo)) {
        f(&mut self.slots.lock()[slot]);
    }

    fn echo(&self, id: Option<&Uuid>, bytes: &[u8]) {
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
    fn store_result<T>(&self, what: &str, r: StoreResult<T>) -> Option<T> {
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
    fn abandon(&self, id: &Uuid) {
        if let Some(r) = self.running.lock().get_mut(id) {
            r.abandoned = true;
            self.kicks[r.slot].notify_one();
        }
    }

    /// When no slot can run jobs any more, queued jobs fail instead of
    /// waiting forever. In a shared store other hosts may still run them.
    async fn fail_queue_if_dead(&self) {
        let reason = dead_reason(&self.slots.lock());
        if let (Some(reason), false) = (reason, self.store.shared()) {
            let err = JobError::new("POOL_UNAVAILABLE", format!("No worker can start: {reason}"));
            let _ = self.store.release(&self.host.id, &err, true).await;
        }
    }
}

fn dead_reason(slots: &[SlotInfo]) -> Option<String> {
    let mut reason = None;
    for s in slots {
        match &s.state {
            SlotState::Failed(r) => reason = Some(r.clone()),
            _ => return None,
        }
    }
    reason
}

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
        let host = HostInfo::this_process(size, config.queues.clone());
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
        let operation = job.operation.clone(); // metrics
        let r = self.shared.store.submit(job, self.capacity()).await?;
        crate::metrics::submitted(&operation, &r);
        if r == Submit::Accepted {
            // A local store's jobs are taken by the slots themselves.
            if self.shared.store.shared() {
                self.shared.claim_signal.notify_one();
            } else {
                self.shared.ready_signal.notify_last();
            }
        }
        Ok(r)
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

/// R's signal handlers must only ever run on the R main thread.
pub fn block_async_signals() {
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut set);
        for sig in [libc::SIGSEGV, libc::SIGBUS, libc::SIGFPE, libc::SIGILL, libc::SIGTRAP, libc::SIGABRT] {
            libc::sigdelset(&mut set, sig);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

fn stopping(stop: &watch::Receiver<bool>) -> bool {
    *stop.borrow()
}

/// Resolves once the pool is told to stop (or its handle is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|v| *v).await;
}

async fn run_pool(sh: Arc<Shared>) {
    let slots: Vec<_> = (0..sh.config.size).map(|slot| tokio::spawn(run_slot(sh.clone(), slot))).collect();
    let claimer = sh.store.shared().then(|| tokio::spawn(claimer(sh.clone())));
    let keeper = tokio::spawn(keeper(sh.clone()));
    for t in slots {
        let _ = t.await;
    }
    if let Some(c) = claimer {
        let _ = c.await;
    }
    let _ = keeper.await;
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
            let busy = !mine.is_empty() || !sh.ready.lock().is_empty();
            if busy || n % every == 0 {
                // Bounded by a third of the lease, so that a stuck connection
                // cannot outlast the leases it is meant to keep.
                let renewed = match tokio::time::timeout(lease / 3, sh.store.renew(&sh.host.id)).await {
                    Ok(r) => r,
                    Err(_) => Err(crate::registry::StoreError("lease renewal took longer than a third of the lease".into())),
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

/// Counts a slot as idle while it lives.
struct IdleGuard<'a>(&'a AtomicUsize);

impl<'a> IdleGuard<'a> {
    fn new(n: &'a AtomicUsize) -> IdleGuard<'a> {
        n.fetch_add(1, Ordering::SeqCst);
        IdleGuard(n)
    }
}

impl Drop for IdleGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Why a worker's service ended.
enum End {
    /// Pool is stopping.
    Stop,
    /// Replace it between jobs: it ran its quota or grew too large.
    Replace,
    /// Its job was abandoned mid-run (timeout, cancel, lost lease, protocol
    /// error): terminate it now, without asking.
    Kill,
    /// It is already dead.
    Died,
    /// It exited while putting its state back after a job; its stderr says why.
    ResetFailed(String),
}

/// The last bytes of a stream: a worker's stderr while it starts (to explain
/// a failure), a job's captured output.
struct Tail {
    bytes: VecDeque<u8>,
    limit: usize,
}

impl Tail {
    fn new(limit: usize) -> Tail {
        Tail { bytes: VecDeque::new(), limit }
    }
    fn push(&mut self, b: &[u8]) {
        let b = &b[b.len().saturating_sub(self.limit)..];
        let overflow = (self.bytes.len() + b.len()).saturating_sub(self.limit);
        self.bytes.drain(..overflow);
        self.bytes.extend(b);
    }
    fn bytes(&mut self) -> &[u8] {
        self.bytes.make_contiguous()
    }
    fn text(&mut self) -> String {
        String::from_utf8_lossy(self.bytes()).trim().to_string()
    }
}

async fn run_slot(sh: Arc<Shared>, slot: usize) {
    let mut stop = sh.stop.subscribe();
    let mut failures = 0u32;
    let draining = sh.draining.subscribe();
    while !stopping(&stop) && !*draining.borrow() {
        sh.update_slot(slot, |s| {
            s.state = SlotState::Starting;
            s.pid = None;
            s.jobs_done = 0;
        });
        match start_worker(&sh, slot, &mut stop).await {
            Ok(mut w) => {
                failures = 0;
                let end = serve(&sh, slot, &mut w, &mut stop).await;
                sh.update_slot(slot, |s| s.state = SlotState::Stopping);
                crate::metrics::worker_restarted(match end {
                    End::Died => "crashed",
                    End::ResetFailed(_) => "reset_failed",
                    End::Kill => "killed",
                    End::Replace => "recycled",
                    End::Stop => "",
                });
                let status = match &end {
                    End::Died => {
                        w.release_tree().await;
                        w.exited().unwrap_or(ExitStatus(0))
                    }
                    // It said why and is exiting; make sure of it.
                    End::ResetFailed(_) => w.terminate(sh.config.stop_grace).await,
                    End::Replace => w.shutdown(sh.config.stop_grace).await,
                    End::Kill => w.terminate(sh.config.stop_grace).await,
                    End::Stop => w.terminate(sh.config.stop_grace).await,
                };
                let why = match end {
                    End::ResetFailed(why) => format!(" after a job: {why}"),
                    _ => String::new(),
                };
                sh.update_slot(slot, |s| s.last_exit = Some(format!("worker {} {status}{why}", w.pid)));
            }
            Err(None) => break,
            Err(Some(reason)) => {
                failures += 1;
                crate::metrics::worker_restarted("setup_failed");
                sh.update_slot(slot, |s| s.last_exit = Some(reason.clone()));
                if failures >= sh.config.max_setup_failures {
                    sh.update_slot(slot, |s| {
                        s.state = SlotState::Failed(reason);
                        s.pid = None;
                    });
                    sh.fail_queue_if_dead().await;
                    stopped(&mut stop).await;
                    return;
                }
                let backoff = Duration::from_millis(100 << (failures - 1).min(6));
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stopped(&mut stop) => break,
                }
            }
        }
    }
    sh.update_slot(slot, |s| {
        s.state = SlotState::Stopped;
        s.pid = None;
    });
}

/// Spawns a worker and waits until its setup is done. Err(None) means the
/// pool is stopping; Err(Some(reason)) is a failed start.
async fn start_worker(
    sh: &Shared,
    slot: usize,
    stop: &mut watch::Receiver<bool>,
) -> Result<Process, Option<String>> {
    let max_frame = sh.config.max_result_bytes.saturating_add(1 << 20);
    let tree = sh.containment.next();
    let spawned = match Process::spawn_in(&sh.config.spec, max_frame, tree.clone()) {
        Err(e) if tree.mechanism == Mechanism::Cgroup => {
            tree.remove();
            let refused = [libc::EACCES, libc::EPERM, libc::EROFS, libc::EBUSY, libc::EOPNOTSUPP, libc::EINVAL];
            if e.raw_os_error().is_some_and(|c| refused.contains(&c)) {
                // Not allowed to join its cgroup: the next level down, for good.
                sh.containment.cgroup_failed(&e);
                Process::spawn_in(&sh.config.spec, max_frame, sh.containment.next())
            } else {
                Err(e)
            }
        }
        r => r,
    };
    let mut w = spawned.map_err(|e| Some(format!("cannot start {}: {e}", sh.config.spec.program.display())))?;
    sh.update_slot(slot, |s| {
        s.pid = Some(w.pid);
        s.spawned += 1;
        s.containment = Some(w.tree.mechanism);
    });
    let _ = w.send(Kind::Init, Uuid::nil(), 0, "", &[&sh.config.init]).await;
    let mut stderr = Tail::new(2048);
    let deadline = tokio::time::sleep(sh.config.setup_timeout);
    tokio::pin!(deadline);
    let failure = loop {
        tokio::select! {
            ev = w.next_event() => match ev {
                Event::Frame(f) if f.kind == Kind::Ready => {
                    sh.update_slot(slot, |s| s.state = SlotState::Idle);
                    return Ok(w);
                }
                Event::Frame(f) if f.kind == Kind::SetupFailed => break format!("setup failed: {}", f.text),
                Event::Frame(f) => break format!("unexpected {:?} frame during setup", f.kind),
                Event::Output(stream, bytes) => {
                    if stream == Stream::Stderr {
                        stderr.push(&bytes);
                    }
                    sh.echo(None, &bytes);
                }
                Event::Exited(status) => {
                    break format!("worker {} {status} during setup: {}", w.pid, stderr.text());
                }
                Event::Protocol(e) => break format!("protocol error during setup: {e}"),
            },
            _ = &mut deadline => {
                break format!("setup did not finish within {} ms", sh.config.setup_timeout.as_millis());
            }
            _ = stopped(stop) => {
                w.terminate(sh.config.stop_grace).await;
                return Err(None);
            }
        }
    };
    w.terminate(sh.config.stop_grace).await;
    Err(Some(failure))
}

/// Runs jobs on one worker until it has to go.
async fn serve(sh: &Shared, slot: usize, w: &mut Process, stop: &mut watch::Receiver<bool>) -> End {
    let mut jobs_done = 0u64;
    let mut draining = sh.draining.subscribe();
    loop {
        // Idle: wait for a claimed job, watching the worker meanwhile.
        let job = {
            let _idle = IdleGuard::new(&sh.idle);
            loop {
                if stopping(stop) || (*draining.borrow_and_update() && sh.ready.lock().is_empty()) {
                    return End::Stop;
                }
                let notified = sh.ready_signal.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if let Some(c) = sh.ready.lock().pop_front() {
                    break c;
                }
                if sh.store.shared() {
                    sh.claim_signal.notify_one();
                } else if let Some(c) = sh.store.claim(&sh.host.id, &sh.config.queues, 1).await.ok().and_then(|mut v| v.pop()) {
                    break c;
                }
                tokio::select! {
                    _ = notified => {}
                    _ = draining.changed() => {}
                    ev = w.next_event() => match ev {
                        Event::Output(_, bytes) => sh.echo(None, &bytes),
                        Event::Exited(_) => return End::Died,
                        Event::Frame(_) | Event::Protocol(_) => return End::Kill,
                    },
                    _ = stopped(stop) => return End::Stop,
                }
            }
        };
        let id = job.lease.id;
        sh.running.lock().insert(id, Running { slot, lease: job.lease, abandoned: false });
        sh.update_slot(slot, |s| s.state = SlotState::Busy(id));
        let end = run_job(sh, slot, w, stop, job).await;
        sh.running.lock().remove(&id);
        if let Some(end) = end {
            return end;
        }
        if let Err(end) = await_reset(sh, w, stop).await {
            return end;
        }
        jobs_done += 1;
        // Reading /proc costs a system call per job: only when a limit needs it.
        let rss = if sh.config.max_rss_bytes < u64::MAX { w.rss_bytes() } else { None };
        sh.update_slot(slot, |s| {
            s.state = SlotState::Idle;
            s.jobs_done = jobs_done;
            s.rss_bytes = rss;
        });
        if jobs_done >= sh.config.max_jobs_per_worker || rss.is_some_and(|r| r > sh.config.max_rss_bytes) {
            return End::Replace;
        }
    }
}

/// Waits for the worker's ready frame: after a job's outcome it puts its R
/// session back to the state setup left, and takes no job until it has.
async fn await_reset(sh: &Shared, w: &mut Process, stop: &mut watch::Receiver<bool>) -> Result<(), End> {
    let deadline = tokio::time::sleep(sh.config.setup_timeout);
    tokio::pin!(deadline);
    let mut stderr = Tail::new(2048);
    loop {
        tokio::select! {
            ev = w.next_event() => match ev {
                Event::Frame(f) if f.kind == Kind::Ready && f.job.is_nil() => return Ok(()),
                Event::Frame(f) if f.kind == Kind::SetupFailed && f.job.is_nil() => return Err(End::ResetFailed(f.text)),
                Event::Output(stream, bytes) => {
                    if stream == Stream::Stderr {
                        stderr.push(&bytes);
                    }
                    sh.echo(None, &bytes);
                }
                Event::Exited(_) => return Err(End::ResetFailed(stderr.text().trim().to_owned())),
                Event::Frame(_) | Event::Protocol(_) => return Err(End::Kill),
            },
            _ = &mut deadline => return Err(End::Kill),
            _ = stopped(stop) => return Err(End::Stop),
        }
    }
}

/// What a running job has reported and not yet written to the store.
struct Unwritten {
    progress: Option<Progress>,
    output: Tail,
    pid: Option<u32>,
    dirty: bool,
}

/// Writes what a job reported; false once its lease is lost.
async fn write_report(sh: &Shared, lease: &Lease, u: &mut Unwritten) -> bool {
    u.dirty = false;
    let pid = u.pid.take();
    let progress = u.progress.take();
    let out = u.output.bytes();
    let report = Report { pid, progress: progress.as_ref(), output: (!out.is_empty()).then_some(&*out) };
    // A failed write is retried with the next report; the outcome is what must land.
    sh.store.report(lease, report).await.unwrap_or(true)
}

/// Writes a job's outcome, retrying while the store is away (the job is done;
/// only the record is missing). False when the lease was lost meanwhile.
async fn write_outcome(sh: &Shared, lease: &Lease, outcome: Outcome, u: &mut Unwritten, stop: &watch::Receiver<bool>) -> bool {
    let mut wait = Duration::from_millis(100);
    loop {
        let out = u.output.bytes();
        let r = sh.store.finish(lease, &outcome, (!out.is_empty()).then_some(out)).await;
        match sh.store_result("writing a job's outcome", r) {
            Some(done) => return done,
            None if stopping(stop) => return false,
            None => {
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// Runs one job. None: the worker is ready for the next one.
async fn run_job(
    sh: &Shared,
    slot: usize,
    w: &mut Process,
    stop: &mut watch::Receiver<bool>,
    job: Claimed,
) -> Option<End> {
    let lease = job.lease;
    let id = lease.id;
    let mut u = Unwritten { progress: None, output: Tail::new(OUTPUT_LIMIT), pid: Some(w.pid), dirty: true };
    let interval = sh.store.report_interval();
    let text = format!("{id}{FIELD_SEP}{}", job.executor.len());
    let timeout_ms = job.timeout_ms;
    let (operation, started) = (job.operation.clone(), Instant::now()); // metrics
    let deadline = tokio::time::sleep(Duration::from_millis(job.timeout_ms));
    tokio::pin!(deadline);
    let blobs: [&[u8]; 2] = [&job.executor, &job.params];
    // Frames about this job must carry this tag: the job's code never sees it.
    let tag = Uuid::new_v4().as_u64_pair().0 | 1; // never 0, which means "no job"
    let sent = tokio::select! {
        r = w.send(Kind::Job, id, tag, &text, &blobs) => r.is_ok(),
        _ = &mut deadline => false,
    };
    drop(job);
    if !sent && w.exited().is_none() {
        let err = JobError::new("WORKER_CRASHED", format!("worker {} stopped reading its job", w.pid));
        write_outcome(sh, &lease, Outcome::Failed(err), &mut u, stop).await;
        return Some(End::Kill);
    }
    let every = interval.max(Duration::from_millis(1));
    let mut flush = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if u.dirty && interval.is_zero() && !write_report(sh, &lease, &mut u).await {
            return Some(End::Kill);
        }
        let (outcome, end) = tokio::select! {
            ev = w.next_event() => match ev {
                Event::Frame(f) if f.job != id || f.tag != tag => {
                    let msg = format!("worker {} sent a {:?} frame that does not belong to this job; \
                                       the job or a process it started wrote to the worker's frame pipe", w.pid, f.kind);
                    (Outcome::Failed(JobError::new("PROTOCOL_ERROR", msg)), Some(End::Kill))
                }
                Event::Frame(f) => match f.kind {
                    Kind::Progress => {
                        u.progress = Some(Progress::parse(&f.text));
                        u.dirty = true;
                        continue;
                    }
                    Kind::Result => (Outcome::Completed(f.blob), None),
                    Kind::Failed => {
                        let (code, message) = f.text.split_once(FIELD_SEP).unwrap_or(("EXECUTION_ERROR", &f.text));
                        let mut err = JobError::new(code, message);
                        err.detail = (!f.blob.is_empty()).then(|| Arc::from(f.blob));
                        (Outcome::Failed(err), None)
                    }
                    other => {
                        let msg = format!("worker {} sent an unexpected {other:?} frame", w.pid);
                        (Outcome::Failed(JobError::new("PROTOCOL_ERROR", msg)), Some(End::Kill))
                    }
                },
                Event::Output(_, bytes) => {
                    sh.echo(Some(&id), &bytes);
                    u.output.push(&bytes);
                    u.dirty = true;
                    continue;
                }
                Event::Exited(status) => {
                    let msg = format!("worker process {} {status} while running the job", w.pid);
                    (Outcome::Failed(JobError::new("WORKER_CRASHED", msg)), Some(End::Died))
                }
                Event::Protocol(e) => {
                    let code = match e {
                        ProtocolError::TooLarge { .. } => "RESULT_TOO_LARGE",
                        _ => "PROTOCOL_ERROR",
                    };
                    (Outcome::Failed(JobError::new(code, format!("worker {}: {e}", w.pid))), Some(End::Kill))
                }
            },
            _ = &mut deadline => {
                let msg = format!("Job exceeded its timeout of {timeout_ms} ms; its worker was stopped");
                (Outcome::Failed(JobError::new("TIMEOUT", msg)), Some(End::Kill))
            }
            _ = sh.kicks[slot].notified() => {
                // Cancelled, or rescued by another host: the work is abandoned.
                if sh.running.lock().get(&id).is_some_and(|r| r.abandoned) {
                    return Some(End::Kill);
                }
                continue;
            }
            _ = flush.tick(), if u.dirty && !interval.is_zero() => {
                if !write_report(sh, &lease, &mut u).await {
                    return Some(End::Kill);
                }
                continue;
            }
            _ = stopped(stop) => return Some(End::Stop),
        };
        let ended = crate::metrics::JobEnd::of(&operation, &outcome, started);
        if write_outcome(sh, &lease, outcome, &mut u, stop).await { ended.record() }
        return end;
    }
}
