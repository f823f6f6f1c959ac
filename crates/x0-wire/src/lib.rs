//! Wire formats of x0tta6bl4.
//!
//! Everything a node reads from the network or from a person's clipboard is parsed here, by
//! checked decoders that never panic, never allocate more than the input justifies, and reject
//! trailing bytes. Each type has an `encode` that round-trips through its `decode` (property
//! tests at the bottom of each file) and every decoder has a fuzz target under `fuzz/`.
//!
//! The crate is pure: no clock, no randomness, no sockets (enforced by `clippy.toml`). Callers
//! bring `now` and randomly drawn values.
//!
//! | Module | Wire item |
//! |---|---|
//! | [`node_id`] | the 128-bit node identifier shared by every layer |
//! | [`invite`] | one-time invitation tokens handed to a joining node |
//! | [`control`] | framed messages on a link's control stream and on the CA service |
//! | [`revocation`] | CA-signed lists of revoked node IDs, flooded over links |
//! | [`routing`] | liveness probes, link-state adverts and their acknowledgements |
//! | [`origin`] | the credential (SVID and ML-DSA key) an advert's origin attaches |
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]
#![warn(missing_docs)]

pub mod codec;
pub mod control;
pub mod invite;
pub mod node_id;
pub mod origin;
pub mod revocation;
pub mod routing;

pub use codec::DecodeError;
pub use control::{ControlMessage, DataChannel, FrameHeader};
pub use invite::InvitationToken;
pub use node_id::NodeId;
pub use origin::OriginCredential;
pub use revocation::{RevocationList, SignedRevocationList};
