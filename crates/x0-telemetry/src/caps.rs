//! Which capabilities loading the programs needs, and whether this process has them.
//!
//! Checked before any `bpf()` call so that the common case, a daemon run without root, gets
//! one clear sentence instead of an `EPERM` from the middle of the loader. The kernel still
//! has the last word (a container's user namespace, a lockdown mode, an LSM): its refusals are
//! classified by [`crate::TelemetryError::is_permission_error`] too.

/// A Linux capability, by number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Capability {
    pub(crate) name: &'static str,
    bit: u32,
}

pub(crate) const CAP_NET_ADMIN: Capability = Capability {
    name: "CAP_NET_ADMIN",
    bit: 12,
};
pub(crate) const CAP_SYS_ADMIN: Capability = Capability {
    name: "CAP_SYS_ADMIN",
    bit: 21,
};
pub(crate) const CAP_PERFMON: Capability = Capability {
    name: "CAP_PERFMON",
    bit: 38,
};
pub(crate) const CAP_BPF: Capability = Capability {
    name: "CAP_BPF",
    bit: 39,
};

/// The effective capability set from the text of `/proc/self/status` (`CapEff:` line).
pub(crate) fn effective_from_status(status: &str) -> Option<u64> {
    let line = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(line.trim(), 16).ok()
}

/// The capabilities in `needed` that `effective` lacks. CAP_SYS_ADMIN stands in for CAP_BPF
/// and CAP_PERFMON (kernels before 5.8 know only it), not for CAP_NET_ADMIN.
pub(crate) fn missing(effective: u64, needed: &[Capability]) -> Vec<&'static str> {
    let has = |c: Capability| effective >> c.bit & 1 == 1;
    let covered = |c: Capability| has(c) || (c != CAP_NET_ADMIN && has(CAP_SYS_ADMIN));
    needed
        .iter()
        .filter(|c| !covered(**c))
        .map(|c| c.name)
        .collect()
}

/// What the configured programs need: the underlay counters (TC or XDP) need CAP_BPF and
/// CAP_NET_ADMIN, tracing programs CAP_BPF and CAP_PERFMON.
pub(crate) fn needed(underlay: bool, tracepoints: bool) -> Vec<Capability> {
    let mut out = Vec::new();
    if underlay || tracepoints {
        out.push(CAP_BPF);
    }
    if underlay {
        out.push(CAP_NET_ADMIN);
    }
    if tracepoints {
        out.push(CAP_PERFMON);
    }
    out
}

/// This process's effective capabilities, or `None` when `/proc` does not say.
pub(crate) fn effective() -> Option<u64> {
    effective_from_status(&std::fs::read_to_string("/proc/self/status").ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Name:\tx0t\nUmask:\t0022\nCapInh:\t0000000000000000\n\
        CapPrm:\t000001ffffffffff\nCapEff:\t000001ffffffffff\nCapBnd:\t000001ffffffffff\n";

    #[test]
    fn parses_the_effective_set() {
        assert_eq!(effective_from_status(STATUS), Some(0x1ff_ffff_ffff));
        assert_eq!(
            effective_from_status("CapEff:\t0000000000000000\n"),
            Some(0)
        );
        assert_eq!(effective_from_status("Name: x\n"), None);
        assert_eq!(effective_from_status("CapEff:\tzz\n"), None);
    }

    #[test]
    fn root_lacks_nothing() {
        assert!(missing(0x1ff_ffff_ffff, &needed(true, true)).is_empty());
    }

    #[test]
    fn an_unprivileged_process_lacks_each_needed_capability() {
        assert_eq!(
            missing(0, &needed(true, true)),
            vec!["CAP_BPF", "CAP_NET_ADMIN", "CAP_PERFMON"]
        );
        assert_eq!(
            missing(0, &needed(false, true)),
            vec!["CAP_BPF", "CAP_PERFMON"]
        );
        assert_eq!(
            missing(0, &needed(true, false)),
            vec!["CAP_BPF", "CAP_NET_ADMIN"]
        );
    }

    #[test]
    fn fine_grained_and_sys_admin_sets() {
        let bpf_perfmon = 1 << 39 | 1 << 38;
        assert!(missing(bpf_perfmon, &needed(false, true)).is_empty());
        assert_eq!(
            missing(bpf_perfmon, &needed(true, false)),
            vec!["CAP_NET_ADMIN"]
        );
        let sys_admin = 1 << 21;
        assert!(missing(sys_admin, &needed(false, true)).is_empty());
        assert_eq!(
            missing(sys_admin, &needed(true, true)),
            vec!["CAP_NET_ADMIN"]
        );
        assert!(missing(sys_admin | 1 << 12, &needed(true, true)).is_empty());
    }
}
