//! The daemon's configuration file (TOML).
//!
//! Every key is documented in `docs/configuration.md`. Unknown keys and out-of-range values are
//! refused at start with the key's dotted name and what is allowed; `x0t up` then exits 64
//! (EX_USAGE).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use x0_identity::NodeId;
use x0_link::{KxPolicy, LinkConfig};
use x0_routing::RouterConfig;

/// A configuration error, naming the key.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {message}")]
pub struct ConfigError {
    /// The file.
    pub file: String,
    /// What is wrong, starting with the key.
    pub message: String,
}

/// `x0t up` configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// State directory (keys, SVID, CA). Relative paths are relative to the config file.
    pub state_dir: PathBuf,
    /// UDP address the link endpoint listens on.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Address other nodes should use to reach this one (put into invitations). Defaults to
    /// `listen` when that is a specific address.
    #[serde(default)]
    pub advertise: Option<String>,
    /// `text` or `json` log lines on stderr.
    #[serde(default)]
    pub log_format: LogFormat,
    /// Neighbours to dial and keep linked.
    #[serde(default)]
    pub peers: Vec<PeerConfig>,
    /// Link settings.
    #[serde(default)]
    pub link: LinkSection,
    /// SVID settings.
    #[serde(default)]
    pub svid: SvidSection,
    /// Routing settings.
    #[serde(default)]
    pub routing: RoutingSection,
    /// Data plane settings.
    #[serde(default)]
    pub dataplane: DataplaneSection,
    /// HTTP API and metrics settings.
    #[serde(default)]
    pub api: ApiSection,
    /// eBPF telemetry settings.
    #[serde(default)]
    pub ebpf: EbpfSection,
    /// Self-healing loop settings.
    #[serde(default)]
    pub heal: HealSection,
    /// Fault injection (dangerous, off by default).
    #[serde(default)]
    pub danger_fault_injection: FaultInjectionSection,
}

/// `[danger_fault_injection]`: let this node damage its own traffic on request (lab benchmarks
/// of self-healing; docs/heal.md). Never in production.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FaultInjectionSection {
    /// Accept faults at all (from here and from `POST /v1/faults`).
    pub enabled: bool,
    /// Faults in force from the start, as `POST /v1/faults` bodies.
    pub faults: Vec<crate::fault::FaultSpec>,
}

/// `[heal]`: the self-healing loop (docs/heal.md). Everything but `enabled` is
/// [`x0_heal::HealConfig`], passed through and checked by [`x0_heal::HealConfig::validate`].
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealSection {
    /// Run the loop at all.
    pub enabled: bool,
    /// `act` (the default) or `observe` (record and publish what it would do; do nothing).
    pub mode: x0_heal::Mode,
    /// `[heal.sampling]`: monitor pacing.
    pub sampling: x0_heal::config::SamplingConfig,
    /// `[heal.detect]`: detector parameters.
    pub detect: x0_heal::config::DetectConfig,
    /// `[heal.incidents]`: incident correlation and health.
    pub incidents: x0_heal::config::IncidentConfig,
    /// `[heal.plan]`: planner safety and pacing.
    pub plan: x0_heal::config::PlanConfig,
    /// `[heal.probe]`: the end-to-end prober.
    pub probe: x0_heal::config::ProbeConfig,
}

impl Default for HealSection {
    fn default() -> Self {
        let d = x0_heal::HealConfig::default();
        Self {
            enabled: true,
            mode: d.mode,
            sampling: d.sampling,
            detect: d.detect,
            incidents: d.incidents,
            plan: d.plan,
            probe: d.probe,
        }
    }
}

impl HealSection {
    /// The loop's settings.
    pub fn heal_config(&self) -> x0_heal::HealConfig {
        x0_heal::HealConfig {
            mode: self.mode,
            sampling: self.sampling.clone(),
            detect: self.detect.clone(),
            incidents: self.incidents.clone(),
            plan: self.plan.clone(),
            probe: self.probe.clone(),
        }
    }
}

/// `[ebpf]`: the kernel-side counters (docs/ebpf.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EbpfSection {
    /// Attach the programs (without the privileges the daemon says so once and runs on).
    pub enabled: bool,
    /// Underlay interfaces to count on. Empty: those holding the `listen` address, or, when
    /// listening on all addresses, every interface that is up with an address (not loopback,
    /// not the TUN device).
    pub interfaces: Vec<String>,
    /// Where the underlay counter hooks in: `tc` (TCX ingress and egress, the default),
    /// `xdp-generic` or `xdp-native` (receive side only).
    pub hook: EbpfHook,
    /// Attach the machine-wide tracepoints (kernel drops by reason, TCP retransmits, TCP state
    /// changes).
    pub tracepoints: bool,
}

impl Default for EbpfSection {
    fn default() -> Self {
        Self {
            enabled: true,
            interfaces: Vec::new(),
            hook: EbpfHook::Tc,
            tracepoints: true,
        }
    }
}

/// `ebpf.hook`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EbpfHook {
    /// TCX ingress and egress.
    Tc,
    /// XDP in generic (skb) mode.
    XdpGeneric,
    /// XDP in native (driver) mode.
    XdpNative,
}

/// Default address of the HTTP API.
pub const DEFAULT_API_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 5471);

/// `[api]`: the HTTP API (`/health`, `/metrics`, `/v1/…`; docs/api.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiSection {
    /// Serve the API at all.
    pub enabled: bool,
    /// TCP address to listen on (default `127.0.0.1:5471`). A non-loopback address needs
    /// `token_file`.
    pub listen: Option<SocketAddr>,
    /// File holding the bearer token every request but `/health` must carry (relative paths
    /// are relative to `state_dir`). Created with a random token, mode 0600, if missing.
    /// Unset: no authentication, allowed only on a loopback address.
    pub token_file: Option<PathBuf>,
}

impl Default for ApiSection {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: None,
            token_file: None,
        }
    }
}

impl ApiSection {
    /// The address to listen on.
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen.unwrap_or(DEFAULT_API_LISTEN)
    }
}

/// `[dataplane]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataplaneSection {
    /// Open a TUN device with the node's overlay address (otherwise the node only relays).
    pub tun: bool,
    /// The TUN device's name (1–15 characters: letters, digits, `-`, `_`, `.`).
    pub tun_name: String,
    /// Overlay MTU, bytes (1,280–9,000).
    pub mtu: u16,
    /// UDP port of the data socket, on the `listen` address (0: any free port; the port is
    /// announced to each neighbour over the link).
    pub port: u16,
    /// Redundant mode: packets whose DSCP is in this list (e.g. `[46]`, EF) are sent twice,
    /// over two node-disjoint paths, and de-duplicated at the receiver. Empty: off.
    pub redundant_dscp: Vec<u8>,
    /// Redundant mode for flows by port: packets whose UDP or TCP source or destination port
    /// is listed (e.g. `[5060, 5004]`).
    pub redundant_ports: Vec<u16>,
    /// Redundant mode for flows by address: packets whose destination lies in one of these
    /// prefixes (`addr/len`, IPv6 or IPv4 overlay addresses).
    pub redundant_prefixes: Vec<String>,
    /// Kernel offloads: TUN segmentation/coalescing (virtio-net header) and UDP GSO/GRO on
    /// the data socket. Off: one packet per syscall (for debugging, or old kernels).
    pub offload: bool,
    /// How traffic to a destination uses the k disjoint paths: `primary` (every flow on the
    /// primary path, with fast reroute) or `balanced` (flows spread by flow hash over the
    /// paths, weighted by quality).
    pub multipath: Multipath,
    /// Optional IPv4 overlay range (`a.b.c.d/len`, len 8–24), the same on every node: the
    /// node's IPv4 address is derived from its node ID. Unset: IPv6 only.
    pub ipv4: Option<String>,
    /// Userspace mode (with `tun = false`): a loopback UDP address where the daemon exchanges
    /// raw IP packets with a local application in place of a TUN device (needs no root; used
    /// by `x0t demo`). Unset: no local packets without TUN (the node only relays).
    pub app_socket: Option<SocketAddr>,
}

/// Parses `addr/len` (IPv6 or IPv4).
pub fn parse_prefix(text: &str) -> Result<(std::net::IpAddr, u8), String> {
    let (addr, len) = text
        .split_once('/')
        .ok_or_else(|| format!("expected addr/len, got {text:?}"))?;
    let addr: std::net::IpAddr = addr
        .parse()
        .map_err(|_| format!("{addr:?} is not an IP address"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let len: u8 = len
        .parse()
        .ok()
        .filter(|l| *l <= max)
        .ok_or_else(|| format!("prefix length must be 0 to {max}, got {len:?}"))?;
    Ok((addr, len))
}

impl DataplaneSection {
    /// The redundant-mode prefixes (validated at load).
    pub fn redundant_prefixes(&self) -> Vec<(std::net::IpAddr, u8)> {
        self.redundant_prefixes
            .iter()
            .filter_map(|t| parse_prefix(t).ok())
            .collect()
    }

    /// The IPv4 overlay range, if configured (validated at load).
    pub fn ipv4_range(&self) -> Option<x0_identity::Ipv4Overlay> {
        self.ipv4
            .as_deref()
            .and_then(|t| x0_identity::Ipv4Overlay::parse(t).ok())
    }
}

/// `dataplane.multipath`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Multipath {
    /// Every flow on the primary path, with fast reroute onto the backup.
    #[default]
    Primary,
    /// Flows spread over the k disjoint paths by flow hash, weighted by path quality.
    Balanced,
}

impl Default for DataplaneSection {
    fn default() -> Self {
        Self {
            tun: true,
            tun_name: "x0t0".into(),
            mtu: 1352,
            port: 0,
            redundant_dscp: Vec::new(),
            redundant_ports: Vec::new(),
            redundant_prefixes: Vec::new(),
            offload: true,
            multipath: Multipath::Primary,
            ipv4: None,
            app_socket: None,
        }
    }
}

/// `[routing]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingSection {
    /// Probe interval on a link carrying traffic, milliseconds (10–10,000).
    pub probe_interval_ms: u64,
    /// Longest probe interval on an idle link, milliseconds (≥ `probe_interval_ms`).
    pub probe_interval_idle_ms: u64,
    /// Missed probe intervals after which a silent neighbour is declared down (2–50).
    pub detect_multiplier: u8,
    /// Node-disjoint paths computed per destination (1–8).
    pub k_paths: usize,
    /// Periodic re-flood of our unchanged advert, seconds (60–86,399 with the 24 h lifetime).
    pub advert_refresh_s: u64,
    /// Delay between a topology change and the route recomputation, milliseconds (0–1,000).
    pub spf_delay_ms: u64,
    /// How long forwarding keeps the pre-failure table with backup paths after a local link
    /// failure, milliseconds (0–60,000).
    pub frr_hold_ms: u64,
    /// Most origins the link-state database holds, this node included (64–1,000,000); also the
    /// bound of the advert verifier's credential cache.
    pub max_origins: usize,
    /// Advert signature verifications each neighbour may cause per second (10–100,000).
    pub verify_rate_per_s: u32,
    /// Most verifications a neighbour's budget holds, e.g. for a database exchange
    /// (1–1,000,000).
    pub verify_burst: u32,
}

impl Default for RoutingSection {
    fn default() -> Self {
        let d = RouterConfig::default();
        Self {
            probe_interval_ms: d.probe_interval.as_millis() as u64,
            probe_interval_idle_ms: d.probe_interval_idle.as_millis() as u64,
            detect_multiplier: d.detect_multiplier,
            k_paths: d.k_paths,
            advert_refresh_s: d.advert_refresh.as_secs(),
            spf_delay_ms: d.spf_delay.as_millis() as u64,
            frr_hold_ms: d.frr_hold.as_millis() as u64,
            max_origins: d.max_origins,
            verify_rate_per_s: d.verify_rate_per_s,
            verify_burst: d.verify_burst,
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// A static neighbour.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// Its link address (`host:port`).
    pub addr: String,
    /// Its node ID; if set, a different node answering there is refused.
    #[serde(default)]
    pub node_id: Option<NodeId>,
}

/// `[link]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LinkSection {
    /// Close a link after this many milliseconds without packets.
    pub idle_timeout_ms: u64,
    /// Keep-alive interval, milliseconds.
    pub keep_alive_ms: u64,
    /// Handshake plus proof-of-possession timeout, milliseconds.
    pub handshake_timeout_ms: u64,
    /// Initial UDP payload size, 1200–65527.
    pub initial_mtu: u16,
    /// Probe for larger path MTUs.
    pub mtu_discovery: bool,
    /// Handshakes in progress above which unvalidated clients get a stateless retry.
    pub retry_threshold: usize,
    /// First redial delay after a failed dial, milliseconds (doubles up to `redial_max_ms`).
    pub redial_min_ms: u64,
    /// Longest redial delay, milliseconds.
    pub redial_max_ms: u64,
    /// DANGEROUS: also accept classical X25519/P-256 key exchange from peers without
    /// X25519MLKEM768. Traffic with such peers loses its post-quantum protection.
    pub allow_classical_key_exchange_dangerous: bool,
}

impl Default for LinkSection {
    fn default() -> Self {
        let d = LinkConfig::default();
        Self {
            idle_timeout_ms: d.idle_timeout.as_millis() as u64,
            keep_alive_ms: d.keep_alive.as_millis() as u64,
            handshake_timeout_ms: d.handshake_timeout.as_millis() as u64,
            initial_mtu: d.initial_mtu,
            mtu_discovery: d.mtu_discovery,
            retry_threshold: d.retry_threshold,
            redial_min_ms: 200,
            redial_max_ms: 30_000,
            allow_classical_key_exchange_dangerous: false,
        }
    }
}

/// `[svid]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SvidSection {
    /// Renew when this fraction of the SVID's lifetime has passed (0.1–0.9).
    pub renew_at_fraction: f64,
}

impl Default for SvidSection {
    fn default() -> Self {
        Self {
            renew_at_fraction: 0.5,
        }
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 7101))
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let file = path.display().to_string();
        let err = |message: String| ConfigError {
            file: file.clone(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read: {e}")))?;
        let mut config = Self::parse(&text).map_err(err)?;
        if config.state_dir.is_relative() {
            let base = path.parent().unwrap_or(Path::new("."));
            config.state_dir = base.join(&config.state_dir);
        }
        if let Some(t) = &config.api.token_file
            && t.is_relative()
        {
            config.api.token_file = Some(config.state_dir.join(t));
        }
        Ok(config)
    }

    /// Parses and validates TOML text.
    pub fn parse(text: &str) -> Result<Self, String> {
        let de = toml::Deserializer::parse(text).map_err(|e| e.to_string())?;
        let config: Self = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let msg = inner.message().to_string();
            if path.is_empty() || path == "." {
                msg
            } else {
                format!("key `{path}`: {msg}")
            }
        })?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        let l = &self.link;
        let range = |key: &str, v: u64, lo: u64, hi: u64| {
            if (lo..=hi).contains(&v) {
                Ok(())
            } else {
                Err(format!(
                    "key `{key}`: must be between {lo} and {hi}, got {v}"
                ))
            }
        };
        range("link.idle_timeout_ms", l.idle_timeout_ms, 1_000, 600_000)?;
        range("link.keep_alive_ms", l.keep_alive_ms, 100, 60_000)?;
        if l.keep_alive_ms >= l.idle_timeout_ms {
            return Err("key `link.keep_alive_ms`: must be less than link.idle_timeout_ms".into());
        }
        range(
            "link.handshake_timeout_ms",
            l.handshake_timeout_ms,
            100,
            60_000,
        )?;
        range("link.initial_mtu", u64::from(l.initial_mtu), 1200, 65_527)?;
        range(
            "link.retry_threshold",
            l.retry_threshold as u64,
            0,
            1_000_000,
        )?;
        range("link.redial_min_ms", l.redial_min_ms, 10, 600_000)?;
        range(
            "link.redial_max_ms",
            l.redial_max_ms,
            l.redial_min_ms,
            3_600_000,
        )?;
        let r = &self.routing;
        range("routing.probe_interval_ms", r.probe_interval_ms, 10, 10_000)?;
        range(
            "routing.probe_interval_idle_ms",
            r.probe_interval_idle_ms,
            r.probe_interval_ms,
            60_000,
        )?;
        range(
            "routing.detect_multiplier",
            u64::from(r.detect_multiplier),
            2,
            50,
        )?;
        range("routing.k_paths", r.k_paths as u64, 1, 8)?;
        range("routing.advert_refresh_s", r.advert_refresh_s, 60, 86_399)?;
        range("routing.spf_delay_ms", r.spf_delay_ms, 0, 1_000)?;
        range("routing.frr_hold_ms", r.frr_hold_ms, 0, 60_000)?;
        range("routing.max_origins", r.max_origins as u64, 64, 1_000_000)?;
        range(
            "routing.verify_rate_per_s",
            u64::from(r.verify_rate_per_s),
            10,
            100_000,
        )?;
        range(
            "routing.verify_burst",
            u64::from(r.verify_burst),
            1,
            1_000_000,
        )?;
        self.router_config()
            .validate()
            .map_err(|e| format!("key `routing`: {e}"))?;
        let d = &self.dataplane;
        range("dataplane.mtu", u64::from(d.mtu), 1280, 9000)?;
        let name_ok = (1..=15).contains(&d.tun_name.len())
            && d.tun_name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        if !name_ok {
            return Err(format!(
                "key `dataplane.tun_name`: must be 1 to 15 letters, digits, '-', '_' or '.', got {:?}",
                d.tun_name
            ));
        }
        if let Some(bad) = d.redundant_dscp.iter().find(|v| **v > 63) {
            return Err(format!(
                "key `dataplane.redundant_dscp`: DSCP values are 0 to 63, got {bad}"
            ));
        }
        for (i, text) in d.redundant_prefixes.iter().enumerate() {
            parse_prefix(text)
                .map_err(|e| format!("key `dataplane.redundant_prefixes[{i}]`: {e}"))?;
        }
        if let Some(a) = d.app_socket {
            if !a.ip().is_loopback() {
                return Err(format!(
                    "key `dataplane.app_socket`: must be a loopback address (it carries the \
                     node's plaintext packets), got {a}"
                ));
            }
            if d.tun {
                return Err(
                    "key `dataplane.app_socket`: needs `dataplane.tun = false` (one packet port \
                     per node)"
                        .into(),
                );
            }
        }
        if let Some(text) = &d.ipv4 {
            x0_identity::Ipv4Overlay::parse(text)
                .map_err(|e| format!("key `dataplane.ipv4`: {e}"))?;
        }
        let f = self.svid.renew_at_fraction;
        if !(0.1..=0.9).contains(&f) {
            return Err(format!(
                "key `svid.renew_at_fraction`: must be between 0.1 and 0.9, got {f}"
            ));
        }
        for (i, p) in self.peers.iter().enumerate() {
            if p.addr
                .rsplit_once(':')
                .and_then(|(_, port)| port.parse::<u16>().ok())
                .is_none()
            {
                return Err(format!(
                    "key `peers[{i}].addr`: must be host:port, got {:?}",
                    p.addr
                ));
            }
        }
        let api = &self.api;
        if api.enabled && !api.listen_addr().ip().is_loopback() {
            match &api.token_file {
                None => {
                    return Err(format!(
                        "key `api.token_file`: required when `api.listen` ({}) is not a loopback \
                         address; without it the API would be open to the network",
                        api.listen_addr()
                    ));
                }
                Some(p) if p.as_os_str().is_empty() => {
                    return Err("key `api.token_file`: must not be empty".into());
                }
                Some(_) => {}
            }
        }
        self.heal
            .heal_config()
            .validate()
            .map_err(|e| format!("key `heal.{}`: must be {}", e.key, e.allowed))?;
        let fi = &self.danger_fault_injection;
        if !fi.enabled && !fi.faults.is_empty() {
            return Err(
                "key `danger_fault_injection.faults`: needs danger_fault_injection.enabled = true"
                    .into(),
            );
        }
        if fi.faults.len() > crate::fault::MAX_FAULTS {
            return Err(format!(
                "key `danger_fault_injection.faults`: at most {} faults, got {}",
                crate::fault::MAX_FAULTS,
                fi.faults.len()
            ));
        }
        for (i, f) in fi.faults.iter().enumerate() {
            crate::fault::Fault::try_from(f).map_err(|e| {
                format!(
                    "key `danger_fault_injection.faults[{i}].{}`: {}",
                    e.field, e.message
                )
            })?;
        }
        if let Some(a) = &self.advertise
            && a.rsplit_once(':')
                .and_then(|(_, port)| port.parse::<u16>().ok())
                .is_none()
        {
            return Err(format!("key `advertise`: must be host:port, got {a:?}"));
        }
        Ok(())
    }

    /// The routing core's settings.
    pub fn router_config(&self) -> RouterConfig {
        let r = &self.routing;
        RouterConfig {
            probe_interval: Duration::from_millis(r.probe_interval_ms),
            probe_interval_idle: Duration::from_millis(r.probe_interval_idle_ms),
            detect_multiplier: r.detect_multiplier,
            k_paths: r.k_paths,
            advert_refresh: Duration::from_secs(r.advert_refresh_s),
            spf_delay: Duration::from_millis(r.spf_delay_ms),
            frr_hold: Duration::from_millis(r.frr_hold_ms),
            max_origins: r.max_origins,
            verify_rate_per_s: r.verify_rate_per_s,
            verify_burst: r.verify_burst,
            ..RouterConfig::default()
        }
    }

    /// The link endpoint settings.
    pub fn link_config(&self) -> LinkConfig {
        let l = &self.link;
        LinkConfig {
            kx_policy: if l.allow_classical_key_exchange_dangerous {
                KxPolicy::AllowClassicalDangerous
            } else {
                KxPolicy::PostQuantumOnly
            },
            idle_timeout: Duration::from_millis(l.idle_timeout_ms),
            keep_alive: Duration::from_millis(l.keep_alive_ms),
            handshake_timeout: Duration::from_millis(l.handshake_timeout_ms),
            initial_mtu: l.initial_mtu,
            mtu_discovery: l.mtu_discovery,
            retry_threshold: l.retry_threshold,
            impairment: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_config_gets_defaults() {
        let c = Config::parse("state_dir = \"/tmp/x\"\n").unwrap();
        assert_eq!(c.listen, default_listen());
        assert!(!c.link.allow_classical_key_exchange_dangerous);
        assert_eq!(c.link_config().kx_policy, KxPolicy::PostQuantumOnly);
        let r = c.router_config();
        assert_eq!(r.probe_interval, Duration::from_millis(100));
        assert_eq!(r.detect_multiplier, 3);
        assert!(r.validate().is_ok());
    }

    #[test]
    fn routing_admission_limits_are_checked_and_reach_the_router() {
        let c = Config::parse(
            "state_dir = \"/x\"\n[routing]\nmax_origins = 500\nverify_rate_per_s = 50\n\
             verify_burst = 70\n",
        )
        .unwrap();
        let r = c.router_config();
        assert_eq!(
            (r.max_origins, r.verify_rate_per_s, r.verify_burst),
            (500, 50, 70)
        );
        for (text, key) in [
            ("max_origins = 10", "routing.max_origins"),
            ("verify_rate_per_s = 0", "routing.verify_rate_per_s"),
            ("verify_burst = 0", "routing.verify_burst"),
        ] {
            let e = Config::parse(&format!("state_dir = \"/x\"\n[routing]\n{text}\n")).unwrap_err();
            assert!(e.contains(key), "{text}: {e}");
        }
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = Config::parse("state_dir = \"/x\"\n[link]\nfoo = 1\n").unwrap_err();
        assert!(e.contains("link") && e.contains("foo"), "{e}");
        let e = Config::parse("state_dir = \"/x\"\nlisten_addr = \"1.2.3.4:5\"\n").unwrap_err();
        assert!(e.contains("listen_addr"), "{e}");
    }

    #[test]
    fn bad_values_are_named_with_what_is_allowed() {
        let e = Config::parse("state_dir = \"/x\"\n[link]\ninitial_mtu = 100\n").unwrap_err();
        assert!(e.contains("link.initial_mtu") && e.contains("1200"), "{e}");
        let e = Config::parse("state_dir = \"/x\"\nlisten = \"nope\"\n").unwrap_err();
        assert!(e.contains("listen"), "{e}");
        let e = Config::parse("state_dir = \"/x\"\n[[peers]]\naddr = \"x\"\n").unwrap_err();
        assert!(e.contains("peers[0].addr"), "{e}");
        let e = Config::parse("state_dir = \"/x\"\n[[peers]]\naddr = \"a:1\"\nnode_id = \"zz\"\n")
            .unwrap_err();
        assert!(e.contains("peers[0].node_id"), "{e}");
        let e = Config::parse("state_dir = \"/x\"\n[svid]\nrenew_at_fraction = 2.0\n").unwrap_err();
        assert!(e.contains("svid.renew_at_fraction"), "{e}");
        let e =
            Config::parse("state_dir = \"/x\"\n[routing]\ndetect_multiplier = 1\n").unwrap_err();
        assert!(
            e.contains("routing.detect_multiplier") && e.contains("2"),
            "{e}"
        );
        let e = Config::parse(
            "state_dir = \"/x\"\n[routing]\nprobe_interval_ms = 200\nprobe_interval_idle_ms = 100\n",
        )
        .unwrap_err();
        assert!(e.contains("routing.probe_interval_idle_ms"), "{e}");
        let e = Config::parse("state_dir = \"/x\"\n[dataplane]\nmtu = 100\n").unwrap_err();
        assert!(e.contains("dataplane.mtu") && e.contains("1280"), "{e}");
        let e = Config::parse("state_dir = \"/x\"\n[dataplane]\ntun_name = \"a b\"\n").unwrap_err();
        assert!(e.contains("dataplane.tun_name"), "{e}");
        let e =
            Config::parse("state_dir = \"/x\"\n[dataplane]\nipv4 = \"10.1.2.0/16\"\n").unwrap_err();
        assert!(
            e.contains("dataplane.ipv4") && e.contains("host bits"),
            "{e}"
        );
        let e = Config::parse(
            "state_dir = \"/x\"\n[dataplane]\nredundant_prefixes = [\"fd00::/64\", \"10.0.0.0/33\"]\n",
        )
        .unwrap_err();
        assert!(
            e.contains("dataplane.redundant_prefixes[1]") && e.contains("0 to 32"),
            "{e}"
        );
        let e =
            Config::parse("state_dir = \"/x\"\n[dataplane]\nmultipath = \"spray\"\n").unwrap_err();
        assert!(e.contains("multipath") && e.contains("balanced"), "{e}");
        let e = Config::parse("listen = \"0.0.0.0:1\"\n").unwrap_err();
        assert!(e.contains("state_dir"), "{e}");
    }

    #[test]
    fn the_api_is_on_loopback_by_default_and_needs_a_token_elsewhere() {
        let c = Config::parse("state_dir = \"/x\"\n").unwrap();
        assert!(c.api.enabled);
        assert_eq!(c.api.listen_addr(), DEFAULT_API_LISTEN);
        assert!(c.api.token_file.is_none());
        for addr in ["0.0.0.0:5471", "[::]:5471", "192.0.2.1:80"] {
            let e = Config::parse(&format!("state_dir = \"/x\"\n[api]\nlisten = \"{addr}\"\n"))
                .unwrap_err();
            assert!(
                e.contains("api.token_file") && e.contains("loopback"),
                "{e}"
            );
        }
        let c = Config::parse(
            "state_dir = \"/x\"\n[api]\nlisten = \"0.0.0.0:5471\"\ntoken_file = \"api-token\"\n",
        )
        .unwrap();
        assert_eq!(c.api.token_file.as_deref(), Some(Path::new("api-token")));
        // Disabled, it needs nothing.
        Config::parse("state_dir = \"/x\"\n[api]\nenabled = false\nlisten = \"0.0.0.0:1\"\n")
            .unwrap();
        let e = Config::parse("state_dir = \"/x\"\n[api]\nport = 1\n").unwrap_err();
        assert!(e.contains("port"), "{e}");
        let e = Config::parse("state_dir = \"/x\"\n[api]\nlisten = \"nope\"\n").unwrap_err();
        assert!(e.contains("api.listen"), "{e}");
    }

    #[test]
    fn fault_injection_is_off_by_default_and_bad_faults_are_named() {
        let c = Config::parse("state_dir = \"/x\"\n").unwrap();
        assert!(!c.danger_fault_injection.enabled);
        assert!(c.link_config().impairment.is_none());
        let c = Config::parse(
            "state_dir = \"/x\"\n[danger_fault_injection]\nenabled = true\n\
             faults = [{ kind = \"delay\", delay_ms = 200 }, { kind = \"blackhole\" }]\n",
        )
        .unwrap();
        assert_eq!(c.danger_fault_injection.faults.len(), 2);
        let e = Config::parse(
            "state_dir = \"/x\"\n[danger_fault_injection]\nenabled = true\n\
             faults = [{ kind = \"flap\", period_ms = 5 }]\n",
        )
        .unwrap_err();
        assert!(
            e.contains("danger_fault_injection.faults[0].period_ms") && e.contains("100"),
            "{e}"
        );
        let e = Config::parse(
            "state_dir = \"/x\"\n[danger_fault_injection]\nfaults = [{ kind = \"blackhole\" }]\n",
        )
        .unwrap_err();
        assert!(e.contains("enabled = true"), "{e}");
        let many = vec!["{ kind = \"blackhole\" }"; crate::fault::MAX_FAULTS + 1].join(", ");
        let e = Config::parse(&format!(
            "state_dir = \"/x\"\n[danger_fault_injection]\nenabled = true\nfaults = [{many}]\n"
        ))
        .unwrap_err();
        assert!(
            e.contains("danger_fault_injection.faults") && e.contains("at most 64"),
            "{e}"
        );
    }

    #[test]
    fn the_heal_section_has_defaults_and_names_bad_keys() {
        let c = Config::parse("state_dir = \"/x\"\n").unwrap();
        assert!(c.heal.enabled);
        assert_eq!(c.heal.mode, x0_heal::Mode::Act);
        assert_eq!(c.heal.heal_config(), x0_heal::HealConfig::default());
        let c = Config::parse(
            "state_dir = \"/x\"\n[heal]\nmode = \"observe\"\n[heal.plan]\naction_burst = 2\n",
        )
        .unwrap();
        assert_eq!(c.heal.heal_config().mode, x0_heal::Mode::Observe);
        assert_eq!(c.heal.heal_config().plan.action_burst, 2);
        let c = Config::parse("state_dir = \"/x\"\n[heal]\nenabled = false\n").unwrap();
        assert!(!c.heal.enabled);
        let e = Config::parse("state_dir = \"/x\"\n[heal]\nmode = \"fix\"\n").unwrap_err();
        assert!(e.contains("heal.mode") && e.contains("observe"), "{e}");
        let e = Config::parse("state_dir = \"/x\"\n[heal.detect]\nbogus = 1\n").unwrap_err();
        assert!(e.contains("heal.detect") && e.contains("bogus"), "{e}");
        let e =
            Config::parse("state_dir = \"/x\"\n[heal.detect]\nz_threshold = 0.5\n").unwrap_err();
        assert!(
            e.contains("heal.detect.z_threshold") && e.contains("at least 1"),
            "{e}"
        );
        let e = Config::parse("state_dir = \"/x\"\n[heal.sampling]\ninterval_min_ms = 1\n")
            .unwrap_err();
        assert!(e.contains("heal.sampling.interval_min_ms"), "{e}");
    }

    #[test]
    fn a_relative_token_file_is_under_the_state_dir() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.toml");
        std::fs::write(
            &path,
            "state_dir = \"state\"\n[api]\ntoken_file = \"api-token\"\n",
        )
        .unwrap();
        let c = Config::load(&path).unwrap();
        assert_eq!(
            c.api.token_file.unwrap(),
            dir.path().join("state").join("api-token")
        );
    }
}
