//! The HTTP API, metrics and the CLI against real daemons on loopback: the shapes of every
//! endpoint, the event stream, bad input, the token, `promtool check metrics`, a real
//! Prometheus server scraping a daemon, and the CLI with and without a daemon.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

const T: Duration = Duration::from_secs(20);

/// A plain HTTP/1.1 answer.
struct Answer {
    status: u16,
    head: String,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(i) = body.windows(2).position(|w| w == b"\r\n") {
        let size =
            usize::from_str_radix(std::str::from_utf8(&body[..i]).unwrap().trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        out.extend_from_slice(&body[i + 2..i + 2 + size]);
        body = &body[i + 2 + size + 2..];
    }
    out
}

/// Sends raw bytes as a request and reads the answer to the end of the connection.
fn raw(addr: &str, request: &[u8]) -> Answer {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    let _ = s.write_all(request);
    let mut bytes = Vec::new();
    let _ = s.read_to_end(&mut bytes);
    let split = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP answer: {:?}", String::from_utf8_lossy(&bytes)));
    let head = String::from_utf8_lossy(&bytes[..split]).into_owned();
    let mut body = bytes[split + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap();
    Answer {
        status,
        head,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

fn request(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Answer {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    req.push_str(body);
    raw(addr, req.as_bytes())
}

fn get(addr: &str, path: &str) -> Answer {
    request(addr, "GET", path, &[], "")
}

/// Polls `GET path` until `ok` holds for its JSON; panics with the last answer after `T`.
fn wait_json(addr: &str, path: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + T;
    loop {
        let a = get(addr, path);
        if a.status == 200 {
            let v = a.json();
            if ok(&v) {
                return v;
            }
            if Instant::now() > deadline {
                panic!("{path} never got there; last answer: {v:#}");
            }
        } else if Instant::now() > deadline {
            panic!("{path}: {} {}", a.status, a.body);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// An open `/v1/events` stream.
struct Events {
    lines: BufReader<TcpStream>,
}

impl Events {
    fn open(addr: &str, query: &str) -> Self {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(T)).unwrap();
        write!(
            s,
            "GET /v1/events{query} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n"
        )
        .unwrap();
        let mut lines = BufReader::new(s);
        let mut status = String::new();
        lines.read_line(&mut status).unwrap();
        assert!(status.contains(" 200 "), "{status}");
        Self { lines }
    }

    /// The next event's name and JSON data.
    fn next(&mut self) -> (String, Value) {
        let mut name = String::new();
        loop {
            let mut line = String::new();
            let n = self
                .lines
                .read_line(&mut line)
                .expect("no event within the read timeout");
            assert!(n > 0, "the event stream ended");
            let line = line.trim_end();
            if let Some(v) = line.strip_prefix("event: ") {
                name = v.to_owned();
            } else if let Some(v) = line.strip_prefix("data: ") {
                return (name, serde_json::from_str(v).unwrap());
            }
        }
    }

    /// Skips events until one satisfies `ok`.
    fn until(&mut self, what: &str, ok: impl Fn(&str, &Value) -> bool) -> Value {
        let deadline = Instant::now() + T;
        loop {
            let (name, data) = self.next();
            if ok(&name, &data) {
                return data;
            }
            assert!(Instant::now() < deadline, "no {what} event");
        }
    }
}

/// A CA node `a` and a node `b` joined and dialling it (`b_extra` goes into b's config).
fn two_nodes(dir: &Path, b_extra: &str) -> (Daemon, Daemon, String) {
    let (a, b) = (dir.join("a"), dir.join("b"));
    ca_node(&a, &[]);
    let da = Daemon::start("a", &config(dir, "a", &a, &[], ""));
    da.listen_addr();
    join(&a, &b);
    let db = Daemon::start("b", &config(dir, "b", &b, &[&da.listen_addr()], b_extra));
    (da, db, node_id(&b))
}

/// A loopback TCP port nothing listens on (for a moment).
fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn node_id(state: &Path) -> String {
    run_json(&["identity", "show", "--state-dir", s(state), "--json"])["node_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Runs `promtool check metrics` on `text`; `None` when promtool is not installed.
fn promtool_check(text: &str) -> Option<(bool, String)> {
    let mut child = match Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(_) => return None,
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    Some((
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    ))
}

#[test]
fn every_endpoint_answers_with_its_shape_and_events_report_a_joining_peer() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    ca_node(&a, &[]);
    let da = Daemon::start("a", &config(dir.path(), "a", &a, &[], ""));
    let api = da.api_addr();
    let a_id = node_id(&a);

    // Alone and without configured peers, the CA node is healthy.
    let h = get(&api, "/health");
    assert_eq!(h.status, 200, "{}", h.body);
    let h = h.json();
    assert_eq!(h["status"], "ok");
    assert_eq!(h["ready"], true);

    // The event stream opens with the current health, then reports the joining peer.
    let mut events = Events::open(&api, "");
    let (name, first) = events.next();
    assert_eq!(name, "health");
    assert_eq!(first["kind"], "health");
    assert_eq!(first["health"]["status"], "ok");

    join(&a, &b);
    let b_id = node_id(&b);
    let db = Daemon::start("b", &config(dir.path(), "b", &b, &[&da.listen_addr()], ""));
    let up = events.until("link_up", |name, e| {
        name == "topology" && e["kind"] == "link_up" && e["peer"] == b_id.as_str()
    });
    assert!(up["at_unix_ms"].as_u64().unwrap() > 1_600_000_000_000);
    assert!(up["detail"].as_str().unwrap().contains("X25519MLKEM768"));
    events.until("node_appeared", |_, e| {
        e["kind"] == "node_appeared" && e["peer"] == b_id.as_str()
    });
    // Only the topics asked for.
    let mut health_only = Events::open(&api, "?topics=health");
    assert_eq!(health_only.next().0, "health");

    let node = get(&api, "/v1/node").json();
    assert_eq!(node["node_id"], a_id.as_str());
    assert_eq!(node["spiffe_id"], format!("spiffe://mesh.test/node/{a_id}"));
    assert_eq!(node["trust_domain"], "mesh.test");
    assert_eq!(node["is_ca"], true);
    assert_eq!(node["listen_addr"], da.listen_addr().as_str());
    assert_eq!(node["ebpf_enabled"], false);
    assert!(node["svid_expires_in_s"].as_i64().unwrap() > 0);
    assert!(node["overlay_addr"].as_str().unwrap().starts_with("fd"));

    let links = wait_json(&api, "/v1/links", |v| {
        v.as_array().unwrap().len() == 1 && v[0]["routing"]["rtt_ms"].is_number()
    });
    let l = &links[0];
    assert_eq!(l["peer"], b_id.as_str());
    assert_eq!(l["kx_group"], "X25519MLKEM768");
    assert_eq!(l["role"], "listener");
    assert!(l["setup_ms"].as_f64().unwrap() > 0.0);
    assert!(["EXCELLENT", "GOOD"].contains(&l["routing"]["quality"].as_str().unwrap()));
    assert!(l["routing"]["cost"].as_u64().unwrap() > 0);

    let routes = wait_json(&api, "/v1/routes", |v| !v.as_array().unwrap().is_empty());
    assert_eq!(routes[0]["dst"], b_id.as_str());
    assert_eq!(routes[0]["next_hop"], b_id.as_str());
    assert_eq!(routes[0]["via_backup"], false);
    let one = get(&api, &format!("/v1/routes?dst={b_id}")).json();
    assert_eq!(one.as_array().unwrap().len(), 1);

    let topo = wait_json(&api, "/v1/topology", |v| {
        v["links"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|l| l["two_way"] == true)
            .count()
            == 2
    });
    assert_eq!(topo["self_id"], a_id.as_str());
    let nodes = topo["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 2);
    assert!(nodes.iter().all(|n| n["reachable"] == true));
    assert_eq!(
        nodes.iter().filter(|n| n["is_self"] == true).count(),
        1,
        "{topo:#}"
    );

    let peers = get(&api, "/v1/peers").json();
    assert_eq!(peers[0]["node_id"], b_id.as_str());
    assert_eq!(peers[0]["configured"], false);
    assert_eq!(peers[0]["linked"], true);
    // B dialled A: there A is a configured, linked peer.
    let b_api = db.api_addr();
    let peers = wait_json(&b_api, "/v1/peers", |v| v[0]["linked"] == true);
    assert_eq!(peers[0]["node_id"], a_id.as_str());
    assert_eq!(peers[0]["configured"], true);
    assert_eq!(peers[0]["addr"], da.listen_addr().as_str());
    assert_eq!(
        wait_json(&b_api, "/health", |v| v["status"] == "ok")["ready"],
        true
    );

    // Metrics: the documented series are there, in both formats, and promtool accepts them.
    let m = get(&api, "/metrics");
    assert_eq!(m.status, 200);
    assert!(m.head.contains("text/plain; version=0.0.4"), "{}", m.head);
    let text = m.body;
    let per_peer = [
        format!("x0t_link_rtt_seconds{{peer=\"{b_id}\"}} "),
        format!("x0t_link_up{{peer=\"{b_id}\"}} 1"),
        format!("x0t_link_quality_class{{peer=\"{b_id}\"}} "),
        format!("x0t_link_loss_ratio{{peer=\"{b_id}\",direction=\"rx\"}} "),
    ];
    for series in per_peer.iter().map(String::as_str).chain([
        "x0t_link_handshakes_total{group=\"X25519MLKEM768\"} 1",
        "x0t_link_handshake_failures_total{reason=\"no_common_group\"} 0",
        "x0t_links_open 1",
        "x0t_link_setup_duration_seconds_count 1",
        "x0t_routing_adverts_received_total ",
        "x0t_routing_adverts_rejected_total{reason=\"bad_signature\"} 0",
        "x0t_routing_spf_runs_total ",
        "x0t_routing_spf_duration_seconds_bucket{le=",
        "x0t_routing_known_nodes 2",
        "x0t_routing_reachable_nodes 1",
        "x0t_dataplane_forwarded_packets_total 0",
        "x0t_svid_expiry_timestamp_seconds ",
        "x0t_process_cpu_seconds_total ",
        "x0t_process_resident_memory_bytes ",
        "x0t_process_open_fds ",
        "x0t_process_start_time_seconds ",
        "x0t_ebpf_enabled 0",
        "x0t_build_info{version=",
    ]) {
        assert!(text.contains(series), "no {series} in:\n{text}");
    }
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        assert!(line.starts_with("x0t_"), "{line}");
    }
    let docs = metrics_doc();
    for name in text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
    {
        assert!(
            docs.contains(&format!("`{name}`")),
            "{name} is not documented in docs/metrics.md"
        );
    }
    // And the other way round: every metric docs/metrics.md lists is served (the eBPF
    // counters once the programs are attached, which needs root: tested apart).
    for name in docs
        .lines()
        .filter_map(|l| l.strip_prefix("| `x0t_"))
        .filter_map(|l| l.split('`').next())
        .map(|n| format!("x0t_{n}"))
        .filter(|n| n == "x0t_ebpf_enabled" || !n.starts_with("x0t_ebpf_"))
    {
        assert!(
            text.contains(&format!("# TYPE {name} ")),
            "docs/metrics.md lists {name}, which the daemon does not serve:\n{text}"
        );
    }
    // Counters of events that have not happened yet are there, at zero.
    for series in [
        "x0t_links_closed_total{cause=\"idle_timeout\"} 0",
        "x0t_svid_renewals_total{result=\"error\"} 0",
        "x0t_heal_incidents_total{problem=\"black_hole\"} 0",
        "x0t_heal_actions_total{kind=\"quarantine_node\",mode=\"act\"} 0",
        "x0t_heal_action_results_total{kind=\"restart_link\",result=\"failed\"} 0",
    ] {
        assert!(text.contains(series), "no {series} in:\n{text}");
    }
    match promtool_check(&text) {
        Some((ok, out)) => assert!(ok, "promtool check metrics:\n{out}\n{text}"),
        None => {
            eprintln!("SKIP promtool check: promtool not installed (Debian package prometheus)")
        }
    }
    let om = request(
        &api,
        "GET",
        "/metrics",
        &[("Accept", "application/openmetrics-text; version=1.0.0")],
        "",
    );
    assert!(
        om.head.contains("application/openmetrics-text"),
        "{}",
        om.head
    );
    assert!(om.body.ends_with("# EOF\n"));
    assert!(om.body.contains("# UNIT x0t_link_rtt_seconds seconds"));

    // The OpenAPI document is OpenAPI 3.1 (checked by the oas3 parser) and every path it
    // lists answers.
    let doc = get(&api, "/openapi.json");
    assert_eq!(doc.status, 200);
    let spec = oas3::from_json(&doc.body).unwrap();
    spec.validate_version().unwrap();
    let paths: Vec<String> = spec.paths.unwrap().keys().cloned().collect();
    assert_eq!(paths.len(), 14, "{paths:?}");
    assert!(paths.iter().any(|p| p == "/openapi.json"), "{paths:?}");
    // `/v1/faults/{id}` only takes DELETE (tests/fault.rs).
    for p in paths
        .iter()
        .filter(|p| *p != "/v1/events" && !p.contains('{'))
    {
        assert_eq!(get(&api, p).status, 200, "{p}");
    }
    drop(db);
    // A's neighbour vanished: the link goes down, with its cause.
    let down = events.until("link_down", |_, e| {
        e["kind"] == "link_down" && e["peer"] == b_id.as_str()
    });
    assert!(down["detail"].is_string());
}

fn metrics_doc() -> String {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/metrics.md"
    ))
    .unwrap()
}

fn exprs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr" | "definition", Value::String(e)) => out.push(e.clone()),
                    _ => exprs(v, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| exprs(v, out)),
        _ => {}
    }
}

#[test]
fn the_grafana_dashboard_uses_only_documented_metrics() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/grafana/x0t.json"
    ))
    .unwrap();
    let dashboard: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(dashboard["uid"], "x0t-mesh");
    let mut all = Vec::new();
    exprs(&dashboard, &mut all);
    assert!(all.len() > 20, "{all:?}");
    let docs = metrics_doc();
    let mut used = std::collections::BTreeSet::new();
    for e in &all {
        for (i, _) in e.match_indices("x0t_") {
            let name: String = e[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(&name)
                .to_owned();
            used.insert(base);
        }
    }
    for name in &used {
        assert!(
            docs.contains(&format!("`{name}`")),
            "the dashboard uses {name}, which docs/metrics.md does not document"
        );
    }
    assert!(used.len() >= 25, "{used:?}");
}

#[test]
fn bad_requests_get_4xx_answers_and_the_daemon_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    ca_node(&a, &[]);
    let mut da = Daemon::start("a", &config(dir.path(), "a", &a, &[], ""));
    let api = da.api_addr();

    let r = get(&api, "/v1/nope");
    assert_eq!(r.status, 404);
    assert!(r.json()["error"].as_str().unwrap().contains("/v1/nope"));
    assert_eq!(get(&api, "/../../etc/passwd").status, 404);
    assert_eq!(get(&api, "/v1/node/%00%ff").status, 404);
    // Bad JSON: the API is read-only; a body with a write method is refused, never read.
    let r = request(
        &api,
        "POST",
        "/v1/peers",
        &[("Content-Type", "application/json")],
        "{\"addr\": [unclosed",
    );
    assert_eq!(r.status, 405);
    assert!(r.json()["error"].as_str().unwrap().contains("read-only"));
    assert_eq!(request(&api, "DELETE", "/v1/node", &[], "").status, 405);
    // A huge body is refused from its length alone (the 100 MB are never sent).
    let r = raw(
        &api,
        format!(
            "POST /v1/node HTTP/1.1\r\nHost: {api}\r\nContent-Length: 100000000\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    );
    assert_eq!(r.status, 413);
    assert!(
        r.json()["error"].as_str().unwrap().contains("65536"),
        "{}",
        r.body
    );
    // Huge headers: hyper answers on its own, with the JSON body every error has.
    let big = "x".repeat(20 * 1024);
    let r = raw(
        &api,
        format!("GET /health HTTP/1.1\r\nHost: {api}\r\nX-Big: {big}\r\n\r\n").as_bytes(),
    );
    assert_eq!(r.status, 431);
    assert!(
        r.head.contains("content-type: application/json"),
        "{}",
        r.head
    );
    assert!(
        r.json()["error"].as_str().unwrap().contains("16384"),
        "{}",
        r.body
    );
    // Bad queries.
    assert_eq!(get(&api, "/v1/routes?dst=not-a-node").status, 400);
    assert_eq!(get(&api, "/v1/routes?dst=%zz").status, 400);
    assert_eq!(get(&api, "/v1/events?topics=weather").status, 400);
    // Not HTTP at all.
    let r = raw(&api, b"\x16\x03\x01\x00\xa5garbage\r\n\r\n");
    assert_eq!(r.status, 400);
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .contains("not an HTTP/1.1 request")
    );
    // A good request, then garbage on the same connection: the first answer is untouched.
    let r = raw(
        &api,
        format!("GET /health HTTP/1.1\r\nHost: {api}\r\n\r\nGARBAGE\r\n\r\n").as_bytes(),
    );
    assert_eq!(r.status, 200);
    assert!(
        r.body.contains("\"live\":true")
            && r.body.ends_with("request (bad request line or header)\"}"),
        "{}",
        r.body
    );
    // A web page posting a "simple" form to the API (no JSON content type, or another origin).
    let r = request(
        &api,
        "POST",
        "/v1/faults",
        &[("Content-Type", "text/plain")],
        "{\"kind\":\"blackhole\"}",
    );
    assert_eq!(r.status, 415, "{}", r.body);
    let r = request(
        &api,
        "POST",
        "/v1/faults",
        &[
            ("Content-Type", "application/json"),
            ("Origin", "http://evil.example"),
        ],
        "{\"kind\":\"blackhole\"}",
    );
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.json()["error"].as_str().unwrap().contains("cross-origin"));
    // A page from another origin (DNS rebinding) cannot read the unauthenticated API.
    let r = raw(
        &api,
        b"GET /v1/node HTTP/1.1\r\nHost: attacker.example:5471\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 403);
    // A client that never finishes its headers is cut off (the header read timeout).
    let mut slow = TcpStream::connect(&api).unwrap();
    slow.set_read_timeout(Some(T)).unwrap();
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: x").unwrap();
    let started = Instant::now();
    let mut rest = Vec::new();
    let _ = slow.read_to_end(&mut rest);
    eprintln!(
        "slow client cut off after {:?} ({} bytes answered)",
        started.elapsed(),
        rest.len()
    );
    assert!(started.elapsed() < T, "the slow client was never cut off");
    // Still serving, and nothing panicked.
    assert_eq!(get(&api, "/health").status, 200);
    assert!(!da.has_exited());
    assert_eq!(da.count("panicked"), 0, "{}", da.log());
}

#[test]
fn a_non_loopback_api_needs_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    ca_node(&a, &[]);
    // Without a token file the daemon refuses to start, naming the key.
    let cfg = config(
        dir.path(),
        "open",
        &a,
        &[],
        "\n[api]\nlisten = \"0.0.0.0:0\"\n",
    );
    let o = run(&["up", "--config", s(&cfg)]);
    assert_eq!(o.status.code(), Some(64), "{}", stderr(&o));
    assert!(stderr(&o).contains("api.token_file"), "{}", stderr(&o));
    assert!(!a.join("api-token").exists());

    // With one, the token is created (0600) and required on every path but /health. (A fixed
    // free port, so that the CLI finds it in the configuration.)
    let port = free_port();
    let cfg = config(
        dir.path(),
        "a",
        &a,
        &[],
        &format!("\n[api]\nlisten = \"0.0.0.0:{port}\"\ntoken_file = \"api-token\"\n"),
    );
    let da = Daemon::start("a", &cfg);
    assert_eq!(da.api_addr(), format!("0.0.0.0:{port}"));
    let api = format!("127.0.0.1:{port}");
    let token_file = a.join("api-token");
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let token = std::fs::read_to_string(&token_file)
        .unwrap()
        .trim()
        .to_owned();
    assert!(token.len() >= 32);

    let r = get(&api, "/v1/node");
    assert_eq!(r.status, 401);
    assert!(
        r.head
            .to_ascii_lowercase()
            .contains("www-authenticate: bearer")
    );
    assert_eq!(
        request(
            &api,
            "GET",
            "/metrics",
            &[("Authorization", "Bearer nope")],
            ""
        )
        .status,
        401
    );
    assert_eq!(get(&api, "/v1/unknown").status, 401);
    let auth = format!("Bearer {token}");
    let r = request(&api, "GET", "/v1/node", &[("Authorization", &auth)], "");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        request(&api, "GET", "/metrics", &[("Authorization", &auth)], "").status,
        200
    );
    assert_eq!(get(&api, "/health").status, 200);

    // The CLI finds the token through the config, or is told what it lacks.
    let o = run(&["status", "--config", s(&cfg)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(&["status", "--api", &api]);
    assert_eq!(o.status.code(), Some(77), "{}", stderr(&o));
    assert!(stderr(&o).contains("--token-file"), "{}", stderr(&o));
    let o = run(&[
        "peers",
        "--api",
        &api,
        "--token-file",
        s(&token_file),
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));

    // A world-readable token file is refused.
    drop(da);
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let o = run(&["up", "--config", s(&cfg)]);
    assert_eq!(o.status.code(), Some(77), "{}", stderr(&o));
    assert!(stderr(&o).contains("chmod 600"), "{}", stderr(&o));
}

/// Runs `x0t up` and waits for it to exit; panics (after killing it) if it is still running
/// after 20 s.
fn up_must_fail(cfg: &Path) -> std::process::Output {
    let mut child = x0t()
        .args(["up", "--config", s(cfg)])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + T;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let o = child.wait_with_output().unwrap();
            panic!("x0t up kept running:\n{}", stderr(&o));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn a_daemon_whose_api_address_is_taken_does_not_start() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    ca_node(&a, &[]);
    // Something else holds the port, on every address.
    let taken = TcpListener::bind("0.0.0.0:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    for (name, extra) in [
        (
            "loopback",
            format!("\n[api]\nlisten = \"127.0.0.1:{port}\"\n"),
        ),
        (
            "token",
            format!("\n[api]\nlisten = \"0.0.0.0:{port}\"\ntoken_file = \"api-token\"\n"),
        ),
        (
            "loopback-token",
            format!("\n[api]\nlisten = \"127.0.0.1:{port}\"\ntoken_file = \"api-token\"\n"),
        ),
    ] {
        let cfg = config(dir.path(), name, &a, &[], &extra);
        let o = up_must_fail(&cfg);
        assert_eq!(o.status.code(), Some(69), "{name}: {}", stderr(&o));
        let err = stderr(&o);
        assert!(
            err.contains(&format!(":{port}"))
                && err.contains("`api.listen`")
                && err.contains("in use"),
            "{name}: {err}"
        );
    }
    // The default address taken (by this test, or by whoever holds it already): the same.
    let _default = TcpListener::bind("127.0.0.1:5471");
    let cfg = config(dir.path(), "default", &a, &[], "\n[api]\nenabled = true\n");
    let o = up_must_fail(&cfg);
    assert_eq!(o.status.code(), Some(69), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("`api.listen` is not set; 127.0.0.1:5471 is its default"),
        "{}",
        stderr(&o)
    );
    drop(taken);
}

#[test]
fn cli_commands_read_a_running_daemon_and_fail_cleanly_without_one() {
    let dir = tempfile::tempdir().unwrap();
    // B on a fixed free port, so that the CLI finds its API through its configuration.
    let b_api = format!("127.0.0.1:{}", free_port());
    let (da, db, b_id) = two_nodes(dir.path(), &format!("\n[api]\nlisten = \"{b_api}\"\n"));
    let (a, b_cfg) = (dir.path().join("a"), dir.path().join("b.toml"));
    assert_eq!(db.api_addr(), b_api);
    let api = da.api_addr();
    wait_json(&api, "/v1/routes", |v| !v.as_array().unwrap().is_empty());
    wait_json(&api, "/v1/links", |v| v[0]["routing"]["rtt_ms"].is_number());

    let o = run(&["status", "--api", &api]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains(&node_id(&a)) && out.contains("health:        ok"),
        "{out}"
    );
    let v = run_json(&["status", "--api", &api, "--json"]);
    assert_eq!(v["node"]["links"], 1);
    assert_eq!(v["health"]["ready"], true);

    let short = &b_id[..12];
    for (cmd, needle) in [
        ("peers", "PEER"),
        ("links", "X25519MLKEM768"),
        ("routes", "primary"),
        ("topology", "2 nodes"),
    ] {
        let o = run(&[cmd, "--api", &api]);
        assert!(o.status.success(), "{cmd}: {}", stderr(&o));
        let out = stdout(&o);
        assert!(out.contains(needle) && out.contains(short), "{cmd}:\n{out}");
        let v = run_json(&[cmd, "--api", &api, "--json"]);
        assert!(v.is_array() || v.is_object(), "{cmd}");
    }
    // Through B's configuration file.
    let o = run(&["links", "--config", s(&b_cfg), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains(&node_id(&a)));
    drop(db);

    // No daemon: a clear message and exit 69.
    let addr = format!("127.0.0.1:{}", free_port());
    for cmd in ["status", "peers", "links", "routes", "topology"] {
        let o = run(&[cmd, "--api", &addr]);
        assert_eq!(o.status.code(), Some(69), "{cmd}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("no x0t daemon answers") && stderr(&o).contains("x0t up"),
            "{}",
            stderr(&o)
        );
        assert!(stdout(&o).is_empty());
    }
}

/// A Prometheus server, killed by its PID (and its data removed with the test's directory)
/// when dropped, whether the test passed or not.
struct Prometheus(Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_real_prometheus_server_scrapes_a_daemon() {
    if Command::new("prometheus")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("SKIP: the prometheus server is not installed (Debian package `prometheus`)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (da, _db, b_id) = two_nodes(dir.path(), "");
    let target = da.api_addr();
    wait_json(&target, "/v1/links", |v| {
        v[0]["routing"]["rtt_ms"].is_number()
    });

    let web = format!("127.0.0.1:{}", free_port());
    let cfg = dir.path().join("prometheus.yml");
    std::fs::write(
        &cfg,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: x0t\n    \
             static_configs:\n      - targets: ['{target}']\n"
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
    let _prometheus = Prometheus(
        Command::new("prometheus")
            .arg(format!("--config.file={}", s(&cfg)))
            .arg(format!(
                "--storage.tsdb.path={}",
                s(&dir.path().join("prometheus-data"))
            ))
            .arg(format!("--web.listen-address={web}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let prom_log =
        || std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default();
    // Prometheus's own view of the target, then a query for a series of ours.
    let deadline = Instant::now() + Duration::from_secs(60);
    let targets = loop {
        if let Ok(s) = TcpStream::connect(&web) {
            let _ = s.set_read_timeout(Some(T));
            drop(s);
            let a = get(&web, "/api/v1/targets");
            if a.status == 200 {
                let v = a.json();
                let t = &v["data"]["activeTargets"][0];
                if t["health"] == "up" {
                    break v;
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus never scraped the daemon successfully; its log:\n{}",
            prom_log()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let t = &targets["data"]["activeTargets"][0];
    assert_eq!(t["scrapeUrl"], format!("http://{target}/metrics"));
    assert_eq!(t["lastError"], "");
    let query = format!("/api/v1/query?query=x0t_link_up%7Bpeer%3D%22{b_id}%22%7D");
    let v = loop {
        let v = get(&web, &query).json();
        if v["data"]["result"]
            .as_array()
            .is_some_and(|r| !r.is_empty())
        {
            break v;
        }
        assert!(
            Instant::now() < deadline,
            "no x0t_link_up series in Prometheus: {v:#}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(v["status"], "success");
    assert_eq!(v["data"]["result"][0]["value"][1], "1");
    let v = get(&web, "/api/v1/query?query=x0t_routing_known_nodes").json();
    assert_eq!(v["data"]["result"][0]["value"][1], "2", "{v:#}");
    let v = get(&web, "/api/v1/query?query=x0t_process_cpu_seconds_total").json();
    assert_eq!(v["data"]["result"].as_array().unwrap().len(), 1, "{v:#}");
}

#[test]
fn ebpf_telemetry_is_exported_when_permitted_and_reported_off_when_not() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    ca_node(&a, &[]);
    let d = Daemon::start(
        "a",
        &config(dir.path(), "a", &a, &[], "\n[ebpf]\nenabled = true\n"),
    );
    let api = d.api_addr();
    let root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    let m = get(&api, "/metrics");
    assert_eq!(m.status, 200);
    if !root {
        // Never a refusal to start: one line in the log and the gauge at 0.
        assert!(m.body.contains("\nx0t_ebpf_enabled 0\n"), "{}", m.body);
        d.wait_for(&["eBPF telemetry is off"], T);
        eprintln!("SKIPPED the eBPF counters: not root");
        return;
    }
    d.wait_for(&["eBPF telemetry attached"], T);
    assert!(m.body.contains("\nx0t_ebpf_enabled 1\n"), "{}", m.body);
    assert!(
        m.body.contains("x0t_ebpf_tcp_retransmits_total"),
        "{}",
        m.body
    );
    // A drop the kernel counts: UDP to a closed loopback port (reason NO_SOCKET).
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for _ in 0..20 {
        let _ = s.send_to(b"x", ("127.0.0.1", free_port()));
    }
    let deadline = Instant::now() + T;
    loop {
        let m = get(&api, "/metrics");
        if m.body
            .contains("x0t_ebpf_kernel_drops_total{reason=\"NO_SOCKET\"}")
        {
            break;
        }
        assert!(Instant::now() < deadline, "no NO_SOCKET drop: {}", m.body);
        std::thread::sleep(Duration::from_millis(100));
    }
    // Every eBPF series is documented.
    let doc = metrics_doc();
    for line in m.body.lines().filter(|l| l.starts_with("x0t_ebpf")) {
        let name = line
            .split(['{', ' '])
            .next()
            .unwrap()
            .trim_end_matches("_total");
        assert!(doc.contains(name), "{name} is not in docs/metrics.md");
    }
}

/// A stand-in daemon API that answers every request on one connection with `body` (JSON).
fn fake_api(body: String) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(4) {
            let Ok(mut stream) = stream else { return };
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap_or(0) == 1 {
                head.push(byte[0]);
            }
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    addr
}

#[test]
fn peer_supplied_text_cannot_drive_the_terminal() {
    // A peer's QUIC close reason, as the daemon reports it in `last_error`: an escape sequence
    // that clears the screen and retitles the window, a fake line, a right-to-left override.
    let reason = "closed by peer: bye\u{1b}[2J\u{1b}]0;owned\u{7}\nPEER  fake-row\u{202e}";
    let peers = serde_json::json!([{
        "node_id": "00112233445566778899aabbccddeeff",
        "addr": "127.0.0.1:7101",
        "configured": true,
        "linked": false,
        "overlay_addr": null,
        "last_error": reason,
        "dial_failures": 3,
    }]);
    let api = fake_api(peers.to_string());
    let o = run(&["peers", "--api", &api]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert_eq!(out.lines().count(), 2, "{out}");
    assert!(
        !out.chars()
            .any(|c| c != '\n' && (c.is_control() || c == '\u{202e}')),
        "{out:?}"
    );
    assert!(
        out.contains(r"bye\u{1b}[2J\u{1b}]0;owned\u{7}\u{a}PEER"),
        "{out}"
    );
    // The JSON keeps the text as it is (escaped as JSON).
    let api = fake_api(peers.to_string());
    let v = run_json(&["peers", "--api", &api, "--json"]);
    assert_eq!(v[0]["last_error"], reason);
}
