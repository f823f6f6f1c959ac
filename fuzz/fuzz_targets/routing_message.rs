//! `RoutingMessage::decode` on arbitrary datagrams: never panics, and whatever decodes
//! re-encodes to the same bytes and decodes to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use x0_wire::routing::RoutingMessage;

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = RoutingMessage::decode(data) {
        let again = msg.encode();
        assert_eq!(
            again, data,
            "decode → encode is the identity on valid input"
        );
        assert_eq!(RoutingMessage::decode(&again).as_ref(), Ok(&msg));
    }
});
