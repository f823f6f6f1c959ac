//! Client side of the CA service: joining with an invitation, renewing an SVID.

use std::net::SocketAddr;
use std::time::Duration;

use quinn::{Endpoint, VarInt};
use rustls::version::TLS13;
use thiserror::Error;
use x0_identity::NodeKeys;
use x0_identity::proof::{ProofRole, join_transcript, link_transcript};
use x0_wire::control::{Issued, JoinRequest, RefusalCode, Refused, RenewRequest};
use x0_wire::{ControlMessage, InvitationToken};

use crate::control::{ControlError, ControlStream};
use crate::endpoint::{
    CA_ALPN, LinkConfig, LinkEndpoint, LinkError, classify, client_config, export,
};
use crate::kx::{KxRecorder, group_name};
use crate::metrics::{FailureReason, LinkMetrics};
use crate::trust::PinnedCaVerifier;

/// Failures talking to the CA service.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum CaClientError {
    /// The bootstrap address does not resolve.
    #[error("cannot resolve {0}")]
    Resolve(String),
    /// The link to the CA node failed.
    #[error("cannot reach the CA node at {addr}: {source}")]
    Link {
        /// Where.
        addr: SocketAddr,
        /// Why.
        source: LinkError,
    },
    /// The CA refused.
    #[error("the CA refused: {} ({:?})", .0.message, .0.code)]
    Refused(Refused),
    /// The conversation broke off or made no sense.
    #[error("CA service: {0}")]
    Protocol(String),
}

impl CaClientError {
    /// The refusal code, if the CA refused.
    pub fn refusal(&self) -> Option<RefusalCode> {
        match self {
            Self::Refused(r) => Some(r.code),
            _ => None,
        }
    }
}

async fn exchange(
    conn: &quinn::Connection,
    request: impl FnOnce(&[u8; 32]) -> Result<ControlMessage, CaClientError>,
) -> Result<Issued, CaClientError> {
    let exporter = export(conn).map_err(|e| CaClientError::Protocol(e.to_string()))?;
    let msg = request(&exporter)?;
    // The CA node may refuse our certificate just after our side of the handshake completed:
    // then the failure is why the connection closed.
    let failed = |e: String| match conn.close_reason() {
        Some(closed) => {
            let (reason, detail) = classify(&closed);
            CaClientError::Link {
                addr: conn.remote_address(),
                source: LinkError::Failed { reason, detail },
            }
        }
        None => CaClientError::Protocol(e),
    };
    let (send, recv) = conn.open_bi().await.map_err(|e| failed(e.to_string()))?;
    let mut stream = ControlStream::new(send, recv, std::sync::Arc::new(LinkMetrics::default()));
    let io = |e: ControlError| failed(e.to_string());
    stream.send.send(&msg).await.map_err(io)?;
    stream.send.finish();
    let answer = stream.recv.recv().await.map_err(io)?;
    conn.close(VarInt::from_u32(0), b"done");
    match answer {
        ControlMessage::Issued(i) => Ok(i),
        ControlMessage::Refused(r) => Err(CaClientError::Refused(r)),
        other => Err(CaClientError::Protocol(format!(
            "unexpected answer {}",
            other.name()
        ))),
    }
}

/// Joins the mesh named by `token`: reaches the bootstrap node over a post-quantum link,
/// authenticates it by the CA fingerprint pinned in the token, proves the invitation secret and
/// both keys, and returns what the CA issued (not yet checked against our keys: see
/// `x0_identity::authority::accept_issued`).
pub async fn join(
    token: &InvitationToken,
    keys: &NodeKeys,
    config: &LinkConfig,
) -> Result<(Issued, String), CaClientError> {
    let addr = tokio::net::lookup_host(token.bootstrap.as_str())
        .await
        .map_err(|_| CaClientError::Resolve(token.bootstrap.clone()))?
        .next()
        .ok_or_else(|| CaClientError::Resolve(token.bootstrap.clone()))?;
    let bind: SocketAddr = if addr.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let endpoint = Endpoint::client(bind).map_err(|e| CaClientError::Protocol(e.to_string()))?;
    let td = token
        .trust_domain
        .parse()
        .map_err(|_| CaClientError::Protocol("invitation has an invalid trust domain".into()))?;
    let recorder = KxRecorder::new();
    let verifier = PinnedCaVerifier::new(td, token.ca_fingerprint);
    let link_err = |source| CaClientError::Link { addr, source };
    let mut tls = rustls::ClientConfig::builder_with_provider(recorder.provider(config.kx_policy))
        .with_protocol_versions(&[&TLS13])
        .map_err(|e| link_err(e.into()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    tls.alpn_protocols = vec![CA_ALPN.to_vec()];
    let client = client_config(tls, config).map_err(link_err)?;
    let connecting = endpoint
        .connect_with(client, addr, "x0t.invalid")
        .map_err(|e| link_err(e.into()))?;
    let conn = match tokio::time::timeout(config.handshake_timeout, connecting).await {
        Err(_) => return Err(link_err(timeout())),
        Ok(Err(e)) => {
            let (reason, detail) = classify(&e);
            return Err(link_err(LinkError::Failed { reason, detail }));
        }
        Ok(Ok(c)) => c,
    };
    let group = recorder.negotiated().map(group_name).unwrap_or_default();
    let spki = keys
        .tls_spki_der()
        .map_err(|e| CaClientError::Protocol(e.to_string()))?;
    let issued = tokio::time::timeout(
        Duration::from_secs(10),
        exchange(&conn, |exporter| {
            let t = join_transcript(
                exporter,
                &token.invitation_id,
                &spki,
                keys.mldsa_public_key(),
            );
            let sign_err = |e: x0_identity::keys::KeyError| CaClientError::Protocol(e.to_string());
            Ok(ControlMessage::JoinRequest(JoinRequest {
                invitation_id: token.invitation_id,
                secret: token.secret,
                tls_spki_der: spki.clone(),
                mldsa_public_key: keys.mldsa_public_key().to_vec(),
                tls_signature: keys.sign_tls(&t).map_err(sign_err)?,
                mldsa_signature: keys.sign_mldsa(&t).map_err(sign_err)?,
            }))
        }),
    )
    .await
    .map_err(|_| CaClientError::Protocol("no answer from the CA node".into()))??;
    endpoint.wait_idle().await;
    Ok((issued, group))
}

fn timeout() -> LinkError {
    LinkError::Failed {
        reason: FailureReason::Timeout,
        detail: "handshake timed out".into(),
    }
}

/// Renews this node's SVID at the CA node `ca_addr`, authenticating with the current SVID and an
/// ML-DSA proof of possession.
pub async fn renew(endpoint: &LinkEndpoint, ca_addr: SocketAddr) -> Result<Issued, CaClientError> {
    let recorder = KxRecorder::new();
    let link_err = |source| CaClientError::Link {
        addr: ca_addr,
        source,
    };
    let (config, verifier) = endpoint
        .member_client_config(CA_ALPN, endpoint.config().kx_policy, &recorder)
        .map_err(link_err)?;
    let conn = endpoint
        .connect_raw(ca_addr, config, &verifier)
        .await
        .map_err(link_err)?;
    let keys = endpoint.identity().keys().clone();
    tokio::time::timeout(
        Duration::from_secs(10),
        exchange(&conn, |exporter| {
            let t = link_transcript(ProofRole::Renewer, exporter, keys.node_id());
            Ok(ControlMessage::RenewRequest(RenewRequest {
                mldsa_public_key: keys.mldsa_public_key().to_vec(),
                pop_signature: keys
                    .sign_mldsa(&t)
                    .map_err(|e| CaClientError::Protocol(e.to_string()))?,
            }))
        }),
    )
    .await
    .map_err(|_| CaClientError::Protocol("no answer from the CA node".into()))?
}
