//! The eBPF maps' layouts, mirrored from `bpf/underlay.c` and `bpf/tracepoints.c`, and
//! their decoding into a [`Sample`].
//!
//! Keys and values are plain byte and `u64` arrays (which aya reads without any `unsafe`
//! here); the functions below give them their meaning. Change a layout here and in the C
//! source together: the `layouts_match_the_objects` test checks the sizes against the objects'
//! map definitions.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use aya::Ebpf;
use aya::maps::{MapData, PerCpuArray, PerCpuHashMap, PerCpuValues};

use crate::TelemetryError;
use crate::drop_reason::DropReasonNames;
use crate::sample::{
    Direction, FlowCounters, FlowKey, MalformedKind, Protocol, Sample, TcpState, TcpTransition,
};

/// Underlay: (ifindex, family, class, direction, peer address) → packets, bytes, malformed.
pub(crate) const FLOWS: &str = "x0_flows";
/// Underlay: each CPU's slots for its first flows (one per-CPU array entry).
pub(crate) const FLOW_SLOTS: &str = "x0_flow_slots";
/// Underlay: (ifindex, counter) → value.
pub(crate) const IFACE: &str = "x0_iface";
/// kfree_skb: reason → drops.
pub(crate) const DROPS: &str = "x0_drops";
/// tcp_retransmit_skb: (family, remote address) → retransmits.
pub(crate) const RETRANS: &str = "x0_retrans";
/// inet_sock_set_state: old * 16 + new → transitions.
pub(crate) const TCP_STATES: &str = "x0_tcp_states";
/// Unkeyed overflow counters of the tracepoints.
pub(crate) const OVERFLOW: &str = "x0_overflow";

pub(crate) type FlowKeyBytes = [u8; 24];
pub(crate) type FlowValue = [u64; 3];
pub(crate) type IfaceKey = [u32; 2];
/// `struct flow_slots`: u32 used, u32 pad, then `FLOW_SLOT_COUNT` × (24-byte key, 3 × u64).
pub(crate) type FlowSlotsValue = [u64; 1 + FLOW_SLOT_COUNT * 6];

/// `FLOW_SLOTS` in the C source.
pub(crate) const FLOW_SLOT_COUNT: usize = 4;
pub(crate) type PeerKeyBytes = [u8; 20];

pub(crate) const TCP_STATE_SLOTS: u32 = 16;
const OVERFLOW_RETRANS: u32 = 0;
const OVERFLOW_DROPS: u32 = 1;

/// The per-interface counters of `x0_iface` (`IFACE_*` in the C source).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IfaceCounter {
    NonIpPackets,
    NonIpBytes,
    FlowTableFull,
    Malformed(MalformedKind),
}

impl IfaceCounter {
    pub(crate) fn from_code(code: u32) -> Option<Self> {
        Some(match code {
            0 => Self::NonIpPackets,
            1 => Self::NonIpBytes,
            2 => Self::FlowTableFull,
            3 => Self::Malformed(MalformedKind::TruncatedEthernet),
            4 => Self::Malformed(MalformedKind::TruncatedIp),
            5 => Self::Malformed(MalformedKind::BadIpHeader),
            _ => return None,
        })
    }
}

fn address(family: u8, addr: &[u8]) -> Option<IpAddr> {
    match family {
        4 => {
            let v4: [u8; 4] = addr.get(..4)?.try_into().ok()?;
            Some(IpAddr::V4(Ipv4Addr::from(v4)))
        }
        6 => {
            let v6: [u8; 16] = addr.get(..16)?.try_into().ok()?;
            Some(IpAddr::V6(Ipv6Addr::from(v6)))
        }
        _ => None,
    }
}

/// `struct flow_key`: u32 ifindex (host order), u8 family, u8 class, u8 direction, 1 pad,
/// 16 address.
pub(crate) fn decode_flow_key(key: &FlowKeyBytes) -> Option<(u32, FlowKey)> {
    let ifindex = u32::from_ne_bytes([key[0], key[1], key[2], key[3]]);
    let protocol = match key[5] {
        0 => Protocol::Udp,
        1 => Protocol::Tcp,
        2 => Protocol::Icmp,
        3 => Protocol::Other,
        _ => return None,
    };
    let direction = match key[6] {
        0 => Direction::Ingress,
        1 => Direction::Egress,
        _ => return None,
    };
    let peer = address(key[4], &key[8..])?;
    Some((
        ifindex,
        FlowKey {
            direction,
            peer,
            protocol,
        },
    ))
}

/// The claimed slots of one CPU's `struct flow_slots`: (key, packets/bytes/malformed). A slot
/// is claimed once and keeps its flow, and `used` is written after the key, so a slot counted
/// in `used` holds its whole key; a `used` beyond the slots is capped.
pub(crate) fn decode_flow_slots(value: &FlowSlotsValue) -> Vec<(FlowKeyBytes, FlowValue)> {
    // `used` is the first u32 in memory: the low half on little-endian machines.
    let first = value[0].to_ne_bytes();
    let used = u32::from_ne_bytes([first[0], first[1], first[2], first[3]]);
    let used = usize::try_from(used)
        .unwrap_or(usize::MAX)
        .min(FLOW_SLOT_COUNT);
    value[1..]
        .chunks_exact(6)
        .take(used)
        .map(|slot| {
            let mut key = [0u8; 24];
            for (bytes, word) in key.chunks_exact_mut(8).zip(&slot[..3]) {
                bytes.copy_from_slice(&word.to_ne_bytes());
            }
            (key, [slot[3], slot[4], slot[5]])
        })
        .collect()
}

/// `struct peer_key`: u8 family, 3 pad, 16 address.
pub(crate) fn decode_peer_key(key: &PeerKeyBytes) -> Option<IpAddr> {
    address(key[0], &key[4..])
}

/// `x0_tcp_states` index → transition.
pub(crate) fn decode_tcp_slot(slot: u32) -> TcpTransition {
    let code = |n: u32| TcpState::from_code(u8::try_from(n).unwrap_or(u8::MAX));
    TcpTransition {
        from: code(slot / TCP_STATE_SLOTS),
        to: code(slot % TCP_STATE_SLOTS),
    }
}

fn sum<const N: usize>(values: &PerCpuValues<[u64; N]>) -> [u64; N] {
    let mut out = [0u64; N];
    for cpu in values.iter() {
        for (o, v) in out.iter_mut().zip(cpu) {
            *o = o.wrapping_add(*v);
        }
    }
    out
}

fn sum1(values: &PerCpuValues<u64>) -> u64 {
    values.iter().fold(0u64, |a, v| a.wrapping_add(*v))
}

fn map<'a>(ebpf: &'a Ebpf, name: &'static str) -> Result<&'a aya::maps::Map, TelemetryError> {
    ebpf.map(name)
        .ok_or(TelemetryError::MissingInObject { item: name })
}

fn map_error(map: &'static str) -> impl Fn(aya::maps::MapError) -> TelemetryError {
    move |cause| TelemetryError::Map {
        map,
        cause: Box::new(cause),
    }
}

/// Adds the underlay maps to `sample`'s interfaces (matched by ifindex).
pub(crate) fn read_underlay(ebpf: &Ebpf, sample: &mut Sample) -> Result<(), TelemetryError> {
    let flows: PerCpuHashMap<&MapData, FlowKeyBytes, FlowValue> =
        PerCpuHashMap::try_from(map(ebpf, FLOWS)?).map_err(map_error(FLOWS))?;
    // On each CPU a flow is in a slot or in the hash map, never both: add them up.
    let mut add = |key: &FlowKeyBytes, [packets, bytes, malformed]: FlowValue| {
        let Some((ifindex, flow)) = decode_flow_key(key) else {
            return;
        };
        if let Some(iface) = sample.interfaces.iter_mut().find(|i| i.ifindex == ifindex) {
            iface.flows.entry(flow).or_default().add(FlowCounters {
                packets,
                bytes,
                malformed,
            });
        }
    };
    for entry in flows.iter() {
        let (key, values) = entry.map_err(map_error(FLOWS))?;
        add(&key, sum(&values));
    }
    let slots: PerCpuArray<&MapData, FlowSlotsValue> =
        PerCpuArray::try_from(map(ebpf, FLOW_SLOTS)?).map_err(map_error(FLOW_SLOTS))?;
    for cpu in slots.get(&0, 0).map_err(map_error(FLOW_SLOTS))?.iter() {
        for (key, value) in decode_flow_slots(cpu) {
            add(&key, value);
        }
    }

    let counters: PerCpuHashMap<&MapData, IfaceKey, u64> =
        PerCpuHashMap::try_from(map(ebpf, IFACE)?).map_err(map_error(IFACE))?;
    for entry in counters.iter() {
        let ([ifindex, code], values) = entry.map_err(map_error(IFACE))?;
        let value = sum1(&values);
        let Some(iface) = sample.interfaces.iter_mut().find(|i| i.ifindex == ifindex) else {
            continue;
        };
        match IfaceCounter::from_code(code) {
            Some(IfaceCounter::NonIpPackets) => iface.non_ip.packets = value,
            Some(IfaceCounter::NonIpBytes) => iface.non_ip.bytes = value,
            Some(IfaceCounter::FlowTableFull) => iface.flow_table_full = value,
            Some(IfaceCounter::Malformed(kind)) => {
                iface.malformed.insert(kind, value);
            }
            None => {}
        }
    }
    Ok(())
}

/// Fills `sample`'s drops, retransmits and TCP state changes.
pub(crate) fn read_tracepoints(
    ebpf: &Ebpf,
    names: &DropReasonNames,
    sample: &mut Sample,
) -> Result<(), TelemetryError> {
    let drops: PerCpuHashMap<&MapData, u32, u64> =
        PerCpuHashMap::try_from(map(ebpf, DROPS)?).map_err(map_error(DROPS))?;
    for entry in drops.iter() {
        let (code, values) = entry.map_err(map_error(DROPS))?;
        *sample.drops.entry(names.reason(code)).or_insert(0) += sum1(&values);
    }

    let retrans: PerCpuHashMap<&MapData, PeerKeyBytes, u64> =
        PerCpuHashMap::try_from(map(ebpf, RETRANS)?).map_err(map_error(RETRANS))?;
    for entry in retrans.iter() {
        let (key, values) = entry.map_err(map_error(RETRANS))?;
        let count = sum1(&values);
        match decode_peer_key(&key) {
            Some(peer) => *sample.tcp_retransmits.entry(peer).or_insert(0) += count,
            None => sample.tcp_retransmits_unattributed += count,
        }
    }

    let states: PerCpuArray<&MapData, u64> =
        PerCpuArray::try_from(map(ebpf, TCP_STATES)?).map_err(map_error(TCP_STATES))?;
    for (slot, entry) in states.iter().enumerate() {
        let count = sum1(&entry.map_err(map_error(TCP_STATES))?);
        if count > 0 {
            let slot = u32::try_from(slot).unwrap_or(u32::MAX);
            sample
                .tcp_state_changes
                .insert(decode_tcp_slot(slot), count);
        }
    }

    let overflow: PerCpuArray<&MapData, u64> =
        PerCpuArray::try_from(map(ebpf, OVERFLOW)?).map_err(map_error(OVERFLOW))?;
    sample.tcp_retransmits_unattributed += sum1(
        &overflow
            .get(&OVERFLOW_RETRANS, 0)
            .map_err(map_error(OVERFLOW))?,
    );
    sample.drops_unattributed += sum1(
        &overflow
            .get(&OVERFLOW_DROPS, 0)
            .map_err(map_error(OVERFLOW))?,
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow_key(ifindex: u32, family: u8, class: u8, addr: &[u8]) -> FlowKeyBytes {
        flow_key_dir(ifindex, family, class, 0, addr)
    }

    fn flow_key_dir(ifindex: u32, family: u8, class: u8, dir: u8, addr: &[u8]) -> FlowKeyBytes {
        let mut k = [0u8; 24];
        k[..4].copy_from_slice(&ifindex.to_ne_bytes());
        k[4] = family;
        k[5] = class;
        k[6] = dir;
        k[8..8 + addr.len()].copy_from_slice(addr);
        k
    }

    #[test]
    fn flow_keys_decode() {
        let (ifindex, key) = decode_flow_key(&flow_key(7, 4, 0, &[10, 0, 0, 1])).unwrap();
        assert_eq!(ifindex, 7);
        assert_eq!(key.peer, "10.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(key.protocol, Protocol::Udp);
        assert_eq!(key.direction, Direction::Ingress);
        let (_, key) = decode_flow_key(&flow_key_dir(7, 4, 0, 1, &[10, 0, 0, 2])).unwrap();
        assert_eq!(key.direction, Direction::Egress);
        assert!(decode_flow_key(&flow_key_dir(7, 4, 0, 2, &[10, 0, 0, 2])).is_none());

        let v6: Ipv6Addr = "fe80::1".parse().unwrap();
        let (_, key) = decode_flow_key(&flow_key(1, 6, 2, &v6.octets())).unwrap();
        assert_eq!(key.peer, IpAddr::V6(v6));
        assert_eq!(key.protocol, Protocol::Icmp);
        assert_eq!(
            decode_flow_key(&flow_key(1, 4, 1, &[1, 2, 3, 4]))
                .unwrap()
                .1
                .protocol,
            Protocol::Tcp
        );
        assert_eq!(
            decode_flow_key(&flow_key(1, 4, 3, &[1, 2, 3, 4]))
                .unwrap()
                .1
                .protocol,
            Protocol::Other
        );
        // Bad family or class: skipped, never a panic.
        assert!(decode_flow_key(&flow_key(1, 5, 0, &[1, 2, 3, 4])).is_none());
        assert!(decode_flow_key(&flow_key(1, 4, 9, &[1, 2, 3, 4])).is_none());
    }

    #[test]
    fn flow_slots_decode_the_claimed_ones() {
        let word = |k: &FlowKeyBytes, i: usize| {
            u64::from_ne_bytes(k[i * 8..i * 8 + 8].try_into().unwrap())
        };
        let a = flow_key(7, 4, 1, &[10, 0, 0, 1]);
        let b = flow_key_dir(7, 4, 1, 1, &[10, 0, 0, 1]);
        let mut value: FlowSlotsValue = [0; 25];
        let mut used = [0u8; 8];
        used[..4].copy_from_slice(&2u32.to_ne_bytes());
        value[0] = u64::from_ne_bytes(used);
        for (slot, (key, counts)) in [(a, [5, 500, 0]), (b, [3, 300, 1])].iter().enumerate() {
            let at = 1 + slot * 6;
            for i in 0..3 {
                value[at + i] = word(key, i);
            }
            value[at + 3..at + 6].copy_from_slice(counts);
        }
        // A third slot with a key but not yet counted in `used`: left out.
        value[13] = word(&a, 0);
        let slots = decode_flow_slots(&value);
        assert_eq!(slots, vec![(a, [5, 500, 0]), (b, [3, 300, 1])]);
        assert_eq!(
            decode_flow_key(&slots[1].0).unwrap().1.direction,
            Direction::Egress
        );
        // A `used` beyond the slots is capped, never an out-of-range read.
        value[0] = u64::from_ne_bytes([255, 255, 255, 255, 0, 0, 0, 0]);
        assert_eq!(decode_flow_slots(&value).len(), FLOW_SLOT_COUNT);
        assert!(decode_flow_slots(&[0; 25]).is_empty());
    }

    #[test]
    fn peer_keys_decode() {
        let mut k = [0u8; 20];
        k[0] = 4;
        k[4..8].copy_from_slice(&[192, 0, 2, 1]);
        assert_eq!(decode_peer_key(&k), Some("192.0.2.1".parse().unwrap()));
        k[0] = 6;
        let v6: Ipv6Addr = "2001:db8::7".parse().unwrap();
        k[4..].copy_from_slice(&v6.octets());
        assert_eq!(decode_peer_key(&k), Some(IpAddr::V6(v6)));
        k[0] = 0;
        assert_eq!(decode_peer_key(&k), None);
    }

    #[test]
    fn tcp_slots_and_iface_counters_decode() {
        let t = decode_tcp_slot(7 * 16 + 2);
        assert_eq!((t.from, t.to), (TcpState::Close, TcpState::SynSent));
        let t = decode_tcp_slot(255);
        assert_eq!(
            (t.from, t.to),
            (TcpState::Unknown(15), TcpState::Unknown(15))
        );
        assert_eq!(
            IfaceCounter::from_code(5),
            Some(IfaceCounter::Malformed(MalformedKind::BadIpHeader))
        );
        assert_eq!(IfaceCounter::from_code(0), Some(IfaceCounter::NonIpPackets));
        assert_eq!(IfaceCounter::from_code(7), None);
    }

    /// The key and value sizes here match the map definitions compiled into the objects.
    #[test]
    fn layouts_match_the_objects() {
        const PERCPU_HASH: u32 = 5; // BPF_MAP_TYPE_PERCPU_HASH
        const PERCPU_ARRAY: u32 = 6; // BPF_MAP_TYPE_PERCPU_ARRAY
        let underlay = object_maps(crate::objects::UNDERLAY);
        let tp = object_maps(crate::objects::TRACEPOINTS);
        let expect =
            |maps: &[(String, u32, u32, u32)], name: &str, ty: u32, key: usize, value: usize| {
                let found = maps
                    .iter()
                    .find(|m| m.0 == name)
                    .unwrap_or_else(|| panic!("{name} missing"));
                assert_eq!(
                    (found.1, found.2 as usize, found.3 as usize),
                    (ty, key, value),
                    "{name}"
                );
            };
        expect(
            &underlay,
            FLOWS,
            PERCPU_HASH,
            size_of::<FlowKeyBytes>(),
            size_of::<FlowValue>(),
        );
        expect(
            &underlay,
            FLOW_SLOTS,
            PERCPU_ARRAY,
            4,
            size_of::<FlowSlotsValue>(),
        );
        expect(&underlay, IFACE, PERCPU_HASH, size_of::<IfaceKey>(), 8);
        expect(&tp, DROPS, PERCPU_HASH, 4, 8);
        expect(&tp, RETRANS, PERCPU_HASH, size_of::<PeerKeyBytes>(), 8);
        expect(&tp, TCP_STATES, PERCPU_ARRAY, 4, 8);
        expect(&tp, OVERFLOW, PERCPU_ARRAY, 4, 8);
    }

    /// (name, type, key size, value size) of every map an object defines, parsed without a
    /// kernel by aya's object parser.
    fn object_maps(object: &[u8]) -> Vec<(String, u32, u32, u32)> {
        let obj = aya_obj::Object::parse(object).unwrap();
        obj.maps
            .iter()
            .map(|(name, m)| (name.clone(), m.map_type(), m.key_size(), m.value_size()))
            .collect()
    }

    #[test]
    fn tcp_state_table_covers_every_slot() {
        let obj = aya_obj::Object::parse(crate::objects::TRACEPOINTS).unwrap();
        assert_eq!(
            obj.maps[TCP_STATES].max_entries(),
            TCP_STATE_SLOTS * TCP_STATE_SLOTS
        );
    }
}
