//! Containment against real processes (the fake worker from fake_worker.rs):
//! a process that left the worker's group and parent dies with its job, for
//! every mechanism forced through ASYNCJOBS_CONTAINMENT; with `pgroup` it
//! survives, as documented. One test, so that setting the variable (and
//! this process becoming a subreaper) races nothing.

use asyncjobs::pool::{Config, Pool};
use asyncjobs::pool::reaper::{self, Mechanism};
use asyncjobs::job::*;
use asyncjobs::store::memory::MemoryStore;
use asyncjobs::sys::*;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

mod common;
use common::*;

fn config() -> Config {
    Config { stop_grace: Duration::from_millis(300), ..common::config(1, b"") }
}

fn submit(pool: &Pool, cmd: &str, timeout_ms: u64) -> Uuid {
    submit_op(pool, "test", cmd, timeout_ms)
}

fn get(pool: &Pool, id: Uuid) -> Job {
    block_on(pool.store().get(&id, true)).unwrap().expect("job exists").job
}

fn dead(pid: i32) -> bool {
    reaper::stat(pid).is_none_or(|s| s.dead())
}

/// Runs `cmd` (an escape-* command), returns the escaped pid and the job.
fn escaped(pool: &Pool, cmd: &str, timeout_ms: u64) -> (i32, Job) {
    let id = submit(pool, cmd, timeout_ms);
    wait_until("the escaped pid", || get(pool, id).progress.and_then(|p| p.step).is_some());
    let pid: i32 = get(pool, id).progress.unwrap().step.unwrap().parse().unwrap();
    assert!(block_on(pool.store().wait_finished(&id, LONG)).unwrap());
    (pid, get(pool, id))
}

#[test]
fn escaped_processes_die_with_their_job_under_each_mechanism() {
    let top = {
        let pool = Pool::start(Arc::new(MemoryStore::new()), config()).unwrap();
        wait_until("a worker", || pool.workers()[0].containment.is_some());
        pool.workers()[0].containment.unwrap()
    };
    assert!(top >= Mechanism::Subreaper, "this Linux has no subreaper?");
    for mech in [Mechanism::Cgroup, Mechanism::Subreaper, Mechanism::Pgroup] {
        if mech > top {
            eprintln!("{} is not available here", mech.name());
            continue;
        }
        std::env::set_var(reaper::LEVEL_ENV, mech.name());
        let mut pool = Pool::start(Arc::new(MemoryStore::new()), config()).unwrap();
        wait_until("a worker", || pool.workers()[0].containment.is_some());
        assert_eq!(pool.workers()[0].containment, Some(mech));

        // A timeout: the worker is killed while the job runs.
        let (pid, job) = escaped(&pool, "escape-hang", 500);
        assert_eq!(job.error.unwrap().code, "TIMEOUT");
        let (pid2, job) = escaped(&pool, "escape-exit", 60_000);
        assert_eq!(job.error.unwrap().code, "WORKER_CRASHED");
        if mech == Mechanism::Pgroup {
            // The documented weakness of the last fallback.
            std::thread::sleep(Duration::from_millis(300));
            assert!(!dead(pid) && !dead(pid2), "pgroup killed a process outside the group?");
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::kill(pid2, libc::SIGKILL);
            }
        }
        wait_until(&format!("{}: the escaped sleep to die on timeout", mech.name()), || dead(pid));
        wait_until(&format!("{}: the escaped sleep to die on crash", mech.name()), || dead(pid2));
        pool.begin_stop();
        assert!(pool.wait_stopped(LONG));
    }
    std::env::remove_var(reaper::LEVEL_ENV);
    descendants_follow_orphans_back_to_a_subreaper();
}

/// Last (it makes this test process a subreaper, and kills its descendants).
fn descendants_follow_orphans_back_to_a_subreaper() {
    // This test process as subreaper: a double-forked sleep comes back to it.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong) };
    let me = std::process::id() as i32;
    let out = std::process::Command::new("sh")
        .args(["-c", "sh -c 'setsid sleep 1002 </dev/null >/dev/null 2>&1 & echo $!' &"])
        .output()
        .unwrap();
    let pid: i32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    wait_until("the orphan to come back", || reaper::stat(pid).is_some_and(|s| s.ppid == me));
    assert!(reaper::descendants(me).contains(&pid));
    let keep = reaper::snapshot(me);
    assert!(reaper::kill_descendants(me, &keep, true, LONG), "kept processes count as cleared");
    assert!(!dead(pid));
    assert!(reaper::kill_descendants(me, &Default::default(), true, LONG));
    assert!(dead(pid));
    // Reaped, not a zombie left behind.
    assert!(reaper::stat(pid).is_none());
}
