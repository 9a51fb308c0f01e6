//! The pool's frame decoder fed arbitrary bytes in arbitrary pieces: it must
//! return frames or an error, never panic, and never hand out a frame whose
//! parts disagree with its header.
#![no_main]

use asyncjobs::protocol::{Decoder, HEADER_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte chooses the piece size, the rest is the stream.
    let Some((&split, bytes)) = data.split_first() else { return };
    let piece = 1 + split as usize;
    let mut d = Decoder::new(1 << 20);
    for chunk in bytes.chunks(piece) {
        match d.push(chunk) {
            Ok(frames) => {
                for f in frames {
                    assert!(HEADER_LEN + f.text.len() + f.blob.len() <= 1 << 20);
                }
            }
            Err(_) => return,
        }
    }
    assert!(d.pending() <= bytes.len());
});
