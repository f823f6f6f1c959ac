//! One-sided CUSUM change-point detection.
//!
//! Per (subject, metric) the detector keeps a slow baseline (EWMA at half of `ewma_alpha`)
//! and the cumulative sum `S = max(0, S + (x − μ − δ/2)/σ − k)` of standardised excesses
//! above it (Page, 1954), where `δ` is the metric's minimum meaningful change: deviations too
//! small to matter drain `S` instead of adding to it. It reports a change point while `S ≥ h` and the current sample is still at
//! least the metric's minimum meaningful change above the baseline. CUSUM finds sustained
//! shifts that are too small for the z-score to see in any single sample (a loss rate creeping
//! from 0.2 % to 5 %), and it finds them after a few samples.
//!
//! Each standardised excess is winsorised at `±z_threshold` before it is added, so that one
//! outlier, however far out, cannot raise an alarm alone: with the defaults (k = 0.5, h = 10,
//! cap 4) an alarm needs three samples in a row far above the baseline.
//!
//! Samples within half the minimum meaningful change of the baseline are always learned, so a
//! harmless drift moves the baseline instead of accumulating forever; `S` is capped at `2h` so
//! that it drains quickly once the shift ends. Warm-up, gaps and clock jumps are handled as in
//! [`super::ewma`].

use x0_routing::Instant;

use super::series::{SeriesMap, Timing};
use super::{Baseline, Detector, Symptom, SymptomKind};
use crate::config::{DetectConfig, ms};
use crate::sample::{Observation, Sample};

#[derive(Debug, Default, Clone)]
struct Extra {
    s: f64,
}

/// The CUSUM detector.
#[derive(Debug)]
pub struct CusumDetector {
    series: SeriesMap<Extra>,
    alpha: f64,
    k: f64,
    h: f64,
    warmup: u64,
    z_cap: f64,
}

impl CusumDetector {
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
            alpha: cfg.ewma_alpha / 2.0,
            k: cfg.cusum_k,
            h: cfg.cusum_h,
            warmup: u64::from(cfg.warmup_samples),
            z_cap: cfg.z_threshold,
        }
    }

    fn one(&mut self, now: Instant, o: &Observation, out: &mut Vec<Symptom>) {
        let (alpha, k, h, warmup, z_cap) = (self.alpha, self.k, self.h, self.warmup, self.z_cap);
        let Some(e) = self.series.touch(o.subject, &o.metric, now) else {
            return;
        };
        let x = o.value;
        if e.stats.n < warmup || e.rewarm > 0 {
            e.rewarm = e.rewarm.saturating_sub(1);
            e.extra.s = 0.0;
            e.stats.learn(x, alpha);
            return;
        }
        let spec = o.metric.spec();
        let std = e.stats.std(spec.min_std);
        let dev = x - e.stats.mean;
        let min_dev = spec
            .min_delta_abs
            .max(spec.min_delta_rel * e.stats.mean.abs());
        // Only the excess beyond half the minimum meaningful change accumulates (a windowed
        // metric holding one lost probe for seconds must not add up to an alarm), and it is
        // winsorised: one sample adds at most `z_cap − k`, so a single outlier cannot raise
        // an alarm on its own however far out it is.
        let step = ((dev - min_dev / 2.0) / std).clamp(-z_cap, z_cap) - k;
        e.extra.s = (e.extra.s + step).clamp(0.0, 2.0 * h);
        if !e.extra.s.is_finite() {
            e.extra.s = 0.0;
        }
        if dev < min_dev / 2.0 {
            e.stats.learn(x, alpha);
        }
        if e.extra.s >= h && dev >= min_dev {
            out.push(Symptom {
                detector: "cusum",
                subject: o.subject,
                kind: SymptomKind::ChangePoint {
                    metric: o.metric.clone(),
                },
                value: x,
                expected: e.stats.mean,
                confidence: 0.6,
            });
        }
    }
}

impl Detector for CusumDetector {
    fn name(&self) -> &'static str {
        "cusum"
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

    fn suspicious(&self) -> bool {
        let h = self.h;
        self.series
            .iter()
            .any(|(_, e)| e.extra.s >= h / 2.0 && e.extra.s < h)
    }

    fn clock_jumped(&mut self) {
        self.series.clock_jumped();
    }

    fn baselines(&self) -> Vec<Baseline> {
        // The EWMA detector's baselines are the ones persisted; CUSUM's slower copy is
        // re-derived from them on restore.
        Vec::new()
    }

    fn restore_baselines(&mut self, baselines: &[Baseline]) {
        self.series.restore(baselines);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::{KernelCounters, LinkRef, Metric, Subject};
    use proptest::prelude::*;
    use x0_wire::NodeId;

    fn feed(d: &mut CusumDetector, t_ms: u64, metric: Metric, v: f64) -> Vec<Symptom> {
        let o = Observation {
            subject: Subject::Link(LinkRef {
                id: 1,
                neighbor: NodeId::from_bytes([1; 16]),
            }),
            metric,
            value: v,
        };
        let mut out = Vec::new();
        let s = Sample::Kernel(KernelCounters {
            drops: 0,
            retransmits: 0,
        });
        d.observe(Instant::from_millis(t_ms), &s, &[o], &mut out);
        out
    }

    /// A deterministic loss ratio around 0.2 % (0–0.4 %).
    fn low_loss(i: u64) -> f64 {
        0.002 * (((i * 31) % 5) as f64 / 2.0)
    }

    #[test]
    fn a_small_sustained_shift_is_found_within_a_few_samples() {
        let cfg = DetectConfig::default();
        let mut d = CusumDetector::new(&cfg);
        for i in 0..200 {
            assert!(feed(&mut d, i * 500, Metric::Loss, low_loss(i)).is_empty());
        }
        // 6 % loss: z = 6 with the 1 % floor, above the 4-point minimum change.
        let mut first = None;
        for i in 0..20 {
            if !feed(&mut d, 100_000 + i * 100, Metric::Loss, 0.06).is_empty() && first.is_none() {
                first = Some(i);
            }
        }
        let first = first.expect("shift found");
        assert!(first <= 3, "found after {} samples", first + 1);
    }

    #[test]
    fn one_outlier_alone_never_raises_an_alarm() {
        let cfg = DetectConfig::default();
        let mut d = CusumDetector::new(&cfg);
        for i in 0..200 {
            feed(&mut d, i * 500, Metric::RttMs, 1.0 + 0.01 * (i % 3) as f64);
        }
        assert!(feed(&mut d, 100_000, Metric::RttMs, 10_000.0).is_empty());
        assert!(feed(&mut d, 100_500, Metric::RttMs, 1.0).is_empty());
        assert!(feed(&mut d, 101_000, Metric::RttMs, 10_000.0).is_empty());
        // Three in a row is a change.
        assert!(feed(&mut d, 101_500, Metric::RttMs, 10_000.0).is_empty());
        assert_eq!(feed(&mut d, 102_000, Metric::RttMs, 10_000.0).len(), 1);
    }

    #[test]
    fn the_alarm_drains_once_the_shift_ends() {
        let cfg = DetectConfig::default();
        let mut d = CusumDetector::new(&cfg);
        for i in 0..200 {
            feed(&mut d, i * 500, Metric::Loss, low_loss(i));
        }
        for i in 0..50 {
            feed(&mut d, 100_000 + i * 100, Metric::Loss, 0.3);
        }
        // Back to normal: below the minimum change at once.
        for i in 0..10 {
            assert!(feed(&mut d, 110_000 + i * 100, Metric::Loss, 0.002).is_empty());
        }
        assert!(!d.suspicious(), "S drained");
    }

    #[test]
    fn harmless_drift_never_fires() {
        let cfg = DetectConfig::default();
        let mut d = CusumDetector::new(&cfg);
        // RTT drifting from 1 ms to 3 ms over ten minutes: under the 5 ms minimum change.
        for i in 0..1200u32 {
            let v = 1.0 + 2.0 * f64::from(i) / 1200.0;
            assert!(feed(&mut d, u64::from(i) * 500, Metric::RttMs, v).is_empty());
        }
    }

    proptest! {
        #[test]
        fn arbitrary_finite_streams_never_panic_and_stay_bounded(
            values in prop::collection::vec(0.0f64..1.0, 1..500),
            dts in prop::collection::vec(0u64..30_000, 1..500),
        ) {
            let cfg = DetectConfig::default();
            let mut d = CusumDetector::new(&cfg);
            let mut t = 0u64;
            for (v, dt) in values.iter().zip(dts.iter().cycle()) {
                t += dt;
                for s in feed(&mut d, t, Metric::Loss, *v) {
                    prop_assert!(s.value.is_finite() && s.expected.is_finite());
                }
            }
            prop_assert!(d.series.iter().all(|(_, e)| e.extra.s.is_finite() && e.extra.s <= 2.0 * cfg.cusum_h));
        }
    }
}
