//! The data-plane frame decoders: link header, direct header, overlay header, end-to-end
//! header, handshake messages, and the in-place relay step and receive path on arbitrary datagrams. Whatever
//! decodes must re-encode to the bytes it came from.
#![no_main]

use std::sync::Mutex;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use x0_dataplane::aead::TrafficSecret;
use x0_dataplane::buf::PacketBuf;
use x0_dataplane::channel::{Channel, Limits};
use x0_dataplane::e2e::HandshakeMessage;
use x0_dataplane::frame::{
    DIRECT_HEADER_LEN, E2E_HEADER_LEN, E2eHeader, LINK_HEADER_LEN, LinkHeader, OverlayHeader,
    direct_overlay, forward_in_place, open_e2e, open_link, prepend_direct, strip_direct,
};
use x0_wire::NodeId;

static CHANNELS: Mutex<Option<(Channel, Channel)>> = Mutex::new(None);

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = LinkHeader::decode(data) {
        assert_eq!(h.encode()[..], data[..LINK_HEADER_LEN]);
    }
    if let Ok(h) = E2eHeader::decode(data) {
        assert_eq!(h.encode()[..], data[..E2E_HEADER_LEN]);
    }
    if let Ok((h, len)) = OverlayHeader::decode(data) {
        assert_eq!(len, h.encoded_len());
        assert_eq!(h.to_vec(), data[..len]);
        let mut copy = data.to_vec();
        let _ = forward_in_place(&mut copy, NodeId::from_bytes([7; NodeId::LEN]));
    }
    if let Ok(m) = HandshakeMessage::decode(data) {
        assert_eq!(m.encode(), data);
    }
    let mut raw = data.to_vec();
    let len = raw.len();
    let mut pb = PacketBuf::new(&mut raw, 0..len).unwrap();
    let direct = strip_direct(&mut pb).ok();
    if let Some(index) = direct {
        assert_eq!(pb.range(), DIRECT_HEADER_LEN..len);
        prepend_direct(index, &mut pb).unwrap();
        assert_eq!(pb.data(), data);
    }

    // The receive path with real keys: never panics, never authenticates junk.
    let mut guard = CHANNELS.lock().unwrap_or_else(|e| e.into_inner());
    let (link, e2e) = guard.get_or_insert_with(|| {
        let mut link = Channel::new(Limits::default());
        let mut e2e = Channel::new(Limits::default());
        link.install_rx(0, &TrafficSecret::new([1; 32]), Duration::ZERO)
            .unwrap();
        e2e.install_rx(0, &TrafficSecret::new([2; 32]), Duration::ZERO)
            .unwrap();
        (link, e2e)
    });
    let mut raw = data.to_vec();
    let len = raw.len();
    let mut pb = PacketBuf::new(&mut raw, 0..len).unwrap();
    assert!(open_link(link, Duration::ZERO, &mut pb).is_err());
    let mut raw = data.to_vec();
    if let Ok((h, hl)) = OverlayHeader::decode(&raw) {
        let len = raw.len();
        let mut pb = PacketBuf::new(&mut raw, hl..len).unwrap();
        assert!(open_e2e(e2e, Duration::ZERO, &h, &mut pb).is_err());
    }
    if direct.is_some() {
        let mut raw = data.to_vec();
        let len = raw.len();
        let mut pb = PacketBuf::new(&mut raw, DIRECT_HEADER_LEN..len).unwrap();
        let me = NodeId::from_bytes([7; NodeId::LEN]);
        let from = NodeId::from_bytes([8; NodeId::LEN]);
        assert!(open_e2e(e2e, Duration::ZERO, &direct_overlay(from, me), &mut pb).is_err());
    }
});
