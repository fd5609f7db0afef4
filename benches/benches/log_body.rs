//! The canonical (RFC 8785) body of an issuance record — the decision input,
//! the decision and the request, as the JWT path logs them — written
//! directly from the types (`log::jcs::to_canonical`, what the broker does)
//! and, for comparison, through a `serde_json::Value` tree.
//!
//! Run: `cargo bench -p mintguard-benches --bench log_body`.

#![allow(clippy::expect_used)] // a bench that cannot set up must stop

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use mintguard_benches::decide_fixture;
use mintguard_broker::log::jcs;
use mintguard_policy::decide;
use serde_json::json;

fn bench_log_body(c: &mut Criterion) {
    let (input, rules) = decide_fixture();
    let decision = decide(&input, &rules);
    let request = json!({"grant": "payments-token", "ttl_seconds": 300});
    let body = json!({
        "input": input,
        "decision": decision,
        "request": request,
        "lease": {"id": "lease-0193f0c2a4b1e1d2c3b4a59687786950", "expires_at_ms": 1_795_514_700_000i64,
                  "revocation": "introspection_only", "kind": "jwt"},
    });
    #[derive(serde::Serialize)]
    struct Body<'a> {
        input: &'a mintguard_policy::DecisionInput,
        decision: &'a mintguard_policy::Decision,
        request: &'a serde_json::Value,
        lease: &'a serde_json::Value,
    }
    let typed = Body {
        input: &input,
        decision: &decision,
        request: &request,
        lease: &body["lease"],
    };
    let direct = jcs::to_canonical(&typed).expect("canonical");
    assert_eq!(
        direct,
        jcs::to_string(&body),
        "both paths give the same bytes"
    );

    let mut group = c.benchmark_group("log_body");
    group.bench_function("direct", |b| {
        b.iter(|| jcs::to_canonical(black_box(&typed)).expect("canonical"))
    });
    group.bench_function("through_value", |b| {
        b.iter(|| {
            let value = serde_json::to_value(black_box(&typed)).expect("value");
            jcs::to_string(&value)
        })
    });
    group.finish();
}

criterion_group!(benches, bench_log_body);
criterion_main!(benches);
