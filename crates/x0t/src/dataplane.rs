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
//! This first version takes a mutex per packet and a syscall per packet; batching, offloads
//! and GSO/GRO come with the throughput work.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use std::net::UdpSocket;
use tracing::{debug, info, warn};
use x0_dataplane::aead::TrafficSecret;
use x0_dataplane::buf::{HEADROOM, TAILROOM};
use x0_dataplane::e2e::{LINK_EXPORTER_LABEL, TlsRole, export_secrets};
use x0_dataplane::frame::{
    ExplicitPath, Forward, LinkHeader, forward_in_place, open_link, seal_link,
};
use x0_dataplane::packet::{self, Icmpv6Error};
use x0_dataplane::{
    Channel, E2eConfig, E2eEvent, E2eSession, Limits, OpenError, OverlayHeader, OverlayKind,
    PacketBuf,
};
use x0_identity::{MeshPrefix, NodeId};
use x0_wire::DataChannel;

use crate::daemon::lock;
use crate::routing::{RouteTable, Routing};

/// Packets held per destination while its end-to-end session is being set up.
const MAX_QUEUED: usize = 64;
/// Largest datagram read from the data socket or TUN.
const MAX_PACKET: usize = 65_535;
/// Packets the kernel queues for us on the TUN device (its default, 500, drops bursts of a
/// fast TCP flow while the reader is busy; every drop is a loss TCP backs off from).
const TUN_TX_QUEUE: u32 = 4096;
/// How often session timers are checked.
const TICK: Duration = Duration::from_millis(20);

/// Drop and traffic counters.
#[derive(Debug, Default, Clone)]
pub struct Counters {
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
    /// Drops by reason.
    pub drops: HashMap<&'static str, u64>,
}

impl Counters {
    fn drop(&mut self, reason: &'static str) {
        *self.drops.entry(reason).or_default() += 1;
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
    /// Our receiver index.
    index: u32,
    /// Where the neighbour receives data frames, once announced.
    peer: Option<(SocketAddr, u32)>,
}

struct Session {
    e2e: E2eSession,
    queue: VecDeque<Vec<u8>>,
    /// Sequence number of the next redundant packet.
    redundant_seq: u32,
    /// Whether the routing task was asked for an alternate path to this peer.
    alternate_requested: bool,
    /// Whether a second copy of a redundant packet from this peer was seen (logged once).
    redundant_seen: bool,
}

struct State {
    links: HashMap<NodeId, LinkChan>,
    link_by_index: HashMap<u32, NodeId>,
    sessions: HashMap<NodeId, Session>,
    next_index: u32,
    /// Overlay address → node, rebuilt when the routing table changes.
    addresses: HashMap<Ipv6Addr, NodeId>,
    addresses_of: Option<Arc<RouteTable>>,
    counters: Counters,
}

/// The data plane of one daemon.
pub struct DataPlane {
    me: NodeId,
    my_address: Ipv6Addr,
    prefix: MeshPrefix,
    mtu: usize,
    redundant_dscp: [bool; 64],
    socket: UdpSocket,
    tun: Option<tun_rs::SyncDevice>,
    routing: Routing,
    e2e: Arc<E2eConfig>,
    started: std::time::Instant,
    state: Mutex<State>,
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
pub struct DataPlaneConfig {
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
}

impl DataPlane {
    /// Binds the data socket, opens the TUN device, and starts the loops.
    pub fn start(
        cfg: &DataPlaneConfig,
        me: NodeId,
        prefix: MeshPrefix,
        routing: Routing,
        e2e: E2eConfig,
    ) -> Result<Arc<Self>, String> {
        let my_address = prefix.address_of(me);
        let socket = UdpSocket::bind(cfg.bind)
            .map_err(|e| format!("cannot bind the data socket on {}: {e}", cfg.bind))?;
        let (rcv, snd) = grow_socket_buffers(&socket);
        debug!(rcvbuf = rcv, sndbuf = snd, "data socket buffers");
        let tun = if cfg.tun {
            let dev = tun_rs::DeviceBuilder::new()
                .name(&cfg.tun_name)
                .ipv6(my_address, 48u8)
                .mtu(cfg.mtu)
                .tx_queue_len(TUN_TX_QUEUE)
                .build_sync()
                .map_err(|e| {
                    format!(
                        "cannot open the TUN device {:?}: {e} (needs CAP_NET_ADMIN and /dev/net/tun; \
                         set `tun.enabled = false` to run as a relay only)",
                        cfg.tun_name
                    )
                })?;
            Some(dev)
        } else {
            None
        };
        let dp = Arc::new(Self {
            me,
            my_address,
            prefix,
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
            socket,
            tun,
            routing,
            e2e: Arc::new(e2e),
            started: std::time::Instant::now(),
            state: Mutex::new(State {
                links: HashMap::new(),
                link_by_index: HashMap::new(),
                sessions: HashMap::new(),
                next_index: 1,
                addresses: HashMap::new(),
                addresses_of: None,
                counters: Counters::default(),
            }),
        });
        info!(
            data = %dp.socket.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            tun = ?cfg.tun.then_some(&cfg.tun_name),
            address = %my_address,
            mtu = cfg.mtu,
            "data plane up"
        );
        // The packet loops are plain threads with blocking I/O: a task wake-up per packet
        // cost more than the packet's cryptography.
        let udp = dp.clone();
        std::thread::Builder::new()
            .name("x0t-data-rx".into())
            .spawn(move || udp.udp_loop())
            .map_err(|e| format!("cannot start the data thread: {e}"))?;
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
    pub fn port(&self) -> u16 {
        self.socket.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    /// Counters so far.
    pub fn counters(&self) -> Counters {
        lock(&self.state).counters.clone()
    }

    fn now(&self) -> Duration {
        self.started.elapsed()
    }

    /// A link came up: derive its keys and return what to announce to the neighbour.
    pub fn attach(&self, peer: NodeId, conn: &quinn::Connection, dialer: bool) -> DataChannel {
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
    pub fn peer_channel(&self, peer: NodeId, conn: &quinn::Connection, d: DataChannel) {
        let mut st = lock(&self.state);
        if let Some(l) = st.links.get_mut(&peer)
            && l.conn.stable_id() == conn.stable_id()
        {
            let addr = SocketAddr::new(conn.remote_address().ip(), d.port);
            debug!(peer = %peer, %addr, index = d.receiver_index, "data channel");
            l.peer = Some((addr, d.receiver_index));
        }
    }

    /// A link went away.
    pub fn detach(&self, peer: NodeId, conn: &quinn::Connection) {
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
        let mut buf = vec![0u8; HEADROOM + MAX_PACKET + TAILROOM];
        loop {
            let n = match tun.recv(&mut buf[HEADROOM..HEADROOM + MAX_PACKET]) {
                Ok(n) => n,
                Err(e) => {
                    warn!("TUN read failed: {e}; the data plane stops");
                    return;
                }
            };
            self.handle_tun_packet(&mut buf, n);
        }
    }

    fn handle_tun_packet(&self, buf: &mut [u8], n: usize) {
        let table = self.routing.table();
        let packet = &buf[HEADROOM..HEADROOM + n];
        let header = match packet::parse(packet) {
            Ok(h) => h,
            Err(_) => return lock(&self.state).counters.drop("tun_malformed"),
        };
        let IpAddr::V6(dst) = header.dst else {
            return lock(&self.state).counters.drop("tun_ipv4");
        };
        // The kernel's own link-local traffic on the device (router solicitations, MLD) is not
        // for the mesh: counted apart from packets that claim another node's address.
        if !self.prefix.contains(dst) || dst == self.my_address {
            return lock(&self.state).counters.drop("tun_not_overlay");
        }
        if header.src != IpAddr::V6(self.my_address) {
            return lock(&self.state).counters.drop("tun_foreign_source");
        }
        if n > self.mtu {
            self.icmp_to_tun(
                Icmpv6Error::PacketTooBig {
                    mtu: self.mtu as u32,
                },
                packet,
            );
            return lock(&self.state).counters.drop("tun_too_big");
        }
        let mut st = lock(&self.state);
        let Some(node) = st.address(&table, &self.prefix, dst) else {
            st.counters.drop("no_route");
            drop(st);
            return self.icmp_to_tun(Icmpv6Error::NoRoute, packet);
        };
        if !table.routes.contains_key(&node) {
            st.counters.drop("no_route");
            drop(st);
            return self.icmp_to_tun(Icmpv6Error::NoRoute, packet);
        }
        let now = self.now();
        let session = st.session(&self.e2e, self.me, node);
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
            self.flush_session(&mut st, &table, node, now);
            return;
        }
        let redundant = self.is_redundant(header.dscp);
        self.send_data(&mut st, &table, node, buf, n, now, redundant);
    }

    /// Seals the packet at `buf[HEADROOM..HEADROOM + n]` for `node` and sends it; with
    /// `redundant`, also a second copy over a path node-disjoint from the first.
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
    ) {
        let mut overlay = self.overlay_header(table, OverlayKind::Data, node);
        let Ok(mut pb) = PacketBuf::at_headroom(buf, n) else {
            return st.counters.drop("buffer");
        };
        let Some(session) = st.sessions.get_mut(&node) else {
            return st.counters.drop("no_session");
        };
        if let Err(e) = session.e2e.seal(now, &overlay, &mut pb) {
            debug!(dst = %node, "end-to-end seal failed: {e}");
            return st.counters.drop("e2e_seal");
        }
        // The second copy: the same end-to-end payload (the receiver's replay window keeps
        // one), its own overlay header with an explicit path, its own link seal.
        let mut copy = None;
        if redundant {
            let seq = session.redundant_seq;
            session.redundant_seq = seq.wrapping_add(1);
            overlay.redundant_seq = Some(seq);
            match table.alternates.get(&node) {
                Some(alt) if alt.len() > 1 => {
                    let mut second = OverlayHeader::new(OverlayKind::Data, self.me, node);
                    second.redundant_seq = Some(seq);
                    second.path = ExplicitPath::new(&alt[1..], 0).ok();
                    let mut b = vec![0u8; HEADROOM + pb.len() + TAILROOM];
                    b[HEADROOM..HEADROOM + pb.len()].copy_from_slice(pb.data());
                    copy = Some((second, b, pb.len()));
                }
                _ => {
                    if !session.alternate_requested {
                        session.alternate_requested = true;
                        self.routing.want_alternate(node);
                    }
                }
            }
        }
        if overlay.prepend_to(&mut pb).is_err() {
            return st.counters.drop("buffer");
        }
        let first = self.send_link(st, table, &overlay, &mut pb, now);
        let mut second = false;
        if let Some((h, mut b, len)) = copy
            && let Ok(mut pb2) = PacketBuf::at_headroom(&mut b, len)
            && h.prepend_to(&mut pb2).is_ok()
        {
            second = self.send_link(st, table, &h, &mut pb2, now);
        }
        if first || second {
            st.counters.tun_packets_sent += 1;
        }
        if first && second {
            st.counters.redundant_sent += 1;
        }
    }

    /// Whether packets with this DSCP are sent redundantly.
    fn is_redundant(&self, dscp: u8) -> bool {
        self.redundant_dscp
            .get(usize::from(dscp))
            .copied()
            .unwrap_or(false)
    }

    fn overlay_header(&self, table: &RouteTable, kind: OverlayKind, dst: NodeId) -> OverlayHeader {
        let mut h = OverlayHeader::new(kind, self.me, dst);
        if let Some(route) = table.routes.get(&dst)
            && let Some(path) = &route.path
            && path.len() > 1
        {
            h.path = ExplicitPath::new(&path[1..], 0).ok();
        }
        h
    }

    /// Seals the overlay frame in `pb` for the next hop toward its destination and sends it.
    fn send_link(
        &self,
        st: &mut State,
        table: &RouteTable,
        overlay: &OverlayHeader,
        pb: &mut PacketBuf<'_>,
        now: Duration,
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
        self.seal_and_send(st, next, pb, now)
    }

    fn seal_and_send(
        &self,
        st: &mut State,
        next: NodeId,
        pb: &mut PacketBuf<'_>,
        now: Duration,
    ) -> bool {
        let Some(link) = st.links.get_mut(&next) else {
            st.counters.drop("no_link");
            return false;
        };
        let Some((addr, index)) = link.peer else {
            st.counters.drop("link_not_ready");
            return false;
        };
        if link.channel.needs_rekey(now) {
            let generation = link.tx_generation + 1;
            match install_generation(
                &mut link.channel,
                &link.conn,
                link.role,
                generation,
                now,
                Install::Send,
            ) {
                Ok(()) => link.tx_generation = generation,
                Err(e) => debug!(peer = %next, "link rekey failed: {e}"),
            }
        }
        if let Err(e) = seal_link(&mut link.channel, now, index, pb) {
            debug!(peer = %next, "link seal failed: {e}");
            st.counters.drop("link_seal");
            return false;
        }
        match self.socket.send_to(pb.data(), addr) {
            Ok(_) => true,
            Err(_) => {
                st.counters.drop("send_failed");
                false
            }
        }
    }

    fn icmp_to_tun(&self, kind: Icmpv6Error, offending: &[u8]) {
        let Some(tun) = &self.tun else { return };
        let mut reply = [0u8; 1280];
        if let Ok(n) = packet::icmpv6_error(kind, self.my_address, offending, &mut reply) {
            let _ = tun.send(&reply[..n]);
        }
    }

    // ---- mesh → TUN / relay -----------------------------------------------------------------

    fn udp_loop(self: Arc<Self>) {
        let mut buf = vec![0u8; MAX_PACKET + TAILROOM];
        loop {
            let (n, from) = match self.socket.recv_from(&mut buf[..MAX_PACKET]) {
                Ok(r) => r,
                Err(e) => {
                    debug!("data socket receive error: {e}");
                    // Never spin on a persistent error.
                    std::thread::sleep(Duration::from_millis(1));
                    continue;
                }
            };
            self.handle_frame(&mut buf, n, from);
        }
    }

    fn handle_frame(&self, buf: &mut [u8], n: usize, _from: SocketAddr) {
        let now = self.now();
        let table = self.routing.table();
        let mut st = lock(&self.state);
        let Ok(mut pb) = PacketBuf::new(buf, 0..n) else {
            return st.counters.drop("buffer");
        };
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
        let decision = match forward_in_place(pb.data_mut(), self.me) {
            Ok(d) => d,
            Err(x0_dataplane::frame::ForwardError::HopLimitExceeded) => {
                return st.counters.drop("hop_limit");
            }
            Err(_) => return st.counters.drop("overlay_malformed"),
        };
        match decision {
            Forward::Deliver => self.deliver(&mut st, &table, &mut pb, now),
            Forward::Route(dst) => {
                let Some(route) = table.routes.get(&dst) else {
                    return st.counters.drop("relay_no_route");
                };
                let next = route.next_hop;
                if self.seal_and_send(&mut st, next, &mut pb, now) {
                    st.counters.relayed += 1;
                }
            }
            Forward::Explicit(next) => {
                if self.seal_and_send(&mut st, next, &mut pb, now) {
                    st.counters.relayed += 1;
                }
            }
        }
    }

    fn deliver(&self, st: &mut State, table: &RouteTable, pb: &mut PacketBuf<'_>, now: Duration) {
        let Ok((overlay, len)) = OverlayHeader::decode(pb.data()) else {
            return st.counters.drop("overlay_malformed");
        };
        if pb.trim_front(len).is_err() {
            return st.counters.drop("overlay_malformed");
        }
        let source = overlay.source;
        match overlay.kind {
            OverlayKind::E2eHandshake => {
                let session = st.session(&self.e2e, self.me, source);
                if let Err(e) = session.e2e.handle_handshake(now, pb.data()) {
                    debug!(src = %source, "end-to-end handshake message refused: {e}");
                    st.counters.drop("e2e_handshake");
                }
                self.flush_session(st, table, source, now);
            }
            OverlayKind::Data => {
                let Some(session) = st.sessions.get_mut(&source) else {
                    return st.counters.drop("e2e_no_session");
                };
                match session.e2e.open(now, &overlay, pb) {
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
                        return;
                    }
                    Err(x0_dataplane::frame::RecvError::Open(OpenError::Replay(_))) => {
                        return st.counters.drop("e2e_replay");
                    }
                    Err(_) => return st.counters.drop("e2e_auth"),
                }
                // The session may have switched keys on this packet.
                self.flush_session(st, table, source, now);
                let Ok(inner) = packet::parse(pb.data()) else {
                    return st.counters.drop("inner_malformed");
                };
                if inner.src != IpAddr::V6(self.prefix.address_of(source))
                    || inner.dst != IpAddr::V6(self.my_address)
                {
                    return st.counters.drop("inner_spoofed");
                }
                match &self.tun {
                    Some(tun) => match tun.send(pb.data()) {
                        Ok(_) => st.counters.delivered += 1,
                        Err(_) => st.counters.drop("tun_write"),
                    },
                    None => st.counters.drop("no_tun"),
                }
            }
            _ => st.counters.drop("overlay_kind_unsupported"),
        }
    }

    // ---- sessions ---------------------------------------------------------------------------

    async fn timer_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now = self.now();
            let table = self.routing.table();
            let mut st = lock(&self.state);
            let due: Vec<NodeId> = st
                .sessions
                .iter()
                .filter(|(_, s)| s.e2e.poll_timeout().is_some_and(|t| t <= now))
                .map(|(n, _)| *n)
                .collect();
            for node in due {
                if let Some(s) = st.sessions.get_mut(&node) {
                    s.e2e.handle_timeout(now);
                }
                self.flush_session(&mut st, &table, node, now);
            }
        }
    }

    /// Sends the session's handshake messages, handles its events, and once keys are in
    /// place sends what was queued.
    fn flush_session(&self, st: &mut State, table: &RouteTable, node: NodeId, now: Duration) {
        let mut out = Vec::new();
        let mut ready = false;
        let mut failed = 0u64;
        if let Some(s) = st.sessions.get_mut(&node) {
            while let Some(msg) = s.e2e.poll_transmit(now) {
                out.push(msg);
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
        if failed > 0 {
            *st.counters.drops.entry("e2e_handshake_failed").or_default() += failed;
        }
        for msg in out {
            let mut buf = vec![0u8; HEADROOM + msg.len() + TAILROOM];
            buf[HEADROOM..HEADROOM + msg.len()].copy_from_slice(&msg);
            let overlay = self.overlay_header(table, OverlayKind::E2eHandshake, node);
            let Ok(mut pb) = PacketBuf::at_headroom(&mut buf, msg.len()) else {
                continue;
            };
            if overlay.prepend_to(&mut pb).is_ok() {
                self.send_link(st, table, &overlay, &mut pb, now);
            }
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
                let redundant = packet::parse(&p).is_ok_and(|h| self.is_redundant(h.dscp));
                self.send_data(st, table, node, &mut buf, p.len(), now, redundant);
            }
        }
    }
}

impl State {
    /// The node with overlay address `addr`, from the nodes `table` knows.
    fn address(
        &mut self,
        table: &Arc<RouteTable>,
        prefix: &MeshPrefix,
        addr: Ipv6Addr,
    ) -> Option<NodeId> {
        if !self
            .addresses_of
            .as_ref()
            .is_some_and(|t| Arc::ptr_eq(t, table))
        {
            self.addresses = table
                .nodes
                .iter()
                .map(|n| (prefix.address_of(*n), *n))
                .collect();
            self.addresses_of = Some(table.clone());
        }
        self.addresses.get(&addr).copied()
    }

    fn session(&mut self, cfg: &Arc<E2eConfig>, me: NodeId, peer: NodeId) -> &mut Session {
        let next_index = &mut self.next_index;
        self.sessions.entry(peer).or_insert_with(|| {
            let index = *next_index;
            *next_index = next_index.wrapping_add(1).max(1);
            Session {
                e2e: E2eSession::new(cfg.clone(), me, peer, index),
                queue: VecDeque::new(),
                redundant_seq: 0,
                alternate_requested: false,
                redundant_seen: false,
            }
        })
    }
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
