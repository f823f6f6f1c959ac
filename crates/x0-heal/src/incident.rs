//! Correlation: symptoms become incidents with a suspected cause and a confidence.
//!
//! Each symptom suggests a cause and a problem:
//!
//! | Symptom | Cause | Problem |
//! |---|---|---|
//! | `link_down` | the link | `link_down` |
//! | `flapping` | the link | `flapping` |
//! | `crypto_failures` | the link | `crypto_failure` |
//! | anomaly / change point of received bytes | the neighbour | `noisy_neighbour` |
//! | other link symptoms (loss, RTT, class, drops, anomalies) | the link | `link_degraded` |
//! | `path_black_hole` | the suspected relay | `black_hole` |
//! | `unreachable` | the destination | `node_down` |
//! | anything about this node | this node | `local_pressure` |
//!
//! and is folded into an open incident when one explains it:
//!
//! * a node found down explains the symptoms of our link to it: an open incident about that
//!   link is *upgraded* to the node (the cause changes, the incident keeps its number);
//! * a link in trouble explains transit lost behind it: a suspected black hole at the
//!   neighbour joins an open incident about our link to it, and an open black-hole incident
//!   is merged into a link incident about that neighbour as soon as one opens;
//! * when at least `self_share` of our up links (and at least two) are degraded at once, the
//!   common factor is this node (its host, CPU or underlay): their incidents are merged into
//!   one incident about this node;
//! * otherwise symptoms with the same cause share an incident, and the incident's problem is
//!   the most serious one seen (flapping > down > crypto > degraded > silently down;
//!   down > black hole > noisy). A link the routing core declared down because it went
//!   silent ranks *below* degraded: a lossy link loses runs of probes and is declared down
//!   for a moment, and its problem is the loss.
//!
//! An incident's confidence is the noisy-OR of the highest confidence of each distinct
//! finding (detector × kind): independent detectors agreeing raise it, one detector repeating
//! itself does not. An incident with no symptom for `resolve_after_ms` is resolved: its cause
//! cleared.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use x0_routing::{Instant, LinkId};
use x0_wire::NodeId;

use crate::config::{IncidentConfig, ms};
use crate::detect::{Symptom, SymptomKind};
use crate::sample::{DownCause, LinkRef, Metric, Subject};

/// An incident's number, unique in one knowledge base.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct IncidentId(pub u64);

impl fmt::Display for IncidentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "i{}", self.0)
    }
}

/// The suspected cause of an incident.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type", content = "id")]
pub enum Cause {
    /// One of our links.
    Link(LinkRef),
    /// Another node.
    Node(NodeId),
    /// This node.
    Local,
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Link(l) => l.fmt(f),
            Self::Node(n) => write!(f, "node {}", n.short()),
            Self::Local => f.write_str("this node"),
        }
    }
}

/// What is wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Problem {
    /// A link is down.
    LinkDown,
    /// A link goes up and down.
    Flapping,
    /// A link is lossy, slow or dropping.
    LinkDegraded,
    /// Decryption/authentication failures on a link.
    CryptoFailure,
    /// A node is unreachable by every path.
    NodeDown,
    /// A relay drops transit traffic.
    BlackHole,
    /// A neighbour sends far more than its baseline.
    NoisyNeighbour,
    /// This node is under pressure (CPU, drops, all links degraded at once).
    LocalPressure,
}

impl Problem {
    /// Every problem.
    pub const ALL: [Self; 8] = [
        Self::LinkDown,
        Self::Flapping,
        Self::LinkDegraded,
        Self::CryptoFailure,
        Self::NodeDown,
        Self::BlackHole,
        Self::NoisyNeighbour,
        Self::LocalPressure,
    ];

    /// A stable snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::LinkDown => "link_down",
            Self::Flapping => "flapping",
            Self::LinkDegraded => "link_degraded",
            Self::CryptoFailure => "crypto_failure",
            Self::NodeDown => "node_down",
            Self::BlackHole => "black_hole",
            Self::NoisyNeighbour => "noisy_neighbour",
            Self::LocalPressure => "local_pressure",
        }
    }

    /// The inverse of [`Problem::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == s)
    }

    /// How serious a problem is when several are seen for one cause (higher wins).
    fn rank(self) -> u8 {
        match self {
            Self::Flapping => 5,
            Self::LinkDown | Self::NodeDown => 4,
            Self::CryptoFailure | Self::BlackHole => 3,
            Self::LinkDegraded | Self::NoisyNeighbour | Self::LocalPressure => 2,
        }
    }
}

/// How an incident ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type", content = "into")]
pub enum Resolution {
    /// Its symptoms stopped: the cause cleared.
    Cleared,
    /// Folded into another incident.
    Merged(IncidentId),
}

/// An incident.
#[derive(Debug, Clone, PartialEq)]
pub struct Incident {
    /// Its number.
    pub id: IncidentId,
    /// The suspected cause.
    pub cause: Cause,
    /// What is wrong.
    pub problem: Problem,
    /// Confidence in the cause, in `[0, 1]`.
    pub confidence: f64,
    /// When it was opened.
    pub opened_at: Instant,
    /// The latest symptom.
    pub last_symptom_at: Instant,
    /// When it was closed, and how.
    pub closed: Option<(Instant, Resolution)>,
    /// Symptoms absorbed.
    pub symptoms: u64,
    /// The latest symptom, in words.
    pub last_symptom: String,
    /// Highest confidence per finding (detector/kind).
    pub findings: BTreeMap<String, f64>,
    /// Rank of `problem` as it was established (see [`hypothesis`]).
    rank: u8,
}

impl Incident {
    /// Whether it is still open.
    pub fn is_open(&self) -> bool {
        self.closed.is_none()
    }

    fn recompute_confidence(&mut self) {
        let miss: f64 = self
            .findings
            .values()
            .map(|c| 1.0 - c.clamp(0.0, 1.0))
            .product();
        self.confidence = (1.0 - miss).clamp(0.0, 0.99);
    }
}

/// What correlation did with a symptom or a timeout.
#[derive(Debug, Clone, PartialEq)]
pub enum IncidentEvent {
    /// A new incident.
    Opened(IncidentId),
    /// An incident's cause or problem changed.
    Changed(IncidentId),
    /// A symptom joined an incident; `recorded` says whether it is within the per-incident
    /// recording budget.
    Symptom {
        /// The incident.
        incident: IncidentId,
        /// Whether to persist it.
        recorded: bool,
    },
    /// An incident was closed.
    Closed(IncidentId),
}

/// The correlator (see the module doc).
#[derive(Debug)]
pub struct Correlator {
    cfg: IncidentConfig,
    open: BTreeMap<IncidentId, Incident>,
    recent: VecDeque<Incident>,
    next_id: u64,
    /// Our links as last reported, and whether each is up.
    links: BTreeMap<LinkId, (LinkRef, bool)>,
    dropped: u64,
}

/// Closed incidents kept in memory for the API.
const RECENT: usize = 256;

/// The cause, problem and problem rank a symptom suggests. A link declared down because it
/// went *silent* ranks below a degraded link: a lossy link loses runs of probes and is briefly
/// declared down by the routing core, and the problem is its loss, not its liveness (a link
/// that is only ever silent is still `link_down`).
fn hypothesis(s: &Symptom) -> (Cause, Problem, u8) {
    let (cause, problem) = hypothesis_of(s);
    let rank = match s.kind {
        SymptomKind::LinkDown {
            cause: DownCause::Silent,
        } => 1,
        _ => problem.rank(),
    };
    (cause, problem, rank)
}

fn hypothesis_of(s: &Symptom) -> (Cause, Problem) {
    match (&s.subject, &s.kind) {
        (Subject::Link(l), SymptomKind::LinkDown { .. }) => (Cause::Link(*l), Problem::LinkDown),
        (Subject::Link(l), SymptomKind::Flapping { .. }) => (Cause::Link(*l), Problem::Flapping),
        (Subject::Link(l), SymptomKind::CryptoFailures { .. }) => {
            (Cause::Link(*l), Problem::CryptoFailure)
        }
        (
            Subject::Link(l),
            SymptomKind::Anomaly {
                metric: Metric::RxBytesPerS,
                ..
            }
            | SymptomKind::ChangePoint {
                metric: Metric::RxBytesPerS,
            },
        ) => (Cause::Node(l.neighbor), Problem::NoisyNeighbour),
        (Subject::Link(l), _) => (Cause::Link(*l), Problem::LinkDegraded),
        (Subject::Node(n), SymptomKind::PathBlackHole { .. }) => {
            (Cause::Node(*n), Problem::BlackHole)
        }
        (Subject::Node(n), SymptomKind::Unreachable { .. }) => (Cause::Node(*n), Problem::NodeDown),
        (Subject::Node(n), _) => (Cause::Node(*n), Problem::NoisyNeighbour),
        (Subject::Local, _) => (Cause::Local, Problem::LocalPressure),
    }
}

impl Correlator {
    /// A correlator whose first incident will be number `first_id`.
    pub fn new(cfg: &IncidentConfig, first_id: u64) -> Self {
        Self {
            cfg: cfg.clone(),
            open: BTreeMap::new(),
            recent: VecDeque::new(),
            next_id: first_id.max(1),
            links: BTreeMap::new(),
            dropped: 0,
        }
    }

    /// Continue numbering at `next` (after a restart), if that is higher.
    pub fn set_next_id(&mut self, next: u64) {
        self.next_id = self.next_id.max(next);
    }

    /// Notes a link's state (for the share of degraded links).
    pub fn note_link(&mut self, link: LinkRef, up: bool) {
        self.links.insert(link.id, (link, up));
    }

    /// Forgets a link (one that is gone for good), so that it no longer counts among our
    /// links.
    pub fn forget_link(&mut self, link: LinkId) {
        self.links.remove(&link);
    }

    /// Links known, and how many are down.
    pub fn link_counts(&self) -> (usize, usize) {
        let down = self.links.values().filter(|(_, up)| !up).count();
        (self.links.len(), down)
    }

    /// Symptoms dropped because `max_open` incidents were open.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Open incidents.
    pub fn open(&self) -> impl Iterator<Item = &Incident> {
        self.open.values()
    }

    /// An incident, open or recently closed.
    pub fn get(&self, id: IncidentId) -> Option<&Incident> {
        self.open
            .get(&id)
            .or_else(|| self.recent.iter().find(|i| i.id == id))
    }

    /// Recently closed incidents, newest last.
    pub fn recent(&self) -> impl Iterator<Item = &Incident> {
        self.recent.iter()
    }

    fn find(&self, pred: impl Fn(&Incident) -> bool) -> Option<IncidentId> {
        self.open.values().find(|i| pred(i)).map(|i| i.id)
    }

    fn create(
        &mut self,
        now: Instant,
        cause: Cause,
        problem: Problem,
        rank: u8,
    ) -> Option<IncidentId> {
        if self.open.len() >= self.cfg.max_open {
            self.dropped += 1;
            return None;
        }
        let id = IncidentId(self.next_id);
        self.next_id += 1;
        self.open.insert(
            id,
            Incident {
                id,
                cause,
                problem,
                confidence: 0.0,
                opened_at: now,
                last_symptom_at: now,
                closed: None,
                symptoms: 0,
                last_symptom: String::new(),
                findings: BTreeMap::new(),
                rank,
            },
        );
        Some(id)
    }

    fn close(&mut self, now: Instant, id: IncidentId, how: Resolution) {
        if let Some(mut i) = self.open.remove(&id) {
            i.closed = Some((now, how));
            if self.recent.len() >= RECENT {
                self.recent.pop_front();
            }
            self.recent.push_back(i);
        }
    }

    /// Folds one symptom in.
    pub fn absorb(&mut self, now: Instant, s: &Symptom, events: &mut Vec<IncidentEvent>) {
        if !(0.0..=1.0).contains(&s.confidence) {
            return;
        }
        let (cause, problem, rank) = hypothesis(s);
        let mut changed = false;
        let target = match cause {
            Cause::Link(l) => self
                .find(|i| i.cause == Cause::Node(l.neighbor) && i.problem == Problem::NodeDown)
                .or_else(|| {
                    (problem == Problem::LinkDegraded)
                        .then(|| self.find(|i| i.cause == Cause::Local))
                        .flatten()
                })
                .or_else(|| self.find(|i| i.cause == cause)),
            // Transit lost behind a link that is itself in trouble: the link explains it.
            Cause::Node(n) if problem == Problem::BlackHole => self
                .find(|i| matches!(i.cause, Cause::Link(l) if l.neighbor == n))
                .or_else(|| self.find(|i| i.cause == cause)),
            Cause::Node(n) if problem == Problem::NodeDown => {
                self.find(|i| i.cause == cause).or_else(|| {
                    let id = self.find(|i| matches!(i.cause, Cause::Link(l) if l.neighbor == n))?;
                    let inc = self.open.get_mut(&id)?;
                    inc.cause = cause;
                    inc.problem = Problem::NodeDown;
                    inc.rank = rank;
                    changed = true;
                    Some(id)
                })
            }
            _ => self.find(|i| i.cause == cause),
        };
        let (id, opened) = match target {
            Some(id) => (id, false),
            None => match self.create(now, cause, problem, rank) {
                Some(id) => (id, true),
                None => return,
            },
        };
        let Some(inc) = self.open.get_mut(&id) else {
            return;
        };
        if inc.cause == cause && rank > inc.rank {
            inc.problem = problem;
            inc.rank = rank;
            changed = true;
        }
        inc.last_symptom_at = now;
        inc.symptoms = inc.symptoms.saturating_add(1);
        inc.last_symptom = s.to_string();
        let finding = format!("{}/{}", s.detector, s.kind.name());
        let best = inc.findings.entry(finding).or_insert(0.0);
        *best = best.max(s.confidence);
        let before = inc.confidence;
        inc.recompute_confidence();
        if !opened && (inc.confidence - before).abs() >= 0.05 {
            changed = true;
        }
        let recorded = inc.symptoms <= u64::from(self.cfg.max_symptoms_recorded);
        if opened {
            events.push(IncidentEvent::Opened(id));
        } else if changed {
            events.push(IncidentEvent::Changed(id));
        }
        events.push(IncidentEvent::Symptom {
            incident: id,
            recorded,
        });
        if let Cause::Link(l) = cause {
            // A black hole suspected behind this link was the link all along.
            if let Some(bh) =
                self.find(|i| i.cause == Cause::Node(l.neighbor) && i.problem == Problem::BlackHole)
                && bh != id
            {
                self.close(now, bh, Resolution::Merged(id));
                events.push(IncidentEvent::Closed(bh));
            }
        }
        if problem == Problem::LinkDegraded && matches!(cause, Cause::Link(_)) {
            self.correlate_self(now, events);
        }
    }

    /// Merges per-link degradations into one incident about this node when enough of our
    /// links degrade at once.
    fn correlate_self(&mut self, now: Instant, events: &mut Vec<IncidentEvent>) {
        let up = self.links.values().filter(|(_, up)| *up).count();
        let degraded: Vec<IncidentId> = self
            .open
            .values()
            .filter(|i| matches!(i.cause, Cause::Link(_)) && i.problem == Problem::LinkDegraded)
            .map(|i| i.id)
            .collect();
        let n = degraded.len();
        if n < 2 || (n as f64) < self.cfg.self_share * up as f64 {
            return;
        }
        let local = match self.find(|i| i.cause == Cause::Local) {
            Some(id) => id,
            None => {
                // Room is made by the merge itself.
                let Some(id) = self.create_unbounded(now) else {
                    return;
                };
                events.push(IncidentEvent::Opened(id));
                id
            }
        };
        let mut findings = BTreeMap::new();
        for id in &degraded {
            if let Some(i) = self.open.get(id) {
                for (k, v) in &i.findings {
                    let e = findings.entry(k.clone()).or_insert(0.0f64);
                    *e = e.max(*v);
                }
            }
            self.close(now, *id, Resolution::Merged(local));
            events.push(IncidentEvent::Closed(*id));
        }
        if let Some(l) = self.open.get_mut(&local) {
            l.findings
                .insert("correlation/links_degraded".into(), 0.5 + 0.1 * n as f64);
            for (k, v) in findings {
                let e = l.findings.entry(k).or_insert(0.0);
                *e = e.max(v);
            }
            l.recompute_confidence();
            l.last_symptom_at = now;
            l.last_symptom = format!("{n} of {up} links degraded at once");
        }
    }

    fn create_unbounded(&mut self, now: Instant) -> Option<IncidentId> {
        let max = self.cfg.max_open;
        self.cfg.max_open = usize::MAX;
        let id = self.create(now, Cause::Local, Problem::LocalPressure, 2);
        self.cfg.max_open = max;
        id
    }

    /// Closes incidents whose symptoms stopped `resolve_after_ms` ago.
    pub fn resolve_quiet(&mut self, now: Instant, events: &mut Vec<IncidentEvent>) {
        let quiet = self.resolve_after();
        let done: Vec<IncidentId> = self
            .open
            .values()
            .filter(|i| now.saturating_since(i.last_symptom_at) >= quiet)
            .map(|i| i.id)
            .collect();
        for id in done {
            self.close(now, id, Resolution::Cleared);
            events.push(IncidentEvent::Closed(id));
        }
    }

    /// When the earliest open incident would resolve if nothing else happens.
    pub fn next_resolution(&self) -> Option<Instant> {
        let quiet = self.resolve_after();
        self.open.values().map(|i| i.last_symptom_at + quiet).min()
    }

    fn resolve_after(&self) -> Duration {
        ms(self.cfg.resolve_after_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(i: u8) -> NodeId {
        NodeId::from_bytes([i; 16])
    }

    fn link(i: u8) -> LinkRef {
        LinkRef {
            id: u64::from(i),
            neighbor: n(i),
        }
    }

    fn sym(subject: Subject, kind: SymptomKind, detector: &'static str, conf: f64) -> Symptom {
        Symptom {
            detector,
            subject,
            kind,
            value: 0.0,
            expected: 0.0,
            confidence: conf,
        }
    }

    fn t(ms: u64) -> Instant {
        Instant::from_millis(ms)
    }

    #[test]
    fn independent_detectors_raise_confidence_repetition_does_not() {
        let mut c = Correlator::new(&IncidentConfig::default(), 1);
        let mut ev = Vec::new();
        let anomaly = sym(
            Subject::Link(link(1)),
            SymptomKind::Anomaly {
                metric: Metric::Loss,
                z: 6.0,
            },
            "ewma",
            0.6,
        );
        for _ in 0..10 {
            c.absorb(t(0), &anomaly, &mut ev);
        }
        let i = c.open().next().unwrap();
        assert!((i.confidence - 0.6).abs() < 1e-9);
        assert_eq!(i.symptoms, 10);
        c.absorb(
            t(100),
            &sym(
                Subject::Link(link(1)),
                SymptomKind::ChangePoint {
                    metric: Metric::Loss,
                },
                "cusum",
                0.6,
            ),
            &mut ev,
        );
        let i = c.open().next().unwrap();
        assert!((i.confidence - 0.84).abs() < 1e-9);
        assert_eq!(i.problem, Problem::LinkDegraded);
        assert_eq!(ev[0], IncidentEvent::Opened(IncidentId(1)));
        assert!(ev.contains(&IncidentEvent::Changed(IncidentId(1))));
    }

    #[test]
    fn a_node_found_unreachable_upgrades_the_link_incident() {
        let mut c = Correlator::new(&IncidentConfig::default(), 7);
        let mut ev = Vec::new();
        c.absorb(
            t(0),
            &sym(
                Subject::Link(link(2)),
                SymptomKind::LinkDown {
                    cause: DownCause::Silent,
                },
                "rules",
                0.8,
            ),
            &mut ev,
        );
        c.absorb(
            t(500),
            &sym(
                Subject::Node(n(2)),
                SymptomKind::Unreachable { paths: 2 },
                "path_differential",
                0.6,
            ),
            &mut ev,
        );
        assert_eq!(c.open().count(), 1);
        let i = c.open().next().unwrap();
        assert_eq!(i.id, IncidentId(7));
        assert_eq!(i.cause, Cause::Node(n(2)));
        assert_eq!(i.problem, Problem::NodeDown);
        assert!(i.confidence > 0.9);
        // Further link-down symptoms of that link stay with the node incident.
        c.absorb(
            t(600),
            &sym(
                Subject::Link(link(2)),
                SymptomKind::LinkDown {
                    cause: DownCause::Silent,
                },
                "rules",
                0.8,
            ),
            &mut ev,
        );
        assert_eq!(c.open().count(), 1);
    }

    #[test]
    fn a_silent_down_does_not_override_loss_but_a_local_down_does() {
        let mut c = Correlator::new(&IncidentConfig::default(), 1);
        let mut ev = Vec::new();
        let down = |cause| {
            sym(
                Subject::Link(link(1)),
                SymptomKind::LinkDown { cause },
                "rules",
                0.8,
            )
        };
        c.absorb(t(0), &down(DownCause::Silent), &mut ev);
        assert_eq!(c.open().next().unwrap().problem, Problem::LinkDown);
        c.absorb(
            t(100),
            &sym(Subject::Link(link(1)), SymptomKind::HighLoss, "rules", 0.75),
            &mut ev,
        );
        assert_eq!(c.open().next().unwrap().problem, Problem::LinkDegraded);
        c.absorb(t(200), &down(DownCause::Silent), &mut ev);
        assert_eq!(c.open().next().unwrap().problem, Problem::LinkDegraded);
        c.absorb(t(300), &down(DownCause::Local), &mut ev);
        assert_eq!(c.open().next().unwrap().problem, Problem::LinkDown);
    }

    #[test]
    fn a_troubled_link_explains_a_black_hole_behind_it() {
        let mut c = Correlator::new(&IncidentConfig::default(), 1);
        let mut ev = Vec::new();
        let bh = sym(
            Subject::Node(n(1)),
            SymptomKind::PathBlackHole {
                dst: n(9),
                failing: vec![n(1)],
                working: vec![n(2)],
            },
            "path_differential",
            0.7,
        );
        c.absorb(t(0), &bh, &mut ev);
        assert_eq!(c.open().next().unwrap().problem, Problem::BlackHole);
        c.absorb(
            t(100),
            &sym(Subject::Link(link(1)), SymptomKind::HighLoss, "rules", 0.75),
            &mut ev,
        );
        let open: Vec<_> = c.open().collect();
        assert_eq!(open.len(), 1);
        assert_eq!(open[0].cause, Cause::Link(link(1)));
        assert_eq!(
            c.recent().next().unwrap().closed.unwrap().1,
            Resolution::Merged(open[0].id)
        );
        // Later black-hole symptoms about that neighbour join the link incident.
        c.absorb(t(200), &bh, &mut ev);
        assert_eq!(c.open().count(), 1);
        assert_eq!(c.open().next().unwrap().problem, Problem::LinkDegraded);
    }

    #[test]
    fn most_links_degraded_at_once_points_at_this_node() {
        let mut c = Correlator::new(&IncidentConfig::default(), 1);
        for i in 1..=3 {
            c.note_link(link(i), true);
        }
        let mut ev = Vec::new();
        let deg = |i| sym(Subject::Link(link(i)), SymptomKind::HighRtt, "rules", 0.7);
        c.absorb(t(0), &deg(1), &mut ev);
        assert_eq!(c.open().count(), 1);
        c.absorb(t(0), &deg(2), &mut ev);
        let open: Vec<_> = c.open().collect();
        assert_eq!(open.len(), 1, "{open:?}");
        assert_eq!(open[0].cause, Cause::Local);
        assert_eq!(open[0].problem, Problem::LocalPressure);
        let merged: Vec<_> = c.recent().map(|i| i.closed.unwrap().1).collect();
        assert_eq!(merged, vec![Resolution::Merged(open[0].id); 2]);
        // A third degraded link joins the node incident.
        c.absorb(t(100), &deg(3), &mut ev);
        assert_eq!(c.open().count(), 1);
    }

    #[test]
    fn quiet_incidents_resolve_and_the_open_count_is_bounded() {
        let cfg = IncidentConfig {
            max_open: 3,
            ..IncidentConfig::default()
        };
        let mut c = Correlator::new(&cfg, 1);
        let mut ev = Vec::new();
        for i in 0..10 {
            c.absorb(
                t(0),
                &sym(
                    Subject::Node(n(i)),
                    SymptomKind::Unreachable { paths: 2 },
                    "x",
                    0.7,
                ),
                &mut ev,
            );
        }
        assert_eq!(c.open().count(), 3);
        assert_eq!(c.dropped(), 7);
        assert_eq!(c.next_resolution(), Some(t(cfg.resolve_after_ms)));
        ev.clear();
        c.resolve_quiet(t(cfg.resolve_after_ms - 1), &mut ev);
        assert!(ev.is_empty());
        c.resolve_quiet(t(cfg.resolve_after_ms), &mut ev);
        assert_eq!(ev.len(), 3);
        assert_eq!(c.open().count(), 0);
        assert!(c.get(IncidentId(1)).is_some_and(|i| !i.is_open()));
    }

    #[test]
    fn out_of_range_confidence_is_ignored() {
        let mut c = Correlator::new(&IncidentConfig::default(), 1);
        let mut ev = Vec::new();
        for conf in [f64::NAN, -0.1, 1.5] {
            c.absorb(
                t(0),
                &sym(Subject::Local, SymptomKind::HighLoss, "x", conf),
                &mut ev,
            );
        }
        assert_eq!(c.open().count(), 0);
        assert!(
            Problem::ALL
                .iter()
                .all(|p| Problem::parse(p.as_str()) == Some(*p))
        );
    }
}
