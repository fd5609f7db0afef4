//! Upstream leases settled in the background: unanswered mints
//! reconciled, suspensions finished, expired leases revoked upstream.

use std::sync::Arc;

use crate::state::Broker;
use crate::store::LeaseQuery;

/// Every 5 s: reconciles unanswered upstream mints, revokes what
/// suspensions left live, and revokes upstream, at
/// the broker's expiry, every `effective` lease whose
/// upstream credential could outlive it (Vault's TTL may be longer than the
/// decision's); a failure is retried at the next pass.
/// Expired upstream leases read at once.
const EXPIRY_PAGE: usize = 1000;

pub(super) async fn revoke_expired_upstream(broker: Arc<Broker>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
    // Everything up to this (issue time, lease id) was reconciled in an
    // earlier pass (the first pass of a run looks at every upstream lease).
    let mut reconciled = (i64::MIN, String::new());
    loop {
        tick.tick().await;
        // Intents without an outcome older than `reconcile_after` are
        // settled (a broker — this one or a replica — died mid-mint).
        let min_age = broker.reconcile_after_ms();
        let dynamic = broker.dynamic.load_full();
        let issuer = broker.issuer(&dynamic);
        match issuer.reconcile_upstream(min_age, &mut reconciled).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(settled = n, "unanswered upstream mints reconciled"),
            Err(e) => tracing::error!(error = %e, "reconciling upstream mints failed"),
        }
        // Suspended subjects keep no live lease: what a suspension could
        // not revoke (Vault down, or the broker stopped in between) is
        // retried here.
        match broker.store.suspended_subjects().await {
            Ok(subjects) => {
                for subject in subjects {
                    let request_id = crate::ids::random_id("req");
                    if let Err(e) = issuer.revoke_all(&subject, &request_id, "suspension").await {
                        tracing::warn!(%subject, error = %e, "a suspended subject's leases are still live; retrying");
                    }
                }
            }
            Err(e) => tracing::warn!(%e, "listing suspended subjects failed"),
        }
        // Every expired lease, a page at a time; one that fails is retried
        // at the next pass and never holds the others up.
        let now = broker.clock.now_ms();
        let mut after = (i64::MIN, String::new());
        loop {
            let query = LeaseQuery::ExpiredUnrevoked {
                now_ms: now,
                after: after.clone(),
                limit: EXPIRY_PAGE,
            };
            let leases = match broker.store.leases(&query).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(%e, "listing leases for expiry failed");
                    break;
                }
            };
            for lease in &leases {
                let request_id = crate::ids::random_id("req");
                if let Err(e) = issuer.revoke_lease(lease, &request_id, "expired").await {
                    tracing::warn!(lease = %lease.id, error = %e, "revoking an expired lease upstream failed; retrying");
                }
            }
            match leases.last() {
                Some(last) if leases.len() == EXPIRY_PAGE => {
                    after = (last.expires_at_ms, last.id.clone());
                }
                _ => break,
            }
        }
    }
}
