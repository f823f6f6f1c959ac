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
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]
#![warn(missing_docs)]

pub mod graph;
pub mod time;

pub use graph::{Graph, NodeIx};
pub use time::Instant;
pub use x0_wire::NodeId;
