//! What the CA node does with join and renewal requests, and what a member does with the answer.
//!
//! Transport-free: the link layer hands in the request, the session's exporter value and `now`,
//! and sends back the [`ControlMessage`] returned here.
//!
//! Each request is handled in three steps, so that the expensive ones hold no lock:
//!
//! 1. **verify** ([`verify_join`], [`verify_renewal`]): the proofs of possession, pure CPU (an
//!    ECDSA and an ML-DSA-65 verification), no store;
//! 2. **admit** ([`admit_join`], [`admit_renewal`]): the store, one short transaction (for a
//!    join: redeem the invitation and record the member, one fsync);
//! 3. **issue** ([`issue_admitted`]): sign the SVID with the CA key, no store.
//!
//! [`handle_join`] and [`handle_renew`] run the three with one store; the daemon runs them
//! through [`crate::ca_service::CaService`], which has its own connection and bounds how many
//! requests are in flight.

use std::time::Duration;

use rustls_pki_types::{CertificateDer, UnixTime};
use thiserror::Error;
use tracing::{info, warn};
use x0_wire::control::{Issued, JoinRequest, RefusalCode, Refused, RenewRequest};
use x0_wire::{ControlMessage, NodeId, SignedRevocationList};

use crate::ca::{CaError, MeshCa};
use crate::keys::{NodeKeys, node_id_of, sha256, verify_mldsa65, verify_p256};
use crate::proof::{EXPORTER_LEN, ProofRole, join_transcript, link_transcript};
use crate::spiffe::TrustDomain;
use crate::store::{InvitationError, MemberRecord, Membership, Redemption, StateStore, StoreError};
use crate::svid::{Role, SvidError, TrustBundle, VerifiedSvid, spki_p256_point};

fn refusal(code: RefusalCode, message: impl Into<String>) -> Refused {
    Refused {
        code,
        message: message.into(),
    }
}

/// A request whose proof of possession verified: the node it is for and the keys it proved.
#[derive(Debug, Clone, Copy)]
pub struct Proven<'a> {
    /// The node, derived from both keys.
    pub node: NodeId,
    /// Its P-256 TLS public key (uncompressed point).
    pub tls_point: &'a [u8],
    /// Its ML-DSA-65 public key.
    pub mldsa_public_key: &'a [u8],
}

impl Proven<'_> {
    fn member(&self, not_after_unix: u64) -> MemberRecord<'_> {
        MemberRecord {
            node: self.node,
            mldsa_public_key: self.mldsa_public_key,
            tls_point: self.tls_point,
            not_after_unix,
        }
    }
}

/// What the store admitted: issue an SVID with these.
#[derive(Debug, Clone)]
pub struct Admission {
    /// Lifetime of the SVID to issue.
    pub ttl: Duration,
    /// The CA's current revocation list, sent with the SVID.
    pub revocations: Option<SignedRevocationList>,
    /// For a join: whether this was the invitation's first use or the same node again.
    pub redemption: Option<Redemption>,
}

/// Step 1 of a join: checks both proofs of possession over this session's `exporter`. No store.
pub fn verify_join<'a>(
    req: &'a JoinRequest,
    exporter: &[u8; EXPORTER_LEN],
) -> Result<Proven<'a>, Refused> {
    let Ok(point) = spki_p256_point(&req.tls_spki_der) else {
        return Err(refusal(RefusalCode::BadProof, "TLS key is not ECDSA P-256"));
    };
    let transcript = join_transcript(
        exporter,
        &req.invitation_id,
        &req.tls_spki_der,
        &req.mldsa_public_key,
    );
    if verify_p256(point, &transcript, &req.tls_signature).is_err()
        || verify_mldsa65(&req.mldsa_public_key, &transcript, &req.mldsa_signature).is_err()
    {
        warn!("join refused: proof of possession does not verify");
        return Err(refusal(
            RefusalCode::BadProof,
            "proof of key possession does not verify",
        ));
    }
    Ok(Proven {
        node: node_id_of(point, &req.mldsa_public_key),
        tls_point: point,
        mldsa_public_key: &req.mldsa_public_key,
    })
}

/// Step 2 of a join: redeems the invitation for the proven node and records it as a member, in
/// one transaction. The same node may redeem its invitation again while it is valid (its first
/// answer was lost); a revoked node is refused.
pub fn admit_join(
    store: &mut StateStore,
    req: &JoinRequest,
    proven: &Proven<'_>,
    now: UnixTime,
) -> Result<Result<Admission, Refused>, StoreError> {
    let ttl = store.svid_ttl()?;
    let not_after = now.as_secs().saturating_add(ttl.as_secs());
    let redeemed = store.redeem_invitation(
        &req.invitation_id,
        &req.secret,
        &proven.member(not_after),
        now.as_secs(),
    )?;
    let redemption = match redeemed {
        Ok(r) => r,
        Err(e) => {
            warn!(node = %proven.node, invitation = %hex::encode(req.invitation_id), "join refused: {e}");
            let code = match e {
                InvitationError::Unknown => RefusalCode::UnknownInvitation,
                InvitationError::BadSecret => RefusalCode::BadSecret,
                InvitationError::Used { .. } => RefusalCode::InvitationUsed,
                InvitationError::Expired(_) => RefusalCode::InvitationExpired,
                InvitationError::NodeRevoked => RefusalCode::Revoked,
            };
            let message = match e {
                InvitationError::NodeRevoked => format!("node {} is revoked", proven.node),
                other => other.to_string(),
            };
            return Ok(Err(refusal(code, message)));
        }
    };
    match redemption {
        Redemption::First => info!(node = %proven.node, "node joined; SVID issued"),
        Redemption::Repeated => info!(
            node = %proven.node,
            "node joined again with its invitation (its first answer was lost); SVID issued"
        ),
    }
    Ok(Ok(Admission {
        ttl,
        revocations: store.revocation_list()?.map(|(s, _)| s),
        redemption: Some(redemption),
    }))
}

/// Step 1 of a renewal: the member (`peer`, authenticated by its current SVID) proves its
/// ML-DSA-65 key over this session. No store.
pub fn verify_renewal<'a>(
    peer: Option<&'a VerifiedSvid>,
    req: &'a RenewRequest,
    exporter: &[u8; EXPORTER_LEN],
) -> Result<Proven<'a>, Refused> {
    let Some(peer) = peer else {
        return Err(refusal(
            RefusalCode::NotAuthenticated,
            "renewal needs a valid SVID; an expired node must join again",
        ));
    };
    if node_id_of(&peer.tls_point, &req.mldsa_public_key) != peer.node_id {
        return Err(refusal(
            RefusalCode::BadProof,
            "ML-DSA key is not bound to this node ID",
        ));
    }
    let transcript = link_transcript(ProofRole::Renewer, exporter, peer.node_id);
    if verify_mldsa65(&req.mldsa_public_key, &transcript, &req.pop_signature).is_err() {
        return Err(refusal(
            RefusalCode::BadProof,
            "proof of possession does not verify",
        ));
    }
    Ok(Proven {
        node: peer.node_id,
        tls_point: &peer.tls_point,
        mldsa_public_key: &req.mldsa_public_key,
    })
}

/// Step 2 of a renewal: refuses a revoked node, records the renewal.
pub fn admit_renewal(
    store: &StateStore,
    proven: &Proven<'_>,
    now: UnixTime,
) -> Result<Result<Admission, Refused>, StoreError> {
    if store.is_revoked(proven.node)? {
        return Ok(Err(refusal(
            RefusalCode::Revoked,
            format!("node {} is revoked", proven.node),
        )));
    }
    let ttl = store.svid_ttl()?;
    store.record_member(
        &proven.member(now.as_secs().saturating_add(ttl.as_secs())),
        now.as_secs(),
    )?;
    info!(node = %proven.node, "SVID renewed");
    Ok(Ok(Admission {
        ttl,
        revocations: store.revocation_list()?.map(|(s, _)| s),
        redemption: None,
    }))
}

/// Step 3: signs the SVID for what the store admitted. No store.
pub fn issue_admitted(
    ca: &MeshCa,
    proven: &Proven<'_>,
    admission: Admission,
    now: UnixTime,
) -> Result<Issued, CaError> {
    let svid = ca.issue_svid(proven.tls_point, proven.node, now, admission.ttl)?;
    Ok(Issued {
        trust_domain: ca.trust_domain().to_string(),
        svid_der: svid.to_vec(),
        bundle_der: vec![ca.cert_der().to_vec()],
        revocations: admission.revocations,
    })
}

/// Handles a join with one store: verifies both proofs of possession, redeems the invitation,
/// issues an SVID.
pub fn handle_join(
    store: &mut StateStore,
    ca: &MeshCa,
    req: &JoinRequest,
    exporter: &[u8; EXPORTER_LEN],
    now: UnixTime,
) -> Result<ControlMessage, StoreError> {
    let proven = match verify_join(req, exporter) {
        Ok(p) => p,
        Err(r) => return Ok(ControlMessage::Refused(r)),
    };
    Ok(match admit_join(store, req, &proven, now)? {
        Ok(admission) => ControlMessage::Issued(issue_admitted(ca, &proven, admission, now)?),
        Err(r) => ControlMessage::Refused(r),
    })
}

/// Handles a renewal from a member authenticated by its current SVID (`peer`), with one store.
pub fn handle_renew(
    store: &StateStore,
    ca: &MeshCa,
    peer: Option<&VerifiedSvid>,
    req: &RenewRequest,
    exporter: &[u8; EXPORTER_LEN],
    now: UnixTime,
) -> Result<ControlMessage, StoreError> {
    let proven = match verify_renewal(peer, req, exporter) {
        Ok(p) => p,
        Err(r) => return Ok(ControlMessage::Refused(r)),
    };
    Ok(match admit_renewal(store, &proven, now)? {
        Ok(admission) => ControlMessage::Issued(issue_admitted(ca, &proven, admission, now)?),
        Err(r) => ControlMessage::Refused(r),
    })
}

/// Why an `Issued` answer was not accepted.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum AcceptError {
    /// No bundle certificate is the pinned CA (on a join) or a CA we already trust (on a
    /// renewal).
    #[error(
        "the answering node's CA is not the mesh CA (the invitation's CA fingerprint or the trust bundle held)"
    )]
    WrongCa,
    /// The SVID is invalid or not ours.
    #[error("issued SVID is invalid: {0}")]
    Svid(#[from] SvidError),
    /// The SVID names another node or key.
    #[error("issued SVID is for another node or key")]
    NotOurs,
    /// Bad trust domain, or on a renewal not the one we are a member of.
    #[error("issued trust domain is invalid or not this node's")]
    TrustDomain,
    /// The CA node's own store refused to issue (its node is revoked).
    #[error("the CA refused: {0}")]
    Refused(String),
    /// Storing failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Checks an `Issued` answer against our keys (and, on a join, the pinned CA fingerprint), then
/// stores the membership and any revocation list it carries.
///
/// Any mesh member can answer on the CA service, so the bundle in the answer is not trusted as
/// such: on a join (`pinned_ca`) only the pinned CA certificate is kept, and on a renewal only
/// the CA certificates of the bundle we already hold. The SVID must chain to what is kept.
pub fn accept_issued(
    store: &StateStore,
    keys: &NodeKeys,
    issued: &Issued,
    pinned_ca: Option<&[u8; 32]>,
    ca_addr: Option<String>,
    now: UnixTime,
) -> Result<Membership, AcceptError> {
    let td: TrustDomain = issued
        .trust_domain
        .parse()
        .map_err(|_| AcceptError::TrustDomain)?;
    let trusted: Option<Vec<[u8; 32]>> = match (pinned_ca, store.membership()?) {
        (Some(fp), _) => Some(vec![*fp]),
        (None, Some(current)) => {
            if current.trust_domain != td {
                return Err(AcceptError::TrustDomain);
            }
            let held = TrustBundle::from_pem(current.trust_domain, &current.bundle_pem)?;
            Some(held.certs().iter().map(|c| sha256(c)).collect())
        }
        // First SVID of the CA node itself (`self_issue`): nothing came over the network.
        (None, None) => None,
    };
    let mut certs: Vec<CertificateDer<'static>> = Vec::new();
    for der in &issued.bundle_der {
        let known = trusted
            .as_ref()
            .is_none_or(|fps| fps.contains(&sha256(der)));
        if known && !certs.iter().any(|c| c.as_ref() == der.as_slice()) {
            certs.push(CertificateDer::from(der.clone()));
        }
    }
    if certs.is_empty() && trusted.is_some() {
        return Err(AcceptError::WrongCa);
    }
    let bundle = TrustBundle::new(td, certs)?;
    let svid = CertificateDer::from(issued.svid_der.clone());
    let verified = bundle.verify(&svid, &[], now, Role::Client)?;
    if verified.node_id != keys.node_id() || verified.tls_point != keys.tls_public_point() {
        return Err(AcceptError::NotOurs);
    }
    if let Some(signed) = &issued.revocations {
        let list = bundle.verify_revocations(signed)?;
        store.store_revocation_list_if_newer(signed, &list)?;
    }
    let membership = Membership {
        trust_domain: bundle.trust_domain().clone(),
        svid_der: issued.svid_der.clone(),
        bundle_pem: bundle.to_pem(),
        ca_addr,
        not_after_unix: verified.not_after_unix,
    };
    store.set_membership(&membership, now.as_secs())?;
    Ok(membership)
}

/// On the CA node: issues the node's own SVID (first start, or renewal) and stores it.
pub fn self_issue(
    store: &StateStore,
    keys: &NodeKeys,
    ca: &MeshCa,
    now: UnixTime,
) -> Result<Membership, AcceptError> {
    let own = Proven {
        node: keys.node_id(),
        tls_point: keys.tls_public_point(),
        mldsa_public_key: keys.mldsa_public_key(),
    };
    let admission = match admit_renewal(store, &own, now)? {
        Ok(a) => a,
        Err(r) => return Err(AcceptError::Refused(r.message)),
    };
    let issued = issue_admitted(ca, &own, admission, now).map_err(StoreError::from)?;
    accept_issued(store, keys, &issued, None, None, now)
}

/// What `x0t join` sends: both keys sign the join transcript of the session `exporter`.
#[cfg(test)]
pub(crate) fn signed_join_request(
    keys: &NodeKeys,
    invitation_id: [u8; 16],
    secret: [u8; 32],
    exporter: &[u8; EXPORTER_LEN],
) -> JoinRequest {
    let spki = keys.tls_spki_der().unwrap();
    let t = join_transcript(exporter, &invitation_id, &spki, keys.mldsa_public_key());
    JoinRequest {
        invitation_id,
        secret,
        tls_spki_der: spki,
        mldsa_public_key: keys.mldsa_public_key().to_vec(),
        tls_signature: keys.sign_tls(&t).unwrap(),
        mldsa_signature: keys.sign_mldsa(&t).unwrap(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tempfile::TempDir;

    use super::*;
    use crate::store::InvitationRecord;

    const NOW: u64 = 1_800_000_000;
    const EXPORTER: [u8; EXPORTER_LEN] = [0x42; EXPORTER_LEN];
    const INVITE_ID: [u8; 16] = [0x11; 16];
    const SECRET: [u8; 32] = [0x22; 32];

    fn now() -> UnixTime {
        UnixTime::since_unix_epoch(Duration::from_secs(NOW))
    }

    fn at(secs: u64) -> UnixTime {
        UnixTime::since_unix_epoch(Duration::from_secs(secs))
    }

    fn open(dir: &TempDir) -> StateStore {
        StateStore::open(&dir.path().join("state")).unwrap()
    }

    /// The CA node: a store holding a CA and one invitation.
    struct CaNode {
        _dir: TempDir,
        store: StateStore,
        ca: MeshCa,
    }

    impl CaNode {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let store = open(&dir);
            let ca = MeshCa::create(TrustDomain::new("mesh.test").unwrap(), now()).unwrap();
            assert!(
                store
                    .create_ca(&ca, Duration::from_secs(3600), NOW)
                    .unwrap()
            );
            store
                .add_invitation(INVITE_ID, &SECRET, NOW, NOW + 600)
                .unwrap();
            Self {
                _dir: dir,
                store,
                ca,
            }
        }

        fn bundle(&self) -> TrustBundle {
            TrustBundle::new(
                self.ca.trust_domain().clone(),
                vec![self.ca.cert_der().clone()],
            )
            .unwrap()
        }

        fn join(&mut self, req: &JoinRequest) -> ControlMessage {
            handle_join(&mut self.store, &self.ca, req, &EXPORTER, now()).unwrap()
        }

        fn invitation(&self) -> InvitationRecord {
            let all = self.store.invitations().unwrap();
            all.into_iter().find(|r| r.id == INVITE_ID).unwrap()
        }
    }

    /// A node that is not in the mesh yet.
    struct Joiner {
        _dir: TempDir,
        store: StateStore,
        keys: NodeKeys,
    }

    impl Joiner {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let store = open(&dir);
            let keys = NodeKeys::generate().unwrap();
            assert!(store.create_node_keys(&keys, NOW).unwrap());
            Self {
                _dir: dir,
                store,
                keys,
            }
        }

        /// What `x0t join` sends: both keys sign the join transcript of this session.
        fn request(&self, exporter: &[u8; EXPORTER_LEN]) -> JoinRequest {
            signed_join_request(&self.keys, INVITE_ID, SECRET, exporter)
        }

        fn renew_request(&self, exporter: &[u8; EXPORTER_LEN]) -> RenewRequest {
            let t = link_transcript(ProofRole::Renewer, exporter, self.keys.node_id());
            RenewRequest {
                mldsa_public_key: self.keys.mldsa_public_key().to_vec(),
                pop_signature: self.keys.sign_mldsa(&t).unwrap(),
            }
        }

        fn accept(
            &self,
            issued: &Issued,
            pin: Option<&[u8; 32]>,
        ) -> Result<Membership, AcceptError> {
            accept_issued(
                &self.store,
                &self.keys,
                issued,
                pin,
                Some("192.0.2.1:7101".into()),
                now(),
            )
        }
    }

    fn issued(msg: ControlMessage) -> Issued {
        match msg {
            ControlMessage::Issued(i) => i,
            other => panic!("expected Issued, got {other:?}"),
        }
    }

    fn refusal(msg: ControlMessage) -> RefusalCode {
        match msg {
            ControlMessage::Refused(r) => {
                assert!(!r.message.is_empty());
                r.code
            }
            other => panic!("expected Refused, got {other:?}"),
        }
    }

    /// Joins `joiner` and returns the verified SVID the CA node would see on a later renewal.
    fn joined(ca: &mut CaNode, joiner: &Joiner) -> VerifiedSvid {
        let i = issued(ca.join(&joiner.request(&EXPORTER)));
        let m = joiner.accept(&i, Some(&ca.ca.fingerprint())).unwrap();
        ca.bundle()
            .verify(&m.svid_der.clone().into(), &[], now(), Role::Client)
            .unwrap()
    }

    #[test]
    fn join_issues_an_svid_the_joiner_accepts() {
        let mut ca = CaNode::new();
        let joiner = Joiner::new();
        let node = joiner.keys.node_id();
        let i = issued(ca.join(&joiner.request(&EXPORTER)));
        assert_eq!(i.trust_domain, "mesh.test");
        assert_eq!(i.bundle_der, [ca.ca.cert_der().to_vec()]);
        assert!(i.revocations.is_none());

        let m = joiner.accept(&i, Some(&ca.ca.fingerprint())).unwrap();
        assert_eq!(m.trust_domain.as_str(), "mesh.test");
        assert_eq!(m.ca_addr.as_deref(), Some("192.0.2.1:7101"));
        assert_eq!(m.not_after_unix, NOW + 3600);
        assert_eq!(joiner.store.membership().unwrap(), Some(m.clone()));

        let v = ca
            .bundle()
            .verify(&m.svid_der.into(), &[], now(), Role::Server)
            .unwrap();
        assert_eq!(v.node_id, node);
        assert_eq!(v.tls_point, joiner.keys.tls_public_point());
        assert!(ca.store.is_member(node).unwrap());
        let inv = ca.invitation();
        assert_eq!(inv.used_at, Some(NOW));
        assert_eq!(inv.used_by, Some(node.to_string()));
    }

    #[test]
    fn bad_proofs_are_refused_and_leave_the_invitation_unused() {
        let mut ca = CaNode::new();
        let joiner = Joiner::new();
        let other = NodeKeys::generate().unwrap();
        let good = joiner.request(&EXPORTER);

        let mut cases: Vec<(&str, JoinRequest)> = Vec::new();
        cases.push((
            "signed for another session",
            joiner.request(&[0x43; EXPORTER_LEN]),
        ));
        let mut r = good.clone();
        r.tls_signature = other.sign_tls(b"whatever").unwrap();
        cases.push(("TLS signature by another key", r));
        let mut r = good.clone();
        r.mldsa_signature[10] ^= 1;
        cases.push(("tampered ML-DSA signature", r));
        let mut r = good.clone();
        r.mldsa_public_key = other.mldsa_public_key().to_vec();
        cases.push(("someone else's ML-DSA key", r));
        let mut r = good.clone();
        r.tls_spki_der = other.tls_spki_der().unwrap();
        cases.push(("someone else's TLS key", r));
        let mut r = good.clone();
        r.tls_spki_der.truncate(40);
        cases.push(("TLS key not P-256", r));
        let mut r = good.clone();
        r.mldsa_signature.clear();
        cases.push(("no ML-DSA signature", r));
        let mut r = good.clone();
        r.invitation_id = [0x12; 16];
        cases.push(("transcript for another invitation", r));

        for (name, req) in cases {
            assert_eq!(refusal(ca.join(&req)), RefusalCode::BadProof, "{name}");
        }
        assert_eq!(ca.invitation().used_at, None);
        assert!(!ca.store.is_member(joiner.keys.node_id()).unwrap());
        issued(ca.join(&good));
    }

    #[test]
    fn invitation_problems_have_their_own_codes() {
        let mut ca = CaNode::new();
        let joiner = Joiner::new();

        let mut r = joiner.request(&EXPORTER);
        r.secret = [0x23; 32];
        assert_eq!(refusal(ca.join(&r)), RefusalCode::BadSecret);

        // An unknown ID, with a proof made for that ID.
        let spki = joiner.keys.tls_spki_der().unwrap();
        let id = [0x99; 16];
        let t = join_transcript(&EXPORTER, &id, &spki, joiner.keys.mldsa_public_key());
        let unknown = JoinRequest {
            invitation_id: id,
            tls_signature: joiner.keys.sign_tls(&t).unwrap(),
            mldsa_signature: joiner.keys.sign_mldsa(&t).unwrap(),
            ..joiner.request(&EXPORTER)
        };
        assert_eq!(refusal(ca.join(&unknown)), RefusalCode::UnknownInvitation);

        let late = handle_join(
            &mut ca.store,
            &ca.ca,
            &joiner.request(&EXPORTER),
            &EXPORTER,
            at(NOW + 600),
        )
        .unwrap();
        assert_eq!(refusal(late), RefusalCode::InvitationExpired);

        issued(ca.join(&joiner.request(&EXPORTER)));
        let second = Joiner::new();
        assert_eq!(
            refusal(ca.join(&second.request(&EXPORTER))),
            RefusalCode::InvitationUsed
        );
    }

    /// The CA redeemed the invitation and issued an SVID, but the answer never reached the
    /// joiner. The joiner asks again (a new session, the same keys): it must get its SVID, not
    /// find its invitation burnt; a different node with the same token is still refused.
    #[test]
    fn a_joiner_whose_answer_was_lost_gets_its_svid_on_retry() {
        let mut ca = CaNode::new();
        let joiner = Joiner::new();
        let lost = issued(ca.join(&joiner.request(&EXPORTER)));
        drop(lost);

        let retry = handle_join(
            &mut ca.store,
            &ca.ca,
            &joiner.request(&[0x43; EXPORTER_LEN]),
            &[0x43; EXPORTER_LEN],
            at(NOW + 30),
        )
        .unwrap();
        let m = joiner
            .accept(&issued(retry), Some(&ca.ca.fingerprint()))
            .unwrap();
        assert_eq!(m.not_after_unix, NOW + 30 + 3600);
        assert_eq!(
            ca.invitation().used_by,
            Some(joiner.keys.node_id().to_string())
        );

        let thief = Joiner::new();
        assert_eq!(
            refusal(ca.join(&thief.request(&EXPORTER))),
            RefusalCode::InvitationUsed
        );
        assert!(!ca.store.is_member(thief.keys.node_id()).unwrap());
    }

    #[test]
    fn revoked_node_cannot_join() {
        let mut ca = CaNode::new();
        let joiner = Joiner::new();
        let node = joiner.keys.node_id();
        ca.store.revoke(&ca.ca, node, "test", NOW).unwrap().unwrap();
        assert_eq!(
            refusal(ca.join(&joiner.request(&EXPORTER))),
            RefusalCode::Revoked
        );
        assert_eq!(ca.invitation().used_at, None, "invitation not burned");
        issued(ca.join(&Joiner::new().request(&EXPORTER)));
    }

    #[test]
    fn issued_carries_the_revocation_list_and_the_member_stores_it() {
        let mut ca = CaNode::new();
        let revoked = NodeId::from_bytes([0xee; 16]);
        let signed = ca.store.revoke(&ca.ca, revoked, "test", NOW).unwrap();
        let joiner = Joiner::new();
        let i = issued(ca.join(&joiner.request(&EXPORTER)));
        assert_eq!(i.revocations, signed);
        joiner.accept(&i, Some(&ca.ca.fingerprint())).unwrap();
        let (_, list) = joiner.store.revocation_list().unwrap().unwrap();
        assert_eq!(list.revoked, [revoked]);
    }

    #[test]
    fn accept_refuses_a_ca_that_is_not_the_pinned_one() {
        let mut ca = CaNode::new();
        let joiner = Joiner::new();
        let i = issued(ca.join(&joiner.request(&EXPORTER)));
        let mut wrong = ca.ca.fingerprint();
        wrong[0] ^= 1;
        assert!(matches!(
            joiner.accept(&i, Some(&wrong)),
            Err(AcceptError::WrongCa)
        ));
        assert!(joiner.store.membership().unwrap().is_none());
    }

    /// A bootstrap node that holds a mesh SVID but not the CA key must not be able to slip its
    /// own CA into the joiner's trust bundle next to the pinned one.
    #[test]
    fn accept_trusts_only_the_pinned_ca_on_a_join() {
        let mut ca = CaNode::new();
        let joiner = Joiner::new();
        let genuine = issued(ca.join(&joiner.request(&EXPORTER)));

        let rogue = MeshCa::create(TrustDomain::new("mesh.test").unwrap(), now()).unwrap();
        let rogue_svid = rogue
            .issue_svid(
                joiner.keys.tls_public_point(),
                joiner.keys.node_id(),
                now(),
                Duration::from_secs(3600),
            )
            .unwrap();
        let forged = Issued {
            svid_der: rogue_svid.to_vec(),
            bundle_der: vec![ca.ca.cert_der().to_vec(), rogue.cert_der().to_vec()],
            ..genuine.clone()
        };
        assert!(matches!(
            joiner.accept(&forged, Some(&ca.ca.fingerprint())),
            Err(AcceptError::Svid(SvidError::UntrustedIssuer))
        ));
        assert!(joiner.store.membership().unwrap().is_none());

        // A genuine SVID with an extra CA in the bundle: the extra CA is not trusted.
        let padded = Issued {
            bundle_der: vec![rogue.cert_der().to_vec(), ca.ca.cert_der().to_vec()],
            ..genuine
        };
        let m = joiner.accept(&padded, Some(&ca.ca.fingerprint())).unwrap();
        let stored = TrustBundle::from_pem(m.trust_domain.clone(), &m.bundle_pem).unwrap();
        assert_eq!(stored.certs(), [ca.ca.cert_der().clone()]);
    }

    #[test]
    fn accept_refuses_an_svid_for_another_node() {
        let mut ca = CaNode::new();
        let joiner = Joiner::new();
        let bystander = Joiner::new();
        let i = issued(ca.join(&bystander.request(&EXPORTER)));
        assert!(matches!(
            joiner.accept(&i, Some(&ca.ca.fingerprint())),
            Err(AcceptError::NotOurs)
        ));

        // Same node ID is impossible to fake, but the TLS key is checked on its own as well.
        let wrong_key = Issued {
            svid_der: ca
                .ca
                .issue_svid(
                    bystander.keys.tls_public_point(),
                    joiner.keys.node_id(),
                    now(),
                    Duration::from_secs(60),
                )
                .unwrap()
                .to_vec(),
            ..i
        };
        assert!(matches!(
            joiner.accept(&wrong_key, Some(&ca.ca.fingerprint())),
            Err(AcceptError::NotOurs)
        ));
        assert!(joiner.store.membership().unwrap().is_none());
    }

    #[test]
    fn accept_refuses_bad_trust_domain_and_expired_svid() {
        let mut ca = CaNode::new();
        let joiner = Joiner::new();
        let i = issued(ca.join(&joiner.request(&EXPORTER)));
        let bad_td = Issued {
            trust_domain: "Not A Domain".into(),
            ..i.clone()
        };
        assert!(matches!(
            joiner.accept(&bad_td, None),
            Err(AcceptError::TrustDomain)
        ));
        let other_td = Issued {
            trust_domain: "other.test".into(),
            ..i.clone()
        };
        assert!(matches!(
            joiner.accept(&other_td, None),
            Err(AcceptError::Svid(SvidError::WrongTrustDomain { .. }))
        ));
        let late = accept_issued(&joiner.store, &joiner.keys, &i, None, None, at(NOW + 3601));
        assert!(matches!(late, Err(AcceptError::Svid(SvidError::Expired))));
    }

    #[test]
    fn renewal_needs_an_svid() {
        let ca = CaNode::new();
        let joiner = Joiner::new();
        let msg = handle_renew(
            &ca.store,
            &ca.ca,
            None,
            &joiner.renew_request(&EXPORTER),
            &EXPORTER,
            now(),
        )
        .unwrap();
        assert_eq!(refusal(msg), RefusalCode::NotAuthenticated);
    }

    #[test]
    fn renewal_with_a_valid_svid_issues_a_fresh_one() {
        let mut ca = CaNode::new();
        let joiner = Joiner::new();
        let peer = joined(&mut ca, &joiner);

        let later = at(NOW + 1800);
        let msg = handle_renew(
            &ca.store,
            &ca.ca,
            Some(&peer),
            &joiner.renew_request(&EXPORTER),
            &EXPORTER,
            later,
        )
        .unwrap();
        let i = issued(msg);
        let m = accept_issued(&joiner.store, &joiner.keys, &i, None, None, later).unwrap();
        assert_eq!(m.not_after_unix, NOW + 1800 + 3600);
        assert_eq!(m.ca_addr, None);
        assert_eq!(joiner.store.membership().unwrap(), Some(m));
    }

    #[test]
    fn renewal_refuses_bad_proofs_and_revoked_nodes() {
        let mut ca = CaNode::new();
        let joiner = Joiner::new();
        let peer = joined(&mut ca, &joiner);
        let other = NodeKeys::generate().unwrap();
        let renew = |req: &RenewRequest, ca: &CaNode| {
            handle_renew(&ca.store, &ca.ca, Some(&peer), req, &EXPORTER, now()).unwrap()
        };

        let replayed = joiner.renew_request(&[0x43; EXPORTER_LEN]);
        assert_eq!(refusal(renew(&replayed, &ca)), RefusalCode::BadProof);

        let t = link_transcript(ProofRole::Renewer, &EXPORTER, joiner.keys.node_id());
        let foreign_key = RenewRequest {
            mldsa_public_key: other.mldsa_public_key().to_vec(),
            pop_signature: other.sign_mldsa(&t).unwrap(),
        };
        assert_eq!(refusal(renew(&foreign_key, &ca)), RefusalCode::BadProof);

        let dialer = link_transcript(ProofRole::Dialer, &EXPORTER, joiner.keys.node_id());
        let wrong_role = RenewRequest {
            pop_signature: joiner.keys.sign_mldsa(&dialer).unwrap(),
            ..joiner.renew_request(&EXPORTER)
        };
        assert_eq!(refusal(renew(&wrong_role, &ca)), RefusalCode::BadProof);

        issued(renew(&joiner.renew_request(&EXPORTER), &ca));
        ca.store
            .revoke(&ca.ca, joiner.keys.node_id(), "test", NOW)
            .unwrap()
            .unwrap();
        assert_eq!(
            refusal(renew(&joiner.renew_request(&EXPORTER), &ca)),
            RefusalCode::Revoked
        );
    }

    /// On a renewal the answer may come from any member: it cannot swap the trust bundle.
    #[test]
    fn renewal_answer_cannot_replace_the_trust_bundle() {
        let mut ca = CaNode::new();
        let joiner = Joiner::new();
        let peer = joined(&mut ca, &joiner);
        let genuine = issued(
            handle_renew(
                &ca.store,
                &ca.ca,
                Some(&peer),
                &joiner.renew_request(&EXPORTER),
                &EXPORTER,
                now(),
            )
            .unwrap(),
        );
        let rogue = MeshCa::create(TrustDomain::new("mesh.test").unwrap(), now()).unwrap();
        let rogue_svid = rogue
            .issue_svid(
                joiner.keys.tls_public_point(),
                joiner.keys.node_id(),
                now(),
                Duration::from_secs(3600),
            )
            .unwrap()
            .to_vec();
        let before = joiner.store.membership().unwrap();

        let only_rogue = Issued {
            svid_der: rogue_svid.clone(),
            bundle_der: vec![rogue.cert_der().to_vec()],
            ..genuine.clone()
        };
        assert!(matches!(
            joiner.accept(&only_rogue, None),
            Err(AcceptError::WrongCa)
        ));
        let both = Issued {
            svid_der: rogue_svid,
            bundle_der: vec![rogue.cert_der().to_vec(), ca.ca.cert_der().to_vec()],
            ..genuine.clone()
        };
        assert!(matches!(
            joiner.accept(&both, None),
            Err(AcceptError::Svid(SvidError::UntrustedIssuer))
        ));
        let elsewhere = Issued {
            trust_domain: "other.test".into(),
            ..genuine.clone()
        };
        assert!(matches!(
            joiner.accept(&elsewhere, None),
            Err(AcceptError::TrustDomain)
        ));
        assert_eq!(joiner.store.membership().unwrap(), before);

        let m = joiner.accept(&genuine, None).unwrap();
        let stored = TrustBundle::from_pem(m.trust_domain, &m.bundle_pem).unwrap();
        assert_eq!(stored.certs(), [ca.ca.cert_der().clone()]);
    }

    #[test]
    fn self_issue_gives_the_ca_node_a_valid_svid() {
        let ca = CaNode::new();
        let keys = NodeKeys::generate().unwrap();
        assert!(ca.store.create_node_keys(&keys, NOW).unwrap());
        let m = self_issue(&ca.store, &keys, &ca.ca, now()).unwrap();
        assert_eq!(m.ca_addr, None);
        assert_eq!(m.not_after_unix, NOW + 3600);
        let v = ca
            .bundle()
            .verify(&m.svid_der.clone().into(), &[], now(), Role::Server)
            .unwrap();
        assert_eq!(v.node_id, keys.node_id());
        assert_eq!(ca.store.membership().unwrap(), Some(m.clone()));
        assert!(ca.store.is_member(keys.node_id()).unwrap());
        let bundle = TrustBundle::from_pem(m.trust_domain, &m.bundle_pem).unwrap();
        assert_eq!(bundle.certs(), [ca.ca.cert_der().clone()]);

        // Renewing its own SVID later goes through the held bundle.
        let renewed = self_issue(&ca.store, &keys, &ca.ca, at(NOW + 1800)).unwrap();
        assert_eq!(renewed.not_after_unix, NOW + 1800 + 3600);
    }

    #[test]
    fn refusals_survive_the_wire() {
        let mut ca = CaNode::new();
        let msg = ca.join(&Joiner::new().request(&[0; EXPORTER_LEN]));
        let again = ControlMessage::decode_frame(&msg.encode()).unwrap();
        assert_eq!(again, msg);
        assert_eq!(refusal(again), RefusalCode::BadProof);
    }
}
