//! The end-to-end sessions of one node: who may open one, how many exist, when they go.
//!
//! Overlay sources are not authenticated until an end-to-end handshake completes: any relay,
//! or any node that can reach us, can put any source node ID in an overlay header. The table
//! therefore keeps nothing for a claimed source until it has shown that it receives what is sent
//! to that node, and bounds everything a real peer (or a relay on its path) can make it hold.
//!
//! * **Return routability.** A peer's new handshake is answered only when its messages carry a
//!   cookie this node issued for that peer and handshake ID; without one the answer is a
//!   stateless retry carrying the cookie ([`HandshakeMessage`]). The cookie is an HMAC-SHA-256
//!   (truncated to 16 bytes) under a per-node secret of this node's ID, the peer's ID, the
//!   handshake ID and a 10-second period; it is accepted in its period and the next. A node that
//!   only forges frames never sees the retry, so it creates no session, no TLS state and no
//!   cryptographic work here, and whatever it sends is answered with at most one retry no
//!   longer than the message itself (no amplification). The cost is one round trip on
//!   handshakes the peer starts.
//! * **Caps.** At most [`SessionLimits::max_sessions`] sessions, of which at most
//!   [`SessionLimits::max_pending`] opened by a peer whose handshake has not authenticated yet.
//!   To make room the table evicts, in this order, the oldest such pending session, then the
//!   established session idle the longest. An established session in use, and a session we
//!   opened ourselves, are never evicted: a newcomer is then refused.
//! * **Ageing.** Sessions whose handshake failed or timed out before any keys are freed; a
//!   session idle for [`E2eConfig::idle_timeout`] starts no rekey and is freed once its keys
//!   expired. Handshakes themselves end after [`E2eConfig::handshake_timeout`].
//!
//! Every refusal, eviction and expiry is counted ([`SessionTableStats`]). Sans-IO like the rest
//! of the crate: time comes in as `now`.
//!
//! The table stores the caller's per-peer type `S`, which holds the [`E2eSession`]
//! ([`BorrowMut`]), so that a daemon keeps its own per-peer state (queued packets, path
//! choices) in the same entry and it goes when the session goes.

use std::borrow::BorrowMut;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::constant_time::verify_slices_are_equal;
use aws_lc_rs::hmac;
use thiserror::Error;
use x0_wire::NodeId;

use crate::aead::KeySetupError;
use crate::e2e::{
    COOKIE_LEN, Cookie, E2eConfig, E2eError, E2eSession, E2eStats, Handled, HandshakeMessage,
    RETRY_LEN, TlsRole,
};

/// How long one cookie period lasts; a cookie is accepted in its period and the next.
pub const COOKIE_PERIOD: Duration = Duration::from_secs(10);

/// Issues and checks return-routability cookies.
pub(crate) struct CookieJar {
    key: hmac::Key,
    local: NodeId,
}

impl CookieJar {
    pub(crate) fn new(secret: &[u8; 32], local: NodeId) -> Self {
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
            local,
        }
    }

    fn period(now: Duration) -> u64 {
        now.as_secs() / COOKIE_PERIOD.as_secs()
    }

    fn mac(&self, peer: NodeId, handshake_id: u64, period: u64) -> Cookie {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(b"x0t e2e cookie");
        ctx.update(self.local.as_bytes());
        ctx.update(peer.as_bytes());
        ctx.update(&handshake_id.to_be_bytes());
        ctx.update(&period.to_be_bytes());
        let tag = ctx.sign();
        let mut c = [0u8; COOKIE_LEN];
        c.copy_from_slice(&tag.as_ref()[..COOKIE_LEN]);
        c
    }

    /// The cookie for `peer`'s handshake `handshake_id`, now.
    pub(crate) fn issue(&self, peer: NodeId, handshake_id: u64, now: Duration) -> Cookie {
        self.mac(peer, handshake_id, Self::period(now))
    }

    /// Checks the cookie of `msg`, a client message of `len` bytes from `peer` that would
    /// start a handshake: `Ok(())` if valid, else the retry to answer with (`None`: too short
    /// to be answered without amplification).
    pub(crate) fn admit(
        &self,
        peer: NodeId,
        msg: &HandshakeMessage<'_>,
        len: usize,
        now: Duration,
    ) -> Result<(), Option<Vec<u8>>> {
        if msg
            .cookie
            .is_some_and(|c| self.check(peer, msg.handshake_id, &c, now))
        {
            return Ok(());
        }
        if len < RETRY_LEN {
            return Err(None);
        }
        let cookie = self.issue(peer, msg.handshake_id, now);
        Err(Some(HandshakeMessage::retry(msg, cookie).encode()))
    }

    /// Whether `cookie` was issued for `peer`'s handshake `handshake_id` in this period or the
    /// previous one.
    pub(crate) fn check(
        &self,
        peer: NodeId,
        handshake_id: u64,
        cookie: &Cookie,
        now: Duration,
    ) -> bool {
        let p = Self::period(now);
        [Some(p), p.checked_sub(1)]
            .into_iter()
            .flatten()
            .any(|p| verify_slices_are_equal(&self.mac(peer, handshake_id, p), cookie).is_ok())
    }
}

/// Bounds of a [`SessionTable`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionLimits {
    /// Most sessions held, established or not. Default 4,096.
    pub max_sessions: usize,
    /// Most sessions opened by a peer whose handshake has not authenticated yet. Default 128.
    pub max_pending: usize,
}

impl Default for SessionLimits {
    fn default() -> Self {
        Self {
            max_sessions: 4096,
            max_pending: 128,
        }
    }
}

/// Counters and gauges of a [`SessionTable`], for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionTableStats {
    /// Sessions held (gauge).
    pub sessions: u64,
    /// Sessions with keys (gauge).
    pub established: u64,
    /// Sessions opened by a peer whose handshake has not authenticated yet (gauge).
    pub pending: u64,
    /// Handshake messages that did not decode.
    pub malformed: u64,
    /// Stateless retries sent (new peer handshakes without a valid cookie), with or without a
    /// session.
    pub retries_sent: u64,
    /// Handshake messages for which no session exists that cannot open one: a server's
    /// message, a bare acknowledgement, our own node ID as source, or a message without a valid
    /// cookie too short to be answered by a retry.
    pub unmatched: u64,
    /// New sessions refused: the table is full of sessions that may not be evicted
    /// (established and in use, or opened by us).
    pub refused_full: u64,
    /// Sessions opened by a peer and not yet authenticated, evicted (oldest first) to make room.
    pub evicted_pending: u64,
    /// Idle established sessions evicted (least recently active first) to make room.
    pub evicted_idle: u64,
    /// Idle sessions freed once their keys expired.
    pub expired_idle: u64,
    /// Sessions freed because their handshake failed or timed out before any keys.
    pub expired_stale: u64,
    /// Handshake counters of every session, live and freed.
    pub handshakes: E2eStats,
}

/// Why [`SessionTable::get_or_insert_with`] refused a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum AdmitError {
    /// [`SessionLimits::max_sessions`] sessions exist and none may be evicted.
    #[error("end-to-end session table full: every session is established and in use, or ours")]
    Full,
}

/// What [`SessionTable::handle_handshake`] did with a message.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HandshakeOutcome {
    /// The message went to the session with its source: send what that session's
    /// [`E2eSession::poll_transmit`] gives and handle its events.
    Session,
    /// Send this payload back to the source in an e2e-handshake frame (a stateless retry).
    /// Nothing was stored.
    Reply(Vec<u8>),
    /// Dropped (counted in the stats or the session's).
    Dropped,
}

struct Entry<S> {
    item: S,
    /// Opened by the peer's handshake (not by our traffic).
    by_peer: bool,
    created: Duration,
}

impl<S: BorrowMut<E2eSession>> Entry<S> {
    fn session(&self) -> &E2eSession {
        self.item.borrow()
    }

    /// Opened by the peer, and no handshake has authenticated it yet.
    fn pending(&self) -> bool {
        self.by_peer && self.session().epoch().is_none()
    }
}

/// The end-to-end sessions of one node, bounded, keyed by peer.
pub struct SessionTable<S> {
    config: Arc<E2eConfig>,
    local: NodeId,
    limits: SessionLimits,
    cookies: CookieJar,
    entries: BTreeMap<NodeId, Entry<S>>,
    next_index: u32,
    stats: SessionTableStats,
    /// Handshake counters of freed sessions.
    freed: E2eStats,
}

impl<S> std::fmt::Debug for SessionTable<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionTable")
            .field("local", &self.local)
            .field("limits", &self.limits)
            .field("sessions", &self.entries.len())
            .finish_non_exhaustive()
    }
}

impl<S: BorrowMut<E2eSession>> SessionTable<S> {
    /// An empty table for `local`, with a fresh random cookie secret.
    pub fn new(
        config: Arc<E2eConfig>,
        local: NodeId,
        limits: SessionLimits,
    ) -> Result<Self, KeySetupError> {
        let mut secret = [0u8; 32];
        aws_lc_rs::rand::fill(&mut secret).map_err(|_| KeySetupError)?;
        Ok(Self::with_cookie_secret(config, local, limits, &secret))
    }

    /// An empty table whose cookies are keyed by `secret` (deterministic tests and fuzzing;
    /// a daemon uses [`SessionTable::new`]).
    pub fn with_cookie_secret(
        config: Arc<E2eConfig>,
        local: NodeId,
        limits: SessionLimits,
        secret: &[u8; 32],
    ) -> Self {
        Self {
            config,
            local,
            limits,
            cookies: CookieJar::new(secret, local),
            entries: BTreeMap::new(),
            next_index: 1,
            stats: SessionTableStats::default(),
            freed: E2eStats::default(),
        }
    }

    /// This node.
    pub fn local(&self) -> NodeId {
        self.local
    }

    /// The bounds in force.
    pub fn limits(&self) -> &SessionLimits {
        &self.limits
    }

    /// Number of sessions held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no session is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The session with `peer`.
    pub fn get(&self, peer: &NodeId) -> Option<&S> {
        self.entries.get(peer).map(|e| &e.item)
    }

    /// The session with `peer`.
    pub fn get_mut(&mut self, peer: &NodeId) -> Option<&mut S> {
        self.entries.get_mut(peer).map(|e| &mut e.item)
    }

    /// Every session, by peer.
    pub fn iter(&self) -> impl Iterator<Item = (&NodeId, &S)> {
        self.entries.iter().map(|(n, e)| (n, &e.item))
    }

    /// The cookie this node issues, at `now`, for `peer`'s handshake `handshake_id` (what a
    /// retry carries). For tests and fuzzing.
    pub fn cookie(&self, peer: NodeId, handshake_id: u64, now: Duration) -> Cookie {
        self.cookies.issue(peer, handshake_id, now)
    }

    /// The session with `peer` for traffic we send (we will start its handshake), created with
    /// `make` if missing. Making room may evict a pending or idle session; an error if none
    /// may be evicted.
    pub fn get_or_insert_with(
        &mut self,
        now: Duration,
        peer: NodeId,
        make: impl FnOnce(E2eSession) -> S,
    ) -> Result<&mut S, AdmitError> {
        if !self.entries.contains_key(&peer) {
            if self.entries.len() >= self.limits.max_sessions && !self.evict_for_room(now) {
                self.stats.refused_full += 1;
                return Err(AdmitError::Full);
            }
            self.insert(now, peer, false, make);
        }
        self.entries
            .get_mut(&peer)
            .map(|e| &mut e.item)
            .ok_or(AdmitError::Full)
    }

    fn insert(
        &mut self,
        now: Duration,
        peer: NodeId,
        by_peer: bool,
        make: impl FnOnce(E2eSession) -> S,
    ) {
        let index = self.next_index;
        self.next_index = self.next_index.wrapping_add(1).max(1);
        let session = E2eSession::new(self.config.clone(), self.local, peer, index);
        self.entries.insert(
            peer,
            Entry {
                item: make(session),
                by_peer,
                created: now,
            },
        );
    }

    /// Handles the payload of an e2e-handshake overlay frame from `source` (addressed to us).
    /// A session is created (with `make`) only for a new client handshake with a valid
    /// cookie, within the limits; without a cookie the outcome is a stateless retry to send
    /// back. Errors are the session's (its handshake failed; the session and its current
    /// keys stay) or a malformed message.
    pub fn handle_handshake(
        &mut self,
        now: Duration,
        source: NodeId,
        payload: &[u8],
        make: impl FnOnce(E2eSession) -> S,
    ) -> Result<HandshakeOutcome, E2eError> {
        if let Some(e) = self.entries.get_mut(&source) {
            return match e
                .item
                .borrow_mut()
                .handle_handshake(now, payload, &self.cookies)
            {
                Ok(Handled::Fed) => Ok(HandshakeOutcome::Session),
                Ok(Handled::Retry(m)) => Ok(HandshakeOutcome::Reply(m)),
                Ok(Handled::Ignored) => Ok(HandshakeOutcome::Dropped),
                Err(e @ E2eError::Malformed(_)) => {
                    self.stats.malformed += 1;
                    Err(e)
                }
                Err(e) => Err(e),
            };
        }
        let msg = match HandshakeMessage::decode(payload) {
            Ok(m) => m,
            Err(e) => {
                self.stats.malformed += 1;
                return Err(e.into());
            }
        };
        if msg.role != TlsRole::Client || msg.data.is_empty() || source == self.local {
            self.stats.unmatched += 1;
            return Ok(HandshakeOutcome::Dropped);
        }
        match self.cookies.admit(source, &msg, payload.len(), now) {
            Ok(()) => {}
            Err(Some(retry)) => {
                self.stats.retries_sent += 1;
                return Ok(HandshakeOutcome::Reply(retry));
            }
            Err(None) => {
                self.stats.unmatched += 1;
                return Ok(HandshakeOutcome::Dropped);
            }
        }
        // The source receives what we send to it: admit it, within the limits.
        let pending = self.entries.values().filter(|e| e.pending()).count();
        if pending >= self.limits.max_pending && !self.evict_pending() {
            self.stats.refused_full += 1;
            return Ok(HandshakeOutcome::Dropped);
        }
        if self.entries.len() >= self.limits.max_sessions && !self.evict_for_room(now) {
            self.stats.refused_full += 1;
            return Ok(HandshakeOutcome::Dropped);
        }
        self.insert(now, source, true, make);
        let Some(e) = self.entries.get_mut(&source) else {
            return Ok(HandshakeOutcome::Dropped);
        };
        match e
            .item
            .borrow_mut()
            .handle_handshake(now, payload, &self.cookies)?
        {
            Handled::Fed => Ok(HandshakeOutcome::Session),
            Handled::Retry(m) => Ok(HandshakeOutcome::Reply(m)),
            Handled::Ignored => Ok(HandshakeOutcome::Dropped),
        }
    }

    /// Evicts the oldest session opened by a peer and not yet authenticated.
    fn evict_pending(&mut self) -> bool {
        let victim = self
            .entries
            .iter()
            .filter(|(_, e)| e.pending())
            .min_by_key(|(n, e)| (e.created, **n))
            .map(|(n, _)| *n);
        let Some(peer) = victim else {
            return false;
        };
        self.remove(&peer);
        self.stats.evicted_pending += 1;
        true
    }

    /// Frees one slot: a pending peer session, else the established session idle longest.
    fn evict_for_room(&mut self, now: Duration) -> bool {
        if self.evict_pending() {
            return true;
        }
        let victim = self
            .entries
            .iter()
            .filter(|(_, e)| e.session().is_idle(now))
            .min_by_key(|(n, e)| (e.session().last_activity(), **n))
            .map(|(n, _)| *n);
        let Some(peer) = victim else {
            return false;
        };
        self.remove(&peer);
        self.stats.evicted_idle += 1;
        true
    }

    fn remove(&mut self, peer: &NodeId) {
        if let Some(e) = self.entries.remove(peer) {
            self.freed.add(&e.session().stats());
        }
    }

    /// When [`SessionTable::handle_timeout`] wants to run next.
    pub fn poll_timeout(&self) -> Option<Duration> {
        self.entries
            .values()
            .flat_map(|e| [e.session().poll_timeout(), e.session().expires_at()])
            .flatten()
            .min()
    }

    /// Runs the timers of the sessions that are due and frees sessions that aged out. Returns
    /// the peers whose timers ran: send what their [`E2eSession::poll_transmit`] gives and
    /// handle their events.
    pub fn handle_timeout(&mut self, now: Duration) -> Vec<NodeId> {
        let mut ran = Vec::new();
        for (peer, e) in &mut self.entries {
            let s = e.item.borrow_mut();
            if s.poll_timeout().is_some_and(|t| t <= now) {
                s.handle_timeout(now);
                ran.push(*peer);
            }
        }
        let expired: Vec<NodeId> = self
            .entries
            .iter()
            .filter(|(_, e)| e.session().expires_at().is_some_and(|t| t <= now))
            .map(|(n, _)| *n)
            .collect();
        for peer in expired {
            let idle = self
                .entries
                .get(&peer)
                .is_some_and(|e| e.session().last_activity().is_some());
            self.remove(&peer);
            if idle {
                self.stats.expired_idle += 1;
            } else {
                self.stats.expired_stale += 1;
            }
        }
        ran.retain(|p| self.entries.contains_key(p));
        ran
    }

    /// Counters, and gauges as of now.
    pub fn stats(&self) -> SessionTableStats {
        let mut s = self.stats;
        s.handshakes = self.freed;
        for e in self.entries.values() {
            let session = e.session();
            s.sessions += 1;
            s.established += u64::from(session.is_established());
            s.pending += u64::from(e.pending());
            s.handshakes.add(&session.stats());
        }
        s.retries_sent += s.handshakes.retries_sent;
        s
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::buf::{HEADROOM, PacketBuf, TAILROOM};
    use crate::e2e::E2eEvent;
    use crate::frame::{OverlayHeader, OverlayKind};
    use crate::testutil::{MS, Mesh};

    const SECOND: Duration = Duration::from_secs(1);

    /// An honest node: its session table.
    struct Node {
        id: NodeId,
        table: SessionTable<E2eSession>,
    }

    impl Node {
        fn new(mesh: &Mesh, limits: SessionLimits, seed: u8) -> Self {
            let (config, id) = mesh.node();
            Self {
                id,
                table: SessionTable::with_cookie_secret(config, id, limits, &[seed; 32]),
            }
        }

        /// The handshake messages and events of the session with `peer`.
        fn flush(&mut self, now: Duration, peer: NodeId) -> Vec<Vec<u8>> {
            let Some(s) = self.table.get_mut(&peer) else {
                return Vec::new();
            };
            while let Some(e) = s.poll_event() {
                if let E2eEvent::HandshakeFailed(_) = e {
                    // Counted in the session's stats; the tests look at traffic.
                }
            }
            std::iter::from_fn(|| s.poll_transmit(now)).collect()
        }
    }

    /// Honest nodes, an overlay that delivers handshake frames after 1–30 ms (seeded), and an
    /// attacker that can inject frames with any claimed source. Frames for node IDs that are
    /// not honest nodes reach the attacker only if it is on their path (`on_path`).
    struct World {
        nodes: Vec<Node>,
        queue: Vec<(Duration, NodeId, NodeId, Vec<u8>)>,
        rng: u64,
        on_path: BTreeSet<NodeId>,
        intercepted: Vec<(NodeId, Vec<u8>)>,
        delivered: u64,
    }

    impl World {
        fn new(mesh: &Mesh, n: usize, limits: SessionLimits) -> Self {
            Self {
                nodes: (0..n).map(|i| Node::new(mesh, limits, i as u8)).collect(),
                queue: Vec::new(),
                rng: 0x2545_f491_4f6c_dd1d,
                on_path: BTreeSet::new(),
                intercepted: Vec::new(),
                delivered: 0,
            }
        }

        fn id(&self, i: usize) -> NodeId {
            self.nodes[i].id
        }

        fn next(&mut self) -> u64 {
            self.rng ^= self.rng << 13;
            self.rng ^= self.rng >> 7;
            self.rng ^= self.rng << 17;
            self.rng
        }

        fn index(&self, id: NodeId) -> Option<usize> {
            self.nodes.iter().position(|n| n.id == id)
        }

        /// A handshake frame from `from` (as its overlay header says) to `to`.
        fn send(&mut self, now: Duration, from: NodeId, to: NodeId, payload: Vec<u8>) {
            let delay = MS * (1 + (self.next() % 30) as u32);
            self.queue.push((now + delay, from, to, payload));
        }

        fn flush(&mut self, now: Duration, i: usize, peer: NodeId) {
            let from = self.nodes[i].id;
            for m in self.nodes[i].flush(now, peer) {
                self.send(now, from, peer, m);
            }
        }

        /// Timers of every node, then the frames due.
        fn step(&mut self, now: Duration) {
            for i in 0..self.nodes.len() {
                for peer in self.nodes[i].table.handle_timeout(now) {
                    self.flush(now, i, peer);
                }
            }
            self.queue.sort_by_key(|q| q.0);
            let due = self.queue.iter().take_while(|q| q.0 <= now).count();
            for (_, from, to, m) in self.queue.drain(..due).collect::<Vec<_>>() {
                let Some(i) = self.index(to) else {
                    if self.on_path.contains(&to) {
                        self.intercepted.push((to, m));
                    }
                    continue;
                };
                let out = self.nodes[i].table.handle_handshake(now, from, &m, |s| s);
                match out {
                    Ok(HandshakeOutcome::Reply(r)) => self.send(now, to, from, r),
                    Ok(HandshakeOutcome::Dropped) => {}
                    Ok(_) | Err(_) => self.flush(now, i, from),
                }
            }
        }

        /// Node `a` sends a packet to `b`: `Ok(true)` delivered, `Ok(false)` held while the
        /// session is set up (the handshake is started), `Err` lost.
        fn traffic(&mut self, now: Duration, a: usize, b: usize) -> Result<bool, String> {
            let (ida, idb) = (self.id(a), self.id(b));
            let s = self.nodes[a]
                .table
                .get_or_insert_with(now, idb, |s| s)
                .map_err(|e| e.to_string())?;
            if !s.is_established() {
                if !s.is_handshaking() {
                    s.initiate(now).map_err(|e| e.to_string())?;
                }
                self.flush(now, a, idb);
                return Ok(false);
            }
            let overlay = OverlayHeader::new(OverlayKind::Data, ida, idb);
            let payload = [0x60u8; 80];
            let mut raw = vec![0u8; HEADROOM + payload.len() + TAILROOM];
            raw[HEADROOM..HEADROOM + payload.len()].copy_from_slice(&payload);
            let mut pb = PacketBuf::at_headroom(&mut raw, payload.len()).unwrap();
            s.seal(now, &overlay, &mut pb)
                .map_err(|e| format!("seal: {e}"))?;
            let mut wire = pb.data().to_vec();
            let len = wire.len();
            let mut pb = PacketBuf::new(&mut wire, 0..len).unwrap();
            let r = self.nodes[b]
                .table
                .get_mut(&ida)
                .ok_or("no session at the receiver")?;
            r.open(now, &overlay, &mut pb)
                .map_err(|e| format!("open: {e}"))?;
            assert_eq!(pb.data(), payload);
            self.delivered += 1;
            Ok(true)
        }

        /// Runs `until`, with two-way traffic between each pair in `pairs` every 20 ms, calling
        /// `attack` every step. Panics if a packet is lost once the pair's session was up.
        fn run(
            &mut self,
            from: Duration,
            until: Duration,
            pairs: &[(usize, usize)],
            mut attack: impl FnMut(&mut World, Duration),
        ) {
            // Per direction: whether its first packet went through.
            let mut up = vec![false; 2 * pairs.len()];
            let mut t = from;
            while t < until {
                attack(self, t);
                self.step(t);
                if t.as_millis().is_multiple_of(20) {
                    for (k, &(a, b)) in pairs.iter().enumerate() {
                        for (d, (x, y)) in [(a, b), (b, a)].into_iter().enumerate() {
                            match self.traffic(t, x, y) {
                                Ok(true) => up[2 * k + d] = true,
                                Ok(false) if !up[2 * k + d] => {}
                                r => panic!("{t:?}: traffic {x}→{y} broke: {r:?}"),
                            }
                        }
                    }
                }
                t += 5 * MS;
            }
            assert!(up.iter().all(|u| *u), "every pair was up");
        }

        fn session(&self, at: usize, with: usize) -> &E2eSession {
            self.nodes[at].table.get(&self.id(with)).unwrap()
        }
    }

    /// Forged handshake messages of every kind: a genuine ClientHello (from the attacker's own
    /// SVID) under fresh handshake IDs, with and without a made-up cookie, TLS junk, server
    /// messages and retries for IDs nobody uses.
    struct Forger {
        hello: Vec<u8>,
        rng: u64,
        made: u64,
    }

    impl Forger {
        fn new(mesh: &Mesh, victim: NodeId) -> Self {
            let (config, me) = mesh.node();
            let mut own = E2eSession::new(config, me, victim, 9);
            own.initiate(Duration::ZERO).unwrap();
            Self {
                hello: own.poll_transmit(Duration::ZERO).unwrap(),
                rng: 0x9e37_79b9_7f4a_7c15,
                made: 0,
            }
        }

        fn forge(&mut self) -> Vec<u8> {
            self.rng ^= self.rng << 13;
            self.rng ^= self.rng >> 7;
            self.rng ^= self.rng << 17;
            self.made += 1;
            let mut m = HandshakeMessage::decode(&self.hello).unwrap();
            m.handshake_id = self.rng;
            m.epoch = (self.rng >> 56) as u8;
            let junk = [
                0x16u8, 3, 3, 0, 40, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14,
            ];
            match self.made % 5 {
                0 => {}
                1 => {
                    m.cookie = Some(self.rng.to_le_bytes().repeat(2).try_into().unwrap());
                    m.data = &m.data[..m.data.len() - COOKIE_LEN];
                }
                2 => m.data = &junk,
                3 => {
                    m.role = TlsRole::Server;
                    m.data = &junk;
                }
                _ => return HandshakeMessage::retry(&m, [7; COOKIE_LEN]).encode(),
            }
            m.encode()
        }
    }

    fn mesh() -> Mesh {
        Mesh::new("sessions.test")
    }

    /// The attacker, anywhere in the mesh, sends every 20 ms a forged handshake frame that
    /// claims to come from B to A, and one from A to B, for 400 s: three rekeys. Before the
    /// fix each one replaced the handshake being run (or answered) and the keys ran out.
    #[test]
    fn forged_handshakes_during_an_established_session_do_not_break_traffic() {
        let mesh = mesh();
        let mut w = World::new(&mesh, 2, SessionLimits::default());
        let (a, b) = (w.id(0), w.id(1));
        let mut forger = Forger::new(&mesh, a);
        w.run(Duration::ZERO, 5 * SECOND, &[(0, 1)], |_, _| {});
        assert!(w.session(0, 1).is_established() && w.session(1, 0).is_established());
        w.run(5 * SECOND, 400 * SECOND, &[(0, 1)], |w, t| {
            if t.as_millis().is_multiple_of(20) {
                let m = forger.forge();
                w.send(t, b, a, m);
                let m = forger.forge();
                w.send(t, a, b, m);
            }
        });
        let stats = [w.nodes[0].table.stats(), w.nodes[1].table.stats()];
        assert!(
            stats.iter().all(|s| s.handshakes.rekeys >= 3),
            "rekeyed three times: {stats:?}"
        );
        assert!(stats.iter().all(|s| s.retries_sent > 1000), "{stats:?}");
        assert_eq!(w.nodes[0].table.len(), 1);
    }

    /// The attacker watches for the rekey (it may see that frames flow) and floods both ends
    /// with forged handshake frames, claiming the other's source, while it runs.
    #[test]
    fn forged_handshakes_during_a_rekey_do_not_break_traffic() {
        let mesh = mesh();
        let mut w = World::new(&mesh, 2, SessionLimits::default());
        let (a, b) = (w.id(0), w.id(1));
        let mut forger = Forger::new(&mesh, a);
        let mut forged = 0u64;
        w.run(Duration::ZERO, 400 * SECOND, &[(0, 1)], |w, t| {
            let rekeying = w.nodes[0]
                .table
                .get(&b)
                .zip(w.nodes[1].table.get(&a))
                .is_some_and(|(x, y)| {
                    x.is_established()
                        && y.is_established()
                        && (x.is_handshaking() || y.is_handshaking())
                });
            if rekeying {
                forged += 2;
                let m = forger.forge();
                w.send(t, b, a, m);
                let m = forger.forge();
                w.send(t, a, b, m);
            }
        });
        assert!(forged > 50, "the attack ran during the rekeys ({forged})");
        assert!(w.session(0, 1).epoch() >= Some(3), "{:?}", w.session(0, 1));
        let s = w.nodes[0].table.stats();
        assert_eq!(s.handshakes.failed, 0, "{s:?}");
    }

    /// An off-path flood from thousands of claimed sources creates nothing; an on-path one
    /// (the attacker receives what is sent to its made-up nodes and echoes the cookies) stays
    /// within the caps, and never evicts the honest, active sessions.
    #[test]
    fn a_flood_from_many_claimed_sources_stays_within_the_caps() {
        let mesh = mesh();
        let limits = SessionLimits {
            max_sessions: 6,
            max_pending: 2,
        };
        let mut w = World::new(&mesh, 4, limits);
        let a = w.id(0);
        let mut forger = Forger::new(&mesh, a);
        let hello = forger.hello.clone();
        let pairs = [(0, 1), (0, 2)];
        w.run(Duration::ZERO, 2 * SECOND, &pairs, |_, _| {});
        let mut n = 0u64;
        let fake = |n: u64| {
            let mut id = [0xfa; NodeId::LEN];
            id[..8].copy_from_slice(&n.to_be_bytes());
            NodeId::from_bytes(id)
        };
        // Off path: every frame a new claimed source; node 3 sets up its session meanwhile.
        w.run(
            2 * SECOND,
            12 * SECOND,
            &[(0, 1), (0, 2), (3, 0)],
            |w, t| {
                for _ in 0..3 {
                    n += 1;
                    let m = forger.forge();
                    w.send(t, fake(n), a, m);
                }
                assert!(w.nodes[0].table.len() <= 3, "{t:?}");
            },
        );
        let off_path = w.nodes[0].table.stats();
        assert!(off_path.retries_sent >= n / 5, "{off_path:?}");
        assert_eq!(off_path.evicted_pending + off_path.refused_full, 0);
        // On path for 500 made-up nodes: it answers every retry with its cookie.
        w.on_path = (1_000_000..1_000_500).map(fake).collect();
        let mut next = 1_000_000u64;
        w.run(
            12 * SECOND,
            30 * SECOND,
            &[(0, 1), (0, 2), (3, 0)],
            |w, t| {
                let mut m = HandshakeMessage::decode(&hello).unwrap();
                m.handshake_id = next;
                w.send(t, fake(next), a, m.encode());
                next = if next + 1 >= 1_000_500 {
                    1_000_000
                } else {
                    next + 1
                };
                for (to, r) in std::mem::take(&mut w.intercepted) {
                    let Ok(r) = HandshakeMessage::decode(&r) else {
                        continue;
                    };
                    if r.retry {
                        let mut m = HandshakeMessage::decode(&hello).unwrap();
                        m.handshake_id = r.handshake_id;
                        m.cookie = r.cookie;
                        m.data = &m.data[..m.data.len() - COOKIE_LEN];
                        w.send(t, to, a, m.encode());
                    }
                }
                let table = &w.nodes[0].table;
                let s = table.stats();
                assert!(table.len() <= 6 && s.pending <= 2, "{t:?}: {s:?}");
            },
        );
        let s = w.nodes[0].table.stats();
        assert!(s.evicted_pending > 100, "the caps were hit: {s:?}");
        assert_eq!(s.evicted_idle, 0, "{s:?}");
        for peer in 1..=3 {
            assert!(w.session(0, peer).is_established(), "{s:?}");
        }
    }

    /// A session nobody uses starts no rekey and is freed on both sides once its keys expired;
    /// traffic after that sets up a new one. A one-way flow keeps its session on both sides. A
    /// handshake to a node that never answers is freed when it times out.
    #[test]
    fn idle_sessions_and_stale_handshakes_age_out() {
        let mesh = mesh();
        let mut w = World::new(&mesh, 3, SessionLimits::default());
        w.run(Duration::ZERO, 10 * SECOND, &[(0, 1), (0, 2)], |_, _| {});
        // From now on only 2 → 0 carries traffic, one way.
        let mut t = 10 * SECOND;
        let mut idle_from = None;
        while t < 500 * SECOND {
            w.step(t);
            if t == 200 * SECOND {
                // Idle since 10 s (180 s): no rekey from now on.
                assert!(w.session(1, 0).is_idle(t));
                idle_from = Some(w.nodes[1].table.stats().handshakes.completed);
            }
            if t.as_millis().is_multiple_of(100) {
                assert_eq!(w.traffic(t, 2, 0), Ok(true), "{t:?}");
            }
            t += 5 * MS;
        }
        for (at, with) in [(0, 1), (1, 0)] {
            let table = &w.nodes[at].table;
            assert!(table.get(&w.id(with)).is_none(), "{at} freed its session");
            let s = table.stats();
            assert_eq!(s.expired_idle, 1, "{s:?}");
        }
        // No rekey of the idle session.
        let done = w.nodes[1].table.stats().handshakes.completed;
        assert_eq!(Some(done), idle_from);
        assert!(
            w.session(0, 2).epoch() >= Some(3),
            "the one-way flow rekeyed"
        );
        assert!(w.session(2, 0).is_established());
        // Traffic again: a new session.
        w.run(500 * SECOND, 505 * SECOND, &[(1, 0)], |_, _| {});
        // A node that does not exist.
        let ghost = NodeId::from_bytes([0x99; NodeId::LEN]);
        let s = w.nodes[0]
            .table
            .get_or_insert_with(t, ghost, |s| s)
            .unwrap();
        s.initiate(t).unwrap();
        let mut t = 505 * SECOND;
        while t < 530 * SECOND {
            w.step(t);
            t += 5 * MS;
        }
        assert!(w.nodes[0].table.get(&ghost).is_none());
        assert_eq!(w.nodes[0].table.stats().expired_stale, 1);
    }

    /// When the table is full, a session we open evicts the session idle longest; sessions in
    /// use are never evicted: the newcomer is refused, and counted.
    #[test]
    fn a_full_table_evicts_idle_sessions_and_never_active_ones() {
        let mesh = mesh();
        let limits = SessionLimits {
            max_sessions: 2,
            max_pending: 2,
        };
        let mut w = World::new(&mesh, 5, limits);
        w.run(Duration::ZERO, 2 * SECOND, &[(0, 1), (0, 2)], |_, _| {});
        // 0–1 falls idle while 0–2 stays in use.
        w.run(2 * SECOND, 200 * SECOND, &[(0, 2)], |_, _| {});
        assert!(w.session(0, 1).is_idle(200 * SECOND));
        w.run(200 * SECOND, 202 * SECOND, &[(0, 2), (0, 3)], |_, _| {});
        let s = w.nodes[0].table.stats();
        assert_eq!((s.evicted_idle, s.refused_full), (1, 0), "{s:?}");
        assert!(w.nodes[0].table.get(&w.id(1)).is_none());
        // Now both sessions are in use: no room for a fourth peer, either way.
        let t = 202 * SECOND;
        let e = w.id(4);
        let refused = w.nodes[0].table.get_or_insert_with(t, e, |s| s).err();
        assert_eq!(refused, Some(AdmitError::Full));
        assert_eq!(w.traffic(t, 4, 0), Ok(false), "4 starts its handshake");
        w.run(t, 205 * SECOND, &[(0, 2), (0, 3)], |w, t| {
            assert_eq!(w.traffic(t, 4, 0), Ok(false), "{t:?}: 0 cannot admit 4");
        });
        let s = w.nodes[0].table.stats();
        assert!(s.refused_full >= 2, "{s:?}");
        assert_eq!(s.sessions, 2);
    }

    #[test]
    fn cookies_are_bound_to_node_peer_handshake_and_time() {
        let local = NodeId::from_bytes([1; NodeId::LEN]);
        let peer = NodeId::from_bytes([2; NodeId::LEN]);
        let jar = CookieJar::new(&[5; 32], local);
        let t = Duration::from_secs(1_000);
        let c = jar.issue(peer, 42, t);
        assert!(jar.check(peer, 42, &c, t));
        assert!(
            jar.check(peer, 42, &c, t + COOKIE_PERIOD),
            "valid in the next period"
        );
        assert!(!jar.check(peer, 42, &c, t + 2 * COOKIE_PERIOD), "expired");
        assert!(!jar.check(peer, 43, &c, t), "another handshake");
        assert!(!jar.check(local, 42, &c, t), "another peer");
        assert!(
            !CookieJar::new(&[6; 32], local).check(peer, 42, &c, t),
            "another secret"
        );
        assert!(
            !CookieJar::new(&[5; 32], peer).check(peer, 42, &c, t),
            "another node"
        );
        assert!(jar.check(
            peer,
            42,
            &jar.issue(peer, 42, Duration::ZERO),
            Duration::ZERO
        ));
    }
}
