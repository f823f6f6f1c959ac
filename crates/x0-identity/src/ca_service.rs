//! The CA service of the CA node: joins and renewals, kept off the node's shared store.
//!
//! The daemon holds one [`StateStore`] behind a lock that routing (the advert sequence number),
//! the revocation watcher and SVID renewal take. Handling a join under that lock means two
//! signature verifications, an SQLite transaction with its fsync and an SVID signature while
//! routing waits, and a join costs its sender little more than a handshake: a flood of joins
//! stalls routing. [`CaService`] therefore
//!
//! * keeps **its own SQLite connection** behind its own lock (SQLite in WAL mode serialises the
//!   writes of the two connections itself, one short transaction at a time);
//! * **verifies before locking**: the proofs of possession are checked with no lock held, so
//!   forged requests never reach the store, and the SVID is signed after the lock is released
//!   (see the three steps in [`crate::authority`]);
//! * **bounds the requests in flight** ([`CaService::admit`]): beyond `max_in_flight` a request
//!   is refused as [`RefusalCode::Busy`] and counted, so the store sees at most that many
//!   transactions queued and the shell at most that many blocking threads.
//!
//! Ownership: the shell owns an `Arc<CaService>`; each admitted request holds a [`CaPermit`]
//! until it is answered. Nothing here reads the clock; the shell passes `now` and runs
//! [`CaPermit::handle`] on a blocking thread.

use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use rustls_pki_types::UnixTime;
use tracing::error;
use x0_wire::ControlMessage;
use x0_wire::control::{Issued, RefusalCode, Refused};

use crate::authority::{
    Admission, Proven, admit_join, admit_renewal, issue_admitted, verify_join, verify_renewal,
};
use crate::ca::MeshCa;
use crate::proof::EXPORTER_LEN;
use crate::store::{Redemption, StateStore, StoreError};
use crate::svid::VerifiedSvid;

/// Requests handled at once unless the shell says otherwise: enough to keep a 2-core CA node
/// busy verifying while one request is in the store.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 4;

/// Counters of the CA service (the shell exports them as metrics).
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct CaServiceStats {
    /// Joins answered with an SVID on the invitation's first use.
    pub joins_issued: AtomicU64,
    /// Joins answered with an SVID for a node that had redeemed its invitation before (its
    /// first answer was lost).
    pub joins_repeated: AtomicU64,
    /// Renewals answered with an SVID.
    pub renewals_issued: AtomicU64,
    /// Requests refused: bad proofs, invitation problems, revoked nodes, renewals without an
    /// SVID, unexpected messages.
    pub refused: AtomicU64,
    /// Requests refused because `max_in_flight` requests were being handled.
    pub refused_busy: AtomicU64,
    /// Requests that failed in the store or in signing (answered `internal`).
    pub failed: AtomicU64,
}

/// Joins and renewals on the CA node, on their own store connection. See the module doc.
#[derive(Debug)]
pub struct CaService {
    ca: MeshCa,
    store: Mutex<StateStore>,
    max_in_flight: usize,
    in_flight: AtomicUsize,
    stats: CaServiceStats,
}

impl CaService {
    /// Opens the service on state directory `dir` with a connection of its own. `Ok(None)` if
    /// this node holds no CA.
    pub fn open(dir: &Path, max_in_flight: usize) -> Result<Option<Arc<Self>>, StoreError> {
        let store = StateStore::open_existing(dir)?;
        let Some(ca) = store.ca()? else {
            return Ok(None);
        };
        Ok(Some(Self::new(store, ca, max_in_flight)))
    }

    /// The service over `store`, which should be a connection nobody else locks. At least one
    /// request is admitted at a time.
    pub fn new(store: StateStore, ca: MeshCa, max_in_flight: usize) -> Arc<Self> {
        Arc::new(Self {
            ca,
            store: Mutex::new(store),
            max_in_flight: max_in_flight.max(1),
            in_flight: AtomicUsize::new(0),
            stats: CaServiceStats::default(),
        })
    }

    /// Admits one request if fewer than `max_in_flight` are being handled; otherwise counts it
    /// in `refused_busy` and returns `None` (answer it with [`CaService::busy`]).
    pub fn admit(self: &Arc<Self>) -> Option<CaPermit> {
        let admitted = self
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max_in_flight).then_some(n + 1)
            });
        match admitted {
            Ok(_) => Some(CaPermit {
                service: self.clone(),
            }),
            Err(_) => {
                self.stats.refused_busy.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// The answer to a request that [`CaService::admit`] turned away.
    pub fn busy() -> ControlMessage {
        ControlMessage::Refused(Refused {
            code: RefusalCode::Busy,
            message: "the CA node is handling as many requests as it allows; try again shortly"
                .into(),
        })
    }

    /// Requests admitted and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Counters.
    pub fn stats(&self) -> &CaServiceStats {
        &self.stats
    }

    /// The mesh CA.
    pub fn ca(&self) -> &MeshCa {
        &self.ca
    }

    /// The service's own store connection (not the one routing uses), locked. Every request
    /// holds it for one short transaction; hold it briefly too (listing invitations, revoking).
    pub fn store(&self) -> MutexGuard<'_, StateStore> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Step 2 under the service's lock, then step 3 without it.
    fn admit_and_issue(
        &self,
        proven: &Proven<'_>,
        now: UnixTime,
        admit: impl FnOnce(&mut StateStore) -> Result<Result<Admission, Refused>, StoreError>,
    ) -> Result<Result<(Issued, Option<Redemption>), Refused>, StoreError> {
        let admitted = admit(&mut self.store())?;
        let admission = match admitted {
            Ok(a) => a,
            Err(r) => return Ok(Err(r)),
        };
        let redemption = admission.redemption;
        let issued = issue_admitted(&self.ca, proven, admission, now)?;
        Ok(Ok((issued, redemption)))
    }
}

/// One admitted request; frees its place when dropped.
#[derive(Debug)]
pub struct CaPermit {
    service: Arc<CaService>,
}

impl Drop for CaPermit {
    fn drop(&mut self) {
        self.service.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl CaPermit {
    /// Answers a request read on the CA service: a join, or a renewal from `peer` (the client's
    /// verified SVID, if it presented one). `exporter` is the session's TLS exporter value.
    /// Blocks on the store (one transaction): run it on a blocking thread.
    pub fn handle(
        &self,
        request: &ControlMessage,
        peer: Option<&VerifiedSvid>,
        exporter: &[u8; EXPORTER_LEN],
        now: UnixTime,
    ) -> ControlMessage {
        let service = &*self.service;
        let outcome = match request {
            ControlMessage::JoinRequest(req) => match verify_join(req, exporter) {
                Ok(proven) => service
                    .admit_and_issue(&proven, now, |store| admit_join(store, req, &proven, now)),
                Err(r) => Ok(Err(r)),
            },
            ControlMessage::RenewRequest(req) => match verify_renewal(peer, req, exporter) {
                Ok(proven) => service
                    .admit_and_issue(&proven, now, |store| admit_renewal(store, &proven, now)),
                Err(r) => Ok(Err(r)),
            },
            other => Ok(Err(Refused {
                code: RefusalCode::Internal,
                message: format!("unexpected request {} on the CA service", other.name()),
            })),
        };
        let stats = &service.stats;
        let counter = |c: &AtomicU64| c.fetch_add(1, Ordering::Relaxed);
        match outcome {
            Ok(Ok((issued, redemption))) => {
                counter(match redemption {
                    Some(Redemption::First) => &stats.joins_issued,
                    Some(Redemption::Repeated) => &stats.joins_repeated,
                    None => &stats.renewals_issued,
                });
                ControlMessage::Issued(issued)
            }
            Ok(Err(refused)) => {
                counter(&stats.refused);
                ControlMessage::Refused(refused)
            }
            Err(e) => {
                counter(&stats.failed);
                error!("CA request failed: {e}");
                ControlMessage::Refused(Refused {
                    code: RefusalCode::Internal,
                    message: "CA storage error".into(),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Duration;

    use tempfile::TempDir;
    use x0_wire::control::JoinRequest;

    use super::*;
    use crate::authority::signed_join_request;
    use crate::keys::NodeKeys;
    use crate::spiffe::TrustDomain;

    const NOW: u64 = 1_800_000_000;
    const EXPORTER: [u8; EXPORTER_LEN] = [0x42; EXPORTER_LEN];
    /// Bounds waits on threads so that a broken test fails instead of hanging.
    const WAIT: Duration = Duration::from_secs(20);

    fn now() -> UnixTime {
        UnixTime::since_unix_epoch(Duration::from_secs(NOW))
    }

    /// A CA node's state directory with `invitations` invitations (ID and secret `[i; _]`), the
    /// daemon's shared store as routing uses it, and the CA service on its own connection.
    struct CaNode {
        _dir: TempDir,
        shared: Arc<Mutex<StateStore>>,
        service: Arc<CaService>,
    }

    impl CaNode {
        fn new(invitations: u8, max_in_flight: usize) -> Self {
            let dir = tempfile::tempdir().unwrap();
            let state = dir.path().join("state");
            let shared = StateStore::open(&state).unwrap();
            let ca = MeshCa::create(TrustDomain::new("mesh.test").unwrap(), now()).unwrap();
            shared
                .create_ca(&ca, Duration::from_secs(3600), NOW)
                .unwrap();
            for i in 1..=invitations {
                shared
                    .add_invitation([i; 16], &[i; 32], NOW, NOW + 600)
                    .unwrap();
            }
            let service = CaService::open(&state, max_in_flight).unwrap().unwrap();
            Self {
                _dir: dir,
                shared: Arc::new(Mutex::new(shared)),
                service,
            }
        }

        /// What routing does after each change of its advert sequence number.
        fn routing_write(&self, seq: u64) {
            self.shared
                .lock()
                .unwrap()
                .set_meta("routing_seq", &seq.to_string())
                .unwrap();
        }
    }

    fn join(keys: &NodeKeys, invitation: u8) -> ControlMessage {
        ControlMessage::JoinRequest(signed_join_request(
            keys,
            [invitation; 16],
            [invitation; 32],
            &EXPORTER,
        ))
    }

    fn is_issued(msg: &ControlMessage) -> bool {
        matches!(msg, ControlMessage::Issued(_))
    }

    fn code(msg: &ControlMessage) -> Option<RefusalCode> {
        match msg {
            ControlMessage::Refused(r) => Some(r.code),
            _ => None,
        }
    }

    #[test]
    fn a_directory_without_a_ca_has_no_service() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        drop(StateStore::open(&state).unwrap());
        assert!(CaService::open(&state, 4).unwrap().is_none());
    }

    /// The lock routing takes is not the one joins take: while `N` joins are in flight (held up
    /// in the CA service's own store), routing writes its sequence number as often as it likes.
    /// With the daemon's former single lock, these writes would wait for every join.
    #[test]
    fn routing_writes_while_a_join_flood_is_in_flight() {
        const N: u8 = 4;
        let node = CaNode::new(N, usize::from(N));
        let joiners: Vec<NodeKeys> = (0..N).map(|_| NodeKeys::generate().unwrap()).collect();

        let held = node.service.store();
        let (tx, rx) = mpsc::channel();
        let threads: Vec<_> = joiners
            .into_iter()
            .zip(1..=N)
            .map(|(keys, invitation)| {
                let permit = node.service.admit().unwrap();
                let tx = tx.clone();
                std::thread::spawn(move || {
                    let answer = permit.handle(&join(&keys, invitation), None, &EXPORTER, now());
                    tx.send(answer).unwrap();
                })
            })
            .collect();
        assert_eq!(node.service.in_flight(), usize::from(N));
        assert!(node.service.admit().is_none(), "bounded: the next is busy");

        for seq in 1..=50 {
            node.routing_write(seq);
        }
        assert_eq!(
            node.shared.lock().unwrap().meta("routing_seq").unwrap(),
            Some("50".into())
        );
        assert_eq!(
            node.service.in_flight(),
            usize::from(N),
            "routing made progress while every join was still in flight"
        );
        assert!(rx.try_recv().is_err(), "no join finished meanwhile");

        drop(held);
        for _ in 0..N {
            let answer = rx.recv_timeout(WAIT).unwrap();
            assert!(is_issued(&answer), "{answer:?}");
        }
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(node.service.in_flight(), 0);
        let stats = node.service.stats();
        assert_eq!(stats.joins_issued.load(Ordering::Relaxed), u64::from(N));
        assert_eq!(stats.refused_busy.load(Ordering::Relaxed), 1);
    }

    /// Forged joins are refused on CPU alone: they are answered while someone else holds the
    /// CA service's store, so a flood of them never queues on it.
    #[test]
    fn forged_joins_are_refused_without_the_store() {
        let node = CaNode::new(1, 4);
        let keys = NodeKeys::generate().unwrap();
        let mut forged: JoinRequest = signed_join_request(&keys, [1; 16], [1; 32], &EXPORTER);
        forged.mldsa_signature[7] ^= 1;

        let held = node.service.store();
        let (tx, rx) = mpsc::channel();
        let permit = node.service.admit().unwrap();
        let t = std::thread::spawn(move || {
            let msg = ControlMessage::JoinRequest(forged);
            tx.send(permit.handle(&msg, None, &EXPORTER, now()))
                .unwrap();
        });
        let answer = rx
            .recv_timeout(WAIT)
            .expect("a forged join waited for the store");
        assert_eq!(code(&answer), Some(RefusalCode::BadProof));
        drop(held);
        t.join().unwrap();
        assert_eq!(node.service.stats().refused.load(Ordering::Relaxed), 1);
        assert_eq!(node.service.store().invitations().unwrap()[0].used_at, None);
    }

    #[test]
    fn admission_is_bounded_and_places_come_back() {
        let node = CaNode::new(0, 2);
        let a = node.service.admit().unwrap();
        let b = node.service.admit().unwrap();
        assert!(node.service.admit().is_none());
        assert!(node.service.admit().is_none());
        assert_eq!(node.service.stats().refused_busy.load(Ordering::Relaxed), 2);
        drop(a);
        let c = node.service.admit().unwrap();
        assert_eq!(node.service.in_flight(), 2);
        drop((b, c));
        assert_eq!(node.service.in_flight(), 0);
        assert_eq!(code(&CaService::busy()), Some(RefusalCode::Busy));

        let at_least_one = CaNode::new(0, 0);
        let only = at_least_one.service.admit().unwrap();
        assert!(at_least_one.service.admit().is_none());
        drop(only);
    }

    /// The joiner never saw the first answer and asks again with the same keys: it gets an SVID
    /// (counted apart); another node with the same token does not.
    #[test]
    fn a_lost_answer_is_repaired_by_asking_again() {
        let node = CaNode::new(1, 4);
        let keys = NodeKeys::generate().unwrap();
        let handle = |msg: &ControlMessage| {
            node.service
                .admit()
                .unwrap()
                .handle(msg, None, &EXPORTER, now())
        };
        assert!(is_issued(&handle(&join(&keys, 1))));
        assert!(is_issued(&handle(&join(&keys, 1))), "the same node again");
        let other = NodeKeys::generate().unwrap();
        assert_eq!(
            code(&handle(&join(&other, 1))),
            Some(RefusalCode::InvitationUsed)
        );
        let stats = node.service.stats();
        assert_eq!(stats.joins_issued.load(Ordering::Relaxed), 1);
        assert_eq!(stats.joins_repeated.load(Ordering::Relaxed), 1);
        assert_eq!(stats.refused.load(Ordering::Relaxed), 1);
        assert_eq!(
            code(&handle(&ControlMessage::CaProofRequest)),
            Some(RefusalCode::Internal)
        );
    }
}
