//! The router: liveness sessions, link-state flooding, the LSDB and the route cache, driven by
//! inputs and `now`.
//!
//! Inputs: [`Router::link_up`] / [`Router::link_down`] (locally visible link events, e.g. the
//! QUIC link closed or the underlay lost carrier), [`Router::handle_datagram`] (a routing
//! datagram from a neighbour), [`Router::note_traffic`], [`Router::handle_timeout`].
//! Outputs: [`Router::poll_transmit`] (datagrams per link), [`Router::poll_event`],
//! [`Router::poll_timeout`]. Queries: [`Router::next_hop`], [`Router::disjoint_paths`].
//!
//! Flooding is reliable: every advert sent to a neighbour stays pending until that neighbour
//! acknowledges it (explicitly, or implicitly by sending us the same version), with
//! retransmissions every `retransmit_interval`, doubling to 8×. Sending is rate-limited per
//! neighbour by a token bucket. A new neighbour receives our whole database.
//!
//! Our own advert is re-originated at once (at most every `min_originate_interval`) when a link
//! comes up or goes down, a link's quality class changes or its cost changes by more than
//! `significant_cost_change`; smaller cost changes wait for the periodic refresh. If a neighbour
//! sends us a validly signed advert of ours with a higher sequence number (from before a
//! reboot), we jump past it and re-originate, within the same rate limit; one whose signature
//! does not verify changes nothing. Sequence numbers never wrap: at `u64::MAX` origination stops
//! ([`RouterEvent::SequenceExhausted`]).
//!
//! Routes: computed lazily, on the first query at least `spf_delay` after a topology change
//! (coalescing bursts; a router nobody asks for routes never runs SPF), over the links both ends
//! advertise. When a local link dies, destinations whose primary next hop used it switch at
//! once to the first hop of their precomputed node-disjoint backup path, before the SPF and
//! before any advert is flooded.
//!
//! **Restrictions** (set by the self-healing loop, see [`Restrictions`]): a cost factor on one
//! of our links, a link excluded from routing (still probed), a node quarantined from transit.
//! Cost factors and exclusions are *advertised* (our advert carries the raised cost, or leaves
//! the excluded link out), so that every node's SPF agrees and hop-by-hop forwarding cannot
//! loop over them; a quarantine is local: our SPF never relays through the node, which stays
//! reachable as a destination. Restrictions are kept per neighbour, not per link handle, so
//! they survive the link being restarted.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use x0_wire::NodeId;
use x0_wire::routing::{Advert, AdvertBody, AdvertisedLink, RoutingMessage, peek_advert};

use crate::auth::{AdvertAuth, Verdict};
use crate::config::RouterConfig;
use crate::graph::{Graph, NO_NODE, NodeIx};
use crate::liveness::Session;
use crate::lsdb::{AdvertInterner, Lsdb, Offer, StoredAdvert, supersedes};
use crate::paths::{ShortestPathTree, dijkstra, disjoint_paths};
use crate::quality::QualityClass;
use crate::stats::RouterStats;
use crate::time::Instant;

/// The caller's handle for a link.
pub type LinkId = u64;

/// Most retransmission back-off (multiples of `retransmit_interval`).
const MAX_BACKOFF: u32 = 8;
/// Cost advertised for a link not measured yet (so high that nothing routes over it).
const UNMEASURED_COST: u32 = u32::MAX / 1024;

/// Why a neighbour went down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DownCause {
    /// Nothing heard for `multiplier` probe intervals.
    Silent,
    /// The caller reported the link down.
    Local,
}

/// Something the caller may want to know or act on.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RouterEvent {
    /// A link's session started.
    NeighborUp {
        /// The link.
        link: LinkId,
        /// Its neighbour.
        neighbor: NodeId,
    },
    /// A neighbour was declared down.
    NeighborDown {
        /// The link.
        link: LinkId,
        /// Its neighbour.
        neighbor: NodeId,
        /// Why.
        cause: DownCause,
    },
    /// A link's quality class changed.
    QualityChanged {
        /// The link.
        link: LinkId,
        /// The new class.
        class: QualityClass,
    },
    /// The routing table was recomputed after a topology change.
    RoutesRecomputed,
    /// Our advert sequence number reached `u64::MAX`: we cannot advertise any change of our
    /// links any more. Reported once. Only an advert signed with our own key can get us there
    /// (the key leaked, or the persisted number was edited); the way out is in
    /// `docs/routing.md` ("Sequence numbers").
    SequenceExhausted,
}

/// A forwarding decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NextHop {
    /// The link to send on.
    pub link: LinkId,
    /// The neighbour at its end.
    pub neighbor: NodeId,
    /// Whether this is the fast-reroute backup (the primary's link is down).
    pub via_backup: bool,
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    seq: u64,
    due: Instant,
    backoff: u32,
    /// Whether the origin is in the neighbour's send queue (entries of origins no longer
    /// queued are skipped there).
    queued: bool,
}

#[derive(Debug)]
struct Neighbor {
    session: Session,
    /// Adverts awaiting acknowledgement, by origin.
    pending: BTreeMap<NodeId, Pending>,
    /// Retransmission schedule: (due, origin). An entry counts only while it matches the
    /// origin's pending `due` (acknowledgements leave theirs behind, to be skipped when due or
    /// swept once they outnumber the live ones: removing each was a B-tree search per
    /// acknowledgement).
    schedule: BTreeSet<(Instant, NodeId)>,
    /// Origins whose advert is to be sent now (see `Pending::queued`).
    queue: VecDeque<NodeId>,
    acks: Vec<(NodeId, u64)>,
    tokens: f64,
    refilled: Instant,
    /// Signature verifications this neighbour may still cause (refilled at
    /// `verify_rate_per_s`; negative after bad signatures).
    verify_tokens: f64,
    verify_refilled: Instant,
    advertised_cost: u32,
    advertised_class: QualityClass,
    /// When a cost-only change may next trigger an advert.
    cost_change_allowed: Instant,
    /// When the link came up (its first advert waits for a measurement, within limits).
    up_since: Instant,
}

#[derive(Debug)]
struct RouteCache {
    graph: Graph,
    me: NodeIx,
    spt: ShortestPathTree,
    /// The cheapest path to the destination that shares no node with the primary path (other
    /// than us and the destination), per destination, computed on first use.
    backups: HashMap<NodeIx, Option<Vec<NodeIx>>>,
}

/// Restrictions on routing placed by the self-healing loop.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Restrictions {
    /// Factor applied to the cost of our link to each of these neighbours (absent: 1).
    pub cost_factors: BTreeMap<NodeId, u32>,
    /// Neighbours whose link carries no routes (it stays up and probed, and is left out of our
    /// advert).
    pub excluded: BTreeSet<NodeId>,
    /// Nodes our routes never relay through (they stay reachable as destinations).
    pub quarantined: BTreeSet<NodeId>,
}

impl Restrictions {
    /// The cost factor of our link to `neighbor`.
    pub fn cost_factor(&self, neighbor: &NodeId) -> u32 {
        self.cost_factors.get(neighbor).copied().unwrap_or(1)
    }

    /// Whether nothing is restricted.
    pub fn is_empty(&self) -> bool {
        self.cost_factors.is_empty() && self.excluded.is_empty() && self.quarantined.is_empty()
    }
}

/// A measured cost scaled by a restriction's factor.
fn scaled(cost: u32, factor: u32) -> u32 {
    cost.saturating_mul(factor.max(1))
}

/// An origin's acceptance bucket (see `Router::hold_back`).
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    refilled: Instant,
}

/// A newer advert held back by the per-origin acceptance limit (`min_advert_arrival`).
#[derive(Debug)]
struct Held {
    stored: Arc<StoredAdvert>,
    /// The link it came in on (not flooded back there).
    from: LinkId,
    /// When it is installed and flooded.
    release: Instant,
}

#[derive(Debug)]
struct Frr {
    until: Instant,
    routes: RouteCache,
    /// The neighbours lost since the hold began, as indices in `routes.graph`. A neighbour
    /// that went silent may have crashed: a path through it further on is as dead as one
    /// whose first hop it is.
    failed: Vec<NodeIx>,
}

impl Frr {
    /// Whether the pre-failure primary path to `d` passes through a lost neighbour before
    /// reaching `d`.
    fn primary_crosses_failure(&self, d: NodeIx) -> bool {
        let mut cur = d;
        let parent = &self.routes.spt.parent;
        for _ in 0..parent.len() {
            let Some(&p) = parent.get(cur as usize) else {
                return false;
            };
            if p == NO_NODE || p == self.routes.me {
                return false;
            }
            if self.failed.contains(&p) {
                return true;
            }
            cur = p;
        }
        false
    }
}

/// The routing state machine of one node.
pub struct Router {
    cfg: RouterConfig,
    me: NodeId,
    auth: Box<dyn AdvertAuth + Send>,
    seq: u64,
    /// Whether [`RouterEvent::SequenceExhausted`] was reported.
    seq_exhausted: bool,
    /// The verifier's admission generation our database was last checked against.
    admission_seen: u64,
    links: BTreeMap<LinkId, Neighbor>,
    by_neighbor: BTreeMap<NodeId, LinkId>,
    lsdb: Lsdb,
    originate_wanted: bool,
    next_originate_allowed: Instant,
    refresh_at: Instant,
    spf_due: Option<Instant>,
    routes: Option<RouteCache>,
    /// The routing table from before a local link failure, used for `frr_hold`.
    frr: Option<Frr>,
    transmits: VecDeque<(LinkId, Vec<u8>)>,
    events: VecDeque<RouterEvent>,
    stats: RouterStats,
    interner: Option<Arc<AdvertInterner>>,
    /// Anchor of the probe tick grid.
    epoch: Instant,
    /// What [`Router::poll_timeout`] answers, kept current by every input (the scan over all
    /// links it replaces ran after every datagram; see `docs/decisions.md`).
    next_timeout: Instant,
    /// False only when no link has adverts queued or acknowledgements to send, so that
    /// [`Router::run`] can skip its scans over the links (true is always safe).
    work_pending: bool,
    /// False only when no link has adverts queued (true is always safe): [`Router::run`] then
    /// skips its scan over the links, which at a hub of 140 links was most of the cost of
    /// each duplicate advert received.
    floods_queued: bool,
    /// The links with acknowledgements to send (each once).
    ack_links: Vec<LinkId>,
    /// Restrictions from the self-healing loop.
    restrictions: Restrictions,
    /// Per origin, the newest advert held back by the acceptance limit (at most one per origin
    /// in the database, so bounded by `max_origins`).
    held: BTreeMap<NodeId, Held>,
    /// Release times of `held`.
    held_release: BTreeSet<(Instant, NodeId)>,
    /// Acceptance buckets of the origins that replaced their advert (removed with the origin's
    /// entry, so bounded by `max_origins`).
    arrivals: BTreeMap<NodeId, Bucket>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("me", &self.me)
            .field("seq", &self.seq)
            .field("links", &self.links.len())
            .field("lsdb", &self.lsdb.len())
            .finish_non_exhaustive()
    }
}

impl Router {
    /// A router for node `me` whose last used advert sequence number was `last_seq` (0 on
    /// first start; the daemon persists [`Router::own_seq`]). It originates its first advert at
    /// once.
    pub fn new(
        cfg: RouterConfig,
        me: NodeId,
        auth: Box<dyn AdvertAuth + Send>,
        last_seq: u64,
        now: Instant,
    ) -> Self {
        let refresh_at = now + cfg.advert_refresh;
        let admission_seen = auth.admission_generation();
        Self {
            cfg,
            me,
            admission_seen,
            auth,
            seq: last_seq,
            seq_exhausted: false,
            links: BTreeMap::new(),
            by_neighbor: BTreeMap::new(),
            lsdb: Lsdb::new(),
            originate_wanted: false,
            next_originate_allowed: now,
            refresh_at,
            spf_due: None,
            routes: None,
            frr: None,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            stats: RouterStats::default(),
            interner: None,
            epoch: now,
            next_timeout: refresh_at,
            work_pending: false,
            floods_queued: false,
            ack_links: Vec::new(),
            restrictions: Restrictions::default(),
            held: BTreeMap::new(),
            held_release: BTreeSet::new(),
            arrivals: BTreeMap::new(),
        }
    }

    /// Shares received adverts with other routers of this process (the simulator).
    pub fn with_interner(mut self, interner: Arc<AdvertInterner>) -> Self {
        self.interner = Some(interner);
        self
    }

    /// A router that starts as part of an already converged mesh: `links` are up with the
    /// given RTT estimates (their quality seeded accordingly) and `lsdb` holds the current
    /// advert of every node, ours included (its sequence number becomes ours). For simulations
    /// of large steady meshes, whose cold start would only measure flooding; everything after
    /// `now` runs exactly as in a router started cold.
    pub fn warm(
        cfg: RouterConfig,
        me: NodeId,
        auth: Box<dyn AdvertAuth + Send>,
        now: Instant,
        links: &[(LinkId, NodeId, Duration)],
        lsdb: impl IntoIterator<Item = Arc<StoredAdvert>>,
    ) -> Self {
        Self::warm_with_lsdb(cfg, me, auth, now, links, Self::warm_lsdb(lsdb, now))
    }

    /// The database [`Router::warm`] starts from: `adverts` offered in origin order at `now`.
    /// Build it once and pass clones to [`Router::warm_with_lsdb`]: the clones share their
    /// entries until they change.
    pub fn warm_lsdb(adverts: impl IntoIterator<Item = Arc<StoredAdvert>>, now: Instant) -> Lsdb {
        let mut adverts: Vec<Arc<StoredAdvert>> = adverts.into_iter().collect();
        adverts.sort_by_key(|a| a.body.origin);
        let mut lsdb = Lsdb::new();
        for stored in adverts {
            lsdb.offer(stored, now);
        }
        lsdb
    }

    /// [`Router::warm`] from a database built by [`Router::warm_lsdb`] with the same `now`.
    pub fn warm_with_lsdb(
        cfg: RouterConfig,
        me: NodeId,
        auth: Box<dyn AdvertAuth + Send>,
        now: Instant,
        links: &[(LinkId, NodeId, Duration)],
        lsdb: Lsdb,
    ) -> Self {
        let mut r = Self::new(cfg, me, auth, 0, now);
        r.seq = lsdb.seq_of(&me).unwrap_or(0);
        r.lsdb = lsdb;
        for &(link, neighbor, rtt) in links {
            let mut n = new_neighbor(&r.cfg, neighbor, now);
            n.session.seed_rtt(rtt);
            let q = n.session.quality();
            n.advertised_cost = q.cost();
            n.advertised_class = q.class();
            r.links.insert(link, n);
            r.by_neighbor.insert(neighbor, link);
        }
        r.next_timeout = r.compute_timeout();
        r
    }

    /// The advert at `origin`'s current version, as this router would send it.
    pub fn stored_advert(&self, origin: &NodeId) -> Option<Arc<StoredAdvert>> {
        self.lsdb.get(origin).map(|e| e.stored.clone())
    }

    /// Builds (and signs) the advert a router would originate for `links`, without a router:
    /// for warm starts.
    pub fn make_advert(
        me: NodeId,
        seq: u64,
        lifetime: Duration,
        links: Vec<AdvertisedLink>,
        auth: &mut dyn AdvertAuth,
    ) -> StoredAdvert {
        let mut links = links;
        links.sort_by_key(|l| l.neighbor);
        links.dedup_by_key(|l| l.neighbor);
        links.truncate(x0_wire::routing::MAX_ADVERT_LINKS);
        let body = AdvertBody {
            origin: me,
            seq,
            lifetime_s: u32::try_from(lifetime.as_secs()).unwrap_or(u32::MAX),
            links,
        };
        let bytes = body.encode();
        let (origin_key, signature) = auth.sign(&bytes);
        StoredAdvert::new(
            Advert {
                body: bytes,
                origin_key,
                signature,
            },
            body,
        )
    }

    /// Our node ID.
    pub fn id(&self) -> NodeId {
        self.me
    }

    /// The sequence number of our newest advert (persist it to survive restarts).
    pub fn own_seq(&self) -> u64 {
        self.seq
    }

    /// Counters.
    pub fn stats(&self) -> &RouterStats {
        &self.stats
    }

    /// The link-state database.
    pub fn lsdb(&self) -> &Lsdb {
        &self.lsdb
    }

    /// The link to `neighbor`, if its session is up.
    pub fn link_to(&self, neighbor: &NodeId) -> Option<LinkId> {
        self.by_neighbor.get(neighbor).copied()
    }

    /// The live links and their sessions.
    pub fn sessions(&self) -> impl Iterator<Item = (LinkId, &Session)> {
        self.links.iter().map(|(l, n)| (*l, &n.session))
    }

    // ---- inputs ---------------------------------------------------------------------------

    /// A link to `neighbor` came up (e.g. an authenticated QUIC link was established).
    pub fn link_up(&mut self, now: Instant, link: LinkId, neighbor: NodeId) {
        if neighbor == self.me {
            return;
        }
        if self
            .links
            .get(&link)
            .is_some_and(|n| n.session.neighbor() == neighbor)
        {
            return; // already up
        }
        if let Some(old) = self.by_neighbor.get(&neighbor).copied()
            && old != link
        {
            self.drop_link(now, old, DownCause::Local);
        }
        if self.links.contains_key(&link) {
            self.drop_link(now, link, DownCause::Local);
        }
        let mut n = new_neighbor(&self.cfg, neighbor, now);
        // Database exchange: the new neighbour gets everything we hold.
        for origin in self.lsdb.iter().map(|(o, _)| *o).collect::<Vec<_>>() {
            if let Some(seq) = self.lsdb.seq_of(&origin) {
                schedule_send(&mut n, origin, seq, now);
            }
        }
        self.links.insert(link, n);
        self.by_neighbor.insert(neighbor, link);
        self.work_pending = true;
        self.floods_queued = true;
        self.events
            .push_back(RouterEvent::NeighborUp { link, neighbor });
        self.originate_wanted = true;
        self.topology_changed(now);
        self.run(now);
        self.next_timeout = self.compute_timeout();
    }

    /// The caller saw the link fail (carrier lost, send error, QUIC link closed).
    pub fn link_down(&mut self, now: Instant, link: LinkId) {
        if self.links.contains_key(&link) {
            self.drop_link(now, link, DownCause::Local);
            self.run(now);
            self.next_timeout = self.compute_timeout();
        }
    }

    /// The link carries user traffic: keep its probe interval tight.
    pub fn note_traffic(&mut self, now: Instant, link: LinkId) {
        if let Some(n) = self.links.get_mut(&link) {
            n.session.note_traffic(now, &self.cfg);
            self.next_timeout = self.compute_timeout();
        }
    }

    /// A routing datagram arrived on `link`.
    pub fn handle_datagram(&mut self, now: Instant, link: LinkId, bytes: &[u8]) {
        self.stats.datagrams_received += 1;
        let sent_before = self.stats.adverts_sent;
        if !self.links.contains_key(&link) {
            self.stats.datagrams_unknown_link += 1;
            return;
        }
        // Most adverts a node receives are copies of what it holds: settle those from the
        // header, without decoding the body.
        if let Some((origin, seq)) = peek_advert(bytes)
            && origin != self.me
            && self.lsdb.get(&origin).is_some_and(|e| {
                e.body().seq > seq || (e.body().seq == seq && e.stored.datagram == bytes)
            })
        {
            self.stats.adverts_received += 1;
            self.work_pending = true;
            self.old_advert(now, link, origin, seq);
            self.run(now);
            self.next_timeout = self.timeout_after_datagram(now, link, sent_before);
            return;
        }
        let msg = match RoutingMessage::decode(bytes) {
            Ok(m) => m,
            Err(_) => {
                self.stats.malformed += 1;
                return;
            }
        };
        match msg {
            RoutingMessage::Probe(p) => {
                self.stats.probes_received += 1;
                if let Some(n) = self.links.get_mut(&link) {
                    let deadline_before = n.session.detect_deadline();
                    if n.session.on_probe(now, &p) {
                        let class = n.session.quality().class();
                        self.events
                            .push_back(RouterEvent::QualityChanged { link, class });
                    }
                    let factor = self.restrictions.cost_factor(&n.session.neighbor());
                    if wants_advert(&self.cfg, n, now, factor) {
                        self.originate_wanted = true;
                    }
                    // The common case: nothing to send, so `run` would do nothing, and the
                    // only deadline that moved is this link's detection deadline. If that one
                    // did not hold the minimum, the new minimum follows without a scan.
                    if !self.work_pending
                        && !self.originate_wanted
                        && deadline_before > self.next_timeout
                    {
                        self.next_timeout = self.next_timeout.min(n.session.detect_deadline());
                        return;
                    }
                }
            }
            RoutingMessage::Advert(advert, body) => {
                self.work_pending = true;
                self.on_advert(now, link, advert, body);
            }
            RoutingMessage::AdvertAck(acks) => {
                if let Some(n) = self.links.get_mut(&link) {
                    for (origin, seq) in acks {
                        acknowledge(n, &origin, seq);
                    }
                }
            }
            _ => self.stats.malformed += 1,
        }
        self.run(now);
        self.next_timeout = self.timeout_after_datagram(now, link, sent_before);
    }

    /// [`Router::poll_timeout`] after a datagram on `link`, without a scan over every link:
    /// the cached deadline lowered by what a datagram can have moved earlier (that link's
    /// timers, floods queued and their retransmission timers, an origination, held adverts,
    /// expiry). A deadline that moved later leaves the cached one early: the router then wakes
    /// for nothing once and [`Router::handle_timeout`] computes it afresh. (At a hub of 140
    /// links the scan was an eighth of the simulator's time.)
    fn timeout_after_datagram(&self, now: Instant, link: LinkId, sent_before: u64) -> Instant {
        let mut t = self.next_timeout.min(self.router_deadline());
        if let Some(n) = self.links.get(&link) {
            t = t
                .min(n.session.probe_due())
                .min(n.session.detect_deadline());
            if let Some(&(at, _)) = n.schedule.first() {
                t = t.min(at);
            }
        }
        if self.floods_queued {
            t = t.min(now + Duration::from_secs_f64(1.0 / f64::from(self.cfg.flood_rate_per_s)));
        }
        if self.stats.adverts_sent != sent_before {
            // Adverts sent just now armed retransmission timers, on other links too.
            t = t.min(now + self.cfg.retransmit_interval);
        }
        t
    }

    /// Drops the adverts of origins that lost their admission, if the verifier says the
    /// admitted set may have shrunk ([`AdvertAuth::admission_generation`]). Runs at every
    /// [`Router::handle_timeout`]; a shell that just applied a revocation list may call it for
    /// an immediate effect.
    pub fn recheck_admission(&mut self, now: Instant) {
        self.purge_unadmitted(now);
        self.run(now);
        self.next_timeout = self.compute_timeout();
    }

    fn purge_unadmitted(&mut self, now: Instant) {
        let generation = self.auth.admission_generation();
        if generation == self.admission_seen {
            return;
        }
        self.admission_seen = generation;
        let origins: Vec<NodeId> = self
            .lsdb
            .iter()
            .map(|(o, _)| *o)
            .filter(|o| *o != self.me)
            .collect();
        let mut purged = false;
        for origin in origins {
            if !self.auth.admits(&origin) && self.lsdb.remove(&origin) {
                self.stats.origins_purged += 1;
                purged = true;
                self.drop_held(&origin);
                self.arrivals.remove(&origin);
            }
        }
        if purged {
            self.topology_changed(now);
        }
    }

    /// Runs everything due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.purge_unadmitted(now);
        // Silent neighbours.
        let dead: Vec<LinkId> = self
            .links
            .iter()
            .filter(|(_, n)| n.session.detect_deadline() <= now)
            .map(|(l, _)| *l)
            .collect();
        for link in dead {
            self.drop_link(now, link, DownCause::Silent);
        }
        // Probes.
        let due: Vec<LinkId> = self
            .links
            .iter()
            .filter(|(_, n)| n.session.probe_due() <= now)
            .map(|(l, _)| *l)
            .collect();
        for link in due {
            let Some(n) = self.links.get_mut(&link) else {
                continue;
            };
            let probe = n.session.make_probe(now, &self.cfg, self.epoch);
            self.stats.probes_sent += 1;
            self.send(link, &RoutingMessage::Probe(probe));
            self.check_significant(now, link);
        }
        // Retransmissions.
        let rto = self.cfg.retransmit_interval;
        for n in self.links.values_mut() {
            while let Some(&(at, origin)) = n.schedule.first() {
                if at > now {
                    break;
                }
                n.schedule.pop_first();
                if let Some(p) = n.pending.get_mut(&origin)
                    && p.backoff != 0
                    && p.due == at
                {
                    p.backoff = (p.backoff * 2).min(MAX_BACKOFF);
                    p.due = now + rto * p.backoff;
                    n.schedule.insert((p.due, origin));
                    if !p.queued {
                        p.queued = true;
                        n.queue.push_back(origin);
                        self.stats.retransmissions += 1;
                        self.work_pending = true;
                        self.floods_queued = true;
                    }
                }
            }
        }
        self.release_held(now);
        // Expiry.
        let expired = self.lsdb.expire(now);
        if !expired.is_empty() {
            for origin in &expired {
                self.arrivals.remove(origin);
            }
            self.topology_changed(now);
        }
        if now >= self.refresh_at {
            self.originate_wanted = true;
        }
        self.run(now);
        self.next_timeout = self.compute_timeout();
    }

    // ---- restrictions (self-healing) --------------------------------------------------------

    /// The restrictions in force.
    pub fn restrictions(&self) -> &Restrictions {
        &self.restrictions
    }

    /// Multiplies the cost of our link to `neighbor` by `factor` (1 restores it), in our SPF
    /// and in our advert. Returns whether anything changed.
    pub fn set_cost_factor(&mut self, now: Instant, neighbor: NodeId, factor: u32) -> bool {
        let factor = factor.max(1);
        if self.restrictions.cost_factor(&neighbor) == factor {
            return false;
        }
        if factor == 1 {
            self.restrictions.cost_factors.remove(&neighbor);
        } else {
            self.restrictions.cost_factors.insert(neighbor, factor);
        }
        let linked = self.by_neighbor.contains_key(&neighbor);
        self.restrictions_changed(now, linked);
        true
    }

    /// Stops routing over our link to `neighbor` (it stays up and probed, and leaves our
    /// advert). Returns whether anything changed.
    pub fn exclude_link(&mut self, now: Instant, neighbor: NodeId) -> bool {
        if !self.restrictions.excluded.insert(neighbor) {
            return false;
        }
        let linked = self.by_neighbor.contains_key(&neighbor);
        self.restrictions_changed(now, linked);
        true
    }

    /// Undoes [`Router::exclude_link`]. Returns whether anything changed.
    pub fn include_link(&mut self, now: Instant, neighbor: NodeId) -> bool {
        if !self.restrictions.excluded.remove(&neighbor) {
            return false;
        }
        let linked = self.by_neighbor.contains_key(&neighbor);
        self.restrictions_changed(now, linked);
        true
    }

    /// Never relays through `node` (it stays reachable as a destination). Refused for
    /// ourselves. Returns whether anything changed.
    pub fn quarantine(&mut self, now: Instant, node: NodeId) -> bool {
        if node == self.me || !self.restrictions.quarantined.insert(node) {
            return false;
        }
        self.restrictions_changed(now, false);
        true
    }

    /// Undoes [`Router::quarantine`]. Returns whether anything changed.
    pub fn release(&mut self, now: Instant, node: NodeId) -> bool {
        if !self.restrictions.quarantined.remove(&node) {
            return false;
        }
        self.restrictions_changed(now, false);
        true
    }

    fn restrictions_changed(&mut self, now: Instant, readvertise: bool) {
        if readvertise {
            self.originate_wanted = true;
        }
        self.topology_changed(now);
        self.run(now);
        self.next_timeout = self.compute_timeout();
    }

    // ---- outputs --------------------------------------------------------------------------

    /// The next datagram to send, and on which link.
    pub fn poll_transmit(&mut self) -> Option<(LinkId, Vec<u8>)> {
        self.transmits.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<RouterEvent> {
        self.events.pop_front()
    }

    /// When the answers of [`Router::next_hop`] may next change without any input: a pending
    /// route recomputation after a topology change, or the end of a fast-reroute hold. A shell
    /// that publishes a forwarding table re-reads it then. Routes are computed lazily, on the
    /// first query at or after this time.
    pub fn routes_due(&self) -> Option<Instant> {
        let frr = self.frr.as_ref().map(|f| f.until);
        match (self.spf_due, frr) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// When [`Router::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        // Never later than every deadline; possibly earlier (see `timeout_after_datagram`).
        debug_assert!(self.next_timeout <= self.compute_timeout());
        Some(self.next_timeout)
    }

    /// The earliest deadline that belongs to no link: the refresh, a wanted origination,
    /// expiry, a held advert's release.
    fn router_deadline(&self) -> Instant {
        let mut t = self.refresh_at;
        if self.originate_wanted {
            let ready = self.next_originate_allowed;
            t = t.min(self.measurement_due(ready).map_or(ready, |m| m.max(ready)));
        }
        if let Some(e) = self.lsdb.next_expiry() {
            t = t.min(e);
        }
        if let Some(&(r, _)) = self.held_release.first() {
            t = t.min(r);
        }
        t
    }

    /// The earliest of every deadline the router holds (what [`Router::poll_timeout`] caches).
    fn compute_timeout(&self) -> Instant {
        let mut t = self.router_deadline();
        for n in self.links.values() {
            t = t
                .min(n.session.probe_due())
                .min(n.session.detect_deadline());
            if let Some(&(at, _)) = n.schedule.first() {
                t = t.min(at);
            }
            if !n.queue.is_empty() {
                // Tokens refill continuously: the next one is at most 1/rate away.
                t = t.min(
                    n.refilled
                        + Duration::from_secs_f64(1.0 / f64::from(self.cfg.flood_rate_per_s)),
                );
            }
        }
        t
    }

    // ---- queries --------------------------------------------------------------------------

    /// Where to send a packet for `dst`.
    ///
    /// Normally the primary next hop of the current routing table. For `frr_hold` after one
    /// of our links fails, decisions come from the table as it was before the failure: a
    /// destination whose primary used the dead link goes onto its precomputed node-disjoint
    /// backup path (`via_backup`; the packet must carry that path, see
    /// [`Router::backup_path`]), and every other destination keeps its old next hop, so that
    /// no packet is sent into a microloop while the rest of the mesh converges.
    pub fn next_hop(&mut self, now: Instant, dst: &NodeId) -> Option<NextHop> {
        self.decide(now, dst).map(|(hop, _)| hop)
    }

    /// The explicit path a packet for `dst` must follow when [`Router::next_hop`] answers
    /// `via_backup` (node IDs, starting with us); `None` when forwarding is hop by hop.
    pub fn backup_path(&mut self, now: Instant, dst: &NodeId) -> Option<Vec<NodeId>> {
        self.decide(now, dst).and_then(|(_, path)| path)
    }

    fn decide(&mut self, now: Instant, dst: &NodeId) -> Option<(NextHop, Option<Vec<NodeId>>)> {
        if *dst == self.me {
            return None;
        }
        let k = self.cfg.k_paths;
        if self.frr.as_ref().is_some_and(|f| now < f.until) {
            if let Some(f) = self.frr.as_mut()
                && let Some(d) = f.routes.graph.index_of(dst)
            {
                // The old next hop, unless it is gone or the old path crosses a lost
                // neighbour further on: kept, that path would meet nodes that have already
                // converged and route back through us (a loop for the whole hold).
                if !f.primary_crosses_failure(d)
                    && let Some(hop) = primary_hop(&f.routes, d, &self.by_neighbor)
                {
                    return Some((hop, None));
                }
                if let Some(found) = backup_hop(&mut f.routes, d, k, &self.by_neighbor) {
                    return Some(found);
                }
            }
        } else {
            self.frr = None;
        }
        self.refresh_routes(now);
        let routes = self.routes.as_mut()?;
        let d = routes.graph.index_of(dst)?;
        if let Some(hop) = primary_hop(routes, d, &self.by_neighbor) {
            return Some((hop, None));
        }
        backup_hop(routes, d, k, &self.by_neighbor)
    }

    /// The configuration.
    pub fn config(&self) -> &RouterConfig {
        &self.cfg
    }

    /// Up to `k` node-disjoint paths to `dst` over the current topology, cheapest set first,
    /// as node ID sequences starting with us.
    pub fn disjoint_paths(&mut self, now: Instant, dst: &NodeId, k: usize) -> Vec<Vec<NodeId>> {
        self.disjoint_paths_with_cost(now, dst, k)
            .into_iter()
            .map(|(p, _)| p)
            .collect()
    }

    /// [`Router::disjoint_paths`], each with its cost (the sum of its links' costs).
    pub fn disjoint_paths_with_cost(
        &mut self,
        now: Instant,
        dst: &NodeId,
        k: usize,
    ) -> Vec<(Vec<NodeId>, u64)> {
        self.refresh_routes(now);
        let Some(routes) = self.routes.as_ref() else {
            return Vec::new();
        };
        let Some(d) = routes.graph.index_of(dst) else {
            return Vec::new();
        };
        disjoint_paths(&routes.graph, routes.me, d, k)
            .into_iter()
            .map(|p| {
                let ids = p
                    .nodes
                    .iter()
                    .filter_map(|ix| routes.graph.id(*ix))
                    .collect();
                (ids, p.cost)
            })
            .collect()
    }

    /// Precomputes backups for `dsts` (the daemon calls this for destinations with traffic, so
    /// fast reroute needs no computation at failure time).
    pub fn prepare_backups(&mut self, now: Instant, dsts: &[NodeId]) {
        self.refresh_routes(now);
        let k = self.cfg.k_paths;
        if let Some(routes) = self.routes.as_mut() {
            for dst in dsts {
                if let Some(d) = routes.graph.index_of(dst)
                    && !routes.backups.contains_key(&d)
                {
                    let b = backup_path(&routes.graph, routes.me, &routes.spt, d, k);
                    routes.backups.insert(d, b);
                }
            }
        }
    }

    // ---- internals ------------------------------------------------------------------------

    fn send(&mut self, link: LinkId, msg: &RoutingMessage) {
        let bytes = msg.encode();
        self.stats.datagrams_sent += 1;
        self.stats.bytes_sent += bytes.len() as u64;
        self.transmits.push_back((link, bytes));
    }

    fn drop_link(&mut self, now: Instant, link: LinkId, cause: DownCause) {
        let Some(n) = self.links.remove(&link) else {
            return;
        };
        let neighbor = n.session.neighbor();
        if self.by_neighbor.get(&neighbor) == Some(&link) {
            self.by_neighbor.remove(&neighbor);
        }
        match cause {
            DownCause::Silent => self.stats.neighbors_down_silent += 1,
            DownCause::Local => self.stats.neighbors_down_local += 1,
        }
        // Fast reroute: keep deciding from the pre-failure table for a while (a second failure
        // during the hold keeps the first table, whose backups avoid the first failure).
        if self.frr.as_ref().is_none_or(|f| now >= f.until)
            && let Some(routes) = self.routes.take()
        {
            self.frr = Some(Frr {
                until: now + self.cfg.frr_hold,
                routes,
                failed: Vec::new(),
            });
            self.stats.fast_reroutes += 1;
        }
        if let Some(f) = self.frr.as_mut()
            && now < f.until
            && let Some(ix) = f.routes.graph.index_of(&neighbor)
            && !f.failed.contains(&ix)
        {
            f.failed.push(ix);
        }
        self.events.push_back(RouterEvent::NeighborDown {
            link,
            neighbor,
            cause,
        });
        self.originate_wanted = true;
        self.topology_changed(now);
    }

    fn topology_changed(&mut self, now: Instant) {
        if self.spf_due.is_none() {
            self.stats.topology_changes += 1;
            self.spf_due = Some(now + self.cfg.spf_delay);
        }
    }

    /// Decides whether a link's new measurements warrant a new advert:
    ///
    /// * at once: the class moved two steps or more, or to or from BAD;
    /// * damped (at most once per `change_holddown` per link): the cost moved by more than
    ///   `significant_cost_change` and `significant_cost_delta`;
    /// * otherwise (a one-step class change, a small cost change) the change waits for the next
    ///   advert (the periodic refresh, or any other change, carries every link's current cost
    ///   and class). Each advert costs one transmission per link of the mesh, so at 1,200
    ///   nodes a single one-step class change would cost more than a minute of a 1 % budget.
    fn check_significant(&mut self, now: Instant, link: LinkId) {
        if let Some(n) = self.links.get_mut(&link)
            && wants_advert(
                &self.cfg,
                n,
                now,
                self.restrictions.cost_factor(&n.session.neighbor()),
            )
        {
            self.originate_wanted = true;
        }
    }

    /// Sends what is due: our own advert, queued adverts within the rate limit, acks, routes.
    fn run(&mut self, now: Instant) {
        if self.originate_wanted
            && now >= self.next_originate_allowed
            && self.measurement_due(now).is_none()
        {
            self.originate(now);
        }
        if !self.work_pending {
            debug_assert!(
                self.links
                    .values()
                    .all(|n| n.queue.is_empty() && n.acks.is_empty())
            );
            return;
        }
        debug_assert!(self.floods_queued || self.links.values().all(|n| n.queue.is_empty()));
        if self.floods_queued {
            self.flush_floods(now);
            // Adverts held back by the rate limit stay queued.
            self.floods_queued = self.links.values().any(|n| !n.queue.is_empty());
        }
        debug_assert!(
            self.links
                .iter()
                .all(|(l, n)| n.acks.is_empty() || self.ack_links.contains(l))
        );
        for link in std::mem::take(&mut self.ack_links) {
            let Some(n) = self.links.get_mut(&link) else {
                continue;
            };
            let acks = std::mem::take(&mut n.acks);
            for chunk in acks.chunks(x0_wire::routing::MAX_ACKS) {
                self.stats.acks_sent += 1;
                self.send(link, &RoutingMessage::AdvertAck(chunk.to_vec()));
            }
        }
        self.work_pending = self.floods_queued;
    }

    /// While a link that came up has no RTT sample yet (for at most `detect_multiplier`
    /// probe intervals), our advert waits for it, so that one advert carries its real cost.
    fn measurement_due(&self, now: Instant) -> Option<Instant> {
        let wait = self.cfg.probe_interval * u32::from(self.cfg.detect_multiplier.max(1));
        self.links
            .values()
            .filter(|n| !n.session.quality().has_rtt())
            .map(|n| n.up_since + wait)
            .filter(|t| *t > now)
            .min()
    }

    fn originate(&mut self, now: Instant) {
        self.originate_wanted = false;
        self.next_originate_allowed = now + self.cfg.min_originate_interval;
        self.refresh_at = now + self.cfg.advert_refresh;
        let Some(seq) = self.seq.checked_add(1) else {
            // The sequence space is used up: nothing we could sign would supersede our last
            // advert. Refuse (never wrap), say so once, and keep routing on what we have.
            self.stats.own_seq_exhausted += 1;
            if !self.seq_exhausted {
                self.seq_exhausted = true;
                self.events.push_back(RouterEvent::SequenceExhausted);
            }
            return;
        };
        self.seq = seq;
        let mut links: Vec<AdvertisedLink> = Vec::with_capacity(self.links.len());
        for n in self.links.values_mut() {
            let neighbor = n.session.neighbor();
            let q = n.session.quality();
            let (cost, class) = if q.has_rtt() {
                (
                    scaled(q.cost(), self.restrictions.cost_factor(&neighbor)),
                    q.class(),
                )
            } else {
                (UNMEASURED_COST, QualityClass::Bad)
            };
            n.advertised_cost = cost;
            n.advertised_class = class;
            if self.restrictions.excluded.contains(&neighbor) {
                continue;
            }
            links.push(AdvertisedLink {
                neighbor,
                cost,
                class: class as u8,
            });
        }
        let stored = Self::make_advert(
            self.me,
            self.seq,
            self.cfg.advert_lifetime,
            links,
            self.auth.as_mut(),
        );
        self.stats.adverts_originated += 1;
        if let Offer::Installed {
            links_changed: true,
        } = self.lsdb.offer(Arc::new(stored), now)
        {
            self.topology_changed(now);
        }
        let seq = self.seq;
        let me = self.me;
        for n in self.links.values_mut() {
            schedule_send(n, me, seq, now);
        }
        self.work_pending = true;
        self.floods_queued = true;
    }

    /// An advert we already hold (or an older version): acknowledge it and, if older, send the
    /// neighbour ours.
    ///
    /// A copy of what we hold that crossed ours on the way (we had sent the neighbour this
    /// very version and it is not acknowledged yet) is not acknowledged explicitly: our copy
    /// acknowledges it implicitly when it arrives (OSPF's "duplicate treated as an implied
    /// acknowledgement", RFC 2328 § 13.5). If ours is lost, the neighbour retransmits and the
    /// retransmission, finding nothing pending here, is acknowledged. In a flood most copies
    /// a node receives are such crossings: this saves one datagram per copy.
    fn old_advert(&mut self, now: Instant, link: LinkId, origin: NodeId, seq: u64) {
        if let Some(n) = self.links.get_mut(&link) {
            let crossed = n
                .pending
                .get(&origin)
                .is_some_and(|p| p.seq == seq && p.backoff > 0);
            acknowledge(n, &origin, seq);
            if crossed {
                self.stats.acks_implied += 1;
            } else {
                if n.acks.is_empty() {
                    self.ack_links.push(link);
                }
                n.acks.push((origin, seq));
            }
        }
        self.old_advert_counted(now, link, origin, seq);
    }

    fn old_advert_counted(&mut self, now: Instant, link: LinkId, origin: NodeId, seq: u64) {
        match self.lsdb.seq_of(&origin) {
            Some(ours) if ours == seq => self.stats.duplicates += 1,
            Some(ours) => {
                // A stale version: count it and send the neighbour our newer one.
                self.stats.rejected_stale += 1;
                if let Some(n) = self.links.get_mut(&link) {
                    schedule_send(n, origin, ours, now);
                    self.floods_queued = true;
                    self.work_pending = true;
                }
            }
            None => {}
        }
    }

    fn on_advert(&mut self, now: Instant, link: LinkId, advert: Advert, body: AdvertBody) {
        self.stats.adverts_received += 1;
        let origin = body.origin;
        let seq = body.seq;
        if let Some(n) = self.links.get_mut(&link) {
            // Implicit ack: the neighbour already has this version.
            acknowledge(n, &origin, seq);
        }
        if origin == self.me {
            if self.on_own_advert(now, link, &advert, seq) {
                self.ack(link, origin, seq);
            }
            return;
        }
        if self.lsdb.seq_of(&origin).is_some_and(|ours| ours > seq) {
            self.ack(link, origin, seq);
            self.old_advert_counted(now, link, origin, seq);
            return;
        }
        if self.lsdb.get(&origin).is_none() && self.lsdb.len() >= self.cfg.max_origins {
            self.ack(link, origin, seq);
            self.stats.rejected_lsdb_full += 1;
            return;
        }
        if let Some(h) = self.held.get(&origin) {
            let held_seq = h.stored.body.seq;
            if held_seq > seq || (held_seq == seq && h.stored.advert == advert) {
                // We hold this version (or a newer one) back already: settled, no check.
                self.ack(link, origin, seq);
                self.stats.duplicates += 1;
                return;
            }
        }
        let Some(verdict) = self.verify_from(now, link, &origin, &advert) else {
            return; // over the sender's budget: it retransmits
        };
        // Acknowledge what is settled, so the sender stops retransmitting it.
        self.ack(link, origin, seq);
        match verdict {
            Verdict::Valid => {}
            Verdict::BadSignature => {
                self.stats.rejected_bad_signature += 1;
                return;
            }
            Verdict::UnknownOrigin => {
                self.stats.rejected_unknown_origin += 1;
                return;
            }
            Verdict::NotAdmitted => {
                self.stats.rejected_not_admitted += 1;
                return;
            }
            Verdict::Revoked => {
                self.stats.rejected_revoked += 1;
                return;
            }
        }
        let stored = match &self.interner {
            Some(i) => i.intern(advert, body),
            None => Arc::new(StoredAdvert::new(advert, body)),
        };
        if self.hold_back(now, link, &stored) {
            return;
        }
        let changed = match self.lsdb.offer(stored, now) {
            Offer::Installed { links_changed } => links_changed,
            Offer::Duplicate => {
                self.stats.duplicates += 1;
                return;
            }
            Offer::Older { ours } => {
                // Same number, losing content: the neighbour gets the winning copy.
                self.stats.rejected_stale += 1;
                if let Some(n) = self.links.get_mut(&link) {
                    schedule_send(n, origin, ours, now);
                    self.floods_queued = true;
                    self.work_pending = true;
                }
                return;
            }
        };
        self.stats.adverts_installed += 1;
        if changed {
            self.topology_changed(now);
        }
        for (l, n) in self.links.iter_mut() {
            if *l != link {
                schedule_send(n, origin, seq, now);
            }
        }
        self.floods_queued = true;
        self.work_pending = true;
    }

    /// The per-origin acceptance limit: whether `stored` (verified, newer than nothing we hold
    /// back) must wait before it replaces its origin's entry. Each origin has a token bucket
    /// (`advert_arrival_burst` tokens, one more per `min_advert_arrival`); installing a
    /// replacement takes a token. Without one, the advert is held (replacing an older held
    /// one) until the bucket has a token again, and counted. A held advert that `stored` does
    /// not supersede also settles it. An origin's first advert is never held.
    fn hold_back(&mut self, now: Instant, link: LinkId, stored: &Arc<StoredAdvert>) -> bool {
        let origin = stored.body.origin;
        let Some(cur) = self.lsdb.get(&origin) else {
            return false;
        };
        if !supersedes(stored, &cur.stored) {
            return false;
        }
        let release = match self.held.get(&origin) {
            Some(h) if !supersedes(stored, &h.stored) => {
                self.stats.rejected_stale += 1;
                return true;
            }
            Some(h) => h.release,
            None => match self.arrival_token(origin, now) {
                None => return false,
                Some(release) => release,
            },
        };
        self.drop_held(&origin);
        self.held_release.insert((release, origin));
        self.held.insert(
            origin,
            Held {
                stored: stored.clone(),
                from: link,
                release,
            },
        );
        self.stats.adverts_rate_limited += 1;
        true
    }

    /// Takes a token from `origin`'s acceptance bucket: `None` if there was one, otherwise
    /// when there will be.
    fn arrival_token(&mut self, origin: NodeId, now: Instant) -> Option<Instant> {
        let per = self.cfg.min_advert_arrival.as_secs_f64();
        if per <= 0.0 {
            return None;
        }
        let burst = f64::from(self.cfg.advert_arrival_burst.max(1));
        let b = self.arrivals.entry(origin).or_insert(Bucket {
            tokens: burst,
            refilled: now,
        });
        b.tokens = (b.tokens + now.saturating_since(b.refilled).as_secs_f64() / per).min(burst);
        b.refilled = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            return None;
        }
        let wait = Duration::from_secs_f64(((1.0 - b.tokens) * per).max(0.0));
        Some(now + wait + Duration::from_micros(1))
    }

    fn drop_held(&mut self, origin: &NodeId) {
        if let Some(h) = self.held.remove(origin) {
            self.held_release.remove(&(h.release, *origin));
        }
    }

    /// Installs and floods the held adverts whose time has come.
    fn release_held(&mut self, now: Instant) {
        while let Some(&(at, origin)) = self.held_release.first() {
            if at > now {
                break;
            }
            self.held_release.pop_first();
            let Some(h) = self.held.remove(&origin) else {
                continue;
            };
            // The token it waited for.
            let _ = self.arrival_token(origin, now);
            let seq = h.stored.body.seq;
            if let Offer::Installed { links_changed } = self.lsdb.offer(h.stored, now) {
                self.stats.adverts_installed += 1;
                if links_changed {
                    self.topology_changed(now);
                }
                for (l, n) in self.links.iter_mut() {
                    if *l != h.from {
                        schedule_send(n, origin, seq, now);
                    }
                }
                self.work_pending = true;
                self.floods_queued = true;
            }
        }
    }

    /// An advert claiming to be ours. A copy of what we hold, or older, is only acknowledged.
    /// A newer one (a higher number, or our current number with other contents) is ours from
    /// before a restart *if its signature verifies*: we jump past it, within the origination
    /// rate limit. Anything else is a forgery and changes nothing: without the check, a
    /// neighbour could make us re-sign and flood at will, or push our number to `u64::MAX`.
    ///
    /// Returns whether the advert is settled (to be acknowledged): false when verifying it was
    /// over the sender's budget.
    fn on_own_advert(&mut self, now: Instant, link: LinkId, advert: &Advert, seq: u64) -> bool {
        let newer = seq > self.seq
            || (seq == self.seq
                && self
                    .lsdb
                    .get(&self.me)
                    .is_some_and(|e| e.body().seq == seq && e.stored.advert != *advert));
        if !newer {
            return true;
        }
        let me = self.me;
        match self.verify_from(now, link, &me, advert) {
            None => return false,
            Some(Verdict::Valid) => {}
            Some(_) => {
                self.stats.rejected_own_forged += 1;
                return true;
            }
        }
        // Ours from before a restart: the next advert goes past it. `next_originate_allowed`
        // is left alone, so that replays cannot make us originate faster than
        // `min_originate_interval`.
        self.seq = self.seq.max(seq);
        self.originate_wanted = true;
        self.stats.own_seq_recovered += 1;
        true
    }

    /// Verifies `advert` by `origin`, received on `link`, within that neighbour's budget of
    /// verifications: `None` (and counted as deferred) when the budget is spent. A forgery (a
    /// bad signature, or an origin the mesh CA never admitted) costs the neighbour
    /// `bad_signature_penalty` more tokens.
    fn verify_from(
        &mut self,
        now: Instant,
        link: LinkId,
        origin: &NodeId,
        advert: &Advert,
    ) -> Option<Verdict> {
        let n = self.links.get_mut(&link)?;
        let rate = f64::from(self.cfg.verify_rate_per_s);
        let burst = f64::from(self.cfg.verify_burst);
        let elapsed = now.saturating_since(n.verify_refilled).as_secs_f64();
        n.verify_tokens = (n.verify_tokens + elapsed * rate).min(burst);
        n.verify_refilled = now;
        if n.verify_tokens < 1.0 {
            self.stats.adverts_deferred += 1;
            return None;
        }
        n.verify_tokens -= 1.0;
        self.stats.signature_verifications += 1;
        let verdict = self
            .auth
            .verify(origin, &advert.body, &advert.origin_key, &advert.signature);
        if matches!(verdict, Verdict::BadSignature | Verdict::NotAdmitted) {
            self.penalise(link);
        }
        Some(verdict)
    }

    /// Charges a neighbour that sent a forgery: its verification budget shrinks (down to
    /// `-verify_burst`, so that its adverts are ignored for a while).
    fn penalise(&mut self, link: LinkId) {
        if let Some(n) = self.links.get_mut(&link) {
            let floor = -f64::from(self.cfg.verify_burst);
            n.verify_tokens =
                (n.verify_tokens - f64::from(self.cfg.bad_signature_penalty)).max(floor);
            self.stats.neighbor_penalties += 1;
        }
    }

    /// Queues an acknowledgement of `(origin, seq)` to the neighbour on `link`.
    fn ack(&mut self, link: LinkId, origin: NodeId, seq: u64) {
        if let Some(n) = self.links.get_mut(&link) {
            if n.acks.is_empty() {
                self.ack_links.push(link);
            }
            n.acks.push((origin, seq));
        }
    }

    fn flush_floods(&mut self, now: Instant) {
        let rate = f64::from(self.cfg.flood_rate_per_s);
        let rto = self.cfg.retransmit_interval;
        let mut out: Vec<(LinkId, Arc<StoredAdvert>)> = Vec::new();
        for (link, n) in self.links.iter_mut() {
            let elapsed = now.saturating_since(n.refilled).as_secs_f64();
            n.tokens = (n.tokens + elapsed * rate).min(rate);
            n.refilled = now;
            while n.tokens >= 1.0 {
                let Some(origin) = n.queue.pop_front() else {
                    break;
                };
                let Some(p) = n.pending.get_mut(&origin) else {
                    continue; // acknowledged meanwhile
                };
                if !p.queued {
                    continue; // a stale entry: acknowledged and queued again meanwhile
                }
                p.queued = false;
                let Some(entry) = self.lsdb.get(&origin) else {
                    n.pending.remove(&origin);
                    continue; // expired meanwhile
                };
                if entry.body().seq != p.seq {
                    p.seq = entry.body().seq;
                }
                if p.backoff == 0 {
                    // First transmission: arm the retransmission timer.
                    p.backoff = 1;
                    p.due = now + rto;
                    n.schedule.insert((p.due, origin));
                }
                n.tokens -= 1.0;
                out.push((*link, entry.stored.clone()));
            }
        }
        for (link, stored) in out {
            self.stats.adverts_sent += 1;
            self.stats.datagrams_sent += 1;
            self.stats.bytes_sent += stored.datagram.len() as u64;
            self.transmits.push_back((link, stored.datagram.clone()));
        }
    }

    fn refresh_routes(&mut self, now: Instant) {
        if self.routes.is_none() || self.spf_due.is_some_and(|t| now >= t) {
            self.recompute_routes();
        }
    }

    fn recompute_routes(&mut self) {
        self.spf_due = None;
        let mut graph = Graph::new();
        let me = graph.add_node(self.me);
        // Our own edges: live sessions to neighbours whose advert lists us (two-way check).
        for n in self.links.values() {
            let nb = n.session.neighbor();
            if self.restrictions.excluded.contains(&nb) {
                continue;
            }
            let two_way = self.lsdb.get(&nb).is_some_and(|e| {
                e.body()
                    .links
                    .binary_search_by_key(&self.me, |l| l.neighbor)
                    .is_ok()
            });
            if two_way {
                let q = n.session.quality();
                let cost = if q.has_rtt() {
                    scaled(q.cost(), self.restrictions.cost_factor(&nb))
                } else {
                    n.advertised_cost.max(1)
                };
                let ix = graph.add_node(nb);
                graph.add_edge(me, ix, cost);
            }
        }
        for (origin, entry) in self.lsdb.iter() {
            if *origin == self.me {
                continue;
            }
            let from = graph.add_node(*origin);
            if self.restrictions.quarantined.contains(origin) {
                // A sink: reachable over the links others advertise to it, never relayed
                // through.
                continue;
            }
            for l in &entry.body().links {
                let back = if l.neighbor == self.me {
                    self.by_neighbor.contains_key(origin)
                } else {
                    self.lsdb.get(&l.neighbor).is_some_and(|e| {
                        e.body()
                            .links
                            .binary_search_by_key(origin, |x| x.neighbor)
                            .is_ok()
                    })
                };
                if back {
                    let to = graph.add_node(l.neighbor);
                    graph.add_edge(from, to, l.cost);
                }
            }
        }
        let spt = dijkstra(&graph, me);
        self.stats.spf_runs += 1;
        self.routes = Some(RouteCache {
            graph,
            me,
            spt,
            backups: HashMap::new(),
        });
        self.events.push_back(RouterEvent::RoutesRecomputed);
    }
}

/// [`Router::check_significant`] for one link: whether its new measurements warrant an advert.
fn wants_advert(cfg: &RouterConfig, n: &mut Neighbor, now: Instant, factor: u32) -> bool {
    let q = n.session.quality();
    if !q.has_rtt() {
        return false;
    }
    let (cost, class) = (scaled(q.cost(), factor), q.class());
    if n.advertised_cost >= UNMEASURED_COST {
        // First measurement of a new link: advertise its real cost.
        return true;
    }
    let (old_class, new_class) = (n.advertised_class as i32, class as i32);
    let steps = (new_class - old_class).abs();
    let bad = class == QualityClass::Bad || n.advertised_class == QualityClass::Bad;
    // A fall of two classes from what we advertised must be significant: one-step moves on
    // noise (a 64-probe window cannot tell 1 % loss from 3 %) add up to two steps, and each
    // advert is a flood over the whole mesh. The loss floor must put the link that low too.
    let significant = new_class < old_class || {
        let sure = QualityClass::classify(n.session.loss_floor(), q.rtt_ms());
        sure as i32 - old_class >= 2
    };
    if (steps >= 2 && significant) || (steps == 1 && bad) {
        return true;
    }
    let delta = cost.abs_diff(n.advertised_cost);
    let big_cost = delta > cfg.significant_cost_delta
        && f64::from(delta) > cfg.significant_cost_change * f64::from(n.advertised_cost.max(1));
    if big_cost && now >= n.cost_change_allowed {
        n.cost_change_allowed = now + cfg.change_holddown;
        return true;
    }
    false
}

fn new_neighbor(cfg: &RouterConfig, neighbor: NodeId, now: Instant) -> Neighbor {
    Neighbor {
        session: Session::new(neighbor, now, cfg),
        pending: BTreeMap::new(),
        schedule: BTreeSet::new(),
        queue: VecDeque::new(),
        acks: Vec::new(),
        tokens: f64::from(cfg.flood_rate_per_s),
        refilled: now,
        verify_tokens: f64::from(cfg.verify_burst),
        verify_refilled: now,
        advertised_cost: UNMEASURED_COST,
        advertised_class: QualityClass::Bad,
        cost_change_allowed: now,
        up_since: now,
    }
}

fn schedule_send(n: &mut Neighbor, origin: NodeId, seq: u64, now: Instant) {
    let p = n.pending.entry(origin).or_insert(Pending {
        seq,
        due: now,
        backoff: 0,
        queued: false,
    });
    p.seq = seq;
    if p.backoff != 0 {
        // Newer version replaces one in flight: send it at once (its retransmission
        // timer entry no longer matches and is skipped).
        p.backoff = 0;
        p.due = now;
    }
    if !p.queued {
        p.queued = true;
        n.queue.push_back(origin);
    }
}

fn acknowledge(n: &mut Neighbor, origin: &NodeId, seq: u64) {
    if n.pending.get(origin).is_some_and(|p| seq >= p.seq) {
        n.pending.remove(origin);
        // The timer entry stays behind; once stale entries outnumber the live ones, sweep
        // them (amortised: a sweep at least halves the set). Without the sweep a flood left
        // ~300 ms of sent adverts' entries behind (+400 MB in the 1,200-node simulation).
        if n.schedule.len() > 2 * n.pending.len() + 64 {
            let pending = &n.pending;
            n.schedule.retain(|(at, o)| {
                pending
                    .get(o)
                    .is_some_and(|p| p.backoff != 0 && p.due == *at)
            });
        }
    }
}

/// The primary next hop of `d` in `routes`, if its link is up.
fn primary_hop(
    routes: &RouteCache,
    d: NodeIx,
    by_neighbor: &BTreeMap<NodeId, LinkId>,
) -> Option<NextHop> {
    let first = *routes.spt.first_hop.get(d as usize)?;
    if first == NO_NODE {
        return None;
    }
    let neighbor = routes.graph.id(first)?;
    let link = *by_neighbor.get(&neighbor)?;
    Some(NextHop {
        link,
        neighbor,
        via_backup: false,
    })
}

/// The backup path of `d` in `routes` (computed on first use), if its first link is up.
fn backup_hop(
    routes: &mut RouteCache,
    d: NodeIx,
    k: usize,
    by_neighbor: &BTreeMap<NodeId, LinkId>,
) -> Option<(NextHop, Option<Vec<NodeId>>)> {
    let (graph, me, spt) = (&routes.graph, routes.me, &routes.spt);
    let path = routes
        .backups
        .entry(d)
        .or_insert_with_key(|&d| backup_path(graph, me, spt, d, k))
        .as_ref()?;
    let neighbor = graph.id(*path.get(1)?)?;
    let link = *by_neighbor.get(&neighbor)?;
    let ids = path.iter().filter_map(|ix| graph.id(*ix)).collect();
    Some((
        NextHop {
            link,
            neighbor,
            via_backup: true,
        },
        Some(ids),
    ))
}

/// The cheapest path to `d` among the k node-disjoint paths that avoids the primary path's
/// intermediate nodes (so it survives the failure of the primary's first link or next node).
fn backup_path(
    graph: &Graph,
    me: NodeIx,
    spt: &ShortestPathTree,
    d: NodeIx,
    k: usize,
) -> Option<Vec<NodeIx>> {
    let primary = spt.path_to(d).unwrap_or_default();
    let inner: &[NodeIx] = if primary.len() > 2 {
        &primary[1..primary.len() - 1]
    } else {
        &[]
    };
    disjoint_paths(graph, me, d, k.max(2))
        .into_iter()
        .map(|p| p.nodes)
        .find(|nodes| {
            nodes != &primary
                && !nodes[1..nodes.len().saturating_sub(1)]
                    .iter()
                    .any(|n| inner.contains(n))
        })
}
