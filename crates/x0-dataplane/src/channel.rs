//! The cipher state of one data channel: a send key, up to two receive keys, replay windows
//! and key epochs.
//!
//! The same [`Channel`] serves both layers: a link between neighbours (keys from the link's
//! TLS exporter) and an end-to-end session between overlay endpoints (keys from the end-to-end
//! TLS handshake, [`crate::e2e`]). It is sans-IO: time comes in as `now`, a [`Duration`] since
//! an epoch the caller picks (the daemon's start), and it never allocates per packet.
//!
//! ## Epochs
//!
//! Every key has an 8-bit epoch number, carried in each frame header, so that a receiver picks
//! the key without trial decryption. Rekeying installs the next epoch: the new receive key
//! becomes *current*, the old one *previous*. The previous key keeps working so that packets
//! already in flight (or sent by a peer that has not switched yet) still open; it retires
//! [`Limits::previous_epoch_grace`] after the first packet that opens under the new key, which
//! proves the peer has switched, and in any case once it is older than
//! [`Limits::reject_after_time`].
//!
//! ## Limits
//!
//! [`Channel::needs_rekey`] turns true after [`Limits::rekey_after_time`] (120 s) or
//! [`Limits::rekey_after_packets`] (2^32) packets under the send key, whichever comes first.
//! If no new key arrives, sealing stops at [`Limits::reject_after_time`] (180 s) or
//! [`Limits::reject_after_packets`]: a stuck rekey must not turn into unbounded use of one key.
//!
//! ## Receive order
//!
//! Opening follows RFC 6479: look the key up by epoch, check the replay window, authenticate,
//! and only then mark the counter as seen. A forged packet can therefore neither slide the
//! window nor burn a counter.

use std::time::Duration;

use thiserror::Error;

use crate::aead::{AuthError, KeySetupError, PacketKey, TAG_LEN, TrafficSecret};
use crate::replay::{Replay, ReplayWindow};

/// When a channel wants, and then requires, new keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Ask for a rekey once the send key is this old. Default 120 s.
    pub rekey_after_time: Duration,
    /// Ask for a rekey once this many packets were sealed under the send key. Default 2^32.
    pub rekey_after_packets: u64,
    /// Refuse to seal once the send key is this old, and to open under a receive key this old.
    /// Default 180 s.
    pub reject_after_time: Duration,
    /// Refuse to seal after this many packets under one key. Default 2^32 + 2^30.
    pub reject_after_packets: u64,
    /// How long the previous receive key keeps working after the peer was seen to use the new
    /// one. Default 10 s.
    pub previous_epoch_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            rekey_after_time: Duration::from_secs(120),
            rekey_after_packets: 1 << 32,
            reject_after_time: Duration::from_secs(180),
            reject_after_packets: (1 << 32) + (1 << 30),
            previous_epoch_grace: Duration::from_secs(10),
        }
    }
}

/// Why a packet could not be sealed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum SealError {
    /// No send key is installed yet.
    #[error("no send key")]
    NoKey,
    /// The send key reached its reject limit (time or packets) and no new key arrived.
    #[error("send key of epoch {0} is exhausted; a rekey is overdue")]
    KeyExhausted(u8),
    /// The buffer lacks head- or tailroom for the headers and the tag.
    #[error("buffer too small: {0}")]
    NoRoom(&'static str),
    /// The payload is larger than the frame format carries.
    #[error("payload too large for the frame")]
    TooLarge,
    /// A [`Reservation`] was used after the send key changed.
    #[error("reservation for epoch {0} is stale")]
    StaleReservation(u8),
    /// The crypto library failed.
    #[error(transparent)]
    Crypto(#[from] KeySetupError),
}

/// Why a packet could not be opened. Each reason is counted apart by the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum OpenError {
    /// No receive key of this epoch (never installed, or retired).
    #[error("no receive key for epoch {0}")]
    UnknownEpoch(u8),
    /// The counter was seen before or is older than the replay window.
    #[error(transparent)]
    Replay(#[from] Replay),
    /// The ciphertext, tag or authenticated header was altered, or the key is wrong.
    #[error("authentication failed")]
    Authentication,
    /// Too short to hold a header and a tag.
    #[error("frame truncated")]
    Truncated,
}

impl From<AuthError> for OpenError {
    fn from(_: AuthError) -> Self {
        Self::Authentication
    }
}

struct SendKey {
    key: PacketKey,
    epoch: u8,
    next_counter: u64,
    installed: Duration,
}

struct RecvKey {
    key: PacketKey,
    epoch: u8,
    window: ReplayWindow,
    installed: Duration,
    /// Set on the previous key once the peer is seen using the current one.
    retire_at: Option<Duration>,
}

/// The right to seal exactly one packet with one counter under one epoch. Not `Clone`: a
/// counter is used once.
#[derive(Debug, PartialEq, Eq)]
pub struct Reservation {
    epoch: u8,
    counter: u64,
}

impl Reservation {
    /// The epoch to write in the header.
    pub fn epoch(&self) -> u8 {
        self.epoch
    }

    /// The counter to write in the header.
    pub fn counter(&self) -> u64 {
        self.counter
    }
}

/// A packet that opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opened {
    /// Length of the plaintext (the sealed payload without its tag).
    pub len: usize,
    /// The epoch it was sealed under.
    pub epoch: u8,
    /// Its counter.
    pub counter: u64,
}

/// Packet and key counters of a channel, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChannelStats {
    /// Packets sealed.
    pub sealed: u64,
    /// Packets opened.
    pub opened: u64,
    /// Refused: unknown or retired epoch.
    pub unknown_epoch: u64,
    /// Refused: duplicate counter.
    pub duplicate: u64,
    /// Refused: counter older than the window.
    pub too_old: u64,
    /// Refused: authentication failed.
    pub auth_failed: u64,
    /// Keys installed (both directions).
    pub keys_installed: u64,
}

/// One data channel's cipher state.
pub struct Channel {
    limits: Limits,
    tx: Option<SendKey>,
    rx_current: Option<RecvKey>,
    rx_previous: Option<RecvKey>,
    stats: ChannelStats,
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel")
            .field("tx_epoch", &self.tx_epoch())
            .field("rx_epochs", &self.rx_epochs())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Channel {
    /// A channel without keys.
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            tx: None,
            rx_current: None,
            rx_previous: None,
            stats: ChannelStats::default(),
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Counters.
    pub fn stats(&self) -> ChannelStats {
        self.stats
    }

    /// Epoch of the send key.
    pub fn tx_epoch(&self) -> Option<u8> {
        self.tx.as_ref().map(|k| k.epoch)
    }

    /// Epochs of the current and previous receive keys.
    pub fn rx_epochs(&self) -> (Option<u8>, Option<u8>) {
        (
            self.rx_current.as_ref().map(|k| k.epoch),
            self.rx_previous.as_ref().map(|k| k.epoch),
        )
    }

    /// Installs the send key of `epoch`; sealing switches to it at once, counters restart at 0.
    pub fn install_tx(
        &mut self,
        epoch: u8,
        secret: &TrafficSecret,
        now: Duration,
    ) -> Result<(), KeySetupError> {
        self.tx = Some(SendKey {
            key: PacketKey::new(secret)?,
            epoch,
            next_counter: 0,
            installed: now,
        });
        self.stats.keys_installed += 1;
        Ok(())
    }

    /// Installs the receive key of `epoch` as current; the current one becomes previous. If
    /// `epoch` is already current (a peer that restarted and reused the number), the old key
    /// is dropped instead of kept, since two keys must never share an epoch.
    pub fn install_rx(
        &mut self,
        epoch: u8,
        secret: &TrafficSecret,
        now: Duration,
    ) -> Result<(), KeySetupError> {
        let new = RecvKey {
            key: PacketKey::new(secret)?,
            epoch,
            window: ReplayWindow::new(),
            installed: now,
            retire_at: None,
        };
        let old = self.rx_current.replace(new);
        self.rx_previous = old.filter(|k| k.epoch != epoch);
        self.stats.keys_installed += 1;
        Ok(())
    }

    /// Installs both directions of `epoch`.
    pub fn install(
        &mut self,
        epoch: u8,
        tx: &TrafficSecret,
        rx: &TrafficSecret,
        now: Duration,
    ) -> Result<(), KeySetupError> {
        self.install_rx(epoch, rx, now)?;
        self.install_tx(epoch, tx, now)
    }

    /// Whether the send key should be replaced: it is older than
    /// [`Limits::rekey_after_time`] or sealed [`Limits::rekey_after_packets`] packets. Also true
    /// when there is no send key at all.
    pub fn needs_rekey(&self, now: Duration) -> bool {
        match &self.tx {
            None => true,
            Some(k) => {
                now.saturating_sub(k.installed) >= self.limits.rekey_after_time
                    || k.next_counter >= self.limits.rekey_after_packets
            }
        }
    }

    /// When [`Channel::needs_rekey`] turns true by age alone.
    pub fn rekey_deadline(&self) -> Option<Duration> {
        self.tx
            .as_ref()
            .map(|k| k.installed.saturating_add(self.limits.rekey_after_time))
    }

    /// When the last of the keys stops working by age ([`Limits::reject_after_time`] after it
    /// was installed); `None` without keys.
    pub fn keys_expire_at(&self) -> Option<Duration> {
        let tx = self.tx.as_ref().map(|k| k.installed);
        let rx = [&self.rx_current, &self.rx_previous]
            .into_iter()
            .flatten()
            .map(|k| k.installed);
        tx.into_iter()
            .chain(rx)
            .max()
            .map(|t| t.saturating_add(self.limits.reject_after_time))
    }

    /// Takes the next counter of the send key.
    pub fn reserve(&mut self, now: Duration) -> Result<Reservation, SealError> {
        let limits = self.limits;
        let k = self.tx.as_mut().ok_or(SealError::NoKey)?;
        if now.saturating_sub(k.installed) >= limits.reject_after_time
            || k.next_counter >= limits.reject_after_packets
        {
            return Err(SealError::KeyExhausted(k.epoch));
        }
        let counter = k.next_counter;
        k.next_counter += 1;
        Ok(Reservation {
            epoch: k.epoch,
            counter,
        })
    }

    /// Encrypts `in_out` in place under the reservation's counter and returns the tag.
    pub fn seal(
        &mut self,
        reservation: Reservation,
        aad: &[u8],
        in_out: &mut [u8],
    ) -> Result<[u8; TAG_LEN], SealError> {
        let k = self.tx.as_ref().ok_or(SealError::NoKey)?;
        if k.epoch != reservation.epoch || reservation.counter >= k.next_counter {
            return Err(SealError::StaleReservation(reservation.epoch));
        }
        let tag = k.key.seal(reservation.counter, aad, in_out)?;
        self.stats.sealed += 1;
        Ok(tag)
    }

    /// Opens `ciphertext || tag` in place (the plaintext is left at the start of `in_out`).
    pub fn open(
        &mut self,
        now: Duration,
        epoch: u8,
        counter: u64,
        aad: &[u8],
        in_out: &mut [u8],
    ) -> Result<Opened, OpenError> {
        let result = self.open_inner(now, epoch, counter, aad, in_out);
        let s = &mut self.stats;
        match result {
            Ok(_) => s.opened += 1,
            Err(OpenError::UnknownEpoch(_)) => s.unknown_epoch += 1,
            Err(OpenError::Replay(Replay::Duplicate(_))) => s.duplicate += 1,
            Err(OpenError::Replay(_)) => s.too_old += 1,
            Err(OpenError::Authentication | OpenError::Truncated) => s.auth_failed += 1,
        }
        result
    }

    fn open_inner(
        &mut self,
        now: Duration,
        epoch: u8,
        counter: u64,
        aad: &[u8],
        in_out: &mut [u8],
    ) -> Result<Opened, OpenError> {
        if in_out.len() < TAG_LEN {
            return Err(OpenError::Truncated);
        }
        self.retire(now);
        let is_current = self.rx_current.as_ref().is_some_and(|k| k.epoch == epoch);
        let slot = if is_current {
            &mut self.rx_current
        } else {
            &mut self.rx_previous
        };
        let k = slot
            .as_mut()
            .filter(|k| k.epoch == epoch)
            .ok_or(OpenError::UnknownEpoch(epoch))?;
        k.window.check(counter)?;
        let len = k.key.open(counter, aad, in_out)?;
        k.window.update(counter);
        if is_current
            && let Some(prev) = &mut self.rx_previous
            && prev.retire_at.is_none()
        {
            prev.retire_at = Some(now.saturating_add(self.limits.previous_epoch_grace));
        }
        Ok(Opened {
            len,
            epoch,
            counter,
        })
    }

    /// Drops receive keys past their time.
    fn retire(&mut self, now: Duration) {
        let reject = self.limits.reject_after_time;
        let expired = |k: &RecvKey| {
            k.retire_at.is_some_and(|t| now >= t) || now.saturating_sub(k.installed) >= reject
        };
        if self.rx_previous.as_ref().is_some_and(expired) {
            self.rx_previous = None;
        }
        if self.rx_current.as_ref().is_some_and(expired) {
            self.rx_current = None;
        }
    }

    /// Drops every key (the session closed).
    pub fn clear(&mut self) {
        self.tx = None;
        self.rx_current = None;
        self.rx_previous = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const S: Duration = Duration::from_secs(1);

    fn secret(b: u8) -> TrafficSecret {
        TrafficSecret::new([b; 32])
    }

    /// A pair of channels wired back to back for epoch `e` (secret bytes `e*2`, `e*2+1`).
    fn pair(limits: Limits) -> (Channel, Channel) {
        let (mut a, mut b) = (Channel::new(limits), Channel::new(limits));
        a.install(0, &secret(1), &secret(2), Duration::ZERO)
            .unwrap();
        b.install(0, &secret(2), &secret(1), Duration::ZERO)
            .unwrap();
        (a, b)
    }

    /// Seals `msg` on `ch`; returns (epoch, counter, ciphertext||tag).
    fn seal(ch: &mut Channel, now: Duration, msg: &[u8]) -> (u8, u64, Vec<u8>) {
        let r = ch.reserve(now).unwrap();
        let (e, c) = (r.epoch(), r.counter());
        let mut buf = msg.to_vec();
        let tag = ch.seal(r, b"aad", &mut buf).unwrap();
        buf.extend_from_slice(&tag);
        (e, c, buf)
    }

    fn open(ch: &mut Channel, now: Duration, p: &(u8, u64, Vec<u8>)) -> Result<Vec<u8>, OpenError> {
        let mut buf = p.2.clone();
        let o = ch.open(now, p.0, p.1, b"aad", &mut buf)?;
        Ok(buf[..o.len].to_vec())
    }

    #[test]
    fn replay_and_tamper_have_distinct_reasons() {
        let (mut a, mut b) = pair(Limits::default());
        let p = seal(&mut a, S, b"hello");
        assert_eq!(open(&mut b, S, &p).unwrap(), b"hello");
        assert_eq!(
            open(&mut b, S, &p),
            Err(OpenError::Replay(Replay::Duplicate(0)))
        );
        let mut q = seal(&mut a, S, b"world");
        q.2[0] ^= 0x80;
        assert_eq!(open(&mut b, S, &q), Err(OpenError::Authentication));
        // The forged packet did not burn its counter: the genuine one still opens.
        q.2[0] ^= 0x80;
        assert_eq!(open(&mut b, S, &q).unwrap(), b"world");
        // A forged huge counter does not slide the window.
        let mut forged = seal(&mut a, S, b"x");
        forged.1 = u64::MAX;
        assert_eq!(open(&mut b, S, &forged), Err(OpenError::Authentication));
        forged.1 = 2;
        assert_eq!(open(&mut b, S, &forged).unwrap(), b"x");
        assert_eq!(
            open(&mut b, S, &(7, 3, vec![0; 20])),
            Err(OpenError::UnknownEpoch(7))
        );
        assert_eq!(
            open(&mut b, S, &(0, 3, vec![0; 5])),
            Err(OpenError::Truncated)
        );
        let st = b.stats();
        assert_eq!(
            (st.opened, st.duplicate, st.auth_failed, st.unknown_epoch),
            (3, 1, 3, 1)
        );
    }

    #[test]
    fn rekey_keeps_previous_epoch_for_in_flight_packets() {
        let limits = Limits::default();
        let (mut a, mut b) = pair(limits);
        // Old-epoch packets sealed before the rekey, delivered after it.
        let in_flight: Vec<_> = (0..5).map(|i| seal(&mut a, S, &[i; 10])).collect();
        b.install_rx(1, &secret(3), S).unwrap();
        a.install_tx(1, &secret(3), S).unwrap();
        assert_eq!(b.rx_epochs(), (Some(1), Some(0)));
        let fresh = seal(&mut a, 2 * S, b"new");
        assert_eq!(fresh.0, 1);
        assert_eq!(fresh.1, 0, "counters restart with the epoch");
        assert_eq!(open(&mut b, 2 * S, &fresh).unwrap(), b"new");
        for (i, p) in in_flight.iter().enumerate() {
            assert_eq!(open(&mut b, 3 * S, p).unwrap(), vec![i as u8; 10]);
        }
        // Grace runs from the first new-epoch packet (t = 2 s).
        let late = seal(&mut pair(limits).0, S, b"late");
        assert_eq!(
            open(&mut b, 2 * S + limits.previous_epoch_grace, &late),
            Err(OpenError::UnknownEpoch(0))
        );
        assert_eq!(b.rx_epochs(), (Some(1), None));
    }

    #[test]
    fn previous_key_stays_until_peer_switches() {
        let (mut a, mut b) = pair(Limits::default());
        b.install_rx(1, &secret(3), S).unwrap();
        // The peer keeps sending epoch 0 for longer than the grace: still accepted.
        let p = seal(&mut a, 60 * S, b"old");
        assert_eq!(open(&mut b, 60 * S, &p).unwrap(), b"old");
    }

    #[test]
    fn rekey_signal_and_hard_limits() {
        let limits = Limits {
            rekey_after_packets: 10,
            reject_after_packets: 12,
            ..Limits::default()
        };
        let (mut a, _) = pair(limits);
        assert!(!a.needs_rekey(S));
        for _ in 0..10 {
            a.reserve(S).unwrap();
        }
        assert!(a.needs_rekey(S));
        a.reserve(S).unwrap();
        a.reserve(S).unwrap();
        assert_eq!(a.reserve(S), Err(SealError::KeyExhausted(0)));

        let (mut a, _) = pair(Limits::default());
        assert!(!a.needs_rekey(119 * S));
        assert!(a.needs_rekey(120 * S));
        assert_eq!(a.rekey_deadline(), Some(120 * S));
        a.reserve(179 * S).unwrap();
        assert_eq!(a.reserve(180 * S), Err(SealError::KeyExhausted(0)));
        assert!(Channel::new(Limits::default()).needs_rekey(Duration::ZERO));
        assert_eq!(
            Channel::new(Limits::default()).reserve(S),
            Err(SealError::NoKey)
        );
    }

    #[test]
    fn stale_reservation_is_refused() {
        let (mut a, _) = pair(Limits::default());
        let r = a.reserve(S).unwrap();
        a.install_tx(1, &secret(9), S).unwrap();
        assert_eq!(
            a.seal(r, b"", &mut [0u8; 4]),
            Err(SealError::StaleReservation(0))
        );
    }

    proptest! {
        /// Any delivery order with duplicates: each packet opens exactly once, and only
        /// the genuine bytes come out.
        #[test]
        fn reordered_duplicated_delivery(order in prop::collection::vec(0usize..64, 1..200)) {
            let (mut a, mut b) = pair(Limits::default());
            let sent: Vec<_> = (0..64u8).map(|i| seal(&mut a, S, &[i; 7])).collect();
            let mut seen = std::collections::HashSet::new();
            for i in order {
                let r = open(&mut b, S, &sent[i]);
                if seen.insert(i) {
                    prop_assert_eq!(r.unwrap(), vec![i as u8; 7]);
                } else {
                    prop_assert_eq!(r, Err(OpenError::Replay(Replay::Duplicate(i as u64))));
                }
            }
        }

        /// Flipping any bit of ciphertext or tag is caught.
        #[test]
        fn any_bit_flip_fails(len in 0usize..200, bit in any::<prop::sample::Index>()) {
            let (mut a, mut b) = pair(Limits::default());
            let mut p = seal(&mut a, S, &vec![0xAB; len]);
            let i = bit.index(p.2.len() * 8);
            p.2[i / 8] ^= 1 << (i % 8);
            prop_assert_eq!(open(&mut b, S, &p), Err(OpenError::Authentication));
        }
    }
}
