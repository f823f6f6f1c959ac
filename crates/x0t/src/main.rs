//! `x0t`: the x0tta6bl4 daemon and its command-line tool.
//!
//! A thin binary over two libraries: `x0-node`, the daemon's runtime (`up`), and `x0-bench`,
//! the benchmarks, lab and demo drivers (`bench`, `lab`, `sim`, `demo`). Here live only the
//! command-line syntax, the one-shot commands on a state directory (`init`, `identity`, `ca`,
//! `join`, `audit`) and the views of a running daemon (`status`, `peers`, … , `fault`). Exit codes follow sysexits: 64 usage or
//! configuration error, 65 bad input data, 66 missing state, 77 insecure permissions, 1 any
//! other failure.

// A binary: `pub` items are crate-visible by nature.
#![allow(unreachable_pub)]

mod cli;
mod commands;
mod ctl;
mod fault;

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
                _ => x0_node::exit::USAGE,
            };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let result = match cli.command {
        Command::Up(args) => x0_node::daemon::run(&args.config),
        other => {
            // Benchmarks provoke refusals and classical links on purpose: keep their log quiet.
            let quiet = matches!(other, Command::Bench(_));
            x0_node::logging::init_cli(cli.verbose, quiet);
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
