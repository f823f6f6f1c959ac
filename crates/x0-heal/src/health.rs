//! The node's health state, and the sampling interval it implies.
//!
//! | State | When |
//! |---|---|
//! | CRITICAL | `critical_open` incidents or more are open; or at least half of our links are down; or an incident about this node itself is at least 0.8 confident |
//! | DEGRADED | any incident is open |
//! | RECOVERING | no incident is open, but a restriction is still held, an action's outcome is pending, or the last incident closed less than `recovering_hold_ms` ago |
//! | OPTIMAL | otherwise |
//!
//! The monitor samples every `interval_min_ms` while DEGRADED or CRITICAL, and while any
//! detector has an unconfirmed suspicion (so that a suspicion is confirmed or cleared within
//! one fast interval); halfway between the bounds while RECOVERING; every `interval_max_ms`
//! when OPTIMAL.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use x0_routing::Instant;

use crate::config::{SamplingConfig, ms};

/// Health of the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum HealthState {
    /// All is well.
    Optimal,
    /// Something is wrong.
    Degraded,
    /// Much is wrong.
    Critical,
    /// Recently wrong; restrictions or outcomes pending.
    Recovering,
}

impl HealthState {
    /// `OPTIMAL`, `DEGRADED`, `CRITICAL` or `RECOVERING`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Optimal => "OPTIMAL",
            Self::Degraded => "DEGRADED",
            Self::Critical => "CRITICAL",
            Self::Recovering => "RECOVERING",
        }
    }

    /// A number for a gauge: 0 optimal, 1 recovering, 2 degraded, 3 critical.
    pub fn gauge(self) -> u8 {
        match self {
            Self::Optimal => 0,
            Self::Recovering => 1,
            Self::Degraded => 2,
            Self::Critical => 3,
        }
    }
}

impl fmt::Display for HealthState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The health state with its reasons.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Health {
    /// The state.
    pub state: HealthState,
    /// Why, one line each (empty when OPTIMAL).
    pub reasons: Vec<String>,
    /// Since when (the loop's time).
    #[serde(skip)]
    pub since: Instant,
}

/// What the state is computed from.
#[derive(Debug, Clone, Default)]
pub(crate) struct HealthInputs {
    pub(crate) open: Vec<String>,
    pub(crate) critical: Vec<String>,
    pub(crate) pending: Vec<String>,
    pub(crate) recently_closed: bool,
}

pub(crate) fn assess(i: &HealthInputs) -> (HealthState, Vec<String>) {
    if !i.critical.is_empty() {
        let mut r = i.critical.clone();
        r.extend(i.open.iter().cloned());
        (HealthState::Critical, r)
    } else if !i.open.is_empty() {
        (HealthState::Degraded, i.open.clone())
    } else if !i.pending.is_empty() || i.recently_closed {
        let mut r = i.pending.clone();
        if i.recently_closed {
            r.push("an incident closed recently".into());
        }
        (HealthState::Recovering, r)
    } else {
        (HealthState::Optimal, Vec::new())
    }
}

/// The sampling interval for a state.
pub fn sampling_interval(state: HealthState, suspicious: bool, cfg: &SamplingConfig) -> Duration {
    let (min, max) = (ms(cfg.interval_min_ms), ms(cfg.interval_max_ms));
    match state {
        HealthState::Critical | HealthState::Degraded => min,
        _ if suspicious => min,
        HealthState::Recovering => (min + max) / 2,
        HealthState::Optimal => max,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_and_intervals() {
        let cfg = SamplingConfig::default();
        let mut i = HealthInputs::default();
        assert_eq!(assess(&i).0, HealthState::Optimal);
        i.recently_closed = true;
        assert_eq!(assess(&i).0, HealthState::Recovering);
        i.open.push("x".into());
        assert_eq!(assess(&i), (HealthState::Degraded, vec!["x".into()]));
        i.critical.push("y".into());
        let (s, r) = assess(&i);
        assert_eq!(s, HealthState::Critical);
        assert_eq!(r, ["y", "x"]);

        let d = |s, q| sampling_interval(s, q, &cfg).as_millis();
        assert_eq!(d(HealthState::Optimal, false), 500);
        assert_eq!(d(HealthState::Optimal, true), 100);
        assert_eq!(d(HealthState::Recovering, false), 300);
        assert_eq!(d(HealthState::Degraded, false), 100);
        assert_eq!(d(HealthState::Critical, false), 100);
        assert!(HealthState::Critical.gauge() > HealthState::Degraded.gauge());
    }
}
