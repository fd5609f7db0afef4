//! The JWT-SVID minter (the Workload API's `FetchJWTSVID`): a token in the
//! JWT-SVID profile — ES256 (the profile does not allow EdDSA), header
//! `alg`/`kid`/`typ` only, `sub` the decided SPIFFE ID, `aud` the request's
//! audiences (each one of the grant's `audiences`), `exp`, `iat` and `jti`
//! (the lease id). Signed by the broker's JWT-SVID keys (`<jwt.keys_dir>/svid`,
//! always ES256, rotated with the JWT keys), kept apart from the keys of
//! Mintguard JWTs so neither verifies as the other; the agent publishes them
//! as the trust domain's JWT bundle (`use: "jwt-svid"`).
//! Its lease is `introspection_only`, but JWT-SVIDs are validated offline
//! (`ValidateJWTSVID`, the JWT bundle): a revoked one stays valid until its
//! `exp`, which is why the grant's TTL should be minutes.

use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use mintguard_certs::jwt::{Expiring, JwtAlgorithm, JwtKeySet};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{
    Approved, Deps, Flow, GrantSettings, GrantSpec, LeaseKind, LoggedIntent, Material,
    MaterialError, MintError, MintRequest, Minted, Minter, Reconcile, Revocation, SealError,
    Sealed, SettingsOf, SpecContext,
};
use crate::setting::Invalid;
use crate::store::Lease;

/// Most audiences a grant may allow.
pub const MAX_GRANT_AUDIENCES: usize = 64;

/// `jwt_svid = { audiences = ["…"] }` on a grant.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JwtSvidGrant {
    /// The audiences a token of this grant may name (a request names one
    /// or more of them).
    pub audiences: Vec<String>,
}

/// A `jwt_svid` grant's settings.
pub type Settings = JwtSvidGrant;

impl GrantSettings for JwtSvidGrant {
    fn validate(&self, cx: &SpecContext<'_>) -> Result<(), Invalid> {
        let key = (cx.key)("jwt_svid.audiences");
        if self.audiences.is_empty() || self.audiences.len() > MAX_GRANT_AUDIENCES {
            return Err(Invalid::new(
                key,
                format!("name 1..={MAX_GRANT_AUDIENCES} audiences a token may be for"),
            ));
        }
        for aud in &self.audiences {
            if aud.is_empty() {
                return Err(Invalid::new(key, "an audience is empty"));
            }
            mintguard_api::check_text("bad_audience", "audience", aud, mintguard_api::MAX_AUDIENCE_LEN)
                .map_err(|e| Invalid::new(key.clone(), e.message))?;
        }
        if cx.max_ttl > cx.jwt_max_ttl {
            return Err(Invalid::new(
                (cx.key)("max_ttl"),
                format!("exceeds jwt.max_ttl ({}s)", cx.jwt_max_ttl.as_secs()),
            ));
        }
        Ok(())
    }
}

/// The claims of a JWT-SVID.
#[derive(Clone, Debug, Serialize)]
pub struct SvidClaims {
    /// The SPIFFE ID.
    pub sub: String,
    /// The audiences.
    pub aud: Vec<String>,
    /// Expires.
    pub exp: i64,
    /// Issued at.
    pub iat: i64,
    /// The lease id.
    pub jti: String,
}

impl Expiring for SvidClaims {
    fn expires_at(&self) -> i64 {
        self.exp
    }
}

/// Signs JWT-SVIDs with the broker's current key.
pub struct JwtSvidMinter {
    keys: Arc<RwLock<JwtKeySet>>,
}

#[async_trait]
impl Minter for JwtSvidMinter {
    fn kind(&self) -> LeaseKind {
        LeaseKind::JwtSvid
    }

    fn revocation(&self) -> Revocation {
        Revocation::IntrospectionOnly
    }

    fn flow(&self) -> Flow {
        Flow::Local
    }

    fn check_material(
        &self,
        spec: &GrantSpec,
        material: &Material<'_>,
    ) -> Result<(), MaterialError> {
        if material.csr.is_some() {
            return Err(MaterialError::bad(
                "csr_not_expected",
                "a jwt_svid grant takes no CSR",
            ));
        }
        let audience = material.audience.ok_or_else(|| {
            MaterialError::bad(
                "audience_required",
                "a jwt_svid grant needs the token's audience",
            )
        })?;
        let allowed = Settings::of(spec).map_or(&[][..], |s| s.audiences.as_slice());
        if let Some(outside) = audience.iter().find(|a| !allowed.contains(a)) {
            return Err(MaterialError {
                code: "audience_not_allowed",
                message: format!("the grant does not issue tokens for audience {outside:?}"),
                forbidden: true,
            });
        }
        Ok(())
    }

    fn seal(
        &self,
        _approved: &Approved<'_>,
        request: &MintRequest<'_>,
    ) -> Result<Sealed, SealError> {
        let mut aud = request
            .audience
            .ok_or_else(|| SealError::Failed("no audience".into()))?
            .to_vec();
        aud.sort();
        aud.dedup();
        let claims = SvidClaims {
            sub: request.identity.to_owned(),
            aud: aud.clone(),
            exp: request.expires_at_ms().div_euclid(1000),
            iat: request.now_ms.div_euclid(1000),
            jti: request.lease_id.to_owned(),
        };
        let keys = self
            .keys
            .read()
            .map_err(|_| SealError::KeysUnavailable("poisoned lock".into()))?;
        if keys.active().algorithm() != JwtAlgorithm::Es256 {
            return Err(SealError::KeysUnavailable(
                "the active JWT key is not ES256".into(),
            ));
        }
        let token = keys
            .sign(&claims, crate::clock::datetime(request.now_ms))
            .map_err(|e| SealError::Failed(e.to_string()))?;
        Ok(Sealed::new(json!({
            "type": "jwt_svid",
            "spiffe_id": request.identity,
            "token": token,
            "audience": aud,
        }))
        .recording(json!({"audience": aud, "kid": keys.active().kid()})))
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

    /// One record per token: never an intent without an outcome.
    async fn reconcile(&self, _lease: &Lease, _grant: Option<&GrantSpec>) -> Reconcile {
        Reconcile::Nothing
    }
}

/// Always built: JWT-SVIDs are signed with the broker's own JWT-SVID keys.
pub async fn build(deps: &Deps<'_>) -> Result<Option<Box<dyn Minter>>, String> {
    Ok(Some(Box::new(JwtSvidMinter {
        keys: deps.jwt_svid.clone(),
    })))
}
