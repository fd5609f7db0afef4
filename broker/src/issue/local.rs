//! The local flow (a broker-signed credential): seal it, commit its one
//! record with the budget spend and the lease in one append, and release it
//! only with the proof that append yields.

use crate::log::{LogEntry, RecordKind};
use crate::mint::{Approved, Durable, MintRequest, Minter, SealError};
use crate::store::Append;

use super::record::LeaseBody;
use super::{Issued, Issuer, Minting, Refusal};

impl Issuer<'_> {
    pub(super) async fn issue_local(
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
        let lease_id = crate::ids::random_id("lease");
        let mint = MintRequest {
            identity,
            node,
            grant: &grant.name,
            spec: &grant.spec,
            issuer_url: &self.rules.config.issuer_url,
            lease_id: &lease_id,
            ttl_seconds: decision.ttl_seconds,
            now_ms: now,
            audience: body.request.audience.as_deref(),
            csr: csr.as_ref(),
        };
        // Signed before the write, so the write is the only I/O; released after it.
        let sealed = minter.seal(approved, &mint).map_err(|e| match e {
            SealError::KeysUnavailable(cause) => Refusal::SigningUnavailable(cause),
            SealError::Failed(cause) => Refusal::SigningFailed(cause),
        })?;
        let lease = mint.lease(minter, &request_id);
        let expires_at_ms = lease.expires_at_ms;
        body.extras.lease = Some(LeaseBody::of(&lease, None));
        body.extras.credential = sealed.record().cloned();
        // The hot path: the body is written straight to its canonical form.
        let canonical = body.view().to_canonical()?;
        let entry = LogEntry {
            time_ms: now,
            kind: RecordKind::Decision,
            request_id: request_id.clone(),
            identity: Some(identity.to_owned()),
            grant: Some(grant.name.clone()),
            node: Some(node.to_owned()),
            outcome: Some(decision.outcome.as_str().to_owned()),
            body: serde_json::Value::Null,
        };
        let appended = self
            .log
            .append(Append {
                canonical_body: Some(canonical),
                entry,
                spend,
                lease: Some(lease),
                rule_set: Some((
                    decision.rule_set_hash.clone(),
                    self.rules.rules_json.clone(),
                )),
                refuse_if_suspended: vec![identity.to_owned(), node.to_owned()],
                refuse_if_lease_closed: None,
            })
            .await
            .map_err(|e| Refusal::LogUnavailable(e.to_string()))?;
        if appended.suspended {
            return Err(self.suspended_at_write(&request_id));
        }
        // Lost the budget race after deciding: logged as budget_exhausted,
        // the sealed credential dropped.
        let Some(durable) = Durable::from_appended(&appended) else {
            return Err(self.budget_lost(&request_id));
        };
        self.metrics.decided(
            decision.outcome.as_str(),
            decision.reasons.iter().map(|r| r.code()),
        );
        Ok(Issued {
            request_id,
            lease_id,
            expires_at_ms,
            credential: sealed.release(&durable),
            decision,
        })
    }
}
