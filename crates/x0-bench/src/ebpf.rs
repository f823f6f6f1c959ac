//! `x0t bench ebpf-overhead`: what the `x0-telemetry` programs cost the traffic they count.
//!
//! A 1-hop lab (`x0-lab`: namespaces n0 and n1 joined by one veth, no overlay) carries iperf3
//! TCP from n0 to n1 over the raw underlay. The runs come in pairs, one without and one with
//! the programs attached, in ABBA order (without/with, with/without, …) so that a slow drift
//! of the machine falls on both sides alike. "With" means what a daemon on each host attaches:
//! the underlay counter (`--hook`: TCX ingress + egress, or generic XDP) on the veth end inside
//! each namespace, and the drop, retransmit and TCP state tracepoints once (they see the whole
//! host, so a second set would be a cost no deployment pays). The programs are attached before
//! a "with" run and detached after it; loading and verifying them is outside the timed part.
//!
//! Every "with" run must show that the programs really counted the traffic: the receiver's
//! counter must hold at least the bytes iperf3 delivered and packets of the right order of
//! magnitude for the segments those bytes need, and the tracepoints must have seen the
//! iperf3 connections change state. A run whose counters stayed at zero is an error, not a
//! result. The counts go into the report next to the throughput.
//!
//! The lab is removed when the bench ends, also on failure (the armed `Lab` guard); the
//! programs are detached before it (each `Telemetry` is dropped first).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use serde::Serialize;
use x0_lab::{Lab, LabName, LabSpec, Shape, SpawnOptions, Topology};
use x0_telemetry::{
    Direction, FlowCounters, Protocol, Sample, Telemetry, TelemetryConfig, TelemetryError,
    UnderlayHook, XdpAttachMode,
};

use x0_node::exit::{self, CmdResult, Exit};

/// Issue 5's goal: the programs cost less than 1 % of the throughput.
const TARGET_PERCENT: f64 = 1.0;
const TARGET: &str = "< 1 %";
/// Where `ip netns` keeps its named namespaces.
const NETNS_DIR: &str = "/run/netns";
const IPERF_PORT: u16 = 5201;
/// Flow table size of each underlay counter (a handful of flows are used).
const MAX_FLOWS: u32 = 4096;
/// A "with" run under the TC hook must count at least this share of the TCP segments the
/// delivered bytes need: the same order of magnitude.
const MIN_SEGMENT_SHARE: f64 = 0.1;
/// Most bytes one GSO/GRO packet carries on a veth (`gso_max_size`, no BIG TCP): generic XDP
/// sees such a packet once, so this bounds its packet count from below.
const MAX_GSO_BYTES: u64 = 65_536;
/// Length of the unrecorded first run (ARP, server ready, caches warm).
const WARMUP_SECONDS: u32 = 1;

/// Where the underlay counter hooks in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Hook {
    /// TCX ingress and egress (the daemon's default).
    Tc,
    /// XDP in generic (skb) mode, received frames only.
    XdpGeneric,
}

impl Hook {
    fn name(self) -> &'static str {
        match self {
            Hook::Tc => "tc",
            Hook::XdpGeneric => "xdp-generic",
        }
    }

    fn underlay(self) -> UnderlayHook {
        match self {
            Hook::Tc => UnderlayHook::Tc,
            Hook::XdpGeneric => UnderlayHook::Xdp(XdpAttachMode::Generic),
        }
    }

    fn programs(self) -> Vec<&'static str> {
        let underlay: &[&'static str] = match self {
            Hook::Tc => &[
                x0_telemetry::TC_INGRESS_PROGRAM,
                x0_telemetry::TC_EGRESS_PROGRAM,
            ],
            Hook::XdpGeneric => &[x0_telemetry::XDP_PROGRAM],
        };
        underlay
            .iter()
            .copied()
            .chain(x0_telemetry::TRACEPOINT_PROGRAMS.iter().map(|(p, _)| *p))
            .collect()
    }
}

/// Arguments of `x0t bench ebpf-overhead`.
#[derive(Debug, Args)]
pub struct EbpfOverheadArgs {
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Pairs of runs, one without and one with the programs (ABBA order).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub runs: u32,
    /// Seconds per iperf3 run.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=600))]
    pub seconds: u32,
    /// Parallel TCP streams.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub streams: u32,
    /// Where the underlay counter hooks in.
    #[arg(long, value_enum, default_value = "tc")]
    pub hook: Hook,
    /// Directory for ebpf-overhead.json.
    #[arg(long, default_value = "bench-results")]
    pub out: PathBuf,
}

/// Packets and bytes of one flow.
#[derive(Debug, Clone, Copy, Serialize)]
struct Counts {
    packets: u64,
    bytes: u64,
}

impl From<FlowCounters> for Counts {
    fn from(c: FlowCounters) -> Self {
        Self {
            packets: c.packets,
            bytes: c.bytes,
        }
    }
}

/// What the programs counted during one "with" run.
#[derive(Debug, Clone, Serialize)]
struct Counted {
    /// Loading, verifying and attaching every program (not part of the timed run).
    attach_ms: f64,
    /// Programs the kernel holds for this run (both namespaces).
    programs_loaded: usize,
    /// The TCP MSS iperf3 reported, for the segment estimate.
    mss: u64,
    /// Segments iperf3's delivered bytes need: ceil(bytes_received / mss).
    segments_estimated: u64,
    /// n1's counter, ingress, peer n0, TCP: the data as the receiver saw it.
    data_at_receiver: Counts,
    /// n0's counter, egress, peer n1, TCP: the data as the sender sent it (TC only).
    data_at_sender: Option<Counts>,
    /// n0's counter, ingress, peer n1, TCP: the receiver's ACKs.
    acks_at_sender: Counts,
    /// data_at_receiver.packets ÷ segments_estimated.
    packets_per_segment: f64,
    /// `inet_sock_set_state`, TCP, whole host.
    tcp_state_changes: u64,
    /// `tcp_retransmit_skb` for the peer n1.
    tcp_retransmits: u64,
    /// `kfree_skb`, every reason, whole host.
    kernel_drops: u64,
    /// The same by reason.
    kernel_drops_by_reason: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Serialize)]
struct RunRow {
    /// Position in the sequence (1-based).
    run: usize,
    /// The pair it belongs to (1-based).
    pair: u32,
    /// Whether the programs were attached.
    programs_attached: bool,
    mbps: f64,
    bytes_received: u64,
    retransmits: Option<u64>,
    /// iperf3's CPU use of the sending host, percent (its `host_total`).
    sender_cpu_percent: Option<f64>,
    /// And of the receiving end (`remote_total`).
    receiver_cpu_percent: Option<f64>,
    /// Both iperf3 processes' CPU time (their utime + stime, which takes in the softirq work
    /// done in their context) per byte delivered, nanoseconds.
    cpu_ns_per_byte: Option<f64>,
    /// What the programs counted (with runs only).
    counted: Option<Counted>,
}

/// The spread of one side's runs.
#[derive(Debug, Clone, Serialize)]
struct Spread {
    runs: usize,
    median_mbps: f64,
    mean_mbps: f64,
    min_mbps: f64,
    max_mbps: f64,
    /// (max − min) ÷ median, percent.
    range_percent: f64,
}

/// Per-pair overheads, (without − with) ÷ without, percent.
#[derive(Debug, Clone, Serialize)]
struct PairedOverhead {
    per_pair: Vec<f64>,
    median: f64,
    min: f64,
    max: f64,
}

#[derive(Debug, Serialize)]
struct Report {
    bench: &'static str,
    what: &'static str,
    hook: Hook,
    programs: Vec<&'static str>,
    tracepoints: bool,
    seconds: u32,
    streams: u32,
    pairs: u32,
    /// Median of the runs with the programs attached.
    with_mbps: f64,
    /// Median of the runs without.
    without_mbps: f64,
    /// (without_mbps − with_mbps) ÷ without_mbps × 100.
    overhead_percent: f64,
    paired_overhead_percent: PairedOverhead,
    with_spread: Spread,
    without_spread: Spread,
    /// Medians of the runs' cpu_ns_per_byte: a cost figure less swayed than throughput by
    /// other work on the machine.
    cpu_ns_per_byte_with: Option<f64>,
    cpu_ns_per_byte_without: Option<f64>,
    /// (with − without) ÷ without × 100 of those.
    cpu_overhead_percent: Option<f64>,
    /// The larger of the two sides' range_percent: how far runs of one kind wander.
    noise_percent: f64,
    /// Whether every pair puts the overhead on the same side of the target; when they
    /// disagree, the noise is larger than what the target asks to tell apart.
    conclusive: bool,
    /// One sentence on what the pairs say.
    verdict: String,
    target: &'static str,
    target_percent: f64,
    met: bool,
    warmup_mbps: f64,
    /// The 1-minute load average before the first and after the last run: other work on the
    /// machine shows here.
    load_average: [Option<f64>; 2],
    runs: Vec<RunRow>,
    path: String,
    mtu: u32,
    kernel: String,
    iperf3: String,
    notes: Vec<String>,
    build_profile: &'static str,
    cores: usize,
    unix_time: u64,
}

fn progress(msg: impl AsRef<str>) {
    eprintln!("[ebpf-overhead] {}", msg.as_ref());
}

fn fail(e: impl std::fmt::Display) -> Exit {
    Exit::failure(format!("bench ebpf-overhead: {e}"))
}

/// Not root → 77, missing tool → 69 (as the lab does); a kernel that refuses for lack of
/// privileges → 77; a hook this kernel cannot do → 69; anything else → 1.
fn telemetry_exit(node: &str, e: &TelemetryError) -> Exit {
    let code = if e.is_permission_error() {
        exit::NO_PERM
    } else if matches!(e, TelemetryError::Config { .. }) {
        crate::lab::UNAVAILABLE
    } else {
        exit::FAILURE
    };
    Exit::new(
        code,
        format!("bench ebpf-overhead: attaching the eBPF programs in {node}: {e}"),
    )
}

/// The two ends of the veth.
struct VethEnds {
    sender_iface: String,
    sender_addr: Ipv4Addr,
    sender_netns: PathBuf,
    receiver_iface: String,
    receiver_addr: Ipv4Addr,
    receiver_netns: PathBuf,
}

impl VethEnds {
    fn of(lab: &Lab) -> Result<Self, Exit> {
        let towards = |node: usize| {
            lab.neighbours(node)
                .map_err(crate::lab::lab_exit)?
                .into_iter()
                .next()
                .ok_or_else(|| fail(format!("n{node} has no link")))
        };
        let netns = |node: usize| {
            lab.netns(node)
                .map(|ns| Path::new(NETNS_DIR).join(ns))
                .map_err(crate::lab::lab_exit)
        };
        let at_sender = towards(0)?;
        let at_receiver = towards(1)?;
        Ok(Self {
            sender_iface: at_sender.iface,
            sender_addr: at_sender.local_addr,
            sender_netns: netns(0)?,
            receiver_iface: at_receiver.iface,
            receiver_addr: at_receiver.local_addr,
            receiver_netns: netns(1)?,
        })
    }
}

/// The programs of one "with" run; dropping it detaches and unloads them.
struct Attached {
    sender: Telemetry,
    receiver: Telemetry,
    attach_ms: f64,
}

impl Attached {
    fn start(path: &VethEnds, hook: Hook) -> Result<Self, Exit> {
        let started = Instant::now();
        let sender = Telemetry::start(&TelemetryConfig {
            interfaces: vec![path.sender_iface.clone()],
            netns: Some(path.sender_netns.clone()),
            hook: hook.underlay(),
            tracepoints: true,
            max_flows: MAX_FLOWS,
        })
        .map_err(|e| telemetry_exit("n0", &e))?;
        // The tracepoints see every namespace: one set for the host, as one daemon per host
        // would attach.
        let receiver = Telemetry::start(&TelemetryConfig {
            interfaces: vec![path.receiver_iface.clone()],
            netns: Some(path.receiver_netns.clone()),
            hook: hook.underlay(),
            tracepoints: false,
            max_flows: MAX_FLOWS,
        })
        .map_err(|e| telemetry_exit("n1", &e))?;
        Ok(Self {
            sender,
            receiver,
            attach_ms: started.elapsed().as_secs_f64() * 1e3,
        })
    }

    fn sample(&self) -> Result<(Sample, Sample), Exit> {
        let read = |t: &Telemetry| {
            t.sample()
                .map_err(|e| fail(format!("reading counters: {e}")))
        };
        Ok((read(&self.sender)?, read(&self.receiver)?))
    }
}

struct IperfRun {
    mbps: f64,
    bytes_received: u64,
    seconds: f64,
    retransmits: Option<u64>,
    mss: Option<u64>,
    sender_cpu_percent: Option<f64>,
    receiver_cpu_percent: Option<f64>,
}

fn iperf(lab: &Lab, target: Ipv4Addr, seconds: u32, streams: u32) -> Result<IperfRun, Exit> {
    let target = target.to_string();
    let (secs, parallel, port) = (
        seconds.to_string(),
        streams.to_string(),
        IPERF_PORT.to_string(),
    );
    let out = lab
        .exec(
            0,
            &[
                "iperf3",
                "-c",
                &target,
                "-p",
                &port,
                "-t",
                &secs,
                "-P",
                &parallel,
                "-J",
                "--connect-timeout",
                "5000",
            ],
        )
        .map_err(crate::lab::lab_exit)?;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| fail(format!("iperf3 printed no JSON ({e}): {}", out.status)))?;
    if let Some(err) = json.get("error").and_then(|e| e.as_str()) {
        return Err(fail(format!("iperf3: {err}")));
    }
    let end = &json["end"];
    let received = &end["sum_received"];
    let bps = received["bits_per_second"]
        .as_f64()
        .ok_or_else(|| fail("iperf3 JSON has no end.sum_received.bits_per_second"))?;
    let bytes_received = received["bytes"]
        .as_u64()
        .ok_or_else(|| fail("iperf3 JSON has no end.sum_received.bytes"))?;
    let cpu = &end["cpu_utilization_percent"];
    Ok(IperfRun {
        mbps: bps / 1e6,
        bytes_received,
        seconds: received["seconds"].as_f64().unwrap_or(f64::from(seconds)),
        retransmits: end["sum_sent"]["retransmits"].as_u64(),
        mss: json["start"]["tcp_mss_default"].as_u64().filter(|&m| m > 0),
        sender_cpu_percent: cpu["host_total"].as_f64(),
        receiver_cpu_percent: cpu["remote_total"].as_f64(),
    })
}

/// Waits until n1's iperf3 server listens (or has died).
fn wait_listening(lab: &mut Lab, pid: u32, log: &Path) -> Result<(), Exit> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let filter = format!("sport = :{IPERF_PORT}");
    loop {
        let out = lab
            .exec(1, &["ss", "-Hltn", &filter])
            .map_err(crate::lab::lab_exit)?;
        if out.status.success() && !out.stdout.trim_ascii().is_empty() {
            return Ok(());
        }
        if let Some(status) = lab.try_wait(pid) {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            return Err(fail(format!(
                "the iperf3 server in n1 exited ({status}): {}",
                text.trim()
            )));
        }
        if Instant::now() > deadline {
            return Err(fail("the iperf3 server in n1 did not listen within 5 s"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What the programs counted in one run, checked against what iperf3 moved. A counter that
/// missed the traffic makes the run an error.
fn counted(
    hook: Hook,
    path: &VethEnds,
    attached: &Attached,
    before: &(Sample, Sample),
    after: &(Sample, Sample),
    run: &IperfRun,
    mtu: u32,
) -> Result<Counted, Exit> {
    let sender = after.0.since(&before.0);
    let receiver = after.1.since(&before.1);
    let interface = |s: &Sample, name: &str, node: &str| {
        s.interface(name)
            .cloned()
            .ok_or_else(|| fail(format!("no counters for {name} in {node}")))
    };
    let at_sender = interface(&sender, &path.sender_iface, "n0")?;
    let at_receiver = interface(&receiver, &path.receiver_iface, "n1")?;
    let from_sender = IpAddr::V4(path.sender_addr);
    let to_receiver = IpAddr::V4(path.receiver_addr);

    let data_at_receiver: Counts = at_receiver
        .flow(Direction::Ingress, from_sender, Protocol::Tcp)
        .into();
    let data_at_sender = (hook == Hook::Tc)
        .then(|| Counts::from(at_sender.flow(Direction::Egress, to_receiver, Protocol::Tcp)));
    let acks_at_sender: Counts = at_sender
        .flow(Direction::Ingress, to_receiver, Protocol::Tcp)
        .into();
    // IPv4 without options, TCP with timestamps.
    let mss = run
        .mss
        .unwrap_or_else(|| u64::from(mtu.saturating_sub(52)).max(1));
    let segments = run.bytes_received.div_ceil(mss);
    let counts = Counted {
        attach_ms: attached.attach_ms,
        programs_loaded: attached.sender.program_ids().len()
            + attached.receiver.program_ids().len(),
        mss,
        segments_estimated: segments,
        data_at_receiver,
        data_at_sender,
        acks_at_sender,
        packets_per_segment: data_at_receiver.packets as f64 / segments.max(1) as f64,
        tcp_state_changes: sender.tcp_state_changes.values().sum(),
        tcp_retransmits: sender
            .tcp_retransmits
            .get(&to_receiver)
            .copied()
            .unwrap_or(0),
        kernel_drops: sender.drops_total(),
        kernel_drops_by_reason: sender.drops.iter().fold(
            BTreeMap::new(),
            |mut by_name, (reason, &n)| {
                *by_name.entry(reason.name.clone()).or_default() += n;
                by_name
            },
        ),
    };

    let refuse = |why: String| {
        Err(fail(format!(
            "the {} counter missed the traffic, so this is no measurement: {why}",
            hook.name()
        )))
    };
    if data_at_receiver.packets == 0 {
        return refuse(format!(
            "n1 counted 0 TCP packets from {from_sender} while iperf3 delivered {} bytes",
            run.bytes_received
        ));
    }
    if data_at_sender.is_some_and(|c| c.packets == 0) || acks_at_sender.packets == 0 {
        return refuse(format!(
            "n0 counted {} TCP packets to and {} from {to_receiver}",
            data_at_sender.map_or(0, |c| c.packets),
            acks_at_sender.packets
        ));
    }
    if data_at_receiver.bytes < run.bytes_received {
        return refuse(format!(
            "n1 counted {} bytes from {from_sender}, fewer than the {} iperf3 delivered",
            data_at_receiver.bytes, run.bytes_received
        ));
    }
    // TC counts a GSO/GRO packet as its segments; generic XDP sees it once, as one frame of
    // up to 64 KiB.
    let floor = match hook {
        Hook::Tc => (segments as f64 * MIN_SEGMENT_SHARE).ceil() as u64,
        Hook::XdpGeneric => run.bytes_received.div_ceil(MAX_GSO_BYTES),
    };
    if data_at_receiver.packets < floor {
        return refuse(format!(
            "n1 counted {} TCP packets from {from_sender}, below the {floor} that {} bytes \
             need at MSS {mss}",
            data_at_receiver.packets, run.bytes_received
        ));
    }
    if counts.tcp_state_changes == 0 {
        return Err(fail(
            "the inet_sock_set_state tracepoint counted no TCP state change while iperf3 \
             opened and closed its connections",
        ));
    }
    Ok(counts)
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn spread(values: &[f64]) -> Spread {
    let median_mbps = median(values);
    let min_mbps = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max_mbps = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let n = values.len().max(1) as f64;
    Spread {
        runs: values.len(),
        median_mbps,
        mean_mbps: values.iter().sum::<f64>() / n,
        min_mbps,
        max_mbps,
        range_percent: if median_mbps > 0.0 {
            (max_mbps - min_mbps) / median_mbps * 100.0
        } else {
            0.0
        },
    }
}

fn overhead(without: f64, with: f64) -> f64 {
    if without > 0.0 {
        (without - with) / without * 100.0
    } else {
        0.0
    }
}

/// The 1-minute load average.
fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Whether the pairs agree on the side of the target, and a sentence saying so.
fn verdict(paired: &PairedOverhead) -> (bool, String) {
    let n = paired.per_pair.len();
    let range = format!("{:+.2} … {:+.2} %", paired.min, paired.max);
    if n < 2 {
        return (
            false,
            "one pair only: no estimate of the noise, not conclusive".into(),
        );
    }
    if paired.min >= TARGET_PERCENT {
        (
            true,
            format!("above the {TARGET} target in all {n} pairs ({range})"),
        )
    } else if paired.max < TARGET_PERCENT {
        (
            true,
            format!("below the {TARGET} target in all {n} pairs ({range})"),
        )
    } else {
        (
            false,
            format!(
                "not conclusive: the {n} pairs fall on both sides of the {TARGET} target \
                 ({range}); the noise is larger than the effect the target asks to resolve"
            ),
        )
    }
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}

fn iperf3_version() -> String {
    x0_lab::tools::run("iperf3", &["--version"], None)
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "unknown".into())
}

/// Without (false) and with (true) the programs, pair by pair in ABBA order.
fn schedule(pairs: u32) -> impl Iterator<Item = (u32, bool)> {
    (0..pairs).flat_map(|p| {
        let order = if p % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        order.map(move |attached| (p + 1, attached))
    })
}

/// Runs `x0t bench ebpf-overhead`.
pub fn run(args: EbpfOverheadArgs) -> CmdResult {
    crate::lab::require_tools(&[("iperf3", "iperf3"), ("ss", "iproute2")])?;
    let name = LabName::new(&format!("ebpf{}", std::process::id())).map_err(fail)?;
    let topology = Topology::generate(Shape::Line, 2).map_err(fail)?;
    // Dropped last: on any error below the programs are detached first, then the lab goes.
    let mut lab = Lab::up(&LabSpec::new(name, topology)).map_err(crate::lab::lab_exit)?;
    let path = VethEnds::of(&lab)?;
    let mtu = lab
        .mtu(0, &path.sender_iface)
        .map_err(crate::lab::lab_exit)?;
    progress(format!(
        "lab {} up: n0 {} ({}) → n1 {} ({}), one veth, MTU {mtu}",
        lab.name(),
        path.sender_addr,
        path.sender_iface,
        path.receiver_addr,
        path.receiver_iface
    ));

    let log = lab.dir().join("iperf3-server.log");
    let receiver = path.receiver_addr.to_string();
    let port = IPERF_PORT.to_string();
    let server = lab
        .spawn(
            1,
            "iperf3-server",
            &["iperf3", "-s", "-B", &receiver, "-p", &port],
            &SpawnOptions {
                log: Some(log.clone()),
                detach: false,
            },
        )
        .map_err(crate::lab::lab_exit)?;
    wait_listening(&mut lab, server.pid, &log)?;

    let warmup = iperf(&lab, path.receiver_addr, WARMUP_SECONDS, args.streams)?;
    let load_before = load_average();
    progress(format!(
        "warm-up ({WARMUP_SECONDS} s, not counted): {:.0} Mbit/s",
        warmup.mbps
    ));

    let total = args.runs as usize * 2;
    let mut runs = Vec::with_capacity(total);
    for (i, (pair, attached)) in schedule(args.runs).enumerate() {
        let label = format!("run {}/{total} (pair {pair})", i + 1);
        let row = if attached {
            let programs = Attached::start(&path, args.hook)?;
            progress(format!(
                "{label}: with {} + tracepoints ({} programs, attached in {:.0} ms), {} s …",
                args.hook.name(),
                programs.sender.program_ids().len() + programs.receiver.program_ids().len(),
                programs.attach_ms,
                args.seconds
            ));
            let before = programs.sample()?;
            let r = iperf(&lab, path.receiver_addr, args.seconds, args.streams)?;
            let after = programs.sample()?;
            let counts = counted(args.hook, &path, &programs, &before, &after, &r, mtu)?;
            drop(programs);
            progress(format!(
                "{label}: {:.0} Mbit/s; n1 counted {} TCP packets, {} bytes from n0 ({:.2} per \
                 segment of {} B), {} TCP state changes",
                r.mbps,
                counts.data_at_receiver.packets,
                counts.data_at_receiver.bytes,
                counts.packets_per_segment,
                counts.mss,
                counts.tcp_state_changes
            ));
            row(i, pair, &r, Some(counts))
        } else {
            progress(format!("{label}: without programs, {} s …", args.seconds));
            let r = iperf(&lab, path.receiver_addr, args.seconds, args.streams)?;
            progress(format!("{label}: {:.0} Mbit/s", r.mbps));
            row(i, pair, &r, None)
        };
        runs.push(row);
    }

    let load_average = [load_before, load_average()];
    let report = summarise(&args, runs, warmup.mbps, mtu, load_average);
    let teardown = lab.down();
    if !teardown.errors.is_empty() {
        return Err(fail(format!("teardown: {}", teardown.errors.join("; "))));
    }
    let (text, file) = crate::report::write_report(&report, &args.out, "ebpf-overhead.json")?;
    if args.json {
        println!("{text}");
    } else {
        print_table(&report, &file);
    }
    Ok(())
}

fn row(i: usize, pair: u32, r: &IperfRun, counted: Option<Counted>) -> RunRow {
    RunRow {
        run: i + 1,
        pair,
        programs_attached: counted.is_some(),
        mbps: r.mbps,
        bytes_received: r.bytes_received,
        retransmits: r.retransmits,
        sender_cpu_percent: r.sender_cpu_percent,
        receiver_cpu_percent: r.receiver_cpu_percent,
        cpu_ns_per_byte: match (r.sender_cpu_percent, r.receiver_cpu_percent) {
            (Some(s), Some(c)) if r.bytes_received > 0 => {
                Some((s + c) / 100.0 * r.seconds / r.bytes_received as f64 * 1e9)
            }
            _ => None,
        },
        counted,
    }
}

fn summarise(
    args: &EbpfOverheadArgs,
    runs: Vec<RunRow>,
    warmup_mbps: f64,
    mtu: u32,
    load_average: [Option<f64>; 2],
) -> Report {
    let side = |attached: bool, figure: fn(&RunRow) -> Option<f64>| -> Vec<f64> {
        runs.iter()
            .filter(|r| r.programs_attached == attached)
            .filter_map(figure)
            .collect()
    };
    let (with, without) = (side(true, |r| Some(r.mbps)), side(false, |r| Some(r.mbps)));
    let cpu_median = |attached: bool| {
        let v = side(attached, |r| r.cpu_ns_per_byte);
        (!v.is_empty()).then(|| median(&v))
    };
    let (cpu_with, cpu_without) = (cpu_median(true), cpu_median(false));
    let per_pair: Vec<f64> = (1..=args.runs)
        .filter_map(|pair| {
            let mbps = |attached: bool| {
                runs.iter()
                    .find(|r| r.pair == pair && r.programs_attached == attached)
                    .map(|r| r.mbps)
            };
            Some(overhead(mbps(false)?, mbps(true)?))
        })
        .collect();
    let paired = PairedOverhead {
        median: median(&per_pair),
        min: per_pair.iter().copied().fold(f64::INFINITY, f64::min),
        max: per_pair.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        per_pair,
    };
    let (with_spread, without_spread) = (spread(&with), spread(&without));
    let (with_mbps, without_mbps) = (with_spread.median_mbps, without_spread.median_mbps);
    let overhead_percent = overhead(without_mbps, with_mbps);
    let noise_percent = with_spread.range_percent.max(without_spread.range_percent);
    let (conclusive, verdict) = verdict(&paired);
    Report {
        bench: "ebpf-overhead",
        what: "iperf3 TCP from n0 to n1 over one veth between two namespaces (raw underlay, no \
               overlay), alternating runs without and with the x0-telemetry programs attached \
               (ABBA order)",
        hook: args.hook,
        programs: args.hook.programs(),
        tracepoints: true,
        seconds: args.seconds,
        streams: args.streams,
        pairs: args.runs,
        with_mbps,
        without_mbps,
        overhead_percent,
        paired_overhead_percent: paired,
        with_spread,
        without_spread,
        cpu_ns_per_byte_with: cpu_with,
        cpu_ns_per_byte_without: cpu_without,
        cpu_overhead_percent: match (cpu_with, cpu_without) {
            (Some(w), Some(wo)) if wo > 0.0 => Some((w - wo) / wo * 100.0),
            _ => None,
        },
        noise_percent,
        conclusive,
        verdict,
        target: TARGET,
        target_percent: TARGET_PERCENT,
        met: overhead_percent < TARGET_PERCENT,
        warmup_mbps,
        load_average,
        runs,
        path: "n0 → n1, one veth pair, kernel TCP (no overlay)".into(),
        mtu,
        kernel: kernel_release(),
        iperf3: iperf3_version(),
        notes: vec![
            format!(
                "with: the {} underlay counter on the veth end in each namespace, and the \
                 kfree_skb, tcp_retransmit_skb and inet_sock_set_state tracepoints once for the \
                 host (they see every namespace); attached before each with-run and detached \
                 after it, outside the timed part",
                args.hook.name()
            ),
            "overhead_percent compares the medians; paired_overhead_percent compares the two \
             runs of each pair, which cancels drift slower than a pair"
                .into(),
            "noise_percent: the larger (max − min) ÷ median of the two sides; conclusive: \
             every pair's overhead on the same side of the target"
                .into(),
            "cpu_ns_per_byte: iperf3's own CPU figures (client host_total + server \
             remote_total, utime + stime) × duration ÷ bytes delivered; softirq work done in \
             ksoftirqd is not in it"
                .into(),
            "iperf3 client and server share this machine's cores with the kernel's veth path, \
             so the figures are CPU-bound: the programs' cost shows as lost throughput"
                .into(),
        ],
        build_profile: if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        cores: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        unix_time: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    }
}

fn shown(load: Option<f64>) -> String {
    load.map_or_else(|| "-".into(), |l| format!("{l:.2}"))
}

fn print_table(report: &Report, file: &Path) {
    println!(
        "eBPF overhead: iperf3 TCP, {} stream(s), {} s per run, n0 → n1 over one veth (MTU {}), \
         hook {} + tracepoints, {} pairs in ABBA order:",
        report.streams,
        report.seconds,
        report.mtu,
        report.hook.name(),
        report.pairs
    );
    println!(
        "  {:>3} {:>4} {:>8} {:>10} {:>8} {:>14} {:>10}",
        "run", "pair", "programs", "Mbit/s", "retrans", "counted pkts", "pkts/seg"
    );
    for r in &report.runs {
        println!(
            "  {:>3} {:>4} {:>8} {:>10.0} {:>8} {:>14} {:>10}",
            r.run,
            r.pair,
            if r.programs_attached {
                "with"
            } else {
                "without"
            },
            r.mbps,
            r.retransmits.map_or_else(|| "-".into(), |v| v.to_string()),
            r.counted
                .as_ref()
                .map_or_else(|| "-".into(), |c| c.data_at_receiver.packets.to_string()),
            r.counted
                .as_ref()
                .map_or_else(|| "-".into(), |c| format!("{:.2}", c.packets_per_segment)),
        );
    }
    for (label, s) in [
        ("without", &report.without_spread),
        ("with", &report.with_spread),
    ] {
        println!(
            "  {label:<8} median {:.0} Mbit/s (min {:.0}, max {:.0}, range {:.1} %)",
            s.median_mbps, s.min_mbps, s.max_mbps, s.range_percent
        );
    }
    let p = &report.paired_overhead_percent;
    println!(
        "  overhead {:+.2} % of the median (per pair: median {:+.2} %, {:+.2} … {:+.2} %); \
         target {}: {}",
        report.overhead_percent,
        p.median,
        p.min,
        p.max,
        report.target,
        if report.met { "met" } else { "MISSED" }
    );
    if let (Some(with), Some(without), Some(cpu)) = (
        report.cpu_ns_per_byte_with,
        report.cpu_ns_per_byte_without,
        report.cpu_overhead_percent,
    ) {
        println!("  iperf3 CPU per byte: {without:.3} ns without, {with:.3} ns with ({cpu:+.2} %)");
    }
    println!("  {}", report.verdict);
    if !report.conclusive {
        println!(
            "  note: runs of one kind vary by up to {:.1} %; more pairs on an otherwise idle \
             machine narrow it (load average {} before, {} after)",
            report.noise_percent,
            shown(report.load_average[0]),
            shown(report.load_average[1])
        );
    }
    println!("written to {}", file.display());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_alternate_abba() {
        let order: Vec<(u32, bool)> = schedule(3).collect();
        assert_eq!(
            order,
            [
                (1, false),
                (1, true),
                (2, true),
                (2, false),
                (3, false),
                (3, true)
            ]
        );
    }

    #[test]
    fn median_and_spread() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        let s = spread(&[90.0, 100.0, 110.0]);
        assert_eq!(
            (s.min_mbps, s.max_mbps, s.median_mbps),
            (90.0, 110.0, 100.0)
        );
        assert!((s.range_percent - 20.0).abs() < 1e-9);
        assert!((overhead(100.0, 99.0) - 1.0).abs() < 1e-9);
        assert!(overhead(100.0, 101.0) < 0.0);
    }

    #[test]
    fn verdict_needs_every_pair_on_one_side() {
        let paired = |per_pair: Vec<f64>| PairedOverhead {
            median: median(&per_pair),
            min: per_pair.iter().copied().fold(f64::INFINITY, f64::min),
            max: per_pair.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            per_pair,
        };
        assert!(verdict(&paired(vec![20.0, 25.0, 22.0])).0);
        assert!(verdict(&paired(vec![0.1, -0.5, 0.9])).0);
        let (conclusive, text) = verdict(&paired(vec![-2.0, 5.0, 8.0]));
        assert!(!conclusive);
        assert!(text.starts_with("not conclusive"), "{text}");
        assert!(!verdict(&paired(vec![0.2])).0);
    }
}
