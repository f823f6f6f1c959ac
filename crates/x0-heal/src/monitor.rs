//! Monitor: turns samples into clean observations.
//!
//! * Values that are NaN, infinite or outside a metric's range ([`crate::sample::MetricSpec`])
//!   are dropped and counted, never passed on.
//! * Cumulative counters become rates. A counter lower than its previous value was reset (the
//!   process or the kernel program restarted): the new value becomes the reference and no rate
//!   is produced for that interval. Two readings further apart than the gap limit produce no
//!   rate either (a rate averaged over a long silence says nothing about now).

use std::collections::HashMap;
use std::time::Duration;

use x0_routing::Instant;

use crate::sample::{LinkState, Metric, Observation, Sample, Subject};

/// Counts of input the monitor refused or could not use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MonitorStats {
    /// Values dropped for being NaN, infinite or out of range.
    pub rejected_values: u64,
    /// Cumulative counters that went down (taken as resets).
    pub counter_resets: u64,
    /// Counter readings too far from the previous one to give a rate.
    pub counter_gaps: u64,
}

#[derive(Debug, Clone, Copy)]
struct CounterPoint {
    value: u64,
    at: Instant,
}

/// The monitor stage (see the module doc).
#[derive(Debug)]
pub struct Monitor {
    counters: HashMap<(Subject, String), CounterPoint>,
    gap: Duration,
    forget: Duration,
    stats: MonitorStats,
}

impl Monitor {
    /// A monitor that treats readings `gap` apart as discontinuous and forgets counters not
    /// seen for `forget`.
    pub fn new(gap: Duration, forget: Duration) -> Self {
        Self {
            counters: HashMap::new(),
            gap,
            forget,
            stats: MonitorStats::default(),
        }
    }

    /// What was refused so far.
    pub fn stats(&self) -> MonitorStats {
        self.stats
    }

    fn accept(&mut self, subject: Subject, metric: Metric, value: f64, out: &mut Vec<Observation>) {
        let spec = metric.spec();
        if value.is_finite() && value >= spec.min && value <= spec.max {
            out.push(Observation {
                subject,
                metric,
                value,
            });
        } else {
            self.stats.rejected_values += 1;
        }
    }

    /// The per-second rate of a cumulative counter since its previous reading, if that is
    /// meaningful.
    fn rate(&mut self, subject: Subject, name: String, value: u64, now: Instant) -> Option<f64> {
        let key = (subject, name);
        let Some(prev) = self.counters.get(&key).copied() else {
            self.counters.insert(key, CounterPoint { value, at: now });
            return None;
        };
        let dt = now.saturating_since(prev.at);
        if dt.is_zero() {
            // Same instant: keep the older reference so the next interval is measured whole.
            return None;
        }
        self.counters.insert(key, CounterPoint { value, at: now });
        if value < prev.value {
            self.stats.counter_resets += 1;
            return None;
        }
        if dt > self.gap {
            self.stats.counter_gaps += 1;
            return None;
        }
        // Exact in f64 up to 2^53; larger deltas are absurd for one interval anyway.
        let rate = (value - prev.value) as f64 / dt.as_secs_f64();
        rate.is_finite().then_some(rate)
    }

    /// Drops counter references not updated for the forget period.
    pub fn prune(&mut self, now: Instant) {
        let forget = self.forget;
        self.counters
            .retain(|_, p| now.saturating_since(p.at) <= forget);
    }

    /// The observations a sample yields.
    pub fn observe(&mut self, now: Instant, sample: &Sample) -> Vec<Observation> {
        let mut out = Vec::new();
        match sample {
            Sample::Link(s) => {
                let subject = Subject::Link(s.link);
                if s.state == LinkState::Up {
                    if let Some(rtt) = s.rtt_ms {
                        self.accept(subject, Metric::RttMs, rtt, &mut out);
                    }
                    if let Some(loss) = s.loss {
                        self.accept(subject, Metric::Loss, loss, &mut out);
                    }
                }
                if let Some(rx) = s.rx_bytes
                    && let Some(r) = self.rate(subject, "rx_bytes".into(), rx, now)
                {
                    self.accept(subject, Metric::RxBytesPerS, r, &mut out);
                }
            }
            Sample::Probe(p) => {
                // Probe rounds are judged by the path-differential detector; here only their
                // consistency is counted.
                if p.received > p.sent {
                    self.stats.rejected_values += 1;
                }
            }
            Sample::Drops(d) => {
                let subject = d.link.map_or(Subject::Local, Subject::Link);
                for (reason, count) in &d.by_reason {
                    if let Some(r) = self.rate(subject, format!("drops:{reason}"), *count, now) {
                        self.accept(subject, Metric::DropsPerS(reason.clone()), r, &mut out);
                    }
                }
            }
            Sample::Kernel(k) => {
                if let Some(r) = self.rate(Subject::Local, "kernel_drops".into(), k.drops, now) {
                    self.accept(Subject::Local, Metric::KernelDropsPerS, r, &mut out);
                }
                if let Some(r) = self.rate(Subject::Local, "retransmits".into(), k.retransmits, now)
                {
                    self.accept(Subject::Local, Metric::RetransmitsPerS, r, &mut out);
                }
            }
            Sample::Process(p) => {
                if let Some(r) = self.rate(Subject::Local, "cpu_ms".into(), p.cpu_time_ms, now) {
                    if p.cores == 0 {
                        self.stats.rejected_values += 1;
                    } else {
                        let share = r / 1000.0 / f64::from(p.cores);
                        self.accept(Subject::Local, Metric::CpuShare, share, &mut out);
                    }
                }
                self.accept(
                    Subject::Local,
                    Metric::RssMib,
                    p.rss_bytes as f64 / 1_048_576.0,
                    &mut out,
                );
                if let Some(lag) = p.loop_lag_ms {
                    self.accept(Subject::Local, Metric::LoopLagMs, lag, &mut out);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::{DropCounters, KernelCounters, LinkRef, LinkSample, ProcessStats};
    use x0_wire::NodeId;

    fn t(ms: u64) -> Instant {
        Instant::from_millis(ms)
    }

    fn monitor() -> Monitor {
        Monitor::new(Duration::from_secs(10), Duration::from_secs(600))
    }

    fn kernel(drops: u64) -> Sample {
        Sample::Kernel(KernelCounters {
            drops,
            retransmits: 0,
        })
    }

    fn rates(obs: &[Observation]) -> Vec<f64> {
        obs.iter()
            .filter(|o| o.metric == Metric::KernelDropsPerS)
            .map(|o| o.value)
            .collect()
    }

    #[test]
    fn counters_become_rates_and_resets_give_nothing() {
        let mut m = monitor();
        assert!(rates(&m.observe(t(0), &kernel(100))).is_empty());
        assert_eq!(rates(&m.observe(t(1000), &kernel(150))), vec![50.0]);
        // Counter went down: a reset, not −150/s nor 2^64/s.
        assert!(rates(&m.observe(t(2000), &kernel(0))).is_empty());
        assert_eq!(m.stats().counter_resets, 1);
        assert_eq!(rates(&m.observe(t(2500), &kernel(10))), vec![20.0]);
    }

    #[test]
    fn gaps_and_repeated_instants_give_no_rate() {
        let mut m = monitor();
        m.observe(t(0), &kernel(0));
        assert!(rates(&m.observe(t(0), &kernel(5))).is_empty());
        assert!(rates(&m.observe(t(60_000), &kernel(6000))).is_empty());
        assert_eq!(m.stats().counter_gaps, 2, "drops and retransmits");
        assert_eq!(rates(&m.observe(t(61_000), &kernel(6010))), vec![10.0]);
        // Time going backwards (the healer normally prevents it) gives no rate either.
        assert!(rates(&m.observe(t(30_000), &kernel(7000))).is_empty());
    }

    #[test]
    fn garbage_values_are_dropped_and_counted() {
        let mut m = monitor();
        let link = LinkRef {
            id: 1,
            neighbor: NodeId::from_bytes([1; 16]),
        };
        for (rtt, loss) in [
            (f64::NAN, f64::INFINITY),
            (-1.0, 1.5),
            (f64::NEG_INFINITY, -0.1),
        ] {
            let s = Sample::Link(LinkSample {
                rtt_ms: Some(rtt),
                loss: Some(loss),
                ..LinkSample::up(link)
            });
            assert!(m.observe(t(0), &s).is_empty());
        }
        assert_eq!(m.stats().rejected_values, 6);
        let s = Sample::Link(LinkSample {
            rtt_ms: Some(1.5),
            loss: Some(0.0),
            ..LinkSample::up(link)
        });
        assert_eq!(m.observe(t(0), &s).len(), 2);
    }

    #[test]
    fn cpu_share_comes_from_cumulative_cpu_time() {
        let mut m = monitor();
        let p = |cpu| {
            Sample::Process(ProcessStats {
                cpu_time_ms: cpu,
                cores: 2,
                rss_bytes: 64 << 20,
                loop_lag_ms: None,
                loop_stall_ms: None,
            })
        };
        m.observe(t(0), &p(0));
        let obs = m.observe(t(1000), &p(1000));
        let cpu: Vec<_> = obs
            .iter()
            .filter(|o| o.metric == Metric::CpuShare)
            .collect();
        assert_eq!(cpu.len(), 1);
        assert!((cpu[0].value - 0.5).abs() < 1e-9);
        assert!(
            obs.iter()
                .any(|o| o.metric == Metric::RssMib && (o.value - 64.0).abs() < 1e-9)
        );
    }

    #[test]
    fn drop_reasons_are_separate_series() {
        let mut m = monitor();
        let d = |a, b| {
            Sample::Drops(DropCounters {
                link: None,
                by_reason: vec![("no_route".into(), a), ("decrypt".into(), b)],
            })
        };
        m.observe(t(0), &d(0, 0));
        let obs = m.observe(t(1000), &d(10, 0));
        assert_eq!(obs.len(), 2);
        assert_eq!(obs[0].metric, Metric::DropsPerS("no_route".into()));
        assert_eq!(obs[0].value, 10.0);
        assert_eq!(obs[1].value, 0.0);
        m.prune(t(1_000_000));
        assert!(m.observe(t(1_000_000), &d(20, 0)).is_empty(), "forgotten");
    }
}
