//! `RoutingMessage::decode` on arbitrary datagrams: never panics, and whatever decodes
//! re-encodes to the same bytes and decodes to the same value. An advert's key material is also
//! parsed as an `OriginCredential` (the daemon's format), with the same round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use x0_wire::OriginCredential;
use x0_wire::routing::{RoutingMessage, peek_kind};

fuzz_target!(|data: &[u8]| {
    let _ = peek_kind(data);
    let _ = OriginCredential::decode(data);
    if let Ok(msg) = RoutingMessage::decode(data) {
        assert!(peek_kind(data).is_some(), "a decoded message has a kind");
        let again = msg.encode();
        assert_eq!(
            again, data,
            "decode → encode is the identity on valid input"
        );
        assert_eq!(RoutingMessage::decode(&again).as_ref(), Ok(&msg));
        if let RoutingMessage::Advert(advert, _) = &msg
            && let Ok(credential) = OriginCredential::decode(&advert.origin_key)
        {
            assert_eq!(credential.encode(), advert.origin_key, "credential round trip");
        }
    }
});
