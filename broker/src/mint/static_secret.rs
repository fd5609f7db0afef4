//! The static-secret minter: one version of a secret in Vault's KV store
//! (version 2), read at issuance for a decided, logged request.
//!
//! Nothing is created upstream, so nothing can be revoked there: a lease
//! is **advisory**. Ending one early means rotating the secret (writing a
//! new version) and then confirming it. The record names the KV path and
//! version that were handed out, never the secret.

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::{Map, Value, json};

use super::vault::VaultClient;
use super::{
    Approved, Flow, LeaseKind, LoggedIntent, MintError, MintRequest, Minted, Minter, Reconcile,
    Revocation,
};
use crate::config::GrantConfig;
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

    async fn mint(
        &self,
        _approved: &Approved<'_>,
        request: &MintRequest<'_>,
        _intent: &LoggedIntent,
    ) -> Result<Minted, MintError> {
        let grant = request.settings(request.grant.static_secret.as_ref(), "static_secret")?;
        let read = self.client.read_kv(&grant.mount, &grant.path).await?;
        let location = format!("{}/{}", grant.mount, grant.path);
        // A deleted or destroyed current version reads as `data: null`.
        let Some(data) = read["data"].as_object() else {
            return Err(MintError::new(format!(
                "{location}: the current version has no data (deleted or destroyed)"
            )));
        };
        let handed = pick(data, &grant.fields)
            .map_err(|key| MintError::new(format!("{location}: the secret has no key {key:?}")))?;
        let version = read["metadata"]["version"].as_u64().unwrap_or(0);
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
    async fn reconcile(&self, _lease: &Lease, _grant: Option<&GrantConfig>) -> Reconcile {
        Reconcile::NotMinted
    }

    fn advisory_action(&self, lease_id: &str) -> String {
        format!(
            "rotate the secret in Vault (write a new version, change it where it is used), then `mintguard revoke {lease_id} --confirm-attached`"
        )
    }
}

/// The keys `fields` names (all when empty); `Err(key)` for a missing one.
fn pick(data: &Map<String, Value>, fields: &[String]) -> Result<Map<String, Value>, String> {
    if fields.is_empty() {
        return Ok(data.clone());
    }
    fields
        .iter()
        .map(|f| {
            data.get(f)
                .map(|v| (f.clone(), v.clone()))
                .ok_or_else(|| f.clone())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_named_keys_are_handed_out_and_a_missing_one_fails() {
        let data = json!({"username": "app", "password": "s3cret", "admin_password": "x"});
        let data = data.as_object().unwrap();
        assert_eq!(pick(data, &[]).unwrap(), *data);
        let fields = ["username".to_owned(), "password".to_owned()];
        assert_eq!(
            Value::Object(pick(data, &fields).unwrap()),
            json!({"username": "app", "password": "s3cret"})
        );
        assert_eq!(pick(data, &["token".to_owned()]), Err("token".to_owned()));
    }
}
