//! Runs scenario files with the routing core on every node (the experiment `x0t sim` runs)
//! and prints each report; the figures of `docs/benchmarks.md` ("Routing at scale") come from
//! it, without building the daemon.
//!
//! ```text
//! cargo run --release -p x0-sim --example routing -- SCENARIO.toml [SCENARIO.toml ...] \
//!     [--seed N] [--sample-pairs N] [--out DIR] [--session NAME] [--hubs K]
//! ```
//!
//! Several scenarios run one after the other in the same process, so that their wall times
//! are comparable (same machine, same load). With `--out DIR` each report goes to
//! `DIR/sim-<scenario>.json`; with `--session NAME` also `DIR/NAME.json`: every run's wall
//! time and CPU time (user + system, the whole experiment: less sensitive to other load on a
//! shared machine) and each one's ratio to the first scenario's. `--hubs K` prints the K nodes of highest
//! degree of each topology and runs nothing.
#![allow(clippy::print_stdout)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use x0_sim::Scenario;
use x0_sim::experiment::{self, ExperimentConfig, Report};

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Args {
    paths: Vec<PathBuf>,
    seed: Option<u64>,
    sample_pairs: usize,
    out: Option<PathBuf>,
    session: Option<String>,
    hubs: Option<usize>,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        paths: Vec::new(),
        seed: None,
        sample_pairs: ExperimentConfig::default().sample_pairs,
        out: None,
        session: None,
        hubs: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--seed" => a.seed = Some(value("--seed")?.parse().map_err(|e| format!("{e}"))?),
            "--sample-pairs" => {
                a.sample_pairs = value("--sample-pairs")?
                    .parse()
                    .map_err(|e| format!("{e}"))?;
            }
            "--out" => a.out = Some(PathBuf::from(value("--out")?)),
            "--session" => a.session = Some(value("--session")?),
            "--hubs" => a.hubs = Some(value("--hubs")?.parse().map_err(|e| format!("{e}"))?),
            s if s.starts_with("--") => return Err(format!("unknown flag {s}")),
            _ => a.paths.push(PathBuf::from(arg)),
        }
    }
    if a.paths.is_empty() {
        return Err("no scenario file".into());
    }
    if a.session.is_some() && a.out.is_none() {
        return Err("--session needs --out DIR".into());
    }
    Ok(a)
}

/// CPU time this process has used (user + system), seconds; 0 where `/proc` is missing. On a
/// shared machine wall time depends on the other load; CPU time much less.
fn cpu_s() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the command name (which is in parentheses and may contain spaces).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    (ticks(11) + ticks(12)) / 100.0
}

fn name_of(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "scenario".into())
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            eprintln!(
                "usage: routing SCENARIO.toml [...] [--seed N] [--sample-pairs N] [--out DIR] \
                 [--session NAME] [--hubs K]"
            );
            return ExitCode::from(64);
        }
    };
    let mut runs: Vec<(String, Report, f64)> = Vec::new();
    for path in &args.paths {
        let instance = match Scenario::from_file(path).and_then(|s| s.instantiate(args.seed)) {
            Ok(i) => i,
            Err(e) => {
                eprintln!("{}: {e}", path.display());
                return ExitCode::from(64);
            }
        };
        let name = name_of(path);
        if let Some(k) = args.hubs {
            let topo = &instance.topology;
            let mut degree = vec![0u32; topo.node_count() as usize];
            for l in topo.links() {
                degree[l.a as usize] += 1;
                degree[l.b as usize] += 1;
            }
            let mut order: Vec<usize> = (0..degree.len()).collect();
            order.sort_by_key(|&i| (std::cmp::Reverse(degree[i]), i));
            let top: Vec<String> = order
                .iter()
                .take(k)
                .map(|&i| format!("{i} ({})", degree[i]))
                .collect();
            println!(
                "{name}: {} nodes, {} links, mean degree {:.2}; highest degree: {}",
                topo.node_count(),
                topo.link_count(),
                topo.average_degree(),
                top.join(", ")
            );
            continue;
        }
        let cfg = ExperimentConfig {
            sample_pairs: args.sample_pairs,
            ..ExperimentConfig::default()
        };
        eprintln!("running {name} ...");
        let cpu_before = cpu_s();
        let report = match experiment::run(&instance, &cfg, &mut |_| {}) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("{name}: simulation: {e}");
                return ExitCode::FAILURE;
            }
        };
        let text = match serde_json::to_string_pretty(&report) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
        };
        let cpu = cpu_s() - cpu_before;
        println!("{name}:\n{text}\ncpu_s (whole experiment): {cpu:.1}");
        if let Some(dir) = &args.out {
            let file = dir.join(format!("sim-{name}.json"));
            if let Err(e) = std::fs::write(&file, format!("{text}\n")) {
                eprintln!("{}: {e}", file.display());
                return ExitCode::FAILURE;
            }
        }
        runs.push((name, report, cpu));
    }
    if let (Some(dir), Some(session)) = (&args.out, &args.session) {
        let reference = runs.first().map_or(1.0, |(_, r, _)| r.wall_s.max(1e-9));
        let cpu_reference = runs.first().map_or(1.0, |(_, _, c)| c.max(1e-9));
        let rows: Vec<serde_json::Value> = runs
            .iter()
            .map(|(name, r, cpu)| {
                serde_json::json!({
                    "scenario": name,
                    "nodes": r.nodes,
                    "links": r.links,
                    "simulated_s": r.simulated_s,
                    "wall_s": r.wall_s,
                    "sim_events": r.sim_events,
                    "wall_ratio_vs_first": r.wall_s / reference,
                    "cpu_s": cpu,
                    "cpu_ratio_vs_first": cpu / cpu_reference,
                    "initial_converge_ms": r.initial_converge_ms,
                    "events": r.events,
                })
            })
            .collect();
        let doc = serde_json::json!({
            "command": std::env::args().collect::<Vec<_>>().join(" "),
            "runs": rows,
        });
        let file = dir.join(format!("{session}.json"));
        let text = serde_json::to_string_pretty(&doc).unwrap_or_default();
        if let Err(e) = std::fs::write(&file, format!("{text}\n")) {
            eprintln!("{}: {e}", file.display());
            return ExitCode::FAILURE;
        }
        for (name, r, cpu) in &runs {
            println!(
                "{name}: wall {:.1} s ({:.2}x the first), cpu {cpu:.1} s ({:.2}x)",
                r.wall_s,
                r.wall_s / reference,
                cpu / cpu_reference
            );
        }
    }
    ExitCode::SUCCESS
}
