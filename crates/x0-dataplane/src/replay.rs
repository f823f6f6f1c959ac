//! Sliding anti-replay window over 64-bit packet counters (RFC 6479 bitmap).
//!
//! The window remembers the highest counter accepted so far (`top`) and one bit per counter in
//! the [`WINDOW`] counters below it. A ring of [`BLOCKS`] 64-bit words holds the bits; moving the
//! top forward clears whole words instead of shifting the bitmap, so an update costs O(1) for the
//! usual in-order case and at most [`BLOCKS`] word writes for a jump.
//!
//! The ring has one word more than the window needs, as in RFC 6479 §2: the word the top counter
//! falls into is only partly inside the window, and keeping it separate means that clearing a
//! word never erases a bit that is still inside the window. Accepted counters are therefore
//! exactly those that are (a) above `top`, or (b) at most `WINDOW - 1` below it and not seen
//! before; the property tests compare this with a `HashSet` model.
//!
//! A receiver must *check* before it decrypts and *update* only after the AEAD tag verified
//! ([`ReplayWindow::check`], then [`ReplayWindow::update`]); otherwise a forged packet with a
//! huge counter would slide the window and make every genuine packet "too old".
//! [`ReplayWindow::check_and_update`] does both for callers that have already authenticated.

use thiserror::Error;

/// Words in the ring. A power of two, so the ring index is a mask.
pub const BLOCKS: usize = 64;
const BLOCK_BITS: u64 = 64;
/// Counters below the highest accepted one that are still tracked: 4,032.
pub const WINDOW: u64 = (BLOCKS as u64 - 1) * BLOCK_BITS;

/// Why a counter was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum Replay {
    /// The counter is [`WINDOW`] or more below the highest accepted counter; it cannot be
    /// told apart from a replay any more.
    #[error("counter {counter} is older than the replay window (highest seen {top})")]
    TooOld {
        /// The refused counter.
        counter: u64,
        /// The highest counter accepted so far.
        top: u64,
    },
    /// The counter was accepted before.
    #[error("counter {0} was already received")]
    Duplicate(u64),
}

/// The replay window of one receive key.
#[derive(Clone)]
pub struct ReplayWindow {
    /// Highest counter accepted; meaningless while `empty`.
    top: u64,
    empty: bool,
    ring: [u64; BLOCKS],
}

impl std::fmt::Debug for ReplayWindow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplayWindow")
            .field("top", &(!self.empty).then_some(self.top))
            .finish_non_exhaustive()
    }
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self::new()
    }
}

fn slot(counter: u64) -> (usize, u64) {
    // The block number modulo BLOCKS (a power of two) fits in usize on every target.
    let block = ((counter / BLOCK_BITS) % BLOCKS as u64) as usize;
    (block, 1u64 << (counter % BLOCK_BITS))
}

impl ReplayWindow {
    /// A window that has accepted nothing.
    pub const fn new() -> Self {
        Self {
            top: 0,
            empty: true,
            ring: [0; BLOCKS],
        }
    }

    /// The highest counter accepted so far.
    pub fn top(&self) -> Option<u64> {
        (!self.empty).then_some(self.top)
    }

    /// Whether `counter` would be accepted. Does not change the window.
    pub fn check(&self, counter: u64) -> Result<(), Replay> {
        if self.empty || counter > self.top {
            return Ok(());
        }
        if self.top - counter >= WINDOW {
            return Err(Replay::TooOld {
                counter,
                top: self.top,
            });
        }
        let (block, bit) = slot(counter);
        if self.ring[block] & bit != 0 {
            return Err(Replay::Duplicate(counter));
        }
        Ok(())
    }

    /// Marks `counter` as received. Call only after [`ReplayWindow::check`] accepted it and the
    /// packet authenticated; a counter outside the window is ignored.
    pub fn update(&mut self, counter: u64) {
        if self.empty || counter > self.top {
            let new_block = counter / BLOCK_BITS;
            if self.empty {
                self.ring = [0; BLOCKS];
            } else {
                let old_block = self.top / BLOCK_BITS;
                // Clear the words the top moves into (all of them after a long jump).
                let steps = (new_block - old_block).min(BLOCKS as u64);
                for i in 1..=steps {
                    self.ring[((old_block + i) % BLOCKS as u64) as usize] = 0;
                }
            }
            self.top = counter;
            self.empty = false;
        } else if self.top - counter >= WINDOW {
            return;
        }
        let (block, bit) = slot(counter);
        self.ring[block] |= bit;
    }

    /// [`ReplayWindow::check`] then [`ReplayWindow::update`].
    pub fn check_and_update(&mut self, counter: u64) -> Result<(), Replay> {
        self.check(counter)?;
        self.update(counter);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

    /// The specification: accept a counter not seen before that is above the highest seen, or
    /// less than `WINDOW` below it.
    #[derive(Default)]
    struct Model {
        seen: HashSet<u64>,
        top: Option<u64>,
    }

    impl Model {
        fn check_and_update(&mut self, c: u64) -> Result<(), Replay> {
            if let Some(top) = self.top {
                if c <= top && top - c >= WINDOW {
                    return Err(Replay::TooOld { counter: c, top });
                }
                if self.seen.contains(&c) {
                    return Err(Replay::Duplicate(c));
                }
            }
            self.seen.insert(c);
            self.top = Some(self.top.map_or(c, |t| t.max(c)));
            Ok(())
        }
    }

    #[test]
    fn window_is_at_least_2048() {
        const { assert!(WINDOW >= 2048) };
        assert!(BLOCKS.is_power_of_two());
    }

    #[test]
    fn in_order_reordered_duplicate_and_old() {
        let mut w = ReplayWindow::new();
        for c in 0..10_000 {
            w.check_and_update(c).unwrap();
        }
        assert_eq!(w.check_and_update(9_999), Err(Replay::Duplicate(9_999)));
        assert_eq!(
            w.check_and_update(9_999 - WINDOW + 1),
            Err(Replay::Duplicate(9_999 - WINDOW + 1))
        );
        assert_eq!(
            w.check_and_update(9_999 - WINDOW),
            Err(Replay::TooOld {
                counter: 9_999 - WINDOW,
                top: 9_999
            })
        );
        // A gap, then the packets of the gap arrive late: all accepted once.
        w.check_and_update(12_000).unwrap();
        for c in (10_000..12_000).rev() {
            w.check_and_update(c).unwrap();
        }
        for c in 10_000..12_001 {
            assert_eq!(w.check(c), Err(Replay::Duplicate(c)));
        }
    }

    #[test]
    fn huge_jump_clears_everything_and_extremes_do_not_overflow() {
        let mut w = ReplayWindow::new();
        w.check_and_update(5).unwrap();
        w.check_and_update(u64::MAX - 1).unwrap();
        assert!(matches!(w.check(5), Err(Replay::TooOld { .. })));
        w.check_and_update(u64::MAX).unwrap();
        assert_eq!(w.check(u64::MAX), Err(Replay::Duplicate(u64::MAX)));
        assert_eq!(w.check(u64::MAX - 1), Err(Replay::Duplicate(u64::MAX - 1)));
        w.check_and_update(u64::MAX - 2).unwrap();
    }

    #[test]
    fn check_alone_changes_nothing() {
        let mut w = ReplayWindow::new();
        w.check(100).unwrap();
        assert_eq!(w.top(), None);
        w.update(100);
        assert_eq!(w.top(), Some(100));
        w.check(50).unwrap();
        w.check(50).unwrap();
    }

    fn counters() -> impl Strategy<Value = Vec<u64>> {
        // Mostly near each other (reordering, duplicates), sometimes far jumps.
        let base = any::<u64>().prop_map(|b| b / 2);
        (
            base,
            prop::collection::vec(
                prop_oneof![
                    8 => 0u64..6_000,
                    1 => 0u64..100_000,
                    1 => any::<u64>().prop_map(|x| x / 4),
                ],
                1..600,
            ),
        )
            .prop_map(|(base, offsets)| {
                offsets
                    .into_iter()
                    .map(|o| base.saturating_add(o))
                    .collect()
            })
    }

    proptest! {
        #[test]
        fn matches_hash_set_model(seq in counters()) {
            let mut w = ReplayWindow::new();
            let mut m = Model::default();
            for c in seq {
                prop_assert_eq!(w.check_and_update(c), m.check_and_update(c), "counter {}", c);
            }
        }

        #[test]
        fn sequential_with_repeats(start in 0u64..u64::MAX / 2, n in 1usize..5_000, dup_every in 1usize..50) {
            let mut w = ReplayWindow::new();
            let mut m = Model::default();
            for i in 0..n as u64 {
                let c = start + i;
                prop_assert_eq!(w.check_and_update(c), m.check_and_update(c));
                if (i as usize).is_multiple_of(dup_every) {
                    let old = c.saturating_sub(i % 4_100);
                    prop_assert_eq!(w.check_and_update(old), m.check_and_update(old));
                }
            }
        }
    }
}
