//! The upstream flow (Vault, STS): the intent record with spend and lease,
//! then the mint (which needs the intent's proof), then the outcome record,
//! then the answer. A failed mint is refunded, its lease closed, and
//! logged; an outcome that cannot be logged revokes what was minted
//! (nothing half-recorded leaves the broker); a mint whose outcome is
//! unknown is left to reconciliation.

use serde_json::json;

use crate::fault::{fault_point, fault_wait};
use crate::log::RecordKind;
use crate::mint::{Approved, LoggedIntent, MintRequest, Minter};
use crate::store::Append;

use super::record::{LeaseBody, lease_record};
use super::{Issued, Issuer, Minting, Refusal};

impl Issuer<'_> {
    pub(super) async fn issue_upstream(
        &self,
        minter: &dyn Minter,
        approved: &Approved<'_>,
        minting: Minting<'_>,
    ) -> Result<Issued, Refusal> {
        let Minting {
            request_id,
            identity,
            node,
            grant,
            decision,
            mut body,
            spend,
            now,
            csr,
        } = minting;
        let record = |body: serde_json::Value, kind| {
            let mut entry =
                self.decision_record(&request_id, identity, grant, node, &decision, body, now);
            entry.kind = kind;
            entry
        };
        let ttl_seconds = match minter.ttl_seconds(&grant.spec, decision.ttl_seconds) {
            Ok(ttl) => ttl,
            Err(below) => {
                // Logged with its final outcome; nothing spent or minted.
                body.extras.final_outcome = Some("ttl_below_upstream_minimum");
                self.record(record(body.view().to_value()?, RecordKind::Decision))
                    .await?;
                return Err(Refusal::TtlBelowUpstreamMinimum {
                    ttl_seconds: below.ttl_seconds,
                    minimum: below.minimum,
                });
            }
        };
        let lease_id = crate::ids::random_id("lease");
        let mint = MintRequest {
            identity,
            node,
            grant: &grant.name,
            spec: &grant.spec,
            issuer_url: &self.rules.config.issuer_url,
            lease_id: &lease_id,
            ttl_seconds,
            now_ms: now,
            audience: body.request.audience.as_deref(),
            csr: csr.as_ref(),
        };
        let lease = mint.lease(minter, &request_id);
        let expires_at_ms = lease.expires_at_ms;
        body.extras.lease = Some(LeaseBody::of(&lease, Some(ttl_seconds)));
        let suspended_subjects = vec![identity.to_owned(), node.to_owned()];
        let appended = self
            .log
            .append(Append {
                canonical_body: None,
                entry: record(body.view().to_value()?, RecordKind::Intent),
                spend: spend.clone(),
                lease: Some(lease.clone()),
                rule_set: Some((
                    decision.rule_set_hash.clone(),
                    self.rules.rules_json.clone(),
                )),
                refuse_if_suspended: suspended_subjects.clone(),
                refuse_if_lease_closed: None,
            })
            .await
            .map_err(|e| Refusal::LogUnavailable(e.to_string()))?;
        if appended.suspended {
            return Err(self.suspended_at_write(&request_id));
        }
        let Some(intent) = LoggedIntent::from_appended(&appended, &lease_id) else {
            return Err(self.budget_lost(&request_id));
        };
        let outcome = |outcome: &str, body| {
            lease_record(
                &lease,
                RecordKind::Outcome,
                outcome,
                body,
                self.clock.now_ms(),
            )
        };
        let minted = match minter.mint(approved, &mint, &intent).await {
            Ok(minted) => minted,
            Err(e) if e.ambiguous => {
                // The upstream may have minted it: no refund, and the intent
                // stays without an outcome, so reconciliation (after
                // `reconcile_after`) revokes it or logs it for an operator.
                tracing::warn!(%lease_id, error = %e, "the upstream mint's outcome is unknown; left to reconciliation");
                self.metrics
                    .decided("upstream_outcome_unknown", ["upstream_outcome_unknown"]);
                return Err(Refusal::MintOutcomeUnknown(e.message));
            }
            Err(e) => {
                let t = self.clock.now_ms();
                for op in &spend {
                    self.store.refund(&op.key, &op.policy, op.cost, t).await?;
                }
                self.store.revoke_lease(&lease_id, t).await?;
                let body = json!({"lease_id": lease_id, "intent_seq": intent.seq(), "error": e.message, "refunded": !spend.is_empty()});
                self.record(outcome("mint_failed", body)).await?;
                return Err(Refusal::MintFailed(e.message));
            }
        };
        fault_point("after_upstream_mint");
        let upstream_expiry = (minted.lease_seconds > 0).then(|| {
            now.saturating_add(
                i64::try_from(minted.lease_seconds)
                    .unwrap_or(i64::MAX)
                    .saturating_mul(1000),
            )
        });
        let body = json!({
            "lease_id": lease_id, "intent_seq": intent.seq(), "upstream": minted.upstream,
            "expires_at_ms": expires_at_ms, "upstream_expires_at_ms": upstream_expiry,
        });
        fault_wait("before_outcome").await;
        // The suspension check again: the identity or its node may have
        // been suspended while the upstream minted, after that suspension's
        // revocation found no upstream handle to revoke.
        let appended = self
            .log
            .append(Append {
                canonical_body: None,
                entry: outcome("minted", body),
                spend: Vec::new(),
                lease: None,
                rule_set: None,
                refuse_if_suspended: suspended_subjects,
                refuse_if_lease_closed: Some(lease_id.clone()),
            })
            .await;
        match appended {
            Ok(a) if a.lease_closed => {
                // Reconciliation closed the lease while the mint ran (it
                // outlived `reconcile_after`): logged as `lease_closed`,
                // never released, and revoked upstream where that is possible.
                let revoked = self.revoke_unreleased(minter, &minted.upstream).await;
                tracing::error!(%lease_id, ?revoked, "a mint outlived reconcile_after and its lease was closed; the credential was not released");
                if let Some(Err(_) | Ok(false)) = &revoked {
                    // Its lease is closed, so no pass would retry: an operator
                    // is told, with the handle to revoke by.
                    let error = match &revoked {
                        Some(Err(e)) => e.message.clone(),
                        _ => "the upstream still knows it after the revocation".to_owned(),
                    };
                    let body = json!({
                        "lease_id": lease_id, "upstream": minted.upstream, "error": error,
                        "action": format!("revoke it upstream by hand (lease {lease_id}; it was never released)"),
                    });
                    self.record(outcome("unreleased_not_revoked", body)).await?;
                }
                return Err(Refusal::OutcomeUnavailable(
                    "the lease was closed by reconciliation while the upstream minted".into(),
                ));
            }
            Ok(a) if a.suspended => {
                // Logged as `suspended` with its upstream handle, never
                // released; revoked now (or by the expiry pass).
                let why = if minter.leaves_upstream() {
                    "suspension"
                } else {
                    super::revoke::NEVER_RELEASED
                };
                if let Err(e) = self.revoke_lease(&lease, &request_id, why).await {
                    tracing::error!(%lease_id, error = %e, "a credential minted during a suspension could not be revoked yet; the expiry pass retries");
                }
                return Err(self.suspended_at_write(&request_id));
            }
            Ok(_) => {}
            Err(e) => {
                // Never answer with a credential whose outcome is not durable.
                let revoked = self.revoke_unreleased(minter, &minted.upstream).await;
                tracing::error!(%lease_id, ?revoked, "the outcome could not be logged; the upstream credential was revoked");
                // Not `log_unavailable`: it was minted (and its approval,
                // if any, stays used).
                return Err(Refusal::OutcomeUnavailable(e.to_string()));
            }
        }
        self.metrics.decided(
            decision.outcome.as_str(),
            decision.reasons.iter().map(|r| r.code()),
        );
        Ok(Issued {
            request_id,
            lease_id,
            expires_at_ms: upstream_expiry.map_or(expires_at_ms, |u| u.min(expires_at_ms)),
            credential: minted.credential,
            decision,
        })
    }

    /// Revokes what a mint left upstream for a credential that was not
    /// released (`None`: a read left nothing there).
    async fn revoke_unreleased(
        &self,
        minter: &dyn Minter,
        upstream: &serde_json::Value,
    ) -> Option<Result<bool, crate::mint::MintError>> {
        if minter.leaves_upstream() {
            Some(minter.revoke(upstream).await)
        } else {
            None
        }
    }
}
