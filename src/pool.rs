//! The pool: a thread of its own running a single-threaded tokio runtime,
//! with one task per worker slot.
//!
//! Each slot task owns its worker process and runs one `select!` loop over the
//! worker's events, the job's deadline, a kick (cancel) and shutdown. Work is
//! handed out through the registry's queue plus a `Notify`; callers on the R
//! main thread never wait on the runtime.

use crate::protocol::{Kind, ProtocolError, FIELD_SEP};
use crate::registry::{now, Cancel, Dispatch, JobError, NewJob, Outcome, Progress, Registry, Status, Submit};
use crate::worker::{Event, ExitStatus, Process, Spec, Stream};
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::io::Write;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};
use uuid::Uuid;

#[derive(Clone, Debug)]
pub struct Config {
    pub size: usize,
    /// Jobs accepted beyond `size` before submit says Full.
    pub max_queued: usize,
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
}

struct Shared {
    registry: Arc<Registry>,
    config: Config,
    slots: Mutex<Vec<SlotInfo>>,
    work: Notify,
    kicks: Vec<Notify>,
    stop: watch::Sender<bool>,
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

    /// When no slot can run jobs any more, queued jobs fail instead of waiting forever.
    fn fail_queue_if_dead(&self) {
        if let Some(reason) = dead_reason(&self.slots.lock()) {
            let err = JobError::new("POOL_UNAVAILABLE", format!("No worker can start: {reason}"));
            self.registry.with(|s| s.fail_active(&err, false, now()));
            self.registry.notify();
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
    pub fn start(registry: Arc<Registry>, config: Config) -> std::io::Result<Pool> {
        let size = config.size;
        let (stop, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            registry,
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
                    })
                    .collect(),
            ),
            work: Notify::new(),
            kicks: (0..size).map(|_| Notify::new()).collect(),
            stop,
            config,
        });
        let sh = shared.clone();
        let thread = std::thread::Builder::new().name("asyncjobs-pool".into()).spawn(move || {
            block_async_signals();
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build();
            let Ok(rt) = rt else { return };
            rt.block_on(async move {
                let tasks: Vec<_> =
                    (0..sh.config.size).map(|slot| tokio::spawn(run_slot(sh.clone(), slot))).collect();
                for t in tasks {
                    let _ = t.await;
                }
            });
        })?;
        Ok(Pool { shared, thread: Some(thread) })
    }

    pub fn size(&self) -> usize {
        self.shared.config.size
    }

    pub fn capacity(&self) -> usize {
        self.shared.config.size + self.shared.config.max_queued
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.shared.registry
    }

    pub fn submit(&self, job: NewJob) -> Submit {
        let r = self.shared.registry.with(|s| s.submit(job, self.capacity()));
        if r == Submit::Accepted {
            self.shared.work.notify_one();
        }
        r
    }

    pub fn cancel(&self, id: &Uuid) -> Cancel {
        let r = self.shared.registry.with(|s| s.cancel(id, now()));
        if let Cancel::WasRunning { slot: Some(slot) } = r {
            self.shared.kicks[slot].notify_one();
        }
        self.shared.registry.notify();
        r
    }

    pub fn workers(&self) -> Vec<SlotInfo> {
        self.shared.slots.lock().clone()
    }

    /// Why the pool cannot run jobs, when every slot has given up.
    pub fn unavailable(&self) -> Option<String> {
        dead_reason(&self.shared.slots.lock())
    }

    /// Fails what is pending or running with SHUTDOWN and tells every slot to stop.
    pub fn begin_stop(&self) {
        let err = JobError::new("SHUTDOWN", "The worker pool was stopped before the job finished");
        self.shared.registry.with(|s| s.fail_active(&err, true, now()));
        self.shared.registry.notify();
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
fn block_async_signals() {
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

/// Why a worker's service ended.
enum End {
    /// Pool is stopping.
    Stop,
    /// Replace it: it ran its quota, grew too large, or its job was abandoned.
    Replace,
    /// It is already dead.
    Died,
}

/// Keeps the tail of a worker's stderr while it starts, to explain a failure.
struct Tail(VecDeque<u8>);

impl Tail {
    fn push(&mut self, b: &[u8]) {
        self.0.extend(b);
        let extra = self.0.len().saturating_sub(2048);
        self.0.drain(..extra);
    }
    fn text(&self) -> String {
        let v: Vec<u8> = self.0.iter().copied().collect();
        String::from_utf8_lossy(&v).trim().to_string()
    }
}

async fn run_slot(sh: Arc<Shared>, slot: usize) {
    let mut stop = sh.stop.subscribe();
    let mut failures = 0u32;
    while !stopping(&stop) {
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
                let status = match end {
                    End::Died => w.exited().unwrap_or(ExitStatus(0)),
                    End::Replace => w.shutdown(sh.config.stop_grace).await,
                    End::Stop => w.terminate(sh.config.stop_grace).await,
                };
                sh.update_slot(slot, |s| s.last_exit = Some(format!("worker {} {status}", w.pid)));
            }
            Err(None) => break,
            Err(Some(reason)) => {
                failures += 1;
                sh.update_slot(slot, |s| s.last_exit = Some(reason.clone()));
                if failures >= sh.config.max_setup_failures {
                    sh.update_slot(slot, |s| {
                        s.state = SlotState::Failed(reason);
                        s.pid = None;
                    });
                    sh.fail_queue_if_dead();
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
    let mut w = Process::spawn(&sh.config.spec, max_frame)
        .map_err(|e| Some(format!("cannot start {}: {e}", sh.config.spec.program.display())))?;
    sh.update_slot(slot, |s| {
        s.pid = Some(w.pid);
        s.spawned += 1;
    });
    let _ = w.send(Kind::Init, "", &[&sh.config.init]).await;
    let mut stderr = Tail(VecDeque::new());
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
    loop {
        // Idle: wait for work, watching the worker meanwhile.
        let job = loop {
            if stopping(stop) {
                return End::Stop;
            }
            let notified = sh.work.notified();
            if let Some(d) = sh.registry.with(|s| s.take_next(slot, w.pid, now())) {
                break d;
            }
            tokio::select! {
                _ = notified => {}
                ev = w.next_event() => match ev {
                    Event::Output(_, bytes) => sh.echo(None, &bytes),
                    Event::Exited(_) => return End::Died,
                    Event::Frame(_) | Event::Protocol(_) => return End::Replace,
                },
                _ = stopped(stop) => return End::Stop,
            }
        };
        sh.update_slot(slot, |s| s.state = SlotState::Busy(job.id));
        let end = run_job(sh, slot, w, stop, job).await;
        if let Some(end) = end {
            return end;
        }
        jobs_done += 1;
        let rss = w.rss_bytes();
        sh.update_slot(slot, |s| {
            s.state = SlotState::Idle;
            s.jobs_done = jobs_done;
            s.rss_bytes = rss;
        });
        if jobs_done >= sh.config.max_jobs_per_worker || rss.is_some_and(|r| r > sh.config.max_rss_bytes) {
            return End::Replace;
        }
        // Another task may have been woken for work this one can take.
        tokio::task::yield_now().await;
    }
}

/// Runs one job. None: the worker is ready for the next one.
async fn run_job(
    sh: &Shared,
    slot: usize,
    w: &mut Process,
    stop: &mut watch::Receiver<bool>,
    job: Dispatch,
) -> Option<End> {
    let id = job.id;
    let finish = |outcome| sh.registry.finish(&id, outcome);
    let fail = |code: &str, msg: String| sh.registry.finish(&id, Outcome::Failed(JobError::new(code, msg)));
    let text = format!("{id}{FIELD_SEP}{}", job.fn_len);
    let deadline = tokio::time::sleep(Duration::from_millis(job.timeout_ms));
    tokio::pin!(deadline);
    let blobs: [&[u8]; 1] = [&job.payload];
    let sent = tokio::select! {
        r = w.send(Kind::Job, &text, &blobs) => r.is_ok(),
        _ = &mut deadline => false,
    };
    drop(job.payload);
    if !sent && w.exited().is_none() {
        fail("WORKER_CRASHED", format!("worker {} stopped reading its job", w.pid));
        return Some(End::Replace);
    }
    loop {
        tokio::select! {
            ev = w.next_event() => match ev {
                Event::Frame(f) => match f.kind {
                    Kind::Progress => {
                        sh.registry.with(|s| s.set_progress(&id, Progress::parse(&f.text)));
                    }
                    Kind::Result => {
                        finish(Outcome::Completed(f.blob));
                        return None;
                    }
                    Kind::Failed => {
                        let (code, message) = f.text.split_once(FIELD_SEP).unwrap_or(("EXECUTION_ERROR", &f.text));
                        let mut err = JobError::new(code, message);
                        err.detail = (!f.blob.is_empty()).then(|| Arc::from(f.blob));
                        finish(Outcome::Failed(err));
                        return None;
                    }
                    other => {
                        fail("PROTOCOL_ERROR", format!("worker {} sent an unexpected {other:?} frame", w.pid));
                        return Some(End::Replace);
                    }
                },
                Event::Output(_, bytes) => {
                    sh.registry.with(|s| s.append_output(&id, &bytes));
                    sh.echo(Some(&id), &bytes);
                }
                Event::Exited(status) => {
                    fail("WORKER_CRASHED", format!("worker process {} {status} while running the job", w.pid));
                    return Some(End::Died);
                }
                Event::Protocol(e) => {
                    let code = match e {
                        ProtocolError::TooLarge { .. } => "RESULT_TOO_LARGE",
                        _ => "PROTOCOL_ERROR",
                    };
                    fail(code, format!("worker {}: {e}", w.pid));
                    return Some(End::Replace);
                }
            },
            _ = &mut deadline => {
                let ms = sh.registry.with(|s| s.get(&id).map(|j| j.timeout_ms)).unwrap_or(0);
                fail("TIMEOUT", format!("Job exceeded its timeout of {ms} ms; its worker was stopped"));
                return Some(End::Replace);
            }
            _ = sh.kicks[slot].notified() => {
                // Cancelled, or failed by a stop: the worker's work is abandoned.
                let status = sh.registry.with(|s| s.get(&id).map(|j| j.status));
                if status != Some(Status::Running) {
                    return Some(End::Replace);
                }
            }
            _ = stopped(stop) => return Some(End::Stop),
        }
    }
}
