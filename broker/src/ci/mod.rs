//! CI runners: OIDC tokens from GitHub Actions, GitLab CI or any OIDC
//! issuer, mapped by CI trust policies to an identity and its grants, then
//! decided, logged and minted like any other request. Every refusal —
//! including a token that does not verify — is a record in the issuance log.

pub mod config;
pub mod matcher;
pub mod template;
pub mod verify;

use std::collections::BTreeMap;
use std::net::IpAddr;

use axum::http::StatusCode;
use axum::response::Response;
use mintguard_api::CredentialRequest;
use mintguard_policy::decision::{IssuerKind, PrincipalKind};
use serde_json::{Value, json};

use self::config::{
    CiConfig, CiPolicy, FORK_EVENTS, IssuerConfig, Mode, cidr_contains, parse_cidr,
};
use self::matcher::{Compiled, claim_text};
use crate::clock::now_ms;
use crate::http::ApiError;
use crate::log::{LogEntry, RecordKind};
use crate::pipeline::{Observed, Subject, decide_and_issue, random_id};
use crate::state::Broker;
use crate::store::Append;

/// A policy with its matchers compiled.
pub struct CompiledPolicy {
    /// The policy.
    pub policy: CiPolicy,
    claims: Vec<(String, Compiled)>,
    cidrs: Vec<(IpAddr, u8)>,
}

/// The CI policies of one configuration (rebuilt on reload).
#[derive(Default)]
pub struct CiRuntime {
    /// Policies in configuration order (the first that matches wins).
    pub policies: Vec<CompiledPolicy>,
}

impl CiRuntime {
    /// The first policy a token of `issuer` with `claims` matches (issuer,
    /// audience, claim matchers).
    pub fn matching(&self, issuer: &str, claims: &Value) -> Option<&CompiledPolicy> {
        self.policies.iter().find(|c| {
            c.policy.issuer == issuer
                && audience_matches(claims, &c.policy.audience)
                && c.claims
                    .iter()
                    .all(|(k, m)| claim_text(claims, k).is_some_and(|t| m.matches(&t)))
        })
    }

    /// Compiles `[ci]` (validated before, so this does not fail in practice).
    pub fn new(ci: &CiConfig) -> Result<Self, String> {
        let policies = ci
            .policies
            .iter()
            .map(|p| {
                Ok(CompiledPolicy {
                    claims: p
                        .claims
                        .iter()
                        .map(|(k, m)| Ok((k.clone(), matcher::compile(m)?)))
                        .collect::<Result<_, String>>()?,
                    cidrs: p
                        .allowed_cidrs
                        .iter()
                        .filter_map(|c| parse_cidr(c))
                        .collect(),
                    policy: p.clone(),
                })
            })
            .collect::<Result<_, String>>()?;
        Ok(Self { policies })
    }
}

fn audience_matches(claims: &Value, audience: &str) -> bool {
    match &claims["aud"] {
        Value::String(a) => a == audience,
        Value::Array(a) => a.iter().any(|x| x.as_str() == Some(audience)),
        _ => false,
    }
}

/// The claims Cedar sees (`context.ci_claims`), as strings.
fn cedar_claims(claims: &Value) -> BTreeMap<String, String> {
    mintguard_policy::decision::CI_CLAIMS
        .iter()
        .filter_map(|k| claim_text(claims, k).map(|v| ((*k).to_owned(), v.into_owned())))
        .collect()
}

/// The claims that name one job run and cannot change within it (GitHub;
/// GitLab's equivalents after them): a step-up approval is bound to their
/// digest, so only the job that was held redeems it.
const JOB_CLAIMS: &[&str] = &[
    "run_id",
    "sha",
    "ref",
    "job_workflow_ref",
    "event_name",
    "pipeline_id",
    "ci_config_ref_uri",
    "pipeline_source",
];

/// SHA-256 (hex) over the [`JOB_CLAIMS`] of `claims`, absent ones as null.
pub fn job_digest(claims: &Value) -> String {
    let values: Vec<Option<String>> = JOB_CLAIMS
        .iter()
        .map(|k| claim_text(claims, k).map(std::borrow::Cow::into_owned))
        .collect();
    let canonical = serde_json::to_string(&values).unwrap_or_default();
    crate::ids::hex(
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, canonical.as_bytes()).as_ref(),
    )
}

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
        time_ms: now_ms(),
        kind: RecordKind::Decision,
        request_id: request_id.clone(),
        identity: None,
        grant: Some(crate::http::excerpt(grant)),
        node: issuer.map(str::to_owned),
        outcome: Some("deny".into()),
        body: json!({"ci": {"refused": code, "message": message, "detail": detail}}),
    };
    let logged = broker
        .append(Append {
            canonical_body: None,
            entry,
            spend: Vec::new(),
            lease: None,
            rule_set: None,
            refuse_if_suspended: Vec::new(),
        })
        .await;
    if let Err(e) = logged {
        return crate::pipeline::log_unavailable(e);
    }
    ApiError::new(status, code, message).with_reasons(vec![request_id])
}

/// The posture of a CI job: its runner. A hosted runner (the token's
/// `runner_environment` is the one the issuer's own hosted runners report,
/// [`IssuerConfig::hosted_runner_environment`]) is 100; a self-hosted one,
/// or a token that does not say, is the issuer's `self_hosted_posture`.
fn runner_posture(issuer: Option<&IssuerConfig>, claims: &Value) -> (u8, &'static str) {
    let hosted = issuer.and_then(IssuerConfig::hosted_runner_environment);
    match claims["runner_environment"].as_str() {
        Some(env) if Some(env) == hosted => (100, "ci:hosted_runner"),
        _ => (
            issuer.map_or(50, IssuerConfig::self_hosted_posture),
            "ci:self_hosted_runner",
        ),
    }
}

/// The attestation of a CI job: whether what it runs passed the
/// repository's protections. A protected ref (`ref_protected`) or a
/// protected environment (GitLab's `environment_protected`) is 100; any other
/// job, whose code anyone with push access chose, is 60.
fn ref_attestation(claims: &Value) -> (u8, &'static str) {
    let yes = |k: &str| claims[k] == Value::Bool(true) || claims[k].as_str() == Some("true");
    if yes("ref_protected") {
        (100, "ci:protected_ref")
    } else if yes("environment_protected") {
        (100, "ci:protected_environment")
    } else {
        (60, "ci:unprotected_ref")
    }
}

/// The rate-limit key of a client address: an IPv4 address, or the /64 of an
/// IPv6 one (a single host usually holds a whole /64, and could otherwise
/// rotate through it to get around the limit).
fn rate_key(client: IpAddr) -> IpAddr {
    // An IPv4 client of a dual-stack listener arrives as ::ffff:a.b.c.d.
    match client.to_canonical() {
        IpAddr::V6(a) => IpAddr::V6(std::net::Ipv6Addr::from(u128::from(a) & (!0u128 << 64))),
        v4 => v4,
    }
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
    let now = now_ms();
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
    if approval.kind != "step_up"
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
) -> Result<Response, ApiError> {
    // The per-address rate limit was taken by the route, before the body.
    crate::pipeline::validate_request(&request)?;
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
    let Some(grant) = dynamic.config.grants.get(&request.grant) else {
        return Err(ApiError::bad_request(
            "unknown_grant",
            format!("no grant named {:?}", request.grant),
        ));
    };
    let network = (!compiled.cidrs.is_empty()).then(|| {
        if compiled.cidrs.iter().any(|c| cidr_contains(*c, client)) {
            (100, "broker:ci_allowed_cidrs")
        } else {
            (0, "broker:ci_allowed_cidrs")
        }
    });
    // The issuer may reach what its policies' grants expose.
    let blast_radius = dynamic
        .ci
        .policies
        .iter()
        .filter(|c| c.policy.issuer == issuer)
        .flat_map(|c| c.policy.grants.iter())
        .filter_map(|g| dynamic.eci.grant_exposure(g))
        .fold(0.0, f64::max);
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
        context: json!({"ci": {"policy": policy.name, "client": client.to_string(), "token": summary}}),
        audit: policy.mode == Mode::Audit,
        break_glass: None,
        approval_binding: Some(job_digest(claims)),
    };
    decide_and_issue(broker, &dynamic, grant, request, subject, now).await
}

#[cfg(test)]
mod observed_tests {
    use super::*;

    #[test]
    fn an_ipv6_client_is_limited_by_its_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff:1:2:3".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(rate_key(a), rate_key(b));
        assert_ne!(rate_key(a), rate_key(other));
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!(rate_key(v4), v4);
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(rate_key(mapped), v4, "each IPv4 client its own key");
    }

    #[test]
    fn posture_follows_the_runner_and_attestation_the_protections() {
        let issuer = |url: &str, self_hosted: u8| IssuerConfig {
            url: url.into(),
            self_hosted_posture: Some(self_hosted),
            ..toml::from_str(r#"url = "x""#).unwrap()
        };
        let github = issuer("https://token.actions.githubusercontent.com", 50);
        let hosted = json!({"runner_environment": "github-hosted"});
        assert_eq!(
            runner_posture(Some(&github), &hosted),
            (100, "ci:hosted_runner")
        );
        let gitlab = json!({"runner_environment": "gitlab-hosted"});
        let gitlab_com = issuer("https://gitlab.com", 50);
        assert_eq!(runner_posture(Some(&gitlab_com), &gitlab).0, 100);
        let own = json!({"runner_environment": "self-hosted"});
        assert_eq!(
            runner_posture(
                Some(&issuer("https://token.actions.githubusercontent.com", 35)),
                &own
            ),
            (35, "ci:self_hosted_runner")
        );
        assert_eq!(
            runner_posture(Some(&github), &json!({})).0,
            50,
            "unstated: self-hosted"
        );
        // Another issuer's token saying it ran on GitHub's or GitLab's
        // runners: its own, whatever it claims, unless configured.
        let other = issuer("https://ci.example.org", 50);
        for claims in [&hosted, &gitlab] {
            assert_eq!(runner_posture(Some(&other), claims).0, 50);
        }
        assert_eq!(runner_posture(Some(&github), &gitlab).0, 50);
        let ghes = IssuerConfig {
            hosted_runner_environment: Some("github-hosted".into()),
            ..other
        };
        assert_eq!(runner_posture(Some(&ghes), &hosted).0, 100);

        assert_eq!(ref_attestation(&json!({"ref_protected": "true"})).0, 100);
        assert_eq!(ref_attestation(&json!({"ref_protected": true})).0, 100);
        assert_eq!(
            ref_attestation(&json!({"ref_protected": "false", "environment_protected": "true"})),
            (100, "ci:protected_environment")
        );
        assert_eq!(
            ref_attestation(&json!({"ref_protected": "false", "environment": "production"})),
            (60, "ci:unprotected_ref"),
            "a named environment is not a protected one"
        );
        assert_eq!(ref_attestation(&json!({})).0, 60);
    }
}
