//! SPIFFE trust domains and IDs, as the SPIFFE ID standard defines them.
//!
//! A node's SPIFFE ID is `spiffe://<trust-domain>/node/<node-id>`; nothing else is ever issued or
//! accepted as a node identity.

use std::fmt;
use std::str::FromStr;

use thiserror::Error;
use x0_wire::NodeId;

const SCHEME: &str = "spiffe://";
const MAX_TRUST_DOMAIN_LEN: usize = 255;
const MAX_ID_LEN: usize = 2048;

/// Why a trust domain or SPIFFE ID was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum SpiffeError {
    /// Trust domain empty, too long, or with a character outside `[a-z0-9._-]`.
    #[error(
        "invalid trust domain {0:?}: use 1 to 255 characters from lowercase letters, digits, '.', '-' and '_'"
    )]
    TrustDomain(String),
    /// Not of the form `spiffe://<trust-domain>/<path>`.
    #[error("invalid SPIFFE ID {0:?}")]
    Id(String),
    /// A valid SPIFFE ID that does not name a node.
    #[error(
        "SPIFFE ID {0:?} does not name a node (expected spiffe://<trust-domain>/node/<node-id>)"
    )]
    NotANode(String),
}

/// A SPIFFE trust domain name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrustDomain(String);

impl TrustDomain {
    /// Validates a trust domain name.
    pub fn new(name: &str) -> Result<Self, SpiffeError> {
        let ok = !name.is_empty()
            && name.len() <= MAX_TRUST_DOMAIN_LEN
            && name.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
            });
        if ok {
            Ok(Self(name.to_owned()))
        } else {
            Err(SpiffeError::TrustDomain(name.chars().take(300).collect()))
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The SPIFFE ID of node `id` in this trust domain.
    pub fn node_id(&self, id: NodeId) -> SpiffeId {
        SpiffeId {
            trust_domain: self.clone(),
            path: format!("/node/{id}"),
        }
    }

    /// `spiffe://<trust-domain>`: the ID a CA certificate may carry.
    pub fn id(&self) -> String {
        format!("{SCHEME}{}", self.0)
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for TrustDomain {
    type Err = SpiffeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

/// A parsed SPIFFE ID (workload path non-empty).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SpiffeId {
    trust_domain: TrustDomain,
    path: String,
}

impl SpiffeId {
    /// The trust domain.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The path, starting with `/`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The node ID this SPIFFE ID names, if it has the node form.
    pub fn node(&self) -> Result<NodeId, SpiffeError> {
        self.path
            .strip_prefix("/node/")
            .and_then(|id| id.parse().ok())
            .ok_or_else(|| SpiffeError::NotANode(self.to_string()))
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SCHEME}{}{}", self.trust_domain, self.path)
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || SpiffeError::Id(s.chars().take(300).collect());
        if s.len() > MAX_ID_LEN {
            return Err(err());
        }
        let rest = s.strip_prefix(SCHEME).ok_or_else(err)?;
        let (td, path) = rest.split_at(rest.find('/').ok_or_else(err)?);
        let trust_domain = TrustDomain::new(td).map_err(|_| err())?;
        // Path: one or more "/segment", segments of [A-Za-z0-9._-], never "." or "..".
        let segments_ok = path[1..].split('/').all(|seg| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
        });
        if !segments_ok {
            return Err(err());
        }
        Ok(Self {
            trust_domain,
            path: path.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn trust_domain_rules() {
        assert!(TrustDomain::new("mesh.example.org").is_ok());
        assert!(TrustDomain::new("a_b-c.9").is_ok());
        for bad in ["", "Mesh", "a b", "a/b", "a:1", "ünïcode"] {
            assert!(TrustDomain::new(bad).is_err(), "{bad}");
        }
        assert!(TrustDomain::new(&"a".repeat(256)).is_err());
    }

    #[test]
    fn node_ids_parse_back() {
        let td = TrustDomain::new("mesh.test").unwrap();
        let id = NodeId::from_bytes([0xab; 16]);
        let sid = td.node_id(id);
        assert_eq!(
            sid.to_string(),
            "spiffe://mesh.test/node/abababababababababababababababab"
        );
        let parsed: SpiffeId = sid.to_string().parse().unwrap();
        assert_eq!(parsed, sid);
        assert_eq!(parsed.node().unwrap(), id);
    }

    #[test]
    fn rejects_malformed_ids() {
        for bad in [
            "spiffe://mesh",
            "spiffe://mesh/",
            "spiffe://mesh/node//x",
            "spiffe://mesh/./x",
            "spiffe://mesh/../x",
            "spiffe://Mesh/x",
            "https://mesh/x",
            "spiffe://mesh/x?y",
            "spiffe://mesh/x#y",
            "spiffe://user@mesh/x",
            "spiffe://mesh:443/x",
        ] {
            assert!(bad.parse::<SpiffeId>().is_err(), "{bad}");
        }
        let not_node: SpiffeId = "spiffe://mesh/workload/x".parse().unwrap();
        assert!(not_node.node().is_err());
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in ".{0,100}") {
            let _ = s.parse::<SpiffeId>();
        }
    }
}
