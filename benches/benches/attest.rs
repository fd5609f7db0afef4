//! Workload attestation, the agent's per-request hot path: `/proc/PID/stat`
//! twice (pid-reuse guard), the executable link and metadata (twice: an
//! exec during the reads is caught), the SHA-256
//! (cached by device, inode, size and mtime after the first request), the
//! user name and cgroups — for a real child process.
//!
//! Run: `cargo bench -p mintguard-benches --bench attest`.

#![allow(clippy::expect_used)] // a bench that cannot set up must stop

use criterion::{Criterion, criterion_group, criterion_main};
use mintguard_agent::attest::{Attestor, Peer, Writers};
use std::hint::black_box;

fn attest(c: &mut Criterion) {
    // A workload: a process other than this one (the bench binary would be
    // the attestor's own executable, i.e. its helper).
    let mut child = std::process::Command::new("sleep")
        .arg("600")
        .spawn()
        .expect("spawn a workload");
    let pid = i32::try_from(child.id()).expect("pid");
    let peer = Peer::at_accept(pid, 0, 0, Writers::default(), None).expect("peer");
    let attestor = Attestor::new().expect("attestor");
    attestor
        .attest(&peer)
        .expect("first attestation (hashes once)");
    c.bench_function("attest_cached_hash", |b| {
        b.iter(|| attestor.attest(black_box(&peer)).expect("attest"));
    });
    let _ = child.kill();
    let _ = child.wait();
}

criterion_group!(benches, attest);
criterion_main!(benches);
