//! The routing core in the simulator: scenarios measured end to end.

use x0_sim::Scenario;
use x0_sim::experiment::{self, ExperimentConfig};

fn run(toml: &str) -> experiment::Report {
    let scenario = Scenario::parse(toml).unwrap();
    let instance = scenario.instantiate(None).unwrap();
    experiment::run(&instance, &ExperimentConfig::default(), &mut |_| {}).unwrap()
}

#[test]
fn ring_link_down_is_detected_rerouted_and_converged() {
    let r = run(r#"
duration = "8s"
seed = 3
[topology]
generator = "ring"
n = 8
[links]
latency = "2ms"
[[events]]
at = "5s"
kind = "link-down"
link = [0, 1]
visible = true
"#);
    eprintln!("{r:#?}");
    let e = &r.events[0];
    assert_eq!(e.detect_ms, Some(0.0), "visible: the ends are told");
    assert!(e.affected_pairs > 0);
    assert!(e.reroute_ms.is_some());
    assert!(e.converge_ms.is_some());
    assert_eq!((r.loops_found, r.unreachable_pairs), (0, 0));
}
