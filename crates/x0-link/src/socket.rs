//! The link UDP socket, wrapped to count what arrives.
//!
//! quinn silently drops datagrams that are not QUIC. To count them (an operator wants to see a
//! flood of garbage), every received datagram is checked before quinn sees it; quinn still drops
//! the ones we flag. The endpoint issues connection IDs from a keyed
//! `HashedConnectionIdGenerator`, so any packet addressed to one of *our* connection IDs can be
//! checked cheaply: a short-header packet, a Handshake or Retry packet, or a Version Negotiation
//! packet whose destination ID we did not issue is garbage. The only packets addressed to an ID
//! we did not issue are a client's first Initials (and 0-RTT), which RFC 9000 §14.1 requires to
//! arrive in datagrams of at least 1,200 bytes. The QUIC bit is not checked: peers may grease it
//! (RFC 9287).
//!
//! **The first flight of our dials is sent twice.** Before a server has validated a client's
//! address it may send at most three times the bytes it received (RFC 9000 §8.1). A link's
//! listener sends its TLS flight (about 2.5 KB: the X25519MLKEM768 share and its certificate)
//! and then its ML-DSA-65 proof of possession as 0.5-RTT data (about 5.4 KB), 8 KB against the
//! 7.2 KB that the two 1,200-byte datagrams of an X25519MLKEM768 ClientHello allow: the proof's
//! last datagram would wait until the client's Handshake flight arrived and was processed, and
//! the dialler could not check the proof while it signs its own. Our dials therefore send their
//! first flight twice when it spans more than one datagram (one GSO transmit, as on Linux): the
//! copy counts toward the listener's budget (§8.1 counts every datagram attributed to the
//! connection) and its packets are dropped as duplicates. A one-datagram flight (a classical
//! ClientHello) is not copied: a copy arriving after the listener refused the first would be
//! taken for a second attempt. The dial's first Initials are recognised by their Destination
//! Connection ID, which `DialIds` makes (20 bytes: a random nonce and a keyed tag), so a
//! server's Initials and any later packet are never copied.
//!
//! **Fault injection.** An optional [`Impairment`] (the daemon's dangerous, off-by-default
//! fault-injection control) is asked about every transmit before it reaches the kernel: pass
//! it, drop it, or send a copy later from a timer task. quinn's poll is never blocked; a GSO
//! transmit is judged and delayed whole.

use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, ConnectionId, ConnectionIdGenerator, UdpPoller};
use quinn_proto::HashedConnectionIdGenerator;

use crate::metrics::LinkMetrics;
use x0_identity::keys::sha256;

/// Connection IDs we issue are 8 bytes.
const LOCAL_CID_LEN: usize = 8;
/// Shortest 1-RTT packet: header byte, our CID, and the 20 bytes header protection samples.
const MIN_SHORT_HEADER_LEN: usize = 1 + LOCAL_CID_LEN + 20;
const MAX_CID_LEN_V1: usize = 20;
/// RFC 9000 §14.1: datagrams carrying a client's first Initial are at least this long.
const MIN_INITIAL_DATAGRAM: usize = 1200;

/// Length of the Destination Connection ID in our dials' first Initials.
const DIAL_DCID_LEN: usize = 20;
/// Its random part; the rest is the keyed tag.
const DIAL_DCID_NONCE_LEN: usize = 12;

/// Makes the Destination Connection IDs of our dials' first flights, and recognises them.
#[derive(Clone)]
pub(crate) struct DialIds {
    key: [u8; 8],
    random: &'static dyn rustls::crypto::SecureRandom,
}

impl fmt::Debug for DialIds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DialIds").finish_non_exhaustive()
    }
}

impl DialIds {
    /// `key` must be secret (the endpoint's connection ID key).
    pub(crate) fn new(key: u64) -> Self {
        Self {
            key: key.to_le_bytes(),
            random: rustls::crypto::aws_lc_rs::default_provider().secure_random,
        }
    }

    fn tag(&self, nonce: &[u8]) -> [u8; DIAL_DCID_LEN - DIAL_DCID_NONCE_LEN] {
        let mut input = [0u8; 8 + DIAL_DCID_NONCE_LEN];
        input[..8].copy_from_slice(&self.key);
        input[8..].copy_from_slice(nonce);
        let mut tag = [0u8; DIAL_DCID_LEN - DIAL_DCID_NONCE_LEN];
        tag.copy_from_slice(&sha256(&input)[..DIAL_DCID_LEN - DIAL_DCID_NONCE_LEN]);
        tag
    }

    /// A fresh, unpredictable initial Destination Connection ID for a dial (RFC 9000 §7.2). If
    /// the system's randomness failed, the nonce is zero; rustls then fails the handshake too.
    pub(crate) fn generate(&self) -> ConnectionId {
        let mut id = [0u8; DIAL_DCID_LEN];
        let _ = self.random.fill(&mut id[..DIAL_DCID_NONCE_LEN]);
        let tag = self.tag(&id[..DIAL_DCID_NONCE_LEN]);
        id[DIAL_DCID_NONCE_LEN..].copy_from_slice(&tag);
        ConnectionId::new(&id)
    }

    fn recognises(&self, dcid: &[u8]) -> bool {
        dcid.len() == DIAL_DCID_LEN
            && self.tag(&dcid[..DIAL_DCID_NONCE_LEN]) == dcid[DIAL_DCID_NONCE_LEN..]
    }
}

/// What to do with a datagram about to be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Send it now.
    Pass,
    /// Do not send it.
    Drop,
    /// Send it after this long.
    Delay(Duration),
}

/// Fault injection on the link socket: asked about every transmit (see [`crate::LinkConfig`]).
/// Must be cheap when nothing is injected: it runs on quinn's send path.
pub trait Impairment: Send + Sync + fmt::Debug {
    /// What to do with a datagram (or GSO train) for `dst`.
    fn on_send(&self, dst: SocketAddr) -> Verdict;
}

pub(crate) struct CountingSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    metrics: Arc<LinkMetrics>,
    cids: HashedConnectionIdGenerator,
    dial_ids: DialIds,
    /// Fault injection, and the runtime its delayed sends run on.
    impairment: Option<(Arc<dyn Impairment>, tokio::runtime::Handle)>,
}

impl fmt::Debug for CountingSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CountingSocket").finish_non_exhaustive()
    }
}

impl CountingSocket {
    /// `cid_key` must be the key of the endpoint's connection ID generator.
    pub(crate) fn new(
        inner: Arc<dyn AsyncUdpSocket>,
        metrics: Arc<LinkMetrics>,
        cid_key: u64,
    ) -> Self {
        Self {
            inner,
            metrics,
            cids: HashedConnectionIdGenerator::from_key(cid_key),
            dial_ids: DialIds::new(cid_key),
            impairment: None,
        }
    }

    /// Asks `impairment` about every transmit (needs a tokio runtime for delayed sends).
    pub(crate) fn impaired(mut self, impairment: Option<Arc<dyn Impairment>>) -> Self {
        self.impairment = impairment.and_then(|i| {
            tokio::runtime::Handle::try_current()
                .ok()
                .map(|handle| (i, handle))
        });
        self
    }

    fn ours(&self, cid: &[u8]) -> bool {
        cid.len() == LOCAL_CID_LEN && self.cids.validate(&ConnectionId::new(cid)).is_ok()
    }

    /// Whether an outgoing datagram (the first of a transmit) carries the first flight of one of
    /// our dials: a QUIC v1 Initial whose Destination Connection ID [`DialIds`] made.
    pub(crate) fn first_flight(&self, d: &[u8]) -> bool {
        d.len() > 6 + DIAL_DCID_LEN
            && d[0] & 0xb0 == 0x80
            && d[1..5] == [0, 0, 0, 1]
            && usize::from(d[5]) == DIAL_DCID_LEN
            && self.dial_ids.recognises(&d[6..6 + DIAL_DCID_LEN])
    }

    /// How many times to send `transmit`: twice if it is the first flight of one of our dials
    /// and spans more than one datagram, else once.
    fn copies(&self, transmit: &Transmit<'_>) -> usize {
        let batch = transmit
            .segment_size
            .is_some_and(|size| transmit.contents.len() > size);
        if batch && self.first_flight(transmit.contents) {
            2
        } else {
            1
        }
    }

    /// Whether a datagram could be QUIC meant for this endpoint.
    pub(crate) fn plausible(&self, d: &[u8]) -> bool {
        let Some(&first) = d.first() else {
            return false;
        };
        if first & 0x80 == 0 {
            return d.len() >= MIN_SHORT_HEADER_LEN && self.ours(&d[1..=LOCAL_CID_LEN]);
        }
        if d.len() < 7 {
            return false;
        }
        let version = u32::from_be_bytes([d[1], d[2], d[3], d[4]]);
        let dcid_len = usize::from(d[5]);
        let Some(dcid) = d.get(6..6 + dcid_len) else {
            return false;
        };
        match version {
            0 => self.ours(dcid),
            1 => {
                let Some(&scid_len) = d.get(6 + dcid_len) else {
                    return false;
                };
                if dcid_len > MAX_CID_LEN_V1 || usize::from(scid_len) > MAX_CID_LEN_V1 {
                    return false;
                }
                match (first >> 4) & 0x03 {
                    // Initial and 0-RTT: a reply to our dial, or a new client's first flight.
                    0 | 1 => self.ours(dcid) || (d.len() >= MIN_INITIAL_DATAGRAM && dcid_len >= 8),
                    // Handshake and Retry are always addressed to an ID we issued.
                    _ => self.ours(dcid),
                }
            }
            // Another version: quinn answers with Version Negotiation, but only to a full-size
            // datagram; smaller ones are dropped.
            _ => d.len() >= MIN_INITIAL_DATAGRAM,
        }
    }
}

/// Sends `transmit`, then `copies - 1` more times; only the first send's result counts (a
/// copy that does not fit in the socket buffer is lost like any datagram).
fn send_copies(
    socket: &dyn AsyncUdpSocket,
    transmit: &Transmit<'_>,
    copies: usize,
) -> io::Result<()> {
    socket.try_send(transmit)?;
    for _ in 1..copies {
        let _ = socket.try_send(transmit);
    }
    Ok(())
}

impl AsyncUdpSocket for CountingSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        let copies = self.copies(transmit);
        let Some((impairment, runtime)) = &self.impairment else {
            return send_copies(self.inner.as_ref(), transmit, copies);
        };
        match impairment.on_send(transmit.destination) {
            Verdict::Pass => send_copies(self.inner.as_ref(), transmit, copies),
            Verdict::Drop => Ok(()),
            Verdict::Delay(d) => {
                let inner = self.inner.clone();
                let (destination, ecn, src_ip, segment_size) = (
                    transmit.destination,
                    transmit.ecn,
                    transmit.src_ip,
                    transmit.segment_size,
                );
                let contents = transmit.contents.to_vec();
                runtime.spawn(async move {
                    tokio::time::sleep(d).await;
                    // Lost if the socket is full now, as a late datagram may be.
                    let transmit = Transmit {
                        destination,
                        ecn,
                        contents: &contents,
                        segment_size,
                        src_ip,
                    };
                    let _ = send_copies(inner.as_ref(), &transmit, copies);
                });
                Ok(())
            }
        }
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let res = self.inner.poll_recv(cx, bufs, meta);
        if let Poll::Ready(Ok(n)) = &res {
            for (buf, m) in bufs.iter().zip(meta.iter()).take(*n) {
                let data = &buf[..m.len.min(buf.len())];
                for datagram in data.chunks(m.stride.max(1)) {
                    self.metrics
                        .datagrams_received
                        .fetch_add(1, Ordering::Relaxed);
                    if !self.plausible(datagram) {
                        self.metrics
                            .datagrams_malformed
                            .fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
        res
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn socket() -> CountingSocket {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _guard = rt.enter();
        let inner = quinn::Runtime::wrap_udp_socket(&quinn::TokioRuntime, udp).unwrap();
        CountingSocket::new(inner, Arc::new(LinkMetrics::default()), 42)
    }

    #[test]
    fn recognises_our_connection_ids_and_refuses_garbage() {
        let s = socket();
        let ours = HashedConnectionIdGenerator::from_key(42).generate_cid();
        let mut short = vec![0x40];
        short.extend_from_slice(&ours);
        short.extend_from_slice(&[0u8; 30]);
        assert!(s.plausible(&short));
        short[0] = 0x00; // greased QUIC bit is fine
        assert!(s.plausible(&short));
        short[3] ^= 0xff; // not an ID we issued
        assert!(!s.plausible(&short));
        assert!(!s.plausible(&[]));
        assert!(!s.plausible(&[0x40; 10]));

        let initial = |dcid: &[u8], len: usize| {
            let mut p = vec![0xc0, 0, 0, 0, 1, dcid.len() as u8];
            p.extend_from_slice(dcid);
            p.push(8);
            p.extend_from_slice(&[2; 8]);
            p.resize(len, 0);
            p
        };
        assert!(
            s.plausible(&initial(&[9; 8], 1200)),
            "a new client's Initial"
        );
        assert!(
            !s.plausible(&initial(&[9; 8], 600)),
            "a truncated client Initial"
        );
        assert!(
            s.plausible(&initial(&ours, 300)),
            "a server's reply to our dial"
        );
        let mut handshake = initial(&[9; 8], 1200);
        handshake[0] = 0xe0;
        assert!(
            !s.plausible(&handshake),
            "Handshake packet to an ID we never issued"
        );
        let mut bad_cid_len = initial(&[9; 8], 1200);
        bad_cid_len[5] = 200;
        assert!(!s.plausible(&bad_cid_len));
        let mut other_version = initial(&[9; 8], 1200);
        other_version[4] = 7;
        assert!(s.plausible(&other_version));
        other_version.truncate(100);
        assert!(!s.plausible(&other_version));
    }

    #[test]
    fn only_the_first_flight_of_our_own_dials_is_recognised() {
        let s = socket();
        let initial = |dcid: &[u8]| {
            let mut p = vec![0xc3, 0, 0, 0, 1, dcid.len() as u8];
            p.extend_from_slice(dcid);
            p.push(8);
            p.extend_from_slice(&[2; 8]);
            p.resize(1200, 0);
            p
        };
        let ours = DialIds::new(42).generate();
        assert_eq!(ours.len(), DIAL_DCID_LEN);
        assert_ne!(ours, DialIds::new(42).generate(), "IDs are random");
        assert!(s.first_flight(&initial(&ours)));
        // Another endpoint's dial, a server's Initial (to the client's 8-byte ID), a Handshake
        // packet and another version are never duplicated.
        assert!(!s.first_flight(&initial(&DialIds::new(43).generate())));
        assert!(!s.first_flight(&initial(&[7; 8])));
        let mut handshake = initial(&ours);
        handshake[0] = 0xe3;
        assert!(!s.first_flight(&handshake));
        let mut v2 = initial(&ours);
        v2[4] = 2;
        assert!(!s.first_flight(&v2));
        assert!(!s.first_flight(&initial(&ours)[..20]));
        // What we duplicate is plausible to the listener.
        assert!(s.plausible(&initial(&ours)));

        // Only a flight of more than one datagram is sent twice.
        let transmit = |contents: &[u8], segment_size: Option<usize>| {
            let t = Transmit {
                destination: "127.0.0.1:9".parse().unwrap(),
                ecn: None,
                contents,
                segment_size,
                src_ip: None,
            };
            s.copies(&t)
        };
        let two = [initial(&ours), initial(&ours)].concat();
        assert_eq!(transmit(&two, Some(1200)), 2);
        assert_eq!(transmit(&initial(&ours), None), 1);
        assert_eq!(transmit(&initial(&ours), Some(1200)), 1);
        let theirs = [initial(&[7; 8]), initial(&[7; 8])].concat();
        assert_eq!(transmit(&theirs, Some(1200)), 1);
    }
}
