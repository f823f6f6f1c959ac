//! Plan: candidate actions per problem, ranked by what worked before, filtered by safety.
//!
//! **Candidates**, with their built-in prior success rate (used until the knowledge base has
//! numbers):
//!
//! | Problem | Candidates, best prior first |
//! |---|---|
//! | `link_down` | restart link (0.6) |
//! | `flapping` | exclude link with hold (0.8) |
//! | `link_degraded` | raise link cost (0.7), exclude link (0.6), restart link (0.4) |
//! | `crypto_failure` | rekey link (0.8), restart link (0.6) |
//! | `node_down` | quarantine node with hold (0.7) |
//! | `black_hole` | quarantine node with hold (0.8) |
//! | `noisy_neighbour` | shed load (0.7), quarantine node (0.4) |
//! | `local_pressure` | — |
//!
//! and, when every candidate was tried, refused or failed, an alert. **Ranking**: each
//! candidate scores `(successes + w·prior) / (attempts + w)` from the knowledge base's outcomes
//! for that action and problem (`w` = `prior_weight`), best first; ties keep the table order.
//!
//! **Safety** (a candidate that fails a rule is skipped, with the rule recorded):
//!
//! * never partition: excluding a link, restarting an up link or quarantining a node is
//!   allowed only if every pair of nodes that reach each other under the restrictions in force
//!   still does with the new one ([`crate::topology`]);
//! * never quarantine more than `max_quarantine_share` of our neighbours, nor of all known
//!   nodes;
//! * a global token bucket (`action_burst`, one token per `action_refill_ms`) paces every
//!   action and every undo except the undos that restore connectivity; a flood of symptoms
//!   can never exceed it;
//! * restarts and rekeys of one link back off exponentially (`retry_base_ms` doubling to
//!   `retry_max_ms`);
//! * quarantines and flap exclusions hold for `hold_base_ms × 2^(offences − 1)`, at most
//!   `hold_max_ms`, where offences are counted per target and forgotten after
//!   `offence_forget_ms` without one.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use x0_routing::Instant;
use x0_wire::NodeId;

use crate::action::{ActionClass, ActionKind};
use crate::config::{PlanConfig, ms};
use crate::incident::{Cause, Problem};
use crate::sample::LinkRef;
use crate::topology::{Cut, Topology, edge};

/// Outcomes of one action class on one problem.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct SuccessStats {
    /// Actions whose outcome is known.
    pub attempts: u64,
    /// Of those, how many were followed by recovery within the outcome window.
    pub successes: u64,
    /// Mean time from action to recovery, ms, over the successes.
    pub mean_recover_ms: Option<f64>,
}

/// Success rates per (action class, problem), from the knowledge base.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SuccessRates {
    /// The numbers.
    pub by_action: BTreeMap<(ActionClass, Problem), SuccessStats>,
}

impl SuccessRates {
    /// Adds one outcome.
    pub fn record(
        &mut self,
        class: ActionClass,
        problem: Problem,
        success: bool,
        recover_ms: Option<u64>,
    ) {
        let s = self.by_action.entry((class, problem)).or_default();
        s.attempts += 1;
        if success {
            s.successes += 1;
            if let Some(ms) = recover_ms {
                let n = s.successes as f64;
                let prev = s.mean_recover_ms.unwrap_or(0.0);
                s.mean_recover_ms = Some(prev + (ms as f64 - prev) / n);
            }
        }
    }

    /// The ranking score of `class` for `problem`.
    pub fn score(&self, class: ActionClass, problem: Problem, prior: f64, weight: f64) -> f64 {
        let s = self
            .by_action
            .get(&(class, problem))
            .copied()
            .unwrap_or_default();
        (s.successes as f64 + weight * prior) / (s.attempts as f64 + weight)
    }
}

/// The candidates for a problem with their priors (see the module doc).
pub fn candidates(problem: Problem) -> &'static [(ActionClass, f64)] {
    use ActionClass as A;
    match problem {
        Problem::LinkDown => &[(A::RestartLink, 0.6)],
        Problem::Flapping => &[(A::ExcludeLink, 0.8)],
        Problem::LinkDegraded => &[
            (A::RaiseLinkCost, 0.7),
            (A::ExcludeLink, 0.6),
            (A::RestartLink, 0.4),
        ],
        Problem::CryptoFailure => &[(A::RekeyLink, 0.8), (A::RestartLink, 0.6)],
        Problem::NodeDown => &[(A::QuarantineNode, 0.7)],
        Problem::BlackHole => &[(A::QuarantineNode, 0.8)],
        Problem::NoisyNeighbour => &[(A::ShedLoad, 0.7), (A::QuarantineNode, 0.4)],
        Problem::LocalPressure => &[],
    }
}

/// A token bucket.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    capacity: f64,
    tokens: f64,
    refill: Duration,
    at: Instant,
}

impl TokenBucket {
    /// A full bucket of `capacity` tokens, one more every `refill`.
    pub fn new(capacity: u32, refill: Duration, now: Instant) -> Self {
        Self {
            capacity: f64::from(capacity),
            tokens: f64::from(capacity),
            refill,
            at: now,
        }
    }

    fn update(&mut self, now: Instant) {
        let dt = now.saturating_since(self.at);
        self.at = self.at.max(now);
        let add = dt.as_secs_f64() / self.refill.as_secs_f64().max(1e-9);
        self.tokens = (self.tokens + add).min(self.capacity);
    }

    /// Whether a token is there now (without taking it).
    pub fn available(&mut self, now: Instant) -> bool {
        self.update(now);
        self.tokens >= 1.0
    }

    /// Takes a token if there is one.
    pub fn take(&mut self, now: Instant) -> bool {
        self.update(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// When the next token will be there.
    pub fn next_token(&self) -> Instant {
        if self.tokens >= 1.0 {
            return self.at;
        }
        let missing = (1.0 - self.tokens).max(0.0);
        self.at + self.refill.mul_f64(missing) + Duration::from_micros(1)
    }
}

/// What an action is aimed at, for back-off and offences.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    /// Our link to this neighbour (link handles change on restart; neighbours do not).
    Peer(NodeId),
    /// A node.
    Node(NodeId),
}

#[derive(Debug, Clone, Copy)]
struct Strikes {
    count: u32,
    last: Instant,
}

/// Per-target exponential back-off: how long to hold a restriction, how long to wait before
/// repeating an action.
#[derive(Debug)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    forget: Duration,
    strikes: HashMap<(ActionClass, Target), Strikes>,
}

impl Backoff {
    /// Back-off from `base` doubling to `max`, reset after `forget` without a strike.
    pub fn new(base: Duration, max: Duration, forget: Duration) -> Self {
        Self {
            base,
            max,
            forget,
            strikes: HashMap::new(),
        }
    }

    fn current(&self, key: &(ActionClass, Target), now: Instant) -> u32 {
        match self.strikes.get(key) {
            Some(s) if now.saturating_since(s.last) < self.forget => s.count,
            _ => 0,
        }
    }

    fn delay(&self, count: u32) -> Duration {
        let exp = count.saturating_sub(1).min(30);
        self.base.saturating_mul(1 << exp).min(self.max)
    }

    /// Records a strike and returns the hold (or wait) that goes with it.
    pub fn strike(&mut self, class: ActionClass, target: Target, now: Instant) -> Duration {
        let key = (class, target);
        let count = self.current(&key, now).saturating_add(1);
        self.strikes.insert(key, Strikes { count, last: now });
        self.delay(count)
    }

    /// The hold (or wait) the next strike would give, without recording it.
    pub fn peek(&self, class: ActionClass, target: Target, now: Instant) -> Duration {
        self.delay(self.current(&(class, target), now).saturating_add(1))
    }

    /// When the action may be repeated (now if it never struck or was forgotten).
    pub fn ready_at(&self, class: ActionClass, target: Target, now: Instant) -> Instant {
        let key = (class, target);
        match self.strikes.get(&key) {
            Some(s) if self.current(&key, now) > 0 => s.last + self.delay(s.count),
            _ => now,
        }
    }

    /// Strikes restored from the knowledge base (offences survive restarts).
    pub fn restore(&mut self, class: ActionClass, target: Target, count: u32, now: Instant) {
        if count > 0 {
            self.strikes
                .insert((class, target), Strikes { count, last: now });
        }
    }
}

/// What the planner needs to know about the mesh and the restrictions in force.
#[derive(Debug)]
pub struct SafetyView<'a> {
    /// This node.
    pub me: NodeId,
    /// The mesh.
    pub topology: &'a Topology,
    /// Restrictions in force (including actions in flight).
    pub cut: &'a Cut,
    /// Our links, and whether each is excluded.
    pub links: &'a BTreeMap<u64, (LinkRef, bool)>,
}

/// Why a candidate was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Refusal {
    /// It would partition the mesh.
    WouldPartition,
    /// Too many neighbours (or nodes) would be quarantined.
    QuarantineShare,
    /// The action does not apply to this cause.
    NotApplicable,
    /// The same restriction is already in force.
    AlreadyInForce,
}

impl Refusal {
    /// A stable name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::WouldPartition => "would_partition",
            Self::QuarantineShare => "quarantine_share",
            Self::NotApplicable => "not_applicable",
            Self::AlreadyInForce => "already_in_force",
        }
    }
}

impl SafetyView<'_> {
    /// The cut with our last usable link to `link.neighbor` excluded (unchanged if another
    /// link to that neighbour remains).
    pub fn cut_without_link(&self, link: &LinkRef) -> Cut {
        let mut cut = self.cut.clone();
        let other = self
            .links
            .values()
            .any(|(l, excluded)| l.neighbor == link.neighbor && l.id != link.id && !excluded);
        if !other {
            cut.excluded_edges.insert(edge(self.me, link.neighbor));
        }
        cut
    }

    fn check_link_removal(&self, link: &LinkRef) -> Result<(), Refusal> {
        if !self.topology.has_edge(&self.me, &link.neighbor) {
            return Ok(()); // already gone from the graph: removing it changes nothing
        }
        let after = self.cut_without_link(link);
        if self.topology.preserves_reachability(self.cut, &after) {
            Ok(())
        } else {
            Err(Refusal::WouldPartition)
        }
    }

    fn check_quarantine(&self, node: NodeId, share: f64) -> Result<(), Refusal> {
        if node == self.me {
            return Err(Refusal::NotApplicable);
        }
        if self.cut.non_transit.contains(&node) {
            return Err(Refusal::AlreadyInForce);
        }
        let neighbours: Vec<&NodeId> = self.topology.neighbors(&self.me).collect();
        if neighbours.contains(&&node) {
            let quarantined = neighbours
                .iter()
                .filter(|n| self.cut.non_transit.contains(n))
                .count()
                + 1;
            if quarantined as f64 > share * neighbours.len() as f64 {
                return Err(Refusal::QuarantineShare);
            }
        }
        let others = self.topology.len().saturating_sub(1).max(1);
        if (self.cut.non_transit.len() + 1) as f64 > share * others as f64 {
            return Err(Refusal::QuarantineShare);
        }
        let mut after = self.cut.clone();
        after.non_transit.insert(node);
        if self.topology.preserves_reachability(self.cut, &after) {
            Ok(())
        } else {
            Err(Refusal::WouldPartition)
        }
    }
}

/// Turns a candidate class into a concrete action for `cause`, or says why not.
pub fn instantiate(
    class: ActionClass,
    cause: Cause,
    cfg: &PlanConfig,
    view: &SafetyView<'_>,
    hold: Duration,
) -> Result<ActionKind, Refusal> {
    let hold_ms = u64::try_from(hold.as_millis()).unwrap_or(u64::MAX);
    match (class, cause) {
        (ActionClass::RaiseLinkCost, Cause::Link(link)) => Ok(ActionKind::RaiseLinkCost {
            link,
            factor: cfg.cost_factor,
        }),
        (ActionClass::ExcludeLink, Cause::Link(link)) => {
            if view.links.get(&link.id).is_some_and(|(_, ex)| *ex) {
                return Err(Refusal::AlreadyInForce);
            }
            view.check_link_removal(&link)?;
            Ok(ActionKind::ExcludeLink { link, hold_ms })
        }
        (ActionClass::RestartLink, Cause::Link(link)) => {
            view.check_link_removal(&link)?;
            Ok(ActionKind::RestartLink { link })
        }
        (ActionClass::RekeyLink, Cause::Link(link)) => Ok(ActionKind::RekeyLink { link }),
        (ActionClass::QuarantineNode, Cause::Node(node)) => {
            view.check_quarantine(node, cfg.max_quarantine_share)?;
            Ok(ActionKind::QuarantineNode { node, hold_ms })
        }
        (ActionClass::ShedLoad, Cause::Node(node)) if node != view.me => Ok(ActionKind::ShedLoad {
            node,
            share: cfg.shed_share,
        }),
        _ => Err(Refusal::NotApplicable),
    }
}

/// Ranks a problem's candidates by score, best first (ties keep the table order).
pub fn ranked(problem: Problem, rates: &SuccessRates, weight: f64) -> Vec<(ActionClass, f64)> {
    let mut c: Vec<(usize, ActionClass, f64)> = candidates(problem)
        .iter()
        .enumerate()
        .map(|(i, (class, prior))| (i, *class, rates.score(*class, problem, *prior, weight)))
        .collect();
    c.sort_by(|a, b| b.2.total_cmp(&a.2).then(a.0.cmp(&b.0)));
    c.into_iter().map(|(_, class, s)| (class, s)).collect()
}

/// The planner's pacing state.
#[derive(Debug)]
pub struct Pacing {
    /// The global action bucket.
    pub bucket: TokenBucket,
    /// Holds of quarantines and exclusions.
    pub holds: Backoff,
    /// Waits between restarts and rekeys.
    pub retries: Backoff,
}

impl Pacing {
    /// Pacing for `cfg`, starting at `now`.
    pub fn new(cfg: &PlanConfig, now: Instant) -> Self {
        Self {
            bucket: TokenBucket::new(cfg.action_burst, ms(cfg.action_refill_ms), now),
            holds: Backoff::new(
                ms(cfg.hold_base_ms),
                ms(cfg.hold_max_ms),
                ms(cfg.offence_forget_ms),
            ),
            retries: Backoff::new(
                ms(cfg.retry_base_ms),
                ms(cfg.retry_max_ms),
                ms(cfg.offence_forget_ms),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn n(i: u8) -> NodeId {
        NodeId::from_bytes([i; 16])
    }

    fn t(ms: u64) -> Instant {
        Instant::from_millis(ms)
    }

    #[test]
    fn bucket_limits_any_flood() {
        let mut b = TokenBucket::new(5, Duration::from_secs(10), t(0));
        let mut taken = 0;
        // 10,000 attempts over 60 s: at most 5 + 6.
        for i in 0..10_000 {
            if b.take(t(i * 6)) {
                taken += 1;
            }
        }
        assert_eq!(
            taken,
            5 + 5,
            "5 at once, then one per 10 s up to t=59.994 s"
        );
        assert!(b.next_token() > t(59_994));
        // Time going backwards does not refill.
        assert!(!b.take(t(0)));
    }

    #[test]
    fn ranking_follows_the_knowledge_base() {
        let mut rates = SuccessRates::default();
        let r = ranked(Problem::LinkDegraded, &rates, 4.0);
        assert_eq!(r[0].0, ActionClass::RaiseLinkCost);
        for _ in 0..10 {
            rates.record(
                ActionClass::RaiseLinkCost,
                Problem::LinkDegraded,
                false,
                None,
            );
            rates.record(
                ActionClass::ExcludeLink,
                Problem::LinkDegraded,
                true,
                Some(800),
            );
        }
        let r = ranked(Problem::LinkDegraded, &rates, 4.0);
        assert_eq!(
            r.iter().map(|x| x.0).collect::<Vec<_>>(),
            [
                ActionClass::ExcludeLink,
                ActionClass::RestartLink,
                ActionClass::RaiseLinkCost
            ]
        );
        let s = rates.by_action[&(ActionClass::ExcludeLink, Problem::LinkDegraded)];
        assert_eq!((s.attempts, s.successes), (10, 10));
        assert_eq!(s.mean_recover_ms, Some(800.0));
    }

    #[test]
    fn holds_double_per_offence_and_are_forgotten() {
        let mut h = Backoff::new(
            Duration::from_secs(30),
            Duration::from_secs(100),
            Duration::from_secs(3600),
        );
        let x = Target::Node(n(1));
        let q = ActionClass::QuarantineNode;
        assert_eq!(h.strike(q, x, t(0)), Duration::from_secs(30));
        assert_eq!(h.strike(q, x, t(1000)), Duration::from_secs(60));
        assert_eq!(h.strike(q, x, t(2000)), Duration::from_secs(100), "capped");
        assert_eq!(h.ready_at(q, x, t(2000)), t(102_000));
        assert_eq!(
            h.strike(q, x, t(2000 + 3_600_000)),
            Duration::from_secs(30),
            "forgotten after an hour clean"
        );
    }

    fn view<'a>(
        topo: &'a Topology,
        cut: &'a Cut,
        links: &'a BTreeMap<u64, (LinkRef, bool)>,
    ) -> SafetyView<'a> {
        SafetyView {
            me: n(0),
            topology: topo,
            cut,
            links,
        }
    }

    #[test]
    fn refuses_to_partition_or_to_quarantine_too_many_neighbours() {
        // 0 is us. 0-1, 0-2, 1-3, 2-3, and 0-4 (4 is a leaf behind its only link).
        let topo = Topology::from_adjacency([
            (n(0), vec![n(1), n(2), n(4)]),
            (n(1), vec![n(3)]),
            (n(2), vec![n(3)]),
        ]);
        let links: BTreeMap<u64, (LinkRef, bool)> = [1u8, 2, 4]
            .into_iter()
            .map(|i| {
                (
                    u64::from(i),
                    (
                        LinkRef {
                            id: u64::from(i),
                            neighbor: n(i),
                        },
                        false,
                    ),
                )
            })
            .collect();
        let cfg = PlanConfig::default();
        let none = Cut::default();
        let v = view(&topo, &none, &links);
        let hold = Duration::from_secs(30);
        let l = |i: u8| Cause::Link(links[&u64::from(i)].0);
        assert!(instantiate(ActionClass::ExcludeLink, l(1), &cfg, &v, hold).is_ok());
        assert_eq!(
            instantiate(ActionClass::ExcludeLink, l(4), &cfg, &v, hold),
            Err(Refusal::WouldPartition)
        );
        assert_eq!(
            instantiate(ActionClass::RestartLink, l(4), &cfg, &v, hold),
            Err(Refusal::WouldPartition),
            "restarting the only link to a node cuts it off for a while"
        );
        assert!(instantiate(ActionClass::RaiseLinkCost, l(4), &cfg, &v, hold).is_ok());
        // Quarantine 1: 3 still reachable through 2. Then 2 as well: share and partition.
        assert!(
            instantiate(
                ActionClass::QuarantineNode,
                Cause::Node(n(1)),
                &cfg,
                &v,
                hold
            )
            .is_ok()
        );
        let q1 = Cut {
            excluded_edges: BTreeSet::new(),
            non_transit: BTreeSet::from([n(1)]),
        };
        let v = view(&topo, &q1, &links);
        assert_eq!(
            instantiate(
                ActionClass::QuarantineNode,
                Cause::Node(n(2)),
                &cfg,
                &v,
                hold
            ),
            Err(Refusal::QuarantineShare)
        );
        let lax = PlanConfig {
            max_quarantine_share: 1.0,
            ..cfg.clone()
        };
        assert_eq!(
            instantiate(
                ActionClass::QuarantineNode,
                Cause::Node(n(2)),
                &lax,
                &v,
                hold
            ),
            Err(Refusal::WouldPartition)
        );
        assert_eq!(
            instantiate(
                ActionClass::QuarantineNode,
                Cause::Node(n(1)),
                &lax,
                &v,
                hold
            ),
            Err(Refusal::AlreadyInForce)
        );
        assert_eq!(
            instantiate(
                ActionClass::QuarantineNode,
                Cause::Node(n(0)),
                &lax,
                &v,
                hold
            ),
            Err(Refusal::NotApplicable),
            "never ourselves"
        );
        assert_eq!(
            instantiate(ActionClass::QuarantineNode, l(1), &lax, &v, hold),
            Err(Refusal::NotApplicable)
        );
    }
}
