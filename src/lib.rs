//! asyncjobs: the Rust core of an R job manager for plumber APIs.
//!
//! # Theory of operation
//!
//! An R API accepts a job, returns its id at once, and runs it in a pool of
//! separate R worker processes; callers poll the job's status.
//!
//! * [`registry`] holds one record per job behind the [`registry::Store`]
//!   trait. It is shared by two threads: the R main thread (submit, status,
//!   cancel, cleanup) and the pool thread (dispatch, progress, outcomes).
//!   Status changes are made by the pool thread as they happen, so R sees
//!   them without any event loop of its own.
//! * [`pool`] owns one OS thread running a single-threaded tokio runtime.
//!   That thread blocks every asynchronous signal (R's handlers must only
//!   run on the R main thread) and lives as long as the pool, so the workers
//!   it spawns die with it (`PR_SET_PDEATHSIG`). One task per slot supervises
//!   one worker: dispatch, deadline, cancel, crash, recycle and shutdown are
//!   branches of a single `select!` loop.
//! * [`worker`] spawns and stops one R process: private pipes on fds 3 and 4
//!   for [`protocol`] frames, stdout/stderr captured as job output, stdin at
//!   /dev/null, a process group for clean kills, a pidfd to see it exit.
//! * `r_api` (feature `r`) is the only module that knows R: it converts
//!   arguments and records and never holds the registry lock across R calls.
//!   Waits from R are sliced so that R can check for interrupts.
//!
//! Nothing here calls into R from a runtime thread: results cross as
//! `serialize()` bytes and are unserialized by R on the main thread. The
//! HTTP side (status codes, plumber routes) is R code on top of the same
//! calls; it needs nothing from the core.

pub mod pool;
pub mod protocol;
pub mod registry;
#[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
pub mod sql;
pub mod worker;

#[cfg(feature = "r")]
mod r_api;
