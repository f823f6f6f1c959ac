//! The link UDP socket, wrapped to count what arrives.
//!
//! quinn silently drops datagrams that are not QUIC. To count them (an operator wants to see a
//! flood of garbage), every received datagram is checked against QUIC's version-independent
//! invariants (RFC 8999) and QUIC v1's fixed bit before quinn sees it; quinn still drops them.

use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};

use crate::metrics::LinkMetrics;

/// Connection IDs quinn issues are 8 bytes.
const LOCAL_CID_LEN: usize = 8;
/// Shortest 1-RTT packet: header byte, our CID, and the 20 bytes header protection samples.
const MIN_SHORT_HEADER_LEN: usize = 1 + LOCAL_CID_LEN + 20;
const MAX_CID_LEN_V1: usize = 20;

pub(crate) struct CountingSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    metrics: Arc<LinkMetrics>,
}

impl fmt::Debug for CountingSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CountingSocket").finish_non_exhaustive()
    }
}

impl CountingSocket {
    pub(crate) fn new(inner: Arc<dyn AsyncUdpSocket>, metrics: Arc<LinkMetrics>) -> Self {
        Self { inner, metrics }
    }
}

/// Whether a datagram could be QUIC at all.
pub(crate) fn plausible_quic(d: &[u8]) -> bool {
    let Some(&first) = d.first() else {
        return false;
    };
    if first & 0x80 == 0 {
        return first & 0x40 != 0 && d.len() >= MIN_SHORT_HEADER_LEN;
    }
    if d.len() < 7 {
        return false;
    }
    let version = u32::from_be_bytes([d[1], d[2], d[3], d[4]]);
    if version == 0 {
        return true; // version negotiation
    }
    let dcid_len = usize::from(d[5]);
    let Some(&scid_len) = d.get(6 + dcid_len) else {
        return false;
    };
    if version == 1 {
        return first & 0x40 != 0
            && dcid_len <= MAX_CID_LEN_V1
            && usize::from(scid_len) <= MAX_CID_LEN_V1
            && d.len() > 7 + dcid_len + usize::from(scid_len);
    }
    true // another version: quinn answers with version negotiation
}

impl AsyncUdpSocket for CountingSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        self.inner.try_send(transmit)
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
                    if !plausible_quic(datagram) {
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

    #[test]
    fn invariants() {
        assert!(!plausible_quic(&[]));
        assert!(
            !plausible_quic(&[0x00; 100]),
            "short header without fixed bit"
        );
        assert!(plausible_quic(&[0x40; 40]));
        assert!(!plausible_quic(&[0x40; 10]), "too short for a 1-RTT packet");
        let mut initial = vec![0xc0, 0, 0, 0, 1, 8];
        initial.extend_from_slice(&[1; 8]);
        initial.push(8);
        initial.extend_from_slice(&[2; 8]);
        initial.extend_from_slice(&[0; 1200]);
        assert!(plausible_quic(&initial));
        let mut bad_cid = initial.clone();
        bad_cid[5] = 200;
        assert!(!plausible_quic(&bad_cid));
        let mut no_fixed = initial.clone();
        no_fixed[0] = 0x80;
        assert!(!plausible_quic(&no_fixed));
        assert!(
            plausible_quic(&[0x80, 0, 0, 0, 0, 0, 0]),
            "version negotiation"
        );
    }
}
