//! The link-state database: the newest verified advert of every origin, with expiry.
//!
//! Adverts are immutable once received and held behind `Arc`, so a process that runs many
//! routers (the simulator) can share identical adverts between them.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use x0_wire::NodeId;
use x0_wire::routing::{Advert, AdvertBody};

use crate::time::Instant;

/// Longest lifetime we honour, whatever an origin asks for.
pub const MAX_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// One origin's entry.
#[derive(Debug, Clone)]
pub struct LsdbEntry {
    /// The decoded body.
    pub body: Arc<AdvertBody>,
    /// The advert as received (to forward verbatim).
    pub advert: Arc<Advert>,
    /// When it ages out unless refreshed.
    pub expires_at: Instant,
}

/// What offering an advert to the database did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// Newer than what we had (or new): installed. `links_changed` says whether the origin's
    /// link set or costs differ from the replaced entry.
    Installed {
        /// Whether the topology changed.
        links_changed: bool,
    },
    /// The same sequence number as ours.
    Duplicate,
    /// Older than ours.
    Older {
        /// Our sequence number.
        ours: u64,
    },
}

/// The database.
#[derive(Debug, Default, Clone)]
pub struct Lsdb {
    entries: BTreeMap<NodeId, LsdbEntry>,
    expiry: BTreeSet<(Instant, NodeId)>,
    digest: u64,
}

fn entry_hash(origin: &NodeId, seq: u64) -> u64 {
    let mut h: u64 = 0x9e37_79b9_7f4a_7c15 ^ seq.wrapping_mul(0xff51_afd7_ed55_8ccd);
    for chunk in origin.as_bytes().chunks(8) {
        let mut b = [0u8; 8];
        b[..chunk.len()].copy_from_slice(chunk);
        h ^= u64::from_le_bytes(b);
        h = h.rotate_left(27).wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    }
    h
}

impl Lsdb {
    /// An empty database.
    pub fn new() -> Self {
        Self::default()
    }

    /// The sequence number held for `origin`.
    pub fn seq_of(&self, origin: &NodeId) -> Option<u64> {
        self.entries.get(origin).map(|e| e.body.seq)
    }

    /// The entry of `origin`.
    pub fn get(&self, origin: &NodeId) -> Option<&LsdbEntry> {
        self.entries.get(origin)
    }

    /// Compares a (verified) advert with what we hold and installs it if newer.
    pub fn offer(&mut self, advert: Arc<Advert>, body: Arc<AdvertBody>, now: Instant) -> Offer {
        if let Some(cur) = self.entries.get(&body.origin) {
            if cur.body.seq == body.seq {
                return Offer::Duplicate;
            }
            if cur.body.seq > body.seq {
                return Offer::Older { ours: cur.body.seq };
            }
        }
        let lifetime = Duration::from_secs(u64::from(body.lifetime_s)).min(MAX_LIFETIME);
        let entry = LsdbEntry {
            expires_at: now + lifetime,
            body: body.clone(),
            advert,
        };
        let links_changed = match self.entries.insert(body.origin, entry) {
            Some(old) => {
                self.expiry.remove(&(old.expires_at, body.origin));
                self.digest ^= entry_hash(&body.origin, old.body.seq);
                old.body.links != body.links
            }
            None => true,
        };
        self.expiry.insert((now + lifetime, body.origin));
        self.digest ^= entry_hash(&body.origin, body.seq);
        Offer::Installed { links_changed }
    }

    /// Removes entries whose lifetime ended; returns their origins.
    pub fn expire(&mut self, now: Instant) -> Vec<NodeId> {
        let mut gone = Vec::new();
        while let Some(&(at, origin)) = self.expiry.first() {
            if at > now {
                break;
            }
            self.expiry.pop_first();
            if let Some(old) = self.entries.remove(&origin) {
                self.digest ^= entry_hash(&origin, old.body.seq);
                gone.push(origin);
            }
        }
        gone
    }

    /// When the next entry expires.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.expiry.first().map(|(at, _)| *at)
    }

    /// Every entry, by origin.
    pub fn iter(&self) -> impl Iterator<Item = (&NodeId, &LsdbEntry)> {
        self.entries.iter()
    }

    /// Number of origins.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// An order-independent digest of every `(origin, seq)` held: two databases holding the same
    /// versions have the same digest.
    pub fn digest(&self) -> u64 {
        self.digest
    }
}

/// The digest contribution of one `(origin, seq)`, for building expected digests.
pub fn version_digest(origin: &NodeId, seq: u64) -> u64 {
    entry_hash(origin, seq)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn advert(origin: u8, seq: u64, links: &[u8]) -> (Arc<Advert>, Arc<AdvertBody>) {
        let body = AdvertBody {
            origin: NodeId::from_bytes([origin; 16]),
            seq,
            lifetime_s: 60,
            links: links
                .iter()
                .map(|n| x0_wire::routing::AdvertisedLink {
                    neighbor: NodeId::from_bytes([*n; 16]),
                    cost: 10,
                    class: 0,
                })
                .collect(),
        };
        let a = Advert {
            body: body.encode(),
            origin_key: vec![],
            signature: vec![],
        };
        (Arc::new(a), Arc::new(body))
    }

    #[test]
    fn newer_replaces_older_and_equal_is_duplicate() {
        let mut db = Lsdb::new();
        let now = Instant::ZERO;
        let (a, b) = advert(1, 5, &[2]);
        assert_eq!(
            db.offer(a.clone(), b.clone(), now),
            Offer::Installed {
                links_changed: true
            }
        );
        assert_eq!(db.offer(a, b, now), Offer::Duplicate);
        let (a, b) = advert(1, 4, &[2]);
        assert_eq!(db.offer(a, b, now), Offer::Older { ours: 5 });
        let (a, b) = advert(1, 6, &[2]);
        assert_eq!(
            db.offer(a, b, now),
            Offer::Installed {
                links_changed: false
            }
        );
        let (a, b) = advert(1, 7, &[2, 3]);
        assert_eq!(
            db.offer(a, b, now),
            Offer::Installed {
                links_changed: true
            }
        );
        assert_eq!(db.seq_of(&NodeId::from_bytes([1; 16])), Some(7));
    }

    #[test]
    fn entries_age_out_and_refresh_resets_the_clock() {
        let mut db = Lsdb::new();
        let (a, b) = advert(1, 1, &[]);
        db.offer(a, b, Instant::ZERO);
        let (a, b) = advert(2, 1, &[]);
        db.offer(a, b, Instant::from_millis(30_000));
        assert_eq!(db.next_expiry(), Some(Instant::from_millis(60_000)));
        assert!(db.expire(Instant::from_millis(59_999)).is_empty());
        let (a, b) = advert(1, 2, &[]);
        db.offer(a, b, Instant::from_millis(59_000));
        assert!(
            db.expire(Instant::from_millis(60_000)).is_empty(),
            "refreshed"
        );
        assert_eq!(
            db.expire(Instant::from_millis(90_000)),
            vec![NodeId::from_bytes([2; 16])]
        );
        assert_eq!(db.len(), 1);
    }

    #[test]
    fn digest_tracks_versions_independent_of_order() {
        let (mut x, mut y) = (Lsdb::new(), Lsdb::new());
        for (o, s) in [(1, 3), (2, 1), (3, 9)] {
            let (a, b) = advert(o, s, &[]);
            x.offer(a, b, Instant::ZERO);
        }
        for (o, s) in [(3, 9), (1, 2), (2, 1), (1, 3)] {
            let (a, b) = advert(o, s, &[]);
            y.offer(a, b, Instant::ZERO);
        }
        assert_eq!(x.digest(), y.digest());
        let expected = [(1u8, 3u64), (2, 1), (3, 9)].iter().fold(0, |d, (o, s)| {
            d ^ version_digest(&NodeId::from_bytes([*o; 16]), *s)
        });
        assert_eq!(x.digest(), expected);
        let (a, b) = advert(2, 2, &[]);
        y.offer(a, b, Instant::ZERO);
        assert_ne!(x.digest(), y.digest());
    }
}
