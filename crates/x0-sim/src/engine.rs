//! The discrete-event engine: virtual time, one event queue, nodes behind the [`SimNode`] trait,
//! virtual links between them.
//!
//! **Ownership.** [`Sim`] owns everything: the nodes (built by a factory closure, rebuilt by it
//! on restart), the links' state and parameters, the single event queue, the one engine RNG, the
//! counters and the trace. A node sees the world only through its callbacks and the [`Outbox`]
//! it writes datagrams into; it never learns about the engine's internals, which is why the same
//! sans-IO core can run here and in the daemon.
//!
//! **Order.** The event queue (a 4-ary heap) is keyed by `(time, insertion sequence)`: events
//! at the same microsecond run in the order they were scheduled, so a run depends only on its
//! inputs and seed. Each node has at most one live wake-up; when its deadline changes, the old
//! queue entry stays behind and is skipped by its generation number.
//!
//! **What a node is told.** At start (time zero) each node gets `start`, then `link_up` for
//! every neighbour, in ascending neighbour order, node by node in index order. A *visible* link
//! failure (a veth losing carrier) calls `link_down` on both live ends at once; a *silent* one
//! (and a partition) just makes datagrams vanish. A crash is silent too: the node stops, its
//! neighbours are told nothing, datagrams addressed to it are dropped on arrival. A restart
//! drops whatever the node was and builds a fresh one through the factory, then calls `start`
//! and `link_up` for each link whose carrier is up (silently failed links included: locally
//! they look fine). Datagrams sent to the node's previous life are not delivered to the new
//! one.
//!
//! **In flight.** A datagram already on a link when the link stops passing traffic (any kind
//! of down, or a partition) is dropped, even if the link comes back before it would have
//! arrived; the link's transmit queues are emptied at the same moment. A datagram sent by a node
//! that then crashes is still delivered (it already left).

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

use x0_routing::Instant;

use crate::link::{Direction, LinkParams, Transmit};
use crate::queue::{EventQueue, Kind};
use crate::rng::{SimRng, Stream};
use crate::stats::{DirectionTraffic, DropReason, Drops, NodeTraffic, Stats};
use crate::topology::Topology;
use crate::trace::{Trace, TraceKind, TraceMode, TraceRecord};
use crate::{LinkIx, NodeIx};

/// A protocol instance the simulator can run: a sans-IO state machine driven by callbacks, each
/// with the current virtual time, each free to send datagrams through the [`Outbox`].
///
/// After every callback the engine asks [`SimNode::next_timeout`] and calls
/// [`SimNode::timeout`] when that time comes.
pub trait SimNode {
    /// The node has just been created (at time zero, or by a restart).
    fn start(&mut self, now: Instant, out: &mut Outbox);
    /// A datagram from the neighbour `from` has arrived.
    fn datagram(&mut self, now: Instant, from: NodeIx, bytes: &[u8], out: &mut Outbox);
    /// The link to `neighbor` is up, as the local interface sees it (carrier up).
    fn link_up(&mut self, now: Instant, neighbor: NodeIx, out: &mut Outbox);
    /// The link to `neighbor` went down visibly (carrier lost).
    fn link_down(&mut self, now: Instant, neighbor: NodeIx, out: &mut Outbox);
    /// The deadline returned by [`SimNode::next_timeout`] has passed.
    fn timeout(&mut self, now: Instant, out: &mut Outbox);
    /// When the node next wants [`SimNode::timeout`] called, if ever.
    fn next_timeout(&self) -> Option<Instant>;
}

impl<T: SimNode + ?Sized> SimNode for Box<T> {
    fn start(&mut self, now: Instant, out: &mut Outbox) {
        (**self).start(now, out);
    }
    fn datagram(&mut self, now: Instant, from: NodeIx, bytes: &[u8], out: &mut Outbox) {
        (**self).datagram(now, from, bytes, out);
    }
    fn link_up(&mut self, now: Instant, neighbor: NodeIx, out: &mut Outbox) {
        (**self).link_up(now, neighbor, out);
    }
    fn link_down(&mut self, now: Instant, neighbor: NodeIx, out: &mut Outbox) {
        (**self).link_down(now, neighbor, out);
    }
    fn timeout(&mut self, now: Instant, out: &mut Outbox) {
        (**self).timeout(now, out);
    }
    fn next_timeout(&self) -> Option<Instant> {
        (**self).next_timeout()
    }
}

/// Datagrams a node wants sent, each to one neighbour.
///
/// Buffers are pooled: [`Outbox::send`] copies into a recycled buffer, and the engine returns
/// every delivered datagram's buffer to the pool, so a steady run allocates nothing per packet.
#[derive(Debug, Default)]
pub struct Outbox {
    sends: Vec<(NodeIx, Vec<u8>)>,
    pool: Vec<Vec<u8>>,
}

/// Buffers kept for reuse, at most.
const POOL_MAX: usize = 1 << 16;
/// Buffers larger than this are not kept.
const POOL_BUF_MAX: usize = 64 * 1024;

impl Outbox {
    /// An empty outbox.
    pub fn new() -> Self {
        Self::default()
    }

    /// Queues a copy of `bytes` for `neighbor`.
    pub fn send(&mut self, neighbor: NodeIx, bytes: &[u8]) {
        let mut buf = self.buffer();
        buf.extend_from_slice(bytes);
        self.sends.push((neighbor, buf));
    }

    /// Queues `buf` for `neighbor` (take it from [`Outbox::buffer`] to reuse pooled memory).
    pub fn send_buf(&mut self, neighbor: NodeIx, buf: Vec<u8>) {
        self.sends.push((neighbor, buf));
    }

    /// An empty buffer, recycled if one is available.
    pub fn buffer(&mut self) -> Vec<u8> {
        self.pool.pop().unwrap_or_default()
    }

    /// Gives a buffer back to the pool.
    pub fn recycle(&mut self, mut buf: Vec<u8>) {
        if self.pool.len() < POOL_MAX && buf.capacity() <= POOL_BUF_MAX {
            buf.clear();
            self.pool.push(buf);
        }
    }

    /// Datagrams queued.
    pub fn len(&self) -> usize {
        self.sends.len()
    }

    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.sends.is_empty()
    }

    /// The queued datagrams, in order.
    pub fn datagrams(&self) -> impl Iterator<Item = (NodeIx, &[u8])> {
        self.sends.iter().map(|(n, b)| (*n, b.as_slice()))
    }

    /// Takes the queued datagrams out (for drivers other than [`Sim`], and for unit tests of a
    /// node).
    pub fn drain(&mut self) -> std::vec::Drain<'_, (NodeIx, Vec<u8>)> {
        self.sends.drain(..)
    }
}

/// A change to the simulated world, applied at a scheduled time.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// The link fails. Visible: both live ends get `link_down` (carrier lost). Silent:
    /// datagrams vanish and nobody is told.
    LinkDown {
        /// The link.
        link: LinkIx,
        /// Whether the ends see it.
        visible: bool,
    },
    /// The link comes back. Visible: the carrier comes up and, if it was down, both live ends
    /// get `link_up`; a silent failure is cleared too. Silent: only a silent failure is
    /// cleared (a carrier that went down visibly stays down).
    LinkUp {
        /// The link.
        link: LinkIx,
        /// Whether the ends see it.
        visible: bool,
    },
    /// The node stops silently.
    NodeCrash {
        /// The node.
        node: NodeIx,
    },
    /// The node is rebuilt by the factory and started (a live node is crashed first: a reboot).
    NodeRestart {
        /// The node.
        node: NodeIx,
    },
    /// Sets the loss probability of the link, both ways or only from one end.
    SetLoss {
        /// The link.
        link: LinkIx,
        /// `Some(end)`: only the direction from that end.
        from: Option<NodeIx>,
        /// New loss probability, in `[0, 1]`.
        loss: f64,
    },
    /// Sets the latency (and optionally the jitter) of the link.
    SetLatency {
        /// The link.
        link: LinkIx,
        /// `Some(end)`: only the direction from that end.
        from: Option<NodeIx>,
        /// New one-way latency.
        latency: Duration,
        /// New jitter, if it changes.
        jitter: Option<Duration>,
    },
    /// These links fail silently until [`Event::Heal`].
    Partition {
        /// The links cut.
        links: Vec<LinkIx>,
    },
    /// Every link cut by a partition passes traffic again (silent failures set by
    /// [`Event::LinkDown`] stay).
    Heal,
}

/// Why an event or a topology was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum SimError {
    /// No such link.
    #[error("link {link} does not exist (there are {links})")]
    NoSuchLink {
        /// The index given.
        link: LinkIx,
        /// How many links there are.
        links: usize,
    },
    /// No such node.
    #[error("node {node} does not exist (there are {nodes})")]
    NoSuchNode {
        /// The index given.
        node: NodeIx,
        /// How many nodes there are.
        nodes: usize,
    },
    /// The node is not an end of the link.
    #[error("node {node} is not an end of link {link}")]
    NotAnEnd {
        /// The link.
        link: LinkIx,
        /// The node.
        node: NodeIx,
    },
    /// Loss outside `[0, 1]`.
    #[error("loss {loss} is not a probability in [0, 1]")]
    InvalidLoss {
        /// The value given.
        loss: f64,
    },
    /// The event's time has already passed.
    #[error("event at {at:?} is before the current time {now:?}")]
    InThePast {
        /// The time given.
        at: Instant,
        /// The simulator's time.
        now: Instant,
    },
}

/// The state of a link as the engine sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkStatus {
    /// Carrier up (what the ends see locally).
    pub carrier: bool,
    /// Failed silently (a silent [`Event::LinkDown`]).
    pub silent_down: bool,
    /// Cut by a partition.
    pub partitioned: bool,
}

impl LinkStatus {
    /// Whether datagrams get through.
    pub fn passing(&self) -> bool {
        self.carrier && !self.silent_down && !self.partitioned
    }
}

/// One link, as events see it.
#[derive(Debug, Clone)]
struct LinkState {
    ends: [NodeIx; 2],
    /// The port of `ends[0]` towards `ends[1]`, and the reverse.
    ports: [u32; 2],
    status: LinkStatus,
}

/// One direction of a link, stored with the sending node's other ports so that a node's
/// sends touch contiguous memory. Everything a send needs is here.
#[derive(Debug, Clone)]
struct Port {
    /// The node at the far end.
    neighbor: NodeIx,
    link: LinkIx,
    /// Copy of the link's `status.passing()`.
    passing: bool,
    dir: Direction,
    sent_datagrams: u64,
    sent_bytes: u64,
}

/// What an arrival checks, kept apart from [`Port`] in a small array that stays in cache.
#[derive(Debug, Clone, Copy, Default)]
struct Epochs {
    /// Bumped whenever the link stops passing: in-flight datagrams of older epochs are lost.
    link: u32,
    /// Bumped whenever the far node crashes or restarts: datagrams for its previous life are
    /// not delivered.
    peer: u32,
}

/// Drops on one port. Delivered counts are derived (sent − dropped − in flight), so that an
/// arrival writes nothing on the sending side.
#[derive(Debug, Clone, Copy, Default)]
struct PortDrops {
    drops: Drops,
    bytes: u64,
}

const NO_WAKE: u64 = u64::MAX;

struct NodeSlot<N> {
    node: Option<N>,
    incarnation: u32,
    wake_gen: u32,
    wake_at: u64,
    traffic: NodeTraffic,
    /// Callbacks made into the node, all lives (read by [`Sim::node_callbacks`]).
    callbacks: u64,
}

#[derive(Debug)]
struct InFlight {
    buf: Vec<u8>,
    port: u32,
    from: NodeIx,
    to: NodeIx,
    epochs: Epochs,
    /// [`Sim::epoch_bumps`] when sent: if it has not moved since, no epoch has, and the
    /// arrival need not read the port's (a cache miss per datagram in a large mesh).
    bumps: u64,
}

/// Run-wide counters (per-node and per-direction ones live with their node and port).
#[derive(Debug, Default)]
struct Counters {
    drops: Drops,
    events: u64,
    timeouts: u64,
    delivered: u64,
    wall: Duration,
}

/// Builds a node for an index (at creation and on every restart).
pub type NodeFactory<N> = Box<dyn FnMut(NodeIx) -> N>;

/// A simulated network of nodes of type `N`.
pub struct Sim<N> {
    now: u64,
    started: bool,
    queue: EventQueue,
    nodes: Vec<NodeSlot<N>>,
    factory: NodeFactory<N>,
    links: Vec<LinkState>,
    /// Node `i`'s ports are `ports[port_start[i]..port_start[i + 1]]`, by ascending neighbour.
    port_start: Vec<u32>,
    /// The neighbour of each port, apart from the ports for a cache-friendly search.
    port_neighbor: Vec<NodeIx>,
    ports: Vec<Port>,
    /// Finish times of datagrams being serialised, per port (empty without bandwidth).
    port_queue: Vec<VecDeque<u64>>,
    port_epochs: Vec<Epochs>,
    /// Epoch changes of any port so far.
    epoch_bumps: u64,
    port_drops: Vec<PortDrops>,
    in_flight: Vec<InFlight>,
    free_slots: Vec<u32>,
    scripted: Vec<Option<Event>>,
    outbox: Outbox,
    rng: SimRng,
    counters: Counters,
    trace: Trace,
}

impl<N> fmt::Debug for Sim<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sim")
            .field("now", &Instant::from_micros(self.now))
            .field("nodes", &self.nodes.len())
            .field("links", &self.links.len())
            .field("queued_events", &self.queue.len())
            .field("in_flight", &(self.in_flight.len() - self.free_slots.len()))
            .finish_non_exhaustive()
    }
}

impl<N: SimNode> Sim<N> {
    /// A network shaped like `topology`, with one node per index built by `factory`, and the
    /// engine's randomness (loss, jitter) drawn from `seed`. Nodes are built now and started by
    /// the first call that runs the simulation, at time zero.
    pub fn new(
        topology: &Topology,
        seed: u64,
        mut factory: impl FnMut(NodeIx) -> N + 'static,
    ) -> Self {
        let n = topology.node_count() as usize;
        let topo_links = topology.links();
        // Ports grouped by sending node, each group sorted by neighbour.
        let mut order: Vec<(NodeIx, NodeIx, LinkIx, bool)> =
            Vec::with_capacity(2 * topo_links.len());
        for (ix, l) in topo_links.iter().enumerate() {
            order.push((l.a, l.b, ix as LinkIx, true));
            order.push((l.b, l.a, ix as LinkIx, false));
        }
        order.sort_unstable_by_key(|&(from, to, _, _)| (from, to));
        let mut port_start = vec![0u32; n + 1];
        for &(from, ..) in &order {
            port_start[from as usize + 1] += 1;
        }
        for i in 0..n {
            port_start[i + 1] += port_start[i];
        }
        let mut links: Vec<LinkState> = topo_links
            .iter()
            .map(|l| LinkState {
                ends: [l.a, l.b],
                ports: [0, 0],
                status: LinkStatus {
                    carrier: true,
                    silent_down: false,
                    partitioned: false,
                },
            })
            .collect();
        let mut ports = Vec::with_capacity(order.len());
        for (p, &(_, to, link, forward)) in order.iter().enumerate() {
            let l = &topo_links[link as usize];
            let params = if forward { &l.forward } else { &l.backward };
            links[link as usize].ports[usize::from(!forward)] = p as u32;
            ports.push(Port {
                neighbor: to,
                link,
                passing: true,
                dir: Direction::new(params),
                sent_datagrams: 0,
                sent_bytes: 0,
            });
        }
        let nodes = (0..n)
            .map(|i| NodeSlot {
                node: Some(factory(i as NodeIx)),
                incarnation: 0,
                wake_gen: 0,
                wake_at: NO_WAKE,
                traffic: NodeTraffic::default(),
                callbacks: 0,
            })
            .collect();
        Self {
            now: 0,
            started: false,
            queue: EventQueue::with_capacity(n * 4),
            nodes,
            factory: Box::new(factory),
            links,
            port_start,
            port_neighbor: ports.iter().map(|p| p.neighbor).collect(),
            port_queue: vec![VecDeque::new(); ports.len()],
            port_epochs: vec![Epochs::default(); ports.len()],
            epoch_bumps: 0,
            port_drops: vec![PortDrops::default(); ports.len()],
            ports,
            in_flight: Vec::new(),
            free_slots: Vec::new(),
            scripted: Vec::new(),
            outbox: Outbox::new(),
            rng: SimRng::new(seed, Stream::Engine),
            counters: Counters::default(),
            trace: Trace::default(),
        }
    }

    /// Chooses how much of the trace to keep. Call before running: the trace restarts empty.
    pub fn set_trace(&mut self, mode: TraceMode) {
        self.trace = Trace::new(mode);
    }

    /// The current virtual time.
    pub fn now(&self) -> Instant {
        Instant::from_micros(self.now)
    }

    /// Number of nodes (live or crashed).
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// Number of links.
    pub fn link_count(&self) -> usize {
        self.links.len()
    }

    /// The node at `ix`, if it is alive.
    pub fn node(&self, ix: NodeIx) -> Option<&N> {
        self.nodes.get(ix as usize).and_then(|s| s.node.as_ref())
    }

    /// The node at `ix`, mutably, if it is alive. If you change its deadline, the engine notices
    /// only after the node's next callback.
    pub fn node_mut(&mut self, ix: NodeIx) -> Option<&mut N> {
        self.nodes
            .get_mut(ix as usize)
            .and_then(|s| s.node.as_mut())
    }

    /// Whether the node is alive (not crashed).
    pub fn is_alive(&self, ix: NodeIx) -> bool {
        self.node(ix).is_some()
    }

    /// How many times the node has been crashed or restarted (0 for its first life).
    pub fn incarnation(&self, ix: NodeIx) -> Option<u32> {
        self.nodes.get(ix as usize).map(|s| s.incarnation)
    }

    /// The two ends of a link, as the topology listed them.
    pub fn link_ends(&self, link: LinkIx) -> Option<(NodeIx, NodeIx)> {
        self.links
            .get(link as usize)
            .map(|l| (l.ends[0], l.ends[1]))
    }

    /// A link's state.
    pub fn link_status(&self, link: LinkIx) -> Option<LinkStatus> {
        self.links.get(link as usize).map(|l| l.status)
    }

    /// Current parameters of the direction of `link` that starts at `from`.
    pub fn link_params(&self, link: LinkIx, from: NodeIx) -> Option<LinkParams> {
        let l = self.links.get(link as usize)?;
        let d = l.ends.iter().position(|&e| e == from)?;
        Some(self.ports[l.ports[d] as usize].dir.params())
    }

    /// Datagrams accepted by the transmitter of the direction of `link` that starts at `from`
    /// and not yet fully serialised at the current time (the one being sent included); always 0
    /// on a direction without a bandwidth limit. Read-only: the engine itself trims the queue
    /// only when the next datagram is offered.
    pub fn link_backlog(&self, link: LinkIx, from: NodeIx) -> Option<usize> {
        let l = self.links.get(link as usize)?;
        let d = l.ends.iter().position(|&e| e == from)?;
        let queue = self.port_queue.get(l.ports[d] as usize)?;
        let now_ns = self.now.saturating_mul(1000);
        Some(queue.len() - queue.partition_point(|&f| f <= now_ns))
    }

    /// Callbacks (`start`, `datagram`, `link_up`, `link_down`, `timeout`) the engine has made
    /// into the node at `ix`, over all its lives.
    pub fn node_callbacks(&self, ix: NodeIx) -> Option<u64> {
        self.nodes.get(ix as usize).map(|s| s.callbacks)
    }

    /// The port of `from` towards `to`, if they are linked (binary search in `from`'s
    /// neighbours).
    #[inline]
    fn port_of(&self, from: NodeIx, to: NodeIx) -> Option<u32> {
        let i = from as usize;
        let (&s, &e) = (self.port_start.get(i)?, self.port_start.get(i + 1)?);
        let neighbors = self.port_neighbor.get(s as usize..e as usize)?;
        neighbors.binary_search(&to).ok().map(|k| s + k as u32)
    }

    /// The link between `a` and `b`, if any.
    pub fn find_link(&self, a: NodeIx, b: NodeIx) -> Option<LinkIx> {
        self.port_of(a, b).map(|p| self.ports[p as usize].link)
    }

    /// The neighbours of `node` and the links to them, in ascending neighbour order.
    pub fn neighbors(&self, node: NodeIx) -> impl Iterator<Item = (NodeIx, LinkIx)> + '_ {
        self.node_ports(node).iter().map(|p| (p.neighbor, p.link))
    }

    fn port_range(&self, node: NodeIx) -> std::ops::Range<usize> {
        let i = node as usize;
        match (self.port_start.get(i), self.port_start.get(i + 1)) {
            (Some(&s), Some(&e)) => s as usize..e as usize,
            _ => 0..0,
        }
    }

    fn node_ports(&self, node: NodeIx) -> &[Port] {
        self.ports.get(self.port_range(node)).unwrap_or(&[])
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Stats {
        // What is still on the wire, per port.
        let mut on_wire = vec![(0u64, 0u64); self.ports.len()];
        let mut free = vec![false; self.in_flight.len()];
        for &s in &self.free_slots {
            free[s as usize] = true;
        }
        for (f, _) in self.in_flight.iter().zip(&free).filter(|(_, free)| !**free) {
            let w = &mut on_wire[f.port as usize];
            w.0 += 1;
            w.1 += f.buf.len() as u64;
        }
        let direction = |p: u32| {
            let p = p as usize;
            let port = &self.ports[p];
            let dropped = self.port_drops[p];
            DirectionTraffic {
                sent_datagrams: port.sent_datagrams,
                sent_bytes: port.sent_bytes,
                delivered_datagrams: port.sent_datagrams - dropped.drops.total() - on_wire[p].0,
                delivered_bytes: port.sent_bytes - dropped.bytes - on_wire[p].1,
                drops: dropped.drops,
            }
        };
        let links = self
            .links
            .iter()
            .map(|l| [direction(l.ports[0]), direction(l.ports[1])])
            .collect();
        Stats {
            nodes: self.nodes.iter().map(|s| s.traffic).collect(),
            links,
            drops: self.counters.drops,
            events: self.counters.events,
            timeouts: self.counters.timeouts,
            delivered: self.counters.delivered,
            wall: self.counters.wall,
        }
    }

    /// Events processed so far (stale wake-ups included).
    pub fn events_processed(&self) -> u64 {
        self.counters.events
    }

    /// Wall-clock time spent running so far.
    pub fn wall_time(&self) -> Duration {
        self.counters.wall
    }

    /// The trace so far.
    pub fn trace(&self) -> &Trace {
        &self.trace
    }

    /// Events waiting in the queue (stale wake-ups included).
    pub fn queued_events(&self) -> usize {
        self.queue.len()
    }

    /// Datagrams currently on links.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len() - self.free_slots.len()
    }

    /// The time of the next queued event, if any.
    pub fn next_event_time(&self) -> Option<Instant> {
        self.queue.peek_time().map(Instant::from_micros)
    }

    fn check(&self, event: &Event) -> Result<(), SimError> {
        let link_ok = |link: LinkIx| -> Result<&LinkState, SimError> {
            self.links.get(link as usize).ok_or(SimError::NoSuchLink {
                link,
                links: self.links.len(),
            })
        };
        let node_ok = |node: NodeIx| -> Result<(), SimError> {
            if (node as usize) < self.nodes.len() {
                Ok(())
            } else {
                Err(SimError::NoSuchNode {
                    node,
                    nodes: self.nodes.len(),
                })
            }
        };
        let end_ok = |link: LinkIx, from: Option<NodeIx>| -> Result<(), SimError> {
            let l = link_ok(link)?;
            match from {
                Some(node) if !l.ends.contains(&node) => Err(SimError::NotAnEnd { link, node }),
                _ => Ok(()),
            }
        };
        match event {
            Event::LinkDown { link, .. } | Event::LinkUp { link, .. } => link_ok(*link).map(|_| ()),
            Event::NodeCrash { node } | Event::NodeRestart { node } => node_ok(*node),
            Event::SetLoss { link, from, loss } => {
                if !(0.0..=1.0).contains(loss) {
                    return Err(SimError::InvalidLoss { loss: *loss });
                }
                end_ok(*link, *from)
            }
            Event::SetLatency { link, from, .. } => end_ok(*link, *from),
            Event::Partition { links } => links.iter().try_for_each(|l| link_ok(*l).map(|_| ())),
            Event::Heal => Ok(()),
        }
    }

    /// Schedules `event` at `at` (events at the same time run in the order scheduled).
    pub fn schedule(&mut self, at: Instant, event: Event) -> Result<(), SimError> {
        self.check(&event)?;
        if at.as_micros() < self.now {
            return Err(SimError::InThePast {
                at,
                now: self.now(),
            });
        }
        let index = u32::try_from(self.scripted.len()).unwrap_or(u32::MAX);
        self.scripted.push(Some(event));
        self.queue.push(at.as_micros(), Kind::Scripted, index, 0);
        Ok(())
    }

    /// Applies `event` now (starting the nodes first if they have not been).
    pub fn apply(&mut self, event: Event) -> Result<(), SimError> {
        self.check(&event)?;
        self.ensure_started();
        self.apply_checked(event);
        Ok(())
    }

    /// Runs every event up to and including `end`, then sets the clock to `end`.
    pub fn run_until(&mut self, end: Instant) {
        let wall = std::time::Instant::now();
        self.ensure_started();
        let end = end.as_micros();
        while self.queue.peek_time().is_some_and(|at| at <= end) {
            self.process_next();
        }
        if end != u64::MAX {
            self.now = self.now.max(end);
        }
        self.counters.wall += wall.elapsed();
    }

    /// Runs for `d` of virtual time from now.
    pub fn run_for(&mut self, d: Duration) {
        self.run_until(self.now() + d);
    }

    /// Runs the next event, if there is one, and returns its time.
    pub fn step(&mut self) -> Option<Instant> {
        let wall = std::time::Instant::now();
        self.ensure_started();
        let at = self.queue.peek_time()?;
        self.process_next();
        self.counters.wall += wall.elapsed();
        Some(Instant::from_micros(at))
    }

    #[inline]
    fn record(&mut self, kind: TraceKind, a: u32, b: u32, len: u32) {
        self.trace.record(TraceRecord {
            at: Instant::from_micros(self.now),
            kind,
            a,
            b,
            len,
        });
    }

    fn ensure_started(&mut self) {
        if self.started {
            return;
        }
        self.started = true;
        for ix in 0..self.nodes.len() as NodeIx {
            self.boot(ix);
        }
    }

    /// `start`, then `link_up` for each link whose carrier is up.
    fn boot(&mut self, ix: NodeIx) {
        let now = self.now();
        self.record(TraceKind::Start, ix, 0, 0);
        self.call(ix, |n, out| n.start(now, out));
        for p in self.port_range(ix) {
            let (neighbor, link) = (self.ports[p].neighbor, self.ports[p].link);
            if self.links[link as usize].status.carrier {
                self.call(ix, |n, out| n.link_up(now, neighbor, out));
            }
        }
    }

    /// Calls `f` on a live node from outside the event loop, at the current time, as an
    /// operator or a local controller would (e.g. a self-healing loop changing the node's
    /// routing restrictions): the node's wake-up is rescheduled and what it queued is sent, as
    /// after any callback. `None` if the node does not exist or is down.
    pub fn call_node<R>(
        &mut self,
        ix: NodeIx,
        f: impl FnOnce(&mut N, Instant, &mut Outbox) -> R,
    ) -> Option<R> {
        self.ensure_started();
        if !self.is_alive(ix) {
            return None;
        }
        let now = self.now();
        let mut result = None;
        self.call(ix, |n, out| result = Some(f(n, now, out)));
        result
    }

    /// Calls into a live node, then reschedules its wake-up and sends what it queued.
    #[inline]
    fn call(&mut self, ix: NodeIx, f: impl FnOnce(&mut N, &mut Outbox)) {
        let Some(slot) = self.nodes.get_mut(ix as usize) else {
            return;
        };
        let Some(node) = slot.node.as_mut() else {
            return;
        };
        slot.callbacks += 1;
        f(node, &mut self.outbox);
        let next = node
            .next_timeout()
            .map_or(NO_WAKE, |t| t.as_micros().max(self.now));
        if next != slot.wake_at {
            slot.wake_gen = slot.wake_gen.wrapping_add(1);
            slot.wake_at = next;
            if next != NO_WAKE {
                self.queue.push(next, Kind::Wake, ix, slot.wake_gen);
            }
        }
        if !self.outbox.sends.is_empty() {
            let mut sends = std::mem::take(&mut self.outbox.sends);
            for (to, buf) in sends.drain(..) {
                self.transmit(ix, to, buf);
            }
            self.outbox.sends = sends;
        }
    }

    fn drop_datagram(
        &mut self,
        reason: DropReason,
        port: Option<u32>,
        from: NodeIx,
        to: NodeIx,
        buf: Vec<u8>,
    ) {
        self.counters.drops.add(reason);
        if let Some(d) = port.and_then(|p| self.port_drops.get_mut(p as usize)) {
            d.drops.add(reason);
            d.bytes += buf.len() as u64;
        }
        let len = u32::try_from(buf.len()).unwrap_or(u32::MAX);
        self.record(TraceKind::Drop(reason), from, to, len);
        self.outbox.recycle(buf);
    }

    #[inline]
    fn transmit(&mut self, from: NodeIx, to: NodeIx, buf: Vec<u8>) {
        let len = buf.len();
        let t = &mut self.nodes[from as usize].traffic;
        t.sent_datagrams += 1;
        t.sent_bytes += len as u64;
        let Some(p) = self.port_of(from, to) else {
            self.drop_datagram(DropReason::NoLink, None, from, to, buf);
            return;
        };
        let port = &mut self.ports[p as usize];
        port.sent_datagrams += 1;
        port.sent_bytes += len as u64;
        let outcome = if port.passing {
            let queue = &mut self.port_queue[p as usize];
            match port.dir.transmit(self.now, len, queue, &mut self.rng) {
                Transmit::Arrives(at) => Ok(at),
                Transmit::QueueFull => Err(DropReason::Queue),
                Transmit::Lost => Err(DropReason::Loss),
            }
        } else {
            Err(DropReason::LinkDown)
        };
        match outcome {
            Ok(at) => {
                let flight = InFlight {
                    buf,
                    port: p,
                    from,
                    to,
                    epochs: self.port_epochs[p as usize],
                    bumps: self.epoch_bumps,
                };
                let slot = match self.free_slots.pop() {
                    Some(s) => {
                        self.in_flight[s as usize] = flight;
                        s
                    }
                    None => {
                        self.in_flight.push(flight);
                        (self.in_flight.len() - 1) as u32
                    }
                };
                self.queue.push(at, Kind::Arrive, slot, 0);
            }
            Err(reason) => self.drop_datagram(reason, Some(p), from, to, buf),
        }
    }

    fn process_next(&mut self) {
        let Some(entry) = self.queue.pop() else {
            return;
        };
        self.now = self.now.max(entry.at);
        self.counters.events += 1;
        match entry.kind() {
            Kind::Wake => {
                let (node, generation) = (entry.a, entry.b);
                let Some(slot) = self.nodes.get_mut(node as usize) else {
                    return;
                };
                if slot.wake_gen != generation || slot.node.is_none() {
                    return;
                }
                slot.wake_at = NO_WAKE;
                self.counters.timeouts += 1;
                self.record(TraceKind::Timeout, node, 0, 0);
                let now = self.now();
                self.call(node, |n, out| n.timeout(now, out));
            }
            Kind::Arrive => self.arrive(entry.a),
            Kind::Scripted => {
                if let Some(event) = self
                    .scripted
                    .get_mut(entry.a as usize)
                    .and_then(Option::take)
                {
                    self.apply_checked(event);
                }
            }
        }
    }

    #[inline]
    fn arrive(&mut self, slot: u32) {
        let Some(f) = self.in_flight.get_mut(slot as usize) else {
            return;
        };
        let buf = std::mem::take(&mut f.buf);
        let (p, from, to, sent) = (f.port, f.from, f.to, f.epochs);
        let unchanged = f.bumps == self.epoch_bumps;
        self.free_slots.push(slot);
        if !unchanged {
            let now_epochs = self.port_epochs[p as usize];
            if now_epochs.link != sent.link {
                self.drop_datagram(DropReason::LinkDown, Some(p), from, to, buf);
                return;
            }
            if now_epochs.peer != sent.peer {
                self.drop_datagram(DropReason::NodeDown, Some(p), from, to, buf);
                return;
            }
        }
        let len = buf.len();
        let slot = &mut self.nodes[to as usize];
        if slot.node.is_none() {
            self.drop_datagram(DropReason::NodeDown, Some(p), from, to, buf);
            return;
        }
        slot.traffic.received_datagrams += 1;
        slot.traffic.received_bytes += len as u64;
        self.counters.delivered += 1;
        self.record(
            TraceKind::Deliver,
            from,
            to,
            u32::try_from(len).unwrap_or(u32::MAX),
        );
        let now = self.now();
        self.call(to, |n, out| n.datagram(now, from, &buf, out));
        self.outbox.recycle(buf);
    }

    fn notify_ends(&mut self, link: LinkIx, up: bool) {
        let now = self.now();
        let [a, b] = self.links[link as usize].ends;
        for (me, other) in [(a, b), (b, a)] {
            if up {
                self.call(me, |n, out| n.link_up(now, other, out));
            } else {
                self.call(me, |n, out| n.link_down(now, other, out));
            }
        }
    }

    /// Copies a link's passing state to its ports, cutting what is in flight if it stopped.
    fn sync_ports(&mut self, link: LinkIx) {
        let l = &self.links[link as usize];
        let passing = l.status.passing();
        for p in l.ports {
            let port = &mut self.ports[p as usize];
            if port.passing && !passing {
                let e = &mut self.port_epochs[p as usize];
                e.link = e.link.wrapping_add(1);
                self.epoch_bumps += 1;
                port.dir.reset(&mut self.port_queue[p as usize]);
            }
            port.passing = passing;
        }
    }

    /// Datagrams on their way to `node` will not be delivered to its next life.
    fn end_life(&mut self, node: NodeIx) {
        for p in self.port_range(node) {
            let link = self.ports[p].link as usize;
            let [a_port, b_port] = self.links[link].ports;
            let towards = if a_port as usize == p { b_port } else { a_port };
            let e = &mut self.port_epochs[towards as usize];
            e.peer = e.peer.wrapping_add(1);
            self.epoch_bumps += 1;
        }
        if let Some(slot) = self.nodes.get_mut(node as usize) {
            slot.incarnation = slot.incarnation.wrapping_add(1);
        }
    }

    fn crash(&mut self, node: NodeIx) {
        if let Some(slot) = self.nodes.get_mut(node as usize) {
            slot.node = None;
            slot.wake_gen = slot.wake_gen.wrapping_add(1);
            slot.wake_at = NO_WAKE;
        }
        self.end_life(node);
    }

    fn directions(&self, link: LinkIx, from: Option<NodeIx>) -> impl Iterator<Item = u32> + use<N> {
        let l = &self.links[link as usize];
        let ports = l.ports;
        let ends = l.ends;
        (0..2)
            .filter(move |&d| from.is_none_or(|f| ends[d] == f))
            .map(move |d| ports[d])
    }

    fn apply_checked(&mut self, event: Event) {
        match event {
            Event::LinkDown { link, visible } => {
                self.record(TraceKind::LinkDown, link, u32::from(visible), 0);
                let l = &mut self.links[link as usize];
                let lost_carrier = visible && l.status.carrier;
                if visible {
                    l.status.carrier = false;
                } else {
                    l.status.silent_down = true;
                }
                self.sync_ports(link);
                if lost_carrier {
                    self.notify_ends(link, false);
                }
            }
            Event::LinkUp { link, visible } => {
                self.record(TraceKind::LinkUp, link, u32::from(visible), 0);
                let l = &mut self.links[link as usize];
                l.status.silent_down = false;
                let gained_carrier = visible && !l.status.carrier;
                if visible {
                    l.status.carrier = true;
                }
                self.sync_ports(link);
                if gained_carrier {
                    self.notify_ends(link, true);
                }
            }
            Event::NodeCrash { node } => {
                self.record(TraceKind::NodeCrash, node, 0, 0);
                if self.is_alive(node) {
                    self.crash(node);
                }
            }
            Event::NodeRestart { node } => {
                self.record(TraceKind::NodeRestart, node, 0, 0);
                if self.is_alive(node) {
                    self.crash(node);
                }
                // A new life: what was sent to the crashed node is not for this one.
                self.end_life(node);
                let fresh = (self.factory)(node);
                if let Some(slot) = self.nodes.get_mut(node as usize) {
                    slot.node = Some(fresh);
                }
                self.boot(node);
            }
            Event::SetLoss { link, from, loss } => {
                self.record(TraceKind::SetLoss, link, 0, 0);
                for p in self.directions(link, from) {
                    self.ports[p as usize].dir.set_loss(loss);
                }
            }
            Event::SetLatency {
                link,
                from,
                latency,
                jitter,
            } => {
                self.record(TraceKind::SetLatency, link, 0, 0);
                for p in self.directions(link, from) {
                    self.ports[p as usize].dir.set_latency(latency, jitter);
                }
            }
            Event::Partition { links } => {
                let count = u32::try_from(links.len()).unwrap_or(u32::MAX);
                self.record(TraceKind::Partition, 0, 0, count);
                for link in links {
                    self.links[link as usize].status.partitioned = true;
                    self.sync_ports(link);
                }
            }
            Event::Heal => {
                let mut healed = Vec::new();
                for (i, l) in self.links.iter_mut().enumerate() {
                    if l.status.partitioned {
                        l.status.partitioned = false;
                        healed.push(i as LinkIx);
                    }
                }
                let count = u32::try_from(healed.len()).unwrap_or(u32::MAX);
                self.record(TraceKind::Heal, 0, 0, count);
                for link in healed {
                    self.sync_ports(link);
                }
            }
        }
    }
}
