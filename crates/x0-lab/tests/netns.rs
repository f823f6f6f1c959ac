//! Real-kernel lab tests: real namespaces, veths, nftables and processes.
//!
//! They need root, `ip` and `nft`; elsewhere each test prints why it is skipped and passes.
//! Every test uses its own lab name (with the test's PID), so they can run in parallel, also
//! under nextest's one-process-per-test model. Traffic goes only to addresses inside the
//! namespaces the test created.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use x0_lab::tools;
use x0_lab::{Lab, LabName, LabSpec, Shape, SpawnOptions, Topology};

fn lab_or_skip(test: &str) -> Option<LabName> {
    if let Err(e) = x0_lab::preflight() {
        eprintln!("SKIPPED {test}: {e}");
        return None;
    }
    Some(LabName::new(&format!("t{}_{test}", std::process::id())).unwrap())
}

fn run_dir() -> PathBuf {
    PathBuf::from(x0_lab::DEFAULT_RUN_DIR)
}

fn namespaces_of(name: &LabName) -> Vec<String> {
    tools::netns_list()
        .unwrap()
        .into_iter()
        .filter(|n| n.starts_with(&name.netns_prefix()))
        .collect()
}

/// One ping with a 1 s deadline.
fn ping(lab: &Lab, from: usize, to: std::net::Ipv4Addr) -> bool {
    lab.exec(from, &["ping", "-c", "1", "-W", "1", "-q", &to.to_string()])
        .unwrap()
        .status
        .success()
}

/// Pings until one succeeds or `within` passes (links need a moment after coming up).
fn ping_within(lab: &Lab, from: usize, to: std::net::Ipv4Addr, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if ping(lab, from, to) {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Three pings, none may answer.
fn all_lost(lab: &Lab, from: usize, to: std::net::Ipv4Addr) -> bool {
    !lab.exec(
        from,
        &[
            "ping",
            "-c",
            "3",
            "-i",
            "0.2",
            "-W",
            "1",
            "-q",
            &to.to_string(),
        ],
    )
    .unwrap()
    .status
    .success()
}

fn line3(name: &LabName) -> Lab {
    let mut spec = LabSpec::new(name.clone(), Topology::generate(Shape::Line, 3).unwrap());
    spec.underlay_routes = true;
    Lab::up(&spec).unwrap()
}

#[test]
fn line_forwards_and_loss_and_link_down_cut_it() {
    let Some(name) = lab_or_skip("line") else {
        return;
    };
    if tools::which("ping").is_none() {
        eprintln!("SKIPPED line: `ping` missing: apt-get install -y iputils-ping");
        return;
    }
    let mut lab = line3(&name);
    assert_eq!(namespaces_of(&name).len(), 3);
    let far = lab.node_addr(2).unwrap();
    // Across the relay n1, by kernel forwarding over the underlay routes.
    assert!(ping_within(&lab, 0, far, Duration::from_secs(5)));
    // And to the far end of the far link (a link subnet route).
    let far_link = lab.neighbours(2).unwrap()[0].local_addr;
    assert!(ping_within(&lab, 0, far_link, Duration::from_secs(5)));

    // 100 % loss on n1 → n2 only: the echo requests die at the relay.
    lab.set_loss(1, 2, 100).unwrap();
    assert_eq!(lab.state().links[1].loss_a_to_b, 100);
    let rules = lab
        .exec(1, &["nft", "list", "table", "inet", x0_lab::NFT_TABLE])
        .unwrap();
    let text = String::from_utf8_lossy(&rules.stdout).into_owned();
    assert!(
        text.contains("oifname \"x0-n2\"") && text.contains("drop"),
        "{text}"
    );
    assert!(all_lost(&lab, 0, far));
    // n0 → n1 is untouched.
    assert!(ping(&lab, 0, lab.node_addr(1).unwrap()));
    lab.set_loss(1, 2, 0).unwrap();
    assert!(ping_within(&lab, 0, far, Duration::from_secs(5)));

    // Both directions at once, then a runtime change to a partial value (rule replaced).
    lab.set_link_loss(1, 2, 100).unwrap();
    assert!(all_lost(&lab, 0, far));
    lab.set_link_loss(1, 2, 30).unwrap();
    let rules = lab
        .exec(2, &["nft", "list", "table", "inet", x0_lab::NFT_TABLE])
        .unwrap();
    let text = String::from_utf8_lossy(&rules.stdout).into_owned();
    assert!(text.contains("numgen random mod 100 < 30"), "{text}");
    assert_eq!(text.matches("drop").count(), 1, "{text}");
    lab.set_link_loss(1, 2, 0).unwrap();

    // veth down cuts the path; up restores it.
    lab.set_link_up(1, 2, false).unwrap();
    assert!(!lab.state().links[1].up);
    assert!(all_lost(&lab, 0, far));
    lab.set_link_up(1, 2, true).unwrap();
    assert!(ping_within(&lab, 0, far, Duration::from_secs(10)));

    // The state file another process would read says the same.
    let reopened = Lab::open(&run_dir(), &name).unwrap();
    assert_eq!(reopened.state(), lab.state());
    drop(reopened); // not armed: leaves the lab alone
    assert_eq!(namespaces_of(&name).len(), 3);

    let report = lab.down();
    assert_eq!(report.namespaces_deleted.len(), 3, "{report:?}");
    assert!(report.errors.is_empty(), "{report:?}");
    assert!(namespaces_of(&name).is_empty());
    assert!(!run_dir().join(name.as_str()).exists());
}

#[test]
fn panic_inside_a_test_still_removes_namespaces_and_processes() {
    let Some(name) = lab_or_skip("panic") else {
        return;
    };
    let (tx, rx) = std::sync::mpsc::channel();
    let n = name.clone();
    let result = std::panic::catch_unwind(move || {
        let mut lab = Lab::up(&LabSpec::new(
            n,
            Topology::generate(Shape::Ring, 3).unwrap(),
        ))
        .unwrap();
        let p = lab
            .spawn(2, "sleep", &["sleep", "600"], &SpawnOptions::default())
            .unwrap();
        tx.send((p.pid, p.start_time)).unwrap();
        panic!("deliberate failure inside a lab test");
    });
    assert!(result.is_err());
    let (pid, start) = rx.recv().unwrap();
    assert!(!x0_lab::process::is_same_and_alive(pid, start));
    assert!(namespaces_of(&name).is_empty());
    assert!(!run_dir().join(name.as_str()).exists());
}

#[test]
fn down_from_elsewhere_after_the_owner_is_gone() {
    let Some(name) = lab_or_skip("crash") else {
        return;
    };
    let mut lab = Lab::up(&LabSpec::new(
        name.clone(),
        Topology::generate(Shape::Grid, 4).unwrap(),
    ))
    .unwrap();
    let recorded = lab
        .spawn(0, "sleep", &["sleep", "600"], &SpawnOptions::default())
        .unwrap();
    // A process the state file does not know (as `lab exec` might leave behind).
    let mut stray = lab.command(3, "sleep").unwrap();
    let mut stray = stray.arg("600").spawn().unwrap();
    let state = lab.detach(); // as if the owner had crashed
    assert_eq!(state.links.len(), 4);
    assert_eq!(namespaces_of(&name).len(), 4);

    let report = x0_lab::down(&run_dir(), &name).unwrap();
    assert!(
        report.processes_stopped.contains(&recorded.pid),
        "{report:?}"
    );
    assert!(report.processes_stopped.contains(&stray.id()), "{report:?}");
    let _ = stray.wait();
    assert!(!recorded.is_running());
    assert!(namespaces_of(&name).is_empty());
    assert!(!run_dir().join(name.as_str()).exists());
    // Idempotent: a second down finds nothing.
    let again = x0_lab::down(&run_dir(), &name).unwrap();
    assert!(again.namespaces_deleted.is_empty());
}

#[test]
fn down_without_a_state_file_uses_the_prefix() {
    let Some(name) = lab_or_skip("nostate") else {
        return;
    };
    let lab = Lab::up(&LabSpec::new(
        name.clone(),
        Topology::generate(Shape::Line, 2).unwrap(),
    ))
    .unwrap();
    let dir = lab.dir().to_owned();
    lab.detach();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(x0_lab::list(&run_dir()).unwrap().contains(&name));
    let report = x0_lab::down(&run_dir(), &name).unwrap();
    assert_eq!(report.namespaces_deleted.len(), 2, "{report:?}");
    assert!(namespaces_of(&name).is_empty());
}

#[test]
fn addresses_links_and_a_second_lab_of_the_same_name_is_refused() {
    let Some(name) = lab_or_skip("addrs") else {
        return;
    };
    let topo = Topology::from_toml(
        "[[link]]\na = \"hub\"\nb = \"a\"\n[[link]]\na = \"hub\"\nb = \"b\"\nloss = 10\n",
        "inline",
    )
    .unwrap();
    let lab = Lab::up(&LabSpec::new(name.clone(), topo.clone())).unwrap();
    let hub = lab.node_index("hub").unwrap();
    let nb = lab.neighbours(hub).unwrap();
    assert_eq!(nb.len(), 2);
    assert_eq!(nb[0].iface, "x0-a");
    let out = lab.exec(hub, &["ip", "-o", "-4", "addr", "show"]).unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.contains("10.213.0.1/30") && text.contains("10.214.0.1/32"),
        "{text}"
    );
    assert_eq!(lab.mtu(hub, "x0-a").unwrap(), 1500);
    // The initial loss of the file is in place on both ends.
    for node in [hub, lab.node_index("b").unwrap()] {
        let rules = lab
            .exec(node, &["nft", "list", "table", "inet", x0_lab::NFT_TABLE])
            .unwrap();
        assert!(String::from_utf8_lossy(&rules.stdout).contains("< 10"));
    }
    // No underlay routes by default: the spokes do not reach each other.
    let a = lab.node_index("a").unwrap();
    assert!(all_lost(
        &lab,
        a,
        lab.node_addr(lab.node_index("b").unwrap()).unwrap()
    ));
    let dup = Lab::up(&LabSpec::new(name.clone(), topo));
    assert!(matches!(dup, Err(x0_lab::LabError::Exists(_))));
    drop(lab);
    assert!(namespaces_of(&name).is_empty());
}
