//! The memory store's finished jobs: compact records laid end to end in
//! blocks, in the order the jobs ended, found by id through an index of
//! sequence numbers. Cleanup takes whole blocks from the front.
//!
//! May import: `job`.

use crate::job::{IdHash, Job, JobError, Progress, Status};
use hashbrown::HashTable;
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::Arc;
use uuid::Uuid;

/// Operation and queue names, each kept once.
#[derive(Default)]
pub(super) struct Names {
    ids: HashMap<Arc<str>, u32>,
    all: Vec<Arc<str>>,
}

impl Names {
    pub(super) fn id(&mut self, name: &str) -> u32 {
        if let Some(&i) = self.ids.get(name) {
            return i;
        }
        let i = self.all.len() as u32;
        let name: Arc<str> = Arc::from(name);
        self.all.push(name.clone());
        self.ids.insert(name, i);
        i
    }

    /// The id of a name already kept.
    pub(super) fn find(&self, name: &str) -> Option<u32> {
        self.ids.get(name).copied()
    }

    pub(super) fn name(&self, id: u32) -> Arc<str> {
        self.all[id as usize].clone()
    }

    /// The one shared copy of `name`.
    pub(super) fn intern(&mut self, name: &str) -> Arc<str> {
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
const D_FLAGS2: usize = 107;
const D_FLAGS3: usize = 108;
/// Then, each when its `H_*`, `G_*` or `F_*` flag says: host (name id),
/// submitter, tags and concurrency key; parent, run-at and slot times,
/// schedule (name id) and children count; error code, message and detail;
/// progress current, total and step; the result, to the end.
const D_TAIL: usize = 109;

const F_PID: u8 = 1;
const F_ERROR: u8 = 2;
const F_DETAIL: u8 = 4;
const F_CURRENT: u8 = 8;
const F_TOTAL: u8 = 16;
const F_STEP: u8 = 32;
const F_RESULT: u8 = 64;
const F_PROGRESS: u8 = 128;

const G_JSON: u8 = 1;
const G_HANDLER: u8 = 2;
const G_PARENT: u8 = 4;
const G_RUN_AT: u8 = 8;
const G_SCHEDULE: u8 = 16;
const G_CHILDREN: u8 = 32;
const G_SLOT: u8 = 64;

const H_HOST: u8 = 1;
const H_BY: u8 = 2;
const H_TAGS: u8 = 4;
const H_KEY: u8 = 8;
const H_TWIN: u8 = 16;

pub(super) const S_UNHASHED: u8 = 1;
pub(super) const S_OUTPUT: u8 = 2;
pub(super) const S_CHILDREN: u8 = 4;
pub(super) const S_EVENTS: u8 = 8;
pub(super) const S_KEPT: u8 = 16;
/// Retired from the log's index (pruned, or retried under the same id);
/// its bytes go with their block.
const S_GONE: u8 = 128;

/// A record's labels (inline strings; the host by name id).
struct Labels {
    host: Option<Arc<str>>,
    submitted_by: Option<Arc<str>>,
    tags: Vec<Arc<str>>,
    concurrency_key: Option<Arc<str>>,
    twin: Option<[u8; 32]>,
}

/// A finished job's record and its result (no payload, output or lease),
/// as bytes: `Done<Vec<u8>>` when it is made, a view into the log's blocks
/// after.
pub(super) struct Done<B>(B);

fn put_bytes(buf: &mut Vec<u8>, b: &[u8]) {
    buf.extend_from_slice(&(b.len() as u64).to_le_bytes());
    buf.extend_from_slice(b);
}

struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    pub(super) fn take(&mut self, n: usize) -> &'a [u8] {
        self.at += n;
        &self.buf[self.at - n..self.at]
    }

    pub(super) fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take(4).try_into().unwrap())
    }

    pub(super) fn f64(&mut self) -> f64 {
        f64::from_le_bytes(self.take(8).try_into().unwrap())
    }

    pub(super) fn bytes(&mut self) -> &'a [u8] {
        let n = u64::from_le_bytes(self.take(8).try_into().unwrap());
        self.take(n as usize)
    }

    pub(super) fn string(&mut self) -> String {
        String::from_utf8_lossy(self.bytes()).into_owned()
    }
}

impl Done<Vec<u8>> {
    /// `job` has ended; `result` is what it completed with.
    /// `twin` is the key a unique job meets its twins under.
    pub(super) fn new(job: &Job, names: &mut Names, side: u8, twin: Option<&[u8; 32]>, result: Option<&[u8]>) -> Done<Vec<u8>> {
        let (operation, queue) = (names.id(&job.operation), names.id(&job.queue));
        let schedule = job.schedule.as_deref().map(|n| names.id(n));
        let host = job.host.as_deref().map(|h| names.id(h));
        let flags3 = [
            (H_HOST, host.is_some()),
            (H_BY, job.submitted_by.is_some()),
            (H_TAGS, !job.tags.is_empty()),
            (H_KEY, job.concurrency_key.is_some()),
            (H_TWIN, twin.is_some()),
        ]
        .iter()
        .fold(0u8, |f, (h, on)| if *on { f | h } else { f });
        let flags2 = [
            (G_JSON, job.result_json),
            (G_HANDLER, job.handler),
            (G_PARENT, job.parent.is_some()),
            (G_RUN_AT, job.run_at.is_some()),
            (G_SCHEDULE, schedule.is_some()),
            (G_CHILDREN, job.children > 0),
            (G_SLOT, job.slot_at.is_some()),
        ]
        .iter()
        .fold(0u8, |f, (g, on)| if *on { f | g } else { f });
        let err = job.error.as_deref();
        let progress = job.progress.as_deref();
        let mut flags = 0;
        let mut len = D_TAIL + 32;
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
        len += 4 * host.is_some() as usize
            + job.submitted_by.as_ref().map_or(0, |s| 8 + s.len())
            + job.tags.iter().map(|t| 8 + t.len()).sum::<usize>()
            + job.concurrency_key.as_ref().map_or(0, |s| 8 + s.len())
            + 32 * twin.is_some() as usize;
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
        b.extend_from_slice(&[job.status as u8, flags, side, flags2, flags3]);
        if let Some(h) = host {
            b.extend_from_slice(&h.to_le_bytes());
        }
        if let Some(by) = &job.submitted_by {
            put_bytes(&mut b, by.as_bytes());
        }
        if !job.tags.is_empty() {
            b.extend_from_slice(&(job.tags.len() as u32).to_le_bytes());
            for t in &job.tags {
                put_bytes(&mut b, t.as_bytes());
            }
        }
        if let Some(k) = &job.concurrency_key {
            put_bytes(&mut b, k.as_bytes());
        }
        if let Some(t) = twin {
            b.extend_from_slice(t);
        }
        if let Some(p) = job.parent {
            b.extend_from_slice(p.as_bytes());
        }
        for t in [job.run_at, job.slot_at].into_iter().flatten() {
            b.extend_from_slice(&t.to_le_bytes());
        }
        for v in [schedule, (job.children > 0).then_some(job.children)].into_iter().flatten() {
            b.extend_from_slice(&v.to_le_bytes());
        }
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
    pub(super) fn set_hash(self, hash: &[u8; 32]) {
        self.0[D_HASH..D_HASH + 32].copy_from_slice(hash);
        self.0[D_SIDE] &= !S_UNHASHED;
    }
}

impl<B: AsRef<[u8]>> Done<B> {
    pub(super) fn bytes(&self) -> &[u8] {
        self.0.as_ref()
    }

    pub(super) fn u32_at(&self, at: usize) -> u32 {
        u32::from_le_bytes(self.bytes()[at..at + 4].try_into().unwrap())
    }

    pub(super) fn f64_at(&self, at: usize) -> f64 {
        f64::from_le_bytes(self.bytes()[at..at + 8].try_into().unwrap())
    }

    pub(super) fn id(&self) -> Uuid {
        Uuid::from_bytes(self.bytes()[D_ID..D_ID + 16].try_into().unwrap())
    }

    pub(super) fn status(&self) -> Status {
        [Status::Pending, Status::Running, Status::Completed, Status::Failed, Status::Cancelled][self.bytes()[D_STATUS] as usize]
    }

    pub(super) fn completed_at(&self) -> f64 {
        self.f64_at(D_COMPLETED)
    }

    pub(super) fn submitted_at(&self) -> f64 {
        self.f64_at(D_SUBMITTED)
    }

    /// The operation's id in [`Names`].
    pub(super) fn operation(&self) -> u32 {
        self.u32_at(D_OPERATION)
    }

    pub(super) fn side(&self) -> u8 {
        self.bytes()[D_SIDE]
    }

    pub(super) fn gone(&self) -> bool {
        self.side() & S_GONE != 0
    }

    /// The host, submitter, tags and concurrency key, and the reader past them.
    fn labels(&self, names: &Names) -> (Labels, Reader<'_>) {
        let flags3 = self.bytes()[D_FLAGS3];
        let has = |h: u8| flags3 & h != 0;
        let mut r = Reader { buf: self.bytes(), at: D_TAIL };
        let host = has(H_HOST).then(|| names.name(r.u32()));
        let submitted_by = has(H_BY).then(|| Arc::from(r.string()));
        let tags = if has(H_TAGS) { (0..r.u32()).map(|_| Arc::from(r.string())).collect() } else { Vec::new() };
        let concurrency_key = has(H_KEY).then(|| Arc::from(r.string()));
        let twin = has(H_TWIN).then(|| r.take(32).try_into().unwrap());
        (Labels { host, submitted_by, tags, concurrency_key, twin }, r)
    }

    /// Who submitted it and its tags, for a listing's filter.
    pub(super) fn submitter_and_tags(&self, names: &Names) -> (Option<Arc<str>>, Vec<Arc<str>>) {
        let (l, _) = self.labels(names);
        (l.submitted_by, l.tags)
    }

    /// The key a unique job met its twins under.
    pub(super) fn twin(&self, names: &Names) -> Option<[u8; 32]> {
        self.labels(names).0.twin
    }

    pub(super) fn has_labels(&self) -> bool {
        self.bytes()[D_FLAGS3] & (H_BY | H_TAGS) != 0
    }

    /// The job's record; its result only when `with_result`.
    pub(super) fn job(&self, names: &Names, with_result: bool) -> Job {
        let flags = self.bytes()[D_FLAGS];
        let has = |f: u8| flags & f != 0;
        let flags2 = self.bytes()[D_FLAGS2];
        let has2 = |f: u8| flags2 & f != 0;
        let (labels, mut r) = self.labels(names);
        let parent = has2(G_PARENT).then(|| Uuid::from_bytes(r.take(16).try_into().unwrap()));
        let run_at = has2(G_RUN_AT).then(|| r.f64());
        let slot_at = has2(G_SLOT).then(|| r.f64());
        let schedule = has2(G_SCHEDULE).then(|| names.name(r.u32()));
        let children = if has2(G_CHILDREN) { r.u32() } else { 0 };
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
            host: labels.host,
            result_json: has2(G_JSON),
            handler: has2(G_HANDLER),
            parent,
            run_at,
            waiting: 0,
            children,
            schedule,
            slot_at,
            submitted_by: labels.submitted_by,
            tags: labels.tags,
            concurrency_key: labels.concurrency_key,
            concurrency_limit: 0,
        }
    }
}

/// Finished jobs in the order they ended, the order cleanup removes them in.
/// Their records lie end to end in blocks of [`BLOCK`] bytes (a larger record
/// has a block of its own): a retained job costs its record and its place,
/// not an allocation of its own among the short-lived ones, and cleanup
/// frees whole blocks from the front.
#[derive(Default)]
pub(super) struct Finished {
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
    /// Records retired from the index but not yet popped.
    gone: usize,
    /// Per status (completed, failed, cancelled): the sequence number up to
    /// which [`Finished::retire_older`] has looked.
    scanned: [u32; 3],
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
    /// Records in the log, retired ones included (see [`Finished::live`]).
    pub(super) fn len(&self) -> usize {
        self.places.len()
    }

    /// Finished jobs the store holds.
    pub(super) fn live(&self) -> usize {
        self.places.len() - self.gone
    }

    pub(super) fn at(&self, seq: u32) -> usize {
        seq.wrapping_sub(self.head) as usize
    }

    pub(super) fn record(&self, i: usize) -> Done<&[u8]> {
        let (b, r) = span(&self.places, i, self.first_block);
        Done(&self.blocks[b][r])
    }

    pub(super) fn find(&self, id: &Uuid) -> Option<usize> {
        let seq = self.index.find(self.hasher.hash_one(id), |&s| self.record(self.at(s)).id() == *id)?;
        Some(self.at(*seq))
    }

    pub(super) fn get(&self, id: &Uuid) -> Option<Done<&[u8]>> {
        self.find(id).map(|i| self.record(i))
    }

    pub(super) fn get_mut(&mut self, id: &Uuid) -> Option<Done<&mut [u8]>> {
        let (b, r) = span(&self.places, self.find(id)?, self.first_block);
        Some(Done(&mut self.blocks[b][r]))
    }

    pub(super) fn insert(&mut self, seq: u32, id: &Uuid) {
        let Finished { blocks, places, head, first_block, index, hasher, .. } = self;
        let rehash = |&s: &u32| hasher.hash_one(id_at(blocks, places, s.wrapping_sub(*head) as usize, *first_block));
        index.insert_unique(hasher.hash_one(id), seq, rehash);
    }

    pub(super) fn push(&mut self, done: Done<Vec<u8>>) {
        self.unordered |= self.len() > 0 && done.completed_at() < self.record(self.len() - 1).completed_at();
        let (seq, id) = (self.head.wrapping_add(self.len() as u32), done.id());
        self.append(done.bytes());
        self.insert(seq, &id);
    }

    /// Copies a record to the end of the last block, or of a new one.
    pub(super) fn append(&mut self, rec: &[u8]) {
        let fits = self.blocks.back().is_some_and(|b| b.capacity() - b.len() >= rec.len());
        if !fits {
            self.blocks.push_back(Vec::with_capacity(BLOCK.max(rec.len())));
        }
        let block = self.first_block.wrapping_add(self.blocks.len() as u32 - 1);
        let last = self.blocks.back_mut().expect("a block");
        self.places.push_back(Place { block, start: last.len() as u32, len: rec.len() as u32 });
        last.extend_from_slice(rec);
    }

    /// Removes the job that ended first if it ended before `cutoff`: its id,
    /// side flags and twin key (`names` reads it). A block it emptied goes
    /// to `freed`.
    pub(super) fn pop_older(&mut self, cutoff: f64, names: &Names, freed: &mut Vec<Vec<u8>>) -> Option<(Uuid, u8, Option<[u8; 32]>)> {
        if self.unordered {
            self.sort();
        }
        self.pop_gone(freed);
        let first = self.places.front().map(|_| self.record(0))?;
        if !(first.completed_at() < cutoff) {
            return None;
        }
        let (id, side, twin) = (first.id(), first.side(), first.twin(names));
        let head = self.head;
        if let Ok(e) = self.index.find_entry(self.hasher.hash_one(&id), |&s| s == head) {
            e.remove();
        }
        self.pop_front(freed);
        Some((id, side, twin))
    }

    /// Pops the retired records at the front.
    fn pop_gone(&mut self, freed: &mut Vec<Vec<u8>>) {
        while !self.places.is_empty() && self.record(0).gone() {
            self.pop_front(freed);
            self.gone -= 1;
        }
    }

    fn pop_front(&mut self, freed: &mut Vec<Vec<u8>>) {
        let Some(place) = self.places.pop_front() else { return };
        self.head = self.head.wrapping_add(1);
        if self.places.front().is_none_or(|p| p.block != place.block) {
            freed.extend(self.blocks.pop_front());
            self.first_block = self.first_block.wrapping_add(1);
        }
    }

    /// Retires a job's record from the index (its bytes go with their
    /// block); its side flags, or None if there was none.
    pub(super) fn retire(&mut self, id: &Uuid) -> Option<u8> {
        let i = self.find(id)?;
        let seq = self.head.wrapping_add(i as u32);
        if let Ok(e) = self.index.find_entry(self.hasher.hash_one(id), |&s| s == seq) {
            e.remove();
        }
        let (b, r) = span(&self.places, i, self.first_block);
        let rec = Done(&mut self.blocks[b][r]);
        let side = rec.side();
        rec.0[D_SIDE] |= S_GONE;
        self.gone += 1;
        Some(side)
    }

    /// Up to `batch` jobs of `status` that ended before `cutoff`, retired
    /// from the index, each with its side flags and twin key (`names`
    /// reads it). Each record is looked at once per status, however
    /// often this runs: a status's scan resumes where it stopped.
    pub(super) fn retire_older(
        &mut self,
        status: Status,
        cutoff: f64,
        batch: usize,
        names: &Names,
        freed: &mut Vec<Vec<u8>>,
    ) -> Vec<(Uuid, u8, Option<[u8; 32]>)> {
        if self.unordered {
            self.sort();
        }
        let k = match status {
            Status::Completed => 0,
            Status::Failed => 1,
            _ => 2,
        };
        let mut out = Vec::new();
        // Records popped since the last scan were passed or are gone.
        let ahead = self.scanned[k].wrapping_sub(self.head) as i32;
        let mut i = (ahead.max(0) as usize).min(self.len());
        while i < self.len() && out.len() < batch {
            let rec = self.record(i);
            if !(rec.completed_at() < cutoff) {
                break;
            }
            if !rec.gone() && rec.status() == status {
                let (id, twin) = (rec.id(), rec.twin(names));
                if let Some(side) = self.retire(&id) {
                    out.push((id, side, twin));
                }
            }
            i += 1;
        }
        self.scanned[k] = self.head.wrapping_add(i as u32);
        self.pop_gone(freed);
        out
    }

    /// Puts the log in the order of the end times, and numbers it anew.
    pub(super) fn sort(&mut self) {
        let mut order: Vec<usize> = (0..self.len()).collect();
        order.sort_by(|&a, &b| self.record(a).completed_at().total_cmp(&self.record(b).completed_at()));
        let old = std::mem::take(self);
        *self = Finished { first_block: old.first_block, head: old.head, scanned: [old.head; 3], ..Finished::default() };
        for i in order {
            let rec = old.record(i);
            if rec.gone() {
                continue;
            }
            self.append(rec.bytes());
            let (seq, id) = (self.head.wrapping_add(self.len() as u32 - 1), rec.id());
            self.insert(seq, &id);
        }
    }

    pub(super) fn shrink(&mut self) {
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
