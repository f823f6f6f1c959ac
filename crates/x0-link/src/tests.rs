//! Link tests over loopback: real quinn endpoints on `127.0.0.1`, a real mesh CA, real SVIDs.
//!
//! The harness ([`Mesh`], [`Node`], [`CaNode`]) builds what `x0t` builds at start: keys, an SVID,
//! a trust bundle, a [`LocalIdentity`], a [`TrustState`] and a [`LinkEndpoint`], with an accept
//! loop that completes every handshake and reports its outcome over a channel. Rogue peers are
//! built from the same parts with one thing wrong (an expired SVID, another CA, no client
//! certificate, a forged proof of possession, ...). Every test asserts on behaviour and counters;
//! waits are bounded by [`WAIT`] only so that a broken test fails instead of hanging.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quinn::ConnectionError;
use rcgen::{CertificateParams, CustomExtension, KeyPair, PKCS_ECDSA_P256_SHA256};
use rustls::NamedGroup;
use rustls::version::TLS13;
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer, UnixTime};
use tokio::sync::mpsc;
use x0_identity::ca::MeshCa;
use x0_identity::proof::{ProofRole, link_transcript};
use x0_identity::store::StateStore;
use x0_identity::svid::{Role, TrustBundle};
use x0_identity::{NodeId, NodeKeys, TrustDomain, authority, ca_service};
use x0_wire::control::{Hello, RefusalCode, Refused};
use x0_wire::{ControlMessage, InvitationToken, RevocationList, SignedRevocationList};

use crate::ca_client::{self, CaClientError};
use crate::control::ControlStream;
use crate::endpoint::{CaRequest, client_config, close_code, export};
use crate::kx::KxRecorder;
use crate::trust::SpiffeVerifier;
use crate::{
    Accepted, FailureReason, KxPolicy, LINK_ALPN, Link, LinkConfig, LinkEndpoint, LinkError,
    LinkMetrics, LocalIdentity, TrustState,
};

const TD: &str = "mesh.test";
/// Upper bound on any single wait. Not a timing assertion: only keeps a broken test from hanging.
const WAIT: Duration = Duration::from_secs(10);
const HOUR: Duration = Duration::from_secs(3600);

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn unix_now() -> u64 {
    UnixTime::now().as_secs()
}

fn unix(secs: u64) -> UnixTime {
    UnixTime::since_unix_epoch(Duration::from_secs(secs))
}

/// Waits (bounded) until `cond` holds.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn bounded<F: std::future::Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(WAIT, f)
        .await
        .unwrap_or_else(|_| panic!("gave up waiting for {what}"))
}

/// A mesh: its CA and the bundle members trust.
struct Mesh {
    ca: Arc<MeshCa>,
    bundle: TrustBundle,
}

impl Mesh {
    fn new() -> Self {
        Self::with_domain(TD)
    }

    fn with_domain(td: &str) -> Self {
        let td = TrustDomain::new(td).unwrap();
        let ca = MeshCa::create(td.clone(), UnixTime::now()).unwrap();
        let bundle = TrustBundle::new(td, vec![ca.cert_der().clone()]).unwrap();
        Self {
            ca: Arc::new(ca),
            bundle,
        }
    }

    /// An SVID for `keys`, valid from `at` for `ttl`.
    fn issue_at(&self, keys: &NodeKeys, at: u64, ttl: Duration) -> Vec<u8> {
        self.ca
            .issue_svid(keys.tls_public_point(), keys.node_id(), unix(at), ttl)
            .unwrap()
            .to_vec()
    }

    fn issue(&self, keys: &NodeKeys) -> Vec<u8> {
        self.issue_at(keys, unix_now(), HOUR)
    }

    /// A member with fresh keys and a valid SVID.
    fn node(&self, config: LinkConfig) -> Node {
        let keys = Arc::new(NodeKeys::generate().unwrap());
        let svid = self.issue(&keys);
        Node::start(&self.bundle, keys, svid, config)
    }

    /// The signed revocation list revoking `nodes` at `serial`.
    fn revocations(&self, serial: u64, nodes: &[NodeId]) -> SignedRevocationList {
        let mut revoked = nodes.to_vec();
        revoked.sort();
        self.ca
            .sign_revocations(&RevocationList {
                trust_domain: TD.into(),
                serial,
                issued_at_unix: unix_now(),
                revoked,
            })
            .unwrap()
    }
}

type Outcome = Result<Link, LinkError>;

/// The CA service as a test node runs it: the CA node's [`ca_service::CaService`] (none on a
/// node that only poses as the CA node), every request it was handed, and answers it drops.
struct CaService {
    service: Option<Arc<ca_service::CaService>>,
    /// Every request the link layer handed up (a secret that reaches a rogue ends up here).
    seen: Mutex<Vec<ControlMessage>>,
    /// Answers to lose: the request is handled, then the connection closes without an answer.
    lose_answers: AtomicUsize,
}

impl CaService {
    fn real(service: Arc<ca_service::CaService>) -> Arc<Self> {
        Arc::new(Self {
            service: Some(service),
            seen: Mutex::new(Vec::new()),
            lose_answers: AtomicUsize::new(0),
        })
    }

    /// A service that only records what it is sent.
    fn harvesting() -> Arc<Self> {
        Arc::new(Self {
            service: None,
            seen: Mutex::new(Vec::new()),
            lose_answers: AtomicUsize::new(0),
        })
    }

    /// The CA's own store connection.
    fn store(&self) -> std::sync::MutexGuard<'_, StateStore> {
        self.service.as_ref().expect("not the CA node").store()
    }

    fn seen(&self) -> Vec<ControlMessage> {
        self.seen.lock().unwrap().clone()
    }

    /// The answer to send, or `None` to lose it.
    fn answer(&self, req: &CaRequest) -> Option<ControlMessage> {
        self.seen.lock().unwrap().push(req.request.clone());
        let answer = match &self.service {
            Some(service) => match service.admit() {
                Some(permit) => permit.handle(
                    &req.request,
                    req.peer.as_ref(),
                    &req.exporter,
                    UnixTime::now(),
                ),
                None => ca_service::CaService::busy(),
            },
            None => refused(RefusalCode::NotCa, "not the CA node"),
        };
        let lose = self
            .lose_answers
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok();
        (!lose).then_some(answer)
    }
}

fn refused(code: RefusalCode, message: &str) -> ControlMessage {
    ControlMessage::Refused(Refused {
        code,
        message: message.into(),
    })
}

/// A node with an endpoint on loopback and an accept loop.
struct Node {
    ep: LinkEndpoint,
    addr: SocketAddr,
    keys: Arc<NodeKeys>,
    /// Outcome of every link handshake the accept loop completed (CA requests are answered and
    /// not reported).
    accepted: mpsc::UnboundedReceiver<Outcome>,
    /// Handshakes `accept` admitted (retried clients are not admitted).
    admitted: Arc<AtomicUsize>,
}

impl Node {
    fn start(bundle: &TrustBundle, keys: Arc<NodeKeys>, svid: Vec<u8>, config: LinkConfig) -> Self {
        Self::start_full(bundle, keys, svid, None, config, None)
    }

    fn start_full(
        bundle: &TrustBundle,
        keys: Arc<NodeKeys>,
        svid: Vec<u8>,
        ca_cert: Option<Vec<u8>>,
        config: LinkConfig,
        ca: Option<Arc<CaService>>,
    ) -> Self {
        let metrics = Arc::new(LinkMetrics::default());
        let trust = TrustState::new(bundle.clone(), metrics.clone());
        let identity = LocalIdentity::new(keys.clone(), svid, ca_cert).unwrap();
        let ep = LinkEndpoint::bind(loopback(), config, identity, trust, metrics).unwrap();
        let addr = ep.local_addr().unwrap();
        let admitted = Arc::new(AtomicUsize::new(0));
        let accepted = accept_loop(ep.clone(), ca, admitted.clone());
        Self {
            ep,
            addr,
            keys,
            accepted,
            admitted,
        }
    }

    fn id(&self) -> NodeId {
        self.keys.node_id()
    }

    fn metrics(&self) -> &LinkMetrics {
        self.ep.metrics()
    }

    fn failures(&self, reason: FailureReason) -> u64 {
        self.metrics().failures(reason)
    }

    /// The outcome of the next handshake the accept loop completed.
    async fn next_accepted(&mut self) -> Outcome {
        bounded("the listener's handshake outcome", self.accepted.recv())
            .await
            .expect("accept loop ended")
    }

    async fn next_link(&mut self) -> Link {
        match self.next_accepted().await {
            Ok(link) => link,
            Err(e) => panic!("listener refused a good link: {e}"),
        }
    }

    /// The next link, passing over failed handshakes (of garbage that looked like an Initial).
    async fn next_link_among_failures(&mut self) -> Link {
        loop {
            if let Ok(link) = self.next_accepted().await {
                return link;
            }
        }
    }

    async fn next_refusal(&mut self) -> LinkError {
        match self.next_accepted().await {
            Ok(link) => panic!("listener accepted a link from {}", link.peer_id()),
            Err(e) => e,
        }
    }

    /// Dials `other` and returns both ends.
    async fn link_to(&self, other: &mut Node) -> (Link, Link) {
        let dialled = bounded("dial", self.ep.dial(other.addr, Some(other.id())))
            .await
            .unwrap_or_else(|e| panic!("dial failed: {e}"));
        let accepted = other.next_link().await;
        (dialled, accepted)
    }
}

fn accept_loop(
    ep: LinkEndpoint,
    ca: Option<Arc<CaService>>,
    admitted: Arc<AtomicUsize>,
) -> mpsc::UnboundedReceiver<Outcome> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(handshake) = ep.accept().await {
            admitted.fetch_add(1, Ordering::Relaxed);
            let tx = tx.clone();
            let ca = ca.clone();
            tokio::spawn(async move {
                match handshake.complete().await {
                    Ok(Accepted::Link(link)) => {
                        let _ = tx.send(Ok(link));
                    }
                    Ok(Accepted::Ca(req)) => {
                        let answer = match &ca {
                            Some(ca) => ca.answer(&req),
                            None => Some(refused(RefusalCode::NotCa, "not the CA node")),
                        };
                        match answer {
                            Some(answer) => {
                                let _ = req.respond(&answer).await;
                            }
                            None => req.connection.close(0u32.into(), b"answer lost"),
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                    }
                }
            });
        }
    });
    rx
}

/// The CA node: a member that also holds the CA key and a state store.
struct CaNode {
    node: Node,
    service: Arc<CaService>,
    _dir: tempfile::TempDir,
}

impl CaNode {
    fn start(mesh: &Mesh) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(&dir.path().join("ca")).unwrap();
        let keys = Arc::new(NodeKeys::generate().unwrap());
        let now = unix_now();
        assert!(store.create_node_keys(&keys, now).unwrap());
        assert!(store.create_ca(&mesh.ca, HOUR, now).unwrap());
        let svid = mesh.issue(&keys);
        let ca = store.ca().unwrap().unwrap();
        let service = CaService::real(ca_service::CaService::new(
            store,
            ca,
            ca_service::DEFAULT_MAX_IN_FLIGHT,
        ));
        let node = Node::start_full(
            &mesh.bundle,
            keys,
            svid,
            Some(mesh.ca.cert_der().to_vec()),
            LinkConfig::default(),
            Some(service.clone()),
        );
        Self {
            node,
            service,
            _dir: dir,
        }
    }

    /// Stores an invitation and returns its token.
    fn invite(&self, mesh: &Mesh, tag: u8, expires_at: u64) -> InvitationToken {
        let id = [tag; 16];
        let secret = [tag ^ 0x5a; 32];
        self.service
            .store()
            .add_invitation(id, &secret, unix_now(), expires_at)
            .unwrap();
        InvitationToken {
            ca_fingerprint: mesh.ca.fingerprint(),
            ca_node: self.node.id(),
            invitation_id: id,
            secret,
            expires_at_unix: expires_at,
            trust_domain: TD.into(),
            bootstrap: self.node.addr.to_string(),
        }
    }
}

/// Asserts a connection was closed by the peer with application code `code`.
async fn assert_closed_with(conn: &quinn::Connection, code: u32) {
    match bounded("the peer to close the connection", conn.closed()).await {
        ConnectionError::ApplicationClosed(ac) => {
            assert_eq!(u64::from(ac.error_code), u64::from(code), "close: {ac}");
        }
        other => panic!("expected an application close with code {code}, got {other}"),
    }
}

fn assert_pq(link: &Link) {
    assert_eq!(link.kx_group, NamedGroup::X25519MLKEM768);
    assert_eq!(link.kx_group_name(), "X25519MLKEM768");
}

// ---------------------------------------------------------------------------------------------
// 1, 2: links come up post-quantum, with working control streams
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_link_post_quantum_and_keep_a_working_control_stream() {
    let mesh = Mesh::new();
    let a = mesh.node(LinkConfig::default());
    let mut b = mesh.node(LinkConfig::default());

    let (mut at_a, mut at_b) = a.link_to(&mut b).await;
    assert_pq(&at_a);
    assert_pq(&at_b);
    assert_eq!(at_a.peer_id(), b.id());
    assert_eq!(at_b.peer_id(), a.id());
    assert_eq!(at_a.role, ProofRole::Dialer);
    assert_eq!(at_b.role, ProofRole::Listener);
    assert_eq!(at_a.peer_mldsa_public_key, b.keys.mldsa_public_key());
    assert_eq!(at_b.peer_mldsa_public_key, a.keys.mldsa_public_key());
    assert_eq!(at_a.remote_addr(), b.addr);
    assert_eq!(
        at_a.peer.spiffe_id.to_string(),
        format!("spiffe://{TD}/node/{}", b.id())
    );
    for n in [&a, &b] {
        assert_eq!(n.metrics().links_hybrid_pq.load(Ordering::Relaxed), 1);
        assert_eq!(n.metrics().links_classical.load(Ordering::Relaxed), 0);
        assert_eq!(n.metrics().certificates_refused.load(Ordering::Relaxed), 0);
        for r in FailureReason::ALL {
            assert_eq!(n.failures(r), 0, "{} counted", r.as_str());
        }
    }

    // Both exported the same session secret, so both proofs were bound to one session.
    assert_eq!(
        export(&at_a.connection).unwrap(),
        export(&at_b.connection).unwrap()
    );

    // The control stream carries messages both ways after the proof of possession.
    let list = ControlMessage::Revocations(mesh.revocations(1, &[NodeId::from_bytes([9; 16])]));
    at_a.control.send.send(&list).await.unwrap();
    assert_eq!(
        bounded("control message", at_b.control.recv.recv())
            .await
            .unwrap(),
        list
    );
    let back = refused(RefusalCode::Internal, "pong");
    at_b.control.send.send(&back).await.unwrap();
    assert_eq!(
        bounded("control message", at_a.control.recv.recv())
            .await
            .unwrap(),
        back
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_come_up_post_quantum_at_the_minimum_quic_mtu() {
    let mesh = Mesh::new();
    let config = LinkConfig {
        initial_mtu: 1200,
        mtu_discovery: false,
        ..LinkConfig::default()
    };
    let a = mesh.node(config.clone());
    let mut b = mesh.node(config);
    let (mut at_a, mut at_b) = a.link_to(&mut b).await;
    assert_pq(&at_a);
    assert_pq(&at_b);
    assert_eq!(at_a.connection.stats().path.current_mtu, 1200);
    assert_eq!(at_b.connection.stats().path.current_mtu, 1200);
    // The ML-KEM key share and the ML-DSA proof both exceed one 1,200-byte datagram; a large
    // control message still crosses.
    let big = ControlMessage::Revocations(
        mesh.revocations(
            1,
            &(0..500u16)
                .map(|i| {
                    let mut id = [0u8; 16];
                    id[..2].copy_from_slice(&i.to_be_bytes());
                    NodeId::from_bytes(id)
                })
                .collect::<Vec<_>>(),
        ),
    );
    at_b.control.send.send(&big).await.unwrap();
    assert_eq!(
        bounded("control message", at_a.control.recv.recv())
            .await
            .unwrap(),
        big
    );
    assert_eq!(a.metrics().links_hybrid_pq.load(Ordering::Relaxed), 1);
    assert_eq!(b.metrics().links_hybrid_pq.load(Ordering::Relaxed), 1);
}

// ---------------------------------------------------------------------------------------------
// 3, 4: key-exchange policy
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classical_only_dialer_is_refused_with_no_common_group() {
    let mesh = Mesh::new();
    let a = mesh.node(LinkConfig::default());
    let mut b = mesh.node(LinkConfig::default());

    let err = bounded(
        "dial",
        a.ep.dial_with_policy(b.addr, Some(b.id()), KxPolicy::ClassicalOnlyForTesting),
    )
    .await
    .expect_err("a classical-only dialer linked");
    assert_eq!(err.reason(), FailureReason::NoCommonGroup, "{err}");
    assert_eq!(a.failures(FailureReason::NoCommonGroup), 1);

    let refusal = b.next_refusal().await;
    assert_eq!(refusal.reason(), FailureReason::NoCommonGroup, "{refusal}");
    assert_eq!(b.failures(FailureReason::NoCommonGroup), 1, "counted once");
    assert_eq!(b.metrics().links_classical.load(Ordering::Relaxed), 0);
    assert_eq!(b.metrics().links_hybrid_pq.load(Ordering::Relaxed), 0);

    // The listener is unharmed.
    let (at_a, _) = a.link_to(&mut b).await;
    assert_pq(&at_a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dangerous_switch_admits_classical_peers_and_still_prefers_the_hybrid() {
    let mesh = Mesh::new();
    let mut listener = mesh.node(LinkConfig {
        kx_policy: KxPolicy::AllowClassicalDangerous,
        ..LinkConfig::default()
    });
    let classical = mesh.node(LinkConfig::default());
    let pq = mesh.node(LinkConfig::default());

    let at_c = bounded(
        "dial",
        classical.ep.dial_with_policy(
            listener.addr,
            Some(listener.id()),
            KxPolicy::ClassicalOnlyForTesting,
        ),
    )
    .await
    .unwrap();
    let at_l = listener.next_link().await;
    assert_eq!(at_c.kx_group, NamedGroup::X25519);
    assert_eq!(at_l.kx_group, NamedGroup::X25519);
    assert_eq!(at_l.kx_group_name(), "X25519");
    assert_eq!(
        listener.metrics().links_classical.load(Ordering::Relaxed),
        1
    );
    assert_eq!(
        classical.metrics().links_classical.load(Ordering::Relaxed),
        1
    );
    assert_eq!(
        listener.metrics().links_hybrid_pq.load(Ordering::Relaxed),
        0
    );

    let (at_pq, at_l2) = pq.link_to(&mut listener).await;
    assert_pq(&at_pq);
    assert_pq(&at_l2);
    assert_eq!(
        listener.metrics().links_hybrid_pq.load(Ordering::Relaxed),
        1
    );
    assert_eq!(
        listener.metrics().links_classical.load(Ordering::Relaxed),
        1
    );
}

// ---------------------------------------------------------------------------------------------
// 5: refused certificates
// ---------------------------------------------------------------------------------------------

/// A member of `mesh`'s trust whose TLS identity is `svid` (possibly broken).
fn rogue(mesh: &Mesh, keys: NodeKeys, svid: Vec<u8>) -> Node {
    Node::start(&mesh.bundle, Arc::new(keys), svid, LinkConfig::default())
}

/// Dials `listener` from `dialer` and checks both sides: the listener refused with `reason` and
/// counted it, and the dial failed with `dialer_sees`: what the TLS alert the listener sent can
/// express (a trust-domain mismatch travels as a generic `certificate_unknown`).
async fn assert_listener_refuses(
    dialer: &Node,
    listener: &mut Node,
    reason: FailureReason,
    dialer_sees: FailureReason,
) {
    let before = listener
        .metrics()
        .certificates_refused
        .load(Ordering::Relaxed);
    let links_before = listener.metrics().links_hybrid_pq.load(Ordering::Relaxed);
    let err = bounded("dial", dialer.ep.dial(listener.addr, Some(listener.id())))
        .await
        .expect_err("a bad certificate linked");
    let refusal = listener.next_refusal().await;
    assert_eq!(refusal.reason(), reason, "listener: {refusal}");
    assert_eq!(listener.failures(reason), 1, "listener counter");
    assert_eq!(
        listener
            .metrics()
            .certificates_refused
            .load(Ordering::Relaxed),
        before + 1
    );
    assert_eq!(err.reason(), dialer_sees, "dialer: {err}");
    assert_eq!(dialer.failures(dialer_sees), 1, "dialer counter");
    assert_eq!(
        listener.metrics().links_hybrid_pq.load(Ordering::Relaxed),
        links_before
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_svids_are_refused_in_both_directions() {
    let mesh = Mesh::new();
    let mut listener = mesh.node(LinkConfig::default());
    let keys = NodeKeys::generate().unwrap();
    let expired = mesh.issue_at(&keys, unix_now() - 2 * 3600, HOUR);
    let mut stale = rogue(&mesh, keys, expired);
    assert_listener_refuses(
        &stale,
        &mut listener,
        FailureReason::CertificateExpired,
        FailureReason::CertificateExpired,
    )
    .await;

    // The other way round: the dialer refuses a listener whose SVID expired.
    let err = bounded("dial", listener.ep.dial(stale.addr, None))
        .await
        .expect_err("linked to an expired listener");
    assert_eq!(err.reason(), FailureReason::CertificateExpired, "{err}");
    assert_eq!(listener.failures(FailureReason::CertificateExpired), 2);
    // The stale node saw the refusal as the alert the dialer sent.
    let seen = stale.next_refusal().await;
    assert_eq!(seen.reason(), FailureReason::CertificateExpired, "{seen}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn svid_from_another_ca_of_the_same_trust_domain_is_refused() {
    let mesh = Mesh::new();
    let impostor_mesh = Mesh::new();
    let mut listener = mesh.node(LinkConfig::default());
    let keys = NodeKeys::generate().unwrap();
    let foreign = impostor_mesh.issue(&keys);
    let impostor = rogue(&mesh, keys, foreign);
    assert_listener_refuses(
        &impostor,
        &mut listener,
        FailureReason::UntrustedIssuer,
        FailureReason::UntrustedIssuer,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn svid_of_another_trust_domain_is_refused() {
    let mesh = Mesh::new();
    let mut listener = mesh.node(LinkConfig::default());
    // Our CA's own key and certificate, issuing for another trust domain: the chain verifies,
    // only the SPIFFE ID is wrong.
    let other_td = MeshCa::from_stored(
        TrustDomain::new("other.test").unwrap(),
        mesh.ca.key_pkcs8_der().to_vec(),
        mesh.ca.cert_der().to_vec(),
    )
    .unwrap();
    let keys = NodeKeys::generate().unwrap();
    let svid = other_td
        .issue_svid(
            keys.tls_public_point(),
            keys.node_id(),
            UnixTime::now(),
            HOUR,
        )
        .unwrap()
        .to_vec();
    let outsider = rogue(&mesh, keys, svid);
    assert_listener_refuses(
        &outsider,
        &mut listener,
        FailureReason::WrongTrustDomain,
        FailureReason::BadCertificate,
    )
    .await;

    // A whole other mesh (other CA, other trust domain) fails at the issuer.
    let other_mesh = Mesh::with_domain("other.test");
    let keys = NodeKeys::generate().unwrap();
    let svid = other_mesh.issue(&keys);
    let stranger = rogue(&mesh, keys, svid);
    let err = bounded("dial", stranger.ep.dial(listener.addr, None))
        .await
        .expect_err("a stranger linked");
    assert_eq!(err.reason(), FailureReason::UntrustedIssuer, "{err}");
    assert_eq!(
        listener.next_refusal().await.reason(),
        FailureReason::UntrustedIssuer
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_nodes_are_refused_from_the_next_handshake_on() {
    let mesh = Mesh::new();
    let mut listener = mesh.node(LinkConfig::default());
    let mut victim = mesh.node(LinkConfig::default());
    let (_l1, _l2) = victim.link_to(&mut listener).await;

    let signed = mesh.revocations(1, &[victim.id()]);
    assert_eq!(
        listener.ep.trust().apply_revocations(&signed).unwrap(),
        Some(vec![victim.id()])
    );
    // Not newer: ignored.
    assert_eq!(
        listener.ep.trust().apply_revocations(&signed).unwrap(),
        None
    );
    // Forged by another CA: refused.
    assert!(
        listener
            .ep
            .trust()
            .apply_revocations(&Mesh::new().revocations(2, &[]))
            .is_err()
    );
    assert_eq!(listener.ep.trust().snapshot().revocation_serial, 1);

    assert_listener_refuses(
        &victim,
        &mut listener,
        FailureReason::Revoked,
        FailureReason::Revoked,
    )
    .await;

    // And the listener no longer accepts the revoked node as a listener either.
    let err = bounded("dial", listener.ep.dial(victim.addr, None))
        .await
        .expect_err("linked to a revoked node");
    assert_eq!(err.reason(), FailureReason::Revoked, "{err}");
    assert_eq!(listener.failures(FailureReason::Revoked), 2);
    let seen = victim.next_refusal().await;
    assert_eq!(seen.reason(), FailureReason::Revoked, "{seen}");
}

/// A certificate for `keys`' TLS key, self-signed, padded past 16 KiB with a private extension.
fn oversize_cert(keys: &NodeKeys) -> Vec<u8> {
    let key = KeyPair::from_pkcs8_der_and_sign_algo(
        &PrivatePkcs8KeyDer::from(keys.tls_pkcs8_der().to_vec()),
        &PKCS_ECDSA_P256_SHA256,
    )
    .unwrap();
    let mut params = CertificateParams::new(vec!["x0t.invalid".to_string()]).unwrap();
    let mut padding = vec![0x04, 0x82, 0x4e, 0x20]; // OCTET STRING, 20,000 bytes
    padding.resize(4 + 20_000, 0xab);
    params.custom_extensions = vec![CustomExtension::from_oid_content(
        &[1, 3, 6, 1, 4, 1, 55555, 1],
        padding,
    )];
    let der = params.self_signed(&key).unwrap().der().to_vec();
    assert!(der.len() > 16 * 1024);
    der
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_client_certificate_is_refused_as_bad() {
    let mesh = Mesh::new();
    let mut listener = mesh.node(LinkConfig::default());
    let keys = NodeKeys::generate().unwrap();
    let cert = oversize_cert(&keys);
    let bloated = rogue(&mesh, keys, cert);
    // Refused by size before anything else (otherwise it would be an untrusted issuer).
    assert_listener_refuses(
        &bloated,
        &mut listener,
        FailureReason::BadCertificate,
        FailureReason::BadCertificate,
    )
    .await;
    assert_eq!(listener.failures(FailureReason::UntrustedIssuer), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlong_client_chain_is_refused_as_bad() {
    let mesh = Mesh::new();
    let mut listener = mesh.node(LinkConfig::default());
    let keys = Arc::new(NodeKeys::generate().unwrap());
    let svid = CertificateDer::from(mesh.issue(&keys));
    let ca = mesh.ca.cert_der().clone();
    let chain = vec![svid, ca.clone(), ca.clone(), ca];

    // A hand-made client presenting a four-certificate chain.
    let dialer = mesh.node(LinkConfig::default());
    let recorder = KxRecorder::new();
    let verifier = SpiffeVerifier::new(dialer.ep.trust().clone());
    let mut tls =
        rustls::ClientConfig::builder_with_provider(recorder.provider(KxPolicy::PostQuantumOnly))
            .with_protocol_versions(&[&TLS13])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(verifier.clone())
            .with_client_auth_cert(
                chain,
                rustls_pki_types::PrivateKeyDer::Pkcs8(keys.tls_pkcs8_der().to_vec().into()),
            )
            .unwrap();
    tls.alpn_protocols = vec![LINK_ALPN.to_vec()];
    let config = client_config(tls, &LinkConfig::default()).unwrap();
    // Whether the dialer sees the refusal during or just after its handshake is a race; the
    // listener's verdict is not.
    if let Ok(conn) = dialer
        .ep
        .connect_raw(listener.addr, config, &verifier)
        .await
    {
        let _ = bounded("close", conn.closed()).await;
    }
    let refusal = listener.next_refusal().await;
    assert_eq!(refusal.reason(), FailureReason::BadCertificate, "{refusal}");
    assert!(refusal.to_string().contains("too large"), "{refusal}");
    assert_eq!(listener.failures(FailureReason::BadCertificate), 1);
}

// ---------------------------------------------------------------------------------------------
// 6: forged proofs of possession
// ---------------------------------------------------------------------------------------------

/// Opens a TLS-authenticated link connection from `from` to `to` by hand, sends `forge(exporter)`
/// as the dialer's Hello, and checks the listener closes with a proof-of-possession failure.
async fn assert_forged_hello_refused(
    from: &Node,
    to: &mut Node,
    forge: impl FnOnce(&[u8; 32]) -> Hello,
) {
    let before = to.failures(FailureReason::ProofOfPossession);
    let recorder = KxRecorder::new();
    let (config, verifier) = from
        .ep
        .member_client_config(LINK_ALPN, KxPolicy::PostQuantumOnly, &recorder)
        .unwrap();
    let conn = bounded("handshake", from.ep.connect_raw(to.addr, config, &verifier))
        .await
        .unwrap();
    assert_eq!(verifier.verified().unwrap().node_id, to.id());
    assert_eq!(recorder.negotiated(), Some(NamedGroup::X25519MLKEM768));
    let exporter = export(&conn).unwrap();
    let (send, recv) = conn.open_bi().await.unwrap();
    let mut control = ControlStream::new(send, recv, from.ep.metrics().clone());
    control
        .send
        .send(&ControlMessage::Hello(forge(&exporter)))
        .await
        .unwrap();
    // The listener's own Hello arrives regardless.
    match bounded("listener hello", control.recv.recv()).await {
        Ok(ControlMessage::Hello(_)) | Err(_) => {}
        Ok(other) => panic!("listener sent {}", other.name()),
    }
    assert_closed_with(&conn, close_code::PROOF_OF_POSSESSION).await;
    let refusal = to.next_refusal().await;
    assert_eq!(
        refusal.reason(),
        FailureReason::ProofOfPossession,
        "{refusal}"
    );
    assert_eq!(to.failures(FailureReason::ProofOfPossession), before + 1);
    assert_eq!(to.metrics().links_hybrid_pq.load(Ordering::Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_proofs_of_possession_are_refused() {
    let mesh = Mesh::new();
    let forger = mesh.node(LinkConfig::default());
    let mut listener = mesh.node(LinkConfig::default());
    let key = forger.keys.mldsa_public_key().to_vec();
    let id = forger.id();

    // Garbage signature under the right key.
    assert_forged_hello_refused(&forger, &mut listener, move |_| Hello {
        mldsa_public_key: key,
        pop_signature: vec![0x5a; x0_identity::keys::MLDSA65_SIGNATURE_LEN],
        revocation_serial: 0,
    })
    .await;

    // A valid signature over the right transcript, by an ML-DSA key not bound to the SVID.
    let other = NodeKeys::generate().unwrap();
    assert_forged_hello_refused(&forger, &mut listener, move |exporter| Hello {
        mldsa_public_key: other.mldsa_public_key().to_vec(),
        pop_signature: other
            .sign_mldsa(&link_transcript(ProofRole::Dialer, exporter, id))
            .unwrap(),
        revocation_serial: 0,
    })
    .await;

    // The right key, signing the listener's role (a reflected proof).
    let keys = forger.keys.clone();
    assert_forged_hello_refused(&forger, &mut listener, move |exporter| Hello {
        mldsa_public_key: keys.mldsa_public_key().to_vec(),
        pop_signature: keys
            .sign_mldsa(&link_transcript(ProofRole::Listener, exporter, id))
            .unwrap(),
        revocation_serial: 0,
    })
    .await;

    // The right key, signing another session's exporter (a replayed proof).
    let keys = forger.keys.clone();
    assert_forged_hello_refused(&forger, &mut listener, move |_| Hello {
        mldsa_public_key: keys.mldsa_public_key().to_vec(),
        pop_signature: keys
            .sign_mldsa(&link_transcript(ProofRole::Dialer, &[0u8; 32], id))
            .unwrap(),
        revocation_serial: 0,
    })
    .await;

    // After all that, an honest link works.
    let (at_f, _) = forger.link_to(&mut listener).await;
    assert_pq(&at_f);
    assert_eq!(listener.failures(FailureReason::ProofOfPossession), 4);
}

// ---------------------------------------------------------------------------------------------
// 7, 8: wrong peer, no client certificate
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dialling_the_wrong_node_fails_with_unexpected_peer() {
    let mesh = Mesh::new();
    let a = mesh.node(LinkConfig::default());
    let mut b = mesh.node(LinkConfig::default());
    let c = mesh.node(LinkConfig::default());
    let err = bounded("dial", a.ep.dial(b.addr, Some(c.id())))
        .await
        .expect_err("linked to the wrong node");
    assert_eq!(err.reason(), FailureReason::UnexpectedPeer, "{err}");
    assert_eq!(a.failures(FailureReason::UnexpectedPeer), 1);
    assert_eq!(a.metrics().links_hybrid_pq.load(Ordering::Relaxed), 0);
    // The listener learns why the dialer hung up.
    assert_eq!(
        b.next_refusal().await.reason(),
        FailureReason::UnexpectedPeer
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dialling_a_silent_address_times_out_and_is_counted() {
    let mesh = Mesh::new();
    let a = mesh.node(LinkConfig {
        handshake_timeout: Duration::from_millis(300),
        ..LinkConfig::default()
    });
    // A bound UDP socket that never answers.
    let silent = UdpSocket::bind(loopback()).unwrap();
    let err = bounded("dial", a.ep.dial(silent.local_addr().unwrap(), None))
        .await
        .expect_err("linked to nobody");
    assert_eq!(err.reason(), FailureReason::Timeout, "{err}");
    assert_eq!(a.failures(FailureReason::Timeout), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_without_client_certificate_is_unauthenticated() {
    let mesh = Mesh::new();
    let dialer = mesh.node(LinkConfig::default());
    let mut listener = mesh.node(LinkConfig::default());
    let recorder = KxRecorder::new();
    let verifier = SpiffeVerifier::new(dialer.ep.trust().clone());
    let mut tls =
        rustls::ClientConfig::builder_with_provider(recorder.provider(KxPolicy::PostQuantumOnly))
            .with_protocol_versions(&[&TLS13])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(verifier.clone())
            .with_no_client_auth();
    tls.alpn_protocols = vec![LINK_ALPN.to_vec()];
    let config = client_config(tls, &LinkConfig::default()).unwrap();
    let conn = bounded(
        "handshake",
        dialer.ep.connect_raw(listener.addr, config, &verifier),
    )
    .await
    .unwrap();
    assert_eq!(verifier.verified().unwrap().node_id, listener.id());
    assert_closed_with(&conn, close_code::UNAUTHENTICATED).await;
    let refusal = listener.next_refusal().await;
    assert_eq!(
        refusal.reason(),
        FailureReason::Unauthenticated,
        "{refusal}"
    );
    assert_eq!(listener.failures(FailureReason::Unauthenticated), 1);
}

// ---------------------------------------------------------------------------------------------
// 9, 10: the CA service
// ---------------------------------------------------------------------------------------------

/// A node that joined with `token`: its state store holds the membership it was issued.
struct Joined {
    keys: Arc<NodeKeys>,
    store: StateStore,
    _dir: tempfile::TempDir,
}

async fn join(token: &InvitationToken) -> (Result<Joined, CaClientError>, NodeKeys) {
    let keys = NodeKeys::generate().unwrap();
    (join_as(token, &keys).await, keys)
}

/// Joins with `keys` (a retry from the same state directory uses the same keys).
async fn join_as(token: &InvitationToken, keys: &NodeKeys) -> Result<Joined, CaClientError> {
    let result = bounded("join", ca_client::join(token, keys, &LinkConfig::default())).await;
    result.map(|(issued, group)| {
        assert_eq!(group, "X25519MLKEM768");
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(&dir.path().join("member")).unwrap();
        let keys = NodeKeys::from_stored(keys.tls_pkcs8_der(), keys.mldsa_seed()).unwrap();
        store.create_node_keys(&keys, unix_now()).unwrap();
        let membership = authority::accept_issued(
            &store,
            &keys,
            &issued,
            Some(&token.ca_fingerprint),
            Some(token.bootstrap.clone()),
            UnixTime::now(),
        )
        .unwrap();
        assert_eq!(membership.trust_domain.as_str(), TD);
        Joined {
            keys: Arc::new(keys),
            store,
            _dir: dir,
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_over_the_ca_service_then_link_to_the_ca_node() {
    let mesh = Mesh::new();
    let mut ca = CaNode::start(&mesh);
    let token = ca.invite(&mesh, 1, unix_now() + 600);

    let (joined, _) = join(&token).await;
    let joined = joined.unwrap();
    let membership = joined.store.membership().unwrap().unwrap();
    assert!(ca.service.store().is_member(joined.keys.node_id()).unwrap());

    // The new member links to the CA node with what it was issued.
    let bundle =
        TrustBundle::from_pem(membership.trust_domain.clone(), &membership.bundle_pem).unwrap();
    let member = Node::start(
        &bundle,
        joined.keys.clone(),
        membership.svid_der.clone(),
        LinkConfig::default(),
    );
    let (at_member, at_ca) = member.link_to(&mut ca.node).await;
    assert_pq(&at_member);
    assert_eq!(at_ca.peer_id(), joined.keys.node_id());

    // The token works once.
    let (again, again_keys) = join(&token).await;
    let err = again.err().expect("a used invitation was accepted twice");
    assert_eq!(err.refusal(), Some(RefusalCode::InvitationUsed), "{err}");
    assert!(!ca.service.store().is_member(again_keys.node_id()).unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_invitation_is_refused() {
    let mesh = Mesh::new();
    let ca = CaNode::start(&mesh);
    let token = ca.invite(&mesh, 2, unix_now() - 10);
    let (result, keys) = join(&token).await;
    let err = result.err().expect("an expired invitation was accepted");
    assert_eq!(err.refusal(), Some(RefusalCode::InvitationExpired), "{err}");
    assert!(!ca.service.store().is_member(keys.node_id()).unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_with_a_wrong_ca_fingerprint_fails_before_anything_is_sent() {
    let mesh = Mesh::new();
    let ca = CaNode::start(&mesh);
    let good = ca.invite(&mesh, 3, unix_now() + 600);
    let mut bad = good.clone();
    bad.ca_fingerprint = Mesh::new().ca.fingerprint();

    let (result, keys) = join(&bad).await;
    let err = result
        .err()
        .expect("joined a CA that does not match the pin");
    assert!(matches!(err, CaClientError::Link { .. }), "{err}");
    assert!(err.refusal().is_none());
    {
        let store = ca.service.store();
        assert!(!store.is_member(keys.node_id()).unwrap());
        let invitations = store.invitations().unwrap();
        assert_eq!(invitations.len(), 1);
        assert_eq!(invitations[0].used_at, None, "the invitation was consumed");
    }

    // The invitation is intact: the right pin joins.
    let (joined, _) = join(&good).await;
    joined.unwrap();
}

/// A node posing as the CA node on the CA service: it presents `svid` (for `keys`) and the
/// (public) CA certificate, and records whatever a joiner sends it.
fn pretender(mesh: &Mesh, keys: Arc<NodeKeys>, svid: Vec<u8>) -> (Node, Arc<CaService>) {
    let harvest = CaService::harvesting();
    let node = Node::start_full(
        &mesh.bundle,
        keys,
        svid,
        Some(mesh.ca.cert_der().to_vec()),
        LinkConfig::default(),
        Some(harvest.clone()),
    );
    (node, harvest)
}

/// Asserts the join failed as "not the CA node", with nothing handed to the pretender.
fn assert_no_secret_sent(result: Result<Joined, CaClientError>, harvest: &CaService, expect: &str) {
    match result
        .err()
        .expect("joined through a node that is not the CA node")
    {
        CaClientError::NotTheCaNode { detail, .. } => {
            assert!(detail.contains(expect), "{detail}");
        }
        other => panic!("expected NotTheCaNode, got {other}"),
    }
    assert!(
        harvest.seen().is_empty(),
        "the pretender was sent {:?}",
        harvest.seen()
    );
}

/// Any member holds an SVID under the pinned CA, and the CA certificate is public: a member
/// that presents both on the CA service (after, say, taking over the bootstrap address) must
/// not be taken for the CA node. The joiner aborts at the handshake, before sending anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_posing_as_the_ca_node_is_sent_no_secret() {
    let mesh = Mesh::new();
    let ca = CaNode::start(&mesh);
    let token = ca.invite(&mesh, 4, unix_now() + 600);
    let member_keys = Arc::new(NodeKeys::generate().unwrap());
    let member_svid = mesh.issue(&member_keys);
    let (mut pretender, harvest) = pretender(&mesh, member_keys.clone(), member_svid);

    let mut redirected = token.clone();
    redirected.bootstrap = pretender.addr.to_string();
    let (result, _) = join(&redirected).await;
    assert_no_secret_sent(result, &harvest, &member_keys.node_id().to_string());
    pretender.next_refusal().await;

    // The invitation is intact: at the CA node it works.
    assert_eq!(ca.service.store().invitations().unwrap()[0].used_at, None);
    let (joined, _) = join(&token).await;
    joined.unwrap();
}

/// Someone holding the CA node's TLS key (ECDSA broken, or the key stolen) and a valid SVID of
/// the CA node, but not its ML-DSA-65 key, passes the handshake and still gets no secret: the
/// CA node's proof of possession is checked first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ca_nodes_certificate_without_its_mldsa_key_is_sent_no_secret() {
    let mesh = Mesh::new();
    let ca = CaNode::start(&mesh);
    let token = ca.invite(&mesh, 5, unix_now() + 600);
    let ca_keys = &ca.node.keys;
    let stolen = NodeKeys::from_stored(
        ca_keys.tls_pkcs8_der(),
        NodeKeys::generate().unwrap().mldsa_seed(),
    )
    .unwrap();
    let ca_svid = mesh.issue(ca_keys);
    let (pretender, harvest) = pretender(&mesh, Arc::new(stolen), ca_svid);

    let mut redirected = token.clone();
    redirected.bootstrap = pretender.addr.to_string();
    let (result, _) = join(&redirected).await;
    assert_no_secret_sent(result, &harvest, "ML-DSA-65 key");
    assert_eq!(ca.service.store().invitations().unwrap()[0].used_at, None);
}

/// The CA redeems the invitation and issues the SVID, but the answer is lost on the way. The
/// same joiner (same keys) joining again gets its SVID; another node with the token does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_answer_is_recovered_by_joining_again_with_the_same_keys() {
    let mesh = Mesh::new();
    let ca = CaNode::start(&mesh);
    let token = ca.invite(&mesh, 6, unix_now() + 600);
    let keys = NodeKeys::generate().unwrap();

    ca.service.lose_answers.store(1, Ordering::Relaxed);
    let err = join_as(&token, &keys)
        .await
        .err()
        .expect("an answer that was never sent arrived");
    assert!(
        matches!(err, CaClientError::AnswerLost { .. }),
        "expected AnswerLost, got {err}"
    );
    assert!(
        err.to_string().contains("running the same join again"),
        "{err}"
    );
    assert!(ca.service.store().is_member(keys.node_id()).unwrap());

    let joined = join_as(&token, &keys).await.unwrap();
    assert_eq!(joined.keys.node_id(), keys.node_id());

    let (other, other_keys) = join(&token).await;
    let err = other
        .err()
        .expect("a used invitation admitted a second node");
    assert_eq!(err.refusal(), Some(RefusalCode::InvitationUsed), "{err}");
    assert!(!ca.service.store().is_member(other_keys.node_id()).unwrap());
    let stats = ca.service.service.as_ref().unwrap().stats();
    assert_eq!(stats.joins_issued.load(Ordering::Relaxed), 1);
    assert_eq!(stats.joins_repeated.load(Ordering::Relaxed), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_issues_a_fresh_svid_and_is_refused_after_revocation() {
    let mesh = Mesh::new();
    let mut ca = CaNode::start(&mesh);
    let member = mesh.node(LinkConfig::default());

    let issued = bounded("renewal", ca_client::renew(&member.ep, ca.node.addr))
        .await
        .unwrap();
    assert_eq!(issued.trust_domain, TD);
    assert_eq!(issued.bundle_der, vec![mesh.ca.cert_der().to_vec()]);
    let renewed = mesh
        .bundle
        .verify(
            &CertificateDer::from(issued.svid_der.clone()),
            &[],
            UnixTime::now(),
            Role::Client,
        )
        .unwrap();
    assert_eq!(renewed.node_id, member.id());
    assert_eq!(renewed.tls_point, member.keys.tls_public_point());

    // The renewed SVID takes effect at the next handshake.
    member.ep.identity().set_svid(issued.svid_der, None);
    let (_at_m, at_ca) = member.link_to(&mut ca.node).await;
    assert_eq!(at_ca.peer_id(), member.id());

    // Revoked in the CA's store: the CA answers with a refusal.
    let signed = ca
        .service
        .store()
        .revoke(&mesh.ca, member.id(), "test", unix_now())
        .unwrap()
        .unwrap();
    let err = bounded("renewal", ca_client::renew(&member.ep, ca.node.addr))
        .await
        .expect_err("a revoked node renewed");
    assert_eq!(err.refusal(), Some(RefusalCode::Revoked), "{err}");

    // Once the CA node's link layer knows, the handshake itself is refused.
    ca.node.ep.trust().apply_revocations(&signed).unwrap();
    let err = bounded("renewal", ca_client::renew(&member.ep, ca.node.addr))
        .await
        .expect_err("a revoked node renewed");
    match &err {
        CaClientError::Link { source, .. } => {
            assert_eq!(source.reason(), FailureReason::Revoked, "{source}");
        }
        other => panic!("expected a link refusal, got {other}"),
    }
    assert!(ca.node.failures(FailureReason::Revoked) >= 1);
}

// ---------------------------------------------------------------------------------------------
// 11-13: hostile datagrams
// ---------------------------------------------------------------------------------------------

/// xorshift64*: reproducible noise without a dependency.
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_datagrams_are_counted_and_dropped() {
    let mesh = Mesh::new();
    let mut listener = mesh.node(LinkConfig::default());
    let dialer = mesh.node(LinkConfig::default());
    let sock = UdpSocket::bind(loopback()).unwrap();
    let mut noise = Noise(0x0123_4567_89ab_cdef);
    let mut surely_malformed = 0u64;
    let mut sent = 0u64;
    for batch in 0..20u64 {
        for i in 0..10u64 {
            let len = 1 + (noise.next() % 1400) as usize;
            let mut d = noise.bytes(len);
            match (batch * 10 + i) % 4 {
                // Short header, fixed bit cleared, addressed to a connection ID nobody issued.
                0 => {
                    d[0] &= 0x3f;
                    surely_malformed += 1;
                }
                // Looks like a v1 Initial, but the rest is noise (fails decryption).
                1 if len >= 30 => {
                    d.resize(len.max(1200), 0);
                    d[0] = 0xc0 | (d[0] & 0x0f);
                    d[1..5].copy_from_slice(&1u32.to_be_bytes());
                    d[5] = 8;
                    d[14] = 8;
                }
                // Long header, version 1, fixed bit cleared, no connection IDs.
                2 if len >= 8 => {
                    d[0] = 0x80 | (d[0] & 0x3f);
                    d[1..5].copy_from_slice(&1u32.to_be_bytes());
                    d[5] = 0;
                    d[6] = 0;
                    surely_malformed += 1;
                }
                _ => {}
            }
            sock.send_to(&d, listener.addr).unwrap();
            sent += 1;
        }
        // Pace so that loopback does not drop: wait for the endpoint to read the batch.
        let m = listener.ep.metrics().clone();
        eventually("the endpoint to read the garbage", || {
            m.datagrams_received.load(Ordering::Relaxed) >= sent
        })
        .await;
    }
    assert_eq!(sent, 200);
    let malformed = listener
        .metrics()
        .datagrams_malformed
        .load(Ordering::Relaxed);
    assert!(
        malformed >= surely_malformed,
        "{malformed} < {surely_malformed}"
    );
    assert!(malformed > 0);
    assert!(malformed <= sent);
    // quinn admits an Initial-looking datagram before decrypting it, so garbage may occupy a
    // handshake slot until it times out, but it never becomes a link.
    assert_eq!(
        listener.metrics().links_hybrid_pq.load(Ordering::Relaxed),
        0
    );

    // The endpoint still works.
    let at_d = bounded("dial", dialer.ep.dial(listener.addr, Some(listener.id())))
        .await
        .unwrap();
    assert_pq(&at_d);
    assert_eq!(
        listener.next_link_among_failures().await.peer_id(),
        dialer.id()
    );
}

/// The datagrams of `n` real client first flights (Initial packets carrying an X25519MLKEM768
/// ClientHello, as quinn-proto builds them) towards `server`, from clients that will never answer.
fn real_initials(from: &LinkEndpoint, server: SocketAddr, n: usize) -> Vec<Vec<Vec<u8>>> {
    let recorder = KxRecorder::new();
    let (config, _) = from
        .member_client_config(LINK_ALPN, KxPolicy::PostQuantumOnly, &recorder)
        .unwrap();
    let mut client = quinn_proto::Endpoint::new(
        Arc::new(quinn_proto::EndpointConfig::default()),
        None,
        false,
        None,
    );
    (0..n)
        .map(|_| {
            let now = Instant::now();
            let (_, mut conn) = client
                .connect(now, config.clone(), server, "x0t.invalid")
                .unwrap();
            let mut flight = Vec::new();
            let mut buf = Vec::new();
            while let Some(t) = conn.poll_transmit(now, 1, &mut buf) {
                assert_eq!(t.destination, server);
                flight.push(buf[..t.size].to_vec());
                buf.clear();
            }
            assert!(!flight.is_empty());
            flight
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_retry_threshold_zero_every_client_is_retried_and_links_come_up() {
    let mesh = Mesh::new();
    let mut listener = mesh.node(LinkConfig {
        retry_threshold: 0,
        ..LinkConfig::default()
    });
    for _ in 0..3 {
        let dialer = mesh.node(LinkConfig::default());
        let (at_d, _) = dialer.link_to(&mut listener).await;
        assert_pq(&at_d);
    }
    let retries = listener.metrics().retries_sent.load(Ordering::Relaxed);
    assert!(retries >= 3, "retries_sent = {retries}");
    assert_eq!(listener.admitted.load(Ordering::Relaxed), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_flood_is_retried_and_a_real_link_still_comes_up() {
    const THRESHOLD: usize = 4;
    const FLOOD: usize = 300;
    let mesh = Mesh::new();
    let mut listener = mesh.node(LinkConfig {
        retry_threshold: THRESHOLD,
        // Half-open handshakes must outlive the test, so that none frees its slot.
        handshake_timeout: Duration::from_secs(60),
        idle_timeout: Duration::from_secs(60),
        ..LinkConfig::default()
    });
    let dialer = mesh.node(LinkConfig::default());
    let flood = real_initials(&dialer.ep, listener.addr, FLOOD);
    assert!(flood.iter().all(|f| f[0].len() >= 1200));

    let sock = UdpSocket::bind(loopback()).unwrap();
    let metrics = listener.ep.metrics().clone();
    let target = listener.addr;
    let send_half = |half: &[Vec<Vec<u8>>]| {
        for (i, flight) in half.iter().enumerate() {
            for d in flight {
                sock.send_to(d, target).unwrap();
            }
            if i % 16 == 15 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    };
    let (first, second) = flood.split_at(FLOOD / 2);
    send_half(first);
    eventually("the listener to be saturated and retrying", || {
        metrics.retries_sent.load(Ordering::Relaxed) >= 10
    })
    .await;
    assert_eq!(listener.admitted.load(Ordering::Relaxed), THRESHOLD);

    // A real node links while every handshake slot is held by the flood.
    let (at_d, at_l) = dialer.link_to(&mut listener).await;
    assert_pq(&at_d);
    assert_eq!(at_l.peer_id(), dialer.id());
    let after_link = metrics.retries_sent.load(Ordering::Relaxed);

    send_half(second);
    eventually("retries for the second half of the flood", || {
        metrics.retries_sent.load(Ordering::Relaxed) >= after_link + 10
    })
    .await;
    // Only the first THRESHOLD flooders and the real dialer ever got state.
    assert_eq!(listener.admitted.load(Ordering::Relaxed), THRESHOLD + 1);

    // And again after the flood.
    let late = mesh.node(LinkConfig::default());
    let (at_late, _) = late.link_to(&mut listener).await;
    assert_pq(&at_late);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_initials_do_not_hurt_the_listener() {
    let mesh = Mesh::new();
    let mut listener = mesh.node(LinkConfig::default());
    let dialer = mesh.node(LinkConfig::default());
    let flights = real_initials(&dialer.ep, listener.addr, 2);
    let sock = UdpSocket::bind(loopback()).unwrap();
    let metrics = listener.ep.metrics().clone();

    // The first 600 bytes of a real Initial: its length field promises more than arrives.
    sock.send_to(&flights[0][0][..600], listener.addr).unwrap();
    eventually("the truncated datagram to arrive", || {
        metrics.datagrams_received.load(Ordering::Relaxed) >= 1
    })
    .await;
    // RFC 9000 §14.1: a client's first Initial arrives in a datagram of at least 1,200 bytes.
    assert_eq!(metrics.datagrams_malformed.load(Ordering::Relaxed), 1);
    assert_eq!(listener.admitted.load(Ordering::Relaxed), 0);

    // A whole first datagram, but the ClientHello's tail never follows.
    assert!(
        flights[1].len() >= 2,
        "the hybrid ClientHello spans two datagrams"
    );
    sock.send_to(&flights[1][0], listener.addr).unwrap();
    eventually("the half flight to arrive", || {
        metrics.datagrams_received.load(Ordering::Relaxed) >= 2
    })
    .await;

    let (at_d, _) = dialer.link_to(&mut listener).await;
    assert_pq(&at_d);
    let (at_d2, _) = dialer.link_to(&mut listener).await;
    assert_pq(&at_d2);
}

// ---------------------------------------------------------------------------------------------
// Fault injection: the socket asks the impairment about every transmit
// ---------------------------------------------------------------------------------------------

/// An impairment with one verdict for everything, counting what it was asked about.
#[derive(Debug)]
struct Always {
    verdict: crate::Verdict,
    asked: Mutex<Vec<SocketAddr>>,
}

impl crate::Impairment for Always {
    fn on_send(&self, dst: SocketAddr) -> crate::Verdict {
        self.asked.lock().unwrap().push(dst);
        self.verdict
    }
}

fn impaired(verdict: crate::Verdict) -> (Arc<Always>, LinkConfig) {
    let always = Arc::new(Always {
        verdict,
        asked: Mutex::new(Vec::new()),
    });
    let config = LinkConfig {
        impairment: Some(always.clone()),
        handshake_timeout: Duration::from_secs(1),
        ..LinkConfig::default()
    };
    (always, config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_sends_raise_the_rtt_and_dropped_sends_keep_a_link_from_forming() {
    let mesh = Mesh::new();
    let (delay, config) = impaired(crate::Verdict::Delay(Duration::from_millis(150)));
    let a = mesh.node(config);
    let mut b = mesh.node(LinkConfig::default());
    let (at_a, at_b) = a.link_to(&mut b).await;
    assert!(
        at_a.setup_time >= Duration::from_millis(300),
        "two flights from a, each held 150 ms: {:?}",
        at_a.setup_time
    );
    for rtt in [at_a.connection.rtt(), at_b.connection.rtt()] {
        assert!(rtt >= Duration::from_millis(150), "{rtt:?}");
    }
    let asked = delay.asked.lock().unwrap().clone();
    assert!(
        !asked.is_empty() && asked.iter().all(|d| *d == b.addr),
        "{asked:?}"
    );

    let (drop, config) = impaired(crate::Verdict::Drop);
    let c = mesh.node(config);
    assert!(
        bounded("dial", c.ep.dial(b.addr, Some(b.id())))
            .await
            .is_err(),
        "a link formed with every datagram dropped"
    );
    assert!(!drop.asked.lock().unwrap().is_empty());
}

#[test]
fn advert_signatures_carry_the_current_svid_and_follow_the_revocations() {
    use x0_identity::advert::{AdvertSigner, OriginError, OriginVerifier};

    let mesh = Mesh::new();
    let keys = Arc::new(NodeKeys::generate().unwrap());
    let first = mesh.issue(&keys);
    let identity = LocalIdentity::new(keys.clone(), first.clone(), None).unwrap();
    assert_eq!(identity.svid_der(), first);
    let trust = TrustState::new(mesh.bundle.clone(), Arc::new(LinkMetrics::default()));
    let signer = AdvertSigner::new(keys.clone(), identity.clone());
    let mut verifier = OriginVerifier::new(mesh.bundle.clone(), trust.clone());
    let now = UnixTime::now();
    let (cred, sig) = signer.sign(b"body");
    assert_eq!(
        verifier.verify(now, &keys.node_id(), b"body", &cred, &sig),
        Ok(())
    );
    // A renewal shows in the next advert.
    let renewed = mesh.issue_at(&keys, unix_now(), 2 * HOUR);
    identity.set_svid(renewed.clone(), None);
    let (cred2, sig2) = signer.sign(b"body");
    assert!(cred2.windows(renewed.len()).any(|w| w == renewed));
    assert_eq!(
        verifier.verify(now, &keys.node_id(), b"body", &cred2, &sig2),
        Ok(())
    );
    // So does a revocation.
    let generation = verifier.generation();
    trust
        .apply_revocations(&mesh.revocations(1, &[keys.node_id()]))
        .unwrap();
    assert_ne!(verifier.generation(), generation);
    assert!(!verifier.admits(&keys.node_id()));
    assert_eq!(
        verifier.verify(now, &keys.node_id(), b"body", &cred2, &sig2),
        Err(OriginError::Revoked)
    );
}
