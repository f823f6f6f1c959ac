//! The daemon's HTTP API (axum 0.8, OpenAPI 3.1 from utoipa), default `127.0.0.1:5471`.
//!
//! | Path | What |
//! |---|---|
//! | `GET /health` | liveness and readiness with reasons (200 ready, 503 not) |
//! | `GET /metrics` | Prometheus metrics ([`crate::metrics`]) |
//! | `GET /v1/node` | this node: identity, addresses, SVID, counts |
//! | `GET /v1/peers` | configured and linked neighbours |
//! | `GET /v1/links` | live links with their measurements |
//! | `GET /v1/routes` | the forwarding table |
//! | `GET /v1/topology` | nodes and links of the link-state database, for drawing |
//! | `GET /v1/events` | server-sent events: topology and health changes |
//! | `GET /v1/incidents` | the self-healing loop's incidents, newest first |
//! | `GET /v1/actions` | the self-healing loop's actions (taken, or only planned in observe mode) |
//! | `GET /v1/health` | the self-healing loop's health state with its reasons, restrictions in force, audit head |
//! | `GET, POST, DELETE /v1/faults`, `DELETE /v1/faults/{id}` | fault injection (refused unless `danger_fault_injection.enabled`) |
//! | `GET /openapi.json` | this API's OpenAPI document |
//!
//! Who owns what: the daemon implements [`NodeApi`] over its own state (every call is a short
//! synchronous read); this module owns the listener, one task per connection, and the
//! protections: a bearer token when configured (every path but `/health` and `/openapi.json`),
//! a loopback `Host` check when not (a web page cannot read the API through DNS rebinding),
//! header and body size limits, a header read timeout, a per-request timeout, a cap on
//! connections and on event streams. Bad requests get a JSON `{"error": …}` with a 4xx code.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use futures_util::Stream;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, broadcast};
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;
use tracing::{debug, info, warn};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{IntoParams, Modify, OpenApi, ToSchema};

use crate::exit::{self, Exit};
use crate::metrics::{Exposition, MetricsRegistry};

mod parse_errors;

/// Largest request body accepted (only `POST /v1/faults` reads one).
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Largest request head (request line and headers); hyper answers 431 above it.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Time a client has to send a request's headers.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a request may take (event streams excepted).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Concurrent connections; more are closed at once.
pub const MAX_CONNECTIONS: usize = 256;
/// Concurrent event streams; more get 503.
pub const MAX_EVENT_STREAMS: usize = 32;
/// Shortest token accepted from a token file.
const MIN_TOKEN_LEN: usize = 16;

/// What the API reads from the daemon.
pub trait NodeApi: Send + Sync + 'static {
    /// This node.
    fn node(&self) -> NodeInfo;
    /// Liveness and readiness.
    fn health(&self) -> Health;
    /// Configured and linked neighbours.
    fn peers(&self) -> Vec<PeerInfo>;
    /// Live links.
    fn links(&self) -> Vec<LinkInfo>;
    /// The forwarding table.
    fn routes(&self) -> Vec<RouteInfo>;
    /// The link-state database as a graph.
    fn topology(&self) -> Topology;
    /// A receiver of events from now on.
    fn events(&self) -> broadcast::Receiver<Event>;
    /// The self-healing loop's incidents, newest first.
    fn incidents(&self) -> Vec<IncidentInfo>;
    /// The self-healing loop's actions, newest first.
    fn actions(&self) -> Vec<ActionInfo>;
    /// The self-healing loop's health state.
    fn heal_health(&self) -> HealHealth;
    /// Fault injection ([`crate::fault`]), if this node has it at all.
    fn faults(&self) -> Option<Arc<crate::fault::FaultSet>> {
        None
    }
}

/// A JSON error body.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ApiError {
    /// What was wrong.
    pub error: String,
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (
        status,
        Json(ApiError {
            error: message.into(),
        }),
    )
        .into_response()
}

/// This node.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NodeInfo {
    /// Node ID (32 hex digits).
    pub node_id: String,
    /// SPIFFE ID.
    pub spiffe_id: String,
    /// Trust domain of the mesh.
    pub trust_domain: String,
    /// Overlay IPv6 address.
    pub overlay_addr: String,
    /// Link (QUIC) listen address.
    pub listen_addr: String,
    /// UDP port of the data socket.
    pub data_port: u16,
    /// x0t version.
    pub version: String,
    /// Seconds since the daemon started.
    pub uptime_s: u64,
    /// Whether this node holds the mesh CA.
    pub is_ca: bool,
    /// When the node's SVID expires (RFC 3339).
    pub svid_expires_at: String,
    /// Seconds until then (negative once expired).
    pub svid_expires_in_s: i64,
    /// Nodes in the link-state database, this one included.
    pub known_nodes: usize,
    /// Destinations with a route.
    pub reachable_nodes: usize,
    /// Live links.
    pub links: usize,
    /// eBPF telemetry is attached.
    pub ebpf_enabled: bool,
}

/// Overall health.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum HealthStatus {
    /// Ready, nothing to report.
    Ok,
    /// Ready, with reasons to look at.
    Degraded,
    /// Not ready: the node cannot carry traffic.
    Unready,
}

/// Why the node is not fully healthy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HealthReason {
    /// Stable code: `svid_expired`, `svid_expires_soon`, `revoked`, `no_links`, `peers_down`.
    pub code: String,
    /// For people.
    pub message: String,
    /// Whether this reason makes the node unready.
    pub blocks_ready: bool,
}

/// Liveness and readiness.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// Summary.
    pub status: HealthStatus,
    /// The daemon answers (always true in an answer).
    pub live: bool,
    /// The node can carry traffic.
    pub ready: bool,
    /// Reasons, if any.
    pub reasons: Vec<HealthReason>,
}

impl Health {
    /// Health from its reasons.
    pub fn from_reasons(reasons: Vec<HealthReason>) -> Self {
        let ready = !reasons.iter().any(|r| r.blocks_ready);
        let status = if !ready {
            HealthStatus::Unready
        } else if reasons.is_empty() {
            HealthStatus::Ok
        } else {
            HealthStatus::Degraded
        };
        Self {
            status,
            live: true,
            ready,
            reasons,
        }
    }
}

/// A neighbour: configured (by address), linked (by node ID), or both.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PeerInfo {
    /// Node ID, once known.
    pub node_id: Option<String>,
    /// Configured address, or the address the link comes from.
    pub addr: Option<String>,
    /// Listed in the configuration's `[[peers]]`.
    pub configured: bool,
    /// A link is up.
    pub linked: bool,
    /// Overlay address, once the node ID is known.
    pub overlay_addr: Option<String>,
    /// Last dial error, while not linked.
    pub last_error: Option<String>,
    /// Failed dials since the last success.
    pub dial_failures: u32,
}

/// Routing measurements of a link.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LinkQualityInfo {
    /// Smoothed RTT, milliseconds (none before the first probe answer).
    pub rtt_ms: Option<f64>,
    /// RTT jitter, milliseconds.
    pub jitter_ms: f64,
    /// Loss on the neighbour's probes (0–1).
    pub rx_loss: f64,
    /// Loss the neighbour reports on ours (0–1).
    pub tx_loss: f64,
    /// Quality class: EXCELLENT, GOOD, FAIR, POOR, BAD.
    pub quality: String,
    /// Routing cost.
    pub cost: u32,
    /// Probe interval, milliseconds.
    pub probe_interval_ms: u64,
}

/// A live link.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LinkInfo {
    /// The neighbour's node ID.
    pub peer: String,
    /// Its UDP address.
    pub remote_addr: String,
    /// `dialer` or `listener`.
    pub role: String,
    /// Negotiated key-exchange group.
    pub kx_group: String,
    /// Seconds since the link came up.
    pub up_s: u64,
    /// Link setup time, milliseconds.
    pub setup_ms: f64,
    /// Routing measurements, once the routing session is up.
    pub routing: Option<LinkQualityInfo>,
}

/// A forwarding-table entry.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RouteInfo {
    /// Destination node ID.
    pub dst: String,
    /// Its overlay address.
    pub overlay_addr: String,
    /// Next hop node ID.
    pub next_hop: String,
    /// On the fast-reroute backup (the primary's link just failed).
    pub via_backup: bool,
    /// On the backup: the explicit path (node IDs, from this node).
    pub path: Option<Vec<String>>,
    /// A node-disjoint alternate path, where redundant mode asked for one.
    pub alternate: Option<Vec<String>>,
}

/// A node of the topology.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TopologyNode {
    /// Node ID.
    pub id: String,
    /// Overlay address.
    pub overlay_addr: String,
    /// This node.
    pub is_self: bool,
    /// A route to it exists (always true for this node).
    pub reachable: bool,
    /// Sequence number of its advert.
    pub seq: u64,
}

/// A directed link of the topology, as its origin advertises it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TopologyLink {
    /// Origin node ID.
    pub from: String,
    /// Neighbour node ID.
    pub to: String,
    /// Cost from `from` to `to`.
    pub cost: u32,
    /// Quality class: EXCELLENT, GOOD, FAIR, POOR, BAD.
    pub quality: String,
    /// The neighbour advertises the reverse link too (only such links carry routes).
    pub two_way: bool,
}

/// The link-state database as a graph.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Topology {
    /// This node's ID.
    pub self_id: String,
    /// Nodes.
    pub nodes: Vec<TopologyNode>,
    /// Links.
    pub links: Vec<TopologyLink>,
}

/// An incident of the self-healing loop (docs/heal.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct IncidentInfo {
    /// Its number (`i<id>` in logs).
    pub id: u64,
    /// When it was opened (Unix time, milliseconds).
    pub opened_at_unix_ms: u64,
    /// When it was closed, once it is.
    pub closed_at_unix_ms: Option<u64>,
    /// Still open.
    pub open: bool,
    /// What the suspected cause is: `link`, `node` or `local` (this node).
    pub cause_kind: String,
    /// The node concerned: the neighbour at the link's far end, or the node; none for `local`.
    pub cause_node: Option<String>,
    /// The cause, in words.
    pub cause: String,
    /// `link_down`, `flapping`, `link_degraded`, `crypto_failure`, `node_down`,
    /// `black_hole`, `noisy_neighbour` or `local_pressure`.
    pub problem: String,
    /// Confidence in the cause (0–1).
    pub confidence: f64,
    /// How it ended: `cleared`, or `merged into i<id>`.
    pub resolution: Option<String>,
    /// The first symptom, in words.
    pub first_symptom: String,
}

/// An action of the self-healing loop.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ActionInfo {
    /// Its number (`a<id>` in logs).
    pub id: u64,
    /// The incident it answers.
    pub incident: u64,
    /// `raise_link_cost`, `restore_link_cost`, `exclude_link`, `include_link`,
    /// `quarantine_node`, `release_node`, `rekey_link`, `restart_link`, `shed_load`,
    /// `restore_load` or `alert`.
    pub kind: String,
    /// The node it is about (for a link: the neighbour), if any.
    pub target: Option<String>,
    /// What exactly, in words.
    pub detail: String,
    /// `act` (handed to the executor) or `observe` (only recorded).
    pub mode: String,
    /// The action this one undoes.
    pub undo_of: Option<u64>,
    /// Why, in one line.
    pub reason: String,
    /// When it was planned (Unix time, milliseconds).
    pub planned_at_unix_ms: u64,
    /// When the executor reported on it.
    pub finished_at_unix_ms: Option<u64>,
    /// `done`, or `failed: <why>`; none while in flight and in observe mode.
    pub result: Option<String>,
}

/// A restriction the self-healing loop placed on routing, as the routing core has it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RestrictionInfo {
    /// `cost_raised` (our link to `node` costs `factor` times its measured cost),
    /// `link_excluded` (our link to `node` carries no routes), `node_quarantined` (never
    /// relayed through) or `load_shed` (the transit neighbour `node` sends through us is
    /// limited to `limit_bytes_per_s`; in the data plane).
    pub kind: String,
    /// The neighbour or node.
    pub node: String,
    /// For `cost_raised`: the factor.
    pub factor: Option<u32>,
    /// For `load_shed`: the limit on the transit `node` may send through us, bytes/s.
    #[serde(default)]
    pub limit_bytes_per_s: Option<u64>,
}

/// The audit log's head, as last written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AuditHeadInfo {
    /// Entries in the log.
    pub entries: u64,
    /// Hex SHA-256 of the last entry (what `x0t audit verify` reports as the head).
    pub head_hash: Option<String>,
    /// The check of the whole chain when the daemon started: `ok`, `running`, or what is
    /// wrong (the first bad entry).
    pub check_at_start: String,
}

/// The self-healing loop's health state (docs/heal.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct HealHealth {
    /// The loop runs (`heal.enabled`, and its knowledge base opened).
    pub enabled: bool,
    /// Why it does not run, when it does not.
    pub error: Option<String>,
    /// `act` or `observe`.
    pub mode: Option<String>,
    /// `OPTIMAL`, `DEGRADED`, `CRITICAL` or `RECOVERING`.
    pub state: Option<String>,
    /// The state as the `x0t_heal_health_state` gauge has it: 0 optimal, 1 recovering,
    /// 2 degraded, 3 critical.
    pub state_value: Option<u8>,
    /// Why, one line each (empty when OPTIMAL).
    pub reasons: Vec<String>,
    /// The monitor's current sampling interval, milliseconds.
    pub sampling_interval_ms: Option<u64>,
    /// Incidents open.
    pub open_incidents: usize,
    /// Restrictions in force in routing and the data plane.
    pub restrictions: Vec<RestrictionInfo>,
    /// The audit log.
    pub audit: Option<AuditHeadInfo>,
}

/// Event stream topics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Topic {
    /// Links, neighbours, nodes, routes.
    Topology,
    /// Health changes.
    Health,
}

impl Topic {
    fn as_str(self) -> &'static str {
        match self {
            Self::Topology => "topology",
            Self::Health => "health",
        }
    }
}

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A link came up (`peer`).
    LinkUp,
    /// A link closed (`peer`, `detail`: cause).
    LinkDown,
    /// A routing session started (`peer`).
    NeighborUp,
    /// A neighbour was declared down (`peer`, `detail`: silent or local).
    NeighborDown,
    /// A link's quality class changed (`peer`, `detail`: the class).
    QualityChanged,
    /// A node entered the link-state database (`peer`).
    NodeAppeared,
    /// A node left it (`peer`).
    NodeLeft,
    /// The forwarding table changed (`detail`).
    RoutesChanged,
    /// Health changed (`health`).
    Health,
    /// This stream fell behind and missed events (`detail`: how many).
    Lagged,
}

/// One event.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Event {
    /// Topic (also the SSE event name).
    pub topic: Topic,
    /// What happened.
    pub kind: EventKind,
    /// When (Unix time, milliseconds).
    pub at_unix_ms: u64,
    /// The node concerned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// Details.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The new health, for `health` events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<Health>,
}

impl Event {
    /// An event stamped now.
    pub fn new(kind: EventKind, peer: Option<String>, detail: Option<String>) -> Self {
        let topic = match kind {
            EventKind::Health => Topic::Health,
            _ => Topic::Topology,
        };
        let at_unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        Self {
            topic,
            kind,
            at_unix_ms,
            peer,
            detail,
            health: None,
        }
    }

    /// A health event.
    pub fn health(health: Health) -> Self {
        Self {
            health: Some(health),
            ..Self::new(EventKind::Health, None, None)
        }
    }
}

/// Shared by every request.
pub struct ApiState {
    node: Arc<dyn NodeApi>,
    metrics: Arc<MetricsRegistry>,
    token: Option<String>,
    event_streams: Arc<Semaphore>,
}

impl std::fmt::Debug for ApiState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiState")
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .finish_non_exhaustive()
    }
}

impl ApiState {
    /// State over a node, its metrics, and the token requests must carry (if any).
    pub fn new(
        node: Arc<dyn NodeApi>,
        metrics: Arc<MetricsRegistry>,
        token: Option<String>,
    ) -> Arc<Self> {
        Arc::new(Self {
            node,
            metrics,
            token,
            event_streams: Arc::new(Semaphore::new(MAX_EVENT_STREAMS)),
        })
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "x0t",
        description = "The x0tta6bl4 daemon's HTTP API. When the daemon has a token file \
                       configured, every path but /health and /openapi.json needs \
                       `Authorization: Bearer <token>`."
    ),
    paths(health, metrics, node, peers, links, routes, topology, events, incidents, actions, heal_health,
          faults_list, faults_add, faults_clear, faults_remove, openapi_json),
    components(schemas(ApiError, Event, Topic, crate::fault::FaultSpec, crate::fault::FaultEntry,
                       crate::fault::FaultList, crate::fault::FaultCreated)),
    modifiers(&BearerAuth, &EventStream, &Refusals, &ClosedFaultBodies),
    tags((name = "x0t", description = "Node state, metrics and events"))
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The token in the daemon's `api.token_file` (needed when one is set)",
                    ))
                    .build(),
            ),
        );
    }
}

/// What `GET /v1/events` answers, for the document.
const EVENT_STREAM_DESCRIPTION: &str = "An endless `text/event-stream` (server-sent events). \
    It opens with the current health as a `health` event (when that topic is followed), then \
    carries changes as they happen; a comment line (`:`) every 15 s keeps it alive. Each event \
    is an `event:` line naming its topic (`topology` or `health`) and one `data:` line holding \
    an `Event` as JSON. The schema describes one such event, as OpenAPI 3.2 describes the items \
    of a stream (`itemSchema`), for this 3.1 document: `event` and `data`, with `data`'s \
    `contentSchema`.";

/// Describes the event stream of `/v1/events` as what it is: a sequence of server-sent events
/// (`event` and `data` fields), each `data` one JSON [`Event`]. utoipa has no word for
/// `contentSchema`, so it goes in as an extension keyword.
struct EventStream;

impl Modify for EventStream {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        use utoipa::openapi::{Content, RefOr};
        let topics: Vec<&str> = [Topic::Topology, Topic::Health]
            .iter()
            .map(|t| t.as_str())
            .collect();
        let data = ObjectBuilder::new()
            .schema_type(Type::String)
            .description(Some("One `Event`, as JSON"))
            .content_media_type("application/json")
            .extensions(Some(
                [(
                    "contentSchema",
                    serde_json::json!({"$ref": "#/components/schemas/Event"}),
                )]
                .into_iter()
                .collect(),
            ));
        let event = ObjectBuilder::new()
            .schema_type(Type::Object)
            .description(Some("One server-sent event"))
            .property(
                "event",
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .description(Some("The event's topic"))
                    .enum_values(Some(topics)),
            )
            .property("data", data)
            .required("event")
            .required("data");
        let Some(op) = openapi
            .paths
            .paths
            .get_mut("/v1/events")
            .and_then(|item| item.get.as_mut())
        else {
            return;
        };
        if let Some(RefOr::T(ok)) = op.responses.responses.get_mut("200") {
            ok.content.insert(
                "text/event-stream".into(),
                Content::new(Some(RefOr::T(event.into()))),
            );
        }
    }
}

/// The refusals every operation can meet, whatever it does: a request from a web page of
/// another origin (and, without a token, one for a host that is not loopback).
struct Refusals;

impl Modify for Refusals {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{ContentBuilder, RefOr, ResponseBuilder};
        const REFUSED: &str = "Refused: a request from a web page of another origin (`Origin` \
            or `Sec-Fetch-Site`), or, without a token, for a host that is not loopback";
        for item in openapi.paths.paths.values_mut() {
            for op in [item.get.as_mut(), item.post.as_mut(), item.delete.as_mut()]
                .into_iter()
                .flatten()
            {
                let description = match op.responses.responses.get("403") {
                    Some(RefOr::T(r)) => format!("{}; or {REFUSED}", r.description),
                    _ => REFUSED.to_owned(),
                };
                op.responses.responses.insert(
                    "403".into(),
                    RefOr::T(
                        ResponseBuilder::new()
                            .description(description)
                            .content(
                                "application/json",
                                ContentBuilder::new()
                                    .schema(Some(utoipa::openapi::Ref::from_schema_name(
                                        "ApiError",
                                    )))
                                    .build(),
                            )
                            .build(),
                    ),
                );
            }
        }
    }
}

/// A fault body takes no field its kind does not name (`deny_unknown_fields`), which utoipa
/// does not carry over to the variants of a tagged enum; and a listed fault is one of those
/// kinds plus `id` and `since_unix_ms` (utoipa's `allOf` for the flattened spec would meet the
/// closed kinds and fail).
struct ClosedFaultBodies;

impl Modify for ClosedFaultBodies {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::RefOr;
        use utoipa::openapi::schema::{AdditionalProperties, ObjectBuilder, Schema, Type};
        let Some(components) = openapi.components.as_mut() else {
            return;
        };
        let Some(RefOr::T(Schema::OneOf(kinds))) = components.schemas.get_mut("FaultSpec") else {
            return;
        };
        let mut entries = kinds.clone();
        for kind in &mut kinds.items {
            if let RefOr::T(Schema::Object(object)) = kind {
                object.additional_properties =
                    Some(Box::new(AdditionalProperties::FreeForm(false)));
            }
        }
        let integer = |description: &str| {
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(
                    utoipa::openapi::KnownFormat::Int64,
                )))
                .minimum(Some(0))
                .description(Some(description))
                .build()
        };
        for kind in &mut entries.items {
            if let RefOr::T(Schema::Object(object)) = kind {
                object.properties.insert(
                    "id".into(),
                    integer("Its ID (for `DELETE /v1/faults/{id}`)").into(),
                );
                object.properties.insert(
                    "since_unix_ms".into(),
                    integer("When it was added (Unix milliseconds)").into(),
                );
                object
                    .required
                    .extend(["id".into(), "since_unix_ms".into()]);
                object.additional_properties =
                    Some(Box::new(AdditionalProperties::FreeForm(false)));
            }
        }
        entries.description = Some("A fault in force, as `GET /v1/faults` lists it".into());
        components
            .schemas
            .insert("FaultEntry".into(), RefOr::T(Schema::OneOf(entries)));
    }
}

/// The OpenAPI document.
pub fn openapi() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// The API's routes and protections.
pub fn router(state: Arc<ApiState>) -> axum::Router {
    let timed = axum::Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/v1/node", get(node))
        .route("/v1/peers", get(peers))
        .route("/v1/links", get(links))
        .route("/v1/routes", get(routes))
        .route("/v1/topology", get(topology))
        .route("/v1/incidents", get(incidents))
        .route("/v1/actions", get(actions))
        .route("/v1/health", get(heal_health))
        .route(
            "/v1/faults",
            get(faults_list).post(faults_add).delete(faults_clear),
        )
        .route("/v1/faults/{id}", delete(faults_remove))
        .route("/openapi.json", get(openapi_json))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            REQUEST_TIMEOUT,
        ));
    axum::Router::new()
        .route("/v1/events", get(events))
        .merge(timed)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(state.clone(), guard))
        .layer(RequestBodyLimitLayer::new(MAX_BODY_BYTES))
        .layer(axum::middleware::map_response(json_errors))
        .with_state(state)
}

/// Paths anyone may read, token or not.
fn is_public(path: &str) -> bool {
    matches!(path, "/health" | "/openapi.json")
}

/// Whether a `Host` header names this machine's loopback (or nothing at all).
fn host_is_loopback(host: Option<&HeaderValue>) -> bool {
    let Some(host) = host else {
        return true;
    };
    let Ok(host) = host.to_str() else {
        return false;
    };
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn bearer(headers: &HeaderMap) -> Option<&[u8]> {
    let value = headers.get(header::AUTHORIZATION)?.as_bytes();
    let (scheme, token) = value.split_at_checked(7)?;
    scheme
        .eq_ignore_ascii_case(b"bearer ")
        .then(|| token.trim_ascii())
}

/// Authentication and the loopback `Host` check, before any handler runs.
async fn guard(State(state): State<Arc<ApiState>>, request: Request, next: Next) -> Response {
    match &state.token {
        Some(token) => {
            if !is_public(request.uri().path()) {
                let ok = bearer(request.headers()).is_some_and(|given| {
                    aws_lc_rs::constant_time::verify_slices_are_equal(given, token.as_bytes())
                        .is_ok()
                });
                if !ok {
                    let mut r = error(
                        StatusCode::UNAUTHORIZED,
                        "this API needs `Authorization: Bearer <token>` (the daemon's api.token_file)",
                    );
                    r.headers_mut().insert(
                        header::WWW_AUTHENTICATE,
                        HeaderValue::from_static("Bearer realm=\"x0t\""),
                    );
                    return r;
                }
            }
        }
        None => {
            if !host_is_loopback(request.headers().get(header::HOST)) {
                return error(
                    StatusCode::FORBIDDEN,
                    "without a token the API answers only requests for a loopback host",
                );
            }
        }
    }
    if let Some(why) = cross_origin(request.headers()) {
        return error(
            StatusCode::FORBIDDEN,
            format!(
                "cross-origin request refused ({why}): this API answers no web page of another \
                 origin"
            ),
        );
    }
    next.run(request).await
}

/// Why a request comes from a web page of another origin, if it does. A browser names the
/// page's origin in `Origin` (on every POST and DELETE, and on cross-origin GETs) and, in
/// current browsers, the relation in `Sec-Fetch-Site`; tools such as curl, the CLI and
/// Prometheus send neither. The API serves no page and no CORS headers, so only requests from
/// its own origin (`http://` + `Host`) or typed into the address bar (`none`) pass.
fn cross_origin(headers: &HeaderMap) -> Option<String> {
    if let Some(site) = headers.get("sec-fetch-site")
        && !matches!(site.as_bytes(), b"same-origin" | b"none")
    {
        return Some(format!(
            "Sec-Fetch-Site: {}",
            String::from_utf8_lossy(site.as_bytes())
        ));
    }
    let origin = headers.get(header::ORIGIN)?;
    let own = headers
        .get(header::HOST)
        .map(|host| [b"http://".as_slice(), host.as_bytes()].concat());
    if own.is_some_and(|own| origin.as_bytes().eq_ignore_ascii_case(&own)) {
        return None;
    }
    Some(format!(
        "Origin: {}",
        String::from_utf8_lossy(origin.as_bytes())
    ))
}

/// Whether the request's body is declared JSON (`application/json`, parameters allowed).
/// Requiring it keeps out the "simple" cross-origin requests a web page may send without
/// asking first (`text/plain`, form encodings); a page that asks is refused by
/// [`cross_origin`], and no CORS preflight is ever answered.
fn is_json_body(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"))
}

/// Gives every error answer a JSON `{"error": …}` body: those of the layers below the
/// handlers (413 from the body limit, 503 from the request timeout) come with plain text or
/// none.
async fn json_errors(response: Response) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if json {
        return response;
    }
    let message = match status {
        StatusCode::PAYLOAD_TOO_LARGE => {
            format!("the request body is larger than {MAX_BODY_BYTES} bytes")
        }
        StatusCode::SERVICE_UNAVAILABLE => {
            format!("no answer within {} s", REQUEST_TIMEOUT.as_secs())
        }
        other => other
            .canonical_reason()
            .unwrap_or("request refused")
            .to_owned(),
    };
    let (mut parts, _) = response.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let body = serde_json::to_vec(&ApiError { error: message }).unwrap_or_default();
    Response::from_parts(parts, axum::body::Body::from(body))
}

async fn not_found(request: Request) -> Response {
    error(
        StatusCode::NOT_FOUND,
        format!("no such path: {}", request.uri().path()),
    )
}

async fn method_not_allowed(request: Request) -> Response {
    error(
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "{} is not allowed on {}; this API is read-only (GET) but for /v1/faults",
            request.method(),
            request.uri().path()
        ),
    )
}

/// Liveness and readiness.
#[utoipa::path(get, path = "/health", tag = "x0t",
    responses(
        (status = 200, description = "Ready", body = Health),
        (status = 503, description = "Alive but not ready; the reasons say why", body = Health),
    ))]
async fn health(State(state): State<Arc<ApiState>>) -> Response {
    let h = state.node.health();
    let status = if h.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(h)).into_response()
}

/// Prometheus metrics (OpenMetrics when asked for in `Accept`, else text format 0.0.4).
#[utoipa::path(get, path = "/metrics", tag = "x0t",
    responses(
        (status = 200, description = "Every metric, documented in docs/metrics.md: Prometheus \
         text format 0.0.4, or OpenMetrics 1.0 text when `Accept` names it",
         content((String = "text/plain"), (String = "application/openmetrics-text"))),
        (status = 401, description = "Token missing or wrong", body = ApiError),
    ),
    security((), ("bearer" = [])))]
async fn metrics(State(state): State<Arc<ApiState>>, headers: HeaderMap) -> Response {
    let format = Exposition::negotiate(headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()));
    match state.metrics.encode(format) {
        Ok(text) => ([(header::CONTENT_TYPE, format.content_type())], text).into_response(),
        Err(_) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "encoding the metrics failed",
        ),
    }
}

/// This node.
#[utoipa::path(get, path = "/v1/node", tag = "x0t",
    responses(
        (status = 200, description = "This node", body = NodeInfo),
        (status = 401, description = "Token missing or wrong", body = ApiError),
    ),
    security((), ("bearer" = [])))]
async fn node(State(state): State<Arc<ApiState>>) -> Json<NodeInfo> {
    Json(state.node.node())
}

/// Configured and linked neighbours.
#[utoipa::path(get, path = "/v1/peers", tag = "x0t",
    responses(
        (status = 200, description = "Neighbours", body = Vec<PeerInfo>),
        (status = 401, description = "Token missing or wrong", body = ApiError),
    ),
    security((), ("bearer" = [])))]
async fn peers(State(state): State<Arc<ApiState>>) -> Json<Vec<PeerInfo>> {
    Json(state.node.peers())
}

/// Live links and their measurements.
#[utoipa::path(get, path = "/v1/links", tag = "x0t",
    responses(
        (status = 200, description = "Links", body = Vec<LinkInfo>),
        (status = 401, description = "Token missing or wrong", body = ApiError),
    ),
    security((), ("bearer" = [])))]
async fn links(State(state): State<Arc<ApiState>>) -> Json<Vec<LinkInfo>> {
    Json(state.node.links())
}

/// Filter of `/v1/routes`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct RoutesQuery {
    /// Only the route to this node ID (32 lowercase hex digits).
    #[param(pattern = "^[0-9a-f]{32}$", min_length = 32, max_length = 32)]
    dst: Option<String>,
}

/// The forwarding table.
#[utoipa::path(get, path = "/v1/routes", tag = "x0t", params(RoutesQuery),
    responses(
        (status = 200, description = "Routes", body = Vec<RouteInfo>),
        (status = 400, description = "Bad query", body = ApiError),
        (status = 401, description = "Token missing or wrong", body = ApiError),
    ),
    security((), ("bearer" = [])))]
async fn routes(
    State(state): State<Arc<ApiState>>,
    query: Result<Query<RoutesQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Query(q) = match query {
        Ok(q) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    let mut routes = state.node.routes();
    if let Some(dst) = q.dst {
        let dst = match dst.parse::<x0_wire::NodeId>() {
            Ok(d) => d.to_string(),
            Err(e) => {
                return error(StatusCode::BAD_REQUEST, format!("dst: not a node ID ({e})"));
            }
        };
        routes.retain(|r| r.dst == dst);
    }
    Json(routes).into_response()
}

/// Nodes and links of the link-state database, with quality, for drawing.
#[utoipa::path(get, path = "/v1/topology", tag = "x0t",
    responses(
        (status = 200, description = "Topology", body = Topology),
        (status = 401, description = "Token missing or wrong", body = ApiError),
    ),
    security((), ("bearer" = [])))]
async fn topology(State(state): State<Arc<ApiState>>) -> Json<Topology> {
    Json(state.node.topology())
}

/// The self-healing loop's incidents (the latest 200, newest first; open ones with their
/// current cause and confidence).
#[utoipa::path(get, path = "/v1/incidents", tag = "x0t",
    responses(
        (status = 200, description = "Incidents", body = Vec<IncidentInfo>),
        (status = 401, description = "Token missing or wrong", body = ApiError),
    ),
    security((), ("bearer" = [])))]
async fn incidents(State(state): State<Arc<ApiState>>) -> Json<Vec<IncidentInfo>> {
    Json(state.node.incidents())
}

/// The self-healing loop's actions (the latest 200, newest first): taken in act mode, only
/// recorded in observe mode.
#[utoipa::path(get, path = "/v1/actions", tag = "x0t",
    responses(
        (status = 200, description = "Actions", body = Vec<ActionInfo>),
        (status = 401, description = "Token missing or wrong", body = ApiError),
    ),
    security((), ("bearer" = [])))]
async fn actions(State(state): State<Arc<ApiState>>) -> Json<Vec<ActionInfo>> {
    Json(state.node.actions())
}

/// The self-healing loop's health state with its reasons, the restrictions in force and the
/// audit log's head.
#[utoipa::path(get, path = "/v1/health", tag = "x0t",
    responses(
        (status = 200, description = "Self-healing health", body = HealHealth),
        (status = 401, description = "Token missing or wrong", body = ApiError),
    ),
    security((), ("bearer" = [])))]
async fn heal_health(State(state): State<Arc<ApiState>>) -> Json<HealHealth> {
    Json(state.node.heal_health())
}

/// The fault set, if fault injection is on.
fn fault_set(state: &ApiState) -> Option<Arc<crate::fault::FaultSet>> {
    state.node.faults().filter(|f| f.enabled())
}

/// The answer when fault injection is off.
fn faults_disabled() -> Response {
    error(
        StatusCode::FORBIDDEN,
        crate::fault::AddError::Disabled.to_string(),
    )
}

/// The faults in force (dangerous fault injection; docs/heal.md).
#[utoipa::path(get, path = "/v1/faults", tag = "x0t",
    responses(
        (status = 200, description = "Whether fault injection is enabled, and the faults in force",
         body = crate::fault::FaultList),
        (status = 401, description = "Token missing or wrong", body = ApiError),
    ),
    security((), ("bearer" = [])))]
async fn faults_list(State(state): State<Arc<ApiState>>) -> Json<crate::fault::FaultList> {
    Json(state.node.faults().map_or(
        crate::fault::FaultList {
            enabled: false,
            faults: vec![],
        },
        |f| f.list(),
    ))
}

/// Injects a fault: this node damages its own traffic until the fault is removed or its
/// `duration_ms` passes. Refused unless the daemon's configuration sets
/// `danger_fault_injection.enabled = true`.
#[utoipa::path(post, path = "/v1/faults", tag = "x0t",
    request_body = crate::fault::FaultSpec,
    responses(
        (status = 201, description = "Injected", body = crate::fault::FaultCreated),
        (status = 400, description = "Not a fault (the message names the field)", body = ApiError),
        (status = 401, description = "Token missing or wrong", body = ApiError),
        (status = 403, description = "Fault injection is disabled on this node", body = ApiError),
        (status = 409, description = "MAX_FAULTS (64) faults are in force already", body = ApiError),
        (status = 413, description = "The body is larger than 64 KiB", body = ApiError),
        (status = 415, description = "The body is not declared `application/json`", body = ApiError),
        (status = 422, description = "A value out of range, or `jitter_ms` above `delay_ms` (the message names the field)", body = ApiError),
    ),
    security((), ("bearer" = [])))]
async fn faults_add(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if !is_json_body(&headers) {
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "the body must be JSON, sent with `Content-Type: application/json`",
        );
    }
    let Some(set) = fault_set(&state) else {
        return faults_disabled();
    };
    let spec: crate::fault::FaultSpec = match serde_json::from_slice(&body) {
        Ok(s) => s,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("body: {e}")),
    };
    match set.add(&spec) {
        Ok(id) => (StatusCode::CREATED, Json(crate::fault::FaultCreated { id })).into_response(),
        Err(e @ crate::fault::AddError::Disabled) => error(StatusCode::FORBIDDEN, e.to_string()),
        Err(e @ crate::fault::AddError::Full) => error(StatusCode::CONFLICT, e.to_string()),
        Err(e @ crate::fault::AddError::Invalid(_)) => {
            error(StatusCode::UNPROCESSABLE_ENTITY, e.to_string())
        }
    }
}

/// Removes every fault.
#[utoipa::path(delete, path = "/v1/faults", tag = "x0t",
    responses(
        (status = 204, description = "Every fault removed"),
        (status = 401, description = "Token missing or wrong", body = ApiError),
        (status = 403, description = "Fault injection is disabled on this node", body = ApiError),
    ),
    security((), ("bearer" = [])))]
async fn faults_clear(State(state): State<Arc<ApiState>>) -> Response {
    match fault_set(&state) {
        Some(set) => {
            set.clear();
            StatusCode::NO_CONTENT.into_response()
        }
        None => faults_disabled(),
    }
}

/// Removes one fault.
#[utoipa::path(delete, path = "/v1/faults/{id}", tag = "x0t",
    params(("id" = u64, Path, description = "The fault's ID")),
    responses(
        (status = 204, description = "Removed"),
        (status = 400, description = "Not a fault ID", body = ApiError),
        (status = 401, description = "Token missing or wrong", body = ApiError),
        (status = 403, description = "Fault injection is disabled on this node", body = ApiError),
        (status = 404, description = "No such fault", body = ApiError),
    ),
    security((), ("bearer" = [])))]
async fn faults_remove(
    State(state): State<Arc<ApiState>>,
    id: Result<axum::extract::Path<u64>, axum::extract::rejection::PathRejection>,
) -> Response {
    let Some(set) = fault_set(&state) else {
        return faults_disabled();
    };
    let Ok(axum::extract::Path(id)) = id else {
        return error(
            StatusCode::BAD_REQUEST,
            "id: must be a fault ID (an integer)",
        );
    };
    if set.remove(id) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        error(StatusCode::NOT_FOUND, format!("no fault {id}"))
    }
}

/// Filter of `/v1/events`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    /// The topics to follow, comma-separated: `topology`, `health`, or both (the default).
    #[param(value_type = Option<Vec<Topic>>, style = Form, explode = false, min_items = 1)]
    topics: Option<String>,
}

fn parse_topics(s: Option<&str>) -> Result<Vec<Topic>, String> {
    let Some(s) = s else {
        return Ok(vec![Topic::Topology, Topic::Health]);
    };
    s.split(',')
        .map(|t| match t {
            "topology" => Ok(Topic::Topology),
            "health" => Ok(Topic::Health),
            other => Err(format!(
                "topics: unknown topic {other:?} (topology, health)"
            )),
        })
        .collect()
}

/// Server-sent events. The stream opens with the current health (`health` event), then
/// carries changes; each SSE event is named after its topic and its data is one JSON
/// [`Event`].
#[utoipa::path(get, path = "/v1/events", tag = "x0t", params(EventsQuery),
    responses(
        (status = 200, description = EVENT_STREAM_DESCRIPTION,
         content_type = "text/event-stream", body = String),
        (status = 400, description = "Bad query", body = ApiError),
        (status = 401, description = "Token missing or wrong", body = ApiError),
        (status = 503, description = "Too many event streams open", body = ApiError),
    ),
    security((), ("bearer" = [])))]
async fn events(
    State(state): State<Arc<ApiState>>,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Query(q) = match query {
        Ok(q) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    let topics = match parse_topics(q.topics.as_deref()) {
        Ok(t) => t,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let Ok(permit) = state.event_streams.clone().try_acquire_owned() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("at most {MAX_EVENT_STREAMS} event streams at once"),
        );
    };
    let rx = state.node.events();
    let first = Event::health(state.node.health());
    Sse::new(event_stream(rx, first, topics, permit))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

fn sse_event(e: &Event) -> SseEvent {
    SseEvent::default()
        .event(e.topic.as_str())
        .json_data(e)
        .unwrap_or_else(|_| SseEvent::default().comment("unencodable event"))
}

fn event_stream(
    rx: broadcast::Receiver<Event>,
    first: Event,
    topics: Vec<Topic>,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    let first = topics.contains(&Topic::Health).then_some(first);
    futures_util::stream::unfold(
        (rx, first, topics, permit),
        |(mut rx, first, topics, permit)| async move {
            if let Some(e) = first {
                return Some((Ok(sse_event(&e)), (rx, None, topics, permit)));
            }
            loop {
                match rx.recv().await {
                    Ok(e) if topics.contains(&e.topic) => {
                        return Some((Ok(sse_event(&e)), (rx, None, topics, permit)));
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        let e =
                            Event::new(EventKind::Lagged, None, Some(format!("{n} events missed")));
                        return Some((Ok(sse_event(&e)), (rx, None, topics, permit)));
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        },
    )
}

/// This API's OpenAPI 3.1 document.
#[utoipa::path(get, path = "/openapi.json", tag = "x0t",
    responses(
        (status = 200, description = "The OpenAPI 3.1 document (this one)",
         content_type = "application/json", body = Object),
    ))]
async fn openapi_json() -> Response {
    match openapi().to_json() {
        Ok(text) => ([(header::CONTENT_TYPE, "application/json")], text).into_response(),
        Err(_) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "encoding the document failed",
        ),
    }
}

/// Binds the API's listener (before anything else starts, so that a busy port is reported
/// at once).
pub fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Serves `app` on `listener` until the process ends: one task per connection, HTTP/1.1 with
/// a header read timeout and a head size limit, at most [`MAX_CONNECTIONS`] at once.
pub async fn serve(listener: std::net::TcpListener, app: axum::Router) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            warn!("the API listener cannot be used: {e}");
            return;
        }
    };
    if let Ok(addr) = listener.local_addr() {
        info!(addr = %addr, "API listening");
    }
    let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, remote) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                debug!("API accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            debug!(%remote, "API connection refused: too many open");
            continue;
        };
        let service = TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let result = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .max_buf_size(MAX_HEAD_BYTES)
                .serve_connection(
                    TokioIo::new(parse_errors::JsonParseErrors::new(stream)),
                    service,
                )
                .await;
            if let Err(e) = result {
                debug!(%remote, "API connection ended: {e}");
            }
        });
    }
}

/// Reads the API token from `path`, or creates the file with a fresh random token (mode 0600)
/// if it does not exist. A file that others may read is refused (exit 77).
pub fn load_or_create_token(path: &Path) -> Result<String, Exit> {
    use std::io::Write as _;
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let shown = path.display();
    match std::fs::metadata(path) {
        Ok(meta) => {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(Exit::new(
                    exit::NO_PERM,
                    format!(
                        "{shown}: the API token file is readable by others (mode {mode:o}); \
                         `chmod 600 {shown}`"
                    ),
                ));
            }
            let text = std::fs::read_to_string(path)
                .map_err(|e| Exit::failure(format!("{shown}: {e}")))?;
            let token = text.trim();
            if token.len() < MIN_TOKEN_LEN || !token.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(Exit::new(
                    exit::DATA,
                    format!(
                        "{shown}: the API token must be at least {MIN_TOKEN_LEN} printable \
                         characters without spaces"
                    ),
                ));
            }
            Ok(token.to_owned())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut bytes = [0u8; 32];
            aws_lc_rs::rand::fill(&mut bytes)
                .map_err(|_| Exit::failure("no randomness for the API token"))?;
            let token = hex::encode(bytes);
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| Exit::failure(format!("{shown}: cannot create: {e}")))?;
            file.write_all(format!("{token}\n").as_bytes())
                .and_then(|()| file.sync_all())
                .map_err(|e| Exit::failure(format!("{shown}: {e}")))?;
            info!(file = %shown, "created a new API token");
            Ok(token)
        }
        Err(e) => Err(Exit::failure(format!("{shown}: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt as _;
    use tower::ServiceExt as _;

    struct FakeNode {
        events: broadcast::Sender<Event>,
        faults: Option<Arc<crate::fault::FaultSet>>,
    }

    impl NodeApi for FakeNode {
        fn node(&self) -> NodeInfo {
            NodeInfo {
                node_id: "00".repeat(16),
                spiffe_id: "spiffe://mesh.test/node/x".into(),
                trust_domain: "mesh.test".into(),
                overlay_addr: "fd00::1".into(),
                listen_addr: "127.0.0.1:1".into(),
                data_port: 2,
                version: "0".into(),
                uptime_s: 1,
                is_ca: true,
                svid_expires_at: "2030-01-01T00:00:00Z".into(),
                svid_expires_in_s: 100,
                known_nodes: 1,
                reachable_nodes: 0,
                links: 0,
                ebpf_enabled: false,
            }
        }
        fn health(&self) -> Health {
            Health::from_reasons(vec![])
        }
        fn peers(&self) -> Vec<PeerInfo> {
            vec![]
        }
        fn links(&self) -> Vec<LinkInfo> {
            vec![]
        }
        fn routes(&self) -> Vec<RouteInfo> {
            vec![RouteInfo {
                dst: "11".repeat(16),
                overlay_addr: "fd00::2".into(),
                next_hop: "11".repeat(16),
                via_backup: false,
                path: None,
                alternate: None,
            }]
        }
        fn topology(&self) -> Topology {
            Topology {
                self_id: "00".repeat(16),
                nodes: vec![],
                links: vec![],
            }
        }
        fn events(&self) -> broadcast::Receiver<Event> {
            self.events.subscribe()
        }
        fn incidents(&self) -> Vec<IncidentInfo> {
            vec![]
        }
        fn actions(&self) -> Vec<ActionInfo> {
            vec![]
        }
        fn faults(&self) -> Option<Arc<crate::fault::FaultSet>> {
            self.faults.clone()
        }
        fn heal_health(&self) -> HealHealth {
            HealHealth {
                enabled: false,
                error: None,
                mode: None,
                state: None,
                state_value: None,
                reasons: vec![],
                sampling_interval_ms: None,
                open_incidents: 0,
                restrictions: vec![],
                audit: None,
            }
        }
    }

    fn app(token: Option<&str>) -> axum::Router {
        app_with(token, None)
    }

    fn app_with(token: Option<&str>, faults: Option<Arc<crate::fault::FaultSet>>) -> axum::Router {
        let (events, _) = broadcast::channel(8);
        router(ApiState::new(
            Arc::new(FakeNode { events, faults }),
            Arc::new(MetricsRegistry::new()),
            token.map(str::to_owned),
        ))
    }

    async fn call(app: &axum::Router, req: axum::http::Request<axum::body::Body>) -> (u16, String) {
        let r = app.clone().oneshot(req).await.unwrap();
        let status = r.status().as_u16();
        let body = r.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    fn get(path: &str) -> axum::http::request::Builder {
        axum::http::Request::get(path).header(header::HOST, "127.0.0.1:5471")
    }

    fn empty(b: axum::http::request::Builder) -> axum::http::Request<axum::body::Body> {
        b.body(axum::body::Body::empty()).unwrap()
    }

    #[tokio::test]
    async fn bad_requests_get_json_4xx_answers() {
        let app = app(None);
        let (s, body) = call(&app, empty(get("/v1/nope"))).await;
        assert_eq!(s, 404);
        assert!(body.contains("\"error\""), "{body}");
        let (s, body) = call(
            &app,
            axum::http::Request::post("/v1/node")
                .header(header::HOST, "localhost")
                .header(header::CONTENT_TYPE, "application/json")
                .body(axum::body::Body::from("{not json"))
                .unwrap(),
        )
        .await;
        assert_eq!(s, 405, "{body}");
        assert!(body.contains("read-only"), "{body}");
        let (s, body) = call(
            &app,
            axum::http::Request::post("/v1/node")
                .header(header::HOST, "localhost")
                .header(header::CONTENT_LENGTH, (MAX_BODY_BYTES + 1).to_string())
                .body(axum::body::Body::from(vec![b'x'; MAX_BODY_BYTES + 1]))
                .unwrap(),
        )
        .await;
        assert_eq!(s, 413);
        let v: serde_json::Value = serde_json::from_str(&body).expect("a JSON 413 body");
        assert!(v["error"].as_str().unwrap().contains("65536"), "{body}");
        let (s, body) = call(&app, empty(get("/v1/routes?dst=zz"))).await;
        assert_eq!(s, 400);
        assert!(body.contains("dst"), "{body}");
        let (s, body) = call(&app, empty(get("/v1/routes?bogus=1"))).await;
        assert_eq!(s, 400, "{body}");
        let (s, body) = call(&app, empty(get("/v1/events?topics=weather"))).await;
        assert_eq!(s, 400);
        assert!(body.contains("weather"), "{body}");
        let (s, body) = call(
            &app,
            empty(get(&format!("/v1/routes?dst={}", "11".repeat(16)))),
        )
        .await;
        assert_eq!(s, 200);
        assert!(body.contains("fd00::2"), "{body}");
    }

    #[tokio::test]
    async fn a_token_is_required_when_configured() {
        let token = "0123456789abcdef0123";
        let app = app(Some(token));
        let (s, _) = call(&app, empty(get("/v1/node"))).await;
        assert_eq!(s, 401);
        let (s, _) = call(
            &app,
            empty(get("/v1/node").header(header::AUTHORIZATION, "Bearer wrong")),
        )
        .await;
        assert_eq!(s, 401);
        let (s, _) = call(
            &app,
            empty(get("/metrics").header(header::AUTHORIZATION, token)),
        )
        .await;
        assert_eq!(s, 401, "the scheme is required");
        let (s, _) = call(&app, empty(get("/v1/nope"))).await;
        assert_eq!(s, 401, "unknown paths are not revealed either");
        let (s, body) = call(
            &app,
            empty(get("/v1/node").header(header::AUTHORIZATION, format!("Bearer {token}"))),
        )
        .await;
        assert_eq!(s, 200, "{body}");
        let (s, _) = call(
            &app,
            empty(get("/metrics").header(header::AUTHORIZATION, format!("bearer  {token} "))),
        )
        .await;
        assert_eq!(s, 200);
        // Public paths, and any Host once a token protects the API.
        let (s, _) = call(
            &app,
            empty(axum::http::Request::get("/health").header(header::HOST, "node.example:5471")),
        )
        .await;
        assert_eq!(s, 200);
        let (s, _) = call(&app, empty(get("/openapi.json"))).await;
        assert_eq!(s, 200);
    }

    #[tokio::test]
    async fn without_a_token_only_loopback_hosts_are_answered() {
        let app = app(None);
        for host in [
            "127.0.0.1:5471",
            "localhost",
            "LOCALHOST:1",
            "[::1]:5471",
            "127.8.9.10",
        ] {
            let (s, _) = call(
                &app,
                empty(axum::http::Request::get("/v1/node").header(header::HOST, host)),
            )
            .await;
            assert_eq!(s, 200, "{host}");
        }
        for host in [
            "evil.example",
            "evil.example:5471",
            "10.0.0.1:5471",
            "[fe80::1]:1",
            "localhost.evil.example",
        ] {
            let (s, _) = call(
                &app,
                empty(axum::http::Request::get("/v1/node").header(header::HOST, host)),
            )
            .await;
            assert_eq!(s, 403, "{host}");
        }
    }

    #[tokio::test]
    async fn metrics_are_negotiated() {
        let app = app(None);
        let r = app
            .clone()
            .oneshot(empty(get("/metrics").header(
                header::ACCEPT,
                "application/openmetrics-text; version=1.0.0",
            )))
            .await
            .unwrap();
        assert_eq!(
            r.headers()[header::CONTENT_TYPE],
            crate::metrics::OPENMETRICS_CONTENT_TYPE
        );
        let body = r.into_body().collect().await.unwrap().to_bytes();
        assert!(body.ends_with(b"# EOF\n"));
        let (s, body) = call(&app, empty(get("/metrics"))).await;
        assert_eq!(s, 200);
        assert!(
            body.contains("x0t_build_info{") && !body.contains("# EOF"),
            "{body}"
        );
    }

    #[test]
    fn the_openapi_document_is_openapi_3_1_and_lists_every_path() {
        let text = openapi().to_json().unwrap();
        let spec = oas3::from_json(&text).unwrap();
        spec.validate_version().unwrap();
        let paths: Vec<String> = spec.paths.as_ref().unwrap().keys().cloned().collect();
        for p in [
            "/health",
            "/metrics",
            "/v1/node",
            "/v1/peers",
            "/v1/links",
            "/v1/routes",
            "/v1/topology",
            "/v1/events",
            "/v1/incidents",
            "/v1/actions",
            "/v1/health",
            "/v1/faults",
            "/v1/faults/{id}",
        ] {
            assert!(paths.iter().any(|x| x == p), "{p} missing from {paths:?}");
        }
    }

    #[tokio::test]
    async fn faults_are_refused_where_fault_injection_is_not_available() {
        let app = app(None);
        let post = |body: &'static str| {
            axum::http::Request::post("/v1/faults")
                .header(header::HOST, "localhost")
                .header(header::CONTENT_TYPE, "application/json")
                .body(axum::body::Body::from(body))
                .unwrap()
        };
        let (s, body) = call(&app, post(r#"{"kind":"blackhole"}"#)).await;
        assert_eq!(s, 403, "{body}");
        assert!(body.contains("danger_fault_injection.enabled"), "{body}");
        let (s, body) = call(&app, empty(get("/v1/faults"))).await;
        assert_eq!(s, 200);
        assert_eq!(body, r#"{"enabled":false,"faults":[]}"#);
        let delete = |path: &str| {
            axum::http::Request::delete(path)
                .header(header::HOST, "localhost")
                .body(axum::body::Body::empty())
                .unwrap()
        };
        assert_eq!(call(&app, delete("/v1/faults")).await.0, 403);
        assert_eq!(call(&app, delete("/v1/faults/1")).await.0, 403);
    }

    #[test]
    fn topics_parse() {
        assert_eq!(parse_topics(None).unwrap().len(), 2);
        assert_eq!(parse_topics(Some("health")).unwrap(), vec![Topic::Health]);
        assert!(parse_topics(Some("health,x")).is_err());
    }

    #[test]
    fn health_follows_its_reasons() {
        let h = Health::from_reasons(vec![]);
        assert_eq!((h.status, h.ready), (HealthStatus::Ok, true));
        let soft = HealthReason {
            code: "peers_down".into(),
            message: String::new(),
            blocks_ready: false,
        };
        let h = Health::from_reasons(vec![soft.clone()]);
        assert_eq!((h.status, h.ready), (HealthStatus::Degraded, true));
        let hard = HealthReason {
            blocks_ready: true,
            ..soft
        };
        let h = Health::from_reasons(vec![hard]);
        assert_eq!((h.status, h.ready), (HealthStatus::Unready, false));
    }

    #[test]
    fn a_token_file_is_created_private_and_read_back() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api-token");
        let token = load_or_create_token(&path).unwrap();
        assert_eq!(token.len(), 64);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(load_or_create_token(&path).unwrap(), token);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(load_or_create_token(&path).unwrap_err().code, exit::NO_PERM);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&path, "short\n").unwrap();
        assert_eq!(load_or_create_token(&path).unwrap_err().code, exit::DATA);
    }

    fn post_faults(
        content_type: Option<&str>,
        extra: &[(&str, &str)],
    ) -> axum::http::Request<axum::body::Body> {
        let mut b = axum::http::Request::post("/v1/faults").header(header::HOST, "127.0.0.1:5471");
        if let Some(t) = content_type {
            b = b.header(header::CONTENT_TYPE, t);
        }
        for (k, v) in extra {
            b = b.header(*k, *v);
        }
        b.body(axum::body::Body::from(r#"{"kind":"blackhole"}"#))
            .unwrap()
    }

    #[tokio::test]
    async fn faults_must_be_posted_as_json() {
        let app = app_with(None, Some(crate::fault::FaultSet::new(true)));
        // What an HTML form or a "simple" cross-origin fetch can send without asking first.
        for t in [
            None,
            Some("text/plain"),
            Some("application/x-www-form-urlencoded"),
            Some("multipart/form-data; boundary=x"),
            Some("application/jsonx"),
        ] {
            let (s, body) = call(&app, post_faults(t, &[])).await;
            assert_eq!(s, 415, "{t:?}: {body}");
            assert!(body.contains("application/json"), "{body}");
        }
        for t in [
            "application/json",
            "application/json; charset=utf-8",
            "Application/JSON",
        ] {
            let (s, body) = call(&app, post_faults(Some(t), &[])).await;
            assert_eq!(s, 201, "{t}: {body}");
        }
    }

    #[tokio::test]
    async fn cross_origin_requests_are_refused() {
        let app = app_with(None, Some(crate::fault::FaultSet::new(true)));
        let json = Some("application/json");
        for headers in [
            vec![("origin", "http://evil.example")],
            vec![("origin", "http://127.0.0.1:8080")],
            vec![("origin", "null")],
            vec![("origin", "https://127.0.0.1:5471")],
            vec![("sec-fetch-site", "cross-site")],
            vec![("sec-fetch-site", "same-site")],
            vec![
                ("origin", "http://127.0.0.1:5471"),
                ("sec-fetch-site", "cross-site"),
            ],
        ] {
            let (s, body) = call(&app, post_faults(json, &headers)).await;
            assert_eq!(s, 403, "{headers:?}: {body}");
            assert!(body.contains("cross-origin"), "{body}");
            let mut delete =
                axum::http::Request::delete("/v1/faults").header(header::HOST, "127.0.0.1:5471");
            let mut read = get("/v1/node");
            for (k, v) in &headers {
                delete = delete.header(*k, *v);
                read = read.header(*k, *v);
            }
            assert_eq!(call(&app, empty(delete)).await.0, 403, "{headers:?}");
            assert_eq!(call(&app, empty(read)).await.0, 403, "{headers:?}");
        }
        // The API's own origin, a typed-in address, and tools that send neither header.
        for headers in [
            vec![],
            vec![("origin", "http://127.0.0.1:5471")],
            vec![("sec-fetch-site", "same-origin")],
            vec![("sec-fetch-site", "none")],
        ] {
            let (s, body) = call(&app, post_faults(json, &headers)).await;
            assert_eq!(s, 201, "{headers:?}: {body}");
        }
        // With a token, too.
        let token = "0123456789abcdef0123";
        let app = app_with(Some(token), Some(crate::fault::FaultSet::new(true)));
        let auth = format!("Bearer {token}");
        let (s, _) = call(
            &app,
            post_faults(
                json,
                &[("authorization", &auth), ("origin", "http://evil.example")],
            ),
        )
        .await;
        assert_eq!(s, 403);
        let (s, _) = call(&app, post_faults(json, &[("authorization", &auth)])).await;
        assert_eq!(s, 201);
    }

    #[tokio::test]
    async fn a_full_fault_set_is_answered_409() {
        let app = app_with(None, Some(crate::fault::FaultSet::new(true)));
        for _ in 0..crate::fault::MAX_FAULTS {
            assert_eq!(
                call(&app, post_faults(Some("application/json"), &[]))
                    .await
                    .0,
                201
            );
        }
        let (s, body) = call(&app, post_faults(Some("application/json"), &[])).await;
        assert_eq!(s, 409, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert!(v["error"].as_str().unwrap().contains("64 faults"), "{body}");
    }

    #[test]
    fn the_document_is_as_strict_as_the_server() {
        let doc: serde_json::Value = serde_json::from_str(&openapi().to_json().unwrap()).unwrap();
        let param = |path: &str, name: &str| {
            doc["paths"][path]["get"]["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["name"] == name)
                .unwrap()
                .clone()
        };
        let dst = param("/v1/routes", "dst");
        assert_eq!(dst["schema"]["pattern"], "^[0-9a-f]{32}$", "{dst}");
        let topics = param("/v1/events", "topics");
        assert_eq!(topics["style"], "form");
        assert_eq!(topics["explode"], false);
        assert_eq!(topics["schema"]["minItems"], 1);
        assert_eq!(
            doc["components"]["schemas"]["Topic"]["enum"],
            serde_json::json!(["topology", "health"])
        );
        // The event stream is described as events whose data is an Event, not as one Event.
        let stream = &doc["paths"]["/v1/events"]["get"]["responses"]["200"]["content"]["text/event-stream"]
            ["schema"];
        assert_eq!(
            stream["properties"]["event"]["enum"],
            serde_json::json!(["topology", "health"])
        );
        assert_eq!(
            stream["properties"]["data"]["contentMediaType"],
            "application/json"
        );
        assert_eq!(
            stream["properties"]["data"]["contentSchema"]["$ref"],
            "#/components/schemas/Event"
        );
        assert!(doc["components"]["schemas"]["Event"].is_object());
        // The document describes itself, and fault bodies are closed.
        assert!(doc["paths"]["/openapi.json"]["get"].is_object());
        for kind in doc["components"]["schemas"]["FaultSpec"]["oneOf"]
            .as_array()
            .unwrap()
        {
            assert_eq!(kind["additionalProperties"], false, "{kind}");
            assert_eq!(
                kind["properties"]["peer"]["pattern"], "^[0-9a-f]{32}$",
                "{kind}"
            );
        }
        for kind in doc["components"]["schemas"]["FaultEntry"]["oneOf"]
            .as_array()
            .unwrap()
        {
            assert!(kind["properties"]["id"].is_object(), "{kind}");
        }
        let post = &doc["paths"]["/v1/faults"]["post"]["responses"];
        for status in ["409", "413", "415"] {
            assert!(post[status].is_object(), "POST /v1/faults: no {status}");
        }
        // Every operation documents the cross-origin refusal.
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                assert!(op["responses"]["403"].is_object(), "{method} {path}");
            }
        }
    }
}
