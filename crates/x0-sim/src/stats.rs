//! What a run cost and what it lost: per-node and per-link traffic, drops by reason, event
//! counts, wall time and peak memory.

use std::time::Duration;

/// Why a datagram did not arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum DropReason {
    /// Random loss on the link.
    Loss,
    /// Tail drop: the sending direction's queue was full.
    Queue,
    /// The link was down (visibly or silently, or cut by a partition) when the datagram was
    /// sent, or went down while it was in flight.
    LinkDown,
    /// The receiver was crashed when the datagram arrived, or crashed and restarted while it
    /// was in flight (a rebooted node does not get its previous life's packets).
    NodeDown,
    /// The sender addressed a node it has no link to (a bug in the node).
    NoLink,
}

impl DropReason {
    /// Every reason, in a fixed order.
    pub const ALL: [Self; 5] = [
        Self::Loss,
        Self::Queue,
        Self::LinkDown,
        Self::NodeDown,
        Self::NoLink,
    ];

    /// A short stable name (`loss`, `queue`, `link-down`, `node-down`, `no-link`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Loss => "loss",
            Self::Queue => "queue",
            Self::LinkDown => "link-down",
            Self::NodeDown => "node-down",
            Self::NoLink => "no-link",
        }
    }

    pub(crate) fn index(self) -> usize {
        match self {
            Self::Loss => 0,
            Self::Queue => 1,
            Self::LinkDown => 2,
            Self::NodeDown => 3,
            Self::NoLink => 4,
        }
    }
}

/// Drop counters, one per [`DropReason`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Drops([u64; 5]);

impl Drops {
    /// Datagrams dropped for `reason`.
    pub fn get(&self, reason: DropReason) -> u64 {
        self.0[reason.index()]
    }

    /// Datagrams dropped for any reason.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    #[inline]
    pub(crate) fn add(&mut self, reason: DropReason) {
        self.0[reason.index()] += 1;
    }
}

/// Traffic of one node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeTraffic {
    /// Datagrams the node handed to the engine.
    pub sent_datagrams: u64,
    /// Bytes in those datagrams.
    pub sent_bytes: u64,
    /// Datagrams delivered to the node.
    pub received_datagrams: u64,
    /// Bytes in those datagrams.
    pub received_bytes: u64,
}

/// Traffic of one direction of a link.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DirectionTraffic {
    /// Datagrams offered to this direction by its sender.
    pub sent_datagrams: u64,
    /// Bytes in those datagrams.
    pub sent_bytes: u64,
    /// Datagrams delivered at the far end.
    pub delivered_datagrams: u64,
    /// Bytes in those datagrams.
    pub delivered_bytes: u64,
    /// Datagrams lost on this direction, by reason.
    pub drops: Drops,
}

/// Counters of a whole run.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// Per node, by index.
    pub nodes: Vec<NodeTraffic>,
    /// Per link, by index: `[a → b, b → a]` for a link whose ends are `(a, b)`.
    pub links: Vec<[DirectionTraffic; 2]>,
    /// Drops by reason, over all links (including [`DropReason::NoLink`], which has no link).
    pub drops: Drops,
    /// Events taken off the queue (deliveries, wake-ups, scripted events), stale ones included.
    pub events: u64,
    /// Wake-ups that reached a node's `timeout`.
    pub timeouts: u64,
    /// Datagrams delivered.
    pub delivered: u64,
    /// Wall-clock time spent inside the run methods.
    pub wall: Duration,
}

impl Stats {
    /// Datagrams sent by all nodes.
    pub fn sent_datagrams(&self) -> u64 {
        self.nodes.iter().map(|n| n.sent_datagrams).sum()
    }

    /// Bytes sent by all nodes.
    pub fn sent_bytes(&self) -> u64 {
        self.nodes.iter().map(|n| n.sent_bytes).sum()
    }
}

/// The process's peak resident set size in bytes (`VmHWM` in `/proc/self/status`), where the
/// platform has it.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_vm_hwm(&status)
}

fn parse_vm_hwm(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let mut words = line["VmHWM:".len()..].split_whitespace();
    let value: u64 = words.next()?.parse().ok()?;
    let scale = match words.next() {
        Some("kB") | None => 1024,
        Some("mB") | Some("MB") => 1024 * 1024,
        Some(_) => return None,
    };
    value.checked_mul(scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_hwm_parses() {
        let s = "Name:\tx\nVmPeak:\t  100 kB\nVmHWM:\t    2048 kB\nVmRSS:\t 1 kB\n";
        assert_eq!(parse_vm_hwm(s), Some(2048 * 1024));
        assert_eq!(parse_vm_hwm("VmRSS: 1 kB"), None);
        assert_eq!(parse_vm_hwm("VmHWM: lots kB"), None);
    }

    #[test]
    fn peak_rss_is_readable_here() {
        if std::path::Path::new("/proc/self/status").exists() {
            assert!(peak_rss_bytes().is_some_and(|b| b > 0));
        }
    }

    #[test]
    fn drops_count_by_reason() {
        let mut d = Drops::default();
        d.add(DropReason::Loss);
        d.add(DropReason::Loss);
        d.add(DropReason::NoLink);
        assert_eq!(d.get(DropReason::Loss), 2);
        assert_eq!(d.get(DropReason::NoLink), 1);
        assert_eq!(d.total(), 3);
        let names: Vec<_> = DropReason::ALL.iter().map(|r| r.name()).collect();
        assert_eq!(
            names,
            ["loss", "queue", "link-down", "node-down", "no-link"]
        );
    }
}
