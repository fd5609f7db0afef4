//! The JWT minter: a broker-signed JWT per lease (`jti` = lease id), revocable
//! for relying parties that introspect (RFC 7662); offline verifiers honour
//! only `exp` (revocation kind `introspection_only`).

use std::collections::BTreeMap;

use mintguard_certs::jwt::{Expiring, JwtKeySet};
use serde::Serialize;
use time::OffsetDateTime;

use super::Durable;

/// The claims of a Mintguard JWT.
#[derive(Clone, Debug, Serialize)]
pub struct Claims {
    /// The broker's URL.
    pub iss: String,
    /// The workload's SPIFFE ID.
    pub sub: String,
    /// The grant's audience.
    pub aud: String,
    /// The grant it was issued under: grants that share an audience are
    /// not interchangeable (a relying party checks it, as `scope` is checked).
    pub grant: String,
    /// The lease id.
    pub jti: String,
    /// Issued at.
    pub iat: i64,
    /// Not before.
    pub nbf: i64,
    /// Expires.
    pub exp: i64,
    /// Claims the grant adds.
    #[serde(flatten)]
    pub extra: BTreeMap<String, String>,
}

impl Expiring for Claims {
    fn expires_at(&self) -> i64 {
        self.exp
    }
}

/// A signed JWT that may not leave the broker yet.
pub struct UnreleasedJwt {
    token: String,
}

impl std::fmt::Debug for UnreleasedJwt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UnreleasedJwt([redacted])")
    }
}

impl UnreleasedJwt {
    /// Signs `claims` (before the durable write, so the write is the only I/O).
    pub fn sign(
        keys: &JwtKeySet,
        claims: &Claims,
        now: OffsetDateTime,
    ) -> Result<Self, mintguard_certs::CertsError> {
        Ok(Self {
            token: keys.sign(claims, now)?,
        })
    }

    /// The token, once its record is durable.
    pub fn release(self, _proof: &Durable) -> String {
        self.token
    }
}
