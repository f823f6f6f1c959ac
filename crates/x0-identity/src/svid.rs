//! Trust bundles and X.509-SVID verification.
//!
//! [`TrustBundle::verify`] is the single gate every peer certificate passes: the chain is checked
//! by webpki (signature, validity at `now`, CA constraints, EKU) against the mesh CA
//! certificates, then the SPIFFE X509-SVID rules are checked on the leaf: exactly one URI SAN,
//! of the form `spiffe://<our trust domain>/node/<node-id>`; not a CA; a critical KeyUsage with
//! `digitalSignature` and without `keyCertSign`/`cRLSign`; EKU serverAuth and clientAuth; an
//! ECDSA P-256 key.

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, SignatureVerificationAlgorithm, TrustAnchor, UnixTime};
use thiserror::Error;
use webpki::{EndEntityCert, KeyUsage};
use x0_wire::{NodeId, RevocationList, SignedRevocationList};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::keys::{BadSignature, verify_p256};
use crate::spiffe::{SpiffeId, TrustDomain};

/// DER header of a P-256 SubjectPublicKeyInfo with an uncompressed point (RFC 5480).
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

static ALGORITHMS: &[&dyn SignatureVerificationAlgorithm] = &[webpki::aws_lc_rs::ECDSA_P256_SHA256];

/// Why a certificate was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum SvidError {
    /// Not a parseable X.509 certificate.
    #[error("malformed certificate: {0}")]
    Malformed(String),
    /// Past its `notAfter`.
    #[error("certificate expired")]
    Expired,
    /// Before its `notBefore`.
    #[error("certificate not yet valid")]
    NotYetValid,
    /// Not signed by a CA of our trust bundle.
    #[error("certificate not issued by this mesh's CA")]
    UntrustedIssuer,
    /// Any other chain failure.
    #[error("certificate chain invalid: {0}")]
    Chain(String),
    /// Issued for another trust domain.
    #[error("SPIFFE ID is in trust domain {found:?}, expected {expected:?}")]
    WrongTrustDomain {
        /// Ours.
        expected: String,
        /// Theirs.
        found: String,
    },
    /// Violates the X509-SVID rules.
    #[error("not a node X509-SVID: {0}")]
    NotSvid(&'static str),
    /// A bundle certificate is unusable.
    #[error("bad trust bundle: {0}")]
    Bundle(String),
    /// A signed object (revocation list) does not verify against the bundle.
    #[error("signature by the mesh CA does not verify")]
    BadCaSignature,
}

/// What a verified SVID tells us about its holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedSvid {
    /// The holder's node ID (from its SPIFFE ID).
    pub node_id: NodeId,
    /// The holder's SPIFFE ID.
    pub spiffe_id: SpiffeId,
    /// Uncompressed P-256 point of the holder's TLS key.
    pub tls_point: Vec<u8>,
    /// `notAfter`, seconds since the Unix epoch.
    pub not_after_unix: u64,
    /// `notBefore`, seconds since the Unix epoch.
    pub not_before_unix: u64,
}

/// Which side of a TLS handshake a certificate authenticates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The listener.
    Server,
    /// The dialler.
    Client,
}

/// The CA certificates a node trusts, for one trust domain.
#[derive(Debug, Clone)]
pub struct TrustBundle {
    trust_domain: TrustDomain,
    certs: Vec<CertificateDer<'static>>,
    anchors: Vec<TrustAnchor<'static>>,
    ca_points: Vec<Vec<u8>>,
}

impl TrustBundle {
    /// Builds a bundle; every certificate must parse, be a CA and hold a P-256 key.
    pub fn new(
        trust_domain: TrustDomain,
        certs: Vec<CertificateDer<'static>>,
    ) -> Result<Self, SvidError> {
        if certs.is_empty() {
            return Err(SvidError::Bundle("no CA certificate".into()));
        }
        let mut anchors = Vec::with_capacity(certs.len());
        let mut ca_points = Vec::with_capacity(certs.len());
        for der in &certs {
            let anchor = webpki::anchor_from_trusted_cert(der)
                .map_err(|e| SvidError::Bundle(e.to_string()))?
                .to_owned();
            let (_, x) =
                X509Certificate::from_der(der).map_err(|e| SvidError::Bundle(e.to_string()))?;
            if !x.is_ca() {
                return Err(SvidError::Bundle("certificate is not a CA".into()));
            }
            ca_points.push(p256_point(&x).map_err(|e| SvidError::Bundle(e.to_string()))?);
            anchors.push(anchor);
        }
        Ok(Self {
            trust_domain,
            certs,
            anchors,
            ca_points,
        })
    }

    /// Parses a PEM bundle.
    pub fn from_pem(trust_domain: TrustDomain, pem: &str) -> Result<Self, SvidError> {
        let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| SvidError::Bundle(e.to_string()))?;
        Self::new(trust_domain, certs)
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The CA certificates.
    pub fn certs(&self) -> &[CertificateDer<'static>] {
        &self.certs
    }

    /// The bundle as PEM.
    pub fn to_pem(&self) -> String {
        self.certs.iter().map(|c| cert_pem(c)).collect()
    }

    /// Verifies `end_entity` (with optional intermediates) as a node SVID of this mesh at `now`.
    pub fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        role: Role,
    ) -> Result<VerifiedSvid, SvidError> {
        let ee =
            EndEntityCert::try_from(end_entity).map_err(|e| SvidError::Malformed(e.to_string()))?;
        let usage = match role {
            Role::Server => KeyUsage::server_auth(),
            Role::Client => KeyUsage::client_auth(),
        };
        ee.verify_for_usage(
            ALGORITHMS,
            &self.anchors,
            intermediates,
            now,
            usage,
            None,
            None,
        )
        .map_err(map_webpki)?;
        self.check_svid_rules(end_entity)
    }

    fn check_svid_rules(&self, der: &[u8]) -> Result<VerifiedSvid, SvidError> {
        let (rest, x) =
            X509Certificate::from_der(der).map_err(|e| SvidError::Malformed(e.to_string()))?;
        if !rest.is_empty() {
            return Err(SvidError::Malformed("trailing bytes".into()));
        }
        let malformed = |e: x509_parser::error::X509Error| SvidError::Malformed(e.to_string());

        let san = x
            .subject_alternative_name()
            .map_err(malformed)?
            .ok_or(SvidError::NotSvid("no subjectAltName"))?;
        let mut uris = san.value.general_names.iter().filter_map(|n| match n {
            GeneralName::URI(u) => Some(*u),
            _ => None,
        });
        let uri = uris.next().ok_or(SvidError::NotSvid("no URI SAN"))?;
        if uris.next().is_some() {
            return Err(SvidError::NotSvid("more than one URI SAN"));
        }
        let spiffe_id: SpiffeId = uri
            .parse()
            .map_err(|_| SvidError::NotSvid("URI SAN is not a SPIFFE ID"))?;
        if spiffe_id.trust_domain() != &self.trust_domain {
            return Err(SvidError::WrongTrustDomain {
                expected: self.trust_domain.to_string(),
                found: spiffe_id.trust_domain().to_string(),
            });
        }
        let node_id = spiffe_id
            .node()
            .map_err(|_| SvidError::NotSvid("SPIFFE ID does not name a node"))?;

        if x.basic_constraints()
            .map_err(malformed)?
            .is_some_and(|bc| bc.value.ca)
        {
            return Err(SvidError::NotSvid("leaf has cA=true"));
        }
        let ku = x
            .key_usage()
            .map_err(malformed)?
            .ok_or(SvidError::NotSvid("no KeyUsage"))?;
        if !ku.critical {
            return Err(SvidError::NotSvid("KeyUsage not critical"));
        }
        if !ku.value.digital_signature() {
            return Err(SvidError::NotSvid("KeyUsage lacks digitalSignature"));
        }
        if ku.value.key_cert_sign() || ku.value.crl_sign() {
            return Err(SvidError::NotSvid(
                "leaf KeyUsage has keyCertSign or cRLSign",
            ));
        }
        let eku = x
            .extended_key_usage()
            .map_err(malformed)?
            .ok_or(SvidError::NotSvid("no ExtendedKeyUsage"))?;
        if !(eku.value.server_auth && eku.value.client_auth) {
            return Err(SvidError::NotSvid("EKU lacks serverAuth or clientAuth"));
        }
        let tls_point = p256_point(&x)?;
        let validity = x.validity();
        Ok(VerifiedSvid {
            node_id,
            spiffe_id,
            tls_point,
            not_after_unix: u64::try_from(validity.not_after.timestamp()).unwrap_or(0),
            not_before_unix: u64::try_from(validity.not_before.timestamp()).unwrap_or(0),
        })
    }

    /// Verifies a revocation list's CA signature and trust domain, and returns its contents.
    pub fn verify_revocations(
        &self,
        signed: &SignedRevocationList,
    ) -> Result<RevocationList, SvidError> {
        let verified = self
            .ca_points
            .iter()
            .any(|p| verify_p256(p, &signed.body, &signed.signature).is_ok());
        if !verified {
            return Err(SvidError::BadCaSignature);
        }
        let list = RevocationList::decode(&signed.body)
            .map_err(|e| SvidError::Malformed(e.to_string()))?;
        if list.trust_domain != self.trust_domain.as_str() {
            return Err(SvidError::WrongTrustDomain {
                expected: self.trust_domain.to_string(),
                found: list.trust_domain,
            });
        }
        Ok(list)
    }
}

/// The uncompressed P-256 point of a certificate's key.
pub fn p256_point(x: &X509Certificate<'_>) -> Result<Vec<u8>, SvidError> {
    let raw = x.public_key().raw;
    if raw.len() != P256_SPKI_PREFIX.len() + 65 || raw[..P256_SPKI_PREFIX.len()] != P256_SPKI_PREFIX
    {
        return Err(SvidError::NotSvid("key is not ECDSA P-256"));
    }
    Ok(raw[P256_SPKI_PREFIX.len()..].to_vec())
}

/// The uncompressed P-256 point of a DER certificate's key.
pub fn cert_p256_point(der: &[u8]) -> Result<Vec<u8>, SvidError> {
    let (_, x) = X509Certificate::from_der(der).map_err(|e| SvidError::Malformed(e.to_string()))?;
    p256_point(&x)
}

/// The uncompressed P-256 point inside a DER SubjectPublicKeyInfo.
pub fn spki_p256_point(spki: &[u8]) -> Result<&[u8], BadSignature> {
    if spki.len() != P256_SPKI_PREFIX.len() + 65
        || spki[..P256_SPKI_PREFIX.len()] != P256_SPKI_PREFIX
    {
        return Err(BadSignature);
    }
    Ok(&spki[P256_SPKI_PREFIX.len()..])
}

/// PEM encoding of one certificate.
pub fn cert_pem(der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

fn map_webpki(e: webpki::Error) -> SvidError {
    match e {
        webpki::Error::CertExpired { .. } => SvidError::Expired,
        webpki::Error::CertNotValidYet { .. } => SvidError::NotYetValid,
        webpki::Error::UnknownIssuer | webpki::Error::InvalidSignatureForPublicKey => {
            SvidError::UntrustedIssuer
        }
        other => SvidError::Chain(format!("{other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rcgen::{
        CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
        PKCS_ECDSA_P256_SHA256, SanType,
    };
    use rustls_pki_types::PrivatePkcs8KeyDer;

    use super::*;
    use crate::ca::MeshCa;
    use crate::keys::NodeKeys;

    const NOW: u64 = 1_800_000_000;

    fn now() -> UnixTime {
        UnixTime::since_unix_epoch(Duration::from_secs(NOW))
    }

    fn setup(td: &str) -> (MeshCa, TrustBundle, NodeKeys) {
        let td = TrustDomain::new(td).unwrap();
        let ca = MeshCa::create(td.clone(), now()).unwrap();
        let bundle = TrustBundle::new(td, vec![ca.cert_der().clone()]).unwrap();
        (ca, bundle, NodeKeys::generate().unwrap())
    }

    fn issue(ca: &MeshCa, keys: &NodeKeys, ttl: u64) -> CertificateDer<'static> {
        ca.issue_svid(
            keys.tls_public_point(),
            keys.node_id(),
            now(),
            Duration::from_secs(ttl),
        )
        .unwrap()
    }

    /// Signs arbitrary params with the CA key, to build certificates that break one SVID rule.
    fn forge(
        ca: &MeshCa,
        keys: &NodeKeys,
        edit: impl FnOnce(&mut CertificateParams),
    ) -> CertificateDer<'static> {
        let ca_key = KeyPair::from_pkcs8_der_and_sign_algo(
            &PrivatePkcs8KeyDer::from(ca.key_pkcs8_der().to_vec()),
            &PKCS_ECDSA_P256_SHA256,
        )
        .unwrap();
        let issuer = Issuer::from_ca_cert_der(ca.cert_der(), ca_key).unwrap();
        let node_key = KeyPair::from_pkcs8_der_and_sign_algo(
            &PrivatePkcs8KeyDer::from(keys.tls_pkcs8_der().to_vec()),
            &PKCS_ECDSA_P256_SHA256,
        )
        .unwrap();
        let mut p = CertificateParams::default();
        p.not_before = time::OffsetDateTime::from_unix_timestamp(NOW as i64 - 10).unwrap();
        p.not_after = time::OffsetDateTime::from_unix_timestamp(NOW as i64 + 3600).unwrap();
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        p.subject_alt_names = vec![SanType::URI(
            ca.trust_domain()
                .node_id(keys.node_id())
                .to_string()
                .try_into()
                .unwrap(),
        )];
        edit(&mut p);
        p.signed_by(&node_key, &issuer).unwrap().der().clone()
    }

    #[test]
    fn issued_svid_follows_the_spiffe_standard() {
        let (ca, bundle, keys) = setup("mesh.test");
        let der = issue(&ca, &keys, 3600);
        let v = bundle.verify(&der, &[], now(), Role::Server).unwrap();
        assert_eq!(v.node_id, keys.node_id());
        assert_eq!(v.tls_point, keys.tls_public_point());
        assert_eq!(
            v.spiffe_id.to_string(),
            format!("spiffe://mesh.test/node/{}", keys.node_id())
        );
        assert_eq!(v.not_after_unix, NOW + 3600);
        bundle.verify(&der, &[], now(), Role::Client).unwrap();

        let (_, x) = X509Certificate::from_der(&der).unwrap();
        let bc = x
            .basic_constraints()
            .unwrap()
            .expect("basicConstraints present");
        assert!(!bc.value.ca);
        let ku = x.key_usage().unwrap().unwrap();
        assert!(ku.critical && ku.value.digital_signature());
        assert!(!ku.value.key_cert_sign() && !ku.value.crl_sign());
        let san = x.subject_alternative_name().unwrap().unwrap();
        assert_eq!(san.value.general_names.len(), 1);
    }

    #[test]
    fn expired_and_not_yet_valid_are_refused() {
        let (ca, bundle, keys) = setup("mesh.test");
        let der = issue(&ca, &keys, 60);
        let later = UnixTime::since_unix_epoch(Duration::from_secs(NOW + 61));
        assert_eq!(
            bundle.verify(&der, &[], later, Role::Server),
            Err(SvidError::Expired)
        );
        let earlier = UnixTime::since_unix_epoch(Duration::from_secs(NOW - 3600));
        assert_eq!(
            bundle.verify(&der, &[], earlier, Role::Server),
            Err(SvidError::NotYetValid)
        );
    }

    #[test]
    fn other_mesh_and_other_domain_are_refused() {
        let (ca, bundle, keys) = setup("mesh.test");
        let (other_ca, _, _) = setup("mesh.test");
        let foreign = issue(&other_ca, &keys, 3600);
        assert_eq!(
            bundle.verify(&foreign, &[], now(), Role::Server),
            Err(SvidError::UntrustedIssuer)
        );

        let (evil_ca, _, _) = setup("evil.test");
        let evil_bundle_same_ca_other_td = TrustBundle::new(
            TrustDomain::new("mesh.test").unwrap(),
            vec![evil_ca.cert_der().clone()],
        )
        .unwrap();
        let evil = issue(&evil_ca, &keys, 3600);
        assert!(matches!(
            evil_bundle_same_ca_other_td.verify(&evil, &[], now(), Role::Server),
            Err(SvidError::WrongTrustDomain { .. })
        ));
        let _ = ca;
    }

    #[test]
    fn certificates_breaking_one_svid_rule_are_refused() {
        let (ca, bundle, keys) = setup("mesh.test");
        let ok = forge(&ca, &keys, |_| {});
        bundle.verify(&ok, &[], now(), Role::Server).unwrap();

        type Edit = Box<dyn FnOnce(&mut CertificateParams)>;
        let cases: Vec<(&str, Edit)> = vec![
            (
                "two URI SANs",
                Box::new(|p: &mut CertificateParams| {
                    p.subject_alt_names.push(SanType::URI(
                        "spiffe://mesh.test/node/x".try_into().unwrap(),
                    ))
                }),
            ),
            (
                "no URI SAN",
                Box::new(|p: &mut CertificateParams| {
                    p.subject_alt_names = vec![SanType::DnsName("node.example".try_into().unwrap())]
                }),
            ),
            (
                "not a node path",
                Box::new(|p: &mut CertificateParams| {
                    p.subject_alt_names = vec![SanType::URI(
                        "spiffe://mesh.test/workload/a".try_into().unwrap(),
                    )]
                }),
            ),
            (
                "no key usage",
                Box::new(|p: &mut CertificateParams| p.key_usages.clear()),
            ),
            (
                "keyCertSign",
                Box::new(|p: &mut CertificateParams| {
                    p.key_usages.push(KeyUsagePurpose::KeyCertSign)
                }),
            ),
            (
                "server auth only",
                Box::new(|p: &mut CertificateParams| {
                    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth]
                }),
            ),
        ];
        for (name, edit) in cases {
            let der = forge(&ca, &keys, edit);
            assert!(
                bundle.verify(&der, &[], now(), Role::Server).is_err(),
                "{name} accepted"
            );
        }
        assert!(
            bundle
                .verify(
                    &CertificateDer::from(vec![0x30, 0x03, 1, 2, 3]),
                    &[],
                    now(),
                    Role::Server
                )
                .is_err()
        );
    }

    #[test]
    fn revocation_lists_verify_only_with_the_ca_signature() {
        let (ca, bundle, _) = setup("mesh.test");
        let list = RevocationList {
            trust_domain: "mesh.test".into(),
            serial: 3,
            issued_at_unix: NOW,
            revoked: vec![NodeId::from_bytes([5; 16])],
        };
        let signed = ca.sign_revocations(&list).unwrap();
        assert_eq!(bundle.verify_revocations(&signed).unwrap(), list);
        let mut tampered = signed.clone();
        let last = tampered.body.len() - 1;
        tampered.body[last] ^= 1;
        assert_eq!(
            bundle.verify_revocations(&tampered),
            Err(SvidError::BadCaSignature)
        );
        let (other, _, _) = setup("mesh.test");
        assert_eq!(
            bundle.verify_revocations(&other.sign_revocations(&list).unwrap()),
            Err(SvidError::BadCaSignature)
        );
    }

    #[test]
    fn bundle_pem_round_trips() {
        let (_, bundle, _) = setup("mesh.test");
        let again = TrustBundle::from_pem(bundle.trust_domain().clone(), &bundle.to_pem()).unwrap();
        assert_eq!(again.certs(), bundle.certs());
    }
}
