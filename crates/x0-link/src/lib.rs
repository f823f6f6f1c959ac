//! Post-quantum links between x0tta6bl4 neighbours.
//!
//! A link is a QUIC connection (quinn 0.11) with TLS 1.3 from rustls 0.23 on aws-lc-rs:
//!
//! * **Key exchange**: X25519MLKEM768 only, by default ([`KxPolicy`]). A peer offering only
//!   classical groups is refused, logged and counted (`link_failures_no_common_group`).
//! * **Authentication**: mutual, by SPIFFE X.509-SVIDs of one trust domain, verified against the
//!   mesh CA bundle with revocations applied ([`trust`]).
//! * **Proof of possession**: after the handshake each end signs the TLS exporter value with
//!   its ML-DSA-65 key; the other checks that key hashes, with the SVID key, to the node ID in
//!   the SVID. Breaking ECDSA alone does not let anyone impersonate a node.
//! * **CA service**: the same UDP port serves joins and SVID renewals ([`ca_client`]).
//!
//! | Module | Owns |
//! |---|---|
//! | [`endpoint`] | the quinn endpoint, dialling, accepting, the link handshake |
//! | [`trust`] | trust bundle + revocations, rustls verifiers |
//! | [`local`] | the node's SVID and key for rustls, swappable on renewal |
//! | [`kx`] | key-exchange policy and per-connection recording of the negotiated group |
//! | [`control`] | framed control messages on QUIC streams |
//! | [`metrics`] | counters |
//! | [`socket`] | the UDP socket under quinn: counting, optional fault injection |
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]
#![warn(missing_docs)]

pub mod ca_client;
pub mod control;
pub mod endpoint;
mod exporter;
pub mod kx;
pub mod local;
pub mod metrics;
pub mod socket;
pub mod trust;

#[cfg(test)]
mod tests;

pub use endpoint::{
    Accepted, CA_ALPN, CaRequest, Handshake, LINK_ALPN, Link, LinkConfig, LinkEndpoint, LinkError,
};
pub use kx::{KxPolicy, group_name};
pub use local::LocalIdentity;
pub use metrics::{FailureReason, LinkMetrics};
pub use socket::{Impairment, Verdict};
pub use trust::{TrustSnapshot, TrustState};
