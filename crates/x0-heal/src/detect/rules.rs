//! Fixed rules: what is wrong whatever the baseline says.
//!
//! | Rule | Symptom | Confidence |
//! |---|---|---|
//! | link reported down | `link_down` | 0.95 (local), 0.8 (silent) |
//! | `flap_transitions` up/down changes within `flap_window_ms` | `flapping`, until stable for `flap_quiet_ms` | 0.9 |
//! | loss ≥ `loss_limit` | `high_loss` | 0.75 |
//! | RTT ≥ `rtt_limit_ms` | `high_rtt` | 0.7 |
//! | routing class BAD | `bad_quality` | 0.5 |
//! | drops of one reason ≥ `drop_rate_limit_per_s` (2 samples in a row) | `drop_rate` | 0.6 |
//! | decrypt/auth/replay drops on a link ≥ 1/10 of that | `crypto_failures` | 0.8 |
//! | CPU share ≥ `cpu_limit` (2 samples in a row) | `resource_pressure` | 0.7 |
//!
//! A probe miss on an up link is not a symptom (the routing core declares the link down after
//! its detect multiplier); it only makes the monitor sample faster.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use x0_routing::{Instant, LinkId, QualityClass};

use super::{Detector, Symptom, SymptomKind};
use crate::config::{DetectConfig, ms};
use crate::sample::{DownCause, LinkRef, LinkState, Metric, Observation, Sample, Subject};

#[derive(Debug)]
struct LinkTrack {
    state: LinkState,
    transitions: VecDeque<Instant>,
    flapping_until: Option<Instant>,
    misses: u32,
    last_at: Instant,
}

/// Whether a drop reason names a cryptographic failure.
pub fn is_crypto_reason(reason: &str) -> bool {
    let r = reason.to_ascii_lowercase();
    ["decrypt", "auth", "replay"].iter().any(|w| r.contains(w))
}

/// The fixed-rule detector.
#[derive(Debug)]
pub struct RuleDetector {
    cfg: DetectConfig,
    links: HashMap<LinkId, LinkTrack>,
    streaks: HashMap<(Subject, Metric), u32>,
}

impl RuleDetector {
    /// A detector with the given limits.
    pub fn new(cfg: &DetectConfig) -> Self {
        Self {
            cfg: cfg.clone(),
            links: HashMap::new(),
            streaks: HashMap::new(),
        }
    }

    fn flap_window(&self) -> Duration {
        ms(self.cfg.flap_window_ms)
    }

    fn link(&mut self, now: Instant, link: LinkRef, state: LinkState, misses: u32) -> u32 {
        let window = self.flap_window();
        let (threshold, quiet) = (
            usize::try_from(self.cfg.flap_transitions).unwrap_or(usize::MAX),
            ms(self.cfg.flap_quiet_ms),
        );
        if self.links.len() >= self.cfg.max_series && !self.links.contains_key(&link.id) {
            // Evict the longest silent link.
            if let Some(id) = self
                .links
                .iter()
                .min_by_key(|(_, t)| t.last_at)
                .map(|(id, _)| *id)
            {
                self.links.remove(&id);
            }
        }
        let t = self.links.entry(link.id).or_insert(LinkTrack {
            state,
            transitions: VecDeque::new(),
            flapping_until: None,
            misses: 0,
            last_at: now,
        });
        if (t.state == LinkState::Up) != (state == LinkState::Up) {
            t.transitions.push_back(now);
        }
        t.state = state;
        t.misses = misses;
        t.last_at = now;
        while t
            .transitions
            .front()
            .is_some_and(|&at| now.saturating_since(at) > window)
        {
            t.transitions.pop_front();
        }
        if t.transitions.len() >= threshold {
            t.flapping_until = Some(now + quiet);
        }
        match t.flapping_until {
            Some(until) if now < until => u32::try_from(t.transitions.len()).unwrap_or(u32::MAX),
            _ => {
                t.flapping_until = None;
                0
            }
        }
    }

    fn streak(&mut self, subject: Subject, metric: &Metric, over: bool) -> u32 {
        let key = (subject, metric.clone());
        if over {
            let s = self.streaks.entry(key).or_insert(0);
            *s = s.saturating_add(1);
            *s
        } else {
            self.streaks.remove(&key);
            0
        }
    }
}

impl Detector for RuleDetector {
    fn name(&self) -> &'static str {
        "rules"
    }

    fn observe(
        &mut self,
        now: Instant,
        sample: &Sample,
        observations: &[Observation],
        out: &mut Vec<Symptom>,
    ) {
        let cfg = self.cfg.clone();
        let mut push = |subject, kind, value, expected, confidence| {
            out.push(Symptom {
                detector: "rules",
                subject,
                kind,
                value,
                expected,
                confidence,
            });
        };
        if let Sample::Link(s) = sample {
            let subject = Subject::Link(s.link);
            let flaps = self.link(now, s.link, s.state, s.probe_misses);
            if flaps > 0 {
                push(
                    subject,
                    SymptomKind::Flapping { transitions: flaps },
                    f64::from(flaps),
                    f64::from(cfg.flap_transitions),
                    0.9,
                );
            }
            match s.state {
                LinkState::Down(cause) => push(
                    subject,
                    SymptomKind::LinkDown { cause },
                    0.0,
                    1.0,
                    match cause {
                        DownCause::Local => 0.95,
                        DownCause::Silent => 0.8,
                    },
                ),
                LinkState::Up => {
                    if s.class == Some(QualityClass::Bad) {
                        push(subject, SymptomKind::BadQuality, 4.0, 3.0, 0.5);
                    }
                }
            }
        }
        for o in observations {
            match &o.metric {
                Metric::Loss if o.value >= cfg.loss_limit => push(
                    o.subject,
                    SymptomKind::HighLoss,
                    o.value,
                    cfg.loss_limit,
                    0.75,
                ),
                Metric::RttMs if o.value >= cfg.rtt_limit_ms => push(
                    o.subject,
                    SymptomKind::HighRtt,
                    o.value,
                    cfg.rtt_limit_ms,
                    0.7,
                ),
                Metric::DropsPerS(reason) => {
                    let crypto = matches!(o.subject, Subject::Link(_)) && is_crypto_reason(reason);
                    let limit = if crypto {
                        cfg.drop_rate_limit_per_s / 10.0
                    } else {
                        cfg.drop_rate_limit_per_s
                    };
                    if self.streak(o.subject, &o.metric, o.value >= limit) >= 2 {
                        let (kind, conf) = if crypto {
                            (
                                SymptomKind::CryptoFailures {
                                    reason: reason.clone(),
                                },
                                0.8,
                            )
                        } else {
                            (
                                SymptomKind::DropRate {
                                    reason: reason.clone(),
                                },
                                0.6,
                            )
                        };
                        push(o.subject, kind, o.value, limit, conf);
                    }
                }
                Metric::KernelDropsPerS => {
                    let limit = cfg.drop_rate_limit_per_s;
                    if self.streak(o.subject, &o.metric, o.value >= limit) >= 2 {
                        push(
                            o.subject,
                            SymptomKind::DropRate {
                                reason: "kernel".into(),
                            },
                            o.value,
                            limit,
                            0.6,
                        );
                    }
                }
                Metric::CpuShare
                    if self.streak(o.subject, &o.metric, o.value >= cfg.cpu_limit) >= 2 =>
                {
                    push(
                        o.subject,
                        SymptomKind::ResourcePressure {
                            metric: Metric::CpuShare,
                        },
                        o.value,
                        cfg.cpu_limit,
                        0.7,
                    );
                }
                _ => {}
            }
        }
    }

    fn tick(&mut self, now: Instant, _out: &mut Vec<Symptom>) {
        let forget = ms(self.cfg.forget_after_ms);
        self.links
            .retain(|_, t| now.saturating_since(t.last_at) <= forget);
    }

    fn suspicious(&self) -> bool {
        self.links
            .values()
            .any(|t| t.state == LinkState::Up && t.misses > 0)
            || self.streaks.values().any(|&s| s == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::{DropCounters, LinkSample};
    use x0_wire::NodeId;

    fn link() -> LinkRef {
        LinkRef {
            id: 4,
            neighbor: NodeId::from_bytes([4; 16]),
        }
    }

    fn run(d: &mut RuleDetector, t_ms: u64, s: Sample) -> Vec<Symptom> {
        let now = Instant::from_millis(t_ms);
        let mut m = crate::monitor::Monitor::new(Duration::from_secs(10), Duration::from_secs(60));
        let obs = m.observe(now, &s);
        let mut out = Vec::new();
        d.observe(now, &s, &obs, &mut out);
        out
    }

    fn kinds(v: &[Symptom]) -> Vec<&'static str> {
        v.iter().map(|s| s.kind.name()).collect()
    }

    #[test]
    fn link_down_loss_and_rtt_rules() {
        let mut d = RuleDetector::new(&DetectConfig::default());
        let s = run(
            &mut d,
            0,
            Sample::Link(LinkSample::down(link(), DownCause::Local)),
        );
        assert_eq!(kinds(&s), ["link_down"]);
        assert_eq!(s[0].confidence, 0.95);
        let s = run(
            &mut d,
            100,
            Sample::Link(LinkSample {
                loss: Some(0.3),
                rtt_ms: Some(450.0),
                class: Some(QualityClass::Bad),
                ..LinkSample::up(link())
            }),
        );
        assert_eq!(kinds(&s), ["bad_quality", "high_rtt", "high_loss"]);
        let s = run(
            &mut d,
            200,
            Sample::Link(LinkSample {
                loss: Some(0.05),
                rtt_ms: Some(50.0),
                ..LinkSample::up(link())
            }),
        );
        assert!(s.is_empty());
    }

    #[test]
    fn flapping_is_reported_until_the_link_is_quiet() {
        let cfg = DetectConfig::default();
        let mut d = RuleDetector::new(&cfg);
        let mut t = 0;
        let mut first_flap = None;
        for i in 0..10 {
            let s = if i % 2 == 0 {
                LinkSample::down(link(), DownCause::Local)
            } else {
                LinkSample::up(link())
            };
            let out = run(&mut d, t, Sample::Link(s));
            if first_flap.is_none() && kinds(&out).contains(&"flapping") {
                first_flap = Some(i);
            }
            t += 1000;
        }
        // Transitions counted from the first change: down at 0 is the first state, so the
        // 4th transition is sample 4.
        assert_eq!(first_flap, Some(4));
        // Stable (up) from now: flapping until flap_quiet has passed.
        let last_change = t - 1000;
        let out = run(
            &mut d,
            last_change + 20_000,
            Sample::Link(LinkSample::up(link())),
        );
        assert!(kinds(&out).contains(&"flapping"));
        let out = run(
            &mut d,
            last_change + cfg.flap_quiet_ms + 1,
            Sample::Link(LinkSample::up(link())),
        );
        assert!(out.is_empty(), "{out:?}");
    }

    #[test]
    fn drop_rules_need_two_samples_and_tell_crypto_apart() {
        let mut d = RuleDetector::new(&DetectConfig::default());
        let mut m = crate::monitor::Monitor::new(Duration::from_secs(10), Duration::from_secs(60));
        let mut all = Vec::new();
        for i in 0..4u64 {
            let s = Sample::Drops(DropCounters {
                link: Some(link()),
                by_reason: vec![("decrypt".into(), i * 500), ("no_route".into(), i * 500)],
            });
            let now = Instant::from_millis(i * 1000);
            let obs = m.observe(now, &s);
            let mut out = Vec::new();
            d.observe(now, &s, &obs, &mut out);
            all.push(kinds(&out));
        }
        // 500/s: above the crypto limit (100/s), below the general one (1000/s).
        assert!(all[0].is_empty() && all[1].is_empty(), "{all:?}");
        assert_eq!(all[2], ["crypto_failures"]);
        assert_eq!(all[3], ["crypto_failures"]);
        assert!(is_crypto_reason("AEAD_Decrypt_Failed"));
        assert!(!is_crypto_reason("no_route"));
    }

    #[test]
    fn probe_misses_are_a_suspicion_not_a_symptom() {
        let mut d = RuleDetector::new(&DetectConfig::default());
        let s = run(
            &mut d,
            0,
            Sample::Link(LinkSample {
                probe_misses: 2,
                ..LinkSample::up(link())
            }),
        );
        assert!(s.is_empty());
        assert!(d.suspicious());
        run(&mut d, 100, Sample::Link(LinkSample::up(link())));
        assert!(!d.suspicious());
    }
}
