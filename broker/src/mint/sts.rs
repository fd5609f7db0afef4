//! The AWS STS minter: `AssumeRole` with a `RoleSessionName` and
//! `SourceIdentity` derived from the SPIFFE ID, session tags (identity,
//! lease, node), `DurationSeconds` within STS's limits and, for the reduced
//! variant, an inline session policy. The broker's own AWS credentials come
//! from the standard chain; `[aws] endpoint` overrides the endpoint.
//!
//! STS sessions cannot be revoked one by one: leases are `advisory` until an
//! operator attaches the deny policy `mintguard aws revoke-policy` prints.

use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use aws_sdk_sts::types::{Credentials, Tag};
use mintguard_certs::jwt::{Expiring, JwtKeySet};
use serde::Serialize;
use serde_json::{Value, json};
use time::OffsetDateTime;

use super::Minted;
use super::{
    Approved, Flow, LeaseKind, LoggedIntent, MintError, MintRequest, Minter, Reconcile, Revocation,
    TtlBelowMinimum,
};
use super::{Deps, GrantSettings, GrantSpec, SettingsOf, SpecContext};
use crate::setting::Invalid;
use mintguard_certs::jwt::JwtAlgorithm;
use crate::store::Lease;
use crate::setting::Dur;
use serde::Deserialize;
use std::time::Duration;

/// How long a web-identity JWT is valid: long enough for one STS call.
const WEB_IDENTITY_TTL: i64 = 300;

/// The longest an STS call (one attempt) may take: `[aws] timeout`.
const DEFAULT_TIMEOUT: Duration = AWS_TIMEOUT;

/// A failed STS call.
#[derive(Debug, Clone, thiserror::Error)]
#[error("sts {message}")]
pub struct StsError {
    /// What failed.
    pub message: String,
    /// Whether STS may have issued the session all the same: the request
    /// may have reached it and no answer was read (a timeout, a connection
    /// lost, an answer that did not parse).
    pub ambiguous: bool,
}

impl StsError {
    /// A failure before anything reached STS, or STS's own refusal.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            ambiguous: false,
        }
    }

    /// A failed call (one attempt: the SDK does not retry), classified:
    /// only a request never sent (never built, failed before it went out,
    /// a connection refused) or an error answer from STS itself is sure to
    /// have issued nothing.
    fn from_sdk<E, R>(e: &aws_sdk_sts::error::SdkError<E, R>) -> Self
    where
        E: std::error::Error + 'static,
        R: std::fmt::Debug + 'static,
    {
        use aws_sdk_sts::error::SdkError;
        let ambiguous = match e {
            SdkError::ConstructionFailure(_) | SdkError::ServiceError(_) => false,
            // The transport's failures are io, timeout or a kind of `other`
            // (a connection closed mid-answer); `other` without a kind is
            // a step before sending (credentials, signing), `user` a request
            // the client would not send.
            SdkError::DispatchFailure(d) => {
                (d.is_io() || d.is_timeout() || d.as_other().is_some()) && !connection_refused(e)
            }
            // Timeouts, unreadable answers, and any kind the SDK adds later.
            _ => true,
        };
        Self {
            message: aws_sdk_sts::error::DisplayErrorContext(e).to_string(),
            ambiguous,
        }
    }
}

/// Whether `e` was caused by a refused connection (nothing was sent).
fn connection_refused(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(err) = cause {
        if err
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused)
        {
            return true;
        }
        cause = err.source();
    }
    false
}

/// The STS clients: one signing with the broker's credentials (standard
/// chain), one with none at all for `AssumeRoleWithWebIdentity`.
pub struct StsClient {
    client: aws_sdk_sts::Client,
    anonymous: aws_sdk_sts::Client,
    audience: String,
}

/// The claims of a web-identity JWT. IAM's OIDC federation reads `iss`,
/// `sub`, `aud`, the source identity and the session tags from it.
#[derive(Serialize)]
struct WebIdentityClaims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    jti: &'a str,
    iat: i64,
    nbf: i64,
    exp: i64,
    #[serde(rename = "https://aws.amazon.com/source_identity")]
    source_identity: &'a str,
    #[serde(rename = "https://aws.amazon.com/tags")]
    tags: Value,
}

impl Expiring for WebIdentityClaims<'_> {
    fn expires_at(&self) -> i64 {
        self.exp
    }
}

/// Who a session is for: the identity, its lease and the node that asked.
pub struct Session<'a> {
    /// The workload's SPIFFE ID.
    pub identity: &'a str,
    /// The node (or CI issuer) that vouched for it.
    pub node: &'a str,
    /// Seconds, already within STS's limits.
    pub duration: u64,
    /// Whether the decision was `allow_reduced`.
    pub reduced: bool,
}

/// A name STS accepts for `RoleSessionName` and `SourceIdentity`
/// (`[\w+=,.@-]`, 2–64 characters) derived from a SPIFFE ID, readable and
/// **injective**: two identities never share a name (an IAM policy or a
/// CloudTrail reader telling sessions apart by it cannot be fooled).
///
/// After `spiffe://`, `[A-Za-z0-9._-]` stay, `/` becomes `@` (which no
/// SPIFFE ID holds), and any other byte becomes `=XX` (hex). A name longer
/// than 64 keeps its last 47 characters and appends `+` and 64 bits of the
/// identity's SHA-256; `+` appears in no unshortened name, so a shortened
/// name never equals one.
pub fn session_name(identity: &str) -> String {
    let mut body = String::with_capacity(identity.len());
    for b in identity.trim_start_matches("spiffe://").bytes() {
        match b {
            b'/' => body.push('@'),
            b if b.is_ascii_alphanumeric() || b"._-".contains(&b) => body.push(char::from(b)),
            b => body.push_str(&format!("={b:02X}")),
        }
    }
    if (2..=64).contains(&body.len()) {
        return body;
    }
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, identity.as_bytes());
    let hash = crate::ids::hex(&digest.as_ref()[..8]);
    let keep = 64 - hash.len() - 1;
    let tail = &body[body.len().saturating_sub(keep)..];
    format!("{tail}+{hash}")
}

/// A session tag value STS accepts (≤ 256 of `[\p{L}\p{Z}\p{N}_.:/=+\-@]`).
fn tag_value(value: &str) -> String {
    value
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || c.is_whitespace() || "_.:/=+-@".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(256)
        .collect()
}

impl StsClient {
    /// A client for `[aws]`.
    pub async fn new(config: &AwsConfig) -> Self {
        let loader = || {
            let region = config.region.clone().unwrap_or_else(|| "us-east-1".into());
            let timeout = config.timeout.map_or(DEFAULT_TIMEOUT, |d| d.0);
            let loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
                .region(aws_config::Region::new(region))
                .timeout_config(
                    aws_config::timeout::TimeoutConfig::builder()
                        .operation_timeout(timeout)
                        .build(),
                )
                // One attempt per mint, so a failure says whether STS may
                // have issued a session (a retry could hide an unanswered
                // first attempt); the caller retries.
                .retry_config(aws_config::retry::RetryConfig::disabled());
            match &config.endpoint {
                Some(endpoint) => loader.endpoint_url(endpoint),
                None => loader,
            }
        };
        Self {
            client: aws_sdk_sts::Client::new(&loader().load().await),
            anonymous: aws_sdk_sts::Client::new(&loader().no_credentials().load().await),
            audience: config
                .web_identity_audience
                .clone()
                .unwrap_or_else(|| "sts.amazonaws.com".into()),
        }
    }

    /// The JWT a `web_identity` grant presents to STS: `sub` is the SPIFFE
    /// ID, `jti` the lease, the source identity and session tags ride in
    /// AWS's claims, and it lives five minutes (or `max_token_ttl`).
    pub fn web_identity_token(
        &self,
        keys: &JwtKeySet,
        issuer: &str,
        proof: &LoggedIntent,
        session: &Session<'_>,
        now: OffsetDateTime,
    ) -> Result<String, StsError> {
        let iat = now.unix_timestamp();
        let ttl = WEB_IDENTITY_TTL.min(
            i64::try_from(keys.settings().max_token_ttl.as_secs()).unwrap_or(WEB_IDENTITY_TTL),
        );
        let claims = WebIdentityClaims {
            iss: issuer,
            sub: session.identity,
            aud: &self.audience,
            jti: proof.lease_id(),
            iat,
            nbf: iat,
            exp: iat + ttl,
            source_identity: &session_name(session.identity),
            tags: json!({
                "principal_tags": {
                    "mintguard:identity": [tag_value(session.identity)],
                    "mintguard:lease": [tag_value(proof.lease_id())],
                    "mintguard:node": [tag_value(session.node)],
                },
                "transitive_tag_keys": [],
            }),
        };
        keys.sign(&claims, now)
            .map_err(|e| StsError::new(format!("signing the web-identity token: {e}")))
    }

    /// Assumes the grant's role for the session: `AssumeRole` signed with
    /// the broker's credentials, or `AssumeRoleWithWebIdentity` with
    /// `web_identity` (from [`Self::web_identity_token`]) for grants in that
    /// mode. The reduced variant carries the grant's session policy.
    pub async fn mint(
        &self,
        proof: &LoggedIntent,
        grant: &AwsStsGrant,
        session: &Session<'_>,
        web_identity: Option<String>,
    ) -> Result<Minted, StsError> {
        let name = session_name(session.identity);
        let duration = i32::try_from(session.duration).unwrap_or(i32::MAX);
        let policy = match &grant.reduced_policy {
            Some(p) if session.reduced => {
                if p.chars().count() > sts_limits::MAX_POLICY_CHARS {
                    return Err(StsError::new("the session policy exceeds 2,048 characters"));
                }
                Some(p.clone())
            }
            _ => None,
        };
        let sent_policy = policy.is_some();
        let (creds, arn) = match (grant.mode, web_identity) {
            (StsMode::AssumeRole, _) => {
                let tag = |k: &str, v: &str| {
                    Tag::builder()
                        .key(k)
                        .value(tag_value(v))
                        .build()
                        .map_err(|e| StsError::new(e.to_string()))
                };
                let answer = self
                    .client
                    .assume_role()
                    .role_arn(&grant.role_arn)
                    .role_session_name(&name)
                    .source_identity(&name)
                    .duration_seconds(duration)
                    .tags(tag("mintguard:identity", session.identity)?)
                    .tags(tag("mintguard:lease", proof.lease_id())?)
                    .tags(tag("mintguard:node", session.node)?)
                    .set_policy(policy)
                    .send()
                    .await
                    .map_err(|e| StsError::from_sdk(&e))?;
                let arn = answer.assumed_role_user().map(|u| u.arn().to_owned());
                (answer.credentials, arn)
            }
            (StsMode::WebIdentity, Some(token)) => {
                let answer = self
                    .anonymous
                    .assume_role_with_web_identity()
                    .role_arn(&grant.role_arn)
                    .role_session_name(&name)
                    .web_identity_token(token)
                    .duration_seconds(duration)
                    .set_policy(policy)
                    .send()
                    .await
                    .map_err(|e| StsError::from_sdk(&e))?;
                let arn = answer.assumed_role_user().map(|u| u.arn().to_owned());
                (answer.credentials, arn)
            }
            (StsMode::WebIdentity, None) => {
                return Err(StsError::new("no web-identity token was signed"));
            }
        };
        let creds: Credentials =
            creds.ok_or_else(|| StsError::new("no credentials in the answer"))?;
        let expiration = creds
            .expiration()
            .fmt(aws_sdk_sts::primitives::DateTimeFormat::DateTime)
            .unwrap_or_default();
        let arn = arn.unwrap_or_default();
        let mode = match grant.mode {
            StsMode::AssumeRole => "assume_role",
            StsMode::WebIdentity => "web_identity",
        };
        Ok(Minted {
            credential: json!({
                "type": "aws",
                "access_key_id": creds.access_key_id(),
                "secret_access_key": creds.secret_access_key(),
                "session_token": creds.session_token(),
                "expiration": expiration,
                "assumed_role_arn": arn,
            }),
            upstream: json!({
                "assumed_role_arn": arn, "role_session_name": name, "source_identity": name,
                "lease_tag": proof.lease_id(), "duration_seconds": session.duration,
                "session_policy": sent_policy, "mode": mode,
            }),
            lease_seconds: session.duration,
        })
    }
}

impl From<StsError> for MintError {
    fn from(e: StsError) -> Self {
        Self {
            message: e.to_string(),
            ambiguous: e.ambiguous,
        }
    }
}

/// The STS minter: sessions of the grant's role, advisory leases (an
/// operator attaches a deny policy to end one early).
pub struct StsMinter {
    client: StsClient,
    /// The broker's JWT keys, which sign `web_identity` grants' tokens.
    keys: Arc<RwLock<JwtKeySet>>,
}

impl StsMinter {
    /// Mints through `client`; `keys` sign web-identity tokens.
    pub fn new(client: StsClient, keys: Arc<RwLock<JwtKeySet>>) -> Self {
        Self { client, keys }
    }
}

#[async_trait]
impl Minter for StsMinter {
    fn kind(&self) -> LeaseKind {
        LeaseKind::AwsSts
    }

    fn revocation(&self) -> Revocation {
        Revocation::Advisory
    }

    fn flow(&self) -> Flow {
        Flow::Upstream
    }

    /// STS's floor (900 s) refuses a shorter decided TTL unless the grant
    /// sets `ttl_floor = "upstream"`; its ceiling caps a longer one.
    fn ttl_seconds(&self, spec: &GrantSpec, decided: u64) -> Result<u64, TtlBelowMinimum> {
        let floor_upstream = Settings::of(spec)
            .is_some_and(|g| g.ttl_floor.as_deref() == Some("upstream"));
        if decided < sts_limits::MIN_DURATION && !floor_upstream {
            return Err(TtlBelowMinimum {
                ttl_seconds: decided,
                minimum: sts_limits::MIN_DURATION,
            });
        }
        Ok(decided.clamp(sts_limits::MIN_DURATION, sts_limits::MAX_DURATION))
    }

    async fn mint(
        &self,
        approved: &Approved<'_>,
        request: &MintRequest<'_>,
        intent: &LoggedIntent,
    ) -> Result<Minted, MintError> {
        let grant = request.settings::<Settings>()?;
        let session = Session {
            identity: request.identity,
            node: request.node,
            duration: request.ttl_seconds,
            reduced: approved.decision().reduced,
        };
        let token = match grant.mode {
            StsMode::AssumeRole => None,
            StsMode::WebIdentity => {
                let keys = self
                    .keys
                    .read()
                    .map_err(|_| StsError::new("the JWT keys are unavailable"))?;
                Some(self.client.web_identity_token(
                    &keys,
                    request.issuer_url,
                    intent,
                    &session,
                    crate::clock::datetime(request.now_ms),
                )?)
            }
        };
        Ok(self.client.mint(intent, grant, &session, token).await?)
    }

    async fn revoke(&self, _upstream: &Value) -> Result<bool, MintError> {
        Err(MintError::new(
            "STS sessions cannot be revoked one by one; attach the deny policy (`mintguard aws revoke-policy`)",
        ))
    }

    /// An STS session cannot be found or revoked one by one: an operator
    /// attaches the deny policy, once.
    async fn reconcile(&self, lease: &Lease, _grant: Option<&GrantSpec>) -> Reconcile {
        if lease.task_ended_at_ms.is_some() {
            return Reconcile::Nothing;
        }
        let mut detail = serde_json::Map::new();
        detail.insert("minted_unanswered".into(), "unknown".into());
        detail.insert("action".into(), self.advisory_action(&lease.id).into());
        Reconcile::OperatorAction {
            detail,
            end_task: true,
        }
    }

    fn advisory_action(&self, lease_id: &str) -> String {
        advisory_action(lease_id)
    }
}

/// What an operator does to end an STS lease.
pub fn advisory_action(lease_id: &str) -> String {
    format!(
        "attach the deny policy from `mintguard aws revoke-policy {lease_id}` to the role, then `mintguard revoke {lease_id} --confirm-attached`"
    )
}

/// The IAM deny policy that ends sessions an operator wants revoked: those
/// tagged with `lease`, or those whose `SourceIdentity` is the identity's
/// session name and were issued before `before` (RFC 3339).
pub fn revoke_policy(lease: Option<&str>, identity: Option<&str>, before: &str) -> Value {
    let condition = match (lease, identity) {
        (Some(lease), _) => json!({
            "StringEquals": {"aws:PrincipalTag/mintguard:lease": lease},
            "DateLessThan": {"aws:TokenIssueTime": before},
        }),
        (None, Some(identity)) => json!({
            "StringEquals": {"aws:SourceIdentity": session_name(identity)},
            "DateLessThan": {"aws:TokenIssueTime": before},
        }),
        (None, None) => json!({}),
    };
    json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Sid": "MintguardRevoke",
            "Effect": "Deny",
            "Action": "*",
            "Resource": "*",
            "Condition": condition,
        }],
    })
}

/// `aws_sts = { … }` on a grant.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AwsStsGrant {
    /// The role to assume.
    pub role_arn: String,
    /// An inline session policy (JSON) applied to the reduced variant.
    #[serde(default)]
    pub reduced_policy: Option<String>,
    /// A decided TTL below STS's 900 s floor: `"upstream"` mints 900 s (the
    /// log records it), `"refuse"` (default) refuses with
    /// `ttl_below_upstream_minimum`.
    #[serde(default)]
    pub ttl_floor: Option<String>,
    /// `"assume_role"` (default: the broker's own AWS credentials sign
    /// `AssumeRole`) or `"web_identity"` (`AssumeRoleWithWebIdentity` with a
    /// broker-signed ES256 JWT; the broker holds no AWS keys).
    #[serde(default)]
    pub mode: StsMode,
}

/// How the broker authenticates to STS for a grant.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum StsMode {
    /// `AssumeRole`, signed with the broker's credentials.
    #[default]
    AssumeRole,
    /// `AssumeRoleWithWebIdentity` with a JWT from the broker's JWKS (an IAM
    /// OIDC provider for `issuer_url` trusts it).
    WebIdentity,
}

/// STS's own limits, enforced before any call.
pub mod sts_limits {
    /// Shortest session, seconds.
    pub const MIN_DURATION: u64 = 900;
    /// Longest session (role maximum), seconds.
    pub const MAX_DURATION: u64 = 43_200;
    /// Longest inline session policy, characters.
    pub const MAX_POLICY_CHARS: usize = 2048;
}

/// An `aws_sts` grant's settings.
pub type Settings = AwsStsGrant;

impl GrantSettings for AwsStsGrant {
    fn validate(&self, cx: &SpecContext<'_>) -> Result<(), Invalid> {
        if !self.role_arn.starts_with("arn:") || self.role_arn.split(':').count() < 6 {
            return Err(Invalid::new(
                (cx.key)("aws_sts.role_arn"),
                format!("{:?} is not a role ARN", self.role_arn),
            ));
        }
        if let Some(p) = &self.reduced_policy {
            if p.chars().count() > sts_limits::MAX_POLICY_CHARS {
                return Err(Invalid::new(
                    (cx.key)("aws_sts.reduced_policy"),
                    format!(
                        "longer than STS's {} characters",
                        sts_limits::MAX_POLICY_CHARS
                    ),
                ));
            }
            if serde_json::from_str::<Value>(p).is_err() {
                return Err(Invalid::new((cx.key)("aws_sts.reduced_policy"), "not JSON"));
            }
        }
        if self
            .ttl_floor
            .as_deref()
            .is_some_and(|f| f != "upstream" && f != "refuse")
        {
            return Err(Invalid::new(
                (cx.key)("aws_sts.ttl_floor"),
                "\"upstream\" or \"refuse\"",
            ));
        }
        if self.mode == StsMode::WebIdentity && cx.jwt_algorithm != JwtAlgorithm::Es256 {
            return Err(Invalid::new(
                (cx.key)("aws_sts.mode"),
                "web_identity needs jwt.algorithm = \"ES256\" (IAM OIDC providers do not accept EdDSA)",
            ));
        }
        if cx.max_ttl.as_secs() > sts_limits::MAX_DURATION {
            return Err(Invalid::new(
                (cx.key)("max_ttl"),
                "STS sessions last at most 12 h",
            ));
        }
        Ok(())
    }
}

/// Built when a grant mints from STS (the client reads the AWS credential
/// chain, which a broker without STS grants need not have).
pub async fn build(deps: &Deps<'_>) -> Result<Option<Box<dyn Minter>>, String> {
    if !(deps.used)(LeaseKind::AwsSts) {
        return Ok(None);
    }
    let client = StsClient::new(deps.aws).await;
    Ok(Some(Box::new(StsMinter::new(client, deps.jwt.clone()))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_names_fit_sts_rules_and_stay_unique() {
        assert_eq!(
            session_name("spiffe://example.org/ns/pay/sa/api"),
            "example.org@ns@pay@sa@api"
        );
        // Names that mapped alike before (`/` and `.` both to `.`) differ.
        assert_ne!(
            session_name("spiffe://example.org/a/b"),
            session_name("spiffe://example.org/a.b")
        );
        assert_ne!(
            session_name("spiffe://x/a b"),
            session_name("spiffe://x/a-b")
        );
        // A shortened name never equals an unshortened one.
        let shortened = session_name(&format!("spiffe://example.org/{}", "c".repeat(80)));
        assert_eq!(shortened.len(), 64);
        assert!(shortened.contains('+'));
        let long = format!("spiffe://example.org/{}", "a".repeat(100));
        let other = format!("spiffe://example.org/{}b", "a".repeat(99));
        let (a, b) = (session_name(&long), session_name(&other));
        assert!(a.len() <= 64 && b.len() <= 64);
        assert_ne!(a, b);
        assert!(
            [session_name("spiffe://x/y z~"), shortened]
                .iter()
                .all(|n| {
                    n.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "_+=,.@-".contains(c))
                })
        );
    }
}

/// `[aws] timeout` when unset.
pub const AWS_TIMEOUT: Duration = Duration::from_secs(10);

/// `[aws]`: where STS is and how the broker reaches it (its own
/// credentials come from the standard chain).
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct AwsConfig {
    /// Region. Default `us-east-1`.
    pub region: Option<String>,
    /// An STS endpoint override (tests, VPC endpoints).
    pub endpoint: Option<String>,
    /// The longest an STS call (one attempt) may take. Default 10 s.
    /// A call cut off by it may have been answered by STS: it is not
    /// refunded and is left to reconciliation.
    pub timeout: Option<Dur>,
    /// An intent without an outcome this old is logged for operator action
    /// (when `[vault]` does not set it). Default 2 min.
    pub reconcile_after: Option<Dur>,
    /// The `aud` of web-identity JWTs (the IAM OIDC provider's client id).
    /// Default `sts.amazonaws.com`.
    pub web_identity_audience: Option<String>,
}
