//! The static-secret minter: one version of a secret in Vault's KV store
//! (version 2), read at issuance for a decided, logged request.
//!
//! Nothing is created upstream, so nothing can be revoked there: a lease
//! is **advisory**, and since the secret does not expire by itself, neither
//! does its lease ([`NEVER_MS`]): it stays live, in `leases` and in every
//! `revoke` of its identity or node, until an operator rotates the secret
//! (writes a new version and changes it where it is used) and confirms it.
//! The record names the KV path and version that were handed out, never the
//! secret. A read creates nothing upstream, so any failed read is refunded.

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::{Map, Value, json};

use super::vault::{VaultClient, VaultError, plain_path, system_mount};
use super::{
    Approved, Flow, LeaseKind, LoggedIntent, MintError, MintRequest, Minted, Minter, NEVER_MS,
    Reconcile, Revocation,
};
use super::{Deps, GrantSettings, GrantSpec, SpecContext};
use crate::setting::Invalid;
use serde::Deserialize;
use crate::store::Lease;

/// Reads the secrets of `static_secret` grants through the broker's Vault.
pub struct StaticSecretMinter {
    client: Arc<VaultClient>,
}

impl StaticSecretMinter {
    /// Reads through `client`.
    pub fn new(client: Arc<VaultClient>) -> Self {
        Self { client }
    }
}

#[async_trait]
impl Minter for StaticSecretMinter {
    fn kind(&self) -> LeaseKind {
        LeaseKind::StaticSecret
    }

    fn revocation(&self) -> Revocation {
        Revocation::Advisory
    }

    fn flow(&self) -> Flow {
        Flow::Upstream
    }

    fn lease_expires_at_ms(&self, _request: &MintRequest<'_>) -> i64 {
        NEVER_MS
    }

    fn leaves_upstream(&self) -> bool {
        false
    }

    async fn mint(
        &self,
        _approved: &Approved<'_>,
        request: &MintRequest<'_>,
        _intent: &LoggedIntent,
    ) -> Result<Minted, MintError> {
        let grant = request.settings::<Settings>()?;
        let location = format!("{}/{}", grant.mount, grant.path);
        // Not ambiguous even unanswered: a read mints nothing, and the
        // workload sees the secret only after the outcome record.
        let read = read_kv(&self.client, &grant.mount, &grant.path)
            .await
            .map_err(|e| MintError::new(format!("{location}: {e}")))?;
        // A deleted or destroyed current version reads as `data: null`.
        let Some(data) = read["data"].as_object() else {
            return Err(MintError::new(format!(
                "{location}: the current version has no data (deleted or destroyed)"
            )));
        };
        let handed = pick(data, &grant.fields)
            .map_err(|key| MintError::new(format!("{location}: the secret has no key {key:?}")))?;
        let Some(version) = read["metadata"]["version"].as_u64() else {
            return Err(MintError::new(format!(
                "{location}: the answer names no version (not a KV version 2 mount?)"
            )));
        };
        Ok(Minted {
            credential: json!({"type": "static_secret", "data": handed,
                "path": location, "version": version}),
            upstream: json!({"vault_kv": location, "version": version}),
            lease_seconds: 0,
        })
    }

    async fn revoke(&self, _upstream: &Value) -> Result<bool, MintError> {
        Err(MintError::new(
            "a static secret cannot be revoked upstream; rotate it in Vault",
        ))
    }

    /// A read that was never answered handed nothing out (the workload
    /// receives the secret only after the outcome record): nothing to
    /// settle upstream.
    async fn reconcile(&self, _lease: &Lease, _grant: Option<&GrantSpec>) -> Reconcile {
        Reconcile::NotMinted
    }

    fn advisory_action(&self, lease_id: &str) -> String {
        format!(
            "rotate the secret in Vault (write a new version, change it where it is used), then `mintguard revoke {lease_id} --confirm-attached`"
        )
    }
}

/// The current version of the KV v2 secret at `mount`/`path`
/// (`GET /v1/<mount>/data/<path>`): its `data` and `metadata`.
async fn read_kv(client: &VaultClient, mount: &str, path: &str) -> Result<Value, VaultError> {
    let answer = client
        .ok("GET", &format!("{mount}/data/{path}"), None)
        .await?;
    Ok(answer["data"].clone())
}

/// The keys `fields` names; `Err(key)` for a missing one.
fn pick(data: &Map<String, Value>, fields: &[String]) -> Result<Map<String, Value>, String> {
    fields
        .iter()
        .map(|f| {
            data.get(f)
                .map(|v| (f.clone(), v.clone()))
                .ok_or_else(|| f.clone())
        })
        .collect()
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

/// A `static_secret` grant's settings.
pub type Settings = StaticSecretGrant;

impl GrantSettings for StaticSecretGrant {
    fn available(cx: &SpecContext<'_>) -> Result<(), Invalid> {
        super::vault::needs_vault(cx, "static_secret")
    }

    fn validate(&self, cx: &SpecContext<'_>) -> Result<(), Invalid> {
        // Sent as a URL path unescaped: plain segments only, never a
        // system mount.
        if !plain_path(&self.mount) || system_mount(&self.mount) {
            return Err(Invalid::new(
                (cx.key)("static_secret.mount"),
                format!("{:?}: a KV v2 mount (segments of [A-Za-z0-9._-])", self.mount),
            ));
        }
        if !plain_path(&self.path) {
            return Err(Invalid::new(
                (cx.key)("static_secret.path"),
                format!("{:?}: a relative path (segments of [A-Za-z0-9._-])", self.path),
            ));
        }
        if self.fields.is_empty()
            || self.fields.len() > MAX_SECRET_FIELDS
            || self.fields.iter().any(|f| f.is_empty() || f.len() > 128)
        {
            return Err(Invalid::new(
                (cx.key)("static_secret.fields"),
                format!("1 to {MAX_SECRET_FIELDS} keys of 1–128 characters"),
            ));
        }
        Ok(())
    }
}

/// Built when `[vault]` is configured (it reads through the same client).
pub async fn build(deps: &Deps<'_>) -> Result<Option<Box<dyn Minter>>, String> {
    Ok(deps
        .vault
        .map(|client| Box::new(StaticSecretMinter::new(client.clone())) as Box<dyn Minter>))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_named_keys_are_handed_out_and_a_missing_one_fails() {
        let data = json!({"username": "app", "password": "s3cret", "admin_password": "x"});
        let data = data.as_object().unwrap();
        assert!(pick(data, &[]).unwrap().is_empty());
        let fields = ["username".to_owned(), "password".to_owned()];
        assert_eq!(
            Value::Object(pick(data, &fields).unwrap()),
            json!({"username": "app", "password": "s3cret"})
        );
        assert_eq!(pick(data, &["token".to_owned()]), Err("token".to_owned()));
    }
}
