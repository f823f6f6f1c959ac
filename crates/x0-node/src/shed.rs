//! Load shedding: per-neighbour limits on the transit a neighbour sends through us.
//!
//! The self-healing loop answers a noisy neighbour (its received bytes jumped far above their
//! baseline) with `ShedLoad { node, share }`. The data plane keeps a [`TransitMeter`] per
//! neighbour (the rate of link frames it sends us to relay, before any shedding: the load it
//! offers), and on `ShedLoad` installs a [`TokenBucket`] at `(1 − share)` × that rate, never
//! below [`FLOOR_BYTES_PER_S`] (so that end-to-end handshakes and path probes through us
//! survive). Transit frames over the bucket are dropped (drop reason `shed_load`) and counted
//! per neighbour. Traffic addressed to us is never shed, nor is anything on the link's QUIC
//! connection (routing probes and adverts). `RestoreLoad` removes the bucket.
//!
//! Sans-IO: every call takes `now` (time since the data plane started).

use std::collections::HashMap;
use std::time::Duration;

use x0_identity::NodeId;

/// The lowest limit shedding installs: 1 Mbit/s.
pub(crate) const FLOOR_BYTES_PER_S: f64 = 125_000.0;
/// The meter folds the bytes of each window this long into its average.
const METER_WINDOW: Duration = Duration::from_millis(200);
/// Weight of the latest window in the meter's average.
const METER_ALPHA: f64 = 0.5;
/// A window this long without a frame counts as idle: the average starts again from it.
const METER_IDLE: Duration = Duration::from_secs(2);
/// The window in progress counts once it is this long.
const METER_PARTIAL: Duration = Duration::from_millis(50);
/// The bucket holds this long a burst at its rate…
const BURST_TIME: Duration = Duration::from_millis(20);
/// …and at least this many bytes (a receive batch of full frames).
const MIN_BURST_BYTES: f64 = 64.0 * 1024.0;

/// A token bucket in bytes.
#[derive(Debug, Clone)]
pub(crate) struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Duration,
}

impl TokenBucket {
    /// A full bucket refilled at `rate` bytes/s (at least 1) holding `burst` bytes (at least
    /// one largest datagram's worth is sensible; at least 1).
    pub(crate) fn new(rate: f64, burst: f64, now: Duration) -> Self {
        let rate = if rate.is_finite() { rate.max(1.0) } else { 1.0 };
        let burst = if burst.is_finite() {
            burst.max(1.0)
        } else {
            1.0
        };
        Self {
            rate,
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Refill rate, bytes/s.
    pub(crate) fn rate(&self) -> f64 {
        self.rate
    }

    /// Takes `bytes` if the bucket holds them; false (nothing taken) if not. Time that runs
    /// backwards adds nothing.
    pub(crate) fn admit(&mut self, bytes: usize, now: Duration) -> bool {
        let elapsed = now.saturating_sub(self.last);
        self.last = self.last.max(now);
        self.tokens = (self.tokens + elapsed.as_secs_f64() * self.rate).min(self.burst);
        let want = bytes as f64;
        if self.tokens >= want {
            self.tokens -= want;
            true
        } else {
            false
        }
    }
}

/// The recent rate of a byte stream: an EWMA over fixed windows, or the latest window's rate
/// (or the one in progress) when that is higher — a flood that began a moment ago is measured
/// at its rate, not at the average's lag behind it.
#[derive(Debug, Clone, Default)]
pub(crate) struct TransitMeter {
    window_start: Duration,
    window_bytes: u64,
    average: Option<f64>,
    latest: f64,
}

impl TransitMeter {
    /// Counts `bytes` at `now`.
    pub(crate) fn add(&mut self, bytes: usize, now: Duration) {
        self.fold(now);
        self.window_bytes += bytes as u64;
    }

    /// Bytes/s, recently (0 before any bytes).
    pub(crate) fn rate(&mut self, now: Duration) -> f64 {
        self.fold(now);
        let elapsed = now.saturating_sub(self.window_start);
        let partial = if elapsed >= METER_PARTIAL {
            self.window_bytes as f64 / elapsed.as_secs_f64()
        } else {
            0.0
        };
        self.average.unwrap_or(0.0).max(self.latest).max(partial)
    }

    fn fold(&mut self, now: Duration) {
        let elapsed = now.saturating_sub(self.window_start);
        if elapsed < METER_WINDOW {
            return;
        }
        let rate = self.window_bytes as f64 / elapsed.as_secs_f64();
        self.average = Some(match self.average {
            Some(avg) if elapsed < METER_IDLE => METER_ALPHA * rate + (1.0 - METER_ALPHA) * avg,
            _ => rate,
        });
        self.latest = rate;
        self.window_start = now;
        self.window_bytes = 0;
    }
}

/// A limit in force.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct ShedLimit {
    /// The neighbour whose transit is limited.
    pub node: NodeId,
    /// The limit, bytes/s.
    pub limit_bytes_per_s: f64,
    /// Its transit rate when the limit was installed, bytes/s.
    pub measured_bytes_per_s: f64,
}

#[derive(Debug, Default)]
struct Transit {
    meter: TransitMeter,
    limit: Option<(TokenBucket, f64)>,
    shed_frames: u64,
}

/// Transit meters and limits of every neighbour.
#[derive(Debug, Default)]
pub(crate) struct Shedder {
    neighbours: HashMap<NodeId, Transit>,
}

impl Shedder {
    /// A transit frame of `bytes` from `from`: metered, then admitted or (over its limit)
    /// refused and counted.
    pub(crate) fn admit(&mut self, from: NodeId, bytes: usize, now: Duration) -> bool {
        let t = self.neighbours.entry(from).or_default();
        t.meter.add(bytes, now);
        let admitted = t
            .limit
            .as_mut()
            .is_none_or(|(bucket, _)| bucket.admit(bytes, now));
        if !admitted {
            t.shed_frames += 1;
        }
        admitted
    }

    /// Limits `node`'s transit to `(1 − share)` × its recent rate, at least
    /// [`FLOOR_BYTES_PER_S`]; replaces a limit already in force. `share` must be in (0, 1].
    pub(crate) fn shed(
        &mut self,
        node: NodeId,
        share: f64,
        now: Duration,
    ) -> Result<ShedLimit, String> {
        if !(share > 0.0 && share <= 1.0) {
            return Err(format!("share {share} is not in (0, 1]"));
        }
        let t = self.neighbours.entry(node).or_default();
        let measured = t.meter.rate(now);
        let limit = ((1.0 - share) * measured).max(FLOOR_BYTES_PER_S);
        let burst = (limit * BURST_TIME.as_secs_f64()).max(MIN_BURST_BYTES);
        t.limit = Some((TokenBucket::new(limit, burst, now), measured));
        Ok(ShedLimit {
            node,
            limit_bytes_per_s: limit,
            measured_bytes_per_s: measured,
        })
    }

    /// Lifts `node`'s limit; false if there was none.
    pub(crate) fn restore(&mut self, node: NodeId) -> bool {
        self.neighbours
            .get_mut(&node)
            .is_some_and(|t| t.limit.take().is_some())
    }

    /// The limits in force.
    pub(crate) fn limits(&self) -> Vec<ShedLimit> {
        let mut v: Vec<ShedLimit> = self
            .neighbours
            .iter()
            .filter_map(|(node, t)| {
                t.limit.as_ref().map(|(b, measured)| ShedLimit {
                    node: *node,
                    limit_bytes_per_s: b.rate(),
                    measured_bytes_per_s: *measured,
                })
            })
            .collect();
        v.sort_by_key(|l| l.node);
        v
    }

    /// Transit frames shed so far, per neighbour (neighbours that had any).
    pub(crate) fn shed_frames(&self) -> HashMap<NodeId, u64> {
        self.neighbours
            .iter()
            .filter(|(_, t)| t.shed_frames > 0)
            .map(|(n, t)| (*n, t.shed_frames))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    fn n(b: u8) -> NodeId {
        NodeId::from_bytes([b; 16])
    }

    #[test]
    fn a_bucket_admits_its_burst_then_its_rate() {
        let mut b = TokenBucket::new(1_000.0, 500.0, ms(0));
        assert!(b.admit(500, ms(0)));
        assert!(!b.admit(1, ms(0)), "burst spent");
        // 100 ms at 1,000 B/s: 100 bytes.
        assert!(!b.admit(101, ms(100)));
        assert!(b.admit(100, ms(100)));
        // Never more than the burst, however long it waited.
        assert!(!b.admit(501, ms(60_000)));
        assert!(b.admit(500, ms(60_000)));
    }

    #[test]
    fn a_bucket_ignores_time_running_backwards_and_bad_rates() {
        let mut b = TokenBucket::new(1_000.0, 100.0, ms(1_000));
        assert!(b.admit(100, ms(1_000)));
        assert!(!b.admit(1, ms(0)), "a step back adds nothing");
        assert!(
            !b.admit(50, ms(1_000)),
            "nor does returning to where it was"
        );
        assert!(b.admit(50, ms(1_050)));
        let mut nan = TokenBucket::new(f64::NAN, f64::INFINITY, ms(0));
        assert_eq!(nan.rate(), 1.0);
        assert!(nan.admit(1, ms(0)));
        assert!(!nan.admit(1, ms(0)));
    }

    #[test]
    fn a_bucket_passes_its_rate_over_a_long_run() {
        // 10 kB/s for 10 s, offered 1,000-byte frames every millisecond (1 MB/s).
        let mut b = TokenBucket::new(10_000.0, 2_000.0, ms(0));
        let admitted = (0..10_000).filter(|i| b.admit(1_000, ms(*i))).count();
        assert!((100..=102).contains(&admitted), "{admitted}");
    }

    #[test]
    fn the_meter_follows_the_rate_and_forgets_idle_times() {
        let mut m = TransitMeter::default();
        assert_eq!(m.rate(ms(0)), 0.0);
        // 1 MB/s: 1,000 bytes a millisecond for 2 s.
        for i in 0..2_000 {
            m.add(1_000, ms(i));
        }
        let r = m.rate(ms(2_000));
        assert!((0.9e6..1.1e6).contains(&r), "{r}");
        // Then 100 kB/s for 2 s: the average follows within a few windows.
        for i in 0..200 {
            m.add(1_000, ms(2_000 + i * 10));
        }
        let r = m.rate(ms(4_000));
        assert!((0.09e6..0.11e6).contains(&r), "{r}");
        // Idle for a minute, then a rate from scratch.
        m.add(1_000, ms(64_000));
        let r = m.rate(ms(64_000));
        assert!(r < 100.0, "{r}");
        // A flood that began 100 ms ago counts at its rate at once (10 MB/s).
        for i in 0..100 {
            m.add(10_000, ms(65_000 + i));
        }
        let r = m.rate(ms(65_100));
        assert!((9e6..11e6).contains(&r), "{r}");
    }

    #[test]
    fn shedding_limits_one_neighbour_to_its_share_and_restore_lifts_it() {
        let mut s = Shedder::default();
        let mut t = 0;
        // Neighbour 1 sends 1,000-byte frames every 0.5 ms (2 MB/s), neighbour 2 every 10 ms.
        let offer = |s: &mut Shedder, from: u64, to: u64| {
            let (mut a1, mut a2, mut o1) = (0u64, 0u64, 0u64);
            for us in (from * 1_000..to * 1_000).step_by(500) {
                let now = Duration::from_micros(us);
                o1 += 1;
                a1 += u64::from(s.admit(n(1), 1_000, now));
                if us % 10_000 == 0 {
                    a2 += u64::from(s.admit(n(2), 1_000, now));
                }
            }
            (o1, a1, a2)
        };
        let (o1, a1, a2) = offer(&mut s, 0, 2_000);
        assert_eq!(o1, a1, "no limit yet");
        assert_eq!(a2, 200);
        t += 2_000;
        let l = s.shed(n(1), 0.5, ms(t)).unwrap();
        assert!((1.8e6..2.2e6).contains(&l.measured_bytes_per_s), "{l:?}");
        assert!((0.9e6..1.1e6).contains(&l.limit_bytes_per_s), "{l:?}");
        assert_eq!(s.limits(), vec![l]);
        let (o1, a1, a2) = offer(&mut s, t, t + 4_000);
        // About half passes (plus the first burst); neighbour 2 is untouched.
        let passed = a1 as f64 / o1 as f64;
        assert!((0.45..0.56).contains(&passed), "{passed}");
        assert_eq!(a2, 400);
        assert_eq!(s.shed_frames()[&n(1)], o1 - a1);
        assert!(!s.shed_frames().contains_key(&n(2)));
        t += 4_000;
        assert!(s.restore(n(1)));
        assert!(!s.restore(n(1)), "only once");
        assert!(s.limits().is_empty());
        let (o1, a1, _) = offer(&mut s, t, t + 1_000);
        assert_eq!(o1, a1, "lifted");
    }

    #[test]
    fn shedding_never_goes_below_the_floor_and_refuses_bad_shares() {
        let mut s = Shedder::default();
        let l = s.shed(n(3), 1.0, ms(0)).unwrap();
        assert_eq!(l.limit_bytes_per_s, FLOOR_BYTES_PER_S);
        for bad in [0.0, -0.5, 1.5, f64::NAN] {
            assert!(s.shed(n(3), bad, ms(0)).is_err(), "{bad}");
        }
        // Over the floor a neighbour idle before the limit still gets its 1 Mbit/s.
        let admitted = (0..1_000).filter(|i| s.admit(n(3), 1_250, ms(*i))).count();
        // 1 s at 125 kB/s plus a 64 KiB burst: 100 + 52 frames of 1,250 bytes.
        assert!((150..=154).contains(&admitted), "{admitted}");
    }
}
