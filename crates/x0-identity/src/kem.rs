//! ML-KEM-768 key encapsulation (FIPS 203), through aws-lc-rs.
//!
//! Links get ML-KEM inside TLS (the X25519MLKEM768 group); this is the bare KEM, for benchmarks
//! and for any protocol that needs a post-quantum shared secret outside a TLS handshake.
//!
//! The holder of a [`MlKem768KeyPair`] publishes [`MlKem768KeyPair::public_key`]; a peer calls
//! [`encapsulate`] on those bytes and sends back the ciphertext; the holder recovers the same
//! shared secret with [`MlKem768KeyPair::decapsulate`].

use aws_lc_rs::kem::{Ciphertext, DecapsulationKey, EncapsulationKey, ML_KEM_768};
use thiserror::Error;

/// Length of an ML-KEM-768 encapsulation (public) key.
pub const MLKEM768_PUBLIC_KEY_LEN: usize = 1184;
/// Length of an ML-KEM-768 ciphertext.
pub const MLKEM768_CIPHERTEXT_LEN: usize = 1088;
/// Length of an ML-KEM shared secret.
pub const MLKEM_SHARED_SECRET_LEN: usize = 32;

/// Failures of the KEM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum KemError {
    /// Key generation failed.
    #[error("ML-KEM-768 key generation failed")]
    Generate,
    /// The peer's public key is not an ML-KEM-768 encapsulation key.
    #[error("not an ML-KEM-768 public key")]
    BadPublicKey,
    /// Encapsulation failed.
    #[error("ML-KEM-768 encapsulation failed")]
    Encapsulate,
    /// The ciphertext has the wrong length. (A right-length but wrong ciphertext is not an
    /// error: ML-KEM then yields an unrelated secret, by design.)
    #[error("not an ML-KEM-768 ciphertext")]
    BadCiphertext,
}

/// A shared secret; zeroed when dropped.
pub struct SharedSecret(aws_lc_rs::kem::SharedSecret);

impl SharedSecret {
    /// The secret bytes ([`MLKEM_SHARED_SECRET_LEN`] of them).
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_ref()
    }
}

impl std::fmt::Debug for SharedSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedSecret(<redacted>)")
    }
}

/// An ML-KEM-768 decapsulation key with its public encapsulation key.
pub struct MlKem768KeyPair {
    decapsulation: DecapsulationKey,
    public_key: Vec<u8>,
}

impl std::fmt::Debug for MlKem768KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MlKem768KeyPair").finish_non_exhaustive()
    }
}

impl MlKem768KeyPair {
    /// Generates a key pair from the system RNG.
    pub fn generate() -> Result<Self, KemError> {
        let decapsulation =
            DecapsulationKey::generate(&ML_KEM_768).map_err(|_| KemError::Generate)?;
        let public_key = decapsulation
            .encapsulation_key()
            .and_then(|k| k.key_bytes())
            .map_err(|_| KemError::Generate)?
            .as_ref()
            .to_vec();
        Ok(Self {
            decapsulation,
            public_key,
        })
    }

    /// The encapsulation key to hand to peers ([`MLKEM768_PUBLIC_KEY_LEN`] bytes).
    pub fn public_key(&self) -> &[u8] {
        &self.public_key
    }

    /// Recovers the shared secret a peer encapsulated to [`Self::public_key`].
    pub fn decapsulate(&self, ciphertext: &[u8]) -> Result<SharedSecret, KemError> {
        if ciphertext.len() != MLKEM768_CIPHERTEXT_LEN {
            return Err(KemError::BadCiphertext);
        }
        self.decapsulation
            .decapsulate(Ciphertext::from(ciphertext))
            .map(SharedSecret)
            .map_err(|_| KemError::BadCiphertext)
    }
}

/// Encapsulates a fresh shared secret to the ML-KEM-768 `public_key`; returns the ciphertext to
/// send and the secret to keep.
pub fn encapsulate(public_key: &[u8]) -> Result<(Vec<u8>, SharedSecret), KemError> {
    let key = EncapsulationKey::new(&ML_KEM_768, public_key).map_err(|_| KemError::BadPublicKey)?;
    let (ciphertext, secret) = key.encapsulate().map_err(|_| KemError::Encapsulate)?;
    Ok((ciphertext.as_ref().to_vec(), SharedSecret(secret)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_ends_derive_the_same_secret() {
        let pair = MlKem768KeyPair::generate().unwrap();
        assert_eq!(pair.public_key().len(), MLKEM768_PUBLIC_KEY_LEN);
        let (ct, sent) = encapsulate(pair.public_key()).unwrap();
        assert_eq!(ct.len(), MLKEM768_CIPHERTEXT_LEN);
        assert_eq!(sent.as_bytes().len(), MLKEM_SHARED_SECRET_LEN);
        let received = pair.decapsulate(&ct).unwrap();
        assert_eq!(sent.as_bytes(), received.as_bytes());

        let (ct2, sent2) = encapsulate(pair.public_key()).unwrap();
        assert_ne!(ct, ct2, "encapsulation is randomized");
        assert_ne!(sent.as_bytes(), sent2.as_bytes());
    }

    #[test]
    fn another_key_or_a_tampered_ciphertext_gives_another_secret() {
        let pair = MlKem768KeyPair::generate().unwrap();
        let other = MlKem768KeyPair::generate().unwrap();
        let (mut ct, sent) = encapsulate(pair.public_key()).unwrap();
        assert_ne!(other.decapsulate(&ct).unwrap().as_bytes(), sent.as_bytes());
        ct[0] ^= 1;
        // Implicit rejection: no error, but an unrelated secret.
        assert_ne!(pair.decapsulate(&ct).unwrap().as_bytes(), sent.as_bytes());
    }

    #[test]
    fn wrong_lengths_are_refused() {
        let pair = MlKem768KeyPair::generate().unwrap();
        assert_eq!(
            encapsulate(&pair.public_key()[1..]).unwrap_err(),
            KemError::BadPublicKey
        );
        assert_eq!(encapsulate(&[]).unwrap_err(), KemError::BadPublicKey);
        assert_eq!(
            pair.decapsulate(&[0; MLKEM768_CIPHERTEXT_LEN - 1])
                .unwrap_err(),
            KemError::BadCiphertext
        );
        let secret = pair.decapsulate(&[0; MLKEM768_CIPHERTEXT_LEN]).unwrap();
        assert_eq!(format!("{secret:?}"), "SharedSecret(<redacted>)");
    }
}
