//! The kernel's own accounting of what each program costs: run time and run count.
//!
//! The kernel keeps, per loaded program, the nanoseconds spent running it and how often it
//! ran (`run_time_ns` and `run_cnt` of `struct bpf_prog_info`), but only while run-time
//! statistics are on: the sysctl `kernel.bpf_stats_enabled`, or a file descriptor from the
//! `BPF_ENABLE_STATS` command (Linux 5.8+). [`RunTimeStats`] holds such a descriptor: the
//! statistics are on while it lives and off again when it is dropped, also when the process
//! dies, so nothing is left changed on the machine. Off, each program run costs nothing
//! extra; on, it costs two clock reads.
//!
//! [`crate::Telemetry::program_run_stats`] reads the counters of the programs a
//! [`crate::Telemetry`] loaded (`BPF_OBJ_GET_INFO_BY_FD` on each program's descriptor).

use std::os::fd::OwnedFd;

use crate::TelemetryError;

/// Keeps the kernel's BPF run-time statistics on while it lives (needs CAP_SYS_ADMIN).
#[derive(Debug)]
pub struct RunTimeStats {
    _enabled: OwnedFd,
}

impl RunTimeStats {
    /// Turns the statistics on until the value is dropped. Other holders (the sysctl, another
    /// process) keep them on independently: the kernel counts its holders.
    pub fn enable() -> Result<Self, TelemetryError> {
        aya::sys::enable_stats(aya::sys::Stats::RunTime)
            .map(|fd| Self { _enabled: fd })
            .map_err(|e| TelemetryError::RunTimeStats { cause: e.io_error })
    }
}

/// One loaded program's cumulative run time and run count, as the kernel keeps them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgramRunStats {
    /// The program's name in its object (`x0_tc_ingress`, …).
    pub name: String,
    /// The kernel's id of the program.
    pub id: u32,
    /// Nanoseconds spent running it while statistics were on.
    pub run_time_ns: u64,
    /// Times it ran while statistics were on.
    pub run_count: u64,
}

impl ProgramRunStats {
    /// The run time and count accumulated since `earlier` (a reading of the same program);
    /// never below zero.
    pub fn since(&self, earlier: &Self) -> Self {
        Self {
            name: self.name.clone(),
            id: self.id,
            run_time_ns: self.run_time_ns.saturating_sub(earlier.run_time_ns),
            run_count: self.run_count.saturating_sub(earlier.run_count),
        }
    }

    /// Mean nanoseconds per run; `None` when it did not run.
    pub fn ns_per_run(&self) -> Option<f64> {
        (self.run_count > 0).then(|| self.run_time_ns as f64 / self.run_count as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differences_never_go_below_zero() {
        let stats = |ns, n| ProgramRunStats {
            name: "x0_tc_ingress".into(),
            id: 7,
            run_time_ns: ns,
            run_count: n,
        };
        let d = stats(1_500, 10).since(&stats(500, 4));
        assert_eq!((d.run_time_ns, d.run_count), (1_000, 6));
        assert_eq!(d.ns_per_run(), Some(1_000.0 / 6.0));
        let reset = stats(10, 1).since(&stats(500, 4));
        assert_eq!((reset.run_time_ns, reset.run_count), (0, 0));
        assert_eq!(reset.ns_per_run(), None);
    }
}
