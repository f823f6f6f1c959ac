//! A compact directed graph with dense node indices, built from the link-state database (or, in
//! tests and the simulator, from a true topology) for path computations.

use std::collections::HashMap;

use x0_wire::NodeId;

/// Dense node index inside one [`Graph`].
pub type NodeIx = u32;

/// "No node".
pub const NO_NODE: NodeIx = NodeIx::MAX;

/// A directed, weighted edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edge {
    /// Head of the edge.
    pub to: NodeIx,
    /// Cost, at least 1.
    pub cost: u32,
}

/// A directed graph over node IDs, with dense indices.
#[derive(Debug, Clone, Default)]
pub struct Graph {
    ids: Vec<NodeId>,
    index: HashMap<NodeId, NodeIx>,
    adj: Vec<Vec<Edge>>,
}

impl Graph {
    /// An empty graph.
    pub fn new() -> Self {
        Self::default()
    }

    /// The index of `id`, adding the node if it is new.
    pub fn add_node(&mut self, id: NodeId) -> NodeIx {
        if let Some(&ix) = self.index.get(&id) {
            return ix;
        }
        let ix = NodeIx::try_from(self.ids.len()).unwrap_or(NO_NODE);
        self.ids.push(id);
        self.index.insert(id, ix);
        self.adj.push(Vec::new());
        ix
    }

    /// Adds the directed edge `from → to` (cost clamped to at least 1); replaces an existing
    /// edge between the same pair.
    pub fn add_edge(&mut self, from: NodeIx, to: NodeIx, cost: u32) {
        let Some(edges) = self.adj.get_mut(from as usize) else {
            return;
        };
        let cost = cost.max(1);
        match edges.iter_mut().find(|e| e.to == to) {
            Some(e) => e.cost = cost,
            None => edges.push(Edge { to, cost }),
        }
    }

    /// Adds edges both ways with the same cost.
    pub fn add_undirected(&mut self, a: NodeIx, b: NodeIx, cost: u32) {
        self.add_edge(a, b, cost);
        self.add_edge(b, a, cost);
    }

    /// Number of nodes.
    pub fn node_count(&self) -> usize {
        self.ids.len()
    }

    /// Number of directed edges.
    pub fn edge_count(&self) -> usize {
        self.adj.iter().map(Vec::len).sum()
    }

    /// Outgoing edges of `u` (empty for an unknown index).
    pub fn edges(&self, u: NodeIx) -> &[Edge] {
        self.adj.get(u as usize).map(Vec::as_slice).unwrap_or(&[])
    }

    /// The cost of `from → to`, if that edge exists.
    pub fn cost(&self, from: NodeIx, to: NodeIx) -> Option<u32> {
        self.edges(from).iter().find(|e| e.to == to).map(|e| e.cost)
    }

    /// The node ID at `ix`.
    pub fn id(&self, ix: NodeIx) -> Option<NodeId> {
        self.ids.get(ix as usize).copied()
    }

    /// The index of `id`.
    pub fn index_of(&self, id: &NodeId) -> Option<NodeIx> {
        self.index.get(id).copied()
    }

    /// Every node ID, by index.
    pub fn ids(&self) -> &[NodeId] {
        &self.ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> NodeId {
        NodeId::from_bytes([n; 16])
    }

    #[test]
    fn nodes_are_interned_and_edges_replaced() {
        let mut g = Graph::new();
        let a = g.add_node(id(1));
        let b = g.add_node(id(2));
        assert_eq!(g.add_node(id(1)), a);
        g.add_edge(a, b, 5);
        g.add_edge(a, b, 0);
        assert_eq!(g.cost(a, b), Some(1), "replaced, and clamped to at least 1");
        assert_eq!(g.cost(b, a), None);
        g.add_undirected(a, b, 7);
        assert_eq!((g.cost(a, b), g.cost(b, a)), (Some(7), Some(7)));
        assert_eq!((g.node_count(), g.edge_count()), (2, 2));
        assert_eq!(g.index_of(&id(2)), Some(b));
        assert!(g.edges(99).is_empty());
        g.add_edge(99, a, 1);
        assert_eq!(g.edge_count(), 2);
    }
}
