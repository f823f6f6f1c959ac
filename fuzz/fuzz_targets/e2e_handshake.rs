//! Arbitrary e2e-handshake payloads fed, through a session table, to the end-to-end session with
//! one peer (real mesh CA, real SVIDs, X25519MLKEM768-only TLS), with timers and transmit queue
//! driven in between. Input: a sequence of messages, each prefixed by a 2-byte big-endian
//! length; when the length's top bit is set, a client message gets the cookie the table issues
//! for it (so the fuzzer reaches the TLS server behind the return-routability check).
#![no_main]

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use rustls::time_provider::TimeProvider;
use rustls_pki_types::UnixTime;
use x0_dataplane::e2e::{
    COOKIE_LEN, E2eConfig, E2eSession, HandshakeMessage, MAX_HANDSHAKE_CHUNK, TlsRole,
};
use x0_dataplane::sessions::{SessionLimits, SessionTable};
use x0_identity::{MeshCa, NodeKeys, TrustBundle, TrustDomain};
use x0_link::{LinkMetrics, LocalIdentity, TrustState};
use x0_wire::NodeId;

const NOW: u64 = 1_800_000_000;

#[derive(Debug)]
struct FixedTime;

impl TimeProvider for FixedTime {
    fn current_time(&self) -> Option<UnixTime> {
        Some(UnixTime::since_unix_epoch(Duration::from_secs(NOW)))
    }
}

struct Fixture {
    config: Arc<E2eConfig>,
    local: NodeId,
}

static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let at = UnixTime::since_unix_epoch(Duration::from_secs(NOW - 60));
    let td = TrustDomain::new("fuzz.mesh").unwrap();
    let ca = MeshCa::create(td.clone(), at).unwrap();
    let bundle = TrustBundle::new(td, vec![ca.cert_der().clone()]).unwrap();
    let keys = Arc::new(NodeKeys::generate().unwrap());
    let svid = ca
        .issue_svid(
            keys.tls_public_point(),
            keys.node_id(),
            at,
            Duration::from_secs(86_400),
        )
        .unwrap()
        .to_vec();
    let identity = LocalIdentity::new(keys.clone(), svid, None).unwrap();
    let trust = TrustState::new(bundle, Arc::new(LinkMetrics::default()));
    Fixture {
        config: Arc::new(E2eConfig::new(identity, trust, Arc::new(FixedTime))),
        local: keys.node_id(),
    }
});

fuzz_target!(|data: &[u8]| {
    let f = &*FIXTURE;
    // Either ID order, so both sides of the collision rule are exercised.
    let peer = NodeId::from_bytes([data.first().copied().unwrap_or(0); NodeId::LEN]);
    let mut table: SessionTable<E2eSession> = SessionTable::with_cookie_secret(
        f.config.clone(),
        f.local,
        SessionLimits::default(),
        &[7; 32],
    );
    if data.len() % 3 == 0 {
        if let Ok(s) = table.get_or_insert_with(Duration::ZERO, peer, |s| s) {
            let _ = s.initiate(Duration::ZERO);
        }
    }
    let mut rest = data.get(1..).unwrap_or_default();
    let mut now = Duration::ZERO;
    while let Some((len, tail)) = rest.split_first_chunk::<2>() {
        let len = u16::from_be_bytes(*len);
        let with_cookie = len & 0x8000 != 0;
        let len = usize::from(len & 0x7fff).min(tail.len());
        let (msg, tail) = tail.split_at(len);
        let mut owned = msg.to_vec();
        if with_cookie
            && let Ok(mut m) = HandshakeMessage::decode(msg)
            && m.role == TlsRole::Client
            && !m.retry
        {
            m.cookie = Some(table.cookie(peer, m.handshake_id, now));
            m.data = &m.data[..m.data.len().min(MAX_HANDSHAKE_CHUNK - COOKIE_LEN)];
            owned = m.encode();
        }
        let _ = table.handle_handshake(now, peer, &owned, |s| s);
        if let Some(s) = table.get_mut(&peer) {
            while s.poll_transmit(now).is_some() {}
            while s.poll_event().is_some() {}
        }
        now += Duration::from_millis(300);
        for p in table.handle_timeout(now) {
            if let Some(s) = table.get_mut(&p) {
                while s.poll_transmit(now).is_some() {}
                while s.poll_event().is_some() {}
            }
        }
        assert!(table.len() <= 1, "one peer, at most one session");
        rest = tail;
    }
    assert!(
        table.get(&peer).is_none_or(|s| !s.is_established()),
        "junk never completes a mutually authenticated handshake"
    );
});
