//! `x0t sim`: a scenario run with the routing core on every simulated node.

use std::io::IsTerminal as _;

use indicatif::{ProgressBar, ProgressStyle};
use x0_sim::experiment::{self, ExperimentConfig, Report};
use x0_sim::{Instant, Scenario};

use crate::cli::SimArgs;
use crate::exit::{self, CmdResult, Exit};

pub fn run(args: SimArgs) -> CmdResult {
    let scenario =
        Scenario::from_file(&args.scenario).map_err(|e| Exit::new(exit::USAGE, e.to_string()))?;
    let instance = scenario
        .instantiate(args.seed)
        .map_err(|e| Exit::new(exit::USAGE, e.to_string()))?;
    let total = instance.duration.as_micros() as u64;
    let bar = if std::io::stderr().is_terminal() {
        ProgressBar::new(total.max(1))
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:40}] {percent}% of simulated time ({elapsed})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message(format!("sim {} nodes", instance.topology.node_count()));
    let cfg = ExperimentConfig {
        sample_pairs: args.sample_pairs,
        ..ExperimentConfig::default()
    };
    let report = experiment::run(&instance, &cfg, &mut |t: Instant| {
        bar.set_position(t.as_micros())
    })
    .map_err(|e| Exit::failure(format!("simulation: {e}")))?;
    bar.finish_and_clear();
    let name = args
        .scenario
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "scenario".into());
    let text = serde_json::to_string_pretty(&report).map_err(|e| Exit::failure(e.to_string()))?;
    if let Some(dir) = &args.out {
        std::fs::create_dir_all(dir)
            .map_err(|e| Exit::failure(format!("{}: {e}", dir.display())))?;
        let file = dir.join(format!("sim-{name}.json"));
        std::fs::write(&file, format!("{text}\n"))
            .map_err(|e| Exit::failure(format!("{}: {e}", file.display())))?;
    }
    if args.json {
        println!("{text}");
    } else {
        print_summary(&name, &report);
    }
    Ok(())
}

fn opt(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.0}")).unwrap_or_else(|| "-".into())
}

fn print_summary(name: &str, r: &Report) {
    println!(
        "{name}: {} nodes, {} links, {:.0} s simulated in {:.1} s wall (seed {}, peak RSS {:.0} MiB)",
        r.nodes, r.links, r.simulated_s, r.wall_s, r.seed, r.peak_rss_mb
    );
    println!("cold start converged in {} ms", opt(r.initial_converge_ms));
    println!(
        "{:<14} {:>8} {:>10} {:>11} {:>12} {:>9}",
        "event", "at s", "detect ms", "reroute ms", "converge ms", "affected"
    );
    for e in &r.events {
        println!(
            "{:<14} {:>8.1} {:>10} {:>11} {:>12} {:>9}",
            e.kind,
            e.at_s,
            opt(e.detect_ms),
            opt(e.reroute_ms),
            opt(e.converge_ms),
            e.affected_pairs
        );
    }
    println!(
        "end: {} of {} sampled connected pairs checked: {} loops, {} unreachable",
        r.pairs_checked, r.pairs_checked, r.loops_found, r.unreachable_pairs
    );
    println!(
        "control traffic: {:.0} B/node/s overall, {:.0} B/node/s steady; route updates {:.3}/node/s steady = {:.4} × a Babel-style protocol ({}/node/s)",
        r.control_bytes_per_node_per_s,
        r.steady_control_bytes_per_node_per_s,
        r.steady_updates_per_node_per_s,
        r.updates_ratio_vs_babel_style,
        r.babel_style_updates_per_node_per_s
    );
}
