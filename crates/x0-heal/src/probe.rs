//! The end-to-end prober, sans-IO: which destinations to probe, along which paths, when a
//! probe is lost, and the [`PathProbe`] samples that result.
//!
//! Link probes see a neighbour; they cannot see a *black hole* (a relay that answers its link
//! probes but drops what it should forward). End-to-end probes along explicit paths can: the
//! path-differential detector compares a destination's disjoint paths.
//!
//! * **Targets.** The daemon hands over every reachable destination with its node-disjoint
//!   paths (relays only, from routing), the first hop of its current route, and whether we
//!   send it traffic ([`Prober::set_targets`], whenever routing changes).
//! * **Rounds.** Every `probe.interval_ms` a round sends one probe along each path of each
//!   sampled destination: those we send traffic to first (at most
//!   `probe.active_destinations`), then `probe.destinations` from a rotation over all others
//!   that moves on every `probe.dwell_rounds` rounds (the detector needs several rounds on one
//!   path). Paths routing stopped using (through a quarantined relay or an excluded link)
//!   are kept for `probe.keep_paths_ms` and probed in one round of `probe.slow_every`, so that
//!   a cleared cause is seen.
//! * **Sending.** The daemon may hold each probe up to [`Prober::spread`] (one round's
//!   interval) before it sends it, at a random moment or right beside a data packet to the
//!   same destination, so that relays see no probe schedule.
//! * **Results.** Each probe is a round of one: answered ([`Prober::handle_reply`]) with a
//!   round trip (measured by the daemon from when the probe left to when its answer
//!   arrived) of at most `probe.timeout_ms`, or lost. A probe with no answer by
//!   [`Prober::spread`] + `probe.timeout_ms` after it was handed out is given up; an answer
//!   whose round trip exceeded the timeout counts as lost. Lateness is judged on the
//!   daemon's measurement, not on when this core hears of the answer: a loop that was busy
//!   (a slow disk write, a starved thread) does not turn answered probes into lost ones. A
//!   probe the daemon could not send (no end-to-end session yet, no link) is cancelled
//!   ([`Prober::cancel`]) and counts for nothing.
//!
//! Probes cost `paths × destinations / interval`: with the defaults and two paths, at most 80
//! probes a second per node, whatever the mesh's size.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use x0_routing::Instant;
use x0_wire::NodeId;

use crate::config::{ProbeConfig, ms};
use crate::sample::PathProbe;

/// Most probes awaiting an answer; the oldest is given up beyond this.
const MAX_OUTSTANDING: usize = 4096;
/// Most relays in a probed path (the data plane's explicit paths hold 16 nodes, the
/// destination included).
const MAX_RELAYS: usize = 15;
/// Most paths kept per destination (current and recently used).
const MAX_PATHS: usize = 8;
/// Most suspected relays whose corroboration is sought at once.
const MAX_FOCUS: usize = 8;
/// Most destinations behind one suspected relay probed for its corroboration.
const MAX_BEHIND: usize = 16;
/// How long corroboration is sought after it was last asked for.
const FOCUS_FOR: Duration = Duration::from_secs(10);

/// One destination as routing sees it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeTarget {
    /// The destination.
    pub dst: NodeId,
    /// Whether we send it traffic (it is probed every round).
    pub active: bool,
    /// Its node-disjoint paths: the relays between us and it (an empty list of relays: it is
    /// a neighbour, reached directly). `None` when routing has not computed them (the
    /// destination was not in the sample): the paths known before are kept.
    pub paths: Option<Vec<Vec<NodeId>>>,
    /// The first hop of its current route, if it has one.
    pub route_first_hop: Option<NodeId>,
}

/// A probe to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeSend {
    /// Its ID (echoed in the answer).
    pub id: u64,
    /// The destination.
    pub dst: NodeId,
    /// The relays to send it through, in order.
    pub relays: Vec<NodeId>,
}

#[derive(Debug, Clone)]
struct Pending {
    dst: NodeId,
    relays: Vec<NodeId>,
    on_route: bool,
    due: Instant,
}

/// A suspected relay whose corroboration is sought ([`Prober::corroborate`]).
#[derive(Debug, Clone)]
struct Focus {
    behind: Vec<NodeId>,
    until: Instant,
}

#[derive(Debug, Default)]
struct Target {
    active: bool,
    current: Vec<Vec<NodeId>>,
    route_first_hop: Option<NodeId>,
    /// Paths no longer current, and when they last were.
    former: BTreeMap<Vec<NodeId>, Instant>,
}

/// Counters of the prober.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProbeStats {
    /// Probes handed out to send.
    pub sent: u64,
    /// Answered in time.
    pub answered: u64,
    /// Lost (no answer in time).
    pub lost: u64,
    /// Cancelled (could not be sent).
    pub cancelled: u64,
    /// Answers for no outstanding probe (late, duplicate or unknown).
    pub stray_answers: u64,
}

/// The prober.
#[derive(Debug)]
pub struct Prober {
    cfg: ProbeConfig,
    targets: BTreeMap<NodeId, Target>,
    next_round: Instant,
    round: u64,
    cursor: usize,
    sampled: Vec<NodeId>,
    next_id: u64,
    outstanding: BTreeMap<u64, Pending>,
    transmit: VecDeque<ProbeSend>,
    results: VecDeque<PathProbe>,
    stats: ProbeStats,
    focus: BTreeMap<NodeId, Focus>,
}

/// The first hop of a path to `dst` through `relays`.
fn first_hop(dst: NodeId, relays: &[NodeId]) -> NodeId {
    relays.first().copied().unwrap_or(dst)
}

impl Prober {
    /// A prober whose first round is due at `now`.
    pub fn new(cfg: ProbeConfig, now: Instant) -> Self {
        Self {
            cfg,
            targets: BTreeMap::new(),
            next_round: now,
            round: 0,
            cursor: 0,
            sampled: Vec::new(),
            next_id: 1,
            outstanding: BTreeMap::new(),
            transmit: VecDeque::new(),
            results: VecDeque::new(),
            stats: ProbeStats::default(),
            focus: BTreeMap::new(),
        }
    }

    /// Seeks corroboration about `relay`, a suspected black hole that one destination alone
    /// implicates (the black-hole detector needs a second, independent one before it blames
    /// a relay, and a rotating sample may take long to come by it): for the next 10 s, every
    /// round also probes the nodes `behind` it (its other neighbours, from the topology),
    /// along their paths and, when `relay` is our neighbour, through it. Their evidence has
    /// nothing in common but `relay`. At most 8 relays and 16 nodes behind each.
    pub fn corroborate(
        &mut self,
        now: Instant,
        relay: NodeId,
        behind: impl IntoIterator<Item = NodeId>,
    ) {
        let behind: Vec<NodeId> = behind
            .into_iter()
            .filter(|n| *n != relay)
            .take(MAX_BEHIND)
            .collect();
        self.focus.retain(|_, f| f.until > now);
        if !self.focus.contains_key(&relay) && self.focus.len() >= MAX_FOCUS {
            return;
        }
        self.focus.insert(
            relay,
            Focus {
                behind,
                until: now + FOCUS_FOR,
            },
        );
    }

    /// Replaces the targets. A destination that is gone is dropped (its outstanding probes
    /// still resolve); a path that is no longer current is kept as a former path.
    pub fn set_targets(&mut self, now: Instant, targets: Vec<ProbeTarget>) {
        let keep = ms(self.cfg.keep_paths_ms);
        let mut next = BTreeMap::new();
        for t in targets {
            let mut old = self.targets.remove(&t.dst).unwrap_or_default();
            let Some(paths) = t.paths else {
                old.active = t.active;
                old.route_first_hop = t.route_first_hop;
                next.insert(t.dst, old);
                continue;
            };
            let mut current: Vec<Vec<NodeId>> = Vec::new();
            for p in paths {
                let unique: BTreeSet<&NodeId> = p.iter().collect();
                let sane = unique.len() == p.len() && !p.contains(&t.dst) && p.len() <= MAX_RELAYS;
                if sane && !current.contains(&p) && current.len() < MAX_PATHS {
                    current.push(p);
                }
            }
            for p in old.current.drain(..) {
                if !current.contains(&p) {
                    old.former.insert(p, now);
                }
            }
            for p in &current {
                old.former.remove(p);
            }
            old.former.retain(|_, at| now.saturating_since(*at) <= keep);
            while old.former.len() + current.len() > MAX_PATHS {
                let Some(oldest) = old
                    .former
                    .iter()
                    .min_by_key(|(_, at)| **at)
                    .map(|(p, _)| p.clone())
                else {
                    break;
                };
                old.former.remove(&oldest);
            }
            next.insert(
                t.dst,
                Target {
                    active: t.active,
                    current,
                    route_first_hop: t.route_first_hop,
                    former: old.former,
                },
            );
        }
        self.targets = next;
    }

    /// Sends the round if it is due and gives up probes whose answer is overdue.
    pub fn handle_timeout(&mut self, now: Instant) {
        let overdue: Vec<u64> = self
            .outstanding
            .iter()
            .filter(|(_, p)| p.due <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in overdue {
            if let Some(p) = self.outstanding.remove(&id) {
                self.stats.lost += 1;
                self.results.push_back(PathProbe {
                    dst: p.dst,
                    relays: p.relays,
                    sent: 1,
                    received: 0,
                    rtt_ms: None,
                    on_route: p.on_route,
                });
            }
        }
        if now >= self.next_round {
            self.send_round(now);
            let interval = ms(self.cfg.interval_ms);
            // After a long pause (a clock jump), start again from now rather than catching up.
            self.next_round = if now.saturating_since(self.next_round) > interval {
                now + interval
            } else {
                self.next_round + interval
            };
        }
    }

    fn send_round(&mut self, now: Instant) {
        self.round += 1;
        let mut sampled: Vec<NodeId> = self
            .targets
            .iter()
            .filter(|(_, t)| t.active)
            .map(|(d, _)| *d)
            .take(self.cfg.active_destinations)
            .collect();
        let others: Vec<NodeId> = self
            .targets
            .iter()
            .filter(|(d, t)| !t.active || !sampled.contains(d))
            .map(|(d, _)| *d)
            .collect();
        // Destinations behind suspected relays, with the path through the relay (when it is
        // our neighbour) that their routing paths may not take.
        self.focus.retain(|_, f| f.until > now);
        let mut through: BTreeMap<NodeId, Vec<NodeId>> = BTreeMap::new();
        let mut focused = 0;
        for (relay, f) in &self.focus {
            let neighbour = self
                .targets
                .get(relay)
                .is_some_and(|t| t.route_first_hop == Some(*relay));
            for dst in &f.behind {
                if focused >= self.cfg.destinations.max(2) {
                    break;
                }
                if !self.targets.contains_key(dst) {
                    continue;
                }
                if !sampled.contains(dst) {
                    sampled.push(*dst);
                    focused += 1;
                }
                if neighbour {
                    through.entry(*dst).or_insert_with(|| vec![*relay]);
                }
            }
        }
        let others: Vec<NodeId> = others
            .into_iter()
            .filter(|d| !sampled.contains(d))
            .collect();
        if !others.is_empty() {
            let dwell = u64::from(self.cfg.dwell_rounds.max(1));
            if self.round.is_multiple_of(dwell) {
                self.cursor = (self.cursor + self.cfg.destinations) % others.len();
            }
            let take = self.cfg.destinations.min(others.len());
            let start = self.cursor % others.len();
            sampled.extend((0..take).map(|i| others[(start + i) % others.len()]));
        }
        let slow = self
            .round
            .is_multiple_of(u64::from(self.cfg.slow_every.max(1)));
        let due = now + self.spread() + ms(self.cfg.timeout_ms);
        for dst in &sampled {
            let Some(t) = self.targets.get(dst) else {
                continue;
            };
            let mut on_route_given = false;
            let mut paths: Vec<(Vec<NodeId>, bool)> = Vec::new();
            for p in &t.current {
                let on_route = !on_route_given && t.route_first_hop == Some(first_hop(*dst, p));
                on_route_given |= on_route;
                paths.push((p.clone(), on_route));
            }
            if slow {
                paths.extend(t.former.keys().map(|p| (p.clone(), false)));
            }
            if let Some(p) = through.get(dst)
                && !paths.iter().any(|(q, _)| q == p)
            {
                paths.push((p.clone(), false));
            }
            for (relays, on_route) in paths {
                let id = self.next_id;
                self.next_id += 1;
                if self.outstanding.len() >= MAX_OUTSTANDING
                    && let Some((&oldest, _)) = self.outstanding.iter().next()
                {
                    self.outstanding.remove(&oldest);
                    self.stats.cancelled += 1;
                }
                self.outstanding.insert(
                    id,
                    Pending {
                        dst: *dst,
                        relays: relays.clone(),
                        on_route,
                        due,
                    },
                );
                self.stats.sent += 1;
                self.transmit.push_back(ProbeSend {
                    id,
                    dst: *dst,
                    relays,
                });
            }
        }
        self.sampled = sampled;
    }

    /// The next probe to send.
    pub fn poll_transmit(&mut self) -> Option<ProbeSend> {
        self.transmit.pop_front()
    }

    /// A probe that could not be sent: it counts for nothing.
    pub fn cancel(&mut self, id: u64) {
        if self.outstanding.remove(&id).is_some() {
            self.stats.cancelled += 1;
            self.stats.sent = self.stats.sent.saturating_sub(1);
        }
    }

    /// The answer to probe `id` arrived, `rtt` after the probe left (as the sender measured
    /// both: when this core hears of it does not matter).
    pub fn handle_reply(&mut self, _now: Instant, id: u64, rtt: Duration) {
        let Some(p) = self.outstanding.remove(&id) else {
            self.stats.stray_answers += 1;
            return;
        };
        // A round trip over the timeout is a loss, whenever it is reported.
        let in_time = rtt <= ms(self.cfg.timeout_ms);
        if in_time {
            self.stats.answered += 1;
        } else {
            self.stats.lost += 1;
            self.stats.stray_answers += 1;
        }
        self.results.push_back(PathProbe {
            dst: p.dst,
            relays: p.relays,
            sent: 1,
            received: u32::from(in_time),
            rtt_ms: in_time.then_some(rtt.as_secs_f64() * 1e3),
            on_route: p.on_route,
        });
    }

    /// The next probe result, for [`crate::Healer::handle_sample`] as a
    /// [`crate::Sample::Probe`].
    pub fn poll_result(&mut self) -> Option<PathProbe> {
        self.results.pop_front()
    }

    /// How long the daemon may hold a probe before sending it: one round's interval. A probe
    /// is given up this long plus `probe.timeout_ms` after it was handed out.
    pub fn spread(&self) -> Duration {
        ms(self.cfg.interval_ms)
    }

    /// When [`Prober::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Instant {
        self.outstanding
            .values()
            .map(|p| p.due)
            .min()
            .map_or(self.next_round, |d| d.min(self.next_round))
    }

    /// The destinations of the latest round (their paths are needed).
    pub fn sampled(&self) -> &[NodeId] {
        &self.sampled
    }

    /// Counters.
    pub fn stats(&self) -> ProbeStats {
        self.stats
    }

    /// Probes awaiting an answer.
    pub fn outstanding(&self) -> usize {
        self.outstanding.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(b: u8) -> NodeId {
        NodeId::from_bytes([b; NodeId::LEN])
    }

    fn t(ms: u64) -> Instant {
        Instant::from_micros(ms * 1000)
    }

    fn target(dst: u8, paths: &[&[u8]], first: Option<u8>, active: bool) -> ProbeTarget {
        ProbeTarget {
            dst: n(dst),
            active,
            paths: Some(
                paths
                    .iter()
                    .map(|p| p.iter().map(|b| n(*b)).collect())
                    .collect(),
            ),
            route_first_hop: first.map(n),
        }
    }

    fn sends(p: &mut Prober) -> Vec<ProbeSend> {
        std::iter::from_fn(|| p.poll_transmit()).collect()
    }

    fn results(p: &mut Prober) -> Vec<PathProbe> {
        std::iter::from_fn(|| p.poll_result()).collect()
    }

    #[test]
    fn every_path_is_probed_and_answers_and_losses_become_samples() {
        let mut p = Prober::new(ProbeConfig::default(), t(0));
        p.set_targets(t(0), vec![target(9, &[&[1], &[2]], Some(1), false)]);
        p.handle_timeout(t(0));
        let s = sends(&mut p);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].relays, vec![n(1)]);
        assert_eq!(s[1].relays, vec![n(2)]);
        p.handle_reply(t(10), s[1].id, Duration::from_millis(3));
        assert_eq!(
            p.poll_timeout(),
            t(200),
            "the next round comes before the loss"
        );
        // Given up after the spread (200) and the timeout (500).
        p.handle_timeout(t(699));
        let r = results(&mut p);
        assert_eq!(r.len(), 1);
        assert_eq!((r[0].received, r[0].on_route), (1, false));
        assert_eq!(r[0].rtt_ms, Some(3.0));
        p.handle_timeout(t(700));
        let r: Vec<PathProbe> = results(&mut p)
            .into_iter()
            .filter(|r| r.relays == vec![n(1)])
            .collect();
        assert_eq!(r.len(), 1, "the first probe via 1 is lost");
        assert_eq!((r[0].received, r[0].on_route), (0, true));
        // An answer after it was given up counts for nothing.
        p.handle_reply(t(701), s[0].id, Duration::from_millis(400));
        assert!(
            results(&mut p)
                .iter()
                .all(|r| r.relays != vec![n(1)] || r.received == 0)
        );
        assert_eq!(p.stats().stray_answers, 1);
    }

    /// Lateness is the round trip the daemon measured, not when the loop heard of it: a loop
    /// that was busy past the deadline still counts answers that came back in time (a
    /// thread stalled by a slow disk write made every outstanding probe look lost, and a
    /// destination look unreachable), and a slow answer heard early is still late.
    #[test]
    fn an_answer_is_judged_by_its_measured_round_trip() {
        let mut p = Prober::new(ProbeConfig::default(), t(0));
        p.set_targets(t(0), vec![target(9, &[&[1], &[2]], Some(1), false)]);
        p.handle_timeout(t(0));
        let s = sends(&mut p);
        assert_eq!(s.len(), 2);
        // The loop wakes 2 s late: both answers arrived long ago; one took 3 ms, one 600 ms.
        p.handle_reply(t(2000), s[0].id, Duration::from_millis(3));
        p.handle_reply(t(2000), s[1].id, Duration::from_millis(600));
        p.handle_timeout(t(2000));
        let r: Vec<(Vec<NodeId>, u32)> = results(&mut p)
            .into_iter()
            .map(|r| (r.relays, r.received))
            .collect();
        assert!(r.contains(&(vec![n(1)], 1)), "{r:?}");
        assert!(r.contains(&(vec![n(2)], 0)), "{r:?}");
    }

    #[test]
    fn cancelled_probes_count_for_nothing() {
        let mut p = Prober::new(ProbeConfig::default(), t(0));
        p.set_targets(t(0), vec![target(9, &[&[]], Some(9), false)]);
        p.handle_timeout(t(0));
        let s = sends(&mut p);
        assert_eq!(s.len(), 1);
        p.cancel(s[0].id);
        p.handle_timeout(t(1000));
        assert!(results(&mut p).iter().all(|r| r.dst == n(9) && r.sent == 1));
        assert_eq!(p.stats().cancelled, 1);
    }

    #[test]
    fn a_path_routing_dropped_is_still_probed_slowly_then_forgotten() {
        let cfg = ProbeConfig {
            slow_every: 2,
            keep_paths_ms: 1000,
            ..ProbeConfig::default()
        };
        let mut p = Prober::new(cfg, t(0));
        p.set_targets(t(0), vec![target(9, &[&[1], &[2]], Some(1), false)]);
        // Relay 1 is quarantined: routing offers only the path via 2.
        p.set_targets(t(10), vec![target(9, &[&[2]], Some(2), false)]);
        let mut via_one = 0;
        for round in 0..4 {
            p.handle_timeout(t(10 + round * 200));
            via_one += sends(&mut p)
                .iter()
                .filter(|s| s.relays == vec![n(1)])
                .count();
        }
        assert_eq!(via_one, 2, "one round in two");
        // Long after: routing still does not use it, and it is forgotten.
        p.set_targets(t(2000), vec![target(9, &[&[2]], Some(2), false)]);
        for round in 0..4 {
            p.handle_timeout(t(2000 + round * 200));
            assert!(sends(&mut p).iter().all(|s| s.relays == vec![n(2)]));
        }
    }

    #[test]
    fn the_sample_rotates_and_active_destinations_are_always_in_it() {
        let cfg = ProbeConfig {
            destinations: 2,
            dwell_rounds: 1,
            ..ProbeConfig::default()
        };
        let mut p = Prober::new(cfg, t(0));
        let mut targets: Vec<ProbeTarget> = (10..16)
            .map(|d| target(d, &[&[1]], Some(1), false))
            .collect();
        targets.push(target(50, &[&[1]], Some(1), true));
        p.set_targets(t(0), targets);
        let mut seen = BTreeSet::new();
        for round in 0..6 {
            p.handle_timeout(t(round * 200));
            let dsts: BTreeSet<NodeId> = sends(&mut p).iter().map(|s| s.dst).collect();
            assert!(dsts.contains(&n(50)), "the active destination, every round");
            assert_eq!(dsts.len(), 3);
            seen.extend(dsts);
        }
        assert_eq!(seen.len(), 7, "every destination was sampled");
    }

    #[test]
    fn corroboration_probes_the_nodes_behind_a_suspect_through_it() {
        let cfg = ProbeConfig {
            destinations: 1,
            ..ProbeConfig::default()
        };
        let mut p = Prober::new(cfg, t(0));
        // Relay 1 is our neighbour; 20 and 21 are behind it, reached via 2 by routing.
        let mut targets: Vec<ProbeTarget> = vec![
            target(1, &[&[]], Some(1), false),
            target(9, &[&[1], &[2]], Some(1), true),
        ];
        for d in [20, 21, 22, 23] {
            targets.push(target(d, &[&[2]], Some(2), false));
        }
        p.set_targets(t(0), targets);
        p.corroborate(t(0), n(1), [n(20), n(21), n(1)]);
        p.handle_timeout(t(0));
        let s = sends(&mut p);
        for d in [20, 21] {
            assert!(
                s.iter().any(|x| x.dst == n(d) && x.relays == vec![n(1)]),
                "{s:?}"
            );
            assert!(
                s.iter().any(|x| x.dst == n(d) && x.relays == vec![n(2)]),
                "{s:?}"
            );
            assert!(p.sampled().contains(&n(d)));
        }
        // Ten seconds later, if not asked again, it stops.
        let mut late = Vec::new();
        for r in 0..60 {
            p.handle_timeout(t(200 + r * 200));
            late = sends(&mut p);
        }
        assert!(
            late.iter().all(|x| x.relays != vec![n(1)] || x.dst == n(9)),
            "{late:?}"
        );
    }

    #[test]
    fn paths_not_computed_now_are_kept_as_they_were() {
        let mut p = Prober::new(ProbeConfig::default(), t(0));
        p.set_targets(t(0), vec![target(9, &[&[1], &[2]], Some(1), false)]);
        let mut unknown = target(9, &[], Some(1), false);
        unknown.paths = None;
        p.set_targets(t(10), vec![unknown]);
        p.handle_timeout(t(10));
        assert_eq!(sends(&mut p).len(), 2);
    }

    #[test]
    fn nonsense_paths_are_ignored() {
        let mut p = Prober::new(ProbeConfig::default(), t(0));
        p.set_targets(
            t(0),
            vec![target(9, &[&[1, 1], &[9], &[2], &[2]], Some(2), false)],
        );
        p.handle_timeout(t(0));
        let s = sends(&mut p);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].relays, vec![n(2)]);
    }
}
