//! EWMA + z-score against each series' own adaptive baseline.
//!
//! Per (subject, metric): an exponentially weighted mean and variance (weight `ewma_alpha`).
//! A sample is anomalous when it is worse than the mean (all metrics here are "higher is
//! worse") by at least `z_threshold` standard deviations *and* by at least the metric's
//! minimum meaningful change ([`crate::sample::MetricSpec`]): the second condition keeps a
//! perfectly steady link, whose deviation is ~0, from calling a 0.1 ms wobble an anomaly.
//! `confirm_samples` anomalous samples in a row make a symptom; one is only a suspicion, as is
//! any sample past half the z threshold and half the minimum change (the monitor then samples
//! at its fastest, so that the suspicion is confirmed or cleared within one short interval).
//!
//! * Warm-up: nothing fires before `warmup_samples` samples.
//! * Anomalous samples are not learned (the baseline must not chase the fault). A shift that
//!   persists for `relearn_after_ms` is accepted as the new normal.
//! * A gap longer than `gap_reset_ms` starts a re-warm of `rewarm_samples` during which the
//!   series learns but does not fire; a silence longer than `forget_after_ms` forgets it.

use std::time::Duration;

use x0_routing::Instant;

use super::series::{SeriesMap, Timing};
use super::{Baseline, Detector, Symptom, SymptomKind, graded_confidence};
use crate::config::{DetectConfig, ms};
use crate::sample::{Observation, Sample};

#[derive(Debug, Default, Clone)]
struct Extra {
    streak: u32,
    shifted_since: Option<Instant>,
    /// The latest sample was past half the z threshold and half the minimum change.
    leaning: bool,
}

/// The EWMA/z-score detector.
#[derive(Debug)]
pub struct EwmaDetector {
    series: SeriesMap<Extra>,
    alpha: f64,
    z_threshold: f64,
    confirm: u32,
    relearn_after: Duration,
    warmup: u64,
}

impl EwmaDetector {
    /// A detector with the given parameters.
    pub fn new(cfg: &DetectConfig) -> Self {
        Self {
            series: SeriesMap::new(
                cfg.max_series,
                Timing {
                    gap: ms(cfg.gap_reset_ms),
                    forget: ms(cfg.forget_after_ms),
                    rewarm: cfg.rewarm_samples,
                },
                cfg.warmup_samples,
            ),
            alpha: cfg.ewma_alpha,
            z_threshold: cfg.z_threshold,
            confirm: cfg.confirm_samples,
            relearn_after: ms(cfg.relearn_after_ms),
            warmup: u64::from(cfg.warmup_samples),
        }
    }

    fn one(&mut self, now: Instant, o: &Observation, out: &mut Vec<Symptom>) {
        let (alpha, z_thr, confirm, relearn, warmup) = (
            self.alpha,
            self.z_threshold,
            self.confirm,
            self.relearn_after,
            self.warmup,
        );
        let Some(e) = self.series.touch(o.subject, &o.metric, now) else {
            return;
        };
        let x = o.value;
        if e.stats.n < warmup || e.rewarm > 0 {
            // Warming up, or re-warming after a gap: learn, never fire.
            e.rewarm = e.rewarm.saturating_sub(1);
            e.extra = Extra::default();
            e.stats.learn(x, alpha);
            return;
        }
        let spec = o.metric.spec();
        let std = e.stats.std(spec.min_std);
        let dev = x - e.stats.mean;
        let z = dev / std;
        let min_dev = spec
            .min_delta_abs
            .max(spec.min_delta_rel * e.stats.mean.abs());
        if !(z >= z_thr && dev >= min_dev) {
            e.extra = Extra {
                leaning: z >= z_thr / 2.0 && dev >= min_dev / 2.0,
                ..Extra::default()
            };
            e.stats.learn(x, alpha);
            return;
        }
        e.extra.leaning = true;
        let since = *e.extra.shifted_since.get_or_insert(now);
        if now.saturating_since(since) >= relearn {
            // A shift this old is the new normal.
            e.stats.mean = x;
            e.extra = Extra::default();
            return;
        }
        e.extra.streak = e.extra.streak.saturating_add(1);
        if e.extra.streak >= confirm {
            out.push(Symptom {
                detector: "ewma",
                subject: o.subject,
                kind: SymptomKind::Anomaly {
                    metric: o.metric.clone(),
                    z,
                },
                value: x,
                expected: e.stats.mean,
                confidence: graded_confidence(z, z_thr, 0.85),
            });
        }
    }
}

impl Detector for EwmaDetector {
    fn name(&self) -> &'static str {
        "ewma"
    }

    fn observe(
        &mut self,
        now: Instant,
        _sample: &Sample,
        observations: &[Observation],
        out: &mut Vec<Symptom>,
    ) {
        for o in observations {
            self.one(now, o, out);
        }
    }

    /// An unconfirmed anomaly, or a sample past half the z threshold and half the minimum
    /// change, is a suspicion.
    fn suspicious(&self) -> bool {
        self.series
            .iter()
            .any(|(_, e)| (e.extra.streak > 0 && e.extra.streak < self.confirm) || e.extra.leaning)
    }

    fn clock_jumped(&mut self) {
        self.series.clock_jumped();
    }

    fn baselines(&self) -> Vec<Baseline> {
        self.series.baselines()
    }

    fn restore_baselines(&mut self, baselines: &[Baseline]) {
        self.series.restore(baselines);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::{LinkRef, Metric, Subject};
    use proptest::prelude::*;
    use x0_wire::NodeId;

    fn link() -> Subject {
        Subject::Link(LinkRef {
            id: 1,
            neighbor: NodeId::from_bytes([1; 16]),
        })
    }

    fn obs(v: f64) -> Observation {
        Observation {
            subject: link(),
            metric: Metric::RttMs,
            value: v,
        }
    }

    /// Feeds `v` at `t_ms`; returns the symptoms.
    fn feed(d: &mut EwmaDetector, t_ms: u64, v: f64) -> Vec<Symptom> {
        let mut out = Vec::new();
        let s = Sample::Kernel(crate::sample::KernelCounters {
            drops: 0,
            retransmits: 0,
        });
        d.observe(Instant::from_millis(t_ms), &s, &[obs(v)], &mut out);
        out
    }

    /// A deterministic wobble around 10 ms (±0.3).
    fn noise(i: u64) -> f64 {
        10.0 + 0.3 * (((i * 7919) % 13) as f64 / 6.0 - 1.0)
    }

    #[test]
    fn a_spike_on_a_warm_series_fires_after_confirmation() {
        let cfg = DetectConfig::default();
        let mut d = EwmaDetector::new(&cfg);
        for i in 0..100 {
            assert!(feed(&mut d, i * 500, noise(i)).is_empty());
        }
        assert!(
            feed(&mut d, 50_000, 60.0).is_empty(),
            "first sample: suspicion"
        );
        assert!(d.suspicious());
        let s = feed(&mut d, 50_100, 60.0);
        assert_eq!(s.len(), 1);
        let SymptomKind::Anomaly { metric, z } = &s[0].kind else {
            panic!("{s:?}")
        };
        assert_eq!(*metric, Metric::RttMs);
        assert!(*z > 4.0);
        assert!((s[0].expected - 10.0).abs() < 0.5);
        assert!(s[0].confidence >= 0.5 && s[0].confidence <= 0.85);
        // It keeps reporting while the spike lasts, and the baseline does not chase it.
        for i in 0..20 {
            assert_eq!(feed(&mut d, 50_200 + i * 100, 60.0).len(), 1);
        }
        // Back to normal: quiet at once.
        assert!(feed(&mut d, 53_000, 10.0).is_empty());
        assert!(!d.suspicious());
    }

    #[test]
    fn nothing_fires_during_warm_up() {
        let cfg = DetectConfig::default();
        let mut d = EwmaDetector::new(&cfg);
        for i in 0..u64::from(cfg.warmup_samples) {
            let v = if i % 2 == 0 { 1.0 } else { 1000.0 };
            assert!(feed(&mut d, i * 100, v).is_empty());
        }
    }

    #[test]
    fn small_changes_on_a_steady_series_are_not_anomalies() {
        let cfg = DetectConfig::default();
        let mut d = EwmaDetector::new(&cfg);
        for i in 0..100 {
            feed(&mut d, i * 500, 1.0);
        }
        // z is huge (std floor 0.5 → z = 8) but 4 ms is below the 5 ms minimum change.
        for i in 0..10 {
            assert!(feed(&mut d, 60_000 + i * 100, 5.0).is_empty());
        }
    }

    #[test]
    fn a_gap_rewarms_instead_of_firing() {
        let cfg = DetectConfig::default();
        let mut d = EwmaDetector::new(&cfg);
        for i in 0..100 {
            feed(&mut d, i * 500, noise(i));
        }
        // 60 s without samples, then a different level: no symptom during the re-warm.
        for i in 0..u64::from(cfg.rewarm_samples) {
            assert!(feed(&mut d, 110_000 + i * 500, 60.0).is_empty());
        }
    }

    #[test]
    fn a_persistent_shift_becomes_the_new_normal() {
        let cfg = DetectConfig {
            relearn_after_ms: 10_000,
            ..DetectConfig::default()
        };
        let mut d = EwmaDetector::new(&cfg);
        for i in 0..100 {
            feed(&mut d, i * 500, noise(i));
        }
        let mut fired = 0;
        for i in 0..100 {
            fired += feed(&mut d, 50_000 + i * 500, 40.0).len();
        }
        assert!(fired > 0 && fired < 25, "{fired}");
        assert!(feed(&mut d, 101_000, 40.0).is_empty());
    }

    #[test]
    fn baselines_round_trip_through_restore() {
        let cfg = DetectConfig::default();
        let mut d = EwmaDetector::new(&cfg);
        for i in 0..100 {
            feed(&mut d, i * 500, noise(i));
        }
        let b = d.baselines();
        assert_eq!(b.len(), 1);
        let mut fresh = EwmaDetector::new(&cfg);
        fresh.restore_baselines(&b);
        // Warm at once (after the short re-warm), without a full warm-up.
        for i in 0..u64::from(cfg.rewarm_samples) {
            assert!(feed(&mut fresh, i * 500, noise(i)).is_empty());
        }
        feed(&mut fresh, 10_000, 60.0);
        assert_eq!(feed(&mut fresh, 10_100, 60.0).len(), 1);
    }

    fn value() -> impl Strategy<Value = f64> {
        prop_oneof![
            4 => 0.0f64..100.0,
            1 => Just(f64::NAN),
            1 => Just(f64::INFINITY),
            1 => Just(f64::NEG_INFINITY),
            1 => Just(-5.0),
            1 => Just(1e300),
        ]
    }

    proptest! {
        /// Arbitrary values (NaN, infinities, negatives, huge), arbitrary time steps (zero,
        /// gaps, backwards): never a panic, and every symptom is finite and in range.
        #[test]
        fn never_panics_and_never_reports_garbage(
            steps in prop::collection::vec((value(), -2_000i64..120_000), 1..400)
        ) {
            let cfg = DetectConfig::default();
            let mut d = EwmaDetector::new(&cfg);
            let mut monitor = crate::monitor::Monitor::new(
                ms(cfg.gap_reset_ms), ms(cfg.forget_after_ms));
            let mut t: u64 = 1_000_000;
            for (v, dt) in steps {
                t = t.saturating_add_signed(dt);
                let now = Instant::from_millis(t);
                let sample = Sample::Link(crate::sample::LinkSample {
                    rtt_ms: Some(v),
                    ..crate::sample::LinkSample::up(LinkRef { id: 1, neighbor: NodeId::from_bytes([1; 16]) })
                });
                let observations = monitor.observe(now, &sample);
                let mut out = Vec::new();
                d.observe(now, &sample, &observations, &mut out);
                for s in out {
                    prop_assert!(s.value.is_finite() && (0.0..=60_000.0).contains(&s.value));
                    prop_assert!(s.expected.is_finite());
                    prop_assert!((0.0..=1.0).contains(&s.confidence));
                }
            }
        }

        /// Garbage alone (no valid value ever) never produces a symptom.
        #[test]
        fn garbage_only_streams_are_silent(
            steps in prop::collection::vec(prop_oneof![Just(f64::NAN), Just(f64::INFINITY), Just(-1.0), Just(1e300)], 1..300)
        ) {
            let cfg = DetectConfig::default();
            let mut d = EwmaDetector::new(&cfg);
            let mut monitor = crate::monitor::Monitor::new(ms(cfg.gap_reset_ms), ms(cfg.forget_after_ms));
            for (i, v) in steps.into_iter().enumerate() {
                let now = Instant::from_millis(i as u64 * 100);
                let sample = Sample::Link(crate::sample::LinkSample {
                    rtt_ms: Some(v),
                    loss: Some(v),
                    ..crate::sample::LinkSample::up(LinkRef { id: 1, neighbor: NodeId::from_bytes([1; 16]) })
                });
                let observations = monitor.observe(now, &sample);
                prop_assert!(observations.is_empty());
                let mut out = Vec::new();
                d.observe(now, &sample, &observations, &mut out);
                prop_assert!(out.is_empty());
            }
        }
    }
}
