//! The node identifier.
//!
//! A node ID is the first 128 bits of a SHA-256 over the node's two public keys (TLS ECDSA P-256
//! and ML-DSA-65); `x0-identity` derives it. It names the node in SPIFFE IDs
//! (`spiffe://<trust-domain>/node/<node-id>`), in routing and in logs, always as 32 lowercase
//! hex digits.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use thiserror::Error;

/// A 128-bit node identifier.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId([u8; NodeId::LEN]);

/// A string that is not 32 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("a node ID is 32 lowercase hex digits, got {0:?}")]
pub struct NodeIdParseError(String);

impl NodeId {
    /// Length in bytes.
    pub const LEN: usize = 16;

    /// Wraps raw bytes.
    pub const fn from_bytes(bytes: [u8; Self::LEN]) -> Self {
        Self(bytes)
    }

    /// The raw bytes.
    pub const fn as_bytes(&self) -> &[u8; Self::LEN] {
        &self.0
    }

    /// The first eight hex digits, for compact log lines and tables.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..4])
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({self})")
    }
}

impl FromStr for NodeId {
    type Err = NodeIdParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lowercase_hex = s
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if s.len() != 2 * Self::LEN || !lowercase_hex {
            return Err(NodeIdParseError(s.chars().take(80).collect()));
        }
        let mut out = [0u8; Self::LEN];
        hex::decode_to_slice(s, &mut out).map_err(|_| NodeIdParseError(s.to_owned()))?;
        Ok(Self(out))
    }
}

impl Serialize for NodeId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for NodeId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rejects_uppercase_and_wrong_length() {
        assert!(
            "00112233445566778899AABBCCDDEEFF"
                .parse::<NodeId>()
                .is_err()
        );
        assert!("0011".parse::<NodeId>().is_err());
        assert!(
            "g0112233445566778899aabbccddeeff"
                .parse::<NodeId>()
                .is_err()
        );
    }

    proptest! {
        #[test]
        fn display_parse_round_trip(bytes in any::<[u8; 16]>()) {
            let id = NodeId::from_bytes(bytes);
            prop_assert_eq!(id.to_string().parse::<NodeId>().unwrap(), id);
        }

        #[test]
        fn parse_never_panics(s in ".{0,64}") {
            let _ = s.parse::<NodeId>();
        }
    }
}
