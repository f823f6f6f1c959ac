//! AES-256-GCM packet keys with counter nonces, derived from exported TLS secrets.
//!
//! A [`TrafficSecret`] is 32 bytes exported from a TLS 1.3 session (RFC 8446 §7.5) for one
//! direction of one key epoch: the link exporter between neighbours, or the end-to-end session
//! between overlay endpoints. [`PacketKey::new`] expands it, as TLS 1.3 derives its record keys
//! (RFC 8446 §7.3), with HKDF-Expand-Label (SHA-256) into a 32-byte AES-256-GCM key and a
//! 12-byte nonce base; the labels here are `"x0t dp key"` and `"x0t dp iv"`, in place of TLS's
//! `"tls13 key"`/`"tls13 iv"`, so the keys can never collide with TLS's own.
//!
//! The nonce of a packet is the nonce base XOR the 64-bit packet counter, big-endian, in the last
//! eight bytes (RFC 8446 §5.3). Counters are never reused under one key:
//! [`crate::channel::Channel`] hands each out once.
//!
//! Sealing and opening work in place on the caller's buffer and never allocate.

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use aws_lc_rs::hkdf::{HKDF_SHA256, KeyType, Prk};
use thiserror::Error;

/// Length of an exported traffic secret.
pub const SECRET_LEN: usize = 32;
/// Length of the AES-GCM authentication tag that follows every sealed payload.
pub const TAG_LEN: usize = 16;
/// Length of an AES-GCM nonce.
pub const NONCE_LEN: usize = 12;
const KEY_LEN: usize = 32;

/// 32 bytes exported from TLS for one direction and one key epoch. Overwritten when dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct TrafficSecret([u8; SECRET_LEN]);

impl TrafficSecret {
    /// Wraps exported bytes.
    pub const fn new(bytes: [u8; SECRET_LEN]) -> Self {
        Self(bytes)
    }

    /// The raw bytes (for tests and key logging in a debugger; never log them).
    pub fn as_bytes(&self) -> &[u8; SECRET_LEN] {
        &self.0
    }
}

impl std::fmt::Debug for TrafficSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TrafficSecret(..)")
    }
}

impl Drop for TrafficSecret {
    fn drop(&mut self) {
        self.0 = [0; SECRET_LEN];
        std::hint::black_box(&self.0);
    }
}

/// The crypto library refused an operation that cannot fail with valid sizes; kept as an error
/// rather than a panic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("AES-256-GCM key setup failed")]
pub struct KeySetupError;

/// A sealed payload did not authenticate: wrong key, altered ciphertext, tag, header or
/// counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("authentication failed")]
pub struct AuthError;

struct Len(usize);

impl KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

/// HKDF-Expand-Label (RFC 8446 §7.1) with the `"x0t "` prefix and an empty context.
fn expand_label(prk: &Prk, label: &[u8], out: &mut [u8]) -> Result<(), KeySetupError> {
    let len = u16::try_from(out.len())
        .map_err(|_| KeySetupError)?
        .to_be_bytes();
    let prefix = b"x0t ";
    let label_len = u8::try_from(prefix.len() + label.len()).map_err(|_| KeySetupError)?;
    let info: [&[u8]; 6] = [&len, &[label_len], prefix, label, &[0u8], &[]];
    prk.expand(&info, Len(out.len()))
        .and_then(|okm| okm.fill(out))
        .map_err(|_| KeySetupError)
}

/// An AES-256-GCM key and its nonce base, for one direction of one epoch.
pub struct PacketKey {
    key: LessSafeKey,
    iv: [u8; NONCE_LEN],
}

impl std::fmt::Debug for PacketKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PacketKey(AES-256-GCM)")
    }
}

impl PacketKey {
    /// Derives the key and nonce base from an exported secret.
    pub fn new(secret: &TrafficSecret) -> Result<Self, KeySetupError> {
        let prk = Prk::new_less_safe(HKDF_SHA256, secret.as_bytes());
        let mut key = [0u8; KEY_LEN];
        let mut iv = [0u8; NONCE_LEN];
        expand_label(&prk, b"dp key", &mut key)?;
        expand_label(&prk, b"dp iv", &mut iv)?;
        let unbound = UnboundKey::new(&AES_256_GCM, &key).map_err(|_| KeySetupError);
        key = [0; KEY_LEN];
        std::hint::black_box(&key);
        Ok(Self {
            key: LessSafeKey::new(unbound?),
            iv,
        })
    }

    fn nonce(&self, counter: u64) -> Nonce {
        let mut n = self.iv;
        for (b, c) in n[NONCE_LEN - 8..].iter_mut().zip(counter.to_be_bytes()) {
            *b ^= c;
        }
        Nonce::assume_unique_for_key(n)
    }

    /// Encrypts `in_out` in place and returns the tag. The caller guarantees that `counter`
    /// was never used with this key (the channel does).
    pub(crate) fn seal(
        &self,
        counter: u64,
        aad: &[u8],
        in_out: &mut [u8],
    ) -> Result<[u8; TAG_LEN], KeySetupError> {
        let tag = self
            .key
            .seal_in_place_separate_tag(self.nonce(counter), Aad::from(aad), in_out)
            .map_err(|_| KeySetupError)?;
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(tag.as_ref());
        Ok(out)
    }

    /// Decrypts `ciphertext || tag` in place; returns the plaintext length. On failure the
    /// buffer's contents are unspecified.
    pub(crate) fn open(
        &self,
        counter: u64,
        aad: &[u8],
        in_out: &mut [u8],
    ) -> Result<usize, AuthError> {
        if in_out.len() < TAG_LEN {
            return Err(AuthError);
        }
        self.key
            .open_in_place(self.nonce(counter), Aad::from(aad), in_out)
            .map(|plain| plain.len())
            .map_err(|_| AuthError)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> PacketKey {
        PacketKey::new(&TrafficSecret::new([b; SECRET_LEN])).unwrap()
    }

    #[test]
    fn seal_open_round_trip_and_tamper() {
        let k = key(7);
        let mut buf = *b"an overlay packet, 33 bytes long!";
        let plain = buf;
        let tag = k.seal(42, b"hdr", &mut buf).unwrap();
        assert_ne!(buf, plain);
        let mut sealed = buf.to_vec();
        sealed.extend_from_slice(&tag);

        let mut ok = sealed.clone();
        assert_eq!(k.open(42, b"hdr", &mut ok), Ok(plain.len()));
        assert_eq!(&ok[..plain.len()], &plain);

        let mut wrong_counter = sealed.clone();
        assert_eq!(k.open(43, b"hdr", &mut wrong_counter), Err(AuthError));
        let mut wrong_aad = sealed.clone();
        assert_eq!(k.open(42, b"hdR", &mut wrong_aad), Err(AuthError));
        let mut flipped = sealed.clone();
        flipped[3] ^= 1;
        assert_eq!(k.open(42, b"hdr", &mut flipped), Err(AuthError));
        let mut other_key = sealed;
        assert_eq!(key(8).open(42, b"hdr", &mut other_key), Err(AuthError));
        assert_eq!(k.open(42, b"hdr", &mut [0u8; 5]), Err(AuthError));
    }

    #[test]
    fn nonce_is_base_xor_counter() {
        let k = key(1);
        let n0 = k.nonce(0);
        let n1 = k.nonce(0x0102_0304_0506_0708);
        let (a, b) = (n0.as_ref(), n1.as_ref());
        assert_eq!(a[..4], b[..4]);
        let x: Vec<u8> = a[4..].iter().zip(&b[4..]).map(|(p, q)| p ^ q).collect();
        assert_eq!(x, [1, 2, 3, 4, 5, 6, 7, 8]);
    }

    /// HKDF-Expand-Label gives different key and IV, and they depend on the secret.
    #[test]
    fn derivation_separates_labels() {
        let prk = Prk::new_less_safe(HKDF_SHA256, &[9u8; 32]);
        let (mut a, mut b) = ([0u8; 12], [0u8; 12]);
        expand_label(&prk, b"dp key", &mut a).unwrap();
        expand_label(&prk, b"dp iv", &mut b).unwrap();
        assert_ne!(a, b);
    }
}
