//! One suite for every store: the memory store always, SQLite in a temporary
//! file always, PostgreSQL and MySQL/MariaDB when `ASYNCJOBS_TEST_POSTGRES`
//! and `ASYNCJOBS_TEST_MYSQL` name a live server (tools/test.sh sets them,
//! or says why it could not).

use asyncjobs::job::*;
use asyncjobs::store::memory::MemoryStore;
use asyncjobs::store::*;
use asyncjobs::sys::*;
use asyncjobs::store::sql::SqlStore;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

const HOST: &str = "host-a";

fn job(op: &str, params: &[u8]) -> NewJob {
    NewJob {
        id: Uuid::new_v4(),
        operation: op.into(),
        // None: the store hashes when it needs to (the memory store lazily).
        params_hash: None,
        executor: b"fn".to_vec(),
        params: Arc::new(params.to_vec()),
        timeout_ms: 1_800_000,
        queue: "default".into(),
        priority: 0,
        max_attempts: 1,
        unique: false,
        ..NewJob::default()
    }
}

fn in_queue(mut j: NewJob, queue: &str, priority: i32) -> NewJob {
    j.queue = queue.into();
    j.priority = priority;
    j
}

fn q(name: &str) -> Vec<String> {
    vec![name.to_string()]
}

fn get(s: &dyn Store, id: Uuid) -> Job {
    block_on(s.get(&id, true)).unwrap().expect("job exists").job
}

fn submit(s: &dyn Store, j: NewJob) -> Uuid {
    let id = j.id;
    assert_eq!(block_on(s.submit(j, usize::MAX)).unwrap(), Submit::Accepted);
    id
}

fn claim(s: &dyn Store, queue: &str, k: usize) -> Vec<Claimed> {
    block_on(s.claim(HOST, &q(queue), k)).unwrap()
}

fn sql(url: &str, lease: Duration) -> SqlStore {
    let s = SqlStore::open(url, Duration::from_secs(10), lease).unwrap_or_else(|e| panic!("{e}"));
    block_on(s.truncate()).unwrap();
    s
}

fn host(id: &str) -> HostInfo {
    HostInfo { id: id.into(), hostname: "test-host".into(), pid: 4242, slots: 1, queues: q("default"), operations: vec![] }
}

/// The scenarios every store must pass. Each uses queues of its own.
fn suite(s: &dyn Store) {
    lifecycle(s);
    capacity(s);
    unique(s);
    order(s);
    cancel(s);
    reports(s);
    release(s);
    cleanup(s);
    races(s);
    listing(s);
}

fn page(filter: JobFilter, newest_first: bool, limit: usize, after: Option<String>) -> ListQuery {
    ListQuery { filter, newest_first, limit, after }
}

fn ids(p: &Page) -> Vec<Uuid> {
    p.jobs.iter().map(|j| j.id).collect()
}

/// Listings filter, sort and page in the store: every job once, in submit
/// order either way, whatever the page size.
fn listing(s: &dyn Store) {
    let op = format!("list-{}", Uuid::new_v4());
    let mut all = Vec::new();
    for i in 0..7 {
        all.push(submit(s, in_queue(job(&op, format!("{i}").as_bytes()), "listing", 0)));
        std::thread::sleep(Duration::from_millis(2));
    }
    // Jobs 0 and 2 fail, 1 completes, 4 is cancelled; the others wait.
    let claimed = claim(s, "listing", 3);
    let lease = |n: usize| claimed.iter().find(|c| c.lease.id == all[n]).expect("claimed oldest first").lease;
    assert!(block_on(s.renew(HOST, &[])).unwrap().is_empty(), "an empty renewal renews nothing");
    for n in [0, 2] {
        assert!(block_on(s.finish(&lease(n), &Outcome::Failed(JobError::new("EXECUTION_ERROR", "x")), None)).unwrap());
    }
    assert!(block_on(s.finish(&lease(1), &Outcome::Completed(vec![1]), None)).unwrap());
    block_on(s.cancel(&all[4])).unwrap();
    let mine = JobFilter { operations: Some(vec![op.clone()]), ..Default::default() };
    let newest: Vec<Uuid> = all.iter().rev().copied().collect();
    for newest_first in [true, false] {
        let want = if newest_first { newest.clone() } else { all.clone() };
        for size in [1, 2, 3, 7, 100] {
            let (mut got, mut after, mut pages) = (Vec::new(), None, 0);
            loop {
                let p = block_on(s.list(&page(mine.clone(), newest_first, size, after))).unwrap();
                assert!(p.jobs.len() <= size);
                got.extend(ids(&p));
                pages += 1;
                after = p.next;
                if after.is_none() {
                    break;
                }
            }
            assert_eq!(got, want, "newest first {newest_first}, pages of {size}");
            assert_eq!(pages, want.len().div_ceil(size), "no empty last page");
        }
    }
    let by_status = |st: &[Status], limit| {
        let f = JobFilter { statuses: Some(st.to_vec()), operations: Some(vec![op.clone()]) };
        ids(&block_on(s.list(&page(f, true, limit, None))).unwrap())
    };
    assert_eq!(by_status(&[Status::Failed], 10), vec![all[2], all[0]]);
    assert_eq!(by_status(&[Status::Pending, Status::Running], 10), vec![all[6], all[5], all[3]]);
    assert_eq!(by_status(&[Status::Failed, Status::Cancelled, Status::Completed], 2), vec![all[4], all[2]]);
    assert_eq!(by_status(&[], 10), Vec::<Uuid>::new());
    let p = block_on(s.list(&page(mine.clone(), true, 0, None))).unwrap();
    assert!(p.jobs.is_empty());
    // Records without their result; an unknown operation lists nothing.
    let p = block_on(s.list(&page(mine.clone(), true, 10, None))).unwrap();
    assert!(p.jobs.iter().all(|j| j.result.is_none()));
    assert_eq!(p.jobs.iter().find(|j| j.id == all[1]).unwrap().status, Status::Completed);
    let none = JobFilter { operations: Some(vec![format!("{op}-none")]), ..Default::default() };
    assert!(block_on(s.list(&page(none, true, 10, None))).unwrap().jobs.is_empty());
    let e = block_on(s.list(&page(mine.clone(), true, 10, Some("not a cursor".into())))).unwrap_err();
    assert_eq!(e.fault, Fault::Invalid, "{e}");
    // Leave nothing active in the queue for the other scenarios.
    for id in [all[3], all[5], all[6]] {
        block_on(s.cancel(&id)).unwrap();
    }
}

fn lifecycle(s: &dyn Store) {
    let j = in_queue(job("op", b"p"), "life", 0);
    let id = submit(s, j);
    let pending = get(s, id);
    assert_eq!((pending.status, pending.attempts, pending.queue.as_ref()), (Status::Pending, 0, "life"));
    assert_eq!(block_on(s.get(&id, false)).unwrap().unwrap().position, Some(1));
    let c = claim(s, "life", 5);
    assert_eq!(c.len(), 1);
    assert_eq!((c[0].executor.as_slice(), c[0].params.as_slice()), (&b"fn"[..], &b"p"[..]));
    let running = get(s, id);
    assert_eq!((running.status, running.attempts, running.host.as_deref()), (Status::Running, 1, Some(HOST)));
    assert!(running.started_at.is_some());
    assert!(claim(s, "life", 5).is_empty(), "a running job is not claimed twice");
    let lease = c[0].lease;
    assert!(block_on(s.finish(&lease, &Outcome::Completed(vec![7, 8]), None)).unwrap());
    assert!(!block_on(s.finish(&lease, &Outcome::Completed(vec![]), None)).unwrap(), "first outcome wins");
    let done = get(s, id);
    assert_eq!(done.status, Status::Completed);
    assert_eq!(done.result.as_deref(), Some(&[7u8, 8][..]));
    assert!(block_on(s.get(&id, false)).unwrap().unwrap().job.result.is_none(), "status reads skip the result");
    assert!(done.completed_at.unwrap() >= done.started_at.unwrap());
    assert!(block_on(s.get(&Uuid::new_v4(), true)).unwrap().is_none());

    // A failure keeps its code, message and detail.
    let id = submit(s, in_queue(job("op", b"f"), "life", 0));
    let lease = claim(s, "life", 1)[0].lease;
    let mut err = JobError::new("EXECUTION_ERROR", "boom");
    err.detail = Some(Arc::from(&b"detail"[..]));
    assert!(block_on(s.finish(&lease, &Outcome::Failed(err), Some(b"printed"))).unwrap());
    let failed = get(s, id);
    let e = failed.error.unwrap();
    assert_eq!((failed.status, e.code.as_str(), e.message.as_str()), (Status::Failed, "EXECUTION_ERROR", "boom"));
    assert_eq!(e.detail.as_deref(), Some(&b"detail"[..]));
    assert_eq!(block_on(s.output(&id)).unwrap().unwrap(), b"printed");
}

fn capacity(s: &dyn Store) {
    // The cap counts every active job in the store, whatever its queue.
    block_on(s.cleanup(-1e9, 100_000)).unwrap();
    let base = block_on(s.counts()).unwrap();
    let limit = base.pending + base.running + 2;
    let a = job("cap", b"a");
    let a_id = a.id;
    assert_eq!(block_on(s.submit(in_queue(a, "cap", 0), limit)).unwrap(), Submit::Accepted);
    assert_eq!(block_on(s.submit(in_queue(job("cap", b"b"), "cap", 0), limit)).unwrap(), Submit::Accepted);
    assert_eq!(block_on(s.submit(in_queue(job("cap", b"c"), "cap", 0), limit)).unwrap(), Submit::Full { limit });
    let c = claim(s, "cap", 1);
    assert_eq!(c[0].lease.id, a_id);
    let counts = block_on(s.counts()).unwrap();
    assert_eq!((counts.pending, counts.running), (base.pending + 1, base.running + 1));
    assert_eq!(block_on(s.submit(in_queue(job("cap", b"c"), "cap", 0), limit)).unwrap(), Submit::Full { limit });
    block_on(s.finish(&c[0].lease, &Outcome::Completed(vec![]), None)).unwrap();
    assert_eq!(block_on(s.submit(in_queue(job("cap", b"c"), "cap", 0), limit)).unwrap(), Submit::Accepted);
    for c in claim(s, "cap", 10) {
        block_on(s.finish(&c.lease, &Outcome::Completed(vec![]), None)).unwrap();
    }
}

fn unique(s: &dyn Store) {
    let mut first = in_queue(job("clustering", b"genes"), "uniq", 0);
    first.unique = true;
    let id = submit(s, first);
    assert_eq!(block_on(s.find_active("clustering", &sha256(b"genes"))).unwrap(), Some(id));
    assert_eq!(block_on(s.find_active("clustering", &sha256(b"other"))).unwrap(), None);
    assert_eq!(block_on(s.find_active("ontology", &sha256(b"genes"))).unwrap(), None);
    let mut twin = in_queue(job("clustering", b"genes"), "uniq", 0);
    twin.unique = true;
    assert_eq!(block_on(s.submit(twin, usize::MAX)).unwrap(), Submit::Duplicate(id));
    // Without `unique` an identical job is accepted (the contract's old behaviour).
    let plain = submit(s, in_queue(job("clustering", b"genes"), "uniq", 0));
    let c = claim(s, "uniq", 1);
    assert_eq!(c[0].lease.id, id);
    let mut twin = in_queue(job("clustering", b"genes"), "uniq", 0);
    twin.unique = true;
    assert_eq!(block_on(s.submit(twin, usize::MAX)).unwrap(), Submit::Duplicate(id), "running twins count");
    block_on(s.finish(&c[0].lease, &Outcome::Completed(vec![]), None)).unwrap();
    assert_eq!(block_on(s.cancel(&plain)).unwrap(), Cancel::WasPending);
    assert_eq!(block_on(s.find_active("clustering", &sha256(b"genes"))).unwrap(), None);
    let mut again = in_queue(job("clustering", b"genes"), "uniq", 0);
    again.unique = true;
    submit(s, again);
    for c in claim(s, "uniq", 10) {
        block_on(s.finish(&c.lease, &Outcome::Completed(vec![]), None)).unwrap();
    }
}

fn order(s: &dyn Store) {
    let a = submit(s, in_queue(job("o", b"a"), "lane1", 0));
    let b = submit(s, in_queue(job("o", b"b"), "lane1", 5));
    let c = submit(s, in_queue(job("o", b"c"), "lane1", 0));
    let d = submit(s, in_queue(job("o", b"d"), "lane2", 9));
    assert_eq!(block_on(s.get(&c, false)).unwrap().unwrap().position, Some(3));
    assert_eq!(block_on(s.get(&b, false)).unwrap().unwrap().position, Some(1));
    let got: Vec<Uuid> = claim(s, "lane1", 2).iter().map(|c| c.lease.id).collect();
    assert_eq!(got, vec![b, a], "higher priority first, then oldest");
    let got: Vec<Uuid> = claim(s, "lane1", 5).iter().map(|c| c.lease.id).collect();
    assert_eq!(got, vec![c], "another queue's job is not taken");
    assert_eq!(get(s, d).status, Status::Pending);
    let both = block_on(s.claim(HOST, &["lane1".to_string(), "lane2".to_string()], 5)).unwrap();
    assert_eq!(both.iter().map(|c| c.lease.id).collect::<Vec<_>>(), vec![d]);
    for id in [a, b, c, d] {
        block_on(s.cancel(&id)).unwrap();
    }
}

fn cancel(s: &dyn Store) {
    let a = submit(s, in_queue(job("c", b"a"), "cancel", 0));
    let b = submit(s, in_queue(job("c", b"b"), "cancel", 0));
    assert_eq!(block_on(s.get(&b, false)).unwrap().unwrap().position, Some(2));
    assert_eq!(block_on(s.cancel(&a)).unwrap(), Cancel::WasPending);
    assert_eq!(block_on(s.get(&b, false)).unwrap().unwrap().position, Some(1));
    let cancelled = get(s, a);
    assert_eq!((cancelled.status, cancelled.error.unwrap().code.as_str()), (Status::Cancelled, "CANCELLED"));
    let c = claim(s, "cancel", 5);
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].lease.id, b);
    assert_eq!(block_on(s.renew(HOST, &[c[0].lease])).unwrap(), vec![c[0].lease]);
    assert_eq!(block_on(s.cancel(&b)).unwrap(), Cancel::WasRunning(c[0].lease));
    // The host that held it can write nothing more about it.
    assert!(!block_on(s.report(&c[0].lease, Report { pid: Some(1), ..Default::default() })).unwrap());
    assert!(!block_on(s.finish(&c[0].lease, &Outcome::Completed(vec![1]), None)).unwrap());
    assert!(block_on(s.renew(HOST, &[c[0].lease])).unwrap().is_empty());
    assert_eq!(get(s, b).status, Status::Cancelled);
    assert_eq!(block_on(s.cancel(&b)).unwrap(), Cancel::Finished(Status::Cancelled));
    assert_eq!(block_on(s.cancel(&Uuid::new_v4())).unwrap(), Cancel::NotFound);
}

fn reports(s: &dyn Store) {
    let id = submit(s, in_queue(job("r", b"r"), "report", 0));
    let lease = claim(s, "report", 1)[0].lease;
    let p = Progress::parse("1\u{1f}4\u{1f}loading");
    assert!(block_on(s.report(&lease, Report { pid: Some(99), progress: Some(&p), output: Some(b"line 1\n") })).unwrap());
    let j = get(s, id);
    assert_eq!(j.progress.as_deref(), Some(&p));
    assert_eq!(j.worker_pid, Some(99));
    assert_eq!(block_on(s.output(&id)).unwrap().unwrap(), b"line 1\n");
    // Output alone leaves progress as it was.
    assert!(block_on(s.report(&lease, Report { output: Some(b"line 1\nline 2\n"), ..Default::default() })).unwrap());
    assert_eq!(get(s, id).progress.as_deref(), Some(&p));
    assert_eq!(block_on(s.output(&id)).unwrap().unwrap(), b"line 1\nline 2\n");
    let view = block_on(s.get(&id, false)).unwrap().unwrap();
    assert!(view.now >= view.job.started_at.unwrap());
    block_on(s.finish(&lease, &Outcome::Completed(vec![]), None)).unwrap();
    assert_eq!(block_on(s.output(&id)).unwrap().unwrap(), b"line 1\nline 2\n", "finish keeps the last report");
}

fn release(s: &dyn Store) {
    let mut retry = in_queue(job("rel", b"retry"), "release", 0);
    retry.max_attempts = 2;
    let retry = submit(s, retry);
    let once = submit(s, in_queue(job("rel", b"once"), "release", 0));
    assert_eq!(claim(s, "release", 2).len(), 2);
    let waiting = submit(s, in_queue(job("rel", b"waiting"), "release", 0));
    let shutdown = JobError::new("SHUTDOWN", "stopped");
    let released = block_on(s.release(HOST, &shutdown, !s.shared())).unwrap();
    assert!(released.contains(&retry) && released.contains(&once));
    let j = get(s, once);
    assert_eq!((j.status, j.error.unwrap().code.as_str()), (Status::Failed, "SHUTDOWN"));
    if s.shared() {
        // Another host will run what was pending, and what has attempts left.
        assert_eq!(get(s, waiting).status, Status::Pending);
        assert_eq!(get(s, retry).status, Status::Pending);
        let again = claim(s, "release", 5);
        assert_eq!(again.len(), 2);
        assert_eq!(get(s, retry).attempts, 2);
        for c in again {
            block_on(s.finish(&c.lease, &Outcome::Completed(vec![]), None)).unwrap();
        }
    } else {
        // In memory nothing else can run them.
        assert_eq!(get(s, waiting).status, Status::Failed);
    }
}

fn cleanup(s: &dyn Store) {
    let old = submit(s, in_queue(job("clean", b"old"), "clean", 0));
    let active = submit(s, in_queue(job("clean", b"active"), "clean", 0));
    block_on(s.cancel(&old)).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    assert!(!block_on(s.cleanup(3600.0, 100)).unwrap().contains(&old), "recent jobs stay");
    let removed = block_on(s.cleanup(0.01, 100_000)).unwrap();
    assert!(removed.contains(&old));
    assert!(!removed.contains(&active), "active jobs stay");
    assert!(block_on(s.get(&old, false)).unwrap().is_none());
    assert!(block_on(s.output(&old)).unwrap().is_none());
    block_on(s.cancel(&active)).unwrap();
}

/// Submits from many tasks at once: unique twins give one job, the cap holds.
fn races(s: &dyn Store) {
    block_on(s.cleanup(-1e9, 100_000)).unwrap();
    let base = block_on(s.counts()).unwrap();
    let accepted = racing(s, 8, |_| {
        let mut j = in_queue(job("race2", b"same"), "race", 0);
        j.unique = true;
        (j, usize::MAX)
    });
    assert_eq!(accepted.iter().filter(|r| **r == Submit::Accepted).count(), 1, "{accepted:?}");
    assert!(accepted.iter().all(|r| matches!(r, Submit::Accepted | Submit::Duplicate(_))));
    let limit = base.pending + base.running + 9;
    let capped = racing(s, 50, |i| (in_queue(job("race3", &[i as u8]), "race", 0), limit));
    let n = capped.iter().filter(|r| **r == Submit::Accepted).count();
    let c = block_on(s.counts()).unwrap();
    assert_eq!(c.pending + c.running, limit, "{n} accepted");
    for c in claim(s, "race", 1000) {
        block_on(s.finish(&c.lease, &Outcome::Completed(vec![]), None)).unwrap();
    }
}

/// Runs `n` submits from `n` threads at once.
fn racing(s: &dyn Store, n: usize, make: impl Fn(usize) -> (NewJob, usize) + Sync) -> Vec<Submit> {
    let barrier = std::sync::Barrier::new(n);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let (barrier, make) = (&barrier, &make);
                scope.spawn(move || {
                    let (j, limit) = make(i);
                    barrier.wait();
                    block_on(s.submit(j, limit)).unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// Leases: an expired one is rescued, once, and fences out its old holder.
fn rescue(s: &dyn Store) {
    block_on(s.register_host(&host("lost-host"))).unwrap();
    let mut retry = in_queue(job("res", b"retry"), "rescue", 0);
    retry.max_attempts = 2;
    let retry = submit(s, retry);
    let once = submit(s, in_queue(job("res", b"once"), "rescue", 0));
    let held = block_on(s.claim("lost-host", &q("rescue"), 2)).unwrap();
    assert_eq!(held.len(), 2);
    assert!(block_on(s.rescue()).unwrap().is_empty(), "live leases are not rescued");
    std::thread::sleep(s.lease() + Duration::from_millis(500));
    let rescued = block_on(s.rescue()).unwrap();
    assert_eq!(rescued.len(), 2, "{rescued:?}");
    assert!(block_on(s.rescue()).unwrap().is_empty(), "a job is rescued once");
    let lost = get(s, once);
    let e = lost.error.unwrap();
    assert_eq!((lost.status, e.code.as_str()), (Status::Failed, "HOST_LOST"));
    assert!(e.message.contains("test-host") && e.message.contains("last heartbeat"), "{}", e.message);
    assert_eq!(get(s, retry).status, Status::Pending);
    for c in &held {
        assert!(!block_on(s.finish(&c.lease, &Outcome::Completed(vec![]), None)).unwrap(), "the lost host is fenced");
    }
    let leases: Vec<Lease> = held.iter().map(|c| c.lease).collect();
    assert!(block_on(s.renew("lost-host", &leases)).unwrap().is_empty());
    // The retry waits out its backoff, then runs again.
    assert!(claim(s, "rescue", 1).is_empty());
    std::thread::sleep(Duration::from_millis(1500));
    let again = claim(s, "rescue", 1);
    assert_eq!(again.len(), 1);
    assert_eq!(get(s, retry).attempts, 2);
    // A renewed lease is not rescued.
    std::thread::sleep(s.lease() / 2);
    assert_eq!(block_on(s.renew(HOST, &[again[0].lease])).unwrap(), vec![again[0].lease]);
    std::thread::sleep(s.lease() / 2 + Duration::from_millis(300));
    assert!(block_on(s.rescue()).unwrap().is_empty());
    assert!(block_on(s.finish(&again[0].lease, &Outcome::Completed(vec![]), None)).unwrap());
}

/// A store that pushes signals tells other processes of submits and cancels.
fn signals(s: &dyn Store) {
    let mut rx = s.signals().expect("this store pushes signals");
    let next = |rx: &mut tokio::sync::broadcast::Receiver<Signal>| {
        block_on(async { tokio::time::timeout(Duration::from_secs(10), rx.recv()).await })
            .expect("a signal within 10 s")
            .unwrap()
    };
    // The listener may still be connecting: submit until it hears one.
    let mut heard = false;
    for _ in 0..20 {
        submit(s, in_queue(job("sig", b"s"), "signals", 0));
        if block_on(async { tokio::time::timeout(Duration::from_millis(500), rx.recv()).await }).is_ok() {
            heard = true;
            break;
        }
    }
    assert!(heard, "no NOTIFY heard for a submit");
    while rx.try_recv().is_ok() {}
    submit(s, in_queue(job("sig", b"s"), "signals", 0));
    assert_eq!(next(&mut rx), Signal::Submitted);
    let c = claim(s, "signals", 1);
    block_on(s.cancel(&c[0].lease.id)).unwrap();
    assert_eq!(next(&mut rx), Signal::Cancelled(c[0].lease.id));
    for c in claim(s, "signals", 100) {
        block_on(s.cancel(&c.lease.id)).unwrap();
    }
}

#[test]
fn memory_store() {
    let s = MemoryStore::new();
    assert!(s.signals().is_none());
    suite(&s);
}

#[test]
fn memory_hashes_params_lazily_and_exactly() {
    let s = MemoryStore::new();
    // Submitted without a hash: reads do not compute it.
    let a = submit(&s, in_queue(job("op", b"a"), "lazy", 0));
    assert_eq!(get(&s, a).params_hash, [0u8; 32]);
    // The duplicate check hashes what is missing, so it is exact.
    assert_eq!(block_on(s.find_active("op", &sha256(b"a"))).unwrap(), Some(a));
    assert_eq!(get(&s, a).params_hash, sha256(b"a"));
    // A hash computed elsewhere lands; one asked for now is computed.
    let b = submit(&s, in_queue(job("op", b"b"), "lazy", 0));
    s.params_hashed(&b, sha256(b"b"));
    assert_eq!(get(&s, b).params_hash, sha256(b"b"));
    let c = submit(&s, in_queue(job("op", b"c"), "lazy", 0));
    s.hash_now(&c);
    assert_eq!(get(&s, c).params_hash, sha256(b"c"));
    // A unique twin of an unhashed job is refused.
    let d = submit(&s, in_queue(job("op", b"d"), "lazy", 0));
    let mut twin = in_queue(job("op", b"d"), "lazy", 0);
    twin.unique = true;
    assert_eq!(block_on(s.submit(twin, usize::MAX)).unwrap(), Submit::Duplicate(d));
    // A job that ended before its hash landed blocks nothing afterwards.
    let e = submit(&s, in_queue(job("op", b"e"), "lazy", 0));
    assert_eq!(block_on(s.cancel(&e)).unwrap(), Cancel::WasPending);
    s.params_hashed(&e, sha256(b"e"));
    assert_eq!(get(&s, e).params_hash, sha256(b"e"));
    assert_eq!(block_on(s.find_active("op", &sha256(b"e"))).unwrap(), None);
}

#[test]
fn memory_waiters_wake_when_a_job_finishes() {
    let s = Arc::new(MemoryStore::new());
    let id = submit(s.as_ref(), job("op", b"w"));
    assert!(!block_on(s.wait_finished(&id, Duration::from_millis(20))).unwrap());
    let s2 = s.clone();
    let t = std::thread::spawn(move || block_on(s2.wait_finished(&id, Duration::from_secs(60))).unwrap());
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(block_on(s.cancel(&id)).unwrap(), Cancel::WasPending);
    assert!(t.join().unwrap());
    assert!(block_on(s.wait_finished(&Uuid::new_v4(), Duration::from_millis(1))).unwrap());
}

#[test]
fn memory_history_feeds_estimates() {
    let s = MemoryStore::new();
    let id = submit(&s, job("op", b"x"));
    let now = now();
    assert_eq!(estimate_seconds(&get(&s, id), None, now), 30.0);
    let lease = claim(&s, "default", 1)[0].lease;
    let running = get(&s, id);
    let t0 = running.started_at.unwrap();
    assert_eq!(estimate_seconds(&running, None, t0 + 100.0), 1700.0);
    assert_eq!(estimate_seconds(&running, Some(160.0), t0 + 100.0), 60.0);
    let p = Progress::parse("1\u{1f}4\u{1f}loading");
    block_on(s.report(&lease, Report { progress: Some(&p), ..Default::default() })).unwrap();
    assert_eq!(estimate_seconds(&get(&s, id), Some(160.0), t0 + 100.0), 300.0);
    block_on(s.finish(&lease, &Outcome::Completed(vec![]), None)).unwrap();
    assert!(block_on(s.typical_duration("op")).unwrap().is_some());
    assert_eq!(block_on(s.typical_duration("never")).unwrap(), None);
}

#[test]
fn memory_finished_jobs_keep_their_record_and_go_oldest_first() {
    let s = MemoryStore::new();
    let mut a = in_queue(job("keep", b"a"), "k", 3);
    a.max_attempts = 2;
    a.params_hash = Some(sha256(b"a"));
    let a = submit(&s, a);
    let lease = claim(&s, "k", 1)[0].lease;
    let p = Progress::parse("1\u{1f}4\u{1f}step");
    block_on(s.report(&lease, Report { pid: Some(77), progress: Some(&p), output: Some(b"early") })).unwrap();
    let before = get(&s, a);
    let err = JobError { code: "EXECUTION_ERROR".into(), message: "boom".into(), detail: Some(Arc::from(&[1u8, 2, 3][..])) };
    assert!(block_on(s.finish(&lease, &Outcome::Failed(err.clone()), Some(b"tail"))).unwrap());
    // Compacted, the record reads as it was, ended.
    let f = get(&s, a);
    assert_eq!((f.status, f.error.as_deref(), f.progress.as_deref()), (Status::Failed, Some(&err), Some(&p)));
    assert_eq!((f.worker_pid, f.attempts, f.max_attempts, f.priority), (Some(77), 1, 2, 3));
    assert_eq!((&*f.operation, &*f.queue, f.params_hash, f.timeout_ms), ("keep", "k", sha256(b"a"), 1_800_000));
    assert_eq!((f.submitted_at, f.started_at), (before.submitted_at, before.started_at));
    assert!(f.completed_at.unwrap() >= f.started_at.unwrap() && f.host.is_none() && f.result.is_none());
    let light = block_on(s.get(&a, false)).unwrap().unwrap().job;
    assert_eq!(light.error.unwrap().detail, None);
    assert_eq!(block_on(s.output(&a)).unwrap().as_deref(), Some(&b"tail"[..]));
    assert_eq!(block_on(s.cancel(&a)).unwrap(), Cancel::Finished(Status::Failed));
    assert!(!block_on(s.report(&lease, Report { pid: Some(1), ..Default::default() })).unwrap());

    let b = submit(&s, in_queue(job("keep", b"b"), "k", 0));
    let lease = claim(&s, "k", 1)[0].lease;
    assert!(block_on(s.finish(&lease, &Outcome::Completed(b"value".to_vec()), Some(b""))).unwrap());
    assert_eq!(get(&s, b).result.as_deref(), Some(&b"value"[..]));
    assert_eq!(block_on(s.output(&b)).unwrap().as_deref(), Some(&b""[..]));
    let mut u = in_queue(job("keep", b"u"), "k", 0);
    u.unique = true;
    let u = submit(&s, u);
    assert_eq!(block_on(s.find_active("keep", &sha256(b"u"))).unwrap(), Some(u));
    block_on(s.cancel(&u)).unwrap();
    assert_eq!(block_on(s.find_active("keep", &sha256(b"u"))).unwrap(), None);
    let pending = submit(&s, in_queue(job("keep", b"p"), "k2", 0));
    let running = submit(&s, in_queue(job("keep", b"r"), "k3", 0));
    let lease = claim(&s, "k3", 1)[0].lease;
    std::thread::sleep(Duration::from_millis(10));

    // Oldest first, a batch at a time; active jobs stay.
    assert_eq!(block_on(s.cleanup(0.0, 2)).unwrap(), vec![a, b]);
    assert_eq!(block_on(s.cleanup(0.0, 100)).unwrap(), vec![u]);
    assert!(block_on(s.cleanup(0.0, 100)).unwrap().is_empty());
    for id in [a, b, u] {
        assert!(block_on(s.get(&id, true)).unwrap().is_none());
        assert!(block_on(s.output(&id)).unwrap().is_none());
        assert_eq!(block_on(s.cancel(&id)).unwrap(), Cancel::NotFound);
    }
    let left: Vec<Uuid> = ids(&block_on(s.list(&page(JobFilter::default(), false, 100, None))).unwrap());
    assert_eq!(left, vec![pending, running]);
    assert_eq!(block_on(s.counts()).unwrap(), Counts { pending: 1, running: 1, total: 2 });
    // A unique twin of the cancelled job is accepted again.
    let mut twin = in_queue(job("keep", b"u"), "k", 0);
    twin.unique = true;
    assert_eq!(block_on(s.submit(twin, usize::MAX)).unwrap(), Submit::Accepted);
    assert!(block_on(s.finish(&lease, &Outcome::Cancelled, None)).unwrap());
}

#[test]
fn progress_text_parses_missing_fields() {
    assert_eq!(Progress::parse("NA\u{1f}NA"), Progress::default());
    let p = Progress::parse("3\u{1f}10\u{1f}a\u{1f}b");
    assert_eq!((p.current, p.total, p.step.as_deref()), (Some(3.0), Some(10.0), Some("a\u{1f}b")));
    assert_eq!(p.fraction(), Some(0.3));
}

#[test]
fn sqlite_store() {
    let dir = std::env::temp_dir().join(format!("asyncjobs-test-{}", Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite://{}/jobs.db", dir.display());
    let s = sql(&url, Duration::from_secs(2));
    suite(&s);
    rescue(&s);
    refusals(&s, &url);
    list_index_migrates(&url);
    // A second handle on the same file sees the same jobs (another process would).
    let other = SqlStore::open(&url, Duration::from_secs(10), Duration::from_secs(2)).unwrap();
    let id = submit(&s, job("shared", b"x"));
    assert_eq!(get(&other, id).status, Status::Pending);
    drop(other);
    // A live host of another release keeps this one from starting; a stopped one does not.
    block_on(s.register_host(&host("old-release"))).unwrap();
    assert_eq!(block_on(check_version(&s)).unwrap(), None);
    let conn = format!("sqlite://{}/jobs.db", dir.display());
    let sql_exec = |stmt: &'static str| {
        block_on(async {
            use sqlx::Connection;
            let mut c = sqlx::SqliteConnection::connect(&conn).await.unwrap();
            sqlx::query(stmt).execute(&mut c).await.unwrap();
        })
    };
    sql_exec("UPDATE asyncjobs_hosts SET version = '0.0.9', heartbeat_at = heartbeat_at + 3600 WHERE host_id = 'old-release'");
    let why = block_on(check_version(&s)).unwrap().expect("refused");
    assert!(why.contains("test-host (pid 4242) runs 0.0.9") && why.contains("drain"), "{why}");
    block_on(s.deregister_host("old-release")).unwrap();
    assert_eq!(block_on(check_version(&s)).unwrap(), None);
    // A schema newer than this build is refused, with what to do.
    sql_exec("UPDATE asyncjobs_schema SET version = 99");
    let err = SqlStore::open(&url, Duration::from_secs(10), Duration::from_secs(2)).err().expect("refused");
    assert!(err.message.contains("version 99") && err.message.contains("upgrade asyncjobs"), "{err}");
    std::fs::remove_dir_all(dir).unwrap();
}

fn server(var: &str) -> Option<String> {
    let url = std::env::var(var).ok().filter(|u| !u.is_empty());
    if url.is_none() {
        eprintln!("{var} is not set: this server's store suite did not run");
    }
    url
}

#[test]
fn postgres_store() {
    if let Some(url) = server("ASYNCJOBS_TEST_POSTGRES") {
        let s = sql(&url, Duration::from_secs(2));
        suite(&s);
        rescue(&s);
        signals(&s);
        refusals(&s, &url);
        list_index_migrates(&url);
        block_on(s.truncate()).unwrap();
    }
}

#[test]
fn mysql_store() {
    if let Some(url) = server("ASYNCJOBS_TEST_MYSQL") {
        let s = sql(&url, Duration::from_secs(2));
        suite(&s);
        rescue(&s);
        refusals(&s, &url);
        list_index_migrates(&url);
        block_on(s.truncate()).unwrap();
    }
}

/// One statement on a connection of its own; the first column of the first
/// row as an integer, when it has one.
fn raw_sql(url: &str, stmt: &str, arg: Option<&str>) -> Option<i64> {
    use sqlx::{Connection, Row};
    let url = url.replacen("mariadb:", "mysql:", 1);
    block_on(async {
        sqlx::any::install_default_drivers();
        let mut c = sqlx::AnyConnection::connect(&url).await.unwrap();
        let mut q = sqlx::query(stmt);
        if let Some(a) = arg {
            q = q.bind(a.to_string());
        }
        let row = q.fetch_optional(&mut c).await.unwrap();
        row.and_then(|r| r.try_get::<i64, _>(0).ok())
    })
}

/// The listing index is made by a migration step of its own: a store made
/// without it (as before that step) gains it at the next open.
fn list_index_migrates(url: &str) {
    let (count, drop) = if url.starts_with("postgres") {
        ("SELECT COUNT(*) FROM pg_indexes WHERE indexname = $1", "DROP INDEX asyncjobs_jobs_list")
    } else if url.starts_with("mysql") || url.starts_with("mariadb") {
        (
            "SELECT COUNT(*) FROM information_schema.statistics WHERE table_schema = DATABASE() AND index_name = ?",
            "DROP INDEX asyncjobs_jobs_list ON asyncjobs_jobs",
        )
    } else {
        ("SELECT COUNT(*) FROM sqlite_master WHERE type = 'index' AND name = ?", "DROP INDEX asyncjobs_jobs_list")
    };
    let present = || raw_sql(url, count, Some("asyncjobs_jobs_list")).unwrap() > 0;
    assert!(present(), "a new store has the listing index");
    raw_sql(url, drop, None);
    assert!(!present());
    drop_store(SqlStore::open(url, Duration::from_secs(10), Duration::from_secs(2)).unwrap());
    assert!(present(), "the next open adds it");
    drop_store(SqlStore::open(url, Duration::from_secs(10), Duration::from_secs(2)).unwrap());
    if url.starts_with("postgres") {
        assert_eq!(raw_sql(url, count, Some("asyncjobs_jobs_seq")), Some(1));
    }
}

fn drop_store(s: SqlStore) {
    drop(s);
}

/// What the store refuses for good is refused as such (not as an outage),
/// before anything is written, and a refused outcome leaves the lease alone.
fn refusals(s: &SqlStore, url: &str) {
    let before = block_on(s.counts()).unwrap();
    let e = block_on(s.submit(in_queue(job(&"x".repeat(256), b"p"), "refusals", 0), usize::MAX)).unwrap_err();
    assert_eq!(e.fault, Fault::Invalid, "{e}");
    assert!(e.message.contains("255") && e.message.contains("256"), "{e}");
    assert_eq!(block_on(s.counts()).unwrap(), before, "nothing written");
    // 255 characters of two bytes each are fine.
    let id = submit(s, in_queue(job(&"é".repeat(255), b"p"), "refusals", 0));
    let lease = claim(s, "refusals", 1)[0].lease;
    // A code longer than its column, a message longer than MySQL's TEXT: cut, written.
    let long = JobError::new(&"C".repeat(100), "m".repeat(70_000));
    assert!(block_on(s.finish(&lease, &Outcome::Failed(long), None)).unwrap());
    let e = get(s, id).error.unwrap();
    assert_eq!(e.code, "C".repeat(64));
    assert!(e.message.len() >= 60_000 && e.message.chars().all(|c| c == 'm'));
    let is = |scheme: &str| url.starts_with(scheme);
    if is("postgres") {
        // A permanent refusal of an outcome (text PostgreSQL cannot hold) is told from an outage.
        let id = submit(s, in_queue(job("refused", b"p"), "refusals", 0));
        let lease = claim(s, "refusals", 1)[0].lease;
        let e = block_on(s.finish(&lease, &Outcome::Failed(JobError::new("X", "nul \0 byte")), None)).unwrap_err();
        assert_eq!(e.fault, Fault::Invalid, "{e}");
        assert_eq!(get(s, id).status, Status::Running, "the lease stands");
        block_on(s.cancel(&id)).unwrap();
    }
    if is("mysql") || is("mariadb") {
        let max = raw_sql(url, "SELECT CAST(@@max_allowed_packet AS SIGNED)", None).unwrap() as u64;
        let before = block_on(s.counts()).unwrap();
        let big = job("big", &vec![7u8; max as usize + 1]);
        let e = block_on(s.submit(big, usize::MAX)).unwrap_err();
        assert_eq!(e.fault, Fault::TooLarge(Some(max)), "{e}");
        assert!(e.message.contains(&max.to_string()) && e.message.contains("max_allowed_packet"), "{e}");
        assert_eq!(block_on(s.counts()).unwrap(), before, "nothing written");
        // A result over the limit: refused before it is sent; the job still runs under its lease.
        let id = submit(s, in_queue(job("big-result", b"p"), "refusals", 0));
        let lease = claim(s, "refusals", 1)[0].lease;
        let e = block_on(s.finish(&lease, &Outcome::Completed(vec![1u8; max as usize + 1]), None)).unwrap_err();
        assert_eq!(e.fault, Fault::TooLarge(Some(max)), "{e}");
        assert!(e.message.contains("the result is"), "{e}");
        assert_eq!(get(s, id).status, Status::Running);
        assert!(block_on(s.finish(&lease, &Outcome::Failed(JobError::new("RESULT_TOO_LARGE", "x")), None)).unwrap());
        // The store still answers (a refused statement never reached it).
        assert!(block_on(s.get(&id, false)).unwrap().is_some());
    }
}

#[test]
fn urls_never_show_passwords() {
    use asyncjobs::store::sql::{parse_url, redact};
    assert_eq!(redact("mysql://app:s3cret@db:3306/jobs?ssl-mode=required"), "mysql://app:***@db:3306/jobs");
    assert_eq!(redact("postgres://app@db/jobs"), "postgres://app@db/jobs");
    assert!(parse_url("sqlite://relative.db").is_err());
    assert!(parse_url("redis://x").unwrap_err().contains("unknown store"));
    let err = SqlStore::open("postgres://app:s3cret@127.0.0.1:1/none", Duration::from_secs(5), Duration::from_secs(15))
        .err()
        .unwrap();
    assert!(!err.message.contains("s3cret") && err.message.contains("app:***@"), "{err}");
    assert_eq!(err.fault, Fault::Unavailable);
    // Every form sqlx takes credentials in: none is shown.
    for (url, shown) in [
        ("postgres://db/jobs?user=app&password=hunter22", "postgres://db/jobs"),
        ("postgres://db/jobs?password=hunter22&user=app", "postgres://db/jobs"),
        ("postgres://app:pa/ss?w#rd@db:5432/jobs", "postgres://app:***@db:5432/jobs"),
        ("postgres://app:1234/secret@db/jobs", "postgres://app:***@db/jobs"),
        ("postgres://app:p@ss@db/jobs?sslmode=require", "postgres://app:***@db/jobs"),
        ("postgres://db:5432/jobs?user=me@corp&password=hunter22", "postgres://db:5432/jobs"),
        ("mysql://app:s3cret@db/jobs?x=a@b", "mysql://app:***@db/jobs"),
        ("mysql://app:s3cret?x=y@db/jobs", "mysql://app:***"),
        ("sqlite:///srv/jobs.db?password=hunter22", "sqlite:///srv/jobs.db"),
        ("sqlite:/srv/jobs.db?password=hunter22", "sqlite:/srv/jobs.db"),
    ] {
        assert_eq!(redact(url), shown, "{url}");
    }
    for url in ["postgres://127.0.0.1:1/none?user=app&password=s3cretpw", "postgres://app:s3cret/pw@127.0.0.1:1/none"] {
        let err = SqlStore::open(url, Duration::from_secs(5), Duration::from_secs(15)).err().unwrap();
        assert!(!err.message.contains("s3cret"), "{err}");
    }
}

/// The memory store keeps finished jobs end to end in blocks: records of
/// every size (one larger than a block) read back whole, a late hash lands in
/// the right record, and cleanup takes the older ones only.
#[test]
fn memory_store_finished_records() {
    let s = MemoryStore::new();
    let result = |i: usize| {
        let len = if i == 700 { 200_000 } else { i % 7 * 50 };
        (0..len).map(|k| (i + k) as u8).collect::<Vec<u8>>()
    };
    let run = |from: usize, to: usize| {
        let ids: Vec<Uuid> = (from..to).map(|i| submit(&s, in_queue(job("blocks", format!("{i}").as_bytes()), "blocks", 0))).collect();
        let claimed = claim(&s, "blocks", to - from);
        assert_eq!(claimed.len(), to - from);
        for c in &claimed {
            let i = ids.iter().position(|id| *id == c.lease.id).unwrap() + from;
            block_on(s.finish(&c.lease, &Outcome::Completed(result(i)), None)).unwrap();
        }
        ids
    };
    let old = run(0, 1500);
    std::thread::sleep(Duration::from_millis(1000));
    let new = run(1500, 3000);
    for (i, id) in old.iter().chain(&new).enumerate() {
        let j = get(&s, *id);
        assert_eq!((j.status, j.operation.as_ref()), (Status::Completed, "blocks"));
        assert_eq!(j.result.as_deref(), Some(&result(i)[..]), "job {i}");
    }
    // Hashed on demand after it ended (jobs_env's record shows the hash).
    s.hash_now(&new[10]);
    assert_eq!(get(&s, new[10]).params_hash, sha256(b"1510"));
    assert_eq!(get(&s, new[11]).result.as_deref(), Some(&result(1511)[..]), "its neighbour is intact");
    let removed = block_on(s.cleanup(0.5, usize::MAX)).unwrap();
    assert_eq!(removed.len(), 1500);
    assert!(old.iter().all(|id| block_on(s.get(id, false)).unwrap().is_none()));
    for (i, id) in new.iter().enumerate() {
        assert_eq!(get(&s, *id).result.as_deref(), Some(&result(1500 + i)[..]), "job {}", 1500 + i);
    }
    assert_eq!(block_on(s.cleanup(0.0, usize::MAX)).unwrap().len(), 1500);
    assert_eq!(block_on(s.counts()).unwrap().total, 0);
    // Empty, it takes jobs again.
    let again = run(3000, 3001);
    assert_eq!(get(&s, again[0]).result.as_deref(), Some(&result(3000)[..]));
}

/// Timing, not a check: `cargo test --release --test store -- --ignored --nocapture`.
#[test]
#[ignore]
fn memory_cleanup_of_100k_jobs_timing() {
    let s = MemoryStore::new();
    let n = 100_000;
    for i in 0..n {
        submit(&s, in_queue(job("op", format!("{i}").as_bytes()), "t", 0));
    }
    let mut done = 0;
    while done < n {
        let c = claim(&s, "t", 1000);
        for c in &c {
            block_on(s.finish(&c.lease, &Outcome::Completed(vec![0u8; 60]), Some(b""))).unwrap();
        }
        done += c.len();
    }
    let (t, c) = (std::time::Instant::now(), thread_cpu());
    let removed = block_on(s.cleanup(0.0, usize::MAX)).unwrap();
    eprintln!("cleanup of {} jobs: {:?} wall, {:.1} ms CPU", removed.len(), t.elapsed(), (thread_cpu() - c) * 1e3);
}

/// Measurement, not a check: memory per retained finished job, and cleanup
/// of them, for jobs as the R API submits them (hashed params, no output).
/// `cargo test --release --test store -- --ignored --nocapture --test-threads 1`.
#[test]
#[ignore]
fn memory_retained_jobs_measure() {
    let rss = || {
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
        statm.split_whitespace().nth(1).unwrap().parse::<f64>().unwrap() * 4096.0
    };
    let s = MemoryStore::new();
    let n = 100_000;
    let r0 = rss();
    // In batches, as a pool runs them.
    for batch in 0..n / 500 {
        for i in 0..500 {
            let mut j = in_queue(job("fill", format!("{}", batch * 500 + i).as_bytes()), "m", 0);
            j.params_hash = Some(sha256(&j.params));
            j.executor = vec![0u8; 600];
            submit(&s, j);
        }
        for c in claim(&s, "m", 500) {
            block_on(s.finish(&c.lease, &Outcome::Completed(vec![0u8; 105]), None)).unwrap();
        }
    }
    let per_job = (rss() - r0) / n as f64;
    let (t, c) = (std::time::Instant::now(), thread_cpu());
    let removed = block_on(s.cleanup(0.0, usize::MAX)).unwrap();
    eprintln!(
        "RSS per retained job: {per_job:.0} bytes; cleanup of {} jobs: {:?} wall, {:.1} ms CPU",
        removed.len(),
        t.elapsed(),
        (thread_cpu() - c) * 1e3
    );
}

/// This thread's CPU time in seconds: wall time means little on a shared machine.
fn thread_cpu() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}
