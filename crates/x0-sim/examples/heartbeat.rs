//! Runs a scenario file with the toy heartbeat protocol on every node and prints what the
//! engine did: a smoke run for scenario files and a throughput figure for the engine, until
//! `x0t sim` runs the routing core.
//!
//! ```text
//! cargo run --release -p x0-sim --example heartbeat -- scenarios/rgg-10000-steady.toml \
//!     [--seed N] [--trace] [--interval 100ms]
//! ```
#![allow(clippy::print_stdout)]

use std::process::ExitCode;
use std::time::Duration;

use x0_sim::heartbeat::{Heartbeat, HeartbeatConfig};
use x0_sim::stats::{DropReason, peak_rss_bytes};
use x0_sim::{Scenario, TraceMode};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut path = None;
    let mut seed = None;
    let mut trace = false;
    let mut interval = Duration::from_millis(100);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--seed" => seed = it.next().and_then(|s| s.parse().ok()),
            "--trace" => trace = true,
            "--interval" => {
                interval = it
                    .next()
                    .and_then(|s| humantime::parse_duration(s).ok())
                    .unwrap_or(interval);
            }
            other => path = Some(other.to_owned()),
        }
    }
    let Some(path) = path else {
        eprintln!("usage: heartbeat SCENARIO.toml [--seed N] [--trace] [--interval 100ms]");
        return ExitCode::from(64);
    };
    let scenario = match Scenario::from_file(&path) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(64);
        }
    };
    let build = std::time::Instant::now();
    let instance = match scenario.instantiate(seed) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("{path}: {e}");
            return ExitCode::from(64);
        }
    };
    let cfg = HeartbeatConfig {
        interval,
        record_transitions: false,
        ..HeartbeatConfig::default()
    };
    let mut sim = match instance.sim(move |me| Heartbeat::new(me, cfg)) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{path}: {e}");
            return ExitCode::from(64);
        }
    };
    if trace {
        sim.set_trace(TraceMode::Digest);
    }
    let build = build.elapsed();
    sim.run_until(instance.end());
    let st = sim.stats();
    let secs = instance.duration.as_secs_f64();
    let wall = st.wall.as_secs_f64();
    let t = &instance.topology;
    println!("scenario            {path}");
    println!("seed                {}", instance.seed);
    println!(
        "nodes / links       {} / {} (average degree {:.2}, components {}, links added to connect {})",
        t.node_count(),
        t.link_count(),
        t.average_degree(),
        t.components(),
        t.added_links()
    );
    println!("build               {:.3} s", build.as_secs_f64());
    println!("simulated           {secs:.1} s");
    println!("wall                {wall:.3} s");
    println!("events              {}", st.events);
    println!(
        "events/s            {:.0}",
        st.events as f64 / wall.max(1e-9)
    );
    println!("timeouts            {}", st.timeouts);
    println!("delivered           {}", st.delivered);
    for r in DropReason::ALL {
        println!("dropped {:<11} {}", r.name(), st.drops.get(r));
    }
    println!(
        "bytes/node/s        {:.1}",
        st.sent_bytes() as f64 / f64::from(t.node_count()) / secs
    );
    if let Some(rss) = peak_rss_bytes() {
        println!("peak RSS            {:.1} MiB", rss as f64 / 1048576.0);
    }
    if let Some(d) = sim.trace().digest() {
        println!(
            "trace digest        {d:016x} ({} records)",
            sim.trace().len()
        );
    }
    ExitCode::SUCCESS
}
