//! Fault injection: a dangerous, off-by-default control that makes this node damage its own
//! traffic on request, for lab benchmarks of the self-healing loop (docs/heal.md, "Fault
//! injection").
//!
//! Who owns what: one [`FaultSet`] per daemon, shared (`Arc`) by
//!
//! * the link endpoint's socket (x0-link's [`Impairment`] hook) and the data socket
//!   (`crate::dataio::UdpIo`), which ask [`FaultSet::on_send`] about every transmit: pass,
//!   drop, or send later (delay, jitter, loss, flapping);
//! * the data plane's relay branch, which asks [`FaultSet::blackholes`] before re-sealing a
//!   transit frame (black-holing; frames addressed to this node and frames it originates are
//!   never touched, so probes, end-to-end handshakes and its own traffic keep working);
//! * the HTTP API (`/v1/faults`), which adds, lists and removes faults;
//! * the metrics collector ([`FaultCollector`]).
//!
//! Faults name a neighbour by node ID; the daemon tells the set which socket addresses belong to
//! which neighbour as links come up ([`FaultSet::learn`]). With no fault in force a send costs
//! one atomic load.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};
use utoipa::ToSchema;
use x0_identity::NodeId;
use x0_link::{Impairment, Verdict};

use crate::metrics::{encode_counter, encode_counters, encode_gauge};

/// Longest delay (and jitter) accepted.
pub const MAX_DELAY_MS: u64 = 10_000;
/// Shortest flap period accepted.
pub const MIN_FLAP_PERIOD_MS: u64 = 100;
/// Longest flap period accepted.
pub const MAX_FLAP_PERIOD_MS: u64 = 600_000;
/// Longest lifetime (`duration_ms`) accepted: a day.
pub const MAX_DURATION_MS: u64 = 86_400_000;
/// Most faults in force at once; more are refused (`POST /v1/faults` answers 409) until some
/// are removed or expire. Every send is checked against each fault, so the set stays small.
pub const MAX_FAULTS: usize = 64;
/// How often faults past their `duration_ms` are removed.
const EXPIRY_POLL: Duration = Duration::from_millis(100);

/// One fault as the API and the configuration file write it, tagged by `kind`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum FaultSpec {
    /// Hold every datagram sent to `peer` (null: to every neighbour) for `delay_ms` ± a
    /// uniform `jitter_ms` (at most `delay_ms`) before it leaves.
    Delay {
        /// The neighbour's node ID (32 hex digits), or null for every neighbour.
        #[serde(default)]
        #[schema(pattern = "^[0-9a-f]{32}$")]
        peer: Option<String>,
        /// Added delay, milliseconds (0..=10000).
        #[serde(deserialize_with = "integer::required")]
        #[schema(maximum = 10_000)]
        delay_ms: u64,
        /// Uniform jitter around the delay, milliseconds (0..=delay_ms).
        #[serde(default, deserialize_with = "integer::required")]
        #[schema(maximum = 10_000)]
        jitter_ms: u64,
        /// Remove the fault after this long, milliseconds (1..=86400000).
        #[serde(
            default,
            skip_serializing_if = "Option::is_none",
            deserialize_with = "integer::optional"
        )]
        #[schema(minimum = 1, maximum = 86_400_000)]
        duration_ms: Option<u64>,
    },
    /// Drop each datagram sent to `peer` with probability `ratio`.
    Loss {
        /// The neighbour's node ID, or null for every neighbour.
        #[serde(default)]
        #[schema(pattern = "^[0-9a-f]{32}$")]
        peer: Option<String>,
        /// Drop probability, 0..=1.
        #[schema(minimum = 0.0, maximum = 1.0)]
        ratio: f64,
        /// Remove the fault after this long, milliseconds.
        #[serde(
            default,
            skip_serializing_if = "Option::is_none",
            deserialize_with = "integer::optional"
        )]
        #[schema(minimum = 1, maximum = 86_400_000)]
        duration_ms: Option<u64>,
    },
    /// Drop the data frames this node relays for others (only those whose next hop is `peer`,
    /// when given); traffic to and from this node is untouched.
    Blackhole {
        /// Only frames relayed to this next hop, or null for all transit frames.
        #[serde(default)]
        #[schema(pattern = "^[0-9a-f]{32}$")]
        peer: Option<String>,
        /// Remove the fault after this long, milliseconds.
        #[serde(
            default,
            skip_serializing_if = "Option::is_none",
            deserialize_with = "integer::optional"
        )]
        #[schema(minimum = 1, maximum = 86_400_000)]
        duration_ms: Option<u64>,
    },
    /// Block sends to `peer` for `period_ms`, allow them for `period_ms`, and so on, starting
    /// blocked.
    Flap {
        /// The neighbour's node ID, or null for every neighbour.
        #[serde(default)]
        #[schema(pattern = "^[0-9a-f]{32}$")]
        peer: Option<String>,
        /// Half period, milliseconds (100..=600000).
        #[serde(deserialize_with = "integer::required")]
        #[schema(minimum = 100, maximum = 600_000)]
        period_ms: u64,
        /// Remove the fault after this long, milliseconds.
        #[serde(
            default,
            skip_serializing_if = "Option::is_none",
            deserialize_with = "integer::optional"
        )]
        #[schema(minimum = 1, maximum = 86_400_000)]
        duration_ms: Option<u64>,
    },
}

/// Integer fields of a fault. JSON Schema, and so the API's OpenAPI document, counts `500.0` as
/// the integer 500; serde would refuse it for a `u64`.
mod integer {
    use serde::Deserializer;
    use serde::de::{Error, Unexpected, Visitor};

    struct Integer;

    impl Visitor<'_> for Integer {
        type Value = u64;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a non-negative integer")
        }

        fn visit_u64<E: Error>(self, v: u64) -> Result<u64, E> {
            Ok(v)
        }

        fn visit_i64<E: Error>(self, v: i64) -> Result<u64, E> {
            u64::try_from(v).map_err(|_| E::invalid_value(Unexpected::Signed(v), &self))
        }

        fn visit_f64<E: Error>(self, v: f64) -> Result<u64, E> {
            // 2^64 is the first f64 above u64::MAX.
            if v.fract() == 0.0 && (0.0..18_446_744_073_709_551_616.0).contains(&v) {
                Ok(v as u64)
            } else {
                Err(E::invalid_value(Unexpected::Float(v), &self))
            }
        }
    }

    pub(super) fn required<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        d.deserialize_any(Integer)
    }

    pub(super) fn optional<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        struct Maybe;

        impl<'de> Visitor<'de> for Maybe {
            type Value = Option<u64>;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a non-negative integer or null")
            }

            fn visit_none<E: Error>(self) -> Result<Option<u64>, E> {
                Ok(None)
            }

            fn visit_unit<E: Error>(self) -> Result<Option<u64>, E> {
                Ok(None)
            }

            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Option<u64>, D::Error> {
                required(d).map(Some)
            }
        }

        d.deserialize_option(Maybe)
    }
}

/// A fault in force, as `GET /v1/faults` lists it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FaultEntry {
    /// Its ID (for `DELETE /v1/faults/{id}`).
    pub id: u64,
    /// When it was added (Unix milliseconds).
    pub since_unix_ms: u64,
    /// The fault.
    #[serde(flatten)]
    pub fault: FaultSpec,
}

/// `GET /v1/faults`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FaultList {
    /// Whether `danger_fault_injection.enabled` is set (otherwise faults are refused).
    pub enabled: bool,
    /// The faults in force, oldest first.
    pub faults: Vec<FaultEntry>,
}

/// `POST /v1/faults`'s answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FaultCreated {
    /// The new fault's ID.
    pub id: u64,
}

/// What a fault does.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Effect {
    /// Added delay and jitter (jitter at most the delay).
    Delay {
        /// Mean added delay.
        delay: Duration,
        /// Half-width of the uniform jitter.
        jitter: Duration,
    },
    /// Random loss with this probability.
    Loss {
        /// In [0, 1].
        ratio: f64,
    },
    /// Transit frames dropped.
    Blackhole,
    /// Sends blocked and allowed in turn, `period` each, starting blocked.
    Flap {
        /// Each half of the cycle.
        period: Duration,
    },
}

/// A checked fault.
#[derive(Debug, Clone, PartialEq)]
pub struct Fault {
    /// The neighbour it applies to (`None`: every neighbour).
    pub peer: Option<NodeId>,
    /// What it does.
    pub effect: Effect,
    /// How long it stays (`None`: until removed).
    pub duration: Option<Duration>,
}

/// A fault refused: the field and what is allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FaultError {
    /// The field.
    pub field: &'static str,
    /// What is wrong and what is allowed.
    pub message: String,
}

fn refuse(field: &'static str, message: impl Into<String>) -> FaultError {
    FaultError {
        field,
        message: message.into(),
    }
}

fn in_range(field: &'static str, v: u64, lo: u64, hi: u64) -> Result<Duration, FaultError> {
    if (lo..=hi).contains(&v) {
        Ok(Duration::from_millis(v))
    } else {
        Err(refuse(
            field,
            format!("must be between {lo} and {hi}, got {v}"),
        ))
    }
}

impl TryFrom<&FaultSpec> for Fault {
    type Error = FaultError;

    fn try_from(spec: &FaultSpec) -> Result<Self, FaultError> {
        let (peer, duration_ms) = match spec {
            FaultSpec::Delay {
                peer, duration_ms, ..
            }
            | FaultSpec::Loss {
                peer, duration_ms, ..
            }
            | FaultSpec::Blackhole { peer, duration_ms }
            | FaultSpec::Flap {
                peer, duration_ms, ..
            } => (peer, duration_ms),
        };
        let peer = peer
            .as_deref()
            .map(|p| {
                p.parse::<NodeId>().map_err(|_| {
                    refuse(
                        "peer",
                        format!("must be a node ID (32 lowercase hex digits) or null, got {p:?}"),
                    )
                })
            })
            .transpose()?;
        let duration = duration_ms
            .map(|d| in_range("duration_ms", d, 1, MAX_DURATION_MS))
            .transpose()?;
        let effect = match *spec {
            FaultSpec::Delay {
                delay_ms,
                jitter_ms,
                ..
            } => Effect::Delay {
                delay: in_range("delay_ms", delay_ms, 0, MAX_DELAY_MS)?,
                jitter: in_range("jitter_ms", jitter_ms, 0, delay_ms)?,
            },
            FaultSpec::Loss { ratio, .. } => {
                if !(0.0..=1.0).contains(&ratio) {
                    return Err(refuse(
                        "ratio",
                        format!("must be between 0 and 1, got {ratio}"),
                    ));
                }
                Effect::Loss { ratio }
            }
            FaultSpec::Blackhole { .. } => Effect::Blackhole,
            FaultSpec::Flap { period_ms, .. } => Effect::Flap {
                period: in_range(
                    "period_ms",
                    period_ms,
                    MIN_FLAP_PERIOD_MS,
                    MAX_FLAP_PERIOD_MS,
                )?,
            },
        };
        Ok(Self {
            peer,
            effect,
            duration,
        })
    }
}

/// Whether a flap `period` after `elapsed` since it started is in a blocked half (the first
/// half is).
pub fn flap_blocked(elapsed: Duration, period: Duration) -> bool {
    let period = period.as_nanos().max(1);
    (elapsed.as_nanos() / period).is_multiple_of(2)
}

/// Why `add` refused a fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddError {
    /// `danger_fault_injection.enabled` is false.
    #[error(
        "fault injection is disabled on this node (set danger_fault_injection.enabled = true in \
         its configuration; never in production)"
    )]
    Disabled,
    /// The fault is out of range.
    #[error(transparent)]
    Invalid(#[from] FaultError),
    /// [`MAX_FAULTS`] faults are in force already.
    #[error(
        "{MAX_FAULTS} faults are in force already, the most this node holds; remove some \
         (DELETE /v1/faults/{{id}}, or DELETE /v1/faults for all)"
    )]
    Full,
}

struct Active {
    id: u64,
    spec: FaultSpec,
    fault: Fault,
    since: Instant,
    since_unix_ms: u64,
    expires: Option<Instant>,
}

impl Active {
    fn in_force(&self, now: Instant) -> bool {
        self.expires.is_none_or(|e| now < e)
    }
}

/// Drop counters by kind (`loss`, `flap`, `blackhole`).
const DROP_KINDS: [&str; 3] = ["loss", "flap", "blackhole"];

/// The faults in force on this node.
pub struct FaultSet {
    enabled: bool,
    /// Whether any fault is in force (the fast path's one load).
    any: AtomicBool,
    faults: RwLock<Vec<Active>>,
    /// Socket addresses of neighbours (link and data sockets) → their node IDs.
    peers: RwLock<HashMap<SocketAddr, NodeId>>,
    next_id: AtomicU64,
    /// State of the generator behind loss and jitter (splitmix64; not for secrets).
    rng: AtomicU64,
    dropped: [AtomicU64; DROP_KINDS.len()],
    delayed: AtomicU64,
}

impl fmt::Debug for FaultSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultSet")
            .field("enabled", &self.enabled)
            .field("active", &self.active())
            .finish_non_exhaustive()
    }
}

fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl FaultSet {
    /// An empty set; `enabled` is `danger_fault_injection.enabled` (faults are refused without
    /// it).
    pub fn new(enabled: bool) -> Arc<Self> {
        let seed = unix_ms() ^ u64::from(std::process::id()).rotate_left(32);
        Arc::new(Self {
            enabled,
            any: AtomicBool::new(false),
            faults: RwLock::new(Vec::new()),
            peers: RwLock::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            rng: AtomicU64::new(seed),
            dropped: Default::default(),
            delayed: AtomicU64::new(0),
        })
    }

    /// Whether faults may be added.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Faults in force.
    pub fn active(&self) -> usize {
        let now = Instant::now();
        read(&self.faults)
            .iter()
            .filter(|a| a.in_force(now))
            .count()
    }

    /// Adds a fault; returns its ID.
    pub fn add(&self, spec: &FaultSpec) -> Result<u64, AddError> {
        if !self.enabled {
            return Err(AddError::Disabled);
        }
        let fault = Fault::try_from(spec)?;
        let since = Instant::now();
        let mut faults = write(&self.faults);
        faults.retain(|a| a.in_force(since));
        if faults.len() >= MAX_FAULTS {
            return Err(AddError::Full);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        warn!(id, fault = ?spec, "fault injected");
        faults.push(Active {
            id,
            spec: spec.clone(),
            expires: fault.duration.map(|d| since + d),
            fault,
            since,
            since_unix_ms: unix_ms(),
        });
        self.any.store(true, Ordering::Release);
        Ok(id)
    }

    /// Removes fault `id`; false if there is none.
    pub fn remove(&self, id: u64) -> bool {
        let mut faults = write(&self.faults);
        let before = faults.len();
        faults.retain(|a| a.id != id);
        self.any.store(!faults.is_empty(), Ordering::Release);
        let removed = faults.len() < before;
        if removed {
            info!(id, "fault removed");
        }
        removed
    }

    /// Removes every fault.
    pub fn clear(&self) {
        let mut faults = write(&self.faults);
        if !faults.is_empty() {
            info!(count = faults.len(), "faults cleared");
        }
        faults.clear();
        self.any.store(false, Ordering::Release);
    }

    /// The faults in force, oldest first.
    pub fn list(&self) -> FaultList {
        let now = Instant::now();
        FaultList {
            enabled: self.enabled,
            faults: read(&self.faults)
                .iter()
                .filter(|a| a.in_force(now))
                .map(|a| FaultEntry {
                    id: a.id,
                    since_unix_ms: a.since_unix_ms,
                    fault: a.spec.clone(),
                })
                .collect(),
        }
    }

    /// Removes the faults whose `duration_ms` has passed.
    fn expire(&self, now: Instant) {
        if read(&self.faults).iter().all(|a| a.in_force(now)) {
            return;
        }
        let mut faults = write(&self.faults);
        faults.retain(|a| {
            let keep = a.in_force(now);
            if !keep {
                info!(id = a.id, "fault expired");
            }
            keep
        });
        self.any.store(!faults.is_empty(), Ordering::Release);
    }

    /// Removes expired faults every 100 ms, for as long as the runtime runs.
    pub fn spawn_expiry(self: &Arc<Self>) {
        if !self.enabled {
            return;
        }
        let set = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(EXPIRY_POLL);
            loop {
                tick.tick().await;
                let Some(set) = set.upgrade() else { return };
                set.expire(Instant::now());
            }
        });
    }

    /// Records that `node`'s traffic goes to `addr` (a link's remote address, or the data
    /// channel it announced).
    pub fn learn(&self, node: NodeId, addr: SocketAddr) {
        if !self.enabled {
            return;
        }
        if read(&self.peers).get(&addr) != Some(&node) {
            write(&self.peers).insert(addr, node);
        }
    }

    /// Whether a transit frame whose next hop is `next` is to be dropped (and counts it).
    pub fn blackholes(&self, next: NodeId) -> bool {
        if !self.any.load(Ordering::Acquire) {
            return false;
        }
        let now = Instant::now();
        let hit = read(&self.faults).iter().any(|a| {
            a.in_force(now)
                && a.fault.effect == Effect::Blackhole
                && a.fault.peer.is_none_or(|p| p == next)
        });
        if hit {
            self.count_drop(2);
        }
        hit
    }

    fn count_drop(&self, kind: usize) {
        if let Some(c) = self.dropped.get(kind) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A uniform number in [0, 1).
    fn uniform(&self) -> f64 {
        let z = self
            .rng
            .fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed)
            .wrapping_add(0x9e37_79b9_7f4a_7c15);
        let z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        let z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        let z = z ^ (z >> 31);
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    /// What to do with a datagram for `dst` at `now`.
    pub fn verdict_at(&self, dst: SocketAddr, now: Instant) -> Verdict {
        if !self.any.load(Ordering::Acquire) {
            return Verdict::Pass;
        }
        let node = read(&self.peers).get(&dst).copied();
        let mut delay: Option<Duration> = None;
        for a in read(&self.faults).iter() {
            if !a.in_force(now) || a.fault.peer.is_some_and(|p| Some(p) != node) {
                continue;
            }
            match a.fault.effect {
                Effect::Blackhole => {}
                Effect::Loss { ratio } => {
                    if self.uniform() < ratio {
                        self.count_drop(0);
                        return Verdict::Drop;
                    }
                }
                Effect::Flap { period } => {
                    if flap_blocked(now.saturating_duration_since(a.since), period) {
                        self.count_drop(1);
                        return Verdict::Drop;
                    }
                }
                Effect::Delay { delay: d, jitter } => {
                    let spread = jitter.as_secs_f64() * (2.0 * self.uniform() - 1.0);
                    let this = Duration::from_secs_f64((d.as_secs_f64() + spread).max(0.0));
                    delay = Some(delay.unwrap_or_default() + this);
                }
            }
        }
        match delay {
            Some(d) => {
                self.delayed.fetch_add(1, Ordering::Relaxed);
                Verdict::Delay(d)
            }
            None => Verdict::Pass,
        }
    }
}

impl Impairment for FaultSet {
    fn on_send(&self, dst: SocketAddr) -> Verdict {
        self.verdict_at(dst, Instant::now())
    }
}

/// Exports the fault-injection metrics at scrape time.
#[derive(Debug)]
pub struct FaultCollector(pub Arc<FaultSet>);

impl Collector for FaultCollector {
    fn encode(&self, mut e: DescriptorEncoder<'_>) -> fmt::Result {
        let s = &self.0;
        encode_gauge(
            &mut e,
            "fault_injection_enabled",
            "1 when danger_fault_injection.enabled is set (this node damages traffic on request)",
            None,
            f64::from(u8::from(s.enabled)),
        )?;
        encode_gauge(
            &mut e,
            "fault_injection_active",
            "Injected faults in force",
            None,
            s.active() as f64,
        )?;
        encode_counters(
            &mut e,
            "fault_injection_dropped",
            "Datagrams (link and data sockets) and transit frames dropped by injected faults, by kind",
            None,
            DROP_KINDS
                .iter()
                .zip(&s.dropped)
                .map(|(k, c)| (vec![("kind", (*k).to_owned())], c.load(Ordering::Relaxed))),
        )?;
        encode_counter(
            &mut e,
            "fault_injection_delayed",
            "Transmits (datagrams or GSO trains) held back by injected delay faults",
            None,
            s.delayed.load(Ordering::Relaxed),
        )
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<Fault, String> {
        let spec: FaultSpec = serde_json::from_str(json).map_err(|e| e.to_string())?;
        Fault::try_from(&spec).map_err(|e| e.to_string())
    }

    const PEER: &str = "00112233445566778899aabbccddeeff";

    #[test]
    fn faults_parse_and_are_checked_naming_the_field() {
        let f = parse(&format!(
            r#"{{"kind":"delay","peer":"{PEER}","delay_ms":200,"jitter_ms":20,"duration_ms":5000}}"#
        ))
        .unwrap();
        assert_eq!(f.peer, Some(PEER.parse().unwrap()));
        assert_eq!(
            f.effect,
            Effect::Delay {
                delay: Duration::from_millis(200),
                jitter: Duration::from_millis(20)
            }
        );
        assert_eq!(f.duration, Some(Duration::from_secs(5)));
        let f = parse(r#"{"kind":"delay","peer":null,"delay_ms":200}"#).unwrap();
        assert_eq!((f.peer, f.duration), (None, None));
        assert_eq!(
            parse(r#"{"kind":"blackhole"}"#).unwrap().effect,
            Effect::Blackhole
        );
        assert_eq!(
            parse(r#"{"kind":"loss","ratio":1.0}"#).unwrap().effect,
            Effect::Loss { ratio: 1.0 }
        );
        // Integers written with a zero fraction are integers (as JSON Schema has them).
        let f =
            parse(r#"{"kind":"delay","delay_ms":500.0,"jitter_ms":0,"duration_ms":1e3}"#).unwrap();
        assert_eq!(f.duration, Some(Duration::from_secs(1)));
        let f = parse(r#"{"kind":"flap","period_ms":200,"duration_ms":null}"#).unwrap();
        assert_eq!(f.duration, None);
        assert_eq!(
            parse(r#"{"kind":"flap","period_ms":2000}"#).unwrap().effect,
            Effect::Flap {
                period: Duration::from_secs(2)
            }
        );

        for (json, needle) in [
            (r#"{"kind":"delay","delay_ms":10001}"#, "delay_ms"),
            (
                r#"{"kind":"delay","delay_ms":100,"jitter_ms":101}"#,
                "jitter_ms",
            ),
            (r#"{"kind":"loss","ratio":1.5}"#, "ratio"),
            (r#"{"kind":"loss","ratio":-0.1}"#, "ratio"),
            (r#"{"kind":"flap","period_ms":99}"#, "period_ms"),
            (r#"{"kind":"flap","period_ms":600001}"#, "period_ms"),
            (r#"{"kind":"blackhole","duration_ms":0}"#, "duration_ms"),
            (r#"{"kind":"blackhole","peer":"B0B"}"#, "peer"),
            (r#"{"kind":"delay"}"#, "delay_ms"),
            (r#"{"kind":"delay","delay_ms":1,"bogus":2}"#, "bogus"),
            (r#"{"kind":"meteor"}"#, "meteor"),
            (r#"{"delay_ms":1}"#, "kind"),
            (r#"{"kind":"loss","ratio":"half"}"#, "half"),
            (r#"{"kind":"delay","delay_ms":2.5}"#, "2.5"),
            (r#"{"kind":"delay","delay_ms":-1}"#, "-1"),
            (
                r#"{"kind":"flap","period_ms":200,"duration_ms":1e30}"#,
                "integer",
            ),
        ] {
            let e = parse(json).unwrap_err();
            assert!(e.contains(needle), "{json}: {e}");
        }
    }

    #[test]
    fn specs_round_trip_through_json() {
        let spec = FaultSpec::Flap {
            peer: Some(PEER.into()),
            period_ms: 500,
            duration_ms: None,
        };
        let text = serde_json::to_string(&spec).unwrap();
        assert_eq!(
            text,
            format!(r#"{{"kind":"flap","peer":"{PEER}","period_ms":500}}"#)
        );
        assert_eq!(serde_json::from_str::<FaultSpec>(&text).unwrap(), spec);
        let entry = FaultEntry {
            id: 7,
            since_unix_ms: 1,
            fault: spec,
        };
        let v = serde_json::to_value(&entry).unwrap();
        assert_eq!(
            (v["id"].as_u64(), v["kind"].as_str()),
            (Some(7), Some("flap"))
        );
    }

    #[test]
    fn the_flap_schedule_starts_blocked_and_alternates() {
        let p = Duration::from_millis(2000);
        let at = |ms| flap_blocked(Duration::from_millis(ms), p);
        assert!(at(0) && at(1999));
        assert!(!at(2000) && !at(3999));
        assert!(at(4000) && at(5999));
        assert!(!at(6000));
        assert!(
            flap_blocked(Duration::ZERO, Duration::ZERO),
            "no division by zero"
        );
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn verdicts_follow_the_faults_for_the_named_neighbour_only() {
        let set = FaultSet::new(true);
        let (b, c): (NodeId, NodeId) = (PEER.parse().unwrap(), "11".repeat(16).parse().unwrap());
        set.learn(b, addr(1));
        set.learn(b, addr(2));
        set.learn(c, addr(3));
        let now = Instant::now();
        assert_eq!(set.verdict_at(addr(1), now), Verdict::Pass);
        let id = set
            .add(&FaultSpec::Delay {
                peer: Some(PEER.into()),
                delay_ms: 150,
                jitter_ms: 0,
                duration_ms: None,
            })
            .unwrap();
        let now = Instant::now();
        for a in [addr(1), addr(2)] {
            assert_eq!(
                set.verdict_at(a, now),
                Verdict::Delay(Duration::from_millis(150))
            );
        }
        assert_eq!(
            set.verdict_at(addr(3), now),
            Verdict::Pass,
            "another neighbour"
        );
        assert_eq!(
            set.verdict_at(addr(9), now),
            Verdict::Pass,
            "an unknown address"
        );
        let lossy = set
            .add(&FaultSpec::Loss {
                peer: None,
                ratio: 1.0,
                duration_ms: None,
            })
            .unwrap();
        assert_eq!(set.verdict_at(addr(3), now), Verdict::Drop);
        assert!(set.remove(lossy));
        assert!(!set.remove(lossy));
        set.add(&FaultSpec::Loss {
            peer: None,
            ratio: 0.0,
            duration_ms: None,
        })
        .unwrap();
        assert_eq!(set.verdict_at(addr(3), now), Verdict::Pass, "ratio 0");
        assert!(!set.blackholes(c));
        set.add(&FaultSpec::Blackhole {
            peer: Some(PEER.into()),
            duration_ms: None,
        })
        .unwrap();
        assert!(set.blackholes(b) && !set.blackholes(c));
        assert_eq!(set.list().faults.len(), 3);
        assert!(set.remove(id));
        set.clear();
        assert_eq!(set.active(), 0);
        assert_eq!(set.verdict_at(addr(1), Instant::now()), Verdict::Pass);
        assert!(!set.blackholes(b));
        assert_eq!(set.dropped[0].load(Ordering::Relaxed), 1);
        assert_eq!(set.dropped[2].load(Ordering::Relaxed), 1);
    }

    #[test]
    fn loss_drops_about_the_ratio_and_jitter_stays_in_its_band() {
        let set = FaultSet::new(true);
        set.add(&FaultSpec::Loss {
            peer: None,
            ratio: 0.3,
            duration_ms: None,
        })
        .unwrap();
        let now = Instant::now();
        let dropped = (0..10_000)
            .filter(|_| set.verdict_at(addr(1), now) == Verdict::Drop)
            .count();
        assert!((2_500..3_500).contains(&dropped), "{dropped} of 10000");
        set.clear();
        set.add(&FaultSpec::Delay {
            peer: None,
            delay_ms: 100,
            jitter_ms: 50,
            duration_ms: None,
        })
        .unwrap();
        let delays: Vec<Duration> = (0..1000)
            .map(|_| match set.verdict_at(addr(1), now) {
                Verdict::Delay(d) => d,
                v => panic!("{v:?}"),
            })
            .collect();
        assert!(
            delays
                .iter()
                .all(|d| (Duration::from_millis(50)..=Duration::from_millis(150)).contains(d))
        );
        assert!(delays.iter().any(|d| *d < Duration::from_millis(90)));
        assert!(delays.iter().any(|d| *d > Duration::from_millis(110)));
    }

    #[test]
    fn a_disabled_set_refuses_and_faults_expire() {
        let off = FaultSet::new(false);
        assert_eq!(
            off.add(&FaultSpec::Blackhole {
                peer: None,
                duration_ms: None
            }),
            Err(AddError::Disabled)
        );
        let set = FaultSet::new(true);
        set.add(&FaultSpec::Flap {
            peer: None,
            period_ms: 100,
            duration_ms: Some(50),
        })
        .unwrap();
        assert_eq!(set.verdict_at(addr(1), Instant::now()), Verdict::Drop);
        let later = Instant::now() + Duration::from_millis(60);
        assert_eq!(set.verdict_at(addr(1), later), Verdict::Pass);
        set.expire(later);
        assert!(set.list().faults.is_empty());
        assert!(!set.any.load(Ordering::Relaxed));
    }

    #[test]
    fn the_set_holds_at_most_max_faults() {
        let set = FaultSet::new(true);
        let blackhole = FaultSpec::Blackhole {
            peer: None,
            duration_ms: None,
        };
        let ids: Vec<u64> = (0..MAX_FAULTS)
            .map(|_| set.add(&blackhole).unwrap())
            .collect();
        assert_eq!(set.add(&blackhole), Err(AddError::Full));
        assert!(AddError::Full.to_string().contains("DELETE /v1/faults"));
        assert_eq!(set.active(), MAX_FAULTS);
        assert!(set.remove(ids[0]));
        set.add(&blackhole).unwrap();
        assert_eq!(set.add(&blackhole), Err(AddError::Full));
        set.clear();
        // Faults past their lifetime make room even before the expiry task removes them.
        for _ in 0..MAX_FAULTS {
            set.add(&FaultSpec::Blackhole {
                peer: None,
                duration_ms: Some(1),
            })
            .unwrap();
        }
        std::thread::sleep(Duration::from_millis(5));
        set.add(&blackhole).unwrap();
    }
}
