//! What the CA node does with join and renewal requests, and what a member does with the answer.
//!
//! Transport-free: the link layer hands in the request, the session's exporter value and `now`,
//! and sends back the [`ControlMessage`] returned here.

use rustls_pki_types::{CertificateDer, UnixTime};
use thiserror::Error;
use tracing::{info, warn};
use x0_wire::control::{Issued, JoinRequest, RefusalCode, Refused, RenewRequest};
use x0_wire::{ControlMessage, NodeId};

use crate::ca::MeshCa;
use crate::keys::{NodeKeys, node_id_of, sha256, verify_mldsa65, verify_p256};
use crate::proof::{EXPORTER_LEN, ProofRole, join_transcript, link_transcript};
use crate::store::{InvitationError, Membership, StateStore, StoreError};
use crate::svid::{Role, SvidError, TrustBundle, VerifiedSvid, spki_p256_point};

fn refuse(code: RefusalCode, message: impl Into<String>) -> ControlMessage {
    ControlMessage::Refused(Refused {
        code,
        message: message.into(),
    })
}

fn is_revoked(store: &StateStore, node: NodeId) -> Result<bool, StoreError> {
    Ok(store
        .revocation_list()?
        .is_some_and(|(_, list)| list.revoked.binary_search(&node).is_ok()))
}

fn issue(
    store: &StateStore,
    ca: &MeshCa,
    node: NodeId,
    tls_point: &[u8],
    mldsa_public_key: &[u8],
    now: UnixTime,
) -> Result<ControlMessage, StoreError> {
    let ttl = store.svid_ttl()?;
    let svid = ca.issue_svid(tls_point, node, now, ttl)?;
    store.record_member(
        node,
        mldsa_public_key,
        tls_point,
        now.as_secs(),
        now.as_secs() + ttl.as_secs(),
    )?;
    Ok(ControlMessage::Issued(Issued {
        trust_domain: ca.trust_domain().to_string(),
        svid_der: svid.to_vec(),
        bundle_der: vec![ca.cert_der().to_vec()],
        revocations: store.revocation_list()?.map(|(s, _)| s),
    }))
}

/// Handles a join: checks both proofs of possession, redeems the invitation, issues an SVID.
pub fn handle_join(
    store: &mut StateStore,
    ca: &MeshCa,
    req: &JoinRequest,
    exporter: &[u8; EXPORTER_LEN],
    now: UnixTime,
) -> Result<ControlMessage, StoreError> {
    let Ok(point) = spki_p256_point(&req.tls_spki_der) else {
        return Ok(refuse(RefusalCode::BadProof, "TLS key is not ECDSA P-256"));
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
        return Ok(refuse(
            RefusalCode::BadProof,
            "proof of key possession does not verify",
        ));
    }
    let node = node_id_of(point, &req.mldsa_public_key);
    if is_revoked(store, node)? {
        return Ok(refuse(
            RefusalCode::Revoked,
            format!("node {node} is revoked"),
        ));
    }
    match store.redeem_invitation(&req.invitation_id, &req.secret, node, now.as_secs())? {
        Ok(()) => {}
        Err(e) => {
            warn!(node = %node, invitation = %hex::encode(req.invitation_id), "join refused: {e}");
            let code = match e {
                InvitationError::Unknown => RefusalCode::UnknownInvitation,
                InvitationError::BadSecret => RefusalCode::BadSecret,
                InvitationError::Used { .. } => RefusalCode::InvitationUsed,
                InvitationError::Expired(_) => RefusalCode::InvitationExpired,
            };
            return Ok(refuse(code, e.to_string()));
        }
    }
    info!(node = %node, "node joined; SVID issued");
    issue(store, ca, node, point, &req.mldsa_public_key, now)
}

/// Handles a renewal from a member authenticated by its current SVID (`peer`).
pub fn handle_renew(
    store: &StateStore,
    ca: &MeshCa,
    peer: Option<&VerifiedSvid>,
    req: &RenewRequest,
    exporter: &[u8; EXPORTER_LEN],
    now: UnixTime,
) -> Result<ControlMessage, StoreError> {
    let Some(peer) = peer else {
        return Ok(refuse(
            RefusalCode::NotAuthenticated,
            "renewal needs a valid SVID; an expired node must join again",
        ));
    };
    if node_id_of(&peer.tls_point, &req.mldsa_public_key) != peer.node_id {
        return Ok(refuse(
            RefusalCode::BadProof,
            "ML-DSA key is not bound to this node ID",
        ));
    }
    let transcript = link_transcript(ProofRole::Renewer, exporter, peer.node_id);
    if verify_mldsa65(&req.mldsa_public_key, &transcript, &req.pop_signature).is_err() {
        return Ok(refuse(
            RefusalCode::BadProof,
            "proof of possession does not verify",
        ));
    }
    if is_revoked(store, peer.node_id)? {
        return Ok(refuse(
            RefusalCode::Revoked,
            format!("node {} is revoked", peer.node_id),
        ));
    }
    info!(node = %peer.node_id, "SVID renewed");
    issue(
        store,
        ca,
        peer.node_id,
        &peer.tls_point,
        &req.mldsa_public_key,
        now,
    )
}

/// Why an `Issued` answer was not accepted.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum AcceptError {
    /// No bundle certificate has the pinned fingerprint.
    #[error("the bootstrap node's CA does not match the invitation's CA fingerprint")]
    WrongCa,
    /// The SVID is invalid or not ours.
    #[error("issued SVID is invalid: {0}")]
    Svid(#[from] SvidError),
    /// The SVID names another node or key.
    #[error("issued SVID is for another node or key")]
    NotOurs,
    /// Bad trust domain.
    #[error("issued trust domain is invalid")]
    TrustDomain,
    /// Storing failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Checks an `Issued` answer against our keys (and, on a join, the pinned CA fingerprint), then
/// stores the membership and any revocation list it carries.
pub fn accept_issued(
    store: &StateStore,
    keys: &NodeKeys,
    issued: &Issued,
    pinned_ca: Option<&[u8; 32]>,
    ca_addr: Option<String>,
    now: UnixTime,
) -> Result<Membership, AcceptError> {
    if let Some(fp) = pinned_ca
        && !issued.bundle_der.iter().any(|c| &sha256(c) == fp)
    {
        return Err(AcceptError::WrongCa);
    }
    let td = issued
        .trust_domain
        .parse()
        .map_err(|_| AcceptError::TrustDomain)?;
    let bundle = TrustBundle::new(
        td,
        issued
            .bundle_der
            .iter()
            .map(|c| CertificateDer::from(c.clone()))
            .collect(),
    )?;
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
    match issue(
        store,
        ca,
        keys.node_id(),
        keys.tls_public_point(),
        keys.mldsa_public_key(),
        now,
    )? {
        ControlMessage::Issued(issued) => accept_issued(store, keys, &issued, None, None, now),
        _ => Err(AcceptError::NotOurs),
    }
}
