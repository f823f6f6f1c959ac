//! `x0t`: the x0tta6bl4 daemon and its command-line tool.
//!
//! One thin binary over the library crates: `init`, `identity`, `ca`, `join` work on a state
//! directory; `up` runs the daemon; `bench` measures. Exit codes follow sysexits: 64 usage or
//! configuration error, 65 bad input data, 66 missing state, 77 insecure permissions, 1 any
//! other failure.

// A binary: `pub` items are crate-visible by nature.
#![allow(unreachable_pub)]

mod api;
mod bench;
mod bench_ebpf;
mod bench_failover;
mod bench_heal;
mod bench_heal_sim;
mod bench_scrape;
mod bench_throughput;
mod cli;
mod commands;
mod config;
mod ctl;
mod daemon;
mod dataio;
mod dataplane;
mod demo;
mod ebpf;
mod exit;
mod fault;
mod heal;
mod lab;
mod logging;
mod metrics;
mod netwatch;
mod routing;
mod routing_auth;
mod shed;
mod sim;
mod time;

use std::process::ExitCode;

/// mimalloc: the simulator allocates and frees a buffer per simulated datagram (tens of
/// millions per run) and the daemon one per control message; measured faster than the system
/// allocator for both (docs/decisions.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;

use crate::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => 0,
                _ => exit::USAGE,
            };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let result = match cli.command {
        Command::Up(args) => daemon::run(args),
        other => {
            // Benchmarks provoke refusals and classical links on purpose: keep their log quiet.
            let quiet = matches!(other, Command::Bench(_));
            logging::init_cli(cli.verbose, quiet);
            commands::run(other)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("x0t: error: {}", e.message);
            ExitCode::from(e.code)
        }
    }
}
