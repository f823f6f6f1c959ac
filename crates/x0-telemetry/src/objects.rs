//! The compiled eBPF objects, embedded so that building the crate needs no clang.
//!
//! The objects are committed next to their C sources in `bpf/` and rebuilt by `bpf/build.sh`
//! (CI runs `bpf/build.sh --check`). aya parses the ELF in place, which needs the bytes
//! aligned for 64-bit ELF structures; `include_bytes!` alone only guarantees byte alignment.

/// Wraps `include_bytes!` in a type aligned to 8 bytes.
macro_rules! include_bytes_aligned {
    ($path:literal) => {{
        #[repr(C)]
        struct Aligned<Bytes: ?Sized> {
            _align: [u64; 0],
            bytes: Bytes,
        }
        static ALIGNED: &Aligned<[u8]> = &Aligned {
            _align: [],
            bytes: *include_bytes!($path),
        };
        &ALIGNED.bytes
    }};
}

/// `bpf/underlay.o`: the underlay counters (programs `x0_tc_ingress`, `x0_tc_egress` and
/// `x0_xdp_count`, sharing their maps).
pub const UNDERLAY: &[u8] = include_bytes_aligned!("../bpf/underlay.o");

/// `bpf/tracepoints.o`: the `tp_btf` programs `x0_kfree_skb`, `x0_tcp_retransmit` and
/// `x0_inet_sock_set_state`.
pub const TRACEPOINTS: &[u8] = include_bytes_aligned!("../bpf/tracepoints.o");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_are_aligned_bpf_elf() {
        for object in [UNDERLAY, TRACEPOINTS] {
            assert_eq!(object.as_ptr() as usize % 8, 0);
            assert_eq!(&object[..4], b"\x7fELF");
            assert_eq!(object[4], 2, "ELFCLASS64");
            // e_machine EM_BPF (247), little-endian
            assert_eq!(u16::from_le_bytes([object[18], object[19]]), 247);
        }
    }

    #[test]
    fn objects_hold_the_programs_the_loader_looks_for() {
        let underlay = aya_obj::Object::parse(UNDERLAY).unwrap();
        for program in [
            crate::XDP_PROGRAM,
            crate::TC_INGRESS_PROGRAM,
            crate::TC_EGRESS_PROGRAM,
        ] {
            assert!(underlay.programs.contains_key(program), "{program}");
        }
        let tp = aya_obj::Object::parse(TRACEPOINTS).unwrap();
        for (program, _) in crate::TRACEPOINT_PROGRAMS {
            assert!(tp.programs.contains_key(program), "{program}");
        }
    }
}
