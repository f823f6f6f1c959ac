//! What the daemon shows through its HTTP API ([`crate::api::NodeApi`]) and `/metrics`
//! ([`NodeCollector`]), read from the state its tasks already keep: the link table, the
//! routing task's published table and status, the link endpoint's and the data plane's
//! counters. Nothing here takes a lock for longer than a copy.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::registry::Unit;
use tokio::sync::broadcast;
use x0_identity::{MeshPrefix, NodeId};
use x0_link::FailureReason;
use x0_routing::QualityClass;

use super::{Shared, lock};
use crate::api::{
    ActionInfo, Event, HealHealth, Health, HealthReason, IncidentInfo, LinkInfo, LinkQualityInfo,
    NodeApi, NodeInfo, PeerInfo, RestrictionInfo, RouteInfo, Topology, TopologyLink, TopologyNode,
};
use crate::metrics::{Labels, encode_counter, encode_counters, encode_gauge, encode_gauges};
use crate::time::{now_secs, rfc3339};

/// SVID lifetime left below which health reports `svid_expires_soon`.
const SVID_WARN: Duration = Duration::from_secs(120);

/// A configured neighbour's dialling state (kept by its dialler).
#[derive(Debug, Clone, Default)]
pub(super) struct PeerState {
    pub node_id: Option<NodeId>,
    pub linked: bool,
    pub last_error: Option<String>,
    pub failures: u32,
}

/// `EXCELLENT` … `BAD`.
pub(super) fn class_name(class: QualityClass) -> &'static str {
    match class {
        QualityClass::Excellent => "EXCELLENT",
        QualityClass::Good => "GOOD",
        QualityClass::Fair => "FAIR",
        QualityClass::Poor => "POOR",
        QualityClass::Bad => "BAD",
    }
}

impl Shared {
    fn prefix(&self) -> MeshPrefix {
        MeshPrefix::of(&self.trust_domain)
    }

    fn overlay(&self, node: NodeId) -> String {
        self.prefix().address_of(node).to_string()
    }

    /// The reasons the node is not fully healthy.
    pub(super) fn health_reasons(&self) -> Vec<HealthReason> {
        let mut reasons = Vec::new();
        let reason = |code: &str, message: String, blocks_ready: bool| HealthReason {
            code: code.into(),
            message,
            blocks_ready,
        };
        let expires = self.svid_not_after.load(Ordering::Relaxed);
        let now = now_secs();
        if expires <= now {
            reasons.push(reason(
                "svid_expired",
                format!(
                    "this node's SVID expired at {}; it must join again",
                    rfc3339(expires)
                ),
                true,
            ));
        } else if expires - now < SVID_WARN.as_secs() {
            reasons.push(reason(
                "svid_expires_soon",
                format!(
                    "this node's SVID expires at {} and has not been renewed",
                    rfc3339(expires)
                ),
                false,
            ));
        }
        if self.endpoint.trust().snapshot().is_revoked(self.node_id) {
            reasons.push(reason(
                "revoked",
                "the mesh CA revoked this node; its links are refused".into(),
                true,
            ));
        }
        if self.routing.status().seq_exhausted {
            reasons.push(reason(
                "routing_seq_exhausted",
                "this node's advert sequence number is exhausted: changes of its links are no \
                 longer advertised (docs/routing.md, \"Sequence numbers\")"
                    .into(),
                false,
            ));
        }
        let links = lock(&self.links).len();
        let configured = self.config.peers.len();
        if configured > 0 {
            let states = lock(&self.peer_states);
            let down: Vec<&str> = self
                .config
                .peers
                .iter()
                .filter(|p| !states.get(&p.addr).is_some_and(|s| s.linked))
                .map(|p| p.addr.as_str())
                .collect();
            if links == 0 {
                reasons.push(reason(
                    "no_links",
                    format!("no link is up; configured peers: {}", down.join(", ")),
                    true,
                ));
            } else if !down.is_empty() {
                reasons.push(reason(
                    "peers_down",
                    format!("configured peers not linked: {}", down.join(", ")),
                    false,
                ));
            }
        }
        reasons
    }
}

impl NodeApi for Shared {
    fn node(&self) -> NodeInfo {
        let expires = self.svid_not_after.load(Ordering::Relaxed);
        let table = self.routing.table();
        NodeInfo {
            node_id: self.node_id.to_string(),
            spiffe_id: self.trust_domain.node_id(self.node_id).to_string(),
            trust_domain: self.trust_domain.to_string(),
            overlay_addr: self.overlay(self.node_id),
            listen_addr: self.local_addr.to_string(),
            data_port: self.dataplane.port(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            uptime_s: self.started.elapsed().as_secs(),
            is_ca: self.ca.is_some(),
            svid_expires_at: rfc3339(expires),
            svid_expires_in_s: expires as i64 - now_secs() as i64,
            known_nodes: table.known_nodes.max(1),
            reachable_nodes: table.routes.len(),
            links: lock(&self.links).len(),
            ebpf_enabled: self.metrics.ebpf_enabled.get() == 1,
        }
    }

    fn health(&self) -> Health {
        Health::from_reasons(self.health_reasons())
    }

    fn peers(&self) -> Vec<PeerInfo> {
        let links: BTreeMap<NodeId, String> = lock(&self.links)
            .iter()
            .map(|(id, e)| (*id, e.remote.to_string()))
            .collect();
        let states = lock(&self.peer_states).clone();
        let mut out = Vec::new();
        let mut shown = std::collections::BTreeSet::new();
        for p in &self.config.peers {
            let s = states.get(&p.addr).cloned().unwrap_or_default();
            let id = s.node_id.or(p.node_id);
            let linked = id.is_some_and(|id| links.contains_key(&id));
            if let Some(id) = id {
                shown.insert(id);
            }
            out.push(PeerInfo {
                node_id: id.map(|i| i.to_string()),
                addr: Some(p.addr.clone()),
                configured: true,
                linked,
                overlay_addr: id.map(|i| self.overlay(i)),
                last_error: if linked { None } else { s.last_error },
                dial_failures: s.failures,
            });
        }
        for (id, remote) in links {
            if shown.contains(&id) {
                continue;
            }
            out.push(PeerInfo {
                node_id: Some(id.to_string()),
                addr: Some(remote),
                configured: false,
                linked: true,
                overlay_addr: Some(self.overlay(id)),
                last_error: None,
                dial_failures: 0,
            });
        }
        out
    }

    fn links(&self) -> Vec<LinkInfo> {
        let status = self.routing.status();
        let mut out: Vec<LinkInfo> = lock(&self.links)
            .iter()
            .map(|(peer, e)| LinkInfo {
                peer: peer.to_string(),
                remote_addr: e.remote.to_string(),
                role: e.role.to_owned(),
                kx_group: e.kx_group.clone(),
                up_s: e.since.elapsed().as_secs(),
                setup_ms: e.setup.as_secs_f64() * 1e3,
                routing: status.sessions.iter().find(|s| s.peer == *peer).map(|s| {
                    LinkQualityInfo {
                        rtt_ms: s.rtt.map(|d| d.as_secs_f64() * 1e3),
                        jitter_ms: s.jitter.as_secs_f64() * 1e3,
                        rx_loss: s.rx_loss,
                        tx_loss: s.tx_loss,
                        quality: class_name(s.class).to_owned(),
                        cost: s.cost,
                        probe_interval_ms: s.probe_interval.as_millis() as u64,
                    }
                }),
            })
            .collect();
        out.sort_by(|a, b| a.peer.cmp(&b.peer));
        out
    }

    fn routes(&self) -> Vec<RouteInfo> {
        let table = self.routing.table();
        let ids = |p: &Vec<NodeId>| p.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        let mut out: Vec<RouteInfo> = table
            .routes
            .iter()
            .map(|(dst, r)| RouteInfo {
                dst: dst.to_string(),
                overlay_addr: self.overlay(*dst),
                next_hop: r.next_hop.to_string(),
                via_backup: r.via_backup,
                path: r.path.as_ref().map(ids),
                alternate: table.alternates.get(dst).map(ids),
            })
            .collect();
        out.sort_by(|a, b| a.dst.cmp(&b.dst));
        out
    }

    fn topology(&self) -> Topology {
        let status = self.routing.status();
        let table = self.routing.table();
        let advertised: BTreeMap<NodeId, &Vec<x0_wire::routing::AdvertisedLink>> =
            status.topology.iter().map(|n| (n.id, &n.links)).collect();
        let mut nodes = Vec::with_capacity(status.topology.len() + 1);
        let mut links = Vec::new();
        for n in status.topology.iter() {
            let is_self = n.id == self.node_id;
            nodes.push(TopologyNode {
                id: n.id.to_string(),
                overlay_addr: self.overlay(n.id),
                is_self,
                reachable: is_self || table.routes.contains_key(&n.id),
                seq: n.seq,
            });
            for l in &n.links {
                let two_way = advertised
                    .get(&l.neighbor)
                    .is_some_and(|back| back.iter().any(|b| b.neighbor == n.id));
                links.push(TopologyLink {
                    from: n.id.to_string(),
                    to: l.neighbor.to_string(),
                    cost: l.cost,
                    quality: class_name(QualityClass::from_u8(l.class)).to_owned(),
                    two_way,
                });
            }
        }
        if !advertised.contains_key(&self.node_id) {
            nodes.push(TopologyNode {
                id: self.node_id.to_string(),
                overlay_addr: self.overlay(self.node_id),
                is_self: true,
                reachable: true,
                seq: 0,
            });
        }
        Topology {
            self_id: self.node_id.to_string(),
            nodes,
            links,
        }
    }

    fn events(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    fn incidents(&self) -> Vec<IncidentInfo> {
        self.heal.view().incidents.as_ref().clone()
    }

    fn actions(&self) -> Vec<ActionInfo> {
        self.heal.view().actions.as_ref().clone()
    }

    fn faults(&self) -> Option<Arc<crate::fault::FaultSet>> {
        Some(self.faults.clone())
    }

    fn heal_health(&self) -> HealHealth {
        let view = self.heal.view();
        let r = self.routing.status().restrictions.clone();
        let mut restrictions: Vec<RestrictionInfo> = r
            .cost_factors
            .iter()
            .map(|(n, f)| RestrictionInfo {
                kind: "cost_raised".into(),
                node: n.to_string(),
                factor: Some(*f),
                limit_bytes_per_s: None,
            })
            .collect();
        let plain = |kind: &str, n: &NodeId| RestrictionInfo {
            kind: kind.into(),
            node: n.to_string(),
            factor: None,
            limit_bytes_per_s: None,
        };
        restrictions.extend(r.excluded.iter().map(|n| plain("link_excluded", n)));
        restrictions.extend(r.quarantined.iter().map(|n| plain("node_quarantined", n)));
        restrictions.extend(
            self.dataplane
                .shed_limits()
                .into_iter()
                .map(|l| RestrictionInfo {
                    limit_bytes_per_s: Some(l.limit_bytes_per_s as u64),
                    ..plain("load_shed", &l.node)
                }),
        );
        let error = if self.heal.enabled() {
            self.heal.error()
        } else {
            Some("off in the configuration (heal.enabled = false)".into())
        };
        HealHealth {
            enabled: view.running,
            error,
            mode: view.mode.map(|m| m.as_str().to_owned()),
            state: view.state.map(|s| s.as_str().to_owned()),
            state_value: view.state.map(|s| s.gauge()),
            reasons: view.reasons.clone(),
            sampling_interval_ms: view
                .running
                .then(|| view.sampling_interval.as_millis() as u64),
            open_incidents: view.open_incidents,
            restrictions,
            audit: self.heal.audit(),
        }
    }
}

/// The daemon's scrape-time metrics: link endpoint, routing, data plane, configured peers.
pub(super) struct NodeCollector(pub Arc<Shared>);

impl fmt::Debug for NodeCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeCollector").finish_non_exhaustive()
    }
}

fn peer(p: NodeId) -> Labels {
    vec![("peer", p.to_string())]
}

impl Collector for NodeCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> fmt::Result {
        let shared = &self.0;
        let e = &mut encoder;
        // Link endpoint.
        let m = shared.endpoint.metrics();
        let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        encode_gauge(
            e,
            "links_open",
            "Links currently open",
            None,
            get(&m.links_open) as f64,
        )?;
        encode_counters(
            e,
            "link_handshake_failures",
            "Link handshakes that failed, by reason",
            None,
            FailureReason::ALL
                .iter()
                .map(|r| (vec![("reason", r.as_str().to_owned())], m.failures(*r))),
        )?;
        encode_counter(
            e,
            "link_certificates_refused",
            "Peer certificates refused by the SPIFFE verifier (any reason)",
            None,
            get(&m.certificates_refused),
        )?;
        encode_counter(
            e,
            "link_retries_sent",
            "Stateless retries sent to unvalidated addresses under handshake load",
            None,
            get(&m.retries_sent),
        )?;
        encode_counter(
            e,
            "link_datagrams_received",
            "UDP datagrams received on the link socket",
            None,
            get(&m.datagrams_received),
        )?;
        encode_counter(
            e,
            "link_datagrams_malformed",
            "Datagrams on the link socket that break QUIC's invariants (dropped)",
            None,
            get(&m.datagrams_malformed),
        )?;
        encode_counter(
            e,
            "link_control_messages_malformed",
            "Control messages that did not parse (the link is closed)",
            None,
            get(&m.control_messages_malformed),
        )?;
        // The CA service (the CA node only).
        if let Some(ca) = &shared.ca_service {
            let st = ca.stats();
            encode_counters(
                e,
                "ca_joins",
                "Joins answered with an SVID by this CA node (repeated: the node had redeemed its invitation before and its first answer was lost)",
                None,
                [
                    (vec![("result", "issued".to_owned())], get(&st.joins_issued)),
                    (
                        vec![("result", "repeated".to_owned())],
                        get(&st.joins_repeated),
                    ),
                ],
            )?;
            encode_counter(
                e,
                "ca_renewals",
                "SVID renewals answered with an SVID by this CA node",
                None,
                get(&st.renewals_issued),
            )?;
            encode_counters(
                e,
                "ca_requests_refused",
                "Join and renewal requests refused by this CA node, by reason (refused: bad proof, invitation, revoked; busy: too many in flight)",
                None,
                [
                    (vec![("reason", "refused".to_owned())], get(&st.refused)),
                    (vec![("reason", "busy".to_owned())], get(&st.refused_busy)),
                ],
            )?;
            encode_counter(
                e,
                "ca_requests_failed",
                "Join and renewal requests that failed in the CA store or in signing",
                None,
                get(&st.failed),
            )?;
            encode_gauge(
                e,
                "ca_requests_in_flight",
                "Join and renewal requests being handled by this CA node",
                None,
                ca.in_flight() as f64,
            )?;
        }
        // Per link: the link table, measured by the routing sessions.
        let status = shared.routing.status();
        let linked: Vec<NodeId> = lock(&shared.links).keys().copied().collect();
        encode_gauges(
            e,
            "link_up",
            "1 for a link whose routing session is up, 0 while it is still starting",
            None,
            linked.iter().map(|p| {
                let up = status.sessions.iter().any(|s| s.peer == *p);
                (peer(*p), if up { 1.0 } else { 0.0 })
            }),
        )?;
        let sessions = &status.sessions;
        encode_gauges(
            e,
            "link_rtt",
            "Smoothed round-trip time of the link's probes",
            Some(Unit::Seconds),
            sessions
                .iter()
                .filter_map(|s| s.rtt.map(|r| (peer(s.peer), r.as_secs_f64()))),
        )?;
        encode_gauges(
            e,
            "link_jitter",
            "Jitter of the link's round-trip time",
            Some(Unit::Seconds),
            sessions
                .iter()
                .map(|s| (peer(s.peer), s.jitter.as_secs_f64())),
        )?;
        encode_gauges(
            e,
            "link_loss",
            "Probe loss on the link, by direction (rx: the neighbour's probes to us; tx: ours, as it reports)",
            Some(Unit::Other("ratio".into())),
            sessions.iter().flat_map(|s| {
                [
                    (
                        vec![("peer", s.peer.to_string()), ("direction", "rx".to_owned())],
                        s.rx_loss,
                    ),
                    (
                        vec![("peer", s.peer.to_string()), ("direction", "tx".to_owned())],
                        s.tx_loss,
                    ),
                ]
            }),
        )?;
        encode_gauges(
            e,
            "link_quality_class",
            "Quality class of the link: 0 EXCELLENT, 1 GOOD, 2 FAIR, 3 POOR, 4 BAD",
            None,
            sessions
                .iter()
                .map(|s| (peer(s.peer), f64::from(s.class as u8))),
        )?;
        encode_gauges(
            e,
            "link_cost",
            "Routing cost of the link (ETX times one-way latency plus 1 ms, in 100 µs units)",
            None,
            sessions.iter().map(|s| (peer(s.peer), f64::from(s.cost))),
        )?;
        encode_gauges(
            e,
            "link_probe_interval",
            "Current probe interval of the link",
            Some(Unit::Seconds),
            sessions
                .iter()
                .map(|s| (peer(s.peer), s.probe_interval.as_secs_f64())),
        )?;
        // Configured neighbours.
        {
            let states = lock(&shared.peer_states);
            encode_gauges(
                e,
                "peer_up",
                "1 while a configured neighbour ([[peers]]) is linked, else 0",
                None,
                shared.config.peers.iter().map(|p| {
                    let up = states.get(&p.addr).is_some_and(|s| s.linked);
                    (vec![("addr", p.addr.clone())], if up { 1.0 } else { 0.0 })
                }),
            )?;
        }
        // Routing.
        let s = &status.stats;
        let table = shared.routing.table();
        encode_gauge(
            e,
            "routing_known_nodes",
            "Nodes in the link-state database, this one included",
            None,
            table.known_nodes.max(1) as f64,
        )?;
        encode_gauge(
            e,
            "routing_reachable_nodes",
            "Destinations with a route",
            None,
            table.routes.len() as f64,
        )?;
        let counters: [(&str, &str, u64); 19] = [
            (
                "routing_adverts_originated",
                "Link-state adverts this node originated",
                s.adverts_originated,
            ),
            (
                "routing_adverts_sent",
                "Link-state adverts sent to neighbours (first transmissions and retransmissions)",
                s.adverts_sent,
            ),
            (
                "routing_adverts_received",
                "Link-state adverts received from neighbours",
                s.adverts_received,
            ),
            (
                "routing_adverts_installed",
                "Received adverts that were new and entered the link-state database",
                s.adverts_installed,
            ),
            (
                "routing_advert_retransmissions",
                "Adverts retransmitted for want of an acknowledgement",
                s.retransmissions,
            ),
            ("routing_probes_sent", "Liveness probes sent", s.probes_sent),
            (
                "routing_probes_received",
                "Liveness probes received",
                s.probes_received,
            ),
            (
                "routing_messages_malformed",
                "Routing messages that did not parse (dropped)",
                s.malformed,
            ),
            (
                "routing_spf_runs",
                "Shortest-path-first computations",
                s.spf_runs,
            ),
            (
                "routing_topology_changes",
                "Topology changes that scheduled a route recomputation (bursts within spf_delay count once)",
                s.topology_changes,
            ),
            (
                "routing_fast_reroutes",
                "Local link failures that moved forwarding onto precomputed backup paths",
                s.fast_reroutes,
            ),
            (
                "routing_own_seq_recovered",
                "Times a neighbour showed this node an advert of its own with a higher sequence number",
                s.own_seq_recovered,
            ),
            (
                "routing_own_seq_exhausted",
                "Originations refused because this node's advert sequence number reached its maximum",
                s.own_seq_exhausted,
            ),
            (
                "routing_signature_verifications",
                "Advert signature checks performed, each within its sender's verification budget",
                s.signature_verifications,
            ),
            (
                "routing_adverts_deferred",
                "Adverts dropped unacknowledged because their sender's verification budget was spent (the sender retransmits them)",
                s.adverts_deferred,
            ),
            (
                "routing_neighbor_penalties",
                "Forgeries (bad signatures, origins the mesh CA never admitted) charged to the neighbour that sent them",
                s.neighbor_penalties,
            ),
            (
                "routing_origins_purged",
                "Origins whose advert left the link-state database because they lost their admission (revoked)",
                s.origins_purged,
            ),
            (
                "routing_adverts_rate_limited",
                "Newer adverts held back by their origin's acceptance limit (routing: min_advert_arrival), installed and flooded when the origin's bucket refills",
                s.adverts_rate_limited,
            ),
            (
                "routing_acks_implied",
                "Adverts not acknowledged explicitly because our copy crossed theirs on the same link",
                s.acks_implied,
            ),
        ];
        for (name, help, v) in counters {
            encode_counter(e, name, help, None, v)?;
        }
        encode_counter(
            e,
            "routing_control_sent",
            "Bytes of routing messages sent",
            Some(Unit::Bytes),
            s.bytes_sent,
        )?;
        encode_counters(
            e,
            "routing_adverts_rejected",
            "Received adverts dropped, by reason (stale, bad_signature, unknown_origin, \
             not_admitted, revoked, lsdb_full, own_forged)",
            None,
            [
                ("stale", s.rejected_stale),
                ("bad_signature", s.rejected_bad_signature),
                ("unknown_origin", s.rejected_unknown_origin),
                ("not_admitted", s.rejected_not_admitted),
                ("revoked", s.rejected_revoked),
                ("lsdb_full", s.rejected_lsdb_full),
                ("own_forged", s.rejected_own_forged),
            ]
            .map(|(r, v)| (vec![("reason", r.to_owned())], v)),
        )?;
        // The shell's bounded queues.
        let q = shared.routing.shell_stats();
        encode_counters(
            e,
            "routing_input_dropped",
            "Routing inputs dropped because their bounded queue was full, by kind (probe, ack, \
             advert: a link's queues, datagrams only; link: a new link the routing task could \
             not take, closed; request: data-plane and self-healing requests)",
            None,
            [
                ("probe", &q.probes_dropped),
                ("ack", &q.acks_dropped),
                ("advert", &q.adverts_dropped),
                ("link", &q.links_refused),
                ("request", &q.requests_dropped),
            ]
            .map(|(k, v)| (vec![("kind", k.to_owned())], get(v))),
        )?;
        encode_counter(
            e,
            "routing_output_dropped",
            "Routing messages not sent because their link's stream queue was full (the router \
             retransmits adverts)",
            None,
            get(&q.streams_unsent),
        )?;
        // The advert verifier: origin credentials against the mesh CA.
        let o = shared.routing.origin_stats();
        encode_counter(
            e,
            "routing_origin_chain_verifications",
            "Advert origin credentials checked against the mesh CA (not found in the verifier's cache)",
            None,
            get(&o.chain_verifications),
        )?;
        encode_counter(
            e,
            "routing_origin_cache_hits",
            "Adverts whose origin credential was found in the verifier's cache",
            None,
            get(&o.cache_hits),
        )?;
        encode_counter(
            e,
            "routing_origin_cache_evictions",
            "Verified origin credentials evicted because the verifier's cache was full",
            None,
            get(&o.cache_evictions),
        )?;
        encode_counters(
            e,
            "routing_origin_refused",
            "Adverts the verifier refused, by reason (revoked, expired, not_admitted, bad_signature)",
            None,
            [
                ("revoked", &o.refused_revoked),
                ("expired", &o.refused_expired),
                ("not_admitted", &o.refused_not_admitted),
                ("bad_signature", &o.refused_bad_signature),
            ]
            .map(|(r, v)| (vec![("reason", r.to_owned())], get(v))),
        )?;
        encode_counters(
            e,
            "routing_neighbors_down",
            "Neighbours declared down, by cause (silent: missed probes; local: the link closed)",
            None,
            [
                ("silent", s.neighbors_down_silent),
                ("local", s.neighbors_down_local),
            ]
            .map(|(c, v)| (vec![("cause", c.to_owned())], v)),
        )?;
        // Data plane.
        let c = shared.dataplane.counters();
        let packets: [(&str, &str, u64); 5] = [
            (
                "dataplane_sent_packets",
                "Packets read from the TUN device and sent into the mesh",
                c.tun_packets_sent,
            ),
            (
                "dataplane_delivered_packets",
                "Packets delivered to the TUN device",
                c.delivered,
            ),
            (
                "dataplane_forwarded_packets",
                "Packets relayed for other nodes",
                c.relayed,
            ),
            (
                "dataplane_redundant_sent_packets",
                "Packets sent twice over node-disjoint paths (redundant mode)",
                c.redundant_sent,
            ),
            (
                "dataplane_redundant_duplicate_packets",
                "Second copies of redundant packets discarded at the receiver",
                c.redundant_duplicates,
            ),
        ];
        for (name, help, v) in packets {
            encode_counter(e, name, help, None, v)?;
        }
        encode_counter(
            e,
            "dataplane_balanced_alternate_packets",
            "Packets sent on a path other than the primary (balanced mode)",
            None,
            c.balanced_alternate,
        )?;
        let bytes: [(&str, &str, u64); 3] = [
            (
                "dataplane_sent",
                "Bytes of inner packets read from the TUN device and sent into the mesh",
                c.tun_bytes_sent,
            ),
            (
                "dataplane_delivered",
                "Bytes of inner packets handed to the TUN device (or application socket)",
                c.delivered_bytes,
            ),
            (
                "dataplane_forwarded",
                "Bytes of link frames relayed for other nodes",
                c.relayed_bytes,
            ),
        ];
        for (name, help, v) in bytes {
            encode_counter(e, name, help, Some(Unit::Bytes), v)?;
        }
        encode_counter(
            e,
            "dataplane_link_rekeys",
            "Link data keys replaced by the next generation exported from the link's TLS session",
            None,
            c.link_rekeys,
        )?;
        encode_counters(
            e,
            "dataplane_probes",
            "End-to-end path probes of the self-healing loop: sent, answered for others, \
             answers received",
            None,
            [
                ("sent", c.probes_sent),
                ("answered", c.probes_answered),
                ("reply_received", c.probe_replies),
            ]
            .map(|(r, v)| (vec![("event", r.to_owned())], v)),
        )?;
        encode_gauge(
            e,
            "e2e_sessions_active",
            "End-to-end sessions with keys in place",
            None,
            c.e2e_sessions_active as f64,
        )?;
        encode_counters(
            e,
            "e2e_handshakes",
            "End-to-end TLS 1.3 handshakes over the overlay, by result",
            None,
            [
                ("completed", c.e2e_handshakes_completed),
                ("failed", c.e2e_handshakes_failed),
            ]
            .map(|(r, v)| (vec![("result", r.to_owned())], v)),
        )?;
        encode_counter(
            e,
            "e2e_rekeys",
            "End-to-end rekeys (handshakes completed beyond each session's first)",
            None,
            c.e2e_rekeys,
        )?;
        let t = &c.e2e_table;
        encode_gauges(
            e,
            "e2e_sessions",
            "End-to-end sessions held, by state",
            None,
            [
                ("established", t.established),
                ("pending", t.pending),
                (
                    "other",
                    t.sessions.saturating_sub(t.established + t.pending),
                ),
            ]
            .map(|(s, v)| (vec![("state", s.to_owned())], v as f64)),
        )?;
        encode_counters(
            e,
            "e2e_handshake_messages_refused",
            "End-to-end handshake messages answered without creating state, or dropped, by reason",
            None,
            [
                ("retry_sent", t.retries_sent),
                ("unmatched", t.unmatched),
                ("malformed", t.malformed),
                ("ignored", t.handshakes.ignored),
                ("collision", t.handshakes.collisions),
            ]
            .map(|(r, v)| (vec![("reason", r.to_owned())], v)),
        )?;
        encode_counters(
            e,
            "e2e_sessions_removed",
            "End-to-end sessions refused, evicted or aged out, by reason",
            None,
            [
                ("refused_full", t.refused_full),
                ("evicted_pending", t.evicted_pending),
                ("evicted_idle", t.evicted_idle),
                ("expired_idle", t.expired_idle),
                ("expired_stale", t.expired_stale),
            ]
            .map(|(r, v)| (vec![("reason", r.to_owned())], v)),
        )?;
        let mut shed: Vec<(&NodeId, &u64)> = c.shed_dropped.iter().collect();
        shed.sort();
        encode_counters(
            e,
            "dataplane_shed_dropped_packets",
            "Transit frames from a neighbour dropped by load shedding (the self-healing loop's \
             shed_load), by neighbour",
            None,
            shed.into_iter().map(|(n, v)| (peer(*n), *v)),
        )?;
        let mut drops: Vec<(&&str, &u64)> = c.drops.iter().collect();
        drops.sort();
        encode_counters(
            e,
            "dataplane_dropped_packets",
            "Packets dropped by the data plane, by reason (see docs/metrics.md)",
            None,
            drops
                .into_iter()
                .map(|(r, v)| (vec![("reason", (*r).to_owned())], *v)),
        )?;
        Ok(())
    }
}
