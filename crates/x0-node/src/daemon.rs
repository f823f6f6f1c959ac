//! `x0t up`: the daemon.
//!
//! A thin tokio shell around the link layer. Who owns what:
//!
//! * `Shared` (one per process) owns the link endpoint, the state store (behind a mutex; every
//!   use is a short synchronous SQLite call, never held across an await), the CA when this is the
//!   CA node, and the table of live links keyed by peer node ID.
//! * The **accept loop** admits handshakes and completes each in its own task; links go into
//!   the table, CA-service requests are answered from the store.
//! * One **dialler** task per configured peer keeps that link up, redialling with exponential
//!   backoff.
//! * One **link task** per link reads its control stream (revocation lists) and writes what
//!   other tasks queue for it; when the connection closes it leaves the table.
//! * The **routing** task (`crate::routing`) runs the routing core over every link.
//! * The **underlay watcher** (`crate::netwatch`) closes links whose interface or address
//!   went away, the moment rtnetlink says so.
//! * The **data plane** (`crate::dataplane`) owns the TUN device and the data socket.
//! * The **renewal** task renews the node's SVID at the configured fraction of its lifetime.
//! * The **HTTP API** ([`crate::api`], listener bound in `start`) serves `/health`,
//!   `/metrics` and `/v1/…` from this state through `view`; the daemon's tasks feed its event
//!   stream (`events`): links up and down here, routing changes through a forwarding task, and
//!   health changes from the **health watcher**, which re-evaluates health every second.
//! * The **self-healing loop** (`crate::heal`) runs on a thread of its own with its own
//!   connection to the state database (the knowledge base and the signed audit log); it reads
//!   the routing status, the data plane's and eBPF's counters, and acts through the routing
//!   task, the data plane and the diallers (a dialler wakes early when the loop restarts a link
//!   that is already down).
//! * On the CA node the **revocation watcher** polls the database's `data_version` every 250 ms,
//!   so `x0t ca revoke` (another process) takes effect within that time: the revoked node's
//!   links are closed, its handshakes refused, and the signed list is flooded to every link.

mod view;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use quinn::VarInt;
use rustls_pki_types::CertificateDer;
use tokio::sync::{Notify, broadcast, mpsc};
use tracing::{debug, error, info, warn};
use x0_identity::advert::{AdvertSigner, MlDsaAdvertAuth, OriginVerifier};
use x0_identity::authority::{accept_issued, self_issue};
use x0_identity::ca::CLOCK_SKEW_ALLOWANCE;
use x0_identity::ca_service::{self, CaService};
use x0_identity::proof::ProofRole;
use x0_identity::svid::Role;
use x0_identity::{MeshCa, MeshPrefix, NodeId, StateStore, TrustBundle, TrustDomain};
use x0_link::ca_client;
use x0_link::control::{ControlError, ControlStream};
use x0_link::endpoint::close_code;
use x0_link::{Accepted, CaRequest, Link, LinkEndpoint, LocalIdentity, TrustState};
use x0_wire::control::{RefusalCode, Refused};
use x0_wire::{ControlMessage, RevocationList, SignedRevocationList};

use crate::api::{self, ApiState, Event, EventKind};
use crate::config::{Config, PeerConfig};
use crate::dataplane::{DataPlane, DataPlaneConfig};
use crate::exit::{self, CmdResult, Exit};
use crate::fault::{FaultCollector, FaultSet};
use crate::heal::{self, HealDeps, HealHandle};
use crate::logging;
use crate::metrics::{DaemonMetrics, MetricsRegistry};
use crate::netwatch;
use crate::routing::{Routing, RoutingChange};
use crate::state::{META_ADVERTISE, refresh_ca_node_svid};
use crate::time::{now, now_secs, rfc3339};

/// Close code for the losing half of two simultaneous links between the same pair.
const CLOSE_DUPLICATE: u32 = 6;
const REVOCATION_POLL: Duration = Duration::from_millis(250);
/// How often the health watcher re-evaluates health.
const HEALTH_POLL: Duration = Duration::from_secs(1);

/// Runs the daemon configured by the file at `config` until it is told to stop (`x0t up`).
pub fn run(config: &std::path::Path) -> CmdResult {
    let config = Config::load(config).map_err(|e| Exit::usage(e.to_string()))?;
    logging::init_daemon(config.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("x0t")
        .build()
        .map_err(|e| Exit::failure(format!("cannot start the runtime: {e}")))?;
    runtime.block_on(async move {
        let shared = start(config)?;
        serve(shared).await
    })
}

struct LinkEntry {
    connection: quinn::Connection,
    tx: mpsc::UnboundedSender<ControlMessage>,
    remote: SocketAddr,
    role: &'static str,
    kx_group: String,
    since: std::time::Instant,
    setup: Duration,
}

/// The API's listener and token, from [`start`] until [`serve`] takes them.
struct ApiListener {
    listener: std::net::TcpListener,
    token: Option<String>,
}

struct Shared {
    config: Config,
    /// eBPF telemetry, when attached.
    ebpf: Option<Arc<crate::ebpf::Ebpf>>,
    node_id: NodeId,
    endpoint: LinkEndpoint,
    store: Arc<Mutex<StateStore>>,
    ca: Option<MeshCa>,
    /// Joins and renewals on the CA node, on a store connection of their own (a join flood
    /// never holds `store`, which routing and renewal take).
    ca_service: Option<Arc<CaService>>,
    routing: Routing,
    dataplane: Arc<DataPlane>,
    ca_addr: Option<String>,
    links: Mutex<HashMap<NodeId, LinkEntry>>,
    trust_domain: TrustDomain,
    local_addr: SocketAddr,
    started: std::time::Instant,
    /// Expiry of the current SVID (Unix seconds).
    svid_not_after: AtomicU64,
    metrics: DaemonMetrics,
    /// Events for the API's `/v1/events`.
    events: broadcast::Sender<Event>,
    /// Configured neighbours by address, as their diallers see them.
    peer_states: Mutex<HashMap<String, view::PeerState>>,
    api: Mutex<Option<ApiListener>>,
    /// The self-healing loop as the API and metrics see it.
    heal: Arc<HealHandle>,
    /// The loop, opened at start, until [`serve`] starts it.
    heal_prepared: Mutex<Option<heal::Prepared>>,
    /// Per neighbour we dial: wakes its dialler from its back-off (a link restart).
    redial: Mutex<HashMap<NodeId, Arc<Notify>>>,
    /// Injected faults (empty, and refusing any, unless `danger_fault_injection.enabled`).
    faults: Arc<FaultSet>,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn start(config: Config) -> Result<Arc<Shared>, Exit> {
    let store = StateStore::open_existing(&config.state_dir)?;
    let keys = store.node_keys()?.ok_or_else(|| {
        Exit::new(
            crate::exit::NO_INPUT,
            format!(
                "{}: no node identity; run `x0t init --state-dir {}`",
                config.state_dir.display(),
                config.state_dir.display()
            ),
        )
    })?;
    refresh_ca_node_svid(&store)?;
    let ca = store.ca()?;
    let ca_service = if ca.is_some() {
        CaService::open(&config.state_dir, ca_service::DEFAULT_MAX_IN_FLIGHT)?
    } else {
        None
    };
    let membership = store.membership()?.ok_or_else(|| {
        Exit::failure(
            "this node is not a member of any mesh yet: run `x0t join TOKEN` (or `x0t ca init` \
             on the mesh's first node)",
        )
    })?;
    if membership.not_after_unix <= now_secs() {
        return Err(Exit::failure(format!(
            "this node's SVID expired at {}; it must join again with a new invitation",
            rfc3339(membership.not_after_unix)
        )));
    }
    let api = start_api(&config)?;
    let bundle = TrustBundle::from_pem(membership.trust_domain.clone(), &membership.bundle_pem)
        .map_err(|e| Exit::new(crate::exit::DATA, format!("stored trust bundle: {e}")))?;
    let metrics = Arc::new(x0_link::LinkMetrics::default());
    let trust = TrustState::new(bundle, metrics.clone());
    if let Some((signed, _)) = store.revocation_list()?
        && let Err(e) = trust.apply_revocations(&signed)
    {
        warn!("stored revocation list does not verify and was ignored: {e}");
    }
    let keys = Arc::new(keys);
    let identity = LocalIdentity::new(
        keys.clone(),
        membership.svid_der.clone(),
        ca.as_ref().map(|c| c.cert_der().to_vec()),
    )
    .map_err(|e| Exit::failure(format!("loading the TLS key: {e}")))?;
    let faults = start_fault_injection(&config)?;
    let mut link_config = config.link_config();
    link_config.impairment = faults.enabled().then(|| faults.clone() as _);
    let endpoint = LinkEndpoint::bind(config.listen, link_config, identity, trust, metrics)
        .map_err(|e| {
            Exit::new(
                exit::UNAVAILABLE,
                format!("cannot listen on {} (`listen`): {e}", config.listen),
            )
        })?;
    let local = endpoint
        .local_addr()
        .map_err(|e| Exit::failure(e.to_string()))?;
    let advertised = config
        .advertise
        .clone()
        .or_else(|| (!local.ip().is_unspecified()).then(|| local.to_string()));
    if ca.is_some() {
        match &advertised {
            Some(a) => store.set_meta(META_ADVERTISE, a)?,
            None => warn!(
                "listening on an unspecified address and no `advertise` set: `x0t ca invite` will need --bootstrap"
            ),
        }
    }
    let td = membership.trust_domain.clone();
    let api_addr = api
        .as_ref()
        .and_then(|a| a.listener.local_addr().ok())
        .map_or("off".to_owned(), |a| a.to_string());
    info!(
        node = %keys.node_id(),
        spiffe_id = %td.node_id(keys.node_id()),
        overlay = %MeshPrefix::of(&td).address_of(keys.node_id()),
        listen = %local,
        api = %api_addr,
        ca_node = ca.is_some(),
        svid_expires = %rfc3339(membership.not_after_unix),
        "x0t up"
    );
    let store = Arc::new(Mutex::new(store));
    let router_config = config.router_config();
    // Adverts carry the SVID in force (the identity is renewed in place) and are checked
    // against the mesh CA and the live revocation list (the trust state applies new lists in
    // place; the bundle itself never changes while the daemon runs).
    let advert_auth = MlDsaAdvertAuth::new(
        AdvertSigner::new(keys.clone(), endpoint.identity().clone()),
        OriginVerifier::new(
            endpoint.trust().snapshot().bundle.clone(),
            endpoint.trust().clone(),
        )
        .with_max_cached(router_config.max_origins),
        Arc::new(now),
    );
    let routing = Routing::start(router_config, keys.node_id(), advert_auth, store.clone());
    let daemon_metrics = DaemonMetrics::default();
    daemon_metrics
        .svid_expiry
        .set(membership.not_after_unix as i64);
    let mut e2e = x0_dataplane::E2eConfig::new(
        endpoint.identity().clone(),
        endpoint.trust().clone(),
        Arc::new(rustls::time_provider::DefaultTimeProvider),
    );
    e2e.kx_policy = config.link_config().kx_policy;
    let dataplane = DataPlane::start(
        &DataPlaneConfig {
            tun: config.dataplane.tun,
            tun_name: config.dataplane.tun_name.clone(),
            mtu: config.dataplane.mtu,
            bind: SocketAddr::new(config.listen.ip(), config.dataplane.port),
            redundant_dscp: config.dataplane.redundant_dscp.clone(),
            redundant_ports: config.dataplane.redundant_ports.clone(),
            redundant_prefixes: config.dataplane.redundant_prefixes(),
            offload: config.dataplane.offload,
            balanced: config.dataplane.multipath == crate::config::Multipath::Balanced,
            ipv4: config.dataplane.ipv4_range(),
            app_socket: config.dataplane.app_socket,
            faults: faults.enabled().then(|| faults.clone()),
        },
        keys.node_id(),
        MeshPrefix::of(&td),
        routing.clone(),
        e2e,
    )
    .map_err(Exit::failure)?;
    let ebpf =
        crate::ebpf::Ebpf::start(&config.ebpf, config.listen.ip(), &config.dataplane.tun_name);
    daemon_metrics.ebpf_enabled.set(i64::from(ebpf.is_some()));
    let (heal, heal_prepared) = if config.heal.enabled {
        heal::prepare(&config.heal.heal_config(), &config.state_dir, keys.clone())
    } else {
        info!("self-healing is off (heal.enabled = false)");
        (HealHandle::disabled(), None)
    };
    Ok(Arc::new(Shared {
        heal,
        heal_prepared: Mutex::new(heal_prepared),
        redial: Mutex::new(HashMap::new()),
        faults,
        ebpf,
        node_id: keys.node_id(),
        endpoint,
        store,
        routing,
        dataplane,
        ca,
        ca_service,
        ca_addr: membership.ca_addr.clone(),
        links: Mutex::new(HashMap::new()),
        trust_domain: td,
        local_addr: local,
        started: std::time::Instant::now(),
        svid_not_after: AtomicU64::new(membership.not_after_unix),
        metrics: daemon_metrics,
        events: broadcast::channel(1024).0,
        peer_states: Mutex::new(HashMap::new()),
        api: Mutex::new(api),
        config,
    }))
}

/// The fault set, with the configured faults in force when fault injection is enabled.
fn start_fault_injection(config: &Config) -> Result<Arc<FaultSet>, Exit> {
    let section = &config.danger_fault_injection;
    let faults = FaultSet::new(section.enabled);
    if section.enabled {
        warn!(
            "fault injection is ENABLED: this node will damage traffic on request; never in \
             production"
        );
        for (i, f) in section.faults.iter().enumerate() {
            faults.add(f).map_err(|e| {
                Exit::usage(format!("key `danger_fault_injection.faults[{i}]`: {e}"))
            })?;
        }
        faults.spawn_expiry();
    }
    Ok(faults)
}

/// Loads or creates the API token and binds the API's listener. An enabled API whose address
/// cannot be bound stops the start (exit 69), whether the address is the default or
/// configured and whether a token protects it: a daemon without the API it was configured to
/// serve would run unseen by its monitoring (docs/api.md).
fn start_api(config: &Config) -> Result<Option<ApiListener>, Exit> {
    let api = &config.api;
    if !api.enabled {
        return Ok(None);
    }
    let token = api
        .token_file
        .as_deref()
        .map(api::load_or_create_token)
        .transpose()?;
    let addr = api.listen_addr();
    api::bind(addr)
        .map(|listener| Some(ApiListener { listener, token }))
        .map_err(|e| api_bind_error(addr, api.listen.is_none(), &e))
}

/// Why the API's address cannot be bound, and what to do about it.
fn api_bind_error(addr: SocketAddr, default: bool, e: &std::io::Error) -> Exit {
    let which = if default {
        format!("`api.listen` is not set; {addr} is its default")
    } else {
        "`api.listen`".to_owned()
    };
    let hint = match e.kind() {
        std::io::ErrorKind::AddrInUse => {
            "it is in use (another x0t daemon on this machine?): give each daemon its own \
             `api.listen`, or set `api.enabled = false`"
        }
        std::io::ErrorKind::AddrNotAvailable => {
            "no interface has that address (in a new network namespace: `ip link set lo up`); \
             or set `api.enabled = false`"
        }
        _ => "set another `api.listen`, or `api.enabled = false`",
    };
    Exit::new(
        exit::UNAVAILABLE,
        format!("cannot listen on {addr} for the HTTP API ({which}): {e}; {hint}"),
    )
}

async fn serve(shared: Arc<Shared>) -> CmdResult {
    tokio::spawn(accept_loop(shared.clone()));
    for peer in shared.config.peers.clone() {
        tokio::spawn(dialler(shared.clone(), peer));
    }
    tokio::spawn(renewal(shared.clone()));
    {
        let shared = shared.clone();
        tokio::spawn(netwatch::watch(Arc::new(move || {
            close_links_on_dead_underlay(&shared)
        })));
    }
    if shared.ca.is_some() {
        tokio::spawn(revocation_watcher(shared.clone()));
    }
    tokio::spawn(forward_routing_changes(shared.clone()));
    tokio::spawn(health_watcher(shared.clone()));
    let prepared = lock(&shared.heal_prepared).take();
    let heal = prepared.and_then(|p| match p.start(heal_deps(&shared)) {
        Ok(running) => Some(running),
        Err(e) => {
            error!("{e}");
            None
        }
    });
    let listener = lock(&shared.api).take();
    if let Some(ApiListener { listener, token }) = listener {
        let mut registry = MetricsRegistry::new();
        shared.metrics.register(registry.registry_mut());
        shared.routing.metrics().register(registry.registry_mut());
        registry
            .registry_mut()
            .register_collector(Box::new(view::NodeCollector(shared.clone())));
        if let Some(ebpf) = &shared.ebpf {
            registry
                .registry_mut()
                .register_collector(Box::new(crate::ebpf::EbpfCollector(ebpf.clone())));
        }
        registry
            .registry_mut()
            .register_collector(Box::new(FaultCollector(shared.faults.clone())));
        registry
            .registry_mut()
            .register_collector(Box::new(heal::HealCollector {
                handle: shared.heal.clone(),
                routing: shared.routing.clone(),
            }));
        let state = ApiState::new(shared.clone(), Arc::new(registry), token);
        tokio::spawn(api::serve(listener, api::router(state)));
    }
    shutdown_signal().await;
    info!("shutting down");
    if let Some(heal) = heal {
        heal.stop().await;
    }
    if let Some(ebpf) = &shared.ebpf {
        ebpf.log_totals();
    }
    shared.endpoint.close();
    let _ = tokio::time::timeout(Duration::from_secs(2), shared.endpoint.wait_idle()).await;
    let table = shared.routing.table();
    info!(
        counters = ?shared.endpoint.metrics().snapshot(),
        routes = table.routes.len(),
        known_nodes = table.known_nodes,
        data = ?shared.dataplane.counters(),
        "stopped"
    );
    Ok(())
}

/// What the self-healing loop reads and acts through.
fn heal_deps(shared: &Arc<Shared>) -> HealDeps {
    let for_rx = shared.clone();
    let for_redial = shared.clone();
    HealDeps {
        routing: shared.routing.clone(),
        dataplane: shared.dataplane.clone(),
        ebpf: shared.ebpf.clone(),
        rx_bytes: Box::new(move || {
            lock(&for_rx.links)
                .iter()
                .map(|(peer, e)| (*peer, e.connection.stats().udp_rx.bytes))
                .collect()
        }),
        redial: Box::new(move |peer| {
            lock(&for_redial.redial)
                .get(&peer)
                .map(|n| n.notify_one())
                .is_some()
        }),
    }
}

/// Sleeps for `d`, or less if the self-healing loop asks for a redial.
async fn pause(d: Duration, nudge: &Notify) {
    tokio::select! {
        () = tokio::time::sleep(d) => {}
        () = nudge.notified() => {}
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    match term {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

async fn accept_loop(shared: Arc<Shared>) {
    while let Some(handshake) = shared.endpoint.accept().await {
        let shared = shared.clone();
        tokio::spawn(async move {
            match handshake.complete().await {
                Ok(Accepted::Link(link)) => register(&shared, link),
                Ok(Accepted::Ca(req)) => serve_ca(&shared, req).await,
                Err(_) => {} // logged and counted by the link layer
            }
        });
    }
}

async fn serve_ca(shared: &Shared, req: CaRequest) {
    let refuse = |code, message: &str| {
        ControlMessage::Refused(Refused {
            code,
            message: message.to_owned(),
        })
    };
    let answer = match &shared.ca_service {
        None => refuse(
            RefusalCode::NotCa,
            "this node holds no CA key; joins and renewals go to the CA node",
        ),
        Some(service) => match service.admit() {
            None => CaService::busy(),
            Some(permit) => {
                let (request, peer, exporter) =
                    (req.request.clone(), req.peer.clone(), req.exporter);
                tokio::task::spawn_blocking(move || {
                    permit.handle(&request, peer.as_ref(), &exporter, now())
                })
                .await
                .unwrap_or_else(|e| {
                    error!("CA request handler failed: {e}");
                    refuse(RefusalCode::Internal, "CA request handler failed")
                })
            }
        },
    };
    if let Err(e) = req.respond(&answer).await {
        debug!("CA answer not delivered: {e}");
    }
}

fn set_links_open(shared: &Shared, n: usize) {
    shared
        .endpoint
        .metrics()
        .links_open
        .store(n as u64, std::sync::atomic::Ordering::Relaxed);
}

/// Puts a new link in the table (resolving simultaneous dials) and starts its task.
fn register(shared: &Arc<Shared>, link: Link) {
    let peer = link.peer_id();
    let (tx, rx) = mpsc::unbounded_channel();
    {
        let mut links = lock(&shared.links);
        if let Some(existing) = links.get(&peer)
            && existing.connection.close_reason().is_none()
        {
            // Both ends keep the link dialled by the smaller node ID.
            let preferred = shared.node_id.min(peer);
            let dialler_of = |role: ProofRole| {
                if role == ProofRole::Dialer {
                    shared.node_id
                } else {
                    peer
                }
            };
            if dialler_of(link.role) != preferred {
                link.connection
                    .close(VarInt::from_u32(CLOSE_DUPLICATE), b"duplicate link");
                return;
            }
            existing
                .connection
                .close(VarInt::from_u32(CLOSE_DUPLICATE), b"duplicate link");
        }
        links.insert(
            peer,
            LinkEntry {
                connection: link.connection.clone(),
                tx: tx.clone(),
                remote: link.remote_addr(),
                role: if link.role == ProofRole::Dialer {
                    "dialer"
                } else {
                    "listener"
                },
                kx_group: link.kx_group_name(),
                since: std::time::Instant::now(),
                setup: link.setup_time,
            },
        );
        set_links_open(shared, links.len());
    }
    shared
        .metrics
        .link_setup
        .observe(link.setup_time.as_secs_f64());
    shared.metrics.handshake(&link.kx_group_name());
    let _ = shared.events.send(Event::new(
        EventKind::LinkUp,
        Some(peer.to_string()),
        Some(format!("{} {}", link.remote_addr(), link.kx_group_name())),
    ));
    shared.faults.learn(peer, link.remote_addr());
    shared.routing.attach(peer, &link.connection);
    let data = shared
        .dataplane
        .attach(peer, &link.connection, link.role == ProofRole::Dialer);
    let _ = tx.send(ControlMessage::DataChannel(data));
    info!(
        peer = %peer,
        addr = %link.remote_addr(),
        kx_group = %link.kx_group_name(),
        role = if link.role == ProofRole::Dialer { "dialer" } else { "listener" },
        setup_us = link.setup_time.as_micros() as u64,
        "link up"
    );
    let snapshot = shared.endpoint.trust().snapshot();
    if snapshot.revocation_serial > link.peer_revocation_serial
        && let Some(list) = &snapshot.revocation_list
    {
        let _ = tx.send(ControlMessage::Revocations(list.clone()));
    }
    tokio::spawn(link_task(shared.clone(), link, rx));
}

async fn link_task(
    shared: Arc<Shared>,
    link: Link,
    mut rx: mpsc::UnboundedReceiver<ControlMessage>,
) {
    let peer = link.peer_id();
    let conn = link.connection.clone();
    let ControlStream {
        send: mut sender,
        recv: mut receiver,
    } = link.control;
    let writer = tokio::spawn(async move {
        while let Some(msg) = rx.recv().await {
            if sender.send(&msg).await.is_err() {
                break;
            }
        }
    });
    let reader = {
        let shared = shared.clone();
        let conn = conn.clone();
        tokio::spawn(async move {
            loop {
                match receiver.recv().await {
                    Ok(ControlMessage::Revocations(signed)) => {
                        handle_revocations(&shared, &signed, Some(peer));
                    }
                    Ok(ControlMessage::DataChannel(d)) => {
                        shared.dataplane.peer_channel(peer, &conn, d);
                    }
                    Ok(other) => {
                        warn!(peer = %peer, "unexpected {} on the control stream; closing the link", other.name());
                        conn.close(
                            VarInt::from_u32(close_code::PROTOCOL),
                            b"unexpected message",
                        );
                        break;
                    }
                    Err(ControlError::Malformed(e)) => {
                        warn!(peer = %peer, "malformed control message ({e}); closing the link");
                        conn.close(VarInt::from_u32(close_code::PROTOCOL), b"malformed message");
                        break;
                    }
                    Err(_) => break,
                }
            }
        })
    };
    let reason = conn.closed().await;
    writer.abort();
    reader.abort();
    shared.dataplane.detach(peer, &conn);
    {
        let mut links = lock(&shared.links);
        if links
            .get(&peer)
            .is_some_and(|e| e.connection.stable_id() == conn.stable_id())
        {
            links.remove(&peer);
        }
        set_links_open(&shared, links.len());
    }
    let cause = crate::metrics::close_cause(&reason);
    shared.metrics.link_closed(cause);
    let _ = shared.events.send(Event::new(
        EventKind::LinkDown,
        Some(peer.to_string()),
        Some(cause.to_owned()),
    ));
    info!(peer = %peer, reason = %reason, "link down");
}

/// Closes the links whose local address vanished or sits on an interface that is not running
/// (called on every rtnetlink link/address notification): the routing core sees them down at
/// once, instead of after `detect_multiplier` missed probes.
fn close_links_on_dead_underlay(shared: &Shared) {
    let usable = match netwatch::usable_addresses() {
        Ok(u) => u,
        Err(e) => {
            debug!("cannot list interface addresses: {e}");
            return;
        }
    };
    let bind = shared.config.listen.ip();
    let links = lock(&shared.links);
    let locals: Vec<_> = links
        .iter()
        .map(|(peer, e)| {
            let remote = e.connection.remote_address();
            (*peer, netwatch::local_address_towards(bind, remote))
        })
        .collect();
    for peer in netwatch::dead_links(&locals, &usable) {
        if let Some(entry) = links.get(&peer) {
            info!(peer = %peer, remote = %entry.connection.remote_address(), "underlay interface down; closing the link");
            entry.connection.close(
                VarInt::from_u32(netwatch::CLOSE_UNDERLAY_DOWN),
                b"underlay down",
            );
        }
    }
}

async fn dialler(shared: Arc<Shared>, peer: PeerConfig) {
    let min = Duration::from_millis(shared.config.link.redial_min_ms);
    let max = Duration::from_millis(shared.config.link.redial_max_ms);
    let mut backoff = min;
    let mut known: Option<NodeId> = peer.node_id;
    let mut failures = 0u32;
    let nudge = Arc::new(Notify::new());
    let note = |update: &dyn Fn(&mut view::PeerState)| {
        let mut states = lock(&shared.peer_states);
        update(states.entry(peer.addr.clone()).or_default());
    };
    loop {
        if let Some(id) = known {
            lock(&shared.redial).insert(id, nudge.clone());
            // Someone (maybe the peer itself) already holds a live link: wait for it to end.
            let live = lock(&shared.links)
                .get(&id)
                .map(|e| e.connection.clone())
                .filter(|c| c.close_reason().is_none());
            if let Some(conn) = live {
                note(&|s| s.linked = true);
                conn.closed().await;
                note(&|s| s.linked = false);
                continue;
            }
        }
        let addr = match resolve(&peer.addr).await {
            Some(a) => a,
            None => {
                failures += 1;
                note(&|s| {
                    s.failures = failures;
                    s.last_error = Some("cannot resolve the address".into());
                });
                warn!(peer = %peer.addr, "cannot resolve peer address");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(max);
                continue;
            }
        };
        match shared.endpoint.dial(addr, peer.node_id).await {
            Ok(link) => {
                known = Some(link.peer_id());
                lock(&shared.redial).insert(link.peer_id(), nudge.clone());
                backoff = min;
                failures = 0;
                let id = link.peer_id();
                note(&|s| {
                    *s = view::PeerState {
                        node_id: Some(id),
                        linked: true,
                        last_error: None,
                        failures: 0,
                    };
                });
                let conn = link.connection.clone();
                register(&shared, link);
                conn.closed().await;
                note(&|s| s.linked = false);
                pause(min, &nudge).await;
            }
            Err(e) => {
                failures += 1;
                let message = e.to_string();
                note(&|s| {
                    s.failures = failures;
                    s.last_error = Some(message.clone());
                });
                if failures == 1 || failures.is_power_of_two() {
                    warn!(peer = %addr, attempts = failures, "cannot link: {e}; retrying in {backoff:?}");
                } else {
                    debug!(peer = %addr, "cannot link: {e}");
                }
                pause(backoff, &nudge).await;
                backoff = (backoff * 2).min(max);
            }
        }
    }
}

async fn resolve(addr: &str) -> Option<SocketAddr> {
    tokio::net::lookup_host(addr).await.ok()?.next()
}

/// Verifies and applies a revocation list (from a peer, or from our own store on the CA node),
/// closes links to newly revoked nodes, stores the list and floods it to every other link.
fn handle_revocations(shared: &Shared, signed: &SignedRevocationList, from: Option<NodeId>) {
    let trust = shared.endpoint.trust();
    let newly = match trust.apply_revocations(signed) {
        Ok(Some(newly)) => newly,
        Ok(None) => return,
        Err(e) => {
            warn!(from = ?from, "revocation list refused: {e}");
            return;
        }
    };
    let Ok(list) = RevocationList::decode(&signed.body) else {
        return;
    };
    if let Err(e) = lock(&shared.store).store_revocation_list_if_newer(signed, &list) {
        error!("cannot store the revocation list: {e}");
    }
    info!(serial = list.serial, newly_revoked = ?newly, from = ?from, "revocation list applied");
    // Revoked origins leave the link-state database now, not at the router's next timer.
    shared.routing.recheck_admission();
    if newly.contains(&shared.node_id) {
        error!("this node has been revoked by the mesh CA; its links will be refused");
    }
    let links = lock(&shared.links);
    for (peer, entry) in links.iter() {
        if newly.contains(peer) {
            info!(peer = %peer, "closing the link to a revoked node");
            entry
                .connection
                .close(VarInt::from_u32(close_code::REVOKED), b"revoked");
        } else if Some(*peer) != from {
            let _ = entry.tx.send(ControlMessage::Revocations(signed.clone()));
        }
    }
}

async fn revocation_watcher(shared: Arc<Shared>) {
    let mut seen = lock(&shared.store).data_version().ok();
    let mut tick = tokio::time::interval(REVOCATION_POLL);
    loop {
        tick.tick().await;
        let (version, list) = {
            let store = lock(&shared.store);
            (store.data_version().ok(), store.revocation_list())
        };
        if version == seen {
            continue;
        }
        seen = version;
        match list {
            Ok(Some((signed, _))) => handle_revocations(&shared, &signed, None),
            Ok(None) => {}
            Err(e) => error!("reading the revocation list: {e}"),
        }
    }
}

/// When to renew: `fraction` of the way from issuance to expiry.
fn renew_at(svid_der: &[u8], shared: &Shared, fraction: f64) -> Option<(u64, u64)> {
    let bundle = shared.endpoint.trust().snapshot().bundle.clone();
    let v = bundle
        .verify(
            &CertificateDer::from(svid_der.to_vec()),
            &[],
            now(),
            Role::Client,
        )
        .ok()?;
    let issued = v.not_before_unix + CLOCK_SKEW_ALLOWANCE.as_secs();
    let life = v.not_after_unix.saturating_sub(issued);
    Some((issued + (life as f64 * fraction) as u64, v.not_after_unix))
}

async fn renewal(shared: Arc<Shared>) {
    let fraction = shared.config.svid.renew_at_fraction;
    let mut retry = Duration::from_secs(1);
    loop {
        let membership = match lock(&shared.store).membership() {
            Ok(Some(m)) => m,
            _ => return,
        };
        let Some((at, expires)) = renew_at(&membership.svid_der, &shared, fraction) else {
            error!("this node's SVID is no longer valid; it must join again with a new invitation");
            return;
        };
        let wait = at.saturating_sub(now_secs());
        if wait > 0 {
            tokio::time::sleep(Duration::from_secs(wait)).await;
        }
        match renew_once(&shared).await {
            Ok(not_after) => {
                retry = Duration::from_secs(1);
                shared.svid_not_after.store(not_after, Ordering::Relaxed);
                shared.metrics.svid_expiry.set(not_after as i64);
                shared.metrics.svid_renewal(true);
                info!(valid_until = %rfc3339(not_after), "SVID renewed");
            }
            Err(e) => {
                shared.metrics.svid_renewal(false);
                let left = expires.saturating_sub(now_secs());
                warn!(
                    expires_in_s = left,
                    "SVID renewal failed: {e}; retrying in {retry:?}"
                );
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(Duration::from_secs(60));
            }
        }
    }
}

async fn renew_once(shared: &Shared) -> Result<u64, String> {
    let identity = shared.endpoint.identity();
    let membership = if let Some(ca) = &shared.ca {
        let store = lock(&shared.store);
        self_issue(&store, identity.keys(), ca, now()).map_err(|e| e.to_string())?
    } else {
        let ca_addr = shared.ca_addr.clone().ok_or("no CA address known")?;
        let addr = resolve(&ca_addr)
            .await
            .ok_or_else(|| format!("cannot resolve the CA address {ca_addr}"))?;
        let issued = ca_client::renew(&shared.endpoint, addr)
            .await
            .map_err(|e| e.to_string())?;
        let store = lock(&shared.store);
        let m = accept_issued(&store, identity.keys(), &issued, None, Some(ca_addr), now())
            .map_err(|e| e.to_string())?;
        drop(store);
        if let Some(list) = &issued.revocations {
            handle_revocations(shared, list, None);
        }
        m
    };
    identity.set_svid(
        membership.svid_der.clone(),
        shared.ca.as_ref().map(|c| c.cert_der().to_vec()),
    );
    Ok(membership.not_after_unix)
}

/// Passes the routing task's changes on to the API's event stream.
async fn forward_routing_changes(shared: Arc<Shared>) {
    let mut rx = shared.routing.subscribe();
    loop {
        let change = match rx.recv().await {
            Ok(c) => c,
            Err(broadcast::error::RecvError::Lagged(n)) => {
                let detail = format!("{n} routing changes missed");
                let _ = shared
                    .events
                    .send(Event::new(EventKind::Lagged, None, Some(detail)));
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        let event = match change {
            RoutingChange::NeighborUp { peer } => {
                Event::new(EventKind::NeighborUp, Some(peer.to_string()), None)
            }
            RoutingChange::NeighborDown { peer, cause } => Event::new(
                EventKind::NeighborDown,
                Some(peer.to_string()),
                Some(cause.to_owned()),
            ),
            RoutingChange::QualityChanged { peer, class } => Event::new(
                EventKind::QualityChanged,
                Some(peer.to_string()),
                Some(view::class_name(class).to_owned()),
            ),
            RoutingChange::NodeAppeared { node } => {
                Event::new(EventKind::NodeAppeared, Some(node.to_string()), None)
            }
            RoutingChange::NodeLeft { node } => {
                Event::new(EventKind::NodeLeft, Some(node.to_string()), None)
            }
            RoutingChange::RoutesChanged { reachable, changed } => Event::new(
                EventKind::RoutesChanged,
                None,
                Some(format!("{changed} changed, {reachable} reachable")),
            ),
        };
        let _ = shared.events.send(event);
    }
}

/// Re-evaluates health every [`HEALTH_POLL`] and reports changes (logged, and on the API's
/// event stream).
async fn health_watcher(shared: Arc<Shared>) {
    let mut last: Option<api::Health> = None;
    let mut tick = tokio::time::interval(HEALTH_POLL);
    loop {
        tick.tick().await;
        let health = api::Health::from_reasons(shared.health_reasons());
        if last.as_ref() == Some(&health) {
            continue;
        }
        let codes: Vec<&str> = health.reasons.iter().map(|r| r.code.as_str()).collect();
        if last.is_some() || !health.reasons.is_empty() {
            info!(status = ?health.status, reasons = ?codes, "health");
        }
        let _ = shared.events.send(Event::health(health.clone()));
        last = Some(health);
    }
}
