//! The loop's settings: one serde struct (the `[heal]` section of the daemon's TOML), with
//! documented defaults and [`HealConfig::validate`] that names the bad key and what it allows.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Whether the loop acts or only says what it would do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Records and reports what it would do; emits no action.
    Observe,
    /// Acts (the default).
    #[default]
    Act,
}

impl Mode {
    /// `"observe"` or `"act"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Observe => "observe",
            Self::Act => "act",
        }
    }
}

/// A configuration value outside what is allowed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("heal.{key}: {allowed}")]
pub struct ConfigError {
    /// The key, relative to `[heal]` (e.g. `plan.action_burst`).
    pub key: &'static str,
    /// What values are allowed.
    pub allowed: String,
}

/// Settings of the loop.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealConfig {
    /// `"act"` (default) or `"observe"`.
    pub mode: Mode,
    /// How often the monitor samples, and clock sanity.
    pub sampling: SamplingConfig,
    /// Detector parameters.
    pub detect: DetectConfig,
    /// Incident correlation and health.
    pub incidents: IncidentConfig,
    /// Planner safety and pacing.
    pub plan: PlanConfig,
    /// The end-to-end prober.
    pub probe: ProbeConfig,
}

/// The end-to-end prober ([`crate::probe::Prober`]): probes along explicit paths to a rotating
/// sample of destinations, for black-hole detection and end-to-end delivery.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProbeConfig {
    /// Whether the daemon probes at all. Default true.
    pub enabled: bool,
    /// A probe round every this many ms: one probe along each path of each sampled
    /// destination. Default 200.
    pub interval_ms: u64,
    /// A probe whose answer did not come back this long after the probe left is lost, ms
    /// (the daemon may hold a probe up to one `interval_ms` before sending it). Default 500.
    pub timeout_ms: u64,
    /// Destinations probed per round from the rotation, besides those we send traffic to.
    /// Default 8.
    pub destinations: usize,
    /// Destinations we send traffic to probed per round at most. Default 8.
    pub active_destinations: usize,
    /// Rounds a destination stays in the rotating sample before the next ones take its place
    /// (the black-hole detector needs several rounds on one path). Default 10.
    pub dwell_rounds: u32,
    /// Paths that routing stopped using (through a quarantined relay or an excluded link)
    /// are still probed this long, so that a cleared cause is seen, ms. Default 60,000.
    pub keep_paths_ms: u64,
    /// Such paths are probed in one round of this many. Default 5.
    pub slow_every: u32,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            interval_ms: 200,
            timeout_ms: 500,
            destinations: 8,
            active_destinations: 8,
            dwell_rounds: 10,
            keep_paths_ms: 60_000,
            slow_every: 5,
        }
    }
}

/// Monitor pacing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SamplingConfig {
    /// Sampling interval while degraded, critical or suspicious, ms. Default 100.
    pub interval_min_ms: u64,
    /// Sampling interval while all is well, ms. Default 500.
    pub interval_max_ms: u64,
    /// A step of `now` longer than this is a clock jump and is not counted as elapsed time
    /// (nor is a step backwards), ms. Default 30,000.
    pub max_clock_step_ms: u64,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        Self {
            interval_min_ms: 100,
            interval_max_ms: 500,
            max_clock_step_ms: 30_000,
        }
    }
}

/// Detector parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectConfig {
    /// EWMA weight of a new sample in the baseline. Default 0.05.
    pub ewma_alpha: f64,
    /// |z| at or above which a sample is anomalous. Default 4.
    pub z_threshold: f64,
    /// Samples a series needs before its detectors may fire. Default 30.
    pub warmup_samples: u32,
    /// Samples after a gap during which a series learns but does not fire. Default 5.
    pub rewarm_samples: u32,
    /// Anomalous samples in a row before the EWMA detector reports. Default 2.
    pub confirm_samples: u32,
    /// No sample for this long is a gap (re-warm instead of firing), ms. Default 10,000.
    pub gap_reset_ms: u64,
    /// No sample for this long forgets the series' baseline, ms. Default 600,000.
    pub forget_after_ms: u64,
    /// A shift that persists this long becomes the new baseline, ms. Default 600,000.
    pub relearn_after_ms: u64,
    /// CUSUM slack, in standard deviations. Default 0.5.
    pub cusum_k: f64,
    /// CUSUM decision threshold, in standard deviations. Default 10.
    pub cusum_h: f64,
    /// Loss ratio at or above which a link is lossy, whatever its baseline. Default 0.10.
    pub loss_limit: f64,
    /// RTT at or above which a link is slow, whatever its baseline, ms. Default 400.
    pub rtt_limit_ms: f64,
    /// Data-plane drops per second (one reason) at or above which drops are a symptom.
    /// Default 1,000.
    pub drop_rate_limit_per_s: f64,
    /// CPU share at or above which the node is under pressure. Default 0.95.
    pub cpu_limit: f64,
    /// Up/down transitions of one link within `flap_window_ms` that make it flapping.
    /// Default 4.
    pub flap_transitions: u32,
    /// Window for counting transitions, ms. Default 30,000.
    pub flap_window_ms: u64,
    /// A flapping link must be stable this long before it stops counting as flapping, ms.
    /// Default 30,000.
    pub flap_quiet_ms: u64,
    /// How far back path probes count for black-hole detection, ms. Default 5,000.
    pub blackhole_window_ms: u64,
    /// Probes lost on a path since its last answered one before it counts as failing.
    /// Default 5 (at 30 % loss, five losses in a row happen once in ~400 tries; a black hole
    /// loses every probe).
    pub blackhole_min_failures: u32,
    /// Answered probes on a disjoint path before it counts as working. Default 2.
    pub blackhole_min_successes: u32,
    /// Destinations whose evidence against a relay must be independent (no node but the relay
    /// in common between their failing paths and themselves) before the relay is blamed with
    /// a confidence that acts. Default 2: one lying destination cannot get a relay quarantined
    /// (`k` tolerates `k − 1` liars). 1 trusts every destination.
    pub blackhole_min_destinations: u32,
    /// Most series (subject × metric) tracked; the longest silent ones are evicted. Default
    /// 4,096.
    pub max_series: usize,
}

impl Default for DetectConfig {
    fn default() -> Self {
        Self {
            ewma_alpha: 0.05,
            z_threshold: 4.0,
            warmup_samples: 30,
            rewarm_samples: 5,
            confirm_samples: 2,
            gap_reset_ms: 10_000,
            forget_after_ms: 600_000,
            relearn_after_ms: 600_000,
            cusum_k: 0.5,
            cusum_h: 10.0,
            loss_limit: 0.10,
            rtt_limit_ms: 400.0,
            drop_rate_limit_per_s: 1_000.0,
            cpu_limit: 0.95,
            flap_transitions: 4,
            flap_window_ms: 30_000,
            flap_quiet_ms: 30_000,
            blackhole_window_ms: 5_000,
            blackhole_min_failures: 5,
            blackhole_min_successes: 2,
            blackhole_min_destinations: 2,
            max_series: 4096,
        }
    }
}

/// Incident correlation and health.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IncidentConfig {
    /// An incident with no symptom for this long is resolved (its cause cleared), ms. Default
    /// 5,000.
    pub resolve_after_ms: u64,
    /// Confidence an incident needs before the planner acts on it. Default 0.6.
    pub act_confidence: f64,
    /// Share of our links degraded at once that points at this node itself. Default 0.5.
    pub self_share: f64,
    /// Most open incidents; symptoms about further causes are counted and dropped. Default 64.
    pub max_open: usize,
    /// Symptoms recorded per incident (later ones are only counted). Default 32.
    pub max_symptoms_recorded: u32,
    /// Open incidents at which health is CRITICAL. Default 3.
    pub critical_open: usize,
    /// Health stays RECOVERING this long after the last incident closed, ms. Default 10,000.
    pub recovering_hold_ms: u64,
    /// How often learned baselines are handed out for the knowledge base, ms. Default
    /// 300,000.
    pub baseline_snapshot_ms: u64,
}

impl Default for IncidentConfig {
    fn default() -> Self {
        Self {
            resolve_after_ms: 5_000,
            act_confidence: 0.6,
            self_share: 0.5,
            max_open: 64,
            max_symptoms_recorded: 32,
            critical_open: 3,
            recovering_hold_ms: 10_000,
            baseline_snapshot_ms: 300_000,
        }
    }
}

/// Planner safety and pacing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PlanConfig {
    /// Token bucket size: actions that may be taken back to back. Default 5.
    pub action_burst: u32,
    /// One token is added every this many ms. Default 10,000 (6 actions a minute).
    pub action_refill_ms: u64,
    /// Largest share of our neighbours (and of all known nodes) that may be quarantined at
    /// once. Default 0.5.
    pub max_quarantine_share: f64,
    /// First hold of a quarantine or flap exclusion, ms; doubles per repeat offence. Default
    /// 30,000.
    pub hold_base_ms: u64,
    /// Longest hold, ms. Default 1,800,000.
    pub hold_max_ms: u64,
    /// An offender with no offence for this long starts again from `hold_base_ms`, ms. Default
    /// 3,600,000.
    pub offence_forget_ms: u64,
    /// Shortest interval between two restarts or rekeys of one link, ms; doubles per repeat.
    /// Default 5,000.
    pub retry_base_ms: u64,
    /// Longest such interval, ms. Default 300,000.
    pub retry_max_ms: u64,
    /// Time after an action within which recovery counts as its success, ms. Default 30,000.
    pub outcome_window_ms: u64,
    /// An action with no result after this long counts as failed, ms. Default 10,000.
    pub action_timeout_ms: u64,
    /// Factor by which a degraded link's cost is raised. Default 8.
    pub cost_factor: u32,
    /// Share of a noisy neighbour's traffic to shed. Default 0.5.
    pub shed_share: f64,
    /// Weight of the built-in prior against the knowledge base's counts, in pseudo-attempts.
    /// Default 4.
    pub prior_weight: f64,
}

impl Default for PlanConfig {
    fn default() -> Self {
        Self {
            action_burst: 5,
            action_refill_ms: 10_000,
            max_quarantine_share: 0.5,
            hold_base_ms: 30_000,
            hold_max_ms: 1_800_000,
            offence_forget_ms: 3_600_000,
            retry_base_ms: 5_000,
            retry_max_ms: 300_000,
            outcome_window_ms: 30_000,
            action_timeout_ms: 10_000,
            cost_factor: 8,
            shed_share: 0.5,
            prior_weight: 4.0,
        }
    }
}

pub(crate) fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

fn check(ok: bool, key: &'static str, allowed: &str) -> Result<(), ConfigError> {
    if ok {
        Ok(())
    } else {
        Err(ConfigError {
            key,
            allowed: allowed.to_owned(),
        })
    }
}

fn share(v: f64) -> bool {
    v.is_finite() && v > 0.0 && v <= 1.0
}

impl HealConfig {
    /// Checks every value; the error names the first bad key and what it allows.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let p = &self.probe;
        check(
            (20..=60_000).contains(&p.interval_ms),
            "probe.interval_ms",
            "between 20 and 60000",
        )?;
        check(
            (10..=60_000).contains(&p.timeout_ms),
            "probe.timeout_ms",
            "between 10 and 60000",
        )?;
        check(
            (1..=256).contains(&p.destinations),
            "probe.destinations",
            "between 1 and 256",
        )?;
        check(
            p.active_destinations <= 256,
            "probe.active_destinations",
            "between 0 and 256",
        )?;
        check(
            (1..=10_000).contains(&p.dwell_rounds),
            "probe.dwell_rounds",
            "between 1 and 10000",
        )?;
        check(
            p.keep_paths_ms <= 86_400_000,
            "probe.keep_paths_ms",
            "between 0 and 86400000",
        )?;
        check(
            (1..=1_000).contains(&p.slow_every),
            "probe.slow_every",
            "between 1 and 1000",
        )?;
        let s = &self.sampling;
        check(
            s.interval_min_ms >= 10,
            "sampling.interval_min_ms",
            "at least 10",
        )?;
        check(
            s.interval_max_ms >= s.interval_min_ms && s.interval_max_ms <= 60_000,
            "sampling.interval_max_ms",
            "between sampling.interval_min_ms and 60000",
        )?;
        check(
            s.max_clock_step_ms > s.interval_max_ms,
            "sampling.max_clock_step_ms",
            "more than sampling.interval_max_ms",
        )?;
        let d = &self.detect;
        check(
            d.ewma_alpha.is_finite() && d.ewma_alpha > 0.0 && d.ewma_alpha < 1.0,
            "detect.ewma_alpha",
            "strictly between 0 and 1",
        )?;
        check(
            d.z_threshold.is_finite() && d.z_threshold >= 1.0,
            "detect.z_threshold",
            "at least 1",
        )?;
        check(d.warmup_samples >= 5, "detect.warmup_samples", "at least 5")?;
        check(
            d.confirm_samples >= 1,
            "detect.confirm_samples",
            "at least 1",
        )?;
        check(
            d.gap_reset_ms > s.interval_max_ms,
            "detect.gap_reset_ms",
            "more than sampling.interval_max_ms",
        )?;
        check(
            d.forget_after_ms >= d.gap_reset_ms,
            "detect.forget_after_ms",
            "at least detect.gap_reset_ms",
        )?;
        check(
            d.relearn_after_ms >= 1_000,
            "detect.relearn_after_ms",
            "at least 1000",
        )?;
        check(
            d.cusum_k.is_finite() && d.cusum_k >= 0.0,
            "detect.cusum_k",
            "a number ≥ 0",
        )?;
        check(
            d.cusum_h.is_finite() && d.cusum_h > 0.0,
            "detect.cusum_h",
            "a number > 0",
        )?;
        check(share(d.loss_limit), "detect.loss_limit", "in (0, 1]")?;
        check(
            d.rtt_limit_ms.is_finite() && d.rtt_limit_ms > 0.0,
            "detect.rtt_limit_ms",
            "a number > 0",
        )?;
        check(
            d.drop_rate_limit_per_s.is_finite() && d.drop_rate_limit_per_s > 0.0,
            "detect.drop_rate_limit_per_s",
            "a number > 0",
        )?;
        check(share(d.cpu_limit), "detect.cpu_limit", "in (0, 1]")?;
        check(
            d.flap_transitions >= 2,
            "detect.flap_transitions",
            "at least 2",
        )?;
        check(
            d.flap_window_ms >= 1_000,
            "detect.flap_window_ms",
            "at least 1000",
        )?;
        check(
            d.blackhole_window_ms >= s.interval_max_ms,
            "detect.blackhole_window_ms",
            "at least sampling.interval_max_ms",
        )?;
        check(
            d.blackhole_min_failures >= 1,
            "detect.blackhole_min_failures",
            "at least 1",
        )?;
        check(
            d.blackhole_min_successes >= 1,
            "detect.blackhole_min_successes",
            "at least 1",
        )?;
        check(
            (1..=8).contains(&d.blackhole_min_destinations),
            "detect.blackhole_min_destinations",
            "1 to 8",
        )?;
        check(d.max_series >= 16, "detect.max_series", "at least 16")?;
        let i = &self.incidents;
        check(
            i.resolve_after_ms >= s.interval_max_ms,
            "incidents.resolve_after_ms",
            "at least sampling.interval_max_ms",
        )?;
        check(
            i.act_confidence.is_finite() && (0.0..=1.0).contains(&i.act_confidence),
            "incidents.act_confidence",
            "in [0, 1]",
        )?;
        check(share(i.self_share), "incidents.self_share", "in (0, 1]")?;
        check(i.max_open >= 1, "incidents.max_open", "at least 1")?;
        check(
            i.critical_open >= 1,
            "incidents.critical_open",
            "at least 1",
        )?;
        check(
            i.baseline_snapshot_ms >= 1_000,
            "incidents.baseline_snapshot_ms",
            "at least 1000",
        )?;
        let p = &self.plan;
        check(p.action_burst >= 1, "plan.action_burst", "at least 1")?;
        check(
            p.action_refill_ms >= 1,
            "plan.action_refill_ms",
            "at least 1",
        )?;
        check(
            share(p.max_quarantine_share),
            "plan.max_quarantine_share",
            "in (0, 1]",
        )?;
        check(p.hold_base_ms >= 1, "plan.hold_base_ms", "at least 1")?;
        check(
            p.hold_max_ms >= p.hold_base_ms,
            "plan.hold_max_ms",
            "at least plan.hold_base_ms",
        )?;
        check(p.retry_base_ms >= 1, "plan.retry_base_ms", "at least 1")?;
        check(
            p.retry_max_ms >= p.retry_base_ms,
            "plan.retry_max_ms",
            "at least plan.retry_base_ms",
        )?;
        check(
            p.outcome_window_ms >= i.resolve_after_ms,
            "plan.outcome_window_ms",
            "at least incidents.resolve_after_ms",
        )?;
        check(
            p.action_timeout_ms >= 1,
            "plan.action_timeout_ms",
            "at least 1",
        )?;
        check(p.cost_factor >= 2, "plan.cost_factor", "at least 2")?;
        check(share(p.shed_share), "plan.shed_share", "in (0, 1]")?;
        check(
            p.prior_weight.is_finite() && p.prior_weight > 0.0,
            "plan.prior_weight",
            "a number > 0",
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_act() {
        let c = HealConfig::default();
        c.validate().unwrap();
        assert_eq!(c.mode, Mode::Act);
    }

    #[test]
    fn bad_values_name_their_key() {
        let mut c = HealConfig::default();
        c.detect.ewma_alpha = f64::NAN;
        let e = c.validate().unwrap_err();
        assert_eq!(e.key, "detect.ewma_alpha");
        assert!(e.to_string().starts_with("heal.detect.ewma_alpha: "), "{e}");

        let mut c = HealConfig::default();
        c.sampling.interval_max_ms = 50;
        assert_eq!(c.validate().unwrap_err().key, "sampling.interval_max_ms");

        let mut c = HealConfig::default();
        c.plan.max_quarantine_share = 1.5;
        assert_eq!(c.validate().unwrap_err().key, "plan.max_quarantine_share");

        let mut c = HealConfig::default();
        c.plan.action_burst = 0;
        assert_eq!(c.validate().unwrap_err().key, "plan.action_burst");
    }

    #[test]
    fn toml_like_input_with_unknown_keys_is_refused() {
        let ok: HealConfig =
            serde_json::from_str(r#"{"mode":"observe","plan":{"action_burst":2}}"#).unwrap();
        assert_eq!(ok.mode, Mode::Observe);
        assert_eq!(ok.plan.action_burst, 2);
        assert_eq!(ok.plan.action_refill_ms, 10_000, "others keep defaults");
        assert!(serde_json::from_str::<HealConfig>(r#"{"plan":{"burst":2}}"#).is_err());
        assert!(serde_json::from_str::<HealConfig>(r#"{"mode":"maybe"}"#).is_err());
    }
}
