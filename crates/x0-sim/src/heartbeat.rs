//! A toy neighbour-liveness protocol, to exercise the engine (and to smoke-run scenarios) until
//! the real routing core is plugged in. It is not the routing core and makes no claims.
//!
//! Every `interval` a node sends a hello to each neighbour whose carrier is up; the neighbour
//! echoes it back as an ack carrying the original send time, which gives an RTT sample. A
//! neighbour is *alive* once anything was heard from it, and *dead* after `dead_after`
//! intervals without hearing from it (checked at each tick) or at once when its carrier goes
//! down. Node `i`'s first tick is offset by `i × 7.919 ms mod interval`, so that ten thousand
//! nodes do not all tick in the same microsecond.
//!
//! Wire format: `kind u8 (1 = hello, 2 = ack) | sent_at_us u64 LE | zero padding` up to the
//! configured size.

use std::time::Duration;

use x0_routing::Instant;

use crate::NodeIx;
use crate::engine::{Outbox, SimNode};

const HELLO: u8 = 1;
const ACK: u8 = 2;
const HEADER: usize = 9;
const MAX_SIZE: usize = 1500;

/// Settings of the heartbeat protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeartbeatConfig {
    /// Time between hellos to each neighbour.
    pub interval: Duration,
    /// Missed intervals after which a silent neighbour is declared dead.
    pub dead_after: u32,
    /// Size of every hello and ack, in bytes (at least 9, at most 1500).
    pub size: usize,
    /// Keep a list of liveness transitions (costs memory on long runs).
    pub record_transitions: bool,
}

impl Default for HeartbeatConfig {
    /// 100 ms, 3 misses, 32 bytes, transitions recorded.
    fn default() -> Self {
        Self {
            interval: Duration::from_millis(100),
            dead_after: 3,
            size: 32,
            record_transitions: true,
        }
    }
}

/// Why a neighbour's liveness changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// Something arrived from it.
    Heard,
    /// Nothing arrived for `dead_after` intervals.
    Silence,
    /// The carrier went down.
    Carrier,
}

/// A change in a neighbour's liveness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// When the node noticed.
    pub at: Instant,
    /// The neighbour.
    pub neighbor: NodeIx,
    /// Alive after the change.
    pub alive: bool,
    /// Why.
    pub cause: Cause,
}

/// Counters of one heartbeat node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HeartbeatCounters {
    /// Hellos sent.
    pub hellos_sent: u64,
    /// Hellos received (and answered).
    pub hellos_received: u64,
    /// Acks received.
    pub acks_received: u64,
    /// Sum of RTT samples, µs.
    pub rtt_sum_us: u64,
    /// Largest RTT sample, µs.
    pub rtt_max_us: u64,
    /// Datagrams that were not a hello or an ack.
    pub malformed: u64,
}

impl HeartbeatCounters {
    /// Mean RTT over all samples.
    pub fn mean_rtt(&self) -> Option<Duration> {
        (self.acks_received > 0)
            .then(|| Duration::from_micros(self.rtt_sum_us / self.acks_received))
    }
}

#[derive(Debug, Clone, Copy)]
struct Peer {
    id: NodeIx,
    carrier: bool,
    alive: bool,
    last_heard: Instant,
}

/// One node running the heartbeat protocol.
#[derive(Debug, Clone)]
pub struct Heartbeat {
    me: NodeIx,
    cfg: HeartbeatConfig,
    peers: Vec<Peer>,
    next_tick: Option<Instant>,
    counters: HeartbeatCounters,
    transitions: Vec<Transition>,
}

impl Heartbeat {
    /// A node with index `me`.
    pub fn new(me: NodeIx, cfg: HeartbeatConfig) -> Self {
        let mut cfg = cfg;
        cfg.size = cfg.size.clamp(HEADER, MAX_SIZE);
        cfg.interval = cfg.interval.max(Duration::from_micros(1));
        Self {
            me,
            cfg,
            peers: Vec::new(),
            next_tick: None,
            counters: HeartbeatCounters::default(),
            transitions: Vec::new(),
        }
    }

    /// Counters so far.
    pub fn counters(&self) -> &HeartbeatCounters {
        &self.counters
    }

    /// Liveness changes so far (if recorded).
    pub fn transitions(&self) -> &[Transition] {
        &self.transitions
    }

    /// Whether `neighbor` is currently considered alive.
    pub fn is_alive(&self, neighbor: NodeIx) -> bool {
        self.peer(neighbor).is_some_and(|p| p.alive)
    }

    /// Neighbours currently considered alive, ascending.
    pub fn alive_neighbors(&self) -> impl Iterator<Item = NodeIx> + '_ {
        self.peers.iter().filter(|p| p.alive).map(|p| p.id)
    }

    /// Neighbours whose carrier is up, ascending.
    pub fn carrier_neighbors(&self) -> impl Iterator<Item = NodeIx> + '_ {
        self.peers.iter().filter(|p| p.carrier).map(|p| p.id)
    }

    fn peer(&self, id: NodeIx) -> Option<&Peer> {
        self.peers
            .binary_search_by_key(&id, |p| p.id)
            .ok()
            .map(|i| &self.peers[i])
    }

    fn peer_mut(&mut self, id: NodeIx, now: Instant) -> &mut Peer {
        let i = match self.peers.binary_search_by_key(&id, |p| p.id) {
            Ok(i) => i,
            Err(i) => {
                self.peers.insert(
                    i,
                    Peer {
                        id,
                        carrier: true,
                        alive: false,
                        last_heard: now,
                    },
                );
                i
            }
        };
        &mut self.peers[i]
    }

    fn note(&mut self, t: Transition) {
        if self.cfg.record_transitions {
            self.transitions.push(t);
        }
    }

    fn emit(&self, out: &mut Outbox, to: NodeIx, kind: u8, sent_at: Instant) {
        let mut b = out.buffer();
        b.push(kind);
        b.extend_from_slice(&sent_at.as_micros().to_le_bytes());
        b.resize(self.cfg.size, 0);
        out.send_buf(to, b);
    }

    fn heard(&mut self, now: Instant, from: NodeIx) {
        let p = self.peer_mut(from, now);
        p.last_heard = now;
        if !p.alive {
            p.alive = true;
            self.note(Transition {
                at: now,
                neighbor: from,
                alive: true,
                cause: Cause::Heard,
            });
        }
    }
}

impl SimNode for Heartbeat {
    fn start(&mut self, now: Instant, _out: &mut Outbox) {
        let interval = u64::try_from(self.cfg.interval.as_micros()).unwrap_or(u64::MAX);
        let phase = (u64::from(self.me) * 7_919) % interval.max(1);
        self.next_tick = Some(now + Duration::from_micros(phase));
    }

    fn datagram(&mut self, now: Instant, from: NodeIx, bytes: &[u8], out: &mut Outbox) {
        let (Some(&kind), Some(stamp)) = (bytes.first(), bytes.get(1..HEADER)) else {
            self.counters.malformed += 1;
            return;
        };
        let mut raw = [0u8; 8];
        raw.copy_from_slice(stamp);
        let sent_at = u64::from_le_bytes(raw);
        match kind {
            HELLO => {
                self.counters.hellos_received += 1;
                self.emit(out, from, ACK, Instant::from_micros(sent_at));
            }
            ACK => {
                self.counters.acks_received += 1;
                let rtt = now.as_micros().saturating_sub(sent_at);
                self.counters.rtt_sum_us += rtt;
                self.counters.rtt_max_us = self.counters.rtt_max_us.max(rtt);
            }
            _ => {
                self.counters.malformed += 1;
                return;
            }
        }
        self.heard(now, from);
    }

    fn link_up(&mut self, now: Instant, neighbor: NodeIx, _out: &mut Outbox) {
        self.peer_mut(neighbor, now).carrier = true;
    }

    fn link_down(&mut self, now: Instant, neighbor: NodeIx, _out: &mut Outbox) {
        let p = self.peer_mut(neighbor, now);
        p.carrier = false;
        if p.alive {
            p.alive = false;
            self.note(Transition {
                at: now,
                neighbor,
                alive: false,
                cause: Cause::Carrier,
            });
        }
    }

    fn timeout(&mut self, now: Instant, out: &mut Outbox) {
        let Some(tick) = self.next_tick else { return };
        if now < tick {
            return;
        }
        let dead_after = self.cfg.interval.saturating_mul(self.cfg.dead_after);
        let mut newly_dead = Vec::new();
        for i in 0..self.peers.len() {
            let p = &mut self.peers[i];
            if p.alive && now.saturating_since(p.last_heard) >= dead_after {
                p.alive = false;
                newly_dead.push(p.id);
            }
            if p.carrier {
                let id = p.id;
                self.emit(out, id, HELLO, now);
                self.counters.hellos_sent += 1;
            }
        }
        for neighbor in newly_dead {
            self.note(Transition {
                at: now,
                neighbor,
                alive: false,
                cause: Cause::Silence,
            });
        }
        // Stay on the original grid even if woken late.
        let mut next = tick + self.cfg.interval;
        while next <= now {
            next = next + self.cfg.interval;
        }
        self.next_tick = Some(next);
    }

    fn next_timeout(&self) -> Option<Instant> {
        self.next_tick
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_hellos_and_measures_rtt() {
        let mut a = Heartbeat::new(0, HeartbeatConfig::default());
        let mut out = Outbox::new();
        a.start(Instant::ZERO, &mut out);
        a.link_up(Instant::ZERO, 5, &mut out);
        assert_eq!(a.next_timeout(), Some(Instant::ZERO));
        a.timeout(Instant::ZERO, &mut out);
        let sent: Vec<_> = out.drain().collect();
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].0, 5);
        assert_eq!(sent[0].1.len(), 32);
        assert_eq!(sent[0].1[0], HELLO);

        // The neighbour answers.
        let mut b = Heartbeat::new(5, HeartbeatConfig::default());
        b.datagram(Instant::from_millis(3), 0, &sent[0].1, &mut out);
        let reply: Vec<_> = out.drain().collect();
        assert_eq!(reply[0].0, 0);
        assert_eq!(reply[0].1[0], ACK);
        assert!(b.is_alive(0));

        a.datagram(Instant::from_millis(7), 5, &reply[0].1, &mut out);
        assert!(out.is_empty());
        assert_eq!(a.counters().mean_rtt(), Some(Duration::from_millis(7)));
        assert!(a.is_alive(5));
        assert_eq!(a.next_timeout(), Some(Instant::from_millis(100)));
    }

    #[test]
    fn declares_silent_neighbours_dead() {
        let mut a = Heartbeat::new(0, HeartbeatConfig::default());
        let mut out = Outbox::new();
        a.start(Instant::ZERO, &mut out);
        a.link_up(Instant::ZERO, 1, &mut out);
        let mut hello = vec![HELLO];
        hello.extend_from_slice(&0u64.to_le_bytes());
        a.datagram(Instant::from_millis(1), 1, &hello, &mut out);
        for t in [0, 100, 200, 300] {
            a.timeout(Instant::from_millis(t), &mut out);
            assert!(a.is_alive(1), "at {t} ms");
        }
        a.timeout(Instant::from_millis(400), &mut out);
        assert!(!a.is_alive(1));
        let last = a.transitions().last().copied();
        assert_eq!(
            last,
            Some(Transition {
                at: Instant::from_millis(400),
                neighbor: 1,
                alive: false,
                cause: Cause::Silence
            })
        );
    }

    #[test]
    fn carrier_loss_is_immediate_and_garbage_is_counted() {
        let mut a = Heartbeat::new(2, HeartbeatConfig::default());
        let mut out = Outbox::new();
        a.start(Instant::ZERO, &mut out);
        assert_eq!(a.next_timeout(), Some(Instant::from_micros(15_838)));
        let mut hello = vec![HELLO];
        hello.extend_from_slice(&0u64.to_le_bytes());
        a.datagram(Instant::ZERO, 1, &hello, &mut out);
        a.link_down(Instant::from_millis(5), 1, &mut out);
        assert!(!a.is_alive(1));
        assert_eq!(a.carrier_neighbors().count(), 0);
        a.datagram(Instant::ZERO, 1, &[9; 3], &mut out);
        a.datagram(Instant::ZERO, 1, &[9; 20], &mut out);
        assert_eq!(a.counters().malformed, 2);
    }
}
