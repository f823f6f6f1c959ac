//! Link-state adverts signed with the node's ML-DSA-65 key.
//!
//! The key material attached to an advert is the origin's P-256 point (65 bytes) followed by
//! its raw ML-DSA-65 public key (1,952 bytes); they must hash to the origin's node ID
//! (`x0_identity::node_id_of`), so nobody can attach a key of their own. The signature is pure
//! ML-DSA-65 over `"x0t/advert/v1\0" ‖ body`: the prefix keeps advert signatures apart from
//! everything else the same key signs. Verified keys are cached per origin, so a later advert may
//! arrive without its key.

use std::collections::HashMap;
use std::sync::Arc;

use x0_identity::keys::{MLDSA65_PUBLIC_KEY_LEN, P256_POINT_LEN, verify_mldsa65};
use x0_identity::{NodeKeys, node_id_of};
use x0_routing::{AdvertAuth, Verdict};
use x0_wire::NodeId;

const CONTEXT: &[u8] = b"x0t/advert/v1\0";
const KEY_LEN: usize = P256_POINT_LEN + MLDSA65_PUBLIC_KEY_LEN;

/// ML-DSA-65 advert signing and verification for one node.
pub(crate) struct MlDsaAdvertAuth {
    keys: Arc<NodeKeys>,
    known: HashMap<NodeId, Vec<u8>>,
}

impl MlDsaAdvertAuth {
    pub(crate) fn new(keys: Arc<NodeKeys>) -> Self {
        Self {
            keys,
            known: HashMap::new(),
        }
    }
}

fn message(body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(CONTEXT.len() + body.len());
    m.extend_from_slice(CONTEXT);
    m.extend_from_slice(body);
    m
}

impl AdvertAuth for MlDsaAdvertAuth {
    fn sign(&mut self, body: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let mut key = Vec::with_capacity(KEY_LEN);
        key.extend_from_slice(self.keys.tls_public_point());
        key.extend_from_slice(self.keys.mldsa_public_key());
        // Signing only fails if the RNG does: an empty signature then fails verification.
        let sig = self.keys.sign_mldsa(&message(body)).unwrap_or_default();
        (key, sig)
    }

    fn verify(&mut self, origin: &NodeId, body: &[u8], key: &[u8], signature: &[u8]) -> Verdict {
        let public = if key.is_empty() {
            match self.known.get(origin) {
                Some(k) => k.clone(),
                None => return Verdict::UnknownOrigin,
            }
        } else {
            if key.len() != KEY_LEN {
                return Verdict::BadSignature;
            }
            let (point, mldsa) = key.split_at(P256_POINT_LEN);
            if node_id_of(point, mldsa) != *origin {
                return Verdict::BadSignature;
            }
            mldsa.to_vec()
        };
        if verify_mldsa65(&public, &message(body), signature).is_err() {
            return Verdict::BadSignature;
        }
        self.known.entry(*origin).or_insert(public);
        Verdict::Valid
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adverts_verify_only_for_their_origin_and_body() {
        let a = Arc::new(NodeKeys::generate().unwrap());
        let b = Arc::new(NodeKeys::generate().unwrap());
        let mut signer = MlDsaAdvertAuth::new(a.clone());
        let mut verifier = MlDsaAdvertAuth::new(b.clone());
        let (key, sig) = signer.sign(b"advert body");
        assert_eq!(
            verifier.verify(&a.node_id(), b"advert body", &key, &sig),
            Verdict::Valid
        );
        assert_eq!(
            verifier.verify(&a.node_id(), b"advert bodz", &key, &sig),
            Verdict::BadSignature
        );
        // Claiming to be another origin with our own key fails the binding.
        assert_eq!(
            verifier.verify(&b.node_id(), b"advert body", &key, &sig),
            Verdict::BadSignature
        );
        // Once verified, the key is cached: the advert may come without it.
        assert_eq!(
            verifier.verify(&a.node_id(), b"advert body", &[], &sig),
            Verdict::Valid
        );
        // An origin never seen without a key is unknown.
        let mut fresh = MlDsaAdvertAuth::new(b);
        assert_eq!(
            fresh.verify(&a.node_id(), b"advert body", &[], &sig),
            Verdict::UnknownOrigin
        );
        assert_eq!(
            fresh.verify(&a.node_id(), b"advert body", &key[..10], &sig),
            Verdict::BadSignature
        );
        // A plain signature of the body (e.g. `x0t identity sign` on a file) is not an advert
        // signature.
        let plain = a.sign_mldsa(b"advert body").unwrap();
        assert_eq!(
            fresh.verify(&a.node_id(), b"advert body", &key, &plain),
            Verdict::BadSignature
        );
    }

    #[test]
    fn a_router_accepts_ml_dsa_signed_adverts_and_refuses_forged_ones() {
        use x0_routing::{Instant, Router, RouterConfig};
        use x0_wire::routing::{AdvertisedLink, RoutingMessage};

        let a = Arc::new(NodeKeys::generate().unwrap());
        let b = Arc::new(NodeKeys::generate().unwrap());
        let mut router = Router::new(
            RouterConfig::default(),
            b.node_id(),
            Box::new(MlDsaAdvertAuth::new(b.clone())),
            0,
            Instant::ZERO,
        );
        router.link_up(Instant::ZERO, 1, a.node_id());
        let links = vec![AdvertisedLink {
            neighbor: b.node_id(),
            cost: 15,
            class: 0,
        }];
        let mut auth = MlDsaAdvertAuth::new(a.clone());
        let stored = Router::make_advert(
            a.node_id(),
            5,
            std::time::Duration::from_secs(3600),
            links.clone(),
            &mut auth,
        );
        router.handle_datagram(Instant::ZERO, 1, &stored.datagram);
        assert_eq!(router.lsdb().seq_of(&a.node_id()), Some(5));
        // Forged: a valid advert re-signed by another key under a's name.
        let mut evil = MlDsaAdvertAuth::new(b.clone());
        let mut forged = Router::make_advert(
            a.node_id(),
            6,
            std::time::Duration::from_secs(3600),
            links,
            &mut evil,
        );
        forged.datagram =
            RoutingMessage::Advert(forged.advert.clone(), forged.body.clone()).encode();
        router.handle_datagram(Instant::ZERO, 1, &forged.datagram);
        assert_eq!(router.stats().rejected_bad_signature, 1);
        assert_eq!(router.lsdb().seq_of(&a.node_id()), Some(5));
    }
}
