//! Cost of the path computations a node (and the simulator, once per node) runs on every
//! topology change: Dijkstra and 2 node-disjoint paths, on random geometric graphs of 1,200
//! and 10,000 nodes with average degree about 6.
//!
//! `cargo bench -p x0-routing --bench paths` (add `-- --quick` for a fast pass).

use std::f64::consts::PI;
use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use x0_routing::graph::NodeIx;
use x0_routing::paths::{PathScratch, ShortestPathTree, dijkstra, disjoint_paths};
use x0_routing::{Graph, NodeId};

/// Marsaglia's xorshift64: deterministic and dependency-free.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// `n` points uniform in the unit square, linked both ways when closer than the radius that
/// gives `degree` neighbours on average (ignoring the border); cost grows with distance, 1..=100.
fn random_geometric(n: usize, degree: f64, seed: u64) -> (Graph, Vec<(f64, f64)>) {
    let mut rng = XorShift(seed);
    let pts: Vec<(f64, f64)> = (0..n).map(|_| (rng.unit(), rng.unit())).collect();
    let r = (degree / (PI * n as f64)).sqrt();
    let cells = (1.0 / r).floor().max(1.0) as usize;
    let cell = |x: f64| ((x * cells as f64) as usize).min(cells - 1);
    let mut grid = vec![Vec::new(); cells * cells];
    for (i, &(x, y)) in pts.iter().enumerate() {
        grid[cell(y) * cells + cell(x)].push(i);
    }
    let mut g = Graph::new();
    for i in 0..n {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&(i as u64).to_be_bytes());
        g.add_node(NodeId::from_bytes(b));
    }
    for (i, &(x, y)) in pts.iter().enumerate() {
        let (cx, cy) = (cell(x), cell(y));
        for gy in cy.saturating_sub(1)..=(cy + 1).min(cells - 1) {
            for gx in cx.saturating_sub(1)..=(cx + 1).min(cells - 1) {
                for &j in &grid[gy * cells + gx] {
                    let d = ((pts[j].0 - x).powi(2) + (pts[j].1 - y).powi(2)).sqrt();
                    if j > i && d < r {
                        let cost = 1 + (d / r * 99.0) as u32;
                        g.add_undirected(i as NodeIx, j as NodeIx, cost);
                    }
                }
            }
        }
    }
    (g, pts)
}

/// Nodes by distance from `to`, nearest first.
fn by_distance(pts: &[(f64, f64)], to: (f64, f64)) -> Vec<NodeIx> {
    let d = |i: &NodeIx| {
        let p = pts[*i as usize];
        (p.0 - to.0).powi(2) + (p.1 - to.1).powi(2)
    };
    let mut ix: Vec<NodeIx> = (0..pts.len() as NodeIx).collect();
    ix.sort_by(|a, b| d(a).total_cmp(&d(b)));
    ix
}

/// A pair near opposite corners (long paths) with two node-disjoint paths between them: the
/// nearest nodes to the corners may hang off a cut vertex.
fn bench_pair(g: &Graph, pts: &[(f64, f64)]) -> (NodeIx, NodeIx) {
    let srcs = by_distance(pts, (0.15, 0.15));
    let dsts = by_distance(pts, (0.85, 0.85));
    for &s in srcs.iter().take(20) {
        for &t in dsts.iter().take(20) {
            if disjoint_paths(g, s, t, 2).len() == 2 {
                return (s, t);
            }
        }
    }
    panic!("no pair with two disjoint paths near the corners");
}

fn paths(c: &mut Criterion) {
    for n in [1_200usize, 10_000] {
        let (g, pts) = random_geometric(n, 6.5, 0x9e37_79b9_7f4a_7c15 ^ n as u64);
        let (src, dst) = bench_pair(&g, &pts);
        let tree = dijkstra(&g, src);
        let reached = tree.dist.iter().filter(|&&d| d != u64::MAX).count();
        let two = disjoint_paths(&g, src, dst, 2);
        eprintln!(
            "graph n={n}: {} directed edges (avg degree {:.2}), {reached} reachable from src; \
             path hops {:?}, disjoint costs {:?}",
            g.edge_count(),
            g.edge_count() as f64 / n as f64,
            tree.path_to(dst).map(|p| p.len() - 1),
            two.iter().map(|p| p.cost).collect::<Vec<_>>(),
        );

        let mut group = c.benchmark_group("paths");
        if n > 5_000 {
            group.sample_size(30);
        }
        group.bench_with_input(BenchmarkId::new("dijkstra", n), &g, |b, g| {
            b.iter(|| dijkstra(g, black_box(src)))
        });
        let mut scratch = PathScratch::new();
        let mut out = ShortestPathTree::new();
        group.bench_with_input(BenchmarkId::new("dijkstra_into", n), &g, |b, g| {
            b.iter(|| {
                scratch.dijkstra_into(g, black_box(src), &mut out);
                black_box(out.dist.len())
            })
        });
        group.bench_with_input(BenchmarkId::new("disjoint_paths_k2", n), &g, |b, g| {
            b.iter(|| disjoint_paths(g, black_box(src), black_box(dst), 2))
        });
        group.bench_with_input(
            BenchmarkId::new("disjoint_paths_k2_scratch", n),
            &g,
            |b, g| b.iter(|| scratch.disjoint_paths(g, black_box(src), black_box(dst), 2)),
        );
        group.finish();
    }
}

criterion_group!(benches, paths);
criterion_main!(benches);
