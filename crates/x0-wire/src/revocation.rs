//! CA-signed revocation lists.
//!
//! The mesh CA revokes node IDs, not certificate serials: a revoked node loses every SVID it
//! holds or could be issued. The CA's node signs each new list with the CA key (ECDSA P-256,
//! SHA-256, ASN.1 signature) and floods it over links; a node accepts a list only if the
//! signature verifies against its trust bundle and its `serial` is higher than the one it holds.
//! Signing and verification live in `x0-identity`; this module is the byte format.
//!
//! ```text
//! body   = version u8 (=1) | trust_domain (u8 len) | serial u64 | issued_at_unix u64 |
//!          count u32 | node_id [16] * count
//! signed = body (u32 len) | signature (u16 len)
//! ```

use crate::NodeId;
use crate::codec::{DecodeError, Reader, Writer};

const VERSION: u8 = 1;
/// Most entries a list may carry (1 MiB of node IDs).
pub const MAX_ENTRIES: usize = 65_536;
const MAX_BODY: usize = 300 + MAX_ENTRIES * NodeId::LEN;
const MAX_SIGNATURE: usize = 512;

/// The revoked node IDs of one mesh, at one serial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevocationList {
    /// The mesh's trust domain.
    pub trust_domain: String,
    /// Grows by one with every change; a node keeps the highest it has verified.
    pub serial: u64,
    /// When the CA signed it.
    pub issued_at_unix: u64,
    /// Revoked nodes, sorted and without duplicates.
    pub revoked: Vec<NodeId>,
}

impl RevocationList {
    /// The bytes the CA signs.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u8(VERSION)
            .bytes_u8(self.trust_domain.as_bytes())
            .u64(self.serial)
            .u64(self.issued_at_unix)
            .u32(u32::try_from(self.revoked.len()).unwrap_or(u32::MAX));
        for id in &self.revoked {
            w.bytes(id.as_bytes());
        }
        w.into_inner()
    }

    /// Parses a body; entries must be sorted and unique so that equal lists have equal bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let version = r.u8("version")?;
        if version != VERSION {
            return Err(DecodeError::UnsupportedVersion {
                what: "revocation list",
                version,
            });
        }
        let trust_domain = r.str_u8("trust_domain")?.to_owned();
        let serial = r.u64("serial")?;
        let issued_at_unix = r.u64("issued_at")?;
        let count = usize::try_from(r.u32("count")?).unwrap_or(usize::MAX);
        if count > MAX_ENTRIES {
            return Err(DecodeError::TooLong {
                field: "revoked",
                len: count,
                max: MAX_ENTRIES,
            });
        }
        if r.remaining() != count * NodeId::LEN {
            return Err(DecodeError::Invalid {
                field: "revoked",
                reason: "count does not match the bytes that follow",
            });
        }
        let mut revoked = Vec::with_capacity(count);
        for _ in 0..count {
            let id = NodeId::from_bytes(r.array("node_id")?);
            if revoked.last().is_some_and(|last| *last >= id) {
                return Err(DecodeError::Invalid {
                    field: "revoked",
                    reason: "entries not sorted and unique",
                });
            }
            revoked.push(id);
        }
        r.finish()?;
        Ok(Self {
            trust_domain,
            serial,
            issued_at_unix,
            revoked,
        })
    }
}

/// A revocation list body with the CA's signature over exactly those bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedRevocationList {
    /// The encoded [`RevocationList`].
    pub body: Vec<u8>,
    /// ECDSA P-256 SHA-256 signature (ASN.1 DER) by the CA key over `body`.
    pub signature: Vec<u8>,
}

impl SignedRevocationList {
    /// Serializes body and signature.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.bytes_u32(&self.body).bytes_u16(&self.signature);
        w.into_inner()
    }

    /// Parses the container and checks the body parses too. The signature is not checked here.
    pub fn decode(bytes: &[u8]) -> Result<(Self, RevocationList), DecodeError> {
        let mut r = Reader::new(bytes);
        let body = r.bytes_u32("body", MAX_BODY)?.to_vec();
        let signature = r.bytes_u16("signature", MAX_SIGNATURE)?.to_vec();
        r.finish()?;
        let list = RevocationList::decode(&body)?;
        Ok((Self { body, signature }, list))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rejects_unsorted_entries() {
        let list = RevocationList {
            trust_domain: "m".into(),
            serial: 1,
            issued_at_unix: 2,
            revoked: vec![NodeId::from_bytes([2; 16]), NodeId::from_bytes([1; 16])],
        };
        assert!(RevocationList::decode(&list.encode()).is_err());
    }

    #[test]
    fn rejects_huge_count_without_allocating() {
        let mut w = Writer::new();
        w.u8(1).bytes_u8(b"m").u64(1).u64(1).u32(u32::MAX);
        assert!(matches!(
            RevocationList::decode(&w.into_inner()),
            Err(DecodeError::TooLong { .. })
        ));
    }

    proptest! {
        #[test]
        fn round_trip(
            td in "[a-z.]{1,40}", serial in any::<u64>(), at in any::<u64>(),
            ids in proptest::collection::btree_set(any::<[u8; 16]>(), 0..40),
            sig in proptest::collection::vec(any::<u8>(), 0..80),
        ) {
            let list = RevocationList {
                trust_domain: td, serial, issued_at_unix: at,
                revoked: ids.into_iter().map(NodeId::from_bytes).collect(),
            };
            let signed = SignedRevocationList { body: list.encode(), signature: sig };
            let (s2, l2) = SignedRevocationList::decode(&signed.encode()).unwrap();
            prop_assert_eq!(s2, signed);
            prop_assert_eq!(l2, list);
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = SignedRevocationList::decode(&bytes);
        }
    }
}
