//! Reconciliation of upstream mints: an intent record without an outcome
//! (the broker died between the mint and the answer) is settled by its
//! minter ([`crate::mint::Minter::reconcile`]): found upstream and revoked,
//! closed as never minted, or logged for an operator and left listed in
//! `mintguard leases`.

use serde_json::Value;

use super::Issuer;
use super::record::lease_record;
use super::revoke::RevokeError;
use crate::lease::Revocation;
use crate::log::RecordKind;
use crate::mint::Reconcile;
use crate::store::{Lease, LeaseQuery};

/// Leases [`Issuer::reconcile_upstream`] reads at once.
const RECONCILE_PAGE: usize = 500;

/// What reconciling one lease did.
enum Reconciled {
    /// Settled (revoked upstream, or closed as never minted).
    Settled,
    /// Nothing to do, or handed to an operator.
    Nothing,
    /// The upstream could not be asked now: look again at the next pass.
    Retry,
}

impl Issuer<'_> {
    /// Settles upstream intents older than `min_age_ms`
    /// (`reconcile_after`: longer than any mint takes), and only those after
    /// `cursor` (issue time, lease id), which moves past each one looked at:
    /// each intent is looked at once per broker run, not on every pass,
    /// unless its upstream could not be asked (the pass stops there, and
    /// the next one starts again from that intent). Returns how many it
    /// settled.
    pub async fn reconcile_upstream(
        &self,
        min_age_ms: i64,
        cursor: &mut (i64, String),
    ) -> Result<usize, RevokeError> {
        if !self.minters.any_upstream() {
            return Ok(0);
        }
        let mut settled = 0;
        // Younger intents may still be in flight (here or on a replica).
        let old_enough = self.clock.now_ms() - min_age_ms;
        loop {
            let page = self
                .store
                .leases(&LeaseQuery::UpstreamIssued {
                    after: cursor.clone(),
                    until_ms: old_enough,
                    limit: RECONCILE_PAGE,
                })
                .await?;
            for lease in &page {
                // A store error, or the upstream unreachable, leaves the
                // cursor here: the lease (and those after it) are looked at
                // again next pass.
                match self.reconcile_lease(lease).await? {
                    Reconciled::Settled => settled += 1,
                    Reconciled::Nothing => {}
                    Reconciled::Retry => return Ok(settled),
                }
                *cursor = (lease.issued_at_ms, lease.id.clone());
            }
            if page.len() < RECONCILE_PAGE {
                return Ok(settled);
            }
        }
    }

    /// Settles one upstream lease if its intent has no outcome.
    async fn reconcile_lease(&self, lease: &Lease) -> Result<Reconciled, RevokeError> {
        let records = self.store.log_for_request(&lease.request_id).await?;
        if records.iter().any(|r| r.entry.kind == RecordKind::Outcome) {
            return Ok(Reconciled::Nothing);
        }
        if !records.iter().any(|r| r.entry.kind == RecordKind::Intent) {
            // Its records were pruned (they are in the export): nothing here
            // says whether it was answered, so it is not settled as unminted.
            tracing::warn!(lease = %lease.id, "an upstream lease without its intent record (pruned); left for `mintguard leases`");
            return Ok(Reconciled::Nothing);
        }
        let Some(minter) = self.minters.get(lease.kind) else {
            // Its minter is no longer configured (the grants of its kind
            // were removed): an advisory lease is still handed to an
            // operator, once; any other stays listed, and is said so.
            if lease.revocation == Revocation::Advisory && lease.task_ended_at_ms.is_none() {
                let mut detail = serde_json::Map::new();
                detail.insert("lease_id".into(), lease.id.clone().into());
                detail.insert("minted_unanswered".into(), "unknown".into());
                detail.insert(
                    "action".into(),
                    self.minters.advisory_action(lease.kind, &lease.id).into(),
                );
                let now = self.clock.now_ms();
                self.record(lease_record(
                    lease,
                    RecordKind::Outcome,
                    "reconcile_operator_action",
                    Value::Object(detail),
                    now,
                ))
                .await?;
                self.store.end_task(&lease.id, now).await?;
            } else if lease.revocation != Revocation::Advisory {
                tracing::warn!(lease = %lease.id, kind = %lease.kind, "an intent without an outcome has no configured minter to settle it; see `mintguard leases`");
            }
            return Ok(Reconciled::Nothing);
        };
        let grant = self.rules.config.grants.get(&lease.grant);
        let outcome = |outcome: &str, mut body: serde_json::Map<String, Value>| {
            body.insert("lease_id".into(), lease.id.clone().into());
            lease_record(
                lease,
                RecordKind::Outcome,
                outcome,
                Value::Object(body),
                self.clock.now_ms(),
            )
        };
        let mut body = serde_json::Map::new();
        match minter.reconcile(lease, grant.map(|g| &g.spec)).await {
            Reconcile::Revoked { upstream } => {
                // Revoked upstream: closed either way; whether its mint was
                // still unanswered (or its outcome landed meanwhile, and the
                // credential it released is the one just revoked) is said.
                let now = self.clock.now_ms();
                let unanswered = self.store.close_unanswered(&lease.id, now).await?;
                if !unanswered {
                    self.store.revoke_lease(&lease.id, now).await?;
                }
                body.insert("upstream".into(), upstream);
                body.insert("minted_unanswered".into(), unanswered.into());
                self.record(outcome("reconciled_revoked", body)).await?;
                Ok(Reconciled::Settled)
            }
            Reconcile::NotMinted => {
                // Closed first, and only if still unanswered: an outcome
                // recorded meanwhile (a slow mint that finished) keeps its
                // lease, and one recorded after finds the lease closed and
                // is never released.
                if !self
                    .store
                    .close_unanswered(&lease.id, self.clock.now_ms())
                    .await?
                {
                    return Ok(Reconciled::Nothing);
                }
                body.insert("minted_unanswered".into(), false.into());
                self.record(outcome("reconciled_not_minted", body)).await?;
                Ok(Reconciled::Settled)
            }
            Reconcile::OperatorAction { detail, end_task } => {
                self.record(outcome("reconcile_operator_action", detail))
                    .await?;
                if end_task {
                    self.store.end_task(&lease.id, self.clock.now_ms()).await?;
                }
                Ok(Reconciled::Nothing)
            }
            Reconcile::Nothing => Ok(Reconciled::Nothing),
            Reconcile::Retry => Ok(Reconciled::Retry),
        }
    }
}
