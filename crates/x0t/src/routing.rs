//! The routing core in the daemon.
//!
//! [`x0_routing::Router`] is a sans-IO state machine; this module is its tokio shell:
//!
//! * **One routing task** owns the router. It wakes for inputs (links attached and closed,
//!   routing messages received) and for the router's own deadline (`poll_timeout`), then drains
//!   what the router wants sent, its events, and publishes a fresh [`RouteTable`] after every
//!   routing-table change.
//! * **Per link**, [`Routing::attach`] starts a reader for QUIC datagrams and one for
//!   unidirectional streams, and a writer. Routing messages that fit a QUIC datagram (probes,
//!   acks, small adverts) go as datagrams — unreliable and unordered, which is what a liveness
//!   probe must be; larger ones (an advert carrying its origin's 2 KB key and 3.3 KB ML-DSA
//!   signature) each go on a unidirectional stream of their own. The router acknowledges and
//!   retransmits adverts itself, so the transport's reliability is only a bonus.
//! * A link whose QUIC connection closes is reported to the router as down **at once**
//!   (`Router::link_down`): a locally visible failure costs no probe intervals.
//!
//! Adverts are signed with the node's ML-DSA-65 key ([`crate::routing_auth`]). The router's
//! advert sequence number is stored in the state database after each change, so a restarted
//! node continues above its last advert (and the router also recovers it from its neighbours).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};
use x0_identity::{NodeId, NodeKeys, StateStore};
use x0_routing::{DownCause, Instant, LinkId, Router, RouterConfig, RouterEvent};

use crate::routing_auth::MlDsaAdvertAuth;

/// Largest routing message accepted on a stream (an advert with 255 links, key and signature
/// is well under this).
const MAX_STREAM_MESSAGE: usize = 64 * 1024;
/// Close code for a link whose neighbour stopped answering routing probes.
pub const CLOSE_SILENT: u32 = 7;
/// State-database key of the last advert sequence number.
pub const META_ROUTING_SEQ: &str = "routing_seq";

/// One destination's forwarding decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The neighbour to hand packets to.
    pub next_hop: NodeId,
    /// The link to that neighbour.
    pub link: LinkId,
    /// Whether this is the fast-reroute backup (the primary's link just failed).
    pub via_backup: bool,
    /// On the backup, the explicit path packets must carry (node IDs, starting with us).
    pub path: Option<Vec<NodeId>>,
}

/// The routing table as last computed: destination node → route.
#[derive(Debug, Default, Clone)]
pub struct RouteTable {
    /// Routes by destination.
    pub routes: HashMap<NodeId, Route>,
    /// Nodes in the link-state database (ourselves included).
    pub known_nodes: usize,
    /// Every node in the link-state database but us (reachable or not).
    pub nodes: Vec<NodeId>,
    /// For destinations the data plane asked about ([`Routing::want_alternate`]): a path
    /// node-disjoint from the primary (node IDs, starting with us), for redundant copies.
    pub alternates: HashMap<NodeId, Vec<NodeId>>,
    /// For the same destinations: up to `routing.k_paths` (at least 2) node-disjoint paths
    /// with their costs, cheapest set first, for balanced mode.
    pub paths: HashMap<NodeId, Vec<(Vec<NodeId>, u64)>>,
}

enum Input {
    Up {
        link: LinkId,
        peer: NodeId,
        conn: quinn::Connection,
    },
    Down {
        link: LinkId,
    },
    Message {
        link: LinkId,
        bytes: Bytes,
    },
    WantAlternate(NodeId),
}

/// Handle to the routing task.
#[derive(Clone)]
pub struct Routing {
    tx: mpsc::UnboundedSender<Input>,
    next_link: Arc<AtomicU64>,
    table: Arc<ArcSwap<RouteTable>>,
}

impl std::fmt::Debug for Routing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Routing").finish_non_exhaustive()
    }
}

impl Routing {
    /// Starts the routing task for node `keys`, resuming the advert sequence from `store`.
    pub fn start(cfg: RouterConfig, keys: Arc<NodeKeys>, store: Arc<Mutex<StateStore>>) -> Self {
        let last_seq = crate::daemon::lock(&store)
            .meta(META_ROUTING_SEQ)
            .ok()
            .flatten()
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0);
        let (tx, rx) = mpsc::unbounded_channel();
        let table = Arc::new(ArcSwap::from_pointee(RouteTable::default()));
        let clock = Clock::new();
        let me = keys.node_id();
        let router = Router::new(
            cfg,
            me,
            Box::new(MlDsaAdvertAuth::new(keys)),
            last_seq,
            clock.now(),
        );
        tokio::spawn(
            Task {
                router,
                clock,
                rx,
                links: HashMap::new(),
                wanted: std::collections::HashSet::new(),
                table: table.clone(),
                store,
                saved_seq: last_seq,
            }
            .run(),
        );
        Self {
            tx,
            next_link: Arc::new(AtomicU64::new(1)),
            table,
        }
    }

    /// The current routing table.
    pub fn table(&self) -> Arc<RouteTable> {
        self.table.load_full()
    }

    /// Asks for a path to `dst` node-disjoint from its primary, kept in every table published
    /// from now on (and its fast-reroute backup precomputed).
    pub fn want_alternate(&self, dst: NodeId) {
        let _ = self.tx.send(Input::WantAlternate(dst));
    }

    /// Hands a new link to the router; it is reported down when the connection closes.
    pub fn attach(&self, peer: NodeId, conn: &quinn::Connection) {
        let link = self.next_link.fetch_add(1, Ordering::Relaxed);
        let _ = self.tx.send(Input::Up {
            link,
            peer,
            conn: conn.clone(),
        });
        tokio::spawn(read_datagrams(self.tx.clone(), link, conn.clone()));
        tokio::spawn(read_streams(self.tx.clone(), link, conn.clone()));
    }
}

async fn read_datagrams(tx: mpsc::UnboundedSender<Input>, link: LinkId, conn: quinn::Connection) {
    while let Ok(bytes) = conn.read_datagram().await {
        if tx.send(Input::Message { link, bytes }).is_err() {
            return;
        }
    }
    // The connection is gone: the one place that reports the link down.
    let _ = tx.send(Input::Down { link });
}

async fn read_streams(tx: mpsc::UnboundedSender<Input>, link: LinkId, conn: quinn::Connection) {
    while let Ok(mut recv) = conn.accept_uni().await {
        let tx = tx.clone();
        tokio::spawn(async move {
            match recv.read_to_end(MAX_STREAM_MESSAGE).await {
                Ok(body) => {
                    let _ = tx.send(Input::Message {
                        link,
                        bytes: Bytes::from(body),
                    });
                }
                Err(e) => debug!(link, "routing stream dropped: {e}"),
            }
        });
    }
}

/// The router's clock: microseconds since the daemon started.
struct Clock(tokio::time::Instant);

impl Clock {
    fn new() -> Self {
        Self(tokio::time::Instant::now())
    }
    fn now(&self) -> Instant {
        Instant::from_micros(self.0.elapsed().as_micros() as u64)
    }
    fn deadline(&self, at: Instant) -> tokio::time::Instant {
        self.0 + Duration::from_micros(at.as_micros())
    }
}

struct LinkOut {
    peer: NodeId,
    conn: quinn::Connection,
    streams: mpsc::UnboundedSender<Bytes>,
}

struct Task {
    router: Router,
    clock: Clock,
    rx: mpsc::UnboundedReceiver<Input>,
    links: HashMap<LinkId, LinkOut>,
    /// Destinations whose alternate path the data plane wants.
    wanted: std::collections::HashSet<NodeId>,
    table: Arc<ArcSwap<RouteTable>>,
    store: Arc<Mutex<StateStore>>,
    saved_seq: u64,
}

impl Task {
    async fn run(mut self) {
        loop {
            let due = match (self.router.poll_timeout(), self.router.routes_due()) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let deadline = due.map(|t| self.clock.deadline(t));
            let sleep = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                input = self.rx.recv() => {
                    let Some(input) = input else { return };
                    self.input(input);
                    // Take whatever else is already queued before doing the work once.
                    while let Ok(more) = self.rx.try_recv() {
                        self.input(more);
                    }
                }
                () = sleep => {}
            }
            let now = self.clock.now();
            self.router.handle_timeout(now);
            self.flush(now);
        }
    }

    fn input(&mut self, input: Input) {
        let now = self.clock.now();
        match input {
            Input::Up { link, peer, conn } => {
                let (streams, rx) = mpsc::unbounded_channel();
                tokio::spawn(write_streams(conn.clone(), rx));
                self.links.insert(
                    link,
                    LinkOut {
                        peer,
                        conn,
                        streams,
                    },
                );
                self.router.link_up(now, link, peer);
            }
            Input::Down { link } => {
                if self.links.remove(&link).is_some() {
                    self.router.link_down(now, link);
                }
            }
            Input::Message { link, bytes } => {
                if self.links.contains_key(&link) {
                    self.router.handle_datagram(now, link, &bytes);
                }
            }
            Input::WantAlternate(dst) => {
                if self.wanted.insert(dst) {
                    self.publish(now);
                }
            }
        }
    }

    fn flush(&mut self, now: Instant) {
        while let Some((link, bytes)) = self.router.poll_transmit() {
            let Some(out) = self.links.get(&link) else {
                continue;
            };
            let bytes = Bytes::from(bytes);
            let fits = out
                .conn
                .max_datagram_size()
                .is_some_and(|max| bytes.len() <= max);
            if fits {
                match out.conn.send_datagram(bytes.clone()) {
                    Ok(()) => continue,
                    Err(quinn::SendDatagramError::TooLarge) => {}
                    Err(e) => {
                        debug!(link, "routing datagram not sent: {e}");
                        continue;
                    }
                }
            }
            let _ = out.streams.send(bytes);
        }
        let mut recomputed = false;
        while let Some(event) = self.router.poll_event() {
            match event {
                RouterEvent::NeighborUp { link, neighbor } => {
                    info!(peer = %neighbor, link, "routing neighbour up");
                }
                RouterEvent::NeighborDown {
                    link,
                    neighbor,
                    cause,
                } => {
                    let cause = match cause {
                        DownCause::Silent => "silent",
                        DownCause::Local => "local",
                    };
                    info!(peer = %neighbor, link, cause, "routing neighbour down");
                    if let Some(out) = self.links.remove(&link) {
                        // The neighbour stopped answering probes: close its connection now
                        // rather than at the QUIC idle timeout; the dialler links again when it
                        // is back, and the new link starts a fresh session.
                        debug!(peer = %out.peer, "closing the link of a silent neighbour");
                        out.conn
                            .close(quinn::VarInt::from_u32(CLOSE_SILENT), b"neighbour silent");
                    }
                    recomputed = true;
                }
                RouterEvent::QualityChanged { link, class } => {
                    debug!(link, class = ?class, "link quality class changed");
                }
                RouterEvent::RoutesRecomputed => recomputed = true,
                _ => {}
            }
        }
        if recomputed || self.router.routes_due().is_some_and(|t| t <= now) {
            self.publish(now);
        }
        let seq = self.router.own_seq();
        if seq != self.saved_seq {
            match crate::daemon::lock(&self.store).set_meta(META_ROUTING_SEQ, &seq.to_string()) {
                Ok(()) => self.saved_seq = seq,
                Err(e) => warn!("cannot store the advert sequence number: {e}"),
            }
        }
    }

    /// Recomputes every destination's route and publishes the table, logging what changed.
    fn publish(&mut self, now: Instant) {
        let me = self.router.id();
        let dsts: Vec<NodeId> = self
            .router
            .lsdb()
            .iter()
            .map(|(o, _)| *o)
            .filter(|o| *o != me)
            .collect();
        let mut routes = HashMap::with_capacity(dsts.len());
        for dst in &dsts {
            if let Some(hop) = self.router.next_hop(now, dst) {
                let path = if hop.via_backup {
                    self.router.backup_path(now, dst)
                } else {
                    None
                };
                routes.insert(
                    *dst,
                    Route {
                        next_hop: hop.neighbor,
                        link: hop.link,
                        via_backup: hop.via_backup,
                        path,
                    },
                );
            }
        }
        let wanted: Vec<NodeId> = self.wanted.iter().copied().collect();
        self.router.prepare_backups(now, &wanted);
        let mut alternates = HashMap::new();
        let mut multipaths = HashMap::new();
        let k = self.router.config().k_paths.max(2);
        for dst in wanted {
            let primary = routes.get(&dst).map(|r| r.next_hop);
            let paths = self.router.disjoint_paths_with_cost(now, &dst, k);
            if let Some((alt, _)) = paths
                .iter()
                .find(|(p, _)| p.len() > 1 && Some(p[1]) != primary)
            {
                debug!(dst = %dst, path = ?alt, "alternate path");
                alternates.insert(dst, alt.clone());
            } else {
                debug!(dst = %dst, "no alternate path");
            }
            multipaths.insert(dst, paths);
        }
        let old = self.table.load_full();
        let mut changed = 0usize;
        for (dst, r) in &routes {
            if old.routes.get(dst) != Some(r) {
                changed += 1;
                info!(dst = %dst, via = %r.next_hop, backup = r.via_backup, "route");
            }
        }
        for dst in old.routes.keys() {
            if !routes.contains_key(dst) {
                changed += 1;
                info!(dst = %dst, "route lost");
            }
        }
        if changed > 0 {
            debug!(
                reachable = routes.len(),
                known = dsts.len() + 1,
                changed,
                "routing table"
            );
        }
        self.table.store(Arc::new(RouteTable {
            routes,
            known_nodes: dsts.len() + 1,
            nodes: dsts,
            alternates,
            paths: multipaths,
        }));
    }
}

async fn write_streams(conn: quinn::Connection, mut rx: mpsc::UnboundedReceiver<Bytes>) {
    while let Some(bytes) = rx.recv().await {
        let conn = conn.clone();
        // One stream per message, each on its own task: a slow stream holds up nothing else.
        tokio::spawn(async move {
            let Ok(mut send) = conn.open_uni().await else {
                return;
            };
            if send.write_all(&bytes).await.is_ok() {
                let _ = send.finish();
            }
        });
    }
}
