//! Locally visible underlay failures.
//!
//! When an underlay interface loses its carrier, is set down, or loses the address a link was
//! using, probes would need `detect_multiplier` intervals (300 ms by default) to notice. The
//! kernel knows at once: this task listens to rtnetlink's link and address notifications and,
//! after each burst of them, checks every link's local address against the interfaces that are
//! up and running. A link whose local address is gone, or sits on an interface that is not
//! running, has its QUIC connection closed, which the routing core sees as a local failure
//! immediately (fast reroute follows, no probe interval is waited for).
//!
//! Without rtnetlink (not Linux, or a sandbox forbidding netlink sockets) the daemon says so
//! once and relies on probes.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::sync::Arc;

use netlink_sys::{AsyncSocket as _, AsyncSocketExt as _, SocketAddr, TokioSocket, protocols};
use nix::ifaddrs::getifaddrs;
use nix::net::if_::InterfaceFlags;
use tracing::{debug, info, warn};
use x0_identity::NodeId;

/// rtnetlink multicast groups (`RTMGRP_*` in `linux/rtnetlink.h`).
const RTMGRP_LINK: u32 = 0x1;
const RTMGRP_IPV4_IFADDR: u32 = 0x10;
const RTMGRP_IPV6_IFADDR: u32 = 0x100;

/// Close code for a link whose underlay interface or address went away.
pub(crate) const CLOSE_UNDERLAY_DOWN: u32 = 8;

/// The local IP addresses on interfaces that are up and running, with the interface name.
pub(crate) fn usable_addresses() -> io::Result<HashMap<IpAddr, String>> {
    let mut usable = HashMap::new();
    for ifa in getifaddrs().map_err(io::Error::from)? {
        let running = ifa
            .flags
            .contains(InterfaceFlags::IFF_UP | InterfaceFlags::IFF_RUNNING);
        if !running {
            continue;
        }
        let Some(addr) = ifa.address else { continue };
        let ip = if let Some(v4) = addr.as_sockaddr_in() {
            IpAddr::V4(v4.ip())
        } else if let Some(v6) = addr.as_sockaddr_in6() {
            IpAddr::V6(v6.ip())
        } else {
            continue;
        };
        usable.insert(ip, ifa.interface_name);
    }
    Ok(usable)
}

/// The links to close, given each link's local address (`None`: no route to the peer any
/// more): those without a route, and those whose local address is not on an interface that is
/// up and running.
pub(crate) fn dead_links(
    links: &[(NodeId, Option<IpAddr>)],
    usable: &HashMap<IpAddr, String>,
) -> Vec<NodeId> {
    links
        .iter()
        .filter_map(|(peer, local)| {
            let Some(ip) = *local else {
                return Some(*peer);
            };
            // An IPv4-mapped local address (dual-stack socket) is checked as IPv4.
            let ip = match ip {
                IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
                v4 => v4,
            };
            (!ip.is_unspecified() && !usable.contains_key(&ip)).then_some(*peer)
        })
        .collect()
}

/// The local address traffic to `remote` leaves from, as the kernel's routing picks it now
/// (a connected UDP socket sends nothing): `bind` is the endpoint's bound address (a specific
/// address keeps it as the source). `None` when there is no route to `remote` at all.
pub(crate) fn local_address_towards(bind: IpAddr, remote: std::net::SocketAddr) -> Option<IpAddr> {
    let bind = match (bind, remote) {
        (IpAddr::V4(b), std::net::SocketAddr::V6(_)) if b.is_unspecified() => {
            IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
        }
        (b, _) => b,
    };
    let socket = std::net::UdpSocket::bind((bind, 0)).ok()?;
    socket.connect(remote).ok()?;
    Some(socket.local_addr().ok()?.ip())
}

/// Runs until the netlink socket fails: calls `on_change` after each burst of link or address
/// notifications.
pub(crate) async fn watch(on_change: Arc<dyn Fn() + Send + Sync>) {
    let socket = match open() {
        Ok(s) => s,
        Err(e) => {
            warn!(
                "cannot watch the underlay interfaces through rtnetlink ({e}); interface failures will be noticed by probes only"
            );
            return;
        }
    };
    info!("watching the underlay interfaces (rtnetlink)");
    let mut buf = bytes::BytesMut::with_capacity(64 * 1024);
    loop {
        buf.clear();
        if let Err(e) = socket.recv(&mut buf).await {
            warn!("rtnetlink watch stopped: {e}");
            return;
        }
        // Drain whatever else is queued, then check once.
        loop {
            buf.clear();
            let more = futures_now(socket.recv(&mut buf));
            match more {
                Some(Ok(())) => continue,
                _ => break,
            }
        }
        debug!("underlay interfaces changed");
        on_change();
    }
}

fn open() -> io::Result<TokioSocket> {
    let mut socket = TokioSocket::new(protocols::NETLINK_ROUTE)?;
    socket.socket_mut().bind(&SocketAddr::new(
        0,
        RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR,
    ))?;
    Ok(socket)
}

/// Polls a future once: its output if it is ready now.
fn futures_now<F: std::future::Future>(f: F) -> Option<F::Output> {
    let mut f = std::pin::pin!(f);
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    match f.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(v) => Some(v),
        std::task::Poll::Pending => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    #[test]
    fn loopback_is_usable_and_links_on_vanished_addresses_are_dead() {
        let usable = usable_addresses().unwrap();
        assert!(usable.contains_key(&IpAddr::V4(Ipv4Addr::LOCALHOST)));
        let a = NodeId::from_bytes([1; NodeId::LEN]);
        let b = NodeId::from_bytes([2; NodeId::LEN]);
        let c = NodeId::from_bytes([3; NodeId::LEN]);
        let d = NodeId::from_bytes([4; NodeId::LEN]);
        let links = [
            (a, Some(IpAddr::V4(Ipv4Addr::LOCALHOST))),
            // TEST-NET-2: never assigned to an interface here.
            (b, Some(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7)))),
            (c, None),
            (d, Some(IpAddr::V6(Ipv4Addr::LOCALHOST.to_ipv6_mapped()))),
        ];
        assert_eq!(dead_links(&links, &usable), vec![b, c]);
        let lo = local_address_towards(
            IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            "127.0.0.1:9".parse().unwrap(),
        );
        assert_eq!(lo, Some(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        let unspecified = [(a, Some(IpAddr::V6(Ipv6Addr::UNSPECIFIED)))];
        assert!(dead_links(&unspecified, &usable).is_empty());
    }
}
