//! Control messages between overlay endpoints, carried *as data*: in a
//! [`crate::frame::OverlayKind::Data`] frame, inside the end-to-end envelope.
//!
//! Today these are the self-healing loop's end-to-end path probes. A probe travels along a
//! path and its answer comes back along the same relays in reverse, so a round trip shows
//! whether that path delivers. A relay must not be able to tell a probe from data (or it
//! could forward the probes and drop the data), so nothing it sees differs:
//!
//! * the overlay kind is `Data`, and the control/data distinction exists only inside the
//!   end-to-end AEAD: the first byte of the opened payload is an IP packet's version nibble
//!   (4 or 6) for data, and a control message's type (high nibble 0, [`is_control`]) here;
//! * the message is padded with zeros to a length drawn from the lengths of the data
//!   packets the sender recently sent to that destination ([`SizeProfile`]), so the frame's
//!   length is one a data frame would have;
//! * it is sealed with the same session as data (its counter is one of the data's), and the
//!   sender gives it the overlay header data to that destination along that path would get
//!   (routed hop by hop when the path is the route's, an explicit path otherwise, as
//!   balanced, redundant and fast-reroute data have).
//!
//! A relay can still drop it, but only together with data. It cannot read, forge or redirect
//! it: the path to answer along is inside the envelope, not taken from the overlay header the
//! relays rewrite.
//!
//! | Offset | Size | Field |
//! |---|---|---|
//! | 0 | 1 | type: 1 probe request, 2 probe reply (high nibble 0: never an IP version) |
//! | 1 | 8 | probe ID (big-endian), chosen by the prober |
//! | 9 | 1 | request only: number of relays `n` (0..=[`MAX_PROBE_RELAYS`]) |
//! | 10 | 16·n | request only: the relays from the prober to the destination, in order |
//! | … | | padding: zero bytes up to the length chosen by the sender |
//!
//! Anything else (an unknown type, too short, a non-zero byte after the message, too many
//! relays) fails to decode. Whether the relays make sense (none repeated, neither endpoint
//! among them) is the receiver's check.

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
    /// Non-zero bytes after the message (padding must be zeros).
    #[error("{0} non-zero bytes after the control message")]
    Trailing(usize),
}

impl ControlMessage {
    /// Encoded length, without padding.
    pub fn encoded_len(&self) -> usize {
        match self {
            Self::ProbeRequest { relays, .. } => 10 + NodeId::LEN * relays.len(),
            Self::ProbeReply { .. } => 9,
        }
    }

    /// Appends the encoding, padded with zeros to `len` bytes (no padding when `len` is not
    /// above [`ControlMessage::encoded_len`]).
    pub fn encode_padded(&self, out: &mut Vec<u8>, len: usize) -> Result<(), ControlError> {
        let start = out.len();
        self.encode(out)?;
        if out.len() - start < len {
            out.resize(start + len, 0);
        }
        Ok(())
    }

    /// Appends the encoding to `out`, without padding.
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

    /// Decodes a whole message (zero padding after it is allowed).
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
        match rest[used..].iter().filter(|b| **b != 0).count() {
            0 => Ok(msg),
            extra => Err(ControlError::Trailing(extra)),
        }
    }
}

/// Whether an opened end-to-end payload is a control message (its first byte's high nibble
/// is 0) rather than an IP packet (version 4 or 6 there).
pub fn is_control(payload: &[u8]) -> bool {
    payload.first().is_some_and(|b| b >> 4 == 0)
}

/// Sizes remembered per profile.
pub const PROFILE_SIZES: usize = 64;

/// The lengths of the data packets recently sent to one destination (or by the whole node):
/// a control message is padded to one of them, drawn at random, so that its frame is as long
/// as a data frame would be. Holds the last [`PROFILE_SIZES`] lengths; recording one is a
/// store, for the per-packet path.
#[derive(Debug, Clone)]
pub struct SizeProfile {
    sizes: [u16; PROFILE_SIZES],
    len: u8,
    next: u8,
}

impl Default for SizeProfile {
    fn default() -> Self {
        Self {
            sizes: [0; PROFILE_SIZES],
            len: 0,
            next: 0,
        }
    }
}

impl SizeProfile {
    /// Remembers the length of a data packet (the end-to-end plaintext: the IP packet).
    pub fn record(&mut self, len: usize) {
        let len = u16::try_from(len).unwrap_or(u16::MAX);
        self.sizes[usize::from(self.next)] = len;
        self.next = ((usize::from(self.next) + 1) % PROFILE_SIZES) as u8;
        if usize::from(self.len) < PROFILE_SIZES {
            self.len += 1;
        }
    }

    /// Whether no length was recorded yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// A length to pad a message of `at_least` bytes to: one of the recorded lengths, chosen
    /// by `random` (a uniformly random number from the caller), among those that can hold
    /// the message. `None` when none can (the caller pads to a length of its own).
    pub fn draw(&self, random: u64, at_least: usize) -> Option<usize> {
        let fit = self.sizes[..usize::from(self.len)]
            .iter()
            .filter(|&&s| usize::from(s) >= at_least);
        let count = fit.clone().count();
        if count == 0 {
            return None;
        }
        let pick = (random % count as u64) as usize;
        fit.map(|&s| usize::from(s)).nth(pick)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn id(b: u8) -> NodeId {
        NodeId::from_bytes([b; NodeId::LEN])
    }

    #[test]
    fn requests_and_replies_round_trip_padded_or_not() {
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
            assert!(is_control(&v));
            let mut padded = Vec::new();
            m.encode_padded(&mut padded, 1280).unwrap();
            assert_eq!(padded.len(), 1280);
            assert_eq!(ControlMessage::decode(&padded).unwrap(), m);
            let mut short = Vec::new();
            m.encode_padded(&mut short, 3).unwrap();
            assert_eq!(short, v, "never cut");
        }
    }

    #[test]
    fn control_messages_never_look_like_ip_packets() {
        assert!(!is_control(&[]));
        assert!(!is_control(&[0x45, 0]), "IPv4");
        assert!(!is_control(&[0x60, 0]), "IPv6");
        assert!(is_control(&[1]));
    }

    #[test]
    fn malformed_messages_are_refused() {
        assert_eq!(ControlMessage::decode(&[]), Err(ControlError::Truncated));
        assert_eq!(
            ControlMessage::decode(&[9, 0, 0, 0, 0, 0, 0, 0, 1]),
            Err(ControlError::UnknownType(9))
        );
        assert_eq!(
            ControlMessage::decode(&[2, 0, 0, 0, 0, 0, 0, 0, 1, 7]),
            Err(ControlError::Trailing(1))
        );
        assert_eq!(
            ControlMessage::decode(&[2, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0]),
            Ok(ControlMessage::ProbeReply { id: 1 }),
            "zero padding"
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

    #[test]
    fn the_profile_draws_recorded_sizes_that_fit() {
        let mut p = SizeProfile::default();
        assert!(p.is_empty());
        assert_eq!(p.draw(3, 10), None);
        for len in [72, 1420, 40] {
            p.record(len);
        }
        let drawn: BTreeSet<usize> = (0..30).filter_map(|r| p.draw(r, 50)).collect();
        assert_eq!(drawn, BTreeSet::from([72, 1420]), "40 cannot hold 50 bytes");
        assert_eq!(p.draw(7, 2000), None);
        // Only the latest PROFILE_SIZES lengths count.
        for _ in 0..PROFILE_SIZES {
            p.record(100);
        }
        assert!((0..30).all(|r| p.draw(r, 0) == Some(100)));
        p.record(70_000);
        assert!((0..200).any(|r| p.draw(r, 0) == Some(usize::from(u16::MAX))));
    }

    proptest! {
        #[test]
        fn decoding_never_panics(b in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(m) = ControlMessage::decode(&b) {
                let mut v = Vec::new();
                m.encode_padded(&mut v, b.len()).unwrap();
                prop_assert_eq!(v, b);
            }
        }

        #[test]
        fn requests_round_trip(pid in any::<u64>(), relays in proptest::collection::vec(any::<[u8; 16]>(), 0..=MAX_PROBE_RELAYS), pad in 0usize..1500) {
            let m = ControlMessage::ProbeRequest { id: pid, relays: relays.into_iter().map(NodeId::from_bytes).collect() };
            let mut v = Vec::new();
            m.encode_padded(&mut v, pad).unwrap();
            prop_assert_eq!(v.len(), pad.max(m.encoded_len()));
            prop_assert!(is_control(&v));
            prop_assert_eq!(ControlMessage::decode(&v).unwrap(), m);
        }
    }
}
