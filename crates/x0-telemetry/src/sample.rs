//! Typed snapshots of the eBPF counters, and the differences between two of them.
//!
//! A [`Sample`] holds cumulative counts since the programs were attached; [`Sample::since`]
//! turns two of them into the counts of the interval between, which is what a monitoring loop
//! consumes (see [`crate::Telemetry::next_delta`]). Every counter only grows in the kernel;
//! a difference that would be negative (a counter read torn across CPUs) is taken as zero.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::drop_reason::DropReason;

/// The protocol classes the underlay counter tells apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    /// UDP (where QUIC links and the data channel run).
    Udp,
    /// TCP.
    Tcp,
    /// ICMP and ICMPv6.
    Icmp,
    /// Any other IP protocol.
    Other,
}

impl Protocol {
    /// Every class, in order.
    pub const ALL: [Self; 4] = [Self::Udp, Self::Tcp, Self::Icmp, Self::Other];

    /// A lower-case label, for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Udp => "udp",
            Self::Tcp => "tcp",
            Self::Icmp => "icmp",
            Self::Other => "other",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which way a frame went through the interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    /// Received; the peer is the source address.
    Ingress,
    /// Sent; the peer is the destination address.
    Egress,
}

impl Direction {
    /// A lower-case label, for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ingress => "ingress",
            Self::Egress => "egress",
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Traffic with one peer, one way, in one protocol class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FlowKey {
    /// Received or sent.
    pub direction: Direction,
    /// The other end: the source address of a received packet, the destination of a sent one.
    pub peer: IpAddr,
    /// Its protocol class.
    pub protocol: Protocol,
}

/// Packets and bytes (whole frames, Ethernet header included).
///
/// With the TC hook a GSO/GRO packet counts as the wire frames it stands for (its segment
/// count, each segment's headers added to the bytes). XDP in generic mode sees such a packet
/// once, as one frame of its full length.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlowCounters {
    /// Frames.
    pub packets: u64,
    /// Their bytes, all fragments of a multi-buffer frame included.
    pub bytes: u64,
    /// Of those, frames whose transport header was truncated (shorter than the protocol's
    /// minimum, or a TCP data offset below 5). The kernel drops them later.
    pub malformed: u64,
}

impl FlowCounters {
    pub(crate) fn add(&mut self, other: Self) {
        self.packets = self.packets.saturating_add(other.packets);
        self.bytes = self.bytes.saturating_add(other.bytes);
        self.malformed = self.malformed.saturating_add(other.malformed);
    }

    fn minus(self, earlier: Self) -> Self {
        Self {
            packets: self.packets.saturating_sub(earlier.packets),
            bytes: self.bytes.saturating_sub(earlier.bytes),
            malformed: self.malformed.saturating_sub(earlier.malformed),
        }
    }

    fn is_zero(self) -> bool {
        self == Self::default()
    }
}

/// Frames the underlay counter could not attribute to a peer, by why.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MalformedKind {
    /// Shorter than an Ethernet header (with its VLAN tags).
    TruncatedEthernet,
    /// An IPv4/IPv6 header, an IPv6 extension header or the IP total length runs past the
    /// end of the frame.
    TruncatedIp,
    /// An IP header that cannot be right: wrong version, IPv4 header length below 20 bytes,
    /// or an IPv4 total length below the header length.
    BadIpHeader,
}

impl MalformedKind {
    /// Every kind, in order.
    pub const ALL: [Self; 3] = [
        Self::TruncatedEthernet,
        Self::TruncatedIp,
        Self::BadIpHeader,
    ];

    /// A snake-case label, for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TruncatedEthernet => "truncated_ethernet",
            Self::TruncatedIp => "truncated_ip",
            Self::BadIpHeader => "bad_ip_header",
        }
    }
}

/// What the underlay counter counted on one interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceSample {
    /// The interface's name.
    pub name: String,
    /// Its index (in the network namespace it was attached in).
    pub ifindex: u32,
    /// IP traffic by direction, peer address and protocol class.
    pub flows: BTreeMap<FlowKey, FlowCounters>,
    /// Frames that are not IP (ARP, LLDP, …): packets and bytes; `malformed` stays 0.
    pub non_ip: FlowCounters,
    /// Frames that could not be parsed far enough to know their peer.
    pub malformed: BTreeMap<MalformedKind, u64>,
    /// IP frames not counted per peer because the flow table was full.
    pub flow_table_full: u64,
}

impl InterfaceSample {
    fn empty(name: &str, ifindex: u32) -> Self {
        Self {
            name: name.to_owned(),
            ifindex,
            flows: BTreeMap::new(),
            non_ip: FlowCounters::default(),
            malformed: BTreeMap::new(),
            flow_table_full: 0,
        }
    }

    /// IP traffic one way by protocol class, all peers together.
    pub fn by_protocol(&self, direction: Direction) -> BTreeMap<Protocol, FlowCounters> {
        let mut out = BTreeMap::new();
        for (key, counters) in self.flows.iter().filter(|(k, _)| k.direction == direction) {
            out.entry(key.protocol)
                .or_insert_with(FlowCounters::default)
                .add(*counters);
        }
        out
    }

    /// IP traffic one way by peer, all protocols together.
    pub fn by_peer(&self, direction: Direction) -> BTreeMap<IpAddr, FlowCounters> {
        let mut out = BTreeMap::new();
        for (key, counters) in self.flows.iter().filter(|(k, _)| k.direction == direction) {
            out.entry(key.peer)
                .or_insert_with(FlowCounters::default)
                .add(*counters);
        }
        out
    }

    /// One peer's traffic one way in one protocol class (zero when none was seen).
    pub fn flow(&self, direction: Direction, peer: IpAddr, protocol: Protocol) -> FlowCounters {
        self.flows
            .get(&FlowKey {
                direction,
                peer,
                protocol,
            })
            .copied()
            .unwrap_or_default()
    }

    /// Every malformed frame: the per-interface kinds plus the per-flow truncated transports.
    pub fn malformed_total(&self) -> u64 {
        let flows: u64 = self.flows.values().map(|c| c.malformed).sum();
        self.malformed.values().sum::<u64>() + flows
    }

    /// A malformed counter (zero when none was seen).
    pub fn malformed(&self, kind: MalformedKind) -> u64 {
        self.malformed.get(&kind).copied().unwrap_or(0)
    }

    fn minus(&self, earlier: Option<&Self>) -> Self {
        let mut out = Self::empty(&self.name, self.ifindex);
        let Some(earlier) = earlier else {
            return self.clone();
        };
        for (key, now) in &self.flows {
            let before = earlier.flows.get(key).copied().unwrap_or_default();
            let d = now.minus(before);
            if !d.is_zero() {
                out.flows.insert(*key, d);
            }
        }
        out.non_ip = self.non_ip.minus(earlier.non_ip);
        out.malformed = minus_map(&self.malformed, &earlier.malformed);
        out.flow_table_full = self.flow_table_full.saturating_sub(earlier.flow_table_full);
        out
    }
}

/// A TCP state, as `inet_sock_set_state` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TcpState {
    /// TCP_ESTABLISHED (1).
    Established,
    /// TCP_SYN_SENT (2).
    SynSent,
    /// TCP_SYN_RECV (3).
    SynRecv,
    /// TCP_FIN_WAIT1 (4).
    FinWait1,
    /// TCP_FIN_WAIT2 (5).
    FinWait2,
    /// TCP_TIME_WAIT (6).
    TimeWait,
    /// TCP_CLOSE (7).
    Close,
    /// TCP_CLOSE_WAIT (8).
    CloseWait,
    /// TCP_LAST_ACK (9).
    LastAck,
    /// TCP_LISTEN (10).
    Listen,
    /// TCP_CLOSING (11).
    Closing,
    /// TCP_NEW_SYN_RECV (12).
    NewSynRecv,
    /// TCP_BOUND_INACTIVE (13, Linux 6.7+).
    BoundInactive,
    /// A number this crate does not know.
    Unknown(u8),
}

impl TcpState {
    /// The state for the kernel's number.
    pub fn from_code(code: u8) -> Self {
        match code {
            1 => Self::Established,
            2 => Self::SynSent,
            3 => Self::SynRecv,
            4 => Self::FinWait1,
            5 => Self::FinWait2,
            6 => Self::TimeWait,
            7 => Self::Close,
            8 => Self::CloseWait,
            9 => Self::LastAck,
            10 => Self::Listen,
            11 => Self::Closing,
            12 => Self::NewSynRecv,
            13 => Self::BoundInactive,
            n => Self::Unknown(n),
        }
    }

    /// The kernel's name without the `TCP_` prefix (`SYN_SENT`).
    pub fn name(self) -> String {
        match self {
            Self::Established => "ESTABLISHED".into(),
            Self::SynSent => "SYN_SENT".into(),
            Self::SynRecv => "SYN_RECV".into(),
            Self::FinWait1 => "FIN_WAIT1".into(),
            Self::FinWait2 => "FIN_WAIT2".into(),
            Self::TimeWait => "TIME_WAIT".into(),
            Self::Close => "CLOSE".into(),
            Self::CloseWait => "CLOSE_WAIT".into(),
            Self::LastAck => "LAST_ACK".into(),
            Self::Listen => "LISTEN".into(),
            Self::Closing => "CLOSING".into(),
            Self::NewSynRecv => "NEW_SYN_RECV".into(),
            Self::BoundInactive => "BOUND_INACTIVE".into(),
            Self::Unknown(n) => format!("unknown({n})"),
        }
    }
}

impl fmt::Display for TcpState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// One TCP state change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TcpTransition {
    /// The state before.
    pub from: TcpState,
    /// The state after.
    pub to: TcpState,
}

/// A snapshot of every counter, or (from [`Sample::since`]) the counts of one interval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// When the maps were read.
    pub taken_at: Instant,
    /// Per attached interface, in the order of the configuration.
    pub interfaces: Vec<InterfaceSample>,
    /// Packets the kernel dropped (`kfree_skb`), by reason; all namespaces of the host.
    pub drops: BTreeMap<DropReason, u64>,
    /// Drops not counted by reason because the reason table was full.
    pub drops_unattributed: u64,
    /// TCP retransmissions (`tcp_retransmit_skb`), by remote address; all namespaces.
    pub tcp_retransmits: BTreeMap<IpAddr, u64>,
    /// Retransmissions not counted by peer (table full, or neither IPv4 nor IPv6).
    pub tcp_retransmits_unattributed: u64,
    /// TCP state changes (`inet_sock_set_state`, TCP only); all namespaces.
    pub tcp_state_changes: BTreeMap<TcpTransition, u64>,
}

impl Sample {
    /// A sample with every counter at zero.
    pub fn empty(taken_at: Instant, interfaces: &[(String, u32)]) -> Self {
        Self {
            taken_at,
            interfaces: interfaces
                .iter()
                .map(|(name, ifindex)| InterfaceSample::empty(name, *ifindex))
                .collect(),
            drops: BTreeMap::new(),
            drops_unattributed: 0,
            tcp_retransmits: BTreeMap::new(),
            tcp_retransmits_unattributed: 0,
            tcp_state_changes: BTreeMap::new(),
        }
    }

    /// The interface of that name.
    pub fn interface(&self, name: &str) -> Option<&InterfaceSample> {
        self.interfaces.iter().find(|i| i.name == name)
    }

    /// Drops with that reason name (`"NO_SOCKET"`); 0 when none.
    pub fn drops_by_name(&self, name: &str) -> u64 {
        self.drops
            .iter()
            .filter(|(reason, _)| reason.name == name)
            .map(|(_, count)| count)
            .sum()
    }

    /// Every drop, all reasons together.
    pub fn drops_total(&self) -> u64 {
        self.drops.values().sum::<u64>() + self.drops_unattributed
    }

    /// Every TCP retransmission, all peers together.
    pub fn tcp_retransmits_total(&self) -> u64 {
        self.tcp_retransmits.values().sum::<u64>() + self.tcp_retransmits_unattributed
    }

    /// How often TCP sockets went from one state to another.
    pub fn tcp_transitions(&self, from: TcpState, to: TcpState) -> u64 {
        self.tcp_state_changes
            .get(&TcpTransition { from, to })
            .copied()
            .unwrap_or(0)
    }

    /// The counts of the interval from `earlier` to `self`: every counter minus its earlier
    /// value, entries that did not move left out. `taken_at` is `self`'s.
    pub fn since(&self, earlier: &Sample) -> Sample {
        Sample {
            taken_at: self.taken_at,
            interfaces: self
                .interfaces
                .iter()
                .map(|now| {
                    let before = earlier
                        .interfaces
                        .iter()
                        .find(|b| b.name == now.name && b.ifindex == now.ifindex);
                    now.minus(before)
                })
                .collect(),
            drops: minus_map(&self.drops, &earlier.drops),
            drops_unattributed: self
                .drops_unattributed
                .saturating_sub(earlier.drops_unattributed),
            tcp_retransmits: minus_map(&self.tcp_retransmits, &earlier.tcp_retransmits),
            tcp_retransmits_unattributed: self
                .tcp_retransmits_unattributed
                .saturating_sub(earlier.tcp_retransmits_unattributed),
            tcp_state_changes: minus_map(&self.tcp_state_changes, &earlier.tcp_state_changes),
        }
    }
}

/// The counts of one interval, from [`crate::Telemetry::next_delta`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delta {
    /// How long the interval was.
    pub elapsed: Duration,
    /// What happened in it.
    pub counts: Sample,
}

fn minus_map<K: Ord + Clone>(
    now: &BTreeMap<K, u64>,
    earlier: &BTreeMap<K, u64>,
) -> BTreeMap<K, u64> {
    now.iter()
        .filter_map(|(k, v)| {
            let d = v.saturating_sub(earlier.get(k).copied().unwrap_or(0));
            (d > 0).then(|| (k.clone(), d))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const A: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V6(Ipv6Addr::LOCALHOST);

    fn counters(packets: u64, bytes: u64) -> FlowCounters {
        FlowCounters {
            packets,
            bytes,
            malformed: 0,
        }
    }

    fn sample(at: Instant, udp_a: u64, icmp_b: u64, drops: u64) -> Sample {
        let mut s = Sample::empty(at, &[("eth0".into(), 2)]);
        let i = &mut s.interfaces[0];
        i.flows.insert(
            FlowKey {
                direction: Direction::Ingress,
                peer: A,
                protocol: Protocol::Udp,
            },
            counters(udp_a, udp_a * 100),
        );
        i.flows.insert(
            FlowKey {
                direction: Direction::Ingress,
                peer: B,
                protocol: Protocol::Icmp,
            },
            counters(icmp_b, icmp_b * 64),
        );
        i.flows.insert(
            FlowKey {
                direction: Direction::Ingress,
                peer: A,
                protocol: Protocol::Icmp,
            },
            FlowCounters {
                packets: 1,
                bytes: 50,
                malformed: 1,
            },
        );
        i.flows.insert(
            FlowKey {
                direction: Direction::Egress,
                peer: A,
                protocol: Protocol::Udp,
            },
            counters(2, 300),
        );
        i.malformed.insert(MalformedKind::BadIpHeader, 2);
        let reason = DropReason {
            code: 3,
            name: "NO_SOCKET".into(),
        };
        s.drops.insert(reason, drops);
        s.tcp_state_changes.insert(
            TcpTransition {
                from: TcpState::Close,
                to: TcpState::SynSent,
            },
            drops,
        );
        s
    }

    #[test]
    fn aggregations() {
        let s = sample(Instant::now(), 5, 3, 7);
        let i = s.interface("eth0").unwrap();
        let by_protocol = i.by_protocol(Direction::Ingress);
        assert_eq!(by_protocol[&Protocol::Udp], counters(5, 500));
        assert_eq!(
            by_protocol[&Protocol::Icmp],
            FlowCounters {
                packets: 4,
                bytes: 242,
                malformed: 1
            }
        );
        assert_eq!(i.by_peer(Direction::Ingress)[&A].packets, 6);
        assert_eq!(i.by_peer(Direction::Egress)[&A], counters(2, 300));
        assert!(!i.by_peer(Direction::Egress).contains_key(&B));
        assert_eq!(
            i.by_protocol(Direction::Egress)[&Protocol::Udp],
            counters(2, 300)
        );
        assert_eq!(
            i.flow(Direction::Ingress, B, Protocol::Icmp),
            counters(3, 192)
        );
        assert_eq!(
            i.flow(Direction::Egress, B, Protocol::Icmp),
            FlowCounters::default()
        );
        assert_eq!(
            i.flow(Direction::Ingress, B, Protocol::Tcp),
            FlowCounters::default()
        );
        assert_eq!(i.malformed_total(), 3);
        assert_eq!(i.malformed(MalformedKind::TruncatedIp), 0);
        assert_eq!(s.drops_by_name("NO_SOCKET"), 7);
        assert_eq!(s.drops_by_name("OTHERHOST"), 0);
        assert_eq!(s.drops_total(), 7);
        assert_eq!(s.tcp_transitions(TcpState::Close, TcpState::SynSent), 7);
        assert_eq!(s.tcp_transitions(TcpState::SynSent, TcpState::Close), 0);
        assert!(s.interface("eth1").is_none());
    }

    #[test]
    fn since_subtracts_and_leaves_out_what_did_not_move() {
        let t0 = Instant::now();
        let earlier = sample(t0, 5, 3, 7);
        let later = sample(t0 + Duration::from_secs(1), 9, 3, 10);
        let d = later.since(&earlier);
        assert_eq!(d.taken_at, later.taken_at);
        let i = &d.interfaces[0];
        assert_eq!(i.flows.len(), 1, "{:?}", i.flows);
        assert_eq!(
            i.flow(Direction::Ingress, A, Protocol::Udp),
            counters(4, 400)
        );
        assert!(i.malformed.is_empty());
        assert_eq!(d.drops_by_name("NO_SOCKET"), 3);
        assert_eq!(d.tcp_transitions(TcpState::Close, TcpState::SynSent), 3);
    }

    #[test]
    fn since_never_goes_negative_and_counts_new_entries_whole() {
        let t0 = Instant::now();
        let earlier = sample(t0, 9, 3, 10);
        let later = sample(t0, 5, 3, 7);
        let d = later.since(&earlier);
        assert!(d.interfaces[0].flows.is_empty());
        assert!(d.drops.is_empty());
        // An interface the earlier sample did not have counts from zero.
        let empty = Sample::empty(t0, &[]);
        let d = later.since(&empty);
        assert_eq!(d.interfaces[0], later.interfaces[0]);
    }

    #[test]
    fn tcp_state_names() {
        for code in 1..=13 {
            let s = TcpState::from_code(code);
            assert!(!matches!(s, TcpState::Unknown(_)), "{code}");
        }
        assert_eq!(TcpState::from_code(2).to_string(), "SYN_SENT");
        assert_eq!(TcpState::from_code(12).name(), "NEW_SYN_RECV");
        assert_eq!(TcpState::from_code(0), TcpState::Unknown(0));
        assert_eq!(TcpState::Unknown(14).name(), "unknown(14)");
        assert_eq!(Protocol::Icmp.to_string(), "icmp");
        assert_eq!(MalformedKind::BadIpHeader.as_str(), "bad_ip_header");
        assert_eq!(Direction::Egress.to_string(), "egress");
    }
}
