//! `x0t lab` and `x0t bench throughput` through the binary, against the real kernel.
//! Skipped (with a message) when not root or when `ip`/`nft` are missing.

mod support;

use support::{run, run_json, stderr, stdout};

fn lab_or_skip(test: &str) -> Option<String> {
    if let Err(e) = x0_lab::preflight() {
        eprintln!("SKIPPED {test}: {e}");
        return None;
    }
    Some(format!("c{}_{test}", std::process::id()))
}

fn namespaces(prefix: &str) -> Vec<String> {
    x0_lab::tools::netns_list()
        .unwrap()
        .into_iter()
        .filter(|n| n.starts_with(prefix))
        .collect()
}

#[test]
fn lab_up_exec_loss_link_down() {
    let Some(name) = lab_or_skip("cli") else {
        return;
    };
    let prefix = format!("x0lab-{name}-");
    let v = run_json(&[
        "lab",
        "up",
        "--nodes",
        "3",
        "--topology",
        "line",
        "--name",
        &name,
        "--underlay-routes",
        "--json",
    ]);
    assert_eq!(v["nodes"].as_array().unwrap().len(), 3);
    assert_eq!(v["links"][1]["addr_a"], "10.213.0.5/30");
    assert_eq!(namespaces(&prefix).len(), 3);

    let ok = run(&[
        "lab",
        "exec",
        "--name",
        &name,
        "n0",
        "--",
        "ping",
        "-c",
        "1",
        "-W",
        "2",
        "10.214.0.3",
    ]);
    assert!(ok.status.success(), "{}{}", stdout(&ok), stderr(&ok));
    // The command's exit code comes back.
    let fail = run(&[
        "lab", "exec", "--name", &name, "n1", "--", "sh", "-c", "exit 3",
    ]);
    assert_eq!(fail.status.code(), Some(3));
    let unknown = run(&["lab", "exec", "--name", &name, "n7", "--", "true"]);
    assert_eq!(unknown.status.code(), Some(64), "{}", stderr(&unknown));

    let loss = run(&["lab", "loss", "--name", &name, "n1", "n2", "100"]);
    assert!(loss.status.success(), "{}", stderr(&loss));
    let cut = run(&[
        "lab",
        "exec",
        "--name",
        &name,
        "n0",
        "--",
        "ping",
        "-c",
        "2",
        "-i",
        "0.2",
        "-W",
        "1",
        "10.214.0.3",
    ]);
    assert!(!cut.status.success());
    assert!(
        run(&["lab", "loss", "--name", &name, "n1", "n2", "0"])
            .status
            .success()
    );
    assert!(
        run(&["lab", "link", "--name", &name, "n0", "n1", "down"])
            .status
            .success()
    );
    let status = run_json(&["lab", "status", "--name", &name, "--json"]);
    assert_eq!(status["links"][0]["up"], false);
    assert_eq!(status["links"][1]["loss_a_to_b"], 0);

    // A second lab with the same name is a usage error and leaves the first alone.
    let dup = run(&["lab", "up", "--nodes", "2", "--name", &name]);
    assert_eq!(dup.status.code(), Some(64), "{}", stderr(&dup));
    assert_eq!(namespaces(&prefix).len(), 3);

    let down = run_json(&["lab", "down", "--name", &name, "--json"]);
    assert_eq!(
        down["labs"][0]["namespaces_deleted"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    assert!(namespaces(&prefix).is_empty());
}

#[test]
fn daemons_flag_refuses_until_the_data_plane_exists() {
    // Refused before anything is created, root or not.
    let o = run(&[
        "lab",
        "up",
        "--nodes",
        "2",
        "--name",
        "never_made",
        "--daemons",
    ]);
    assert_eq!(o.status.code(), Some(69));
    assert!(stderr(&o).contains("x0t data plane not available yet"));
}

#[test]
fn throughput_bench_skips_x0t_instead_of_faking_it() {
    if lab_or_skip("tp").is_none() {
        return;
    }
    if x0_lab::tools::which("iperf3").is_none() || x0_lab::tools::which("ping").is_none() {
        eprintln!("SKIPPED throughput_bench: iperf3 or ping missing");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let o = run(&[
        "bench",
        "throughput",
        "--systems",
        "x0t",
        "--json",
        "--out",
        dir.path().to_str().unwrap(),
    ]);
    // Nothing measured: a failure, but the report is still written and printed.
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["results"].as_array().unwrap().is_empty());
    assert_eq!(v["skipped"][0]["system"], "x0t");
    assert!(
        v["skipped"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("x0t data plane not available yet")
    );
    assert!(v["ratio_vs_best_peer"][0]["ratio"].is_null());
    assert!(dir.path().join("throughput.json").exists());
}
