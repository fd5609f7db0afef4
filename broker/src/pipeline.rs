//! The issuance pipeline, for every request an agent forwards:
//! authenticated node → entry match (issuer context) → rate limits →
//! `decide()` → the record, budget spend and lease committed atomically →
//! release the credential → answer. If the log cannot be written, nothing is
//! released (503).

use std::collections::BTreeMap;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use mintguard_api::{CredentialRequest, CredentialResponse, IssueRequest, NodeFacts};
use mintguard_policy::budget::BudgetSnapshot;
use mintguard_policy::decision::{
    BudgetView, EciInput, Evidence, EvidenceKind, GrantInput, IssuerContext, IssuerKind,
    PrincipalKind, Suspension,
};
use mintguard_policy::trust::{Signal, SignalKind, TrustInput};
use mintguard_policy::{Decision, DecisionInput, Outcome, decide};
use serde_json::json;
use time::OffsetDateTime;

use mintguard_certs::tls::SpiffePeer;

use crate::clock::now_ms;
use crate::config::{GrantConfig, GrantKind};
use crate::http::ApiError;
use crate::log::{LogEntry, RecordKind};
use crate::mint::jwt::{Claims, UnreleasedJwt};
use crate::mint::{Durable, LeaseKind, Revocation};
use crate::state::Broker;
use crate::store::{
    Append, Entry, Lease, LeaseOwner, LeaseQuery, SignalRecord, SpendOp, SuspensionRecord,
};

pub use crate::ids::random_id;

use crate::clock::rfc3339;

/// Counts a request against `node`'s rate (`[limits] per_node_per_second`):
/// credential requests and node SVID renewals alike.
pub fn limit_node(broker: &Broker, node: &str) -> Result<(), ApiError> {
    if broker.node_limiter.check_key(&node.to_owned()).is_err() {
        return Err(ApiError {
            retry_after: Some(1),
            ..ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "too many requests from this node",
            )
        });
    }
    Ok(())
}

/// Checks the request's shape and limits (a 400 changes nothing).
fn validate(req: &IssueRequest) -> Result<(), ApiError> {
    mintguard_api::check_selectors(&req.selectors).map_err(ApiError::from_input)?;
    if let Some(f) = &req.node_facts {
        f.check().map_err(ApiError::from_input)?;
    }
    validate_request(&req.request)
}

/// Checks a credential request's shape and limits (a 400 changes nothing).
pub fn validate_request(r: &CredentialRequest) -> Result<(), ApiError> {
    r.check().map_err(ApiError::from_input)?;
    if let Some(id) = &r.spiffe_id {
        mintguard_certs::id::parse_spiffe_id(id)
            .map_err(|e| ApiError::bad_request("bad_spiffe_id", e.to_string()))?;
    }
    Ok(())
}

/// The entry this workload gets: all its selectors among the presented ones.
fn select_entry<'a>(
    entries: &'a [Entry],
    selectors: &[String],
    wanted: Option<&str>,
) -> Result<&'a Entry, ApiError> {
    let entry = matching_entry(entries, selectors, wanted)?;
    // An entry stored before weak entries were refused is not honoured.
    if !Entry::pins_who(&entry.selectors) {
        return Err(
            ApiError::forbidden("weak_entry", crate::routes::admin::WEAK_ENTRY)
                .with_reasons(vec![entry.id.clone()]),
        );
    }
    Ok(entry)
}

fn matching_entry<'a>(
    entries: &'a [Entry],
    selectors: &[String],
    wanted: Option<&str>,
) -> Result<&'a Entry, ApiError> {
    let matching: Vec<&Entry> = entries
        .iter()
        .filter(|e| e.selectors.iter().all(|s| selectors.contains(s)))
        .filter(|e| wanted.is_none_or(|w| e.spiffe_id == w))
        .collect();
    match matching.as_slice() {
        [one] => Ok(one),
        [] => Err(ApiError::unauthenticated(
            "not_attested",
            "no registration entry matches this workload",
        )
        .with_reasons(selectors.to_vec())),
        many => {
            let mut ids: Vec<String> = many.iter().map(|e| e.spiffe_id.clone()).collect();
            ids.sort();
            ids.dedup();
            if ids.len() == 1 {
                Ok(many[0])
            } else {
                Err(ApiError::bad_request(
                    "ambiguous_identity",
                    "several identities match; name one with spiffe_id",
                )
                .with_reasons(ids))
            }
        }
    }
}

/// The signals: the ones the broker observes itself (DESIGN's table;
/// location, time and network drop out until their constraints are
/// configured), lowered by fresh external signals about the identity or its
/// node (signals API): per kind, the lowest fresh value counts.
/// The node's posture as the broker observes it: the mTLS handshake proved a
/// current SVID; one past three quarters of its life means the agent is not
/// renewing on schedule (renewal is due at half-life), which lowers posture.
pub fn node_posture(
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    now: OffsetDateTime,
) -> (u8, &'static str) {
    let life = (not_after - not_before).whole_milliseconds().max(1);
    let age = (now - not_before).whole_milliseconds();
    if age * 4 <= life * 3 {
        (100, "broker:node_svid")
    } else {
        (50, "broker:node_svid_not_renewed")
    }
}

/// Node facts the agent reports can only lower posture: an agent older than
/// `signals.min_agent_version` (or one that does not say) gets
/// `outdated_agent_posture` when a minimum is configured.
fn lower_posture_by_facts<'a>(
    signals: &crate::config::SignalsConfig,
    posture: (u8, &'a str),
    facts: Option<&NodeFacts>,
) -> (u8, &'a str) {
    let Some(minimum) = signals
        .min_agent_version
        .as_deref()
        .and_then(crate::config::parse_version)
    else {
        return posture;
    };
    let reported = facts.and_then(|f| crate::config::parse_version(&f.agent_version));
    if reported.is_some_and(|v| v >= minimum) || posture.0 <= signals.outdated_agent_posture {
        posture
    } else {
        (
            signals.outdated_agent_posture,
            "agent:version_below_minimum",
        )
    }
}

/// The trust signals of one decision: what the broker observed, the grant's
/// allowed hours, and the fresh external signals (the lowest per kind).
/// `behaviour` is the broker's neutral value only while anomaly analysis
/// keeps up; lagging, it is recorded with the age of analysis's last step
/// (so it counts as expired); switched off, it is left out.
pub fn observed_signals(
    signals: &crate::config::SignalsConfig,
    grant: &GrantConfig,
    observed: &Observed<'_>,
    external: &[SignalRecord],
    behaviour: crate::anomaly::health::Behaviour,
    now_ms: i64,
) -> TrustInput {
    let now_s = now_ms.div_euclid(1000);
    let ttl = signals.ttl.0.as_secs();
    let signal = |value, source: &str| Signal {
        value,
        observed_at: now_s,
        ttl_seconds: ttl,
        source: source.into(),
    };
    let mut input = TrustInput {
        signals: [
            (
                SignalKind::Posture,
                signal(observed.posture.0, observed.posture.1),
            ),
            (
                SignalKind::Attestation,
                signal(observed.attestation.0, observed.attestation.1),
            ),
        ]
        .into(),
        unconstrained: [SignalKind::Location, SignalKind::Time, SignalKind::Network].into(),
    };
    match behaviour {
        crate::anomaly::health::Behaviour::Fresh => {
            input.signals.insert(
                SignalKind::Behaviour,
                signal(signals.behaviour_neutral, "broker:neutral"),
            );
        }
        crate::anomaly::health::Behaviour::Stale {
            last_ms,
            window_seconds,
        } => {
            input.signals.insert(
                SignalKind::Behaviour,
                Signal {
                    value: signals.behaviour_neutral,
                    observed_at: last_ms.div_euclid(1000),
                    ttl_seconds: window_seconds,
                    source: "broker:analysis_stale".into(),
                },
            );
        }
        crate::anomaly::health::Behaviour::Off => {
            input.unconstrained.insert(SignalKind::Behaviour);
        }
    }
    if let Some((value, source)) = observed.network {
        input
            .signals
            .insert(SignalKind::Network, signal(value, source));
        input.unconstrained.remove(&SignalKind::Network);
    }
    let hour = OffsetDateTime::from_unix_timestamp(now_s).map_or(0, |t| t.hour());
    if let Some(allowed) = grant.hour_allowed(hour) {
        let value = if allowed { 100 } else { 0 };
        input
            .signals
            .insert(SignalKind::Time, signal(value, "broker:allowed_hours"));
        input.unconstrained.remove(&SignalKind::Time);
    }
    for ext in external {
        let fresh =
            ext.observed_at_ms + i64::try_from(ext.ttl_seconds).unwrap_or(0) * 1000 >= now_ms;
        let kind = match ext.kind.as_str() {
            "posture" => SignalKind::Posture,
            "attestation" => SignalKind::Attestation,
            "behaviour" => SignalKind::Behaviour,
            "location" => SignalKind::Location,
            "time" => SignalKind::Time,
            "network" => SignalKind::Network,
            _ => continue,
        };
        if !fresh {
            continue;
        }
        let candidate = Signal {
            value: ext.value.min(100),
            observed_at: ext.observed_at_ms.div_euclid(1000),
            ttl_seconds: ext.ttl_seconds,
            source: format!("{} ({})", ext.source, ext.subject),
        };
        match input.signals.get(&kind) {
            Some(current) if current.value <= candidate.value => {}
            _ => {
                input.signals.insert(kind, candidate);
                // An outside behaviour signal takes part even with analysis off.
                if kind == SignalKind::Behaviour {
                    input.unconstrained.remove(&kind);
                }
            }
        }
    }
    input
}

/// Fresh `compromise` signals about the identity or its node: positive evidence.
fn compromise_evidence(external: &[SignalRecord], now_ms: i64) -> Vec<Evidence> {
    external
        .iter()
        .filter(|s| {
            s.kind == "compromise"
                && s.observed_at_ms + i64::try_from(s.ttl_seconds).unwrap_or(0) * 1000 >= now_ms
        })
        .map(|s| Evidence {
            kind: EvidenceKind::CompromiseSignal,
            detail: format!("{} about {}", s.source, s.subject),
        })
        .collect()
}

/// Handles `POST /v1/issue` from the node `peer`.
pub async fn issue(
    broker: &Broker,
    peer: &SpiffePeer,
    req: IssueRequest,
) -> Result<Response, ApiError> {
    let started = std::time::Instant::now();
    // The one reading of the clock for this issuance.
    let now = broker.clock.now_ms();
    let posture = node_posture(
        peer.not_before(),
        peer.not_after(),
        crate::clock::datetime(now),
    );
    let result = issue_inner(broker, &peer.id().to_string(), posture, req, now).await;
    broker
        .metrics
        .issue_seconds
        .observe(started.elapsed().as_secs_f64());
    result
}

async fn issue_inner(
    broker: &Broker,
    node: &str,
    posture: (u8, &str),
    req: IssueRequest,
    now: i64,
) -> Result<Response, ApiError> {
    validate(&req)?;
    let dynamic = broker.dynamic.load_full();
    let IssueRequest {
        selectors,
        request,
        node_facts,
    } = req;
    let posture = lower_posture_by_facts(&dynamic.config.signals, posture, node_facts.as_ref());
    let Some(grant) = dynamic.config.grants.get(&request.grant) else {
        return Err(ApiError::bad_request(
            "unknown_grant",
            format!("no grant named {:?}", request.grant),
        ));
    };
    limit_node(broker, node)?;
    let entries = broker.store.entries(Some(node)).await?;
    let entry = select_entry(&entries, &selectors, request.spiffe_id.as_deref())?.clone();

    let attestation = if selectors.iter().any(|s| s.starts_with("unix:sha256:")) {
        (100, "agent:selectors")
    } else {
        (60, "agent:selectors")
    };
    let subject = Subject {
        identity: entry.spiffe_id.clone(),
        principal: PrincipalKind::Workload,
        issuer_kind: IssuerKind::Node,
        issuer: node.to_owned(),
        // The entry was found among this node's: it is the parent, and the
        // attested selectors match. A grant outside the entry may not be vouched for.
        may_vouch: entry.grants.contains(&grant.name),
        observed: Observed {
            posture,
            attestation,
            network: None,
        },
        blast_radius: dynamic.blast_radius.get(node).map_or(100.0, |r| r.max),
        ci_claims: BTreeMap::new(),
        context: json!({
            "selectors": selectors,
            "node_facts": node_facts,
            "entry_id": entry.id,
        }),
        audit: false,
        break_glass: None,
        approval_binding: None,
    };
    decide_and_issue(broker, &dynamic, grant, request, subject, now).await
}

/// What the broker observed about the caller, for the trust signals.
pub struct Observed<'a> {
    /// Posture of the issuer (value, source).
    pub posture: (u8, &'a str),
    /// Attestation strength (value, source).
    pub attestation: (u8, &'a str),
    /// The network signal when a constraint is configured.
    pub network: Option<(u8, &'a str)>,
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
    pub context: serde_json::Value,
    /// Audit mode: decide and log as if enforcing, then refuse.
    pub audit: bool,
    /// A confirmed break-glass request (its approval, opener, approvers):
    /// the decision is logged as decided, then overridden to issue.
    pub break_glass: Option<serde_json::Value>,
    /// What a step-up approval is bound to beyond the request: for a CI
    /// job, the digest of its immutable claims (`ci::job_digest`).
    pub approval_binding: Option<String>,
}

/// The shared pipeline after the caller is authenticated and its issuer
/// context established: rate limit per identity → decide → the record,
/// budget spend and lease committed atomically → release → answer. `now`
/// is the issuance's one reading of the clock: the decision, its record, the
/// lease and the credential's `iat` all carry it.
pub async fn decide_and_issue(
    broker: &Broker,
    dynamic: &crate::state::Dynamic,
    grant: &GrantConfig,
    request: CredentialRequest,
    subject: Subject<'_>,
    now: i64,
) -> Result<Response, ApiError> {
    if broker
        .identity_limiter
        .check_key(&subject.identity)
        .is_err()
    {
        return Err(ApiError {
            retry_after: Some(1),
            ..ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "too many requests for this identity",
            )
        });
    }
    let node = subject.issuer.as_str();
    let request_id = random_id("req");
    let behaviour = broker.analysis.behaviour(now);
    let identity = subject.identity.clone();
    let budget = grant.budget.as_ref().map(|b| {
        (
            format!("identity:{identity}/grant:{}", grant.name),
            b.policy(),
        )
    });
    let state = broker
        .store
        .request_state(
            &identity,
            node,
            budget.as_ref().map(|(key, _)| key.as_str()),
        )
        .await?;
    let external = state.signals;
    let (identity_suspension, node_suspension) =
        (state.identity_suspension, state.issuer_suspension);
    let snapshot = budget.as_ref().map(|(_, policy)| {
        state
            .budget
            .unwrap_or_else(|| BudgetSnapshot::full(policy, now))
    });
    let approval = match &request.approval_id {
        Some(id) => Some(
            crate::approvals::redeemable(
                broker,
                id,
                &identity,
                node,
                subject.approval_binding.as_deref(),
                &request,
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
    let eci = &dynamic.eci;
    let anomaly = &dynamic.config.anomaly.responses;
    let input = DecisionInput {
        identity: identity.clone(),
        principal: subject.principal,
        issuer: IssuerContext {
            kind: subject.issuer_kind,
            id: node.to_owned(),
            may_vouch: subject.may_vouch,
            suspended: node_suspension.is_some(),
            anomalous: anomaly.issuer_anomalous(node, &external, now),
        },
        grant: grant_input(grant),
        requested_ttl_seconds: requested_ttl,
        purpose: request.purpose.clone(),
        now_ms: now,
        signals: observed_signals(
            &dynamic.config.signals,
            grant,
            &subject.observed,
            &external,
            behaviour,
            now,
        ),
        eci: EciInput {
            identity_effective: eci.get(&identity).and_then(|n| n.eci_raw).unwrap_or(300.0),
            grant_exposure: eci.grant_exposure(&grant.name).unwrap_or(100.0),
            issuer_blast_radius: subject.blast_radius,
        },
        budgets: match (&budget, snapshot) {
            (Some((key, policy)), Some(snapshot)) => vec![BudgetView {
                key: key.clone(),
                policy: policy.clone(),
                snapshot,
            }],
            _ => Vec::new(),
        },
        evidence: compromise_evidence(&external, now),
        suspension: identity_suspension.map(|s| Suspension {
            evidence: Evidence {
                kind: evidence_kind(&s.by),
                detail: format!("{}: {}", s.by, s.reason),
            },
        }),
        approved: approval.is_some(),
        anomaly: anomaly.anomaly_input(&identity, &external, now),
        ci_claims: subject.ci_claims.clone(),
    };
    let decide_started = std::time::Instant::now();
    let decided = decide(&input, &dynamic.rules);
    broker
        .metrics
        .decision_seconds
        .observe(decide_started.elapsed().as_secs_f64());
    let decision = match &subject.break_glass {
        Some(_) => break_glass_override(&decided, grant)?,
        None => decided.clone(),
    };
    // The decision's log record (the body is filled in below).
    let decision_record = |body| LogEntry {
        time_ms: now,
        kind: RecordKind::Decision,
        request_id: request_id.clone(),
        identity: Some(identity.clone()),
        grant: Some(grant.name.clone()),
        node: Some(node.to_owned()),
        outcome: Some(decision.outcome.as_str().to_owned()),
        body,
    };
    // The body beside the input, the decision and the request (which
    // `DecisionBody` adds when the record is written).
    let mut body = serde_json::Map::new();
    if let Some(glass) = &subject.break_glass {
        body.insert("break_glass".into(), glass.clone());
        body.insert("issued_as".into(), json!({"outcome": decision.outcome, "reasons": decision.reasons, "ttl_seconds": decision.ttl_seconds}));
    }
    if let serde_json::Value::Object(extra) = subject.context {
        body.extend(extra);
    }
    let full_body = |extra| DecisionBody {
        input: &input,
        decision: &decided,
        request: &request,
        extra,
    };

    if subject.audit {
        // Logged as decided, marked audit, refused; nothing spent or minted.
        body.insert("audit".into(), true.into());
        body.insert("final_outcome".into(), "audit_refused".into());
        broker
            .append(Append {
                canonical_body: None,
                entry: decision_record(full_body(&body).to_value()?),
                spend: Vec::new(),
                lease: None,
                rule_set: Some((decision.rule_set_hash.clone(), dynamic.rules_json.clone())),
                refuse_if_suspended: Vec::new(),
            })
            .await
            .map_err(log_unavailable)?;
        return Err(ApiError::forbidden(
            "audit_mode",
            format!(
                "the CI policy is in audit mode; the decision ({}) was logged as {request_id}",
                decision.outcome.as_str()
            ),
        ));
    }

    if !decision.outcome.mints() {
        broker.metrics.decided(
            decision.outcome.as_str(),
            decision.reasons.iter().map(|r| r.code()),
        );
        let held = if decision.outcome == Outcome::StepUp {
            let id = crate::approvals::hold(
                broker,
                &identity,
                &request,
                node,
                subject.approval_binding.as_deref(),
                &request_id,
                now,
            )
            .await?;
            body.insert("approval_id".into(), id.clone().into());
            Some(id)
        } else {
            None
        };
        if decision
            .reasons
            .contains(&mintguard_policy::Reason::BudgetExhausted)
        {
            broker.metrics.budget_exhausted.inc();
        }
        let record = decision_record(full_body(&body).to_value()?);
        broker
            .append(Append {
                canonical_body: None,
                entry: record,
                spend: Vec::new(),
                lease: None,
                rule_set: Some((decision.rule_set_hash.clone(), dynamic.rules_json.clone())),
                refuse_if_suspended: Vec::new(),
            })
            .await
            .map_err(log_unavailable)?;
        if decision.outcome == Outcome::Suspend {
            suspend_identity(broker, &identity, &request_id, &decision).await?;
        }
        return Ok(refusal(&request_id, &decision, held.as_deref()));
    }
    if let Some(approval) = &approval {
        // Single use: consumed by the issuance it unlocks, before its record
        // (and given back below if nothing is issued).
        crate::approvals::consume(broker, approval).await?;
        body.insert("approval_id".into(), approval.id.clone().into());
        body.insert("approvers".into(), approval.approvers.clone().into());
    }
    let issued = async {

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
        if matches!(grant.kind, GrantKind::Vault | GrantKind::AwsSts) {
            let record = decision_record(full_body(&body).to_value()?);
            return issue_upstream(
                broker,
                dynamic,
                grant,
                &decision,
                record,
                spend,
                &request_id,
            )
            .await;
        }

        // Mint: a local JWT is signed first; it is released only after its record is durable.
        let GrantKind::Jwt = grant.kind else {
            return Err(ApiError::unavailable(
                "grant_unavailable",
                "this grant kind cannot be minted by this broker",
                "non-jwt grant",
            ));
        };
        let lease_id = random_id("lease");
        let ttl_ms = i64::try_from(decision.ttl_seconds).unwrap_or(i64::MAX / 1000) * 1000;
        let expires_at_ms = now + ttl_ms;
        let jwt = grant
            .jwt
            .as_ref()
            .map(|j| (j.audience.clone(), j.claims.clone()))
            .unwrap_or_default();
        let claims = Claims {
            iss: dynamic.config.issuer_url.clone(),
            sub: identity.clone(),
            aud: jwt.0.clone(),
            grant: grant.name.clone(),
            jti: lease_id.clone(),
            iat: now.div_euclid(1000),
            nbf: now.div_euclid(1000),
            exp: expires_at_ms.div_euclid(1000),
            extra: jwt.1,
        };
        let unreleased = {
            let keys = broker.jwt.read().map_err(|_| {
                ApiError::unavailable(
                    "signing_unavailable",
                    "signing keys unavailable",
                    "poisoned lock",
                )
            })?;
            UnreleasedJwt::sign(&keys, &claims, crate::clock::datetime(now)).map_err(|e| {
                ApiError::unavailable("signing_failed", "the credential could not be signed", e)
            })?
        };
        let lease = Lease {
            id: lease_id.clone(),
            request_id: request_id.clone(),
            identity: identity.clone(),
            grant: grant.name.clone(),
            node: Some(node.to_owned()),
            kind: LeaseKind::Jwt,
            revocation: Revocation::IntrospectionOnly,
            issued_at_ms: now,
            expires_at_ms,
            revoked_at_ms: None,
            task_ended_at_ms: None,
        };
        body.insert("lease".into(), json!({"id": lease_id, "expires_at_ms": expires_at_ms, "revocation": Revocation::IntrospectionOnly, "kind": LeaseKind::Jwt}));
        // The hot path: the body is written straight to its canonical form.
        let canonical = full_body(&body).to_canonical()?;
        let record = decision_record(serde_json::Value::Null);
        let appended = broker
            .append(Append {
                canonical_body: Some(canonical),
                entry: record,
                spend,
                lease: Some(lease),
                rule_set: Some((decision.rule_set_hash.clone(), dynamic.rules_json.clone())),
                refuse_if_suspended: vec![identity.clone(), node.to_owned()],
            })
            .await
            .map_err(log_unavailable)?;
        if appended.suspended {
            return Err(suspended_at_write(broker, &request_id));
        }
        let Some(durable) = Durable::from_appended(&appended) else {
            // Lost the budget race after deciding: logged as budget_exhausted, token discarded.
            broker
                .metrics
                .decided("budget_exhausted", ["budget_exhausted"]);
            broker.metrics.budget_exhausted.inc();
            return Err(budget_exhausted(&request_id));
        };
        broker.metrics.decided(
            decision.outcome.as_str(),
            decision.reasons.iter().map(|r| r.code()),
        );
        let token = unreleased.release(&durable);
        let response = CredentialResponse {
            lease_id,
            expires_at: rfc3339(expires_at_ms),
            credential: json!({"type": "jwt", "token": token, "audience": jwt.0}),
            decision: decision_summary(&request_id, &decision),
        };
        Ok((StatusCode::OK, axum::Json(response)).into_response())
    }
    .await;
    // An approval consumed for an issuance that then did not happen (the
    // budget race lost, the log or the upstream failed) is given back.
    if let (Some(approval), Err(e)) = (&approval, &issued)
        && matches!(
            e.code,
            "budget_exhausted" | "log_unavailable" | "upstream_unavailable" | "signing_unavailable"
        )
    {
        crate::approvals::restore(broker, approval).await;
    }
    issued
}

/// A decision record's body: the input, the decision and the request, and
/// what the pipeline adds (lease, approval, break-glass, CI context).
#[derive(serde::Serialize)]
struct DecisionBody<'a> {
    input: &'a DecisionInput,
    decision: &'a Decision,
    request: &'a CredentialRequest,
    #[serde(flatten)]
    extra: &'a serde_json::Map<String, serde_json::Value>,
}

impl DecisionBody<'_> {
    /// As a JSON tree, for the paths that add to it later.
    fn to_value(&self) -> Result<serde_json::Value, ApiError> {
        serde_json::to_value(self).map_err(|e| {
            ApiError::unavailable("log_unavailable", "the decision could not be recorded", e)
        })
    }

    /// Its canonical JSON, written directly (no tree).
    fn to_canonical(&self) -> Result<String, ApiError> {
        crate::log::jcs::to_canonical(self).map_err(|e| {
            ApiError::unavailable("log_unavailable", "the decision could not be recorded", e)
        })
    }
}

/// The upstream a grant mints from.
#[derive(Clone, Copy)]
enum Upstream<'a> {
    Vault(
        &'a crate::mint::vault::VaultClient,
        &'a crate::config::VaultGrant,
    ),
    Sts(
        &'a crate::mint::sts::StsMinter,
        &'a crate::config::AwsStsGrant,
    ),
}

/// An upstream (Vault, STS) mint: the intent record with spend and lease, then
/// the mint (which needs the intent's proof), then the outcome record, then
/// the answer. A failed mint is refunded, its lease closed, and logged; an
/// outcome that cannot be logged revokes what was minted (nothing
/// half-recorded leaves the broker).
async fn issue_upstream(
    broker: &Broker,
    dynamic: &crate::state::Dynamic,
    grant: &GrantConfig,
    decision: &Decision,
    mut record: LogEntry,
    spend: Vec<SpendOp>,
    request_id: &str,
) -> Result<Response, ApiError> {
    let upstream = match (
        grant.kind,
        &broker.vault,
        &grant.vault,
        &broker.sts,
        &grant.aws_sts,
    ) {
        (GrantKind::Vault, Some(v), Some(g), _, _) => Upstream::Vault(v, g),
        (GrantKind::AwsSts, _, _, Some(s), Some(g)) => Upstream::Sts(s, g),
        _ => {
            return Err(ApiError::unavailable(
                "upstream_unavailable",
                "no upstream is configured for this grant (a new kind needs a restart)",
                grant.name.clone(),
            ));
        }
    };
    let identity = record.identity.clone().unwrap_or_default();
    let now = record.time_ms;
    let lease_id = random_id("lease");
    let mut ttl_seconds = decision.ttl_seconds;
    if let Upstream::Sts(_, g) = upstream {
        use crate::config::sts_limits::{MAX_DURATION, MIN_DURATION};
        if ttl_seconds < MIN_DURATION {
            if g.ttl_floor.as_deref() == Some("upstream") {
                ttl_seconds = MIN_DURATION;
            } else {
                // Logged with its final outcome; nothing spent or minted.
                if let Some(obj) = record.body.as_object_mut() {
                    obj.insert("final_outcome".into(), "ttl_below_upstream_minimum".into());
                }
                self::record(broker, record.clone()).await?;
                return Err(ApiError::forbidden(
                    "ttl_below_upstream_minimum",
                    format!(
                        "the decided TTL ({ttl_seconds} s) is below STS's {MIN_DURATION} s; the grant may set ttl_floor = \"upstream\""
                    ),
                ));
            }
        }
        ttl_seconds = ttl_seconds.min(MAX_DURATION);
    }
    let (kind, revocation) = match upstream {
        Upstream::Vault(..) => (LeaseKind::Vault, Revocation::Effective),
        Upstream::Sts(..) => (LeaseKind::AwsSts, Revocation::Advisory),
    };
    let expires_at_ms = now + i64::try_from(ttl_seconds).unwrap_or(i64::MAX / 1000) * 1000;
    record.kind = RecordKind::Intent;
    if let Some(obj) = record.body.as_object_mut() {
        obj.insert("lease".into(), json!({"id": lease_id, "expires_at_ms": expires_at_ms, "revocation": revocation, "kind": kind, "effective_ttl_seconds": ttl_seconds}));
    }
    let lease = Lease {
        id: lease_id.clone(),
        request_id: request_id.to_owned(),
        identity: identity.clone(),
        grant: grant.name.clone(),
        node: record.node.clone(),
        kind,
        revocation,
        issued_at_ms: now,
        expires_at_ms,
        revoked_at_ms: None,
        task_ended_at_ms: None,
    };
    let appended = broker
        .append(Append {
            canonical_body: None,
            entry: record.clone(),
            spend: spend.clone(),
            lease: Some(lease.clone()),
            rule_set: Some((decision.rule_set_hash.clone(), dynamic.rules_json.clone())),
            refuse_if_suspended: std::iter::once(identity.clone())
                .chain(lease.node.clone())
                .collect(),
        })
        .await
        .map_err(log_unavailable)?;
    if appended.suspended {
        return Err(suspended_at_write(broker, request_id));
    }
    let Some(proof) = crate::mint::LoggedIntent::from_appended(&appended, &lease_id) else {
        broker
            .metrics
            .decided("budget_exhausted", ["budget_exhausted"]);
        broker.metrics.budget_exhausted.inc();
        return Err(budget_exhausted(request_id));
    };
    let outcome = |outcome: &str, body| lease_record(&lease, RecordKind::Outcome, outcome, body);
    let minted = match upstream {
        // Errors say whether the upstream may have minted all the same.
        Upstream::Vault(vault, g) => vault
            .mint(&proof, g, &identity, ttl_seconds)
            .await
            .map_err(|e| (e.to_string(), e.ambiguous)),
        Upstream::Sts(sts, g) => {
            let session = crate::mint::sts::Session {
                identity: &identity,
                node: record.node.as_deref().unwrap_or_default(),
                duration: ttl_seconds,
                reduced: decision.reduced,
            };
            let token = match g.mode {
                crate::config::StsMode::AssumeRole => Ok(None),
                crate::config::StsMode::WebIdentity => match broker.jwt.read() {
                    Ok(keys) => sts
                        .web_identity_token(
                            &keys,
                            &broker.config().issuer_url,
                            &proof,
                            &session,
                            crate::clock::datetime(now),
                        )
                        .map(Some),
                    Err(_) => Err(crate::mint::sts::StsError::new(
                        "the JWT keys are unavailable",
                    )),
                },
            };
            match token {
                Ok(token) => sts.mint(&proof, g, &session, token).await,
                Err(e) => Err(e),
            }
            .map_err(|e| (e.to_string(), e.ambiguous))
        }
    };
    match minted {
        Ok(minted) => {
            fault_point("after_upstream_mint");
            let upstream_expiry = (minted.lease_seconds > 0).then(|| {
                now + i64::try_from(minted.lease_seconds).unwrap_or(i64::MAX / 1000) * 1000
            });
            let body = json!({
                "lease_id": lease_id, "intent_seq": proof.seq(), "upstream": minted.upstream,
                "expires_at_ms": expires_at_ms, "upstream_expires_at_ms": upstream_expiry,
            });
            fault_wait("before_outcome").await;
            // The suspension check again: the identity or its node may have
            // been suspended while the upstream minted, after that
            // suspension's revocation found no upstream handle to revoke.
            let appended = broker
                .append(Append {
                    canonical_body: None,
                    entry: outcome("minted", body),
                    spend: Vec::new(),
                    lease: None,
                    rule_set: None,
                    refuse_if_suspended: std::iter::once(identity.clone())
                        .chain(lease.node.clone())
                        .collect(),
                })
                .await;
            match appended {
                Ok(a) if a.suspended => {
                    // Logged as `suspended` with its upstream handle, never
                    // released; revoked now (or by the expiry pass).
                    if let Err(e) = revoke_lease(broker, &lease, request_id, "suspension").await {
                        tracing::error!(%lease_id, error = %e.message, "a credential minted during a suspension could not be revoked yet; the expiry pass retries");
                    }
                    return Err(suspended_at_write(broker, request_id));
                }
                Ok(_) => {}
                Err(e) => {
                    // Never answer with a credential whose outcome is not durable.
                    let revoked = match upstream {
                        Upstream::Vault(vault, _) => vault.revoke(&minted.upstream).await.map_err(|e| e.to_string()),
                        Upstream::Sts(..) => Err("STS sessions cannot be revoked one by one; attach the deny policy (`mintguard aws revoke-policy`)".to_owned()),
                    };
                    tracing::error!(%lease_id, ?revoked, "the outcome could not be logged; the upstream credential was revoked");
                    // Not `log_unavailable`: it was minted (and its approval,
                    // if any, stays used).
                    return Err(ApiError::unavailable(
                        "outcome_unavailable",
                        "the credential was minted but its outcome could not be logged; it was not returned, and was revoked upstream where the upstream allows",
                        e,
                    ));
                }
            }
            broker.metrics.decided(
                decision.outcome.as_str(),
                decision.reasons.iter().map(|r| r.code()),
            );
            let response = CredentialResponse {
                lease_id,
                expires_at: rfc3339(
                    upstream_expiry.map_or(expires_at_ms, |u| u.min(expires_at_ms)),
                ),
                credential: minted.credential,
                decision: decision_summary(request_id, decision),
            };
            Ok((StatusCode::OK, axum::Json(response)).into_response())
        }
        Err((e, true)) => {
            // The upstream may have minted it: no refund, and the intent
            // stays without an outcome, so reconciliation (after
            // `reconcile_after`) finds and revokes a Vault child token by its
            // metadata, or logs a Vault secret or an STS session (which
            // cannot be found one by one) for an operator.
            tracing::warn!(%lease_id, error = %e, "the upstream mint's outcome is unknown; left to reconciliation");
            broker
                .metrics
                .decided("upstream_outcome_unknown", ["upstream_outcome_unknown"]);
            Err(ApiError::unavailable(
                "upstream_outcome_unknown",
                "the upstream did not answer; nothing was issued, and if it minted the credential, reconciliation revokes it or lists it for an operator (the budget is not refunded)",
                e,
            ))
        }
        Err((e, false)) => {
            let t = now_ms();
            for op in &spend {
                broker.store.refund(&op.key, &op.policy, op.cost, t).await?;
            }
            broker.store.revoke_lease(&lease_id, t).await?;
            let body = json!({"lease_id": lease_id, "intent_seq": proof.seq(), "error": e, "refunded": !spend.is_empty()});
            self::record(broker, outcome("mint_failed", body)).await?;
            Err(ApiError::unavailable(
                "upstream_unavailable",
                "the upstream did not mint the credential; nothing was issued and the budget was refunded",
                e,
            ))
        }
    }
}

/// A crash point for the crash-safety tests: debug builds abort here when
/// `MINTGUARD_FAULT` names it; release builds compile it to nothing.
fn fault_point(name: &str) {
    #[cfg(debug_assertions)]
    if std::env::var("MINTGUARD_FAULT").is_ok_and(|f| f == name) {
        tracing::error!(point = name, "fault injection: aborting");
        std::process::abort();
    }
    #[cfg(not(debug_assertions))]
    let _ = name;
}

/// A pause point for the race tests: debug builds with
/// `MINTGUARD_FAULT_WAIT=NAME:PATH` create `PATH.reached` here and wait
/// (at most a minute) until `PATH` is removed; release builds compile it to
/// nothing.
pub(crate) async fn fault_wait(name: &str) {
    #[cfg(debug_assertions)]
    if let Some(path) = std::env::var("MINTGUARD_FAULT_WAIT").ok().and_then(|v| {
        v.strip_prefix(&format!("{name}:"))
            .map(std::path::PathBuf::from)
    }) {
        let mut reached = path.clone().into_os_string();
        reached.push(".reached");
        let _ = std::fs::write(&reached, b"");
        for _ in 0..6000 {
            if !path.exists() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
    #[cfg(not(debug_assertions))]
    let _ = name;
}

/// A record about `lease` (its request, identity, grant and node), now.
fn lease_record(
    lease: &Lease,
    kind: RecordKind,
    outcome: &str,
    body: serde_json::Value,
) -> LogEntry {
    LogEntry {
        time_ms: now_ms(),
        kind,
        request_id: lease.request_id.clone(),
        identity: Some(lease.identity.clone()),
        grant: Some(lease.grant.clone()),
        node: lease.node.clone(),
        outcome: Some(outcome.to_owned()),
        body,
    }
}

/// What an operator does to end an advisory (STS) lease.
pub fn advisory_action(lease_id: &str) -> String {
    format!(
        "attach the deny policy from `mintguard aws revoke-policy {lease_id}` to the role, then `mintguard revoke {lease_id} --confirm-attached`"
    )
}

/// Leases [`reconcile_upstream`] reads at once.
const RECONCILE_PAGE: usize = 500;

/// Reconciliation of upstream mints: a Vault lease with an intent record
/// but no outcome (the broker died between the mint and the answer) is
/// found upstream and revoked (child tokens, by their `mintguard_lease`
/// metadata), closed as never minted, or — for dynamic secrets, which Vault
/// cannot be searched for — logged for operator action and left listed in
/// `mintguard leases`. Only intents older than `min_age_ms` are considered
/// (`vault.reconcile_after`: longer than any mint takes), and only those
/// after `cursor` (issue time, lease id), which moves past each one looked
/// at: each intent is looked at once per broker run, not on every pass,
/// unless Vault could not be asked (the pass stops there, and the next one
/// starts again from that intent).
/// Returns how many it settled.
pub async fn reconcile_upstream(
    broker: &Broker,
    min_age_ms: i64,
    cursor: &mut (i64, String),
) -> Result<usize, ApiError> {
    if broker.vault.is_none() && broker.sts.is_none() {
        return Ok(0);
    }
    let mut settled = 0;
    // Younger intents may still be in flight (here or on a replica).
    let old_enough = now_ms() - min_age_ms;
    loop {
        let page = broker
            .store
            .leases(&LeaseQuery::UpstreamIssued {
                after: cursor.clone(),
                until_ms: old_enough,
                limit: RECONCILE_PAGE,
            })
            .await?;
        for lease in &page {
            // A store error, or Vault unreachable, leaves the cursor here:
            // the lease (and those after it) are looked at again next pass.
            match reconcile_lease(broker, lease).await? {
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

/// Settles one upstream lease if its intent has no outcome; whether it did.
/// What reconciling one lease did.
enum Reconciled {
    /// Settled (revoked upstream, or closed as never minted).
    Settled,
    /// Nothing to do, or handed to an operator.
    Nothing,
    /// Vault could not be asked now: look again at the next pass.
    Retry,
}

async fn reconcile_lease(broker: &Broker, lease: &Lease) -> Result<Reconciled, ApiError> {
    let records = broker.store.log_for_request(&lease.request_id).await?;
    if records.iter().any(|r| r.entry.kind == RecordKind::Outcome) {
        return Ok(Reconciled::Nothing);
    }
    let outcome = |outcome: &str, body| lease_record(lease, RecordKind::Outcome, outcome, body);
    if lease.kind == LeaseKind::AwsSts {
        // STS sessions cannot be found or revoked one by one.
        if lease.task_ended_at_ms.is_none() {
            record(
                broker,
                outcome(
                    "reconcile_operator_action",
                    json!({
                        "lease_id": lease.id, "minted_unanswered": "unknown",
                        "action": advisory_action(&lease.id),
                    }),
                ),
            )
            .await?;
            broker.store.end_task(&lease.id, now_ms()).await?;
        }
        return Ok(Reconciled::Nothing);
    }
    let Some(vault) = broker.vault.as_ref() else {
        return Ok(Reconciled::Nothing);
    };
    let grant = broker
        .dynamic
        .load()
        .config
        .grants
        .get(&lease.grant)
        .and_then(|g| g.vault.clone());
    match grant {
        Some(crate::config::VaultGrant::Token { .. }) => {
            match vault.find_token_for_lease(&lease.id).await {
                Ok(Some(accessor)) => {
                    let upstream = json!({"vault_accessor": accessor});
                    let gone = vault.revoke(&upstream).await.unwrap_or(false);
                    if gone {
                        record(broker, outcome("reconciled_revoked", json!({"lease_id": lease.id, "upstream": upstream, "minted_unanswered": true}))).await?;
                        broker.store.revoke_lease(&lease.id, now_ms()).await?;
                        return Ok(Reconciled::Settled);
                    } else {
                        tracing::error!(lease = %lease.id, "an unanswered Vault token could not be revoked; retrying at the next pass");
                        return Ok(Reconciled::Retry);
                    }
                }
                Ok(None) => {
                    record(
                        broker,
                        outcome(
                            "reconciled_not_minted",
                            json!({"lease_id": lease.id, "minted_unanswered": false}),
                        ),
                    )
                    .await?;
                    broker.store.revoke_lease(&lease.id, now_ms()).await?;
                    return Ok(Reconciled::Settled);
                }
                // Vault could not be searched now: no outcome, and the next
                // pass tries again.
                Err(e) => {
                    tracing::error!(lease = %lease.id, error = %e, "searching Vault for an unanswered token failed; retrying at the next pass");
                    return Ok(Reconciled::Retry);
                }
            }
        }
        _ => {
            let path = match &grant {
                Some(crate::config::VaultGrant::Secret { path, .. }) => path.clone(),
                _ => String::new(),
            };
            record(broker, outcome("reconcile_operator_action", json!({
                "lease_id": lease.id, "vault_path": path, "intent_time_ms": lease.issued_at_ms,
                "action": "find the Vault lease under this path issued at that time and revoke it, then `mintguard revoke LEASE --confirm-revoked-upstream`",
            }))).await?;
        }
    }
    Ok(Reconciled::Nothing)
}

/// The upstream reference of a lease, from its outcome record.
pub async fn upstream_of(
    broker: &Broker,
    lease: &Lease,
) -> Result<Option<serde_json::Value>, ApiError> {
    let records = broker.store.log_for_request(&lease.request_id).await?;
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

fn evidence_kind(by: &str) -> EvidenceKind {
    if by.starts_with("operator:") {
        EvidenceKind::Operator
    } else if by.starts_with("signal:") {
        EvidenceKind::CompromiseSignal
    } else {
        EvidenceKind::Detection
    }
}

/// The policy's view of a grant.
pub fn grant_input(grant: &GrantConfig) -> GrantInput {
    GrantInput {
        name: grant.name.clone(),
        kind: match grant.kind {
            GrantKind::Jwt => "jwt",
            GrantKind::Vault => "vault",
            GrantKind::AwsSts => "aws_sts",
        }
        .into(),
        max_ttl_seconds: grant.max_ttl.0.as_secs(),
        reduced_max_ttl_seconds: grant
            .reduced
            .as_ref()
            .and_then(|r| r.max_ttl)
            .map(|d| d.0.as_secs()),
    }
}

/// A confirmed break-glass request issues whatever was decided — except
/// over a suspended identity (compromise evidence stands) — with the grant's
/// TTL cap, no reduction and no budget spend.
fn break_glass_override(decided: &Decision, grant: &GrantConfig) -> Result<Decision, ApiError> {
    if decided.outcome == Outcome::Suspend {
        return Err(ApiError::forbidden(
            "suspended",
            "the identity is suspended; break-glass does not override a suspension",
        ));
    }
    let mut d = decided.clone();
    d.outcome = Outcome::Allow;
    d.reduced = false;
    d.spend.clear();
    d.ttl_seconds = d
        .requested_ttl_seconds
        .min(grant.max_ttl.0.as_secs())
        .max(1);
    d.reasons.push(mintguard_policy::Reason::BreakGlass);
    Ok(d)
}

/// What the workload sees of a decision.
pub fn decision_summary(request_id: &str, d: &Decision) -> serde_json::Value {
    json!({
        "request_id": request_id,
        "outcome": d.outcome,
        "reasons": d.reasons,
        "trust_score": d.trust.score,
        "min_trust": d.min_trust,
        "eci": d.eci.eci,
        "ttl_seconds": d.ttl_seconds,
        "reduced": d.reduced,
        "rule_set_hash": d.rule_set_hash,
    })
}

/// The identity or its issuer was suspended between the decision and its
/// write: the record says `suspended`, nothing was spent or issued.
fn suspended_at_write(broker: &Broker, request_id: &str) -> ApiError {
    broker.metrics.decided("suspended", ["suspended_at_write"]);
    ApiError::forbidden(
        "suspended",
        format!("suspended while the request was decided (request {request_id})"),
    )
    .with_reasons(vec!["suspended_at_write".into()])
}

fn budget_exhausted(request_id: &str) -> ApiError {
    ApiError {
        retry_after: Some(60),
        ..ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "budget_exhausted",
            format!("budget exhausted (request {request_id})"),
        )
        .with_reasons(vec!["budget_exhausted".into()])
    }
}

/// The answer to a decision that does not mint.
fn refusal(request_id: &str, d: &Decision, approval_id: Option<&str>) -> Response {
    let reasons: Vec<String> = d.reasons.iter().map(|r| r.code().to_owned()).collect();
    match d.outcome {
        Outcome::StepUp => {
            let approval_id = approval_id.unwrap_or_default();
            (
                StatusCode::ACCEPTED,
                axum::Json(json!({
                    "approval_id": approval_id,
                    "error": {"code": "step_up_required", "message": "held for approval", "reasons": reasons},
                    "decision": decision_summary(request_id, d),
                })),
            )
                .into_response()
        }
        Outcome::Suspend => ApiError::forbidden(
            "suspended",
            format!("the identity is suspended (request {request_id})"),
        )
        .with_reasons(reasons)
        .into_response(),
        _ if d
            .reasons
            .contains(&mintguard_policy::Reason::BudgetExhausted) =>
        {
            budget_exhausted(request_id).into_response()
        }
        _ => ApiError::forbidden("denied", format!("denied (request {request_id})"))
            .with_reasons(reasons)
            .into_response(),
    }
}

/// A `suspend` decision: record the suspension and revoke the identity's
/// live leases. An identity already suspended keeps its suspension record
/// (who suspended it and why) and nothing is revoked again: every request
/// of a suspended identity is decided `suspend`, and must stay cheap. A
/// lease that cannot be revoked is logged (the refusal stands; expiry and
/// `mintguard revoke` retry it).
async fn suspend_identity(
    broker: &Broker,
    identity: &str,
    request_id: &str,
    decision: &Decision,
) -> Result<(), ApiError> {
    if broker.store.suspension(identity).await?.is_some() {
        return Ok(());
    }
    broker
        .store
        .suspend(&SuspensionRecord {
            subject: identity.to_owned(),
            reason: decision
                .reasons
                .iter()
                .map(|r| r.code())
                .collect::<Vec<_>>()
                .join(","),
            by: format!("decision:{request_id}"),
            at_ms: now_ms(),
        })
        .await?;
    if let Err(e) = revoke_all(broker, identity, request_id, "suspension").await {
        tracing::error!(%identity, error = %e.message, "suspended, but leases were left live");
    }
    Ok(())
}

/// Leases [`revoke_all`] reads at once.
const REVOKE_PAGE: usize = 500;

/// Revokes every live lease of `subject`, logging each revocation: an
/// identity's leases, or for a node (or a CI issuer, by its URL) every lease
/// issued through it. A lease that cannot be revoked does not stop the
/// others; the error afterwards says how many were left live and why the
/// first one failed.
pub async fn revoke_all(
    broker: &Broker,
    subject: &str,
    request_id: &str,
    why: &str,
) -> Result<(), ApiError> {
    let now = now_ms();
    // A node of this trust domain, or a CI issuer (a URL, not a SPIFFE ID).
    let issuer = match mintguard_certs::id::parse_spiffe_id(subject) {
        Ok(id) => mintguard_certs::id::IdMatcher::nodes(&broker.config().trust_domain).matches(&id),
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
        let page = broker
            .store
            .leases(&LeaseQuery::Live {
                owner: owner.clone(),
                now_ms: now,
                after_id: after_id.take(),
                limit: REVOKE_PAGE,
            })
            .await?;
        for lease in &page {
            match revoke_lease(broker, lease, request_id, why).await {
                Ok(_) => {}
                // Still minting (no outcome yet): its outcome's write sees
                // the suspension and revokes it then; a broker that died
                // mid-mint has it reconciled.
                Err(e)
                    if e.code == "upstream_reference_missing"
                        && lease.issued_at_ms > now - broker.reconcile_after_ms() =>
                {
                    tracing::info!(lease = %lease.id, %subject, "lease still minting; held back at its outcome");
                }
                Err(e) => {
                    tracing::error!(lease = %lease.id, %subject, error = %e.message, "lease not revoked");
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
        Some(first) => Err(ApiError {
            message: format!(
                "{failed} lease(s) of {subject} could not be revoked; the first: {}",
                first.message
            ),
            ..first
        }),
    }
}

/// The 503 for a log that cannot be written (nothing is issued then).
pub fn log_unavailable(e: impl std::fmt::Display) -> ApiError {
    ApiError::unavailable(
        "log_unavailable",
        "the issuance log cannot be written; nothing was issued",
        e,
    )
}

/// Appends a record with nothing to commit beside it; 503 if the log cannot be written.
pub async fn record(broker: &Broker, entry: LogEntry) -> Result<(), ApiError> {
    broker
        .append(Append {
            canonical_body: None,
            entry,
            spend: Vec::new(),
            lease: None,
            rule_set: None,
            refuse_if_suspended: Vec::new(),
        })
        .await
        .map(|_| ())
        .map_err(log_unavailable)
}

/// The `why` of a revocation an operator confirms was done upstream by hand
/// (followed by the operator's name): the broker closes the lease without
/// calling Vault.
pub const CONFIRMED_UPSTREAM: &str = "confirmed_upstream_by_operator:";

/// Revokes one lease and logs it.
pub async fn revoke_lease(
    broker: &Broker,
    lease: &Lease,
    request_id: &str,
    why: &str,
) -> Result<bool, ApiError> {
    // Advisory (STS): the session cannot be revoked one by one. The task's
    // end is recorded; the lease stays live until it expires or an operator
    // confirms the deny policy is attached (`mintguard revoke --confirm-attached`).
    if lease.revocation == Revocation::Advisory && why != "confirmed_attached" {
        let now = now_ms();
        if broker.store.end_task(&lease.id, now).await? {
            let mut entry = lease_record(
                lease,
                RecordKind::Revocation,
                "advisory",
                json!({"lease_id": lease.id, "why": why, "revocation": Revocation::Advisory, "action": advisory_action(&lease.id)}),
            );
            entry.request_id = request_id.to_owned();
            record(broker, entry).await?;
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
        let vault = broker.vault.as_ref().ok_or_else(|| {
            ApiError::unavailable(
                "upstream_unavailable",
                "no Vault is configured",
                "missing [vault]",
            )
        })?;
        let Some(upstream) = upstream_of(broker, lease).await? else {
            return Err(ApiError::unavailable(
                "upstream_reference_missing",
                "the lease has no minted outcome record; see `mintguard logs` for its intent",
                lease.id.clone(),
            ));
        };
        confirmed = vault.revoke(&upstream).await.map_err(|e| {
            ApiError::unavailable(
                "upstream_revoke_failed",
                "Vault did not revoke the credential",
                e,
            )
        })?;
        if !confirmed {
            return Err(ApiError::unavailable(
                "upstream_revoke_unconfirmed",
                "Vault still knows the credential after the revocation",
                lease.id.clone(),
            ));
        }
    }
    let now = now_ms();
    let revoked = broker.store.revoke_lease(&lease.id, now).await?;
    if revoked {
        let mut entry = lease_record(
            lease,
            RecordKind::Revocation,
            "revoked",
            json!({"lease_id": lease.id, "why": why, "revocation": lease.revocation, "confirmed_upstream": confirmed,
                   "confirmed_by_operator": by_operator}),
        );
        entry.request_id = request_id.to_owned();
        record(broker, entry).await?;
    }
    Ok(revoked)
}

/// Parses a request for tests and tools.
pub fn request(grant: &str) -> CredentialRequest {
    CredentialRequest {
        grant: grant.into(),
        ttl_seconds: None,
        purpose: None,
        spiffe_id: None,
        bind_to_process: None,
        approval_id: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_facts_only_lower_posture() {
        let mut signals = crate::config::SignalsConfig::default();
        let facts = |v: &str| NodeFacts {
            agent_version: v.into(),
            ..NodeFacts::default()
        };
        let fresh = (100, "broker:node_svid");
        // No minimum configured: facts change nothing.
        assert_eq!(
            lower_posture_by_facts(&signals, fresh, Some(&facts("0.0.1"))),
            fresh
        );
        signals.min_agent_version = Some("0.2.0".into());
        let cases = [
            (Some(facts("0.2.0")), 100),
            (Some(facts("1.0.0-rc1")), 100),
            (Some(facts("0.1.9")), 30),
            (Some(facts("not a version")), 30),
            (None, 30),
        ];
        for (f, want) in cases {
            assert_eq!(
                lower_posture_by_facts(&signals, fresh, f.as_ref()).0,
                want,
                "{f:?}"
            );
        }
        // Never raised: an already lower posture stays.
        let stale = (20, "broker:node_svid_not_renewed");
        assert_eq!(
            lower_posture_by_facts(&signals, stale, Some(&facts("0.0.1"))),
            stale
        );
    }

    #[test]
    fn posture_drops_when_the_node_stops_renewing() {
        let start = OffsetDateTime::from_unix_timestamp(1_000_000).unwrap();
        let end = start + time::Duration::hours(1);
        assert_eq!(
            node_posture(start, end, start + time::Duration::minutes(10)).0,
            100
        );
        assert_eq!(
            node_posture(start, end, start + time::Duration::minutes(45)).0,
            100
        );
        assert_eq!(
            node_posture(start, end, start + time::Duration::minutes(46)).0,
            50
        );
    }
}
