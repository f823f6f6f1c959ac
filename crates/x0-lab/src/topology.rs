//! Topologies: which nodes exist and which pairs a veth link joins, and the address plan.
//!
//! Generated shapes name their nodes `n0 … n(N-1)`. A topology file is a small TOML edge
//! list:
//!
//! ```toml
//! # optional; without it, nodes are taken from the links in order of appearance
//! nodes = ["a", "b", "c"]
//!
//! [[link]]
//! a = "a"
//! b = "b"
//!
//! [[link]]
//! a = "b"
//! b = "c"
//! loss = 5        # optional: percent dropped in both directions
//! rate_mbit = 100 # optional: tbf rate limit in both directions
//! ```
//!
//! Addresses: link `k` (in edge-list order) is the IPv4 /30 `10.213.0.0 + 4k`; its `a` end
//! holds `.1`, its `b` end `.2`. Node `i` also holds a /32 "node address" `10.214.0.0 + i + 1`
//! on its loopback, which the optional underlay routes make reachable from every node.

use std::collections::{BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::names::{NameError, NodeName};

/// First address of the link /30 blocks.
pub const LINK_BASE: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 0);
/// Prefix length of one link's subnet.
pub const LINK_PREFIX_LEN: u8 = 30;
/// Base of the node (loopback) addresses.
pub const NODE_BASE: Ipv4Addr = Ipv4Addr::new(10, 214, 0, 0);
/// Most links the address plan holds (10.213.0.0/16 in /30 blocks).
pub const MAX_LINKS: usize = 1 << 14;
/// Most nodes the address plan holds.
pub const MAX_NODES: usize = (1 << 16) - 2;

/// Why a topology could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TopologyError {
    /// Fewer nodes than the shape needs.
    #[error("a {shape} topology needs at least {min} nodes, got {got}")]
    TooFewNodes {
        /// The shape asked for.
        shape: &'static str,
        /// Its minimum.
        min: usize,
        /// What was asked.
        got: usize,
    },
    /// More nodes or links than the address plan holds.
    #[error(
        "too large: {nodes} nodes and {links} links (at most {MAX_NODES} nodes and {MAX_LINKS} links)"
    )]
    TooLarge {
        /// Nodes.
        nodes: usize,
        /// Links.
        links: usize,
    },
    /// Not a known shape and not a readable file.
    #[error("unknown topology {0:?}: use line, ring, grid, full or the path of a TOML file")]
    UnknownShape(String),
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML of the expected form.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// A bad node name.
    #[error(transparent)]
    Name(#[from] NameError),
    /// A link names a node that is not in `nodes`.
    #[error("link {link}: unknown node {node:?}")]
    UnknownNode {
        /// Index of the link in the file.
        link: usize,
        /// The name.
        node: String,
    },
    /// A link from a node to itself, or a second link between the same pair.
    #[error("link {link}: {a} - {b} is a self-loop or a duplicate")]
    BadLink {
        /// Index of the link.
        link: usize,
        /// One end.
        a: String,
        /// The other end.
        b: String,
    },
    /// A loss percentage above 100.
    #[error("link {link}: loss {loss} is above 100 percent")]
    BadLoss {
        /// Index of the link.
        link: usize,
        /// The value.
        loss: u8,
    },
    /// The same node twice in `nodes`.
    #[error("node {0:?} is listed twice")]
    DuplicateNode(String),
}

/// A generated shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Shape {
    /// `n0 - n1 - … - n(N-1)`.
    Line,
    /// A line closed into a cycle (N ≥ 3).
    Ring,
    /// A grid `ceil(sqrt(N))` wide, filled row by row; the last row may be short.
    Grid,
    /// Every pair linked.
    Full,
}

impl Shape {
    /// The shape's name as used on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Shape::Line => "line",
            Shape::Ring => "ring",
            Shape::Grid => "grid",
            Shape::Full => "full",
        }
    }
}

impl FromStr for Shape {
    type Err = TopologyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "line" => Ok(Shape::Line),
            "ring" => Ok(Shape::Ring),
            "grid" => Ok(Shape::Grid),
            "full" => Ok(Shape::Full),
            other => Err(TopologyError::UnknownShape(other.to_owned())),
        }
    }
}

/// One link of a topology: nodes by index, with initial impairments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkSpec {
    /// One end (index into the node list).
    pub a: usize,
    /// The other end.
    pub b: usize,
    /// Percent of packets dropped in each direction at start.
    pub loss_percent: u8,
    /// tbf rate limit in each direction at start, in Mbit/s.
    pub rate_mbit: Option<u32>,
}

/// Nodes and links.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    nodes: Vec<NodeName>,
    links: Vec<LinkSpec>,
}

impl Topology {
    /// A generated shape over `n` nodes named `n0 …`.
    pub fn generate(shape: Shape, n: usize) -> Result<Self, TopologyError> {
        let min = match shape {
            Shape::Ring => 3,
            _ => 2,
        };
        if n < min {
            return Err(TopologyError::TooFewNodes {
                shape: shape.as_str(),
                min,
                got: n,
            });
        }
        if n > MAX_NODES {
            return Err(TopologyError::TooLarge { nodes: n, links: 0 });
        }
        let mut pairs = Vec::new();
        match shape {
            Shape::Line => pairs.extend((1..n).map(|i| (i - 1, i))),
            Shape::Ring => {
                pairs.extend((1..n).map(|i| (i - 1, i)));
                pairs.push((n - 1, 0));
            }
            Shape::Grid => {
                let width = grid_width(n);
                for i in 0..n {
                    if (i + 1) % width != 0 && i + 1 < n {
                        pairs.push((i, i + 1));
                    }
                    if i + width < n {
                        pairs.push((i, i + width));
                    }
                }
            }
            Shape::Full => {
                for a in 0..n {
                    for b in a + 1..n {
                        pairs.push((a, b));
                    }
                }
            }
        }
        let nodes = (0..n).map(NodeName::indexed).collect();
        let links = pairs
            .into_iter()
            .map(|(a, b)| LinkSpec {
                a,
                b,
                loss_percent: 0,
                rate_mbit: None,
            })
            .collect();
        Self::new(nodes, links)
    }

    /// A topology from explicit nodes and links (checked).
    pub fn new(nodes: Vec<NodeName>, links: Vec<LinkSpec>) -> Result<Self, TopologyError> {
        if nodes.len() > MAX_NODES || links.len() > MAX_LINKS {
            return Err(TopologyError::TooLarge {
                nodes: nodes.len(),
                links: links.len(),
            });
        }
        let mut seen_nodes = BTreeSet::new();
        for n in &nodes {
            if !seen_nodes.insert(n) {
                return Err(TopologyError::DuplicateNode(n.to_string()));
            }
        }
        let mut seen = BTreeSet::new();
        for (k, l) in links.iter().enumerate() {
            let name = |i: usize| {
                nodes
                    .get(i)
                    .map_or_else(|| format!("#{i}"), ToString::to_string)
            };
            if l.a >= nodes.len() || l.b >= nodes.len() {
                return Err(TopologyError::UnknownNode {
                    link: k,
                    node: name(l.a.max(l.b)),
                });
            }
            if l.a == l.b || !seen.insert((l.a.min(l.b), l.a.max(l.b))) {
                return Err(TopologyError::BadLink {
                    link: k,
                    a: name(l.a),
                    b: name(l.b),
                });
            }
            if l.loss_percent > 100 {
                return Err(TopologyError::BadLoss {
                    link: k,
                    loss: l.loss_percent,
                });
            }
        }
        Ok(Self { nodes, links })
    }

    /// Parses a topology file's text (`path` only names it in errors).
    pub fn from_toml(text: &str, path: &str) -> Result<Self, TopologyError> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct FileLink {
            a: String,
            b: String,
            #[serde(default)]
            loss: u8,
            rate_mbit: Option<u32>,
        }
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct File {
            nodes: Option<Vec<String>>,
            #[serde(default)]
            link: Vec<FileLink>,
        }
        let file: File = toml::from_str(text).map_err(|e| TopologyError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        let declared = file.nodes.is_some();
        let mut nodes: Vec<NodeName> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        for n in file.nodes.unwrap_or_default() {
            let name = NodeName::new(&n)?;
            if index.insert(n.clone(), nodes.len()).is_some() {
                return Err(TopologyError::DuplicateNode(n));
            }
            nodes.push(name);
        }
        let mut links = Vec::new();
        for (k, l) in file.link.into_iter().enumerate() {
            let mut end = |n: &str| -> Result<usize, TopologyError> {
                if let Some(&i) = index.get(n) {
                    return Ok(i);
                }
                if declared {
                    return Err(TopologyError::UnknownNode {
                        link: k,
                        node: n.to_owned(),
                    });
                }
                let i = nodes.len();
                nodes.push(NodeName::new(n)?);
                index.insert(n.to_owned(), i);
                Ok(i)
            };
            let a = end(&l.a)?;
            let b = end(&l.b)?;
            links.push(LinkSpec {
                a,
                b,
                loss_percent: l.loss,
                rate_mbit: l.rate_mbit,
            });
        }
        if nodes.len() < 2 {
            return Err(TopologyError::TooFewNodes {
                shape: "file",
                min: 2,
                got: nodes.len(),
            });
        }
        Self::new(nodes, links)
    }

    /// Reads a topology file.
    pub fn from_file(path: &Path) -> Result<Self, TopologyError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| TopologyError::Read {
            path: shown.clone(),
            source,
        })?;
        Self::from_toml(&text, &shown)
    }

    /// `line|ring|grid|full` with `nodes`, or a file path (then `nodes`, if given, must match).
    pub fn from_arg(arg: &str, nodes: Option<usize>) -> Result<Self, TopologyError> {
        match Shape::from_str(arg) {
            Ok(shape) => Self::generate(shape, nodes.unwrap_or(0)),
            Err(_) if Path::new(arg).is_file() => {
                let t = Self::from_file(Path::new(arg))?;
                match nodes {
                    Some(n) if n != t.nodes.len() => Err(TopologyError::Parse {
                        path: arg.to_owned(),
                        message: format!(
                            "the file has {} nodes but --nodes says {n}",
                            t.nodes.len()
                        ),
                    }),
                    _ => Ok(t),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// Sets the initial loss of every link.
    pub fn with_loss(mut self, percent: u8) -> Result<Self, TopologyError> {
        for (k, l) in self.links.iter_mut().enumerate() {
            if percent > 100 {
                return Err(TopologyError::BadLoss {
                    link: k,
                    loss: percent,
                });
            }
            l.loss_percent = percent;
        }
        Ok(self)
    }

    /// The nodes.
    pub fn nodes(&self) -> &[NodeName] {
        &self.nodes
    }

    /// The links.
    pub fn links(&self) -> &[LinkSpec] {
        &self.links
    }

    /// Neighbours of every node (by index).
    pub fn adjacency(&self) -> Vec<Vec<usize>> {
        let mut adj = vec![Vec::new(); self.nodes.len()];
        for l in &self.links {
            adj[l.a].push(l.b);
            adj[l.b].push(l.a);
        }
        adj
    }

    /// For each destination, the first hop from `from` on a shortest path (BFS, ties broken
    /// by the lowest neighbour index); `None` for `from` itself and unreachable nodes.
    pub fn next_hops(&self, from: usize) -> Vec<Option<usize>> {
        let adj = self.adjacency();
        let mut first: Vec<Option<usize>> = vec![None; self.nodes.len()];
        let mut seen = vec![false; self.nodes.len()];
        let mut queue = std::collections::VecDeque::new();
        if from >= self.nodes.len() {
            return first;
        }
        seen[from] = true;
        let mut neighbours = adj[from].clone();
        neighbours.sort_unstable();
        for n in neighbours {
            if !seen[n] {
                seen[n] = true;
                first[n] = Some(n);
                queue.push_back(n);
            }
        }
        while let Some(u) = queue.pop_front() {
            let mut next = adj[u].clone();
            next.sort_unstable();
            for v in next {
                if !seen[v] {
                    seen[v] = true;
                    first[v] = first[u];
                    queue.push_back(v);
                }
            }
        }
        first
    }
}

/// Width of the grid for `n` nodes: `ceil(sqrt(n))`.
pub fn grid_width(n: usize) -> usize {
    let mut w = 1;
    while w * w < n {
        w += 1;
    }
    w
}

/// The two addresses of link `k`: (`a` end, `b` end).
pub fn link_addrs(k: usize) -> (Ipv4Addr, Ipv4Addr) {
    let base = u32::from(LINK_BASE) + 4 * k as u32;
    (Ipv4Addr::from(base + 1), Ipv4Addr::from(base + 2))
}

/// The subnet (network address) of link `k`.
pub fn link_subnet(k: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(LINK_BASE) + 4 * k as u32)
}

/// The loopback address of node `i`.
pub fn node_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(NODE_BASE) + i as u32 + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(t: &Topology) -> Vec<(usize, usize)> {
        t.links().iter().map(|l| (l.a, l.b)).collect()
    }

    #[test]
    fn line_ring_full() {
        let line = Topology::generate(Shape::Line, 4).unwrap();
        assert_eq!(pairs(&line), vec![(0, 1), (1, 2), (2, 3)]);
        assert_eq!(line.nodes()[3].as_str(), "n3");
        let ring = Topology::generate(Shape::Ring, 4).unwrap();
        assert_eq!(pairs(&ring), vec![(0, 1), (1, 2), (2, 3), (3, 0)]);
        let full = Topology::generate(Shape::Full, 5).unwrap();
        assert_eq!(full.links().len(), 10);
        assert!(Topology::generate(Shape::Ring, 2).is_err());
        assert!(Topology::generate(Shape::Line, 1).is_err());
    }

    #[test]
    fn grid_is_row_major_with_a_short_last_row() {
        // 3 wide: 0 1 2 / 3 4 5 / 6
        let g = Topology::generate(Shape::Grid, 7).unwrap();
        assert_eq!(grid_width(7), 3);
        assert_eq!(
            pairs(&g),
            vec![
                (0, 1),
                (0, 3),
                (1, 2),
                (1, 4),
                (2, 5),
                (3, 4),
                (3, 6),
                (4, 5)
            ]
        );
        let g4 = Topology::generate(Shape::Grid, 4).unwrap();
        assert_eq!(pairs(&g4), vec![(0, 1), (0, 2), (1, 3), (2, 3)]);
    }

    #[test]
    fn next_hops_follow_shortest_paths() {
        let line = Topology::generate(Shape::Line, 4).unwrap();
        assert_eq!(line.next_hops(0), vec![None, Some(1), Some(1), Some(1)]);
        assert_eq!(line.next_hops(2), vec![Some(1), Some(1), None, Some(3)]);
        let ring = Topology::generate(Shape::Ring, 5).unwrap();
        assert_eq!(
            ring.next_hops(0),
            vec![None, Some(1), Some(1), Some(4), Some(4)]
        );
    }

    #[test]
    fn file_with_and_without_declared_nodes() {
        let t = Topology::from_toml(
            "[[link]]\na = \"x\"\nb = \"y\"\n[[link]]\na = \"y\"\nb = \"z\"\nloss = 5\nrate_mbit = 10\n",
            "t.toml",
        )
        .unwrap();
        let names: Vec<_> = t.nodes().iter().map(|n| n.as_str()).collect();
        assert_eq!(names, ["x", "y", "z"]);
        assert_eq!(t.links()[1].loss_percent, 5);
        assert_eq!(t.links()[1].rate_mbit, Some(10));

        let t = Topology::from_toml(
            "nodes = [\"b\", \"a\", \"c\"]\n[[link]]\na = \"a\"\nb = \"b\"\n",
            "t.toml",
        )
        .unwrap();
        assert_eq!(t.nodes().len(), 3);
        assert_eq!(pairs(&t), vec![(1, 0)]);

        for (bad, what) in [
            (
                "nodes = [\"a\"]\n[[link]]\na = \"a\"\nb = \"q\"\n",
                "unknown node",
            ),
            (
                "nodes = [\"a\", \"b\"]\n[[link]]\na = \"a\"\nb = \"a\"\n",
                "self-loop",
            ),
            (
                "[[link]]\na = \"a\"\nb = \"b\"\n[[link]]\na = \"b\"\nb = \"a\"\n",
                "duplicate",
            ),
            ("[[link]]\na = \"a\"\nb = \"b\"\nloss = 101\n", "above 100"),
            ("[[link]]\na = \"A\"\nb = \"b\"\n", "not allowed"),
            (
                "[[link]]\na = \"a\"\nb = \"b\"\ncolour = 1\n",
                "unknown field",
            ),
        ] {
            let e = Topology::from_toml(bad, "t.toml").unwrap_err().to_string();
            assert!(e.contains(what), "{bad:?}: {e}");
        }
    }

    #[test]
    fn address_plan() {
        assert_eq!(
            link_addrs(0),
            (Ipv4Addr::new(10, 213, 0, 1), Ipv4Addr::new(10, 213, 0, 2))
        );
        assert_eq!(
            link_addrs(64),
            (Ipv4Addr::new(10, 213, 1, 1), Ipv4Addr::new(10, 213, 1, 2))
        );
        assert_eq!(link_subnet(MAX_LINKS - 1), Ipv4Addr::new(10, 213, 255, 252));
        assert_eq!(node_addr(0), Ipv4Addr::new(10, 214, 0, 1));
        assert_eq!(node_addr(MAX_NODES - 1), Ipv4Addr::new(10, 214, 255, 254));
    }

    #[test]
    fn arg_parsing() {
        assert_eq!(
            Topology::from_arg("ring", Some(3)).unwrap().links().len(),
            3
        );
        assert!(matches!(
            Topology::from_arg("star", Some(3)),
            Err(TopologyError::UnknownShape(_))
        ));
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("t.toml");
        std::fs::write(&f, "[[link]]\na = \"a\"\nb = \"b\"\n").unwrap();
        let p = f.to_str().unwrap();
        assert_eq!(Topology::from_arg(p, None).unwrap().nodes().len(), 2);
        assert!(Topology::from_arg(p, Some(3)).is_err());
    }
}
