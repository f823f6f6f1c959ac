//! Helpers for tests that run the real `x0t` binary.

#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub fn x0t() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_x0t"));
    c.env("X0T_LOG", "info,quinn=warn,rustls=warn");
    c
}

/// Runs `x0t args…` and returns its output.
pub fn run(args: &[&str]) -> Output {
    x0t().args(args).output().expect("run x0t")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs and parses `--json` output, asserting success.
pub fn run_json(args: &[&str]) -> serde_json::Value {
    let o = run(args);
    assert!(o.status.success(), "x0t {args:?} failed: {}", stderr(&o));
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("bad JSON from {args:?}: {e}: {}", stdout(&o)))
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A running daemon, killed (by its PID) when dropped.
pub struct Daemon {
    pub name: String,
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl Daemon {
    pub fn start(name: &str, config: &Path) -> Self {
        let mut cmd = x0t();
        cmd.args(["up", "--config", s(config)]);
        Self::spawn(name, cmd)
    }

    /// Starts `x0t up` inside the network namespace `netns` (`ip netns exec` runs it in place,
    /// so the PID is the daemon's).
    pub fn start_in(netns: &str, name: &str, config: &Path) -> Self {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", netns, env!("CARGO_BIN_EXE_x0t")])
            .args(["up", "--config", s(config)])
            .env(
                "X0T_LOG",
                std::env::var("X0T_TEST_LOG").unwrap_or("info,quinn=warn,rustls=warn".into()),
            );
        Self::spawn(name, cmd)
    }

    fn spawn(name: &str, mut cmd: Command) -> Self {
        let mut child = cmd
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn x0t up");
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = log.clone();
        let stderr = child.stderr.take().unwrap();
        let tag = name.to_owned();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if std::env::var_os("X0T_TEST_ECHO").is_some() {
                    eprintln!("[{tag}] {line}");
                }
                sink.lock().unwrap().push(line);
            }
        });
        Self {
            name: name.to_owned(),
            child,
            log,
        }
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    pub fn count(&self, needle: &str) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// Log lines so far (a mark for [`Daemon::wait_for_since`]).
    #[allow(dead_code)]
    pub fn lines(&self) -> usize {
        self.log.lock().unwrap().len()
    }

    /// Waits until a log line contains every needle; panics with the log after `timeout`.
    pub fn wait_for(&self, needles: &[&str], timeout: Duration) -> String {
        self.wait_for_since(0, needles, timeout)
    }

    /// [`Daemon::wait_for`], among the lines after the first `mark`.
    pub fn wait_for_since(&self, mark: usize, needles: &[&str], timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self
                .log
                .lock()
                .unwrap()
                .iter()
                .skip(mark)
                .find(|l| needles.iter().all(|n| l.contains(n)))
            {
                return line.clone();
            }
            if Instant::now() > deadline {
                panic!(
                    "{}: no log line with {needles:?} within {timeout:?}; log:\n{}",
                    self.name,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the startup line and returns the bound address.
    pub fn listen_addr(&self) -> String {
        let line = self.wait_for(&["x0t up", "listen="], Duration::from_secs(20));
        line.split_whitespace()
            .find_map(|w| w.strip_prefix("listen="))
            .unwrap()
            .to_owned()
    }

    /// Waits for the startup line and returns the HTTP API's bound address.
    pub fn api_addr(&self) -> String {
        let line = self.wait_for(&["x0t up", "api="], Duration::from_secs(20));
        line.split_whitespace()
            .find_map(|w| w.strip_prefix("api="))
            .unwrap()
            .to_owned()
    }

    /// The daemon's process ID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Asks the daemon to stop (SIGTERM), so that it logs its counters, and waits for it to
    /// exit; SIGKILL after 10 s.
    pub fn terminate(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.stop();
    }

    pub fn has_exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Writes a config file for a node.
pub fn config(dir: &Path, name: &str, state: &Path, peers: &[&str], extra: &str) -> PathBuf {
    let mut text = format!("state_dir = {:?}\nlisten = \"127.0.0.1:0\"\n", s(state));
    text.push_str(extra);
    for p in peers {
        text.push_str(&format!("\n[[peers]]\naddr = {p:?}\n"));
    }
    // Several daemons share the test's network namespace: no TUN device (tests with TUN run
    // each daemon in a namespace of its own).
    if !extra.contains("[dataplane]") {
        text.push_str("\n[dataplane]\ntun = false\n");
    }
    // Nor the API's fixed default port: each test daemon gets a free one (`Daemon::api_addr`).
    if !extra.contains("[api]") {
        text.push_str("\n[api]\nlisten = \"127.0.0.1:0\"\n");
    }
    // Nor machine-wide eBPF tracepoints in every loopback daemon (tests that check the eBPF
    // telemetry turn it on).
    if !extra.contains("[ebpf]") {
        text.push_str("\n[ebpf]\nenabled = false\n");
    }
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// Creates the CA node's state: identity plus mesh CA.
pub fn ca_node(state: &Path, extra_args: &[&str]) -> serde_json::Value {
    run_json(&["init", "--state-dir", s(state), "--json"]);
    let mut args = vec![
        "ca",
        "init",
        "--trust-domain",
        "mesh.test",
        "--state-dir",
        s(state),
        "--json",
    ];
    args.extend_from_slice(extra_args);
    run_json(&args)
}

/// Makes an invitation on the CA node and joins `state` with it.
pub fn join(ca_state: &Path, state: &Path) -> serde_json::Value {
    let inv = run_json(&["ca", "invite", "--state-dir", s(ca_state), "--json"]);
    run_json(&[
        "join",
        inv["token"].as_str().unwrap(),
        "--state-dir",
        s(state),
        "--json",
    ])
}

/// One HTTP/1.1 exchange with a daemon's API (JSON body, connection closed after); returns
/// the status and the body (chunked transfer decoded).
pub fn http(addr: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut bytes = Vec::new();
    let _ = s.read_to_end(&mut bytes);
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut out = String::new();
        let mut rest = rest;
        while let Some((size, tail)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 || tail.len() < n {
                break;
            }
            out.push_str(&tail[..n]);
            rest = tail[n..].trim_start_matches("\r\n");
        }
        out
    } else {
        rest.to_owned()
    };
    (status, body)
}

/// `GET path` as JSON; the status must be 200.
pub fn get_json(addr: &str, path: &str) -> serde_json::Value {
    let (status, body) = http(addr, "GET", path, "");
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {body}"))
}

/// The sum of the samples of `series` (a metric name with its labels, as printed) in a
/// daemon's `/metrics`; 0 when absent.
pub fn metric(addr: &str, series: &str) -> f64 {
    let (status, body) = http(addr, "GET", "/metrics", "");
    assert_eq!(status, 200);
    body.lines()
        .filter_map(|l| l.strip_prefix(series))
        // The whole series, not a longer name it is the start of.
        .filter(|rest| series.ends_with(' ') || rest.starts_with(' '))
        .filter_map(|v| v.trim().parse::<f64>().ok())
        .sum()
}

/// The node ID of the identity in `state`.
pub fn node_id(state: &Path) -> String {
    run_json(&["identity", "show", "--state-dir", s(state), "--json"])["node_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// An IPv6/UDP packet from `src` to `dst` carrying `payload` (checksum left zero: only the
/// daemons, which do not check it, and the test see it).
pub fn udp6_packet(src: std::net::Ipv6Addr, dst: std::net::Ipv6Addr, payload: &[u8]) -> Vec<u8> {
    let len = (8 + payload.len()) as u16;
    let mut p = vec![0x60, 0, 0, 0];
    p.extend_from_slice(&len.to_be_bytes());
    p.extend_from_slice(&[17, 64]);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(&4000u16.to_be_bytes());
    p.extend_from_slice(&5000u16.to_be_bytes());
    p.extend_from_slice(&len.to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(payload);
    p
}
