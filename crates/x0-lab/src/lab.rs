//! A running lab: create it, change it, run processes in it, tear it down.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use crate::names::{LabName, NodeName};
use crate::process::{self, ProcStat, ProcessRecord, Stopped};
use crate::state::{LabState, LinkState, NodeState, STATE_FILE, STATE_VERSION, StateError};
use crate::tools::{self, CommandError, PreflightError};
use crate::topology::{self, LINK_PREFIX_LEN, Topology, TopologyError};

/// nftables table (family `inet`) holding a namespace's loss rules.
pub const NFT_TABLE: &str = "x0lab";
/// How long a process gets between SIGTERM and SIGKILL at teardown.
pub const STOP_GRACE: Duration = Duration::from_secs(2);

/// Why a lab operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LabError {
    /// Not root, or a tool is missing.
    #[error(transparent)]
    Preflight(#[from] PreflightError),
    /// A bad topology.
    #[error(transparent)]
    Topology(#[from] TopologyError),
    /// The state file.
    #[error(transparent)]
    State(#[from] StateError),
    /// `ip`, `nft`, `tc` or a spawned command failed.
    #[error(transparent)]
    Command(#[from] CommandError),
    /// A lab of that name exists already (state file or namespaces).
    #[error(
        "lab {0:?} exists already (state file or namespaces x0lab-{0}-*); \
         remove it with `x0t lab down --name {0}`"
    )]
    Exists(String),
    /// No lab of that name.
    #[error("no lab {0:?} here (no state file; `x0t lab down --all` removes leftovers)")]
    NotFound(String),
    /// No node of that name or index.
    #[error("lab has no node {0:?}")]
    UnknownNode(String),
    /// No link between the two nodes.
    #[error("no link between {0} and {1}")]
    NoLink(String, String),
    /// A percentage above 100.
    #[error("loss must be 0-100 percent, got {0}")]
    BadPercent(u8),
    /// A file operation in the lab directory.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// What to build.
#[derive(Debug, Clone)]
pub struct LabSpec {
    /// The lab's name (namespaces are `x0lab-<name>-<node>`).
    pub name: LabName,
    /// Nodes and links.
    pub topology: Topology,
    /// Install static shortest-path routes between all node and link addresses, so the kernel
    /// forwards across relays (an underlay for peers that cannot relay). Off by default: an
    /// overlay under test should not find a path the kernel already routes.
    pub underlay_routes: bool,
    /// Parent of the lab directory ([`crate::DEFAULT_RUN_DIR`] by default).
    pub run_dir: PathBuf,
}

impl LabSpec {
    /// A spec with no underlay routes, under the default run directory.
    pub fn new(name: LabName, topology: Topology) -> Self {
        Self {
            name,
            topology,
            underlay_routes: false,
            run_dir: PathBuf::from(crate::DEFAULT_RUN_DIR),
        }
    }
}

/// How to start a process in a node.
#[derive(Debug, Clone, Default)]
pub struct SpawnOptions {
    /// Append stdout and stderr to this file (otherwise they are discarded).
    pub log: Option<PathBuf>,
    /// Put the process in its own process group, so it outlives the terminal and the caller
    /// (for `x0t lab up --daemons`). It is still recorded and stopped by `down`.
    pub detach: bool,
}

/// A neighbour of a node, as seen from that node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Neighbour {
    /// Neighbour's index.
    pub node: usize,
    /// Neighbour's name.
    pub name: NodeName,
    /// Local interface leading to it.
    pub iface: String,
    /// Local address on that link.
    pub local_addr: Ipv4Addr,
    /// Neighbour's address on that link.
    pub remote_addr: Ipv4Addr,
    /// Link index.
    pub link: usize,
}

/// What a teardown removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct TeardownReport {
    /// The lab.
    pub name: String,
    /// Namespaces deleted.
    pub namespaces_deleted: Vec<String>,
    /// PIDs stopped (recorded ones and any other process found inside the namespaces).
    pub processes_stopped: Vec<u32>,
    /// Whether the lab directory was removed.
    pub dir_removed: bool,
    /// Problems met on the way (teardown goes on past them).
    pub errors: Vec<String>,
}

/// A lab: namespaces, links and processes, described by a state file.
///
/// A lab made by [`Lab::up`] is *armed*: dropping it (also during a panic unwind) stops its
/// processes by PID, deletes its namespaces and removes its directory. [`Lab::detach`] leaves
/// it running for another process (`x0t lab down`) to remove; [`Lab::open`] attaches to such a
/// lab without arming.
#[derive(Debug)]
pub struct Lab {
    state: LabState,
    dir: PathBuf,
    children: HashMap<u32, Child>,
    armed: bool,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> LabError + '_ {
    move |source| LabError::Io {
        path: path.to_owned(),
        source,
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Lab {
    /// Creates the lab: one namespace per node (loopback up, node address, forwarding on),
    /// one veth pair per link with its /30, the initial loss and rate limits, and the
    /// underlay routes if asked. On any failure, whatever was created is removed again.
    pub fn up(spec: &LabSpec) -> Result<Lab, LabError> {
        tools::preflight()?;
        let name = &spec.name;
        let dir = LabState::dir_in(&spec.run_dir, name);
        let prefix = name.netns_prefix();
        if dir.join(STATE_FILE).exists()
            || tools::netns_list()?.iter().any(|n| n.starts_with(&prefix))
        {
            return Err(LabError::Exists(name.to_string()));
        }
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let topo = &spec.topology;
        let nodes: Vec<NodeState> = topo
            .nodes()
            .iter()
            .enumerate()
            .map(|(i, n)| NodeState {
                name: n.clone(),
                netns: name.netns_of(n),
                node_addr: topology::node_addr(i),
            })
            .collect();
        let links: Vec<LinkState> = topo
            .links()
            .iter()
            .enumerate()
            .map(|(k, l)| {
                let (addr_a, addr_b) = topology::link_addrs(k);
                LinkState {
                    a: l.a,
                    b: l.b,
                    iface_a: nodes[l.b].name.iface_towards(),
                    iface_b: nodes[l.a].name.iface_towards(),
                    addr_a,
                    addr_b,
                    prefix_len: LINK_PREFIX_LEN,
                    loss_a_to_b: l.loss_percent,
                    loss_b_to_a: l.loss_percent,
                    rate_a_to_b: l.rate_mbit,
                    rate_b_to_a: l.rate_mbit,
                    up: true,
                }
            })
            .collect();
        let mut lab = Lab {
            state: LabState {
                version: STATE_VERSION,
                name: name.clone(),
                created_unix: unix_now(),
                creator_pid: std::process::id(),
                nodes,
                links,
                underlay_routes: spec.underlay_routes,
                processes: Vec::new(),
            },
            dir,
            children: HashMap::new(),
            // From here on, an early return drops `lab` and removes what was made.
            armed: true,
        };
        lab.save()?;
        lab.build(topo)?;
        Ok(lab)
    }

    fn build(&mut self, topo: &Topology) -> Result<(), LabError> {
        let s = &self.state;
        tools::ip_batch(
            None,
            &s.nodes
                .iter()
                .map(|n| format!("netns add {}", n.netns))
                .collect::<Vec<_>>(),
        )?;
        tools::ip_batch(
            None,
            &s.links
                .iter()
                .map(|l| {
                    format!(
                        "link add {} netns {} type veth peer name {} netns {}",
                        l.iface_a, s.nodes[l.a].netns, l.iface_b, s.nodes[l.b].netns
                    )
                })
                .collect::<Vec<_>>(),
        )?;
        for (i, node) in s.nodes.iter().enumerate() {
            // Forwarding on (the lab's relays are routers), no reverse-path filter (asymmetric
            // paths are normal in a mesh), no IPv6 duplicate address detection delay.
            let sysctl = "echo 1 > /proc/sys/net/ipv4/ip_forward; \
                          echo 1 > /proc/sys/net/ipv6/conf/all/forwarding; \
                          echo 0 > /proc/sys/net/ipv4/conf/all/rp_filter; \
                          echo 0 > /proc/sys/net/ipv4/conf/default/rp_filter; \
                          echo 0 > /proc/sys/net/ipv6/conf/default/accept_dad";
            tools::run(
                tools::IP.program,
                &["netns", "exec", &node.netns, "sh", "-c", sysctl],
                None,
            )?;
            let mut lines = vec![
                "link set lo up".to_owned(),
                format!("addr add {}/32 dev lo", node.node_addr),
            ];
            for l in &s.links {
                if let Some((iface, addr)) = l.end_of(i) {
                    lines.push(format!("addr add {addr}/{} dev {iface}", l.prefix_len));
                    lines.push(format!("link set {iface} up"));
                }
            }
            tools::ip_batch(Some(&node.netns), &lines)?;
        }
        for i in 0..s.nodes.len() {
            self.apply_loss(i)?;
        }
        for k in 0..self.state.links.len() {
            let l = &self.state.links[k];
            let (a, b, ra, rb) = (l.a, l.b, l.rate_a_to_b, l.rate_b_to_a);
            if ra.is_some() || rb.is_some() {
                self.set_rate(a, b, ra)?;
                self.set_rate(b, a, rb)?;
            }
        }
        if self.state.underlay_routes {
            self.install_underlay_routes(topo)?;
        }
        Ok(())
    }

    fn install_underlay_routes(&self, topo: &Topology) -> Result<(), LabError> {
        let s = &self.state;
        for (i, node) in s.nodes.iter().enumerate() {
            let hops = topo.next_hops(i);
            let via = |dest: usize| -> Option<Ipv4Addr> {
                let nh = hops.get(dest).copied().flatten()?;
                let l = s.links.iter().find(|l| l.joins(i, nh))?;
                l.end_of(nh).map(|(_, a)| a)
            };
            let mut lines = Vec::new();
            for (j, other) in s.nodes.iter().enumerate() {
                if let Some(gw) = via(j) {
                    lines.push(format!("route replace {}/32 via {gw}", other.node_addr));
                }
            }
            for (k, l) in s.links.iter().enumerate() {
                if l.a == i || l.b == i {
                    continue;
                }
                // Towards the nearer end of the link.
                let (da, db) = (dist(topo, i, l.a), dist(topo, i, l.b));
                let target = if da <= db { l.a } else { l.b };
                if let Some(gw) = via(target) {
                    lines.push(format!(
                        "route replace {}/{} via {gw}",
                        topology::link_subnet(k),
                        l.prefix_len
                    ));
                }
            }
            tools::ip_batch(Some(&node.netns), &lines)?;
        }
        Ok(())
    }

    /// Attaches to a lab that another process created, from its state file. The handle is
    /// not armed: dropping it leaves the lab running.
    pub fn open(run_dir: &Path, name: &LabName) -> Result<Lab, LabError> {
        let dir = LabState::dir_in(run_dir, name);
        let path = dir.join(STATE_FILE);
        if !path.exists() {
            return Err(LabError::NotFound(name.to_string()));
        }
        let state = LabState::load(&path)?;
        Ok(Lab {
            state,
            dir,
            children: HashMap::new(),
            armed: false,
        })
    }

    /// Leaves the lab running when this handle is dropped; `down` removes it later.
    pub fn detach(mut self) -> LabState {
        self.armed = false;
        self.state.clone()
    }

    /// Removes the lab now (the same as dropping an armed handle, with a report).
    pub fn down(mut self) -> TeardownReport {
        self.armed = false;
        let mut children = std::mem::take(&mut self.children);
        teardown(
            &self.state.name,
            &self.dir,
            Some(&self.state),
            &mut children,
        )
    }

    /// The state as last saved.
    pub fn state(&self) -> &LabState {
        &self.state
    }

    /// The lab's name.
    pub fn name(&self) -> &LabName {
        &self.state.name
    }

    /// The lab directory: the state file lives here, and users may keep configurations,
    /// keys and logs here too (removed by `down`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Number of nodes.
    pub fn node_count(&self) -> usize {
        self.state.nodes.len()
    }

    /// A node by index.
    pub fn node(&self, node: usize) -> Result<&NodeState, LabError> {
        self.state
            .nodes
            .get(node)
            .ok_or_else(|| LabError::UnknownNode(node.to_string()))
    }

    /// Index of a node given by name or index.
    pub fn node_index(&self, name: &str) -> Result<usize, LabError> {
        self.state
            .node_index(name)
            .ok_or_else(|| LabError::UnknownNode(name.to_owned()))
    }

    /// The namespace of a node.
    pub fn netns(&self, node: usize) -> Result<&str, LabError> {
        Ok(&self.node(node)?.netns)
    }

    /// The node's /32 loopback address (reachable from everywhere with underlay routes).
    pub fn node_addr(&self, node: usize) -> Result<Ipv4Addr, LabError> {
        Ok(self.node(node)?.node_addr)
    }

    /// Neighbours of a node, with the interface and addresses of each link.
    pub fn neighbours(&self, node: usize) -> Result<Vec<Neighbour>, LabError> {
        self.node(node)?;
        Ok(self
            .state
            .links
            .iter()
            .enumerate()
            .filter_map(|(k, l)| {
                let other = if l.a == node {
                    l.b
                } else if l.b == node {
                    l.a
                } else {
                    return None;
                };
                let (iface, local_addr) = l.end_of(node)?;
                let (_, remote_addr) = l.end_of(other)?;
                Some(Neighbour {
                    node: other,
                    name: self.state.nodes[other].name.clone(),
                    iface: iface.to_owned(),
                    local_addr,
                    remote_addr,
                    link: k,
                })
            })
            .collect())
    }

    fn link_index(&self, x: usize, y: usize) -> Result<usize, LabError> {
        self.state.link_index(x, y).ok_or_else(|| {
            let name = |i: usize| {
                self.state
                    .nodes
                    .get(i)
                    .map_or_else(|| i.to_string(), |n| n.name.to_string())
            };
            LabError::NoLink(name(x), name(y))
        })
    }

    fn save(&self) -> Result<(), LabError> {
        Ok(self.state.save(&self.dir.join(STATE_FILE))?)
    }

    /// A command that runs `program` inside a node's namespace (`ip netns exec NS program`);
    /// add arguments and run it as you like.
    pub fn command(&self, node: usize, program: &str) -> Result<Command, LabError> {
        let mut c = Command::new(tools::IP.program);
        c.args(["netns", "exec", self.netns(node)?, program]);
        Ok(c)
    }

    /// Runs `argv` inside a node's namespace to completion and returns its output, whatever
    /// its exit status.
    pub fn exec(&self, node: usize, argv: &[&str]) -> Result<Output, LabError> {
        let (program, args) = argv
            .split_first()
            .ok_or_else(|| LabError::UnknownNode("(empty command)".into()))?;
        let mut c = self.command(node, program)?;
        c.args(args).stdin(Stdio::null());
        c.output().map_err(|source| {
            LabError::Command(CommandError::Spawn {
                command: argv.join(" "),
                source,
            })
        })
    }

    /// Starts `argv` inside a node's namespace and records it (PID and start time) in the
    /// state file. `ip netns exec` execs the command, so the PID is the command's own.
    pub fn spawn(
        &mut self,
        node: usize,
        label: &str,
        argv: &[&str],
        options: &SpawnOptions,
    ) -> Result<ProcessRecord, LabError> {
        let (program, args) = argv
            .split_first()
            .ok_or_else(|| LabError::UnknownNode("(empty command)".into()))?;
        let mut c = self.command(node, program)?;
        c.args(args).stdin(Stdio::null());
        match &options.log {
            Some(path) => {
                let f = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(io_err(path))?;
                let f2 = f.try_clone().map_err(io_err(path))?;
                c.stdout(f).stderr(f2);
            }
            None => {
                c.stdout(Stdio::null()).stderr(Stdio::null());
            }
        }
        if options.detach {
            c.process_group(0);
        }
        let child = c.spawn().map_err(|source| CommandError::Spawn {
            command: argv.join(" "),
            source,
        })?;
        let pid = child.id();
        let start_time = ProcStat::read(pid).map(|s| s.start_time).unwrap_or(0);
        let record = ProcessRecord {
            pid,
            start_time,
            node,
            label: label.to_owned(),
            argv: argv.iter().map(|s| (*s).to_owned()).collect(),
        };
        self.children.insert(pid, child);
        self.state.processes.push(record.clone());
        self.save()?;
        Ok(record)
    }

    /// Stops a recorded process (SIGTERM, then SIGKILL after [`STOP_GRACE`]) and forgets it.
    pub fn stop(&mut self, pid: u32) -> Result<Stopped, LabError> {
        let Some(pos) = self.state.processes.iter().position(|p| p.pid == pid) else {
            return Ok(Stopped::AlreadyGone);
        };
        let rec = self.state.processes.remove(pos);
        let mut child = self.children.remove(&pid);
        let r = process::stop(rec.pid, rec.start_time, STOP_GRACE, || {
            if let Some(c) = child.as_mut() {
                let _ = c.try_wait();
            }
        });
        self.save()?;
        Ok(r)
    }

    /// Whether a process this handle started has exited, and how (`None` while it runs).
    pub fn try_wait(&mut self, pid: u32) -> Option<std::process::ExitStatus> {
        self.children.get_mut(&pid)?.try_wait().ok().flatten()
    }

    /// Sets the loss from `from` to `to` (egress of `from`'s interface on that link), in percent.
    pub fn set_loss(&mut self, from: usize, to: usize, percent: u8) -> Result<(), LabError> {
        if percent > 100 {
            return Err(LabError::BadPercent(percent));
        }
        let k = self.link_index(from, to)?;
        let l = &mut self.state.links[k];
        if l.a == from {
            l.loss_a_to_b = percent;
        } else {
            l.loss_b_to_a = percent;
        }
        self.apply_loss(from)?;
        self.save()
    }

    /// Sets the loss in both directions of the link between two nodes.
    pub fn set_link_loss(&mut self, a: usize, b: usize, percent: u8) -> Result<(), LabError> {
        self.set_loss(a, b, percent)?;
        self.set_loss(b, a, percent)
    }

    /// Rewrites the node's loss rules in one nftables transaction:
    /// `oifname IF numgen random mod 100 < N drop` per impaired interface (a plain drop at 100 %), in an `inet`
    /// postrouting chain (so it applies to forwarded and local traffic alike).
    fn apply_loss(&self, node: usize) -> Result<(), LabError> {
        let mut rules = Vec::new();
        for l in &self.state.links {
            let (iface, loss) = if l.a == node {
                (&l.iface_a, l.loss_a_to_b)
            } else if l.b == node {
                (&l.iface_b, l.loss_b_to_a)
            } else {
                continue;
            };
            // `numgen random mod 100` yields 0-99, so `< 100` is out of nft's range: 100 % is a
            // plain drop.
            if loss == 100 {
                rules.push(format!(
                    "add rule inet {NFT_TABLE} egress oifname \"{iface}\" counter drop"
                ));
            } else if loss > 0 {
                rules.push(format!(
                    "add rule inet {NFT_TABLE} egress oifname \"{iface}\" numgen random mod 100 < {loss} counter drop"
                ));
            }
        }
        let netns = self.netns(node)?;
        let has_table = tools::run(
            tools::IP.program,
            &[
                "netns", "exec", netns, "nft", "list", "table", "inet", NFT_TABLE,
            ],
            None,
        )
        .is_ok();
        if rules.is_empty() && !has_table {
            return Ok(());
        }
        let mut script = vec![
            format!("add table inet {NFT_TABLE}"),
            format!("flush table inet {NFT_TABLE}"),
            format!(
                "add chain inet {NFT_TABLE} egress {{ type filter hook postrouting priority 0 ; policy accept ; }}"
            ),
        ];
        script.extend(rules);
        let text = script.join("\n") + "\n";
        tools::run(
            tools::IP.program,
            &["netns", "exec", netns, "nft", "-f", "-"],
            Some(&text),
        )?;
        Ok(())
    }

    /// Sets both ends of the link between two nodes administratively up or down.
    pub fn set_link_up(&mut self, a: usize, b: usize, up: bool) -> Result<(), LabError> {
        let k = self.link_index(a, b)?;
        let l = self.state.links[k].clone();
        let state = if up { "up" } else { "down" };
        for (node, iface) in [(l.a, &l.iface_a), (l.b, &l.iface_b)] {
            tools::ip(&["-n", self.netns(node)?, "link", "set", iface, state])?;
        }
        self.state.links[k].up = up;
        // The kernel flushes routes through an interface that goes down: put them back.
        if up && self.state.underlay_routes {
            let topo = self.topology()?;
            self.install_underlay_routes(&topo)?;
        }
        self.save()
    }

    /// The topology, rebuilt from the state.
    pub fn topology(&self) -> Result<Topology, LabError> {
        let nodes = self.state.nodes.iter().map(|n| n.name.clone()).collect();
        let links = self
            .state
            .links
            .iter()
            .map(|l| topology::LinkSpec {
                a: l.a,
                b: l.b,
                loss_percent: l.loss_a_to_b.max(l.loss_b_to_a),
                rate_mbit: l.rate_a_to_b,
            })
            .collect();
        Ok(Topology::new(nodes, links)?)
    }

    /// Sets (or with `None` removes) a tbf rate limit on `from`'s egress towards `to`, Mbit/s.
    pub fn set_rate(&mut self, from: usize, to: usize, mbit: Option<u32>) -> Result<(), LabError> {
        let k = self.link_index(from, to)?;
        let l = &self.state.links[k];
        let (iface, _) = l
            .end_of(from)
            .ok_or_else(|| LabError::UnknownNode(from.to_string()))?;
        let iface = iface.to_owned();
        let netns = self.netns(from)?.to_owned();
        match mbit {
            Some(rate) => {
                tools::require(tools::TC)?;
                // Burst: at least one timer tick's worth of bytes at this rate, and 32 KiB.
                let burst_kb = (u64::from(rate) * 1_000_000 / 8 / 100 / 1024).max(32);
                tools::run(
                    tools::TC.program,
                    &[
                        "-n",
                        &netns,
                        "qdisc",
                        "replace",
                        "dev",
                        &iface,
                        "root",
                        "tbf",
                        "rate",
                        &format!("{rate}mbit"),
                        "burst",
                        &format!("{burst_kb}kb"),
                        "latency",
                        "50ms",
                    ],
                    None,
                )?;
            }
            None => {
                // No qdisc to delete is fine.
                let _ = tools::run(
                    tools::TC.program,
                    &["-n", &netns, "qdisc", "del", "dev", &iface, "root"],
                    None,
                );
            }
        }
        let l = &mut self.state.links[k];
        if l.a == from {
            l.rate_a_to_b = mbit;
        } else {
            l.rate_b_to_a = mbit;
        }
        self.save()
    }

    /// The MTU of an interface inside a node's namespace.
    pub fn mtu(&self, node: usize, iface: &str) -> Result<u32, LabError> {
        let out = tools::ip(&["-n", self.netns(node)?, "-o", "link", "show", "dev", iface])?;
        let text = String::from_utf8_lossy(&out.stdout);
        let mut words = text.split_whitespace();
        while let Some(w) = words.next() {
            if w == "mtu"
                && let Some(v) = words.next().and_then(|v| v.parse().ok())
            {
                return Ok(v);
            }
        }
        Err(LabError::Command(CommandError::Failed {
            command: format!("ip -n {} link show dev {iface}", self.netns(node)?),
            status: "ok".into(),
            stderr: "no mtu in the output".into(),
        }))
    }
}

fn dist(topo: &Topology, from: usize, to: usize) -> usize {
    // BFS distance; small labs only, so recomputing is fine.
    let adj = topo.adjacency();
    let mut d = vec![usize::MAX; adj.len()];
    let mut q = std::collections::VecDeque::from([from]);
    d[from] = 0;
    while let Some(u) = q.pop_front() {
        for &v in &adj[u] {
            if d[v] == usize::MAX {
                d[v] = d[u] + 1;
                q.push_back(v);
            }
        }
    }
    d.get(to).copied().unwrap_or(usize::MAX)
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.armed {
            self.armed = false;
            let mut children = std::mem::take(&mut self.children);
            let report = teardown(
                &self.state.name,
                &self.dir,
                Some(&self.state),
                &mut children,
            );
            for e in &report.errors {
                eprintln!("x0-lab: teardown of {}: {e}", self.state.name);
            }
        }
    }
}

/// Stops the lab's processes, deletes its namespaces (by prefix, state file or not) and
/// removes its directory. Goes on past errors and reports them.
fn teardown(
    name: &LabName,
    dir: &Path,
    state: Option<&LabState>,
    children: &mut HashMap<u32, Child>,
) -> TeardownReport {
    let mut report = TeardownReport {
        name: name.to_string(),
        ..Default::default()
    };
    if let Some(state) = state {
        for p in &state.processes {
            let mut child = children.remove(&p.pid);
            let r = process::stop(p.pid, p.start_time, STOP_GRACE, || {
                if let Some(c) = child.as_mut() {
                    let _ = c.try_wait();
                }
            });
            if r != Stopped::AlreadyGone {
                report.processes_stopped.push(p.pid);
            }
        }
    }
    let prefix = name.netns_prefix();
    let mut namespaces: Vec<String> = match tools::netns_list() {
        Ok(list) => list
            .into_iter()
            .filter(|n| n.starts_with(&prefix))
            .collect(),
        Err(e) => {
            report.errors.push(e.to_string());
            state
                .map(|s| s.nodes.iter().map(|n| n.netns.clone()).collect())
                .unwrap_or_default()
        }
    };
    namespaces.sort();
    namespaces.dedup();
    for ns in &namespaces {
        // Anything still running inside one of the lab's namespaces was started in the lab
        // (children of recorded processes, `lab exec` leftovers): stop it by PID.
        for pid in tools::netns_pids(ns).unwrap_or_default() {
            if let Some(stat) = ProcStat::read(pid) {
                let r = process::stop(pid, stat.start_time, STOP_GRACE, || ());
                if r != Stopped::AlreadyGone {
                    report.processes_stopped.push(pid);
                }
            }
        }
        match tools::ip(&["netns", "del", ns]) {
            Ok(_) => report.namespaces_deleted.push(ns.clone()),
            Err(e) => report.errors.push(e.to_string()),
        }
    }
    for (_, mut c) in children.drain() {
        let _ = c.try_wait();
    }
    if dir.exists() {
        match std::fs::remove_dir_all(dir) {
            Ok(()) => report.dir_removed = true,
            Err(e) => report.errors.push(format!("{}: {e}", dir.display())),
        }
    }
    report
}

/// Removes the lab `name` from any process: the processes in its state file (by PID and start
/// time), every namespace `x0lab-<name>-*` and everything in it, and its directory. Works
/// after a crash, with or without a state file.
pub fn down(run_dir: &Path, name: &LabName) -> Result<TeardownReport, LabError> {
    require_root_and_ip()?;
    let dir = LabState::dir_in(run_dir, name);
    let state = LabState::load(&dir.join(STATE_FILE)).ok();
    Ok(teardown(name, &dir, state.as_ref(), &mut HashMap::new()))
}

/// Labs present here: those with a directory under `run_dir` and those with namespaces.
pub fn list(run_dir: &Path) -> Result<Vec<LabName>, LabError> {
    let mut names: Vec<LabName> = tools::netns_list()?
        .iter()
        .filter_map(|ns| LabName::of_netns(ns))
        .collect();
    if let Ok(entries) = std::fs::read_dir(run_dir) {
        names.extend(
            entries
                .filter_map(Result::ok)
                .filter_map(|e| LabName::new(&e.file_name().to_string_lossy()).ok()),
        );
    }
    names.sort();
    names.dedup();
    Ok(names)
}

/// Removes every lab found by [`list`].
pub fn down_all(run_dir: &Path) -> Result<Vec<TeardownReport>, LabError> {
    require_root_and_ip()?;
    list(run_dir)?
        .iter()
        .map(|name| down(run_dir, name))
        .collect()
}

/// Teardown needs root and `ip`, not `nft`.
fn require_root_and_ip() -> Result<(), LabError> {
    if !tools::is_root() {
        return Err(PreflightError::NotRoot.into());
    }
    tools::require(tools::IP)?;
    Ok(())
}
