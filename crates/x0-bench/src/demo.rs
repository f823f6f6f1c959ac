//! `x0t demo`: a real mesh on this machine, without root, that forms, loses a relay and heals.
//!
//! The demo creates a mesh CA and N real daemons (this executable's `x0t up`, the same code as
//! on a real node) in a ring on loopback UDP ports, each in userspace mode (`dataplane.tun =
//! false` with an application socket in place of the TUN device, docs/dataplane.md). A built-in
//! generator sends 1,000 sequenced IPv6/UDP packets per second from n0 to the node opposite it,
//! through the real data plane (end-to-end and link encryption, relaying). After a while the
//! relay carrying the stream is killed with SIGKILL; the demo shows, live, when n0 notices (its
//! log: the neighbour declared down after missed probes), when it reroutes, and when packets
//! flow again, then prints a summary (`--json`: as JSON).
//!
//! The daemons run without eBPF telemetry (its tracepoints see the whole machine: one set per
//! daemon on one host would count everything five times).
//!
//! `--lab` (root) runs the same story in network namespaces with real TUN devices, through the
//! failover benchmark's relay-kill scenario.

use std::fs::File;
use std::io::{Read, Seek};
use std::net::{Ipv6Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use clap::Args;
use serde::Serialize;

use x0_node::exit::{CmdResult, Exit};

/// Packets per second of the generator.
const RATE_PPS: u64 = 1000;
/// How long the mesh may take to form.
const FORM_TIMEOUT: Duration = Duration::from_secs(30);

/// `x0t demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Nodes in the ring (4–16): n0 sends to the node opposite it, over two disjoint paths.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(4..=16))]
    pub nodes: u16,
    /// Seconds of traffic; the relay is killed at 40 % of it.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(3..=600))]
    pub seconds: u32,
    /// Print the summary as JSON on stdout (the live view stays on stderr).
    #[arg(long)]
    pub json: bool,
    /// Run in network namespaces with real TUN devices (needs root).
    #[arg(long)]
    pub lab: bool,
    /// Keep the demo's directory (states, configs, logs) and print where it is.
    #[arg(long)]
    pub keep: bool,
}

/// What the demo measured.
#[derive(Debug, Serialize)]
pub struct DemoSummary {
    /// `loopback` (userspace mode) or `lab` (namespaces and TUN).
    pub mode: &'static str,
    /// Daemons in the mesh.
    pub nodes: u16,
    /// Milliseconds the mesh took to form: from creating the CA until n0 had a route to the
    /// far node (every join, daemon start, link and advert flood in between).
    pub form_ms: Option<f64>,
    /// The stream's source, destination, and the relay that was killed.
    pub source: String,
    /// Destination node.
    pub destination: String,
    /// The relay killed.
    pub killed_relay: String,
    /// Kill → n0 declares the relay down (its log), ms.
    pub detect_ms: Option<f64>,
    /// Kill → n0's route to the destination moves, ms.
    pub reroute_ms: Option<f64>,
    /// Kill → packets arrive again (the end of the longest silence after the kill), ms.
    pub recover_ms: Option<f64>,
    /// Packets sent.
    pub sent: u64,
    /// Distinct packets delivered.
    pub delivered: u64,
    /// Sent minus delivered.
    pub lost: u64,
    /// The path after the failure, as node names.
    pub path_after: Option<String>,
    /// The daemons' logs and states (kept with `--keep`).
    pub dir: Option<PathBuf>,
}

/// Runs the demo.
pub fn run(args: DemoArgs) -> CmdResult {
    let summary = if args.lab {
        crate::failover::demo_in_lab(args.seconds)
            .map_err(|e| Exit::failure(format!("demo --lab: {e}")))?
    } else {
        Demo::run(&args)?
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&summary).map_err(|e| Exit::failure(e.to_string()))?
        );
    } else {
        print_summary(&summary);
    }
    Ok(())
}

fn print_summary(s: &DemoSummary) {
    let ms = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.0} ms"));
    println!();
    println!("x0t demo ({}, {} nodes):", s.mode, s.nodes);
    if let Some(f) = s.form_ms {
        println!("  mesh formed in      {f:.0} ms");
    }
    println!(
        "  stream              {} → {}, {RATE_PPS} packets/s through the real data plane",
        s.source, s.destination
    );
    println!("  killed relay        {} (SIGKILL)", s.killed_relay);
    println!("  detected after      {}", ms(s.detect_ms));
    println!("  rerouted after      {}", ms(s.reroute_ms));
    println!("  traffic back after  {}", ms(s.recover_ms));
    if let Some(p) = &s.path_after {
        println!("  path after          {p}");
    }
    println!(
        "  packets             {} sent, {} delivered, {} lost",
        s.sent, s.delivered, s.lost
    );
    if let Some(d) = &s.dir {
        println!("  logs and states     {}", d.display());
    }
}

fn say(start: Instant, msg: impl AsRef<str>) {
    eprintln!(
        "[{:>6.2} s] {}",
        start.elapsed().as_secs_f64(),
        msg.as_ref()
    );
}

/// One daemon of the demo.
struct Node {
    name: String,
    child: Child,
    log: PathBuf,
    id: String,
    overlay: Ipv6Addr,
    listen: String,
    app: SocketAddr,
    /// The daemon's HTTP API (`None` if it could not start one).
    api: Option<String>,
}

impl Drop for Node {
    fn drop(&mut self) {
        // Only the process this demo started, by its handle.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Demo {
    exe: PathBuf,
    dir: tempfile::TempDir,
    start: Instant,
}

impl Demo {
    fn run(args: &DemoArgs) -> Result<DemoSummary, Exit> {
        let exe = std::env::current_exe()
            .map_err(|e| Exit::failure(format!("cannot find this executable: {e}")))?;
        let dir = tempfile::Builder::new()
            .prefix("x0t-demo-")
            .tempdir()
            .map_err(|e| Exit::failure(format!("cannot create a directory: {e}")))?;
        let demo = Demo {
            exe,
            dir,
            start: Instant::now(),
        };
        let result = demo.story(args);
        if args.keep {
            let kept = demo.dir.keep();
            eprintln!("the demo's files are in {}", kept.display());
            return result.map(|mut s| {
                s.dir = Some(kept);
                s
            });
        }
        result
    }

    fn x0t_json(&self, args: &[&str]) -> Result<serde_json::Value, Exit> {
        crate::lab::x0t_json(&self.exe, args)
    }

    fn state(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("n{i}")).join("state")
    }

    /// Starts node `i`, dialling `peers`.
    fn start_node(&self, i: usize, peers: &[&str]) -> Result<Node, Exit> {
        let dir = self.dir.path().join(format!("n{i}"));
        let state = self.state(i);
        let mut text = format!(
            "state_dir = {:?}\nlisten = \"127.0.0.1:0\"\n\n[dataplane]\ntun = false\napp_socket = \"127.0.0.1:0\"\n\n[api]\nlisten = \"127.0.0.1:0\"\n\n[ebpf]\nenabled = false\n",
            state.display().to_string()
        );
        for p in peers {
            text.push_str(&format!("\n[[peers]]\naddr = \"{p}\"\n"));
        }
        let config = dir.join("x0t.toml");
        std::fs::write(&config, text)
            .map_err(|e| Exit::failure(format!("{}: {e}", config.display())))?;
        let log = dir.join("x0t.log");
        let out =
            File::create(&log).map_err(|e| Exit::failure(format!("{}: {e}", log.display())))?;
        let err = out
            .try_clone()
            .map_err(|e| Exit::failure(format!("{}: {e}", log.display())))?;
        let child = Command::new(&self.exe)
            .args(["up", "--config"])
            .arg(&config)
            .env("X0T_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .map_err(|e| Exit::failure(format!("cannot start a daemon: {e}")))?;
        let mut node = Node {
            name: format!("n{i}"),
            child,
            log,
            id: String::new(),
            overlay: Ipv6Addr::UNSPECIFIED,
            listen: String::new(),
            app: SocketAddr::from(([127, 0, 0, 1], 0)),
            api: None,
        };
        let up = wait_line(&mut node, &["x0t up", "listen="], FORM_TIMEOUT)?;
        node.id = field(&up, "node=").unwrap_or_default();
        node.listen = field(&up, "listen=").unwrap_or_default();
        node.api = field(&up, "api=").filter(|a| a != "off");
        node.overlay = field(&up, "overlay=")
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| Exit::failure("a daemon logged no overlay address"))?;
        let dp = wait_line(&mut node, &["data plane up", "app="], FORM_TIMEOUT)?;
        node.app = field(&dp, "app=")
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| Exit::failure("a daemon logged no application socket"))?;
        Ok(node)
    }

    fn story(&self, args: &DemoArgs) -> Result<DemoSummary, Exit> {
        let n = usize::from(args.nodes);
        let t0 = self.start;
        say(
            t0,
            format!(
                "creating a mesh CA and {n} daemons in a ring on loopback (userspace mode, no root)"
            ),
        );
        let form_start = Instant::now();
        let s0 = self.state(0).display().to_string();
        self.x0t_json(&["init", "--state-dir", &s0, "--json"])?;
        self.x0t_json(&[
            "ca",
            "init",
            "--trust-domain",
            "demo.x0t",
            "--state-dir",
            &s0,
            "--json",
        ])?;
        let mut nodes: Vec<Node> = Vec::with_capacity(n);
        nodes.push(self.start_node(0, &[])?);
        for i in 1..n {
            let si = self.state(i).display().to_string();
            let inv = self.x0t_json(&[
                "ca",
                "invite",
                "--state-dir",
                &s0,
                "--bootstrap",
                &nodes[0].listen,
                "--json",
            ])?;
            let token = inv["token"].as_str().unwrap_or_default().to_owned();
            self.x0t_json(&["join", &token, "--state-dir", &si, "--json"])?;
            let mut peers = vec![nodes[i - 1].listen.clone()];
            if i == n - 1 {
                peers.push(nodes[0].listen.clone());
            }
            let refs: Vec<&str> = peers.iter().map(String::as_str).collect();
            let node = self.start_node(i, &refs)?;
            say(
                t0,
                format!(
                    "{} up: node {} overlay {} (joined with an ML-DSA-signed SVID){}",
                    node.name,
                    short(&node.id),
                    node.overlay,
                    node.api
                        .as_ref()
                        .map(|a| format!(", API http://{a}"))
                        .unwrap_or_default()
                ),
            );
            nodes.push(node);
        }
        let dst = n / 2;
        let via = wait_route(&mut nodes, dst, FORM_TIMEOUT)?;
        let form_ms = form_start.elapsed().as_secs_f64() * 1e3;
        let relay = index_of(&nodes, &via)
            .ok_or_else(|| Exit::failure("n0 routes through a node it does not know"))?;
        if let Some(api) = &nodes[0].api {
            say(
                t0,
                format!(
                    "while the demo runs: curl http://{api}/v1/routes (or /v1/topology, /metrics; every node has its API, see above)"
                ),
            );
        }
        say(
            t0,
            format!(
                "mesh formed in {form_ms:.0} ms: n0 reaches n{dst} via {} (and could around the other side of the ring)",
                nodes[relay].name
            ),
        );

        // The stream.
        let mut stream = Stream::start(&nodes[0], &nodes[dst])?;
        let wait_first = Instant::now();
        while stream.delivered() == 0 {
            if wait_first.elapsed() > FORM_TIMEOUT {
                return Err(Exit::failure(
                    "no packet crossed the mesh (the end-to-end session did not come up)",
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        stream.start_counting();
        say(
            t0,
            format!(
                "traffic flows: {RATE_PPS} packets/s n0 → n{dst}, sealed end to end (TLS 1.3, X25519MLKEM768) and per link"
            ),
        );
        let total = Duration::from_secs(u64::from(args.seconds));
        let kill_after = total.mul_f64(0.4);
        let started = Instant::now();
        let mut last_status = Instant::now();
        let mut relay = relay;
        while started.elapsed() < kill_after {
            std::thread::sleep(Duration::from_millis(50));
            // The two ways round a ring of even size cost the same: the route may move.
            if let Ok(v) = wait_route(&mut nodes, dst, Duration::ZERO)
                && let Some(r) = index_of(&nodes, &v)
            {
                relay = r;
            }
            if last_status.elapsed() >= Duration::from_secs(1) {
                last_status = Instant::now();
                say(t0, stream.status(&nodes[relay].name));
            }
        }
        if relay == dst {
            return Err(Exit::failure(
                "n0 routes to its destination directly; no relay to kill",
            ));
        }

        // The fault.
        let log_offset = file_len(&nodes[0].log);
        let killed_at = SystemTime::now();
        let killed_instant = Instant::now();
        nodes[relay]
            .child
            .kill()
            .map_err(|e| Exit::failure(format!("cannot kill the relay: {e}")))?;
        let _ = nodes[relay].child.wait();
        say(
            t0,
            format!(
                "✗ killed relay {} with SIGKILL: its neighbours are not told, they must notice",
                nodes[relay].name
            ),
        );
        let mut detect_ms = None;
        let mut reroute: Option<(f64, String)> = None;
        let mut recover_ms = None;
        let mut last_status = Instant::now();
        while started.elapsed() < total {
            std::thread::sleep(Duration::from_millis(20));
            let events = events_since(&nodes[0].log, log_offset, killed_at);
            if detect_ms.is_none()
                && let Some(e) = events.iter().find(|e| {
                    e.line.contains("neighbour down") && e.line.contains(&nodes[relay].id)
                })
            {
                detect_ms = Some(e.t_ms);
                say(
                    t0,
                    format!(
                        "! n0 declared {} down after {:.0} ms (missed probes: 3 × 100 ms)",
                        nodes[relay].name, e.t_ms
                    ),
                );
            }
            let dst_field = format!("dst={}", nodes[dst].id);
            if reroute.is_none()
                && let Some((e, via)) = events.iter().find_map(|e| {
                    let route = e.line.contains(" route ")
                        && e.line.split_whitespace().any(|w| w == dst_field);
                    route
                        .then(|| field(&e.line, "via="))
                        .flatten()
                        .map(|v| (e, v))
                })
            {
                let name = index_of(&nodes, &via).map_or(via.clone(), |i| nodes[i].name.clone());
                say(
                    t0,
                    format!("↪ n0 rerouted n{dst} via {name} after {:.0} ms", e.t_ms),
                );
                reroute = Some((e.t_ms, via));
            }
            if recover_ms.is_none()
                && let Some(ms) = stream.recovered_after(killed_instant)
            {
                recover_ms = Some(ms);
                say(
                    t0,
                    format!("✓ packets arrive again, {ms:.0} ms after the kill"),
                );
            }
            if last_status.elapsed() >= Duration::from_secs(1) {
                last_status = Instant::now();
                let via = reroute
                    .as_ref()
                    .and_then(|(_, v)| index_of(&nodes, v))
                    .map_or(nodes[relay].name.clone(), |i| nodes[i].name.clone());
                say(t0, stream.status(&via));
            }
        }
        let (sent, delivered) = stream.stop();
        let path_after = reroute.as_ref().and_then(|(_, via)| {
            let first = index_of(&nodes, via)?;
            // Around the ring from the first hop to the destination.
            let step = if first == n - 1 { n - 1 } else { 1 };
            let mut path = vec!["n0".to_owned()];
            let mut at = first;
            while at != dst && path.len() <= n {
                path.push(nodes[at].name.clone());
                at = (at + step) % n;
            }
            path.push(nodes[dst].name.clone());
            Some(path.join(" → "))
        });
        Ok(DemoSummary {
            mode: "loopback",
            nodes: args.nodes,
            form_ms: Some(form_ms),
            source: "n0".into(),
            destination: nodes[dst].name.clone(),
            killed_relay: nodes[relay].name.clone(),
            detect_ms,
            reroute_ms: reroute.map(|(t, _)| t),
            recover_ms,
            sent,
            delivered,
            lost: sent.saturating_sub(delivered),
            path_after,
            dir: None,
        })
    }
}

/// `key=value` from a log line (`Some(x)` unwrapped).
fn field(line: &str, key: &str) -> Option<String> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key))
        .map(|v| {
            v.trim_start_matches("Some(")
                .trim_end_matches(')')
                .to_owned()
        })
}

fn short(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

fn index_of(nodes: &[Node], id: &str) -> Option<usize> {
    nodes.iter().position(|n| n.id == id)
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// Waits until the node's log has a line with every needle; fails if the daemon exits.
fn wait_line(node: &mut Node, needles: &[&str], within: Duration) -> Result<String, Exit> {
    let deadline = Instant::now() + within;
    loop {
        let text = std::fs::read_to_string(&node.log).unwrap_or_default();
        if let Some(l) = text.lines().find(|l| needles.iter().all(|n| l.contains(n))) {
            return Ok(l.to_owned());
        }
        if let Ok(Some(status)) = node.child.try_wait() {
            return Err(Exit::failure(format!(
                "daemon {} exited ({status}): {}",
                node.name,
                text.lines().last().unwrap_or("")
            )));
        }
        if Instant::now() > deadline {
            return Err(Exit::failure(format!(
                "daemon {} did not log {needles:?} within {} s",
                node.name,
                within.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits for n0's route to node `dst`; returns its next hop's node ID (the latest route line's).
fn wait_route(nodes: &mut [Node], dst: usize, within: Duration) -> Result<String, Exit> {
    let deadline = Instant::now() + within;
    let dst_field = format!("dst={}", nodes[dst].id);
    loop {
        let text = std::fs::read_to_string(&nodes[0].log).unwrap_or_default();
        let via = text
            .lines()
            .filter(|l| l.contains(" route ") && l.split_whitespace().any(|w| w == dst_field))
            .filter_map(|l| field(l, "via="))
            .next_back();
        if let Some(v) = via {
            return Ok(v);
        }
        for node in nodes.iter_mut() {
            if let Ok(Some(status)) = node.child.try_wait() {
                return Err(Exit::failure(format!(
                    "daemon {} exited ({status})",
                    node.name
                )));
            }
        }
        if Instant::now() > deadline {
            return Err(Exit::failure(format!(
                "n0 found no route to n{dst} within {} s",
                within.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A line of a daemon's log, with its time relative to the fault.
struct Event {
    t_ms: f64,
    line: String,
}

/// Lines appended to `log` after `offset`, timed from `since` by their time stamps.
fn events_since(log: &Path, offset: u64, since: SystemTime) -> Vec<Event> {
    let Ok(mut f) = File::open(log) else {
        return Vec::new();
    };
    if f.seek(std::io::SeekFrom::Start(offset)).is_err() {
        return Vec::new();
    }
    let mut text = String::new();
    let _ = f.read_to_string(&mut text);
    text.lines()
        .filter_map(|line| {
            let (stamp, rest) = line.split_once(char::is_whitespace)?;
            let t = humantime::parse_rfc3339(stamp).ok()?;
            let t_ms = match t.duration_since(since) {
                Ok(d) => d.as_secs_f64() * 1e3,
                Err(e) => -e.duration().as_secs_f64() * 1e3,
            };
            Some(Event {
                t_ms,
                line: rest.trim_start().to_owned(),
            })
        })
        .collect()
}

/// The generator and the sink, on the application sockets of two nodes.
struct Stream {
    /// Stops the generator.
    stop: Arc<AtomicBool>,
    /// Stops the sink.
    stop_rx: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    /// Packets before this sequence number were sent while the end-to-end session was being
    /// set up (most wait for it, the rest are dropped): not counted.
    base: u64,
    arrivals: Arc<Mutex<Arrivals>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

#[derive(Default)]
struct Arrivals {
    seen: std::collections::HashSet<u64>,
    /// Arrival times, in order.
    times: Vec<Instant>,
}

impl Stream {
    fn start(from: &Node, to: &Node) -> Result<Self, Exit> {
        let io = |e: std::io::Error| Exit::failure(format!("demo socket: {e}"));
        let tx = UdpSocket::bind("127.0.0.1:0").map_err(io)?;
        let rx = UdpSocket::bind("127.0.0.1:0").map_err(io)?;
        rx.set_read_timeout(Some(Duration::from_millis(100)))
            .map_err(io)?;
        // Register as the destination's application.
        rx.send_to(&[], to.app).map_err(io)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop_rx = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let arrivals = Arc::new(Mutex::new(Arrivals::default()));
        let (src, dst, app) = (from.overlay, to.overlay, from.app);
        let mut threads = Vec::new();
        {
            let (stop, sent) = (stop.clone(), sent.clone());
            threads.push(std::thread::spawn(move || {
                let begin = Instant::now();
                let mut seq = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let due = begin + Duration::from_micros(seq * 1_000_000 / RATE_PPS);
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    let _ = tx.send_to(&udp6(src, dst, seq), app);
                    seq += 1;
                    sent.store(seq, Ordering::Relaxed);
                }
            }));
        }
        {
            let (stop, arrivals) = (stop_rx.clone(), arrivals.clone());
            let to_app = to.app;
            threads.push(std::thread::spawn(move || {
                let mut buf = [0u8; 2048];
                let mut last_register = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    // Re-register now and then: harmless, and survives a slow first start.
                    if last_register.elapsed() > Duration::from_secs(1) {
                        let _ = rx.send_to(&[], to_app);
                        last_register = Instant::now();
                    }
                    let Ok(n) = rx.recv(&mut buf) else { continue };
                    if let Some(seq) = seq_of(&buf[..n]) {
                        let mut a = arrivals.lock().unwrap_or_else(|p| p.into_inner());
                        if a.seen.insert(seq) {
                            a.times.push(Instant::now());
                        }
                    }
                }
            }));
        }
        Ok(Self {
            stop,
            stop_rx,
            sent,
            base: 0,
            arrivals,
            threads,
        })
    }

    fn delivered(&self) -> u64 {
        let a = self.arrivals.lock().unwrap_or_else(|p| p.into_inner());
        a.seen.iter().filter(|s| **s >= self.base).count() as u64
    }

    /// Counts from the next packet on (the session is up).
    fn start_counting(&mut self) {
        self.base = self.sent.load(Ordering::Relaxed);
    }

    fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed).saturating_sub(self.base)
    }

    fn status(&self, via: &str) -> String {
        let sent = self.sent();
        let delivered = self.delivered();
        format!(
            "sent {sent:>6}  delivered {delivered:>6}  not (yet) delivered {:>5}  path via {via}",
            sent.saturating_sub(delivered)
        )
    }

    /// If packets arrived after a silence that spans `t` (or started after it), the end of
    /// the longest such silence, in ms after `t`.
    fn recovered_after(&self, t: Instant) -> Option<f64> {
        let a = self.arrivals.lock().unwrap_or_else(|p| p.into_inner());
        let mut longest: Option<(Duration, Instant)> = None;
        for w in a.times.windows(2) {
            if w[1] > t {
                let gap = w[1].duration_since(w[0]);
                if longest.is_none_or(|(g, _)| gap > g) {
                    longest = Some((gap, w[1]));
                }
            }
        }
        // Only once the stream has run on for a while after it (the longest silence may still
        // be going on).
        let (gap, end) = longest?;
        let newest = *a.times.last()?;
        (gap > Duration::from_millis(20) && newest.duration_since(end) > Duration::from_millis(300))
            .then(|| end.saturating_duration_since(t).as_secs_f64() * 1e3)
    }

    fn stop(mut self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        // Let packets in flight arrive.
        std::thread::sleep(Duration::from_millis(300));
        self.stop_rx.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        (self.sent(), self.delivered())
    }
}

/// An IPv6/UDP packet carrying `seq` (UDP checksum left zero: only the daemons and this demo
/// see it).
fn udp6(src: Ipv6Addr, dst: Ipv6Addr, seq: u64) -> Vec<u8> {
    let payload = seq.to_be_bytes();
    let len = (8 + payload.len()) as u16;
    let mut p = Vec::with_capacity(48 + payload.len());
    p.extend_from_slice(&[0x60, 0, 0, 0]);
    p.extend_from_slice(&len.to_be_bytes());
    p.extend_from_slice(&[17, 64]);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(&47_100u16.to_be_bytes());
    p.extend_from_slice(&47_100u16.to_be_bytes());
    p.extend_from_slice(&len.to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(&payload);
    p
}

/// The sequence number of a packet [`udp6`] built.
fn seq_of(packet: &[u8]) -> Option<u64> {
    let b: [u8; 8] = packet.get(48..56)?.try_into().ok()?;
    Some(u64::from_be_bytes(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_carry_their_sequence_number() {
        let a: Ipv6Addr = "fd00::1".parse().unwrap();
        let b: Ipv6Addr = "fd00::2".parse().unwrap();
        let p = udp6(a, b, 123_456);
        let h = x0_dataplane::packet::parse(&p).unwrap();
        assert_eq!((h.src, h.dst), (a.into(), b.into()));
        assert_eq!(seq_of(&p), Some(123_456));
        assert_eq!(seq_of(&p[..50]), None);
    }

    #[test]
    fn log_fields_are_read_with_options_unwrapped() {
        let l = "2026-11-22T23:03:15.785497Z  INFO data plane up app=Some(127.0.0.1:4000) mtu=1352";
        assert_eq!(field(l, "app=").as_deref(), Some("127.0.0.1:4000"));
        assert_eq!(field(l, "mtu=").as_deref(), Some("1352"));
        assert_eq!(field(l, "nope="), None);
    }
}
