//! Seal and open of 1,420-byte inner packets: the per-packet crypto cost of the data plane on
//! one core, for each layer alone and for the full source / destination pipeline (end-to-end
//! envelope + overlay header + link frame). Throughput is reported in inner-packet bytes.
//!
//! `cargo bench -p x0-dataplane --bench channel` (add `-- --quick` for a fast pass).

// A benchmark measures wall time; the crate's sans-IO clock ban does not apply here.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use x0_dataplane::aead::TrafficSecret;
use x0_dataplane::buf::{HEADROOM, PacketBuf, TAILROOM};
use x0_dataplane::channel::{Channel, Limits};
use x0_dataplane::frame::{OverlayHeader, OverlayKind, open_e2e, open_link, seal_e2e, seal_link};
use x0_wire::NodeId;

const INNER: usize = 1420;
const NOW: Duration = Duration::from_secs(1);

/// Receive windows must not refuse the bench's re-opened packets as replays, so the receiving
/// side gets a fresh channel per batch; sending uses one channel throughout.
fn channels(seed: u8) -> (Channel, Channel) {
    let limits = Limits {
        reject_after_packets: u64::MAX,
        reject_after_time: Duration::MAX,
        ..Limits::default()
    };
    let (a, b) = (
        TrafficSecret::new([seed; 32]),
        TrafficSecret::new([!seed; 32]),
    );
    let mut tx = Channel::new(limits);
    let mut rx = Channel::new(limits);
    tx.install(0, &a, &b, Duration::ZERO).unwrap();
    rx.install(0, &b, &a, Duration::ZERO).unwrap();
    (tx, rx)
}

fn bench(c: &mut Criterion) {
    let overlay = OverlayHeader::new(
        OverlayKind::Data,
        NodeId::from_bytes([1; 16]),
        NodeId::from_bytes([2; 16]),
    );
    let mut g = c.benchmark_group("dataplane");
    g.throughput(Throughput::Bytes(INNER as u64));

    let mut buf = vec![0u8; HEADROOM + INNER + TAILROOM];
    let (mut link_tx, _) = channels(1);
    g.bench_function("link_seal_1420", |b| {
        b.iter(|| {
            let mut pb = PacketBuf::at_headroom(&mut buf, INNER).unwrap();
            seal_link(&mut link_tx, NOW, 7, &mut pb).unwrap();
            black_box(pb.len())
        })
    });

    let (mut e2e_tx, _) = channels(2);
    g.bench_function("e2e_seal_1420", |b| {
        b.iter(|| {
            let mut pb = PacketBuf::at_headroom(&mut buf, INNER).unwrap();
            seal_e2e(&mut e2e_tx, NOW, 9, &overlay, &mut pb).unwrap();
            black_box(pb.len())
        })
    });

    g.bench_function("source_pipeline_seal_both_layers_1420", |b| {
        b.iter(|| {
            let mut pb = PacketBuf::at_headroom(&mut buf, INNER).unwrap();
            seal_e2e(&mut e2e_tx, NOW, 9, &overlay, &mut pb).unwrap();
            overlay.prepend_to(&mut pb).unwrap();
            seal_link(&mut link_tx, NOW, 7, &mut pb).unwrap();
            black_box(pb.len())
        })
    });

    // Batches of datagrams sealed by the full pipeline, opened by the destination.
    const BATCH: usize = 4096;
    let (mut e2e_tx, _) = channels(3);
    let (mut link_tx, _) = channels(4);
    let frames: Vec<Vec<u8>> = (0..BATCH)
        .map(|_| {
            let mut pb = PacketBuf::at_headroom(&mut buf, INNER).unwrap();
            seal_e2e(&mut e2e_tx, NOW, 9, &overlay, &mut pb).unwrap();
            overlay.prepend_to(&mut pb).unwrap();
            seal_link(&mut link_tx, NOW, 7, &mut pb).unwrap();
            pb.data().to_vec()
        })
        .collect();
    let mut work = frames[0].clone();
    g.bench_function("destination_pipeline_open_both_layers_1420", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut done = 0u64;
            while done < iters {
                let (_, mut link_rx) = channels(4);
                let (_, mut e2e_rx) = channels(3);
                let n = (iters - done).min(BATCH as u64) as usize;
                let started = std::time::Instant::now();
                for f in &frames[..n] {
                    work.copy_from_slice(f);
                    let len = work.len();
                    let mut pb = PacketBuf::new(&mut work, 0..len).unwrap();
                    open_link(&mut link_rx, NOW, &mut pb).unwrap();
                    let (h, hl) = OverlayHeader::decode(pb.data()).unwrap();
                    pb.trim_front(hl).unwrap();
                    open_e2e(&mut e2e_rx, NOW, &h, &mut pb).unwrap();
                    black_box(pb.len());
                }
                total += started.elapsed();
                done += n as u64;
            }
            total
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
