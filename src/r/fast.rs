//! The R C API that extendr does not wrap, for the hot calls: serialization
//! straight into Rust memory, R lists built in place, and `jobs_env` as an R
//! user-defined database (R_ext/Callbacks.h, `R_ObjectTable`), so that a job
//! gets no R symbol unless a caller names it.
//!
//! Every function here runs on the R main thread only.

#![allow(non_snake_case, non_upper_case_globals, improper_ctypes, clippy::missing_safety_doc)]

pub use extendr_api::SEXP;
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::ffi::CStr;
use std::os::raw::{c_char, c_int, c_void};
use uuid::Uuid;

pub type Rboolean = c_int;
pub type DlFunc = unsafe extern "C" fn() -> *mut c_void;

pub const LGLSXP: c_int = 10;
pub const INTSXP: c_int = 13;
pub const REALSXP: c_int = 14;
pub const STRSXP: c_int = 16;
pub const VECSXP: c_int = 19;
pub const ENVSXP: c_int = 4;
pub const EXTPTRSXP: c_int = 22;
const CLOSXP: c_int = 3;
const CE_UTF8: c_int = 1;
const CE_LATIN1: c_int = 2;
const CE_BYTES: c_int = 3;

#[repr(C)]
struct OutStream {
    data: *mut c_void,
    type_: c_int,
    version: c_int,
    out_char: Option<unsafe extern "C" fn(*mut OutStream, c_int)>,
    out_bytes: Option<unsafe extern "C" fn(*mut OutStream, *mut c_void, c_int)>,
    hook: Option<unsafe extern "C" fn(SEXP, SEXP) -> SEXP>,
    hook_data: SEXP,
}

#[repr(C)]
struct InStream {
    data: *mut c_void,
    type_: c_int,
    in_char: Option<unsafe extern "C" fn(*mut InStream) -> c_int>,
    in_bytes: Option<unsafe extern "C" fn(*mut InStream, *mut c_void, c_int)>,
    hook: Option<unsafe extern "C" fn(SEXP, SEXP) -> SEXP>,
    hook_data: SEXP,
    native_encoding: [c_char; 64],
    nat2nat: *mut c_void,
    nat2utf8: *mut c_void,
}

/// R's `struct _R_ObjectTable` (R_ext/Callbacks.h).
#[repr(C)]
struct ObjectTable {
    type_: c_int,
    cached_names: *mut *mut c_char,
    active: Rboolean,
    exists: unsafe extern "C" fn(*const c_char, *mut Rboolean, *mut ObjectTable) -> Rboolean,
    get: unsafe extern "C" fn(*const c_char, *mut Rboolean, *mut ObjectTable) -> SEXP,
    remove: unsafe extern "C" fn(*const c_char, *mut ObjectTable) -> c_int,
    assign: unsafe extern "C" fn(*const c_char, SEXP, *mut ObjectTable) -> SEXP,
    objects: unsafe extern "C" fn(*mut ObjectTable) -> SEXP,
    can_cache: unsafe extern "C" fn(*const c_char, *mut ObjectTable) -> Rboolean,
    on_detach: unsafe extern "C" fn(*mut ObjectTable),
    on_attach: unsafe extern "C" fn(*mut ObjectTable),
    private: *mut c_void,
}

extern "C" {
    pub static R_NilValue: SEXP;
    pub static R_UnboundValue: SEXP;
    static R_NamesSymbol: SEXP;
    static R_ClassSymbol: SEXP;
    pub static R_NaReal: f64;
    pub fn Rf_protect(s: SEXP) -> SEXP;
    pub fn Rf_unprotect(n: c_int);
    pub fn Rf_allocVector(t: c_int, n: isize) -> SEXP;
    pub fn SET_VECTOR_ELT(x: SEXP, i: isize, v: SEXP) -> SEXP;
    pub fn VECTOR_ELT(x: SEXP, i: isize) -> SEXP;
    pub fn SET_STRING_ELT(x: SEXP, i: isize, v: SEXP);
    fn STRING_ELT(x: SEXP, i: isize) -> SEXP;
    fn Rf_mkCharLenCE(s: *const c_char, len: c_int, enc: c_int) -> SEXP;
    pub fn Rf_ScalarReal(x: f64) -> SEXP;
    pub fn Rf_ScalarInteger(x: c_int) -> SEXP;
    pub fn Rf_ScalarLogical(x: c_int) -> SEXP;
    fn Rf_ScalarString(x: SEXP) -> SEXP;
    fn Rf_setAttrib(x: SEXP, name: SEXP, v: SEXP) -> SEXP;
    fn Rf_getAttrib(x: SEXP, name: SEXP) -> SEXP;
    pub fn Rf_xlength(x: SEXP) -> isize;
    pub fn TYPEOF(x: SEXP) -> c_int;
    pub fn REAL(x: SEXP) -> *mut f64;
    pub fn INTEGER(x: SEXP) -> *mut c_int;
    fn LOGICAL(x: SEXP) -> *mut c_int;
    fn R_CHAR(x: SEXP) -> *const c_char;
    fn Rf_getCharCE(x: SEXP) -> c_int;
    fn ATTRIB(x: SEXP) -> SEXP;
    fn R_InitOutPStream(
        s: *mut OutStream,
        data: *mut c_void,
        type_: c_int,
        version: c_int,
        out_char: Option<unsafe extern "C" fn(*mut OutStream, c_int)>,
        out_bytes: Option<unsafe extern "C" fn(*mut OutStream, *mut c_void, c_int)>,
        hook: Option<unsafe extern "C" fn(SEXP, SEXP) -> SEXP>,
        hook_data: SEXP,
    );
    fn R_Serialize(x: SEXP, s: *mut OutStream);
    fn R_InitInPStream(
        s: *mut InStream,
        data: *mut c_void,
        type_: c_int,
        in_char: Option<unsafe extern "C" fn(*mut InStream) -> c_int>,
        in_bytes: Option<unsafe extern "C" fn(*mut InStream, *mut c_void, c_int)>,
        hook: Option<unsafe extern "C" fn(SEXP, SEXP) -> SEXP>,
        hook_data: SEXP,
    );
    fn R_Unserialize(s: *mut InStream) -> SEXP;
    fn R_UnwindProtect(
        body: unsafe extern "C" fn(*mut c_void) -> SEXP,
        data: *mut c_void,
        cleanup: unsafe extern "C" fn(*mut c_void, Rboolean),
        cdata: *mut c_void,
        cont: SEXP,
    ) -> SEXP;
    fn R_MakeUnwindCont() -> SEXP;
    pub fn CAR(x: SEXP) -> SEXP;
    pub fn CDR(x: SEXP) -> SEXP;
    pub fn TAG(x: SEXP) -> SEXP;
    pub fn ENCLOS(x: SEXP) -> SEXP;
    pub fn Rf_length(x: SEXP) -> c_int;
    pub fn Rf_lang2(f: SEXP, a: SEXP) -> SEXP;
    pub fn Rf_lang5(f: SEXP, a: SEXP, b: SEXP, c: SEXP, d: SEXP) -> SEXP;
    pub fn Rf_asInteger(x: SEXP) -> c_int;
    pub fn Rf_asReal(x: SEXP) -> f64;
    fn Rf_GetOption1(tag: SEXP) -> SEXP;
    pub fn Rf_type2char(t: u32) -> *const c_char;
    fn Rf_lang3(f: SEXP, a: SEXP, b: SEXP) -> SEXP;
    pub fn Rf_eval(x: SEXP, env: SEXP) -> SEXP;
    pub static R_GlobalEnv: SEXP;
    pub static R_BaseEnv: SEXP;
    pub static R_EmptyEnv: SEXP;
    fn R_MakeExternalPtr(p: *mut c_void, tag: SEXP, prot: SEXP) -> SEXP;
    fn R_SetExternalPtrProtected(s: SEXP, p: SEXP);
    fn SET_HASHTAB(x: SEXP, v: SEXP);
    pub fn Rf_install(s: *const c_char) -> SEXP;
    pub fn Rf_findVarInFrame(env: SEXP, sym: SEXP) -> SEXP;
    pub fn R_PreserveObject(x: SEXP);
    fn R_ReleaseObject(x: SEXP);
    fn FORMALS(x: SEXP) -> SEXP;
    fn LEVELS(x: SEXP) -> c_int;
    fn ALTREP(x: SEXP) -> c_int;
    fn DATAPTR(x: SEXP) -> *mut c_void;
    fn BODY(x: SEXP) -> SEXP;
    fn CLOENV(x: SEXP) -> SEXP;
    pub fn Rf_error(fmt: *const c_char, ...) -> !;
}

extern "C" {
    static R_NaString: SEXP;
}

// ---------------------------------------------------------------- basics

pub unsafe fn nil() -> SEXP {
    R_NilValue
}

pub unsafe fn mkchar(s: &str) -> SEXP {
    Rf_mkCharLenCE(s.as_ptr() as *const c_char, s.len() as c_int, CE_UTF8)
}

pub unsafe fn string(s: &str) -> SEXP {
    Rf_ScalarString(mkchar(s))
}

pub unsafe fn real(x: f64) -> SEXP {
    Rf_ScalarReal(x)
}

/// The string of a length-one character vector, if it is one.
pub unsafe fn as_str<'a>(x: SEXP) -> Option<&'a str> {
    if TYPEOF(x) != STRSXP || Rf_xlength(x) < 1 {
        return None;
    }
    let c = STRING_ELT(x, 0);
    if c == R_NaString {
        return None;
    }
    CStr::from_ptr(R_CHAR(c)).to_str().ok()
}

/// The value of `name` in `env`, forcing it if it is a promise (which may
/// raise an R error: call it with nothing to drop on the Rust stack).
pub unsafe fn value_of(env: SEXP, name: &CStr) -> SEXP {
    Rf_eval(Rf_install(name.as_ptr()), env)
}

pub unsafe fn as_f64(x: SEXP) -> Option<f64> {
    if Rf_xlength(x) < 1 {
        return None;
    }
    match TYPEOF(x) {
        REALSXP => Some(*REAL(x)),
        INTSXP | LGLSXP => {
            let v = if TYPEOF(x) == INTSXP { *INTEGER(x) } else { *LOGICAL(x) };
            (v != i32::MIN).then_some(v as f64)
        }
        _ => None,
    }
}

pub unsafe fn as_i32(x: SEXP) -> Option<i32> {
    as_f64(x).filter(|v| v.is_finite()).map(|v| v as i32)
}

/// A length-one character vector whose string is valid, non-empty UTF-8
/// that needs no conversion (not marked latin1 or bytes).
pub unsafe fn plain_utf8(x: SEXP) -> bool {
    as_str(x).is_some_and(|s| !s.is_empty() && Rf_xlength(x) == 1 && !matches!(Rf_getCharCE(STRING_ELT(x, 0)), CE_LATIN1 | CE_BYTES))
}

/// A length-one double or integer vector without attributes (what
/// `is.numeric()` holds true for, short of classes).
pub unsafe fn plain_number(x: SEXP) -> bool {
    matches!(TYPEOF(x), REALSXP | INTSXP) && Rf_xlength(x) == 1 && ATTRIB(x) == R_NilValue
}

/// `getOption(name)`, NULL when unset.
pub unsafe fn option(name: &CStr) -> SEXP {
    Rf_GetOption1(Rf_install(name.as_ptr()))
}

/// `identical(x, FALSE)`.
pub unsafe fn is_false(x: SEXP) -> bool {
    TYPEOF(x) == LGLSXP && Rf_xlength(x) == 1 && ATTRIB(x) == R_NilValue && *LOGICAL(x) == 0
}

pub unsafe fn as_bool(x: SEXP) -> bool {
    TYPEOF(x) == LGLSXP && Rf_xlength(x) >= 1 && *LOGICAL(x) == 1
}

/// A character vector kept for the life of the process.
unsafe fn preserved_strings(items: &[&str]) -> SEXP {
    let v = Rf_allocVector(STRSXP, items.len() as isize);
    R_PreserveObject(v);
    for (i, s) in items.iter().enumerate() {
        SET_STRING_ELT(v, i as isize, mkchar(s));
    }
    v
}

/// Names vectors and classes, made once.
pub struct Shapes {
    pub posixct: SEXP,
    pub names: HashMap<&'static str, SEXP>,
}

thread_local! {
    static SHAPES: RefCell<Option<Shapes>> = const { RefCell::new(None) };
    static STATE_ENV: RefCell<Option<SEXP>> = const { RefCell::new(None) };
}

/// A list with the given names (a preserved names vector per `key`), its
/// elements set by `fill(list)`.
pub unsafe fn named_list(key: &'static str, names: &[&str], fill: impl FnOnce(SEXP)) -> SEXP {
    let nm = SHAPES.with(|s| {
        let mut s = s.borrow_mut();
        let s = s.get_or_insert_with(|| Shapes { posixct: preserved_strings(&["POSIXct", "POSIXt"]), names: HashMap::new() });
        *s.names.entry(key).or_insert_with(|| preserved_strings(names))
    });
    let out = Rf_protect(Rf_allocVector(VECSXP, names.len() as isize));
    fill(out);
    Rf_setAttrib(out, R_NamesSymbol, nm);
    Rf_unprotect(1);
    out
}

/// `.POSIXct(x)`, or NULL for a missing time.
pub unsafe fn posix(x: Option<f64>) -> SEXP {
    match x {
        Some(t) if !t.is_nan() => {
            let cls = SHAPES.with(|s| {
                let mut s = s.borrow_mut();
                s.get_or_insert_with(|| Shapes { posixct: preserved_strings(&["POSIXct", "POSIXt"]), names: HashMap::new() })
                    .posixct
            });
            let v = Rf_protect(Rf_ScalarReal(t));
            Rf_setAttrib(v, R_ClassSymbol, cls);
            Rf_unprotect(1);
            v
        }
        _ => R_NilValue,
    }
}

/// Sets a class attribute (one name).
pub unsafe fn set_class(x: SEXP, class: &str) -> SEXP {
    Rf_protect(x);
    Rf_setAttrib(x, R_ClassSymbol, string(class));
    Rf_unprotect(1);
    x
}

/// The element of a named list called `name` (exact match), or NULL.
pub unsafe fn list_get(x: SEXP, name: &str) -> SEXP {
    if TYPEOF(x) != VECSXP {
        return R_NilValue;
    }
    let names = Rf_getAttrib(x, R_NamesSymbol);
    if TYPEOF(names) != STRSXP {
        return R_NilValue;
    }
    for i in 0..Rf_xlength(names) {
        if CStr::from_ptr(R_CHAR(STRING_ELT(names, i))).to_bytes() == name.as_bytes() {
            return VECTOR_ELT(x, i);
        }
    }
    R_NilValue
}

/// Names of a list, as Rust strings.
pub unsafe fn list_names(x: SEXP) -> Vec<String> {
    let names = Rf_getAttrib(x, R_NamesSymbol);
    if TYPEOF(names) != STRSXP {
        return Vec::new();
    }
    (0..Rf_xlength(names))
        .map(|i| CStr::from_ptr(R_CHAR(STRING_ELT(names, i))).to_string_lossy().into_owned())
        .collect()
}

/// A list from names and values (values already allocated and protected by the caller).
pub unsafe fn list_from(names: &[String], values: &[SEXP]) -> SEXP {
    let out = Rf_protect(Rf_allocVector(VECSXP, values.len() as isize));
    let nm = Rf_protect(Rf_allocVector(STRSXP, names.len() as isize));
    for (i, (n, v)) in names.iter().zip(values).enumerate() {
        SET_VECTOR_ELT(out, i as isize, *v);
        SET_STRING_ELT(nm, i as isize, mkchar(n));
    }
    Rf_setAttrib(out, R_NamesSymbol, nm);
    Rf_unprotect(2);
    out
}

/// The strings of a character vector (NA and non-UTF-8 ones as they read).
pub unsafe fn strings_of(x: SEXP) -> Vec<String> {
    if TYPEOF(x) != STRSXP {
        return Vec::new();
    }
    (0..Rf_xlength(x)).map(|i| CStr::from_ptr(R_CHAR(STRING_ELT(x, i))).to_string_lossy().into_owned()).collect()
}

/// The package's `.state` environment, for the progress messages.
pub unsafe fn set_state_env(env: SEXP) {
    R_PreserveObject(env);
    STATE_ENV.with(|s| *s.borrow_mut() = Some(env));
}

/// `get_progress_message(operation)`: the message set for it, or the default.
pub unsafe fn progress_message(operation: &str) -> SEXP {
    let messages = STATE_ENV.with(|s| *s.borrow()).map(|env| Rf_findVarInFrame(env, Rf_install(c"messages".as_ptr())));
    if let Some(m) = messages {
        let v = list_get(m, operation);
        if TYPEOF(v) == STRSXP {
            return v;
        }
    }
    string("Processing request...")
}

/// A JSON result as R reads it: `.state$from_json(text)`, which gives
/// `list(value, warnings)` as R's serialized results do. The text came from
/// the worker's JSON writer, so it parses.
pub unsafe fn json_result(text: &[u8]) -> SEXP {
    let f = STATE_ENV.with(|s| *s.borrow()).map(|env| Rf_findVarInFrame(env, Rf_install(c"from_json".as_ptr())));
    let Some(f) = f.filter(|f| TYPEOF(*f) == CLOSXP) else { return R_NilValue };
    let arg = Rf_protect(string(&String::from_utf8_lossy(text)));
    let call = Rf_protect(Rf_lang2(f, arg));
    let v = Rf_eval(call, R_GlobalEnv);
    Rf_unprotect(2);
    v
}

// ---------------------------------------------------------------- serialization

unsafe extern "C" fn out_char(s: *mut OutStream, c: c_int) {
    (*((*s).data as *mut Vec<u8>)).push(c as u8);
}

unsafe extern "C" fn out_bytes(s: *mut OutStream, buf: *mut c_void, n: c_int) {
    (*((*s).data as *mut Vec<u8>)).extend_from_slice(std::slice::from_raw_parts(buf as *const u8, n as usize));
}

/// R's persistence hook, with its data: shown each object R meets that is
/// not plain data (an environment other than global, base or a namespace, an
/// external pointer, a weak reference).
pub type Hook = unsafe extern "C" fn(SEXP, SEXP) -> SEXP;

struct SerializeCall {
    x: SEXP,
    out: Vec<u8>,
    hook: Option<Hook>,
    hook_data: SEXP,
}

/// Sets the logical `flag`: R met an object it writes by value that may change.
unsafe extern "C" fn note_by_value(_x: SEXP, flag: SEXP) -> SEXP {
    *LOGICAL(flag) = 1;
    R_NilValue
}

unsafe extern "C" fn serialize_body(d: *mut c_void) -> SEXP {
    let call = &mut *(d as *mut SerializeCall);
    let mut stream: OutStream = std::mem::zeroed();
    // serialize(x, NULL, xdr = FALSE): native binary, version 3.
    R_InitOutPStream(&mut stream, &mut call.out as *mut Vec<u8> as *mut c_void, 2, 3, Some(out_char), Some(out_bytes), call.hook, call.hook_data);
    R_Serialize(call.x, &mut stream);
    R_NilValue
}

struct Guard {
    out: *mut Vec<u8>,
    /// Another buffer of the caller's to free before the error.
    also: *mut Vec<u8>,
    arg: &'static str,
    cont: SEXP,
}

/// R_UnwindProtect's cleanup: R raised an error while serializing `arg`.
/// Frees the Rust buffers the jump would skip, then raises instead the
/// package's classed error naming the argument (R's `serialize_error()` in
/// R/jobs.R, given what R was unwinding with). We are back on a shallow C
/// stack here, in the context of the native call, so a new error is sound:
/// it starts its own jump and the first one is dropped.
unsafe extern "C" fn on_jump(d: *mut c_void, jump: Rboolean) {
    if jump == 0 {
        return;
    }
    let g = &mut *(d as *mut Guard);
    drop(std::mem::take(&mut *g.out));
    if !g.also.is_null() {
        drop(std::mem::take(&mut *g.also));
    }
    let handler = STATE_ENV.with(|s| *s.borrow()).map(|env| Rf_findVarInFrame(env, Rf_install(c"serialize_error".as_ptr())));
    if let Some(f) = handler.filter(|f| TYPEOF(*f) == CLOSXP) {
        let arg = Rf_protect(string(g.arg));
        let call = Rf_protect(Rf_lang3(f, arg, CAR(g.cont)));
        Rf_eval(call, R_GlobalEnv);
        Rf_unprotect(2);
    }
    // Not reached when the handler raised its error; R goes on unwinding.
}

/// The bytes `serialize(x, NULL, xdr = FALSE)` gives, written straight into
/// a Vec. When R raises an error (C stack, memory), it does not return:
/// `also` (a buffer of the caller's, or null) is freed and the classed error
/// naming `arg` is raised.
pub unsafe fn serialize(x: SEXP, arg: &'static str, also: *mut Vec<u8>) -> Vec<u8> {
    serialize_hooked(x, arg, also, None, R_NilValue)
}

/// [`serialize`] with R's persistence hook.
pub unsafe fn serialize_hooked(x: SEXP, arg: &'static str, also: *mut Vec<u8>, hook: Option<Hook>, hook_data: SEXP) -> Vec<u8> {
    let mut call = SerializeCall { x, out: Vec::with_capacity(512), hook, hook_data };
    let cont = Rf_protect(R_MakeUnwindCont());
    let mut guard = Guard { out: &mut call.out, also, arg, cont };
    R_UnwindProtect(serialize_body, &mut call as *mut SerializeCall as *mut c_void, on_jump, &mut guard as *mut Guard as *mut c_void, cont);
    Rf_unprotect(1);
    call.out
}

/// [`serialize`] for `params`. A plain logical, integer or double vector
/// (no attributes, not ALTREP) or NULL is written here, byte for byte what
/// R writes (R's own header, then the type, length and data), without R's
/// per-call table of references: the common params of an API cost no R
/// allocation. Anything else goes to R.
pub unsafe fn serialize_params(x: SEXP) -> Vec<u8> {
    let t = TYPEOF(x);
    let plain = matches!(t, LGLSXP | INTSXP | REALSXP) && ATTRIB(x) == R_NilValue && ALTREP(x) == 0 && Rf_xlength(x) <= i32::MAX as isize;
    if !plain {
        return serialize(x, "params", std::ptr::null_mut());
    }
    let header = HEADER.with(|h| {
        h.borrow_mut()
            .get_or_insert_with(|| {
                // serialize(NULL) is the header, then NILVALUE_SXP (one int).
                let mut b = serialize(R_NilValue, "params", std::ptr::null_mut());
                b.truncate(b.len() - 4);
                b
            })
            .clone()
    });
    let n = Rf_xlength(x) as usize;
    let width = if t == REALSXP { 8 } else { 4 };
    let mut out = header;
    out.reserve(8 + n * width);
    out.extend_from_slice(&(t | (LEVELS(x) << 12)).to_ne_bytes());
    out.extend_from_slice(&(n as i32).to_ne_bytes());
    if n > 0 {
        out.extend_from_slice(std::slice::from_raw_parts(DATAPTR(x) as *const u8, n * width));
    }
    out
}

thread_local! {
    /// What R writes before the first item: format, versions, native encoding.
    static HEADER: RefCell<Option<Vec<u8>>> = const { RefCell::new(None) };
}

/// A closure whose serialization is kept: its parts when it was written.
struct Executor {
    closure: SEXP,
    parts: [SEXP; 3],
    bytes: Vec<u8>,
}

thread_local! {
    static EXECUTORS: RefCell<std::collections::VecDeque<Executor>> = const { RefCell::new(std::collections::VecDeque::new()) };
}

/// How many executors' bytes are kept (an API submits a few functions over and over).
const EXECUTORS_KEPT: usize = 16;

/// [`serialize`] for `executor_fn`, from a small cache when the same closure
/// comes again. Only a closure without attributes whose serialization met
/// nothing written by value that could change (its environment is global,
/// base or a namespace, written by name) is kept: its bytes then follow from
/// its formals, body and environment, which R replaces rather than edits
/// (the JIT swaps in a compiled body: the entry then no longer matches). A
/// kept closure is preserved, so its address is not reused.
pub unsafe fn serialize_executor(f: SEXP, also: *mut Vec<u8>) -> Vec<u8> {
    if TYPEOF(f) != CLOSXP || ATTRIB(f) != R_NilValue {
        return serialize(f, "executor_fn", also);
    }
    let parts = [FORMALS(f), BODY(f), CLOENV(f)];
    let hit = EXECUTORS.with(|c| c.borrow().iter().find(|e| e.closure == f && e.parts == parts).map(|e| e.bytes.clone()));
    if let Some(bytes) = hit {
        return bytes;
    }
    // A fresh vector: R's scalar FALSE is shared.
    let flag = Rf_protect(Rf_allocVector(LGLSXP, 1));
    *LOGICAL(flag) = 0;
    let bytes = serialize_hooked(f, "executor_fn", also, Some(note_by_value), flag);
    let by_value = *LOGICAL(flag) != 0;
    Rf_unprotect(1);
    if !by_value {
        EXECUTORS.with(|c| {
            let mut c = c.borrow_mut();
            if let Some(old) = c.iter().position(|e| e.closure == f).and_then(|i| c.remove(i)) {
                R_ReleaseObject(old.closure);
            }
            if c.len() == EXECUTORS_KEPT {
                if let Some(old) = c.pop_front() {
                    R_ReleaseObject(old.closure);
                }
            }
            R_PreserveObject(f);
            c.push_back(Executor { closure: f, parts, bytes: bytes.clone() });
        });
    }
    bytes
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

unsafe extern "C" fn in_char(s: *mut InStream) -> c_int {
    let r = &mut *((*s).data as *mut Reader);
    match r.buf.get(r.pos) {
        Some(&c) => {
            r.pos += 1;
            c as c_int
        }
        None => -1,
    }
}

unsafe extern "C" fn in_bytes(s: *mut InStream, buf: *mut c_void, n: c_int) {
    let r = &mut *((*s).data as *mut Reader);
    let n = n as usize;
    if r.pos + n > r.buf.len() {
        Rf_error(c"asyncjobs: a stored value is truncated".as_ptr());
    }
    std::ptr::copy_nonoverlapping(r.buf.as_ptr().add(r.pos), buf as *mut u8, n);
    r.pos += n;
}

/// `unserialize(bytes)`. Raises an R error on corrupt bytes.
pub unsafe fn unserialize(bytes: &[u8]) -> SEXP {
    let mut reader = Reader { buf: bytes, pos: 0 };
    let mut stream: InStream = std::mem::zeroed();
    R_InitInPStream(&mut stream, &mut reader as *mut Reader as *mut c_void, 0, Some(in_char), Some(in_bytes), None, R_NilValue);
    R_Unserialize(&mut stream)
}

// ---------------------------------------------------------------- jobs_env

/// What `jobs_env` holds: the ids of jobs `create_job()` bound (their
/// records are read from the store on access) and the records callers wrote,
/// which live in an R list kept alive by the table's external pointer.
pub struct JobsEnv {
    pub bound: HashSet<Uuid, crate::job::IdHash>,
    written: HashMap<String, isize>,
    free: Vec<isize>,
    slots: SEXP,
    table: SEXP,
    /// Builds the record `jobs_env[[id]]` shows for a bound job.
    record: Option<unsafe fn(&Uuid) -> SEXP>,
}

thread_local! {
    pub static JOBS_ENV: RefCell<JobsEnv> = RefCell::new(JobsEnv {
        bound: HashSet::default(),
        written: HashMap::new(),
        free: Vec::new(),
        slots: std::ptr::null_mut(),
        table: std::ptr::null_mut(),
        record: None,
    });
}

impl JobsEnv {
    pub fn written_len(&self) -> usize {
        self.written.len()
    }

    /// A record a caller wrote under this id.
    pub unsafe fn written(&self, id: &str) -> Option<SEXP> {
        self.written.get(id).map(|&i| VECTOR_ELT(self.slots, i))
    }

    unsafe fn write(&mut self, id: &str, value: SEXP) {
        let i = match self.written.get(id) {
            Some(&i) => i,
            None => {
                let i = match self.free.pop() {
                    Some(i) => i,
                    None => {
                        let cap = Rf_xlength(self.slots);
                        let new_cap = cap * 2;
                        let bigger = Rf_protect(Rf_allocVector(VECSXP, new_cap));
                        for j in 0..cap {
                            SET_VECTOR_ELT(bigger, j, VECTOR_ELT(self.slots, j));
                        }
                        R_SetExternalPtrProtected(self.table, bigger);
                        self.slots = bigger;
                        Rf_unprotect(1);
                        self.free.extend((cap + 1..new_cap).rev());
                        cap
                    }
                };
                self.written.insert(id.to_owned(), i);
                i
            }
        };
        SET_VECTOR_ELT(self.slots, i, value);
    }

    /// Forgets a written record; true if there was one.
    pub unsafe fn unwrite(&mut self, id: &str) -> bool {
        match self.written.remove(id) {
            Some(i) => {
                SET_VECTOR_ELT(self.slots, i, R_NilValue);
                self.free.push(i);
                true
            }
            None => false,
        }
    }

    /// Removes written records of finished jobs older than `cutoff` (seconds
    /// since the epoch): status completed, failed or cancelled (none means
    /// completed), aged by `completed_at`, else `submitted_at`. Returns how many.
    pub unsafe fn expire_written(&mut self, cutoff: f64) -> usize {
        let old: Vec<String> = self
            .written
            .iter()
            .filter(|(_, &i)| {
                let rec = VECTOR_ELT(self.slots, i);
                if TYPEOF(rec) != VECSXP {
                    return false;
                }
                let status = list_get(rec, "status");
                let finished = if status == R_NilValue {
                    true
                } else {
                    matches!(as_str(status), Some("completed" | "failed" | "cancelled"))
                };
                let completed = list_get(rec, "completed_at");
                let when = if completed != R_NilValue { completed } else { list_get(rec, "submitted_at") };
                finished && as_f64(when).is_some_and(|t| t < cutoff)
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in &old {
            self.unwrite(id);
        }
        old.len()
    }
}

unsafe fn name_of<'a>(name: *const c_char) -> &'a str {
    CStr::from_ptr(name).to_str().unwrap_or("")
}

unsafe extern "C" fn db_exists(name: *const c_char, can_cache: *mut Rboolean, _: *mut ObjectTable) -> Rboolean {
    if !can_cache.is_null() {
        *can_cache = 0;
    }
    let name = name_of(name);
    JOBS_ENV.with(|e| {
        let e = e.borrow();
        (e.written.contains_key(name) || Uuid::try_parse(name).is_ok_and(|id| e.bound.contains(&id))) as Rboolean
    })
}

unsafe extern "C" fn db_get(name: *const c_char, can_cache: *mut Rboolean, _: *mut ObjectTable) -> SEXP {
    if !can_cache.is_null() {
        *can_cache = 0;
    }
    let name = name_of(name);
    let (found, record) = JOBS_ENV.with(|e| {
        let e = e.borrow();
        if let Some(v) = e.written(name) {
            return (Some(v), None);
        }
        match Uuid::try_parse(name) {
            Ok(id) if e.bound.contains(&id) => (None, Some((id, e.record))),
            _ => (None, None),
        }
    });
    match (found, record) {
        (Some(v), _) => v,
        (None, Some((id, Some(build)))) => build(&id),
        (None, Some((_, None))) => R_NilValue,
        (None, None) => R_UnboundValue,
    }
}

unsafe extern "C" fn db_remove(name: *const c_char, _: *mut ObjectTable) -> c_int {
    let name = name_of(name);
    JOBS_ENV.with(|e| {
        let mut e = e.borrow_mut();
        let written = e.unwrite(name);
        let bound = Uuid::try_parse(name).is_ok_and(|id| e.bound.remove(&id));
        (written || bound) as c_int
    })
}

unsafe extern "C" fn db_assign(name: *const c_char, value: SEXP, _: *mut ObjectTable) -> SEXP {
    let name = name_of(name).to_owned();
    JOBS_ENV.with(|e| e.borrow_mut().write(&name, value));
    value
}

unsafe extern "C" fn db_objects(_: *mut ObjectTable) -> SEXP {
    let mut ids: Vec<String> = JOBS_ENV.with(|e| {
        let e = e.borrow();
        let mut ids: Vec<String> = e.bound.iter().map(Uuid::to_string).collect();
        ids.extend(e.written.keys().filter(|k| !Uuid::try_parse(k).is_ok_and(|id| e.bound.contains(&id))).cloned());
        ids
    });
    ids.sort_unstable();
    let out = Rf_protect(Rf_allocVector(STRSXP, ids.len() as isize));
    for (i, id) in ids.iter().enumerate() {
        SET_STRING_ELT(out, i as isize, mkchar(id));
    }
    Rf_unprotect(1);
    out
}

unsafe extern "C" fn db_can_cache(_: *const c_char, _: *mut ObjectTable) -> Rboolean {
    0
}

unsafe extern "C" fn db_nothing(_: *mut ObjectTable) {}

/// Turns `env` (a new, empty environment) into the jobs_env database;
/// `record` builds a bound job's record.
pub unsafe fn init_jobs_env(env: SEXP, record: unsafe fn(&Uuid) -> SEXP) {
    let table = Box::leak(Box::new(ObjectTable {
        type_: 0,
        cached_names: std::ptr::null_mut(),
        active: 1,
        exists: db_exists,
        get: db_get,
        remove: db_remove,
        assign: db_assign,
        objects: db_objects,
        can_cache: db_can_cache,
        on_detach: db_nothing,
        on_attach: db_nothing,
        private: std::ptr::null_mut(),
    }));
    let slots = Rf_protect(Rf_allocVector(VECSXP, 16));
    let ptr = Rf_protect(R_MakeExternalPtr(table as *mut ObjectTable as *mut c_void, R_NilValue, slots));
    SET_HASHTAB(env, ptr);
    Rf_setAttrib(env, R_ClassSymbol, string("UserDefinedDatabase"));
    JOBS_ENV.with(|e| {
        let mut e = e.borrow_mut();
        e.bound.clear();
        e.written.clear();
        e.free = (0..16).rev().collect();
        e.slots = slots;
        e.table = ptr;
        e.record = Some(record);
    });
    Rf_unprotect(2);
}

// ---------------------------------------------------------------- JSON

/// `x` as JSON, written as jsonlite's `toJSON(x, auto_unbox = TRUE, digits
/// = NA, na = "null", null = "null")` writes it, for the values whose
/// writing is plain: NULL, logical, integer, double and character vectors
/// without attributes (length one as a scalar), and lists without
/// attributes but unique, non-empty names (an object) or none (an array).
/// None for anything else (factors, data frames, dates, named vectors,
/// strings not in UTF-8...): R then asks jsonlite, which knows them.
pub unsafe fn to_json(x: SEXP) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(64);
    json_value(x, &mut out, 0).then_some(out)
}

/// Lists nested deeper than this go to jsonlite.
const JSON_DEPTH: usize = 64;

unsafe fn json_value(x: SEXP, out: &mut Vec<u8>, depth: usize) -> bool {
    let t = TYPEOF(x);
    if t == NILSXP {
        out.extend_from_slice(b"null");
        return true;
    }
    if depth > JSON_DEPTH {
        return false;
    }
    let n = Rf_xlength(x);
    if t == VECSXP {
        let names = match ATTRIB(x) {
            a if a == R_NilValue => None,
            a if CDR(a) == R_NilValue && TAG(a) == R_NamesSymbol => Some(CAR(a)),
            _ => return false,
        };
        let Some(names) = names else {
            out.push(b'[');
            for i in 0..n {
                if i > 0 {
                    out.push(b',');
                }
                if !json_value(VECTOR_ELT(x, i), out, depth + 1) {
                    return false;
                }
            }
            out.push(b']');
            return true;
        };
        let mut seen = std::collections::HashSet::new();
        out.push(b'{');
        for i in 0..n {
            let Some(name) = utf8_elt(names, i).filter(|s| !s.is_empty() && seen.insert(*s)) else { return false };
            if i > 0 {
                out.push(b',');
            }
            json_string(name, out);
            out.push(b':');
            if !json_value(VECTOR_ELT(x, i), out, depth + 1) {
                return false;
            }
        }
        out.push(b'}');
        return true;
    }
    if !matches!(t, LGLSXP | INTSXP | REALSXP | STRSXP) || ATTRIB(x) != R_NilValue {
        return false;
    }
    let scalar = n == 1;
    if !scalar {
        out.push(b'[');
    }
    for i in 0..n {
        if i > 0 {
            out.push(b',');
        }
        match t {
            LGLSXP => out.extend_from_slice(match *LOGICAL(x).offset(i) {
                NA_INTEGER => b"null".as_slice(),
                0 => b"false",
                _ => b"true",
            }),
            INTSXP => match *INTEGER(x).offset(i) {
                NA_INTEGER => out.extend_from_slice(b"null"),
                v => out.extend_from_slice(v.to_string().as_bytes()),
            },
            REALSXP => json_number(*REAL(x).offset(i), out),
            _ => {
                if STRING_ELT(x, i) == R_NaString {
                    out.extend_from_slice(b"null");
                } else {
                    let Some(s) = utf8_elt(x, i) else { return false };
                    json_string(s, out);
                }
            }
        }
    }
    if !scalar {
        out.push(b']');
    }
    true
}

const NILSXP: c_int = 0;
const NA_INTEGER: c_int = i32::MIN;

/// The `i`th string of a character vector, when it is UTF-8 as it stands
/// (not NA, not marked latin1 or bytes).
unsafe fn utf8_elt<'a>(x: SEXP, i: isize) -> Option<&'a str> {
    let c = STRING_ELT(x, i);
    if c == R_NaString || matches!(Rf_getCharCE(c), CE_LATIN1 | CE_BYTES) {
        return None;
    }
    CStr::from_ptr(R_CHAR(c)).to_str().ok()
}

fn json_string(s: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    for b in s.bytes() {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            b if b < 0x20 => out.extend_from_slice(format!("\\u{b:04x}").as_bytes()),
            b => out.push(b),
        }
    }
    out.push(b'"');
}

/// A double as C's `%.15g` writes it (what jsonlite writes with `digits =
/// NA`); NA, NaN and the infinities as null.
pub fn json_number(x: f64, out: &mut Vec<u8>) {
    if !x.is_finite() {
        out.extend_from_slice(b"null");
        return;
    }
    if x == 0.0 {
        out.extend_from_slice(if x.is_sign_negative() { b"-0" } else { b"0" });
        return;
    }
    let sci = format!("{x:.14e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let trim = |s: &str| -> String {
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s.to_string()
        }
    };
    let text = if !(-4..15).contains(&exp) {
        format!("{}e{}{:02}", trim(mantissa), if exp < 0 { '-' } else { '+' }, exp.abs())
    } else {
        trim(&format!("{:.*}", (14 - exp) as usize, x))
    };
    out.extend_from_slice(text.as_bytes());
}
