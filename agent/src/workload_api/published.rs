//! What the Workload API publishes besides SVIDs — the trust domain's X.509
//! and JWT bundles, the CRL of revoked SVIDs — and what ends streams: the
//! node's suspended identities and its entries. Polled from the broker
//! (`GET /v1/node/bundles`, `GET /v1/node/entries`) every
//! `[workload_api] poll_interval`; each change is one new [`Published`] on
//! a watch channel every stream listens to.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use mintguard_api::{EntryView, NodeBundles};
use mintguard_certs::jwt::Jwk;
use tokio::sync::watch;

use crate::workload::Agent;

/// How long an unchanged CRL is published before a fresh one replaces it
/// (the broker's are valid for an hour).
const CRL_REPUBLISH: Duration = Duration::from_secs(30 * 60);

/// Most CRLs (one per CA still trusted).
const MAX_CRLS: usize = 8;

/// Most keys a JWT bundle may hold.
const MAX_JWT_KEYS: usize = 64;

/// One state of what the Workload API publishes.
#[derive(Clone, Debug, PartialEq)]
pub struct Published {
    /// The trust domain's SPIFFE ID (`spiffe://example.org`), the bundles' key.
    pub trust_domain_id: String,
    /// The X.509 bundle: the CA certificates' DER, concatenated.
    pub x509_bundle: Vec<u8>,
    /// The same bundle as PEM (SDS).
    pub x509_bundle_pem: String,
    /// The JWT bundle as JSON (JWKS, `use: "jwt-svid"`).
    pub jwt_bundle: Vec<u8>,
    /// The JWT bundle's keys.
    pub jwt_keys: Vec<Jwk>,
    /// The CRLs, DER: one per CA still trusted.
    pub crls: Vec<Vec<u8>>,
    /// When it was fetched.
    pub crl_fetched: std::time::Instant,
    /// The serials it lists (hex): a change of them is a change of state.
    pub revoked_serials: Vec<String>,
    /// The same serials without leading zeros, for [`Self::revokes`].
    revoked: std::collections::HashSet<String>,
    /// Suspended identities of this node (and the node, if it is).
    pub suspended: BTreeSet<String>,
    /// This node's entries.
    pub entries: Arc<Vec<EntryView>>,
}

impl Published {
    /// Whether `other` differs in what a stream sends or acts on (the CRL's
    /// own bytes change with its `thisUpdate` every poll; its serials do not).
    pub fn differs(&self, other: &Published) -> bool {
        self.trust_domain_id != other.trust_domain_id
            || self.x509_bundle != other.x509_bundle
            || self.jwt_bundle != other.jwt_bundle
            || self.revoked_serials != other.revoked_serials
            || self.suspended != other.suspended
            || self.entries != other.entries
            || other.crl_fetched.duration_since(self.crl_fetched) > CRL_REPUBLISH
    }

    /// Whether the CRL lists `serial` (hex, leading zeros or not).
    pub fn revokes(&self, serial: &str) -> bool {
        self.revoked.contains(serial.trim_start_matches('0'))
    }

    /// The first of `ids` that is suspended, or `node` if it is: whose
    /// suspension ends a stream serving `ids` on `node`.
    pub fn suspended_of<'a>(
        &self,
        mut ids: impl Iterator<Item = &'a str>,
        node: &str,
    ) -> Option<String> {
        ids.find(|id| self.suspended.contains(*id))
            .or_else(|| self.suspended.contains(node).then_some(node))
            .map(str::to_owned)
    }

    fn from_broker(b: NodeBundles, entries: Arc<Vec<EntryView>>) -> Result<Self, String> {
        let roots = mintguard_certs::svid::certs_from_pem(&b.x509_bundle_pem)
            .map_err(|e| format!("x509 bundle: {e}"))?;
        if roots.is_empty() {
            return Err("x509 bundle: no certificate".into());
        }
        let keys = b
            .jwt_bundle
            .get("keys")
            .cloned()
            .ok_or("jwt bundle: no keys")?;
        let jwt_keys: Vec<Jwk> =
            serde_json::from_value(keys).map_err(|e| format!("jwt bundle: {e}"))?;
        if jwt_keys.len() > MAX_JWT_KEYS {
            return Err(format!("jwt bundle: more than {MAX_JWT_KEYS} keys"));
        }
        if b.crls_der_b64.is_empty() || b.crls_der_b64.len() > MAX_CRLS {
            return Err(format!("crls: 1..={MAX_CRLS} expected"));
        }
        let crls = b
            .crls_der_b64
            .iter()
            .map(|c| base64::engine::general_purpose::STANDARD.decode(c))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("crl: {e}"))?;
        Ok(Self {
            trust_domain_id: b.trust_domain_id,
            x509_bundle: roots.iter().flat_map(|c| c.as_ref().to_vec()).collect(),
            x509_bundle_pem: b.x509_bundle_pem,
            jwt_bundle: serde_json::to_vec(&b.jwt_bundle).map_err(|e| e.to_string())?,
            jwt_keys,
            crls,
            crl_fetched: std::time::Instant::now(),
            revoked: b
                .revoked_serials
                .iter()
                .map(|r| r.trim_start_matches('0').to_owned())
                .collect(),
            revoked_serials: b.revoked_serials,
            suspended: b.suspended.into_iter().collect(),
            entries,
        })
    }
}

/// Asks the broker once; the new state, or why not.
pub async fn fetch(agent: &Agent) -> Result<Published, String> {
    agent.refresh_entries().await?;
    let reply = agent
        .node
        .broker
        .send("GET", "/v1/node/bundles", None)
        .await
        .map_err(|e| e.to_string())?;
    if reply.status != 200 {
        return Err(format!(
            "bundles: {} {}",
            reply.status,
            String::from_utf8_lossy(&reply.body)
                .chars()
                .take(200)
                .collect::<String>()
        ));
    }
    let bundles: NodeBundles = serde_json::from_slice(&reply.body).map_err(|e| e.to_string())?;
    Published::from_broker(bundles, agent.entries.load_full())
}

/// Polls every `every` and publishes each change on `tx` (a failed poll
/// keeps the last state: SVIDs keep renewing through the broker, which
/// decides each one).
pub async fn poll(agent: Arc<Agent>, tx: watch::Sender<Option<Arc<Published>>>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match fetch(&agent).await {
            Ok(new) => {
                tx.send_if_modified(|current| match current {
                    Some(old) if !old.differs(&new) => false,
                    _ => {
                        *current = Some(Arc::new(new));
                        true
                    }
                });
            }
            Err(e) => tracing::warn!(%e, "workload api: refreshing bundles failed"),
        }
    }
}
