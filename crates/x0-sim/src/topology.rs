//! Topologies: which nodes are linked, and with what link parameters.
//!
//! Every generator is a pure function of its parameters and the seed (through
//! [`Stream::Topology`] for the graph and
//! [`Stream::LinkParams`] for latencies drawn from a range), so a
//! seed names one topology. Generated links are listed sorted by `(a, b)` with `a < b`; explicit
//! edges keep the order they were given in.
//!
//! | Generator | Graph |
//! |---|---|
//! | [`Generator::Ring`] | `i — i+1 mod n` |
//! | [`Generator::Grid`] | 4-neighbour lattice, node `y·width + x` |
//! | [`Generator::RandomGeometric`] | `n` points uniform in the unit square, linked within a radius (given, or solved from a target average degree with the boundary correction); then, if `connect`, components are joined by the shortest possible extra links |
//! | [`Generator::ScaleFree`] | Barabási–Albert: a clique of `m + 1` nodes, then each new node links to `m` distinct existing nodes chosen with probability proportional to degree |
//! | [`Generator::ErdosRenyi`] | `G(n, p)` (Batagelj–Brandes skipping, O(n + links)); then, if `connect`, each extra component gets one link to a random node of the components before it |
//! | [`Generator::Explicit`] | the edges given, each with optional link parameters |

use std::time::Duration;

use crate::link::LinkParams;
use crate::rng::{SimRng, Stream};
use crate::{LinkIx, NodeIx};

/// Most nodes a topology may have.
pub const MAX_NODES: u32 = 10_000_000;
/// Most links a topology may have.
pub const MAX_LINKS: u64 = 10_000_000;

/// Why a topology cannot be built.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum TopologyError {
    /// A generator parameter is out of range.
    #[error("{param} = {value}: must be {allowed}")]
    InvalidParameter {
        /// The parameter's name.
        param: &'static str,
        /// The value given.
        value: String,
        /// What is allowed.
        allowed: &'static str,
    },
    /// A link names a node that does not exist.
    #[error("link {a}–{b}: node {node} does not exist (there are {nodes} nodes, 0..{nodes})")]
    NoSuchNode {
        /// One end.
        a: NodeIx,
        /// The other end.
        b: NodeIx,
        /// The missing node.
        node: NodeIx,
        /// How many nodes there are.
        nodes: u32,
    },
    /// A link connects a node to itself.
    #[error("link {node}–{node} connects a node to itself")]
    SelfLoop {
        /// The node.
        node: NodeIx,
    },
    /// The same pair of nodes is linked twice.
    #[error("link {a}–{b} is listed twice")]
    DuplicateLink {
        /// One end.
        a: NodeIx,
        /// The other end.
        b: NodeIx,
    },
    /// The topology would be too large to simulate.
    #[error("{what} = {count} is more than the simulator's limit of {max}")]
    TooLarge {
        /// Nodes or links.
        what: &'static str,
        /// How many were asked for (or expected).
        count: u64,
        /// The limit.
        max: u64,
    },
}

/// One-way latency of a link: fixed, or drawn per link from a range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Latency {
    /// The same for every link.
    Fixed(Duration),
    /// Uniform in `[min, max]` (microsecond steps), drawn once per link; both directions of
    /// the link get the same value.
    Uniform {
        /// Smallest value.
        min: Duration,
        /// Largest value.
        max: Duration,
    },
}

/// Link parameters as a scenario gives them: like [`LinkParams`], but the latency may be a
/// range.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkSpec {
    /// One-way latency.
    pub latency: Latency,
    /// Jitter half-width.
    pub jitter: Duration,
    /// Loss probability.
    pub loss: f64,
    /// Bandwidth in bits per second, `None` for unlimited.
    pub bandwidth_bps: Option<u64>,
    /// Queue limit in datagrams.
    pub queue_limit: u32,
}

impl Default for LinkSpec {
    fn default() -> Self {
        let p = LinkParams::default();
        Self {
            latency: Latency::Fixed(p.latency),
            jitter: p.jitter,
            loss: p.loss,
            bandwidth_bps: p.bandwidth_bps,
            queue_limit: p.queue_limit,
        }
    }
}

impl LinkSpec {
    /// Concrete parameters for one link (draws its latency if it is a range).
    pub fn draw(&self, rng: &mut SimRng) -> LinkParams {
        let latency = match self.latency {
            Latency::Fixed(d) => d,
            Latency::Uniform { min, max } => {
                let lo = u64::try_from(min.as_micros()).unwrap_or(u64::MAX);
                let hi = u64::try_from(max.as_micros()).unwrap_or(u64::MAX);
                Duration::from_micros(rng.between(lo, hi))
            }
        };
        LinkParams {
            latency,
            jitter: self.jitter,
            loss: self.loss,
            bandwidth_bps: self.bandwidth_bps,
            queue_limit: self.queue_limit,
        }
    }
}

/// How far a random-geometric node reaches.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Reach {
    /// Link every pair closer than this (in the unit square).
    Radius(f64),
    /// Choose the radius so that the expected average degree is this.
    AvgDegree(f64),
}

/// One edge of an explicit topology.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ExplicitEdge {
    /// One end.
    pub a: NodeIx,
    /// The other end.
    pub b: NodeIx,
    /// Parameters for this link, instead of the defaults.
    pub links: Option<LinkSpec>,
}

/// A topology generator and its parameters.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Generator {
    /// A cycle of `n` nodes.
    Ring {
        /// Nodes.
        n: u32,
    },
    /// A `width × height` 4-neighbour lattice.
    Grid {
        /// Columns.
        width: u32,
        /// Rows.
        height: u32,
    },
    /// A random geometric graph in the unit square.
    RandomGeometric {
        /// Nodes.
        n: u32,
        /// Radius or target degree.
        reach: Reach,
        /// Join components with the shortest extra links.
        connect: bool,
    },
    /// A Barabási–Albert preferential-attachment graph.
    ScaleFree {
        /// Nodes.
        n: u32,
        /// Links each new node makes.
        m: u32,
    },
    /// An Erdős–Rényi `G(n, p)` graph.
    ErdosRenyi {
        /// Nodes.
        n: u32,
        /// Probability of each link.
        p: f64,
        /// Join components with extra links.
        connect: bool,
    },
    /// Exactly these edges.
    Explicit {
        /// Nodes (every edge end must be below this).
        nodes: u32,
        /// The edges.
        edges: Vec<ExplicitEdge>,
    },
}

impl Generator {
    /// How many nodes the topology will have (checks the size parameters, not the rest).
    pub fn node_count(&self) -> Result<u32, TopologyError> {
        let n = match *self {
            Self::Ring { n }
            | Self::RandomGeometric { n, .. }
            | Self::ScaleFree { n, .. }
            | Self::ErdosRenyi { n, .. } => n,
            Self::Grid { width, height } => {
                if width == 0 {
                    return Err(invalid("width", width, "at least 1"));
                }
                if height == 0 {
                    return Err(invalid("height", height, "at least 1"));
                }
                let cells = u64::from(width) * u64::from(height);
                u32::try_from(cells).map_err(|_| TopologyError::TooLarge {
                    what: "nodes",
                    count: cells,
                    max: u64::from(MAX_NODES),
                })?
            }
            Self::Explicit { nodes, .. } => nodes,
        };
        if n == 0 {
            let param = match self {
                Self::Explicit { .. } => "nodes",
                _ => "n",
            };
            return Err(invalid(param, 0, "at least 1"));
        }
        if n > MAX_NODES {
            return Err(TopologyError::TooLarge {
                what: "nodes",
                count: u64::from(n),
                max: u64::from(MAX_NODES),
            });
        }
        Ok(n)
    }
}

fn invalid(param: &'static str, value: impl ToString, allowed: &'static str) -> TopologyError {
    TopologyError::InvalidParameter {
        param,
        value: value.to_string(),
        allowed,
    }
}

/// One link of a topology, with the parameters of each direction.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TopoLink {
    /// One end.
    pub a: NodeIx,
    /// The other end.
    pub b: NodeIx,
    /// Parameters of `a → b`.
    pub forward: LinkParams,
    /// Parameters of `b → a`.
    pub backward: LinkParams,
}

/// A graph of nodes `0..node_count` and links between them.
#[derive(Debug, Clone)]
pub struct Topology {
    nodes: u32,
    links: Vec<TopoLink>,
    positions: Option<Vec<[f64; 2]>>,
    added_links: u32,
    components: u32,
}

impl Topology {
    /// A topology from explicit links; refuses self-loops, unknown nodes and duplicates.
    pub fn new(nodes: u32, links: Vec<TopoLink>) -> Result<Self, TopologyError> {
        if nodes == 0 {
            return Err(invalid("nodes", 0, "at least 1"));
        }
        if nodes > MAX_NODES {
            return Err(TopologyError::TooLarge {
                what: "nodes",
                count: u64::from(nodes),
                max: u64::from(MAX_NODES),
            });
        }
        check_edges(nodes, links.iter().map(|l| (l.a, l.b)))?;
        let components = count_components(nodes, links.iter().map(|l| (l.a, l.b)));
        Ok(Self {
            nodes,
            links,
            positions: None,
            added_links: 0,
            components,
        })
    }

    /// Runs `generator` with `seed`, giving each link parameters drawn from `defaults` (or the
    /// edge's own, for explicit edges that have them).
    pub fn generate(
        generator: &Generator,
        defaults: &LinkSpec,
        seed: u64,
    ) -> Result<Self, TopologyError> {
        let n = generator.node_count()?;
        let mut rng = SimRng::new(seed, Stream::Topology);
        let mut positions = None;
        let mut added = 0;
        let edges: Vec<(NodeIx, NodeIx)> = match generator {
            Generator::Ring { .. } => ring(n),
            Generator::Grid { width, height } => grid(*width, *height),
            Generator::RandomGeometric { reach, connect, .. } => {
                let radius = match *reach {
                    Reach::Radius(r) if r > 0.0 && r.is_finite() => r,
                    Reach::Radius(r) => return Err(invalid("radius", r, "a number above 0")),
                    Reach::AvgDegree(d) if d > 0.0 && d.is_finite() => radius_for_degree(n, d),
                    Reach::AvgDegree(d) => {
                        return Err(invalid("avg_degree", d, "a number above 0"));
                    }
                };
                let pos: Vec<[f64; 2]> = (0..n).map(|_| [rng.unit(), rng.unit()]).collect();
                let mut edges = geometric_edges(&pos, radius);
                if edges.len() as u64 > MAX_LINKS {
                    return Err(TopologyError::TooLarge {
                        what: "links",
                        count: edges.len() as u64,
                        max: MAX_LINKS,
                    });
                }
                if *connect {
                    added = stitch_nearest(&pos, &mut edges);
                }
                positions = Some(pos);
                edges
            }
            Generator::ScaleFree { m, .. } => scale_free(n, *m, &mut rng)?,
            Generator::ErdosRenyi { p, connect, .. } => {
                let mut edges = erdos_renyi(n, *p, &mut rng)?;
                if *connect {
                    added = stitch_random(n, &mut edges, &mut rng);
                }
                edges
            }
            Generator::Explicit { edges, .. } => {
                check_edges(n, edges.iter().map(|e| (e.a, e.b)))?;
                edges.iter().map(|e| (e.a.min(e.b), e.a.max(e.b))).collect()
            }
        };
        let mut edges = edges;
        if !matches!(generator, Generator::Explicit { .. }) {
            edges.sort_unstable();
            edges.dedup();
        }
        if edges.len() as u64 > MAX_LINKS {
            return Err(TopologyError::TooLarge {
                what: "links",
                count: edges.len() as u64,
                max: MAX_LINKS,
            });
        }
        let mut param_rng = SimRng::new(seed, Stream::LinkParams);
        let links = edges
            .iter()
            .enumerate()
            .map(|(i, &(a, b))| {
                let spec = match generator {
                    Generator::Explicit { edges: given, .. } => {
                        given.get(i).and_then(|e| e.links).unwrap_or(*defaults)
                    }
                    _ => *defaults,
                };
                let p = spec.draw(&mut param_rng);
                TopoLink {
                    a,
                    b,
                    forward: p,
                    backward: p,
                }
            })
            .collect::<Vec<_>>();
        let components = count_components(n, edges.iter().copied());
        Ok(Self {
            nodes: n,
            links,
            positions,
            added_links: u32::try_from(added).unwrap_or(u32::MAX),
            components,
        })
    }

    /// Number of nodes.
    pub fn node_count(&self) -> u32 {
        self.nodes
    }

    /// Number of links.
    pub fn link_count(&self) -> usize {
        self.links.len()
    }

    /// The links, by index.
    pub fn links(&self) -> &[TopoLink] {
        &self.links
    }

    /// Mutable access to one link's parameters (for per-link overrides after generation).
    pub fn link_mut(&mut self, link: LinkIx) -> Option<&mut TopoLink> {
        self.links.get_mut(link as usize)
    }

    /// The index of the link between `a` and `b` (either order). Linear in the link count.
    pub fn find_link(&self, a: NodeIx, b: NodeIx) -> Option<LinkIx> {
        let (lo, hi) = (a.min(b), a.max(b));
        self.links
            .iter()
            .position(|l| l.a.min(l.b) == lo && l.a.max(l.b) == hi)
            .and_then(|i| LinkIx::try_from(i).ok())
    }

    /// Node positions in the unit square (random-geometric topologies only).
    pub fn positions(&self) -> Option<&[[f64; 2]]> {
        self.positions.as_deref()
    }

    /// Links the generator added to join components.
    pub fn added_links(&self) -> u32 {
        self.added_links
    }

    /// Connected components (1 when connected).
    pub fn components(&self) -> u32 {
        self.components
    }

    /// Mean number of links per node.
    pub fn average_degree(&self) -> f64 {
        2.0 * self.links.len() as f64 / f64::from(self.nodes)
    }
}

fn check_edges(
    nodes: u32,
    edges: impl Iterator<Item = (NodeIx, NodeIx)>,
) -> Result<(), TopologyError> {
    let mut seen = Vec::new();
    for (a, b) in edges {
        for node in [a, b] {
            if node >= nodes {
                return Err(TopologyError::NoSuchNode { a, b, node, nodes });
            }
        }
        if a == b {
            return Err(TopologyError::SelfLoop { node: a });
        }
        seen.push((a.min(b), a.max(b), a, b));
    }
    seen.sort_unstable();
    for w in seen.windows(2) {
        if w[0].0 == w[1].0 && w[0].1 == w[1].1 {
            return Err(TopologyError::DuplicateLink {
                a: w[1].2,
                b: w[1].3,
            });
        }
    }
    if seen.len() as u64 > MAX_LINKS {
        return Err(TopologyError::TooLarge {
            what: "links",
            count: seen.len() as u64,
            max: MAX_LINKS,
        });
    }
    Ok(())
}

fn ring(n: u32) -> Vec<(NodeIx, NodeIx)> {
    match n {
        0 | 1 => Vec::new(),
        2 => vec![(0, 1)],
        _ => (0..n)
            .map(|i| (i, (i + 1) % n))
            .map(|(a, b)| (a.min(b), a.max(b)))
            .collect(),
    }
}

fn grid(width: u32, height: u32) -> Vec<(NodeIx, NodeIx)> {
    let mut edges = Vec::new();
    for y in 0..height {
        for x in 0..width {
            let i = y * width + x;
            if x + 1 < width {
                edges.push((i, i + 1));
            }
            if y + 1 < height {
                edges.push((i, i + width));
            }
        }
    }
    edges
}

/// The radius at which a point of a uniform set of `n` in the unit square has on average
/// `degree` others within reach, with the boundary taken into account: the expected area of a
/// disc of radius `r ≤ 1` inside the square is `πr² − 8r³/3 + r⁴/2`.
fn radius_for_degree(n: u32, degree: f64) -> f64 {
    let others = f64::from(n.saturating_sub(1)).max(1.0);
    let target = degree / others;
    let area = |r: f64| std::f64::consts::PI * r * r - 8.0 / 3.0 * r * r * r + 0.5 * r.powi(4);
    if target >= area(1.0) {
        return std::f64::consts::SQRT_2;
    }
    let (mut lo, mut hi) = (0.0f64, 1.0f64);
    for _ in 0..100 {
        let mid = 0.5 * (lo + hi);
        if area(mid) < target {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    hi
}

fn dist2(p: &[f64; 2], q: &[f64; 2]) -> f64 {
    let dx = p[0] - q[0];
    let dy = p[1] - q[1];
    dx * dx + dy * dy
}

/// Every pair within `radius`, with a bucket grid so the work is O(n + pairs examined).
fn geometric_edges(pos: &[[f64; 2]], radius: f64) -> Vec<(NodeIx, NodeIx)> {
    let n = pos.len();
    let r2 = radius * radius;
    // Cells at least `radius` wide, and no more cells than about n.
    let by_radius = if radius >= 1.0 {
        1
    } else {
        (1.0 / radius).floor().max(1.0) as usize
    };
    let side = by_radius
        .min((n as f64).sqrt().ceil().max(1.0) as usize)
        .max(1);
    let cell_of = |p: &[f64; 2]| -> (usize, usize) {
        let cx = ((p[0] * side as f64) as usize).min(side - 1);
        let cy = ((p[1] * side as f64) as usize).min(side - 1);
        (cx, cy)
    };
    // Counting sort of points into cells (CSR), in index order inside each cell.
    let mut start = vec![0usize; side * side + 1];
    for p in pos {
        let (cx, cy) = cell_of(p);
        start[cy * side + cx + 1] += 1;
    }
    for i in 0..side * side {
        start[i + 1] += start[i];
    }
    let mut fill = start.clone();
    let mut members = vec![0u32; n];
    for (i, p) in pos.iter().enumerate() {
        let (cx, cy) = cell_of(p);
        let c = cy * side + cx;
        members[fill[c]] = i as u32;
        fill[c] += 1;
    }
    let mut edges = Vec::new();
    for (i, p) in pos.iter().enumerate() {
        let (cx, cy) = cell_of(p);
        for ny in cy.saturating_sub(1)..=(cy + 1).min(side - 1) {
            for nx in cx.saturating_sub(1)..=(cx + 1).min(side - 1) {
                let c = ny * side + nx;
                for &j in &members[start[c]..start[c + 1]] {
                    if (j as usize) > i && dist2(p, &pos[j as usize]) <= r2 {
                        edges.push((i as u32, j));
                    }
                }
            }
        }
    }
    edges
}

/// Union-find over node indices.
struct Components {
    parent: Vec<u32>,
    size: Vec<u32>,
}

impl Components {
    fn new(n: u32) -> Self {
        Self {
            parent: (0..n).collect(),
            size: vec![1; n as usize],
        }
    }

    fn find(&mut self, mut x: u32) -> u32 {
        while self.parent[x as usize] != x {
            let grand = self.parent[self.parent[x as usize] as usize];
            self.parent[x as usize] = grand;
            x = grand;
        }
        x
    }

    fn union(&mut self, a: u32, b: u32) -> bool {
        let (ra, rb) = (self.find(a), self.find(b));
        if ra == rb {
            return false;
        }
        let (big, small) = if self.size[ra as usize] >= self.size[rb as usize] {
            (ra, rb)
        } else {
            (rb, ra)
        };
        self.parent[small as usize] = big;
        self.size[big as usize] += self.size[small as usize];
        true
    }
}

fn components_of(n: u32, edges: impl Iterator<Item = (NodeIx, NodeIx)>) -> (Components, u32) {
    let mut uf = Components::new(n);
    let mut count = n;
    for (a, b) in edges {
        if a < n && b < n && uf.union(a, b) {
            count -= 1;
        }
    }
    (uf, count)
}

fn count_components(n: u32, edges: impl Iterator<Item = (NodeIx, NodeIx)>) -> u32 {
    components_of(n, edges).1
}

/// Joins components with the shortest extra links: repeatedly, the smallest component (ties:
/// the one holding the lowest node index) gets the shortest link from one of its nodes to a
/// node outside it (ties: the lowest pair of indices). By the cut property each such link
/// belongs to a minimum spanning tree of the complete geometric graph, so the total length
/// added is the least that makes the graph connected. Returns how many links were added.
fn stitch_nearest(pos: &[[f64; 2]], edges: &mut Vec<(NodeIx, NodeIx)>) -> usize {
    let n = pos.len() as u32;
    let (mut uf, mut count) = components_of(n, edges.iter().copied());
    let mut added = 0;
    let mut roots = vec![0u32; n as usize];
    let mut members = Vec::new();
    while count > 1 {
        for v in 0..n {
            roots[v as usize] = uf.find(v);
        }
        // Smallest component; ties go to the one seen first (lowest member).
        let mut best_root = roots[0];
        let mut best_size = u32::MAX;
        for v in 0..n {
            let r = roots[v as usize];
            let s = uf.size[r as usize];
            if s < best_size {
                best_size = s;
                best_root = r;
            }
        }
        members.clear();
        members.extend((0..n).filter(|&v| roots[v as usize] == best_root));
        let mut best: Option<(f64, NodeIx, NodeIx)> = None;
        for &u in &members {
            for v in 0..n {
                if roots[v as usize] == best_root {
                    continue;
                }
                let d = dist2(&pos[u as usize], &pos[v as usize]);
                let pair = (u.min(v), u.max(v));
                let better = match best {
                    None => true,
                    Some((bd, ba, bb)) => d < bd || (d == bd && pair < (ba, bb)),
                };
                if better {
                    best = Some((d, pair.0, pair.1));
                }
            }
        }
        let Some((_, a, b)) = best else { break };
        edges.push((a, b));
        uf.union(a, b);
        count -= 1;
        added += 1;
    }
    added
}

/// Joins components in order of their lowest node: each later component gets one link from a
/// random member to a random node of the components before it.
fn stitch_random(n: u32, edges: &mut Vec<(NodeIx, NodeIx)>, rng: &mut SimRng) -> usize {
    let (mut uf, count) = components_of(n, edges.iter().copied());
    if count <= 1 {
        return 0;
    }
    // Members of each component, components ordered by their lowest node.
    let mut order: Vec<u32> = Vec::new(); // roots, in first-seen order
    let mut slot = vec![u32::MAX; n as usize];
    let mut groups: Vec<Vec<NodeIx>> = Vec::new();
    for v in 0..n {
        let r = uf.find(v);
        if slot[r as usize] == u32::MAX {
            slot[r as usize] = order.len() as u32;
            order.push(r);
            groups.push(Vec::new());
        }
        groups[slot[r as usize] as usize].push(v);
    }
    let mut before: Vec<NodeIx> = groups[0].clone();
    let mut added = 0;
    for g in &groups[1..] {
        let u = g[rng.below(g.len() as u64) as usize];
        let v = before[rng.below(before.len() as u64) as usize];
        edges.push((u.min(v), u.max(v)));
        before.extend_from_slice(g);
        added += 1;
    }
    added
}

fn scale_free(n: u32, m: u32, rng: &mut SimRng) -> Result<Vec<(NodeIx, NodeIx)>, TopologyError> {
    if m == 0 {
        return Err(invalid("m", m, "at least 1"));
    }
    if n <= m {
        return Err(invalid("n", n, "greater than m"));
    }
    let expected = u64::from(m) * u64::from(m + 1) / 2 + u64::from(n - m - 1) * u64::from(m);
    if expected > MAX_LINKS {
        return Err(TopologyError::TooLarge {
            what: "links",
            count: expected,
            max: MAX_LINKS,
        });
    }
    let mut edges = Vec::with_capacity(expected as usize);
    // Each node appears once per link end: sampling it is sampling by degree.
    let mut ends: Vec<NodeIx> = Vec::with_capacity(2 * expected as usize);
    for a in 0..=m {
        for b in a + 1..=m {
            edges.push((a, b));
            ends.push(a);
            ends.push(b);
        }
    }
    let mut chosen = Vec::with_capacity(m as usize);
    for v in m + 1..n {
        chosen.clear();
        while chosen.len() < m as usize {
            let t = ends[rng.below(ends.len() as u64) as usize];
            if !chosen.contains(&t) {
                chosen.push(t);
            }
        }
        chosen.sort_unstable();
        for &t in &chosen {
            edges.push((t, v));
            ends.push(t);
            ends.push(v);
        }
    }
    Ok(edges)
}

fn erdos_renyi(n: u32, p: f64, rng: &mut SimRng) -> Result<Vec<(NodeIx, NodeIx)>, TopologyError> {
    if !(0.0..=1.0).contains(&p) {
        return Err(invalid("p", p, "between 0 and 1"));
    }
    let pairs = u64::from(n) * u64::from(n.saturating_sub(1)) / 2;
    let expected = (pairs as f64 * p).ceil() as u64;
    if expected > MAX_LINKS {
        return Err(TopologyError::TooLarge {
            what: "links",
            count: expected,
            max: MAX_LINKS,
        });
    }
    let mut edges = Vec::new();
    if p <= 0.0 || n < 2 {
        return Ok(edges);
    }
    // Batagelj & Brandes (2005): jump over the pairs that get no link.
    let log_q = (1.0 - p).ln();
    let n = i64::from(n);
    let (mut v, mut w) = (1i64, -1i64);
    while v < n {
        let r = rng.unit();
        let skip = if log_q == f64::NEG_INFINITY {
            0
        } else {
            ((1.0 - r).ln() / log_q).floor() as i64
        };
        w = w.saturating_add(1).saturating_add(skip);
        while w >= v && v < n {
            w -= v;
            v += 1;
        }
        if v < n {
            // Both in 0..n, which fits u32.
            edges.push((w as u32, v as u32));
        }
    }
    Ok(edges)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(g: Generator, seed: u64) -> Topology {
        Topology::generate(&g, &LinkSpec::default(), seed).unwrap()
    }

    fn degrees(t: &Topology) -> Vec<u32> {
        let mut d = vec![0; t.node_count() as usize];
        for l in t.links() {
            d[l.a as usize] += 1;
            d[l.b as usize] += 1;
        }
        d
    }

    #[test]
    fn ring_and_grid_shapes() {
        let r = build(Generator::Ring { n: 8 }, 1);
        assert_eq!((r.node_count(), r.link_count(), r.components()), (8, 8, 1));
        assert!(degrees(&r).iter().all(|&d| d == 2));
        assert_eq!(build(Generator::Ring { n: 2 }, 1).link_count(), 1);
        assert_eq!(build(Generator::Ring { n: 1 }, 1).link_count(), 0);
        let g = build(
            Generator::Grid {
                width: 10,
                height: 5,
            },
            1,
        );
        assert_eq!(g.node_count(), 50);
        assert_eq!(g.link_count(), 9 * 5 + 10 * 4);
        assert_eq!(g.components(), 1);
        assert!(g.find_link(0, 1).is_some());
        assert!(g.find_link(10, 0).is_some());
        assert!(g.find_link(9, 10).is_none(), "no wrap-around");
    }

    #[test]
    fn random_geometric_is_connected_deterministic_and_near_target_degree() {
        let g = Generator::RandomGeometric {
            n: 2000,
            reach: Reach::AvgDegree(8.0),
            connect: true,
        };
        let a = build(g.clone(), 5);
        let b = build(g.clone(), 5);
        let c = build(g, 6);
        assert_eq!(a.links(), b.links());
        assert_ne!(a.links(), c.links());
        assert_eq!(a.components(), 1);
        let deg = a.average_degree();
        assert!((7.0..9.0).contains(&deg), "average degree {deg}");
        assert_eq!(a.positions().map(<[_]>::len), Some(2000));
    }

    #[test]
    fn random_geometric_stitches_with_shortest_links() {
        // Tiny radius: almost all isolated; stitching must connect everything with exactly
        // (components - 1) links, and each added link is the shortest leaving its component.
        let g = Generator::RandomGeometric {
            n: 60,
            reach: Reach::Radius(0.01),
            connect: true,
        };
        let t = build(g, 3);
        assert_eq!(t.components(), 1);
        let unstitched = Topology::generate(
            &Generator::RandomGeometric {
                n: 60,
                reach: Reach::Radius(0.01),
                connect: false,
            },
            &LinkSpec::default(),
            3,
        )
        .unwrap();
        assert_eq!(
            t.added_links(),
            unstitched.components() - 1,
            "one link per extra component"
        );
        assert_eq!(unstitched.added_links(), 0);
        // The total added length is that of a minimum spanning tree over the components:
        // compare with Kruskal on all pairs.
        let pos = t.positions().unwrap();
        let mut pairs = Vec::new();
        for i in 0..60u32 {
            for j in i + 1..60 {
                pairs.push((dist2(&pos[i as usize], &pos[j as usize]).sqrt(), i, j));
            }
        }
        pairs.sort_by(|x, y| x.0.total_cmp(&y.0));
        let (mut uf, _) = components_of(60, unstitched.links().iter().map(|l| (l.a, l.b)));
        let mst: f64 = pairs
            .iter()
            .filter(|&&(_, i, j)| uf.union(i, j))
            .map(|p| p.0)
            .sum();
        let in_unstitched = |a, b| unstitched.find_link(a, b).is_some();
        let added: f64 = t
            .links()
            .iter()
            .filter(|l| !in_unstitched(l.a, l.b))
            .map(|l| dist2(&pos[l.a as usize], &pos[l.b as usize]).sqrt())
            .sum();
        assert!((mst - added).abs() < 1e-9, "mst {mst} added {added}");
    }

    #[test]
    fn radius_for_degree_accounts_for_the_boundary() {
        let r = radius_for_degree(10_001, 8.0);
        let naive = (8.0 / (std::f64::consts::PI * 10_000.0)).sqrt();
        assert!(r > naive && r < naive * 1.1);
        assert_eq!(radius_for_degree(5, 100.0), std::f64::consts::SQRT_2);
    }

    #[test]
    fn scale_free_edge_count_and_hubs() {
        let t = build(Generator::ScaleFree { n: 1000, m: 2 }, 9);
        assert_eq!(t.link_count(), 3 + 997 * 2);
        assert_eq!(t.components(), 1);
        let d = degrees(&t);
        assert!(d.iter().all(|&x| x >= 2));
        assert!(
            *d.iter().max().unwrap() > 20,
            "preferential attachment makes hubs"
        );
        assert!(matches!(
            Topology::generate(
                &Generator::ScaleFree { n: 2, m: 2 },
                &LinkSpec::default(),
                1
            ),
            Err(TopologyError::InvalidParameter { param: "n", .. })
        ));
        assert!(matches!(
            Topology::generate(
                &Generator::ScaleFree { n: 5, m: 0 },
                &LinkSpec::default(),
                1
            ),
            Err(TopologyError::InvalidParameter { param: "m", .. })
        ));
    }

    #[test]
    fn erdos_renyi_density_and_connection() {
        let t = build(
            Generator::ErdosRenyi {
                n: 1000,
                p: 0.01,
                connect: false,
            },
            4,
        );
        let expected = 1000.0 * 999.0 / 2.0 * 0.01;
        let got = t.link_count() as f64;
        assert!((got - expected).abs() < 5.0 * expected.sqrt(), "{got}");
        let sparse = Generator::ErdosRenyi {
            n: 500,
            p: 0.002,
            connect: false,
        };
        let loose = build(sparse, 4);
        assert!(loose.components() > 1);
        let tight = build(
            Generator::ErdosRenyi {
                n: 500,
                p: 0.002,
                connect: true,
            },
            4,
        );
        assert_eq!(tight.components(), 1);
        assert_eq!(tight.added_links(), loose.components() - 1);
        let full = build(
            Generator::ErdosRenyi {
                n: 20,
                p: 1.0,
                connect: false,
            },
            4,
        );
        assert_eq!(full.link_count(), 190);
        let empty = build(
            Generator::ErdosRenyi {
                n: 20,
                p: 0.0,
                connect: false,
            },
            4,
        );
        assert_eq!((empty.link_count(), empty.components()), (0, 20));
    }

    #[test]
    fn explicit_edges_keep_order_and_overrides() {
        let fast = LinkSpec {
            latency: Latency::Fixed(Duration::from_micros(10)),
            ..LinkSpec::default()
        };
        let t = build(
            Generator::Explicit {
                nodes: 4,
                edges: vec![
                    ExplicitEdge {
                        a: 3,
                        b: 2,
                        links: None,
                    },
                    ExplicitEdge {
                        a: 0,
                        b: 1,
                        links: Some(fast),
                    },
                ],
            },
            1,
        );
        assert_eq!((t.links()[0].a, t.links()[0].b), (2, 3));
        assert_eq!(t.links()[0].forward.latency, LinkParams::DEFAULT_LATENCY);
        assert_eq!(t.links()[1].forward.latency, Duration::from_micros(10));
        assert_eq!(t.components(), 2);
    }

    #[test]
    fn explicit_edges_are_checked() {
        let e = |a, b| ExplicitEdge { a, b, links: None };
        let run = |edges| {
            Topology::generate(
                &Generator::Explicit { nodes: 3, edges },
                &LinkSpec::default(),
                1,
            )
        };
        assert_eq!(
            run(vec![e(0, 3)]).unwrap_err(),
            TopologyError::NoSuchNode {
                a: 0,
                b: 3,
                node: 3,
                nodes: 3
            }
        );
        assert_eq!(
            run(vec![e(1, 1)]).unwrap_err(),
            TopologyError::SelfLoop { node: 1 }
        );
        assert_eq!(
            run(vec![e(0, 1), e(1, 0)]).unwrap_err(),
            TopologyError::DuplicateLink { a: 1, b: 0 }
        );
    }

    #[test]
    fn latency_ranges_are_drawn_per_link() {
        let spec = LinkSpec {
            latency: Latency::Uniform {
                min: Duration::from_millis(1),
                max: Duration::from_millis(20),
            },
            ..LinkSpec::default()
        };
        let t = Topology::generate(&Generator::Ring { n: 200 }, &spec, 2).unwrap();
        let lats: Vec<_> = t.links().iter().map(|l| l.forward.latency).collect();
        assert!(
            lats.iter()
                .all(|l| *l >= Duration::from_millis(1) && *l <= Duration::from_millis(20))
        );
        assert!(lats.iter().any(|l| *l < Duration::from_millis(5)));
        assert!(lats.iter().any(|l| *l > Duration::from_millis(15)));
        assert!(t.links().iter().all(|l| l.forward == l.backward));
    }

    #[test]
    fn sizes_are_checked() {
        assert!(matches!(
            Generator::Ring { n: 0 }.node_count(),
            Err(TopologyError::InvalidParameter { param: "n", .. })
        ));
        assert!(matches!(
            Generator::Grid {
                width: 0,
                height: 3
            }
            .node_count(),
            Err(TopologyError::InvalidParameter { param: "width", .. })
        ));
        assert!(matches!(
            Generator::Grid {
                width: 100_000,
                height: 100_000
            }
            .node_count(),
            Err(TopologyError::TooLarge { .. })
        ));
        assert!(matches!(
            Topology::generate(
                &Generator::ErdosRenyi {
                    n: 1_000_000,
                    p: 0.5,
                    connect: false
                },
                &LinkSpec::default(),
                1
            ),
            Err(TopologyError::TooLarge { what: "links", .. })
        ));
        assert!(matches!(
            Topology::generate(
                &Generator::RandomGeometric {
                    n: 10,
                    reach: Reach::Radius(-1.0),
                    connect: true
                },
                &LinkSpec::default(),
                1
            ),
            Err(TopologyError::InvalidParameter {
                param: "radius",
                ..
            })
        ));
    }
}
