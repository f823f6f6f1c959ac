//! Link quality: RTT (EWMA), jitter, windowed loss, an ETX-like cost, and a quality class with
//! hysteresis.
//!
//! Thresholds (round-trip loss, smoothed RTT):
//!
//! | Class | loss below | RTT below |
//! |---|---|---|
//! | EXCELLENT | 1 % | 20 ms |
//! | GOOD | 3 % | 50 ms |
//! | FAIR | 10 % | 150 ms |
//! | POOR | 30 % | 500 ms |
//! | BAD | otherwise | |
//!
//! Hysteresis, in time: a link moves one class *down* after staying outside its class's limits
//! for [`DOWNGRADE_HOLD`], and at once to the class it falls in if that is two classes or more
//! below and the fall is *significant*: the least loss its samples show with high confidence
//! (the loss floor, see [`loss_floor`]) is in that class too, so that one lost probe among the
//! first few does not count as a collapse. It moves *up* only after staying inside the better
//! class's limits shrunk by [`UPGRADE_MARGIN`] for [`UPGRADE_HOLD`]. A link whose loss sits at
//! a threshold therefore settles in the worse class instead of flapping (a 1 %-loss link stays
//! GOOD).
//!
//! Cost: `ETX × (one-way latency + 1 ms)` in units of 100 µs, where `ETX = 1 / (1 − loss)` with
//! loss capped at 90 %; the 1 ms per hop makes hop count matter on fast links. A 1 ms-RTT
//! lossless link costs 15; a 20 ms one 110.

use std::time::Duration;

use crate::time::Instant;

/// Quality class of a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum QualityClass {
    /// Loss < 1 %, RTT < 20 ms.
    Excellent = 0,
    /// Loss < 3 %, RTT < 50 ms.
    Good = 1,
    /// Loss < 10 %, RTT < 150 ms.
    Fair = 2,
    /// Loss < 30 %, RTT < 500 ms.
    Poor = 3,
    /// Worse.
    Bad = 4,
}

const LIMITS: [(f64, f64); 4] = [(0.01, 20.0), (0.03, 50.0), (0.10, 150.0), (0.30, 500.0)];
/// Time inside a better class (with margin) before moving up.
pub const UPGRADE_HOLD: Duration = Duration::from_secs(15);
/// Time outside the current class before moving one class down.
pub const DOWNGRADE_HOLD: Duration = Duration::from_secs(3);
/// Factor applied to a better class's limits when deciding to move up.
pub const UPGRADE_MARGIN: f64 = 0.8;
/// Standard normal quantile of the one-sided bound in [`loss_floor`]: 4, a chance of about
/// 3 in 100,000 that the true loss is below the floor. The test is repeated with every probe on
/// every link (a 1,500-node mesh makes 10⁵ of them a second), so at 99 % a mesh with 1 % loss
/// everywhere saw a "significant" fall somewhere every second.
const FLOOR_Z: f64 = 4.0;
const EWMA_RTT: f64 = 0.125;
const EWMA_JITTER: f64 = 0.25;

impl QualityClass {
    /// From its wire value (unknown values read as BAD).
    pub fn from_u8(v: u8) -> Self {
        match v {
            0 => Self::Excellent,
            1 => Self::Good,
            2 => Self::Fair,
            3 => Self::Poor,
            _ => Self::Bad,
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    fn within(self, loss: f64, rtt_ms: f64, margin: f64) -> bool {
        match LIMITS.get(self.index()) {
            Some((l, r)) => loss < l * margin && rtt_ms < r * margin,
            None => true,
        }
    }

    /// The class the raw numbers fall in, without hysteresis.
    pub fn classify(loss: f64, rtt_ms: f64) -> Self {
        [Self::Excellent, Self::Good, Self::Fair, Self::Poor]
            .into_iter()
            .find(|c| c.within(loss, rtt_ms, 1.0))
            .unwrap_or(Self::Bad)
    }
}

/// Running measurements of one link.
#[derive(Debug, Clone)]
pub struct LinkQuality {
    srtt_ms: Option<f64>,
    jitter_ms: f64,
    loss: f64,
    class: QualityClass,
    better_since: Option<Instant>,
    worse_since: Option<Instant>,
}

impl Default for LinkQuality {
    fn default() -> Self {
        Self {
            srtt_ms: None,
            jitter_ms: 0.0,
            loss: 0.0,
            class: QualityClass::Good,
            better_since: None,
            worse_since: None,
        }
    }
}

impl LinkQuality {
    /// Starts from a known RTT, in the class that RTT (and no loss) falls in: for warm starts.
    pub fn seed(&mut self, rtt: Duration) {
        self.srtt_ms = Some(rtt.as_secs_f64() * 1000.0);
        self.class = QualityClass::classify(0.0, self.rtt_ms());
    }

    /// Adds an RTT sample. The first one also sets the class from that RTT (hysteresis starts
    /// from a measured class, not from a guess).
    pub fn rtt_sample(&mut self, rtt: Duration) {
        let ms = rtt.as_secs_f64() * 1000.0;
        match self.srtt_ms {
            None => {
                self.srtt_ms = Some(ms);
                self.class = QualityClass::classify(self.loss, ms);
            }
            Some(s) => {
                self.jitter_ms += EWMA_JITTER * ((ms - s).abs() - self.jitter_ms);
                self.srtt_ms = Some(s + EWMA_RTT * (ms - s));
            }
        }
    }

    /// Sets the windowed loss ratio at `now` and re-evaluates the class, taking the loss as
    /// measured over enough samples to be certain. Returns whether the class changed.
    pub fn update(&mut self, loss: f64, now: Instant) -> bool {
        self.update_with_floor(loss, loss, now)
    }

    /// Sets the windowed loss ratio at `now` and re-evaluates the class; `floor` is the least
    /// loss the samples behind `loss` show with confidence (see [`loss_floor`]): a fall of two
    /// classes or more is taken at once only when `floor` falls that far too. Returns whether
    /// the class changed.
    pub fn update_with_floor(&mut self, loss: f64, floor: f64, now: Instant) -> bool {
        let clamp = |x: f64| {
            if x.is_finite() {
                x.clamp(0.0, 1.0)
            } else {
                1.0
            }
        };
        self.loss = clamp(loss);
        let floor = clamp(floor).min(self.loss);
        let rtt = self.rtt_ms();
        let old = self.class;
        if !self.class.within(self.loss, rtt, 1.0) {
            self.better_since = None;
            let since = *self.worse_since.get_or_insert(now);
            let sure = QualityClass::classify(floor, rtt).max(self.class);
            let one_down = QualityClass::from_u8(self.class as u8 + 1);
            if sure as u8 >= self.class as u8 + 2 {
                self.class = sure;
                self.worse_since = None;
            } else if now.saturating_since(since) >= DOWNGRADE_HOLD {
                self.class = one_down;
                self.worse_since = None;
            }
        } else {
            self.worse_since = None;
            let better = QualityClass::classify(self.loss / UPGRADE_MARGIN, rtt / UPGRADE_MARGIN);
            if better < self.class {
                let since = *self.better_since.get_or_insert(now);
                if now.saturating_since(since) >= UPGRADE_HOLD {
                    self.class = better;
                    self.better_since = None;
                }
            } else {
                self.better_since = None;
            }
        }
        self.class != old
    }

    /// Smoothed RTT in milliseconds (0 before the first sample).
    pub fn rtt_ms(&self) -> f64 {
        self.srtt_ms.unwrap_or(0.0)
    }

    /// Whether any RTT sample arrived.
    pub fn has_rtt(&self) -> bool {
        self.srtt_ms.is_some()
    }

    /// Mean deviation of RTT, milliseconds.
    pub fn jitter_ms(&self) -> f64 {
        self.jitter_ms
    }

    /// Windowed round-trip loss ratio.
    pub fn loss(&self) -> f64 {
        self.loss
    }

    /// Current class.
    pub fn class(&self) -> QualityClass {
        self.class
    }

    /// ETX-like routing cost (see the module doc).
    pub fn cost(&self) -> u32 {
        let etx = 1.0 / (1.0 - self.loss.min(0.9));
        let one_way_us = self.rtt_ms() * 500.0;
        let c = etx * (one_way_us + 1000.0) / 100.0;
        if c.is_finite() {
            (c.round() as u32).max(1)
        } else {
            u32::MAX / 4
        }
    }
}

/// The least loss ratio that `lost` losses among `samples` show with high confidence (the lower
/// end of the Wilson score interval at z = 4): 0 without samples. One loss among 8 probes is a
/// loss ratio of 12.5 %, but a link losing 0.3 % would show that one time in 40; 4 of 8 give a
/// floor of 9 %, 19 of 64 (30 %) one of 13 %.
pub fn loss_floor(lost: u32, samples: u32) -> f64 {
    if samples == 0 || lost == 0 {
        return 0.0;
    }
    let n = f64::from(samples);
    let p = (f64::from(lost) / n).min(1.0);
    let z2 = FLOOR_Z * FLOOR_Z;
    let centre = p + z2 / (2.0 * n);
    let spread = FLOOR_Z * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    ((centre - spread) / (1.0 + z2 / n)).clamp(0.0, p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_thresholds() {
        assert_eq!(QualityClass::classify(0.0, 5.0), QualityClass::Excellent);
        assert_eq!(QualityClass::classify(0.02, 5.0), QualityClass::Good);
        assert_eq!(QualityClass::classify(0.0, 100.0), QualityClass::Fair);
        assert_eq!(QualityClass::classify(0.2, 10.0), QualityClass::Poor);
        assert_eq!(QualityClass::classify(0.5, 10.0), QualityClass::Bad);
        assert_eq!(QualityClass::classify(0.0, 900.0), QualityClass::Bad);
    }

    #[test]
    fn rtt_ewma_and_cost() {
        let mut q = LinkQuality::default();
        q.rtt_sample(Duration::from_millis(1));
        assert!((q.rtt_ms() - 1.0).abs() < 1e-9);
        assert_eq!(q.cost(), 15);
        q.rtt_sample(Duration::from_millis(9));
        assert!((q.rtt_ms() - 2.0).abs() < 1e-9, "{}", q.rtt_ms());
        assert!(q.jitter_ms() > 0.0);
        let mut lossy = q.clone();
        lossy.update(0.5, Instant::ZERO);
        assert!(lossy.cost() > q.cost());
    }

    fn at(ms: u64) -> Instant {
        Instant::from_millis(ms)
    }

    #[test]
    fn the_first_sample_sets_the_class() {
        let mut q = LinkQuality::default();
        q.rtt_sample(Duration::from_millis(5));
        assert_eq!(q.class(), QualityClass::Excellent);
        let mut far = LinkQuality::default();
        far.rtt_sample(Duration::from_millis(120));
        assert_eq!(far.class(), QualityClass::Fair);
    }

    #[test]
    fn hysteresis_holds_classes_in_time() {
        let mut q = LinkQuality::default();
        q.rtt_sample(Duration::from_millis(30));
        assert_eq!(q.class(), QualityClass::Good);
        q.rtt_sample(Duration::from_millis(5));
        for _ in 0..40 {
            q.rtt_sample(Duration::from_millis(5));
        }
        // Starts GOOD; clean samples upgrade only after UPGRADE_HOLD.
        assert!(!q.update(0.0, at(0)));
        assert!(!q.update(0.0, at(14_000)));
        assert!(q.update(0.0, at(15_000)));
        assert_eq!(q.class(), QualityClass::Excellent);
        // A fall of two classes or more degrades at once.
        assert!(q.update(0.15, at(16_000)));
        assert_eq!(q.class(), QualityClass::Poor);
        // A one-class fall needs DOWNGRADE_HOLD outside the limits.
        let mut p = LinkQuality::default();
        p.rtt_sample(Duration::from_millis(30));
        assert_eq!(p.class(), QualityClass::Good);
        assert!(!p.update(0.05, at(0)));
        assert!(!p.update(0.05, at(2_900)));
        assert!(p.update(0.05, at(3_000)));
        assert_eq!(p.class(), QualityClass::Fair);
        // Hovering inside FAIR but not inside FAIR × 0.8 never upgrades.
        for i in 0..100 {
            p.update(0.095, at(3_000 + i * 1_000));
        }
        assert_eq!(p.class(), QualityClass::Fair);
    }

    #[test]
    fn a_link_at_a_threshold_does_not_flap() {
        // Loss alternating just below and above 1 % every 100 ms for five minutes.
        let mut q = LinkQuality::default();
        q.rtt_sample(Duration::from_millis(5));
        q.update(0.016, at(0));
        let mut flips = 0;
        for i in 0..3000u64 {
            let loss = if i % 2 == 0 { 0.009 } else { 0.016 };
            if q.update(loss, at(i * 100)) {
                flips += 1;
            }
        }
        assert!(flips <= 1, "flapped {flips} times");
    }

    #[test]
    fn nonsense_loss_is_clamped() {
        let mut q = LinkQuality::default();
        q.update(f64::NAN, Instant::ZERO);
        assert_eq!(q.loss(), 1.0);
        q.update(-3.0, Instant::ZERO);
        assert_eq!(q.loss(), 0.0);
        assert!(q.cost() >= 1);
    }

    #[test]
    fn the_loss_floor_is_a_confident_lower_bound() {
        assert_eq!(loss_floor(0, 64), 0.0);
        assert_eq!(loss_floor(3, 0), 0.0);
        // One loss among 8 probes shows nothing with confidence.
        assert!(loss_floor(1, 8) < 0.01, "{}", loss_floor(1, 8));
        // Half of 8 lost: at least ~9 %; 19 of 64: at least ~13 %.
        assert!(
            (0.08..0.10).contains(&loss_floor(4, 8)),
            "{}",
            loss_floor(4, 8)
        );
        assert!(
            (0.12..0.14).contains(&loss_floor(19, 64)),
            "{}",
            loss_floor(19, 64)
        );
        assert!(loss_floor(64, 64) <= 1.0 && loss_floor(64, 64) > 0.7);
    }

    #[test]
    fn one_lost_probe_among_the_first_few_is_not_a_collapse() {
        // An EXCELLENT link loses its first probe: 1 of 8 is a 12.5 % loss ratio, FAIR by the
        // numbers, two classes down. The floor is below 1 %: the fall is not sure, and the
        // link waits for DOWNGRADE_HOLD like a one-class move.
        let mut q = LinkQuality::default();
        q.rtt_sample(Duration::from_millis(5));
        assert_eq!(q.class(), QualityClass::Excellent);
        assert!(!q.update_with_floor(0.125, loss_floor(1, 8), at(0)));
        assert_eq!(q.class(), QualityClass::Excellent);
        // Held outside its limits for DOWNGRADE_HOLD it moves one class, not two.
        assert!(q.update_with_floor(0.125, loss_floor(1, 8), at(3_000)));
        assert_eq!(q.class(), QualityClass::Good);
        // A sure collapse (half of the probes lost: at least ~26 %) still falls at once.
        let mut r = LinkQuality::default();
        r.rtt_sample(Duration::from_millis(5));
        assert!(r.update_with_floor(0.5, loss_floor(32, 64), at(0)));
        assert_eq!(r.class(), QualityClass::Poor);
    }
}
