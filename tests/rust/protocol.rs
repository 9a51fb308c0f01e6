use asyncjobs::protocol::{encode, Decoder, Header, Kind, ProtocolError, HEADER_LEN};
use uuid::Uuid;

fn decode_all(d: &mut Decoder, bytes: &[u8], chunk: usize) -> Vec<asyncjobs::protocol::Frame> {
    let mut frames = Vec::new();
    for piece in bytes.chunks(chunk) {
        frames.extend(d.push(piece).unwrap());
    }
    frames
}

#[test]
fn frames_round_trip_in_any_chunking() {
    let job = Uuid::new_v4();
    let big = vec![7u8; 300_000]; // larger than the staging buffer
    let mut bytes = encode(Kind::Result, job, 42, "", &[b"abc", b"def"]);
    bytes.extend(encode(Kind::Progress, job, 42, "1\u{1f}2\u{1f}step", &[]));
    bytes.extend(encode(Kind::Failed, job, 43, "CODE\u{1f}msg", &[&big, b"tail"]));
    bytes.extend(encode(Kind::Ready, Uuid::nil(), 0, "", &[]));
    for chunk in [1, 3, 7, 4096, 65_536, bytes.len()] {
        let mut d = Decoder::new(1 << 20);
        let frames = decode_all(&mut d, &bytes, chunk);
        assert_eq!(frames.len(), 4, "chunk size {chunk}");
        assert_eq!((frames[0].kind, frames[0].job, frames[0].tag), (Kind::Result, job, 42));
        assert_eq!(frames[0].blob, b"abcdef");
        assert_eq!(frames[1].kind, Kind::Progress);
        assert_eq!(frames[1].text, "1\u{1f}2\u{1f}step");
        assert_eq!((frames[2].tag, frames[2].text.as_str()), (43, "CODE\u{1f}msg"));
        assert_eq!(frames[2].blob.len(), big.len() + 4);
        assert_eq!(&frames[2].blob[big.len()..], b"tail");
        assert_eq!((frames[3].kind, frames[3].job), (Kind::Ready, Uuid::nil()));
        assert_eq!(d.pending(), 0);
    }
}

#[test]
fn header_layout_is_magic_kind_job_tag_lengths() {
    let job = Uuid::from_bytes([1; 16]);
    let b = encode(Kind::Job, job, 0x0102030405060708, "id", &[&[9u8; 5]]);
    assert_eq!(&b[0..4], b"AJF2");
    assert_eq!(&b[4..8], &[2, 0, 0, 0]);
    assert_eq!(&b[8..24], &[1; 16]);
    assert_eq!(&b[24..32], &[8, 7, 6, 5, 4, 3, 2, 1]);
    assert_eq!(&b[32..40], &[2, 0, 0, 0, 5, 0, 0, 0]);
    assert_eq!(b.len(), HEADER_LEN + 2 + 5);
    let h = Header::decode(b[..HEADER_LEN].try_into().unwrap(), 1024).unwrap();
    assert_eq!(h, Header::new(Kind::Job, job, 0x0102030405060708, 2, 5));
}

#[test]
fn oversized_unknown_and_foreign_bytes_are_errors() {
    let mut d = Decoder::new(HEADER_LEN + 10);
    assert!(matches!(d.push(&encode(Kind::Result, Uuid::nil(), 0, "", &[&[0u8; 11]])), Err(ProtocolError::TooLarge { .. })));

    let mut bad = encode(Kind::Result, Uuid::nil(), 0, "", &[]);
    bad[4] = 99;
    assert_eq!(Decoder::new(1024).push(&bad), Err(ProtocolError::UnknownKind(99)));

    // What a job writes with cat() to the frame pipe is not a frame.
    assert!(matches!(Decoder::new(1024).push(&[b'x'; HEADER_LEN]), Err(ProtocolError::BadMagic(_))));

    let mut d = Decoder::new(1024);
    let mut bytes = encode(Kind::Failed, Uuid::nil(), 0, "", &[]);
    let mut bad = encode(Kind::Failed, Uuid::nil(), 0, "xx", &[]);
    bad[HEADER_LEN] = 0xff;
    bytes.extend(bad);
    assert_eq!(d.push(&bytes), Err(ProtocolError::BadText));
}

#[test]
fn partial_frame_waits_for_the_rest() {
    let bytes = encode(Kind::Ready, Uuid::nil(), 0, "", &[&[1u8; 100]]);
    let mut d = Decoder::new(1024);
    assert!(d.push(&bytes[..50]).unwrap().is_empty());
    assert_eq!(d.pending(), 50);
    let frames = d.push(&bytes[50..]).unwrap();
    assert_eq!(frames[0].blob.len(), 100);
}

/// Arbitrary bytes never panic the decoder, whatever the chunking: a cheap,
/// always-on cousin of the fuzz target in fuzz/.
#[test]
fn random_bytes_never_panic() {
    let mut state = 0x9e3779b97f4a7c15u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..2000 {
        let len = (next() % 200) as usize;
        let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        if next() % 2 == 0 && len >= HEADER_LEN {
            bytes[..4].copy_from_slice(b"AJF2"); // get past the magic, into lengths and kinds
        }
        let mut d = Decoder::new(1 << 16);
        for piece in bytes.chunks(1 + (next() % 50) as usize) {
            if d.push(piece).is_err() {
                break;
            }
        }
    }
}
