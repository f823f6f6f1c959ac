//! The 10,000-node steady-state scenario with the heartbeat protocol, reporting the engine's
//! throughput. Slow, so ignored by default:
//!
//! ```text
//! cargo test --release -p x0-sim --test scale -- --ignored --nocapture
//! ```

use std::path::PathBuf;

use x0_sim::heartbeat::{Heartbeat, HeartbeatConfig};
use x0_sim::stats::peak_rss_bytes;
use x0_sim::{Scenario, TraceMode};

#[test]
#[ignore = "slow (tens of seconds in release): run with --release -- --ignored --nocapture"]
fn ten_thousand_nodes_for_sixty_seconds() {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scenarios/rgg-10000-steady.toml");
    let instance = Scenario::from_file(&path)
        .unwrap()
        .instantiate(None)
        .unwrap();
    let cfg = HeartbeatConfig {
        record_transitions: false,
        ..HeartbeatConfig::default()
    };
    let mut sim = instance.sim(move |me| Heartbeat::new(me, cfg)).unwrap();
    sim.set_trace(TraceMode::Digest);
    sim.run_until(instance.end());
    let st = sim.stats();
    let wall = st.wall.as_secs_f64();
    println!(
        "10,000 nodes, {} links, 60 s of mesh time: {} events in {wall:.2} s wall = {:.2} M events/s; \
         {} datagrams delivered; peak RSS {:.0} MiB; trace digest {:016x}",
        instance.topology.link_count(),
        st.events,
        st.events as f64 / wall / 1e6,
        st.delivered,
        peak_rss_bytes().unwrap_or(0) as f64 / 1048576.0,
        sim.trace().digest().unwrap_or(0),
    );
    assert!(st.events > 50_000_000, "tens of millions of events");
    assert_eq!(st.drops.total(), 0, "a quiet mesh drops nothing");
}
