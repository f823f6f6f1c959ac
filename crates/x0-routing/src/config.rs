//! Router settings, with the defaults the design asks for.

use std::time::Duration;

/// Settings of one [`crate::Router`].
#[derive(Debug, Clone)]
pub struct RouterConfig {
    /// Probe interval on a link that carries traffic (BFD "desired min TX"). Default 100 ms.
    pub probe_interval: Duration,
    /// Longest probe interval on an idle link; the interval doubles towards it after
    /// `idle_after` without traffic. Equal to `probe_interval` (no back-off) by default.
    pub probe_interval_idle: Duration,
    /// Time without traffic after which a link counts as idle. Default 5 s.
    pub idle_after: Duration,
    /// Missed probe intervals after which a silent neighbour is declared down. Default 3.
    pub detect_multiplier: u8,
    /// How long receivers keep an advert without a refresh. Default 1 h.
    pub advert_lifetime: Duration,
    /// How often a node re-floods its advert unchanged. Default 30 min (half the lifetime).
    pub advert_refresh: Duration,
    /// Shortest time between two adverts of our own (coalesces bursts). Default 20 ms.
    pub min_originate_interval: Duration,
    /// Relative cost change that is advertised at once; smaller changes wait for the refresh.
    /// Default 0.25 (25 %).
    pub significant_cost_change: f64,
    /// Per link, cost-only changes (same class) above the threshold are advertised at most this
    /// often, so a link whose measurements wobble cannot storm the mesh. Default 5 s.
    pub cost_change_holddown: Duration,
    /// First retransmission of an unacknowledged advert; doubles up to 8× per advert. Default
    /// 300 ms.
    pub retransmit_interval: Duration,
    /// Most advert datagrams sent per neighbour per second (flooding rate limit). Default 2,000.
    pub flood_rate_per_s: u32,
    /// Delay between a topology change and the SPF run that follows (coalesces bursts; fast
    /// reroute covers local failures meanwhile). Default 10 ms.
    pub spf_delay: Duration,
    /// Disjoint paths computed per destination (primary + backups). Default 2.
    pub k_paths: usize,
}

impl Default for RouterConfig {
    fn default() -> Self {
        Self {
            probe_interval: Duration::from_millis(100),
            probe_interval_idle: Duration::from_millis(100),
            idle_after: Duration::from_secs(5),
            detect_multiplier: 3,
            advert_lifetime: Duration::from_secs(3600),
            advert_refresh: Duration::from_secs(1800),
            min_originate_interval: Duration::from_millis(20),
            significant_cost_change: 0.25,
            cost_change_holddown: Duration::from_secs(5),
            retransmit_interval: Duration::from_millis(300),
            flood_rate_per_s: 2000,
            spf_delay: Duration::from_millis(10),
            k_paths: 2,
        }
    }
}

/// Why a configuration is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("routing configuration: {0}")]
pub struct ConfigError(pub String);

impl RouterConfig {
    /// Checks the values are consistent.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |s: &str| Err(ConfigError(s.to_owned()));
        if self.probe_interval < Duration::from_millis(1) {
            return err("probe_interval must be at least 1 ms");
        }
        if self.probe_interval_idle < self.probe_interval {
            return err("probe_interval_idle must be at least probe_interval");
        }
        if self.detect_multiplier == 0 {
            return err("detect_multiplier must be at least 1");
        }
        if self.advert_refresh.is_zero() || self.advert_refresh >= self.advert_lifetime {
            return err("advert_refresh must be positive and shorter than advert_lifetime");
        }
        if !(0.0..=10.0).contains(&self.significant_cost_change) {
            return err("significant_cost_change must be between 0 and 10");
        }
        if self.retransmit_interval.is_zero() || self.flood_rate_per_s == 0 {
            return err("retransmit_interval and flood_rate_per_s must be positive");
        }
        if self.k_paths == 0 {
            return err("k_paths must be at least 1");
        }
        Ok(())
    }
}
