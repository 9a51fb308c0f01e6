//! The worker's end of the frame pipes, called from `inst/worker.R` in the
//! worker process (which loads this same library).
//!
//! The pool hands the pipes over as fds 3 and 4. [`aj_w_open`] moves them
//! to close-on-exec descriptors out of the low range, so a job's
//! `file("/dev/fd/4")` finds nothing and no program a job starts inherits
//! them. The id and tag of the job being run stay here, in Rust; every frame
//! written while it runs carries them (see `protocol`).

use crate::protocol::{self, Header, Kind, HEADER_LEN};
use super::fast::{
    mkchar, Rf_ScalarInteger, Rf_asReal, Rf_lang5, Rf_type2char, ENVSXP, EXTPTRSXP, INTEGER, INTSXP, R_NilValue, SET_STRING_ELT, STRSXP, TYPEOF,
    Rf_allocVector, Rf_asInteger, Rf_eval, Rf_findVarInFrame, Rf_install, Rf_lang2, Rf_length, Rf_protect, Rf_unprotect,
    Rf_xlength, R_BaseEnv, R_EmptyEnv, R_GlobalEnv, R_PreserveObject, Rf_ScalarLogical, CAR, CDR, ENCLOS, SET_VECTOR_ELT,
    TAG, VECSXP, VECTOR_ELT,
};
use extendr_api::prelude::*;
use extendr_api::Result;
use extendr_api::SEXP;
use parking_lot::Mutex;
use std::os::fd::RawFd;
use std::os::raw::{c_char, c_int, c_void};
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

/// Fills `buf` from the pipe; the pool closing it midway is an error.
fn read_part(fd: RawFd, buf: &mut [u8]) -> Result<()> {
    match protocol::read_exact(fd, buf) {
        Ok(true) => Ok(()),
        Ok(false) => Err(Error::Other("asyncjobs worker: the pool closed the pipe mid-frame".into())),
        Err(e) => Err(fail("reading a frame", e)),
    }
}

/// The job being run: its executor's and params' bytes in one buffer that
/// is reused from job to job (up to [`KEEP_BYTES`]), unserialized from here
/// by [`w_unserialize`]: large params never pass through an R raw vector.
struct JobBytes {
    buf: Vec<u8>,
    used: usize,
    fn_len: usize,
    /// The params are JSON text, not R's serialization.
    json: bool,
    /// The rest of the job frame's text: id, operation, attempt, queue, parent.
    info: [String; 5],
}

static JOB_BYTES: Mutex<JobBytes> = Mutex::new(JobBytes {
    buf: Vec::new(),
    used: 0,
    fn_len: 0,
    json: false,
    info: [String::new(), String::new(), String::new(), String::new(), String::new()],
});

/// A buffer larger than this is given back after its job.
const KEEP_BYTES: usize = 16 << 20;

/// The next frame from the pool, or NULL when the pool closed the pipe.
/// A job frame is `c(2L, handler, json)` (whether it runs a registered
/// handler, and whether its params are JSON), its parts read into the job
/// buffer, after noting the processes already there; any other is
/// list(kind, text, blob).
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
    read_part(fd, &mut text)?;
    let text = String::from_utf8(text).map_err(|_| Error::Other("asyncjobs worker: frame text is not UTF-8".into()))?;
    let kind = h.kind as i32;
    if h.kind != Kind::Job {
        let mut blob = raw_vector(h.blob_len);
        read_part(fd, blob.as_raw_slice_mut().unwrap_or(&mut []))?;
        return Ok(list!(kind = kind, text = text, blob = blob).into());
    }
    // A job's text: id, length of the executor's bytes (0: a handler job),
    // operation, attempt, queue, parent and the params' format.
    let f: Vec<&str> = text.split(protocol::FIELD_SEP).collect();
    let fn_len = f.get(1).and_then(|n| n.parse::<usize>().ok()).filter(|n| *n <= h.blob_len && f.len() == 7);
    let fn_len = fn_len.ok_or_else(|| Error::Other("asyncjobs worker: malformed job frame".into()))?;
    let json = f[6] == "json";
    {
        let mut jb = JOB_BYTES.lock();
        jb.json = json;
        jb.info = [f[0], f[2], f[3], f[4], f[5]].map(str::to_owned);
        if jb.buf.len() > KEEP_BYTES && h.blob_len <= KEEP_BYTES {
            jb.buf = Vec::new();
        }
        if jb.buf.len() < h.blob_len {
            jb.buf.resize(h.blob_len, 0);
        }
        read_part(fd, &mut jb.buf[..h.blob_len])?;
        jb.used = h.blob_len;
        jb.fn_len = fn_len;
    }
    {
        let mut w = WIRE.lock();
        w.job = h.job;
        w.tag = h.tag;
    }
    crate::pool::reaper::job_begin(); // [tree] the processes already here (setup's) stay
    Ok(vec![kind, (fn_len == 0) as i32, json as i32].into())
}

/// The running job as `current_job()` shows it: list(job_id, operation,
/// attempt, queue, parent_id), or NULL between jobs.
#[extendr]
fn aj_w_job() -> Robj {
    if WIRE.lock().tag == 0 {
        return ().into();
    }
    let jb = JOB_BYTES.lock();
    let [id, operation, attempt, queue, parent] = &jb.info;
    let parent: Robj = if parent.is_empty() { ().into() } else { parent.as_str().into() };
    list!(
        job_id = id.as_str(),
        operation = operation.as_str(),
        attempt = attempt.parse::<i32>().unwrap_or(1),
        queue = queue.as_str(),
        parent_id = parent
    )
    .into()
}

/// A running job submits a job of its own: the `Submit` frame (see the
/// pool's `child_submit` for its fields), then the pool's answer, as its
/// fields.
#[extendr]
fn aj_w_submit(text: &str, blob: Robj) -> Result<Vec<String>> {
    if !send(Kind::Submit, text.as_bytes(), blob.as_raw_slice().unwrap_or(&[])).map_err(|e| fail("writing a frame", e))? {
        return Err(Error::Other("create_job() inside a job: there is no job running".into()));
    }
    let fd = WIRE.lock().input;
    let mut head = [0u8; HEADER_LEN];
    read_part(fd, &mut head)?;
    let h = Header::decode(&head, 1 << 20).map_err(|e| Error::Other(format!("asyncjobs worker: {e}")))?;
    let mut body = vec![0u8; h.text_len + h.blob_len];
    read_part(fd, &mut body)?;
    if h.kind != Kind::Submitted {
        return Err(Error::Other(format!("asyncjobs worker: a {:?} frame came instead of the submit's answer", h.kind)));
    }
    let text = String::from_utf8_lossy(&body[..h.text_len]).into_owned();
    Ok(text.split(protocol::FIELD_SEP).map(str::to_owned).collect())
}

/// `.Call(w_unserialize, 1L)`: the job's executor; `2L`: its params. A
/// plain native routine: R's errors in unserializing (a package that is
/// not installed, say) jump out of it, to the job's tryCatch.
pub(super) unsafe extern "C" fn w_unserialize(which: SEXP) -> SEXP {
    let (ptr, len) = {
        let jb = JOB_BYTES.lock();
        if jb.json && Rf_asInteger(which) == 2 {
            // JSON params are read by jsonlite, in R.
            let text = String::from_utf8_lossy(&jb.buf[jb.fn_len..jb.used]).into_owned();
            drop(jb);
            return super::fast::string(&text);
        }
        if Rf_asInteger(which) == 1 {
            (jb.buf.as_ptr(), jb.fn_len)
        } else {
            (jb.buf.as_ptr().add(jb.fn_len), jb.used - jb.fn_len)
        }
    };
    // The lock is released: nothing writes the buffer until the next frame.
    super::fast::unserialize(std::slice::from_raw_parts(ptr, len))
}

/// The first kind of reference object a job's result holds that cannot
/// reach another process (an external pointer, a weak reference), as R's
/// type code in `flag`. Environments are written by value and are fine.
unsafe extern "C" fn note_pointer(x: SEXP, flag: SEXP) -> SEXP {
    let t = TYPEOF(x);
    if t != ENVSXP && *INTEGER(flag) == 0 {
        *INTEGER(flag) = t;
    }
    R_NilValue
}

/// `.Call(w_result, list(value, warnings), max_result_bytes)`, inside the
/// job's handlers: serializes the outcome into Rust memory, ends the job's
/// processes and sends the result frame; NULL then. Otherwise
/// c(code, message), for R to send as the job's failure. An R error in
/// serializing goes on to the job's handlers.
pub(super) unsafe extern "C" fn w_result(outcome: SEXP, limit: SEXP) -> SEXP {
    let flag = Rf_protect(Rf_allocVector(INTSXP, 1));
    *INTEGER(flag) = 0;
    let bytes = super::fast::serialize_hooked(outcome, "result", std::ptr::null_mut(), Some(note_pointer), flag);
    let pointer = *INTEGER(flag);
    Rf_unprotect(1);
    let limit = Rf_asReal(limit);
    let (code, message) = if pointer != 0 {
        let what = match pointer {
            EXTPTRSXP => "an external pointer".to_owned(),
            t => format!("a {}", std::ffi::CStr::from_ptr(Rf_type2char(t as u32)).to_string_lossy()),
        };
        ("RESULT_NOT_SERIALIZABLE", format!("The job's result contains {what} (a connection, or an object of compiled code), which cannot be sent to another R process"))
    } else if bytes.len() as f64 > limit {
        ("RESULT_TOO_LARGE", format!("The job's result is {} bytes; the limit (max_result_bytes) is {limit:.0} bytes", bytes.len()))
    } else {
        crate::pool::reaper::job_end(); // [tree] those the job started go, before its result
        match send(Kind::Result, b"", &bytes) {
            Ok(_) => return R_NilValue,
            Err(e) => ("WRITE_FAILED", e.to_string()),
        }
    };
    drop(bytes);
    let out = Rf_protect(Rf_allocVector(STRSXP, 2));
    SET_STRING_ELT(out, 0, mkchar(code));
    SET_STRING_ELT(out, 1, mkchar(&message));
    Rf_unprotect(1);
    out
}

/// `.Call(w_result_json, value, warnings, max_result_bytes)`: a handler
/// job's result as JSON, `{"value": <value>, "warnings": [...]}` with
/// `value` JSON text already; as [`w_result`], NULL once it is sent, else
/// c(code, message).
pub(super) unsafe extern "C" fn w_result_json(value: SEXP, warnings: SEXP, limit: SEXP) -> SEXP {
    let mut out = b"{\"value\":".to_vec();
    out.extend_from_slice(super::fast::as_str(value).unwrap_or("null").as_bytes());
    out.extend_from_slice(b",\"warnings\":[");
    for (i, w) in super::fast::strings_of(warnings).iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let mut one = super::fast::to_json(super::fast::string(w)).unwrap_or_else(|| b"null".to_vec());
        out.append(&mut one);
    }
    out.extend_from_slice(b"]}");
    let limit = Rf_asReal(limit);
    let (code, message) = if out.len() as f64 > limit {
        ("RESULT_TOO_LARGE", format!("The job's result is {} bytes; the limit (max_result_bytes) is {limit:.0} bytes", out.len()))
    } else {
        crate::pool::reaper::job_end(); // [tree] those the job started go, before its result
        match send(Kind::Result, b"json", &out) {
            Ok(_) => return R_NilValue,
            Err(e) => ("WRITE_FAILED", e.to_string()),
        }
    };
    let v = Rf_protect(Rf_allocVector(STRSXP, 2));
    SET_STRING_ELT(v, 0, mkchar(code));
    SET_STRING_ELT(v, 1, mkchar(&message));
    Rf_unprotect(1);
    v
}

/// Random seeds for the worker's jobs, drawn from the kernel 1024 at a time.
struct Seeds {
    buf: [i32; 1024],
    next: usize,
}

static SEEDS: Mutex<Seeds> = Mutex::new(Seeds { buf: [0; 1024], next: 1024 });

fn fresh_seed() -> i32 {
    let mut s = SEEDS.lock();
    if s.next == s.buf.len() {
        let bytes = std::mem::size_of_val(&s.buf);
        let mut got = 0;
        while got < bytes {
            let p = unsafe { (s.buf.as_mut_ptr() as *mut u8).add(got) };
            let n = unsafe { libc::getrandom(p as *mut c_void, bytes - got, 0) };
            if n > 0 {
                got += n as usize;
            } else if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
                break; // no getrandom(2): the seeds left from before will do
            }
        }
        s.next = 0;
    }
    s.next += 1;
    match s.buf[s.next - 1] {
        i32::MIN => 0, // NA_integer_ is no seed
        x => x,
    }
}

/// `.Call(w_seed, code)`, between jobs: 32 random bits for the next job's
/// seed. When `.Random.seed[1]` is `code` (the generator's kinds are still
/// setup's), it runs `set.seed(<them>)` and gives TRUE; otherwise it gives
/// the seed, for R to set with setup's kinds put back.
pub(super) unsafe extern "C" fn w_seed(code: SEXP) -> SEXP {
    let seed = Rf_protect(Rf_ScalarInteger(fresh_seed()));
    let current = Rf_findVarInFrame(R_GlobalEnv, Rf_install(c".Random.seed".as_ptr()));
    let code = Rf_asInteger(code);
    if TYPEOF(current) != INTSXP || Rf_xlength(current) < 1 || code == i32::MIN || *INTEGER(current) != code {
        Rf_unprotect(1);
        return seed;
    }
    // .Internal(set.seed(seed, NULL, NULL, NULL)): what set.seed(seed) runs.
    let nil = R_NilValue;
    let inner = Rf_protect(Rf_lang5(Rf_install(c"set.seed".as_ptr()), seed, nil, nil, nil));
    let call = Rf_protect(Rf_lang2(Rf_install(c".Internal".as_ptr()), inner));
    Rf_eval(call, R_BaseEnv);
    Rf_unprotect(3);
    Rf_ScalarLogical(1)
}

/// Writes one frame with one `writev`; Ok(false) when it was not written.
/// Progress, result and failure frames carry the current job's id and tag.
/// A result or failure ends the job: any such frame after it (the job called
/// [`aj_w_write`] itself) is dropped, so the worker's own final frame never
/// lands on the job the pool has sent next.
fn send(kind: Kind, text: &[u8], blob: &[u8]) -> std::io::Result<bool> {
    let mut w = WIRE.lock();
    let about_job = matches!(kind, Kind::Progress | Kind::Result | Kind::Failed | Kind::Submit);
    if about_job && w.tag == 0 {
        return Ok(false);
    }
    let (job, tag) = if about_job { (w.job, w.tag) } else { (Uuid::nil(), 0) };
    if !matches!(kind, Kind::Progress | Kind::Submit) {
        // What the job printed goes out before its outcome.
        unsafe { libc::fflush(std::ptr::null_mut()) };
    }
    let header = Header::new(kind, job, tag, text.len(), blob.len()).encode();
    protocol::write_all_parts(w.output, &[&header, text, blob])?;
    if matches!(kind, Kind::Result | Kind::Failed) {
        w.job = Uuid::nil();
        w.tag = 0;
    }
    Ok(true)
}

/// [`send`] from R; false when the frame was not written.
#[extendr]
fn aj_w_write(kind: i32, text: &str, blob: Robj) -> Result<bool> {
    let kind = Kind::from_u32(kind as u32).ok_or_else(|| Error::Other(format!("unknown frame kind {kind}")))?;
    send(kind, text.as_bytes(), blob.as_raw_slice().unwrap_or(&[])).map_err(|e| fail("writing a frame", e))
}

// ---- what a job may change in its session without asking ----
//
// After each job the worker checks, in about a microsecond, that the job left
// its session as setup did: the same option values (the same objects: options()
// replaces the value it sets), search path, environment variables (the same
// `environ` strings: setenv() makes a new one for a new value), working
// directory, locale and sinks. Only when something differs does R compare and
// put back what changed (R/isolation.R).

extern "C" {
    static environ: *const *const c_char;
}

/// What is compared outside R's heap.
#[derive(PartialEq)]
struct Outside {
    environ: Vec<usize>,
    cwd: Option<std::path::PathBuf>,
    locale: Vec<u8>,
    sinks: (c_int, c_int),
}

static OUTSIDE: Mutex<Option<Outside>> = Mutex::new(None);

/// `.Internal(sink.number(TRUE))` and `(FALSE)`: the number of output sinks
/// and the message sink's connection, without `sink.number()`'s argument
/// matching (which costs more than all the rest of the check).
static SINK_CALLS: std::sync::OnceLock<[usize; 2]> = std::sync::OnceLock::new();

unsafe fn sinks() -> (c_int, c_int) {
    let calls = SINK_CALLS.get_or_init(|| {
        let make = |output: bool| {
            let inner = Rf_protect(Rf_lang2(Rf_install(c"sink.number".as_ptr()), Rf_ScalarLogical(output as c_int)));
            let call = Rf_lang2(Rf_install(c".Internal".as_ptr()), inner);
            R_PreserveObject(call);
            Rf_unprotect(1);
            call as usize
        };
        [make(true), make(false)]
    });
    (Rf_asInteger(Rf_eval(calls[0] as SEXP, R_BaseEnv)), Rf_asInteger(Rf_eval(calls[1] as SEXP, R_BaseEnv)))
}

unsafe fn outside() -> Outside {
    let mut env = Vec::with_capacity(128);
    let mut p = environ;
    while !p.is_null() && !(*p).is_null() {
        env.push(*p as usize);
        p = p.add(1);
    }
    let locale = libc::setlocale(libc::LC_ALL, std::ptr::null());
    let locale = if locale.is_null() { Vec::new() } else { std::ffi::CStr::from_ptr(locale).to_bytes().to_vec() };
    Outside { environ: env, cwd: std::env::current_dir().ok(), locale, sinks: sinks() }
}

unsafe fn options_list() -> SEXP {
    Rf_findVarInFrame(R_BaseEnv, Rf_install(c".Options".as_ptr()))
}

/// Takes the baseline: keeps what lives outside R here and returns the R
/// objects, `list(options, search)`, for the worker to hold (and protect).
#[extendr]
fn aj_w_baseline() -> Robj {
    unsafe {
        *OUTSIDE.lock() = Some(outside());
        let opts = options_list();
        let n = Rf_length(opts) as isize;
        let o = Rf_protect(Rf_allocVector(VECSXP, 2 * n));
        let mut p = opts;
        for i in 0..n {
            SET_VECTOR_ELT(o, 2 * i, TAG(p));
            SET_VECTOR_ELT(o, 2 * i + 1, CAR(p));
            p = CDR(p);
        }
        let mut envs = Vec::new();
        let mut e = ENCLOS(R_GlobalEnv);
        while e != R_EmptyEnv {
            envs.push(e);
            e = ENCLOS(e);
        }
        let s = Rf_protect(Rf_allocVector(VECSXP, envs.len() as isize));
        for (i, e) in envs.iter().enumerate() {
            SET_VECTOR_ELT(s, i as isize, *e);
        }
        let out = Rf_protect(Rf_allocVector(VECSXP, 2));
        SET_VECTOR_ELT(out, 0, o);
        SET_VECTOR_ELT(out, 1, s);
        let r = Robj::from_sexp(out);
        Rf_unprotect(3);
        r
    }
}

/// Whether the session is as [`aj_w_baseline`] found it.
#[extendr]
fn aj_w_unchanged(base: Robj) -> bool {
    unsafe {
        let base = base.get();
        let (o, s) = (VECTOR_ELT(base, 0), VECTOR_ELT(base, 1));
        let mut p = options_list();
        let n = Rf_xlength(o) / 2;
        if Rf_length(p) as isize != n {
            return false;
        }
        for i in 0..n {
            if TAG(p) != VECTOR_ELT(o, 2 * i) || CAR(p) != VECTOR_ELT(o, 2 * i + 1) {
                return false;
            }
            p = CDR(p);
        }
        let mut e = ENCLOS(R_GlobalEnv);
        for i in 0..Rf_xlength(s) {
            if e != VECTOR_ELT(s, i) {
                return false;
            }
            e = ENCLOS(e);
        }
        if e != R_EmptyEnv {
            return false;
        }
        OUTSIDE.lock().as_ref() == Some(&outside())
    }
}

extendr_module! {
    mod wire;
    fn aj_w_open;
    fn aj_w_read;
    fn aj_w_job;
    fn aj_w_submit;
    fn aj_w_write;
    fn aj_w_baseline;
    fn aj_w_unchanged;
}
