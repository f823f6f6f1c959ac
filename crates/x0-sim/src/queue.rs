//! The event queue: a priority queue of events keyed by `(time, insertion sequence)`.
//!
//! Keys are unique (the sequence number never repeats), so every correct priority queue pops
//! the same events in the same order: the run does not depend on the queue's internal shape.
//! This one is a 4-ary implicit heap of 24-byte entries rather than `std`'s binary heap of
//! larger ones: a 10,000-node run keeps tens of thousands of events queued and does a hundred
//! million pops, and the shallower tree with packed entries takes fewer cache misses per pop
//! (measured: see `docs/sim.md`).

/// What kind of event an entry is (kept in the low bits of the ordering key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Wake = 0,
    Arrive = 1,
    Scripted = 2,
}

/// A queued event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Entry {
    /// Virtual time, µs.
    pub(crate) at: u64,
    /// `seq << 2 | kind`: ordered by sequence, which is unique.
    key: u64,
    /// Payload: (node, generation) for a wake-up, the in-flight slot or the script index.
    pub(crate) a: u32,
    pub(crate) b: u32,
}

impl Entry {
    pub(crate) fn kind(&self) -> Kind {
        match self.key & 3 {
            0 => Kind::Wake,
            1 => Kind::Arrive,
            _ => Kind::Scripted,
        }
    }

    /// The sort key as one integer: `at`, then `seq`.
    #[inline]
    fn order(&self) -> u128 {
        (u128::from(self.at) << 64) | u128::from(self.key)
    }

    #[inline]
    fn before(&self, other: &Self) -> bool {
        self.order() < other.order()
    }
}

const ARITY: usize = 4;

/// A min-queue of [`Entry`] by `(at, seq)`.
#[derive(Debug, Default)]
pub(crate) struct EventQueue {
    heap: Vec<Entry>,
    seq: u64,
}

impl EventQueue {
    pub(crate) fn with_capacity(n: usize) -> Self {
        Self {
            heap: Vec::with_capacity(n),
            seq: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.heap.len()
    }

    /// The earliest time queued.
    #[inline]
    pub(crate) fn peek_time(&self) -> Option<u64> {
        self.heap.first().map(|e| e.at)
    }

    /// Queues an event after every event already queued for the same time.
    #[inline]
    pub(crate) fn push(&mut self, at: u64, kind: Kind, a: u32, b: u32) {
        self.seq += 1;
        let entry = Entry {
            at,
            key: (self.seq << 2) | kind as u64,
            a,
            b,
        };
        let mut i = self.heap.len();
        self.heap.push(entry);
        while i > 0 {
            let parent = (i - 1) / ARITY;
            if entry.before(&self.heap[parent]) {
                self.heap[i] = self.heap[parent];
                i = parent;
            } else {
                break;
            }
        }
        self.heap[i] = entry;
    }

    /// Takes the earliest event.
    #[inline]
    pub(crate) fn pop(&mut self) -> Option<Entry> {
        let last = self.heap.pop()?;
        let Some(&top) = self.heap.first() else {
            return Some(last);
        };
        let heap = self.heap.as_mut_slice();
        let len = heap.len();
        let last_key = last.order();
        let mut i = 0;
        loop {
            let first = i * ARITY + 1;
            let (best, best_key) = if let Some(c) = heap.get(first..first + ARITY) {
                // The common case: four children, a tournament of three comparisons.
                let (k0, k1, k2, k3) = (c[0].order(), c[1].order(), c[2].order(), c[3].order());
                let (b01, k01) = if k1 < k0 { (1, k1) } else { (0, k0) };
                let (b23, k23) = if k3 < k2 { (3, k3) } else { (2, k2) };
                if k23 < k01 { (b23, k23) } else { (b01, k01) }
            } else if first < len {
                let mut best = (0, heap[first].order());
                for (k, c) in heap[first + 1..].iter().enumerate() {
                    if c.order() < best.1 {
                        best = (k + 1, c.order());
                    }
                }
                best
            } else {
                break;
            };
            if best_key >= last_key {
                break;
            }
            heap[i] = heap[first + best];
            i = first + best;
        }
        heap[i] = last;
        Some(top)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::{SimRng, Stream};

    #[test]
    fn pops_in_time_then_insertion_order() {
        let mut q = EventQueue::default();
        q.push(5, Kind::Arrive, 1, 0);
        q.push(3, Kind::Wake, 2, 0);
        q.push(5, Kind::Scripted, 3, 0);
        q.push(3, Kind::Arrive, 4, 0);
        q.push(0, Kind::Wake, 5, 0);
        let order: Vec<_> = std::iter::from_fn(|| q.pop())
            .map(|e| (e.at, e.a, e.kind()))
            .collect();
        assert_eq!(
            order,
            vec![
                (0, 5, Kind::Wake),
                (3, 2, Kind::Wake),
                (3, 4, Kind::Arrive),
                (5, 1, Kind::Arrive),
                (5, 3, Kind::Scripted),
            ]
        );
        assert_eq!(q.len(), 0);
        assert_eq!(q.peek_time(), None);
    }

    #[test]
    fn matches_a_sorted_reference_under_random_use() {
        let mut rng = SimRng::new(3, Stream::User(1));
        let mut q = EventQueue::with_capacity(16);
        let mut reference: Vec<(u64, u32)> = Vec::new();
        let mut now = 0;
        let mut id = 0u32;
        for _ in 0..40_000 {
            if rng.below(3) > 0 || reference.is_empty() {
                // Monotone like the engine: never before the last pop, many ties.
                let at = now + rng.below(50);
                q.push(at, Kind::Arrive, id, 0);
                reference.push((at, id));
                id += 1;
            } else {
                // Earliest time, then earliest insertion.
                let (k, _) = reference
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, r)| **r)
                    .unwrap();
                let want = reference.remove(k);
                let got = q.pop().unwrap();
                assert_eq!((got.at, got.a), want);
                now = got.at;
            }
            if reference.len() > 300 {
                reference.sort_unstable();
                let (at, a) = reference.remove(0);
                let got = q.pop().unwrap();
                assert_eq!((got.at, got.a), (at, a));
                now = at;
            }
        }
        assert_eq!(q.len(), reference.len());
    }
}
