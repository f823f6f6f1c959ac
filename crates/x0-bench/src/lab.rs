//! `x0t lab …`: the real-kernel lab on this machine (namespaces, veths, loss), over `x0-lab`.
//!
//! `lab up` builds a lab and leaves it running (the handle is detached); `lab exec`, `lab loss`
//! and `lab link` attach to it through its state file; `lab down` removes it, also after a
//! crash. Starting the x0t daemon in every node is the job of [`start_daemons`], the boundary
//! the data plane will fill in.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand, ValueEnum};
use serde::Serialize;
use x0_lab::{Lab, LabError, LabName, LabSpec, PreflightError, ProcessRecord, Topology};

use x0_node::exit::{self, CmdResult, Exit};

/// Service unavailable (EX_UNAVAILABLE): a tool or feature this machine or build lacks.
pub const UNAVAILABLE: u8 = 69;
/// Lab name used when `--name` is left out.
pub const DEFAULT_LAB: &str = "x0t";

/// `x0t lab …`.
#[derive(Debug, Subcommand)]
pub enum LabCommand {
    /// Create a lab: one network namespace per node, one veth pair per link.
    Up(LabUpArgs),
    /// Run a command inside a node's namespace (`x0t lab exec n1 -- ping 10.214.0.3`).
    Exec(LabExecArgs),
    /// Remove a lab (processes by PID, namespaces by name prefix, its directory).
    Down(LabDownArgs),
    /// Show the labs present on this machine, or one lab's nodes and links.
    Status(LabStatusArgs),
    /// Set the loss on a link (both directions, or A→B only with --one-way).
    Loss(LabLossArgs),
    /// Set a link administratively down or up.
    Link(LabLinkArgs),
}

/// Which lab.
#[derive(Debug, Args)]
pub struct LabNameArg {
    /// Lab name (a-z, 0-9, _); namespaces are called `x0lab-<name>-<node>`.
    #[arg(long, default_value = DEFAULT_LAB)]
    pub name: String,
}

/// Arguments of `x0t lab up`.
#[derive(Debug, Args)]
pub struct LabUpArgs {
    /// Number of nodes (optional with a topology file; must match it if given).
    #[arg(long)]
    pub nodes: Option<usize>,
    /// line, ring, grid, full, or a TOML edge-list file (docs/lab.md).
    #[arg(long, default_value = "line")]
    pub topology: String,
    /// Initial loss on every link, percent, both directions.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub loss: u8,
    /// The lab.
    #[command(flatten)]
    pub name: LabNameArg,
    /// Install static shortest-path routes between all lab addresses (kernel forwarding at
    /// relays). Off by default so an overlay under test finds no shortcut in the underlay.
    #[arg(long)]
    pub underlay_routes: bool,
    /// Start an x0t daemon with a TUN device in every node (needs the data plane).
    #[arg(long)]
    pub daemons: bool,
    /// Print the lab as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `x0t lab exec`.
#[derive(Debug, Args)]
pub struct LabExecArgs {
    /// Node name (n0, n1, … or a name from the topology file) or index.
    pub node: String,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, num_args = 1..)]
    pub command: Vec<String>,
    /// The lab.
    #[command(flatten)]
    pub name: LabNameArg,
}

/// Arguments of `x0t lab down`.
#[derive(Debug, Args)]
pub struct LabDownArgs {
    /// Lab name.
    #[arg(long, conflicts_with = "all")]
    pub name: Option<String>,
    /// Remove every lab on this machine (every namespace called `x0lab-*`).
    #[arg(long)]
    pub all: bool,
    /// Print what was removed as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `x0t lab status`.
#[derive(Debug, Args)]
pub struct LabStatusArgs {
    /// Show this lab's nodes and links (default: list the labs).
    #[arg(long)]
    pub name: Option<String>,
    /// Print as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `x0t lab loss`.
#[derive(Debug, Args)]
pub struct LabLossArgs {
    /// One end (the sender with --one-way).
    pub a: String,
    /// The other end.
    pub b: String,
    /// Percent of packets dropped (0 removes the rule).
    #[arg(value_parser = clap::value_parser!(u8).range(0..=100))]
    pub percent: u8,
    /// Only packets from A to B.
    #[arg(long)]
    pub one_way: bool,
    /// The lab.
    #[command(flatten)]
    pub name: LabNameArg,
}

/// An administrative link state.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LinkState {
    /// Set up.
    Up,
    /// Set down.
    Down,
}

/// Arguments of `x0t lab link`.
#[derive(Debug, Args)]
pub struct LabLinkArgs {
    /// One end.
    pub a: String,
    /// The other end.
    pub b: String,
    /// up or down.
    pub state: LinkState,
    /// The lab.
    #[command(flatten)]
    pub name: LabNameArg,
}

/// Runs `x0t lab …`.
pub fn run(cmd: LabCommand) -> CmdResult {
    match cmd {
        LabCommand::Up(args) => up(args),
        LabCommand::Exec(args) => exec(args),
        LabCommand::Down(args) => down(args),
        LabCommand::Status(args) => status(args),
        LabCommand::Loss(args) => loss(args),
        LabCommand::Link(args) => link(args),
    }
}

/// Maps lab errors to exit codes: not root → 77, missing tool → 69, bad input → 64.
pub fn lab_exit(e: LabError) -> Exit {
    let code = match &e {
        LabError::Preflight(PreflightError::NotRoot) => exit::NO_PERM,
        LabError::Preflight(_) => UNAVAILABLE,
        LabError::Topology(_)
        | LabError::UnknownNode(_)
        | LabError::NoLink(..)
        | LabError::BadPercent(_)
        | LabError::Exists(_) => exit::USAGE,
        LabError::NotFound(_) => exit::NO_INPUT,
        _ => exit::FAILURE,
    };
    Exit::new(code, e.to_string())
}

fn lab_name(name: &str) -> Result<LabName, Exit> {
    LabName::new(name).map_err(|e| Exit::usage(e.to_string()))
}

fn run_dir() -> PathBuf {
    PathBuf::from(x0_lab::DEFAULT_RUN_DIR)
}

fn preflight() -> Result<(), Exit> {
    x0_lab::preflight().map_err(|e| lab_exit(e.into()))
}

/// The lab's own checks (root, `ip`, `nft`), then each `(program, apt package)` a bench needs:
/// a missing one is refused with the package to install (exit 69).
pub fn require_tools(tools: &[(&str, &str)]) -> Result<(), Exit> {
    x0_lab::preflight().map_err(|e| lab_exit(e.into()))?;
    for (program, package) in tools {
        if x0_lab::tools::which(program).is_none() {
            return Err(Exit::new(
                UNAVAILABLE,
                format!("`{program}` is not installed: apt-get install -y {package}"),
            ));
        }
    }
    Ok(())
}

/// What [`start_daemons`] needs to start one x0t daemon per node.
#[derive(Debug, Clone)]
pub struct DaemonPlan {
    /// The x0t binary to run inside each namespace (normally this executable).
    pub binary: PathBuf,
    /// Directory for each node's state directory, configuration file and log
    /// (`<dir>/<node>/`), normally inside the lab directory so `down` removes it.
    pub dir: PathBuf,
    /// TOML appended to every node's `x0t.toml` (e.g. a `[dataplane]` table); empty for none.
    pub extra_config: String,
}

/// Why daemons cannot be started.
pub const DATA_PLANE_MISSING: &str = "x0t daemons could not be started in the lab";

/// Port every lab daemon listens on (all addresses of its namespace).
pub const LAB_PORT: u16 = 7101;

/// One started daemon.
#[derive(Debug, Clone)]
pub struct LabDaemon {
    /// The process (recorded in the lab's state file, so `lab down` stops it by PID).
    pub process: ProcessRecord,
    /// Its node ID.
    pub node_id: String,
    /// Its overlay IPv6 address.
    pub overlay: std::net::Ipv6Addr,
    /// Its log file.
    pub log: PathBuf,
}

/// Runs `binary args…` (an x0t command with `--json`) and parses what it prints.
pub(crate) fn x0t_json(binary: &Path, args: &[&str]) -> Result<serde_json::Value, Exit> {
    let o = std::process::Command::new(binary)
        .args(args)
        .output()
        .map_err(|e| Exit::failure(format!("{}: {e}", binary.display())))?;
    if !o.status.success() {
        return Err(Exit::failure(format!(
            "x0t {}: {}",
            args.first().copied().unwrap_or(""),
            String::from_utf8_lossy(&o.stderr).trim()
        )));
    }
    serde_json::from_slice(&o.stdout).map_err(|e| Exit::failure(format!("x0t output: {e}")))
}

/// Starts one `x0t up` per node of `lab`, with its TUN device, node 0 being the mesh CA.
///
/// Each node gets `plan.dir/<node>/` with its state directory, `x0t.toml` and `x0t.log`; it
/// listens on port 7101 of every address of its namespace and dials its neighbours of lower
/// index on their link addresses. Joins run inside node 0's namespace (where the CA daemon
/// is), so they work without underlay routes. Returns once every daemon is started (not yet
/// linked).
pub fn start_daemons(lab: &mut Lab, plan: &DaemonPlan) -> Result<Vec<LabDaemon>, Exit> {
    let n = lab.node_count();
    let binary = plan.binary.display().to_string();
    let bin = plan.binary.as_path();
    let node_dir = |i: usize| plan.dir.join(format!("n{i}"));
    let mut daemons = Vec::with_capacity(n);
    for i in 0..n {
        let dir = node_dir(i);
        std::fs::create_dir_all(&dir)
            .map_err(|e| Exit::failure(format!("{}: {e}", dir.display())))?;
        let state = dir.join("state");
        let state_s = state.display().to_string();
        let addr = lab.node_addr(i).map_err(lab_exit)?;
        let advertise = format!("{addr}:{LAB_PORT}");
        if i == 0 {
            x0t_json(bin, &["init", "--state-dir", &state_s, "--json"])?;
            x0t_json(
                bin,
                &[
                    "ca",
                    "init",
                    "--trust-domain",
                    "lab.x0t",
                    "--state-dir",
                    &state_s,
                    "--json",
                ],
            )?;
        } else {
            let ca_state = node_dir(0).join("state").display().to_string();
            let ca_addr = format!("{}:{LAB_PORT}", lab.node_addr(0).map_err(lab_exit)?);
            let inv = x0t_json(
                bin,
                &[
                    "ca",
                    "invite",
                    "--state-dir",
                    &ca_state,
                    "--bootstrap",
                    &ca_addr,
                    "--json",
                ],
            )?;
            let token = inv["token"].as_str().unwrap_or_default().to_owned();
            let mut ok = false;
            // The CA daemon may still be binding its port.
            for _ in 0..50 {
                let o = lab
                    .exec(
                        0,
                        &[&binary, "join", &token, "--state-dir", &state_s, "--json"],
                    )
                    .map_err(lab_exit)?;
                if o.status.success() {
                    ok = true;
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            if !ok {
                return Err(Exit::failure(format!(
                    "node {i} could not join the lab mesh"
                )));
            }
        }
        let mut text = format!(
            "state_dir = {state_s:?}\nlisten = \"0.0.0.0:{LAB_PORT}\"\nadvertise = \"{advertise}\"\n"
        );
        for nb in lab.neighbours(i).map_err(lab_exit)? {
            if nb.node < i {
                text.push_str(&format!(
                    "\n[[peers]]\naddr = \"{}:{LAB_PORT}\"\n",
                    nb.remote_addr
                ));
            }
        }
        if !plan.extra_config.is_empty() {
            text.push('\n');
            text.push_str(&plan.extra_config);
            text.push('\n');
        }
        let config = dir.join("x0t.toml");
        std::fs::write(&config, text)
            .map_err(|e| Exit::failure(format!("{}: {e}", config.display())))?;
        let log = dir.join("x0t.log");
        let config_s = config.display().to_string();
        let process = lab
            .spawn(
                i,
                "x0t",
                &[&binary, "up", "--config", &config_s],
                &x0_lab::SpawnOptions {
                    log: Some(log.clone()),
                    detach: true,
                },
            )
            .map_err(lab_exit)?;
        let id = x0t_json(
            bin,
            &["identity", "show", "--state-dir", &state_s, "--json"],
        )?;
        let overlay = id["overlay_addr"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| Exit::failure("identity without an overlay address"))?;
        daemons.push(LabDaemon {
            process,
            node_id: id["node_id"].as_str().unwrap_or_default().to_owned(),
            overlay,
            log,
        });
    }
    Ok(daemons)
}

/// True: [`start_daemons`] can do its job.
pub fn daemons_available() -> bool {
    true
}

#[derive(Serialize)]
struct NodeView {
    name: String,
    netns: String,
    node_addr: Ipv4Addr,
}

#[derive(Serialize)]
struct LinkView {
    a: String,
    b: String,
    iface_a: String,
    iface_b: String,
    addr_a: String,
    addr_b: String,
    loss_a_to_b: u8,
    loss_b_to_a: u8,
    up: bool,
}

#[derive(Serialize)]
struct LabView {
    name: String,
    dir: String,
    state_file: String,
    underlay_routes: bool,
    nodes: Vec<NodeView>,
    links: Vec<LinkView>,
    processes: Vec<ProcessRecord>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    daemons: Vec<DaemonView>,
}

#[derive(Serialize)]
struct DaemonView {
    node: usize,
    pid: u32,
    node_id: String,
    overlay: std::net::Ipv6Addr,
    log: String,
}

fn view(state: &x0_lab::LabState, dir: &Path) -> LabView {
    let node = |i: usize| state.nodes[i].name.to_string();
    LabView {
        name: state.name.to_string(),
        dir: dir.display().to_string(),
        state_file: dir.join(x0_lab::state::STATE_FILE).display().to_string(),
        underlay_routes: state.underlay_routes,
        nodes: state
            .nodes
            .iter()
            .map(|n| NodeView {
                name: n.name.to_string(),
                netns: n.netns.clone(),
                node_addr: n.node_addr,
            })
            .collect(),
        links: state
            .links
            .iter()
            .map(|l| LinkView {
                a: node(l.a),
                b: node(l.b),
                iface_a: l.iface_a.clone(),
                iface_b: l.iface_b.clone(),
                addr_a: format!("{}/{}", l.addr_a, l.prefix_len),
                addr_b: format!("{}/{}", l.addr_b, l.prefix_len),
                loss_a_to_b: l.loss_a_to_b,
                loss_b_to_a: l.loss_b_to_a,
                up: l.up,
            })
            .collect(),
        processes: state.processes.clone(),
        daemons: Vec::new(),
    }
}

fn print_view(v: &LabView, json: bool) {
    if json {
        println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
        return;
    }
    println!(
        "lab {} ({} nodes, {} links, underlay routes {}), state in {}",
        v.name,
        v.nodes.len(),
        v.links.len(),
        if v.underlay_routes { "on" } else { "off" },
        v.state_file
    );
    for n in &v.nodes {
        println!(
            "  node {:<12} netns {:<28} addr {}",
            n.name, n.netns, n.node_addr
        );
    }
    for d in &v.daemons {
        println!(
            "  x0t  node {:<3} pid {:<8} overlay {:<40} log {}",
            d.node, d.pid, d.overlay, d.log
        );
    }
    for l in &v.links {
        let loss = if l.loss_a_to_b == 0 && l.loss_b_to_a == 0 {
            String::new()
        } else {
            format!("  loss {}%/{}%", l.loss_a_to_b, l.loss_b_to_a)
        };
        println!(
            "  link {} {} ({}) <-> {} {} ({}){}{}",
            l.a,
            l.iface_a,
            l.addr_a,
            l.b,
            l.iface_b,
            l.addr_b,
            loss,
            if l.up { "" } else { "  DOWN" }
        );
    }
    for p in &v.processes {
        println!(
            "  process {} in node #{}: {}",
            p.pid,
            p.node,
            p.argv.join(" ")
        );
    }
}

fn up(args: LabUpArgs) -> CmdResult {
    let name = lab_name(&args.name.name)?;
    if args.daemons && !daemons_available() {
        return Err(Exit::new(UNAVAILABLE, DATA_PLANE_MISSING));
    }
    let topology = Topology::from_arg(&args.topology, args.nodes)
        .and_then(|t| t.with_loss(args.loss))
        .map_err(|e| Exit::usage(e.to_string()))?;
    preflight()?;
    let mut spec = LabSpec::new(name, topology);
    spec.underlay_routes = args.underlay_routes;
    // Armed until the end: a failure anywhere removes what was built.
    let mut lab = Lab::up(&spec).map_err(lab_exit)?;
    let mut daemons = Vec::new();
    if args.daemons {
        let plan = DaemonPlan {
            binary: std::env::current_exe().map_err(|e| Exit::failure(e.to_string()))?,
            dir: lab.dir().join("daemons"),
            extra_config: String::new(),
        };
        daemons = start_daemons(&mut lab, &plan)?;
    }
    let dir = lab.dir().to_owned();
    let state = lab.detach();
    let mut v = view(&state, &dir);
    v.daemons = daemons
        .iter()
        .enumerate()
        .map(|(node, d)| DaemonView {
            node,
            pid: d.process.pid,
            node_id: d.node_id.clone(),
            overlay: d.overlay,
            log: d.log.display().to_string(),
        })
        .collect();
    print_view(&v, args.json);
    if !args.json {
        println!(
            "run commands with `x0t lab exec --name {0} NODE -- CMD`; remove with `x0t lab down --name {0}`",
            state.name
        );
    }
    Ok(())
}

fn exec(args: LabExecArgs) -> CmdResult {
    let name = lab_name(&args.name.name)?;
    preflight()?;
    let lab = Lab::open(&run_dir(), &name).map_err(lab_exit)?;
    let node = lab.node_index(&args.node).map_err(lab_exit)?;
    let (program, rest) = args
        .command
        .split_first()
        .ok_or_else(|| Exit::usage("give a command after `--`"))?;
    let status = lab
        .command(node, program)
        .map_err(lab_exit)?
        .args(rest)
        .status()
        .map_err(|e| Exit::failure(format!("{program}: {e}")))?;
    if status.success() {
        Ok(())
    } else {
        let code = status
            .code()
            .map_or(exit::FAILURE, |c| c.clamp(1, 255) as u8);
        Err(Exit::new(
            code,
            format!("`{}` exited with {status}", args.command.join(" ")),
        ))
    }
}

#[derive(Serialize)]
struct DownView {
    labs: Vec<x0_lab::TeardownReport>,
}

fn down(args: LabDownArgs) -> CmdResult {
    if !x0_lab::tools::is_root() {
        return Err(lab_exit(PreflightError::NotRoot.into()));
    }
    let reports = if args.all {
        x0_lab::down_all(&run_dir()).map_err(lab_exit)?
    } else {
        let name = lab_name(args.name.as_deref().unwrap_or(DEFAULT_LAB))?;
        vec![x0_lab::down(&run_dir(), &name).map_err(lab_exit)?]
    };
    let errors: Vec<String> = reports.iter().flat_map(|r| r.errors.clone()).collect();
    let v = DownView { labs: reports };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else if v.labs.is_empty() {
        println!("no labs here");
    } else {
        for r in &v.labs {
            println!(
                "lab {}: {} namespaces deleted, {} processes stopped{}",
                r.name,
                r.namespaces_deleted.len(),
                r.processes_stopped.len(),
                if r.dir_removed {
                    ", directory removed"
                } else {
                    ""
                }
            );
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(Exit::failure(errors.join("; ")))
    }
}

fn status(args: LabStatusArgs) -> CmdResult {
    if let Some(name) = args.name {
        let name = lab_name(&name)?;
        let lab = Lab::open(&run_dir(), &name).map_err(lab_exit)?;
        print_view(&view(lab.state(), lab.dir()), args.json);
        return Ok(());
    }
    if !x0_lab::tools::is_root() {
        return Err(lab_exit(PreflightError::NotRoot.into()));
    }
    let names: Vec<String> = x0_lab::list(&run_dir())
        .map_err(lab_exit)?
        .iter()
        .map(ToString::to_string)
        .collect();
    if args.json {
        println!("{}", serde_json::json!({ "labs": names }));
    } else if names.is_empty() {
        println!("no labs here");
    } else {
        println!("{}", names.join("\n"));
    }
    Ok(())
}

fn open_pair(name: &str, a: &str, b: &str) -> Result<(Lab, usize, usize), Exit> {
    let name = lab_name(name)?;
    preflight()?;
    let lab = Lab::open(&run_dir(), &name).map_err(lab_exit)?;
    let a = lab.node_index(a).map_err(lab_exit)?;
    let b = lab.node_index(b).map_err(lab_exit)?;
    Ok((lab, a, b))
}

fn loss(args: LabLossArgs) -> CmdResult {
    let (mut lab, a, b) = open_pair(&args.name.name, &args.a, &args.b)?;
    if args.one_way {
        lab.set_loss(a, b, args.percent).map_err(lab_exit)?;
    } else {
        lab.set_link_loss(a, b, args.percent).map_err(lab_exit)?;
    }
    println!(
        "loss {} {} {}: {}%",
        args.a,
        if args.one_way { "->" } else { "<->" },
        args.b,
        args.percent
    );
    Ok(())
}

fn link(args: LabLinkArgs) -> CmdResult {
    let (mut lab, a, b) = open_pair(&args.name.name, &args.a, &args.b)?;
    let up = matches!(args.state, LinkState::Up);
    lab.set_link_up(a, b, up).map_err(lab_exit)?;
    println!(
        "link {} <-> {} {}",
        args.a,
        args.b,
        if up { "up" } else { "down" }
    );
    Ok(())
}
