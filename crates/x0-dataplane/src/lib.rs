//! The data plane core of x0tta6bl4, sans-IO.
//!
//! Everything between the TUN device and the UDP socket that is not I/O: parsing IP packets and
//! answering them with ICMP errors, the frame formats, the AES-256-GCM channels with replay
//! windows and key epochs, and the end-to-end TLS 1.3 handshake that keys them. No sockets, no
//! TUN, no clock, no async runtime: the daemon reads packets into its own buffers, passes
//! `now` (a [`std::time::Duration`] since its start) and wall-clock time through a rustls
//! `TimeProvider`, and sends what comes out. Nothing on the per-packet path allocates.
//!
//! Two layers of encryption (see [`frame`] and `docs/dataplane.md`):
//!
//! * **Link** (hop by hop, between neighbours): keys exported from the neighbours' QUIC/TLS
//!   link session ([`e2e::export_secrets`] with [`e2e::LINK_EXPORTER_LABEL`]); protects the
//!   overlay header, so outsiders do not even see who talks to whom.
//! * **End to end** (between the overlay endpoints): keys from a TLS 1.3 handshake the two
//!   endpoints run over the overlay ([`e2e`]); protects the inner IP packet from relays.
//!
//! | Module | Job |
//! |---|---|
//! | [`packet`] | IPv4/IPv6 header parsing, flow hash, ICMPv6/ICMPv4 errors |
//! | [`replay`] | RFC 6479 sliding anti-replay window |
//! | [`aead`] | AES-256-GCM packet keys derived from exported secrets, counter nonces |
//! | [`channel`] | send/receive key state of one channel: epochs, rekey signal, limits |
//! | [`buf`] | packets in caller buffers with head- and tailroom |
//! | [`frame`] | link frame, overlay header, end-to-end envelope; relay step |
//! | [`e2e`] | end-to-end handshake (rustls, X25519MLKEM768, SVIDs) over a lossy overlay |
//! | [`sessions`] | a node's end-to-end sessions: return-routability cookies, caps, eviction, ageing |
//! | [`control`] | control messages between endpoints (end-to-end path probes) |
//!
//! A source node: read the TUN packet at [`buf::HEADROOM`], [`e2e::E2eSession::seal`],
//! [`frame::OverlayHeader::prepend_to`], [`frame::seal_link`] with the next hop's link
//! channel, send. A relay: [`frame::open_link`], [`frame::forward_in_place`],
//! [`frame::seal_link`] toward the next hop, all in the same buffer. The destination:
//! [`frame::open_link`], [`frame::OverlayHeader::decode`], [`e2e::E2eSession::open`], write
//! the inner packet to the TUN device.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]
#![warn(missing_docs)]

pub mod aead;
pub mod buf;
pub mod channel;
pub mod control;
pub mod e2e;
pub mod frame;
pub mod packet;
pub mod replay;
pub mod sessions;
#[cfg(test)]
mod testutil;

pub use buf::PacketBuf;
pub use channel::{Channel, Limits, OpenError, SealError};
pub use e2e::{E2eConfig, E2eEvent, E2eSession};
pub use frame::{OverlayHeader, OverlayKind};
pub use replay::{Replay, ReplayWindow};
pub use sessions::{HandshakeOutcome, SessionLimits, SessionTable, SessionTableStats};
