//! The issuance core: one request, after its front door (a node's mTLS, a
//! CI runner's OIDC token, a confirmed break-glass) established who asks.
//!
//! [`Issuer::issue`] rate-limits the identity, reads its state, redeems a
//! step-up approval, decides, writes the decision record and, for a
//! permitting decision, mints: a local credential ([`local`]) is sealed,
//! committed with its record, spend and lease in one append, then released;
//! an upstream one ([`upstream`]) is minted after its intent is durable and
//! answered after its outcome is. It returns an [`Issued`] or a
//! [`Refusal`]; only the transport (`crate::http`) turns either into an
//! answer. Collaborators are passed in (the store, the log, the minters, the
//! clock), so the core runs against a temporary SQLite and a test minter.

pub mod approval;
pub mod inputs;
mod local;
pub mod reconcile;
pub mod record;
pub mod refusal;
pub mod revoke;
#[cfg(test)]
mod tests;
mod upstream;

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use governor::DefaultKeyedRateLimiter;
use mintguard_api::CredentialRequest;
use mintguard_policy::budget::BudgetSnapshot;
use mintguard_policy::decision::{
    BudgetView, EciExplained, EciInput, Evidence, IssuerContext, IssuerKind, PrincipalKind,
    Suspension,
};
use mintguard_policy::eci::EciReport;
use mintguard_policy::rules::RuleSet;
use mintguard_policy::{Decision, DecisionInput, Outcome, Reason, decide};
use serde_json::{Map, Value};

pub use self::inputs::Observed;
use self::record::{DecisionBody, Extras, IssuedAs};
pub use self::refusal::{ApprovalRefusal, Class, Refusal};
pub use self::revoke::RevokeError;
use crate::clock::Clock;
use crate::config::{Config, GrantConfig};
use crate::ids::random_id;
use crate::log::{LogEntry, RecordKind};
use crate::mint::{Approved, Flow, Minters};
use crate::store::{Append, Appended, SpendOp, Store, StoreError};

/// Where issuance records are written: the store's append, followed by the
/// broker's checkpointing.
#[async_trait]
pub trait IssuanceLog: Send + Sync {
    /// Appends a record with what commits beside it.
    async fn append(&self, append: Append) -> Result<Appended, StoreError>;
}

/// The reloadable decision inputs one issuance reads (a consistent snapshot).
#[derive(Clone, Copy)]
pub struct Rules<'a> {
    /// The configuration (grants, signals, anomaly responses, approvals).
    pub config: &'a Config,
    /// Cedar policies and trust configuration.
    pub rules: &'a RuleSet,
    /// The rule set's stored form, written with the first record that uses it.
    pub rules_json: &'a Arc<str>,
    /// ECI of the effective graph.
    pub eci: &'a EciReport,
    /// The shadow rule set, decided beside `rules` and never enforced.
    pub shadow: Option<&'a crate::shadow::Shadow>,
}

/// The issuance core and its collaborators.
pub struct Issuer<'a> {
    /// The store (state reads, approvals, leases, suspensions).
    pub store: &'a dyn Store,
    /// The issuance log.
    pub log: &'a dyn IssuanceLog,
    /// The minters, by kind.
    pub minters: &'a Minters,
    /// The clock (outcome, refund and revocation times; the decision's own
    /// time is the `now` its front door read once).
    pub clock: &'a dyn Clock,
    /// The decision inputs.
    pub rules: Rules<'a>,
    /// Requests per identity.
    pub identity_limiter: &'a DefaultKeyedRateLimiter<String>,
    /// Prometheus metrics.
    pub metrics: &'a crate::metrics::Metrics,
    /// Whether anomaly analysis keeps up.
    pub analysis: &'a crate::health::AnalysisHealth,
    /// How old an intent without an outcome must be before reconciliation
    /// looks at it (longer than any mint takes).
    pub reconcile_after_ms: i64,
}

/// Who asks, established by the caller's front door (node or CI issuer).
pub struct Subject<'a> {
    /// The identity.
    pub identity: String,
    /// Workload or CI job.
    pub principal: PrincipalKind,
    /// Node or CI issuer.
    pub issuer_kind: IssuerKind,
    /// The node's SPIFFE ID or the CI issuer URL (the log's `node` column).
    pub issuer: String,
    /// Whether the issuer may vouch for this identity and grant.
    pub may_vouch: bool,
    /// Observed signals.
    pub observed: Observed<'a>,
    /// The issuer's blast radius.
    pub blast_radius: f64,
    /// CI claims for Cedar.
    pub ci_claims: BTreeMap<String, String>,
    /// Front-door facts recorded with the decision (selectors, CI policy …).
    pub context: Map<String, Value>,
    /// Audit mode: decide and log as if enforcing, then refuse.
    pub audit: bool,
    /// A confirmed break-glass request (its approval, opener, approvers):
    /// the decision is logged as decided, then overridden to issue.
    pub break_glass: Option<Value>,
    /// What a step-up approval is bound to beyond the request: for a CI
    /// job, the digest of its immutable claims (`ci::job_digest`).
    pub approval_binding: Option<String>,
}

/// A credential issued (its `Debug` never shows the credential).
pub struct Issued {
    /// The logged request.
    pub request_id: String,
    /// The lease it is tracked as.
    pub lease_id: String,
    /// When it expires (the earlier of the lease and the upstream's), milliseconds.
    pub expires_at_ms: i64,
    /// What the workload receives (never logged).
    pub credential: Value,
    /// The decision it was issued under.
    pub decision: Decision,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("request_id", &self.request_id)
            .field("lease_id", &self.lease_id)
            .field("expires_at_ms", &self.expires_at_ms)
            .field("credential", &"[redacted]")
            .field("decision", &self.decision.outcome)
            .finish()
    }
}

impl Issued {
    /// What the workload sees of the decision.
    pub fn summary(&self) -> Value {
        record::decision_summary(&self.request_id, &self.decision)
    }
}

/// A decision that mints, and what its records carry: handed to the local
/// or the upstream flow.
struct Minting<'a> {
    request_id: String,
    identity: &'a str,
    node: &'a str,
    grant: &'a GrantConfig,
    decision: Decision,
    body: Body<'a>,
    spend: Vec<SpendOp>,
    now: i64,
    /// The request's CSR (checked), kept out of its record.
    csr: Option<mintguard_certs::ca::Csr>,
}

/// The pieces of a decision record's body.
struct Body<'a> {
    input: DecisionInput,
    decided: Decision,
    request: &'a CredentialRequest,
    extras: Extras,
    context: Map<String, Value>,
}

impl Body<'_> {
    fn view(&self) -> DecisionBody<'_> {
        DecisionBody {
            input: &self.input,
            decision: &self.decided,
            request: self.request,
            extras: &self.extras,
            context: &self.context,
        }
    }
}

/// What [`Issuer::gather`] read for a decision.
pub struct Gathered {
    /// The decision's input.
    pub input: DecisionInput,
    /// The budget that applies: its key and policy.
    pub budget: Option<(String, mintguard_policy::budget::BudgetPolicy)>,
    /// The approval the request redeems.
    pub approval: Option<crate::store::Approval>,
}

impl Issuer<'_> {
    /// Decides `request` for `subject` under `grant` at `now` (the
    /// issuance's one reading of the clock: the decision, its record, the
    /// lease and the credential's `iat` all carry it), logs the decision,
    /// and mints if it permits.
    pub async fn issue(
        &self,
        grant: &GrantConfig,
        mut request: CredentialRequest,
        subject: Subject<'_>,
        now: i64,
    ) -> Result<Issued, Refusal> {
        // The CSR is key material for the minter, not a decision input: the
        // record holds what was signed (`extras.credential`), not the CSR.
        let csr = request.csr.take();
        if self.identity_limiter.check_key(&subject.identity).is_err() {
            return Err(Refusal::RateLimited);
        }
        // Counted against the identity's rate first: a CSR's signature check
        // is work a caller could otherwise repeat for free.
        let csr = csr
            .map(|pem| mintguard_certs::ca::Csr::parse(&pem))
            .transpose()
            .map_err(|e| {
                Refusal::Material(crate::mint::MaterialError::bad("bad_csr", e.to_string()))
            })?;
        if let Some(minter) = self.minters.get(grant.kind) {
            let material = crate::mint::Material {
                audience: request.audience.as_deref(),
                csr: csr.as_ref(),
            };
            minter
                .check_material(&grant.spec, &material)
                .map_err(Refusal::Material)?;
        }
        let node = subject.issuer.as_str();
        let identity = subject.identity.as_str();
        let request_id = random_id("req");
        let Gathered {
            input,
            budget,
            approval,
        } = self.gather(grant, &request, &subject, now).await?;
        let decide_started = std::time::Instant::now();
        let decided = decide(&input, self.rules.rules);
        self.metrics
            .decision_seconds
            .observe(decide_started.elapsed().as_secs_f64());
        let mut extras = Extras {
            shadow: self.shadow_verdict(&input, &decided),
            ..Extras::default()
        };
        let decision = match &subject.break_glass {
            Some(glass) => {
                let d = inputs::break_glass_override(&decided, grant)?;
                extras.break_glass = Some(glass.clone());
                extras.issued_as = Some(IssuedAs {
                    outcome: d.outcome,
                    reasons: d.reasons.clone(),
                    ttl_seconds: d.ttl_seconds,
                });
                d
            }
            None => decided.clone(),
        };
        let mut body = Body {
            input,
            decided,
            request: &request,
            extras,
            context: subject.context,
        };
        let record = |body: Value| {
            self.decision_record(&request_id, identity, grant, node, &decision, body, now)
        };

        if subject.audit {
            // Logged as decided, marked audit, refused; nothing spent or minted.
            body.extras.audit = Some(true);
            body.extras.final_outcome = Some("audit_refused");
            self.append_record(record(body.view().to_value()?), &decision)
                .await?;
            return Err(Refusal::AuditMode {
                request_id,
                outcome: decision.outcome,
            });
        }

        let Some(approved) = Approved::check(&decision) else {
            return self
                .refuse(
                    &request_id,
                    identity,
                    node,
                    &subject.approval_binding,
                    &decision,
                    &mut body,
                    record,
                    now,
                )
                .await;
        };
        if let Some(approval) = &approval {
            // Single use: consumed by the issuance it unlocks, before its
            // record (and given back below if nothing is issued).
            approval::consume(self.store, approval).await?;
            body.extras.approval_id = Some(approval.id.clone());
            body.extras.approvers = Some(approval.approvers.clone());
        }
        let issued = async {
            let kind = grant.kind;
            let minter = self.minters.get(kind).ok_or_else(|| Refusal::NoMinter {
                grant: grant.name.clone(),
            })?;
            let spend: Vec<SpendOp> = decision
                .spend
                .iter()
                .filter_map(|s| {
                    budget
                        .as_ref()
                        .filter(|(key, _)| *key == s.key)
                        .map(|(key, policy)| SpendOp {
                            key: key.clone(),
                            policy: policy.clone(),
                            cost: s.cost,
                        })
                })
                .collect();
            let minting = Minting {
                request_id: request_id.clone(),
                identity,
                node,
                grant,
                decision: decision.clone(),
                body,
                spend,
                now,
                csr,
            };
            match minter.flow() {
                Flow::Local => self.issue_local(minter, &approved, minting).await,
                Flow::Upstream => self.issue_upstream(minter, &approved, minting).await,
            }
        }
        .await;
        // An approval consumed for an issuance that then did not happen (the
        // budget race lost, the log or the upstream failed) is given back.
        if let (Some(approval), Err(refusal)) = (&approval, &issued)
            && refusal.gives_approval_back()
        {
            approval::restore(self.store, approval).await;
        }
        issued
    }

    /// Everything a decision reads for `request` by `subject` at `now`:
    /// the store's state of the identity, its issuer and its budget, a
    /// redeemable approval, signals, ECI, anomaly state. Issuance decides on
    /// it; `mintguard decide` decides on it and stops there.
    pub async fn gather(
        &self,
        grant: &GrantConfig,
        request: &CredentialRequest,
        subject: &Subject<'_>,
        now: i64,
    ) -> Result<Gathered, Refusal> {
        let node = subject.issuer.as_str();
        let identity = subject.identity.as_str();
        let budget = grant.budget.as_ref().map(|b| {
            (
                format!("identity:{identity}/grant:{}", grant.name),
                b.policy(),
            )
        });
        let state = self
            .store
            .request_state(identity, node, budget.as_ref().map(|(key, _)| key.as_str()))
            .await?;
        let approval = match &request.approval_id {
            Some(id) => Some(
                approval::redeemable(
                    self.store,
                    id,
                    identity,
                    node,
                    subject.approval_binding.as_deref(),
                    request,
                    now,
                )
                .await?,
            ),
            None => None,
        };
        // An approver's TTL cap applies to the request it approved.
        let requested_ttl = match approval.as_ref().and_then(|a| a.approved_ttl_seconds) {
            Some(cap) => Some(request.ttl_seconds.map_or(cap, |t| t.min(cap))),
            None => request.ttl_seconds,
        };
        let config = self.rules.config;
        let eci = self.rules.eci;
        let anomaly = &config.anomaly.responses;
        let external = &state.signals;
        let snapshot = budget.as_ref().map(|(_, policy)| {
            state
                .budget
                .unwrap_or_else(|| BudgetSnapshot::full(policy, now))
        });
        let input = DecisionInput {
            identity: identity.to_owned(),
            principal: subject.principal,
            issuer: IssuerContext {
                kind: subject.issuer_kind,
                id: node.to_owned(),
                may_vouch: subject.may_vouch,
                suspended: state.issuer_suspension.is_some(),
                anomalous: anomaly.issuer_anomalous(node, external, now),
            },
            grant: inputs::grant_input(grant),
            requested_ttl_seconds: requested_ttl,
            purpose: request.purpose.clone(),
            now_ms: now,
            signals: inputs::observed_signals(
                &config.signals,
                grant,
                &subject.observed,
                external,
                self.analysis.behaviour(now),
                now,
            ),
            eci: EciInput {
                identity_effective: eci.get(identity).and_then(|n| n.eci_raw).unwrap_or(300.0),
                grant_exposure: eci.grant_exposure(&grant.name).unwrap_or(100.0),
                issuer_blast_radius: subject.blast_radius,
                explained: eci.get(identity).and_then(EciExplained::of),
            },
            budgets: match (&budget, snapshot) {
                (Some((key, policy)), Some(snapshot)) => vec![BudgetView {
                    key: key.clone(),
                    policy: policy.clone(),
                    snapshot,
                }],
                _ => Vec::new(),
            },
            evidence: inputs::compromise_evidence(external, now),
            suspension: state.identity_suspension.as_ref().map(|s| Suspension {
                evidence: Evidence {
                    kind: inputs::evidence_kind(&s.by),
                    detail: format!("{}: {}", s.by, s.reason),
                },
            }),
            approved: approval.is_some(),
            anomaly: anomaly.anomaly_input(identity, external, now),
            ci_claims: subject.ci_claims.clone(),
        };
        Ok(Gathered {
            input,
            budget,
            approval,
        })
    }

    /// A decision that does not mint: held for approval (`step_up`),
    /// denied, or suspended (which suspends the identity and revokes its
    /// leases); logged, then refused.
    #[allow(clippy::too_many_arguments)]
    async fn refuse(
        &self,
        request_id: &str,
        identity: &str,
        node: &str,
        binding: &Option<String>,
        decision: &Decision,
        body: &mut Body<'_>,
        record: impl Fn(Value) -> LogEntry,
        now: i64,
    ) -> Result<Issued, Refusal> {
        self.metrics.decided(
            decision.outcome.as_str(),
            decision.reasons.iter().map(|r| r.code()),
        );
        let held = if decision.outcome == Outcome::StepUp {
            let id = approval::hold(
                self.store,
                identity,
                body.request,
                node,
                binding.as_deref(),
                request_id,
                now..now.saturating_add(
                    i64::try_from(self.rules.config.approvals.ttl.0.as_millis())
                        .unwrap_or(i64::MAX / 2),
                ),
            )
            .await?;
            body.extras.approval_id = Some(id.clone());
            Some(id)
        } else {
            None
        };
        let budget_exhausted = decision.reasons.contains(&Reason::BudgetExhausted);
        if budget_exhausted {
            self.metrics.budget_exhausted.inc();
        }
        self.append_record(record(body.view().to_value()?), decision)
            .await?;
        let request_id = request_id.to_owned();
        Err(match decision.outcome {
            Outcome::StepUp => Refusal::StepUp {
                request_id,
                approval_id: held.unwrap_or_default(),
                decision: Box::new(decision.clone()),
            },
            Outcome::Suspend => {
                self.suspend_identity(identity, &request_id, decision)
                    .await?;
                Refusal::Suspended {
                    request_id,
                    reasons: decision.reasons.clone(),
                }
            }
            _ if budget_exhausted => Refusal::BudgetExhausted { request_id },
            _ => Refusal::Denied {
                request_id,
                reasons: decision.reasons.clone(),
            },
        })
    }

    /// The decision's log record with `body`.
    #[allow(clippy::too_many_arguments)]
    fn decision_record(
        &self,
        request_id: &str,
        identity: &str,
        grant: &GrantConfig,
        node: &str,
        decision: &Decision,
        body: Value,
        now: i64,
    ) -> LogEntry {
        LogEntry {
            time_ms: now,
            kind: RecordKind::Decision,
            request_id: request_id.to_owned(),
            identity: Some(identity.to_owned()),
            grant: Some(grant.name.clone()),
            node: Some(node.to_owned()),
            outcome: Some(decision.outcome.as_str().to_owned()),
            body,
        }
    }

    /// The shadow rule set's verdict on `input`, counted against the
    /// enforced `decided`; `None` without a shadow set.
    fn shadow_verdict(
        &self,
        input: &DecisionInput,
        decided: &Decision,
    ) -> Option<mintguard_policy::Verdict> {
        let shadow = self.rules.shadow?;
        let verdict = mintguard_policy::Verdict::of(&decide(input, &shadow.rules));
        self.metrics.shadow_decided(
            shadow.hash(),
            decided.outcome.as_str(),
            verdict.outcome.as_str(),
        );
        Some(verdict)
    }

    /// Appends a decision record that commits nothing beside it.
    async fn append_record(&self, entry: LogEntry, decision: &Decision) -> Result<(), Refusal> {
        self.log
            .append(Append {
                canonical_body: None,
                entry,
                spend: Vec::new(),
                lease: None,
                rule_set: Some((
                    decision.rule_set_hash.clone(),
                    self.rules.rules_json.clone(),
                )),
                refuse_if_suspended: Vec::new(),
                refuse_if_lease_closed: None,
            })
            .await
            .map_err(|e| Refusal::LogUnavailable(e.to_string()))?;
        Ok(())
    }

    /// Appends a record with nothing to commit beside it.
    pub async fn record(&self, entry: LogEntry) -> Result<(), Refusal> {
        self.log
            .append(Append::record(entry))
            .await
            .map(|_| ())
            .map_err(|e| Refusal::LogUnavailable(e.to_string()))
    }

    /// The identity or its issuer was suspended between the decision and
    /// its write: nothing was spent or issued.
    fn suspended_at_write(&self, request_id: &str) -> Refusal {
        self.metrics.decided("suspended", ["suspended_at_write"]);
        Refusal::SuspendedAtWrite {
            request_id: request_id.to_owned(),
        }
    }

    /// The budget race lost after deciding: logged as budget_exhausted.
    fn budget_lost(&self, request_id: &str) -> Refusal {
        self.metrics
            .decided("budget_exhausted", ["budget_exhausted"]);
        self.metrics.budget_exhausted.inc();
        Refusal::BudgetExhausted {
            request_id: request_id.to_owned(),
        }
    }
}
