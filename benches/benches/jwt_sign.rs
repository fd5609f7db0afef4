//! JWT signing with the cached key: ES256 (default) and EdDSA.
//!
//! Run: `cargo bench -p mintguard-benches --bench jwt_sign`.
//! Floor (shared/PERF.md): jsonwebtoken + aws-lc-rs, which re-parses the key
//! per call, signs ES256 in ~33 µs and EdDSA in ~20 µs; a pre-parsed Ed25519
//! key signs in ~10.5 µs.

#![allow(clippy::expect_used)] // a bench that cannot set up must stop

use criterion::{Criterion, criterion_group, criterion_main};
use mintguard_benches::WorkloadClaims;
use mintguard_certs::jwt::{JwtAlgorithm, JwtKeySet, JwtSettings};
use std::hint::black_box;
use std::time::Duration;

fn jwt_sign(c: &mut Criterion) {
    let now = time::OffsetDateTime::now_utc();
    let claims = WorkloadClaims::typical(now);
    let mut group = c.benchmark_group("jwt_sign");
    for alg in [JwtAlgorithm::Es256, JwtAlgorithm::EdDsa] {
        let keys = JwtKeySet::in_memory(JwtSettings {
            algorithm: alg,
            max_token_ttl: Duration::from_secs(3600),
        })
        .expect("generate a key");
        group.bench_function(alg.as_str(), |b| {
            b.iter(|| keys.sign(black_box(&claims), now).expect("sign"));
        });
    }
    group.finish();
}

criterion_group!(benches, jwt_sign);
criterion_main!(benches);
