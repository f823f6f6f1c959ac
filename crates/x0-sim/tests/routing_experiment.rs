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

/// A controller beside the routing core (the self-healing executor) changes restrictions
/// through `Sim::call_node` + `RoutingNode::command`: the change takes effect in the node's
/// routes at once, and a cost factor is advertised to the rest of the mesh.
#[test]
fn commands_from_outside_change_routes_and_are_advertised() {
    use std::time::Duration;
    use x0_sim::routing::sim_node_id;
    let scenario = Scenario::parse(
        r#"
duration = "10s"
seed = 5
start = "warm"
[topology]
generator = "ring"
n = 6
[links]
latency = "2ms"
"#,
    )
    .unwrap();
    let instance = scenario.instantiate(None).unwrap();
    let mut sim = experiment::routing_sim(&instance, &Default::default()).unwrap();
    sim.run_for(Duration::from_secs(2));
    let hop = |sim: &mut x0_sim::Sim<x0_sim::routing::RoutingNode>, at: u32, dst: u32| {
        let now = sim.now();
        sim.node_mut(at)
            .and_then(|n| n.router_mut())
            .and_then(|r| r.next_hop(now, &sim_node_id(dst)))
            .map(|h| h.link as u32)
    };
    // On a ring of 6, node 0 reaches 2 via 1.
    assert_eq!(hop(&mut sim, 0, 2), Some(1));
    let changed = sim
        .call_node(0, |n, now, out| {
            n.command(now, out, |r, now| r.quarantine(now, sim_node_id(1)))
        })
        .flatten();
    assert_eq!(changed, Some(true));
    // Routes are recomputed `spf_delay` (10 ms) after a change.
    sim.run_for(Duration::from_millis(20));
    assert_eq!(hop(&mut sim, 0, 2), Some(5), "quarantined relay avoided");
    // A raised cost on 3–4 is advertised: after flooding, 2 reaches 4 the other way round.
    assert_eq!(hop(&mut sim, 2, 4), Some(3));
    sim.call_node(3, |n, now, out| {
        n.command(now, out, |r, now| {
            r.set_cost_factor(now, sim_node_id(4), 100)
        })
    });
    sim.call_node(4, |n, now, out| {
        n.command(now, out, |r, now| {
            r.set_cost_factor(now, sim_node_id(3), 100)
        })
    });
    sim.run_for(Duration::from_secs(2));
    assert_eq!(hop(&mut sim, 2, 4), Some(1));
    // A link restart closes and reopens the session; a crashed node takes no command.
    let restarted = sim.call_node(0, |n, now, out| n.restart_link(now, 1, out));
    assert_eq!(restarted, Some(true));
    assert!(sim.node(0).unwrap().link_active(1));
    sim.apply(x0_sim::Event::NodeCrash { node: 4 }).unwrap();
    assert!(sim.call_node(4, |_, _, _| ()).is_none());
}

/// Links that come back after a partition are found as fast as links that go: the ends of a
/// silently cut link keep knocking on the probe cadence (100 ms), not with a back-off that has
/// grown to seconds during a long partition, so the mesh re-converges within a second of the
/// heal (virtual time).
#[test]
fn links_that_come_back_after_a_long_partition_are_found_at_once() {
    let r = run(r#"
duration = "34s"
seed = 2
[topology]
generator = "grid"
width = 6
height = 4
[links]
latency = "1ms..5ms"
[[events]]
at = "3s"
kind = "partition"
cut = [[2, 3], [8, 9], [14, 15], [20, 21]]
[[events]]
at = "33s"
kind = "heal"
"#);
    eprintln!("{r:#?}");
    let heal = &r.events[1];
    assert_eq!(heal.kind, "heal");
    let converge = heal.converge_ms.expect("converged after the heal");
    assert!(
        converge < 1000.0,
        "re-converged {converge} ms (virtual) after the heal"
    );
    assert_eq!((r.loops_found, r.unreachable_pairs), (0, 0));
}
