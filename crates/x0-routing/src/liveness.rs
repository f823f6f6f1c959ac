//! BFD-style liveness on one link (RFC 5880 in spirit, asynchronous mode with echo of our own
//! timestamps).
//!
//! Each side sends a [`Probe`] every `tx_interval` and announces that interval and its detect
//! multiplier in the probe; the other side answers with a [`ProbeAck`] echoing the timestamp, so
//! the sender measures RTT on its own clock. A neighbour is declared down when nothing (probe or
//! ack) has been heard from it for `its multiplier × its announced interval`. The interval backs
//! off (doubling) on a link idle for `idle_after`, up to `probe_interval_idle`, and drops back to
//! `probe_interval` as soon as the link carries traffic again.

use std::collections::VecDeque;
use std::time::Duration;

use x0_wire::NodeId;
use x0_wire::routing::{Probe, ProbeAck};

use crate::config::RouterConfig;
use crate::quality::LinkQuality;
use crate::time::Instant;

/// Probes remembered for the loss window.
const LOSS_WINDOW: usize = 32;
/// Longest interval a peer may announce (a sanity bound on an authenticated peer's value).
const MAX_PEER_INTERVAL: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy)]
struct Sent {
    seq: u32,
    at: Instant,
    acked: bool,
}

/// Liveness and quality state of one link.
#[derive(Debug, Clone)]
pub struct Session {
    neighbor: NodeId,
    tx_seq: u32,
    tx_interval: Duration,
    next_probe: Instant,
    last_heard: Instant,
    peer_interval: Duration,
    peer_multiplier: u8,
    last_traffic: Instant,
    sent: VecDeque<Sent>,
    quality: LinkQuality,
}

fn interval_ms(d: Duration) -> u16 {
    u16::try_from(d.as_millis()).unwrap_or(u16::MAX).max(1)
}

impl Session {
    /// A session for a link that just came up; the first probe goes out at once.
    pub fn new(neighbor: NodeId, now: Instant, cfg: &RouterConfig) -> Self {
        Self {
            neighbor,
            tx_seq: 0,
            tx_interval: cfg.probe_interval,
            next_probe: now,
            last_heard: now,
            peer_interval: cfg.probe_interval,
            peer_multiplier: cfg.detect_multiplier.max(1),
            last_traffic: now,
            sent: VecDeque::with_capacity(LOSS_WINDOW),
            quality: LinkQuality::default(),
        }
    }

    /// The neighbour's node ID.
    pub fn neighbor(&self) -> NodeId {
        self.neighbor
    }

    /// When the next probe is due.
    pub fn probe_due(&self) -> Instant {
        self.next_probe
    }

    /// When the neighbour will be declared down if nothing more is heard.
    pub fn detect_deadline(&self) -> Instant {
        self.last_heard + self.peer_interval * u32::from(self.peer_multiplier)
    }

    /// The current probe interval.
    pub fn tx_interval(&self) -> Duration {
        self.tx_interval
    }

    /// Measured quality.
    pub fn quality(&self) -> &LinkQuality {
        &self.quality
    }

    /// Builds the probe due now and schedules the next one. Returns the probe and whether the
    /// quality class changed (the loss window advanced).
    pub fn make_probe(&mut self, now: Instant, cfg: &RouterConfig) -> (Probe, bool) {
        if now.saturating_since(self.last_traffic) >= cfg.idle_after {
            self.tx_interval = (self.tx_interval * 2).min(cfg.probe_interval_idle);
        } else {
            self.tx_interval = cfg.probe_interval;
        }
        self.tx_seq = self.tx_seq.wrapping_add(1);
        if self.sent.len() == LOSS_WINDOW {
            self.sent.pop_front();
        }
        self.sent.push_back(Sent {
            seq: self.tx_seq,
            at: now,
            acked: false,
        });
        self.next_probe = now + self.tx_interval;
        let changed = self.reevaluate(now);
        let probe = Probe {
            seq: self.tx_seq,
            sent_at_us: now.as_micros(),
            tx_interval_ms: interval_ms(self.tx_interval),
            multiplier: cfg.detect_multiplier.max(1),
        };
        (probe, changed)
    }

    fn heard(&mut self, now: Instant, interval_ms: u16, multiplier: u8) {
        self.last_heard = now;
        self.peer_interval =
            Duration::from_millis(u64::from(interval_ms.max(1))).min(MAX_PEER_INTERVAL);
        self.peer_multiplier = multiplier.max(1);
    }

    /// A probe from the neighbour: returns the answer.
    pub fn on_probe(&mut self, now: Instant, p: &Probe, cfg: &RouterConfig) -> ProbeAck {
        self.heard(now, p.tx_interval_ms, p.multiplier);
        ProbeAck {
            seq: p.seq,
            echo_sent_at_us: p.sent_at_us,
            tx_interval_ms: interval_ms(self.tx_interval),
            multiplier: cfg.detect_multiplier.max(1),
        }
    }

    /// An answer to one of our probes. Returns whether the quality class changed.
    pub fn on_ack(&mut self, now: Instant, a: &ProbeAck) -> bool {
        self.heard(now, a.tx_interval_ms, a.multiplier);
        let Some(sent) = self.sent.iter_mut().find(|s| s.seq == a.seq && !s.acked) else {
            return false; // duplicate, or older than the window
        };
        if sent.at.as_micros() != a.echo_sent_at_us {
            return false; // not our timestamp: ignore the sample
        }
        sent.acked = true;
        self.quality.rtt_sample(now.saturating_since(sent.at));
        self.reevaluate(now)
    }

    /// Records that the link carries traffic; tightens the probe interval at once.
    pub fn note_traffic(&mut self, now: Instant, cfg: &RouterConfig) {
        self.last_traffic = now;
        if self.tx_interval > cfg.probe_interval {
            self.tx_interval = cfg.probe_interval;
            self.next_probe = self.next_probe.min(now + cfg.probe_interval);
        }
    }

    /// Loss over the probes old enough to have been answered.
    fn reevaluate(&mut self, now: Instant) -> bool {
        let grace = Duration::from_secs_f64(self.quality.rtt_ms() * 2.0 / 1000.0)
            .max(self.tx_interval)
            .max(Duration::from_millis(10));
        let (mut eligible, mut lost) = (0u32, 0u32);
        for s in &self.sent {
            if s.acked {
                eligible += 1;
            } else if now.saturating_since(s.at) > grace {
                eligible += 1;
                lost += 1;
            }
        }
        if eligible == 0 {
            return false;
        }
        self.quality.update(f64::from(lost) / f64::from(eligible))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> RouterConfig {
        RouterConfig::default()
    }

    fn t(ms: u64) -> Instant {
        Instant::from_millis(ms)
    }

    #[test]
    fn probes_every_interval_and_detects_after_multiplier() {
        let c = cfg();
        let mut s = Session::new(NodeId::from_bytes([1; 16]), t(0), &c);
        assert_eq!(s.probe_due(), t(0));
        let (p, _) = s.make_probe(t(0), &c);
        assert_eq!((p.seq, p.tx_interval_ms, p.multiplier), (1, 100, 3));
        assert_eq!(s.probe_due(), t(100));
        assert_eq!(s.detect_deadline(), t(300));
        let ack = ProbeAck {
            seq: 1,
            echo_sent_at_us: 0,
            tx_interval_ms: 50,
            multiplier: 4,
        };
        s.on_ack(t(2), &ack);
        assert_eq!(
            s.detect_deadline(),
            t(202),
            "peer's 4 × 50 ms from the last packet heard"
        );
        assert!((s.quality().rtt_ms() - 2.0).abs() < 1e-9);
    }

    #[test]
    fn acks_with_a_wrong_timestamp_or_twice_are_ignored() {
        let c = cfg();
        let mut s = Session::new(NodeId::from_bytes([1; 16]), t(0), &c);
        s.make_probe(t(0), &c);
        s.on_ack(
            t(5),
            &ProbeAck {
                seq: 1,
                echo_sent_at_us: 999,
                tx_interval_ms: 100,
                multiplier: 3,
            },
        );
        assert!(!s.quality().has_rtt());
        s.on_ack(
            t(5),
            &ProbeAck {
                seq: 1,
                echo_sent_at_us: 0,
                tx_interval_ms: 100,
                multiplier: 3,
            },
        );
        s.on_ack(
            t(9),
            &ProbeAck {
                seq: 1,
                echo_sent_at_us: 0,
                tx_interval_ms: 100,
                multiplier: 3,
            },
        );
        assert!((s.quality().rtt_ms() - 5.0).abs() < 1e-9);
    }

    #[test]
    fn unanswered_probes_count_as_loss() {
        let c = cfg();
        let mut s = Session::new(NodeId::from_bytes([1; 16]), t(0), &c);
        for i in 0..20u64 {
            let now = t(i * 100);
            let (p, _) = s.make_probe(now, &c);
            if i % 2 == 0 {
                s.on_ack(
                    now + Duration::from_millis(1),
                    &ProbeAck {
                        seq: p.seq,
                        echo_sent_at_us: p.sent_at_us,
                        tx_interval_ms: 100,
                        multiplier: 3,
                    },
                );
            }
        }
        assert!(
            (s.quality().loss() - 0.5).abs() < 0.1,
            "{}",
            s.quality().loss()
        );
    }

    #[test]
    fn idle_links_back_off_and_traffic_tightens_them() {
        let c = RouterConfig {
            probe_interval_idle: Duration::from_millis(800),
            idle_after: Duration::from_secs(1),
            ..cfg()
        };
        let mut s = Session::new(NodeId::from_bytes([1; 16]), t(0), &c);
        let mut now = t(0);
        let mut intervals = Vec::new();
        for _ in 0..20 {
            now = s.probe_due();
            let (p, _) = s.make_probe(now, &c);
            intervals.push(p.tx_interval_ms);
        }
        assert_eq!(intervals[0], 100);
        assert_eq!(*intervals.last().unwrap(), 800);
        assert!(intervals.windows(2).all(|w| w[1] >= w[0]));
        s.note_traffic(now, &c);
        assert_eq!(s.tx_interval(), Duration::from_millis(100));
        assert!(s.probe_due() <= now + Duration::from_millis(100));
    }
}
