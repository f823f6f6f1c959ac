//! The routing core of x0tta6bl4, as a sans-IO state machine.
//!
//! It never reads a clock, draws randomness or touches a socket (`clippy.toml` enforces it): the
//! daemon and the simulator feed it inputs with the current [`time::Instant`] and take its
//! outputs and its next deadline. The same code runs in `x0t up` and in `x0-sim` at 10,000 nodes.
//!
//! | Module | Job |
//! |---|---|
//! | [`time`] | the core's notion of time |
//! | [`graph`] | dense directed graphs for path computations |
//! | [`paths`] | Dijkstra with deterministic ties, k node-disjoint paths of least total cost |
//! | [`config`] | router settings and defaults |
//! | [`quality`] | RTT/loss/jitter, cost, quality classes with hysteresis |
//! | [`liveness`] | BFD-style probing of one link |
//! | [`auth`] | advert signing and verification (ML-DSA in the daemon) |
//! | [`lsdb`] | the link-state database |
//! | [`router`] | the state machine tying it together; fast reroute |
//! | [`stats`] | counters |
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]
#![warn(missing_docs)]

pub mod auth;
pub mod config;
pub mod graph;
pub mod liveness;
pub mod lsdb;
pub mod paths;
pub mod quality;
pub mod router;
pub mod stats;
pub mod time;

#[cfg(test)]
mod insider_tests;
#[cfg(test)]
mod tests;

pub use auth::{AdvertAuth, InsecureDigestAuth, Verdict};
pub use config::RouterConfig;
pub use graph::{Graph, NodeIx};
pub use quality::QualityClass;
pub use router::{DownCause, LinkId, NextHop, Restrictions, Router, RouterEvent};
pub use stats::RouterStats;
pub use time::Instant;
pub use x0_wire::NodeId;
