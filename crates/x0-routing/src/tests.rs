//! Router tests over a miniature network: routers joined by ideal links with a fixed delay, in
//! virtual time. (The full simulator, with loss, jitter and scenarios, is `x0-sim`.)

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::time::Duration;

use x0_wire::NodeId;
use x0_wire::routing::{Advert, AdvertBody, AdvertisedLink, RoutingMessage};

use crate::auth::InsecureDigestAuth;
use crate::config::RouterConfig;
use crate::router::{DownCause, LinkId, Router, RouterEvent};
use crate::time::Instant;

const MESH_KEY: u64 = 42;

fn id(n: usize) -> NodeId {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&(n as u64 + 1).to_be_bytes());
    NodeId::from_bytes(b)
}

/// Link id between a and b as seen from either end: a*1000+b.
fn link(a: usize, b: usize) -> LinkId {
    (a * 1000 + b) as LinkId
}

/// `(arrival, tie-break seq, from, to, datagram)`
type InFlight = (Instant, u64, usize, usize, Vec<u8>);

struct Net {
    now: Instant,
    routers: Vec<Option<Router>>,
    edges: BTreeSet<(usize, usize)>,
    /// Directed edges that silently drop everything.
    silent: BTreeSet<(usize, usize)>,
    delay: Duration,
    queue: BinaryHeap<Reverse<InFlight>>,
    seq: u64,
    events: Vec<(Instant, usize, RouterEvent)>,
    /// Drop every n-th datagram (0 = none).
    drop_every: u64,
    /// Re-establish links declared down after silence (as the daemon's diallers do).
    redial: bool,
    sent: u64,
}

impl Net {
    fn new(n: usize, edges: &[(usize, usize)], cfg: RouterConfig) -> Self {
        let now = Instant::ZERO;
        let routers = (0..n)
            .map(|i| {
                Some(Router::new(
                    cfg.clone(),
                    id(i),
                    Box::new(InsecureDigestAuth::new(id(i), MESH_KEY)),
                    0,
                    now,
                ))
            })
            .collect();
        let mut net = Self {
            now,
            routers,
            edges: BTreeSet::new(),
            silent: BTreeSet::new(),
            delay: Duration::from_millis(1),
            queue: BinaryHeap::new(),
            seq: 0,
            events: Vec::new(),
            drop_every: 0,
            redial: false,
            sent: 0,
        };
        for &(a, b) in edges {
            net.connect(a, b);
        }
        net
    }

    fn connect(&mut self, a: usize, b: usize) {
        self.edges.insert((a.min(b), a.max(b)));
        let now = self.now;
        if let Some(r) = self.routers[a].as_mut() {
            r.link_up(now, link(a, b), id(b));
        }
        if let Some(r) = self.routers[b].as_mut() {
            r.link_up(now, link(b, a), id(a));
        }
        self.pump();
    }

    fn router(&mut self, i: usize) -> &mut Router {
        self.routers[i].as_mut().unwrap()
    }

    /// Moves transmits into the queue and collects events.
    fn pump(&mut self) {
        for i in 0..self.routers.len() {
            let Some(r) = self.routers[i].as_mut() else {
                continue;
            };
            while let Some((l, bytes)) = r.poll_transmit() {
                let to = (l as usize) % 1000;
                self.sent += 1;
                let dropped = self.drop_every != 0 && self.sent.is_multiple_of(self.drop_every);
                if !dropped && !self.silent.contains(&(i, to)) {
                    self.seq += 1;
                    self.queue
                        .push(Reverse((self.now + self.delay, self.seq, i, to, bytes)));
                }
            }
            while let Some(e) = r.poll_event() {
                self.events.push((self.now, i, e));
            }
        }
        // Stand-in for the daemon's diallers: a link declared down after silence while the
        // edge still carries traffic is re-established.
        if self.redial {
            let now = self.now;
            let redo: Vec<(usize, usize)> = self
                .events
                .iter()
                .filter(|(t, _, e)| {
                    *t == now
                        && matches!(
                            e,
                            RouterEvent::NeighborDown {
                                cause: DownCause::Silent,
                                ..
                            }
                        )
                })
                .filter_map(|(_, i, e)| match e {
                    RouterEvent::NeighborDown { link: l, .. } => Some((*i, (*l as usize) % 1000)),
                    _ => None,
                })
                .filter(|&(a, b)| {
                    self.edges.contains(&(a.min(b), a.max(b))) && !self.silent.contains(&(a, b))
                })
                .collect();
            for (a, b) in redo {
                if let Some(r) = self.routers[a].as_mut() {
                    r.link_up(now, link(a, b), id(b));
                }
            }
        }
    }

    fn run_until(&mut self, until: Instant) {
        loop {
            let next_msg = self.queue.peek().map(|Reverse((t, ..))| *t);
            let next_timer = self
                .routers
                .iter()
                .flatten()
                .filter_map(|r| r.poll_timeout())
                .min();
            let next = match (next_msg, next_timer) {
                (Some(a), Some(b)) => a.min(b),
                (a, b) => a.or(b).unwrap_or(until),
            };
            if next > until {
                self.now = until;
                return;
            }
            self.now = next.max(self.now);
            if next_msg == Some(next) {
                let Reverse((_, _, from, to, bytes)) = self.queue.pop().unwrap();
                let now = self.now;
                if let Some(r) = self.routers[to].as_mut() {
                    r.handle_datagram(now, link(to, from), &bytes);
                }
            } else {
                let now = self.now;
                for r in self.routers.iter_mut().flatten() {
                    if r.poll_timeout().is_some_and(|t| t <= now) {
                        r.handle_timeout(now);
                    }
                }
            }
            self.pump();
        }
    }

    fn run_for(&mut self, d: Duration) {
        let until = self.now + d;
        self.run_until(until);
    }

    /// Follows next hops from `src` to `dst` over live edges; a node on its fast-reroute backup
    /// sends the packet along the explicit backup path. The path, or None on a loop or a dead
    /// end.
    fn forward(&mut self, src: usize, dst: usize) -> Option<Vec<usize>> {
        let mut path = vec![src];
        let mut at = src;
        let now = self.now;
        let index = |n: &NodeId| (0..1000).find(|i| id(*i) == *n);
        while at != dst {
            let router = self.routers[at].as_mut()?;
            let hop = router.next_hop(now, &id(dst))?;
            let hops: Vec<usize> = if hop.via_backup {
                router
                    .backup_path(now, &id(dst))?
                    .iter()
                    .skip(1)
                    .filter_map(index)
                    .collect()
            } else {
                vec![(hop.link as usize) % 1000]
            };
            let explicit = hop.via_backup;
            for next in hops {
                let live = self.edges.contains(&(at.min(next), at.max(next)))
                    && !self.silent.contains(&(at, next))
                    && self.routers[next].is_some();
                if !live || (!explicit && path.contains(&next)) || path.len() > 1000 {
                    return None;
                }
                path.push(next);
                at = next;
            }
        }
        Some(path)
    }

    fn all_pairs_route(&mut self) -> bool {
        let n = self.routers.len();
        (0..n).all(|a| (0..n).all(|b| a == b || self.forward(a, b).is_some()))
    }
}

fn ring(n: usize) -> Vec<(usize, usize)> {
    (0..n).map(|i| (i, (i + 1) % n)).collect()
}

#[test]
fn a_ring_converges_to_loop_free_routes_everywhere() {
    let mut net = Net::new(8, &ring(8), RouterConfig::default());
    net.run_for(Duration::from_secs(2));
    for r in net.routers.iter().flatten() {
        assert_eq!(r.lsdb().len(), 8);
    }
    let digests: BTreeSet<u64> = net
        .routers
        .iter()
        .flatten()
        .map(|r| r.lsdb().digest())
        .collect();
    assert_eq!(digests.len(), 1, "every LSDB holds the same versions");
    assert!(net.all_pairs_route());
    // Shortest way round: 0 → 3 takes 3 hops, not 5.
    assert_eq!(net.forward(0, 3).unwrap().len(), 4);
    assert_eq!(net.forward(0, 5).unwrap().len(), 4);
}

#[test]
fn a_silent_neighbour_is_declared_down_after_three_intervals() {
    let mut net = Net::new(3, &[(0, 1), (1, 2)], RouterConfig::default());
    net.run_for(Duration::from_secs(1));
    let cut = net.now;
    net.silent.insert((1, 0));
    net.silent.insert((0, 1));
    net.run_for(Duration::from_secs(1));
    let down: Vec<_> = net
        .events
        .iter()
        .filter(|(_, n, e)| {
            *n == 0
                && matches!(
                    e,
                    RouterEvent::NeighborDown {
                        cause: DownCause::Silent,
                        ..
                    }
                )
        })
        .collect();
    assert_eq!(down.len(), 1);
    let after = down[0].0.saturating_since(cut);
    assert!(
        after >= Duration::from_millis(200) && after <= Duration::from_millis(302),
        "declared down {after:?} after the cut (3 × 100 ms from the last packet heard, which may \
         have been in flight for 1 ms, and 1 ms of grace)"
    );
    net.run_for(Duration::from_millis(200));
    assert!(net.forward(0, 2).is_none(), "0 is cut off");
}

/// 0-1-2 and 0-3-4-2 after convergence: 0 reaches 2 through 1 (the disjoint alternative is
/// through 3 and 4).
fn two_ways() -> Net {
    let mut net = Net::new(
        5,
        &[(0, 1), (1, 2), (0, 3), (3, 4), (4, 2)],
        RouterConfig::default(),
    );
    net.run_for(Duration::from_secs(2));
    assert_eq!(net.forward(0, 2).unwrap(), vec![0, 1, 2]);
    net
}

#[test]
fn a_local_link_failure_reroutes_at_once_onto_the_disjoint_backup() {
    // Primary 0→2 via 1, backup via 3.
    let mut net = two_ways();
    let now = net.now;
    net.router(0).prepare_backups(now, &[id(2)]);
    let spf_before = net.router(0).stats().spf_runs;
    // The link 0-1 fails and router 0 is told so; no time passes, nothing is flooded.
    net.edges.remove(&(0, 1));
    let now = net.now;
    net.router(0).link_down(now, link(0, 1));
    let hop = net.router(0).next_hop(now, &id(2)).unwrap();
    assert!(hop.via_backup);
    assert_eq!(hop.neighbor, id(3));
    assert_eq!(
        net.router(0).stats().spf_runs,
        spf_before,
        "no SPF was needed"
    );
    // The backup is an explicit path the packet follows; it avoids the failure.
    let path = net.router(0).backup_path(now, &id(2)).unwrap();
    assert_eq!(path, vec![id(0), id(3), id(4), id(2)]);
    // Then the network converges on the new topology, and after the hold forwarding is hop by
    // hop again.
    net.routers[1].as_mut().unwrap().link_down(now, link(1, 0));
    net.run_for(Duration::from_secs(3));
    let now = net.now;
    let hop = net.router(0).next_hop(now, &id(2)).unwrap();
    assert!(!hop.via_backup);
    assert_eq!(net.forward(0, 2).unwrap(), vec![0, 3, 4, 2]);
    assert_eq!(net.forward(1, 0).unwrap(), vec![1, 2, 4, 3, 0]);
}

#[test]
fn a_burst_of_topology_changes_counts_once_per_route_recomputation() {
    let mut net = Net::new(3, &[(0, 1), (1, 2)], RouterConfig::default());
    net.run_for(Duration::from_secs(2));
    let now = net.now;
    // Routes are computed lazily: a query settles the pending recomputation.
    net.router(0).next_hop(now, &id(2)).unwrap();
    let before = net.router(0).stats().topology_changes;
    let spf_before = net.router(0).stats().spf_runs;
    assert!(before > 0, "forming the mesh changed the topology");
    // Two changes within `spf_delay`: one recomputation is scheduled, and counted once.
    net.router(0).link_down(now, link(0, 1));
    net.router(0).link_up(now, link(0, 1), id(1));
    assert_eq!(net.router(0).stats().topology_changes, before + 1);
    net.run_for(Duration::from_secs(2));
    let now = net.now;
    net.router(0).next_hop(now, &id(2)).unwrap();
    assert!(net.router(0).stats().spf_runs > spf_before);
}

#[test]
fn flooding_survives_loss_by_retransmission() {
    let mut net = Net::new(6, &ring(6), RouterConfig::default());
    net.drop_every = 4;
    net.redial = true;
    net.run_for(Duration::from_secs(5));
    // Quiet the network (quality classes need UPGRADE_HOLD to recover, and damped changes wait
    // for their hold-down), then every database must agree.
    net.drop_every = 0;
    net.run_for(Duration::from_secs(40));
    let digests: BTreeSet<u64> = net
        .routers
        .iter()
        .flatten()
        .map(|r| r.lsdb().digest())
        .collect();
    assert_eq!(digests.len(), 1);
    let retx: u64 = net
        .routers
        .iter()
        .flatten()
        .map(|r| r.stats().retransmissions)
        .sum();
    assert!(retx > 0);
    assert!(net.all_pairs_route());
}

#[test]
fn a_restarted_node_recovers_its_sequence_number() {
    let cfg = RouterConfig::default();
    let mut net = Net::new(3, &[(0, 1)], cfg.clone());
    // Node 2 has been up for a while: its adverts are numbered in the forties.
    net.routers[2] = Some(Router::new(
        cfg.clone(),
        id(2),
        Box::new(InsecureDigestAuth::new(id(2), MESH_KEY)),
        41,
        net.now,
    ));
    net.connect(1, 2);
    net.run_for(Duration::from_secs(1));
    let before = net.router(2).own_seq();
    assert!(before > 41);
    assert_eq!(net.router(0).lsdb().seq_of(&id(2)), Some(before));
    // Node 2 restarts with no memory of its sequence number.
    net.routers[2] = Some(Router::new(
        cfg,
        id(2),
        Box::new(InsecureDigestAuth::new(id(2), MESH_KEY)),
        0,
        net.now,
    ));
    let now = net.now;
    net.router(2).link_up(now, link(2, 1), id(1));
    net.router(1).link_down(now, link(1, 2));
    net.router(1).link_up(now, link(1, 2), id(2));
    net.pump();
    net.run_for(Duration::from_secs(1));
    assert!(
        net.router(2).own_seq() > before,
        "jumped past its old adverts"
    );
    assert_eq!(net.router(2).stats().own_seq_recovered, 1);
    let seq2 = net.router(2).own_seq();
    assert_eq!(
        net.router(0).lsdb().seq_of(&id(2)),
        Some(seq2),
        "everyone has the new one"
    );
    assert!(net.all_pairs_route());
}

fn forged_advert(origin: NodeId, seq: u64, links: Vec<AdvertisedLink>, key: u64) -> Vec<u8> {
    let body = AdvertBody {
        origin,
        seq,
        lifetime_s: 3600,
        links,
    };
    let bytes = body.encode();
    let (k, sig) = crate::auth::AdvertAuth::sign(&mut InsecureDigestAuth::new(origin, key), &bytes);
    RoutingMessage::Advert(
        Advert {
            body: bytes,
            origin_key: k,
            signature: sig,
        },
        body,
    )
    .encode()
}

#[test]
fn forged_stale_and_malformed_adverts_are_dropped_and_counted() {
    let mut net = Net::new(2, &[(0, 1)], RouterConfig::default());
    net.run_for(Duration::from_secs(1));
    let now = net.now;
    let victim = id(1);
    let evil = AdvertisedLink {
        neighbor: id(7),
        cost: 1,
        class: 0,
    };
    // Forged: signed with the wrong mesh key.
    let forged = forged_advert(victim, 1_000, vec![evil], MESH_KEY + 1);
    net.router(0).handle_datagram(now, link(0, 1), &forged);
    assert_eq!(net.router(0).stats().rejected_bad_signature, 1);
    assert!(net.router(0).lsdb().seq_of(&victim).unwrap() < 1_000);
    // Stale: a genuine-looking but older version.
    let stale = forged_advert(victim, 0, vec![], MESH_KEY);
    net.router(0).handle_datagram(now, link(0, 1), &stale);
    assert_eq!(net.router(0).stats().rejected_stale, 1);
    // Malformed.
    net.router(0)
        .handle_datagram(now, link(0, 1), &[0x22, 0xff]);
    net.router(0).handle_datagram(now, link(0, 1), &[]);
    assert_eq!(net.router(0).stats().malformed, 2);
    // Unknown link.
    net.router(0).handle_datagram(now, 999_999, &forged);
    assert_eq!(net.router(0).stats().datagrams_unknown_link, 1);
    net.run_for(Duration::from_secs(1));
    assert!(net.all_pairs_route());
}

#[test]
fn links_need_both_ends_to_advertise_them() {
    let mut net = Net::new(3, &[(0, 1), (1, 2)], RouterConfig::default());
    net.run_for(Duration::from_secs(1));
    // A (validly signed) advert from 2 claims a link to 0 that 0 does not have.
    let now = net.now;
    let seq = net.router(0).lsdb().seq_of(&id(2)).unwrap() + 1;
    let links = vec![
        AdvertisedLink {
            neighbor: id(0),
            cost: 1,
            class: 0,
        },
        AdvertisedLink {
            neighbor: id(1),
            cost: 15,
            class: 0,
        },
    ];
    let mut links = links;
    links.sort_by_key(|l| l.neighbor);
    let claim = forged_advert(id(2), seq, links, MESH_KEY);
    net.router(0).handle_datagram(now, link(0, 1), &claim);
    net.run_for(Duration::from_millis(50));
    assert_eq!(net.forward(1, 0).unwrap(), vec![1, 0]);
    let now = net.now;
    let paths = net.router(0).disjoint_paths(now, &id(2), 2);
    assert_eq!(
        paths.len(),
        1,
        "the one-sided link 2→0 is not used: {paths:?}"
    );
}

#[test]
fn routes_never_loop_after_random_failures() {
    // A 4×4 grid; fail links one by one, converge, check every pair.
    let mut edges = Vec::new();
    for r in 0..4 {
        for c in 0..4 {
            let i = r * 4 + c;
            if c < 3 {
                edges.push((i, i + 1));
            }
            if r < 3 {
                edges.push((i, i + 4));
            }
        }
    }
    let mut net = Net::new(16, &edges, RouterConfig::default());
    net.run_for(Duration::from_secs(2));
    assert!(net.all_pairs_route());
    for &(a, b) in [(0, 1), (5, 9), (10, 11), (6, 7)].iter() {
        net.edges.remove(&(a, b));
        let now = net.now;
        net.router(a).link_down(now, link(a, b));
        net.router(b).link_down(now, link(b, a));
        net.run_for(Duration::from_secs(1));
        assert!(net.all_pairs_route(), "after failing {a}-{b}");
    }
    let m: BTreeMap<usize, u64> = net
        .routers
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, r)| (i, r.stats().spf_runs))
        .collect();
    assert!(m.values().all(|&s| s > 0));
}

/// A ring 0-1-2-3-0 after convergence.
fn square() -> Net {
    let mut net = Net::new(4, &ring(4), RouterConfig::default());
    net.run_for(Duration::from_secs(2));
    assert_eq!(net.forward(0, 1).unwrap(), vec![0, 1]);
    net
}

#[test]
fn a_raised_link_cost_moves_traffic_away_and_is_advertised() {
    let mut net = square();
    let now = net.now;
    assert!(net.router(0).set_cost_factor(now, id(1), 8));
    assert!(
        !net.router(0).set_cost_factor(now, id(1), 8),
        "already in force"
    );
    assert_eq!(net.router(0).restrictions().cost_factor(&id(1)), 8);
    net.run_for(Duration::from_millis(500));
    // Ours: around the ring (3 hops at cost ~1 each beat one at ~8).
    assert_eq!(net.forward(0, 1).unwrap(), vec![0, 3, 2, 1]);
    // The others see the raised cost in our advert: 3 no longer goes through 0 to reach 1.
    assert_eq!(net.forward(3, 1).unwrap(), vec![3, 2, 1]);
    let advert = net
        .router(3)
        .lsdb()
        .get(&id(0))
        .unwrap()
        .body()
        .links
        .clone();
    let to1 = advert.iter().find(|l| l.neighbor == id(1)).unwrap();
    let to3 = advert.iter().find(|l| l.neighbor == id(3)).unwrap();
    assert!(to1.cost >= 7 * to3.cost, "{advert:?}");
    // The link itself still carries routes the other way and stays up.
    assert_eq!(net.forward(1, 0).unwrap(), vec![1, 0]);
    assert!(net.all_pairs_route());
    assert!(net.router(0).sessions().any(|(_, s)| s.neighbor() == id(1)));
    let now = net.now;
    assert!(net.router(0).set_cost_factor(now, id(1), 1));
    assert!(net.router(0).restrictions().is_empty());
    net.run_for(Duration::from_millis(500));
    assert_eq!(net.forward(0, 1).unwrap(), vec![0, 1]);
    assert_eq!(net.forward(3, 1).unwrap().len(), 3);
}

#[test]
fn an_excluded_link_carries_no_routes_either_way_but_stays_probed() {
    let mut net = square();
    let events_before = net.events.len();
    let now = net.now;
    assert!(net.router(0).exclude_link(now, id(1)));
    assert!(!net.router(0).exclude_link(now, id(1)));
    net.run_for(Duration::from_millis(500));
    assert_eq!(net.forward(0, 1).unwrap(), vec![0, 3, 2, 1]);
    // Left out of our advert: the neighbour stops using it too, so nothing loops.
    assert_eq!(net.forward(1, 0).unwrap(), vec![1, 2, 3, 0]);
    assert!(
        !net.router(2)
            .lsdb()
            .get(&id(0))
            .unwrap()
            .body()
            .links
            .iter()
            .any(|l| l.neighbor == id(1))
    );
    assert!(net.all_pairs_route());
    // Still probed: no neighbour went down.
    assert!(
        !net.events[events_before..]
            .iter()
            .any(|(_, _, e)| matches!(e, RouterEvent::NeighborDown { .. })),
        "{:?}",
        &net.events[events_before..]
    );
    assert!(net.router(0).sessions().any(|(_, s)| s.neighbor() == id(1)));
    // The exclusion is kept per neighbour: it survives the link being restarted.
    let now = net.now;
    net.router(0).link_down(now, link(0, 1));
    net.router(0).link_up(now, link(0, 1), id(1));
    // (Past the fast-reroute hold the link failure started.)
    net.run_for(Duration::from_secs(3));
    assert!(net.router(0).restrictions().excluded.contains(&id(1)));
    let now = net.now;
    assert_eq!(net.router(0).next_hop(now, &id(1)).unwrap().neighbor, id(3));
    assert!(net.router(0).include_link(now, id(1)));
    assert!(!net.router(0).include_link(now, id(1)));
    net.run_for(Duration::from_millis(500));
    assert_eq!(net.forward(0, 1).unwrap(), vec![0, 1]);
    assert_eq!(net.forward(1, 0).unwrap(), vec![1, 0]);
}

#[test]
fn a_quarantined_node_is_never_transit_but_stays_a_destination() {
    // 0 reaches 2 through 1 until it quarantines 1.
    let mut net = two_ways();
    let now = net.now;
    assert!(!net.router(0).quarantine(now, id(0)), "never ourselves");
    assert!(net.router(0).quarantine(now, id(1)));
    assert!(!net.router(0).quarantine(now, id(1)));
    net.run_for(Duration::from_millis(100));
    assert_eq!(net.forward(0, 2).unwrap(), vec![0, 3, 4, 2]);
    assert_eq!(
        net.forward(0, 1).unwrap(),
        vec![0, 1],
        "still a destination"
    );
    let now = net.now;
    for dst in [2, 4] {
        for p in net.router(0).disjoint_paths(now, &id(dst), 3) {
            assert!(!p[1..p.len() - 1].contains(&id(1)), "{p:?}");
        }
    }
    // Local to the node that decided it: the others still relay through 1.
    assert_eq!(net.forward(2, 0).unwrap(), vec![2, 1, 0]);
    // With no other way, the node is unreachable only as transit: 2 -> 1 -> 0 is fine, but
    // 0 has no route to 2 without 1 once 3-4 fails.
    net.edges.remove(&(3, 4));
    let now = net.now;
    net.router(3).link_down(now, link(3, 4));
    net.router(4).link_down(now, link(4, 3));
    net.run_for(Duration::from_secs(3));
    let now = net.now;
    assert!(net.router(0).next_hop(now, &id(2)).is_none());
    assert!(net.router(0).release(now, id(1)));
    assert!(!net.router(0).release(now, id(1)));
    net.run_for(Duration::from_millis(100));
    assert_eq!(net.forward(0, 2).unwrap(), vec![0, 1, 2]);
}
