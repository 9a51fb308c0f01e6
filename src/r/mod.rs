//! The R boundary (feature `r`): the only modules that know R. They convert
//! arguments and records; the work happens in the layers below.
//!
//! From the ground up: `fast` (the R C API that extendr does not wrap),
//! `session` (the store and pool this R process holds), `calls` (the hot
//! native routines), `wire` (the worker's end of the frame pipes, run in the
//! worker process), `api` (extendr's calls) and `register` (the routine
//! table R loads). May import every layer below.

mod api;
mod calls;
mod fast;
mod register;
mod session;
mod wire;
