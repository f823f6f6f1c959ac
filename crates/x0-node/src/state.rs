//! What the daemon and the CLI both read from and write to a node's state directory beyond
//! what `x0-identity`'s store owns: `meta` keys, the node's trust domain, and the CA node's own
//! SVID.

use x0_identity::authority::self_issue;
use x0_identity::{StateStore, TrustDomain};

use crate::exit::Exit;
use crate::time::{now, now_secs};

/// Key in `meta` recording the trust domain the node belongs to.
pub const META_TRUST_DOMAIN: &str = "trust_domain";
/// Key in `meta` recording the address the CA node's daemon advertises.
pub const META_ADVERTISE: &str = "advertise_addr";

/// The trust domain this node belongs to: from its SVID, its CA, or `init --trust-domain`.
pub fn node_trust_domain(store: &StateStore) -> Result<Option<TrustDomain>, Exit> {
    if let Some(m) = store.membership()? {
        return Ok(Some(m.trust_domain));
    }
    if let Some(ca) = store.ca()? {
        return Ok(Some(ca.trust_domain().clone()));
    }
    Ok(store
        .meta(META_TRUST_DOMAIN)?
        .and_then(|s| TrustDomain::new(&s).ok()))
}

/// On the CA node, (re)issues the node's own SVID if it has none or it is past half-life.
pub fn refresh_ca_node_svid(store: &StateStore) -> Result<bool, Exit> {
    let (Some(keys), Some(ca)) = (store.node_keys()?, store.ca()?) else {
        return Ok(false);
    };
    if let Some(m) = store.membership()? {
        let ttl = store.svid_ttl()?.as_secs();
        if m.not_after_unix > now_secs() + ttl / 2 {
            return Ok(false);
        }
    }
    self_issue(store, &keys, &ca, now()).map_err(|e| Exit::failure(e.to_string()))?;
    Ok(true)
}
