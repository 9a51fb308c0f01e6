//! asyncjobs: the Rust core of an R job manager for plumber APIs.
//!
//! # Theory of operation
//!
//! An R API accepts a job, returns its id at once, and runs it in a pool of
//! separate R worker processes; callers poll the job's status.
//!
//! The core is built in floors; a module imports only from the floors below
//! its own (`tests/rust/layers.rs` fails on an import that runs upward or
//! closes a circle):
//!
//! 1. Ground: [`job`] is plain job data (the record, its status, error and
//!    outcome, what is submitted and claimed, the lease), [`schedule`] the
//!    recurring jobs' definitions and slots, and [`sys`] the process-wide
//!    helpers (clock, signal masks, log lines, the I/O runtime).
//! 2. [`metrics`] counts, in atomics, what the layers above see happen
//!    (submits, outcomes and durations by operation, worker restarts, failed
//!    store calls) and writes them in the Prometheus text format.
//! 3. [`store`] is where jobs live, behind one trait: [`store::memory`] in
//!    this process (the default) or [`store::sql`] in SQLite, PostgreSQL or
//!    MySQL/MariaDB, so jobs outlive the process and are shared by API
//!    replicas and worker hosts. A store is chosen once, when the pool
//!    starts. [`protocol`] is the frame format of the worker's pipes.
//! 4. [`pool`] runs the workers: a thread with a single-threaded tokio
//!    runtime, one task per slot, a claimer and a keeper.
//! 5. `r` (feature `r`) is the R boundary: the only modules that know R.
//!
//! How they work together:
//!
//! * Jobs a pool runs are held through leases: a token the store increments
//!   at each claim, cancel or rescue, and (in a database) an expiry on the
//!   database's clock. Every write about a running job names its token, so
//!   a host that lost a job writes nothing about it.
//! * Store calls are async. A database store runs them on the I/O runtime
//!   ([`sys::runtime`], threads that block async signals) with a bound on
//!   each, so neither R nor the pool ever waits on a database without a limit.
//! * The pool's thread blocks every asynchronous signal (R's handlers must
//!   only run on the R main thread) and lives as long as the pool, so the
//!   workers it spawns die with it (`PR_SET_PDEATHSIG`). One task per slot
//!   supervises one worker: dispatch, deadline, cancel, crash, recycle and
//!   shutdown are branches of a single `select!` loop ([`pool`]'s `slot`).
//!   A claimer task takes jobs from the store for idle slots; a keeper task
//!   renews leases, notices lost ones and rescues the jobs of hosts that
//!   stopped renewing theirs.
//! * [`pool::worker`] spawns and stops one R process: private pipes on fds 3
//!   and 4 for [`protocol`] frames, stdout/stderr captured as job output,
//!   stdin at /dev/null, a process group, a pidfd to see it exit.
//!   [`pool::reaper`] contains the processes a job starts (a cgroup, or the
//!   worker as subreaper), so that none outlives its job, its worker or the
//!   API.
//! * [`protocol`] frames bind every message about a job to that job's id and
//!   a random tag drawn per dispatch; the worker's end (`r::wire`) lives in
//!   the worker process, which loads this same library: it moves the pipes
//!   out of a job's reach and stamps the tag, so nothing a job or its
//!   children write can pass for another job's frame. After each outcome the
//!   worker resets its R session and sends a ready frame; only then does it
//!   get the next job.
//! * The R boundary converts arguments and records: `r::calls` holds the hot
//!   calls as plain native routines, `r::api` extendr's others, and
//!   `r::register` lists them all in one routine table for R. Waits from R
//!   are sliced so that R can check for interrupts.
//!
//! Nothing here calls into R from a runtime thread: results cross as
//! `serialize()` bytes and are unserialized by R on the main thread. The
//! HTTP side (status codes, plumber routes) is R code on top of the same
//! calls; it needs nothing from the core.

// Floors, from the ground up; a module imports only from floors below its
// own (tests/rust/layers.rs checks it).
pub mod job;
pub mod schedule;
pub mod sys;
pub mod metrics;
pub mod protocol;
pub mod store;
pub mod pool;
#[cfg(feature = "r")]
mod r;

/// In R's process (the API and its workers): large blocks in pages of their own.
#[cfg(feature = "r")]
#[global_allocator]
static ALLOCATOR: sys::PagedLarge = sys::PagedLarge;
