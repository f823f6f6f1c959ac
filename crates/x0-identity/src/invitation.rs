//! Creating invitations on the CA node.

use std::time::Duration;

use x0_wire::InvitationToken;

use crate::ca::MeshCa;
use crate::store::{StateStore, StoreError};

/// Draws a fresh invitation ID and 256-bit secret, records the invitation (only the secret's
/// SHA-256 is stored) and returns the token to hand to the joining node.
pub fn new_invitation(
    store: &StateStore,
    ca: &MeshCa,
    bootstrap: &str,
    ttl: Duration,
    now_unix: u64,
) -> Result<InvitationToken, StoreError> {
    let mut id = [0u8; 16];
    let mut secret = [0u8; 32];
    aws_lc_rs::rand::fill(&mut id).map_err(|_| StoreError::InvalidValue("system randomness"))?;
    aws_lc_rs::rand::fill(&mut secret)
        .map_err(|_| StoreError::InvalidValue("system randomness"))?;
    let expires_at_unix = now_unix.saturating_add(ttl.as_secs());
    store.add_invitation(id, &secret, now_unix, expires_at_unix)?;
    Ok(InvitationToken {
        ca_fingerprint: ca.fingerprint(),
        invitation_id: id,
        secret,
        expires_at_unix,
        trust_domain: ca.trust_domain().to_string(),
        bootstrap: bootstrap.to_owned(),
    })
}
