//! Frames exchanged with a worker over its private pipes.
//!
//! A frame is a 40-byte header, then the text (UTF-8 metadata the core reads)
//! and the blob (bytes from R's `serialize()`, opaque to the core). The header
//! is, little-endian: magic `AJF2`, kind (u32), the job's id (16 bytes), the
//! job's tag (u64), text length (u32), blob length (u32).
//!
//! The id and tag bind a frame to one job. The pool draws a fresh random tag
//! for each job it sends; the worker stamps that id and tag on every frame it
//! writes while the job runs, from memory the job's R code is not handed. A
//! frame with another id or tag, bad magic or an unknown kind ends the job
//! with `PROTOCOL_ERROR` and the worker is replaced, so stray bytes a job (or
//! a process it started) writes to the pipe never reach another job. Frames
//! outside a job (init, ready, setup failed, shutdown) carry a nil id and tag 0.
//!
//! Both ends write a frame with one `writev` of its parts, so a large blob is
//! never copied to be joined to its header. The worker's end is `wire` (in
//! the R build), which reads each part straight into its final buffer.

use crate::job::Progress;
use std::fmt;
use std::io;
use std::os::fd::RawFd;
use uuid::Uuid;

pub const HEADER_LEN: usize = 40;
pub const MAGIC: [u8; 4] = *b"AJF2";
/// Separates fields inside a frame's text.
pub const FIELD_SEP: char = '\u{1f}';

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Kind {
    // core -> worker
    Init = 1,
    Job = 2,
    Shutdown = 3,
    /// The answer to a running job's `Submit`.
    Submitted = 4,
    // worker -> core
    Ready = 11,
    SetupFailed = 12,
    Progress = 13,
    Result = 14,
    Failed = 15,
    /// A running job submits a job of its own.
    Submit = 16,
}

impl Kind {
    pub fn from_u32(v: u32) -> Option<Kind> {
        Some(match v {
            1 => Kind::Init,
            2 => Kind::Job,
            3 => Kind::Shutdown,
            4 => Kind::Submitted,
            11 => Kind::Ready,
            12 => Kind::SetupFailed,
            13 => Kind::Progress,
            14 => Kind::Result,
            15 => Kind::Failed,
            16 => Kind::Submit,
            _ => return None,
        })
    }
}

impl Progress {
    /// Parses a progress frame's text: `current SEP total [SEP step]`, "NA" for none.
    pub fn parse(text: &str) -> Progress {
        let mut it = text.splitn(3, FIELD_SEP);
        let num = |s: Option<&str>| s.and_then(|v| v.parse::<f64>().ok()).filter(|v| v.is_finite());
        let current = num(it.next());
        let total = num(it.next());
        let step = it.next().map(str::to_owned);
        Progress { step, current, total }
    }
}

/// What a header says about the frame that follows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub kind: Kind,
    pub job: Uuid,
    pub tag: u64,
    pub text_len: usize,
    pub blob_len: usize,
}

impl Header {
    pub fn new(kind: Kind, job: Uuid, tag: u64, text_len: usize, blob_len: usize) -> Header {
        Header { kind, job, tag, text_len, blob_len }
    }

    /// The frame's length, header included.
    pub fn frame_len(&self) -> usize {
        HEADER_LEN + self.text_len + self.blob_len
    }

    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0..4].copy_from_slice(&MAGIC);
        h[4..8].copy_from_slice(&(self.kind as u32).to_le_bytes());
        h[8..24].copy_from_slice(self.job.as_bytes());
        h[24..32].copy_from_slice(&self.tag.to_le_bytes());
        h[32..36].copy_from_slice(&(self.text_len as u32).to_le_bytes());
        h[36..40].copy_from_slice(&(self.blob_len as u32).to_le_bytes());
        h
    }

    /// Checks a header before anything is allocated for its frame.
    pub fn decode(h: &[u8; HEADER_LEN], max_frame: usize) -> Result<Header, ProtocolError> {
        let word = |i: usize| u32::from_le_bytes(h[i..i + 4].try_into().unwrap());
        if h[0..4] != MAGIC {
            return Err(ProtocolError::BadMagic(word(0)));
        }
        let kind = Kind::from_u32(word(4)).ok_or(ProtocolError::UnknownKind(word(4)))?;
        let job = Uuid::from_bytes(h[8..24].try_into().unwrap());
        let tag = u64::from_le_bytes(h[24..32].try_into().unwrap());
        let header = Header::new(kind, job, tag, word(32) as usize, word(36) as usize);
        let len = header.frame_len();
        if len > max_frame {
            return Err(ProtocolError::TooLarge { len, max: max_frame });
        }
        Ok(header)
    }
}

#[derive(Debug, PartialEq)]
pub struct Frame {
    pub kind: Kind,
    pub job: Uuid,
    pub tag: u64,
    pub text: String,
    pub blob: Vec<u8>,
}

#[derive(Debug, PartialEq)]
pub enum ProtocolError {
    BadMagic(u32),
    UnknownKind(u32),
    TooLarge { len: usize, max: usize },
    BadText,
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtocolError::BadMagic(m) => write!(f, "bytes that are not a frame (0x{m:08x}) on the frame pipe"),
            ProtocolError::UnknownKind(k) => write!(f, "unknown frame kind {k}"),
            ProtocolError::TooLarge { len, max } => {
                write!(f, "frame of {len} bytes exceeds the limit of {max} bytes")
            }
            ProtocolError::BadText => write!(f, "frame text is not UTF-8"),
        }
    }
}

/// Encodes one frame into a single buffer (tests and the fake worker; the
/// pool and the worker write the parts with [`write_parts`]).
pub fn encode(kind: Kind, job: Uuid, tag: u64, text: &str, blobs: &[&[u8]]) -> Vec<u8> {
    let blob_len: usize = blobs.iter().map(|b| b.len()).sum();
    let header = Header::new(kind, job, tag, text.len(), blob_len);
    let mut out = Vec::with_capacity(header.frame_len());
    out.extend_from_slice(&header.encode());
    out.extend_from_slice(text.as_bytes());
    for b in blobs {
        out.extend_from_slice(b);
    }
    out
}

/// One `writev` of `parts`, skipping the first `done` bytes (already written).
/// Returns how many bytes went out.
pub fn write_parts(fd: RawFd, parts: &[&[u8]], mut done: usize) -> io::Result<usize> {
    let mut iov: [libc::iovec; 8] = unsafe { std::mem::zeroed() };
    let mut n = 0;
    for p in parts {
        if done >= p.len() {
            done -= p.len();
            continue;
        }
        if n == iov.len() {
            break;
        }
        let rest = &p[done..];
        done = 0;
        iov[n] = libc::iovec { iov_base: rest.as_ptr() as *mut _, iov_len: rest.len() };
        n += 1;
    }
    if n == 0 {
        return Ok(0);
    }
    let r = unsafe { libc::writev(fd, iov.as_ptr(), n as libc::c_int) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

/// Writes every part on a blocking descriptor, retrying short writes and EINTR.
pub fn write_all_parts(fd: RawFd, parts: &[&[u8]]) -> io::Result<()> {
    let total: usize = parts.iter().map(|p| p.len()).sum();
    let mut done = 0;
    while done < total {
        match write_parts(fd, parts, done) {
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Fills `buf` from a blocking descriptor. Ok(false): end of file first.
pub fn read_exact(fd: RawFd, buf: &mut [u8]) -> io::Result<bool> {
    let mut at = 0;
    while at < buf.len() {
        let rest = &mut buf[at..];
        let n = unsafe { libc::read(fd, rest.as_mut_ptr().cast(), rest.len()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Ok(false);
        }
        at += n as usize;
    }
    Ok(true)
}

/// Incremental decoder for the pool's end: bytes arrive in whatever pieces
/// the pipe gives. Small frames are cut from a staging buffer; a frame too
/// large for it gets a body buffer of its exact size, which
/// [`Decoder::spare`] hands to the reader to fill straight from the pipe.
pub struct Decoder {
    staged: Box<[u8]>,
    lo: usize,
    hi: usize,
    body: Option<Body>,
    max_frame: usize,
}

struct Body {
    header: Header,
    bytes: Vec<u8>,
    filled: usize,
}

/// The staging buffer's size; larger frames get their own buffer.
const STAGE: usize = 64 * 1024;

impl Decoder {
    pub fn new(max_frame: usize) -> Decoder {
        Decoder { staged: vec![0; STAGE].into_boxed_slice(), lo: 0, hi: 0, body: None, max_frame }
    }

    /// Where the next read should land: the rest of a large frame's body, or
    /// the staging buffer. Report what the read gave with [`Decoder::filled`].
    pub fn spare(&mut self) -> &mut [u8] {
        if let Some(b) = &mut self.body {
            return &mut b.bytes[b.filled..];
        }
        if self.lo > 0 {
            self.staged.copy_within(self.lo..self.hi, 0);
            self.hi -= self.lo;
            self.lo = 0;
        }
        &mut self.staged[self.hi..]
    }

    /// Records that the first `n` bytes of the last [`Decoder::spare`] hold data.
    pub fn filled(&mut self, n: usize) {
        match &mut self.body {
            Some(b) => b.filled += n,
            None => self.hi += n,
        }
    }

    /// Copies bytes in (tests, and readers that do not use [`Decoder::spare`]).
    pub fn push(&mut self, mut bytes: &[u8]) -> Result<Vec<Frame>, ProtocolError> {
        let mut frames = Vec::new();
        while !bytes.is_empty() {
            let spare = self.spare();
            let n = spare.len().min(bytes.len());
            spare[..n].copy_from_slice(&bytes[..n]);
            self.filled(n);
            bytes = &bytes[n..];
            while let Some(f) = self.next_frame()? {
                frames.push(f);
            }
        }
        Ok(frames)
    }

    /// Bytes buffered that do not yet form a whole frame.
    pub fn pending(&self) -> usize {
        self.hi - self.lo + self.body.as_ref().map_or(0, |b| HEADER_LEN + b.filled)
    }

    /// The next whole frame, if one is in. An error leaves the stream unusable.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, ProtocolError> {
        if let Some(b) = &self.body {
            if b.filled < b.bytes.len() {
                return Ok(None);
            }
            let b = self.body.take().unwrap();
            return frame(b.header, b.bytes).map(Some);
        }
        if self.hi - self.lo < HEADER_LEN {
            return Ok(None);
        }
        let head: &[u8; HEADER_LEN] = self.staged[self.lo..self.lo + HEADER_LEN].try_into().unwrap();
        let header = Header::decode(head, self.max_frame)?;
        let at = self.lo + HEADER_LEN;
        let body_len = header.text_len + header.blob_len;
        let avail = self.hi - at;
        if avail >= body_len {
            self.lo = at + body_len;
            if self.lo == self.hi {
                (self.lo, self.hi) = (0, 0);
            }
            return frame(header, self.staged[at..at + body_len].to_vec()).map(Some);
        }
        if HEADER_LEN + body_len > STAGE {
            let mut bytes = vec![0u8; body_len];
            bytes[..avail].copy_from_slice(&self.staged[at..self.hi]);
            (self.lo, self.hi) = (0, 0);
            self.body = Some(Body { header, bytes, filled: avail });
        }
        Ok(None)
    }
}

fn frame(h: Header, mut body: Vec<u8>) -> Result<Frame, ProtocolError> {
    let text = std::str::from_utf8(&body[..h.text_len]).map_err(|_| ProtocolError::BadText)?.to_owned();
    let blob = if h.text_len == 0 { body } else { body.split_off(h.text_len) };
    Ok(Frame { kind: h.kind, job: h.job, tag: h.tag, text, blob })
}
