//! The audit log: append-only, hash-chained, every entry signed with the node's ML-DSA-65 key.
//!
//! An entry is `(seq, at_unix_ms, kind, body, prev_hash, signer, signature)`, stored in the
//! `heal_audit` table of the knowledge base, where triggers refuse `UPDATE` and `DELETE`.
//!
//! * `seq` counts from 1 with no gap; `body` is the record's JSON, byte for byte as signed.
//! * `prev_hash` is the SHA-256 of the previous entry ([`AuditEntry::hash`]: over everything
//!   the entry holds, its signature included); the first entry's is 32 zero bytes.
//! * `signature` is pure ML-DSA-65 (FIPS 204, empty context, through aws-lc-rs via
//!   `x0_identity::NodeKeys`) over [`AuditEntry::signed_bytes`]: the domain
//!   `x0t/heal-audit/v1`, then `seq` and `at_unix_ms` as 8-byte big-endian, then `kind`,
//!   `body` and `signer` each prefixed by its 4-byte big-endian length, then `prev_hash`.
//!
//! [`AuditLog::verify`] walks the chain and names the first entry that is missing, altered,
//! out of order or not signed by the given key. Removing entries from the *end* leaves a
//! valid shorter chain; [`AuditLog::verify_against`] catches that given a head `(seq, hash)`
//! kept elsewhere (published, exported, or anchored). [`AuditLog::export_jsonl`] writes one
//! JSON object per entry, with everything needed to verify it without this crate.

use std::fmt;
use std::io::Write;

use base64::Engine as _;
use rusqlite::{Connection, OptionalExtension, Transaction, params};
use serde::Serialize;
use thiserror::Error;
use x0_identity::NodeKeys;
use x0_identity::keys::{KeyError, sha256, verify_mldsa65};

/// Domain separation for audit signatures and hashes.
pub const AUDIT_DOMAIN: &[u8] = b"x0t/heal-audit/v1";

/// One audit entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    /// Position in the chain, from 1.
    pub seq: u64,
    /// When it was written (Unix time, ms).
    pub at_unix_ms: u64,
    /// The record type (`incident_opened`, `action_planned`, …).
    pub kind: String,
    /// The record as JSON.
    pub body: Vec<u8>,
    /// SHA-256 of the previous entry.
    pub prev_hash: [u8; 32],
    /// The signing node's ID.
    pub signer: String,
    /// ML-DSA-65 signature.
    pub signature: Vec<u8>,
}

fn put(out: &mut Vec<u8>, part: &[u8]) {
    out.extend_from_slice(&u32::try_from(part.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(part);
}

impl AuditEntry {
    /// The bytes the signature covers (see the module doc).
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(AUDIT_DOMAIN.len() + 64 + self.body.len());
        out.extend_from_slice(AUDIT_DOMAIN);
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.at_unix_ms.to_be_bytes());
        put(&mut out, self.kind.as_bytes());
        put(&mut out, &self.body);
        put(&mut out, self.signer.as_bytes());
        out.extend_from_slice(&self.prev_hash);
        out
    }

    /// SHA-256 over the signed bytes and the signature: what the next entry's `prev_hash`
    /// holds.
    pub fn hash(&self) -> [u8; 32] {
        let mut all = self.signed_bytes();
        put(&mut all, &self.signature);
        sha256(&all)
    }
}

/// What is wrong with an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Flaw {
    /// The entry with this number is not there (deleted, or the chain was spliced).
    Missing,
    /// Its `prev_hash` is not the hash of the entry before it.
    ChainBroken,
    /// Its signature does not verify with the given key (altered, or signed by another key).
    BadSignature,
    /// A field cannot be what it is (wrong hash length, negative number).
    Malformed,
    /// The chain ends before the expected head.
    Truncated,
    /// The entry at the expected head's position is not the expected one.
    HeadMismatch,
}

impl fmt::Display for Flaw {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Missing => "missing",
            Self::ChainBroken => "hash chain broken",
            Self::BadSignature => "signature does not verify",
            Self::Malformed => "malformed",
            Self::Truncated => "log ends early",
            Self::HeadMismatch => "does not match the expected head",
        })
    }
}

/// Failures of the audit log.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum AuditError {
    /// Entry `seq` is the first bad one.
    #[error("audit log entry {seq}: {flaw}")]
    Broken {
        /// The first bad entry.
        seq: u64,
        /// What is wrong with it.
        flaw: Flaw,
    },
    /// Signing failed.
    #[error("signing an audit entry failed: {0}")]
    Sign(#[from] KeyError),
    /// The database failed.
    #[error("audit log: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// Writing the export failed.
    #[error("audit export: {0}")]
    Io(#[from] std::io::Error),
    /// An export line could not be encoded.
    #[error("audit export: {0}")]
    Json(#[from] serde_json::Error),
}

/// A verified log: how many entries, and its head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verified {
    /// Entries checked.
    pub entries: u64,
    /// `(seq, hash)` of the last entry, if any.
    pub head: Option<(u64, [u8; 32])>,
}

pub(crate) const SCHEMA: &str = "
    CREATE TABLE heal_audit (
        seq INTEGER PRIMARY KEY,
        at_unix_ms INTEGER NOT NULL,
        kind TEXT NOT NULL,
        body BLOB NOT NULL,
        prev_hash BLOB NOT NULL,
        signer TEXT NOT NULL,
        signature BLOB NOT NULL);
    CREATE TRIGGER heal_audit_no_update BEFORE UPDATE ON heal_audit
        BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
    CREATE TRIGGER heal_audit_no_delete BEFORE DELETE ON heal_audit
        BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
";

type Row = (i64, i64, String, Vec<u8>, Vec<u8>, String, Vec<u8>);

fn entry(row: Row) -> Result<AuditEntry, Flaw> {
    let (seq, at, kind, body, prev, signer, signature) = row;
    Ok(AuditEntry {
        seq: u64::try_from(seq).map_err(|_| Flaw::Malformed)?,
        at_unix_ms: u64::try_from(at).map_err(|_| Flaw::Malformed)?,
        kind,
        body,
        prev_hash: prev.try_into().map_err(|_| Flaw::Malformed)?,
        signer,
        signature,
    })
}

fn read_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
    ))
}

const SELECT: &str =
    "SELECT seq, at_unix_ms, kind, body, prev_hash, signer, signature FROM heal_audit";

/// Appends one entry inside the caller's transaction. Returns its `seq`.
pub(crate) fn append(
    tx: &Transaction<'_>,
    signer: &NodeKeys,
    at_unix_ms: u64,
    kind: &str,
    body: &[u8],
) -> Result<u64, AuditError> {
    let last: Option<Row> = tx
        .query_row(&format!("{SELECT} ORDER BY seq DESC LIMIT 1"), [], read_row)
        .optional()?;
    let (seq, prev_hash) = match last {
        None => (1, [0u8; 32]),
        Some(row) => {
            let stored_seq = row.0;
            let prev = entry(row).map_err(|flaw| AuditError::Broken {
                seq: u64::try_from(stored_seq).unwrap_or(0),
                flaw,
            })?;
            (prev.seq.saturating_add(1), prev.hash())
        }
    };
    let mut e = AuditEntry {
        seq,
        at_unix_ms,
        kind: kind.to_owned(),
        body: body.to_vec(),
        prev_hash,
        signer: signer.node_id().to_string(),
        signature: Vec::new(),
    };
    e.signature = signer.sign_mldsa(&e.signed_bytes())?;
    tx.execute(
        "INSERT INTO heal_audit (seq, at_unix_ms, kind, body, prev_hash, signer, signature)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            i64::try_from(e.seq).unwrap_or(i64::MAX),
            i64::try_from(e.at_unix_ms).unwrap_or(i64::MAX),
            e.kind,
            e.body,
            &e.prev_hash[..],
            e.signer,
            e.signature
        ],
    )?;
    Ok(seq)
}

/// Read access to the audit log of a knowledge base.
#[derive(Debug, Clone, Copy)]
pub struct AuditLog<'a> {
    conn: &'a Connection,
}

#[derive(Serialize)]
struct ExportLine<'a> {
    seq: u64,
    at_unix_ms: u64,
    kind: &'a str,
    /// The record's JSON text, byte for byte as signed.
    body: &'a str,
    prev_hash: String,
    hash: String,
    signer: &'a str,
    signature: String,
}

impl<'a> AuditLog<'a> {
    pub(crate) fn new(conn: &'a Connection) -> Self {
        Self { conn }
    }

    /// Calls `f` for every stored entry in order; stops at the first error `f` returns.
    fn each(
        &self,
        mut f: impl FnMut(Result<AuditEntry, (u64, Flaw)>) -> Result<(), AuditError>,
    ) -> Result<(), AuditError> {
        let mut stmt = self.conn.prepare(&format!("{SELECT} ORDER BY seq"))?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let row = read_row(r)?;
            let seq = u64::try_from(row.0).unwrap_or(0);
            f(entry(row).map_err(|flaw| (seq, flaw)))?;
        }
        Ok(())
    }

    /// Every entry, in order.
    pub fn entries(&self) -> Result<Vec<AuditEntry>, AuditError> {
        let mut out = Vec::new();
        self.each(|e| match e {
            Ok(e) => {
                out.push(e);
                Ok(())
            }
            Err((seq, flaw)) => Err(AuditError::Broken { seq, flaw }),
        })?;
        Ok(out)
    }

    /// Number of entries.
    pub fn len(&self) -> Result<u64, AuditError> {
        let n: i64 = self
            .conn
            .query_row("SELECT COUNT(*) FROM heal_audit", [], |r| r.get(0))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// `(seq, hash)` of the last entry as stored, if any, without verifying anything (for
    /// publishing the head after each write; [`AuditLog::verify`] checks the chain up to it).
    pub fn head(&self) -> Result<Option<(u64, [u8; 32])>, AuditError> {
        let last: Option<Row> = self
            .conn
            .query_row(&format!("{SELECT} ORDER BY seq DESC LIMIT 1"), [], read_row)
            .optional()?;
        match last {
            None => Ok(None),
            Some(row) => {
                let seq = u64::try_from(row.0).unwrap_or(0);
                let e = entry(row).map_err(|flaw| AuditError::Broken { seq, flaw })?;
                Ok(Some((e.seq, e.hash())))
            }
        }
    }

    /// Whether there is no entry.
    pub fn is_empty(&self) -> Result<bool, AuditError> {
        Ok(self.len()? == 0)
    }

    /// Checks the whole chain and every signature against `mldsa_public_key` (the node's raw
    /// ML-DSA-65 public key). The error names the first bad entry.
    pub fn verify(&self, mldsa_public_key: &[u8]) -> Result<Verified, AuditError> {
        let mut expected_seq = 1u64;
        let mut prev_hash = [0u8; 32];
        let mut head = None;
        self.each(|e| {
            let e = e.map_err(|(seq, flaw)| AuditError::Broken { seq, flaw })?;
            let broken = |flaw| AuditError::Broken {
                seq: expected_seq,
                flaw,
            };
            if e.seq != expected_seq {
                // The entry numbered `expected_seq` is not there: deleted or spliced out.
                return Err(broken(Flaw::Missing));
            }
            if e.prev_hash != prev_hash {
                return Err(broken(Flaw::ChainBroken));
            }
            verify_mldsa65(mldsa_public_key, &e.signed_bytes(), &e.signature)
                .map_err(|_| broken(Flaw::BadSignature))?;
            prev_hash = e.hash();
            head = Some((e.seq, prev_hash));
            expected_seq += 1;
            Ok(())
        })?;
        Ok(Verified {
            entries: expected_seq - 1,
            head,
        })
    }

    /// [`AuditLog::verify`], and the log must contain the head `(seq, hash)` recorded earlier
    /// (so that entries removed from the end are noticed too).
    pub fn verify_against(
        &self,
        mldsa_public_key: &[u8],
        head: (u64, [u8; 32]),
    ) -> Result<Verified, AuditError> {
        let v = self.verify(mldsa_public_key)?;
        if v.entries < head.0 {
            return Err(AuditError::Broken {
                seq: v.entries + 1,
                flaw: Flaw::Truncated,
            });
        }
        let stored: Option<Row> = self
            .conn
            .query_row(
                &format!("{SELECT} WHERE seq = ?1"),
                [i64::try_from(head.0).unwrap_or(i64::MAX)],
                read_row,
            )
            .optional()?;
        let matches = stored
            .map(entry)
            .and_then(Result::ok)
            .is_some_and(|e| e.hash() == head.1);
        if matches {
            Ok(v)
        } else {
            Err(AuditError::Broken {
                seq: head.0,
                flaw: Flaw::HeadMismatch,
            })
        }
    }

    /// Writes every entry as one JSON object per line. Returns the number written.
    pub fn export_jsonl(&self, w: &mut dyn Write) -> Result<u64, AuditError> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut n = 0;
        self.each(|e| {
            let e = e.map_err(|(seq, flaw)| AuditError::Broken { seq, flaw })?;
            let body = String::from_utf8_lossy(&e.body);
            let line = ExportLine {
                seq: e.seq,
                at_unix_ms: e.at_unix_ms,
                kind: &e.kind,
                body: &body,
                prev_hash: hex::encode(e.prev_hash),
                hash: hex::encode(e.hash()),
                signer: &e.signer,
                signature: b64.encode(&e.signature),
            };
            serde_json::to_writer(&mut *w, &line)?;
            w.write_all(b"\n")?;
            n += 1;
            Ok(())
        })?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::knowledge::KnowledgeBase;
    use crate::knowledge::tests::{batch, keys};

    /// A knowledge base with `batches` batches (5 audited entries each).
    fn log(batches: u64) -> (tempfile::TempDir, KnowledgeBase, NodeKeys) {
        let dir = tempfile::tempdir().unwrap();
        let k = keys();
        let mut kb = KnowledgeBase::open(&dir.path().join("heal.db")).unwrap();
        for n in 0..batches {
            kb.persist(&batch(n + 1, n + 1), &k, 1_000 * (n + 1))
                .unwrap();
        }
        (dir, kb, k)
    }

    /// Runs SQL as an attacker with file access would: without the append-only triggers.
    fn tamper(kb: &KnowledgeBase, sql: &str) {
        kb.conn()
            .execute_batch(&format!(
                "DROP TRIGGER IF EXISTS heal_audit_no_update; DROP TRIGGER IF EXISTS heal_audit_no_delete; {sql}"
            ))
            .unwrap();
    }

    fn broken(r: Result<Verified, AuditError>) -> (u64, Flaw) {
        match r {
            Err(AuditError::Broken { seq, flaw }) => (seq, flaw),
            other => panic!("expected Broken, got {other:?}"),
        }
    }

    #[test]
    fn an_intact_log_verifies_and_links_every_entry() {
        let (_d, kb, k) = log(3);
        let a = kb.audit();
        let v = a.verify(k.mldsa_public_key()).unwrap();
        assert_eq!(v.entries, 15);
        let entries = a.entries().unwrap();
        assert_eq!(entries[0].prev_hash, [0; 32]);
        for w in entries.windows(2) {
            assert_eq!(w[1].prev_hash, w[0].hash());
            assert_eq!(w[1].seq, w[0].seq + 1);
        }
        assert_eq!(v.head, Some((15, entries[14].hash())));
        assert_eq!(entries[0].kind, "incident_opened");
        assert_eq!(entries[0].signer, k.node_id().to_string());
        a.verify_against(k.mldsa_public_key(), (15, entries[14].hash()))
            .unwrap();
    }

    #[test]
    fn the_log_is_append_only_in_the_database() {
        let (_d, kb, _k) = log(1);
        assert!(
            kb.conn()
                .execute("UPDATE heal_audit SET kind = 'x' WHERE seq = 2", [])
                .is_err()
        );
        assert!(
            kb.conn()
                .execute("DELETE FROM heal_audit WHERE seq = 2", [])
                .is_err()
        );
        assert_eq!(kb.audit().len().unwrap(), 5);
    }

    #[test]
    fn an_altered_byte_in_entry_k_is_named() {
        for k_seq in [1u64, 4, 7, 10] {
            let (_d, kb, k) = log(2);
            // Flip one byte in the middle of entry k's body.
            let body: Vec<u8> = kb
                .conn()
                .query_row(
                    "SELECT body FROM heal_audit WHERE seq = ?1",
                    [k_seq as i64],
                    |r| r.get(0),
                )
                .unwrap();
            let mut altered = body.clone();
            let mid = altered.len() / 2;
            altered[mid] ^= 0x01;
            tamper(&kb, "");
            kb.conn()
                .execute(
                    "UPDATE heal_audit SET body = ?1 WHERE seq = ?2",
                    rusqlite::params![altered, k_seq as i64],
                )
                .unwrap();
            assert_eq!(
                broken(kb.audit().verify(k.mldsa_public_key())),
                (k_seq, Flaw::BadSignature)
            );
        }
    }

    #[test]
    fn altered_links_timestamps_and_signatures_are_named() {
        let (_d, kb, k) = log(2);
        tamper(
            &kb,
            "UPDATE heal_audit SET prev_hash = zeroblob(32) WHERE seq = 6",
        );
        assert_eq!(
            broken(kb.audit().verify(k.mldsa_public_key())),
            (6, Flaw::ChainBroken)
        );
        let (_d, kb, k) = log(2);
        tamper(
            &kb,
            "UPDATE heal_audit SET at_unix_ms = at_unix_ms + 1 WHERE seq = 3",
        );
        assert_eq!(
            broken(kb.audit().verify(k.mldsa_public_key())),
            (3, Flaw::BadSignature)
        );
        let (_d, kb, k) = log(2);
        tamper(&kb, "UPDATE heal_audit SET prev_hash = x'00' WHERE seq = 8");
        assert_eq!(
            broken(kb.audit().verify(k.mldsa_public_key())),
            (8, Flaw::Malformed)
        );
    }

    #[test]
    fn a_deleted_entry_is_detected() {
        let (_d, kb, k) = log(2);
        tamper(&kb, "DELETE FROM heal_audit WHERE seq = 4");
        assert_eq!(
            broken(kb.audit().verify(k.mldsa_public_key())),
            (4, Flaw::Missing)
        );
        // Renumbering the rest to hide the gap breaks the chain (and the signatures).
        tamper(&kb, "UPDATE heal_audit SET seq = seq - 1 WHERE seq > 4");
        let (seq, flaw) = broken(kb.audit().verify(k.mldsa_public_key()));
        assert_eq!(seq, 4);
        assert!(matches!(flaw, Flaw::ChainBroken | Flaw::BadSignature));
    }

    #[test]
    fn a_truncated_tail_is_detected_against_a_kept_head() {
        let (_d, kb, k) = log(2);
        let head = kb
            .audit()
            .verify(k.mldsa_public_key())
            .unwrap()
            .head
            .unwrap();
        tamper(&kb, "DELETE FROM heal_audit WHERE seq >= 9");
        // Still a valid chain on its own…
        assert_eq!(kb.audit().verify(k.mldsa_public_key()).unwrap().entries, 8);
        // …but not the one whose head was kept.
        assert_eq!(
            broken(kb.audit().verify_against(k.mldsa_public_key(), head)),
            (9, Flaw::Truncated)
        );
        let (_d, kb2, k2) = log(2);
        let other_head = (10, [7u8; 32]);
        assert_eq!(
            broken(
                kb2.audit()
                    .verify_against(k2.mldsa_public_key(), other_head)
            ),
            (10, Flaw::HeadMismatch)
        );
    }

    #[test]
    fn another_key_is_detected() {
        let (_d, kb, _k) = log(1);
        let stranger = keys();
        assert_eq!(
            broken(kb.audit().verify(stranger.mldsa_public_key())),
            (1, Flaw::BadSignature)
        );
        assert_eq!(
            broken(kb.audit().verify(&[0u8; 12])),
            (1, Flaw::BadSignature)
        );
    }

    #[test]
    fn export_is_one_verifiable_json_object_per_entry() {
        let (_d, kb, k) = log(2);
        let mut out = Vec::new();
        assert_eq!(kb.audit().export_jsonl(&mut out).unwrap(), 10);
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 10);
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut prev = hex::encode([0u8; 32]);
        for (i, l) in lines.iter().enumerate() {
            assert_eq!(l["seq"], i as u64 + 1);
            assert_eq!(l["prev_hash"], prev.as_str());
            // Rebuild the entry from the exported fields alone and check it.
            let e = AuditEntry {
                seq: l["seq"].as_u64().unwrap(),
                at_unix_ms: l["at_unix_ms"].as_u64().unwrap(),
                kind: l["kind"].as_str().unwrap().into(),
                body: l["body"].as_str().unwrap().as_bytes().to_vec(),
                prev_hash: hex::decode(l["prev_hash"].as_str().unwrap())
                    .unwrap()
                    .try_into()
                    .unwrap(),
                signer: l["signer"].as_str().unwrap().into(),
                signature: b64.decode(l["signature"].as_str().unwrap()).unwrap(),
            };
            verify_mldsa65(k.mldsa_public_key(), &e.signed_bytes(), &e.signature).unwrap();
            assert_eq!(hex::encode(e.hash()), l["hash"].as_str().unwrap());
            let body: serde_json::Value = serde_json::from_slice(&e.body).unwrap();
            assert_eq!(body["type"], l["kind"]);
            prev = hex::encode(e.hash());
        }
    }
}
