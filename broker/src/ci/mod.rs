//! CI runners: OIDC tokens from GitHub Actions, GitLab CI or any OIDC
//! issuer, mapped by CI trust policies to an identity and its grants, then
//! decided, logged and minted like any other request. Every refusal —
//! including a token that does not verify — is a record in the issuance log.
//!
//! This module holds the policies and what a token's claims say (posture,
//! attestation, Cedar's claims, the job digest); the front door that takes
//! a token and hands the request to the issuance core is
//! [`crate::doors::ci`].

/// `[ci]`, the CI issuers and trust policies (`crate::config::ci`).
pub use crate::config::ci as config;
/// The CI policy language: claim matchers and identity templates.
pub use crate::config::ci::{matcher, template};
pub mod verify;

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde_json::Value;

use self::config::{CiConfig, CiPolicy, IssuerConfig, cidr_contains, parse_cidr};
use self::matcher::{Compiled, claim_text};

/// A policy with its matchers compiled.
pub struct CompiledPolicy {
    /// The policy.
    pub policy: CiPolicy,
    claims: Vec<(String, Compiled)>,
    cidrs: Vec<(IpAddr, u8)>,
}

impl CompiledPolicy {
    /// The network signal for a runner at `client`: 100 inside the
    /// policy's `allowed_cidrs`, 0 outside, none when it sets no CIDRs.
    pub fn network(&self, client: IpAddr) -> Option<(u8, &'static str)> {
        (!self.cidrs.is_empty()).then(|| {
            if self.cidrs.iter().any(|c| cidr_contains(*c, client)) {
                (100, "broker:ci_allowed_cidrs")
            } else {
                (0, "broker:ci_allowed_cidrs")
            }
        })
    }
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

pub fn audience_matches(claims: &Value, audience: &str) -> bool {
    match &claims["aud"] {
        Value::String(a) => a == audience,
        Value::Array(a) => a.iter().any(|x| x.as_str() == Some(audience)),
        _ => false,
    }
}

/// The claims Cedar sees (`context.ci_claims`), as strings.
pub fn cedar_claims(claims: &Value) -> BTreeMap<String, String> {
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

/// The posture of a CI job: its runner. A hosted runner (the token's
/// `runner_environment` is the one the issuer's own hosted runners report,
/// [`IssuerConfig::hosted_runner_environment`]) is 100; a self-hosted one,
/// or a token that does not say, is the issuer's `self_hosted_posture`.
pub fn runner_posture(issuer: Option<&IssuerConfig>, claims: &Value) -> (u8, &'static str) {
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
pub fn ref_attestation(claims: &Value) -> (u8, &'static str) {
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
pub fn rate_key(client: IpAddr) -> IpAddr {
    // An IPv4 client of a dual-stack listener arrives as ::ffff:a.b.c.d.
    match client.to_canonical() {
        IpAddr::V6(a) => IpAddr::V6(std::net::Ipv6Addr::from(u128::from(a) & (!0u128 << 64))),
        v4 => v4,
    }
}

#[cfg(test)]
mod observed_tests {
    use serde_json::json;

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
