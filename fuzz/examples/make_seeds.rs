//! Writes the fixed CA and SVID the `svid_verify` target trusts (`fixtures/`) and a valid seed
//! input for every target (`seeds/<target>/`), so that fuzzing starts from inputs that get past
//! the first length and tag checks.
//!
//! `cargo run --manifest-path fuzz/Cargo.toml --example make_seeds` (from the repository root).
//! Re-running replaces the CA: every SVID seed is regenerated with it.

use std::fs;
use std::path::Path;
use std::time::Duration;

use rustls_pki_types::UnixTime;
use x0_identity::{MeshCa, NodeId, NodeKeys, TrustDomain};
use x0_wire::control::{Hello, Issued, JoinRequest, RefusalCode, Refused, RenewRequest};
use x0_wire::{ControlMessage, InvitationToken, RevocationList};

/// Matches `fuzz_targets/svid_verify.rs`.
const TRUST_DOMAIN: &str = "fuzz.mesh";
const NOW: u64 = 1_800_000_000;

fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    fs::create_dir_all(dir)?;
    fs::write(dir.join(name), bytes)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let seeds = root.join("seeds");
    let now = UnixTime::since_unix_epoch(Duration::from_secs(NOW));
    let td = TrustDomain::new(TRUST_DOMAIN)?;
    let ca = MeshCa::create(td.clone(), now)?;
    let keys = NodeKeys::generate()?;
    let svid = ca.issue_svid(
        keys.tls_public_point(),
        keys.node_id(),
        now,
        Duration::from_secs(3600),
    )?;
    write(&root.join("fixtures"), "ca.der", ca.cert_der())?;
    write(&root.join("fixtures"), "svid.der", &svid)?;
    write(&seeds.join("svid_verify"), "svid.der", &svid)?;
    write(&seeds.join("svid_verify"), "ca.der", ca.cert_der())?;

    let token = InvitationToken {
        ca_fingerprint: ca.fingerprint(),
        ca_node: keys.node_id(),
        invitation_id: [0x11; 16],
        secret: [0x22; 32],
        expires_at_unix: NOW + 3600,
        trust_domain: TRUST_DOMAIN.into(),
        bootstrap: "[2001:db8::1]:7101".into(),
    };
    let dir = seeds.join("invitation_token");
    write(&dir, "binary", &token.encode())?;
    write(&dir, "text", token.to_text().as_bytes())?;

    let list = RevocationList {
        trust_domain: TRUST_DOMAIN.into(),
        serial: 3,
        issued_at_unix: NOW,
        revoked: vec![NodeId::from_bytes([1; 16]), keys.node_id()],
    };
    let signed = ca.sign_revocations(&list)?;
    let dir = seeds.join("revocation_list");
    write(&dir, "signed", &signed.encode())?;
    write(&dir, "body", &list.encode())?;

    let small = |n: usize, b: u8| vec![b; n];
    let messages = [
        ControlMessage::Hello(Hello {
            mldsa_public_key: small(64, 1),
            pop_signature: small(64, 2),
            revocation_serial: 3,
        }),
        ControlMessage::Revocations(signed.clone()),
        ControlMessage::JoinRequest(JoinRequest {
            invitation_id: [0x11; 16],
            secret: [0x22; 32],
            tls_spki_der: keys.tls_spki_der()?,
            mldsa_public_key: small(64, 3),
            tls_signature: small(70, 4),
            mldsa_signature: small(64, 5),
        }),
        ControlMessage::RenewRequest(RenewRequest {
            mldsa_public_key: small(64, 6),
            pop_signature: small(64, 7),
        }),
        ControlMessage::Issued(Issued {
            trust_domain: TRUST_DOMAIN.into(),
            svid_der: svid.to_vec(),
            bundle_der: vec![ca.cert_der().to_vec()],
            revocations: Some(signed),
        }),
        ControlMessage::Refused(Refused {
            code: RefusalCode::InvitationUsed,
            message: "invitation already used".into(),
        }),
        ControlMessage::CaProofRequest,
    ];
    let dir = seeds.join("control_message");
    for msg in &messages {
        write(&dir, msg.name(), &msg.encode())?;
    }

    let dir = seeds.join("spiffe_id");
    write(
        &dir,
        "node",
        td.node_id(keys.node_id()).to_string().as_bytes(),
    )?;
    write(&dir, "workload", b"spiffe://fuzz.mesh/workload/a.b-c_d")?;
    write(&dir, "trust_domain", TRUST_DOMAIN.as_bytes())?;
    write(&dir, "node_id", keys.node_id().to_string().as_bytes())?;

    println!(
        "wrote {} and {}",
        root.join("fixtures").display(),
        seeds.display()
    );
    Ok(())
}
