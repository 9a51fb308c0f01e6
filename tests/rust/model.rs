//! The job model on every store: handler jobs with JSON params and results,
//! delays, dependencies, children, schedules, and the upgrade of a store
//! made by asyncjobs 0.1. SQLite always; PostgreSQL and MySQL/MariaDB when
//! `ASYNCJOBS_TEST_POSTGRES` and `ASYNCJOBS_TEST_MYSQL` name a live server.

use asyncjobs::job::*;
use asyncjobs::schedule::{self, Missed, Schedule, Timing};
use asyncjobs::store::memory::MemoryStore;
use asyncjobs::store::sql::{parse_url, Dialect, SqlStore};
use asyncjobs::store::*;
use asyncjobs::sys::*;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

const HOST: &str = "model-host";

fn handler(op: &str, json: &str, queue: &str) -> NewJob {
    NewJob {
        id: Uuid::new_v4(),
        operation: op.into(),
        params_hash: Some(sha256(json.as_bytes())),
        params: Arc::new(json.as_bytes().to_vec()),
        params_json: true,
        timeout_ms: 60_000,
        queue: queue.into(),
        max_attempts: 1,
        ..NewJob::default()
    }
}

fn submit(s: &dyn Store, j: NewJob) -> Uuid {
    let id = j.id;
    assert_eq!(block_on(s.submit(j, usize::MAX)).unwrap(), Submit::Accepted);
    id
}

fn claim(s: &dyn Store, queue: &str) -> Vec<Claimed> {
    block_on(s.claim(HOST, &[queue.to_string()], 10)).unwrap()
}

fn view(s: &dyn Store, id: Uuid) -> JobView {
    block_on(s.get(&id, true)).unwrap().expect("the job exists")
}

fn finish(s: &dyn Store, c: &Claimed, outcome: Outcome) {
    assert!(block_on(s.finish(&c.lease, &outcome, None)).unwrap());
}

/// The scenarios every store passes; each uses queues of its own.
fn suite(s: &dyn Store) {
    handlers(s);
    delays(s);
    chains(s);
    children(s);
    schedules(s);
}

fn handlers(s: &dyn Store) {
    let json = r#"{"genes":["BRCA1","TP53"],"n":5}"#;
    let id = submit(s, handler("cluster", json, "h"));
    let c = claim(s, "h");
    assert_eq!(c.len(), 1);
    assert!(c[0].executor.is_empty() && c[0].params_json, "a handler job carries JSON params and no code");
    assert!(!c[0].serialized());
    assert_eq!((c[0].operation.as_ref(), c[0].queue.as_ref(), c[0].attempt), ("cluster", "h", 1));
    // The text as written, keys in order: R reads back what it sent.
    assert_eq!(c[0].params.as_slice(), json.as_bytes());
    assert!(view(s, id).job.handler);
    // Progress without numbers, then with (PostgreSQL once refused the second:
    // a NULL double was bound as a float4).
    for (current, total) in [(None, None), (Some(1.0), Some(4.0)), (None, Some(4.0))] {
        let p = Progress { step: Some("step".into()), current, total };
        assert!(block_on(s.report(&c[0].lease, Report { progress: Some(&p), ..Report::default() })).unwrap());
        let got = view(s, id).job.progress.expect("progress");
        assert_eq!((got.current, got.total), (current, total));
    }
    let result = br#"{"value":{"clusters":3},"warnings":["slow"]}"#.to_vec();
    finish(s, &c[0], Outcome::CompletedJson(result));
    let done = view(s, id).job;
    assert_eq!(done.status, Status::Completed);
    assert!(done.result_json, "a JSON result is flagged");
    assert_eq!(done.result.unwrap().as_ref(), br#"{"value":{"clusters":3},"warnings":["slow"]}"#);

    // R params: serialized, flagged as such, signed when the caller signs.
    let mut r = handler("model", "", "h");
    r.params = Arc::new(vec![1, 2, 3]);
    r.params_json = false;
    r.signature = Some(sign(b"key", &r.id, &r.operation, &[], &[1, 2, 3]));
    let sig = r.signature;
    submit(s, r);
    let c = claim(s, "h");
    assert!(c[0].serialized() && !c[0].params_json);
    assert_eq!(c[0].params.as_slice(), &[1, 2, 3]);
    if s.shared() {
        assert_eq!(c[0].signature, sig, "the signature travels with the job");
    }
    finish(s, &c[0], Outcome::Completed(vec![9]));
}

fn delays(s: &dyn Store) {
    let mut j = handler("later", "1", "d");
    j.delay = 1.5;
    let id = submit(s, j);
    let now_id = submit(s, handler("now", "2", "d"));
    let first = claim(s, "d");
    assert_eq!(first.iter().map(|c| c.lease.id).collect::<Vec<_>>(), vec![now_id], "a delayed job waits");
    let v = view(s, id);
    assert_eq!(v.job.status, Status::Pending);
    let at = v.job.run_at.expect("a delayed job shows when it runs");
    assert!(at > v.job.submitted_at + 1.0 && at < v.job.submitted_at + 2.0, "{at} vs {}", v.job.submitted_at);
    if let Some(due) = s.next_due() {
        assert!((due - at).abs() < 0.01, "the memory store knows when it is due");
    }
    std::thread::sleep(Duration::from_millis(1700));
    let later = claim(s, "d");
    assert_eq!(later.iter().map(|c| c.lease.id).collect::<Vec<_>>(), vec![id], "then it runs");
    for c in first.iter().chain(&later) {
        finish(s, c, Outcome::Completed(vec![]));
    }
    // Cancelled before its time, it never runs.
    let mut j = handler("later", "3", "d");
    j.delay = 0.2;
    let id = submit(s, j);
    assert_eq!(block_on(s.cancel(&id, None)).unwrap(), Cancel::WasPending);
    std::thread::sleep(Duration::from_millis(300));
    assert!(claim(s, "d").is_empty());
}

fn chains(s: &dyn Store) {
    // a -> b -> c: each waits for the one before it.
    let a = submit(s, handler("step", "1", "c"));
    let mut b = handler("step", "2", "c");
    b.depends_on = vec![a];
    let b = submit(s, b);
    let mut c = handler("step", "3", "c");
    c.depends_on = vec![b, a];
    let c = submit(s, c);
    let v = view(s, c);
    assert_eq!(v.job.waiting, 2);
    assert_eq!(v.waiting_for.len(), 2);
    assert!(v.waiting_for.contains(&a) && v.waiting_for.contains(&b));
    assert_eq!(v.position, None, "a waiting job has no place in the queue yet");
    let first = claim(s, "c");
    assert_eq!(first.iter().map(|x| x.lease.id).collect::<Vec<_>>(), vec![a], "only the head of the chain runs");
    finish(s, &first[0], Outcome::Completed(vec![]));
    assert_eq!(view(s, c).waiting_for, vec![b], "c now waits for b alone");
    let second = claim(s, "c");
    assert_eq!(second.iter().map(|x| x.lease.id).collect::<Vec<_>>(), vec![b]);
    finish(s, &second[0], Outcome::Completed(vec![]));
    let third = claim(s, "c");
    assert_eq!(third.iter().map(|x| x.lease.id).collect::<Vec<_>>(), vec![c]);
    finish(s, &third[0], Outcome::Completed(vec![]));

    // A failure fails what waits on it, and what waits on that, naming the job.
    let a = submit(s, handler("step", "4", "c"));
    let mut b = handler("step", "5", "c");
    b.depends_on = vec![a];
    let b = submit(s, b);
    let mut c = handler("step", "6", "c");
    c.depends_on = vec![b];
    let c = submit(s, c);
    let run = claim(s, "c");
    finish(s, &run[0], Outcome::Failed(JobError::new("EXECUTION_ERROR", "boom")));
    for (id, dep) in [(b, a), (c, b)] {
        let j = view(s, id).job;
        let e = j.error.expect("an error");
        assert_eq!((j.status, e.code.as_str()), (Status::Failed, "DEPENDENCY_FAILED"));
        assert!(e.message.contains(&dep.to_string()), "{}", e.message);
    }
    assert!(claim(s, "c").is_empty());

    // Cancelling a job fails its dependents; a finished failure fails a new one at once.
    let a = submit(s, handler("step", "7", "c"));
    let mut b = handler("step", "8", "c");
    b.depends_on = vec![a];
    let b = submit(s, b);
    block_on(s.cancel(&a, None)).unwrap();
    let e = view(s, b).job.error.unwrap();
    assert!(e.code == "DEPENDENCY_FAILED" && e.message.contains("cancelled"), "{}", e.message);
    let mut late = handler("step", "9", "c");
    late.depends_on = vec![a];
    let late = submit(s, late);
    assert_eq!(view(s, late).job.status, Status::Failed);

    // A dependency that completed already holds nothing up; an unknown one is refused.
    let done = submit(s, handler("step", "10", "c"));
    let run = claim(s, "c");
    finish(s, &run[0], Outcome::Completed(vec![]));
    let mut j = handler("step", "11", "c");
    j.depends_on = vec![done];
    let id = submit(s, j);
    assert_eq!(view(s, id).job.waiting, 0);
    assert_eq!(claim(s, "c").len(), 1);
    let ghost = Uuid::new_v4();
    let mut j = handler("step", "12", "c");
    j.depends_on = vec![done, ghost];
    let refused = j.id;
    assert_eq!(block_on(s.submit(j, usize::MAX)).unwrap(), Submit::UnknownDependency(ghost));
    assert!(block_on(s.get(&refused, false)).unwrap().is_none(), "nothing was written");
}

fn children(s: &dyn Store) {
    let parent = submit(s, handler("parent", "1", "k"));
    let run = claim(s, "k");
    let kid = |n: u32| {
        let mut j = handler("child", &n.to_string(), "k");
        j.id = child_id(&parent, n);
        j.parent = Some(parent);
        j
    };
    let a = submit(s, kid(1));
    let b = submit(s, kid(2));
    // A retried parent asks again for its first child: it is the same job.
    assert_eq!(block_on(s.submit(kid(1), usize::MAX)).unwrap(), Submit::Accepted);
    let v = view(s, parent);
    assert_eq!(v.children, vec![a, b], "children in order, each once");
    assert_eq!(view(s, a).job.parent, Some(parent));
    finish(s, &run[0], Outcome::Completed(vec![]));
    assert_eq!(view(s, parent).children, vec![a, b], "a finished parent keeps them");
    for c in claim(s, "k") {
        finish(s, &c, Outcome::Completed(vec![]));
    }
}

fn schedules(s: &dyn Store) {
    let now = now();
    let sched = Schedule {
        name: "nightly".into(),
        cron: "*/2 * * * * *".into(),
        tz: "Europe/Berlin".into(),
        operation: "refresh".into(),
        params: br#"{"full":true}"#.to_vec(),
        queue: "sch".into(),
        max_attempts: 1,
        timeout_ms: 60_000,
        next_at: now.floor() - 4.0,
        created_at: now,
        ..Schedule::default()
    };
    assert_eq!(block_on(s.put_schedule(&sched, false)).unwrap(), PutSchedule::Created);
    assert_eq!(block_on(s.put_schedule(&sched, false)).unwrap(), PutSchedule::Unchanged, "the same definition again");
    let mut other = sched.clone();
    other.cron = "0 30 2 * * *".into();
    assert!(matches!(block_on(s.put_schedule(&other, false)).unwrap(), PutSchedule::Taken(_)), "a name used twice");
    let listed = block_on(s.schedules()).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].params, sched.params);

    // Two hosts fire the same due slots: each slot makes one job.
    let timing = Timing::parse(&sched.cron, &sched.tz).unwrap();
    let (slots, next) = schedule::due(&listed[0], &timing, now);
    assert!(slots.len() >= 2 && next > now, "{slots:?} {next}");
    let jobs = |slots: &[f64]| -> Vec<NewJob> {
        slots
            .iter()
            .map(|&at| {
                let mut j = handler("refresh", r#"{"full":true}"#, "sch");
                j.slot = Some(Slot { schedule: "nightly".into(), at });
                j
            })
            .collect()
    };
    let first = block_on(s.fire("nightly", listed[0].next_at, next, jobs(&slots))).unwrap();
    let again = block_on(s.fire("nightly", listed[0].next_at, next, jobs(&slots))).unwrap();
    assert_eq!((first, again), (slots.len(), 0), "every slot once");
    let after = block_on(s.schedules()).unwrap();
    assert_eq!(after[0].next_at, next);
    assert_eq!(after[0].last_at, slots.last().copied());
    let fired = claim(s, "sch");
    assert_eq!(fired.len(), slots.len());
    let j = view(s, fired[0].lease.id).job;
    assert_eq!(j.schedule.as_deref(), Some("nightly"));
    assert_eq!(j.slot_at, Some(slots[0]), "the job knows its slot");

    other.name = "weekly".into();
    other.missed = Missed::Once;
    assert_eq!(block_on(s.put_schedule(&other, false)).unwrap(), PutSchedule::Created);
    other.tz = "UTC".into();
    assert_eq!(block_on(s.put_schedule(&other, true)).unwrap(), PutSchedule::Replaced);
    assert!(block_on(s.drop_schedule("weekly")).unwrap());
    assert!(!block_on(s.drop_schedule("weekly")).unwrap());
    assert!(block_on(s.drop_schedule("nightly")).unwrap());
    for c in fired {
        finish(s, &c, Outcome::Completed(vec![]));
    }
}

#[test]
fn due_slots_follow_the_clock_and_missed_policy() {
    let t = Timing::parse("*/20 * * * * *", "UTC").unwrap(); // every 20 seconds
    let s = |next_at: f64, missed: Missed| Schedule { next_at, missed, ..Schedule::default() };
    // Not due yet.
    assert_eq!(schedule::due(&s(120.0, Missed::Skip), &t, 100.0), (vec![], 120.0));
    // Due, and the two after it too.
    assert_eq!(schedule::due(&s(60.0, Missed::Skip), &t, 101.0), (vec![60.0, 80.0, 100.0], 120.0));
    // A slot more than the grace (60 s) late was missed: skip fires the later ones only.
    assert_eq!(schedule::due(&s(60.0, Missed::Skip), &t, 125.0), (vec![80.0, 100.0, 120.0], 140.0));
    // Missed for an hour: skip fires none of the old slots, once fires the first.
    let later = 3600.0 * 10.0 + 5.0;
    let (skip, next) = schedule::due(&s(60.0, Missed::Skip), &t, later);
    assert_eq!((skip, next), (vec![35960.0, 35980.0, 36000.0], 36020.0), "only the slots within the grace");
    let (once, _) = schedule::due(&s(60.0, Missed::Once), &t, later);
    assert_eq!(once, vec![60.0, 35960.0, 35980.0, 36000.0], "and once the first missed one");
    // Bad patterns and zones say why.
    assert!(Timing::parse("61 * * * *", "UTC").unwrap_err().contains("does not parse"));
    assert!(Timing::parse("* * * * *", "Mars/Olympus").unwrap_err().contains("time zone"));
    // 02:30 in Berlin on the day DST starts (2026-03-29) does not exist: it fires once, after the gap.
    let berlin = Timing::parse("30 2 * * *", "Europe/Berlin").unwrap();
    let before = 1774738800.0; // 2026-03-28T23:00:00Z
    let next = berlin.next_after(before).unwrap();
    assert_eq!(next, 1774746000.0, "01:00Z is 03:00 CEST, the first instant after the gap");
    // On the day it ends (2026-10-25) 02:30 happens twice: it fires once.
    let oct = 1792879200.0; // 2026-10-24T22:00:00Z
    let first = berlin.next_after(oct).unwrap();
    let second = berlin.next_after(first).unwrap();
    assert!(second - first > 23.0 * 3600.0, "{first} {second}");
}

#[test]
fn memory_model() {
    let s = MemoryStore::new();
    suite(&s);
}

fn server(var: &str) -> Option<String> {
    let url = std::env::var(var).ok().filter(|u| !u.is_empty());
    if url.is_none() {
        eprintln!("{var} is not set: this server's job model suite did not run");
    }
    url
}

/// Runs statements on the store's database, outside asyncjobs.
fn exec(url: &str, statements: &[String]) {
    let (_, sqlx_url) = parse_url(url).unwrap();
    sqlx::any::install_default_drivers();
    block_on(async {
        use sqlx::Executor;
        let pool = sqlx::AnyPool::connect(&sqlx_url).await.unwrap();
        for s in statements {
            pool.execute(s.as_str()).await.unwrap_or_else(|e| panic!("{s}: {e}"));
        }
        pool.close().await;
    });
}

/// A store made by asyncjobs 0.1 (schema version 1), with a pending and a
/// finished job, upgrades in place when this release opens it: both jobs
/// are kept, and the pending one runs.
fn upgrade_from_v1(url: &str, dialect: Dialect) {
    let drop = ["asyncjobs_deps", "asyncjobs_schedules", "asyncjobs_jobs", "asyncjobs_hosts", "asyncjobs_schema"]
        .map(|t| format!("DROP TABLE IF EXISTS {t}"));
    exec(url, &drop);
    let mut v1 = vec!["CREATE TABLE asyncjobs_schema (id INTEGER NOT NULL PRIMARY KEY, version INTEGER NOT NULL)".to_string()];
    v1.extend(dialect.schema());
    v1.push("INSERT INTO asyncjobs_schema (id, version) VALUES (1, 1)".into());
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    for (id, status, completed) in [(a, "pending", "NULL"), (b, "completed", "2")] {
        v1.push(format!(
            "INSERT INTO asyncjobs_jobs (id, operation, params_hash, status, queue, priority, submitted_at, run_after, \
             completed_at, timeout_ms, max_attempts, executor, params) VALUES ('{id}', 'old', '00', '{status}', 'v1', 0, \
             1, 1, {completed}, 1000, 1, NULL, NULL)"
        ));
    }
    exec(url, &v1);
    let s = SqlStore::open(url, Duration::from_secs(10), Duration::from_secs(2)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(view(&s, b).job.status, Status::Completed, "a finished job is kept");
    let c = claim(&s, "v1");
    assert_eq!(c.iter().map(|c| c.lease.id).collect::<Vec<_>>(), vec![a], "a pending job is kept, and runs");
    finish(&s, &c[0], Outcome::Completed(vec![]));
    // Opening it again finds version 2 and changes nothing.
    let again = SqlStore::open(url, Duration::from_secs(10), Duration::from_secs(2)).unwrap();
    assert_eq!(view(&again, a).job.status, Status::Completed);
    block_on(again.truncate()).unwrap();
}

fn sql_suite(url: &str, dialect: Dialect) {
    upgrade_from_v1(url, dialect);
    let s = SqlStore::open(url, Duration::from_secs(10), Duration::from_secs(2)).unwrap();
    block_on(s.truncate()).unwrap();
    suite(&s);
    // A second handle (another host) fires the same slots: one job each.
    let other = SqlStore::open(url, Duration::from_secs(10), Duration::from_secs(2)).unwrap();
    let sched = Schedule { name: "shared".into(), cron: "* * * * * *".into(), tz: "UTC".into(), operation: "x".into(),
        params: b"1".to_vec(), queue: "sh".into(), max_attempts: 1, next_at: now().floor() - 3.0, ..Schedule::default() };
    block_on(s.put_schedule(&sched, false)).unwrap();
    let timing = Timing::parse(&sched.cron, &sched.tz).unwrap();
    let mine = block_on(s.schedules()).unwrap().remove(0);
    let (slots, next) = schedule::due(&mine, &timing, now());
    let make = |at: f64| {
        let mut j = handler("x", "1", "sh");
        j.slot = Some(Slot { schedule: "shared".into(), at });
        j
    };
    let n1 = block_on(s.fire("shared", mine.next_at, next, slots.iter().map(|&t| make(t)).collect())).unwrap();
    let n2 = block_on(other.fire("shared", mine.next_at, next, slots.iter().map(|&t| make(t)).collect())).unwrap();
    assert_eq!((n1, n2), (slots.len(), 0));
    block_on(s.truncate()).unwrap();
}

#[test]
fn sqlite_model() {
    let dir = std::env::temp_dir().join(format!("asyncjobs-model-{}", Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite://{}/jobs.db", dir.display());
    sql_suite(&url, Dialect::Sqlite);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn postgres_model() {
    if let Some(url) = server("ASYNCJOBS_TEST_POSTGRES") {
        sql_suite(&url, Dialect::Postgres);
    }
}

#[test]
fn mysql_model() {
    if let Some(url) = server("ASYNCJOBS_TEST_MYSQL") {
        sql_suite(&url, Dialect::MySql);
    }
}
