//! Attacks by a member of the mesh, or by whoever controls a neighbour (issue 12): one router
//! fed by hand-made neighbours, in virtual time.

use std::time::Duration;

use x0_wire::NodeId;
use x0_wire::routing::{AdvertisedLink, Probe, RoutingMessage};

use crate::auth::{AdvertAuth, InsecureDigestAuth};
use crate::config::RouterConfig;
use crate::router::{LinkId, Router, RouterEvent};
use crate::time::Instant;

const MESH_KEY: u64 = 42;

fn id(n: u8) -> NodeId {
    NodeId::from_bytes([n; 16])
}

/// An advert datagram of `origin`, digested with `key` (`MESH_KEY`: validly signed).
fn advert(origin: NodeId, seq: u64, neighbors: &[NodeId], key: u64) -> Vec<u8> {
    let links = neighbors
        .iter()
        .map(|n| AdvertisedLink {
            neighbor: *n,
            cost: 15,
            class: 0,
        })
        .collect();
    let mut auth = InsecureDigestAuth::new(origin, key);
    Router::make_advert(origin, seq, Duration::from_secs(3600), links, &mut auth).datagram
}

/// One router under test and the neighbours that talk to it.
struct Bench {
    router: Router,
    now: Instant,
    /// Per link: the neighbour's next probe number and the newest probe of ours it heard.
    probes: Vec<(LinkId, u32, u64)>,
    /// Everything the router sent: (link, datagram).
    sent: Vec<(LinkId, Vec<u8>)>,
    events: Vec<RouterEvent>,
}

impl Bench {
    fn new(cfg: RouterConfig, last_seq: u64, auth: Box<dyn AdvertAuth + Send>) -> Self {
        Self {
            router: Router::new(cfg, id(1), auth, last_seq, Instant::ZERO),
            now: Instant::ZERO,
            probes: Vec::new(),
            sent: Vec::new(),
            events: Vec::new(),
        }
    }

    fn with_digest(last_seq: u64) -> Self {
        Self::new(
            RouterConfig::default(),
            last_seq,
            Box::new(InsecureDigestAuth::new(id(1), MESH_KEY)),
        )
    }

    fn me(&self) -> NodeId {
        self.router.id()
    }

    /// Brings up a link to neighbour `n` (link id = n).
    fn connect(&mut self, n: u8) {
        self.router.link_up(self.now, LinkId::from(n), id(n));
        self.probes.push((LinkId::from(n), 1, 0));
        self.drain();
    }

    fn drain(&mut self) {
        while let Some((link, bytes)) = self.router.poll_transmit() {
            if let Ok(RoutingMessage::Probe(p)) = RoutingMessage::decode(&bytes)
                && let Some(e) = self.probes.iter_mut().find(|e| e.0 == link)
            {
                e.2 = p.sent_at_us;
            }
            self.sent.push((link, bytes));
        }
        while let Some(e) = self.router.poll_event() {
            self.events.push(e);
        }
    }

    fn deliver(&mut self, link: LinkId, bytes: &[u8]) {
        self.router.handle_datagram(self.now, link, bytes);
        self.drain();
    }

    /// A probe from the neighbour on `link`, echoing our newest probe (so RTT gets measured).
    fn probe_from(&mut self, link: LinkId) {
        let Some(e) = self.probes.iter_mut().find(|e| e.0 == link) else {
            return;
        };
        let p = Probe {
            seq: e.1,
            sent_at_us: self.now.as_micros(),
            tx_interval_ms: 100,
            multiplier: 3,
            echo_sent_at_us: e.2,
            echo_hold_us: 0,
            rx_loss_permille: 0,
        };
        e.1 += 1;
        let bytes = RoutingMessage::Probe(p).encode();
        self.deliver(link, &bytes);
    }

    /// Advances time by `d` in 1 ms steps: the router's timers run, and every neighbour probes
    /// every 100 ms; `each_ms` runs at every step.
    fn run_for_with(&mut self, d: Duration, mut each_ms: impl FnMut(&mut Self)) {
        let end = self.now + d;
        while self.now < end {
            self.now = self.now + Duration::from_millis(1);
            if self.router.poll_timeout().is_some_and(|t| t <= self.now) {
                self.router.handle_timeout(self.now);
                self.drain();
            }
            if self.now.as_micros().is_multiple_of(100_000) {
                let links: Vec<LinkId> = self.probes.iter().map(|e| e.0).collect();
                for l in links {
                    self.probe_from(l);
                }
            }
            each_ms(self);
        }
    }

    fn run_for(&mut self, d: Duration) {
        self.run_for_with(d, |_| {});
    }

    /// A router with neighbours 2 and 3 up and measured, and its own advert flooded.
    fn converged(last_seq: u64) -> Self {
        let mut b = Self::with_digest(last_seq);
        b.connect(2);
        b.connect(3);
        b.run_for(Duration::from_millis(500));
        assert!(b.router.stats().adverts_originated >= 1 || last_seq == u64::MAX);
        b
    }

    fn neighbors_down(&self) -> usize {
        self.events
            .iter()
            .filter(|e| matches!(e, RouterEvent::NeighborDown { .. }))
            .count()
    }
}

// ---- item 1: adverts claiming to be our own ------------------------------------------------

#[test]
fn a_forged_own_advert_with_a_huge_sequence_number_changes_nothing() {
    let mut b = Bench::converged(0);
    let seq = b.router.own_seq();
    let originated = b.router.stats().adverts_originated;
    let me = b.me();
    for huge in [u64::MAX - 1, u64::MAX] {
        // Signed with a key that is not ours.
        let forged = advert(me, huge, &[id(2)], MESH_KEY + 1);
        b.deliver(2, &forged);
        b.run_for(Duration::from_millis(100));
    }
    assert_eq!(b.router.own_seq(), seq, "our sequence number did not move");
    assert_eq!(b.router.stats().adverts_originated, originated);
    assert_eq!(b.router.stats().rejected_own_forged, 2);
    assert_eq!(b.router.stats().own_seq_recovered, 0);
    assert_eq!(b.router.lsdb().seq_of(&me), Some(seq));
}

#[test]
fn a_verified_own_advert_from_before_a_restart_is_jumped_past_within_the_rate_limit() {
    let mut b = Bench::converged(0);
    let me = b.me();
    let originated = b.router.stats().adverts_originated;
    // Right after an origination of ours, a neighbour shows us a genuine old advert of ours
    // with a higher number.
    b.router.exclude_link(b.now, id(3));
    b.drain();
    assert_eq!(b.router.stats().adverts_originated, originated + 1);
    let ours = b.router.own_seq();
    b.deliver(2, &advert(me, ours + 1000, &[id(2)], MESH_KEY));
    assert_eq!(b.router.stats().own_seq_recovered, 1);
    assert_eq!(
        b.router.stats().adverts_originated,
        originated + 1,
        "no new advert before min_originate_interval has passed"
    );
    b.run_for(Duration::from_millis(25));
    assert_eq!(b.router.stats().adverts_originated, originated + 2);
    assert_eq!(b.router.own_seq(), ours + 1001, "jumped past it");
    assert_eq!(b.router.lsdb().seq_of(&me), Some(ours + 1001));
}

#[test]
fn the_last_sequence_numbers_are_used_without_wrapping_and_then_origination_stops() {
    let mut b = Bench::converged(0);
    let me = b.me();
    // A genuine advert of ours at u64::MAX - 1: we move to u64::MAX.
    b.deliver(2, &advert(me, u64::MAX - 1, &[id(2)], MESH_KEY));
    b.run_for(Duration::from_millis(50));
    assert_eq!(b.router.own_seq(), u64::MAX);
    assert_eq!(b.router.lsdb().seq_of(&me), Some(u64::MAX));
    assert_eq!(b.router.stats().own_seq_exhausted, 0);
    // Then one at u64::MAX with other contents: nothing is left to jump to.
    b.deliver(2, &advert(me, u64::MAX, &[id(3)], MESH_KEY));
    b.run_for(Duration::from_millis(50));
    // And a change of ours that wants a new advert.
    b.router.exclude_link(b.now, id(3));
    b.run_for(Duration::from_millis(500));
    assert_eq!(b.router.own_seq(), u64::MAX, "never wraps");
    assert!(b.router.stats().own_seq_exhausted >= 1);
    assert_eq!(
        b.events
            .iter()
            .filter(|e| matches!(e, RouterEvent::SequenceExhausted))
            .count(),
        1,
        "reported once"
    );
    assert!(
        b.router.poll_timeout().is_some_and(|t| t > b.now),
        "no busy loop on the refused origination"
    );
    assert_eq!(b.neighbors_down(), 0, "the router keeps running");
}

#[test]
fn a_router_restored_at_the_last_sequence_number_starts_without_panicking() {
    for last in [u64::MAX - 1, u64::MAX] {
        let mut b = Bench::converged(last);
        assert_eq!(b.router.own_seq(), u64::MAX);
        b.run_for(Duration::from_millis(300));
        assert_eq!(b.router.own_seq(), u64::MAX);
        assert_eq!(b.neighbors_down(), 0);
    }
}

#[test]
fn a_neighbour_cannot_make_us_originate_faster_than_min_originate_interval() {
    let mut b = Bench::converged(0);
    let me = b.me();
    let originated = b.router.stats().adverts_originated;
    // For one second, every millisecond, a validly signed advert of ours (a replay of genuine
    // ones, or anyone with the simulation's key) one above our current number.
    b.run_for_with(Duration::from_secs(1), |b| {
        let next = b.router.own_seq() + 1;
        let bytes = advert(me, next, &[id(2)], MESH_KEY);
        b.deliver(2, &bytes);
    });
    let made = b.router.stats().adverts_originated - originated;
    let bound = 1000 / 20 + 1;
    assert!(
        made <= bound,
        "{made} adverts originated in 1 s; min_originate_interval allows {bound}"
    );
}
