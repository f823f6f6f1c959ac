//! Analyze: detectors turn samples and observations into symptoms.
//!
//! Every detector implements [`Detector`]. The loop runs all of them on every input and
//! correlates what they report into incidents ([`crate::incident`]); a future graph neural
//! network detector plugs in beside the statistical ones through the same trait
//! ([`crate::Healer::add_detector`]).
//!
//! | Detector | Finds |
//! |---|---|
//! | [`ewma::EwmaDetector`] | a metric far from its own adaptive baseline (EWMA mean/variance, z-score) |
//! | [`cusum::CusumDetector`] | a sustained shift of a metric (one-sided CUSUM change point) |
//! | [`rules::RuleDetector`] | link down, flapping, loss/RTT/drop/CPU above fixed limits, crypto failures |
//! | [`blackhole::PathDifferential`] | a relay that drops transit traffic; a destination unreachable by every path |
//!
//! Detectors are deterministic: no clock, no randomness; `now` comes with every call.

pub mod blackhole;
pub mod cusum;
pub mod ewma;
pub mod rules;
mod series;

use std::fmt;

use serde::Serialize;
use x0_routing::Instant;
use x0_wire::NodeId;

use crate::sample::{DownCause, Metric, Observation, Sample, Subject};
use crate::topology::Topology;

pub use series::{Baseline, BaselineKey};

/// What a detector saw.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum SymptomKind {
    /// The link is down.
    LinkDown {
        /// Seen locally or by silence.
        cause: DownCause,
    },
    /// The link went up and down too often recently.
    Flapping {
        /// Transitions within the flap window.
        transitions: u32,
    },
    /// Loss at or above the fixed limit.
    HighLoss,
    /// RTT at or above the fixed limit.
    HighRtt,
    /// The routing core classes the link BAD.
    BadQuality,
    /// A metric far from its learned baseline.
    Anomaly {
        /// Which metric.
        metric: Metric,
        /// Its z-score.
        z: f64,
    },
    /// A sustained shift of a metric.
    ChangePoint {
        /// Which metric.
        metric: Metric,
    },
    /// Data-plane drops for one reason at or above the limit.
    DropRate {
        /// The reason.
        reason: String,
    },
    /// Decryption, authentication or replay failures on a link.
    CryptoFailures {
        /// The reason counter.
        reason: String,
    },
    /// Probes through this relay fail while a disjoint path to the same destination works.
    PathBlackHole {
        /// The destination.
        dst: NodeId,
        /// Relays of the failing path.
        failing: Vec<NodeId>,
        /// Relays of the working path.
        working: Vec<NodeId>,
    },
    /// Every probed path to this destination fails.
    Unreachable {
        /// Distinct paths that failed.
        paths: u32,
    },
    /// A resource of this node at or above its limit.
    ResourcePressure {
        /// Which metric.
        metric: Metric,
    },
}

impl SymptomKind {
    /// A short stable name (`link_down`, `anomaly`, …).
    pub fn name(&self) -> &'static str {
        match self {
            Self::LinkDown { .. } => "link_down",
            Self::Flapping { .. } => "flapping",
            Self::HighLoss => "high_loss",
            Self::HighRtt => "high_rtt",
            Self::BadQuality => "bad_quality",
            Self::Anomaly { .. } => "anomaly",
            Self::ChangePoint { .. } => "change_point",
            Self::DropRate { .. } => "drop_rate",
            Self::CryptoFailures { .. } => "crypto_failures",
            Self::PathBlackHole { .. } => "path_black_hole",
            Self::Unreachable { .. } => "unreachable",
            Self::ResourcePressure { .. } => "resource_pressure",
        }
    }
}

/// One detector finding.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Symptom {
    /// The detector's [`Detector::name`].
    pub detector: &'static str,
    /// What it is about.
    pub subject: Subject,
    /// What was seen.
    pub kind: SymptomKind,
    /// The value observed (meaning depends on the kind; 0 when none).
    pub value: f64,
    /// The value expected (baseline or limit; 0 when none).
    pub expected: f64,
    /// How sure the detector is, in `[0, 1]`.
    pub confidence: f64,
}

impl fmt::Display for Symptom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} on {} ({}: {:.3} vs {:.3}, confidence {:.2})",
            self.kind.name(),
            self.subject,
            self.detector,
            self.value,
            self.expected,
            self.confidence
        )
    }
}

/// A detector of the analyze phase.
///
/// The loop calls [`Detector::observe`] for every sample, with the observations the monitor
/// derived from it (sanitised values and counter rates), and [`Detector::tick`] on every
/// timeout. A detector pushes symptoms while the condition holds (level-triggered): an
/// incident stays open while symptoms keep coming and resolves when they stop.
///
/// Implementations must never panic and never report on garbage: the monitor already drops
/// NaN and out-of-range values, but a detector reading [`Sample`] fields directly must check
/// them itself.
pub trait Detector: fmt::Debug + Send {
    /// A short stable name, recorded with each symptom.
    fn name(&self) -> &'static str;

    /// Handles one sample taken at `now`.
    fn observe(
        &mut self,
        now: Instant,
        sample: &Sample,
        observations: &[Observation],
        out: &mut Vec<Symptom>,
    );

    /// Called on every timeout of the loop.
    fn tick(&mut self, _now: Instant, _out: &mut Vec<Symptom>) {}

    /// Whether something looks wrong but is not confirmed yet; the monitor then samples at its
    /// fastest rate to confirm or clear it sooner.
    fn suspicious(&self) -> bool {
        false
    }

    /// The clock jumped: timing-based state (gaps, windows) must not treat the jump as elapsed
    /// time or as a silence.
    fn clock_jumped(&mut self) {}

    /// The mesh topology changed from `before` to `after`.
    fn topology_changed(&mut self, _before: &Topology, _after: &Topology) {}

    /// Learned baselines, for the knowledge base.
    fn baselines(&self) -> Vec<Baseline> {
        Vec::new()
    }

    /// Baselines learned before a restart.
    fn restore_baselines(&mut self, _baselines: &[Baseline]) {}
}

/// A detector's confidence from how far past its threshold a score is: 0.5 at the threshold,
/// rising by 0.1 per threshold-width, capped at `max`.
pub(crate) fn graded_confidence(score: f64, threshold: f64, max: f64) -> f64 {
    if !score.is_finite() || threshold <= 0.0 {
        return 0.5;
    }
    (0.5 + 0.1 * (score - threshold) / threshold * 4.0).clamp(0.5, max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn graded_confidence_is_bounded() {
        assert_eq!(graded_confidence(4.0, 4.0, 0.85), 0.5);
        assert!(graded_confidence(8.0, 4.0, 0.85) > 0.5);
        assert_eq!(graded_confidence(1e9, 4.0, 0.85), 0.85);
        assert_eq!(graded_confidence(f64::NAN, 4.0, 0.85), 0.5);
        assert_eq!(graded_confidence(f64::INFINITY, 4.0, 0.85), 0.5);
    }
}
