//! Client side of the CA service: joining with an invitation, renewing an SVID.
//!
//! A join sends the invitation secret only to the CA node named in the token, once it has
//! proven itself twice: at the TLS handshake (an SVID of that node ID under the pinned CA, see
//! [`PinnedCaVerifier`]) and then by an ML-DSA-65 signature over this session with the key
//! bound to that node ID. Any failure before that point aborts the join with nothing sent.

use std::net::SocketAddr;
use std::time::Duration;

use quinn::{Endpoint, VarInt};
use rustls::version::TLS13;
use thiserror::Error;
use x0_identity::keys::verify_mldsa65;
use x0_identity::proof::{EXPORTER_LEN, ProofRole, join_transcript, link_transcript};
use x0_identity::svid::VerifiedSvid;
use x0_identity::{NodeKeys, node_id_of};
use x0_wire::control::{Issued, JoinRequest, RefusalCode, Refused, RenewRequest};
use x0_wire::{ControlMessage, InvitationToken, NodeId};

use crate::control::{ControlError, ControlStream};
use crate::endpoint::{
    CA_ALPN, LinkConfig, LinkEndpoint, LinkError, classify, client_config, close_code, export,
};
use crate::kx::{KxRecorder, group_name};
use crate::metrics::{FailureReason, LinkMetrics};
use crate::trust::PinnedCaVerifier;

/// How long the CA node has to prove itself, and then to answer the request.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

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
    /// The node at the bootstrap address is not the CA node the invitation names (another
    /// member, or a node that holds the CA node's certificate but not its ML-DSA key). The
    /// invitation secret was not sent.
    #[error(
        "the node at {addr} is not the CA node named in the invitation: {detail}; the invitation secret was not sent"
    )]
    NotTheCaNode {
        /// Where.
        addr: SocketAddr,
        /// What it failed to prove.
        detail: String,
    },
    /// The request was sent but no answer came back. The CA may have admitted this node:
    /// joining again with the same token and the same keys (the same state directory) gets
    /// the SVID.
    #[error(
        "the CA node at {addr} did not answer ({detail}); if it admitted this node, running the same join again from the same state directory gets this node its SVID"
    )]
    AnswerLost {
        /// Where.
        addr: SocketAddr,
        /// What happened.
        detail: String,
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

/// A CA-service conversation on one connection: its control stream and exporter value.
struct CaSession {
    conn: quinn::Connection,
    stream: ControlStream,
    exporter: [u8; EXPORTER_LEN],
}

impl CaSession {
    async fn open(conn: quinn::Connection) -> Result<Self, CaClientError> {
        let exporter = export(&conn).map_err(|e| CaClientError::Protocol(e.to_string()))?;
        let (send, recv) = conn
            .open_bi()
            .await
            .map_err(|e| failed(&conn, e.to_string()))?;
        let stream = ControlStream::new(send, recv, std::sync::Arc::new(LinkMetrics::default()));
        Ok(Self {
            conn,
            stream,
            exporter,
        })
    }

    /// Sends `msg` and reads one message back.
    async fn ask(&mut self, msg: &ControlMessage, last: bool) -> Result<ControlMessage, String> {
        let io = |e: ControlError| e.to_string();
        self.stream.send.send(msg).await.map_err(io)?;
        if last {
            self.stream.send.finish();
        }
        self.stream.recv.recv().await.map_err(io)
    }

    fn close(&self, code: u32, reason: &[u8]) {
        self.conn.close(VarInt::from_u32(code), reason);
    }
}

/// The CA node may refuse our certificate just after our side of the handshake completed: then
/// the failure is why the connection closed.
fn failed(conn: &quinn::Connection, e: String) -> CaClientError {
    match conn.close_reason() {
        Some(closed) => {
            let (reason, detail) = classify(&closed);
            CaClientError::Link {
                addr: conn.remote_address(),
                source: LinkError::Failed { reason, detail },
            }
        }
        None => CaClientError::Protocol(e),
    }
}

fn issued(answer: ControlMessage) -> Result<Issued, CaClientError> {
    match answer {
        ControlMessage::Issued(i) => Ok(i),
        ControlMessage::Refused(r) => Err(CaClientError::Refused(r)),
        other => Err(CaClientError::Protocol(format!(
            "unexpected answer {}",
            other.name()
        ))),
    }
}

/// Checks the CA node's answer to our proof request: its ML-DSA-65 key must hash, with the TLS
/// key of the SVID it presented, to the node ID the invitation names, and must have signed this
/// session's exporter in the CA-service role.
fn verify_ca_proof(
    server: &VerifiedSvid,
    ca_node: NodeId,
    answer: ControlMessage,
    exporter: &[u8; EXPORTER_LEN],
) -> Result<(), String> {
    let hello = match answer {
        ControlMessage::Hello(h) => h,
        ControlMessage::Refused(r) => {
            return Err(format!("it refused to prove itself: {}", r.message));
        }
        other => {
            return Err(format!(
                "it answered the proof request with {}",
                other.name()
            ));
        }
    };
    if node_id_of(&server.tls_point, &hello.mldsa_public_key) != ca_node {
        return Err(format!(
            "its ML-DSA-65 key is not the one bound to the CA node {ca_node}"
        ));
    }
    let transcript = link_transcript(ProofRole::CaService, exporter, ca_node);
    verify_mldsa65(&hello.mldsa_public_key, &transcript, &hello.pop_signature)
        .map_err(|_| "its ML-DSA-65 proof of possession does not verify".to_owned())
}

/// Joins the mesh named by `token`: reaches the bootstrap node over a post-quantum link,
/// authenticates it as the CA node named in the token (its SVID under the pinned CA, then its
/// ML-DSA-65 proof over this session), and only then proves the invitation secret and both
/// keys. Returns what the CA issued (not yet checked against our keys: see
/// `x0_identity::authority::accept_issued`) and the key-exchange group.
///
/// If the answer is lost ([`CaClientError::AnswerLost`]), joining again with the same token
/// and keys is safe: the CA gives the same node its SVID again while the invitation is valid.
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
    let verifier = PinnedCaVerifier::new(td, token.ca_fingerprint, token.ca_node);
    let link_err = |source| CaClientError::Link { addr, source };
    let mut tls = rustls::ClientConfig::builder_with_provider(recorder.provider(config.kx_policy))
        .with_protocol_versions(&[&TLS13])
        .map_err(|e| link_err(e.into()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_no_client_auth();
    tls.alpn_protocols = vec![CA_ALPN.to_vec()];
    let client = client_config(tls, config).map_err(link_err)?;
    let connecting = endpoint
        .connect_with(client, addr, "x0t.invalid")
        .map_err(|e| link_err(e.into()))?;
    let conn = match tokio::time::timeout(config.handshake_timeout, connecting).await {
        Err(_) => return Err(link_err(timeout())),
        Ok(Err(e)) => {
            return Err(match verifier.refusal() {
                Some((FailureReason::UnexpectedPeer, detail)) => {
                    CaClientError::NotTheCaNode { addr, detail }
                }
                Some((reason, detail)) => link_err(LinkError::Failed { reason, detail }),
                None => {
                    let (reason, detail) = classify(&e);
                    link_err(LinkError::Failed { reason, detail })
                }
            });
        }
        Ok(Ok(c)) => c,
    };
    let group = recorder.negotiated().map(group_name).unwrap_or_default();
    let server = verifier
        .verified()
        .ok_or_else(|| CaClientError::Protocol("no verified CA node certificate".into()))?;

    // 1. The CA node proves its ML-DSA key over this session. Nothing secret has been sent.
    let mut session = CaSession::open(conn.clone()).await?;
    let answer = tokio::time::timeout(
        ANSWER_TIMEOUT,
        session.ask(&ControlMessage::CaProofRequest, false),
    )
    .await;
    let answer = match answer {
        Ok(Ok(answer)) => answer,
        Ok(Err(e)) => return Err(failed(&conn, e)),
        Err(_) => {
            session.close(close_code::PROTOCOL, b"no proof");
            return Err(CaClientError::Protocol(
                "the CA node did not prove itself in time; the invitation secret was not sent"
                    .into(),
            ));
        }
    };
    if let Err(detail) = verify_ca_proof(&server, token.ca_node, answer, &session.exporter) {
        session.close(close_code::PROOF_OF_POSSESSION, b"not the CA node");
        return Err(CaClientError::NotTheCaNode { addr, detail });
    }

    // 2. Only now the secret, with the proof of both our keys.
    let spki = keys
        .tls_spki_der()
        .map_err(|e| CaClientError::Protocol(e.to_string()))?;
    let t = join_transcript(
        &session.exporter,
        &token.invitation_id,
        &spki,
        keys.mldsa_public_key(),
    );
    let sign_err = |e: x0_identity::keys::KeyError| CaClientError::Protocol(e.to_string());
    let request = ControlMessage::JoinRequest(JoinRequest {
        invitation_id: token.invitation_id,
        secret: token.secret,
        mldsa_public_key: keys.mldsa_public_key().to_vec(),
        tls_signature: keys.sign_tls(&t).map_err(sign_err)?,
        mldsa_signature: keys.sign_mldsa(&t).map_err(sign_err)?,
        tls_spki_der: spki,
    });
    let answer = tokio::time::timeout(ANSWER_TIMEOUT, session.ask(&request, true))
        .await
        .map_err(|_| "no answer within the time allowed".to_owned())
        .and_then(|answer| answer)
        .map_err(|detail| {
            let detail = match conn.close_reason() {
                Some(closed) => classify(&closed).1,
                None => detail,
            };
            CaClientError::AnswerLost { addr, detail }
        })?;
    session.close(close_code::SHUTDOWN, b"done");
    endpoint.wait_idle().await;
    Ok((issued(answer)?, group))
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
    let mut session = CaSession::open(conn.clone()).await?;
    let t = link_transcript(ProofRole::Renewer, &session.exporter, keys.node_id());
    let request = ControlMessage::RenewRequest(RenewRequest {
        mldsa_public_key: keys.mldsa_public_key().to_vec(),
        pop_signature: keys
            .sign_mldsa(&t)
            .map_err(|e| CaClientError::Protocol(e.to_string()))?,
    });
    let answer = tokio::time::timeout(ANSWER_TIMEOUT, session.ask(&request, true))
        .await
        .map_err(|_| CaClientError::Protocol("no answer from the CA node".into()))?
        .map_err(|e| failed(&conn, e))?;
    session.close(close_code::SHUTDOWN, b"done");
    issued(answer)
}
