//! `x0t bench throughput`: overlay TCP throughput (iperf3, 1 and 4 streams) and ping RTT over
//! 1 hop (2 namespaces) and 3 hops (4 namespaces in a line), for plain veth and the peers
//! operators compare us with, side by side in one run.
//!
//! Each (system, hops) case gets a fresh lab (`x0-lab`), torn down when the case ends, also on
//! failure. Peers come from Debian packages installed beforehand; a missing binary skips its
//! system with a message, nothing is downloaded. How each peer is set up and which gotchas
//! are handled is in `docs/lab.md`.
//!
//! Relaying: Yggdrasil relays itself (one daemon per node, peered only with neighbours).
//! wireguard-go and Nebula run only at the two ends, over the lab's static underlay routes
//! with kernel forwarding at the relays ("end to end over routed underlay"); `raw` is that
//! underlay without an overlay. `x0t` is a defined case that is skipped until the data plane
//! exists — never faked.
//!
//! `ceiling` is the bare offload tunnel ([`crate::ceiling`]): TUN offload, UDP GSO/GRO and one
//! AES-256-GCM layer, nothing else. It is what a userspace tunnel built from the same parts can
//! carry on this machine right now, so x0t ÷ ceiling, taken within one round, holds on any
//! machine where absolute figures do not. `--rounds N` repeats every case N times and reports
//! the median of the per-round ratios.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use serde::Serialize;
use x0_lab::process::{CLOCK_TICKS_PER_SECOND, ProcStat};
use x0_lab::{Lab, LabName, LabSpec, Shape, SpawnOptions, Topology};

use x0_node::exit::{self, CmdResult, Exit};

/// A system measured side by side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum System {
    /// Plain veth and kernel forwarding, no overlay.
    Raw,
    /// wireguard-go (userspace WireGuard) configured with `wg`.
    WireguardGo,
    /// Nebula with a static host map.
    Nebula,
    /// Yggdrasil 0.4, one daemon per node.
    Yggdrasil,
    /// The bare offload tunnel (TUN offload, UDP GSO/GRO, one AES-256-GCM layer, nothing
    /// else; [`crate::ceiling`]): the ceiling x0t is judged against.
    Ceiling,
    /// The x0t daemon with its TUN data plane.
    X0t,
}

impl System {
    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            System::Raw => "raw",
            System::WireguardGo => "wireguard-go",
            System::Nebula => "nebula",
            System::Yggdrasil => "yggdrasil",
            System::Ceiling => "ceiling",
            System::X0t => "x0t",
        }
    }

    fn short(self) -> &'static str {
        match self {
            System::Raw => "raw",
            System::WireguardGo => "wg",
            System::Nebula => "neb",
            System::Yggdrasil => "ygg",
            System::Ceiling => "ceil",
            System::X0t => "x0t",
        }
    }

    /// Programs the system needs, with their Debian packages.
    fn programs(self) -> &'static [(&'static str, &'static str)] {
        match self {
            System::Raw | System::Ceiling | System::X0t => &[],
            System::WireguardGo => &[("wireguard-go", "wireguard-go"), ("wg", "wireguard-tools")],
            System::Nebula => &[("nebula", "nebula"), ("nebula-cert", "nebula")],
            System::Yggdrasil => &[("yggdrasil", "yggdrasil")],
        }
    }

    fn is_peer(self) -> bool {
        matches!(
            self,
            System::WireguardGo | System::Nebula | System::Yggdrasil
        )
    }
}

/// Arguments of `x0t bench throughput`.
#[derive(Debug, Args)]
pub struct ThroughputArgs {
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Seconds per iperf3 run.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=600))]
    pub seconds: u32,
    /// Systems to measure, comma-separated.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "raw,wireguard-go,nebula,yggdrasil,ceiling,x0t"
    )]
    pub systems: Vec<System>,
    /// Hop counts, comma-separated (a line of hops + 1 namespaces each).
    #[arg(long, value_delimiter = ',', default_value = "1,3", value_parser = clap::value_parser!(u32).range(1..=8))]
    pub hops: Vec<u32>,
    /// Parallel TCP streams, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,4", value_parser = clap::value_parser!(u32).range(1..=64))]
    pub streams: Vec<u32>,
    /// Pings per RTT measurement (20 ms apart).
    #[arg(long, default_value_t = 50)]
    pub pings: u32,
    /// Rounds: every (hops, system) case is measured this many times, round after round, and
    /// the ratios are taken within each round (the ceiling and x0t minutes apart, not more), then
    /// their median is reported.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub rounds: u32,
    /// Directory for throughput.json.
    #[arg(long, default_value = "bench-results")]
    pub out: PathBuf,
    /// Runs one endpoint of the bare offload tunnel with this config (the bench starts it in a
    /// lab namespace; not for use by hand).
    #[arg(long, hide = true)]
    pub ceiling_endpoint: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize)]
struct ResultRow {
    /// Round (1-based; see `--rounds`).
    round: u32,
    system: &'static str,
    hops: u32,
    streams: u32,
    mbps: f64,
    /// CPU time of the tunnel processes (all of them, every node) over the iperf3 run, as a
    /// percentage of one core; null for kernel-only `raw`.
    cpu_percent: Option<f64>,
    /// `cpu_percent` per Gbit/s carried: the CPU cost of a bit, which a busy shared machine
    /// disturbs less than the throughput itself.
    cpu_percent_per_gbit: Option<f64>,
    mtu: u32,
    relayed_by_system: bool,
    path: &'static str,
    retransmits: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
struct PingRow {
    round: u32,
    system: &'static str,
    hops: u32,
    rtt_ms_avg: f64,
    rtt_ms_p50: Option<f64>,
    rtt_ms_min: f64,
    rtt_ms_max: f64,
    sent: u32,
    received: u32,
    overhead_vs_raw_ms: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
struct RatioRow {
    round: u32,
    hops: u32,
    streams: u32,
    x0t_mbps: Option<f64>,
    best_peer: Option<&'static str>,
    best_peer_mbps: Option<f64>,
    ratio: Option<f64>,
}

/// x0t against the bare offload tunnel measured in the same round, over the same hops.
#[derive(Debug, Clone, Serialize)]
struct CeilingRow {
    round: u32,
    hops: u32,
    streams: u32,
    x0t_mbps: Option<f64>,
    ceiling_mbps: Option<f64>,
    /// x0t ÷ ceiling.
    ratio: Option<f64>,
    /// The ceiling's CPU per Gbit/s ÷ x0t's (1 = x0t costs as little per bit).
    cpu_efficiency: Option<f64>,
}

/// x0t over more hops against x0t over one hop, same round and streams.
#[derive(Debug, Clone, Serialize)]
struct HopsRow {
    round: u32,
    hops: u32,
    streams: u32,
    x0t_mbps: Option<f64>,
    x0t_one_hop_mbps: Option<f64>,
    /// x0t over `hops` ÷ x0t over one hop.
    ratio: Option<f64>,
}

/// A ratio over all rounds: the median, every round's value, and the goal it is held to.
#[derive(Debug, Clone, Serialize)]
struct SummaryRow {
    what: &'static str,
    hops: u32,
    streams: u32,
    median: Option<f64>,
    per_round: Vec<f64>,
    goal: Option<f64>,
    met: Option<bool>,
}

#[derive(Debug, Clone, Serialize)]
struct Skipped {
    system: &'static str,
    hops: Option<u32>,
    reason: String,
}

#[derive(Debug, Serialize)]
struct Report {
    bench: &'static str,
    what: &'static str,
    seconds: u32,
    results: Vec<ResultRow>,
    ping: Vec<PingRow>,
    ratio_vs_best_peer: Vec<RatioRow>,
    /// x0t ÷ the bare offload tunnel, per round.
    ratio_vs_ceiling: Vec<CeilingRow>,
    /// x0t over 3 hops (or more) ÷ x0t over one hop, per round.
    x0t_hops_vs_one_hop: Vec<HopsRow>,
    /// Medians over the rounds, with the goals (issue 12: ≥ 0.85× the ceiling on one hop;
    /// three hops ≥ 0.7× one hop).
    summary: Vec<SummaryRow>,
    rounds: u32,
    /// /proc/loadavg (1, 5, 15 min) when the bench started and when it ended: the machine is
    /// shared, and this says how busy it was.
    load_average_start: Option<[f64; 3]>,
    load_average_end: Option<[f64; 3]>,
    skipped: Vec<Skipped>,
    versions: std::collections::BTreeMap<&'static str, String>,
    notes: Vec<String>,
    cores: usize,
    unix_time: u64,
}

/// A tunnel ready to carry traffic from node 0 to the last node.
struct Tunnel {
    /// Where iperf3 and ping go (the last node's overlay address).
    target: IpAddr,
    /// Tunnel processes whose CPU time is counted.
    pids: Vec<u32>,
    /// MTU of the tunnel interface at the sender (or of the veth for `raw`).
    mtu: u32,
    relayed_by_system: bool,
    path: &'static str,
}

const PATH_DIRECT: &str = "direct veth";
const PATH_UNDERLAY: &str = "end to end over routed underlay (kernel forwarding at relays)";
const PATH_RELAYED: &str = "relayed by the system at each hop";

fn progress(msg: impl AsRef<str>) {
    eprintln!("[throughput] {}", msg.as_ref());
}

type SetupResult = Result<Tunnel, String>;

fn check_output(what: &str, out: &std::process::Output) -> Result<String, String> {
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn lab_exec(lab: &Lab, node: usize, argv: &[&str]) -> Result<String, String> {
    let out = lab.exec(node, argv).map_err(|e| e.to_string())?;
    check_output(&argv.join(" "), &out)
}

/// Runs a host-side helper that only computes (key generation), feeding it `stdin`.
fn host_tool(argv: &[&str], stdin: Option<&str>) -> Result<String, String> {
    let (program, args) = argv.split_first().ok_or("empty command")?;
    let out = x0_lab::tools::run(program, args, stdin).map_err(|e| e.to_string())?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn write_private(path: &Path, text: &str) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    std::io::Write::write_all(&mut f, text.as_bytes())
        .map_err(|e| format!("{}: {e}", path.display()))
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(5)..].join(" | ")
}

/// Waits until an interface shows up in a node's namespace.
fn wait_iface(lab: &Lab, node: usize, iface: &str, pid: u32, log: &Path) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if lab.mtu(node, iface).is_ok() {
            return Ok(());
        }
        if ProcStat::read(pid).is_none_or(|s| s.state == 'Z') {
            return Err(format!("process exited early: {}", tail(log)));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!(
        "interface {iface} did not appear in 10 s: {}",
        tail(log)
    ))
}

/// Pings until one answer or the deadline (handshakes and route discovery on the first packet).
fn wait_reachable(lab: &Lab, target: IpAddr, within: Duration) -> Result<(), String> {
    let deadline = Instant::now() + within;
    let t = target.to_string();
    loop {
        let ok = lab
            .exec(0, &["ping", "-c", "1", "-W", "1", "-q", &t])
            .map(|o| o.status.success())
            .unwrap_or(false);
        if ok {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("{t} not reachable within {} s", within.as_secs()));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn setup_raw(lab: &Lab, hops: u32) -> SetupResult {
    let last = lab.node_count() - 1;
    let target = IpAddr::V4(lab.node_addr(last).map_err(|e| e.to_string())?);
    let iface = lab
        .neighbours(0)
        .map_err(|e| e.to_string())?
        .first()
        .map(|n| n.iface.clone())
        .ok_or("node 0 has no link")?;
    let mtu = lab.mtu(0, &iface).map_err(|e| e.to_string())?;
    wait_reachable(lab, target, Duration::from_secs(5))?;
    Ok(Tunnel {
        target,
        pids: Vec::new(),
        mtu,
        relayed_by_system: false,
        path: underlay_path(hops),
    })
}

/// How a system that runs only at the two ends crosses `hops`: directly, or over the lab's
/// routed underlay.
fn underlay_path(hops: u32) -> &'static str {
    if hops == 1 {
        PATH_DIRECT
    } else {
        PATH_UNDERLAY
    }
}

fn setup_wireguard(lab: &mut Lab, hops: u32) -> SetupResult {
    const PORT: u16 = 51820;
    let last = lab.node_count() - 1;
    let ends = [0, last];
    let dir = lab.dir().to_owned();
    // wireguard-go's control sockets live in /var/run/wireguard/<iface>.sock for every
    // namespace alike: a name unique on the machine keeps them apart.
    let iface = |end: usize| format!("wgx{}e{end}", std::process::id() % 100_000);
    let mut keys = Vec::new();
    for end in 0..2 {
        let private = host_tool(&["wg", "genkey"], None)?;
        let public = host_tool(&["wg", "pubkey"], Some(&format!("{private}\n")))?;
        let key_file = dir.join(format!("wg{end}.key"));
        write_private(&key_file, &format!("{private}\n"))?;
        keys.push((key_file, public));
    }
    let mut pids = Vec::new();
    for (end, &node) in ends.iter().enumerate() {
        let name = iface(end);
        let log = dir.join(format!("wireguard-go-{end}.log"));
        // -f keeps it in the foreground, so the PID we hold is the tunnel's own.
        let p = lab
            .spawn(
                node,
                "wireguard-go",
                &["wireguard-go", "-f", &name],
                &SpawnOptions {
                    log: Some(log.clone()),
                    detach: false,
                },
            )
            .map_err(|e| e.to_string())?;
        pids.push(p.pid);
        wait_iface(lab, node, &name, p.pid, &log)?;
        let other = 1 - end;
        let peer_endpoint = format!(
            "{}:{PORT}",
            lab.node_addr(ends[other]).map_err(|e| e.to_string())?
        );
        let key_path = keys[end].0.display().to_string();
        let port = PORT.to_string();
        let allowed = format!("10.215.0.{}/32", other + 1);
        lab_exec(
            lab,
            node,
            &[
                "wg",
                "set",
                &name,
                "private-key",
                &key_path,
                "listen-port",
                &port,
                "peer",
                &keys[other].1,
                "allowed-ips",
                &allowed,
                "endpoint",
                &peer_endpoint,
            ],
        )?;
        let addr = format!("10.215.0.{}/24", end + 1);
        lab_exec(lab, node, &["ip", "addr", "add", &addr, "dev", &name])?;
        lab_exec(lab, node, &["ip", "link", "set", &name, "up"])?;
    }
    let target: IpAddr = "10.215.0.2".parse().map_err(|_| "address")?;
    wait_reachable(lab, target, Duration::from_secs(10))?;
    let mtu = lab.mtu(0, &iface(0)).map_err(|e| e.to_string())?;
    Ok(Tunnel {
        target,
        pids,
        mtu,
        relayed_by_system: false,
        path: underlay_path(hops),
    })
}

fn setup_nebula(lab: &mut Lab, hops: u32) -> SetupResult {
    const PORT: u16 = 4242;
    let last = lab.node_count() - 1;
    let ends = [0, last];
    let dir = lab.dir().to_owned();
    let d = |f: &str| dir.join(f).display().to_string();
    host_tool(
        &[
            "nebula-cert",
            "ca",
            "-name",
            "x0t-bench",
            "-out-crt",
            &d("ca.crt"),
            "-out-key",
            &d("ca.key"),
        ],
        None,
    )?;
    let overlay = |end: usize| format!("10.216.0.{}", end + 1);
    let mut pids = Vec::new();
    for (end, &node) in ends.iter().enumerate() {
        let crt = d(&format!("n{end}.crt"));
        let key = d(&format!("n{end}.key"));
        host_tool(
            &[
                "nebula-cert",
                "sign",
                "-ca-crt",
                &d("ca.crt"),
                "-ca-key",
                &d("ca.key"),
                "-name",
                &format!("end{end}"),
                "-ip",
                &format!("{}/24", overlay(end)),
                "-out-crt",
                &crt,
                "-out-key",
                &key,
            ],
            None,
        )?;
        let other = 1 - end;
        let other_underlay = lab.node_addr(ends[other]).map_err(|e| e.to_string())?;
        // Static host map instead of a lighthouse; allow-all firewall; the TUN MTU is left
        // at Nebula's default so the report shows what it uses.
        let config = format!(
            "pki:\n  ca: {ca}\n  cert: {crt}\n  key: {key}\n\
             static_host_map:\n  \"{peer}\": [\"{other_underlay}:{PORT}\"]\n\
             lighthouse:\n  am_lighthouse: false\n  interval: 60\n  hosts: []\n\
             listen:\n  host: 0.0.0.0\n  port: {PORT}\n\
             punchy:\n  punch: false\n\
             relay:\n  am_relay: false\n  use_relays: false\n\
             tun:\n  disabled: false\n  dev: nebula{end}\n\
             logging:\n  level: info\n\
             firewall:\n  outbound:\n    - port: any\n      proto: any\n      host: any\n  \
             inbound:\n    - port: any\n      proto: any\n      host: any\n",
            ca = d("ca.crt"),
            peer = overlay(other),
        );
        let config_path = dir.join(format!("nebula{end}.yml"));
        std::fs::write(&config_path, config).map_err(|e| e.to_string())?;
        let log = dir.join(format!("nebula-{end}.log"));
        let p = lab
            .spawn(
                node,
                "nebula",
                &["nebula", "-config", &config_path.display().to_string()],
                &SpawnOptions {
                    log: Some(log.clone()),
                    detach: false,
                },
            )
            .map_err(|e| e.to_string())?;
        pids.push(p.pid);
        wait_iface(lab, node, &format!("nebula{end}"), p.pid, &log)?;
    }
    let target: IpAddr = overlay(1).parse().map_err(|_| "address")?;
    wait_reachable(lab, target, Duration::from_secs(15))?;
    let mtu = lab.mtu(0, "nebula0").map_err(|e| e.to_string())?;
    Ok(Tunnel {
        target,
        pids,
        mtu,
        relayed_by_system: false,
        path: underlay_path(hops),
    })
}

fn setup_yggdrasil(lab: &mut Lab, hops: u32) -> SetupResult {
    const PORT: u16 = 9001;
    let n = lab.node_count();
    let dir = lab.dir().to_owned();
    let mut pids = Vec::new();
    let mut target = None;
    // Node i listens on its link towards i + 1; node i + 1 dials it. Nodes start in order,
    // so every listener is up before its dialler (Yggdrasil does not retry quickly).
    for i in 0..n {
        let text = host_tool(&["yggdrasil", "-genconf", "-json"], None)?;
        let mut conf: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| format!("yggdrasil -genconf: {e}"))?;
        let neighbours = lab.neighbours(i).map_err(|e| e.to_string())?;
        let listen: Vec<String> = neighbours
            .iter()
            .filter(|nb| nb.node == i + 1)
            .map(|nb| format!("tcp://{}:{PORT}", nb.local_addr))
            .collect();
        let peers: Vec<String> = neighbours
            .iter()
            .filter(|nb| nb.node + 1 == i)
            .map(|nb| format!("tcp://{}:{PORT}", nb.remote_addr))
            .collect();
        let obj = conf
            .as_object_mut()
            .ok_or("yggdrasil -genconf did not print an object")?;
        obj.insert("Listen".into(), serde_json::json!(listen));
        obj.insert("Peers".into(), serde_json::json!(peers));
        // No admin socket (they would all collide on one path) and no multicast discovery
        // (it would peer over every interface, not along the line).
        obj.insert("AdminListen".into(), serde_json::json!("none"));
        obj.insert("MulticastInterfaces".into(), serde_json::json!([]));
        obj.insert("IfName".into(), serde_json::json!(format!("ygg{i}")));
        let config_path = dir.join(format!("yggdrasil{i}.json"));
        write_private(&config_path, &conf.to_string())?;
        let cp = config_path.display().to_string();
        if i == n - 1 {
            let addr = host_tool(&["yggdrasil", "-useconffile", &cp, "-address"], None)?;
            target = Some(
                addr.parse::<IpAddr>()
                    .map_err(|e| format!("yggdrasil -address {addr:?}: {e}"))?,
            );
        }
        let log = dir.join(format!("yggdrasil-{i}.log"));
        let p = lab
            .spawn(
                i,
                "yggdrasil",
                &["yggdrasil", "-useconffile", &cp, "-logto", "stdout"],
                &SpawnOptions {
                    log: Some(log.clone()),
                    detach: false,
                },
            )
            .map_err(|e| e.to_string())?;
        pids.push(p.pid);
        wait_iface(lab, i, &format!("ygg{i}"), p.pid, &log)?;
    }
    let target = target.ok_or("no target address")?;
    wait_reachable(lab, target, Duration::from_secs(30))?;
    let mtu = lab.mtu(0, "ygg0").map_err(|e| e.to_string())?;
    Ok(Tunnel {
        target,
        pids,
        mtu,
        relayed_by_system: true,
        path: if hops == 1 { PATH_DIRECT } else { PATH_RELAYED },
    })
}

/// The bare offload tunnel ([`crate::ceiling`]) between the two ends, over the lab's routed
/// underlay like wireguard-go, with x0t's overlay MTU (so that the ratio measures what x0t
/// does per packet, not a difference in packet size).
fn setup_ceiling(lab: &mut Lab, hops: u32) -> SetupResult {
    const PORT: u16 = 7300;
    let mtu = x0_node::config::DataplaneSection::default().mtu;
    let last = lab.node_count() - 1;
    let ends = [0, last];
    let dir = lab.dir().to_owned();
    let binary = std::env::current_exe().map_err(|e| e.to_string())?;
    let binary = binary.display().to_string();
    let mut keys = [[0u8; 32]; 2];
    for k in &mut keys {
        aws_lc_rs::rand::fill(k).map_err(|_| "no randomness for the ceiling's keys")?;
    }
    let address = |end: usize| Ipv6Addr::new(0xfd00, 0xce11, 0, 0, 0, 0, 0, end as u16 + 1);
    let mut pids = Vec::new();
    for (end, &node) in ends.iter().enumerate() {
        let other = 1 - end;
        let underlay = |n: usize| -> Result<SocketAddr, String> {
            Ok(SocketAddr::new(
                IpAddr::V4(lab.node_addr(n).map_err(|e| e.to_string())?),
                PORT,
            ))
        };
        let config = crate::ceiling::EndpointConfig {
            tun: format!("ceil{end}"),
            mtu,
            address: address(end),
            bind: underlay(node)?,
            peer: underlay(ends[other])?,
            tx_key: keys[end].to_vec(),
            rx_key: keys[other].to_vec(),
        };
        let config_path = dir.join(format!("ceiling{end}.json"));
        let text = serde_json::to_string(&config).map_err(|e| e.to_string())?;
        write_private(&config_path, &text)?;
        let log = dir.join(format!("ceiling-{end}.log"));
        let p = lab
            .spawn(
                node,
                "ceiling",
                &[
                    &binary,
                    "bench",
                    "throughput",
                    "--ceiling-endpoint",
                    &config_path.display().to_string(),
                ],
                &SpawnOptions {
                    log: Some(log.clone()),
                    detach: false,
                },
            )
            .map_err(|e| e.to_string())?;
        pids.push(p.pid);
        wait_iface(lab, node, &format!("ceil{end}"), p.pid, &log)?;
    }
    let target = IpAddr::V6(address(1));
    wait_reachable(lab, target, Duration::from_secs(10))?;
    let mtu = lab.mtu(0, "ceil0").map_err(|e| e.to_string())?;
    Ok(Tunnel {
        target,
        pids,
        mtu,
        relayed_by_system: false,
        path: underlay_path(hops),
    })
}

/// The x0t case: starts `x0t up` with a TUN device in every namespace (through
/// [`crate::lab::start_daemons`]) once the data plane exists; until then it is skipped.
fn setup_x0t(lab: &mut Lab, _hops: u32) -> SetupResult {
    let plan = crate::lab::DaemonPlan {
        binary: std::env::current_exe().map_err(|e| e.to_string())?,
        dir: lab.dir().join("daemons"),
        extra_config: String::new(),
    };
    let daemons = crate::lab::start_daemons(lab, &plan).map_err(|e| e.message)?;
    let last = daemons.last().ok_or("no nodes")?;
    let target = IpAddr::V6(last.overlay);
    // Links, routes and the end-to-end handshake: the first ping that gets through.
    wait_reachable(lab, target, Duration::from_secs(30))?;
    let mtu = lab.mtu(0, "x0t0").map_err(|e| e.to_string())?;
    Ok(Tunnel {
        target,
        pids: daemons.iter().map(|d| d.process.pid).collect(),
        mtu,
        relayed_by_system: true,
        path: PATH_RELAYED,
    })
}

fn cpu_ticks(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|&p| ProcStat::read(p))
        .map(|s| s.cpu_ticks())
        .sum()
}

struct IperfRun {
    mbps: f64,
    cpu_percent: Option<f64>,
    retransmits: Option<u64>,
}

fn iperf(lab: &Lab, tunnel: &Tunnel, seconds: u32, streams: u32) -> Result<IperfRun, String> {
    let target = tunnel.target.to_string();
    let secs = seconds.to_string();
    let parallel = streams.to_string();
    let before = cpu_ticks(&tunnel.pids);
    let started = Instant::now();
    let out = lab
        .exec(
            0,
            &[
                "iperf3",
                "-c",
                &target,
                "-t",
                &secs,
                "-P",
                &parallel,
                "-J",
                "--connect-timeout",
                "5000",
            ],
        )
        .map_err(|e| e.to_string())?;
    let wall = started.elapsed().as_secs_f64();
    let after = cpu_ticks(&tunnel.pids);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("iperf3 printed no JSON ({e}): {}", out.status))?;
    if let Some(err) = json.get("error").and_then(|e| e.as_str()) {
        return Err(format!("iperf3: {err}"));
    }
    let end = &json["end"];
    let bps = end["sum_received"]["bits_per_second"]
        .as_f64()
        .ok_or("iperf3 JSON has no end.sum_received.bits_per_second")?;
    let cpu_percent = (!tunnel.pids.is_empty()).then(|| {
        let secs = after.saturating_sub(before) as f64 / CLOCK_TICKS_PER_SECOND as f64;
        secs / wall * 100.0
    });
    Ok(IperfRun {
        mbps: bps / 1e6,
        cpu_percent,
        retransmits: end["sum_sent"]["retransmits"].as_u64(),
    })
}

struct PingStats {
    avg: f64,
    p50: Option<f64>,
    min: f64,
    max: f64,
    sent: u32,
    received: u32,
}

fn ping(lab: &Lab, target: IpAddr, count: u32) -> Result<PingStats, String> {
    let out = lab
        .exec(
            0,
            &[
                "ping",
                "-c",
                &count.to_string(),
                "-i",
                "0.02",
                "-W",
                "1",
                &target.to_string(),
            ],
        )
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut rtts: Vec<f64> = text
        .lines()
        .filter_map(|l| l.split("time=").nth(1))
        .filter_map(|t| t.split_whitespace().next()?.parse().ok())
        .collect();
    if rtts.is_empty() {
        return Err(format!("no ping replies from {target}"));
    }
    rtts.sort_by(f64::total_cmp);
    let received = rtts.len() as u32;
    Ok(PingStats {
        avg: rtts.iter().sum::<f64>() / rtts.len() as f64,
        p50: rtts.get(rtts.len() / 2).copied(),
        min: rtts[0],
        max: rtts[rtts.len() - 1],
        sent: count,
        received,
    })
}

/// The Debian package version of a peer (its own `-version` output is not always useful:
/// Yggdrasil's Debian build prints "Build name: unknown").
fn version_of(system: System) -> Option<String> {
    let (_, package) = system.programs().first()?;
    let out = std::process::Command::new("dpkg-query")
        .args(["-W", "-f", "${Version}", package])
        .output()
        .ok()?;
    let v = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (out.status.success() && !v.is_empty()).then(|| format!("{package} {v} (Debian)"))
}

fn missing_program(system: System) -> Option<String> {
    system
        .programs()
        .iter()
        .find(|(p, _)| x0_lab::tools::which(p).is_none())
        .map(|(p, pkg)| format!("`{p}` is not installed (apt-get install -y {pkg}); skipped"))
}

/// One (system, hops) case in its own lab; the lab is removed when this returns.
fn run_case(
    round: u32,
    system: System,
    hops: u32,
    args: &ThroughputArgs,
    report: &mut Report,
) -> Result<(), String> {
    let name = LabName::new(&format!(
        "tp{}_{}_{hops}h{round}",
        std::process::id(),
        system.short()
    ))
    .map_err(|e| e.to_string())?;
    let topology = Topology::generate(Shape::Line, hops as usize + 1).map_err(|e| e.to_string())?;
    let mut spec = LabSpec::new(name, topology);
    // Peers that cannot relay ride the kernel's forwarding; Yggdrasil peers per link and
    // does not need the routes, but they do no harm (it only listens on link addresses).
    spec.underlay_routes = true;
    let mut lab = Lab::up(&spec).map_err(|e| e.to_string())?;
    let tunnel = match system {
        System::Raw => setup_raw(&lab, hops),
        System::WireguardGo => setup_wireguard(&mut lab, hops),
        System::Nebula => setup_nebula(&mut lab, hops),
        System::Yggdrasil => setup_yggdrasil(&mut lab, hops),
        System::Ceiling => setup_ceiling(&mut lab, hops),
        System::X0t => setup_x0t(&mut lab, hops),
    }?;
    let server_log = lab.dir().join("iperf3-server.log");
    let target = tunnel.target.to_string();
    let last = lab.node_count() - 1;
    lab.spawn(
        last,
        "iperf3-server",
        &["iperf3", "-s", "-B", &target],
        &SpawnOptions {
            log: Some(server_log),
            detach: false,
        },
    )
    .map_err(|e| e.to_string())?;
    std::thread::sleep(Duration::from_millis(300));

    let p = ping(&lab, tunnel.target, args.pings)?;
    progress(format!(
        "{} {hops} hop(s): ping avg {:.3} ms, p50 {:.3} ms ({}/{} replies), MTU {}",
        system.name(),
        p.avg,
        p.p50.unwrap_or(f64::NAN),
        p.received,
        p.sent,
        tunnel.mtu
    ));
    report.ping.push(PingRow {
        round,
        system: system.name(),
        hops,
        rtt_ms_avg: p.avg,
        rtt_ms_p50: p.p50,
        rtt_ms_min: p.min,
        rtt_ms_max: p.max,
        sent: p.sent,
        received: p.received,
        overhead_vs_raw_ms: None,
    });
    for &streams in &args.streams {
        progress(format!(
            "{} {hops} hop(s): iperf3 TCP, {streams} stream(s), {} s …",
            system.name(),
            args.seconds
        ));
        let r = iperf(&lab, &tunnel, args.seconds, streams)?;
        progress(format!(
            "{} {hops} hop(s), {streams} stream(s): {:.0} Mbit/s, CPU {}",
            system.name(),
            r.mbps,
            r.cpu_percent
                .map_or_else(|| "n/a (kernel only)".into(), |c| format!("{c:.0} %"))
        ));
        report.results.push(ResultRow {
            round,
            system: system.name(),
            hops,
            streams,
            mbps: r.mbps,
            cpu_percent: r.cpu_percent,
            cpu_percent_per_gbit: r
                .cpu_percent
                .filter(|_| r.mbps > 0.0)
                .map(|c| c / (r.mbps / 1000.0)),
            mtu: tunnel.mtu,
            relayed_by_system: tunnel.relayed_by_system,
            path: tunnel.path,
            retransmits: r.retransmits,
        });
    }
    let teardown = lab.down();
    if !teardown.errors.is_empty() {
        return Err(format!("teardown: {}", teardown.errors.join("; ")));
    }
    Ok(())
}

/// Runs `x0t bench throughput`.
pub fn run(args: ThroughputArgs) -> CmdResult {
    if let Some(config) = &args.ceiling_endpoint {
        return crate::ceiling::serve(config);
    }
    crate::lab::require_tools(&[("iperf3", "iperf3"), ("ping", "iputils-ping")])?;
    let mut systems = args.systems.clone();
    systems.dedup();
    let mut report = Report {
        bench: "throughput",
        what: "iperf3 TCP (1 and 4 streams) and ping RTT from the first to the last namespace of \
               a line (1 hop = 2 namespaces, 3 hops = 4), each system in a fresh lab",
        seconds: args.seconds,
        results: Vec::new(),
        ping: Vec::new(),
        ratio_vs_best_peer: Vec::new(),
        ratio_vs_ceiling: Vec::new(),
        x0t_hops_vs_one_hop: Vec::new(),
        summary: Vec::new(),
        rounds: args.rounds,
        load_average_start: load_average(),
        load_average_end: None,
        skipped: Vec::new(),
        versions: Default::default(),
        notes: vec![
            "wireguard-go and nebula run only at the two ends, over static underlay routes with \
             kernel forwarding at the relays; per-hop WireGuard tunnels were not measured"
                .into(),
            "yggdrasil runs on every node, peered over TCP with its neighbours only, and relays \
             itself; its TUN MTU is its default (IfMTU 65535, capped by the daemon)"
                .into(),
            "cpu_percent: utime+stime of all tunnel processes (/proc/PID/stat) over the iperf3 \
             run divided by wall time, in percent of one core; iperf3 itself is not counted"
                .into(),
            "ceiling: the bare offload tunnel (TUN offload, UDP GSO/GRO, one AES-256-GCM layer \
             in place, two threads per end, no routing, no second layer, no replay window), at \
             the two ends over the routed underlay, with x0t's overlay MTU; ratio_vs_ceiling \
             compares x0t with it over the same hops in the same round"
                .into(),
        ],
        cores: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        unix_time: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    };
    for &system in &systems {
        if let Some(v) = version_of(system) {
            report.versions.insert(system.name(), v);
        }
    }
    let mut runnable = Vec::new();
    for &system in &systems {
        let reason = if let Some(reason) = missing_program(system) {
            reason
        } else if system == System::X0t && !crate::lab::daemons_available() {
            crate::lab::DATA_PLANE_MISSING.to_owned()
        } else {
            runnable.push(system);
            continue;
        };
        progress(format!("{}: skipped: {reason}", system.name()));
        report.skipped.push(Skipped {
            system: system.name(),
            hops: None,
            reason,
        });
    }
    for round in 1..=args.rounds {
        if args.rounds > 1 {
            progress(format!("round {round} of {}", args.rounds));
        }
        for &hops in &args.hops {
            for &system in &runnable {
                progress(format!("{} {hops} hop(s): setting up", system.name()));
                if let Err(reason) = run_case(round, system, hops, &args, &mut report) {
                    progress(format!(
                        "{} {hops} hop(s): skipped: {reason}",
                        system.name()
                    ));
                    report.skipped.push(Skipped {
                        system: system.name(),
                        hops: Some(hops),
                        reason,
                    });
                }
            }
        }
    }
    report.load_average_end = load_average();
    finish(&mut report, &args);
    let (text, file) = crate::report::write_report(&report, &args.out, "throughput.json")?;
    if args.json {
        println!("{text}");
    } else {
        print_table(&report, &file);
    }
    if report.results.is_empty() {
        return Err(Exit::new(
            exit::FAILURE,
            "no system could be measured (see the skipped list)",
        ));
    }
    Ok(())
}

/// The 1, 5 and 15 minute load averages.
fn load_average() -> Option<[f64; 3]> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    let mut it = text.split_whitespace().map(|v| v.parse::<f64>().ok());
    Some([it.next()??, it.next()??, it.next()??])
}

/// The median of `values` (the mean of the two middle ones for an even count).
fn median(values: &[f64]) -> Option<f64> {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

/// The values `field` gives for `hops` and `streams`, round after round.
fn per_round<T>(
    rows: &[T],
    hops: u32,
    streams: u32,
    field: impl Fn(&T) -> (u32, u32, Option<f64>),
) -> Vec<f64> {
    rows.iter()
        .filter_map(|r| {
            let (h, s, v) = field(r);
            (h == hops && s == streams).then_some(v).flatten()
        })
        .collect()
}

/// Goal for x0t ÷ ceiling on one hop (issue 12).
const GOAL_VS_CEILING_ONE_HOP: f64 = 0.85;
/// Goal for x0t over three hops ÷ x0t over one hop (issue 12).
const GOAL_THREE_HOPS_VS_ONE: f64 = 0.7;

/// Fills in RTT overheads against raw, and the ratios of every round: x0t ÷ best peer,
/// x0t ÷ ceiling, x0t over more hops ÷ over one; then their medians with the goals.
fn finish(report: &mut Report, args: &ThroughputArgs) {
    let raw_rtt: Vec<(u32, u32, f64)> = report
        .ping
        .iter()
        .filter(|p| p.system == "raw")
        .map(|p| (p.round, p.hops, p.rtt_ms_avg))
        .collect();
    for p in &mut report.ping {
        p.overhead_vs_raw_ms = raw_rtt
            .iter()
            .find(|(r, h, _)| *r == p.round && *h == p.hops)
            .map(|(_, _, raw)| p.rtt_ms_avg - raw);
    }
    let find = |results: &[ResultRow], round: u32, system: &str, hops: u32, streams: u32| {
        results
            .iter()
            .find(|r| {
                r.round == round && r.system == system && r.hops == hops && r.streams == streams
            })
            .map(|r| (r.mbps, r.cpu_percent_per_gbit))
    };
    let mbps = |results: &[ResultRow], round: u32, system: &str, hops: u32, streams: u32| {
        find(results, round, system, hops, streams).map(|(m, _)| m)
    };
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    };
    for round in 1..=args.rounds {
        for &hops in &args.hops {
            for &streams in &args.streams {
                let case =
                    |s: &ResultRow| s.round == round && s.hops == hops && s.streams == streams;
                let best = report
                    .results
                    .iter()
                    .filter(|r| case(r))
                    .filter(|r| {
                        [System::WireguardGo, System::Nebula, System::Yggdrasil]
                            .iter()
                            .any(|s| s.is_peer() && s.name() == r.system)
                    })
                    .max_by(|a, b| a.mbps.total_cmp(&b.mbps));
                let x0t = mbps(&report.results, round, "x0t", hops, streams);
                report.ratio_vs_best_peer.push(RatioRow {
                    round,
                    hops,
                    streams,
                    x0t_mbps: x0t,
                    best_peer: best.map(|b| b.system),
                    best_peer_mbps: best.map(|b| b.mbps),
                    ratio: ratio(x0t, best.map(|b| b.mbps)),
                });
                let ceiling = mbps(&report.results, round, "ceiling", hops, streams);
                let cost = |system: &str| {
                    find(&report.results, round, system, hops, streams).and_then(|(_, c)| c)
                };
                report.ratio_vs_ceiling.push(CeilingRow {
                    round,
                    hops,
                    streams,
                    x0t_mbps: x0t,
                    ceiling_mbps: ceiling,
                    ratio: ratio(x0t, ceiling),
                    cpu_efficiency: ratio(cost("ceiling"), cost("x0t")),
                });
                if hops > 1 {
                    let one = mbps(&report.results, round, "x0t", 1, streams);
                    report.x0t_hops_vs_one_hop.push(HopsRow {
                        round,
                        hops,
                        streams,
                        x0t_mbps: x0t,
                        x0t_one_hop_mbps: one,
                        ratio: ratio(x0t, one),
                    });
                }
            }
        }
    }
    let mut summary = Vec::new();
    for &hops in &args.hops {
        for &streams in &args.streams {
            let row = |what, goal: Option<f64>, per_round: Vec<f64>| {
                let median = median(&per_round);
                SummaryRow {
                    what,
                    hops,
                    streams,
                    median,
                    per_round,
                    goal,
                    met: goal.zip(median).map(|(g, m)| m >= g),
                }
            };
            summary.push(row(
                "x0t ÷ ceiling",
                (hops == 1).then_some(GOAL_VS_CEILING_ONE_HOP),
                per_round(&report.ratio_vs_ceiling, hops, streams, |r| {
                    (r.hops, r.streams, r.ratio)
                }),
            ));
            summary.push(row(
                "ceiling ÷ x0t, CPU per bit",
                None,
                per_round(&report.ratio_vs_ceiling, hops, streams, |r| {
                    (r.hops, r.streams, r.cpu_efficiency)
                }),
            ));
            if hops > 1 {
                summary.push(row(
                    "x0t ÷ x0t over one hop",
                    (hops == 3).then_some(GOAL_THREE_HOPS_VS_ONE),
                    per_round(&report.x0t_hops_vs_one_hop, hops, streams, |r| {
                        (r.hops, r.streams, r.ratio)
                    }),
                ));
            }
            summary.push(row(
                "x0t ÷ best peer",
                Some(1.0),
                per_round(&report.ratio_vs_best_peer, hops, streams, |r| {
                    (r.hops, r.streams, r.ratio)
                }),
            ));
        }
    }
    report.summary = summary;
}

fn print_table(report: &Report, file: &Path) {
    println!(
        "overlay TCP throughput (iperf3, {} s per run), first → last namespace of a line:",
        report.seconds
    );
    println!(
        "  {:>5} {:<13} {:>4} {:>7} {:>10} {:>7} {:>6}  path",
        "round", "system", "hops", "streams", "Mbit/s", "CPU %", "MTU"
    );
    for r in &report.results {
        println!(
            "  {:>5} {:<13} {:>4} {:>7} {:>10.0} {:>7} {:>6}  {}",
            r.round,
            r.system,
            r.hops,
            r.streams,
            r.mbps,
            r.cpu_percent
                .map_or_else(|| "-".into(), |c| format!("{c:.0}")),
            r.mtu,
            r.path
        );
    }
    println!(
        "ping RTT ({} per case, 20 ms apart):",
        report.ping.first().map_or(0, |p| p.sent)
    );
    println!(
        "  {:>5} {:<13} {:>4} {:>9} {:>9} {:>12}",
        "round", "system", "hops", "avg ms", "p50 ms", "vs raw ms"
    );
    for p in &report.ping {
        println!(
            "  {:>5} {:<13} {:>4} {:>9.3} {:>9} {:>12}",
            p.round,
            p.system,
            p.hops,
            p.rtt_ms_avg,
            p.rtt_ms_p50
                .map_or_else(|| "-".into(), |v| format!("{v:.3}")),
            p.overhead_vs_raw_ms
                .map_or_else(|| "-".into(), |v| format!("{v:+.3}"))
        );
    }
    println!(
        "ratios (median over {} round(s); every round's value in brackets):",
        report.rounds
    );
    for r in &report.summary {
        let rounds: Vec<String> = r.per_round.iter().map(|v| format!("{v:.2}")).collect();
        println!(
            "  {:<27} {} hop(s), {} stream(s): {} [{}]{}",
            r.what,
            r.hops,
            r.streams,
            r.median
                .map_or_else(|| "n/a (not measured)".into(), |v| format!("{v:.2}")),
            rounds.join(", "),
            match (r.goal, r.met) {
                (Some(g), Some(true)) => format!("  goal ≥ {g}: met"),
                (Some(g), Some(false)) => format!("  goal ≥ {g}: MISSED"),
                _ => String::new(),
            }
        );
    }
    let load = |l: Option<[f64; 3]>| {
        l.map_or_else(|| "n/a".into(), |[a, b, c]| format!("{a:.2} {b:.2} {c:.2}"))
    };
    println!(
        "load average (1/5/15 min): {} at the start, {} at the end ({} cores)",
        load(report.load_average_start),
        load(report.load_average_end),
        report.cores
    );
    for s in &report.skipped {
        println!(
            "  skipped {}{}: {}",
            s.system,
            s.hops.map_or_else(String::new, |h| format!(" ({h} hops)")),
            s.reason
        );
    }
    println!("written to {}", file.display());
}
