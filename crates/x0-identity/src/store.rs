//! The node's state database.
//!
//! One SQLite file, `state.db`, under the state directory, in WAL mode with `synchronous=FULL`,
//! so that a write the node acknowledged (an identity, an invitation, a revocation) survives a
//! crash or `kill -9`. The file holds private keys: it is created with mode 0600 inside a 0700
//! directory. Opening refuses a directory, a database or an SQLite side file (`state.db-wal`,
//! `state.db-shm`, `state.db-journal`) that others may read or write, that another user owns,
//! or (for the files) that is not a plain file. A damaged file is reported, never repaired or
//! replaced.
//!
//! Tables: `node_identity` (the node's keys), `ca` (the mesh CA, on the CA node only),
//! `membership` (the node's SVID and trust bundle), `invitations`, `members` (SVIDs the CA
//! issued), `revoked_nodes` and `revocation_list` (the newest verified signed list), `meta`.

use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
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
    /// A file or the directory of the store belongs to another user.
    #[error(
        "{path}: owned by uid {owner}, but x0t runs as uid {expected}; run `chown {expected} {path}` or run x0t as uid {owner}"
    )]
    WrongOwner {
        /// The offending path.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// The effective user ID of this process.
        expected: u32,
    },
    /// Something other than a plain file (a symlink, a device, ...) where the store keeps a file.
    #[error(
        "{0}: not a regular file; x0t keeps its state in plain files and does not follow links here"
    )]
    NotRegularFile(PathBuf),
    /// The store holds no node identity where one is required (an invitation names the CA
    /// node by its node ID).
    #[error("{0}: this node has no identity yet; run `x0t init --state-dir {0}` first")]
    NoNodeIdentity(String),
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
    /// The node that wants to redeem it is revoked.
    #[error("the joining node is revoked")]
    NodeRevoked,
}

/// How an invitation was redeemed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Redemption {
    /// The invitation's first use.
    First,
    /// The node that redeemed it before asks again while it is still valid (the CA's answer was
    /// lost on the way): it gets another SVID for the same keys.
    Repeated,
}

/// What the CA records about a node it issues an SVID to.
#[derive(Debug, Clone, Copy)]
pub struct MemberRecord<'a> {
    /// The node.
    pub node: NodeId,
    /// Its ML-DSA-65 public key.
    pub mldsa_public_key: &'a [u8],
    /// Its P-256 TLS public key (uncompressed point).
    pub tls_point: &'a [u8],
    /// `notAfter` of the SVID being issued (unix seconds).
    pub not_after_unix: u64,
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

/// `None` if SQLite finds the database sound, else its first findings. The first row of a
/// failed check is only the header `*** in database main ***`, so all rows are kept.
pub fn quick_check(conn: &Connection) -> rusqlite::Result<Option<String>> {
    let mut stmt = conn.prepare("PRAGMA quick_check(8)")?;
    let mut rows = stmt.query([])?;
    let mut findings: Vec<String> = Vec::new();
    loop {
        match rows.next() {
            Ok(Some(row)) => findings.push(row.get(0)?),
            Ok(None) => break,
            // The check can itself trip over the damage after reporting some of it.
            Err(e) if !findings.is_empty() => {
                findings.push(e.to_string());
                break;
            }
            Err(e) => return Err(e),
        }
    }
    if findings == ["ok"] {
        Ok(None)
    } else {
        Ok(Some(findings.join("; ").replace('\n', "; ")))
    }
}

fn upsert_member(conn: &Connection, m: &MemberRecord<'_>, now_unix: u64) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO members (node_id, mldsa_public_key, tls_point, first_issued_at, last_issued_at, not_after)
         VALUES (?1, ?2, ?3, ?4, ?4, ?5)
         ON CONFLICT (node_id) DO UPDATE SET last_issued_at = excluded.last_issued_at,
             not_after = excluded.not_after",
        params![
            m.node.to_string(),
            m.mldsa_public_key,
            m.tls_point,
            to_i64(now_unix),
            to_i64(m.not_after_unix)
        ],
    )?;
    Ok(())
}

fn is_revoked(conn: &Connection, node: NodeId) -> Result<bool, StoreError> {
    Ok(conn
        .query_row(
            "SELECT 1 FROM revoked_nodes WHERE node_id = ?1",
            params![node.to_string()],
            |_| Ok(()),
        )
        .optional()?
        .is_some())
}

/// SQLite's files next to the database: write-ahead log, shared-memory index, rollback journal.
const SIDECARS: [&str; 3] = ["-wal", "-shm", "-journal"];

/// Refuses `path` if any of the `forbidden` mode bits is set (the fix is `chmod`) or if it is
/// not owned by `euid`: its owner could change it at will, whatever its mode.
fn check_private(
    path: &Path,
    meta: &fs::Metadata,
    forbidden: u32,
    chmod: &str,
    euid: u32,
) -> Result<(), StoreError> {
    let mode = meta.permissions().mode() & 0o7777;
    if mode & forbidden != 0 {
        return Err(StoreError::InsecurePermissions {
            path: path.to_owned(),
            mode,
            fix: format!("run `{chmod} {}`", path.display()),
        });
    }
    if meta.uid() != euid {
        return Err(StoreError::WrongOwner {
            path: path.to_owned(),
            owner: meta.uid(),
            expected: euid,
        });
    }
    Ok(())
}

/// [`check_private`] for a file of the store (not followed if it is a symlink): a plain file,
/// 0600 or stricter, ours.
fn check_private_file(path: &Path, meta: &fs::Metadata, euid: u32) -> Result<(), StoreError> {
    if !meta.file_type().is_file() {
        return Err(StoreError::NotRegularFile(path.to_owned()));
    }
    check_private(path, meta, 0o077, "chmod 600", euid)
}

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
        let euid = rustix::process::geteuid().as_raw();
        match fs::metadata(dir) {
            Ok(meta) => {
                if !meta.is_dir() {
                    return Err(StoreError::Io {
                        path: dir.to_owned(),
                        source: io::Error::other("not a directory"),
                    });
                }
                // A directory that holds no store (say `/tmp`) is better answered with "no
                // state here" than with advice to chmod it.
                if !create
                    && fs::symlink_metadata(&db_path)
                        .is_err_and(|e| e.kind() == io::ErrorKind::NotFound)
                {
                    return Err(StoreError::Missing(db_path, dir.display().to_string()));
                }
                check_private(dir, &meta, 0o077, "chmod 700", euid)?;
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
        match fs::symlink_metadata(&db_path) {
            Ok(meta) => check_private_file(&db_path, &meta, euid)?,
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

        // SQLite's own files next to the database hold recent writes (the WAL) and its lock
        // state: a crash leaves them behind, and SQLite opens whatever it finds.
        for sidecar in SIDECARS {
            let path = dir.join(format!("{DB_FILE}{sidecar}"));
            match fs::symlink_metadata(&path) {
                Ok(meta) => check_private_file(&path, &meta, euid)?,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&path)(e)),
            }
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
        if let Some(detail) = quick_check(&conn).map_err(corrupt)? {
            return Err(StoreError::Corrupt {
                path: db_path,
                detail,
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

    /// Redeems an invitation for `member.node` and records the member, in one transaction (one
    /// fsync): a token admits one node.
    ///
    /// The same node may redeem it again while it is valid ([`Redemption::Repeated`]): if the
    /// CA's answer to the first redemption was lost, the joiner retries with the same keys
    /// (which the caller has checked, by the join proof, hash to `member.node`) and must get
    /// its SVID rather than find its invitation burnt. Any other node is refused
    /// ([`InvitationError::Used`]). A revoked node is refused and the invitation left unused.
    pub fn redeem_invitation(
        &mut self,
        id: &[u8; 16],
        secret: &[u8; 32],
        member: &MemberRecord<'_>,
        now_unix: u64,
    ) -> Result<Result<Redemption, InvitationError>, StoreError> {
        let node = member.node.to_string();
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
        let redemption = match (used_at, used_by) {
            (Some(_), Some(by)) if by == node => Redemption::Repeated,
            (Some(at), by) => {
                return Ok(Err(InvitationError::Used {
                    at: to_u64(at),
                    by: by.unwrap_or_default(),
                }));
            }
            (None, _) => Redemption::First,
        };
        if to_u64(expires_at) <= now_unix {
            return Ok(Err(InvitationError::Expired(to_u64(expires_at))));
        }
        if is_revoked(&tx, member.node)? {
            return Ok(Err(InvitationError::NodeRevoked));
        }
        if redemption == Redemption::First {
            tx.execute(
                "UPDATE invitations SET used_at = ?1, used_by = ?2 WHERE id = ?3",
                params![to_i64(now_unix), node, &id[..]],
            )?;
        }
        upsert_member(&tx, member, now_unix)?;
        tx.commit()?;
        Ok(Ok(redemption))
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

    /// Records an SVID the CA issues to `member.node` (a renewal; a join records it with
    /// [`StateStore::redeem_invitation`]).
    pub fn record_member(
        &self,
        member: &MemberRecord<'_>,
        now_unix: u64,
    ) -> Result<(), StoreError> {
        upsert_member(&self.conn, member, now_unix)
    }

    /// Whether the CA revoked `node` (on the CA node, whose `revoked_nodes` table is the source
    /// of the signed lists).
    pub fn is_revoked(&self, node: NodeId) -> Result<bool, StoreError> {
        is_revoked(&self.conn, node)
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

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;
    use std::process::Command;

    use rustls_pki_types::{CertificateDer, UnixTime};
    use tempfile::TempDir;

    use super::*;
    use crate::svid::TrustBundle;

    const NOW: u64 = 1_800_000_000;
    /// Set in the child process of [`invitation_survives_abort_right_after_the_write`].
    const CRASH_CHILD_ENV: &str = "X0T_STORE_CRASH_CHILD_DIR";
    const CRASH_ID: [u8; 16] = [0xc7; 16];
    const CRASH_SECRET: [u8; 32] = [0x5e; 32];

    fn now() -> UnixTime {
        UnixTime::since_unix_epoch(Duration::from_secs(NOW))
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    fn chmod(path: &Path, mode: u32) {
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    /// A fresh state directory that does not exist yet, inside a temporary directory.
    fn state_dir() -> (TempDir, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state");
        (tmp, dir)
    }

    fn ca() -> MeshCa {
        MeshCa::create(TrustDomain::new("mesh.test").unwrap(), now()).unwrap()
    }

    /// Deterministic bytes that are not an SQLite header or page.
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

    /// A closed store in `dir` holding keys, a CA, invitations and a revocation list.
    fn populated(dir: &Path) {
        let mut store = StateStore::open(dir).unwrap();
        store
            .create_node_keys(&NodeKeys::generate().unwrap(), NOW)
            .unwrap();
        let ca = ca();
        store
            .create_ca(&ca, Duration::from_secs(3600), NOW)
            .unwrap();
        for i in 0..32u8 {
            store
                .add_invitation([i; 16], &[i; 32], NOW, NOW + 3600)
                .unwrap();
        }
        store
            .revoke(&ca, NodeId::from_bytes([9; 16]), "test", NOW)
            .unwrap();
        drop(store);
        assert!(
            !dir.join("state.db-wal").exists(),
            "closing the last connection checkpoints the WAL"
        );
    }

    /// Returns SQLite's findings.
    fn assert_corrupt_and_untouched(dir: &Path) -> String {
        let db = dir.join(DB_FILE);
        let before = fs::read(&db).unwrap();
        let mut details = Vec::new();
        for result in [StateStore::open(dir), StateStore::open_existing(dir)] {
            match result {
                Err(e @ StoreError::Corrupt { .. }) => {
                    assert!(e.to_string().contains("left untouched"));
                    let StoreError::Corrupt { path, detail } = e else {
                        unreachable!()
                    };
                    assert_eq!(path, db);
                    details.push(detail);
                }
                other => panic!("expected Corrupt, got {other:?}"),
            }
        }
        assert_eq!(
            fs::read(&db).unwrap(),
            before,
            "a damaged file must not be changed"
        );
        assert_eq!(mode(&db), 0o600);
        assert_eq!(details[0], details[1]);
        details.swap_remove(0)
    }

    #[test]
    fn creates_a_0700_directory_and_a_0600_database() {
        let (_tmp, dir) = state_dir();
        let store = StateStore::open(&dir).unwrap();
        assert_eq!(store.dir(), dir);
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join(DB_FILE)), 0o600);
        // SQLite gives the WAL and shared-memory files the database's mode.
        store.set_meta("k", "v").unwrap();
        for sidecar in ["state.db-wal", "state.db-shm"] {
            let p = dir.join(sidecar);
            if p.exists() {
                assert_eq!(mode(&p), 0o600, "{sidecar}");
            }
        }
        let journal: String = store
            .conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(journal, "wal");
        let synchronous: i64 = store
            .conn
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .unwrap();
        assert_eq!(synchronous, 2, "synchronous=FULL");
    }

    #[test]
    fn refuses_a_directory_writable_by_others() {
        let (_tmp, dir) = state_dir();
        drop(StateStore::open(&dir).unwrap());
        chmod(&dir, 0o777);
        for result in [StateStore::open(&dir), StateStore::open_existing(&dir)] {
            match result {
                Err(e @ StoreError::InsecurePermissions { .. }) => {
                    let StoreError::InsecurePermissions { path, mode, fix } = &e else {
                        unreachable!()
                    };
                    assert_eq!(path, &dir);
                    assert_eq!(*mode, 0o777);
                    assert_eq!(fix, &format!("run `chmod 700 {}`", dir.display()));
                    let text = e.to_string();
                    assert!(text.contains(&dir.display().to_string()), "{text}");
                    assert!(
                        text.contains("0777") && text.contains("chmod 700"),
                        "{text}"
                    );
                }
                other => panic!("expected InsecurePermissions, got {other:?}"),
            }
        }
        chmod(&dir, 0o700);
        StateStore::open_existing(&dir).unwrap();
    }

    /// `docs/security.md`: a state directory readable by others is refused, not only a writable
    /// one (the database is 0600, but file names, the WAL and the API token are in there too).
    #[test]
    fn refuses_a_directory_readable_by_others() {
        let (_tmp, dir) = state_dir();
        drop(StateStore::open(&dir).unwrap());
        for open_mode in [0o755, 0o750, 0o705, 0o710] {
            chmod(&dir, open_mode);
            for result in [StateStore::open(&dir), StateStore::open_existing(&dir)] {
                match result {
                    Err(StoreError::InsecurePermissions { path, mode, fix }) => {
                        assert_eq!(path, dir);
                        assert_eq!(mode, open_mode);
                        assert_eq!(fix, format!("run `chmod 700 {}`", dir.display()));
                    }
                    other => {
                        panic!("mode {open_mode:o}: expected InsecurePermissions, got {other:?}")
                    }
                }
            }
            assert_eq!(mode(&dir), open_mode, "opening must not change the mode");
        }
        chmod(&dir, 0o700);
        StateStore::open_existing(&dir).unwrap();
    }

    /// Leaves `state.db-wal` and `state.db-shm` behind, as a crash (or a second connection that
    /// is still open) does.
    fn with_sidecars(dir: &Path) -> StateStore {
        let keep = StateStore::open(dir).unwrap();
        keep.set_meta("k", "v").unwrap();
        for name in ["state.db-wal", "state.db-shm"] {
            assert!(dir.join(name).exists(), "{name}");
        }
        keep
    }

    #[test]
    fn refuses_wal_and_shm_files_readable_by_others() {
        let (_tmp, dir) = state_dir();
        let _open = with_sidecars(&dir);
        for name in ["state.db-wal", "state.db-shm"] {
            let path = dir.join(name);
            chmod(&path, 0o644);
            match StateStore::open_existing(&dir) {
                Err(StoreError::InsecurePermissions {
                    path: refused,
                    mode,
                    fix,
                }) => {
                    assert_eq!(refused, path);
                    assert_eq!(mode, 0o644);
                    assert_eq!(fix, format!("run `chmod 600 {}`", path.display()));
                }
                other => panic!("{name}: expected InsecurePermissions, got {other:?}"),
            }
            chmod(&path, 0o600);
        }
        StateStore::open_existing(&dir).unwrap();
    }

    #[test]
    fn refuses_a_symlink_in_place_of_the_wal() {
        let (tmp, dir) = state_dir();
        drop(StateStore::open(&dir).unwrap());
        let elsewhere = tmp.path().join("elsewhere");
        fs::write(&elsewhere, b"").unwrap();
        chmod(&elsewhere, 0o600);
        std::os::unix::fs::symlink(&elsewhere, dir.join("state.db-wal")).unwrap();
        match StateStore::open_existing(&dir) {
            Err(StoreError::NotRegularFile(path)) => assert_eq!(path, dir.join("state.db-wal")),
            other => panic!("expected NotRegularFile, got {other:?}"),
        }
    }

    /// Another user who owns a file in the state directory can change it at will, whatever its
    /// mode: the directory, the database, the WAL and the shared-memory file must be ours.
    #[test]
    fn refuses_files_owned_by_another_user() {
        let (_tmp, dir) = state_dir();
        let _open = with_sidecars(&dir);
        let me = rustix::process::geteuid().as_raw();
        let stranger = me.wrapping_add(1);
        for path in [
            dir.clone(),
            dir.join(DB_FILE),
            dir.join("state.db-wal"),
            dir.join("state.db-shm"),
        ] {
            let meta = fs::symlink_metadata(&path).unwrap();
            let check = if path == dir {
                check_private(&path, &meta, 0o077, "chmod 700", stranger)
            } else {
                check_private(&path, &meta, 0o077, "chmod 600", stranger)
            };
            match check {
                Err(StoreError::WrongOwner {
                    path: refused,
                    owner,
                    expected,
                }) => {
                    assert_eq!(refused, path);
                    assert_eq!(owner, me);
                    assert_eq!(expected, stranger);
                }
                other => panic!("{}: expected WrongOwner, got {other:?}", path.display()),
            }
        }
        // For real, where the test may give a file away (as root).
        if me == 0 {
            let wal = dir.join("state.db-wal");
            std::os::unix::fs::chown(&wal, Some(65534), None).unwrap();
            match StateStore::open_existing(&dir) {
                Err(e @ StoreError::WrongOwner { .. }) => {
                    let text = e.to_string();
                    assert!(
                        text.contains("uid 65534") && text.contains("chown"),
                        "{text}"
                    );
                }
                other => panic!("expected WrongOwner, got {other:?}"),
            }
            std::os::unix::fs::chown(&wal, Some(0), None).unwrap();
        }
        StateStore::open_existing(&dir).unwrap();
    }

    #[test]
    fn refuses_a_database_readable_by_others() {
        let (_tmp, dir) = state_dir();
        drop(StateStore::open(&dir).unwrap());
        let db = dir.join(DB_FILE);
        chmod(&db, 0o644);
        match StateStore::open_existing(&dir) {
            Err(e @ StoreError::InsecurePermissions { .. }) => {
                let StoreError::InsecurePermissions { path, mode, fix } = &e else {
                    unreachable!()
                };
                assert_eq!(path, &db);
                assert_eq!(*mode, 0o644);
                assert_eq!(fix, &format!("run `chmod 600 {}`", db.display()));
                assert!(e.to_string().contains(&db.display().to_string()));
            }
            other => panic!("expected InsecurePermissions, got {other:?}"),
        }
        assert_eq!(mode(&db), 0o644, "opening must not change the mode");
        chmod(&db, 0o600);
        StateStore::open_existing(&dir).unwrap();
    }

    #[test]
    fn open_existing_needs_a_database() {
        let tmp = tempfile::tempdir().unwrap();
        match StateStore::open_existing(tmp.path()) {
            Err(StoreError::Missing(path, dir)) => {
                assert_eq!(path, tmp.path().join(DB_FILE));
                assert_eq!(dir, tmp.path().display().to_string());
            }
            other => panic!("expected Missing, got {other:?}"),
        }
        assert!(!tmp.path().join(DB_FILE).exists(), "nothing was created");

        let (_tmp, absent) = state_dir();
        assert!(matches!(
            StateStore::open_existing(&absent),
            Err(StoreError::Missing(..))
        ));
        assert!(!absent.exists());
    }

    #[test]
    fn refuses_a_file_where_the_directory_should_be() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("file");
        fs::write(&file, b"x").unwrap();
        assert!(matches!(
            StateStore::open(&file),
            Err(StoreError::Io { path, .. }) if path == file
        ));
    }

    #[test]
    fn garbage_file_is_reported_corrupt_and_left_alone() {
        let (_tmp, dir) = state_dir();
        populated(&dir);
        fs::write(dir.join(DB_FILE), garbage(3 * 4096, 7)).unwrap();
        let detail = assert_corrupt_and_untouched(&dir);
        assert!(detail.contains("not a database"), "{detail}");
    }

    #[test]
    fn damaged_page_is_reported_corrupt_and_left_alone() {
        let (_tmp, dir) = state_dir();
        populated(&dir);
        let db = dir.join(DB_FILE);
        let mut bytes = fs::read(&db).unwrap();
        let page_size = match u16::from_be_bytes([bytes[16], bytes[17]]) {
            1 => 65_536,
            n => usize::from(n),
        };
        let pages = bytes.len() / page_size;
        assert!(pages >= 4, "want a page in the middle, have {pages} pages");
        let middle = pages / 2;
        bytes[middle * page_size..(middle + 1) * page_size]
            .copy_from_slice(&garbage(page_size, 11));
        fs::write(&db, &bytes).unwrap();
        let detail = assert_corrupt_and_untouched(&dir);
        // More than SQLite's header line: the operator learns which page is damaged.
        assert!(detail.contains(&format!("page {}", middle + 1)), "{detail}");
        assert!(!detail.contains('\n'), "one line: {detail}");
    }

    #[test]
    fn newer_schema_is_refused() {
        let (_tmp, dir) = state_dir();
        drop(StateStore::open(&dir).unwrap());
        Connection::open(dir.join(DB_FILE))
            .unwrap()
            .pragma_update(None, "user_version", 2)
            .unwrap();
        assert!(matches!(
            StateStore::open(&dir),
            Err(StoreError::NewerSchema {
                found: 2,
                supported: 1
            })
        ));
    }

    #[test]
    fn node_keys_are_created_once() {
        let (_tmp, dir) = state_dir();
        let store = StateStore::open(&dir).unwrap();
        assert!(store.node_keys().unwrap().is_none());
        let first = NodeKeys::generate().unwrap();
        let second = NodeKeys::generate().unwrap();
        assert!(store.create_node_keys(&first, NOW).unwrap());
        assert!(!store.create_node_keys(&second, NOW + 1).unwrap());
        let kept = store.node_keys().unwrap().unwrap();
        assert_eq!(kept.node_id(), first.node_id());
        assert_eq!(kept.mldsa_seed(), first.mldsa_seed());
    }

    #[test]
    fn keys_ca_and_membership_survive_reopen() {
        let (_tmp, dir) = state_dir();
        let keys = NodeKeys::generate().unwrap();
        let ca = ca();
        let membership = Membership {
            trust_domain: ca.trust_domain().clone(),
            svid_der: vec![1, 2, 3],
            bundle_pem: "pem".into(),
            ca_addr: Some("[2001:db8::1]:7101".into()),
            not_after_unix: NOW + 60,
        };
        {
            let store = StateStore::open(&dir).unwrap();
            assert!(store.ca().unwrap().is_none());
            assert!(store.membership().unwrap().is_none());
            assert!(store.create_node_keys(&keys, NOW).unwrap());
            assert!(store.create_ca(&ca, Duration::from_secs(600), NOW).unwrap());
            assert!(
                !store
                    .create_ca(&self::ca(), Duration::from_secs(1), NOW)
                    .unwrap()
            );
            store.set_membership(&membership, NOW).unwrap();
            store.set_meta("listen", "[::]:7100").unwrap();
        }
        let store = StateStore::open_existing(&dir).unwrap();
        let k = store.node_keys().unwrap().unwrap();
        assert_eq!(k.node_id(), keys.node_id());
        assert_eq!(k.tls_pkcs8_der(), keys.tls_pkcs8_der());
        let c = store.ca().unwrap().unwrap();
        assert_eq!(c.fingerprint(), ca.fingerprint());
        assert_eq!(c.key_pkcs8_der(), ca.key_pkcs8_der());
        assert_eq!(c.trust_domain(), ca.trust_domain());
        assert_eq!(store.svid_ttl().unwrap(), Duration::from_secs(600));
        assert_eq!(store.membership().unwrap().unwrap(), membership);
        assert_eq!(store.meta("listen").unwrap().as_deref(), Some("[::]:7100"));
        assert_eq!(store.meta("absent").unwrap(), None);
    }

    /// A member row for `node` with placeholder keys (the store does not interpret them).
    fn member(node: NodeId) -> MemberRecord<'static> {
        MemberRecord {
            node,
            mldsa_public_key: &[7; 8],
            tls_point: &[4; 65],
            not_after_unix: NOW + 3600,
        }
    }

    #[test]
    fn invitations_admit_one_node() {
        let (_tmp, dir) = state_dir();
        let mut store = StateStore::open(&dir).unwrap();
        let node = NodeId::from_bytes([1; 16]);
        let other = NodeId::from_bytes([2; 16]);
        let (id, secret) = ([0xaa; 16], [0xbb; 32]);
        store.add_invitation(id, &secret, NOW, NOW + 600).unwrap();
        assert!(
            store.add_invitation(id, &[0; 32], NOW, NOW + 600).is_err(),
            "IDs are unique"
        );
        let mut redeem = |secret: &[u8; 32], id: &[u8; 16], node: NodeId, at: u64| {
            store
                .redeem_invitation(id, secret, &member(node), at)
                .unwrap()
        };

        assert_eq!(
            redeem(&[0xbc; 32], &id, node, NOW + 1),
            Err(InvitationError::BadSecret)
        );
        assert_eq!(
            redeem(&secret, &[0xab; 16], node, NOW + 1),
            Err(InvitationError::Unknown)
        );
        assert_eq!(redeem(&secret, &id, node, NOW + 2), Ok(Redemption::First));
        assert_eq!(
            redeem(&secret, &id, other, NOW + 3),
            Err(InvitationError::Used {
                at: NOW + 2,
                by: node.to_string()
            })
        );
        assert!(!store.is_member(other).unwrap());
        assert!(
            store.is_member(node).unwrap(),
            "recorded with the redemption"
        );
        let listed = store.invitations().unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].id, id);
        assert_eq!(listed[0].expires_at, NOW + 600);
        assert_eq!(listed[0].used_at, Some(NOW + 2));
        assert_eq!(listed[0].used_by, Some(node.to_string()));
    }

    /// The CA redeemed the invitation but its answer never reached the joiner: the same node
    /// asking again gets in, within the invitation's validity; nobody else does.
    #[test]
    fn the_same_node_may_redeem_again_while_the_invitation_is_valid() {
        let (_tmp, dir) = state_dir();
        let mut store = StateStore::open(&dir).unwrap();
        let node = NodeId::from_bytes([1; 16]);
        let (id, secret) = ([0xaa; 16], [0xbb; 32]);
        store.add_invitation(id, &secret, NOW, NOW + 600).unwrap();
        let mut redeem = |node: NodeId, secret: &[u8; 32], at: u64| {
            store
                .redeem_invitation(&id, secret, &member(node), at)
                .unwrap()
        };
        assert_eq!(redeem(node, &secret, NOW + 1), Ok(Redemption::First));
        assert_eq!(redeem(node, &secret, NOW + 5), Ok(Redemption::Repeated));
        assert_eq!(
            redeem(node, &[0xbc; 32], NOW + 6),
            Err(InvitationError::BadSecret),
            "the secret still has to match"
        );
        assert!(matches!(
            redeem(NodeId::from_bytes([2; 16]), &secret, NOW + 7),
            Err(InvitationError::Used { at, .. }) if at == NOW + 1
        ));
        assert_eq!(
            redeem(node, &secret, NOW + 600),
            Err(InvitationError::Expired(NOW + 600)),
            "only within the invitation's validity"
        );
        let listed = store.invitations().unwrap();
        assert_eq!(
            listed[0].used_at,
            Some(NOW + 1),
            "first use is what is listed"
        );
    }

    #[test]
    fn revoked_nodes_cannot_redeem_and_leave_the_invitation_unused() {
        let (_tmp, dir) = state_dir();
        let mut store = StateStore::open(&dir).unwrap();
        let node = NodeId::from_bytes([1; 16]);
        store.revoke(&ca(), node, "test", NOW).unwrap().unwrap();
        assert!(store.is_revoked(node).unwrap());
        store
            .add_invitation([1; 16], &[1; 32], NOW, NOW + 600)
            .unwrap();
        assert_eq!(
            store
                .redeem_invitation(&[1; 16], &[1; 32], &member(node), NOW + 1)
                .unwrap(),
            Err(InvitationError::NodeRevoked)
        );
        assert_eq!(store.invitations().unwrap()[0].used_at, None);
        assert!(!store.is_member(node).unwrap());
    }

    #[test]
    fn expired_invitations_are_refused() {
        let (_tmp, dir) = state_dir();
        let mut store = StateStore::open(&dir).unwrap();
        let node = NodeId::from_bytes([1; 16]);
        store
            .add_invitation([1; 16], &[1; 32], NOW, NOW + 600)
            .unwrap();
        assert_eq!(
            store
                .redeem_invitation(&[1; 16], &[1; 32], &member(node), NOW + 600)
                .unwrap(),
            Err(InvitationError::Expired(NOW + 600))
        );
        assert_eq!(
            store
                .redeem_invitation(&[1; 16], &[1; 32], &member(node), NOW + 599)
                .unwrap(),
            Ok(Redemption::First),
            "a refused redemption leaves the invitation usable"
        );
    }

    #[test]
    fn invitations_are_listed_newest_first() {
        let (_tmp, dir) = state_dir();
        let store = StateStore::open(&dir).unwrap();
        for (i, at) in [(1u8, NOW), (2, NOW + 20), (3, NOW + 10)] {
            store
                .add_invitation([i; 16], &[i; 32], at, at + 60)
                .unwrap();
        }
        let ids: Vec<u8> = store
            .invitations()
            .unwrap()
            .iter()
            .map(|r| r.id[0])
            .collect();
        assert_eq!(ids, [2, 3, 1]);
    }

    #[test]
    fn revoke_signs_lists_with_increasing_serials() {
        let (_tmp, dir) = state_dir();
        let mut store = StateStore::open(&dir).unwrap();
        let ca = ca();
        let bundle =
            TrustBundle::new(ca.trust_domain().clone(), vec![ca.cert_der().clone()]).unwrap();
        assert!(store.revocation_list().unwrap().is_none());
        let (a, b) = (
            NodeId::from_bytes([0xb0; 16]),
            NodeId::from_bytes([0xa0; 16]),
        );

        let first = store.revoke(&ca, a, "lost", NOW).unwrap().unwrap();
        let list = bundle.verify_revocations(&first).unwrap();
        assert_eq!(list.serial, 1);
        assert_eq!(list.revoked, [a]);
        assert_eq!(list.trust_domain, "mesh.test");

        let second = store.revoke(&ca, b, "stolen", NOW + 5).unwrap().unwrap();
        let list = bundle.verify_revocations(&second).unwrap();
        assert_eq!(list.serial, 2);
        assert_eq!(list.revoked, [b, a], "sorted");
        assert_eq!(list.issued_at_unix, NOW + 5);

        assert!(store.revoke(&ca, a, "again", NOW + 9).unwrap().is_none());
        let (stored, stored_list) = store.revocation_list().unwrap().unwrap();
        assert_eq!(stored, second);
        assert_eq!(stored_list.serial, 2);
    }

    #[test]
    fn only_newer_revocation_lists_are_stored() {
        let (_tmp, ca_dir) = state_dir();
        let (_tmp2, member_dir) = state_dir();
        let mut ca_store = StateStore::open(&ca_dir).unwrap();
        let member = StateStore::open(&member_dir).unwrap();
        let ca = ca();
        let lists: Vec<_> = (1..=3u8)
            .map(|i| {
                let signed = ca_store
                    .revoke(&ca, NodeId::from_bytes([i; 16]), "test", NOW)
                    .unwrap()
                    .unwrap();
                let list = RevocationList::decode(&signed.body).unwrap();
                (signed, list)
            })
            .collect();
        let store = |i: usize| {
            member
                .store_revocation_list_if_newer(&lists[i].0, &lists[i].1)
                .unwrap()
        };
        assert!(store(1), "serial 2 into an empty store");
        assert!(!store(0), "serial 1 is older");
        assert!(!store(1), "serial 2 is not newer than itself");
        assert_eq!(member.revocation_list().unwrap().unwrap().1.serial, 2);
        assert!(store(2));
        assert_eq!(member.revocation_list().unwrap().unwrap().0, lists[2].0);
    }

    #[test]
    fn data_version_changes_when_another_connection_commits() {
        let (_tmp, dir) = state_dir();
        let reader = StateStore::open(&dir).unwrap();
        let writer = StateStore::open_existing(&dir).unwrap();
        let before = reader.data_version().unwrap();
        writer.set_meta("k", "v").unwrap();
        assert_ne!(reader.data_version().unwrap(), before);
        assert_eq!(reader.meta("k").unwrap().as_deref(), Some("v"));
    }

    /// Runs only as the child of [`invitation_survives_abort_right_after_the_write`]: writes an
    /// invitation and dies without unwinding, closing or checkpointing.
    #[test]
    fn crash_child_writes_invitation_then_aborts() {
        let Some(dir) = std::env::var_os(CRASH_CHILD_ENV) else {
            return;
        };
        let store = StateStore::open(Path::new(&dir)).unwrap();
        store
            .add_invitation(CRASH_ID, &CRASH_SECRET, NOW, NOW + 3600)
            .unwrap();
        std::process::abort();
    }

    #[test]
    fn invitation_survives_abort_right_after_the_write() {
        let (_tmp, dir) = state_dir();
        drop(StateStore::open(&dir).unwrap());
        let out = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "store::tests::crash_child_writes_invitation_then_aborts",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CRASH_CHILD_ENV, &dir)
            .output()
            .unwrap();
        assert_eq!(
            out.status.signal(),
            Some(6),
            "child should die of SIGABRT: {:?}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout)
        );
        let wal = dir.join("state.db-wal");
        assert!(
            fs::metadata(&wal).is_ok_and(|m| m.len() > 0),
            "the write should still be in the WAL, not checkpointed"
        );

        let mut store = StateStore::open_existing(&dir).unwrap();
        let listed = store.invitations().unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].id, CRASH_ID);
        assert_eq!(
            store
                .redeem_invitation(
                    &CRASH_ID,
                    &CRASH_SECRET,
                    &member(NodeId::from_bytes([1; 16])),
                    NOW
                )
                .unwrap(),
            Ok(Redemption::First)
        );
    }

    #[test]
    fn membership_rows_hold_what_accept_stores() {
        // A DER blob that is not a certificate still round-trips: the store does not interpret it.
        let (_tmp, dir) = state_dir();
        let store = StateStore::open(&dir).unwrap();
        let der = CertificateDer::from(vec![0x30, 0x00]);
        let m = Membership {
            trust_domain: TrustDomain::new("a.b").unwrap(),
            svid_der: der.to_vec(),
            bundle_pem: String::new(),
            ca_addr: None,
            not_after_unix: u64::MAX,
        };
        store.set_membership(&m, NOW).unwrap();
        let back = store.membership().unwrap().unwrap();
        assert_eq!(back.ca_addr, None);
        assert_eq!(back.svid_der, m.svid_der);
        // Stored as i64: the largest value saturates instead of wrapping negative.
        assert_eq!(back.not_after_unix, i64::MAX as u64);
    }
}
