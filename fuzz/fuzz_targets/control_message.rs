//! Control frames: `ControlMessage::decode_frame` on whole frames, and `FrameHeader::parse` +
//! `ControlMessage::decode` the way the stream reader uses them (header first, then payload).
//! Whatever decodes must re-encode to the same bytes and decode again to the same message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use x0_wire::control::{FRAME_HEADER_LEN, MAX_FRAME_LEN, revocation_list_of};
use x0_wire::{ControlMessage, FrameHeader};

fn check_round_trip(msg: &ControlMessage, kind: u8, payload: &[u8]) {
    let frame = msg.encode();
    let (head, body) = frame
        .split_first_chunk::<FRAME_HEADER_LEN>()
        .expect("an encoded frame has a header");
    let header = FrameHeader::parse(*head).expect("an encoded header parses");
    assert_eq!(header.kind, kind);
    assert_eq!(header.len, body.len());
    assert_eq!(body, payload, "payload encoding is canonical");
    assert_eq!(ControlMessage::decode(kind, body).as_ref(), Ok(msg));
    assert_eq!(ControlMessage::decode_frame(&frame).as_ref(), Ok(msg));
    if let ControlMessage::Revocations(signed) = msg {
        revocation_list_of(signed).expect("a decoded list's body decodes");
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = ControlMessage::decode_frame(data) {
        let (head, payload) = data.split_at(FRAME_HEADER_LEN);
        check_round_trip(&msg, head[0], payload);
        assert_eq!(msg.encode(), data);
    }
    if let Some((head, payload)) = data.split_first_chunk::<FRAME_HEADER_LEN>()
        && let Ok(header) = FrameHeader::parse(*head)
    {
        assert!(header.len <= MAX_FRAME_LEN);
        // The reader reads exactly `header.len` bytes; feed whatever is there to the decoder.
        let payload = &payload[..payload.len().min(header.len)];
        if let Ok(msg) = ControlMessage::decode(header.kind, payload) {
            check_round_trip(&msg, header.kind, payload);
        }
    }
});
