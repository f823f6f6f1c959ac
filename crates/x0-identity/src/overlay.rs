//! Overlay addressing.
//!
//! Every mesh owns a /48 unique local prefix (RFC 4193): `fd` followed by a 40-bit global ID. RFC
//! 4193 asks for a pseudo-random global ID; we take the first 40 bits of
//! `SHA-256("x0t/ula/v1" || trust domain)`, which is as random as the RFC's suggested algorithm
//! and lets every node compute the prefix from the trust domain alone. A node's overlay address
//! is that prefix followed by the first 80 bits of its node ID.

use std::fmt;
use std::net::Ipv6Addr;

use x0_wire::NodeId;

use crate::keys::sha256;
use crate::spiffe::TrustDomain;

/// The /48 overlay prefix of a mesh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MeshPrefix([u8; 6]);

impl MeshPrefix {
    /// Prefix length in bits.
    pub const LEN: u8 = 48;

    /// The prefix of the mesh named by `trust_domain`.
    pub fn of(trust_domain: &TrustDomain) -> Self {
        let mut input = b"x0t/ula/v1".to_vec();
        input.extend_from_slice(trust_domain.as_str().as_bytes());
        let h = sha256(&input);
        let mut p = [0u8; 6];
        p[0] = 0xfd;
        p[1..].copy_from_slice(&h[..5]);
        Self(p)
    }

    /// The network address (host bits zero).
    pub fn network(&self) -> Ipv6Addr {
        let mut o = [0u8; 16];
        o[..6].copy_from_slice(&self.0);
        Ipv6Addr::from(o)
    }

    /// The overlay address of `node`.
    pub fn address_of(&self, node: NodeId) -> Ipv6Addr {
        let mut o = [0u8; 16];
        o[..6].copy_from_slice(&self.0);
        o[6..].copy_from_slice(&node.as_bytes()[..10]);
        Ipv6Addr::from(o)
    }

    /// Whether `addr` lies in this prefix.
    pub fn contains(&self, addr: Ipv6Addr) -> bool {
        addr.octets()[..6] == self.0
    }
}

impl fmt::Display for MeshPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network(), Self::LEN)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_is_ula_inside_the_prefix_and_carries_the_node_id() {
        let td = TrustDomain::new("mesh.test").unwrap();
        let p = MeshPrefix::of(&td);
        let node = NodeId::from_bytes([0x11; 16]);
        let a = p.address_of(node);
        assert_eq!(a.octets()[0], 0xfd);
        assert!(p.contains(a));
        assert_eq!(&a.octets()[6..], &[0x11; 10]);
        assert!(p.to_string().ends_with("::/48"));
        let other = MeshPrefix::of(&TrustDomain::new("other.test").unwrap());
        assert_ne!(p, other);
        assert!(!other.contains(a));
    }
}
