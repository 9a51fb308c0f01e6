//! Process-wide helpers every layer uses: the clock, signal masks, the log
//! line, and the I/O runtime that runs store calls.
//!
//! May import nothing of the crate.

use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the epoch, this host's clock.
pub fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// Seconds since the epoch as an ISO 8601 UTC time, for messages.
pub fn iso8601(t: f64) -> String {
    let secs = t.floor() as i64;
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// The runtime that runs store I/O and the waits of R's calls: two threads
/// that block asynchronous signals, started at first use and kept for the
/// life of the process.
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: once_cell::sync::OnceCell<tokio::runtime::Runtime> = once_cell::sync::OnceCell::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("asyncjobs-io")
            .on_thread_start(block_async_signals)
            .enable_all()
            .build()
            .expect("cannot start the asyncjobs I/O runtime")
    })
}

/// Runs a store call from a thread outside the runtime (the R main thread).
/// Every store call is bounded, so this is too.
pub fn block_on<F: std::future::Future>(fut: F) -> F::Output {
    runtime().block_on(fut)
}

/// R's signal handlers must only ever run on the R main thread: every
/// thread the core starts blocks the asynchronous signals first.
pub fn block_async_signals() {
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut set);
        for sig in [libc::SIGSEGV, libc::SIGBUS, libc::SIGFPE, libc::SIGILL, libc::SIGTRAP, libc::SIGABRT] {
            libc::sigdelset(&mut set, sig);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

/// One line on stderr with a UTC timestamp: what a pool tells its operator.
pub fn log(msg: &str) {
    let t = iso8601(now());
    let _ = writeln!(std::io::stderr(), "{t} asyncjobs: {msg}");
}

/// The allocator of the R build: large blocks (128 KiB and up) are pages of
/// their own (mmap, mremap, munmap), everything else is the C library's.
///
/// glibc serves a block from its heap once a block that large was mapped and
/// freed (its mmap threshold follows the largest freed mapping, up to 32
/// MiB). The tables that grow and shrink with each wave of jobs (hash maps of
/// active jobs, bound ids, finished records' places) then come and go inside
/// the heap, which fragments and grows by steps of megabytes. Mapped
/// directly, they are returned whole when freed, and the threshold stays put.
pub struct PagedLarge;

const LARGE: usize = 128 << 10;
const PAGE: usize = 4096;

fn paged(size: usize, align: usize) -> bool {
    size >= LARGE && align <= PAGE
}

fn pages(size: usize) -> usize {
    size.div_ceil(PAGE) * PAGE
}

unsafe impl std::alloc::GlobalAlloc for PagedLarge {
    unsafe fn alloc(&self, l: std::alloc::Layout) -> *mut u8 {
        if !paged(l.size(), l.align()) {
            return std::alloc::System.alloc(l);
        }
        let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
        let p = libc::mmap(std::ptr::null_mut(), pages(l.size()), libc::PROT_READ | libc::PROT_WRITE, flags, -1, 0);
        if p == libc::MAP_FAILED { std::ptr::null_mut() } else { p.cast() }
    }

    unsafe fn alloc_zeroed(&self, l: std::alloc::Layout) -> *mut u8 {
        // Fresh pages are zero.
        if paged(l.size(), l.align()) { self.alloc(l) } else { std::alloc::System.alloc_zeroed(l) }
    }

    unsafe fn dealloc(&self, p: *mut u8, l: std::alloc::Layout) {
        if paged(l.size(), l.align()) {
            libc::munmap(p.cast(), pages(l.size()));
        } else {
            std::alloc::System.dealloc(p, l)
        }
    }

    unsafe fn realloc(&self, p: *mut u8, l: std::alloc::Layout, size: usize) -> *mut u8 {
        match (paged(l.size(), l.align()), paged(size, l.align())) {
            (false, false) => std::alloc::System.realloc(p, l, size),
            (true, true) => {
                let q = libc::mremap(p.cast(), pages(l.size()), pages(size), libc::MREMAP_MAYMOVE);
                if q == libc::MAP_FAILED { std::ptr::null_mut() } else { q.cast() }
            }
            _ => {
                let new = std::alloc::Layout::from_size_align_unchecked(size, l.align());
                let q = self.alloc(new);
                if !q.is_null() {
                    std::ptr::copy_nonoverlapping(p, q, l.size().min(size));
                    self.dealloc(p, l);
                }
                q
            }
        }
    }
}
