//! Node identity for x0tta6bl4.
//!
//! Owns everything that says who a node is and whom it trusts:
//!
//! | Module | Job |
//! |---|---|
//! | [`keys`] | the node's ECDSA P-256 TLS key and ML-DSA-65 key, the node ID derived from both |
//! | [`kem`] | ML-KEM-768 key encapsulation (FIPS 203) for shared secrets outside TLS |
//! | [`spiffe`] | trust domains and SPIFFE IDs (`spiffe://<td>/node/<node-id>`) |
//! | [`overlay`] | the mesh's /48 ULA prefix and each node's overlay IPv6 address |
//! | [`ca`] | the mesh CA: self-signed root, X.509-SVID issuance, signed revocation lists |
//! | [`svid`] | trust bundles and the SVID verification every peer certificate passes |
//! | [`proof`] | proof-of-possession transcripts bound to a TLS session |
//! | [`advert`] | link-state advert signatures, bound to members the mesh CA admitted |
//! | [`invitation`] | one-time invitation tokens for joining nodes |
//! | [`authority`] | join and renewal handling on the CA node, and acceptance on the member |
//! | [`ca_service`] | the CA node's join/renewal service: own store connection, bounded |
//! | [`store`] | the SQLite state database (WAL, 0600) holding all of the above |
//!
//! All cryptography is aws-lc-rs (FIPS 203/204 ML-KEM/ML-DSA, ECDSA) and rcgen/webpki for X.509.
//! Nothing here reads the clock: callers pass `now`.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]
#![warn(missing_docs)]

pub mod advert;
pub mod authority;
pub mod ca;
pub mod ca_service;
pub mod invitation;
pub mod kem;
pub mod keys;
pub mod overlay;
pub mod proof;
pub mod spiffe;
pub mod store;
pub mod svid;

pub use ca::MeshCa;
pub use keys::{NodeKeys, node_id_of};
pub use overlay::{Ipv4Overlay, MeshPrefix};
pub use spiffe::{SpiffeId, TrustDomain};
pub use store::{Membership, StateStore, StoreError};
pub use svid::{Role, SvidError, TrustBundle, VerifiedSvid};
pub use x0_wire::NodeId;
