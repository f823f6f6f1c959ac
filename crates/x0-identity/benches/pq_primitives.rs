//! Cost of the post-quantum and classical primitives a node uses, through this crate's own
//! wrappers: what a link handshake, a join, a renewal and a received advert pay.
//!
//! `cargo bench -p x0-identity --bench pq_primitives` (add `-- --quick` for a fast pass).

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use rustls_pki_types::UnixTime;
use x0_identity::ca::DEFAULT_SVID_TTL;
use x0_identity::kem::{self, MlKem768KeyPair};
use x0_identity::keys::{verify_mldsa65, verify_p256};
use x0_identity::proof::{ProofRole, link_transcript};
use x0_identity::{MeshCa, NodeKeys, Role, TrustBundle, TrustDomain, node_id_of};

const NOW: u64 = 1_800_000_000;

fn now() -> UnixTime {
    UnixTime::since_unix_epoch(Duration::from_secs(NOW))
}

/// What a node signs on every link: the proof-of-possession transcript.
fn transcript(keys: &NodeKeys) -> Vec<u8> {
    link_transcript(ProofRole::Dialer, &[0x5a; 32], keys.node_id())
}

fn signatures(c: &mut Criterion) {
    let keys = NodeKeys::generate().expect("keys");
    let msg = transcript(&keys);

    let mut g = c.benchmark_group("mldsa65");
    let sig = keys.sign_mldsa(&msg).expect("sign");
    g.bench_function("sign", |b| b.iter(|| keys.sign_mldsa(black_box(&msg))));
    g.bench_function("verify", |b| {
        b.iter(|| verify_mldsa65(keys.mldsa_public_key(), black_box(&msg), black_box(&sig)))
    });
    g.finish();

    let mut g = c.benchmark_group("ecdsa_p256");
    let sig = keys.sign_tls(&msg).expect("sign");
    g.bench_function("sign", |b| b.iter(|| keys.sign_tls(black_box(&msg))));
    g.bench_function("verify", |b| {
        b.iter(|| verify_p256(keys.tls_public_point(), black_box(&msg), black_box(&sig)))
    });
    g.finish();
}

fn identity(c: &mut Criterion) {
    let mut g = c.benchmark_group("identity");
    g.bench_function("node_keys_generate", |b| b.iter(NodeKeys::generate));
    let keys = NodeKeys::generate().expect("keys");
    g.bench_function("node_id_of", |b| {
        b.iter(|| {
            node_id_of(
                black_box(keys.tls_public_point()),
                black_box(keys.mldsa_public_key()),
            )
        })
    });

    let td = TrustDomain::new("bench.mesh").expect("trust domain");
    let ca = MeshCa::create(td.clone(), now()).expect("CA");
    let bundle = TrustBundle::new(td, vec![ca.cert_der().clone()]).expect("bundle");
    g.bench_function("svid_issue", |b| {
        b.iter(|| {
            ca.issue_svid(
                black_box(keys.tls_public_point()),
                keys.node_id(),
                now(),
                DEFAULT_SVID_TTL,
            )
        })
    });
    let svid = ca
        .issue_svid(
            keys.tls_public_point(),
            keys.node_id(),
            now(),
            DEFAULT_SVID_TTL,
        )
        .expect("SVID");
    bundle
        .verify(&svid, &[], now(), Role::Server)
        .expect("SVID verifies");
    g.bench_function("svid_verify", |b| {
        b.iter(|| bundle.verify(black_box(&svid), &[], now(), Role::Server))
    });
    g.finish();
}

fn mlkem(c: &mut Criterion) {
    let mut g = c.benchmark_group("mlkem768");
    g.bench_function("keygen", |b| b.iter(MlKem768KeyPair::generate));
    let pair = MlKem768KeyPair::generate().expect("key pair");
    g.bench_function("encapsulate", |b| {
        b.iter(|| kem::encapsulate(black_box(pair.public_key())))
    });
    let (ct, _) = kem::encapsulate(pair.public_key()).expect("encapsulate");
    g.bench_function("decapsulate", |b| {
        b.iter(|| pair.decapsulate(black_box(&ct)))
    });
    g.finish();
}

/// What a routing task pays per advert it verifies: with the origin's credential cached (one
/// ML-DSA-65 verification) and not (the SVID chain too).
fn adverts(c: &mut Criterion) {
    use std::sync::Arc;
    use x0_identity::advert::{AdvertSigner, NoRevocations, OriginVerifier};

    let td = TrustDomain::new("bench.mesh").expect("trust domain");
    let ca = MeshCa::create(td.clone(), now()).expect("CA");
    let bundle = TrustBundle::new(td, vec![ca.cert_der().clone()]).expect("bundle");
    let member = || {
        let keys = Arc::new(NodeKeys::generate().expect("keys"));
        let svid = ca
            .issue_svid(
                keys.tls_public_point(),
                keys.node_id(),
                now(),
                DEFAULT_SVID_TTL,
            )
            .expect("SVID")
            .to_vec();
        let body = vec![0x5a; 31 + 8 * 21];
        let (credential, signature) = AdvertSigner::new(keys.clone(), Arc::new(svid)).sign(&body);
        (keys.node_id(), body, credential, signature)
    };
    let (a, b) = (member(), member());
    let mut g = c.benchmark_group("advert");
    let mut cached = OriginVerifier::new(bundle.clone(), Arc::new(NoRevocations));
    g.bench_function("verify_cached", |bench| {
        bench.iter(|| cached.verify(now(), &a.0, black_box(&a.1), &a.2, &a.3))
    });
    // A cache of one, fed two origins in turn: every verification checks the chain.
    let mut uncached = OriginVerifier::new(bundle, Arc::new(NoRevocations)).with_max_cached(1);
    let mut flip = false;
    g.bench_function("verify_uncached", |bench| {
        bench.iter(|| {
            flip = !flip;
            let m = if flip { &a } else { &b };
            uncached.verify(now(), &m.0, black_box(&m.1), &m.2, &m.3)
        })
    });
    g.finish();
}

criterion_group!(benches, signatures, identity, mlkem, adverts);
criterion_main!(benches);
