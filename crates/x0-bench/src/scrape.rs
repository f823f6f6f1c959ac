//! `x0t bench metrics-scrape`: what `/metrics` costs a daemon scraped every 100 ms.
//!
//! Builds a small mesh of real daemons on loopback (`x0t init`, `ca init`, `join`, `up`; no
//! TUN, no root needed), waits until the first node has a link with a live routing session to
//! each other node, then measures that node twice for the same time: once left alone (the
//! baseline), once scraped at the given interval over one keep-alive connection, as Prometheus
//! does. Reported: per-scrape latency as the scraper sees it, the answer's size and series,
//! and the daemon's CPU time (from `/proc/PID/stat`) in both phases; the difference is the
//! scraping's cost.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Args;
use http_body_util::{BodyExt as _, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde::Serialize;

use crate::report::{Distribution, distribution, write_report};
use x0_node::exit::{CmdResult, Exit};
use x0_node::metrics::ProcessStats;

/// Goal: scraping every 100 ms adds at most this share of one core to the daemon.
const TARGET_ADDED_CPU_PERCENT: f64 = 1.0;

/// Arguments of `x0t bench metrics-scrape`.
#[derive(Debug, Args)]
pub struct ScrapeArgs {
    /// Seconds of each phase (idle baseline, then scraping).
    #[arg(long, default_value_t = 20)]
    pub seconds: u64,
    /// Interval between scrapes, milliseconds.
    #[arg(long, default_value_t = 100)]
    pub interval_ms: u64,
    /// Daemons in the mesh (the scraped one links to every other).
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    /// Directory for the JSON result file.
    #[arg(long, default_value = "bench-results")]
    pub out: PathBuf,
}

#[derive(Serialize)]
struct Report {
    bench: &'static str,
    what: &'static str,
    nodes: usize,
    interval_ms: u64,
    seconds_per_phase: f64,
    scrapes: usize,
    failed_scrapes: usize,
    latency: Distribution,
    body_bytes: usize,
    series: usize,
    daemon_cpu_percent_idle: f64,
    daemon_cpu_percent_scraping: f64,
    added_cpu_percent: f64,
    cpu_us_per_scrape: f64,
    daemon_resident_bytes: u64,
    target_added_cpu_percent: f64,
    meets_target: bool,
    build_profile: &'static str,
    cores: usize,
    unix_time: u64,
}

/// Daemons started by the bench, killed (by PID) when dropped.
struct Mesh {
    children: Vec<Child>,
}

impl Drop for Mesh {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn fail(e: impl std::fmt::Display) -> Exit {
    Exit::failure(format!("bench metrics-scrape: {e}"))
}

/// Runs `x0t args…` and returns its JSON output.
fn x0t_json(exe: &Path, args: &[&str]) -> Result<serde_json::Value, Exit> {
    let out = Command::new(exe)
        .args(args)
        .env("X0T_LOG", "warn")
        .output()
        .map_err(fail)?;
    if !out.status.success() {
        return Err(fail(format!(
            "x0t {}: {}",
            args.first().copied().unwrap_or(""),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    serde_json::from_slice(&out.stdout).map_err(fail)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap_or_default()
}

/// Starts `x0t up` and returns its link and API addresses (from its startup log line).
fn up(exe: &Path, config: &Path, mesh: &mut Mesh) -> Result<(String, String), Exit> {
    let mut child = Command::new(exe)
        .args(["up", "--config", s(config)])
        .env("X0T_LOG", "info,quinn=warn,rustls=warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(fail)?;
    let stderr = child.stderr.take().ok_or_else(|| fail("no stderr"))?;
    mesh.children.push(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if !sent && line.contains("x0t up") {
                let _ = tx.send(line);
                sent = true;
            }
        }
    });
    let line = rx
        .recv_timeout(Duration::from_secs(20))
        .map_err(|_| fail("a daemon did not start within 20 s"))?;
    let field = |name: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(name))
            .map(str::to_owned)
            .ok_or_else(|| fail(format!("no {name} in {line:?}")))
    };
    Ok((field("listen=")?, field("api=")?))
}

fn write_config(dir: &Path, name: &str, peers: &[String]) -> Result<PathBuf, Exit> {
    let mut text = format!(
        "state_dir = {:?}\nlisten = \"127.0.0.1:0\"\n[dataplane]\ntun = false\n[api]\nlisten = \"127.0.0.1:0\"\n",
        s(&dir.join(name))
    );
    for p in peers {
        text.push_str(&format!("[[peers]]\naddr = {p:?}\n"));
    }
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).map_err(fail)?;
    Ok(path)
}

/// One keep-alive HTTP/1.1 connection to a daemon's API.
struct Scraper {
    sender: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    host: String,
}

impl Scraper {
    async fn connect(addr: &str) -> Result<Self, Exit> {
        let stream = tokio::net::TcpStream::connect(addr).await.map_err(fail)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(fail)?;
        tokio::spawn(conn);
        Ok(Self {
            sender,
            host: addr.to_owned(),
        })
    }

    async fn get(&mut self, path: &str) -> Result<Bytes, String> {
        self.sender.ready().await.map_err(|e| e.to_string())?;
        let req = hyper::Request::get(path)
            .header(hyper::header::HOST, &self.host)
            .body(Empty::new())
            .map_err(|e| e.to_string())?;
        let resp = self
            .sender
            .send_request(req)
            .await
            .map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("status {}", resp.status()));
        }
        Ok(resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes())
    }
}

fn cpu_seconds(pid: u32) -> Result<f64, Exit> {
    Ok(ProcessStats::read(Some(pid)).map_err(fail)?.cpu_seconds)
}

/// Runs `x0t bench metrics-scrape`.
pub fn run(args: ScrapeArgs) -> CmdResult {
    if args.nodes < 2 || args.nodes > 16 {
        return Err(Exit::usage("--nodes must be between 2 and 16"));
    }
    if args.seconds == 0 || args.interval_ms == 0 {
        return Err(Exit::usage(
            "--seconds and --interval-ms must be at least 1",
        ));
    }
    let exe = std::env::current_exe().map_err(fail)?;
    let dir = tempfile::tempdir().map_err(fail)?;
    let mut mesh = Mesh {
        children: Vec::new(),
    };
    eprintln!("starting {} daemons on loopback…", args.nodes);
    let ca = dir.path().join("n0");
    x0t_json(&exe, &["init", "--state-dir", s(&ca), "--json"])?;
    x0t_json(
        &exe,
        &[
            "ca",
            "init",
            "--trust-domain",
            "bench.mesh",
            "--state-dir",
            s(&ca),
            "--json",
        ],
    )?;
    let (ca_listen, api) = up(&exe, &write_config(dir.path(), "n0", &[])?, &mut mesh)?;
    let pid = mesh.children[0].id();
    for i in 1..args.nodes {
        let state = dir.path().join(format!("n{i}"));
        let inv = x0t_json(&exe, &["ca", "invite", "--state-dir", s(&ca), "--json"])?;
        let token = inv["token"].as_str().ok_or_else(|| fail("no token"))?;
        x0t_json(&exe, &["join", token, "--state-dir", s(&state), "--json"])?;
        let config = write_config(
            dir.path(),
            &format!("n{i}"),
            std::slice::from_ref(&ca_listen),
        )?;
        up(&exe, &config, &mut mesh)?;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(fail)?;
    let report = runtime.block_on(async {
        let mut scraper = Scraper::connect(&api).await?;
        // Wait for every link's routing session.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let links: Vec<serde_json::Value> =
                serde_json::from_slice(&scraper.get("/v1/links").await.map_err(fail)?)
                    .map_err(fail)?;
            let measured = links.iter().filter(|l| !l["routing"].is_null()).count();
            if measured + 1 >= args.nodes {
                break;
            }
            if Instant::now() > deadline {
                return Err(fail(format!(
                    "only {measured} of {} links up after 30 s",
                    args.nodes - 1
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let phase = Duration::from_secs(args.seconds);
        eprintln!("baseline: {}s without scraping…", args.seconds);
        let cpu0 = cpu_seconds(pid)?;
        let t0 = Instant::now();
        tokio::time::sleep(phase).await;
        let idle_cpu = cpu_seconds(pid)? - cpu0;
        let idle_wall = t0.elapsed().as_secs_f64();
        eprintln!(
            "scraping /metrics every {} ms for {}s…",
            args.interval_ms, args.seconds
        );
        let mut latencies = Vec::new();
        let mut failed = 0usize;
        let mut body = Bytes::new();
        let mut tick = tokio::time::interval(Duration::from_millis(args.interval_ms));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The API closes connections idle for longer than its header read timeout (the
        // baseline was longer): start the scraping phase on a fresh one.
        let mut scraper = Scraper::connect(&api).await?;
        let mut last_error = None;
        let cpu1 = cpu_seconds(pid)?;
        let t1 = Instant::now();
        while t1.elapsed() < phase {
            tick.tick().await;
            let started = Instant::now();
            match scraper.get("/metrics").await {
                Ok(b) => {
                    latencies.push(started.elapsed().as_secs_f64() * 1e6);
                    body = b;
                }
                Err(e) => {
                    failed += 1;
                    last_error = Some(e);
                    scraper = Scraper::connect(&api).await?;
                }
            }
        }
        if let Some(e) = last_error {
            eprintln!("{failed} scrapes failed; the last one: {e}");
        }
        let scrape_cpu = cpu_seconds(pid)? - cpu1;
        let scrape_wall = t1.elapsed().as_secs_f64();
        let text = String::from_utf8_lossy(&body);
        let series = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .count();
        let scrapes = latencies.len();
        let idle_pct = idle_cpu / idle_wall * 100.0;
        let scraping_pct = scrape_cpu / scrape_wall * 100.0;
        let added = scraping_pct - idle_pct;
        let added_cpu_s = scrape_cpu - idle_cpu * scrape_wall / idle_wall;
        Ok::<_, Exit>(Report {
            bench: "metrics-scrape",
            what: "GET /metrics on a running daemon linked to nodes-1 others on loopback, one \
                   keep-alive connection; the daemon's CPU time with and without scraping",
            nodes: args.nodes,
            interval_ms: args.interval_ms,
            seconds_per_phase: args.seconds as f64,
            scrapes,
            failed_scrapes: failed,
            latency: distribution(latencies),
            body_bytes: body.len(),
            series,
            daemon_cpu_percent_idle: idle_pct,
            daemon_cpu_percent_scraping: scraping_pct,
            added_cpu_percent: added,
            cpu_us_per_scrape: added_cpu_s / scrapes.max(1) as f64 * 1e6,
            daemon_resident_bytes: ProcessStats::read(Some(pid))
                .map(|p| p.resident_bytes)
                .unwrap_or(0),
            target_added_cpu_percent: TARGET_ADDED_CPU_PERCENT,
            meets_target: added <= TARGET_ADDED_CPU_PERCENT && failed == 0,
            build_profile: if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            },
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            unix_time: x0_node::time::now_secs(),
        })
    })?;
    drop(mesh);
    let (text, file) = write_report(&report, &args.out, "metrics-scrape.json")?;
    if args.json {
        println!("{text}");
    } else {
        println!(
            "{} scrapes every {} ms ({} failed): median {:.0} µs, p99 {:.0} µs; {} bytes, {} series\n\
             daemon CPU: {:.2}% idle, {:.2}% while scraped (+{:.2}% of a core, {:.0} µs per scrape; goal ≤ {}%)\n\
             written to {}",
            report.scrapes,
            report.interval_ms,
            report.failed_scrapes,
            report.latency.median_us,
            report.latency.p99_us,
            report.body_bytes,
            report.series,
            report.daemon_cpu_percent_idle,
            report.daemon_cpu_percent_scraping,
            report.added_cpu_percent,
            report.cpu_us_per_scrape,
            TARGET_ADDED_CPU_PERCENT,
            file.display()
        );
    }
    if report.build_profile == "debug" {
        eprintln!(
            "note: this is a debug build; run `cargo run --release -p x0t -- bench metrics-scrape` for real figures"
        );
    }
    Ok(())
}
