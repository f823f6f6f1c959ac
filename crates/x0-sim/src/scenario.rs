//! Scenario files: a topology, link defaults, a duration, a seed and timed events, in TOML.
//!
//! The format is documented in `docs/sim.md`. Parsing is strict: unknown keys, keys that do
//! not apply (a `radius` on a ring), impossible values (a loss of 1.5 or NaN, `n = 0`, an
//! event after the end), and references to nodes or links that do not exist are refused with
//! the line and the dotted key, e.g. `line 12: events[1].link: there is no link 3–7`.
//!
//! [`Scenario::parse`] checks everything that does not depend on the seed and then builds the
//! run once with the file's seed, so that link references are checked too; `x0t sim --seed N`
//! builds it again with [`Scenario::instantiate`], which can still refuse a link that the new
//! seed's random topology lacks (pin `topology.seed` to keep the graph when changing the run
//! seed).

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, MapAccess, SeqAccess, Visitor};
use toml::Spanned;
use x0_routing::Instant;

use crate::engine::{Event, Sim, SimError, SimNode};
use crate::topology::{ExplicitEdge, Generator, Latency, LinkSpec, Reach, Topology};
use crate::{LinkIx, NodeIx};

/// Why a scenario was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScenarioError {
    /// The file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// Something in the file is wrong.
    #[error("{}line {line}: {key}: {message}", file_prefix(.file.as_deref()))]
    Invalid {
        /// The file, when read from one.
        file: Option<PathBuf>,
        /// 1-based line.
        line: usize,
        /// Dotted key, e.g. `events[2].loss` (`(document)` for syntax errors before any key).
        key: String,
        /// What is wrong and what is allowed.
        message: String,
    },
}

fn file_prefix(file: Option<&Path>) -> String {
    file.map(|p| format!("{}: ", p.display()))
        .unwrap_or_default()
}

impl ScenarioError {
    /// The line the error points at, if it points into the file.
    pub fn line(&self) -> Option<usize> {
        match self {
            Self::Invalid { line, .. } => Some(*line),
            Self::Read { .. } => None,
        }
    }

    /// The key the error is about, if any.
    pub fn key(&self) -> Option<&str> {
        match self {
            Self::Invalid { key, .. } => Some(key),
            Self::Read { .. } => None,
        }
    }

    fn in_file(self, path: &Path) -> Self {
        match self {
            Self::Invalid {
                line, key, message, ..
            } => Self::Invalid {
                file: Some(path.to_path_buf()),
                line,
                key,
                message,
            },
            other => other,
        }
    }
}

/// Maps byte offsets to 1-based lines.
struct Lines<'a>(&'a str);

impl Lines<'_> {
    fn of(&self, offset: usize) -> usize {
        let end = offset.min(self.0.len());
        1 + self.0.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
    }

    fn err(
        &self,
        offset: usize,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> ScenarioError {
        ScenarioError::Invalid {
            file: None,
            line: self.of(offset),
            key: key.into(),
            message: message.into(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The file as written.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScenario {
    description: Option<String>,
    seed: Option<Spanned<u64>>,
    start: Option<Spanned<String>>,
    duration: Spanned<String>,
    topology: Spanned<RawTopology>,
    links: Option<Spanned<RawLinks>>,
    #[serde(default)]
    events: Vec<Spanned<RawEvent>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTopology {
    generator: Option<Spanned<String>>,
    seed: Option<Spanned<u64>>,
    n: Option<Spanned<u32>>,
    width: Option<Spanned<u32>>,
    height: Option<Spanned<u32>>,
    radius: Option<Spanned<f64>>,
    avg_degree: Option<Spanned<f64>>,
    m: Option<Spanned<u32>>,
    p: Option<Spanned<f64>>,
    connect: Option<Spanned<bool>>,
    nodes: Option<Spanned<u32>>,
    edges: Option<Spanned<Vec<Spanned<RawEdge>>>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLinks {
    latency: Option<Spanned<String>>,
    jitter: Option<Spanned<String>>,
    loss: Option<Spanned<f64>>,
    bandwidth: Option<Spanned<RawBandwidth>>,
    queue: Option<Spanned<u32>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEdgeTable {
    a: Spanned<u32>,
    b: Spanned<u32>,
    latency: Option<Spanned<String>>,
    jitter: Option<Spanned<String>>,
    loss: Option<Spanned<f64>>,
    bandwidth: Option<Spanned<RawBandwidth>>,
    queue: Option<Spanned<u32>>,
}

/// `[a, b]` or `{ a = .., b = .., latency = .. }`.
#[derive(Debug)]
enum RawEdge {
    Pair(u32, u32),
    Table(Box<RawEdgeTable>),
}

impl<'de> Deserialize<'de> for RawEdge {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct EdgeVisitor;
        impl<'de> Visitor<'de> for EdgeVisitor {
            type Value = RawEdge;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an edge: [a, b] or { a = .., b = .., latency = .. }")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawEdge, A::Error> {
                let a: u32 = seq
                    .next_element()?
                    .ok_or_else(|| de::Error::invalid_length(0, &self))?;
                let b: u32 = seq
                    .next_element()?
                    .ok_or_else(|| de::Error::invalid_length(1, &self))?;
                if seq.next_element::<de::IgnoredAny>()?.is_some() {
                    return Err(de::Error::invalid_length(3, &self));
                }
                Ok(RawEdge::Pair(a, b))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawEdge, A::Error> {
                RawEdgeTable::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(|t| RawEdge::Table(Box::new(t)))
            }
        }
        d.deserialize_any(EdgeVisitor)
    }
}

/// `"10Mbit"` or an integer in bits per second.
#[derive(Debug)]
enum RawBandwidth {
    Bps(i64),
    Text(String),
}

impl<'de> Deserialize<'de> for RawBandwidth {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct BwVisitor;
        impl Visitor<'_> for BwVisitor {
            type Value = RawBandwidth;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a rate like \"10Mbit\" or an integer in bits per second")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawBandwidth, E> {
                Ok(RawBandwidth::Bps(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawBandwidth, E> {
                Ok(RawBandwidth::Bps(i64::try_from(v).unwrap_or(i64::MAX)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawBandwidth, E> {
                Ok(RawBandwidth::Text(v.to_owned()))
            }
        }
        d.deserialize_any(BwVisitor)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEvent {
    at: Spanned<String>,
    kind: Spanned<String>,
    link: Option<Spanned<Vec<u32>>>,
    node: Option<Spanned<u32>>,
    visible: Option<Spanned<bool>>,
    one_way: Option<Spanned<bool>>,
    loss: Option<Spanned<f64>>,
    latency: Option<Spanned<String>>,
    jitter: Option<Spanned<String>>,
    groups: Option<Spanned<Vec<Vec<Spanned<u32>>>>>,
    cut: Option<Spanned<Vec<Spanned<Vec<u32>>>>>,
}

// ---------------------------------------------------------------------------------------------
// The checked scenario.

/// A reference to the link between two nodes, with where it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkRef {
    /// One end.
    pub a: NodeIx,
    /// The other end (the direction `a → b` is the "one way" of one-way events).
    pub b: NodeIx,
    /// Line in the file.
    pub line: usize,
    /// Dotted key in the file.
    pub key: String,
}

/// How a partition is given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartitionSpec {
    /// Node sets; nodes listed in none form one more set. Every link between two sets is cut.
    Groups(Vec<Vec<NodeIx>>),
    /// These links are cut.
    Cut(Vec<LinkRef>),
}

/// What a scenario event does (node-pair references are resolved to links when the topology
/// is built).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Action {
    /// See [`Event::LinkDown`].
    LinkDown {
        /// The link.
        link: LinkRef,
        /// Whether the ends see it.
        visible: bool,
    },
    /// See [`Event::LinkUp`].
    LinkUp {
        /// The link.
        link: LinkRef,
        /// Whether the ends see it.
        visible: bool,
    },
    /// See [`Event::NodeCrash`].
    NodeCrash {
        /// The node.
        node: NodeIx,
    },
    /// See [`Event::NodeRestart`].
    NodeRestart {
        /// The node.
        node: NodeIx,
    },
    /// See [`Event::SetLoss`].
    SetLoss {
        /// The link.
        link: LinkRef,
        /// Only the direction `a → b`.
        one_way: bool,
        /// New loss.
        loss: f64,
    },
    /// See [`Event::SetLatency`].
    SetLatency {
        /// The link.
        link: LinkRef,
        /// Only the direction `a → b`.
        one_way: bool,
        /// New latency.
        latency: Duration,
        /// New jitter, if given.
        jitter: Option<Duration>,
    },
    /// See [`Event::Partition`].
    Partition(PartitionSpec),
    /// See [`Event::Heal`].
    Heal,
}

/// One timed event of a scenario.
#[derive(Debug, Clone, PartialEq)]
pub struct ScenarioEvent {
    /// When, from the start of the run.
    pub at: Duration,
    /// What.
    pub action: Action,
    /// The `kind` string, as written.
    pub kind: String,
    /// Line of the event's `[[events]]` header.
    pub line: usize,
}

/// A checked scenario.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    /// Free text.
    pub description: Option<String>,
    /// The run's seed (default 0); `x0t sim --seed` overrides it.
    pub seed: u64,
    /// The topology's own seed, if pinned (otherwise the run's seed is used).
    pub topology_seed: Option<u64>,
    /// How the nodes start: cold (empty state; the mesh converges from nothing) or warm (as an
    /// already converged mesh).
    pub start: Start,
    /// How long to simulate.
    pub duration: Duration,
    /// The topology generator.
    pub generator: Generator,
    /// Default link parameters.
    pub links: LinkSpec,
    /// Timed events, in file order (the engine runs simultaneous ones in this order).
    pub events: Vec<ScenarioEvent>,
    topology_line: usize,
}

/// How a run begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Start {
    /// Every node starts with empty state at time zero (the default).
    #[default]
    Cold,
    /// Every node starts as part of an already converged mesh.
    Warm,
}

/// A scenario made concrete for one seed: the topology and the events on its links.
#[derive(Debug, Clone)]
pub struct Instance {
    /// The run's seed.
    pub seed: u64,
    /// How long to simulate.
    pub duration: Duration,
    /// The topology.
    pub topology: Topology,
    /// The events, with their times.
    pub events: Vec<(Instant, Event)>,
    /// The `kind` strings of the events, by position.
    pub kinds: Vec<String>,
    /// How the nodes start.
    pub start: Start,
}

impl Instance {
    /// A simulator for this instance with its events scheduled.
    pub fn sim<N: SimNode>(
        &self,
        factory: impl FnMut(NodeIx) -> N + 'static,
    ) -> Result<Sim<N>, SimError> {
        let mut sim = Sim::new(&self.topology, self.seed, factory);
        for (at, ev) in &self.events {
            sim.schedule(*at, ev.clone())?;
        }
        Ok(sim)
    }

    /// The end of the run.
    pub fn end(&self) -> Instant {
        Instant::ZERO + self.duration
    }
}

const GENERATORS: &str =
    "\"ring\", \"grid\", \"random-geometric\", \"scale-free\", \"erdos-renyi\" or \"explicit\"";
const EVENT_KINDS: &str = "\"link-down\", \"link-up\", \"node-crash\", \"node-restart\", \
     \"set-loss\", \"set-latency\", \"partition\" or \"heal\"";

fn duration_of(
    lines: &Lines<'_>,
    s: &Spanned<String>,
    key: &str,
) -> Result<Duration, ScenarioError> {
    humantime::parse_duration(s.get_ref().trim()).map_err(|e| {
        lines.err(
            s.span().start,
            key,
            format!(
                "{:?} is not a duration ({e}); write e.g. \"250ms\", \"2s\" or \"1m\"",
                s.get_ref()
            ),
        )
    })
}

fn latency_of(lines: &Lines<'_>, s: &Spanned<String>, key: &str) -> Result<Latency, ScenarioError> {
    match s.get_ref().split_once("..") {
        None => duration_of(lines, s, key).map(Latency::Fixed),
        Some((lo, hi)) => {
            let part = |text: &str| {
                humantime::parse_duration(text.trim()).map_err(|e| {
                    lines.err(
                        s.span().start,
                        key,
                        format!(
                            "{:?} is not a duration ({e}); write e.g. \"5ms\" or \"1ms..20ms\"",
                            text.trim()
                        ),
                    )
                })
            };
            let (min, max) = (part(lo)?, part(hi)?);
            if min > max {
                return Err(lines.err(
                    s.span().start,
                    key,
                    format!(
                        "range {:?} runs backwards: the minimum must come first",
                        s.get_ref()
                    ),
                ));
            }
            Ok(Latency::Uniform { min, max })
        }
    }
}

fn loss_of(lines: &Lines<'_>, s: &Spanned<f64>, key: &str) -> Result<f64, ScenarioError> {
    let v = *s.get_ref();
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(lines.err(
            s.span().start,
            key,
            format!("{v} is not a probability: loss must be between 0 and 1 (0.05 = 5 %)"),
        ))
    }
}

fn bandwidth_of(
    lines: &Lines<'_>,
    s: &Spanned<RawBandwidth>,
    key: &str,
) -> Result<u64, ScenarioError> {
    let bad = |what: String| lines.err(s.span().start, key, what);
    let bps = match s.get_ref() {
        RawBandwidth::Bps(v) => u64::try_from(*v).ok().filter(|&v| v > 0),
        RawBandwidth::Text(t) => parse_rate(t),
    };
    bps.ok_or_else(|| {
        bad(match s.get_ref() {
            RawBandwidth::Bps(v) => format!("{v} bit/s: a bandwidth must be above 0"),
            RawBandwidth::Text(t) => format!(
                "{t:?} is not a rate above 0; write e.g. \"100kbit\", \"10Mbit\", \"1Gbit\" \
                 (or kbps/Mbps/Gbps, or a number of bits per second)"
            ),
        })
    })
}

/// `"10Mbit"`, `"1.5Gbps"`, `"800kbit"`, `"64000bit"`, `"64000"` → bits per second.
fn parse_rate(text: &str) -> Option<u64> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num.parse().ok()?;
    let scale = match unit.trim() {
        "" | "bit" | "bps" | "bit/s" => 1.0,
        "kbit" | "kbps" | "kbit/s" => 1e3,
        "Mbit" | "Mbps" | "Mbit/s" => 1e6,
        "Gbit" | "Gbps" | "Gbit/s" => 1e9,
        _ => return None,
    };
    let bps = (value * scale).round();
    (1.0..1e18).contains(&bps).then_some(bps as u64)
}

/// `[links]` or an edge's overrides on top of `base`.
#[allow(clippy::too_many_arguments)]
fn link_spec(
    lines: &Lines<'_>,
    base: LinkSpec,
    prefix: &str,
    latency: Option<&Spanned<String>>,
    jitter: Option<&Spanned<String>>,
    loss: Option<&Spanned<f64>>,
    bandwidth: Option<&Spanned<RawBandwidth>>,
    queue: Option<&Spanned<u32>>,
) -> Result<LinkSpec, ScenarioError> {
    let mut spec = base;
    if let Some(l) = latency {
        spec.latency = latency_of(lines, l, &format!("{prefix}latency"))?;
    }
    if let Some(j) = jitter {
        spec.jitter = duration_of(lines, j, &format!("{prefix}jitter"))?;
    }
    if let Some(l) = loss {
        spec.loss = loss_of(lines, l, &format!("{prefix}loss"))?;
    }
    if let Some(b) = bandwidth {
        spec.bandwidth_bps = Some(bandwidth_of(lines, b, &format!("{prefix}bandwidth"))?);
    }
    if let Some(q) = queue {
        spec.queue_limit = *q.get_ref();
    }
    Ok(spec)
}

/// Removes serde_spanned's internal segments from a serde_path_to_error path.
fn clean_path(path: &str) -> String {
    let mut out = String::new();
    for segment in path.split('.') {
        let segment = segment.replace("$__serde_spanned_private_value", "");
        if segment.is_empty() {
            continue;
        }
        if !out.is_empty() && !segment.starts_with('[') {
            out.push('.');
        }
        out.push_str(&segment);
    }
    out
}

impl Scenario {
    /// Reads and checks a scenario file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, ScenarioError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text).map_err(|e| e.in_file(path))
    }

    /// Parses and checks a scenario (see the module documentation for what is checked).
    pub fn parse(text: &str) -> Result<Self, ScenarioError> {
        let lines = Lines(text);
        let de = toml::Deserializer::parse(text).map_err(|e| {
            let at = e.span().map_or(0, |s| s.start);
            lines.err(at, "(document)", e.message().trim().to_owned())
        })?;
        let raw: RawScenario = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = clean_path(&e.path().to_string());
            let inner = e.into_inner();
            let at = inner.span().map_or(0, |s| s.start);
            let key = if key.is_empty() || key == "." {
                "(document)".to_owned()
            } else {
                key
            };
            lines.err(at, key, inner.message().trim().to_owned())
        })?;
        let scenario = Self::check(&lines, raw)?;
        scenario.instantiate(None)?;
        Ok(scenario)
    }

    fn check(lines: &Lines<'_>, raw: RawScenario) -> Result<Self, ScenarioError> {
        let duration = duration_of(lines, &raw.duration, "duration")?;
        if duration.is_zero() {
            return Err(lines.err(
                raw.duration.span().start,
                "duration",
                "the run must last longer than 0",
            ));
        }
        let links = match &raw.links {
            None => LinkSpec::default(),
            Some(l) => {
                let l = l.get_ref();
                link_spec(
                    lines,
                    LinkSpec::default(),
                    "links.",
                    l.latency.as_ref(),
                    l.jitter.as_ref(),
                    l.loss.as_ref(),
                    l.bandwidth.as_ref(),
                    l.queue.as_ref(),
                )?
            }
        };
        let topology_line = lines.of(raw.topology.span().start);
        let generator = Self::check_topology(lines, &raw.topology, &links)?;
        let nodes = generator
            .node_count()
            .map_err(|e| lines.err(raw.topology.span().start, "topology", e.to_string()))?;
        let mut events = Vec::with_capacity(raw.events.len());
        for (i, ev) in raw.events.iter().enumerate() {
            events.push(Self::check_event(lines, i, ev, nodes, duration)?);
        }
        let start = match raw
            .start
            .as_ref()
            .map(|s| (s.get_ref().as_str(), s.span().start))
        {
            None | Some(("cold", _)) => Start::Cold,
            Some(("warm", _)) => Start::Warm,
            Some((other, at)) => {
                return Err(lines.err(
                    at,
                    "start",
                    format!("{other:?} is not a start; use \"cold\" or \"warm\""),
                ));
            }
        };
        Ok(Self {
            description: raw.description,
            seed: raw.seed.map_or(0, Spanned::into_inner),
            start,
            topology_seed: raw.topology.get_ref().seed.as_ref().map(|s| *s.get_ref()),
            duration,
            generator,
            links,
            events,
            topology_line,
        })
    }

    fn check_topology(
        lines: &Lines<'_>,
        spanned: &Spanned<RawTopology>,
        links: &LinkSpec,
    ) -> Result<Generator, ScenarioError> {
        let t = spanned.get_ref();
        let header = spanned.span().start;
        let name = match (&t.generator, &t.edges) {
            (Some(g), _) => g.get_ref().as_str(),
            (None, Some(_)) => "explicit",
            (None, None) => {
                return Err(lines.err(
                    header,
                    "topology.generator",
                    format!("missing: give a generator ({GENERATORS}) or an `edges` list"),
                ));
            }
        };
        let allowed: &[&str] = match name {
            "ring" => &["n"],
            "grid" => &["width", "height"],
            "random-geometric" => &["n", "radius", "avg_degree", "connect"],
            "scale-free" => &["n", "m"],
            "erdos-renyi" => &["n", "p", "connect"],
            "explicit" => &["nodes", "edges"],
            other => {
                let at = t.generator.as_ref().map_or(header, |g| g.span().start);
                return Err(lines.err(
                    at,
                    "topology.generator",
                    format!("unknown generator {other:?}: use {GENERATORS}"),
                ));
            }
        };
        let present: [(&str, Option<usize>); 10] = [
            ("n", t.n.as_ref().map(|v| v.span().start)),
            ("width", t.width.as_ref().map(|v| v.span().start)),
            ("height", t.height.as_ref().map(|v| v.span().start)),
            ("radius", t.radius.as_ref().map(|v| v.span().start)),
            ("avg_degree", t.avg_degree.as_ref().map(|v| v.span().start)),
            ("m", t.m.as_ref().map(|v| v.span().start)),
            ("p", t.p.as_ref().map(|v| v.span().start)),
            ("connect", t.connect.as_ref().map(|v| v.span().start)),
            ("nodes", t.nodes.as_ref().map(|v| v.span().start)),
            ("edges", t.edges.as_ref().map(|v| v.span().start)),
        ];
        for (key, at) in present {
            if let Some(at) = at
                && !allowed.contains(&key)
            {
                return Err(lines.err(
                    at,
                    format!("topology.{key}"),
                    format!(
                        "does not apply to generator {name:?} (it takes: {})",
                        allowed.join(", ")
                    ),
                ));
            }
        }
        let required = |v: Option<&Spanned<u32>>, key: &str| -> Result<u32, ScenarioError> {
            v.map(|s| *s.get_ref()).ok_or_else(|| {
                lines.err(
                    header,
                    format!("topology.{key}"),
                    format!("missing: generator {name:?} needs it"),
                )
            })
        };
        let positive = |v: Option<&Spanned<u32>>, key: &str| -> Result<u32, ScenarioError> {
            let value = required(v, key)?;
            if value == 0 {
                let at = v.map_or(header, |s| s.span().start);
                return Err(lines.err(at, format!("topology.{key}"), "must be at least 1"));
            }
            Ok(value)
        };
        let connect = t.connect.as_ref().is_none_or(|c| *c.get_ref());
        let generator = match name {
            "ring" => Generator::Ring {
                n: positive(t.n.as_ref(), "n")?,
            },
            "grid" => Generator::Grid {
                width: positive(t.width.as_ref(), "width")?,
                height: positive(t.height.as_ref(), "height")?,
            },
            "random-geometric" => {
                let n = positive(t.n.as_ref(), "n")?;
                let reach = match (&t.radius, &t.avg_degree) {
                    (Some(r), None) => {
                        let v = *r.get_ref();
                        if !(v > 0.0 && v.is_finite()) {
                            return Err(lines.err(
                                r.span().start,
                                "topology.radius",
                                format!("{v}: must be a number above 0 (the square is 1 × 1)"),
                            ));
                        }
                        Reach::Radius(v)
                    }
                    (None, Some(d)) => {
                        let v = *d.get_ref();
                        if !(v > 0.0 && v.is_finite()) {
                            return Err(lines.err(
                                d.span().start,
                                "topology.avg_degree",
                                format!("{v}: must be a number above 0"),
                            ));
                        }
                        Reach::AvgDegree(v)
                    }
                    (Some(_), Some(d)) => {
                        return Err(lines.err(
                            d.span().start,
                            "topology.avg_degree",
                            "give either `radius` or `avg_degree`, not both",
                        ));
                    }
                    (None, None) => {
                        return Err(lines.err(
                            header,
                            "topology.radius",
                            "missing: random-geometric needs `radius` or `avg_degree`",
                        ));
                    }
                };
                Generator::RandomGeometric { n, reach, connect }
            }
            "scale-free" => {
                let n = positive(t.n.as_ref(), "n")?;
                let m = positive(t.m.as_ref(), "m")?;
                if m >= n {
                    let at = t.m.as_ref().map_or(header, |s| s.span().start);
                    return Err(lines.err(
                        at,
                        "topology.m",
                        format!("{m}: must be smaller than n = {n}"),
                    ));
                }
                Generator::ScaleFree { n, m }
            }
            "erdos-renyi" => {
                let n = positive(t.n.as_ref(), "n")?;
                let p = t.p.as_ref().ok_or_else(|| {
                    lines.err(header, "topology.p", "missing: erdos-renyi needs `p`")
                })?;
                let pv = *p.get_ref();
                if !(0.0..=1.0).contains(&pv) {
                    return Err(lines.err(
                        p.span().start,
                        "topology.p",
                        format!("{pv}: must be a probability between 0 and 1"),
                    ));
                }
                Generator::ErdosRenyi { n, p: pv, connect }
            }
            _ => Self::check_edges(lines, t, header, links)?,
        };
        // Size limits and the like.
        generator
            .node_count()
            .map_err(|e| lines.err(header, "topology", e.to_string()))?;
        Ok(generator)
    }

    fn check_edges(
        lines: &Lines<'_>,
        t: &RawTopology,
        header: usize,
        links: &LinkSpec,
    ) -> Result<Generator, ScenarioError> {
        let Some(list) = &t.edges else {
            return Err(lines.err(
                header,
                "topology.edges",
                "missing: an explicit topology needs `edges = [[a, b], ...]`",
            ));
        };
        let mut edges = Vec::with_capacity(list.get_ref().len());
        let mut top = 0u32;
        for (i, e) in list.get_ref().iter().enumerate() {
            let key = format!("topology.edges[{i}]");
            let at = e.span().start;
            let edge = match e.get_ref() {
                RawEdge::Pair(a, b) => ExplicitEdge {
                    a: *a,
                    b: *b,
                    links: None,
                },
                RawEdge::Table(tb) => ExplicitEdge {
                    a: *tb.a.get_ref(),
                    b: *tb.b.get_ref(),
                    links: Some(link_spec(
                        lines,
                        *links,
                        &format!("{key}."),
                        tb.latency.as_ref(),
                        tb.jitter.as_ref(),
                        tb.loss.as_ref(),
                        tb.bandwidth.as_ref(),
                        tb.queue.as_ref(),
                    )?),
                },
            };
            if edge.a == edge.b {
                return Err(lines.err(at, key, format!("links node {} to itself", edge.a)));
            }
            if let Some(n) = &t.nodes {
                let n_val = *n.get_ref();
                if let Some(missing) = [edge.a, edge.b].into_iter().find(|&x| x >= n_val) {
                    return Err(lines.err(
                        at,
                        key,
                        format!("node {missing} does not exist (nodes = {n_val}: 0..{n_val})"),
                    ));
                }
            }
            let (lo, hi) = (edge.a.min(edge.b), edge.a.max(edge.b));
            if let Some(j) = edges
                .iter()
                .position(|x: &ExplicitEdge| x.a.min(x.b) == lo && x.a.max(x.b) == hi)
            {
                return Err(lines.err(
                    at,
                    key,
                    format!("link {lo}–{hi} is already listed as topology.edges[{j}]"),
                ));
            }
            top = top.max(edge.a).max(edge.b);
            edges.push(edge);
        }
        let nodes = match &t.nodes {
            Some(n) if *n.get_ref() == 0 => {
                return Err(lines.err(n.span().start, "topology.nodes", "must be at least 1"));
            }
            Some(n) => *n.get_ref(),
            None if edges.is_empty() => {
                return Err(lines.err(
                    header,
                    "topology.edges",
                    "an empty edge list needs `nodes` to say how many nodes there are",
                ));
            }
            None => top.saturating_add(1),
        };
        Ok(Generator::Explicit { nodes, edges })
    }

    fn check_event(
        lines: &Lines<'_>,
        i: usize,
        spanned: &Spanned<RawEvent>,
        nodes: u32,
        duration: Duration,
    ) -> Result<ScenarioEvent, ScenarioError> {
        let e = spanned.get_ref();
        let header = spanned.span().start;
        let prefix = format!("events[{i}]");
        let kind = e.kind.get_ref().as_str();
        let allowed: &[&str] = match kind {
            "link-down" | "link-up" => &["link", "visible"],
            "node-crash" | "node-restart" => &["node"],
            "set-loss" => &["link", "loss", "one_way"],
            "set-latency" => &["link", "latency", "jitter", "one_way"],
            "partition" => &["groups", "cut"],
            "heal" => &[],
            other => {
                return Err(lines.err(
                    e.kind.span().start,
                    format!("{prefix}.kind"),
                    format!("unknown event kind {other:?}: use {EVENT_KINDS}"),
                ));
            }
        };
        let present: [(&str, Option<usize>); 9] = [
            ("link", e.link.as_ref().map(|v| v.span().start)),
            ("node", e.node.as_ref().map(|v| v.span().start)),
            ("visible", e.visible.as_ref().map(|v| v.span().start)),
            ("one_way", e.one_way.as_ref().map(|v| v.span().start)),
            ("loss", e.loss.as_ref().map(|v| v.span().start)),
            ("latency", e.latency.as_ref().map(|v| v.span().start)),
            ("jitter", e.jitter.as_ref().map(|v| v.span().start)),
            ("groups", e.groups.as_ref().map(|v| v.span().start)),
            ("cut", e.cut.as_ref().map(|v| v.span().start)),
        ];
        for (key, at) in present {
            if let Some(at) = at
                && !allowed.contains(&key)
            {
                let takes = if allowed.is_empty() {
                    "nothing but `at` and `kind`".to_owned()
                } else {
                    allowed.join(", ")
                };
                return Err(lines.err(
                    at,
                    format!("{prefix}.{key}"),
                    format!("does not apply to {kind:?} events (they take: {takes})"),
                ));
            }
        }
        let at = duration_of(lines, &e.at, &format!("{prefix}.at"))?;
        if at > duration {
            return Err(lines.err(
                e.at.span().start,
                format!("{prefix}.at"),
                format!(
                    "{} is after the end of the run (duration = {})",
                    humantime::format_duration(at),
                    humantime::format_duration(duration)
                ),
            ));
        }
        let missing = |key: &str, what: &str| {
            lines.err(
                header,
                format!("{prefix}.{key}"),
                format!("missing: {kind:?} events need {what}"),
            )
        };
        let node_ref = |v: &Spanned<u32>, key: &str| -> Result<NodeIx, ScenarioError> {
            let n = *v.get_ref();
            if n >= nodes {
                return Err(lines.err(
                    v.span().start,
                    key.to_owned(),
                    format!("node {n} does not exist (the topology has nodes 0..{nodes})"),
                ));
            }
            Ok(n)
        };
        let link_ref = |v: &Spanned<Vec<u32>>, key: &str| -> Result<LinkRef, ScenarioError> {
            let at = v.span().start;
            let [a, b] = v.get_ref()[..] else {
                return Err(lines.err(
                    at,
                    key.to_owned(),
                    format!(
                        "a link is written as its two end nodes, [a, b]; got {} numbers",
                        v.get_ref().len()
                    ),
                ));
            };
            for n in [a, b] {
                if n >= nodes {
                    return Err(lines.err(
                        at,
                        key.to_owned(),
                        format!("node {n} does not exist (the topology has nodes 0..{nodes})"),
                    ));
                }
            }
            if a == b {
                return Err(lines.err(at, key.to_owned(), format!("[{a}, {b}] is not a link")));
            }
            Ok(LinkRef {
                a,
                b,
                line: lines.of(at),
                key: key.to_owned(),
            })
        };
        let link = || -> Result<LinkRef, ScenarioError> {
            let v = e
                .link
                .as_ref()
                .ok_or_else(|| missing("link", "`link = [a, b]`"))?;
            link_ref(v, &format!("{prefix}.link"))
        };
        let node = || -> Result<NodeIx, ScenarioError> {
            let v = e
                .node
                .as_ref()
                .ok_or_else(|| missing("node", "`node = N`"))?;
            node_ref(v, &format!("{prefix}.node"))
        };
        let visible = e.visible.as_ref().is_none_or(|v| *v.get_ref());
        let one_way = e.one_way.as_ref().is_some_and(|v| *v.get_ref());
        let action = match kind {
            "link-down" => Action::LinkDown {
                link: link()?,
                visible,
            },
            "link-up" => Action::LinkUp {
                link: link()?,
                visible,
            },
            "node-crash" => Action::NodeCrash { node: node()? },
            "node-restart" => Action::NodeRestart { node: node()? },
            "set-loss" => {
                let l = link()?;
                let v = e.loss.as_ref().ok_or_else(|| missing("loss", "`loss`"))?;
                Action::SetLoss {
                    link: l,
                    one_way,
                    loss: loss_of(lines, v, &format!("{prefix}.loss"))?,
                }
            }
            "set-latency" => {
                let l = link()?;
                let v = e
                    .latency
                    .as_ref()
                    .ok_or_else(|| missing("latency", "`latency`"))?;
                let jitter = e
                    .jitter
                    .as_ref()
                    .map(|j| duration_of(lines, j, &format!("{prefix}.jitter")))
                    .transpose()?;
                Action::SetLatency {
                    link: l,
                    one_way,
                    latency: duration_of(lines, v, &format!("{prefix}.latency"))?,
                    jitter,
                }
            }
            "partition" => match (&e.groups, &e.cut) {
                (Some(g), None) => {
                    let key = format!("{prefix}.groups");
                    let mut seen = vec![false; nodes as usize];
                    let mut groups = Vec::new();
                    if g.get_ref().is_empty() {
                        return Err(lines.err(g.span().start, key, "needs at least one group"));
                    }
                    for (gi, group) in g.get_ref().iter().enumerate() {
                        if group.is_empty() {
                            return Err(lines.err(
                                g.span().start,
                                key,
                                format!("group {gi} is empty"),
                            ));
                        }
                        let mut members = Vec::with_capacity(group.len());
                        for n in group {
                            let id = node_ref(n, &key)?;
                            if std::mem::replace(&mut seen[id as usize], true) {
                                return Err(lines.err(
                                    n.span().start,
                                    key,
                                    format!("node {id} is in more than one group"),
                                ));
                            }
                            members.push(id);
                        }
                        groups.push(members);
                    }
                    Action::Partition(PartitionSpec::Groups(groups))
                }
                (None, Some(c)) => {
                    let key = format!("{prefix}.cut");
                    let links = c
                        .get_ref()
                        .iter()
                        .map(|l| link_ref(l, &key))
                        .collect::<Result<Vec<_>, _>>()?;
                    Action::Partition(PartitionSpec::Cut(links))
                }
                (Some(_), Some(c)) => {
                    return Err(lines.err(
                        c.span().start,
                        format!("{prefix}.cut"),
                        "give either `groups` or `cut`, not both",
                    ));
                }
                (None, None) => {
                    return Err(missing(
                        "groups",
                        "`groups = [[...], [...]]` or `cut = [[a, b], ...]`",
                    ));
                }
            },
            _ => Action::Heal,
        };
        Ok(ScenarioEvent {
            at,
            action,
            kind: kind.to_owned(),
            line: lines.of(header),
        })
    }

    /// Builds the topology (with `seed`, or the scenario's own seed) and resolves the events
    /// onto its links.
    pub fn instantiate(&self, seed: Option<u64>) -> Result<Instance, ScenarioError> {
        let seed = seed.unwrap_or(self.seed);
        let topo_seed = self.topology_seed.unwrap_or(seed);
        let at_line = |line: usize, key: &str, message: String| ScenarioError::Invalid {
            file: None,
            line,
            key: key.to_owned(),
            message,
        };
        let topology = Topology::generate(&self.generator, &self.links, topo_seed)
            .map_err(|e| at_line(self.topology_line, "topology", e.to_string()))?;
        // Sorted (lo, hi, link) for lookups by node pair.
        let mut index: Vec<(NodeIx, NodeIx, LinkIx)> = topology
            .links()
            .iter()
            .enumerate()
            .map(|(i, l)| (l.a.min(l.b), l.a.max(l.b), i as LinkIx))
            .collect();
        index.sort_unstable();
        let find = |r: &LinkRef| -> Result<LinkIx, ScenarioError> {
            let key = (r.a.min(r.b), r.a.max(r.b));
            index
                .binary_search_by_key(&key, |&(a, b, _)| (a, b))
                .map(|i| index[i].2)
                .map_err(|_| {
                    at_line(
                        r.line,
                        &r.key,
                        format!(
                            "there is no link {}–{} in this topology (seed {topo_seed})",
                            r.a, r.b
                        ),
                    )
                })
        };
        let mut events = Vec::with_capacity(self.events.len());
        for ev in &self.events {
            let event = match &ev.action {
                Action::LinkDown { link, visible } => Event::LinkDown {
                    link: find(link)?,
                    visible: *visible,
                },
                Action::LinkUp { link, visible } => Event::LinkUp {
                    link: find(link)?,
                    visible: *visible,
                },
                Action::NodeCrash { node } => Event::NodeCrash { node: *node },
                Action::NodeRestart { node } => Event::NodeRestart { node: *node },
                Action::SetLoss {
                    link,
                    one_way,
                    loss,
                } => Event::SetLoss {
                    link: find(link)?,
                    from: one_way.then_some(link.a),
                    loss: *loss,
                },
                Action::SetLatency {
                    link,
                    one_way,
                    latency,
                    jitter,
                } => Event::SetLatency {
                    link: find(link)?,
                    from: one_way.then_some(link.a),
                    latency: *latency,
                    jitter: *jitter,
                },
                Action::Partition(PartitionSpec::Cut(refs)) => Event::Partition {
                    links: refs.iter().map(&find).collect::<Result<_, _>>()?,
                },
                Action::Partition(PartitionSpec::Groups(groups)) => {
                    // Unlisted nodes share group `groups.len()`.
                    let mut group_of = vec![groups.len(); topology.node_count() as usize];
                    for (g, members) in groups.iter().enumerate() {
                        for &m in members {
                            if let Some(slot) = group_of.get_mut(m as usize) {
                                *slot = g;
                            }
                        }
                    }
                    let links = topology
                        .links()
                        .iter()
                        .enumerate()
                        .filter(|(_, l)| group_of[l.a as usize] != group_of[l.b as usize])
                        .map(|(i, _)| i as LinkIx)
                        .collect();
                    Event::Partition { links }
                }
                Action::Heal => Event::Heal,
            };
            events.push((Instant::ZERO + ev.at, event));
        }
        Ok(Instance {
            seed,
            duration: self.duration,
            topology,
            events,
            kinds: self.events.iter().map(|e| e.kind.clone()).collect(),
            start: self.start,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> (usize, String, String) {
        match Scenario::parse(text) {
            Err(ScenarioError::Invalid {
                line, key, message, ..
            }) => (line, key, message),
            other => panic!("expected an error, got {other:?}"),
        }
    }

    const RING: &str = "duration = \"10s\"\n[topology]\ngenerator = \"ring\"\nn = 8\n";

    #[test]
    fn minimal_ring_parses_with_defaults() {
        let s = Scenario::parse(RING).unwrap();
        assert_eq!(s.seed, 0);
        assert_eq!(s.duration, Duration::from_secs(10));
        assert_eq!(s.generator, Generator::Ring { n: 8 });
        assert_eq!(s.links, LinkSpec::default());
        assert!(s.events.is_empty());
        let i = s.instantiate(None).unwrap();
        assert_eq!(i.topology.link_count(), 8);
        assert_eq!(i.end(), Instant::from_millis(10_000));
    }

    #[test]
    fn full_scenario_parses() {
        let text = r#"
description = "everything"
seed = 7
duration = "1m"

[topology]
generator = "grid"
width = 4
height = 3
seed = 99

[links]
latency = "1ms..20ms"
jitter = "500us"
loss = 0.01
bandwidth = "10Mbit"
queue = 50

[[events]]
at = "1s"
kind = "link-down"
link = [0, 1]
visible = false

[[events]]
at = "2s"
kind = "link-up"
link = [1, 0]

[[events]]
at = "3s"
kind = "node-crash"
node = 5

[[events]]
at = "4s"
kind = "node-restart"
node = 5

[[events]]
at = "5s"
kind = "set-loss"
link = [4, 5]
loss = 0.5
one_way = true

[[events]]
at = "6s"
kind = "set-latency"
link = [4, 8]
latency = "50ms"
jitter = "5ms"

[[events]]
at = "7s"
kind = "partition"
groups = [[0, 1, 4, 5, 8, 9]]

[[events]]
at = "8s"
kind = "heal"

[[events]]
at = "9s"
kind = "partition"
cut = [[0, 1], [4, 5]]
"#;
        let s = Scenario::parse(text).unwrap();
        assert_eq!(s.seed, 7);
        assert_eq!(s.topology_seed, Some(99));
        assert_eq!(s.links.bandwidth_bps, Some(10_000_000));
        assert_eq!(s.links.queue_limit, 50);
        assert_eq!(s.links.jitter, Duration::from_micros(500));
        assert_eq!(s.events.len(), 9);
        assert_eq!(s.events[0].line, 19);
        let i = s.instantiate(None).unwrap();
        assert_eq!(i.events.len(), 9);
        assert!(matches!(
            i.events[0].1,
            Event::LinkDown { visible: false, .. }
        ));
        assert!(matches!(i.events[1].1, Event::LinkUp { visible: true, .. }));
        assert!(matches!(
            i.events[4].1,
            Event::SetLoss {
                from: Some(4),
                loss: 0.5,
                ..
            }
        ));
        // Left half (columns 0-1) vs right half: 3 rows cut between columns 1 and 2.
        let Event::Partition { links } = &i.events[6].1 else {
            panic!("partition expected");
        };
        assert_eq!(links.len(), 3);
        let Event::Partition { links } = &i.events[8].1 else {
            panic!("partition expected");
        };
        assert_eq!(links.len(), 2);
        // Topology seed pinned: another run seed keeps the same graph.
        let j = s.instantiate(Some(1234)).unwrap();
        assert_eq!(j.seed, 1234);
        assert_eq!(j.topology.links(), i.topology.links());
    }

    #[test]
    fn explicit_edges_with_overrides() {
        let text = r#"
duration = "1s"
[links]
latency = "2ms"
[topology]
nodes = 4
edges = [[0, 1], { a = 1, b = 2, latency = "7ms", loss = 0.1 }, [2, 3]]
"#;
        let s = Scenario::parse(text).unwrap();
        let i = s.instantiate(None).unwrap();
        let l = i.topology.links();
        assert_eq!(l[0].forward.latency, Duration::from_millis(2));
        assert_eq!(l[1].forward.latency, Duration::from_millis(7));
        assert_eq!(l[1].forward.loss, 0.1);
        assert_eq!(l[2].forward.loss, 0.0);
    }

    #[test]
    fn syntax_error_has_a_line() {
        let (line, key, msg) = err("duration = \"1s\"\n[topology]\nn = = 3\n");
        assert_eq!((line, key.as_str()), (3, "(document)"));
        assert!(!msg.is_empty());
    }

    #[test]
    fn unknown_keys_are_refused_with_line_and_key() {
        let (line, key, msg) = err(&format!("{RING}radiuss = 0.3\n"));
        assert_eq!((line, key.as_str()), (5, "topology.radiuss"));
        assert!(msg.contains("unknown field"), "{msg}");

        let (line, key, _) = err(&format!("bogus = 1\n{RING}"));
        assert_eq!((line, key.as_str()), (1, "bogus"));

        let (line, key, _) = err(&format!("{RING}[links]\nlatencyy = \"1ms\"\n"));
        assert_eq!((line, key.as_str()), (6, "links.latencyy"));

        let (line, key, _) = err(&format!(
            "{RING}[[events]]\nat = \"1s\"\nkind = \"heal\"\nnodes = 3\n"
        ));
        assert_eq!((line, key.as_str()), (8, "events[0].nodes"));

        let (line, key, _) =
            err("duration = \"1s\"\n[topology]\nedges = [{ a = 0, b = 1, lossy = 0.1 }]\n");
        assert_eq!((line, key.as_str()), (3, "topology.edges[0].lossy"));
    }

    #[test]
    fn keys_that_do_not_apply_are_refused() {
        let (line, key, msg) = err(&format!("{RING}radius = 0.3\n"));
        assert_eq!((line, key.as_str()), (5, "topology.radius"));
        assert!(msg.contains("does not apply"), "{msg}");
        let (line, key, _) = err(&format!(
            "{RING}[[events]]\nat = \"1s\"\nkind = \"heal\"\nnode = 3\n"
        ));
        assert_eq!((line, key.as_str()), (8, "events[0].node"));
    }

    #[test]
    fn wrong_types_and_negative_numbers() {
        let (line, key, msg) = err("duration = \"1s\"\n[topology]\ngenerator = \"ring\"\nn = -3\n");
        assert_eq!((line, key.as_str()), (4, "topology.n"));
        assert!(msg.contains("-3"), "{msg}");
        let (line, key, _) =
            err("duration = \"1s\"\n[topology]\ngenerator = \"ring\"\nn = \"8\"\n");
        assert_eq!((line, key.as_str()), (4, "topology.n"));
    }

    #[test]
    fn impossible_values() {
        for (extra, line, key) in [
            ("[links]\nloss = 1.5\n", 6, "links.loss"),
            ("[links]\nloss = -0.1\n", 6, "links.loss"),
            ("[links]\nloss = nan\n", 6, "links.loss"),
            ("[links]\nlatency = \"fast\"\n", 6, "links.latency"),
            ("[links]\nlatency = \"20ms..1ms\"\n", 6, "links.latency"),
            ("[links]\nbandwidth = \"0Mbit\"\n", 6, "links.bandwidth"),
            (
                "[links]\nbandwidth = \"10 furlongs\"\n",
                6,
                "links.bandwidth",
            ),
            ("[links]\nbandwidth = -5\n", 6, "links.bandwidth"),
        ] {
            let (l, k, msg) = err(&format!("{RING}{extra}"));
            assert_eq!((l, k.as_str()), (line, key), "{extra}: {msg}");
        }
        let cases = [
            (
                "duration = \"0s\"\n[topology]\ngenerator = \"ring\"\nn = 3\n",
                1,
                "duration",
            ),
            (
                "duration = \"1s\"\n[topology]\ngenerator = \"ring\"\nn = 0\n",
                4,
                "topology.n",
            ),
            (
                "duration = \"1s\"\n[topology]\ngenerator = \"random-geometric\"\nn = 5\nradius = 0\n",
                5,
                "topology.radius",
            ),
            (
                "duration = \"1s\"\n[topology]\ngenerator = \"random-geometric\"\nn = 5\nradius = -0.2\n",
                5,
                "topology.radius",
            ),
            (
                "duration = \"1s\"\n[topology]\ngenerator = \"random-geometric\"\nn = 5\navg_degree = nan\n",
                5,
                "topology.avg_degree",
            ),
            (
                "duration = \"1s\"\n[topology]\ngenerator = \"random-geometric\"\nn = 5\n",
                2,
                "topology.radius",
            ),
            (
                "duration = \"1s\"\n[topology]\ngenerator = \"erdos-renyi\"\nn = 5\np = 2\n",
                5,
                "topology.p",
            ),
            (
                "duration = \"1s\"\n[topology]\ngenerator = \"scale-free\"\nn = 5\nm = 5\n",
                5,
                "topology.m",
            ),
            (
                "duration = \"1s\"\n[topology]\ngenerator = \"grid\"\nwidth = 3\n",
                2,
                "topology.height",
            ),
            (
                "duration = \"1s\"\n[topology]\ngenerator = \"torus\"\nn = 3\n",
                3,
                "topology.generator",
            ),
            (
                "duration = \"1s\"\n[topology]\nn = 3\n",
                2,
                "topology.generator",
            ),
            (
                "duration = \"1s\"\n[topology]\ngenerator = \"grid\"\nwidth = 100000\nheight = 100000\n",
                2,
                "topology",
            ),
            (
                "duration = \"1s\"\n[topology]\nedges = [[0, 0]]\n",
                3,
                "topology.edges[0]",
            ),
            (
                "duration = \"1s\"\n[topology]\nedges = [[0, 1], [1, 0]]\n",
                3,
                "topology.edges[1]",
            ),
            (
                "duration = \"1s\"\n[topology]\nedges = [[0, 1, 2]]\n",
                3,
                "topology.edges[0]",
            ),
        ];
        for (text, line, key) in cases {
            let (l, k, msg) = err(text);
            assert_eq!((l, k.as_str()), (line, key), "{text}: {msg}");
        }
    }

    #[test]
    fn event_errors() {
        let ev = |body: &str| format!("{RING}\n[[events]]\n{body}");
        // The event header is on line 6; its keys follow.
        for (body, line, key, needle) in [
            (
                "at = \"11s\"\nkind = \"heal\"\n",
                7,
                "events[0].at",
                "after the end",
            ),
            (
                "at = \"soon\"\nkind = \"heal\"\n",
                7,
                "events[0].at",
                "not a duration",
            ),
            (
                "at = \"1s\"\nkind = \"explode\"\n",
                8,
                "events[0].kind",
                "unknown event kind",
            ),
            (
                "at = \"1s\"\nkind = \"node-crash\"\nnode = 8\n",
                9,
                "events[0].node",
                "does not exist",
            ),
            (
                "at = \"1s\"\nkind = \"node-crash\"\n",
                6,
                "events[0].node",
                "missing",
            ),
            (
                "at = \"1s\"\nkind = \"link-down\"\nlink = [0, 9]\n",
                9,
                "events[0].link",
                "does not exist",
            ),
            (
                "at = \"1s\"\nkind = \"link-down\"\nlink = [0, 1, 2]\n",
                9,
                "events[0].link",
                "two end nodes",
            ),
            (
                "at = \"1s\"\nkind = \"link-down\"\nlink = [0, 4]\n",
                9,
                "events[0].link",
                "no link 0–4",
            ),
            (
                "at = \"1s\"\nkind = \"set-loss\"\nlink = [0, 1]\nloss = 2.0\n",
                10,
                "events[0].loss",
                "probability",
            ),
            (
                "at = \"1s\"\nkind = \"set-loss\"\nlink = [0, 1]\n",
                6,
                "events[0].loss",
                "missing",
            ),
            (
                "at = \"1s\"\nkind = \"set-latency\"\nlink = [0, 1]\nlatency = \"1ms..2ms\"\n",
                10,
                "events[0].latency",
                "not a duration",
            ),
            (
                "at = \"1s\"\nkind = \"partition\"\ngroups = [[0, 1], [1, 2]]\n",
                9,
                "events[0].groups",
                "more than one group",
            ),
            (
                "at = \"1s\"\nkind = \"partition\"\ngroups = [[0, 77]]\n",
                9,
                "events[0].groups",
                "does not exist",
            ),
            (
                "at = \"1s\"\nkind = \"partition\"\ngroups = [[]]\n",
                9,
                "events[0].groups",
                "empty",
            ),
            (
                "at = \"1s\"\nkind = \"partition\"\ncut = [[0, 1], [2, 5]]\n",
                9,
                "events[0].cut",
                "no link 2–5",
            ),
            (
                "at = \"1s\"\nkind = \"partition\"\n",
                6,
                "events[0].groups",
                "missing",
            ),
            (
                "at = \"1s\"\nkind = \"partition\"\ngroups = [[0]]\ncut = [[0, 1]]\n",
                10,
                "events[0].cut",
                "not both",
            ),
        ] {
            let (l, k, msg) = err(&ev(body));
            assert_eq!((l, k.as_str()), (line, key), "{body}: {msg}");
            assert!(msg.contains(needle), "{body}: {msg}");
        }
    }

    #[test]
    fn missing_link_for_another_seed_is_reported_at_instantiate() {
        let text = r#"
duration = "2s"
seed = 1
[topology]
generator = "random-geometric"
n = 30
avg_degree = 3.0
"#;
        let s = Scenario::parse(text).unwrap();
        let t = s.instantiate(None).unwrap().topology;
        let l = t.links()[0];
        let with_event = format!(
            "{text}\n[[events]]\nat = \"1s\"\nkind = \"link-down\"\nlink = [{}, {}]\n",
            l.a, l.b
        );
        let s = Scenario::parse(&with_event).unwrap();
        // Some other seed lacks that link.
        let missing = (2..200u64).find_map(|seed| s.instantiate(Some(seed)).err());
        let Some(ScenarioError::Invalid { line, key, .. }) = missing else {
            panic!("expected some seed without that link");
        };
        assert_eq!((line, key.as_str()), (12, "events[0].link"));
    }

    #[test]
    fn file_errors_name_the_file() {
        let dir = std::env::temp_dir().join(format!("x0-sim-scn-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bad.toml");
        std::fs::write(
            &path,
            "duration = \"1s\"\n[topology]\ngenerator = \"ring\"\nn = 0\n",
        )
        .unwrap();
        let e = Scenario::from_file(&path).unwrap_err();
        let text = e.to_string();
        assert!(text.contains("bad.toml: line 4: topology.n:"), "{text}");
        assert_eq!(e.line(), Some(4));
        assert_eq!(e.key(), Some("topology.n"));
        assert!(matches!(
            Scenario::from_file(dir.join("missing.toml")),
            Err(ScenarioError::Read { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn rates_parse() {
        assert_eq!(parse_rate("10Mbit"), Some(10_000_000));
        assert_eq!(parse_rate("1.5Gbps"), Some(1_500_000_000));
        assert_eq!(parse_rate("800 kbit"), Some(800_000));
        assert_eq!(parse_rate("64000"), Some(64_000));
        assert_eq!(parse_rate("0bit"), None);
        assert_eq!(parse_rate("fast"), None);
        assert_eq!(parse_rate("1e9bit"), None);
    }

    #[test]
    fn path_cleaning() {
        assert_eq!(
            clean_path(
                "topology.$__serde_spanned_private_value.edges[1].$__serde_spanned_private_value"
            ),
            "topology.edges[1]"
        );
        assert_eq!(
            clean_path("events[0].$__serde_spanned_private_value.links"),
            "events[0].links"
        );
        assert_eq!(
            clean_path(
                "topology.$__serde_spanned_private_value.edges.$__serde_spanned_private_value[1].b"
            ),
            "topology.edges[1].b"
        );
    }
}
