//! Per-series state shared by the statistical detectors: an EWMA mean and variance, gap
//! handling, bounded memory, and baselines that survive restarts.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use x0_routing::Instant;
use x0_wire::NodeId;

use crate::sample::{Metric, Subject};

/// Whose baseline it is, in a form that survives restarts: link handles are renumbered when
/// the daemon restarts, so a link's baselines are kept under its neighbour's node ID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type", content = "id")]
pub enum BaselineKey {
    /// Our link to this neighbour.
    Peer(NodeId),
    /// Another node (end-to-end metrics).
    Node(NodeId),
    /// This node.
    Local,
}

impl BaselineKey {
    /// The key for a subject.
    pub fn of(subject: &Subject) -> Self {
        match subject {
            Subject::Link(l) => Self::Peer(l.neighbor),
            Subject::Node(n) => Self::Node(*n),
            Subject::Local => Self::Local,
        }
    }

    /// A stable text form (`peer:<id>`, `node:<id>`, `local`).
    pub fn text(&self) -> String {
        match self {
            Self::Peer(n) => format!("peer:{n}"),
            Self::Node(n) => format!("node:{n}"),
            Self::Local => "local".into(),
        }
    }
}

/// A learned baseline of one metric.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Baseline {
    /// Whose.
    pub key: BaselineKey,
    /// Which metric.
    pub metric: Metric,
    /// EWMA mean.
    pub mean: f64,
    /// EWMA variance.
    pub var: f64,
    /// Samples learned from.
    pub samples: u64,
}

impl Baseline {
    /// Whether the numbers are usable (finite, variance not negative).
    pub fn is_sane(&self) -> bool {
        self.mean.is_finite() && self.var.is_finite() && self.var >= 0.0
    }
}

/// An exponentially weighted mean and variance. The first samples are averaged with weight
/// `1/n` (so the warm-up converges fast), later ones with `alpha`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Stats {
    pub(crate) mean: f64,
    pub(crate) var: f64,
    pub(crate) n: u64,
}

impl Stats {
    pub(crate) fn learn(&mut self, x: f64, alpha: f64) {
        self.n = self.n.saturating_add(1);
        let a = alpha.max(1.0 / self.n as f64);
        let d = x - self.mean;
        self.mean += a * d;
        self.var = (1.0 - a) * (self.var + a * d * d);
        if !self.mean.is_finite() || !self.var.is_finite() {
            // Cannot happen with the monitor's range checks; never keep poison if it did.
            *self = Self::default();
        }
    }

    pub(crate) fn std(&self, floor: f64) -> f64 {
        self.var.sqrt().max(floor)
    }
}

/// What the time since a series' previous sample means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Continuity {
    /// Normal cadence.
    Continuous,
    /// A gap: learn again for a few samples before firing.
    Gap,
    /// So long that the old baseline is stale: start over.
    Stale,
}

/// One series with a detector's own state `T`.
#[derive(Debug, Clone)]
pub(crate) struct Entry<T> {
    pub(crate) stats: Stats,
    pub(crate) last_at: Option<Instant>,
    /// Samples left during which the series learns but does not fire.
    pub(crate) rewarm: u32,
    pub(crate) extra: T,
}

/// Gap and staleness limits.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    pub(crate) gap: Duration,
    pub(crate) forget: Duration,
    pub(crate) rewarm: u32,
}

/// Series of one detector, bounded in number.
#[derive(Debug)]
pub(crate) struct SeriesMap<T> {
    entries: HashMap<(Subject, Metric), Entry<T>>,
    restored: BTreeMap<(BaselineKey, Metric), Baseline>,
    max: usize,
    timing: Timing,
    warmup: u32,
}

impl<T: Default> SeriesMap<T> {
    pub(crate) fn new(max: usize, timing: Timing, warmup: u32) -> Self {
        Self {
            entries: HashMap::new(),
            restored: BTreeMap::new(),
            max,
            timing,
            warmup,
        }
    }

    /// The series for `(subject, metric)`, created if new, with its continuity at `now`
    /// applied (a gap sets the re-warm count, staleness resets it) and `last_at` moved to
    /// `now`. Returns `None` for a sample older than the previous one (dropped).
    pub(crate) fn touch(
        &mut self,
        subject: Subject,
        metric: &Metric,
        now: Instant,
    ) -> Option<&mut Entry<T>> {
        let key = (subject, metric.clone());
        if !self.entries.contains_key(&key) {
            if self.entries.len() >= self.max {
                self.evict_oldest();
            }
            let mut entry = Entry {
                stats: Stats::default(),
                last_at: None,
                rewarm: 0,
                extra: T::default(),
            };
            if let Some(b) = self
                .restored
                .get(&(BaselineKey::of(&subject), metric.clone()))
                && b.is_sane()
            {
                entry.stats = Stats {
                    mean: b.mean,
                    var: b.var,
                    n: b.samples.max(u64::from(self.warmup)),
                };
                entry.rewarm = self.timing.rewarm;
            }
            self.entries.insert(key.clone(), entry);
        }
        let timing = self.timing;
        let e = self.entries.get_mut(&key)?;
        let continuity = match e.last_at {
            None => Continuity::Continuous,
            Some(prev) if now < prev => return None,
            Some(prev) => {
                let dt = now.saturating_since(prev);
                if dt > timing.forget {
                    Continuity::Stale
                } else if dt > timing.gap {
                    Continuity::Gap
                } else {
                    Continuity::Continuous
                }
            }
        };
        match continuity {
            Continuity::Continuous => {}
            Continuity::Gap => e.rewarm = e.rewarm.max(timing.rewarm),
            Continuity::Stale => {
                e.stats = Stats::default();
                e.rewarm = 0;
                e.extra = T::default();
            }
        }
        e.last_at = Some(now);
        Some(e)
    }

    fn evict_oldest(&mut self) {
        let oldest = self
            .entries
            .iter()
            .min_by_key(|(_, e)| e.last_at)
            .map(|(k, _)| k.clone());
        if let Some(k) = oldest {
            self.entries.remove(&k);
        }
    }

    /// After a clock jump: the next sample of every series is taken as continuous (the jump is
    /// not a silence) but starts a re-warm.
    pub(crate) fn clock_jumped(&mut self) {
        let rewarm = self.timing.rewarm;
        for e in self.entries.values_mut() {
            e.last_at = None;
            e.rewarm = e.rewarm.max(rewarm);
        }
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&(Subject, Metric), &Entry<T>)> {
        self.entries.iter()
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn baselines(&self) -> Vec<Baseline> {
        let mut by_key: BTreeMap<(BaselineKey, Metric), Baseline> = BTreeMap::new();
        for ((subject, metric), e) in &self.entries {
            if e.stats.n < u64::from(self.warmup) {
                continue;
            }
            let key = BaselineKey::of(subject);
            by_key.insert(
                (key, metric.clone()),
                Baseline {
                    key,
                    metric: metric.clone(),
                    mean: e.stats.mean,
                    var: e.stats.var,
                    samples: e.stats.n,
                },
            );
        }
        by_key.into_values().collect()
    }

    pub(crate) fn restore(&mut self, baselines: &[Baseline]) {
        for b in baselines.iter().filter(|b| b.is_sane()) {
            self.restored.insert((b.key, b.metric.clone()), b.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timing() -> Timing {
        Timing {
            gap: Duration::from_secs(10),
            forget: Duration::from_secs(600),
            rewarm: 5,
        }
    }

    #[test]
    fn stats_converge_to_mean_and_variance() {
        let mut s = Stats::default();
        for i in 0..10_000 {
            s.learn(if i % 2 == 0 { 9.0 } else { 11.0 }, 0.01);
        }
        assert!((s.mean - 10.0).abs() < 0.05, "{}", s.mean);
        assert!((s.var - 1.0).abs() < 0.1, "{}", s.var);
        assert_eq!(s.std(5.0), 5.0, "floor applies");
    }

    #[test]
    fn gaps_rewarm_and_staleness_resets() {
        let mut m: SeriesMap<()> = SeriesMap::new(16, timing(), 3);
        for i in 0..5 {
            let e = m.touch(
                Subject::Local,
                &Metric::RttMs,
                Instant::from_millis(i * 100),
            );
            e.unwrap().stats.learn(1.0, 0.1);
        }
        let e = m
            .touch(Subject::Local, &Metric::RttMs, Instant::from_millis(20_000))
            .unwrap();
        assert_eq!(e.rewarm, 5);
        assert_eq!(e.stats.n, 5);
        let e = m
            .touch(
                Subject::Local,
                &Metric::RttMs,
                Instant::from_millis(2_000_000),
            )
            .unwrap();
        assert_eq!(e.stats.n, 0, "stale baseline forgotten");
        assert!(
            m.touch(Subject::Local, &Metric::RttMs, Instant::from_millis(1))
                .is_none(),
            "sample from the past dropped"
        );
    }

    #[test]
    fn memory_is_bounded_by_evicting_the_longest_silent() {
        let mut m: SeriesMap<()> = SeriesMap::new(16, timing(), 3);
        for i in 0..100u8 {
            let s = Subject::Node(NodeId::from_bytes([i; 16]));
            m.touch(s, &Metric::RttMs, Instant::from_millis(u64::from(i)));
        }
        assert_eq!(m.len(), 16);
        assert!(
            m.iter()
                .all(|((s, _), _)| *s >= Subject::Node(NodeId::from_bytes([84; 16])))
        );
    }

    #[test]
    fn restored_baselines_seed_new_series_by_neighbour() {
        let n = NodeId::from_bytes([3; 16]);
        let mut m: SeriesMap<()> = SeriesMap::new(16, timing(), 30);
        m.restore(&[
            Baseline {
                key: BaselineKey::Peer(n),
                metric: Metric::RttMs,
                mean: 2.0,
                var: 0.25,
                samples: 1000,
            },
            Baseline {
                key: BaselineKey::Local,
                metric: Metric::RttMs,
                mean: f64::NAN,
                var: 0.0,
                samples: 1,
            },
        ]);
        let link = crate::sample::LinkRef {
            id: 77,
            neighbor: n,
        };
        let e = m
            .touch(Subject::Link(link), &Metric::RttMs, Instant::ZERO)
            .unwrap();
        assert_eq!(e.stats.mean, 2.0);
        assert_eq!(
            e.rewarm, 5,
            "a restored baseline is confirmed before firing"
        );
        let e = m
            .touch(Subject::Local, &Metric::RttMs, Instant::ZERO)
            .unwrap();
        assert_eq!(e.stats.n, 0, "insane baseline ignored");
        assert_eq!(m.baselines().len(), 1);
        assert_eq!(m.baselines()[0].key, BaselineKey::Peer(n));
    }
}
