//! What a node trusts, and the rustls verifiers that enforce it.
//!
//! [`TrustState`] holds the mesh's trust bundle and the newest verified revocation list behind a
//! lock that handshakes only read; a new list applies to the very next handshake. The
//! [`SpiffeVerifier`] is built per connection (it keeps the peer's verified SVID for the link
//! code to read after the handshake) and refuses, with a counter per reason: certificates not
//! from our CA, expired ones, other trust domains, anything that breaks the X509-SVID rules,
//! oversize chains, and revoked nodes.

use std::sync::{Arc, LazyLock, Mutex, RwLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{WebPkiSupportedAlgorithms, verify_tls13_signature};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, Error, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tracing::debug;
use x0_identity::keys::sha256;
use x0_identity::svid::{Role, SvidError, TrustBundle, VerifiedSvid};
use x0_identity::{NodeId, TrustDomain};
use x0_wire::SignedRevocationList;
use x0_wire::control::MAX_CERT_LEN;

use crate::metrics::{FailureReason, LinkMetrics};

/// Most certificates a peer may present (leaf and CA).
const MAX_CHAIN_LEN: usize = 3;

/// The trust bundle and revocations, as one consistent snapshot.
#[derive(Debug, Clone)]
pub struct TrustSnapshot {
    /// The mesh CA certificates.
    pub bundle: TrustBundle,
    /// Revoked node IDs, sorted.
    pub revoked: Vec<NodeId>,
    /// Serial of the revocation list they came from (0: none).
    pub revocation_serial: u64,
    /// That list, signed, to pass on to peers.
    pub revocation_list: Option<SignedRevocationList>,
}

impl TrustSnapshot {
    /// Whether `node` is revoked.
    pub fn is_revoked(&self, node: NodeId) -> bool {
        self.revoked.binary_search(&node).is_ok()
    }
}

/// Shared trust state of a node.
#[derive(Debug)]
pub struct TrustState {
    current: RwLock<Arc<TrustSnapshot>>,
    metrics: Arc<LinkMetrics>,
}

impl TrustState {
    /// Starts from a bundle and no revocations.
    pub fn new(bundle: TrustBundle, metrics: Arc<LinkMetrics>) -> Arc<Self> {
        Arc::new(Self {
            current: RwLock::new(Arc::new(TrustSnapshot {
                bundle,
                revoked: Vec::new(),
                revocation_serial: 0,
                revocation_list: None,
            })),
            metrics,
        })
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<TrustSnapshot> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> TrustDomain {
        self.snapshot().bundle.trust_domain().clone()
    }

    /// Verifies `signed` against the bundle and applies it if its serial is newer. Returns the
    /// nodes it newly revokes, or `None` if the list was not newer.
    pub fn apply_revocations(
        &self,
        signed: &SignedRevocationList,
    ) -> Result<Option<Vec<NodeId>>, SvidError> {
        let mut guard = self.current.write().unwrap_or_else(|e| e.into_inner());
        let list = guard.bundle.verify_revocations(signed)?;
        if list.serial <= guard.revocation_serial {
            return Ok(None);
        }
        let newly: Vec<NodeId> = list
            .revoked
            .iter()
            .copied()
            .filter(|n| !guard.is_revoked(*n))
            .collect();
        *guard = Arc::new(TrustSnapshot {
            bundle: guard.bundle.clone(),
            revoked: list.revoked,
            revocation_serial: list.serial,
            revocation_list: Some(signed.clone()),
        });
        Ok(Some(newly))
    }

    /// Verifies a peer chain as a live, unrevoked node SVID of this mesh, counting refusals.
    pub fn verify_peer(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        role: Role,
    ) -> Result<VerifiedSvid, Error> {
        self.verify_peer_classified(end_entity, intermediates, now, role)
            .map_err(|(_, e)| e)
    }

    /// [`TrustState::verify_peer`], also saying under which reason a refusal was counted.
    fn verify_peer_classified(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        role: Role,
    ) -> Result<VerifiedSvid, (FailureReason, Error)> {
        let result = check_sizes(end_entity, intermediates).and_then(|()| {
            let snap = self.snapshot();
            let svid = snap
                .bundle
                .verify(end_entity, intermediates, now, role)
                .map_err(svid_refusal)?;
            if snap.is_revoked(svid.node_id) {
                debug!(node = %svid.node_id, "refusing certificate of a revoked node");
                return Err((
                    FailureReason::Revoked,
                    Error::InvalidCertificate(CertificateError::Revoked),
                ));
            }
            Ok(svid)
        });
        result.inspect_err(|(reason, _)| {
            self.metrics
                .certificates_refused
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.metrics.failure(*reason);
        })
    }
}

/// Advert origins are checked against the same revocations as links.
impl x0_identity::advert::RevocationView for TrustState {
    fn is_revoked(&self, node: &NodeId) -> bool {
        self.snapshot().is_revoked(*node)
    }

    fn revocation_serial(&self) -> u64 {
        self.snapshot().revocation_serial
    }
}

fn check_sizes(
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
) -> Result<(), (FailureReason, Error)> {
    let oversize = end_entity.len() > MAX_CERT_LEN
        || intermediates.len() + 1 > MAX_CHAIN_LEN
        || intermediates.iter().any(|c| c.len() > MAX_CERT_LEN);
    if oversize {
        return Err((
            FailureReason::BadCertificate,
            Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(
                SvidError::NotSvid("certificate chain too large"),
            )))),
        ));
    }
    Ok(())
}

fn svid_refusal(e: SvidError) -> (FailureReason, Error) {
    let (reason, cert_err) = match &e {
        SvidError::Expired => (FailureReason::CertificateExpired, CertificateError::Expired),
        SvidError::NotYetValid => (
            FailureReason::CertificateExpired,
            CertificateError::NotValidYet,
        ),
        SvidError::UntrustedIssuer => (
            FailureReason::UntrustedIssuer,
            CertificateError::UnknownIssuer,
        ),
        SvidError::WrongTrustDomain { .. } => (
            FailureReason::WrongTrustDomain,
            CertificateError::Other(rustls::OtherError(Arc::new(e.clone()))),
        ),
        _ => (
            FailureReason::BadCertificate,
            CertificateError::Other(rustls::OtherError(Arc::new(e.clone()))),
        ),
    };
    debug!("refusing peer certificate: {e}");
    (reason, Error::InvalidCertificate(cert_err))
}

/// The TLS 1.3 signature algorithms of aws-lc-rs (looked up once, not per connection).
static SIGNATURE_ALGORITHMS: LazyLock<WebPkiSupportedAlgorithms> = LazyLock::new(|| {
    rustls::crypto::aws_lc_rs::default_provider().signature_verification_algorithms
});

fn signature_algorithms() -> WebPkiSupportedAlgorithms {
    *SIGNATURE_ALGORITHMS
}

/// Verifies the peer's SVID on one connection, in either direction, and keeps the result (or
/// the reason it refused).
#[derive(Debug)]
pub struct SpiffeVerifier {
    trust: Arc<TrustState>,
    verified: Mutex<Option<VerifiedSvid>>,
    refusal: Mutex<Option<FailureReason>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl SpiffeVerifier {
    /// A verifier for one connection.
    pub fn new(trust: Arc<TrustState>) -> Arc<Self> {
        Arc::new(Self {
            trust,
            verified: Mutex::new(None),
            refusal: Mutex::new(None),
            algorithms: signature_algorithms(),
        })
    }

    /// Why this verifier refused the peer's certificate (already counted), if it did.
    pub fn refusal(&self) -> Option<FailureReason> {
        *self.refusal.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The peer's SVID, once the handshake verified it.
    pub fn verified(&self) -> Option<VerifiedSvid> {
        self.verified
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn verify(
        &self,
        ee: &CertificateDer<'_>,
        im: &[CertificateDer<'_>],
        now: UnixTime,
        role: Role,
    ) -> Result<(), Error> {
        let svid = self
            .trust
            .verify_peer_classified(ee, im, now, role)
            .map_err(|(reason, e)| {
                *self.refusal.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason);
                e
            })?;
        *self.verified.lock().unwrap_or_else(|e| e.into_inner()) = Some(svid);
        Ok(())
    }
}

fn tls12_refused() -> Result<HandshakeSignatureValid, Error> {
    Err(Error::PeerIncompatible(
        rustls::PeerIncompatible::Tls13RequiredForQuic,
    ))
}

impl ServerCertVerifier for SpiffeVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        self.verify(end_entity, intermediates, now, Role::Server)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        tls12_refused()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ECDSA_NISTP256_SHA256]
    }
}

impl ClientCertVerifier for SpiffeVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    /// Optional at the TLS layer so that joining nodes (which have no SVID yet) can reach the CA
    /// service; the link ALPN closes any connection that did not present one.
    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        self.verify(end_entity, intermediates, now, Role::Client)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        tls12_refused()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ECDSA_NISTP256_SHA256]
    }
}

/// A joining node's verifier. It knows the CA fingerprint and the CA node's node ID from the
/// invitation: it accepts a server whose chain contains a CA certificate with that fingerprint
/// and whose leaf is a valid SVID, under that CA, of that very node. The CA certificate is
/// public and every member holds an SVID under it, so without the node ID any member could
/// pose as the CA node and collect invitation secrets.
///
/// The TLS handshake proves the leaf's ECDSA key only; the joiner still checks the CA node's
/// ML-DSA-65 proof before it sends the secret (see [`crate::ca_client::join`]).
#[derive(Debug)]
pub struct PinnedCaVerifier {
    trust_domain: TrustDomain,
    fingerprint: [u8; 32],
    ca_node: NodeId,
    accepted: Mutex<Option<(TrustBundle, VerifiedSvid)>>,
    refusal: Mutex<Option<(FailureReason, String)>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl PinnedCaVerifier {
    /// Pins the CA whose certificate hashes to `fingerprint`, served by node `ca_node`.
    pub fn new(trust_domain: TrustDomain, fingerprint: [u8; 32], ca_node: NodeId) -> Arc<Self> {
        Arc::new(Self {
            trust_domain,
            fingerprint,
            ca_node,
            accepted: Mutex::new(None),
            refusal: Mutex::new(None),
            algorithms: signature_algorithms(),
        })
    }

    /// The bundle made from the pinned CA, once a handshake accepted it.
    pub fn bundle(&self) -> Option<TrustBundle> {
        self.accepted().map(|(b, _)| b)
    }

    /// The CA node's verified SVID, once a handshake accepted it.
    pub fn verified(&self) -> Option<VerifiedSvid> {
        self.accepted().map(|(_, v)| v)
    }

    /// Why the server's certificate was refused, if it was.
    pub fn refusal(&self) -> Option<(FailureReason, String)> {
        self.refusal
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn accepted(&self) -> Option<(TrustBundle, VerifiedSvid)> {
        self.accepted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<(TrustBundle, VerifiedSvid), (FailureReason, String, Error)> {
        check_sizes(end_entity, intermediates)
            .map_err(|(r, e)| (r, "certificate chain too large".to_owned(), e))?;
        let ca = intermediates
            .iter()
            .find(|c| sha256(c) == self.fingerprint)
            .ok_or((
                FailureReason::UntrustedIssuer,
                "no CA certificate with the invitation's fingerprint".to_owned(),
                Error::InvalidCertificate(CertificateError::UnknownIssuer),
            ))?;
        let bundle = TrustBundle::new(self.trust_domain.clone(), vec![ca.clone().into_owned()])
            .map_err(|e| {
                let detail = e.to_string();
                let err = Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(
                    Arc::new(e),
                )));
                (FailureReason::BadCertificate, detail, err)
            })?;
        let svid = bundle
            .verify(end_entity, &[], now, Role::Server)
            .map_err(|e| {
                let detail = e.to_string();
                let (reason, err) = svid_refusal(e);
                (reason, detail, err)
            })?;
        if svid.node_id != self.ca_node {
            return Err((
                FailureReason::UnexpectedPeer,
                format!(
                    "node {} answered, but the invitation names the CA node {}",
                    svid.node_id, self.ca_node
                ),
                Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure),
            ));
        }
        Ok((bundle, svid))
    }
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        match self.check(end_entity, intermediates, now) {
            Ok(accepted) => {
                *self.accepted.lock().unwrap_or_else(|e| e.into_inner()) = Some(accepted);
                Ok(ServerCertVerified::assertion())
            }
            Err((reason, detail, err)) => {
                debug!("refusing the bootstrap node's certificate: {detail}");
                *self.refusal.lock().unwrap_or_else(|e| e.into_inner()) = Some((reason, detail));
                Err(err)
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        tls12_refused()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ECDSA_NISTP256_SHA256]
    }
}
