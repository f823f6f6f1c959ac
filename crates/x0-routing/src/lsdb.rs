//! The link-state database: the newest verified advert of every origin, with expiry.
//!
//! Adverts are immutable once received: a [`StoredAdvert`] keeps the advert, its decoded body
//! and the datagram that carries it (so forwarding costs a copy, not an encode), behind an `Arc`.
//! A process that runs many routers (the simulator) shares identical adverts between them
//! through an [`AdvertInterner`].
//!
//! Expiry is swept lazily: the database remembers the earliest expiry it may hold, and removes
//! whatever has expired when that time comes (lifetimes are hours, so sweeps are rare).
//!
//! Entries live in one vector sorted by origin: 32 bytes each, one allocation per database, and
//! binary-search lookups. (A B-tree costs twice the memory and scatters a router's hot state
//! among its database's nodes, which at 10,000 simulated routers made the simulator slower by
//! half.) The vector is copy-on-write: cloning a database shares it until one of the copies
//! changes, so the routers of a simulated mesh that starts converged share one vector instead
//! of holding 10,000 equal ones.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use x0_wire::NodeId;
#[cfg(test)]
use x0_wire::routing::RoutingMessage;
use x0_wire::routing::{Advert, AdvertBody};

use crate::time::Instant;

/// Longest lifetime we honour, whatever an origin asks for.
pub const MAX_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// An advert as stored and forwarded.
#[derive(Debug)]
pub struct StoredAdvert {
    /// The advert (body bytes, key material, signature).
    pub advert: Advert,
    /// The decoded body.
    pub body: AdvertBody,
    /// The routing datagram carrying it.
    pub datagram: Vec<u8>,
}

impl StoredAdvert {
    /// Wraps an advert and its decoded body.
    pub fn new(advert: Advert, body: AdvertBody) -> Self {
        Self {
            datagram: advert.to_datagram(),
            advert,
            body,
        }
    }
}

/// Shares identical adverts between routers of one process.
#[derive(Debug, Default)]
pub struct AdvertInterner {
    map: Mutex<HashMap<(NodeId, u64), Weak<StoredAdvert>>>,
}

impl AdvertInterner {
    /// A new, empty interner.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// The shared copy of this advert (the one already interned if its bytes are equal).
    pub fn intern(&self, advert: Advert, body: AdvertBody) -> Arc<StoredAdvert> {
        let key = (body.origin, body.seq);
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(existing) = map.get(&key).and_then(Weak::upgrade)
            && existing.advert == advert
        {
            return existing;
        }
        let stored = Arc::new(StoredAdvert::new(advert, body));
        if map.len() >= 4096 && map.len().is_power_of_two() {
            map.retain(|_, w| w.strong_count() > 0);
        }
        map.insert(key, Arc::downgrade(&stored));
        stored
    }
}

/// One origin's entry.
#[derive(Debug, Clone)]
pub struct LsdbEntry {
    /// The advert.
    pub stored: Arc<StoredAdvert>,
    /// When it ages out unless refreshed.
    pub expires_at: Instant,
}

impl LsdbEntry {
    /// The decoded body.
    pub fn body(&self) -> &AdvertBody {
        &self.stored.body
    }

    /// When this version was installed (its expiry minus its lifetime: not stored twice).
    pub fn installed_at(&self) -> Instant {
        let lifetime =
            Duration::from_secs(u64::from(self.stored.body.lifetime_s)).min(MAX_LIFETIME);
        Instant::from_micros(
            self.expires_at
                .as_micros()
                .saturating_sub(u64::try_from(lifetime.as_micros()).unwrap_or(u64::MAX)),
        )
    }
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
#[derive(Debug, Clone)]
pub struct Lsdb {
    entries: Arc<Vec<(NodeId, LsdbEntry)>>,
    /// No entry expires before this.
    next_sweep: Instant,
    digest: u64,
}

impl Default for Lsdb {
    fn default() -> Self {
        Self {
            entries: Arc::new(Vec::new()),
            next_sweep: Instant::NEVER,
            digest: 0,
        }
    }
}

/// Whether `new` replaces `cur` (two versions of one origin's advert): a higher sequence
/// number, or the same number and other contents whose hash is higher (see [`Lsdb::offer`]).
pub fn supersedes(new: &StoredAdvert, cur: &StoredAdvert) -> bool {
    let (n, c) = (new.body.seq, cur.body.seq);
    n > c
        || (n == c
            && new.datagram != cur.datagram
            && content_hash(&cur.datagram) < content_hash(&new.datagram))
}

/// FNV-1a over an advert datagram: the tie-break between two adverts of equal sequence number.
pub fn content_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
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

    fn position(&self, origin: &NodeId) -> Result<usize, usize> {
        self.entries.binary_search_by(|(o, _)| o.cmp(origin))
    }

    /// The sequence number held for `origin`.
    pub fn seq_of(&self, origin: &NodeId) -> Option<u64> {
        self.get(origin).map(|e| e.stored.body.seq)
    }

    /// The entry of `origin`.
    pub fn get(&self, origin: &NodeId) -> Option<&LsdbEntry> {
        self.position(origin).ok().map(|i| &self.entries[i].1)
    }

    /// Compares a (verified) advert with what we hold and installs it if newer. Two different
    /// adverts with the same sequence number (an origin that restarted and reused it) are
    /// ordered by a hash of their bytes, so every node settles on the same one and the origin,
    /// seeing a different advert under its own number, moves past it.
    pub fn offer(&mut self, stored: Arc<StoredAdvert>, now: Instant) -> Offer {
        let origin = stored.body.origin;
        let seq = stored.body.seq;
        if let Some(cur) = self.get(&origin) {
            let ours = cur.stored.body.seq;
            if !supersedes(&stored, &cur.stored) {
                return if cur.stored.datagram == stored.datagram {
                    Offer::Duplicate
                } else {
                    Offer::Older { ours }
                };
            }
        }
        let lifetime = Duration::from_secs(u64::from(stored.body.lifetime_s)).min(MAX_LIFETIME);
        let expires_at = now + lifetime;
        self.next_sweep = self.next_sweep.min(expires_at);
        let entry = LsdbEntry {
            stored: stored.clone(),
            expires_at,
        };
        let links_changed = match self.position(&origin) {
            Ok(i) => {
                let old = std::mem::replace(&mut Arc::make_mut(&mut self.entries)[i].1, entry);
                self.digest ^= entry_hash(&origin, old.stored.body.seq);
                old.stored.body.links != stored.body.links
            }
            Err(i) => {
                Arc::make_mut(&mut self.entries).insert(i, (origin, entry));
                true
            }
        };
        self.digest ^= entry_hash(&origin, seq);
        Offer::Installed { links_changed }
    }

    /// Removes `origin`'s entry; returns whether there was one.
    pub fn remove(&mut self, origin: &NodeId) -> bool {
        let Ok(i) = self.position(origin) else {
            return false;
        };
        let (_, old) = Arc::make_mut(&mut self.entries).remove(i);
        self.digest ^= entry_hash(origin, old.stored.body.seq);
        true
    }

    /// Removes entries whose lifetime ended; returns their origins.
    pub fn expire(&mut self, now: Instant) -> Vec<NodeId> {
        if now < self.next_sweep {
            return Vec::new();
        }
        let mut gone = Vec::new();
        let mut next = Instant::NEVER;
        let digest = &mut self.digest;
        Arc::make_mut(&mut self.entries).retain(|(origin, e)| {
            if e.expires_at <= now {
                *digest ^= entry_hash(origin, e.stored.body.seq);
                gone.push(*origin);
                false
            } else {
                next = next.min(e.expires_at);
                true
            }
        });
        self.next_sweep = next;
        gone
    }

    /// When the next entry may expire.
    pub fn next_expiry(&self) -> Option<Instant> {
        (self.next_sweep != Instant::NEVER).then_some(self.next_sweep)
    }

    /// Every entry, by origin.
    pub fn iter(&self) -> impl Iterator<Item = (&NodeId, &LsdbEntry)> {
        self.entries.iter().map(|(o, e)| (o, e))
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

    fn advert(origin: u8, seq: u64, links: &[u8]) -> Arc<StoredAdvert> {
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
        Arc::new(StoredAdvert::new(a, body))
    }

    #[test]
    fn newer_replaces_older_and_equal_is_duplicate() {
        let mut db = Lsdb::new();
        let now = Instant::ZERO;
        assert_eq!(
            db.offer(advert(1, 5, &[2]), now),
            Offer::Installed {
                links_changed: true
            }
        );
        assert_eq!(db.offer(advert(1, 5, &[2]), now), Offer::Duplicate);
        assert_eq!(db.offer(advert(1, 4, &[2]), now), Offer::Older { ours: 5 });
        assert_eq!(
            db.offer(advert(1, 6, &[2]), now),
            Offer::Installed {
                links_changed: false
            }
        );
        assert_eq!(
            db.offer(advert(1, 7, &[2, 3]), now),
            Offer::Installed {
                links_changed: true
            }
        );
        assert_eq!(db.seq_of(&NodeId::from_bytes([1; 16])), Some(7));
    }

    #[test]
    fn equal_sequence_numbers_are_ordered_by_content() {
        let (x, y) = (advert(1, 5, &[2]), advert(1, 5, &[3]));
        let (hi, lo) = if content_hash(&x.datagram) > content_hash(&y.datagram) {
            (x, y)
        } else {
            (y, x)
        };
        let mut a = Lsdb::new();
        a.offer(lo.clone(), Instant::ZERO);
        assert_eq!(
            a.offer(hi.clone(), Instant::ZERO),
            Offer::Installed {
                links_changed: true
            }
        );
        let mut b = Lsdb::new();
        b.offer(hi.clone(), Instant::ZERO);
        assert_eq!(b.offer(lo, Instant::ZERO), Offer::Older { ours: 5 });
        assert_eq!(a.digest(), b.digest());
    }

    #[test]
    fn entries_age_out_and_refresh_resets_the_clock() {
        let mut db = Lsdb::new();
        db.offer(advert(1, 1, &[]), Instant::ZERO);
        db.offer(advert(2, 1, &[]), Instant::from_millis(30_000));
        assert_eq!(db.next_expiry(), Some(Instant::from_millis(60_000)));
        assert!(db.expire(Instant::from_millis(59_999)).is_empty());
        db.offer(advert(1, 2, &[]), Instant::from_millis(59_000));
        assert!(
            db.expire(Instant::from_millis(60_000)).is_empty(),
            "refreshed"
        );
        assert_eq!(db.next_expiry(), Some(Instant::from_millis(90_000)));
        assert_eq!(
            db.expire(Instant::from_millis(90_000)),
            vec![NodeId::from_bytes([2; 16])]
        );
        assert_eq!(db.len(), 1);
        assert_eq!(db.next_expiry(), Some(Instant::from_millis(119_000)));
    }

    #[test]
    fn removing_an_origin_updates_the_digest() {
        let mut db = Lsdb::new();
        db.offer(advert(1, 3, &[]), Instant::ZERO);
        let one = db.digest();
        db.offer(advert(2, 1, &[]), Instant::ZERO);
        assert!(db.remove(&NodeId::from_bytes([2; 16])));
        assert!(!db.remove(&NodeId::from_bytes([2; 16])));
        assert_eq!(db.digest(), one);
        assert_eq!(db.len(), 1);
        assert_eq!(db.seq_of(&NodeId::from_bytes([2; 16])), None);
    }

    #[test]
    fn digest_tracks_versions_independent_of_order() {
        let (mut x, mut y) = (Lsdb::new(), Lsdb::new());
        for (o, s) in [(1, 3), (2, 1), (3, 9)] {
            x.offer(advert(o, s, &[]), Instant::ZERO);
        }
        for (o, s) in [(3, 9), (1, 2), (2, 1), (1, 3)] {
            y.offer(advert(o, s, &[]), Instant::ZERO);
        }
        assert_eq!(x.digest(), y.digest());
        let expected = [(1u8, 3u64), (2, 1), (3, 9)].iter().fold(0, |d, (o, s)| {
            d ^ version_digest(&NodeId::from_bytes([*o; 16]), *s)
        });
        assert_eq!(x.digest(), expected);
        y.offer(advert(2, 2, &[]), Instant::ZERO);
        assert_ne!(x.digest(), y.digest());
        y.expire(Instant::from_millis(120_000));
        assert_eq!(y.digest(), 0);
    }

    #[test]
    fn the_interner_shares_equal_adverts() {
        let i = AdvertInterner::new();
        let a = advert(1, 1, &[2]);
        let x = i.intern(a.advert.clone(), a.body.clone());
        let y = i.intern(a.advert.clone(), a.body.clone());
        assert!(Arc::ptr_eq(&x, &y));
        let mut forged = a.advert.clone();
        forged.signature = vec![1];
        let z = i.intern(forged, a.body.clone());
        assert!(!Arc::ptr_eq(&x, &z), "different bytes are never merged");
        assert_eq!(
            x.datagram,
            RoutingMessage::Advert(a.advert.clone(), a.body.clone()).encode()
        );
    }
}
