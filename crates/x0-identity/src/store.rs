//! The node's state database.
//!
//! One SQLite file, `state.db`, under the state directory, in WAL mode with `synchronous=FULL`,
//! so that a write the node acknowledged (an identity, an invitation, a revocation) survives a
//! crash or `kill -9`. The file holds private keys: it is created with mode 0600 inside a 0700
//! directory, and opening refuses a file readable by others or a directory writable by others.
//! A damaged file is reported, never repaired or replaced.
//!
//! Tables: `node_identity` (the node's keys), `ca` (the mesh CA, on the CA node only),
//! `membership` (the node's SVID and trust bundle), `invitations`, `members` (SVIDs the CA
//! issued), `revoked_nodes` and `revocation_list` (the newest verified signed list), `meta`.

use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, OptionalExtension, TransactionBehavior, params};
use thiserror::Error;
use x0_wire::{NodeId, RevocationList, SignedRevocationList};

use crate::ca::{CaError, MeshCa};
use crate::keys::{KeyError, NodeKeys, sha256};
use crate::spiffe::TrustDomain;

/// File name of the database inside the state directory.
pub const DB_FILE: &str = "state.db";
const SCHEMA_VERSION: i64 = 1;

/// Failures opening or using the state store.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The state directory or database is accessible to other users.
    #[error("{path}: permissions {mode:04o} are too open; {fix}")]
    InsecurePermissions {
        /// The offending path.
        path: PathBuf,
        /// Its mode bits.
        mode: u32,
        /// The command that fixes it.
        fix: String,
    },
    /// No database where one is required.
    #[error("{0}: no x0t state here; run `x0t init --state-dir {1}` first")]
    Missing(PathBuf, String),
    /// A filesystem error.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The database is damaged or not an x0t database. Nothing was changed.
    #[error(
        "{path}: state database is damaged ({detail}); it was left untouched; restore it from a backup"
    )]
    Corrupt {
        /// The database path.
        path: PathBuf,
        /// What SQLite reported.
        detail: String,
    },
    /// Written by a newer x0t.
    #[error("state database schema {found} is newer than this x0t supports ({supported})")]
    NewerSchema {
        /// Found.
        found: i64,
        /// Supported.
        supported: i64,
    },
    /// Any other SQLite error.
    #[error("state database: {0}")]
    Sqlite(rusqlite::Error),
    /// Stored keys are invalid.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// Stored CA is invalid.
    #[error(transparent)]
    Ca(#[from] CaError),
    /// A stored value does not parse.
    #[error("state database holds an invalid {0}")]
    InvalidValue(&'static str),
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        Self::Sqlite(e)
    }
}

/// Why an invitation could not be redeemed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum InvitationError {
    /// No such invitation.
    #[error("unknown invitation")]
    Unknown,
    /// The secret does not match.
    #[error("invitation secret does not match")]
    BadSecret,
    /// Already redeemed.
    #[error("invitation already used (by node {by} at unix time {at})")]
    Used {
        /// When.
        at: u64,
        /// By whom.
        by: String,
    },
    /// Past its expiry.
    #[error("invitation expired at unix time {0}")]
    Expired(u64),
}

/// The node's place in a mesh: its SVID and what it trusts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    /// The mesh's trust domain.
    pub trust_domain: TrustDomain,
    /// The node's current X.509-SVID (DER).
    pub svid_der: Vec<u8>,
    /// The trust bundle (PEM).
    pub bundle_pem: String,
    /// Address of the CA node, for renewals (`None` on the CA node itself).
    pub ca_addr: Option<String>,
    /// `notAfter` of the SVID, seconds since the Unix epoch.
    pub not_after_unix: u64,
}

/// An invitation as the CA lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvitationRecord {
    /// Its ID.
    pub id: [u8; 16],
    /// Created at (unix seconds).
    pub created_at: u64,
    /// Expires at (unix seconds).
    pub expires_at: u64,
    /// Used at, if used.
    pub used_at: Option<u64>,
    /// Used by, if used.
    pub used_by: Option<String>,
}

/// An open state database.
#[derive(Debug)]
pub struct StateStore {
    conn: Connection,
    dir: PathBuf,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

/// `(trust_domain, svid_der, bundle_pem, ca_addr, not_after)`
type MembershipRow = (String, Vec<u8>, String, Option<String>, i64);
/// `(secret_sha256, expires_at, used_at, used_by)`
type InvitationRow = (Vec<u8>, i64, Option<i64>, Option<String>);

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

impl StateStore {
    /// Opens the store in `dir`, creating the directory (0700) and database (0600) if missing.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_inner(dir, true)
    }

    /// Opens an existing store; fails with [`StoreError::Missing`] if there is none.
    pub fn open_existing(dir: &Path) -> Result<Self, StoreError> {
        Self::open_inner(dir, false)
    }

    fn open_inner(dir: &Path, create: bool) -> Result<Self, StoreError> {
        let db_path = dir.join(DB_FILE);
        match fs::metadata(dir) {
            Ok(meta) => {
                if !meta.is_dir() {
                    return Err(StoreError::Io {
                        path: dir.to_owned(),
                        source: io::Error::other("not a directory"),
                    });
                }
                let mode = meta.permissions().mode() & 0o7777;
                if mode & 0o022 != 0 {
                    return Err(StoreError::InsecurePermissions {
                        path: dir.to_owned(),
                        mode,
                        fix: format!("run `chmod 700 {}`", dir.display()),
                    });
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)
                    .map_err(io_err(dir))?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::Missing(db_path, dir.display().to_string()));
            }
            Err(e) => return Err(io_err(dir)(e)),
        }
        match fs::metadata(&db_path) {
            Ok(meta) => {
                let mode = meta.permissions().mode() & 0o7777;
                if mode & 0o077 != 0 {
                    return Err(StoreError::InsecurePermissions {
                        path: db_path.clone(),
                        mode,
                        fix: format!("run `chmod 600 {}`", db_path.display()),
                    });
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&db_path)
                    .map_err(io_err(&db_path))?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::Missing(db_path, dir.display().to_string()));
            }
            Err(e) => return Err(io_err(&db_path)(e)),
        }

        let corrupt = |e: rusqlite::Error| match e.sqlite_error_code() {
            Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => StoreError::Corrupt {
                path: db_path.clone(),
                detail: e.to_string(),
            },
            _ => StoreError::Sqlite(e),
        };
        let conn = Connection::open(&db_path).map_err(corrupt)?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(corrupt)?;
        let check: String = conn
            .query_row("PRAGMA quick_check", [], |r| r.get(0))
            .map_err(corrupt)?;
        if check != "ok" {
            return Err(StoreError::Corrupt {
                path: db_path,
                detail: check,
            });
        }
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(corrupt)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(corrupt)?;
        let store = Self {
            conn,
            dir: dir.to_owned(),
        };
        store.migrate().map_err(|e| match e {
            StoreError::Sqlite(e) => corrupt(e),
            other => other,
        })?;
        Ok(store)
    }

    fn migrate(&self) -> Result<(), StoreError> {
        let version: i64 = self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::NewerSchema {
                found: version,
                supported: SCHEMA_VERSION,
            });
        }
        if version == SCHEMA_VERSION {
            return Ok(());
        }
        if version != 0 {
            return Err(StoreError::Corrupt {
                path: self.dir.join(DB_FILE),
                detail: format!("unknown schema version {version}"),
            });
        }
        self.conn.execute_batch(
            "BEGIN IMMEDIATE;
             CREATE TABLE node_identity (
                 id INTEGER PRIMARY KEY CHECK (id = 1),
                 node_id TEXT NOT NULL,
                 tls_pkcs8 BLOB NOT NULL,
                 mldsa_seed BLOB NOT NULL,
                 created_at INTEGER NOT NULL);
             CREATE TABLE ca (
                 id INTEGER PRIMARY KEY CHECK (id = 1),
                 trust_domain TEXT NOT NULL,
                 key_pkcs8 BLOB NOT NULL,
                 cert_der BLOB NOT NULL,
                 svid_ttl_s INTEGER NOT NULL,
                 created_at INTEGER NOT NULL);
             CREATE TABLE membership (
                 id INTEGER PRIMARY KEY CHECK (id = 1),
                 trust_domain TEXT NOT NULL,
                 svid_der BLOB NOT NULL,
                 bundle_pem TEXT NOT NULL,
                 ca_addr TEXT,
                 not_after INTEGER NOT NULL,
                 updated_at INTEGER NOT NULL);
             CREATE TABLE invitations (
                 id BLOB PRIMARY KEY,
                 secret_sha256 BLOB NOT NULL,
                 created_at INTEGER NOT NULL,
                 expires_at INTEGER NOT NULL,
                 used_at INTEGER,
                 used_by TEXT);
             CREATE TABLE members (
                 node_id TEXT PRIMARY KEY,
                 mldsa_public_key BLOB NOT NULL,
                 tls_point BLOB NOT NULL,
                 first_issued_at INTEGER NOT NULL,
                 last_issued_at INTEGER NOT NULL,
                 not_after INTEGER NOT NULL);
             CREATE TABLE revoked_nodes (
                 node_id TEXT PRIMARY KEY,
                 revoked_at INTEGER NOT NULL,
                 reason TEXT NOT NULL);
             CREATE TABLE revocation_list (
                 id INTEGER PRIMARY KEY CHECK (id = 1),
                 serial INTEGER NOT NULL,
                 signed BLOB NOT NULL);
             CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
             PRAGMA user_version = 1;
             COMMIT;",
        )?;
        Ok(())
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Changes whenever another connection commits; cheap to poll.
    pub fn data_version(&self) -> Result<i64, StoreError> {
        Ok(self
            .conn
            .query_row("PRAGMA data_version", [], |r| r.get(0))?)
    }

    /// The node's keys, if `init` ran.
    pub fn node_keys(&self) -> Result<Option<NodeKeys>, StoreError> {
        let row: Option<(Vec<u8>, Vec<u8>, String)> = self
            .conn
            .query_row(
                "SELECT tls_pkcs8, mldsa_seed, node_id FROM node_identity WHERE id = 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        let Some((tls, seed, stored_id)) = row else {
            return Ok(None);
        };
        let keys = NodeKeys::from_stored(&tls, &seed)?;
        if keys.node_id().to_string() != stored_id {
            return Err(StoreError::InvalidValue(
                "node identity (node ID does not match keys)",
            ));
        }
        Ok(Some(keys))
    }

    /// Stores the node's keys. Returns `false`, changing nothing, if an identity exists.
    pub fn create_node_keys(&self, keys: &NodeKeys, now_unix: u64) -> Result<bool, StoreError> {
        let n = self.conn.execute(
            "INSERT OR IGNORE INTO node_identity (id, node_id, tls_pkcs8, mldsa_seed, created_at)
             VALUES (1, ?1, ?2, ?3, ?4)",
            params![
                keys.node_id().to_string(),
                keys.tls_pkcs8_der(),
                &keys.mldsa_seed()[..],
                to_i64(now_unix)
            ],
        )?;
        Ok(n == 1)
    }

    /// The mesh CA, on the CA node.
    pub fn ca(&self) -> Result<Option<MeshCa>, StoreError> {
        let row: Option<(String, Vec<u8>, Vec<u8>)> = self
            .conn
            .query_row(
                "SELECT trust_domain, key_pkcs8, cert_der FROM ca WHERE id = 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        let Some((td, key, cert)) = row else {
            return Ok(None);
        };
        let td = TrustDomain::new(&td).map_err(|_| StoreError::InvalidValue("CA trust domain"))?;
        Ok(Some(MeshCa::from_stored(td, key, cert)?))
    }

    /// Stores a new CA. Returns `false`, changing nothing, if a CA exists.
    pub fn create_ca(
        &self,
        ca: &MeshCa,
        svid_ttl: Duration,
        now_unix: u64,
    ) -> Result<bool, StoreError> {
        let n = self.conn.execute(
            "INSERT OR IGNORE INTO ca (id, trust_domain, key_pkcs8, cert_der, svid_ttl_s, created_at)
             VALUES (1, ?1, ?2, ?3, ?4, ?5)",
            params![
                ca.trust_domain().as_str(),
                ca.key_pkcs8_der(),
                ca.cert_der().as_ref(),
                to_i64(svid_ttl.as_secs()),
                to_i64(now_unix)
            ],
        )?;
        Ok(n == 1)
    }

    /// The lifetime of SVIDs this CA issues.
    pub fn svid_ttl(&self) -> Result<Duration, StoreError> {
        let s: Option<i64> = self
            .conn
            .query_row("SELECT svid_ttl_s FROM ca WHERE id = 1", [], |r| r.get(0))
            .optional()?;
        Ok(Duration::from_secs(to_u64(s.unwrap_or(3600)).max(1)))
    }

    /// The node's membership, once it holds an SVID.
    pub fn membership(&self) -> Result<Option<Membership>, StoreError> {
        let row: Option<MembershipRow> = self
            .conn
            .query_row(
                "SELECT trust_domain, svid_der, bundle_pem, ca_addr, not_after FROM membership WHERE id = 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )
            .optional()?;
        let Some((td, svid_der, bundle_pem, ca_addr, not_after)) = row else {
            return Ok(None);
        };
        Ok(Some(Membership {
            trust_domain: TrustDomain::new(&td)
                .map_err(|_| StoreError::InvalidValue("membership trust domain"))?,
            svid_der,
            bundle_pem,
            ca_addr,
            not_after_unix: to_u64(not_after),
        }))
    }

    /// Replaces the node's membership (a join or a renewal).
    pub fn set_membership(&self, m: &Membership, now_unix: u64) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO membership (id, trust_domain, svid_der, bundle_pem, ca_addr, not_after, updated_at)
             VALUES (1, ?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (id) DO UPDATE SET trust_domain = excluded.trust_domain,
                 svid_der = excluded.svid_der, bundle_pem = excluded.bundle_pem,
                 ca_addr = excluded.ca_addr, not_after = excluded.not_after,
                 updated_at = excluded.updated_at",
            params![
                m.trust_domain.as_str(),
                m.svid_der,
                m.bundle_pem,
                m.ca_addr,
                to_i64(m.not_after_unix),
                to_i64(now_unix)
            ],
        )?;
        Ok(())
    }

    /// Records a new invitation; only the SHA-256 of its secret is stored.
    pub fn add_invitation(
        &self,
        id: [u8; 16],
        secret: &[u8; 32],
        now_unix: u64,
        expires_at_unix: u64,
    ) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO invitations (id, secret_sha256, created_at, expires_at) VALUES (?1, ?2, ?3, ?4)",
            params![&id[..], &sha256(secret)[..], to_i64(now_unix), to_i64(expires_at_unix)],
        )?;
        Ok(())
    }

    /// Redeems an invitation for `node`, atomically: a token works once.
    pub fn redeem_invitation(
        &mut self,
        id: &[u8; 16],
        secret: &[u8; 32],
        node: NodeId,
        now_unix: u64,
    ) -> Result<Result<(), InvitationError>, StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let row: Option<InvitationRow> = tx
            .query_row(
                "SELECT secret_sha256, expires_at, used_at, used_by FROM invitations WHERE id = ?1",
                params![&id[..]],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()?;
        let Some((hash, expires_at, used_at, used_by)) = row else {
            return Ok(Err(InvitationError::Unknown));
        };
        if aws_lc_rs::constant_time::verify_slices_are_equal(&hash, &sha256(secret)).is_err() {
            return Ok(Err(InvitationError::BadSecret));
        }
        if let Some(at) = used_at {
            return Ok(Err(InvitationError::Used {
                at: to_u64(at),
                by: used_by.unwrap_or_default(),
            }));
        }
        if to_u64(expires_at) <= now_unix {
            return Ok(Err(InvitationError::Expired(to_u64(expires_at))));
        }
        tx.execute(
            "UPDATE invitations SET used_at = ?1, used_by = ?2 WHERE id = ?3",
            params![to_i64(now_unix), node.to_string(), &id[..]],
        )?;
        tx.commit()?;
        Ok(Ok(()))
    }

    /// All invitations, newest first.
    pub fn invitations(&self) -> Result<Vec<InvitationRecord>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT id, created_at, expires_at, used_at, used_by FROM invitations ORDER BY created_at DESC",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, Vec<u8>>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, Option<i64>>(3)?,
                r.get::<_, Option<String>>(4)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, created, expires, used_at, used_by) = row?;
            out.push(InvitationRecord {
                id: id
                    .try_into()
                    .map_err(|_| StoreError::InvalidValue("invitation id"))?,
                created_at: to_u64(created),
                expires_at: to_u64(expires),
                used_at: used_at.map(to_u64),
                used_by,
            });
        }
        Ok(out)
    }

    /// Records an SVID the CA issued to `node`.
    pub fn record_member(
        &self,
        node: NodeId,
        mldsa_public_key: &[u8],
        tls_point: &[u8],
        now_unix: u64,
        not_after_unix: u64,
    ) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO members (node_id, mldsa_public_key, tls_point, first_issued_at, last_issued_at, not_after)
             VALUES (?1, ?2, ?3, ?4, ?4, ?5)
             ON CONFLICT (node_id) DO UPDATE SET last_issued_at = excluded.last_issued_at,
                 not_after = excluded.not_after",
            params![node.to_string(), mldsa_public_key, tls_point, to_i64(now_unix), to_i64(not_after_unix)],
        )?;
        Ok(())
    }

    /// Whether the CA issued an SVID to `node`.
    pub fn is_member(&self, node: NodeId) -> Result<bool, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT 1 FROM members WHERE node_id = ?1",
                params![node.to_string()],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }

    /// Revokes `node` and, in the same transaction, signs and stores the next revocation list.
    /// Returns the new list, or `None` if the node was already revoked.
    pub fn revoke(
        &mut self,
        ca: &MeshCa,
        node: NodeId,
        reason: &str,
        now_unix: u64,
    ) -> Result<Option<SignedRevocationList>, StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let added = tx.execute(
            "INSERT OR IGNORE INTO revoked_nodes (node_id, revoked_at, reason) VALUES (?1, ?2, ?3)",
            params![node.to_string(), to_i64(now_unix), reason],
        )?;
        if added == 0 {
            return Ok(None);
        }
        let serial: i64 = tx
            .query_row("SELECT serial FROM revocation_list WHERE id = 1", [], |r| {
                r.get(0)
            })
            .optional()?
            .unwrap_or(0);
        let mut revoked = Vec::new();
        {
            let mut stmt = tx.prepare("SELECT node_id FROM revoked_nodes")?;
            for id in stmt.query_map([], |r| r.get::<_, String>(0))? {
                revoked.push(
                    id?.parse()
                        .map_err(|_| StoreError::InvalidValue("revoked node id"))?,
                );
            }
        }
        revoked.sort();
        let list = RevocationList {
            trust_domain: ca.trust_domain().to_string(),
            serial: to_u64(serial) + 1,
            issued_at_unix: now_unix,
            revoked,
        };
        let signed = ca.sign_revocations(&list)?;
        tx.execute(
            "INSERT INTO revocation_list (id, serial, signed) VALUES (1, ?1, ?2)
             ON CONFLICT (id) DO UPDATE SET serial = excluded.serial, signed = excluded.signed",
            params![to_i64(list.serial), signed.encode()],
        )?;
        tx.commit()?;
        Ok(Some(signed))
    }

    /// The newest verified revocation list this node holds.
    pub fn revocation_list(
        &self,
    ) -> Result<Option<(SignedRevocationList, RevocationList)>, StoreError> {
        let blob: Option<Vec<u8>> = self
            .conn
            .query_row("SELECT signed FROM revocation_list WHERE id = 1", [], |r| {
                r.get(0)
            })
            .optional()?;
        blob.map(|b| {
            SignedRevocationList::decode(&b)
                .map_err(|_| StoreError::InvalidValue("revocation list"))
        })
        .transpose()
    }

    /// Stores a verified list if its serial is higher than the stored one. Returns whether it
    /// was stored.
    pub fn store_revocation_list_if_newer(
        &self,
        signed: &SignedRevocationList,
        list: &RevocationList,
    ) -> Result<bool, StoreError> {
        let n = self.conn.execute(
            "INSERT INTO revocation_list (id, serial, signed) VALUES (1, ?1, ?2)
             ON CONFLICT (id) DO UPDATE SET serial = excluded.serial, signed = excluded.signed
             WHERE excluded.serial > revocation_list.serial",
            params![to_i64(list.serial), signed.encode()],
        )?;
        Ok(n == 1)
    }

    /// Reads a `meta` value.
    pub fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT value FROM meta WHERE key = ?1", params![key], |r| {
                r.get(0)
            })
            .optional()?)
    }

    /// Writes a `meta` value.
    pub fn set_meta(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO meta (key, value) VALUES (?1, ?2)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            params![key, value],
        )?;
        Ok(())
    }
}
