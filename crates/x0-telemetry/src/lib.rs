//! Kernel telemetry for x0tta6bl4: eBPF programs that count what the kernel sees of the mesh's
//! traffic, and their reading as typed samples.
//!
//! Two objects, written in C, compiled with clang and committed next to their sources in
//! `bpf/` (so building this crate needs no clang; CI checks they match the sources):
//!
//! | Program | Hook | Counts |
//! |---|---|---|
//! | `x0_tc_ingress`, `x0_tc_egress` | TCX ingress and egress on each underlay interface (the default) | packets and bytes per (direction, peer, protocol); non-IP frames; malformed frames |
//! | `x0_xdp_count` | XDP on each underlay interface (instead of TC, receive side only) | the same, received only |
//! | `x0_kfree_skb` | `tp_btf/kfree_skb` | packets the kernel dropped, per drop reason |
//! | `x0_tcp_retransmit` | `tp_btf/tcp_retransmit_skb` | TCP retransmissions per remote address |
//! | `x0_inet_sock_set_state` | `tp_btf/inet_sock_set_state` | TCP state transitions |
//!
//! The underlay programs never drop: every frame passes on. The tracepoints see the whole host
//! (every network namespace); the underlay counters see the configured interfaces.
//!
//! [`Telemetry::start`] loads and attaches everything (with aya 0.14) or fails with a
//! [`TelemetryError`] that says why in one sentence; [`TelemetryError::is_permission_error`]
//! tells the daemon to run on without eBPF (`x0t_ebpf_enabled 0`). [`Telemetry::sample`]
//! reads cumulative counters, [`Telemetry::next_delta`] the counts since the previous call:
//! the stream the self-healing loop consumes. [`Telemetry::program_run_stats`] reads the
//! kernel's run time and run count of each program while [`RunTimeStats`] is held. Dropping
//! the [`Telemetry`] detaches and unloads every program. `docs/ebpf.md` has the details and the kernel requirements.
//!
//! ```no_run
//! use x0_telemetry::{Telemetry, TelemetryConfig};
//!
//! let config = TelemetryConfig {
//!     interfaces: vec!["eth0".into()],
//!     ..TelemetryConfig::default()
//! };
//! let mut telemetry = match Telemetry::start(&config) {
//!     Ok(t) => Some(t),
//!     Err(e) => {
//!         // Said once; the daemon runs on and reports x0t_ebpf_enabled 0.
//!         eprintln!("eBPF telemetry off (permission: {}): {e}", e.is_permission_error());
//!         None
//!     }
//! };
//! if let Some(telemetry) = &mut telemetry {
//!     let delta = telemetry.next_delta()?; // on every tick of the monitoring loop
//!     for (reason, count) in &delta.counts.drops {
//!         println!("{reason}: {count} drops in {:?}", delta.elapsed);
//!     }
//! }
//! # Ok::<(), x0_telemetry::TelemetryError>(())
//! ```

#![warn(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

mod btf;
mod caps;
mod drop_reason;
mod error;
mod maps;
mod netns;
pub mod objects;
mod run_stats;
mod sample;

use std::path::PathBuf;
use std::time::Instant;

use aya::programs::links::LinkOrder;
use aya::programs::tc::TcAttachOptions;
use aya::programs::{BtfTracePoint, SchedClassifier, TcAttachType, Xdp};
use aya::{Btf, Ebpf, EbpfLoader, Endianness};

pub use btf::BtfReadError;
pub use drop_reason::{DropReason, DropReasonNames};
pub use error::TelemetryError;
pub use run_stats::{ProgramRunStats, RunTimeStats};
pub use sample::{
    Delta, Direction, FlowCounters, FlowKey, InterfaceSample, MalformedKind, Protocol, Sample,
    TcpState, TcpTransition,
};

/// Where the kernel publishes its own BTF.
pub const KERNEL_BTF_PATH: &str = "/sys/kernel/btf/vmlinux";

/// The XDP program's name in `underlay.o`.
pub const XDP_PROGRAM: &str = "x0_xdp_count";
/// The TC ingress program's name in `underlay.o`.
pub const TC_INGRESS_PROGRAM: &str = "x0_tc_ingress";
/// The TC egress program's name in `underlay.o`.
pub const TC_EGRESS_PROGRAM: &str = "x0_tc_egress";

/// The tracing programs in `tracepoints.o` and the tracepoint each attaches to.
pub const TRACEPOINT_PROGRAMS: [(&str, &str); 3] = [
    ("x0_kfree_skb", "kfree_skb"),
    ("x0_tcp_retransmit", "tcp_retransmit_skb"),
    ("x0_inet_sock_set_state", "inet_sock_set_state"),
];

/// Longest interface name Linux accepts (`IFNAMSIZ` - 1).
const MAX_INTERFACE_NAME: usize = 15;

/// Where the underlay counter hooks into each interface.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum UnderlayHook {
    /// TCX ingress and egress (Linux ≥ 6.6): both directions, on the skb the stack already
    /// built, so GSO/GRO packets are counted as the segments they stand for without being
    /// copied; TCX links share the device with other programs. The default.
    #[default]
    Tc,
    /// XDP, receive side only. Generic mode costs 15–25 % of veth TCP throughput here (the
    /// stack copies GSO packets for it) and native mode on veth far more; on a NIC with native
    /// XDP it runs before the skb exists. Only one XDP program can hold a device.
    Xdp(XdpAttachMode),
}

/// How the XDP program is attached.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum XdpAttachMode {
    /// Generic (skb) mode: runs in the kernel's network stack after the skb is built. Works on
    /// every device, veth included, and leaves the driver's receive path as it was.
    #[default]
    Generic,
    /// Native (driver) mode: runs in the driver before the skb exists. Cheaper per packet on
    /// NICs that support it; the attach fails on devices that do not.
    Native,
    /// Let the kernel choose (native when the driver supports it, generic otherwise).
    KernelChoice,
}

impl XdpAttachMode {
    fn aya(self) -> aya::programs::XdpMode {
        match self {
            Self::Generic => aya::programs::XdpMode::Skb,
            Self::Native => aya::programs::XdpMode::Driver,
            Self::KernelChoice => aya::programs::XdpMode::Default,
        }
    }
}

/// What to attach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TelemetryConfig {
    /// Underlay interfaces to count traffic on. Empty: no underlay program is loaded.
    pub interfaces: Vec<String>,
    /// The network namespace the interfaces live in (a path such as `/run/netns/NAME`);
    /// `None` for the caller's own. The tracepoints always see every namespace.
    pub netns: Option<PathBuf>,
    /// Where the underlay counter hooks in.
    pub hook: UnderlayHook,
    /// Attach the drop, retransmit and TCP state tracepoints (needs kernel BTF, Linux ≥ 5.17).
    pub tracepoints: bool,
    /// Most (interface, direction, peer, protocol) flows the underlay counter tracks in its
    /// table, besides the first four flows of each CPU, which it keeps in per-CPU slots; later
    /// ones are counted in [`InterfaceSample::flow_table_full`]. Also the most peers tracked
    /// for retransmits.
    pub max_flows: u32,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            interfaces: Vec::new(),
            netns: None,
            hook: UnderlayHook::Tc,
            tracepoints: true,
            max_flows: 4096,
        }
    }
}

impl TelemetryConfig {
    fn validate(&self) -> Result<(), TelemetryError> {
        let bad = |key, reason: String| Err(TelemetryError::Config { key, reason });
        if self.interfaces.is_empty() && !self.tracepoints {
            return bad(
                "interfaces",
                "no interfaces and no tracepoints: nothing to attach".into(),
            );
        }
        for (i, name) in self.interfaces.iter().enumerate() {
            if name.is_empty()
                || name.len() > MAX_INTERFACE_NAME
                || name.contains(['/', '\0'])
                || name.chars().any(char::is_whitespace)
            {
                return bad(
                    "interfaces",
                    format!("`{name}` is not an interface name (1–15 bytes, no '/' or spaces)"),
                );
            }
            if self.interfaces[..i].contains(name) {
                return bad("interfaces", format!("`{name}` is listed twice"));
            }
        }
        if self.max_flows == 0 || self.max_flows > 1 << 20 {
            return bad(
                "max_flows",
                format!("{} is outside 1..=1048576", self.max_flows),
            );
        }
        Ok(())
    }
}

/// An interface the underlay counter is attached to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachedInterface {
    /// Its name.
    pub name: String,
    /// Its index in its network namespace.
    pub ifindex: u32,
}

/// The loaded and attached programs. Dropping it detaches and unloads them all.
#[derive(Debug)]
pub struct Telemetry {
    underlay: Option<Ebpf>,
    tracing: Option<Ebpf>,
    interfaces: Vec<AttachedInterface>,
    drop_names: DropReasonNames,
    started_at: Instant,
    last: Option<Sample>,
}

impl Telemetry {
    /// Loads the programs and attaches them as `config` says. All or nothing: on an error,
    /// whatever was attached is detached again.
    pub fn start(config: &TelemetryConfig) -> Result<Self, TelemetryError> {
        config.validate()?;
        let underlay = !config.interfaces.is_empty();
        let needed = caps::needed(underlay, config.tracepoints);
        if let Some(effective) = caps::effective() {
            let missing = caps::missing(effective, &needed);
            if !missing.is_empty() {
                return Err(TelemetryError::PermissionDenied {
                    needed: needed.iter().map(|c| c.name).collect(),
                    missing,
                });
            }
        }

        let mut telemetry = Self {
            underlay: None,
            tracing: None,
            interfaces: Vec::new(),
            drop_names: DropReasonNames::default(),
            started_at: Instant::now(),
            last: None,
        };
        if underlay {
            let (ebpf, interfaces) = start_underlay(config)?;
            telemetry.underlay = Some(ebpf);
            telemetry.interfaces = interfaces;
        }
        if config.tracepoints {
            let (ebpf, names) = start_tracepoints(config)?;
            telemetry.tracing = Some(ebpf);
            telemetry.drop_names = names;
        }
        telemetry.started_at = Instant::now();
        Ok(telemetry)
    }

    /// The interfaces the underlay counter is attached to, in configuration order.
    pub fn interfaces(&self) -> &[AttachedInterface] {
        &self.interfaces
    }

    /// True when the tracepoints are attached.
    pub fn tracepoints_attached(&self) -> bool {
        self.tracing.is_some()
    }

    /// The kernel's ids of the loaded programs (for `bpftool prog show id N`).
    pub fn program_ids(&self) -> Vec<u32> {
        self.underlay
            .iter()
            .chain(self.tracing.iter())
            .flat_map(|ebpf| ebpf.programs())
            .filter_map(|(_, program)| program.info().ok())
            .map(|info| info.id())
            .collect()
    }

    /// Every loaded program's run time and run count, as the kernel keeps them while
    /// [`RunTimeStats`] (or the sysctl `kernel.bpf_stats_enabled`) is on; zero otherwise.
    pub fn program_run_stats(&self) -> Result<Vec<ProgramRunStats>, TelemetryError> {
        self.underlay
            .iter()
            .chain(self.tracing.iter())
            .flat_map(|ebpf| ebpf.programs())
            .filter_map(|(name, program)| {
                let info = match program.info() {
                    Ok(info) => info,
                    // In the object but not used by this configuration (XDP under TC).
                    Err(aya::programs::ProgramError::NotLoaded) => return None,
                    Err(cause) => {
                        return Some(Err(TelemetryError::ProgramInfo {
                            program: name.to_owned(),
                            cause: Box::new(cause),
                        }));
                    }
                };
                Some(Ok(ProgramRunStats {
                    name: name.to_owned(),
                    id: info.id(),
                    run_time_ns: u64::try_from(info.run_time().as_nanos()).unwrap_or(u64::MAX),
                    run_count: info.run_count(),
                }))
            })
            .collect()
    }

    /// The drop reason names read from the kernel at start.
    pub fn drop_reason_names(&self) -> &DropReasonNames {
        &self.drop_names
    }

    /// Every counter since the programs were attached.
    pub fn sample(&self) -> Result<Sample, TelemetryError> {
        let mut sample = self.zero(Instant::now());
        if let Some(underlay) = &self.underlay {
            maps::read_underlay(underlay, &mut sample)?;
        }
        if let Some(tracing) = &self.tracing {
            maps::read_tracepoints(tracing, &self.drop_names, &mut sample)?;
        }
        Ok(sample)
    }

    /// The counts since the previous call (the first call: since start). Call it on a timer
    /// to get a stream of intervals.
    pub fn next_delta(&mut self) -> Result<Delta, TelemetryError> {
        let now = self.sample()?;
        let earlier = self
            .last
            .take()
            .unwrap_or_else(|| self.zero(self.started_at));
        let delta = Delta {
            elapsed: now.taken_at.saturating_duration_since(earlier.taken_at),
            counts: now.since(&earlier),
        };
        self.last = Some(now);
        Ok(delta)
    }

    fn zero(&self, at: Instant) -> Sample {
        let interfaces: Vec<(String, u32)> = self
            .interfaces
            .iter()
            .map(|i| (i.name.clone(), i.ifindex))
            .collect();
        Sample::empty(at, &interfaces)
    }
}

fn start_underlay(
    config: &TelemetryConfig,
) -> Result<(Ebpf, Vec<AttachedInterface>), TelemetryError> {
    const OBJECT: &str = "underlay.o";
    if config.hook == UnderlayHook::Tc {
        let tcx = aya::util::KernelVersion::new(6, 6, 0);
        if let Ok(running) = aya::util::KernelVersion::current()
            && running < tcx
        {
            return Err(TelemetryError::Config {
                key: "hook",
                reason: format!(
                    "the TC hook needs TCX links (Linux 6.6 or later; this kernel is \
                     {running}); use the XDP hook"
                ),
            });
        }
    }
    let mut ebpf = EbpfLoader::new()
        .btf(None) // no CO-RE relocations in this object
        .map_max_entries(maps::FLOWS, config.max_flows)
        .load(objects::UNDERLAY)
        .map_err(|cause| TelemetryError::Load {
            object: OBJECT,
            cause: Box::new(cause),
        })?;
    let programs: &[&'static str] = match config.hook {
        UnderlayHook::Tc => &[TC_INGRESS_PROGRAM, TC_EGRESS_PROGRAM],
        UnderlayHook::Xdp(_) => &[XDP_PROGRAM],
    };
    for &name in programs {
        let program = ebpf
            .program_mut(name)
            .ok_or(TelemetryError::MissingInObject { item: name })?;
        let loaded = match program {
            aya::programs::Program::SchedClassifier(p) => p.load(),
            aya::programs::Program::Xdp(p) => p.load(),
            _ => return Err(TelemetryError::MissingInObject { item: name }),
        };
        loaded.map_err(|cause| program_error(name, "loading", OBJECT, cause))?;
    }

    let netns = config.netns.as_deref();
    let attached = netns::run_in(netns, || {
        let mut attached = Vec::new();
        for name in &config.interfaces {
            let ifindex = nix::net::if_::if_nametoindex(name.as_str()).map_err(|cause| {
                TelemetryError::NoSuchInterface {
                    name: name.clone(),
                    netns: config.netns.clone(),
                    cause,
                }
            })?;
            match config.hook {
                UnderlayHook::Tc => {
                    for (program, direction) in [
                        (TC_INGRESS_PROGRAM, TcAttachType::Ingress),
                        (TC_EGRESS_PROGRAM, TcAttachType::Egress),
                    ] {
                        let tc: &mut SchedClassifier = ebpf
                            .program_mut(program)
                            .ok_or(TelemetryError::MissingInObject { item: program })?
                            .try_into()
                            .map_err(|cause| program_error(program, "attaching", name, cause))?;
                        // TCX only (Linux 6.6+): a BPF link, detached by closing it from any
                        // thread. The netlink fallback would detach in the wrong namespace.
                        let order = TcAttachOptions::TcxOrder(LinkOrder::default());
                        tc.attach_with_options(name, direction, order)
                            .map_err(|cause| program_error(program, "attaching", name, cause))?;
                    }
                }
                UnderlayHook::Xdp(mode) => {
                    let xdp: &mut Xdp = ebpf
                        .program_mut(XDP_PROGRAM)
                        .ok_or(TelemetryError::MissingInObject { item: XDP_PROGRAM })?
                        .try_into()
                        .map_err(|cause| program_error(XDP_PROGRAM, "attaching", name, cause))?;
                    xdp.attach_to_if_index(ifindex, mode.aya())
                        .map_err(|cause| program_error(XDP_PROGRAM, "attaching", name, cause))?;
                }
            }
            attached.push(AttachedInterface {
                name: name.clone(),
                ifindex,
            });
        }
        Ok::<_, TelemetryError>(attached)
    })
    .map_err(|cause| TelemetryError::Netns {
        path: netns.map(PathBuf::from).unwrap_or_default(),
        cause,
    })??;
    Ok((ebpf, attached))
}

fn start_tracepoints(config: &TelemetryConfig) -> Result<(Ebpf, DropReasonNames), TelemetryError> {
    const OBJECT: &str = "tracepoints.o";
    let btf_error = |cause: Box<dyn std::error::Error + Send + Sync>| TelemetryError::KernelBtf {
        path: KERNEL_BTF_PATH,
        cause,
    };
    let raw = std::fs::read(KERNEL_BTF_PATH).map_err(|e| btf_error(Box::new(e)))?;
    let btf = Btf::parse(&raw, Endianness::default()).map_err(|e| btf_error(Box::new(e)))?;
    let names = DropReasonNames::from_btf(&raw).map_err(|e| btf_error(Box::new(e)))?;

    let mut ebpf = EbpfLoader::new()
        .btf(Some(&btf))
        .map_max_entries(maps::RETRANS, config.max_flows)
        .load(objects::TRACEPOINTS)
        .map_err(|cause| TelemetryError::Load {
            object: OBJECT,
            cause: Box::new(cause),
        })?;
    for (program_name, tracepoint) in TRACEPOINT_PROGRAMS {
        let program: &mut BtfTracePoint = ebpf
            .program_mut(program_name)
            .ok_or(TelemetryError::MissingInObject { item: program_name })?
            .try_into()
            .map_err(|cause| program_error(program_name, "loading", tracepoint, cause))?;
        program
            .load(tracepoint, &btf)
            .map_err(|cause| program_error(program_name, "loading", tracepoint, cause))?;
        program
            .attach()
            .map_err(|cause| program_error(program_name, "attaching", tracepoint, cause))?;
    }
    Ok((ebpf, names))
}

fn program_error(
    program: &'static str,
    action: &'static str,
    target: &str,
    cause: aya::programs::ProgramError,
) -> TelemetryError {
    TelemetryError::Program {
        program,
        action,
        target: target.to_owned(),
        cause: Box::new(cause),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(interfaces: &[&str]) -> TelemetryConfig {
        TelemetryConfig {
            interfaces: interfaces.iter().map(|s| s.to_string()).collect(),
            ..TelemetryConfig::default()
        }
    }

    #[test]
    fn config_validation_names_the_key() {
        assert!(config(&["eth0", "veth-x0-1"]).validate().is_ok());
        assert!(config(&[]).validate().is_ok(), "tracepoints alone are fine");
        for bad in [
            config(&[""]),
            config(&["a/b"]),
            config(&["has space"]),
            config(&["sixteen-chars-xx"]),
            config(&["eth0", "eth0"]),
        ] {
            let err = bad.validate().unwrap_err();
            assert!(
                matches!(
                    err,
                    TelemetryError::Config {
                        key: "interfaces",
                        ..
                    }
                ),
                "{err}"
            );
        }
        let nothing = TelemetryConfig {
            tracepoints: false,
            ..config(&[])
        };
        assert!(nothing.validate().is_err());
        let zero = TelemetryConfig {
            max_flows: 0,
            ..config(&["eth0"])
        };
        let err = zero.validate().unwrap_err();
        assert_eq!(
            err.to_string(),
            "telemetry config `max_flows`: 0 is outside 1..=1048576"
        );
    }

    #[test]
    fn telemetry_can_move_to_a_daemon_task() {
        fn send_and_sync<T: Send + Sync>() {}
        send_and_sync::<Telemetry>();
        send_and_sync::<Sample>();
        send_and_sync::<TelemetryError>();
    }

    #[test]
    fn a_bad_config_fails_before_any_kernel_call() {
        let err = Telemetry::start(&config(&["eth0", "eth0"])).unwrap_err();
        assert!(!err.is_permission_error());
    }
}
