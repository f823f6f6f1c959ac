//! `x0t status | peers | links | routes | topology | incidents` (and `x0t fault`, in
//! [`crate::fault`]): read a running daemon through its HTTP
//! API; a table for people, JSON with `--json`.
//!
//! The daemon is found at `--api HOST:PORT` (default `127.0.0.1:5471`), or through its
//! configuration file (`--config`: its `[api] listen` and `token_file`). When nothing answers
//! the command says so and exits 69 (EX_UNAVAILABLE).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;

use crate::api::{Health, IncidentInfo, LinkInfo, NodeInfo, PeerInfo, RouteInfo, Topology};
use crate::config::{Config, DEFAULT_API_LISTEN};
use crate::exit::{self, CmdResult, Exit};

/// Time to connect to the daemon's API.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Time for a whole request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest answer read.
const MAX_ANSWER: usize = 64 * 1024 * 1024;

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
    let client = Client::new(args)?;
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

pub(crate) fn print_json<T: serde::Serialize + ?Sized>(v: &T) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

fn show<T: serde::Serialize + ?Sized>(json: bool, v: &T, text: impl FnOnce(&T) -> String) {
    if json {
        print_json(v);
    } else {
        print!("{}", text(v));
    }
}

/// An HTTP client for one daemon's API.
#[derive(Debug)]
pub(crate) struct Client {
    addr: SocketAddr,
    token: Option<String>,
}

/// Where a daemon listening on `listen` is reached from this machine.
fn connect_addr(listen: SocketAddr) -> SocketAddr {
    match listen.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), listen.port())
        }
        IpAddr::V6(v6) if v6.is_unspecified() => {
            SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), listen.port())
        }
        _ => listen,
    }
}

fn read_token(path: &Path) -> Result<String, Exit> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Exit::new(
            exit::NO_INPUT,
            format!("{}: cannot read the API token: {e}", path.display()),
        )
    })?;
    Ok(text.trim().to_owned())
}

impl Client {
    pub(crate) fn new(args: &ApiArgs) -> Result<Self, Exit> {
        let (addr, mut token_file) = match &args.config {
            Some(path) => {
                let config = Config::load(path).map_err(|e| Exit::usage(e.to_string()))?;
                if !config.api.enabled {
                    return Err(Exit::usage(format!(
                        "{}: the daemon's API is disabled (api.enabled = false)",
                        path.display()
                    )));
                }
                (config.api.listen_addr(), config.api.token_file)
            }
            None => (args.api.unwrap_or(DEFAULT_API_LISTEN), None),
        };
        if let Some(t) = &args.token_file {
            token_file = Some(t.clone());
        }
        let token = token_file.as_deref().map(read_token).transpose()?;
        Ok(Self {
            addr: connect_addr(addr),
            token,
        })
    }

    fn unavailable(&self, why: impl std::fmt::Display) -> Exit {
        Exit::new(
            exit::UNAVAILABLE,
            format!(
                "no x0t daemon answers at {} ({why}); is `x0t up` running? \
                 (--api HOST:PORT or --config FILE point at another one)",
                self.addr
            ),
        )
    }

    /// GETs `path` and returns the status and body.
    async fn fetch(&self, path: &str) -> Result<(u16, Bytes), Exit> {
        self.exchange(hyper::Method::GET, path, None).await
    }

    /// Sends one request (with a JSON body, if any) and returns the status and body.
    async fn exchange(
        &self,
        method: hyper::Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(u16, Bytes), Exit> {
        let stream =
            tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(self.addr))
                .await
                .map_err(|_| self.unavailable("connection timed out"))?
                .map_err(|e| self.unavailable(e))?;
        let exchange = async {
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(conn);
            let mut req = hyper::Request::builder()
                .method(method)
                .uri(path)
                .header(hyper::header::HOST, self.addr.to_string())
                .header(hyper::header::ACCEPT, "application/json");
            if body.is_some() {
                req = req.header(hyper::header::CONTENT_TYPE, "application/json");
            }
            if let Some(t) = &self.token {
                req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {t}"));
            }
            let req = req
                .body(Full::new(Bytes::from(body.unwrap_or_default())))
                .map_err(|e| std::io::Error::other(e.to_string()))
                .map_err(hyper_io)?;
            let resp = sender.send_request(req).await?;
            let status = resp.status().as_u16();
            let body = http_body_util::Limited::new(resp.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map_err(|e| std::io::Error::other(e.to_string()))
                .map_err(hyper_io)?
                .to_bytes();
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>((status, body))
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| self.unavailable("no answer in time"))?
            .map_err(|e| self.unavailable(e))
    }

    /// GETs `path` and decodes the JSON answer, refusing non-2xx answers.
    pub(crate) async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, Exit> {
        let body = self.send(hyper::Method::GET, path, None).await?;
        self.decode(path, &body)
    }

    /// Sends a request and returns the body of a 2xx answer; other answers are errors.
    pub(crate) async fn send(
        &self,
        method: hyper::Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Bytes, Exit> {
        let (status, body) = self.exchange(method, path, body).await?;
        if status == 401 {
            return Err(Exit::new(
                exit::NO_PERM,
                format!(
                    "the daemon at {} wants an API token: pass --token-file FILE (its \
                     api.token_file) or --config FILE",
                    self.addr
                ),
            ));
        }
        if !(200..300).contains(&status) {
            let message = serde_json::from_slice::<crate::api::ApiError>(&body)
                .map(|e| e.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned());
            return Err(Exit::failure(format!(
                "the daemon at {} answered {status} to {path}: {message}",
                self.addr
            )));
        }
        Ok(body)
    }

    /// GETs `path` and decodes the JSON answer whatever the status (`/health` answers 503 with
    /// a body when the node is not ready).
    async fn get_any_status<T: DeserializeOwned>(&self, path: &str) -> Result<T, Exit> {
        let (_, body) = self.fetch(path).await?;
        self.decode(path, &body)
    }

    pub(crate) fn decode<T: DeserializeOwned>(&self, path: &str, body: &[u8]) -> Result<T, Exit> {
        serde_json::from_slice(body).map_err(|e| {
            Exit::new(
                exit::DATA,
                format!(
                    "the answer of {} to {path} is not what this x0t expects ({e}); is it an \
                     x0t daemon of the same version?",
                    self.addr
                ),
            )
        })
    }
}

/// Any error as a boxed error (for the `?`s in one request).
fn hyper_io(e: std::io::Error) -> Box<dyn std::error::Error + Send + Sync> {
    Box::new(e)
}

/// A plain text table: a header row, then rows, columns padded to their widest cell.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(cell);
            } else {
                let pad = widths[i] - cell.chars().count();
                s.push_str(cell);
                s.push_str(&" ".repeat(pad + 2));
            }
        }
        s.trim_end().to_owned() + "\n"
    };
    let mut out = line(headers.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
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
    s
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
                crate::time::rfc3339(i.opened_at_unix_ms / 1000),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_pad_columns_to_the_widest_cell() {
        let t = table(
            &["A", "LONGER"],
            &[
                vec!["xyz".into(), "1".into()],
                vec!["x".into(), "22".into()],
            ],
        );
        assert_eq!(t, "A    LONGER\nxyz  1\nx    22\n");
    }

    #[test]
    fn an_unspecified_listen_address_is_reached_on_loopback() {
        assert_eq!(
            connect_addr("0.0.0.0:5471".parse().unwrap()),
            "127.0.0.1:5471".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(
            connect_addr("[::]:1".parse().unwrap()),
            "[::1]:1".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(
            connect_addr("192.0.2.1:9".parse().unwrap()),
            "192.0.2.1:9".parse::<SocketAddr>().unwrap()
        );
    }
}
