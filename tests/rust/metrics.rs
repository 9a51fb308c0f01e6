//! The pool's counts against real processes (the fake worker), and the
//! text they are served in. The counters are process-wide: the tests run
//! one at a time and read worker restarts as differences.

use asyncjobs::metrics::{self, Gauges};
use asyncjobs::pool::Pool;
use asyncjobs::job::*;
use asyncjobs::store::memory::MemoryStore;
use asyncjobs::sys::*;
use std::sync::Arc;
use uuid::Uuid;

mod common;
use common::*;

static SERIAL: parking_lot::Mutex<()> = parking_lot::const_mutex(());

fn restarts(reason: &str) -> f64 {
    value("asyncjobs_worker_restarts_total", &[("reason", reason)])
}

fn finished(pool: &Pool, id: Uuid) -> Job {
    assert!(block_on(pool.store().wait_finished(&id, LONG)).unwrap(), "job {id} did not finish");
    block_on(pool.store().get(&id, false)).unwrap().unwrap().job
}

/// The value of one sample now; 0 when it does not exist (yet).
fn value(name: &str, labels: &[(&str, &str)]) -> f64 {
    metrics::snapshot(&Gauges::default())
        .iter()
        .flat_map(|f| f.samples.clone())
        .find(|s| {
            s.name == name
                && s.labels.len() == labels.len()
                && labels.iter().all(|(k, v)| s.labels.iter().any(|(k2, v2)| k2 == k && v2 == v))
        })
        .map_or(0.0, |s| s.value)
}

fn stop(mut pool: Pool) {
    pool.begin_stop();
    assert!(pool.wait_stopped(LONG));
}

#[test]
fn outcomes_durations_and_restarts_are_counted_by_operation_code_and_reason() {
    let _serial = SERIAL.lock();
    let (killed, crashed, recycled) = (restarts("killed"), restarts("crashed"), restarts("recycled"));
    let pool = Pool::start(Arc::new(MemoryStore::new()), config(1, b"")).unwrap();
    let ok = [submit_op(&pool, "m-ok", "ok:1", 10_000), submit_op(&pool, "m-ok", "ok:2", 10_000)];
    let fail = submit_op(&pool, "m-fail", "fail:boom", 10_000);
    let crash = submit_op(&pool, "m-crash", "exit:7", 10_000);
    let slow = submit_op(&pool, "m-timeout", "sleep:60000", 300);
    assert_eq!(value("asyncjobs_jobs_submitted_total", &[("operation", "m-ok")]), 2.0);
    assert_eq!(value("asyncjobs_jobs_submitted_total", &[("operation", "m-timeout")]), 1.0);
    for id in ok {
        assert_eq!(finished(&pool, id).status, Status::Completed);
    }
    for (id, code) in [(fail, "EXECUTION_ERROR"), (crash, "WORKER_CRASHED"), (slow, "TIMEOUT")] {
        assert_eq!(finished(&pool, id).error.unwrap().code, code);
    }
    wait_until("the counts", || value("asyncjobs_jobs_failed_total", &[("operation", "m-timeout"), ("code", "TIMEOUT")]) == 1.0);
    assert_eq!(value("asyncjobs_jobs_completed_total", &[("operation", "m-ok")]), 2.0);
    assert_eq!(value("asyncjobs_jobs_completed_total", &[("operation", "m-fail")]), 0.0);
    assert_eq!(value("asyncjobs_jobs_failed_total", &[("operation", "m-fail"), ("code", "EXECUTION_ERROR")]), 1.0);
    assert_eq!(value("asyncjobs_jobs_failed_total", &[("operation", "m-crash"), ("code", "WORKER_CRASHED")]), 1.0);
    // Every job that ran has a duration; the timed-out one ran for its whole timeout.
    assert_eq!(value("asyncjobs_job_duration_seconds_count", &[("operation", "m-ok")]), 2.0);
    assert_eq!(value("asyncjobs_job_duration_seconds_bucket", &[("operation", "m-ok"), ("le", "+Inf")]), 2.0);
    assert!(value("asyncjobs_job_duration_seconds_sum", &[("operation", "m-timeout")]) >= 0.3);
    assert_eq!(value("asyncjobs_job_duration_seconds_bucket", &[("operation", "m-timeout"), ("le", "0.25")]), 0.0);
    // The crash and the timeout each cost a worker.
    wait_until("the restarts", || restarts("killed") - killed == 1.0);
    assert_eq!(restarts("crashed") - crashed, 1.0);
    assert_eq!(restarts("recycled") - recycled, 0.0);
    stop(pool);
}

#[test]
fn recycled_workers_and_refused_submits_are_counted() {
    let _serial = SERIAL.lock();
    let recycled = restarts("recycled");
    let mut cfg = config(1, b"");
    cfg.max_jobs_per_worker = 1;
    cfg.capacity = 1;
    let pool = Pool::start(Arc::new(MemoryStore::new()), cfg).unwrap();
    let first = submit_op(&pool, "m-recycle", "ok:1", 10_000);
    finished(&pool, first);
    wait_until("a recycle", || restarts("recycled") - recycled == 1.0);
    let slow = submit_op(&pool, "m-recycle", "sleep:60000", 120_000);
    assert_eq!(block_on(pool.submit(new_job("m-recycle", "ok:2", 10_000))).unwrap(), Submit::Full { limit: 1 });
    assert_eq!(value("asyncjobs_jobs_rejected_total", &[("code", "CAPACITY_EXCEEDED")]), 1.0);
    assert_eq!(value("asyncjobs_jobs_submitted_total", &[("operation", "m-recycle")]), 2.0);
    assert!(matches!(block_on(pool.cancel(&slow, None)).unwrap(), Cancel::WasRunning(_) | Cancel::WasPending));
    finished(&pool, slow);
    stop(pool);
    // A cancelled job's worker is killed, but the job is not a failure of the pool's.
    assert_eq!(value("asyncjobs_jobs_failed_total", &[("operation", "m-recycle"), ("code", "CANCELLED")]), 0.0);
}

#[test]
fn failed_setups_are_counted_as_restarts() {
    let _serial = SERIAL.lock();
    let failed = restarts("setup_failed");
    let pool = Pool::start(Arc::new(MemoryStore::new()), config(1, b"fail-setup")).unwrap();
    wait_until("the pool to give up", || pool.unavailable().is_some());
    assert_eq!(restarts("setup_failed") - failed, 3.0);
    stop(pool);
}

#[test]
fn gauges_and_text_exposition() {
    let g = Gauges {
        pool_size: 4,
        workers: vec![("idle".into(), 3), ("busy".into(), 1)],
        pending: Some(7),
        running: Some(1),
        store_up: true,
    };
    let text = metrics::render(&metrics::snapshot(&g));
    for line in [
        "# TYPE asyncjobs_pool_size gauge",
        "asyncjobs_pool_size 4",
        "asyncjobs_workers{state=\"busy\"} 1",
        "asyncjobs_jobs_pending 7",
        "asyncjobs_jobs_running 1",
        "asyncjobs_store_up 1",
        "# TYPE asyncjobs_jobs_cancelled_total counter",
        "# TYPE asyncjobs_job_duration_seconds histogram",
    ] {
        assert!(text.lines().any(|l| l == line), "no line {line:?} in:\n{text}");
    }
    // A store that cannot say has no pending or running gauge rather than a wrong one.
    let text = metrics::render(&metrics::snapshot(&Gauges::default()));
    assert!(!text.contains("asyncjobs_jobs_pending"));
    assert!(text.lines().any(|l| l == "asyncjobs_store_up 0"));
    // Every sample line is `name{labels} value`, every name announced by a TYPE line first.
    let mut typed = Vec::new();
    for l in text.lines() {
        if let Some(rest) = l.strip_prefix("# TYPE ") {
            typed.push(rest.split(' ').next().unwrap().to_string());
        } else if !l.starts_with('#') {
            let (series, v) = l.rsplit_once(' ').unwrap();
            assert!(v.parse::<f64>().is_ok(), "{l}");
            let name = series.split('{').next().unwrap();
            assert!(typed.iter().any(|t| name.starts_with(t.as_str())), "{name} before its TYPE");
        }
    }
}
