//! Creating invitations on the CA node.

use std::time::Duration;

use x0_wire::InvitationToken;

use crate::ca::MeshCa;
use crate::store::{StateStore, StoreError};

/// Draws a fresh invitation ID and 256-bit secret, records the invitation (only the secret's
/// SHA-256 is stored) and returns the token to hand to the joining node. The token names this
/// node (the CA node, whose store this is) as the only node the joiner may send the secret to.
pub fn new_invitation(
    store: &StateStore,
    ca: &MeshCa,
    bootstrap: &str,
    ttl: Duration,
    now_unix: u64,
) -> Result<InvitationToken, StoreError> {
    let ca_node = store
        .node_keys()?
        .ok_or_else(|| StoreError::NoNodeIdentity(store.dir().display().to_string()))?
        .node_id();
    let mut id = [0u8; 16];
    let mut secret = [0u8; 32];
    aws_lc_rs::rand::fill(&mut id).map_err(|_| StoreError::InvalidValue("system randomness"))?;
    aws_lc_rs::rand::fill(&mut secret)
        .map_err(|_| StoreError::InvalidValue("system randomness"))?;
    let expires_at_unix = now_unix.saturating_add(ttl.as_secs());
    store.add_invitation(id, &secret, now_unix, expires_at_unix)?;
    Ok(InvitationToken {
        ca_fingerprint: ca.fingerprint(),
        ca_node,
        invitation_id: id,
        secret,
        expires_at_unix,
        trust_domain: ca.trust_domain().to_string(),
        bootstrap: bootstrap.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rustls_pki_types::UnixTime;

    use super::*;
    use crate::keys::NodeKeys;
    use crate::spiffe::TrustDomain;

    const NOW: u64 = 1_800_000_000;

    #[test]
    fn the_token_names_the_ca_node_and_needs_its_identity() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(&dir.path().join("state")).unwrap();
        let now = UnixTime::since_unix_epoch(Duration::from_secs(NOW));
        let ca = MeshCa::create(TrustDomain::new("mesh.test").unwrap(), now).unwrap();
        let ttl = Duration::from_secs(60);
        match new_invitation(&store, &ca, "192.0.2.1:7101", ttl, NOW) {
            Err(e @ StoreError::NoNodeIdentity(_)) => {
                assert!(e.to_string().contains("x0t init --state-dir"), "{e}");
            }
            other => panic!("expected NoNodeIdentity, got {other:?}"),
        }
        assert!(store.invitations().unwrap().is_empty());

        let keys = NodeKeys::generate().unwrap();
        store.create_node_keys(&keys, NOW).unwrap();
        let token = new_invitation(&store, &ca, "192.0.2.1:7101", ttl, NOW).unwrap();
        assert_eq!(token.ca_node, keys.node_id());
        assert_eq!(token.ca_fingerprint, ca.fingerprint());
        assert_eq!(token.expires_at_unix, NOW + 60);
        assert_eq!(store.invitations().unwrap()[0].id, token.invitation_id);
    }
}
