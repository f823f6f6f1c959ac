//! The credential an advert's origin attaches to it: its X.509-SVID and its ML-DSA-65 public
//! key.
//!
//! It travels as the advert's `origin_key` (see [`crate::routing`]). The SVID proves that the
//! mesh CA admitted the origin (its SPIFFE ID names the origin's node ID, and the node ID is the
//! hash of the P-256 key in the SVID and the ML-DSA-65 key next to it); the ML-DSA-65 key checks
//! the advert's signature. Verification lives in `x0-identity`; this module is the byte format.
//!
//! ```text
//! OriginCredential = version u8 (=1) | svid (u16 len) | mldsa_public_key (u16 len)
//! ```

use crate::codec::{DecodeError, Reader, Writer};

const VERSION: u8 = 1;
/// Longest SVID a credential may carry (a node SVID is ~500 bytes).
pub const MAX_SVID_LEN: usize = 2048;
/// Longest ML-DSA public key a credential may carry (ML-DSA-87's; ML-DSA-65's is 1,952 bytes).
pub const MAX_MLDSA_KEY_LEN: usize = 2592;

/// An origin's credential, borrowed from the advert that carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OriginCredential<'a> {
    /// The origin's X.509-SVID, DER.
    pub svid: &'a [u8],
    /// The origin's raw ML-DSA public key.
    pub mldsa_public_key: &'a [u8],
}

impl<'a> OriginCredential<'a> {
    /// The bytes to attach to an advert.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u8(VERSION)
            .bytes_u16(self.svid)
            .bytes_u16(self.mldsa_public_key);
        w.into_inner()
    }

    /// Parses a credential; no trailing bytes.
    pub fn decode(bytes: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let version = r.u8("credential version")?;
        if version != VERSION {
            return Err(DecodeError::UnsupportedVersion {
                what: "origin credential",
                version,
            });
        }
        let svid = r.bytes_u16("svid", MAX_SVID_LEN)?;
        let mldsa_public_key = r.bytes_u16("mldsa public key", MAX_MLDSA_KEY_LEN)?;
        r.finish()?;
        Ok(Self {
            svid,
            mldsa_public_key,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rejects_other_versions_oversize_fields_and_trailing_bytes() {
        let c = OriginCredential {
            svid: &[1, 2, 3],
            mldsa_public_key: &[4; 10],
        };
        let mut bytes = c.encode();
        assert_eq!(OriginCredential::decode(&bytes), Ok(c));
        bytes.push(0);
        assert!(OriginCredential::decode(&bytes).is_err());
        let mut v2 = c.encode();
        v2[0] = 2;
        assert!(OriginCredential::decode(&v2).is_err());
        let big = vec![0; MAX_SVID_LEN + 1];
        let oversize = OriginCredential {
            svid: &big,
            mldsa_public_key: &[],
        };
        assert!(OriginCredential::decode(&oversize.encode()).is_err());
        assert!(OriginCredential::decode(&[]).is_err());
    }

    proptest! {
        #[test]
        fn round_trip(
            svid in proptest::collection::vec(any::<u8>(), 0..600),
            key in proptest::collection::vec(any::<u8>(), 0..2000),
        ) {
            let c = OriginCredential { svid: &svid, mldsa_public_key: &key };
            let bytes = c.encode();
            prop_assert_eq!(OriginCredential::decode(&bytes), Ok(c));
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = OriginCredential::decode(&bytes);
        }
    }
}
