//! Who may originate an advert: the signing and verification the core delegates.
//!
//! In the daemon, [`AdvertAuth`] is backed by the node's ML-DSA-65 key (`x0-identity`): the key
//! material attached to an advert is the origin's P-256 point and ML-DSA-65 public key, which
//! must hash to the origin's node ID, and the signature is pure ML-DSA-65 over the advert body.
//! The simulator uses [`InsecureDigestAuth`], a keyed digest that is *not* a signature, so that
//! 10,000 simulated nodes do not spend their time verifying 10⁸ ML-DSA signatures.
//!
//! **Admission.** Only members the mesh CA admitted may originate adverts: the daemon's verifier
//! (`x0_identity::advert`) also checks the origin's SVID, attached to the advert's key
//! material, against the mesh CA and the revocation list ([`Verdict::NotAdmitted`],
//! [`Verdict::Revoked`]). When the set of admitted members shrinks (a new revocation list), the
//! verifier's [`AdvertAuth::admission_generation`] changes and the router drops the adverts of
//! every origin [`AdvertAuth::admits`] no longer admits.

use x0_wire::NodeId;

/// The outcome of checking an advert's origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Verdict {
    /// Signed by the origin, an admitted member.
    Valid,
    /// The signature (or the key's binding to the origin) does not verify. The neighbour that
    /// sent it is penalised.
    BadSignature,
    /// No key known or attached for this origin.
    UnknownOrigin,
    /// The origin was never admitted: its credential was not issued by the mesh CA for it (a
    /// minted origin). The neighbour that sent it is penalised: an honest one verified it.
    NotAdmitted,
    /// The origin was admitted once but is no longer: revoked, or its credential expired longer
    /// ago than an advert lives. Not penalised: the neighbour may not know yet.
    Revoked,
}

/// Signs our adverts and verifies others'.
pub trait AdvertAuth {
    /// Key material to attach to our adverts (may be empty) and our signature over `body`.
    fn sign(&mut self, body: &[u8]) -> (Vec<u8>, Vec<u8>);
    /// Checks `signature` over `body` by `origin`, given the attached key material, and that
    /// `origin` is an admitted member.
    fn verify(&mut self, origin: &NodeId, body: &[u8], key: &[u8], signature: &[u8]) -> Verdict;
    /// Changes whenever members may have lost their admission (a new revocation list): the
    /// router then asks [`AdvertAuth::admits`] about every origin it holds. Constant (0) by
    /// default.
    fn admission_generation(&self) -> u64 {
        0
    }
    /// Whether `origin`, whose advert was verified earlier, is still admitted. Always by
    /// default.
    fn admits(&mut self, origin: &NodeId) -> bool {
        let _ = origin;
        true
    }
}

/// FOR SIMULATION AND TESTS ONLY: a keyed 64-bit digest that anyone knowing the (public) key can
/// forge. It exercises the code paths of signing and verification at no cost.
#[derive(Debug, Clone)]
pub struct InsecureDigestAuth {
    me: NodeId,
    mesh_key: u64,
}

impl InsecureDigestAuth {
    /// `mesh_key` stands in for "the mesh's trust": adverts digested with another key fail.
    pub fn new(me: NodeId, mesh_key: u64) -> Self {
        Self { me, mesh_key }
    }

    fn digest(&self, origin: &NodeId, body: &[u8]) -> [u8; 8] {
        // FNV-1a, 64-bit.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ self.mesh_key;
        for b in origin.as_bytes().iter().chain(body) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h.to_be_bytes()
    }
}

impl AdvertAuth for InsecureDigestAuth {
    fn sign(&mut self, body: &[u8]) -> (Vec<u8>, Vec<u8>) {
        (Vec::new(), self.digest(&self.me.clone(), body).to_vec())
    }

    fn verify(&mut self, origin: &NodeId, body: &[u8], _key: &[u8], signature: &[u8]) -> Verdict {
        if signature == self.digest(origin, body) {
            Verdict::Valid
        } else {
            Verdict::BadSignature
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_auth_round_trips_and_rejects_tampering() {
        let a = NodeId::from_bytes([1; 16]);
        let mut signer = InsecureDigestAuth::new(a, 7);
        let (key, sig) = signer.sign(b"body");
        let mut other = InsecureDigestAuth::new(NodeId::from_bytes([2; 16]), 7);
        assert_eq!(other.verify(&a, b"body", &key, &sig), Verdict::Valid);
        assert_eq!(other.verify(&a, b"bodx", &key, &sig), Verdict::BadSignature);
        assert_eq!(
            other.verify(&NodeId::from_bytes([3; 16]), b"body", &key, &sig),
            Verdict::BadSignature
        );
        let mut foreign = InsecureDigestAuth::new(a, 8);
        assert_eq!(
            foreign.verify(&a, b"body", &key, &sig),
            Verdict::BadSignature
        );
    }
}
