//! Checked names: labs, nodes, and the kernel names derived from them.
//!
//! Every network namespace a lab creates is called `x0lab-<lab>-<node>`. Lab names may not
//! contain `-`, so the prefix `x0lab-<lab>-` of one lab can never be the prefix of another
//! lab's namespaces (`x0lab-a-…` vs `x0lab-a_b-…`), and `down` can delete by prefix alone.
//! Interfaces live only inside those namespaces (veth pairs are created directly in them), so
//! they vanish with the namespace; their names start with [`IFACE_PREFIX`] and fit the
//! kernel's 15-byte limit.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Prefix of every namespace any lab creates.
pub const NETNS_PREFIX: &str = "x0lab-";
/// Prefix of every interface a lab creates (inside its namespaces).
pub const IFACE_PREFIX: &str = "x0-";
/// Longest lab name.
pub const MAX_LAB_NAME: usize = 32;
/// Longest node name: `x0-` + node name must fit in IFNAMSIZ - 1 = 15 bytes.
pub const MAX_NODE_NAME: usize = 12;

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NameError {
    /// A lab name is empty, too long, or uses characters outside `[a-z0-9_]`.
    #[error(
        "lab name {0:?} is not allowed: use 1-{MAX_LAB_NAME} characters from a-z, 0-9 and _ \
         (no '-', it separates the lab from the node in namespace names)"
    )]
    Lab(String),
    /// A node name is empty, too long, or uses characters outside `[a-z0-9_-]`.
    #[error(
        "node name {0:?} is not allowed: use 1-{MAX_NODE_NAME} characters from a-z, 0-9, _ and -, \
         starting with a letter or digit"
    )]
    Node(String),
}

/// The name of a lab: `[a-z0-9_]{1,32}`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct LabName(String);

impl LabName {
    /// Checks a lab name.
    pub fn new(name: &str) -> Result<Self, NameError> {
        let ok = !name.is_empty()
            && name.len() <= MAX_LAB_NAME
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if ok {
            Ok(Self(name.to_owned()))
        } else {
            Err(NameError::Lab(name.to_owned()))
        }
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The prefix of all of this lab's namespaces: `x0lab-<lab>-`.
    pub fn netns_prefix(&self) -> String {
        format!("{NETNS_PREFIX}{}-", self.0)
    }

    /// The namespace of one node: `x0lab-<lab>-<node>`.
    pub fn netns_of(&self, node: &NodeName) -> String {
        format!("{}{}", self.netns_prefix(), node.as_str())
    }

    /// The lab a namespace name belongs to, if it is a lab namespace.
    pub fn of_netns(netns: &str) -> Option<LabName> {
        let rest = netns.strip_prefix(NETNS_PREFIX)?;
        let (lab, node) = rest.split_once('-')?;
        if node.is_empty() {
            return None;
        }
        LabName::new(lab).ok()
    }
}

impl fmt::Display for LabName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for LabName {
    type Error = NameError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::new(&s)
    }
}

impl From<LabName> for String {
    fn from(n: LabName) -> String {
        n.0
    }
}

/// The name of a node: `[a-z0-9][a-z0-9_-]{0,11}`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct NodeName(String);

impl NodeName {
    /// Checks a node name.
    pub fn new(name: &str) -> Result<Self, NameError> {
        let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
        let ok = !name.is_empty()
            && name.len() <= MAX_NODE_NAME
            && name.bytes().next().is_some_and(alnum)
            && name.bytes().all(|b| alnum(b) || b == b'_' || b == b'-');
        if ok {
            Ok(Self(name.to_owned()))
        } else {
            Err(NameError::Node(name.to_owned()))
        }
    }

    /// The default name of node `i` in a generated topology: `n<i>`.
    pub fn indexed(i: usize) -> Self {
        Self(format!("n{i}"))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The interface, inside a neighbour's namespace, that leads to this node: `x0-<node>`.
    pub fn iface_towards(&self) -> String {
        format!("{IFACE_PREFIX}{}", self.0)
    }
}

impl fmt::Display for NodeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for NodeName {
    type Error = NameError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::new(&s)
    }
}

impl From<NodeName> for String {
    fn from(n: NodeName) -> String {
        n.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lab_names() {
        assert!(LabName::new("t_line_42").is_ok());
        for bad in ["", "a-b", "A", "a b", &"x".repeat(33)] {
            assert!(LabName::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn node_names_fit_an_interface_name() {
        let n = NodeName::new("relay-12_abc").unwrap();
        assert!(n.iface_towards().len() <= 15);
        for bad in ["", "-a", "A", "relay-12_abcd", "a.b"] {
            assert!(NodeName::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn prefixes_do_not_overlap_between_labs() {
        let a = LabName::new("a").unwrap();
        let ab = LabName::new("a_b").unwrap();
        let ns = ab.netns_of(&NodeName::indexed(0));
        assert_eq!(ns, "x0lab-a_b-n0");
        assert!(!ns.starts_with(&a.netns_prefix()));
        assert_eq!(LabName::of_netns(&ns), Some(ab));
        assert_eq!(
            LabName::of_netns("x0lab-a-relay-1"),
            Some(LabName::new("a").unwrap())
        );
        assert_eq!(LabName::of_netns("other-a-n0"), None);
        assert_eq!(LabName::of_netns("x0lab-a-"), None);
    }
}
