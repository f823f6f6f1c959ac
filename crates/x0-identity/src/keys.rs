//! A node's two key pairs and the node ID derived from them.
//!
//! * **TLS key**: ECDSA P-256 (SPIRE-compatible SVIDs). Authenticates TLS handshakes.
//! * **ML-DSA-65 key** (FIPS 204): signs the link proof of possession, link-state adverts, votes
//!   and audit records, so that breaking ECDSA alone does not let anyone impersonate a node.
//!
//! The node ID is `SHA-256("x0t/node-id/v1" || len || P-256 point || len || ML-DSA public key)`
//! truncated to 128 bits. A peer recomputes it from the point in the SVID and the ML-DSA key the
//! node presents, so the two keys are bound to each other and to the SPIFFE ID.

use aws_lc_rs::digest::{Context, SHA256};
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_ASN1, ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair, ML_DSA_65,
    ML_DSA_65_SIGNING, PqdsaKeyPair, UnparsedPublicKey,
};
use thiserror::Error;
use x0_wire::NodeId;

/// Length of a raw ML-DSA-65 public key (FIPS 204).
pub const MLDSA65_PUBLIC_KEY_LEN: usize = 1952;
/// Length of an ML-DSA-65 signature (FIPS 204).
pub const MLDSA65_SIGNATURE_LEN: usize = 3309;
/// Length of an ML-DSA seed (FIPS 204 `ξ`).
pub const MLDSA_SEED_LEN: usize = 32;
/// Length of an uncompressed SEC1 P-256 point.
pub const P256_POINT_LEN: usize = 65;

/// Failures of key handling.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The system RNG or a key generation failed.
    #[error("key generation failed")]
    Generate,
    /// Stored key material does not parse.
    #[error("stored {0} key is invalid")]
    InvalidStored(&'static str),
    /// Signing failed.
    #[error("signing failed")]
    Sign,
}

/// A signature that does not verify, or a key that does not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("signature does not verify")]
pub struct BadSignature;

/// Both key pairs of a node.
pub struct NodeKeys {
    tls: EcdsaKeyPair,
    tls_pkcs8: Vec<u8>,
    mldsa: PqdsaKeyPair,
    mldsa_seed: [u8; MLDSA_SEED_LEN],
    node_id: NodeId,
}

impl std::fmt::Debug for NodeKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeKeys")
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

impl NodeKeys {
    /// Generates fresh keys from the system RNG.
    pub fn generate() -> Result<Self, KeyError> {
        let tls = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_ASN1_SIGNING)
            .map_err(|_| KeyError::Generate)?;
        let tls_pkcs8 = tls
            .to_pkcs8v1()
            .map_err(|_| KeyError::Generate)?
            .as_ref()
            .to_vec();
        let mut seed = [0u8; MLDSA_SEED_LEN];
        aws_lc_rs::rand::fill(&mut seed).map_err(|_| KeyError::Generate)?;
        Self::from_stored(&tls_pkcs8, &seed)
    }

    /// Rebuilds keys from their stored forms: PKCS#8 for the TLS key, the 32-byte seed for
    /// ML-DSA-65 (the FIPS 204 private key form).
    pub fn from_stored(tls_pkcs8: &[u8], mldsa_seed: &[u8]) -> Result<Self, KeyError> {
        let tls = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, tls_pkcs8)
            .map_err(|_| KeyError::InvalidStored("TLS"))?;
        let mldsa = PqdsaKeyPair::from_seed(&ML_DSA_65_SIGNING, mldsa_seed)
            .map_err(|_| KeyError::InvalidStored("ML-DSA-65"))?;
        let seed: [u8; MLDSA_SEED_LEN] = mldsa_seed
            .try_into()
            .map_err(|_| KeyError::InvalidStored("ML-DSA-65"))?;
        let node_id = node_id_of(tls.public_key().as_ref(), mldsa.public_key().as_ref());
        Ok(Self {
            tls,
            tls_pkcs8: tls_pkcs8.to_vec(),
            mldsa,
            mldsa_seed: seed,
            node_id,
        })
    }

    /// The node ID.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// PKCS#8 v1 DER of the TLS private key (for rustls and for storage).
    pub fn tls_pkcs8_der(&self) -> &[u8] {
        &self.tls_pkcs8
    }

    /// The ML-DSA-65 seed (for storage only).
    pub fn mldsa_seed(&self) -> &[u8; MLDSA_SEED_LEN] {
        &self.mldsa_seed
    }

    /// The TLS public key as an uncompressed SEC1 point.
    pub fn tls_public_point(&self) -> &[u8] {
        self.tls.public_key().as_ref()
    }

    /// The TLS public key as a DER SubjectPublicKeyInfo.
    pub fn tls_spki_der(&self) -> Result<Vec<u8>, KeyError> {
        Ok(self
            .tls
            .public_key()
            .as_der()
            .map_err(|_| KeyError::Generate)?
            .as_ref()
            .to_vec())
    }

    /// The raw FIPS 204 ML-DSA-65 public key.
    pub fn mldsa_public_key(&self) -> &[u8] {
        self.mldsa.public_key().as_ref()
    }

    /// Signs `msg` with ML-DSA-65 (pure ML-DSA, empty context string).
    pub fn sign_mldsa(&self, msg: &[u8]) -> Result<Vec<u8>, KeyError> {
        let mut sig = vec![0u8; MLDSA65_SIGNATURE_LEN];
        let n = self.mldsa.sign(msg, &mut sig).map_err(|_| KeyError::Sign)?;
        sig.truncate(n);
        Ok(sig)
    }

    /// Signs `msg` with the TLS key (ECDSA P-256, SHA-256, ASN.1 DER signature).
    pub fn sign_tls(&self, msg: &[u8]) -> Result<Vec<u8>, KeyError> {
        self.tls
            .sign(&SystemRandom::new(), msg)
            .map(|s| s.as_ref().to_vec())
            .map_err(|_| KeyError::Sign)
    }
}

/// Derives a node ID from the uncompressed P-256 point of its TLS key and its raw ML-DSA-65
/// public key.
pub fn node_id_of(tls_point: &[u8], mldsa_public_key: &[u8]) -> NodeId {
    let mut ctx = Context::new(&SHA256);
    ctx.update(b"x0t/node-id/v1");
    for part in [tls_point, mldsa_public_key] {
        ctx.update(&u32::try_from(part.len()).unwrap_or(u32::MAX).to_be_bytes());
        ctx.update(part);
    }
    let digest = ctx.finish();
    let mut id = [0u8; NodeId::LEN];
    id.copy_from_slice(&digest.as_ref()[..NodeId::LEN]);
    NodeId::from_bytes(id)
}

/// Verifies a pure ML-DSA-65 signature (empty context) over `msg`.
pub fn verify_mldsa65(public_key: &[u8], msg: &[u8], sig: &[u8]) -> Result<(), BadSignature> {
    if public_key.len() != MLDSA65_PUBLIC_KEY_LEN || sig.len() != MLDSA65_SIGNATURE_LEN {
        return Err(BadSignature);
    }
    UnparsedPublicKey::new(&ML_DSA_65, public_key)
        .verify(msg, sig)
        .map_err(|_| BadSignature)
}

/// Verifies an ECDSA P-256 SHA-256 ASN.1 signature by an uncompressed point.
pub fn verify_p256(point: &[u8], msg: &[u8], sig: &[u8]) -> Result<(), BadSignature> {
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, point)
        .verify(msg, sig)
        .map_err(|_| BadSignature)
}

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(aws_lc_rs::digest::digest(&SHA256, data).as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_form_round_trips_to_the_same_node_id() {
        let k = NodeKeys::generate().unwrap();
        let again = NodeKeys::from_stored(k.tls_pkcs8_der(), k.mldsa_seed()).unwrap();
        assert_eq!(k.node_id(), again.node_id());
        assert_eq!(k.mldsa_public_key(), again.mldsa_public_key());
        assert_eq!(k.mldsa_public_key().len(), MLDSA65_PUBLIC_KEY_LEN);
        assert_eq!(k.tls_public_point().len(), P256_POINT_LEN);
    }

    #[test]
    fn node_id_binds_both_keys() {
        let a = NodeKeys::generate().unwrap();
        let b = NodeKeys::generate().unwrap();
        assert_ne!(
            node_id_of(a.tls_public_point(), a.mldsa_public_key()),
            node_id_of(a.tls_public_point(), b.mldsa_public_key())
        );
        assert_ne!(
            node_id_of(a.tls_public_point(), a.mldsa_public_key()),
            node_id_of(b.tls_public_point(), a.mldsa_public_key())
        );
    }

    #[test]
    fn mldsa_signatures_verify_and_reject_tampering() {
        let k = NodeKeys::generate().unwrap();
        let sig = k.sign_mldsa(b"hello").unwrap();
        assert_eq!(sig.len(), MLDSA65_SIGNATURE_LEN);
        verify_mldsa65(k.mldsa_public_key(), b"hello", &sig).unwrap();
        assert!(verify_mldsa65(k.mldsa_public_key(), b"hellp", &sig).is_err());
        let mut bad = sig.clone();
        bad[100] ^= 1;
        assert!(verify_mldsa65(k.mldsa_public_key(), b"hello", &bad).is_err());
        assert!(verify_mldsa65(&[0; 10], b"hello", &sig).is_err());
    }

    /// FIPS 204 interoperability: a signature made through aws-lc-rs verifies with the
    /// independent RustCrypto implementation, and the other way round.
    #[test]
    fn mldsa_interoperates_with_an_independent_fips204_implementation() {
        use ml_dsa::{
            EncodedVerifyingKey, Keypair, MlDsa65, Seed, Signature, Signer, SigningKey, Verifier,
            VerifyingKey,
        };

        let k = NodeKeys::generate().unwrap();
        let msg = b"interop test message";
        let sig = k.sign_mldsa(msg).unwrap();
        let vk_enc = EncodedVerifyingKey::<MlDsa65>::try_from(k.mldsa_public_key()).unwrap();
        let vk = VerifyingKey::<MlDsa65>::decode(&vk_enc);
        let sig_rc = Signature::<MlDsa65>::try_from(sig.as_slice()).unwrap();
        vk.verify(msg, &sig_rc).unwrap();

        // Same seed gives the same public key in both implementations.
        let rc = SigningKey::<MlDsa65>::from_seed(&Seed::from(*k.mldsa_seed()));
        assert_eq!(rc.verifying_key().encode().as_slice(), k.mldsa_public_key());
        let rc_sig: Signature<MlDsa65> = rc.sign(msg);
        verify_mldsa65(k.mldsa_public_key(), msg, rc_sig.encode().as_slice()).unwrap();
    }

    #[test]
    fn p256_signatures_verify() {
        let k = NodeKeys::generate().unwrap();
        let sig = k.sign_tls(b"m").unwrap();
        verify_p256(k.tls_public_point(), b"m", &sig).unwrap();
        assert!(verify_p256(k.tls_public_point(), b"n", &sig).is_err());
    }
}
