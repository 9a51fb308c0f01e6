//! Containment: every process a job starts goes when the job ends, when its
//! worker is stopped or replaced, and when the API process dies.
//!
//! A process group is not enough: `setsid()`, processx and callr leave it.
//! Each worker gets the strongest of these mechanisms that works here:
//!
//! * `cgroup`: a cgroup v2 of its own under the API's cgroup, when that one
//!   is writable. `cgroup.kill` ends every member at once, whatever it did
//!   to its session, group or parent. The worker is also a subreaper.
//! * `subreaper`: the worker is a child subreaper (`PR_SET_CHILD_SUBREAPER`),
//!   so every orphan of the job is re-parented to it and stays in its tree.
//!   A kill stops the worker (SIGSTOP: it can neither start processes nor
//!   die and orphan them), kills its descendants in rounds until none is
//!   alive, then kills it. Should the worker die first (a crash), what it
//!   left is found by a marker in the environment every worker passes on.
//! * `pgroup`: the process group only (what escapes the group survives).
//!
//! `ASYNCJOBS_CONTAINMENT` (cgroup, subreaper or pgroup) caps the choice;
//! unset, the strongest available is used. A PID namespace is not used: with
//! the host's /proc, processx and ps read the wrong processes (pids are the
//! namespace's), a private /proc needs a mount namespace, and either needs
//! CAP_SYS_ADMIN or a user namespace, which containers usually refuse.
//!
//! The API dying (SIGKILL, SIGTERM, a crash) is seen by a guard thread in
//! each worker, through a pidfd on the API process; it kills the worker's
//! tree (its cgroup, or its descendants) and the worker. Until the guard is
//! armed the worker dies with the pool thread (`PR_SET_PDEATHSIG`).
//!
//! At the end of every job the worker kills the processes started since the
//! job began (those `setup` started stay until the worker goes) and reaps
//! the zombies this leaves it, before it reports the result.

use std::collections::HashSet;
use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Caps the mechanism: cgroup, subreaper or pgroup.
pub const LEVEL_ENV: &str = "ASYNCJOBS_CONTAINMENT";
/// Set in every worker: `<mechanism>:<token>`; inherited by what jobs start.
pub const TREE_ENV: &str = "ASYNCJOBS_TREE";

/// Weakest first, so that `a >= b` reads "at least as strong".
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Mechanism {
    Pgroup,
    Subreaper,
    Cgroup,
}

impl Mechanism {
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Pgroup => "pgroup",
            Mechanism::Subreaper => "subreaper",
            Mechanism::Cgroup => "cgroup",
        }
    }
    pub fn parse(s: &str) -> Option<Mechanism> {
        match s {
            "pgroup" => Some(Mechanism::Pgroup),
            "subreaper" => Some(Mechanism::Subreaper),
            "cgroup" => Some(Mechanism::Cgroup),
            _ => None,
        }
    }
}

/// A process as /proc shows it: state, parent, start (clock ticks after boot).
#[derive(Clone, Copy, Debug)]
pub struct Stat {
    pub state: u8,
    pub ppid: i32,
    pub start: u64,
}

impl Stat {
    pub fn dead(&self) -> bool {
        matches!(self.state, b'Z' | b'X' | b'x')
    }
}

pub fn stat(pid: i32) -> Option<Stat> {
    let s = std::fs::read(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields follow the last ')'.
    let at = s.iter().rposition(|&b| b == b')')?;
    let rest = std::str::from_utf8(s.get(at + 2..)?).ok()?;
    let f: Vec<&str> = rest.split(' ').collect();
    Some(Stat { state: *f.first()?.as_bytes().first()?, ppid: f.get(1)?.parse().ok()?, start: f.get(19)?.parse().ok()? })
}

fn pids() -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect()
}

/// Direct children of `pid`, from every thread's `children` list (or, on a
/// kernel without that file, from every process's parent).
pub fn children(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return out };
    let mut listed = false;
    for t in tasks.flatten() {
        if let Ok(s) = std::fs::read_to_string(t.path().join("children")) {
            listed = true;
            out.extend(s.split_whitespace().filter_map(|p| p.parse::<i32>().ok()));
        }
    }
    if !listed {
        out = pids().into_iter().filter(|&p| stat(p).is_some_and(|s| s.ppid == pid)).collect();
    }
    out
}

/// Every descendant of `root` (not `root`), parents before children.
pub fn descendants(root: i32) -> Vec<i32> {
    let mut out = children(root);
    let mut i = 0;
    while i < out.len() {
        let more = children(out[i]);
        out.extend(more);
        i += 1;
    }
    out
}

/// A process across pid reuse.
pub type Ident = (i32, u64);

pub fn snapshot(root: i32) -> HashSet<Ident> {
    descendants(root).into_iter().filter_map(|p| stat(p).map(|s| (p, s.start))).collect()
}

/// One pass: SIGKILL every live descendant of `root` not in `keep`; with
/// `reap` (only `root` itself may), reap its zombie children not in `keep`.
/// True when nothing of ours was alive or unreaped.
pub fn kill_round(root: i32, keep: &HashSet<Ident>, reap: bool) -> bool {
    let mut clear = true;
    for pid in descendants(root) {
        let Some(s) = stat(pid) else { continue };
        if keep.contains(&(pid, s.start)) {
            continue;
        }
        if s.dead() {
            if reap && s.ppid == root {
                let mut raw = 0;
                let r = unsafe { libc::waitpid(pid, &mut raw, libc::WNOHANG) };
                // 0: not yet collectable; -1: reaped by someone else (processx).
                if r == 0 {
                    clear = false;
                }
            }
            continue;
        }
        unsafe { libc::kill(pid, libc::SIGKILL) };
        clear = false;
    }
    clear
}

/// Rounds of [`kill_round`] until clear, at most `limit`. True when clear.
pub fn kill_descendants(root: i32, keep: &HashSet<Ident>, reap: bool, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if kill_round(root, keep, reap) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Sends `sig` to every live descendant of `root`; the number signalled.
pub fn signal_descendants(root: i32, sig: i32) -> usize {
    let live: Vec<i32> = descendants(root).into_iter().filter(|&p| stat(p).is_some_and(|s| !s.dead())).collect();
    for &p in &live {
        unsafe { libc::kill(p, sig) };
    }
    live.len()
}

/// Kills every process whose environment holds `marker` (`NAME=value`), in
/// rounds (what they started carries it too). For a worker that died
/// before its tree: its orphans went to init.
pub fn kill_marked(marker: &str) -> usize {
    let me = std::process::id() as i32;
    let needle = marker.as_bytes();
    let mut killed = 0;
    for _ in 0..20 {
        let mut found = 0;
        for pid in pids() {
            if pid == me || stat(pid).is_none_or(|s| s.dead()) {
                continue;
            }
            let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else { continue };
            if env.split(|&b| b == 0).any(|v| v == needle) {
                unsafe { libc::kill(pid, libc::SIGKILL) };
                found += 1;
            }
        }
        if found == 0 {
            break;
        }
        killed += found;
        std::thread::sleep(Duration::from_millis(2));
    }
    killed
}

// ---- cgroup v2 ----

/// This process's cgroup v2 directory, if the unified hierarchy is mounted.
pub fn own_cgroup() -> Option<PathBuf> {
    let cg = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = cg.lines().find_map(|l| l.strip_prefix("0::"))?.trim().to_owned();
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    for line in info.lines() {
        let (left, right) = line.split_once(" - ")?;
        if !right.starts_with("cgroup2 ") {
            continue;
        }
        let f: Vec<&str> = left.split(' ').collect();
        let (root, mount) = (*f.get(3)?, *f.get(4)?);
        let rel = if root == "/" { Some(path.as_str()) } else { path.strip_prefix(root) };
        if let Some(rel) = rel {
            return Some(Path::new(mount).join(rel.trim_start_matches('/')));
        }
    }
    None
}

pub fn cgroup_kill(dir: &Path) -> io::Result<()> {
    std::fs::write(dir.join("cgroup.kill"), "1")
}

pub fn cgroup_populated(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("cgroup.events"))
        .map(|s| s.lines().any(|l| l == "populated 1"))
        .unwrap_or(false)
}

/// Kills a cgroup's members and removes it (and its children), waiting at
/// most `limit` for the kernel to empty it.
pub fn cgroup_remove(dir: &Path, limit: Duration) -> bool {
    if let Ok(sub) = std::fs::read_dir(dir) {
        for e in sub.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                cgroup_remove(&e.path(), limit);
            }
        }
    }
    let _ = cgroup_kill(dir);
    let deadline = Instant::now() + limit;
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => return true,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return true,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(2)),
            Err(_) => return false,
        }
    }
}

/// The pool's choice, made once when it starts.
pub struct Containment {
    ceiling: Mechanism,
    /// The pool's cgroup: one directory per worker below it.
    pool_cgroup: Option<PathBuf>,
    cgroup_ok: AtomicBool,
    seq: AtomicU64,
}

static POOLS: AtomicU64 = AtomicU64::new(0);

impl Containment {
    pub fn detect() -> Containment {
        let ceiling = match std::env::var(LEVEL_ENV) {
            Ok(v) if !v.is_empty() && v != "auto" => Mechanism::parse(&v).unwrap_or_else(|| {
                crate::pool::log(&format!("{LEVEL_ENV}={v:?} is not cgroup, subreaper, pgroup or auto; using auto"));
                Mechanism::Cgroup
            }),
            _ => Mechanism::Cgroup,
        };
        let pool_cgroup = if ceiling >= Mechanism::Cgroup { pool_cgroup() } else { None };
        Containment { ceiling, cgroup_ok: AtomicBool::new(pool_cgroup.is_some()), pool_cgroup, seq: AtomicU64::new(0) }
    }

    /// The tree for the next worker (its cgroup created).
    pub fn next(&self) -> Tree {
        let token = uuid::Uuid::new_v4().simple().to_string();
        if let (Some(pool), true) = (&self.pool_cgroup, self.cgroup_ok.load(Ordering::Relaxed)) {
            let dir = pool.join(format!("w{}", self.seq.fetch_add(1, Ordering::Relaxed)));
            match std::fs::create_dir(&dir) {
                Ok(()) => return Tree { mechanism: Mechanism::Cgroup, cgroup: Some(dir), token },
                Err(e) => self.cgroup_failed(&e),
            }
        }
        let mechanism = self.ceiling.min(Mechanism::Subreaper);
        Tree { mechanism, cgroup: None, token }
    }

    /// A worker could not be put in its cgroup: the pool falls back for good.
    pub fn cgroup_failed(&self, e: &io::Error) {
        if self.cgroup_ok.swap(false, Ordering::Relaxed) {
            crate::pool::log(&format!("cgroup containment unavailable ({e}); using subreaper"));
        }
    }
}

impl Drop for Containment {
    fn drop(&mut self) {
        if let Some(dir) = &self.pool_cgroup {
            cgroup_remove(dir, Duration::from_secs(2));
        }
    }
}

/// Creates this pool's cgroup under the API's, removing those left by API
/// processes that died. None when that is not possible here.
fn pool_cgroup() -> Option<PathBuf> {
    let base = own_cgroup()?;
    if let Ok(entries) = std::fs::read_dir(&base) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(pid) = name.strip_prefix("asyncjobs-").and_then(|r| r.split('-').next()) else { continue };
            if pid.parse::<i32>().is_ok_and(|p| !Path::new(&format!("/proc/{p}")).exists()) {
                cgroup_remove(&e.path(), Duration::from_millis(500));
            }
        }
    }
    let n = POOLS.fetch_add(1, Ordering::Relaxed);
    let dir = base.join(format!("asyncjobs-{}-{n}", std::process::id()));
    std::fs::create_dir(&dir).ok()?;
    if !dir.join("cgroup.kill").exists() {
        // Before Linux 5.14: no atomic kill; the subreaper does as well.
        let _ = std::fs::remove_dir(&dir);
        return None;
    }
    Some(dir)
}

/// One worker's containment.
#[derive(Clone, Debug)]
pub struct Tree {
    pub mechanism: Mechanism,
    pub cgroup: Option<PathBuf>,
    pub token: String,
}

impl Tree {
    pub fn pgroup() -> Tree {
        Tree { mechanism: Mechanism::Pgroup, cgroup: None, token: String::new() }
    }

    pub fn env_value(&self) -> String {
        format!("{}:{}", self.mechanism.name(), self.token)
    }

    /// `cgroup.procs` of its cgroup, for the child to join before exec.
    pub fn procs_path(&self) -> Option<CString> {
        self.cgroup.as_ref().and_then(|d| CString::new(d.join("cgroup.procs").as_os_str().as_bytes()).ok())
    }

    /// What the worker left after it died: its cgroup's members, or (with
    /// `scan`) the processes that carry its marker.
    pub fn kill_leftovers(&self, scan: bool) {
        match self.mechanism {
            Mechanism::Cgroup => {
                if let Some(d) = &self.cgroup {
                    let _ = cgroup_kill(d);
                }
            }
            Mechanism::Subreaper if scan => {
                kill_marked(&format!("{TREE_ENV}={}", self.env_value()));
            }
            Mechanism::Subreaper | Mechanism::Pgroup => {}
        }
    }

    /// Removes an empty cgroup; false while members are still exiting.
    pub fn remove(&self) -> bool {
        match &self.cgroup {
            None => true,
            Some(d) => match std::fs::remove_dir(d) {
                Ok(()) => true,
                Err(e) => e.kind() == io::ErrorKind::NotFound,
            },
        }
    }
}

// ---- the worker's side ----

fn worker_mechanism() -> Option<Mechanism> {
    let v = std::env::var(TREE_ENV).ok()?;
    Mechanism::parse(v.split(':').next()?)
}

/// Kills this process's tree and this process. Called by the guard.
fn die(mechanism: Mechanism) -> ! {
    let me = std::process::id() as i32;
    if mechanism == Mechanism::Cgroup {
        if let Some(dir) = own_cgroup() {
            // Members, this process included, die at once.
            let _ = cgroup_kill(&dir);
        }
    }
    // The R thread may still start processes: rounds until none is left.
    kill_descendants(me, &HashSet::new(), false, Duration::from_secs(5));
    unsafe { libc::kill(me, libc::SIGKILL) };
    unreachable!()
}

/// Arms the guard: a thread that watches the API process and, when it is
/// gone, takes the worker's tree down with the worker. Then the worker no
/// longer needs PDEATHSIG (which would kill it before its tree). Returns
/// the mechanism in force.
pub fn arm_guard() -> io::Result<Mechanism> {
    let Some(mechanism) = worker_mechanism().filter(|m| *m > Mechanism::Pgroup) else {
        return Ok(Mechanism::Pgroup);
    };
    let parent = unsafe { libc::getppid() };
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, parent, 0) } as i32;
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    if unsafe { libc::getppid() } != parent {
        die(mechanism);
    }
    std::thread::Builder::new().name("asyncjobs-guard".into()).spawn(move || {
        // R's signal handlers must run on R's thread only.
        crate::pool::block_async_signals();
        let mut p = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        loop {
            let r = unsafe { libc::poll(&mut p, 1, -1) };
            if r > 0 {
                break;
            }
        }
        die(mechanism);
    })?;
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, 0 as libc::c_ulong) };
    Ok(mechanism)
}

static JOB_START: std::sync::Mutex<Option<HashSet<Ident>>> = std::sync::Mutex::new(None);

/// Whether this process has any child, live or zombie: one `waitid` that
/// reaps nothing. A process with no child has no descendant either, so a
/// job that started nothing costs one system call, not a scan of /proc.
fn has_children() -> bool {
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    let flags = libc::WEXITED | libc::WNOHANG | libc::WNOWAIT;
    let r = unsafe { libc::waitid(libc::P_ALL, 0, &mut info, flags) };
    !(r < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ECHILD))
}

/// At a job's start: remembers the processes already there (setup's).
pub fn job_begin() {
    let here = if has_children() { snapshot(std::process::id() as i32) } else { HashSet::new() };
    *JOB_START.lock().unwrap_or_else(|e| e.into_inner()) = Some(here);
}

/// At a job's end: kills what the job started and reaps it. True when none
/// is left (within 5 s).
pub fn job_end() -> bool {
    let keep = JOB_START.lock().unwrap_or_else(|e| e.into_inner()).take().unwrap_or_default();
    !has_children() || kill_descendants(std::process::id() as i32, &keep, true, Duration::from_secs(5))
}
