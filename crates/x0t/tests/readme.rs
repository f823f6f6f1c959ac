//! The README's commands, run as written, so that they cannot drift from the program:
//! the `sh` block of "A mesh by hand" (two daemons, a join, a link, the CLI and `/metrics`),
//! and the first block's install and test commands, which `.ci/run` must run too.

use std::io::Read as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const README: &str = include_str!("../../../README.md");
const CI: &str = include_str!("../../../.ci/run");

/// The lines of the first ```sh block after the heading `heading`.
fn sh_block(heading: &str) -> Vec<&'static str> {
    let start = README
        .find(&format!("\n{heading}\n"))
        .unwrap_or_else(|| panic!("README.md has no heading {heading:?}"));
    let rest = &README[start..];
    let open = rest.find("```sh\n").expect("no ```sh block") + "```sh\n".len();
    let close = rest[open..].find("```").expect("an unclosed ```sh block");
    rest[open..open + close].lines().collect()
}

/// The block of "A mesh by hand" as a script for `bash`: state under `work` instead of
/// `/tmp`, the test's own `x0t` binary on `PATH` instead of the release build (checked to be
/// the documented `cargo build` line), every daemon in the background with its log and PID
/// recorded (so that the test stops exactly those), a wait for each daemon's start line where
/// the README sleeps, and, where the README switches to "another terminal", a wait until the
/// link is up and measured.
fn mesh_script(work: &Path, x0t_dir: &Path) -> String {
    let work = work.display();
    let mut script = format!(
        "set -euo pipefail\n\
         export PATH={x0t_dir}:$PATH X0T_LOG=info,quinn=warn,rustls=warn\n\
         cd {work}\n\
         wait_for() {{ # file text\n\
           for _ in $(seq 1 400); do grep -q \"$2\" \"$1\" 2>/dev/null && return 0; sleep 0.05; done\n\
           echo \"timed out waiting for '$2' in $1:\" >&2; cat \"$1\" >&2; return 1\n\
         }}\n\
         wait_measured() {{ # API address: a link with an RTT\n\
           for _ in $(seq 1 400); do\n\
             x0t links --api \"$1\" --json 2>/dev/null | grep -q '\"rtt_ms\": [0-9]' && return 0\n\
             sleep 0.05\n\
           done\n\
           echo \"no measured link at $1\" >&2; return 1\n\
         }}\n",
        x0t_dir = x0t_dir.display()
    );
    let mut daemons = 0;
    let mut build_line = false;
    for line in sh_block("## A mesh by hand") {
        if line.starts_with("cargo build") {
            assert!(
                line.contains("-p x0t") && line.contains("export PATH="),
                "the build line changed: {line}"
            );
            build_line = true;
            continue;
        }
        if line.starts_with("# In another terminal") {
            script.push_str("wait_measured 127.0.0.1:5471\nwait_measured 127.0.0.1:5472\n");
        }
        let line = line.replace("/tmp/", &format!("{work}/"));
        if let Some(rest) = line.strip_prefix("x0t up ") {
            let command = rest.split(['&', '#']).next().unwrap_or_default().trim();
            let log = format!("{work}/daemon{daemons}.log");
            daemons += 1;
            script.push_str(&format!(
                "x0t up {command} >{log} 2>&1 & echo $! >>{work}/pids\nwait_for {log} 'x0t up'\n"
            ));
            continue;
        }
        script.push_str(&line);
        script.push('\n');
    }
    assert!(build_line, "no `cargo build` line in the block");
    assert_eq!(daemons, 2, "the block should start two daemons");
    script
}

/// Stops the daemons the script started, by the PIDs it recorded.
struct Pids(std::path::PathBuf);

impl Drop for Pids {
    fn drop(&mut self) {
        let pids = std::fs::read_to_string(&self.0).unwrap_or_default();
        for pid in pids.split_whitespace() {
            let _ = Command::new("kill").arg(pid).status();
        }
    }
}

#[test]
fn a_mesh_by_hand_runs_as_written() {
    if x0_lab::tools::which("curl").is_none() {
        eprintln!("SKIPPED a_mesh_by_hand: `curl` missing: apt-get install -y curl");
        return;
    }
    for port in [7101, 7102, 5471, 5472] {
        let tcp = std::net::TcpListener::bind(("127.0.0.1", port));
        let udp = std::net::UdpSocket::bind(("127.0.0.1", port));
        assert!(
            tcp.is_ok() && udp.is_ok(),
            "port {port} on 127.0.0.1, which the README's example uses, is taken here"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let x0t = Path::new(env!("CARGO_BIN_EXE_x0t"));
    let script = mesh_script(dir.path(), x0t.parent().unwrap());
    let pids = Pids(dir.path().join("pids"));
    let mut child = Command::new("bash")
        .args(["-c", &script])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (mut out, mut err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = out.read_to_string(&mut text);
        text
    });
    let err_reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = err.read_to_string(&mut text);
        text
    });
    let deadline = Instant::now() + Duration::from_secs(90);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    drop(pids);
    let (out, err) = (reader.join().unwrap(), err_reader.join().unwrap());
    let logs: String = ["daemon0.log", "daemon1.log"]
        .iter()
        .map(|f| {
            let text = std::fs::read_to_string(dir.path().join(f)).unwrap_or_default();
            format!("--- {f}\n{text}")
        })
        .collect();
    let context = format!("script:\n{script}\nstdout:\n{out}\nstderr:\n{err}\n{logs}");
    assert!(
        status.success(),
        "the README's block failed ({status}):\n{context}"
    );
    // What the README says each step shows.
    assert!(
        logs.contains("link up") && logs.contains("kx_group=X25519MLKEM768"),
        "{context}"
    );
    assert!(
        out.contains("X25519MLKEM768") && out.contains("EXCELLENT"),
        "{context}"
    );
    assert!(out.contains("health:        ok"), "{context}");
    assert!(out.contains("x0t_link_rtt_seconds{peer="), "{context}");
}

#[test]
fn ci_runs_the_readme_install_and_test_commands() {
    let first = README.find("```sh\n").unwrap();
    let block: Vec<&str> = README[first + 6..]
        .lines()
        .take_while(|l| !l.starts_with("```"))
        .collect();
    let command = |l: &str| l.split(" #").next().unwrap_or_default().trim().to_owned();
    let install = block
        .iter()
        .find(|l| l.starts_with("cargo install"))
        .map(|l| command(l))
        .expect("the README's first block installs the test runner");
    let test = block
        .iter()
        .find(|l| l.starts_with("cargo nextest run"))
        .map(|l| command(l))
        .expect("the README's first block has the test command");
    for c in [&install, &test] {
        assert!(
            CI.lines().any(|l| l.contains(c.as_str())),
            ".ci/run does not run the README's `{c}`"
        );
    }
    // Every apt package the README names is installed by .ci/run.
    let apt_line = CI
        .lines()
        .skip_while(|l| !l.contains("apt-get install"))
        .take_while(|l| !l.trim().is_empty() && !l.starts_with("fi"))
        .collect::<Vec<_>>()
        .join(" ");
    let readme = README.split_whitespace().collect::<Vec<_>>().join(" ");
    for (i, _) in readme.match_indices("apt-get install -y ") {
        let rest = &readme[i + "apt-get install -y ".len()..];
        let end = rest.find(['`', ')', '#', '\n']).unwrap_or(rest.len());
        for package in rest[..end].split_whitespace() {
            assert!(
                apt_line.split_whitespace().any(|p| p == package),
                "README.md names the apt package {package}, which .ci/run does not install"
            );
        }
    }
}

#[test]
fn every_repository_path_the_docs_name_exists() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut docs = vec![root.join("README.md")];
    for entry in std::fs::read_dir(root.join("docs")).unwrap().flatten() {
        docs.push(entry.path());
    }
    let mut missing = Vec::new();
    for doc in &docs {
        let text = std::fs::read_to_string(doc).unwrap();
        // Leave out example output (```text blocks): it may name files of the reader's own.
        let mut in_output = false;
        let prose: String = text
            .lines()
            .filter(|l| {
                if l.starts_with("```") {
                    in_output = *l == "```text";
                    return false;
                }
                !in_output
            })
            .collect::<Vec<_>>()
            .join("\n");
        for token in prose.split(|c: char| c.is_whitespace() || "`()[]<>\"',;".contains(c)) {
            let path = token.trim_end_matches(['.', ':']);
            let ours = [
                "crates/",
                "docs/",
                "deploy/",
                "examples/",
                "scenarios/",
                "fuzz/",
                ".ci/",
            ]
            .iter()
            .any(|p| path.starts_with(p));
            if ours
                && !path.contains(['*', '{', '…'])
                && !root
                    .join(path.split('#').next().unwrap_or_default())
                    .exists()
            {
                missing.push(format!("{}: {path}", doc.display()));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "paths the docs name that do not exist:\n{}",
        missing.join("\n")
    );
}
