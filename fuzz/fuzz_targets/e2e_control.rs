//! `ControlMessage::decode` (end-to-end control messages: the self-healing loop's path probes)
//! on arbitrary bytes: whatever decodes must encode back to exactly the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use x0_dataplane::control::ControlMessage;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = ControlMessage::decode(data) {
        let mut out = Vec::new();
        m.encode(&mut out).expect("a decoded message encodes");
        assert_eq!(out.len(), m.encoded_len());
        assert_eq!(out, data, "decode then encode is the identity");
    }
});
