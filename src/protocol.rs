//! Frames exchanged with a worker over its private pipes (fd 3 in, fd 4 out).
//!
//! A frame is a 12-byte header of three little-endian u32 (kind, text length,
//! blob length), then the text (UTF-8 metadata the core reads) and the blob
//! (bytes from R's `serialize()`, opaque to the core). The worker script
//! `inst/worker.R` writes and reads the same layout.

use std::fmt;

pub const HEADER_LEN: usize = 12;
/// Separates fields inside a frame's text.
pub const FIELD_SEP: char = '\u{1f}';

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Kind {
    // core -> worker
    Init = 1,
    Job = 2,
    Shutdown = 3,
    // worker -> core
    Ready = 11,
    SetupFailed = 12,
    Progress = 13,
    Result = 14,
    Failed = 15,
}

impl Kind {
    fn from_u32(v: u32) -> Option<Kind> {
        Some(match v {
            1 => Kind::Init,
            2 => Kind::Job,
            3 => Kind::Shutdown,
            11 => Kind::Ready,
            12 => Kind::SetupFailed,
            13 => Kind::Progress,
            14 => Kind::Result,
            15 => Kind::Failed,
            _ => return None,
        })
    }
}

#[derive(Debug, PartialEq)]
pub struct Frame {
    pub kind: Kind,
    pub text: String,
    pub blob: Vec<u8>,
}

#[derive(Debug, PartialEq)]
pub enum ProtocolError {
    UnknownKind(u32),
    TooLarge { len: usize, max: usize },
    BadText,
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtocolError::UnknownKind(k) => write!(f, "unknown frame kind {k}"),
            ProtocolError::TooLarge { len, max } => {
                write!(f, "frame of {len} bytes exceeds the limit of {max} bytes")
            }
            ProtocolError::BadText => write!(f, "frame text is not UTF-8"),
        }
    }
}

/// Encodes one frame into a single buffer, so it goes out in one write.
pub fn encode(kind: Kind, text: &str, blobs: &[&[u8]]) -> Vec<u8> {
    let blob_len: usize = blobs.iter().map(|b| b.len()).sum();
    let mut out = Vec::with_capacity(HEADER_LEN + text.len() + blob_len);
    out.extend_from_slice(&(kind as u32).to_le_bytes());
    out.extend_from_slice(&(text.len() as u32).to_le_bytes());
    out.extend_from_slice(&(blob_len as u32).to_le_bytes());
    out.extend_from_slice(text.as_bytes());
    for b in blobs {
        out.extend_from_slice(b);
    }
    out
}

/// Incremental decoder: push bytes as they arrive, take frames as they complete.
pub struct Decoder {
    buf: Vec<u8>,
    start: usize,
    max_frame: usize,
}

impl Decoder {
    pub fn new(max_frame: usize) -> Decoder {
        Decoder { buf: Vec::new(), start: 0, max_frame }
    }

    pub fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes buffered that do not yet form a whole frame.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Length of the frame being received, once its header is in.
    fn frame_len(&self) -> Result<Option<(Kind, usize, usize)>, ProtocolError> {
        let avail = &self.buf[self.start..];
        if avail.len() < HEADER_LEN {
            return Ok(None);
        }
        let word = |i: usize| u32::from_le_bytes(avail[i..i + 4].try_into().unwrap());
        let kind = Kind::from_u32(word(0)).ok_or(ProtocolError::UnknownKind(word(0)))?;
        let (text_len, blob_len) = (word(4) as usize, word(8) as usize);
        let len = HEADER_LEN + text_len + blob_len;
        if len > self.max_frame {
            return Err(ProtocolError::TooLarge { len, max: self.max_frame });
        }
        Ok(Some((kind, text_len, blob_len)))
    }

    pub fn next_frame(&mut self) -> Result<Option<Frame>, ProtocolError> {
        let Some((kind, text_len, blob_len)) = self.frame_len()? else {
            return Ok(None);
        };
        let total = HEADER_LEN + text_len + blob_len;
        if self.pending() < total {
            // Reserve once for a large frame instead of growing step by step.
            self.buf.reserve(total - self.pending());
            return Ok(None);
        }
        let at = self.start + HEADER_LEN;
        let text = std::str::from_utf8(&self.buf[at..at + text_len])
            .map_err(|_| ProtocolError::BadText)?
            .to_owned();
        let blob = self.buf[at + text_len..at + text_len + blob_len].to_vec();
        self.start += total;
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > (1 << 20) {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        Ok(Some(Frame { kind, text, blob }))
    }
}
