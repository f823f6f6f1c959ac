//! `TrustBundle::verify` on arbitrary DER against a fixed bundle (the CA in `fixtures/`, built
//! once). Also feeds the bytes to the other certificate parsers: as a bundle CA, as a key holder
//! and as an intermediate next to a valid SVID. Whatever verifies must verify again to the same
//! result, for both roles, and its SPIFFE ID must print and parse back.
#![no_main]

use std::sync::LazyLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use rustls_pki_types::{CertificateDer, UnixTime};
use x0_identity::svid::cert_p256_point;
use x0_identity::{Role, SpiffeId, TrustBundle, TrustDomain};

/// Matches `examples/make_seeds.rs`.
const TRUST_DOMAIN: &str = "fuzz.mesh";
const NOW: u64 = 1_800_000_000;
static CA_DER: &[u8] = include_bytes!("../fixtures/ca.der");
static SVID_DER: &[u8] = include_bytes!("../fixtures/svid.der");

static TD: LazyLock<TrustDomain> =
    LazyLock::new(|| TrustDomain::new(TRUST_DOMAIN).expect("fixed trust domain"));
static BUNDLE: LazyLock<TrustBundle> = LazyLock::new(|| {
    let bundle = TrustBundle::new(TD.clone(), vec![CertificateDer::from(CA_DER)])
        .expect("fixtures/ca.der is a valid bundle");
    bundle
        .verify(&CertificateDer::from(SVID_DER), &[], now(), Role::Server)
        .expect("fixtures/svid.der verifies: regenerate with examples/make_seeds.rs");
    bundle
});

fn now() -> UnixTime {
    UnixTime::since_unix_epoch(Duration::from_secs(NOW))
}

fuzz_target!(|data: &[u8]| {
    let der = CertificateDer::from(data);
    let server = BUNDLE.verify(&der, &[], now(), Role::Server);
    let client = BUNDLE.verify(&der, &[], now(), Role::Client);
    assert_eq!(server.is_ok(), client.is_ok(), "SVIDs serve both roles");
    if let (Ok(v), Ok(c)) = (server, client) {
        assert_eq!(v, c);
        assert_eq!(BUNDLE.verify(&der, &[], now(), Role::Server), Ok(v.clone()));
        let printed = v.spiffe_id.to_string();
        assert_eq!(printed.parse::<SpiffeId>().as_ref(), Ok(&v.spiffe_id));
        assert_eq!(v.spiffe_id.trust_domain(), &*TD);
        assert_eq!(v.spiffe_id.node(), Ok(v.node_id));
        assert_eq!(cert_p256_point(data).as_ref(), Ok(&v.tls_point));
        assert!(v.not_before_unix <= NOW && NOW <= v.not_after_unix);
    }

    let _ = TrustBundle::new(TD.clone(), vec![der.clone().into_owned()]);
    let _ = cert_p256_point(data);
    // Junk intermediates must not stop a valid SVID from verifying.
    let valid = BUNDLE.verify(&CertificateDer::from(SVID_DER), &[der], now(), Role::Client);
    assert!(valid.is_ok(), "{valid:?}");
});
