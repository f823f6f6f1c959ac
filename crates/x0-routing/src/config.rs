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
    /// How long receivers keep an advert without a refresh. Default 24 h.
    pub advert_lifetime: Duration,
    /// How often a node re-floods its advert unchanged. Default 20 h. The refresh is a safety
    /// net: flooding is acknowledged and a new neighbour receives the whole database, so
    /// nothing relies on it, and a long period keeps steady-state control traffic tiny.
    pub advert_refresh: Duration,
    /// Shortest time between two adverts of our own (coalesces bursts). Default 20 ms.
    pub min_originate_interval: Duration,
    /// Relative cost change that counts as significant (with at least `significant_cost_delta`
    /// absolute). Default 0.5 (50 %).
    pub significant_cost_change: f64,
    /// Absolute cost change that a significant change must also exceed. Default 10 (1 ms of
    /// one-way latency).
    pub significant_cost_delta: u32,
    /// Per link, damped changes (a significant cost change, or a quality class moving by one
    /// step) are advertised at most this often. Default 10 s.
    pub change_holddown: Duration,
    /// First retransmission of an unacknowledged advert; doubles up to 8× per advert. Default
    /// 300 ms.
    pub retransmit_interval: Duration,
    /// Most advert datagrams sent per neighbour per second (flooding rate limit). Default 2,000.
    pub flood_rate_per_s: u32,
    /// Signature verifications each neighbour may cause per second (the refill of its budget).
    /// An advert that needs one beyond the budget is dropped unacknowledged, so its sender
    /// retransmits it later (after `retransmit_interval`, doubling). Default 1,000 (an ML-DSA-65
    /// verification takes 36–60 µs: at most ~6 % of a core per neighbour).
    pub verify_rate_per_s: u32,
    /// Most verifications a neighbour's budget holds (a new neighbour starts full, so a database
    /// exchange is verified at once). Default 2,000.
    pub verify_burst: u32,
    /// Tokens a bad signature costs the neighbour that sent it, on top of the verification
    /// itself; its budget may go down to `-verify_burst`, so a neighbour that keeps sending bad
    /// signatures has its adverts ignored for a while. Honest neighbours forward only adverts
    /// they verified, so they never pay it. Default 100.
    pub bad_signature_penalty: u32,
    /// Per origin, how often we install and flood on a newer advert in the long run (OSPF's
    /// MinLSArrival, with a burst): each origin has `advert_arrival_burst` tokens, refilled one
    /// per `min_advert_arrival`, and replacing its advert takes one. A newer advert arriving
    /// without a token is verified, acknowledged and held (one per origin, the newest), and
    /// installed and flooded when a token is back; what is held back is counted
    /// (`adverts_rate_limited`). An origin re-signing rapidly thus makes every node re-flood and
    /// recompute routes at most once per interval after its burst; an honest origin's few
    /// changes in a row (a link up, then its measured cost) pass at once. Default 200 ms.
    pub min_advert_arrival: Duration,
    /// Adverts per origin accepted in a row before `min_advert_arrival` applies. Default 3.
    pub advert_arrival_burst: u32,
    /// Most origins the link-state database holds (ours included). Adverts of new origins
    /// beyond it are refused (`rejected_lsdb_full`). Default 16,384: above the largest mesh we
    /// simulate (10,000), and ~100 MB of ML-DSA-signed adverts at worst.
    pub max_origins: usize,
    /// Delay between a topology change and the SPF run that follows (coalesces bursts; fast
    /// reroute covers local failures meanwhile). Default 10 ms.
    pub spf_delay: Duration,
    /// Disjoint paths computed per destination (primary + backups). Default 2.
    pub k_paths: usize,
    /// After one of our links fails, how long forwarding keeps the pre-failure table (with
    /// backup paths for what used the dead link) while the mesh converges. Default 2 s.
    pub frr_hold: Duration,
}

impl Default for RouterConfig {
    fn default() -> Self {
        Self {
            probe_interval: Duration::from_millis(100),
            probe_interval_idle: Duration::from_millis(100),
            idle_after: Duration::from_secs(5),
            detect_multiplier: 3,
            advert_lifetime: Duration::from_secs(24 * 3600),
            advert_refresh: Duration::from_secs(20 * 3600),
            min_originate_interval: Duration::from_millis(20),
            significant_cost_change: 0.5,
            significant_cost_delta: 10,
            change_holddown: Duration::from_secs(10),
            retransmit_interval: Duration::from_millis(300),
            flood_rate_per_s: 2000,
            verify_rate_per_s: 1000,
            verify_burst: 2000,
            bad_signature_penalty: 100,
            min_advert_arrival: Duration::from_millis(200),
            advert_arrival_burst: 3,
            max_origins: 16_384,
            spf_delay: Duration::from_millis(10),
            k_paths: 2,
            frr_hold: Duration::from_secs(2),
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
        if self.verify_rate_per_s == 0 || self.verify_burst == 0 {
            return err("verify_rate_per_s and verify_burst must be positive");
        }
        if self.max_origins == 0 {
            return err("max_origins must be at least 1");
        }
        if self.k_paths == 0 {
            return err("k_paths must be at least 1");
        }
        Ok(())
    }
}
