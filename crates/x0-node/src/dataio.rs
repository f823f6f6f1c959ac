//! Batched packet I/O for the data plane: the data socket with UDP GSO/GRO, and the TUN
//! device with the kernel's offloads (virtio-net header, TSO/USO split on read, GRO coalescing
//! on write).
//!
//! A fast TCP flow hands the TUN device 64 KB segments; tun-rs splits each into MTU-sized
//! packets ([`TunRx`]). Their link frames, all one size but the last, leave in **one** `sendmsg`
//! with `UDP_SEGMENT` ([`UdpTx`]); over a veth the kernel carries the 64 KB datagram whole and
//! hands it to the receiving socket whole because it asked for `UDP_GRO` ([`UdpRx`]). There
//! the frames are opened one by one and written back to TUN coalesced again ([`TunTx`]). One
//! syscall moves ~45 packets instead of one.
//!
//! All buffers are allocated once per thread and reused: nothing here allocates per packet.

use std::io::{self, IoSlice, IoSliceMut};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use nix::errno::Errno;
use nix::sys::socket::{
    ControlMessage, ControlMessageOwned, MsgFlags, SockaddrStorage, recvmsg, sendmsg, setsockopt,
    sockopt,
};
use tracing::{debug, info};
use tun_rs::{GROTable, IDEAL_BATCH_SIZE, SyncDevice, VIRTIO_NET_HDR_LEN};
use x0_dataplane::buf::{HEADROOM, TAILROOM};
use x0_link::{Impairment, Verdict};

/// Largest UDP payload read or written.
pub(crate) const MAX_DATAGRAM: usize = 65_535;
/// Most segments in one GSO send (the kernel's `UDP_MAX_SEGMENTS` is 64 on older kernels).
const MAX_SEGMENTS: usize = 64;
/// Most bytes in one GSO send (an IPv4 UDP payload holds 65,507).
const MAX_GSO_BYTES: usize = 65_000;

/// The data socket and what it was found to support.
#[derive(Debug)]
pub(crate) struct UdpIo {
    socket: UdpSocket,
    /// UDP GSO: cleared for good when the kernel refuses a segmented send.
    gso: AtomicBool,
    /// UDP GRO: whether the receive path may get coalesced datagrams.
    gro: bool,
    /// Fault injection ([`crate::fault`]), asked about every send.
    impairment: Option<Impaired>,
}

/// The fault-injection hook of the data socket: its verdicts, and how delayed frames leave.
#[derive(Debug)]
struct Impaired {
    impairment: Arc<dyn Impairment>,
    /// The same socket, for sends from timer tasks.
    socket: Arc<UdpSocket>,
    runtime: tokio::runtime::Handle,
}

impl UdpIo {
    /// Wraps `socket`, asking the kernel for coalesced receives (`UDP_GRO`).
    pub(crate) fn new(socket: UdpSocket, offload: bool) -> Self {
        let gro = offload && setsockopt(&socket, sockopt::UdpGroSegment, &true).is_ok();
        debug!(gso = offload, gro, "data socket offloads");
        Self {
            socket,
            gso: AtomicBool::new(offload),
            gro,
            impairment: None,
        }
    }

    /// Asks `impairment` about every send: dropped frames are not sent, delayed ones are sent
    /// later (one datagram each) from a task on the current tokio runtime.
    pub(crate) fn impaired(mut self, impairment: Option<Arc<dyn Impairment>>) -> io::Result<Self> {
        if let Some(impairment) = impairment {
            self.impairment = Some(Impaired {
                impairment,
                socket: Arc::new(self.socket.try_clone()?),
                runtime: tokio::runtime::Handle::try_current().map_err(io::Error::other)?,
            });
        }
        Ok(self)
    }

    /// The socket.
    pub(crate) fn socket(&self) -> &UdpSocket {
        &self.socket
    }

    /// Whether segmented sends are in use.
    pub(crate) fn gso(&self) -> bool {
        self.gso.load(Ordering::Relaxed)
    }

    /// Whether coalesced receives are in use.
    pub(crate) fn gro(&self) -> bool {
        self.gro
    }

    /// Sends `buf` to `addr` as datagrams of `segment` bytes (the last may be shorter).
    fn send_segments(&self, buf: &[u8], segment: usize, addr: SocketAddr) -> io::Result<()> {
        if let Some(i) = &self.impairment {
            match i.impairment.on_send(addr) {
                Verdict::Pass => {}
                Verdict::Drop => return Ok(()),
                Verdict::Delay(d) => {
                    let (socket, frames) = (i.socket.clone(), buf.to_vec());
                    let segment = segment.max(1);
                    i.runtime.spawn(async move {
                        tokio::time::sleep(d).await;
                        // Never block the runtime's thread: a frame that does not fit in the
                        // socket buffer now is lost, as a late datagram may be.
                        let to = SockaddrStorage::from(addr);
                        for frame in frames.chunks(segment) {
                            let _ = nix::sys::socket::sendto(
                                socket.as_raw_fd(),
                                frame,
                                &to,
                                MsgFlags::MSG_DONTWAIT,
                            );
                        }
                    });
                    return Ok(());
                }
            }
        }
        if buf.len() <= segment {
            return self.socket.send_to(buf, addr).map(drop);
        }
        if self.gso() {
            let seg = u16::try_from(segment).unwrap_or(u16::MAX);
            let cmsg = [ControlMessage::UdpGsoSegments(&seg)];
            let iov = [IoSlice::new(buf)];
            let to = SockaddrStorage::from(addr);
            match sendmsg(
                self.socket.as_raw_fd(),
                &iov,
                &cmsg,
                MsgFlags::empty(),
                Some(&to),
            ) {
                Ok(_) => return Ok(()),
                // No checksum offload on the route's device, or no GSO at all: fall back to
                // one datagram per frame, for good.
                Err(Errno::EIO | Errno::EINVAL | Errno::EOPNOTSUPP | Errno::ENOPROTOOPT) => {
                    info!(
                        "the kernel refuses UDP segmentation offload here; sending frames one by one"
                    );
                    self.gso.store(false, Ordering::Relaxed);
                }
                Err(e) => return Err(e.into()),
            }
        }
        let mut result = Ok(());
        for chunk in buf.chunks(segment) {
            if let Err(e) = self.socket.send_to(chunk, addr) {
                result = Err(e);
            }
        }
        result
    }
}

/// Link frames waiting to be sent, coalesced per destination into GSO batches.
#[derive(Debug)]
pub(crate) struct UdpTx {
    buf: Vec<u8>,
    addr: Option<SocketAddr>,
    /// Size of every frame in the batch but the last.
    segment: usize,
    count: usize,
    /// Whether the last frame was shorter than `segment` (nothing may follow it).
    closed: bool,
    /// Frames whose send failed since [`UdpTx::take_failed`].
    failed: u64,
}

impl Default for UdpTx {
    fn default() -> Self {
        Self {
            buf: Vec::with_capacity(MAX_DATAGRAM),
            addr: None,
            segment: 0,
            count: 0,
            closed: false,
            failed: 0,
        }
    }
}

impl UdpTx {
    /// Queues `frame` for `addr`, sending what was queued first if it cannot join the batch.
    pub(crate) fn push(&mut self, io: &UdpIo, addr: SocketAddr, frame: &[u8]) {
        let fits = self.count > 0
            && self.addr == Some(addr)
            && !self.closed
            && frame.len() <= self.segment
            && self.count < MAX_SEGMENTS
            && self.buf.len() + frame.len() <= MAX_GSO_BYTES
            && io.gso();
        if !fits {
            self.flush(io);
            self.addr = Some(addr);
            self.segment = frame.len();
        }
        self.buf.extend_from_slice(frame);
        self.count += 1;
        self.closed = frame.len() < self.segment;
    }

    /// Sends what is queued.
    pub(crate) fn flush(&mut self, io: &UdpIo) {
        if let Some(addr) = self.addr.take()
            && self.count > 0
            && io.send_segments(&self.buf, self.segment, addr).is_err()
        {
            self.failed += self.count as u64;
        }
        self.buf.clear();
        self.count = 0;
        self.closed = false;
    }

    /// Frames whose send failed, since the last call.
    pub(crate) fn take_failed(&mut self) -> u64 {
        std::mem::take(&mut self.failed)
    }
}

/// The receive buffer of the data socket.
#[derive(Debug)]
pub(crate) struct UdpRx {
    /// The datagram (or coalesced datagrams) last received.
    pub(crate) buf: Vec<u8>,
    cmsg: Vec<u8>,
}

impl Default for UdpRx {
    fn default() -> Self {
        Self {
            buf: vec![0u8; MAX_DATAGRAM + TAILROOM],
            cmsg: nix::cmsg_space!(std::ffi::c_int),
        }
    }
}

impl UdpRx {
    /// Receives into [`UdpRx::buf`]: returns its length and the size of the frames coalesced
    /// in it (the last may be shorter), or `None` if `wait` is false and nothing is queued.
    pub(crate) fn recv(&mut self, io: &UdpIo, wait: bool) -> io::Result<Option<(usize, usize)>> {
        let flags = if wait {
            MsgFlags::empty()
        } else {
            MsgFlags::MSG_DONTWAIT
        };
        let fd = io.socket.as_raw_fd();
        let mut iov = [IoSliceMut::new(&mut self.buf[..MAX_DATAGRAM])];
        let msg = match recvmsg::<()>(fd, &mut iov, Some(&mut self.cmsg), flags) {
            Ok(m) => m,
            Err(Errno::EAGAIN) if !wait => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let n = msg.bytes;
        let mut segment = n;
        if io.gro
            && let Ok(cmsgs) = msg.cmsgs()
        {
            for c in cmsgs {
                if let ControlMessageOwned::UdpGroSegments(size) = c
                    && let Ok(size) = usize::try_from(size)
                    && size > 0
                {
                    segment = size;
                }
            }
        }
        Ok(Some((n, segment)))
    }
}

/// Receive buffers for the TUN device: one read may give a 64 KB TCP segment, split here into
/// MTU-sized packets, each with [`HEADROOM`] before it and [`TAILROOM`] after it.
#[derive(Debug)]
pub(crate) struct TunRx {
    original: Vec<u8>,
    /// The packets of the last read, at `HEADROOM..HEADROOM + sizes[i]`.
    pub(crate) bufs: Vec<Vec<u8>>,
    /// Their sizes.
    pub(crate) sizes: Vec<usize>,
}

impl TunRx {
    /// Buffers for packets of up to `mtu` bytes.
    pub(crate) fn new(mtu: usize) -> Self {
        // Room for a packet a little over the MTU, so that one is seen (and answered with
        // Packet Too Big) rather than refused by the split.
        let size = HEADROOM + mtu.max(1280) + 256 + TAILROOM;
        Self {
            original: vec![0u8; VIRTIO_NET_HDR_LEN + MAX_DATAGRAM],
            bufs: vec![vec![0u8; size]; IDEAL_BATCH_SIZE],
            sizes: vec![0; IDEAL_BATCH_SIZE],
        }
    }

    /// Reads the next packet (or segment train) from `tun`; returns how many packets it gave.
    pub(crate) fn recv(&mut self, tun: &SyncDevice) -> io::Result<usize> {
        tun.recv_multiple(
            &mut self.original,
            &mut self.bufs,
            &mut self.sizes,
            HEADROOM,
        )
    }
}

/// Packets waiting to be written to the TUN device, coalesced by the GRO table.
pub(crate) struct TunTx {
    bufs: Vec<Vec<u8>>,
    len: usize,
    gro: GROTable,
    failed: u64,
    written: u64,
}

impl std::fmt::Debug for TunTx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunTx").field("len", &self.len).finish()
    }
}

impl Default for TunTx {
    fn default() -> Self {
        Self {
            bufs: (0..IDEAL_BATCH_SIZE)
                .map(|_| Vec::with_capacity(VIRTIO_NET_HDR_LEN + MAX_DATAGRAM))
                .collect(),
            len: 0,
            gro: GROTable::default(),
            failed: 0,
            written: 0,
        }
    }
}

impl TunTx {
    /// Queues `packet`, writing what is queued first if the batch is full.
    pub(crate) fn push(&mut self, tun: &SyncDevice, packet: &[u8]) {
        if self.len == self.bufs.len() {
            self.flush(tun);
        }
        let Some(b) = self.bufs.get_mut(self.len) else {
            return;
        };
        b.clear();
        b.resize(VIRTIO_NET_HDR_LEN, 0);
        b.extend_from_slice(packet);
        self.len += 1;
    }

    /// Writes what is queued.
    pub(crate) fn flush(&mut self, tun: &SyncDevice) {
        if self.len == 0 {
            return;
        }
        let n = self.len as u64;
        match tun.send_multiple(
            &mut self.gro,
            &mut self.bufs[..self.len],
            VIRTIO_NET_HDR_LEN,
        ) {
            Ok(_) => self.written += n,
            Err(e) => {
                debug!("TUN write failed: {e}");
                self.failed += n;
            }
        }
        self.len = 0;
    }

    /// Packets written and packets whose write failed, since the last call.
    pub(crate) fn take_counts(&mut self) -> (u64, u64) {
        (
            std::mem::take(&mut self.written),
            std::mem::take(&mut self.failed),
        )
    }
}

/// Writes one packet to `tun` (with the zeroed virtio-net header an offload device expects).
pub(crate) fn tun_write_one(tun: &SyncDevice, packet: &[u8]) -> io::Result<usize> {
    if !tun.tcp_gso() {
        return tun.send(packet);
    }
    let mut b = [0u8; VIRTIO_NET_HDR_LEN + 1280];
    let n = VIRTIO_NET_HDR_LEN + packet.len();
    match b.get_mut(VIRTIO_NET_HDR_LEN..n) {
        Some(dst) => {
            dst.copy_from_slice(packet);
            tun.send(&b[..n])
        }
        None => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "single TUN write over 1,280 bytes",
        )),
    }
}

/// Whether a TUN read error means the device is gone (as opposed to one bad packet).
pub(crate) fn tun_error_is_fatal(e: &io::Error) -> bool {
    e.raw_os_error().is_some_and(|code| {
        [Errno::EBADF, Errno::EBADFD, Errno::ENODEV, Errno::EIO]
            .iter()
            .any(|&fatal| fatal as i32 == code)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(offload: bool) -> (UdpIo, UdpSocket) {
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        (UdpIo::new(tx, offload), rx)
    }

    fn recv_all(rx: &UdpSocket, n: usize) -> Vec<Vec<u8>> {
        rx.set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .unwrap();
        let mut out = Vec::new();
        let mut buf = [0u8; 2048];
        for _ in 0..n {
            let len = rx.recv(&mut buf).unwrap();
            out.push(buf[..len].to_vec());
        }
        out
    }

    #[test]
    fn equal_frames_leave_in_one_batch_and_arrive_as_separate_datagrams() {
        for offload in [true, false] {
            let (io, rx) = pair(offload);
            let to = rx.local_addr().unwrap();
            let mut tx = UdpTx::default();
            let frames: Vec<Vec<u8>> = (0..10u8)
                .map(|i| vec![i; if i == 9 { 300 } else { 1000 }])
                .collect();
            for f in &frames {
                tx.push(&io, to, f);
            }
            // Without GSO every frame is its own send.
            let expect = if offload { 10 } else { 1 };
            assert_eq!(tx.count, expect, "offload {offload}: frames in the batch");
            tx.flush(&io);
            assert_eq!(tx.take_failed(), 0);
            assert_eq!(recv_all(&rx, 10), frames, "offload {offload}");
        }
    }

    #[test]
    fn a_short_frame_closes_the_batch_and_a_new_address_starts_one() {
        let (io, rx) = pair(true);
        let rx2 = UdpSocket::bind("127.0.0.1:0").unwrap();
        let (a, b) = (rx.local_addr().unwrap(), rx2.local_addr().unwrap());
        let mut tx = UdpTx::default();
        tx.push(&io, a, &[1; 500]);
        tx.push(&io, a, &[2; 100]);
        tx.push(&io, a, &[3; 500]);
        assert_eq!(tx.count, 1, "a frame after a short one starts a new batch");
        tx.push(&io, b, &[4; 500]);
        assert_eq!(tx.count, 1, "another destination starts a new batch");
        tx.flush(&io);
        assert_eq!(
            recv_all(&rx, 3),
            vec![vec![1; 500], vec![2; 100], vec![3; 500]]
        );
        assert_eq!(recv_all(&rx2, 1), vec![vec![4; 500]]);
    }

    #[test]
    fn gro_receive_reports_the_segment_size_and_split_gives_the_frames_back() {
        let (io, _) = pair(true);
        let rx_sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = rx_sock.local_addr().unwrap();
        let rx_io = UdpIo::new(rx_sock, true);
        let mut tx = UdpTx::default();
        let frames: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 1200]).collect();
        for f in &frames {
            tx.push(&io, to, f);
        }
        tx.flush(&io);
        let mut rx = UdpRx::default();
        let mut got = Vec::new();
        while got.len() < frames.len() {
            let (n, seg) = rx.recv(&rx_io, true).unwrap().unwrap();
            for chunk in rx.buf[..n].chunks(seg) {
                got.push(chunk.to_vec());
            }
        }
        assert_eq!(got, frames);
        assert!(
            rx.recv(&rx_io, false).unwrap().is_none(),
            "nothing else queued"
        );
    }
}
