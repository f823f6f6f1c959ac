//! Proof-of-possession transcripts.
//!
//! After a TLS handshake both ends derive the same 32-byte value from the session with the TLS
//! exporter (RFC 8446 §7.5, label [`EXPORTER_LABEL`], empty context) and sign a transcript that
//! binds that value to their role and node ID. A signature therefore proves the ML-DSA-65 key
//! was used for *this* session, by *this* end, and cannot be replayed into another session or
//! reflected back to its sender.

use x0_wire::NodeId;

/// TLS exporter label for proofs of possession.
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-x0t-proof-of-possession";
/// Length of the exported value.
pub const EXPORTER_LEN: usize = 32;

/// Which end of a session signs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProofRole {
    /// The end that opened the link.
    Dialer,
    /// The end that accepted the link.
    Listener,
    /// A member renewing its SVID on the CA service.
    Renewer,
    /// The CA node proving itself to a joining node on the CA service, before the joiner sends
    /// its invitation secret.
    CaService,
}

impl ProofRole {
    fn label(self) -> &'static [u8] {
        match self {
            Self::Dialer => b"dialer",
            Self::Listener => b"listener",
            Self::Renewer => b"renewer",
            Self::CaService => b"ca-service",
        }
    }
}

/// What a node signs with ML-DSA-65 to prove it holds the key bound to `node` in this session.
pub fn link_transcript(role: ProofRole, exporter: &[u8; EXPORTER_LEN], node: NodeId) -> Vec<u8> {
    let mut t = Vec::with_capacity(64 + EXPORTER_LEN);
    t.extend_from_slice(b"x0t/pop/v1/");
    t.extend_from_slice(role.label());
    t.push(0);
    t.extend_from_slice(exporter);
    t.extend_from_slice(node.as_bytes());
    t
}

/// What a joining node signs with both its keys.
pub fn join_transcript(
    exporter: &[u8; EXPORTER_LEN],
    invitation_id: &[u8; 16],
    tls_spki_der: &[u8],
    mldsa_public_key: &[u8],
) -> Vec<u8> {
    let mut t = Vec::with_capacity(128 + tls_spki_der.len() + mldsa_public_key.len());
    t.extend_from_slice(b"x0t/join/v1");
    t.push(0);
    t.extend_from_slice(exporter);
    t.extend_from_slice(invitation_id);
    for part in [tls_spki_der, mldsa_public_key] {
        t.extend_from_slice(&u32::try_from(part.len()).unwrap_or(u32::MAX).to_be_bytes());
        t.extend_from_slice(part);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_and_sessions_give_distinct_transcripts() {
        let n = NodeId::from_bytes([1; 16]);
        let e = [7u8; 32];
        let d = link_transcript(ProofRole::Dialer, &e, n);
        assert_ne!(d, link_transcript(ProofRole::Listener, &e, n));
        assert_ne!(d, link_transcript(ProofRole::Renewer, &e, n));
        assert_ne!(d, link_transcript(ProofRole::CaService, &e, n));
        assert_ne!(
            link_transcript(ProofRole::Listener, &e, n),
            link_transcript(ProofRole::CaService, &e, n)
        );
        assert_ne!(d, link_transcript(ProofRole::Dialer, &[8u8; 32], n));
        assert_ne!(
            d,
            link_transcript(ProofRole::Dialer, &e, NodeId::from_bytes([2; 16]))
        );
    }
}
