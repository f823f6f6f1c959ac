//! Real daemons on loopback: joining, linking, revocation, renewal, bad configuration.

mod support;

use std::time::Duration;

use support::*;
use x0_wire::InvitationToken;

const T: Duration = Duration::from_secs(20);

#[test]
fn bad_configuration_is_refused_with_the_key_name_and_exit_64() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("state_dir = \"x\"\nlisten_port = 1\n", "listen_port"),
        (
            "state_dir = \"x\"\n[link]\ninitial_mtu = 10\n",
            "link.initial_mtu",
        ),
        ("state_dir = \"x\"\nlisten = \"not-an-address\"\n", "listen"),
        (
            "state_dir = \"x\"\n[[peers]]\naddr = \"nohostport\"\n",
            "peers[0].addr",
        ),
        ("listen = \"127.0.0.1:0\"\n", "state_dir"),
        ("state_dir = \"x\"\nlog_format = \"xml\"\n", "log_format"),
        ("state_dir = \"x\"\n[heal]\nmode = \"fix\"\n", "heal.mode"),
        (
            "state_dir = \"x\"\n[heal.plan]\naction_burst = 0\n",
            "heal.plan.action_burst",
        ),
        ("state_dir = \"x\"\n[heal]\ncolour = 1\n", "colour"),
    ];
    for (i, (text, key)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("bad{i}.toml"));
        std::fs::write(&path, text).unwrap();
        let o = run(&["up", "--config", s(&path)]);
        assert_eq!(o.status.code(), Some(64), "{text}: {}", stderr(&o));
        assert!(
            stderr(&o).contains(key),
            "{text}: expected {key} in {}",
            stderr(&o)
        );
    }
    let o = run(&["up", "--config", s(&dir.path().join("missing.toml"))]);
    assert_eq!(o.status.code(), Some(64));
    // A valid config for a node that never joined: a clear refusal, not a crash.
    let state = dir.path().join("lonely");
    run_json(&["init", "--state-dir", s(&state), "--json"]);
    let cfg = config(dir.path(), "lonely", &state, &[], "");
    let o = run(&["up", "--config", s(&cfg)]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("x0t join"), "{}", stderr(&o));
}

#[test]
fn two_daemons_join_and_open_a_post_quantum_link() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    ca_node(&a, &[]);
    let da = Daemon::start("a", &config(dir.path(), "a", &a, &[], ""));
    let a_addr = da.listen_addr();

    let inv = run_json(&["ca", "invite", "--state-dir", s(&a), "--json"]);
    assert_eq!(
        inv["bootstrap"],
        a_addr.as_str(),
        "the daemon recorded its address"
    );
    let token = inv["token"].as_str().unwrap();
    let joined = run_json(&["join", token, "--state-dir", s(&b), "--json"]);
    assert_eq!(joined["kx_group"], "X25519MLKEM768");
    let b_id = joined["node_id"].as_str().unwrap().to_owned();
    assert_eq!(
        joined["spiffe_id"],
        format!("spiffe://mesh.test/node/{b_id}")
    );

    // The token works once.
    let again = run(&["join", token, "--state-dir", s(&dir.path().join("c"))]);
    assert_eq!(again.status.code(), Some(1));
    assert!(
        stderr(&again).contains("already used"),
        "{}",
        stderr(&again)
    );

    let db = Daemon::start("b", &config(dir.path(), "b", &b, &[&a_addr], ""));
    let a_id = run_json(&["identity", "show", "--state-dir", s(&a), "--json"])["node_id"]
        .as_str()
        .unwrap()
        .to_owned();
    db.wait_for(
        &[
            "link up",
            &format!("peer={a_id}"),
            "kx_group=X25519MLKEM768",
        ],
        T,
    );
    da.wait_for(
        &[
            "link up",
            &format!("peer={b_id}"),
            "kx_group=X25519MLKEM768",
        ],
        T,
    );
}

#[test]
fn a_wrong_ca_fingerprint_is_refused_and_the_invitation_stays_usable() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    ca_node(&a, &[]);
    let da = Daemon::start("a", &config(dir.path(), "a", &a, &[], ""));
    da.listen_addr();
    let inv = run_json(&["ca", "invite", "--state-dir", s(&a), "--json"]);
    let mut token = InvitationToken::from_text(inv["token"].as_str().unwrap()).unwrap();
    token.ca_fingerprint[0] ^= 0xff;
    let o = run(&[
        "join",
        &token.to_text(),
        "--state-dir",
        s(&dir.path().join("b")),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("CA fingerprint"), "{}", stderr(&o));
    token.ca_fingerprint[0] ^= 0xff;
    run_json(&[
        "join",
        &token.to_text(),
        "--state-dir",
        s(&dir.path().join("b")),
        "--json",
    ]);
}

#[test]
fn revocation_cuts_the_node_off_at_the_ca_and_floods_to_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = (
        dir.path().join("a"),
        dir.path().join("b"),
        dir.path().join("c"),
    );
    ca_node(&a, &[]);
    let da = Daemon::start("a", &config(dir.path(), "a", &a, &[], ""));
    let a_addr = da.listen_addr();
    let b_id = join(&a, &b)["node_id"].as_str().unwrap().to_owned();
    let c_id = join(&a, &c)["node_id"].as_str().unwrap().to_owned();
    let db = Daemon::start("b", &config(dir.path(), "b", &b, &[&a_addr], ""));
    let b_addr = db.listen_addr();
    let dc = Daemon::start("c", &config(dir.path(), "c", &c, &[&a_addr, &b_addr], ""));
    dc.wait_for(&["link up", &format!("peer={b_id}")], T);
    da.wait_for(&["link up", &format!("peer={c_id}")], T);
    da.wait_for(&["link up", &format!("peer={b_id}")], T);

    let r = run_json(&["ca", "revoke", &b_id, "--state-dir", s(&a), "--json"]);
    assert_eq!(r["newly_revoked"], true);
    assert_eq!(r["revocation_serial"], 1);

    // The CA node applies it from its own store and closes the link to b.
    da.wait_for(
        &[
            "closing the link to a revoked node",
            &format!("peer={b_id}"),
        ],
        T,
    );
    // c learns the list over its link to a, and drops its own link to b.
    dc.wait_for(&["revocation list applied", "serial=1"], T);
    dc.wait_for(
        &[
            "closing the link to a revoked node",
            &format!("peer={b_id}"),
        ],
        T,
    );
    db.wait_for(&["link down"], T);
    // b's redials are refused from now on, and nobody links to it again.
    da.wait_for(&["link setup failed", "revoked"], T);
    let c_store = x0_identity::StateStore::open_existing(&c).unwrap();
    let (_, list) = c_store
        .revocation_list()
        .unwrap()
        .expect("c stored the list");
    assert_eq!(list.revoked.len(), 1);
    assert_eq!(list.revoked[0].to_string(), b_id);

    let again = run_json(&["ca", "revoke", &b_id, "--state-dir", s(&a), "--json"]);
    assert_eq!(again["newly_revoked"], false);
}

#[test]
fn a_running_daemon_renews_its_svid_at_half_life() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    ca_node(&a, &["--svid-ttl", "4s"]);
    let da = Daemon::start("a", &config(dir.path(), "a", &a, &[], ""));
    let a_addr = da.listen_addr();
    let joined = join(&a, &b);
    let first_expiry = joined["svid_not_after"].as_str().unwrap().to_owned();
    let db = Daemon::start("b", &config(dir.path(), "b", &b, &[&a_addr], ""));
    db.wait_for(&["link up"], T);
    da.wait_for(&["SVID renewed"], T);
    db.wait_for(&["SVID renewed"], T);
    // Renewed twice: the link outlives the first SVID's 4 s lifetime.
    let deadline = std::time::Instant::now() + T;
    while db.count("SVID renewed") < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "b did not keep renewing:\n{}",
            db.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(db.count("link down"), 0, "{}", db.log());
    let shown = run_json(&["identity", "show", "--state-dir", s(&b), "--json"]);
    assert_ne!(shown["svid_not_after"].as_str().unwrap(), first_expiry);
}

#[test]
fn three_daemons_in_a_line_route_through_the_middle_and_notice_it_die() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = (
        dir.path().join("a"),
        dir.path().join("b"),
        dir.path().join("c"),
    );
    ca_node(&a, &[]);
    let a_id = run_json(&["identity", "show", "--state-dir", s(&a), "--json"])["node_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let da = Daemon::start("a", &config(dir.path(), "a", &a, &[], ""));
    let a_addr = da.listen_addr();
    let b_id = join(&a, &b)["node_id"].as_str().unwrap().to_owned();
    let c_id = join(&a, &c)["node_id"].as_str().unwrap().to_owned();
    let mut db = Daemon::start("b", &config(dir.path(), "b", &b, &[&a_addr], ""));
    let b_addr = db.listen_addr();
    let dc = Daemon::start("c", &config(dir.path(), "c", &c, &[&b_addr], ""));

    // a and c are not neighbours: each reaches the other through b, from b's signed adverts.
    da.wait_for(
        &["route", &format!("dst={c_id}"), &format!("via={b_id}")],
        T,
    );
    dc.wait_for(
        &["route", &format!("dst={a_id}"), &format!("via={b_id}")],
        T,
    );
    db.wait_for(
        &["route", &format!("dst={a_id}"), &format!("via={a_id}")],
        T,
    );
    assert_eq!(da.count("rejected"), 0, "{}", da.log());

    // b dies without a word: a and c notice from the missing probes, not from QUIC's idle
    // timeout (30 s), and drop the route through it.
    let killed = std::time::Instant::now();
    db.stop();
    da.wait_for(
        &[
            "routing neighbour down",
            &format!("peer={b_id}"),
            "cause=\"silent\"",
        ],
        T,
    );
    let detected = killed.elapsed();
    da.wait_for(&["route lost", &format!("dst={c_id}")], T);
    dc.wait_for(&["route lost", &format!("dst={a_id}")], T);
    // cause="silent" above is the proof (QUIC's idle timeout, 30 s, is longer than the wait);
    // the time is for the reader, the figure comes from `x0t sim` and `x0t bench failover`.
    eprintln!("silent neighbour noticed after {detected:?}");

    // b comes back (same identity, same store): its sequence numbers continue, and the route
    // through it returns.
    let mark = da.lines();
    let db2 = Daemon::start("b2", &config(dir.path(), "b", &b, &[&a_addr], ""));
    let b2_addr = db2.listen_addr();
    drop(dc);
    let _dc2 = Daemon::start("c2", &config(dir.path(), "c2", &c, &[&b2_addr], ""));
    da.wait_for_since(
        mark,
        &["route", &format!("dst={c_id}"), &format!("via={b_id}")],
        T,
    );
}

#[test]
fn userspace_mode_carries_packets_through_a_relay_without_tun() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = (
        dir.path().join("a"),
        dir.path().join("b"),
        dir.path().join("c"),
    );
    ca_node(&a, &[]);
    // No end-to-end probes of the self-healing loop: a prober at a or c would open a session
    // of its own with the relay, and the test checks that relaying opens none.
    let no_probes = "\n[heal.probe]\nenabled = false\n";
    let app = &format!("{no_probes}\n[dataplane]\ntun = false\napp_socket = \"127.0.0.1:0\"\n");
    let da = Daemon::start("a", &config(dir.path(), "a", &a, &[], app));
    let a_addr = da.listen_addr();
    let c_id = join(&a, &c)["node_id"].as_str().unwrap().to_owned();
    join(&a, &b);
    let db = Daemon::start("b", &config(dir.path(), "b", &b, &[&a_addr], no_probes));
    let dc = Daemon::start("c", &config(dir.path(), "c", &c, &[&db.listen_addr()], app));
    da.wait_for(&["route", &format!("dst={c_id}")], T);

    let field = |line: &str, key: &str| -> String {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .unwrap()
            .trim_start_matches("Some(")
            .trim_end_matches(')')
            .to_owned()
    };
    let overlay = |d: &Daemon| -> std::net::Ipv6Addr {
        field(&d.wait_for(&["x0t up", "overlay="], T), "overlay=")
            .parse()
            .unwrap()
    };
    let app_addr = |d: &Daemon| field(&d.wait_for(&["data plane up", "app="], T), "app=");
    let (oa, oc) = (overlay(&da), overlay(&dc));
    let (app_a, app_c) = (app_addr(&da), app_addr(&dc));

    // The application at c registers with an empty datagram; the one at a sends until a packet
    // arrives (the first ones wait for the end-to-end handshake).
    let sock_c = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sock_c.send_to(&[], &app_c).unwrap();
    sock_c
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let sock_a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let packet = udp6_packet(oa, oc, b"through the relay, sealed end to end");
    let mut buf = [0u8; 2048];
    let deadline = std::time::Instant::now() + T;
    let got = loop {
        assert!(std::time::Instant::now() < deadline, "{}", da.log());
        sock_a.send_to(&packet, &app_a).unwrap();
        if let Ok(n) = sock_c.recv(&mut buf) {
            break buf[..n].to_vec();
        }
    };
    assert_eq!(got, packet, "delivered unchanged");
    assert_eq!(
        db.count("end-to-end keys installed"),
        0,
        "the relay holds no keys"
    );

    // A packet that claims another source is not sent into the mesh.
    let spoofed = udp6_packet(oc, oc, b"spoofed");
    sock_a.send_to(&spoofed, &app_a).unwrap();
    sock_a.send_to(&packet, &app_a).unwrap();
    let n = sock_c.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], &packet[..], "only the genuine packet arrives");
}
