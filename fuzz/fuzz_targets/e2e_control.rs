//! `ControlMessage::decode` (end-to-end control messages: the self-healing loop's path probes)
//! on arbitrary bytes: whatever decodes must encode back, padded to the input's length, to
//! exactly the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use x0_dataplane::control::ControlMessage;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = ControlMessage::decode(data) {
        let mut out = Vec::new();
        m.encode_padded(&mut out, data.len())
            .expect("a decoded message encodes");
        assert!(m.encoded_len() <= data.len());
        assert_eq!(out, data, "decode then encode (padded) is the identity");
    }
});
