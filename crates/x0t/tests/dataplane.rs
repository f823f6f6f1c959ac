//! The data plane with real kernels: three daemons in three network namespaces joined in a line
//! (a — b — c), each with its real TUN device. a and c are not neighbours; their traffic crosses
//! b, which relays it without the end-to-end keys.
//!
//! Needs root, `ip`, `nft` and `ping` (x0-lab's preflight); skipped with a message otherwise.

mod support;

use std::process::Command;
use std::time::Duration;

use support::*;
use x0_lab::{Lab, LabName, LabSpec, Shape, Topology};

const T: Duration = Duration::from_secs(30);

struct Mesh {
    lab: Lab,
    daemons: Vec<Daemon>,
    ids: Vec<String>,
    overlay: Vec<String>,
    configs: Vec<std::path::PathBuf>,
    _dir: tempfile::TempDir,
}

/// No end-to-end probes of the self-healing loop: with them every node holds end-to-end
/// sessions with every other (its own, for probing), and the tests that check that relaying
/// user traffic sets up no end-to-end session at a relay could not tell.
const NO_PROBES: &str = "\n[heal.probe]\nenabled = false\n";

/// A line of `n` namespaces, a daemon in each (node 0 is the CA), linked along the line.
fn line(test: &str, n: usize) -> Option<Mesh> {
    mesh(test, Shape::Line, n, NO_PROBES)
}

/// `n` namespaces in `shape`, a daemon in each (node 0 is the CA) with `extra` appended to its
/// configuration; each node dials its neighbours of lower index.
fn mesh(test: &str, shape: Shape, n: usize, extra: &str) -> Option<Mesh> {
    if let Err(e) = x0_lab::preflight() {
        eprintln!("SKIPPED {test}: {e}");
        return None;
    }
    let name = LabName::new(&format!("d{}{test}", std::process::id())).unwrap();
    let lab = Lab::up(&LabSpec::new(name, Topology::generate(shape, n).unwrap())).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let states: Vec<_> = (0..n).map(|i| dir.path().join(format!("n{i}"))).collect();
    ca_node(&states[0], &[]);
    let mut daemons = Vec::new();
    let mut ids = Vec::new();
    let mut overlay = Vec::new();
    let mut configs = Vec::new();
    for i in 0..n {
        let ns = lab.netns(i).unwrap().to_owned();
        let listen = lab.node_addr(i).unwrap();
        if i > 0 {
            // Invitations name the CA's address; the joining node reaches it if it is a
            // neighbour (node 1) or through the overlay-free underlay: join every node from
            // the CA's first neighbour's position by running `join` in node 0's namespace.
            let inv = run_json(&["ca", "invite", "--state-dir", s(&states[0]), "--json"]);
            let o = Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    lab.netns(0).unwrap(),
                    env!("CARGO_BIN_EXE_x0t"),
                ])
                .args(["join", inv["token"].as_str().unwrap()])
                .args(["--state-dir", s(&states[i]), "--json"])
                .output()
                .unwrap();
            assert!(o.status.success(), "join n{i}: {}", stderr(&o));
        }
        // Listen on every address; the CA's invitations name its node address, which `join`
        // reaches from inside node 0's namespace.
        let mut text = format!(
            "state_dir = {:?}\nlisten = \"0.0.0.0:7101\"\nadvertise = \"{listen}:7101\"\n",
            s(&states[i])
        );
        for nb in lab.neighbours(i).unwrap() {
            if nb.node < i {
                text.push_str(&format!(
                    "\n[[peers]]\naddr = \"{}:7101\"\n",
                    nb.remote_addr
                ));
            }
        }
        text.push_str(extra);
        let cfg = dir.path().join(format!("n{i}.toml"));
        std::fs::write(&cfg, text).unwrap();
        let d = Daemon::start_in(&ns, &format!("n{i}"), &cfg);
        configs.push(cfg.clone());
        let up = d.wait_for(&["x0t up", "overlay="], T);
        let field = |k: &str| {
            up.split_whitespace()
                .find_map(|w| w.strip_prefix(k))
                .unwrap()
                .to_owned()
        };
        ids.push(field("node="));
        overlay.push(field("overlay="));
        daemons.push(d);
    }
    Some(Mesh {
        lab,
        daemons,
        ids,
        overlay,
        configs,
        _dir: dir,
    })
}

#[test]
fn ping_and_tcp_cross_two_relays_end_to_end_encrypted() {
    // Four nodes in a line: three hops, two relays.
    let Some(m) = line("ping", 4) else { return };
    let (a, c) = (&m.daemons[0], &m.daemons[3]);
    a.wait_for(&["route", &format!("dst={}", m.ids[3])], T);
    c.wait_for(&["route", &format!("dst={}", m.ids[0])], T);
    m.daemons[0].wait_for(&["data plane up"], T);

    // Ping the far end's overlay address: the first packet waits for the end-to-end handshake.
    let ping = m
        .lab
        .exec(
            0,
            &[
                "ping",
                "-6",
                "-c",
                "5",
                "-i",
                "0.2",
                "-W",
                "5",
                &m.overlay[3],
            ],
        )
        .unwrap();
    let out = String::from_utf8_lossy(&ping.stdout);
    assert!(ping.status.success(), "ping failed: {out}\n{}", a.log());
    assert!(
        out.contains(" 0% packet loss") || out.contains(" 20% packet loss"),
        "{out}"
    );
    a.wait_for(
        &["end-to-end keys installed", &format!("peer={}", m.ids[3])],
        T,
    );
    c.wait_for(
        &["end-to-end keys installed", &format!("peer={}", m.ids[0])],
        T,
    );
    // The relays never take part in the end-to-end handshake.
    assert_eq!(m.daemons[1].count("end-to-end keys installed"), 0);
    assert_eq!(m.daemons[2].count("end-to-end keys installed"), 0);

    // TCP across both relays, with iperf3 when it is installed.
    if Command::new("iperf3").arg("--version").output().is_ok() {
        let server = m
            .lab
            .exec(3, &["iperf3", "-s", "-1", "-D", "-B", &m.overlay[3]])
            .unwrap();
        assert!(server.status.success());
        std::thread::sleep(Duration::from_millis(300));
        let client = m
            .lab
            .exec(0, &["iperf3", "-c", &m.overlay[3], "-t", "2", "-J"])
            .unwrap();
        let json: serde_json::Value =
            serde_json::from_slice(&client.stdout).unwrap_or(serde_json::Value::Null);
        let bps = json["end"]["sum_received"]["bits_per_second"]
            .as_f64()
            .unwrap_or(0.0);
        eprintln!(
            "TCP over three hops of the overlay: {:.0} Mbit/s",
            bps / 1e6
        );
        assert!(
            bps > 1e6,
            "TCP over the overlay: {}",
            String::from_utf8_lossy(&client.stdout)
        );
    }
}

#[test]
fn redundant_mode_sends_ef_packets_over_both_disjoint_paths() {
    let extra = format!("{NO_PROBES}\n[dataplane]\nredundant_dscp = [46]\n");
    let Some(m) = mesh("red", Shape::Ring, 4, &extra) else {
        return;
    };
    // n0 and n2 are opposite corners of the ring: two node-disjoint paths, via n1 and via n3.
    m.daemons[0].wait_for(&["route", &format!("dst={}", m.ids[2])], T);
    m.daemons[2].wait_for(&["route", &format!("dst={}", m.ids[0])], T);
    // EF-marked pings (traffic class 0xb8): after the first, which asks for the alternate
    // path, each echo request leaves n0 twice and n2 keeps one.
    let ping = m
        .lab
        .exec(
            0,
            &[
                "ping",
                "-6",
                "-Q",
                "0xb8",
                "-c",
                "10",
                "-i",
                "0.2",
                "-W",
                "5",
                &m.overlay[2],
            ],
        )
        .unwrap();
    let out = String::from_utf8_lossy(&ping.stdout);
    assert!(ping.status.success(), "ping failed: {out}");
    assert!(
        !out.contains("DUP!"),
        "duplicates reached the application: {out}"
    );
    m.daemons[2].wait_for(&["redundant delivery", &format!("peer={}", m.ids[0])], T);
    // Both relays carried traffic.
    for relay in [1, 3] {
        assert!(
            m.daemons[relay].count("end-to-end keys installed") == 0,
            "relays never hold end-to-end keys"
        );
    }
}

#[test]
fn redundant_mode_by_port_sends_a_flows_packets_over_both_paths() {
    let extra = "\n[dataplane]\nredundant_ports = [5060]\n";
    let Some(m) = mesh("redp", Shape::Ring, 4, extra) else {
        return;
    };
    m.daemons[0].wait_for(&["route", &format!("dst={}", m.ids[2])], T);
    m.daemons[2].wait_for(&["route", &format!("dst={}", m.ids[0])], T);
    // UDP to port 5060 (unmarked: DSCP 0), from bash's /dev/udp; nothing listens there, the
    // copies are counted by the receiving daemon before the kernel sees the packet.
    let script = format!(
        "for i in $(seq 30); do echo sip > /dev/udp/{}/5060; sleep 0.1; done",
        m.overlay[2]
    );
    let o = m.lab.exec(0, &["bash", "-c", &script]).unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    m.daemons[2].wait_for(&["redundant delivery", &format!("peer={}", m.ids[0])], T);
}

#[test]
fn balanced_mode_spreads_flows_over_both_disjoint_paths() {
    let extra = "\n[dataplane]\nmultipath = \"balanced\"\n";
    let Some(mut m) = mesh("bal", Shape::Ring, 4, extra) else {
        return;
    };
    if Command::new("iperf3").arg("--version").output().is_err() {
        eprintln!("SKIPPED balanced_mode_spreads_flows_over_both_disjoint_paths: no iperf3");
        return;
    }
    // n0 and n2 are opposite corners of the ring: two node-disjoint paths of equal cost, via
    // n1 and via n3.
    m.daemons[0].wait_for(&["route", &format!("dst={}", m.ids[2])], T);
    m.daemons[2].wait_for(&["route", &format!("dst={}", m.ids[0])], T);
    assert!(
        ping_until(&m, 0, &m.overlay[2], T),
        "{}",
        m.daemons[0].log()
    );
    // The first packets asked the routing task for the destination's paths (computed at
    // once; until then flows take the primary path).
    let server = m
        .lab
        .exec(2, &["iperf3", "-s", "-1", "-D", "-B", &m.overlay[2]])
        .unwrap();
    assert!(server.status.success());
    std::thread::sleep(Duration::from_millis(300));
    // 32 UDP flows at 1 Mbit/s each: light enough that the links' costs stay near their idle
    // values (a saturating load inflates the RTT a cost is made of), so the two paths weigh
    // about the same. The chance that every flow lands on one path is below 1e-5 even at 2:1.
    let client = m
        .lab
        .exec(
            0,
            &[
                "iperf3",
                "-c",
                &m.overlay[2],
                "-u",
                "-b",
                "1M",
                "-l",
                "1000",
                "-t",
                "1",
                "-P",
                "32",
            ],
        )
        .unwrap();
    assert!(
        client.status.success(),
        "iperf3: {}",
        String::from_utf8_lossy(&client.stdout)
    );
    for d in &mut m.daemons {
        d.terminate();
    }
    let counter = |log: &str, name: &str| -> u64 {
        let line = log
            .lines()
            .rev()
            .find(|l| l.contains("stopped"))
            .unwrap_or("");
        line.split(&format!("{name}: "))
            .nth(1)
            .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let (via1, via3) = (
        counter(&m.daemons[1].log(), "relayed"),
        counter(&m.daemons[3].log(), "relayed"),
    );
    let alternate = counter(&m.daemons[0].log(), "balanced_alternate");
    let sent = counter(&m.daemons[0].log(), "tun_packets_sent");
    eprintln!(
        "relayed via n1: {via1}, via n3: {via3}; n0 sent {sent}, {alternate} off the primary"
    );
    // Each of 32 flows carries about 3 % of the packets: both relays carried at least one.
    assert!(
        via1 * 50 > sent && via3 * 50 > sent,
        "both paths carry flows: {via1} / {via3} of {sent}"
    );
    assert!(alternate > 0);
}

#[test]
fn ipv4_overlay_ping_crosses_a_relay_and_unknown_hosts_get_icmp_unreachable() {
    let extra = format!("{NO_PROBES}\n[dataplane]\nipv4 = \"10.77.0.0/16\"\n");
    let Some(m) = mesh("v4", Shape::Line, 3, &extra) else {
        return;
    };
    m.daemons[0].wait_for(&["route", &format!("dst={}", m.ids[2])], T);
    let up = m.daemons[2].wait_for(&["data plane up", "ipv4=Some("], T);
    let far = up
        .split("ipv4=Some(")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .unwrap()
        .to_owned();
    let ping = m
        .lab
        .exec(0, &["ping", "-4", "-c", "5", "-i", "0.2", "-W", "5", &far])
        .unwrap();
    let out = String::from_utf8_lossy(&ping.stdout);
    assert!(ping.status.success(), "IPv4 ping over the overlay: {out}");
    // The relay holds no end-to-end keys for IPv4 either.
    assert_eq!(m.daemons[1].count("end-to-end keys installed"), 0);
    // An address of the range no node has: ICMP host unreachable from our own address.
    let none = m
        .lab
        .exec(0, &["ping", "-4", "-c", "1", "-W", "2", "10.77.255.254"])
        .unwrap();
    let out = String::from_utf8_lossy(&none.stdout);
    assert!(!none.status.success());
    assert!(out.contains("Unreachable"), "{out}");
    // The same for IPv6: an address of the mesh's /48 that no node has.
    let groups: Vec<&str> = m.overlay[0].split(':').take(3).collect();
    let nobody = format!("{}::1234", groups.join(":"));
    let none = m
        .lab
        .exec(0, &["ping", "-6", "-c", "1", "-W", "2", &nobody])
        .unwrap();
    let out = String::from_utf8_lossy(&none.stdout);
    assert!(!none.status.success());
    assert!(out.contains("unreachable"), "{nobody}: {out}");
}

/// Pings `to` from node `from` until one echo comes back, for up to `within`.
/// Five pings from node `from` to `to` (overlay IPv6), all answered.
fn ping5(m: &Mesh, from: usize, to: &str) {
    let ping = m
        .lab
        .exec(from, &["ping", "-6", "-c", "5", "-i", "0.2", "-W", "2", to])
        .unwrap();
    assert!(
        ping.status.success(),
        "{}",
        String::from_utf8_lossy(&ping.stdout)
    );
}

fn ping_until(m: &Mesh, from: usize, to: &str, within: Duration) -> bool {
    let deadline = std::time::Instant::now() + within;
    while std::time::Instant::now() < deadline {
        let o = m
            .lab
            .exec(from, &["ping", "-6", "-c", "1", "-W", "1", to])
            .unwrap();
        if o.status.success() {
            return true;
        }
    }
    false
}

#[test]
fn a_killed_relay_restarts_rejoins_and_carries_traffic_again() {
    let Some(mut m) = line("rejoin", 3) else {
        return;
    };
    let far = m.overlay[2].clone();
    assert!(ping_until(&m, 0, &far, T), "no path before the restart");

    // SIGKILL the relay: its neighbours notice by the missing probes; n0 has no route to n2.
    let mark = m.daemons[0].lines();
    m.daemons[1].stop();
    m.daemons[0].wait_for_since(
        mark,
        &["routing neighbour down", &format!("peer={}", m.ids[1])],
        T,
    );
    m.daemons[0].wait_for_since(mark, &["route lost", &format!("dst={}", m.ids[2])], T);
    let lost = m
        .lab
        .exec(0, &["ping", "-6", "-c", "1", "-W", "1", &far])
        .unwrap();
    assert!(
        !lost.status.success(),
        "n2 answered with its only relay dead"
    );

    // The relay restarts from its state directory (same identity, a new TUN device and data
    // port): it links again, the route through it returns, and traffic flows end to end.
    let mark = m.daemons[0].lines();
    let ns = m.lab.netns(1).unwrap().to_owned();
    m.daemons[1] = Daemon::start_in(&ns, "n1-restarted", &m.configs[1]);
    m.daemons[0].wait_for_since(
        mark,
        &["routing neighbour up", &format!("peer={}", m.ids[1])],
        T,
    );
    m.daemons[0].wait_for_since(
        mark,
        &[
            "route",
            &format!("dst={}", m.ids[2]),
            &format!("via={}", m.ids[1]),
        ],
        T,
    );
    assert!(
        ping_until(&m, 0, &far, T),
        "no path after the relay rejoined"
    );
}

/// `GET path` on node `i`'s API (its default address, inside its namespace), with curl.
fn api_get(m: &Mesh, i: usize, path: &str) -> String {
    let o = m
        .lab
        .exec(
            i,
            &[
                "curl",
                "-sf",
                "--max-time",
                "10",
                &format!("http://127.0.0.1:5471{path}"),
            ],
        )
        .unwrap();
    assert!(o.status.success(), "GET {path} on n{i}: {}", stderr(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn api_json(m: &Mesh, i: usize, path: &str) -> serde_json::Value {
    serde_json::from_str(&api_get(m, i, path)).unwrap()
}

/// The sum of a metric's samples whose line starts with `series` (name and labels so far).
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(series))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Polls node `i`'s `path` until `ok` holds.
fn api_wait(
    m: &Mesh,
    i: usize,
    path: &str,
    timeout: Duration,
    ok: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let v = api_json(m, i, path);
        if ok(&v) {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{path} on n{i} never got there: {v:#}\n{}",
            m.daemons[i].log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_neighbour_flooding_through_a_relay_is_shed_by_the_loop_and_restored() {
    for tool in ["iperf3", "curl"] {
        if Command::new(tool).arg("--version").output().is_err() {
            eprintln!("SKIPPED a_neighbour_flooding_through_a_relay_is_shed…: no {tool}");
            return;
        }
    }
    // Quick sampling and a short warm-up, so that the relay's loop learns the quiet baseline
    // of what n0 sends it in a few seconds; short holds so that the undo follows soon.
    let extra = "\n[heal.sampling]\ninterval_min_ms = 100\ninterval_max_ms = 100\n\
                 [heal.detect]\nwarmup_samples = 10\n\
                 [heal.incidents]\nresolve_after_ms = 2000\n\
                 [heal.plan]\nhold_base_ms = 1000\n";
    let Some(mut m) = mesh("shed", Shape::Line, 3, extra) else {
        return;
    };
    let (n0, n2) = (m.ids[0].clone(), m.overlay[2].clone());
    assert!(ping_until(&m, 0, &n2, T), "no path n0 → n2");
    // The relay's loop has its baseline (≥ 10 samples at 100 ms) and no shedding yet.
    std::thread::sleep(Duration::from_secs(3));
    let health = api_json(&m, 1, "/v1/health");
    assert_eq!(health["enabled"], true, "{health:#}");
    assert!(
        !health["restrictions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["kind"] == "load_shed"),
        "{health:#}"
    );

    // n0 floods n2 with UDP through n1 (far over the detector's 10 MB/s minimum change).
    let server = m
        .lab
        .spawn(
            2,
            "iperf3-server",
            &["iperf3", "-s", "-1", "-B", &n2],
            &x0_lab::SpawnOptions::default(),
        )
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let mark = m.daemons[1].lines();
    let client = m
        .lab
        .spawn(
            0,
            "iperf3-flood",
            &[
                "iperf3", "-u", "-c", &n2, "-b", "400M", "-l", "1200", "-t", "120",
            ],
            &x0_lab::SpawnOptions::default(),
        )
        .unwrap();

    // The relay's loop sees a noisy neighbour and sheds it.
    let actions = api_wait(&m, 1, "/v1/actions", T, |v| {
        v.as_array().unwrap().iter().any(|a| {
            a["kind"] == "shed_load" && a["target"] == n0.as_str() && a["result"] == "done"
        })
    });
    eprintln!("n1 shed n0: {actions:#}");
    let incidents = api_json(&m, 1, "/v1/incidents");
    assert!(
        incidents
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["problem"] == "noisy_neighbour" && i["cause_node"] == n0.as_str()),
        "{incidents:#}"
    );
    let health = api_json(&m, 1, "/v1/health");
    let limit = health["restrictions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["kind"] == "load_shed" && r["node"] == n0.as_str())
        .unwrap_or_else(|| panic!("no load_shed restriction: {health:#}"))["limit_bytes_per_s"]
        .as_f64()
        .unwrap();
    assert!(
        limit >= 125_000.0,
        "never below the 1 Mbit/s floor: {limit}"
    );
    m.daemons[1].wait_for_since(mark, &["self-healing action done", "shed_load"], T);

    // Under the limit: what n1 relays is about the limit, the rest is dropped as shed_load.
    let forwarded = "x0t_dataplane_forwarded_bytes_total";
    let shed = "x0t_dataplane_dropped_packets_total{reason=\"shed_load\"}";
    let by_peer = format!("x0t_dataplane_shed_dropped_packets_total{{peer=\"{n0}\"}}");
    let before = api_get(&m, 1, "/metrics");
    let started = std::time::Instant::now();
    std::thread::sleep(Duration::from_secs(3));
    let after = api_get(&m, 1, "/metrics");
    let secs = started.elapsed().as_secs_f64();
    let rate = (metric(&after, forwarded) - metric(&before, forwarded)) / secs;
    let shed_frames = metric(&after, shed) - metric(&before, shed);
    eprintln!(
        "n1 relays {:.1} Mbit/s under a limit of {:.1} Mbit/s; {shed_frames} frames shed in \
         {secs:.1} s",
        rate * 8e-6,
        limit * 8e-6
    );
    assert!(shed_frames > 0.0, "{after}");
    assert!(metric(&after, &by_peer) > 0.0, "{after}");
    // Frames re-sealed for the next hop carry a few bytes more than when they were metered,
    // and the bucket holds a burst: an upper bound with room, never a timing.
    assert!(
        rate <= limit * 1.25 + 200_000.0,
        "relayed {rate} B/s over a limit of {limit} B/s"
    );
    // The relay's own traffic is not shed, and its link to n0 stays up (probes are on the
    // link's QUIC connection, never shed).
    ping5(&m, 1, &n2);
    let log = m.daemons[1].log();
    assert!(
        !log.lines()
            .any(|l| l.contains("routing neighbour down") && l.contains(&n0)),
        "{log}"
    );

    // The flood stops: the incident clears and the loop lifts the limit.
    m.lab.stop(client.pid).unwrap();
    let actions = api_wait(&m, 1, "/v1/actions", Duration::from_secs(60), |v| {
        v.as_array().unwrap().iter().any(|a| {
            a["kind"] == "restore_load" && a["target"] == n0.as_str() && a["result"] == "done"
        })
    });
    eprintln!("n1 restored n0: {actions:#}");
    let health = api_json(&m, 1, "/v1/health");
    assert!(
        !health["restrictions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["kind"] == "load_shed"),
        "{health:#}"
    );
    let before = metric(&api_get(&m, 1, "/metrics"), shed);
    ping5(&m, 0, &n2);
    assert_eq!(metric(&api_get(&m, 1, "/metrics"), shed), before);
    let _ = m.lab.stop(server.pid);
}
