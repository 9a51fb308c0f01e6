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
/// Then, each when its `G_*` or `F_*` flag says: parent, run-at time,
/// schedule (name id) and children count; error code, message and detail;
/// progress current, total and step; the result, to the end.
const D_TAIL: usize = 108;

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

pub(super) const S_UNHASHED: u8 = 1;
pub(super) const S_OUTPUT: u8 = 2;
pub(super) const S_CHILDREN: u8 = 4;

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
    pub(super) fn new(job: &Job, names: &mut Names, side: u8, result: Option<&[u8]>) -> Done<Vec<u8>> {
        let (operation, queue) = (names.id(&job.operation), names.id(&job.queue));
        let schedule = job.schedule.as_deref().map(|n| names.id(n));
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
        b.extend_from_slice(&[job.status as u8, flags, side, flags2]);
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

    /// The job's record; its result only when `with_result`.
    pub(super) fn job(&self, names: &Names, with_result: bool) -> Job {
        let flags = self.bytes()[D_FLAGS];
        let has = |f: u8| flags & f != 0;
        let flags2 = self.bytes()[D_FLAGS2];
        let has2 = |f: u8| flags2 & f != 0;
        let mut r = Reader { buf: self.bytes(), at: D_TAIL };
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
            host: None,
            result_json: has2(G_JSON),
            handler: has2(G_HANDLER),
            parent,
            run_at,
            waiting: 0,
            children,
            schedule,
            slot_at,
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
    pub(super) fn len(&self) -> usize {
        self.places.len()
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

    /// Removes the job that ended first if it ended before `cutoff`: its id
    /// and side maps. A block it emptied goes to `freed`.
    pub(super) fn pop_older(&mut self, cutoff: f64, freed: &mut Vec<Vec<u8>>) -> Option<(Uuid, u8)> {
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
    pub(super) fn sort(&mut self) {
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
