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

/// Connection IDs we issue are 8 bytes.
const LOCAL_CID_LEN: usize = 8;
/// Shortest 1-RTT packet: header byte, our CID, and the 20 bytes header protection samples.
const MIN_SHORT_HEADER_LEN: usize = 1 + LOCAL_CID_LEN + 20;
const MAX_CID_LEN_V1: usize = 20;
/// RFC 9000 §14.1: datagrams carrying a client's first Initial are at least this long.
const MIN_INITIAL_DATAGRAM: usize = 1200;

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

impl AsyncUdpSocket for CountingSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        let Some((impairment, runtime)) = &self.impairment else {
            return self.inner.try_send(transmit);
        };
        match impairment.on_send(transmit.destination) {
            Verdict::Pass => self.inner.try_send(transmit),
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
                    let _ = inner.try_send(&Transmit {
                        destination,
                        ecn,
                        contents: &contents,
                        segment_size,
                        src_ip,
                    });
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
}
