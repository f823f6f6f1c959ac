//! The trace: a compact record of everything that happened in a run, and its digest.
//!
//! Every delivered or dropped datagram, every wake-up that reached a node and every scripted
//! event becomes one [`TraceRecord`]. The digest folds the records into 64 bits as they happen,
//! so two runs can be compared without keeping the records (see [`TraceMode`]).
//!
//! **Digest, version 1.** Each record is three 64-bit words: `time_us`,
//! `a << 32 | b`, `code << 32 | len` (with `code` from [`TraceKind::code`]). Starting from
//! `h = 0xcbf29ce484222325`, each word `w` does `h = (h ^ w) * 0x100000001b3 (mod 2^64);
//! h ^= h >> 32`. Each step is a bijection of `h`, so a single differing record always changes
//! the digest. It is a fingerprint for "same run or not", not a cryptographic hash.

use x0_routing::Instant;

use crate::stats::DropReason;

/// How much of the trace to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TraceMode {
    /// Nothing (fastest).
    #[default]
    Off,
    /// The running digest only.
    Digest,
    /// The digest and every record (memory grows with the run).
    Records,
}

/// What a trace record says happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum TraceKind {
    /// A datagram from `a` reached `b`.
    Deliver,
    /// A datagram from `a` to `b` was dropped.
    Drop(DropReason),
    /// Node `a`'s timeout fired.
    Timeout,
    /// Node `a` was started (at time zero or on restart).
    Start,
    /// Link `a` lost its carrier (`b` = 1 if visible, 0 if silent).
    LinkDown,
    /// Link `a` came back (`b` = 1 if visible, 0 if silent).
    LinkUp,
    /// Node `a` crashed.
    NodeCrash,
    /// Node `a` was rebuilt and restarted.
    NodeRestart,
    /// Link `a`'s loss changed.
    SetLoss,
    /// Link `a`'s latency changed.
    SetLatency,
    /// A partition cut `len` links.
    Partition,
    /// Every partitioned link was restored (`len` of them).
    Heal,
}

impl TraceKind {
    /// The stable numeric code used in the digest.
    pub fn code(self) -> u32 {
        match self {
            Self::Deliver => 1,
            Self::Drop(r) => 0x10 + r.index() as u32,
            Self::Timeout => 2,
            Self::Start => 3,
            Self::LinkDown => 0x20,
            Self::LinkUp => 0x21,
            Self::NodeCrash => 0x22,
            Self::NodeRestart => 0x23,
            Self::SetLoss => 0x24,
            Self::SetLatency => 0x25,
            Self::Partition => 0x26,
            Self::Heal => 0x27,
        }
    }
}

/// One thing that happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceRecord {
    /// When.
    pub at: Instant,
    /// What.
    pub kind: TraceKind,
    /// First subject: sender node, or the node or link concerned.
    pub a: u32,
    /// Second subject: receiving node, or a flag (see [`TraceKind`]).
    pub b: u32,
    /// Datagram length in bytes, or a count.
    pub len: u32,
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// A trace being recorded.
#[derive(Debug, Clone)]
pub struct Trace {
    mode: TraceMode,
    digest: u64,
    count: u64,
    records: Vec<TraceRecord>,
}

impl Default for Trace {
    fn default() -> Self {
        Self::new(TraceMode::Off)
    }
}

impl Trace {
    /// An empty trace.
    pub fn new(mode: TraceMode) -> Self {
        Self {
            mode,
            digest: FNV_OFFSET,
            count: 0,
            records: Vec::new(),
        }
    }

    /// What is kept.
    pub fn mode(&self) -> TraceMode {
        self.mode
    }

    /// The digest of every record so far (`None` when the trace is off).
    pub fn digest(&self) -> Option<u64> {
        (self.mode != TraceMode::Off).then_some(self.digest)
    }

    /// Records folded into the digest so far.
    pub fn len(&self) -> u64 {
        self.count
    }

    /// True when nothing has been recorded.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The records kept ([`TraceMode::Records`] only; empty otherwise).
    pub fn records(&self) -> &[TraceRecord] {
        &self.records
    }

    /// Adds a record.
    #[inline]
    pub fn record(&mut self, rec: TraceRecord) {
        if self.mode == TraceMode::Off {
            return;
        }
        self.count += 1;
        for w in [
            rec.at.as_micros(),
            (u64::from(rec.a) << 32) | u64::from(rec.b),
            (u64::from(rec.kind.code()) << 32) | u64::from(rec.len),
        ] {
            self.digest = (self.digest ^ w).wrapping_mul(FNV_PRIME);
            self.digest ^= self.digest >> 32;
        }
        if self.mode == TraceMode::Records {
            self.records.push(rec);
        }
    }
}

/// The digest of a sequence of records, as [`Trace`] computes it.
pub fn digest_of(records: &[TraceRecord]) -> u64 {
    let mut t = Trace::new(TraceMode::Digest);
    for r in records {
        t.record(*r);
    }
    t.digest
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(at: u64, a: u32) -> TraceRecord {
        TraceRecord {
            at: Instant::from_micros(at),
            kind: TraceKind::Deliver,
            a,
            b: 2,
            len: 100,
        }
    }

    #[test]
    fn off_keeps_nothing() {
        let mut t = Trace::new(TraceMode::Off);
        t.record(rec(1, 1));
        assert_eq!(t.digest(), None);
        assert!(t.is_empty());
    }

    #[test]
    fn digest_mode_matches_records_mode() {
        let mut d = Trace::new(TraceMode::Digest);
        let mut r = Trace::new(TraceMode::Records);
        for i in 0..100 {
            d.record(rec(i, i as u32));
            r.record(rec(i, i as u32));
        }
        assert_eq!(d.digest(), r.digest());
        assert_eq!(r.records().len(), 100);
        assert!(d.records().is_empty());
        assert_eq!(digest_of(r.records()), d.digest().unwrap_or_default());
    }

    #[test]
    fn any_difference_changes_the_digest() {
        let base: Vec<_> = (0..10).map(|i| rec(i, 1)).collect();
        let d0 = digest_of(&base);
        for i in 0..10 {
            for change in [
                |r: &mut TraceRecord| r.a ^= 1 << 31,
                |r: &mut TraceRecord| r.b += 1,
                |r: &mut TraceRecord| r.len += 1,
                |r: &mut TraceRecord| r.at = Instant::from_micros(r.at.as_micros() + 1),
                |r: &mut TraceRecord| r.kind = TraceKind::Drop(DropReason::Loss),
            ] {
                let mut v = base.clone();
                change(&mut v[i]);
                assert_ne!(digest_of(&v), d0);
            }
        }
        let mut swapped = base.clone();
        swapped.swap(2, 3);
        assert_ne!(digest_of(&swapped), d0);
    }
}
