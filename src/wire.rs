//! The worker's end of the frame pipes, called from `inst/worker.R` in the
//! worker process (which loads this same library).
//!
//! The pool hands the pipes over as fds 3 and 4. [`aj_w_open`] moves them
//! to close-on-exec descriptors out of the low range, so a job's
//! `file("/dev/fd/4")` finds nothing and no program a job starts inherits
//! them. The id and tag of the job being run stay here, in Rust; every frame
//! written while it runs carries them (see `protocol`).

use crate::protocol::{self, Header, Kind, HEADER_LEN};
use extendr_api::prelude::*;
use extendr_api::Result;
use parking_lot::Mutex;
use std::os::fd::RawFd;
use uuid::Uuid;

struct Wire {
    input: RawFd,
    output: RawFd,
    job: Uuid,
    tag: u64,
}

static WIRE: Mutex<Wire> = Mutex::new(Wire { input: -1, output: -1, job: Uuid::nil(), tag: 0 });

/// Lowest descriptor the pipes are moved to.
const HIGH_FD: RawFd = 100;

fn relocate(fd: RawFd) -> Result<RawFd> {
    let high = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, HIGH_FD) };
    if high < 0 {
        return Err(Error::Other(format!("asyncjobs worker: fd {fd}: {}", std::io::Error::last_os_error())));
    }
    unsafe { libc::close(fd) };
    Ok(high)
}

fn fail(what: &str, e: std::io::Error) -> Error {
    Error::Other(format!("asyncjobs worker: {what}: {e}"))
}

/// Takes over the pipes on fds 3 and 4.
#[extendr]
fn aj_w_open() -> Result<()> {
    let mut w = WIRE.lock();
    if w.input < 0 {
        w.input = relocate(3)?;
        w.output = relocate(4)?;
    }
    Ok(())
}

fn raw_vector(len: usize) -> Robj {
    Robj::alloc_vector(extendr_api::rtype_to_sxp(Rtype::Raw), len)
}

fn read_into(fd: RawFd, r: &mut Robj) -> Result<()> {
    let buf = r.as_raw_slice_mut().unwrap_or(&mut []);
    match protocol::read_exact(fd, buf) {
        Ok(true) => Ok(()),
        Ok(false) => Err(Error::Other("asyncjobs worker: the pool closed the pipe mid-frame".into())),
        Err(e) => Err(fail("reading a frame", e)),
    }
}

/// The next frame from the pool, or NULL when the pool closed the pipe.
/// A job frame is list(kind, id, fn, params), each part read straight into
/// its own raw vector; any other is list(kind, text, blob).
#[extendr]
fn aj_w_read() -> Result<Robj> {
    let fd = WIRE.lock().input;
    let mut head = [0u8; HEADER_LEN];
    match protocol::read_exact(fd, &mut head) {
        Ok(true) => {}
        Ok(false) => return Ok(().into()),
        Err(e) => return Err(fail("reading a frame", e)),
    }
    let h = Header::decode(&head, usize::MAX).map_err(|e| Error::Other(format!("asyncjobs worker: {e}")))?;
    let mut text = vec![0u8; h.text_len];
    if !protocol::read_exact(fd, &mut text).map_err(|e| fail("reading a frame", e))? {
        return Err(Error::Other("asyncjobs worker: the pool closed the pipe mid-frame".into()));
    }
    let text = String::from_utf8(text).map_err(|_| Error::Other("asyncjobs worker: frame text is not UTF-8".into()))?;
    let kind = h.kind as i32;
    if h.kind != Kind::Job {
        let mut blob = raw_vector(h.blob_len);
        read_into(fd, &mut blob)?;
        return Ok(list!(kind = kind, text = text, blob = blob).into());
    }
    // A job's text is "<id><SEP><length of the executor's bytes>".
    let (id, fn_len) = text.split_once(protocol::FIELD_SEP).unwrap_or((&text, ""));
    let fn_len = fn_len.parse::<usize>().ok().filter(|n| *n <= h.blob_len);
    let fn_len = fn_len.ok_or_else(|| Error::Other("asyncjobs worker: malformed job frame".into()))?;
    let mut executor = raw_vector(fn_len);
    read_into(fd, &mut executor)?;
    let mut params = raw_vector(h.blob_len - fn_len);
    read_into(fd, &mut params)?;
    {
        let mut w = WIRE.lock();
        w.job = h.job;
        w.tag = h.tag;
    }
    let values: Vec<Robj> = vec![kind.into(), id.into(), executor, params];
    Ok(List::from_names_and_values(["kind", "id", "fn", "params"], values)?.into())
}

/// Writes one frame with one `writev`; false when it was not written.
/// Progress, result and failure frames carry the current job's id and tag.
/// A result or failure ends the job: any such frame after it (the job called
/// this routine itself) is dropped, so the worker's own final frame never
/// lands on the job the pool has sent next.
#[extendr]
fn aj_w_write(kind: i32, text: &str, blob: Robj) -> Result<bool> {
    let kind = Kind::from_u32(kind as u32).ok_or_else(|| Error::Other(format!("unknown frame kind {kind}")))?;
    let blob = blob.as_raw_slice().unwrap_or(&[]);
    let mut w = WIRE.lock();
    let about_job = matches!(kind, Kind::Progress | Kind::Result | Kind::Failed);
    if about_job && w.tag == 0 {
        return Ok(false);
    }
    let (job, tag) = if about_job { (w.job, w.tag) } else { (Uuid::nil(), 0) };
    if !matches!(kind, Kind::Progress) {
        // What the job printed goes out before its outcome.
        unsafe { libc::fflush(std::ptr::null_mut()) };
    }
    let header = Header::new(kind, job, tag, text.len(), blob.len()).encode();
    protocol::write_all_parts(w.output, &[&header, text.as_bytes(), blob]).map_err(|e| fail("writing a frame", e))?;
    if matches!(kind, Kind::Result | Kind::Failed) {
        w.job = Uuid::nil();
        w.tag = 0;
    }
    Ok(true)
}

/// A fingerprint of the process environment (every `NAME=value` in order),
/// so the worker can tell in microseconds whether a job changed it.
#[extendr]
fn aj_w_env_hash() -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for (k, v) in std::env::vars_os() {
        h.update(k.as_encoded_bytes());
        h.update([0]);
        h.update(v.as_encoded_bytes());
        h.update([0]);
    }
    crate::registry::hex(&h.finalize()[..16])
}

extendr_module! {
    mod wire;
    fn aj_w_open;
    fn aj_w_read;
    fn aj_w_write;
    fn aj_w_env_hash;
}
