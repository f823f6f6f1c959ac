//! `packet::parse` on arbitrary bytes as a TUN packet, and the ICMP error builders on it.
//! Whatever parses must have consistent offsets; every generated ICMP error must parse, be an
//! ICMP error (so it is never answered in turn) and carry valid checksums.
#![no_main]

use std::net::{Ipv4Addr, Ipv6Addr};

use libfuzzer_sys::fuzz_target;
use x0_dataplane::packet::{
    Checksum, IPV6_MIN_MTU, Icmpv4Error, Icmpv6Error, MAX_ICMPV4_ERROR_LEN, icmpv4_error,
    icmpv6_error, parse,
};

fuzz_target!(|data: &[u8]| {
    let Ok(h) = parse(data) else {
        return;
    };
    assert!(h.transport_offset <= h.total_len && h.total_len <= data.len());
    let _ = h.flow_hash(0x5eed);

    let mut out = [0u8; IPV6_MIN_MTU];
    for kind in [
        Icmpv6Error::PacketTooBig { mtu: 1280 },
        Icmpv6Error::NoRoute,
        Icmpv6Error::AdminProhibited,
        Icmpv6Error::AddressUnreachable,
    ] {
        if let Ok(n) = icmpv6_error(kind, Ipv6Addr::LOCALHOST, data, &mut out) {
            let e = &out[..n];
            assert!(n <= IPV6_MIN_MTU);
            let eh = parse(e).expect("a generated ICMPv6 error parses");
            assert!(eh.is_icmp_error());
            let sum = Checksum::new()
                .add(&e[8..40])
                .add(&((n - 40) as u32).to_be_bytes())
                .add(&[0, 0, 0, 58])
                .add(&e[40..])
                .finish();
            assert_eq!(sum, 0, "ICMPv6 checksum");
        }
    }
    let mut out4 = [0u8; MAX_ICMPV4_ERROR_LEN];
    for kind in [
        Icmpv4Error::FragmentationNeeded { next_hop_mtu: 1400 },
        Icmpv4Error::HostUnreachable,
    ] {
        if let Ok(n) = icmpv4_error(kind, Ipv4Addr::new(10, 0, 0, 1), data, &mut out4) {
            let e = &out4[..n];
            let eh = parse(e).expect("a generated ICMPv4 error parses");
            assert!(eh.is_icmp_error());
            assert_eq!(
                Checksum::new().add(&e[..20]).finish(),
                0,
                "IPv4 header checksum"
            );
            assert_eq!(Checksum::new().add(&e[20..]).finish(), 0, "ICMP checksum");
        }
    }
});
