//! `x0t bench failover`: how long a stream of packets through the overlay stops when its path
//! breaks, measured against the real kernel.
//!
//! A 4-node ring `n0–n1–n2–n3–n0` (x0-lab, no underlay routes) runs one x0t daemon per node
//! ([`crate::lab::start_daemons`]), so n0 reaches n2 over two node-disjoint paths, via n1 and
//! via n3. A sequenced UDP stream (1 packet per ms) goes from n0 to n2's overlay address
//! through the TUN devices; after 40 % of the stream (2 s of the default 5 s) a fault hits the
//! relay that carries it (the `route dst=<n2> via=<relay>` line in n0's log):
//!
//! * `link-down`: the veth between n0 and the relay is set down ([`Lab::set_link_up`]), which
//!   n0 sees at once through rtnetlink;
//! * `relay-kill`: the relay's daemon gets SIGKILL, by PID, after checking that the PID is
//!   still the process the lab started; its neighbours only notice by missed probes.
//!
//! The stream's source and sink are hidden subcommands of this binary (`x0t bench udp-source`,
//! `x0t bench udp-sink`) run inside the namespaces. The sink records the gaps between
//! consecutive first arrivals; the outage is the longest gap that ends after the fault.
//!
//! Mode `redundant` appends `[dataplane] redundant_dscp = [46]` to every node's configuration
//! and marks the stream with DSCP 46 (EF): the daemons send each packet over two disjoint paths
//! and drop the second copy at the receiver, so a single fault should lose nothing. A daemon
//! that refuses the key (exit 64) makes those rows `skipped`, not a failure of the bench.
//!
//! Every run gets a fresh lab, removed when the run ends, also on failure (the `Lab` guard).

use std::io::{Read as _, Seek as _};
use std::net::{Ipv6Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};
use x0_lab::{Lab, LabName, LabSpec, Shape, SpawnOptions, Topology};

use x0_node::exit::{self, CmdResult, Exit};

/// UDP port of the sink, on n2's overlay address.
pub(crate) const SINK_PORT: u16 = 47_100;
/// Packets per second of the stream.
pub(crate) const RATE_PPS: u32 = 1000;
/// DSCP of the stream in redundant mode (EF).
const REDUNDANT_DSCP: u8 = 46;
/// Fraction of the stream sent before the fault.
const FAULT_AT: f64 = 0.4;
/// Sequence numbers per bucket of the sink's delivery histogram (100 ms at 1000 pps).
const BUCKET: u64 = 100;
/// Sequence numbers per fine bin of the sink's delivery histogram (10 ms at 1000 pps).
pub(crate) const FINE_BUCKET: u64 = 10;
/// Most gaps a sink records.
const MAX_GAPS: usize = 10_000;
/// Bytes per stream packet: sequence number, send time, padding.
const PACKET_BYTES: usize = 64;

/// How the primary path fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// The veth between n0 and the primary relay set down.
    LinkDown,
    /// SIGKILL of the primary relay's daemon.
    RelayKill,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::LinkDown => "link-down",
            Scenario::RelayKill => "relay-kill",
        }
    }

    fn short(self) -> &'static str {
        match self {
            Scenario::LinkDown => "ld",
            Scenario::RelayKill => "rk",
        }
    }
}

/// How the daemons and the stream are configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Daemons with their default configuration; the stream unmarked.
    Default,
    /// `dataplane.redundant_dscp = [46]` and the stream marked DSCP 46.
    Redundant,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Default => "default",
            Mode::Redundant => "redundant",
        }
    }

    fn extra_config(self) -> String {
        match self {
            Mode::Default => String::new(),
            Mode::Redundant => format!("[dataplane]\nredundant_dscp = [{REDUNDANT_DSCP}]\n"),
        }
    }

    fn dscp(self) -> Option<u8> {
        match self {
            Mode::Default => None,
            Mode::Redundant => Some(REDUNDANT_DSCP),
        }
    }
}

/// Arguments of `x0t bench failover`.
#[derive(Debug, Args)]
pub struct FailoverArgs {
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Directory for failover.json.
    #[arg(long, default_value = "bench-results")]
    pub out: PathBuf,
    /// Runs per scenario and mode, each in a fresh lab (the median is reported).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=50))]
    pub runs: u32,
    /// Seconds of streaming per run; the fault comes after 40 % of it.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(2..=120))]
    pub seconds: u32,
    /// Scenarios, comma-separated.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "link-down,relay-kill"
    )]
    pub scenarios: Vec<Scenario>,
    /// Modes, comma-separated.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "default,redundant"
    )]
    pub modes: Vec<Mode>,
}

/// `x0t bench udp-source` (hidden): a paced stream of sequenced UDP packets.
#[derive(Debug, Args)]
pub struct UdpSourceArgs {
    /// Destination, e.g. `[fd00::1]:47100`.
    #[arg(long)]
    pub to: SocketAddr,
    /// Packets per second.
    #[arg(long, default_value_t = RATE_PPS, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub rate: u32,
    /// How long to send, seconds.
    #[arg(long)]
    pub seconds: f64,
    /// DSCP to mark the packets with (IPv6 traffic class DSCP << 2, or IPv4 TOS).
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=63))]
    pub dscp: Option<u8>,
    /// Write the summary JSON here (default: stdout).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// `x0t bench udp-sink` (hidden): receives a stream and summarises it.
#[derive(Debug, Args)]
pub struct UdpSinkArgs {
    /// Address to listen on, e.g. `[fd00::2]:47100`.
    #[arg(long)]
    pub bind: SocketAddr,
    /// Summary JSON file, written on SIGTERM or after --seconds.
    #[arg(long)]
    pub out: PathBuf,
    /// The stream's packets per second (gaps above two intervals are recorded).
    #[arg(long, default_value_t = RATE_PPS, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub rate: u32,
    /// Stop by itself after this many seconds.
    #[arg(long, default_value_t = 60.0)]
    pub seconds: f64,
    /// Packets whose one-way delay exceeds this many milliseconds are also counted as late.
    #[arg(long, default_value_t = 50)]
    pub late_ms: u32,
}

pub(crate) fn unix_ns(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

pub(crate) fn now_ns() -> u64 {
    unix_ns(SystemTime::now())
}

fn write_json_atomically<T: Serialize>(path: &Path, value: &T) -> Result<(), Exit> {
    let text = serde_json::to_string(value).map_err(|e| Exit::failure(e.to_string()))?;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{text}\n"))
        .map_err(|e| Exit::failure(format!("{}: {e}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(|e| Exit::failure(format!("{}: {e}", path.display())))
}

/// What the source reports when it is done.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct SourceSummary {
    /// Sequence numbers issued (0 .. attempted).
    pub(crate) attempted: u64,
    /// Packets the socket accepted.
    pub(crate) sent: u64,
    /// Packets the socket refused (counted as lost).
    pub(crate) send_errors: u64,
    pub(crate) first_error: Option<String>,
    /// Unix time of packet 0's scheduled send, nanoseconds.
    pub(crate) start_ns: u64,
    /// Unix time after the last send, nanoseconds.
    pub(crate) end_ns: u64,
    pub(crate) rate: u32,
    pub(crate) dscp: Option<u8>,
    /// Most a send came after its scheduled time, microseconds.
    pub(crate) max_late_us: u64,
}

/// Runs the hidden `x0t bench udp-source`: a paced stream of sequenced UDP packets.
pub fn udp_source(args: UdpSourceArgs) -> CmdResult {
    if !(args.seconds > 0.0 && args.seconds <= 3600.0) {
        return Err(Exit::usage("--seconds must be in (0, 3600]"));
    }
    let bind: SocketAddr = if args.to.is_ipv6() {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(bind).map_err(|e| Exit::failure(format!("bind: {e}")))?;
    if let Some(dscp) = args.dscp {
        let class = i32::from(dscp) << 2;
        let r = if args.to.is_ipv6() {
            nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::Ipv6TClass, &class)
        } else {
            nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::Ipv4Tos, &class)
        };
        r.map_err(|e| Exit::failure(format!("setting DSCP {dscp}: {e}")))?;
    }
    socket
        .connect(args.to)
        .map_err(|e| Exit::failure(format!("connect {}: {e}", args.to)))?;
    let interval = Duration::from_secs(1) / args.rate;
    let count = (args.seconds * f64::from(args.rate)).round() as u64;
    let mut packet = [0u8; PACKET_BYTES];
    let start = Instant::now();
    let start_ns = now_ns();
    let mut summary = SourceSummary {
        attempted: 0,
        sent: 0,
        send_errors: 0,
        first_error: None,
        start_ns,
        end_ns: 0,
        rate: args.rate,
        dscp: args.dscp,
        max_late_us: 0,
    };
    for seq in 0..count {
        let due = start + interval * u32::try_from(seq).unwrap_or(u32::MAX);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        } else {
            let late = u64::try_from((now - due).as_micros()).unwrap_or(u64::MAX);
            summary.max_late_us = summary.max_late_us.max(late);
        }
        packet[..8].copy_from_slice(&seq.to_be_bytes());
        packet[8..16].copy_from_slice(&now_ns().to_be_bytes());
        summary.attempted += 1;
        match socket.send(&packet) {
            Ok(_) => summary.sent += 1,
            Err(e) => {
                summary.send_errors += 1;
                summary.first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
    summary.end_ns = now_ns();
    match &args.out {
        Some(path) => write_json_atomically(path, &summary),
        None => {
            println!(
                "{}",
                serde_json::to_string(&summary).map_err(|e| Exit::failure(e.to_string()))?
            );
            Ok(())
        }
    }
}

/// A silence between two consecutive first arrivals at the sink.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Gap {
    /// Sequence number of the packet before the gap.
    after_seq: u64,
    /// Sequence number of the packet that ended it.
    next_seq: u64,
    /// Receive time of the packet before the gap, Unix nanoseconds.
    start_ns: u64,
    /// Length, milliseconds.
    ms: f64,
}

/// What the sink writes when it stops.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct SinkSummary {
    /// Distinct sequence numbers received.
    pub(crate) received: u64,
    /// Packets whose sequence number had been received already.
    pub(crate) duplicates: u64,
    /// Datagrams too short to carry a sequence number.
    pub(crate) malformed: u64,
    /// Highest sequence number received.
    pub(crate) max_seq: Option<u64>,
    pub(crate) first_recv_ns: Option<u64>,
    pub(crate) last_recv_ns: Option<u64>,
    /// Distinct packets received per block of 100 sequence numbers.
    pub(crate) received_per_100: Vec<u32>,
    /// Distinct packets received per block of 10 sequence numbers (10 ms at 1000 pps).
    #[serde(default)]
    pub(crate) received_per_10: Vec<u16>,
    /// Of those, packets whose one-way delay exceeded the sink's `--late-ms`, per block of 10.
    #[serde(default)]
    pub(crate) late_per_10: Vec<u16>,
    /// Silences longer than two packet intervals, in arrival order.
    pub(crate) gaps: Vec<Gap>,
    pub(crate) gaps_truncated: bool,
    /// One-way delay (send timestamp to arrival; one machine, one clock), milliseconds.
    pub(crate) one_way_ms_p50: Option<f64>,
    pub(crate) one_way_ms_p99: Option<f64>,
    pub(crate) one_way_ms_max: Option<f64>,
    /// Why it stopped: `sigterm` or `deadline`.
    pub(crate) stopped_by: String,
}

#[derive(Debug)]
struct SinkState {
    seen: Vec<bool>,
    last: Option<(u64, u64)>,
    gap_ns: u64,
    late_ns: u64,
    delays_us: Vec<u64>,
    summary: SinkSummary,
}

impl SinkState {
    fn new(rate: u32, late_ms: u32) -> Self {
        Self {
            seen: Vec::new(),
            last: None,
            gap_ns: 2 * 1_000_000_000 / u64::from(rate),
            late_ns: u64::from(late_ms) * 1_000_000,
            delays_us: Vec::new(),
            summary: SinkSummary::default(),
        }
    }

    fn on_packet(&mut self, data: &[u8], now: u64) {
        let (Some(seq), Some(sent)) = (
            data.get(..8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes),
            data.get(8..16)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes),
        ) else {
            self.summary.malformed += 1;
            return;
        };
        // Sequence numbers come from our own source; a bound keeps a stray datagram from
        // making the table huge.
        let Ok(idx) = usize::try_from(seq) else {
            self.summary.malformed += 1;
            return;
        };
        if idx > 100_000_000 {
            self.summary.malformed += 1;
            return;
        }
        if self.seen.len() <= idx {
            self.seen.resize(idx + 1, false);
        }
        if self.seen[idx] {
            self.summary.duplicates += 1;
            return;
        }
        self.seen[idx] = true;
        let s = &mut self.summary;
        s.received += 1;
        s.max_seq = Some(s.max_seq.map_or(seq, |m| m.max(seq)));
        s.first_recv_ns.get_or_insert(now);
        s.last_recv_ns = Some(now);
        let bucket = usize::try_from(seq / BUCKET).unwrap_or(usize::MAX);
        if s.received_per_100.len() <= bucket {
            s.received_per_100.resize(bucket + 1, 0);
        }
        s.received_per_100[bucket] += 1;
        let bin = usize::try_from(seq / FINE_BUCKET).unwrap_or(usize::MAX);
        if s.received_per_10.len() <= bin {
            s.received_per_10.resize(bin + 1, 0);
        }
        s.received_per_10[bin] += 1;
        if s.late_per_10.len() <= bin {
            s.late_per_10.resize(bin + 1, 0);
        }
        if now.saturating_sub(sent) > self.late_ns {
            s.late_per_10[bin] += 1;
        }
        if let Some((last_seq, last_ns)) = self.last
            && now.saturating_sub(last_ns) > self.gap_ns
        {
            if s.gaps.len() < MAX_GAPS {
                s.gaps.push(Gap {
                    after_seq: last_seq,
                    next_seq: seq,
                    start_ns: last_ns,
                    ms: (now - last_ns) as f64 / 1e6,
                });
            } else {
                s.gaps_truncated = true;
            }
        }
        self.last = Some((seq, now));
        self.delays_us.push(now.saturating_sub(sent) / 1000);
    }

    fn finish(mut self, stopped_by: &str) -> SinkSummary {
        self.delays_us.sort_unstable();
        let pick = |q: f64| {
            let n = self.delays_us.len();
            (n > 0).then(|| {
                let i = ((n - 1) as f64 * q).round() as usize;
                self.delays_us[i.min(n - 1)] as f64 / 1000.0
            })
        };
        self.summary.one_way_ms_p50 = pick(0.5);
        self.summary.one_way_ms_p99 = pick(0.99);
        self.summary.one_way_ms_max = pick(1.0);
        self.summary.stopped_by = stopped_by.to_owned();
        self.summary
    }
}

/// Runs the hidden `x0t bench udp-sink`: receives such a stream and writes a summary.
pub fn udp_sink(args: UdpSinkArgs) -> CmdResult {
    if !(args.seconds > 0.0 && args.seconds <= 86_400.0) {
        return Err(Exit::usage("--seconds must be in (0, 86400]"));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Exit::failure(format!("runtime: {e}")))?;
    let summary = rt.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let socket = tokio::net::UdpSocket::bind(args.bind)
            .await
            .map_err(|e| Exit::failure(format!("bind {}: {e}", args.bind)))?;
        let mut term =
            signal(SignalKind::terminate()).map_err(|e| Exit::failure(format!("SIGTERM: {e}")))?;
        let deadline = tokio::time::sleep(Duration::from_secs_f64(args.seconds));
        tokio::pin!(deadline);
        eprintln!("udp-sink listening on {}", args.bind);
        let mut state = SinkState::new(args.rate, args.late_ms);
        let mut buf = [0u8; 2048];
        let stopped_by = loop {
            tokio::select! {
                r = socket.recv(&mut buf) => match r {
                    Ok(n) => state.on_packet(&buf[..n], now_ns()),
                    Err(e) => eprintln!("udp-sink: {e}"),
                },
                _ = term.recv() => break "sigterm",
                () = &mut deadline => break "deadline",
            }
        };
        Ok::<_, Exit>(state.finish(stopped_by))
    })?;
    write_json_atomically(&args.out, &summary)
}

/// One event from a daemon's log after the fault.
#[derive(Debug, Clone, Serialize)]
pub struct LogEvent {
    /// The node whose log it is.
    pub node: &'static str,
    /// Milliseconds after the fault was injected (log time stamps, one clock).
    pub t_ms: f64,
    /// The log line.
    pub line: String,
}

#[derive(Debug, Clone, Serialize)]
struct RunResult {
    run: u32,
    /// The lab it ran in (removed afterwards).
    lab: String,
    /// Node names: the relay that carried the stream and was hit.
    primary_relay: String,
    /// Longest silence at the sink that ended after the fault, ms (≈ 1 when none was seen).
    outage_ms: f64,
    /// When that silence began (its last packet before), ms relative to the fault.
    outage_start_ms: Option<f64>,
    /// Longest run of consecutive missing sequence numbers in that silence.
    max_missing_run: u64,
    /// Sequence numbers issued minus distinct ones received.
    lost_packets: u64,
    attempted: u64,
    send_errors: u64,
    received: u64,
    duplicates: u64,
    /// Distinct packets received that were sent before the fault.
    delivered_before_fault: u64,
    /// Distinct packets received among those sent in the last second of the stream.
    delivered_last_second: u64,
    sent_last_second: u64,
    /// Whether packets arrived again after the fault.
    recovered: bool,
    /// Longest silence before the fault (steady-state jitter), ms.
    max_gap_before_fault_ms: f64,
    /// Time from the fault to n0's first log line about losing the relay, ms.
    detected_ms: Option<f64>,
    /// That log line, without its time stamp.
    detected_by: Option<String>,
    /// Time from the fault to n0's first route change towards n2, ms.
    rerouted_ms: Option<f64>,
    /// How long injecting the fault took (the `ip` or `kill` command), ms.
    inject_ms: f64,
    one_way_ms_p50: Option<f64>,
    one_way_ms_max: Option<f64>,
    /// Routing events in n0's and n2's logs after the fault (first ones).
    events: Vec<LogEvent>,
}

#[derive(Debug, Clone, Serialize)]
struct FailedRun {
    run: u32,
    error: String,
}

#[derive(Debug, Clone, Serialize)]
struct ScenarioRow {
    name: &'static str,
    mode: &'static str,
    /// Median over the runs.
    outage_ms: Option<f64>,
    /// Median over the runs.
    lost_packets: Option<f64>,
    target: &'static str,
    /// `met`, `missed`, `skipped` or `failed` (no run measured).
    result: &'static str,
    skipped: Option<String>,
    runs: Vec<RunResult>,
    failed_runs: Vec<FailedRun>,
}

#[derive(Debug, Serialize)]
struct Report {
    bench: &'static str,
    what: &'static str,
    topology: &'static str,
    seconds: u32,
    fault_after_s: f64,
    rate_pps: u32,
    runs_per_row: u32,
    scenarios: Vec<ScenarioRow>,
    notes: Vec<String>,
    cores: usize,
    unix_time: u64,
}

fn progress(msg: impl AsRef<str>) {
    eprintln!("[failover] {}", msg.as_ref());
}

fn target_of(scenario: Scenario, mode: Mode) -> (&'static str, fn(f64, f64) -> bool) {
    match (scenario, mode) {
        (Scenario::LinkDown, Mode::Default) => ("outage_ms <= 50", |o, _| o <= 50.0),
        (Scenario::RelayKill, Mode::Default) => ("outage_ms <= 500", |o, _| o <= 500.0),
        (_, Mode::Redundant) => ("lost_packets == 0", |_, l| l == 0.0),
    }
}

pub(crate) fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// `x0t demo --lab`: one relay-kill run in default mode (namespaces, real TUN devices), as the
/// demo's summary.
pub fn demo_in_lab(seconds: u32) -> Result<crate::demo::DemoSummary, String> {
    let seconds = seconds.max(3);
    progress(format!(
        "demo in the lab: a ring of 4 namespaces, a {RATE_PPS} packet/s stream n0 → n2, the relay killed after {:.1} s",
        f64::from(seconds) * FAULT_AT
    ));
    let r = run_one(Scenario::RelayKill, Mode::Default, 0, seconds).map_err(|e| match e {
        RunError::Refused(m) | RunError::Failed(m) => m,
    })?;
    for e in &r.events {
        progress(format!("{:>8.1} ms  {}: {}", e.t_ms, e.node, e.line));
    }
    Ok(crate::demo::DemoSummary {
        mode: "lab",
        nodes: 4,
        form_ms: None,
        source: "n0".into(),
        destination: "n2".into(),
        killed_relay: r.primary_relay.clone(),
        detect_ms: r.detected_ms,
        reroute_ms: r.rerouted_ms,
        recover_ms: r
            .recovered
            .then(|| r.outage_start_ms.unwrap_or(0.0).max(0.0) + r.outage_ms),
        sent: r.attempted,
        delivered: r.received.saturating_sub(r.duplicates),
        lost: r.lost_packets,
        // A ring of four: the other relay.
        path_after: Some(format!(
            "n0 → {} → n2",
            if r.primary_relay == "n1" { "n3" } else { "n1" }
        )),
        dir: None,
    })
}

/// Why a run produced no measurement.
#[derive(Debug)]
pub(crate) enum RunError {
    /// A daemon refused its configuration (exit 64): the mode is not available.
    Refused(String),
    Failed(String),
}

impl From<String> for RunError {
    fn from(e: String) -> Self {
        RunError::Failed(e)
    }
}

pub(crate) fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join(" | ")
}

/// A daemon that exited with 64 refused its configuration.
fn refused_daemon(lab: &mut Lab, dir: &Path) -> Option<String> {
    let pids: Vec<(u32, usize)> = lab
        .state()
        .processes
        .iter()
        .filter(|p| p.label == "x0t")
        .map(|p| (p.pid, p.node))
        .collect();
    for (pid, node) in pids {
        if let Some(status) = lab.try_wait(pid)
            && status.code() == Some(i32::from(exit::USAGE))
        {
            let log = dir.join(format!("n{node}")).join("x0t.log");
            return Some(format!(
                "the daemon refused its configuration (exit 64): {}",
                tail(&log, 2)
            ));
        }
    }
    None
}

fn any_daemon_exited(lab: &mut Lab, daemons: &[crate::lab::LabDaemon]) -> Option<String> {
    for (i, d) in daemons.iter().enumerate() {
        if let Some(status) = lab.try_wait(d.process.pid) {
            return Some(format!(
                "daemon n{i} exited ({status}): {}",
                tail(&d.log, 3)
            ));
        }
    }
    None
}

fn wait_reachable(
    lab: &mut Lab,
    daemons: &[crate::lab::LabDaemon],
    target: Ipv6Addr,
    within: Duration,
) -> Result<(), RunError> {
    let deadline = Instant::now() + within;
    let t = target.to_string();
    loop {
        if let Some(e) = any_daemon_exited(lab, daemons) {
            return Err(RunError::Failed(e));
        }
        let ok = lab
            .exec(0, &["ping", "-c", "1", "-W", "1", "-q", &t])
            .is_ok_and(|o| o.status.success());
        if ok {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(RunError::Failed(format!(
                "{t} not reachable from n0 within {} s",
                within.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The next hop of n0's current route to `dst`, from its log's last `route dst=… via=…` line.
fn current_next_hop(log: &Path, dst: &str) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    let dst_field = format!("dst={dst}");
    text.lines()
        .filter(|l| l.contains(" route ") && l.split_whitespace().any(|w| w == dst_field))
        .filter_map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("via="))
                .map(str::to_owned)
        })
        .next_back()
}

pub(crate) fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// Lines appended to a log after `offset`, with their time relative to `fault_ns`.
pub(crate) fn events_since(
    node: &'static str,
    log: &Path,
    offset: u64,
    fault_ns: u64,
) -> Vec<LogEvent> {
    let Ok(mut f) = std::fs::File::open(log) else {
        return Vec::new();
    };
    if f.seek(std::io::SeekFrom::Start(offset)).is_err() {
        return Vec::new();
    }
    let mut text = String::new();
    let _ = std::io::BufReader::new(&mut f).read_to_string(&mut text);
    let mut out = Vec::new();
    for line in text.lines() {
        let mut words = line.splitn(2, char::is_whitespace);
        let (Some(stamp), Some(rest)) = (words.next(), words.next()) else {
            continue;
        };
        let Ok(t) = humantime::parse_rfc3339(stamp) else {
            continue;
        };
        let rest = rest.trim_start();
        let relevant = ["route", "neighbour", "link down", "underlay"]
            .iter()
            .any(|k| rest.contains(k));
        if !relevant {
            continue;
        }
        let t_ns = unix_ns(t);
        out.push(LogEvent {
            node,
            t_ms: (t_ns as f64 - fault_ns as f64) / 1e6,
            line: rest.to_owned(),
        });
    }
    out
}

/// Reads a JSON file a helper writes atomically, waiting for it up to `within`.
fn read_summary<T: for<'de> Deserialize<'de>>(path: &Path, within: Duration) -> Result<T, String> {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            return serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()));
        }
        if Instant::now() > deadline {
            return Err(format!("{} was not written", path.display()));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// SIGKILL for a process the lab started, by PID, after checking it is still that process.
pub(crate) fn sigkill(record: &x0_lab::ProcessRecord) -> Result<(), String> {
    if !record.is_running() {
        return Err(format!("process {} is not running any more", record.pid));
    }
    let kill = x0_lab::tools::which("kill").ok_or("`kill` is not installed (procps)")?;
    let pid = record.pid.to_string();
    let out = std::process::Command::new(kill)
        .args(["-s", "KILL", &pid])
        .output()
        .map_err(|e| format!("kill: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "kill -s KILL {pid}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A ring of four namespaces `n0–n1–n2–n3–n0` with one x0t daemon each, n0 reaching n2's
/// overlay address (the lab is removed when this is dropped).
pub(crate) struct Ring {
    pub(crate) lab: Lab,
    pub(crate) daemons: Vec<crate::lab::LabDaemon>,
    /// The lab's name (removed afterwards).
    pub(crate) lab_name: String,
    /// This executable, run inside the namespaces.
    pub(crate) exe: PathBuf,
}

/// Builds the ring (no underlay routes) with `extra_config` appended to every daemon's
/// configuration, waits until n0 reaches n2 through the overlay and lets the adverts settle.
pub(crate) fn start_ring(name: &str, extra_config: String) -> Result<Ring, RunError> {
    start_ring_behind(name, 0, extra_config)
}

/// [`start_ring`] with `behind` more nodes (n4, …), each linked to both relays n1 and n3: a
/// second destination behind each relay, with a path of its own around either.
pub(crate) fn start_ring_behind(
    name: &str,
    behind: usize,
    extra_config: String,
) -> Result<Ring, RunError> {
    let name = LabName::new(name).map_err(|e| e.to_string())?;
    let ring = Topology::generate(Shape::Ring, 4).map_err(|e| e.to_string())?;
    let topology = if behind == 0 {
        ring
    } else {
        let mut links = ring.links().to_vec();
        for k in 4..4 + behind {
            for relay in [1, 3] {
                links.push(x0_lab::topology::LinkSpec {
                    a: relay,
                    b: k,
                    loss_percent: 0,
                    rate_mbit: None,
                });
            }
        }
        let nodes = (0..4 + behind).map(x0_lab::NodeName::indexed).collect();
        Topology::new(nodes, links).map_err(|e| e.to_string())?
    };
    // No underlay routes: the overlay must not find a shortcut through the kernel.
    let lab_name = name.to_string();
    let spec = LabSpec::new(name, topology);
    let mut lab = Lab::up(&spec).map_err(|e| e.to_string())?;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let plan = crate::lab::DaemonPlan {
        binary: exe.clone(),
        dir: lab.dir().join("daemons"),
        extra_config,
    };
    let daemons = match crate::lab::start_daemons(&mut lab, &plan) {
        Ok(d) => d,
        Err(e) => {
            // A refused key kills n0 at once, and then nobody can join.
            std::thread::sleep(Duration::from_millis(200));
            return Err(match refused_daemon(&mut lab, &plan.dir) {
                Some(reason) => RunError::Refused(reason),
                None => RunError::Failed(e.message),
            });
        }
    };
    std::thread::sleep(Duration::from_millis(300));
    if let Some(reason) = refused_daemon(&mut lab, &plan.dir) {
        return Err(RunError::Refused(reason));
    }
    let target = daemons[2].overlay;
    wait_reachable(&mut lab, &daemons, target, Duration::from_secs(30))?;
    // Let the adverts settle so that n0 knows the whole ring (and its backup path).
    std::thread::sleep(Duration::from_secs(1));
    Ok(Ring {
        lab,
        daemons,
        lab_name,
        exe,
    })
}

/// A running udp-source (in n0) / udp-sink (in n2) pair.
pub(crate) struct Stream {
    sink_pid: u32,
    source_pid: u32,
    sink_out: PathBuf,
    source_out: PathBuf,
    sink_log: PathBuf,
    source_log: PathBuf,
    seconds: f64,
    /// When the source was started.
    pub(crate) started: Instant,
}

/// Starts the sink in n2 and then a `RATE_PPS` source in n0 sending for `seconds`.
pub(crate) fn start_stream(
    ring: &mut Ring,
    seconds: f64,
    dscp: Option<u8>,
) -> Result<Stream, RunError> {
    let lab = &mut ring.lab;
    let exe_s = ring.exe.display().to_string();
    let dir = lab.dir().to_owned();
    let sink_out = dir.join("sink.json");
    let source_out = dir.join("source.json");
    let sink_log = dir.join("sink.log");
    let sink_addr = SocketAddr::from((ring.daemons[2].overlay, SINK_PORT)).to_string();
    let sink = lab
        .spawn(
            2,
            "udp-sink",
            &[
                &exe_s,
                "bench",
                "udp-sink",
                "--bind",
                &sink_addr,
                "--out",
                &sink_out.display().to_string(),
                "--seconds",
                &(seconds + 30.0).to_string(),
            ],
            &SpawnOptions {
                log: Some(sink_log.clone()),
                detach: false,
            },
        )
        .map_err(|e| e.to_string())?;
    let ready = Instant::now() + Duration::from_secs(5);
    while !std::fs::read_to_string(&sink_log).is_ok_and(|t| t.contains("listening")) {
        if Instant::now() > ready || lab.try_wait(sink.pid).is_some() {
            return Err(RunError::Failed(format!(
                "udp-sink did not start: {}",
                tail(&sink_log, 3)
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut source_argv = vec![
        exe_s.clone(),
        "bench".into(),
        "udp-source".into(),
        "--to".into(),
        sink_addr.clone(),
        "--rate".into(),
        RATE_PPS.to_string(),
        "--seconds".into(),
        seconds.to_string(),
        "--out".into(),
        source_out.display().to_string(),
    ];
    if let Some(dscp) = dscp {
        source_argv.extend(["--dscp".into(), dscp.to_string()]);
    }
    let source_argv: Vec<&str> = source_argv.iter().map(String::as_str).collect();
    let source_log = dir.join("source.log");
    let started = Instant::now();
    let source = lab
        .spawn(
            0,
            "udp-source",
            &source_argv,
            &SpawnOptions {
                log: Some(source_log.clone()),
                detach: false,
            },
        )
        .map_err(|e| e.to_string())?;
    Ok(Stream {
        sink_pid: sink.pid,
        source_pid: source.pid,
        sink_out,
        source_out,
        sink_log,
        source_log,
        seconds,
        started,
    })
}

/// Waits for the source to finish, lets packets in flight arrive, stops the sink and reads
/// both summaries.
pub(crate) fn finish_stream(
    ring: &mut Ring,
    stream: Stream,
) -> Result<(SourceSummary, SinkSummary), RunError> {
    let lab = &mut ring.lab;
    let done = stream.started + Duration::from_secs_f64(stream.seconds + 15.0);
    while lab.try_wait(stream.source_pid).is_none() {
        if Instant::now() > done {
            return Err(RunError::Failed("udp-source did not finish".into()));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let src: SourceSummary = read_summary(&stream.source_out, Duration::from_secs(1))
        .map_err(|e| format!("udp-source: {e}: {}", tail(&stream.source_log, 3)))?;
    // Packets still in flight.
    std::thread::sleep(Duration::from_millis(300));
    lab.stop(stream.sink_pid).map_err(|e| e.to_string())?;
    let sink: SinkSummary = read_summary(&stream.sink_out, Duration::from_secs(3))
        .map_err(|e| format!("udp-sink: {e}: {}", tail(&stream.sink_log, 3)))?;
    Ok((src, sink))
}

/// The relay (1 or 3) that carries n0's traffic to n2 right now, from n0's log.
pub(crate) fn primary_relay(ring: &Ring) -> Result<usize, String> {
    let d = &ring.daemons;
    let relay_id = current_next_hop(&d[0].log, &d[2].node_id)
        .ok_or_else(|| "n0 logged no route to n2 (no `route dst=… via=…` line)".to_owned())?;
    [1usize, 3]
        .into_iter()
        .find(|&i| d[i].node_id == relay_id)
        .ok_or_else(|| format!("n0 routes to n2 via {relay_id}, which is neither n1 nor n3"))
}

fn run_one(scenario: Scenario, mode: Mode, run: u32, seconds: u32) -> Result<RunResult, RunError> {
    let name = format!(
        "fo{}_{}_{}{run}",
        std::process::id(),
        scenario.short(),
        &mode.name()[..1]
    );
    let mut ring = start_ring(&name, mode.extra_config())?;
    let stream = start_stream(&mut ring, f64::from(seconds), mode.dscp())?;
    let fault_after = Duration::from_secs_f64(f64::from(seconds) * FAULT_AT);
    std::thread::sleep(fault_after.saturating_sub(stream.started.elapsed()));

    // The relay that carries the stream right now.
    let relay = primary_relay(&ring)?;
    let relay_name = format!("n{relay}");
    let daemons = ring.daemons.clone();
    let n2 = &daemons[2];
    let offsets: Vec<u64> = [0usize, 2]
        .iter()
        .map(|&i| file_len(&daemons[i].log))
        .collect();

    let fault_ns = now_ns();
    let t_inject = Instant::now();
    match scenario {
        Scenario::LinkDown => ring
            .lab
            .set_link_up(0, relay, false)
            .map_err(|e| format!("setting the n0–{relay_name} link down: {e}"))?,
        Scenario::RelayKill => sigkill(&daemons[relay].process)?,
    }
    let inject_ms = t_inject.elapsed().as_secs_f64() * 1e3;
    progress(format!(
        "{} {} run {}: {} on {relay_name} after {:.1} s of streaming",
        scenario.name(),
        mode.name(),
        run + 1,
        scenario.name(),
        stream.started.elapsed().as_secs_f64()
    ));
    if scenario == Scenario::RelayKill {
        // Collect the zombie; the record then says it is gone.
        let _ = ring.lab.stop(daemons[relay].process.pid);
    }

    let (src, sink) = finish_stream(&mut ring, stream)?;

    let mut events = events_since("n0", &daemons[0].log, offsets[0], fault_ns);
    let n0_events = events.clone();
    events.extend(events_since("n2", &daemons[2].log, offsets[1], fault_ns));
    events.sort_by(|a, b| a.t_ms.total_cmp(&b.t_ms));
    events.truncate(16);
    let relay_id_s = daemons[relay].node_id.as_str();
    let detected = n0_events.iter().find(|e| {
        e.line.contains(relay_id_s)
            && ["neighbour down", "link down", "underlay interface down"]
                .iter()
                .any(|k| e.line.contains(k))
    });
    let dst_field = format!("dst={}", n2.node_id);
    let rerouted = n0_events.iter().find(|e| {
        e.line.split_whitespace().nth(1) == Some("route")
            && e.line.split_whitespace().any(|w| w == dst_field)
    });

    let lab_name = ring.lab_name.clone();
    let teardown = ring.lab.down();
    if !teardown.errors.is_empty() {
        progress(format!("teardown: {}", teardown.errors.join("; ")));
    }
    Ok(analyse(AnalysisInput {
        run,
        lab: lab_name,
        relay_name,
        src: &src,
        sink: &sink,
        fault_ns,
        inject_ms,
        detected: detected.map(|e| (e.t_ms, e.line.clone())),
        rerouted_ms: rerouted.map(|e| e.t_ms),
        events,
    }))
}

struct AnalysisInput<'a> {
    run: u32,
    lab: String,
    relay_name: String,
    src: &'a SourceSummary,
    sink: &'a SinkSummary,
    fault_ns: u64,
    inject_ms: f64,
    detected: Option<(f64, String)>,
    rerouted_ms: Option<f64>,
    events: Vec<LogEvent>,
}

fn analyse(a: AnalysisInput<'_>) -> RunResult {
    let (src, sink) = (a.src, a.sink);
    let interval_ns = 1_000_000_000 / u64::from(src.rate.max(1));
    let fault_seq = a.fault_ns.saturating_sub(src.start_ns) / interval_ns;
    let gap_end = |g: &Gap| g.start_ns + (g.ms * 1e6) as u64;
    let after: Vec<&Gap> = sink
        .gaps
        .iter()
        .filter(|g| gap_end(g) >= a.fault_ns)
        .collect();
    let before = sink
        .gaps
        .iter()
        .filter(|g| gap_end(g) < a.fault_ns)
        .map(|g| g.ms)
        .fold(0.0, f64::max);
    let recovered = sink.last_recv_ns.is_some_and(|t| t > a.fault_ns);
    let nominal = interval_ns as f64 / 1e6;
    let longest = after.iter().max_by(|x, y| x.ms.total_cmp(&y.ms));
    let mut outage_ms = longest.map_or(nominal, |g| g.ms.max(nominal));
    let mut outage_start_ms = longest.map(|g| (g.start_ns as f64 - a.fault_ns as f64) / 1e6);
    let mut max_missing_run = after
        .iter()
        .map(|g| g.next_seq.saturating_sub(g.after_seq + 1))
        .max()
        .unwrap_or(0);
    if !recovered {
        // Nothing came back: the silence lasted from the last arrival to the end of the stream.
        let last = sink.last_recv_ns.unwrap_or(src.start_ns);
        outage_ms = outage_ms.max((src.end_ns.saturating_sub(last)) as f64 / 1e6);
        outage_start_ms = Some((last as f64 - a.fault_ns as f64) / 1e6);
        max_missing_run = max_missing_run.max(src.attempted.saturating_sub(fault_seq));
    }
    let bucket_sum = |from: u64, to: u64| -> u64 {
        // Whole buckets inside [from, to).
        sink.received_per_100
            .iter()
            .enumerate()
            .filter(|(i, _)| {
                let lo = *i as u64 * BUCKET;
                lo >= from && lo + BUCKET <= to
            })
            .map(|(_, &n)| u64::from(n))
            .sum()
    };
    let per_second = u64::from(src.rate);
    let last_second_from = src.attempted.saturating_sub(per_second).div_ceil(BUCKET) * BUCKET;
    let last_end = src.attempted / BUCKET * BUCKET;
    RunResult {
        run: a.run,
        lab: a.lab,
        primary_relay: a.relay_name,
        outage_ms,
        outage_start_ms,
        max_missing_run,
        lost_packets: src.attempted.saturating_sub(sink.received),
        attempted: src.attempted,
        send_errors: src.send_errors,
        received: sink.received,
        duplicates: sink.duplicates,
        delivered_before_fault: bucket_sum(0, fault_seq),
        delivered_last_second: bucket_sum(last_second_from, last_end),
        sent_last_second: last_end.saturating_sub(last_second_from),
        recovered,
        max_gap_before_fault_ms: before,
        detected_ms: a.detected.as_ref().map(|d| d.0),
        detected_by: a.detected.map(|d| d.1),
        rerouted_ms: a.rerouted_ms,
        inject_ms: a.inject_ms,
        one_way_ms_p50: sink.one_way_ms_p50,
        one_way_ms_max: sink.one_way_ms_max,
        events: a.events,
    }
}

/// Runs `x0t bench failover`.
pub fn run(args: FailoverArgs) -> CmdResult {
    crate::lab::require_tools(&[("ping", "iputils-ping"), ("kill", "procps")])?;
    let mut scenarios = args.scenarios.clone();
    scenarios.dedup();
    let mut modes = args.modes.clone();
    modes.dedup();
    let mut report = Report {
        bench: "failover",
        what: "outage of a 1000 packet/s UDP stream from n0 to n2 through the overlay when the \
               relay carrying it fails, each run in a fresh lab",
        topology: "ring n0-n1-n2-n3-n0 (x0-lab, no underlay routes), one x0t daemon per node; \
                   n0 to n2 via n1 or via n3",
        seconds: args.seconds,
        fault_after_s: f64::from(args.seconds) * FAULT_AT,
        rate_pps: RATE_PPS,
        runs_per_row: args.runs,
        scenarios: Vec::new(),
        notes: vec![
            "outage_ms: the longest silence between consecutive first arrivals at the sink that \
             ends after the fault (receive time); 1.0 means no silence above 2 packet intervals"
                .into(),
            "lost_packets: sequence numbers the source issued minus distinct ones the sink \
             received; outage_ms and lost_packets per row are medians over the runs"
                .into(),
            "link-down: Lab::set_link_up(n0, relay, down) sets both veth ends down; relay-kill: \
             SIGKILL by PID of the relay's daemon (checked against its recorded start time)"
                .into(),
            "detected_ms / rerouted_ms: from n0's log time stamps (same clock as the fault)".into(),
        ],
        cores: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        unix_time: now_ns() / 1_000_000_000,
    };
    let mut redundant_refused: Option<String> = None;
    for &mode in &modes {
        for &scenario in &scenarios {
            let (target, met) = target_of(scenario, mode);
            let mut row = ScenarioRow {
                name: scenario.name(),
                mode: mode.name(),
                outage_ms: None,
                lost_packets: None,
                target,
                result: "failed",
                skipped: None,
                runs: Vec::new(),
                failed_runs: Vec::new(),
            };
            for run in 0..args.runs {
                if let (Mode::Redundant, Some(reason)) = (mode, &redundant_refused) {
                    row.skipped = Some(reason.clone());
                    break;
                }
                progress(format!(
                    "{} {} run {}/{}: setting up",
                    scenario.name(),
                    mode.name(),
                    run + 1,
                    args.runs
                ));
                match run_one(scenario, mode, run, args.seconds) {
                    Ok(r) => {
                        progress(format!(
                            "{} {} run {}: outage {:.1} ms, lost {} of {}, detected {}, \
                             rerouted {}",
                            scenario.name(),
                            mode.name(),
                            run + 1,
                            r.outage_ms,
                            r.lost_packets,
                            r.attempted,
                            r.detected_ms
                                .map_or_else(|| "-".into(), |t| format!("{t:.0} ms")),
                            r.rerouted_ms
                                .map_or_else(|| "-".into(), |t| format!("{t:.0} ms")),
                        ));
                        row.runs.push(r);
                    }
                    Err(RunError::Refused(reason)) => {
                        progress(format!(
                            "{} {}: skipped: {reason}",
                            scenario.name(),
                            mode.name()
                        ));
                        redundant_refused = Some(reason.clone());
                        row.skipped = Some(reason);
                        break;
                    }
                    Err(RunError::Failed(error)) => {
                        progress(format!(
                            "{} {} run {}: failed: {error}",
                            scenario.name(),
                            mode.name(),
                            run + 1
                        ));
                        row.failed_runs.push(FailedRun { run, error });
                    }
                }
            }
            row.outage_ms = median(row.runs.iter().map(|r| r.outage_ms).collect());
            row.lost_packets = median(row.runs.iter().map(|r| r.lost_packets as f64).collect());
            row.result = match (row.outage_ms, row.lost_packets) {
                _ if row.skipped.is_some() && row.runs.is_empty() => "skipped",
                (Some(o), Some(l)) if met(o, l) => "met",
                (Some(_), Some(_)) => "missed",
                _ => "failed",
            };
            report.scenarios.push(row);
        }
    }
    let (text, file) = crate::report::write_report(&report, &args.out, "failover.json")?;
    if args.json {
        println!("{text}");
    } else {
        print_table(&report, &file);
    }
    if report.scenarios.iter().all(|r| r.runs.is_empty()) {
        return Err(Exit::new(
            exit::FAILURE,
            "no scenario could be measured (see failed_runs and skipped)",
        ));
    }
    Ok(())
}

fn print_table(report: &Report, file: &Path) {
    println!(
        "failover of a {} packet/s UDP stream n0 → n2 (ring of 4), fault after {:.1} s of {} s, \
         median of {} run(s):",
        report.rate_pps, report.fault_after_s, report.seconds, report.runs_per_row
    );
    println!(
        "  {:<11} {:<10} {:>10} {:>6}  {:<18} {:<7}  runs (outage ms / lost)",
        "scenario", "mode", "outage ms", "lost", "target", "result"
    );
    for r in &report.scenarios {
        let runs: Vec<String> = r
            .runs
            .iter()
            .map(|x| format!("{:.1}/{}", x.outage_ms, x.lost_packets))
            .collect();
        println!(
            "  {:<11} {:<10} {:>10} {:>6}  {:<18} {:<7}  {}",
            r.name,
            r.mode,
            r.outage_ms
                .map_or_else(|| "-".into(), |v| format!("{v:.1}")),
            r.lost_packets
                .map_or_else(|| "-".into(), |v| format!("{v:.0}")),
            r.target,
            r.result,
            runs.join("  ")
        );
        if let Some(reason) = &r.skipped {
            println!("    skipped: {reason}");
        }
        for f in &r.failed_runs {
            println!("    run {} failed: {}", f.run + 1, f.error);
        }
    }
    println!("written to {}", file.display());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(seq: u64, sent: u64) -> Vec<u8> {
        let mut p = vec![0u8; PACKET_BYTES];
        p[..8].copy_from_slice(&seq.to_be_bytes());
        p[8..16].copy_from_slice(&sent.to_be_bytes());
        p
    }

    #[test]
    fn sink_records_gaps_duplicates_and_buckets() {
        let mut s = SinkState::new(1000, 50);
        let ms = 1_000_000u64;
        for seq in 0..300u64 {
            // 100..150 lost: a 51 ms silence between 99 and 150.
            if (100..150).contains(&seq) {
                continue;
            }
            s.on_packet(&packet(seq, seq * ms), seq * ms + ms / 2);
        }
        s.on_packet(&packet(300, 300 * ms), 360 * ms);
        s.on_packet(&packet(5, 5 * ms), 400 * ms);
        s.on_packet(&[1, 2, 3], 401 * ms);
        let sum = s.finish("sigterm");
        assert_eq!(sum.received, 251);
        assert_eq!(sum.late_per_10[30], 1);
        assert_eq!(sum.late_per_10[..30].iter().sum::<u16>(), 0);
        assert_eq!(sum.duplicates, 1);
        assert_eq!(sum.malformed, 1);
        assert_eq!(sum.received_per_100, vec![100, 50, 100, 1]);
        assert_eq!(sum.received_per_10.len(), 31);
        assert_eq!(sum.received_per_10[9..16], [10, 0, 0, 0, 0, 0, 10]);
        // The silence before the late packet 300 is a second gap.
        assert_eq!(sum.gaps.len(), 2);
        assert_eq!((sum.gaps[0].after_seq, sum.gaps[0].next_seq), (99, 150));
        assert!((sum.gaps[0].ms - 51.0).abs() < 1e-9);
        assert_eq!(sum.one_way_ms_p50, Some(0.5));
    }

    fn source(attempted: u64) -> SourceSummary {
        SourceSummary {
            attempted,
            sent: attempted,
            send_errors: 0,
            first_error: None,
            start_ns: 0,
            end_ns: attempted * 1_000_000,
            rate: 1000,
            dscp: None,
            max_late_us: 0,
        }
    }

    fn input<'a>(
        src: &'a SourceSummary,
        sink: &'a SinkSummary,
        fault_ms: u64,
    ) -> AnalysisInput<'a> {
        AnalysisInput {
            run: 0,
            lab: "t".into(),
            relay_name: "n1".into(),
            src,
            sink,
            fault_ns: fault_ms * 1_000_000,
            inject_ms: 1.0,
            detected: None,
            rerouted_ms: None,
            events: Vec::new(),
        }
    }

    #[test]
    fn outage_is_the_longest_silence_after_the_fault() {
        let ms = 1_000_000u64;
        let mut s = SinkState::new(1000, 50);
        for seq in 0..5000u64 {
            // A 5 ms hiccup before the fault, a 30 ms outage after it (fault at 2000 ms).
            if (500..504).contains(&seq) || (2000..2029).contains(&seq) {
                continue;
            }
            s.on_packet(&packet(seq, seq * ms), seq * ms);
        }
        let sink = s.finish("sigterm");
        let src = source(5000);
        let r = analyse(input(&src, &sink, 2000));
        assert!((r.outage_ms - 30.0).abs() < 1e-9, "{}", r.outage_ms);
        assert_eq!(r.outage_start_ms, Some(-1.0));
        assert_eq!(r.max_missing_run, 29);
        assert_eq!(r.lost_packets, 33);
        assert!((r.max_gap_before_fault_ms - 5.0).abs() < 1e-9);
        assert!(r.recovered);
        assert_eq!(r.delivered_before_fault, 2000 - 4);
        assert_eq!((r.delivered_last_second, r.sent_last_second), (1000, 1000));
    }

    #[test]
    fn a_stream_that_never_comes_back_is_an_outage_to_the_end() {
        let ms = 1_000_000u64;
        let mut s = SinkState::new(1000, 50);
        for seq in 0..2000u64 {
            s.on_packet(&packet(seq, seq * ms), seq * ms);
        }
        let sink = s.finish("sigterm");
        let src = source(5000);
        let r = analyse(input(&src, &sink, 2000));
        assert!(!r.recovered);
        assert!(r.outage_ms > 2990.0, "{}", r.outage_ms);
        assert_eq!(r.lost_packets, 3000);
        assert_eq!(r.delivered_last_second, 0);
    }

    #[test]
    fn medians_and_targets() {
        assert_eq!(median(vec![]), None);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
        let (_, link) = target_of(Scenario::LinkDown, Mode::Default);
        assert!(link(50.0, 9.0) && !link(50.1, 0.0));
        let (_, kill) = target_of(Scenario::RelayKill, Mode::Default);
        assert!(kill(499.0, 400.0));
        let (_, red) = target_of(Scenario::RelayKill, Mode::Redundant);
        assert!(red(300.0, 0.0) && !red(1.0, 1.0));
    }

    #[test]
    fn route_lines_name_the_next_hop() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("x0t.log");
        std::fs::write(
            &log,
            "2026-01-01T00:00:00.000001Z  INFO route dst=aa via=bb backup=false\n\
             2026-01-01T00:00:00.000002Z  INFO route dst=cc via=dd backup=false\n\
             2026-01-01T00:00:01.000000Z  INFO route dst=aa via=ee backup=false\n",
        )
        .unwrap();
        assert_eq!(current_next_hop(&log, "aa").as_deref(), Some("ee"));
        assert_eq!(current_next_hop(&log, "ff"), None);
        let ev = events_since("n0", &log, 0, 1_767_225_600_000_000_000);
        assert_eq!(ev.len(), 3);
        assert!((ev[2].t_ms - 1000.0).abs() < 0.01, "{}", ev[2].t_ms);
        assert_eq!(ev[2].line, "INFO route dst=aa via=ee backup=false");
    }
}
