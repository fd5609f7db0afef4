//! The JWT minter: a broker-signed JWT per lease (`jti` = lease id), revocable
//! for relying parties that introspect (RFC 7662); offline verifiers honour
//! only `exp` (revocation kind `introspection_only`).

use std::collections::BTreeMap;

use mintguard_certs::jwt::{Expiring, JwtKeySet};
use serde::Serialize;

use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use serde_json::{Value, json};

use super::{
    Approved, Flow, LeaseKind, LoggedIntent, MintError, MintRequest, Minted, Minter, Reconcile,
    Revocation, SealError, Sealed,
};
use super::{Deps, GrantSettings, GrantSpec, SpecContext};
use crate::setting::Invalid;
use serde::Deserialize;
use crate::store::Lease;

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

/// The JWT minter: signs with the broker's current key; the token leaves
/// the broker only once its record is durable ([`Sealed::release`]).
pub struct JwtMinter {
    keys: Arc<RwLock<JwtKeySet>>,
}

impl JwtMinter {
    /// Signs with `keys` (shared with the JWKS and key rotation).
    pub fn new(keys: Arc<RwLock<JwtKeySet>>) -> Self {
        Self { keys }
    }
}

#[async_trait]
impl Minter for JwtMinter {
    fn kind(&self) -> LeaseKind {
        LeaseKind::Jwt
    }

    fn revocation(&self) -> Revocation {
        Revocation::IntrospectionOnly
    }

    fn flow(&self) -> Flow {
        Flow::Local
    }

    fn seal(
        &self,
        _approved: &Approved<'_>,
        request: &MintRequest<'_>,
    ) -> Result<Sealed, SealError> {
        let settings = request
            .settings::<Settings>()
            .map_err(|e| SealError::Failed(e.message))?;
        let (audience, extra) = (settings.audience.clone(), settings.claims.clone());
        let now = request.now_ms.div_euclid(1000);
        let claims = Claims {
            iss: request.issuer_url.to_owned(),
            sub: request.identity.to_owned(),
            aud: audience.clone(),
            grant: request.grant.to_owned(),
            jti: request.lease_id.to_owned(),
            iat: now,
            nbf: now,
            exp: request.expires_at_ms().div_euclid(1000),
            extra,
        };
        let keys = self
            .keys
            .read()
            .map_err(|_| SealError::KeysUnavailable("poisoned lock".into()))?;
        let token = keys
            .sign(&claims, crate::clock::datetime(request.now_ms))
            .map_err(|e| SealError::Failed(e.to_string()))?;
        Ok(Sealed::new(
            json!({"type": "jwt", "token": token, "audience": audience}),
        ))
    }

    async fn mint(
        &self,
        _approved: &Approved<'_>,
        request: &MintRequest<'_>,
        _intent: &LoggedIntent,
    ) -> Result<Minted, MintError> {
        Err(MintError::new(format!(
            "grant {} is minted locally, not upstream",
            request.grant
        )))
    }

    /// Revocation is the store's: introspection answers `active: false`.
    async fn revoke(&self, _upstream: &Value) -> Result<bool, MintError> {
        Ok(true)
    }

    /// A JWT has one record: there is never an intent without an outcome.
    async fn reconcile(&self, _lease: &Lease, _grant: Option<&GrantSpec>) -> Reconcile {
        Reconcile::Nothing
    }
}

/// `jwt = { audience, claims }` on a grant.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JwtGrant {
    /// The `aud` claim.
    pub audience: String,
    /// Extra claims (strings) added to every token of this grant.
    #[serde(default)]
    pub claims: BTreeMap<String, String>,
}

/// A `jwt` grant's settings.
pub type Settings = JwtGrant;

impl GrantSettings for JwtGrant {
    fn validate(&self, cx: &SpecContext<'_>) -> Result<(), Invalid> {
        if self.audience.is_empty() {
            return Err(Invalid::new(
                (cx.key)("jwt.audience"),
                "a jwt grant needs jwt = { audience = \"…\" }",
            ));
        }
        if cx.max_ttl > cx.jwt_max_ttl {
            return Err(Invalid::new(
                (cx.key)("max_ttl"),
                format!("exceeds jwt.max_ttl ({}s)", cx.jwt_max_ttl.as_secs()),
            ));
        }
        for claim in self.claims.keys() {
            if ["iss", "sub", "aud", "exp", "nbf", "iat", "jti", "grant"].contains(&claim.as_str()) {
                return Err(Invalid::new(
                    (cx.key)("jwt.claims"),
                    format!("{claim:?} is set by the broker"),
                ));
            }
        }
        Ok(())
    }
}

/// Always built: JWTs are signed with the broker's own keys.
pub async fn build(deps: &Deps<'_>) -> Result<Option<Box<dyn Minter>>, String> {
    Ok(Some(Box::new(JwtMinter::new(deps.jwt.clone()))))
}
