//! BFD-style liveness on one link (RFC 5880 in spirit, asynchronous mode).
//!
//! Both ends send a [`Probe`] every `tx_interval` and announce that interval and their detect
//! multiplier in it. A neighbour is declared down when nothing has been heard from it for `its
//! multiplier × its announced interval`. There are no separate answers: every probe echoes the
//! timestamp of the newest probe received from the other end and how long it was held, so each
//! end measures RTT on its own clock, and reports the loss it sees on the other end's probes
//! (from their sequence numbers), so each end knows the loss in both directions.
//!
//! Probes are sent on a grid of `probe_interval` ticks anchored at the router's start, so a node
//! wakes once per tick for all its links. The interval backs off (doubling) on a link idle for
//! `idle_after`, up to `probe_interval_idle`, and drops back as soon as the link carries traffic.

use std::time::Duration;

use x0_wire::NodeId;
use x0_wire::routing::Probe;

use crate::config::RouterConfig;
use crate::quality::{LinkQuality, loss_floor};
use crate::time::Instant;

/// Probe sequence numbers remembered for the receive-loss window.
const LOSS_WINDOW: u32 = 64;
/// Probes that must have been seen before a loss figure is trusted.
const MIN_LOSS_SAMPLES: u32 = 8;
/// Longest interval a peer may announce (a sanity bound on an authenticated peer's value).
const MAX_PEER_INTERVAL: Duration = Duration::from_secs(60);
/// Longest RTT sample accepted.
const MAX_RTT: Duration = Duration::from_secs(30);
/// Least grace a late probe gets before its neighbour is declared down (timer granularity).
const GRACE_MIN: Duration = Duration::from_millis(1);

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
    /// Newest probe received: its `sent_at_us` and when it arrived.
    echo: Option<(u64, Instant)>,
    /// Highest sequence number received and the receive bitmap below it (bit i: seq − i).
    rx_highest: Option<u32>,
    rx_bits: u64,
    rx_seen: u32,
    /// Loss the peer reports on our probes.
    tx_loss: f64,
    quality: LinkQuality,
}

fn interval_ms(d: Duration) -> u16 {
    u16::try_from(d.as_millis()).unwrap_or(u16::MAX).max(1)
}

/// The first tick of the `grid`, anchored at `epoch`, at or after `t`.
fn next_tick(epoch: Instant, grid: Duration, t: Instant) -> Instant {
    let g = u64::try_from(grid.as_micros()).unwrap_or(u64::MAX).max(1);
    let since = t.as_micros().saturating_sub(epoch.as_micros());
    Instant::from_micros(
        epoch
            .as_micros()
            .saturating_add(since.div_ceil(g).saturating_mul(g)),
    )
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
            echo: None,
            rx_highest: None,
            rx_bits: 0,
            rx_seen: 0,
            tx_loss: 0.0,
            quality: LinkQuality::default(),
        }
    }

    /// Seeds the RTT estimate (warm start).
    pub fn seed_rtt(&mut self, rtt: Duration) {
        self.quality.seed(rtt);
    }

    /// The neighbour's node ID.
    pub fn neighbor(&self) -> NodeId {
        self.neighbor
    }

    /// When the next probe is due.
    pub fn probe_due(&self) -> Instant {
        self.next_probe
    }

    /// When the neighbour will be declared down if nothing more is heard: its multiplier × its
    /// interval after the last probe arrived, plus a grace for delay variation. The neighbour's
    /// probes leave on a fixed grid, so without a grace its `multiplier`-th probe after the last
    /// one heard would be due exactly at the deadline and would miss it about half the time:
    /// two lost probes in a row, not three, would take the link down.
    pub fn detect_deadline(&self) -> Instant {
        self.last_heard + self.peer_interval * u32::from(self.peer_multiplier) + self.grace()
    }

    /// How late a probe may arrive relative to the one before it and still count: 1 ms (timer
    /// granularity) plus four times the measured RTT variation, at most half an interval.
    fn grace(&self) -> Duration {
        let jitter = Duration::from_secs_f64(self.quality.jitter_ms().max(0.0) / 1000.0);
        (GRACE_MIN + jitter * 4).min(self.peer_interval / 2)
    }

    /// Probe intervals of the neighbour's that passed without a word from it, counted from
    /// half an interval after the one when its probe was due (so that a probe a little late
    /// is not a miss); the neighbour is declared down at its detect multiplier.
    pub fn missed_intervals(&self, now: Instant) -> u32 {
        let since = now.saturating_since(self.last_heard);
        let interval = self.peer_interval.max(Duration::from_micros(1));
        let late = since.saturating_sub(interval / 2);
        u32::try_from(late.as_micros() / interval.as_micros()).unwrap_or(u32::MAX)
    }

    /// The current probe interval.
    pub fn tx_interval(&self) -> Duration {
        self.tx_interval
    }

    /// Measured quality.
    pub fn quality(&self) -> &LinkQuality {
        &self.quality
    }

    /// Loss measured on the neighbour's probes.
    pub fn rx_loss(&self) -> f64 {
        let (lost, span) = self.rx_window();
        if span == 0 {
            return 0.0;
        }
        f64::from(lost) / f64::from(span)
    }

    /// Probes of the neighbour's lost and expected in the receive window; `(0, 0)` while
    /// fewer than `MIN_LOSS_SAMPLES` were expected.
    fn rx_window(&self) -> (u32, u32) {
        let Some(highest) = self.rx_highest else {
            return (0, 0);
        };
        if self.rx_seen < MIN_LOSS_SAMPLES {
            return (0, 0);
        }
        let span = self.rx_seen.min(LOSS_WINDOW).min(highest.saturating_add(1));
        let mask = if span >= 64 {
            u64::MAX
        } else {
            (1u64 << span) - 1
        };
        let got = (self.rx_bits & mask).count_ones();
        (span.saturating_sub(got), span)
    }

    /// The least round-trip loss the probes show with confidence (see
    /// [`crate::quality::loss_floor`]): one lost probe among the first few is not a collapse.
    /// The neighbour's figure for our probes stands on at most as many probes as we sent.
    pub fn loss_floor(&self) -> f64 {
        let (lost, span) = self.rx_window();
        let rx = loss_floor(lost, span);
        let sent = self.tx_seq.min(LOSS_WINDOW);
        let tx = loss_floor((self.tx_loss * f64::from(sent)).round() as u32, sent);
        1.0 - (1.0 - rx) * (1.0 - tx)
    }

    /// Loss the neighbour reports on our probes.
    pub fn tx_loss(&self) -> f64 {
        self.tx_loss
    }

    /// Builds the probe due now and schedules the next one on the router's tick grid.
    pub fn make_probe(&mut self, now: Instant, cfg: &RouterConfig, epoch: Instant) -> Probe {
        if now.saturating_since(self.last_traffic) >= cfg.idle_after {
            self.tx_interval = (self.tx_interval * 2).min(cfg.probe_interval_idle);
        } else {
            self.tx_interval = cfg.probe_interval;
        }
        self.tx_seq = self.tx_seq.wrapping_add(1);
        let half_tick = cfg.probe_interval / 2;
        self.next_probe = next_tick(
            epoch,
            cfg.probe_interval,
            now + self.tx_interval.saturating_sub(half_tick),
        )
        .max(now + Duration::from_micros(1));
        let (echo_sent_at_us, echo_hold_us) = match self.echo {
            Some((sent, at)) => (
                sent,
                u32::try_from(now.saturating_since(at).as_micros()).unwrap_or(u32::MAX),
            ),
            None => (0, 0),
        };
        Probe {
            seq: self.tx_seq,
            sent_at_us: now.as_micros(),
            tx_interval_ms: interval_ms(self.tx_interval),
            multiplier: cfg.detect_multiplier.max(1),
            echo_sent_at_us,
            echo_hold_us,
            rx_loss_permille: (self.rx_loss() * 1000.0).round() as u16,
        }
    }

    /// A probe from the neighbour. Returns whether the quality class changed.
    pub fn on_probe(&mut self, now: Instant, p: &Probe) -> bool {
        self.last_heard = now;
        self.peer_interval =
            Duration::from_millis(u64::from(p.tx_interval_ms.max(1))).min(MAX_PEER_INTERVAL);
        self.peer_multiplier = p.multiplier.max(1);
        // Receive window.
        match self.rx_highest {
            None => {
                self.rx_highest = Some(p.seq);
                self.rx_bits = 1;
                self.rx_seen = 1;
            }
            Some(h) if p.seq > h => {
                let shift = p.seq - h;
                self.rx_bits = if shift >= 64 {
                    0
                } else {
                    self.rx_bits << shift
                };
                self.rx_bits |= 1;
                self.rx_highest = Some(p.seq);
                self.rx_seen = self.rx_seen.saturating_add(shift);
            }
            Some(h) if h - p.seq < 64 => self.rx_bits |= 1 << (h - p.seq),
            Some(_) => {}
        }
        self.echo = Some((p.sent_at_us, now));
        self.tx_loss = (f64::from(p.rx_loss_permille) / 1000.0).clamp(0.0, 1.0);
        // RTT from the echo of one of our probes.
        if p.echo_sent_at_us != 0 && p.echo_sent_at_us <= now.as_micros() {
            let rtt = now
                .saturating_since(Instant::from_micros(p.echo_sent_at_us))
                .saturating_sub(Duration::from_micros(u64::from(p.echo_hold_us)));
            if rtt <= MAX_RTT {
                self.quality.rtt_sample(rtt);
            }
        }
        let round_trip_loss = 1.0 - (1.0 - self.rx_loss()) * (1.0 - self.tx_loss);
        let floor = self.loss_floor();
        self.quality.update_with_floor(round_trip_loss, floor, now)
    }

    /// Records that the link carries traffic; tightens the probe interval at once.
    pub fn note_traffic(&mut self, now: Instant, cfg: &RouterConfig) {
        self.last_traffic = now;
        if self.tx_interval > cfg.probe_interval {
            self.tx_interval = cfg.probe_interval;
            self.next_probe = self.next_probe.min(now + cfg.probe_interval);
        }
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

    /// Two sessions facing each other over a link with one-way delay `d_ms`, probing until
    /// `until_ms`; `drop` decides which probes (by direction and sequence) are lost.
    fn exchange(d_ms: u64, until_ms: u64, drop: impl Fn(bool, u32) -> bool) -> (Session, Session) {
        let c = cfg();
        let mut a = Session::new(NodeId::from_bytes([1; 16]), t(0), &c);
        let mut b = Session::new(NodeId::from_bytes([2; 16]), t(0), &c);
        let mut flight: Vec<(Instant, bool, Probe)> = Vec::new();
        let mut now = t(0);
        while now <= t(until_ms) {
            for (from_a, s) in [(true, &mut a), (false, &mut b)] {
                if s.probe_due() <= now {
                    let p = s.make_probe(now, &c, Instant::ZERO);
                    if !drop(from_a, p.seq) {
                        flight.push((now + Duration::from_millis(d_ms), from_a, p));
                    }
                }
            }
            flight.sort_by_key(|f| f.0);
            while flight.first().is_some_and(|f| f.0 <= now) {
                let (at, from_a, p) = flight.remove(0);
                if from_a {
                    b.on_probe(at, &p);
                } else {
                    a.on_probe(at, &p);
                }
            }
            now = now + Duration::from_millis(1);
        }
        (a, b)
    }

    #[test]
    fn echoes_give_rtt_without_answers() {
        let (a, b) = exchange(3, 2_000, |_, _| false);
        assert!(
            (a.quality().rtt_ms() - 6.0).abs() < 0.01,
            "{}",
            a.quality().rtt_ms()
        );
        assert!((b.quality().rtt_ms() - 6.0).abs() < 0.01);
        assert_eq!((a.rx_loss(), a.tx_loss()), (0.0, 0.0));
    }

    #[test]
    fn loss_is_measured_in_both_directions() {
        // Every fourth probe from a to b is lost.
        let (a, b) = exchange(2, 10_000, |from_a, seq| from_a && seq % 4 == 0);
        assert!((b.rx_loss() - 0.25).abs() < 0.05, "{}", b.rx_loss());
        assert!((a.tx_loss() - 0.25).abs() < 0.05, "{}", a.tx_loss());
        assert_eq!(a.rx_loss(), 0.0);
        assert!((a.quality().loss() - 0.25).abs() < 0.05);
    }

    #[test]
    fn two_lost_probes_in_a_row_do_not_take_a_link_down() {
        // Probes 10 and 11 from a to b are lost; the next one arrives exactly three intervals
        // after the last one heard. b must count it before declaring a down (a timeout due at
        // the same instant as an arrival may run first, so the deadline must be later).
        let c = cfg();
        let mut a = Session::new(NodeId::from_bytes([1; 16]), t(0), &c);
        let mut b = Session::new(NodeId::from_bytes([2; 16]), t(0), &c);
        let mut flight: Vec<(Instant, Probe)> = Vec::new();
        for ms in 0..3_000 {
            let now = t(ms);
            assert!(
                b.detect_deadline() > now,
                "b would declare a down at {ms} ms after two lost probes"
            );
            if a.probe_due() <= now {
                let p = a.make_probe(now, &c, Instant::ZERO);
                if p.seq != 10 && p.seq != 11 {
                    flight.push((now + Duration::from_millis(3), p));
                }
            }
            while flight.first().is_some_and(|f| f.0 <= now) {
                let (at, p) = flight.remove(0);
                b.on_probe(at, &p);
            }
        }
    }

    #[test]
    fn detection_deadline_follows_the_peers_announcement() {
        let c = cfg();
        let mut s = Session::new(NodeId::from_bytes([1; 16]), t(0), &c);
        assert_eq!(s.detect_deadline(), t(301));
        let p = Probe {
            seq: 1,
            sent_at_us: 0,
            tx_interval_ms: 50,
            multiplier: 4,
            echo_sent_at_us: 0,
            echo_hold_us: 0,
            rx_loss_permille: 0,
        };
        s.on_probe(t(10), &p);
        assert_eq!(s.detect_deadline(), t(211));
    }

    #[test]
    fn probes_land_on_the_tick_grid() {
        let c = cfg();
        let mut s = Session::new(NodeId::from_bytes([1; 16]), t(37), &c);
        s.make_probe(t(37), &c, Instant::ZERO);
        assert_eq!(s.probe_due(), t(100));
        s.make_probe(t(100), &c, Instant::ZERO);
        assert_eq!(s.probe_due(), t(200));
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
            let p = s.make_probe(now, &c, Instant::ZERO);
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
