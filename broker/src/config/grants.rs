//! `[[grants]]`: what a workload may be issued, with each kind's settings
//! and limits.

use mintguard_policy::budget::BudgetPolicy;
use serde::Deserialize;

use super::{Dur, Invalid, JwtConfig, Per};
use crate::mint::{GrantSpec, SettingsOf, SpecContext};

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

/// `[[grants]]` as written: the common keys, and the kind's settings
/// under the key the kind is named by (`vault = { … }` for `kind = "vault"`).
#[derive(Debug, Deserialize)]
pub(super) struct RawGrant {
    name: String,
    kind: GrantKind,
    max_ttl: Dur,
    #[serde(default)]
    eci_targets: Vec<String>,
    budget: Option<BudgetConfig>,
    reduced: Option<ReducedConfig>,
    #[serde(default)]
    allowed_hours: Option<[u8; 2]>,
    /// Every other key: the kind's settings, and nothing else.
    #[serde(flatten)]
    rest: toml::Table,
}

/// `[[grants]]`.
#[derive(Clone, Debug, PartialEq)]
pub struct GrantConfig {
    /// Unique name.
    pub name: String,
    /// The kind (`jwt`, `vault`, `aws_sts`, `static_secret`); the same as
    /// `spec.kind()`.
    pub kind: GrantKind,
    /// Longest TTL.
    pub max_ttl: Dur,
    /// Exposure-graph nodes the grant confers.
    pub eci_targets: Vec<String>,
    /// Per-identity budget for this grant.
    pub budget: Option<BudgetConfig>,
    /// The reduced variant.
    pub reduced: Option<ReducedConfig>,
    /// The kind's settings, checked by the kind itself.
    pub spec: GrantSpec,
    /// Allowed hours, UTC, `[start, end)` (e.g. `[7, 19]`; `[22, 6]` wraps
    /// midnight). When set, the `time` trust signal is 100 inside and 0
    /// outside; when absent, the signal drops out.
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

    /// The settings of the grant's kind as `T`, if it is of `T`'s kind.
    pub fn settings<T: SettingsOf>(&self) -> Option<&T> {
        T::of(&self.spec)
    }
}

/// What a grant's validation needs from the rest of the file.
#[derive(Clone, Copy, Debug)]
pub struct GrantContext<'a> {
    /// `[jwt]`.
    pub jwt: &'a JwtConfig,
    /// Whether `[vault]` is configured.
    pub has_vault: bool,
    /// `[ca] svid_ttl`: the longest SVID the CA signs.
    pub ca_svid_ttl: std::time::Duration,
}

impl RawGrant {
    /// The grant `grants[i]`: its name, TTLs, hours, budget and its kind's
    /// settings (read and checked by the kind).
    pub(super) fn into_grant(
        mut self,
        i: usize,
        cx: GrantContext<'_>,
    ) -> Result<GrantConfig, Invalid> {
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
        let kind = self.kind;
        let cx = SpecContext {
            key: &key,
            max_ttl: self.max_ttl.0,
            jwt_algorithm: cx.jwt.algorithm,
            jwt_max_ttl: cx.jwt.max_ttl.0,
            has_vault: cx.has_vault,
            ca_svid_ttl: cx.ca_svid_ttl,
        };
        GrantSpec::available(kind, &cx)?;
        // A kind whose settings all have defaults may leave its table out.
        let Some(settings) = self.rest.remove(kind.as_str()).or_else(|| {
            let empty = toml::Value::Table(toml::Table::new());
            GrantSpec::parse(kind, empty.clone()).ok().map(|_| empty)
        }) else {
            return Err(Invalid::new(
                key(kind.as_str()),
                format!("required for kind = \"{kind}\" ({kind} = {{ … }})"),
            ));
        };
        if let Some(other) = self.rest.keys().next() {
            return Err(Invalid::new(
                key(other),
                format!("unknown field `{other}` for a grant of kind {kind}"),
            ));
        }
        let spec =
            GrantSpec::parse(kind, settings).map_err(|e| Invalid::new(key(kind.as_str()), e))?;
        spec.validate(&cx)?;
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
        Ok(GrantConfig {
            name: self.name,
            kind,
            max_ttl: self.max_ttl,
            eci_targets: self.eci_targets,
            budget: self.budget,
            reduced: self.reduced,
            spec,
            allowed_hours: self.allowed_hours,
        })
    }
}
