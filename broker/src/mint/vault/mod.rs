//! The Vault / OpenBao minter over its HTTP API (raw calls: `vaultrs` 0.8
//! cannot parse some OpenBao answers, e.g. `sys/health` and token lookups
//! with `num_uses`): child tokens and dynamic secrets, each a lease with
//! revocation kind `effective` — revoked upstream and confirmed by a lookup.
//!
//! A mint needs a [`LoggedIntent`]: proof that the decision's intent record,
//! budget spend and lease are durable. The credential never enters the log;
//! the upstream reference (token accessor or Vault lease id) does.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    Approved, Deps, Flow, GrantSettings, GrantSpec, LeaseKind, LoggedIntent, MintError,
    MintRequest, Minted, Minter, Reconcile, Revocation, SettingsOf, SpecContext,
};
use crate::setting::Invalid;
use crate::store::Lease;

mod client;

pub use client::{AppRoleConfig, MAX_ACCESSORS_SCANNED, VAULT_TIMEOUT, VaultClient, VaultConfig, VaultError};

/// The Vault minter: child tokens and dynamic secrets, revoked effectively
/// (revoked upstream, confirmed by a lookup).
pub struct VaultMinter {
    client: Arc<VaultClient>,
}

impl VaultMinter {
    /// Mints through `client`.
    pub fn new(client: Arc<VaultClient>) -> Self {
        Self { client }
    }
}

#[async_trait]
impl Minter for VaultMinter {
    fn kind(&self) -> LeaseKind {
        LeaseKind::Vault
    }

    fn revocation(&self) -> Revocation {
        Revocation::Effective
    }

    fn flow(&self) -> Flow {
        Flow::Upstream
    }

    async fn mint(
        &self,
        _approved: &Approved<'_>,
        request: &MintRequest<'_>,
        intent: &LoggedIntent,
    ) -> Result<Minted, MintError> {
        let grant = request.settings::<Settings>()?;
        Ok(self
            .client
            .mint(intent, grant, request.identity, request.ttl_seconds)
            .await?)
    }

    async fn revoke(&self, upstream: &Value) -> Result<bool, MintError> {
        Ok(self.client.revoke(upstream).await?)
    }

    /// A child token is found by its `mintguard_lease` metadata and
    /// revoked (or closed as never minted); a dynamic secret cannot be
    /// searched for, so it is handed to an operator.
    async fn reconcile(&self, lease: &Lease, spec: Option<&GrantSpec>) -> Reconcile {
        match spec.and_then(Settings::of) {
            Some(VaultGrant::Token { .. }) => {
                match self.client.find_token_for_lease(&lease.id).await {
                    Ok(Some(accessor)) => {
                        let upstream = json!({"vault_accessor": accessor});
                        if self.client.revoke(&upstream).await.unwrap_or(false) {
                            Reconcile::Revoked { upstream }
                        } else {
                            tracing::error!(lease = %lease.id, "an unanswered Vault token could not be revoked; retrying at the next pass");
                            Reconcile::Retry
                        }
                    }
                    Ok(None) => Reconcile::NotMinted,
                    // Vault could not be searched now: the next pass tries again.
                    Err(e) => {
                        tracing::error!(lease = %lease.id, error = %e, "searching Vault for an unanswered token failed; retrying at the next pass");
                        Reconcile::Retry
                    }
                }
            }
            other => {
                let path = match other {
                    Some(VaultGrant::Secret { path, .. }) => path.clone(),
                    _ => String::new(),
                };
                let mut detail = serde_json::Map::new();
                detail.insert("vault_path".into(), path.into());
                detail.insert("intent_time_ms".into(), lease.issued_at_ms.into());
                detail.insert("action".into(), "find the Vault lease under this path issued at that time and revoke it, then `mintguard revoke LEASE --confirm-revoked-upstream`".into());
                Reconcile::OperatorAction {
                    detail,
                    end_task: false,
                }
            }
        }
    }
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

/// A `vault` grant's settings.
pub type Settings = VaultGrant;

/// A path the broker sends to Vault as it is (unescaped): 1–512 bytes of
/// plain segments, each of `[A-Za-z0-9._-]` and neither `.` nor `..`, so
/// no percent-encoding, traversal or query can reach another endpoint.
pub(super) fn plain_path(path: &str) -> bool {
    !path.is_empty()
        && path.len() <= 512
        && path.split('/').all(|seg| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        })
}

/// Whether `path` reaches one of Vault's own mounts: a segment `sys`,
/// `auth`, `identity` or `cubbyhole` (at the start, or after a namespace
/// prefix such as `team/sys/…`): never a grant's to reach.
pub(super) fn system_mount(path: &str) -> bool {
    path.split('/')
        .any(|seg| ["sys", "auth", "identity", "cubbyhole"].contains(&seg))
}

/// Grants of `kind` are minted through `[vault]`: refused without one.
pub(super) fn needs_vault(cx: &SpecContext<'_>, kind: &str) -> Result<(), Invalid> {
    if cx.has_vault {
        Ok(())
    } else {
        Err(Invalid::new(
            (cx.key)("kind"),
            format!("{kind} grants need a [vault] section"),
        ))
    }
}

impl GrantSettings for VaultGrant {
    fn available(cx: &SpecContext<'_>) -> Result<(), Invalid> {
        needs_vault(cx, "vault")
    }

    fn validate(&self, cx: &SpecContext<'_>) -> Result<(), Invalid> {
        match self {
            VaultGrant::Token { policies, .. } => {
                if policies.is_empty() || policies.iter().any(|p| p == "root" || p.is_empty()) {
                    return Err(Invalid::new(
                        (cx.key)("vault.token.policies"),
                        "one or more policies, never root",
                    ));
                }
                Ok(())
            }
            VaultGrant::Secret { path, .. } => {
                if !plain_path(path) || system_mount(path) {
                    return Err(Invalid::new(
                        (cx.key)("vault.secret.path"),
                        format!(
                            "{path:?}: a relative secrets-engine path (segments of [A-Za-z0-9._-], never under sys, auth, identity or cubbyhole)"
                        ),
                    ));
                }
                Ok(())
            }
        }
    }
}

/// Built when `[vault]` is configured.
pub async fn build(deps: &Deps<'_>) -> Result<Option<Box<dyn Minter>>, String> {
    Ok(deps
        .vault
        .map(|client| Box::new(VaultMinter::new(client.clone())) as Box<dyn Minter>))
}

#[cfg(test)]
mod tests {
    use mintguard_certs::jwt::JwtAlgorithm;

    use super::client::gone_after_lookup;
    use super::*;

    #[test]
    fn a_secret_path_is_plain_and_never_under_a_system_mount() {
        let key = |k: &str| format!("grants[0].{k}");
        let cx = SpecContext {
            key: &key,
            max_ttl: Duration::from_secs(600),
            jwt_algorithm: JwtAlgorithm::Es256,
            jwt_max_ttl: Duration::from_secs(3600),
            has_vault: true,
            ca_svid_ttl: Duration::from_secs(3600),
        };
        let secret = |path: &str| VaultGrant::Secret {
            path: path.into(),
            body: None,
        };
        for ok in ["database/creds/readonly", "pki/issue/web", "aws/creds/deploy-role.v2"] {
            assert!(secret(ok).validate(&cx).is_ok(), "{ok}");
        }
        for bad in [
            "%73ys/policies/acl/x",
            "identity/oidc/token/role",
            "cubbyhole/x",
            "./sys/x",
            "sys",
            "auth/token/create",
            "a/../sys/x",
            "a//b",
            "a?b",
            "team/sys/policies/acl/x",
            "team/auth/token/create",
            "/database/creds/x",
            "",
        ] {
            let e = secret(bad).validate(&cx).unwrap_err();
            assert_eq!(e.key, "grants[0].vault.secret.path", "{bad}");
        }
    }

    #[test]
    fn only_an_unknown_credential_confirms_a_revocation() {
        assert!(gone_after_lookup("x", 400).unwrap());
        assert!(gone_after_lookup("x", 404).unwrap());
        assert!(!gone_after_lookup("x", 200).unwrap());
        for status in [403, 429, 500, 503] {
            let e = gone_after_lookup("sys/leases/lookup", status).unwrap_err();
            assert!(e.to_string().contains(&status.to_string()), "{e}");
        }
    }
}
