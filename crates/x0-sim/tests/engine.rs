//! The engine, exercised with small test nodes and with the heartbeat protocol: delivery and
//! latency, jitter, loss statistics, bandwidth and queueing, visible and silent link failures,
//! crash and restart, partition and heal, event changes, wake-ups, and determinism.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::Duration;

use x0_sim::heartbeat::{Cause, Heartbeat, HeartbeatConfig};
use x0_sim::link::LinkParams;
use x0_sim::topology::{ExplicitEdge, Generator, Latency, LinkSpec, Reach, TopoLink, Topology};
use x0_sim::trace::{TraceKind, TraceMode};
use x0_sim::{DropReason, Event, Instant, NodeIx, Outbox, Sim, SimError, SimNode};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Start,
    Up(NodeIx),
    Down(NodeIx),
    Rx { from: NodeIx, len: usize, tag: u32 },
    Timeout,
}

type Log = Rc<RefCell<Vec<(Instant, NodeIx, Seen)>>>;

/// A scripted node: sends what its plan says when it says, optionally echoes, logs every
/// callback into a log shared across restarts.
struct Recorder {
    me: NodeIx,
    log: Log,
    /// (when, to, size, tag), sorted by time.
    plan: VecDeque<(Instant, NodeIx, usize, u32)>,
    echo: bool,
}

impl Recorder {
    fn note(&self, now: Instant, s: Seen) {
        self.log.borrow_mut().push((now, self.me, s));
    }

    fn send_due(&mut self, now: Instant, out: &mut Outbox) {
        while let Some(&(at, to, size, tag)) = self.plan.front() {
            if at > now {
                break;
            }
            self.plan.pop_front();
            let mut b = tag.to_le_bytes().to_vec();
            b.resize(size.max(4), 0);
            out.send(to, &b);
        }
    }
}

impl SimNode for Recorder {
    fn start(&mut self, now: Instant, out: &mut Outbox) {
        self.note(now, Seen::Start);
        self.send_due(now, out);
    }
    fn datagram(&mut self, now: Instant, from: NodeIx, bytes: &[u8], out: &mut Outbox) {
        let tag = u32::from_le_bytes(bytes[..4].try_into().unwrap());
        self.note(
            now,
            Seen::Rx {
                from,
                len: bytes.len(),
                tag,
            },
        );
        if self.echo {
            out.send(from, bytes);
        }
    }
    fn link_up(&mut self, now: Instant, neighbor: NodeIx, _out: &mut Outbox) {
        self.note(now, Seen::Up(neighbor));
    }
    fn link_down(&mut self, now: Instant, neighbor: NodeIx, _out: &mut Outbox) {
        self.note(now, Seen::Down(neighbor));
    }
    fn timeout(&mut self, now: Instant, out: &mut Outbox) {
        self.note(now, Seen::Timeout);
        self.send_due(now, out);
    }
    fn next_timeout(&self) -> Option<Instant> {
        self.plan.front().map(|p| p.0)
    }
}

fn ms(v: u64) -> Instant {
    Instant::from_millis(v)
}

fn us(v: u64) -> Instant {
    Instant::from_micros(v)
}

fn pair(params: LinkParams) -> Topology {
    Topology::new(
        2,
        vec![TopoLink {
            a: 0,
            b: 1,
            forward: params,
            backward: params,
        }],
    )
    .unwrap()
}

fn line(n: u32, params: LinkParams) -> Topology {
    Topology::new(
        n,
        (0..n - 1)
            .map(|i| TopoLink {
                a: i,
                b: i + 1,
                forward: params,
                backward: params,
            })
            .collect(),
    )
    .unwrap()
}

/// A sim of recorders; `plans[i]` is node i's plan, `echo` for every node.
fn recorders(
    topo: &Topology,
    seed: u64,
    plans: Vec<Vec<(Instant, NodeIx, usize, u32)>>,
    echo: bool,
) -> (Sim<Recorder>, Log) {
    let log: Log = Rc::default();
    let l = log.clone();
    let sim = Sim::new(topo, seed, move |me| Recorder {
        me,
        log: l.clone(),
        plan: plans.get(me as usize).cloned().unwrap_or_default().into(),
        echo,
    });
    (sim, log)
}

fn rx_times(log: &Log, node: NodeIx) -> Vec<(Instant, u32)> {
    log.borrow()
        .iter()
        .filter_map(|(t, n, s)| match s {
            Seen::Rx { tag, .. } if *n == node => Some((*t, *tag)),
            _ => None,
        })
        .collect()
}

#[test]
fn delivers_after_the_latency_and_echoes_back() {
    let topo = pair(LinkParams {
        latency: Duration::from_millis(10),
        ..LinkParams::default()
    });
    let (mut sim, log) = recorders(&topo, 1, vec![vec![(ms(0), 1, 100, 7)]], true);
    sim.run_until(ms(100));
    // Node 1 gets it at 10 ms and echoes; node 0 gets the echo at 20 ms, echoes again...
    assert_eq!(rx_times(&log, 1)[0], (ms(10), 7));
    assert_eq!(rx_times(&log, 0)[0], (ms(20), 7));
    assert_eq!(rx_times(&log, 1).len(), 5, "10, 30, 50, 70, 90 ms");
    let st = sim.stats();
    assert_eq!(st.delivered, 10);
    assert_eq!(st.nodes[0].sent_datagrams, 6, "0, 20, ..., 100 ms");
    assert_eq!(st.nodes[1].received_bytes, 500);
    assert_eq!(st.links[0][0].delivered_datagrams, 5);
    assert_eq!(st.links[0][1].sent_bytes, 500);
    assert_eq!(st.drops.total(), 0);
    assert_eq!(sim.now(), ms(100));
    assert_eq!(
        sim.in_flight(),
        1,
        "the echo sent at 100 ms is still on the wire"
    );
}

#[test]
fn start_order_is_start_then_link_up_by_neighbour() {
    let topo = Topology::generate(&Generator::Ring { n: 4 }, &LinkSpec::default(), 1).unwrap();
    let (mut sim, log) = recorders(&topo, 1, vec![], false);
    sim.run_until(ms(0));
    let got: Vec<_> = log
        .borrow()
        .iter()
        .map(|(_, n, s)| (*n, s.clone()))
        .collect();
    assert_eq!(
        got,
        vec![
            (0, Seen::Start),
            (0, Seen::Up(1)),
            (0, Seen::Up(3)),
            (1, Seen::Start),
            (1, Seen::Up(0)),
            (1, Seen::Up(2)),
            (2, Seen::Start),
            (2, Seen::Up(1)),
            (2, Seen::Up(3)),
            (3, Seen::Start),
            (3, Seen::Up(0)),
            (3, Seen::Up(2)),
        ]
    );
}

#[test]
fn jitter_spreads_delays_within_bounds() {
    let topo = pair(LinkParams {
        latency: Duration::from_millis(10),
        jitter: Duration::from_millis(5),
        ..LinkParams::default()
    });
    // One datagram every 20 ms: further apart than the jitter range, so FIFO never holds one.
    let plan: Vec<_> = (0..1000u32)
        .map(|i| (us(u64::from(i) * 20_000), 1, 16, i))
        .collect();
    let (mut sim, log) = recorders(&topo, 3, vec![plan], false);
    sim.run_until(ms(21_000));
    let rx = rx_times(&log, 1);
    assert_eq!(rx.len(), 1000);
    let mut buckets = [0u32; 4];
    for (t, tag) in &rx {
        let delay = t.as_micros() - u64::from(*tag) * 20_000;
        assert!((5_000..=15_000).contains(&delay), "delay {delay} µs");
        buckets[((delay - 5_000) / 2_501) as usize] += 1;
    }
    // Uniform: about 250 in each quarter of the range.
    assert!(
        buckets.iter().all(|&b| (180..320).contains(&b)),
        "{buckets:?}"
    );
}

#[test]
fn jitter_never_reorders_a_direction() {
    let topo = pair(LinkParams {
        latency: Duration::from_millis(10),
        jitter: Duration::from_millis(5),
        ..LinkParams::default()
    });
    // One every 500 µs: jitter alone would reorder most of them.
    let plan: Vec<_> = (0..2000u32)
        .map(|i| (us(u64::from(i) * 500), 1, 16, i))
        .collect();
    let (mut sim, log) = recorders(&topo, 4, vec![plan], false);
    sim.run_until(ms(2_000));
    let rx = rx_times(&log, 1);
    assert_eq!(rx.len(), 2000);
    for (k, (t, tag)) in rx.iter().enumerate() {
        assert_eq!(*tag as usize, k, "FIFO");
        let delay = t.as_micros() - u64::from(*tag) * 500;
        assert!(delay >= 5_000, "never below latency - jitter");
    }
}

#[test]
fn observed_loss_rate_matches_the_configured_one() {
    const N: u32 = 100_000;
    for seed in [1, 2, 3] {
        let topo = pair(LinkParams {
            loss: 0.1,
            ..LinkParams::default()
        });
        let plan: Vec<_> = (0..N).map(|i| (ms(0), 1, 20, i)).collect();
        let (mut sim, log) = recorders(&topo, seed, vec![plan], false);
        sim.run_until(ms(10));
        let delivered = rx_times(&log, 1).len() as f64;
        let rate = 1.0 - delivered / f64::from(N);
        // σ = sqrt(0.1 · 0.9 / 1e5) ≈ 0.00095; allow 5σ.
        assert!((rate - 0.1).abs() < 0.005, "seed {seed}: loss {rate}");
        let st = sim.stats();
        assert_eq!(
            st.drops.get(DropReason::Loss) + st.delivered,
            u64::from(N),
            "every datagram either arrived or was lost"
        );
        assert_eq!(
            st.links[0][0].drops.get(DropReason::Loss),
            st.drops.get(DropReason::Loss)
        );
    }
}

#[test]
fn bandwidth_serialises_and_the_queue_tail_drops() {
    // 1 Mbit/s: a 125-byte datagram takes 1 ms; 10 may wait behind the one being sent.
    let topo = pair(LinkParams {
        latency: Duration::from_millis(5),
        bandwidth_bps: Some(1_000_000),
        queue_limit: 10,
        ..LinkParams::default()
    });
    let plan: Vec<_> = (0..50u32).map(|i| (ms(0), 1, 125, i)).collect();
    let (mut sim, log) = recorders(&topo, 1, vec![plan], false);
    sim.run_until(ms(100));
    let rx = rx_times(&log, 1);
    assert_eq!(rx.len(), 11);
    for (k, (t, tag)) in rx.iter().enumerate() {
        assert_eq!(*tag as usize, k);
        assert_eq!(*t, ms(5 + 1 + k as u64), "serialised one by one");
    }
    let st = sim.stats();
    assert_eq!(st.drops.get(DropReason::Queue), 39);
    assert_eq!(st.links[0][0].drops.get(DropReason::Queue), 39);
    assert_eq!(st.links[0][0].sent_datagrams, 50);
    // The other direction is independent and idle.
    assert_eq!(st.links[0][1].sent_datagrams, 0);
}

#[test]
fn visible_link_failure_is_told_to_both_ends_and_drops_in_flight() {
    let topo = pair(LinkParams {
        latency: Duration::from_millis(10),
        ..LinkParams::default()
    });
    let plan = vec![
        (ms(995), 1, 10, 1),  // in flight when the link fails at 1 s
        (ms(1500), 1, 10, 2), // sent while down
        (ms(2500), 1, 10, 3), // after it is back
    ];
    let (mut sim, log) = recorders(&topo, 1, vec![plan], false);
    sim.schedule(
        ms(1000),
        Event::LinkDown {
            link: 0,
            visible: true,
        },
    )
    .unwrap();
    sim.schedule(
        ms(2000),
        Event::LinkUp {
            link: 0,
            visible: true,
        },
    )
    .unwrap();
    sim.run_until(ms(3000));
    let events: Vec<_> = log
        .borrow()
        .iter()
        .filter(|(_, _, s)| matches!(s, Seen::Down(_) | Seen::Up(_)))
        .cloned()
        .collect();
    assert_eq!(
        events,
        vec![
            (ms(0), 0, Seen::Up(1)),
            (ms(0), 1, Seen::Up(0)),
            (ms(1000), 0, Seen::Down(1)),
            (ms(1000), 1, Seen::Down(0)),
            (ms(2000), 0, Seen::Up(1)),
            (ms(2000), 1, Seen::Up(0)),
        ]
    );
    assert_eq!(rx_times(&log, 1), vec![(ms(2510), 3)]);
    assert_eq!(sim.stats().drops.get(DropReason::LinkDown), 2);
}

#[test]
fn silent_link_failure_tells_nobody() {
    let topo = pair(LinkParams {
        latency: Duration::from_millis(10),
        ..LinkParams::default()
    });
    let plan = vec![
        (ms(995), 1, 10, 1),
        (ms(1500), 1, 10, 2),
        (ms(2500), 1, 10, 3),
    ];
    let (mut sim, log) = recorders(&topo, 1, vec![plan], false);
    sim.schedule(
        ms(1000),
        Event::LinkDown {
            link: 0,
            visible: false,
        },
    )
    .unwrap();
    sim.schedule(
        ms(2000),
        Event::LinkUp {
            link: 0,
            visible: false,
        },
    )
    .unwrap();
    sim.run_until(ms(1200));
    let status = sim.link_status(0).unwrap();
    assert!(status.carrier && status.silent_down && !status.passing());
    sim.run_until(ms(3000));
    let notices = log
        .borrow()
        .iter()
        .filter(|(t, _, s)| *t > ms(0) && matches!(s, Seen::Down(_) | Seen::Up(_)))
        .count();
    assert_eq!(notices, 0);
    assert_eq!(rx_times(&log, 1), vec![(ms(2510), 3)]);
    assert_eq!(sim.stats().drops.get(DropReason::LinkDown), 2);
    assert!(sim.link_status(0).unwrap().passing());
}

#[test]
fn silent_up_does_not_restore_a_visibly_failed_carrier() {
    let topo = pair(LinkParams::default());
    let (mut sim, log) = recorders(&topo, 1, vec![], false);
    sim.schedule(
        ms(10),
        Event::LinkDown {
            link: 0,
            visible: true,
        },
    )
    .unwrap();
    sim.schedule(
        ms(20),
        Event::LinkUp {
            link: 0,
            visible: false,
        },
    )
    .unwrap();
    sim.run_until(ms(30));
    assert!(!sim.link_status(0).unwrap().carrier);
    let ups_after_start = log
        .borrow()
        .iter()
        .filter(|(t, _, s)| *t > ms(0) && matches!(s, Seen::Up(_)))
        .count();
    assert_eq!(ups_after_start, 0);
}

fn heartbeat_sim(topo: &Topology, seed: u64) -> Sim<Heartbeat> {
    Sim::new(topo, seed, |me| {
        Heartbeat::new(me, HeartbeatConfig::default())
    })
}

fn ring8() -> Topology {
    let spec = LinkSpec {
        latency: Latency::Fixed(Duration::from_millis(2)),
        ..LinkSpec::default()
    };
    Topology::generate(&Generator::Ring { n: 8 }, &spec, 1).unwrap()
}

#[test]
fn heartbeat_neighbours_detect_visible_and_silent_link_failures() {
    let topo = ring8();
    let mut sim = heartbeat_sim(&topo, 1);
    let visible = sim.find_link(0, 1).unwrap();
    let silent = sim.find_link(4, 5).unwrap();
    sim.schedule(
        ms(1000),
        Event::LinkDown {
            link: visible,
            visible: true,
        },
    )
    .unwrap();
    sim.schedule(
        ms(1000),
        Event::LinkDown {
            link: silent,
            visible: false,
        },
    )
    .unwrap();
    sim.run_until(ms(999));
    for n in 0..8 {
        assert_eq!(
            sim.node(n).unwrap().alive_neighbors().count(),
            2,
            "node {n}"
        );
    }
    sim.run_until(ms(2000));
    let last = |n: NodeIx, peer: NodeIx| {
        *sim.node(n)
            .unwrap()
            .transitions()
            .iter()
            .rev()
            .find(|t| t.neighbor == peer)
            .unwrap()
    };
    // Visible: at once, because of the carrier.
    for (n, peer) in [(0, 1), (1, 0)] {
        let t = last(n, peer);
        assert!(!t.alive);
        assert_eq!((t.at, t.cause), (ms(1000), Cause::Carrier));
    }
    // Silent: after 3 missed intervals of 100 ms, noticed at the next tick.
    for (n, peer) in [(4, 5), (5, 4)] {
        let t = last(n, peer);
        assert!(!t.alive);
        assert_eq!(t.cause, Cause::Silence);
        assert!(t.at > ms(1200) && t.at <= ms(1400), "{:?}", t.at);
    }
    // The others did not notice anything.
    assert!(sim.node(2).unwrap().is_alive(1) && sim.node(3).unwrap().is_alive(4));
}

#[test]
fn crash_is_silent_and_restart_builds_a_fresh_node() {
    let topo = ring8();
    let mut sim = heartbeat_sim(&topo, 1);
    sim.set_trace(TraceMode::Records);
    sim.schedule(ms(1000), Event::NodeCrash { node: 3 })
        .unwrap();
    sim.schedule(ms(3000), Event::NodeRestart { node: 3 })
        .unwrap();
    sim.run_until(ms(999));
    let hellos_before = sim.node(3).unwrap().counters().hellos_sent;
    assert!(hellos_before >= 20);
    sim.run_until(ms(2000));
    assert!(!sim.is_alive(3));
    assert!(sim.node(3).is_none());
    for n in [2, 4] {
        let t = sim.node(n).unwrap().transitions().last().copied().unwrap();
        assert_eq!((t.neighbor, t.alive, t.cause), (3, false, Cause::Silence));
        assert!(t.at > ms(1200) && t.at <= ms(1400), "{:?}", t.at);
    }
    // Nobody was told through the carrier.
    assert!(
        sim.trace()
            .records()
            .iter()
            .all(|r| r.kind != TraceKind::LinkDown)
    );
    assert!(sim.stats().drops.get(DropReason::NodeDown) > 0);
    sim.run_until(ms(3500));
    let fresh = sim.node(3).unwrap();
    assert!(
        fresh.counters().hellos_sent < hellos_before,
        "counters start over"
    );
    assert_eq!(
        fresh.carrier_neighbors().collect::<Vec<_>>(),
        vec![2, 4],
        "link_up for each live link"
    );
    assert_eq!(sim.incarnation(3), Some(2));
    for n in [2, 4] {
        assert!(sim.node(n).unwrap().is_alive(3), "node {n} hears 3 again");
    }
}

#[test]
fn restart_of_a_live_node_is_a_reboot_and_old_packets_are_not_delivered() {
    let topo = pair(LinkParams {
        latency: Duration::from_millis(10),
        ..LinkParams::default()
    });
    let plan = vec![(ms(95), 1, 10, 1), (ms(105), 1, 10, 2)];
    let (mut sim, log) = recorders(&topo, 1, vec![plan], false);
    sim.schedule(ms(100), Event::NodeRestart { node: 1 })
        .unwrap();
    sim.run_until(ms(200));
    // Tag 1 was sent to the old life and arrives after the reboot: dropped.
    assert_eq!(rx_times(&log, 1), vec![(ms(115), 2)]);
    assert_eq!(sim.stats().drops.get(DropReason::NodeDown), 1);
    let starts = log
        .borrow()
        .iter()
        .filter(|(_, n, s)| *n == 1 && *s == Seen::Start)
        .count();
    assert_eq!(starts, 2);
}

#[test]
fn partition_cuts_silently_and_heal_restores() {
    let spec = LinkSpec {
        latency: Latency::Fixed(Duration::from_millis(1)),
        ..LinkSpec::default()
    };
    let topo = Topology::generate(
        &Generator::Grid {
            width: 4,
            height: 4,
        },
        &spec,
        1,
    )
    .unwrap();
    let mut sim = heartbeat_sim(&topo, 1);
    // Columns 0-1 against columns 2-3: the links 1-2, 5-6, 9-10, 13-14.
    let cut: Vec<_> = [(1, 2), (5, 6), (9, 10), (13, 14)]
        .iter()
        .map(|&(a, b)| sim.find_link(a, b).unwrap())
        .collect();
    sim.schedule(ms(1000), Event::Partition { links: cut.clone() })
        .unwrap();
    sim.schedule(ms(3000), Event::Heal).unwrap();
    sim.run_until(ms(2000));
    for &l in &cut {
        let s = sim.link_status(l).unwrap();
        assert!(s.partitioned && s.carrier && !s.passing());
    }
    assert!(!sim.node(1).unwrap().is_alive(2));
    assert!(!sim.node(14).unwrap().is_alive(13));
    assert!(
        sim.node(1).unwrap().is_alive(0),
        "inside a side, all is well"
    );
    assert!(sim.node(2).unwrap().is_alive(3));
    assert!(sim.stats().drops.get(DropReason::LinkDown) > 0);
    sim.run_until(ms(3500));
    assert!(sim.link_status(cut[0]).unwrap().passing());
    for (a, b) in [(1, 2), (5, 6), (9, 10), (13, 14)] {
        assert!(sim.node(a).unwrap().is_alive(b), "{a} hears {b} again");
    }
}

#[test]
fn set_latency_and_set_loss_take_effect() {
    let topo = pair(LinkParams {
        latency: Duration::from_millis(1),
        ..LinkParams::default()
    });
    let plan = vec![
        (ms(0), 1, 10, 0),
        (ms(100), 1, 10, 1),
        (ms(200), 1, 10, 2),
        (ms(300), 1, 10, 3),
    ];
    let (mut sim, log) = recorders(&topo, 1, vec![plan], false);
    sim.schedule(
        ms(50),
        Event::SetLatency {
            link: 0,
            from: Some(0),
            latency: Duration::from_millis(40),
            jitter: None,
        },
    )
    .unwrap();
    sim.schedule(
        ms(150),
        Event::SetLoss {
            link: 0,
            from: None,
            loss: 1.0,
        },
    )
    .unwrap();
    sim.schedule(
        ms(250),
        Event::SetLoss {
            link: 0,
            from: Some(1),
            loss: 0.0,
        },
    )
    .unwrap();
    sim.run_until(ms(1000));
    // One way only: the 0 → 1 direction keeps its loss of 1 after 250 ms.
    assert_eq!(rx_times(&log, 1), vec![(ms(1), 0), (ms(140), 1)]);
    assert_eq!(
        sim.link_params(0, 0).unwrap().latency,
        Duration::from_millis(40)
    );
    assert_eq!(
        sim.link_params(0, 1).unwrap().latency,
        Duration::from_millis(1)
    );
    assert_eq!(sim.link_params(0, 0).unwrap().loss, 1.0);
    assert_eq!(sim.link_params(0, 1).unwrap().loss, 0.0);
    assert_eq!(sim.stats().drops.get(DropReason::Loss), 2);
}

#[test]
fn events_are_checked_when_scheduled() {
    let topo = pair(LinkParams::default());
    let (mut sim, _) = recorders(&topo, 1, vec![], false);
    assert_eq!(
        sim.schedule(
            ms(1),
            Event::LinkDown {
                link: 5,
                visible: true
            }
        ),
        Err(SimError::NoSuchLink { link: 5, links: 1 })
    );
    assert_eq!(
        sim.schedule(ms(1), Event::NodeCrash { node: 2 }),
        Err(SimError::NoSuchNode { node: 2, nodes: 2 })
    );
    assert!(matches!(
        sim.schedule(
            ms(1),
            Event::SetLoss {
                link: 0,
                from: None,
                loss: f64::NAN
            }
        ),
        Err(SimError::InvalidLoss { .. })
    ));
    let three = line(3, LinkParams::default());
    let (mut sim3, _) = recorders(&three, 1, vec![], false);
    assert_eq!(
        sim3.schedule(
            ms(1),
            Event::SetLatency {
                link: 0,
                from: Some(2),
                latency: Duration::ZERO,
                jitter: None
            }
        ),
        Err(SimError::NotAnEnd { link: 0, node: 2 })
    );
    sim.run_until(ms(10));
    assert!(matches!(
        sim.schedule(ms(5), Event::Heal),
        Err(SimError::InThePast { .. })
    ));
}

#[test]
fn sending_to_a_stranger_is_counted() {
    let topo = line(3, LinkParams::default());
    let (mut sim, log) = recorders(&topo, 1, vec![vec![(ms(0), 2, 10, 9)]], false);
    sim.run_until(ms(10));
    assert!(rx_times(&log, 2).is_empty());
    assert_eq!(sim.stats().drops.get(DropReason::NoLink), 1);
}

/// A node whose deadline moves: every datagram pushes it 100 ms later.
struct Watchdog {
    deadline: Instant,
    fired: Vec<Instant>,
    pokes: Vec<Instant>,
}

impl SimNode for Watchdog {
    fn start(&mut self, now: Instant, _out: &mut Outbox) {
        self.deadline = now + Duration::from_millis(100);
    }
    fn datagram(&mut self, now: Instant, _f: NodeIx, _b: &[u8], _out: &mut Outbox) {
        self.deadline = now + Duration::from_millis(100);
    }
    fn link_up(&mut self, _now: Instant, _n: NodeIx, _out: &mut Outbox) {}
    fn link_down(&mut self, _now: Instant, _n: NodeIx, _out: &mut Outbox) {}
    fn timeout(&mut self, now: Instant, out: &mut Outbox) {
        self.fired.push(now);
        self.deadline = Instant::NEVER;
        if let Some(next) = self.pokes.first().copied() {
            self.pokes.remove(0);
            self.deadline = next;
            out.send(1, b"poke");
        }
    }
    fn next_timeout(&self) -> Option<Instant> {
        (self.deadline != Instant::NEVER).then_some(self.deadline)
    }
}

#[test]
fn only_the_latest_deadline_fires() {
    let topo = pair(LinkParams {
        latency: Duration::from_millis(30),
        ..LinkParams::default()
    });
    let mut sim = Sim::new(&topo, 1, |me| Watchdog {
        deadline: Instant::NEVER,
        fired: Vec::new(),
        // Node 0's deadlines after its first one.
        pokes: if me == 0 {
            vec![ms(150), ms(200)]
        } else {
            Vec::new()
        },
    });
    sim.run_until(ms(1000));
    // Node 0 pokes at 100 and 150 ms. Node 1: deadline 100 fires before the first poke
    // arrives (130), which sets 230; the second poke (180) moves it to 280: the entry for 230
    // is stale and skipped.
    assert_eq!(sim.node(1).unwrap().fired, vec![ms(100), ms(280)]);
    assert_eq!(sim.node(0).unwrap().fired, vec![ms(100), ms(150), ms(200)]);
    assert_eq!(sim.stats().timeouts, 5);
}

fn busy_topology(seed: u64) -> Topology {
    let spec = LinkSpec {
        latency: Latency::Uniform {
            min: Duration::from_millis(1),
            max: Duration::from_millis(20),
        },
        jitter: Duration::from_millis(1),
        loss: 0.02,
        bandwidth_bps: Some(1_000_000),
        queue_limit: 8,
    };
    Topology::generate(
        &Generator::RandomGeometric {
            n: 300,
            reach: Reach::AvgDegree(6.0),
            connect: true,
        },
        &spec,
        seed,
    )
    .unwrap()
}

fn busy_run(topo: &Topology, seed: u64, mode: TraceMode) -> Sim<Heartbeat> {
    let mut sim = heartbeat_sim(topo, seed);
    sim.set_trace(mode);
    let l = sim
        .find_link(topo.links()[10].a, topo.links()[10].b)
        .unwrap();
    let cut: Vec<_> = (0..20).collect();
    for (at, ev) in [
        (
            500,
            Event::LinkDown {
                link: l,
                visible: true,
            },
        ),
        (700, Event::NodeCrash { node: 17 }),
        (900, Event::Partition { links: cut }),
        (
            1200,
            Event::LinkUp {
                link: l,
                visible: true,
            },
        ),
        (1300, Event::NodeRestart { node: 17 }),
        (1500, Event::Heal),
    ] {
        sim.schedule(ms(at), ev).unwrap();
    }
    sim.run_until(ms(2000));
    sim
}

#[test]
fn same_seed_same_trace_other_seed_other_trace() {
    let topo = busy_topology(11);
    let a = busy_run(&topo, 5, TraceMode::Digest);
    let b = busy_run(&topo, 5, TraceMode::Records);
    let c = busy_run(&topo, 6, TraceMode::Digest);
    assert!(a.trace().len() > 10_000, "a real run: {}", a.trace().len());
    assert_eq!(a.trace().digest(), b.trace().digest());
    assert_eq!(a.trace().len(), b.trace().len());
    assert_eq!(a.stats().events, b.stats().events);
    assert_eq!(a.stats().drops, b.stats().drops);
    assert_ne!(a.trace().digest(), c.trace().digest());
    // The records fold to the digest.
    assert_eq!(
        Some(x0_sim::trace::digest_of(b.trace().records())),
        b.trace().digest()
    );
    // Every drop reason the scenario can produce shows up.
    for r in [DropReason::Loss, DropReason::LinkDown, DropReason::NodeDown] {
        assert!(a.stats().drops.get(r) > 0, "{r:?}");
    }
    // A different topology seed is a different run too.
    let d = busy_run(&busy_topology(12), 5, TraceMode::Digest);
    assert_ne!(a.trace().digest(), d.trace().digest());
}

#[test]
fn explicit_topology_with_per_edge_parameters() {
    let slow = LinkSpec {
        latency: Latency::Fixed(Duration::from_millis(50)),
        ..LinkSpec::default()
    };
    let topo = Topology::generate(
        &Generator::Explicit {
            nodes: 3,
            edges: vec![
                ExplicitEdge {
                    a: 0,
                    b: 1,
                    links: None,
                },
                ExplicitEdge {
                    a: 1,
                    b: 2,
                    links: Some(slow),
                },
            ],
        },
        &LinkSpec::default(),
        1,
    )
    .unwrap();
    let (mut sim, log) = recorders(
        &topo,
        1,
        vec![vec![], vec![(ms(0), 0, 8, 1), (ms(0), 2, 8, 2)]],
        false,
    );
    sim.run_until(ms(100));
    assert_eq!(rx_times(&log, 0), vec![(ms(1), 1)]);
    assert_eq!(rx_times(&log, 2), vec![(ms(50), 2)]);
}
