//! `[[grants]]`: what a workload may be issued, with each kind's settings
//! and limits.

use std::collections::BTreeMap;

use mintguard_certs::jwt::JwtAlgorithm;
use mintguard_policy::budget::BudgetPolicy;
use serde::Deserialize;

use super::{Dur, Invalid, JwtConfig, Per};

/// A grant's budget (`budget = { amount, per, base, per_5min, eci_factor }`).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BudgetConfig {
    /// Capacity and refill amount, tokens.
    pub amount: u64,
    /// `"1h"` or `"never"`.
    pub per: Per,
    /// Default 1.
    #[serde(default = "one")]
    pub base: u64,
    /// Default 0.
    #[serde(default)]
    pub per_5min: u64,
    /// Default 0.
    #[serde(default)]
    pub eci_factor: f64,
}

fn one() -> u64 {
    1
}

impl BudgetConfig {
    /// As the policy crate's type.
    pub fn policy(&self) -> BudgetPolicy {
        BudgetPolicy {
            amount: self.amount,
            per: self.per.0,
            base: self.base,
            per_5min: self.per_5min,
            eci_factor: self.eci_factor,
        }
    }
}

/// `reduced = { max_ttl }`: the privilege-reduced variant.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ReducedConfig {
    /// The reduced variant's longest TTL.
    pub max_ttl: Option<Dur>,
}

/// The kinds of grant: a grant of a kind mints leases of that kind.
pub use crate::lease::LeaseKind as GrantKind;

/// `[grants.jwt]`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JwtGrant {
    /// The `aud` claim.
    pub audience: String,
    /// Extra claims (strings) added to every token of this grant.
    #[serde(default)]
    pub claims: BTreeMap<String, String>,
}

/// `vault = { token = { … } }` or `vault = { secret = { … } }` on a grant.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum VaultGrant {
    /// A child token of the broker's token.
    Token {
        /// Policies the token carries (never `root`).
        policies: Vec<String>,
        /// Uses before it is spent (0 = unlimited).
        #[serde(default)]
        num_uses: u32,
    },
    /// A dynamic secret read, e.g. `database/creds/readonly` or a PKI issue
    /// (`pki/issue/web`, with `body`).
    Secret {
        /// The path under `/v1/`.
        path: String,
        /// A JSON body to write (PKI issue); without it the path is read.
        #[serde(default)]
        body: Option<BTreeMap<String, String>>,
    },
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

/// `static_secret = { mount, path, fields }` on a grant: one version of a
/// secret in Vault's KV store (version 2), read per issuance.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct StaticSecretGrant {
    /// The KV v2 mount. Default `secret`.
    #[serde(default = "default_kv_mount")]
    pub mount: String,
    /// The secret's path under the mount.
    pub path: String,
    /// The keys handed out (one or more, named: a key added to the secret
    /// later is not handed out by surprise); a key the secret lacks fails
    /// the mint.
    pub fields: Vec<String>,
}

fn default_kv_mount() -> String {
    "secret".to_owned()
}

/// Most keys a static secret grant may name.
pub const MAX_SECRET_FIELDS: usize = 32;

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

/// `[[grants]]`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GrantConfig {
    /// Unique name.
    pub name: String,
    /// `jwt` (available), `vault`, `aws_sts`.
    pub kind: GrantKind,
    /// Longest TTL.
    pub max_ttl: Dur,
    /// Exposure-graph nodes the grant confers.
    #[serde(default)]
    pub eci_targets: Vec<String>,
    /// Per-identity budget for this grant.
    pub budget: Option<BudgetConfig>,
    /// The reduced variant.
    pub reduced: Option<ReducedConfig>,
    /// JWT settings (kind `jwt`).
    pub jwt: Option<JwtGrant>,
    /// Vault settings (kind `vault`).
    pub vault: Option<VaultGrant>,
    /// AWS STS settings (kind `aws_sts`).
    pub aws_sts: Option<AwsStsGrant>,
    /// Vault KV settings (kind `static_secret`).
    pub static_secret: Option<StaticSecretGrant>,
    /// Allowed hours, UTC, `[start, end)` (e.g. `[7, 19]`; `[22, 6]` wraps
    /// midnight). When set, the `time` trust signal is 100 inside and 0
    /// outside; when absent, the signal drops out.
    #[serde(default)]
    pub allowed_hours: Option<[u8; 2]>,
}

impl GrantConfig {
    /// Whether `hour` (0–23, UTC) is allowed; `None` when no hours are configured.
    pub fn hour_allowed(&self, hour: u8) -> Option<bool> {
        self.allowed_hours.map(|[start, end]| {
            if start < end {
                (start..end).contains(&hour)
            } else {
                hour >= start || hour < end
            }
        })
    }
}

/// What a grant's validation needs from the rest of the file.
#[derive(Clone, Copy, Debug)]
pub struct GrantContext<'a> {
    /// `[jwt]`.
    pub jwt: &'a JwtConfig,
    /// Whether `[vault]` is configured.
    pub has_vault: bool,
}

impl GrantConfig {
    /// The grant `grants[i]`: its name, TTLs, hours, budget and its kind's
    /// settings.
    pub fn validate(&self, i: usize, cx: GrantContext<'_>) -> Result<(), Invalid> {
        let key = |k: &str| format!("grants[{i}].{k}");
        if self.name.is_empty()
            || self.name.len() > mintguard_api::MAX_GRANT_LEN
            || !self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        {
            return Err(Invalid::new(
                key("name"),
                format!("{:?}: 1–128 characters of [A-Za-z0-9._-]", self.name),
            ));
        }
        if self.max_ttl.0.is_zero() {
            return Err(Invalid::new(key("max_ttl"), "must be positive"));
        }
        match self.kind {
            GrantKind::Jwt => self.validate_jwt(&key, cx.jwt)?,
            GrantKind::Vault => self.validate_vault(&key, cx.has_vault)?,
            GrantKind::AwsSts => self.validate_aws_sts(&key, cx.jwt)?,
            GrantKind::StaticSecret => self.validate_static_secret(&key, cx.has_vault)?,
        }
        if let Some([start, end]) = self.allowed_hours
            && (start > 23 || end > 24 || start == end)
        {
            return Err(Invalid::new(
                key("allowed_hours"),
                "expected [start, end) hours, 0–24, start ≠ end",
            ));
        }
        if let Some(b) = &self.budget {
            b.policy()
                .validate(&key("budget"))
                .map_err(|e| Invalid::new(key("budget"), e.to_string()))?;
        }
        if let Some(Some(max)) = self.reduced.as_ref().map(|r| r.max_ttl)
            && max.0 > self.max_ttl.0
        {
            return Err(Invalid::new(
                key("reduced.max_ttl"),
                "exceeds the grant's max_ttl",
            ));
        }
        Ok(())
    }

    fn validate_jwt(&self, key: &dyn Fn(&str) -> String, jwt: &JwtConfig) -> Result<(), Invalid> {
        if self.jwt.as_ref().is_none_or(|j| j.audience.is_empty()) {
            return Err(Invalid::new(
                key("jwt"),
                "a jwt grant needs jwt = { audience = \"…\" }",
            ));
        }
        if self.max_ttl.0 > jwt.max_ttl.0 {
            return Err(Invalid::new(
                key("max_ttl"),
                format!("exceeds jwt.max_ttl ({}s)", jwt.max_ttl.0.as_secs()),
            ));
        }
        for claim in self.jwt.iter().flat_map(|j| j.claims.keys()) {
            if ["iss", "sub", "aud", "exp", "nbf", "iat", "jti"].contains(&claim.as_str()) {
                return Err(Invalid::new(
                    key("jwt.claims"),
                    format!("{claim:?} is set by the broker"),
                ));
            }
        }
        Ok(())
    }

    fn validate_vault(&self, key: &dyn Fn(&str) -> String, has_vault: bool) -> Result<(), Invalid> {
        if !has_vault {
            return Err(Invalid::new(
                key("kind"),
                "vault grants need a [vault] section",
            ));
        }
        match &self.vault {
            None => Err(Invalid::new(key("vault"), "required for kind = \"vault\"")),
            Some(VaultGrant::Token { policies, .. }) => {
                if policies.is_empty() || policies.iter().any(|p| p == "root" || p.is_empty()) {
                    return Err(Invalid::new(
                        key("vault.token.policies"),
                        "one or more policies, never root",
                    ));
                }
                Ok(())
            }
            Some(VaultGrant::Secret { path, .. }) => {
                if path.is_empty()
                    || path.starts_with('/')
                    || path.contains("..")
                    || path.starts_with("sys/")
                    || path.starts_with("auth/")
                {
                    return Err(Invalid::new(
                        key("vault.secret.path"),
                        format!("{path:?}: a relative secrets-engine path"),
                    ));
                }
                Ok(())
            }
        }
    }

    fn validate_static_secret(
        &self,
        key: &dyn Fn(&str) -> String,
        has_vault: bool,
    ) -> Result<(), Invalid> {
        if !has_vault {
            return Err(Invalid::new(
                key("kind"),
                "static_secret grants need a [vault] section",
            ));
        }
        let Some(s) = &self.static_secret else {
            return Err(Invalid::new(
                key("static_secret"),
                "required for kind = \"static_secret\"",
            ));
        };
        // Sent as a URL path unescaped: plain segments only, never a
        // system mount.
        let plain = |p: &str| {
            !p.is_empty()
                && p.len() <= 512
                && p.split('/').all(|seg| {
                    !seg.is_empty()
                        && seg != "."
                        && seg != ".."
                        && seg
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
                })
        };
        let system = s
            .mount
            .split('/')
            .next()
            .is_some_and(|first| ["sys", "auth", "identity", "cubbyhole"].contains(&first));
        if !plain(&s.mount) || system {
            return Err(Invalid::new(
                key("static_secret.mount"),
                format!("{:?}: a KV v2 mount (segments of [A-Za-z0-9._-])", s.mount),
            ));
        }
        if !plain(&s.path) {
            return Err(Invalid::new(
                key("static_secret.path"),
                format!("{:?}: a relative path (segments of [A-Za-z0-9._-])", s.path),
            ));
        }
        if s.fields.is_empty()
            || s.fields.len() > MAX_SECRET_FIELDS
            || s.fields.iter().any(|f| f.is_empty() || f.len() > 128)
        {
            return Err(Invalid::new(
                key("static_secret.fields"),
                format!("1 to {MAX_SECRET_FIELDS} keys of 1–128 characters"),
            ));
        }
        Ok(())
    }

    fn validate_aws_sts(
        &self,
        key: &dyn Fn(&str) -> String,
        jwt: &JwtConfig,
    ) -> Result<(), Invalid> {
        let Some(a) = &self.aws_sts else {
            return Err(Invalid::new(
                key("aws_sts"),
                "required for kind = \"aws_sts\"",
            ));
        };
        if !a.role_arn.starts_with("arn:") || a.role_arn.split(':').count() < 6 {
            return Err(Invalid::new(
                key("aws_sts.role_arn"),
                format!("{:?} is not a role ARN", a.role_arn),
            ));
        }
        if let Some(p) = &a.reduced_policy {
            if p.chars().count() > sts_limits::MAX_POLICY_CHARS {
                return Err(Invalid::new(
                    key("aws_sts.reduced_policy"),
                    format!(
                        "longer than STS's {} characters",
                        sts_limits::MAX_POLICY_CHARS
                    ),
                ));
            }
            if serde_json::from_str::<serde_json::Value>(p).is_err() {
                return Err(Invalid::new(key("aws_sts.reduced_policy"), "not JSON"));
            }
        }
        if a.ttl_floor
            .as_deref()
            .is_some_and(|f| f != "upstream" && f != "refuse")
        {
            return Err(Invalid::new(
                key("aws_sts.ttl_floor"),
                "\"upstream\" or \"refuse\"",
            ));
        }
        if a.mode == StsMode::WebIdentity && jwt.algorithm != JwtAlgorithm::Es256 {
            return Err(Invalid::new(
                key("aws_sts.mode"),
                "web_identity needs jwt.algorithm = \"ES256\" (IAM OIDC providers do not accept EdDSA)",
            ));
        }
        if self.max_ttl.0.as_secs() > sts_limits::MAX_DURATION {
            return Err(Invalid::new(
                key("max_ttl"),
                "STS sessions last at most 12 h",
            ));
        }
        Ok(())
    }
}
