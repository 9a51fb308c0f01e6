use asyncjobs::registry::*;
use std::time::Duration;
use uuid::Uuid;

fn job(op: &str, params: &[u8]) -> NewJob {
    NewJob {
        id: Uuid::new_v4(),
        operation: op.into(),
        params_hash: sha256(params),
        payload: params.to_vec(),
        fn_len: 0,
        timeout_ms: 1_800_000,
        submitted_at: 1000.0,
    }
}

#[test]
fn capacity_counts_pending_and_running_only() {
    let mut s = MemoryStore::new();
    let a = job("op", b"a");
    let a_id = a.id;
    assert_eq!(s.submit(a, 2), Submit::Accepted);
    assert_eq!(s.submit(job("op", b"b"), 2), Submit::Accepted);
    assert_eq!(s.submit(job("op", b"c"), 2), Submit::Full { limit: 2 });
    let d = s.take_next(0, 42, 1001.0).unwrap();
    assert_eq!(d.id, a_id);
    assert_eq!(s.counts(), Counts { pending: 1, running: 1, total: 2 });
    assert_eq!(s.submit(job("op", b"c"), 2), Submit::Full { limit: 2 });
    assert!(s.finish(&a_id, Outcome::Completed(vec![1]), 1002.0));
    assert_eq!(s.submit(job("op", b"c"), 2), Submit::Accepted);
}

#[test]
fn transitions_are_recorded_and_first_outcome_wins() {
    let mut s = MemoryStore::new();
    let j = job("op", b"p");
    let id = j.id;
    s.submit(j, 10);
    assert_eq!(s.get(&id).unwrap().status, Status::Pending);
    let d = s.take_next(3, 77, 1001.0).unwrap();
    assert_eq!(d.payload, b"p");
    let running = s.get(&id).unwrap();
    assert_eq!((running.status, running.worker_pid, running.slot), (Status::Running, Some(77), Some(3)));
    assert_eq!(running.started_at, Some(1001.0));
    assert!(s.finish(&id, Outcome::Failed(JobError::new("TIMEOUT", "late")), 1003.0));
    assert!(!s.finish(&id, Outcome::Completed(vec![]), 1004.0));
    let done = s.get(&id).unwrap();
    assert_eq!(done.status, Status::Failed);
    assert_eq!(done.error.unwrap().code, "TIMEOUT");
    assert_eq!(done.completed_at, Some(1003.0));
}

#[test]
fn duplicates_match_operation_and_params_while_active() {
    let mut s = MemoryStore::new();
    let j = job("clustering", b"genes");
    let id = j.id;
    s.submit(j, 10);
    assert_eq!(s.find_active("clustering", &sha256(b"genes")), Some(id));
    assert_eq!(s.find_active("clustering", &sha256(b"other")), None);
    assert_eq!(s.find_active("ontology_update", &sha256(b"genes")), None);
    s.take_next(0, 1, 1.0);
    assert_eq!(s.find_active("clustering", &sha256(b"genes")), Some(id));
    s.finish(&id, Outcome::Completed(vec![]), 2.0);
    assert_eq!(s.find_active("clustering", &sha256(b"genes")), None);
}

#[test]
fn cancel_pending_leaves_the_queue() {
    let mut s = MemoryStore::new();
    let (a, b) = (job("op", b"a"), job("op", b"b"));
    let (a_id, b_id) = (a.id, b.id);
    s.submit(a, 10);
    s.submit(b, 10);
    assert_eq!(s.queue_position(&b_id), Some(2));
    assert_eq!(s.cancel(&a_id, 5.0), Cancel::WasPending);
    assert_eq!(s.queue_position(&b_id), Some(1));
    assert_eq!(s.get(&a_id).unwrap().status, Status::Cancelled);
    assert_eq!(s.get(&a_id).unwrap().error.unwrap().code, "CANCELLED");
    assert_eq!(s.take_next(0, 1, 6.0).unwrap().id, b_id);
    assert_eq!(s.cancel(&b_id, 7.0), Cancel::WasRunning { slot: Some(0) });
    assert_eq!(s.cancel(&b_id, 8.0), Cancel::Finished(Status::Cancelled));
    assert_eq!(s.cancel(&Uuid::new_v4(), 8.0), Cancel::NotFound);
    assert_eq!(s.counts().pending + s.counts().running, 0);
}

#[test]
fn cleanup_removes_only_old_finished_jobs() {
    let mut s = MemoryStore::new();
    let (old, fresh, active) = (job("op", b"1"), job("op", b"2"), job("op", b"3"));
    let (old_id, fresh_id, active_id) = (old.id, fresh.id, active.id);
    for j in [old, fresh, active] {
        s.submit(j, 10);
    }
    s.take_next(0, 1, 1001.0);
    s.finish(&old_id, Outcome::Completed(vec![]), 1002.0);
    s.take_next(0, 1, 2001.0);
    s.finish(&fresh_id, Outcome::Completed(vec![]), 2002.0);
    s.append_output(&old_id, b"gone");
    let removed = s.remove_finished_before(1500.0);
    assert_eq!(removed, vec![old_id]);
    assert!(s.get(&old_id).is_none());
    assert!(s.output(&old_id).is_none());
    assert!(s.get(&fresh_id).is_some());
    assert!(s.remove_finished_before(1e12).iter().all(|id| *id != active_id));
    assert!(s.get(&active_id).is_some());
}

#[test]
fn output_keeps_the_last_64_kib() {
    let mut s = MemoryStore::new();
    let j = job("op", b"x");
    let id = j.id;
    s.submit(j, 10);
    s.append_output(&id, &vec![b'a'; OUTPUT_LIMIT]);
    s.append_output(&id, b"tail");
    let out = s.output(&id).unwrap();
    assert_eq!(out.len(), OUTPUT_LIMIT);
    assert!(out.ends_with(b"atail"));
    s.append_output(&id, &vec![b'b'; OUTPUT_LIMIT * 2]);
    assert_eq!(s.output(&id).unwrap(), vec![b'b'; OUTPUT_LIMIT]);
}

#[test]
fn estimates_use_history_then_progress_then_the_old_rule() {
    let mut s = MemoryStore::new();
    let j = job("op", b"x");
    let id = j.id;
    s.submit(j, 10);
    assert_eq!(estimate_seconds(&s.get(&id).unwrap(), None, 1000.0), 30.0);
    s.take_next(0, 1, 1000.0);
    let running = s.get(&id).unwrap();
    assert_eq!(estimate_seconds(&running, None, 1100.0), 1700.0);
    assert_eq!(estimate_seconds(&running, Some(160.0), 1100.0), 60.0);
    s.set_progress(&id, Progress::parse("1\u{1f}4\u{1f}loading"));
    let with_progress = s.get(&id).unwrap();
    assert_eq!(with_progress.progress.as_ref().unwrap().step.as_deref(), Some("loading"));
    assert_eq!(estimate_seconds(&with_progress, Some(160.0), 1100.0), 300.0);

    for (i, d) in [10.0, 20.0, 30.0].iter().enumerate() {
        let j = job("timed", &[i as u8]);
        let jid = j.id;
        s.submit(j, 10);
        let next = s.take_next(0, 1, 0.0).unwrap();
        assert!(next.id == id || next.id == jid);
        s.finish(&jid, Outcome::Completed(vec![]), *d);
    }
    assert_eq!(s.typical_duration("timed"), Some(20.0));
    assert_eq!(s.typical_duration("never"), None);
}

#[test]
fn progress_text_parses_missing_fields() {
    assert_eq!(Progress::parse("NA\u{1f}NA"), Progress::default());
    let p = Progress::parse("3\u{1f}10\u{1f}a\u{1f}b");
    assert_eq!((p.current, p.total, p.step.as_deref()), (Some(3.0), Some(10.0), Some("a\u{1f}b")));
    assert_eq!(p.fraction(), Some(0.3));
}

#[test]
fn waiters_wake_when_a_job_finishes() {
    let reg = std::sync::Arc::new(Registry::new(Box::new(MemoryStore::new())));
    let j = job("op", b"w");
    let id = j.id;
    reg.with(|s| s.submit(j, 10));
    assert!(!reg.wait_finished(&id, Duration::from_millis(20)));
    let r2 = reg.clone();
    let t = std::thread::spawn(move || r2.wait_finished(&id, Duration::from_secs(60)));
    std::thread::sleep(Duration::from_millis(20));
    assert!(reg.finish(&id, Outcome::Cancelled));
    assert!(t.join().unwrap());
    assert!(reg.wait_finished(&Uuid::new_v4(), Duration::from_millis(1)));
}
