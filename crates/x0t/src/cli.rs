//! Command-line syntax.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "x0t",
    version,
    about = "x0tta6bl4: a self-healing, post-quantum-secure mesh network",
    propagate_version = true
)]
pub struct Cli {
    /// More log output on stderr (-v info, -vv debug). `X0T_LOG` overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create this node's identity (ECDSA P-256 TLS key + ML-DSA-65 key) in a state directory.
    Init(InitArgs),
    /// Show, sign with, or verify with the node identity.
    #[command(subcommand)]
    Identity(IdentityCommand),
    /// Mesh certificate authority: create it, invite nodes, revoke nodes.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Join a mesh with an invitation token from `x0t ca invite`.
    Join(JoinArgs),
    /// Run the daemon.
    Up(UpArgs),
    /// Show the running daemon's node and health (through its HTTP API).
    Status(crate::ctl::ApiArgs),
    /// List the running daemon's configured and linked neighbours.
    Peers(crate::ctl::ApiArgs),
    /// List the running daemon's links with RTT, loss and quality.
    Links(crate::ctl::ApiArgs),
    /// Show the running daemon's forwarding table.
    Routes(crate::ctl::ApiArgs),
    /// Show the mesh topology as the running daemon knows it.
    Topology(crate::ctl::ApiArgs),
    /// List the running daemon's self-healing incidents, newest first.
    Incidents(crate::ctl::ApiArgs),
    /// Inject faults into the running daemon's traffic (dangerous; only when its configuration
    /// sets danger_fault_injection.enabled = true).
    #[command(subcommand)]
    Fault(crate::fault::FaultCommand),
    /// Check or export the self-healing audit log (read-only; the daemon may be running).
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Measure figures (results as JSON under bench-results/).
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Simulate a mesh running the real routing core (deterministic, virtual time).
    Sim(x0_bench::sim::SimArgs),
    /// Real-kernel lab: network namespaces joined by veth links (needs root; docs/lab.md).
    #[command(subcommand)]
    Lab(x0_bench::lab::LabCommand),
    /// Watch a real mesh form, lose a relay and heal itself (no root needed).
    Demo(x0_bench::demo::DemoArgs),
}

/// The state directory of a command that reads or changes an existing one.
#[derive(Debug, Args)]
pub struct StateDirArg {
    /// State directory (made by `x0t init`, `x0t ca init` or `x0t join`; must exist).
    #[arg(long, value_name = "DIR")]
    pub state_dir: PathBuf,
}

/// The state directory of a command that makes one (`init`, `ca init`, `join`).
#[derive(Debug, Args)]
pub struct NewStateDirArg {
    /// State directory (created 0700 if missing).
    #[arg(long, value_name = "DIR")]
    pub state_dir: PathBuf,
}

/// Where the knowledge base is: a state directory, or the daemon's configuration file.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct KnowledgeArgs {
    /// State directory holding `state.db`.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// The daemon's configuration file (its `state_dir`).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check the hash chain and every ML-DSA-65 signature (with this node's key); names the
    /// first bad entry and exits 1 if there is one.
    Verify {
        #[command(flatten)]
        at: KnowledgeArgs,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write every entry as one JSON object per line on stdout (enough to verify without x0t).
    Export {
        #[command(flatten)]
        at: KnowledgeArgs,
    },
}

#[derive(Debug, Args)]
pub struct InitArgs {
    #[command(flatten)]
    pub state: NewStateDirArg,
    /// Trust domain of the mesh, if already known (fixes the overlay address before joining).
    #[arg(long, value_name = "DOMAIN")]
    pub trust_domain: Option<String>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum IdentityCommand {
    /// Print node ID, overlay address, SPIFFE ID, SVID, trust bundle and ML-DSA-65 public key.
    Show {
        #[command(flatten)]
        state: StateDirArg,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Sign a file with the node's ML-DSA-65 key (FIPS 204, pure, empty context); prints base64.
    Sign {
        #[command(flatten)]
        state: StateDirArg,
        /// File to sign.
        file: PathBuf,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Verify an ML-DSA-65 signature over a file (exit 0 valid, 1 invalid).
    Verify {
        /// File that was signed.
        file: PathBuf,
        /// Base64 signature (as printed by `identity sign`).
        #[arg(long)]
        signature: String,
        /// Base64 raw ML-DSA-65 public key of the signer.
        #[arg(
            long,
            conflicts_with = "state_dir",
            required_unless_present = "state_dir"
        )]
        public_key: Option<String>,
        /// Use this state directory's own public key instead.
        #[arg(long, value_name = "DIR")]
        state_dir: Option<PathBuf>,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Create the mesh CA (ECDSA P-256 root) in a state directory.
    Init {
        /// SPIFFE trust domain of the mesh, e.g. `mesh.example.org`.
        #[arg(long, value_name = "DOMAIN")]
        trust_domain: String,
        #[command(flatten)]
        state: NewStateDirArg,
        /// Lifetime of issued SVIDs.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "1h")]
        svid_ttl: Duration,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Make a one-time invitation token.
    Invite {
        #[command(flatten)]
        state: StateDirArg,
        /// How long the token stays valid.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "24h")]
        ttl: Duration,
        /// Address joining nodes dial (default: the address the CA node's daemon advertises).
        #[arg(long, value_name = "HOST:PORT")]
        bootstrap: Option<String>,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a node: the CA node refuses its links at once; others learn it by flooding.
    Revoke {
        /// The node ID (32 hex digits).
        node_id: String,
        #[command(flatten)]
        state: StateDirArg,
        /// Why (kept in the CA's records).
        #[arg(long, default_value = "revoked by operator")]
        reason: String,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct JoinArgs {
    /// Invitation token (`x0t2.…`), or `-` to read it from stdin.
    pub token: String,
    #[command(flatten)]
    pub state: NewStateDirArg,
    /// Print as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Configuration file (TOML; see docs/configuration.md).
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Real link setups on loopback with the project's link code: QUIC + TLS 1.3
    /// (X25519MLKEM768) + mutual SVIDs + ML-DSA-65 proof of possession.
    Handshake {
        /// Link setups to time.
        #[arg(long, default_value_t = 1000)]
        count: usize,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
        /// Directory for the JSON result file.
        #[arg(long, default_value = "bench-results")]
        out: PathBuf,
    },
    /// Overlay TCP throughput (iperf3) and ping RTT over 1 and 3 hops in network namespaces:
    /// raw veth, wireguard-go, Nebula, Yggdrasil and x0t side by side (needs root).
    Throughput(x0_bench::throughput::ThroughputArgs),
    /// Throughput cost of the x0-telemetry eBPF programs: iperf3 over one veth between two
    /// namespaces, alternating runs without and with the programs attached (needs root).
    EbpfOverhead(x0_bench::ebpf::EbpfOverheadArgs),
    /// Outage and loss of a 1000 packet/s UDP stream through the overlay when its relay
    /// fails (veth down, daemon killed), in a 4-node ring of namespaces (needs root).
    Failover(x0_bench::failover::FailoverArgs),
    /// Self-healing in the lab (real daemons in a ring of namespaces, needs root) or, with
    /// --sim, in the simulator: detect and recover times per fault scenario.
    Heal(x0_bench::heal::HealArgs),
    /// Cost of `/metrics` scraped every 100 ms on a running 3-node mesh on loopback: per-scrape
    /// latency and the daemon's CPU with and without scraping.
    MetricsScrape(x0_bench::scrape::ScrapeArgs),
    /// Sends a paced stream of sequenced UDP packets (used by `bench failover`).
    #[command(hide = true)]
    UdpSource(x0_bench::failover::UdpSourceArgs),
    /// Receives such a stream and writes a summary (used by `bench failover`).
    #[command(hide = true)]
    UdpSink(x0_bench::failover::UdpSinkArgs),
}
