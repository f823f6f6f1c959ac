//! Routing messages exchanged between neighbours: liveness probes, link-state adverts and their
//! acknowledgements.
//!
//! They travel as single datagrams (unreliable; adverts get their own acknowledgements and
//! retransmissions in `x0-routing`). Layout: `type u8 | body`, big-endian.
//!
//! ```text
//! Probe     = seq u32 | sent_at_us u64 | tx_interval_ms u16 | multiplier u8 |
//!             echo_sent_at_us u64 | echo_hold_us u32 | rx_loss_permille u16
//! Advert    = body (u16 len) | origin_key (u16 len) | signature (u16 len)
//!   body    = version u8 (=1) | origin [16] | seq u64 | lifetime_s u32 | count u16 |
//!             (neighbor [16] | cost u32 | class u8) * count
//! AdvertAck = count u16 | (origin [16] | seq u64) * count
//! ```
//!
//! The advert body is what the origin signs; `origin_key` is key material for the verifier: in
//! the daemon an [`crate::origin::OriginCredential`] (the origin's SVID and ML-DSA-65 key).

use crate::NodeId;
use crate::codec::{DecodeError, Reader, Writer};

/// Largest datagram a routing message may occupy.
pub const MAX_ROUTING_DATAGRAM: usize = 16 * 1024;
/// Most links one advert may list.
pub const MAX_ADVERT_LINKS: usize = 512;
const MAX_KEY: usize = 4096;
const MAX_SIGNATURE: usize = 8192;
/// Most acknowledgements in one datagram.
pub const MAX_ACKS: usize = 512;
const ADVERT_VERSION: u8 = 1;
const LINK_ENTRY_LEN: usize = NodeId::LEN + 4 + 1;

mod tag {
    pub(super) const PROBE: u8 = 0x20;
    pub(super) const ADVERT: u8 = 0x22;
    pub(super) const ADVERT_ACK: u8 = 0x23;
}

/// A liveness probe. Both ends probe; each probe also echoes the newest probe received from
/// the other end (its timestamp, and how long it was held before this one left), so each end
/// measures RTT on its own clock without separate answers, and reports the loss it sees on the
/// other end's probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    /// Sequence number, per link and direction.
    pub seq: u32,
    /// Sender's clock when sent, microseconds.
    pub sent_at_us: u64,
    /// Interval at which the sender currently probes, milliseconds.
    pub tx_interval_ms: u16,
    /// Missed probes after which the sender declares the link down.
    pub multiplier: u8,
    /// `sent_at_us` of the newest probe received from the other end (0: none yet).
    pub echo_sent_at_us: u64,
    /// Microseconds between receiving that probe and sending this one.
    pub echo_hold_us: u32,
    /// Loss the sender measures on the other end's probes, per mille.
    pub rx_loss_permille: u16,
}

/// One link in an advert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AdvertisedLink {
    /// The neighbour at the other end.
    pub neighbor: NodeId,
    /// Cost of sending from the origin to that neighbour.
    pub cost: u32,
    /// Quality class (0 = EXCELLENT … 4 = BAD).
    pub class: u8,
}

/// The signed content of a link-state advert.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AdvertBody {
    /// The node whose links these are.
    pub origin: NodeId,
    /// Grows with every new advert from the origin.
    pub seq: u64,
    /// Seconds a receiver keeps it without a refresh.
    pub lifetime_s: u32,
    /// The origin's links, sorted by neighbour.
    pub links: Vec<AdvertisedLink>,
}

impl AdvertBody {
    /// The bytes the origin signs.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        self.write(&mut w);
        w.into_inner()
    }

    fn write(&self, w: &mut Writer) {
        w.u8(ADVERT_VERSION)
            .bytes(self.origin.as_bytes())
            .u64(self.seq)
            .u32(self.lifetime_s)
            .u16(u16::try_from(self.links.len()).unwrap_or(u16::MAX));
        for l in self.links.iter().take(MAX_ADVERT_LINKS) {
            w.bytes(l.neighbor.as_bytes()).u32(l.cost).u8(l.class);
        }
    }

    /// Parses a body. Links must be sorted by neighbour and unique, and never name the origin.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let version = r.u8("advert version")?;
        if version != ADVERT_VERSION {
            return Err(DecodeError::UnsupportedVersion {
                what: "advert",
                version,
            });
        }
        let origin = NodeId::from_bytes(r.array("origin")?);
        let seq = r.u64("seq")?;
        let lifetime_s = r.u32("lifetime")?;
        let count = usize::from(r.u16("link count")?);
        if count > MAX_ADVERT_LINKS {
            return Err(DecodeError::TooLong {
                field: "links",
                len: count,
                max: MAX_ADVERT_LINKS,
            });
        }
        if r.remaining() != count * LINK_ENTRY_LEN {
            return Err(DecodeError::Invalid {
                field: "links",
                reason: "count does not match the bytes that follow",
            });
        }
        let mut links: Vec<AdvertisedLink> = Vec::with_capacity(count);
        for _ in 0..count {
            let link = AdvertisedLink {
                neighbor: NodeId::from_bytes(r.array("neighbor")?),
                cost: r.u32("cost")?,
                class: r.u8("class")?,
            };
            if link.neighbor == origin {
                return Err(DecodeError::Invalid {
                    field: "links",
                    reason: "a node cannot link to itself",
                });
            }
            if links.last().is_some_and(|l| l.neighbor >= link.neighbor) {
                return Err(DecodeError::Invalid {
                    field: "links",
                    reason: "not sorted by neighbour, or duplicated",
                });
            }
            links.push(link);
        }
        r.finish()?;
        Ok(Self {
            origin,
            seq,
            lifetime_s,
            links,
        })
    }
}

/// A link-state advert as flooded: body, key material and signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advert {
    /// The signed body, as bytes (kept verbatim so the signature can be checked).
    pub body: Vec<u8>,
    /// Key material for the verifier (may be empty).
    pub origin_key: Vec<u8>,
    /// The origin's signature over `body`.
    pub signature: Vec<u8>,
}

/// What kind of routing message a datagram holds, from its first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MessageKind {
    /// A liveness probe.
    Probe,
    /// A link-state advert.
    Advert,
    /// Advert acknowledgements.
    AdvertAck,
}

/// The kind of a routing datagram, read from its type byte alone (`None`: not a routing
/// message). For a shell that keeps probes ahead of adverts: probes decide whether a link is
/// alive and must never wait behind signature verifications.
pub fn peek_kind(datagram: &[u8]) -> Option<MessageKind> {
    match *datagram.first()? {
        tag::PROBE => Some(MessageKind::Probe),
        tag::ADVERT => Some(MessageKind::Advert),
        tag::ADVERT_ACK => Some(MessageKind::AdvertAck),
        _ => None,
    }
}

/// The origin and sequence number of an advert datagram, read without decoding the rest; for
/// telling duplicates apart cheaply. `None` if the datagram is not an advert or too short.
pub fn peek_advert(datagram: &[u8]) -> Option<(NodeId, u64)> {
    let mut r = Reader::new(datagram);
    if r.u8("type").ok()? != tag::ADVERT {
        return None;
    }
    let _body_len = r.u16("body length").ok()?;
    if r.u8("version").ok()? != ADVERT_VERSION {
        return None;
    }
    let origin = NodeId::from_bytes(r.array("origin").ok()?);
    Some((origin, r.u64("seq").ok()?))
}

impl Advert {
    /// The routing datagram carrying this advert (what [`RoutingMessage::encode`] gives for
    /// `RoutingMessage::Advert`).
    pub fn to_datagram(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u8(tag::ADVERT)
            .bytes_u16(&self.body)
            .bytes_u16(&self.origin_key)
            .bytes_u16(&self.signature);
        w.into_inner()
    }
}

/// Every routing message.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RoutingMessage {
    /// Liveness probe.
    Probe(Probe),
    /// A link-state advert (the body is decoded by [`RoutingMessage::decode`] too).
    Advert(Advert, AdvertBody),
    /// Acknowledgements of adverts: `(origin, seq)`.
    AdvertAck(Vec<(NodeId, u64)>),
}

impl RoutingMessage {
    /// Encodes one datagram.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        match self {
            Self::Probe(p) => {
                w.u8(tag::PROBE)
                    .u32(p.seq)
                    .u64(p.sent_at_us)
                    .u16(p.tx_interval_ms)
                    .u8(p.multiplier)
                    .u64(p.echo_sent_at_us)
                    .u32(p.echo_hold_us)
                    .u16(p.rx_loss_permille);
            }
            Self::Advert(a, _) => return a.to_datagram(),
            Self::AdvertAck(acks) => {
                let n = acks.len().min(MAX_ACKS);
                w.u8(tag::ADVERT_ACK).u16(n as u16);
                for (origin, seq) in &acks[..n] {
                    w.bytes(origin.as_bytes()).u64(*seq);
                }
            }
        }
        w.into_inner()
    }

    /// Decodes one datagram, including the advert body.
    pub fn decode(datagram: &[u8]) -> Result<Self, DecodeError> {
        if datagram.len() > MAX_ROUTING_DATAGRAM {
            return Err(DecodeError::TooLong {
                field: "routing datagram",
                len: datagram.len(),
                max: MAX_ROUTING_DATAGRAM,
            });
        }
        let mut r = Reader::new(datagram);
        let msg = match r.u8("routing message type")? {
            tag::PROBE => Self::Probe(Probe {
                seq: r.u32("seq")?,
                sent_at_us: r.u64("sent_at")?,
                tx_interval_ms: r.u16("tx_interval")?,
                multiplier: r.u8("multiplier")?,
                echo_sent_at_us: r.u64("echo_sent_at")?,
                echo_hold_us: r.u32("echo_hold")?,
                rx_loss_permille: r.u16("rx_loss")?,
            }),
            tag::ADVERT => {
                let advert = Advert {
                    body: r.bytes_u16("advert body", MAX_ROUTING_DATAGRAM)?.to_vec(),
                    origin_key: r.bytes_u16("origin key", MAX_KEY)?.to_vec(),
                    signature: r.bytes_u16("signature", MAX_SIGNATURE)?.to_vec(),
                };
                let body = AdvertBody::decode(&advert.body)?;
                Self::Advert(advert, body)
            }
            tag::ADVERT_ACK => {
                let n = usize::from(r.u16("ack count")?);
                if n > MAX_ACKS {
                    return Err(DecodeError::TooLong {
                        field: "acks",
                        len: n,
                        max: MAX_ACKS,
                    });
                }
                let mut acks = Vec::with_capacity(n);
                for _ in 0..n {
                    acks.push((NodeId::from_bytes(r.array("origin")?), r.u64("seq")?));
                }
                Self::AdvertAck(acks)
            }
            other => {
                return Err(DecodeError::UnknownTag {
                    field: "routing message",
                    tag: u64::from(other),
                });
            }
        };
        r.finish()?;
        Ok(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn body() -> impl Strategy<Value = AdvertBody> {
        (
            any::<[u8; 16]>(),
            any::<u64>(),
            any::<u32>(),
            proptest::collection::btree_map(any::<[u8; 16]>(), (any::<u32>(), 0u8..5), 0..20),
        )
            .prop_map(|(origin, seq, lifetime_s, links)| {
                let origin = NodeId::from_bytes(origin);
                AdvertBody {
                    origin,
                    seq,
                    lifetime_s,
                    links: links
                        .into_iter()
                        .map(|(n, (cost, class))| AdvertisedLink {
                            neighbor: NodeId::from_bytes(n),
                            cost,
                            class,
                        })
                        .filter(|l| l.neighbor != origin)
                        .collect(),
                }
            })
    }

    fn message() -> impl Strategy<Value = RoutingMessage> {
        prop_oneof![
            (
                any::<u32>(),
                any::<u64>(),
                any::<u16>(),
                any::<u8>(),
                any::<u64>(),
                any::<u32>(),
                any::<u16>()
            )
                .prop_map(|(s, t, i, m, e, h, l)| {
                    RoutingMessage::Probe(Probe {
                        seq: s,
                        sent_at_us: t,
                        tx_interval_ms: i,
                        multiplier: m,
                        echo_sent_at_us: e,
                        echo_hold_us: h,
                        rx_loss_permille: l,
                    })
                }),
            (
                body(),
                proptest::collection::vec(any::<u8>(), 0..100),
                proptest::collection::vec(any::<u8>(), 0..100)
            )
                .prop_map(|(b, k, s)| RoutingMessage::Advert(
                    Advert {
                        body: b.encode(),
                        origin_key: k,
                        signature: s
                    },
                    b
                )),
            proptest::collection::vec((any::<[u8; 16]>(), any::<u64>()), 0..30).prop_map(|v| {
                RoutingMessage::AdvertAck(
                    v.into_iter()
                        .map(|(o, s)| (NodeId::from_bytes(o), s))
                        .collect(),
                )
            }),
        ]
    }

    #[test]
    fn peek_reads_origin_and_seq_of_adverts_only() {
        let body = AdvertBody {
            origin: NodeId::from_bytes([9; 16]),
            seq: 77,
            lifetime_s: 5,
            links: vec![],
        };
        let msg = RoutingMessage::Advert(
            Advert {
                body: body.encode(),
                origin_key: vec![],
                signature: vec![1],
            },
            body,
        );
        assert_eq!(
            peek_advert(&msg.encode()),
            Some((NodeId::from_bytes([9; 16]), 77))
        );
        let probe = RoutingMessage::Probe(Probe {
            seq: 1,
            sent_at_us: 2,
            tx_interval_ms: 3,
            multiplier: 4,
            echo_sent_at_us: 5,
            echo_hold_us: 6,
            rx_loss_permille: 7,
        });
        assert_eq!(peek_advert(&probe.encode()), None);
        assert_eq!(peek_advert(&[0x22, 0, 1]), None);
        assert_eq!(peek_kind(&[]), None);
        assert_eq!(peek_kind(&[0x21]), None);
    }

    #[test]
    fn advert_rejects_self_links_and_unsorted_links() {
        let a = NodeId::from_bytes([1; 16]);
        let link = |n: u8| AdvertisedLink {
            neighbor: NodeId::from_bytes([n; 16]),
            cost: 1,
            class: 0,
        };
        let mut b = AdvertBody {
            origin: a,
            seq: 1,
            lifetime_s: 60,
            links: vec![link(1)],
        };
        assert!(AdvertBody::decode(&b.encode()).is_err());
        b.links = vec![link(3), link(2)];
        assert!(AdvertBody::decode(&b.encode()).is_err());
        b.links = vec![link(2), link(2)];
        assert!(AdvertBody::decode(&b.encode()).is_err());
        b.links = vec![link(2), link(3)];
        assert_eq!(AdvertBody::decode(&b.encode()).unwrap(), b);
    }

    proptest! {
        #[test]
        fn round_trip(msg in message()) {
            prop_assert_eq!(RoutingMessage::decode(&msg.encode()).unwrap(), msg);
        }

        #[test]
        fn truncation_is_an_error(msg in message(), cut in any::<prop::sample::Index>()) {
            let bytes = msg.encode();
            let cut = cut.index(bytes.len());
            prop_assert!(RoutingMessage::decode(&bytes[..cut]).is_err());
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = RoutingMessage::decode(&bytes);
            let _ = peek_advert(&bytes);
        }

        #[test]
        fn peek_agrees_with_decode(msg in message()) {
            let bytes = msg.encode();
            let kind = match &msg {
                RoutingMessage::Probe(_) => MessageKind::Probe,
                RoutingMessage::Advert(..) => MessageKind::Advert,
                RoutingMessage::AdvertAck(_) => MessageKind::AdvertAck,
            };
            prop_assert_eq!(peek_kind(&bytes), Some(kind));
            if let RoutingMessage::Advert(_, body) = &msg {
                prop_assert_eq!(peek_advert(&bytes), Some((body.origin, body.seq)));
            } else {
                prop_assert_eq!(peek_advert(&bytes), None);
            }
        }
    }
}
