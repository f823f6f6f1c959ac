//! The node's own TLS identity: its SVID and key, swappable at renewal without restarting.

use std::sync::{Arc, RwLock};

use rustls::client::ResolvesClientCert;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{Error, SignatureScheme};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use x0_identity::{NodeId, NodeKeys};

use crate::endpoint::CA_ALPN;

/// The node's keys and current SVID. Cheap to share; [`LocalIdentity::set_svid`] takes effect
/// at the next handshake.
#[derive(Debug)]
pub struct LocalIdentity {
    keys: Arc<NodeKeys>,
    signing_key: Arc<dyn rustls::sign::SigningKey>,
    chains: RwLock<Chains>,
}

#[derive(Debug, Clone)]
struct Chains {
    /// `[svid]`: presented on links.
    link: Arc<CertifiedKey>,
    /// `[svid, ca]`: presented on the CA service, so that joining nodes, which know only the
    /// CA fingerprint, can validate the chain. Only on the CA node.
    ca_service: Option<Arc<CertifiedKey>>,
}

impl LocalIdentity {
    /// Builds the identity from the node's keys and SVID; `ca_cert` is set on the CA node.
    pub fn new(
        keys: Arc<NodeKeys>,
        svid_der: Vec<u8>,
        ca_cert: Option<Vec<u8>>,
    ) -> Result<Arc<Self>, Error> {
        let pkcs8 = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(keys.tls_pkcs8_der().to_vec()));
        let signing_key = rustls::crypto::aws_lc_rs::default_provider()
            .key_provider
            .load_private_key(pkcs8)?;
        let chains = Self::chains(&signing_key, svid_der, ca_cert);
        Ok(Arc::new(Self {
            keys,
            signing_key,
            chains: RwLock::new(chains),
        }))
    }

    fn chains(
        key: &Arc<dyn rustls::sign::SigningKey>,
        svid_der: Vec<u8>,
        ca_cert: Option<Vec<u8>>,
    ) -> Chains {
        let svid = CertificateDer::from(svid_der);
        Chains {
            link: Arc::new(CertifiedKey::new(vec![svid.clone()], key.clone())),
            ca_service: ca_cert.map(|ca| {
                Arc::new(CertifiedKey::new(
                    vec![svid, CertificateDer::from(ca)],
                    key.clone(),
                ))
            }),
        }
    }

    /// Installs a renewed SVID.
    pub fn set_svid(&self, svid_der: Vec<u8>, ca_cert: Option<Vec<u8>>) {
        let chains = Self::chains(&self.signing_key, svid_der, ca_cert);
        *self.chains.write().unwrap_or_else(|e| e.into_inner()) = chains;
    }

    /// Whether this node serves the CA service (it presents the CA certificate there: the CA
    /// node).
    pub fn serves_ca(&self) -> bool {
        self.current().ca_service.is_some()
    }

    /// The node's keys.
    pub fn keys(&self) -> &Arc<NodeKeys> {
        &self.keys
    }

    /// The node ID.
    pub fn node_id(&self) -> NodeId {
        self.keys.node_id()
    }

    /// The current SVID, DER.
    pub fn svid_der(&self) -> Vec<u8> {
        self.current()
            .link
            .cert
            .first()
            .map(|c| c.to_vec())
            .unwrap_or_default()
    }

    fn current(&self) -> Chains {
        self.chains
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl ResolvesServerCert for LocalIdentity {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let chains = self.current();
        let wants_ca = hello.alpn().is_some_and(|mut p| p.any(|p| p == CA_ALPN));
        match (wants_ca, chains.ca_service) {
            (true, Some(with_ca)) => Some(with_ca),
            _ => Some(chains.link),
        }
    }
}

impl ResolvesClientCert for LocalIdentity {
    fn resolve(&self, _hints: &[&[u8]], schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        schemes
            .contains(&SignatureScheme::ECDSA_NISTP256_SHA256)
            .then(|| self.current().link)
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Adverts carry the SVID in force when they are signed (renewals included).
impl x0_identity::advert::SvidSource for LocalIdentity {
    fn current_svid(&self) -> Vec<u8> {
        self.svid_der()
    }
}
