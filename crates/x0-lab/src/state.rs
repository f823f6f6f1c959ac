//! The state file: what a lab created, so that any process can find and remove it.
//!
//! Each lab has a directory `<run dir>/<lab>/` (by default `/run/x0lab/<lab>/`) holding
//! `state.json` and whatever the lab's users keep there (configurations, keys, logs). The
//! file is rewritten atomically (write to a temporary file, then rename) after every change.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::names::{LabName, NodeName};
use crate::process::ProcessRecord;

/// Default parent directory of lab directories.
pub const DEFAULT_RUN_DIR: &str = "/run/x0lab";
/// Name of the state file inside a lab directory.
pub const STATE_FILE: &str = "state.json";
/// Version of the state file format.
pub const STATE_VERSION: u32 = 1;

/// Why the state file could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// File system error.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Not a state file this version understands.
    #[error("{path}: not a lab state file: {message}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// One node of a lab.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeState {
    /// Node name.
    pub name: NodeName,
    /// Its network namespace.
    pub netns: String,
    /// Its /32 loopback address.
    pub node_addr: Ipv4Addr,
}

/// One veth link of a lab.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkState {
    /// Node index of the `a` end.
    pub a: usize,
    /// Node index of the `b` end.
    pub b: usize,
    /// Interface in `a`'s namespace (named after `b`).
    pub iface_a: String,
    /// Interface in `b`'s namespace (named after `a`).
    pub iface_b: String,
    /// Address of the `a` end.
    pub addr_a: Ipv4Addr,
    /// Address of the `b` end.
    pub addr_b: Ipv4Addr,
    /// Prefix length of the link subnet.
    pub prefix_len: u8,
    /// Percent dropped from `a` to `b`.
    pub loss_a_to_b: u8,
    /// Percent dropped from `b` to `a`.
    pub loss_b_to_a: u8,
    /// tbf rate from `a` to `b`, Mbit/s.
    pub rate_a_to_b: Option<u32>,
    /// tbf rate from `b` to `a`, Mbit/s.
    pub rate_b_to_a: Option<u32>,
    /// Whether both ends are administratively up.
    pub up: bool,
}

impl LinkState {
    /// True if the link joins `x` and `y` (either order).
    pub fn joins(&self, x: usize, y: usize) -> bool {
        (self.a == x && self.b == y) || (self.a == y && self.b == x)
    }

    /// The interface of `node` on this link, and its address.
    pub fn end_of(&self, node: usize) -> Option<(&str, Ipv4Addr)> {
        if node == self.a {
            Some((&self.iface_a, self.addr_a))
        } else if node == self.b {
            Some((&self.iface_b, self.addr_b))
        } else {
            None
        }
    }
}

/// Everything a lab created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabState {
    /// Format version.
    pub version: u32,
    /// Lab name.
    pub name: LabName,
    /// Creation time, seconds since the Unix epoch.
    pub created_unix: u64,
    /// PID of the process that created the lab.
    pub creator_pid: u32,
    /// Nodes, in topology order.
    pub nodes: Vec<NodeState>,
    /// Links, in topology order.
    pub links: Vec<LinkState>,
    /// Whether static underlay routes (and kernel forwarding between them) were installed.
    pub underlay_routes: bool,
    /// Processes started inside the lab and not yet stopped.
    pub processes: Vec<ProcessRecord>,
}

impl LabState {
    /// The lab directory under `run_dir`.
    pub fn dir_in(run_dir: &Path, name: &LabName) -> PathBuf {
        run_dir.join(name.as_str())
    }

    /// Writes the state atomically to `path`.
    pub fn save(&self, path: &Path) -> Result<(), StateError> {
        let io = |source| StateError::Io {
            path: path.to_owned(),
            source,
        };
        let text = serde_json::to_string_pretty(self).map_err(|e| StateError::Corrupt {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        let tmp = path.with_extension(format!("json.tmp{}", std::process::id()));
        std::fs::write(&tmp, format!("{text}\n")).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }

    /// Reads a state file.
    pub fn load(path: &Path) -> Result<Self, StateError> {
        let text = std::fs::read_to_string(path).map_err(|source| StateError::Io {
            path: path.to_owned(),
            source,
        })?;
        let state: LabState = serde_json::from_str(&text).map_err(|e| StateError::Corrupt {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        if state.version != STATE_VERSION {
            return Err(StateError::Corrupt {
                path: path.to_owned(),
                message: format!(
                    "format version {} (this build reads {STATE_VERSION})",
                    state.version
                ),
            });
        }
        Ok(state)
    }

    /// Index of the node called `name`, or given as its index (`"2"`).
    pub fn node_index(&self, name: &str) -> Option<usize> {
        self.nodes
            .iter()
            .position(|n| n.name.as_str() == name)
            .or_else(|| name.parse().ok().filter(|&i: &usize| i < self.nodes.len()))
    }

    /// Index of the link joining two nodes.
    pub fn link_index(&self, x: usize, y: usize) -> Option<usize> {
        self.links.iter().position(|l| l.joins(x, y))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> LabState {
        let name = LabName::new("unit").unwrap();
        let nodes: Vec<NodeState> = (0..2)
            .map(|i| {
                let n = NodeName::indexed(i);
                NodeState {
                    netns: name.netns_of(&n),
                    name: n,
                    node_addr: crate::topology::node_addr(i),
                }
            })
            .collect();
        let (addr_a, addr_b) = crate::topology::link_addrs(0);
        LabState {
            version: STATE_VERSION,
            name,
            created_unix: 1,
            creator_pid: 2,
            links: vec![LinkState {
                a: 0,
                b: 1,
                iface_a: nodes[1].name.iface_towards(),
                iface_b: nodes[0].name.iface_towards(),
                addr_a,
                addr_b,
                prefix_len: 30,
                loss_a_to_b: 5,
                loss_b_to_a: 0,
                rate_a_to_b: None,
                rate_b_to_a: Some(10),
                up: true,
            }],
            nodes,
            underlay_routes: true,
            processes: vec![ProcessRecord {
                pid: 42,
                start_time: 7,
                node: 1,
                label: "sleep".into(),
                argv: vec!["sleep".into(), "1".into()],
            }],
        }
    }

    #[test]
    fn round_trip_and_lookups() {
        let dir = tempfile::tempdir().unwrap();
        let path = LabState::dir_in(dir.path(), &LabName::new("unit").unwrap()).join(STATE_FILE);
        let s = sample();
        s.save(&path).unwrap();
        let back = LabState::load(&path).unwrap();
        assert_eq!(back, s);
        assert_eq!(back.node_index("n1"), Some(1));
        assert_eq!(back.node_index("1"), Some(1));
        assert_eq!(back.node_index("2"), None);
        assert_eq!(back.link_index(1, 0), Some(0));
        assert_eq!(back.links[0].end_of(1).unwrap().0, "x0-n0");
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [STATE_FILE]);
    }

    #[test]
    fn refuses_garbage_and_other_versions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(STATE_FILE);
        std::fs::write(&path, "{}").unwrap();
        assert!(matches!(
            LabState::load(&path),
            Err(StateError::Corrupt { .. })
        ));
        let mut s = sample();
        s.version = 99;
        s.save(&path).unwrap();
        let e = LabState::load(&path).unwrap_err().to_string();
        assert!(e.contains("version 99"), "{e}");
        assert!(matches!(
            LabState::load(&dir.path().join("missing.json")),
            Err(StateError::Io { .. })
        ));
    }
}
