//! Log setup: `tracing` to stderr, level from `X0T_LOG` (default `info`).

use std::io::IsTerminal as _;

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

fn filter(default: &str) -> EnvFilter {
    EnvFilter::try_from_env("X0T_LOG").unwrap_or_else(|_| EnvFilter::new(default))
}

/// Logging for one-shot commands: warnings (errors only when `quiet`), more with `-v`.
pub fn init_cli(verbosity: u8, quiet: bool) {
    let level = match (quiet, verbosity) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        _ => "debug",
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter(level))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .try_init();
}

/// Logging for the daemon.
pub fn init_daemon(format: LogFormat) {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter("info"))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
