//! Feeds a router an arbitrary sequence of inputs: links coming up and down, datagrams (raw
//! bytes, and well-formed adverts with arbitrary contents and signatures that may or may not
//! verify, our own included, with sequence numbers up to `u64::MAX`), traffic notes and time
//! passing. The router must never panic, its timeout must never go backwards past `now`, and its
//! outputs must always decode.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use x0_routing::{InsecureDigestAuth, Instant, Router, RouterConfig};
use x0_wire::NodeId;
use x0_wire::routing::{Advert, AdvertBody, AdvertisedLink, RoutingMessage};

const KEY: u64 = 7;

fn node(b: u8) -> NodeId {
    NodeId::from_bytes([b % 8; 16])
}

fuzz_target!(|data: &[u8]| {
    let me = node(0);
    let mut router = Router::new(
        RouterConfig::default(),
        me,
        Box::new(InsecureDigestAuth::new(me, KEY)),
        0,
        Instant::ZERO,
    );
    let mut now = Instant::ZERO;
    let mut input = data;
    while let Some((&op, rest)) = input.split_first() {
        input = rest;
        let arg = |i: &mut &[u8]| -> u8 {
            let (v, r) = i.split_first().map(|(v, r)| (*v, r)).unwrap_or((0, &[]));
            *i = r;
            v
        };
        match op % 7 {
            0 => {
                let l = arg(&mut input);
                router.link_up(now, u64::from(l % 4), node(l));
            }
            1 => router.link_down(now, u64::from(arg(&mut input) % 4)),
            2 => {
                let l = u64::from(arg(&mut input) % 5);
                let len = usize::from(arg(&mut input)).min(input.len());
                let (bytes, rest) = input.split_at(len);
                input = rest;
                router.handle_datagram(now, l, bytes);
            }
            3 => {
                // A well-formed advert, validly or invalidly signed.
                let l = u64::from(arg(&mut input) % 4);
                let origin = node(arg(&mut input));
                // Small numbers, or ones at the very top of the space (our own number must
                // never wrap).
                let seq = match arg(&mut input) {
                    s if s >= 0xf0 => u64::MAX - u64::from(s - 0xf0),
                    s => u64::from(s),
                };
                let mut links: Vec<AdvertisedLink> = (0..arg(&mut input) % 5)
                    .map(|_| AdvertisedLink {
                        neighbor: node(arg(&mut input)),
                        cost: u32::from(arg(&mut input)),
                        class: arg(&mut input),
                    })
                    .filter(|x| x.neighbor != origin)
                    .collect();
                links.sort_by_key(|x| x.neighbor);
                links.dedup_by_key(|x| x.neighbor);
                let body = AdvertBody {
                    origin,
                    seq,
                    lifetime_s: u32::from(arg(&mut input)),
                    links,
                };
                let bytes = body.encode();
                let key = if arg(&mut input) % 2 == 0 {
                    KEY
                } else {
                    KEY + 1
                };
                let (k, sig) =
                    x0_routing::AdvertAuth::sign(&mut InsecureDigestAuth::new(origin, key), &bytes);
                let msg = RoutingMessage::Advert(
                    Advert {
                        body: bytes,
                        origin_key: k,
                        signature: sig,
                    },
                    body,
                );
                router.handle_datagram(now, l, &msg.encode());
            }
            4 => router.note_traffic(now, u64::from(arg(&mut input) % 4)),
            5 => {
                now = now + Duration::from_millis(u64::from(arg(&mut input)) * 10);
                router.handle_timeout(now);
            }
            _ => {
                let dst = node(arg(&mut input));
                let _ = router.next_hop(now, &dst);
                let _ = router.disjoint_paths(now, &dst, 3);
            }
        }
        while let Some((_, bytes)) = router.poll_transmit() {
            assert!(
                RoutingMessage::decode(&bytes).is_ok(),
                "router sent an undecodable datagram"
            );
        }
        while router.poll_event().is_some() {}
        if let Some(t) = router.poll_timeout() {
            // A deadline in the past means "now"; it must not be before the epoch of the run.
            assert!(t >= Instant::ZERO);
        }
    }
});
