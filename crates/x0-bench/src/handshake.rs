//! `x0t bench handshake`: real link setups on loopback with the project's link code, judged
//! against a bare quinn + rustls handshake timed in the same run.
//!
//! An absolute time says little on a shared or slower machine, so every x0t link setup is
//! paired with a bare handshake (quinn 0.11, rustls 0.23 on aws-lc-rs, X25519MLKEM768 only,
//! server-authenticated only: no client certificate, no SVID rules, no proof of possession) on
//! the same runtime, in alternating order, so that load falls on both alike. The figure that
//! holds on any machine is `ratio_vs_bare`.

use std::collections::BTreeMap;
use std::io::IsTerminal as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::crypto::aws_lc_rs::{default_provider, kx_group};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::version::TLS13;
use serde::Serialize;
use x0_identity::svid::TrustBundle;
use x0_identity::{MeshCa, NodeId, NodeKeys, TrustDomain};
use x0_link::{
    Accepted, KxPolicy, LinkConfig, LinkEndpoint, LinkMetrics, LocalIdentity, TrustState,
};

use x0_node::exit::{CmdResult, Exit};
use x0_node::time::now;

use crate::report::{Distribution, distribution, write_report};

/// Goal for x0t's median link setup over the bare handshake's median in the same run.
const RATIO_GOAL: f64 = 1.4;
/// Design goal for the median link setup on loopback (design.md §6), on the reference machine.
const TARGET_MEDIAN_US: f64 = 1000.0;
/// What the original design asked for.
const SEED_TARGET_US: f64 = 2000.0;
/// Server name of the bare reference's certificate.
const BARE_SERVER_NAME: &str = "localhost";

#[derive(Serialize)]
struct HandshakeReport {
    bench: &'static str,
    what: &'static str,
    count: usize,
    median_us: f64,
    p90_us: f64,
    p99_us: f64,
    min_us: f64,
    max_us: f64,
    mean_us: f64,
    group_counts: BTreeMap<String, usize>,
    pq_fraction: f64,
    /// What the reference is.
    bare_reference_what: &'static str,
    /// The bare handshakes, interleaved with x0t's link setups.
    bare_reference: Distribution,
    bare_reference_median_us: f64,
    /// x0t's median over the bare handshake's median, same run.
    ratio_vs_bare: f64,
    /// The median of the per-pair ratios (each x0t setup over the bare handshake next to it).
    paired_ratio_median: f64,
    ratio_goal: f64,
    meets_ratio_goal: bool,
    target_median_us: f64,
    seed_target_us: f64,
    ratio_vs_target: f64,
    meets_target: bool,
    classical_reference: Distribution,
    pq_cost_ratio_vs_classical: f64,
    build_profile: &'static str,
    cores: usize,
    /// The 1-minute load average when the run ended (Linux), to judge how shared the CPU was.
    load_average_1m: Option<f64>,
    unix_time: u64,
}

struct Node {
    endpoint: LinkEndpoint,
}

fn node(ca: &MeshCa, bundle: &TrustBundle, policy: KxPolicy) -> Result<Node, Exit> {
    let err = |e: String| Exit::failure(format!("bench setup: {e}"));
    let keys = Arc::new(NodeKeys::generate().map_err(|e| err(e.to_string()))?);
    let svid = ca
        .issue_svid(
            keys.tls_public_point(),
            keys.node_id(),
            now(),
            Duration::from_secs(3600),
        )
        .map_err(|e| err(e.to_string()))?;
    let metrics = Arc::new(LinkMetrics::default());
    let identity = LocalIdentity::new(keys, svid.to_vec(), None).map_err(|e| err(e.to_string()))?;
    let trust = TrustState::new(bundle.clone(), metrics.clone());
    let config = LinkConfig {
        kx_policy: policy,
        retry_threshold: usize::MAX,
        ..LinkConfig::default()
    };
    let endpoint = LinkEndpoint::bind(
        "127.0.0.1:0".parse().map_err(|_| err("addr".into()))?,
        config,
        identity,
        trust,
        metrics,
    )
    .map_err(|e| err(e.to_string()))?;
    Ok(Node { endpoint })
}

fn serve(listener: &LinkEndpoint) {
    let listener = listener.clone();
    tokio::spawn(async move {
        while let Some(hs) = listener.accept().await {
            tokio::spawn(async move {
                if let Ok(Accepted::Link(link)) = hs.complete().await {
                    link.connection.closed().await;
                }
            });
        }
    });
}

/// One x0t link setup from `client` to `server`; returns its time in µs.
async fn dial_once(
    client: &LinkEndpoint,
    server: (SocketAddr, NodeId),
    policy: KxPolicy,
    groups: &mut BTreeMap<String, usize>,
) -> Result<f64, Exit> {
    let started = Instant::now();
    let link = client
        .dial_with_policy(server.0, Some(server.1), policy)
        .await
        .map_err(|e| Exit::failure(format!("link setup failed: {e}")))?;
    let us = started.elapsed().as_secs_f64() * 1e6;
    *groups.entry(link.kx_group_name()).or_default() += 1;
    link.connection.close(0u32.into(), b"bench");
    Ok(us)
}

/// The same-run reference: a plain quinn + rustls pair with the defaults a small program would
/// use, except what makes it comparable: X25519MLKEM768 only, TLS 1.3, no session resumption
/// (x0t's links never resume), a CA-issued ECDSA P-256 leaf verified by webpki.
struct Bare {
    client: quinn::Endpoint,
    config: quinn::ClientConfig,
    server: quinn::Endpoint,
    addr: SocketAddr,
}

impl Bare {
    fn new() -> Result<Self, Exit> {
        let err = |e: String| Exit::failure(format!("bare reference setup: {e}"));
        let ca_key = rcgen::KeyPair::generate().map_err(|e| err(e.to_string()))?;
        let mut ca_params =
            rcgen::CertificateParams::new(Vec::<String>::new()).map_err(|e| err(e.to_string()))?;
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_cert = ca_params
            .self_signed(&ca_key)
            .map_err(|e| err(e.to_string()))?;
        let leaf_key = rcgen::KeyPair::generate().map_err(|e| err(e.to_string()))?;
        let leaf = rcgen::CertificateParams::new(vec![BARE_SERVER_NAME.to_owned()])
            .map_err(|e| err(e.to_string()))?
            .signed_by(&leaf_key, &rcgen::Issuer::from_params(&ca_params, &ca_key))
            .map_err(|e| err(e.to_string()))?;

        let provider = Arc::new(rustls::crypto::CryptoProvider {
            kx_groups: vec![kx_group::X25519MLKEM768],
            ..default_provider()
        });
        let mut server_tls = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&TLS13])
            .map_err(|e| err(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
            )
            .map_err(|e| err(e.to_string()))?;
        server_tls.alpn_protocols = vec![b"bare".to_vec()];
        server_tls.send_tls13_tickets = 0;
        let server_quic = QuicServerConfig::try_from(server_tls).map_err(|e| err(e.to_string()))?;
        let server = quinn::Endpoint::server(
            quinn::ServerConfig::with_crypto(Arc::new(server_quic)),
            "127.0.0.1:0".parse().map_err(|_| err("addr".into()))?,
        )
        .map_err(|e| err(e.to_string()))?;
        let addr = server.local_addr().map_err(|e| err(e.to_string()))?;

        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from(ca_cert.der().to_vec()))
            .map_err(|e| err(e.to_string()))?;
        let mut client_tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&TLS13])
            .map_err(|e| err(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        client_tls.alpn_protocols = vec![b"bare".to_vec()];
        client_tls.resumption = rustls::client::Resumption::disabled();
        let client_quic = QuicClientConfig::try_from(client_tls).map_err(|e| err(e.to_string()))?;
        let config = quinn::ClientConfig::new(Arc::new(client_quic));
        let client =
            quinn::Endpoint::client("127.0.0.1:0".parse().map_err(|_| err("addr".into()))?)
                .map_err(|e| err(e.to_string()))?;

        let acceptor = server.clone();
        tokio::spawn(async move {
            while let Some(incoming) = acceptor.accept().await {
                tokio::spawn(async move {
                    if let Ok(conn) = incoming.await {
                        conn.closed().await;
                    }
                });
            }
        });
        Ok(Self {
            client,
            config,
            server,
            addr,
        })
    }

    /// One bare handshake: time to an established connection, in µs.
    async fn dial_once(&self) -> Result<f64, Exit> {
        let started = Instant::now();
        let conn = self
            .client
            .connect_with(self.config.clone(), self.addr, BARE_SERVER_NAME)
            .map_err(|e| Exit::failure(format!("bare handshake: {e}")))?
            .await
            .map_err(|e| Exit::failure(format!("bare handshake failed: {e}")))?;
        let us = started.elapsed().as_secs_f64() * 1e6;
        conn.close(0u32.into(), b"bench");
        Ok(us)
    }

    fn close(&self) {
        self.client.close(0u32.into(), b"done");
        self.server.close(0u32.into(), b"done");
    }
}

/// Samples of one run, x0t's and the bare reference's in pairs.
#[derive(Default)]
struct Samples {
    pq: Vec<f64>,
    bare: Vec<f64>,
    classical: Vec<f64>,
    groups: BTreeMap<String, usize>,
    classical_groups: BTreeMap<String, usize>,
}

/// `count` rounds; each times one x0t link setup and one bare handshake, in alternating order,
/// and every fourth round also a classical link setup.
async fn run_rounds(
    client: &LinkEndpoint,
    server: (SocketAddr, NodeId),
    classical_server: (SocketAddr, NodeId),
    bare: &Bare,
    count: usize,
    bar: &ProgressBar,
) -> Result<Samples, Exit> {
    let mut s = Samples::default();
    for i in 0..count {
        let (x0t, reference) = if i % 2 == 0 {
            let x = dial_once(client, server, KxPolicy::PostQuantumOnly, &mut s.groups).await?;
            (x, bare.dial_once().await?)
        } else {
            let b = bare.dial_once().await?;
            let x = dial_once(client, server, KxPolicy::PostQuantumOnly, &mut s.groups).await?;
            (x, b)
        };
        s.pq.push(x0t);
        s.bare.push(reference);
        if i % 4 == 3 {
            let c = dial_once(
                client,
                classical_server,
                KxPolicy::ClassicalOnlyForTesting,
                &mut s.classical_groups,
            )
            .await?;
            s.classical.push(c);
        }
        bar.inc(1);
    }
    Ok(s)
}

fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn median(v: Vec<f64>) -> f64 {
    distribution(v).median_us
}

/// Runs `x0t bench handshake`: `count` link setups, each paired with a bare handshake; the
/// report goes to `out/handshake.json`.
pub fn run(count: usize, json: bool, out: &Path) -> CmdResult {
    if count == 0 {
        return Err(Exit::usage("--count must be at least 1"));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Exit::failure(e.to_string()))?;
    // The whole measurement runs as a task on the runtime's workers, as the daemon's dials do
    // (`tokio::spawn(dialler(..))`). Driving it from `block_on` would put the dialler on the
    // main thread, adding a cross-thread wake-up at every await of every link setup.
    let measure = async move {
        let td = TrustDomain::new("bench.x0t").map_err(|e| Exit::failure(e.to_string()))?;
        let ca = MeshCa::create(td.clone(), now()).map_err(|e| Exit::failure(e.to_string()))?;
        let bundle = TrustBundle::new(td, vec![ca.cert_der().clone()])
            .map_err(|e| Exit::failure(e.to_string()))?;
        let server = node(&ca, &bundle, KxPolicy::PostQuantumOnly)?;
        let classical_server = node(&ca, &bundle, KxPolicy::AllowClassicalDangerous)?;
        let client = node(&ca, &bundle, KxPolicy::PostQuantumOnly)?;
        serve(&server.endpoint);
        serve(&classical_server.endpoint);
        let bare = Bare::new()?;
        let target = |n: &Node| -> Result<(SocketAddr, NodeId), Exit> {
            let addr = n
                .endpoint
                .local_addr()
                .map_err(|e| Exit::failure(e.to_string()))?;
            Ok((addr, n.endpoint.identity().node_id()))
        };
        let (pq_target, classical_target) = (target(&server)?, target(&classical_server)?);

        let warmup = 20.min(count);
        let bar = if std::io::stderr().is_terminal() {
            ProgressBar::new((warmup + count) as u64)
        } else {
            ProgressBar::hidden()
        };
        bar.set_style(
            ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} rounds ({eta})")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_message("handshake bench");
        run_rounds(
            &client.endpoint,
            pq_target,
            classical_target,
            &bare,
            warmup,
            &bar,
        )
        .await?;
        let s = run_rounds(
            &client.endpoint,
            pq_target,
            classical_target,
            &bare,
            count,
            &bar,
        )
        .await?;
        bar.finish_and_clear();
        for e in [
            &server.endpoint,
            &classical_server.endpoint,
            &client.endpoint,
        ] {
            e.close();
        }
        bare.close();

        let paired: Vec<f64> =
            s.pq.iter()
                .zip(&s.bare)
                .map(|(x, b)| x / b.max(1.0))
                .collect();
        let d = distribution(s.pq);
        let b = distribution(s.bare);
        let c = distribution(s.classical);
        let pq_links = s.groups.get("X25519MLKEM768").copied().unwrap_or(0);
        let ratio_vs_bare = d.median_us / b.median_us.max(1.0);
        Ok::<_, Exit>(HandshakeReport {
            bench: "handshake",
            what: "link setup on loopback: QUIC + TLS 1.3 handshake, mutual X.509-SVID verification, \
                   ML-DSA-65 proof of possession in both directions",
            count: d.count,
            median_us: d.median_us,
            p90_us: d.p90_us,
            p99_us: d.p99_us,
            min_us: d.min_us,
            max_us: d.max_us,
            mean_us: d.mean_us,
            pq_fraction: pq_links as f64 / d.count as f64,
            group_counts: s.groups,
            bare_reference_what: "bare quinn 0.11 + rustls 0.23 (aws-lc-rs) handshake on the same \
                                  runtime, interleaved: X25519MLKEM768 only, server-authenticated \
                                  (CA-issued ECDSA P-256 leaf, webpki), no client certificate, no \
                                  proof, no resumption; time to an established connection",
            bare_reference_median_us: b.median_us,
            bare_reference: b,
            ratio_vs_bare,
            paired_ratio_median: median(paired),
            ratio_goal: RATIO_GOAL,
            meets_ratio_goal: ratio_vs_bare <= RATIO_GOAL && pq_links == d.count,
            target_median_us: TARGET_MEDIAN_US,
            seed_target_us: SEED_TARGET_US,
            ratio_vs_target: d.median_us / TARGET_MEDIAN_US,
            meets_target: d.median_us <= TARGET_MEDIAN_US && pq_links == d.count,
            pq_cost_ratio_vs_classical: d.median_us / c.median_us.max(1.0),
            classical_reference: c,
            build_profile: if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            },
            cores: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            load_average_1m: load_average(),
            unix_time: now().as_secs(),
        })
    };
    let report = runtime.block_on(async {
        tokio::spawn(measure)
            .await
            .map_err(|e| Exit::failure(format!("bench task failed: {e}")))?
    })?;
    let (text, file) = write_report(&report, out, "handshake.json")?;
    if json {
        println!("{text}");
    } else {
        println!(
            "link setup (QUIC + TLS 1.3 X25519MLKEM768 + SVIDs + ML-DSA-65 PoP), {} runs on loopback:\n  \
             median {:.0} µs, p90 {:.0} µs, p99 {:.0} µs\n  \
             bare quinn + rustls X25519MLKEM768 handshake (same run, interleaved): median {:.0} µs, \
             p90 {:.0} µs, p99 {:.0} µs\n  \
             ratio vs bare: {:.2} (goal ≤ {:.1}: {}); per-pair median {:.2}\n  \
             X25519MLKEM768 in {:.1}% of links\n  \
             absolute: {:.2} of the 1,000 µs goal set on the reference machine ({}); \
             {:.2} of the seed's 2,000 µs\n  \
             classical X25519 reference (same code, same run): median {:.0} µs; PQ cost ×{:.2}\n  \
             load average (1 min) at the end: {}\n  \
             written to {}",
            report.count,
            report.median_us,
            report.p90_us,
            report.p99_us,
            report.bare_reference.median_us,
            report.bare_reference.p90_us,
            report.bare_reference.p99_us,
            report.ratio_vs_bare,
            report.ratio_goal,
            if report.meets_ratio_goal {
                "met"
            } else {
                "MISSED"
            },
            report.paired_ratio_median,
            report.pq_fraction * 100.0,
            report.ratio_vs_target,
            if report.meets_target { "met" } else { "missed" },
            report.median_us / SEED_TARGET_US,
            report.classical_reference.median_us,
            report.pq_cost_ratio_vs_classical,
            report
                .load_average_1m
                .map_or_else(|| "unknown".to_owned(), |l| format!("{l:.2}")),
            file.display()
        );
    }
    if report.build_profile == "debug" {
        eprintln!(
            "note: this is a debug build; run `cargo run --release -p x0t -- bench handshake` for real figures"
        );
    }
    Ok(())
}
