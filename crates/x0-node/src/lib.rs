//! The x0tta6bl4 daemon's runtime as a library: everything `x0t up` runs.
//!
//! The protocol logic lives in the sans-IO crates (`x0-link`'s handshake rules, `x0-routing`,
//! `x0-dataplane`, `x0-heal`); this crate is the thin tokio shell that feeds them real sockets,
//! a TUN device, the clock and the state database, and shows what they do through an HTTP API
//! and Prometheus metrics. The command-line tool (`x0t`) and the benchmark harness
//! (`x0-bench`) use it; neither reaches into the daemon's tasks.
//!
//! | Module | Job |
//! |---|---|
//! | [`daemon`] | `x0t up`: the tasks and who owns what (see its module doc) |
//! | [`config`] | the configuration file: one documented serde struct, checked at start |
//! | [`api`] | the HTTP API (axum, OpenAPI) and the shapes it answers with |
//! | [`client`] | a client for that API (the CLI's views, the benchmarks) |
//! | [`metrics`] | Prometheus encoding helpers and the process's own statistics |
//! | [`fault`] | the dangerous, off-by-default fault injection for labs |
//! | [`state`] | `meta` keys and the CA node's own SVID in the state directory |
//! | [`exit`] | errors carrying a sysexits code |
//! | [`logging`], [`time`], [`text`] | log setup, the wall clock for identity decisions, text output |
//!
//! Internal shells (not public): `routing` (the routing task around `x0-routing`),
//! `dataplane` and `dataio` (TUN, UDP GSO/GRO, forwarding around `x0-dataplane`), `heal` (the
//! self-healing loop's thread around `x0-heal`), `shed` (load shedding), `ebpf` (the
//! `x0-telemetry` programs in the daemon), `netwatch` (rtnetlink watcher).

#![warn(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod api;
pub mod client;
pub mod config;
pub mod daemon;
mod dataio;
mod dataplane;
mod ebpf;
pub mod exit;
pub mod fault;
mod heal;
pub mod logging;
pub mod metrics;
mod netwatch;
mod routing;
mod shed;
pub mod state;
pub mod text;
pub mod time;
