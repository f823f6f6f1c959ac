//! Overlay addressing.
//!
//! Every mesh owns a /48 unique local prefix (RFC 4193): `fd` followed by a 40-bit global ID. RFC
//! 4193 asks for a pseudo-random global ID; we take the first 40 bits of
//! `SHA-256("x0t/ula/v1" || trust domain)`, which is as random as the RFC's suggested algorithm
//! and lets every node compute the prefix from the trust domain alone. A node's overlay address
//! is that prefix followed by the first 80 bits of its node ID.
//!
//! IPv4 overlay addresses are optional ([`Ipv4Overlay`]): a range the operator picks (the same
//! on every node), with each node's address derived from its node ID. An IPv4 range has few
//! host bits, so two nodes may derive the same address: the data plane leaves such addresses
//! unused (and says so) rather than guess.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

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

/// An IPv4 overlay range (`a.b.c.d/len`, 8 ≤ len ≤ 24): a node's address is the range's
/// network plus `1 + (first 64 bits of its node ID mod (hosts − 2))`, never the network or
/// broadcast address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Overlay {
    network: u32,
    len: u8,
}

impl Ipv4Overlay {
    /// Shortest prefix allowed.
    pub const MIN_LEN: u8 = 8;
    /// Longest prefix allowed (254 hosts).
    pub const MAX_LEN: u8 = 24;

    /// Parses `a.b.c.d/len`; the host bits must be zero.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (addr, len) = text
            .split_once('/')
            .ok_or_else(|| format!("expected a.b.c.d/len, got {text:?}"))?;
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| format!("{addr:?} is not an IPv4 address"))?;
        let len: u8 = len
            .parse()
            .map_err(|_| format!("{len:?} is not a prefix length"))?;
        if !(Self::MIN_LEN..=Self::MAX_LEN).contains(&len) {
            return Err(format!(
                "prefix length must be {} to {}, got {len}",
                Self::MIN_LEN,
                Self::MAX_LEN
            ));
        }
        let network = u32::from(addr);
        if network & !Self::mask(len) != 0 {
            return Err(format!("{text} has host bits set"));
        }
        Ok(Self { network, len })
    }

    fn mask(len: u8) -> u32 {
        u32::MAX << (32 - u32::from(len))
    }

    /// The network address (host bits zero).
    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.network)
    }

    /// The prefix length.
    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    /// The IPv4 overlay address of `node`.
    pub fn address_of(&self, node: NodeId) -> Ipv4Addr {
        let hosts = (1u64 << (32 - u32::from(self.len))) - 2;
        let mut h = [0u8; 8];
        h.copy_from_slice(&node.as_bytes()[..8]);
        let host = 1 + u64::from_be_bytes(h) % hosts;
        Ipv4Addr::from(self.network | host as u32)
    }

    /// Whether `addr` lies in the range.
    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        u32::from(addr) & Self::mask(self.len) == self.network
    }
}

impl fmt::Display for Ipv4Overlay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", Ipv4Addr::from(self.network), self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_addresses_are_hosts_of_the_range() {
        let r = Ipv4Overlay::parse("10.77.0.0/16").unwrap();
        assert_eq!(r.to_string(), "10.77.0.0/16");
        for b in 0..=255u8 {
            let a = r.address_of(NodeId::from_bytes([b; 16]));
            assert!(r.contains(a), "{a}");
            let host = u32::from(a) & 0xffff;
            assert!(host != 0 && host != 0xffff, "{a}");
        }
        assert_eq!(
            r.address_of(NodeId::from_bytes([0; 16])),
            Ipv4Addr::new(10, 77, 0, 1)
        );
        assert!(!r.contains(Ipv4Addr::new(10, 78, 0, 1)));
        let small = Ipv4Overlay::parse("192.168.5.0/24").unwrap();
        let a = small.address_of(NodeId::from_bytes([0xff; 16]));
        assert!(small.contains(a) && a.octets()[3] != 255 && a.octets()[3] != 0);
    }

    #[test]
    fn bad_ipv4_ranges_are_refused_with_the_reason() {
        for (text, why) in [
            ("10.77.0.0", "a.b.c.d/len"),
            ("10.77.0.300/16", "not an IPv4"),
            ("10.77.0.0/x", "prefix length"),
            ("10.0.0.0/7", "8 to 24"),
            ("10.77.0.0/25", "8 to 24"),
            ("10.77.1.0/16", "host bits"),
        ] {
            let e = Ipv4Overlay::parse(text).unwrap_err();
            assert!(e.contains(why), "{text}: {e}");
        }
    }

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
