//! `decide()` with 20 Cedar policies: the allow path, a graduated path
//! (off hours → allow_reduced) and a hard-deny path (second Cedar evaluation).
//!
//! Run: `cargo bench -p mintguard-benches --bench decide`.
//! Target: median ≤ 10 µs (shared/PERF.md: Cedar alone ~3 µs per evaluation).

#![allow(clippy::expect_used)] // a bench that cannot set up must stop

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use mintguard_benches::decide_fixture;
use mintguard_policy::{Outcome, decide};

fn bench_decide(c: &mut Criterion) {
    let (allow, rules) = decide_fixture();
    assert_eq!(decide(&allow, &rules).outcome, Outcome::Allow);

    let mut reduced = allow.clone();
    reduced.now_ms += 10 * 3_600_000; // 20:00 UTC
    for signal in reduced.signals.signals.values_mut() {
        signal.observed_at += 10 * 3600;
    }
    assert_eq!(decide(&reduced, &rules).outcome, Outcome::AllowReduced);

    let mut denied = allow.clone();
    denied.principal = mintguard_policy::decision::PrincipalKind::CiJob;
    denied.issuer.kind = mintguard_policy::decision::IssuerKind::CiIssuer;
    denied
        .ci_claims
        .insert("event_name".into(), "pull_request".into());
    assert_eq!(decide(&denied, &rules).outcome, Outcome::Deny);

    let mut group = c.benchmark_group("decide_20_policies");
    group.bench_function("allow", |b| b.iter(|| decide(black_box(&allow), &rules)));
    group.bench_function("allow_reduced", |b| {
        b.iter(|| decide(black_box(&reduced), &rules))
    });
    group.bench_function("hard_deny", |b| {
        b.iter(|| decide(black_box(&denied), &rules))
    });
    group.finish();
}

criterion_group!(benches, bench_decide);
criterion_main!(benches);
