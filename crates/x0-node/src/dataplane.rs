//! The data plane in the daemon: TUN device, data socket, forwarding.
//!
//! The sans-IO pieces (frames, channels, the end-to-end handshake) are `x0-dataplane`; this is
//! their shell:
//!
//! * **TUN** (`tun.name`, default `x0t0`) carries the node's overlay address with the mesh's /48
//!   routed into it. A packet read from it is mapped to its destination node (by overlay
//!   address, from the link-state database), sealed end to end for that node (its session is
//!   set up on first use, with a TLS 1.3 handshake over the overlay), given an overlay header,
//!   sealed for the next hop's link and sent on the **data socket** (raw UDP).
//! * **Links.** When a link comes up each end picks a receiver index, derives the link keys
//!   from the link's TLS exporter, and announces `{port, index}` on the control stream
//!   ([`x0_wire::DataChannel`]). A link key is replaced every 120 s by the next generation
//!   exported from the same session; the receiver derives it when the first frame under it
//!   arrives, so a link rekey costs no message.
//! * **Relays** open the link layer, check the overlay header (hop limit, explicit path), and
//!   re-seal for the next hop in the same buffer. They never hold end-to-end keys.
//! * **Delivery**: the end-to-end layer is opened, the inner packet's addresses are checked
//!   against the overlay source and us (a node may only send from its own address), and the
//!   packet is written to the TUN device.
//!
//! Everything dropped is counted by reason ([`Counters`]); unknown destinations and packets
//! over the overlay MTU are answered with ICMPv6 errors to the local sender.
//!
//! **Batching** ([`crate::dataio`]): with `dataplane.offload` (the default) the TUN device
//! hands over a fast TCP flow's 64 KB segments, split here into MTU-sized packets; their link
//! frames leave in one `sendmsg` with UDP GSO, arrive in one `recvmsg` with UDP GRO, and are
//! written back to TUN coalesced. The state's mutex is taken once per batch, not per packet,
//! and every buffer is allocated once per thread.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use std::net::UdpSocket;
use tracing::{debug, info, warn};
use tun_rs::SyncDevice;
use x0_dataplane::aead::TrafficSecret;
use x0_dataplane::buf::{HEADROOM, TAILROOM};
use x0_dataplane::e2e::{LINK_EXPORTER_LABEL, TlsRole, export_secrets};
use x0_dataplane::frame::{
    ExplicitPath, Forward, LinkHeader, direct_overlay, forward_in_place, is_direct_frame,
    open_link, prepend_direct, seal_link, strip_direct,
};
use x0_dataplane::packet::{self, Icmpv4Error, Icmpv6Error, IpHeader};
use x0_dataplane::{
    Channel, E2eConfig, E2eEvent, E2eSession, HandshakeOutcome, Limits, OpenError, OverlayHeader,
    OverlayKind, PacketBuf, SessionLimits, SessionTable,
};
use x0_identity::{Ipv4Overlay, MeshPrefix, NodeId};
use x0_wire::DataChannel;

use crate::daemon::lock;
use crate::dataio::{
    MAX_DATAGRAM, TunRx, TunTx, UdpIo, UdpRx, UdpTx, tun_error_is_fatal, tun_write_one,
};
use crate::routing::{RouteTable, Routing};
use crate::shed::{ShedLimit, Shedder};

mod probe;

/// Packets held per destination while its end-to-end session is being set up.
const MAX_QUEUED: usize = 64;
/// Largest packet handled.
const MAX_PACKET: usize = MAX_DATAGRAM;
/// The ICMP errors the data plane sends to local senders.
#[derive(Debug, Clone, Copy)]
enum Unreachable {
    /// No route to the destination node.
    NoRoute,
    /// The packet is over the overlay MTU.
    TooBig,
}

/// Balanced mode leaves out paths that cost more than this many times the cheapest.
const BALANCED_MAX_COST_RATIO: u64 = 8;
/// How long a request for a destination's alternate paths may go unanswered before it is
/// sent again (the routing task's bounded queue may have dropped it).
const ALTERNATE_RETRY: Duration = Duration::from_secs(1);
/// Frames read from the data socket before what they produced is flushed.
const RX_BUDGET: usize = 128;
/// Packets the kernel queues for us on the TUN device (its default, 500, drops bursts of a
/// fast TCP flow while the reader is busy; every drop is a loss TCP backs off from).
const TUN_TX_QUEUE: u32 = 4096;
/// How often session timers are checked.
const TICK: Duration = Duration::from_millis(20);

/// Drop and traffic counters.
#[derive(Debug, Default, Clone)]
pub(crate) struct Counters {
    /// Packets read from TUN and sent into the mesh.
    pub tun_packets_sent: u64,
    /// Packets delivered to TUN.
    pub delivered: u64,
    /// Frames relayed for others.
    pub relayed: u64,
    /// Packets sent twice, over disjoint paths (redundant mode).
    pub redundant_sent: u64,
    /// Second copies of redundant packets, discarded at the receiver.
    pub redundant_duplicates: u64,
    /// Packets sent on a path other than the primary (balanced mode).
    pub balanced_alternate: u64,
    /// Bytes (inner packets) read from TUN and sent into the mesh.
    pub tun_bytes_sent: u64,
    /// Bytes (inner packets) handed to the TUN device or application socket.
    pub delivered_bytes: u64,
    /// Bytes (link frames) relayed for others.
    pub relayed_bytes: u64,
    /// Link send keys replaced by the next exported generation.
    pub link_rekeys: u64,
    /// End-to-end sessions with keys in place (a gauge, at the time of the snapshot).
    pub e2e_sessions_active: u64,
    /// End-to-end handshakes completed (the first of a session and every rekey).
    pub e2e_handshakes_completed: u64,
    /// End-to-end handshakes failed.
    pub e2e_handshakes_failed: u64,
    /// End-to-end rekeys: handshakes completed beyond each session's first.
    pub e2e_rekeys: u64,
    /// The end-to-end session table: gauges, refusals, evictions, expiries, handshake totals.
    pub e2e_table: x0_dataplane::SessionTableStats,
    /// End-to-end path probes sent for the self-healing loop.
    pub probes_sent: u64,
    /// Probes of other nodes answered.
    pub probes_answered: u64,
    /// Answers to our probes received.
    pub probe_replies: u64,
    /// Drops by reason.
    pub drops: HashMap<&'static str, u64>,
    /// Bytes of authenticated link frames received, per neighbour (since start).
    pub rx_link_bytes: HashMap<NodeId, u64>,
    /// Transit frames dropped by load shedding, per neighbour (at the time of the snapshot).
    pub shed_dropped: HashMap<NodeId, u64>,
}

impl Counters {
    fn drop(&mut self, reason: &'static str) {
        self.drop_n(reason, 1);
    }

    fn drop_n(&mut self, reason: &'static str, n: u64) {
        if n > 0 {
            *self.drops.entry(reason).or_default() += n;
        }
    }
}

/// What one packet thread has queued for sending, and its scratch space.
#[derive(Debug, Default)]
struct Out {
    udp: UdpTx,
    tun: TunTx,
    /// A second buffer, for the copy of a redundant packet.
    scratch: Vec<u8>,
}

impl Out {
    /// Sends everything queued; returns the counts to add: (delivered, tun write failures,
    /// send failures).
    fn flush(&mut self, udp: &UdpIo, tun: Option<&SyncDevice>) -> (u64, u64, u64) {
        self.udp.flush(udp);
        if let Some(tun) = tun {
            self.tun.flush(tun);
        }
        let (written, failed) = self.tun.take_counts();
        (written, failed, self.udp.take_failed())
    }
}

/// One neighbour's data channel.
struct LinkChan {
    conn: quinn::Connection,
    role: TlsRole,
    channel: Channel,
    /// Send-key generation (exported from the link session).
    tx_generation: u64,
    /// Highest receive-key generation installed.
    rx_generation: u64,
    /// Whether a frame went out under the current send generation (the neighbour derives a
    /// generation only from the one before it, when a frame under it arrives, so a rekey must
    /// not skip one that was never used).
    tx_used: bool,
    /// Our receiver index.
    index: u32,
    /// Where the neighbour receives data frames, once announced.
    peer: Option<(SocketAddr, u32)>,
}

impl LinkChan {
    /// Installs the next send-key generation exported from the link's session.
    fn next_send_generation(&mut self, now: Duration) -> Result<u64, String> {
        let generation = self.tx_generation + 1;
        install_generation(
            &mut self.channel,
            &self.conn,
            self.role,
            generation,
            now,
            Install::Send,
        )?;
        self.tx_generation = generation;
        self.tx_used = false;
        Ok(generation)
    }
}

struct Session {
    e2e: E2eSession,
    queue: VecDeque<Vec<u8>>,
    /// Sequence number of the next redundant packet.
    redundant_seq: u32,
    /// When the routing task was last asked for this peer's alternate paths (the request can
    /// be dropped when the routing task's queue is full: it is asked again after
    /// [`ALTERNATE_RETRY`] while the paths have not come).
    alternate_asked: Option<Duration>,
    /// Whether a second copy of a redundant packet from this peer was seen (logged once).
    redundant_seen: bool,
    /// When data was last sent to this peer.
    last_data: Option<Duration>,
    /// Lengths of the packets recently sent to this peer (probes are padded to one of them).
    sizes: x0_dataplane::control::SizeProfile,
}

impl Session {
    /// Whether to ask the routing task (again) for this peer's alternate paths at `now`.
    fn ask_alternate(&mut self, now: Duration) -> bool {
        let due = self
            .alternate_asked
            .is_none_or(|at| now.saturating_sub(at) >= ALTERNATE_RETRY);
        if due {
            self.alternate_asked = Some(now);
        }
        due
    }

    fn new(e2e: E2eSession) -> Self {
        Self {
            e2e,
            queue: VecDeque::new(),
            redundant_seq: 0,
            alternate_asked: None,
            redundant_seen: false,
            last_data: None,
            sizes: Default::default(),
        }
    }
}

impl std::borrow::Borrow<E2eSession> for Session {
    fn borrow(&self) -> &E2eSession {
        &self.e2e
    }
}

impl std::borrow::BorrowMut<E2eSession> for Session {
    fn borrow_mut(&mut self) -> &mut E2eSession {
        &mut self.e2e
    }
}

struct State {
    links: HashMap<NodeId, LinkChan>,
    link_by_index: HashMap<u32, NodeId>,
    sessions: SessionTable<Session>,
    /// Next link receiver index.
    next_index: u32,
    /// Overlay address → node, rebuilt when the routing table changes.
    addresses: HashMap<Ipv6Addr, NodeId>,
    /// IPv4 overlay address → node (`None`: two nodes derive this address), rebuilt with it.
    addresses4: HashMap<Ipv4Addr, Option<NodeId>>,
    addresses_of: Option<Arc<RouteTable>>,
    counters: Counters,
    probes: probe::ProbeBook,
    /// Transit meters and load-shedding limits per neighbour.
    shed: Shedder,
}

/// The data plane of one daemon.
pub(crate) struct DataPlane {
    me: NodeId,
    my_address: Ipv6Addr,
    prefix: MeshPrefix,
    /// The IPv4 overlay range and our address in it.
    ipv4: Option<(Ipv4Overlay, Ipv4Addr)>,
    mtu: usize,
    redundant_dscp: [bool; 64],
    redundant_ports: Vec<u16>,
    redundant_prefixes: Vec<(IpAddr, u8)>,
    balanced: bool,
    /// Key of the flow hash (balanced mode), fixed per node.
    flow_key: u64,
    udp: UdpIo,
    tun: Option<SyncDevice>,
    app: Option<AppPort>,
    routing: Routing,
    started: std::time::Instant,
    state: Mutex<State>,
    faults: Option<Arc<crate::fault::FaultSet>>,
}

impl std::fmt::Debug for DataPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataPlane")
            .field("me", &self.me)
            .field("my_address", &self.my_address)
            .finish_non_exhaustive()
    }
}

/// How the data plane is set up.
#[derive(Debug, Clone)]
pub(crate) struct DataPlaneConfig {
    /// Open a TUN device (otherwise the node only relays).
    pub tun: bool,
    /// Its name.
    pub tun_name: String,
    /// The overlay MTU.
    pub mtu: u16,
    /// Address of the data socket.
    pub bind: SocketAddr,
    /// DSCP values whose packets are sent redundantly over two disjoint paths.
    pub redundant_dscp: Vec<u8>,
    /// Ports (source or destination, UDP or TCP) whose packets are sent redundantly.
    pub redundant_ports: Vec<u16>,
    /// Destination prefixes whose packets are sent redundantly.
    pub redundant_prefixes: Vec<(IpAddr, u8)>,
    /// TUN offload and UDP GSO/GRO.
    pub offload: bool,
    /// Balanced mode: flows spread over the k disjoint paths.
    pub balanced: bool,
    /// The IPv4 overlay range, if any.
    pub ipv4: Option<Ipv4Overlay>,
    /// Userspace mode: a loopback UDP socket carrying raw IP packets in place of the TUN
    /// device (with `tun` off).
    pub app_socket: Option<SocketAddr>,
    /// Fault injection (dangerous): impairs the data socket's sends and black-holes transit.
    pub faults: Option<Arc<crate::fault::FaultSet>>,
}

/// Userspace mode's packet port: raw IP packets in UDP datagrams on a local socket, in place of
/// the TUN device. A datagram received is a packet from the application; packets for it go to
/// the address that last sent one (an empty datagram registers without sending a packet).
#[derive(Debug)]
struct AppPort {
    socket: UdpSocket,
    peer: Mutex<Option<SocketAddr>>,
}

impl AppPort {
    fn send(&self, packet: &[u8]) -> bool {
        let peer = *lock(&self.peer);
        peer.is_some_and(|p| self.socket.send_to(packet, p).is_ok())
    }
}

impl DataPlane {
    /// Binds the data socket, opens the TUN device, and starts the loops.
    pub(crate) fn start(
        cfg: &DataPlaneConfig,
        me: NodeId,
        prefix: MeshPrefix,
        routing: Routing,
        e2e: E2eConfig,
    ) -> Result<Arc<Self>, String> {
        let my_address = prefix.address_of(me);
        let sessions = SessionTable::new(Arc::new(e2e), me, SessionLimits::default())
            .map_err(|e| format!("cannot set up end-to-end sessions: {e}"))?;
        let ipv4 = cfg.ipv4.map(|r| (r, r.address_of(me)));
        let socket = UdpSocket::bind(cfg.bind)
            .map_err(|e| format!("cannot bind the data socket on {}: {e}", cfg.bind))?;
        let (rcv, snd) = grow_socket_buffers(&socket);
        debug!(rcvbuf = rcv, sndbuf = snd, "data socket buffers");
        let tun = if cfg.tun {
            let mut builder = tun_rs::DeviceBuilder::new()
                .name(&cfg.tun_name)
                .ipv6(my_address, 48u8);
            if let Some((range, addr)) = ipv4 {
                builder = builder.ipv4(addr, range.prefix_len(), None);
            }
            let dev = builder
                .mtu(cfg.mtu)
                .tx_queue_len(TUN_TX_QUEUE)
                .offload(cfg.offload)
                .build_sync()
                .map_err(|e| {
                    format!(
                        "cannot open the TUN device {:?}: {e} (needs CAP_NET_ADMIN, /dev/net/tun \
                         and a name no other daemon holds, `dataplane.tun_name`; or \
                         `dataplane.tun = false` to run without it, as a relay only)",
                        cfg.tun_name
                    )
                })?;
            Some(dev)
        } else {
            None
        };
        let app = match cfg.app_socket.filter(|_| !cfg.tun) {
            Some(addr) => {
                let socket = UdpSocket::bind(addr)
                    .map_err(|e| format!("cannot bind the application socket on {addr}: {e}"))?;
                Some(AppPort {
                    socket,
                    peer: Mutex::new(None),
                })
            }
            None => None,
        };
        let dp = Arc::new(Self {
            me,
            my_address,
            prefix,
            ipv4,
            mtu: usize::from(cfg.mtu),
            redundant_dscp: {
                let mut set = [false; 64];
                for &d in &cfg.redundant_dscp {
                    if let Some(slot) = set.get_mut(usize::from(d)) {
                        *slot = true;
                    }
                }
                set
            },
            redundant_ports: cfg.redundant_ports.clone(),
            redundant_prefixes: cfg.redundant_prefixes.clone(),
            balanced: cfg.balanced,
            flow_key: {
                let mut k = [0u8; 8];
                k.copy_from_slice(&me.as_bytes()[..8]);
                u64::from_le_bytes(k)
            },
            udp: UdpIo::new(socket, cfg.offload)
                .impaired(cfg.faults.clone().map(|f| f as _))
                .map_err(|e| format!("cannot set up fault injection on the data socket: {e}"))?,
            faults: cfg.faults.clone(),
            tun,
            app,
            routing,
            started: std::time::Instant::now(),
            state: Mutex::new(State {
                links: HashMap::new(),
                link_by_index: HashMap::new(),
                sessions,
                next_index: 1,
                addresses: HashMap::new(),
                addresses4: HashMap::new(),
                addresses_of: None,
                counters: Counters::default(),
                probes: probe::ProbeBook::default(),
                shed: Shedder::default(),
            }),
        });
        info!(
            data = %dp.udp.socket().local_addr().map(|a| a.to_string()).unwrap_or_default(),
            tun = ?cfg.tun.then_some(&cfg.tun_name),
            app = ?dp.app.as_ref().and_then(|a| a.socket.local_addr().ok()),
            address = %my_address,
            ipv4 = ?ipv4.map(|(_, a)| a),
            mtu = cfg.mtu,
            tun_offload = dp.tun.as_ref().is_some_and(|t| t.tcp_gso()),
            udp_gso = dp.udp.gso(),
            udp_gro = dp.udp.gro(),
            "data plane up"
        );
        // The packet loops are plain threads with blocking I/O: a task wake-up per packet
        // cost more than the packet's cryptography.
        let udp = dp.clone();
        std::thread::Builder::new()
            .name("x0t-data-rx".into())
            .spawn(move || udp.udp_loop())
            .map_err(|e| format!("cannot start the data thread: {e}"))?;
        if dp.app.is_some() {
            let app = dp.clone();
            std::thread::Builder::new()
                .name("x0t-app-rx".into())
                .spawn(move || app.app_loop())
                .map_err(|e| format!("cannot start the application socket thread: {e}"))?;
        }
        if dp.tun.is_some() {
            let tun = dp.clone();
            std::thread::Builder::new()
                .name("x0t-tun-rx".into())
                .spawn(move || tun.tun_loop())
                .map_err(|e| format!("cannot start the TUN thread: {e}"))?;
        }
        tokio::spawn(dp.clone().timer_loop());
        Ok(dp)
    }

    /// The data socket's port.
    pub(crate) fn port(&self) -> u16 {
        self.udp
            .socket()
            .local_addr()
            .map(|a| a.port())
            .unwrap_or(0)
    }

    /// Counters so far.
    pub(crate) fn counters(&self) -> Counters {
        let st = lock(&self.state);
        let mut c = st.counters.clone();
        c.shed_dropped = st.shed.shed_frames();
        let e2e = st.sessions.stats();
        c.e2e_sessions_active = e2e.established;
        c.e2e_handshakes_completed = e2e.handshakes.completed;
        c.e2e_handshakes_failed = e2e.handshakes.failed;
        c.e2e_rekeys = e2e.handshakes.rekeys;
        c.e2e_table = e2e;
        c
    }

    fn now(&self) -> Duration {
        self.started.elapsed()
    }

    /// A link came up: derive its keys and return what to announce to the neighbour.
    pub(crate) fn attach(
        &self,
        peer: NodeId,
        conn: &quinn::Connection,
        dialer: bool,
    ) -> DataChannel {
        let role = if dialer {
            TlsRole::Client
        } else {
            TlsRole::Server
        };
        let now = self.now();
        let mut st = lock(&self.state);
        if let Some(old) = st.links.remove(&peer) {
            st.link_by_index.remove(&old.index);
        }
        let index = st.next_index;
        st.next_index = st.next_index.wrapping_add(1).max(1);
        let mut channel = Channel::new(Limits::default());
        if let Err(e) = install_generation(&mut channel, conn, role, 0, now, Install::Both) {
            warn!(peer = %peer, "cannot derive the link's data keys: {e}");
        }
        st.link_by_index.insert(index, peer);
        st.links.insert(
            peer,
            LinkChan {
                conn: conn.clone(),
                role,
                channel,
                tx_generation: 0,
                rx_generation: 0,
                tx_used: false,
                index,
                peer: None,
            },
        );
        DataChannel {
            port: self.port(),
            receiver_index: index,
        }
    }

    /// The neighbour announced its data channel.
    pub(crate) fn peer_channel(&self, peer: NodeId, conn: &quinn::Connection, d: DataChannel) {
        let mut st = lock(&self.state);
        if let Some(l) = st.links.get_mut(&peer)
            && l.conn.stable_id() == conn.stable_id()
        {
            let addr = SocketAddr::new(conn.remote_address().ip(), d.port);
            debug!(peer = %peer, %addr, index = d.receiver_index, "data channel");
            if let Some(f) = &self.faults {
                f.learn(peer, addr);
            }
            l.peer = Some((addr, d.receiver_index));
        }
    }

    /// Replaces the send key of the link to `peer` with the next generation exported from the
    /// link's TLS session, now (the self-healing loop's rekey; the neighbour derives it from
    /// the first frame under it). Refused while the generation of the previous rekey has not
    /// carried a frame yet. Returns the new generation.
    pub(crate) fn rekey_link(&self, peer: NodeId) -> Result<u64, String> {
        let now = self.now();
        let mut guard = lock(&self.state);
        let st = &mut *guard;
        let link = st
            .links
            .get_mut(&peer)
            .ok_or("no data channel to this neighbour")?;
        if link.tx_generation > 0 && !link.tx_used {
            return Err(format!(
                "link key generation {} has carried no frame yet; the neighbour could not follow \
                 a second rekey",
                link.tx_generation
            ));
        }
        let generation = link.next_send_generation(now)?;
        st.counters.link_rekeys += 1;
        Ok(generation)
    }

    /// Limits the transit `peer` sends through us to `(1 − share)` of its recent rate (at
    /// least 1 Mbit/s; see [`crate::shed`]).
    pub(crate) fn shed_load(&self, peer: NodeId, share: f64) -> Result<ShedLimit, String> {
        let now = self.now();
        lock(&self.state).shed.shed(peer, share, now)
    }

    /// Lifts `peer`'s transit limit; false if there was none.
    pub(crate) fn restore_load(&self, peer: NodeId) -> bool {
        lock(&self.state).shed.restore(peer)
    }

    /// Transit limits in force.
    pub(crate) fn shed_limits(&self) -> Vec<ShedLimit> {
        lock(&self.state).shed.limits()
    }

    /// A link went away.
    pub(crate) fn detach(&self, peer: NodeId, conn: &quinn::Connection) {
        let mut st = lock(&self.state);
        if st
            .links
            .get(&peer)
            .is_some_and(|l| l.conn.stable_id() == conn.stable_id())
            && let Some(l) = st.links.remove(&peer)
        {
            st.link_by_index.remove(&l.index);
        }
    }

    // ---- TUN → mesh -----------------------------------------------------------------------

    fn tun_loop(self: Arc<Self>) {
        let Some(tun) = &self.tun else { return };
        let mut rx = TunRx::new(self.mtu);
        let mut out = Out::default();
        let mut errors = 0u32;
        loop {
            let count = match rx.recv(tun) {
                Ok(n) => {
                    errors = 0;
                    n
                }
                Err(e) if tun_error_is_fatal(&e) => {
                    warn!("TUN read failed: {e}; the data plane stops");
                    return;
                }
                Err(e) => {
                    // One packet the offload split refused (a bad virtio header, a segment
                    // over the buffer): count it and go on, without spinning on a bad state.
                    debug!("TUN read refused: {e}");
                    lock(&self.state).counters.drop("tun_malformed");
                    errors += 1;
                    if errors > 100 {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    continue;
                }
            };
            let table = self.routing.table();
            let now = self.now();
            {
                let mut st = lock(&self.state);
                for (buf, &n) in rx.bufs.iter_mut().zip(&rx.sizes).take(count) {
                    self.handle_tun_packet(&mut st, &table, buf, n, now, &mut out);
                }
            }
            self.flush(&mut out);
        }
    }

    /// Userspace mode: packets from the application socket, handled as if read from TUN.
    fn app_loop(self: Arc<Self>) {
        let Some(app) = &self.app else { return };
        let mut buf = vec![0u8; HEADROOM + MAX_PACKET + TAILROOM];
        let mut out = Out::default();
        loop {
            let (n, from) = match app
                .socket
                .recv_from(&mut buf[HEADROOM..HEADROOM + MAX_PACKET])
            {
                Ok(r) => r,
                Err(e) => {
                    debug!("application socket receive error: {e}");
                    std::thread::sleep(Duration::from_millis(1));
                    continue;
                }
            };
            *lock(&app.peer) = Some(from);
            if n == 0 {
                continue;
            }
            let table = self.routing.table();
            let now = self.now();
            {
                let mut st = lock(&self.state);
                self.handle_tun_packet(&mut st, &table, &mut buf, n, now, &mut out);
            }
            self.flush(&mut out);
        }
    }

    /// Sends what `out` holds and counts the outcome.
    fn flush(&self, out: &mut Out) {
        let (delivered, tun_failed, send_failed) = out.flush(&self.udp, self.tun.as_ref());
        if delivered + tun_failed + send_failed > 0 {
            let mut st = lock(&self.state);
            st.counters.delivered += delivered;
            st.counters.drop_n("tun_write", tun_failed);
            st.counters.drop_n("send_failed", send_failed);
        }
    }

    fn handle_tun_packet(
        &self,
        st: &mut State,
        table: &Arc<RouteTable>,
        buf: &mut [u8],
        n: usize,
        now: Duration,
        out: &mut Out,
    ) {
        let Some(packet) = buf.get(HEADROOM..HEADROOM + n) else {
            return st.counters.drop("buffer");
        };
        let header = match packet::parse(packet) {
            Ok(h) => h,
            Err(_) => return st.counters.drop("tun_malformed"),
        };
        // The kernel's own link-local traffic on the device (router solicitations, MLD) is not
        // for the mesh: counted apart from packets that claim another node's address.
        let Some(mine) = self.own_address(header.dst) else {
            return st
                .counters
                .drop(if header.dst.is_ipv4() && self.ipv4.is_none() {
                    "tun_ipv4"
                } else {
                    "tun_not_overlay"
                });
        };
        if header.src != mine {
            return st.counters.drop("tun_foreign_source");
        }
        if n > self.mtu {
            self.icmp_to_tun(Unreachable::TooBig, packet);
            return st.counters.drop("tun_too_big");
        }
        let node = match header.dst {
            IpAddr::V6(dst) => st.address(table, &self.prefix, self.ipv4, dst),
            IpAddr::V4(dst) => st.address4(table, &self.prefix, self.ipv4, dst),
        };
        let Some(node) = node.filter(|n| table.routes.contains_key(n)) else {
            st.counters.drop("no_route");
            return self.icmp_to_tun(Unreachable::NoRoute, packet);
        };
        let Ok(session) = st.sessions.get_or_insert_with(now, node, Session::new) else {
            return st.counters.drop("e2e_session_refused");
        };
        if !session.e2e.is_established() {
            let queued = session.queue.len() < MAX_QUEUED;
            if queued {
                session.queue.push_back(packet.to_vec());
            }
            if !session.e2e.is_handshaking()
                && let Err(e) = session.e2e.initiate(now)
            {
                debug!(dst = %node, "cannot start the end-to-end handshake: {e}");
            }
            if !queued {
                st.counters.drop("e2e_queue_full");
            }
            self.flush_session(st, table, node, now, out);
            return;
        }
        let redundant = self.is_redundant(&header);
        let path = if self.balanced && !redundant {
            self.balanced_path(st, table, node, header.flow_hash(self.flow_key))
        } else {
            None
        };
        // Probes held for this destination go out beside this packet, before or after it.
        let (held, before) = self.held_for(st, node);
        if before {
            self.send_held_now(st, table, held, now, out);
            self.send_data(st, table, node, buf, n, now, redundant, path, out);
        } else {
            self.send_data(st, table, node, buf, n, now, redundant, path, out);
            self.send_held_now(st, table, held, now, out);
        }
    }

    /// Balanced mode: the path of the flow with hash `hash` to `node`, or `None` for the
    /// primary route. Flows are spread over the destination's disjoint paths by weighted
    /// rendezvous hashing, with weights inversely proportional to path cost (so a flow moves
    /// only when its path's weight changes a lot, not on every cost update); paths over
    /// [`BALANCED_MAX_COST_RATIO`] times the cheapest get none. While fast reroute holds, every
    /// flow takes the route.
    fn balanced_path<'t>(
        &self,
        st: &mut State,
        table: &'t RouteTable,
        node: NodeId,
        hash: u64,
    ) -> Option<&'t [NodeId]> {
        let Some(paths) = table.paths.get(&node) else {
            let now = self.now();
            if let Some(s) = st.sessions.get_mut(&node)
                && s.ask_alternate(now)
            {
                self.routing.want_alternate(node);
            }
            return None;
        };
        let route = table.routes.get(&node)?;
        if route.via_backup {
            return None;
        }
        let cheapest = paths.iter().map(|(_, c)| *c).min()?.max(1);
        let mut best: Option<(f64, &[NodeId])> = None;
        for (p, cost) in paths {
            let Some(&first) = p.get(1) else { continue };
            if *cost > cheapest.saturating_mul(BALANCED_MAX_COST_RATIO)
                || st.links.get(&first).is_none_or(|l| l.peer.is_none())
            {
                continue;
            }
            let score = rendezvous_score(hash, &first, 1.0 / (*cost).max(1) as f64);
            if best.is_none_or(|(b, _)| score > b) {
                best = Some((score, &p[1..]));
            }
        }
        let (_, path) = best?;
        if path.first() == Some(&route.next_hop) {
            return None;
        }
        st.counters.balanced_alternate += 1;
        Some(path)
    }

    /// Seals the packet at `buf[HEADROOM..HEADROOM + n]` for `node` and queues it, along
    /// `path` (node IDs after us) if given, else on the route; with `redundant`, also a second
    /// copy over a path node-disjoint from the first.
    #[allow(clippy::too_many_arguments)]
    fn send_data(
        &self,
        st: &mut State,
        table: &RouteTable,
        node: NodeId,
        buf: &mut [u8],
        n: usize,
        now: Duration,
        redundant: bool,
        path: Option<&[NodeId]>,
        out: &mut Out,
    ) {
        let mut overlay = match path {
            Some(p) => {
                let mut h = OverlayHeader::new(OverlayKind::Data, self.me, node);
                h.path = ExplicitPath::new(p, 0).ok();
                h
            }
            None => self.overlay_header(table, OverlayKind::Data, node),
        };
        let Ok(mut pb) = PacketBuf::at_headroom(buf, n) else {
            return st.counters.drop("buffer");
        };
        let Some(session) = st.sessions.get_mut(&node) else {
            return st.counters.drop("no_session");
        };
        session.last_data = Some(now);
        session.sizes.record(n);
        st.probes.sizes.record(n);
        if let Err(e) = session.e2e.seal(now, &overlay, &mut pb) {
            debug!(dst = %node, "end-to-end seal failed: {e}");
            return st.counters.drop("e2e_seal");
        }
        // The second copy: the same end-to-end payload (the receiver's replay window keeps
        // one), its own overlay header with an explicit path, its own link seal.
        let mut second_header = None;
        if redundant {
            let seq = session.redundant_seq;
            session.redundant_seq = seq.wrapping_add(1);
            overlay.redundant_seq = Some(seq);
            match table.alternates.get(&node) {
                Some(alt) if alt.len() > 1 => {
                    let mut second = OverlayHeader::new(OverlayKind::Data, self.me, node);
                    second.redundant_seq = Some(seq);
                    second.path = ExplicitPath::new(&alt[1..], 0).ok();
                    let len = pb.len();
                    out.scratch.clear();
                    out.scratch.resize(HEADROOM + len + TAILROOM, 0);
                    out.scratch[HEADROOM..HEADROOM + len].copy_from_slice(pb.data());
                    second_header = Some((second, len));
                }
                _ => {
                    if session.ask_alternate(now) {
                        self.routing.want_alternate(node);
                    }
                }
            }
        }
        let first = self.send_envelope(st, table, &overlay, &mut pb, now, &mut out.udp);
        let mut second = false;
        if let Some((h, len)) = second_header
            && let Ok(mut pb2) = PacketBuf::at_headroom(&mut out.scratch, len)
            && h.prepend_to(&mut pb2).is_ok()
        {
            second = self.send_link(st, table, &h, &mut pb2, now, &mut out.udp);
        }
        if first || second {
            st.counters.tun_packets_sent += 1;
            st.counters.tun_bytes_sent += n as u64;
        }
        if first && second {
            st.counters.redundant_sent += 1;
        }
    }

    /// Whether the packet belongs to a flow sent redundantly: its DSCP, one of its ports, or
    /// its destination is listed.
    fn is_redundant(&self, header: &IpHeader) -> bool {
        self.redundant_dscp
            .get(usize::from(header.dscp))
            .copied()
            .unwrap_or(false)
            || header
                .ports
                .is_some_and(|(s, d)| self.redundant_ports.iter().any(|p| *p == s || *p == d))
            || self
                .redundant_prefixes
                .iter()
                .any(|(net, len)| in_prefix(header.dst, *net, *len))
    }

    fn overlay_header(&self, table: &RouteTable, kind: OverlayKind, dst: NodeId) -> OverlayHeader {
        routed_header(self.me, table, kind, dst)
    }

    /// Sends the end-to-end envelope in `pb`, sealed for `overlay`, toward its destination:
    /// as a direct frame when the next hop is the destination and the frame carries no
    /// explicit path and no redundancy sequence (one AES pass instead of two), else behind
    /// its overlay header in a link frame.
    fn send_envelope(
        &self,
        st: &mut State,
        table: &RouteTable,
        overlay: &OverlayHeader,
        pb: &mut PacketBuf<'_>,
        now: Duration,
        tx: &mut UdpTx,
    ) -> bool {
        if goes_direct(overlay, table) {
            return self.send_direct(st, overlay.destination, pb, tx);
        }
        if overlay.prepend_to(pb).is_err() {
            st.counters.drop("buffer");
            return false;
        }
        self.send_link(st, table, overlay, pb, now, tx)
    }

    /// Queues the envelope in `pb` as a direct frame to the neighbour `dst`, its destination.
    fn send_direct(
        &self,
        st: &mut State,
        dst: NodeId,
        pb: &mut PacketBuf<'_>,
        tx: &mut UdpTx,
    ) -> bool {
        let Some((_, addr, index)) = ready_link(&mut st.links, &mut st.counters, dst) else {
            return false;
        };
        if prepend_direct(index, pb).is_err() {
            st.counters.drop("buffer");
            return false;
        }
        tx.push(&self.udp, addr, pb.data());
        true
    }

    /// Seals the overlay frame in `pb` for the next hop toward its destination and queues it.
    fn send_link(
        &self,
        st: &mut State,
        table: &RouteTable,
        overlay: &OverlayHeader,
        pb: &mut PacketBuf<'_>,
        now: Duration,
        tx: &mut UdpTx,
    ) -> bool {
        let next = match &overlay.path {
            Some(p) => p.next(),
            None => match table.routes.get(&overlay.destination) {
                Some(r) => r.next_hop,
                None => {
                    st.counters.drop("no_route");
                    return false;
                }
            },
        };
        self.seal_and_send(st, next, pb, now, tx)
    }

    /// Seals the frame in `pb` for the link to `next` and queues it on `tx`.
    fn seal_and_send(
        &self,
        st: &mut State,
        next: NodeId,
        pb: &mut PacketBuf<'_>,
        now: Duration,
        tx: &mut UdpTx,
    ) -> bool {
        let Some((link, addr, index)) = ready_link(&mut st.links, &mut st.counters, next) else {
            return false;
        };
        if link.channel.needs_rekey(now) {
            match link.next_send_generation(now) {
                Ok(_) => st.counters.link_rekeys += 1,
                Err(e) => debug!(peer = %next, "link rekey failed: {e}"),
            }
        }
        if let Err(e) = seal_link(&mut link.channel, now, index, pb) {
            debug!(peer = %next, "link seal failed: {e}");
            st.counters.drop("link_seal");
            return false;
        }
        link.tx_used = true;
        tx.push(&self.udp, addr, pb.data());
        true
    }

    /// Our overlay address of the family of `dst`, if `dst` is another node's overlay
    /// address (in the mesh's prefix, or in the IPv4 range when there is one).
    fn own_address(&self, dst: IpAddr) -> Option<IpAddr> {
        match dst {
            IpAddr::V6(d) => (self.prefix.contains(d) && d != self.my_address)
                .then_some(IpAddr::V6(self.my_address)),
            IpAddr::V4(d) => {
                let (range, mine) = self.ipv4?;
                (range.contains(d) && d != mine).then_some(IpAddr::V4(mine))
            }
        }
    }

    /// Whether `inner`, delivered from `source`, carries `source`'s overlay address and ours.
    fn inner_addresses_ok(&self, inner: &IpHeader, source: NodeId) -> bool {
        match (inner.src, inner.dst) {
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                s == self.prefix.address_of(source) && d == self.my_address
            }
            (IpAddr::V4(s), IpAddr::V4(d)) => self
                .ipv4
                .is_some_and(|(range, mine)| s == range.address_of(source) && d == mine),
            _ => false,
        }
    }

    /// Answers the local sender of `offending` with the ICMP error of its family.
    fn icmp_to_tun(&self, kind: Unreachable, offending: &[u8]) {
        if self.tun.is_none() && self.app.is_none() {
            return;
        }
        let mut reply = [0u8; 1280];
        let built = match (offending.first().map(|b| b >> 4), kind) {
            (Some(6), Unreachable::NoRoute) => {
                packet::icmpv6_error(Icmpv6Error::NoRoute, self.my_address, offending, &mut reply)
            }
            (Some(6), Unreachable::TooBig) => packet::icmpv6_error(
                Icmpv6Error::PacketTooBig {
                    mtu: self.mtu as u32,
                },
                self.my_address,
                offending,
                &mut reply,
            ),
            (Some(4), kind) => {
                // From the range's network address: the kernel drops (as martian) an ICMP
                // error that claims to come from one of its own addresses.
                let Some((range, _)) = self.ipv4 else { return };
                let kind = match kind {
                    Unreachable::NoRoute => Icmpv4Error::HostUnreachable,
                    Unreachable::TooBig => Icmpv4Error::FragmentationNeeded {
                        next_hop_mtu: u16::try_from(self.mtu).unwrap_or(u16::MAX),
                    },
                };
                packet::icmpv4_error(kind, range.network(), offending, &mut reply)
            }
            _ => return,
        };
        if let Ok(n) = built {
            if let Some(tun) = &self.tun {
                let _ = tun_write_one(tun, &reply[..n]);
            } else if let Some(app) = &self.app {
                app.send(&reply[..n]);
            }
        }
    }

    // ---- mesh → TUN / relay -----------------------------------------------------------------

    fn udp_loop(self: Arc<Self>) {
        let mut rx = UdpRx::default();
        let mut out = Out::default();
        loop {
            // Block for the first datagram, then take what else is queued (up to a budget)
            // before flushing, so that writes to TUN and relayed frames coalesce.
            let mut frames = 0;
            let mut wait = true;
            while frames < RX_BUDGET {
                let (n, segment) = match rx.recv(&self.udp, wait) {
                    Ok(Some(r)) => r,
                    Ok(None) => break,
                    Err(e) => {
                        debug!("data socket receive error: {e}");
                        if wait {
                            // Never spin on a persistent error.
                            std::thread::sleep(Duration::from_millis(1));
                        }
                        break;
                    }
                };
                wait = false;
                let now = self.now();
                let table = self.routing.table();
                let mut st = lock(&self.state);
                for frame in rx.buf[..n].chunks_mut(segment.max(1)) {
                    self.handle_frame(&mut st, &table, frame, now, &mut out);
                    frames += 1;
                }
            }
            self.flush(&mut out);
        }
    }

    /// Handles one link frame, which fills `frame`; relayed frames are re-sealed in place.
    fn handle_frame(
        &self,
        st: &mut State,
        table: &Arc<RouteTable>,
        frame: &mut [u8],
        now: Duration,
        out: &mut Out,
    ) {
        let n = frame.len();
        let Ok(mut pb) = PacketBuf::new(frame, 0..n) else {
            return st.counters.drop("buffer");
        };
        if pb.data().first().is_some_and(|&b| is_direct_frame(b)) {
            return self.handle_direct(st, table, &mut pb, now, out);
        }
        let Ok(header) = LinkHeader::decode(pb.data()) else {
            return st.counters.drop("link_malformed");
        };
        let Some(from_node) = st.link_by_index.get(&header.receiver_index).copied() else {
            return st.counters.drop("link_unknown_index");
        };
        let Some(link) = st.links.get_mut(&from_node) else {
            return st.counters.drop("link_unknown_index");
        };
        let epoch = header.epoch;
        // A frame under the next generation: derive it from the link session and retry.
        let next_gen = link.rx_generation + 1;
        if link.channel.rx_epochs().0 != Some(epoch)
            && link.channel.rx_epochs().1 != Some(epoch)
            && epoch == next_gen as u8
        {
            match install_generation(
                &mut link.channel,
                &link.conn,
                link.role,
                next_gen,
                now,
                Install::Receive,
            ) {
                Ok(()) => link.rx_generation = next_gen,
                Err(e) => debug!(peer = %from_node, "cannot derive the next link key: {e}"),
            }
        }
        match open_link(&mut link.channel, now, &mut pb) {
            Ok(_) => {}
            Err(x0_dataplane::frame::RecvError::Open(OpenError::Replay(_))) => {
                return st.counters.drop("link_replay");
            }
            Err(x0_dataplane::frame::RecvError::Open(OpenError::UnknownEpoch(_))) => {
                return st.counters.drop("link_unknown_epoch");
            }
            Err(_) => return st.counters.drop("link_auth"),
        }
        *st.counters.rx_link_bytes.entry(from_node).or_default() += n as u64;
        let decision = match forward_in_place(pb.data_mut(), self.me) {
            Ok(d) => d,
            Err(x0_dataplane::frame::ForwardError::HopLimitExceeded) => {
                return st.counters.drop("hop_limit");
            }
            Err(_) => return st.counters.drop("overlay_malformed"),
        };
        let next = match decision {
            Forward::Deliver => return self.deliver(st, table, &mut pb, now, out),
            Forward::Route(dst) => match table.routes.get(&dst) {
                Some(route) => route.next_hop,
                None => return st.counters.drop("relay_no_route"),
            },
            Forward::Explicit(next) => next,
        };
        if self.faults.as_ref().is_some_and(|f| f.blackholes(next)) {
            return st.counters.drop("fault_blackhole");
        }
        if !st.shed.admit(from_node, pb.len(), now) {
            return st.counters.drop("shed_load");
        }
        if self.seal_and_send(st, next, &mut pb, now, &mut out.udp) {
            st.counters.relayed += 1;
            st.counters.relayed_bytes += pb.len() as u64;
        }
    }

    /// A direct frame: an end-to-end envelope from the neighbour the link index names, to us
    /// (no link layer, no overlay header; `x0_dataplane::frame`).
    fn handle_direct(
        &self,
        st: &mut State,
        table: &Arc<RouteTable>,
        pb: &mut PacketBuf<'_>,
        now: Duration,
        out: &mut Out,
    ) {
        let n = pb.len();
        // Counted with the malformed link frames: both are what a neighbour's socket sent.
        let Ok(index) = strip_direct(pb) else {
            return st.counters.drop("link_malformed");
        };
        let Some(from_node) = st.link_by_index.get(&index).copied() else {
            return st.counters.drop("link_unknown_index");
        };
        if self.deliver_data(st, table, &direct_overlay(from_node, self.me), pb, now, out) {
            *st.counters.rx_link_bytes.entry(from_node).or_default() += n as u64;
        }
    }

    fn deliver(
        &self,
        st: &mut State,
        table: &Arc<RouteTable>,
        pb: &mut PacketBuf<'_>,
        now: Duration,
        out: &mut Out,
    ) {
        let Ok((overlay, len)) = OverlayHeader::decode(pb.data()) else {
            return st.counters.drop("overlay_malformed");
        };
        if pb.trim_front(len).is_err() {
            return st.counters.drop("overlay_malformed");
        }
        let source = overlay.source;
        match overlay.kind {
            OverlayKind::E2eHandshake => {
                match st
                    .sessions
                    .handle_handshake(now, source, pb.data(), Session::new)
                {
                    Ok(HandshakeOutcome::Reply(msg)) => {
                        self.send_handshake(st, table, source, &msg, now, out);
                    }
                    Ok(HandshakeOutcome::Session) => {
                        self.flush_session(st, table, source, now, out);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        debug!(src = %source, "end-to-end handshake message refused: {e}");
                        st.counters.drop("e2e_handshake");
                        self.flush_session(st, table, source, now, out);
                    }
                }
            }
            OverlayKind::Data => {
                self.deliver_data(st, table, &overlay, pb, now, out);
            }
            _ => st.counters.drop("overlay_kind_unsupported"),
        }
    }

    /// Opens an end-to-end envelope (kind data) from `overlay.source` and delivers what it
    /// holds: an IP packet to TUN, a control message to the prober. Returns whether the
    /// envelope authenticated.
    fn deliver_data(
        &self,
        st: &mut State,
        table: &Arc<RouteTable>,
        overlay: &OverlayHeader,
        pb: &mut PacketBuf<'_>,
        now: Duration,
        out: &mut Out,
    ) -> bool {
        let source = overlay.source;
        let Some(session) = st.sessions.get_mut(&source) else {
            {
                st.counters.drop("e2e_no_session");
                return false;
            };
        };
        let epoch_before = session.e2e.is_established();
        match session.e2e.open(now, overlay, pb) {
            Ok(_) => {}
            Err(x0_dataplane::frame::RecvError::Open(OpenError::Replay(_)))
                if overlay.redundant_seq.is_some() =>
            {
                // The other copy of a redundant packet arrived first.
                if !session.redundant_seen {
                    session.redundant_seen = true;
                    info!(peer = %source, "redundant delivery: copies arrive over two paths");
                }
                st.counters.redundant_duplicates += 1;
                return false;
            }
            Err(x0_dataplane::frame::RecvError::Open(OpenError::Replay(_))) => {
                {
                    st.counters.drop("e2e_replay");
                    return false;
                };
            }
            Err(_) => {
                st.counters.drop("e2e_auth");
                return false;
            }
        }
        // The session may have switched keys on this packet, or have events to report.
        if !epoch_before || session.e2e.has_pending() {
            self.flush_session(st, table, source, now, out);
        }
        // A control message travels as data: only its first byte, inside the
        // end-to-end AEAD, tells it from an IP packet.
        if x0_dataplane::control::is_control(pb.data()) {
            self.handle_control(st, table, source, pb.data(), now, out);
            return true;
        }
        let Ok(inner) = packet::parse(pb.data()) else {
            {
                st.counters.drop("inner_malformed");
                return false;
            }
        };
        if !self.inner_addresses_ok(&inner, source) {
            {
                st.counters.drop("inner_spoofed");
                return false;
            }
        }
        st.counters.delivered_bytes += pb.len() as u64;
        match (&self.tun, &self.app) {
            (Some(tun), _) => out.tun.push(tun, pb.data()),
            (None, Some(app)) => {
                if app.send(pb.data()) {
                    st.counters.delivered += 1;
                } else {
                    st.counters.drop("app_send");
                }
            }
            (None, None) => st.counters.drop("no_tun"),
        }
        true
    }

    // ---- sessions ---------------------------------------------------------------------------

    async fn timer_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut out = Out::default();
        loop {
            tick.tick().await;
            let now = self.now();
            let table = self.routing.table();
            {
                let mut st = lock(&self.state);
                for node in st.sessions.handle_timeout(now) {
                    self.flush_session(&mut st, &table, node, now, &mut out);
                }
                self.send_due_probes(&mut st, &table, now, &mut out);
            }
            self.flush(&mut out);
        }
    }

    /// Queues the session's handshake messages, handles its events, and once keys are in
    /// place queues what was held back.
    fn flush_session(
        &self,
        st: &mut State,
        table: &RouteTable,
        node: NodeId,
        now: Duration,
        out: &mut Out,
    ) {
        let mut msgs = Vec::new();
        let mut ready = false;
        let mut failed = 0u64;
        if let Some(s) = st.sessions.get_mut(&node) {
            while let Some(msg) = s.e2e.poll_transmit(now) {
                msgs.push(msg);
            }
            while let Some(ev) = s.e2e.poll_event() {
                match ev {
                    E2eEvent::KeysInstalled { epoch, role, group } => {
                        info!(peer = %node, epoch, role = ?role, group = ?group, "end-to-end keys installed");
                    }
                    E2eEvent::HandshakeFailed(e) => {
                        warn!(peer = %node, "end-to-end handshake failed: {e}");
                        failed += s.queue.len() as u64;
                        s.queue.clear();
                    }
                    _ => {}
                }
            }
            ready = s.e2e.is_established() && !s.queue.is_empty();
        }
        st.counters.drop_n("e2e_handshake_failed", failed);
        for msg in msgs {
            self.send_handshake(st, table, node, &msg, now, out);
        }
        if ready {
            let queued: Vec<Vec<u8>> = st
                .sessions
                .get_mut(&node)
                .map(|s| s.queue.drain(..).collect())
                .unwrap_or_default();
            let mut buf = vec![0u8; HEADROOM + MAX_PACKET + TAILROOM];
            for p in queued {
                buf[HEADROOM..HEADROOM + p.len()].copy_from_slice(&p);
                let redundant = packet::parse(&p).is_ok_and(|h| self.is_redundant(&h));
                self.send_data(
                    st,
                    table,
                    node,
                    &mut buf,
                    p.len(),
                    now,
                    redundant,
                    None,
                    out,
                );
            }
        }
    }
}

impl DataPlane {
    /// Sends one end-to-end handshake message to `node`.
    fn send_handshake(
        &self,
        st: &mut State,
        table: &RouteTable,
        node: NodeId,
        msg: &[u8],
        now: Duration,
        out: &mut Out,
    ) {
        let mut buf = vec![0u8; HEADROOM + msg.len() + TAILROOM];
        buf[HEADROOM..HEADROOM + msg.len()].copy_from_slice(msg);
        let overlay = self.overlay_header(table, OverlayKind::E2eHandshake, node);
        let Ok(mut pb) = PacketBuf::at_headroom(&mut buf, msg.len()) else {
            return;
        };
        if overlay.prepend_to(&mut pb).is_ok() {
            self.send_link(st, table, &overlay, &mut pb, now, &mut out.udp);
        }
    }
}

impl State {
    /// The node with overlay address `addr`, from the nodes `table` knows.
    fn address(
        &mut self,
        table: &Arc<RouteTable>,
        prefix: &MeshPrefix,
        ipv4: Option<(Ipv4Overlay, Ipv4Addr)>,
        addr: Ipv6Addr,
    ) -> Option<NodeId> {
        self.refresh_addresses(table, prefix, ipv4);
        self.addresses.get(&addr).copied()
    }

    /// The node with IPv4 overlay address `addr` (none if two nodes derive it).
    fn address4(
        &mut self,
        table: &Arc<RouteTable>,
        prefix: &MeshPrefix,
        ipv4: Option<(Ipv4Overlay, Ipv4Addr)>,
        addr: Ipv4Addr,
    ) -> Option<NodeId> {
        self.refresh_addresses(table, prefix, ipv4);
        self.addresses4.get(&addr).copied().flatten()
    }

    /// Rebuilds the address maps if `table` is not the one they were built from.
    fn refresh_addresses(
        &mut self,
        table: &Arc<RouteTable>,
        prefix: &MeshPrefix,
        ipv4: Option<(Ipv4Overlay, Ipv4Addr)>,
    ) {
        if self
            .addresses_of
            .as_ref()
            .is_some_and(|t| Arc::ptr_eq(t, table))
        {
            return;
        }
        self.addresses = table
            .nodes
            .iter()
            .map(|n| (prefix.address_of(*n), *n))
            .collect();
        if let Some((range, mine)) = ipv4 {
            let before = self.addresses4.values().filter(|v| v.is_none()).count();
            self.addresses4.clear();
            // Our own address is taken: a node deriving it is unreachable over IPv4.
            self.addresses4.insert(mine, None);
            for n in &table.nodes {
                self.addresses4
                    .entry(range.address_of(*n))
                    .and_modify(|v| *v = None)
                    .or_insert(Some(*n));
            }
            let clashes = self.addresses4.values().filter(|v| v.is_none()).count();
            if clashes > before.max(1) {
                warn!(
                    clashes = clashes - 1,
                    range = %range,
                    "nodes derive the same IPv4 overlay address; those addresses are not used \
                     (IPv6 still works; a larger range makes this rarer)"
                );
            }
        }
        self.addresses_of = Some(table.clone());
    }
}

/// The overlay header of a frame from `me` to `dst` on its route: no explicit path, except
/// the route's own while it is a fast-reroute backup.
fn routed_header(me: NodeId, table: &RouteTable, kind: OverlayKind, dst: NodeId) -> OverlayHeader {
    let mut h = OverlayHeader::new(kind, me, dst);
    if let Some(route) = table.routes.get(&dst)
        && let Some(path) = &route.path
        && path.len() > 1
    {
        h.path = ExplicitPath::new(&path[1..], 0).ok();
    }
    h
}

/// The link to the neighbour `next` and where it receives data frames (address, receiver
/// index); `None`, with the drop counted, if there is none or it was not announced yet.
fn ready_link<'a>(
    links: &'a mut HashMap<NodeId, LinkChan>,
    counters: &mut Counters,
    next: NodeId,
) -> Option<(&'a mut LinkChan, SocketAddr, u32)> {
    let Some(link) = links.get_mut(&next) else {
        counters.drop("no_link");
        return None;
    };
    let Some((addr, index)) = link.peer else {
        counters.drop("link_not_ready");
        return None;
    };
    Some((link, addr, index))
}

/// Whether a frame under `overlay` leaves as a direct frame: data, no explicit path, no
/// redundancy sequence, and the route's next hop is the destination itself.
fn goes_direct(overlay: &OverlayHeader, table: &RouteTable) -> bool {
    let dst = overlay.destination;
    overlay.kind == OverlayKind::Data
        && overlay.path.is_none()
        && overlay.redundant_seq.is_none()
        && table.routes.get(&dst).is_some_and(|r| r.next_hop == dst)
}

/// Whether `addr` lies in `net/len` (families must match).
fn in_prefix(addr: IpAddr, net: IpAddr, len: u8) -> bool {
    let bits = |a: IpAddr| -> (u128, u32) {
        match a {
            IpAddr::V4(v) => (u128::from(u32::from(v)), 32),
            IpAddr::V6(v) => (u128::from(v), 128),
        }
    };
    let ((a, w), (n, wn)) = (bits(addr), bits(net));
    if w != wn {
        return false;
    }
    let len = u32::from(len).min(w);
    if len == 0 {
        return true;
    }
    let shift = w - len;
    (a >> shift) == (n >> shift)
}

/// Weighted rendezvous hashing: the score of the path whose first hop is `first` for the
/// flow with hash `flow`; the path with the highest score takes the flow. With `u` uniform in
/// (0, 1], `weight / -ln(u)` picks each path with probability proportional to its weight.
fn rendezvous_score(flow: u64, first: &NodeId, weight: f64) -> f64 {
    let mut k = [0u8; 8];
    k.copy_from_slice(&first.as_bytes()[..8]);
    let h = splitmix64(flow ^ u64::from_le_bytes(k));
    // 53 random bits, in (0, 1].
    let u = ((h >> 11) + 1) as f64 / (1u64 << 53) as f64;
    weight / -u.ln().min(-f64::MIN_POSITIVE)
}

/// The splitmix64 finaliser.
fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Socket buffer size asked for the data socket: a burst of a fast TCP flow must not overflow
/// the kernel's default (~208 KB), or every overflow is a loss TCP backs off from.
const SOCKET_BUFFER: usize = 8 << 20;

/// Grows the data socket's buffers to [`SOCKET_BUFFER`]: past `net.core.rmem_max` when we may
/// (`SO_RCVBUFFORCE`, CAP_NET_ADMIN), else as far as the limit allows. Returns the sizes the
/// kernel reports.
fn grow_socket_buffers(socket: &std::net::UdpSocket) -> (usize, usize) {
    use nix::sys::socket::{setsockopt, sockopt};
    if setsockopt(socket, sockopt::RcvBufForce, &SOCKET_BUFFER).is_err() {
        let _ = setsockopt(socket, sockopt::RcvBuf, &SOCKET_BUFFER);
    }
    if setsockopt(socket, sockopt::SndBufForce, &SOCKET_BUFFER).is_err() {
        let _ = setsockopt(socket, sockopt::SndBuf, &SOCKET_BUFFER);
    }
    let rcv = nix::sys::socket::getsockopt(socket, sockopt::RcvBuf).unwrap_or(0);
    let snd = nix::sys::socket::getsockopt(socket, sockopt::SndBuf).unwrap_or(0);
    (rcv, snd)
}

/// Both directions of link key `generation`, exported from the link's TLS session.
fn link_secrets(
    conn: &quinn::Connection,
    role: TlsRole,
    generation: u64,
) -> Result<(TrafficSecret, TrafficSecret), String> {
    export_secrets(
        |out: &mut [u8; 32], label: &[u8], ctx: &[u8]| {
            conn.export_keying_material(out, label, ctx)
                .map_err(|e| format!("{e:?}"))
        },
        LINK_EXPORTER_LABEL,
        role,
        generation,
    )
}

/// Which directions of a link key generation to install.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Install {
    /// Both (link setup).
    Both,
    /// Sending only (our rekey; the peer derives the same generation when it sees it).
    Send,
    /// Receiving only (the peer's rekey).
    Receive,
}

/// Installs link key `generation` in the directions `which`.
fn install_generation(
    channel: &mut Channel,
    conn: &quinn::Connection,
    role: TlsRole,
    generation: u64,
    now: Duration,
    which: Install,
) -> Result<(), String> {
    let (tx, rx) = link_secrets(conn, role, generation)?;
    let epoch = generation as u8;
    if which != Install::Send {
        channel
            .install_rx(epoch, &rx, now)
            .map_err(|e| e.to_string())?;
    }
    if which != Install::Receive {
        channel
            .install_tx(epoch, &tx, now)
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pick(flow: u64, paths: &[(NodeId, f64)]) -> usize {
        let mut best = (f64::MIN, 0);
        for (i, (first, w)) in paths.iter().enumerate() {
            let s = rendezvous_score(splitmix64(flow), first, *w);
            if s > best.0 {
                best = (s, i);
            }
        }
        best.1
    }

    fn share(paths: &[(NodeId, f64)]) -> Vec<f64> {
        let mut n = vec![0u32; paths.len()];
        for f in 0..20_000u64 {
            n[pick(f, paths)] += 1;
        }
        n.iter().map(|&c| f64::from(c) / 20_000.0).collect()
    }

    /// Data to a neighbour that is the destination goes direct (one AES layer); anything a
    /// relay must read, or that carries a path or a redundancy copy, keeps the link layer.
    #[test]
    fn only_plain_data_to_the_neighbour_it_is_for_goes_direct() {
        let (me, nb, far) = (
            NodeId::from_bytes([1; 16]),
            NodeId::from_bytes([2; 16]),
            NodeId::from_bytes([3; 16]),
        );
        let route = |next_hop| crate::routing::Route {
            next_hop,
            link: 1,
            via_backup: false,
            path: None,
        };
        let mut table = RouteTable::default();
        table.routes.insert(nb, route(nb));
        table.routes.insert(far, route(nb));
        let data = |dst| OverlayHeader::new(OverlayKind::Data, me, dst);
        assert!(goes_direct(&data(nb), &table));
        assert!(!goes_direct(&data(far), &table), "relayed by nb");
        assert!(
            !goes_direct(
                &OverlayHeader::new(OverlayKind::E2eHandshake, me, nb),
                &table
            ),
            "handshakes keep the link layer"
        );
        let mut redundant = data(nb);
        redundant.redundant_seq = Some(7);
        assert!(!goes_direct(&redundant, &table));
        let mut explicit = data(nb);
        explicit.path = ExplicitPath::new(&[nb], 0).ok();
        assert!(!goes_direct(&explicit, &table));
        table.routes.remove(&nb);
        assert!(!goes_direct(&data(nb), &table), "no route");
        let mut backup = route(far);
        backup.via_backup = true;
        backup.path = Some(vec![me, far, nb]);
        table.routes.insert(nb, backup);
        assert!(
            !goes_direct(&routed_header(me, &table, OverlayKind::Data, nb), &table),
            "a fast-reroute backup through another node"
        );
    }

    #[test]
    fn prefixes_match_by_family_and_length() {
        let a: IpAddr = "fd00:1:2:3::9".parse().unwrap();
        assert!(in_prefix(a, "fd00:1:2::".parse().unwrap(), 48));
        assert!(!in_prefix(a, "fd00:1:3::".parse().unwrap(), 48));
        assert!(in_prefix(a, "::".parse().unwrap(), 0));
        assert!(in_prefix(a, a, 128));
        let v4: IpAddr = "10.77.3.4".parse().unwrap();
        assert!(in_prefix(v4, "10.77.0.0".parse().unwrap(), 16));
        assert!(!in_prefix(v4, "10.78.0.0".parse().unwrap(), 16));
        assert!(!in_prefix(v4, "::".parse().unwrap(), 0), "families differ");
    }

    #[test]
    fn rendezvous_hashing_follows_the_weights() {
        let (a, b, c) = (
            NodeId::from_bytes([1; 16]),
            NodeId::from_bytes([2; 16]),
            NodeId::from_bytes([3; 16]),
        );
        let even = share(&[(a, 1.0), (b, 1.0)]);
        assert!((even[0] - 0.5).abs() < 0.02, "{even:?}");
        let skewed = share(&[(a, 2.0), (b, 1.0), (c, 1.0)]);
        assert!((skewed[0] - 0.5).abs() < 0.02, "{skewed:?}");
        assert!((skewed[1] - 0.25).abs() < 0.02, "{skewed:?}");
    }

    #[test]
    fn a_small_weight_change_moves_few_flows() {
        let (a, b) = (NodeId::from_bytes([1; 16]), NodeId::from_bytes([2; 16]));
        let before: Vec<usize> = (0..10_000)
            .map(|f| pick(f, &[(a, 1.0), (b, 1.0)]))
            .collect();
        let after: Vec<usize> = (0..10_000)
            .map(|f| pick(f, &[(a, 1.0), (b, 0.9)]))
            .collect();
        let moved = before.iter().zip(&after).filter(|(x, y)| x != y).count();
        // Only flows from the lighter path to the other move: about 2.6 % of all.
        assert!(moved < 500, "{moved} of 10,000 flows moved");
        assert!(
            before
                .iter()
                .zip(&after)
                .all(|(x, y)| x == y || (*x == 1 && *y == 0)),
            "flows move only off the path that got lighter"
        );
    }
}
