//! `x0t bench heal`: how fast the self-healing loop notices a fault and end-to-end delivery
//! comes back, measured with real daemons in network namespaces.
//!
//! Each run builds the ring of [`crate::failover`] (`n0–n1–n2–n3–n0`, one daemon per
//! namespace, the self-healing loop on in mode `act`, the eBPF TC counters on and the
//! machine-wide tracepoints off), after the loops' warm-up: the source S is n0, the
//! destination D is n2, the primary relay R1 is whichever of n1/n3 n0 routes through when
//! the fault comes, the other one (R2) is the node-disjoint alternate. The udp-source/udp-sink
//! helpers stream 1,000 packets/s S → D through the TUN devices; after 3 s the fault hits:
//!
//! | scenario | fault | the faulted element |
//! |---|---|---|
//! | `link-down` | the S–R1 veth set down (both ends) | link S–R1 |
//! | `node-crash` | SIGKILL of R1's daemon | node R1 |
//! | `lossy-link` | nftables `numgen random mod 100 < 30 drop` on both ends of S–R1 | link S–R1 |
//! | `latency-spike` | `POST /v1/faults` `{"kind":"delay","peer":R1,"delay_ms":200}` on S | link S–R1 |
//! | `blackhole-relay` | `POST /v1/faults` `{"kind":"blackhole"}` on R1 | node R1 |
//! | `flapping-link` | the S–R1 veth down/up every 2 s for 30 s | link S–R1 |
//! | `healthy-baseline` | none, for `--baseline-seconds` | — |
//!
//! The two `/v1/faults` scenarios need the daemon's fault-injection control
//! (`[danger_fault_injection] enabled = true`); a daemon without it refuses that section
//! (exit 64) and the row says so.
//!
//! What is measured (the analysis functions are pure and unit-tested):
//!
//! * `detect_ms`: fault → `opened_at_unix_ms` of the earliest incident, at any daemon, about
//!   the faulted element with one of the scenario's problems (`GET /v1/incidents`, read inside
//!   each namespace with curl after the stream; wall clock on both sides, one machine);
//! * `recover_ms`: fault → the first 10 ms bin from which every 100 ms window (sliding by
//!   10 ms) to the end of the stream delivers ≥ 99 % of the pre-fault baseline, with at least
//!   1 s of stream after it; a packet counts as delivered when it arrives within 50 ms of being
//!   sent (so a latency spike is an outage until the flow leaves the slow link);
//! * `action`: the earliest action (`GET /v1/actions`) answering an incident about the
//!   faulted element;
//! * `route_changes`: changes of n0's next hop to D (its `route dst=… via=…` and `route lost`
//!   log lines) from the fault to the end of the stream (for `flapping-link`: to 2 s after the
//!   last toggle);
//! * `false_positive_actions`: actions at any daemon, planned after the stream started, about
//!   anything but the faulted element (all of them in `healthy-baseline`).
//!
//! `--sim` runs the same scenarios in the simulator (`bench_heal_sim`, not part of this tree
//! yet): its rows go through `sim_report` into `heal-sim.json`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use serde::Serialize;

use crate::failover::{
    self as fo, FINE_BUCKET, LogEvent, RATE_PPS, Ring, RunError, SinkSummary, SourceSummary,
};
use x0_node::api::{ActionInfo, IncidentInfo};
use x0_node::exit::{self, CmdResult, Exit};

/// Seconds of stream before the fault.
const PRE_FAULT_S: f64 = 3.0;
/// The baseline is measured from this second of the stream to the fault (start-up excluded).
const BASELINE_FROM_S: f64 = 1.0;
/// Share of the baseline delivery that counts as recovered.
const RECOVERED_SHARE: f64 = 0.99;
/// Fine bins per recovery window (100 ms).
const WINDOW_BINS: usize = 10;
/// Fine bins of stream that must follow the recovery point (1 s).
const HOLD_BINS: usize = 100;
/// Loss on the lossy link, percent.
const LOSS_PERCENT: u8 = 30;
/// Added one-way delay of the latency spike, ms.
const SPIKE_MS: u32 = 200;
/// Half-period of the flapping link, and how long it flaps.
const FLAP_HALF_PERIOD: Duration = Duration::from_secs(2);
const FLAP_FOR: Duration = Duration::from_secs(30);
/// Configuration the fault-injection scenarios append to every daemon's.
const FAULT_INJECTION_CONFIG: &str = "[danger_fault_injection]\nenabled = true\n";

/// A fault scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum HealScenario {
    /// The S–R1 veth set down.
    LinkDown,
    /// SIGKILL of R1's daemon.
    NodeCrash,
    /// 30 % loss both ways on S–R1 (nftables).
    LossyLink,
    /// R1 drops transit traffic but answers probes (fault-injection API).
    BlackholeRelay,
    /// +200 ms on S → R1 (fault-injection API).
    LatencySpike,
    /// The S–R1 veth down/up every 2 s for 30 s.
    FlappingLink,
    /// No fault, for --baseline-seconds.
    HealthyBaseline,
}

impl HealScenario {
    /// The scenario's name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::LinkDown => "link-down",
            Self::NodeCrash => "node-crash",
            Self::LossyLink => "lossy-link",
            Self::BlackholeRelay => "blackhole-relay",
            Self::LatencySpike => "latency-spike",
            Self::FlappingLink => "flapping-link",
            Self::HealthyBaseline => "healthy-baseline",
        }
    }

    fn short(self) -> &'static str {
        match self {
            Self::LinkDown => "ld",
            Self::NodeCrash => "nc",
            Self::LossyLink => "ll",
            Self::BlackholeRelay => "bh",
            Self::LatencySpike => "ls",
            Self::FlappingLink => "fl",
            Self::HealthyBaseline => "hb",
        }
    }

    /// Incident problems that count as detecting this fault.
    fn problems(self) -> &'static [&'static str] {
        match self {
            Self::LinkDown => &["link_down", "flapping"],
            Self::NodeCrash => &["node_down", "link_down"],
            Self::LossyLink => &["link_degraded", "link_down", "flapping"],
            Self::BlackholeRelay => &["black_hole", "node_down"],
            Self::LatencySpike => &["link_degraded"],
            Self::FlappingLink => &["flapping", "link_down"],
            Self::HealthyBaseline => &[],
        }
    }

    /// Seconds of stream after the fault (the fault itself included).
    fn post_fault_s(self, baseline_seconds: u32) -> f64 {
        match self {
            Self::LinkDown | Self::NodeCrash => 5.0,
            Self::LossyLink | Self::BlackholeRelay | Self::LatencySpike => 8.0,
            Self::FlappingLink => FLAP_FOR.as_secs_f64() + 3.0,
            Self::HealthyBaseline => f64::from(baseline_seconds) - PRE_FAULT_S,
        }
    }

    /// Nodes added behind both relays (n4, linked to n1 and n3). A relay is blamed for a black
    /// hole only when two destinations behind it, each with a path of its own around it,
    /// corroborate each other (one destination could lie); in the plain ring every path
    /// through R1 also crosses D, so `blackhole-relay` gets a second destination there.
    fn nodes_behind(self) -> usize {
        match self {
            Self::BlackholeRelay => 1,
            _ => 0,
        }
    }

    fn extra_config(self) -> String {
        // The eBPF tracepoints count the whole kernel's drops, and the lab's four "machines"
        // share one kernel: every daemon would see the drops of every namespace (the
        // nftables loss of `lossy-link` as its own kernel drops). Off here; the per-interface
        // TC counters stay.
        let ebpf = "\n[ebpf]\ntracepoints = false\n";
        match self {
            Self::BlackholeRelay | Self::LatencySpike => format!("{ebpf}{FAULT_INJECTION_CONFIG}"),
            _ => ebpf.to_owned(),
        }
    }
}

/// The route changes `flapping-link` may cause: before the loop calls the link flapping it has
/// seen at most `heal.detect.flap_transitions` up/down transitions, each moving n0's route at most
/// once; excluding the link (held `plan.hold_base_ms` = 30 s, longer than the flapping)
/// moves it once more.
pub fn flap_route_change_bound() -> u32 {
    x0_heal::config::DetectConfig::default().flap_transitions + 1
}

/// `x0t bench heal` arguments.
#[derive(Debug, Args)]
pub struct HealArgs {
    /// Scenarios, comma-separated.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "link-down,node-crash,lossy-link,blackhole-relay,latency-spike,flapping-link,healthy-baseline"
    )]
    pub scenarios: Vec<HealScenario>,
    /// Runs per scenario, each in a fresh lab (medians of detect_ms and recover_ms).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=50))]
    pub runs: u32,
    /// Length of `healthy-baseline`, seconds.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u32).range(10..=86_400))]
    pub baseline_seconds: u32,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Directory for heal-lab.json / heal-sim.json.
    #[arg(long, default_value = "bench-results")]
    pub out: PathBuf,
    /// Run the scenarios in the simulator instead of the lab.
    #[arg(long)]
    pub sim: bool,
    /// Nodes of the simulated mesh (with --sim).
    #[arg(long, default_value_t = 1200, value_parser = clap::value_parser!(u64).range(4..=100_000))]
    pub nodes: u64,
    /// Seed of the simulation (with --sim).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Keep each run's evidence here (every daemon's log, incidents and actions as JSON),
    /// in a directory per run named after its lab, for finding the cause of a false action.
    #[arg(long)]
    pub evidence: Option<PathBuf>,
}

/// The targets of a scenario (issue 6).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Target {
    /// Largest detect_ms.
    pub detect_ms: Option<f64>,
    /// Largest recover_ms.
    pub recover_ms: Option<f64>,
    /// Most route changes.
    pub route_changes: Option<u32>,
    /// Most actions (healthy-baseline: zero).
    pub actions: Option<u32>,
}

/// The targets of `scenario`.
pub fn target_of(scenario: HealScenario) -> Target {
    let t = |d: f64, r: f64| Target {
        detect_ms: Some(d),
        recover_ms: Some(r),
        route_changes: None,
        actions: None,
    };
    match scenario {
        HealScenario::LinkDown => t(50.0, 100.0),
        HealScenario::NodeCrash => t(300.0, 500.0),
        HealScenario::LossyLink | HealScenario::BlackholeRelay | HealScenario::LatencySpike => {
            t(2000.0, 3000.0)
        }
        HealScenario::FlappingLink => Target {
            detect_ms: None,
            recover_ms: None,
            route_changes: Some(flap_route_change_bound()),
            actions: None,
        },
        HealScenario::HealthyBaseline => Target {
            detect_ms: None,
            recover_ms: None,
            route_changes: None,
            actions: Some(0),
        },
    }
}

/// One scenario's figures, as the issue lists them, plus the rest.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioRow {
    /// Scenario name.
    pub name: &'static str,
    /// Fault → first incident about it, ms (median over runs).
    pub detect_ms: Option<f64>,
    /// Fault → delivery back to ≥ 99 % of baseline for good, ms (median over runs).
    pub recover_ms: Option<f64>,
    /// First action for that incident (first run that had one).
    pub action: Option<String>,
    /// Route changes at the source (most over runs).
    pub route_changes: Option<u32>,
    /// Actions about anything but the faulted element (most over runs).
    pub false_positive_actions: Option<u32>,
    /// The targets.
    pub target: Target,
    /// Every target with a measured value met, and at least one run measured.
    pub met: bool,
    /// `met`, `missed`, `skipped` (the daemons lack a feature) or `failed`.
    pub result: &'static str,
    /// Why the scenario was skipped.
    pub skipped: Option<String>,
    /// Each measured run.
    pub runs: Vec<RunResult>,
    /// Runs that produced no measurement, and why.
    pub failed_runs: Vec<FailedRun>,
    /// With `--sim`: the simulator's own record of the scenario.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sim: Option<crate::heal_sim::SimScenarioResult>,
}

/// A run without a measurement.
#[derive(Debug, Clone, Serialize)]
pub struct FailedRun {
    /// Run number (0-based).
    pub run: u32,
    /// Why.
    pub error: String,
}

/// The incident that detected the fault.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Detection {
    /// Node (n0…n3) whose daemon opened it.
    pub node: String,
    /// Its id there.
    pub incident: u64,
    /// Its problem.
    pub problem: String,
    /// Its cause, in words.
    pub cause: String,
    /// Opened, Unix ms.
    pub opened_at_unix_ms: u64,
}

/// The first action for the fault.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FirstAction {
    /// Node whose daemon planned it.
    pub node: String,
    /// Its kind.
    pub kind: String,
    /// `done`, `failed: …`, or none.
    pub result: Option<String>,
    /// Fault → planned, ms.
    pub planned_ms: f64,
}

/// One measured run.
#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    /// Run number (0-based).
    pub run: u32,
    /// The lab it ran in (removed afterwards).
    pub lab: String,
    /// The faulted element, e.g. `link n0-n1` or `node n1`.
    pub faulted: Option<String>,
    /// Fault → detection, ms.
    pub detect_ms: Option<f64>,
    /// Fault → recovery, ms.
    pub recover_ms: Option<f64>,
    /// The detecting incident.
    pub detected_by: Option<Detection>,
    /// The first action.
    pub action: Option<FirstAction>,
    /// Route changes at n0 towards n2.
    pub route_changes: u32,
    /// Actions about anything else.
    pub false_positive_actions: u32,
    /// All incidents and actions opened/planned after the stream started, every daemon.
    pub incidents_total: usize,
    /// See `incidents_total`.
    pub actions_total: usize,
    /// Those actions, oldest first (at most 20): `node: kind -> target (result)`.
    pub actions_seen: Vec<String>,
    /// Packets delivered on time per 100 ms before the fault.
    pub baseline_per_100ms: f64,
    /// Packets sent and delivered (distinct).
    pub sent: u64,
    /// See `sent`.
    pub delivered: u64,
    /// Delivered later than 50 ms.
    pub late: u64,
    /// Stream start → fault, ms.
    pub fault_after_ms: f64,
    /// How long injecting the fault took, ms.
    pub inject_ms: f64,
    /// Routing lines of n0's log after the fault (routes, neighbours, links; the first 24).
    pub events: Vec<LogEvent>,
}

/// The report written to heal-lab.json / heal-sim.json.
#[derive(Debug, Serialize)]
pub struct Report {
    /// `heal`.
    pub bench: &'static str,
    /// `lab` or `sim`.
    pub mode: &'static str,
    /// Nodes in the mesh.
    pub nodes: u64,
    /// Seed (sim).
    pub seed: Option<u64>,
    /// How it was set up.
    pub topology: String,
    /// Stream rate (lab).
    pub rate_pps: Option<u32>,
    /// Runs per scenario.
    pub runs_per_scenario: u32,
    /// The rows.
    pub scenarios: Vec<ScenarioRow>,
    /// Definitions.
    pub notes: Vec<String>,
    /// Cores of this machine.
    pub cores: usize,
    /// When, Unix seconds.
    pub unix_time: u64,
}

fn progress(msg: impl AsRef<str>) {
    eprintln!("[heal] {}", msg.as_ref());
}

/// `x0t bench heal`.
pub fn run(args: HealArgs) -> CmdResult {
    let mut scenarios = args.scenarios.clone();
    scenarios.dedup();
    if args.sim {
        return run_sim(&args, &scenarios);
    }
    crate::lab::require_tools(&[
        ("ping", "iputils-ping"),
        ("kill", "procps"),
        ("curl", "curl"),
    ])?;
    let mut rows = Vec::new();
    for &scenario in &scenarios {
        let mut runs = Vec::new();
        let mut failed = Vec::new();
        let mut skipped = None;
        for run in 0..args.runs {
            progress(format!(
                "{} run {}/{}: setting up",
                scenario.name(),
                run + 1,
                args.runs
            ));
            match run_one(
                scenario,
                run,
                args.baseline_seconds,
                args.evidence.as_deref(),
            ) {
                Ok(r) => {
                    progress(format!(
                        "{} run {}: detect {}, recover {}, action {}, route changes {}, \
                         false-positive actions {}",
                        scenario.name(),
                        run + 1,
                        ms_text(r.detect_ms),
                        ms_text(r.recover_ms),
                        r.action.as_ref().map_or("-", |a| a.kind.as_str()),
                        r.route_changes,
                        r.false_positive_actions
                    ));
                    runs.push(r);
                }
                Err(RunError::Refused(reason)) => {
                    progress(format!("{}: skipped: {reason}", scenario.name()));
                    skipped = Some(reason);
                    break;
                }
                Err(RunError::Failed(error)) => {
                    progress(format!(
                        "{} run {}: failed: {error}",
                        scenario.name(),
                        run + 1
                    ));
                    failed.push(FailedRun { run, error });
                }
            }
        }
        rows.push(row_of(scenario, runs, failed, skipped));
    }
    let report = lab_report(rows, args.runs);
    finish(&report, &args, "heal-lab.json")
}

fn ms_text(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |t| format!("{t:.0} ms"))
}

/// The lab report around its rows.
fn lab_report(scenarios: Vec<ScenarioRow>, runs: u32) -> Report {
    Report {
        bench: "heal",
        mode: "lab",
        nodes: 4,
        seed: None,
        topology: "ring n0-n1-n2-n3-n0 in network namespaces (x0-lab, no underlay routes), one \
                   x0t daemon each with [heal] on in mode act, eBPF TC counters on and \
                   tracepoints off; stream n0 (S) -> n2 (D), R1 = n0's next hop at the fault, \
                   R2 = the other relay"
            .into(),
        rate_pps: Some(RATE_PPS),
        runs_per_scenario: runs,
        scenarios,
        notes: notes(),
        cores: cores(),
        unix_time: fo::now_ns() / 1_000_000_000,
    }
}

fn notes() -> Vec<String> {
    vec![
        "detect_ms: fault -> opened_at_unix_ms of the earliest incident about the faulted \
         element with one of the scenario's problems, at any daemon (GET /v1/incidents)"
            .into(),
        "recover_ms: fault -> first 10 ms bin from which every 100 ms window to the end of the \
         stream delivers >= 99 % of the pre-fault baseline (packets arriving within 50 ms), with \
         >= 1 s of stream after it"
            .into(),
        "action: earliest action answering an incident about the faulted element \
         (GET /v1/actions); false_positive_actions: actions after the stream started about \
         anything else (healthy-baseline: all)"
            .into(),
        format!(
            "route_changes: changes of n0's next hop to n2 in its log after the fault; \
             flapping-link bound = heal.detect.flap_transitions + 1 = {}",
            flap_route_change_bound()
        ),
        "with --runs > 1: detect_ms and recover_ms are medians, route_changes and \
         false_positive_actions the most seen"
            .into(),
    ]
}

fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Writes the report and prints it (JSON or table).
fn finish(report: &Report, args: &HealArgs, file_name: &str) -> CmdResult {
    let (text, file) = crate::report::write_report(report, &args.out, file_name)?;
    if args.json {
        println!("{text}");
    } else {
        print!("{}", table(report));
        println!("written to {}", file.display());
    }
    if report
        .scenarios
        .iter()
        .all(|r| r.runs.is_empty() && r.sim.is_none())
    {
        return Err(Exit::new(
            exit::FAILURE,
            "no scenario could be measured (see failed_runs and skipped)",
        ));
    }
    Ok(())
}

/// `--sim`: the same scenarios in the simulator ([`crate::heal_sim`]), written to
/// `heal-sim.json`.
fn run_sim(args: &HealArgs, scenarios: &[HealScenario]) -> CmdResult {
    let seed = args.seed.unwrap_or(1);
    let cfg = crate::heal_sim::SimHealConfig {
        nodes: usize::try_from(args.nodes).unwrap_or(usize::MAX),
        seed,
        scenarios: scenarios.iter().map(|s| s.name().to_owned()).collect(),
        baseline_seconds: u64::from(args.baseline_seconds),
        progress: true,
    };
    let results = crate::heal_sim::run(&cfg, &mut |msg| progress(msg))
        .map_err(|e| Exit::new(exit::USAGE, format!("x0t bench heal --sim: {e}")))?;
    let rows = results.into_iter().filter_map(sim_row).collect();
    finish(&sim_report(rows, args.nodes, seed), args, "heal-sim.json")
}

/// A simulated scenario's result as a report row, judged against the same targets as the
/// lab's.
fn sim_row(r: crate::heal_sim::SimScenarioResult) -> Option<ScenarioRow> {
    let scenario = HealScenario::value_variants()
        .iter()
        .copied()
        .find(|s| s.name() == r.name)?;
    let target = target_of(scenario);
    let mut row = ScenarioRow {
        name: scenario.name(),
        detect_ms: r.detect_ms,
        recover_ms: r.recover_ms,
        action: r.action.clone(),
        route_changes: Some(u32::try_from(r.route_changes).unwrap_or(u32::MAX)),
        false_positive_actions: Some(u32::try_from(r.false_positive_actions).unwrap_or(u32::MAX)),
        target,
        met: false,
        result: "missed",
        skipped: None,
        runs: Vec::new(),
        failed_runs: Vec::new(),
        sim: None,
    };
    let measured = (target.detect_ms.is_none() || row.detect_ms.is_some())
        && (target.recover_ms.is_none() || row.recover_ms.is_some());
    row.met = measured && meets(&target, &row);
    row.result = if row.met { "met" } else { "missed" };
    row.sim = Some(r);
    Some(row)
}

/// The report for rows measured in the simulator (`heal-sim.json`).
fn sim_report(scenarios: Vec<ScenarioRow>, nodes: u64, seed: u64) -> Report {
    Report {
        bench: "heal",
        mode: "sim",
        nodes,
        seed: Some(seed),
        topology: format!("{nodes} simulated nodes (x0-sim), the real routing and x0-heal cores"),
        rate_pps: None,
        runs_per_scenario: 1,
        scenarios,
        notes: notes(),
        cores: cores(),
        unix_time: fo::now_ns() / 1_000_000_000,
    }
}

/// Whether every target with a measured value is met; a target whose value was not measured
/// is missed.
pub fn meets(target: &Target, row: &ScenarioRow) -> bool {
    let le = |limit: Option<f64>, v: Option<f64>| limit.is_none_or(|l| v.is_some_and(|v| v <= l));
    let le_u = |limit: Option<u32>, v: Option<u32>| limit.is_none_or(|l| v.is_some_and(|v| v <= l));
    le(target.detect_ms, row.detect_ms)
        && le(target.recover_ms, row.recover_ms)
        && le_u(target.route_changes, row.route_changes)
        && le_u(target.actions, row.false_positive_actions)
}

fn row_of(
    scenario: HealScenario,
    runs: Vec<RunResult>,
    failed_runs: Vec<FailedRun>,
    skipped: Option<String>,
) -> ScenarioRow {
    let target = target_of(scenario);
    let mut row = ScenarioRow {
        name: scenario.name(),
        detect_ms: fo::median(runs.iter().filter_map(|r| r.detect_ms).collect()),
        recover_ms: fo::median(runs.iter().filter_map(|r| r.recover_ms).collect()),
        action: runs
            .iter()
            .find_map(|r| r.action.as_ref().map(|a| a.kind.clone())),
        route_changes: runs.iter().map(|r| r.route_changes).max(),
        false_positive_actions: runs.iter().map(|r| r.false_positive_actions).max(),
        target,
        met: false,
        result: "failed",
        skipped,
        runs,
        failed_runs,
        sim: None,
    };
    // A run that never detected or never recovered makes the median meaningless: missed.
    let all_measured = row.runs.iter().all(|r| {
        (target.detect_ms.is_none() || r.detect_ms.is_some())
            && (target.recover_ms.is_none() || r.recover_ms.is_some())
    });
    row.met = !row.runs.is_empty() && all_measured && meets(&target, &row);
    row.result = if row.runs.is_empty() {
        if row.skipped.is_some() {
            "skipped"
        } else {
            "failed"
        }
    } else if row.met {
        "met"
    } else {
        "missed"
    };
    row
}

/// The human table: value, target and ratio per figure.
fn table(report: &Report) -> String {
    let ratio = |v: Option<f64>, t: Option<f64>| match (v, t) {
        (Some(v), Some(t)) if t > 0.0 => format!("{:.2}", v / t),
        _ => "-".into(),
    };
    let num = |v: Option<f64>| v.map_or_else(|| "-".into(), |v| format!("{v:.0}"));
    let int = |v: Option<u32>| v.map_or_else(|| "-".into(), |v| v.to_string());
    let mut rows = Vec::new();
    for r in &report.scenarios {
        let t = &r.target;
        rows.push(vec![
            r.name.to_owned(),
            num(r.detect_ms),
            num(t.detect_ms),
            ratio(r.detect_ms, t.detect_ms),
            num(r.recover_ms),
            num(t.recover_ms),
            ratio(r.recover_ms, t.recover_ms),
            r.action.clone().unwrap_or_else(|| "-".into()),
            format!(
                "{}{}",
                int(r.route_changes),
                t.route_changes
                    .map_or(String::new(), |b| format!(" (≤ {b})"))
            ),
            format!(
                "{}{}",
                int(r.false_positive_actions),
                t.actions.map_or(String::new(), |b| format!(" (≤ {b})"))
            ),
            r.result.to_owned(),
        ]);
    }
    let mut out = format!(
        "self-healing, {} ({} nodes), {} run(s) per scenario:\n",
        report.mode, report.nodes, report.runs_per_scenario
    );
    out.push_str(&x0_node::text::table(
        &[
            "scenario",
            "detect ms",
            "target",
            "ratio",
            "recover ms",
            "target",
            "ratio",
            "action",
            "route changes",
            "false pos.",
            "result",
        ],
        &rows,
    ));
    for r in &report.scenarios {
        if let Some(reason) = &r.skipped {
            out.push_str(&format!("  {} skipped: {reason}\n", r.name));
        }
        for f in &r.failed_runs {
            out.push_str(&format!(
                "  {} run {} failed: {}\n",
                r.name,
                f.run + 1,
                f.error
            ));
        }
    }
    out
}

/// What a fault hits: a link (its two ends) or a node, by node ID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Element {
    /// The link between two nodes.
    Link(String, String),
    /// A node.
    Node(String),
}

impl Element {
    /// Whether something seen at node `at` about node `about` concerns this element.
    pub fn concerns(&self, at: &str, about: Option<&str>) -> bool {
        match (self, about) {
            (Element::Link(a, b), Some(c)) => (at == a && c == b) || (at == b && c == a),
            (Element::Node(x), Some(c)) => c == x,
            // The faulted node's own actions about itself (its alert about its own drops).
            (Element::Node(x), None) => at == x,
            (Element::Link(..), None) => false,
        }
    }
}

/// One daemon's incidents and actions.
#[derive(Debug, Clone)]
pub struct NodeRecords {
    /// Node name (n0…).
    pub node: String,
    /// Its node ID.
    pub id: String,
    /// `GET /v1/incidents`.
    pub incidents: Vec<IncidentInfo>,
    /// `GET /v1/actions`.
    pub actions: Vec<ActionInfo>,
}

/// The earliest incident opened at or after `from_ms` about `element` with one of `problems`.
pub fn first_detection(
    records: &[NodeRecords],
    element: &Element,
    problems: &[&str],
    from_ms: u64,
) -> Option<Detection> {
    records
        .iter()
        .flat_map(|n| n.incidents.iter().map(move |i| (n, i)))
        .filter(|(n, i)| {
            i.opened_at_unix_ms >= from_ms
                && problems.contains(&i.problem.as_str())
                && element.concerns(&n.id, i.cause_node.as_deref())
        })
        .min_by_key(|(_, i)| i.opened_at_unix_ms)
        .map(|(n, i)| Detection {
            node: n.node.clone(),
            incident: i.id,
            problem: i.problem.clone(),
            cause: i.cause.clone(),
            opened_at_unix_ms: i.opened_at_unix_ms,
        })
}

/// What an action is about: its target, else its incident's node.
fn action_about<'a>(n: &'a NodeRecords, a: &'a ActionInfo) -> Option<&'a str> {
    a.target.as_deref().or_else(|| {
        n.incidents
            .iter()
            .find(|i| i.id == a.incident)
            .and_then(|i| i.cause_node.as_deref())
    })
}

/// The earliest action planned at or after `from_ms` about `element`.
pub fn first_action(
    records: &[NodeRecords],
    element: &Element,
    from_ms: u64,
    fault_ms: u64,
) -> Option<FirstAction> {
    records
        .iter()
        .flat_map(|n| n.actions.iter().map(move |a| (n, a)))
        .filter(|(n, a)| {
            a.planned_at_unix_ms >= from_ms && element.concerns(&n.id, action_about(n, a))
        })
        .min_by_key(|(_, a)| a.planned_at_unix_ms)
        .map(|(n, a)| FirstAction {
            node: n.node.clone(),
            kind: a.kind.clone(),
            result: a.result.clone(),
            planned_ms: a.planned_at_unix_ms as f64 - fault_ms as f64,
        })
}

/// Actions planned at or after `from_ms` about anything but `element` (all of them without
/// one).
pub fn false_positive_actions(
    records: &[NodeRecords],
    element: Option<&Element>,
    from_ms: u64,
) -> u32 {
    let n = records
        .iter()
        .flat_map(|n| n.actions.iter().map(move |a| (n, a)))
        .filter(|(n, a)| {
            a.planned_at_unix_ms >= from_ms
                && !element.is_some_and(|e| e.concerns(&n.id, action_about(n, a)))
        })
        .count();
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Delivery of the stream in fine bins: packets delivered on time per bin of
/// `FINE_BUCKET` sequence numbers, and the bins' send times.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// On-time packets per bin, only bins wholly inside the stream.
    pub bins: Vec<u32>,
    /// Send time of bin 0 (the stream's start), Unix ns.
    pub start_ns: u64,
    /// Length of one bin, ns.
    pub bin_ns: u64,
}

impl Delivery {
    /// From the source's and sink's summaries.
    pub(crate) fn of(src: &SourceSummary, sink: &SinkSummary) -> Self {
        let whole = usize::try_from(src.attempted / FINE_BUCKET).unwrap_or(usize::MAX);
        let bins = (0..whole)
            .map(|k| {
                let got = u32::from(sink.received_per_10.get(k).copied().unwrap_or(0));
                got.saturating_sub(u32::from(sink.late_per_10.get(k).copied().unwrap_or(0)))
            })
            .collect();
        Self {
            bins,
            start_ns: src.start_ns,
            bin_ns: FINE_BUCKET * 1_000_000_000 / u64::from(src.rate.max(1)),
        }
    }

    fn bin_at(&self, t_ns: u64) -> usize {
        usize::try_from(t_ns.saturating_sub(self.start_ns) / self.bin_ns.max(1))
            .unwrap_or(usize::MAX)
    }

    /// Mean on-time packets per 100 ms window from `from_ns` to `to_ns` (whole bins).
    pub fn baseline_per_window(&self, from_ns: u64, to_ns: u64) -> Option<f64> {
        let (lo, hi) = (
            self.bin_at(from_ns.saturating_add(self.bin_ns - 1)),
            self.bin_at(to_ns).min(self.bins.len()),
        );
        (hi > lo).then(|| {
            let sum: u64 = self.bins[lo..hi].iter().map(|&b| u64::from(b)).sum();
            sum as f64 / (hi - lo) as f64 * WINDOW_BINS as f64
        })
    }

    /// Fault → the first bin from which every 100 ms window to the end of the stream
    /// delivers at least `RECOVERED_SHARE` of `baseline`, with at least 1 s of stream after
    /// it; `None` when delivery never came back for that long.
    pub fn recover_ms(&self, fault_ns: u64, baseline: f64) -> Option<f64> {
        let n = self.bins.len();
        if n < WINDOW_BINS {
            return None;
        }
        let fault_bin = self.bin_at(fault_ns).min(n);
        let threshold = baseline * RECOVERED_SHARE;
        let window = |k: usize| -> f64 {
            self.bins[k..k + WINDOW_BINS]
                .iter()
                .map(|&b| f64::from(b))
                .sum()
        };
        let last = n - WINDOW_BINS;
        // The first bin after the last window below the threshold.
        let mut from = fault_bin;
        for k in (fault_bin..=last).rev() {
            if window(k) < threshold {
                from = k + 1;
                break;
            }
        }
        if n.saturating_sub(from) < HOLD_BINS {
            return None;
        }
        let at_ns = self.start_ns + from as u64 * self.bin_ns;
        Some(((at_ns as f64 - fault_ns as f64) / 1e6).max(0.0))
    }
}

/// Changes of the next hop towards `dst_id` in `events` (n0's log lines after the fault),
/// from `initial`, up to `until_ms` after the fault.
pub(crate) fn route_changes(
    events: &[LogEvent],
    dst_id: &str,
    initial: Option<&str>,
    until_ms: f64,
) -> u32 {
    let dst_field = format!("dst={dst_id}");
    let mut current = initial.map(str::to_owned);
    let mut changes = 0;
    for e in events.iter().filter(|e| e.t_ms <= until_ms) {
        let words: Vec<&str> = e.line.split_whitespace().collect();
        if words.get(1) != Some(&"route") || !words.contains(&dst_field.as_str()) {
            continue;
        }
        let next = if words.get(2) == Some(&"lost") {
            None
        } else {
            words
                .iter()
                .find_map(|w| w.strip_prefix("via="))
                .map(|v| (*v).to_owned())
        };
        if next != current {
            changes += 1;
            current = next;
        }
    }
    changes
}

/// Runs `curl` inside `node`'s namespace against its daemon's API; returns status and body.
fn api_call(
    ring: &Ring,
    node: usize,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Result<(u16, String), String> {
    let url = format!("http://{}{path}", x0_node::config::DEFAULT_API_LISTEN);
    let mut argv = vec![
        "curl",
        "-sS",
        "-m",
        "5",
        "-X",
        method,
        "-o",
        "-",
        "-w",
        "\n%{http_code}",
    ];
    if let Some(b) = body {
        argv.extend(["-H", "content-type: application/json", "--data", b]);
    }
    argv.push(&url);
    let o = ring
        .lab
        .exec(node, &argv)
        .map_err(|e| format!("n{node} {method} {path}: {e}"))?;
    if !o.status.success() {
        return Err(format!(
            "n{node} {method} {path}: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ));
    }
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", text.as_str()));
    let code = code
        .trim()
        .parse()
        .map_err(|_| format!("n{node} {method} {path}: no HTTP status"))?;
    Ok((code, body.to_owned()))
}

fn api_get<T: serde::de::DeserializeOwned>(
    ring: &Ring,
    node: usize,
    path: &str,
) -> Result<T, String> {
    let (code, body) = api_call(ring, node, "GET", path, None)?;
    if code != 200 {
        return Err(format!("n{node} GET {path}: {code} {body}"));
    }
    serde_json::from_str(&body).map_err(|e| format!("n{node} GET {path}: {e}"))
}

/// `POST /v1/faults` (the daemon's fault-injection control).
fn inject(ring: &Ring, node: usize, fault: &serde_json::Value) -> Result<(), String> {
    let body = fault.to_string();
    let (code, answer) = api_call(ring, node, "POST", "/v1/faults", Some(&body))?;
    if code == 201 {
        Ok(())
    } else {
        Err(format!(
            "n{node} POST /v1/faults {body}: {code} {answer} (the daemon's fault-injection \
             control, [danger_fault_injection], is needed)"
        ))
    }
}

/// Incidents and actions of every daemon still running.
fn collect(ring: &Ring, dead: Option<usize>) -> Result<Vec<NodeRecords>, String> {
    let mut out = Vec::new();
    for (i, d) in ring.daemons.iter().enumerate() {
        if Some(i) == dead {
            continue;
        }
        out.push(NodeRecords {
            node: format!("n{i}"),
            id: d.node_id.clone(),
            incidents: api_get(ring, i, "/v1/incidents")?,
            actions: api_get(ring, i, "/v1/actions")?,
        });
    }
    Ok(out)
}

/// Every action planned at or after `from_ms`, oldest first, with node names for IDs.
fn actions_seen(
    records: &[NodeRecords],
    daemons: &[crate::lab::LabDaemon],
    from_ms: u64,
) -> Vec<String> {
    let name = |id: Option<&str>| {
        id.and_then(|id| daemons.iter().position(|d| d.node_id == id))
            .map_or_else(|| "-".to_owned(), |i| format!("n{i}"))
    };
    let mut all: Vec<(u64, String)> = records
        .iter()
        .flat_map(|n| n.actions.iter().map(move |a| (n, a)))
        .filter(|(_, a)| a.planned_at_unix_ms >= from_ms)
        .map(|(n, a)| {
            (
                a.planned_at_unix_ms,
                format!(
                    "{}: {} -> {} ({})",
                    n.node,
                    a.kind,
                    name(action_about(n, a)),
                    a.result.as_deref().unwrap_or("-")
                ),
            )
        })
        .collect();
    all.sort();
    all.into_iter().take(20).map(|(_, s)| s).collect()
}

/// How long the self-healing loop learns baselines before its statistical detectors judge a
/// link: `detect.warmup_samples` rounds of `sampling.interval_max_ms` (the healthy pace), and
/// 2 s more.
pub fn loop_warmup() -> Duration {
    let c = x0_heal::HealConfig::default();
    Duration::from_millis(u64::from(c.detect.warmup_samples) * c.sampling.interval_max_ms + 2_000)
}

/// Copies every daemon's log and writes the incidents and actions of `records` to
/// `dir/<lab>/` (`--evidence`).
fn keep_evidence(
    dir: &std::path::Path,
    lab: &str,
    daemons: &[crate::lab::LabDaemon],
    records: &[NodeRecords],
) -> Result<PathBuf, String> {
    let out = dir.join(lab);
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    for (i, d) in daemons.iter().enumerate() {
        let to = out.join(format!("n{i}.log"));
        std::fs::copy(&d.log, &to).map_err(|e| format!("{}: {e}", d.log.display()))?;
    }
    let json: Vec<serde_json::Value> = records
        .iter()
        .map(|r| {
            serde_json::json!({
                "node": r.node, "id": r.id, "incidents": r.incidents, "actions": r.actions,
            })
        })
        .collect();
    let text = serde_json::to_string_pretty(&json).map_err(|e| e.to_string())?;
    let to = out.join("records.json");
    std::fs::write(&to, text).map_err(|e| format!("{}: {e}", to.display()))?;
    Ok(out)
}

fn run_one(
    scenario: HealScenario,
    run: u32,
    baseline_seconds: u32,
    evidence: Option<&std::path::Path>,
) -> Result<RunResult, RunError> {
    let name = format!("he{}_{}{run}", std::process::id(), scenario.short());
    let mut ring = fo::start_ring_behind(&name, scenario.nodes_behind(), scenario.extra_config())?;
    // The loops learn each link's baseline before they judge it (as on a mesh that has been
    // up a while): the fault comes after their warm-up, counted from the daemons' start.
    let warm = loop_warmup().saturating_sub(Duration::from_secs_f64(PRE_FAULT_S));
    progress(format!(
        "{}: {:.0} s for the loops' warm-up",
        scenario.name(),
        warm.as_secs_f64()
    ));
    std::thread::sleep(warm);
    let seconds = PRE_FAULT_S + scenario.post_fault_s(baseline_seconds);
    let stream = fo::start_stream(&mut ring, seconds, None)?;
    let stream_start_ms = fo::now_ns() / 1_000_000;
    std::thread::sleep(
        Duration::from_secs_f64(PRE_FAULT_S).saturating_sub(stream.started.elapsed()),
    );

    let relay = fo::primary_relay(&ring)?;
    let daemons = ring.daemons.clone();
    let initial_via = daemons[relay].node_id.clone();
    let log_offset = fo::file_len(&daemons[0].log);
    let link = Element::Link(daemons[0].node_id.clone(), daemons[relay].node_id.clone());
    let (element, faulted) = match scenario {
        HealScenario::NodeCrash | HealScenario::BlackholeRelay => (
            Some(Element::Node(daemons[relay].node_id.clone())),
            Some(format!("node n{relay}")),
        ),
        HealScenario::HealthyBaseline => (None, None),
        _ => (Some(link), Some(format!("link n0-n{relay}"))),
    };
    let fault_ns = fo::now_ns();
    let t_inject = Instant::now();
    let mut route_window_ms = f64::INFINITY;
    match scenario {
        HealScenario::LinkDown | HealScenario::FlappingLink => ring
            .lab
            .set_link_up(0, relay, false)
            .map_err(|e| format!("setting the n0-n{relay} link down: {e}"))?,
        HealScenario::NodeCrash => fo::sigkill(&daemons[relay].process)?,
        HealScenario::LossyLink => ring
            .lab
            .set_link_loss(0, relay, LOSS_PERCENT)
            .map_err(|e| format!("loss on n0-n{relay}: {e}"))?,
        HealScenario::LatencySpike => inject(
            &ring,
            0,
            &serde_json::json!({
                "kind": "delay", "peer": daemons[relay].node_id,
                "delay_ms": SPIKE_MS, "jitter_ms": 0
            }),
        )?,
        HealScenario::BlackholeRelay => {
            inject(&ring, relay, &serde_json::json!({ "kind": "blackhole" }))?;
        }
        HealScenario::HealthyBaseline => {}
    }
    let inject_ms = t_inject.elapsed().as_secs_f64() * 1e3;
    progress(format!(
        "{} run {}: fault on {} after {:.1} s of streaming",
        scenario.name(),
        run + 1,
        faulted.as_deref().unwrap_or("nothing"),
        stream.started.elapsed().as_secs_f64()
    ));
    if scenario == HealScenario::NodeCrash {
        // Collect the zombie; the record then says it is gone.
        let _ = ring.lab.stop(daemons[relay].process.pid);
    }
    if scenario == HealScenario::FlappingLink {
        let mut up = false;
        let mut toggle = t_inject + FLAP_HALF_PERIOD;
        while toggle <= t_inject + FLAP_FOR {
            std::thread::sleep(toggle.saturating_duration_since(Instant::now()));
            up = !up;
            ring.lab
                .set_link_up(0, relay, up)
                .map_err(|e| format!("flapping n0-n{relay}: {e}"))?;
            toggle += FLAP_HALF_PERIOD;
        }
        if !up {
            ring.lab
                .set_link_up(0, relay, true)
                .map_err(|e| format!("flapping n0-n{relay}: {e}"))?;
        }
        route_window_ms = (FLAP_FOR + FLAP_HALF_PERIOD).as_secs_f64() * 1e3;
    }

    let (src, sink) = fo::finish_stream(&mut ring, stream)?;
    let dead = (scenario == HealScenario::NodeCrash).then_some(relay);
    let records = collect(&ring, dead)?;
    if matches!(
        scenario,
        HealScenario::LatencySpike | HealScenario::BlackholeRelay
    ) {
        let node = if scenario == HealScenario::LatencySpike {
            0
        } else {
            relay
        };
        if let Err(e) = api_call(&ring, node, "DELETE", "/v1/faults", None) {
            progress(format!("clearing the injected fault: {e}"));
        }
    }
    let events = fo::events_since("n0", &daemons[0].log, log_offset, fault_ns);
    let lab_name = ring.lab_name.clone();
    if let Some(dir) = evidence {
        match keep_evidence(dir, &lab_name, &daemons, &records) {
            Ok(at) => progress(format!("evidence kept in {}", at.display())),
            Err(e) => progress(format!("keeping the evidence: {e}")),
        }
    }
    let teardown = ring.lab.down();
    if !teardown.errors.is_empty() {
        progress(format!("teardown: {}", teardown.errors.join("; ")));
    }

    let fault_ms = fault_ns / 1_000_000;
    let (detected_by, action) = match &element {
        Some(e) => (
            first_detection(&records, e, scenario.problems(), fault_ms),
            first_action(&records, e, fault_ms, fault_ms),
        ),
        None => (None, None),
    };
    let delivery = Delivery::of(&src, &sink);
    let baseline_from = src.start_ns + (BASELINE_FROM_S * 1e9) as u64;
    let baseline = delivery
        .baseline_per_window(baseline_from, fault_ns)
        .filter(|b| *b > 0.0)
        .ok_or_else(|| "nothing was delivered before the fault".to_owned())?;
    let recover_ms = element
        .is_some()
        .then(|| delivery.recover_ms(fault_ns, baseline))
        .flatten();
    let late: u64 = sink.late_per_10.iter().map(|&l| u64::from(l)).sum();
    let route_changes = route_changes(
        &events,
        &daemons[2].node_id,
        Some(initial_via.as_str()),
        route_window_ms,
    );
    let mut log_events = events;
    log_events.truncate(24);
    Ok(RunResult {
        run,
        lab: lab_name,
        faulted,
        detect_ms: detected_by
            .as_ref()
            .map(|d| d.opened_at_unix_ms as f64 - fault_ns as f64 / 1e6),
        recover_ms,
        detected_by,
        action,
        route_changes,
        false_positive_actions: false_positive_actions(&records, element.as_ref(), stream_start_ms),
        incidents_total: records
            .iter()
            .flat_map(|n| &n.incidents)
            .filter(|i| i.opened_at_unix_ms >= stream_start_ms)
            .count(),
        actions_total: records
            .iter()
            .flat_map(|n| &n.actions)
            .filter(|a| a.planned_at_unix_ms >= stream_start_ms)
            .count(),
        actions_seen: actions_seen(&records, &daemons, stream_start_ms),
        baseline_per_100ms: baseline,
        sent: src.attempted,
        delivered: sink.received,
        late,
        fault_after_ms: (fault_ns.saturating_sub(src.start_ns)) as f64 / 1e6,
        inject_ms,
        events: log_events,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    const MS: u64 = 1_000_000;

    fn incident(id: u64, opened: u64, about: &str, problem: &str) -> IncidentInfo {
        IncidentInfo {
            id,
            opened_at_unix_ms: opened,
            closed_at_unix_ms: None,
            open: true,
            cause_kind: "link".into(),
            cause_node: Some(about.into()),
            cause: format!("link to {about}"),
            problem: problem.into(),
            confidence: 0.9,
            resolution: None,
            first_symptom: "x".into(),
        }
    }

    fn action(
        id: u64,
        incident: u64,
        planned: u64,
        kind: &str,
        target: Option<&str>,
    ) -> ActionInfo {
        ActionInfo {
            id,
            incident,
            kind: kind.into(),
            target: target.map(Into::into),
            detail: String::new(),
            mode: "act".into(),
            undo_of: None,
            reason: String::new(),
            planned_at_unix_ms: planned,
            finished_at_unix_ms: Some(planned + 1),
            result: Some("done".into()),
        }
    }

    fn records() -> Vec<NodeRecords> {
        vec![
            NodeRecords {
                node: "n0".into(),
                id: "s".into(),
                incidents: vec![
                    // Before the fault: start-up noise, not a detection.
                    incident(1, 900, "r1", "link_down"),
                    incident(2, 1_040, "r1", "link_down"),
                    incident(3, 1_500, "r2", "link_degraded"),
                ],
                actions: vec![
                    action(1, 2, 1_060, "restart_link", Some("r1")),
                    action(2, 3, 1_600, "raise_link_cost", Some("r2")),
                ],
            },
            NodeRecords {
                node: "n1".into(),
                id: "r1".into(),
                incidents: vec![incident(1, 1_020, "s", "link_down")],
                actions: vec![action(1, 1, 1_030, "alert", None)],
            },
        ]
    }

    #[test]
    fn detection_is_the_earliest_matching_incident_at_either_end_of_the_link() {
        let r = records();
        let link = Element::Link("s".into(), "r1".into());
        let d = first_detection(&r, &link, &["link_down"], 1_000).unwrap();
        assert_eq!(
            (d.node.as_str(), d.incident, d.opened_at_unix_ms),
            ("n1", 1, 1_020)
        );
        // The wrong problem or another element detects nothing.
        assert!(first_detection(&r, &link, &["black_hole"], 1_000).is_none());
        let other = Element::Node("r9".into());
        assert!(first_detection(&r, &other, &["link_down"], 0).is_none());
        // A node fault is seen by anyone whose incident names the node.
        let node = Element::Node("r1".into());
        let d = first_detection(&r, &node, &["link_down"], 1_000).unwrap();
        assert_eq!(d.node, "n0");
    }

    #[test]
    fn actions_are_attributed_by_target_or_their_incident() {
        let r = records();
        let link = Element::Link("s".into(), "r1".into());
        // The alert at n1 has no target: its incident is about s, so it is about the link.
        let a = first_action(&r, &link, 1_000, 1_000).unwrap();
        assert_eq!((a.node.as_str(), a.kind.as_str()), ("n1", "alert"));
        assert!((a.planned_ms - 30.0).abs() < 1e-9);
        // raise_link_cost on r2 is the one false positive; with no fault, every action is.
        assert_eq!(false_positive_actions(&r, Some(&link), 1_000), 1);
        assert_eq!(false_positive_actions(&r, None, 1_000), 3);
        assert_eq!(false_positive_actions(&r, None, 1_100), 1);
    }

    fn delivery(bins: Vec<u32>) -> Delivery {
        Delivery {
            bins,
            start_ns: 0,
            bin_ns: 10 * MS,
        }
    }

    #[test]
    fn recovery_is_the_start_of_good_delivery_for_the_rest_of_the_stream() {
        // 3 s at 10 per bin, fault at 1 s: 50 ms of nothing, 150 ms at half, then full.
        let mut bins = vec![10u32; 300];
        for b in &mut bins[100..105] {
            *b = 0;
        }
        for b in &mut bins[105..120] {
            *b = 5;
        }
        let d = delivery(bins.clone());
        let base = d.baseline_per_window(0, 1_000 * MS).unwrap();
        assert!((base - 100.0).abs() < 1e-9);
        assert_eq!(d.recover_ms(1_000 * MS, base), Some(200.0));
        // One lost packet later on (99 in a window is still ≥ 99 %): the same.
        bins[150] = 9;
        assert_eq!(
            delivery(bins.clone()).recover_ms(1_000 * MS, base),
            Some(200.0)
        );
        // Two lost in one window: recovery moves past the last such window.
        bins[151] = 9;
        assert_eq!(
            delivery(bins.clone()).recover_ms(1_000 * MS, base),
            Some(510.0)
        );
        // Nothing after the fault: never recovered; good delivery for less than 1 s: neither.
        let mut dead = vec![10u32; 100];
        dead.extend(vec![0; 200]);
        assert_eq!(delivery(dead).recover_ms(1_000 * MS, base), None);
        let mut short = vec![10u32; 100];
        short.extend(vec![0; 150]);
        short.extend(vec![10; 50]);
        assert_eq!(delivery(short).recover_ms(1_000 * MS, base), None);
        // No dip at all: recovered at the fault.
        assert_eq!(
            delivery(vec![10; 300]).recover_ms(1_000 * MS, base),
            Some(0.0)
        );
    }

    #[test]
    fn late_packets_do_not_count_as_delivered() {
        let src = SourceSummary {
            attempted: 305,
            sent: 305,
            send_errors: 0,
            first_error: None,
            start_ns: 7,
            end_ns: 0,
            rate: 1000,
            dscp: None,
            max_late_us: 0,
        };
        let sink = SinkSummary {
            received_per_10: vec![10; 31],
            late_per_10: vec![0, 4],
            ..SinkSummary::default()
        };
        let d = Delivery::of(&src, &sink);
        // 30 whole bins (the 31st is not wholly inside the stream).
        assert_eq!(d.bins.len(), 30);
        assert_eq!(&d.bins[..3], &[10, 6, 10]);
        assert_eq!((d.start_ns, d.bin_ns), (7, 10 * MS));
    }

    fn ev(t_ms: f64, line: &str) -> LogEvent {
        LogEvent {
            node: "n0",
            t_ms,
            line: line.into(),
        }
    }

    #[test]
    fn route_changes_count_next_hop_changes_towards_the_destination() {
        let events = vec![
            ev(1.0, "INFO route dst=d via=r2 backup=true"),
            ev(2.0, "INFO route dst=d via=r2 backup=false"),
            ev(3.0, "INFO route dst=x via=r1 backup=false"),
            ev(4.0, "INFO neighbour down node=r1"),
            ev(5.0, "INFO route lost dst=d"),
            ev(6.0, "INFO route dst=d via=r1 backup=false"),
            ev(9_000.0, "INFO route dst=d via=r2 backup=false"),
        ];
        assert_eq!(route_changes(&events, "d", Some("r1"), f64::INFINITY), 4);
        assert_eq!(route_changes(&events, "d", Some("r1"), 10.0), 3);
        assert_eq!(route_changes(&events, "d", Some("r2"), 10.0), 2);
    }

    #[test]
    fn targets_and_rows() {
        assert_eq!(flap_route_change_bound(), 5);
        let row = |d, r, runs| {
            let mut run = RunResult {
                run: 0,
                lab: "t".into(),
                faulted: None,
                detect_ms: d,
                recover_ms: r,
                detected_by: None,
                action: None,
                route_changes: 2,
                false_positive_actions: 0,
                incidents_total: 0,
                actions_total: 0,
                actions_seen: Vec::new(),
                baseline_per_100ms: 100.0,
                sent: 0,
                delivered: 0,
                late: 0,
                fault_after_ms: 0.0,
                inject_ms: 0.0,
                events: Vec::new(),
            };
            let mut v = Vec::new();
            for i in 0..runs {
                run.run = i;
                v.push(run.clone());
            }
            row_of(HealScenario::LinkDown, v, Vec::new(), None)
        };
        assert_eq!(row(Some(40.0), Some(90.0), 1).result, "met");
        assert_eq!(row(Some(60.0), Some(90.0), 1).result, "missed");
        assert_eq!(row(Some(40.0), None, 2).result, "missed");
        assert_eq!(row(None, None, 0).result, "failed");
        let skipped = row_of(
            HealScenario::BlackholeRelay,
            Vec::new(),
            Vec::new(),
            Some("refused".into()),
        );
        assert_eq!((skipped.result, skipped.met), ("skipped", false));
        // healthy-baseline: met only without actions.
        let t = target_of(HealScenario::HealthyBaseline);
        let mut r = row(None, None, 1);
        r.false_positive_actions = Some(0);
        assert!(meets(&t, &r));
        r.false_positive_actions = Some(1);
        assert!(!meets(&t, &r));
        let text = table(&lab_report(vec![row(Some(40.0), Some(90.0), 1)], 1));
        assert!(
            text.contains("link-down") && text.contains("0.80") && text.contains("met"),
            "{text}"
        );
    }

    /// `x0t bench heal`'s arguments on their own.
    #[derive(Debug, clap::Parser)]
    struct Cmd {
        #[command(flatten)]
        args: HealArgs,
    }

    #[test]
    fn arguments_parse_with_their_defaults() {
        let a = Cmd::try_parse_from(["heal"]).unwrap().args;
        assert_eq!(a.scenarios.len(), 7);
        assert_eq!(
            (a.runs, a.baseline_seconds, a.nodes, a.sim),
            (1, 300, 1200, false)
        );
        assert_eq!(a.out, PathBuf::from("bench-results"));
        let a = Cmd::try_parse_from([
            "heal",
            "--scenarios",
            "link-down,flapping-link",
            "--runs",
            "3",
            "--baseline-seconds",
            "60",
            "--sim",
            "--nodes",
            "100",
            "--seed",
            "7",
            "--json",
        ])
        .unwrap()
        .args;
        assert_eq!(
            a.scenarios,
            vec![HealScenario::LinkDown, HealScenario::FlappingLink]
        );
        assert_eq!(
            (a.runs, a.baseline_seconds, a.nodes, a.seed),
            (3, 60, 100, Some(7))
        );
        assert!(a.sim && a.json);
        for bad in [
            &["--scenarios", "meteor"][..],
            &["--runs", "0"],
            &["--baseline-seconds", "5"],
        ] {
            let mut argv = vec!["heal"];
            argv.extend_from_slice(bad);
            assert!(Cmd::try_parse_from(argv).is_err(), "{bad:?}");
        }
        // More nodes than the simulator half takes: refused, naming the limit.
        let e = run(HealArgs {
            sim: true,
            nodes: 100_000,
            ..a
        })
        .unwrap_err();
        assert_eq!(e.code, exit::USAGE);
    }
}
