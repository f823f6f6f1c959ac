//! End-to-end key agreement between two overlay endpoints, sans-IO.
//!
//! Relays forward overlay frames but must never read them. The two endpoints therefore run a
//! TLS 1.3 handshake of their own, carried in overlay frames of kind
//! [`OverlayKind::E2eHandshake`](crate::frame::OverlayKind), and export the data keys from it
//! (RFC 8446 §7.5). The handshake uses the same policy as links: X25519MLKEM768 only by default
//! ([`KxPolicy`]), mutual authentication with SPIFFE X.509-SVIDs checked by x0-link's
//! [`SpiffeVerifier`] (mesh CA, trust domain, revocations), and one more check the link layer
//! does not need: the peer's SVID must name the node ID the overlay frames claim.
//!
//! ## Handshake transport
//!
//! Overlay frames may be lost, duplicated or reordered, so each side's TLS bytes travel as a
//! byte stream with a tiny reliability layer ([`HandshakeMessage`]): a chunk carries its stream
//! offset and every message carries a cumulative acknowledgement of the peer's stream. The
//! receiver reassembles in order (bounded by [`MAX_HANDSHAKE_STREAM`]) before feeding rustls;
//! the sender retransmits everything unacknowledged when its timer fires (initial
//! [`E2eConfig::initial_rto`], doubling up to [`E2eConfig::max_rto`]). Time is the caller's
//! `now`; the session never reads a clock.
//!
//! ## Who may start a handshake
//!
//! Overlay sources are not authenticated, so a new handshake from the peer is answered only
//! once it has proven that it receives what is sent to the node it claims to be: its first
//! message gets a stateless **retry** with a cookie, and the client sends its stream again with
//! the cookie ([`HandshakeMessage`]; cookies are issued and checked by
//! [`crate::sessions::SessionTable`], through which sessions receive handshake messages).
//!
//! ## Concurrent handshakes and collisions
//!
//! A session holds the **current** handshake (its keys are installed), at most one handshake
//! of **ours** (client) and at most one of **theirs** (server). A running handshake replaces
//! the current keys only once it has authenticated the peer; then the other running one is
//! dropped. A failing handshake drops only itself: the current keys keep working. A newer
//! cookie-validated handshake of the peer replaces the peer's older running one (only the peer,
//! or a relay on its path, can pass the cookie check). When both start at once
//! ([`E2eSession::initiate`] makes this node the TLS client), the node with the lower node ID
//! keeps its client handshake and ignores the peer's; the higher one answers the peer's and
//! parks its own (sends nothing) until one of the two authenticates, resuming it if the
//! peer's fails. The outcome depends only on the two IDs.
//!
//! ## Keys and epochs
//!
//! A handshake negotiates one key epoch (chosen by the client: the current one plus 1). On
//! completion each side exports two 32-byte secrets with label [`E2E_EXPORTER_LABEL`] and
//! context `[direction, epoch]` (direction 0: client to server, 1: server to client) into the
//! [`Channel`]. The server installs both at once. The client installs its receive key at once
//! but keeps sending under the old epoch until the server has acknowledged the client's last
//! handshake bytes (or a packet of the new epoch arrived), because only then does it know the
//! server can open them. The previous receive key stays for a grace period
//! ([`crate::channel`]), so nothing in flight is lost across a rekey.
//!
//! Rekeying is a fresh handshake (new ephemeral X25519MLKEM768 shares, so each epoch has forward
//! secrecy of its own), started by [`E2eSession::handle_timeout`] when the send key reaches
//! [`Limits::rekey_after_time`] (120 s) or [`Limits::rekey_after_packets`] (2^32), unless the
//! session is idle ([`E2eConfig::idle_timeout`]: nothing sealed or opened for 180 s), in which
//! case its keys run out and its table frees it.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::crypto::aws_lc_rs::{self as provider, kx_group};
use rustls::server::NoServerSessionStorage;
use rustls::time_provider::TimeProvider;
use rustls::version::TLS13;
use rustls::{
    ClientConfig, ClientConnection, Connection, NamedGroup, ServerConfig, ServerConnection,
};
use rustls_pki_types::ServerName;
use thiserror::Error;
use x0_link::kx::KxPolicy;
use x0_link::trust::SpiffeVerifier;
use x0_link::{LocalIdentity, TrustState};
use x0_wire::codec::Reader;
use x0_wire::{DecodeError, NodeId};

use crate::aead::{KeySetupError, SECRET_LEN, TrafficSecret};
use crate::buf::PacketBuf;
use crate::channel::{Channel, Limits, SealError};
use crate::frame::{E2eHeader, OverlayHeader, RecvError, open_e2e, seal_e2e};
use crate::sessions::CookieJar;

/// ALPN of the end-to-end handshake.
pub const E2E_ALPN: &[u8] = b"x0t-e2e/1";
/// Exporter label of end-to-end data keys.
pub const E2E_EXPORTER_LABEL: &[u8] = b"EXPORTER-x0t-e2e-data";
/// Exporter label of link data keys (exported from the neighbours' QUIC/TLS session).
pub const LINK_EXPORTER_LABEL: &[u8] = b"EXPORTER-x0t-link-data";
/// Length of a handshake message header.
pub const HANDSHAKE_HEADER_LEN: usize = 24;
/// Largest chunk of TLS bytes in one handshake message, so that a message with an overlay
/// header (even with an explicit path) and a link frame around it fits a 1,280-byte path.
pub const MAX_HANDSHAKE_CHUNK: usize = 900;
/// Largest TLS byte stream one side may send in one handshake; bounds reassembly memory.
pub const MAX_HANDSHAKE_STREAM: u32 = 64 * 1024;
/// Handshake IDs of completed handshakes remembered, so that late duplicates of their first
/// message do not start a new handshake.
const COMPLETED_MEMORY: usize = 4;

/// The sender's TLS role in a handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TlsRole {
    /// The initiator.
    Client,
    /// The responder.
    Server,
}

/// Length of a return-routability cookie ([`HandshakeMessage::cookie`]).
pub const COOKIE_LEN: usize = 16;
/// A return-routability cookie.
pub type Cookie = [u8; COOKIE_LEN];
/// Largest handshake message: the header and [`MAX_HANDSHAKE_CHUNK`] bytes (cookie and data).
pub const MAX_HANDSHAKE_MESSAGE: usize = HANDSHAKE_HEADER_LEN + MAX_HANDSHAKE_CHUNK;
/// Length of a retry message (header and cookie); a retry answers only a message at least this
/// long, so that it never amplifies.
pub const RETRY_LEN: usize = HANDSHAKE_HEADER_LEN + COOKIE_LEN;

const FLAG_COOKIE: u8 = 0x01;
const FLAG_RETRY: u8 = 0x02;

/// One message of the handshake transport (the payload of an e2e-handshake overlay frame).
///
/// | Offset | Size | Field |
/// |---|---|---|
/// | 0 | 1 | sender's role: 0 client, 1 server |
/// | 1 | 1 | key epoch the handshake negotiates |
/// | 2 | 1 | flags: `0x01` cookie present, `0x02` retry; other bits refused |
/// | 3 | 1 | reserved, zero |
/// | 4 | 8 | handshake ID, chosen at random by the client |
/// | 12 | 4 | sender's session index (the receiver writes it into e2e headers it sends) |
/// | 16 | 4 | acknowledgement: bytes of the receiver's stream received in order so far |
/// | 20 | 4 | stream offset of `data` |
/// | 24 | 16 | *if flag `0x01`:* the cookie |
/// | … | … | `data`: TLS bytes (empty: acknowledgement only) |
///
/// Cookie and data together are at most [`MAX_HANDSHAKE_CHUNK`] bytes. A **retry** (flag
/// `0x02`) comes from a server that holds no state for the handshake: role server, a cookie, no
/// data, offset and acknowledgement zero. The client then sends its stream again from offset 0
/// with the cookie in every message (role client, flag `0x01`), which proves that it receives
/// what is sent to the node it claims to be before the server keeps any state for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandshakeMessage<'a> {
    /// The sender's role.
    pub role: TlsRole,
    /// The epoch being negotiated.
    pub epoch: u8,
    /// Identifies the handshake.
    pub handshake_id: u64,
    /// The sender's session index.
    pub sender_index: u32,
    /// Cumulative acknowledgement of the receiver's stream.
    pub ack: u32,
    /// Offset of `data` in the sender's stream.
    pub offset: u32,
    /// The return-routability cookie: issued in a retry, echoed by the client.
    pub cookie: Option<Cookie>,
    /// Whether this is a retry (server to client: resend with `cookie`).
    pub retry: bool,
    /// TLS bytes.
    pub data: &'a [u8],
}

impl<'a> HandshakeMessage<'a> {
    /// A retry answering the client message `to`: the client must send its stream again with
    /// `cookie`.
    pub fn retry(to: &HandshakeMessage<'_>, cookie: Cookie) -> HandshakeMessage<'static> {
        HandshakeMessage {
            role: TlsRole::Server,
            epoch: to.epoch,
            handshake_id: to.handshake_id,
            sender_index: 0,
            ack: 0,
            offset: 0,
            cookie: Some(cookie),
            retry: true,
            data: &[],
        }
    }

    /// The message's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let cookie_len = self.cookie.map_or(0, |_| COOKIE_LEN);
        let mut v = Vec::with_capacity(HANDSHAKE_HEADER_LEN + cookie_len + self.data.len());
        v.push(match self.role {
            TlsRole::Client => 0,
            TlsRole::Server => 1,
        });
        v.push(self.epoch);
        let mut flags = 0;
        if self.cookie.is_some() {
            flags |= FLAG_COOKIE;
        }
        if self.retry {
            flags |= FLAG_RETRY;
        }
        v.extend_from_slice(&[flags, 0]);
        v.extend_from_slice(&self.handshake_id.to_be_bytes());
        v.extend_from_slice(&self.sender_index.to_be_bytes());
        v.extend_from_slice(&self.ack.to_be_bytes());
        v.extend_from_slice(&self.offset.to_be_bytes());
        if let Some(c) = &self.cookie {
            v.extend_from_slice(c);
        }
        v.extend_from_slice(self.data);
        v
    }

    /// Reads a message, refusing anything out of bounds or inconsistent.
    pub fn decode(buf: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(buf);
        let role = match r.u8("handshake role")? {
            0 => TlsRole::Client,
            1 => TlsRole::Server,
            tag => {
                return Err(DecodeError::UnknownTag {
                    field: "handshake role",
                    tag: tag.into(),
                });
            }
        };
        let epoch = r.u8("handshake epoch")?;
        let flags = r.u8("handshake flags")?;
        if flags & !(FLAG_COOKIE | FLAG_RETRY) != 0 {
            return Err(DecodeError::Invalid {
                field: "handshake flags",
                reason: "unknown flag",
            });
        }
        if r.u8("handshake reserved")? != 0 {
            return Err(DecodeError::Invalid {
                field: "handshake reserved",
                reason: "must be zero",
            });
        }
        let handshake_id = r.u64("handshake id")?;
        let sender_index = r.u32("sender index")?;
        let ack = r.u32("handshake ack")?;
        let offset = r.u32("handshake offset")?;
        let cookie = if flags & FLAG_COOKIE != 0 {
            let mut c = [0u8; COOKIE_LEN];
            c.copy_from_slice(r.bytes(COOKIE_LEN, "handshake cookie")?);
            Some(c)
        } else {
            None
        };
        let retry = flags & FLAG_RETRY != 0;
        let data = r.bytes(r.remaining(), "handshake data")?;
        let max = MAX_HANDSHAKE_CHUNK - cookie.map_or(0, |_| COOKIE_LEN);
        if data.len() > max {
            return Err(DecodeError::TooLong {
                field: "handshake data",
                len: data.len(),
                max,
            });
        }
        let end = u64::from(offset) + data.len() as u64;
        if end > u64::from(MAX_HANDSHAKE_STREAM) || ack > MAX_HANDSHAKE_STREAM {
            return Err(DecodeError::Invalid {
                field: "handshake offset",
                reason: "beyond the largest handshake stream",
            });
        }
        let consistent = match (role, retry) {
            (TlsRole::Server, true) => {
                cookie.is_some() && data.is_empty() && offset == 0 && ack == 0
            }
            (TlsRole::Client, true) => false,
            // Only a client echoes a cookie.
            (TlsRole::Server, false) => cookie.is_none(),
            (TlsRole::Client, false) => true,
        };
        if !consistent {
            return Err(DecodeError::Invalid {
                field: "handshake flags",
                reason: "a retry is a server's, with a cookie and nothing else; only a client echoes a cookie",
            });
        }
        Ok(Self {
            role,
            epoch,
            handshake_id,
            sender_index,
            ack,
            offset,
            cookie,
            retry,
            data,
        })
    }
}

/// Exports the two data-key secrets of a TLS session: `(send, receive)` for the side whose
/// role is `role`. `export(out, label, context)` is the session's RFC 8446 §7.5 exporter
/// (`rustls::ConnectionCommon::export_keying_material`, `quinn::Connection::export_keying_material`).
/// The context is the direction byte (0: client to server, 1: server to client) followed by
/// the 64-bit key generation, so every generation and direction gets its own secret; the wire
/// epoch is the generation's low byte. For links, where one QUIC session serves many
/// generations, the generation must never repeat within the session.
pub fn export_secrets<E>(
    mut export: impl FnMut(&mut [u8; SECRET_LEN], &[u8], &[u8]) -> Result<(), E>,
    label: &[u8],
    role: TlsRole,
    generation: u64,
) -> Result<(TrafficSecret, TrafficSecret), E> {
    let mut one = |direction: u8| {
        let mut ctx = [0u8; 9];
        ctx[0] = direction;
        ctx[1..].copy_from_slice(&generation.to_be_bytes());
        let mut out = [0u8; SECRET_LEN];
        export(&mut out, label, &ctx)?;
        Ok(TrafficSecret::new(out))
    };
    let c2s = one(0)?;
    let s2c = one(1)?;
    Ok(match role {
        TlsRole::Client => (c2s, s2c),
        TlsRole::Server => (s2c, c2s),
    })
}

/// Settings of end-to-end sessions.
#[derive(Debug, Clone)]
pub struct E2eConfig {
    /// This node's SVID and key.
    pub identity: Arc<LocalIdentity>,
    /// The mesh CA bundle and revocations.
    pub trust: Arc<TrustState>,
    /// Key-exchange groups offered and accepted.
    pub kx_policy: KxPolicy,
    /// Wall-clock time for certificate validity (rustls's `DefaultTimeProvider` in the
    /// daemon, a fixed time in tests).
    pub time: Arc<dyn TimeProvider>,
    /// Rekey and key-retirement limits of the data channel.
    pub limits: Limits,
    /// First retransmission timeout. Default 250 ms.
    pub initial_rto: Duration,
    /// Largest retransmission timeout. Default 4 s.
    pub max_rto: Duration,
    /// A handshake not finished after this long fails. Default 20 s.
    pub handshake_timeout: Duration,
    /// Wait before an automatic rekey retries after a failure. Default 2 s.
    pub retry_after_failure: Duration,
    /// A session that sealed and opened nothing for this long is idle: it starts no rekey, and
    /// its [`crate::sessions::SessionTable`] frees it once its keys have expired (the peer's
    /// expire at the same time, so neither side is left sending into a session the other has
    /// freed). Default 180 s.
    pub idle_timeout: Duration,
}

impl E2eConfig {
    /// The defaults, for `identity` and `trust`.
    pub fn new(
        identity: Arc<LocalIdentity>,
        trust: Arc<TrustState>,
        time: Arc<dyn TimeProvider>,
    ) -> Self {
        Self {
            identity,
            trust,
            kx_policy: KxPolicy::default(),
            time,
            limits: Limits::default(),
            initial_rto: Duration::from_millis(250),
            max_rto: Duration::from_secs(4),
            handshake_timeout: Duration::from_secs(20),
            retry_after_failure: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(180),
        }
    }
}

/// Why a handshake failed or a message was refused.
#[derive(Debug, Clone, PartialEq, Error)]
#[non_exhaustive]
pub enum E2eError {
    /// The handshake message does not parse.
    #[error(transparent)]
    Malformed(#[from] DecodeError),
    /// TLS failed (bad certificate, no common group, bad message, ...).
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    /// The peer's SVID names another node than the overlay frames claim.
    #[error("peer certificate names node {got}, expected {expected}")]
    PeerMismatch {
        /// The node the frames came from.
        expected: NodeId,
        /// The node the SVID names.
        got: NodeId,
    },
    /// The peer presented no (verified) certificate.
    #[error("peer presented no verified SVID")]
    NoPeerCertificate,
    /// A group the policy does not allow was negotiated.
    #[error("negotiated key exchange {0:?} not allowed by policy")]
    WrongGroup(Option<NamedGroup>),
    /// The handshake did not finish in time.
    #[error("handshake timed out")]
    Timeout,
    /// The peer's stream exceeded [`MAX_HANDSHAKE_STREAM`] or the TLS layer wrote too much.
    #[error("handshake stream too long")]
    StreamTooLong,
    /// Key setup failed.
    #[error(transparent)]
    Key(#[from] KeySetupError),
}

/// What happened in a session.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum E2eEvent {
    /// A handshake completed and keys of `epoch` were installed.
    KeysInstalled {
        /// The new epoch.
        epoch: u8,
        /// Our role in that handshake.
        role: TlsRole,
        /// The negotiated key-exchange group.
        group: NamedGroup,
    },
    /// The client switched its send key to the new epoch (the server confirmed).
    SendKeySwitched {
        /// The epoch now used for sending.
        epoch: u8,
    },
    /// A handshake failed.
    HandshakeFailed(E2eError),
}

/// Counters of a session, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct E2eStats {
    /// Handshakes started as client.
    pub initiated: u64,
    /// Handshakes answered as server.
    pub answered: u64,
    /// Handshakes completed.
    pub completed: u64,
    /// Handshakes completed while keys were already in place: rekeys.
    pub rekeys: u64,
    /// Handshakes failed.
    pub failed: u64,
    /// Retransmission timer firings.
    pub retransmits: u64,
    /// Handshake messages ignored (stale, foreign, lost collision).
    pub ignored: u64,
    /// Retries (cookie requests) received for our handshakes and honoured.
    pub retries_received: u64,
    /// Stateless retries sent: new handshakes from the peer without a valid cookie.
    pub retries_sent: u64,
    /// Peer handshakes ignored because ours runs and our node ID is the lower.
    pub collisions: u64,
    /// Running peer handshakes replaced by a newer cookie-validated one from the peer.
    pub candidates_replaced: u64,
    /// Running handshakes dropped because another one authenticated first.
    pub superseded: u64,
}

impl E2eStats {
    /// Adds `other` to these counters.
    pub fn add(&mut self, other: &E2eStats) {
        self.initiated += other.initiated;
        self.answered += other.answered;
        self.completed += other.completed;
        self.rekeys += other.rekeys;
        self.failed += other.failed;
        self.retransmits += other.retransmits;
        self.ignored += other.ignored;
        self.retries_received += other.retries_received;
        self.retries_sent += other.retries_sent;
        self.collisions += other.collisions;
        self.candidates_replaced += other.candidates_replaced;
        self.superseded += other.superseded;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Running,
    /// Keys installed; a client still waits for the server's confirmation.
    KeysInstalled,
    Confirmed,
}

struct Handshake {
    role: TlsRole,
    id: u64,
    epoch: u8,
    tls: Connection,
    verifier: Arc<SpiffeVerifier>,
    /// Everything we wrote, from offset 0.
    out: Vec<u8>,
    acked: u32,
    sent: u32,
    /// Bytes of the peer's stream received in order.
    in_next: u32,
    pending: BTreeMap<u32, Vec<u8>>,
    owe_ack: bool,
    rto: Duration,
    retransmit_at: Option<Duration>,
    deadline: Duration,
    peer_index: Option<u32>,
    stage: Stage,
    /// The client's send secret, held until the server confirms.
    pending_tx: Option<TrafficSecret>,
    /// Client: the server's cookie, echoed in every message once received.
    cookie: Option<Cookie>,
    /// Client: silent while the peer's handshake (lower node ID) runs; resumes if that fails.
    parked: bool,
}

impl Handshake {
    fn outstanding(&self) -> bool {
        (self.acked as usize) < self.out.len()
    }

    fn unsent(&self) -> bool {
        (self.sent as usize) < self.out.len()
    }
}

static PROVIDERS: LazyLock<[Arc<CryptoProvider>; 3]> = LazyLock::new(|| {
    let base = provider::default_provider();
    let with = |kx_groups| {
        Arc::new(CryptoProvider {
            kx_groups,
            ..base.clone()
        })
    };
    [
        with(vec![kx_group::X25519MLKEM768]),
        with(vec![
            kx_group::X25519MLKEM768,
            kx_group::X25519,
            kx_group::SECP256R1,
        ]),
        with(vec![kx_group::X25519]),
    ]
});

fn provider_for(policy: KxPolicy) -> Arc<CryptoProvider> {
    PROVIDERS[match policy {
        KxPolicy::PostQuantumOnly => 0,
        KxPolicy::AllowClassicalDangerous => 1,
        KxPolicy::ClassicalOnlyForTesting => 2,
    }]
    .clone()
}

/// Which handshake of a session a message belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    /// The handshake whose keys are installed.
    Current,
    /// Our running client handshake.
    Ours,
    /// The peer's running handshake, which we answer as server.
    Theirs,
}

/// What [`E2eSession::handle_handshake`] did with a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Handled {
    /// The message went to one of the session's handshakes.
    Fed,
    /// Send this stateless retry back; nothing was stored.
    Retry(Vec<u8>),
    /// Dropped (stale, foreign, too short to answer, lost collision); counted.
    Ignored,
}

/// The end-to-end session with one peer: handshakes, rekeys and the data channel.
///
/// A session holds at most three handshakes: the **current** one (completed; its keys are in
/// the channel; kept to acknowledge the peer's retransmissions and, for a client, to switch the
/// send key once the server confirmed), **ours** (a client handshake we started, running) and
/// **theirs** (the peer's, which we answer as server, running). A running handshake replaces
/// the current keys only once it has authenticated the peer (its TLS handshake completed with
/// an SVID naming the peer); then the other running one, if any, is dropped. Nothing an
/// unauthenticated message says can remove the current keys or our handshake.
///
/// Sessions receive handshake messages through a [`crate::sessions::SessionTable`], which
/// checks the cookies of new peer handshakes (see [`HandshakeMessage`]) and bounds how many
/// sessions exist.
pub struct E2eSession {
    config: Arc<E2eConfig>,
    local: NodeId,
    peer: NodeId,
    local_index: u32,
    peer_index: Option<u32>,
    channel: Channel,
    epoch: Option<u8>,
    current: Option<Handshake>,
    ours: Option<Handshake>,
    theirs: Option<Handshake>,
    completed: VecDeque<u64>,
    retry_at: Option<Duration>,
    /// When data was last sealed or opened (or the first keys installed).
    last_activity: Option<Duration>,
    events: VecDeque<E2eEvent>,
    stats: E2eStats,
}

impl std::fmt::Debug for E2eSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let brief = |h: &Option<Handshake>| h.as_ref().map(|h| (h.role, h.epoch, h.stage));
        f.debug_struct("E2eSession")
            .field("local", &self.local)
            .field("peer", &self.peer)
            .field("local_index", &self.local_index)
            .field("peer_index", &self.peer_index)
            .field("epoch", &self.epoch)
            .field("current", &brief(&self.current))
            .field("ours", &brief(&self.ours))
            .field("theirs", &brief(&self.theirs))
            .field("channel", &self.channel)
            .finish_non_exhaustive()
    }
}

impl E2eSession {
    /// A session of `local` with `peer`; `local_index` is the index under which the daemon
    /// finds this session when an e2e header names it.
    pub fn new(config: Arc<E2eConfig>, local: NodeId, peer: NodeId, local_index: u32) -> Self {
        let limits = config.limits;
        Self {
            config,
            local,
            peer,
            local_index,
            peer_index: None,
            channel: Channel::new(limits),
            epoch: None,
            current: None,
            ours: None,
            theirs: None,
            completed: VecDeque::new(),
            retry_at: None,
            last_activity: None,
            events: VecDeque::new(),
            stats: E2eStats::default(),
        }
    }

    /// This node.
    pub fn local(&self) -> NodeId {
        self.local
    }

    /// The peer.
    pub fn peer(&self) -> NodeId {
        self.peer
    }

    /// Our session index.
    pub fn local_index(&self) -> u32 {
        self.local_index
    }

    /// The peer's session index, once a handshake completed.
    pub fn peer_index(&self) -> Option<u32> {
        self.peer_index
    }

    /// Whether data can be sealed.
    pub fn is_established(&self) -> bool {
        self.peer_index.is_some() && self.channel.tx_epoch().is_some()
    }

    /// The epoch of the newest completed handshake.
    pub fn epoch(&self) -> Option<u8> {
        self.epoch
    }

    /// Whether a handshake is running (ours or the peer's, not yet finished on this side), or
    /// ours finished but waits for the server's confirmation before it sends under the new
    /// keys.
    pub fn is_handshaking(&self) -> bool {
        self.running()
            || self
                .current
                .as_ref()
                .is_some_and(|h| h.stage == Stage::KeysInstalled)
    }

    /// Whether ours or the peer's handshake runs.
    fn running(&self) -> bool {
        self.ours.is_some() || self.theirs.is_some()
    }

    /// When data was last sealed or opened (or the first keys were installed).
    pub fn last_activity(&self) -> Option<Duration> {
        self.last_activity
    }

    /// Whether the session sealed and opened nothing for [`E2eConfig::idle_timeout`]. A
    /// session that never had keys is not idle (it is pending).
    pub fn is_idle(&self, now: Duration) -> bool {
        self.last_activity
            .is_some_and(|t| now.saturating_sub(t) >= self.config.idle_timeout)
    }

    /// Whether nothing is left to do: no handshake running, no event or message waiting.
    fn is_quiet(&self) -> bool {
        !self.running()
            && self.events.is_empty()
            && self
                .current
                .as_ref()
                .is_none_or(|h| h.stage == Stage::Confirmed && !h.owe_ack && !h.unsent())
    }

    /// When this session may be freed: for an idle session, once its keys expired (no rekey
    /// starts while idle, and the peer's keys of the same handshake expire with ours); for a
    /// session that never got keys, as soon as no handshake runs. `None` while it is in use.
    pub fn expires_at(&self) -> Option<Duration> {
        if !self.is_quiet() {
            return None;
        }
        match self.last_activity {
            None => Some(Duration::ZERO),
            Some(t) => {
                let idle = t.saturating_add(self.config.idle_timeout);
                Some(self.channel.keys_expire_at().map_or(idle, |k| k.max(idle)))
            }
        }
    }

    /// Whether a rekey may start now: a session exists, it is not idle, and no handshake is
    /// running or waiting for the peer's confirmation.
    fn may_rekey(&self, now: Duration) -> bool {
        self.epoch.is_some()
            && !self.is_handshaking()
            && self
                .current
                .as_ref()
                .is_none_or(|h| h.stage == Stage::Confirmed)
            && !self.is_idle(now)
    }

    /// The data channel.
    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// Counters.
    pub fn stats(&self) -> E2eStats {
        self.stats
    }

    /// Starts a handshake as client, unless one is already running. A failure is also
    /// reported as an [`E2eEvent::HandshakeFailed`].
    pub fn initiate(&mut self, now: Duration) -> Result<(), E2eError> {
        if self.is_handshaking() {
            return Ok(());
        }
        self.stats.initiated += 1;
        match self.client_handshake(now) {
            Ok(hs) => {
                self.ours = Some(hs);
                Ok(())
            }
            Err(e) => Err(self.fail(Slot::Ours, now, e)),
        }
    }

    fn client_handshake(&self, now: Duration) -> Result<Handshake, E2eError> {
        let mut id = [0u8; 8];
        aws_lc_rs::rand::fill(&mut id).map_err(|_| KeySetupError)?;
        let epoch = self.epoch.map_or(0, |e| e.wrapping_add(1));
        let verifier = SpiffeVerifier::new(self.config.trust.clone());
        let mut cfg = ClientConfig::builder_with_details(
            provider_for(self.config.kx_policy),
            self.config.time.clone(),
        )
        .with_protocol_versions(&[&TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_client_cert_resolver(self.config.identity.clone());
        cfg.alpn_protocols = vec![E2E_ALPN.to_vec()];
        cfg.resumption = rustls::client::Resumption::disabled();
        cfg.enable_sni = false;
        // The verifier checks the SVID, not a DNS name; SNI is off, so this never leaves.
        let name = ServerName::try_from("e2e.x0t.invalid").map_err(|_| KeySetupError)?;
        let tls = ClientConnection::new(Arc::new(cfg), name)?;
        self.start(
            now,
            TlsRole::Client,
            u64::from_be_bytes(id),
            epoch,
            tls.into(),
            verifier,
        )
    }

    fn start(
        &self,
        now: Duration,
        role: TlsRole,
        id: u64,
        epoch: u8,
        tls: Connection,
        verifier: Arc<SpiffeVerifier>,
    ) -> Result<Handshake, E2eError> {
        let mut hs = Handshake {
            role,
            id,
            epoch,
            tls,
            verifier,
            out: Vec::new(),
            acked: 0,
            sent: 0,
            in_next: 0,
            pending: BTreeMap::new(),
            owe_ack: false,
            rto: self.config.initial_rto,
            retransmit_at: None,
            deadline: now.saturating_add(self.config.handshake_timeout),
            peer_index: None,
            stage: Stage::Running,
            pending_tx: None,
            cookie: None,
            parked: false,
        };
        drain_tls(&mut hs)?;
        Ok(hs)
    }

    fn answer(&mut self, now: Duration, msg: &HandshakeMessage<'_>) -> Result<Handshake, E2eError> {
        let verifier = SpiffeVerifier::new(self.config.trust.clone());
        let mut cfg = ServerConfig::builder_with_details(
            provider_for(self.config.kx_policy),
            self.config.time.clone(),
        )
        .with_protocol_versions(&[&TLS13])?
        .with_client_cert_verifier(verifier.clone())
        .with_cert_resolver(self.config.identity.clone());
        cfg.alpn_protocols = vec![E2E_ALPN.to_vec()];
        cfg.max_early_data_size = 0;
        cfg.send_tls13_tickets = 0;
        cfg.session_storage = Arc::new(NoServerSessionStorage {});
        let tls = ServerConnection::new(Arc::new(cfg))?;
        self.stats.answered += 1;
        self.start(
            now,
            TlsRole::Server,
            msg.handshake_id,
            msg.epoch,
            tls.into(),
            verifier,
        )
    }

    fn slot(&mut self, slot: Slot) -> &mut Option<Handshake> {
        match slot {
            Slot::Current => &mut self.current,
            Slot::Ours => &mut self.ours,
            Slot::Theirs => &mut self.theirs,
        }
    }

    /// Handles the payload of an e2e-handshake overlay frame whose source is the peer.
    /// Messages of stale or foreign handshakes are ignored (counted). A new handshake from the
    /// peer is answered only with a valid cookie from `cookies`; without one the answer is a
    /// stateless retry. A TLS failure ends that handshake only (the current keys stay) and is
    /// also reported as an [`E2eEvent::HandshakeFailed`].
    pub(crate) fn handle_handshake(
        &mut self,
        now: Duration,
        payload: &[u8],
        cookies: &CookieJar,
    ) -> Result<Handled, E2eError> {
        let msg = HandshakeMessage::decode(payload)?;
        let matches = |h: &Option<Handshake>, role: TlsRole| {
            h.as_ref()
                .is_some_and(|h| h.id == msg.handshake_id && h.role == role)
        };
        let slot = match msg.role {
            TlsRole::Server if matches(&self.ours, TlsRole::Client) => Slot::Ours,
            TlsRole::Server if !msg.retry && matches(&self.current, TlsRole::Client) => {
                Slot::Current
            }
            TlsRole::Client if matches(&self.theirs, TlsRole::Server) => Slot::Theirs,
            TlsRole::Client if matches(&self.current, TlsRole::Server) => Slot::Current,
            TlsRole::Server => return Ok(self.ignore()),
            TlsRole::Client => return self.open_theirs(now, &msg, payload.len(), cookies),
        };
        if msg.retry {
            self.take_retry(now, &msg);
            return Ok(Handled::Fed);
        }
        self.feed_slot(slot, now, &msg)?;
        Ok(Handled::Fed)
    }

    fn ignore(&mut self) -> Handled {
        self.stats.ignored += 1;
        Handled::Ignored
    }

    /// A client message of a handshake we hold no state for: the peer's new handshake.
    fn open_theirs(
        &mut self,
        now: Duration,
        msg: &HandshakeMessage<'_>,
        len: usize,
        cookies: &CookieJar,
    ) -> Result<Handled, E2eError> {
        // Any chunk of a new client stream may open it (the first chunk may be lost); a bare
        // acknowledgement may not, nor a late copy from a finished handshake.
        if msg.data.is_empty() || self.completed.contains(&msg.handshake_id) {
            return Ok(self.ignore());
        }
        match cookies.admit(self.peer, msg, len, now) {
            Ok(()) => {}
            Err(Some(retry)) => {
                self.stats.retries_sent += 1;
                return Ok(Handled::Retry(retry));
            }
            // Too short to be answered without amplification.
            Err(None) => return Ok(self.ignore()),
        }
        // Both started: the lower node ID keeps its client handshake and ignores the peer's;
        // the higher one answers and parks its own until one of the two authenticates. The
        // outcome depends on the two IDs only (a forger cannot pass the cookie check).
        if self.ours.is_some() {
            if self.local < self.peer {
                self.stats.collisions += 1;
                return Ok(self.ignore());
            }
            if let Some(o) = self.ours.as_mut() {
                o.parked = true;
                o.retransmit_at = None;
            }
        }
        if self.theirs.take().is_some() {
            // The peer itself (it passed the cookie check) started over.
            self.stats.candidates_replaced += 1;
        }
        match self.answer(now, msg) {
            Ok(hs) => self.theirs = Some(hs),
            Err(e) => return Err(self.fail(Slot::Theirs, now, e)),
        }
        self.feed_slot(Slot::Theirs, now, msg)?;
        Ok(Handled::Fed)
    }

    /// The server holds no state for our handshake and asks for its cookie to come back.
    fn take_retry(&mut self, now: Duration, msg: &HandshakeMessage<'_>) {
        let Some(hs) = self.ours.as_mut() else {
            return;
        };
        // Once the server's data arrived, its state exists: a retry then is stale or forged.
        if hs.in_next > 0 || hs.cookie == msg.cookie {
            self.stats.ignored += 1;
            return;
        }
        hs.cookie = msg.cookie;
        hs.acked = 0;
        hs.sent = 0;
        hs.rto = self.config.initial_rto;
        hs.retransmit_at = (!hs.parked).then(|| now.saturating_add(hs.rto));
        self.stats.retries_received += 1;
    }

    /// Feeds `msg` to the handshake in `slot`; promotes it to current once it authenticated.
    fn feed_slot(
        &mut self,
        slot: Slot,
        now: Duration,
        msg: &HandshakeMessage<'_>,
    ) -> Result<(), E2eError> {
        let Some(mut hs) = self.slot(slot).take() else {
            return Ok(());
        };
        let mut result = feed(&mut hs, &self.config, now, msg);
        if result.is_ok() && hs.stage == Stage::Running && !hs.tls.is_handshaking() {
            result = self.complete(&mut hs, now);
            if result.is_ok() {
                // Authenticated: it replaces the current handshake, and the other running one
                // (at most one: the peer's and our parked one) is no longer needed.
                let other = match slot {
                    Slot::Ours => self.theirs.take(),
                    _ => self.ours.take(),
                };
                if other.is_some() {
                    self.stats.superseded += 1;
                }
                self.current = Some(hs);
                return self.maybe_confirm(now);
            }
        }
        match result {
            Ok(()) => {
                *self.slot(slot) = Some(hs);
                self.maybe_confirm(now)
            }
            Err(e) => Err(self.fail(slot, now, e)),
        }
    }

    /// The TLS handshake `hs` finished on this side: check the peer, export and install keys.
    fn complete(&mut self, hs: &mut Handshake, now: Duration) -> Result<(), E2eError> {
        let svid = hs.verifier.verified().ok_or(E2eError::NoPeerCertificate)?;
        if hs.tls.peer_certificates().is_none() {
            return Err(E2eError::NoPeerCertificate);
        }
        if svid.node_id != self.peer {
            return Err(E2eError::PeerMismatch {
                expected: self.peer,
                got: svid.node_id,
            });
        }
        let group = hs.tls.negotiated_key_exchange_group().map(|g| g.name());
        let allowed = match self.config.kx_policy {
            KxPolicy::PostQuantumOnly => group == Some(NamedGroup::X25519MLKEM768),
            _ => group.is_some(),
        };
        let Some(group) = group.filter(|_| allowed) else {
            return Err(E2eError::WrongGroup(group));
        };
        let tls = &hs.tls;
        let (tx, rx) = export_secrets(
            |out, label, ctx| {
                tls.export_keying_material(out, label, Some(ctx))
                    .map(|_| ())
            },
            E2E_EXPORTER_LABEL,
            hs.role,
            u64::from(hs.epoch),
        )?;
        self.channel.install_rx(hs.epoch, &rx, now)?;
        match hs.role {
            TlsRole::Server => {
                self.channel.install_tx(hs.epoch, &tx, now)?;
                hs.stage = Stage::Confirmed;
            }
            TlsRole::Client => {
                hs.pending_tx = Some(tx);
                hs.stage = Stage::KeysInstalled;
            }
        }
        hs.pending.clear();
        hs.parked = false;
        if self.epoch.is_some() {
            self.stats.rekeys += 1;
        }
        self.epoch = Some(hs.epoch);
        self.peer_index = hs.peer_index;
        self.retry_at = None;
        if self.last_activity.is_none() {
            self.last_activity = Some(now);
        }
        if self.completed.len() == COMPLETED_MEMORY {
            self.completed.pop_front();
        }
        self.completed.push_back(hs.id);
        self.stats.completed += 1;
        self.events.push_back(E2eEvent::KeysInstalled {
            epoch: hs.epoch,
            role: hs.role,
            group,
        });
        Ok(())
    }

    /// A client switches its send key once the server acknowledged all our bytes.
    fn maybe_confirm(&mut self, now: Duration) -> Result<(), E2eError> {
        if self
            .current
            .as_ref()
            .is_some_and(|h| h.stage == Stage::KeysInstalled && !h.outstanding())
        {
            self.confirm(now)?;
        }
        Ok(())
    }

    fn confirm(&mut self, now: Duration) -> Result<(), E2eError> {
        let Some(hs) = self.current.as_mut() else {
            return Ok(());
        };
        if let Some(tx) = hs.pending_tx.take() {
            self.channel.install_tx(hs.epoch, &tx, now)?;
            hs.stage = Stage::Confirmed;
            self.events
                .push_back(E2eEvent::SendKeySwitched { epoch: hs.epoch });
        }
        Ok(())
    }

    /// The handshake in `slot` failed: drop it (and only it).
    fn fail(&mut self, slot: Slot, now: Duration, e: E2eError) -> E2eError {
        // A failure after keys were installed leaves them in place; the handshake state itself
        // is dropped, so no more acknowledgements are sent.
        *self.slot(slot) = None;
        match slot {
            // Our own attempt failed: the automatic rekey waits before it tries again.
            Slot::Ours | Slot::Current => {
                self.retry_at = Some(now.saturating_add(self.config.retry_after_failure));
            }
            // The peer's failed: our parked handshake, if any, carries on.
            Slot::Theirs => {
                if let Some(o) = self.ours.as_mut().filter(|o| o.parked) {
                    o.parked = false;
                    o.sent = o.acked;
                    o.retransmit_at = Some(now);
                }
            }
        }
        self.stats.failed += 1;
        self.events.push_back(E2eEvent::HandshakeFailed(e.clone()));
        e
    }

    /// The next handshake payload to send to the peer (in an e2e-handshake overlay frame).
    pub fn poll_transmit(&mut self, now: Duration) -> Option<Vec<u8>> {
        let index = self.local_index;
        [&mut self.current, &mut self.ours, &mut self.theirs]
            .into_iter()
            .flatten()
            .filter(|h| !h.parked)
            .find_map(|h| transmit(h, index, now))
    }

    /// When [`E2eSession::handle_timeout`] wants to run next.
    pub fn poll_timeout(&self) -> Option<Duration> {
        let mut t: Option<Duration> = None;
        let mut at = |d: Option<Duration>| {
            if let Some(d) = d {
                t = Some(t.map_or(d, |t| t.min(d)));
            }
        };
        for h in [&self.current, &self.ours, &self.theirs]
            .into_iter()
            .flatten()
        {
            at(h.retransmit_at);
            if h.stage != Stage::Confirmed {
                at(Some(h.deadline));
            }
        }
        let quiet = !self.is_handshaking()
            && self
                .current
                .as_ref()
                .is_none_or(|h| h.stage == Stage::Confirmed);
        if self.epoch.is_some() && quiet {
            let rekey = match (self.channel.rekey_deadline(), self.retry_at) {
                (Some(r), Some(retry)) => Some(r.max(retry)),
                (r, None) => r,
                (None, retry) => retry,
            };
            // An idle session starts no rekey.
            let idle = self
                .last_activity
                .map(|a| a.saturating_add(self.config.idle_timeout));
            at(rekey.filter(|r| idle.is_none_or(|i| *r < i)));
        }
        t
    }

    /// Runs timers: retransmission, handshake deadline, automatic rekey.
    pub fn handle_timeout(&mut self, now: Duration) {
        let mut expired = Vec::new();
        for slot in [Slot::Current, Slot::Ours, Slot::Theirs] {
            let max_rto = self.config.max_rto;
            let Some(hs) = self.slot(slot).as_mut() else {
                continue;
            };
            let mut fired = false;
            if hs.retransmit_at.is_some_and(|t| now >= t) {
                hs.retransmit_at = None;
                if hs.outstanding() && !hs.parked {
                    hs.sent = hs.acked;
                    hs.rto = hs.rto.saturating_mul(2).min(max_rto);
                    fired = true;
                }
            }
            if hs.stage != Stage::Confirmed && now >= hs.deadline {
                expired.push(slot);
            }
            if fired {
                self.stats.retransmits += 1;
            }
        }
        for slot in expired {
            self.fail(slot, now, E2eError::Timeout);
        }
        let retry_ok = self.retry_at.is_none_or(|t| now >= t);
        if self.may_rekey(now) && retry_ok && self.channel.needs_rekey(now) {
            // A failure is recorded (event, retry delay) by `initiate` itself.
            let _ = self.initiate(now);
        }
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<E2eEvent> {
        self.events.pop_front()
    }

    /// Whether [`E2eSession::poll_transmit`] or [`E2eSession::poll_event`] has something: a
    /// cheap check for the per-packet path.
    pub fn has_pending(&self) -> bool {
        !self.events.is_empty()
            || [&self.current, &self.ours, &self.theirs]
                .into_iter()
                .flatten()
                .any(|h| !h.parked && (h.unsent() || h.owe_ack))
    }

    /// Seals an IP packet for the peer in place, as the end-to-end payload under `overlay`
    /// (whose source must be us and destination the peer).
    pub fn seal(
        &mut self,
        now: Duration,
        overlay: &OverlayHeader,
        pb: &mut PacketBuf<'_>,
    ) -> Result<(), SealError> {
        let session = self.peer_index.ok_or(SealError::NoKey)?;
        seal_e2e(&mut self.channel, now, session, overlay, pb)?;
        self.last_activity = Some(now);
        Ok(())
    }

    /// Opens an end-to-end payload from the peer in place (the overlay header already
    /// stripped); on success the packet is the inner IP packet.
    pub fn open(
        &mut self,
        now: Duration,
        overlay: &OverlayHeader,
        pb: &mut PacketBuf<'_>,
    ) -> Result<E2eHeader, RecvError> {
        if overlay.source != self.peer || overlay.destination != self.local {
            return Err(RecvError::Misdirected);
        }
        let h = open_e2e(&mut self.channel, now, overlay, pb)?;
        self.last_activity = Some(now);
        // A packet under the new epoch proves the server switched: the client may too.
        if self
            .current
            .as_ref()
            .is_some_and(|hs| hs.stage == Stage::KeysInstalled && hs.epoch == h.epoch)
        {
            // Key setup of an already-derived secret cannot fail in practice; if it did,
            // the client keeps the old key and the timer retries.
            let _ = self.confirm(now);
        }
        Ok(h)
    }
}

/// Takes in a message of `hs`'s handshake: the acknowledgement of our stream and the peer's
/// data, fed to TLS in order.
fn feed(
    hs: &mut Handshake,
    config: &E2eConfig,
    now: Duration,
    msg: &HandshakeMessage<'_>,
) -> Result<(), E2eError> {
    hs.peer_index = Some(msg.sender_index);
    // Acknowledgement of our stream.
    let ack = msg.ack.min(hs.out.len() as u32);
    if ack > hs.acked {
        hs.acked = ack;
        hs.sent = hs.sent.max(ack);
        hs.rto = config.initial_rto;
        // Progress: restart the timer for what is still unacknowledged.
        hs.retransmit_at = (hs.outstanding() && !hs.parked).then(|| now.saturating_add(hs.rto));
    }
    // Data of the peer's stream.
    if msg.data.is_empty() {
        return Ok(());
    }
    hs.owe_ack = true;
    if hs.stage != Stage::Running {
        // A retransmission after we finished: only the acknowledgement matters.
        return Ok(());
    }
    let end = msg.offset + msg.data.len() as u32;
    if msg.offset > hs.in_next {
        let buffered: usize = hs.pending.values().map(Vec::len).sum();
        if buffered + msg.data.len() > MAX_HANDSHAKE_STREAM as usize {
            return Err(E2eError::StreamTooLong);
        }
        hs.pending.insert(msg.offset, msg.data.to_vec());
    } else if end > hs.in_next {
        let fresh = &msg.data[(hs.in_next - msg.offset) as usize..];
        feed_tls(hs, fresh)?;
        while let Some(entry) = hs.pending.first_entry() {
            if *entry.key() > hs.in_next {
                break;
            }
            let (off, data) = entry.remove_entry();
            let end = off + data.len() as u32;
            if end > hs.in_next {
                feed_tls(hs, &data[(hs.in_next - off) as usize..])?;
            }
        }
    }
    Ok(())
}

/// The next message of `hs`: new or retransmitted data, else an owed acknowledgement.
fn transmit(hs: &mut Handshake, sender_index: u32, now: Duration) -> Option<Vec<u8>> {
    let len = hs.out.len() as u32;
    let room = (MAX_HANDSHAKE_CHUNK - hs.cookie.map_or(0, |_| COOKIE_LEN)) as u32;
    let (offset, data) = if hs.sent < len {
        let end = len.min(hs.sent + room);
        let chunk = (hs.sent, &hs.out[hs.sent as usize..end as usize]);
        hs.sent = end;
        if hs.retransmit_at.is_none() {
            hs.retransmit_at = Some(now.saturating_add(hs.rto));
        }
        chunk
    } else if hs.owe_ack {
        (len, &[][..])
    } else {
        return None;
    };
    hs.owe_ack = false;
    Some(
        HandshakeMessage {
            role: hs.role,
            epoch: hs.epoch,
            handshake_id: hs.id,
            sender_index,
            ack: hs.in_next,
            offset,
            cookie: hs.cookie,
            retry: false,
            data,
        }
        .encode(),
    )
}

/// Feeds in-order peer bytes to rustls and collects what it writes.
fn feed_tls(hs: &mut Handshake, mut bytes: &[u8]) -> Result<(), E2eError> {
    hs.in_next += bytes.len() as u32;
    while !bytes.is_empty() {
        let n = hs
            .tls
            .read_tls(&mut bytes)
            .map_err(|_| E2eError::StreamTooLong)?;
        hs.tls.process_new_packets()?;
        if n == 0 {
            return Err(E2eError::StreamTooLong);
        }
    }
    drain_tls(hs)
}

fn drain_tls(hs: &mut Handshake) -> Result<(), E2eError> {
    while hs.tls.wants_write() {
        hs.tls
            .write_tls(&mut hs.out)
            .map_err(|_| E2eError::StreamTooLong)?;
        if hs.out.len() > MAX_HANDSHAKE_STREAM as usize {
            return Err(E2eError::StreamTooLong);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buf::{HEADROOM, TAILROOM};
    use crate::channel::OpenError;
    use crate::frame::OverlayKind;
    use crate::replay::Replay;
    use crate::testutil::{MS, Mesh};
    use proptest::prelude::*;

    /// Two sessions that expect each other.
    fn pair(mesh: &Mesh) -> [E2eSession; 2] {
        let (ca, a) = mesh.node();
        let (cb, b) = mesh.node();
        [
            E2eSession::new(ca, a, b, 100),
            E2eSession::new(cb, b, a, 200),
        ]
    }

    /// A lossy, reordering network between two sessions, in virtual time, seeded.
    struct Net {
        rng: u64,
        loss_percent: u64,
        queue: Vec<(Duration, usize, Vec<u8>)>,
        sent: u64,
        lost: u64,
    }

    impl Net {
        fn new(seed: u64, loss_percent: u64) -> Self {
            Self {
                rng: seed | 1,
                loss_percent,
                queue: Vec::new(),
                sent: 0,
                lost: 0,
            }
        }

        fn next(&mut self) -> u64 {
            self.rng ^= self.rng << 13;
            self.rng ^= self.rng >> 7;
            self.rng ^= self.rng << 17;
            self.rng
        }

        /// Sends `m` from session `from` to `1 - from`, unless the network loses it.
        fn send(&mut self, t: Duration, from: usize, m: Vec<u8>) {
            self.sent += 1;
            if self.next() % 100 < self.loss_percent {
                self.lost += 1;
                return;
            }
            let delay = MS * (1 + (self.next() % 30) as u32);
            self.queue.push((t + delay, 1 - from, m));
        }

        /// Runs until `done` or `limit`; returns the virtual time reached.
        fn run(
            &mut self,
            s: &mut [E2eSession; 2],
            start: Duration,
            limit: Duration,
            done: impl Fn(&[E2eSession; 2]) -> bool,
        ) -> Duration {
            let jars = jars(s);
            let mut t = start;
            while t < limit {
                for (i, session) in s.iter_mut().enumerate() {
                    session.handle_timeout(t);
                    while let Some(m) = session.poll_transmit(t) {
                        self.send(t, i, m);
                    }
                }
                self.queue.sort_by_key(|q| q.0);
                let due = self.queue.iter().take_while(|q| q.0 <= t).count();
                for (_, to, m) in self.queue.drain(..due).collect::<Vec<_>>() {
                    // Failures also arrive as events, which the tests inspect.
                    if let Ok(Handled::Retry(r)) = s[to].handle_handshake(t, &m, &jars[to]) {
                        self.send(t, to, r);
                    }
                }
                if done(s) {
                    return t;
                }
                t += 5 * MS;
            }
            t
        }
    }

    /// Each node's cookie jar (fixed secrets: the same in every call).
    fn jars(s: &[E2eSession; 2]) -> [CookieJar; 2] {
        [
            CookieJar::new(&[1; 32], s[0].local()),
            CookieJar::new(&[2; 32], s[1].local()),
        ]
    }

    fn both_established(s: &[E2eSession; 2]) -> bool {
        s.iter().all(E2eSession::is_established)
    }

    /// Seals `payload` at `from` (end-to-end layer only) and returns the e2e payload bytes.
    fn seal(from: &mut E2eSession, now: Duration, payload: &[u8]) -> (OverlayHeader, Vec<u8>) {
        let overlay = OverlayHeader::new(OverlayKind::Data, from.local(), from.peer());
        let mut raw = vec![0u8; HEADROOM + payload.len() + TAILROOM];
        raw[HEADROOM..HEADROOM + payload.len()].copy_from_slice(payload);
        let mut pb = PacketBuf::at_headroom(&mut raw, payload.len()).unwrap();
        from.seal(now, &overlay, &mut pb).unwrap();
        (overlay, pb.data().to_vec())
    }

    fn open(
        to: &mut E2eSession,
        now: Duration,
        frame: &(OverlayHeader, Vec<u8>),
    ) -> Result<Vec<u8>, RecvError> {
        let mut raw = frame.1.clone();
        let len = raw.len();
        let mut pb = PacketBuf::new(&mut raw, 0..len).unwrap();
        to.open(now, &frame.0, &mut pb)?;
        Ok(pb.data().to_vec())
    }

    fn exchange(s: &mut [E2eSession; 2], now: Duration, msg: &[u8]) {
        let [a, b] = s;
        let f = seal(a, now, msg);
        assert_eq!(open(b, now, &f).unwrap(), msg);
        let f = seal(b, now, msg);
        assert_eq!(open(a, now, &f).unwrap(), msg);
    }

    fn installed(s: &mut E2eSession) -> Vec<(u8, TlsRole, NamedGroup)> {
        std::iter::from_fn(|| s.poll_event())
            .filter_map(|e| match e {
                E2eEvent::KeysInstalled { epoch, role, group } => Some((epoch, role, group)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn handshake_negotiates_x25519mlkem768_and_keys_work() {
        let mesh = Mesh::new("e2e.test");
        let mut s = pair(&mesh);
        s[0].initiate(Duration::ZERO).unwrap();
        let mut net = Net::new(1, 0);
        let t = net.run(
            &mut s,
            Duration::ZERO,
            Duration::from_secs(5),
            both_established,
        );
        assert!(both_established(&s), "handshake did not finish");
        assert_eq!(
            installed(&mut s[0]),
            [(0, TlsRole::Client, NamedGroup::X25519MLKEM768)]
        );
        assert_eq!(
            installed(&mut s[1]),
            [(0, TlsRole::Server, NamedGroup::X25519MLKEM768)]
        );
        assert_eq!(
            (s[0].peer_index(), s[1].peer_index()),
            (Some(200), Some(100))
        );
        exchange(&mut s, t, b"inner IPv6 packet");
        // A relay (or anyone) replaying or flipping bits is refused with the right reason.
        let f = seal(&mut s[0], t, b"once");
        open(&mut s[1], t, &f).unwrap();
        assert_eq!(
            open(&mut s[1], t, &f),
            Err(RecvError::Open(OpenError::Replay(Replay::Duplicate(1))))
        );
        let mut g = seal(&mut s[0], t, b"flip");
        g.1[20] ^= 4;
        assert_eq!(
            open(&mut s[1], t, &g),
            Err(RecvError::Open(OpenError::Authentication))
        );
        // Frames claiming another source are not this session's.
        let mut h = seal(&mut s[0], t, b"x");
        h.0.source = NodeId::from_bytes([9; 16]);
        assert_eq!(open(&mut s[1], t, &h), Err(RecvError::Misdirected));
    }

    #[test]
    fn handshake_completes_under_30_percent_loss() {
        let mesh = Mesh::new("e2e.test");
        let mut retransmits = 0;
        for seed in 1..=8u64 {
            let mut s = pair(&mesh);
            let mut net = Net::new(seed * 0x9e37_79b9, 30);
            s[0].initiate(Duration::ZERO).unwrap();
            let t = net.run(
                &mut s,
                Duration::ZERO,
                Duration::from_secs(60),
                both_established,
            );
            assert!(
                both_established(&s),
                "seed {seed}: not established after {t:?}: {:?} {:?} {:?} {:?}",
                s[0],
                s[1],
                s[0].stats(),
                s[1].stats()
            );
            assert!(net.lost > 0, "seed {seed}: the network lost nothing");
            retransmits += s[0].stats().retransmits + s[1].stats().retransmits;
            exchange(&mut s, t, b"through the loss");
        }
        assert!(retransmits > 0, "loss was recovered by retransmission");
    }

    /// Both start at once: the lower node ID is the client, whatever the order of calls.
    #[test]
    fn simultaneous_start_lower_node_id_wins() {
        let mesh = Mesh::new("e2e.test");
        for _ in 0..2 {
            let mut s = pair(&mesh);
            s[0].initiate(Duration::ZERO).unwrap();
            s[1].initiate(Duration::ZERO).unwrap();
            let mut net = Net::new(7, 0);
            let t = net.run(
                &mut s,
                Duration::ZERO,
                Duration::from_secs(5),
                both_established,
            );
            assert!(both_established(&s));
            let lower = if s[0].local() < s[1].local() { 0 } else { 1 };
            assert_eq!(installed(&mut s[lower])[0].1, TlsRole::Client);
            assert_eq!(installed(&mut s[1 - lower])[0].1, TlsRole::Server);
            assert_eq!(
                s[0].stats().completed + s[1].stats().completed,
                2,
                "one handshake"
            );
            exchange(&mut s, t, b"after the race");
        }
    }

    #[test]
    fn rekey_switches_epochs_without_dropping_in_flight_packets() {
        let mesh = Mesh::new("e2e.test");
        let mut s = pair(&mesh);
        s[0].initiate(Duration::ZERO).unwrap();
        let mut net = Net::new(3, 0);
        net.run(
            &mut s,
            Duration::ZERO,
            Duration::from_secs(5),
            both_established,
        );
        let _ = (installed(&mut s[0]), installed(&mut s[1]));
        // Packets sealed under epoch 0 just before the rekey, delivered after it.
        let t_old = Duration::from_secs(119);
        let old_ab: Vec<_> = (0..4u8).map(|i| seal(&mut s[0], t_old, &[i; 40])).collect();
        let old_ba: Vec<_> = (0..4u8).map(|i| seal(&mut s[1], t_old, &[i; 40])).collect();
        assert!(s.iter().all(|x| !x.channel().needs_rekey(t_old)));
        // At 120 s both want a rekey; the timers start it (and resolve the collision).
        let start = Duration::from_secs(121);
        let switched = |s: &[E2eSession; 2]| s.iter().all(|x| x.channel().tx_epoch() == Some(1));
        let t = net.run(&mut s, start, start + Duration::from_secs(5), switched);
        assert!(switched(&s), "rekey did not complete");
        assert!(
            installed(&mut s[0])
                .iter()
                .chain(installed(&mut s[1]).iter())
                .all(|e| e.0 == 1 && e.2 == NamedGroup::X25519MLKEM768)
        );
        exchange(&mut s, t, b"new epoch");
        for (i, f) in old_ab.iter().enumerate() {
            assert_eq!(open(&mut s[1], t, f).unwrap(), [i as u8; 40]);
        }
        for (i, f) in old_ba.iter().enumerate() {
            assert_eq!(open(&mut s[0], t, f).unwrap(), [i as u8; 40]);
        }
        assert_eq!(s[0].channel().rx_epochs(), (Some(1), Some(0)));
        // After the grace period the old epoch is gone.
        let late = t + Duration::from_secs(11);
        let f = seal(&mut s[0], late, b"still works");
        assert_eq!(open(&mut s[1], late, &f).unwrap(), b"still works");
        assert_eq!(s[1].channel().rx_epochs(), (Some(1), None));
    }

    #[test]
    fn peer_must_be_the_node_the_frames_claim() {
        let mesh = Mesh::new("e2e.test");
        let (ca, a) = mesh.node();
        let (cb, b) = mesh.node();
        let impostor = NodeId::from_bytes([0x42; 16]);
        // B believes the frames come from `impostor`, but the SVID says `a`.
        let mut s = [
            E2eSession::new(ca, a, b, 1),
            E2eSession::new(cb, b, impostor, 2),
        ];
        s[0].initiate(Duration::ZERO).unwrap();
        Net::new(5, 0).run(&mut s, Duration::ZERO, Duration::from_secs(3), |_| false);
        assert!(!both_established(&s));
        let failed: Vec<_> = std::iter::from_fn(|| s[1].poll_event()).collect();
        assert!(
            failed.contains(&E2eEvent::HandshakeFailed(E2eError::PeerMismatch {
                expected: impostor,
                got: a
            })),
            "{failed:?}"
        );
    }

    #[test]
    fn classical_only_peer_and_foreign_ca_are_refused() {
        let mesh = Mesh::new("e2e.test");
        let (ca, a) = mesh.node_trusting(&mesh, KxPolicy::ClassicalOnlyForTesting);
        let (cb, b) = mesh.node();
        let mut s = [E2eSession::new(ca, a, b, 1), E2eSession::new(cb, b, a, 2)];
        s[0].initiate(Duration::ZERO).unwrap();
        Net::new(5, 0).run(&mut s, Duration::ZERO, Duration::from_secs(3), |_| false);
        assert!(!both_established(&s));
        assert!(s[1].stats().failed > 0);

        let other = Mesh::new("e2e.test");
        let (ca, a) = other.node_trusting(&mesh, KxPolicy::PostQuantumOnly);
        let (cb, b) = mesh.node();
        let mut s = [E2eSession::new(ca, a, b, 1), E2eSession::new(cb, b, a, 2)];
        s[0].initiate(Duration::ZERO).unwrap();
        Net::new(5, 0).run(&mut s, Duration::ZERO, Duration::from_secs(3), |_| false);
        assert!(!both_established(&s));
        let ev: Vec<_> = std::iter::from_fn(|| s[1].poll_event()).collect();
        assert!(
            ev.iter()
                .any(|e| matches!(e, E2eEvent::HandshakeFailed(E2eError::Tls(_)))),
            "{ev:?}"
        );
    }

    #[test]
    fn handshake_gives_up_when_nothing_arrives() {
        let mesh = Mesh::new("e2e.test");
        let mut s = pair(&mesh);
        s[0].initiate(Duration::ZERO).unwrap();
        Net::new(5, 100).run(&mut s, Duration::ZERO, Duration::from_secs(25), |_| false);
        let ev: Vec<_> = std::iter::from_fn(|| s[0].poll_event()).collect();
        assert_eq!(ev, [E2eEvent::HandshakeFailed(E2eError::Timeout)]);
        assert!(!s[0].is_handshaking());
        assert!(s[0].stats().retransmits >= 4);
    }

    #[test]
    fn export_secrets_separates_directions_and_generations() {
        let fake = |out: &mut [u8; 32], label: &[u8], ctx: &[u8]| -> Result<(), ()> {
            out.fill(0);
            for (i, b) in label.iter().chain(ctx).enumerate() {
                out[i % 32] ^= b.wrapping_mul(i as u8 + 1);
            }
            Ok(())
        };
        let (ctx_tx, ctx_rx) =
            export_secrets(fake, LINK_EXPORTER_LABEL, TlsRole::Client, 7).unwrap();
        let (srv_tx, srv_rx) =
            export_secrets(fake, LINK_EXPORTER_LABEL, TlsRole::Server, 7).unwrap();
        assert_eq!(ctx_tx, srv_rx);
        assert_eq!(ctx_rx, srv_tx);
        assert_ne!(ctx_tx, ctx_rx);
        let (next_tx, _) =
            export_secrets(fake, LINK_EXPORTER_LABEL, TlsRole::Client, 7 + 256).unwrap();
        assert_ne!(
            ctx_tx, next_tx,
            "generations that share a wire epoch still differ"
        );
    }

    #[test]
    fn junk_handshake_input_is_refused_without_panic() {
        let mesh = Mesh::new("e2e.test");
        let mut s = pair(&mesh);
        let jar = &jars(&s)[1];
        assert!(s[1].handle_handshake(Duration::ZERO, &[], jar).is_err());
        assert!(
            s[1].handle_handshake(Duration::ZERO, &[2; 30], jar)
                .is_err()
        );
        // A well-formed client message with garbage TLS bytes and no cookie gets a retry and
        // creates nothing; with the cookie it fails the handshake.
        let mut junk = HandshakeMessage {
            role: TlsRole::Client,
            epoch: 0,
            handshake_id: 1,
            sender_index: 1,
            ack: 0,
            offset: 0,
            cookie: None,
            retry: false,
            data: &[
                0x16, 3, 1, 0, 5, 1, 2, 3, 4, 5, 0x16, 3, 1, 0, 5, 1, 2, 3, 4, 5,
            ],
        };
        let reply = s[1].handle_handshake(Duration::ZERO, &junk.encode(), jar);
        let Ok(Handled::Retry(r)) = reply else {
            panic!("{reply:?}")
        };
        assert!(r.len() <= junk.encode().len(), "a retry never amplifies");
        assert!(!s[1].is_handshaking());
        junk.cookie = HandshakeMessage::decode(&r).unwrap().cookie;
        assert!(
            s[1].handle_handshake(Duration::ZERO, &junk.encode(), jar)
                .is_err()
        );
        assert!(!s[1].is_handshaking());
        // Too short to be answered without amplification: ignored.
        let tiny = HandshakeMessage {
            data: &[1],
            handshake_id: 2,
            cookie: None,
            ..junk
        };
        assert_eq!(
            s[1].handle_handshake(Duration::ZERO, &tiny.encode(), jar),
            Ok(Handled::Ignored)
        );
    }

    #[test]
    fn retry_and_cookie_flags_must_be_consistent() {
        let hello = HandshakeMessage {
            role: TlsRole::Client,
            epoch: 3,
            handshake_id: 9,
            sender_index: 4,
            ack: 0,
            offset: 0,
            cookie: None,
            retry: false,
            data: &[1; 100],
        };
        let retry = HandshakeMessage::retry(&hello, [8; COOKIE_LEN]);
        let bytes = retry.encode();
        assert_eq!(bytes.len(), RETRY_LEN);
        assert_eq!(HandshakeMessage::decode(&bytes).unwrap(), retry);
        let refused = |m: HandshakeMessage<'_>| HandshakeMessage::decode(&m.encode()).is_err();
        // A retry is a server's, with a cookie, and nothing else.
        assert!(refused(HandshakeMessage {
            role: TlsRole::Client,
            ..retry.clone()
        }));
        assert!(refused(HandshakeMessage {
            cookie: None,
            ..retry.clone()
        }));
        assert!(refused(HandshakeMessage {
            data: &[1],
            ..retry.clone()
        }));
        assert!(refused(HandshakeMessage {
            ack: 1,
            ..retry.clone()
        }));
        // Only a client echoes a cookie.
        assert!(refused(HandshakeMessage {
            retry: false,
            ..retry.clone()
        }));
        // Cookie and data share the chunk.
        let full = [0u8; MAX_HANDSHAKE_CHUNK];
        assert!(refused(HandshakeMessage {
            cookie: Some([0; COOKIE_LEN]),
            data: &full,
            ..hello.clone()
        }));
        let fits = HandshakeMessage {
            cookie: Some([0; COOKIE_LEN]),
            data: &full[COOKIE_LEN..],
            ..hello.clone()
        };
        assert_eq!(fits.encode().len(), MAX_HANDSHAKE_MESSAGE);
        assert!(!refused(fits));
        // Unknown flags and a non-zero reserved byte.
        let mut b = hello.encode();
        b[2] = 0x04;
        assert!(HandshakeMessage::decode(&b).is_err());
        let mut b = hello.encode();
        b[3] = 1;
        assert!(HandshakeMessage::decode(&b).is_err());
    }

    /// Both start at once while a forger injects the peer's ClientHello under other IDs: the
    /// forgeries get retries and change nothing; only the real peer's (cookie-validated)
    /// handshake makes the higher node park its own.
    #[test]
    fn forged_hellos_do_not_influence_a_simultaneous_start() {
        let mesh = Mesh::new("e2e.test");
        let mut s = pair(&mesh);
        let lower = if s[0].local() < s[1].local() { 0 } else { 1 };
        let higher = 1 - lower;
        s[0].initiate(Duration::ZERO).unwrap();
        s[1].initiate(Duration::ZERO).unwrap();
        let jars = jars(&s);
        let hello = s[lower].poll_transmit(Duration::ZERO).unwrap();
        let mut forged = HandshakeMessage::decode(&hello).unwrap();
        forged.handshake_id ^= 1;
        let reply = s[higher].handle_handshake(Duration::ZERO, &forged.encode(), &jars[higher]);
        assert!(matches!(reply, Ok(Handled::Retry(_))), "{reply:?}");
        assert!(s[higher].ours.as_ref().is_some_and(|o| !o.parked));
        assert!(s[higher].theirs.is_none());
        // The lower node ignores even the real (validated) handshake of the higher one.
        let theirs = s[higher].poll_transmit(Duration::ZERO).unwrap();
        let Ok(Handled::Retry(r)) =
            s[lower].handle_handshake(Duration::ZERO, &theirs, &jars[lower])
        else {
            panic!("a retry first")
        };
        s[higher]
            .handle_handshake(Duration::ZERO, &r, &jars[higher])
            .unwrap();
        let again = s[higher].poll_transmit(Duration::ZERO).unwrap();
        assert!(HandshakeMessage::decode(&again).unwrap().cookie.is_some());
        assert_eq!(
            s[lower].handle_handshake(Duration::ZERO, &again, &jars[lower]),
            Ok(Handled::Ignored)
        );
        assert_eq!(s[lower].stats().collisions, 1);
        // Only the real lower node's handshake, with its cookie, makes the higher one park.
        let Ok(Handled::Retry(r)) =
            s[higher].handle_handshake(Duration::ZERO, &hello, &jars[higher])
        else {
            panic!("a retry first")
        };
        s[lower]
            .handle_handshake(Duration::ZERO, &r, &jars[lower])
            .unwrap();
        let with_cookie = s[lower].poll_transmit(Duration::ZERO).unwrap();
        s[higher]
            .handle_handshake(Duration::ZERO, &with_cookie, &jars[higher])
            .unwrap();
        assert!(s[higher].ours.as_ref().is_some_and(|o| o.parked));
        assert!(s[higher].theirs.is_some());
    }

    proptest! {
        #[test]
        fn handshake_message_round_trip(
            server in any::<bool>(), epoch in any::<u8>(), id in any::<u64>(), idx in any::<u32>(),
            ack in 0..=MAX_HANDSHAKE_STREAM, offset in 0u32..60_000,
            data in prop::collection::vec(any::<u8>(), 0..MAX_HANDSHAKE_CHUNK - COOKIE_LEN),
            cookie in prop::option::of(any::<[u8; COOKIE_LEN]>()),
        ) {
            // Only a client echoes a cookie.
            let server = server && cookie.is_none();
            let m = HandshakeMessage {
                role: if server { TlsRole::Server } else { TlsRole::Client },
                epoch, handshake_id: id, sender_index: idx, ack, offset, cookie, retry: false,
                data: &data,
            };
            let bytes = m.encode();
            prop_assert_eq!(HandshakeMessage::decode(&bytes).unwrap(), m);
        }

        #[test]
        fn handshake_decode_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..1200)) {
            let _ = HandshakeMessage::decode(&bytes);
        }
    }
}
