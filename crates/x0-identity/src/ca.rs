//! The mesh certificate authority.
//!
//! One ECDSA P-256 root per mesh. Its key never leaves the state directory of the node that
//! created it (the "CA node"), which issues X.509-SVIDs to members, signs revocation lists and
//! serves joins and renewals. SVIDs follow the SPIFFE X509-SVID standard to the letter: exactly
//! one URI SAN `spiffe://<trust-domain>/node/<node-id>`, basic constraints `cA=false`, a critical
//! KeyUsage with only `digitalSignature`, EKU serverAuth and clientAuth.

use std::time::Duration;

use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PublicKeyData, SanType, SerialNumber,
    SignatureAlgorithm,
};
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer, UnixTime};
use thiserror::Error;
use time::OffsetDateTime;
use x0_wire::{NodeId, RevocationList, SignedRevocationList};

use crate::keys::{P256_POINT_LEN, sha256};
use crate::spiffe::TrustDomain;

/// How long a mesh CA certificate is valid.
pub const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Default SVID lifetime (design.md §4): one hour, renewed at half-life.
pub const DEFAULT_SVID_TTL: Duration = Duration::from_secs(3600);
/// Backdating of `notBefore`, to tolerate clock skew between nodes.
pub const CLOCK_SKEW_ALLOWANCE: Duration = Duration::from_secs(60);

/// Failures of the CA.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum CaError {
    /// Certificate generation failed.
    #[error("certificate generation failed: {0}")]
    Cert(#[from] rcgen::Error),
    /// Key material is unusable.
    #[error("CA key is invalid")]
    Key,
    /// The public key presented for an SVID is not an uncompressed P-256 point.
    #[error("node TLS key is not an uncompressed P-256 point")]
    BadNodeKey,
    /// A time outside what X.509 can express.
    #[error("time out of range")]
    Time,
}

/// The mesh CA: its trust domain, key and self-signed certificate.
pub struct MeshCa {
    trust_domain: TrustDomain,
    key_pkcs8: Vec<u8>,
    cert_der: CertificateDer<'static>,
}

impl std::fmt::Debug for MeshCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshCa")
            .field("trust_domain", &self.trust_domain)
            .field("fingerprint", &hex::encode(self.fingerprint()))
            .finish_non_exhaustive()
    }
}

/// A P-256 public key given as its uncompressed point, for rcgen.
struct P256Point<'a>(&'a [u8]);

impl PublicKeyData for P256Point<'_> {
    fn der_bytes(&self) -> &[u8] {
        self.0
    }
    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &PKCS_ECDSA_P256_SHA256
    }
}

fn offset(t: UnixTime, plus: Duration, minus: Duration) -> Result<OffsetDateTime, CaError> {
    let secs = t
        .as_secs()
        .saturating_add(plus.as_secs())
        .saturating_sub(minus.as_secs());
    OffsetDateTime::from_unix_timestamp(i64::try_from(secs).map_err(|_| CaError::Time)?)
        .map_err(|_| CaError::Time)
}

fn random_serial() -> Result<SerialNumber, CaError> {
    let mut s = [0u8; 16];
    aws_lc_rs::rand::fill(&mut s).map_err(|_| CaError::Key)?;
    s[0] &= 0x7f; // positive INTEGER
    s[0] |= 0x01; // and never shortened by DER
    Ok(SerialNumber::from_slice(&s))
}

impl MeshCa {
    /// Creates a new CA for `trust_domain`, valid from `now` for [`CA_LIFETIME`].
    pub fn create(trust_domain: TrustDomain, now: UnixTime) -> Result<Self, CaError> {
        let key =
            EcdsaKeyPair::generate(&ECDSA_P256_SHA256_ASN1_SIGNING).map_err(|_| CaError::Key)?;
        let key_pkcs8 = key
            .to_pkcs8v1()
            .map_err(|_| CaError::Key)?
            .as_ref()
            .to_vec();
        let signer = rcgen_key(&key_pkcs8)?;

        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "x0tta6bl4");
        dn.push(DnType::CommonName, format!("x0t mesh CA {trust_domain}"));
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.subject_alt_names = vec![SanType::URI(
            trust_domain.id().try_into().map_err(CaError::Cert)?,
        )];
        params.not_before = offset(now, Duration::ZERO, CLOCK_SKEW_ALLOWANCE)?;
        params.not_after = offset(now, CA_LIFETIME, Duration::ZERO)?;
        params.serial_number = Some(random_serial()?);
        let cert = params.self_signed(&signer)?;
        Ok(Self {
            trust_domain,
            key_pkcs8,
            cert_der: cert.der().clone(),
        })
    }

    /// Rebuilds a CA from its stored key and certificate.
    pub fn from_stored(
        trust_domain: TrustDomain,
        key_pkcs8: Vec<u8>,
        cert_der: Vec<u8>,
    ) -> Result<Self, CaError> {
        rcgen_key(&key_pkcs8)?;
        Ok(Self {
            trust_domain,
            key_pkcs8,
            cert_der: CertificateDer::from(cert_der),
        })
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The self-signed CA certificate (DER).
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// PKCS#8 of the CA key (for storage only).
    pub fn key_pkcs8_der(&self) -> &[u8] {
        &self.key_pkcs8
    }

    /// SHA-256 of the CA certificate: what invitations pin.
    pub fn fingerprint(&self) -> [u8; 32] {
        sha256(&self.cert_der)
    }

    /// Issues an X.509-SVID for `node`, whose TLS key is the uncompressed P-256 `point`.
    pub fn issue_svid(
        &self,
        point: &[u8],
        node: NodeId,
        now: UnixTime,
        ttl: Duration,
    ) -> Result<CertificateDer<'static>, CaError> {
        if point.len() != P256_POINT_LEN || point[0] != 0x04 {
            return Err(CaError::BadNodeKey);
        }
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "x0tta6bl4");
        dn.push(DnType::CommonName, node.to_string());
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.subject_alt_names = vec![SanType::URI(
            self.trust_domain.node_id(node).to_string().try_into()?,
        )];
        params.not_before = offset(now, Duration::ZERO, CLOCK_SKEW_ALLOWANCE)?;
        params.not_after = offset(now, ttl, Duration::ZERO)?;
        params.serial_number = Some(random_serial()?);
        params.use_authority_key_identifier_extension = true;
        let issuer = Issuer::from_ca_cert_der(&self.cert_der, rcgen_key(&self.key_pkcs8)?)?;
        Ok(params.signed_by(&P256Point(point), &issuer)?.der().clone())
    }

    /// Signs a revocation list with the CA key.
    pub fn sign_revocations(&self, list: &RevocationList) -> Result<SignedRevocationList, CaError> {
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &self.key_pkcs8)
            .map_err(|_| CaError::Key)?;
        let body = list.encode();
        let signature = key
            .sign(&aws_lc_rs::rand::SystemRandom::new(), &body)
            .map_err(|_| CaError::Key)?
            .as_ref()
            .to_vec();
        Ok(SignedRevocationList { body, signature })
    }
}

fn rcgen_key(pkcs8: &[u8]) -> Result<KeyPair, CaError> {
    KeyPair::from_pkcs8_der_and_sign_algo(
        &PrivatePkcs8KeyDer::from(pkcs8.to_vec()),
        &PKCS_ECDSA_P256_SHA256,
    )
    .map_err(|_| CaError::Key)
}
