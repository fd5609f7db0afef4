//! Personalized PageRank on seeded synthetic graphs (`synthetic_graph`):
//! one iteration and the full run to an L1 change < 1e-12 at 100k nodes / 1M
//! edges, and one iteration at 1M / 10M (the full run there is timed by
//! `cargo run --release -p mintguard-benches --bin ppr_compare -- --large`).
//!
//! Run: `cargo bench -p mintguard-benches --bench ppr`.
//! Target: ≤ 45 ms per iteration at 1M / 10M (shared/PERF.md).

#![allow(clippy::print_stdout)] // the bench reports iteration counts

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use mintguard_benches::synthetic_graph;
use mintguard_policy::eci::pagerank::{PprMatrix, PprParams};

const NOW: i64 = 1_795_521_600;

fn bench_ppr(c: &mut Criterion) {
    let params = PprParams::default();
    let mut group = c.benchmark_group("ppr");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(8));
    for (label, nodes, edges) in [
        ("100k_1m", 100_000, 1_000_000),
        ("1m_10m", 1_000_000, 10_000_000),
    ] {
        let graph = synthetic_graph(nodes, edges, 42, NOW);
        let matrix = PprMatrix::build(&graph, &params, NOW);
        drop(graph);
        let x = vec![1.0 / nodes as f64; nodes];
        let mut next = vec![0.0; nodes];
        group.bench_function(format!("iteration/{label}"), |b| {
            b.iter(|| black_box(matrix.step(params.alpha, black_box(&x), &mut next)));
        });
        if nodes <= 100_000 {
            let result = matrix.run(&params);
            println!(
                "ppr {label}: {} iterations to L1 < 1e-12 (converged: {})",
                result.iterations, result.converged
            );
            group.bench_function(format!("total/{label}"), |b| {
                b.iter(|| black_box(matrix.run(&params)))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench_ppr);
criterion_main!(benches);
