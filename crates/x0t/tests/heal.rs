//! The self-healing loop in real daemons on loopback: a relay killed in a line of three is an
//! incident at its neighbours, visible in the API and the CLI, acted on (act mode) or only
//! recorded (observe mode), and every record is in a signed audit log that `x0t audit verify`
//! checks; an entry altered in the SQLite file is named.
//!
//! No timed assertions: times are printed, behaviour is asserted.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

const T: Duration = Duration::from_secs(30);

/// Polls `path` until `ok` holds; returns the answer and how long it took.
fn wait_json(addr: &str, path: &str, ok: impl Fn(&Value) -> bool) -> (Value, Duration) {
    let started = Instant::now();
    loop {
        let v = get_json(addr, path);
        if ok(&v) {
            return (v, started.elapsed());
        }
        assert!(started.elapsed() < T, "{path} never got there: {v:#}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A line a – b – c of daemons (b dials a, c dials b), converged; `a_extra` goes into a's
/// configuration. Returns the daemons and b's node ID.
fn line(dir: &Path, a_extra: &str) -> (Daemon, Daemon, Daemon, String) {
    let (a, b, c) = (dir.join("a"), dir.join("b"), dir.join("c"));
    ca_node(&a, &[]);
    let da = Daemon::start("a", &config(dir, "a", &a, &[], a_extra));
    da.listen_addr();
    join(&a, &b);
    join(&a, &c);
    let db = Daemon::start("b", &config(dir, "b", &b, &[&da.listen_addr()], ""));
    let dc = Daemon::start("c", &config(dir, "c", &c, &[&db.listen_addr()], ""));
    let c_id = node_id(&c);
    let (_, took) = wait_json(&da.api_addr(), "/v1/routes", |v| {
        v.as_array()
            .unwrap()
            .iter()
            .any(|r| r["dst"] == c_id.as_str())
    });
    eprintln!("line a – b – c converged ({took:?} after the last daemon started)");
    let b_id = node_id(&b);
    (da, db, dc, b_id)
}

/// Kills b and waits for an incident about it at a. Returns the incident.
fn kill_relay_and_wait(da: &Daemon, db: &mut Daemon, b_id: &str) -> Value {
    let api = da.api_addr();
    let before = get_json(&api, "/v1/incidents");
    assert!(
        !before
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["cause_node"] == b_id),
        "no incident about b while it runs: {before:#}"
    );
    db.stop(); // SIGKILL: silent to its neighbours
    let (incidents, took) = wait_json(&api, "/v1/incidents", |v| {
        v.as_array()
            .unwrap()
            .iter()
            .any(|i| i["cause_node"] == b_id)
    });
    eprintln!("incident about the killed relay at a {took:?} after SIGKILL");
    let incident = incidents
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["cause_node"] == b_id)
        .unwrap()
        .clone();
    eprintln!("incident: {incident:#}");
    assert!(
        ["link_down", "node_down"].contains(&incident["problem"].as_str().unwrap()),
        "{incident:#}"
    );
    assert!(incident["confidence"].as_f64().unwrap() > 0.5);
    assert!(incident["opened_at_unix_ms"].as_u64().unwrap() > 1_600_000_000_000);
    incident
}

#[test]
fn a_killed_relay_is_an_incident_acted_on_and_in_a_verified_audit_log() {
    let dir = tempfile::tempdir().unwrap();
    let (mut da, mut db, _dc, b_id) = line(dir.path(), "");
    let api = da.api_addr();
    let health = get_json(&api, "/v1/health");
    assert_eq!(health["enabled"], true, "{health:#}");
    assert_eq!(health["mode"], "act");
    let incident = kill_relay_and_wait(&da, &mut db, &b_id);

    // The loop acts on it: the first candidate for a link down is restarting the link (b is
    // gone, so it fails or redials; either way it is recorded with its result).
    let (actions, took) = wait_json(&api, "/v1/actions", |v| {
        v.as_array()
            .unwrap()
            .iter()
            .any(|a| a["incident"] == incident["id"] && a["result"].is_string())
    });
    eprintln!("first action with a result {took:?} after the incident was seen: {actions:#}");
    let acted: Vec<&Value> = actions
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["incident"] == incident["id"])
        .collect();
    assert!(acted.iter().all(|a| a["mode"] == "act"), "{actions:#}");
    assert!(
        acted
            .iter()
            .any(|a| a["kind"] == "restart_link" && a["target"] == b_id.as_str()),
        "{actions:#}"
    );
    da.wait_for(&["self-healing action"], T);

    // Health, metrics and the CLI say so.
    let (health, _) = wait_json(&api, "/v1/health", |v| {
        ["DEGRADED", "CRITICAL", "RECOVERING"].contains(&v["state"].as_str().unwrap_or(""))
    });
    eprintln!("health at a: {health:#}");
    assert!(health["audit"]["entries"].as_u64().unwrap() >= 2);
    let (status, metrics) = http(&api, "GET", "/metrics", "");
    assert_eq!(status, 200);
    for series in [
        "x0t_heal_enabled 1",
        "x0t_heal_health_state ",
        "x0t_heal_incidents_total{problem=",
        "x0t_heal_actions_total{kind=\"restart_link\",mode=\"act\"} ",
        "x0t_heal_action_results_total{kind=\"restart_link\",result=",
        "x0t_heal_observe_mode 0",
    ] {
        assert!(metrics.contains(series), "no {series} in:\n{metrics}");
    }
    let cli = run_json(&["incidents", "--api", &api, "--json"]);
    assert!(
        cli.as_array()
            .unwrap()
            .iter()
            .any(|i| i["cause_node"] == b_id.as_str()),
        "{cli:#}"
    );
    let o = run(&["incidents", "--api", &api]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("INCIDENT"), "{}", stdout(&o));

    // The audit log verifies, also while the daemon runs, and again once it stopped.
    let a_state = dir.path().join("a");
    let v = run_json(&["audit", "verify", "--state-dir", s(&a_state), "--json"]);
    assert_eq!(v["ok"], true, "{v:#}");
    da.terminate();
    let v = run_json(&["audit", "verify", "--state-dir", s(&a_state), "--json"]);
    assert_eq!(v["ok"], true, "{v:#}");
    let entries = v["entries"].as_u64().unwrap();
    assert!(entries >= 3, "mode, incident, action: {v:#}");
    let o = run(&["audit", "export", "--state-dir", s(&a_state)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let lines: Vec<Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len() as u64, entries);
    assert_eq!(lines.last().unwrap()["hash"], v["head_hash"]);
    let kinds: Vec<&str> = lines.iter().map(|l| l["kind"].as_str().unwrap()).collect();
    assert!(kinds.contains(&"incident_opened"), "{kinds:?}");
    assert!(kinds.contains(&"action_planned"), "{kinds:?}");
    let o = run(&["audit", "verify", "--state-dir", s(&a_state)]);
    assert!(stdout(&o).contains("audit log OK"), "{}", stdout(&o));
}

#[test]
fn observe_mode_records_what_it_would_do_and_does_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (mut da, mut db, _dc, b_id) = line(dir.path(), "\n[heal]\nmode = \"observe\"\n");
    let api = da.api_addr();
    assert_eq!(get_json(&api, "/v1/health")["mode"], "observe");
    let incident = kill_relay_and_wait(&da, &mut db, &b_id);
    let (actions, took) = wait_json(&api, "/v1/actions", |v| {
        v.as_array()
            .unwrap()
            .iter()
            .any(|a| a["incident"] == incident["id"])
    });
    eprintln!("planned (observe) {took:?} after the incident was seen: {actions:#}");
    // Let the loop run on for a while: still nothing is carried out.
    std::thread::sleep(Duration::from_secs(2));
    let actions = get_json(&api, "/v1/actions");
    for a in actions.as_array().unwrap() {
        assert_eq!(a["mode"], "observe", "{a:#}");
        assert!(a["result"].is_null(), "nothing executed: {a:#}");
    }
    assert_eq!(da.count("self-healing action done"), 0, "{}", da.log());
    assert_eq!(da.count("self-healing action failed"), 0, "{}", da.log());
    da.wait_for(&["observe mode: would act"], T);
    let (_, metrics) = http(&api, "GET", "/metrics", "");
    assert!(metrics.contains("x0t_heal_observe_mode 1"), "{metrics}");
    assert!(
        metrics.contains("mode=\"observe\"} ") && !metrics.contains("mode=\"act\"} "),
        "{metrics}"
    );
    assert!(
        !metrics.contains("x0t_heal_action_results_total{"),
        "{metrics}"
    );
    assert!(
        get_json(&api, "/v1/health")["restrictions"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    da.terminate();
    let a_state = dir.path().join("a");
    let v = run_json(&["audit", "verify", "--state-dir", s(&a_state), "--json"]);
    assert_eq!(v["ok"], true, "{v:#}");
    let o = run(&["audit", "export", "--state-dir", s(&a_state)]);
    let planned: Vec<Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|l| l["kind"] == "action_planned")
        .collect();
    assert!(!planned.is_empty());
    for p in &planned {
        let body: Value = serde_json::from_str(p["body"].as_str().unwrap()).unwrap();
        assert_eq!(body["mode"], "observe", "{body:#}");
    }
}

#[test]
fn an_altered_audit_entry_is_named_and_never_rewritten() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    ca_node(&a, &[]);
    // Two starts in two modes: two audited mode changes.
    let mut da = Daemon::start("a", &config(dir.path(), "a", &a, &[], ""));
    wait_json(&da.api_addr(), "/v1/health", |v| {
        v["audit"]["entries"].as_u64() >= Some(1)
    });
    da.terminate();
    let mut da = Daemon::start(
        "a",
        &config(dir.path(), "a", &a, &[], "\n[heal]\nmode = \"observe\"\n"),
    );
    wait_json(&da.api_addr(), "/v1/health", |v| v["mode"] == "observe");
    da.terminate();
    let v = run_json(&["audit", "verify", "--state-dir", s(&a), "--json"]);
    assert_eq!(v["ok"], true, "{v:#}");
    let o = run(&["audit", "export", "--state-dir", s(&a)]);
    let seq = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|l| l["kind"] == "mode_changed" && l["body"].as_str().unwrap().contains("observe"))
        .expect("the switch to observe mode is audited")["seq"]
        .as_u64()
        .unwrap();
    assert!(seq >= 2, "after the first start's mode");

    // Someone with write access edits that entry (the append-only triggers are in their way
    // only until they drop them).
    {
        let row = seq as i64;
        let db = rusqlite::Connection::open(a.join("state.db")).unwrap();
        let body: Vec<u8> = db
            .query_row("SELECT body FROM heal_audit WHERE seq = ?1", [row], |r| {
                r.get(0)
            })
            .unwrap();
        let forged = String::from_utf8(body).unwrap().replace("observe", "act");
        let refused = db.execute(
            "UPDATE heal_audit SET body = ?1 WHERE seq = ?2",
            rusqlite::params![forged.as_bytes(), row],
        );
        assert!(refused.is_err(), "the trigger refuses updates");
        db.execute_batch("DROP TRIGGER heal_audit_no_update")
            .unwrap();
        db.execute(
            "UPDATE heal_audit SET body = ?1 WHERE seq = ?2",
            rusqlite::params![forged.as_bytes(), row],
        )
        .unwrap();
    }
    let o = run(&["audit", "verify", "--state-dir", s(&a), "--json"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(v["first_bad_entry"], seq, "{v:#}");
    assert!(v["flaw"].as_str().unwrap().contains("signature"), "{v:#}");
    let o = run(&["audit", "verify", "--state-dir", s(&a)]);
    assert_eq!(o.status.code(), Some(1));
    let named = format!("entry {seq}");
    assert!(stdout(&o).contains(&named), "{}", stdout(&o));
    assert!(stderr(&o).contains(&named), "{}", stderr(&o));

    // A daemon started on it reports the broken log and runs on; nothing is rewritten.
    let mut da = Daemon::start("a", &config(dir.path(), "a", &a, &[], ""));
    let (h, _) = wait_json(&da.api_addr(), "/v1/health", |v| {
        v["audit"]["check_at_start"] != "running"
    });
    assert!(
        h["audit"]["check_at_start"]
            .as_str()
            .unwrap()
            .contains(&named),
        "{h:#}"
    );
    da.wait_for(&["audit log does not verify"], T);
    da.terminate();
    let o = run(&["audit", "verify", "--state-dir", s(&a), "--json"]);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["first_bad_entry"], seq, "{v:#}");
    assert!(
        v["entries"].as_u64().unwrap() > seq,
        "the restart appended its mode change after it: {v:#}"
    );

    // Without a knowledge base: a clear refusal.
    let fresh = dir.path().join("fresh");
    run_json(&["init", "--state-dir", s(&fresh), "--json"]);
    let o = run(&["audit", "verify", "--state-dir", s(&fresh)]);
    assert_eq!(o.status.code(), Some(66), "{}", stderr(&o));
    let o = run(&["audit", "verify"]);
    assert_eq!(o.status.code(), Some(64), "{}", stderr(&o));
}

#[test]
fn end_to_end_probes_cross_the_relay_and_come_back() {
    let dir = tempfile::tempdir().unwrap();
    let (da, db, dc, _) = line(dir.path(), "");
    let (a, b, c) = (da.api_addr(), db.api_addr(), dc.api_addr());
    let replies = r#"x0t_dataplane_probes_total{event="reply_received"}"#;
    let answered = r#"x0t_dataplane_probes_total{event="answered"}"#;
    let started = Instant::now();
    // a probes c through b (and b directly); c answers along the reverse path.
    while metric(&a, replies) < 20.0 || metric(&c, answered) < 5.0 {
        assert!(
            started.elapsed() < T,
            "probes never came back: a {replies} = {}, c {answered} = {}, a sent {}",
            metric(&a, replies),
            metric(&c, answered),
            metric(&a, r#"x0t_dataplane_probes_total{event="sent"}"#),
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("probe answers at a after {:?}", started.elapsed());
    assert!(metric(&b, "x0t_dataplane_forwarded_packets_total") > 0.0);
    // Nobody's probes are refused or unanswerable on a healthy line.
    for (name, api) in [("a", &a), ("b", &b), ("c", &c)] {
        for reason in ["control_malformed", "probe_reply_unsent", "e2e_auth"] {
            let series = format!(r#"x0t_dataplane_dropped_packets_total{{reason="{reason}"}}"#);
            assert_eq!(metric(api, &series), 0.0, "{name}: {series}");
        }
    }
    // A healthy line is no incident.
    let incidents = get_json(&a, "/v1/incidents");
    assert!(
        incidents
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["problem"] != "black_hole" && i["problem"] != "unreachable"),
        "{incidents:#}"
    );
}

/// The next hop of `from`'s route to `dst`, if it has one.
fn next_hop(api: &str, dst: &str) -> Option<String> {
    get_json(api, "/v1/routes")
        .as_array()?
        .iter()
        .find(|r| r["dst"] == dst)
        .and_then(|r| r["next_hop"].as_str().map(str::to_owned))
}

#[test]
fn a_black_holing_relay_is_found_by_end_to_end_probes_and_quarantined() {
    // A square a – b – c – d – a, and e behind b and d: c and e each have two node-disjoint
    // paths from a (via b and via d). A relay is blamed only when two destinations behind it
    // corroborate each other (one could lie), so a sees its probes to both c and e lost
    // through the black hole while the other relay answers.
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let [a, b, c, d, e] = ["a", "b", "c", "d", "e"].map(|n| dir.join(n));
    let danger = "\n[danger_fault_injection]\nenabled = true\n";
    ca_node(&a, &[]);
    let da = Daemon::start("a", &config(dir, "a", &a, &[], ""));
    da.listen_addr();
    for n in [&b, &c, &d, &e] {
        join(&a, n);
    }
    let db = Daemon::start("b", &config(dir, "b", &b, &[&da.listen_addr()], danger));
    let dd = Daemon::start("d", &config(dir, "d", &d, &[&da.listen_addr()], danger));
    let dc = Daemon::start(
        "c",
        &config(dir, "c", &c, &[&db.listen_addr(), &dd.listen_addr()], ""),
    );
    let de = Daemon::start(
        "e",
        &config(dir, "e", &e, &[&db.listen_addr(), &dd.listen_addr()], ""),
    );
    let (b_id, c_id, d_id, e_id) = (node_id(&b), node_id(&c), node_id(&d), node_id(&e));
    let api = da.api_addr();
    // Converged, and a's probes to c answered along both paths.
    let started = Instant::now();
    let replies = r#"x0t_dataplane_probes_total{event="reply_received"}"#;
    while next_hop(&api, &c_id).is_none()
        || next_hop(&api, &e_id).is_none()
        || metric(&api, replies) < 30.0
    {
        assert!(started.elapsed() < T, "the mesh never converged");
        std::thread::sleep(Duration::from_millis(100));
    }
    let relay = next_hop(&api, &c_id).unwrap();
    let (bad, other) = if relay == b_id {
        (&db, &d_id)
    } else {
        assert_eq!(relay, d_id);
        (&dd, &b_id)
    };
    eprintln!("a reaches c via {relay}; it starts black-holing transit");
    let (status, body) = http(
        &bad.api_addr(),
        "POST",
        "/v1/faults",
        r#"{"kind":"blackhole"}"#,
    );
    assert_eq!(status, 201, "{body}");
    let (incidents, took) = wait_json(&api, "/v1/incidents", |v| {
        v.as_array()
            .unwrap()
            .iter()
            .any(|i| i["cause_node"] == relay.as_str() && i["problem"] == "black_hole")
    });
    eprintln!("black-hole incident at a {took:?} after the fault: {incidents:#}");
    let (actions, took) = wait_json(&api, "/v1/actions", |v| {
        v.as_array().unwrap().iter().any(|a| {
            a["kind"] == "quarantine_node"
                && a["target"]
                    .as_str()
                    .is_some_and(|t| t.contains(&relay[..8]))
                && a["result"] == "done"
        })
    });
    eprintln!("quarantine done {took:?} after the incident");
    // Routing now avoids the black hole: c is reached through the other relay.
    let started = Instant::now();
    while next_hop(&api, &c_id).as_deref() != Some(other.as_str()) {
        assert!(
            started.elapsed() < T,
            "a never routed around the black hole: {:?}; actions {actions:#}",
            next_hop(&api, &c_id)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Only the black hole was acted on.
    let actions = get_json(&api, "/v1/actions");
    for act in actions.as_array().unwrap() {
        if let Some(t) = act["target"].as_str() {
            assert!(
                !t.contains(&other[..8]) && !t.contains(&c_id[..8]) && !t.contains(&e_id[..8]),
                "an action on a healthy node: {act:#}"
            );
        }
    }
    drop((dc, de));
}

fn bytes_of(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap()
}

/// Every row of every knowledge-base table (`heal_*`) and their schema, as text, read-only.
/// (state.db also holds the identity store, which a starting daemon writes to: its
/// advertised address.)
fn knowledge_rows(db: &Path) -> Vec<String> {
    let c = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap();
    let tables: Vec<(String, String)> = c
        .prepare("SELECT name, sql FROM sqlite_master WHERE name LIKE 'heal%' ORDER BY name")
        .unwrap()
        .query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get::<_, Option<String>>(1)?.unwrap_or_default(),
            ))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let mut out = Vec::new();
    for (name, sql) in tables {
        out.push(sql);
        if !name.starts_with("heal_") || !out.last().unwrap().starts_with("CREATE TABLE") {
            continue;
        }
        let mut stmt = c.prepare(&format!("SELECT * FROM \"{name}\"")).unwrap();
        let cols = stmt.column_count();
        let rows = stmt
            .query_map([], |r| {
                Ok((0..cols)
                    .map(|i| format!("{:?}", r.get_ref(i).unwrap()))
                    .collect::<Vec<_>>()
                    .join("|"))
            })
            .unwrap()
            .map(Result::unwrap);
        out.extend(rows.map(|r| format!("{name}: {r}")));
    }
    out
}

#[test]
fn a_damaged_knowledge_base_is_reported_the_daemon_runs_and_the_file_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    ca_node(&a, &[]);
    let cfg = config(dir.path(), "a", &a, &[], "");
    let mut da = Daemon::start("a", &cfg);
    wait_json(&da.api_addr(), "/v1/health", |v| {
        v["audit"]["entries"].as_u64() >= Some(1)
    });
    da.terminate();
    let db = a.join("state.db");

    // Someone alters the knowledge base's schema record outside the daemon.
    {
        let c = rusqlite::Connection::open(&db).unwrap();
        c.execute(
            "UPDATE heal_meta SET value = 'seven' WHERE key = 'schema_version'",
            [],
        )
        .unwrap();
        c.pragma_update(None, "wal_checkpoint", "TRUNCATE").unwrap();
    }
    let damaged = knowledge_rows(&db);
    assert!(damaged.len() > 10, "{damaged:#?}");

    // The daemon starts, runs without the loop, and says why.
    let mut da = Daemon::start("a", &cfg);
    let api = da.api_addr();
    let h = get_json(&api, "/v1/health");
    assert_eq!(h["enabled"], false, "{h:#}");
    let why = h["error"].as_str().unwrap_or_default();
    assert!(why.contains("schema version"), "{h:#}");
    let (status, metrics) = http(&api, "GET", "/metrics", "");
    assert_eq!(status, 200);
    assert!(metrics.contains("x0t_heal_enabled 0"), "{metrics}");
    assert!(
        get_json(&api, "/v1/incidents")
            .as_array()
            .unwrap()
            .is_empty()
    );
    da.wait_for(&["self-healing is off"], T);
    // Still a working node: its API answers about itself.
    assert_eq!(http(&api, "GET", "/v1/node", "").0, 200);
    da.terminate();
    assert_eq!(
        knowledge_rows(&db),
        damaged,
        "the damaged knowledge base was rewritten"
    );
    // Offline tools say the same and write nothing either.
    let o = run(&["audit", "verify", "--state-dir", s(&a)]);
    assert_ne!(o.status.code(), Some(0), "{}", stdout(&o));
    assert!(stderr(&o).contains("schema version"), "{}", stderr(&o));
    assert_eq!(knowledge_rows(&db), damaged);

    // A damaged page (the knowledge base shares state.db with the identity store): the
    // integrity check finds it, the daemon refuses to start, the file stays as it was.
    {
        let c = rusqlite::Connection::open(&db).unwrap();
        c.execute(
            "UPDATE heal_meta SET value = '1' WHERE key = 'schema_version'",
            [],
        )
        .unwrap();
        c.pragma_update(None, "wal_checkpoint", "TRUNCATE").unwrap();
    }
    let mut bytes = bytes_of(&db);
    let page = usize::from(u16::from_be_bytes([bytes[16], bytes[17]]));
    // The root page of the audit table: knowledge rows, nothing the identity needs.
    let root: i64 = rusqlite::Connection::open(&db)
        .unwrap()
        .query_row(
            "SELECT rootpage FROM sqlite_master WHERE name = 'heal_audit'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let at = (root as usize - 1) * page;
    for (i, b) in bytes[at..at + page].iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(151).wrapping_add(7);
    }
    std::fs::write(&db, &bytes).unwrap();
    let mut da = Daemon::start("a", &cfg);
    let deadline = Instant::now() + T;
    while !da.has_exited() {
        assert!(Instant::now() < deadline, "still running: {}", da.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = da.log();
    assert!(
        log.contains("malformed") || log.contains("corrupt") || log.contains("damaged"),
        "{log}"
    );
    assert!(bytes_of(&db) == bytes, "the damaged file was rewritten");
}

#[test]
fn a_flood_of_symptoms_never_makes_the_executor_exceed_its_action_rate() {
    // A hub with six leaves (each dials the hub). The hub's bucket: two actions, then one
    // more every ten minutes — far longer than this test.
    let dir = tempfile::tempdir().unwrap();
    let hub_state = dir.path().join("hub");
    ca_node(&hub_state, &[]);
    let hub = Daemon::start(
        "hub",
        &config(
            dir.path(),
            "hub",
            &hub_state,
            &[],
            "\n[heal.plan]\naction_burst = 2\naction_refill_ms = 600000\n",
        ),
    );
    let api = hub.api_addr();
    let hub_addr = hub.listen_addr();
    let mut leaves = Vec::new();
    for i in 0..6 {
        let name = format!("leaf{i}");
        let state = dir.path().join(&name);
        join(&hub_state, &state);
        leaves.push(Daemon::start(
            &name,
            &config(dir.path(), &name, &state, &[&hub_addr], ""),
        ));
    }
    wait_json(&api, "/v1/links", |v| v.as_array().unwrap().len() == 6);
    let before = get_json(&api, "/v1/actions");
    assert!(before.as_array().unwrap().is_empty(), "{before:#}");

    // Every leaf dies at once: six links down, six incidents, and for each the planner
    // wants a restart (which fails: the leaves dial the hub), then the next candidate.
    for leaf in &mut leaves {
        leaf.stop();
    }
    let (_, took) = wait_json(&api, "/v1/incidents", |v| v.as_array().unwrap().len() >= 2);
    eprintln!("incidents at the hub {took:?} after the leaves died");
    let rate_limited = |m: &str| {
        m.lines()
            .find_map(|l| l.strip_prefix("x0t_heal_actions_rate_limited_total "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    let started = Instant::now();
    loop {
        let (_, m) = http(&api, "GET", "/metrics", "");
        if rate_limited(&m) > 0 {
            break;
        }
        assert!(started.elapsed() < T, "never rate-limited:\n{m}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Let the flood go on; the bucket holds.
    std::thread::sleep(Duration::from_secs(3));
    let actions = get_json(&api, "/v1/actions");
    let changing: Vec<&Value> = actions
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["kind"] != "alert")
        .collect();
    eprintln!(
        "{} incidents, {} actions (alerts are free), {} changing: {actions:#}",
        get_json(&api, "/v1/incidents").as_array().unwrap().len(),
        actions.as_array().unwrap().len(),
        changing.len()
    );
    assert!(!changing.is_empty(), "{actions:#}");
    assert!(changing.len() <= 2, "over the burst of 2: {actions:#}");
    assert!(changing.iter().all(|a| a["mode"] == "act"));
    let (_, m) = http(&api, "GET", "/metrics", "");
    assert!(rate_limited(&m) > 0, "{m}");
    // The audit log holds the same: at most two changing actions planned.
    drop(hub);
    let o = run(&["audit", "export", "--state-dir", s(&hub_state)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let planned = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|l| l["kind"] == "action_planned")
        .filter(|l| !l["body"].as_str().unwrap().contains("\"alert\""))
        .count();
    assert!(
        (1..=2).contains(&planned),
        "{planned} changing actions in the audit log"
    );
}
