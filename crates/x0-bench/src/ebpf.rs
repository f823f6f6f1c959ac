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
//! Three figures come out, each per pair and then as the mean of the pairs with its 95 %
//! interval ([`paired`]):
//!
//! * **The programs' share of the traffic's CPU cost**, the direct one. During the "with" runs
//!   the kernel's BPF run-time statistics are on ([`RunTimeStats`]: `BPF_ENABLE_STATS`, held
//!   only while the run lasts and released by the kernel even if this process dies): each
//!   program's run time and run count, read before and after the run, give nanoseconds per
//!   run and runs per packet (packets: both directions of n1's veth, `/proc/net/dev`). The
//!   "without" run of the same pair gives the CPU time the traffic cost without eBPF: both
//!   iperf3 processes' utime + stime, which on a kernel without `CONFIG_IRQ_TIME_ACCOUNTING`
//!   includes the softirq work done in their context (the whole veth receive path), per
//!   packet. Their ratio holds under load, because both sides are CPU time per packet: other
//!   work on the machine slows the traffic, not the cost of a packet.
//! * **Throughput, paired**: (without − with) ÷ without of each pair.
//! * **CPU time per packet, paired**: (with − without) ÷ without. It holds what the run-time
//!   statistics cannot see: the hook's own dispatch, and what a hook makes the stack do
//!   (generic XDP linearises every GSO packet).
//!
//! Without `--runs`, pairs are added until the throughput interval is narrower than
//! ±`--half-width` points, or `--max-runs` pairs were run. The rule looks at the width only,
//! never at where the interval lies, so it cannot steer the verdict.
//!
//! Every "with" run must show that the programs really counted the traffic: the receiver's
//! counter must hold at least the bytes iperf3 delivered and packets of the right order of
//! magnitude for the segments those bytes need, and the tracepoints must have seen the
//! iperf3 connections change state. A run whose counters stayed at zero is an error, not a
//! result.
//!
//! The lab is removed when the bench ends, also on failure (the armed `Lab` guard); the
//! programs are detached before it (each `Telemetry` is dropped first).

mod calibrate;
mod cost;
mod paired;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use serde::Serialize;
use x0_lab::{Lab, LabName, LabSpec, Shape, SpawnOptions, Topology};
use x0_telemetry::{
    Direction, FlowCounters, ProgramRunStats, Protocol, RunTimeStats, Sample, Telemetry,
    TelemetryConfig, TelemetryError, UnderlayHook, XdpAttachMode,
};

use cost::{NetDevPackets, ProgramCost};
use paired::{Interval, Side, SignTest, interval, median};
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
/// Pairs run before the stopping rule is first asked (without `--runs`).
const MIN_ADAPTIVE_PAIRS: u32 = 8;

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
    /// Pairs of runs, one without and one with the programs (ABBA order), exactly. Without
    /// it, pairs are added (at least 8) until the throughput interval is narrow enough
    /// (`--half-width`) or `--max-runs` pairs were run.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=500))]
    pub runs: Option<u32>,
    /// Most pairs without `--runs`.
    #[arg(long, default_value_t = 40, value_parser = clap::value_parser!(u32).range(1..=500))]
    pub max_runs: u32,
    /// Without `--runs`: stop once the 95 % interval of the paired throughput difference is
    /// within ± this many percentage points.
    #[arg(long, default_value_t = 1.0)]
    pub half_width: f64,
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

/// How many pairs to run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
struct Plan {
    min_pairs: u32,
    max_pairs: u32,
    /// Stop once the throughput interval's half-width is at most this (adaptive plans).
    half_width: Option<f64>,
}

impl Plan {
    fn of(args: &EbpfOverheadArgs) -> Self {
        match args.runs {
            Some(n) => Self {
                min_pairs: n,
                max_pairs: n,
                half_width: None,
            },
            None => Self {
                min_pairs: MIN_ADAPTIVE_PAIRS.min(args.max_runs),
                max_pairs: args.max_runs,
                half_width: Some(args.half_width),
            },
        }
    }

    /// Why to stop after `pairs` pairs whose throughput differences give `throughput`, or
    /// `None` to run another pair.
    fn stop(&self, pairs: u32, throughput: Option<&Interval>) -> Option<String> {
        if pairs < self.min_pairs {
            return None;
        }
        let width = throughput.and_then(|i| i.half_width);
        match (self.half_width, width) {
            (Some(target), Some(w)) if w <= target => Some(format!(
                "the throughput interval reached ±{w:.2} points (asked: ±{target:.2}) after \
                 {pairs} pairs"
            )),
            _ if pairs >= self.max_pairs => Some(match self.half_width {
                None => format!("{pairs} pairs, as asked (--runs)"),
                Some(target) => format!(
                    "{pairs} pairs, the most allowed (--max-runs), with the throughput interval \
                     at ±{} points (asked: ±{target:.2})",
                    width.map_or_else(|| "-".into(), |w| format!("{w:.2}"))
                ),
            }),
            _ => None,
        }
    }
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
    /// Packets that crossed the veth, both directions (n1's `/proc/net/dev`; a GSO packet is
    /// one packet here, as it is one run of each program).
    packets: u64,
    /// iperf3's CPU use of the sending host, percent (its `host_total`).
    sender_cpu_percent: Option<f64>,
    /// And of the receiving end (`remote_total`).
    receiver_cpu_percent: Option<f64>,
    /// Both iperf3 processes' CPU time (utime + stime, softirq work in their context
    /// included) during the run, nanoseconds.
    cpu_ns: Option<f64>,
    /// cpu_ns ÷ packets.
    cpu_ns_per_packet: Option<f64>,
    /// Time the ksoftirqd threads ran during the run (they also serve other work on the
    /// machine, so it is left out of cpu_ns).
    ksoftirqd_ns: Option<u64>,
    /// Busy share of all CPUs during the run (/proc/stat), percent: the load it ran under.
    machine_busy_percent: Option<f64>,
    /// 1-minute load average at the end of the run.
    load_average: Option<f64>,
    /// Each program's kernel run time and count during the run (with runs only).
    programs: Option<Vec<ProgramCost>>,
    /// All programs' run time ÷ packets (with runs only).
    bpf_ns_per_packet: Option<f64>,
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

/// One paired figure, percent, judged against the target.
#[derive(Debug, Clone, Serialize)]
struct Figure {
    /// What one pair's value is.
    what: &'static str,
    per_pair: Vec<f64>,
    /// Mean of the pairs with its 95 % interval.
    interval: Option<Interval>,
    /// How many pairs fall below and above the target.
    sign_test: SignTest,
    /// Where the interval lies against the target.
    side: Side,
    verdict: String,
}

impl Figure {
    fn of(what: &'static str, per_pair: Vec<f64>) -> Self {
        let interval = interval(&per_pair);
        let side = interval
            .as_ref()
            .map_or(Side::Straddles, |i| paired::side(i, TARGET_PERCENT));
        let n = per_pair.len();
        let range = interval.as_ref().map_or_else(
            || "no pairs".into(),
            |i| match (i.low, i.high) {
                (Some(low), Some(high)) => format!(
                    "mean {:+.3} %, 95 % interval {low:+.3} … {high:+.3} % over {n} pairs",
                    i.mean
                ),
                _ => format!("{:+.3} % from one pair, no interval", i.mean),
            },
        );
        let verdict = match side {
            Side::Below => format!("below the {TARGET} target: {range}"),
            Side::Above => format!("above the {TARGET} target: {range}"),
            Side::Straddles => format!("not conclusive: {range}, which holds the target 1 %"),
        };
        Self {
            what,
            sign_test: paired::sign_test(&per_pair, TARGET_PERCENT),
            per_pair,
            interval,
            side,
            verdict,
        }
    }
}

/// One program's cost over all "with" runs.
#[derive(Debug, Clone, Serialize)]
struct ProgramSummary {
    name: String,
    /// Runs over all with-runs (the kernel's run_cnt).
    runs: u64,
    /// Nanoseconds over all with-runs (run_time_ns).
    run_time_ns: u64,
    /// run_time_ns ÷ runs.
    ns_per_run: Option<f64>,
    /// Per with-run values.
    ns_per_run_over_runs: Option<Interval>,
    runs_per_packet: Option<Interval>,
    ns_per_packet: Option<Interval>,
    /// ns_per_packet of the with-run ÷ cpu_ns_per_packet of the without-run, per pair, percent.
    share_percent: Option<Interval>,
}

/// The direct figure: the programs' run time against the traffic's CPU cost.
#[derive(Debug, Clone, Serialize)]
struct ProgramCostReport {
    /// CPU ns per packet of the without-runs (the denominator).
    cpu_ns_per_packet_without: Option<Interval>,
    /// The same in the with-runs.
    cpu_ns_per_packet_with: Option<Interval>,
    /// ksoftirqd's time ÷ the iperf3 processes' CPU time in the without-runs, percent: what
    /// the denominator leaves out at most.
    ksoftirqd_vs_cpu_percent: Option<Interval>,
    programs: Vec<ProgramSummary>,
    /// All programs together.
    total: ProgramSummary,
    /// The total's share per pair, against the target.
    share: Figure,
    /// What the run-time statistics' own clock reads add to the counted time per packet: the
    /// programs' runs per packet × their bias per run measured warm (`warm.counted_bias_ns`).
    stats_bias_ns_per_packet: Option<f64>,
    /// The share per pair with that bias taken out, percent: the estimate for a daemon, which
    /// runs without statistics.
    share_without_stats_bias_percent: Option<Interval>,
}

/// The load the runs ran under.
#[derive(Debug, Clone, Serialize)]
struct Load {
    /// 1-minute load average before the first and after the last run.
    load_average_before: Option<f64>,
    load_average_after: Option<f64>,
    /// At the end of each run.
    load_average_runs: Option<Interval>,
    /// Busy share of all CPUs during the runs, percent.
    machine_busy_percent: Option<Interval>,
    /// The iperf3 processes' share of all CPUs' time during the runs, percent.
    iperf3_percent_of_machine: Option<Interval>,
}

/// Why the bench stopped adding pairs.
#[derive(Debug, Clone, Serialize)]
struct Stopping {
    plan: Plan,
    pairs_run: u32,
    reason: String,
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
    stopping: Stopping,
    /// Median of the runs with the programs attached.
    with_mbps: f64,
    /// Median of the runs without.
    without_mbps: f64,
    /// The mean of the per-pair throughput differences, percent (throughput_ab's mean).
    overhead_percent: f64,
    /// The direct figure: kernel run-time statistics against CPU time per packet.
    program_cost: ProgramCostReport,
    /// The TC counter with warm caches (`BPF_PROG_TEST_RUN`), and the statistics' own cost.
    warm: Option<calibrate::Calibration>,
    /// Why `warm` is missing.
    warm_error: Option<String>,
    /// (without − with) ÷ without Mbit/s per pair, percent.
    throughput_ab: Figure,
    /// (with − without) ÷ without CPU ns per packet per pair, percent.
    cpu_per_packet_ab: Figure,
    with_spread: Spread,
    without_spread: Spread,
    /// The programs' share is below the target (its whole interval), and neither A/B is
    /// conclusively above it.
    met: bool,
    /// One sentence on what the three figures say.
    verdict: String,
    target: &'static str,
    target_percent: f64,
    warmup_mbps: f64,
    load: Load,
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

    fn run_stats(&self) -> Result<Vec<ProgramRunStats>, Exit> {
        let read = |t: &Telemetry| {
            t.program_run_stats()
                .map_err(|e| fail(format!("reading the programs' run-time statistics: {e}")))
        };
        let mut stats = read(&self.sender)?;
        stats.extend(read(&self.receiver)?);
        Ok(stats)
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

/// (without − with) ÷ without, percent: what attaching the programs took away.
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

/// The order of pair `pair` (1-based): without (false) first in odd pairs, with (true) first in
/// even ones, so the sequence runs ABBA ABBA …
fn order(pair: u32) -> [bool; 2] {
    if pair % 2 == 1 {
        [false, true]
    } else {
        [true, false]
    }
}

/// n1's veth counters, read through the iperf3 server's view of its namespace.
fn veth_packets(server_pid: u32, iface: &str) -> Result<NetDevPackets, Exit> {
    let table = format!("/proc/{server_pid}/net/dev");
    let text = std::fs::read_to_string(&table).map_err(|e| fail(format!("{table}: {e}")))?;
    cost::parse_net_dev(&text, iface).ok_or_else(|| fail(format!("{table} has no row for {iface}")))
}

/// What stays the same for every run.
struct Bench<'a> {
    lab: &'a Lab,
    path: &'a VethEnds,
    args: &'a EbpfOverheadArgs,
    mtu: u32,
    server_pid: u32,
    ksoftirqd: Vec<u32>,
}

impl Bench<'_> {
    /// One run, with or without the programs.
    fn measure(&self, run: usize, pair: u32, attached: bool, label: &str) -> Result<RunRow, Exit> {
        let args = self.args;
        // Run-time statistics only while the programs are attached; the kernel turns them off
        // when this is dropped, also if the process dies.
        let stats = attached
            .then(RunTimeStats::enable)
            .transpose()
            .map_err(|e| telemetry_exit("the host", &e))?;
        let programs = attached
            .then(|| Attached::start(self.path, args.hook))
            .transpose()?;
        match &programs {
            Some(p) => progress(format!(
                "{label}: with {} + tracepoints ({} programs, attached in {:.0} ms), {} s …",
                args.hook.name(),
                p.sender.program_ids().len() + p.receiver.program_ids().len(),
                p.attach_ms,
                args.seconds
            )),
            None => progress(format!("{label}: without programs, {} s …", args.seconds)),
        }
        let counters_before = programs.as_ref().map(Attached::sample).transpose()?;
        let stats_before = programs.as_ref().map(Attached::run_stats).transpose()?;
        let packets_before = veth_packets(self.server_pid, &self.path.receiver_iface)?;
        let (cpu_before, soft_before) = (cost::cpu_ticks(), cost::run_time_ns(&self.ksoftirqd));

        let r = iperf(
            self.lab,
            self.path.receiver_addr,
            args.seconds,
            args.streams,
        )?;

        let stats_after = programs.as_ref().map(Attached::run_stats).transpose()?;
        let (cpu_after, soft_after) = (cost::cpu_ticks(), cost::run_time_ns(&self.ksoftirqd));
        let packets =
            veth_packets(self.server_pid, &self.path.receiver_iface)?.since(packets_before);
        let counted = match (&programs, &counters_before) {
            (Some(p), Some(before)) => {
                let after = p.sample()?;
                Some(counted(
                    args.hook, self.path, p, before, &after, &r, self.mtu,
                )?)
            }
            _ => None,
        };
        drop(programs);
        drop(stats);

        let costs = stats_before
            .zip(stats_after)
            .map(|(before, after)| cost::program_costs(&before, &after, packets));
        if let Some(costs) = &costs
            && costs.iter().all(|c| c.runs == 0)
        {
            return Err(fail(
                "the kernel's run-time statistics stayed at zero while the programs counted \
                 traffic: BPF_ENABLE_STATS had no effect",
            ));
        }
        let cpu_ns = match (r.sender_cpu_percent, r.receiver_cpu_percent) {
            (Some(s), Some(c)) => Some((s + c) / 100.0 * r.seconds * 1e9),
            _ => None,
        };
        let per_packet = |ns: f64| (packets > 0).then(|| ns / packets as f64);
        let row = RunRow {
            run,
            pair,
            programs_attached: attached,
            mbps: r.mbps,
            bytes_received: r.bytes_received,
            retransmits: r.retransmits,
            packets,
            sender_cpu_percent: r.sender_cpu_percent,
            receiver_cpu_percent: r.receiver_cpu_percent,
            cpu_ns,
            cpu_ns_per_packet: cpu_ns.and_then(per_packet),
            ksoftirqd_ns: soft_before
                .zip(soft_after)
                .map(|(a, b)| b.saturating_sub(a)),
            machine_busy_percent: cpu_before
                .zip(cpu_after)
                .and_then(|(a, b)| b.busy_percent_since(a)),
            load_average: load_average(),
            bpf_ns_per_packet: costs
                .as_ref()
                .and_then(|c| per_packet(c.iter().map(|p| p.run_time_ns as f64).sum())),
            programs: costs,
            counted,
        };
        progress(describe(label, &row));
        Ok(row)
    }
}

fn describe(label: &str, row: &RunRow) -> String {
    let mut text = format!(
        "{label}: {:.0} Mbit/s, {} packets, {} CPU ns/packet",
        row.mbps,
        row.packets,
        shown(row.cpu_ns_per_packet, 0)
    );
    if let Some(bpf) = row.bpf_ns_per_packet {
        text += &format!(", eBPF {bpf:.1} ns/packet");
    }
    if let Some(c) = &row.counted {
        text += &format!(
            "; n1 counted {} TCP packets from n0 ({:.2} per segment), {} TCP state changes",
            c.data_at_receiver.packets, c.packets_per_segment, c.tcp_state_changes
        );
    }
    text + &format!(
        "; machine {} % busy, load {}",
        shown(row.machine_busy_percent, 0),
        shown(row.load_average, 1)
    )
}

/// Runs `x0t bench ebpf-overhead`.
pub fn run(args: EbpfOverheadArgs) -> CmdResult {
    crate::lab::require_tools(&[("iperf3", "iperf3"), ("ss", "iproute2")])?;
    if !(args.half_width > 0.0 && args.half_width.is_finite()) {
        return Err(Exit::usage(format!(
            "bench ebpf-overhead: --half-width must be a positive number of percentage \
             points, not {}",
            args.half_width
        )));
    }
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
        "warm-up ({WARMUP_SECONDS} s, not counted): {:.0} Mbit/s; load average {}",
        warmup.mbps,
        shown(load_before, 2)
    ));

    let warm = calibrate::calibrate();
    match &warm {
        Ok(w) => progress(format!(
            "warm {} (BPF_PROG_TEST_RUN, {} runs × {} per side): {:.0} ns per run, {:.0} with \
             run-time statistics on, which count {:.0} ns per run",
            w.program,
            w.runs_per_measurement,
            w.measurements_per_side,
            w.ns_per_run_stats_off,
            w.ns_per_run_stats_on,
            w.ns_per_run_as_counted
        )),
        Err(e) => progress(format!("no warm calibration: {e}")),
    }

    let plan = Plan::of(&args);
    let bench = Bench {
        lab: &lab,
        path: &path,
        args: &args,
        mtu,
        server_pid: server.pid,
        ksoftirqd: cost::ksoftirqd_pids(),
    };
    let mut runs = Vec::new();
    let mut pair = 0;
    let reason = loop {
        pair += 1;
        for attached in order(pair) {
            let label = format!("run {} (pair {pair}/{})", runs.len() + 1, plan.max_pairs);
            runs.push(bench.measure(runs.len() + 1, pair, attached, &label)?);
        }
        let throughput = interval(&per_pair(&runs, throughput_difference));
        if let Some(reason) = plan.stop(pair, throughput.as_ref()) {
            break reason;
        }
        if let Some(i) = &throughput {
            progress(format!(
                "after {pair} pairs: throughput difference {:+.2} % ± {}",
                i.mean,
                shown(i.half_width, 2)
            ));
        }
    };
    progress(format!("stopped: {reason}"));

    let stopping = Stopping {
        plan,
        pairs_run: pair,
        reason,
    };
    let report = summarise(&args, runs, stopping, warmup.mbps, mtu, load_before, warm);
    let teardown = lab.down();
    if !teardown.errors.is_empty() {
        return Err(fail(format!("teardown: {}", teardown.errors.join("; "))));
    }
    let (text, file) = crate::report::write_report(&report, &args.out, "ebpf-overhead.json")?;
    if args.json {
        println!("{text}");
    } else {
        print_summary(&report, &file);
    }
    Ok(())
}

/// The with and without runs of each complete pair, in pair order.
fn pairs(runs: &[RunRow]) -> Vec<(&RunRow, &RunRow)> {
    let mut numbers: Vec<u32> = runs.iter().map(|r| r.pair).collect();
    numbers.dedup();
    numbers
        .into_iter()
        .filter_map(|pair| {
            let side = |attached: bool| {
                runs.iter()
                    .find(|r| r.pair == pair && r.programs_attached == attached)
            };
            Some((side(true)?, side(false)?))
        })
        .collect()
}

/// One value per complete pair (pairs where `figure` has none are left out).
fn per_pair(runs: &[RunRow], figure: fn(&RunRow, &RunRow) -> Option<f64>) -> Vec<f64> {
    pairs(runs)
        .into_iter()
        .filter_map(|(with, without)| figure(with, without))
        .collect()
}

fn throughput_difference(with: &RunRow, without: &RunRow) -> Option<f64> {
    Some(overhead(without.mbps, with.mbps))
}

fn cpu_per_packet_difference(with: &RunRow, without: &RunRow) -> Option<f64> {
    let (w, wo) = (with.cpu_ns_per_packet?, without.cpu_ns_per_packet?);
    (wo > 0.0).then(|| (w - wo) / wo * 100.0)
}

fn program_share(with: &RunRow, without: &RunRow) -> Option<f64> {
    let (bpf, cpu) = (with.bpf_ns_per_packet?, without.cpu_ns_per_packet?);
    (cpu > 0.0).then(|| bpf / cpu * 100.0)
}

/// One program's figures over all with-runs; `name` `None` sums every program.
fn program_summary(runs: &[RunRow], name: Option<&str>) -> ProgramSummary {
    let cost_of = |row: &RunRow| -> Option<ProgramCost> {
        let costs = row.programs.as_ref()?;
        let chosen: Vec<&ProgramCost> = costs
            .iter()
            .filter(|c| name.is_none_or(|n| c.name == n))
            .collect();
        if chosen.is_empty() {
            return None;
        }
        let (runs, ns) = chosen
            .iter()
            .fold((0, 0), |(r, t), c| (r + c.runs, t + c.run_time_ns));
        let packets = row.packets.max(1) as f64;
        Some(ProgramCost {
            name: name.unwrap_or("all").into(),
            runs,
            run_time_ns: ns,
            ns_per_run: (runs > 0).then(|| ns as f64 / runs as f64),
            runs_per_packet: runs as f64 / packets,
            ns_per_packet: ns as f64 / packets,
        })
    };
    let with_runs: Vec<ProgramCost> = runs.iter().filter_map(cost_of).collect();
    let (total_runs, total_ns) = with_runs
        .iter()
        .fold((0, 0), |(r, t), c| (r + c.runs, t + c.run_time_ns));
    let values = |f: fn(&ProgramCost) -> Option<f64>| -> Vec<f64> {
        with_runs.iter().filter_map(f).collect()
    };
    let share: Vec<f64> = pairs(runs)
        .into_iter()
        .filter_map(|(with, without)| {
            let cpu = without.cpu_ns_per_packet.filter(|&c| c > 0.0)?;
            Some(cost_of(with)?.ns_per_packet / cpu * 100.0)
        })
        .collect();
    ProgramSummary {
        name: name.unwrap_or("all").into(),
        runs: total_runs,
        run_time_ns: total_ns,
        ns_per_run: (total_runs > 0).then(|| total_ns as f64 / total_runs as f64),
        ns_per_run_over_runs: interval(&values(|c| c.ns_per_run)),
        runs_per_packet: interval(&values(|c| Some(c.runs_per_packet))),
        ns_per_packet: interval(&values(|c| Some(c.ns_per_packet))),
        share_percent: interval(&share),
    }
}

fn summarise(
    args: &EbpfOverheadArgs,
    runs: Vec<RunRow>,
    stopping: Stopping,
    warmup_mbps: f64,
    mtu: u32,
    load_before: Option<f64>,
    warm: Result<calibrate::Calibration, String>,
) -> Report {
    let side = |attached: bool, figure: fn(&RunRow) -> Option<f64>| -> Vec<f64> {
        runs.iter()
            .filter(|r| r.programs_attached == attached)
            .filter_map(figure)
            .collect()
    };
    let (with_spread, without_spread) = (
        spread(&side(true, |r| Some(r.mbps))),
        spread(&side(false, |r| Some(r.mbps))),
    );
    let throughput_ab = Figure::of(
        "(without − with) ÷ without Mbit/s of the pair, percent",
        per_pair(&runs, throughput_difference),
    );
    let cpu_per_packet_ab = Figure::of(
        "(with − without) ÷ without iperf3 CPU ns per packet of the pair, percent",
        per_pair(&runs, cpu_per_packet_difference),
    );
    let share = Figure::of(
        "all programs' kernel run time per packet (with-run) ÷ iperf3 CPU ns per packet \
         (without-run) of the pair, percent",
        per_pair(&runs, program_share),
    );
    let mut names: Vec<String> = Vec::new();
    for costs in runs.iter().filter_map(|r| r.programs.as_ref()) {
        for c in costs {
            if !names.contains(&c.name) {
                names.push(c.name.clone());
            }
        }
    }
    let all: Vec<&RunRow> = runs.iter().collect();
    // iperf3's percentages are of one CPU; the machine has `cores`.
    let iperf3_share: Vec<f64> = all
        .iter()
        .filter_map(|r| {
            Some((r.sender_cpu_percent? + r.receiver_cpu_percent?) / args_cores() as f64)
        })
        .collect();
    let total = program_summary(&runs, None);
    let stats_cost = warm.as_ref().ok().map(|w| w.counted_bias_ns);
    let stats_bias_ns_per_packet = stats_cost
        .zip(total.runs_per_packet.as_ref())
        .map(|(cost, runs)| cost * runs.mean);
    let share_without_bias: Vec<f64> = match stats_cost {
        None => Vec::new(),
        Some(cost) => pairs(&runs)
            .into_iter()
            .filter_map(|(with, without)| {
                let cpu = without.cpu_ns_per_packet.filter(|&c| c > 0.0)?;
                let programs = with.programs.as_ref()?;
                let runs: u64 = programs.iter().map(|p| p.runs).sum();
                let ns: u64 = programs.iter().map(|p| p.run_time_ns).sum();
                let unbiased = (ns as f64 - runs as f64 * cost).max(0.0);
                Some(unbiased / with.packets.max(1) as f64 / cpu * 100.0)
            })
            .collect(),
    };
    let program_cost = ProgramCostReport {
        cpu_ns_per_packet_without: interval(&side(false, |r| r.cpu_ns_per_packet)),
        cpu_ns_per_packet_with: interval(&side(true, |r| r.cpu_ns_per_packet)),
        ksoftirqd_vs_cpu_percent: interval(&side(false, |r| {
            let cpu = r.cpu_ns.filter(|&c| c > 0.0)?;
            Some(r.ksoftirqd_ns? as f64 / cpu * 100.0)
        })),
        programs: names
            .iter()
            .map(|n| program_summary(&runs, Some(n)))
            .collect(),
        total,
        share,
        stats_bias_ns_per_packet,
        share_without_stats_bias_percent: interval(&share_without_bias),
    };
    let load = Load {
        load_average_before: load_before,
        load_average_after: load_average(),
        load_average_runs: interval(
            &all.iter()
                .filter_map(|r| r.load_average)
                .collect::<Vec<_>>(),
        ),
        machine_busy_percent: interval(
            &all.iter()
                .filter_map(|r| r.machine_busy_percent)
                .collect::<Vec<_>>(),
        ),
        iperf3_percent_of_machine: interval(&iperf3_share),
    };
    let met = program_cost.share.side == Side::Below
        && throughput_ab.side != Side::Above
        && cpu_per_packet_ab.side != Side::Above;
    let verdict = format!(
        "programs' share of the traffic's CPU cost: {}; throughput A/B: {}; CPU per packet \
         A/B: {}",
        program_cost.share.verdict, throughput_ab.verdict, cpu_per_packet_ab.verdict
    );
    Report {
        bench: "ebpf-overhead",
        what: "iperf3 TCP from n0 to n1 over one veth between two namespaces (raw underlay, no \
               overlay), alternating runs without and with the x0-telemetry programs attached \
               (ABBA order); the programs' kernel run time per packet against the traffic's CPU \
               time per packet, and paired A/B differences of throughput and CPU per packet",
        hook: args.hook,
        programs: args.hook.programs(),
        tracepoints: true,
        seconds: args.seconds,
        streams: args.streams,
        pairs: stopping.pairs_run,
        stopping,
        with_mbps: with_spread.median_mbps,
        without_mbps: without_spread.median_mbps,
        overhead_percent: throughput_ab.interval.as_ref().map_or(0.0, |i| i.mean),
        program_cost,
        warm_error: warm.as_ref().err().cloned(),
        warm: warm.ok(),
        throughput_ab,
        cpu_per_packet_ab,
        with_spread,
        without_spread,
        met,
        verdict,
        target: TARGET,
        target_percent: TARGET_PERCENT,
        warmup_mbps,
        load,
        runs,
        path: "n0 → n1, one veth pair, kernel TCP (no overlay)".into(),
        mtu,
        kernel: kernel_release(),
        iperf3: iperf3_version(),
        notes: notes(args.hook),
        build_profile: if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        cores: args_cores(),
        unix_time: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    }
}

fn args_cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

fn notes(hook: Hook) -> Vec<String> {
    vec![
        format!(
            "with: the {} underlay counter on the veth end in each namespace, and the \
             kfree_skb, tcp_retransmit_skb and inet_sock_set_state tracepoints once for the \
             host (they see every namespace, so other work's drops and connections add runs); \
             attached before each with-run and detached after it, outside the timed part",
            hook.name()
        ),
        "run-time statistics (BPF_ENABLE_STATS) are on during the with-runs only: they add two \
         clock reads per program run to the with side, so every with figure is an upper bound \
         of what a daemon pays"
            .into(),
        "packets: n1's veth, received + sent (/proc/net/dev); a GSO packet is one packet, as it \
         is one run of each program"
            .into(),
        "cpu_ns: both iperf3 processes' utime + stime (iperf3's host_total + remote_total × \
         duration); on a kernel without CONFIG_IRQ_TIME_ACCOUNTING it includes the softirq work \
         done in their context (the veth receive path); ksoftirqd's time is left out (it also \
         serves the rest of the machine), which makes the share an upper bound"
            .into(),
        "the share counts the programs' own run time; the hook's dispatch and what a hook makes \
         the stack do (generic XDP linearises GSO packets) show only in the two A/B figures"
            .into(),
        "each figure is the mean of per-pair values with a Student-t 95 % interval; the sign \
         test counts pairs below and above the target"
            .into(),
    ]
}

fn shown(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| "-".into(), |v| format!("{v:.decimals$}"))
}

fn shown_interval(i: Option<&Interval>, decimals: usize) -> String {
    match i {
        None => "-".into(),
        Some(i) => match i.half_width {
            Some(h) => format!("{:.decimals$} ± {h:.decimals$}", i.mean),
            None => format!("{:.decimals$}", i.mean),
        },
    }
}

fn print_summary(report: &Report, file: &Path) {
    println!(
        "eBPF overhead: iperf3 TCP, {} stream(s), {} s per run, n0 → n1 over one veth (MTU {}), \
         hook {} + tracepoints, {} pairs in ABBA order ({}):",
        report.streams,
        report.seconds,
        report.mtu,
        report.hook.name(),
        report.pairs,
        report.stopping.reason
    );
    println!(
        "  {:>3} {:>4} {:>8} {:>8} {:>9} {:>9} {:>9} {:>6} {:>5}",
        "run", "pair", "programs", "Mbit/s", "packets", "CPU ns/p", "eBPF ns/p", "busy%", "load"
    );
    for r in &report.runs {
        println!(
            "  {:>3} {:>4} {:>8} {:>8.0} {:>9} {:>9} {:>9} {:>6} {:>5}",
            r.run,
            r.pair,
            if r.programs_attached {
                "with"
            } else {
                "without"
            },
            r.mbps,
            r.packets,
            shown(r.cpu_ns_per_packet, 0),
            shown(r.bpf_ns_per_packet, 1),
            shown(r.machine_busy_percent, 0),
            shown(r.load_average, 1),
        );
    }
    let c = &report.program_cost;
    println!(
        "  per program (kernel run-time statistics, mean ± 95 % interval over the with-runs; \
         share: of the without-run's {} CPU ns per packet):",
        shown_interval(c.cpu_ns_per_packet_without.as_ref(), 0)
    );
    println!(
        "    {:<24} {:>14} {:>16} {:>14} {:>16}",
        "program", "ns per run", "runs per packet", "ns per packet", "share %"
    );
    for p in c.programs.iter().chain(std::iter::once(&c.total)) {
        println!(
            "    {:<24} {:>14} {:>16} {:>14} {:>16}",
            p.name,
            shown_interval(p.ns_per_run_over_runs.as_ref(), 1),
            shown_interval(p.runs_per_packet.as_ref(), 4),
            shown_interval(p.ns_per_packet.as_ref(), 2),
            shown_interval(p.share_percent.as_ref(), 3),
        );
    }
    if let Some(w) = &report.warm {
        println!(
            "  warm {} (BPF_PROG_TEST_RUN, one {}-byte TCP frame): {:.0} ns per run ({:.0} with \
             the run-time statistics on, which count {:.0}); their bias: {:.0} ns per run, {} ns \
             per packet; share without it: {} %",
            w.program,
            w.frame_bytes,
            w.ns_per_run_stats_off,
            w.ns_per_run_stats_on,
            w.ns_per_run_as_counted,
            w.counted_bias_ns,
            shown(c.stats_bias_ns_per_packet, 1),
            shown_interval(c.share_without_stats_bias_percent.as_ref(), 3)
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
    for (label, f) in [
        ("programs' share of CPU per packet", &c.share),
        ("throughput A/B", &report.throughput_ab),
        ("CPU per packet A/B", &report.cpu_per_packet_ab),
    ] {
        println!(
            "  {label}: {} (sign test: {} below, {} above the target, p = {:.3})",
            f.verdict, f.sign_test.below, f.sign_test.above, f.sign_test.p_value
        );
    }
    println!(
        "  load: average {} before, {} after; machine busy {} % during the runs, iperf3 {} % \
         of it; ksoftirqd {} % of iperf3's CPU (left out)",
        shown(report.load.load_average_before, 2),
        shown(report.load.load_average_after, 2),
        shown_interval(report.load.machine_busy_percent.as_ref(), 1),
        shown_interval(report.load.iperf3_percent_of_machine.as_ref(), 1),
        shown_interval(c.ksoftirqd_vs_cpu_percent.as_ref(), 1),
    );
    println!(
        "  target {}: {}",
        report.target,
        if report.met { "met" } else { "NOT shown" }
    );
    println!("written to {}", file.display());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_alternate_abba() {
        let order: Vec<bool> = (1..=3).flat_map(order).collect();
        assert_eq!(order, [false, true, true, false, false, true]);
    }

    #[test]
    fn spread_and_overhead() {
        let s = spread(&[90.0, 100.0, 110.0]);
        assert_eq!(
            (s.min_mbps, s.max_mbps, s.median_mbps),
            (90.0, 110.0, 100.0)
        );
        assert!((s.range_percent - 20.0).abs() < 1e-9);
        assert!((overhead(100.0, 99.0) - 1.0).abs() < 1e-9);
        assert!(overhead(100.0, 101.0) < 0.0);
    }

    fn row(pair: u32, attached: bool, mbps: f64, cpu_ns_per_packet: f64) -> RunRow {
        RunRow {
            run: 0,
            pair,
            programs_attached: attached,
            mbps,
            bytes_received: 0,
            retransmits: None,
            packets: 1_000,
            sender_cpu_percent: None,
            receiver_cpu_percent: None,
            cpu_ns: Some(cpu_ns_per_packet * 1_000.0),
            cpu_ns_per_packet: Some(cpu_ns_per_packet),
            ksoftirqd_ns: None,
            machine_busy_percent: None,
            load_average: None,
            programs: attached.then(|| {
                vec![ProgramCost {
                    name: "x0_tc_ingress".into(),
                    runs: 1_000,
                    run_time_ns: 100_000,
                    ns_per_run: Some(100.0),
                    runs_per_packet: 1.0,
                    ns_per_packet: 100.0,
                }]
            }),
            bpf_ns_per_packet: attached.then_some(100.0),
            counted: None,
        }
    }

    #[test]
    fn figures_pair_the_with_and_without_run_of_each_pair() {
        // Pair 2 runs with first (ABBA); pair 3 is incomplete and left out.
        let runs = vec![
            row(1, false, 100.0, 20_000.0),
            row(1, true, 99.0, 20_400.0),
            row(2, true, 50.0, 40_000.0),
            row(2, false, 51.0, 39_000.0),
            row(3, false, 80.0, 30_000.0),
        ];
        let throughput = per_pair(&runs, throughput_difference);
        assert_eq!(throughput.len(), 2);
        assert!((throughput[0] - 1.0).abs() < 1e-9);
        assert!((throughput[1] - 100.0 / 51.0).abs() < 1e-9);
        let cpu = per_pair(&runs, cpu_per_packet_difference);
        assert!((cpu[0] - 2.0).abs() < 1e-9);
        assert!((cpu[1] - 100.0 / 39.0).abs() < 1e-9);
        // 100 ns of programs per packet against 20,000 and 39,000 CPU ns per packet.
        let share = per_pair(&runs, program_share);
        assert!((share[0] - 0.5).abs() < 1e-9);
        assert!((share[1] - 100.0 / 390.0).abs() < 1e-9);
        let summary = program_summary(&runs, Some("x0_tc_ingress"));
        assert_eq!((summary.runs, summary.run_time_ns), (2_000, 200_000));
        assert_eq!(summary.ns_per_run, Some(100.0));
        assert_eq!(summary.share_percent.unwrap().n, 2);
        assert!(
            program_summary(&runs, Some("x0_kfree_skb"))
                .ns_per_run
                .is_none()
        );
    }

    fn plan(runs: Option<u32>, max_runs: u32) -> Plan {
        Plan::of(&EbpfOverheadArgs {
            json: false,
            runs,
            max_runs,
            half_width: 1.0,
            seconds: 1,
            streams: 1,
            hook: Hook::Tc,
            out: PathBuf::new(),
        })
    }

    #[test]
    fn stopping_rule_looks_at_the_width_only() {
        let narrow = interval(&[5.0, 5.1, 4.9, 5.0]).unwrap();
        let wide = interval(&[-5.0, 6.0, 1.0, -2.0]).unwrap();
        // --runs: exactly that many pairs, whatever the interval.
        let fixed = plan(Some(3), 40);
        assert!(fixed.stop(2, Some(&narrow)).is_none());
        assert!(fixed.stop(3, Some(&wide)).is_some());
        // Adaptive: at least 8 pairs, then stop once narrow (even far above the target),
        // else at --max-runs.
        let adaptive = plan(None, 40);
        assert!(adaptive.stop(7, Some(&narrow)).is_none());
        assert!(adaptive.stop(8, Some(&narrow)).is_some());
        assert!(adaptive.stop(8, Some(&wide)).is_none());
        assert!(adaptive.stop(40, Some(&wide)).is_some());
        // A --max-runs below 8 lowers the minimum with it.
        assert!(plan(None, 2).stop(2, Some(&wide)).is_some());
    }
}
