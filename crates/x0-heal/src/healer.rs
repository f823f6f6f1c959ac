//! The MAPE-K loop as one sans-IO state machine.
//!
//! Inputs: [`Healer::handle_sample`] (monitor), [`Healer::set_topology`],
//! [`Healer::action_result`] (execute), [`Healer::handle_timeout`], [`Healer::restore`]
//! (knowledge, at start). Outputs: [`Healer::poll_action`] (execute),
//! [`Healer::poll_record`] (knowledge and audit), [`Healer::poll_timeout`]. Queries:
//! [`Healer::health`], [`Healer::sampling_interval`], [`Healer::incidents`],
//! [`Healer::restrictions`], [`Healer::planned`], [`Healer::stats`].
//!
//! **Time.** Every input carries `now`. A `now` earlier than the previous one, or more than
//! `max_clock_step_ms` after it, is a clock jump: the loop does not count it as elapsed time
//! (its own clock stands still across the jump, and deadlines it hands out are translated
//! back), and the detectors treat it as neither a silence nor a gap.
//!
//! **Outcomes.** After an action is carried out, it succeeded if within `outcome_window_ms`
//! its incident's symptoms stopped (the cause cleared), or — for actions that steer traffic
//! away (raise cost, exclude, quarantine, shed) — if every destination whose on-route traffic
//! went through the cause (during the incident, or in the probe window before it) has since
//! had three good on-route rounds in a row along paths that avoid the cause (all probes
//! answered, RTT at most 1.5× its usual value plus 10 ms): end-to-end delivery recovered.
//! Otherwise it failed, and the planner escalates to the next candidate. In observe mode the
//! same schedule runs without outcomes.
//!
//! **Undo.** When an incident's cause clears, each restriction it put in force (raised cost,
//! exclusion, quarantine, shed load) is undone once its hold has passed. An incident about the
//! same target opening before that adopts the restriction, with a longer hold. If the
//! topology changes so that a restriction now partitions the mesh, restrictions are undone at
//! once, newest first, until it does not (these undos do not wait for a token).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use x0_routing::{Instant, LinkId};
use x0_wire::NodeId;

use crate::action::{Action, ActionClass, ActionId, ActionKind, ActionResult, Executor};
use crate::config::{ConfigError, HealConfig, Mode, ms};
use crate::detect::blackhole::PathDifferential;
use crate::detect::cusum::CusumDetector;
use crate::detect::ewma::EwmaDetector;
use crate::detect::rules::RuleDetector;
use crate::detect::{Baseline, Detector, Symptom, SymptomKind};
use crate::health::{Health, HealthInputs, HealthState, assess, sampling_interval};
use crate::incident::{
    Cause, Correlator, Incident, IncidentEvent, IncidentId, Problem, Resolution,
};
use crate::monitor::{Monitor, MonitorStats};
use crate::plan::{Pacing, Refusal, SafetyView, SuccessRates, Target, instantiate, ranked};
use crate::record::{Record, Skipped};
use crate::sample::{LinkRef, LinkState, Metric, Sample, Subject};
use crate::topology::{Cut, Topology, edge};

/// On-route rounds in a row, fully answered, that count as delivery recovered.
const RECOVER_ROUNDS: u32 = 3;
/// Planned actions kept for [`Healer::planned`].
const PLANNED_KEPT: usize = 256;
/// On-route probe rounds remembered for judging outcomes, at most…
const ON_ROUTE_KEPT: usize = 4096;
/// …and for at most this long.
const ON_ROUTE_AGE: Duration = Duration::from_secs(120);
/// How long a scheduling delay of this node explains a rise of its link RTTs: the routing
/// core's smoothed RTT (an EWMA of 1/8 per 100 ms probe) takes about this long to come back
/// down after a stall.
const LAG_EXPLAINS: Duration = Duration::from_secs(3);
/// Runtime stall samples kept (a few seconds of the fastest sampling).
const MAX_LAG_SAMPLES: usize = 64;
/// Longest runtime stall believed, ms (a longer one is garbage or a clock jump).
const MAX_STALL_MS: f64 = 60_000.0;

/// Whether traffic to `dst` along `relays` goes through `cause`.
fn path_uses(cause: Cause, dst: NodeId, relays: &[NodeId]) -> bool {
    match cause {
        Cause::Link(l) => *relays.first().unwrap_or(&dst) == l.neighbor,
        Cause::Node(n) => relays.contains(&n) || dst == n,
        Cause::Local => false,
    }
}

/// Whether traffic to `dst` can avoid `cause` at all (not when `dst` is the culprit).
fn dst_can_avoid(cause: Cause, dst: NodeId) -> bool {
    !matches!(cause, Cause::Node(n) if n == dst)
}

/// What the knowledge base knows at start (see [`crate::knowledge::KnowledgeBase::snapshot`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KnowledgeSnapshot {
    /// Next free incident number.
    pub next_incident_id: u64,
    /// Next free action number.
    pub next_action_id: u64,
    /// Outcome statistics.
    pub rates: SuccessRates,
    /// Learned baselines.
    pub baselines: Vec<Baseline>,
    /// Recent offences: quarantines per node, flap exclusions per neighbour.
    pub offences: Vec<Offence>,
}

/// Recent restrictions of one target, so that repeat offenders get longer holds after a
/// restart too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offence {
    /// `quarantine_node` or `exclude_link`.
    pub class: ActionClass,
    /// The node (for links: the neighbour).
    pub node: NodeId,
    /// How many within the forget period.
    pub count: u32,
}

/// Counters of the loop.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HealStats {
    /// Samples handled.
    pub samples: u64,
    /// Symptoms reported by detectors.
    pub symptoms: u64,
    /// Incidents opened.
    pub incidents: u64,
    /// Actions handed to the executor (act mode).
    pub actions: u64,
    /// Actions only recorded (observe mode).
    pub observed: u64,
    /// Undos emitted (included in the two above).
    pub undos: u64,
    /// Undos forced by a topology change (safety).
    pub safety_undos: u64,
    /// Times an action waited for a token.
    pub rate_limited: u64,
    /// Candidates refused by a safety rule.
    pub refused: u64,
    /// Results for actions the loop did not know (late or duplicate).
    pub unknown_results: u64,
    /// `now` went backwards.
    pub clock_backwards: u64,
    /// `now` leapt forward.
    pub clock_leaps: u64,
    /// Symptoms dropped because too many incidents were open.
    pub dropped_symptoms: u64,
    /// Input the monitor refused.
    pub monitor: MonitorStats,
    /// Link RTT symptoms left out because this node's own scheduling delay at the time
    /// explains them (see [`Healer::handle_samples`]).
    pub explained_by_lag: u64,
}

/// A restriction in force (or being applied).
#[derive(Debug, Clone, PartialEq)]
pub struct Restriction {
    /// The action that put it in force.
    pub action: ActionId,
    /// The incident it belongs to.
    pub incident: IncidentId,
    /// What it is.
    pub kind: ActionKind,
    /// Not undone before this.
    pub hold_until: Instant,
    /// Undo due at (set when the incident closed).
    pub release_at: Option<Instant>,
}

impl Restriction {
    fn target(&self) -> Option<Target> {
        match &self.kind {
            ActionKind::RaiseLinkCost { link, .. } | ActionKind::ExcludeLink { link, .. } => {
                Some(Target::Peer(link.neighbor))
            }
            ActionKind::QuarantineNode { node, .. } | ActionKind::ShedLoad { node, .. } => {
                Some(Target::Node(*node))
            }
            _ => None,
        }
    }

    fn undo(&self) -> Option<ActionKind> {
        Some(match &self.kind {
            ActionKind::RaiseLinkCost { link, .. } => ActionKind::RestoreLinkCost { link: *link },
            ActionKind::ExcludeLink { link, .. } => ActionKind::IncludeLink { link: *link },
            ActionKind::QuarantineNode { node, .. } => ActionKind::ReleaseNode { node: *node },
            ActionKind::ShedLoad { node, .. } => ActionKind::RestoreLoad { node: *node },
            _ => return None,
        })
    }
}

fn is_restriction(kind: &ActionKind) -> bool {
    matches!(
        kind,
        ActionKind::RaiseLinkCost { .. }
            | ActionKind::ExcludeLink { .. }
            | ActionKind::QuarantineNode { .. }
            | ActionKind::ShedLoad { .. }
    )
}

fn cause_target(cause: Cause) -> Option<Target> {
    match cause {
        Cause::Link(l) => Some(Target::Peer(l.neighbor)),
        Cause::Node(n) => Some(Target::Node(n)),
        Cause::Local => None,
    }
}

/// What the health state and its reasons are computed from.
#[derive(Debug, PartialEq)]
struct HealthSignature {
    open: Vec<(IncidentId, Cause, Problem, u8)>,
    links: (usize, usize),
    held: usize,
    awaiting: usize,
    recently_closed: bool,
}

#[derive(Debug)]
struct PlanState {
    cause: Cause,
    problem: Problem,
    tried: BTreeSet<ActionClass>,
    alerted: bool,
    mitigated: bool,
    wait_until: Option<Instant>,
}

#[derive(Debug)]
struct InFlight {
    action: Action,
    problem: Problem,
    deadline: Instant,
}

#[derive(Debug)]
struct Awaiting {
    incident: IncidentId,
    class: ActionClass,
    problem: Problem,
    cause: Cause,
    done_at: Instant,
    deadline: Instant,
    observed: bool,
    /// Affected destinations → (full rounds in a row, first of them).
    delivery: BTreeMap<NodeId, (u32, Option<Instant>)>,
}

/// The self-healing loop of one node (see the module doc).
pub struct Healer {
    cfg: HealConfig,
    me: NodeId,
    mode: Mode,
    last_wall: Option<Instant>,
    /// core time = wall time − offset (µs).
    offset: i128,
    now: Instant,
    monitor: Monitor,
    detectors: Vec<Box<dyn Detector>>,
    correlator: Correlator,
    topology: Topology,
    links: BTreeMap<LinkId, LinkRef>,
    plans: BTreeMap<IncidentId, PlanState>,
    restrictions: BTreeMap<ActionId, Restriction>,
    in_flight: BTreeMap<ActionId, InFlight>,
    awaiting: BTreeMap<ActionId, Awaiting>,
    /// Restrictions whose undo is in flight, by the undo's ID (restored if the undo fails).
    undoing: BTreeMap<ActionId, Restriction>,
    /// Usual on-route RTT per destination (ms) and the rounds it was learned from.
    usual_rtt: std::collections::HashMap<NodeId, (f64, u32)>,
    /// Recent on-route probe rounds: when, to where, along which relays.
    on_route: VecDeque<(Instant, NodeId, Vec<NodeId>)>,
    /// This node's recent runtime stalls (ms), and when reported.
    lag: VecDeque<(Instant, f64)>,
    pacing: Pacing,
    rates: SuccessRates,
    next_action: u64,
    actions: VecDeque<Action>,
    records: VecDeque<Record>,
    planned: VecDeque<(Mode, Action)>,
    health: Health,
    health_signature: Option<HealthSignature>,
    last_closed_at: Option<Instant>,
    next_baselines_at: Instant,
    stats: HealStats,
}

impl std::fmt::Debug for Healer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Healer")
            .field("me", &self.me)
            .field("mode", &self.mode)
            .field("now", &self.now)
            .field("health", &self.health.state)
            .field("open", &self.correlator.open().count())
            .field("restrictions", &self.restrictions.len())
            .finish_non_exhaustive()
    }
}

impl Healer {
    /// A loop for node `me`, started at `now`, with the statistical detectors (EWMA/z-score,
    /// CUSUM, rules, path differential).
    pub fn new(cfg: HealConfig, me: NodeId, now: Instant) -> Result<Self, ConfigError> {
        cfg.validate()?;
        let d = &cfg.detect;
        let detectors: Vec<Box<dyn Detector>> = vec![
            Box::new(RuleDetector::new(d)),
            Box::new(EwmaDetector::new(d)),
            Box::new(CusumDetector::new(d)),
            Box::new(PathDifferential::new(d)),
        ];
        Ok(Self {
            mode: cfg.mode,
            me,
            last_wall: Some(now),
            offset: 0,
            now,
            monitor: Monitor::new(ms(d.gap_reset_ms), ms(d.forget_after_ms)),
            detectors,
            correlator: Correlator::new(&cfg.incidents, 1),
            topology: Topology::new(),
            links: BTreeMap::new(),
            plans: BTreeMap::new(),
            restrictions: BTreeMap::new(),
            in_flight: BTreeMap::new(),
            awaiting: BTreeMap::new(),
            undoing: BTreeMap::new(),
            usual_rtt: std::collections::HashMap::new(),
            on_route: VecDeque::new(),
            lag: VecDeque::new(),
            pacing: Pacing::new(&cfg.plan, now),
            rates: SuccessRates::default(),
            next_action: 1,
            actions: VecDeque::new(),
            records: VecDeque::new(),
            planned: VecDeque::new(),
            health: Health {
                state: HealthState::Optimal,
                reasons: Vec::new(),
                since: now,
            },
            health_signature: None,
            last_closed_at: None,
            next_baselines_at: now + ms(cfg.incidents.baseline_snapshot_ms),
            stats: HealStats::default(),
            cfg,
        })
    }

    /// Adds a detector beside the built-in ones (the GNN detector plugs in here).
    pub fn add_detector(&mut self, mut detector: Box<dyn Detector>) {
        detector.topology_changed(&Topology::new(), &self.topology);
        self.detectors.push(detector);
    }

    /// Loads what the knowledge base learned before a restart.
    pub fn restore(&mut self, snapshot: &KnowledgeSnapshot) {
        self.correlator.set_next_id(snapshot.next_incident_id);
        self.next_action = self.next_action.max(snapshot.next_action_id);
        self.rates = snapshot.rates.clone();
        for d in &mut self.detectors {
            d.restore_baselines(&snapshot.baselines);
        }
        for o in &snapshot.offences {
            let target = match o.class {
                ActionClass::ExcludeLink => Target::Peer(o.node),
                _ => Target::Node(o.node),
            };
            self.pacing
                .holds
                .restore(o.class, target, o.count, self.now);
        }
    }

    /// The configuration.
    pub fn config(&self) -> &HealConfig {
        &self.cfg
    }

    /// Act or observe.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Switches between acting and observing. Restrictions already in force are undone as
    /// usual when their causes clear.
    pub fn set_mode(&mut self, now: Instant, mode: Mode) {
        self.advance(now);
        if mode != self.mode {
            self.mode = mode;
            self.records.push_back(Record::ModeChanged { mode });
        }
    }

    // ---- time -------------------------------------------------------------------------------

    fn advance(&mut self, wall: Instant) -> Instant {
        let w = i128::from(wall.as_micros());
        if let Some(prev) = self.last_wall {
            let p = i128::from(prev.as_micros());
            let max_step = i128::from(self.cfg.sampling.max_clock_step_ms) * 1000;
            if w < p {
                self.stats.clock_backwards += 1;
                self.offset -= p - w;
                self.clock_jumped();
            } else if w - p > max_step {
                self.stats.clock_leaps += 1;
                self.offset += w - p;
                self.clock_jumped();
            }
        }
        self.last_wall = Some(wall);
        let core = (w - self.offset).clamp(0, i128::from(u64::MAX));
        let core = Instant::from_micros(u64::try_from(core).unwrap_or(u64::MAX));
        self.now = self.now.max(core);
        self.now
    }

    fn clock_jumped(&mut self) {
        for d in &mut self.detectors {
            d.clock_jumped();
        }
        self.monitor = Monitor::new(
            ms(self.cfg.detect.gap_reset_ms),
            ms(self.cfg.detect.forget_after_ms),
        );
    }

    fn to_wall(&self, core: Instant) -> Instant {
        let w = i128::from(core.as_micros()) + self.offset;
        Instant::from_micros(u64::try_from(w.max(0)).unwrap_or(u64::MAX))
    }

    // ---- inputs -----------------------------------------------------------------------------

    /// Replaces the topology (from the link-state database; undirected).
    pub fn set_topology(&mut self, now: Instant, topology: Topology) {
        let now = self.advance(now);
        let before = std::mem::replace(&mut self.topology, topology);
        for d in &mut self.detectors {
            d.topology_changed(&before, &self.topology);
        }
        self.enforce_reachability(now);
        self.step(now);
    }

    /// Handles one sample taken at `now`.
    pub fn handle_sample(&mut self, now: Instant, sample: Sample) {
        self.handle_samples(now, [sample]);
    }

    /// Handles the samples of one sampling round, all taken at `now`, as one observation of
    /// the node: every sample is seen by the detectors before any symptom is judged, and the
    /// loop plans once, after all of them. So two links degraded in the same round point at
    /// this node (`incidents.self_share`) before either link is acted on, and a rise of the
    /// link RTTs that this node's own scheduling delay explains is not taken for the links'
    /// (the RTT the routing core measures includes the time this node took to read the
    /// answer: a stalled runtime inflates every RTT at once). A link RTT anomaly whose excess
    /// over its baseline is at most the longest runtime stall this node reported in the last
    /// few seconds ([`crate::ProcessStats::loop_stall_ms`]) is left out and counted
    /// ([`HealStats::explained_by_lag`]).
    pub fn handle_samples(&mut self, now: Instant, samples: impl IntoIterator<Item = Sample>) {
        let now = self.advance(now);
        let mut symptoms = Vec::new();
        for sample in samples {
            self.ingest(now, sample, &mut symptoms);
        }
        self.absorb(now, &symptoms);
        self.step(now);
    }

    fn ingest(&mut self, now: Instant, sample: Sample, symptoms: &mut Vec<Symptom>) {
        self.stats.samples += 1;
        match &sample {
            Sample::Link(s) => {
                self.links.insert(s.link.id, s.link);
                self.correlator.note_link(s.link, s.state == LinkState::Up);
            }
            Sample::Probe(p) if p.on_route && p.received <= p.sent && p.sent > 0 => {
                let good = self.delivery_good(p.dst, p.received == p.sent, p.rtt_ms);
                self.note_delivery(now, p.dst, &p.relays, good);
            }
            _ => {}
        }
        let observations = self.monitor.observe(now, &sample);
        if let Sample::Process(p) = &sample
            && let Some(stall) = p.loop_stall_ms
            && stall.is_finite()
            && (0.0..=MAX_STALL_MS).contains(&stall)
        {
            self.lag.push_back((now, stall));
        }
        while self
            .lag
            .front()
            .is_some_and(|(at, _)| now.saturating_since(*at) > LAG_EXPLAINS)
            || self.lag.len() > MAX_LAG_SAMPLES
        {
            self.lag.pop_front();
        }
        for d in &mut self.detectors {
            d.observe(now, &sample, &observations, symptoms);
        }
    }

    /// Whether this node's own recent scheduling delay explains `s`, a rise of one of our
    /// link RTTs.
    fn explained_by_lag(&self, now: Instant, s: &Symptom) -> bool {
        let rtt = matches!(
            s.kind,
            SymptomKind::Anomaly {
                metric: Metric::RttMs,
                ..
            } | SymptomKind::ChangePoint {
                metric: Metric::RttMs
            }
        );
        if !rtt || !matches!(s.subject, Subject::Link(_)) {
            return false;
        }
        let stall = self
            .lag
            .iter()
            .filter(|(at, _)| now.saturating_since(*at) <= LAG_EXPLAINS)
            .map(|(_, v)| *v)
            .fold(0.0f64, f64::max);
        stall > 0.0 && s.value - s.expected <= stall
    }

    /// Forgets one of our links that is gone for good (its neighbour left and the daemon
    /// stopped sampling it): it no longer counts among our links for the health state and the
    /// share of degraded links. Its open incident resolves as its symptoms stop; restrictions
    /// on it are undone as usual.
    pub fn forget_link(&mut self, now: Instant, link: LinkId) {
        let now = self.advance(now);
        self.links.remove(&link);
        self.correlator.forget_link(link);
        self.step(now);
    }

    /// Handles the deadline from [`Healer::poll_timeout`] (calling it early is harmless).
    pub fn handle_timeout(&mut self, now: Instant) {
        let now = self.advance(now);
        let mut symptoms = Vec::new();
        for d in &mut self.detectors {
            d.tick(now, &mut symptoms);
        }
        self.absorb(now, &symptoms);
        self.monitor.prune(now);
        self.step(now);
    }

    /// The executor's report on an action.
    pub fn action_result(&mut self, now: Instant, id: ActionId, result: ActionResult) {
        let now = self.advance(now);
        self.finish(now, id, result);
        self.step(now);
    }

    /// Runs every pending action through a synchronous executor. Returns how many ran.
    pub fn execute_with(&mut self, now: Instant, executor: &mut dyn Executor) -> usize {
        let mut n = 0;
        while let Some(a) = self.poll_action() {
            let r = executor.execute(now, &a);
            self.action_result(now, a.id, r);
            n += 1;
        }
        n
    }

    // ---- outputs ----------------------------------------------------------------------------

    /// The next action to carry out (never in observe mode).
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The next record for the knowledge base and audit log.
    pub fn poll_record(&mut self) -> Option<Record> {
        self.records.pop_front()
    }

    /// When [`Healer::handle_timeout`] should next be called (on the caller's clock). Never
    /// later than one maximal sampling interval.
    pub fn poll_timeout(&self) -> Instant {
        let mut t = self.now + ms(self.cfg.sampling.interval_max_ms);
        let mut at = |x: Instant| t = t.min(x);
        if let Some(r) = self.correlator.next_resolution() {
            at(r);
        }
        self.in_flight.values().for_each(|f| at(f.deadline));
        self.awaiting.values().for_each(|a| at(a.deadline));
        self.restrictions
            .values()
            .filter_map(|r| r.release_at)
            .for_each(&mut at);
        self.plans
            .values()
            .filter_map(|p| p.wait_until)
            .for_each(&mut at);
        if let Some(c) = self.last_closed_at {
            let end = c + ms(self.cfg.incidents.recovering_hold_ms);
            if end > self.now {
                at(end);
            }
        }
        at(self.next_baselines_at);
        self.to_wall(t.max(self.now))
    }

    // ---- queries ----------------------------------------------------------------------------

    /// The health state with its reasons.
    pub fn health(&self) -> &Health {
        &self.health
    }

    /// How long the monitor should wait before the next round of samples.
    pub fn sampling_interval(&self) -> Duration {
        let suspicious = self.detectors.iter().any(|d| d.suspicious());
        sampling_interval(self.health.state, suspicious, &self.cfg.sampling)
    }

    /// Open incidents.
    pub fn incidents(&self) -> impl Iterator<Item = &Incident> {
        self.correlator.open()
    }

    /// Recently closed incidents, oldest first.
    pub fn recent_incidents(&self) -> impl Iterator<Item = &Incident> {
        self.correlator.recent()
    }

    /// An incident, open or recently closed.
    pub fn incident(&self, id: IncidentId) -> Option<&Incident> {
        self.correlator.get(id)
    }

    /// Restrictions in force (in observe mode: the ones that would be).
    pub fn restrictions(&self) -> impl Iterator<Item = &Restriction> {
        self.restrictions.values()
    }

    /// Suspected black holes that need corroboration, with the nodes behind each: relays of
    /// open `black_hole` incidents not yet confident enough to act on (one destination
    /// implicates them, or several that one other node explains), and their other
    /// neighbours in the topology. Hand them to [`crate::Prober::corroborate`]: probes to the
    /// nodes behind a relay, through it, give evidence with nothing in common but the relay.
    pub fn corroboration_wanted(&self) -> Vec<(NodeId, Vec<NodeId>)> {
        self.correlator
            .open()
            .filter(|i| {
                i.problem == Problem::BlackHole && i.confidence < self.cfg.incidents.act_confidence
            })
            .filter_map(|i| match i.cause {
                Cause::Node(relay) => Some(relay),
                _ => None,
            })
            .map(|relay| {
                let behind = self
                    .topology
                    .neighbors(&relay)
                    .filter(|n| **n != self.me)
                    .copied()
                    .collect();
                (relay, behind)
            })
            .collect()
    }

    /// The latest planned actions, with the mode they were planned in.
    pub fn planned(&self) -> impl Iterator<Item = &(Mode, Action)> {
        self.planned.iter()
    }

    /// Counters.
    pub fn stats(&self) -> HealStats {
        HealStats {
            dropped_symptoms: self.correlator.dropped(),
            monitor: self.monitor.stats(),
            ..self.stats
        }
    }

    /// The outcome statistics the planner ranks by.
    pub fn success_rates(&self) -> &SuccessRates {
        &self.rates
    }

    /// The current learned baselines.
    pub fn baselines(&self) -> Vec<Baseline> {
        self.detectors.iter().flat_map(|d| d.baselines()).collect()
    }

    // ---- analyze ----------------------------------------------------------------------------

    fn absorb(&mut self, now: Instant, symptoms: &[Symptom]) {
        let mut events = Vec::new();
        for s in symptoms {
            self.stats.symptoms += 1;
            if self.explained_by_lag(now, s) {
                self.stats.explained_by_lag += 1;
                continue;
            }
            let before = events.len();
            self.correlator.absorb(now, s, &mut events);
            for e in &events[before..] {
                if let IncidentEvent::Symptom {
                    incident,
                    recorded: true,
                } = e
                {
                    self.records.push_back(Record::Symptom {
                        incident: *incident,
                        symptom: s.clone(),
                    });
                }
            }
        }
        self.handle_events(now, events);
    }

    fn handle_events(&mut self, now: Instant, events: Vec<IncidentEvent>) {
        for e in events {
            match e {
                IncidentEvent::Opened(id) => {
                    self.stats.incidents += 1;
                    if let Some(i) = self.correlator.get(id) {
                        self.records.push_back(Record::IncidentOpened {
                            incident: id,
                            cause: i.cause,
                            problem: i.problem,
                            confidence: i.confidence,
                            symptom: i.last_symptom.clone(),
                        });
                        let cause = i.cause;
                        self.adopt(now, id, cause);
                    }
                }
                IncidentEvent::Changed(id) => {
                    if let Some(i) = self.correlator.get(id) {
                        self.records.push_back(Record::IncidentChanged {
                            incident: id,
                            cause: i.cause,
                            problem: i.problem,
                            confidence: i.confidence,
                        });
                    }
                }
                IncidentEvent::Closed(id) => self.closed(now, id),
                IncidentEvent::Symptom { .. } => {}
            }
        }
    }

    /// A new incident about a target whose restriction is waiting for release takes it over,
    /// with the hold extended as for a repeat offence.
    fn adopt(&mut self, now: Instant, id: IncidentId, cause: Cause) {
        let Some(target) = cause_target(cause) else {
            return;
        };
        let mut adopted = Vec::new();
        for r in self.restrictions.values_mut() {
            if r.release_at.is_some() && r.target() == Some(target) {
                let class = r.kind.class();
                let hold = self.pacing.holds.strike(class, target, now);
                r.incident = id;
                r.release_at = None;
                r.hold_until = r.hold_until.max(now + hold);
                adopted.push(class);
            }
        }
        if !adopted.is_empty()
            && let Some(i) = self.correlator.get(id)
        {
            self.plans.insert(
                id,
                PlanState {
                    cause: i.cause,
                    problem: i.problem,
                    tried: adopted.into_iter().collect(),
                    alerted: false,
                    mitigated: true,
                    wait_until: None,
                },
            );
        }
    }

    fn closed(&mut self, now: Instant, id: IncidentId) {
        let Some(inc) = self.correlator.get(id).cloned() else {
            return;
        };
        let Some((_, resolution)) = inc.closed else {
            return;
        };
        self.last_closed_at = Some(now);
        self.records.push_back(Record::IncidentClosed {
            incident: id,
            cause: inc.cause,
            problem: inc.problem,
            resolution,
            open_ms: millis(inc.last_symptom_at.saturating_since(inc.opened_at)),
            symptoms: inc.symptoms,
        });
        // Outcomes: a cleared cause is a success for the actions awaiting one.
        let waiting: Vec<ActionId> = self
            .awaiting
            .iter()
            .filter(|(_, a)| a.incident == id)
            .map(|(k, _)| *k)
            .collect();
        for a in waiting {
            // A merge says the cause was elsewhere: no verdict on the action.
            if let Some(w) = self.awaiting.remove(&a)
                && resolution == Resolution::Cleared
            {
                let recover = inc.last_symptom_at.saturating_since(w.done_at);
                self.outcome(a, &w, true, Some(millis(recover)));
            }
        }
        for r in self.restrictions.values_mut() {
            if r.incident == id && r.release_at.is_none() {
                // A merge means the diagnosis was wrong: undo at once, whatever the hold.
                r.release_at = Some(match resolution {
                    Resolution::Cleared => r.hold_until.max(now),
                    Resolution::Merged(_) => now,
                });
            }
        }
        self.plans.remove(&id);
    }

    /// Whether an on-route probe round delivered as usual: all answered, and no slower than
    /// 1.5× the destination's usual RTT plus 10 ms. The usual RTT is learned while no incident
    /// is open.
    fn delivery_good(&mut self, dst: NodeId, all_answered: bool, rtt_ms: Option<f64>) -> bool {
        let rtt = rtt_ms.filter(|r| r.is_finite() && *r >= 0.0 && *r <= 60_000.0);
        let (Some(rtt), true) = (rtt, all_answered) else {
            return all_answered;
        };
        let quiet = self.correlator.open().next().is_none();
        let entry = self.usual_rtt.entry(dst).or_insert((rtt, 0));
        let good = entry.1 < 10 || rtt <= entry.0 * 1.5 + 10.0;
        if quiet && good {
            entry.1 = entry.1.saturating_add(1);
            let a = (1.0 / f64::from(entry.1)).max(0.05);
            entry.0 += a * (rtt - entry.0);
        }
        if self.usual_rtt.len() > self.cfg.detect.max_series {
            self.usual_rtt.clear();
        }
        good
    }

    /// Tracks end-to-end delivery for the outcomes of steering actions: a destination whose
    /// on-route path went through an incident's cause recovers when it has had
    /// [`RECOVER_ROUNDS`] good rounds in a row along paths that avoid the cause.
    fn note_delivery(&mut self, now: Instant, dst: NodeId, relays: &[NodeId], good: bool) {
        self.on_route.push_back((now, dst, relays.to_vec()));
        while self.on_route.len() > ON_ROUTE_KEPT
            || self
                .on_route
                .front()
                .is_some_and(|(t, ..)| now.saturating_since(*t) > ON_ROUTE_AGE)
        {
            self.on_route.pop_front();
        }
        for a in self.awaiting.values_mut() {
            if !a.class.steers() {
                continue;
            }
            if path_uses(a.cause, dst, relays) {
                // Still through the cause: not recovered (yet).
                if let Some(e) = a.delivery.get_mut(&dst) {
                    *e = (0, None);
                } else if dst_can_avoid(a.cause, dst) {
                    a.delivery.insert(dst, (0, None));
                }
            } else if let Some((streak, first)) = a.delivery.get_mut(&dst) {
                if good {
                    if *streak == 0 {
                        *first = Some(now);
                    }
                    *streak = streak.saturating_add(1);
                } else {
                    *streak = 0;
                    *first = None;
                }
            }
        }
    }

    // ---- plan and execute -------------------------------------------------------------------

    fn step(&mut self, now: Instant) {
        let mut events = Vec::new();
        self.correlator.resolve_quiet(now, &mut events);
        self.handle_events(now, events);
        self.expire(now);
        self.release(now);
        let ids: Vec<IncidentId> = {
            let mut open: Vec<&Incident> = self.correlator.open().collect();
            open.sort_by(|a, b| b.confidence.total_cmp(&a.confidence).then(a.id.cmp(&b.id)));
            open.into_iter().map(|i| i.id).collect()
        };
        for id in ids {
            self.plan(now, id);
        }
        self.update_health(now);
        if now >= self.next_baselines_at {
            self.next_baselines_at = now + ms(self.cfg.incidents.baseline_snapshot_ms);
            let baselines = self.baselines();
            if !baselines.is_empty() {
                self.records.push_back(Record::Baselines { baselines });
            }
        }
    }

    /// Deadlines: results that never came, outcome windows that passed, recoveries seen.
    fn expire(&mut self, now: Instant) {
        let late: Vec<ActionId> = self
            .in_flight
            .iter()
            .filter(|(_, f)| now >= f.deadline)
            .map(|(k, _)| *k)
            .collect();
        for id in late {
            self.finish(
                now,
                id,
                ActionResult::Failed("no result before the timeout".into()),
            );
        }
        let settled: Vec<(ActionId, Option<Option<u64>>)> = self
            .awaiting
            .iter()
            .filter_map(|(id, a)| {
                let recovered = a.class.steers()
                    && !a.delivery.is_empty()
                    && a.delivery.values().all(|(s, _)| *s >= RECOVER_ROUNDS);
                if recovered && !a.observed {
                    let at = a.delivery.values().filter_map(|(_, f)| *f).max();
                    let ms_ = at.map(|t| millis(t.saturating_since(a.done_at)));
                    Some((*id, Some(ms_)))
                } else if now >= a.deadline {
                    Some((*id, None))
                } else {
                    None
                }
            })
            .collect();
        for (id, verdict) in settled {
            let Some(a) = self.awaiting.remove(&id) else {
                continue;
            };
            match verdict {
                Some(recover_ms) => {
                    self.outcome(id, &a, true, recover_ms);
                    if let Some(p) = self.plans.get_mut(&a.incident) {
                        p.mitigated = true;
                    }
                }
                None => {
                    if !a.observed {
                        self.outcome(id, &a, false, None);
                    }
                    // Escalate: the next candidate may be tried.
                }
            }
        }
    }

    fn outcome(&mut self, id: ActionId, a: &Awaiting, recovered: bool, recover_ms: Option<u64>) {
        if a.observed {
            return;
        }
        self.rates.record(a.class, a.problem, recovered, recover_ms);
        self.records.push_back(Record::Outcome {
            action: id,
            incident: a.incident,
            class: a.class,
            problem: a.problem,
            recovered,
            recover_ms,
        });
    }

    fn finish(&mut self, now: Instant, id: ActionId, result: ActionResult) {
        let Some(f) = self.in_flight.remove(&id) else {
            self.stats.unknown_results += 1;
            return;
        };
        let class = f.action.kind.class();
        self.records.push_back(Record::ActionFinished {
            action: id,
            class,
            result: result.clone(),
        });
        match (&result, class) {
            (ActionResult::Done, ActionClass::Undo) => {
                self.undoing.remove(&id);
            }
            (ActionResult::Done, ActionClass::Alert) => {}
            (ActionResult::Done, _) => {
                self.start_outcome(now, &f.action, f.problem, false);
            }
            (ActionResult::Failed(_), ActionClass::Undo) => {
                // The restriction is still in force at the executor: try again later.
                if let Some(mut r) = self.undoing.remove(&id) {
                    r.release_at = Some(now + ms(self.cfg.plan.retry_base_ms));
                    self.restrictions.insert(r.action, r);
                }
            }
            (ActionResult::Failed(_), ActionClass::Alert) => {}
            (ActionResult::Failed(_), _) => {
                self.restrictions.remove(&id);
                let a = Awaiting {
                    incident: f.action.incident,
                    class,
                    problem: f.problem,
                    cause: Cause::Local,
                    done_at: now,
                    deadline: now,
                    observed: false,
                    delivery: BTreeMap::new(),
                };
                self.outcome(id, &a, false, None);
            }
        }
    }

    fn start_outcome(&mut self, now: Instant, action: &Action, problem: Problem, observed: bool) {
        // Destinations whose on-route path went through the cause during the incident (or
        // just before it was opened); more join if their traffic still goes that way.
        let cause = self
            .correlator
            .get(action.incident)
            .map_or(Cause::Local, |i| i.cause);
        let since = self
            .correlator
            .get(action.incident)
            .map_or(now, |i| i.opened_at)
            .min(now - ms(self.cfg.detect.blackhole_window_ms));
        let delivery: BTreeMap<NodeId, (u32, Option<Instant>)> = self
            .on_route
            .iter()
            .filter(|(t, dst, relays)| {
                *t >= since && path_uses(cause, *dst, relays) && dst_can_avoid(cause, *dst)
            })
            .map(|(_, dst, _)| (*dst, (0, None)))
            .collect();
        self.awaiting.insert(
            action.id,
            Awaiting {
                incident: action.incident,
                class: action.kind.class(),
                problem,
                cause,
                done_at: now,
                deadline: now + ms(self.cfg.plan.outcome_window_ms),
                observed,
                delivery,
            },
        );
    }

    /// Whether an action for this incident and problem is in flight or awaiting its outcome
    /// (an action for a problem the incident no longer has does not block the new one).
    fn busy(&self, id: IncidentId, problem: Problem) -> bool {
        self.in_flight
            .values()
            .any(|f| f.action.incident == id && f.action.kind.class() != ActionClass::Alert)
            || self
                .awaiting
                .values()
                .any(|a| a.incident == id && a.problem == problem)
    }

    /// The restrictions as a cut, and our links with their exclusion state.
    fn cut(&self) -> (Cut, BTreeMap<u64, (LinkRef, bool)>) {
        let excluded: BTreeSet<LinkId> = self
            .restrictions
            .values()
            .filter_map(|r| match r.kind {
                ActionKind::ExcludeLink { link, .. } => Some(link.id),
                _ => None,
            })
            .collect();
        let links: BTreeMap<u64, (LinkRef, bool)> = self
            .links
            .iter()
            .map(|(id, l)| (*id, (*l, excluded.contains(id))))
            .collect();
        let mut cut = Cut::default();
        for r in self.restrictions.values() {
            match r.kind {
                ActionKind::ExcludeLink { link, .. } => {
                    let other = links
                        .values()
                        .any(|(l, ex)| l.neighbor == link.neighbor && l.id != link.id && !ex);
                    if !other {
                        cut.excluded_edges.insert(edge(self.me, link.neighbor));
                    }
                }
                ActionKind::QuarantineNode { node, .. } => {
                    cut.non_transit.insert(node);
                }
                _ => {}
            }
        }
        (cut, links)
    }

    fn plan(&mut self, now: Instant, id: IncidentId) {
        let Some(inc) = self.correlator.get(id) else {
            return;
        };
        if !inc.is_open() || inc.confidence < self.cfg.incidents.act_confidence {
            return;
        }
        let (cause, problem) = (inc.cause, inc.problem);
        let ps = self.plans.entry(id).or_insert(PlanState {
            cause,
            problem,
            tried: BTreeSet::new(),
            alerted: false,
            mitigated: false,
            wait_until: None,
        });
        if ps.cause != cause || ps.problem != problem {
            ps.cause = cause;
            ps.problem = problem;
            ps.tried.clear();
            ps.alerted = false;
            ps.mitigated = false;
        }
        if ps.mitigated || ps.wait_until.is_some_and(|t| now < t) {
            return;
        }
        ps.wait_until = None;
        if self.busy(id, problem) {
            return;
        }
        if !self.pacing.bucket.available(now) {
            // No token: nothing but an alert could be done now; try again when there is one.
            self.stats.rate_limited += 1;
            let next = self.pacing.bucket.next_token();
            if let Some(p) = self.plans.get_mut(&id) {
                p.wait_until = Some(next);
            }
            return;
        }
        let summary = match self.correlator.get(id) {
            Some(inc) => format!(
                "{} on {} (confidence {:.2}): {}",
                problem.as_str(),
                cause,
                inc.confidence,
                inc.last_symptom
            ),
            None => return,
        };
        let tried = self
            .plans
            .get(&id)
            .map(|p| p.tried.clone())
            .unwrap_or_default();
        let (cut, links) = self.cut();
        let view = SafetyView {
            me: self.me,
            topology: &self.topology,
            cut: &cut,
            links: &links,
        };
        let mut skipped = Vec::new();
        let mut choice = None;
        for (class, score) in ranked(problem, &self.rates, self.cfg.plan.prior_weight) {
            if tried.contains(&class) {
                continue;
            }
            let target = cause_target(cause);
            if let (ActionClass::RestartLink | ActionClass::RekeyLink, Some(t)) = (class, target) {
                let ready = self.pacing.retries.ready_at(class, t, now);
                if ready > now {
                    if let Some(p) = self.plans.get_mut(&id) {
                        p.wait_until = Some(ready);
                    }
                    return;
                }
            }
            let hold = match target {
                Some(t) => self.pacing.holds.peek(class, t, now),
                None => Duration::ZERO,
            };
            match instantiate(class, cause, &self.cfg.plan, &view, hold) {
                Ok(kind) => {
                    choice = Some((class, score, kind, hold));
                    break;
                }
                Err(why) => {
                    self.stats.refused += 1;
                    skipped.push(Skipped { class, why });
                    if why == Refusal::AlreadyInForce
                        && let Some(p) = self.plans.get_mut(&id)
                    {
                        p.tried.insert(class);
                    }
                }
            }
        }
        match choice {
            Some((class, score, kind, hold)) => {
                if !self.pacing.bucket.take(now) {
                    self.stats.rate_limited += 1;
                    let next = self.pacing.bucket.next_token();
                    if let Some(p) = self.plans.get_mut(&id) {
                        p.wait_until = Some(next);
                    }
                    return;
                }
                if let Some(t) = cause_target(cause) {
                    match class {
                        ActionClass::RestartLink | ActionClass::RekeyLink => {
                            self.pacing.retries.strike(class, t, now);
                        }
                        ActionClass::ExcludeLink | ActionClass::QuarantineNode => {
                            self.pacing.holds.strike(class, t, now);
                        }
                        _ => {}
                    }
                }
                if let Some(p) = self.plans.get_mut(&id) {
                    p.tried.insert(class);
                }
                self.emit(now, id, problem, kind, None, summary, score, skipped, hold);
            }
            None => {
                let alerted = self.plans.get(&id).is_some_and(|p| p.alerted);
                if !alerted {
                    if let Some(p) = self.plans.get_mut(&id) {
                        p.alerted = true;
                    }
                    let kind = ActionKind::Alert {
                        summary: summary.clone(),
                    };
                    self.emit(
                        now,
                        id,
                        problem,
                        kind,
                        None,
                        summary,
                        0.0,
                        skipped,
                        Duration::ZERO,
                    );
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn emit(
        &mut self,
        now: Instant,
        incident: IncidentId,
        problem: Problem,
        kind: ActionKind,
        undo_of: Option<ActionId>,
        reason: String,
        score: f64,
        skipped: Vec<Skipped>,
        hold: Duration,
    ) {
        let id = ActionId(self.next_action);
        self.next_action += 1;
        let action = Action {
            id,
            incident,
            kind: kind.clone(),
            undo_of,
            reason,
        };
        self.records.push_back(Record::ActionPlanned {
            action: action.clone(),
            mode: self.mode,
            score,
            skipped,
        });
        if self.planned.len() >= PLANNED_KEPT {
            self.planned.pop_front();
        }
        self.planned.push_back((self.mode, action.clone()));
        if undo_of.is_some() {
            self.stats.undos += 1;
        }
        if is_restriction(&kind) {
            self.restrictions.insert(
                id,
                Restriction {
                    action: id,
                    incident,
                    kind: kind.clone(),
                    hold_until: now + hold,
                    release_at: None,
                },
            );
        }
        match self.mode {
            Mode::Act => {
                self.stats.actions += 1;
                self.in_flight.insert(
                    id,
                    InFlight {
                        action: action.clone(),
                        problem,
                        deadline: now + ms(self.cfg.plan.action_timeout_ms),
                    },
                );
                self.actions.push_back(action);
            }
            Mode::Observe => {
                self.stats.observed += 1;
                let class = kind.class();
                if class != ActionClass::Undo && class != ActionClass::Alert {
                    // Pretend it was done, so that the schedule (outcome window, escalation,
                    // undo) runs as it would.
                    self.start_outcome(now, &action, problem, true);
                }
            }
        }
    }

    /// Undoes restrictions whose incident closed and whose hold passed (one token each).
    fn release(&mut self, now: Instant) {
        let mut due: Vec<(Instant, ActionId)> = self
            .restrictions
            .values()
            .filter_map(|r| r.release_at.filter(|t| *t <= now).map(|t| (t, r.action)))
            .collect();
        due.sort();
        for (_, id) in due {
            if !self.pacing.bucket.take(now) {
                self.stats.rate_limited += 1;
                let next = self.pacing.bucket.next_token();
                for r in self.restrictions.values_mut() {
                    if let Some(t) = r.release_at
                        && t <= now
                    {
                        r.release_at = Some(next);
                    }
                }
                return;
            }
            self.undo(now, id, "cause cleared");
        }
    }

    fn undo(&mut self, now: Instant, id: ActionId, why: &str) {
        let Some(r) = self.restrictions.remove(&id) else {
            return;
        };
        let Some(kind) = r.undo() else {
            return;
        };
        let problem = self
            .correlator
            .get(r.incident)
            .map_or(Problem::LinkDegraded, |i| i.problem);
        let reason = format!("undo {id}: {why}");
        if self.mode == Mode::Act {
            self.undoing.insert(ActionId(self.next_action), r.clone());
        }
        self.emit(
            now,
            r.incident,
            problem,
            kind,
            Some(id),
            reason,
            0.0,
            Vec::new(),
            Duration::ZERO,
        );
    }

    /// Undoes restrictions, newest first, while they make the mesh less connected than it
    /// is without them.
    fn enforce_reachability(&mut self, now: Instant) {
        loop {
            let (cut, _) = self.cut();
            if self.topology.preserves_reachability(&Cut::default(), &cut) {
                return;
            }
            let newest = self
                .restrictions
                .values()
                .filter(|r| {
                    matches!(
                        r.kind,
                        ActionKind::ExcludeLink { .. } | ActionKind::QuarantineNode { .. }
                    )
                })
                .map(|r| r.action)
                .max();
            let Some(id) = newest else {
                return;
            };
            self.stats.safety_undos += 1;
            self.undo(
                now,
                id,
                "safety: the topology changed and it would partition the mesh",
            );
        }
    }

    fn update_health(&mut self, now: Instant) {
        // The reasons are text; rebuild them only when something they say changed.
        let recently_closed = self
            .last_closed_at
            .is_some_and(|c| now.saturating_since(c) < ms(self.cfg.incidents.recovering_hold_ms));
        let signature = HealthSignature {
            open: self
                .correlator
                .open()
                .map(|i| (i.id, i.cause, i.problem, (i.confidence * 100.0) as u8))
                .collect(),
            links: self.correlator.link_counts(),
            held: self.restrictions.len(),
            awaiting: self.awaiting.len(),
            recently_closed,
        };
        if self.health_signature.as_ref() == Some(&signature) {
            return;
        }
        self.health_signature = Some(signature);
        let mut i = HealthInputs::default();
        let open: Vec<&Incident> = self.correlator.open().collect();
        for inc in &open {
            i.open.push(format!(
                "{}: {} on {} (confidence {:.2})",
                inc.id,
                inc.problem.as_str(),
                inc.cause,
                inc.confidence
            ));
            if inc.cause == Cause::Local && inc.confidence >= 0.8 {
                i.critical
                    .push(format!("{}: this node is under pressure", inc.id));
            }
        }
        if open.len() >= self.cfg.incidents.critical_open {
            i.critical.push(format!("{} incidents open", open.len()));
        }
        let (links, down) = self.correlator.link_counts();
        if links > 0 && down * 2 >= links && down > 0 {
            i.critical.push(format!("{down} of {links} links down"));
        }
        let held = self.restrictions.len();
        if held > 0 {
            i.pending.push(format!("{held} restrictions in force"));
        }
        if !self.awaiting.is_empty() {
            i.pending
                .push(format!("{} action outcomes pending", self.awaiting.len()));
        }
        i.recently_closed = recently_closed;
        let (state, reasons) = assess(&i);
        if state != self.health.state {
            self.records.push_back(Record::Health {
                state,
                reasons: reasons.clone(),
            });
            self.health.since = now;
        }
        self.health.state = state;
        self.health.reasons = reasons;
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::action::LocalExecutor;
    use crate::detect::SymptomKind;
    use crate::sample::{DownCause, LinkSample, Observation, PathProbe, Subject};
    use proptest::prelude::*;

    fn n(i: u8) -> NodeId {
        NodeId::from_bytes([i; 16])
    }

    fn t(ms_: u64) -> Instant {
        Instant::from_millis(ms_)
    }

    fn link(i: u8) -> LinkRef {
        LinkRef {
            id: u64::from(i),
            neighbor: n(i),
        }
    }

    /// Us (0) with neighbours 1..=k, all also joined in a ring, so that no single link or
    /// relay is a cut.
    fn ring_topology(k: u8) -> Topology {
        let mut t = Topology::new();
        for i in 1..=k {
            t.add_edge(n(0), n(i));
            t.add_edge(n(i), n(if i == k { 1 } else { i + 1 }));
        }
        t
    }

    fn healer(cfg: HealConfig) -> Healer {
        Healer::new(cfg, n(0), t(0)).unwrap()
    }

    fn drain(h: &mut Healer) -> Vec<Record> {
        std::iter::from_fn(|| h.poll_record()).collect()
    }

    fn down(h: &mut Healer, at: u64, i: u8) {
        h.handle_sample(
            t(at),
            Sample::Link(LinkSample::down(link(i), DownCause::Local)),
        );
    }

    /// A probe round showing `relay` as a black hole towards `dst` and towards a second
    /// destination, `dst + 100` (corroboration: a disjoint path via `other` works to each, and
    /// `relay` answers its own probes).
    fn black_hole_round(h: &mut Healer, at: u64, relay: u8, other: u8, dst: u8) {
        let second = dst + 100;
        for (dst, relays, ok) in [
            (relay, vec![], true),
            (dst, vec![other], true),
            (dst, vec![relay], false),
            (second, vec![other], true),
            (second, vec![relay], false),
        ] {
            h.handle_sample(
                t(at),
                Sample::Probe(PathProbe {
                    dst: n(dst),
                    relays: relays.into_iter().map(n).collect(),
                    sent: 1,
                    received: u32::from(ok),
                    rtt_ms: Some(1.0),
                    on_route: false,
                }),
            );
        }
    }

    /// Two links degraded in the same sampling round point at this node: neither link is
    /// acted on. Fed one by one, the first link's cost was raised (and undone at once) before
    /// the second link's symptom arrived, as in a healthy `x0t bench heal` run.
    #[test]
    fn links_degraded_in_one_round_point_at_this_node_before_either_is_acted_on() {
        let mut h = healer(HealConfig::default());
        let rtt = |i: u8, ms: f64| {
            Sample::Link(LinkSample {
                rtt_ms: Some(ms),
                loss: Some(0.0),
                ..LinkSample::up(link(i))
            })
        };
        let mut exec = LocalExecutor::new();
        for r in 0..80u64 {
            let (a, b) = if r < 60 {
                (1.0 + 0.01 * (r % 3) as f64, 1.2 - 0.01 * (r % 2) as f64)
            } else {
                (25.0, 30.0)
            };
            h.handle_samples(t(r * 500), [rtt(1, a), rtt(2, b)]);
            h.execute_with(t(r * 500), &mut exec);
        }
        let records = drain(&mut h);
        assert!(
            exec.log
                .iter()
                .all(|(_, a)| !matches!(a.kind, ActionKind::RaiseLinkCost { .. })),
            "{:?}",
            exec.log
        );
        assert!(records.iter().any(|r| matches!(
            r,
            Record::IncidentOpened {
                problem: Problem::LocalPressure,
                ..
            } | Record::IncidentChanged {
                problem: Problem::LocalPressure,
                ..
            }
        )));
    }

    #[test]
    fn a_forgotten_link_no_longer_counts_among_ours() {
        let mut h = healer(HealConfig::default());
        h.set_topology(t(0), ring_topology(2));
        h.handle_sample(t(0), Sample::Link(LinkSample::up(link(1))));
        down(&mut h, 0, 2);
        assert_eq!(h.health().state, HealthState::Critical, "1 of 2 links down");
        // The neighbour is gone for good: the daemon stops reporting it and forgets it.
        h.forget_link(t(100), 2);
        let mut at = 100;
        while at < 20_000 {
            h.handle_sample(t(at), Sample::Link(LinkSample::up(link(1))));
            h.handle_timeout(t(at));
            at += 500;
        }
        assert_ne!(h.health().state, HealthState::Critical);
        assert!(h.incidents().next().is_none(), "its incident resolved");
        assert!(
            !h.health().reasons.iter().any(|r| r.contains("links down")),
            "{:?}",
            h.health().reasons
        );
    }

    #[test]
    fn a_flood_of_symptoms_never_exceeds_the_action_rate() {
        let cfg = HealConfig::default();
        let mut h = healer(cfg.clone());
        h.set_topology(t(0), ring_topology(60));
        let mut exec = LocalExecutor::new();
        // Every link goes down and stays down, repeatedly reported, for two minutes.
        let mut at = 0;
        while at < 120_000 {
            for i in 1..=60 {
                down(&mut h, at, i);
            }
            h.handle_timeout(t(at));
            h.execute_with(t(at), &mut exec);
            at += 250;
        }
        let changing: Vec<_> = exec
            .log
            .iter()
            .filter(|(_, a)| a.kind.class() != ActionClass::Alert)
            .collect();
        let limit = cfg.plan.action_burst as usize + (120_000 / cfg.plan.action_refill_ms) as usize;
        assert!(!changing.is_empty());
        assert!(changing.len() <= limit, "{} > {limit}", changing.len());
        // …and never faster than the bucket in any window.
        for (i, (t0, _)) in changing.iter().enumerate() {
            let within = changing[i..]
                .iter()
                .take_while(|(t1, _)| t1.saturating_since(*t0) < ms(cfg.plan.action_refill_ms))
                .count();
            assert!(within <= cfg.plan.action_burst as usize + 1);
        }
        assert!(h.stats().rate_limited > 0);
        // Open incidents stay bounded too.
        assert!(h.incidents().count() <= cfg.incidents.max_open);
        assert_eq!(h.health().state, HealthState::Critical);
    }

    #[test]
    fn quarantine_share_and_partition_are_enforced() {
        // Us (0) with neighbours 1, 2, 3; destination 9 behind 1 and 2 (and 3 via 2).
        let topo = Topology::from_adjacency([
            (n(0), vec![n(1), n(2), n(3)]),
            (n(9), vec![n(1), n(2)]),
            (n(3), vec![n(2)]),
        ]);
        let mut h = healer(HealConfig::default());
        h.set_topology(t(0), topo);
        let mut exec = LocalExecutor::new();
        let mut at = 0;
        // 1 black-holes traffic to 9; then 2 does too.
        for _ in 0..10 {
            black_hole_round(&mut h, at, 1, 2, 9);
            h.execute_with(t(at), &mut exec);
            at += 100;
        }
        assert!(exec.quarantined.contains(&n(1)), "{:?}", exec.log);
        for _ in 0..10 {
            black_hole_round(&mut h, at, 2, 1, 9);
            h.execute_with(t(at), &mut exec);
            at += 100;
        }
        // 2 is not quarantined: that would be 2 of 3 neighbours, and would cut off 3 and 9.
        assert!(!exec.quarantined.contains(&n(2)));
        let refused: Vec<Refusal> = drain(&mut h)
            .into_iter()
            .filter_map(|r| match r {
                Record::ActionPlanned {
                    action, skipped, ..
                } if matches!(action.kind, ActionKind::Alert { .. }) => {
                    Some(skipped.into_iter().map(|s| s.why))
                }
                _ => None,
            })
            .flatten()
            .collect();
        assert!(refused.contains(&Refusal::QuarantineShare), "{refused:?}");
        assert!(exec.alerts.iter().any(|a| a.contains("black_hole")));
    }

    #[test]
    fn a_topology_change_that_makes_a_restriction_partition_undoes_it_at_once() {
        let mut h = healer(HealConfig::default());
        h.set_topology(t(0), ring_topology(3));
        let mut exec = LocalExecutor::new();
        for i in 0..10 {
            black_hole_round(&mut h, i * 100, 1, 2, 3);
            h.execute_with(t(i * 100), &mut exec);
        }
        assert!(exec.quarantined.contains(&n(1)));
        // Now 2 reaches the rest only through 1: keeping 1 quarantined would cut 2 off.
        let chain = Topology::from_adjacency([(n(0), vec![n(1), n(3)]), (n(1), vec![n(2)])]);
        h.set_topology(t(1_000), chain);
        h.execute_with(t(1_000), &mut exec);
        assert!(exec.quarantined.is_empty(), "{:?}", exec.log);
        assert_eq!(h.stats().safety_undos, 1);
        let (_, last) = exec.log.last().unwrap();
        assert!(last.reason.contains("safety"));
    }

    #[test]
    fn a_failed_action_escalates_to_the_next_candidate() {
        let mut h = healer(HealConfig::default());
        h.set_topology(t(0), ring_topology(3));
        let mut exec = LocalExecutor::new();
        exec.failing.insert(ActionClass::RaiseLinkCost);
        let lossy = |h: &mut Healer, at: u64| {
            h.handle_sample(
                t(at),
                Sample::Link(LinkSample {
                    loss: Some(0.4),
                    rtt_ms: Some(1.0),
                    ..LinkSample::up(link(1))
                }),
            );
        };
        for i in 0..5 {
            lossy(&mut h, i * 100);
            h.execute_with(t(i * 100), &mut exec);
        }
        let classes: Vec<ActionClass> = exec.log.iter().map(|(_, a)| a.kind.class()).collect();
        assert_eq!(
            classes,
            [ActionClass::RaiseLinkCost, ActionClass::ExcludeLink],
            "{:?}",
            exec.log
        );
        let recs = drain(&mut h);
        assert!(recs.iter().any(|r| matches!(
            r,
            Record::Outcome {
                class: ActionClass::RaiseLinkCost,
                recovered: false,
                ..
            }
        )));
        assert_eq!(
            h.success_rates().by_action[&(ActionClass::RaiseLinkCost, Problem::LinkDegraded)]
                .attempts,
            1
        );
    }

    #[test]
    fn an_action_without_a_result_times_out_as_failed() {
        let cfg = HealConfig::default();
        let mut h = healer(cfg.clone());
        h.set_topology(t(0), ring_topology(3));
        down(&mut h, 0, 1);
        let a = h.poll_action().expect("restart");
        assert!(matches!(a.kind, ActionKind::RestartLink { .. }));
        h.handle_timeout(t(cfg.plan.action_timeout_ms));
        let recs = drain(&mut h);
        assert!(recs.iter().any(|r| matches!(
            r,
            Record::ActionFinished {
                result: ActionResult::Failed(_),
                ..
            }
        )));
        // A late result for it is counted, not acted on.
        h.action_result(t(cfg.plan.action_timeout_ms + 1), a.id, ActionResult::Done);
        assert_eq!(h.stats().unknown_results, 1);
    }

    #[test]
    fn knowledge_changes_the_ranking_and_numbering_continues() {
        let mut rates = SuccessRates::default();
        for _ in 0..20 {
            rates.record(
                ActionClass::RaiseLinkCost,
                Problem::LinkDegraded,
                false,
                None,
            );
        }
        let mut h = healer(HealConfig::default());
        h.restore(&KnowledgeSnapshot {
            next_incident_id: 41,
            next_action_id: 77,
            rates,
            ..KnowledgeSnapshot::default()
        });
        h.set_topology(t(0), ring_topology(3));
        h.handle_sample(
            t(0),
            Sample::Link(LinkSample {
                loss: Some(0.4),
                ..LinkSample::up(link(2))
            }),
        );
        let a = h.poll_action().unwrap();
        assert_eq!(a.kind.class(), ActionClass::ExcludeLink);
        assert_eq!(a.id, ActionId(77));
        assert_eq!(a.incident, IncidentId(41));
    }

    #[test]
    fn repeat_offenders_get_longer_holds_after_a_restart_too() {
        let mut h = healer(HealConfig::default());
        h.restore(&KnowledgeSnapshot {
            offences: vec![Offence {
                class: ActionClass::QuarantineNode,
                node: n(1),
                count: 2,
            }],
            ..KnowledgeSnapshot::default()
        });
        h.set_topology(t(0), ring_topology(3));
        let mut exec = LocalExecutor::new();
        for i in 0..10 {
            black_hole_round(&mut h, i * 100, 1, 2, 3);
            h.execute_with(t(i * 100), &mut exec);
        }
        let hold = exec.log.iter().find_map(|(_, a)| match a.kind {
            ActionKind::QuarantineNode { hold_ms, .. } => Some(hold_ms),
            _ => None,
        });
        assert_eq!(hold, Some(4 * HealConfig::default().plan.hold_base_ms));
    }

    #[test]
    fn clock_jumps_are_not_elapsed_time() {
        let cfg = HealConfig::default();
        let mut h = healer(cfg.clone());
        h.set_topology(t(0), ring_topology(3));
        down(&mut h, 1_000, 1);
        assert!(h.incidents().count() == 1);
        let deadline = h.poll_timeout();
        // Backwards: nothing moves; the deadline is translated to the new clock.
        h.handle_timeout(t(500));
        assert_eq!(h.stats().clock_backwards, 1);
        assert_eq!(h.incidents().count(), 1);
        assert!(h.poll_timeout() < deadline);
        // A leap of an hour is not an hour of silence: the incident does not resolve by it.
        h.handle_timeout(t(3_600_000));
        assert_eq!(h.stats().clock_leaps, 1);
        assert_eq!(
            h.incidents().count(),
            1,
            "the jump did not count as quiet time"
        );
        // Ordinary time after the jump counts again.
        let after = 3_600_000 + cfg.incidents.resolve_after_ms + 1_000;
        let mut at = 3_600_000;
        while at <= after {
            h.handle_timeout(t(at));
            at += 400;
        }
        assert_eq!(h.incidents().count(), 0);
    }

    #[test]
    fn health_drives_the_sampling_interval() {
        let cfg = HealConfig::default();
        let mut h = healer(cfg.clone());
        h.set_topology(t(0), ring_topology(4));
        for i in 1..=4 {
            h.handle_sample(t(0), Sample::Link(LinkSample::up(link(i))));
        }
        assert_eq!(h.health().state, HealthState::Optimal);
        assert_eq!(h.sampling_interval(), ms(cfg.sampling.interval_max_ms));
        down(&mut h, 0, 1);
        assert_eq!(h.health().state, HealthState::Degraded);
        assert!(!h.health().reasons.is_empty());
        assert_eq!(h.sampling_interval(), ms(cfg.sampling.interval_min_ms));
        // The link comes back: once quiet, the incident closes and health recovers.
        let mut at = 0;
        while h.incidents().count() > 0 {
            at += 100;
            h.handle_sample(t(at), Sample::Link(LinkSample::up(link(1))));
        }
        assert_eq!(h.health().state, HealthState::Recovering);
        assert!(h.sampling_interval() > ms(cfg.sampling.interval_min_ms));
        assert!(h.sampling_interval() < ms(cfg.sampling.interval_max_ms));
        // (Time passes in steps: one long step would be a clock jump.)
        let end = at + cfg.plan.outcome_window_ms + cfg.incidents.recovering_hold_ms;
        while at < end {
            at += 1_000;
            h.handle_timeout(t(at));
        }
        assert_eq!(h.health().state, HealthState::Optimal);
        let changes: Vec<HealthState> = drain(&mut h)
            .into_iter()
            .filter_map(|r| match r {
                Record::Health { state, .. } => Some(state),
                _ => None,
            })
            .collect();
        assert_eq!(
            changes,
            [
                HealthState::Degraded,
                HealthState::Recovering,
                HealthState::Optimal
            ]
        );
    }

    /// A stand-in for the future GNN detector: reports a node it was told is anomalous.
    #[derive(Debug)]
    struct Oracle(NodeId);

    impl Detector for Oracle {
        fn name(&self) -> &'static str {
            "gnn"
        }
        fn observe(&mut self, _: Instant, _: &Sample, _: &[Observation], out: &mut Vec<Symptom>) {
            out.push(Symptom {
                detector: "gnn",
                subject: Subject::Node(self.0),
                kind: SymptomKind::PathBlackHole {
                    dst: self.0,
                    failing: vec![self.0],
                    working: vec![],
                },
                value: 1.0,
                expected: 0.0,
                confidence: 0.9,
            });
        }
    }

    #[test]
    fn another_detector_plugs_in_beside_the_statistical_ones() {
        let mut h = healer(HealConfig::default());
        h.set_topology(t(0), ring_topology(4));
        h.add_detector(Box::new(Oracle(n(3))));
        h.handle_sample(t(0), Sample::Link(LinkSample::up(link(1))));
        let a = h.poll_action().unwrap();
        assert_eq!(
            a.kind,
            ActionKind::QuarantineNode {
                node: n(3),
                hold_ms: HealConfig::default().plan.hold_base_ms
            }
        );
        let recs = drain(&mut h);
        assert!(
            recs.iter()
                .any(|r| matches!(r, Record::Symptom { symptom, .. } if symptom.detector == "gnn"))
        );
    }

    #[test]
    fn a_failed_undo_is_retried() {
        let cfg = HealConfig::default();
        let mut h = healer(cfg.clone());
        h.set_topology(t(0), ring_topology(3));
        let mut exec = LocalExecutor::new();
        for i in 0..10 {
            black_hole_round(&mut h, i * 100, 1, 2, 3);
            h.execute_with(t(i * 100), &mut exec);
        }
        assert!(exec.quarantined.contains(&n(1)));
        exec.failing.insert(ActionClass::Undo);
        // Cause clears; the hold passes; the release fails, then succeeds on a retry.
        let mut at = 1_000;
        let end = cfg.plan.hold_base_ms + 20_000;
        while at < end {
            h.handle_timeout(t(at));
            h.execute_with(t(at), &mut exec);
            if at > cfg.plan.hold_base_ms + 2_000 {
                exec.failing.clear();
            }
            at += 500;
        }
        let releases = exec
            .log
            .iter()
            .filter(|(_, a)| matches!(a.kind, ActionKind::ReleaseNode { .. }))
            .count();
        assert!(releases >= 2, "{:?}", exec.log);
        assert!(exec.quarantined.is_empty());
        assert_eq!(h.restrictions().count(), 0);
    }

    fn any_sample() -> impl Strategy<Value = Sample> {
        let f = prop_oneof![
            3 => -10.0f64..1000.0,
            1 => Just(f64::NAN),
            1 => Just(f64::INFINITY),
            1 => Just(f64::NEG_INFINITY),
        ];
        let counter = prop_oneof![0u64..1000, Just(u64::MAX), Just(0u64)];
        prop_oneof![
            (
                0u8..4,
                any::<bool>(),
                f.clone(),
                f.clone(),
                0u32..5,
                prop::option::of(counter.clone())
            )
                .prop_map(|(i, up, rtt, loss, misses, rx)| Sample::Link(LinkSample {
                    state: if up {
                        LinkState::Up
                    } else {
                        LinkState::Down(DownCause::Silent)
                    },
                    rtt_ms: Some(rtt),
                    loss: Some(loss),
                    probe_misses: misses,
                    rx_bytes: rx,
                    ..LinkSample::up(link(i))
                })),
            (
                0u8..5,
                prop::collection::vec(0u8..5, 0..3),
                0u32..4,
                0u32..6,
                f.clone(),
                any::<bool>()
            )
                .prop_map(|(d, r, sent, received, rtt, on_route)| Sample::Probe(
                    PathProbe {
                        dst: n(d),
                        relays: r.into_iter().map(n).collect(),
                        sent,
                        received,
                        rtt_ms: Some(rtt),
                        on_route,
                    }
                )),
            (counter.clone(), counter.clone()).prop_map(|(drops, retransmits)| {
                Sample::Kernel(crate::sample::KernelCounters { drops, retransmits })
            }),
            (counter.clone(), 0u32..3, counter, f).prop_map(|(cpu, cores, rss, lag)| {
                Sample::Process(crate::sample::ProcessStats {
                    cpu_time_ms: cpu,
                    cores,
                    rss_bytes: rss,
                    loop_lag_ms: Some(lag),
                    loop_stall_ms: None,
                })
            }),
        ]
    }

    proptest! {
        /// Arbitrary samples at arbitrary times (steps back, zero steps, hour-long leaps):
        /// never a panic, never more actions than the bucket allows, every confidence in range.
        #[test]
        fn any_input_at_any_time_is_handled(
            steps in prop::collection::vec((any_sample(), -5_000i64..4_000_000), 1..150)
        ) {
            let cfg = HealConfig::default();
            let mut h = healer(cfg.clone());
            h.set_topology(t(0), ring_topology(4));
            let mut exec = LocalExecutor::new();
            let mut wall: u64 = 10_000_000;
            for (s, dt) in steps {
                wall = wall.saturating_add_signed(dt);
                h.handle_sample(t(wall), s);
                h.handle_timeout(t(wall));
                h.execute_with(t(wall), &mut exec);
                for i in h.incidents() {
                    prop_assert!((0.0..=1.0).contains(&i.confidence));
                }
            }
            let changing = exec.log.iter().filter(|(_, a)| a.kind.class() != ActionClass::Alert).count();
            // Core time advances at most max_clock_step per call.
            let core_span_ms = 150 * cfg.sampling.max_clock_step_ms;
            let limit = cfg.plan.action_burst as u64 + core_span_ms / cfg.plan.action_refill_ms + 1;
            prop_assert!(changing as u64 <= limit);
        }

        /// Garbage only (NaN, infinities, negative or absurd values, counters that only
        /// reset): no incident, no action.
        #[test]
        fn garbage_never_leads_to_an_action(
            steps in prop::collection::vec((0u8..4, prop_oneof![Just(f64::NAN), Just(f64::INFINITY), Just(f64::NEG_INFINITY), Just(-1.0), Just(1e300)], 0u64..3), 1..300)
        ) {
            let mut h = healer(HealConfig::default());
            h.set_topology(t(0), ring_topology(4));
            let mut wall = 0u64;
            for (i, v, c) in steps {
                wall += 100;
                h.handle_sample(t(wall), Sample::Link(LinkSample {
                    rtt_ms: Some(v),
                    loss: Some(v),
                    ..LinkSample::up(link(i))
                }));
                // A counter that goes down every time: resets, never a rate.
                h.handle_sample(t(wall), Sample::Kernel(crate::sample::KernelCounters {
                    drops: 1_000_000 - wall.min(1_000_000) + c,
                    retransmits: 0,
                }));
                h.handle_timeout(t(wall));
                prop_assert!(h.poll_action().is_none());
            }
            prop_assert_eq!(h.incidents().count(), 0);
            prop_assert!(h.stats().monitor.rejected_values > 0);
        }
    }

    /// What a clock step of the generator does: ordinary time, none, backwards, or a leap.
    fn any_clock_step() -> impl Strategy<Value = i64> {
        prop_oneof![
            12 => Just(100i64),
            1 => Just(0i64),
            1 => -120_000i64..-1,
            1 => 30_001i64..7_200_000,
        ]
    }

    proptest! {
        /// A steady link as the clock misbehaves and its values turn to garbage: RTT and loss
        /// NaN, infinite, negative or absurd; gaps with no sample at all; the received-bytes
        /// counter reset to zero (a link set up anew); the clock stepping back or leaping
        /// ahead. None of it alone is ever an incident or an action, and nothing panics.
        #[test]
        fn gaps_resets_clock_jumps_and_garbage_never_lead_to_an_action(
            steps in prop::collection::vec(
                (
                    any_clock_step(),
                    prop_oneof![
                        6 => Just(None),
                        1 => prop_oneof![
                            Just(f64::NAN),
                            Just(f64::INFINITY),
                            Just(f64::NEG_INFINITY),
                            Just(-1.0),
                            Just(1e300),
                        ].prop_map(Some),
                    ],
                    prop_oneof![8 => Just(false), 1 => Just(true)],
                    prop_oneof![8 => Just(false), 1 => Just(true)],
                ),
                1..400,
            )
        ) {
            let mut h = healer(HealConfig::default());
            h.set_topology(t(0), ring_topology(2));
            let mut wall: u64 = 1_000_000;
            // 10 kB per real 100 ms, whatever the clock says.
            let mut rx: u64 = 0;
            for (step, garbage, gap, reset) in steps {
                wall = wall.saturating_add_signed(step);
                rx = if reset { 0 } else { rx + 10_000 };
                if gap {
                    h.handle_timeout(t(wall));
                } else {
                    for i in 1..=2 {
                        h.handle_sample(t(wall), Sample::Link(LinkSample {
                            rtt_ms: Some(garbage.unwrap_or(10.0)),
                            loss: Some(garbage.unwrap_or(0.0)),
                            rx_bytes: Some(rx),
                            ..LinkSample::up(link(i))
                        }));
                    }
                    h.handle_timeout(t(wall));
                }
                prop_assert!(h.poll_action().is_none());
                prop_assert_eq!(h.incidents().count(), 0);
            }
        }
    }
}
