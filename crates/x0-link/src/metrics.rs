//! Link counters.
//!
//! Plain atomics owned by the endpoint and shared with its verifiers and socket; the daemon
//! exports them (Prometheus arrives with the observability work) and logs a snapshot.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

/// Why a handshake or link setup failed. Each reason has its own counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum FailureReason {
    /// The peer offered no key-exchange group we accept (e.g. classical only).
    NoCommonGroup,
    /// The peer's certificate expired (or is not yet valid).
    CertificateExpired,
    /// The certificate was not issued by our mesh CA.
    UntrustedIssuer,
    /// The certificate names another trust domain.
    WrongTrustDomain,
    /// The certificate breaks the X509-SVID rules, or is malformed or oversize.
    BadCertificate,
    /// The peer's node is revoked.
    Revoked,
    /// A link attempt without a client certificate.
    Unauthenticated,
    /// The ML-DSA proof of possession was missing or did not verify.
    ProofOfPossession,
    /// The peer is not the node we dialled.
    UnexpectedPeer,
    /// No answer in time.
    Timeout,
    /// Any other transport or TLS error.
    Other,
}

impl FailureReason {
    /// All reasons, in counter order.
    pub const ALL: [Self; 11] = [
        Self::NoCommonGroup,
        Self::CertificateExpired,
        Self::UntrustedIssuer,
        Self::WrongTrustDomain,
        Self::BadCertificate,
        Self::Revoked,
        Self::Unauthenticated,
        Self::ProofOfPossession,
        Self::UnexpectedPeer,
        Self::Timeout,
        Self::Other,
    ];

    /// Snake-case name used in logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoCommonGroup => "no_common_group",
            Self::CertificateExpired => "certificate_expired",
            Self::UntrustedIssuer => "untrusted_issuer",
            Self::WrongTrustDomain => "wrong_trust_domain",
            Self::BadCertificate => "bad_certificate",
            Self::Revoked => "revoked",
            Self::Unauthenticated => "unauthenticated",
            Self::ProofOfPossession => "proof_of_possession",
            Self::UnexpectedPeer => "unexpected_peer",
            Self::Timeout => "timeout",
            Self::Other => "other",
        }
    }

    fn index(self) -> usize {
        Self::ALL
            .iter()
            .position(|r| *r == self)
            .unwrap_or(Self::ALL.len() - 1)
    }
}

/// Counters of one link endpoint.
#[derive(Debug, Default)]
pub struct LinkMetrics {
    /// Links established with X25519MLKEM768.
    pub links_hybrid_pq: AtomicU64,
    /// Links established with a classical group (only possible with the dangerous switch).
    pub links_classical: AtomicU64,
    /// Links currently open (maintained by the daemon's link table).
    pub links_open: AtomicU64,
    /// Certificate verifications refused by our SPIFFE verifier (any reason).
    pub certificates_refused: AtomicU64,
    /// Stateless retries sent to unvalidated addresses under handshake load.
    pub retries_sent: AtomicU64,
    /// Link handshakes whose listener held its proof of possession back until the client's
    /// certificate verified, instead of sending it as 0.5-RTT data (handshake load).
    pub proofs_deferred: AtomicU64,
    /// Datagrams received on the link socket.
    pub datagrams_received: AtomicU64,
    /// Datagrams that break QUIC's invariants (RFC 8999) or RFC 9000 §14.1; quinn drops them.
    pub datagrams_malformed: AtomicU64,
    /// Control messages that did not parse.
    pub control_messages_malformed: AtomicU64,
    failures: [AtomicU64; FailureReason::ALL.len()],
}

impl LinkMetrics {
    /// Counts one failure.
    pub fn failure(&self, reason: FailureReason) {
        self.failures[reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Failures so far for `reason`.
    pub fn failures(&self, reason: FailureReason) -> u64 {
        self.failures[reason.index()].load(Ordering::Relaxed)
    }

    /// Every counter by name.
    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        let mut m = BTreeMap::new();
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        m.insert("links_hybrid_pq".into(), get(&self.links_hybrid_pq));
        m.insert("links_classical".into(), get(&self.links_classical));
        m.insert("links_open".into(), get(&self.links_open));
        m.insert(
            "certificates_refused".into(),
            get(&self.certificates_refused),
        );
        m.insert("retries_sent".into(), get(&self.retries_sent));
        m.insert("proofs_deferred".into(), get(&self.proofs_deferred));
        m.insert("datagrams_received".into(), get(&self.datagrams_received));
        m.insert("datagrams_malformed".into(), get(&self.datagrams_malformed));
        m.insert(
            "control_messages_malformed".into(),
            get(&self.control_messages_malformed),
        );
        for r in FailureReason::ALL {
            m.insert(format!("link_failures_{}", r.as_str()), self.failures(r));
        }
        m
    }
}
