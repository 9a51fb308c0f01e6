//! Registers every native routine with R in one table (R_registerRoutines):
//! extendr's calls, the hot calls and the worker's, so that each `.Call()`
//! names a registered symbol (a namespace object, `useDynLib(asyncjobs,
//! .registration = TRUE)`) and none goes through an external pointer.
//!
//! May import: `r`'s other modules.

use super::fast::DlFunc;
use super::{api, calls, wire};
use std::ffi::CString;
use std::os::raw::{c_char, c_int, c_void};

#[repr(C)]
struct CallMethodDef {
    name: *const c_char,
    fun: Option<DlFunc>,
    num_args: c_int,
}

extern "C" {
    fn R_registerRoutines(
        info: *mut c_void,
        c: *const c_void,
        call: *const CallMethodDef,
        fortran: *const c_void,
        external: *const c_void,
    ) -> c_int;
    fn R_useDynamicSymbols(info: *mut c_void, value: c_int) -> c_int;
}

/// The routines that are not extendr's: name, address, number of arguments.
fn native_routines() -> [(&'static str, *const (), usize); 11] {
    [
        ("c_submit", calls::c_submit as *const (), 9),
        ("c_json", calls::c_json as *const (), 1),
        ("w_result_json", wire::w_result_json as *const (), 3),
        ("c_status", calls::c_status as *const (), 1),
        ("c_wait", calls::c_wait as *const (), 2),
        ("c_duplicate", calls::c_duplicate as *const (), 3),
        ("c_cleanup", calls::c_cleanup as *const (), 2),
        ("c_cleanup_written", calls::c_cleanup_written as *const (), 1),
        ("w_unserialize", wire::w_unserialize as *const (), 1),
        ("w_result", wire::w_result as *const (), 2),
        ("w_seed", wire::w_seed as *const (), 1),
    ]
}

/// Called by `R_init_asyncjobs` (entrypoint.c) when R loads the package.
///
/// # Safety
/// R calls it once, on its main thread, with the package's `DllInfo`.
#[no_mangle]
pub unsafe extern "C" fn R_init_asyncjobs_rust(info: *mut c_void) {
    let mut routines: Vec<(CString, *const (), usize)> = api::get_asyncjobs_metadata()
        .functions
        .iter()
        .map(|f| (CString::new(f.c_name).expect("a routine name"), f.func_ptr as *const (), f.args.len()))
        .collect();
    for (name, f, n) in native_routines() {
        routines.push((CString::new(name).expect("a routine name"), f, n));
    }
    let mut table: Vec<CallMethodDef> = routines
        .iter()
        .map(|(name, f, n)| CallMethodDef {
            name: name.as_ptr(),
            fun: Some(std::mem::transmute::<*const (), DlFunc>(*f)),
            num_args: *n as c_int,
        })
        .collect();
    table.push(CallMethodDef { name: std::ptr::null(), fun: None, num_args: 0 });
    // R copies the names: `routines` may go once this returns.
    R_registerRoutines(info, std::ptr::null(), table.as_ptr(), std::ptr::null(), std::ptr::null());
    R_useDynamicSymbols(info, 0);
}
