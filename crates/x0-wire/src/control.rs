//! Framed control messages.
//!
//! Two services speak them, each over one QUIC bidirectional stream:
//!
//! * the **link** (ALPN `x0t/1`): both ends first send [`Hello`] (their ML-DSA-65 public key and
//!   a proof-of-possession signature over the TLS exporter), then [`ControlMessage::Revocations`]
//!   whenever they hold a newer revocation list than the peer announced;
//! * the **CA service** (ALPN `x0t-ca/1`): a joining node first sends
//!   [`ControlMessage::CaProofRequest`] and the CA node answers with a [`Hello`] proving its
//!   ML-DSA-65 key over this session; only then does the joiner send [`JoinRequest`] with the
//!   invitation secret. A member renews its SVID with [`RenewRequest`]. The CA node answers a
//!   request with [`Issued`] or [`Refused`].
//!
//! A frame is `type u8 | length u32 | payload`. Length limits are enforced on the header, before
//! the payload is read, so a peer cannot make us buffer more than [`MAX_FRAME_LEN`].

use crate::codec::{DecodeError, Reader, Writer};
use crate::revocation::{RevocationList, SignedRevocationList};

/// Longest payload accepted in one frame (a full revocation list fits).
pub const MAX_FRAME_LEN: usize = 2 * 1024 * 1024;
/// Length of a frame header.
pub const FRAME_HEADER_LEN: usize = 5;
/// Largest certificate accepted in a message (DER).
pub const MAX_CERT_LEN: usize = 16 * 1024;
/// Most CA certificates in a trust bundle.
pub const MAX_BUNDLE_CERTS: usize = 8;
const MAX_PUBLIC_KEY: usize = 4096;
const MAX_PQ_SIGNATURE: usize = 8192;
const MAX_SPKI: usize = 1024;
const MAX_CLASSIC_SIGNATURE: usize = 512;
const MAX_MESSAGE_TEXT: usize = 1024;

mod tag {
    pub(super) const HELLO: u8 = 0x01;
    pub(super) const REVOCATIONS: u8 = 0x02;
    pub(super) const DATA_CHANNEL: u8 = 0x03;
    pub(super) const JOIN_REQUEST: u8 = 0x10;
    pub(super) const RENEW_REQUEST: u8 = 0x11;
    pub(super) const ISSUED: u8 = 0x12;
    pub(super) const REFUSED: u8 = 0x13;
    pub(super) const CA_PROOF_REQUEST: u8 = 0x14;
}

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Message type tag.
    pub kind: u8,
    /// Payload length, already checked against [`MAX_FRAME_LEN`].
    pub len: usize,
}

impl FrameHeader {
    /// Parses and bounds-checks a header.
    pub fn parse(bytes: [u8; FRAME_HEADER_LEN]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(&bytes);
        let kind = r.u8("frame type")?;
        let len = usize::try_from(r.u32("frame length")?).unwrap_or(usize::MAX);
        if len > MAX_FRAME_LEN {
            return Err(DecodeError::TooLong {
                field: "frame",
                len,
                max: MAX_FRAME_LEN,
            });
        }
        Ok(Self { kind, len })
    }
}

/// Proof that the sender holds the ML-DSA-65 key bound to its node ID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// Raw FIPS 204 ML-DSA-65 public key (1,952 bytes).
    pub mldsa_public_key: Vec<u8>,
    /// ML-DSA-65 signature over the link's proof-of-possession transcript.
    pub pop_signature: Vec<u8>,
    /// Serial of the newest revocation list the sender holds (0: none).
    pub revocation_serial: u64,
}

/// A joining node's request for its first SVID.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinRequest {
    /// From the invitation token.
    pub invitation_id: [u8; 16],
    /// From the invitation token.
    pub secret: [u8; 32],
    /// DER SubjectPublicKeyInfo of the joiner's ECDSA P-256 TLS key.
    pub tls_spki_der: Vec<u8>,
    /// Raw ML-DSA-65 public key.
    pub mldsa_public_key: Vec<u8>,
    /// ECDSA signature (ASN.1) over the join transcript: proves the TLS key.
    pub tls_signature: Vec<u8>,
    /// ML-DSA-65 signature over the join transcript: proves the ML-DSA key.
    pub mldsa_signature: Vec<u8>,
}

impl std::fmt::Debug for JoinRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinRequest")
            .field("invitation_id", &hex::encode(self.invitation_id))
            .field("secret", &"<redacted>")
            .field("tls_spki_der_len", &self.tls_spki_der.len())
            .finish_non_exhaustive()
    }
}

/// A member's request for a fresh SVID for the keys it already has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenewRequest {
    /// Raw ML-DSA-65 public key.
    pub mldsa_public_key: Vec<u8>,
    /// ML-DSA-65 signature over the renewal transcript.
    pub pop_signature: Vec<u8>,
}

/// The CA's answer to a join or renewal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    /// The mesh's trust domain.
    pub trust_domain: String,
    /// The new X.509-SVID (DER).
    pub svid_der: Vec<u8>,
    /// The trust bundle: the mesh CA certificates (DER).
    pub bundle_der: Vec<Vec<u8>>,
    /// The CA's current revocation list, if any.
    pub revocations: Option<SignedRevocationList>,
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RefusalCode {
    /// No invitation with that ID.
    UnknownInvitation,
    /// The invitation was already used.
    InvitationUsed,
    /// The invitation has expired.
    InvitationExpired,
    /// The secret does not match.
    BadSecret,
    /// A signature in the request does not verify.
    BadProof,
    /// The node is revoked.
    Revoked,
    /// This node holds no CA key.
    NotCa,
    /// A renewal arrived without a valid client SVID.
    NotAuthenticated,
    /// The CA could not complete the request.
    Internal,
    /// The CA node is handling as many requests as it allows at once; try again shortly.
    Busy,
    /// A code this build does not know.
    Other(u16),
}

impl RefusalCode {
    fn to_u16(self) -> u16 {
        match self {
            Self::UnknownInvitation => 1,
            Self::InvitationUsed => 2,
            Self::InvitationExpired => 3,
            Self::BadSecret => 4,
            Self::BadProof => 5,
            Self::Revoked => 6,
            Self::NotCa => 7,
            Self::NotAuthenticated => 8,
            Self::Internal => 9,
            Self::Busy => 10,
            Self::Other(c) => c,
        }
    }

    fn from_u16(c: u16) -> Self {
        match c {
            1 => Self::UnknownInvitation,
            2 => Self::InvitationUsed,
            3 => Self::InvitationExpired,
            4 => Self::BadSecret,
            5 => Self::BadProof,
            6 => Self::Revoked,
            7 => Self::NotCa,
            8 => Self::NotAuthenticated,
            9 => Self::Internal,
            10 => Self::Busy,
            c => Self::Other(c),
        }
    }
}

/// A refusal, with a human-readable explanation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// Machine-readable reason.
    pub code: RefusalCode,
    /// What to tell the operator.
    pub message: String,
}

/// Every control message.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ControlMessage {
    /// Link proof of possession.
    Hello(Hello),
    /// A newer revocation list.
    Revocations(SignedRevocationList),
    /// Where and how to send data-plane frames to the sender of this message.
    DataChannel(DataChannel),
    /// Join with an invitation.
    JoinRequest(JoinRequest),
    /// Renew an SVID.
    RenewRequest(RenewRequest),
    /// SVID issued.
    Issued(Issued),
    /// Request refused.
    Refused(Refused),
    /// A joining node asks the CA node to prove, with a [`Hello`] over this session, that it
    /// holds the ML-DSA-65 key of the node ID named in the invitation, before the joiner sends
    /// its secret.
    CaProofRequest,
}

impl ControlMessage {
    /// Encodes header and payload.
    pub fn encode(&self) -> Vec<u8> {
        let mut p = Writer::new();
        let kind = match self {
            Self::Hello(h) => {
                p.bytes_u16(&h.mldsa_public_key)
                    .bytes_u16(&h.pop_signature)
                    .u64(h.revocation_serial);
                tag::HELLO
            }
            Self::Revocations(list) => {
                p.bytes(&list.encode());
                tag::REVOCATIONS
            }
            Self::DataChannel(d) => {
                p.u16(d.port).u32(d.receiver_index);
                tag::DATA_CHANNEL
            }
            Self::JoinRequest(j) => {
                p.bytes(&j.invitation_id)
                    .bytes(&j.secret)
                    .bytes_u16(&j.tls_spki_der)
                    .bytes_u16(&j.mldsa_public_key)
                    .bytes_u16(&j.tls_signature)
                    .bytes_u16(&j.mldsa_signature);
                tag::JOIN_REQUEST
            }
            Self::RenewRequest(r) => {
                p.bytes_u16(&r.mldsa_public_key).bytes_u16(&r.pop_signature);
                tag::RENEW_REQUEST
            }
            Self::Issued(i) => {
                p.bytes_u8(i.trust_domain.as_bytes()).bytes_u16(&i.svid_der);
                p.u8(u8::try_from(i.bundle_der.len()).unwrap_or(u8::MAX));
                for cert in &i.bundle_der {
                    p.bytes_u16(cert);
                }
                let revocations = i
                    .revocations
                    .as_ref()
                    .map(|r| r.encode())
                    .unwrap_or_default();
                p.bytes_u32(&revocations);
                tag::ISSUED
            }
            Self::Refused(r) => {
                p.u16(r.code.to_u16()).bytes_u16(r.message.as_bytes());
                tag::REFUSED
            }
            Self::CaProofRequest => tag::CA_PROOF_REQUEST,
        };
        let payload = p.into_inner();
        let mut w = Writer::new();
        w.u8(kind).bytes_u32(&payload);
        w.into_inner()
    }

    /// Decodes one payload of type `kind`.
    pub fn decode(kind: u8, payload: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(payload);
        let msg = match kind {
            tag::HELLO => Self::Hello(Hello {
                mldsa_public_key: r.bytes_u16("mldsa_public_key", MAX_PUBLIC_KEY)?.to_vec(),
                pop_signature: r.bytes_u16("pop_signature", MAX_PQ_SIGNATURE)?.to_vec(),
                revocation_serial: r.u64("revocation_serial")?,
            }),
            tag::REVOCATIONS => {
                let (signed, _) = SignedRevocationList::decode(r.bytes(r.remaining(), "list")?)?;
                Self::Revocations(signed)
            }
            tag::DATA_CHANNEL => Self::DataChannel(DataChannel {
                port: r.u16("port")?,
                receiver_index: r.u32("receiver_index")?,
            }),
            tag::JOIN_REQUEST => Self::JoinRequest(JoinRequest {
                invitation_id: r.array("invitation_id")?,
                secret: r.array("secret")?,
                tls_spki_der: r.bytes_u16("tls_spki_der", MAX_SPKI)?.to_vec(),
                mldsa_public_key: r.bytes_u16("mldsa_public_key", MAX_PUBLIC_KEY)?.to_vec(),
                tls_signature: r
                    .bytes_u16("tls_signature", MAX_CLASSIC_SIGNATURE)?
                    .to_vec(),
                mldsa_signature: r.bytes_u16("mldsa_signature", MAX_PQ_SIGNATURE)?.to_vec(),
            }),
            tag::RENEW_REQUEST => Self::RenewRequest(RenewRequest {
                mldsa_public_key: r.bytes_u16("mldsa_public_key", MAX_PUBLIC_KEY)?.to_vec(),
                pop_signature: r.bytes_u16("pop_signature", MAX_PQ_SIGNATURE)?.to_vec(),
            }),
            tag::ISSUED => {
                let trust_domain = r.str_u8("trust_domain")?.to_owned();
                let svid_der = r.bytes_u16("svid", MAX_CERT_LEN)?.to_vec();
                let count = usize::from(r.u8("bundle count")?);
                if count == 0 || count > MAX_BUNDLE_CERTS {
                    return Err(DecodeError::Invalid {
                        field: "bundle",
                        reason: "must hold 1 to 8 certificates",
                    });
                }
                let mut bundle_der = Vec::with_capacity(count);
                for _ in 0..count {
                    bundle_der.push(r.bytes_u16("bundle certificate", MAX_CERT_LEN)?.to_vec());
                }
                let rl = r.bytes_u32("revocations", MAX_FRAME_LEN)?;
                let revocations = if rl.is_empty() {
                    None
                } else {
                    Some(SignedRevocationList::decode(rl)?.0)
                };
                Self::Issued(Issued {
                    trust_domain,
                    svid_der,
                    bundle_der,
                    revocations,
                })
            }
            tag::REFUSED => Self::Refused(Refused {
                code: RefusalCode::from_u16(r.u16("code")?),
                message: r.str_u16("message", MAX_MESSAGE_TEXT)?.to_owned(),
            }),
            tag::CA_PROOF_REQUEST => Self::CaProofRequest,
            other => {
                return Err(DecodeError::UnknownTag {
                    field: "control message",
                    tag: u64::from(other),
                });
            }
        };
        r.finish()?;
        Ok(msg)
    }

    /// Decodes a whole frame (header and payload) from one buffer.
    pub fn decode_frame(frame: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(frame);
        let header = FrameHeader::parse(r.array("frame header")?)?;
        let payload = r.bytes(header.len, "frame payload")?;
        r.finish()?;
        Self::decode(header.kind, payload)
    }

    /// A short name for logs and counters.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Hello(_) => "hello",
            Self::Revocations(_) => "revocations",
            Self::DataChannel(_) => "data_channel",
            Self::JoinRequest(_) => "join_request",
            Self::RenewRequest(_) => "renew_request",
            Self::Issued(_) => "issued",
            Self::Refused(_) => "refused",
            Self::CaProofRequest => "ca_proof_request",
        }
    }
}

/// A link's data channel, announced by each end over the link's control stream: send data
/// frames for this node to UDP `port` at the link's remote IP address, with `receiver_index`
/// in the link frame header. The keys come from the link's TLS exporter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataChannel {
    /// UDP port of the sender's data socket.
    pub port: u16,
    /// The index the sender chose for this link's channel.
    pub receiver_index: u32,
}

/// Convenience: the revocation list inside a verified-later signed container.
pub fn revocation_list_of(signed: &SignedRevocationList) -> Result<RevocationList, DecodeError> {
    RevocationList::decode(&signed.body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NodeId;
    use proptest::prelude::*;

    fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(any::<u8>(), 0..max)
    }

    fn signed_list() -> impl Strategy<Value = SignedRevocationList> {
        (
            any::<u64>(),
            proptest::collection::btree_set(any::<[u8; 16]>(), 0..4),
            bytes(72),
        )
            .prop_map(|(serial, ids, signature)| SignedRevocationList {
                body: RevocationList {
                    trust_domain: "mesh".into(),
                    serial,
                    issued_at_unix: 5,
                    revoked: ids.into_iter().map(NodeId::from_bytes).collect(),
                }
                .encode(),
                signature,
            })
    }

    fn message() -> impl Strategy<Value = ControlMessage> {
        prop_oneof![
            (bytes(2000), bytes(3400), any::<u64>()).prop_map(|(k, s, n)| ControlMessage::Hello(
                Hello {
                    mldsa_public_key: k,
                    pop_signature: s,
                    revocation_serial: n
                }
            )),
            signed_list().prop_map(ControlMessage::Revocations),
            (any::<u16>(), any::<u32>()).prop_map(|(port, receiver_index)| {
                ControlMessage::DataChannel(DataChannel {
                    port,
                    receiver_index,
                })
            }),
            (
                any::<[u8; 16]>(),
                any::<[u8; 32]>(),
                bytes(100),
                bytes(2000),
                bytes(72),
                bytes(3400)
            )
                .prop_map(|(id, secret, spki, k, ts, ms)| ControlMessage::JoinRequest(
                    JoinRequest {
                        invitation_id: id,
                        secret,
                        tls_spki_der: spki,
                        mldsa_public_key: k,
                        tls_signature: ts,
                        mldsa_signature: ms,
                    }
                )),
            (bytes(2000), bytes(3400)).prop_map(|(k, s)| ControlMessage::RenewRequest(
                RenewRequest {
                    mldsa_public_key: k,
                    pop_signature: s
                }
            )),
            (
                "[a-z.]{1,30}",
                bytes(900),
                proptest::collection::vec(bytes(900), 1..4),
                proptest::option::of(signed_list())
            )
                .prop_map(|(td, svid, bundle, rl)| ControlMessage::Issued(Issued {
                    trust_domain: td,
                    svid_der: svid,
                    bundle_der: bundle,
                    revocations: rl,
                })),
            (1u16..20, ".{0,100}").prop_map(|(c, m)| ControlMessage::Refused(Refused {
                code: RefusalCode::from_u16(c),
                message: m,
            })),
            Just(ControlMessage::CaProofRequest),
        ]
    }

    #[test]
    fn oversized_frame_header_is_refused() {
        let mut h = [0u8; 5];
        h[0] = tag::HELLO;
        h[1..].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            FrameHeader::parse(h),
            Err(DecodeError::TooLong { .. })
        ));
    }

    #[test]
    fn unknown_type_is_an_error() {
        assert!(matches!(
            ControlMessage::decode(0x7f, &[]),
            Err(DecodeError::UnknownTag { tag: 0x7f, .. })
        ));
    }

    #[test]
    fn ca_proof_request_is_an_empty_frame_and_refuses_a_payload() {
        let frame = ControlMessage::CaProofRequest.encode();
        assert_eq!(frame, [tag::CA_PROOF_REQUEST, 0, 0, 0, 0]);
        assert!(matches!(
            ControlMessage::decode(tag::CA_PROOF_REQUEST, &[0]),
            Err(DecodeError::TrailingBytes(1))
        ));
    }

    #[test]
    fn refusal_codes_round_trip() {
        for c in 0..20u16 {
            assert_eq!(RefusalCode::from_u16(c).to_u16(), c);
        }
    }

    proptest! {
        #[test]
        fn round_trip(msg in message()) {
            let frame = msg.encode();
            prop_assert_eq!(ControlMessage::decode_frame(&frame).unwrap(), msg);
        }

        #[test]
        fn truncation_is_always_an_error(msg in message(), cut in any::<prop::sample::Index>()) {
            let frame = msg.encode();
            let cut = cut.index(frame.len());
            prop_assert!(ControlMessage::decode_frame(&frame[..cut]).is_err());
        }

        #[test]
        fn decode_never_panics(kind in any::<u8>(), payload in bytes(600)) {
            let _ = ControlMessage::decode(kind, &payload);
        }
    }
}
