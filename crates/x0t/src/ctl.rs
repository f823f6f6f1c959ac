//! `x0t status | peers | links | routes | topology | incidents` (and `x0t fault`, in
//! [`crate::fault`]): read a running daemon through its HTTP
//! API; a table for people, JSON with `--json`.
//!
//! The daemon is found at `--api HOST:PORT` (default `127.0.0.1:5471`), or through its
//! configuration file (`--config`: its `[api] listen` and `token_file`). When nothing answers
//! the command says so and exits 69 (EX_UNAVAILABLE).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use x0_node::api::{Health, IncidentInfo, LinkInfo, NodeInfo, PeerInfo, RouteInfo, Topology};
use x0_node::client::Client;
use x0_node::exit::{CmdResult, Exit};
use x0_node::text::{print_json, printable, table};

/// Where the daemon's API is, and how to print.
#[derive(Debug, Clone, Args)]
pub struct ApiArgs {
    /// The daemon's API address [default: 127.0.0.1:5471, or `[api] listen` of --config].
    #[arg(long, value_name = "HOST:PORT", conflicts_with = "config")]
    pub api: Option<SocketAddr>,
    /// Read the API address and token file from the daemon's configuration file.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// File holding the API's bearer token (the daemon's `api.token_file`).
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// The client for the daemon `args` point at.
pub fn client(args: &ApiArgs) -> Result<Client, Exit> {
    Client::locate(args.api, args.config.as_deref(), args.token_file.as_deref())
}

/// Which view to show.
#[derive(Debug, Clone, Copy)]
pub enum View {
    /// Node and health.
    Status,
    /// Neighbours.
    Peers,
    /// Links.
    Links,
    /// Routes.
    Routes,
    /// Topology.
    Topology,
    /// Self-healing incidents.
    Incidents,
}

/// Runs one of the commands.
pub fn run(view: View, args: &ApiArgs) -> CmdResult {
    let client = client(args)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Exit::failure(format!("cannot start the runtime: {e}")))?;
    rt.block_on(async {
        match view {
            View::Status => {
                let node: NodeInfo = client.get("/v1/node").await?;
                let health: Health = client.get_any_status("/health").await?;
                if args.json {
                    print_json(&serde_json::json!({ "node": node, "health": health }));
                } else {
                    print!("{}", status_text(&node, &health));
                }
            }
            View::Peers => {
                let peers: Vec<PeerInfo> = client.get("/v1/peers").await?;
                show(args.json, peers.as_slice(), peers_table);
            }
            View::Links => {
                let links: Vec<LinkInfo> = client.get("/v1/links").await?;
                show(args.json, links.as_slice(), links_table);
            }
            View::Routes => {
                let routes: Vec<RouteInfo> = client.get("/v1/routes").await?;
                show(args.json, routes.as_slice(), routes_table);
            }
            View::Topology => {
                let topology: Topology = client.get("/v1/topology").await?;
                show(args.json, &topology, topology_text);
            }
            View::Incidents => {
                let incidents: Vec<IncidentInfo> = client.get("/v1/incidents").await?;
                show(args.json, incidents.as_slice(), incidents_table);
            }
        }
        Ok(())
    })
}

fn show<T: serde::Serialize + ?Sized>(json: bool, v: &T, text: impl FnOnce(&T) -> String) {
    if json {
        print_json(v);
    } else {
        print!("{}", text(v));
    }
}

fn dash(v: Option<&str>) -> String {
    v.unwrap_or("-").to_owned()
}

fn short(id: &str) -> String {
    id.chars().take(12).collect()
}

fn status_text(node: &NodeInfo, health: &Health) -> String {
    let status = serde_json::to_value(health.status)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    let mut s = format!(
        "node:          {}\nspiffe_id:     {}\noverlay_addr:  {}\nlisten:        {} (data port {})\n\
         version:       {}\nuptime:        {}\nca_node:       {}\nsvid_expires:  {} (in {})\n\
         links:         {}\nnodes:         {} known, {} reachable\nhealth:        {}{}\n",
        node.node_id,
        node.spiffe_id,
        node.overlay_addr,
        node.listen_addr,
        node.data_port,
        node.version,
        humantime::format_duration(Duration::from_secs(node.uptime_s)),
        node.is_ca,
        node.svid_expires_at,
        if node.svid_expires_in_s >= 0 {
            humantime::format_duration(Duration::from_secs(node.svid_expires_in_s as u64))
                .to_string()
        } else {
            "expired".to_owned()
        },
        node.links,
        node.known_nodes,
        node.reachable_nodes,
        status,
        if health.ready { "" } else { " (not ready)" },
    );
    for r in &health.reasons {
        s.push_str(&format!("  - {}: {}\n", r.code, r.message));
    }
    // Line by line, so that only the lines stay lines.
    s.lines()
        .map(|l| printable(l).into_owned() + "\n")
        .collect()
}

fn peers_table(peers: &[PeerInfo]) -> String {
    if peers.is_empty() {
        return "no peers configured or linked\n".into();
    }
    let rows: Vec<Vec<String>> = peers
        .iter()
        .map(|p| {
            vec![
                p.node_id
                    .as_deref()
                    .map(short)
                    .unwrap_or_else(|| "-".into()),
                dash(p.addr.as_deref()),
                if p.linked { "up" } else { "down" }.into(),
                if p.configured { "yes" } else { "no" }.into(),
                dash(p.overlay_addr.as_deref()),
                match (&p.last_error, p.dial_failures) {
                    (Some(e), n) => format!("{n} failed dials: {e}"),
                    (None, _) => String::new(),
                },
            ]
        })
        .collect();
    table(
        &[
            "PEER",
            "ADDRESS",
            "LINK",
            "CONFIGURED",
            "OVERLAY",
            "LAST ERROR",
        ],
        &rows,
    )
}

fn links_table(links: &[LinkInfo]) -> String {
    if links.is_empty() {
        return "no links\n".into();
    }
    let rows: Vec<Vec<String>> = links
        .iter()
        .map(|l| {
            let r = l.routing.as_ref();
            vec![
                short(&l.peer),
                l.remote_addr.clone(),
                l.role.clone(),
                l.kx_group.clone(),
                humantime::format_duration(Duration::from_secs(l.up_s)).to_string(),
                r.and_then(|r| r.rtt_ms)
                    .map_or("-".into(), |v| format!("{v:.2} ms")),
                r.map_or("-".into(), |r| {
                    format!("{:.1}%/{:.1}%", r.rx_loss * 100.0, r.tx_loss * 100.0)
                }),
                r.map_or("-".into(), |r| r.quality.clone()),
                r.map_or("-".into(), |r| r.cost.to_string()),
            ]
        })
        .collect();
    table(
        &[
            "PEER",
            "REMOTE",
            "ROLE",
            "KX GROUP",
            "UP",
            "RTT",
            "LOSS RX/TX",
            "QUALITY",
            "COST",
        ],
        &rows,
    )
}

fn routes_table(routes: &[RouteInfo]) -> String {
    if routes.is_empty() {
        return "no routes\n".into();
    }
    let rows: Vec<Vec<String>> = routes
        .iter()
        .map(|r| {
            vec![
                short(&r.dst),
                r.overlay_addr.clone(),
                short(&r.next_hop),
                if r.via_backup { "backup" } else { "primary" }.into(),
                r.alternate.as_ref().map_or(String::new(), |p| {
                    p.iter().map(|n| short(n)).collect::<Vec<_>>().join(">")
                }),
            ]
        })
        .collect();
    table(
        &["DESTINATION", "OVERLAY", "NEXT HOP", "PATH", "ALTERNATE"],
        &rows,
    )
}

fn topology_text(t: &Topology) -> String {
    let nodes: Vec<Vec<String>> = t
        .nodes
        .iter()
        .map(|n| {
            vec![
                short(&n.id),
                n.overlay_addr.clone(),
                if n.is_self {
                    "self".into()
                } else if n.reachable {
                    "reachable".into()
                } else {
                    "unreachable".into()
                },
                n.seq.to_string(),
            ]
        })
        .collect();
    let links: Vec<Vec<String>> = t
        .links
        .iter()
        .map(|l| {
            vec![
                short(&l.from),
                short(&l.to),
                l.cost.to_string(),
                l.quality.clone(),
                if l.two_way { "yes" } else { "no" }.into(),
            ]
        })
        .collect();
    format!(
        "{} nodes, {} links\n\n{}\n{}",
        t.nodes.len(),
        t.links.len(),
        table(&["NODE", "OVERLAY", "STATE", "SEQ"], &nodes),
        table(&["FROM", "TO", "COST", "QUALITY", "TWO-WAY"], &links),
    )
}

fn incidents_table(incidents: &[IncidentInfo]) -> String {
    if incidents.is_empty() {
        return "no incidents\n".into();
    }
    let rows: Vec<Vec<String>> = incidents
        .iter()
        .map(|i| {
            vec![
                format!("i{}", i.id),
                x0_node::time::rfc3339(i.opened_at_unix_ms / 1000),
                if i.open {
                    "open".into()
                } else {
                    i.resolution.clone().unwrap_or_else(|| "closed".into())
                },
                i.problem.clone(),
                match &i.cause_node {
                    Some(n) => format!("{} {}", i.cause_kind, short(n)),
                    None => i.cause_kind.clone(),
                },
                format!("{:.2}", i.confidence),
                i.first_symptom.clone(),
            ]
        })
        .collect();
    table(
        &[
            "INCIDENT",
            "OPENED",
            "STATE",
            "PROBLEM",
            "CAUSE",
            "CONFIDENCE",
            "FIRST SYMPTOM",
        ],
        &rows,
    )
}
