//! Scenario tests: the loop driven through seven kinds of fault in simulated time.
//!
//! A small deterministic world stands in for the daemon. Node A (us) has links to B, C and X;
//! D is reached via B or C, E via X or C:
//!
//! ```text
//!        B ──── D
//!      / |      |
//!     A  X ──── E       (A–B, A–C, A–X, B–D, C–D, B–X, X–E, C–E)
//!      \________C
//! ```
//!
//! The world models what the daemon would feed the loop, at the rates it would:
//!
//! * the routing core's BFD-style probes every 100 ms on each of A's links: smoothed RTT
//!   (EWMA 1/8), loss over the last 64 probes (reported once 8 are in), probe misses, a
//!   silent link declared down after 3 misses, a local carrier loss reported at once;
//! * link samples every [`x0_heal::Healer::sampling_interval`], and at once on every link
//!   state change; the topology (links both ends have up) whenever it changes;
//! * end-to-end probes each sampling round, one per path of every destination, answered or
//!   not by the time of the next round (so a probe's timeout is one sampling interval);
//! * data-plane drop counters, eBPF counters and process stats with noise, and a counter reset;
//! * routing: each destination's primary path is its cheapest usable one, honouring the
//!   loop's raised costs, exclusions and quarantines as applied by a `LocalExecutor`.
//!
//! Times are simulated: nothing here reads a clock, so the figures are exact and repeatable.
//! Detection is measured from the fault to the first incident about the right cause (the
//! first incident opening, if later corrected, is reported too); recovery from the fault to
//! the first moment the affected destination's primary path delivers as before.

use std::collections::{BTreeMap, BTreeSet};

use x0_heal::{
    Action, ActionClass, ActionKind, Cause, DownCause, DropCounters, HealConfig, Healer, Instant,
    KernelCounters, LinkRef, LinkSample, LinkState, LocalExecutor, Mode, NodeId, PathProbe,
    Problem, ProcessStats, Record, Sample, Topology,
};

const TICK_MS: u64 = 10;
const PROBE_MS: u64 = 100;
const WINDOW: usize = 64;
const FAULT_MS: u64 = 60_000;

const A: u8 = 0;
const B: u8 = 1;
const C: u8 = 2;
const X: u8 = 3;
const D: u8 = 4;
const E: u8 = 5;

fn n(i: u8) -> NodeId {
    NodeId::from_bytes([i + 1; 16])
}

/// splitmix64: deterministic noise.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f64 {
        let (u1, u2) = (self.unit().max(1e-12), self.unit());
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

/// One of A's links: the physical truth and the routing core's view of it.
struct Link {
    r: LinkRef,
    peer: u8,
    cost: u32,
    base_rtt: f64,
    loss: f64,
    extra_ms: f64,
    carrier: bool,
    window: Vec<bool>,
    srtt: Option<f64>,
    misses: u32,
    state: LinkState,
    rx_bytes: u64,
}

#[derive(Default)]
struct Faults {
    crashed: BTreeSet<u8>,
    crash_seen_at: Option<u64>,
    blackhole: BTreeSet<u8>,
    /// A lying destination and the relay it frames: it answers only the probes that avoid
    /// that relay (it sees which neighbour hands it each probe).
    liar: Option<(u8, u8)>,
    /// A stall of this node's runtime from/to (ms) of up to this many ms: every RTT measured
    /// meanwhile is late by up to that much, as the daemon's are when its host is starved.
    stall: Option<(u64, u64, f64)>,
}

struct World {
    t: u64,
    rng: Rng,
    links: Vec<Link>,
    faults: Faults,
    healer: Healer,
    exec: LocalExecutor,
    next_sample: u64,
    /// Probes in flight: (dst, relays, answered, rtt, on_route).
    in_flight: Vec<(u8, Vec<u8>, bool, f64, bool)>,
    topology: Topology,
    records: Vec<(u64, Record)>,
    actions: Vec<(u64, Action)>,
    primary: BTreeMap<u8, Option<Vec<u8>>>,
    route_changes: Vec<(u64, u8)>,
    drops: u64,
    kernel: (u64, u64),
    cpu_ms: u64,
    counter_reset_at: Option<u64>,
    rounds: u64,
    last_round: u64,
    last_sample_at: u64,
}

/// Destinations and their paths (relays).
fn paths() -> Vec<(u8, Vec<Vec<u8>>)> {
    vec![
        (B, vec![vec![], vec![X]]),
        (C, vec![vec![]]),
        (D, vec![vec![B], vec![C]]),
        (X, vec![vec![], vec![B]]),
        (E, vec![vec![X], vec![C]]),
    ]
}

fn edges() -> Vec<(u8, u8)> {
    vec![(B, D), (C, D), (B, X), (X, E), (C, E)]
}

impl World {
    fn new(cfg: HealConfig, seed: u64) -> Self {
        let mk = |id: u64, peer: u8, cost: u32, base_rtt: f64| Link {
            r: LinkRef {
                id,
                neighbor: n(peer),
            },
            peer,
            cost,
            base_rtt,
            loss: 0.001,
            extra_ms: 0.0,
            carrier: true,
            window: Vec::new(),
            srtt: None,
            misses: 0,
            state: LinkState::Up,
            rx_bytes: 0,
        };
        let healer = Healer::new(cfg, n(A), Instant::ZERO).unwrap();
        let mut w = Self {
            t: 0,
            rng: Rng(seed),
            links: vec![mk(11, B, 10, 1.0), mk(12, C, 12, 1.2), mk(13, X, 10, 0.9)],
            faults: Faults::default(),
            healer,
            exec: LocalExecutor::new(),
            next_sample: 0,
            in_flight: Vec::new(),
            topology: Topology::new(),
            records: Vec::new(),
            actions: Vec::new(),
            primary: BTreeMap::new(),
            route_changes: Vec::new(),
            drops: 0,
            kernel: (0, 0),
            cpu_ms: 0,
            counter_reset_at: None,
            rounds: 0,
            last_round: 0,
            last_sample_at: 0,
        };
        w.sync_topology();
        w.update_routes();
        w.route_changes.clear();
        w
    }

    fn now(&self) -> Instant {
        Instant::from_millis(self.t)
    }

    fn link(&self, peer: u8) -> &Link {
        self.links.iter().find(|l| l.peer == peer).unwrap()
    }

    fn link_mut(&mut self, peer: u8) -> &mut Link {
        self.links.iter_mut().find(|l| l.peer == peer).unwrap()
    }

    fn alive(&self, node: u8) -> bool {
        !self.faults.crashed.contains(&node)
    }

    fn crash_known(&self, node: u8) -> bool {
        self.faults.crashed.contains(&node)
            && self.faults.crash_seen_at.is_some_and(|t| self.t >= t)
    }

    /// The topology as the link-state database would have it.
    fn current_topology(&self) -> Topology {
        let mut t = Topology::new();
        for l in &self.links {
            if l.state == LinkState::Up {
                t.add_edge(n(A), n(l.peer));
            }
        }
        for (a, b) in edges() {
            if !self.crash_known(a) && !self.crash_known(b) {
                t.add_edge(n(a), n(b));
            }
        }
        t
    }

    fn sync_topology(&mut self) {
        let t = self.current_topology();
        if t != self.topology {
            self.topology = t.clone();
            self.healer.set_topology(self.now(), t);
        }
    }

    /// Whether a path delivers at all right now (before loss), and its RTT.
    fn path_works(&self, dst: u8, relays: &[u8]) -> Option<f64> {
        let first = relays.first().copied().unwrap_or(dst);
        let l = self.link(first);
        if !l.carrier || !self.alive(first) || !self.alive(dst) {
            return None;
        }
        if relays
            .iter()
            .any(|r| !self.alive(*r) || self.faults.blackhole.contains(r))
        {
            return None;
        }
        if self
            .faults
            .liar
            .is_some_and(|(liar, framed)| dst == liar && relays.contains(&framed))
        {
            return None;
        }
        Some(l.base_rtt + l.extra_ms + relays.len() as f64)
    }

    /// Whether the path delivers as it did before any fault (for recovery).
    fn path_ok(&self, dst: u8, relays: &[u8]) -> bool {
        let first = relays.first().copied().unwrap_or(dst);
        let l = self.link(first);
        self.path_works(dst, relays).is_some() && l.loss < 0.01 && l.extra_ms < 50.0
    }

    fn route_cost(&self, dst: u8, relays: &[u8]) -> Option<u32> {
        let first = relays.first().copied().unwrap_or(dst);
        let l = self.link(first);
        if l.state != LinkState::Up || self.exec.excluded.contains(&l.r.id) {
            return None;
        }
        if relays
            .iter()
            .any(|r| self.exec.quarantined.contains(&n(*r)) || self.crash_known(*r))
        {
            return None;
        }
        let factor = self.exec.raised.get(&l.r.id).copied().unwrap_or(1);
        Some(l.cost * factor + 10 * relays.len() as u32)
    }

    fn primary_path(&self, dst: u8) -> Option<Vec<u8>> {
        paths()
            .into_iter()
            .find(|(d, _)| *d == dst)
            .and_then(|(_, ps)| {
                ps.into_iter()
                    .filter_map(|p| self.route_cost(dst, &p).map(|c| (c, p)))
                    .min()
                    .map(|(_, p)| p)
            })
    }

    fn update_routes(&mut self) {
        for (dst, _) in paths() {
            let p = self.primary_path(dst);
            if self.primary.get(&dst) != Some(&p) {
                if self.primary.contains_key(&dst) {
                    self.route_changes.push((self.t, dst));
                }
                self.primary.insert(dst, p);
            }
        }
    }

    fn link_sample(&self, l: &Link) -> Sample {
        let loss = (l.window.len() >= 8)
            .then(|| l.window.iter().filter(|a| !**a).count() as f64 / l.window.len() as f64);
        Sample::Link(LinkSample {
            link: l.r,
            state: l.state,
            rtt_ms: l.srtt,
            loss,
            probe_misses: l.misses,
            class: None,
            rx_bytes: Some(l.rx_bytes),
        })
    }

    fn feed_link(&mut self, i: usize) {
        let s = self.link_sample(&self.links[i]);
        self.healer.handle_sample(self.now(), s);
    }

    fn set_carrier(&mut self, peer: u8, up: bool) {
        let i = self.links.iter().position(|l| l.peer == peer).unwrap();
        let l = &mut self.links[i];
        if l.carrier == up {
            return;
        }
        l.carrier = up;
        l.state = if up {
            LinkState::Up
        } else {
            LinkState::Down(DownCause::Local)
        };
        l.window.clear();
        l.misses = 0;
        self.feed_link(i);
        self.sync_topology();
    }

    /// One BFD-style probe on each link.
    fn probe_links(&mut self) {
        for i in 0..self.links.len() {
            let (carrier, peer, loss) = {
                let l = &self.links[i];
                (l.carrier, l.peer, l.loss)
            };
            if !carrier {
                continue;
            }
            // `loss` is round-trip; each direction loses 1 − √(1 − loss). The routing core
            // hears the neighbour when its probe arrives, and measures RTT when our probe's
            // echo comes back.
            let alive = self.alive(peer);
            let one_way = 1.0 - (1.0 - loss).sqrt();
            let heard = alive && self.rng.unit() >= one_way;
            let answered = heard && self.rng.unit() >= one_way;
            let jitter = self.rng.normal();
            let spike = self.rng.unit() < 0.01;
            let stall_ms = self.stalled_by();
            // Drawn only during a stall: the other scenarios keep their random sequence.
            let stall_share = if stall_ms > 0.0 { self.rng.unit() } else { 0.0 };
            let l = &mut self.links[i];
            l.window.push(answered);
            if l.window.len() > WINDOW {
                l.window.remove(0);
            }
            let mut changed = false;
            if heard {
                l.misses = 0;
                if l.state != LinkState::Up {
                    l.state = LinkState::Up;
                    changed = true;
                }
            } else {
                l.misses += 1;
                if l.misses >= 3 && l.state == LinkState::Up {
                    l.state = LinkState::Down(DownCause::Silent);
                    changed = true;
                }
            }
            if answered {
                let mut rtt = l.base_rtt * (1.0 + 0.05 * jitter) + l.extra_ms;
                if spike {
                    rtt += 3.0;
                }
                rtt += stall_ms * stall_share;
                let rtt = rtt.max(0.05);
                l.srtt = Some(match l.srtt {
                    None => rtt,
                    Some(s) => s + (rtt - s) / 8.0,
                });
            }
            if alive {
                l.rx_bytes += 100_000 + (self.rng.unit() * 10_000.0) as u64;
            }
            if changed {
                self.feed_link(i);
            }
        }
        self.sync_topology();
    }

    /// How late the runtime is now (ms) while a stall lasts, else 0.
    fn stalled_by(&self) -> f64 {
        match self.faults.stall {
            Some((from, to, ms)) if (from..to).contains(&self.t) => ms,
            _ => 0.0,
        }
    }

    /// A sampling round, fed as one batch as the daemon does: link samples, the probes
    /// answered since the last round, counters.
    fn sample_round(&mut self) {
        self.rounds += 1;
        let now = self.now();
        let mut round: Vec<Sample> = (0..self.links.len())
            .map(|i| self.link_sample(&self.links[i]))
            .collect();
        for (dst, relays, answered, rtt, on_route) in std::mem::take(&mut self.in_flight) {
            round.push(Sample::Probe(PathProbe {
                dst: n(dst),
                relays: relays.iter().map(|r| n(*r)).collect(),
                sent: 1,
                received: u32::from(answered),
                rtt_ms: answered.then_some(rtt),
                on_route,
            }));
        }
        for (dst, ps) in paths() {
            let primary = self.primary.get(&dst).cloned().flatten();
            for p in ps {
                let first = p.first().copied().unwrap_or(dst);
                let loss = self.link(first).loss;
                let works = self.path_works(dst, &p);
                let answered = works.is_some() && self.rng.unit() >= loss;
                let on_route = primary.as_ref() == Some(&p);
                self.in_flight
                    .push((dst, p, answered, works.unwrap_or(0.0), on_route));
            }
        }
        if self.counter_reset_at.is_some_and(|t| self.t >= t) {
            self.counter_reset_at = None;
            self.drops = 0;
            self.kernel = (0, 0);
        }
        // Counters grow with time (a few drops a second, ~5 % of one core), with noise.
        let dt = (self.t - self.last_round) as f64 / 1000.0;
        self.last_round = self.t;
        let noisy = |rng: &mut Rng, per_s: f64| (per_s * dt * 2.0 * rng.unit()).round() as u64;
        self.drops += noisy(&mut self.rng, 4.0);
        self.kernel.0 += noisy(&mut self.rng, 3.0);
        self.kernel.1 += noisy(&mut self.rng, 2.0);
        self.cpu_ms += noisy(&mut self.rng, 100.0);
        round.push(Sample::Drops(DropCounters {
            link: None,
            by_reason: vec![("no_route".into(), self.drops)],
        }));
        round.push(Sample::Kernel(KernelCounters {
            drops: self.kernel.0,
            retransmits: self.kernel.1,
        }));
        let lag = 0.5 + 0.2 * self.rng.normal().abs();
        // The longest tick delay since the last round: the stall, while one lasts.
        let stall = lag
            + self
                .stalled_by()
                .max(self.stalled_by_since(self.last_sample_at));
        round.push(Sample::Process(ProcessStats {
            cpu_time_ms: self.cpu_ms,
            cores: 2,
            rss_bytes: (64 << 20) + (self.rng.unit() * 1e6) as u64,
            loop_lag_ms: Some(lag),
            loop_stall_ms: Some(stall),
        }));
        self.last_sample_at = self.t;
        self.healer.handle_samples(now, round);
    }

    /// The stall that overlapped the time since `from` (ms), if any.
    fn stalled_by_since(&self, from: u64) -> f64 {
        match self.faults.stall {
            Some((a, b, ms)) if a < self.t && b > from => ms,
            _ => 0.0,
        }
    }

    fn step(&mut self) {
        if self.t.is_multiple_of(PROBE_MS) {
            self.probe_links();
        }
        if self.t >= self.next_sample {
            self.sample_round();
            self.next_sample = self.t + self.healer.sampling_interval().as_millis() as u64;
        }
        if self.now() >= self.healer.poll_timeout() {
            self.healer.handle_timeout(self.now());
        }
        let before = self.exec.log.len();
        self.healer.execute_with(self.now(), &mut self.exec);
        for (_, a) in &self.exec.log[before..] {
            self.actions.push((self.t, a.clone()));
        }
        while let Some(r) = self.healer.poll_record() {
            self.records.push((self.t, r));
        }
        self.update_routes();
        self.t += TICK_MS;
    }

    fn run_until(&mut self, t_ms: u64, mut fault: impl FnMut(&mut World)) {
        while self.t < t_ms {
            fault(self);
            self.step();
        }
    }

    /// First time after the fault that an incident had `cause` (opened or changed to it).
    fn cause_at(&self, cause: Cause) -> Option<(u64, Problem)> {
        self.records.iter().find_map(|(t, r)| match r {
            Record::IncidentOpened {
                cause: c, problem, ..
            }
            | Record::IncidentChanged {
                cause: c, problem, ..
            } if *c == cause && *t >= FAULT_MS => Some((*t - FAULT_MS, *problem)),
            _ => None,
        })
    }

    /// First time after the fault that an incident about `cause` had `problem`.
    fn problem_at(&self, cause: Cause, problem: Problem) -> Option<u64> {
        self.records.iter().find_map(|(t, r)| match r {
            Record::IncidentOpened {
                cause: c,
                problem: p,
                ..
            }
            | Record::IncidentChanged {
                cause: c,
                problem: p,
                ..
            } if *c == cause && *p == problem && *t >= FAULT_MS => Some(*t - FAULT_MS),
            _ => None,
        })
    }

    fn first_incident_ms(&self) -> Option<u64> {
        self.records.iter().find_map(|(t, r)| {
            matches!(r, Record::IncidentOpened { .. }).then_some(t.saturating_sub(FAULT_MS))
        })
    }

    fn incidents_opened(&self) -> usize {
        self.records
            .iter()
            .filter(|(_, r)| matches!(r, Record::IncidentOpened { .. }))
            .count()
    }

    /// First time at or after the fault when the affected destination's primary path
    /// delivered as before, from its history of `(time, delivers)`.
    fn recovered_at(history: &[(u64, bool)]) -> Option<u64> {
        history
            .iter()
            .find(|(t, ok)| *t >= FAULT_MS && *ok)
            .map(|(t, _)| t - FAULT_MS)
    }

    fn primary_ok(&self, dst: u8) -> bool {
        self.primary
            .get(&dst)
            .cloned()
            .flatten()
            .is_some_and(|p| self.path_ok(dst, &p))
    }

    fn actions_of(&self, class: ActionClass) -> Vec<&(u64, Action)> {
        self.actions
            .iter()
            .filter(|(_, a)| a.kind.class() == class)
            .collect()
    }
}

struct Report {
    name: &'static str,
    first_incident_ms: Option<u64>,
    detect_ms: Option<u64>,
    problem: Option<Problem>,
    action: Option<ActionKind>,
    recover_ms: Option<u64>,
    route_changes: usize,
    actions: usize,
}

impl Report {
    fn print(&self, w: &World) {
        for (t, a) in &w.actions {
            println!("  t={:>7} ms  {:?}", t, a.kind);
        }
        println!(
            "scenario {:<16} first_incident_ms={:<6} detect_ms={:<6} problem={:<14} action={:<16} recover_ms={:<6} route_changes={} actions={}",
            self.name,
            fmt(self.first_incident_ms),
            fmt(self.detect_ms),
            self.problem.map_or("-", |p| p.as_str()),
            self.action
                .as_ref()
                .map_or("-".to_string(), |a| a.class().as_str().to_string()),
            fmt(self.recover_ms),
            self.route_changes,
            self.actions,
        );
    }
}

fn fmt(v: Option<u64>) -> String {
    v.map_or("-".into(), |v| v.to_string())
}

/// Runs a fault scenario: warm-up to 60 s, `fault` applied from then on, until `end_ms`.
/// `dst` is the destination whose delivery the fault affects.
fn scenario(
    name: &'static str,
    cfg: HealConfig,
    end_ms: u64,
    cause: Cause,
    dst: u8,
    mut fault: impl FnMut(&mut World),
) -> (World, Report) {
    let mut w = World::new(cfg, 42);
    w.run_until(FAULT_MS, |_| {});
    assert_eq!(w.incidents_opened(), 0, "{name}: quiet warm-up");
    assert!(w.actions.is_empty(), "{name}: no action during warm-up");
    let mut history = Vec::new();
    while w.t < end_ms {
        fault(&mut w);
        w.step();
        history.push((w.t - TICK_MS, w.primary_ok(dst)));
    }
    let found = w.cause_at(cause);
    let action = w
        .actions
        .iter()
        .find(|(_, a)| !matches!(a.kind, ActionKind::Alert { .. }))
        .map(|(_, a)| a.kind.clone());
    let r = Report {
        name,
        first_incident_ms: w.first_incident_ms(),
        detect_ms: found.map(|f| f.0),
        problem: found.map(|f| f.1),
        action,
        recover_ms: World::recovered_at(&history),
        route_changes: w.route_changes.len(),
        actions: w.actions.len(),
    };
    r.print(&w);
    (w, r)
}

fn link_ab() -> LinkRef {
    LinkRef {
        id: 11,
        neighbor: n(B),
    }
}

#[test]
fn link_down_is_detected_at_once_and_the_link_restarted() {
    let (w, r) = scenario(
        "link-down",
        HealConfig::default(),
        90_000,
        Cause::Link(link_ab()),
        D,
        |w| {
            if w.t == FAULT_MS {
                w.set_carrier(B, false);
            }
        },
    );
    assert!(r.detect_ms.unwrap() <= 50, "detect ≤ 50 ms");
    assert_eq!(r.problem, Some(Problem::LinkDown));
    assert_eq!(r.action, Some(ActionKind::RestartLink { link: link_ab() }));
    assert!(r.recover_ms.unwrap() <= 100, "recover ≤ 100 ms");
    // Restarts back off: a link that stays down is not restarted in a loop.
    assert!(
        w.actions_of(ActionClass::RestartLink).len() <= 2,
        "{:?}",
        w.actions
    );
}

#[test]
fn a_silent_node_crash_is_found_and_attributed_to_the_node() {
    let (w, r) = scenario(
        "node-crash",
        HealConfig::default(),
        90_000,
        Cause::Node(n(X)),
        E,
        |w| {
            if w.t == FAULT_MS {
                w.faults.crashed.insert(X);
                // The crashed node's other neighbours notice within the BFD detection time.
                w.faults.crash_seen_at = Some(FAULT_MS + 300);
            }
        },
    );
    assert!(
        r.first_incident_ms.unwrap() <= 300,
        "silent failure detected ≤ 300 ms (BFD: 3 × 100 ms)"
    );
    assert!(
        r.detect_ms.unwrap() <= 2_000,
        "cause narrowed to the node ≤ 2 s"
    );
    assert_eq!(r.problem, Some(Problem::NodeDown));
    assert!(r.recover_ms.unwrap() <= 500, "recover ≤ 500 ms");
    let q = w.actions_of(ActionClass::QuarantineNode);
    assert_eq!(q.len(), 1, "{:?}", w.actions);
    assert!(matches!(q[0].1.kind, ActionKind::QuarantineNode { node, .. } if node == n(X)));
}

#[test]
fn a_lossy_link_is_steered_around_and_restored_when_it_heals() {
    let (w, r) = scenario(
        "lossy-link",
        HealConfig::default(),
        130_000,
        Cause::Link(link_ab()),
        D,
        |w| {
            if w.t == FAULT_MS {
                w.link_mut(B).loss = 0.30;
            }
            if w.t == 90_000 {
                w.link_mut(B).loss = 0.001;
            }
        },
    );
    assert!(r.detect_ms.unwrap() <= 2_000, "detect ≤ 2 s");
    assert_eq!(r.problem, Some(Problem::LinkDegraded));
    assert!(matches!(
        r.action,
        Some(ActionKind::RaiseLinkCost { link, .. }) if link == link_ab()
    ));
    assert!(r.recover_ms.unwrap() <= 3_000, "recover ≤ 3 s");
    assert!(
        w.actions_of(ActionClass::QuarantineNode).is_empty(),
        "{:?}",
        w.actions
    );
    // The outcome was judged by end-to-end delivery, and counted a success.
    assert!(w.records.iter().any(|(_, rec)| matches!(
        rec,
        Record::Outcome {
            class: ActionClass::RaiseLinkCost,
            recovered: true,
            ..
        }
    )));
    // Undo when the cause clears: every restriction is lifted after the loss ended, and
    // routes return.
    let undo = w.actions_of(ActionClass::Undo);
    assert!(!undo.is_empty(), "{:?}", w.actions);
    assert!(undo.iter().all(|(t, _)| *t > 90_000));
    assert!(
        undo.iter().any(
            |(_, a)| matches!(a.kind, ActionKind::RestoreLinkCost { link } if link == link_ab())
        )
    );
    assert!(w.exec.raised.is_empty() && w.exec.excluded.is_empty());
    assert_eq!(w.primary[&D], Some(vec![B]));
}

#[test]
fn a_black_hole_relay_is_quarantined() {
    let (w, r) = scenario(
        "blackhole-relay",
        HealConfig::default(),
        90_000,
        Cause::Node(n(B)),
        D,
        |w| {
            if w.t == FAULT_MS {
                w.faults.blackhole.insert(B);
            }
        },
    );
    assert!(r.detect_ms.unwrap() <= 2_000, "detect ≤ 2 s");
    assert_eq!(r.problem, Some(Problem::BlackHole));
    assert!(matches!(r.action, Some(ActionKind::QuarantineNode { node, .. }) if node == n(B)));
    assert!(r.recover_ms.unwrap() <= 3_000, "recover ≤ 3 s");
    // The link to B stayed up and was never blamed.
    assert!(w.actions.iter().all(|(_, a)| !matches!(
        a.kind,
        ActionKind::ExcludeLink { .. }
            | ActionKind::RaiseLinkCost { .. }
            | ActionKind::RestartLink { .. }
    )));
    assert!(w.exec.quarantined.contains(&n(B)));
}

/// Issue 12: a malicious destination that answers only the probes avoiding an honest relay
/// must not get that relay quarantined. D answers nothing that comes through B; its other
/// path (via C) answers. X, the other destination behind B, is answered through B: nothing
/// corroborates D's word. (Before corroboration B was quarantined 0.9 s after the lie began.)
#[test]
fn a_destination_that_lies_about_a_relay_does_not_get_it_quarantined() {
    let (w, _) = scenario(
        "lying-destination",
        HealConfig::default(),
        120_000,
        Cause::Node(n(B)),
        D,
        |w| {
            if w.t == FAULT_MS {
                w.faults.liar = Some((D, B));
            }
        },
    );
    assert!(
        !w.exec.quarantined.contains(&n(B)),
        "the framed relay was quarantined: {:?}",
        w.actions
    );
    assert!(
        w.actions.iter().all(|(_, a)| a.kind.target() != Some(n(B))),
        "an action against the framed relay: {:?}",
        w.actions
    );
    // What is seen: an incident about B that is not confident enough to act on.
    let about_b = w.records.iter().find_map(|(_, r)| match r {
        Record::IncidentOpened {
            cause, confidence, ..
        } if *cause == Cause::Node(n(B)) => Some(*confidence),
        _ => None,
    });
    assert!(about_b.is_some_and(|c| c < HealConfig::default().incidents.act_confidence));
}

/// A stall of this node's runtime (its host starved of CPU, as under a loaded machine) makes
/// every RTT it measures late at once: the smoothed RTT of a 1 ms link rose to 6–19 ms in
/// `x0t bench heal` runs and the loop raised link costs and alerted, in a healthy mesh. The
/// daemon reports its runtime's longest timer delay; RTT rises within it are not the links'.
/// (Before: a `link_degraded` incident and a raised cost on the first link.)
#[test]
fn a_stall_of_this_node_is_not_a_link_problem() {
    for (stall_ms, seed) in [(40.0, 42), (80.0, 43), (150.0, 44)] {
        let mut w = World::new(HealConfig::default(), seed);
        w.run_until(FAULT_MS, |_| {});
        assert_eq!(w.incidents_opened(), 0, "quiet warm-up");
        w.faults.stall = Some((FAULT_MS, FAULT_MS + 1_500, stall_ms));
        w.run_until(FAULT_MS + 30_000, |_| {});
        assert!(w.actions.is_empty(), "stall {stall_ms} ms: {:?}", w.actions);
        assert_eq!(w.incidents_opened(), 0, "stall {stall_ms} ms");
        assert!(w.healer.stats().explained_by_lag > 0, "the stall was seen");
    }
    // A real latency rise while the node is fine is still the link's.
    let (_, r) = scenario(
        "latency-spike-small",
        HealConfig::default(),
        100_000,
        Cause::Link(link_ab()),
        D,
        |w| {
            if w.t == FAULT_MS {
                w.link_mut(B).extra_ms = 30.0;
            }
        },
    );
    assert_eq!(r.problem, Some(Problem::LinkDegraded));
}

#[test]
fn a_latency_spike_is_steered_around() {
    let (_w, r) = scenario(
        "latency-spike",
        HealConfig::default(),
        100_000,
        Cause::Link(link_ab()),
        D,
        |w| {
            if w.t == FAULT_MS {
                w.link_mut(B).extra_ms = 200.0;
            }
        },
    );
    assert!(r.detect_ms.unwrap() <= 2_000, "detect ≤ 2 s");
    assert_eq!(r.problem, Some(Problem::LinkDegraded));
    assert!(matches!(r.action, Some(ActionKind::RaiseLinkCost { link, .. }) if link == link_ab()));
    assert!(r.recover_ms.unwrap() <= 3_000, "recover ≤ 3 s");
    assert_eq!(
        r.actions, 1,
        "one action; the outcome was a success, no escalation"
    );
}

#[test]
fn a_flapping_link_is_damped() {
    let cfg = HealConfig::default();
    let flaps = cfg.detect.flap_transitions as usize;
    let (w, r) = scenario(
        "flapping-link",
        cfg,
        200_000,
        Cause::Link(link_ab()),
        D,
        |w| {
            // Down/up every 2 s (a change every second) for one minute.
            if (FAULT_MS..120_000).contains(&w.t) && (w.t - FAULT_MS).is_multiple_of(1000) {
                let up = !(w.t - FAULT_MS).is_multiple_of(2000);
                w.set_carrier(B, up);
            }
            if w.t == 120_000 {
                w.set_carrier(B, true);
            }
        },
    );
    let excl = w.actions_of(ActionClass::ExcludeLink);
    assert_eq!(excl.len(), 1, "{:?}", w.actions);
    assert!(excl[0].0 - FAULT_MS <= 4_000);
    assert!(w.records.iter().any(|(_, rec)| matches!(
        rec,
        Record::IncidentChanged {
            problem: Problem::Flapping,
            ..
        }
    )));
    // The bound (docs/heal.md): per destination, at most `flap_transitions` route changes
    // before the link is excluded, then one when it is included again. Sixty without damping.
    for dst in [B, D] {
        let changes: Vec<_> = w.route_changes.iter().filter(|(_, d)| *d == dst).collect();
        assert!(
            changes.len() <= flaps + 1,
            "{} changes: {changes:?}",
            changes.len()
        );
    }
    assert!(r.route_changes <= 2 * (flaps + 1));
    // Re-included once stable long enough, not before the flapping ended.
    let undo = w.actions_of(ActionClass::Undo);
    assert_eq!(undo.len(), 1);
    assert!(matches!(undo[0].1.kind, ActionKind::IncludeLink { .. }));
    assert!(
        undo[0].0 >= 120_000 + 30_000,
        "after flap_quiet_ms of stability"
    );
    assert_eq!(w.primary[&D], Some(vec![B]));
    assert!(r.actions <= 4, "{:?}", w.actions);
}

#[test]
fn a_healthy_mesh_with_noise_gets_no_action() {
    for seed in [7, 8, 9, 10] {
        healthy(seed);
    }
}

/// Five simulated minutes after the warm-up, with noise, one counter reset, no fault.
fn healthy(seed: u64) {
    let mut w = World::new(HealConfig::default(), seed);
    w.counter_reset_at = Some(150_000);
    w.run_until(60_000 + 300_000, |_| {});
    let opened: Vec<_> = w
        .records
        .iter()
        .filter(|(_, r)| matches!(r, Record::IncidentOpened { .. }))
        .collect();
    println!(
        "scenario healthy-baseline (seed {seed}) incidents={} actions={} route_changes={} samples={}",
        opened.len(),
        w.actions.len(),
        w.route_changes.len(),
        w.healer.stats().samples
    );
    assert!(w.actions.is_empty(), "{:?}", w.actions);
    assert!(opened.is_empty(), "{opened:?}");
    assert!(w.route_changes.is_empty());
    assert_eq!(
        w.healer.stats().monitor.counter_resets,
        3,
        "the reset was seen as a reset"
    );
    assert_eq!(w.healer.health().state, x0_heal::HealthState::Optimal);
    // Slow sampling while all is well: mostly 500 ms rounds (fast ones only while a
    // suspicion is checked). 360 s of 500 ms rounds is 720.
    assert!(w.rounds < 900, "{} sampling rounds", w.rounds);
    // Baselines were learned and handed out for the knowledge base.
    assert!(
        w.records
            .iter()
            .any(|(_, r)| matches!(r, Record::Baselines { baselines } if !baselines.is_empty()))
    );
}

#[test]
fn observe_mode_reports_what_it_would_do_and_does_nothing() {
    let cfg = HealConfig {
        mode: Mode::Observe,
        ..HealConfig::default()
    };
    let (w, r) = scenario(
        "lossy-observe",
        cfg,
        100_000,
        Cause::Link(link_ab()),
        D,
        |w| {
            if w.t == FAULT_MS {
                w.link_mut(B).loss = 0.30;
            }
        },
    );
    assert!(r.detect_ms.unwrap() <= 2_000);
    assert!(w.exec.log.is_empty(), "nothing executed");
    assert!(r.action.is_none());
    let planned: Vec<_> = w
        .records
        .iter()
        .filter_map(|(_, rec)| match rec {
            Record::ActionPlanned { action, mode, .. } => Some((action.kind.class(), *mode)),
            _ => None,
        })
        .collect();
    assert_eq!(planned[0], (ActionClass::RaiseLinkCost, Mode::Observe));
    assert!(planned.iter().all(|(_, m)| *m == Mode::Observe));
    assert!(w.healer.planned().all(|(m, _)| *m == Mode::Observe));
    // Traffic still goes over the lossy link: nothing was done.
    assert_eq!(w.primary[&D], Some(vec![B]));
}

/// Lossy-link detection is bounded by counting statistics, so it is measured over many seeds.
///
/// The loop sees the routing core's loss over the last 64 probes (10 a second). It needs 3
/// lost probes in that window before it believes in loss (4.7 %; at 2 a healthy link with
/// 0.1 % loss would raise a false incident every ten minutes or so). At 30 % loss the third
/// loss comes by the 18th probe in 92 % of runs and by the 20th in 96.5 % (negative
/// binomial); detection follows within one or two fast samples. The issue's 2 s target is
/// therefore asserted for at least 90 % of seeds, and 3 s for all.
#[test]
fn lossy_link_detection_over_many_seeds() {
    let mut times = Vec::new();
    for seed in 1..=40 {
        let mut w = World::new(HealConfig::default(), seed);
        w.run_until(FAULT_MS, |_| {});
        assert_eq!(w.incidents_opened(), 0, "seed {seed}");
        w.run_until(FAULT_MS + 5_000, |w| {
            if w.t == FAULT_MS {
                w.link_mut(B).loss = 0.30;
            }
        });
        let found = w.cause_at(Cause::Link(link_ab()));
        let (t, _) = found.unwrap_or_else(|| panic!("seed {seed}: not found"));
        // A silent down (a run of lost probes) may come first; the loss is named soon after.
        let degraded = w.problem_at(Cause::Link(link_ab()), Problem::LinkDegraded);
        assert!(
            degraded.is_some_and(|d| d <= 3_000),
            "seed {seed}: {degraded:?}"
        );
        assert!(
            w.actions_of(ActionClass::QuarantineNode).is_empty(),
            "seed {seed}: a lossy link is not a black hole"
        );
        times.push(t);
    }
    times.sort_unstable();
    let within = times.iter().filter(|t| **t <= 2_000).count();
    println!(
        "lossy-link detect_ms over {} seeds: median {} p90 {} max {}; ≤ 2 s in {within}",
        times.len(),
        times[times.len() / 2],
        times[times.len() * 9 / 10],
        times[times.len() - 1]
    );
    assert!(within * 10 >= times.len() * 9, "{times:?}");
    assert!(times.iter().all(|t| *t <= 3_000), "{times:?}");
}
