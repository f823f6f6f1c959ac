//! Virtual links: what one direction of a link does to a datagram.
//!
//! Each direction is a FIFO transmitter followed by a wire:
//!
//! 1. **Queue.** With a bandwidth, a datagram waits behind the ones already accepted; the
//!    transmitter serialises `len × 8 / bandwidth` seconds each (kept in nanoseconds, so high
//!    rates do not round up). At most `queue_limit` datagrams wait behind the one being sent;
//!    one more is tail-dropped. Without a bandwidth, sending takes no time and nothing queues.
//! 2. **Loss.** After serialisation (a lost datagram still used the transmitter), the datagram
//!    is lost with probability `loss`, independently of all others.
//! 3. **Delay.** It then arrives `latency ± jitter` later: jitter is uniform in
//!    `[-jitter, +jitter]`, the delay never goes below zero, and **a direction never reorders**:
//!    a datagram never arrives before one sent earlier on the same direction (its arrival is
//!    held back to the earlier one's, as on a single wire or a FIFO netem queue with rate). Ties
//!    are delivered in sending order.

use std::collections::VecDeque;
use std::time::Duration;

use crate::rng::SimRng;

/// Parameters of one direction of a link.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkParams {
    /// One-way propagation delay.
    pub latency: Duration,
    /// Half-width of the uniform jitter added to `latency`.
    pub jitter: Duration,
    /// Probability in `[0, 1]` that a datagram is lost.
    pub loss: f64,
    /// Transmitter rate in bits per second; `None` for unlimited (no serialisation delay).
    pub bandwidth_bps: Option<u64>,
    /// Datagrams that may wait behind the one being serialised (only with a bandwidth).
    pub queue_limit: u32,
}

impl LinkParams {
    /// Default one-way latency.
    pub const DEFAULT_LATENCY: Duration = Duration::from_millis(1);
    /// Default queue limit, in datagrams (Linux's default `txqueuelen`).
    pub const DEFAULT_QUEUE_LIMIT: u32 = 1000;
}

impl Default for LinkParams {
    /// 1 ms, no jitter, no loss, unlimited bandwidth, 1000-datagram queue.
    fn default() -> Self {
        Self {
            latency: Self::DEFAULT_LATENCY,
            jitter: Duration::ZERO,
            loss: 0.0,
            bandwidth_bps: None,
            queue_limit: Self::DEFAULT_QUEUE_LIMIT,
        }
    }
}

/// What happened to a datagram offered to a direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transmit {
    /// It will arrive at this time (µs).
    Arrives(u64),
    /// Tail-dropped: the queue was full.
    QueueFull,
    /// Serialised, then lost on the wire.
    Lost,
}

/// Run-time state of one direction. The queue of finish times lives outside (see
/// [`Direction::transmit`]) so that this struct stays small and hot.
#[derive(Debug, Clone)]
pub(crate) struct Direction {
    latency_us: u64,
    jitter_us: u64,
    loss: f64,
    /// Bits per second; 0 for unlimited.
    bandwidth_bps: u64,
    queue_limit: u32,
    /// When the transmitter is next idle, ns.
    busy_until_ns: u64,
    /// Latest arrival time handed out, µs (FIFO floor).
    last_arrival_us: u64,
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl Direction {
    pub(crate) fn new(p: &LinkParams) -> Self {
        let mut d = Self {
            latency_us: 0,
            jitter_us: 0,
            loss: 0.0,
            bandwidth_bps: 0,
            queue_limit: 0,
            busy_until_ns: 0,
            last_arrival_us: 0,
        };
        d.set_params(p);
        d
    }

    pub(crate) fn set_params(&mut self, p: &LinkParams) {
        self.latency_us = micros(p.latency);
        self.jitter_us = micros(p.jitter);
        self.loss = if p.loss.is_nan() {
            0.0
        } else {
            p.loss.clamp(0.0, 1.0)
        };
        self.bandwidth_bps = p.bandwidth_bps.unwrap_or(0);
        self.queue_limit = p.queue_limit;
    }

    pub(crate) fn params(&self) -> LinkParams {
        LinkParams {
            latency: Duration::from_micros(self.latency_us),
            jitter: Duration::from_micros(self.jitter_us),
            loss: self.loss,
            bandwidth_bps: (self.bandwidth_bps > 0).then_some(self.bandwidth_bps),
            queue_limit: self.queue_limit,
        }
    }

    pub(crate) fn set_loss(&mut self, loss: f64) {
        let mut p = self.params();
        p.loss = loss;
        self.set_params(&p);
    }

    pub(crate) fn set_latency(&mut self, latency: Duration, jitter: Option<Duration>) {
        self.latency_us = micros(latency);
        if let Some(j) = jitter {
            self.jitter_us = micros(j);
        }
    }

    /// Forgets everything queued or in flight (the link stopped passing traffic).
    pub(crate) fn reset(&mut self, queue: &mut VecDeque<u64>) {
        queue.clear();
        self.busy_until_ns = 0;
        self.last_arrival_us = 0;
    }

    /// Offers a datagram of `len` bytes at `now_us`; `queue` holds the finish times (ns) of
    /// datagrams accepted and not yet fully serialised (used only with a bandwidth).
    #[inline]
    pub(crate) fn transmit(
        &mut self,
        now_us: u64,
        len: usize,
        queue: &mut VecDeque<u64>,
        rng: &mut SimRng,
    ) -> Transmit {
        let sent_us = if self.bandwidth_bps == 0 {
            now_us
        } else {
            let now_ns = now_us.saturating_mul(1000);
            while queue.front().is_some_and(|&f| f <= now_ns) {
                queue.pop_front();
            }
            // One in service plus `queue_limit` waiting.
            if queue.len() > self.queue_limit as usize {
                return Transmit::QueueFull;
            }
            let bits = (len as u64).saturating_mul(8);
            let ser_ns = u64::try_from(
                (u128::from(bits) * 1_000_000_000).div_ceil(u128::from(self.bandwidth_bps)),
            )
            .unwrap_or(u64::MAX);
            let start = self.busy_until_ns.max(now_ns);
            let done = start.saturating_add(ser_ns);
            self.busy_until_ns = done;
            queue.push_back(done);
            done.div_ceil(1000)
        };
        if rng.chance(self.loss) {
            return Transmit::Lost;
        }
        let mut delay = self.latency_us;
        if self.jitter_us > 0 {
            let offset = rng.between(0, self.jitter_us.saturating_mul(2));
            // delay + offset - jitter, floored at zero.
            delay = delay.saturating_add(offset).saturating_sub(self.jitter_us);
        }
        let arrival = sent_us.saturating_add(delay).max(self.last_arrival_us);
        self.last_arrival_us = arrival;
        Transmit::Arrives(arrival)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Stream;

    fn rng() -> SimRng {
        SimRng::new(1, Stream::User(0))
    }

    /// A direction with its own queue.
    struct Dir(Direction, VecDeque<u64>);

    impl Dir {
        fn new(p: &LinkParams) -> Self {
            Self(Direction::new(p), VecDeque::new())
        }
        fn transmit(&mut self, now: u64, len: usize, r: &mut SimRng) -> Transmit {
            self.0.transmit(now, len, &mut self.1, r)
        }
        fn set_loss(&mut self, loss: f64) {
            self.0.set_loss(loss);
        }
    }

    #[test]
    fn fixed_latency_without_bandwidth() {
        let mut d = Dir::new(&LinkParams {
            latency: Duration::from_millis(5),
            ..LinkParams::default()
        });
        assert_eq!(d.transmit(100, 1000, &mut rng()), Transmit::Arrives(5_100));
    }

    #[test]
    fn serialisation_and_tail_drop() {
        // 1 Mbit/s: 125 bytes take exactly 1 ms.
        let mut d = Dir::new(&LinkParams {
            latency: Duration::ZERO,
            bandwidth_bps: Some(1_000_000),
            queue_limit: 2,
            ..LinkParams::default()
        });
        let mut r = rng();
        assert_eq!(d.transmit(0, 125, &mut r), Transmit::Arrives(1_000));
        assert_eq!(d.transmit(0, 125, &mut r), Transmit::Arrives(2_000));
        assert_eq!(d.transmit(0, 125, &mut r), Transmit::Arrives(3_000));
        assert_eq!(d.transmit(0, 125, &mut r), Transmit::QueueFull);
        // After the first finished, one slot is free again.
        assert_eq!(d.transmit(1_000, 125, &mut r), Transmit::Arrives(4_000));
        assert_eq!(d.transmit(1_000, 125, &mut r), Transmit::QueueFull);
        // Idle transmitter: no waiting.
        assert_eq!(d.transmit(10_000, 125, &mut r), Transmit::Arrives(11_000));
    }

    #[test]
    fn sub_microsecond_serialisation_accumulates() {
        // 10 Gbit/s, 1250 bytes = 1 µs each; 100 of them take 100 µs, not 200.
        let mut d = Dir::new(&LinkParams {
            latency: Duration::ZERO,
            bandwidth_bps: Some(10_000_000_000),
            queue_limit: 1000,
            ..LinkParams::default()
        });
        let mut r = rng();
        let mut last = 0;
        for _ in 0..100 {
            if let Transmit::Arrives(t) = d.transmit(0, 1250, &mut r) {
                last = t;
            }
        }
        assert_eq!(last, 100);
    }

    #[test]
    fn jitter_stays_in_bounds_and_never_reorders() {
        let mut d = Dir::new(&LinkParams {
            latency: Duration::from_micros(1_000),
            jitter: Duration::from_micros(800),
            ..LinkParams::default()
        });
        let mut r = rng();
        let mut prev = 0;
        for i in 0..10_000u64 {
            let now = i * 50;
            let Transmit::Arrives(t) = d.transmit(now, 100, &mut r) else {
                panic!("no loss configured");
            };
            assert!(t >= prev, "reordered");
            assert!(t >= now + 200, "below latency - jitter");
            assert!(t <= now + 1_800 || t == prev, "above latency + jitter");
            prev = t;
        }
    }

    #[test]
    fn jitter_larger_than_latency_floors_at_zero() {
        let mut d = Dir::new(&LinkParams {
            latency: Duration::from_micros(10),
            jitter: Duration::from_micros(1_000),
            ..LinkParams::default()
        });
        let mut r = rng();
        for i in 0..1000 {
            let now = 1_000_000 + i * 10_000;
            let Transmit::Arrives(t) = d.transmit(now, 1, &mut r) else {
                panic!("no loss configured");
            };
            assert!(t >= now && t <= now + 1_010);
        }
    }

    #[test]
    fn total_loss_drops_everything() {
        let mut d = Dir::new(&LinkParams {
            loss: 1.0,
            ..LinkParams::default()
        });
        assert_eq!(d.transmit(0, 1, &mut rng()), Transmit::Lost);
        d.set_loss(f64::NAN);
        assert!(matches!(d.transmit(0, 1, &mut rng()), Transmit::Arrives(_)));
    }
}
