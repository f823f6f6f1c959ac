//! What the monitor feeds the loop: typed samples, and the subjects and metrics they describe.
//!
//! The daemon builds a [`Sample`] from the routing core (per-link RTT, loss, probe misses,
//! quality class), from its end-to-end prober ([`PathProbe`]), from the data plane's drop
//! counters, from eBPF and from the process, and passes it with the current time to
//! [`crate::Healer::handle_sample`]. Counters are *cumulative* (as the kernel and the data
//! plane keep them): the loop takes the differences itself, so that a counter that goes down
//! (a restart) is seen as a reset rather than as a huge negative or positive rate.
//!
//! Nothing here trusts its input: a NaN, an infinity or a value outside a metric's range is
//! dropped by [`crate::monitor`] before any detector sees it.

use std::fmt;

use serde::{Deserialize, Serialize};
use x0_routing::{LinkId, QualityClass};
use x0_wire::NodeId;

/// One of our links: the daemon's handle for it and the neighbour at its far end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct LinkRef {
    /// The daemon's link handle (as in `x0_routing::LinkId`).
    pub id: LinkId,
    /// The neighbour.
    pub neighbor: NodeId,
}

impl fmt::Display for LinkRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "link {} to {}", self.id, self.neighbor.short())
    }
}

/// Why a link is down (mirrors `x0_routing::DownCause`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DownCause {
    /// Seen locally: the interface or the QUIC connection went away.
    Local,
    /// The neighbour went silent (BFD-style detection).
    Silent,
}

/// Liveness of a link as the routing core reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkState {
    /// The session is up.
    Up,
    /// The session is down.
    Down(DownCause),
}

/// Per-link measurements, read from the routing core. Send one per link per sampling
/// interval, and one at once whenever the routing core reports the link up or down.
#[derive(Debug, Clone, PartialEq)]
pub struct LinkSample {
    /// The link.
    pub link: LinkRef,
    /// Up or down.
    pub state: LinkState,
    /// Smoothed RTT in milliseconds, if measured.
    pub rtt_ms: Option<f64>,
    /// Windowed round-trip loss ratio in `[0, 1]`, if measured.
    pub loss: Option<f64>,
    /// Probe intervals missed in a row right now (0 when the last probe arrived in time).
    pub probe_misses: u32,
    /// The routing core's quality class, if known.
    pub class: Option<QualityClass>,
    /// Bytes received on the link since it was set up (cumulative).
    pub rx_bytes: Option<u64>,
}

impl LinkSample {
    /// An up link with nothing measured yet.
    pub fn up(link: LinkRef) -> Self {
        Self {
            link,
            state: LinkState::Up,
            rtt_ms: None,
            loss: None,
            probe_misses: 0,
            class: None,
            rx_bytes: None,
        }
    }

    /// A down link.
    pub fn down(link: LinkRef, cause: DownCause) -> Self {
        Self {
            state: LinkState::Down(cause),
            ..Self::up(link)
        }
    }
}

/// The result of one round of end-to-end probes to `dst` along an explicit path.
///
/// The daemon probes a rotating sample of destinations along each of their disjoint paths
/// (the primary and at least one backup), and keeps probing along paths through quarantined
/// relays and excluded links at a low rate, so that the loop can tell when a cause clears.
#[derive(Debug, Clone, PartialEq)]
pub struct PathProbe {
    /// The destination.
    pub dst: NodeId,
    /// The relays between us and `dst`, in order (empty for a neighbour reached directly).
    pub relays: Vec<NodeId>,
    /// Probes sent in this round whose answer is due by now.
    pub sent: u32,
    /// Of those, how many were answered.
    pub received: u32,
    /// Mean RTT of the answered ones, in milliseconds.
    pub rtt_ms: Option<f64>,
    /// Whether this path is the one routing currently uses for `dst` (so that its success is
    /// the end-to-end delivery users see).
    pub on_route: bool,
}

/// The data plane's packet drop counters by reason (cumulative), for the whole node or for
/// one link.
#[derive(Debug, Clone, PartialEq)]
pub struct DropCounters {
    /// The link the counters belong to, or `None` for node-wide counters.
    pub link: Option<LinkRef>,
    /// `(reason, packets dropped since start)`, e.g. `("no_route", 12)`. Reasons whose name
    /// contains `decrypt`, `auth` or `replay` count as cryptographic failures.
    pub by_reason: Vec<(String, u64)>,
}

/// Kernel counters from the eBPF programs (cumulative).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelCounters {
    /// Packets the kernel dropped (all reasons).
    pub drops: u64,
    /// TCP retransmissions.
    pub retransmits: u64,
}

/// The daemon process's own resource use.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcessStats {
    /// CPU time used since start, milliseconds (cumulative).
    pub cpu_time_ms: u64,
    /// CPU cores available to the process.
    pub cores: u32,
    /// Resident memory, bytes.
    pub rss_bytes: u64,
    /// Delay of the async runtime's timer ticks, milliseconds, if measured.
    pub loop_lag_ms: Option<f64>,
    /// The longest delay of any timer tick since the previous sample, milliseconds, if
    /// measured: a stall of this node's runtime. Not a metric of its own (a short stall is
    /// nobody's problem); it explains a rise of the link RTTs measured meanwhile (see
    /// [`crate::Healer::handle_samples`]).
    pub loop_stall_ms: Option<f64>,
}

/// One input to the loop.
#[derive(Debug, Clone, PartialEq)]
pub enum Sample {
    /// Per-link measurements or a link state change.
    Link(LinkSample),
    /// An end-to-end probe round.
    Probe(PathProbe),
    /// Data-plane drop counters.
    Drops(DropCounters),
    /// eBPF counters.
    Kernel(KernelCounters),
    /// Process statistics.
    Process(ProcessStats),
}

/// What a symptom, an incident or a metric is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type", content = "id")]
pub enum Subject {
    /// One of our links.
    Link(LinkRef),
    /// Another node.
    Node(NodeId),
    /// This node itself (its host, process or underlay).
    Local,
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Link(l) => l.fmt(f),
            Self::Node(n) => write!(f, "node {}", n.short()),
            Self::Local => f.write_str("this node"),
        }
    }
}

/// A measured quantity of a subject, after the monitor turned counters into rates.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Link RTT, ms.
    RttMs,
    /// Link loss ratio.
    Loss,
    /// Received bytes per second on a link.
    RxBytesPerS,
    /// Data-plane drops per second for one reason.
    DropsPerS(String),
    /// Kernel drops per second.
    KernelDropsPerS,
    /// TCP retransmissions per second.
    RetransmitsPerS,
    /// CPU use as a share of the available cores (0–1).
    CpuShare,
    /// Resident memory, MiB.
    RssMib,
    /// Runtime timer lag, ms.
    LoopLagMs,
}

/// How a metric is judged: what values are possible, and what change is too small to matter
/// whatever the statistics say (so that a perfectly steady series, whose deviation is ~0,
/// does not call a 0.1 ms wobble an anomaly).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MetricSpec {
    /// Smallest valid value.
    pub min: f64,
    /// Largest valid value.
    pub max: f64,
    /// Floor under the learned standard deviation.
    pub min_std: f64,
    /// A deviation must be at least this much, absolutely…
    pub min_delta_abs: f64,
    /// …and at least this share of the baseline mean.
    pub min_delta_rel: f64,
}

impl Metric {
    /// The metric's [`MetricSpec`].
    pub fn spec(&self) -> MetricSpec {
        let s = |min, max, min_std, min_delta_abs, min_delta_rel| MetricSpec {
            min,
            max,
            min_std,
            min_delta_abs,
            min_delta_rel,
        };
        match self {
            Self::RttMs => s(0.0, 60_000.0, 0.5, 5.0, 0.5),
            Self::Loss => s(0.0, 1.0, 0.01, 0.04, 0.0),
            Self::RxBytesPerS => s(0.0, 1e12, 10_000.0, 10e6, 2.0),
            Self::DropsPerS(_) | Self::KernelDropsPerS | Self::RetransmitsPerS => {
                s(0.0, 1e9, 2.0, 50.0, 1.0)
            }
            Self::CpuShare => s(0.0, 1.0, 0.02, 0.3, 0.5),
            Self::RssMib => s(0.0, 1e7, 4.0, 256.0, 1.0),
            Self::LoopLagMs => s(0.0, 60_000.0, 1.0, 50.0, 1.0),
        }
    }

    /// A stable text key (for the knowledge base).
    pub fn key(&self) -> String {
        match self {
            Self::DropsPerS(r) => format!("drops_per_s:{r}"),
            other => serde_json::to_value(other)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
        }
    }
}

/// One value of one metric of one subject, accepted by the monitor.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    /// What it is about.
    pub subject: Subject,
    /// What was measured.
    pub metric: Metric,
    /// The value (finite, within [`Metric::spec`]).
    pub value: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_keys_are_stable_and_distinct() {
        assert_eq!(Metric::RttMs.key(), "rtt_ms");
        assert_eq!(Metric::Loss.key(), "loss");
        assert_eq!(
            Metric::DropsPerS("no_route".into()).key(),
            "drops_per_s:no_route"
        );
        let all = [
            Metric::RttMs,
            Metric::Loss,
            Metric::RxBytesPerS,
            Metric::DropsPerS("x".into()),
            Metric::KernelDropsPerS,
            Metric::RetransmitsPerS,
            Metric::CpuShare,
            Metric::RssMib,
            Metric::LoopLagMs,
        ];
        let keys: std::collections::BTreeSet<_> = all.iter().map(Metric::key).collect();
        assert_eq!(keys.len(), all.len());
        assert!(keys.iter().all(|k| !k.is_empty()));
    }

    #[test]
    fn subjects_round_trip_through_json() {
        let n = NodeId::from_bytes([7; 16]);
        for s in [
            Subject::Local,
            Subject::Node(n),
            Subject::Link(LinkRef { id: 3, neighbor: n }),
        ] {
            let j = serde_json::to_string(&s).unwrap();
            assert_eq!(serde_json::from_str::<Subject>(&j).unwrap(), s, "{j}");
        }
    }
}
