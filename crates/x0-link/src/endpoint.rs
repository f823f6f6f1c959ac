//! Link endpoints: one QUIC endpoint per node, dialling and accepting links.
//!
//! Ownership: [`LinkEndpoint`] owns the quinn endpoint, the node's [`LocalIdentity`], the shared
//! [`TrustState`] and [`LinkMetrics`]. Every dial and every accepted handshake builds its own
//! rustls config (a fresh [`SpiffeVerifier`] and a [`KxRecorder`]) so that the negotiated group
//! and the peer's verified SVID are known per connection; that costs a few microseconds, and
//! everything that is not per connection (transport settings, the crypto provider's tables) is
//! built once. After the TLS handshake both ends run the ML-DSA-65 proof of possession on the
//! first bidirectional stream, which then stays open as the link's control stream.
//!
//! One UDP port serves two ALPNs: [`LINK_ALPN`] for links between members, which require a
//! client SVID, and [`CA_ALPN`] for the CA service (joins and renewals), where a client
//! certificate is optional because a joining node has none yet. On the CA service the CA node
//! answers a joiner's [`ControlMessage::CaProofRequest`] with its own ML-DSA-65 proof of
//! possession before the request is read and handed to the shell as a [`CaRequest`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{ConnectionError, Endpoint, EndpointConfig, Incoming, TransportConfig, VarInt};
use rustls::NamedGroup;
use rustls::version::TLS13;
use thiserror::Error;
use tracing::{debug, info, warn};
use x0_identity::keys::verify_mldsa65;
use x0_identity::proof::{EXPORTER_LABEL, EXPORTER_LEN, ProofRole, link_transcript};
use x0_identity::svid::VerifiedSvid;
use x0_identity::{NodeId, node_id_of};
use x0_wire::ControlMessage;
use x0_wire::control::Hello;

use crate::control::{ControlError, ControlStream};
use crate::kx::{KxPolicy, KxRecorder, group_name};
use crate::local::LocalIdentity;
use crate::metrics::{FailureReason, LinkMetrics};
use crate::socket::CountingSocket;
use crate::trust::{SpiffeVerifier, TrustState};

/// ALPN of links between members.
pub const LINK_ALPN: &[u8] = b"x0t/1";
/// ALPN of the CA service.
pub const CA_ALPN: &[u8] = b"x0t-ca/1";
/// Server name sent in the ClientHello. Peers are authenticated by SPIFFE ID, not by name.
const SERVER_NAME: &str = "x0t.invalid";

/// Application close codes.
pub mod close_code {
    /// Normal shutdown.
    pub const SHUTDOWN: u32 = 0;
    /// The ML-DSA proof of possession failed.
    pub const PROOF_OF_POSSESSION: u32 = 1;
    /// The peer is not the node that was dialled.
    pub const UNEXPECTED_PEER: u32 = 2;
    /// A link without a client SVID.
    pub const UNAUTHENTICATED: u32 = 3;
    /// The peer's node was revoked.
    pub const REVOKED: u32 = 4;
    /// A protocol violation on the control stream.
    pub const PROTOCOL: u32 = 5;
}

/// Link endpoint settings.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// Which key-exchange groups to offer and accept.
    pub kx_policy: KxPolicy,
    /// Close a link after this long without any packet.
    pub idle_timeout: Duration,
    /// Send a keep-alive after this long without sending.
    pub keep_alive: Duration,
    /// Give up a handshake (including the proof of possession) after this long.
    pub handshake_timeout: Duration,
    /// UDP payload size to start with (QUIC's minimum is 1,200).
    pub initial_mtu: u16,
    /// Probe for a larger path MTU.
    pub mtu_discovery: bool,
    /// With this many handshakes in progress, unvalidated clients must first complete a
    /// stateless retry (proving their address) before any state is kept for them.
    pub retry_threshold: usize,
    /// Fault injection on the endpoint's socket (dangerous; `None` in production).
    pub impairment: Option<Arc<dyn crate::socket::Impairment>>,
}

impl Default for LinkConfig {
    fn default() -> Self {
        Self {
            kx_policy: KxPolicy::PostQuantumOnly,
            idle_timeout: Duration::from_secs(30),
            keep_alive: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(5),
            initial_mtu: 1200,
            mtu_discovery: true,
            retry_threshold: 64,
            impairment: None,
        }
    }
}

impl LinkConfig {
    pub(crate) fn transport(&self) -> Arc<TransportConfig> {
        let mut t = TransportConfig::default();
        t.max_idle_timeout(
            VarInt::try_from(self.idle_timeout.as_millis() as u64)
                .ok()
                .map(Into::into),
        )
        .keep_alive_interval(Some(self.keep_alive))
        .initial_mtu(self.initial_mtu.max(1200))
        .min_mtu(1200);
        if !self.mtu_discovery {
            t.mtu_discovery_config(None);
        }
        Arc::new(t)
    }
}

/// Failures of link setup.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum LinkError {
    /// Socket error.
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    /// TLS configuration could not be built.
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// quinn refused to start the connection.
    #[error("cannot connect: {0}")]
    Connect(#[from] quinn::ConnectError),
    /// The handshake or link failed.
    #[error("{}: {detail}", reason.as_str())]
    Failed {
        /// Classified reason.
        reason: FailureReason,
        /// What happened.
        detail: String,
    },
}

impl LinkError {
    /// The counter this failure is classified under.
    pub fn reason(&self) -> FailureReason {
        match self {
            Self::Failed { reason, .. } => *reason,
            _ => FailureReason::Other,
        }
    }

    fn failed(reason: FailureReason, detail: impl Into<String>) -> Self {
        Self::Failed {
            reason,
            detail: detail.into(),
        }
    }
}

/// Classifies a quinn connection error.
pub(crate) fn classify(e: &ConnectionError) -> (FailureReason, String) {
    match e {
        ConnectionError::TransportError(te) => {
            let r = te.reason.as_str();
            if r.contains("NoKxGroupsInCommon") || r.contains("NoKxGroupOverlap") {
                (
                    FailureReason::NoCommonGroup,
                    "peer offers no X25519MLKEM768 key exchange; classical-only peers are refused \
                     (link.allow_classical_key_exchange_dangerous = true would allow them)"
                        .into(),
                )
            } else if r.contains("invalid peer certificate") {
                (
                    FailureReason::BadCertificate,
                    format!("peer certificate refused: {r}"),
                )
            } else {
                (FailureReason::Other, te.to_string())
            }
        }
        ConnectionError::ConnectionClosed(cc) => {
            let code = u64::from(cc.error_code);
            let reason = match code.checked_sub(0x100) {
                Some(40) | Some(71) => FailureReason::NoCommonGroup,
                Some(44) => FailureReason::Revoked,
                Some(45) => FailureReason::CertificateExpired,
                Some(48) => FailureReason::UntrustedIssuer,
                Some(42) | Some(43) | Some(46) | Some(116) => FailureReason::BadCertificate,
                _ => FailureReason::Other,
            };
            (reason, format!("peer refused the handshake: {cc}"))
        }
        ConnectionError::ApplicationClosed(ac) => {
            let reason = match u32::try_from(u64::from(ac.error_code)).unwrap_or(u32::MAX) {
                close_code::PROOF_OF_POSSESSION => FailureReason::ProofOfPossession,
                close_code::UNEXPECTED_PEER => FailureReason::UnexpectedPeer,
                close_code::UNAUTHENTICATED => FailureReason::Unauthenticated,
                close_code::REVOKED => FailureReason::Revoked,
                _ => FailureReason::Other,
            };
            (reason, format!("peer closed the link: {ac}"))
        }
        ConnectionError::TimedOut => (FailureReason::Timeout, "timed out".into()),
        other => (FailureReason::Other, other.to_string()),
    }
}

/// A failed handshake as a [`LinkError`], counted exactly once: if our verifier refused the
/// peer's certificate it has already counted the precise reason, otherwise it is counted here.
fn handshake_failed(
    metrics: &LinkMetrics,
    verifier: &SpiffeVerifier,
    e: &ConnectionError,
) -> LinkError {
    let (reason, detail) = classify(e);
    match verifier.refusal() {
        Some(refused) => LinkError::failed(refused, detail),
        None => {
            metrics.failure(reason);
            LinkError::failed(reason, detail)
        }
    }
}

/// A control-stream failure during the proof of possession. If the connection is gone, the
/// failure is why it closed: a peer that refuses our certificate closes the connection just
/// after our side of the handshake completed, which is not a proof-of-possession failure.
fn pop_stream_failed(conn: &quinn::Connection, e: ControlError) -> LinkError {
    match conn.close_reason() {
        Some(closed) => {
            let (reason, detail) = classify(&closed);
            LinkError::failed(reason, detail)
        }
        None => protocol(e),
    }
}

/// An established, authenticated link to a neighbour.
#[derive(Debug)]
pub struct Link {
    /// The QUIC connection.
    pub connection: quinn::Connection,
    /// The peer's verified SVID.
    pub peer: VerifiedSvid,
    /// The peer's ML-DSA-65 public key, proven in this session.
    pub peer_mldsa_public_key: Vec<u8>,
    /// The key-exchange group the handshake negotiated.
    pub kx_group: NamedGroup,
    /// Whether we dialled or accepted.
    pub role: ProofRole,
    /// The newest revocation serial the peer holds.
    pub peer_revocation_serial: u64,
    /// The control stream.
    pub control: ControlStream,
    /// Time from the first packet to a verified proof of possession.
    pub setup_time: Duration,
}

impl Link {
    /// The peer's node ID.
    pub fn peer_id(&self) -> NodeId {
        self.peer.node_id
    }

    /// The peer's UDP address.
    pub fn remote_addr(&self) -> SocketAddr {
        self.connection.remote_address()
    }

    /// The negotiated group's name.
    pub fn kx_group_name(&self) -> String {
        group_name(self.kx_group)
    }
}

/// A request to the CA service, read and waiting for an answer.
#[derive(Debug)]
pub struct CaRequest {
    /// The connection.
    pub connection: quinn::Connection,
    /// The client's SVID, if it presented a valid one (renewals).
    pub peer: Option<VerifiedSvid>,
    /// The session's exporter value, for checking proofs in the request.
    pub exporter: [u8; EXPORTER_LEN],
    /// The request.
    pub request: ControlMessage,
    stream: ControlStream,
}

impl CaRequest {
    /// Sends the answer and waits (bounded) for the client to close.
    pub async fn respond(mut self, answer: &ControlMessage) -> Result<(), ControlError> {
        self.stream.send.send(answer).await?;
        self.stream.send.finish();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.connection.closed()).await;
        Ok(())
    }
}

/// What an accepted handshake turned into.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Accepted {
    /// A member's link.
    Link(Link),
    /// A join or renewal request.
    Ca(CaRequest),
}

struct Inner {
    endpoint: Endpoint,
    identity: Arc<LocalIdentity>,
    trust: Arc<TrustState>,
    metrics: Arc<LinkMetrics>,
    config: LinkConfig,
    /// Transport settings shared by every connection (built once from `config`).
    transport: Arc<TransportConfig>,
    base_server: quinn::ServerConfig,
    in_progress: AtomicUsize,
}

/// A node's QUIC endpoint for links and the CA service.
#[derive(Clone)]
pub struct LinkEndpoint {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for LinkEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkEndpoint")
            .field("local_addr", &self.inner.endpoint.local_addr().ok())
            .field("node", &self.inner.identity.node_id())
            .finish_non_exhaustive()
    }
}

fn server_crypto(
    identity: &Arc<LocalIdentity>,
    trust: &Arc<TrustState>,
    policy: KxPolicy,
    recorder: &KxRecorder,
) -> Result<(Arc<QuicServerConfig>, Arc<SpiffeVerifier>), LinkError> {
    let verifier = SpiffeVerifier::new(trust.clone());
    let mut tls = rustls::ServerConfig::builder_with_provider(recorder.provider(policy))
        .with_protocol_versions(&[&TLS13])?
        .with_client_cert_verifier(verifier.clone())
        .with_cert_resolver(identity.clone());
    tls.alpn_protocols = vec![LINK_ALPN.to_vec(), CA_ALPN.to_vec()];
    tls.max_early_data_size = 0;
    // No session resumption. Our clients never resume (`Resumption::disabled()`), so tickets
    // would only cost a cache entry and two encrypted messages per handshake; and a resumed
    // session would not run the `SpiffeVerifier` (no revocation check, no verified SVID).
    tls.send_tls13_tickets = 0;
    tls.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    let quic = QuicServerConfig::try_from(tls)
        .map_err(|e| LinkError::failed(FailureReason::Other, e.to_string()))?;
    Ok((Arc::new(quic), verifier))
}

pub(crate) fn client_config(
    tls: rustls::ClientConfig,
    config: &LinkConfig,
) -> Result<quinn::ClientConfig, LinkError> {
    client_config_with(tls, config.transport())
}

fn client_config_with(
    tls: rustls::ClientConfig,
    transport: Arc<TransportConfig>,
) -> Result<quinn::ClientConfig, LinkError> {
    let quic = QuicClientConfig::try_from(tls)
        .map_err(|e| LinkError::failed(FailureReason::Other, e.to_string()))?;
    let mut c = quinn::ClientConfig::new(Arc::new(quic));
    c.transport_config(transport);
    Ok(c)
}

pub(crate) fn export(conn: &quinn::Connection) -> Result<[u8; EXPORTER_LEN], LinkError> {
    let mut out = [0u8; EXPORTER_LEN];
    conn.export_keying_material(&mut out, EXPORTER_LABEL, b"")
        .map_err(|_| LinkError::failed(FailureReason::Other, "TLS exporter unavailable"))?;
    Ok(out)
}

impl LinkEndpoint {
    /// Binds the endpoint to `addr` and starts accepting.
    pub fn bind(
        addr: SocketAddr,
        config: LinkConfig,
        identity: Arc<LocalIdentity>,
        trust: Arc<TrustState>,
        metrics: Arc<LinkMetrics>,
    ) -> Result<Self, LinkError> {
        let probe = KxRecorder::new();
        let (crypto, _) = server_crypto(&identity, &trust, config.kx_policy, &probe)?;
        drop(probe);
        let transport = config.transport();
        let mut base_server = quinn::ServerConfig::with_crypto(crypto);
        base_server.transport_config(transport.clone());
        base_server.migration(false);

        let socket = std::net::UdpSocket::bind(addr)?;
        let runtime = quinn::default_runtime()
            .ok_or_else(|| std::io::Error::other("no async runtime (run inside tokio)"))?;
        let udp = runtime.wrap_udp_socket(socket)?;
        let mut key = [0u8; 8];
        rustls::crypto::aws_lc_rs::default_provider()
            .secure_random
            .fill(&mut key)
            .map_err(|_| std::io::Error::other("system randomness unavailable"))?;
        let cid_key = u64::from_le_bytes(key);
        let mut endpoint_config = EndpointConfig::default();
        endpoint_config.cid_generator(move || {
            Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
        });
        let counting: Arc<dyn quinn::AsyncUdpSocket> = Arc::new(
            CountingSocket::new(udp, metrics.clone(), cid_key).impaired(config.impairment.clone()),
        );
        let endpoint = Endpoint::new_with_abstract_socket(
            endpoint_config,
            Some(base_server.clone()),
            counting,
            runtime,
        )?;
        Ok(Self {
            inner: Arc::new(Inner {
                endpoint,
                identity,
                trust,
                metrics,
                config,
                transport,
                base_server,
                in_progress: AtomicUsize::new(0),
            }),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.endpoint.local_addr()
    }

    /// Counters.
    pub fn metrics(&self) -> &Arc<LinkMetrics> {
        &self.inner.metrics
    }

    /// Trust state.
    pub fn trust(&self) -> &Arc<TrustState> {
        &self.inner.trust
    }

    /// The node's identity.
    pub fn identity(&self) -> &Arc<LocalIdentity> {
        &self.inner.identity
    }

    /// Settings.
    pub fn config(&self) -> &LinkConfig {
        &self.inner.config
    }

    /// Closes every connection and stops accepting.
    pub fn close(&self) {
        self.inner
            .endpoint
            .close(VarInt::from_u32(close_code::SHUTDOWN), b"shutdown");
    }

    /// Waits until every connection is closed (bounded by the caller).
    pub async fn wait_idle(&self) {
        self.inner.endpoint.wait_idle().await;
    }

    /// A client config for one connection using our SVID.
    pub(crate) fn member_client_config(
        &self,
        alpn: &[u8],
        policy: KxPolicy,
        recorder: &KxRecorder,
    ) -> Result<(quinn::ClientConfig, Arc<SpiffeVerifier>), LinkError> {
        let verifier = SpiffeVerifier::new(self.inner.trust.clone());
        let mut tls = rustls::ClientConfig::builder_with_provider(recorder.provider(policy))
            .with_protocol_versions(&[&TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(verifier.clone())
            .with_client_cert_resolver(self.inner.identity.clone());
        tls.alpn_protocols = vec![alpn.to_vec()];
        tls.resumption = rustls::client::Resumption::disabled();
        Ok((
            client_config_with(tls, self.inner.transport.clone())?,
            verifier,
        ))
    }

    /// Connects with `config`, whose server verifier is `verifier`; failures are counted.
    pub(crate) async fn connect_raw(
        &self,
        addr: SocketAddr,
        config: quinn::ClientConfig,
        verifier: &SpiffeVerifier,
    ) -> Result<quinn::Connection, LinkError> {
        let connecting = self
            .inner
            .endpoint
            .connect_with(config, addr, SERVER_NAME)?;
        match tokio::time::timeout(self.inner.config.handshake_timeout, connecting).await {
            Err(_) => {
                // Nothing answered: no verifier saw a certificate, so count it here.
                self.inner.metrics.failure(FailureReason::Timeout);
                Err(LinkError::failed(
                    FailureReason::Timeout,
                    "handshake timed out",
                ))
            }
            Ok(Err(e)) => Err(handshake_failed(&self.inner.metrics, verifier, &e)),
            Ok(Ok(conn)) => Ok(conn),
        }
    }

    /// Dials `addr` and runs the proof of possession. With `expected`, the peer must be that
    /// node.
    pub async fn dial(
        &self,
        addr: SocketAddr,
        expected: Option<NodeId>,
    ) -> Result<Link, LinkError> {
        self.dial_with_policy(addr, expected, self.inner.config.kx_policy)
            .await
    }

    /// [`LinkEndpoint::dial`] with another key-exchange policy (tests use it to play a peer
    /// without post-quantum support).
    pub async fn dial_with_policy(
        &self,
        addr: SocketAddr,
        expected: Option<NodeId>,
        policy: KxPolicy,
    ) -> Result<Link, LinkError> {
        let started = Instant::now();
        let recorder = KxRecorder::new();
        let (config, verifier) = self.member_client_config(LINK_ALPN, policy, &recorder)?;
        let conn = self.connect_raw(addr, config, &verifier).await?;
        let result = tokio::time::timeout(
            self.inner.config.handshake_timeout,
            self.finish_dial(conn.clone(), &recorder, &verifier, expected, started),
        )
        .await
        .unwrap_or_else(|_| {
            Err(LinkError::failed(
                FailureReason::Timeout,
                "proof of possession timed out",
            ))
        });
        if let Err(e) = &result {
            self.inner.metrics.failure(e.reason());
            conn.close(
                VarInt::from_u32(close_for(e.reason())),
                e.to_string().as_bytes(),
            );
        }
        result
    }

    async fn finish_dial(
        &self,
        conn: quinn::Connection,
        recorder: &KxRecorder,
        verifier: &SpiffeVerifier,
        expected: Option<NodeId>,
        started: Instant,
    ) -> Result<Link, LinkError> {
        let peer = verifier
            .verified()
            .ok_or_else(|| LinkError::failed(FailureReason::BadCertificate, "no verified peer"))?;
        if let Some(want) = expected
            && want != peer.node_id
        {
            return Err(LinkError::failed(
                FailureReason::UnexpectedPeer,
                format!("dialled node {want} but {} answered", peer.node_id),
            ));
        }
        let kx_group = recorder
            .negotiated()
            .ok_or_else(|| LinkError::failed(FailureReason::Other, "no key exchange recorded"))?;
        let exporter = export(&conn)?;
        let hello = self.hello(ProofRole::Dialer, &exporter)?;
        let (send, recv) = conn
            .open_bi()
            .await
            .map_err(|e| LinkError::failed(classify(&e).0, e.to_string()))?;
        let mut control = ControlStream::new(send, recv, self.inner.metrics.clone());
        control
            .send
            .send(&hello)
            .await
            .map_err(|e| pop_stream_failed(&conn, e))?;
        let their = control
            .recv
            .recv()
            .await
            .map_err(|e| pop_stream_failed(&conn, e))?;
        let (peer_key, serial) = verify_hello(&peer, their, ProofRole::Listener, &exporter)?;
        self.established(
            conn,
            peer,
            peer_key,
            kx_group,
            ProofRole::Dialer,
            serial,
            control,
            started,
        )
    }

    fn hello(
        &self,
        role: ProofRole,
        exporter: &[u8; EXPORTER_LEN],
    ) -> Result<ControlMessage, LinkError> {
        let keys = self.inner.identity.keys();
        let sig = keys
            .sign_mldsa(&link_transcript(role, exporter, keys.node_id()))
            .map_err(|e| LinkError::failed(FailureReason::Other, e.to_string()))?;
        Ok(ControlMessage::Hello(Hello {
            mldsa_public_key: keys.mldsa_public_key().to_vec(),
            pop_signature: sig,
            revocation_serial: self.inner.trust.snapshot().revocation_serial,
        }))
    }

    #[allow(clippy::too_many_arguments)]
    fn established(
        &self,
        connection: quinn::Connection,
        peer: VerifiedSvid,
        peer_mldsa_public_key: Vec<u8>,
        kx_group: NamedGroup,
        role: ProofRole,
        peer_revocation_serial: u64,
        control: ControlStream,
        started: Instant,
    ) -> Result<Link, LinkError> {
        let m = &self.inner.metrics;
        if kx_group == NamedGroup::X25519MLKEM768 {
            m.links_hybrid_pq.fetch_add(1, Ordering::Relaxed);
        } else {
            m.links_classical.fetch_add(1, Ordering::Relaxed);
            warn!(peer = %peer.node_id, group = %group_name(kx_group),
                "link uses a CLASSICAL key exchange (allowed by the dangerous config switch)");
        }
        Ok(Link {
            connection,
            peer,
            peer_mldsa_public_key,
            kx_group,
            role,
            peer_revocation_serial,
            control,
            setup_time: started.elapsed(),
        })
    }

    /// Waits for the next incoming handshake. `None` once the endpoint is closed.
    ///
    /// Under load (more than `retry_threshold` handshakes in progress) unvalidated clients are
    /// sent a stateless retry and not returned.
    pub async fn accept(&self) -> Option<Handshake> {
        loop {
            let incoming = self.inner.endpoint.accept().await?;
            let busy =
                self.inner.in_progress.load(Ordering::Relaxed) >= self.inner.config.retry_threshold;
            if busy && incoming.may_retry() {
                self.inner
                    .metrics
                    .retries_sent
                    .fetch_add(1, Ordering::Relaxed);
                let _ = incoming.retry();
                continue;
            }
            self.inner.in_progress.fetch_add(1, Ordering::Relaxed);
            return Some(Handshake {
                incoming: Some(incoming),
                endpoint: self.clone(),
            });
        }
    }
}

fn protocol(e: ControlError) -> LinkError {
    LinkError::failed(
        FailureReason::ProofOfPossession,
        format!("control stream: {e}"),
    )
}

fn close_for(reason: FailureReason) -> u32 {
    match reason {
        FailureReason::ProofOfPossession => close_code::PROOF_OF_POSSESSION,
        FailureReason::UnexpectedPeer => close_code::UNEXPECTED_PEER,
        FailureReason::Unauthenticated => close_code::UNAUTHENTICATED,
        FailureReason::Revoked => close_code::REVOKED,
        _ => close_code::PROTOCOL,
    }
}

/// Checks a peer's Hello: its ML-DSA key must hash, with the SVID's TLS key, to the node ID in
/// the SVID, and its signature must cover this session's exporter in the peer's role.
fn verify_hello(
    peer: &VerifiedSvid,
    msg: ControlMessage,
    peer_role: ProofRole,
    exporter: &[u8; EXPORTER_LEN],
) -> Result<(Vec<u8>, u64), LinkError> {
    let ControlMessage::Hello(hello) = msg else {
        return Err(LinkError::failed(
            FailureReason::ProofOfPossession,
            format!("expected hello, got {}", msg.name()),
        ));
    };
    if node_id_of(&peer.tls_point, &hello.mldsa_public_key) != peer.node_id {
        return Err(LinkError::failed(
            FailureReason::ProofOfPossession,
            "ML-DSA key is not bound to the peer's node ID",
        ));
    }
    let transcript = link_transcript(peer_role, exporter, peer.node_id);
    verify_mldsa65(&hello.mldsa_public_key, &transcript, &hello.pop_signature).map_err(|_| {
        LinkError::failed(
            FailureReason::ProofOfPossession,
            "ML-DSA-65 signature does not verify",
        )
    })?;
    Ok((hello.mldsa_public_key, hello.revocation_serial))
}

/// An incoming handshake, admitted and waiting to be completed (usually in its own task).
#[derive(Debug)]
pub struct Handshake {
    incoming: Option<Incoming>,
    endpoint: LinkEndpoint,
}

impl Drop for Handshake {
    fn drop(&mut self) {
        self.endpoint
            .inner
            .in_progress
            .fetch_sub(1, Ordering::Relaxed);
    }
}

impl Handshake {
    /// The client's address.
    pub fn remote_addr(&self) -> Option<SocketAddr> {
        self.incoming.as_ref().map(|i| i.remote_address())
    }

    /// Completes the handshake and the proof of possession (for links) or reads the request
    /// (for the CA service). Failures are counted and logged with the peer's address.
    pub async fn complete(mut self) -> Result<Accepted, LinkError> {
        let Some(incoming) = self.incoming.take() else {
            return Err(LinkError::failed(
                FailureReason::Other,
                "handshake already used",
            ));
        };
        let remote = incoming.remote_address();
        let ep = self.endpoint.clone();
        let timeout = ep.inner.config.handshake_timeout;
        let result = tokio::time::timeout(timeout, ep.complete_inner(incoming))
            .await
            .unwrap_or_else(|_| {
                Err(LinkError::failed(
                    FailureReason::Timeout,
                    "handshake timed out",
                ))
            });
        if let Err(e) = &result {
            match e.reason() {
                FailureReason::NoCommonGroup => warn!(%remote, "refused link: {e}"),
                _ => info!(%remote, "link setup failed: {e}"),
            }
        }
        result
    }
}

impl LinkEndpoint {
    async fn complete_inner(&self, incoming: Incoming) -> Result<Accepted, LinkError> {
        let started = Instant::now();
        let recorder = KxRecorder::new();
        let (crypto, verifier) = server_crypto(
            &self.inner.identity,
            &self.inner.trust,
            self.inner.config.kx_policy,
            &recorder,
        )?;
        let mut server = self.inner.base_server.clone();
        server.crypto = crypto;
        // A ClientHello that fits in the first datagram (a classical-only one does) is
        // processed, and may fail, in `accept_with` itself.
        let conn = match incoming.accept_with(Arc::new(server)) {
            Ok(connecting) => connecting.await,
            Err(e) => Err(e),
        }
        .map_err(|e| handshake_failed(&self.inner.metrics, &verifier, &e))?;
        let alpn = conn
            .handshake_data()
            .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
            .and_then(|d| d.protocol);
        let result = match alpn.as_deref() {
            Some(LINK_ALPN) => self
                .finish_accept_link(conn.clone(), &recorder, &verifier, started)
                .await
                .map(Accepted::Link),
            Some(CA_ALPN) => self
                .finish_accept_ca(conn.clone(), &verifier)
                .await
                .map(Accepted::Ca),
            _ => Err(LinkError::failed(
                FailureReason::Other,
                "no ALPN negotiated",
            )),
        };
        if let Err(e) = &result {
            self.inner.metrics.failure(e.reason());
            conn.close(
                VarInt::from_u32(close_for(e.reason())),
                e.to_string().as_bytes(),
            );
        }
        result
    }

    async fn finish_accept_link(
        &self,
        conn: quinn::Connection,
        recorder: &KxRecorder,
        verifier: &SpiffeVerifier,
        started: Instant,
    ) -> Result<Link, LinkError> {
        let peer = verifier.verified().ok_or_else(|| {
            LinkError::failed(FailureReason::Unauthenticated, "link without a client SVID")
        })?;
        let kx_group = recorder
            .negotiated()
            .ok_or_else(|| LinkError::failed(FailureReason::Other, "no key exchange recorded"))?;
        let exporter = export(&conn)?;
        let hello = self.hello(ProofRole::Listener, &exporter)?;
        let (send, recv) = conn
            .accept_bi()
            .await
            .map_err(|e| LinkError::failed(classify(&e).0, e.to_string()))?;
        let mut control = ControlStream::new(send, recv, self.inner.metrics.clone());
        control
            .send
            .send(&hello)
            .await
            .map_err(|e| pop_stream_failed(&conn, e))?;
        // The Hello is only queued; the connection driver, just woken on this worker, sends it.
        // Let the driver run first: the dialler is waiting for it, and verifying the dialler's
        // signature (~35 µs) would otherwise delay the send.
        tokio::task::yield_now().await;
        let their = control
            .recv
            .recv()
            .await
            .map_err(|e| pop_stream_failed(&conn, e))?;
        let (peer_key, serial) = verify_hello(&peer, their, ProofRole::Dialer, &exporter)?;
        debug!(peer = %peer.node_id, "accepted link");
        self.established(
            conn,
            peer,
            peer_key,
            kx_group,
            ProofRole::Listener,
            serial,
            control,
            started,
        )
    }

    async fn finish_accept_ca(
        &self,
        conn: quinn::Connection,
        verifier: &SpiffeVerifier,
    ) -> Result<CaRequest, LinkError> {
        let exporter = export(&conn)?;
        let (send, recv) = conn
            .accept_bi()
            .await
            .map_err(|e| LinkError::failed(classify(&e).0, e.to_string()))?;
        let mut stream = ControlStream::new(send, recv, self.inner.metrics.clone());
        let read_failed =
            |e: ControlError| LinkError::failed(FailureReason::Other, format!("CA request: {e}"));
        let mut request = stream.recv.recv().await.map_err(read_failed)?;
        if request == ControlMessage::CaProofRequest {
            // A joining node wants this node to prove, before it sends its invitation secret,
            // that it is the CA node the invitation names: only the CA node answers.
            if !self.inner.identity.serves_ca() {
                return Err(LinkError::failed(
                    FailureReason::Other,
                    "a joining node asked for the CA node's proof, but this node is not the CA node",
                ));
            }
            let hello = self.hello(ProofRole::CaService, &exporter)?;
            stream
                .send
                .send(&hello)
                .await
                .map_err(|e| LinkError::failed(FailureReason::Other, format!("CA proof: {e}")))?;
            request = stream.recv.recv().await.map_err(read_failed)?;
            if request == ControlMessage::CaProofRequest {
                return Err(LinkError::failed(
                    FailureReason::Other,
                    "a second CA proof request on one connection",
                ));
            }
        }
        Ok(CaRequest {
            connection: conn,
            peer: verifier.verified(),
            exporter,
            request,
            stream,
        })
    }
}
