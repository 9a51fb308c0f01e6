//! Fixtures shared by the cargo suites that run a pool against the fake
//! worker (tests/rust/fake_worker.rs). Each suite uses part of them.
#![allow(dead_code)]

use asyncjobs::pool::{Config, Pool};
use asyncjobs::job::*;
use asyncjobs::sys::*;
use asyncjobs::pool::worker::Spec;
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;

pub const LONG: Duration = Duration::from_secs(60);

/// A pool of `size` fake workers; `init` is what their setup is sent.
pub fn config(size: usize, init: &[u8]) -> Config {
    Config {
        size,
        capacity: 100,
        spec: Spec {
            program: env!("CARGO_BIN_EXE_fake-worker").into(),
            args: vec![],
            cwd: std::env::temp_dir(),
            env: vec![],
            env_remove: vec![],
            nice: 0,
        },
        init: init.to_vec(),
        max_jobs_per_worker: u64::MAX,
        max_rss_bytes: u64::MAX,
        max_result_bytes: 1 << 20,
        echo_output: false,
        setup_timeout: Duration::from_secs(30),
        stop_grace: Duration::from_millis(500),
        max_setup_failures: 3,
        queues: vec!["default".into()],
        retention: [None; 3],
        rates: Vec::new(),
        verbose: false,
        max_poll: Duration::from_secs(1),
        operations: vec![],
        key: Some(b"test key".to_vec()),
    }
}

/// A job whose params are a fake-worker command.
pub fn new_job(operation: &str, cmd: &str, timeout_ms: u64) -> NewJob {
    NewJob {
        id: Uuid::new_v4(),
        operation: operation.into(),
        params_hash: Some(sha256(cmd.as_bytes())),
        executor: b"fn".to_vec(),
        params: Arc::new(cmd.as_bytes().to_vec()),
        timeout_ms,
        queue: "default".into(),
        priority: 0,
        max_attempts: 1,
        unique: false,
        ..NewJob::default()
    }
}

/// Submits a command, which must be accepted.
pub fn submit_op(pool: &Pool, operation: &str, cmd: &str, timeout_ms: u64) -> Uuid {
    let job = new_job(operation, cmd, timeout_ms);
    let id = job.id;
    assert_eq!(block_on(pool.submit(job)).unwrap(), Submit::Accepted);
    id
}

pub fn wait_until(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + LONG;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}
