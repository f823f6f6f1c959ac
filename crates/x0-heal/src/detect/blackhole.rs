//! Path-differential black-hole detection.
//!
//! A *black hole* is a relay that answers link probes (so routing keeps it) but drops the
//! traffic it should forward. Link metrics cannot see it; end-to-end probes along explicit
//! paths can. For each destination the detector keeps the probe rounds of the last
//! `blackhole_window_ms` per path (the path's relays) and, after every round:
//!
//! * a path is **failing** when at least `blackhole_min_failures` probes were lost since its
//!   last answered round, and **working** when its latest round was answered and at least
//!   `blackhole_min_successes` probes were answered in the window;
//! * if a failing path and a working path are node-disjoint, the failing path's relays that
//!   are on no working path, and that answer cleanly themselves (every direct probe to them
//!   in the window answered, when they are probed directly), are suspects: each gets a
//!   `path_black_hole` symptom;
//! * **corroboration**: a destination can lie (answer only the probes that avoid a relay, and
//!   drop, as a relay itself, what comes to it through that relay), so one destination is not
//!   enough to blame a relay. Each finding is *evidence* against the suspect: the destination
//!   and the failing path, whose other nodes (the destination and the path's other relays)
//!   could explain the loss just as well. A suspect is **corroborated** when at least
//!   `blackhole_min_destinations` pieces of evidence (from as many destinations) have pairwise
//!   disjoint other nodes: then no single other node explains the losses, and with at most
//!   `blackhole_min_destinations − 1` liars at least one of them is true. A corroborated
//!   suspect's confidence is `(1 − 0.3ⁿ) / s` for `n` destinations implicating it and `s`
//!   suspects on the path (two destinations through one-relay paths: 0.91); an uncorroborated
//!   one's is [`UNCORROBORATED`]` / s` (0.5), below `incidents.act_confidence` (0.6): its
//!   incident opens, nothing is done about it. In a mesh where only one destination lies
//!   behind a relay (every other path through it also crosses that destination, as in a ring
//!   of four), a black hole there is reported, never acted on;
//! * a failing path whose first relay is a neighbour whose link is down, missing probes or
//!   lossy (≥ 3 %), or was so in the last 2 s, is a link problem, not a black hole: it
//!   implicates nobody, and its failed rounds from that time are not counted;
//! * so is a failed round across a link beyond the first hop that left the topology (and has
//!   not come back), or that came back or was advertised impaired
//!   ([`Topology::mark_impaired`]) within the window: the nodes at its ends see that link;
//!   a relay next to it is not to blame;
//! * if at least two paths to a destination are failing and no path's latest round was
//!   answered, the destination is
//!   `unreachable` (confidence 0.6, +0.1 per further path, at most 0.9).
//!
//! Probe rounds with more answers than probes, absurd counts or malformed paths are ignored.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::time::Duration;

use x0_routing::Instant;
use x0_wire::NodeId;

use super::{Detector, Symptom, SymptomKind};
use crate::config::{DetectConfig, ms};
use crate::sample::{LinkState, Observation, PathProbe, Sample, Subject};
use crate::topology::{Topology, edge};

/// Most relays in a path the detector accepts.
const MAX_RELAYS: usize = 32;
/// Most paths tracked per destination.
const MAX_PATHS: usize = 16;
/// Most probes one round may claim.
const MAX_ROUND: u32 = 10_000;
/// A failed round through a neighbour whose link looked unhealthy this recently is excused.
const EXCUSE: Duration = Duration::from_secs(2);
/// Link loss at or above which the link, not the relay behind it, explains lost probes (two
/// probes of the routing core's 64-probe window).
const LOSSY_LINK: f64 = 0.03;
/// Confidence of an uncorroborated finding (before dividing by the suspects on its path):
/// below the default `incidents.act_confidence` (0.6), so it opens an incident and raises no
/// action.
pub const UNCORROBORATED: f64 = 0.5;
/// Most pieces of evidence kept per suspect (the most recent).
const MAX_EVIDENCE: usize = 16;

/// One destination's evidence against a suspect.
#[derive(Debug, Clone)]
struct Evidence {
    at: Instant,
    /// The nodes other than the suspect that could explain the loss as well: the
    /// destination and the failing path's other relays.
    others: BTreeSet<NodeId>,
}

/// Whether `need` of `sets` are pairwise disjoint (a small exact search: at most
/// [`MAX_EVIDENCE`] sets).
fn disjoint_choice(sets: &[&BTreeSet<NodeId>], need: usize) -> bool {
    fn pick(sets: &[&BTreeSet<NodeId>], from: usize, need: usize, used: &mut Vec<usize>) -> bool {
        if need == 0 {
            return true;
        }
        for i in from..sets.len() {
            if sets.len() - i < need {
                return false;
            }
            if used.iter().all(|&u| sets[u].is_disjoint(sets[i])) {
                used.push(i);
                if pick(sets, i + 1, need - 1, used) {
                    return true;
                }
                used.pop();
            }
        }
        false
    }
    pick(sets, 0, need, &mut Vec::with_capacity(need))
}

#[derive(Debug, Clone, Copy)]
struct Round {
    at: Instant,
    sent: u32,
    received: u32,
    /// Lost while the first hop's link looked unhealthy.
    excused: bool,
}

#[derive(Debug, Default)]
struct Destination {
    paths: BTreeMap<Vec<NodeId>, VecDeque<Round>>,
    last_at: Option<Instant>,
}

/// The path-differential detector.
#[derive(Debug)]
pub struct PathDifferential {
    window: Duration,
    min_failures: u32,
    min_successes: u32,
    min_destinations: usize,
    max_dsts: usize,
    dsts: HashMap<NodeId, Destination>,
    /// Neighbours whose link was last seen down, missing probes or lossy, and when.
    impaired: HashMap<NodeId, Instant>,
    /// Per suspect, the evidence of each destination that implicated it.
    implicated: HashMap<NodeId, BTreeMap<NodeId, Evidence>>,
    /// Paths whose latest round lost probes.
    losing: HashSet<(NodeId, Vec<NodeId>)>,
    /// Links that left the topology and have not come back.
    gone: HashSet<(NodeId, NodeId)>,
    /// Links that left the topology or were advertised impaired, and when last so.
    unsettled: HashMap<(NodeId, NodeId), Instant>,
    /// The latest time seen (topology changes come without one).
    last_now: Instant,
}

fn valid(p: &PathProbe) -> bool {
    let unique: BTreeSet<_> = p.relays.iter().collect();
    p.received <= p.sent
        && p.sent <= MAX_ROUND
        && p.relays.len() <= MAX_RELAYS
        && unique.len() == p.relays.len()
        && !p.relays.contains(&p.dst)
}

impl PathDifferential {
    /// A detector with the given parameters.
    pub fn new(cfg: &DetectConfig) -> Self {
        Self {
            window: ms(cfg.blackhole_window_ms),
            min_failures: cfg.blackhole_min_failures,
            min_successes: cfg.blackhole_min_successes,
            min_destinations: usize::try_from(cfg.blackhole_min_destinations)
                .unwrap_or(usize::MAX)
                .max(1),
            max_dsts: cfg.max_series,
            dsts: HashMap::new(),
            impaired: HashMap::new(),
            implicated: HashMap::new(),
            losing: HashSet::new(),
            gone: HashSet::new(),
            unsettled: HashMap::new(),
            last_now: Instant::from_micros(0),
        }
    }

    fn prune(&mut self, now: Instant) {
        let window = self.window;
        for d in self.dsts.values_mut() {
            for rounds in d.paths.values_mut() {
                while rounds
                    .front()
                    .is_some_and(|r| now.saturating_since(r.at) > window)
                {
                    rounds.pop_front();
                }
            }
            d.paths.retain(|_, r| !r.is_empty());
        }
        self.dsts.retain(|_, d| !d.paths.is_empty());
        for by_dst in self.implicated.values_mut() {
            by_dst.retain(|_, e| now.saturating_since(e.at) <= window);
        }
        self.implicated.retain(|_, m| !m.is_empty());
        let dsts = &self.dsts;
        self.losing
            .retain(|(dst, path)| dsts.get(dst).is_some_and(|d| d.paths.contains_key(path)));
    }

    fn record(&mut self, now: Instant, p: &PathProbe) {
        if !self.dsts.contains_key(&p.dst)
            && self.dsts.len() >= self.max_dsts
            && let Some(oldest) = self
                .dsts
                .iter()
                .min_by_key(|(_, d)| d.last_at)
                .map(|(k, _)| *k)
        {
            self.dsts.remove(&oldest);
        }
        let first = p.relays.first().unwrap_or(&p.dst);
        let excused = p.received == 0
            && (self
                .impaired
                .get(first)
                .is_some_and(|at| now.saturating_since(*at) <= EXCUSE)
                || self.beyond_unsettled(now, p));
        let d = self.dsts.entry(p.dst).or_default();
        if !d.paths.contains_key(&p.relays) && d.paths.len() >= MAX_PATHS {
            return;
        }
        d.last_at = Some(now);
        d.paths
            .entry(p.relays.clone())
            .or_default()
            .push_back(Round {
                at: now,
                sent: p.sent,
                received: p.received,
                excused,
            });
        let key = (p.dst, p.relays.clone());
        if p.received < p.sent {
            self.losing.insert(key);
        } else if p.sent > 0 {
            self.losing.remove(&key);
        }
    }

    /// Whether the path crosses, beyond its first hop, a link that left the topology (and has
    /// not come back) or that was gone or advertised impaired within the window: probes
    /// lost there are a link's matter, seen by the nodes at its ends, not a relay's.
    fn beyond_unsettled(&self, now: Instant, p: &PathProbe) -> bool {
        let hops: Vec<NodeId> = p
            .relays
            .iter()
            .copied()
            .chain(std::iter::once(p.dst))
            .collect();
        hops.windows(2).any(|w| {
            let (a, b) = (w[0], w[1]);
            let e = edge(a, b);
            self.gone.contains(&e)
                || self
                    .unsettled
                    .get(&e)
                    .is_some_and(|at| now.saturating_since(*at) <= self.window)
        })
    }

    /// Whether a suspect itself answers: every direct probe to it in the window was answered
    /// (true when it is not probed directly). A relay whose own probes get lost is behind a
    /// lossy link, not a black hole.
    fn answers_cleanly(&self, node: &NodeId) -> bool {
        match self.dsts.get(node).and_then(|d| d.paths.get(&Vec::new())) {
            Some(rounds) => {
                rounds.iter().all(|r| r.received == r.sent) && rounds.iter().any(|r| r.sent > 0)
            }
            None => true,
        }
    }

    fn evaluate(&mut self, now: Instant, dst: NodeId, out: &mut Vec<Symptom>) {
        let Some(d) = self.dsts.get(&dst) else {
            return;
        };
        // Per path: probes lost since its last answered round (not counting excused rounds),
        // answers in the window, and whether its latest round was answered. Answers from
        // before a failure started must not hide it, so "failing" counts only the trailing
        // unanswered rounds.
        let trailing = |rounds: &VecDeque<Round>, with_excused: bool| {
            rounds
                .iter()
                .rev()
                .take_while(|r| r.received == 0)
                .filter(|r| with_excused || !r.excused)
                .map(|r| r.sent)
                .fold(0u32, u32::saturating_add)
        };
        let unreachable_paths = d
            .paths
            .values()
            .filter(|rounds| trailing(rounds, true) >= self.min_failures)
            .count();
        let totals: Vec<(&Vec<NodeId>, u32, u32, bool)> = d
            .paths
            .iter()
            .map(|(path, rounds)| {
                let trailing = trailing(rounds, false);
                let recv = rounds
                    .iter()
                    .map(|r| r.received)
                    .fold(0u32, u32::saturating_add);
                let latest_ok = rounds.back().is_some_and(|r| r.received > 0);
                (path, trailing, recv, latest_ok)
            })
            .collect();
        let failing: Vec<&Vec<NodeId>> = totals
            .iter()
            .filter(|(_, trailing, _, _)| *trailing >= self.min_failures)
            .map(|(p, ..)| *p)
            .collect();
        let working: Vec<&Vec<NodeId>> = totals
            .iter()
            .filter(|(_, _, recv, latest_ok)| *latest_ok && *recv >= self.min_successes)
            .map(|(p, ..)| *p)
            .collect();
        if working.is_empty() {
            if unreachable_paths >= 2 && totals.iter().all(|(.., latest_ok)| !latest_ok) {
                let n = u32::try_from(unreachable_paths).unwrap_or(u32::MAX);
                out.push(Symptom {
                    detector: "path_differential",
                    subject: Subject::Node(dst),
                    kind: SymptomKind::Unreachable { paths: n },
                    value: 0.0,
                    expected: 1.0,
                    confidence: (0.6 + 0.1 * f64::from(n - 2)).min(0.9),
                });
            }
            return;
        }
        if failing.is_empty() {
            return;
        }
        let on_working: BTreeSet<NodeId> = working.iter().flat_map(|p| p.iter().copied()).collect();
        let mut findings: Vec<(NodeId, Vec<NodeId>, Vec<NodeId>, usize)> = Vec::new();
        for f in &failing {
            let Some(first) = f.first() else {
                continue; // a direct path: a link matter
            };
            if self
                .impaired
                .get(first)
                .is_some_and(|at| now.saturating_since(*at) <= EXCUSE)
            {
                continue;
            }
            let Some(w) = working.iter().find(|w| w.iter().all(|n| !f.contains(n))) else {
                continue;
            };
            let suspects: Vec<NodeId> = f
                .iter()
                .copied()
                .filter(|n| !on_working.contains(n) && self.answers_cleanly(n))
                .collect();
            for s in &suspects {
                findings.push((*s, (*f).clone(), (*w).clone(), suspects.len()));
            }
        }
        for (suspect, failing, working, n_suspects) in findings {
            if !self.implicated.contains_key(&suspect) && self.implicated.len() >= self.max_dsts {
                continue;
            }
            let others: BTreeSet<NodeId> = failing
                .iter()
                .copied()
                .chain(std::iter::once(dst))
                .filter(|n| *n != suspect)
                .collect();
            let by_dst = self.implicated.entry(suspect).or_default();
            by_dst.insert(dst, Evidence { at: now, others });
            while by_dst.len() > MAX_EVIDENCE {
                let Some(oldest) = by_dst.iter().min_by_key(|(_, e)| e.at).map(|(d, _)| *d) else {
                    break;
                };
                by_dst.remove(&oldest);
            }
            let sets: Vec<&BTreeSet<NodeId>> = by_dst.values().map(|e| &e.others).collect();
            let corroborated = disjoint_choice(&sets, self.min_destinations);
            let n = i32::try_from(by_dst.len()).unwrap_or(i32::MAX);
            let full = (1.0 - 0.3f64.powi(n)).min(0.95);
            let conf = if corroborated {
                full
            } else {
                full.min(UNCORROBORATED)
            } / n_suspects.max(1) as f64;
            out.push(Symptom {
                detector: "path_differential",
                subject: Subject::Node(suspect),
                kind: SymptomKind::PathBlackHole {
                    dst,
                    failing,
                    working,
                },
                value: 0.0,
                expected: 1.0,
                confidence: conf,
            });
        }
    }
}

impl Detector for PathDifferential {
    fn name(&self) -> &'static str {
        "path_differential"
    }

    fn observe(
        &mut self,
        now: Instant,
        sample: &Sample,
        _observations: &[Observation],
        out: &mut Vec<Symptom>,
    ) {
        match sample {
            Sample::Link(s) => {
                // NaN counts as lossy: an unreadable link is no evidence for a black hole.
                let lossy = s.loss.is_some_and(|l| l >= LOSSY_LINK || l.is_nan());
                if s.state != LinkState::Up || s.probe_misses > 0 || lossy {
                    self.impaired.insert(s.link.neighbor, now);
                }
            }
            Sample::Probe(p) if valid(p) => {
                self.last_now = self.last_now.max(now);
                self.prune(now);
                self.record(now, p);
                self.evaluate(now, p.dst, out);
            }
            _ => {}
        }
    }

    fn tick(&mut self, now: Instant, _out: &mut Vec<Symptom>) {
        self.last_now = self.last_now.max(now);
        self.prune(now);
        let window = self.window;
        self.unsettled
            .retain(|_, at| now.saturating_since(*at) <= window);
        // Links of nodes gone for good would stay here for ever.
        if self.gone.len() > self.max_dsts {
            self.gone.clear();
        }
        self.impaired
            .retain(|_, at| now.saturating_since(*at) <= EXCUSE);
        if self.impaired.len() > self.max_dsts {
            self.impaired.clear();
        }
    }

    fn suspicious(&self) -> bool {
        !self.losing.is_empty()
    }

    fn topology_changed(&mut self, before: &Topology, after: &Topology) {
        let now = self.last_now;
        for e in before.edges() {
            if !after.has_edge(&e.0, &e.1) {
                self.unsettled.insert(e, now);
                self.gone.insert(e);
            }
        }
        self.gone.retain(|e| !after.has_edge(&e.0, &e.1));
        for e in after.impaired() {
            self.unsettled.insert(*e, now);
        }
    }

    fn clock_jumped(&mut self) {
        // Rounds from before the jump cannot be compared with rounds after it.
        self.dsts.clear();
        self.implicated.clear();
        self.losing.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::{DownCause, LinkRef, LinkSample};
    use proptest::prelude::*;

    fn n(i: u8) -> NodeId {
        NodeId::from_bytes([i; 16])
    }

    fn probe(dst: u8, relays: &[u8], sent: u32, received: u32) -> Sample {
        Sample::Probe(PathProbe {
            dst: n(dst),
            relays: relays.iter().map(|&r| n(r)).collect(),
            sent,
            received,
            rtt_ms: None,
            on_route: true,
        })
    }

    /// The unit tests use three failures to keep the sequences short.
    fn cfg() -> DetectConfig {
        DetectConfig {
            blackhole_min_failures: 3,
            ..DetectConfig::default()
        }
    }

    fn feed(d: &mut PathDifferential, t_ms: u64, s: Sample) -> Vec<Symptom> {
        let mut out = Vec::new();
        d.observe(Instant::from_millis(t_ms), &s, &[], &mut out);
        out
    }

    #[test]
    fn a_relay_that_drops_transit_is_suspected() {
        let mut d = PathDifferential::new(&cfg());
        let (r, b, dst) = (2, 3, 9);
        let mut found = Vec::new();
        for i in 0..3 {
            feed(&mut d, i * 100, probe(dst, &[b], 1, 1));
            found = feed(&mut d, i * 100, probe(dst, &[r], 1, 0));
        }
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].subject, Subject::Node(n(r)));
        assert!(
            (found[0].confidence - UNCORROBORATED).abs() < 1e-9,
            "one destination alone is not enough to act on"
        );
        // A second destination through the same relay corroborates it.
        let mut more = Vec::new();
        for i in 3..6 {
            feed(&mut d, i * 100, probe(8, &[b], 1, 1));
            more = feed(&mut d, i * 100, probe(8, &[r], 1, 0));
        }
        assert_eq!(more.len(), 1);
        assert!((more[0].confidence - 0.91).abs() < 1e-9);
    }

    /// A destination that answers only the probes that avoid relay `r` (it sees which
    /// neighbour hands it a probe, and which relays the probe names) makes `r` look like a
    /// black hole for itself alone: never enough to act on, however long it goes on.
    #[test]
    fn a_lying_destination_alone_cannot_get_a_relay_blamed() {
        let act = crate::config::IncidentConfig::default().act_confidence;
        let mut d = PathDifferential::new(&cfg());
        let (r, b, liar, honest) = (2, 3, 9, 8);
        for i in 0..100 {
            feed(&mut d, i * 100, probe(liar, &[b], 1, 1));
            // Another destination through the same relay is answered.
            feed(&mut d, i * 100, probe(honest, &[r], 1, 1));
            feed(&mut d, i * 100, probe(honest, &[b], 1, 1));
            for s in feed(&mut d, i * 100, probe(liar, &[r], 1, 0)) {
                assert!(s.confidence < act, "round {i}: {s:?}");
            }
        }
    }

    /// The liar is also a relay on another destination's path through `r` (a ring of four:
    /// from us, every path through `r` crosses `liar`): two destinations implicate `r`, but
    /// one node explains both, so `r` is not corroborated. Two destinations whose failing
    /// paths share nothing but `r` are.
    #[test]
    fn evidence_explained_by_one_other_node_is_not_corroboration() {
        let act = crate::config::IncidentConfig::default().act_confidence;
        // Ring 1 – 2 – 9 – 3 – 1, we are 1: 9 via [2] or [3]; 3 directly or via [2, 9].
        let (r, other, liar) = (2, 3, 9);
        let mut d = PathDifferential::new(&cfg());
        let mut seen = Vec::new();
        for i in 0..50 {
            let t = i * 100;
            feed(&mut d, t, probe(liar, &[other], 1, 1));
            seen.extend(feed(&mut d, t, probe(liar, &[r], 1, 0)));
            feed(&mut d, t, probe(other, &[], 1, 1));
            seen.extend(feed(&mut d, t, probe(other, &[r, liar], 1, 0)));
        }
        assert!(seen.iter().any(|s| s.subject == Subject::Node(n(r))));
        assert!(seen.iter().all(|s| s.confidence < act), "{seen:?}");
        // Independent evidence: 8 behind r as well, with an alternative of its own.
        let mut found = Vec::new();
        for i in 50..55 {
            let t = i * 100;
            feed(&mut d, t, probe(8, &[other], 1, 1));
            found = feed(&mut d, t, probe(8, &[r], 1, 0));
        }
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].confidence >= act, "{found:?}");
    }

    #[test]
    fn disjoint_choice_is_exact() {
        let set = |v: &[u8]| v.iter().map(|&i| n(i)).collect::<BTreeSet<NodeId>>();
        let (a, b, c) = (set(&[1, 2]), set(&[2, 3]), set(&[3]));
        assert!(disjoint_choice(&[&a, &b, &c], 2), "{{1,2}} and {{3}}");
        assert!(!disjoint_choice(&[&a, &b, &c], 3));
        assert!(!disjoint_choice(&[&a, &b], 2));
        assert!(disjoint_choice(&[&a], 1));
        assert!(disjoint_choice(&[], 0));
    }

    #[test]
    fn a_link_gone_or_impaired_beyond_the_relay_is_not_a_black_hole() {
        let (r, b, dst) = (2, 3, 9);
        let square = || Topology::from_adjacency([(n(1), [n(r), n(b)]), (n(dst), [n(r), n(b)])]);
        // The link relay – destination goes down: the relay is not to blame.
        let mut d = PathDifferential::new(&cfg());
        d.topology_changed(&Topology::new(), &square());
        feed(&mut d, 0, probe(dst, &[b], 1, 1));
        let mut gone = square();
        gone.remove_edge(n(r), n(dst));
        d.topology_changed(&square(), &gone);
        let mut found = Vec::new();
        for i in 1..6 {
            feed(&mut d, i * 100, probe(dst, &[b], 1, 1));
            found.extend(feed(&mut d, i * 100, probe(dst, &[r], 1, 0)));
        }
        assert!(found.is_empty(), "{found:?}");
        // Advertised impaired (lossy) and still there: the same, for the window after.
        let mut d = PathDifferential::new(&cfg());
        let mut lossy = square();
        lossy.mark_impaired(n(dst), n(r));
        d.topology_changed(&Topology::new(), &lossy);
        d.topology_changed(&lossy, &square());
        let mut found = Vec::new();
        for i in 0..5 {
            feed(&mut d, i * 100, probe(dst, &[b], 1, 1));
            found.extend(feed(&mut d, i * 100, probe(dst, &[r], 1, 0)));
        }
        assert!(found.is_empty(), "{found:?}");
        // The same losses with the path intact are a black hole.
        let mut d = PathDifferential::new(&cfg());
        d.topology_changed(&Topology::new(), &square());
        for i in 0..5 {
            feed(&mut d, i * 100, probe(dst, &[b], 1, 1));
            found.extend(feed(&mut d, i * 100, probe(dst, &[r], 1, 0)));
        }
        assert!(found.iter().any(|s| s.subject == Subject::Node(n(r))));
    }

    #[test]
    fn a_down_first_hop_is_a_link_problem_not_a_black_hole() {
        let mut d = PathDifferential::new(&cfg());
        let link = LinkRef {
            id: 1,
            neighbor: n(2),
        };
        feed(
            &mut d,
            0,
            Sample::Link(LinkSample::down(link, DownCause::Silent)),
        );
        for i in 0..5 {
            feed(&mut d, i * 100, probe(9, &[3], 1, 1));
            assert!(feed(&mut d, i * 100, probe(9, &[2], 1, 0)).is_empty());
        }
    }

    #[test]
    fn shared_relays_are_not_suspected_and_too_few_failures_are_not_enough() {
        let mut d = PathDifferential::new(&cfg());
        for i in 0..2 {
            assert!(feed(&mut d, i * 100, probe(9, &[2], 1, 0)).is_empty());
            feed(&mut d, i * 100, probe(9, &[3], 1, 1));
        }
        let mut d = PathDifferential::new(&cfg());
        // Failing [2, 3] vs working [3, 4]: not disjoint, nobody is implicated.
        for i in 0..5 {
            feed(&mut d, i * 100, probe(9, &[3, 4], 1, 1));
            assert!(feed(&mut d, i * 100, probe(9, &[2, 3], 1, 0)).is_empty());
        }
    }

    #[test]
    fn a_relay_that_loses_its_own_probes_is_not_a_black_hole() {
        let mut d = PathDifferential::new(&cfg());
        // Direct probes to 2 lose some: 2 sits behind a lossy link.
        feed(&mut d, 0, probe(2, &[], 2, 1));
        for i in 1..6 {
            feed(&mut d, i * 100, probe(2, &[], 1, 1));
            feed(&mut d, i * 100, probe(9, &[3], 1, 1));
            assert!(feed(&mut d, i * 100, probe(9, &[2], 1, 0)).is_empty());
        }
        // Once its direct probes are all answered within the window, it is suspected.
        let t = cfg().blackhole_window_ms + 1000;
        for i in 0..4 {
            feed(&mut d, t + i * 100, probe(2, &[], 1, 1));
            feed(&mut d, t + i * 100, probe(9, &[3], 1, 1));
            let out = feed(&mut d, t + i * 100, probe(9, &[2], 1, 0));
            assert_eq!(out.len(), usize::from(i >= 2), "round {i}: {out:?}");
        }
    }

    #[test]
    fn every_path_failing_means_unreachable() {
        let mut d = PathDifferential::new(&cfg());
        let mut out = Vec::new();
        for i in 0..3 {
            out = feed(&mut d, i * 100, probe(9, &[], 1, 0));
            out.extend(feed(&mut d, i * 100, probe(9, &[3], 1, 0)));
        }
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].subject, Subject::Node(n(9)));
        assert_eq!(out[0].kind, SymptomKind::Unreachable { paths: 2 });
    }

    #[test]
    fn old_rounds_expire() {
        let cfg = cfg();
        let mut d = PathDifferential::new(&cfg);
        for i in 0..3 {
            feed(&mut d, i * 100, probe(9, &[2], 1, 0));
        }
        // The working path shows up only after the failures aged out.
        let t = cfg.blackhole_window_ms + 1000;
        assert!(feed(&mut d, t, probe(9, &[3], 2, 2)).is_empty());
    }

    proptest! {
        /// Arbitrary rounds (including impossible counts and malformed paths) never panic;
        /// impossible rounds never implicate anyone.
        #[test]
        fn robust_to_arbitrary_rounds(
            rounds in prop::collection::vec(
                (0u8..4, prop::collection::vec(0u8..6, 0..4), 0u32..5, 0u32..8, 0u64..2_000),
                1..300)
        ) {
            let mut d = PathDifferential::new(&cfg());
            let mut t = 0;
            for (dst, relays, sent, received, dt) in rounds {
                t += dt;
                let s = probe(dst, &relays, sent, received);
                let ok = match &s { Sample::Probe(p) => valid(p), _ => false };
                let out = feed(&mut d, t, s);
                if !ok {
                    prop_assert!(out.is_empty());
                }
                for s in out {
                    prop_assert!((0.0..=1.0).contains(&s.confidence));
                }
            }
        }
    }
}
