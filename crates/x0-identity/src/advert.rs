//! Link-state adverts signed with the node's ML-DSA-65 key and bound to mesh membership.
//!
//! **Signing** ([`AdvertSigner`]): the key material attached to every advert is an
//! [`OriginCredential`]: the origin's current X.509-SVID and its ML-DSA-65 public key; the
//! signature is pure ML-DSA-65 over [`ADVERT_CONTEXT`] ‖ body (the prefix keeps advert
//! signatures apart from everything else the same key signs).
//!
//! **Verification** ([`OriginVerifier`]): an advert counts only if
//!
//! 1. its origin is not revoked (the newest verified revocation list, [`RevocationView`]);
//! 2. the SVID chains to the mesh CA ([`TrustBundle`]) and was valid at some time within the
//!    last [`ADMISSION_GRACE`] (an advert lives that long: an origin re-signs it, with its current
//!    SVID, at least every 20 h, so a live member's advert never carries an SVID that expired
//!    longer ago — while SVIDs last one hour and are renewed without a new advert);
//! 3. the SVID's SPIFFE ID names the origin, and the origin's node ID is the hash of the SVID's
//!    P-256 key and the attached ML-DSA-65 key (so the ML-DSA key is the member's own);
//! 4. the ML-DSA-65 signature verifies.
//!
//! A credential that passed 2–4 is cached per origin (its SHA-256 and the SVID's `notAfter`):
//! the next advert with the same credential skips the chain check and costs one ML-DSA
//! verification. The cache is bounded ([`DEFAULT_MAX_CACHED_ORIGINS`]); an evicted origin only
//! costs a chain check again. Nothing here reads the clock: [`MlDsaAdvertAuth`] is given one.
//!
//! [`MlDsaAdvertAuth`] is the routing core's [`AdvertAuth`] for the daemon: a signer and a
//! verifier together.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rustls_pki_types::{CertificateDer, UnixTime};
use thiserror::Error;
use x0_routing::{AdvertAuth, Verdict};
use x0_wire::{DecodeError, NodeId, OriginCredential};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::keys::{NodeKeys, node_id_of, sha256, verify_mldsa65};
use crate::svid::{Role, SvidError, TrustBundle};

/// Prefix of every advert signature's message.
pub const ADVERT_CONTEXT: &[u8] = b"x0t/advert/v1\0";
/// How long after its SVID's `notAfter` an origin's credential is still accepted: the longest
/// an advert lives (`x0_routing::lsdb::MAX_LIFETIME`, 24 h).
pub const ADMISSION_GRACE: Duration = x0_routing::lsdb::MAX_LIFETIME;
/// Default bound of the verified-credential cache (the routing core's default `max_origins`).
pub const DEFAULT_MAX_CACHED_ORIGINS: usize = 16_384;

/// The node's current SVID (it is renewed while the daemon runs).
pub trait SvidSource: Send + Sync {
    /// The current SVID, DER.
    fn current_svid(&self) -> Vec<u8>;
}

/// The newest verified revocation list, as the daemon keeps it.
pub trait RevocationView: Send + Sync {
    /// Whether `node` is revoked.
    fn is_revoked(&self, node: &NodeId) -> bool;
    /// Changes whenever the revoked set changes (the list's serial).
    fn revocation_serial(&self) -> u64;
}

/// A wall clock, given to [`MlDsaAdvertAuth`] (SVID validity is wall-clock time).
pub type UnixClock = Arc<dyn Fn() -> UnixTime + Send + Sync>;

/// A fixed SVID (tests, tools).
impl SvidSource for Vec<u8> {
    fn current_svid(&self) -> Vec<u8> {
        self.clone()
    }
}

/// No revocations (tests, tools).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoRevocations;

impl RevocationView for NoRevocations {
    fn is_revoked(&self, _node: &NodeId) -> bool {
        false
    }
    fn revocation_serial(&self) -> u64 {
        0
    }
}

/// Why an advert's origin or signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum OriginError {
    /// No credential attached.
    #[error("no origin credential attached")]
    Missing,
    /// The credential does not parse.
    #[error("malformed origin credential: {0}")]
    Malformed(DecodeError),
    /// The SVID does not chain to the mesh CA or breaks the X509-SVID rules.
    #[error("origin SVID refused: {0}")]
    NotAdmitted(SvidError),
    /// The SVID names another node.
    #[error("the SVID names node {found}, not the advert's origin")]
    WrongNode {
        /// The node the SVID names.
        found: NodeId,
    },
    /// The SVID's P-256 key and the ML-DSA key do not hash to the origin's node ID.
    #[error("the credential's keys do not hash to the origin's node ID")]
    KeyMismatch,
    /// The origin is revoked.
    #[error("origin revoked")]
    Revoked,
    /// The SVID expired longer ago than an advert lives.
    #[error("origin SVID expired more than {} h ago", ADMISSION_GRACE.as_secs() / 3600)]
    Expired,
    /// The ML-DSA-65 signature does not verify.
    #[error("advert signature does not verify")]
    BadSignature,
}

impl OriginError {
    /// The routing core's verdict for this refusal: forgeries (`BadSignature`, `NotAdmitted`)
    /// penalise the neighbour that sent them; a revocation or expiry the neighbour may not know
    /// of yet does not.
    pub fn verdict(&self) -> Verdict {
        match self {
            Self::Missing => Verdict::UnknownOrigin,
            Self::Malformed(_) | Self::KeyMismatch | Self::BadSignature => Verdict::BadSignature,
            Self::NotAdmitted(SvidError::Expired) | Self::Revoked | Self::Expired => {
                Verdict::Revoked
            }
            Self::NotAdmitted(_) | Self::WrongNode { .. } => Verdict::NotAdmitted,
        }
    }
}

/// Counters of an [`OriginVerifier`], shared with whoever exports them.
#[derive(Debug, Default)]
pub struct OriginVerifierStats {
    /// Credentials checked against the mesh CA (cache misses).
    pub chain_verifications: AtomicU64,
    /// Adverts whose credential was found in the cache.
    pub cache_hits: AtomicU64,
    /// Cached credentials evicted because the cache was full.
    pub cache_evictions: AtomicU64,
    /// ML-DSA-65 signatures verified.
    pub signature_verifications: AtomicU64,
    /// Refusals: revoked origins.
    pub refused_revoked: AtomicU64,
    /// Refusals: SVIDs expired longer ago than [`ADMISSION_GRACE`].
    pub refused_expired: AtomicU64,
    /// Refusals: origins the mesh CA never admitted (no chain to the CA, wrong node).
    pub refused_not_admitted: AtomicU64,
    /// Refusals: malformed credentials, keys that do not hash to the origin, bad signatures.
    pub refused_bad_signature: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// A credential that passed the chain and binding checks.
#[derive(Debug, Clone, Copy)]
struct Admitted {
    credential_hash: [u8; 32],
    not_after_unix: u64,
}

/// Checks that adverts come from members the mesh CA admitted and are signed by them.
pub struct OriginVerifier {
    bundle: TrustBundle,
    revocations: Arc<dyn RevocationView>,
    cache: BTreeMap<NodeId, Admitted>,
    max_cached: usize,
    stats: Arc<OriginVerifierStats>,
}

impl std::fmt::Debug for OriginVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OriginVerifier")
            .field("trust_domain", self.bundle.trust_domain())
            .field("cached", &self.cache.len())
            .finish_non_exhaustive()
    }
}

impl OriginVerifier {
    /// A verifier for the mesh of `bundle`, with the daemon's revocation state.
    pub fn new(bundle: TrustBundle, revocations: Arc<dyn RevocationView>) -> Self {
        Self {
            bundle,
            revocations,
            cache: BTreeMap::new(),
            max_cached: DEFAULT_MAX_CACHED_ORIGINS,
            stats: Arc::default(),
        }
    }

    /// Bounds the verified-credential cache to `max` origins (at least 1).
    pub fn with_max_cached(mut self, max: usize) -> Self {
        self.max_cached = max.max(1);
        self
    }

    /// The counters (keep a clone to export them).
    pub fn stats(&self) -> Arc<OriginVerifierStats> {
        self.stats.clone()
    }

    /// Origins whose credential is cached.
    pub fn cached(&self) -> usize {
        self.cache.len()
    }

    /// Checks an advert `body` by `origin`, with its attached `credential` and `signature`,
    /// at wall-clock time `now`.
    pub fn verify(
        &mut self,
        now: UnixTime,
        origin: &NodeId,
        body: &[u8],
        credential: &[u8],
        signature: &[u8],
    ) -> Result<(), OriginError> {
        let result = self.check(now, origin, body, credential, signature);
        if let Err(e) = &result {
            let s = &self.stats;
            bump(match (e, e.verdict()) {
                (OriginError::Revoked, _) => &s.refused_revoked,
                (_, Verdict::Revoked) => &s.refused_expired,
                (_, Verdict::NotAdmitted) => &s.refused_not_admitted,
                _ => &s.refused_bad_signature,
            });
        }
        result
    }

    fn check(
        &mut self,
        now: UnixTime,
        origin: &NodeId,
        body: &[u8],
        credential: &[u8],
        signature: &[u8],
    ) -> Result<(), OriginError> {
        if credential.is_empty() {
            return Err(OriginError::Missing);
        }
        let parsed = OriginCredential::decode(credential).map_err(OriginError::Malformed)?;
        if self.revocations.is_revoked(origin) {
            return Err(OriginError::Revoked);
        }
        let credential_hash = sha256(credential);
        let not_after_unix = match self.cache.get(origin) {
            Some(a) if a.credential_hash == credential_hash => {
                bump(&self.stats.cache_hits);
                if !within_grace(now, a.not_after_unix) {
                    return Err(OriginError::Expired);
                }
                a.not_after_unix
            }
            _ => self.admit(now, origin, &parsed)?,
        };
        bump(&self.stats.signature_verifications);
        verify_mldsa65(parsed.mldsa_public_key, &signed_message(body), signature)
            .map_err(|_| OriginError::BadSignature)?;
        self.remember(
            *origin,
            Admitted {
                credential_hash,
                not_after_unix,
            },
            now,
        );
        Ok(())
    }

    /// Checks a credential not in the cache: SVID chain and rules, node, key binding. Returns
    /// the SVID's `notAfter`.
    fn admit(
        &self,
        now: UnixTime,
        origin: &NodeId,
        credential: &OriginCredential<'_>,
    ) -> Result<u64, OriginError> {
        bump(&self.stats.chain_verifications);
        let (_, cert) = X509Certificate::from_der(credential.svid)
            .map_err(|e| OriginError::NotAdmitted(SvidError::Malformed(e.to_string())))?;
        let not_after_unix = u64::try_from(cert.validity().not_after.timestamp()).unwrap_or(0);
        if !within_grace(now, not_after_unix) {
            return Err(OriginError::Expired);
        }
        // Checked as of `now`, or as of its last valid second if it expired within the grace.
        let at = UnixTime::since_unix_epoch(Duration::from_secs(now.as_secs().min(not_after_unix)));
        let svid = self
            .bundle
            .verify(
                &CertificateDer::from(credential.svid),
                &[],
                at,
                Role::Client,
            )
            .map_err(OriginError::NotAdmitted)?;
        if svid.node_id != *origin {
            return Err(OriginError::WrongNode {
                found: svid.node_id,
            });
        }
        if node_id_of(&svid.tls_point, credential.mldsa_public_key) != *origin {
            return Err(OriginError::KeyMismatch);
        }
        Ok(not_after_unix)
    }

    fn remember(&mut self, origin: NodeId, admitted: Admitted, now: UnixTime) {
        if !self.cache.contains_key(&origin) && self.cache.len() >= self.max_cached {
            self.cache
                .retain(|_, a| within_grace(now, a.not_after_unix));
            if self.cache.len() >= self.max_cached {
                self.cache.pop_first();
                bump(&self.stats.cache_evictions);
            }
        }
        self.cache.insert(origin, admitted);
    }

    /// Whether `origin` is still admitted (not revoked); a revoked origin leaves the cache.
    pub fn admits(&mut self, origin: &NodeId) -> bool {
        let admitted = !self.revocations.is_revoked(origin);
        if !admitted {
            self.cache.remove(origin);
        }
        admitted
    }

    /// Changes whenever the revoked set changes.
    pub fn generation(&self) -> u64 {
        self.revocations.revocation_serial()
    }
}

/// What an advert signature signs: [`ADVERT_CONTEXT`] ‖ body.
pub fn signed_message(body: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(ADVERT_CONTEXT.len() + body.len());
    message.extend_from_slice(ADVERT_CONTEXT);
    message.extend_from_slice(body);
    message
}

fn within_grace(now: UnixTime, not_after_unix: u64) -> bool {
    now.as_secs() <= not_after_unix.saturating_add(ADMISSION_GRACE.as_secs())
}

/// Signs the node's adverts: credential (current SVID + ML-DSA-65 public key) and signature.
pub struct AdvertSigner {
    keys: Arc<NodeKeys>,
    svid: Arc<dyn SvidSource>,
}

impl std::fmt::Debug for AdvertSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdvertSigner")
            .field("node", &self.keys.node_id())
            .finish_non_exhaustive()
    }
}

impl AdvertSigner {
    /// A signer for the node of `keys`, whose current SVID `svid` gives.
    pub fn new(keys: Arc<NodeKeys>, svid: Arc<dyn SvidSource>) -> Self {
        Self { keys, svid }
    }

    /// The credential to attach and the signature over `body`.
    pub fn sign(&self, body: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let svid = self.svid.current_svid();
        let credential = OriginCredential {
            svid: &svid,
            mldsa_public_key: self.keys.mldsa_public_key(),
        }
        .encode();
        // Signing only fails if the RNG does: an empty signature then fails verification.
        let signature = self
            .keys
            .sign_mldsa(&signed_message(body))
            .unwrap_or_default();
        (credential, signature)
    }
}

/// The routing core's [`AdvertAuth`] in the daemon: ML-DSA-65 signatures, origins bound to
/// members admitted by the mesh CA and not revoked.
pub struct MlDsaAdvertAuth {
    signer: AdvertSigner,
    verifier: OriginVerifier,
    clock: UnixClock,
}

impl std::fmt::Debug for MlDsaAdvertAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MlDsaAdvertAuth")
            .field("signer", &self.signer)
            .field("verifier", &self.verifier)
            .finish_non_exhaustive()
    }
}

impl MlDsaAdvertAuth {
    /// Signs with `signer`, verifies with `verifier`, reads wall-clock time from `clock`.
    pub fn new(signer: AdvertSigner, verifier: OriginVerifier, clock: UnixClock) -> Self {
        Self {
            signer,
            verifier,
            clock,
        }
    }

    /// The verifier's counters.
    pub fn stats(&self) -> Arc<OriginVerifierStats> {
        self.verifier.stats()
    }
}

impl AdvertAuth for MlDsaAdvertAuth {
    fn sign(&mut self, body: &[u8]) -> (Vec<u8>, Vec<u8>) {
        self.signer.sign(body)
    }

    fn verify(&mut self, origin: &NodeId, body: &[u8], key: &[u8], signature: &[u8]) -> Verdict {
        let now = (self.clock)();
        match self.verifier.verify(now, origin, body, key, signature) {
            Ok(()) => Verdict::Valid,
            Err(e) => e.verdict(),
        }
    }

    fn admission_generation(&self) -> u64 {
        self.verifier.generation()
    }

    fn admits(&mut self, origin: &NodeId) -> bool {
        self.verifier.admits(origin)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::ca::MeshCa;
    use crate::spiffe::TrustDomain;

    const NOW: u64 = 1_800_000_000;
    const HOUR: u64 = 3600;

    fn at(secs: u64) -> UnixTime {
        UnixTime::since_unix_epoch(Duration::from_secs(secs))
    }

    /// Revocations the test changes.
    #[derive(Default)]
    struct Revoked(Mutex<(Vec<NodeId>, u64)>);

    impl RevocationView for Revoked {
        fn is_revoked(&self, node: &NodeId) -> bool {
            self.0.lock().unwrap().0.contains(node)
        }
        fn revocation_serial(&self) -> u64 {
            self.0.lock().unwrap().1
        }
    }

    struct Mesh {
        ca: MeshCa,
        bundle: TrustBundle,
        revoked: Arc<Revoked>,
    }

    struct Member {
        keys: Arc<NodeKeys>,
        signer: AdvertSigner,
    }

    impl Mesh {
        fn new() -> Self {
            let td = TrustDomain::new("mesh.test").unwrap();
            let ca = MeshCa::create(td.clone(), at(NOW)).unwrap();
            let bundle = TrustBundle::new(td, vec![ca.cert_der().clone()]).unwrap();
            Self {
                ca,
                bundle,
                revoked: Arc::default(),
            }
        }

        fn svid(&self, keys: &NodeKeys, ttl: u64) -> Vec<u8> {
            self.ca
                .issue_svid(
                    keys.tls_public_point(),
                    keys.node_id(),
                    at(NOW),
                    Duration::from_secs(ttl),
                )
                .unwrap()
                .to_vec()
        }

        /// A node the CA admitted, with a one-hour SVID.
        fn member(&self) -> Member {
            let keys = Arc::new(NodeKeys::generate().unwrap());
            let svid = self.svid(&keys, HOUR);
            Member {
                signer: AdvertSigner::new(keys.clone(), Arc::new(svid)),
                keys,
            }
        }

        fn verifier(&self) -> OriginVerifier {
            OriginVerifier::new(self.bundle.clone(), self.revoked.clone())
        }
    }

    fn id_of(m: &Member) -> NodeId {
        m.keys.node_id()
    }

    #[test]
    fn an_admitted_members_advert_verifies_and_only_for_its_body() {
        let mesh = Mesh::new();
        let a = mesh.member();
        let mut v = mesh.verifier();
        let (cred, sig) = a.signer.sign(b"advert body");
        assert_eq!(
            v.verify(at(NOW), &id_of(&a), b"advert body", &cred, &sig),
            Ok(())
        );
        assert_eq!(
            v.verify(at(NOW), &id_of(&a), b"advert bodz", &cred, &sig),
            Err(OriginError::BadSignature)
        );
        // A plain ML-DSA signature of the body is not an advert signature.
        let plain = a.keys.sign_mldsa(b"advert body").unwrap();
        assert_eq!(
            v.verify(at(NOW), &id_of(&a), b"advert body", &cred, &plain),
            Err(OriginError::BadSignature)
        );
        assert_eq!(
            v.verify(at(NOW), &id_of(&a), b"advert body", &[], &sig),
            Err(OriginError::Missing)
        );
        let e = v
            .verify(at(NOW), &id_of(&a), b"advert body", &cred[..10], &sig)
            .unwrap_err();
        assert!(matches!(e, OriginError::Malformed(_)), "{e}");
        assert_eq!(e.verdict(), Verdict::BadSignature);
    }

    #[test]
    fn a_minted_origin_is_not_admitted_whatever_it_attaches() {
        let mesh = Mesh::new();
        let a = mesh.member();
        let mut v = mesh.verifier();
        // A key pair of one's own, which hashes to a node ID of its own — what the verifier
        // before this one accepted (its key material was the P-256 point and the ML-DSA key).
        let minted = NodeKeys::generate().unwrap();
        let m = minted.node_id();
        let body = b"advert body";
        let sig = minted.sign_mldsa(&signed_message(body)).unwrap();
        let mut old_format = minted.tls_public_point().to_vec();
        old_format.extend_from_slice(minted.mldsa_public_key());
        let refused = v.verify(at(NOW), &m, body, &old_format, &sig).unwrap_err();
        assert_eq!(refused.verdict(), Verdict::BadSignature, "{refused}");
        // With an SVID from a CA of its own.
        let rogue = Mesh::new();
        let rogue_svid = rogue.svid(&minted, HOUR);
        let cred = OriginCredential {
            svid: &rogue_svid,
            mldsa_public_key: minted.mldsa_public_key(),
        }
        .encode();
        assert_eq!(
            v.verify(at(NOW), &m, body, &cred, &sig),
            Err(OriginError::NotAdmitted(SvidError::UntrustedIssuer))
        );
        // With a member's genuine SVID: it names the member, not the minted origin.
        let a_svid = mesh.svid(&a.keys, HOUR);
        let borrowed = OriginCredential {
            svid: &a_svid,
            mldsa_public_key: minted.mldsa_public_key(),
        }
        .encode();
        assert_eq!(
            v.verify(at(NOW), &m, body, &borrowed, &sig),
            Err(OriginError::WrongNode { found: id_of(&a) })
        );
        // Or claiming to be the member, with its own ML-DSA key.
        assert_eq!(
            v.verify(at(NOW), &id_of(&a), body, &borrowed, &sig),
            Err(OriginError::KeyMismatch)
        );
        let s = v.stats();
        assert_eq!(s.refused_not_admitted.load(Ordering::Relaxed), 2);
        assert_eq!(s.refused_bad_signature.load(Ordering::Relaxed), 2);
        assert_eq!(v.cached(), 0);
    }

    #[test]
    fn a_verified_credential_is_cached_and_a_renewed_one_checked_again() {
        let mesh = Mesh::new();
        let a = mesh.member();
        let mut v = mesh.verifier();
        for body in [b"one".as_slice(), b"two"] {
            let (cred, sig) = a.signer.sign(body);
            assert_eq!(v.verify(at(NOW), &id_of(&a), body, &cred, &sig), Ok(()));
        }
        let s = v.stats();
        assert_eq!(s.chain_verifications.load(Ordering::Relaxed), 1);
        assert_eq!(s.cache_hits.load(Ordering::Relaxed), 1);
        // A renewed SVID: a new credential, checked against the CA once.
        let renewed = AdvertSigner::new(a.keys.clone(), Arc::new(mesh.svid(&a.keys, 2 * HOUR)));
        let (cred, sig) = renewed.sign(b"three");
        assert_eq!(v.verify(at(NOW), &id_of(&a), b"three", &cred, &sig), Ok(()));
        assert_eq!(s.chain_verifications.load(Ordering::Relaxed), 2);
        assert_eq!(v.cached(), 1);
    }

    #[test]
    fn an_expired_svid_is_accepted_for_an_advert_lifetime_and_not_after() {
        let mesh = Mesh::new();
        let a = mesh.member();
        let (cred, sig) = a.signer.sign(b"body");
        let expiry = NOW + HOUR;
        let grace_end = expiry + ADMISSION_GRACE.as_secs();
        // Fresh verifiers (chain checked), then one that has it cached.
        for t in [NOW, expiry + 1, grace_end] {
            let mut v = mesh.verifier();
            assert_eq!(
                v.verify(at(t), &id_of(&a), b"body", &cred, &sig),
                Ok(()),
                "at {t}"
            );
        }
        let mut v = mesh.verifier();
        assert_eq!(
            v.verify(at(grace_end + 1), &id_of(&a), b"body", &cred, &sig),
            Err(OriginError::Expired)
        );
        assert_eq!(v.verify(at(NOW), &id_of(&a), b"body", &cred, &sig), Ok(()));
        let refused = v
            .verify(at(grace_end + 1), &id_of(&a), b"body", &cred, &sig)
            .unwrap_err();
        assert_eq!(refused, OriginError::Expired);
        assert_eq!(
            refused.verdict(),
            Verdict::Revoked,
            "not the forwarder's fault"
        );
        // Not yet valid is refused too (the CA backdates by its clock skew allowance only).
        let mut v = mesh.verifier();
        assert!(
            v.verify(at(NOW - 2 * HOUR), &id_of(&a), b"body", &cred, &sig)
                .is_err()
        );
    }

    #[test]
    fn a_revoked_member_is_refused_and_no_longer_admitted() {
        let mesh = Mesh::new();
        let a = mesh.member();
        let mut v = mesh.verifier();
        let (cred, sig) = a.signer.sign(b"body");
        assert_eq!(v.verify(at(NOW), &id_of(&a), b"body", &cred, &sig), Ok(()));
        assert!(v.admits(&id_of(&a)));
        let generation = v.generation();
        *mesh.revoked.0.lock().unwrap() = (vec![id_of(&a)], 7);
        assert_ne!(v.generation(), generation);
        assert!(!v.admits(&id_of(&a)));
        assert_eq!(v.cached(), 0);
        let refused = v
            .verify(at(NOW), &id_of(&a), b"body", &cred, &sig)
            .unwrap_err();
        assert_eq!(refused, OriginError::Revoked);
        assert_eq!(refused.verdict(), Verdict::Revoked);
    }

    #[test]
    fn the_credential_cache_is_bounded() {
        let mesh = Mesh::new();
        let mut v = mesh.verifier().with_max_cached(2);
        for _ in 0..3 {
            let m = mesh.member();
            let (cred, sig) = m.signer.sign(b"body");
            assert_eq!(v.verify(at(NOW), &id_of(&m), b"body", &cred, &sig), Ok(()));
        }
        assert_eq!(v.cached(), 2);
        assert_eq!(v.stats().cache_evictions.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_router_installs_members_adverts_and_refuses_minted_origins() {
        use x0_routing::{Instant, Router, RouterConfig};
        use x0_wire::routing::AdvertisedLink;

        let mesh = Mesh::new();
        let (a, b) = (mesh.member(), mesh.member());
        let auth = |m: &Member| {
            MlDsaAdvertAuth::new(
                AdvertSigner::new(m.keys.clone(), Arc::new(mesh.svid(&m.keys, HOUR))),
                mesh.verifier(),
                Arc::new(|| at(NOW)),
            )
        };
        let mut router = Router::new(
            RouterConfig::default(),
            id_of(&b),
            Box::new(auth(&b)),
            0,
            Instant::ZERO,
        );
        router.link_up(Instant::ZERO, 1, id_of(&a));
        let links = vec![AdvertisedLink {
            neighbor: id_of(&b),
            cost: 15,
            class: 0,
        }];
        let lifetime = Duration::from_secs(3600);
        let stored = Router::make_advert(id_of(&a), 5, lifetime, links.clone(), &mut auth(&a));
        router.handle_datagram(Instant::ZERO, 1, &stored.datagram);
        assert_eq!(router.lsdb().seq_of(&id_of(&a)), Some(5));
        // An insider's minted origin: its own key pair with a CA of its own.
        let rogue = Mesh::new();
        let minted = rogue.member();
        let mut minted_auth = MlDsaAdvertAuth::new(
            AdvertSigner::new(
                minted.keys.clone(),
                Arc::new(rogue.svid(&minted.keys, HOUR)),
            ),
            rogue.verifier(),
            Arc::new(|| at(NOW)),
        );
        let fake = Router::make_advert(id_of(&minted), 1, lifetime, links, &mut minted_auth);
        router.handle_datagram(Instant::ZERO, 1, &fake.datagram);
        assert_eq!(router.lsdb().seq_of(&id_of(&minted)), None);
        assert_eq!(router.stats().rejected_not_admitted, 1);
        assert_eq!(router.stats().neighbor_penalties, 1);
    }
}
