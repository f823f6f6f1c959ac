//! Execute: the actions the loop asks for, the [`Executor`] trait the daemon implements, and
//! [`LocalExecutor`], an in-memory executor for tests and the simulator.
//!
//! The core emits actions through [`crate::Healer::poll_action`] and takes their results back
//! through [`crate::Healer::action_result`]; [`crate::Healer::execute_with`] does both with a
//! synchronous executor. An asynchronous executor (one that must wait for the routing actor)
//! polls actions itself and reports each result when it has it; an action with no result
//! after `plan.action_timeout_ms` counts as failed.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};
use x0_routing::{Instant, LinkId};
use x0_wire::NodeId;

use crate::incident::IncidentId;
use crate::sample::LinkRef;

/// An action's number, unique in one knowledge base.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ActionId(pub u64);

impl fmt::Display for ActionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a{}", self.0)
    }
}

/// What to do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum ActionKind {
    /// Multiply the link's routing cost (traffic moves away; the link stays as a backup).
    RaiseLinkCost {
        /// The link.
        link: LinkRef,
        /// Factor applied to its measured cost.
        factor: u32,
    },
    /// Undo [`ActionKind::RaiseLinkCost`].
    RestoreLinkCost {
        /// The link.
        link: LinkRef,
    },
    /// Stop routing over the link (keep probing it).
    ExcludeLink {
        /// The link.
        link: LinkRef,
        /// Shortest time it stays excluded, ms.
        hold_ms: u64,
    },
    /// Undo [`ActionKind::ExcludeLink`].
    IncludeLink {
        /// The link.
        link: LinkRef,
    },
    /// Stop using the node as a relay (it stays reachable as a destination; keep probing
    /// through it at a low rate).
    QuarantineNode {
        /// The node.
        node: NodeId,
        /// Shortest time it stays quarantined, ms.
        hold_ms: u64,
    },
    /// Undo [`ActionKind::QuarantineNode`].
    ReleaseNode {
        /// The node.
        node: NodeId,
    },
    /// Rekey the link's data channel now.
    RekeyLink {
        /// The link.
        link: LinkRef,
    },
    /// Close the link and dial it again at once.
    RestartLink {
        /// The link.
        link: LinkRef,
    },
    /// Rate-limit what the neighbour may send through us.
    ShedLoad {
        /// The neighbour.
        node: NodeId,
        /// Share of its traffic to drop or refuse, in `(0, 1]`.
        share: f64,
    },
    /// Undo [`ActionKind::ShedLoad`].
    RestoreLoad {
        /// The neighbour.
        node: NodeId,
    },
    /// Tell the operator (log, metric, API); change nothing.
    Alert {
        /// One line for the operator.
        summary: String,
    },
}

/// Families of actions, for success rates and back-off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionClass {
    /// [`ActionKind::RaiseLinkCost`].
    RaiseLinkCost,
    /// [`ActionKind::ExcludeLink`].
    ExcludeLink,
    /// [`ActionKind::QuarantineNode`].
    QuarantineNode,
    /// [`ActionKind::RekeyLink`].
    RekeyLink,
    /// [`ActionKind::RestartLink`].
    RestartLink,
    /// [`ActionKind::ShedLoad`].
    ShedLoad,
    /// [`ActionKind::Alert`].
    Alert,
    /// Any undo.
    Undo,
}

impl ActionClass {
    /// Every class.
    pub const ALL: [Self; 8] = [
        Self::RaiseLinkCost,
        Self::ExcludeLink,
        Self::QuarantineNode,
        Self::RekeyLink,
        Self::RestartLink,
        Self::ShedLoad,
        Self::Alert,
        Self::Undo,
    ];

    /// A stable snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RaiseLinkCost => "raise_link_cost",
            Self::ExcludeLink => "exclude_link",
            Self::QuarantineNode => "quarantine_node",
            Self::RekeyLink => "rekey_link",
            Self::RestartLink => "restart_link",
            Self::ShedLoad => "shed_load",
            Self::Alert => "alert",
            Self::Undo => "undo",
        }
    }

    /// The inverse of [`ActionClass::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// Whether the action steers traffic away from its target (its success is judged by
    /// end-to-end delivery, since the target itself stays broken).
    pub fn steers(self) -> bool {
        matches!(
            self,
            Self::RaiseLinkCost | Self::ExcludeLink | Self::QuarantineNode | Self::ShedLoad
        )
    }
}

impl ActionKind {
    /// Its family.
    pub fn class(&self) -> ActionClass {
        match self {
            Self::RaiseLinkCost { .. } => ActionClass::RaiseLinkCost,
            Self::ExcludeLink { .. } => ActionClass::ExcludeLink,
            Self::QuarantineNode { .. } => ActionClass::QuarantineNode,
            Self::RekeyLink { .. } => ActionClass::RekeyLink,
            Self::RestartLink { .. } => ActionClass::RestartLink,
            Self::ShedLoad { .. } => ActionClass::ShedLoad,
            Self::Alert { .. } => ActionClass::Alert,
            Self::RestoreLinkCost { .. }
            | Self::IncludeLink { .. }
            | Self::ReleaseNode { .. }
            | Self::RestoreLoad { .. } => ActionClass::Undo,
        }
    }

    /// Every kind's [`ActionKind::name`], in declaration order (for metrics that list every
    /// kind from the start).
    pub const NAMES: [&'static str; 11] = [
        "raise_link_cost",
        "restore_link_cost",
        "exclude_link",
        "include_link",
        "quarantine_node",
        "release_node",
        "rekey_link",
        "restart_link",
        "shed_load",
        "restore_load",
        "alert",
    ];

    /// Its snake_case name, as its serde tag (`raise_link_cost`, `restore_link_cost`, …).
    pub fn name(&self) -> &'static str {
        match self {
            Self::RaiseLinkCost { .. } => "raise_link_cost",
            Self::RestoreLinkCost { .. } => "restore_link_cost",
            Self::ExcludeLink { .. } => "exclude_link",
            Self::IncludeLink { .. } => "include_link",
            Self::QuarantineNode { .. } => "quarantine_node",
            Self::ReleaseNode { .. } => "release_node",
            Self::RekeyLink { .. } => "rekey_link",
            Self::RestartLink { .. } => "restart_link",
            Self::ShedLoad { .. } => "shed_load",
            Self::RestoreLoad { .. } => "restore_load",
            Self::Alert { .. } => "alert",
        }
    }

    /// The node it is about (for a link: the neighbour at its far end); none for an alert.
    pub fn target(&self) -> Option<NodeId> {
        match self {
            Self::RaiseLinkCost { link, .. }
            | Self::RestoreLinkCost { link }
            | Self::ExcludeLink { link, .. }
            | Self::IncludeLink { link }
            | Self::RekeyLink { link }
            | Self::RestartLink { link } => Some(link.neighbor),
            Self::QuarantineNode { node, .. }
            | Self::ReleaseNode { node }
            | Self::ShedLoad { node, .. }
            | Self::RestoreLoad { node } => Some(*node),
            Self::Alert { .. } => None,
        }
    }

    /// Whether executing it changes which paths routing may use.
    pub fn changes_routes(&self) -> bool {
        matches!(
            self,
            Self::RaiseLinkCost { .. }
                | Self::RestoreLinkCost { .. }
                | Self::ExcludeLink { .. }
                | Self::IncludeLink { .. }
                | Self::QuarantineNode { .. }
                | Self::ReleaseNode { .. }
        )
    }
}

/// An action for the executor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Action {
    /// Its number.
    pub id: ActionId,
    /// The incident it answers.
    pub incident: IncidentId,
    /// What to do.
    pub kind: ActionKind,
    /// The action this one undoes, if it is an undo.
    pub undo_of: Option<ActionId>,
    /// Why, in one line.
    pub reason: String,
}

/// What became of an action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type", content = "detail")]
pub enum ActionResult {
    /// Carried out.
    Done,
    /// Not carried out (the reason, for the record).
    Failed(String),
}

/// Carries out actions: implemented by the daemon over its own control interfaces (routing
/// actor, link manager, data plane), and by [`LocalExecutor`] in tests.
pub trait Executor {
    /// Carries out `action` at `now` and says how it went.
    fn execute(&mut self, now: Instant, action: &Action) -> ActionResult;
}

/// An in-memory executor: applies actions to a model of the node's state and keeps a log.
#[derive(Debug, Default)]
pub struct LocalExecutor {
    /// Every action executed, with when.
    pub log: Vec<(Instant, Action)>,
    /// Cost factor per raised link.
    pub raised: BTreeMap<LinkId, u32>,
    /// Excluded links.
    pub excluded: BTreeSet<LinkId>,
    /// Quarantined nodes.
    pub quarantined: BTreeSet<NodeId>,
    /// Shed share per neighbour.
    pub shed: BTreeMap<NodeId, f64>,
    /// Restarts per link.
    pub restarts: BTreeMap<LinkId, u32>,
    /// Rekeys per link.
    pub rekeys: BTreeMap<LinkId, u32>,
    /// Alerts raised.
    pub alerts: Vec<String>,
    /// Classes that fail instead of executing (to test escalation).
    pub failing: BTreeSet<ActionClass>,
}

impl LocalExecutor {
    /// An executor where everything succeeds.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Executor for LocalExecutor {
    fn execute(&mut self, now: Instant, action: &Action) -> ActionResult {
        self.log.push((now, action.clone()));
        if self.failing.contains(&action.kind.class()) {
            return ActionResult::Failed("configured to fail".into());
        }
        match &action.kind {
            ActionKind::RaiseLinkCost { link, factor } => {
                self.raised.insert(link.id, *factor);
            }
            ActionKind::RestoreLinkCost { link } => {
                self.raised.remove(&link.id);
            }
            ActionKind::ExcludeLink { link, .. } => {
                self.excluded.insert(link.id);
            }
            ActionKind::IncludeLink { link } => {
                self.excluded.remove(&link.id);
            }
            ActionKind::QuarantineNode { node, .. } => {
                self.quarantined.insert(*node);
            }
            ActionKind::ReleaseNode { node } => {
                self.quarantined.remove(node);
            }
            ActionKind::RekeyLink { link } => *self.rekeys.entry(link.id).or_insert(0) += 1,
            ActionKind::RestartLink { link } => *self.restarts.entry(link.id).or_insert(0) += 1,
            ActionKind::ShedLoad { node, share } => {
                self.shed.insert(*node, *share);
            }
            ActionKind::RestoreLoad { node } => {
                self.shed.remove(node);
            }
            ActionKind::Alert { summary } => self.alerts.push(summary.clone()),
        }
        ActionResult::Done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn action(kind: ActionKind) -> Action {
        Action {
            id: ActionId(1),
            incident: IncidentId(1),
            kind,
            undo_of: None,
            reason: String::new(),
        }
    }

    #[test]
    fn local_executor_applies_and_undoes() {
        let link = LinkRef {
            id: 9,
            neighbor: NodeId::from_bytes([9; 16]),
        };
        let mut e = LocalExecutor::new();
        let t = Instant::ZERO;
        assert_eq!(
            e.execute(t, &action(ActionKind::ExcludeLink { link, hold_ms: 1 })),
            ActionResult::Done
        );
        assert!(e.excluded.contains(&9));
        e.execute(t, &action(ActionKind::IncludeLink { link }));
        assert!(e.excluded.is_empty());
        e.failing.insert(ActionClass::RestartLink);
        assert!(matches!(
            e.execute(t, &action(ActionKind::RestartLink { link })),
            ActionResult::Failed(_)
        ));
        assert!(e.restarts.is_empty());
        assert_eq!(e.log.len(), 3);
    }

    #[test]
    fn names_lists_every_kind() {
        let link = LinkRef {
            id: 1,
            neighbor: NodeId::from_bytes([1; 16]),
        };
        let node = link.neighbor;
        let kinds = [
            ActionKind::RaiseLinkCost { link, factor: 2 },
            ActionKind::RestoreLinkCost { link },
            ActionKind::ExcludeLink { link, hold_ms: 1 },
            ActionKind::IncludeLink { link },
            ActionKind::QuarantineNode { node, hold_ms: 1 },
            ActionKind::ReleaseNode { node },
            ActionKind::RekeyLink { link },
            ActionKind::RestartLink { link },
            ActionKind::ShedLoad { node, share: 0.5 },
            ActionKind::RestoreLoad { node },
            ActionKind::Alert {
                summary: String::new(),
            },
        ];
        let names: Vec<&str> = kinds.iter().map(ActionKind::name).collect();
        assert_eq!(names, ActionKind::NAMES);
    }

    #[test]
    fn classes_round_trip_and_undo_kinds_are_undo() {
        for c in ActionClass::ALL {
            assert_eq!(ActionClass::parse(c.as_str()), Some(c));
            assert_eq!(
                serde_json::to_value(c).unwrap().as_str(),
                Some(c.as_str()),
                "serde and as_str agree"
            );
        }
        let link = LinkRef {
            id: 1,
            neighbor: NodeId::from_bytes([1; 16]),
        };
        assert_eq!(ActionKind::IncludeLink { link }.class(), ActionClass::Undo);
        let n = NodeId::from_bytes([2; 16]);
        for k in [
            ActionKind::RaiseLinkCost { link, factor: 2 },
            ActionKind::RestoreLinkCost { link },
            ActionKind::ExcludeLink { link, hold_ms: 1 },
            ActionKind::IncludeLink { link },
            ActionKind::QuarantineNode {
                node: n,
                hold_ms: 1,
            },
            ActionKind::ReleaseNode { node: n },
            ActionKind::RekeyLink { link },
            ActionKind::RestartLink { link },
            ActionKind::ShedLoad {
                node: n,
                share: 0.5,
            },
            ActionKind::RestoreLoad { node: n },
            ActionKind::Alert {
                summary: "x".into(),
            },
        ] {
            assert_eq!(serde_json::to_value(&k).unwrap()["type"], k.name());
            assert!(k.target().is_some() == !matches!(k, ActionKind::Alert { .. }));
        }
        assert!(ActionKind::ExcludeLink { link, hold_ms: 0 }.changes_routes());
        assert!(!ActionKind::RestartLink { link }.changes_routes());
    }
}
