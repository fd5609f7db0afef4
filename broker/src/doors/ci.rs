//! The CI front door (`POST /v1/ci/credentials` and RFC 8693 on the public
//! listener): a runner's OIDC token is verified, matched to a CI trust
//! policy, and the request handed to the issuance core with the job's
//! posture, attestation and claims.

use std::net::IpAddr;

use axum::http::StatusCode;
use mintguard_api::CredentialRequest;
use mintguard_policy::decision::{IssuerKind, PrincipalKind};
use serde_json::{Value, json};

use crate::ci::config::FORK_EVENTS;
use crate::ci::config::Mode;
use crate::ci::matcher::claim_text;
use crate::ci::template;
use crate::ci::{cedar_claims, job_digest, rate_key, ref_attestation, runner_posture};
use crate::http::ApiError;
use crate::ids::random_id;
use crate::issue::{Issued, Observed, Refusal, Subject};
use crate::log::{LogEntry, RecordKind};
use crate::state::Broker;
use crate::store::{Append, ApprovalKind};

/// A refusal before any decision (bad token, no policy, fork event, replay):
/// logged, then answered.
async fn refuse(
    broker: &Broker,
    status: StatusCode,
    code: &'static str,
    message: String,
    issuer: Option<&str>,
    grant: &str,
    detail: Value,
) -> ApiError {
    let request_id = random_id("req");
    let entry = LogEntry {
        time_ms: broker.clock.now_ms(),
        kind: RecordKind::Decision,
        request_id: request_id.clone(),
        identity: None,
        grant: Some(crate::http::excerpt(grant)),
        node: issuer.map(str::to_owned),
        outcome: Some("deny".into()),
        body: json!({"ci": {"refused": code, "message": message, "detail": detail}}),
    };
    let logged = broker.append(Append::record(entry)).await;
    if let Err(e) = logged {
        return crate::http::log_unavailable(e);
    }
    ApiError::new(status, code, message).with_reasons(vec![request_id])
}

/// `POST /v1/ci/credentials` and the RFC 8693 exchange: verify the token,
/// find the policy, then the shared pipeline.
/// The per-address CI rate limit (an IPv6 client by its /64).
pub fn check_rate(broker: &Broker, client: IpAddr) -> Result<(), ApiError> {
    if broker.ci_limiter.check_key(&rate_key(client)).is_err() {
        return Err(ApiError {
            retry_after: Some(1),
            ..ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "too many CI requests from this address",
            )
        });
    }
    Ok(())
}

/// `GET /v1/ci/approvals/{id}`: a CI job polls the step-up approval its
/// request was held for. The bearer is a valid OIDC token of the same issuer
/// that maps to the same identity (its `jti` is not consumed: a read); any
/// other approval is "not found".
pub async fn approval(broker: &Broker, token: &str, id: &str) -> Result<Value, ApiError> {
    let dynamic = broker.dynamic.load_full();
    let now = broker.clock.now_ms();
    let verified = broker
        .ci_verifier
        .verify(&dynamic.config.ci, token, now.div_euclid(1000))
        .await
        .map_err(|e| {
            let status = if e.unavailable {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::UNAUTHORIZED
            };
            ApiError::new(status, e.code, e.message)
        })?;
    let not_found = || ApiError::not_found("unknown_approval", "no such approval");
    let identity = dynamic
        .ci
        .matching(&verified.issuer, &verified.claims)
        .and_then(|c| template::render(&c.policy.identity, &verified.claims).ok())
        .ok_or_else(not_found)?;
    if id.len() > 128 {
        return Err(not_found());
    }
    let approval = broker.store.approval(id).await?.ok_or_else(not_found)?;
    if approval.kind != ApprovalKind::StepUp
        || approval.requested_by != verified.issuer
        || approval.identity != identity
    {
        return Err(not_found());
    }
    Ok(crate::approvals::view(&approval, now))
}

pub async fn issue(
    broker: &Broker,
    client: IpAddr,
    token: &str,
    request: CredentialRequest,
    only_kind: Option<crate::lease::LeaseKind>,
) -> Result<Result<Issued, Refusal>, ApiError> {
    // The per-address rate limit was taken by the route, before the body.
    crate::doors::node::validate_request(&request)?;
    let dynamic = broker.dynamic.load_full();
    let ci = &dynamic.config.ci;
    // The one reading of the clock for this issuance.
    let now = broker.clock.now_ms();
    let verified = match broker
        .ci_verifier
        .verify(ci, token, now.div_euclid(1000))
        .await
    {
        Ok(v) => v,
        Err(e) => {
            let status = if e.unavailable {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::UNAUTHORIZED
            };
            // The caller proved nothing: counted into the window's record
            // (`crate::refusals`), not a record each.
            let request_id = random_id("req");
            broker.refused_unauthenticated("public", e.code, client, &request_id, &e.message);
            return Err(ApiError::new(status, e.code, e.message).with_reasons(vec![request_id]));
        }
    };
    let issuer = verified.issuer.as_str();
    let claims = &verified.claims;
    let summary = json!({
        "iss": issuer, "sub": claims["sub"], "jti": verified.jti,
        "event_name": claims["event_name"], "pipeline_source": claims["pipeline_source"],
    });
    let Some(compiled) = dynamic.ci.matching(issuer, claims) else {
        return Err(refuse(
            broker,
            StatusCode::FORBIDDEN,
            "no_policy",
            "no CI trust policy matches this token (issuer, audience, claims)".into(),
            Some(issuer),
            &request.grant,
            summary,
        )
        .await);
    };
    let policy = &compiled.policy;
    let event = claim_text(claims, "event_name").or_else(|| claim_text(claims, "pipeline_source"));
    if let Some(event) = event.as_deref()
        && FORK_EVENTS.contains(&event)
        && !policy.allow_events.iter().any(|e| e == event)
    {
        return Err(refuse(
            broker,
            StatusCode::FORBIDDEN,
            "fork_event_refused",
            format!(
                "event {event:?} can run code from forks; policy {:?} does not allow it",
                policy.name
            ),
            Some(issuer),
            &request.grant,
            json!({"policy": policy.name, "token": summary}),
        )
        .await);
    }
    let identity = match template::render(&policy.identity, claims) {
        Ok(id) => id,
        Err(e) => {
            return Err(refuse(
                broker,
                StatusCode::FORBIDDEN,
                "bad_identity",
                e,
                Some(issuer),
                &request.grant,
                json!({"policy": policy.name, "token": summary}),
            )
            .await);
        }
    };
    // The grant is checked before the token's jti is spent: a request for
    // a grant this endpoint cannot issue changes nothing.
    let Some(grant) = dynamic.config.grants.get(&request.grant) else {
        return Err(ApiError::bad_request(
            "unknown_grant",
            format!("no grant named {:?}", request.grant),
        ));
    };
    if let Some(kind) = only_kind
        && grant.kind != kind
    {
        return Err(refuse(
            broker,
            StatusCode::BAD_REQUEST,
            "unsupported_grant_kind",
            format!(
                "grant {:?} mints {} credentials; this endpoint issues {kind} only (use POST /v1/ci/credentials)",
                request.grant, grant.kind
            ),
            Some(issuer),
            &request.grant,
            json!({"policy": policy.name, "token": summary}),
        )
        .await);
    }
    let issuer_config = ci.issuers.iter().find(|i| i.url == issuer);
    let skew_ms = i64::try_from(ci.skew().as_millis()).unwrap_or(60_000);
    let key = format!("{issuer}|{}", verified.jti);
    if !broker
        .store
        .consume_ci_jti(
            &key,
            verified.exp.saturating_mul(1000).saturating_add(skew_ms),
            now,
        )
        .await?
    {
        return Err(refuse(
            broker,
            StatusCode::UNAUTHORIZED,
            "token_replayed",
            "this token (jti) was already used".into(),
            Some(issuer),
            &request.grant,
            json!({"policy": policy.name, "token": summary}),
        )
        .await);
    }
    let network = compiled.network(client);
    let blast_radius = blast_radius(&dynamic, issuer);
    let subject = Subject {
        identity,
        principal: PrincipalKind::CiJob,
        issuer_kind: IssuerKind::CiIssuer,
        issuer: issuer.to_owned(),
        may_vouch: policy.grants.contains(&grant.name),
        observed: Observed {
            posture: runner_posture(issuer_config, claims),
            attestation: ref_attestation(claims),
            network,
        },
        blast_radius,
        ci_claims: cedar_claims(claims),
        context: [(
            "ci".to_owned(),
            json!({"policy": policy.name, "client": client.to_string(), "token": summary}),
        )]
        .into_iter()
        .collect(),
        audit: policy.mode == Mode::Audit,
        break_glass: None,
        approval_binding: Some(job_digest(claims)),
    };
    Ok(broker
        .issuer(&dynamic)
        .issue(grant, request, subject, now)
        .await)
}

/// A CI issuer's blast radius: the highest exposure of the grants its
/// policies may mint.
pub fn blast_radius(dynamic: &crate::state::Dynamic, issuer: &str) -> f64 {
    blast_radius_under(&dynamic.ci, &dynamic.eci, issuer)
}

/// [`blast_radius`] under the ECI `eci` (a what-if's proposed graph).
pub fn blast_radius_under(
    ci: &crate::ci::CiRuntime,
    eci: &mintguard_policy::eci::EciReport,
    issuer: &str,
) -> f64 {
    ci.policies
        .iter()
        .filter(|c| c.policy.issuer == issuer)
        .flat_map(|c| c.policy.grants.iter())
        .filter_map(|g| eci.grant_exposure(g))
        .fold(0.0, f64::max)
}
