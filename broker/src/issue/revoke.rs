//! Revocation: one lease (effective upstream first, advisory handed to an
//! operator, introspection-only in the store), every live lease of an
//! identity or issuer, and the suspension a `suspend` decision records.

use mintguard_policy::Decision;
use serde_json::{Value, json};

use super::Issuer;
use super::record::lease_record;
use crate::log::RecordKind;
use crate::mint::{LeaseKind, Revocation};
use crate::store::{Lease, LeaseOwner, LeaseQuery, StoreError, SuspensionRecord};

/// The `why` of a revocation an operator confirms was done upstream by hand
/// (followed by the operator's name): the broker closes the lease without
/// calling the upstream.
pub const CONFIRMED_UPSTREAM: &str = "confirmed_upstream_by_operator:";

/// The `why` of closing a lease whose credential exists nowhere but in the
/// broker's memory and was never released (a static secret read during a
/// suspension): nothing to revoke upstream or to hand an operator.
pub const NEVER_RELEASED: &str = "never_released";

/// Leases [`Issuer::revoke_all`] reads at once.
const REVOKE_PAGE: usize = 500;

/// Why a lease was not revoked (it stays live, and the caller hears why).
#[derive(Debug, thiserror::Error)]
pub enum RevokeError {
    /// No minter of the lease's kind is configured.
    #[error("no minter for {0} leases is configured")]
    NoMinter(LeaseKind),
    /// The lease has no minted outcome record to revoke by.
    #[error("lease {0} has no minted outcome record")]
    ReferenceMissing(String),
    /// The upstream did not revoke it.
    #[error("the upstream did not revoke the credential: {0}")]
    Upstream(String),
    /// The upstream still knows it after the revocation.
    #[error("the upstream still knows lease {0} after the revocation")]
    Unconfirmed(String),
    /// The revocation could not be logged.
    #[error("the issuance log cannot be written: {0}")]
    Log(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Some of a subject's leases were left live.
    #[error("{failed} lease(s) of {subject} could not be revoked; the first: {first}")]
    Partial {
        /// How many.
        failed: usize,
        /// Whose.
        subject: String,
        /// The first failure.
        first: Box<RevokeError>,
    },
}

impl RevokeError {
    /// The stable reason code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NoMinter(_) => "upstream_unavailable",
            Self::ReferenceMissing(_) => "upstream_reference_missing",
            Self::Upstream(_) => "upstream_revoke_failed",
            Self::Unconfirmed(_) => "upstream_revoke_unconfirmed",
            Self::Log(_) => "log_unavailable",
            Self::Store(_) => "store_unavailable",
            Self::Partial { first, .. } => first.code(),
        }
    }

    /// What the caller is told.
    pub fn message(&self) -> String {
        match self {
            Self::NoMinter(kind) => format!("no {kind} upstream is configured"),
            Self::ReferenceMissing(_) => {
                "the lease has no minted outcome record; see `mintguard logs` for its intent".into()
            }
            Self::Upstream(_) => "the upstream did not revoke the credential".into(),
            Self::Unconfirmed(_) => {
                "the upstream still knows the credential after the revocation".into()
            }
            Self::Log(_) => "the issuance log cannot be written".into(),
            Self::Store(_) => "the store is unavailable".into(),
            Self::Partial {
                failed,
                subject,
                first,
            } => format!(
                "{failed} lease(s) of {subject} could not be revoked; the first: {}",
                first.message()
            ),
        }
    }
}

impl From<super::Refusal> for RevokeError {
    fn from(r: super::Refusal) -> Self {
        match r {
            super::Refusal::Store(e) => Self::Store(e),
            other => Self::Log(other.cause().unwrap_or_else(|| other.message())),
        }
    }
}

impl Issuer<'_> {
    /// Revokes one lease and logs it; whether the store closed it now.
    pub async fn revoke_lease(
        &self,
        lease: &Lease,
        request_id: &str,
        why: &str,
    ) -> Result<bool, RevokeError> {
        // Advisory (STS): the session cannot be revoked one by one. The
        // task's end is recorded; the lease stays live until it expires or
        // an operator confirms the deny policy is attached
        // (`mintguard revoke --confirm-attached`).
        if lease.revocation == Revocation::Advisory
            && why != "confirmed_attached"
            && why != NEVER_RELEASED
        {
            let now = self.clock.now_ms();
            if self.store.end_task(&lease.id, now).await? {
                let action = self.minters.advisory_action(lease.kind, &lease.id);
                let mut entry = lease_record(
                    lease,
                    RecordKind::Revocation,
                    "advisory",
                    json!({"lease_id": lease.id, "why": why, "revocation": Revocation::Advisory, "action": action}),
                    now,
                );
                entry.request_id = request_id.to_owned();
                self.record(entry).await?;
            }
            return Ok(false);
        }
        // Effective revocation first: revoked upstream and confirmed by a
        // lookup, or the lease stays live and the caller hears why.
        let mut confirmed = false;
        let by_operator = why.strip_prefix(CONFIRMED_UPSTREAM);
        if lease.revocation == Revocation::Effective
            && lease.revoked_at_ms.is_none()
            && by_operator.is_none()
        {
            let minter = self
                .minters
                .get(lease.kind)
                .ok_or(RevokeError::NoMinter(lease.kind))?;
            let Some(upstream) = self.upstream_of(lease).await? else {
                return Err(RevokeError::ReferenceMissing(lease.id.clone()));
            };
            confirmed = minter
                .revoke(&upstream)
                .await
                .map_err(|e| RevokeError::Upstream(e.message))?;
            if !confirmed {
                return Err(RevokeError::Unconfirmed(lease.id.clone()));
            }
        }
        let now = self.clock.now_ms();
        // An operator's word that it was revoked upstream stands only for a
        // lease whose mint was never answered (no handle to revoke by).
        let revoked = if by_operator.is_some() {
            self.store.close_unanswered(&lease.id, now).await?
        } else {
            self.store.revoke_lease(&lease.id, now).await?
        };
        if revoked {
            let mut entry = lease_record(
                lease,
                RecordKind::Revocation,
                "revoked",
                json!({"lease_id": lease.id, "why": why, "revocation": lease.revocation, "confirmed_upstream": confirmed,
                       "confirmed_by_operator": by_operator}),
                now,
            );
            entry.request_id = request_id.to_owned();
            self.record(entry).await?;
        }
        Ok(revoked)
    }

    /// Revokes every live lease of `subject`, logging each revocation: an
    /// identity's leases, or for a node (or a CI issuer, by its URL) every
    /// lease issued through it. A lease that cannot be revoked does not stop
    /// the others; the error afterwards says how many were left live and
    /// why the first one failed.
    pub async fn revoke_all(
        &self,
        subject: &str,
        request_id: &str,
        why: &str,
    ) -> Result<(), RevokeError> {
        let now = self.clock.now_ms();
        // A node of this trust domain, or a CI issuer (a URL, not a SPIFFE ID).
        let issuer = match mintguard_certs::id::parse_spiffe_id(subject) {
            Ok(id) => {
                mintguard_certs::id::IdMatcher::nodes(&self.rules.config.trust_domain).matches(&id)
            }
            Err(_) => true,
        };
        let owner = if issuer {
            LeaseOwner::Node(subject.to_owned())
        } else {
            LeaseOwner::Identity(subject.to_owned())
        };
        let (mut failed, mut first_error) = (0usize, None);
        let mut after_id = None;
        loop {
            let page = self
                .store
                .leases(&LeaseQuery::Live {
                    owner: owner.clone(),
                    now_ms: now,
                    after_id: after_id.take(),
                    limit: REVOKE_PAGE,
                })
                .await?;
            for lease in &page {
                // An advisory lease already handed to an operator: nothing
                // more the broker can do (and no write on every pass).
                if lease.revocation == Revocation::Advisory && lease.task_ended_at_ms.is_some() {
                    continue;
                }
                match self.revoke_lease(lease, request_id, why).await {
                    Ok(_) => {}
                    // Still minting (no outcome yet): its outcome's write
                    // sees the suspension and revokes it then; a broker that
                    // died mid-mint has it reconciled.
                    Err(RevokeError::ReferenceMissing(_))
                        if lease.issued_at_ms > now - self.reconcile_after_ms =>
                    {
                        tracing::info!(lease = %lease.id, %subject, "lease still minting; held back at its outcome");
                    }
                    Err(e) => {
                        tracing::error!(lease = %lease.id, %subject, error = %e, "lease not revoked");
                        failed += 1;
                        first_error.get_or_insert(e);
                    }
                }
            }
            if page.len() < REVOKE_PAGE {
                break;
            }
            after_id = page.last().map(|l| l.id.clone());
        }
        match first_error {
            None => Ok(()),
            Some(first) => Err(RevokeError::Partial {
                failed,
                subject: subject.to_owned(),
                first: Box::new(first),
            }),
        }
    }

    /// A `suspend` decision: record the suspension and revoke the
    /// identity's live leases. An identity already suspended keeps its
    /// suspension record (who suspended it and why) and nothing is revoked
    /// again: every request of a suspended identity is decided `suspend`,
    /// and must stay cheap. A lease that cannot be revoked is logged (the
    /// refusal stands; expiry and `mintguard revoke` retry it).
    pub(super) async fn suspend_identity(
        &self,
        identity: &str,
        request_id: &str,
        decision: &Decision,
    ) -> Result<(), StoreError> {
        if self.store.suspension(identity).await?.is_some() {
            return Ok(());
        }
        self.store
            .suspend(&SuspensionRecord {
                subject: identity.to_owned(),
                reason: decision
                    .reasons
                    .iter()
                    .map(|r| r.code())
                    .collect::<Vec<_>>()
                    .join(","),
                by: format!("decision:{request_id}"),
                at_ms: self.clock.now_ms(),
            })
            .await?;
        if let Err(e) = self.revoke_all(identity, request_id, "suspension").await {
            tracing::error!(%identity, error = %e, "suspended, but leases were left live");
        }
        Ok(())
    }

    /// The upstream reference of a lease, from its outcome record.
    pub async fn upstream_of(&self, lease: &Lease) -> Result<Option<Value>, StoreError> {
        let records = self.store.log_for_request(&lease.request_id).await?;
        Ok(records
            .into_iter()
            .filter(|r| {
                // `suspended`: minted, then held back by a suspension.
                r.entry.kind == RecordKind::Outcome
                    && matches!(r.entry.outcome.as_deref(), Some("minted" | "suspended"))
            })
            .find(|r| r.entry.body["lease_id"] == lease.id.as_str())
            .map(|r| r.entry.body["upstream"].clone()))
    }
}
