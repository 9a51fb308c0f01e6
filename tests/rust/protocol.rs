use asyncjobs::protocol::{encode, Decoder, Kind, ProtocolError, HEADER_LEN};

#[test]
fn frames_round_trip_in_any_chunking() {
    let mut bytes = encode(Kind::Result, "", &[b"abc", b"def"]);
    bytes.extend(encode(Kind::Progress, "1\u{1f}2\u{1f}step", &[]));
    for chunk in [1, 3, 7, bytes.len()] {
        let mut d = Decoder::new(1024);
        let mut frames = Vec::new();
        for piece in bytes.chunks(chunk) {
            d.push(piece);
            while let Some(f) = d.next_frame().unwrap() {
                frames.push(f);
            }
        }
        assert_eq!(frames.len(), 2, "chunk size {chunk}");
        assert_eq!(frames[0].kind, Kind::Result);
        assert_eq!(frames[0].blob, b"abcdef");
        assert_eq!(frames[1].kind, Kind::Progress);
        assert_eq!(frames[1].text, "1\u{1f}2\u{1f}step");
        assert_eq!(d.pending(), 0);
    }
}

#[test]
fn header_is_little_endian_kind_text_blob() {
    let b = encode(Kind::Job, "id", &[&[9u8; 5]]);
    assert_eq!(&b[..HEADER_LEN], &[2, 0, 0, 0, 2, 0, 0, 0, 5, 0, 0, 0]);
    assert_eq!(b.len(), HEADER_LEN + 2 + 5);
}

#[test]
fn oversized_and_unknown_frames_are_errors() {
    let mut d = Decoder::new(HEADER_LEN + 10);
    d.push(&encode(Kind::Result, "", &[&[0u8; 11]]));
    assert!(matches!(d.next_frame(), Err(ProtocolError::TooLarge { .. })));

    let mut d = Decoder::new(1024);
    d.push(&[99, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(d.next_frame(), Err(ProtocolError::UnknownKind(99)));

    let mut d = Decoder::new(1024);
    d.push(&encode(Kind::Failed, "", &[]));
    let mut bad = encode(Kind::Failed, "xx", &[]);
    bad[HEADER_LEN] = 0xff;
    d.push(&bad);
    assert!(d.next_frame().unwrap().is_some());
    assert_eq!(d.next_frame(), Err(ProtocolError::BadText));
}

#[test]
fn partial_frame_waits_for_the_rest() {
    let bytes = encode(Kind::Ready, "", &[&[1u8; 100]]);
    let mut d = Decoder::new(1024);
    d.push(&bytes[..50]);
    assert!(d.next_frame().unwrap().is_none());
    d.push(&bytes[50..]);
    assert_eq!(d.next_frame().unwrap().unwrap().blob.len(), 100);
}
