//! Engine throughput: the heartbeat protocol on a 1,000-node random geometric mesh (degree 8,
//! links 1–20 ms), two seconds of mesh time per iteration, reported as events per second.
//! The full 10,000-node figure is `tests/scale.rs` (ignored test) or the `heartbeat` example.

use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use x0_sim::heartbeat::{Heartbeat, HeartbeatConfig};
use x0_sim::topology::{Generator, Latency, LinkSpec, Reach, Topology};
use x0_sim::{Instant, Sim, TraceMode};

fn topology() -> Topology {
    let spec = LinkSpec {
        latency: Latency::Uniform {
            min: Duration::from_millis(1),
            max: Duration::from_millis(20),
        },
        ..LinkSpec::default()
    };
    Topology::generate(
        &Generator::RandomGeometric {
            n: 1000,
            reach: Reach::AvgDegree(8.0),
            connect: true,
        },
        &spec,
        1,
    )
    .unwrap_or_else(|e| panic!("topology: {e}"))
}

fn run(topo: &Topology, trace: TraceMode) -> u64 {
    let cfg = HeartbeatConfig {
        record_transitions: false,
        ..HeartbeatConfig::default()
    };
    let mut sim = Sim::new(topo, 1, move |me| Heartbeat::new(me, cfg));
    sim.set_trace(trace);
    sim.run_until(Instant::from_millis(2000));
    sim.events_processed()
}

fn engine(c: &mut Criterion) {
    let topo = topology();
    let events = run(&topo, TraceMode::Off);
    let mut g = c.benchmark_group("heartbeat-rgg-1000-2s");
    g.throughput(Throughput::Elements(events));
    g.sample_size(10);
    g.bench_function("trace-off", |b| b.iter(|| run(&topo, TraceMode::Off)));
    g.bench_function("trace-digest", |b| b.iter(|| run(&topo, TraceMode::Digest)));
    g.finish();
}

criterion_group!(benches, engine);
criterion_main!(benches);
