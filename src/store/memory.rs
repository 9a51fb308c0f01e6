//! The memory store: jobs in this process, the default.
//!
//! Active jobs live in hash maps so that lookup by id, the duplicate check
//! and capacity counting are O(1). Payloads (the serialized executor and
//! params) and captured output live beside the records, so a status
//! snapshot clones only small fields. A job that ends becomes one compact
//! record in [`super::finished`]'s log; cleanup takes from its front.
//!
//! May import: `job`, `sys`, `store`.

use super::finished::{Done, Finished, Names, S_CHILDREN, S_OUTPUT, S_UNHASHED};
use super::{HostInfo, HostView, ListQuery, Page, PutSchedule, Store, StoreError, StoreResult};
use crate::job::{
    duplicate_key, median, sha256, Cancel, Claimed, Counts, IdHash, Job, JobError, JobView, Lease, NewJob, Outcome,
    Report, Status, Submit,
};
use crate::schedule::Schedule;
use crate::sys::{now, runtime};
use async_trait::async_trait;
use parking_lot::Mutex;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use uuid::Uuid;

/// Finished durations kept per operation for estimates.
const HISTORY_LEN: usize = 50;
/// Cleanup frees at least this many records off the caller's thread.
const FREE_ELSEWHERE: usize = 1000;

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

struct Payload {
    executor: Vec<u8>,
    params: Arc<Vec<u8>>,
    params_json: bool,
}

/// A time as whole microseconds, for ordered keys.
fn micros(t: f64) -> i64 {
    (t * 1e6) as i64
}

/// Order among pending jobs of one queue: higher priority, then submit order.
type QueueKey = (i64, u64, Uuid);

/// A job's place in a listing: submit time, then id (ties are rare, and the
/// id makes the order total, so a cursor is exact).
#[derive(Clone, Copy, Debug, PartialEq)]
struct Place {
    at: f64,
    id: Uuid,
}

impl Eq for Place {}

impl Ord for Place {
    fn cmp(&self, other: &Place) -> std::cmp::Ordering {
        self.at.total_cmp(&other.at).then(self.id.cmp(&other.id))
    }
}

impl PartialOrd for Place {
    fn partial_cmp(&self, other: &Place) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Place {
    /// "m" then the time's bits and the id, in hex.
    fn cursor(&self) -> String {
        format!("m{:016x}{}", self.at.to_bits(), self.id.simple())
    }

    fn parse(c: &str) -> Option<Place> {
        let rest = c.strip_prefix('m')?;
        let bits = u64::from_str_radix(rest.get(..16)?, 16).ok()?;
        let id = Uuid::try_parse(rest.get(16..)?).ok()?;
        Some(Place { at: f64::from_bits(bits), id })
    }
}

/// A listing's order: smaller ranks come first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Rank {
    Asc(Place),
    Desc(std::cmp::Reverse<Place>),
}

impl Rank {
    fn place(&self) -> Place {
        match self {
            Rank::Asc(p) | Rank::Desc(std::cmp::Reverse(p)) => *p,
        }
    }
}

/// Where a listed job's record is: among the active jobs, or the finished log's index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Source {
    Active,
    Done(usize),
}

fn bad_cursor() -> StoreError {
    StoreError::invalid("the cursor was not made by this store (a listing's `next_cursor`)")
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
    /// Pending jobs that may not run yet (delayed): run time, id.
    delayed: BTreeSet<(i64, Uuid)>,
    /// A pending job's dependencies not completed yet.
    deps: HashMap<Uuid, Vec<Uuid>, IdHash>,
    /// The pending jobs waiting on a job.
    dependents: HashMap<Uuid, Vec<Uuid>, IdHash>,
    /// The jobs a job submitted while running.
    children: HashMap<Uuid, Vec<Uuid>, IdHash>,
    schedules: BTreeMap<String, Schedule>,
    /// The slots each schedule fired (a day of them).
    fired: HashMap<String, BTreeSet<i64>>,
    /// Jobs whose dependencies completed since the pool last asked.
    readied: usize,
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
        if let Some(t) = job.run_at {
            self.delayed.remove(&(micros(t), *id));
        }
        for dep in self.deps.remove(id).unwrap_or_default() {
            if let Some(d) = self.dependents.get_mut(&dep) {
                d.retain(|j| j != id);
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
            Outcome::Completed(bytes) | Outcome::CompletedJson(bytes) => {
                job.status = Status::Completed;
                job.result_json = matches!(outcome, Outcome::CompletedJson(_));
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
        let side = if self.unhashed.contains_key(id) { S_UNHASHED } else { 0 }
            | if self.outputs.contains_key(id) { S_OUTPUT } else { 0 }
            | if self.children.contains_key(id) { S_CHILDREN } else { 0 };
        self.done.push(Done::new(&job, &mut self.names, side, result));
        self.settle_dependents(id, outcome, now);
        true
    }

    /// A job ended: the jobs waiting on it go on (it completed) or fail.
    fn settle_dependents(&mut self, id: &Uuid, outcome: &Outcome, now: f64) {
        let Some(waiting) = self.dependents.remove(id) else { return };
        for d in waiting {
            if outcome.completed() {
                let Some(job) = self.jobs.get_mut(&d) else { continue };
                job.waiting = job.waiting.saturating_sub(1);
                if let Some(deps) = self.deps.get_mut(&d) {
                    deps.retain(|j| j != id);
                }
                if job.waiting == 0 {
                    self.deps.remove(&d);
                    self.make_ready(&d, now);
                    self.readied += 1;
                }
            } else {
                let why = match outcome {
                    Outcome::Cancelled => "was cancelled",
                    _ => "failed",
                };
                let err = JobError::new("DEPENDENCY_FAILED", format!("Job {id}, which this job depends on, {why}"));
                self.end(&d, &Outcome::Failed(err), now);
            }
        }
    }

    /// Puts a pending job whose dependencies are done where claims find
    /// it: its queue, or the delayed set until its time.
    fn make_ready(&mut self, id: &Uuid, now: f64) {
        let Some(job) = self.jobs.get(id) else { return };
        match job.run_at {
            Some(t) if t > now => {
                self.delayed.insert((micros(t), *id));
            }
            _ => self.enqueue(id),
        }
    }

    /// Moves the delayed jobs that are due into their queues.
    fn promote(&mut self, now: f64) {
        while let Some(&(t, id)) = self.delayed.first() {
            if t > micros(now) {
                break;
            }
            self.delayed.pop_first();
            self.enqueue(&id);
        }
    }

    fn enqueue(&mut self, id: &Uuid) {
        let Some(job) = self.jobs.get(id) else { return };
        let (priority, queue) = (job.priority, job.queue.clone());
        self.seq += 1;
        let place = (-(priority as i64), self.seq, *id);
        self.queues.entry(queue).or_default().insert(place);
        self.places.insert(*id, place);
    }

    /// Adds an accepted job (its checks passed).
    fn insert(&mut self, job: NewJob, hash: Option<[u8; 32]>, waiting: Vec<Uuid>, now: f64) {
        let (operation, queue) = (self.names.intern(&job.operation), self.names.intern(&job.queue));
        match hash {
            Some(h) => {
                self.active.entry(duplicate_key(&job.operation, &h)).or_insert(job.id);
            }
            None => {
                self.unhashed.insert(job.id, job.params.clone());
            }
        }
        let run_at = (job.delay > 0.0).then(|| now + job.delay);
        let schedule = job.slot.as_ref().map(|s| self.names.intern(&s.schedule));
        let slot_at = job.slot.as_ref().map(|s| s.at);
        if let Some(p) = job.parent {
            self.children.entry(p).or_default().push(job.id);
            if let Some(parent) = self.jobs.get_mut(&p) {
                parent.children += 1;
            }
        }
        for dep in &waiting {
            self.dependents.entry(*dep).or_default().push(job.id);
        }
        let id = job.id;
        self.payloads.insert(id, Payload { executor: job.executor, params: job.params, params_json: job.params_json });
        self.pending += 1;
        self.jobs.insert(
            id,
            Job {
                id,
                operation,
                params_hash: hash.unwrap_or_default(),
                status: Status::Pending,
                queue,
                priority: job.priority,
                submitted_at: now,
                timeout_ms: job.timeout_ms,
                max_attempts: job.max_attempts,
                handler: self.payloads[&id].executor.is_empty(),
                parent: job.parent,
                run_at,
                waiting: waiting.len() as u32,
                schedule,
                slot_at,
                ..Job::default()
            },
        );
        if waiting.is_empty() {
            self.make_ready(&id, now);
        } else {
            self.deps.insert(id, waiting);
        }
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
        let r = {
            let mut m = self.inner.lock();
            if m.contains(&job.id) {
                // A retried parent's child: made by its first run.
                return Ok(Submit::Accepted);
            }
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
            // Dependencies: each must exist; those not completed yet are waited for.
            let mut waiting = Vec::new();
            let mut failed = None;
            for dep in &job.depends_on {
                let status = match m.jobs.get(dep) {
                    Some(j) => j.status,
                    None => match m.done.get(dep) {
                        Some(d) => d.status(),
                        None => return Ok(Submit::UnknownDependency(*dep)),
                    },
                };
                match status {
                    Status::Completed => {}
                    Status::Pending | Status::Running => {
                        if !waiting.contains(dep) {
                            waiting.push(*dep);
                        }
                    }
                    _ => failed = failed.or(Some((*dep, status))),
                }
            }
            let (id, t) = (job.id, now());
            m.insert(job, hash, if failed.is_some() { Vec::new() } else { waiting }, t);
            if let Some((dep, status)) = failed {
                let why = if status == Status::Cancelled { "was cancelled" } else { "failed" };
                let err = JobError::new("DEPENDENCY_FAILED", format!("Job {dep}, which this job depends on, {why}"));
                m.end(&id, &Outcome::Failed(err), t);
                true
            } else {
                false
            }
        };
        if r {
            self.finished.notify_waiters();
        }
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
        let waiting_for = m.deps.get(id).cloned().unwrap_or_default();
        let children = m.children.get(id).cloned().unwrap_or_default();
        Ok(Some(JobView { job, position, typical, now: now(), waiting_for, children }))
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
        let t = now();
        m.promote(t);
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
            job.started_at = Some(t);
            job.attempts += 1;
            job.host = Some(host.clone());
            let (timeout_ms, operation, queue, attempt, parent) =
                (job.timeout_ms, job.operation.clone(), job.queue.clone(), job.attempts, job.parent);
            m.pending -= 1;
            m.running += 1;
            let p = m.payloads.remove(&id).unwrap_or(Payload { executor: Vec::new(), params: Arc::default(), params_json: false });
            out.push(Claimed {
                lease: Lease { id, token },
                operation,
                executor: p.executor,
                params: p.params,
                params_json: p.params_json,
                timeout_ms,
                queue,
                attempt,
                parent,
                signature: None,
            });
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

    async fn renew(&self, host: &str, held: &[Lease]) -> StoreResult<Vec<Lease>> {
        // Leases here never expire: this only says which are still current.
        let m = self.inner.lock();
        Ok(held.iter().filter(|l| m.current(l) && m.jobs[&l.id].host.as_deref() == Some(host)).copied().collect())
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
            if side & S_CHILDREN != 0 {
                m.children.remove(&id);
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

    async fn list(&self, query: &ListQuery) -> StoreResult<Page> {
        let after = query.after.as_deref().map(|c| Place::parse(c).ok_or_else(bad_cursor)).transpose()?;
        let m = self.inner.lock();
        let filter = &query.filter;
        // A finished record is read in place, its operation by id: nothing is
        // copied but the page. The best `limit + 1` places are kept in a heap
        // whose top is the worst of them (the extra one says a page follows).
        let wanted = query.limit.saturating_add(1);
        let ops: Option<Vec<u32>> = filter.operations.as_ref().map(|o| o.iter().filter_map(|n| m.names.find(n)).collect());
        let rank = |p: Place| if query.newest_first { Rank::Desc(std::cmp::Reverse(p)) } else { Rank::Asc(p) };
        let beyond = |p: &Place| after.is_none_or(|a| if query.newest_first { *p < a } else { *p > a });
        let mut best: BinaryHeap<(Rank, Source)> = BinaryHeap::new();
        let mut keep = |p: Place, src: Source| {
            if beyond(&p) && wanted > 0 {
                if best.len() < wanted {
                    best.push((rank(p), src));
                } else if best.peek().is_some_and(|(worst, _)| rank(p) < *worst) {
                    best.pop();
                    best.push((rank(p), src));
                }
            }
        };
        if filter.keeps_any(&[Status::Pending, Status::Running]) {
            for j in m.jobs.values().filter(|j| filter.keeps(j.status, &j.operation)) {
                keep(Place { at: j.submitted_at, id: j.id }, Source::Active);
            }
        }
        if filter.keeps_any(&[Status::Completed, Status::Failed, Status::Cancelled]) {
            // The log is in end order, close to submit order: read from the end
            // the page comes from, the heap fills with keepers early and most
            // records are turned away by one comparison.
            let n = m.done.len();
            for k in 0..n {
                let i = if query.newest_first { n - 1 - k } else { k };
                let d = m.done.record(i);
                let status = d.status();
                if filter.statuses.as_ref().is_some_and(|s| !s.contains(&status))
                    || ops.as_ref().is_some_and(|o| !o.contains(&d.operation()))
                {
                    continue;
                }
                keep(Place { at: d.submitted_at(), id: d.id() }, Source::Done(i));
            }
        }
        let mut page: Vec<(Rank, Source)> = best.into_vec();
        page.sort_by(|a, b| a.0.cmp(&b.0));
        let next = (page.len() > query.limit).then(|| {
            page.truncate(query.limit);
            page.last().map(|(r, _)| r.place().cursor())
        });
        let jobs = page
            .into_iter()
            .map(|(r, src)| match src {
                Source::Active => {
                    let mut j = m.jobs[&r.place().id].clone();
                    j.result = None;
                    j
                }
                Source::Done(i) => m.done.record(i).job(&m.names, false),
            })
            .collect();
        Ok(Page { jobs, next: next.flatten() })
    }

    async fn put_schedule(&self, schedule: &Schedule, replace: bool) -> StoreResult<PutSchedule> {
        let mut m = self.inner.lock();
        let r = match m.schedules.get(&schedule.name) {
            None => PutSchedule::Created,
            Some(old) if old.same_definition(schedule) => return Ok(PutSchedule::Unchanged),
            Some(_) if replace => PutSchedule::Replaced,
            Some(old) => return Ok(PutSchedule::Taken(Box::new(old.clone()))),
        };
        m.schedules.insert(schedule.name.clone(), schedule.clone());
        Ok(r)
    }

    async fn drop_schedule(&self, name: &str) -> StoreResult<bool> {
        let mut m = self.inner.lock();
        m.fired.remove(name);
        Ok(m.schedules.remove(name).is_some())
    }

    async fn schedules(&self) -> StoreResult<Vec<Schedule>> {
        let mut all: Vec<Schedule> = self.inner.lock().schedules.values().cloned().collect();
        all.sort_by(|a, b| a.next_at.total_cmp(&b.next_at));
        Ok(all)
    }

    async fn fire(&self, schedule: &str, next_at: f64, next: f64, jobs: Vec<NewJob>) -> StoreResult<usize> {
        let mut m = self.inner.lock();
        let t = now();
        let mut added = 0;
        let mut last = None;
        for job in jobs {
            let Some(slot) = job.slot.as_ref().map(|s| s.at) else { continue };
            last = Some(slot);
            if !m.fired.entry(schedule.to_owned()).or_default().insert(micros(slot)) {
                continue;
            }
            let hash = Some(job.hash());
            m.insert(job, hash, Vec::new(), t);
            added += 1;
        }
        if let Some(fired) = m.fired.get_mut(schedule) {
            // A day of slots is enough to know what fired: hosts fire no later.
            let old = micros(t - 86400.0);
            while fired.first().is_some_and(|&f| f < old) {
                fired.pop_first();
            }
        }
        if let Some(s) = m.schedules.get_mut(schedule) {
            if s.next_at == next_at {
                s.next_at = next;
                if last.is_some() {
                    s.last_at = last;
                }
            }
        }
        Ok(added)
    }

    fn next_due(&self) -> Option<f64> {
        self.inner.lock().delayed.first().map(|&(t, _)| t as f64 / 1e6)
    }

    fn take_readied(&self) -> usize {
        std::mem::take(&mut self.inner.lock().readied)
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
