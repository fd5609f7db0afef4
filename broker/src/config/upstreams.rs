//! `[vault]` and `[aws]`: the upstreams the broker mints from.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{Dur, Invalid};

/// `[vault] timeout` when unset.
pub const VAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// `[aws] timeout` when unset.
pub const AWS_TIMEOUT: Duration = Duration::from_secs(10);
/// `reconcile_after` when neither section sets it.
pub const RECONCILE_AFTER: Duration = Duration::from_secs(120);
/// How many upstream timeouts `reconcile_after` must outlast: a mint makes
/// at most three calls (a refused token re-read or a new login, then the
/// call again), so reconciliation never settles an intent whose mint may
/// still be running.
pub const RECONCILE_AFTER_TIMEOUTS: u32 = 3;

/// How old an intent without an outcome must be before reconciliation
/// looks at it: `[vault] reconcile_after`, else `[aws]`'s, else 2 min.
pub fn reconcile_after(vault: Option<&VaultConfig>, aws: &AwsConfig) -> Duration {
    vault
        .and_then(|v| v.reconcile_after)
        .or(aws.reconcile_after)
        .map_or(RECONCILE_AFTER, |d| d.0)
}

/// `reconcile_after` outlasts [`RECONCILE_AFTER_TIMEOUTS`] of each upstream
/// in use (`[vault]`, and `[aws]` when a grant mints from STS).
pub fn validate_reconcile_after(
    vault: Option<&VaultConfig>,
    aws: &AwsConfig,
    uses_aws: bool,
) -> Result<(), Invalid> {
    let after = reconcile_after(vault, aws);
    let timeouts = vault
        .map(|v| ("vault.timeout", v.timeout.map_or(VAULT_TIMEOUT, |d| d.0)))
        .into_iter()
        .chain(uses_aws.then(|| ("aws.timeout", aws.timeout.map_or(AWS_TIMEOUT, |d| d.0))));
    for (key, timeout) in timeouts {
        if after < timeout * RECONCILE_AFTER_TIMEOUTS {
            return Err(Invalid::new(
                if vault.is_some_and(|v| v.reconcile_after.is_some()) {
                    "vault.reconcile_after"
                } else {
                    "aws.reconcile_after"
                },
                format!(
                    "{}s is shorter than {RECONCILE_AFTER_TIMEOUTS} × {key} ({}s): an intent could be settled while its mint still runs",
                    after.as_secs_f64(),
                    timeout.as_secs_f64()
                ),
            ));
        }
    }
    Ok(())
}

/// `[vault.approle]`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AppRoleConfig {
    /// The auth mount. Default `approle`.
    #[serde(default)]
    pub mount: Option<String>,
    /// A file holding the role id.
    pub role_id_file: PathBuf,
    /// A file holding the secret id (0600).
    pub secret_id_file: PathBuf,
}

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

/// `[vault]`: the Vault or OpenBao the broker mints from.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct VaultConfig {
    /// `https://vault:8200` (plain http only on loopback).
    pub address: String,
    /// A file holding the broker's Vault token (0600), re-read when Vault
    /// refuses the current one. Exactly one of `token_file` and `approle`.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// AppRole login (files holding the role id and secret id).
    #[serde(default)]
    pub approle: Option<AppRoleConfig>,
    /// Extra PEM roots for the Vault server's certificate.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Per-call timeout. Default 5 s.
    #[serde(default)]
    pub timeout: Option<Dur>,
    /// An intent record without an outcome this old is reconciled (the
    /// broker died mid-mint). Default 2 min; keep it above any mint's time.
    #[serde(default)]
    pub reconcile_after: Option<Dur>,
}

impl VaultConfig {
    /// https (plain http only on loopback) and exactly one way to log in.
    pub fn validate(&self) -> Result<(), Invalid> {
        let url = url::Url::parse(&self.address)
            .map_err(|e| Invalid::new("vault.address", format!("{:?}: {e}", self.address)))?;
        let loopback = matches!(url.host(), Some(url::Host::Ipv4(a)) if a.is_loopback())
            || matches!(url.host(), Some(url::Host::Domain("localhost")));
        if url.scheme() != "https" && !(url.scheme() == "http" && loopback) {
            return Err(Invalid::new(
                "vault.address",
                "https required (plain http only on loopback)",
            ));
        }
        if self.token_file.is_some() == self.approle.is_some() {
            return Err(Invalid::new(
                "vault",
                "exactly one of token_file and approle",
            ));
        }
        Ok(())
    }
}
