//! Limits, uniqueness and the audit trail on every store: queue caps and
//! pauses, concurrency keys, submit rate limits, unique keys with a window,
//! replace and force, labels, events, retries and retention per state; on a
//! database, hosts racing claims under caps. SQLite always; PostgreSQL and
//! MySQL/MariaDB when `ASYNCJOBS_TEST_POSTGRES` and `ASYNCJOBS_TEST_MYSQL`
//! name a live server.

use asyncjobs::job::*;
use asyncjobs::store::memory::MemoryStore;
use asyncjobs::store::sql::SqlStore;
use asyncjobs::store::*;
use asyncjobs::sys::*;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

const HOST: &str = "policy-host";

/// A handler job whose params are the JSON string `params`.
fn job(op: &str, params: &str, queue: &str) -> NewJob {
    let params = format!("\"{params}\"");
    NewJob {
        id: Uuid::new_v4(),
        operation: op.into(),
        params_hash: Some(sha256(params.as_bytes())),
        params: Arc::new(params.as_bytes().to_vec()),
        params_json: true,
        timeout_ms: 60_000,
        queue: queue.into(),
        max_attempts: 1,
        host: Some(HOST.into()),
        ..NewJob::default()
    }
}

fn submit(s: &dyn Store, j: NewJob) -> Uuid {
    let id = j.id;
    assert_eq!(block_on(s.submit(j, usize::MAX)).unwrap(), Submit::Accepted);
    id
}

fn claim(s: &dyn Store, queue: &str, k: usize) -> Vec<Claimed> {
    block_on(s.claim(HOST, &[queue.to_string()], k)).unwrap()
}

fn finish(s: &dyn Store, c: &Claimed, outcome: Outcome) {
    assert!(block_on(s.finish(&c.lease, &outcome, None)).unwrap());
}

fn done(s: &dyn Store, c: &Claimed) {
    finish(s, c, Outcome::CompletedJson(b"{\"value\":1}".to_vec()));
}

fn status(s: &dyn Store, id: Uuid) -> Job {
    block_on(s.get(&id, true)).unwrap().expect("the job exists").job
}

fn kinds(s: &dyn Store, id: Uuid) -> Vec<String> {
    block_on(s.events(&id)).unwrap().expect("the job exists").into_iter().map(|e| e.kind).collect()
}

fn set(s: &dyn Store, queue: &str, paused: Option<bool>, cap: Option<Option<u32>>) {
    block_on(s.set_queue(queue, &QueueChange { paused, max_running: cap })).unwrap();
}

fn suite(s: &dyn Store) {
    caps_and_pauses(s);
    concurrency_keys(s);
    rate_limits(s);
    unique_keys(s);
    labels(s);
    events_and_retry(s);
    retention(s);
}

/// A queue's cap holds back its jobs beyond it; a paused queue gives none.
fn caps_and_pauses(s: &dyn Store) {
    set(s, "capped", None, Some(Some(2)));
    let ids: Vec<Uuid> = (0..5).map(|i| submit(s, job("c", &i.to_string(), "capped"))).collect();
    let first = claim(s, "capped", 5);
    assert_eq!(first.iter().map(|c| c.lease.id).collect::<Vec<_>>(), ids[..2], "two run, the oldest first");
    assert!(claim(s, "capped", 5).is_empty(), "the cap holds while they run");
    done(s, &first[0]);
    let next = claim(s, "capped", 5);
    assert_eq!(next.iter().map(|c| c.lease.id).collect::<Vec<_>>(), ids[2..3]);
    let view = block_on(s.queues()).unwrap().into_iter().find(|q| q.name == "capped").unwrap();
    assert_eq!((view.max_running, view.running, view.pending, view.paused), (Some(2), 2, 2, false));
    set(s, "capped", Some(true), None);
    done(s, &first[1]);
    assert!(claim(s, "capped", 5).is_empty(), "a paused queue gives nothing");
    set(s, "capped", Some(false), Some(None));
    let rest = claim(s, "capped", 5);
    assert_eq!(rest.len(), 2, "resumed, and without its cap");
    for c in next.iter().chain(&rest) {
        done(s, c);
    }
}

/// Jobs of a key at its limit wait; jobs of other keys pass them.
fn concurrency_keys(s: &dyn Store) {
    let keyed = |key: &str, limit: u32, n: &str| {
        let mut j = job("k", n, "keys");
        j.concurrency_key = Some(key.into());
        j.concurrency_limit = limit;
        j
    };
    let u1: Vec<Uuid> = (0..4).map(|i| submit(s, keyed("user:1", 2, &format!("a{i}")))).collect();
    let u2 = submit(s, keyed("user:2", 1, "b0"));
    let u2b = submit(s, keyed("user:2", 1, "b1"));
    let free = submit(s, job("k", "free", "keys"));
    let c = claim(s, "keys", 10);
    let got: Vec<Uuid> = c.iter().map(|c| c.lease.id).collect();
    assert_eq!(got, vec![u1[0], u1[1], u2, free], "two of user:1, one of user:2, the unkeyed one");
    assert_eq!(status(s, u1[0]).concurrency_key.as_deref(), Some("user:1"));
    assert!(claim(s, "keys", 10).is_empty());
    done(s, &c[0]);
    done(s, &c[2]);
    let c2 = claim(s, "keys", 10);
    assert_eq!(c2.iter().map(|c| c.lease.id).collect::<Vec<_>>(), vec![u1[2], u2b]);
    for x in c[1..2].iter().chain(&c[3..]).chain(&c2) {
        done(s, x);
    }
    let last = claim(s, "keys", 10);
    assert_eq!(last.iter().map(|c| c.lease.id).collect::<Vec<_>>(), vec![u1[3]]);
    done(s, &last[0]);
}

/// Per caller and per operation, n per window: the first n pass, the next
/// is told when to come back, other callers pass.
fn rate_limits(s: &dyn Store) {
    let by = |who: &str, n: &str| {
        let mut j = job("rated", n, "rates");
        j.submitted_by = Some(who.into());
        j.rates = vec![Rate { by: RateBy::Caller, n: 3, window: 60.0 }, Rate { by: RateBy::Operation, n: 5, window: 60.0 }];
        j
    };
    for i in 0..3 {
        submit(s, by("alice", &format!("a{i}")));
    }
    match block_on(s.submit(by("alice", "a3"), usize::MAX)).unwrap() {
        Submit::RateLimited { retry_after, by } => {
            assert_eq!(by, RateBy::Caller);
            assert!(retry_after > 50.0 && retry_after <= 60.0, "{retry_after}");
        }
        other => panic!("{other:?}"),
    }
    submit(s, by("bob", "b0"));
    submit(s, by("bob", "b1"));
    match block_on(s.submit(by("carol", "c0"), usize::MAX)).unwrap() {
        Submit::RateLimited { by, .. } => assert_eq!(by, RateBy::Operation, "five of the operation in the window"),
        other => panic!("{other:?}"),
    }
    // Without a caller, only the operation's limit applies.
    let mut anon = job("other-op", "x", "rates");
    anon.rates = vec![Rate { by: RateBy::Caller, n: 1, window: 60.0 }];
    submit(s, anon.clone());
    anon.id = Uuid::new_v4();
    submit(s, anon);
    for c in claim(s, "rates", 100) {
        done(s, &c);
    }
}

/// Twins by key: active ones always, completed ones within the window;
/// replace takes a pending twin's place, force reruns.
fn unique_keys(s: &dyn Store) {
    let keyed = |key: &str, params: &str| {
        let mut j = job("u", params, "uniq");
        j.unique = true;
        j.unique_key = Some(key.into());
        j
    };
    let a = submit(s, keyed("k1", "1"));
    assert_eq!(block_on(s.submit(keyed("k1", "2"), usize::MAX)).unwrap(), Submit::Duplicate(a), "same key, other params");
    submit(s, keyed("k2", "1"));
    let c = claim(s, "uniq", 10);
    for x in &c {
        done(s, x);
    }
    // Ended, it is no active job by its params either.
    assert_eq!(block_on(s.find_active("u", &sha256(b"\"1\""))).unwrap(), None);
    let again = keyed("k1", "3");
    submit(s, again.clone()); // completed, no window: a new job
    let mut within = keyed("k1", "4");
    within.unique_for = 3600.0;
    let dup = block_on(s.submit(within.clone(), usize::MAX)).unwrap();
    assert_eq!(dup, Submit::Duplicate(again.id), "the active twin first");
    for x in claim(s, "uniq", 10) {
        done(s, &x);
    }
    within.id = Uuid::new_v4();
    assert_eq!(block_on(s.submit(within.clone(), usize::MAX)).unwrap(), Submit::Duplicate(again.id), "a completed twin in the window");
    let mut forced = keyed("k1", "5");
    forced.force = true;
    let f = submit(s, forced);
    within.id = Uuid::new_v4();
    assert_eq!(block_on(s.submit(within.clone(), usize::MAX)).unwrap(), Submit::Duplicate(f), "the rerun is the twin now");
    // Replace: a pending twin is cancelled, naming the job in its place.
    let mut r = keyed("k1", "6");
    r.replace = true;
    let rid = submit(s, r);
    let old = status(s, f);
    assert_eq!(old.status, Status::Cancelled);
    assert!(old.error.unwrap().message.contains(&rid.to_string()));
    let running = claim(s, "uniq", 10);
    assert_eq!(running.len(), 1);
    let mut r2 = keyed("k1", "7");
    r2.replace = true;
    assert_eq!(block_on(s.submit(r2, usize::MAX)).unwrap(), Submit::Duplicate(rid), "a running twin is the answer");
    done(s, &running[0]);
    // A failed twin is no cached result.
    let mut w = keyed("k3", "1");
    w.unique_for = 3600.0;
    let w1 = submit(s, w.clone());
    let c = claim(s, "uniq", 10);
    finish(s, &c[0], Outcome::Failed(JobError::new("EXECUTION_ERROR", "no")));
    w.id = Uuid::new_v4();
    assert_ne!(submit(s, w), w1);
    for x in claim(s, "uniq", 10) {
        done(s, &x);
    }
}

/// Submitter and tags: on the record and filtered by the listing, for
/// active and finished jobs alike.
fn labels(s: &dyn Store) {
    let tagged = |by: &str, tags: &[&str], n: &str| {
        let mut j = job("lab", n, "labels");
        j.submitted_by = Some(by.into());
        j.tags = tags.iter().map(|t| t.to_string()).collect();
        j
    };
    let a = submit(s, tagged("ann", &["genes", "nightly"], "1"));
    let b = submit(s, tagged("ann", &["genes"], "2"));
    let c = submit(s, tagged("ben", &["nightly"], "3"));
    for x in claim(s, "labels", 1) {
        done(s, &x); // a finishes: one finished, two pending
    }
    let list = |by: Option<&str>, tags: &[&str]| -> Vec<Uuid> {
        let filter = JobFilter {
            operations: Some(vec!["lab".into()]),
            submitted_by: by.map(str::to_owned),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            ..JobFilter::default()
        };
        let q = ListQuery { filter, newest_first: false, limit: 100, after: None };
        block_on(s.list(&q)).unwrap().jobs.into_iter().map(|j| j.id).collect()
    };
    assert_eq!(list(Some("ann"), &[]), vec![a, b]);
    assert_eq!(list(None, &["nightly"]), vec![a, c]);
    assert_eq!(list(Some("ann"), &["genes", "nightly"]), vec![a]);
    assert!(list(Some("nobody"), &[]).is_empty());
    let rec = status(s, a);
    assert_eq!(rec.submitted_by.as_deref(), Some("ann"));
    assert_eq!(rec.tags.iter().map(|t| t.to_string()).collect::<Vec<_>>(), vec!["genes", "nightly"]);
    for x in claim(s, "labels", 10) {
        done(s, &x);
    }
}

/// Every transition in order, with host and attempt; a retried job keeps
/// its history and runs again under its id.
fn events_and_retry(s: &dyn Store) {
    let mut j = job("ev", "1", "events");
    j.delay = 0.0;
    let id = submit(s, j);
    let c = claim(s, "events", 1).remove(0);
    let p = Progress { step: Some("loading".into()), current: Some(1.0), total: Some(4.0) };
    block_on(s.report(&c.lease, Report { progress: Some(&p), event: true, ..Default::default() })).unwrap();
    block_on(s.report(&c.lease, Report { progress: Some(&p), event: false, ..Default::default() })).unwrap();
    finish(s, &c, Outcome::Failed(JobError::new("EXECUTION_ERROR", "boom")));
    assert_eq!(kinds(s, id), ["submitted", "claimed", "progress", "failed"]);
    let ev = block_on(s.events(&id)).unwrap().unwrap();
    assert_eq!(ev[1].host.as_deref(), Some(HOST));
    assert_eq!((ev[1].attempt, ev[3].attempt), (1, 1));
    assert_eq!(ev[2].detail.as_deref(), Some("loading (1/4)"));
    assert!(ev[3].detail.as_deref().unwrap().starts_with("EXECUTION_ERROR"));
    assert!(ev.windows(2).all(|w| w[0].at <= w[1].at));
    assert_eq!(block_on(s.retry(&id, Some("admin"))).unwrap(), Retry::Retried);
    assert_eq!(block_on(s.retry(&id, None)).unwrap(), Retry::NotFailed(Status::Pending));
    assert_eq!(block_on(s.retry(&Uuid::new_v4(), None)).unwrap(), Retry::NotFound);
    let again = status(s, id);
    assert_eq!((again.status, again.error.is_none(), again.max_attempts), (Status::Pending, true, 2));
    let c = claim(s, "events", 1).remove(0);
    assert_eq!((c.lease.id, c.attempt, &c.params[..]), (id, 2, &b"\"1\""[..]), "its params kept");
    done(s, &c);
    assert_eq!(kinds(s, id), ["submitted", "claimed", "progress", "failed", "retried", "claimed", "completed"]);
    let ev = block_on(s.events(&id)).unwrap().unwrap();
    assert_eq!(ev[4].detail.as_deref(), Some("by admin"));
    assert_eq!(ev[6].attempt, 2);
    assert_eq!(block_on(s.retry(&id, None)).unwrap(), Retry::NotFailed(Status::Completed));
    // Cancelled by someone, and a delayed job's schedule.
    let mut d = job("ev", "2", "events");
    d.delay = 3600.0;
    let d = submit(s, d);
    assert_eq!(block_on(s.cancel(&d, Some("ops"))).unwrap(), Cancel::WasPending);
    assert_eq!(kinds(s, d), ["submitted", "scheduled", "cancelled"]);
    let last = block_on(s.events(&d)).unwrap().unwrap().pop().unwrap();
    assert!(last.detail.unwrap().contains("cancelled by ops"));
    assert_eq!(block_on(s.events(&Uuid::new_v4())).unwrap(), None);
}

/// Each state is kept as long as its own age says, with its events.
fn retention(s: &dyn Store) {
    let ok = submit(s, job("ret", "ok", "ret"));
    let bad = submit(s, job("ret", "bad", "ret"));
    let off = submit(s, job("ret", "off", "ret"));
    for c in claim(s, "ret", 2) {
        if c.lease.id == ok {
            done(s, &c);
        } else {
            finish(s, &c, Outcome::Failed(JobError::new("EXECUTION_ERROR", "no")));
        }
    }
    block_on(s.cancel(&off, None)).unwrap();
    std::thread::sleep(Duration::from_millis(30));
    let gone = block_on(s.prune(Some(Status::Completed), 0.0, 1000)).unwrap();
    assert!(gone.contains(&ok) && !gone.contains(&bad) && !gone.contains(&off), "completed only");
    assert!(block_on(s.get(&ok, false)).unwrap().is_none());
    assert_eq!(block_on(s.events(&ok)).unwrap(), None, "its events went with it");
    assert!(block_on(s.prune(Some(Status::Failed), 3600.0, 1000)).unwrap().is_empty(), "not old enough");
    let gone = block_on(s.prune(Some(Status::Cancelled), 0.0, 1000)).unwrap();
    assert!(gone.contains(&off) && !gone.contains(&bad));
    assert_eq!(status(s, bad).status, Status::Failed);
    assert!(block_on(s.prune(None, 0.0, 1000)).unwrap().contains(&bad));
    assert!(block_on(s.get(&bad, false)).unwrap().is_none());
}

#[test]
fn memory_policy() {
    suite(&MemoryStore::new());
}

/// A memory store's log with retired records in it: listings, counts and a
/// later cleanup skip them, and the records behind them are read right.
#[test]
fn memory_retention_keeps_the_log_whole() {
    let s = MemoryStore::new();
    let mut ids = Vec::new();
    for i in 0..3000 {
        let id = submit(&s, job("many", &i.to_string(), "m"));
        let c = claim(&s, "m", 1).remove(0);
        if i % 3 == 0 {
            done(&s, &c);
        } else {
            finish(&s, &c, Outcome::Failed(JobError::new("E", &"x".repeat(i % 50))));
        }
        ids.push(id);
    }
    std::thread::sleep(Duration::from_millis(10));
    let gone = block_on(s.prune(Some(Status::Completed), 0.0, 400)).unwrap();
    assert_eq!(gone.len(), 400);
    let gone2 = block_on(s.prune(Some(Status::Completed), 0.0, 10_000)).unwrap();
    assert_eq!(gone.len() + gone2.len(), 1000);
    assert_eq!(block_on(s.counts()).unwrap().total, 2000);
    let q = ListQuery { filter: JobFilter::default(), newest_first: false, limit: 10_000, after: None };
    let listed = block_on(s.list(&q)).unwrap().jobs;
    assert_eq!(listed.len(), 2000);
    assert!(listed.iter().all(|j| j.status == Status::Failed));
    for (i, id) in ids.iter().enumerate() {
        let j = block_on(s.get(id, true)).unwrap();
        match i % 3 {
            0 => assert!(j.is_none()),
            _ => assert_eq!(j.unwrap().job.error.unwrap().message, "x".repeat(i % 50)),
        }
    }
    assert_eq!(block_on(s.cleanup(0.0, 10_000)).unwrap().len(), 2000);
    assert_eq!(block_on(s.counts()).unwrap().total, 0);
}

fn server(var: &str) -> Option<String> {
    let url = std::env::var(var).ok().filter(|u| !u.is_empty());
    if url.is_none() {
        eprintln!("{var} is not set: this server's policy suite did not run");
    }
    url
}

fn open(url: &str) -> SqlStore {
    SqlStore::open(url, Duration::from_secs(10), Duration::from_secs(2)).unwrap_or_else(|e| panic!("{e}"))
}

fn sql_suite(url: &str) {
    let s = open(url);
    block_on(s.truncate()).unwrap();
    suite(&s);
    rescued_events(url);
    racing_hosts(url);
    block_on(s.truncate()).unwrap();
}

/// A host that stops renewing: its job's events name it, then the rescue,
/// then the next host's attempt.
fn rescued_events(url: &str) {
    let s = open(url);
    let mut j = job("lost", "1", "lost");
    j.max_attempts = 2;
    let id = submit(&s, j);
    let c = block_on(s.claim("gone-host", &["lost".to_string()], 1)).unwrap();
    assert_eq!(c.len(), 1);
    std::thread::sleep(Duration::from_millis(2500)); // past the 2 s lease
    assert_eq!(block_on(s.rescue()).unwrap(), vec![id]);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let c2 = loop {
        let c = claim(&s, "lost", 1); // after the back-off
        if !c.is_empty() || std::time::Instant::now() > deadline {
            break c;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    done(&s, &c2[0]);
    let ev = block_on(s.events(&id)).unwrap().unwrap();
    let seen: Vec<(&str, Option<&str>, u32)> = ev.iter().map(|e| (e.kind.as_str(), e.host.as_deref(), e.attempt)).collect();
    assert_eq!(
        seen,
        [
            ("submitted", Some(HOST), 0),
            ("claimed", Some("gone-host"), 1),
            ("rescued", Some("gone-host"), 1),
            ("claimed", Some(HOST), 2),
            ("completed", Some(HOST), 2)
        ]
    );
    assert!(ev[2].detail.as_deref().unwrap().starts_with("HOST_LOST"));
}

/// Six hosts claim and finish at once under a queue cap and a key limit:
/// at no sampled instant does the store run more than either allows.
fn racing_hosts(url: &str) {
    let s = open(url);
    set(&s, "race", None, Some(Some(3)));
    for i in 0..120 {
        let mut j = job("race", &i.to_string(), "race");
        if i % 2 == 0 {
            j.concurrency_key = Some("hot".into());
            j.concurrency_limit = 2;
        }
        submit(&s, j);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let finished = Arc::new(AtomicUsize::new(0));
    let hosts: Vec<_> = (0..6)
        .map(|h| {
            let (url, stop, finished) = (url.to_owned(), stop.clone(), finished.clone());
            std::thread::spawn(move || {
                let s = open(&url);
                let host = format!("racer-{h}");
                while !stop.load(Ordering::SeqCst) {
                    let got = block_on(s.claim(&host, &["race".to_string()], 2)).unwrap();
                    if got.is_empty() {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    for c in got {
                        std::thread::sleep(Duration::from_millis(10));
                        done(&s, &c);
                        finished.fetch_add(1, Ordering::SeqCst);
                    }
                }
            })
        })
        .collect();
    let mut samples = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while finished.load(Ordering::SeqCst) < 120 && std::time::Instant::now() < deadline {
        let running = block_on(s.list(&ListQuery {
            filter: JobFilter { statuses: Some(vec![Status::Running]), operations: Some(vec!["race".into()]), ..JobFilter::default() },
            newest_first: false,
            limit: 1000,
            after: None,
        }))
        .unwrap()
        .jobs;
        let hot = running.iter().filter(|j| j.concurrency_key.as_deref() == Some("hot")).count();
        assert!(running.len() <= 3, "{} running in a queue capped at 3", running.len());
        assert!(hot <= 2, "{hot} running of a key limited to 2");
        samples += 1;
    }
    stop.store(true, Ordering::SeqCst);
    for h in hosts {
        h.join().unwrap();
    }
    assert_eq!(finished.load(Ordering::SeqCst), 120, "every job ran ({samples} samples)");
}

#[test]
fn sqlite_policy() {
    let dir = std::env::temp_dir().join(format!("asyncjobs-policy-{}", Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    sql_suite(&format!("sqlite://{}/jobs.db", dir.display()));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn postgres_policy() {
    if let Some(url) = server("ASYNCJOBS_TEST_POSTGRES") {
        sql_suite(&url);
    }
}

#[test]
fn mysql_policy() {
    if let Some(url) = server("ASYNCJOBS_TEST_MYSQL") {
        sql_suite(&url);
    }
}
