//! Prometheus metrics, served at `/metrics` by the HTTP API ([`crate::api`]).
//!
//! One [`MetricsRegistry`] per daemon (prometheus-client, prefix `x0t_`). Two kinds of
//! metric live in it:
//!
//! * **Owned metrics** (counters, gauges, histograms) that a component updates as things happen:
//!   link setup times and closes, SVID renewals, `x0t_ebpf_enabled` ([`DaemonMetrics`]), route
//!   computations (`crate::routing::RoutingMetrics`).
//! * **Collectors**, read at scrape time from the snapshot a component already keeps: the link
//!   endpoint's counters, the router's counters and sessions, the data plane's
//!   `Counters`, and `/proc/self` ([`ProcessCollector`]). Nothing
//!   is copied between scrapes, and a scrape costs a few lock-free loads, one short lock of the
//!   data plane's counters, one read of `/proc/self/stat` and one listing of `/proc/self/fd`.
//!
//! **Adding metrics** (e.g. the eBPF telemetry): implement
//! [`prometheus_client::collector::Collector`] over the component's own counters (the `encode_*`
//! helpers here write families) and register it with [`MetricsRegistry::registry_mut`] while the
//! daemon starts, before the registry is frozen behind an `Arc`; set
//! [`DaemonMetrics::ebpf_enabled`] to 1 once probes are attached (`/v1/node` reports it too).
//! Every new metric is documented in `docs/metrics.md`.
//!
//! The exposition is OpenMetrics text for clients that ask for it (Prometheus does) and the
//! Prometheus text format 0.0.4 otherwise (what `curl` and `promtool check metrics` read); see
//! [`to_prometheus_text`].

use std::fmt;
use std::fmt::Write as _;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// Label pairs of one sample.
pub type Labels = Vec<(&'static str, String)>;

/// Content type of the OpenMetrics text exposition.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Content type of the Prometheus text exposition.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Which text exposition to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exposition {
    /// OpenMetrics 1.0 text (`# EOF`-terminated, `# UNIT` lines).
    OpenMetrics,
    /// Prometheus text format 0.0.4.
    Prometheus,
}

impl Exposition {
    /// The format an `Accept` header asks for (OpenMetrics only when named).
    pub fn negotiate(accept: Option<&str>) -> Self {
        match accept {
            Some(a) if a.contains("application/openmetrics-text") => Self::OpenMetrics,
            _ => Self::Prometheus,
        }
    }

    /// Its content type.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::OpenMetrics => OPENMETRICS_CONTENT_TYPE,
            Self::Prometheus => PROMETHEUS_CONTENT_TYPE,
        }
    }
}

/// The daemon's metrics registry.
#[derive(Debug)]
pub struct MetricsRegistry {
    registry: Registry,
}

impl Default for MetricsRegistry {
    fn default() -> Self {
        Self::new()
    }
}

impl MetricsRegistry {
    /// A registry with the process metrics and `x0t_build_info`.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("x0t");
        registry.register_collector(Box::new(ProcessCollector));
        Self { registry }
    }

    /// The registry, to add metrics or collectors while the daemon starts.
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// Encodes every metric.
    pub fn encode(&self, format: Exposition) -> Result<String, fmt::Error> {
        let mut text = String::with_capacity(16 * 1024);
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(match format {
            Exposition::OpenMetrics => text,
            Exposition::Prometheus => to_prometheus_text(&text),
        })
    }
}

/// Rewrites prometheus-client's OpenMetrics text as Prometheus text format 0.0.4: counter
/// families take their samples' `_total` name, info families their `_info` name and become
/// gauges, `unknown` becomes `untyped`, and `# UNIT` and `# EOF` lines go. Samples are the
/// same in both formats.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    let mut help: Option<(&str, &str)> = None;
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            help = Some(rest.split_once(' ').unwrap_or((rest, "")));
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "unknown"));
            let (suffix, kind) = match kind {
                "counter" => ("_total", "counter"),
                "info" => ("_info", "gauge"),
                "unknown" => ("", "untyped"),
                "stateset" | "gaugehistogram" => ("", "untyped"),
                other => ("", other),
            };
            if let Some((help_name, text)) = help.take()
                && help_name == name
            {
                let _ = writeln!(out, "# HELP {name}{suffix} {text}");
            }
            let _ = writeln!(out, "# TYPE {name}{suffix} {kind}");
        } else if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// Writes one gauge family whose samples carry labels ([`encode_gauge`] for one without).
pub fn encode_gauges(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    unit: Option<Unit>,
    samples: impl IntoIterator<Item = (Labels, f64)>,
) -> fmt::Result {
    let unit = unit.as_ref();
    let mut family = encoder.encode_descriptor(name, help, unit, MetricType::Gauge)?;
    for (labels, value) in samples {
        ConstGauge::new(value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// Writes one gauge without labels.
pub fn encode_gauge(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    unit: Option<Unit>,
    value: f64,
) -> fmt::Result {
    let family = encoder.encode_descriptor(name, help, unit.as_ref(), MetricType::Gauge)?;
    ConstGauge::new(value).encode(family)
}

/// Writes one counter family whose samples carry labels (the `_total` suffix is added).
pub fn encode_counters(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    unit: Option<Unit>,
    samples: impl IntoIterator<Item = (Labels, u64)>,
) -> fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, unit.as_ref(), MetricType::Counter)?;
    for (labels, value) in samples {
        ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// Writes one counter without labels.
pub fn encode_counter(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    unit: Option<Unit>,
    value: u64,
) -> fmt::Result {
    let family = encoder.encode_descriptor(name, help, unit.as_ref(), MetricType::Counter)?;
    ConstCounter::new(value).encode(family)
}

/// Metrics the daemon's tasks update as links come and go and the SVID is renewed.
#[derive(Debug, Clone)]
pub struct DaemonMetrics {
    /// Link setup time (QUIC + TLS 1.3 handshake + ML-DSA proof of possession).
    pub link_setup: Histogram,
    /// Link handshakes completed, by negotiated key-exchange group.
    pub handshakes: Family<Labels, prometheus_client::metrics::counter::Counter>,
    /// Links closed, by cause.
    pub links_closed: Family<Labels, prometheus_client::metrics::counter::Counter>,
    /// SVID renewals, by result.
    pub svid_renewals: Family<Labels, prometheus_client::metrics::counter::Counter>,
    /// When the current SVID expires (Unix seconds).
    pub svid_expiry: Gauge,
    /// 1 once eBPF telemetry is attached (set by its loader), else 0.
    pub ebpf_enabled: Gauge,
}

/// The `cause` labels of `x0t_links_closed_total` ([`close_cause`]).
pub const CLOSE_CAUSES: [&str; 5] = [
    "idle_timeout",
    "closed_by_peer",
    "closed_locally",
    "reset",
    "other",
];

/// The `result` labels of `x0t_svid_renewals_total`.
pub const RENEWAL_RESULTS: [&str; 2] = ["ok", "error"];

impl Default for DaemonMetrics {
    fn default() -> Self {
        let m = Self {
            // 100 µs … ~3.3 s.
            link_setup: Histogram::new(exponential_buckets(1e-4, 2.0, 16)),
            handshakes: Family::default(),
            links_closed: Family::default(),
            svid_renewals: Family::default(),
            svid_expiry: Gauge::default(),
            ebpf_enabled: Gauge::default(),
        };
        // Every label value from the start, at zero: an alert on a rate gets 0, not no data.
        for cause in CLOSE_CAUSES {
            let _ = m
                .links_closed
                .get_or_create(&vec![("cause", cause.to_owned())]);
        }
        for result in RENEWAL_RESULTS {
            let _ = m
                .svid_renewals
                .get_or_create(&vec![("result", result.to_owned())]);
        }
        m
    }
}

impl DaemonMetrics {
    /// Registers these metrics.
    pub fn register(&self, registry: &mut Registry) {
        registry.register_with_unit(
            "link_setup_duration",
            "Time from the first handshake packet to a usable link: QUIC, TLS 1.3 with the \
             negotiated group, mutual SVID check and ML-DSA-65 proof of possession",
            Unit::Seconds,
            self.link_setup.clone(),
        );
        registry.register(
            "link_handshakes",
            "Link handshakes completed (authenticated links established), by negotiated \
             key-exchange group",
            self.handshakes.clone(),
        );
        registry.register(
            "links_closed",
            "Links closed, by cause (idle_timeout, closed_by_peer, closed_locally, reset, other)",
            self.links_closed.clone(),
        );
        registry.register(
            "svid_renewals",
            "SVID renewals attempted, by result (ok, error)",
            self.svid_renewals.clone(),
        );
        registry.register(
            "ebpf_enabled",
            "1 once eBPF telemetry is attached, 0 while it is not (no privileges, or not built in)",
            self.ebpf_enabled.clone(),
        );
        registry.register_with_unit(
            "svid_expiry_timestamp",
            "When this node's current X.509-SVID expires (Unix time)",
            Unit::Seconds,
            self.svid_expiry.clone(),
        );
    }

    /// Counts a completed link handshake.
    pub fn handshake(&self, group: &str) {
        self.handshakes
            .get_or_create(&vec![("group", group.to_owned())])
            .inc();
    }

    /// Counts a closed link.
    pub fn link_closed(&self, cause: &'static str) {
        self.links_closed
            .get_or_create(&vec![("cause", cause.to_owned())])
            .inc();
    }

    /// Counts an SVID renewal attempt.
    pub fn svid_renewal(&self, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.svid_renewals
            .get_or_create(&vec![("result", result.to_owned())])
            .inc();
    }
}

/// The cause label of a closed QUIC connection (one of [`CLOSE_CAUSES`]).
pub fn close_cause(reason: &quinn::ConnectionError) -> &'static str {
    use quinn::ConnectionError as E;
    match reason {
        E::TimedOut => "idle_timeout",
        E::ApplicationClosed(_) | E::ConnectionClosed(_) => "closed_by_peer",
        E::LocallyClosed => "closed_locally",
        E::Reset => "reset",
        _ => "other",
    }
}

/// Process statistics from `/proc`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProcessStats {
    /// User plus system CPU time, seconds.
    pub cpu_seconds: f64,
    /// Resident set size, bytes.
    pub resident_bytes: u64,
    /// Virtual memory size, bytes.
    pub virtual_bytes: u64,
    /// Threads.
    pub threads: u64,
    /// Open file descriptors.
    pub open_fds: u64,
    /// The soft limit on open file descriptors.
    pub max_fds: Option<u64>,
    /// When the process started (Unix time, seconds).
    pub start_time_seconds: f64,
}

impl ProcessStats {
    /// Reads the statistics of process `pid` (`None`: this process; only then is `max_fds`
    /// filled in).
    ///
    /// One read of `/proc/PID/stat` (CPU, threads, memory, start time; its RSS is the counter
    /// that `/proc/PID/status` shows as `VmRSS`) and one listing of `/proc/PID/fd`; the boot
    /// time comes from `/proc/stat` once per process and the descriptor limit from
    /// `getrlimit`. Reading `status`, `limits` and `/proc/stat` at every scrape cost more than
    /// everything else a scrape does (measured with perf; docs/benchmarks.md).
    pub fn read(pid: Option<u32>) -> std::io::Result<Self> {
        let dir = match pid {
            Some(p) => format!("/proc/{p}"),
            None => "/proc/self".to_owned(),
        };
        let stat = std::fs::read_to_string(format!("{dir}/stat"))?;
        let ticks = rustix::param::clock_ticks_per_second() as f64;
        let mut s = parse_stat(&stat, ticks, boot_time())
            .ok_or_else(|| std::io::Error::other(format!("{dir}/stat: unexpected format")))?;
        s.open_fds = std::fs::read_dir(format!("{dir}/fd"))?.count() as u64;
        if pid.is_none() {
            s.max_fds = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
        }
        Ok(s)
    }
}

/// Parses `/proc/PID/stat` (fields after the command name, which may hold spaces and `)`).
fn parse_stat(stat: &str, ticks_per_second: f64, boot_time: u64) -> Option<ProcessStats> {
    let (_, rest) = stat.rsplit_once(')')?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): field n is f[n - 3].
    let field = |n: usize| f.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    let ticks = ticks_per_second.max(1.0);
    Some(ProcessStats {
        cpu_seconds: (field(14)? + field(15)?) as f64 / ticks,
        resident_bytes: field(24)? * rustix::param::page_size() as u64,
        virtual_bytes: field(23)?,
        threads: field(20)?,
        open_fds: 0,
        max_fds: None,
        start_time_seconds: boot_time as f64 + field(22)? as f64 / ticks,
    })
}

/// The boot time (Unix seconds) from `/proc/stat`, read once.
fn boot_time() -> u64 {
    static BOOT: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *BOOT.get_or_init(|| {
        std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| parse_boot_time(&s))
            .unwrap_or(0)
    })
}

fn parse_boot_time(proc_stat: &str) -> Option<u64> {
    proc_stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

/// `x0t_process_*` and `x0t_build_info`, read from `/proc/self` at each scrape
/// (prometheus-client has no process collector).
#[derive(Debug)]
pub struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> fmt::Result {
        encode_gauges(
            &mut encoder,
            "build_info",
            "Version of this x0t binary (always 1)",
            None,
            [(vec![("version", env!("CARGO_PKG_VERSION").to_owned())], 1.0)],
        )?;
        let Ok(p) = ProcessStats::read(None) else {
            return Ok(());
        };
        let e = &mut encoder;
        let cpu = e.encode_descriptor(
            "process_cpu",
            "User and system CPU time of the daemon",
            Some(&Unit::Seconds),
            MetricType::Counter,
        )?;
        ConstCounter::new(p.cpu_seconds).encode(cpu)?;
        encode_gauge(
            e,
            "process_resident_memory",
            "Resident memory of the daemon",
            Some(Unit::Bytes),
            p.resident_bytes as f64,
        )?;
        encode_gauge(
            e,
            "process_virtual_memory",
            "Virtual memory of the daemon",
            Some(Unit::Bytes),
            p.virtual_bytes as f64,
        )?;
        encode_gauge(
            e,
            "process_threads",
            "Threads of the daemon",
            None,
            p.threads as f64,
        )?;
        encode_gauge(
            e,
            "process_open_fds",
            "Open file descriptors of the daemon",
            None,
            p.open_fds as f64,
        )?;
        if let Some(max) = p.max_fds {
            encode_gauge(
                e,
                "process_max_fds",
                "Limit on open file descriptors of the daemon (soft)",
                None,
                max as f64,
            )?;
        }
        encode_gauge(
            e,
            "process_start_time",
            "When the daemon started (Unix time)",
            Some(Unit::Seconds),
            p.start_time_seconds,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_read_after_the_command_name() {
        // A command name with a space and a parenthesis, as the kernel allows.
        let stat = "4242 (x0t (odd) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 \
                    7 0 12345 1000000 300 18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 0 17 1 \
                    0 0 0 0 0";
        let p = parse_stat(stat, 100.0, 1_700_000_000).unwrap();
        assert_eq!(p.cpu_seconds, 3.0);
        assert_eq!(p.threads, 7);
        assert_eq!(p.virtual_bytes, 1_000_000);
        assert_eq!(p.resident_bytes, 300 * rustix::param::page_size() as u64);
        assert_eq!(p.start_time_seconds, 1_700_000_000.0 + 123.45);
        assert!(parse_stat("garbage", 100.0, 0).is_none());
        assert!(parse_stat("1 (x) S 1 2", 100.0, 0).is_none());
    }

    #[test]
    fn the_boot_time_is_parsed() {
        assert_eq!(
            parse_boot_time("cpu 1 2 3\nbtime 1700000000\nprocesses 9\n"),
            Some(1_700_000_000)
        );
        assert_eq!(parse_boot_time("cpu 1 2 3\n"), None);
    }

    #[test]
    fn this_process_is_measured() {
        let p = ProcessStats::read(None).unwrap();
        assert!(p.resident_bytes > 0 && p.threads >= 1 && p.open_fds >= 3);
        assert!(p.start_time_seconds > 1_600_000_000.0);
        assert!(p.max_fds.is_some_and(|m| m >= p.open_fds));
        // RSS from `stat` is the counter `status` shows as VmRSS (within what moved between
        // the two reads).
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let vm_rss_kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap();
        let diff = (vm_rss_kb * 1024).abs_diff(p.resident_bytes);
        assert!(
            diff < 8 * 1024 * 1024,
            "{vm_rss_kb} kB vs {}",
            p.resident_bytes
        );
    }

    #[test]
    fn openmetrics_is_rewritten_as_prometheus_text() {
        let om = "# HELP x0t_a Things.\n# TYPE x0t_a counter\nx0t_a_total 3\n\
                  # HELP x0t_rtt_seconds RTT.\n# TYPE x0t_rtt_seconds gauge\n# UNIT x0t_rtt_seconds seconds\n\
                  x0t_rtt_seconds{peer=\"p\"} 0.5\n# HELP x0t_b Build.\n# TYPE x0t_b info\n\
                  x0t_b_info{v=\"1\"} 1\n# EOF\n";
        let text = to_prometheus_text(om);
        assert_eq!(
            text,
            "# HELP x0t_a_total Things.\n# TYPE x0t_a_total counter\nx0t_a_total 3\n\
             # HELP x0t_rtt_seconds RTT.\n# TYPE x0t_rtt_seconds gauge\n\
             x0t_rtt_seconds{peer=\"p\"} 0.5\n# HELP x0t_b_info Build.\n# TYPE x0t_b_info gauge\n\
             x0t_b_info{v=\"1\"} 1\n"
        );
    }

    #[test]
    fn the_registry_has_process_metrics_and_the_ebpf_gauge() {
        let mut m = MetricsRegistry::new();
        let daemon = DaemonMetrics::default();
        daemon.register(m.registry_mut());
        let om = m.encode(Exposition::OpenMetrics).unwrap();
        assert!(om.ends_with("# EOF\n"), "{om}");
        assert!(
            om.contains("# UNIT x0t_process_cpu_seconds seconds"),
            "{om}"
        );
        assert!(om.contains("\nx0t_process_cpu_seconds_total "), "{om}");
        assert!(om.contains("\nx0t_ebpf_enabled 0\n"), "{om}");
        daemon.ebpf_enabled.set(1);
        let text = m.encode(Exposition::Prometheus).unwrap();
        assert!(text.contains("\nx0t_ebpf_enabled 1\n"), "{text}");
        assert!(
            text.contains("# TYPE x0t_process_cpu_seconds_total counter"),
            "{text}"
        );
        assert!(text.contains("x0t_build_info{version=\""), "{text}");
        assert!(
            !text.contains("# EOF") && !text.contains("# UNIT"),
            "{text}"
        );
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(line.starts_with("x0t_"), "{line}");
        }
    }

    #[test]
    fn event_counters_are_exported_at_zero_before_their_first_event() {
        let mut m = MetricsRegistry::new();
        DaemonMetrics::default().register(m.registry_mut());
        let text = m.encode(Exposition::Prometheus).unwrap();
        for cause in CLOSE_CAUSES {
            let series = format!("x0t_links_closed_total{{cause=\"{cause}\"}} 0\n");
            assert!(text.contains(&series), "no {series} in\n{text}");
        }
        for result in RENEWAL_RESULTS {
            let series = format!("x0t_svid_renewals_total{{result=\"{result}\"}} 0\n");
            assert!(text.contains(&series), "no {series} in\n{text}");
        }
        // Every cause close_cause gives is among them.
        use quinn::ConnectionError as E;
        for e in [
            E::TimedOut,
            E::LocallyClosed,
            E::Reset,
            E::VersionMismatch,
            E::CidsExhausted,
        ] {
            assert!(CLOSE_CAUSES.contains(&close_cause(&e)), "{e:?}");
        }
    }

    #[test]
    fn the_accept_header_picks_the_format() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;\
                          version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(
            Exposition::negotiate(Some(prometheus)),
            Exposition::OpenMetrics
        );
        assert_eq!(Exposition::negotiate(Some("*/*")), Exposition::Prometheus);
        assert_eq!(Exposition::negotiate(None), Exposition::Prometheus);
    }
}
