//! The kernel tools the lab drives (`ip`, `nft`, `tc`), and the checks made before using them.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

/// A tool the lab needs, and the Debian package that ships it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tool {
    /// Program name, looked up on `PATH`.
    pub program: &'static str,
    /// Debian package to install it from.
    pub package: &'static str,
}

/// iproute2's `ip`.
pub const IP: Tool = Tool {
    program: "ip",
    package: "iproute2",
};
/// nftables' `nft` (loss injection).
pub const NFT: Tool = Tool {
    program: "nft",
    package: "nftables",
};
/// iproute2's `tc` (rate limits).
pub const TC: Tool = Tool {
    program: "tc",
    package: "iproute2",
};

/// Why the lab cannot run here.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PreflightError {
    /// Not running as root.
    #[error(
        "the lab creates network namespaces and needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN); \
         run it as root"
    )]
    NotRoot,
    /// A program is not on `PATH`.
    #[error("`{program}` not found on PATH: install it with `apt-get install -y {package}`")]
    MissingTool {
        /// The program.
        program: &'static str,
        /// The Debian package.
        package: &'static str,
    },
}

/// Full path of a program on `PATH` (plus the sbin directories, which a non-login root shell
/// may lack).
pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// True when the effective user is root.
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Checks root and the tools the lab cannot do without (`ip`, `nft`).
pub fn preflight() -> Result<(), PreflightError> {
    if !is_root() {
        return Err(PreflightError::NotRoot);
    }
    for tool in [IP, NFT] {
        require(tool)?;
    }
    Ok(())
}

/// Checks that one tool is installed.
pub fn require(tool: Tool) -> Result<PathBuf, PreflightError> {
    which(tool.program).ok_or(PreflightError::MissingTool {
        program: tool.program,
        package: tool.package,
    })
}

/// A command that failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError {
    /// It could not be started.
    #[error("could not run `{command}`: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// Why.
        source: std::io::Error,
    },
    /// It exited with a failure.
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        /// The command line.
        command: String,
        /// Exit status.
        status: String,
        /// What it printed on stderr (trimmed).
        stderr: String,
    },
}

fn shown(program: &str, args: &[&str]) -> String {
    std::iter::once(program)
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs a command to completion, with optional stdin, and returns its output on success.
pub fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<Output, CommandError> {
    let command = shown(program, args);
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|source| CommandError::Spawn {
        command: command.clone(),
        source,
    })?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())
            .map_err(|source| CommandError::Spawn {
                command: command.clone(),
                source,
            })?;
    }
    let out = child
        .wait_with_output()
        .map_err(|source| CommandError::Spawn {
            command: command.clone(),
            source,
        })?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(CommandError::Failed {
            command: if stdin.is_some() {
                format!("{command} <<< {}", stdin.unwrap_or_default().trim())
            } else {
                command
            },
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

/// Runs `ip args…`.
pub fn ip(args: &[&str]) -> Result<Output, CommandError> {
    run(IP.program, args, None)
}

/// Runs `ip [-n netns] -batch -` with one command per line.
pub fn ip_batch(netns: Option<&str>, lines: &[String]) -> Result<(), CommandError> {
    if lines.is_empty() {
        return Ok(());
    }
    let mut args = Vec::new();
    if let Some(ns) = netns {
        args.extend(["-n", ns]);
    }
    args.extend(["-batch", "-"]);
    let mut text = lines.join("\n");
    text.push('\n');
    run(IP.program, &args, Some(&text)).map(drop)
}

/// Namespaces that exist now (`ip netns list`).
pub fn netns_list() -> Result<Vec<String>, CommandError> {
    let out = ip(&["netns", "list"])?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect())
}

/// PIDs of processes whose network namespace is `netns` (`ip netns pids`).
pub fn netns_pids(netns: &str) -> Result<Vec<u32>, CommandError> {
    let out = ip(&["netns", "pids", netns])?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect())
}
