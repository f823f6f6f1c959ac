//! The bare offload tunnel: the throughput ceiling `x0t bench throughput` judges x0t against,
//! measured in the same run.
//!
//! One endpoint process per end (`x0t bench throughput --ceiling-endpoint CONFIG`, started in
//! the lab's namespaces like the peers). Each has a TUN device with the kernel's offloads
//! (`IFF_VNET_HDR`, TSO/USO: a fast TCP flow hands over 64 KB segments, tun-rs splits them), a
//! UDP socket with GSO and GRO, and one AES-256-GCM layer (aws-lc-rs) sealed in place. Nothing
//! else: no routing, no overlay header, no second (end-to-end) layer, no replay window, no
//! shared state, no lock. Two threads per endpoint, as in the x0t daemon: TUN → UDP and
//! UDP → TUN.
//!
//! Frame: a 16-byte header (the 64-bit packet counter, big-endian, then 8 zero bytes: the size
//! of x0t's link header), the sealed packet, the 16-byte tag. The header is the AAD; the nonce
//! is the counter. Each direction has its own random key, written by the bench into the
//! endpoint's 0600 config file; a key is used for one run only, so counters never repeat under
//! it. This is a measuring instrument, not a tunnel to deploy: it has no replay protection.

use std::io::{self, IoSlice, IoSliceMut};
use std::net::{Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Arc;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use nix::errno::Errno;
use nix::sys::socket::{
    ControlMessage, ControlMessageOwned, MsgFlags, SockaddrStorage, recvmsg, sendmsg, setsockopt,
    sockopt,
};
use serde::{Deserialize, Serialize};
use tun_rs::{GROTable, IDEAL_BATCH_SIZE, SyncDevice, VIRTIO_NET_HDR_LEN};

use x0_node::exit::{self, CmdResult, Exit};

/// Bytes in front of each sealed packet.
const HEADER_LEN: usize = 16;
/// The AES-GCM tag after it.
const TAG_LEN: usize = 16;
/// Largest UDP payload read.
const MAX_DATAGRAM: usize = 65_535;
/// Most segments in one GSO send.
const MAX_SEGMENTS: usize = 64;
/// Most bytes in one GSO send.
const MAX_GSO_BYTES: usize = 65_000;
/// Frames received before what they produced is written to TUN.
const RX_BUDGET: usize = 128;
/// Socket buffers asked for (as the daemon does).
const SOCKET_BUFFER: usize = 8 << 20;
/// TUN transmit queue (as the daemon does).
const TUN_TX_QUEUE: u32 = 4096;

/// What one endpoint needs, written by the bench as JSON (mode 0600: it holds the keys).
#[derive(Debug, Serialize, Deserialize)]
pub struct EndpointConfig {
    /// TUN device name.
    pub tun: String,
    /// Its MTU.
    pub mtu: u16,
    /// Its address (a /64 is routed into it).
    pub address: Ipv6Addr,
    /// The UDP socket's address.
    pub bind: SocketAddr,
    /// The other endpoint's UDP address.
    pub peer: SocketAddr,
    /// AES-256 key for what this end sends.
    pub tx_key: Vec<u8>,
    /// AES-256 key for what it receives.
    pub rx_key: Vec<u8>,
}

fn key(bytes: &[u8]) -> Result<LessSafeKey, Exit> {
    UnboundKey::new(&AES_256_GCM, bytes)
        .map(LessSafeKey::new)
        .map_err(|_| Exit::new(exit::USAGE, "ceiling endpoint: a key is not 32 bytes"))
}

fn nonce(counter: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

fn fail(what: &str) -> impl Fn(io::Error) -> Exit + '_ {
    move |e| Exit::new(exit::FAILURE, format!("ceiling endpoint: {what}: {e}"))
}

/// Runs one endpoint until killed (the bench's lab stops it).
pub fn serve(config: &Path) -> CmdResult {
    let text = std::fs::read_to_string(config).map_err(fail("reading the config"))?;
    let cfg: EndpointConfig = serde_json::from_str(&text)
        .map_err(|e| Exit::new(exit::USAGE, format!("ceiling endpoint config: {e}")))?;
    let (tx_key, rx_key) = (key(&cfg.tx_key)?, key(&cfg.rx_key)?);
    let socket = UdpSocket::bind(cfg.bind).map_err(fail("binding the UDP socket"))?;
    socket
        .connect(cfg.peer)
        .map_err(fail("connecting the UDP socket"))?;
    if setsockopt(&socket, sockopt::RcvBufForce, &SOCKET_BUFFER).is_err() {
        let _ = setsockopt(&socket, sockopt::RcvBuf, &SOCKET_BUFFER);
    }
    if setsockopt(&socket, sockopt::SndBufForce, &SOCKET_BUFFER).is_err() {
        let _ = setsockopt(&socket, sockopt::SndBuf, &SOCKET_BUFFER);
    }
    setsockopt(&socket, sockopt::UdpGroSegment, &true)
        .map_err(|e| fail("asking for UDP GRO")(e.into()))?;
    let tun = tun_rs::DeviceBuilder::new()
        .name(&cfg.tun)
        .ipv6(cfg.address, 64u8)
        .mtu(cfg.mtu)
        .tx_queue_len(TUN_TX_QUEUE)
        .offload(true)
        .build_sync()
        .map_err(fail("opening the TUN device"))?;
    if !tun.tcp_gso() {
        return Err(Exit::new(
            exit::FAILURE,
            "ceiling endpoint: the TUN device has no offloads (IFF_VNET_HDR)",
        ));
    }
    let (tun, socket) = (Arc::new(tun), Arc::new(socket));
    let (rx_tun, rx_socket) = (tun.clone(), socket.clone());
    let receiver = std::thread::Builder::new()
        .name("ceiling-rx".into())
        .spawn(move || udp_to_tun(&rx_tun, &rx_socket, &rx_key))
        .map_err(fail("starting the receive thread"))?;
    let sent = tun_to_udp(&tun, &socket, &tx_key, usize::from(cfg.mtu));
    let received = receiver
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("receive thread panicked")));
    sent.and(received).map_err(fail("packet loop"))
}

/// TUN → seal → UDP, in GSO batches sent straight from the packets' buffers (one iovec per
/// frame: no copy).
fn tun_to_udp(
    tun: &SyncDevice,
    socket: &UdpSocket,
    key: &LessSafeKey,
    mtu: usize,
) -> io::Result<()> {
    let mut original = vec![0u8; VIRTIO_NET_HDR_LEN + MAX_DATAGRAM];
    let size = HEADER_LEN + mtu.max(1280) + 256 + TAG_LEN;
    let mut bufs = vec![vec![0u8; size]; IDEAL_BATCH_SIZE];
    let mut sizes = vec![0usize; IDEAL_BATCH_SIZE];
    // Frame lengths of the sealed packets, in buffer order.
    let mut lens = vec![0usize; IDEAL_BATCH_SIZE];
    let mut counter = 0u64;
    let mut gso = true;
    loop {
        let count = match tun.recv_multiple(&mut original, &mut bufs, &mut sizes, HEADER_LEN) {
            Ok(n) => n,
            Err(e) if is_fatal(&e) => return Err(e),
            // One packet the offload split refused: skip it.
            Err(_) => continue,
        };
        for (i, (buf, &n)) in bufs.iter_mut().zip(&sizes).take(count).enumerate() {
            lens[i] = 0;
            let (header, rest) = buf.split_at_mut(HEADER_LEN);
            header[..8].copy_from_slice(&counter.to_be_bytes());
            header[8..].fill(0);
            let body = rest
                .get_mut(..n + TAG_LEN)
                .ok_or_else(|| io::Error::other("packet larger than its buffer"))?;
            let (plain, tag_out) = body.split_at_mut(n);
            let tag = key
                .seal_in_place_separate_tag(nonce(counter), Aad::from(&*header), plain)
                .map_err(|_| io::Error::other("seal failed"))?;
            tag_out.copy_from_slice(tag.as_ref());
            counter += 1;
            lens[i] = HEADER_LEN + n + TAG_LEN;
        }
        // Buffers are never short of room (each holds the MTU and more), so every packet read
        // was sealed: frames 0..count.
        let frames = count;
        let frame = |i: usize| &bufs[i][..lens[i]];
        let mut i = 0;
        while i < frames {
            let segment = frame(i).len();
            let (mut j, mut bytes) = (i, 0);
            while j < frames
                && j - i < MAX_SEGMENTS
                && frame(j).len() <= segment
                && bytes + frame(j).len() <= MAX_GSO_BYTES
            {
                bytes += frame(j).len();
                j += 1;
                if frame(j - 1).len() < segment {
                    break;
                }
            }
            if !gso {
                j = i + 1;
            }
            let iov: Vec<IoSlice<'_>> = (i..j).map(|k| IoSlice::new(frame(k))).collect();
            let seg = u16::try_from(segment).unwrap_or(u16::MAX);
            let gso_cmsg = [ControlMessage::UdpGsoSegments(&seg)];
            let cmsgs: &[ControlMessage<'_>] = if j - i > 1 { &gso_cmsg } else { &[] };
            match sendmsg::<SockaddrStorage>(
                socket.as_raw_fd(),
                &iov,
                cmsgs,
                MsgFlags::empty(),
                None,
            ) {
                Ok(_) => i = j,
                Err(Errno::EIO | Errno::EINVAL | Errno::EOPNOTSUPP) if j - i > 1 => gso = false,
                // A full socket buffer or an unreachable peer: the frames are lost, as on a
                // wire.
                Err(_) => i = j,
            }
        }
    }
}

/// Whether a TUN read error means the device is gone.
fn is_fatal(e: &io::Error) -> bool {
    e.raw_os_error().is_some_and(|code| {
        [Errno::EBADF, Errno::EBADFD, Errno::ENODEV, Errno::EIO]
            .iter()
            .any(|&fatal| fatal as i32 == code)
    })
}

/// UDP (GRO) → open → TUN, coalesced again by tun-rs's GRO table.
fn udp_to_tun(tun: &SyncDevice, socket: &UdpSocket, key: &LessSafeKey) -> io::Result<()> {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut cmsg = nix::cmsg_space!(std::ffi::c_int);
    let mut out: Vec<Vec<u8>> = (0..IDEAL_BATCH_SIZE)
        .map(|_| Vec::with_capacity(VIRTIO_NET_HDR_LEN + MAX_DATAGRAM))
        .collect();
    let mut gro = GROTable::default();
    loop {
        let mut queued = 0;
        let mut frames = 0;
        let mut wait = true;
        while frames < RX_BUDGET {
            let flags = if wait {
                MsgFlags::empty()
            } else {
                MsgFlags::MSG_DONTWAIT
            };
            let mut iov = [IoSliceMut::new(&mut buf)];
            let (n, segment) =
                match recvmsg::<()>(socket.as_raw_fd(), &mut iov, Some(&mut cmsg), flags) {
                    Ok(msg) => {
                        let mut segment = msg.bytes;
                        for c in msg.cmsgs().into_iter().flatten() {
                            if let ControlMessageOwned::UdpGroSegments(s) = c {
                                segment = usize::try_from(s).unwrap_or(segment).max(1);
                            }
                        }
                        (msg.bytes, segment)
                    }
                    Err(Errno::EAGAIN) if !wait => break,
                    Err(Errno::EBADF) => return Err(io::Error::from(Errno::EBADF)),
                    Err(_) => break,
                };
            wait = false;
            for frame in buf[..n].chunks_mut(segment.max(1)) {
                frames += 1;
                if frame.len() < HEADER_LEN + TAG_LEN {
                    continue;
                }
                let (header, body) = frame.split_at_mut(HEADER_LEN);
                let mut c = [0u8; 8];
                c.copy_from_slice(&header[..8]);
                let counter = u64::from_be_bytes(c);
                let Ok(plain) = key.open_in_place(nonce(counter), Aad::from(&*header), body) else {
                    continue;
                };
                if queued == out.len() {
                    let _ = tun.send_multiple(&mut gro, &mut out[..queued], VIRTIO_NET_HDR_LEN);
                    queued = 0;
                }
                let b = &mut out[queued];
                b.clear();
                b.resize(VIRTIO_NET_HDR_LEN, 0);
                b.extend_from_slice(plain);
                queued += 1;
            }
        }
        if queued > 0 {
            // A failed write is a lost packet, as on a wire.
            let _ = tun.send_multiple(&mut gro, &mut out[..queued], VIRTIO_NET_HDR_LEN);
        }
    }
}
