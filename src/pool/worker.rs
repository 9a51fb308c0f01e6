//! One R worker process: how it is spawned, read, written and stopped.
//!
//! The child gets stdin from /dev/null, stdout and stderr as pipes (job
//! output), fd 3 for frames from the core and fd 4 for frames to the core. It
//! leads its own process group, and is contained as [`super::reaper`]
//! describes (its own cgroup, or a subreaper), so that a stop reaches every
//! process a job started; it dies with the thread that spawned it
//! (`PR_SET_PDEATHSIG`) until its guard watches the API instead.
//! It may run at a higher nice value, so that busy workers leave CPU to the
//! API. Exit is observed through a pidfd, so no SIGCHLD handler is installed
//! in the R process.

use crate::protocol::{self, Decoder, Frame, Header, Kind, ProtocolError, HEADER_LEN};
use super::reaper::{self, Mechanism, Tree};
use uuid::Uuid;
use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// What to run: the R binary, its arguments, where and with which environment.
#[derive(Clone, Debug)]
pub struct Spec {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub cwd: PathBuf,
    pub env: Vec<(String, String)>,
    pub env_remove: Vec<String>,
    /// Added to the worker's nice value (0-19), so that busy workers leave
    /// CPU to the API process on a small machine.
    pub nice: i32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

#[derive(Debug)]
pub enum Event {
    Frame(Frame),
    Output(Stream, Vec<u8>),
    /// The process ended; every frame and byte of output it sent came before.
    Exited(ExitStatus),
    Protocol(ProtocolError),
}

/// A raw wait status, described the way a person reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExitStatus(pub i32);

impl ExitStatus {
    pub fn signal(self) -> Option<i32> {
        libc::WIFSIGNALED(self.0).then(|| libc::WTERMSIG(self.0))
    }
    pub fn code(self) -> Option<i32> {
        libc::WIFEXITED(self.0).then(|| libc::WEXITSTATUS(self.0))
    }
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.code(), self.signal()) {
            (Some(c), _) => write!(f, "exited with status {c}"),
            (_, Some(s)) => write!(f, "was killed by signal {s} ({})", signal_name(s)),
            _ => write!(f, "ended with wait status {}", self.0),
        }
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGKILL => "SIGKILL",
        libc::SIGTERM => "SIGTERM",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGILL => "SIGILL",
        libc::SIGINT => "SIGINT",
        libc::SIGHUP => "SIGHUP",
        libc::SIGPIPE => "SIGPIPE",
        _ => "signal",
    }
}

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// A pipe pair, both ends close-on-exec and numbered above the fds the child
/// dups into place, so the dups never clobber each other.
fn pipe_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    let raise = |fd: RawFd| -> io::Result<OwnedFd> {
        let high = cvt(unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 10) });
        unsafe { libc::close(fd) };
        Ok(unsafe { OwnedFd::from_raw_fd(high?) })
    };
    let (r, w) = (raise(fds[0])?, raise(fds[1])?);
    // A large pipe moves a big payload in few reads and wake-ups. Beyond
    // /proc/sys/fs/pipe-max-size this fails for an unprivileged process, and
    // the default size serves.
    unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_SIZE) };
    Ok((r, w))
}

const PIPE_SIZE: libc::c_int = 1 << 20;

fn register(fd: OwnedFd, interest: Interest) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: an OwnedFd stays open, and is the same fd, for as long as it is owned.
    unsafe { AsyncFd::register_with_interest(fd, interest) }.map_err(|e| e.into_parts().1)
}

fn nonblocking(fd: OwnedFd, interest: Interest) -> io::Result<AsyncFd<OwnedFd>> {
    let flags = cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) })?;
    cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) })?;
    register(fd, interest)
}

/// Reads what is in the pipe now, without waiting. Ok(0) is end of file.
fn read_now(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

struct Pipe {
    fd: AsyncFd<OwnedFd>,
    eof: bool,
}

impl Pipe {
    fn new(fd: OwnedFd) -> io::Result<Pipe> {
        Ok(Pipe { fd: nonblocking(fd, Interest::READABLE)?, eof: false })
    }

    /// Everything readable right now, or None at end of file.
    fn drain(&mut self, buf: &mut [u8], mut sink: impl FnMut(&[u8])) {
        while !self.eof {
            match read_now(self.fd.as_raw_fd(), buf) {
                Ok(0) => self.eof = true,
                Ok(n) => sink(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => self.eof = true,
            }
        }
    }

    /// Reads frames' bytes straight into the decoder's buffers, queueing
    /// each whole frame before reading on (so the decoder always has room).
    fn fill(&mut self, decoder: &mut Decoder, queued: &mut VecDeque<Event>) {
        loop {
            loop {
                match decoder.next_frame() {
                    Ok(Some(f)) => queued.push_back(Event::Frame(f)),
                    Ok(None) => break,
                    Err(e) => {
                        queued.push_back(Event::Protocol(e));
                        self.eof = true;
                        return;
                    }
                }
            }
            if self.eof {
                return;
            }
            match read_now(self.fd.as_raw_fd(), decoder.spare()) {
                Ok(0) => self.eof = true,
                Ok(n) => decoder.filled(n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => self.eof = true,
            }
        }
    }
}

/// A running (or just ended) worker process and its pipes.
pub struct Process {
    pub pid: u32,
    pidfd: AsyncFd<OwnedFd>,
    status: Option<ExitStatus>,
    to_worker: AsyncFd<OwnedFd>,
    frames: Pipe,
    stdout: Pipe,
    stderr: Pipe,
    decoder: Decoder,
    queued: VecDeque<Event>,
    buf: Vec<u8>,
    /// How the processes it starts are contained.
    pub tree: Tree,
    /// Its descendants were killed while it was stopped or idle: none can
    /// have escaped to init.
    swept: bool,
    leftovers_killed: bool,
}

impl Process {
    /// Spawns the worker. Call from the pool's own thread: the child's
    /// PDEATHSIG fires when the spawning thread exits.
    pub fn spawn(spec: &Spec, max_frame: usize) -> io::Result<Process> {
        Process::spawn_in(spec, max_frame, Tree::pgroup())
    }

    /// Spawns the worker contained by `tree` (a subreaper, in its cgroup).
    pub fn spawn_in(spec: &Spec, max_frame: usize, tree: Tree) -> io::Result<Process> {
        let (in_r, in_w) = pipe_pair()?; // core -> worker, child reads fd 3
        let (out_r, out_w) = pipe_pair()?; // worker -> core, child writes fd 4
        let (in_fd, out_fd) = (in_r.as_raw_fd(), out_w.as_raw_fd());
        let parent = unsafe { libc::getpid() };

        let mut cmd = Command::new(&spec.program);
        cmd.args(&spec.args)
            .current_dir(&spec.cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in &spec.env {
            cmd.env(k, v);
        }
        for k in &spec.env_remove {
            cmd.env_remove(k);
        }
        cmd.env(reaper::TREE_ENV, tree.env_value());
        let subreaper = tree.mechanism >= Mechanism::Subreaper;
        let procs = tree.procs_path();
        let nice = spec.nice.clamp(0, 19);
        // Only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                cvt(libc::setpgid(0, 0))?;
                cvt(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong))?;
                if subreaper {
                    // Orphans of the job come back to the worker, not to init.
                    cvt(libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong))?;
                }
                if let Some(procs) = &procs {
                    // Into the worker's cgroup before R runs: "0" is this process.
                    let fd = cvt(libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC))?;
                    let n = libc::write(fd, b"0".as_ptr().cast(), 1);
                    let err = io::Error::last_os_error();
                    libc::close(fd);
                    if n != 1 {
                        return Err(err);
                    }
                }
                if libc::getppid() != parent {
                    return Err(io::Error::from_raw_os_error(libc::ESRCH));
                }
                // Raising the nice value cannot fail; -1 is a valid result.
                if nice > 0 {
                    libc::nice(nice);
                }
                // The runtime thread blocks async signals; the worker must not.
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut set);
                libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
                for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGPIPE, libc::SIGQUIT] {
                    libc::signal(sig, libc::SIG_DFL);
                }
                cvt(libc::dup2(in_fd, 3))?;
                cvt(libc::dup2(out_fd, 4))?;
                // The API's own descriptors (its listening socket) stay behind.
                libc::syscall(libc::SYS_close_range, 5u32, u32::MAX, libc::CLOSE_RANGE_CLOEXEC);
                Ok(())
            });
        }
        let mut child = cmd.spawn()?;
        drop((in_r, out_w));
        let pid = child.id();
        let stdout = OwnedFd::from(child.stdout.take().expect("piped stdout"));
        let stderr = OwnedFd::from(child.stderr.take().expect("piped stderr"));
        // From here on the pidfd owns the child's lifecycle; `child` is not waited on.
        drop(child);
        let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
        if pidfd < 0 {
            let err = io::Error::last_os_error();
            unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
            tree.kill_leftovers(true);
            return Err(err);
        }
        let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as RawFd) };
        Ok(Process {
            pid,
            pidfd: register(pidfd, Interest::READABLE)?,
            status: None,
            to_worker: nonblocking(in_w, Interest::WRITABLE)?,
            frames: Pipe::new(out_r)?,
            stdout: Pipe::new(stdout)?,
            stderr: Pipe::new(stderr)?,
            decoder: Decoder::new(max_frame),
            queued: VecDeque::new(),
            buf: vec![0; 64 * 1024],
            tree,
            swept: false,
            leftovers_killed: false,
        })
    }

    pub fn exited(&self) -> Option<ExitStatus> {
        self.status
    }

    /// Writes one frame, its parts with `writev`. An error means the worker
    /// is gone or broken.
    pub async fn send(&mut self, kind: Kind, job: Uuid, tag: u64, text: &str, blobs: &[&[u8]]) -> io::Result<()> {
        let blob_len = blobs.iter().map(|b| b.len()).sum();
        let header = Header::new(kind, job, tag, text.len(), blob_len).encode();
        let mut parts: Vec<&[u8]> = Vec::with_capacity(2 + blobs.len());
        parts.push(&header);
        parts.push(text.as_bytes());
        parts.extend_from_slice(blobs);
        let total = HEADER_LEN + text.len() + blob_len;
        let mut done = 0;
        while done < total {
            let mut guard = self.to_worker.writable().await?;
            match guard.try_io(|fd| protocol::write_parts(fd.as_raw_fd(), &parts, done)) {
                Ok(Ok(n)) => done += n,
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => {}
            }
        }
        Ok(())
    }

    /// Moves what the pipes hold now into the event queue: output first, so a
    /// job's output is in before its result.
    fn collect(&mut self) {
        let Process { frames, stdout, stderr, decoder, queued, buf, .. } = self;
        stdout.drain(buf, |b| queued.push_back(Event::Output(Stream::Stdout, b.to_vec())));
        stderr.drain(buf, |b| queued.push_back(Event::Output(Stream::Stderr, b.to_vec())));
        frames.fill(decoder, queued);
    }

    fn reap(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            let mut raw = 0;
            let r = unsafe { libc::waitpid(self.pid as i32, &mut raw, libc::WNOHANG) };
            if r == self.pid as i32 {
                self.status = Some(ExitStatus(raw));
            } else if r < 0 {
                // Not our child any more (reaped elsewhere): report it as gone.
                self.status = Some(ExitStatus(raw));
            }
        }
        self.status
    }

    /// The next thing the worker did. Cancel-safe: all reads happen
    /// synchronously once a pipe is ready, and land in the queue.
    pub async fn next_event(&mut self) -> Event {
        loop {
            if let Some(ev) = self.queued.pop_front() {
                return ev;
            }
            if let Some(status) = self.status {
                return Event::Exited(status);
            }
            tokio::select! {
                biased;
                g = self.frames.fd.readable(), if !self.frames.eof => {
                    if let Ok(mut g) = g { g.clear_ready(); }
                }
                g = self.stdout.fd.readable(), if !self.stdout.eof => {
                    if let Ok(mut g) = g { g.clear_ready(); }
                }
                g = self.stderr.fd.readable(), if !self.stderr.eof => {
                    if let Ok(mut g) = g { g.clear_ready(); }
                }
                g = self.pidfd.readable() => {
                    if let Ok(mut g) = g { g.clear_ready(); }
                    // Whatever it wrote before dying counts, in order.
                    self.collect();
                    if self.reap().is_some() {
                        // Processes the job left go with it.
                        self.kill_group(libc::SIGKILL);
                        self.kill_leftovers();
                    }
                    continue;
                }
            }
            // Edge-triggered readiness was cleared above; read until EAGAIN.
            self.collect();
        }
    }

    pub fn kill_group(&self, sig: i32) {
        unsafe { libc::kill(-(self.pid as i32), sig) };
    }

    async fn wait_exit(&mut self, limit: Duration) -> bool {
        let wait = async {
            while self.reap().is_none() {
                match self.pidfd.readable().await {
                    Ok(mut g) => g.clear_ready(),
                    Err(_) => return,
                }
            }
        };
        tokio::time::timeout(limit, wait).await.is_ok()
    }

    /// Ends the worker and every process it started. With a subreaper the
    /// worker is stopped first (it can neither start processes nor die and
    /// orphan them); its descendants get SIGTERM, `grace`, then SIGKILL in
    /// rounds until none is left; then the worker goes. Otherwise the group
    /// gets SIGTERM, `grace`, SIGKILL, and the cgroup is killed.
    pub async fn terminate(&mut self, grace: Duration) -> ExitStatus {
        if self.reap().is_none() {
            if self.tree.mechanism == Mechanism::Subreaper {
                unsafe { libc::kill(self.pid as i32, libc::SIGSTOP) };
                self.end_descendants(grace).await;
                self.kill_group(libc::SIGKILL);
                unsafe { libc::kill(self.pid as i32, libc::SIGKILL) };
                self.wait_exit(Duration::from_secs(3600)).await;
            } else {
                self.kill_group(libc::SIGTERM);
                if !self.wait_exit(grace).await {
                    self.kill_group(libc::SIGKILL);
                    self.wait_exit(Duration::from_secs(3600)).await;
                }
            }
        }
        // Children that ignored SIGTERM, or outlived their leader.
        self.kill_group(libc::SIGKILL);
        self.release_tree().await;
        self.status.unwrap_or(ExitStatus(0))
    }

    /// Kills what the dead worker left, once: its cgroup's members, or (a
    /// subreaper that died before its tree was swept) the marked processes.
    fn kill_leftovers(&mut self) {
        if !self.leftovers_killed {
            self.leftovers_killed = true;
            self.tree.kill_leftovers(!self.swept);
        }
    }

    /// SIGTERM to the worker's descendants, `grace` for them to go, then
    /// SIGKILL in rounds until none is alive.
    async fn end_descendants(&mut self, grace: Duration) {
        let pid = self.pid as i32;
        if reaper::signal_descendants(pid, libc::SIGTERM) > 0 {
            let deadline = tokio::time::Instant::now() + grace;
            while tokio::time::Instant::now() < deadline && reaper::signal_descendants(pid, 0) > 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if reaper::kill_round(pid, &Default::default(), false) {
                self.swept = true;
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Once the worker is dead: what it left is killed, its cgroup removed.
    pub async fn release_tree(&mut self) {
        self.kill_leftovers();
        for _ in 0..1000 {
            if self.tree.remove() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Asks the worker to exit on its own, then terminates it if it does not.
    /// What setup started goes first (a subreaper's orphans would go to init).
    pub async fn shutdown(&mut self, grace: Duration) -> ExitStatus {
        if self.tree.mechanism >= Mechanism::Subreaper && self.reap().is_none() {
            self.end_descendants(grace).await;
        }
        if self.send(Kind::Shutdown, Uuid::nil(), 0, "", &[]).await.is_ok() && self.wait_exit(grace).await {
            self.kill_group(libc::SIGKILL);
            self.release_tree().await;
            return self.status.unwrap_or(ExitStatus(0));
        }
        self.terminate(grace).await
    }

    /// Resident memory, from /proc.
    pub fn rss_bytes(&self) -> Option<u64> {
        let statm = std::fs::read_to_string(format!("/proc/{}/statm", self.pid)).ok()?;
        let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
        Some(pages * unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.status.is_none() {
            if self.tree.mechanism == Mechanism::Subreaper {
                unsafe { libc::kill(self.pid as i32, libc::SIGSTOP) };
                self.swept = reaper::kill_descendants(self.pid as i32, &Default::default(), false, Duration::from_secs(2));
            }
            self.kill_group(libc::SIGKILL);
            unsafe { libc::kill(self.pid as i32, libc::SIGKILL) };
            // SIGKILL cannot be caught: this wait is short, and leaves no zombie.
            let mut raw = 0;
            unsafe { libc::waitpid(self.pid as i32, &mut raw, 0) };
        }
        self.kill_leftovers();
        if !self.tree.remove() {
            if let Some(d) = &self.tree.cgroup {
                reaper::cgroup_remove(d, Duration::from_millis(200));
            }
        }
    }
}
