//! Real daemons in two network namespaces joined by a veth pair: a veth set down is a local
//! failure for its node, seen through rtnetlink at once, not after missed probes.
//!
//! Needs root (namespaces); skipped with a message otherwise.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use support::*;

const T: Duration = Duration::from_secs(20);

fn ip(args: &[&str]) {
    let o = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        o.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn can_make_namespaces() -> bool {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    root && Command::new("ip").arg("-V").output().is_ok()
}

/// Two namespaces with a veth pair between them; deleted on drop (also when the test fails).
struct Pair {
    a: String,
    b: String,
}

impl Pair {
    fn new(tag: &str) -> Self {
        let id = std::process::id();
        let p = Pair {
            a: format!("x0tt-{tag}-{id}-a"),
            b: format!("x0tt-{tag}-{id}-b"),
        };
        ip(&["netns", "add", &p.a]);
        ip(&["netns", "add", &p.b]);
        ip(&[
            "link", "add", "veth-x0a", "netns", &p.a, "type", "veth", "peer", "name", "veth-x0b",
            "netns", &p.b,
        ]);
        for (ns, dev, addr) in [
            (&p.a, "veth-x0a", "10.213.77.1/30"),
            (&p.b, "veth-x0b", "10.213.77.2/30"),
        ] {
            ip(&["-n", ns, "addr", "add", addr, "dev", dev]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        p
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

#[test]
fn a_veth_set_down_is_a_local_failure_not_a_probe_timeout() {
    if !can_make_namespaces() {
        eprintln!("skipped: needs root and iproute2 to create network namespaces");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let net = Pair::new("uld");
    ca_node(&a, &[]);
    std::fs::write(
        dir.path().join("a.toml"),
        format!("state_dir = {:?}\nlisten = \"10.213.77.1:7101\"\n", s(&a)),
    )
    .unwrap();
    let da = Daemon::start_in(&net.a, "a", &dir.path().join("a.toml"));
    let a_addr = da.listen_addr();
    assert_eq!(a_addr, "10.213.77.1:7101");
    let inv = run_json(&["ca", "invite", "--state-dir", s(&a), "--json"]);
    let joined = Command::new("ip")
        .args(["netns", "exec", &net.b, env!("CARGO_BIN_EXE_x0t")])
        .args(["join", inv["token"].as_str().unwrap()])
        .args(["--state-dir", s(&b), "--json"])
        .output()
        .unwrap();
    assert!(joined.status.success(), "{}", stderr(&joined));
    let b_id = serde_json::from_slice::<serde_json::Value>(&joined.stdout).unwrap()["node_id"]
        .as_str()
        .unwrap()
        .to_owned();
    std::fs::write(
        dir.path().join("b.toml"),
        format!(
            "state_dir = {:?}\nlisten = \"10.213.77.2:7101\"\n[[peers]]\naddr = \"{a_addr}\"\n",
            s(&b)
        ),
    )
    .unwrap();
    let db = Daemon::start_in(&net.b, "b", &dir.path().join("b.toml"));
    da.wait_for(&["routing neighbour up", &format!("peer={b_id}")], T);
    let a_id = da
        .wait_for(&["x0t up", "node="], T)
        .split_whitespace()
        .find_map(|w| w.strip_prefix("node="))
        .unwrap()
        .to_owned();
    da.wait_for(&["watching the underlay interfaces"], T);
    // Let a few probes pass so the link is measured, then cut the carrier.
    std::thread::sleep(Duration::from_millis(500));

    let cut = Instant::now();
    ip(&["-n", &net.b, "link", "set", "veth-x0b", "down"]);
    // b's own interface went down: rtnetlink tells b at once.
    let line = db.wait_for(&["routing neighbour down", &format!("peer={a_id}")], T);
    let noticed = cut.elapsed();
    assert!(
        line.contains("cause=\"local\""),
        "b saw its interface go down as {line}"
    );
    db.wait_for(&["underlay interface down; closing the link"], T);
    eprintln!("veth down noticed by its own node as a local failure after {noticed:?}");
    // The cause above proves the probes were not what noticed it; the time is for the reader
    // (the figure comes from `x0t bench failover`).
    // a only loses carrier, which the kernel reports late (linkwatch batches it): a notices by
    // the missing probes or by that report, whichever comes first.
    da.wait_for(&["routing neighbour down", &format!("peer={b_id}")], T);
    drop(db);
    drop(da);
}
