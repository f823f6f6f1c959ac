//! Attacks by a member of the mesh, or by whoever controls a neighbour (issue 12): one router
//! fed by hand-made neighbours, in virtual time.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use x0_wire::NodeId;
use x0_wire::routing::{AdvertisedLink, Probe, RoutingMessage};

use crate::auth::{AdvertAuth, InsecureDigestAuth, Verdict};
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

// ---- item 4: signature verification at a limited rate --------------------------------------

/// Counts the verifications it performs.
struct CountingAuth {
    inner: InsecureDigestAuth,
    count: Arc<AtomicU64>,
}

impl AdvertAuth for CountingAuth {
    fn sign(&mut self, body: &[u8]) -> (Vec<u8>, Vec<u8>) {
        self.inner.sign(body)
    }

    fn verify(&mut self, origin: &NodeId, body: &[u8], key: &[u8], signature: &[u8]) -> Verdict {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.inner.verify(origin, body, key, signature)
    }
}

/// What one verification costs the routing task (ML-DSA-65 and an SVID chain, on a slow core).
const VERIFY_COST: Duration = Duration::from_micros(100);

/// Neighbour 2 sends `per_ms` adverts made by `make` every millisecond for `d`, while both
/// neighbours probe every 100 ms. The router is one task that spends [`VERIFY_COST`] on each
/// signature verification and handles datagrams in arrival order, each as soon as it is free
/// (one queue, as in a shell without priorities). Returns the bench and the verifications.
fn flood_while_probing(per_ms: u64, d: Duration, make: impl Fn(u64) -> Vec<u8>) -> (Bench, u64) {
    let count = Arc::new(AtomicU64::new(0));
    let auth = CountingAuth {
        inner: InsecureDigestAuth::new(id(1), MESH_KEY),
        count: count.clone(),
    };
    let mut b = Bench::new(RouterConfig::default(), 0, Box::new(auth));
    b.connect(2);
    b.connect(3);
    b.run_for(Duration::from_millis(500));
    let before = count.load(Ordering::Relaxed);
    let start = b.now;
    let mut busy = b.now;
    let mut i = 0;
    let ms_total = u64::try_from(d.as_millis()).unwrap();
    for ms in 1..=ms_total {
        let arrival = start + Duration::from_millis(ms);
        let mut batch: Vec<(LinkId, Option<Vec<u8>>)> = Vec::new();
        for _ in 0..per_ms {
            batch.push((2, Some(make(i))));
            i += 1;
        }
        if ms % 100 == 0 {
            batch.push((3, None));
            batch.push((2, None));
        }
        for (link, bytes) in batch {
            b.now = arrival.max(busy);
            if b.router.poll_timeout().is_some_and(|t| t <= b.now) {
                b.router.handle_timeout(b.now);
                b.drain();
            }
            let n = count.load(Ordering::Relaxed);
            match bytes {
                Some(bytes) => b.deliver(link, &bytes),
                None => b.probe_from(link),
            }
            busy = b.now + VERIFY_COST * u32::try_from(count.load(Ordering::Relaxed) - n).unwrap();
        }
    }
    let verifications = count.load(Ordering::Relaxed) - before;
    (b, verifications)
}

#[test]
fn a_flood_of_badly_signed_adverts_is_verified_within_budget_and_probes_keep_links_up() {
    // 40 adverts per millisecond, each with a higher number and a bad signature: unchecked,
    // 4 ms of verification per millisecond, and probes wait behind them.
    let (b, verifications) = flood_while_probing(40, Duration::from_secs(1), |i| {
        advert(id(9), 1000 + i, &[id(2)], MESH_KEY + 1)
    });
    assert_eq!(b.neighbors_down(), 0, "both neighbours stay up");
    let cfg = RouterConfig::default();
    // Each bad signature costs its sender `bad_signature_penalty` more tokens.
    let per_bad = f64::from(cfg.bad_signature_penalty + 1);
    let bound = ((f64::from(cfg.verify_burst) + f64::from(cfg.verify_rate_per_s)) / per_bad).ceil()
        as u64
        + 1;
    assert!(
        verifications <= bound,
        "{verifications} verifications; the budget with penalties allows {bound}"
    );
    let s = b.router.stats();
    assert_eq!(s.signature_verifications, verifications);
    assert_eq!(s.neighbor_penalties, verifications);
    assert_eq!(s.rejected_bad_signature, verifications);
    assert_eq!(s.adverts_deferred, 40_000 - verifications);
    assert_eq!(b.router.lsdb().seq_of(&id(9)), None);
}

#[test]
fn a_flood_of_validly_signed_newer_adverts_is_verified_within_budget() {
    // An insider re-signing its own advert with ever higher numbers (here: anyone with the
    // simulation's key).
    let (b, verifications) = flood_while_probing(40, Duration::from_secs(1), |i| {
        advert(id(9), 1000 + i, &[id(2)], MESH_KEY)
    });
    assert_eq!(b.neighbors_down(), 0, "both neighbours stay up");
    let cfg = RouterConfig::default();
    let bound = u64::from(cfg.verify_burst) + u64::from(cfg.verify_rate_per_s) + 1;
    assert!(
        verifications <= bound,
        "{verifications} verifications; the budget allows {bound}"
    );
    let s = b.router.stats();
    assert_eq!(
        s.neighbor_penalties, 0,
        "valid signatures are not penalised"
    );
    assert_eq!(s.adverts_deferred, 40_000 - verifications);
    assert!(b.router.lsdb().seq_of(&id(9)).is_some());
}

#[test]
fn a_deferred_advert_is_not_acknowledged_so_the_sender_retransmits_it() {
    let cfg = RouterConfig {
        verify_burst: 1,
        verify_rate_per_s: 1,
        ..RouterConfig::default()
    };
    let mut b = Bench::new(cfg, 0, Box::new(InsecureDigestAuth::new(id(1), MESH_KEY)));
    b.connect(2);
    b.run_for(Duration::from_millis(200));
    b.sent.clear();
    let acked = |b: &Bench, origin: NodeId, seq: u64| {
        b.sent.iter().any(|(_, bytes)| {
            matches!(RoutingMessage::decode(bytes), Ok(RoutingMessage::AdvertAck(a))
                if a.contains(&(origin, seq)))
        })
    };
    b.deliver(2, &advert(id(8), 5, &[id(2)], MESH_KEY));
    b.deliver(2, &advert(id(9), 5, &[id(2)], MESH_KEY));
    assert_eq!(b.router.lsdb().seq_of(&id(8)), Some(5));
    assert!(acked(&b, id(8), 5));
    assert_eq!(b.router.lsdb().seq_of(&id(9)), None, "over budget");
    assert!(!acked(&b, id(9), 5), "so not acknowledged");
    assert_eq!(b.router.stats().adverts_deferred, 1);
    // The retransmission a second later finds budget again.
    b.run_for(Duration::from_secs(1));
    b.deliver(2, &advert(id(9), 5, &[id(2)], MESH_KEY));
    assert_eq!(b.router.lsdb().seq_of(&id(9)), Some(5));
    assert!(acked(&b, id(9), 5));
}

// ---- item 2: origins bound to admitted members ---------------------------------------------

/// Who the test's mesh CA admitted and revoked.
#[derive(Default)]
struct Admission {
    admitted: BTreeSet<NodeId>,
    revoked: BTreeSet<NodeId>,
    generation: u64,
}

/// The digest check plus admission, as the daemon's verifier does it with SVIDs.
struct AdmittingAuth {
    inner: InsecureDigestAuth,
    admission: Arc<Mutex<Admission>>,
}

impl AdvertAuth for AdmittingAuth {
    fn sign(&mut self, body: &[u8]) -> (Vec<u8>, Vec<u8>) {
        self.inner.sign(body)
    }

    fn verify(&mut self, origin: &NodeId, body: &[u8], key: &[u8], signature: &[u8]) -> Verdict {
        let a = self.admission.lock().unwrap();
        if a.revoked.contains(origin) {
            Verdict::Revoked
        } else if !a.admitted.contains(origin) {
            Verdict::NotAdmitted
        } else {
            self.inner.verify(origin, body, key, signature)
        }
    }

    fn admission_generation(&self) -> u64 {
        self.admission.lock().unwrap().generation
    }

    fn admits(&mut self, origin: &NodeId) -> bool {
        !self.admission.lock().unwrap().revoked.contains(origin)
    }
}

/// A converged bench whose verifier admits nodes 1 to `admitted`.
fn admitting_bench(cfg: RouterConfig, admitted: u8) -> (Bench, Arc<Mutex<Admission>>) {
    let admission = Arc::new(Mutex::new(Admission {
        admitted: (1..=admitted).map(id).collect(),
        ..Admission::default()
    }));
    let auth = AdmittingAuth {
        inner: InsecureDigestAuth::new(id(1), MESH_KEY),
        admission: admission.clone(),
    };
    let mut b = Bench::new(cfg, 0, Box::new(auth));
    b.connect(2);
    b.connect(3);
    b.run_for(Duration::from_millis(500));
    (b, admission)
}

#[test]
fn an_insider_cannot_mint_origins() {
    let (mut b, _) = admitting_bench(RouterConfig::default(), 10);
    // Validly signed adverts of 50 origins the CA never admitted.
    for n in 100..150 {
        b.deliver(2, &advert(id(n), 1, &[id(2)], MESH_KEY));
    }
    assert!((100..150).all(|n| b.router.lsdb().seq_of(&id(n)).is_none()));
    assert_eq!(b.router.lsdb().len(), 1, "only our own advert");
    let s = b.router.stats().clone();
    assert!(s.rejected_not_admitted >= 1);
    assert_eq!(s.rejected_not_admitted + s.adverts_deferred, 50);
    assert_eq!(
        s.neighbor_penalties, s.rejected_not_admitted,
        "minting is penalised"
    );
    // The penalty wears off: an admitted origin's advert gets through again later.
    b.run_for(Duration::from_secs(3));
    b.deliver(2, &advert(id(5), 1, &[id(2)], MESH_KEY));
    assert_eq!(b.router.lsdb().seq_of(&id(5)), Some(1));
}

#[test]
fn the_database_holds_at_most_max_origins() {
    let cfg = RouterConfig {
        max_origins: 4,
        ..RouterConfig::default()
    };
    let (mut b, _) = admitting_bench(cfg, 20);
    for n in 4..11 {
        b.deliver(2, &advert(id(n), 1, &[id(2)], MESH_KEY));
    }
    assert_eq!(b.router.lsdb().len(), 4, "ours and three others");
    assert_eq!(b.router.stats().rejected_lsdb_full, 4);
    assert_eq!(b.router.stats().neighbor_penalties, 0);
    // Known origins still get their new versions.
    b.deliver(2, &advert(id(4), 2, &[id(2)], MESH_KEY));
    assert_eq!(b.router.lsdb().seq_of(&id(4)), Some(2));
}

#[test]
fn a_revoked_origin_is_purged_and_its_adverts_refused_without_penalty() {
    let (mut b, admission) = admitting_bench(RouterConfig::default(), 10);
    for n in [4, 5] {
        b.deliver(2, &advert(id(n), 1, &[id(2)], MESH_KEY));
    }
    assert_eq!(b.router.lsdb().len(), 3);
    {
        let mut a = admission.lock().unwrap();
        a.revoked.insert(id(4));
        a.generation += 1;
    }
    b.run_for(Duration::from_millis(100));
    assert_eq!(b.router.lsdb().seq_of(&id(4)), None, "purged");
    assert_eq!(b.router.lsdb().seq_of(&id(5)), Some(1), "kept");
    assert_eq!(b.router.stats().origins_purged, 1);
    // A neighbour that has not heard of the revocation yet forwards a newer version.
    b.deliver(2, &advert(id(4), 2, &[id(2)], MESH_KEY));
    assert_eq!(b.router.lsdb().seq_of(&id(4)), None);
    assert_eq!(b.router.stats().rejected_revoked, 1);
    assert_eq!(
        b.router.stats().neighbor_penalties,
        0,
        "not the sender's fault"
    );
}

// ---- per-origin acceptance limit (OSPF MinLSArrival) ---------------------------------------

/// The sequence numbers of `origin`'s adverts the router sent on `link`, in order.
fn flooded(b: &Bench, link: LinkId, origin: NodeId) -> Vec<u64> {
    b.sent
        .iter()
        .filter(|(l, _)| *l == link)
        .filter_map(|(_, bytes)| match RoutingMessage::decode(bytes) {
            Ok(RoutingMessage::Advert(_, body)) if body.origin == origin => Some(body.seq),
            _ => None,
        })
        .collect()
}

#[test]
fn an_origin_re_signing_rapidly_is_installed_and_flooded_once_per_interval() {
    // An insider re-signs its advert (validly) every millisecond and sends each version to
    // neighbour 2's link. Without the limit every version is installed, flooded to neighbour
    // 3 and changes the topology: 50 floods in 50 ms.
    let mut b = Bench::converged(0);
    b.sent.clear();
    let rogue = id(9);
    let cfg = b.router.config().clone();
    let (interval, burst) = (cfg.min_advert_arrival, u64::from(cfg.advert_arrival_burst));
    for seq in 1..=50u64 {
        b.deliver(2, &advert(rogue, seq, &[id(2)], MESH_KEY));
        b.run_for(Duration::from_millis(1));
    }
    let s = b.router.stats().clone();
    // The first version, then a burst of replacements; the rest is held back and counted.
    let first: Vec<u64> = (1..=1 + burst).collect();
    assert_eq!(b.router.lsdb().seq_of(&rogue), Some(1 + burst));
    assert_eq!(s.adverts_rate_limited, 50 - 1 - burst);
    assert_eq!(flooded(&b, 3, rogue), first);
    // Every version was acknowledged (the sender does not retransmit what we hold back).
    for seq in 1..=50u64 {
        assert!(acked(&b, 2, rogue, seq), "version {seq} acknowledged");
    }
    // Once a token is back, the newest version held is installed and flooded: the
    // intermediate ones never are.
    b.run_for(interval);
    assert_eq!(b.router.lsdb().seq_of(&rogue), Some(50));
    let mut expected = first.clone();
    expected.push(50);
    assert_eq!(flooded(&b, 3, rogue), expected);
    assert_eq!(b.router.stats().adverts_installed, s.adverts_installed + 1);
    // Sustained, one version per interval gets through.
    for seq in 51..=60u64 {
        b.deliver(2, &advert(rogue, seq, &[id(2)], MESH_KEY));
        b.run_for(Duration::from_millis(20));
    }
    b.run_for(interval);
    let more = flooded(&b, 3, rogue).len() - expected.len();
    assert!((1..=2).contains(&more), "{more} floods in 400 ms");
    // An origin that keeps to the interval is installed and flooded at once.
    b.run_for(interval * 4);
    b.deliver(2, &advert(rogue, 61, &[id(2)], MESH_KEY));
    assert_eq!(b.router.lsdb().seq_of(&rogue), Some(61));
    assert_eq!(flooded(&b, 3, rogue).last(), Some(&61));
}

// ---- flooding economy ------------------------------------------------------------------------

/// Whether the router acknowledged `(origin, seq)` on `link`.
fn acked(b: &Bench, link: LinkId, origin: NodeId, seq: u64) -> bool {
    b.sent.iter().any(|(l, bytes)| {
        *l == link
            && matches!(RoutingMessage::decode(bytes), Ok(RoutingMessage::AdvertAck(a))
                if a.contains(&(origin, seq)))
    })
}

#[test]
fn a_copy_that_crossed_ours_is_acknowledged_by_ours_not_by_an_ack() {
    let mut b = Bench::converged(0);
    b.sent.clear();
    let origin = id(9);
    let copy = advert(origin, 1, &[id(2)], MESH_KEY);
    b.deliver(2, &copy);
    assert!(acked(&b, 2, origin, 1), "learnt from 2: acknowledged");
    assert_eq!(flooded(&b, 3, origin), [1], "and sent on to 3");
    // Neighbour 3 had it from elsewhere and sent it to us before ours arrived: ours, on its
    // way, acknowledges it; an explicit ack would be a datagram for nothing.
    b.deliver(3, &copy);
    assert!(!acked(&b, 3, origin, 1));
    assert_eq!(b.router.stats().acks_implied, 1);
    // If ours was lost, 3 retransmits: nothing of ours is pending any more, so that copy is
    // acknowledged.
    b.deliver(3, &copy);
    assert!(acked(&b, 3, origin, 1));
    assert_eq!(b.router.stats().acks_implied, 1);
}

// ---- fast reroute around a lost neighbour ----------------------------------------------------

/// An advert of `origin` listing `(neighbour, cost)`.
fn advert_costs(origin: NodeId, seq: u64, links: &[(NodeId, u32)]) -> Vec<u8> {
    let links = links
        .iter()
        .map(|&(neighbor, cost)| AdvertisedLink {
            neighbor,
            cost,
            class: 0,
        })
        .collect();
    let mut auth = InsecureDigestAuth::new(origin, MESH_KEY);
    Router::make_advert(origin, seq, Duration::from_secs(3600), links, &mut auth).datagram
}

#[test]
fn fast_reroute_leaves_an_old_path_that_crosses_the_lost_neighbour_further_on() {
    // Us (1) with neighbours y = 2, h = 3 (our link to it made expensive) and w = 5; z = 6 and
    // the destination d = 4 beyond. Our path to d: 1 → y → z → h → d; the backup avoiding it:
    // 1 → w → d.
    let (y, h, d, w, z) = (id(2), id(3), id(4), id(5), id(6));
    let mut b = Bench::with_digest(0);
    for n in [2, 3, 5] {
        b.connect(n);
    }
    b.router.set_cost_factor(b.now, h, 100);
    b.run_for(Duration::from_millis(400));
    let me = b.me();
    for bytes in [
        advert_costs(y, 1, &[(me, 10), (z, 15)]),
        advert_costs(z, 1, &[(y, 15), (h, 15)]),
        advert_costs(h, 1, &[(me, 1000), (z, 15), (d, 15)]),
        advert_costs(d, 1, &[(h, 15), (w, 500)]),
        advert_costs(w, 1, &[(me, 10), (d, 500)]),
    ] {
        b.deliver(2, &bytes);
    }
    b.run_for(Duration::from_millis(50));
    let before = b.router.next_hop(b.now, &d).expect("a route to d");
    assert_eq!(before.neighbor, y, "through y, z and h");
    // h goes silent (crashed, for all we know): its link is gone.
    b.router.link_down(b.now, 3);
    b.drain();
    // Our old next hop y is up, but the old path crosses h further on; y is about to converge
    // and would send the packets back to us. The backup path avoids h.
    let hop = b.router.next_hop(b.now, &d).expect("a route to d");
    assert_eq!((hop.neighbor, hop.via_backup), (w, true));
    assert_eq!(b.router.backup_path(b.now, &d), Some(vec![me, w, d]));
    // Destinations whose old path does not cross h keep their next hop.
    let to_z = b.router.next_hop(b.now, &z).expect("a route to z");
    assert_eq!((to_z.neighbor, to_z.via_backup), (y, false));
}
