//! Time series of a routing run, taken by [`Observer`]s at fixed steps of virtual time:
//!
//! * [`Telemetry`]: per-link and per-node CSV rows with ground-truth fault labels, for anomaly
//!   detection and root-cause work (the columns are documented in `docs/sim.md`);
//! * [`ControlTraffic`]: mesh-wide control traffic in bytes per second, for the timeline plot of
//!   `x0t sim --plot`.
//!
//! Both only read the simulator, so a run gives the same trace digest with and without them.
//! Rows are written as they are sampled (through a buffered writer): memory stays bounded by
//! the per-link and per-node state, whatever the length of the run.

use std::io::{self, Write};
use std::time::Duration;

use crate::engine::Sim;
use crate::experiment::{Observer, components};
use crate::link::{Direction, LinkParams};
use crate::routing::{RoutingNode, sim_node_id};
use crate::scenario::Instance;
use crate::{Event, Instant, LinkIx, NodeIx};

/// Header of `links.csv`.
pub const LINKS_HEADER: &str = "time_s,link,from,to,rtt_ms,loss,queue,throughput_bps,label";
/// Header of `nodes.csv`.
pub const NODES_HEADER: &str = "time_s,node,cpu,adverts_sent,neighbors_up,label";

/// Runs above this many nodes sample links (not nodes) by default.
pub const FULL_LINKS_MAX_NODES: usize = 2000;
/// Links sampled by default above [`FULL_LINKS_MAX_NODES`] nodes.
pub const DEFAULT_MAX_LINKS: usize = 5000;

/// The ground-truth label of a link direction or a node at a sampling instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Label {
    /// No fault injected here.
    Normal,
    /// An end of the link is crashed (link rows); the node is crashed (node rows).
    NodeCrash,
    /// The link is cut by a partition.
    Partition,
    /// The link is down (carrier lost, or failed silently).
    LinkDown,
    /// A `set-loss` event gave this direction a loss other than its initial one, above 0.
    Lossy,
    /// A `set-latency` event gave this direction a latency or jitter other than its initial one.
    Latency,
    /// The node restarted in the interval, or has not rejoined yet (node rows).
    Restarted,
}

impl Label {
    /// The label as written in the CSV files.
    pub fn name(self) -> &'static str {
        match self {
            Self::Normal => "normal",
            Self::NodeCrash => "node-crash",
            Self::Partition => "partition",
            Self::LinkDown => "link-down",
            Self::Lossy => "lossy",
            Self::Latency => "latency",
            Self::Restarted => "restarted",
        }
    }
}

/// Settings of [`Telemetry`].
#[derive(Debug, Clone)]
pub struct TelemetryConfig {
    /// Sampling interval, virtual time.
    pub interval: Duration,
    /// Links to sample at most ([`select_links`]); `None`: all of them.
    pub max_links: Option<usize>,
}

impl TelemetryConfig {
    /// Every second; all links up to [`FULL_LINKS_MAX_NODES`] nodes, else
    /// [`DEFAULT_MAX_LINKS`].
    pub fn for_nodes(nodes: usize) -> Self {
        Self {
            interval: Duration::from_secs(1),
            max_links: default_max_links(nodes),
        }
    }
}

/// The default link cap for a run of `nodes` nodes: none up to [`FULL_LINKS_MAX_NODES`], else
/// [`DEFAULT_MAX_LINKS`].
pub fn default_max_links(nodes: usize) -> Option<usize> {
    (nodes > FULL_LINKS_MAX_NODES).then_some(DEFAULT_MAX_LINKS)
}

/// The links to sample, ascending: all of them when they are at most `max`; otherwise first the
/// links the scenario's events touch (the links of link events and partitions, the links of
/// crashed or restarted nodes, in event order), then every `(links / rest)`-th other link, so
/// that faults are always in the sample and the rest is spread over the whole topology.
pub fn select_links(instance: &Instance, max: Option<usize>) -> Vec<LinkIx> {
    let total = instance.topology.link_count();
    let want = max.unwrap_or(total).min(total);
    if want == total {
        return (0..total as LinkIx).collect();
    }
    let mut chosen = vec![false; total];
    let mut count = 0;
    let take = |l: LinkIx, chosen: &mut Vec<bool>, count: &mut usize| {
        if *count < want
            && let Some(c) = chosen.get_mut(l as usize)
            && !*c
        {
            *c = true;
            *count += 1;
        }
    };
    for (_, event) in &instance.events {
        match event {
            Event::LinkDown { link, .. }
            | Event::LinkUp { link, .. }
            | Event::SetLoss { link, .. }
            | Event::SetLatency { link, .. } => take(*link, &mut chosen, &mut count),
            Event::Partition { links } => {
                for l in links {
                    take(*l, &mut chosen, &mut count);
                }
            }
            Event::NodeCrash { node } | Event::NodeRestart { node } => {
                for (ix, l) in instance.topology.links().iter().enumerate() {
                    if l.a == *node || l.b == *node {
                        take(ix as LinkIx, &mut chosen, &mut count);
                    }
                }
            }
            _ => {}
        }
    }
    let rest = want - count;
    if rest > 0 {
        for j in 0..rest {
            let l = (j as u128 * total as u128 / rest as u128) as usize;
            take(l as LinkIx, &mut chosen, &mut count);
        }
        // Strides that hit an already chosen link: fill from the lowest free indices.
        for l in 0..total {
            if count >= want {
                break;
            }
            take(l as LinkIx, &mut chosen, &mut count);
        }
    }
    chosen
        .iter()
        .enumerate()
        .filter(|(_, c)| **c)
        .map(|(l, _)| l as LinkIx)
        .collect()
}

/// `us` microseconds as seconds, without trailing zeros (`1`, `0.1`, `12.345678`).
fn secs(us: u64) -> String {
    let (s, frac) = (us / 1_000_000, us % 1_000_000);
    if frac == 0 {
        return s.to_string();
    }
    let f = format!("{frac:06}");
    format!("{s}.{}", f.trim_end_matches('0'))
}

/// One sampled direction of a link.
#[derive(Debug, Clone)]
struct SampledDirection {
    link: LinkIx,
    from: NodeIx,
    to: NodeIx,
    /// Parameters at the start of the run, as the engine stores them.
    initial: LinkParams,
    /// Bytes delivered at the last sample.
    delivered: u64,
}

/// What a node looked like at the last sample.
#[derive(Debug, Clone, Copy, Default)]
struct NodeState {
    callbacks: u64,
    adverts_sent: u64,
    incarnation: u32,
    /// Restarted and not yet rejoined.
    rejoining: bool,
}

/// Rows written so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TelemetrySummary {
    /// Sampling instants.
    pub samples: u64,
    /// Rows of `links.csv` (one per sampled direction per sample).
    pub link_rows: u64,
    /// Rows of `nodes.csv` (one per node per sample).
    pub node_rows: u64,
    /// Links sampled.
    pub links_sampled: usize,
}

/// Writes per-link and per-node time series with ground-truth labels as CSV (see the module
/// documentation and `docs/sim.md`).
#[derive(Debug)]
pub struct Telemetry<W: Write> {
    interval: Duration,
    links_out: W,
    nodes_out: W,
    directions: Vec<SampledDirection>,
    nodes: Vec<NodeState>,
    last_at: Instant,
    error: Option<io::Error>,
    summary: TelemetrySummary,
}

impl<W: Write> Telemetry<W> {
    /// Telemetry of a run of `instance`, writing `links.csv` rows to `links_out` and `nodes.csv`
    /// rows to `nodes_out` (headers now). Wrap files in a `BufWriter`.
    pub fn new(
        instance: &Instance,
        cfg: &TelemetryConfig,
        mut links_out: W,
        mut nodes_out: W,
    ) -> io::Result<Self> {
        writeln!(links_out, "{LINKS_HEADER}")?;
        writeln!(nodes_out, "{NODES_HEADER}")?;
        let topo = instance.topology.links();
        let selected = select_links(instance, cfg.max_links);
        let mut directions = Vec::with_capacity(2 * selected.len());
        for &l in &selected {
            let Some(t) = topo.get(l as usize) else {
                continue;
            };
            for (from, to, params) in [(t.a, t.b, &t.forward), (t.b, t.a, &t.backward)] {
                directions.push(SampledDirection {
                    link: l,
                    from,
                    to,
                    initial: Direction::new(params).params(),
                    delivered: 0,
                });
            }
        }
        Ok(Self {
            interval: cfg.interval.max(Duration::from_micros(1)),
            links_out,
            nodes_out,
            directions,
            nodes: vec![NodeState::default(); instance.topology.node_count() as usize],
            last_at: Instant::ZERO,
            error: None,
            summary: TelemetrySummary {
                links_sampled: selected.len(),
                ..TelemetrySummary::default()
            },
        })
    }

    /// Flushes the writers; the first write error, if any, or what was written.
    pub fn finish(mut self) -> io::Result<TelemetrySummary> {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        self.links_out.flush()?;
        self.nodes_out.flush()?;
        Ok(self.summary)
    }

    /// The writers (after [`Telemetry::finish`]-style flushing by the caller), for tests that
    /// write to memory.
    pub fn into_writers(self) -> (W, W) {
        (self.links_out, self.nodes_out)
    }

    fn write(&mut self, sim: &Sim<RoutingNode>, at: Instant) -> io::Result<()> {
        let time = secs(at.as_micros());
        let span = at.saturating_since(self.last_at).as_secs_f64().max(1e-9);
        self.last_at = at;
        let stats = sim.stats();

        for d in &mut self.directions {
            let Some((a, _)) = sim.link_ends(d.link) else {
                continue;
            };
            let traffic = stats
                .links
                .get(d.link as usize)
                .map(|t| t[usize::from(d.from != a)]);
            let delivered = traffic.map_or(0, |t| t.delivered_bytes);
            let throughput = delivered.saturating_sub(d.delivered) as f64 * 8.0 / span;
            d.delivered = delivered;
            let session = sim.node(d.from).and_then(|n| n.router()).and_then(|r| {
                let link = r.link_to(&sim_node_id(d.to))?;
                r.sessions().find(|(l, _)| *l == link).map(|(_, s)| s)
            });
            let rtt = session
                .filter(|s| s.quality().has_rtt())
                .map(|s| format!("{:.3}", s.quality().rtt_ms()))
                .unwrap_or_default();
            let loss = session
                .map(|s| format!("{:.4}", s.quality().loss()))
                .unwrap_or_default();
            let queue = sim.link_backlog(d.link, d.from).unwrap_or(0);
            let label = link_label(sim, d);
            writeln!(
                self.links_out,
                "{time},{},{},{},{rtt},{loss},{queue},{throughput:.0},{}",
                d.link,
                d.from,
                d.to,
                label.name()
            )?;
            self.summary.link_rows += 1;
        }

        let rejoin = Rejoin::new(sim, &self.nodes);
        for (ix, state) in self.nodes.iter_mut().enumerate() {
            let ix = ix as NodeIx;
            let callbacks = sim.node_callbacks(ix).unwrap_or(0);
            let incarnation = sim.incarnation(ix).unwrap_or(0);
            let cpu = callbacks.saturating_sub(state.callbacks);
            let new_life = incarnation != state.incarnation;
            let router = sim.node(ix).and_then(|n| n.router());
            let (label, adverts, neighbors) = match router {
                None if !sim.is_alive(ix) => {
                    state.rejoining = false;
                    state.adverts_sent = 0;
                    (Label::NodeCrash, 0, 0)
                }
                None => (Label::Normal, 0, 0),
                Some(r) => {
                    let total = r.stats().adverts_sent;
                    let adverts = if new_life {
                        total
                    } else {
                        total.saturating_sub(state.adverts_sent)
                    };
                    state.adverts_sent = total;
                    let restarted_now = new_life;
                    if restarted_now {
                        state.rejoining = true;
                    }
                    let label = if state.rejoining {
                        if rejoin.rejoined(sim, ix) {
                            state.rejoining = false;
                        }
                        Label::Restarted
                    } else {
                        Label::Normal
                    };
                    (label, adverts, r.sessions().count())
                }
            };
            state.callbacks = callbacks;
            state.incarnation = incarnation;
            writeln!(
                self.nodes_out,
                "{time},{ix},{cpu},{adverts},{neighbors},{}",
                label.name()
            )?;
            self.summary.node_rows += 1;
        }
        self.summary.samples += 1;
        Ok(())
    }
}

impl<W: Write> Observer for Telemetry<W> {
    fn interval(&self) -> Duration {
        self.interval
    }

    fn observe(&mut self, sim: &Sim<RoutingNode>, at: Instant) {
        if self.error.is_some() {
            return;
        }
        if let Err(e) = self.write(sim, at) {
            self.error = Some(e);
        }
    }
}

/// The fault on one direction of a link, most drastic first.
fn link_label(sim: &Sim<RoutingNode>, d: &SampledDirection) -> Label {
    if !sim.is_alive(d.from) || !sim.is_alive(d.to) {
        return Label::NodeCrash;
    }
    let Some(status) = sim.link_status(d.link) else {
        return Label::Normal;
    };
    if status.partitioned {
        return Label::Partition;
    }
    if !status.carrier || status.silent_down {
        return Label::LinkDown;
    }
    let Some(now) = sim.link_params(d.link, d.from) else {
        return Label::Normal;
    };
    if now.loss != d.initial.loss && now.loss > 0.0 {
        Label::Lossy
    } else if now.latency != d.initial.latency || now.jitter != d.initial.jitter {
        Label::Latency
    } else {
        Label::Normal
    }
}

/// Whether restarted nodes have rejoined: the node has a session on every passing link to a
/// live neighbour, and holds an advert of every live node in its component of the live graph.
struct Rejoin {
    /// Component of each node (computed only when some node is rejoining).
    component: Vec<u32>,
}

impl Rejoin {
    fn new(sim: &Sim<RoutingNode>, nodes: &[NodeState]) -> Self {
        let any = nodes.iter().enumerate().any(|(ix, s)| {
            s.rejoining
                || sim
                    .incarnation(ix as NodeIx)
                    .is_some_and(|i| i != s.incarnation)
        });
        Self {
            component: if any { components(sim) } else { Vec::new() },
        }
    }

    fn rejoined(&self, sim: &Sim<RoutingNode>, ix: NodeIx) -> bool {
        let Some(r) = sim.node(ix).and_then(|n| n.router()) else {
            return false;
        };
        let sessions_match = sim.neighbors(ix).all(|(nb, link)| {
            let live = sim.link_status(link).is_some_and(|s| s.passing()) && sim.is_alive(nb);
            live == r.link_to(&sim_node_id(nb)).is_some()
        });
        let Some(&mine) = self.component.get(ix as usize) else {
            return false;
        };
        sessions_match
            && self.component.iter().enumerate().all(|(x, &c)| {
                c != mine
                    || !sim.is_alive(x as NodeIx)
                    || r.lsdb().seq_of(&sim_node_id(x as NodeIx)).is_some()
            })
    }
}

/// Mesh-wide control traffic (every byte the routing nodes sent: probes, adverts, acks, link
/// hellos) in bytes per second, one point per interval.
#[derive(Debug, Clone)]
pub struct ControlTraffic {
    interval: Duration,
    last: (Instant, u64),
    /// `(end of the interval, seconds; bytes per second over the interval)`.
    pub series: Vec<(f64, f64)>,
}

impl ControlTraffic {
    /// Samples every `interval` (at least 1 µs).
    pub fn new(interval: Duration) -> Self {
        Self {
            interval: interval.max(Duration::from_micros(1)),
            last: (Instant::ZERO, 0),
            series: Vec::new(),
        }
    }

    /// 100 ms, or 1 s for runs of more than [`FULL_LINKS_MAX_NODES`] nodes.
    pub fn interval_for(nodes: usize) -> Duration {
        if nodes > FULL_LINKS_MAX_NODES {
            Duration::from_secs(1)
        } else {
            Duration::from_millis(100)
        }
    }
}

impl Observer for ControlTraffic {
    fn interval(&self) -> Duration {
        self.interval
    }

    fn observe(&mut self, sim: &Sim<RoutingNode>, at: Instant) {
        let bytes = sim.stats().sent_bytes();
        let span = at.saturating_since(self.last.0).as_secs_f64();
        if span > 0.0 {
            let rate = bytes.saturating_sub(self.last.1) as f64 / span;
            self.series.push((at.as_micros() as f64 / 1e6, rate));
        }
        self.last = (at, bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Scenario;
    use crate::experiment::{self, ExperimentConfig, Report};

    const RING: &str = r#"
duration = "12s"
seed = 3
[topology]
generator = "ring"
n = 8
[links]
latency = "2ms"
bandwidth = "1Mbit"
[[events]]
at = "4s"
kind = "link-down"
link = [0, 1]
visible = true
[[events]]
at = "7s"
kind = "link-up"
link = [0, 1]
visible = true
[[events]]
at = "8s"
kind = "set-loss"
link = [2, 3]
loss = 0.3
[[events]]
at = "9s"
kind = "node-crash"
node = 5
[[events]]
at = "10s"
kind = "node-restart"
node = 5
"#;

    fn instance() -> Instance {
        Scenario::parse(RING).unwrap().instantiate(None).unwrap()
    }

    fn plain() -> Report {
        experiment::run(&instance(), &ExperimentConfig::default(), &mut |_| {}).unwrap()
    }

    /// Everything a run measures that does not depend on the wall clock.
    fn fingerprint(r: &Report) -> String {
        let mut r = r.clone();
        r.wall_s = 0.0;
        r.total_wall_s = 0.0;
        r.peak_rss_mb = 0.0;
        r.peak_rss_with_checks_mb = 0.0;
        format!("{r:?}")
    }

    #[test]
    fn observing_does_not_change_the_run() {
        let base = plain();
        let inst = instance();
        let cfg = TelemetryConfig {
            // An interval that falls between the experiment's own steps.
            interval: Duration::from_micros(7_301),
            max_links: None,
        };
        let mut telemetry = Telemetry::new(&inst, &cfg, Vec::new(), Vec::new()).unwrap();
        let mut traffic = ControlTraffic::new(Duration::from_millis(100));
        let mut second = Telemetry::new(
            &inst,
            &TelemetryConfig {
                interval: Duration::from_secs(1),
                max_links: Some(3),
            },
            Vec::new(),
            Vec::new(),
        )
        .unwrap();
        let observed = experiment::run_observed(
            &inst,
            &ExperimentConfig::default(),
            &mut |_| {},
            &mut [&mut telemetry, &mut traffic, &mut second],
        )
        .unwrap();
        assert!(!base.trace_digest.is_empty());
        assert_eq!(observed.trace_digest, base.trace_digest);
        assert_eq!(fingerprint(&observed), fingerprint(&base));
        assert_eq!(traffic.series.len(), 120);
        assert!(telemetry.finish().unwrap().samples > 1000);
    }

    #[test]
    fn telemetry_rows_and_labels() {
        let inst = instance();
        let cfg = TelemetryConfig {
            interval: Duration::from_millis(500),
            max_links: None,
        };
        let mut telemetry = Telemetry::new(&inst, &cfg, Vec::new(), Vec::new()).unwrap();
        experiment::run_observed(
            &inst,
            &ExperimentConfig::default(),
            &mut |_| {},
            &mut [&mut telemetry],
        )
        .unwrap();
        let (links, nodes) = telemetry.into_writers();
        let links = String::from_utf8(links).unwrap();
        let nodes = String::from_utf8(nodes).unwrap();
        let link_rows: Vec<Vec<&str>> = links
            .lines()
            .skip(1)
            .map(|l| l.split(',').collect())
            .collect();
        let node_rows: Vec<Vec<&str>> = nodes
            .lines()
            .skip(1)
            .map(|l| l.split(',').collect())
            .collect();
        assert_eq!(links.lines().next(), Some(LINKS_HEADER));
        assert_eq!(nodes.lines().next(), Some(NODES_HEADER));
        // 24 samples × 8 links × 2 directions; 24 × 8 nodes.
        assert_eq!(link_rows.len(), 24 * 16);
        assert_eq!(node_rows.len(), 24 * 8);
        assert!(link_rows.iter().all(|r| r.len() == 9));
        assert!(node_rows.iter().all(|r| r.len() == 6));
        let label = |t: &str, link: &str, from: &str| {
            link_rows
                .iter()
                .find(|r| r[0] == t && r[1] == link && r[2] == from)
                .map(|r| r[8])
                .unwrap()
        };
        let link01 = inst.topology.find_link(0, 1).unwrap().to_string();
        let link23 = inst.topology.find_link(2, 3).unwrap().to_string();
        let link45 = inst.topology.find_link(4, 5).unwrap().to_string();
        assert_eq!(label("3.5", &link01, "0"), "normal");
        assert_eq!(label("4", &link01, "0"), "link-down");
        assert_eq!(label("6.5", &link01, "1"), "link-down");
        assert_eq!(label("7", &link01, "0"), "normal");
        assert_eq!(label("8", &link23, "2"), "lossy");
        assert_eq!(label("8", &link23, "3"), "lossy");
        assert_eq!(label("9", &link45, "4"), "node-crash");
        assert_eq!(label("10", &link45, "4"), "normal");
        // RTT measured on a live session (2 ms each way), none on the downed link's ends.
        let row = |t: &str, link: &str, from: &str| {
            link_rows
                .iter()
                .find(|r| r[0] == t && r[1] == link && r[2] == from)
                .unwrap()
                .clone()
        };
        let rtt: f64 = row("3", &link01, "0")[4].parse().unwrap();
        assert!((3.5..6.0).contains(&rtt), "{rtt}");
        assert_eq!(row("5", &link01, "0")[4], "");
        // Traffic flows on live links, none on the downed one.
        assert!(row("3", &link01, "0")[7].parse::<f64>().unwrap() > 0.0);
        assert_eq!(row("6", &link01, "0")[7], "0");
        let node = |t: &str, n: &str| {
            node_rows
                .iter()
                .find(|r| r[0] == t && r[1] == n)
                .unwrap()
                .clone()
        };
        assert_eq!(node("9.5", "5")[5], "node-crash");
        assert_eq!(node("9.5", "5")[2], "0", "a crashed node handles nothing");
        assert_eq!(node("10", "5")[5], "restarted");
        assert_eq!(node("12", "5")[5], "normal", "rejoined by the end");
        assert_eq!(node("8", "0")[5], "normal");
        assert!(node("8", "0")[2].parse::<u64>().unwrap() > 0);
        assert_eq!(node("8", "0")[4], "2");
        assert_eq!(node("5", "0")[4], "1", "one session while 0–1 is down");
    }

    #[test]
    fn link_selection_keeps_faults_and_spreads_the_rest() {
        let inst = instance();
        assert_eq!(select_links(&inst, None).len(), 8);
        assert_eq!(select_links(&inst, Some(100)).len(), 8);
        let some = select_links(&inst, Some(5));
        assert_eq!(some.len(), 5);
        // 0–1, 2–3, and 4–5 and 5–6 (node 5's links) come first.
        for (a, b) in [(0, 1), (2, 3), (4, 5), (5, 6)] {
            assert!(some.contains(&inst.topology.find_link(a, b).unwrap()));
        }
        assert!(some.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(select_links(&inst, Some(0)), Vec::<LinkIx>::new());
    }

    #[test]
    fn seconds_are_written_exactly() {
        assert_eq!(secs(0), "0");
        assert_eq!(secs(1_000_000), "1");
        assert_eq!(secs(100_000), "0.1");
        assert_eq!(secs(12_345_678), "12.345678");
    }
}
