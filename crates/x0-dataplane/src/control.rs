//! Control messages between overlay endpoints, carried in the end-to-end envelope
//! ([`crate::frame::OverlayKind::E2eControl`]).
//!
//! Today these are the self-healing loop's end-to-end path probes. A probe travels along an
//! explicit path and its answer comes back along the same relays in reverse, so a round trip
//! shows whether that path delivers. Both are sealed end to end: a relay can drop them but
//! cannot read, forge or redirect them (the path to answer along is inside the envelope, not
//! taken from the overlay header the relays rewrite).
//!
//! | Offset | Size | Field |
//! |---|---|---|
//! | 0 | 1 | type: 1 probe request, 2 probe reply |
//! | 1 | 8 | probe ID (big-endian), chosen by the prober |
//! | 9 | 1 | request only: number of relays `n` (0..=[`MAX_PROBE_RELAYS`]) |
//! | 10 | 16·n | request only: the relays from the prober to the destination, in order |
//!
//! Anything else (an unknown type, too short, trailing bytes, too many relays) fails to
//! decode. Whether the relays make sense (none repeated, neither endpoint among them) is the
//! receiver's check.

use thiserror::Error;
use x0_wire::NodeId;

/// Most relays a probe may name (the overlay's explicit path holds at most
/// [`crate::frame::MAX_PATH_LEN`] nodes, the destination included).
pub const MAX_PROBE_RELAYS: usize = crate::frame::MAX_PATH_LEN - 1;

const TYPE_PROBE_REQUEST: u8 = 1;
const TYPE_PROBE_REPLY: u8 = 2;

/// An end-to-end control message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlMessage {
    /// "Answer this along the reverse of `relays`."
    ProbeRequest {
        /// The prober's ID for this probe.
        id: u64,
        /// The relays from the prober to the destination, in order.
        relays: Vec<NodeId>,
    },
    /// The answer to a probe request.
    ProbeReply {
        /// The request's ID.
        id: u64,
    },
}

/// Why a control message does not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum ControlError {
    /// Shorter than its fields say.
    #[error("control message truncated")]
    Truncated,
    /// Unknown message type.
    #[error("unknown control message type {0}")]
    UnknownType(u8),
    /// More relays than [`MAX_PROBE_RELAYS`].
    #[error("a probe names {0} relays, at most {MAX_PROBE_RELAYS} allowed")]
    TooManyRelays(usize),
    /// Bytes after the message.
    #[error("{0} bytes after the control message")]
    Trailing(usize),
}

impl ControlMessage {
    /// Encoded length.
    pub fn encoded_len(&self) -> usize {
        match self {
            Self::ProbeRequest { relays, .. } => 10 + NodeId::LEN * relays.len(),
            Self::ProbeReply { .. } => 9,
        }
    }

    /// Appends the encoding to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), ControlError> {
        match self {
            Self::ProbeRequest { id, relays } => {
                if relays.len() > MAX_PROBE_RELAYS {
                    return Err(ControlError::TooManyRelays(relays.len()));
                }
                out.push(TYPE_PROBE_REQUEST);
                out.extend_from_slice(&id.to_be_bytes());
                // Checked against MAX_PROBE_RELAYS just above.
                out.push(relays.len() as u8);
                for r in relays {
                    out.extend_from_slice(r.as_bytes());
                }
            }
            Self::ProbeReply { id } => {
                out.push(TYPE_PROBE_REPLY);
                out.extend_from_slice(&id.to_be_bytes());
            }
        }
        Ok(())
    }

    /// Decodes a whole message.
    pub fn decode(b: &[u8]) -> Result<Self, ControlError> {
        let (&kind, rest) = b.split_first().ok_or(ControlError::Truncated)?;
        let id_bytes: [u8; 8] = rest
            .get(..8)
            .and_then(|s| s.try_into().ok())
            .ok_or(ControlError::Truncated)?;
        let id = u64::from_be_bytes(id_bytes);
        let rest = &rest[8..];
        let (msg, used) = match kind {
            TYPE_PROBE_REPLY => (Self::ProbeReply { id }, 0),
            TYPE_PROBE_REQUEST => {
                let (&n, list) = rest.split_first().ok_or(ControlError::Truncated)?;
                let n = usize::from(n);
                if n > MAX_PROBE_RELAYS {
                    return Err(ControlError::TooManyRelays(n));
                }
                let list = list.get(..n * NodeId::LEN).ok_or(ControlError::Truncated)?;
                let relays = list
                    .chunks_exact(NodeId::LEN)
                    .map(|c| {
                        let mut id = [0u8; NodeId::LEN];
                        id.copy_from_slice(c);
                        NodeId::from_bytes(id)
                    })
                    .collect();
                (Self::ProbeRequest { id, relays }, 1 + n * NodeId::LEN)
            }
            other => return Err(ControlError::UnknownType(other)),
        };
        match rest.len() - used {
            0 => Ok(msg),
            extra => Err(ControlError::Trailing(extra)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id(b: u8) -> NodeId {
        NodeId::from_bytes([b; NodeId::LEN])
    }

    #[test]
    fn requests_and_replies_round_trip() {
        for m in [
            ControlMessage::ProbeRequest {
                id: 7,
                relays: vec![],
            },
            ControlMessage::ProbeRequest {
                id: u64::MAX,
                relays: vec![id(1), id(2), id(3)],
            },
            ControlMessage::ProbeReply { id: 42 },
        ] {
            let mut v = Vec::new();
            m.encode(&mut v).unwrap();
            assert_eq!(v.len(), m.encoded_len());
            assert_eq!(ControlMessage::decode(&v).unwrap(), m);
        }
    }

    #[test]
    fn malformed_messages_are_refused() {
        assert_eq!(ControlMessage::decode(&[]), Err(ControlError::Truncated));
        assert_eq!(
            ControlMessage::decode(&[9, 0, 0, 0, 0, 0, 0, 0, 1]),
            Err(ControlError::UnknownType(9))
        );
        assert_eq!(
            ControlMessage::decode(&[2, 0, 0, 0, 0, 0, 0, 0, 1, 0]),
            Err(ControlError::Trailing(1))
        );
        assert_eq!(
            ControlMessage::decode(&[1, 0, 0, 0, 0, 0, 0, 0, 1, 2, 0]),
            Err(ControlError::Truncated)
        );
        let too_many = (MAX_PROBE_RELAYS + 1) as u8;
        assert_eq!(
            ControlMessage::decode(&[1, 0, 0, 0, 0, 0, 0, 0, 1, too_many]),
            Err(ControlError::TooManyRelays(MAX_PROBE_RELAYS + 1))
        );
        let m = ControlMessage::ProbeRequest {
            id: 1,
            relays: vec![id(1); MAX_PROBE_RELAYS + 1],
        };
        assert!(m.encode(&mut Vec::new()).is_err());
    }

    proptest! {
        #[test]
        fn decoding_never_panics(b in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(m) = ControlMessage::decode(&b) {
                let mut v = Vec::new();
                m.encode(&mut v).unwrap();
                prop_assert_eq!(v, b);
            }
        }

        #[test]
        fn requests_round_trip(pid in any::<u64>(), relays in proptest::collection::vec(any::<[u8; 16]>(), 0..=MAX_PROBE_RELAYS)) {
            let m = ControlMessage::ProbeRequest { id: pid, relays: relays.into_iter().map(NodeId::from_bytes).collect() };
            let mut v = Vec::new();
            m.encode(&mut v).unwrap();
            prop_assert_eq!(ControlMessage::decode(&v).unwrap(), m);
        }
    }
}
