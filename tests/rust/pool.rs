//! The pool against real processes: the fake worker from fake_worker.rs.

use asyncjobs::pool::{Config, Pool, SlotState};
use asyncjobs::job::*;
use asyncjobs::store::memory::MemoryStore;
use asyncjobs::store::*;
use asyncjobs::sys::*;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

mod common;
use common::*;

fn submit(pool: &Pool, cmd: &str, timeout_ms: u64) -> Uuid {
    submit_op(pool, "test", cmd, timeout_ms)
}

fn start(cfg: Config) -> Pool {
    Pool::start(Arc::new(MemoryStore::new()), cfg).unwrap()
}

fn get(store: &dyn Store, id: Uuid) -> Job {
    block_on(store.get(&id, true)).unwrap().expect("job exists").job
}

fn finished_in(store: &dyn Store, id: Uuid) -> Job {
    assert!(block_on(store.wait_finished(&id, LONG)).unwrap(), "job {id} did not finish");
    get(store, id)
}

fn finished(pool: &Pool, id: Uuid) -> Job {
    finished_in(pool.store().as_ref(), id)
}

/// Dead means gone or a zombie: a zombie has exited, only its parent's wait is pending.
fn dead(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat.rsplit_once(')').map_or(true, |(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

fn pids(pool: &Pool) -> Vec<u32> {
    pool.workers().iter().filter_map(|w| w.pid).collect()
}

fn stop(mut pool: Pool, seen: &[u32]) {
    pool.begin_stop();
    assert!(pool.wait_stopped(LONG));
    for pid in seen {
        assert!(dead(*pid), "process {pid} survived the pool");
    }
}

#[test]
fn runs_jobs_and_reports_outcomes() {
    let pool = start(config(2, b""));
    let ok = submit(&pool, "ok:hello", 10_000);
    let fail = submit(&pool, "fail:boom", 10_000);
    let printed = submit(&pool, "print:some output", 10_000);
    let progress = submit(&pool, "progress", 10_000);
    let j = finished(&pool, ok);
    assert_eq!(j.status, Status::Completed);
    assert_eq!(j.result.as_deref(), Some(&b"hello"[..]));
    let j = finished(&pool, fail);
    assert_eq!(j.status, Status::Failed);
    let e = j.error.unwrap();
    assert_eq!((e.code.as_str(), e.message.as_str()), ("EXECUTION_ERROR", "boom"));
    finished(&pool, printed);
    assert_eq!(block_on(pool.store().output(&printed)).unwrap().unwrap(), b"some output");
    assert_eq!(finished(&pool, progress).status, Status::Completed);
    let seen = pids(&pool);
    assert_eq!(seen.len(), 2);
    stop(pool, &seen);
}

#[test]
fn timeout_kills_the_worker_and_its_children_then_replaces_it() {
    let pool = start(config(1, b""));
    let id = submit(&pool, "spawn-hang", 300);
    wait_until("the child's pid", || {
        get(pool.store().as_ref(), id).progress.and_then(|p| p.step).is_some()
    });
    let child: u32 = get(pool.store().as_ref(), id).progress.unwrap().step.unwrap().parse().unwrap();
    let first = pids(&pool)[0];
    let j = finished(&pool, id);
    assert_eq!(j.error.unwrap().code, "TIMEOUT");
    wait_until("the job's child to die", || dead(child));
    wait_until("the first worker to die", || dead(first));
    wait_until("a replacement", || pool.workers()[0].state == SlotState::Idle && pids(&pool) != vec![first]);
    assert_eq!(pool.workers()[0].spawned, 2);
    let after = submit(&pool, "ok:again", 10_000);
    assert_eq!(finished(&pool, after).status, Status::Completed);
    let seen = [pids(&pool), vec![first, child]].concat();
    stop(pool, &seen);
}

#[test]
fn crash_fails_the_job_with_the_exit_status() {
    let pool = start(config(1, b""));
    let first = pids_when_ready(&pool);
    let id = submit(&pool, "exit:7", 10_000);
    let e = finished(&pool, id).error.unwrap();
    assert_eq!(e.code, "WORKER_CRASHED");
    assert!(e.message.contains("exited with status 7"), "{}", e.message);
    let next = submit(&pool, "ok:still here", 10_000);
    assert_eq!(finished(&pool, next).status, Status::Completed);
    let seen = [pids(&pool), first].concat();
    stop(pool, &seen);
}

fn pids_when_ready(pool: &Pool) -> Vec<u32> {
    wait_until("workers", || pool.workers().iter().all(|w| w.state == SlotState::Idle));
    pids(pool)
}

#[test]
fn cancel_of_a_running_job_replaces_its_worker() {
    let pool = start(config(1, b""));
    let first = pids_when_ready(&pool);
    let id = submit(&pool, "sleep:60000", 120_000);
    wait_until("running", || get(pool.store().as_ref(), id).status == Status::Running);
    let queued = submit(&pool, "ok:after", 10_000);
    assert!(matches!(block_on(pool.cancel(&id)).unwrap(), Cancel::WasRunning(_)));
    assert_eq!(finished(&pool, id).status, Status::Cancelled);
    assert_eq!(finished(&pool, queued).status, Status::Completed);
    wait_until("the cancelled worker to die", || dead(first[0]));
    let seen = [pids(&pool), first].concat();
    stop(pool, &seen);
}

#[test]
fn oversized_frame_fails_the_job() {
    let pool = start(config(1, b""));
    let id = submit(&pool, "huge", 10_000);
    assert_eq!(finished(&pool, id).error.unwrap().code, "RESULT_TOO_LARGE");
    let next = submit(&pool, "ok:fine", 10_000);
    assert_eq!(finished(&pool, next).status, Status::Completed);
    let seen = pids(&pool);
    stop(pool, &seen);
}

/// A frame with another job's tag, or bytes that are not a frame, end the job
/// they arrive in and replace the worker: the next job is not shifted.
#[test]
fn forged_and_stray_frames_fail_only_their_job() {
    let pool = start(config(1, b""));
    for cmd in ["forge", "garbage"] {
        let first = pids_when_ready(&pool);
        let id = submit(&pool, cmd, 10_000);
        let next = submit(&pool, "ok:mine", 10_000);
        let e = finished(&pool, id).error.expect("the job failed");
        assert_eq!(e.code, "PROTOCOL_ERROR", "{cmd}: {}", e.message);
        let j = finished(&pool, next);
        assert_eq!(j.result.as_deref(), Some(&b"mine"[..]), "{cmd}: the next job got its own result");
        wait_until("the worker was replaced", || dead(first[0]));
    }
    let seen = pids(&pool);
    stop(pool, &seen);
}

#[test]
fn recycling_replaces_workers_between_jobs() {
    let mut cfg = config(1, b"");
    cfg.max_jobs_per_worker = 2;
    let pool = start(cfg);
    let mut seen = Vec::new();
    for i in 0..5 {
        seen.extend(pids(&pool));
        let id = submit(&pool, &format!("ok:{i}"), 10_000);
        assert_eq!(finished(&pool, id).status, Status::Completed);
    }
    wait_until("the third process", || pool.workers()[0].spawned >= 3);
    seen.extend(pids(&pool));
    stop(pool, &seen);
}

#[test]
fn failing_setup_gives_up_and_fails_queued_jobs() {
    let pool = start(config(2, b"fail-setup"));
    let id = submit(&pool, "ok:never", 10_000);
    let j = finished(&pool, id);
    assert_eq!(j.status, Status::Failed);
    let e = j.error.unwrap();
    assert_eq!(e.code, "POOL_UNAVAILABLE");
    assert!(e.message.contains("setup exploded"), "{}", e.message);
    let why = pool.unavailable().expect("pool reports why");
    assert!(why.contains("setup exploded"));
    assert!(pool.workers().iter().all(|w| matches!(w.state, SlotState::Failed(_))));
    assert!(pool.workers().iter().all(|w| w.spawned == 3));
    stop(pool, &[]);
}

#[test]
fn stop_fails_unfinished_jobs_with_shutdown() {
    let pool = start(config(1, b""));
    let running = submit(&pool, "sleep:60000", 120_000);
    let queued = submit(&pool, "ok:never", 10_000);
    wait_until("running", || get(pool.store().as_ref(), running).status == Status::Running);
    let seen = pids(&pool);
    let store = pool.store().clone();
    stop(pool, &seen);
    for id in [running, queued] {
        let j = get(store.as_ref(), id);
        assert_eq!((j.status, j.error.unwrap().code.as_str()), (Status::Failed, "SHUTDOWN"));
    }
}

#[test]
fn drain_lets_running_jobs_finish_and_stops_idle_workers() {
    let pool = start(config(2, b""));
    let first = pids_when_ready(&pool);
    let running = submit(&pool, "sleep:500", 10_000);
    wait_until("running", || get(pool.store().as_ref(), running).status == Status::Running);
    pool.drain();
    assert_eq!(pool.busy(), 1);
    let late = submit(&pool, "ok:late", 10_000);
    assert_eq!(finished(&pool, running).status, Status::Completed);
    wait_until("every slot to stop", || pool.workers().iter().all(|w| w.state == SlotState::Stopped));
    assert_eq!(get(pool.store().as_ref(), late).status, Status::Pending, "a draining pool claims nothing");
    let store = pool.store().clone();
    stop(pool, &first);
    assert_eq!(get(store.as_ref(), late).error.unwrap().code, "SHUTDOWN");
}

#[test]
fn pools_on_one_sqlite_file_share_jobs_and_hosts() {
    let dir = std::env::temp_dir().join(format!("asyncjobs-pool-{}", Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite://{}/jobs.db", dir.display());
    let open = || -> Arc<dyn Store> {
        Arc::new(asyncjobs::store::sql::SqlStore::open(&url, Duration::from_secs(10), Duration::from_secs(15)).unwrap())
    };
    let replica = Pool::start(open(), config(0, b"")).unwrap();
    let host = Pool::start(open(), config(1, b"")).unwrap();
    let seen = pids_when_ready(&host);
    let id = submit(&replica, "ok:elsewhere", 10_000);
    let j = finished(&replica, id);
    assert_eq!((j.status, j.host.as_deref()), (Status::Completed, Some(host.host().id.as_str())));
    wait_until("both hosts registered", || block_on(replica.store().hosts()).unwrap().len() == 2);
    let hosts = block_on(replica.store().hosts()).unwrap();
    assert!(hosts.iter().all(|h| h.state == "live"), "{hosts:?}");
    assert_eq!(hosts.iter().map(|h| h.info.slots).sum::<usize>(), 1);
    let store = replica.store().clone();
    stop(host, &seen);
    stop(replica, &[]);
    let states: Vec<&str> = block_on(store.hosts()).unwrap().iter().map(|h| h.state).collect();
    assert_eq!(states, vec!["stopped", "stopped"]);
    std::fs::remove_dir_all(dir).unwrap();
}

/// A job two others wait on: when it completes, both start at once on the
/// two idle workers (the memory store wakes its idle slots); a delayed job
/// starts when due, not at the next submit.
#[test]
fn dependents_and_delayed_jobs_wake_idle_workers() {
    let pool = start(common::config(3, b""));
    wait_until("workers ready", || pool.workers().iter().all(|w| w.state == SlotState::Idle));
    let first = submit(&pool, "sleep:300", 60_000);
    let mut then = Vec::new();
    for _ in 0..2 {
        let mut j = new_job("test", "sleep:500", 60_000);
        j.depends_on = vec![first];
        then.push(j.id);
        assert_eq!(block_on(pool.submit(j)).unwrap(), Submit::Accepted);
    }
    let jobs: Vec<Job> = then.iter().map(|id| finished(&pool, *id)).collect();
    let (a, b) = (&jobs[0], &jobs[1]);
    assert!(a.started_at.unwrap() < b.completed_at.unwrap() && b.started_at.unwrap() < a.completed_at.unwrap(),
            "both dependents ran at once: {a:?} {b:?}");
    assert!(a.started_at.unwrap() >= get(pool.store().as_ref(), first).completed_at.unwrap());
    let mut later = new_job("test", "ok:late", 60_000);
    later.delay = 0.4;
    let id = later.id;
    let t0 = now();
    assert_eq!(block_on(pool.submit(later)).unwrap(), Submit::Accepted);
    let done = finished(&pool, id);
    let started = done.started_at.unwrap() - t0;
    assert!((0.39..3.0).contains(&started), "started {started} s after its submit");
    stop(pool, &[]);
}

/// The memory store, but `finish` refuses results longer than `max` bytes
/// for good, and fails for a while (`flaky` times) as if unreachable.
struct Picky {
    inner: MemoryStore,
    max: usize,
    flaky: std::sync::atomic::AtomicUsize,
    /// Results it never writes, failing as if unreachable.
    unwritable: &'static [u8],
}

impl Picky {
    fn new(max: usize, flaky: usize) -> Picky {
        Picky { inner: MemoryStore::new(), max, flaky: flaky.into(), unwritable: b"unwritable" }
    }
}

#[async_trait::async_trait]
impl Store for Picky {
    fn describe(&self) -> String {
        "picky".into()
    }
    fn shared(&self) -> bool {
        false
    }
    fn report_interval(&self) -> Duration {
        Duration::ZERO
    }
    async fn submit(&self, job: NewJob, limit: usize) -> StoreResult<Submit> {
        self.inner.submit(job, limit).await
    }
    async fn get(&self, id: &Uuid, with_result: bool) -> StoreResult<Option<JobView>> {
        self.inner.get(id, with_result).await
    }
    async fn find_active(&self, operation: &str, hash: &[u8; 32]) -> StoreResult<Option<Uuid>> {
        self.inner.find_active(operation, hash).await
    }
    async fn counts(&self) -> StoreResult<Counts> {
        self.inner.counts().await
    }
    async fn typical_duration(&self, operation: &str) -> StoreResult<Option<f64>> {
        self.inner.typical_duration(operation).await
    }
    async fn claim(&self, host: &str, queues: &[String], k: usize) -> StoreResult<Vec<Claimed>> {
        self.inner.claim(host, queues, k).await
    }
    async fn report(&self, lease: &Lease, report: Report<'_>) -> StoreResult<bool> {
        self.inner.report(lease, report).await
    }
    async fn output(&self, id: &Uuid) -> StoreResult<Option<Vec<u8>>> {
        self.inner.output(id).await
    }
    async fn finish(&self, lease: &Lease, outcome: &Outcome, output: Option<&[u8]>) -> StoreResult<bool> {
        use std::sync::atomic::Ordering;
        if let Outcome::Completed(r) = outcome {
            if r.as_slice() == self.unwritable {
                return Err(StoreError::unavailable("unreachable for this result"));
            }
            if r.len() > self.max {
                return Err(StoreError::too_large(format!("the result is {} bytes, more than {}", r.len(), self.max), Some(self.max as u64)));
            }
        }
        if self.flaky.load(Ordering::SeqCst) > 0 {
            self.flaky.fetch_sub(1, Ordering::SeqCst);
            return Err(StoreError::unavailable("not now"));
        }
        self.inner.finish(lease, outcome, output).await
    }
    async fn cancel(&self, id: &Uuid) -> StoreResult<Cancel> {
        self.inner.cancel(id).await
    }
    async fn renew(&self, host: &str, held: &[Lease]) -> StoreResult<Vec<Lease>> {
        self.inner.renew(host, held).await
    }
    async fn rescue(&self) -> StoreResult<Vec<Uuid>> {
        self.inner.rescue().await
    }
    async fn release(&self, host: &str, error: &JobError, pending: bool) -> StoreResult<Vec<Uuid>> {
        self.inner.release(host, error, pending).await
    }
    async fn cleanup(&self, max_age: f64, batch: usize) -> StoreResult<Vec<Uuid>> {
        self.inner.cleanup(max_age, batch).await
    }
    async fn list(&self, query: &ListQuery) -> StoreResult<Page> {
        self.inner.list(query).await
    }
    async fn put_schedule(&self, s: &asyncjobs::schedule::Schedule, replace: bool) -> StoreResult<PutSchedule> {
        self.inner.put_schedule(s, replace).await
    }
    async fn drop_schedule(&self, name: &str) -> StoreResult<bool> {
        self.inner.drop_schedule(name).await
    }
    async fn schedules(&self) -> StoreResult<Vec<asyncjobs::schedule::Schedule>> {
        self.inner.schedules().await
    }
    async fn fire(&self, schedule: &str, next_at: f64, next: f64, jobs: Vec<NewJob>) -> StoreResult<usize> {
        self.inner.fire(schedule, next_at, next, jobs).await
    }
    async fn register_host(&self, host: &HostInfo) -> StoreResult<()> {
        self.inner.register_host(host).await
    }
    async fn deregister_host(&self, host: &str) -> StoreResult<()> {
        self.inner.deregister_host(host).await
    }
    async fn hosts(&self) -> StoreResult<Vec<HostView>> {
        self.inner.hosts().await
    }
    fn ended(&self) -> &tokio::sync::Notify {
        self.inner.ended()
    }
    fn poll_interval(&self) -> Option<Duration> {
        self.inner.poll_interval()
    }
}

/// An outcome the store refuses for good fails the job at once, naming the
/// limit, and frees the slot; an outage is retried until the write lands.
#[test]
fn an_outcome_the_store_refuses_fails_the_job_and_frees_the_slot() {
    let store = Arc::new(Picky::new(100, 0));
    let pool = Pool::start(store.clone(), config(1, b"")).unwrap();
    let mut big = new_job("refused-op", &format!("ok:{}", "x".repeat(500)), 60_000);
    big.max_attempts = 3;
    let big_id = big.id;
    assert_eq!(block_on(pool.submit(big)).unwrap(), Submit::Accepted);
    let next = submit(&pool, "ok:small", 60_000);
    let j = finished(&pool, big_id);
    let e = j.error.unwrap();
    assert_eq!((j.status, e.code.as_str()), (Status::Failed, "RESULT_TOO_LARGE"));
    assert!(e.message.contains("500 bytes, more than 100"), "{}", e.message);
    assert_eq!(finished(&pool, next).result.as_deref(), Some(&b"small"[..]), "the slot runs the next job");
    // Counted as what was written: a failure.
    let count = |name: &str, labels: &[(&str, &str)]| {
        asyncjobs::metrics::snapshot(&asyncjobs::metrics::Gauges::default())
            .iter()
            .flat_map(|f| f.samples.clone())
            .filter(|s| s.name == name && labels.iter().all(|(k, v)| s.labels.iter().any(|(k2, v2)| k2 == k && v2 == v)))
            .map(|s| s.value)
            .sum::<f64>()
    };
    wait_until("the failure counted", || {
        count("asyncjobs_jobs_failed_total", &[("operation", "refused-op"), ("code", "RESULT_TOO_LARGE")]) == 1.0
    });
    assert_eq!(count("asyncjobs_jobs_completed_total", &[("operation", "refused-op")]), 0.0);
    // Transient failures are retried: the outcome lands.
    store.flaky.store(3, std::sync::atomic::Ordering::SeqCst);
    let retried = submit(&pool, "ok:later", 60_000);
    assert_eq!(finished(&pool, retried).result.as_deref(), Some(&b"later"[..]));
    let seen = pids(&pool);
    stop(pool, &seen);
    // Failed for good: not requeued when the pool stops with attempts left.
    assert_eq!(get(store.as_ref(), big_id).error.unwrap().code, "RESULT_TOO_LARGE");
}

/// While an outcome's write is retried, a cancel ends the retries and frees
/// the slot for the next job.
#[test]
fn cancel_ends_the_retries_of_an_outcome() {
    let store = Arc::new(Picky::new(usize::MAX, 0));
    let pool = Pool::start(store.clone(), config(1, b"")).unwrap();
    let stuck = submit(&pool, "ok:unwritable", 60_000);
    let next = submit(&pool, "ok:after", 60_000);
    wait_until("the worker to be done with it", || {
        pool.workers().iter().any(|w| w.jobs_done == 0 && w.state == SlotState::Busy(stuck))
            && get(store.as_ref(), stuck).status == Status::Running
    });
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(get(store.as_ref(), next).status, Status::Pending, "the slot is held while the write is retried");
    assert!(matches!(block_on(pool.cancel(&stuck)).unwrap(), Cancel::WasRunning(_)));
    assert_eq!(finished(&pool, next).result.as_deref(), Some(&b"after"[..]));
    assert_eq!(get(store.as_ref(), stuck).status, Status::Cancelled);
    let seen = pids(&pool);
    stop(pool, &seen);
}
