//! The self-healing loop in the daemon: [`x0_heal::Healer`] driven on a thread of its own.
//!
//! Who owns what:
//!
//! * The **heal thread** owns the [`Healer`] and the knowledge base ([`KnowledgeBase`], its own
//!   SQLite connection to the state directory's `state.db`; every write is a synchronous
//!   transaction with an fsync, which is why this is a thread and not an async task). It wakes
//!   at the sooner of the next sampling round (every [`Healer::sampling_interval`]) and the
//!   loop's own deadline ([`Healer::poll_timeout`]), or at once for a routing change.
//! * A **forwarding task** passes the routing task's neighbour up/down events (and hints that
//!   the topology changed) into the thread's channel, so that a link going down is a sample at
//!   once, not at the next round.
//! * A **lag probe** task measures how late the async runtime's timer ticks fire (the
//!   `loop_lag_ms` of the process sample: the latest tick's delay; and `loop_stall_ms`: the
//!   longest since the previous round, which explains RTTs inflated by a stall).
//! * A **verifier** thread checks the whole audit chain once at start (read-only connection)
//!   and publishes the verdict; nothing is ever rewritten.
//! * [`HealHandle`] (shared with the API and `/metrics`) holds what the thread publishes after
//!   every step: health, the latest incidents and actions as stored, the audit head, counters.
//!
//! What the loop is fed, each round: one [`Sample::Link`] per neighbour from the routing
//! core's sessions (RTT, windowed loss, probe intervals missed, class, bytes received from the
//! neighbour: its link's QUIC connection — control traffic — plus the authenticated data-plane
//! frames it sent us), [`Sample::Drops`] from the data plane's counters, [`Sample::Kernel`]
//! from eBPF when attached, [`Sample::Process`] from `/proc/self` and the lag probe; the
//! topology from the link-state database (links both ends advertise, plus our own live
//! sessions, so that a link we excluded — and withdrew from our advert — still counts for the
//! "never partition" check); and [`Sample::Probe`] from the end-to-end prober
//! ([`x0_heal::Prober`], run on this thread): probes along each sampled destination's
//! node-disjoint paths, sent and answered by the data plane (`crate::dataplane`'s probe
//! module), which black-hole detection and the delivery check need.
//!
//! **Link identity.** The routing core numbers a link anew every time it is set up; the loop
//! sees one stable link per neighbour (its number given here, on first sight), so that a
//! restarted link is the same link to it, and a neighbour that is gone does not leave a dead
//! link behind each time it came and went. A neighbour whose link stays down for
//! [`FORGET_DOWN_AFTER`] is forgotten ([`Healer::forget_link`]).
//!
//! Actions are carried out by [`LocalBackend`] (the [`Executor`] of this node).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use arc_swap::ArcSwap;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::registry::Unit;
use tracing::{debug, error, info, warn};
use x0_heal::{
    Action, ActionKind, ActionResult, Cause, DownCause, DropCounters, Executor, Healer,
    HealthState, Instant, KernelCounters, KnowledgeBase, LinkRef, LinkSample, LinkState, Mode,
    ProbeSend, ProbeTarget, Prober, Problem, ProcessStats, Record, Resolution, Sample, Topology,
};
use x0_identity::{NodeId, NodeKeys};

use crate::api::{ActionInfo, AuditHeadInfo, IncidentInfo};
use crate::daemon::lock;
use crate::dataplane::DataPlane;
use crate::ebpf::Ebpf;
use crate::metrics::{encode_counter, encode_counters, encode_gauge, encode_gauges};
use crate::routing::{RouteTable, Routing, RoutingChange, RoutingCommand, RoutingStatus};

/// Incidents and actions kept for the API (read back from the knowledge base after a write).
pub(crate) const API_ROWS: usize = 200;
/// A neighbour whose link stays down this long stops being sampled and is forgotten.
pub(crate) const FORGET_DOWN_AFTER: Duration = Duration::from_secs(600);
/// Advertised quality class from which a link counts as impaired (3 = POOR, 4 = BAD).
const IMPAIRED_CLASS: u8 = 3;
/// The prober's targets are rebuilt at least this often (which destinations we send data to
/// changes without routing changing).
const PROBE_TARGETS_EVERY: Duration = Duration::from_secs(1);
/// How often the lag probe ticks: often enough that a stall of the runtime longer than this
/// shows (nearly) whole in the longest delay.
const LAG_TICK: Duration = Duration::from_millis(10);

/// What the heal thread publishes after every step.
#[derive(Debug, Clone, Default)]
pub(crate) struct HealView {
    /// The thread runs.
    pub running: bool,
    /// Act or observe.
    pub mode: Option<Mode>,
    /// Health state.
    pub state: Option<HealthState>,
    /// Its reasons.
    pub reasons: Vec<String>,
    /// Current sampling interval.
    pub sampling_interval: Duration,
    /// Open incidents.
    pub open_incidents: usize,
    /// The latest incidents as stored, newest first.
    pub incidents: Arc<Vec<IncidentInfo>>,
    /// The latest actions as stored, newest first.
    pub actions: Arc<Vec<ActionInfo>>,
    /// Audit entries, and the last one's hash.
    pub audit_entries: u64,
    /// The last entry's `(seq, hash)`.
    pub audit_head: Option<(u64, [u8; 32])>,
    /// Times an action was held back because the action-rate bucket was empty.
    pub rate_limited: u64,
    /// Link RTT symptoms a stall of this node's runtime explained (left out).
    pub explained_by_stall: u64,
}

/// Counters for `/metrics`.
#[derive(Debug, Clone, Default)]
struct HealCounters {
    /// Incidents opened, by problem.
    incidents: BTreeMap<&'static str, u64>,
    /// Actions planned, by kind and mode.
    actions: BTreeMap<(&'static str, &'static str), u64>,
    /// Action results, by kind and result.
    results: BTreeMap<(&'static str, &'static str), u64>,
    /// Alerts raised.
    alerts: u64,
    /// Knowledge-base writes that failed.
    write_failures: u64,
}

/// The loop's state as the API and `/metrics` see it.
pub(crate) struct HealHandle {
    enabled: bool,
    error: Mutex<Option<String>>,
    view: ArcSwap<HealView>,
    audit_check: Mutex<String>,
    counters: Mutex<HealCounters>,
}

impl fmt::Debug for HealHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HealHandle")
            .field("enabled", &self.enabled)
            .finish_non_exhaustive()
    }
}

impl HealHandle {
    fn new(enabled: bool) -> Self {
        Self {
            enabled,
            error: Mutex::new(None),
            view: ArcSwap::from_pointee(HealView::default()),
            audit_check: Mutex::new("running".into()),
            counters: Mutex::new(HealCounters::default()),
        }
    }

    /// A handle for a daemon whose loop is off (`heal.enabled = false`).
    pub(crate) fn disabled() -> Arc<Self> {
        Arc::new(Self::new(false))
    }

    /// The loop is configured on.
    pub(crate) fn enabled(&self) -> bool {
        self.enabled
    }

    /// Why the loop does not run, if it does not.
    pub(crate) fn error(&self) -> Option<String> {
        lock(&self.error).clone()
    }

    /// What the thread published last.
    pub(crate) fn view(&self) -> Arc<HealView> {
        self.view.load_full()
    }

    /// The audit log's head and the verdict of the check at start.
    pub(crate) fn audit(&self) -> Option<AuditHeadInfo> {
        let view = self.view();
        view.running.then(|| AuditHeadInfo {
            entries: view.audit_entries,
            head_hash: view.audit_head.map(|(_, h)| hex::encode(h)),
            check_at_start: lock(&self.audit_check).clone(),
        })
    }
}

/// A neighbour's routing event, or a stop.
#[derive(Debug)]
enum HealInput {
    NeighborUp(NodeId),
    NeighborDown(NodeId, DownCause),
    TopologyHint,
    Stop,
}

/// What the daemon hands the loop to read and to act through.
pub(crate) struct HealDeps {
    /// The routing task (sessions, topology, commands).
    pub routing: Routing,
    /// The data plane (drop counters, link rekeys).
    pub dataplane: Arc<DataPlane>,
    /// eBPF telemetry, when attached.
    pub ebpf: Option<Arc<Ebpf>>,
    /// Bytes received so far on each neighbour's live link (QUIC connection statistics:
    /// control traffic; the loop adds the data plane's per-neighbour frame bytes).
    pub rx_bytes: Box<dyn Fn() -> HashMap<NodeId, u64> + Send>,
    /// Asks the dialler of a neighbour to dial it now; false if no dialler of ours dials it.
    pub redial: Box<dyn Fn(NodeId) -> bool + Send>,
}

impl fmt::Debug for HealDeps {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HealDeps").finish_non_exhaustive()
    }
}

/// The loop, opened and restored at start, not yet running.
pub(crate) struct Prepared {
    healer: Healer,
    kb: KnowledgeBase,
    keys: Arc<NodeKeys>,
    clock: std::time::Instant,
    handle: Arc<HealHandle>,
    db: PathBuf,
}

impl fmt::Debug for Prepared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Prepared")
            .field("db", &self.db)
            .finish_non_exhaustive()
    }
}

/// Wall-clock time, Unix milliseconds.
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Opens the knowledge base in `state_dir`, builds the loop and restores what it learned
/// before. On failure the daemon runs without the loop (the handle says why): a damaged
/// knowledge base is reported, never repaired or replaced.
pub(crate) fn prepare(
    cfg: &x0_heal::HealConfig,
    state_dir: &Path,
    keys: Arc<NodeKeys>,
) -> (Arc<HealHandle>, Option<Prepared>) {
    let handle = Arc::new(HealHandle::new(true));
    let db = state_dir.join(x0_identity::store::DB_FILE);
    match open(cfg, &db, keys, handle.clone()) {
        Ok(p) => (handle, Some(p)),
        Err(e) => {
            error!(
                "self-healing is off: {e}; the daemon runs without it (x0t_heal_enabled 0, \
                 /v1/health says why)"
            );
            *lock(&handle.error) = Some(e);
            (handle, None)
        }
    }
}

fn open(
    cfg: &x0_heal::HealConfig,
    db: &Path,
    keys: Arc<NodeKeys>,
    handle: Arc<HealHandle>,
) -> Result<Prepared, String> {
    let mut kb = KnowledgeBase::open(db).map_err(|e| e.to_string())?;
    let clock = std::time::Instant::now();
    let mut healer =
        Healer::new(cfg.clone(), keys.node_id(), Instant::ZERO).map_err(|e| e.to_string())?;
    let snapshot = kb
        .snapshot(unix_ms(), Duration::from_millis(cfg.plan.offence_forget_ms))
        .map_err(|e| e.to_string())?;
    healer.restore(&snapshot);
    let recorded = kb.recorded_mode().map_err(|e| e.to_string())?;
    if recorded.as_deref() != Some(cfg.mode.as_str()) {
        // The mode the loop runs in is an audited fact; so is every change of it.
        kb.persist(&[Record::ModeChanged { mode: cfg.mode }], &keys, unix_ms())
            .map_err(|e| e.to_string())?;
    }
    info!(
        mode = cfg.mode.as_str(),
        db = %db.display(),
        next_incident = snapshot.next_incident_id,
        next_action = snapshot.next_action_id,
        baselines = snapshot.baselines.len(),
        offences = snapshot.offences.len(),
        "self-healing loop restored from its knowledge base"
    );
    Ok(Prepared {
        healer,
        kb,
        keys,
        clock,
        handle,
        db: db.to_owned(),
    })
}

/// The running loop: its input channel and thread.
#[derive(Debug)]
pub(crate) struct Running {
    tx: mpsc::Sender<HealInput>,
    thread: JoinHandle<()>,
}

impl Running {
    /// Stops the thread after it stored what it holds; waits for it on a blocking thread.
    pub(crate) async fn stop(self) {
        let _ = self.tx.send(HealInput::Stop);
        let thread = self.thread;
        let _ = tokio::time::timeout(
            Duration::from_secs(3),
            tokio::task::spawn_blocking(move || thread.join()),
        )
        .await;
    }
}

impl Prepared {
    /// Starts the heal thread and its helper tasks (call inside the runtime).
    pub(crate) fn start(self, deps: HealDeps) -> Result<Running, String> {
        let (tx, rx) = mpsc::channel();
        spawn_forwarder(deps.routing.subscribe(), tx.clone());
        let lag = Arc::new(RuntimeLag::default());
        tokio::spawn(lag_probe(lag.clone()));
        spawn_verifier(self.db.clone(), self.keys.clone(), self.handle.clone());
        let cores = std::thread::available_parallelism()
            .map(|n| u32::try_from(n.get()).unwrap_or(1))
            .unwrap_or(1);
        let now = Instant::from_micros(
            u64::try_from(self.clock.elapsed().as_micros()).unwrap_or(u64::MAX),
        );
        let probe_cfg = self.healer.config().probe.clone();
        let prober = probe_cfg.enabled.then(|| Prober::new(probe_cfg, now));
        let mut heal = HealLoop {
            prober,
            probe_table: None,
            paths_wanted: BTreeSet::new(),
            healer: self.healer,
            kb: self.kb,
            keys: self.keys,
            clock: self.clock,
            handle: self.handle,
            deps,
            rx,
            neighbours: BTreeMap::new(),
            link_ids: HashMap::new(),
            topology_key: None,
            lag,
            cores,
        };
        // Published before the API can be asked: the loop runs from here on.
        heal.publish(true);
        let thread = std::thread::Builder::new()
            .name("x0t-heal".into())
            .spawn(move || heal.run())
            .map_err(|e| format!("cannot start the self-healing thread: {e}"))?;
        Ok(Running { tx, thread })
    }
}

fn spawn_forwarder(
    mut changes: tokio::sync::broadcast::Receiver<RoutingChange>,
    tx: mpsc::Sender<HealInput>,
) {
    tokio::spawn(async move {
        loop {
            let input = match changes.recv().await {
                Ok(RoutingChange::NeighborUp { peer }) => HealInput::NeighborUp(peer),
                Ok(RoutingChange::NeighborDown { peer, cause }) => HealInput::NeighborDown(
                    peer,
                    if cause == "silent" {
                        DownCause::Silent
                    } else {
                        DownCause::Local
                    },
                ),
                Ok(
                    RoutingChange::NodeAppeared { .. }
                    | RoutingChange::NodeLeft { .. }
                    | RoutingChange::RoutesChanged { .. },
                ) => HealInput::TopologyHint,
                Ok(RoutingChange::QualityChanged { .. }) => continue,
                // Missed events: the next sampling round reads the state itself.
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => HealInput::TopologyHint,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            };
            if tx.send(input).is_err() {
                return;
            }
        }
    });
}

/// How late the runtime's timer ticks fire, µs: the latest tick's delay, and the longest
/// since it was last read (a stall).
#[derive(Debug, Default)]
struct RuntimeLag {
    latest: AtomicU64,
    longest: AtomicU64,
}

impl RuntimeLag {
    fn record(&self, late: Duration) {
        let us = u64::try_from(late.as_micros()).unwrap_or(u64::MAX);
        self.latest.store(us, Ordering::Relaxed);
        self.longest.fetch_max(us, Ordering::Relaxed);
    }

    fn latest_ms(&self) -> f64 {
        self.latest.load(Ordering::Relaxed) as f64 / 1e3
    }

    /// The longest delay since the previous call, ms.
    fn take_longest_ms(&self) -> f64 {
        self.longest.swap(0, Ordering::Relaxed) as f64 / 1e3
    }
}

/// Measures how late the runtime's timer ticks fire.
async fn lag_probe(lag: Arc<RuntimeLag>) {
    let mut tick = tokio::time::interval(LAG_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let scheduled = tick.tick().await;
        lag.record(tokio::time::Instant::now().saturating_duration_since(scheduled));
    }
}

/// Checks the whole audit chain once, on a read-only connection of its own.
fn spawn_verifier(db: PathBuf, keys: Arc<NodeKeys>, handle: Arc<HealHandle>) {
    let run = move || {
        let verdict = match KnowledgeBase::open_read_only(&db) {
            Ok(kb) => match kb.audit().verify(keys.mldsa_public_key()) {
                Ok(v) => {
                    info!(entries = v.entries, "audit log verified");
                    "ok".to_owned()
                }
                Err(e) => {
                    error!(
                        "the audit log does not verify: {e}; it is left as it is (`x0t audit \
                         verify` names the first bad entry)"
                    );
                    e.to_string()
                }
            },
            Err(e) => {
                error!("cannot open the knowledge base to verify the audit log: {e}");
                e.to_string()
            }
        };
        *lock(&handle.audit_check) = verdict;
    };
    if let Err(e) = std::thread::Builder::new()
        .name("x0t-audit".into())
        .spawn(run)
    {
        warn!("cannot start the audit check: {e}");
    }
}

/// One neighbour as the loop sees it.
#[derive(Debug, Clone)]
struct Neighbour {
    link: LinkRef,
    /// `None` while up; the cause and since when while down.
    down: Option<(DownCause, std::time::Instant)>,
}

struct HealLoop {
    healer: Healer,
    kb: KnowledgeBase,
    keys: Arc<NodeKeys>,
    clock: std::time::Instant,
    handle: Arc<HealHandle>,
    deps: HealDeps,
    rx: mpsc::Receiver<HealInput>,
    neighbours: BTreeMap<NodeId, Neighbour>,
    /// The loop's stable link number per neighbour.
    link_ids: HashMap<NodeId, u64>,
    /// What the topology was last built from: the LSDB snapshot and our live sessions.
    topology_key: Option<(usize, BTreeSet<NodeId>)>,
    lag: Arc<RuntimeLag>,
    cores: u32,
    /// The end-to-end prober (`heal.probe.enabled`).
    prober: Option<Prober>,
    /// The routing table the prober's targets were built from, and when.
    probe_table: Option<(Arc<RouteTable>, Instant)>,
    /// Destinations whose disjoint paths are asked of the routing task (the prober's sample).
    paths_wanted: BTreeSet<NodeId>,
}

impl HealLoop {
    fn now(&self) -> Instant {
        Instant::from_micros(u64::try_from(self.clock.elapsed().as_micros()).unwrap_or(u64::MAX))
    }

    fn run(&mut self) {
        let mut next_sample = self.now();
        loop {
            let now = self.now();
            let mut wake = next_sample.min(self.healer.poll_timeout());
            if let Some(p) = &self.prober {
                wake = wake.min(p.poll_timeout());
            }
            let input = match self.rx.recv_timeout(wake.saturating_since(now)) {
                Ok(HealInput::Stop) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                    self.flush();
                    info!("self-healing loop stopped");
                    return;
                }
                Ok(i) => Some(i),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
            };
            let now = self.now();
            match input {
                Some(HealInput::NeighborUp(peer)) => self.neighbour_up(now, peer),
                Some(HealInput::NeighborDown(peer, cause)) => self.neighbour_down(now, peer, cause),
                Some(HealInput::TopologyHint) => {
                    let status = self.deps.routing.status();
                    self.sync_topology(now, &status);
                }
                Some(HealInput::Stop) | None => {}
            }
            if now >= next_sample {
                self.sample_round(now);
                next_sample = now + self.healer.sampling_interval();
            }
            self.probe(now);
            if now >= self.healer.poll_timeout() {
                self.healer.handle_timeout(now);
            }
            // Decisions are on disk (and in the log) before they are carried out.
            self.flush();
            self.execute(now);
            self.flush();
        }
    }

    fn link_of(&mut self, peer: NodeId) -> LinkRef {
        let next = self.link_ids.len() as u64 + 1;
        let id = *self.link_ids.entry(peer).or_insert(next);
        LinkRef { id, neighbor: peer }
    }

    fn neighbour_up(&mut self, now: Instant, peer: NodeId) {
        let link = self.link_of(peer);
        self.neighbours.insert(peer, Neighbour { link, down: None });
        let status = self.deps.routing.status();
        let sample = match status.sessions.iter().find(|s| s.peer == peer) {
            Some(s) => self.link_sample(link, s, None),
            None => LinkSample::up(link),
        };
        self.healer.handle_sample(now, Sample::Link(sample));
        self.sync_topology(now, &status);
    }

    fn neighbour_down(&mut self, now: Instant, peer: NodeId, cause: DownCause) {
        let link = self.link_of(peer);
        let since = std::time::Instant::now();
        self.neighbours.insert(
            peer,
            Neighbour {
                link,
                down: Some((cause, since)),
            },
        );
        self.healer
            .handle_sample(now, Sample::Link(LinkSample::down(link, cause)));
        let status = self.deps.routing.status();
        self.sync_topology(now, &status);
    }

    fn link_sample(
        &self,
        link: LinkRef,
        s: &crate::routing::SessionStatus,
        rx_bytes: Option<u64>,
    ) -> LinkSample {
        LinkSample {
            link,
            state: LinkState::Up,
            rtt_ms: s.rtt.map(|d| d.as_secs_f64() * 1e3),
            loss: Some(s.loss),
            probe_misses: s.missed,
            class: Some(s.class),
            rx_bytes,
        }
    }

    /// One round of samples: every neighbour, the data plane, eBPF, the process.
    fn sample_round(&mut self, now: Instant) {
        // One batch: the loop judges the round whole (links degraded together point at this
        // node; a stall of this node explains RTTs measured meanwhile).
        let mut round = Vec::new();
        let status = self.deps.routing.status();
        let control = (self.deps.rx_bytes)();
        let counters = self.deps.dataplane.counters();
        // Control plus data: the sum falls when a link is set up anew (its QUIC counter starts
        // again), which the monitor takes as a counter reset.
        let rx = |peer: &NodeId| {
            control
                .get(peer)
                .map(|c| c.saturating_add(counters.rx_link_bytes.get(peer).copied().unwrap_or(0)))
        };
        let mut live = BTreeSet::new();
        for s in &status.sessions {
            live.insert(s.peer);
            let link = self.link_of(s.peer);
            self.neighbours
                .insert(s.peer, Neighbour { link, down: None });
            let sample = self.link_sample(link, s, rx(&s.peer));
            round.push(Sample::Link(sample));
        }
        let mut forget = Vec::new();
        for (peer, n) in &mut self.neighbours {
            if live.contains(peer) {
                continue;
            }
            // Down (perhaps without our having seen the event): keep saying so, as the routing
            // core would, until it is back or forgotten.
            let (cause, since) = *n
                .down
                .get_or_insert((DownCause::Local, std::time::Instant::now()));
            if since.elapsed() >= FORGET_DOWN_AFTER {
                forget.push(*peer);
                continue;
            }
            round.push(Sample::Link(LinkSample::down(n.link, cause)));
        }
        // Node-wide drops are evidence about this node only for the reasons that measure it.
        round.push(drops_sample(&counters.drops));
        if let Some(k) = self.deps.ebpf.as_ref().and_then(|e| e.sample()) {
            round.push(Sample::Kernel(KernelCounters {
                drops: k.drops_total(),
                retransmits: k.tcp_retransmits_total(),
            }));
        }
        if let Ok(p) = crate::metrics::ProcessStats::read(None) {
            round.push(Sample::Process(ProcessStats {
                cpu_time_ms: (p.cpu_seconds * 1e3) as u64,
                cores: self.cores,
                rss_bytes: p.resident_bytes,
                loop_lag_ms: Some(self.lag.latest_ms()),
                loop_stall_ms: Some(self.lag.take_longest_ms()),
            }));
        }
        self.healer.handle_samples(now, round);
        for peer in forget {
            if let Some(n) = self.neighbours.remove(&peer) {
                info!(peer = %peer, "self-healing forgets a neighbour whose link stayed down");
                self.healer.forget_link(now, n.link.id);
            }
        }
        self.sync_topology(now, &status);
    }

    /// Runs the end-to-end prober: new targets when routing changed (or every
    /// [`PROBE_TARGETS_EVERY`], for the destinations we send data to), answers collected, the
    /// round sent when due, results fed to the loop.
    fn probe(&mut self, now: Instant) {
        let Some(prober) = self.prober.as_mut() else {
            return;
        };
        let table = self.deps.routing.table();
        if self.probe_table.as_ref().is_none_or(|(t, at)| {
            !Arc::ptr_eq(t, &table) || now.saturating_since(*at) >= PROBE_TARGETS_EVERY
        }) {
            let active: BTreeSet<NodeId> = self
                .deps
                .dataplane
                .active_destinations()
                .into_iter()
                .collect();
            prober.set_targets(now, probe_targets(&table, &active));
            self.probe_table = Some((table.clone(), now));
        }
        // Answers first, then the deadlines: an answer is judged by the round trip the data
        // plane measured, however late this thread collects it.
        let (answers, failed) = self.deps.dataplane.take_probe_results();
        for (id, rtt) in answers {
            prober.handle_reply(now, id, rtt);
        }
        for id in failed {
            prober.cancel(id);
        }
        prober.handle_timeout(now);
        let sends: Vec<ProbeSend> = std::iter::from_fn(|| prober.poll_transmit()).collect();
        if !sends.is_empty() {
            for id in self.deps.dataplane.send_probes(&sends, prober.spread()) {
                prober.cancel(id);
            }
        }
        let sampled: BTreeSet<NodeId> = prober.sampled().iter().copied().collect();
        if sampled != self.paths_wanted {
            self.deps
                .routing
                .probe_paths(sampled.iter().copied().collect());
            self.paths_wanted = sampled;
        }
        while let Some(r) = prober.poll_result() {
            self.healer.handle_sample(now, Sample::Probe(r));
        }
        // A relay one destination implicates: probe the nodes behind it, through it.
        for (relay, behind) in self.healer.corroboration_wanted() {
            prober.corroborate(now, relay, behind);
        }
    }

    /// Hands the loop the topology when the link-state database or our sessions changed.
    fn sync_topology(&mut self, now: Instant, status: &RoutingStatus) {
        let live: BTreeSet<NodeId> = status.sessions.iter().map(|s| s.peer).collect();
        let key = (Arc::as_ptr(&status.topology) as usize, live);
        if self.topology_key.as_ref() == Some(&key) {
            return;
        }
        let topology = topology_of(self.keys.node_id(), status);
        self.topology_key = Some(key);
        self.healer.set_topology(now, topology);
    }

    fn execute(&mut self, now: Instant) {
        let mut backend = LocalBackend {
            routing: &self.deps.routing,
            dataplane: &self.deps.dataplane,
            redial: &self.deps.redial,
            handle: &self.handle,
        };
        self.healer.execute_with(now, &mut backend);
    }

    /// Stores what the loop recorded (knowledge and signed audit entries, one transaction),
    /// counts it, and publishes the view.
    fn flush(&mut self) {
        let records: Vec<Record> = std::iter::from_fn(|| self.healer.poll_record()).collect();
        let mut rows_changed = false;
        if !records.is_empty() {
            self.note(&records);
            rows_changed = records.iter().any(|r| {
                matches!(
                    r,
                    Record::IncidentOpened { .. }
                        | Record::IncidentChanged { .. }
                        | Record::IncidentClosed { .. }
                        | Record::ActionPlanned { .. }
                        | Record::ActionFinished { .. }
                )
            });
            if let Err(e) = self.kb.persist(&records, &self.keys, unix_ms()) {
                lock(&self.handle.counters).write_failures += 1;
                error!(
                    records = records.len(),
                    "cannot store the self-healing records: {e}"
                );
            }
        }
        self.publish(rows_changed);
    }

    /// Logs and counts records.
    fn note(&self, records: &[Record]) {
        let mut c = lock(&self.handle.counters);
        for r in records {
            match r {
                Record::IncidentOpened {
                    incident,
                    cause,
                    problem,
                    confidence,
                    symptom,
                } => {
                    *c.incidents.entry(problem.as_str()).or_default() += 1;
                    warn!(incident = %incident, cause = %cause, problem = problem.as_str(),
                          confidence = format!("{confidence:.2}"), symptom = %symptom,
                          "incident opened");
                }
                Record::IncidentChanged {
                    incident,
                    cause,
                    problem,
                    confidence,
                } => {
                    info!(incident = %incident, cause = %cause, problem = problem.as_str(),
                          confidence = format!("{confidence:.2}"), "incident changed");
                }
                Record::IncidentClosed {
                    incident,
                    resolution,
                    open_ms,
                    ..
                } => {
                    info!(incident = %incident, resolution = %resolution_text(resolution),
                          open_ms, "incident closed");
                }
                Record::ActionPlanned { action, mode, .. } => {
                    let kind = action.kind.name();
                    *c.actions.entry((kind, mode.as_str())).or_default() += 1;
                    if *mode == Mode::Observe {
                        info!(action = %action.id, incident = %action.incident, kind,
                              detail = %detail(&action.kind), reason = %action.reason,
                              "observe mode: would act");
                    } else {
                        info!(action = %action.id, incident = %action.incident, kind,
                              detail = %detail(&action.kind), reason = %action.reason,
                              "action planned");
                    }
                }
                Record::ActionFinished { action, result, .. } => {
                    debug!(action = %action, result = ?result, "action finished");
                }
                Record::Outcome {
                    action,
                    recovered,
                    recover_ms,
                    ..
                } => {
                    info!(action = %action, recovered, recover_ms = ?recover_ms, "action outcome");
                }
                Record::Health { state, reasons } => {
                    info!(state = state.as_str(), reasons = ?reasons, "self-healing health");
                }
                Record::ModeChanged { mode } => {
                    info!(mode = mode.as_str(), "self-healing mode changed");
                }
                _ => {}
            }
        }
    }

    fn publish(&self, rows_changed: bool) {
        let old = self.handle.view();
        let (incidents, actions, audit_entries, audit_head) = if rows_changed || !old.running {
            let audit = self.kb.audit();
            (
                Arc::new(self.incident_rows()),
                Arc::new(self.action_rows()),
                audit.len().unwrap_or(old.audit_entries),
                audit.head().unwrap_or(old.audit_head),
            )
        } else {
            (
                old.incidents.clone(),
                old.actions.clone(),
                old.audit_entries,
                old.audit_head,
            )
        };
        let health = self.healer.health();
        self.handle.view.store(Arc::new(HealView {
            running: true,
            mode: Some(self.healer.mode()),
            state: Some(health.state),
            reasons: health.reasons.clone(),
            sampling_interval: self.healer.sampling_interval(),
            open_incidents: self.healer.incidents().count(),
            incidents,
            actions,
            audit_entries,
            audit_head,
            rate_limited: self.healer.stats().rate_limited,
            explained_by_stall: self.healer.stats().explained_by_lag,
        }));
    }

    fn incident_rows(&self) -> Vec<IncidentInfo> {
        match self.kb.incidents(API_ROWS) {
            Ok(rows) => rows.into_iter().map(incident_info).collect(),
            Err(e) => {
                warn!("cannot read incidents back: {e}");
                Vec::new()
            }
        }
    }

    fn action_rows(&self) -> Vec<ActionInfo> {
        match self.kb.actions(API_ROWS) {
            Ok(rows) => rows.into_iter().map(action_info).collect(),
            Err(e) => {
                warn!("cannot read actions back: {e}");
                Vec::new()
            }
        }
    }
}

/// Whether data-plane drops of `reason` say something about this node, and are fed to the
/// loop (node-wide, they become evidence of `local_pressure`).
///
/// Not those that follow from a link, a route or another node: frames with no route or no
/// link (a link went down, a route is moving), frames for a link that was just closed or
/// rekeyed, expired hop limits, traffic to or from a peer whose end-to-end session is not
/// up, the transit an injected black hole drops, what the loop itself shed, probe answers
/// that could not go back. Their causes are seen where they are (link samples, end-to-end
/// probes, the black-hole detector), and counting them here blamed this node for them: the
/// drops of a link closed under a latency spike (the late frames of the closed link) and of
/// an injected black hole raised `local_pressure` alerts at the ends of the faulted link and
/// at the faulted relay. Every other reason — this node failing to write, send, buffer or
/// seal, and malformed, forged or replayed input, which points at an attack or a bug — is.
pub(crate) fn drop_is_about_this_node(reason: &str) -> bool {
    !DROPS_ABOUT_OTHERS.contains(&reason)
}

/// The drop reasons [`drop_is_about_this_node`] leaves out.
const DROPS_ABOUT_OTHERS: &[&str] = &[
    "no_route",
    "relay_no_route",
    "no_link",
    "link_not_ready",
    "link_unknown_index",
    "link_unknown_epoch",
    "hop_limit",
    "no_session",
    "e2e_no_session",
    "e2e_handshake",
    "e2e_handshake_failed",
    "e2e_queue_full",
    "fault_blackhole",
    "shed_load",
    "probe_reply_unsent",
    "probe_stray_reply",
];

/// The loop's sample of the data plane's drops: node-wide, by reason, the reasons about this
/// node only.
fn drops_sample(drops: &HashMap<&'static str, u64>) -> Sample {
    let mut by_reason: Vec<(String, u64)> = drops
        .iter()
        .filter(|(r, _)| drop_is_about_this_node(r))
        .map(|(r, v)| ((*r).to_owned(), *v))
        .collect();
    by_reason.sort();
    Sample::Drops(DropCounters {
        link: None,
        by_reason,
    })
}

/// The loop's topology: links both ends advertise, and our live sessions to neighbours whose
/// advert lists us (an excluded link is withdrawn from our advert but still joins us).
/// The prober's targets: every destination with a route, its node-disjoint paths (relays
/// only) where routing computed them (for the prober's sample), and whether we send it
/// traffic.
fn probe_targets(table: &RouteTable, active: &BTreeSet<NodeId>) -> Vec<ProbeTarget> {
    table
        .routes
        .iter()
        .map(|(dst, route)| ProbeTarget {
            dst: *dst,
            active: active.contains(dst),
            paths: table.paths.get(dst).map(|ps| {
                ps.iter()
                    .filter(|(p, _)| p.len() >= 2 && p.last() == Some(dst))
                    .map(|(p, _)| p[1..p.len() - 1].to_vec())
                    .collect()
            }),
            route_first_hop: Some(route.next_hop),
        })
        .collect()
}

fn topology_of(me: NodeId, status: &RoutingStatus) -> Topology {
    let adverts: BTreeMap<NodeId, BTreeSet<NodeId>> = status
        .topology
        .iter()
        .map(|n| (n.id, n.links.iter().map(|l| l.neighbor).collect()))
        .collect();
    let lists = |a: &NodeId, b: &NodeId| adverts.get(a).is_some_and(|l| l.contains(b));
    let mut t = Topology::new();
    for (a, links) in &adverts {
        for b in links {
            if a != b && lists(b, a) {
                t.add_edge(*a, *b);
            }
        }
    }
    // Links either end advertises POOR or BAD: end-to-end probes lost across them are the
    // link's matter, not the relays' (the black-hole detector's excuse).
    for n in status.topology.iter() {
        for l in n.links.iter().filter(|l| l.class >= IMPAIRED_CLASS) {
            t.mark_impaired(n.id, l.neighbor);
        }
    }
    for s in &status.sessions {
        if lists(&s.peer, &me) {
            t.add_edge(me, s.peer);
        }
    }
    t
}

fn resolution_text(r: &Resolution) -> String {
    match r {
        Resolution::Cleared => "cleared".into(),
        Resolution::Merged(into) => format!("merged into {into}"),
    }
}

fn incident_info(r: x0_heal::knowledge::IncidentRow) -> IncidentInfo {
    let cause: Option<Cause> = serde_json::from_str(&r.cause).ok();
    let (cause_kind, cause_node) = match cause {
        Some(Cause::Link(l)) => ("link", Some(l.neighbor.to_string())),
        Some(Cause::Node(n)) => ("node", Some(n.to_string())),
        Some(Cause::Local) => ("local", None),
        None => ("unknown", None),
    };
    let resolution = r
        .resolution
        .as_deref()
        .and_then(|t| serde_json::from_str::<Resolution>(t).ok())
        .map(|res| resolution_text(&res));
    IncidentInfo {
        id: r.id,
        opened_at_unix_ms: r.opened_unix_ms,
        closed_at_unix_ms: r.closed_unix_ms,
        open: r.closed_unix_ms.is_none(),
        cause_kind: cause_kind.to_owned(),
        cause_node,
        cause: cause.map_or(r.cause.clone(), |c| c.to_string()),
        problem: r.problem,
        confidence: r.confidence,
        resolution,
        first_symptom: r.first_symptom,
    }
}

fn action_info(r: x0_heal::knowledge::ActionRow) -> ActionInfo {
    let kind: Option<ActionKind> = serde_json::from_str(&r.kind).ok();
    let result = r
        .result
        .as_deref()
        .map(|t| match serde_json::from_str::<ActionResult>(t) {
            Ok(ActionResult::Done) => "done".to_owned(),
            Ok(ActionResult::Failed(why)) => format!("failed: {why}"),
            Err(_) => t.to_owned(),
        });
    ActionInfo {
        id: r.id,
        incident: r.incident,
        kind: kind
            .as_ref()
            .map_or(r.class.clone(), |k| k.name().to_owned()),
        target: kind
            .as_ref()
            .and_then(ActionKind::target)
            .map(|n| n.to_string()),
        detail: kind.as_ref().map_or(r.kind.clone(), detail),
        mode: r.mode,
        undo_of: r.undo_of,
        reason: r.reason,
        planned_at_unix_ms: r.planned_unix_ms,
        finished_at_unix_ms: r.finished_unix_ms,
        result,
    }
}

/// The action in words.
fn detail(k: &ActionKind) -> String {
    let link = |l: &LinkRef| format!("the link to {}", l.neighbor.short());
    match k {
        ActionKind::RaiseLinkCost { link: l, factor } => {
            format!("raise the cost of {} ×{factor}", link(l))
        }
        ActionKind::RestoreLinkCost { link: l } => format!("restore the cost of {}", link(l)),
        ActionKind::ExcludeLink { link: l, hold_ms } => {
            format!("exclude {} from routing for at least {hold_ms} ms", link(l))
        }
        ActionKind::IncludeLink { link: l } => format!("include {} in routing again", link(l)),
        ActionKind::QuarantineNode { node, hold_ms } => format!(
            "quarantine {} from transit for at least {hold_ms} ms",
            node.short()
        ),
        ActionKind::ReleaseNode { node } => format!("release {} from quarantine", node.short()),
        ActionKind::RekeyLink { link: l } => format!("rekey {}", link(l)),
        ActionKind::RestartLink { link: l } => format!("restart {}", link(l)),
        ActionKind::ShedLoad { node, share } => {
            format!("shed {:.0} % of {}'s load", share * 100.0, node.short())
        }
        ActionKind::RestoreLoad { node } => format!("restore {}'s load", node.short()),
        ActionKind::Alert { summary } => format!("alert: {summary}"),
    }
}

/// The executor of this node: routing restrictions through the routing task, link restarts
/// (close the QUIC connection; a link that is already down is redialled at once), link rekeys
/// in the data plane, load shedding (a limit on the transit a neighbour sends through us) in
/// the data plane, alerts as a log line and a counter.
pub(crate) struct LocalBackend<'a> {
    routing: &'a Routing,
    dataplane: &'a DataPlane,
    redial: &'a (dyn Fn(NodeId) -> bool + Send),
    handle: &'a HealHandle,
}

impl fmt::Debug for LocalBackend<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalBackend").finish_non_exhaustive()
    }
}

impl LocalBackend<'_> {
    fn routing(&self, cmd: RoutingCommand) -> Result<String, String> {
        self.routing.command(cmd).map(str::to_owned)
    }

    fn carry_out(&self, action: &Action) -> Result<String, String> {
        match &action.kind {
            ActionKind::RaiseLinkCost { link, factor } => {
                self.routing(RoutingCommand::CostFactor {
                    neighbor: link.neighbor,
                    factor: *factor,
                })
            }
            ActionKind::RestoreLinkCost { link } => self.routing(RoutingCommand::CostFactor {
                neighbor: link.neighbor,
                factor: 1,
            }),
            ActionKind::ExcludeLink { link, .. } => self.routing(RoutingCommand::Exclude {
                neighbor: link.neighbor,
                exclude: true,
            }),
            ActionKind::IncludeLink { link } => self.routing(RoutingCommand::Exclude {
                neighbor: link.neighbor,
                exclude: false,
            }),
            ActionKind::QuarantineNode { node, .. } => self.routing(RoutingCommand::Quarantine {
                node: *node,
                quarantine: true,
            }),
            ActionKind::ReleaseNode { node } => self.routing(RoutingCommand::Quarantine {
                node: *node,
                quarantine: false,
            }),
            ActionKind::RestartLink { link } => {
                match self.routing(RoutingCommand::RestartLink {
                    neighbor: link.neighbor,
                }) {
                    Ok(done) => Ok(done),
                    // Down already: what a restart can still do is dial it now.
                    Err(_) if (self.redial)(link.neighbor) => {
                        Ok("no live link; its dialler dials it now".into())
                    }
                    Err(why) => Err(format!("{why}, and it is the neighbour that dials us")),
                }
            }
            ActionKind::RekeyLink { link } => self
                .dataplane
                .rekey_link(link.neighbor)
                .map(|g| format!("link key generation {g}")),
            ActionKind::ShedLoad { node, share } => {
                self.dataplane.shed_load(*node, *share).map(|l| {
                    format!(
                        "transit from it limited to {:.1} Mbit/s (it sent {:.1} Mbit/s)",
                        l.limit_bytes_per_s * 8e-6,
                        l.measured_bytes_per_s * 8e-6
                    )
                })
            }
            ActionKind::RestoreLoad { node } => Ok(if self.dataplane.restore_load(*node) {
                "transit limit lifted".into()
            } else {
                "no transit limit was in force".into()
            }),
            ActionKind::Alert { summary } => {
                lock(&self.handle.counters).alerts += 1;
                warn!(incident = %action.incident, "self-healing alert: {summary}");
                Ok("raised".into())
            }
        }
    }
}

impl Executor for LocalBackend<'_> {
    fn execute(&mut self, _now: Instant, action: &Action) -> ActionResult {
        let kind = action.kind.name();
        let result = self.carry_out(action);
        let label = if result.is_ok() { "done" } else { "failed" };
        *lock(&self.handle.counters)
            .results
            .entry((kind, label))
            .or_default() += 1;
        match result {
            Ok(how) => {
                info!(action = %action.id, incident = %action.incident, kind,
                      detail = %detail(&action.kind), result = %how, "self-healing action done");
                ActionResult::Done
            }
            Err(why) => {
                warn!(action = %action.id, incident = %action.incident, kind,
                      detail = %detail(&action.kind), "self-healing action failed: {why}");
                ActionResult::Failed(why)
            }
        }
    }
}

/// `x0t_heal_*` at scrape time.
pub(crate) struct HealCollector {
    /// The loop's handle.
    pub handle: Arc<HealHandle>,
    /// The routing task (restrictions in force).
    pub routing: Routing,
}

impl fmt::Debug for HealCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HealCollector").finish_non_exhaustive()
    }
}

impl Collector for HealCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> fmt::Result {
        let e = &mut encoder;
        let view = self.handle.view();
        encode_gauge(
            e,
            "heal_enabled",
            "1 while the self-healing loop runs, 0 when it is off (heal.enabled = false, or its \
             knowledge base could not be opened; /v1/health says why)",
            None,
            if view.running { 1.0 } else { 0.0 },
        )?;
        if !view.running {
            return Ok(());
        }
        encode_gauge(
            e,
            "heal_observe_mode",
            "1 when the loop only records what it would do (heal.mode = observe), 0 when it acts",
            None,
            if view.mode == Some(Mode::Observe) {
                1.0
            } else {
                0.0
            },
        )?;
        encode_gauge(
            e,
            "heal_health_state",
            "Health state of the node as the self-healing loop sees it: 0 OPTIMAL, 1 RECOVERING, \
             2 DEGRADED, 3 CRITICAL (reasons in /v1/health)",
            None,
            f64::from(view.state.map_or(0, HealthState::gauge)),
        )?;
        encode_gauge(
            e,
            "heal_health_reasons",
            "Reasons behind the health state (0 when OPTIMAL; listed in /v1/health)",
            None,
            view.reasons.len() as f64,
        )?;
        encode_gauge(
            e,
            "heal_incidents_open",
            "Incidents open",
            None,
            view.open_incidents as f64,
        )?;
        encode_gauge(
            e,
            "heal_sampling_interval",
            "The monitor's current sampling interval (shorter while degraded or suspicious)",
            Some(Unit::Seconds),
            view.sampling_interval.as_secs_f64(),
        )?;
        encode_gauge(
            e,
            "heal_audit_entries",
            "Entries in the signed, hash-chained audit log",
            None,
            view.audit_entries as f64,
        )?;
        let r = self.routing.status().restrictions.clone();
        encode_gauges(
            e,
            "heal_restrictions",
            "Restrictions in force in routing, by kind (cost_raised, link_excluded, \
             node_quarantined)",
            None,
            [
                ("cost_raised", r.cost_factors.len()),
                ("link_excluded", r.excluded.len()),
                ("node_quarantined", r.quarantined.len()),
            ]
            .map(|(k, n)| (vec![("kind", k.to_owned())], n as f64)),
        )?;
        // Every problem, kind and result from the start, at zero until it happens: an alert
        // on one gets 0, not "no data". Actions in the daemon's mode; results in act mode.
        let mut c = lock(&self.handle.counters).clone();
        for p in Problem::ALL {
            c.incidents.entry(p.as_str()).or_default();
        }
        let mode = view.mode.unwrap_or(Mode::Act);
        for kind in ActionKind::NAMES {
            c.actions.entry((kind, mode.as_str())).or_default();
            if mode == Mode::Act {
                for result in ["done", "failed"] {
                    c.results.entry((kind, result)).or_default();
                }
            }
        }
        encode_counters(
            e,
            "heal_incidents",
            "Incidents opened since the daemon started, by problem",
            None,
            c.incidents
                .iter()
                .map(|(p, n)| (vec![("problem", (*p).to_owned())], *n)),
        )?;
        encode_counters(
            e,
            "heal_actions",
            "Actions planned since the daemon started, by kind and mode (act: carried out; \
             observe: only recorded)",
            None,
            c.actions.iter().map(|((k, m), n)| {
                (
                    vec![("kind", (*k).to_owned()), ("mode", (*m).to_owned())],
                    *n,
                )
            }),
        )?;
        encode_counters(
            e,
            "heal_action_results",
            "Actions carried out since the daemon started, by kind and result (done, failed)",
            None,
            c.results.iter().map(|((k, r), n)| {
                (
                    vec![("kind", (*k).to_owned()), ("result", (*r).to_owned())],
                    *n,
                )
            }),
        )?;
        encode_counter(e, "heal_alerts", "Alerts raised", None, c.alerts)?;
        encode_counter(
            e,
            "heal_actions_rate_limited",
            "Times an action was held back because the action-rate token bucket was empty \
             (heal.plan.action_burst, heal.plan.action_refill_ms); it is planned again when a token is \
             due",
            None,
            view.rate_limited,
        )?;
        encode_counter(
            e,
            "heal_rtt_explained_by_stall",
            "Link RTT anomalies left out because a stall of this node's own runtime at the time \
             explains them (the RTT includes the time this node took to read the answer)",
            None,
            view.explained_by_stall,
        )?;
        encode_counter(
            e,
            "heal_knowledge_write_failures",
            "Batches of records the knowledge base could not store",
            None,
            c.write_failures,
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::{SessionStatus, TopologyNode};
    use x0_wire::routing::AdvertisedLink;

    fn n(b: u8) -> NodeId {
        NodeId::from_bytes([b; 16])
    }

    fn node(id: NodeId, links: &[NodeId]) -> TopologyNode {
        TopologyNode {
            id,
            seq: 1,
            links: links
                .iter()
                .map(|l| AdvertisedLink {
                    neighbor: *l,
                    cost: 10,
                    class: 0,
                })
                .collect(),
        }
    }

    fn session(peer: NodeId) -> SessionStatus {
        SessionStatus {
            peer,
            rtt: Some(Duration::from_millis(1)),
            jitter: Duration::ZERO,
            rx_loss: 0.0,
            tx_loss: 0.0,
            loss: 0.0,
            missed: 0,
            class: x0_routing::QualityClass::Excellent,
            cost: 10,
            probe_interval: Duration::from_millis(100),
        }
    }

    /// Drops that follow from a link, a route or another node are not this node's pressure:
    /// a second of them at 1,200/s (the late frames of a link closed under a latency spike,
    /// the transit an injected black hole drops, frames with no route while it moves) raised
    /// a `local_pressure` alert at the ends of the faulted link and at the faulted relay in
    /// `x0t bench heal`. The same rate of this node's own failures (TUN writes) does.
    #[test]
    fn drops_caused_elsewhere_are_not_local_pressure() {
        let run = |reason: &'static str| -> Vec<Record> {
            let cfg = x0_heal::HealConfig::default();
            let mut h = Healer::new(cfg, n(1), Instant::ZERO).unwrap();
            let mut total = 0u64;
            let mut records = Vec::new();
            for i in 0..120u64 {
                let now = Instant::from_millis(i * 500);
                // Quiet for the warm-up, then 1,200 drops a second.
                if i >= 60 {
                    total += 600;
                }
                let drops = HashMap::from([(reason, total), ("tun_malformed", 0)]);
                h.handle_sample(now, drops_sample(&drops));
                h.handle_timeout(now);
                records.extend(std::iter::from_fn(|| h.poll_record()));
            }
            records
        };
        let local = |records: &[Record]| {
            records.iter().any(|r| {
                matches!(
                    r,
                    Record::IncidentOpened {
                        problem: x0_heal::Problem::LocalPressure,
                        ..
                    }
                )
            })
        };
        for reason in [
            "link_unknown_index",
            "fault_blackhole",
            "no_route",
            "no_link",
        ] {
            assert!(!local(&run(reason)), "{reason}");
        }
        assert!(local(&run("tun_write")));
    }

    /// Every drop reason the data plane counts was classified on purpose: a new one must be
    /// added to `DROPS_ABOUT_OTHERS` or to the list here.
    #[test]
    fn every_drop_reason_is_classified() {
        const ABOUT_THIS_NODE: &[&str] = &[
            "buffer",
            "tun_write",
            "send_failed",
            "link_seal",
            "e2e_seal",
            "no_tun",
            "app_send",
            "e2e_session_refused",
            "tun_malformed",
            "tun_too_big",
            "tun_foreign_source",
            "tun_ipv4",
            "tun_not_overlay",
            "link_malformed",
            "overlay_malformed",
            "overlay_kind_unsupported",
            "inner_malformed",
            "inner_spoofed",
            "control_malformed",
            "link_auth",
            "link_replay",
            "e2e_auth",
            "e2e_replay",
        ];
        let sources = [
            include_str!("dataplane.rs"),
            include_str!("dataplane/probe.rs"),
        ];
        let mut found = BTreeSet::new();
        for src in sources {
            for (i, _) in src.match_indices('"') {
                let rest = &src[i + 1..];
                let Some(end) = rest.find('"') else { continue };
                let word = &rest[..end];
                let before = &src[..i];
                let counted = before.ends_with("drop(")
                    || before.ends_with("drop_n(")
                    || before.trim_end().ends_with('{') && before.contains("drop(if");
                if counted && word.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                    found.insert(word.to_owned());
                }
            }
        }
        assert!(found.len() > 20, "{found:?}");
        for reason in &found {
            assert!(
                ABOUT_THIS_NODE.contains(&reason.as_str())
                    || DROPS_ABOUT_OTHERS.contains(&reason.as_str()),
                "drop reason {reason:?} is not classified"
            );
            assert_eq!(
                drop_is_about_this_node(reason),
                ABOUT_THIS_NODE.contains(&reason.as_str())
            );
        }
    }

    #[test]
    fn the_topology_has_two_way_links_and_our_excluded_ones() {
        // 1 (us) – 2 two-way; 2 – 3 one-way (3 does not list 2); 1 – 4: we withdrew it from our
        // advert (excluded), 4 still lists us and the session is up.
        let status = RoutingStatus {
            topology: Arc::new(vec![
                node(n(1), &[n(2)]),
                node(n(2), &[n(1), n(3)]),
                node(n(3), &[]),
                node(n(4), &[n(1)]),
            ]),
            sessions: vec![session(n(2)), session(n(4))],
            ..RoutingStatus::default()
        };
        let t = topology_of(n(1), &status);
        assert!(t.has_edge(&n(1), &n(2)));
        assert!(!t.has_edge(&n(2), &n(3)));
        assert!(t.has_edge(&n(1), &n(4)));
        assert!(t.has_edge(&n(4), &n(1)));
    }

    #[test]
    fn stored_rows_read_back_for_the_api() {
        let link = LinkRef {
            id: 3,
            neighbor: n(7),
        };
        let row = x0_heal::knowledge::IncidentRow {
            id: 4,
            opened_unix_ms: 10,
            closed_unix_ms: Some(20),
            cause: serde_json::to_string(&Cause::Link(link)).unwrap(),
            problem: "link_down".into(),
            confidence: 0.9,
            resolution: Some(serde_json::to_string(&Resolution::Cleared).unwrap()),
            first_symptom: "link_down on link 3".into(),
            symptoms: 2,
        };
        let i = incident_info(row);
        assert_eq!(i.cause_kind, "link");
        assert_eq!(i.cause_node, Some(n(7).to_string()));
        assert_eq!(i.resolution.as_deref(), Some("cleared"));
        assert!(!i.open);
        let row = x0_heal::knowledge::ActionRow {
            id: 5,
            incident: 4,
            class: "restart_link".into(),
            kind: serde_json::to_string(&ActionKind::RestartLink { link }).unwrap(),
            mode: "observe".into(),
            undo_of: None,
            result: Some(
                serde_json::to_string(&ActionResult::Failed("no live link".into())).unwrap(),
            ),
            planned_unix_ms: 11,
            finished_unix_ms: Some(12),
            reason: "link down".into(),
        };
        let a = action_info(row);
        assert_eq!(a.kind, "restart_link");
        assert_eq!(a.target, Some(n(7).to_string()));
        assert_eq!(a.result.as_deref(), Some("failed: no live link"));
        assert!(a.detail.contains("restart the link to"), "{}", a.detail);
    }
}
