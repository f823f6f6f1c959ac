//! eBPF telemetry in the daemon: `x0-telemetry`'s programs attached to the underlay
//! interfaces, their counters exported as Prometheus metrics.
//!
//! Without the privileges (CAP_BPF and CAP_NET_ADMIN, or root) or kernel support, the daemon
//! says so once and runs on: `x0t_ebpf_enabled` stays 0. It never refuses to start for this.
//!
//! The kernel tracepoints (drops by reason, TCP retransmits and state changes) see the whole
//! machine, every network namespace included; the underlay counters see only the interfaces
//! they are attached to.

use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::registry::Unit;
use tracing::{info, warn};
use x0_telemetry::{
    Direction, MalformedKind, Protocol, Telemetry, TelemetryConfig, UnderlayHook, XdpAttachMode,
};

use crate::config::{EbpfHook, EbpfSection};
use crate::metrics::{encode_counter, encode_counters};

/// The attached programs.
pub(crate) struct Ebpf {
    telemetry: Mutex<Telemetry>,
    interfaces: Vec<String>,
}

impl fmt::Debug for Ebpf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ebpf")
            .field("interfaces", &self.interfaces)
            .finish_non_exhaustive()
    }
}

impl Ebpf {
    /// Attaches the programs as `cfg` says, to `cfg.interfaces` or (when empty) to the
    /// underlay interfaces found for `listen`. `None`, with one log line saying why, when
    /// disabled or refused.
    pub(crate) fn start(cfg: &EbpfSection, listen: IpAddr, tun_name: &str) -> Option<Arc<Self>> {
        if !cfg.enabled {
            return None;
        }
        let interfaces = if cfg.interfaces.is_empty() {
            underlay_interfaces(listen, tun_name)
        } else {
            cfg.interfaces.clone()
        };
        let config = TelemetryConfig {
            interfaces: interfaces.clone(),
            hook: match cfg.hook {
                EbpfHook::Tc => UnderlayHook::Tc,
                EbpfHook::XdpGeneric => UnderlayHook::Xdp(XdpAttachMode::Generic),
                EbpfHook::XdpNative => UnderlayHook::Xdp(XdpAttachMode::Native),
            },
            tracepoints: cfg.tracepoints,
            ..TelemetryConfig::default()
        };
        match Telemetry::start(&config) {
            Ok(t) => {
                info!(
                    interfaces = ?interfaces,
                    tracepoints = t.tracepoints_attached(),
                    "eBPF telemetry attached"
                );
                Some(Arc::new(Self {
                    telemetry: Mutex::new(t),
                    interfaces,
                }))
            }
            Err(e) if e.is_permission_error() => {
                warn!(
                    "eBPF telemetry is off: not permitted ({e}); it needs root or CAP_BPF and \
                     CAP_NET_ADMIN. The daemon runs without it (x0t_ebpf_enabled 0)"
                );
                None
            }
            Err(e) => {
                warn!(
                    "eBPF telemetry is off: {e}. The daemon runs without it (x0t_ebpf_enabled 0)"
                );
                None
            }
        }
    }

    /// Logs the totals (at shutdown).
    pub(crate) fn log_totals(&self) {
        if let Some(s) = self.sample() {
            let (mut packets, mut bytes) = (0u64, 0u64);
            for i in &s.interfaces {
                for c in i.flows.values() {
                    packets += c.packets;
                    bytes += c.bytes;
                }
            }
            info!(
                interfaces = ?self.interfaces,
                underlay_packets = packets,
                underlay_bytes = bytes,
                kernel_drops = s.drops_total(),
                tcp_retransmits = s.tcp_retransmits_total(),
                "eBPF counters"
            );
        }
    }

    /// A snapshot of the counters since the programs were attached.
    pub(crate) fn sample(&self) -> Option<x0_telemetry::Sample> {
        let t = self.telemetry.lock().unwrap_or_else(|p| p.into_inner());
        t.sample().ok()
    }
}

/// The interfaces that carry our underlay traffic: those holding the `listen` address, or
/// every interface that is up, has an address and is neither loopback nor our TUN device when
/// we listen on all addresses.
fn underlay_interfaces(listen: IpAddr, tun_name: &str) -> Vec<String> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    let mut names = std::collections::BTreeSet::new();
    for a in addrs {
        use nix::net::if_::InterfaceFlags as F;
        if !a.flags.contains(F::IFF_UP) || a.flags.contains(F::IFF_LOOPBACK) {
            continue;
        }
        if a.interface_name == tun_name {
            continue;
        }
        let Some(addr) = a.address.as_ref().and_then(|s| {
            s.as_sockaddr_in()
                .map(|v| IpAddr::V4(v.ip()))
                .or_else(|| s.as_sockaddr_in6().map(|v| IpAddr::V6(v.ip())))
        }) else {
            continue;
        };
        if listen.is_unspecified() || addr == listen {
            names.insert(a.interface_name);
        }
    }
    names.into_iter().collect()
}

/// Exports the counters at scrape time.
#[derive(Debug)]
pub(crate) struct EbpfCollector(pub Arc<Ebpf>);

impl Collector for EbpfCollector {
    fn encode(&self, e: DescriptorEncoder<'_>) -> fmt::Result {
        match self.0.sample() {
            Some(s) => encode_sample(e, &s),
            None => Ok(()),
        }
    }
}

/// Writes the `x0t_ebpf_*` counters of a sample. The underlay counters list every attached
/// interface, direction, protocol and malformed kind from the start (at zero until traffic),
/// so that a rate on any of them is 0 rather than no data; drop reasons and TCP transitions
/// (the kernel's enums: over a hundred values) appear with their first event.
fn encode_sample(mut e: DescriptorEncoder<'_>, s: &x0_telemetry::Sample) -> fmt::Result {
    let mut packets = Vec::new();
    let mut bytes = Vec::new();
    let mut malformed = Vec::new();
    for i in &s.interfaces {
        for dir in [Direction::Ingress, Direction::Egress] {
            let seen = i.by_protocol(dir);
            for proto in Protocol::ALL {
                let c = seen.get(&proto).copied().unwrap_or_default();
                let labels = vec![
                    ("interface", i.name.clone()),
                    ("direction", dir.as_str().to_owned()),
                    ("protocol", proto.as_str().to_owned()),
                ];
                packets.push((labels.clone(), c.packets));
                bytes.push((labels, c.bytes));
            }
        }
        for kind in MalformedKind::ALL {
            malformed.push((
                vec![
                    ("interface", i.name.clone()),
                    ("kind", kind.as_str().to_owned()),
                ],
                i.malformed(kind),
            ));
        }
    }
    encode_counters(
        &mut e,
        "ebpf_underlay_packets",
        "Packets seen on the underlay interfaces by the eBPF counter, by direction and protocol",
        None,
        packets,
    )?;
    encode_counters(
        &mut e,
        "ebpf_underlay",
        "Bytes seen on the underlay interfaces by the eBPF counter, by direction and protocol",
        Some(Unit::Bytes),
        bytes,
    )?;
    encode_counters(
        &mut e,
        "ebpf_underlay_malformed_packets",
        "Malformed packets seen on the underlay interfaces, by kind",
        None,
        malformed,
    )?;
    encode_counters(
        &mut e,
        "ebpf_kernel_drops",
        "Packets the kernel dropped (skb:kfree_skb, machine-wide), by drop reason",
        None,
        s.drops
            .iter()
            .map(|(r, v)| (vec![("reason", r.name.clone())], *v)),
    )?;
    encode_counter(
        &mut e,
        "ebpf_tcp_retransmits",
        "TCP segments retransmitted (tcp:tcp_retransmit_skb, machine-wide)",
        None,
        s.tcp_retransmits_total(),
    )?;
    encode_counters(
        &mut e,
        "ebpf_tcp_state_changes",
        "TCP state transitions (sock:inet_sock_set_state, machine-wide)",
        None,
        s.tcp_state_changes
            .iter()
            .map(|(t, v)| (vec![("from", t.from.name()), ("to", t.to.name())], *v)),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn underlay_counters_are_exported_at_zero_for_every_attached_interface() {
        struct One(x0_telemetry::Sample);
        impl fmt::Debug for One {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("One")
            }
        }
        impl Collector for One {
            fn encode(&self, e: DescriptorEncoder<'_>) -> fmt::Result {
                encode_sample(e, &self.0)
            }
        }
        let sample = x0_telemetry::Sample::empty(std::time::Instant::now(), &[("eth0".into(), 2)]);
        let mut m = crate::metrics::MetricsRegistry::new();
        m.registry_mut().register_collector(Box::new(One(sample)));
        let text = m.encode(crate::metrics::Exposition::Prometheus).unwrap();
        for dir in ["ingress", "egress"] {
            for proto in ["udp", "tcp", "icmp", "other"] {
                for name in [
                    "x0t_ebpf_underlay_packets_total",
                    "x0t_ebpf_underlay_bytes_total",
                ] {
                    let series = format!(
                        "{name}{{interface=\"eth0\",direction=\"{dir}\",protocol=\"{proto}\"}} 0\n"
                    );
                    assert!(text.contains(&series), "no {series} in\n{text}");
                }
            }
        }
        for kind in ["truncated_ethernet", "truncated_ip", "bad_ip_header"] {
            let series = format!(
                "x0t_ebpf_underlay_malformed_packets_total{{interface=\"eth0\",kind=\"{kind}\"}} 0\n"
            );
            assert!(text.contains(&series), "no {series} in\n{text}");
        }
        assert!(
            text.contains("\nx0t_ebpf_tcp_retransmits_total 0\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE x0t_ebpf_kernel_drops_total counter"),
            "{text}"
        );
    }
}
