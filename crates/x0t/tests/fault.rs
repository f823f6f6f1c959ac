//! Fault injection (`[danger_fault_injection]`, `/v1/faults`, `x0t fault`) against real daemons
//! on loopback: refused unless enabled, bad faults stop the start, a delay raises the measured
//! RTT, a black-holing relay drops transit but keeps its links, total loss takes a link down and
//! flapping brings it down and up again.

mod support;

use std::net::{Ipv6Addr, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

const T: Duration = Duration::from_secs(30);

/// Fast link failure detection, no self-healing (its actions would race the test's), fault
/// injection on.
const LAB: &str = "\n[link]\nidle_timeout_ms = 1500\nkeep_alive_ms = 300\nredial_max_ms = 500\n\
                   \n[heal]\nenabled = false\n";
/// Userspace mode: packets in and out through a loopback application socket.
const APP: &str = "\n[dataplane]\ntun = false\napp_socket = \"127.0.0.1:0\"\n";
const DANGER: &str = "\n[danger_fault_injection]\nenabled = true\n";

/// Polls `path` until `ok` holds; panics with the last answer after `T`.
fn wait_json(addr: &str, path: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + T;
    loop {
        let v = get_json(addr, path);
        if ok(&v) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: never; last {path}: {v:#}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The routing RTT of the link to `peer` in `/v1/links`, once measured.
fn rtt_to(links: &Value, peer: &str) -> Option<f64> {
    links.as_array()?.iter().find(|l| l["peer"] == peer)?["routing"]["rtt_ms"].as_f64()
}

fn has_link(links: &Value, peer: &str) -> bool {
    links.as_array().unwrap().iter().any(|l| l["peer"] == peer)
}

/// A CA node `a` and a node `b` dialling it; `b` gets `b_extra`. Returns both and a's ID.
fn pair(dir: &Path, b_extra: &str) -> (Daemon, Daemon, String) {
    let (a, b) = (dir.join("a"), dir.join("b"));
    ca_node(&a, &[]);
    let da = Daemon::start("a", &config(dir, "a", &a, &[], &format!("{LAB}{APP}")));
    da.listen_addr();
    join(&a, &b);
    let extra = format!("{LAB}{APP}{b_extra}");
    let db = Daemon::start("b", &config(dir, "b", &b, &[&da.listen_addr()], &extra));
    (da, db, node_id(&a))
}

#[test]
fn bad_fault_configurations_are_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    for (extra, key) in [
        (
            "[danger_fault_injection]\nenabled = true\nfaults = [{ kind = \"loss\", ratio = 2.0 }]\n",
            "danger_fault_injection.faults[0].ratio",
        ),
        (
            "[danger_fault_injection]\nenabled = true\nfaults = [{ kind = \"delay\", delay_ms = 5, \
             colour = 1 }]\n",
            "colour",
        ),
        (
            "[danger_fault_injection]\nfaults = [{ kind = \"blackhole\" }]\n",
            "danger_fault_injection.faults",
        ),
        ("[danger_fault_injection]\nenable = true\n", "enable"),
    ] {
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, format!("state_dir = \"/nonexistent\"\n{extra}")).unwrap();
        let o = run(&["up", "--config", s(&path)]);
        assert_eq!(o.status.code(), Some(64), "{extra}: {}", stderr(&o));
        assert!(stderr(&o).contains(key), "{extra}: {}", stderr(&o));
    }
}

#[test]
fn faults_are_refused_unless_enabled_and_the_cli_needs_a_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    ca_node(&a, &[]);
    let da = Daemon::start("a", &config(dir.path(), "a", &a, &[], ""));
    let api = da.api_addr();
    let (status, body) = http(&api, "POST", "/v1/faults", r#"{"kind":"blackhole"}"#);
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("danger_fault_injection.enabled"), "{body}");
    let list = get_json(&api, "/v1/faults");
    assert_eq!(list["enabled"], false);
    assert_eq!(list["faults"], serde_json::json!([]));
    assert_eq!(metric(&api, "x0t_fault_injection_enabled "), 0.0);
    let o = run(&["fault", "add", "blackhole", "--api", &api]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("403"), "{}", stderr(&o));
    assert!(
        !da.log().contains("fault injection is ENABLED"),
        "{}",
        da.log()
    );

    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let nobody = listener.local_addr().unwrap().to_string();
    drop(listener);
    let o = run(&["fault", "list", "--api", &nobody]);
    assert_eq!(o.status.code(), Some(69), "{}", stderr(&o));
}

#[test]
fn a_delay_raises_the_neighbours_rtt_and_clearing_it_brings_it_back() {
    let dir = tempfile::tempdir().unwrap();
    // A fault from the configuration (harmless here: b relays nothing).
    let (da, db, a_id) = pair(
        dir.path(),
        &format!("{DANGER}faults = [{{ kind = \"blackhole\" }}]\n"),
    );
    db.wait_for(&["fault injection is ENABLED", "never in production"], T);
    let data = AppPath::open(&db, &da);
    let api = db.api_addr();
    let base = wait_json(&api, "/v1/links", "RTT measured", |v| {
        rtt_to(v, &a_id).is_some()
    });
    eprintln!("RTT before: {:?} ms", rtt_to(&base, &a_id));
    assert_eq!(metric(&api, "x0t_fault_injection_enabled "), 1.0);

    // Bad bodies name the field; an unknown ID is 404.
    let (status, body) = http(
        &api,
        "POST",
        "/v1/faults",
        r#"{"kind":"delay","delay_ms":20000}"#,
    );
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("delay_ms"), "{body}");
    let (status, body) = http(&api, "POST", "/v1/faults", r#"{"kind":"delay","ms":5}"#);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("ms"), "{body}");
    assert_eq!(http(&api, "DELETE", "/v1/faults/999", "").0, 404);

    let added = run_json(&[
        "fault", "add", "delay", "--peer", &a_id, "--ms", "150", "--api", &api, "--json",
    ]);
    let id = added["id"].as_u64().unwrap();
    let list = run_json(&["fault", "list", "--api", &api, "--json"]);
    assert_eq!(list["enabled"], true);
    assert_eq!(list["faults"][0]["kind"], "blackhole");
    assert_eq!(list["faults"][1]["id"], id);
    assert_eq!(list["faults"][1]["kind"], "delay");
    assert_eq!(list["faults"][1]["delay_ms"], 150);
    assert!(list["faults"][1]["since_unix_ms"].as_u64().unwrap() > 0);
    let text = stdout(&run(&["fault", "list", "--api", &api]));
    eprintln!("{text}");
    assert!(
        text.contains("ENABLED") && text.contains("blackhole") && text.contains("150 ms"),
        "{text}"
    );
    let slow = wait_json(&api, "/v1/links", "RTT over 100 ms", |v| {
        rtt_to(v, &a_id).is_some_and(|r| r > 100.0)
    });
    eprintln!("RTT with 150 ms delay: {:?} ms", rtt_to(&slow, &a_id));
    // Data frames from b to a are held too (a packet cannot arrive before its delay).
    let mut buf = [0u8; 2048];
    while data.rx.recv(&mut buf).is_ok() {}
    data.rx.set_read_timeout(Some(T)).unwrap();
    let sent = Instant::now();
    data.tx.send_to(&data.packet, &data.to).unwrap();
    let n = data.rx.recv(&mut buf).unwrap();
    assert_eq!(buf[..n], data.packet[..]);
    let took = sent.elapsed();
    eprintln!("a data packet b → a with 150 ms delay took {took:?}");
    assert!(took >= Duration::from_millis(150), "{took:?}");
    assert_eq!(metric(&api, "x0t_fault_injection_active "), 2.0);
    assert!(metric(&api, "x0t_fault_injection_delayed_total ") > 0.0);

    let o = run(&["fault", "clear", &id.to_string(), "--api", &api]);
    assert!(o.status.success(), "{}", stderr(&o));
    let fast = wait_json(&api, "/v1/links", "RTT back under 50 ms", |v| {
        rtt_to(v, &a_id).is_some_and(|r| r < 50.0)
    });
    eprintln!("RTT after clearing: {:?} ms", rtt_to(&fast, &a_id));
    assert_eq!(metric(&api, "x0t_fault_injection_active "), 1.0);
}

#[test]
fn total_loss_takes_a_link_down_and_flapping_takes_it_down_and_up() {
    let dir = tempfile::tempdir().unwrap();
    let (da, db, a_id) = pair(dir.path(), DANGER);
    let (a_api, b_api) = (da.api_addr(), db.api_addr());
    let b_id = node_id(&dir.path().join("b"));
    let linked = |v: &Value| has_link(v, &b_id);
    wait_json(&a_api, "/v1/links", "link up", linked);

    let o = run(&[
        "fault", "add", "loss", "--peer", &a_id, "--ratio", "1.0", "--api", &b_api,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    wait_json(&a_api, "/v1/links", "link down under total loss", |v| {
        !linked(v)
    });
    assert!(metric(&b_api, "x0t_fault_injection_dropped_total{kind=\"loss\"} ") > 0.0);
    let o = run(&["fault", "clear", "--api", &b_api]);
    assert!(o.status.success(), "{}", stderr(&o));
    wait_json(&a_api, "/v1/links", "link back after clearing", linked);

    // Sends blocked for 4 s (longer than the 1.5 s idle timeout), allowed for 4 s, …
    let o = run(&[
        "fault",
        "add",
        "flap",
        "--peer",
        &a_id,
        "--period-ms",
        "4000",
        "--api",
        &b_api,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    wait_json(&a_api, "/v1/links", "link down while flapping", |v| {
        !linked(v)
    });
    wait_json(&a_api, "/v1/links", "link up again while flapping", linked);
    assert_eq!(get_json(&b_api, "/v1/faults")["faults"][0]["kind"], "flap");
    assert!(metric(&b_api, "x0t_fault_injection_dropped_total{kind=\"flap\"} ") > 0.0);
}

fn log_field(d: &Daemon, needles: &[&str], key: &str) -> String {
    d.wait_for(needles, T)
        .split_whitespace()
        .find_map(|w| w.strip_prefix(key))
        .unwrap()
        .trim_start_matches("Some(")
        .trim_end_matches(')')
        .to_owned()
}

/// Userspace-mode applications at two daemons, and a packet from one to the other.
struct AppPath {
    /// The sender's socket.
    tx: UdpSocket,
    /// The source daemon's application port.
    to: String,
    /// The receiver's socket, registered with the destination daemon.
    rx: UdpSocket,
    packet: Vec<u8>,
}

impl AppPath {
    /// Opens the path and waits until a packet gets through (the end-to-end session is up).
    fn open(src: &Daemon, dst: &Daemon) -> Self {
        let overlay = |d: &Daemon| -> Ipv6Addr {
            log_field(d, &["x0t up", "overlay="], "overlay=")
                .parse()
                .unwrap()
        };
        let app_addr = |d: &Daemon| log_field(d, &["data plane up", "app="], "app=");
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.send_to(&[], app_addr(dst)).unwrap();
        rx.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let path = Self {
            tx: UdpSocket::bind("127.0.0.1:0").unwrap(),
            to: app_addr(src),
            rx,
            packet: udp6_packet(overlay(src), overlay(dst), b"through the overlay"),
        };
        let deadline = Instant::now() + T;
        while delivered(&path.tx, &path.to, &path.rx, &path.packet, 1) == 0 {
            assert!(Instant::now() < deadline, "never delivered: {}", src.log());
        }
        path
    }
}

/// Sends `packet` to the application port `to` `tries` times, waiting up to 100 ms for it on
/// `rx` after each; returns how many arrived.
fn delivered(tx: &UdpSocket, to: &str, rx: &UdpSocket, packet: &[u8], tries: usize) -> usize {
    let mut buf = [0u8; 2048];
    let mut got = 0;
    for _ in 0..tries {
        tx.send_to(packet, to).unwrap();
        if let Ok(n) = rx.recv(&mut buf)
            && buf[..n] == *packet
        {
            got += 1;
        }
    }
    got
}

#[test]
fn a_blackholing_relay_drops_transit_but_keeps_its_links() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let (a, b, c) = (p.join("a"), p.join("b"), p.join("c"));
    ca_node(&a, &[]);
    let app = format!("{LAB}{APP}");
    let da = Daemon::start("a", &config(p, "a", &a, &[], &app));
    da.listen_addr();
    let c_id = join(&a, &c)["node_id"].as_str().unwrap().to_owned();
    join(&a, &b);
    let a_id = node_id(&a);
    let db = Daemon::start(
        "b",
        &config(p, "b", &b, &[&da.listen_addr()], &format!("{LAB}{DANGER}")),
    );
    let dc = Daemon::start("c", &config(p, "c", &c, &[&db.listen_addr()], &app));
    da.wait_for(&["route", &format!("dst={c_id}")], T);
    let b_api = db.api_addr();

    let AppPath {
        tx: sock_a,
        to: app_a,
        rx: sock_c,
        packet,
    } = AppPath::open(&da, &dc);

    let (status, body) = http(&b_api, "POST", "/v1/faults", r#"{"kind":"blackhole"}"#);
    assert_eq!(status, 201, "{body}");
    std::thread::sleep(Duration::from_millis(300));
    let mut buf = [0u8; 2048];
    while sock_c.recv(&mut buf).is_ok() {} // what was in flight before
    let got = delivered(&sock_a, &app_a, &sock_c, &packet, 20);
    assert_eq!(got, 0, "delivered through a black-holing relay");
    let drops = metric(
        &b_api,
        "x0t_dataplane_dropped_packets_total{reason=\"fault_blackhole\"} ",
    );
    assert!(drops >= 20.0, "fault_blackhole drops: {drops}");
    assert!(
        metric(
            &b_api,
            "x0t_fault_injection_dropped_total{kind=\"blackhole\"} "
        ) >= 20.0
    );
    let links = get_json(&b_api, "/v1/links");
    assert!(
        has_link(&links, &a_id) && has_link(&links, &c_id),
        "the relay keeps both links: {links:#}"
    );

    let o = run(&["fault", "clear", "--api", &b_api]);
    assert!(o.status.success(), "{}", stderr(&o));
    let deadline = Instant::now() + T;
    while delivered(&sock_a, &app_a, &sock_c, &packet, 1) == 0 {
        assert!(Instant::now() < deadline, "not delivered after clearing");
    }
    assert!(
        get_json(&b_api, "/v1/faults")["faults"]
            .as_array()
            .unwrap()
            .is_empty()
    );
}
