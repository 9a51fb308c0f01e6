//! One slot's supervision: start a worker, hand it jobs, watch it run them,
//! write what they report and how they end, and replace it when it has to go.
//!
//! Each slot task owns its worker process and runs one `select!` loop over
//! the worker's events, the job's deadline, a kick (cancel, lost lease) and
//! shutdown.
//!
//! May import: `job`, `sys`, `metrics`, `protocol`, `store`, and
//! `pool::{reaper, worker, shared}`.

use super::reaper::Mechanism;
use super::shared::{stopped, stopping, IdleGuard, Running, Shared, SlotState};
use super::worker::{Event, ExitStatus, Process, Stream};
use crate::job::{
    child_id, same_signature, sha256, sign, Claimed, JobError, Lease, NewJob, Outcome, Progress, Report, Submit, OUTPUT_LIMIT,
};
use crate::protocol::{Kind, ProtocolError, FIELD_SEP};
use crate::store::{Fault, StoreError};
use crate::sys::log;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use uuid::Uuid;

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

pub(super) async fn run_slot(sh: Arc<Shared>, slot: usize) {
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
                // A delayed job in the memory store wakes a slot when it is due.
                let due = sh.store.next_due().map(|t| Duration::from_secs_f64((t - crate::sys::now()).max(0.0) + 0.001));
                tokio::select! {
                    _ = notified => {}
                    _ = tokio::time::sleep(due.unwrap_or(Duration::from_secs(3600))), if due.is_some() => {}
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
        if let Some(err) = untrusted(sh, &job) {
            // Nothing of it reached the worker, which stays ready.
            let mut u = Unwritten { progress: None, output: Tail::new(0), pid: None, dirty: false };
            write_outcome(sh, slot, &job.lease, &mut Outcome::Failed(err), &mut u, stop).await;
            continue;
        }
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

/// How long an outcome's write is retried while the store is unavailable.
/// Past it the slot gives the job up: its lease is no longer renewed, so the
/// store's rescue ends it (or runs it again) once the lease expires.
const OUTCOME_RETRY: Duration = Duration::from_secs(60);

/// Writes a job's outcome: false when the lease was lost meanwhile or the
/// write was given up. A transient failure is retried (the job is done; only
/// the record is missing) until the lease is lost, the pool stops or
/// [`OUTCOME_RETRY`] has passed. An outcome the store refuses for good (a
/// result over its size limit, say) becomes a failure that it takes.
async fn write_outcome(
    sh: &Shared,
    slot: usize,
    lease: &Lease,
    outcome: &mut Outcome,
    u: &mut Unwritten,
    stop: &watch::Receiver<bool>,
) -> bool {
    let mut stop = stop.clone();
    let deadline = tokio::time::Instant::now() + OUTCOME_RETRY;
    let mut wait = Duration::from_millis(100);
    let mut refusals = 0;
    loop {
        let out = u.output.bytes();
        // The last try goes without the output.
        let output = (!out.is_empty() && refusals < 2).then_some(out);
        match sh.store.finish(lease, outcome, output).await {
            Ok(done) => {
                sh.store_result("writing a job's outcome", Ok(()));
                return done;
            }
            Err(e) if !e.is_transient() => {
                log(&format!("the store refused job {}'s outcome: {e}", lease.id));
                if refusals == 2 {
                    return false;
                }
                refusals += 1;
                *outcome = Outcome::Failed(refused(outcome, &e, refusals));
            }
            Err(e) => {
                sh.store_result::<()>("writing a job's outcome", Err(e));
                if !retry_wait(sh, slot, lease, deadline, wait, &mut stop).await {
                    return false;
                }
                wait = (wait * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// Waits `wait` before the next try of an outcome's write; false when the
/// write must be given up: the lease is lost, the pool stops, or the deadline passed.
async fn retry_wait(
    sh: &Shared,
    slot: usize,
    lease: &Lease,
    deadline: tokio::time::Instant,
    wait: Duration,
    stop: &mut watch::Receiver<bool>,
) -> bool {
    let until = deadline.min(tokio::time::Instant::now() + wait);
    loop {
        if sh.running.lock().get(&lease.id).is_some_and(|r| r.abandoned) || stopping(stop) {
            return false;
        }
        if tokio::time::Instant::now() >= deadline {
            log(&format!(
                "gave up writing job {}'s outcome after {} s; the job is rescued when its lease expires",
                lease.id,
                OUTCOME_RETRY.as_secs()
            ));
            return false;
        }
        tokio::select! {
            _ = tokio::time::sleep_until(until) => return true,
            _ = sh.kicks[slot].notified() => {}
            _ = stopped(stop) => return false,
        }
    }
}

/// The failure written in place of an outcome the store refused: first with
/// the store's reason (a failure keeps its code and the start of its message,
/// without its detail), then a short one.
fn refused(outcome: &Outcome, e: &StoreError, refusals: u32) -> JobError {
    let code = match (outcome, e.fault) {
        (Outcome::Failed(err), _) => err.code.as_str(),
        (Outcome::Completed(_) | Outcome::CompletedJson(_), Fault::TooLarge(_)) => "RESULT_TOO_LARGE",
        _ => "OUTCOME_REFUSED",
    };
    match outcome {
        _ if refusals > 1 => JobError::new(code, "The store refused the job's outcome"),
        Outcome::Failed(err) => {
            let mut msg: String = err.message.chars().take(4000).collect();
            msg.push_str(&format!(" (the store refused the whole error: {})", e.message));
            JobError::new(code, msg)
        }
        _ => JobError::new(code, format!("The store refused the job's outcome: {}", e.message)),
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
    let parent = job.parent.map(|p| p.to_string()).unwrap_or_default();
    let format = if job.params_json { "json" } else { "r" };
    let text = [
        id.to_string(),
        job.executor.len().to_string(),
        job.operation.to_string(),
        job.attempt.to_string(),
        job.queue.to_string(),
        parent,
        format.to_string(),
    ]
    .join(&FIELD_SEP.to_string());
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
        write_outcome(sh, slot, &lease, &mut Outcome::Failed(err), &mut u, stop).await;
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
                    Kind::Result if f.text == "json" => (Outcome::CompletedJson(f.blob), None),
                    Kind::Result => (Outcome::Completed(f.blob), None),
                    Kind::Submit => {
                        // The job submits a job of its own; the worker waits for the answer.
                        let answer = child_submit(sh, &id, &f.text, &f.blob).await;
                        if w.send(Kind::Submitted, id, tag, &answer, &[]).await.is_err() {
                            // The worker is gone; its exit is the next event.
                        }
                        continue;
                    }
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
        let (ended, mut outcome) = (crate::metrics::JobEnd::of(&operation, &outcome, started), outcome);
        if write_outcome(sh, slot, &lease, &mut outcome, &mut u, stop).await {
            ended.written(&outcome).record()
        }
        // Jobs that waited for this one: idle slots take them.
        for _ in 0..sh.store.take_readied() {
            sh.ready_signal.notify_last();
        }
        return end;
    }
}

/// Why a job must not reach a worker, if it must not: in a shared store, a
/// job carrying R's serialization (code, or params that are not JSON) runs
/// only when it was signed with this host's key, so that write access to
/// the database is not code execution on every host.
fn untrusted(sh: &Shared, job: &Claimed) -> Option<JobError> {
    if !sh.store.shared() || !job.serialized() {
        return None;
    }
    let why = match (&sh.config.key, &job.signature) {
        (None, _) => "this host has no key to check it with (ASYNCJOBS_KEY or the option asyncjobs.key)",
        (Some(_), None) => "it carries no signature: the process that submitted it had no key",
        (Some(key), Some(sig)) => {
            if same_signature(sig, &sign(key, &job.lease.id, &job.operation, &job.executor, &job.params)) {
                return None;
            }
            "its signature does not match this host's key: the key differs, or the job was changed in the store"
        }
    };
    Some(JobError::new(
        "CODE_NOT_TRUSTED",
        format!("The job carries R code or R-serialized params and was not run: {why}. Nothing of it was unserialized."),
    ))
}

/// Submits the job a running job asked for (a `Submit` frame): its answer,
/// as the worker reads it. Fields: the call's number within the job, then
/// operation, queue, priority, timeout, attempts, unique, delay, the ids it
/// depends on (comma-separated), the params' format and the code's length;
/// the blob is the code, then the params.
async fn child_submit(sh: &Shared, parent: &Uuid, text: &str, blob: &[u8]) -> String {
    let f: Vec<&str> = text.split(FIELD_SEP).collect();
    let answer = |fields: &[&str]| fields.join(&FIELD_SEP.to_string());
    if f.len() != 11 {
        return answer(&["error", "PROTOCOL_ERROR", "a malformed submit frame"]);
    }
    let num = |s: &str| s.parse::<f64>().ok().filter(|v| v.is_finite());
    let exec_len = f[10].parse::<usize>().unwrap_or(usize::MAX).min(blob.len());
    let mut depends_on = Vec::new();
    for d in f[8].split(',').filter(|d| !d.is_empty()) {
        match Uuid::try_parse(d) {
            Ok(u) => depends_on.push(u),
            Err(_) => return answer(&["unknown_dependency", d]),
        }
    }
    let params = blob[exec_len..].to_vec();
    let job = NewJob {
        id: child_id(parent, f[0].parse().unwrap_or(0)),
        operation: f[1].to_string(),
        params_hash: Some(sha256(&params)),
        executor: blob[..exec_len].to_vec(),
        params: Arc::new(params),
        params_json: f[9] == "json",
        timeout_ms: num(f[4]).unwrap_or(1_800_000.0).max(1.0) as u64,
        queue: f[2].to_string(),
        priority: num(f[3]).unwrap_or(0.0) as i32,
        max_attempts: num(f[5]).unwrap_or(1.0).max(1.0) as u32,
        unique: f[6] == "1",
        delay: num(f[7]).unwrap_or(0.0).max(0.0),
        depends_on,
        parent: Some(*parent),
        ..NewJob::default()
    };
    let (id, operation) = (job.id, job.operation.clone());
    // Children continue accepted work: the cap on new work does not apply.
    match sh.submit(job, usize::MAX).await {
        Ok(Submit::Accepted) => {
            let typical = sh.store.typical_duration(&operation).await.ok().flatten();
            answer(&["accepted", &id.to_string(), &typical.unwrap_or(30.0).round().to_string()])
        }
        Ok(Submit::Full { limit }) => answer(&["full", &limit.to_string()]),
        Ok(Submit::Duplicate(other)) => answer(&["duplicate", &other.to_string()]),
        Ok(Submit::UnknownDependency(dep)) => answer(&["unknown_dependency", &dep.to_string()]),
        Ok(Submit::UnknownOperation) => answer(&["unknown_operation", &operation]),
        Ok(Submit::NotSigned) => answer(&["not_signed"]),
        Err(e) => answer(&["store_error", &e.message]),
    }
}
