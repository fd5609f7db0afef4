//! # mintguard-benches
//!
//! Criterion micro-benchmarks of Mintguard's hot paths (in `benches/`), and
//! the fixtures they share. Run them all with `cargo bench -p mintguard-benches`.

use mintguard_certs::jwt::Expiring;
use serde::Serialize;

/// The claims of a typical workload JWT the broker mints.
#[derive(Clone, Debug, Serialize)]
pub struct WorkloadClaims {
    /// Issuer.
    pub iss: String,
    /// The workload's SPIFFE ID.
    pub sub: String,
    /// Audience.
    pub aud: String,
    /// The lease id.
    pub jti: String,
    /// Issued at.
    pub iat: i64,
    /// Not before.
    pub nbf: i64,
    /// Expires at.
    pub exp: i64,
}

impl WorkloadClaims {
    /// A five-minute token for a payments workload, issued at `now`.
    pub fn typical(now: time::OffsetDateTime) -> Self {
        let t = now.unix_timestamp();
        Self {
            iss: "https://mintguard.example.org".into(),
            sub: "spiffe://example.org/ns/payments/sa/api".into(),
            aud: "payments-db".into(),
            jti: "lease-01HZX3K4Q8F7W2M9R6T5Y1B0CD".into(),
            iat: t,
            nbf: t,
            exp: t + 300,
        }
    }
}

impl Expiring for WorkloadClaims {
    fn expires_at(&self) -> i64 {
        self.exp
    }
}
