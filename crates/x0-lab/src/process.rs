//! Processes by PID: reading `/proc/PID/stat`, and stopping a process only if it is still the
//! one that was started (same PID *and* same start time, so a recycled PID is never hit).

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// What `/proc/PID/stat` says about a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    /// State letter (`R`, `S`, `Z`, …).
    pub state: char,
    /// User-mode CPU time, in clock ticks.
    pub utime: u64,
    /// Kernel-mode CPU time, in clock ticks.
    pub stime: u64,
    /// Start time after boot, in clock ticks: with the PID, it identifies the process.
    pub start_time: u64,
}

impl ProcStat {
    /// Reads `/proc/<pid>/stat`; `None` if there is no such process.
    pub fn read(pid: u32) -> Option<Self> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        Self::parse(&text)
    }

    /// Parses the text of a `/proc/PID/stat` file.
    pub fn parse(text: &str) -> Option<Self> {
        // The command name (field 2) is in parentheses and may itself hold spaces or ')'.
        let rest = &text[text.rfind(')')? + 1..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        // `rest` starts at field 3 (state): field n is f[n - 3].
        Some(Self {
            state: f.first()?.chars().next()?,
            utime: f.get(11)?.parse().ok()?,
            stime: f.get(12)?.parse().ok()?,
            start_time: f.get(19)?.parse().ok()?,
        })
    }

    /// User plus kernel CPU time, in clock ticks.
    pub fn cpu_ticks(&self) -> u64 {
        self.utime + self.stime
    }
}

/// Clock ticks per second for `/proc` times (`sysconf(_SC_CLK_TCK)`; 100 on Linux x86_64 and
/// arm64, which is what the kernel's USER_HZ is fixed to there).
pub const CLOCK_TICKS_PER_SECOND: u64 = 100;

/// A process the lab started: enough to find it again from another process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessRecord {
    /// Process ID.
    pub pid: u32,
    /// Start time from `/proc/PID/stat`, to refuse a recycled PID.
    pub start_time: u64,
    /// Index of the node whose namespace it runs in.
    pub node: usize,
    /// A short label (e.g. `iperf3-server`, `x0t`).
    pub label: String,
    /// The command line, as started inside the namespace.
    pub argv: Vec<String>,
}

impl ProcessRecord {
    /// True while the process is alive (not a zombie) and still the one that was started.
    pub fn is_running(&self) -> bool {
        is_same_and_alive(self.pid, self.start_time)
    }
}

/// True when `pid` exists, is not a zombie, and started at `start_time`.
pub fn is_same_and_alive(pid: u32, start_time: u64) -> bool {
    ProcStat::read(pid).is_some_and(|s| s.start_time == start_time && s.state != 'Z')
}

/// How a stop request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// It was gone already (or its PID now belongs to another process, which was left alone).
    AlreadyGone,
    /// It ended after SIGTERM.
    Terminated,
    /// It needed SIGKILL.
    Killed,
}

fn signal(pid: u32, sig: rustix::process::Signal) {
    if let Some(p) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    {
        // ESRCH (gone meanwhile) is fine: the caller only waits for it to disappear.
        let _ = rustix::process::kill_process(p, sig);
    }
}

/// Stops the process `pid` if it is still the one started at `start_time`: SIGTERM, then
/// SIGKILL after `grace`. `reap` is called while waiting so a parent can collect its child.
pub fn stop(pid: u32, start_time: u64, grace: Duration, mut reap: impl FnMut()) -> Stopped {
    if !is_same_and_alive(pid, start_time) {
        reap();
        return Stopped::AlreadyGone;
    }
    signal(pid, rustix::process::Signal::TERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        reap();
        if !is_same_and_alive(pid, start_time) {
            // It may have turned into a zombie after the reap above: collect it.
            reap();
            return Stopped::Terminated;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    signal(pid, rustix::process::Signal::KILL);
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        reap();
        if !is_same_and_alive(pid, start_time) {
            reap();
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Stopped::Killed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_command_names() {
        let line = "4242 (my (odd) cmd) S 1 4242 4242 0 -1 4194560 100 0 0 0 \
                    17 5 0 0 20 0 1 0 987654 1000 100 18446744073709551615";
        let s = ProcStat::parse(line).unwrap();
        assert_eq!(s.state, 'S');
        assert_eq!(s.utime, 17);
        assert_eq!(s.stime, 5);
        assert_eq!(s.start_time, 987654);
        assert_eq!(s.cpu_ticks(), 22);
        assert!(ProcStat::parse("1 (x) S 1").is_none());
    }

    #[test]
    fn own_process_is_readable_and_a_wrong_start_time_is_refused() {
        let me = std::process::id();
        let s = ProcStat::read(me).unwrap();
        assert!(is_same_and_alive(me, s.start_time));
        assert!(!is_same_and_alive(me, s.start_time + 1));
        // A wrong start time means "not ours": nothing is signalled.
        assert_eq!(
            stop(me, s.start_time + 1, Duration::ZERO, || ()),
            Stopped::AlreadyGone
        );
    }

    #[test]
    fn stops_a_child() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id();
        let start = ProcStat::read(pid).unwrap().start_time;
        let r = stop(pid, start, Duration::from_secs(2), || {
            let _ = child.try_wait();
        });
        assert_eq!(r, Stopped::Terminated);
        assert!(!is_same_and_alive(pid, start));
        // Reaped, not left as a zombie.
        assert!(ProcStat::read(pid).is_none());
    }
}
