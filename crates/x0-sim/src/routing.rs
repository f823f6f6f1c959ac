//! The routing core as a simulated node: [`RoutingNode`] wraps one `x0_routing::Router` — the
//! code the daemon runs — behind [`SimNode`].
//!
//! Link handles are the neighbour's sim index; node IDs are derived from the index
//! ([`sim_node_id`]).
//!
//! The node also stands in for the daemon's link layer (QUIC links and their diallers): when the
//! router declares a neighbour down after silence, the link turns *dormant* and sends a one-byte
//! link hello every probe interval (`RouterConfig::probe_interval`, 100 ms), without backing
//! off: a link that comes back is found as fast as one that goes (a hello is the cost of the
//! probe the link would carry if it were up). A datagram arriving on a dormant link means the
//! neighbour is reachable again, and the link comes back up (`Router::link_up`), as a
//! re-established QUIC link would. (Until issue 12 the hellos backed off from 200 ms to 5 s, as
//! the daemon's diallers do: a 1,200-node grid took 3.65 s to re-converge after a partition
//! healed.) Adverts are authenticated with `InsecureDigestAuth`, a keyed digest that
//! exercises the signing and verification paths without paying 10⁸ ML-DSA verifications in a
//! 10,000-node run (the daemon signs with ML-DSA-65; see `docs/sim.md`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use x0_routing::lsdb::{AdvertInterner, Lsdb, StoredAdvert};
use x0_routing::{DownCause, InsecureDigestAuth, Router, RouterConfig, RouterEvent};
use x0_wire::NodeId;

use crate::engine::{Outbox, SimNode};
use crate::{Instant, NodeIx};

/// Stands in for the mesh's trust in simulated adverts.
const SIM_MESH_KEY: u64 = 0x7830_7461_3662_6c34;
/// The link-layer hello a dormant link sends (not a routing message type).
pub const LINK_HELLO: u8 = 0x7e;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Port {
    /// Carrier down (or never up).
    Down,
    /// The router has a session on it.
    Active,
    /// The router declared the neighbour down after silence; we keep knocking.
    Dormant { next_hello: Instant },
}

/// The node ID of sim node `ix`: the index, big-endian, then a fixed marker.
pub fn sim_node_id(ix: NodeIx) -> NodeId {
    let mut b = *b"\0\0\0\0x0simnode-id";
    b[..4].copy_from_slice(&ix.to_be_bytes());
    NodeId::from_bytes(b)
}

/// The sim index of a node ID made by [`sim_node_id`].
pub fn sim_node_ix(id: &NodeId) -> Option<NodeIx> {
    let b = id.as_bytes();
    (b[4..] == b"x0simnode-id"[..]).then(|| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// What every simulated router shares: the advert interner (one copy of each advert in the
/// process) and, for warm starts, the converged state to start from.
#[derive(Debug)]
pub struct Shared {
    /// Shared adverts.
    pub interner: Arc<AdvertInterner>,
    /// Warm start: per node, its links with RTT estimates; and every node's advert. Set once,
    /// after the simulator drew its link parameters and before the nodes start.
    pub warm: std::sync::OnceLock<WarmPlan>,
}

/// The converged state a warm start begins in.
#[derive(Debug)]
pub struct WarmPlan {
    /// Per node: `(neighbour, RTT)` of each live link.
    pub links: Vec<Vec<(NodeIx, Duration)>>,
    /// Every node's advert.
    pub adverts: Vec<Arc<StoredAdvert>>,
    /// The database every warm router starts from, built once for the start time: its clones
    /// share one vector of entries until they change (10,000 routers holding 10,000 entries
    /// each would take 3.2 GB and most of a short run's time to build).
    lsdb: Mutex<Option<(Instant, Lsdb)>>,
}

impl WarmPlan {
    /// A plan from each node's links and every node's advert.
    pub fn new(links: Vec<Vec<(NodeIx, Duration)>>, adverts: Vec<Arc<StoredAdvert>>) -> Self {
        Self {
            links,
            adverts,
            lsdb: Mutex::new(None),
        }
    }

    /// The database of every advert, as a router warm-started at `now` holds it.
    fn lsdb_at(&self, now: Instant) -> Lsdb {
        let mut cached = self.lsdb.lock().unwrap_or_else(|e| e.into_inner());
        match cached.as_ref() {
            Some((at, lsdb)) if *at == now => lsdb.clone(),
            _ => {
                let lsdb = Router::warm_lsdb(self.adverts.iter().cloned(), now);
                *cached = Some((now, lsdb.clone()));
                lsdb
            }
        }
    }
}

/// The signer a simulated node uses.
pub fn sim_auth(ix: NodeIx) -> InsecureDigestAuth {
    InsecureDigestAuth::new(sim_node_id(ix), SIM_MESH_KEY)
}

/// A neighbour declared down, as seen by the node that declared it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DownRecord {
    /// When.
    pub at: Instant,
    /// The neighbour.
    pub neighbor: NodeIx,
    /// Silence or a local link event.
    pub cause: DownCause,
}

/// One simulated node running the routing core.
#[derive(Debug)]
pub struct RoutingNode {
    ix: NodeIx,
    cfg: RouterConfig,
    shared: Arc<Shared>,
    /// Whether this is the node's first life (a warm start applies only to it).
    first_life: bool,
    router: Option<Router>,
    ports: BTreeMap<NodeIx, Port>,
    /// Ports in [`Port::Dormant`] (none in a steady mesh: then no callback scans the ports).
    dormant: usize,
    /// Neighbours declared down since the experiment last drained this list.
    pub downs: Vec<DownRecord>,
    /// Link hellos sent (link-layer stand-in traffic).
    pub hellos_sent: u64,
}

impl RoutingNode {
    /// A node that builds its router when started (warm on its first life if the shared state
    /// has a warm plan; cold after a restart).
    pub fn new(ix: NodeIx, cfg: RouterConfig, shared: Arc<Shared>, first_life: bool) -> Self {
        Self {
            ix,
            cfg,
            shared,
            first_life,
            router: None,
            ports: BTreeMap::new(),
            dormant: 0,
            downs: Vec::new(),
            hellos_sent: 0,
        }
    }

    /// Whether the router has a session on the link to `neighbor`.
    pub fn link_active(&self, neighbor: NodeIx) -> bool {
        self.ports.get(&neighbor) == Some(&Port::Active)
    }

    /// The router, once started.
    pub fn router(&self) -> Option<&Router> {
        self.router.as_ref()
    }

    /// The router, mutably (route queries refresh its caches).
    pub fn router_mut(&mut self) -> Option<&mut Router> {
        self.router.as_mut()
    }

    /// Runs `f` on the router (from [`crate::Sim::call_node`]) and sends what it queued:
    /// the way a controller beside the routing core — the self-healing loop's executor —
    /// changes cost factors, exclusions and quarantines. `None` before the node started.
    pub fn command<R>(
        &mut self,
        now: Instant,
        out: &mut Outbox,
        f: impl FnOnce(&mut Router, Instant) -> R,
    ) -> Option<R> {
        let r = self.router.as_mut().map(|r| f(r, now));
        self.flush(now, out);
        r
    }

    /// Closes the session on the link to `neighbor` and opens a fresh one at once, as the
    /// daemon's link restart does (close the QUIC connection; the dialler links again).
    /// Returns whether a session was up to restart.
    pub fn restart_link(&mut self, now: Instant, neighbor: NodeIx, out: &mut Outbox) -> bool {
        if !self.link_active(neighbor) {
            return false;
        }
        if let Some(r) = self.router.as_mut() {
            r.link_down(now, u64::from(neighbor));
            r.link_up(now, u64::from(neighbor), sim_node_id(neighbor));
        }
        self.flush(now, out);
        true
    }

    /// Sets the port towards `neighbor`, keeping the count of dormant ones.
    fn set_port(&mut self, neighbor: NodeIx, port: Port) {
        let was = self.ports.insert(neighbor, port);
        if matches!(was, Some(Port::Dormant { .. })) {
            self.dormant -= 1;
        }
        if matches!(port, Port::Dormant { .. }) {
            self.dormant += 1;
        }
    }

    fn flush(&mut self, now: Instant, out: &mut Outbox) {
        let Some(r) = self.router.as_mut() else {
            return;
        };
        while let Some((link, bytes)) = r.poll_transmit() {
            out.send_buf(link as NodeIx, bytes);
        }
        while let Some(e) = r.poll_event() {
            if let RouterEvent::NeighborDown { link, cause, .. } = e {
                let neighbor = link as NodeIx;
                self.downs.push(DownRecord {
                    at: now,
                    neighbor,
                    cause,
                });
                if cause == DownCause::Silent
                    && let Some(p) = self.ports.get_mut(&neighbor)
                    && *p == Port::Active
                {
                    *p = Port::Dormant {
                        next_hello: now + self.cfg.probe_interval,
                    };
                    self.dormant += 1;
                }
            }
        }
    }
}

impl SimNode for RoutingNode {
    fn start(&mut self, now: Instant, out: &mut Outbox) {
        let me = sim_node_id(self.ix);
        let auth = Box::new(sim_auth(self.ix));
        let router = match (self.shared.warm.get(), self.first_life) {
            (Some(plan), true) => {
                let links: Vec<_> = plan
                    .links
                    .get(self.ix as usize)
                    .map(|l| {
                        l.iter()
                            .map(|&(nb, rtt)| (u64::from(nb), sim_node_id(nb), rtt))
                            .collect()
                    })
                    .unwrap_or_default();
                for &(nb, _) in plan.links.get(self.ix as usize).into_iter().flatten() {
                    self.ports.insert(nb, Port::Active);
                }
                Router::warm_with_lsdb(self.cfg.clone(), me, auth, now, &links, plan.lsdb_at(now))
            }
            _ => Router::new(self.cfg.clone(), me, auth, 0, now),
        };
        self.first_life = false;
        self.router = Some(router.with_interner(self.shared.interner.clone()));
        self.flush(now, out);
    }

    fn datagram(&mut self, now: Instant, from: NodeIx, bytes: &[u8], out: &mut Outbox) {
        if self.router.is_none() {
            return;
        }
        let port = self.ports.get(&from).copied();
        if matches!(port, Some(Port::Dormant { .. })) {
            // The neighbour is reachable again: the link is re-established.
            self.set_port(from, Port::Active);
            if let Some(r) = self.router.as_mut() {
                r.link_up(now, u64::from(from), sim_node_id(from));
            }
        }
        if bytes.first() != Some(&LINK_HELLO)
            && port.is_some()
            && port != Some(Port::Down)
            && let Some(r) = self.router.as_mut()
        {
            r.handle_datagram(now, u64::from(from), bytes);
        }
        self.flush(now, out);
    }

    fn link_up(&mut self, now: Instant, neighbor: NodeIx, out: &mut Outbox) {
        if self.router.is_some() {
            self.set_port(neighbor, Port::Active);
        }
        if let Some(r) = self.router.as_mut() {
            r.link_up(now, u64::from(neighbor), sim_node_id(neighbor));
        }
        self.flush(now, out);
    }

    fn link_down(&mut self, now: Instant, neighbor: NodeIx, out: &mut Outbox) {
        self.set_port(neighbor, Port::Down);
        if let Some(r) = self.router.as_mut() {
            r.link_down(now, u64::from(neighbor));
        }
        self.flush(now, out);
    }

    fn timeout(&mut self, now: Instant, out: &mut Outbox) {
        let ports = if self.dormant > 0 {
            Some(self.ports.iter_mut())
        } else {
            None
        };
        let every = self.cfg.probe_interval;
        for (nb, port) in ports.into_iter().flatten() {
            if let Port::Dormant { next_hello } = port
                && *next_hello <= now
            {
                *next_hello = now + every;
                out.send(*nb, &[LINK_HELLO]);
                self.hellos_sent += 1;
            }
        }
        if let Some(r) = self.router.as_mut() {
            r.handle_timeout(now);
        }
        self.flush(now, out);
    }

    fn next_timeout(&self) -> Option<Instant> {
        let ports = if self.dormant > 0 {
            Some(self.ports.values())
        } else {
            None
        };
        let hellos = ports.into_iter().flatten().filter_map(|p| match p {
            Port::Dormant { next_hello, .. } => Some(*next_hello),
            _ => None,
        });
        self.router
            .as_ref()
            .and_then(Router::poll_timeout)
            .into_iter()
            .chain(hellos)
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_map_back_to_indices() {
        for ix in [0, 1, 1199, 9999, u32::MAX] {
            assert_eq!(sim_node_ix(&sim_node_id(ix)), Some(ix));
        }
        assert_eq!(sim_node_ix(&NodeId::from_bytes([7; 16])), None);
        assert!(sim_node_id(1) < sim_node_id(2));
    }
}
