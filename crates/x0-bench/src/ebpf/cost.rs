//! What the traffic of one run cost: the packets that crossed the veth, the machine's CPU
//! time, the softirq threads' time, and the eBPF programs' own run time per packet.

use serde::Serialize;
use x0_telemetry::ProgramRunStats;

/// One interface's packet counters, from a `/proc/net/dev` table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NetDevPackets {
    pub rx: u64,
    pub tx: u64,
}

impl NetDevPackets {
    /// Packets in both directions since `earlier`.
    pub(crate) fn since(self, earlier: Self) -> u64 {
        self.rx.saturating_sub(earlier.rx) + self.tx.saturating_sub(earlier.tx)
    }
}

/// `iface`'s received and sent packets in a `/proc/net/dev` table: after `name:` come eight
/// receive fields (bytes, packets, …) and eight transmit fields (bytes, packets, …).
pub(crate) fn parse_net_dev(text: &str, iface: &str) -> Option<NetDevPackets> {
    text.lines().find_map(|line| {
        let (name, fields) = line.split_once(':')?;
        if name.trim() != iface {
            return None;
        }
        let fields: Vec<u64> = fields
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<_, _>>()
            .ok()?;
        Some(NetDevPackets {
            rx: *fields.get(1)?,
            tx: *fields.get(9)?,
        })
    })
}

/// The machine's CPU time, all CPUs, in clock ticks (the `cpu` line of `/proc/stat`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CpuTicks {
    /// user + nice + system + irq + softirq + steal.
    pub busy: u64,
    /// busy + idle + iowait.
    pub total: u64,
}

impl CpuTicks {
    /// Percent of the CPU time since `earlier` that was busy.
    pub(crate) fn busy_percent_since(self, earlier: Self) -> Option<f64> {
        let total = self.total.checked_sub(earlier.total)?;
        let busy = self.busy.checked_sub(earlier.busy)?;
        (total > 0).then(|| busy as f64 / total as f64 * 100.0)
    }
}

pub(crate) fn parse_proc_stat(text: &str) -> Option<CpuTicks> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    // user nice system idle iowait irq softirq steal (guest time is inside user already).
    let at = |i: usize| f.get(i).copied().unwrap_or(0);
    let busy = at(0) + at(1) + at(2) + at(5) + at(6) + at(7);
    Some(CpuTicks {
        busy,
        total: busy + at(3) + at(4),
    })
}

pub(crate) fn cpu_ticks() -> Option<CpuTicks> {
    parse_proc_stat(&std::fs::read_to_string("/proc/stat").ok()?)
}

/// The kernel's softirq threads (`ksoftirqd/N`): softirq work the kernel defers out of the
/// context that raised it runs there, charged to them.
pub(crate) fn ksoftirqd_pids() -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| comm.starts_with("ksoftirqd/"))
        })
        .collect()
}

/// Their run time so far, nanoseconds (the first field of `/proc/PID/schedstat`).
pub(crate) fn run_time_ns(pids: &[u32]) -> Option<u64> {
    pids.iter().try_fold(0u64, |sum, pid| {
        let text = std::fs::read_to_string(format!("/proc/{pid}/schedstat")).ok()?;
        Some(sum + text.split_whitespace().next()?.parse::<u64>().ok()?)
    })
}

/// What one program (all its loaded copies: each namespace loads its own) cost during a run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct ProgramCost {
    /// Its name in the object.
    pub name: String,
    /// How often it ran (the kernel's `run_cnt`).
    pub runs: u64,
    /// Nanoseconds it ran (the kernel's `run_time_ns`).
    pub run_time_ns: u64,
    /// run_time_ns ÷ runs.
    pub ns_per_run: Option<f64>,
    /// runs ÷ packets that crossed the veth.
    pub runs_per_packet: f64,
    /// run_time_ns ÷ packets.
    pub ns_per_packet: f64,
}

/// The run time and count each program added between two readings, summed over its copies,
/// per packet; in the order the programs first appear in `after`. A copy missing from
/// `before` counts from zero.
pub(crate) fn program_costs(
    before: &[ProgramRunStats],
    after: &[ProgramRunStats],
    packets: u64,
) -> Vec<ProgramCost> {
    let mut costs: Vec<ProgramCost> = Vec::new();
    for program in after {
        let ran = match before.iter().find(|b| b.id == program.id) {
            Some(earlier) => program.since(earlier),
            None => program.clone(),
        };
        let cost = match costs.iter_mut().find(|c| c.name == ran.name) {
            Some(cost) => cost,
            None => {
                costs.push(ProgramCost {
                    name: ran.name.clone(),
                    runs: 0,
                    run_time_ns: 0,
                    ns_per_run: None,
                    runs_per_packet: 0.0,
                    ns_per_packet: 0.0,
                });
                let last = costs.len() - 1;
                &mut costs[last]
            }
        };
        cost.runs += ran.run_count;
        cost.run_time_ns += ran.run_time_ns;
    }
    let packets = packets.max(1) as f64;
    for cost in &mut costs {
        cost.ns_per_run = (cost.runs > 0).then(|| cost.run_time_ns as f64 / cost.runs as f64);
        cost.runs_per_packet = cost.runs as f64 / packets;
        cost.ns_per_packet = cost.run_time_ns as f64 / packets;
    }
    costs
}

#[cfg(test)]
mod tests {
    use super::*;

    const NET_DEV: &str = "\
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:       0       0    0    0    0     0          0         0        0       0    0    0    0     0       0          0
x0-n0: 2871422757   48400    0    0    0     0          0         0   483513    7314    0    0    0     0       0          0
";

    #[test]
    fn net_dev_rows_by_name() {
        let p = parse_net_dev(NET_DEV, "x0-n0").unwrap();
        assert_eq!(
            p,
            NetDevPackets {
                rx: 48400,
                tx: 7314
            }
        );
        assert_eq!(parse_net_dev(NET_DEV, "lo").unwrap().since(p), 0);
        assert_eq!(p.since(NetDevPackets { rx: 400, tx: 314 }), 55_000);
        assert!(
            parse_net_dev(NET_DEV, "x0-n").is_none(),
            "names match whole"
        );
        assert!(parse_net_dev(NET_DEV, "eth0").is_none());
        assert!(
            parse_net_dev("x0-n0: 1 2 3", "x0-n0").is_none(),
            "short row"
        );
    }

    #[test]
    fn proc_stat_busy_share() {
        let a = parse_proc_stat("cpu  100 10 50 800 20 5 15 0 0 0\ncpu0 1 2 3 4\n").unwrap();
        assert_eq!(
            a,
            CpuTicks {
                busy: 180,
                total: 1000
            }
        );
        let b = parse_proc_stat("cpu  200 10 100 850 20 5 15 0 0 0\n").unwrap();
        assert_eq!(b.busy_percent_since(a), Some(150.0 / 200.0 * 100.0));
        assert_eq!(a.busy_percent_since(b), None);
        assert!(parse_proc_stat("intr 1 2 3\n").is_none());
    }

    #[test]
    fn program_costs_sum_copies_and_divide_by_packets() {
        let stats = |name: &str, id, ns, n| ProgramRunStats {
            name: name.into(),
            id,
            run_time_ns: ns,
            run_count: n,
        };
        let before = [
            stats("x0_tc_ingress", 1, 1_000, 10),
            stats("x0_tc_ingress", 3, 0, 0),
        ];
        let after = [
            stats("x0_tc_ingress", 1, 21_000, 110),
            stats("x0_tc_egress", 2, 5_000, 50), // not in `before`: from zero
            stats("x0_tc_ingress", 3, 10_000, 100),
        ];
        let costs = program_costs(&before, &after, 200);
        assert_eq!(costs.len(), 2);
        let ingress = &costs[0];
        assert_eq!(ingress.name, "x0_tc_ingress");
        assert_eq!((ingress.runs, ingress.run_time_ns), (200, 30_000));
        assert_eq!(ingress.ns_per_run, Some(150.0));
        assert_eq!(
            (ingress.runs_per_packet, ingress.ns_per_packet),
            (1.0, 150.0)
        );
        assert_eq!(costs[1].name, "x0_tc_egress");
        assert_eq!(costs[1].ns_per_packet, 25.0);
        let idle = program_costs(&after, &after, 0);
        assert!(
            idle.iter()
                .all(|c| c.ns_per_run.is_none() && c.ns_per_packet == 0.0)
        );
    }
}
