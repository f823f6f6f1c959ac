//! SPIFFE IDs, trust domains and node IDs parsed from arbitrary UTF-8 (they arrive in
//! certificates, invitations and configuration). What parses must print back to the same text
//! and parse again to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use x0_identity::{NodeId, SpiffeId, TrustDomain};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(id) = text.parse::<SpiffeId>() {
        let printed = id.to_string();
        assert_eq!(printed, text);
        assert_eq!(printed.parse::<SpiffeId>().as_ref(), Ok(&id));
        assert_eq!(
            TrustDomain::new(id.trust_domain().as_str()).as_ref(),
            Ok(id.trust_domain())
        );
        if let Ok(node) = id.node() {
            assert_eq!(id.trust_domain().node_id(node), id);
        }
    }
    if let Ok(td) = TrustDomain::new(text) {
        assert_eq!(td.as_str(), text);
        assert_eq!(text.parse::<TrustDomain>().as_ref(), Ok(&td));
        assert!(
            td.id().parse::<SpiffeId>().is_err(),
            "a bare trust domain is no workload"
        );
        let mut raw = [0u8; NodeId::LEN];
        for (r, b) in raw.iter_mut().zip(data) {
            *r = *b;
        }
        let node = NodeId::from_bytes(raw);
        let sid = td.node_id(node);
        let parsed: SpiffeId = sid.to_string().parse().expect("issued IDs parse");
        assert_eq!(parsed, sid);
        assert_eq!(parsed.node(), Ok(node));
    }
    if let Ok(node) = text.parse::<NodeId>() {
        assert_eq!(node.to_string(), text);
    }
});
