//! The mesh topology the planner must never partition, and the reachability check.
//!
//! The daemon passes the topology as an adjacency list (from its link-state database: links
//! both ends advertise). The planner's restrictions are a [`Cut`]: excluded edges, and nodes
//! that may no longer be used as transit (quarantined: still reachable as endpoints, never
//! relayed through). Under a cut, `u` reaches `v` when a path joins them whose edges are not
//! excluded and whose *interior* nodes are all transit nodes.
//!
//! [`Topology::preserves_reachability`] answers whether every pair that reaches each other
//! under one cut still does under another, exactly, in `O(N + E)` plus the pairs inside
//! groups that lost every transit node: it labels the components of the transit subgraph
//! (union-find) and uses that a non-transit node reaches exactly what its transit neighbours'
//! components reach.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use x0_wire::NodeId;

/// An undirected graph of nodes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Topology {
    adj: BTreeMap<NodeId, BTreeSet<NodeId>>,
    /// Edges advertised with a poor quality class (stored once, smaller ID first).
    impaired: BTreeSet<(NodeId, NodeId)>,
}

/// Restrictions in force, as the reachability check sees them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cut {
    /// Edges not to be used (each stored once, smaller ID first).
    pub excluded_edges: BTreeSet<(NodeId, NodeId)>,
    /// Nodes not to be used as transit.
    pub non_transit: BTreeSet<NodeId>,
}

/// An edge in its stored form.
pub fn edge(a: NodeId, b: NodeId) -> (NodeId, NodeId) {
    if a <= b { (a, b) } else { (b, a) }
}

impl Cut {
    fn edge_ok(&self, a: NodeId, b: NodeId) -> bool {
        !self.excluded_edges.contains(&edge(a, b))
    }
}

struct UnionFind(Vec<usize>);

impl UnionFind {
    fn find(&mut self, mut x: usize) -> usize {
        while self.0[x] != x {
            self.0[x] = self.0[self.0[x]];
            x = self.0[x];
        }
        x
    }
    fn union(&mut self, a: usize, b: usize) {
        let (a, b) = (self.find(a), self.find(b));
        if a != b {
            self.0[a] = b;
        }
    }
}

/// Reachability under one cut.
struct Reach<'a> {
    topo: &'a Topology,
    cut: &'a Cut,
    index: HashMap<NodeId, usize>,
    /// Component of each transit node (`None` for non-transit nodes).
    comp: Vec<Option<usize>>,
}

impl<'a> Reach<'a> {
    fn new(topo: &'a Topology, cut: &'a Cut) -> Self {
        let index: HashMap<NodeId, usize> =
            topo.adj.keys().enumerate().map(|(i, n)| (*n, i)).collect();
        let mut uf = UnionFind((0..index.len()).collect());
        let transit = |n: &NodeId| !cut.non_transit.contains(n);
        for (a, nbrs) in &topo.adj {
            if !transit(a) {
                continue;
            }
            for b in nbrs {
                if transit(b) && cut.edge_ok(*a, *b) {
                    uf.union(index[a], index[b]);
                }
            }
        }
        let comp = topo
            .adj
            .keys()
            .map(|n| transit(n).then(|| uf.find(index[n])))
            .collect();
        Self {
            topo,
            cut,
            index,
            comp,
        }
    }

    fn comp_of(&self, n: &NodeId) -> Option<usize> {
        self.index.get(n).and_then(|&i| self.comp[i])
    }

    /// The transit components `n` can enter (its own, or its transit neighbours').
    fn entries(&self, n: &NodeId) -> BTreeSet<usize> {
        if let Some(c) = self.comp_of(n) {
            return BTreeSet::from([c]);
        }
        self.topo
            .neighbors(n)
            .filter(|m| self.cut.edge_ok(*n, **m))
            .filter_map(|m| self.comp_of(m))
            .collect()
    }

    fn reaches(&self, u: &NodeId, v: &NodeId) -> bool {
        u == v
            || (self.topo.has_edge(u, v) && self.cut.edge_ok(*u, *v))
            || !self.entries(u).is_disjoint(&self.entries(v))
    }
}

impl Topology {
    /// An empty topology.
    pub fn new() -> Self {
        Self::default()
    }

    /// From an adjacency list. The graph is undirected: an edge exists if either end lists
    /// it. Self-loops are ignored.
    pub fn from_adjacency<I, J>(list: I) -> Self
    where
        I: IntoIterator<Item = (NodeId, J)>,
        J: IntoIterator<Item = NodeId>,
    {
        let mut t = Self::new();
        for (a, nbrs) in list {
            t.adj.entry(a).or_default();
            for b in nbrs {
                t.add_edge(a, b);
            }
        }
        t
    }

    /// Adds an edge (and its nodes).
    pub fn add_edge(&mut self, a: NodeId, b: NodeId) {
        if a == b {
            return;
        }
        self.adj.entry(a).or_default().insert(b);
        self.adj.entry(b).or_default().insert(a);
    }

    /// Removes an edge (its nodes stay).
    pub fn remove_edge(&mut self, a: NodeId, b: NodeId) {
        if let Some(s) = self.adj.get_mut(&a) {
            s.remove(&b);
        }
        if let Some(s) = self.adj.get_mut(&b) {
            s.remove(&a);
        }
    }

    /// Marks the edge `a`–`b` as impaired: advertised with a poor quality class (lossy or
    /// slow). End-to-end probes lost across it say nothing about the relays around it.
    pub fn mark_impaired(&mut self, a: NodeId, b: NodeId) {
        if a != b {
            self.impaired.insert(edge(a, b));
        }
    }

    /// Edges marked impaired.
    pub fn impaired(&self) -> impl Iterator<Item = &(NodeId, NodeId)> {
        self.impaired.iter()
    }

    /// Every edge once, smaller ID first.
    pub fn edges(&self) -> impl Iterator<Item = (NodeId, NodeId)> + '_ {
        self.adj
            .iter()
            .flat_map(|(a, bs)| bs.iter().filter(move |b| a < *b).map(move |b| (*a, *b)))
    }

    /// Whether `a` and `b` are adjacent.
    pub fn has_edge(&self, a: &NodeId, b: &NodeId) -> bool {
        self.adj.get(a).is_some_and(|s| s.contains(b))
    }

    /// The neighbours of `n`.
    pub fn neighbors(&self, n: &NodeId) -> impl Iterator<Item = &NodeId> {
        self.adj.get(n).into_iter().flatten()
    }

    /// Every node.
    pub fn nodes(&self) -> impl Iterator<Item = &NodeId> {
        self.adj.keys()
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.adj.len()
    }

    /// Whether there are no nodes.
    pub fn is_empty(&self) -> bool {
        self.adj.is_empty()
    }

    /// Whether every pair of nodes that reach each other under `before` still do under
    /// `after` (see the module doc).
    pub fn preserves_reachability(&self, before: &Cut, after: &Cut) -> bool {
        let b = Reach::new(self, before);
        let a = Reach::new(self, after);
        // Every before-reachable pair is a direct edge or lies in one group: a transit
        // component together with the non-transit nodes adjacent to it.
        for (u, nbrs) in &self.adj {
            for v in nbrs {
                if u < v && before.edge_ok(*u, *v) && !a.reaches(u, v) {
                    return false;
                }
            }
        }
        let mut groups: BTreeMap<usize, Vec<NodeId>> = BTreeMap::new();
        for n in self.adj.keys() {
            for c in b.entries(n) {
                groups.entry(c).or_default().push(*n);
            }
        }
        for members in groups.values() {
            let transit_after: BTreeSet<usize> =
                members.iter().filter_map(|n| a.comp_of(n)).collect();
            match transit_after.len() {
                0 => {
                    // The whole group lost its transit nodes: check its pairs one by one.
                    for (i, u) in members.iter().enumerate() {
                        for v in &members[i + 1..] {
                            if !a.reaches(u, v) {
                                return false;
                            }
                        }
                    }
                }
                1 => {
                    let Some(&c) = transit_after.first() else {
                        return false;
                    };
                    if !members
                        .iter()
                        .all(|n| a.comp_of(n).is_some() || a.entries(n).contains(&c))
                    {
                        return false;
                    }
                }
                _ => return false,
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn n(i: u8) -> NodeId {
        NodeId::from_bytes([i; 16])
    }

    fn topo(edges: &[(u8, u8)]) -> Topology {
        let mut t = Topology::new();
        for &(a, b) in edges {
            t.add_edge(n(a), n(b));
        }
        t
    }

    fn exclude(edges: &[(u8, u8)]) -> Cut {
        Cut {
            excluded_edges: edges.iter().map(|&(a, b)| edge(n(a), n(b))).collect(),
            non_transit: BTreeSet::new(),
        }
    }

    fn quarantine(nodes: &[u8]) -> Cut {
        Cut {
            excluded_edges: BTreeSet::new(),
            non_transit: nodes.iter().map(|&i| n(i)).collect(),
        }
    }

    #[test]
    fn excluding_a_ring_edge_is_safe_a_bridge_is_not() {
        // Ring 1-2-3-4-1 plus a tail 4-5.
        let t = topo(&[(1, 2), (2, 3), (3, 4), (4, 1), (4, 5)]);
        let none = Cut::default();
        assert!(t.preserves_reachability(&none, &exclude(&[(1, 2)])));
        assert!(!t.preserves_reachability(&none, &exclude(&[(4, 5)])));
        assert!(!t.preserves_reachability(&none, &exclude(&[(1, 2), (3, 4)])));
    }

    #[test]
    fn quarantining_a_cut_vertex_partitions_a_redundant_relay_does_not() {
        // 1-2-3 chain: 2 is a cut vertex.
        let chain = topo(&[(1, 2), (2, 3)]);
        assert!(!chain.preserves_reachability(&Cut::default(), &quarantine(&[2])));
        // A leaf may always be quarantined: it stays reachable as an endpoint.
        assert!(chain.preserves_reachability(&Cut::default(), &quarantine(&[3])));
        // Diamond 1-2-4, 1-3-4: either relay may go, not both.
        let diamond = topo(&[(1, 2), (2, 4), (1, 3), (3, 4)]);
        assert!(diamond.preserves_reachability(&Cut::default(), &quarantine(&[2])));
        assert!(!diamond.preserves_reachability(&Cut::default(), &quarantine(&[2, 3])));
        // Quarantined nodes still reach each other over a direct edge.
        let pair = topo(&[(1, 2)]);
        assert!(pair.preserves_reachability(&Cut::default(), &quarantine(&[1, 2])));
    }

    #[test]
    fn nodes_already_apart_stay_apart_without_complaint() {
        // Two islands; cutting inside neither is fine, and the check never asks for
        // reachability that did not exist.
        let t = topo(&[(1, 2), (2, 3), (3, 1), (7, 8)]);
        assert!(t.preserves_reachability(&Cut::default(), &exclude(&[(1, 2)])));
        assert!(!t.preserves_reachability(&Cut::default(), &exclude(&[(7, 8)])));
        assert!(t.preserves_reachability(&exclude(&[(7, 8)]), &exclude(&[(7, 8), (1, 2)])));
    }

    #[test]
    fn adjacency_lists_are_symmetrised() {
        let t = Topology::from_adjacency([(n(1), vec![n(2), n(1)]), (n(3), vec![])]);
        assert!(t.has_edge(&n(2), &n(1)));
        assert!(!t.has_edge(&n(1), &n(1)));
        assert_eq!(t.len(), 3);
        assert_eq!(t.neighbors(&n(3)).count(), 0);
    }

    /// Reference: reachability by BFS under a cut, for every pair.
    fn reach_matrix(t: &Topology, cut: &Cut) -> BTreeSet<(NodeId, NodeId)> {
        let mut out = BTreeSet::new();
        for s in t.nodes() {
            let mut seen = BTreeSet::from([*s]);
            let mut stack = vec![*s];
            while let Some(u) = stack.pop() {
                if u != *s && cut.non_transit.contains(&u) {
                    continue; // reached, but not expanded
                }
                for v in t.neighbors(&u) {
                    if cut.edge_ok(u, *v) && seen.insert(*v) {
                        stack.push(*v);
                    }
                }
            }
            for v in seen {
                out.insert((*s, v));
            }
        }
        out
    }

    fn cut_strategy() -> impl Strategy<Value = (Vec<(u8, u8)>, Vec<u8>)> {
        (
            prop::collection::vec((0u8..8, 0u8..8), 0..4),
            prop::collection::vec(0u8..8, 0..3),
        )
    }

    fn mk_cut((e, q): &(Vec<(u8, u8)>, Vec<u8>)) -> Cut {
        Cut {
            excluded_edges: e.iter().map(|&(a, b)| edge(n(a), n(b))).collect(),
            non_transit: q.iter().map(|&i| n(i)).collect(),
        }
    }

    proptest! {
        /// The component-based check agrees with an all-pairs BFS on random small graphs.
        #[test]
        fn agrees_with_all_pairs_bfs(
            edges in prop::collection::vec((0u8..8, 0u8..8), 0..16),
            before in cut_strategy(),
            extra in cut_strategy(),
        ) {
            let t = topo(&edges);
            let before = mk_cut(&before);
            let mut after = before.clone();
            let more = mk_cut(&extra);
            after.excluded_edges.extend(more.excluded_edges);
            after.non_transit.extend(more.non_transit);
            let rb = reach_matrix(&t, &before);
            let ra = reach_matrix(&t, &after);
            prop_assert_eq!(t.preserves_reachability(&before, &after), rb.is_subset(&ra));
        }
    }
}
