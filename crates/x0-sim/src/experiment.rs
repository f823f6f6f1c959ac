//! Runs a scenario with the routing core on every node and measures what the issue asks for:
//! per event `detect_ms`, `reroute_ms` and `converge_ms`, loops and unreachable pairs, control
//! traffic, wall time and memory.
//!
//! Definitions (all in virtual time, from the moment the event is applied):
//!
//! * **detect**: until the first node declares a neighbour affected by the failure down (the
//!   end of a failed link, a neighbour of a crashed node). A visible link failure is detected at
//!   once by construction (the ends are told).
//! * **reroute**: until every *affected* source pair forwards on a working path. Affected: the
//!   sampled `(source, destination)` pairs whose forwarding path just before the event crossed
//!   the failed element, and which are still connected after it. A pair forwards on a working
//!   path when following each node's `next_hop` (including fast-reroute backups) reaches the
//!   destination over live links without a loop.
//! * **converge**: until every live node's link-state database holds exactly the current
//!   advert of every node (same versions everywhere) and every live node's sessions match its
//!   live links; from then on every node computes its routes from the same, true topology.
//!
//! Checks run every millisecond for the first 500 ms after an event, then every 10 ms, until
//! both reroute and convergence are reached, the next event comes, or `settle_limit` passes.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde::Serialize;
use x0_routing::lsdb::{AdvertInterner, version_digest};
use x0_routing::quality::LinkQuality;
use x0_routing::{DownCause, Router, RouterConfig};
use x0_wire::routing::AdvertisedLink;

use crate::engine::{Event, Sim, SimError};
use crate::rng::{SimRng, Stream};
use crate::routing::{RoutingNode, Shared, WarmPlan, sim_auth, sim_node_id, sim_node_ix};
use crate::scenario::Instance;
use crate::scenario::Start;
use crate::stats::peak_rss_bytes;
use crate::trace::TraceMode;
use crate::{Instant, LinkIx, NodeIx};

/// What Mycelium reports for its Babel-style protocol: ~16,600 route updates per second
/// mesh-wide at 1,000 nodes, i.e. 16.6 per node per second.
pub const BABEL_STYLE_UPDATES_PER_NODE_PER_S: f64 = 16.6;

/// Experiment settings.
#[derive(Debug, Clone)]
pub struct ExperimentConfig {
    /// The routers' settings.
    pub router: RouterConfig,
    /// Source/destination pairs sampled for forwarding checks (all pairs if fewer exist).
    pub sample_pairs: usize,
    /// Longest time after an event to wait for reroute and convergence.
    pub settle_limit: Duration,
}

impl Default for ExperimentConfig {
    fn default() -> Self {
        Self {
            router: RouterConfig::default(),
            sample_pairs: 2000,
            settle_limit: Duration::from_secs(30),
        }
    }
}

/// Measurements of one scenario event.
#[derive(Debug, Clone, Serialize)]
pub struct EventReport {
    /// The event's `kind`.
    pub kind: String,
    /// When it was applied, seconds.
    pub at_s: f64,
    /// Until the first neighbour declared the failure (failures only).
    pub detect_ms: Option<f64>,
    /// Until every affected sampled pair forwarded on a working path (failures only).
    pub reroute_ms: Option<f64>,
    /// Until every routing database matched the true post-event topology.
    pub converge_ms: Option<f64>,
    /// Sampled pairs whose path crossed the failure and that stayed connected.
    pub affected_pairs: usize,
    /// Sampled pairs the event disconnected (not counted as unreachable).
    pub disconnected_pairs: usize,
}

/// The result of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Nodes.
    pub nodes: usize,
    /// Links.
    pub links: usize,
    /// The run's seed.
    pub seed: u64,
    /// Virtual time simulated, seconds.
    pub simulated_s: f64,
    /// Wall time spent simulating (inside the engine: every node callback and delivery,
    /// warm-start state included), seconds.
    pub wall_s: f64,
    /// Wall time of the whole experiment, seconds: `wall_s` plus building the topology and the
    /// measurements (route walks during events, the final check of every sampled pair).
    pub total_wall_s: f64,
    /// Cold start: until every database first matched the true topology.
    pub initial_converge_ms: Option<f64>,
    /// Per event.
    pub events: Vec<EventReport>,
    /// Sampled pairs whose forwarding looped, at the end of the run.
    pub loops_found: usize,
    /// Sampled pairs connected in the true graph but without a working route, at the end.
    pub unreachable_pairs: usize,
    /// Pairs checked at the end.
    pub pairs_checked: usize,
    /// All routing bytes (probes, adverts, acks, link hellos) per node per second, whole run.
    pub control_bytes_per_node_per_s: f64,
    /// The same, in the steady window (the second half of the time before the first event).
    pub steady_control_bytes_per_node_per_s: f64,
    /// Advert transmissions (route updates) per node per second in the steady window.
    pub steady_updates_per_node_per_s: f64,
    /// Advert transmissions per node per second that the periodic refresh adds on average
    /// (one refresh of every advert per `advert_refresh`, each crossing every link about once
    /// each way): `2 × links / advert_refresh`. Too rare to appear in a short window.
    pub refresh_updates_per_node_per_s: f64,
    /// Babel-style reference (Mycelium), updates per node per second.
    pub babel_style_updates_per_node_per_s: f64,
    /// `(steady + refresh updates per node per s) / babel_style_updates_per_node_per_s`.
    pub updates_ratio_vs_babel_style: f64,
    /// Length of the steady window, seconds.
    pub steady_window_s: f64,
    /// Peak resident memory of the process when the simulation ended, MiB: the simulated mesh
    /// plus the checks made during events (which build routing tables on the nodes they walk).
    pub peak_rss_mb: f64,
    /// Peak resident memory after the final check of every sampled pair, MiB.
    pub peak_rss_with_checks_mb: f64,
    /// Simulator events processed.
    pub sim_events: u64,
    /// Digest of the run's trace (same seed ⇒ same digest).
    pub trace_digest: String,
    /// Router counters summed over the nodes alive at the end (a restarted node counts from
    /// its restart): where the control traffic and the work went.
    pub router_totals: RouterTotals,
}

/// Router counters summed over the live nodes (see [`x0_routing::RouterStats`]).
#[derive(Debug, Clone, Default, Serialize)]
pub struct RouterTotals {
    /// Adverts originated.
    pub adverts_originated: u64,
    /// Advert transmissions (first ones and retransmissions).
    pub adverts_sent: u64,
    /// Retransmissions.
    pub retransmissions: u64,
    /// Acknowledgement datagrams.
    pub acks_sent: u64,
    /// Crossing copies left to be acknowledged implicitly (no acknowledgement sent).
    pub acks_implied: u64,
    /// Adverts received that the receiver already held.
    pub duplicates: u64,
    /// Adverts installed.
    pub adverts_installed: u64,
    /// Adverts held back by the per-origin acceptance limit.
    pub adverts_rate_limited: u64,
    /// Probes sent.
    pub probes_sent: u64,
    /// SPF runs.
    pub spf_runs: u64,
    /// Neighbours declared down after silence.
    pub neighbors_down_silent: u64,
}

fn router_totals(sim: &RoutingSim) -> RouterTotals {
    let mut t = RouterTotals::default();
    for ix in 0..sim.node_count() as NodeIx {
        let Some(r) = sim.node(ix).and_then(|n| n.router()) else {
            continue;
        };
        let s = r.stats();
        t.adverts_originated += s.adverts_originated;
        t.adverts_sent += s.adverts_sent;
        t.retransmissions += s.retransmissions;
        t.acks_sent += s.acks_sent;
        t.acks_implied += s.acks_implied;
        t.duplicates += s.duplicates;
        t.adverts_installed += s.adverts_installed;
        t.adverts_rate_limited += s.adverts_rate_limited;
        t.probes_sent += s.probes_sent;
        t.spf_runs += s.spf_runs;
        t.neighbors_down_silent += s.neighbors_down_silent;
    }
    t
}

/// A failure the metrics track.
#[derive(Debug, Clone)]
enum Failure {
    Links(Vec<(NodeIx, NodeIx)>),
    Node(NodeIx),
}

type RoutingSim = Sim<RoutingNode>;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Watches a run at fixed steps of virtual time (see [`run_observed`]): telemetry, plots.
pub trait Observer {
    /// How often to be called, in virtual time (at least 1 µs). The calls come at `interval`,
    /// `2 × interval`, … up to the end of the run.
    fn interval(&self) -> Duration;
    /// The simulator as it is at `at`: every event at or before `at` has run, none after it.
    /// Only a shared reference: observing cannot change the run.
    fn observe(&mut self, sim: &Sim<RoutingNode>, at: Instant);
}

/// Runs `instance` with the routing core; `progress` gets the virtual time now and then.
pub fn run(
    instance: &Instance,
    cfg: &ExperimentConfig,
    progress: &mut dyn FnMut(Instant),
) -> Result<Report, SimError> {
    run_observed(instance, cfg, progress, &mut [])
}

/// [`run`], calling each observer at every multiple of its interval.
///
/// The run is the same with and without observers, to the trace digest: the simulator is
/// stopped at each sampling instant (`Sim::run_until` processes every event up to a time, so
/// running to `t₁` and then to `t₂` pops the same events in the same order as running to `t₂`
/// at once), and the observers only read it.
pub fn run_observed(
    instance: &Instance,
    cfg: &ExperimentConfig,
    progress: &mut dyn FnMut(Instant),
    observers: &mut [&mut dyn Observer],
) -> Result<Report, SimError> {
    let started = std::time::Instant::now();
    let mut clock = Clock::new(progress, observers);
    let mut sim = routing_sim(instance, &cfg.router)?;
    sim.set_trace(TraceMode::Digest);
    let n = sim.node_count();
    let pairs = sample_pairs(n, cfg.sample_pairs, instance.seed);
    let mut dead_seq: Vec<Option<u64>> = vec![None; n];
    let end = instance.end();
    let first_event = instance.events.first().map(|(t, _)| *t).unwrap_or(end);
    // Everything before this instant is "before the first event".
    let before_first = if instance.events.is_empty() {
        end
    } else {
        first_event - Duration::from_micros(1)
    };

    // Cold start.
    let mut initial_converge = None;
    let mut t = Instant::ZERO;
    while t < before_first {
        let step = Duration::from_millis(if n > 2000 { 100 } else { 10 });
        t = (t + step).min(before_first);
        clock.run_until(&mut sim, t);
        if initial_converge.is_none() && converged(&sim, &dead_seq) {
            initial_converge = Some(t);
            break;
        }
    }
    // Steady window: the second half of the time before the first event (links need a few
    // seconds to settle their quality classes after the cold start).
    let half = Instant::from_micros(before_first.as_micros() / 2);
    let steady_from = initial_converge.map(|c| c.max(half).min(before_first));
    let mut steady_start: Option<(Instant, u64, u64)> = None;
    if let Some(from) = steady_from {
        clock.run_to(&mut sim, from);
        steady_start = Some((from, sim.stats().sent_bytes(), adverts_sent(&sim)));
    }
    let resume = before_first.max(sim.now());
    clock.run_to(&mut sim, resume);
    let steady = steady_start.map(|(from, bytes, adverts)| {
        let secs = sim.now().saturating_since(from).as_secs_f64();
        let nodes = n as f64;
        (
            secs,
            (sim.stats().sent_bytes() - bytes) as f64 / nodes / secs.max(1e-9),
            (adverts_sent(&sim) - adverts) as f64 / nodes / secs.max(1e-9),
        )
    });

    let mut reports = Vec::new();
    for (i, (at, event)) in instance.events.iter().enumerate() {
        let kind = instance.kinds.get(i).cloned().unwrap_or_default();
        // Just before the event: which sampled pairs cross what is about to fail.
        clock.run_to(&mut sim, *at - Duration::from_micros(1));
        let failure = failure_of(&sim, event);
        let before: Vec<Option<Vec<NodeIx>>> = match &failure {
            Some(_) => pairs
                .iter()
                .map(|&(s, d)| walk(&mut sim, s, d).ok())
                .collect(),
            None => Vec::new(),
        };
        for ix in 0..n as NodeIx {
            if let Some(node) = sim.node_mut(ix) {
                node.downs.clear();
            }
        }
        if let Event::NodeCrash { node } = event {
            dead_seq[*node as usize] = own_seq(&sim, *node);
        }
        clock.run_to(&mut sim, *at);
        if let Event::NodeRestart { node } = event {
            dead_seq[*node as usize] = None;
        }
        let components = components(&sim);
        let mut affected = Vec::new();
        let mut disconnected = 0;
        if let Some(f) = &failure {
            for (k, path) in before.iter().enumerate() {
                let Some(path) = path else { continue };
                if !crosses(path, f) {
                    continue;
                }
                let (s, d) = pairs[k];
                if sim.is_alive(s)
                    && sim.is_alive(d)
                    && components[s as usize] == components[d as usize]
                {
                    affected.push((s, d));
                } else {
                    disconnected += 1;
                }
            }
        }
        let next_event = instance.events.get(i + 1).map(|(t, _)| *t).unwrap_or(end);
        let limit = (*at + cfg.settle_limit).min(next_event).min(end);
        let (mut detect, mut reroute, mut converge) = (None, None, None);
        let mut now = *at;
        loop {
            if detect.is_none()
                && let Some(f) = &failure
            {
                detect = first_detection(&sim, f).map(|d| d.saturating_since(*at));
            }
            if reroute.is_none()
                && failure.is_some()
                && affected.iter().all(|&(s, d)| walk(&mut sim, s, d).is_ok())
            {
                reroute = Some(now.saturating_since(*at));
            }
            if converge.is_none() && converged(&sim, &dead_seq) {
                converge = Some(now.saturating_since(*at));
            }
            let done = converge.is_some()
                && (failure.is_none() || (reroute.is_some() && detect.is_some()));
            if done || now >= limit {
                break;
            }
            let step = if now.saturating_since(*at) < Duration::from_millis(500) {
                1
            } else {
                10
            };
            now = (now + Duration::from_millis(step)).min(limit);
            clock.run_to(&mut sim, now);
        }
        reports.push(EventReport {
            kind,
            at_s: at.as_micros() as f64 / 1e6,
            detect_ms: detect.map(ms),
            reroute_ms: reroute.map(ms),
            converge_ms: converge.map(ms),
            affected_pairs: affected.len(),
            disconnected_pairs: disconnected,
        });
    }
    clock.run_to(&mut sim, end);
    // The simulation's own peak, before the final check makes every router on a sampled path
    // build its routing table (at 10,000 nodes that alone takes gigabytes).
    let peak_rss_sim = peak_rss_bytes();
    let totals = router_totals(&sim);

    // Final check of every sampled pair.
    let components = components(&sim);
    let (mut loops, mut unreachable, mut checked) = (0, 0, 0);
    for &(s, d) in &pairs {
        if !sim.is_alive(s) || !sim.is_alive(d) || components[s as usize] != components[d as usize]
        {
            continue;
        }
        checked += 1;
        match walk(&mut sim, s, d) {
            Ok(_) => {}
            Err(Walk::Loop) => loops += 1,
            Err(Walk::Dead) => unreachable += 1,
        }
    }
    let stats = sim.stats();
    let simulated_s = instance.duration.as_secs_f64();
    let (window, steady_bytes, steady_updates) = steady.unwrap_or((0.0, 0.0, 0.0));
    let refresh_updates =
        2.0 * sim.link_count() as f64 / cfg.router.advert_refresh.as_secs_f64().max(1.0);
    Ok(Report {
        nodes: n,
        links: sim.link_count(),
        seed: instance.seed,
        simulated_s,
        wall_s: stats.wall.as_secs_f64(),
        total_wall_s: started.elapsed().as_secs_f64(),
        initial_converge_ms: initial_converge.map(|t| ms(t.saturating_since(Instant::ZERO))),
        events: reports,
        loops_found: loops,
        unreachable_pairs: unreachable,
        pairs_checked: checked,
        control_bytes_per_node_per_s: stats.sent_bytes() as f64 / n as f64 / simulated_s.max(1e-9),
        steady_control_bytes_per_node_per_s: steady_bytes,
        steady_updates_per_node_per_s: steady_updates,
        refresh_updates_per_node_per_s: refresh_updates,
        babel_style_updates_per_node_per_s: BABEL_STYLE_UPDATES_PER_NODE_PER_S,
        updates_ratio_vs_babel_style: (steady_updates + refresh_updates)
            / BABEL_STYLE_UPDATES_PER_NODE_PER_S,
        steady_window_s: window,
        peak_rss_mb: peak_rss_sim.unwrap_or(0) as f64 / (1024.0 * 1024.0),
        peak_rss_with_checks_mb: peak_rss_bytes().unwrap_or(0) as f64 / (1024.0 * 1024.0),
        sim_events: stats.events,
        trace_digest: sim
            .trace()
            .digest()
            .map(|d| format!("{d:016x}"))
            .unwrap_or_default(),
        router_totals: totals,
    })
}

/// A simulator for `instance` with the routing core (configured by `router`) on every node,
/// its events scheduled, warm-started when the instance says so. Restarted nodes start cold.
pub fn routing_sim(
    instance: &Instance,
    router: &RouterConfig,
) -> Result<Sim<RoutingNode>, SimError> {
    let router_cfg = router.clone();
    let shared = Arc::new(Shared {
        interner: AdvertInterner::new(),
        warm: OnceLock::new(),
    });
    let factory_shared = shared.clone();
    let mut born = vec![false; instance.topology.node_count() as usize];
    let sim = instance.sim(move |ix| {
        let first = born.get(ix as usize).is_some_and(|b| !*b);
        if let Some(b) = born.get_mut(ix as usize) {
            *b = true;
        }
        RoutingNode::new(ix, router_cfg.clone(), factory_shared.clone(), first)
    })?;
    if instance.start == Start::Warm {
        let _ = shared.warm.set(warm_plan(&sim, router));
    }
    Ok(sim)
}

/// The state a converged mesh would be in: every link measured at its nominal RTT, every node's
/// advert listing its links with the costs those RTTs give.
fn warm_plan(sim: &RoutingSim, cfg: &RouterConfig) -> WarmPlan {
    let n = sim.node_count();
    let mut links: Vec<Vec<(NodeIx, Duration)>> = vec![Vec::new(); n];
    for link in 0..sim.link_count() as LinkIx {
        let Some((a, b)) = sim.link_ends(link) else {
            continue;
        };
        let one_way = |from: NodeIx| {
            sim.link_params(link, from)
                .map_or(Duration::ZERO, |p| p.latency)
        };
        let rtt = one_way(a) + one_way(b);
        links[a as usize].push((b, rtt));
        links[b as usize].push((a, rtt));
    }
    let adverts = (0..n)
        .map(|x| {
            let advertised = links[x]
                .iter()
                .map(|&(nb, rtt)| {
                    let mut q = LinkQuality::default();
                    q.seed(rtt);
                    AdvertisedLink {
                        neighbor: sim_node_id(nb),
                        cost: q.cost(),
                        class: q.class() as u8,
                    }
                })
                .collect();
            let mut auth = sim_auth(x as NodeIx);
            Arc::new(Router::make_advert(
                sim_node_id(x as NodeIx),
                1,
                cfg.advert_lifetime,
                advertised,
                &mut auth,
            ))
        })
        .collect();
    WarmPlan::new(links, adverts)
}

/// Advances the simulator, reporting progress and stopping at every observer's sampling
/// instants on the way.
struct Clock<'a, 'o> {
    progress: &'a mut dyn FnMut(Instant),
    observers: &'a mut [&'o mut dyn Observer],
    /// Per observer: its interval (µs) and its next sampling instant (µs).
    next: Vec<(u64, u64)>,
}

impl<'a, 'o> Clock<'a, 'o> {
    fn new(
        progress: &'a mut dyn FnMut(Instant),
        observers: &'a mut [&'o mut dyn Observer],
    ) -> Self {
        let next = observers
            .iter()
            .map(|o| {
                let every = u64::try_from(o.interval().as_micros())
                    .unwrap_or(u64::MAX)
                    .max(1);
                (every, every)
            })
            .collect();
        Self {
            progress,
            observers,
            next,
        }
    }

    /// `sim.run_until(t)`, observing at each sampling instant up to `t`; then reports `t`.
    fn run_until(&mut self, sim: &mut RoutingSim, t: Instant) {
        let end = t.as_micros();
        while let Some(at) = self
            .next
            .iter()
            .map(|&(_, n)| n)
            .min()
            .filter(|&n| n <= end)
        {
            sim.run_until(Instant::from_micros(at));
            for (o, (every, next)) in self.observers.iter_mut().zip(self.next.iter_mut()) {
                if *next == at {
                    o.observe(sim, Instant::from_micros(at));
                    *next = next.saturating_add(*every);
                }
            }
        }
        sim.run_until(t);
        (self.progress)(t);
    }

    /// Advances to `t` if it is in the future.
    fn run_to(&mut self, sim: &mut RoutingSim, t: Instant) {
        if t > sim.now() {
            self.run_until(sim, t);
        }
    }
}

fn adverts_sent(sim: &RoutingSim) -> u64 {
    (0..sim.node_count() as NodeIx)
        .filter_map(|ix| sim.node(ix)?.router().map(|r| r.stats().adverts_sent))
        .sum()
}

fn own_seq(sim: &RoutingSim, ix: NodeIx) -> Option<u64> {
    sim.node(ix)?.router().map(|r| r.own_seq())
}

/// Deterministic sample of ordered pairs (all of them when there are few).
fn sample_pairs(n: usize, want: usize, seed: u64) -> Vec<(NodeIx, NodeIx)> {
    let all = n.saturating_mul(n.saturating_sub(1));
    if all <= want {
        let mut v = Vec::with_capacity(all);
        for s in 0..n as NodeIx {
            for d in 0..n as NodeIx {
                if s != d {
                    v.push((s, d));
                }
            }
        }
        return v;
    }
    let mut rng = SimRng::new(seed, Stream::User(0x7061));
    let mut v = Vec::with_capacity(want);
    while v.len() < want {
        let s = rng.below(n as u64) as NodeIx;
        let d = rng.below(n as u64) as NodeIx;
        if s != d {
            v.push((s, d));
        }
    }
    v
}

fn failure_of(sim: &RoutingSim, event: &Event) -> Option<Failure> {
    let ends = |l: &LinkIx| sim.link_ends(*l);
    match event {
        Event::LinkDown { link, .. } => ends(link).map(|e| Failure::Links(vec![e])),
        Event::Partition { links } => Some(Failure::Links(links.iter().filter_map(ends).collect())),
        Event::NodeCrash { node } => Some(Failure::Node(*node)),
        _ => None,
    }
}

fn crosses(path: &[NodeIx], f: &Failure) -> bool {
    match f {
        Failure::Node(n) => path.len() > 2 && path[1..path.len() - 1].contains(n),
        Failure::Links(links) => path.windows(2).any(|w| {
            links
                .iter()
                .any(|&(a, b)| (w[0] == a && w[1] == b) || (w[0] == b && w[1] == a))
        }),
    }
}

fn first_detection(sim: &RoutingSim, f: &Failure) -> Option<Instant> {
    let mut first: Option<Instant> = None;
    let mut note = |at: Instant| first = Some(first.map_or(at, |f: Instant| f.min(at)));
    match f {
        Failure::Links(links) => {
            for &(a, b) in links {
                for (me, other) in [(a, b), (b, a)] {
                    if let Some(node) = sim.node(me) {
                        node.downs
                            .iter()
                            .filter(|d| d.neighbor == other)
                            .for_each(|d| note(d.at));
                    }
                }
            }
        }
        Failure::Node(dead) => {
            for (nb, _) in sim.neighbors(*dead).collect::<Vec<_>>() {
                if let Some(node) = sim.node(nb) {
                    node.downs
                        .iter()
                        .filter(|d| d.neighbor == *dead && d.cause == DownCause::Silent)
                        .for_each(|d| note(d.at));
                }
            }
        }
    }
    first
}

/// Connected components of the live graph (links passing, both ends alive): one label per
/// node, equal labels for nodes in the same component.
pub(crate) fn components(sim: &RoutingSim) -> Vec<u32> {
    let n = sim.node_count();
    let mut parent: Vec<u32> = (0..n as u32).collect();
    fn find(p: &mut [u32], mut x: u32) -> u32 {
        while p[x as usize] != x {
            p[x as usize] = p[p[x as usize] as usize];
            x = p[x as usize];
        }
        x
    }
    for link in 0..sim.link_count() as LinkIx {
        let (Some((a, b)), Some(st)) = (sim.link_ends(link), sim.link_status(link)) else {
            continue;
        };
        if st.passing() && sim.is_alive(a) && sim.is_alive(b) {
            let (ra, rb) = (find(&mut parent, a), find(&mut parent, b));
            if ra != rb {
                parent[ra as usize] = rb;
            }
        }
    }
    (0..n as u32).map(|x| find(&mut parent, x)).collect()
}

fn link_live(sim: &RoutingSim, a: NodeIx, b: NodeIx) -> bool {
    sim.is_alive(b)
        && sim
            .find_link(a, b)
            .and_then(|l| sim.link_status(l))
            .is_some_and(|s| s.passing())
}

/// Why a walk failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Walk {
    /// The packet would come back to a node it already passed.
    Loop,
    /// A node had no route, or the next link or node is down.
    Dead,
}

/// Follows next hops from `src` to `dst` over live links. A node that forwards on its
/// fast-reroute backup sends the packet along the whole backup path (the data plane carries
/// the path), so the walk follows that path from there.
/// The data plane's forwarding decisions, node by node: what a packet from `src` to `dst`
/// sent now would traverse (`src` first, `dst` last).
pub fn walk(sim: &mut Sim<RoutingNode>, src: NodeIx, dst: NodeIx) -> Result<Vec<NodeIx>, Walk> {
    let now = sim.now();
    let target = sim_node_id(dst);
    let mut path = vec![src];
    let mut at = src;
    while at != dst {
        let router = sim
            .node_mut(at)
            .and_then(|n| n.router_mut())
            .ok_or(Walk::Dead)?;
        let hop = router.next_hop(now, &target).ok_or(Walk::Dead)?;
        let hops: Vec<NodeIx> = if hop.via_backup {
            let backup = router.backup_path(now, &target).ok_or(Walk::Dead)?;
            backup.iter().skip(1).filter_map(sim_node_ix).collect()
        } else {
            vec![hop.link as NodeIx]
        };
        // An explicit backup path may pass a node the packet already visited (a hairpin back
        // through the previous hop); that is not a forwarding loop.
        let explicit = hop.via_backup;
        for next in hops {
            if !link_live(sim, at, next) {
                return Err(Walk::Dead);
            }
            if (!explicit && path.contains(&next)) || path.len() > 4 * sim.node_count() {
                return Err(Walk::Loop);
            }
            path.push(next);
            at = next;
        }
    }
    Ok(path)
}

/// Every live node holds the current advert of every node in its component (and, when the
/// mesh is in one piece, the last advert of every crashed node), and every live node's sessions
/// are exactly its live links.
fn converged(sim: &RoutingSim, dead_seq: &[Option<u64>]) -> bool {
    let n = sim.node_count();
    for ix in 0..n as NodeIx {
        let Some(node) = sim.node(ix) else { continue };
        let Some(r) = node.router() else { return false };
        for (nb, link) in sim.neighbors(ix) {
            let live = sim.link_status(link).is_some_and(|s| s.passing()) && sim.is_alive(nb);
            if live != node.link_active(nb) || live != r.link_to(&sim_node_id(nb)).is_some() {
                return false;
            }
        }
    }
    let comp = components(sim);
    let whole = (0..n as NodeIx)
        .filter(|&ix| sim.is_alive(ix))
        .map(|ix| comp[ix as usize])
        .collect::<std::collections::BTreeSet<_>>()
        .len()
        <= 1;
    if whole {
        // One digest comparison per node.
        let mut expected = 0u64;
        for ix in 0..n as NodeIx {
            let seq = if sim.is_alive(ix) {
                own_seq(sim, ix)
            } else {
                dead_seq[ix as usize]
            };
            match seq {
                Some(s) if s > 0 => expected ^= version_digest(&sim_node_id(ix), s),
                Some(_) => return false,
                None => {}
            }
        }
        return (0..n as NodeIx).all(|ix| {
            sim.node(ix)
                .is_none_or(|node| node.router().is_some_and(|r| r.lsdb().digest() == expected))
        });
    }
    // Partitioned: each node must hold the current version of every node it can reach.
    let seqs: Vec<Option<u64>> = (0..n as NodeIx).map(|ix| own_seq(sim, ix)).collect();
    (0..n as NodeIx).all(|u| {
        let Some(r) = sim.node(u).and_then(|node| node.router()) else {
            return true;
        };
        (0..n as NodeIx).all(|x| {
            !sim.is_alive(x)
                || comp[x as usize] != comp[u as usize]
                || r.lsdb().seq_of(&sim_node_id(x)) == seqs[x as usize]
        })
    })
}
