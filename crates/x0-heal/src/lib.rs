//! The self-healing core of x0tta6bl4: a MAPE-K loop (Monitor, Analyze, Plan, Execute over
//! Knowledge) as a sans-IO state machine.
//!
//! The core never reads a clock, draws randomness or opens a socket (`clippy.toml` bans
//! them): the daemon feeds it samples with the current time and takes its actions, records
//! and next deadline, exactly like the routing core. The same code runs in `x0t up`, in the
//! simulator and in the scenario tests of this crate (`tests/scenarios.rs`), which drive it
//! through seven kinds of fault in simulated time. Only the knowledge base does I/O (SQLite),
//! and it sits outside the state machine: the daemon drains [`Healer::poll_record`] into
//! [`KnowledgeBase::persist`].
//!
//! | Module | Job |
//! |---|---|
//! | [`sample`] | typed inputs: link, end-to-end probe, drop counters, eBPF, process |
//! | [`monitor`] | sanitising values, counters to rates (resets, gaps) |
//! | [`detect`] | the [`Detector`] trait; EWMA/z-score, CUSUM, rules, path differential |
//! | [`incident`] | correlating symptoms into incidents with cause and confidence |
//! | [`topology`] | the mesh graph and the exact "never partition" check |
//! | [`probe`] | the end-to-end prober: destinations, paths, losses, [`PathProbe`] samples |
//! | [`plan`] | candidates, ranking by success rates, safety rules, token bucket, back-off |
//! | [`action`] | actions, the [`Executor`] trait, an in-memory executor |
//! | [`health`] | OPTIMAL / DEGRADED / CRITICAL / RECOVERING and the sampling interval |
//! | [`healer`] | the loop itself: [`Healer`] |
//! | [`record`] | what the loop hands out for knowledge and audit |
//! | [`knowledge`] | the SQLite knowledge base |
//! | [`audit`] | the hash-chained, ML-DSA-65-signed audit log |
//! | [`config`] | [`HealConfig`], the `[heal]` section, with defaults |
//!
//! See `docs/heal.md` for the loop, every parameter and what the daemon must provide.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]
#![warn(missing_docs)]

pub mod action;
pub mod audit;
pub mod config;
pub mod detect;
pub mod healer;
pub mod health;
pub mod incident;
pub mod knowledge;
pub mod monitor;
pub mod plan;
pub mod probe;
pub mod record;
pub mod sample;
pub mod topology;

pub use action::{
    Action, ActionClass, ActionId, ActionKind, ActionResult, Executor, LocalExecutor,
};
pub use audit::{AuditEntry, AuditError, AuditLog, Flaw, Verified};
pub use config::{ConfigError, HealConfig, Mode};
pub use detect::{Baseline, BaselineKey, Detector, Symptom, SymptomKind};
pub use healer::{HealStats, Healer, KnowledgeSnapshot, Offence, Restriction};
pub use health::{Health, HealthState};
pub use incident::{Cause, Incident, IncidentId, Problem, Resolution};
pub use knowledge::{KnowledgeBase, KnowledgeError};
pub use plan::{SuccessRates, SuccessStats};
pub use probe::{ProbeSend, ProbeTarget, Prober};
pub use record::Record;
pub use sample::{
    DownCause, DropCounters, KernelCounters, LinkRef, LinkSample, LinkState, Metric, PathProbe,
    ProcessStats, Sample, Subject,
};
pub use topology::Topology;
pub use x0_routing::Instant;
pub use x0_wire::NodeId;
