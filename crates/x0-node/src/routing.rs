//! The routing core in the daemon.
//!
//! [`x0_routing::Router`] is a sans-IO state machine; this module is its tokio shell:
//!
//! * **One routing task** owns the router. It wakes for inputs (links attached and closed,
//!   commands), for routing messages queued by the links' readers and for the router's own
//!   deadline (`poll_timeout`), then drains what the router wants sent, its events, and
//!   publishes a fresh [`RouteTable`] after every routing-table change.
//! * **Per link**, [`Routing::attach`] starts a reader for QUIC datagrams and one for
//!   unidirectional streams, and a writer. Routing messages that fit a QUIC datagram (probes,
//!   acks, small adverts) go as datagrams — unreliable and unordered, which is what a liveness
//!   probe must be; larger ones (an advert carrying its origin's credential, ~2.6 KB, and its
//!   3.3 KB ML-DSA signature) each go on a unidirectional stream of their own. The router
//!   acknowledges and retransmits adverts itself, so the transport's reliability is only a bonus.
//! * **Back-pressure: probes ahead of adverts, one neighbour cannot starve the others.** Each
//!   link's readers sort what they receive by its type byte (`x0_wire::routing::peek_kind`) into
//!   two bounded queues of that link: probes and acknowledgements ([`CONTROL_QUEUE`]), adverts
//!   ([`ADVERT_QUEUE`]). A datagram that finds its queue full is dropped and counted (there is
//!   no flow control to push back with; flooding retransmits adverts, and a probe is one of
//!   many); an advert read from a stream waits for room, and while it waits the link's stream
//!   reads ([`STREAM_READS`] at a time) stop, so QUIC's flow control holds the sender back. In
//!   every turn the routing task takes its inputs, then every link's probes and
//!   acknowledgements, then at most [`ADVERTS_PER_TURN`] adverts (fewer once they took
//!   [`ADVERT_TIME_PER_TURN`]), round robin over the links, and then runs the router's timers:
//!   a probe waits behind at most a couple of milliseconds of signature verifications, whatever
//!   one neighbour sends. While adverts are backlogged they get at most [`ADVERT_SHARE`] of the
//!   task's time (the next batch waits; probes, inputs and timers do not), so a flood costs a
//!   bounded share of a core on any machine and in any build; the router's own per-neighbour
//!   verification budget and bad-signature penalty (`x0_routing::RouterConfig`) bound what one
//!   neighbour's adverts cost within that. Every channel on this path is bounded; what is
//!   dropped is counted ([`ShellStats`]). The task never waits for the disk either: the advert
//!   sequence number is stored by a task of its own.
//! * A link whose QUIC connection closes is reported to the router as down **at once**
//!   (`Router::link_down`): a locally visible failure costs no probe intervals.
//!
//! For observers (the HTTP API and `/metrics`) the task also publishes a [`RoutingStatus`] after
//! every round (counters, live sessions with their measurements, the link-state database as a
//! topology, rebuilt only when the database changed), broadcasts [`RoutingChange`]s, and times
//! route computations into [`RoutingMetrics`].
//!
//! The self-healing loop ([`crate::heal`]) changes routing through [`Routing::command`]: cost
//! factors, link exclusions and transit quarantines are applied by the routing core
//! ([`x0_routing::Restrictions`]); a link restart closes the link's QUIC connection here, and
//! the dialler links again.
//!
//! Adverts are signed and verified by [`x0_identity::advert::MlDsaAdvertAuth`]: signed with the
//! node's ML-DSA-65 key, carrying its current SVID (it follows renewals), and counted only from
//! origins the mesh CA admitted and did not revoke (the trust state's revocation list, which
//! the daemon updates in place). The router's advert sequence number is stored in the state
//! database after each change, so a restarted node continues above its last advert (and the
//! router also recovers it from its neighbours).

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{Notify, Semaphore, broadcast, mpsc};
use tracing::{debug, error, info, warn};
use x0_identity::advert::{MlDsaAdvertAuth, OriginVerifierStats};
use x0_identity::{NodeId, StateStore};
use x0_routing::{
    DownCause, Instant, LinkId, QualityClass, Restrictions, Router, RouterConfig, RouterEvent,
    RouterStats,
};
use x0_wire::routing::{AdvertisedLink, MessageKind, peek_kind};

/// Largest routing message accepted on a stream (an advert with 255 links, key and signature
/// is well under this).
const MAX_STREAM_MESSAGE: usize = 64 * 1024;
/// Close code for a link whose neighbour stopped answering routing probes.
pub(crate) const CLOSE_SILENT: u32 = 7;
/// Close code for a link the self-healing loop restarts.
pub(crate) const CLOSE_RESTART: u32 = 8;
/// Close code for a new link the routing task could not take (its input queue was full).
const CLOSE_ROUTING_BUSY: u32 = 9;
/// Probes and acknowledgements queued per link (a burst of a few probe intervals' worth).
const CONTROL_QUEUE: usize = 32;
/// Adverts queued per link. Datagrams beyond it are dropped; streams wait.
const ADVERT_QUEUE: usize = 64;
/// Adverts the routing task handles per turn, over all links, before it runs its timers and
/// reads probes again: each may cost one ML-DSA-65 verification (36–60 µs), so a probe waits
/// behind at most ~1 ms of them.
const ADVERTS_PER_TURN: usize = 16;
/// ... and no more once the turn's adverts took this long (a slow machine or a debug build,
/// where one verification may take milliseconds).
const ADVERT_TIME_PER_TURN: Duration = Duration::from_millis(2);
/// The share of the routing task's time adverts may take while they are backlogged: after a
/// turn that spent `t` on them, the next adverts wait until `t / ADVERT_SHARE` has passed since
/// it started (probes, inputs and timers do not wait). Whatever the CPU and the build, a flood
/// of adverts costs at most a quarter of a core and leaves the rest to the links.
const ADVERT_SHARE: f64 = 0.25;
/// Unidirectional streams read at once per link; further ones wait inside QUIC, which stops
/// granting the sender new streams.
const STREAM_READS: usize = 4;
/// Messages queued per link for sending on streams (beyond: dropped and counted; the router
/// retransmits), and streams open at once per link.
const STREAM_SEND_QUEUE: usize = 256;
const STREAM_SENDS: usize = 16;
/// How long one stream may take to arrive whole, or to be sent.
const STREAM_TIMEOUT: Duration = Duration::from_secs(10);
/// Inputs for the routing task (links up and down, commands, the data plane's and the
/// self-healing loop's requests).
const INPUT_QUEUE: usize = 1024;
/// How long [`Routing::command`] waits for the routing task's answer.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// State-database key of the last advert sequence number.
pub(crate) const META_ROUTING_SEQ: &str = "routing_seq";

/// One destination's forwarding decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Route {
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
pub(crate) struct RouteTable {
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

/// One live routing session (a link whose neighbour answers probes), as last measured.
#[derive(Debug, Clone)]
pub(crate) struct SessionStatus {
    /// The neighbour.
    pub peer: NodeId,
    /// Smoothed round-trip time; `None` until the first probe came back.
    pub rtt: Option<Duration>,
    /// RTT jitter.
    pub jitter: Duration,
    /// Loss on the neighbour's probes to us (0–1).
    pub rx_loss: f64,
    /// Loss the neighbour reports on our probes (0–1).
    pub tx_loss: f64,
    /// Windowed round-trip loss the quality class is computed from (0–1).
    pub loss: f64,
    /// Probe intervals missed in a row when this was published.
    pub missed: u32,
    /// Quality class (with hysteresis).
    pub class: QualityClass,
    /// Cost used for routing.
    pub cost: u32,
    /// Current probe interval.
    pub probe_interval: Duration,
}

/// One origin's entry in the link-state database.
#[derive(Debug, Clone)]
pub(crate) struct TopologyNode {
    /// The node.
    pub id: NodeId,
    /// Its advert's sequence number.
    pub seq: u64,
    /// The links it advertises.
    pub links: Vec<AdvertisedLink>,
}

/// What the routing task publishes for observers after every round.
#[derive(Debug, Clone, Default)]
pub(crate) struct RoutingStatus {
    /// The router's counters.
    pub stats: RouterStats,
    /// Live sessions.
    pub sessions: Vec<SessionStatus>,
    /// The link-state database (shared between rounds until it changes).
    pub topology: Arc<Vec<TopologyNode>>,
    /// Restrictions the self-healing loop placed on routing.
    pub restrictions: Restrictions,
    /// Our advert sequence number reached `u64::MAX`: we cannot advertise changes any more
    /// (`docs/routing.md`, "Sequence numbers").
    pub seq_exhausted: bool,
}

/// A change the self-healing loop asks of the routing task.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum RoutingCommand {
    /// Multiply the cost of our link to `neighbor` by `factor` (1 restores it).
    CostFactor {
        /// The neighbour.
        neighbor: NodeId,
        /// The factor.
        factor: u32,
    },
    /// Stop (or resume) routing over our link to `neighbor`; it stays up and probed.
    Exclude {
        /// The neighbour.
        neighbor: NodeId,
        /// Exclude (true) or include again (false).
        exclude: bool,
    },
    /// Never relay through `node` (or again allow it); it stays reachable as a destination.
    Quarantine {
        /// The node.
        node: NodeId,
        /// Quarantine (true) or release (false).
        quarantine: bool,
    },
    /// Close the QUIC connection of our link to `neighbor`; the dialler links again.
    RestartLink {
        /// The neighbour.
        neighbor: NodeId,
    },
}

/// A change observers may want to be told about (the API's event stream).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum RoutingChange {
    /// A neighbour's routing session started.
    NeighborUp {
        /// The neighbour.
        peer: NodeId,
    },
    /// A neighbour was declared down.
    NeighborDown {
        /// The neighbour.
        peer: NodeId,
        /// `silent` (missed probes) or `local` (the link closed).
        cause: &'static str,
    },
    /// A link's quality class changed.
    QualityChanged {
        /// The neighbour.
        peer: NodeId,
        /// The new class.
        class: QualityClass,
    },
    /// A node's advert entered the link-state database.
    NodeAppeared {
        /// The node.
        node: NodeId,
    },
    /// A node's advert left the link-state database (expired or flushed).
    NodeLeft {
        /// The node.
        node: NodeId,
    },
    /// The routing table changed.
    RoutesChanged {
        /// Destinations with a route.
        reachable: usize,
        /// Destinations whose route changed, appeared or was lost.
        changed: usize,
    },
}

/// Metrics the routing task updates itself (the router's counters are read from
/// [`RoutingStatus`] at scrape time).
#[derive(Debug, Clone)]
pub(crate) struct RoutingMetrics {
    /// Time to recompute the shortest-path tree and the forwarding table.
    pub spf_duration: Histogram,
    /// Forwarding-table entries that changed, appeared or were lost.
    pub route_changes: Counter,
    /// Forwarding tables published with at least one change (convergence events).
    pub table_updates: Counter,
}

impl Default for RoutingMetrics {
    fn default() -> Self {
        Self {
            // 10 µs … ~1.3 s.
            spf_duration: Histogram::new(exponential_buckets(1e-5, 4.0, 10)),
            route_changes: Counter::default(),
            table_updates: Counter::default(),
        }
    }
}

impl RoutingMetrics {
    /// Registers these metrics (names documented in `docs/metrics.md`).
    pub(crate) fn register(&self, registry: &mut Registry) {
        registry.register_with_unit(
            "routing_spf_duration",
            "Time to recompute the shortest-path tree and the forwarding table after a topology change",
            Unit::Seconds,
            self.spf_duration.clone(),
        );
        registry.register(
            "routing_route_changes",
            "Forwarding-table entries that changed next hop, appeared or were lost",
            self.route_changes.clone(),
        );
        registry.register(
            "routing_table_updates",
            "Forwarding tables published with at least one changed entry (convergence events)",
            self.table_updates.clone(),
        );
    }
}

/// What the routing shell drops rather than queue without bound (exported as
/// `routing_input_dropped_total{kind}` and `routing_output_dropped_total`).
#[derive(Debug, Default)]
pub(crate) struct ShellStats {
    /// Probes dropped because their link's control queue was full.
    pub probes_dropped: AtomicU64,
    /// Acknowledgements dropped because their link's control queue was full.
    pub acks_dropped: AtomicU64,
    /// Adverts (and messages of unknown type) received as datagrams and dropped because their
    /// link's advert queue was full.
    pub adverts_dropped: AtomicU64,
    /// New links closed because the routing task's input queue was full.
    pub links_refused: AtomicU64,
    /// Requests of the data plane and the self-healing loop dropped because the input queue
    /// was full.
    pub requests_dropped: AtomicU64,
    /// Messages not sent because their link's stream queue was full (the router retransmits
    /// adverts).
    pub streams_unsent: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// The routing task's end of one link's queues.
struct LinkInbox {
    /// Probes and acknowledgements.
    control: mpsc::Receiver<Bytes>,
    /// Adverts and anything else.
    adverts: mpsc::Receiver<Bytes>,
}

/// The readers' end of one link's queues.
#[derive(Clone)]
struct LinkFeed {
    link: LinkId,
    control: mpsc::Sender<Bytes>,
    adverts: mpsc::Sender<Bytes>,
    /// Wakes the routing task.
    wake: Arc<Notify>,
    stats: Arc<ShellStats>,
}

impl LinkFeed {
    /// Queues a message without waiting (datagrams: there is no flow control to push back
    /// with), dropping and counting it if its queue is full. False once the routing task has
    /// let go of the link.
    fn offer(&self, bytes: Bytes) -> bool {
        let (queue, dropped) = match peek_kind(&bytes) {
            Some(MessageKind::Probe) => (&self.control, &self.stats.probes_dropped),
            Some(MessageKind::AdvertAck) => (&self.control, &self.stats.acks_dropped),
            // Adverts, and anything else (the router counts it as malformed).
            _ => (&self.adverts, &self.stats.adverts_dropped),
        };
        match queue.try_send(bytes) {
            Ok(()) => {
                self.wake.notify_one();
                true
            }
            Err(TrySendError::Full(_)) => {
                bump(dropped);
                true
            }
            Err(TrySendError::Closed(_)) => false,
        }
    }

    /// Queues a message read from a stream: an advert waits for room in the link's queue (and
    /// holds its stream-read permit meanwhile, so the link's further streams wait in QUIC).
    async fn deliver(&self, bytes: Bytes) -> bool {
        if matches!(
            peek_kind(&bytes),
            Some(MessageKind::Probe | MessageKind::AdvertAck)
        ) {
            return self.offer(bytes);
        }
        if self.adverts.send(bytes).await.is_err() {
            return false;
        }
        self.wake.notify_one();
        true
    }
}

enum Input {
    Up {
        link: LinkId,
        peer: NodeId,
        conn: quinn::Connection,
        inbox: LinkInbox,
    },
    Down {
        link: LinkId,
    },
    WantAlternate(NodeId),
    ProbePaths(std::collections::HashSet<NodeId>),
    Command(
        RoutingCommand,
        std::sync::mpsc::SyncSender<Result<&'static str, String>>,
    ),
    /// A newer revocation list was applied: drop the adverts of origins no longer admitted.
    RecheckAdmission,
}

/// Handle to the routing task.
#[derive(Clone)]
pub(crate) struct Routing {
    tx: mpsc::Sender<Input>,
    /// Wakes the routing task when a link's reader queued a message.
    wake: Arc<Notify>,
    shell: Arc<ShellStats>,
    next_link: Arc<AtomicU64>,
    table: Arc<ArcSwap<RouteTable>>,
    status: Arc<ArcSwap<RoutingStatus>>,
    changes: broadcast::Sender<RoutingChange>,
    metrics: RoutingMetrics,
    origins: Arc<OriginVerifierStats>,
}

impl std::fmt::Debug for Routing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Routing").finish_non_exhaustive()
    }
}

impl Routing {
    /// Starts the routing task for node `me`, whose adverts `auth` signs and verifies,
    /// resuming the advert sequence from `store`.
    pub(crate) fn start(
        cfg: RouterConfig,
        me: NodeId,
        auth: MlDsaAdvertAuth,
        store: Arc<Mutex<StateStore>>,
    ) -> Self {
        let last_seq = crate::daemon::lock(&store)
            .meta(META_ROUTING_SEQ)
            .ok()
            .flatten()
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0);
        let (tx, rx) = mpsc::channel(INPUT_QUEUE);
        let wake = Arc::new(Notify::new());
        let shell = Arc::new(ShellStats::default());
        let table = Arc::new(ArcSwap::from_pointee(RouteTable::default()));
        let status = Arc::new(ArcSwap::from_pointee(RoutingStatus::default()));
        let (changes, _) = broadcast::channel(256);
        let metrics = RoutingMetrics::default();
        let clock = Clock::new();
        let origins = auth.stats();
        let router = Router::new(cfg, me, Box::new(auth), last_seq, clock.now());
        tokio::spawn(
            Task {
                router,
                clock,
                rx,
                wake: wake.clone(),
                shell: shell.clone(),
                links: BTreeMap::new(),
                turn_start: 0,
                wanted: std::collections::HashSet::new(),
                probed: std::collections::HashSet::new(),
                table: table.clone(),
                saved_seq: last_seq,
                seq_store: persist_seq(store, last_seq),
                status: status.clone(),
                topology: Arc::default(),
                topology_digest: None,
                changes: changes.clone(),
                metrics: metrics.clone(),
                seq_exhausted: false,
            }
            .run(),
        );
        Self {
            tx,
            wake,
            shell,
            next_link: Arc::new(AtomicU64::new(1)),
            table,
            status,
            changes,
            metrics,
            origins,
        }
    }

    /// The advert verifier's counters (credential checks, its cache, refusals by reason).
    pub(crate) fn origin_stats(&self) -> &OriginVerifierStats {
        &self.origins
    }

    /// What the shell dropped rather than queue without bound.
    pub(crate) fn shell_stats(&self) -> &ShellStats {
        &self.shell
    }

    /// Queues a request that may be dropped (counted) when the input queue is full.
    fn request(&self, input: Input) {
        if let Err(TrySendError::Full(_)) = self.tx.try_send(input) {
            bump(&self.shell.requests_dropped);
        }
    }

    /// A newer revocation list was applied: the router drops the adverts of origins it revokes
    /// now rather than at its next timer (it would within a probe interval anyway).
    pub(crate) fn recheck_admission(&self) {
        self.request(Input::RecheckAdmission);
    }

    /// What the routing task published last (counters, sessions, topology).
    pub(crate) fn status(&self) -> Arc<RoutingStatus> {
        self.status.load_full()
    }

    /// A receiver of routing changes from now on.
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<RoutingChange> {
        self.changes.subscribe()
    }

    /// The metrics the routing task updates.
    pub(crate) fn metrics(&self) -> &RoutingMetrics {
        &self.metrics
    }

    /// The current routing table.
    pub(crate) fn table(&self) -> Arc<RouteTable> {
        self.table.load_full()
    }

    /// Asks for a path to `dst` node-disjoint from its primary, kept in every table published
    /// from now on (and its fast-reroute backup precomputed).
    pub(crate) fn want_alternate(&self, dst: NodeId) {
        self.request(Input::WantAlternate(dst));
    }

    /// The destinations the self-healing prober samples now: their node-disjoint paths are
    /// kept in [`RouteTable::paths`] while they stay in the set (this replaces the previous
    /// set, so the work stays bounded by the prober's sample, whatever the mesh's size).
    pub(crate) fn probe_paths(&self, dsts: std::collections::HashSet<NodeId>) {
        self.request(Input::ProbePaths(dsts));
    }

    /// Carries out a self-healing command in the routing task and waits for its answer: what
    /// was done, or why nothing was. Blocks the calling thread (at most [`COMMAND_TIMEOUT`]):
    /// call it from the self-healing thread, never from an async task.
    pub(crate) fn command(&self, cmd: RoutingCommand) -> Result<&'static str, String> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.tx
            .try_send(Input::Command(cmd, tx))
            .map_err(|e| match e {
                TrySendError::Full(_) => "the routing task is busy".to_owned(),
                TrySendError::Closed(_) => "the routing task has stopped".to_owned(),
            })?;
        rx.recv_timeout(COMMAND_TIMEOUT)
            .map_err(|_| "the routing task did not answer in time".to_owned())?
    }

    /// Hands a new link to the router; it is reported down when the connection closes. If
    /// the routing task cannot take it (its input queue is full), the link is closed: the
    /// dialler links again.
    pub(crate) fn attach(&self, peer: NodeId, conn: &quinn::Connection) {
        let link = self.next_link.fetch_add(1, Ordering::Relaxed);
        let (control, control_rx) = mpsc::channel(CONTROL_QUEUE);
        let (adverts, adverts_rx) = mpsc::channel(ADVERT_QUEUE);
        let up = Input::Up {
            link,
            peer,
            conn: conn.clone(),
            inbox: LinkInbox {
                control: control_rx,
                adverts: adverts_rx,
            },
        };
        if self.tx.try_send(up).is_err() {
            bump(&self.shell.links_refused);
            warn!(peer = %peer, "the routing task is not taking new links; closing this one");
            conn.close(quinn::VarInt::from_u32(CLOSE_ROUTING_BUSY), b"routing busy");
            return;
        }
        let feed = LinkFeed {
            link,
            control,
            adverts,
            wake: self.wake.clone(),
            stats: self.shell.clone(),
        };
        tokio::spawn(read_datagrams(feed.clone(), self.tx.clone(), conn.clone()));
        tokio::spawn(read_streams(feed, conn.clone()));
    }
}

async fn read_datagrams(feed: LinkFeed, tx: mpsc::Sender<Input>, conn: quinn::Connection) {
    while let Ok(bytes) = conn.read_datagram().await {
        if !feed.offer(bytes) {
            break;
        }
    }
    // The connection is gone (or the router dropped the link): the one place that reports
    // the link down. Waits for room rather than lose it.
    let _ = tx.send(Input::Down { link: feed.link }).await;
}

async fn read_streams(feed: LinkFeed, conn: quinn::Connection) {
    let reads = Arc::new(Semaphore::new(STREAM_READS));
    loop {
        let Ok(permit) = reads.clone().acquire_owned().await else {
            return;
        };
        let Ok(mut recv) = conn.accept_uni().await else {
            return;
        };
        let feed = feed.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(STREAM_TIMEOUT, recv.read_to_end(MAX_STREAM_MESSAGE)).await {
                Ok(Ok(body)) => {
                    feed.deliver(Bytes::from(body)).await;
                }
                Ok(Err(e)) => debug!(link = feed.link, "routing stream dropped: {e}"),
                Err(_) => {
                    debug!(link = feed.link, "routing stream too slow; stopped");
                    let _ = recv.stop(quinn::VarInt::from_u32(0));
                }
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
    streams: mpsc::Sender<Bytes>,
    inbox: LinkInbox,
}

struct Task {
    router: Router,
    clock: Clock,
    rx: mpsc::Receiver<Input>,
    wake: Arc<Notify>,
    shell: Arc<ShellStats>,
    links: BTreeMap<LinkId, LinkOut>,
    /// Where the next turn's round of adverts starts (links after this one first).
    turn_start: LinkId,
    /// Destinations whose alternate path the data plane wants.
    wanted: std::collections::HashSet<NodeId>,
    /// Destinations the self-healing prober samples now (replaced as the sample rotates).
    probed: std::collections::HashSet<NodeId>,
    table: Arc<ArcSwap<RouteTable>>,
    /// The last sequence number handed to [`persist_seq`].
    saved_seq: u64,
    seq_store: tokio::sync::watch::Sender<u64>,
    status: Arc<ArcSwap<RoutingStatus>>,
    topology: Arc<Vec<TopologyNode>>,
    /// The LSDB digest `topology` was built from.
    topology_digest: Option<u64>,
    changes: broadcast::Sender<RoutingChange>,
    metrics: RoutingMetrics,
    /// The router reported [`RouterEvent::SequenceExhausted`].
    seq_exhausted: bool,
}

impl Task {
    async fn run(mut self) {
        let mut control_left = false;
        let mut adverts_left = false;
        // Adverts wait until then (the share of time they may take, `ADVERT_SHARE`).
        let mut adverts_resume = tokio::time::Instant::now();
        loop {
            let adverts_ready = adverts_left && tokio::time::Instant::now() >= adverts_resume;
            if control_left || adverts_ready {
                // More queued than one turn takes: let the runtime's other tasks run, then
                // take the next turn at once.
                tokio::task::yield_now().await;
            } else {
                let due = match (self.router.poll_timeout(), self.router.routes_due()) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                let mut deadline = due.map(|t| self.clock.deadline(t));
                if adverts_left {
                    deadline = Some(deadline.map_or(adverts_resume, |d| d.min(adverts_resume)));
                }
                let sleep = async {
                    match deadline {
                        Some(d) => tokio::time::sleep_until(d).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    biased;
                    input = self.rx.recv() => {
                        let Some(input) = input else { return };
                        self.input(input);
                    }
                    () = self.wake.notified() => {}
                    () = sleep => {}
                }
            }
            // One turn: inputs, then every link's probes and acknowledgements, then (unless
            // they are paused for their share of time) a bounded number of adverts, then the
            // timers (our probes go out), then the output.
            for _ in 0..INPUT_QUEUE {
                let Ok(input) = self.rx.try_recv() else { break };
                self.input(input);
            }
            control_left = self.take_control();
            let started = tokio::time::Instant::now();
            if started >= adverts_resume {
                adverts_left = self.take_adverts();
                let spent = started.elapsed();
                adverts_resume = started + spent.mul_f64(1.0 / ADVERT_SHARE);
            } else {
                adverts_left = self.links.values().any(|o| !o.inbox.adverts.is_empty());
            }
            let now = self.clock.now();
            self.router.handle_timeout(now);
            self.flush(now);
        }
    }

    /// Hands every link's queued probes and acknowledgements (at most a queue's worth each) to
    /// the router. Returns whether some are left.
    fn take_control(&mut self) -> bool {
        let mut left = false;
        for (link, out) in &mut self.links {
            for _ in 0..CONTROL_QUEUE {
                let Ok(bytes) = out.inbox.control.try_recv() else {
                    break;
                };
                self.router.handle_datagram(self.clock.now(), *link, &bytes);
            }
            left |= !out.inbox.control.is_empty();
        }
        left
    }

    /// Hands at most [`ADVERTS_PER_TURN`] queued adverts to the router (fewer if they take
    /// [`ADVERT_TIME_PER_TURN`]), one per link in turn, starting after the link the last turn
    /// ended with. Returns whether some are left.
    fn take_adverts(&mut self) -> bool {
        let started = std::time::Instant::now();
        let order: Vec<LinkId> = self
            .links
            .range((Bound::Excluded(self.turn_start), Bound::Unbounded))
            .chain(self.links.range(..=self.turn_start))
            .map(|(l, _)| *l)
            .collect();
        let mut budget = ADVERTS_PER_TURN;
        let mut progress = true;
        while budget > 0 && progress {
            progress = false;
            for link in &order {
                if budget == 0 || started.elapsed() >= ADVERT_TIME_PER_TURN {
                    budget = 0;
                    break;
                }
                let Some(out) = self.links.get_mut(link) else {
                    continue;
                };
                let Ok(bytes) = out.inbox.adverts.try_recv() else {
                    continue;
                };
                self.turn_start = *link;
                budget -= 1;
                progress = true;
                self.router.handle_datagram(self.clock.now(), *link, &bytes);
            }
        }
        self.links.values().any(|o| !o.inbox.adverts.is_empty())
    }

    fn input(&mut self, input: Input) {
        let now = self.clock.now();
        match input {
            Input::Up {
                link,
                peer,
                conn,
                inbox,
            } => {
                let (streams, rx) = mpsc::channel(STREAM_SEND_QUEUE);
                tokio::spawn(write_streams(conn.clone(), rx));
                self.links.insert(
                    link,
                    LinkOut {
                        peer,
                        conn,
                        streams,
                        inbox,
                    },
                );
                self.router.link_up(now, link, peer);
            }
            Input::Down { link } => {
                if self.links.remove(&link).is_some() {
                    self.router.link_down(now, link);
                }
            }
            Input::WantAlternate(dst) => {
                if self.wanted.insert(dst) {
                    self.publish(now);
                }
            }
            Input::ProbePaths(dsts) => {
                let new = dsts.iter().any(|d| !self.probed.contains(d));
                self.probed = dsts;
                if new {
                    self.publish(now);
                }
            }
            Input::Command(cmd, reply) => {
                let answer = self.command(now, &cmd);
                info!(command = ?cmd, answer = ?answer, "self-healing routing command");
                let _ = reply.try_send(answer);
            }
            Input::RecheckAdmission => self.router.recheck_admission(now),
        }
    }

    /// Applies a self-healing command (see [`RoutingCommand`]).
    fn command(&mut self, now: Instant, cmd: &RoutingCommand) -> Result<&'static str, String> {
        let changed = |c: bool| if c { "applied" } else { "already in force" };
        match *cmd {
            RoutingCommand::CostFactor { neighbor, factor } => {
                Ok(changed(self.router.set_cost_factor(now, neighbor, factor)))
            }
            RoutingCommand::Exclude {
                neighbor,
                exclude: true,
            } => Ok(changed(self.router.exclude_link(now, neighbor))),
            RoutingCommand::Exclude {
                neighbor,
                exclude: false,
            } => Ok(changed(self.router.include_link(now, neighbor))),
            RoutingCommand::Quarantine {
                node,
                quarantine: true,
            } => {
                if node == self.router.id() {
                    return Err("this node cannot quarantine itself".into());
                }
                Ok(changed(self.router.quarantine(now, node)))
            }
            RoutingCommand::Quarantine {
                node,
                quarantine: false,
            } => Ok(changed(self.router.release(now, node))),
            RoutingCommand::RestartLink { neighbor } => {
                let Some(out) = self.links.values().find(|o| o.peer == neighbor) else {
                    return Err("no live link to this neighbour".into());
                };
                out.conn.close(
                    quinn::VarInt::from_u32(CLOSE_RESTART),
                    b"restarted by self-healing",
                );
                Ok("closed; the dialler links again")
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
            if let Err(TrySendError::Full(_)) = out.streams.try_send(bytes) {
                bump(&self.shell.streams_unsent);
            }
        }
        let mut recomputed = false;
        while let Some(event) = self.router.poll_event() {
            match event {
                RouterEvent::NeighborUp { link, neighbor } => {
                    info!(peer = %neighbor, link, "routing neighbour up");
                    let _ = self
                        .changes
                        .send(RoutingChange::NeighborUp { peer: neighbor });
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
                    let _ = self.changes.send(RoutingChange::NeighborDown {
                        peer: neighbor,
                        cause,
                    });
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
                    if let Some(out) = self.links.get(&link) {
                        let _ = self.changes.send(RoutingChange::QualityChanged {
                            peer: out.peer,
                            class,
                        });
                    }
                }
                RouterEvent::RoutesRecomputed => recomputed = true,
                RouterEvent::SequenceExhausted => {
                    self.seq_exhausted = true;
                    error!(
                        seq = self.router.own_seq(),
                        "this node's advert sequence number is exhausted: it can no longer \
                         advertise changes of its links; see docs/routing.md, \"Sequence numbers\""
                    );
                }
                _ => {}
            }
        }
        if recomputed || self.router.routes_due().is_some_and(|t| t <= now) {
            self.publish(now);
        }
        let seq = self.router.own_seq();
        if seq != self.saved_seq {
            self.saved_seq = seq;
            let _ = self.seq_store.send(seq);
        }
        self.publish_status();
    }

    /// Publishes counters, sessions and (when the database changed) the topology.
    fn publish_status(&mut self) {
        let digest = self.router.lsdb().digest();
        if self.topology_digest != Some(digest) {
            self.topology_digest = Some(digest);
            self.topology = Arc::new(
                self.router
                    .lsdb()
                    .iter()
                    .map(|(id, e)| TopologyNode {
                        id: *id,
                        seq: e.body().seq,
                        links: e.body().links.clone(),
                    })
                    .collect(),
            );
        }
        let now = self.clock.now();
        let sessions = self
            .router
            .sessions()
            .map(|(_, s)| {
                let q = s.quality();
                SessionStatus {
                    peer: s.neighbor(),
                    rtt: q
                        .has_rtt()
                        .then(|| Duration::from_secs_f64(q.rtt_ms().max(0.0) / 1e3)),
                    jitter: Duration::from_secs_f64(q.jitter_ms().max(0.0) / 1e3),
                    rx_loss: s.rx_loss(),
                    tx_loss: s.tx_loss(),
                    loss: q.loss(),
                    missed: s.missed_intervals(now),
                    class: q.class(),
                    cost: q.cost(),
                    probe_interval: s.tx_interval(),
                }
            })
            .collect();
        self.status.store(Arc::new(RoutingStatus {
            stats: self.router.stats().clone(),
            sessions,
            topology: self.topology.clone(),
            restrictions: self.router.restrictions().clone(),
            seq_exhausted: self.seq_exhausted,
        }));
    }

    /// Recomputes every destination's route and publishes the table, logging what changed.
    fn publish(&mut self, now: Instant) {
        let started = std::time::Instant::now();
        let spf_before = self.router.stats().spf_runs;
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
        let wanted: Vec<NodeId> = self.wanted.union(&self.probed).copied().collect();
        if self.router.stats().spf_runs != spf_before {
            self.metrics
                .spf_duration
                .observe(started.elapsed().as_secs_f64());
        }
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
            self.metrics.route_changes.inc_by(changed as u64);
            self.metrics.table_updates.inc();
            let _ = self.changes.send(RoutingChange::RoutesChanged {
                reachable: routes.len(),
                changed,
            });
        }
        if old.nodes != dsts {
            let before: std::collections::HashSet<&NodeId> = old.nodes.iter().collect();
            let after: std::collections::HashSet<&NodeId> = dsts.iter().collect();
            for node in after.difference(&before) {
                let _ = self
                    .changes
                    .send(RoutingChange::NodeAppeared { node: **node });
            }
            for node in before.difference(&after) {
                let _ = self.changes.send(RoutingChange::NodeLeft { node: **node });
            }
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

/// Stores the advert sequence number in the state database whenever it changes, off the
/// routing task (a SQLite commit may wait for the disk): the newest number only, one write at a
/// time.
fn persist_seq(store: Arc<Mutex<StateStore>>, last: u64) -> tokio::sync::watch::Sender<u64> {
    let (tx, mut rx) = tokio::sync::watch::channel(last);
    tokio::spawn(async move {
        while rx.changed().await.is_ok() {
            let seq = *rx.borrow_and_update();
            let store = store.clone();
            let written = tokio::task::spawn_blocking(move || {
                crate::daemon::lock(&store).set_meta(META_ROUTING_SEQ, &seq.to_string())
            })
            .await;
            match written {
                Ok(Ok(())) => {}
                Ok(Err(e)) => warn!("cannot store the advert sequence number: {e}"),
                Err(e) => warn!("cannot store the advert sequence number: {e}"),
            }
        }
    });
    tx
}

async fn write_streams(conn: quinn::Connection, mut rx: mpsc::Receiver<Bytes>) {
    let open = Arc::new(Semaphore::new(STREAM_SENDS));
    while let Some(bytes) = rx.recv().await {
        let Ok(permit) = open.clone().acquire_owned().await else {
            return;
        };
        let conn = conn.clone();
        // One stream per message, each on its own task: a slow stream holds up nothing else.
        tokio::spawn(async move {
            let _permit = permit;
            let Ok(Ok(mut send)) = tokio::time::timeout(STREAM_TIMEOUT, conn.open_uni()).await
            else {
                return;
            };
            match tokio::time::timeout(STREAM_TIMEOUT, send.write_all(&bytes)).await {
                Ok(Ok(())) => {
                    let _ = send.finish();
                }
                _ => {
                    let _ = send.reset(quinn::VarInt::from_u32(0));
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use x0_wire::routing::{Advert, AdvertBody, Probe, RoutingMessage};

    use super::*;

    fn queues() -> (LinkFeed, LinkInbox) {
        let (control, control_rx) = mpsc::channel(CONTROL_QUEUE);
        let (adverts, adverts_rx) = mpsc::channel(ADVERT_QUEUE);
        let feed = LinkFeed {
            link: 1,
            control,
            adverts,
            wake: Arc::default(),
            stats: Arc::default(),
        };
        let inbox = LinkInbox {
            control: control_rx,
            adverts: adverts_rx,
        };
        (feed, inbox)
    }

    fn probe(seq: u32) -> Bytes {
        RoutingMessage::Probe(Probe {
            seq,
            sent_at_us: 1,
            tx_interval_ms: 100,
            multiplier: 3,
            echo_sent_at_us: 0,
            echo_hold_us: 0,
            rx_loss_permille: 0,
        })
        .encode()
        .into()
    }

    fn advert(seq: u64) -> Bytes {
        let body = AdvertBody {
            origin: NodeId::from_bytes([7; 16]),
            seq,
            lifetime_s: 60,
            links: Vec::new(),
        };
        Advert {
            body: body.encode(),
            origin_key: Vec::new(),
            signature: vec![0; 16],
        }
        .to_datagram()
        .into()
    }

    fn load(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }

    #[tokio::test]
    async fn a_links_probes_never_queue_behind_its_adverts_and_overflow_is_counted() {
        let (feed, mut inbox) = queues();
        // A datagram flood of adverts fills the link's advert queue; the rest is dropped.
        for seq in 0..(ADVERT_QUEUE + 5) as u64 {
            assert!(feed.offer(advert(seq)));
        }
        assert_eq!(load(&feed.stats.adverts_dropped), 5);
        // Probes and acknowledgements have a queue of their own.
        assert!(feed.offer(probe(1)));
        let ack: Bytes = RoutingMessage::AdvertAck(Vec::new()).encode().into();
        assert!(feed.offer(ack.clone()));
        assert_eq!(inbox.control.try_recv().ok(), Some(probe(1)));
        assert_eq!(inbox.control.try_recv().ok(), Some(ack));
        // A probe flood is bounded the same way.
        for seq in 0..(CONTROL_QUEUE + 3) as u32 {
            assert!(feed.offer(probe(seq)));
        }
        assert_eq!(load(&feed.stats.probes_dropped), 3);
        // Anything of unknown type goes the slow way (the router counts it as malformed).
        let (junk_feed, mut junk_inbox) = queues();
        assert!(junk_feed.offer(Bytes::from_static(b"\xffjunk")));
        assert!(junk_inbox.adverts.try_recv().is_ok());
        assert!(junk_inbox.control.try_recv().is_err());
    }

    #[tokio::test]
    async fn an_advert_from_a_stream_waits_for_room_instead_of_being_dropped() {
        let (feed, mut inbox) = queues();
        for seq in 0..ADVERT_QUEUE as u64 {
            assert!(feed.deliver(advert(seq)).await);
        }
        let waiting = {
            let feed = feed.clone();
            tokio::spawn(async move { feed.deliver(advert(1000)).await })
        };
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "held back while the queue is full");
        assert_eq!(inbox.adverts.try_recv().ok(), Some(advert(0)));
        assert!(waiting.await.unwrap());
        assert_eq!(load(&feed.stats.adverts_dropped), 0);
        // A probe that came on a stream still takes the probes' queue.
        assert!(feed.deliver(probe(9)).await);
        assert_eq!(inbox.control.try_recv().ok(), Some(probe(9)));
        // Once the routing task lets go of the link, its readers stop.
        drop(inbox);
        assert!(!feed.offer(probe(10)));
        assert!(!feed.deliver(advert(2000)).await);
    }
}
