//! Why telemetry could not start or be read.

use std::error::Error;
use std::fmt;
use std::path::PathBuf;

/// Why [`crate::Telemetry::start`] or a read failed. The message is a complete sentence for a
/// log line, with the kernel's reason at the end.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TelemetryError {
    /// The configuration cannot work.
    #[error("telemetry config `{key}`: {reason}")]
    Config {
        /// The offending field.
        key: &'static str,
        /// What is wrong and what is allowed.
        reason: String,
    },
    /// The process lacks the capabilities the programs need.
    #[error(
        "eBPF telemetry needs root or {}; this process lacks {}",
        needed.join(" + "),
        missing.join(", ")
    )]
    PermissionDenied {
        /// What the configured programs need.
        needed: Vec<&'static str>,
        /// Which of those this process does not have.
        missing: Vec<&'static str>,
    },
    /// The kernel's BTF could not be read (the tracepoints need it: `CONFIG_DEBUG_INFO_BTF`).
    #[error("reading the kernel's BTF at {path}: {}", Chain(cause.as_ref()))]
    KernelBtf {
        /// Where it was looked for.
        path: &'static str,
        /// Why it could not be used.
        cause: Box<dyn Error + Send + Sync>,
    },
    /// The kernel refused an object (its maps, usually).
    #[error("loading {object} into the kernel: {}", Chain(cause.as_ref()))]
    Load {
        /// The object (`underlay.o`, `tracepoints.o`).
        object: &'static str,
        /// The loader's error.
        cause: Box<aya::EbpfError>,
    },
    /// An embedded object lacks a program or map this crate expects: a build mistake.
    #[error("the embedded eBPF objects have no `{item}` (rebuild them with bpf/build.sh)")]
    MissingInObject {
        /// The program or map name.
        item: &'static str,
    },
    /// The kernel refused to verify or attach a program.
    #[error("{action} eBPF program {program} ({target}): {}", Chain(cause.as_ref()))]
    Program {
        /// The program's name.
        program: &'static str,
        /// `loading` or `attaching`.
        action: &'static str,
        /// The interface or tracepoint.
        target: String,
        /// The loader's error (with the verifier's last lines when it refused).
        cause: Box<aya::programs::ProgramError>,
    },
    /// A configured interface does not exist.
    #[error("no network interface `{name}`{}: {cause}", in_netns(netns))]
    NoSuchInterface {
        /// The name given.
        name: String,
        /// The namespace it was looked up in.
        netns: Option<PathBuf>,
        /// The lookup's error.
        cause: nix::Error,
    },
    /// The configured network namespace could not be entered.
    #[error("entering network namespace {}: {cause}", path.display())]
    Netns {
        /// Its path.
        path: PathBuf,
        /// Why not.
        cause: std::io::Error,
    },
    /// A map could not be read.
    #[error("reading eBPF map {map}: {}", Chain(cause.as_ref()))]
    Map {
        /// The map's name.
        map: &'static str,
        /// The loader's error.
        cause: Box<aya::maps::MapError>,
    },
    /// The kernel refused to turn on BPF run-time statistics (`BPF_ENABLE_STATS`, Linux 5.8+,
    /// CAP_SYS_ADMIN).
    #[error("turning on the kernel's BPF run-time statistics: {cause}")]
    RunTimeStats {
        /// The syscall's error.
        cause: std::io::Error,
    },
    /// The kernel's information on a loaded program could not be read.
    #[error("reading the kernel's information on eBPF program {program}: {}", Chain(cause.as_ref()))]
    ProgramInfo {
        /// The program's name.
        program: String,
        /// The loader's error.
        cause: Box<aya::programs::ProgramError>,
    },
}

impl TelemetryError {
    /// True when the process lacks privileges: missing capabilities, or the kernel answered
    /// `EPERM`/`EACCES` (a container's user namespace, lockdown, an LSM). The daemon then
    /// runs on without eBPF and reports `x0t_ebpf_enabled 0`.
    pub fn is_permission_error(&self) -> bool {
        let cause: &(dyn Error + 'static) = match self {
            Self::PermissionDenied { .. } => return true,
            Self::Config { .. } | Self::MissingInObject { .. } => return false,
            Self::KernelBtf { cause, .. } => cause.as_ref(),
            Self::Load { cause, .. } => cause.as_ref(),
            Self::Program { cause, .. } => cause.as_ref(),
            Self::NoSuchInterface { cause, .. } => cause,
            Self::Netns { cause, .. } => cause,
            Self::Map { cause, .. } => cause.as_ref(),
            Self::RunTimeStats { cause } => cause,
            Self::ProgramInfo { cause, .. } => cause.as_ref(),
        };
        chain_has_permission_error(cause)
    }
}

fn in_netns(netns: &Option<PathBuf>) -> String {
    netns
        .as_ref()
        .map(|p| format!(" in network namespace {}", p.display()))
        .unwrap_or_default()
}

fn is_permission_errno(errno: Option<i32>) -> bool {
    matches!(errno, Some(libc_errno::EPERM | libc_errno::EACCES))
}

mod libc_errno {
    pub(super) const EPERM: i32 = nix::errno::Errno::EPERM as i32;
    pub(super) const EACCES: i32 = nix::errno::Errno::EACCES as i32;
}

fn chain_has_permission_error(mut error: &(dyn Error + 'static)) -> bool {
    loop {
        let errno = match (
            error.downcast_ref::<std::io::Error>(),
            error.downcast_ref::<nix::Error>(),
        ) {
            (Some(io), _) => io.raw_os_error(),
            (None, Some(errno)) => Some(*errno as i32),
            (None, None) => None,
        };
        if is_permission_errno(errno) {
            return true;
        }
        match error.source() {
            Some(next) => error = next,
            None => return false,
        }
    }
}

/// Longest part of a cause printed; verifier logs can run to megabytes, and their end says why.
const MAX_PART: usize = 2000;

/// Prints an error and its sources as `a: b: c`, each part cut to its last [`MAX_PART`] bytes.
struct Chain<'a>(&'a (dyn Error + 'a));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut next: Option<&dyn Error> = Some(self.0);
        let mut previous = String::new();
        let mut first = true;
        while let Some(error) = next {
            let text = error.to_string();
            // thiserror's `transparent` and messages that embed their source repeat it.
            if !previous.contains(&text) {
                if !first {
                    f.write_str(": ")?;
                }
                f.write_str(tail(&text, MAX_PART))?;
                first = false;
            }
            previous = text;
            next = error.source();
        }
        Ok(())
    }
}

fn tail(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

#[cfg(test)]
mod tests {
    use super::*;
    use aya::programs::ProgramError;
    use aya::sys::SyscallError;

    fn syscall(errno: i32) -> ProgramError {
        ProgramError::SyscallError(SyscallError {
            call: "bpf_link_create",
            io_error: std::io::Error::from_raw_os_error(errno),
        })
    }

    fn attach_error(errno: i32) -> TelemetryError {
        TelemetryError::Program {
            program: "x0_xdp_count",
            action: "attaching",
            target: "eth0".into(),
            cause: Box::new(syscall(errno)),
        }
    }

    #[test]
    fn kernel_eperm_and_eacces_are_permission_errors() {
        assert!(attach_error(1).is_permission_error());
        assert!(attach_error(13).is_permission_error());
        // EBUSY (another XDP program on the device) is not.
        assert!(!attach_error(16).is_permission_error());
        let e = TelemetryError::Load {
            object: "underlay.o",
            cause: Box::new(aya::EbpfError::MapError(aya::maps::MapError::CreateError {
                name: "x0_flows".into(),
                io_error: std::io::Error::from_raw_os_error(1),
            })),
        };
        assert!(e.is_permission_error(), "{e}");
        let e = TelemetryError::NoSuchInterface {
            name: "eth9".into(),
            netns: None,
            cause: nix::Error::ENODEV,
        };
        assert!(!e.is_permission_error());
    }

    #[test]
    fn missing_capabilities_read_as_a_sentence() {
        let e = TelemetryError::PermissionDenied {
            needed: vec!["CAP_BPF", "CAP_NET_ADMIN"],
            missing: vec!["CAP_BPF"],
        };
        assert!(e.is_permission_error());
        assert_eq!(
            e.to_string(),
            "eBPF telemetry needs root or CAP_BPF + CAP_NET_ADMIN; this process lacks CAP_BPF"
        );
    }

    #[test]
    fn messages_carry_the_kernel_reason_once() {
        let text = attach_error(16).to_string();
        assert!(
            text.starts_with("attaching eBPF program x0_xdp_count (eth0): "),
            "{text}"
        );
        assert!(text.contains("bpf_link_create"), "{text}");
        assert!(text.contains("Device or resource busy"), "{text}");
        assert_eq!(text.matches("Device or resource busy").count(), 1, "{text}");
        let e = TelemetryError::NoSuchInterface {
            name: "eth9".into(),
            netns: Some("/run/netns/a".into()),
            cause: nix::Error::ENODEV,
        };
        assert_eq!(
            e.to_string(),
            "no network interface `eth9` in network namespace /run/netns/a: ENODEV: No such device"
        );
    }

    #[test]
    fn long_causes_keep_their_end() {
        let long = format!("{}the reason", "x".repeat(5000));
        assert_eq!(tail(&long, 10), "the reason");
        assert_eq!(tail("short", 10), "short");
        assert_eq!(tail("ééé", 3), "é");
    }
}
