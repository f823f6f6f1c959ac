//! One-time invitation tokens.
//!
//! `x0t ca invite` prints a token; `x0t join TOKEN` consumes it. The token carries everything
//! the joining node needs to reach the bootstrap node and to know it is talking to the CA node
//! of the right mesh before it sends anything: the SHA-256 fingerprint of the mesh CA
//! certificate, the node ID of the CA node (any member holds an SVID under that CA, and the CA
//! certificate is public: only the node ID tells the CA node from a member), the trust domain,
//! the bootstrap address, the invitation ID and its 256-bit secret, and the expiry.
//!
//! Text form: `x0t2.` followed by unpadded base64url of the binary form:
//!
//! ```text
//! version u8 (=2) | ca_fingerprint [32] | ca_node [16] | invitation_id [16] | secret [32] |
//! expires_at_unix u64 | trust_domain (u8 len, UTF-8) | bootstrap (u8 len, UTF-8 "host:port")
//! ```
//!
//! Format 1 (`x0t1.`, version 1) did not name the CA node. Such tokens are refused with
//! [`FORMAT_1_REFUSED`]: a joiner holding one could not tell the CA node from any member.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::codec::{DecodeError, Reader, Writer};

use crate::node_id::NodeId;

const PREFIX: &str = "x0t2.";
const VERSION: u8 = 2;
const FORMAT_1_PREFIX: &str = "x0t1.";
const FORMAT_1: u8 = 1;
/// Why a format-1 token is refused (the `reason` of the [`DecodeError::Invalid`] returned).
pub const FORMAT_1_REFUSED: &str = "format 1 (x0t1.) does not name the CA node, so a joiner \
     cannot tell the CA node from any member; ask the CA operator for a new invitation \
     (`x0t ca invite`)";
/// Longest text form accepted (the binary form is at most 617 bytes).
const MAX_TEXT_LEN: usize = 1024;

/// An invitation to join a mesh.
#[derive(Clone, PartialEq, Eq)]
pub struct InvitationToken {
    /// SHA-256 of the mesh CA certificate (DER).
    pub ca_fingerprint: [u8; 32],
    /// Node ID of the CA node: the only node the joiner sends the secret to.
    pub ca_node: NodeId,
    /// Which invitation this is; the CA keeps one row per ID.
    pub invitation_id: [u8; 16],
    /// The secret the joiner proves it holds.
    pub secret: [u8; 32],
    /// Seconds since the Unix epoch after which the CA refuses the token.
    pub expires_at_unix: u64,
    /// The mesh's SPIFFE trust domain.
    pub trust_domain: String,
    /// `host:port` of the node that serves joins.
    pub bootstrap: String,
}

impl std::fmt::Debug for InvitationToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InvitationToken")
            .field("ca_fingerprint", &hex::encode(self.ca_fingerprint))
            .field("ca_node", &self.ca_node)
            .field("invitation_id", &hex::encode(self.invitation_id))
            .field("secret", &"<redacted>")
            .field("expires_at_unix", &self.expires_at_unix)
            .field("trust_domain", &self.trust_domain)
            .field("bootstrap", &self.bootstrap)
            .finish()
    }
}

impl InvitationToken {
    /// The binary form.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u8(VERSION)
            .bytes(&self.ca_fingerprint)
            .bytes(self.ca_node.as_bytes())
            .bytes(&self.invitation_id)
            .bytes(&self.secret)
            .u64(self.expires_at_unix)
            .bytes_u8(self.trust_domain.as_bytes())
            .bytes_u8(self.bootstrap.as_bytes());
        w.into_inner()
    }

    /// Parses the binary form.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let version = r.u8("version")?;
        if version == FORMAT_1 {
            return Err(format_1_refused());
        }
        if version != VERSION {
            return Err(DecodeError::UnsupportedVersion {
                what: "invitation",
                version,
            });
        }
        let token = Self {
            ca_fingerprint: r.array("ca_fingerprint")?,
            ca_node: NodeId::from_bytes(r.array("ca_node")?),
            invitation_id: r.array("invitation_id")?,
            secret: r.array("secret")?,
            expires_at_unix: r.u64("expires_at")?,
            trust_domain: non_empty(r.str_u8("trust_domain")?, "trust_domain")?,
            bootstrap: non_empty(r.str_u8("bootstrap")?, "bootstrap")?,
        };
        r.finish()?;
        Ok(token)
    }

    /// The text form people copy: `x0t2.<base64url>`.
    pub fn to_text(&self) -> String {
        format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(self.encode()))
    }

    /// Parses the text form, tolerating surrounding whitespace.
    pub fn from_text(text: &str) -> Result<Self, DecodeError> {
        let text = text.trim();
        if text.len() > MAX_TEXT_LEN {
            return Err(DecodeError::TooLong {
                field: "invitation token",
                len: text.len(),
                max: MAX_TEXT_LEN,
            });
        }
        if text.starts_with(FORMAT_1_PREFIX) {
            return Err(format_1_refused());
        }
        let body = text.strip_prefix(PREFIX).ok_or(DecodeError::Invalid {
            field: "invitation token",
            reason: "does not start with \"x0t2.\"",
        })?;
        let bytes = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| DecodeError::Invalid {
                field: "invitation token",
                reason: "not base64url",
            })?;
        Self::decode(&bytes)
    }
}

fn format_1_refused() -> DecodeError {
    DecodeError::Invalid {
        field: "invitation token",
        reason: FORMAT_1_REFUSED,
    }
}

fn non_empty(s: &str, field: &'static str) -> Result<String, DecodeError> {
    if s.is_empty() {
        return Err(DecodeError::Invalid {
            field,
            reason: "empty",
        });
    }
    Ok(s.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn token() -> InvitationToken {
        InvitationToken {
            ca_fingerprint: [1; 32],
            ca_node: NodeId::from_bytes([4; 16]),
            invitation_id: [2; 16],
            secret: [3; 32],
            expires_at_unix: 1_800_000_000,
            trust_domain: "mesh.example".into(),
            bootstrap: "127.0.0.1:7101".into(),
        }
    }

    #[test]
    fn text_round_trip() {
        let t = token();
        let text = t.to_text();
        assert!(text.starts_with("x0t2."));
        assert_eq!(
            InvitationToken::from_text(&format!("  {text}\n")).unwrap(),
            t
        );
    }

    #[test]
    fn debug_redacts_the_secret() {
        assert!(!format!("{:?}", token()).contains("3, 3"));
        assert!(format!("{:?}", token()).contains("redacted"));
    }

    #[test]
    fn rejects_wrong_prefix_version_and_truncation() {
        let t = token();
        assert!(InvitationToken::from_text("x0t3.AAAA").is_err());
        let mut bytes = t.encode();
        bytes[0] = 9;
        assert!(matches!(
            InvitationToken::decode(&bytes),
            Err(DecodeError::UnsupportedVersion { version: 9, .. })
        ));
        let bytes = t.encode();
        for cut in 0..bytes.len() {
            assert!(InvitationToken::decode(&bytes[..cut]).is_err());
        }
    }

    /// A format-1 token (made by an x0t before the CA node was named) parses to a refusal that
    /// says why and what to do, in both forms.
    #[test]
    fn format_1_tokens_are_refused_with_the_reason() {
        // `version 1 | fingerprint | id | secret | expiry | td | bootstrap`, as x0t made them.
        let mut w = crate::codec::Writer::new();
        w.u8(1)
            .bytes(&[1; 32])
            .bytes(&[2; 16])
            .bytes(&[3; 32])
            .u64(1_800_000_000)
            .bytes_u8(b"mesh.example")
            .bytes_u8(b"127.0.0.1:7101");
        let v1 = w.into_inner();
        let text = format!("x0t1.{}", URL_SAFE_NO_PAD.encode(&v1));
        for err in [
            InvitationToken::decode(&v1).unwrap_err(),
            InvitationToken::from_text(&text).unwrap_err(),
        ] {
            assert_eq!(err, format_1_refused());
            let shown = err.to_string();
            assert!(
                shown.contains("CA node") && shown.contains("x0t ca invite"),
                "{shown}"
            );
        }
    }

    proptest! {
        #[test]
        fn binary_round_trip(
            fp in any::<[u8; 32]>(), node in any::<[u8; 16]>(), id in any::<[u8; 16]>(),
            secret in any::<[u8; 32]>(), exp in any::<u64>(), td in "[a-z0-9.-]{1,60}",
            boot in "[a-z0-9.:\\[\\]]{1,60}",
        ) {
            let t = InvitationToken {
                ca_fingerprint: fp, ca_node: NodeId::from_bytes(node), invitation_id: id, secret,
                expires_at_unix: exp,
                trust_domain: td, bootstrap: boot,
            };
            prop_assert_eq!(InvitationToken::decode(&t.encode()).unwrap(), t.clone());
            prop_assert_eq!(InvitationToken::from_text(&t.to_text()).unwrap(), t);
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..700)) {
            let _ = InvitationToken::decode(&bytes);
        }
    }
}
