//! asyncjobs: the Rust core of an R job manager for plumber APIs.
//!
//! # Theory of operation
//!
//! An R API accepts a job, returns its id at once, and runs it in a pool of
//! separate R worker processes; callers poll the job's status.
//!
//! * [`registry`] defines the [`registry::Store`] trait, the one seam
//!   between the core and where jobs live, and the in-memory store (the
//!   default). [`sql`] implements the same trait over SQLite, PostgreSQL and
//!   MySQL/MariaDB, so jobs outlive the process and are shared by API
//!   replicas and worker hosts. A store is chosen once, when the pool starts.
//! * Jobs a pool runs are held through leases: a token the store increments
//!   at each claim, cancel or rescue, and (in a database) an expiry on the
//!   database's clock. Every write about a running job names its token, so
//!   a host that lost a job writes nothing about it.
//! * Store calls are async. A database store runs them on a small I/O
//!   runtime (threads that block async signals) with a bound on each, so
//!   neither R nor the pool ever waits on a database without a limit.
//! * [`pool`] owns one OS thread running a single-threaded tokio runtime.
//!   That thread blocks every asynchronous signal (R's handlers must only
//!   run on the R main thread) and lives as long as the pool, so the workers
//!   it spawns die with it (`PR_SET_PDEATHSIG`). One task per slot supervises
//!   one worker: dispatch, deadline, cancel, crash, recycle and shutdown are
//!   branches of a single `select!` loop. A claimer task takes jobs from the
//!   store for idle slots; a keeper task renews leases, notices lost ones
//!   and rescues the jobs of hosts that stopped renewing theirs.
//! * [`worker`] spawns and stops one R process: private pipes on fds 3 and 4
//!   for [`protocol`] frames, stdout/stderr captured as job output, stdin at
//!   /dev/null, a process group, a pidfd to see it exit. [`reaper`] contains
//!   the processes a job starts (a cgroup, or the worker as subreaper), so
//!   that none outlives its job, its worker or the API.
//! * [`protocol`] frames bind every message about a job to that job's id and
//!   a random tag drawn per dispatch; the worker's end (`wire`, feature `r`)
//!   lives in the worker process, which loads this same library: it moves
//!   the pipes out of a job's reach and stamps the tag, so nothing a job or
//!   its children write can pass for another job's frame. After each outcome
//!   the worker resets its R session and sends a ready frame; only then does
//!   it get the next job.
//! * [`metrics`] counts, in atomics, what the pool and the R boundary see
//!   happen (submits, outcomes and durations by operation, worker restarts,
//!   failed store calls) and writes them in the Prometheus text format.
//! * `r_api` and `wire` (feature `r`) are the only modules that know R: they
//!   convert arguments and records. Waits from R are sliced so that R can check for
//!   interrupts.
//!
//! Nothing here calls into R from a runtime thread: results cross as
//! `serialize()` bytes and are unserialized by R on the main thread. The
//! HTTP side (status codes, plumber routes) is R code on top of the same
//! calls; it needs nothing from the core.

pub mod metrics;
pub mod pool;
pub mod protocol;
pub mod reaper;
pub mod registry;
#[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
pub mod sql;
pub mod worker;

#[cfg(feature = "r")]
mod r_api;
#[cfg(feature = "r")]
mod rfast;
#[cfg(feature = "r")]
mod wire;
