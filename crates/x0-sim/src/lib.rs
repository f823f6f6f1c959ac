//! The deterministic network simulator of x0tta6bl4.
//!
//! It runs many nodes' protocol cores — sans-IO state machines behind the [`SimNode`] trait,
//! the same code the daemon runs — over virtual links with latency, jitter, loss and bandwidth,
//! in virtual time, from a seed: the same seed gives the same run, event for event, and the
//! same [trace digest](trace). Scenarios (a topology, link defaults, a duration and timed
//! faults) are TOML files, documented in `docs/sim.md`; `x0t sim` is the command that runs
//! them with the routing core.
//!
//! | Module | Job |
//! |---|---|
//! | [`engine`] | the event queue, the node trait, link and node faults |
//! | [`link`] | what one direction of a link does to a datagram |
//! | [`topology`] | ring, grid, random-geometric, scale-free, Erdős–Rényi and explicit topologies |
//! | [`scenario`] | TOML scenario files: parsing, checking (with line and key), building a run |
//! | [`stats`] | traffic and drop counters, peak memory |
//! | [`trace`] | the record of a run and its digest |
//! | [`rng`] | the seeded ChaCha8 streams every random draw comes from |
//! | [`heartbeat`] | a toy liveness protocol that exercises the engine |
//! | [`routing`] | the routing core (`x0_routing::Router`) as a simulated node |
//! | [`experiment`] | runs a scenario with the routing core and measures detect, reroute, converge |
//!
//! Determinism holds as long as the nodes are deterministic themselves: they must take time
//! only from the `now` they are given and randomness only from a seed (see [`rng::Stream::User`]).
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]
#![warn(missing_docs)]

pub mod engine;
pub mod experiment;
pub mod heartbeat;
pub mod link;
mod queue;
pub mod rng;
pub mod routing;
pub mod scenario;
pub mod stats;
pub mod telemetry;
pub mod topology;
pub mod trace;

pub use engine::{Event, LinkStatus, Outbox, Sim, SimError, SimNode};
pub use link::LinkParams;
pub use scenario::{Instance, Scenario, ScenarioError};
pub use stats::{DropReason, Stats};
pub use topology::{Generator, Topology};
pub use trace::TraceMode;
pub use x0_routing::Instant;

/// A node's index in the simulation, `0..node_count`.
pub type NodeIx = u32;
/// A link's index in the simulation, `0..link_count`.
pub type LinkIx = u32;
