//! Real-kernel tests: the programs loaded, attached in network namespaces made here, and
//! counting traffic sent here.
//!
//! They need root (CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON) and `ip`; elsewhere each test prints
//! why it is skipped and passes. Every test makes its own pair of namespaces named
//! `x0tel-<pid>-<test>-{a,b}`, joined by a veth pair, with addresses only inside them, and a
//! guard deletes them also when the test fails. Traffic goes only to those addresses.
//!
//! The tracepoints see the whole host, so their assertions are lower bounds: other tests may
//! add to the same counters, never take away.

use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use aya::programs::{SchedClassifier, TcAttachType};
use nix::sched::{CloneFlags, setns};
use x0_telemetry::Direction::{Egress, Ingress};
use x0_telemetry::{
    MalformedKind, Protocol, RunTimeStats, Sample, TcpState, Telemetry, TelemetryConfig,
    TelemetryError, UnderlayHook, XdpAttachMode,
};

const VETH_A: &str = "x0a";
const VETH_B: &str = "x0b";

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

fn which(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
        .unwrap_or(false)
}

/// Root and the tools, or a printed reason and `false`.
fn ready_or_skip(test: &str, tools: &[(&str, &str)]) -> bool {
    if !is_root() {
        eprintln!("SKIPPED {test}: needs root (CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON)");
        return false;
    }
    for (program, package) in tools {
        if !which(program) {
            eprintln!("SKIPPED {test}: `{program}` missing: apt-get install -y {package}");
            return false;
        }
    }
    true
}

fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Output {
    use std::io::Write;
    let mut child = Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{program} {args:?}: {e}"));
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    child.wait_with_output().unwrap()
}

fn ok(program: &str, args: &[&str]) -> String {
    let out = run(program, args, None);
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Two namespaces joined by a veth pair: `a` holds `10.231.<subnet>.1/24` on `x0a`, `b`
/// holds `.2` on `x0b`. Dropping it deletes both namespaces (and with them the veth).
struct NetnsPair {
    a: String,
    b: String,
    addr_a: Ipv4Addr,
    addr_b: Ipv4Addr,
}

impl NetnsPair {
    fn up(test: &str, subnet: u8) -> Self {
        let pid = std::process::id();
        let pair = Self {
            a: format!("x0tel-{pid}-{test}-a"),
            b: format!("x0tel-{pid}-{test}-b"),
            addr_a: Ipv4Addr::new(10, 231, subnet, 1),
            addr_b: Ipv4Addr::new(10, 231, subnet, 2),
        };
        // From here on, a failed step still deletes what exists.
        ok("ip", &["netns", "add", &pair.a]);
        ok("ip", &["netns", "add", &pair.b]);
        let (cidr_a, cidr_b) = (format!("{}/24", pair.addr_a), format!("{}/24", pair.addr_b));
        for args in [
            vec![
                "-n", &pair.a, "link", "add", VETH_A, "type", "veth", "peer", "name", VETH_B,
                "netns", &pair.b,
            ],
            vec!["-n", &pair.a, "addr", "add", &cidr_a, "dev", VETH_A],
            vec!["-n", &pair.b, "addr", "add", &cidr_b, "dev", VETH_B],
            vec!["-n", &pair.a, "link", "set", "lo", "up"],
            vec!["-n", &pair.b, "link", "set", "lo", "up"],
            vec!["-n", &pair.a, "link", "set", VETH_A, "up"],
            vec!["-n", &pair.b, "link", "set", VETH_B, "up"],
        ] {
            ok("ip", &args);
        }
        pair
    }

    fn path(name: &str) -> PathBuf {
        PathBuf::from("/run/netns").join(name)
    }

    /// Runs `work` on a thread inside namespace `name`; sockets it creates stay there.
    fn inside<T: Send>(name: &str, work: impl FnOnce() -> T + Send) -> T {
        let file = std::fs::File::open(Self::path(name)).unwrap();
        std::thread::scope(|s| {
            s.spawn(|| {
                setns(&file, CloneFlags::CLONE_NEWNET).unwrap();
                work()
            })
            .join()
            .unwrap()
        })
    }
}

impl Drop for NetnsPair {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            let _ = run("ip", &["netns", "del", ns], None);
        }
    }
}

fn ours(prefix: &str) -> Vec<String> {
    ok("ip", &["netns", "list"])
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(prefix))
        .map(str::to_owned)
        .collect()
}

/// A 20-byte IPv4 header for the raw socket (IPPROTO_RAW: the header is ours; the kernel fills
/// in the total length, id and checksum). The kernel refuses to send a header length below 5,
/// but sends a wrong version number as it is.
fn ipv4_header(version: u8, protocol: u8, src: Ipv4Addr, dst: Ipv4Addr, total: u16) -> Vec<u8> {
    let mut h = vec![version << 4 | 5, 0];
    h.extend_from_slice(&total.to_be_bytes());
    h.extend_from_slice(&[0x12, 0x34, 0, 0, 64, protocol, 0, 0]);
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    h
}

fn send_raw(packet: &[u8], dst: Ipv4Addr) {
    use rustix::net::{AddressFamily, SendFlags, SocketType, ipproto, sendto, socket};
    let fd = socket(AddressFamily::INET, SocketType::RAW, Some(ipproto::RAW)).unwrap();
    let sent = sendto(&fd, packet, SendFlags::empty(), &SocketAddrV4::new(dst, 0)).unwrap();
    assert_eq!(sent, packet.len());
}

/// Samples until `done` holds or 10 s pass; returns the last sample (the caller asserts).
fn sample_until(telemetry: &Telemetry, done: impl Fn(&Sample) -> bool) -> Sample {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = telemetry.sample().unwrap();
        if done(&s) || Instant::now() > deadline {
            return s;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The kernel frees programs after an RCU grace period; waits up to 10 s for it.
fn assert_unloaded(ids: &[u32]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let loaded: Vec<u32> = aya::programs::loaded_programs()
            .filter_map(Result::ok)
            .map(|p| p.id())
            .filter(|id| ids.contains(id))
            .collect();
        if loaded.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "programs {loaded:?} still loaded"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The ids of the programs attached to `x0b` in `ns`, by XDP (from `ip -d link`) and TCX
/// (both directions).
fn attached_ids(ns: &str) -> Vec<u32> {
    let link = ok("ip", &["-n", ns, "-d", "link", "show", "dev", VETH_B]);
    let mut ids: Vec<u32> = link
        .split("prog/xdp id ")
        .skip(1)
        .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
        .collect();
    NetnsPair::inside(ns, || {
        for direction in [TcAttachType::Ingress, TcAttachType::Egress] {
            let (_, programs) = SchedClassifier::query_tcx(VETH_B, direction).unwrap();
            ids.extend(programs.iter().map(|p| p.id()));
        }
    });
    ids
}

/// Attaches the underlay counter to `x0b` in namespace b with `hook`, sends known traffic from
/// a, and checks every count; then checks that dropping the handle detaches it.
fn underlay_counts_peers_protocols_and_malformed_frames(
    test: &str,
    subnet: u8,
    hook: UnderlayHook,
) {
    if !ready_or_skip(test, &[("ip", "iproute2"), ("ping", "iputils-ping")]) {
        return;
    }
    let pair = NetnsPair::up(test, subnet);
    let config = TelemetryConfig {
        interfaces: vec![VETH_B.into()],
        netns: Some(NetnsPair::path(&pair.b)),
        hook,
        tracepoints: false,
        ..TelemetryConfig::default()
    };
    let telemetry = Telemetry::start(&config).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(telemetry.interfaces().len(), 1);
    assert_eq!(telemetry.interfaces()[0].name, VETH_B);
    assert!(!telemetry.tracepoints_attached());
    let ids = telemetry.program_ids();
    let attached = attached_ids(&pair.b);
    match hook {
        UnderlayHook::Tc => assert_eq!(ids.len(), 2),
        _ => {
            assert_eq!(ids.len(), 1);
            let link = ok("ip", &["-n", &pair.b, "-d", "link", "show", "dev", VETH_B]);
            let generic = link.contains("xdpgeneric");
            assert_eq!(
                generic,
                hook == UnderlayHook::Xdp(XdpAttachMode::Generic),
                "{link}"
            );
        }
    }
    assert!(
        ids.iter().all(|id| attached.contains(id)),
        "{ids:?} not in {attached:?}"
    );

    // ICMP: 5 echo requests (98-byte frames: 14 Ethernet + 20 IP + 8 ICMP + 56 data). The
    // replies prove the program passes them on.
    let ping = ok(
        "ip",
        &[
            "netns",
            "exec",
            &pair.a,
            "ping",
            "-c",
            "5",
            "-i",
            "0.05",
            "-W",
            "2",
            "-q",
            &pair.addr_b.to_string(),
        ],
    );
    assert!(ping.contains("5 received"), "{ping}");

    // UDP: 20 datagrams of 100 bytes to a bound socket in b, all of which must arrive.
    const DATAGRAMS: u64 = 20;
    const PAYLOAD: usize = 100;
    let receiver = NetnsPair::inside(&pair.b, || UdpSocket::bind((pair.addr_b, 0)).unwrap());
    receiver
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let to = receiver.local_addr().unwrap();
    NetnsPair::inside(&pair.a, || {
        let sender = UdpSocket::bind((pair.addr_a, 0)).unwrap();
        for i in 0..DATAGRAMS {
            sender.send_to(&[i as u8; PAYLOAD], to).unwrap();
        }
    });
    let mut buf = [0u8; 2048];
    for _ in 0..DATAGRAMS {
        let (n, from) = receiver.recv_from(&mut buf).unwrap();
        assert_eq!((n, from.ip()), (PAYLOAD, pair.addr_a.into()));
    }

    // Malformed: an IPv4 frame whose header says version 5, and a UDP packet cut to 4 bytes
    // of its 8-byte header.
    NetnsPair::inside(&pair.a, || {
        let mut bad_version = ipv4_header(5, 17, pair.addr_a, pair.addr_b, 28);
        bad_version.extend_from_slice(&[0; 8]);
        send_raw(&bad_version, pair.addr_b);
        let mut short_udp = ipv4_header(4, 17, pair.addr_a, pair.addr_b, 24);
        short_udp.extend_from_slice(&[0x30, 0x39, 0x00, 0x09]);
        send_raw(&short_udp, pair.addr_b);
    });

    let peer = pair.addr_a.into();
    let s = sample_until(&telemetry, |s| {
        let i = s.interface(VETH_B).unwrap();
        i.flow(Ingress, peer, Protocol::Udp).packets > DATAGRAMS
            && i.malformed(MalformedKind::BadIpHeader) > 0
    });
    let iface = s.interface(VETH_B).unwrap();
    eprintln!("{hook:?}: {iface:#?}");

    let udp = iface.flow(Ingress, peer, Protocol::Udp);
    assert_eq!(udp.packets, DATAGRAMS + 1, "{udp:?}");
    assert_eq!(
        udp.bytes,
        DATAGRAMS * (14 + 20 + 8 + PAYLOAD as u64) + (14 + 24),
        "{udp:?}"
    );
    assert_eq!(udp.malformed, 1, "the cut UDP header: {udp:?}");

    let icmp = iface.flow(Ingress, peer, Protocol::Icmp);
    assert_eq!(
        (icmp.packets, icmp.bytes, icmp.malformed),
        (5, 5 * 98, 0),
        "{icmp:?}"
    );
    assert_eq!(iface.flow(Ingress, peer, Protocol::Tcp).packets, 0);
    assert_eq!(iface.by_peer(Ingress)[&peer].packets, DATAGRAMS + 1 + 5);
    assert_eq!(
        iface.by_protocol(Ingress)[&Protocol::Udp],
        udp,
        "only a sends UDP to b"
    );
    // b's own address never sends to b.
    assert!(!iface.by_peer(Ingress).contains_key(&pair.addr_b.into()));

    let replies = iface.flow(Egress, peer, Protocol::Icmp);
    match hook {
        // The 5 echo replies b sent back to a.
        UnderlayHook::Tc => assert_eq!((replies.packets, replies.bytes), (5, 5 * 98)),
        _ => assert!(
            iface.by_peer(Egress).is_empty(),
            "XDP sees only received frames"
        ),
    }

    assert_eq!(iface.malformed(MalformedKind::BadIpHeader), 1);
    assert_eq!(iface.malformed(MalformedKind::TruncatedEthernet), 0);
    assert_eq!(iface.malformed_total(), 2);
    assert!(
        iface.non_ip.packets >= 1,
        "a's ARP request for b: {iface:?}"
    );
    assert!(iface.non_ip.bytes >= 42 * iface.non_ip.packets);
    assert_eq!(iface.flow_table_full, 0);

    // Dropping detaches from the device and unloads the programs.
    drop(telemetry);
    let attached = attached_ids(&pair.b);
    assert!(
        ids.iter().all(|id| !attached.contains(id)),
        "still attached: {attached:?}"
    );
    assert_unloaded(&ids);

    let prefix = format!("x0tel-{}-{test}-", std::process::id());
    drop(pair);
    assert!(
        ours(&prefix).is_empty(),
        "namespaces left: {:?}",
        ours(&prefix)
    );
}

#[test]
fn tc_counts_peers_protocols_and_malformed_frames_both_ways() {
    underlay_counts_peers_protocols_and_malformed_frames("tc", 1, UnderlayHook::Tc);
}

#[test]
fn xdp_generic_counts_peers_protocols_and_malformed_frames() {
    let hook = UnderlayHook::Xdp(XdpAttachMode::Generic);
    underlay_counts_peers_protocols_and_malformed_frames("xdpgen", 4, hook);
}

#[test]
fn xdp_native_on_veth_counts_the_same() {
    let hook = UnderlayHook::Xdp(XdpAttachMode::Native);
    underlay_counts_peers_protocols_and_malformed_frames("xdpnat", 5, hook);
}

/// A TCP stream through the TC hook: GSO packets count as the segments on the wire, so the
/// counted bytes cover at least the payload plus 66 bytes of headers per segment.
#[test]
fn tc_counts_gso_segments_of_a_tcp_stream() {
    let test = "gso";
    if !ready_or_skip(test, &[("ip", "iproute2")]) {
        return;
    }
    let pair = NetnsPair::up(test, 6);
    let config = TelemetryConfig {
        interfaces: vec![VETH_B.into()],
        netns: Some(NetnsPair::path(&pair.b)),
        tracepoints: false,
        ..TelemetryConfig::default()
    };
    let telemetry = Telemetry::start(&config).unwrap_or_else(|e| panic!("{e}"));
    const BYTES: usize = 4 << 20;
    let listener = NetnsPair::inside(&pair.b, || TcpListener::bind((pair.addr_b, 0)).unwrap());
    let to = listener.local_addr().unwrap();
    let reader = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut sink = Vec::new();
        std::io::Read::read_to_end(&mut stream, &mut sink).unwrap();
        sink.len()
    });
    NetnsPair::inside(&pair.a, || {
        let mut stream = TcpStream::connect_timeout(&to, Duration::from_secs(5)).unwrap();
        std::io::Write::write_all(&mut stream, &vec![7u8; BYTES]).unwrap();
    });
    assert_eq!(reader.join().unwrap(), BYTES);

    let peer = pair.addr_a.into();
    let s = sample_until(&telemetry, |s| {
        s.interface(VETH_B)
            .unwrap()
            .flow(Ingress, peer, Protocol::Tcp)
            .bytes
            > BYTES as u64
    });
    let tcp = s
        .interface(VETH_B)
        .unwrap()
        .flow(Ingress, peer, Protocol::Tcp);
    eprintln!("{tcp:?}");
    // MSS 1448 (MTU 1500, timestamps): at least BYTES / 1448 data segments.
    let segments = (BYTES as u64).div_ceil(1448);
    assert!(
        tcp.packets >= segments,
        "{tcp:?}: fewer than {segments} segments"
    );
    assert!(tcp.bytes >= BYTES as u64 + 66 * segments, "{tcp:?}");
    // Not more than one ACK-sized frame per data segment on top (handshake, FIN, window probes).
    assert!(tcp.packets <= 2 * segments, "{tcp:?}");
    assert_eq!(tcp.malformed, 0);
}

/// More flows on one CPU than it has slots for (8 peers, all sent from CPU 0): the first
/// ones are counted in the CPU's slots, the rest in the flow table, and the sample adds both
/// up exactly, under TC and under XDP.
#[test]
fn flows_beyond_the_cpu_slots_are_counted_in_the_table() {
    let test = "slots";
    if !ready_or_skip(test, &[("ip", "iproute2")]) {
        return;
    }
    const PEERS: u8 = 8;
    const DATAGRAMS: u64 = 7;
    let pair = NetnsPair::up(test, 8);
    let peers: Vec<Ipv4Addr> = (0..PEERS)
        .map(|i| Ipv4Addr::new(10, 231, 8, 10 + i))
        .collect();
    for peer in &peers {
        ok(
            "ip",
            &[
                "-n",
                &pair.a,
                "addr",
                "add",
                &format!("{peer}/24"),
                "dev",
                VETH_A,
            ],
        );
    }
    let receiver = NetnsPair::inside(&pair.b, || UdpSocket::bind((pair.addr_b, 0)).unwrap());
    receiver
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let to = receiver.local_addr().unwrap();
    let mut first_cpu = nix::sched::CpuSet::new();
    first_cpu.set(0).unwrap();

    for hook in [UnderlayHook::Tc, UnderlayHook::Xdp(XdpAttachMode::Generic)] {
        let config = TelemetryConfig {
            interfaces: vec![VETH_B.into()],
            netns: Some(NetnsPair::path(&pair.b)),
            hook,
            tracepoints: false,
            ..TelemetryConfig::default()
        };
        let telemetry = Telemetry::start(&config).unwrap_or_else(|e| panic!("{e}"));
        NetnsPair::inside(&pair.a, || {
            // veth hands the frame to the receiving stack on the sending CPU.
            nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &first_cpu).unwrap();
            for peer in &peers {
                let sender = UdpSocket::bind((*peer, 0)).unwrap();
                for i in 0..DATAGRAMS {
                    sender.send_to(&[i as u8; 32], to).unwrap();
                }
            }
        });
        let mut buf = [0u8; 64];
        for _ in 0..u64::from(PEERS) * DATAGRAMS {
            receiver.recv_from(&mut buf).unwrap();
        }
        let s = telemetry.sample().unwrap();
        let iface = s.interface(VETH_B).unwrap();
        for peer in &peers {
            let udp = iface.flow(Ingress, (*peer).into(), Protocol::Udp);
            assert_eq!(udp.packets, DATAGRAMS, "{hook:?} {peer}: {iface:#?}");
            assert_eq!(udp.bytes, DATAGRAMS * (14 + 20 + 8 + 32), "{hook:?} {peer}");
        }
        assert_eq!(iface.flow_table_full, 0);
    }
}

/// With run-time statistics on, the kernel counts each run of the TC programs and the time
/// it took: at least one ingress run per datagram received, one egress run per reply.
#[test]
fn run_time_stats_count_every_program_run() {
    let test = "stats";
    if !ready_or_skip(test, &[("ip", "iproute2")]) {
        return;
    }
    let pair = NetnsPair::up(test, 7);
    let config = TelemetryConfig {
        interfaces: vec![VETH_B.into()],
        netns: Some(NetnsPair::path(&pair.b)),
        tracepoints: false,
        ..TelemetryConfig::default()
    };
    let telemetry = Telemetry::start(&config).unwrap_or_else(|e| panic!("{e}"));
    let stats = RunTimeStats::enable().unwrap_or_else(|e| panic!("{e}"));
    let before = telemetry.program_run_stats().unwrap();
    let mut names: Vec<&str> = before.iter().map(|p| p.name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["x0_tc_egress", "x0_tc_ingress"]);
    assert!(
        before
            .iter()
            .all(|p| telemetry.program_ids().contains(&p.id))
    );

    // 50 datagrams to b, each echoed back to a.
    const DATAGRAMS: u64 = 50;
    let echo = NetnsPair::inside(&pair.b, || UdpSocket::bind((pair.addr_b, 0)).unwrap());
    echo.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let to = echo.local_addr().unwrap();
    let sender = NetnsPair::inside(&pair.a, || UdpSocket::bind((pair.addr_a, 0)).unwrap());
    sender
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 64];
    for i in 0..DATAGRAMS {
        sender.send_to(&i.to_be_bytes(), to).unwrap();
        let (n, from) = echo.recv_from(&mut buf).unwrap();
        echo.send_to(&buf[..n], from).unwrap();
        sender.recv_from(&mut buf).unwrap();
    }
    let after = telemetry.program_run_stats().unwrap();
    drop(stats);
    for program in &after {
        let earlier = before.iter().find(|p| p.id == program.id).unwrap();
        let ran = program.since(earlier);
        eprintln!("{ran:?}: {:?} ns per run", ran.ns_per_run());
        assert!(ran.run_count >= DATAGRAMS, "{ran:?}");
        assert!(ran.run_time_ns > 0, "{ran:?}");
    }
}

#[test]
fn tracepoints_count_drops_by_reason_retransmits_and_tcp_states() {
    let test = "tp";
    if !ready_or_skip(test, &[("ip", "iproute2"), ("nft", "nftables")]) {
        return;
    }
    let pair = NetnsPair::up(test, 2);
    let config = TelemetryConfig {
        tracepoints: true,
        ..TelemetryConfig::default()
    };
    let mut telemetry = Telemetry::start(&config).unwrap_or_else(|e| panic!("{e}"));
    assert!(telemetry.tracepoints_attached());
    assert!(telemetry.interfaces().is_empty());
    assert_eq!(telemetry.program_ids().len(), 3);
    let names = telemetry.drop_reason_names();
    assert!(!names.is_empty(), "drop reasons come from the kernel's BTF");
    let _ = telemetry.next_delta().unwrap(); // start the interval here

    // UDP to a port nobody listens on in b: dropped with NO_SOCKET.
    const CLOSED: u64 = 10;
    NetnsPair::inside(&pair.a, || {
        let sender = UdpSocket::bind((pair.addr_a, 0)).unwrap();
        for _ in 0..CLOSED {
            sender.send_to(b"nobody home", (pair.addr_b, 9)).unwrap();
        }
    });
    // An IPv4 frame whose header says version 5: b's IP layer drops it with IP_INHDR.
    NetnsPair::inside(&pair.a, || {
        let mut bad_version = ipv4_header(5, 17, pair.addr_a, pair.addr_b, 28);
        bad_version.extend_from_slice(&[0; 8]);
        send_raw(&bad_version, pair.addr_b);
    });

    // A TCP connection that completes: CLOSE → SYN_SENT → ESTABLISHED on a's side.
    let listener = NetnsPair::inside(&pair.b, || TcpListener::bind((pair.addr_b, 0)).unwrap());
    let open = listener.local_addr().unwrap();
    let client = NetnsPair::inside(&pair.a, || {
        TcpStream::connect_timeout(&open, Duration::from_secs(5)).unwrap()
    });
    let (server, _) = listener.accept().unwrap();
    drop((client, server));

    // A TCP connection whose SYNs b's firewall drops (NETFILTER_DROP): the SYN is retransmitted
    // after the initial 1 s RTO; the attempt gives up at 2.5 s, SYN_SENT → CLOSE.
    let rules = "table inet x0tel {
        chain input {
            type filter hook input priority 0; policy accept;
            tcp dport 7 drop
        }
    }";
    let nft = run(
        "ip",
        &["netns", "exec", &pair.b, "nft", "-f", "-"],
        Some(rules),
    );
    assert!(
        nft.status.success(),
        "{}",
        String::from_utf8_lossy(&nft.stderr)
    );
    let blocked = SocketAddr::from((pair.addr_b, 7));
    let attempt = NetnsPair::inside(&pair.a, || {
        TcpStream::connect_timeout(&blocked, Duration::from_millis(2500))
    });
    assert_eq!(attempt.unwrap_err().kind(), ErrorKind::TimedOut);

    let delta = telemetry.next_delta().unwrap();
    let d = &delta.counts;
    eprintln!(
        "in {:?}: drops {:?}\nretransmits {:?}\nstates {:?}",
        delta.elapsed, d.drops, d.tcp_retransmits, d.tcp_state_changes
    );
    assert!(delta.elapsed >= Duration::from_millis(2500));
    assert!(d.drops_by_name("NO_SOCKET") >= CLOSED, "{:?}", d.drops);
    assert!(d.drops_by_name("IP_INHDR") >= 1, "{:?}", d.drops);
    assert!(d.drops_by_name("NETFILTER_DROP") >= 1, "{:?}", d.drops);
    assert!(
        d.drops.keys().all(|r| !r.name.starts_with("unknown")),
        "{:?}",
        d.drops
    );
    let to_b = d
        .tcp_retransmits
        .get(&pair.addr_b.into())
        .copied()
        .unwrap_or(0);
    assert!(to_b >= 1, "SYN retransmitted to b: {:?}", d.tcp_retransmits);
    assert!(d.tcp_transitions(TcpState::Close, TcpState::SynSent) >= 2);
    assert!(d.tcp_transitions(TcpState::SynSent, TcpState::Established) >= 1);
    assert!(d.tcp_transitions(TcpState::SynSent, TcpState::Close) >= 1);
    assert!(
        d.tcp_transitions(TcpState::Close, TcpState::Listen) >= 1,
        "b's listener"
    );

    // Cumulative counters never fall below what one interval saw.
    let total = telemetry.sample().unwrap();
    assert!(total.drops_by_name("NO_SOCKET") >= d.drops_by_name("NO_SOCKET"));

    let ids = telemetry.program_ids();
    drop(telemetry);
    assert_unloaded(&ids);
}

#[test]
fn a_missing_interface_or_namespace_is_a_clear_error() {
    let test = "missing";
    if !ready_or_skip(test, &[("ip", "iproute2")]) {
        return;
    }
    let pair = NetnsPair::up(test, 3);
    let config = TelemetryConfig {
        interfaces: vec![VETH_B.into(), "x0nothere".into()],
        netns: Some(NetnsPair::path(&pair.b)),
        tracepoints: false,
        ..TelemetryConfig::default()
    };
    let err = Telemetry::start(&config).unwrap_err();
    assert!(
        matches!(err, TelemetryError::NoSuchInterface { .. }),
        "{err}"
    );
    assert!(!err.is_permission_error());
    assert!(err.to_string().contains("x0nothere"), "{err}");
    // All or nothing: the first interface was detached again.
    let attached = attached_ids(&pair.b);
    assert!(attached.is_empty(), "left attached: {attached:?}");

    let config = TelemetryConfig {
        netns: Some(NetnsPair::path("x0tel-no-such-namespace")),
        ..config
    };
    let err = Telemetry::start(&config).unwrap_err();
    assert!(matches!(err, TelemetryError::Netns { .. }), "{err}");
}

const UNPRIVILEGED_CHILD: &str = "X0TEL_UNPRIVILEGED_CHILD";
const THIS_TEST: &str = "without_privileges_start_is_a_permission_error";

/// Runs this test again in a child process started by `launcher` with the child mode in the
/// environment; `None` (with the reason printed) when the launcher cannot run it here.
fn run_child(mode: &str, launcher: &[&str]) -> Option<String> {
    let exe = std::env::current_exe().unwrap();
    let out = Command::new(launcher[0])
        .args(&launcher[1..])
        .arg(&exe)
        .args(["--exact", THIS_TEST, "--nocapture", "--test-threads=1"])
        .env(UNPRIVILEGED_CHILD, mode)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() && !text.contains("test result") {
        eprintln!(
            "SKIPPED unprivileged ({mode}): {launcher:?} cannot run {}: {text}",
            exe.display()
        );
        return None;
    }
    assert!(out.status.success(), "{mode}: {text}");
    assert!(
        text.contains("1 passed"),
        "{mode}: the child ran the test: {text}"
    );
    Some(text)
}

/// Without privileges, start fails with a permission error that the daemon can log once (and
/// never panics). As root, the test runs itself twice more: as `nobody` with every capability
/// dropped (caught by the capability check before any `bpf()` call), and as root of a new
/// user namespace, whose capabilities do not count for `bpf()` (the kernel's EPERM).
#[test]
fn without_privileges_start_is_a_permission_error() {
    let mode = std::env::var(UNPRIVILEGED_CHILD).ok();
    if is_root() && mode.is_none() {
        if which("setpriv") {
            let nobody = [
                "setpriv",
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--inh-caps=-all",
                "--bounding-set=-all",
                "--",
            ];
            if let Some(text) = run_child("capabilities", &nobody) {
                assert!(text.contains("lacks CAP_BPF"), "{text}");
            }
        } else {
            eprintln!("SKIPPED unprivileged (capabilities): `setpriv` missing (util-linux)");
        }
        if which("unshare") {
            if let Some(text) = run_child("kernel", &["unshare", "--user", "--map-root-user", "--"])
            {
                assert!(text.contains("Operation not permitted"), "{text}");
            }
        } else {
            eprintln!("SKIPPED unprivileged (kernel): `unshare` missing (util-linux)");
        }
        return;
    }
    for config in [
        TelemetryConfig {
            interfaces: vec!["lo".into()],
            ..TelemetryConfig::default()
        },
        TelemetryConfig::default(),
    ] {
        let err = Telemetry::start(&config).unwrap_err();
        eprintln!("permission error: {err}");
        assert!(err.is_permission_error(), "{err}");
        match mode.as_deref() {
            Some("capabilities") => {
                assert!(
                    matches!(err, TelemetryError::PermissionDenied { .. }),
                    "{err}"
                );
            }
            Some("kernel") => {
                assert!(
                    !matches!(err, TelemetryError::PermissionDenied { .. }),
                    "{err}"
                );
            }
            _ => {}
        }
    }
}
