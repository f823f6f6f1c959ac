//! `x0t bench heal --sim`: the seven healing scenarios in the simulator, at 1,200 nodes.
//!
//! A random geometric mesh (about 8 neighbours per node, links 1–20 ms one way) runs the
//! routing core (`x0_routing::Router`, warm-started) on every node in `x0-sim`, and the real
//! self-healing loop (`x0_heal::Healer`, default `HealConfig`, mode act) beside **every** router.
//! Each loop is fed what the daemon feeds it (`crates/x0t/src/heal.rs`):
//!
//! * link samples from its router's sessions (smoothed RTT, windowed loss, probe misses,
//!   quality class) every sampling interval, and at once when a session goes down or up
//!   (cause: the carrier, or silence after the BFD-style probes missed);
//! * the topology from its link-state database (links both ends advertise) when it changes;
//! * on the source of the measured flow, end-to-end probes each sampling round along the
//!   flow's current forwarding path and its node-disjoint alternates
//!   (`Router::disjoint_paths_with_cost`), answered or not by the next round.
//!
//! Its actions go to its own router through the calls the daemon's routing actor makes
//! (`set_cost_factor`, `exclude_link`/`include_link`, `quarantine`/`release`; a link restart
//! closes and reopens the session), via `Sim::call_node`, so adverts flood as in the daemon.
//!
//! One flow of 100 packets/s runs between two nodes 4–8 hops apart; each packet follows the
//! routers' forwarding decisions hop by hop (`x0_sim::experiment::walk`, fast-reroute backups
//! included) and is delivered when every hop passes (link up, node alive, the link's loss
//! drawn, a black-holing relay drops transit) within 100 ms of the pre-fault path's one-way
//! latency. The fault hits the flow's path. Measured per scenario, in virtual time from the
//! fault: `detect_ms` (first incident, on any node, whose cause is the faulted element),
//! `recover_ms` (from when on every 100 ms bin for a second delivers ≥ 99 % of the pre-fault
//! delivery), `action` (the first action on such an incident), `route_changes` (of the flow's
//! path) and `false_positive_actions` (actions, anywhere, aimed at anything but the faulted
//! element). See `docs/benchmarks.md`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use serde::Serialize;
use x0_heal::{
    Action, ActionClass, ActionKind, ActionResult, Cause, DownCause, Executor, HealConfig, Healer,
    IncidentId, Instant, LinkRef, LinkSample, NodeId, PathProbe, Record, Sample, Topology,
};
use x0_sim::experiment::{routing_sim, walk};
use x0_sim::rng::{SimRng, Stream};
use x0_sim::routing::{RoutingNode, sim_node_id, sim_node_ix};
use x0_sim::{Event, LinkIx, NodeIx, Scenario, Sim};

type Mesh = Sim<RoutingNode>;

/// The scenario names, in the order they run.
pub const SCENARIOS: [&str; 7] = [
    "link-down",
    "node-crash",
    "lossy-link",
    "blackhole-relay",
    "latency-spike",
    "flapping-link",
    "healthy-baseline",
];

/// The loops' and the flow's step: one packet per step (100 packets/s).
const TICK: Duration = Duration::from_millis(10);
/// Before the fault: the loops learn their baselines (30 samples at up to 500 ms).
const WARMUP: Duration = Duration::from_secs(45);
/// Pre-fault delivery is measured over this window.
const BASELINE_WINDOW: Duration = Duration::from_secs(10);
/// After the fault (the flapping link flaps for `FLAP_FOR`, then this).
const SETTLE: Duration = Duration::from_secs(20);
const FLAP_EVERY: Duration = Duration::from_secs(2);
const FLAP_FOR: Duration = Duration::from_secs(60);
/// Loss on the lossy link, each way.
const LOSSY: f64 = 0.30;
/// Added one-way latency on the spiking link, each way.
const SPIKE: Duration = Duration::from_millis(200);
/// A packet later than the pre-fault path's latency plus this is not delivered in time.
const DEADLINE_SLACK_MS: f64 = 100.0;
/// A probe unanswered this long is lost.
const PROBE_TIMEOUT_MS: f64 = 1_000.0;
/// Recovered: every 100 ms bin (10 packets) for this many bins delivers ≥ 99 % of baseline.
const RECOVER_BINS: usize = 10;
const BIN_PACKETS: usize = 10;
/// Largest mesh (see [`run`]).
pub const MAX_NODES: usize = 2_000;
/// Flow length in hops.
const FLOW_HOPS: std::ops::RangeInclusive<usize> = 4..=8;

/// What to run.
#[derive(Debug, Clone)]
pub struct SimHealConfig {
    /// Nodes in the mesh (default 1,200).
    pub nodes: usize,
    /// Seed of the topology, the flow, the link draws and the loss draws.
    pub seed: u64,
    /// Scenario names (see [`SCENARIOS`]); empty means all.
    pub scenarios: Vec<String>,
    /// Length of `healthy-baseline`, seconds (default 300).
    pub baseline_seconds: u64,
    /// Report progress every few simulated seconds (scenario starts and ends always are).
    pub progress: bool,
}

impl Default for SimHealConfig {
    fn default() -> Self {
        Self {
            nodes: 1200,
            seed: 1,
            scenarios: Vec::new(),
            baseline_seconds: 300,
            progress: false,
        }
    }
}

/// The targets for one scenario.
#[derive(Debug, Clone, Serialize)]
pub struct SimTarget {
    /// Longest detection, ms.
    pub detect_ms: Option<f64>,
    /// Longest recovery, ms.
    pub recover_ms: Option<f64>,
    /// Most route changes of the flow in the scenario.
    pub route_changes: Option<u64>,
    /// Most actions (healthy baseline: none).
    pub actions: Option<u64>,
}

/// One scenario's measurements.
#[derive(Debug, Clone, Serialize)]
pub struct SimScenarioResult {
    /// Scenario name.
    pub name: String,
    /// Fault → first incident whose cause is the faulted element, ms of virtual time.
    pub detect_ms: Option<f64>,
    /// Fault → the flow delivers ≥ 99 % of its pre-fault delivery (every 100 ms bin for 1 s).
    pub recover_ms: Option<f64>,
    /// The first action taken on a correctly attributed incident (`quarantine_node`, …).
    pub action: Option<String>,
    /// Times the flow's forwarding path changed from the fault to the end.
    pub route_changes: u64,
    /// Actions (alerts and undos aside) on any node aimed at anything but the faulted element.
    pub false_positive_actions: u64,
    /// Fault → the first incident of any kind on any node, ms.
    pub first_incident_ms: Option<f64>,
    /// The problem of the incident that counted for `detect_ms` (`link_down`, `black_hole`, …).
    pub problem: Option<String>,
    /// Actions (alerts and undos aside) from the fault to the end, on every node.
    pub actions: u64,
    /// Actions (alerts and undos aside) during the warm-up before the fault.
    pub warmup_actions: u64,
    /// Every action from the fault to the end, undos and alerts included, by kind.
    pub action_kinds: BTreeMap<String, u64>,
    /// What was faulted, in words (node indices).
    pub fault: String,
    /// The flow: `source → destination`, hops before the fault.
    pub flow: String,
    /// Share of the flow's packets delivered in time in the 10 s before the fault.
    pub baseline_delivery: f64,
    /// Share delivered in time from the fault to the end.
    pub delivery_after_fault: f64,
    /// Nodes in the mesh.
    pub nodes: usize,
    /// Links in the mesh.
    pub links: usize,
    /// Nodes running a self-healing loop (all of them).
    pub healers: usize,
    /// Samples handed to the loops, all nodes, whole run.
    pub samples: u64,
    /// Virtual time simulated, seconds.
    pub simulated_s: f64,
    /// Wall time of the scenario, ms.
    pub wall_ms: f64,
    /// The targets.
    pub target: SimTarget,
    /// Whether every target was met.
    pub met: bool,
    /// How the figures were made, where it matters.
    pub notes: Vec<String>,
}

/// What a scenario breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Element {
    Link(NodeIx, NodeIx),
    Node(NodeIx),
    Nothing,
}

impl Element {
    /// Whether a cause reported by the loop on `at` names this element.
    fn named_by(self, at: NodeIx, cause: &Cause) -> bool {
        match (self, cause) {
            (Self::Link(a, b), Cause::Link(l)) => {
                let nb = sim_node_ix(&l.neighbor);
                (at == a && nb == Some(b)) || (at == b && nb == Some(a))
            }
            (Self::Node(x), Cause::Node(n)) => sim_node_ix(n) == Some(x),
            // A silent node seen by a neighbour: first blamed on the link to it.
            (Self::Node(x), Cause::Link(l)) => sim_node_ix(&l.neighbor) == Some(x),
            _ => false,
        }
    }

    /// Whether an action taken on `at` is aimed at this element.
    fn aimed_at(self, at: NodeIx, kind: &ActionKind) -> bool {
        let target = kind.target().and_then(|t| sim_node_ix(&t));
        let on_link = !matches!(
            kind,
            ActionKind::QuarantineNode { .. }
                | ActionKind::ReleaseNode { .. }
                | ActionKind::ShedLoad { .. }
                | ActionKind::RestoreLoad { .. }
        );
        match self {
            Self::Link(a, b) => {
                on_link && ((at == a && target == Some(b)) || (at == b && target == Some(a)))
            }
            Self::Node(x) => target == Some(x),
            Self::Nothing => false,
        }
    }

    fn describe(self) -> String {
        match self {
            Self::Link(a, b) => format!("link {a}–{b}"),
            Self::Node(x) => format!("node {x}"),
            Self::Nothing => "nothing".into(),
        }
    }
}

/// The mesh and the flow every scenario shares.
struct Plan {
    scenario: x0_sim::Instance,
    src: NodeIx,
    dst: NodeIx,
    path: Vec<NodeIx>,
}

/// Runs the scenarios; `on_progress` gets one line now and then.
pub fn run(
    cfg: &SimHealConfig,
    on_progress: &mut dyn FnMut(&str),
) -> Result<Vec<SimScenarioResult>, String> {
    let names: Vec<&str> = if cfg.scenarios.is_empty() {
        SCENARIOS.to_vec()
    } else {
        let mut v = Vec::new();
        for s in &cfg.scenarios {
            let known = SCENARIOS
                .iter()
                .find(|k| **k == s.as_str())
                .ok_or_else(|| {
                    format!(
                        "unknown scenario {s:?}; use one of {}",
                        SCENARIOS.join(", ")
                    )
                })?;
            v.push(*known);
        }
        v
    };
    // Every node's loop holds its own copy of the mesh's topology: memory grows with the
    // square of the mesh (676 MB at 1,200 nodes).
    if !(20..=MAX_NODES).contains(&cfg.nodes) {
        return Err(format!(
            "nodes {} is out of range; use 20 to {MAX_NODES} (a self-healing loop runs on every node)",
            cfg.nodes
        ));
    }
    if cfg.baseline_seconds == 0 {
        return Err("baseline seconds must be at least 1".into());
    }
    let plan = plan(cfg)?;
    on_progress(&format!(
        "mesh: {} nodes, {} links; flow {} → {} over {} hops",
        cfg.nodes,
        plan.scenario.topology.link_count(),
        plan.src,
        plan.dst,
        plan.path.len() - 1
    ));
    names
        .into_iter()
        .map(|name| run_scenario(name, cfg, &plan, on_progress))
        .collect()
}

/// Builds the mesh and picks the flow: the first seeded pair whose path is 4–8 hops and has a
/// node-disjoint alternate.
fn plan(cfg: &SimHealConfig) -> Result<Plan, String> {
    let toml = format!(
        "seed = {seed}\nstart = \"warm\"\nduration = \"2h\"\n\
         [topology]\ngenerator = \"random-geometric\"\nn = {n}\navg_degree = 8.0\nseed = {seed}\n\
         [links]\nlatency = \"1ms..20ms\"\njitter = \"200us\"\n",
        seed = cfg.seed,
        n = cfg.nodes,
    );
    let scenario = Scenario::parse(&toml)
        .and_then(|s| s.instantiate(None))
        .map_err(|e| format!("building the mesh: {e}"))?;
    let mut sim = routing_sim(&scenario, &Default::default()).map_err(|e| e.to_string())?;
    sim.run_for(Duration::from_secs(1));
    let mut rng = SimRng::new(cfg.seed, Stream::User(0x6865_616c));
    let n = cfg.nodes as u64;
    for _ in 0..20_000 {
        let (src, dst) = (rng.below(n) as NodeIx, rng.below(n) as NodeIx);
        let Ok(path) = walk(&mut sim, src, dst) else {
            continue;
        };
        if !FLOW_HOPS.contains(&(path.len() - 1)) {
            continue;
        }
        let now = sim.now();
        let alternates = sim
            .node_mut(src)
            .and_then(|nd| nd.router_mut())
            .map(|r| r.disjoint_paths_with_cost(now, &sim_node_id(dst), 2).len())
            .unwrap_or(0);
        if alternates >= 2 {
            return Ok(Plan {
                scenario,
                src,
                dst,
                path,
            });
        }
    }
    Err("no flow of 4 to 8 hops with a disjoint alternate in this mesh".into())
}

/// One node's self-healing loop and what the shell keeps for it.
struct NodeLoop {
    healer: Healer,
    next_sample: Instant,
    /// Neighbours with a session, as last told to the loop.
    active: BTreeSet<NodeIx>,
    /// Neighbours whose session is down, and why.
    down: BTreeMap<NodeIx, DownCause>,
    lsdb_digest: Option<u64>,
    /// Probes sent last round: (path, answered RTT, on route).
    probes: Vec<(Vec<NodeIx>, Option<f64>, bool)>,
}

/// What happened, for the measurements.
#[derive(Default)]
struct Log {
    /// Incidents opened or changed: when, where, which, cause, problem.
    incidents: Vec<(Instant, NodeIx, IncidentId, Cause, &'static str)>,
    /// Actions carried out: when, where, what.
    actions: Vec<(Instant, NodeIx, Action)>,
}

struct World {
    sim: Mesh,
    loops: Vec<Option<NodeLoop>>,
    rng: SimRng,
    blackhole: Option<NodeIx>,
    /// Base topologies by LSDB digest (nodes that hold the same adverts share one build).
    topologies: HashMap<u64, Topology>,
    log: Log,
}

fn run_scenario(
    name: &str,
    cfg: &SimHealConfig,
    plan: &Plan,
    on_progress: &mut dyn FnMut(&str),
) -> Result<SimScenarioResult, String> {
    let started = std::time::Instant::now();
    on_progress(&format!("{name}: starting"));
    let sim = routing_sim(&plan.scenario, &Default::default()).map_err(|e| e.to_string())?;
    let n = sim.node_count();
    let mut loops = Vec::with_capacity(n);
    let mut stagger = SimRng::new(cfg.seed, Stream::User(0x7374_6167));
    for ix in 0..n as NodeIx {
        let healer = Healer::new(HealConfig::default(), sim_node_id(ix), Instant::ZERO)
            .map_err(|e| format!("heal config: {e:?}"))?;
        loops.push(Some(NodeLoop {
            healer,
            // The daemons are not in step.
            next_sample: Instant::from_micros(stagger.below(500_000)),
            active: BTreeSet::new(),
            down: BTreeMap::new(),
            lsdb_digest: None,
            probes: Vec::new(),
        }));
    }
    let mut w = World {
        sim,
        loops,
        rng: SimRng::new(cfg.seed, Stream::User(0x6c6f_7373)),
        blackhole: None,
        topologies: HashMap::new(),
        log: Log::default(),
    };
    let p = &plan.path;
    let mid = (p.len() - 1) / 2;
    let link_mid = (p[mid], p[mid + 1]);
    let link_ix = w
        .sim
        .find_link(link_mid.0, link_mid.1)
        .ok_or("the flow's path has no such link")?;
    let fault_at = Instant::ZERO + WARMUP;
    let (element, run_for) = match name {
        "link-down" | "lossy-link" | "latency-spike" => {
            (Element::Link(link_mid.0, link_mid.1), SETTLE)
        }
        "flapping-link" => (Element::Link(link_mid.0, link_mid.1), FLAP_FOR + SETTLE),
        "node-crash" => (Element::Node(p[p.len() / 2]), SETTLE),
        // The first relay: a quarantine is local to the node that decides it (docs/heal.md),
        // so only the source's own choice of next hop can steer around the relay.
        "blackhole-relay" => (Element::Node(p[1]), SETTLE),
        _ => (Element::Nothing, Duration::from_secs(cfg.baseline_seconds)),
    };
    schedule_fault(&mut w.sim, name, link_ix, element, fault_at)?;
    let end = fault_at + run_for;

    let mut t = Instant::ZERO;
    let mut packets: Vec<(Instant, bool)> = Vec::new();
    let mut last_path: Option<Vec<NodeIx>> = Some(p.clone());
    let mut route_changes = 0u64;
    let base_latency = path_latency_ms(&w.sim, p);
    let mut next_report = Instant::ZERO;
    while t < end {
        t = t + TICK;
        w.sim.run_until(t);
        if name == "blackhole-relay" && t >= fault_at {
            w.blackhole = match element {
                Element::Node(x) => Some(x),
                _ => None,
            };
        }
        for ix in 0..n as NodeIx {
            w.step_loop(ix, t, plan.src, plan.dst);
        }
        // The flow: one packet per tick.
        let path = walk(&mut w.sim, plan.src, plan.dst).ok();
        let delivered = path.as_ref().is_some_and(|path| {
            w.deliver(path)
                .is_some_and(|ms| ms <= base_latency + DEADLINE_SLACK_MS)
        });
        if t >= fault_at - BASELINE_WINDOW {
            packets.push((t, delivered));
        }
        if path != last_path {
            if t >= fault_at {
                route_changes += 1;
            }
            last_path = path;
        }
        if cfg.progress && t >= next_report {
            on_progress(&format!(
                "{name}: {:.0} s of {:.0} s simulated",
                t.as_micros() as f64 / 1e6,
                end.as_micros() as f64 / 1e6
            ));
            next_report = t + Duration::from_secs(10);
        }
    }
    let result = measure(
        name,
        &w,
        plan,
        element,
        fault_at,
        end,
        &packets,
        route_changes,
        started,
    );
    on_progress(&format!(
        "{name}: detect {} ms, recover {} ms, action {}, {} route changes, {} false-positive actions ({:.1} s wall)",
        opt(result.detect_ms),
        opt(result.recover_ms),
        result.action.as_deref().unwrap_or("-"),
        result.route_changes,
        result.false_positive_actions,
        result.wall_ms / 1e3
    ));
    Ok(result)
}

fn opt(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.0}"))
}

fn schedule_fault(
    sim: &mut Mesh,
    name: &str,
    link: LinkIx,
    element: Element,
    at: Instant,
) -> Result<(), String> {
    let mut events = Vec::new();
    match (name, element) {
        ("link-down", _) => events.push((
            at,
            Event::LinkDown {
                link,
                visible: true,
            },
        )),
        ("node-crash", Element::Node(node)) => events.push((at, Event::NodeCrash { node })),
        ("lossy-link", _) => events.push((
            at,
            Event::SetLoss {
                link,
                from: None,
                loss: LOSSY,
            },
        )),
        ("latency-spike", Element::Link(a, _)) => {
            let base = sim
                .link_params(link, a)
                .map(|p| p.latency)
                .unwrap_or_default();
            events.push((
                at,
                Event::SetLatency {
                    link,
                    from: None,
                    latency: base + SPIKE,
                    jitter: None,
                },
            ));
        }
        ("flapping-link", _) => {
            let mut t = at;
            let mut up = false;
            while t < at + FLAP_FOR {
                events.push((
                    t,
                    if up {
                        Event::LinkUp {
                            link,
                            visible: true,
                        }
                    } else {
                        Event::LinkDown {
                            link,
                            visible: true,
                        }
                    },
                ));
                up = !up;
                t = t + FLAP_EVERY;
            }
            // It ends up.
            events.push((
                t,
                Event::LinkUp {
                    link,
                    visible: true,
                },
            ));
        }
        _ => {}
    }
    for (t, e) in events {
        sim.schedule(t, e).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// One-way latency of a path now, ms.
fn path_latency_ms(sim: &Mesh, path: &[NodeIx]) -> f64 {
    path.windows(2)
        .filter_map(|h| {
            let l = sim.find_link(h[0], h[1])?;
            sim.link_params(l, h[0])
        })
        .map(|p| p.latency.as_secs_f64() * 1e3)
        .sum()
}

impl World {
    /// Sends one datagram along `path` (one way): its latency in ms if it arrives.
    fn deliver(&mut self, path: &[NodeIx]) -> Option<f64> {
        let mut ms = 0.0;
        for (i, h) in path.windows(2).enumerate() {
            let (from, to) = (h[0], h[1]);
            // A black hole drops what it should relay, and answers what is for itself.
            if i > 0 && self.blackhole == Some(from) {
                return None;
            }
            let link = self.sim.find_link(from, to)?;
            let passing = self.sim.link_status(link).is_some_and(|s| s.passing());
            if !passing || !self.sim.is_alive(from) || !self.sim.is_alive(to) {
                return None;
            }
            let p = self.sim.link_params(link, from)?;
            if p.loss > 0.0 && self.rng.unit() < p.loss {
                return None;
            }
            ms += p.latency.as_secs_f64() * 1e3;
        }
        Some(ms)
    }

    /// An end-to-end probe along `path` and back: its RTT in ms if answered in time.
    fn probe(&mut self, path: &[NodeIx]) -> Option<f64> {
        let there = self.deliver(path)?;
        let back: Vec<NodeIx> = path.iter().rev().copied().collect();
        let rtt = there + self.deliver(&back)?;
        (rtt <= PROBE_TIMEOUT_MS).then_some(rtt)
    }

    /// The loop of node `ix` at `now`: link events, a sampling round when due, its deadline,
    /// its actions, its records.
    fn step_loop(&mut self, ix: NodeIx, now: Instant, src: NodeIx, dst: NodeIx) {
        if !self.sim.is_alive(ix) {
            if let Some(slot) = self.loops.get_mut(ix as usize) {
                *slot = None;
            }
            return;
        }
        let Some(mut nl) = self.loops.get_mut(ix as usize).and_then(Option::take) else {
            return;
        };
        self.link_events(ix, now, &mut nl);
        if now >= nl.next_sample {
            self.sample_round(ix, now, &mut nl, (ix == src).then_some(dst));
            nl.next_sample = now + nl.healer.sampling_interval();
        }
        if now >= nl.healer.poll_timeout() {
            nl.healer.handle_timeout(now);
        }
        let mut exec = SimExecutor {
            sim: &mut self.sim,
            node: ix,
            log: &mut self.log.actions,
        };
        nl.healer.execute_with(now, &mut exec);
        while let Some(r) = nl.healer.poll_record() {
            match r {
                Record::IncidentOpened {
                    incident,
                    cause,
                    problem,
                    ..
                }
                | Record::IncidentChanged {
                    incident,
                    cause,
                    problem,
                    ..
                } => self
                    .log
                    .incidents
                    .push((now, ix, incident, cause, problem.as_str())),
                _ => {}
            }
        }
        if let Some(slot) = self.loops.get_mut(ix as usize) {
            *slot = Some(nl);
        }
    }

    /// Sessions that went down or came up since the last step, told to the loop at once.
    fn link_events(&mut self, ix: NodeIx, now: Instant, nl: &mut NodeLoop) {
        let Some(node) = self.sim.node(ix) else {
            return;
        };
        let mut changes = Vec::new();
        for (nb, _) in self.sim.neighbors(ix) {
            let active = node.link_active(nb);
            if active != nl.active.contains(&nb) {
                let cause = node.downs.iter().rev().find(|d| d.neighbor == nb).map_or(
                    DownCause::Local,
                    |d| match d.cause {
                        x0_routing::DownCause::Silent => DownCause::Silent,
                        _ => DownCause::Local,
                    },
                );
                changes.push((nb, active, cause));
            }
        }
        if !node.downs.is_empty()
            && let Some(node) = self.sim.node_mut(ix)
        {
            node.downs.clear();
        }
        for (nb, active, cause) in changes {
            let link = link_ref(nb);
            let sample = if active {
                nl.active.insert(nb);
                nl.down.remove(&nb);
                self.session_sample(ix, now, nb)
                    .unwrap_or_else(|| LinkSample::up(link))
            } else {
                nl.active.remove(&nb);
                nl.down.insert(nb, cause);
                LinkSample::down(link, cause)
            };
            nl.healer.handle_sample(now, Sample::Link(sample));
        }
    }

    fn session_sample(&self, ix: NodeIx, now: Instant, nb: NodeIx) -> Option<LinkSample> {
        let router = self.sim.node(ix)?.router()?;
        let link = router.link_to(&sim_node_id(nb))?;
        let (_, s) = router.sessions().find(|(l, _)| *l == link)?;
        let q = s.quality();
        Some(LinkSample {
            link: link_ref(nb),
            state: x0_heal::LinkState::Up,
            rtt_ms: q.has_rtt().then(|| q.rtt_ms()),
            loss: Some(q.loss()),
            probe_misses: s.missed_intervals(now),
            class: Some(q.class()),
            rx_bytes: None,
        })
    }

    /// A sampling round: every session, every link still down, the topology if it changed,
    /// and (on the flow's source) the probes.
    fn sample_round(
        &mut self,
        ix: NodeIx,
        now: Instant,
        nl: &mut NodeLoop,
        flow_dst: Option<NodeIx>,
    ) {
        // One batch, as the daemon feeds a round.
        let active: Vec<NodeIx> = nl.active.iter().copied().collect();
        let mut round: Vec<Sample> = active
            .into_iter()
            .filter_map(|nb| self.session_sample(ix, now, nb))
            .map(Sample::Link)
            .collect();
        round.extend(
            nl.down
                .iter()
                .map(|(&nb, &cause)| Sample::Link(LinkSample::down(link_ref(nb), cause))),
        );
        nl.healer.handle_samples(now, round);
        self.sync_topology(ix, now, nl);
        if let Some(dst) = flow_dst {
            self.probe_round(ix, now, nl, dst);
        }
    }

    fn sync_topology(&mut self, ix: NodeIx, now: Instant, nl: &mut NodeLoop) {
        let Some(router) = self.sim.node(ix).and_then(|n| n.router()) else {
            return;
        };
        let lsdb = router.lsdb();
        let digest = lsdb.digest();
        if nl.lsdb_digest == Some(digest) {
            return;
        }
        nl.lsdb_digest = Some(digest);
        if self.topologies.len() > 64 {
            self.topologies.clear();
        }
        let mut t = self
            .topologies
            .entry(digest)
            .or_insert_with(|| {
                let adverts: BTreeMap<NodeId, BTreeSet<NodeId>> = lsdb
                    .iter()
                    .map(|(id, e)| (*id, e.body().links.iter().map(|l| l.neighbor).collect()))
                    .collect();
                let mut t = Topology::new();
                for (a, links) in &adverts {
                    for b in links {
                        if a < b && adverts.get(b).is_some_and(|l| l.contains(a)) {
                            t.add_edge(*a, *b);
                        }
                    }
                }
                t
            })
            .clone();
        // Our live sessions count as soon as the neighbour lists us (as in the daemon).
        let me = sim_node_id(ix);
        for &nb in &nl.active {
            let peer = sim_node_id(nb);
            let lists_me = lsdb
                .get(&peer)
                .is_some_and(|e| e.body().links.iter().any(|l| l.neighbor == me));
            if lists_me {
                t.add_edge(me, peer);
            }
        }
        nl.healer.set_topology(now, t);
    }

    /// Reports last round's probes and sends this round's. Destinations: the flow's, and each
    /// relay of its forwarding path (a relay answers probes for itself, which is what tells a
    /// black hole from a dead node); each along its forwarding path (`on_route`) and its
    /// node-disjoint alternates.
    fn probe_round(&mut self, ix: NodeIx, now: Instant, nl: &mut NodeLoop, dst: NodeIx) {
        for (path, rtt, on_route) in std::mem::take(&mut nl.probes) {
            let (Some(&to), Some(inner)) = (path.last(), path.get(1..path.len() - 1)) else {
                continue;
            };
            nl.healer.handle_sample(
                now,
                Sample::Probe(PathProbe {
                    dst: sim_node_id(to),
                    relays: inner.iter().map(|r| sim_node_id(*r)).collect(),
                    sent: 1,
                    received: u32::from(rtt.is_some()),
                    rtt_ms: rtt,
                    on_route,
                }),
            );
        }
        let flow_route = walk(&mut self.sim, ix, dst).ok();
        let mut targets = vec![dst];
        if let Some(r) = &flow_route {
            targets.extend(r.iter().skip(1).take(r.len().saturating_sub(2)));
        }
        // As the daemon's prober does: the nodes behind a relay one destination implicates,
        // through it (when it is our neighbour) and along their own paths.
        let mut through: BTreeMap<NodeIx, NodeIx> = BTreeMap::new();
        for (relay, behind) in nl.healer.corroboration_wanted() {
            let Some(r) = sim_node_ix(&relay) else {
                continue;
            };
            for b in behind.iter().filter_map(sim_node_ix).take(8) {
                if b != ix && !targets.contains(&b) {
                    targets.push(b);
                }
                if nl.active.contains(&r) {
                    through.entry(b).or_insert(r);
                }
            }
        }
        for to in targets {
            let route = walk(&mut self.sim, ix, to).ok();
            let mut paths: Vec<Vec<NodeIx>> = route.iter().cloned().collect();
            if let Some(&r) = through.get(&to) {
                let p = vec![ix, r, to];
                if !paths.contains(&p) {
                    paths.push(p);
                }
            }
            let alternates = self
                .sim
                .node_mut(ix)
                .and_then(|n| n.router_mut())
                .map(|r| r.disjoint_paths_with_cost(now, &sim_node_id(to), 2))
                .unwrap_or_default();
            for (ids, _) in alternates {
                let p: Vec<NodeIx> = ids.iter().filter_map(sim_node_ix).collect();
                if p.len() >= 2 && !paths.contains(&p) {
                    paths.push(p);
                }
            }
            for p in paths {
                let rtt = self.probe(&p);
                let on_route = route.as_ref() == Some(&p);
                nl.probes.push((p, rtt, on_route));
            }
        }
    }
}

/// The loop's name for our link to `nb` (in the simulator a link's handle is the neighbour).
fn link_ref(nb: NodeIx) -> LinkRef {
    LinkRef {
        id: u64::from(nb),
        neighbor: sim_node_id(nb),
    }
}

/// Carries a loop's actions out on its own simulated router, as the daemon's local backend
/// does on the routing actor.
struct SimExecutor<'a> {
    sim: &'a mut Mesh,
    node: NodeIx,
    log: &'a mut Vec<(Instant, NodeIx, Action)>,
}

impl SimExecutor<'_> {
    fn router(
        &mut self,
        f: impl FnOnce(&mut x0_routing::Router, x0_routing::Instant) -> bool,
    ) -> Result<(), String> {
        self.sim
            .call_node(self.node, |n, now, out| n.command(now, out, f))
            .flatten()
            .map(|_| ())
            .ok_or_else(|| "the router is not running".into())
    }
}

impl Executor for SimExecutor<'_> {
    fn execute(&mut self, now: Instant, action: &Action) -> ActionResult {
        let me = self.node;
        let result = match &action.kind {
            ActionKind::RaiseLinkCost { link, factor } => {
                let (nb, f) = (link.neighbor, *factor);
                self.router(move |r, now| r.set_cost_factor(now, nb, f))
            }
            ActionKind::RestoreLinkCost { link } => {
                let nb = link.neighbor;
                self.router(move |r, now| r.set_cost_factor(now, nb, 1))
            }
            ActionKind::ExcludeLink { link, .. } => {
                let nb = link.neighbor;
                self.router(move |r, now| r.exclude_link(now, nb))
            }
            ActionKind::IncludeLink { link } => {
                let nb = link.neighbor;
                self.router(move |r, now| r.include_link(now, nb))
            }
            ActionKind::QuarantineNode { node, .. } if sim_node_ix(node) == Some(me) => {
                Err("this node cannot quarantine itself".into())
            }
            ActionKind::QuarantineNode { node, .. } => {
                let node = *node;
                self.router(move |r, now| r.quarantine(now, node))
            }
            ActionKind::ReleaseNode { node } => {
                let node = *node;
                self.router(move |r, now| r.release(now, node))
            }
            ActionKind::RestartLink { link } => {
                // Down already: the link comes back by itself when the neighbour answers
                // (the simulated dialler keeps knocking).
                let nb = sim_node_ix(&link.neighbor);
                nb.map(|nb| {
                    self.sim
                        .call_node(me, |n, now, out| n.restart_link(now, nb, out));
                })
                .ok_or_else(|| "not a simulated node".into())
            }
            // No data channel keys in the simulator: nothing to rekey, nothing lost.
            ActionKind::RekeyLink { .. } | ActionKind::RestoreLoad { .. } => Ok(()),
            ActionKind::ShedLoad { .. } => {
                Err("not supported: the data plane has no per-neighbour rate limit".into())
            }
            ActionKind::Alert { .. } => Ok(()),
        };
        self.log.push((now, me, action.clone()));
        match result {
            Ok(()) => ActionResult::Done,
            Err(why) => ActionResult::Failed(why),
        }
    }
}

/// Counts as an action for the figures: changes something (not an alert) and is not an undo.
fn counts(kind: &ActionKind) -> bool {
    !matches!(kind.class(), ActionClass::Alert | ActionClass::Undo)
}

fn ms_since(t: Instant, from: Instant) -> f64 {
    t.saturating_since(from).as_secs_f64() * 1e3
}

#[allow(clippy::too_many_arguments)]
fn measure(
    name: &str,
    w: &World,
    plan: &Plan,
    element: Element,
    fault_at: Instant,
    end: Instant,
    packets: &[(Instant, bool)],
    route_changes: u64,
    started: std::time::Instant,
) -> SimScenarioResult {
    let after = |t: &Instant| *t >= fault_at;
    let detected = w
        .log
        .incidents
        .iter()
        .find(|(t, at, _, cause, _)| after(t) && element.named_by(*at, cause));
    let right: BTreeSet<(NodeIx, IncidentId)> = w
        .log
        .incidents
        .iter()
        .filter(|(t, at, _, cause, _)| after(t) && element.named_by(*at, cause))
        .map(|(_, at, id, _, _)| (*at, *id))
        .collect();
    let on_right =
        |(t, at, a): &&(Instant, NodeIx, Action)| after(t) && right.contains(&(*at, a.incident));
    let action = w
        .log
        .actions
        .iter()
        .filter(on_right)
        .find(|(_, _, a)| counts(&a.kind))
        .or_else(|| w.log.actions.iter().find(on_right))
        .map(|(_, _, a)| a.kind.name().to_string());
    let counted = || w.log.actions.iter().filter(|(_, _, a)| counts(&a.kind));
    let actions = counted().filter(|(t, _, _)| after(t)).count() as u64;
    let warmup_actions = counted().filter(|(t, _, _)| !after(t)).count() as u64;
    let false_positive_actions = counted()
        .filter(|(t, at, a)| after(t) && !element.aimed_at(*at, &a.kind))
        .count() as u64;
    let mut action_kinds = BTreeMap::new();
    for (_, _, a) in w.log.actions.iter().filter(|(t, _, _)| after(t)) {
        *action_kinds.entry(a.kind.name().to_string()).or_insert(0) += 1;
    }
    let first_incident_ms = w
        .log
        .incidents
        .iter()
        .find(|(t, ..)| after(t))
        .map(|(t, ..)| ms_since(*t, fault_at));

    let share = |v: &[(Instant, bool)]| {
        v.iter().filter(|(_, ok)| *ok).count() as f64 / v.len().max(1) as f64
    };
    let split = packets.partition_point(|(t, _)| *t < fault_at);
    let (before, post) = packets.split_at(split);
    let baseline = share(before);
    let recover_ms = (element != Element::Nothing)
        .then(|| recovery(post, baseline).map(|i| ms_since(post[i].0, fault_at)))
        .flatten();

    let (detect_t, recover_t, changes_t, actions_t) = match name {
        "link-down" => (Some(50.0), Some(100.0), None, None),
        "node-crash" => (Some(300.0), Some(500.0), None, None),
        "lossy-link" | "blackhole-relay" | "latency-spike" => {
            (Some(2000.0), Some(3000.0), None, None)
        }
        // Damped: without it the path would change twice per flap (30 in a minute).
        "flapping-link" => (None, None, Some(FLAP_ROUTE_CHANGES_MAX), None),
        _ => (None, None, None, Some(0)),
    };
    let within = |v: Option<f64>, t: Option<f64>| t.is_none_or(|t| v.is_some_and(|v| v <= t));
    let met = within(detected.map(|d| ms_since(d.0, fault_at)), detect_t)
        && within(recover_ms, recover_t)
        && changes_t.is_none_or(|m| route_changes <= m)
        && actions_t.is_none_or(|m| actions <= m);
    let mut notes = vec![
        "every node runs the loop (default HealConfig, mode act); the flow's source also probes end to end".to_string(),
    ];
    match name {
        "blackhole-relay" => notes.push(
            "the black hole is the flow's first relay: quarantine is local to the deciding node".into(),
        ),
        "latency-spike" => notes.push(format!(
            "+{} ms one way, each direction; a packet counts when within {DEADLINE_SLACK_MS} ms of the pre-fault latency",
            SPIKE.as_millis()
        )),
        "flapping-link" => notes.push(format!(
            "down/up every {} s for {} s (visible); route changes counted from the first flap to the end",
            FLAP_EVERY.as_secs(),
            FLAP_FOR.as_secs()
        )),
        _ => {}
    }
    let samples = w
        .loops
        .iter()
        .flatten()
        .map(|l| l.healer.stats().samples)
        .sum();
    SimScenarioResult {
        name: name.to_string(),
        detect_ms: detected.map(|d| ms_since(d.0, fault_at)),
        recover_ms,
        action,
        route_changes,
        false_positive_actions,
        first_incident_ms,
        problem: detected.map(|d| d.4.to_string()),
        actions,
        warmup_actions,
        action_kinds,
        fault: element.describe(),
        flow: format!("{} → {}, {} hops", plan.src, plan.dst, plan.path.len() - 1),
        baseline_delivery: baseline,
        delivery_after_fault: share(post),
        nodes: w.sim.node_count(),
        links: w.sim.link_count(),
        healers: w.loops.len(),
        samples,
        simulated_s: end.as_micros() as f64 / 1e6,
        wall_ms: started.elapsed().as_secs_f64() * 1e3,
        target: SimTarget {
            detect_ms: detect_t,
            recover_ms: recover_t,
            route_changes: changes_t,
            actions: actions_t,
        },
        met,
        notes,
    }
}

/// Most route changes of the flow allowed while the link flaps: each of the
/// `detect.flap_transitions` (4) transitions the flap detector needs may move the path, the
/// exclusion may move it once more, and the inclusion after the hold once more — 6, against
/// 30 undamped (down/up every 2 s for 60 s, two changes per cycle).
pub const FLAP_ROUTE_CHANGES_MAX: u64 = 6;

/// The first packet from which every bin of [`BIN_PACKETS`] for [`RECOVER_BINS`] bins delivers
/// at least 99 % of `baseline`.
fn recovery(post: &[(Instant, bool)], baseline: f64) -> Option<usize> {
    let need = RECOVER_BINS * BIN_PACKETS;
    (0..post.len().saturating_sub(need - 1)).find(|&i| {
        post[i..i + need].chunks(BIN_PACKETS).all(|bin| {
            let ok = bin.iter().filter(|(_, d)| *d).count() as f64;
            ok / BIN_PACKETS as f64 >= 0.99 * baseline
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seven_scenarios_on_a_small_mesh() {
        let cfg = SimHealConfig {
            nodes: 60,
            seed: 1,
            scenarios: Vec::new(),
            baseline_seconds: 30,
            progress: false,
        };
        let results = run(&cfg, &mut |l| eprintln!("{l}")).unwrap();
        for r in &results {
            eprintln!("{}", serde_json::to_string(r).unwrap());
        }
        let by = |n: &str| results.iter().find(|r| r.name == n).unwrap();
        assert_eq!(results.len(), 7);
        let down = by("link-down");
        assert!(down.detect_ms.is_some(), "link-down detected");
        assert!(down.recover_ms.is_some(), "link-down recovered");
        assert_eq!(down.problem.as_deref(), Some("link_down"));
        let crash = by("node-crash");
        assert!(crash.detect_ms.is_some() && crash.recover_ms.is_some());
        let hole = by("blackhole-relay");
        assert_eq!(hole.problem.as_deref(), Some("black_hole"), "{hole:?}");
        assert_eq!(hole.action.as_deref(), Some("quarantine_node"));
        assert!(hole.recover_ms.is_some());
        let flapping = by("flapping-link");
        assert!(
            flapping.route_changes <= FLAP_ROUTE_CHANGES_MAX,
            "{flapping:?}"
        );
        let healthy = by("healthy-baseline");
        assert_eq!(healthy.actions, 0, "{healthy:?}");
        assert_eq!(healthy.false_positive_actions, 0);
        assert!(healthy.baseline_delivery > 0.99);
        for r in &results {
            assert!(r.baseline_delivery > 0.99, "{} baseline", r.name);
        }
    }

    /// The full-size run, for figures: `X0T_HEAL_SIM_NODES=1200 cargo test --release -p x0t
    /// --bin x0t bench_heal_sim::tests::full_size -- --ignored --nocapture` (until
    /// `x0t bench heal --sim --json` calls [`run`]).
    #[test]
    #[ignore = "minutes of wall time; run by hand for figures"]
    fn full_size() {
        let nodes = std::env::var("X0T_HEAL_SIM_NODES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1200);
        let scenarios = std::env::var("X0T_HEAL_SIM_SCENARIOS")
            .map(|v| v.split(',').map(str::to_owned).collect())
            .unwrap_or_default();
        let cfg = SimHealConfig {
            nodes,
            scenarios,
            progress: true,
            ..SimHealConfig::default()
        };
        let results = run(&cfg, &mut |l| eprintln!("{l}")).unwrap();
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "scenarios": results })).unwrap()
        );
    }

    #[test]
    fn unknown_scenarios_and_bad_sizes_are_refused() {
        let mut cfg = SimHealConfig {
            scenarios: vec!["link-dwon".into()],
            ..SimHealConfig::default()
        };
        let e = run(&cfg, &mut |_| {}).unwrap_err();
        assert!(
            e.contains("link-dwon") && e.contains("healthy-baseline"),
            "{e}"
        );
        cfg.scenarios.clear();
        cfg.nodes = 3;
        assert!(run(&cfg, &mut |_| {}).unwrap_err().contains("nodes"));
    }

    #[test]
    fn recovery_needs_a_full_second_of_good_bins() {
        let t = |i: usize| Instant::from_millis(i as u64 * 10);
        // 15 lost, then all delivered.
        let v: Vec<(Instant, bool)> = (0..300).map(|i| (t(i), i >= 15)).collect();
        assert_eq!(recovery(&v, 1.0), Some(15));
        // One loss in every bin: never at 99 % of a perfect baseline.
        let v: Vec<(Instant, bool)> = (0..300).map(|i| (t(i), i % 10 != 3)).collect();
        assert_eq!(recovery(&v, 1.0), None);
        assert_eq!(recovery(&v, 0.9), Some(0));
    }
}
