//! The Cedar request of a decision: its entities (built once per issuer,
//! identity and grant, through the rule set's cache) and its context.
//!
//! The context is built as Cedar's own value, not through
//! `Context::from_pairs`: that evaluates each member as a restricted
//! expression, which was two fifths of `decide()` (measured with
//! `cargo bench -p mintguard-benches --bench decide`). Both ways give the
//! same context — the test below holds them equal — and the value way
//! needs `cedar-policy-core` at the exact version `cedar-policy` uses
//! (both pinned in the workspace `Cargo.toml`).

use std::collections::{HashMap, HashSet};

use cedar_policy::{
    Context, Entities, Entity, EntityId, EntityTypeName, EntityUid, Request, RestrictedExpression,
};
use cedar_policy_core::ast::{self, Value, ValueKind};

use super::{DecisionInput, EciNumbers, IssuerKind};
use crate::rules::RuleSet;
use crate::trust::TrustReport;

/// Mintguard's Cedar type names and action, parsed once.
struct CedarTypes {
    node: EntityTypeName,
    ci_issuer: EntityTypeName,
    workload: EntityTypeName,
    ci_job: EntityTypeName,
    grant: EntityTypeName,
    mint: EntityUid,
}

static TYPES: std::sync::LazyLock<CedarTypes> = std::sync::LazyLock::new(|| {
    use std::str::FromStr as _;
    // Constants of Mintguard's schema: they parse.
    let name = |s: &str| {
        EntityTypeName::from_str(s).unwrap_or_else(|_| unreachable!("{s} is a valid type name"))
    };
    CedarTypes {
        node: name("Mintguard::Node"),
        ci_issuer: name("Mintguard::CiIssuer"),
        workload: name("Mintguard::Workload"),
        ci_job: name("Mintguard::CiJob"),
        grant: name("Mintguard::Grant"),
        mint: EntityUid::from_type_name_and_id(name("Mintguard::Action"), EntityId::new("mint")),
    }
});

fn uid(kind: &EntityTypeName, id: &str) -> EntityUid {
    EntityUid::from_type_name_and_id(kind.clone(), EntityId::new(id))
}

fn string(s: &str) -> RestrictedExpression {
    RestrictedExpression::new_string(s.to_owned())
}

/// Builds the Cedar request and entities for `input` (the entities through
/// the rule set's cache).
pub(super) fn cedar_request(
    rules: &RuleSet,
    input: &DecisionInput,
    trust: &TrustReport,
    eci: &EciNumbers,
    requested_ttl: u64,
    ttl: u64,
    budget_available: i64,
) -> Result<(Request, std::sync::Arc<Entities>), String> {
    let types = &*TYPES;
    let (issuer_type, issuer_attr, principal_type) = match input.issuer.kind {
        IssuerKind::Node => (&types.node, "name", &types.workload),
        IssuerKind::CiIssuer => (&types.ci_issuer, "url", &types.ci_job),
    };
    let issuer = uid(issuer_type, &input.issuer.id);
    let principal = uid(principal_type, &input.identity);
    let grant = uid(&types.grant, &input.grant.name);
    let key = [
        issuer_type.basename(),
        input.issuer.id.as_str(),
        input.identity.as_str(),
        input.grant.name.as_str(),
        input.grant.kind.as_str(),
    ]
    .join("\u{0}");
    let entities = rules.entities(key, || {
        let entities = [
            Entity::new(
                issuer.clone(),
                HashMap::from([(issuer_attr.to_owned(), string(&input.issuer.id))]),
                HashSet::new(),
            ),
            Entity::new(
                principal.clone(),
                HashMap::from([("spiffe_id".to_owned(), string(&input.identity))]),
                HashSet::from([issuer]),
            ),
            Entity::new(
                grant.clone(),
                HashMap::from([
                    ("name".to_owned(), string(&input.grant.name)),
                    ("kind".to_owned(), string(&input.grant.kind)),
                ]),
                HashSet::new(),
            ),
        ]
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
        Entities::from_entities(entities, None).map_err(|e| e.to_string())
    })?;

    let context = context(input, trust, eci, requested_ttl, ttl, budget_available)?;
    let request = Request::new(principal, types.mint.clone(), grant, context, None)
        .map_err(|e| e.to_string())?;
    Ok((request, entities))
}

/// The CI claims Cedar sees (those declared in the schema's `CiClaims`).
pub const CI_CLAIMS: &[&str] = &[
    "repository",
    "repository_id",
    "repository_owner",
    "repository_owner_id",
    "ref",
    "ref_type",
    "ref_protected",
    "environment",
    "event_name",
    "job_workflow_ref",
    "runner_environment",
    "workflow",
    "project_id",
    "project_path",
    "namespace_id",
    "namespace_path",
    "pipeline_source",
    "sub",
];

/// The context's members: what the schema's `context` declares.
fn context(
    input: &DecisionInput,
    trust: &TrustReport,
    eci: &EciNumbers,
    requested_ttl: u64,
    ttl: u64,
    budget_available: i64,
) -> Result<Context, String> {
    let now = time::OffsetDateTime::from_unix_timestamp(input.now_ms.div_euclid(1000))
        .map_err(|e| e.to_string())?;
    let long = |v: i64| Value::from(v);
    let count = |v: u64| long(i64::try_from(v).unwrap_or(i64::MAX));
    let signals = trust
        .signals
        .iter()
        .filter_map(|s| s.value.map(|v| (s.kind.as_str(), long(i64::from(v)))));
    let claims = input
        .ci_claims
        .iter()
        .filter(|(k, _)| CI_CLAIMS.contains(&k.as_str()))
        .map(|(k, v)| (k.as_str(), Value::from(v.as_str())));
    let purpose = input.purpose.as_deref().unwrap_or("");
    let issuer_kind = match input.issuer.kind {
        IssuerKind::Node => "node",
        IssuerKind::CiIssuer => "ci_issuer",
    };
    // In name order: the record's map is built from a sorted list, and a
    // list already in order sorts in one pass.
    let record = Value::record(
        [
            ("budget_available", long(budget_available)),
            ("ci_claims", Value::record(claims, None)),
            ("eci", long(eci.eci)),
            ("eci_raw", long(eci.eci_raw)),
            ("grant_exposure", long(eci.grant_exposure)),
            ("has_evidence", Value::from(!input.evidence.is_empty())),
            ("has_purpose", Value::from(!purpose.is_empty())),
            ("hour", long(i64::from(now.hour()))),
            ("issuer_blast_radius", long(eci.issuer_blast_radius)),
            ("issuer_kind", Value::from(issuer_kind)),
            ("purpose", Value::from(purpose)),
            ("requested_ttl", count(requested_ttl)),
            ("signals", Value::record(signals, None)),
            ("trust_score", long(i64::from(trust.score))),
            ("ttl", count(ttl)),
            (
                "weekday",
                long(i64::from(now.weekday().number_from_monday())),
            ),
        ],
        None,
    );
    match record.value {
        ValueKind::Record(members) => Ok(Context::from(ast::Context::Value(members))),
        _ => Err("the context is not a record".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trust::{TrustConfig, trust_score};

    /// The context as Cedar's documented API builds it (each member a
    /// restricted expression, evaluated).
    fn reference_context(
        input: &DecisionInput,
        trust: &TrustReport,
        eci: &EciNumbers,
        requested_ttl: u64,
        ttl: u64,
        budget_available: i64,
    ) -> Result<Context, String> {
        let signals = trust.signals.iter().filter_map(|s| {
            s.value.map(|v| {
                (
                    s.kind.as_str().to_owned(),
                    RestrictedExpression::new_long(i64::from(v)),
                )
            })
        });
        let signals = RestrictedExpression::new_record(signals).map_err(|e| e.to_string())?;
        let claims = input
            .ci_claims
            .iter()
            .filter(|(k, _)| CI_CLAIMS.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), string(v)));
        let claims = RestrictedExpression::new_record(claims).map_err(|e| e.to_string())?;
        let now = time::OffsetDateTime::from_unix_timestamp(input.now_ms.div_euclid(1000))
            .map_err(|e| e.to_string())?;
        let long = |v: u64| RestrictedExpression::new_long(i64::try_from(v).unwrap_or(i64::MAX));
        let purpose = input.purpose.as_deref().unwrap_or("");
        Context::from_pairs([
            (
                "trust_score".to_owned(),
                RestrictedExpression::new_long(i64::from(trust.score)),
            ),
            ("signals".to_owned(), signals),
            ("eci".to_owned(), RestrictedExpression::new_long(eci.eci)),
            (
                "eci_raw".to_owned(),
                RestrictedExpression::new_long(eci.eci_raw),
            ),
            (
                "grant_exposure".to_owned(),
                RestrictedExpression::new_long(eci.grant_exposure),
            ),
            (
                "issuer_blast_radius".to_owned(),
                RestrictedExpression::new_long(eci.issuer_blast_radius),
            ),
            (
                "budget_available".to_owned(),
                RestrictedExpression::new_long(budget_available),
            ),
            ("requested_ttl".to_owned(), long(requested_ttl)),
            ("ttl".to_owned(), long(ttl)),
            ("purpose".to_owned(), string(purpose)),
            (
                "has_purpose".to_owned(),
                RestrictedExpression::new_bool(!purpose.is_empty()),
            ),
            (
                "hour".to_owned(),
                RestrictedExpression::new_long(i64::from(now.hour())),
            ),
            (
                "weekday".to_owned(),
                RestrictedExpression::new_long(i64::from(now.weekday().number_from_monday())),
            ),
            (
                "issuer_kind".to_owned(),
                string(match input.issuer.kind {
                    IssuerKind::Node => "node",
                    IssuerKind::CiIssuer => "ci_issuer",
                }),
            ),
            (
                "has_evidence".to_owned(),
                RestrictedExpression::new_bool(!input.evidence.is_empty()),
            ),
            ("ci_claims".to_owned(), claims),
        ])
        .map_err(|e| e.to_string())
    }

    /// `base` with `patch` merged in (RFC 7396, as the corpus test reads it).
    fn merged(base: &serde_json::Value, patch: &serde_json::Value) -> serde_json::Value {
        let (serde_json::Value::Object(b), serde_json::Value::Object(p)) = (base, patch) else {
            return patch.clone();
        };
        let mut out = b.clone();
        for (k, v) in p {
            if v.is_null() {
                out.remove(k);
            } else {
                let value = merged(b.get(k).unwrap_or(&serde_json::Value::Null), v);
                out.insert(k.clone(), value);
            }
        }
        serde_json::Value::Object(out)
    }

    #[test]
    fn the_context_equals_the_one_cedars_api_builds() {
        let corpus: serde_json::Value = serde_json::from_str(include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/corpus/cases.json"
        )))
        .expect("the corpus parses");
        let cases = corpus["cases"].as_array().expect("cases");
        // Claims outside the schema are left out; a purpose may be absent.
        let extra = serde_json::json!({
            "purpose": null,
            "ci_claims": {"repository": "acme/app", "sub": "repo:acme/app", "not_in_schema": "x"},
        });
        let config = TrustConfig::default();
        let mut checked = 0;
        for patch in cases.iter().map(|c| &c["input"]).chain([&extra]) {
            let input: DecisionInput = serde_json::from_value(merged(&corpus["base"], patch))
                .expect("a corpus input decodes");
            let trust = trust_score(&config, &input.signals, input.now_ms.div_euclid(1000));
            let eci = EciNumbers {
                eci: 40,
                eci_raw: 4_012,
                grant_exposure: 60,
                issuer_blast_radius: 75,
            };
            for (requested, ttl, budget) in [(600, 300, 17), (u64::MAX, 900, i64::MIN)] {
                assert_eq!(
                    context(&input, &trust, &eci, requested, ttl, budget),
                    reference_context(&input, &trust, &eci, requested, ttl, budget),
                    "{patch}"
                );
            }
            checked += 1;
        }
        assert_eq!(checked, cases.len() + 1);
    }
}
