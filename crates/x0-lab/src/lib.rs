//! The real-kernel lab of x0tta6bl4: small meshes of Linux network namespaces on one machine.
//!
//! Each node of a [`Topology`] (line, ring, grid, full, or a TOML edge list) becomes a network
//! namespace `x0lab-<lab>-<node>`; each link a veth pair created directly inside the two
//! namespaces, with a /30 from `10.213.0.0/16`. Every node also holds a /32 from
//! `10.214.0.0/16` on its loopback. Optional static underlay routes let the kernel forward
//! across relays, for peers that cannot relay themselves.
//!
//! Impairments are real kernel ones: loss through nftables (`numgen random mod 100 < N drop`,
//! per link and direction, changeable at runtime — this kernel has no netem), links set
//! down/up, and `tc tbf` rate limits.
//!
//! Processes run inside the namespaces (`ip netns exec`) and are tracked by PID and start
//! time. A [`Lab`] returned by [`Lab::up`] is an RAII guard: dropping it, also during a panic,
//! stops its processes by PID and deletes its namespaces. A state file
//! (`/run/x0lab/<lab>/state.json`) lists what was made, and [`down`] removes a lab from any
//! process, also after a crash, by state file and by namespace prefix.
//!
//! It is the layer under `x0t lab` and `x0t bench throughput`, and under the real-kernel
//! tests (design §7, layer 4); the daemon is started in the nodes through [`Lab::spawn`].
//!
//! | Module | Job |
//! |---|---|
//! | [`names`] | checked lab and node names, namespace and interface names |
//! | [`topology`] | shapes, topology files, shortest-path next hops, the address plan |
//! | [`state`] | the state file |
//! | [`process`] | `/proc/PID/stat`, stopping a process only if it is still ours |
//! | [`tools`] | `ip`, `nft`, `tc`, the root check |
//!
//! Everything needs root; [`preflight`] says what is missing (and which apt package has it).
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]
#![warn(missing_docs)]

mod lab;
pub mod names;
pub mod process;
pub mod state;
pub mod tools;
pub mod topology;

pub use lab::{
    Lab, LabError, LabSpec, NFT_TABLE, Neighbour, STOP_GRACE, SpawnOptions, TeardownReport, down,
    down_all, list,
};
pub use names::{LabName, NodeName};
pub use process::{ProcessRecord, Stopped};
pub use state::{DEFAULT_RUN_DIR, LabState, LinkState, NodeState};
pub use tools::{PreflightError, preflight};
pub use topology::{Shape, Topology};
