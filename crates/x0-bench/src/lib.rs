//! The x0tta6bl4 benchmark and lab harness: the system benchmarks (`x0t bench …`), the lab
//! commands (`x0t lab …`), the demo (`x0t demo`) and the simulator's runner (`x0t sim`).
//!
//! Every benchmark runs x0t and the reference it is judged against side by side in the same
//! run (raw veth, wireguard-go, Nebula, Yggdrasil, a bare handshake, …), prints ratios and
//! writes its result as JSON under `bench-results/` ([`report::write_report`]). Real daemons
//! are started as `x0t up` processes (the running executable), in network namespaces for the
//! lab benchmarks ([`lab`]) or on loopback.
//!
//! | Module | Command |
//! |---|---|
//! | [`handshake`] | `x0t bench handshake`: PQ link setup on loopback |
//! | [`throughput`] | `x0t bench throughput`: overlay TCP throughput and ping against the peers |
//! | [`failover`] | `x0t bench failover`: outage when a path is cut or a relay killed |
//! | [`heal`], [`heal_sim`] | `x0t bench heal [--sim]`: self-healing scenarios |
//! | [`ebpf`] | `x0t bench ebpf-overhead`: the cost of the eBPF programs |
//! | [`scrape`] | `x0t bench metrics-scrape`: the cost of `/metrics` |
//! | [`lab`] | `x0t lab …`: namespaces, veth links and daemons |
//! | [`demo`] | `x0t demo`: a ring on loopback loses a relay and heals |
//! | [`sim`] | `x0t sim`: a simulator scenario with its report and plot |

#![warn(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod ceiling;
pub mod demo;
pub mod ebpf;
pub mod failover;
pub mod handshake;
pub mod heal;
pub mod heal_sim;
pub mod lab;
pub mod report;
pub mod scrape;
pub mod sim;
pub mod throughput;
