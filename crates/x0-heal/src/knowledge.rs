//! Knowledge: the SQLite knowledge base of the loop, and the home of its audit log.
//!
//! One SQLite file (the daemon's `state.db`, or any other path), opened on its own connection.
//! All tables are prefixed `heal_`, and the schema version lives in `heal_meta` rather than in
//! `PRAGMA user_version`, so the file can be shared with `x0_identity::StateStore`.
//!
//! * **WAL** with **`synchronous=FULL`**: every transaction is on disk when `persist` returns,
//!   also across a power cut. The audit log is evidence, and an entry the node acted on must
//!   not vanish; `persist` writes a whole batch of records (one loop step) in one transaction,
//!   so the cost is one WAL fsync per batch, at most a few per second.
//! * A damaged or foreign file is **reported** ([`KnowledgeError::Corrupt`]), never repaired,
//!   rewritten or replaced: `open` runs `PRAGMA quick_check` first and writes nothing if it
//!   fails.
//!
//! | Table | Holds |
//! |---|---|
//! | `heal_incidents` | one row per incident: cause, problem, confidence, open/close times, resolution |
//! | `heal_symptoms` | the first symptoms of each incident |
//! | `heal_actions` | every planned action (act or observe), its result |
//! | `heal_outcomes` | per action: recovered or not, and how fast |
//! | `heal_success_rates` (view) | per action class and problem: attempts, successes, mean recovery time |
//! | `heal_baselines` | learned baselines per neighbour/node/this node and metric |
//! | `heal_health` | health state changes |
//! | `heal_audit` | the signed hash chain ([`crate::audit`]) |
//! | `heal_meta` | schema version, mode |

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension, TransactionBehavior, params};
use thiserror::Error;
use x0_identity::NodeKeys;
use x0_wire::NodeId;

use crate::action::ActionClass;
use crate::audit::{self, AuditError, AuditLog};
use crate::detect::Baseline;
use crate::healer::{KnowledgeSnapshot, Offence};
use crate::incident::Problem;
use crate::plan::{SuccessRates, SuccessStats};
use crate::record::Record;

const SCHEMA_VERSION: i64 = 1;

/// Failures of the knowledge base.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum KnowledgeError {
    /// The file is damaged or is not a knowledge base. Nothing was changed.
    #[error("{path}: knowledge base is damaged ({detail}); it was left untouched")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What was found.
        detail: String,
    },
    /// Written by a newer x0t.
    #[error("knowledge base schema {found} is newer than this x0t supports ({supported})")]
    NewerSchema {
        /// Found.
        found: i64,
        /// Supported.
        supported: i64,
    },
    /// No file where one is required.
    #[error("{0}: no knowledge base here")]
    Missing(PathBuf),
    /// A filesystem error.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// An SQLite error.
    #[error("knowledge base: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A value could not be encoded.
    #[error("knowledge base: {0}")]
    Json(#[from] serde_json::Error),
    /// The audit log failed.
    #[error(transparent)]
    Audit(#[from] AuditError),
}

/// An incident as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct IncidentRow {
    /// Its number.
    pub id: u64,
    /// Opened (Unix ms).
    pub opened_unix_ms: u64,
    /// Closed (Unix ms).
    pub closed_unix_ms: Option<u64>,
    /// Cause, as JSON.
    pub cause: String,
    /// Problem.
    pub problem: String,
    /// Confidence.
    pub confidence: f64,
    /// Resolution, as JSON, once closed.
    pub resolution: Option<String>,
    /// The first symptom, in words.
    pub first_symptom: String,
    /// Symptoms absorbed (known once closed; 0 while open).
    pub symptoms: u64,
}

/// An action as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct ActionRow {
    /// Its number.
    pub id: u64,
    /// Its incident.
    pub incident: u64,
    /// Its class.
    pub class: String,
    /// The action, as JSON.
    pub kind: String,
    /// `act` or `observe`.
    pub mode: String,
    /// The action it undoes.
    pub undo_of: Option<u64>,
    /// Result, as JSON, once known.
    pub result: Option<String>,
    /// When it was planned (Unix ms).
    pub planned_unix_ms: u64,
    /// When its result came (Unix ms).
    pub finished_unix_ms: Option<u64>,
    /// Why, in one line.
    pub reason: String,
}

/// The knowledge base (see the module doc).
#[derive(Debug)]
pub struct KnowledgeBase {
    conn: Connection,
    path: PathBuf,
}

fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn u(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

const SCHEMA: &str = "
    CREATE TABLE heal_incidents (
        id INTEGER PRIMARY KEY,
        opened_unix_ms INTEGER NOT NULL,
        closed_unix_ms INTEGER,
        cause TEXT NOT NULL,
        problem TEXT NOT NULL,
        confidence REAL NOT NULL,
        resolution TEXT,
        open_ms INTEGER,
        symptoms INTEGER NOT NULL DEFAULT 0,
        first_symptom TEXT NOT NULL);
    CREATE TABLE heal_symptoms (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        incident_id INTEGER NOT NULL,
        at_unix_ms INTEGER NOT NULL,
        detector TEXT NOT NULL,
        kind TEXT NOT NULL,
        subject TEXT NOT NULL,
        value REAL NOT NULL,
        expected REAL NOT NULL,
        confidence REAL NOT NULL,
        detail TEXT NOT NULL);
    CREATE INDEX heal_symptoms_incident ON heal_symptoms (incident_id);
    CREATE TABLE heal_actions (
        id INTEGER PRIMARY KEY,
        incident_id INTEGER NOT NULL,
        planned_unix_ms INTEGER NOT NULL,
        class TEXT NOT NULL,
        target TEXT,
        kind TEXT NOT NULL,
        mode TEXT NOT NULL,
        undo_of INTEGER,
        score REAL NOT NULL,
        reason TEXT NOT NULL,
        skipped TEXT NOT NULL,
        result TEXT,
        finished_unix_ms INTEGER);
    CREATE TABLE heal_outcomes (
        action_id INTEGER PRIMARY KEY,
        incident_id INTEGER NOT NULL,
        class TEXT NOT NULL,
        problem TEXT NOT NULL,
        recovered INTEGER NOT NULL,
        recover_ms INTEGER,
        decided_unix_ms INTEGER NOT NULL);
    CREATE VIEW heal_success_rates AS
        SELECT class, problem, COUNT(*) AS attempts, SUM(recovered) AS successes,
               AVG(CASE WHEN recovered THEN recover_ms END) AS mean_recover_ms
        FROM heal_outcomes GROUP BY class, problem;
    CREATE TABLE heal_baselines (
        key TEXT NOT NULL,
        metric TEXT NOT NULL,
        mean REAL NOT NULL,
        var REAL NOT NULL,
        samples INTEGER NOT NULL,
        updated_unix_ms INTEGER NOT NULL,
        body TEXT NOT NULL,
        PRIMARY KEY (key, metric));
    CREATE TABLE heal_health (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at_unix_ms INTEGER NOT NULL,
        state TEXT NOT NULL,
        reasons TEXT NOT NULL);
";

impl KnowledgeBase {
    /// Opens the knowledge base at `path`, creating the file (mode 0600) and the tables if
    /// missing.
    pub fn open(path: &Path) -> Result<Self, KnowledgeError> {
        Self::open_inner(path, true, false)
    }

    /// Opens an existing knowledge base; [`KnowledgeError::Missing`] if there is none.
    pub fn open_existing(path: &Path) -> Result<Self, KnowledgeError> {
        Self::open_inner(path, false, false)
    }

    /// Opens an existing knowledge base read-only (for `x0t audit verify` and `export`).
    pub fn open_read_only(path: &Path) -> Result<Self, KnowledgeError> {
        Self::open_inner(path, false, true)
    }

    fn open_inner(path: &Path, create: bool, read_only: bool) -> Result<Self, KnowledgeError> {
        let io = |source| KnowledgeError::Io {
            path: path.to_owned(),
            source,
        };
        match std::fs::metadata(path) {
            Ok(m) if m.is_file() => {}
            Ok(_) => return Err(io(io::Error::other("not a regular file"))),
            Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
                    .map_err(io)?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(KnowledgeError::Missing(path.to_owned()));
            }
            Err(e) => return Err(io(e)),
        }
        let corrupt = |e: rusqlite::Error| match e.sqlite_error_code() {
            Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => KnowledgeError::Corrupt {
                path: path.to_owned(),
                detail: e.to_string(),
            },
            _ => KnowledgeError::Sqlite(e),
        };
        let conn = if read_only {
            Connection::open_with_flags(
                path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
        } else {
            Connection::open(path)
        }
        .map_err(corrupt)?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(corrupt)?;
        if let Some(detail) = x0_identity::store::quick_check(&conn).map_err(corrupt)? {
            return Err(KnowledgeError::Corrupt {
                path: path.to_owned(),
                detail,
            });
        }
        let kb = Self {
            conn,
            path: path.to_owned(),
        };
        if !read_only {
            kb.conn
                .pragma_update(None, "journal_mode", "WAL")
                .map_err(corrupt)?;
            kb.conn
                .pragma_update(None, "synchronous", "FULL")
                .map_err(corrupt)?;
        }
        kb.migrate(read_only).map_err(|e| match e {
            KnowledgeError::Sqlite(e) => corrupt(e),
            other => other,
        })?;
        Ok(kb)
    }

    fn migrate(&self, read_only: bool) -> Result<(), KnowledgeError> {
        let has_meta: bool = self.conn.query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'heal_meta'",
            [],
            |r| r.get::<_, i64>(0).map(|n| n > 0),
        )?;
        let version: Option<String> = if has_meta {
            self.conn
                .query_row(
                    "SELECT value FROM heal_meta WHERE key = 'schema_version'",
                    [],
                    |r| r.get(0),
                )
                .optional()?
        } else {
            None
        };
        match version {
            Some(v) => {
                let found: i64 = v.parse().map_err(|_| KnowledgeError::Corrupt {
                    path: self.path.clone(),
                    detail: format!("schema version {v:?} is not a number"),
                })?;
                if found > SCHEMA_VERSION {
                    return Err(KnowledgeError::NewerSchema {
                        found,
                        supported: SCHEMA_VERSION,
                    });
                }
                if found < 1 {
                    return Err(KnowledgeError::Corrupt {
                        path: self.path.clone(),
                        detail: format!("unknown schema version {found}"),
                    });
                }
                // Every table of this version must be there.
                let tables: i64 = self.conn.query_row(
                    "SELECT COUNT(*) FROM sqlite_master WHERE name IN ('heal_incidents',
                     'heal_symptoms', 'heal_actions', 'heal_outcomes', 'heal_baselines',
                     'heal_health', 'heal_audit', 'heal_success_rates')",
                    [],
                    |r| r.get(0),
                )?;
                if tables != 8 {
                    return Err(KnowledgeError::Corrupt {
                        path: self.path.clone(),
                        detail: format!("{} of 8 knowledge tables are missing", 8 - tables),
                    });
                }
                Ok(())
            }
            None if has_meta => Err(KnowledgeError::Corrupt {
                path: self.path.clone(),
                detail: "heal_meta has no schema version".into(),
            }),
            None if read_only => Err(KnowledgeError::Missing(self.path.clone())),
            None => {
                let tx = self.conn.unchecked_transaction()?;
                tx.execute_batch(
                    "CREATE TABLE heal_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);",
                )?;
                tx.execute_batch(SCHEMA)?;
                tx.execute_batch(audit::SCHEMA)?;
                tx.execute(
                    "INSERT INTO heal_meta (key, value) VALUES ('schema_version', ?1)",
                    [SCHEMA_VERSION.to_string()],
                )?;
                tx.commit()?;
                Ok(())
            }
        }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The audit log.
    pub fn audit(&self) -> AuditLog<'_> {
        AuditLog::new(&self.conn)
    }

    /// Stores a batch of records in one transaction: the knowledge rows, and a signed audit
    /// entry for each record that is [`Record::audited`]. `now_unix_ms` is the wall-clock time
    /// the daemon stamps them with.
    pub fn persist(
        &mut self,
        records: &[Record],
        signer: &NodeKeys,
        now_unix_ms: u64,
    ) -> Result<(), KnowledgeError> {
        if records.is_empty() {
            return Ok(());
        }
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let now = i(now_unix_ms);
        for r in records {
            match r {
                Record::IncidentOpened {
                    incident,
                    cause,
                    problem,
                    confidence,
                    symptom,
                } => {
                    tx.execute(
                        "INSERT INTO heal_incidents
                         (id, opened_unix_ms, cause, problem, confidence, first_symptom)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                        params![
                            i(incident.0),
                            now,
                            serde_json::to_string(cause)?,
                            problem.as_str(),
                            confidence,
                            symptom
                        ],
                    )?;
                }
                Record::IncidentChanged {
                    incident,
                    cause,
                    problem,
                    confidence,
                } => {
                    tx.execute(
                        "UPDATE heal_incidents SET cause = ?2, problem = ?3, confidence = ?4
                         WHERE id = ?1",
                        params![
                            i(incident.0),
                            serde_json::to_string(cause)?,
                            problem.as_str(),
                            confidence
                        ],
                    )?;
                }
                Record::Symptom { incident, symptom } => {
                    tx.execute(
                        "INSERT INTO heal_symptoms (incident_id, at_unix_ms, detector, kind,
                         subject, value, expected, confidence, detail)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                        params![
                            i(incident.0),
                            now,
                            symptom.detector,
                            symptom.kind.name(),
                            serde_json::to_string(&symptom.subject)?,
                            symptom.value,
                            symptom.expected,
                            symptom.confidence,
                            serde_json::to_string(&symptom.kind)?
                        ],
                    )?;
                }
                Record::IncidentClosed {
                    incident,
                    cause,
                    problem,
                    resolution,
                    open_ms,
                    symptoms,
                } => {
                    tx.execute(
                        "UPDATE heal_incidents SET closed_unix_ms = ?2, cause = ?3, problem = ?4,
                         resolution = ?5, open_ms = ?6, symptoms = ?7 WHERE id = ?1",
                        params![
                            i(incident.0),
                            now,
                            serde_json::to_string(cause)?,
                            problem.as_str(),
                            serde_json::to_string(resolution)?,
                            i(*open_ms),
                            i(*symptoms)
                        ],
                    )?;
                }
                Record::ActionPlanned {
                    action,
                    mode,
                    score,
                    skipped,
                } => {
                    tx.execute(
                        "INSERT INTO heal_actions (id, incident_id, planned_unix_ms, class,
                         target, kind, mode, undo_of, score, reason, skipped)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                        params![
                            i(action.id.0),
                            i(action.incident.0),
                            now,
                            action.kind.class().as_str(),
                            action.kind.target().map(|n| n.to_string()),
                            serde_json::to_string(&action.kind)?,
                            mode.as_str(),
                            action.undo_of.map(|a| i(a.0)),
                            score,
                            action.reason,
                            serde_json::to_string(skipped)?
                        ],
                    )?;
                }
                Record::ActionFinished { action, result, .. } => {
                    tx.execute(
                        "UPDATE heal_actions SET result = ?2, finished_unix_ms = ?3
                         WHERE id = ?1",
                        params![i(action.0), serde_json::to_string(result)?, now],
                    )?;
                }
                Record::Outcome {
                    action,
                    incident,
                    class,
                    problem,
                    recovered,
                    recover_ms,
                } => {
                    tx.execute(
                        "INSERT INTO heal_outcomes (action_id, incident_id, class, problem,
                         recovered, recover_ms, decided_unix_ms)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                        params![
                            i(action.0),
                            i(incident.0),
                            class.as_str(),
                            problem.as_str(),
                            recovered,
                            recover_ms.map(i),
                            now
                        ],
                    )?;
                }
                Record::Health { state, reasons } => {
                    tx.execute(
                        "INSERT INTO heal_health (at_unix_ms, state, reasons) VALUES (?1, ?2, ?3)",
                        params![now, state.as_str(), serde_json::to_string(reasons)?],
                    )?;
                }
                Record::Baselines { baselines } => {
                    for b in baselines {
                        tx.execute(
                            "INSERT INTO heal_baselines
                             (key, metric, mean, var, samples, updated_unix_ms, body)
                             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                             ON CONFLICT (key, metric) DO UPDATE SET mean = ?3, var = ?4,
                             samples = ?5, updated_unix_ms = ?6, body = ?7",
                            params![
                                b.key.text(),
                                b.metric.key(),
                                b.mean,
                                b.var,
                                i(b.samples),
                                now,
                                serde_json::to_string(b)?
                            ],
                        )?;
                    }
                }
                Record::ModeChanged { mode } => {
                    tx.execute(
                        "INSERT INTO heal_meta (key, value) VALUES ('mode', ?1)
                         ON CONFLICT (key) DO UPDATE SET value = ?1",
                        [mode.as_str()],
                    )?;
                }
            }
            if r.audited() {
                audit::append(&tx, signer, now_unix_ms, r.kind(), &serde_json::to_vec(r)?)?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Outcome statistics per action class and problem.
    pub fn success_rates(&self) -> Result<SuccessRates, KnowledgeError> {
        let mut stmt = self.conn.prepare(
            "SELECT class, problem, attempts, successes, mean_recover_ms FROM heal_success_rates",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, Option<i64>>(3)?,
                r.get::<_, Option<f64>>(4)?,
            ))
        })?;
        let mut by_action = BTreeMap::new();
        for row in rows {
            let (class, problem, attempts, successes, mean) = row?;
            // Rows a newer version wrote with names this one does not know are skipped.
            if let (Some(c), Some(p)) = (ActionClass::parse(&class), Problem::parse(&problem)) {
                by_action.insert(
                    (c, p),
                    SuccessStats {
                        attempts: u(attempts),
                        successes: u(successes.unwrap_or(0)),
                        mean_recover_ms: mean,
                    },
                );
            }
        }
        Ok(SuccessRates { by_action })
    }

    /// Learned baselines.
    pub fn baselines(&self) -> Result<Vec<Baseline>, KnowledgeError> {
        let mut stmt = self
            .conn
            .prepare("SELECT body FROM heal_baselines ORDER BY key, metric")?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        let mut out = Vec::new();
        for body in rows {
            let b: Baseline = serde_json::from_str(&body?)?;
            if b.is_sane() {
                out.push(b);
            }
        }
        Ok(out)
    }

    /// Everything the loop needs at start. Offences are quarantines (per node) and link
    /// exclusions (per neighbour) carried out in the last `offence_forget`.
    pub fn snapshot(
        &self,
        now_unix_ms: u64,
        offence_forget: Duration,
    ) -> Result<KnowledgeSnapshot, KnowledgeError> {
        let next = |table: &str| -> Result<u64, KnowledgeError> {
            let max: Option<i64> =
                self.conn
                    .query_row(&format!("SELECT MAX(id) FROM {table}"), [], |r| r.get(0))?;
            Ok(u(max.unwrap_or(0)) + 1)
        };
        let since = now_unix_ms
            .saturating_sub(u64::try_from(offence_forget.as_millis()).unwrap_or(u64::MAX));
        let mut stmt = self.conn.prepare(
            "SELECT class, target, COUNT(*) FROM heal_actions
             WHERE class IN ('quarantine_node', 'exclude_link') AND mode = 'act'
               AND target IS NOT NULL AND planned_unix_ms >= ?1
             GROUP BY class, target",
        )?;
        let rows = stmt.query_map([i(since)], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })?;
        let mut offences = Vec::new();
        for row in rows {
            let (class, target, count) = row?;
            if let (Some(class), Ok(node)) = (ActionClass::parse(&class), target.parse::<NodeId>())
            {
                offences.push(Offence {
                    class,
                    node,
                    count: u32::try_from(count).unwrap_or(u32::MAX),
                });
            }
        }
        Ok(KnowledgeSnapshot {
            next_incident_id: next("heal_incidents")?,
            next_action_id: next("heal_actions")?,
            rates: self.success_rates()?,
            baselines: self.baselines()?,
            offences,
        })
    }

    /// The latest incidents, newest first.
    pub fn incidents(&self, limit: usize) -> Result<Vec<IncidentRow>, KnowledgeError> {
        let mut stmt = self.conn.prepare(
            "SELECT id, opened_unix_ms, closed_unix_ms, cause, problem, confidence, resolution,
                    first_symptom, symptoms
             FROM heal_incidents ORDER BY id DESC LIMIT ?1",
        )?;
        let rows = stmt.query_map([i64::try_from(limit).unwrap_or(i64::MAX)], |r| {
            Ok(IncidentRow {
                id: u(r.get(0)?),
                opened_unix_ms: u(r.get(1)?),
                closed_unix_ms: r.get::<_, Option<i64>>(2)?.map(u),
                cause: r.get(3)?,
                problem: r.get(4)?,
                confidence: r.get(5)?,
                resolution: r.get(6)?,
                first_symptom: r.get(7)?,
                symptoms: u(r.get(8)?),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The latest actions, newest first.
    pub fn actions(&self, limit: usize) -> Result<Vec<ActionRow>, KnowledgeError> {
        let mut stmt = self.conn.prepare(
            "SELECT id, incident_id, class, kind, mode, undo_of, result, planned_unix_ms,
                    finished_unix_ms, reason
             FROM heal_actions ORDER BY id DESC LIMIT ?1",
        )?;
        let rows = stmt.query_map([i64::try_from(limit).unwrap_or(i64::MAX)], |r| {
            Ok(ActionRow {
                id: u(r.get(0)?),
                incident: u(r.get(1)?),
                class: r.get(2)?,
                kind: r.get(3)?,
                mode: r.get(4)?,
                undo_of: r.get::<_, Option<i64>>(5)?.map(u),
                result: r.get(6)?,
                planned_unix_ms: u(r.get(7)?),
                finished_unix_ms: r.get::<_, Option<i64>>(8)?.map(u),
                reason: r.get(9)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The mode last recorded, if any.
    pub fn recorded_mode(&self) -> Result<Option<String>, KnowledgeError> {
        Ok(self
            .conn
            .query_row("SELECT value FROM heal_meta WHERE key = 'mode'", [], |r| {
                r.get(0)
            })
            .optional()?)
    }

    #[cfg(test)]
    pub(crate) fn conn(&self) -> &Connection {
        &self.conn
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::action::{Action, ActionId, ActionKind, ActionResult};
    use crate::config::Mode;
    use crate::detect::BaselineKey;
    use crate::health::HealthState;
    use crate::incident::{Cause, IncidentId, Resolution};
    use crate::sample::{LinkRef, Metric};
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    pub(crate) fn keys() -> NodeKeys {
        NodeKeys::generate().unwrap()
    }

    pub(crate) fn link() -> LinkRef {
        LinkRef {
            id: 3,
            neighbor: NodeId::from_bytes([3; 16]),
        }
    }

    /// A realistic batch: an incident, an action, its result and outcome, a baseline.
    pub(crate) fn batch(incident: u64, action: u64) -> Vec<Record> {
        let a = Action {
            id: ActionId(action),
            incident: IncidentId(incident),
            kind: ActionKind::RaiseLinkCost {
                link: link(),
                factor: 8,
            },
            undo_of: None,
            reason: "link_degraded".into(),
        };
        vec![
            Record::IncidentOpened {
                incident: IncidentId(incident),
                cause: Cause::Link(link()),
                problem: Problem::LinkDegraded,
                confidence: 0.84,
                symptom: "high_loss".into(),
            },
            Record::ActionPlanned {
                action: a,
                mode: Mode::Act,
                score: 0.7,
                skipped: vec![],
            },
            Record::ActionFinished {
                action: ActionId(action),
                class: ActionClass::RaiseLinkCost,
                result: ActionResult::Done,
            },
            Record::Outcome {
                action: ActionId(action),
                incident: IncidentId(incident),
                class: ActionClass::RaiseLinkCost,
                problem: Problem::LinkDegraded,
                recovered: true,
                recover_ms: Some(400),
            },
            Record::IncidentClosed {
                incident: IncidentId(incident),
                cause: Cause::Link(link()),
                problem: Problem::LinkDegraded,
                resolution: Resolution::Cleared,
                open_ms: 9000,
                symptoms: 12,
            },
            Record::Health {
                state: HealthState::Recovering,
                reasons: vec!["x".into()],
            },
            Record::Baselines {
                baselines: vec![Baseline {
                    key: BaselineKey::Peer(link().neighbor),
                    metric: Metric::RttMs,
                    mean: 1.5,
                    var: 0.04,
                    samples: 600,
                }],
            },
        ]
    }

    fn garbage(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x.to_le_bytes()[3]
            })
            .collect()
    }

    #[test]
    fn creates_a_private_wal_database_with_full_sync() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("heal.db");
        let kb = KnowledgeBase::open(&path).unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let journal: String = kb
            .conn()
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(journal, "wal");
        let sync: i64 = kb
            .conn()
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .unwrap();
        assert_eq!(sync, 2, "synchronous=FULL");
    }

    #[test]
    fn state_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("heal.db");
        let k = keys();
        let mut kb = KnowledgeBase::open(&path).unwrap();
        kb.persist(&batch(1, 1), &k, 1_000).unwrap();
        kb.persist(&batch(2, 2), &k, 2_000).unwrap();
        kb.persist(
            &[Record::ModeChanged {
                mode: Mode::Observe,
            }],
            &k,
            3_000,
        )
        .unwrap();
        let before = kb.snapshot(3_000, Duration::from_secs(3600)).unwrap();
        let incidents = kb.incidents(10).unwrap();
        let actions = kb.actions(10).unwrap();
        let head = kb.audit().verify(k.mldsa_public_key()).unwrap();
        drop(kb);

        let kb = KnowledgeBase::open_existing(&path).unwrap();
        let after = kb.snapshot(3_000, Duration::from_secs(3600)).unwrap();
        assert_eq!(before, after);
        assert_eq!(after.next_incident_id, 3);
        assert_eq!(after.next_action_id, 3);
        let s = after.rates.by_action[&(ActionClass::RaiseLinkCost, Problem::LinkDegraded)];
        assert_eq!((s.attempts, s.successes), (2, 2));
        assert_eq!(s.mean_recover_ms, Some(400.0));
        assert_eq!(after.baselines.len(), 1);
        assert_eq!(after.baselines[0].mean, 1.5);
        assert_eq!(kb.incidents(10).unwrap(), incidents);
        assert_eq!(incidents[0].id, 2);
        assert!(incidents[0].resolution.is_some());
        assert_eq!(kb.actions(10).unwrap(), actions);
        assert_eq!(actions[0].result.as_deref(), Some(r#"{"type":"done"}"#));
        assert_eq!(kb.recorded_mode().unwrap().as_deref(), Some("observe"));
        assert_eq!(kb.audit().verify(k.mldsa_public_key()).unwrap(), head);
        // 5 audited records per batch + the mode change.
        assert_eq!(head.entries, 11);
        // Read-only opening sees the same.
        drop(kb);
        let ro = KnowledgeBase::open_read_only(&path).unwrap();
        assert_eq!(
            ro.snapshot(3_000, Duration::from_secs(3600)).unwrap(),
            after
        );
    }

    #[test]
    fn offences_count_recent_quarantines_per_node() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("heal.db");
        let k = keys();
        let mut kb = KnowledgeBase::open(&path).unwrap();
        let node = NodeId::from_bytes([8; 16]);
        for (id, at) in [(1u64, 1_000u64), (2, 2_000), (3, 5_000_000)] {
            let a = Action {
                id: ActionId(id),
                incident: IncidentId(id),
                kind: ActionKind::QuarantineNode {
                    node,
                    hold_ms: 30_000,
                },
                undo_of: None,
                reason: String::new(),
            };
            kb.persist(
                &[Record::ActionPlanned {
                    action: a,
                    mode: Mode::Act,
                    score: 0.8,
                    skipped: vec![],
                }],
                &k,
                at,
            )
            .unwrap();
        }
        let s = kb.snapshot(5_000_000, Duration::from_secs(3600)).unwrap();
        assert_eq!(
            s.offences,
            vec![Offence {
                class: ActionClass::QuarantineNode,
                node,
                count: 1
            }]
        );
        let s = kb.snapshot(5_000_000, Duration::from_secs(7200)).unwrap();
        assert_eq!(s.offences[0].count, 3);
    }

    fn assert_corrupt_and_untouched(path: &Path) -> String {
        let before = fs::read(path).unwrap();
        let mut details = Vec::new();
        for r in [
            KnowledgeBase::open(path),
            KnowledgeBase::open_existing(path),
            KnowledgeBase::open_read_only(path),
        ] {
            match r {
                Err(e @ KnowledgeError::Corrupt { .. }) => {
                    assert!(e.to_string().contains("left untouched"), "{e}");
                    details.push(e.to_string());
                }
                other => panic!("expected Corrupt, got {other:?}"),
            }
        }
        assert_eq!(
            fs::read(path).unwrap(),
            before,
            "a damaged file is never rewritten"
        );
        details.swap_remove(0)
    }

    #[test]
    fn a_garbage_file_is_reported_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("heal.db");
        fs::write(&path, garbage(3 * 4096, 5)).unwrap();
        let d = assert_corrupt_and_untouched(&path);
        assert!(d.contains("not a database"), "{d}");
    }

    #[test]
    fn a_damaged_page_is_reported_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("heal.db");
        let k = keys();
        let mut kb = KnowledgeBase::open(&path).unwrap();
        for n in 0..40 {
            kb.persist(&batch(n + 1, n + 1), &k, 1_000 + n).unwrap();
        }
        drop(kb);
        assert!(
            !dir.path().join("heal.db-wal").exists(),
            "WAL checkpointed on close"
        );
        let mut bytes = fs::read(&path).unwrap();
        let page = usize::from(u16::from_be_bytes([bytes[16], bytes[17]]));
        let pages = bytes.len() / page;
        assert!(pages >= 8, "{pages} pages");
        let middle = pages / 2;
        bytes[middle * page..(middle + 1) * page].copy_from_slice(&garbage(page, 9));
        fs::write(&path, &bytes).unwrap();
        let d = assert_corrupt_and_untouched(&path);
        assert!(d.contains("page"), "{d}");
    }

    #[test]
    fn foreign_or_newer_schemas_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("heal.db");
        drop(KnowledgeBase::open(&path).unwrap());
        let c = Connection::open(&path).unwrap();
        c.execute(
            "UPDATE heal_meta SET value = '9' WHERE key = 'schema_version'",
            [],
        )
        .unwrap();
        drop(c);
        assert!(matches!(
            KnowledgeBase::open(&path),
            Err(KnowledgeError::NewerSchema {
                found: 9,
                supported: 1
            })
        ));
        let c = Connection::open(&path).unwrap();
        c.execute(
            "UPDATE heal_meta SET value = '1' WHERE key = 'schema_version'",
            [],
        )
        .unwrap();
        c.execute_batch("DROP TABLE heal_outcomes").unwrap();
        drop(c);
        match KnowledgeBase::open(&path) {
            Err(KnowledgeError::Corrupt { detail, .. }) => {
                assert!(detail.contains("missing"), "{detail}")
            }
            other => panic!("expected Corrupt, got {other:?}"),
        }
        // Not a knowledge base at all, read-only: nothing to read.
        let other = dir.path().join("other.db");
        Connection::open(&other)
            .unwrap()
            .execute_batch("CREATE TABLE t (x)")
            .unwrap();
        assert!(matches!(
            KnowledgeBase::open_read_only(&other),
            Err(KnowledgeError::Missing(_))
        ));
        assert!(matches!(
            KnowledgeBase::open_existing(&dir.path().join("absent.db")),
            Err(KnowledgeError::Missing(_))
        ));
    }

    #[test]
    fn shares_the_state_database_with_the_identity_store() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let store = x0_identity::StateStore::open(&state).unwrap();
        let k = keys();
        store.create_node_keys(&k, 1).unwrap();
        let db = state.join(x0_identity::store::DB_FILE);
        let mut kb = KnowledgeBase::open(&db).unwrap();
        kb.persist(&batch(1, 1), &k, 1).unwrap();
        drop(kb);
        drop(store);
        let store = x0_identity::StateStore::open_existing(&state).unwrap();
        assert_eq!(store.node_keys().unwrap().unwrap().node_id(), k.node_id());
        let kb = KnowledgeBase::open_existing(&db).unwrap();
        assert_eq!(kb.incidents(5).unwrap().len(), 1);
        kb.audit().verify(k.mldsa_public_key()).unwrap();
    }
}
