//! `x0t demo`: a ring of real daemons on loopback (no root), a relay killed, the mesh heals.

mod support;

use support::*;

#[test]
fn demo_forms_a_mesh_kills_a_relay_and_traffic_comes_back() {
    let o = x0t()
        .args(["demo", "--nodes", "4", "--seconds", "4", "--json"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let s: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    eprintln!("{s:#}");
    assert_eq!(s["mode"], "loopback");
    assert_eq!(s["nodes"], 4);
    assert_eq!(s["destination"], "n2");
    let relay = s["killed_relay"].as_str().unwrap();
    assert!(relay == "n1" || relay == "n3", "{relay}");
    // The failure was noticed, routed around, and traffic came back (the times are printed
    // above; their figures are the failover bench's business).
    for key in ["detect_ms", "reroute_ms", "recover_ms"] {
        assert!(s[key].as_f64().is_some_and(|v| v > 0.0), "{key}: {s}");
    }
    let (sent, delivered, lost) = (
        s["sent"].as_u64().unwrap(),
        s["delivered"].as_u64().unwrap(),
        s["lost"].as_u64().unwrap(),
    );
    assert_eq!(sent, delivered + lost);
    assert!(delivered > sent / 2, "{s}");
    let path = s["path_after"].as_str().unwrap();
    assert!(path.starts_with("n0 → ") && path.ends_with("n2") && !path.contains(relay));
    // The live view went to stderr.
    assert!(stderr(&o).contains("killed relay"), "{}", stderr(&o));
}

#[test]
fn demo_refuses_a_ring_too_small_for_a_relay() {
    let o = x0t().args(["demo", "--nodes", "3"]).output().unwrap();
    assert_eq!(o.status.code(), Some(64), "a usage error");
    assert!(stderr(&o).contains("--nodes"), "{}", stderr(&o));
}
