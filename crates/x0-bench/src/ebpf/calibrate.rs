//! The TC counter's cost with warm caches, and what the run-time statistics add to it.
//!
//! `BPF_PROG_TEST_RUN` runs a loaded (not attached) copy of `x0_tc_ingress` on one TCP frame
//! many times in a row and reports the mean time per run, measured by the kernel around the
//! whole loop (time spent preempted is left out). Everything it touches stays in the cache, so
//! this is the program's floor; the same traffic under load costs more per run. Run once with
//! the run-time statistics off and once on, the difference is what the statistics' two clock
//! reads and their counter update add to each run. Only part of that lands inside the window
//! the kernel times (`run_time_ns`): the time the statistics count per warm run, less the
//! time per run with them off (which still holds the test loop's own overhead, so the
//! difference is a lower bound), is their bias in every "with" figure.

use std::time::Duration;

use aya::programs::{SchedClassifier, TestRun, TestRunOptions};
use aya::{Ebpf, EbpfLoader};
use serde::Serialize;
use x0_telemetry::RunTimeStats;

use super::paired::median;

/// Runs per measurement.
const REPEAT: u32 = 200_000;
/// Measurements per side, alternating off/on.
const ROUNDS: usize = 5;

/// What the warm runs cost.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Calibration {
    pub program: &'static str,
    /// The frame run through it: Ethernet + IPv4 + TCP with timestamps + payload.
    pub frame_bytes: usize,
    pub runs_per_measurement: u32,
    pub measurements_per_side: usize,
    /// Median of the measurements with the statistics off, ns per run.
    pub ns_per_run_stats_off: f64,
    /// With the statistics on.
    pub ns_per_run_stats_on: f64,
    /// on − off: what the statistics add to the time of each run.
    pub stats_cost_ns: f64,
    /// What the statistics counted per run during the "on" measurements (their run_time_ns
    /// ÷ run_cnt).
    pub ns_per_run_as_counted: f64,
    /// as counted − off, at least 0: how much the statistics' own clock reads inflate each
    /// counted run (a lower bound).
    pub counted_bias_ns: f64,
}

/// A TCP segment of `payload` bytes from 10.213.0.1 to 10.213.0.2 with a 32-byte TCP header.
pub(crate) fn tcp_frame(payload: usize) -> Vec<u8> {
    let tcp_len = 32;
    let ip_total = u16::try_from(20 + tcp_len + payload).unwrap_or(u16::MAX);
    let mut f = Vec::with_capacity(14 + usize::from(ip_total));
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1, 0x08, 0x00]);
    f.extend_from_slice(&[0x45, 0]);
    f.extend_from_slice(&ip_total.to_be_bytes());
    f.extend_from_slice(&[0, 0, 0x40, 0, 64, 6, 0, 0, 10, 213, 0, 1, 10, 213, 0, 2]);
    f.extend_from_slice(&[0x9c, 0x40, 0x14, 0x51, 0, 0, 0, 1, 0, 0, 0, 1]);
    f.extend_from_slice(&[0x80, 0x10, 0x01, 0xf5, 0, 0, 0, 0]); // doff 8, ACK
    f.extend_from_slice(&[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 1]); // NOP NOP timestamps
    f.resize(f.len() + payload, 0);
    f
}

fn per_run(program: &SchedClassifier, frame: &[u8]) -> Result<Duration, String> {
    let result = program
        .test_run(TestRunOptions {
            data_in: Some(frame),
            repeat: REPEAT,
            ..TestRunOptions::default()
        })
        .map_err(|e| format!("BPF_PROG_TEST_RUN: {e}"))?;
    Ok(result.duration)
}

/// Loads a private copy of the TC counter and measures it; needs root.
pub(crate) fn calibrate() -> Result<Calibration, String> {
    let program_name = x0_telemetry::TC_INGRESS_PROGRAM;
    let mut ebpf: Ebpf = EbpfLoader::new()
        .btf(None)
        .load(x0_telemetry::objects::UNDERLAY)
        .map_err(|e| format!("loading underlay.o: {e}"))?;
    let program: &mut SchedClassifier = ebpf
        .program_mut(program_name)
        .ok_or_else(|| format!("underlay.o has no {program_name}"))?
        .try_into()
        .map_err(|e| format!("{program_name}: {e}"))?;
    program
        .load()
        .map_err(|e| format!("loading {program_name}: {e}"))?;
    let frame = tcp_frame(1448);
    per_run(program, &frame)?; // first insert into the flow table, caches warm
    let counters = |program: &SchedClassifier| {
        program
            .info()
            .map(|i| (i.run_time().as_secs_f64() * 1e9, i.run_count() as f64))
            .map_err(|e| format!("reading {program_name}'s run-time statistics: {e}"))
    };
    let (mut off, mut on, mut counted) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        off.push(per_run(program, &frame)?.as_secs_f64() * 1e9);
        let stats = RunTimeStats::enable().map_err(|e| e.to_string())?;
        let (ns, runs) = counters(program)?;
        on.push(per_run(program, &frame)?.as_secs_f64() * 1e9);
        let (ns_after, runs_after) = counters(program)?;
        drop(stats);
        if runs_after > runs {
            counted.push((ns_after - ns) / (runs_after - runs));
        }
    }
    if counted.is_empty() {
        return Err("the run-time statistics counted no test run".into());
    }
    let (off, on, counted) = (median(&off), median(&on), median(&counted));
    Ok(Calibration {
        program: program_name,
        frame_bytes: frame.len(),
        runs_per_measurement: REPEAT,
        measurements_per_side: ROUNDS,
        ns_per_run_stats_off: off,
        ns_per_run_stats_on: on,
        stats_cost_ns: on - off,
        ns_per_run_as_counted: counted,
        counted_bias_ns: (counted - off).max(0.0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_frame_is_a_full_sized_tcp_segment() {
        let f = tcp_frame(1448);
        assert_eq!(f.len(), 1514);
        assert_eq!(&f[12..14], &[0x08, 0x00]);
        assert_eq!(
            u16::from_be_bytes([f[16], f[17]]),
            1500,
            "IPv4 total length"
        );
        assert_eq!(f[23], 6, "TCP");
        assert_eq!(f[14 + 20 + 12] >> 4, 8, "data offset: 32 bytes");
    }
}
