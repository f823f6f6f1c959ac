//! What the loop hands out for the knowledge base and the audit log.
//!
//! The core does no I/O: it queues [`Record`]s, the daemon drains them with
//! [`crate::Healer::poll_record`] and writes them with
//! [`crate::knowledge::KnowledgeBase::persist`], which stores the knowledge rows and, for
//! every record that [`Record::audited`] says so, a signed audit entry, in one transaction.

use serde::Serialize;

use crate::action::{Action, ActionClass, ActionId, ActionResult};
use crate::config::Mode;
use crate::detect::{Baseline, Symptom};
use crate::health::HealthState;
use crate::incident::{Cause, IncidentId, Problem, Resolution};
use crate::plan::Refusal;

/// A candidate the planner skipped, and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Skipped {
    /// The candidate.
    pub class: ActionClass,
    /// Why.
    pub why: Refusal,
}

/// One fact for the knowledge base (and, if audited, the audit log).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Record {
    /// An incident was opened.
    IncidentOpened {
        /// The incident.
        incident: IncidentId,
        /// Suspected cause.
        cause: Cause,
        /// Problem.
        problem: Problem,
        /// Confidence.
        confidence: f64,
        /// The first symptom, in words.
        symptom: String,
    },
    /// An incident's cause, problem or confidence changed.
    IncidentChanged {
        /// The incident.
        incident: IncidentId,
        /// Suspected cause.
        cause: Cause,
        /// Problem.
        problem: Problem,
        /// Confidence.
        confidence: f64,
    },
    /// A symptom of an incident (the first `max_symptoms_recorded` per incident).
    Symptom {
        /// The incident.
        incident: IncidentId,
        /// The symptom.
        symptom: Symptom,
    },
    /// An incident was closed.
    IncidentClosed {
        /// The incident.
        incident: IncidentId,
        /// Its final cause.
        cause: Cause,
        /// Its final problem.
        problem: Problem,
        /// How it ended.
        resolution: Resolution,
        /// How long it was open, ms.
        open_ms: u64,
        /// Symptoms absorbed.
        symptoms: u64,
    },
    /// The planner chose an action (in observe mode: would have).
    ActionPlanned {
        /// The action.
        action: Action,
        /// `act`: handed to the executor; `observe`: only recorded.
        mode: Mode,
        /// Its ranking score (0 for undos and alerts).
        score: f64,
        /// Better-ranked candidates that were refused.
        skipped: Vec<Skipped>,
    },
    /// The executor reported on an action.
    ActionFinished {
        /// The action.
        action: ActionId,
        /// Its class.
        class: ActionClass,
        /// What happened.
        result: ActionResult,
    },
    /// Whether an action was followed by recovery.
    Outcome {
        /// The action.
        action: ActionId,
        /// Its incident.
        incident: IncidentId,
        /// Its class.
        class: ActionClass,
        /// The problem it addressed.
        problem: Problem,
        /// Recovered within the outcome window.
        recovered: bool,
        /// Time from the action to recovery, ms.
        recover_ms: Option<u64>,
    },
    /// The health state changed.
    Health {
        /// The new state.
        state: HealthState,
        /// Why.
        reasons: Vec<String>,
    },
    /// Learned baselines (periodically).
    Baselines {
        /// The baselines.
        baselines: Vec<Baseline>,
    },
    /// The mode changed.
    ModeChanged {
        /// The new mode.
        mode: Mode,
    },
}

impl Record {
    /// The record's type name (`incident_opened`, `action_planned`, …).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::IncidentOpened { .. } => "incident_opened",
            Self::IncidentChanged { .. } => "incident_changed",
            Self::Symptom { .. } => "symptom",
            Self::IncidentClosed { .. } => "incident_closed",
            Self::ActionPlanned { .. } => "action_planned",
            Self::ActionFinished { .. } => "action_finished",
            Self::Outcome { .. } => "outcome",
            Self::Health { .. } => "health",
            Self::Baselines { .. } => "baselines",
            Self::ModeChanged { .. } => "mode_changed",
        }
    }

    /// Whether it goes into the audit log: every incident and action event, outcomes and
    /// mode changes; not symptoms, health changes or baselines (they are in the knowledge
    /// base).
    pub fn audited(&self) -> bool {
        matches!(
            self,
            Self::IncidentOpened { .. }
                | Self::IncidentChanged { .. }
                | Self::IncidentClosed { .. }
                | Self::ActionPlanned { .. }
                | Self::ActionFinished { .. }
                | Self::Outcome { .. }
                | Self::ModeChanged { .. }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_matches_the_serde_tag() {
        let recs = [
            Record::ModeChanged {
                mode: Mode::Observe,
            },
            Record::Health {
                state: HealthState::Optimal,
                reasons: vec![],
            },
            Record::Baselines { baselines: vec![] },
            Record::ActionFinished {
                action: ActionId(1),
                class: ActionClass::Alert,
                result: ActionResult::Done,
            },
        ];
        for r in recs {
            let v = serde_json::to_value(&r).unwrap();
            assert_eq!(v["type"], r.kind());
        }
        assert!(Record::ModeChanged { mode: Mode::Act }.audited());
        assert!(!Record::Baselines { baselines: vec![] }.audited());
    }
}
